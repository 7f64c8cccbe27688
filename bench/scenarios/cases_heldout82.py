"""Held-out scenarios, set 82 (``h82_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face InternLM3, EXAONE, EXAONE 4, ERNIE 4.5 MoE and Gemma 3 (text) causal LMs
built from tiny configs (byte-level text); hand-written physics-informed network for the heat
equation (soft boundary loss), graph transformer with Laplacian positional encodings, neural
cellular automaton regrowing a generated pattern, MPC policy distilled into an MLP, spiking
network with surrogate gradients on digits, neural spline flow on a generated 2-D density,
energy-based model trained with contrastive divergence on digits, E(n)-equivariant graph network
on generated point clouds, soft actor-critic on a generated continuous-control task, and a
hypernetwork generating a target network's weights.

Optimizers: AdamW, Adam (with a GradScaler), NAdam, RAdam, Adamax, RMSprop, ASGD, SGD,
SGD with momentum, and steadygrad.optim's Lion, Grams, AdaBelief, AdEMAMix and StableSPAM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    digit_batches,
    digits,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- helpers ----------------------------------------------------------------------------------


def _first_nonfinite(model: nn.Module):
    """Forward hooks that record, in execution order, the modules whose output is not finite."""
    seen: list[str] = []
    handles = []

    def make(name: str):
        def hook(_m, _inp, out):
            outs = out if isinstance(out, (tuple, list)) else (out,)
            for o in outs:
                if torch.is_tensor(o) and o.is_floating_point() and not torch.isfinite(o).all():
                    seen.append(name)
                    return

        return hook

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_hook(make(name)))
    return seen, handles


def _hf_lm(kind: str, hidden: int = 32, inner: int = 64, **extra):
    """A tiny Hugging Face causal LM of ``kind`` built from its config (no download)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = CONFIG_MAPPING[kind](
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=inner,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=1,
        **extra,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def _lm_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x, use_cache=False).logits


def _log_z(logits: torch.Tensor) -> float:
    return float(torch.logsumexp(logits.float(), -1).mean())


# -- Hugging Face causal LMs --------------------------------------------------------------------


@scenario(
    "h82_hf_internlm3_causal_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="attention scaling multiplied by sqrt(head_dim) instead of divided, high LR",
    onset=0,
)
def h82_internlm3_inverted_attn_scale(ctx: Context) -> None:
    """A port of a custom attention kernel sets ``scaling = head_dim ** 0.5`` (multiplying the
    scores by 4 where 1/4 was meant, 16x too sharp) and trains with a high LR: the q.k logits
    grow and attention collapses onto single keys."""
    gen = seeded(8201)
    model = _hf_lm("internlm3")
    for layer in model.model.layers:
        layer.self_attn.scaling = layer.self_attn.head_dim**0.5
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe = next(text_batches(torch.Generator().manual_seed(1)))[0]

    def attn_stats():
        with torch.no_grad():
            out = model(input_ids=probe, use_cache=False, output_attentions=True)
        att = out.attentions[0].float().clamp_min(1e-30)
        entropy = float(-(att * att.log()).sum(-1).mean())
        return entropy, float(att.max(-1).values.mean())

    e0, _ = attn_stats()
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
    )
    e1, pmax = attn_stats()
    ctx.check("attention entropy fell below a third of its start", e1 < e0 / 3)
    ctx.check("attention rows nearly one-hot (mean max prob > 0.9)", pmax > 0.9)


@scenario(
    "h82_hf_exaone_causal_lm",
    "sg_lion",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="z-loss added with the wrong sign",
    onset=0,
)
def h82_exaone_negative_z_loss(ctx: Context) -> None:
    """The auxiliary z-loss is written ``loss - 5e-2 * logZ**2`` (coefficient also 50x) (sign flipped): instead of
    pinning the log-partition near 0 it rewards a growing log Z, so the head's logits drift
    upward together while the cross-entropy is barely affected at first."""
    gen = seeded(8202)
    model = _hf_lm("exaone")
    from steadygrad.optim import Lion

    opt = Lion(model.parameters(), lr=1e-3)
    probe = next(text_batches(torch.Generator().manual_seed(2)))[0]
    z0 = _log_z(_lm_forward(model, probe).detach())
    state = {}

    def forward(m, x):
        logits = _lm_forward(m, x)
        state["logits"] = logits
        return logits

    def extra(step, loss):
        z = torch.logsumexp(state["logits"].float(), -1)
        return loss - 5e-2 * z.pow(2).mean()

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=extra,
        classifier=False,
    )
    with torch.no_grad():
        z1 = _log_z(_lm_forward(model, probe))
    ctx.check("log Z grew by more than 10", z1 > z0 + 10)


@scenario(
    "h82_hf_ernie45_moe_causal_lm",
    "nadam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="manual loss scaling (x65536) not undone on one step",
    onset=150,
)
def h82_ernie_moe_unscaled_step(ctx: Context) -> None:
    """Manual fp16-style loss scaling (loss * 65536) is undone before ``step()`` on every
    iteration except the one after the checkpoint at step 150, where the early-return path skips
    the unscale: every second moment takes a 65536x gradient and later updates are tiny."""
    gen = seeded(8203)
    model = _hf_lm("ernie4_5_moe", moe_intermediate_size=32, moe_num_experts=4, moe_k=2)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = text_batches(gen)
    ctx.attach(model, opt)
    moves = []
    for step in range(400):
        x, y = next(batches)
        loss = lm_loss(_lm_forward(model, x), y)
        (loss * 65536.0).backward()
        if step != 150:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(65536.0)
        ctx.grad_norms.append(
            float(
                torch.stack(
                    [p.grad.norm() for p in model.parameters() if p.grad is not None]
                ).norm()
            )
        )
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moves.append(
            float(
                sum(
                    (p.detach() - b).norm() ** 2
                    for p, b in zip(model.parameters(), before, strict=True)
                )
                ** 0.5
            )
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    early = sum(moves[100:150]) / 50
    late = sum(moves[200:400]) / 200
    L = ctx.losses
    ctx.check("updates after the spike < 5% of before", late < 0.05 * early)
    ctx.check(
        "loss stalls: falls less over 200-400 than over 100-150",
        (sum(L[190:200]) - sum(L[390:400])) / 10 < (sum(L[90:100]) - sum(L[140:150])) / 10,
    )


@scenario(
    "h82_hf_exaone4_causal_lm",
    "adam",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="a binary blob slipped into the text corpus at step 180",
    onset=180,
)
def h82_exaone4_binary_blob_batch(ctx: Context) -> None:
    """The byte corpus picks up a compressed file: the batch at step 180 is uniformly random
    bytes with a constant filler as targets (padding runs), so its loss jumps far above the
    text batches around it."""
    gen = seeded(8204)
    model = _hf_lm("exaone4")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == 180:
            x = torch.randint(0, 128, x.shape, generator=gen)
            y = torch.full_like(y, 127)
        return x, y

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
        alter=alter,
    )
    L = ctx.losses
    ctx.check("loss at 180 over 2x the mean of 170-180", L[180] > 2 * sum(L[170:180]) / 10)
    ctx.check("finite throughout", all(math.isfinite(v) for v in L))


@scenario(
    "h82_hf_gemma3_text_causal_lm",
    "adamw",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy control",
)
def h82_gemma3_text_healthy(ctx: Context) -> None:
    """A tiny Gemma 3 text model (q/k norms, sandwich norms) trained on bytes with AdamW and a
    short warm-up: loss falls steadily."""
    gen = seeded(8205)
    model = _hf_lm("gemma3_text")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def before(step):
        for g in opt.param_groups:
            g["lr"] = 3e-3 * min(1.0, (step + 1) / 30)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
        before=before,
    )
    L = ctx.losses
    ctx.check("finite", all(math.isfinite(v) for v in L))
    ctx.check("loss fell by over 1.5 nats", sum(L[:10]) / 10 - sum(L[-10:]) / 10 > 1.5)


# -- physics-informed network for the heat equation -------------------------------------------


class HeatPINN(nn.Module):
    """u(x, t) for u_t = k u_xx on [0, 1]^2, u(x, 0) = sin(pi x), u(0, t) = u(1, t) = 0."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
        )

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        return self.net(xt)


def _heat_loss(model: HeatPINN, pts, w_bc: float, kappa: float = 0.1) -> torch.Tensor:
    inner, bc_pts, bc_val = pts
    xt = inner.clone().requires_grad_(True)
    u = model(xt)
    du = torch.autograd.grad(u.sum(), xt, create_graph=True)[0]
    u_xx = torch.autograd.grad(du[:, 0].sum(), xt, create_graph=True)[0][:, 0]
    residual = du[:, 1] - kappa * u_xx
    bc = model(bc_pts).squeeze(-1) - bc_val
    return residual.pow(2).mean() + w_bc * bc.pow(2).mean()


@scenario(
    "h82_pinn_heat_soft_bc",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="warm-up ramps to a peak LR copied from a run without the x100 boundary weight",
    onset=100,
)
def h82_pinn_heat_warmup_overshoot(ctx: Context) -> None:
    """The soft boundary term carries weight 100, which makes the loss 100x sharper along the
    boundary directions; the LR warm-up still ramps to the peak LR tuned without it. Once the
    LR passes 2(1+beta)/sharpness the loss oscillates and blows up."""
    gen = seeded(8206)
    model = HeatPINN()
    inner = torch.rand(256, 2, generator=gen)
    xb = torch.rand(64, generator=gen)
    tb = torch.rand(64, generator=gen)
    bc_pts = torch.cat(
        [
            torch.stack([xb, torch.zeros(64)], 1),
            torch.stack([torch.zeros(64), tb], 1),
            torch.stack([torch.ones(64), tb], 1),
        ]
    )
    bc_val = torch.cat([torch.sin(math.pi * xb), torch.zeros(128)])
    pts = (inner, bc_pts, bc_val)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ctx.attach(model, opt, probe=(lambda m, b: _heat_loss(m, b, 100.0), pts))
    for step in range(300):
        lr = 1e-4 * (0.05 / 1e-4) ** min(1.0, step / 200)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = _heat_loss(model, pts, 100.0)
        loss.backward()
        ctx.grad_norms.append(
            float(torch.stack([p.grad.norm() for p in model.parameters()]).norm())
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)) or float(loss) > 1e8:
            break
    L = ctx.losses
    low = min(L[:150])
    ctx.check("trained down first (min over 0-150 < a third of start)", low < L[0] / 3)
    ctx.check("then blew up (> 100x the low)", (not math.isfinite(L[-1])) or max(L) > 100 * low)
    d = [b - a for a, b in zip(L, L[1:], strict=False) if math.isfinite(a) and math.isfinite(b)]
    flips = sum(1 for a, b in zip(d, d[1:], strict=False) if a * b < 0)
    ctx.check("loss oscillated on the way up", flips > 10)


# -- graph transformer with Laplacian positional encodings -------------------------------------


def _graph_batches(gen: torch.Generator, batch: int = 32, n: int = 12, k: int = 4):
    """Random graphs: label 1 for two planted communities, 0 for a same-density random graph.
    Node input: degree and the first k non-trivial Laplacian eigenvectors (random signs)."""
    while True:
        y = torch.randint(0, 2, (batch,), generator=gen)
        comm = (torch.arange(n) < n // 2).long()
        same = comm[:, None] == comm[None, :]
        p_two = torch.where(same, 0.7, 0.08)
        p = torch.where(y[:, None, None].bool(), p_two, torch.full((n, n), 0.39))
        a = (torch.rand(batch, n, n, generator=gen) < p).float().triu(1)
        a = a + a.transpose(1, 2)
        deg = a.sum(-1)
        lap = torch.diag_embed(deg) - a
        _, vec = torch.linalg.eigh(lap)
        pe = vec[..., 1 : k + 1]
        pe = pe * (torch.randint(0, 2, (batch, 1, k), generator=gen) * 2 - 1)
        x = torch.cat([deg[..., None] / n, pe], -1)
        yield (x, a), y


class GraphTransformer(nn.Module):
    def __init__(self, dim: int = 32, k: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(1 + k, dim)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
            for _ in range(layers)
        )
        self.head = nn.Linear(dim, 2)

    def forward(self, inputs) -> torch.Tensor:
        x, a = inputs
        h = self.embed(x)
        bias = torch.where(a > 0, 0.0, -1.0).repeat_interleave(2, 0)  # adjacency attention bias
        for layer in self.layers:
            h = layer(h, src_mask=bias)
        return self.head(h.mean(1))


@scenario(
    "h82_graph_transformer_lappe",
    "sg_adabelief",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="resume restarts the cosine schedule at its peak with a fresh optimizer",
    onset=300,
)
def h82_graph_transformer_resume_restart(ctx: Context) -> None:
    """After a 30-step warm-up a cosine schedule decays the LR from 3e-3; at step 300 the job is resumed from a
    checkpoint that held only the weights: the optimizer is rebuilt (moments lost) and the
    scheduler restarts at its peak with no warm-up, so the next updates jump and the loss spikes."""
    gen = seeded(8207)
    from steadygrad.optim import AdaBelief

    model = GraphTransformer()
    opt = AdaBelief(model.parameters(), lr=3e-3, rectify=False)
    batches = _graph_batches(gen)
    ctx.attach(model, opt)
    sched_step = 0
    for step in range(450):
        if step == 300:
            opt.state.clear()
            sched_step = 0
        lr = 1e-5 + 0.5 * (3e-3 - 1e-5) * (1 + math.cos(math.pi * min(sched_step, 300) / 300))
        warm = min(1.0, (step + 1) / 30)  # warm-up only on a fresh start, not on resume
        for g in opt.param_groups:
            g["lr"] = lr * warm
        sched_step += 1
        (x, a), y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model((x, a)), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    L = ctx.losses
    before = sum(L[280:300]) / 20
    ctx.check("trained (loss 280-300 < 0.4)", before < 0.4)
    ctx.check(
        "spike after 300 (max 300-320 > 3x the mean of 280-300)", max(L[300:320]) > 3 * before
    )


# -- neural cellular automaton ------------------------------------------------------------------


def _target_pattern(size: int = 16) -> torch.Tensor:
    """A generated ring with a bar through it, as RGBA-like 4 channels."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2).sqrt()
    ring = ((r > 3) & (r < 6)).float()
    bar = ((yy - size // 2).abs() < 1).float() * (r < 6).float()
    alpha = torch.clamp(ring + bar, 0, 1)
    return torch.stack([ring, bar, 0.5 * alpha, alpha])


class NCA(nn.Module):
    def __init__(self, channels: int = 12, hidden: int = 64) -> None:
        super().__init__()
        sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
        ident = torch.zeros(3, 3)
        ident[1, 1] = 1
        kernels = torch.stack([ident, sobel, sobel.T])
        self.register_buffer("kernel", kernels.repeat(channels, 1, 1)[:, None])
        self.channels = channels
        self.update = nn.Sequential(
            nn.Conv2d(3 * channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, state: torch.Tensor, steps: int) -> torch.Tensor:
        for _ in range(steps):
            perceived = F.conv2d(state, self.kernel, padding=1, groups=self.channels)
            state = state + self.update(perceived)  # no alive mask, no stochastic update
        return state


@scenario(
    "h82_nca_regrow_pattern",
    "sgd",
    "exploding_gradients",
    where="update.0",
    diverges="auto",
    heldout=True,
    note="NCA without zero-init last layer, alive mask or gradient normalisation; rollouts grow",
    onset=0,
)
def h82_nca_rollout_curriculum(ctx: Context) -> None:
    """The cellular automaton's last 1x1 conv keeps its default init (the usual recipe zeroes it),
    there is no alive mask and no per-parameter gradient normalisation, and the rollout length
    grows from 8 to 40 steps: backprop through the rollout multiplies the gradient up until it
    overflows."""
    gen = seeded(8208)
    model = NCA()
    target = _target_pattern()
    opt = torch.optim.SGD(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    per_layer: dict[str, list[float]] = {"update.0": [], "update.2": []}
    for step in range(200):
        steps = 8 + int(32 * step / 200) + int(torch.randint(0, 4, (1,), generator=gen))
        seed = torch.zeros(8, model.channels, 16, 16)
        seed[:, 3:, 8, 8] = 1.0
        out = model(seed, steps)
        loss = F.mse_loss(out[:, :4], target.expand(8, -1, -1, -1))
        loss.backward()
        for name in per_layer:
            g = model.get_submodule(name).weight.grad
            per_layer[name].append(float(g.norm()) if g is not None else 0.0)
        ctx.grad_norms.append(
            float(torch.stack([p.grad.norm() for p in model.parameters()]).norm())
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    g = ctx.grad_norms
    ctx.check(
        "gradient norm grew over 1000x from the start (or overflowed)",
        (not math.isfinite(g[-1])) or max(g) > 1000 * g[0],
    )
    first = {}
    for name, vals in per_layer.items():
        first[name] = next(
            (i for i, v in enumerate(vals) if not math.isfinite(v) or v > 100 * vals[0]), 10**9
        )
    ctx.check(
        "update.0's gradient crossed 100x its start first", first["update.0"] <= first["update.2"]
    )


# -- spiking network with surrogate gradients ---------------------------------------------------


class BoxcarSpike(torch.autograd.Function):
    """Heaviside forward; boxcar surrogate gradient (1 within 0.5 of threshold, else 0)."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return (v > 0).float()

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * (v.abs() < 0.5).float()


class SpikingNet(nn.Module):
    def __init__(self, hidden: int = 128, steps: int = 8, decay: float = 0.8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)
        self.steps, self.decay = steps, decay
        self.last_spikes = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        current = self.fc1(x)
        v = torch.zeros_like(current)
        out = 0.0
        count = 0.0
        for _ in range(self.steps):
            v = self.decay * v + current
            s = BoxcarSpike.apply(v - 1.0)
            v = v - s  # soft reset
            count = count + s
            out = out + self.fc2(s)
        self.last_spikes = count
        return out / self.steps


@scenario(
    "h82_snn_surrogate_digits",
    "adamax",
    "loss_of_plasticity",
    where="fc1",
    diverges=None,
    heldout=True,
    note="activity regulariser switched on at 150 with weight 10 instead of 1e-3",
    onset=150,
)
def h82_snn_rate_penalty_silences(ctx: Context) -> None:
    """A firing-rate penalty meant to make the hidden layer sparse is enabled at step 150 with
    weight 10 (typo for 1e-3): it pushes every hidden neuron below threshold, and with a boxcar
    surrogate a silent neuron far from threshold gets no gradient back: the layer is dead."""
    gen = seeded(8209)
    model = SpikingNet()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def extra(step, loss):
        if step >= 150:
            return loss + 10.0 * model.last_spikes.mean()
        return loss

    probe = digits()[0][:512]
    fit(ctx, model, opt, digit_batches(gen), 400, extra_loss=extra)
    with torch.no_grad():
        model(probe)
    silent = float((model.last_spikes.sum(0) == 0).float().mean())
    rate = float(model.last_spikes.mean())
    L = ctx.losses
    ctx.check("learned first (loss at 140-150 < 1.0)", sum(L[140:150]) / 10 < 1.0)
    ctx.check("over 80% of fc1 neurons never spike at the end", silent > 0.8)
    ctx.check("fc1 almost silent (mean spike count < 0.01)", rate < 0.01)
    ctx.check("loss back near chance at the end (> 1.8)", sum(L[-10:]) / 10 > 1.8)


# -- neural spline flow ---------------------------------------------------------------------------


class RQSCoupling(nn.Module):
    """Rational-quadratic spline on one coordinate, conditioned on the other (K bins on [-B, B]).
    Written without the identity tails: points outside [-B, B] fall in an end bin, theta > 1."""

    def __init__(self, flip: bool, bins: int = 8, bound: float = 4.0, hidden: int = 32) -> None:
        super().__init__()
        self.flip, self.bins, self.bound = flip, bins, bound
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 3 * bins + 1))

    def forward(self, z: torch.Tensor):
        c, x = (z[:, 1:], z[:, :1]) if self.flip else (z[:, :1], z[:, 1:])
        p = self.net(c)
        K, B = self.bins, self.bound
        w = torch.softmax(p[:, :K], -1) * 2 * B
        h = torch.softmax(p[:, K : 2 * K], -1) * 2 * B
        d = F.softplus(p[:, 2 * K :]) + 1e-3
        xk = torch.cat([torch.full_like(w[:, :1], -B), -B + torch.cumsum(w, -1)], -1)
        yk = torch.cat([torch.full_like(h[:, :1], -B), -B + torch.cumsum(h, -1)], -1)
        idx = torch.searchsorted(xk[:, 1:-1].contiguous(), x).clamp(0, K - 1)
        wk, hk = w.gather(1, idx), h.gather(1, idx)
        x0, y0 = xk.gather(1, idx), yk.gather(1, idx)
        d0, d1 = d.gather(1, idx), d.gather(1, idx + 1)
        s = hk / wk
        t = (x - x0) / wk
        den = s + (d1 + d0 - 2 * s) * t * (1 - t)
        y = y0 + hk * (s * t**2 + d0 * t * (1 - t)) / den
        num = s**2 * (d1 * t**2 + 2 * s * t * (1 - t) + d0 * (1 - t) ** 2)
        logdet = (torch.log(num) - 2 * torch.log(den)).squeeze(-1)
        out = torch.cat([y, c], 1) if self.flip else torch.cat([c, y], 1)
        return out, logdet


class SplineFlow(nn.Module):
    def __init__(self, layers: int = 4) -> None:
        super().__init__()
        self.flows = nn.ModuleList(RQSCoupling(flip=i % 2 == 1) for i in range(layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(len(z))
        for f in self.flows:
            z, ld = f(z)
            total = total + ld
        base = -0.5 * (z**2).sum(1) - math.log(2 * math.pi)
        return -(base + total).mean()  # negative log-likelihood


def _ring_batches(gen: torch.Generator, batch: int = 128):
    """A generated 2-D density: a noisy ring of radius 2 with an off-centre blob."""
    while True:
        ang = torch.rand(batch, generator=gen) * 2 * math.pi
        r = 2 + 0.2 * torch.randn(batch, generator=gen)
        ring = torch.stack([r * ang.cos(), r * ang.sin()], 1)
        blob = torch.randn(batch, 2, generator=gen) * 0.3 + torch.tensor([0.5, 0.0])
        pick = (torch.rand(batch, 1, generator=gen) < 0.8).float()
        yield pick * ring + (1 - pick) * blob, torch.zeros(batch)


@scenario(
    "h82_neural_spline_flow_ring",
    "sg_grams",
    "nonfinite",
    where="flows.0",
    diverges=220,
    heldout=True,
    note="spline without identity tails meets a point beyond its bound at step 220",
    onset=220,
)
def h82_spline_flow_no_tails(ctx: Context) -> None:
    """The spline coupling was written without linear tails. At step 220 the data stream yields
    a point at x2 = 11 (a far sample of the generator's tail): in the first coupling its theta is
    far above 1, the spline's denominator goes negative and log gives NaN."""
    gen = seeded(8210)
    from steadygrad.optim import Grams

    model = SplineFlow()
    opt = Grams(model.parameters(), lr=3e-3)
    seen, handles = _first_nonfinite(model)

    def alter(step, x, y):
        if step == 220:
            x = x.clone()
            x[5] = torch.tensor([0.3, 11.0])
        return x, y

    fit(
        ctx,
        model,
        opt,
        _ring_batches(gen),
        240,
        loss_fn=lambda nll, _y: nll,
        alter=alter,
        classifier=False,
    )
    for h in handles:
        h.remove()
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 220, not at 220", all(finite[:220]) and not finite[220])
    ctx.check("first non-finite output from flows.0", bool(seen) and seen[0] == "flows.0")


@scenario(
    "h82_neural_spline_flow_ring",
    "sg_ademamix",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy control",
)
def h82_spline_flow_healthy(ctx: Context) -> None:
    """The same spline flow on the same generated density, no stray points: the negative
    log-likelihood falls."""
    gen = seeded(8211)
    from steadygrad.optim import AdEMAMix

    model = SplineFlow()
    opt = AdEMAMix(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _ring_batches(gen), 300, loss_fn=lambda nll, _y: nll, classifier=False)
    L = ctx.losses
    ctx.check("finite", all(math.isfinite(v) for v in L))
    ctx.check("NLL fell by over 0.5", sum(L[:10]) / 10 - sum(L[-10:]) / 10 > 0.5)


# -- E(n)-equivariant graph network ------------------------------------------------------------


class EGNNLayer(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.edge_mlp = nn.Sequential(nn.Linear(2 * dim + 1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.coord_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))
        self.node_mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, h: torch.Tensor, x: torch.Tensor):
        n = h.shape[1]
        diff = x[:, :, None] - x[:, None, :]
        d2 = (diff**2).sum(-1, keepdim=True)
        hi = h[:, :, None].expand(-1, -1, n, -1)
        hj = h[:, None, :].expand(-1, n, -1, -1)
        m = self.edge_mlp(torch.cat([hi, hj, d2], -1))
        x = x + (diff * self.coord_mlp(m)).sum(2) / (n - 1)
        h = h + self.node_mlp(torch.cat([h, m.sum(2)], -1))
        return h, x


class EGNN(nn.Module):
    def __init__(self, dim: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.layers = nn.ModuleList(EGNNLayer(dim) for _ in range(layers))
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(torch.ones(*x.shape[:2], 1))
        for layer in self.layers:
            h, x = layer(h, x)
        return self.head(h.mean(1)).squeeze(-1)


def _cloud_batches(gen: torch.Generator, batch: int = 32, n: int = 10):
    """Generated 3-D point clouds (random anisotropic Gaussians, rotated); target: log radius of
    gyration (rotation invariant)."""
    while True:
        scale = torch.rand(batch, 1, 3, generator=gen) * 1.5 + 0.2
        pts = torch.randn(batch, n, 3, generator=gen) * scale
        q, _ = torch.linalg.qr(torch.randn(batch, 3, 3, generator=gen))
        pts = pts @ q
        pts = pts - pts.mean(1, keepdim=True)
        yield pts, (pts**2).sum(-1).mean(1).log()


@scenario(
    "h82_egnn_point_clouds",
    "radam",
    "update_ratio_out_of_range",
    where=("layers.0.coord_mlp", "layers.1.coord_mlp"),
    diverges=None,
    heldout=True,
    note="the coordinate-MLP param group got lr 1e-1 (typo for 1e-3)",
    onset=0,
)
def h82_egnn_coord_group_lr_typo(ctx: Context) -> None:
    """The coordinate MLPs get their own param group (a common EGNN recipe for a smaller LR);
    its LR is written 1e-1 instead of 1e-3, so those weights move 100x faster than the rest."""
    gen = seeded(8212)
    model = EGNN()
    coord = [p for n, p in model.named_parameters() if "coord_mlp" in n]
    rest = [p for n, p in model.named_parameters() if "coord_mlp" not in n]
    opt = torch.optim.RAdam([{"params": rest, "lr": 1e-3}, {"params": coord, "lr": 1e-1}])
    ratios: dict[str, list[float]] = {"coord": [], "rest": []}
    w = {n: p for n, p in model.named_parameters() if p.dim() == 2}

    batches = _cloud_batches(gen)
    ctx.attach(model, opt)
    for step in range(300):
        x, y = next(batches)
        snap = {n: p.detach().clone() for n, p in w.items()}
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if step >= 50:
            for n, p in w.items():
                r = float((p.detach() - snap[n]).norm() / snap[n].norm().clamp_min(1e-12))
                ratios["coord" if "coord_mlp" in n else "rest"].append(r)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rc = sorted(ratios["coord"])[len(ratios["coord"]) // 2]
    rr = sorted(ratios["rest"])[len(ratios["rest"]) // 2]
    ctx.check("coord_mlp update/weight ratio over 4x the rest's (medians)", rc > 4 * rr)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- hypernetwork -----------------------------------------------------------------------------


class HyperNet(nn.Module):
    """Maps a sine task (amplitude, phase) to the weights of a 1-32-1 tanh target network."""

    def __init__(self, hidden: int = 32, target: int = 32) -> None:
        super().__init__()
        self.target = target
        self.encoder = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, 3 * target + 1)
        nn.init.normal_(self.head.weight, std=0.05)

    def forward(self, task: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = self.head(self.encoder(task))
        self.generated = p
        t = self.target
        w1, b1, w2, b2 = p[:, :t], p[:, t : 2 * t], p[:, 2 * t : 3 * t], p[:, 3 * t :]
        hid = torch.tanh(x[:, :, None] * w1[:, None] + b1[:, None])
        return (hid * w2[:, None]).sum(-1) + b2


def _sine_tasks(gen: torch.Generator, tasks: int = 16, points: int = 20):
    while True:
        amp = torch.rand(tasks, generator=gen) * 4.5 + 0.5
        phase = torch.rand(tasks, generator=gen) * math.pi
        x = torch.rand(tasks, points, generator=gen) * 10 - 5
        yield (torch.stack([amp, phase], 1), x), amp[:, None] * torch.sin(x + phase[:, None])


@scenario(
    "h82_hypernet_sine_weights",
    "asgd",
    "gradient_spike",
    where="head",
    diverges=None,
    heldout=True,
    note="a checkpoint-step regulariser on the generated weights with weight 30 (meant 3e-4)",
    onset=250,
)
def h82_hypernet_checkpoint_regulariser(ctx: Context) -> None:
    """A weight-norm penalty on the generated target weights is added only on checkpoint steps
    (a leftover from a debug branch), with weight 30 for 3e-4: at step 250 it sends a one-off
    gradient through the hypernetwork's head far above every other step's."""
    gen = seeded(8213)
    model = HyperNet()
    opt = torch.optim.ASGD(model.parameters(), lr=2e-3)

    def forward(m, inp):
        return m(*inp)

    def extra(step, loss):
        if step == 250:
            return loss + 30.0 * model.generated.pow(2).sum(-1).mean()
        return loss

    fit(
        ctx,
        model,
        opt,
        _sine_tasks(gen),
        450,
        loss_fn=F.mse_loss,
        forward=forward,
        extra_loss=extra,
        classifier=False,
    )
    g = ctx.grad_norms
    med = sorted(g)[len(g) // 2]
    ctx.check("gradient norm at 250 over 30x the median", g[250] > 30 * med)
    ctx.check("no other step over 10x the median", max(g[:250] + g[251:]) < 10 * med)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- MPC policy distilled into an MLP ---------------------------------------------------------


def _mpc_gain(horizon: int = 20, dt: float = 0.1) -> torch.Tensor:
    """First-step gain of a finite-horizon LQR for a double integrator (receding horizon)."""
    A = torch.tensor([[1.0, dt], [0.0, 1.0]], dtype=torch.float64)
    B = torch.tensor([[0.5 * dt * dt], [dt]], dtype=torch.float64)
    Q = torch.diag(torch.tensor([1.0, 0.1], dtype=torch.float64))
    R = torch.tensor([[0.05]], dtype=torch.float64)
    P = Q.clone()
    K = None
    for _ in range(horizon):
        K = torch.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        P = Q + A.T @ P @ (A - B @ K)
    return K.float()


@scenario(
    "h82_mpc_distilled_policy",
    "rmsprop",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy control",
)
def h82_mpc_distill_healthy(ctx: Context) -> None:
    """An MLP policy imitates a receding-horizon controller with input saturation
    (u = clip(-K s, -1, 1)) on states sampled from the operating region: MSE falls."""
    gen = seeded(8214)
    K = _mpc_gain()
    model = nn.Sequential(
        nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def batches():
        while True:
            s = torch.rand(128, 2, generator=gen) * torch.tensor([4.0, 2.0]) - torch.tensor(
                [2.0, 1.0]
            )
            yield s, (-(s @ K.T)).clamp(-1, 1)

    fit(ctx, model, opt, batches(), 400, loss_fn=F.mse_loss, classifier=False)
    L = ctx.losses
    ctx.check("finite", all(math.isfinite(v) for v in L))
    ctx.check("MSE fell over 5x", sum(L[-20:]) / 20 < sum(L[:10]) / 10 / 5)
