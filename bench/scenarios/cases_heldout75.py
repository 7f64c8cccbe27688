"""Held-out scenarios, set 75 (``h75_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face CLVP encoder, MusicGen-Melody decoder, X-CLIP text model, SigLIP-2 text
model and Qwen3-ASR audio encoder, all built tiny from configs; a Cox proportional-hazards
survival net on generated censored data, CORAL and cumulative-link ordinal regression on
generated ratings, NODE-style oblivious trees on breast cancer, APPNP and ChebNet graph nets on a
generated block-model graph, a dueling double DQN on a generated chain, an actor-critic with GAE
on a generated gridworld, a physics-informed net for a generated advection equation, a U-shaped
Fourier neural operator trained by rollout, a Lagrangian neural network on a generated double
spring. Optimizers: AdamW, Adam, NAdam, RAdam, Adamax, Adagrad, Adadelta, ASGD, RMSprop, SGD,
SGD with momentum, and steadygrad.optim's Lion, StableSPAM, AdEMAMix, Grams and AdaBelief.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    bert_batches,
    dead_fraction,
    fit,
    grad_norm,
    scenario,
    seeded,
)


def _hf_quiet() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if s else float("nan")


# -- 1. CLVP encoder: attention logits grow (q scale dropped in a port) --------------------------


def pointer_batches(gen: torch.Generator, batch: int = 32, length: int = 24, vocab: int = 64):
    """Token 1 marks a position; the label is the token right after it (mod 8)."""
    while True:
        x = torch.randint(3, vocab, (batch, length), generator=gen)
        pos = torch.randint(0, length - 1, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, pos] = 1
        yield x, x[rows, pos + 1] % 8


class ClvpPointer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import ClvpEncoder, ClvpEncoderConfig

        _hf_quiet()
        config = ClvpEncoderConfig(
            vocab_size=64,
            hidden_size=64,
            intermediate_size=128,
            projection_dim=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            attention_dropout=0.0,
            dropout=0.0,
            bos_token_id=63,
            eos_token_id=0,
        )
        self.encoder = ClvpEncoder(config)
        self.head = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor, attentions: bool = False):
        out = self.encoder(input_ids=x, output_attentions=attentions)
        logits = self.head(out.last_hidden_state.mean(1))
        return (logits, out.attentions) if attentions else logits


@scenario(
    "h75_hf_clvp_encoder",
    "adamw",
    "attention_logit_growth",
    where=("encoder.layers.0.self_attn",),
    diverges=None,
    heldout=True,
    note="query scale dropped to 1.0 in a port (q_proj assumed pre-scaled), AdamW 1e-2, no wd",
)
def h75_clvp_query_scale_dropped(ctx: Context) -> None:
    """A CLVP encoder ported to a pointer task: the port sets every attention's ``scale`` to 1.0
    (the original checkpoint folded 1/sqrt(d) into q_proj; a fresh init does not) and trains at
    an LR of 1e-2 without weight decay, so the q/k products grow step after step."""
    gen = seeded(7501)
    model = ClvpPointer()
    for layer in model.encoder.layers:
        layer.self_attn.scale = 1.0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    batches = pointer_batches(gen)
    probe_x, _ = next(batches)
    qk: list[float] = []
    entropy: list[float] = []
    ctx.attach(model, opt)
    for step in range(180):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.step(loss)
        if step % 30 == 0 or step == 179:
            with torch.no_grad():
                _, att = model(probe_x, attentions=True)
                a = att[0].clamp_min(1e-30)
                entropy.append(float(-(a * a.log()).sum(-1).mean()))
                attn = model.encoder.layers[0].self_attn
                qk.append(float(attn.q_proj.weight.norm() * attn.k_proj.weight.norm()))
    ctx.qk = qk  # type: ignore[attr-defined]
    ctx.entropy = entropy  # type: ignore[attr-defined]
    ctx.check("layer-0 |Wq||Wk| grew over 5x", qk[-1] > 5 * qk[0])
    ctx.check("layer-0 attention entropy fell below a quarter", entropy[-1] < 0.25 * entropy[0])


# -- 2. MusicGen-Melody decoder: z-loss with the wrong sign ---------------------------------------


def codec_batches(gen: torch.Generator, batch: int = 16, length: int = 32, vocab: int = 64):
    """Token streams from a sparse random Markov chain (a stand-in for codec codes)."""
    succ = torch.randint(0, vocab, (vocab, 3), generator=gen)
    while True:
        seq = torch.empty(batch, length + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, vocab, (batch,), generator=gen)
        for t in range(length):
            pick = torch.randint(0, 3, (batch,), generator=gen)
            seq[:, t + 1] = succ[seq[:, t], pick]
        yield seq[:, :-1], seq[:, 1:]


def _musicgen_melody():
    from transformers import MusicgenMelodyDecoderConfig, MusicgenMelodyForCausalLM

    _hf_quiet()
    config = MusicgenMelodyDecoderConfig(
        vocab_size=64,
        max_position_embeddings=64,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=2,
        hidden_size=32,
        dropout=0.0,
        num_codebooks=1,
        pad_token_id=64,
        bos_token_id=64,
    )
    return MusicgenMelodyForCausalLM(config)


@scenario(
    "h75_hf_musicgen_melody_decoder",
    "sg_lion",
    "output_logit_divergence",
    where=("lm_heads.0", "lm_heads"),
    diverges=None,
    heldout=True,
    note="z-loss (weight 1e-2) subtracted instead of added (sign flipped in a port), Lion",
)
def h75_musicgen_zloss_sign_flipped(ctx: Context) -> None:
    """A MusicGen-Melody decoder on codec-like token streams with a z-loss whose sign was
    flipped in a port: the log-partition is rewarded instead of penalised, so log Z of the
    output head climbs while cross-entropy still looks sane."""
    from steadygrad.optim import Lion

    gen = seeded(7502)
    model = _musicgen_melody()
    opt = Lion(model.parameters(), lr=2e-3, fused=False)
    batches = codec_batches(gen)
    log_z: list[float] = []
    ctx.attach(model, opt)
    for _step in range(360):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        ce = F.cross_entropy(logits.reshape(-1, 64), y.reshape(-1))
        lse = torch.logsumexp(logits.float(), -1)
        total = ce - 1e-2 * lse.pow(2).mean()  # meant: ce + 1e-2 * lse**2
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.step(ce)
        log_z.append(float(lse.detach().mean()))
    ctx.info = [round(v, 1) for v in log_z[::20]]  # type: ignore[attr-defined]
    ctx.check("mean log Z rose by over 15", log_z[-1] > log_z[0] + 15)
    ctx.check("and was still rising at the end", log_z[-1] > log_z[-90] + 2)
    ctx.check("cross-entropy finite", all(_finite(ctx.losses)))


# -- 3. X-CLIP text model: labels from an annotation pipeline that drifts ------------------------


class XclipClassifier(nn.Module):
    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        from transformers import XCLIPTextConfig, XCLIPTextModel

        _hf_quiet()
        config = XCLIPTextConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
        )
        self.text = XCLIPTextModel(config)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.text(input_ids=x).pooler_output)


@scenario(
    "h75_hf_xclip_text",
    "nadam",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    onset=120,
    note="share of flipped labels grows from 0 to 60% after step 120 (annotation drift)",
)
def h75_xclip_label_drift(ctx: Context) -> None:
    """An X-CLIP text tower on a token-counting task whose labels come from an annotation
    pipeline that degrades: from step 120 on, a growing share of each batch's labels is flipped
    (60% by the end). No spike, no blow-up: the loss just creeps back up."""
    gen = seeded(7503)
    model = XclipClassifier()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    flip_gen = torch.Generator().manual_seed(75031)

    def batches():
        for x, y in bert_batches(gen, batch=32, length=16, vocab=127):
            x = torch.cat([x, torch.full((len(x), 1), 127)], 1)  # end-of-text, read by the pooler
            yield x, y

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        share = 0.6 * min(1.0, max(0, step - 120) / 240)
        flip = torch.rand(len(y), generator=flip_gen) < share
        return x, torch.where(flip, 1 - y, y)

    fit(ctx, model, opt, batches(), 360, alter=alter)
    before = sum(ctx.losses[100:120]) / 20
    end = sum(ctx.losses[-40:]) / 40
    ctx.info = (round(before, 3), round(end, 3))  # type: ignore[attr-defined]
    ctx.check("learned the task before the drift", before < 0.4)
    ctx.check("loss climbed to over twice its level at the onset", end > 2 * before)
    ctx.check("finite throughout", all(_finite(ctx.losses)))


# -- 4. PINN for advection: a warm-up whose peak is 100x too high ----------------------------------


class AdvectionPINN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.Tanh(),
            nn.Linear(width, 1),
        )

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        return self.net(xt)


def advection_loss(model: nn.Module, gen: torch.Generator, speed: float = 1.0) -> torch.Tensor:
    """Residual of u_t + c u_x = 0 on [-1, 1] x [0, 1], u(x, 0) = sin(pi x), periodic in x."""
    xt = torch.rand(256, 2, generator=gen) * torch.tensor([2.0, 1.0]) - torch.tensor([1.0, 0.0])
    xt.requires_grad_(True)
    u = model(xt)
    du = torch.autograd.grad(u.sum(), xt, create_graph=True)[0]
    residual = du[:, 1] + speed * du[:, 0]
    x0 = torch.rand(128, 1, generator=gen) * 2 - 1
    u0 = model(torch.cat([x0, torch.zeros_like(x0)], 1))
    t = torch.rand(64, 1, generator=gen)
    left = model(torch.cat([-torch.ones_like(t), t], 1))
    right = model(torch.cat([torch.ones_like(t), t], 1))
    return (
        residual.pow(2).mean()
        + (u0 - torch.sin(math.pi * x0)).pow(2).mean()
        + (left - right).pow(2).mean()
    )


@scenario(
    "h75_pinn_advection",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="linear warm-up to lr 0.5 where 5e-3 was meant (exponent typo), momentum 0.9",
)
def h75_pinn_advection_warmup_typo(ctx: Context) -> None:
    """A physics-informed net for 1-D advection with SGD+momentum and a linear warm-up whose
    peak was typed as 5e-1 instead of 5e-3: fine for the first steps, then the step passes the
    curvature's stability limit and the loss oscillates and blows up."""
    gen = seeded(7504)
    model = AdvectionPINN()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    ctx.attach(model, opt)
    for step in range(300):
        for group in opt.param_groups:
            group["lr"] = 5e-1 * min(1.0, (step + 1) / 300)
        loss = advection_loss(model, gen)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.step(loss)
    finite = [v for v in ctx.losses if math.isfinite(v)]
    best = min(finite)
    low = finite.index(best)
    ctx.check("loss went down at first", best < 0.5 * ctx.losses[0])
    ctx.check(
        "then blew up (over 100x its best, or non-finite)",
        len(finite) < len(ctx.losses) or max(finite[low:]) > 100 * best,
    )


# -- 5. U-shaped Fourier neural operator: rollout curriculum through an amplifying operator --------


class SpectralConv1d(nn.Module):
    def __init__(self, channels: int, modes: int, scale: float) -> None:
        super().__init__()
        self.modes = modes
        self.weight = nn.Parameter(scale * torch.randn(channels, channels, modes, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = torch.fft.rfft(x)
        w = torch.view_as_complex(self.weight)
        out = torch.zeros_like(xf)
        out[..., : self.modes] = torch.einsum("bim,iom->bom", xf[..., : self.modes], w)
        return torch.fft.irfft(out, n=x.shape[-1])


class UFNO1d(nn.Module):
    """lift -> spectral block at full resolution -> pooled block at half -> upsample, skip
    concat -> spectral block -> projection; u_next = u + G(u). No normalisation anywhere."""

    def __init__(self, width: int = 16, modes: int = 8, scale: float = 0.6) -> None:
        super().__init__()
        self.lift = nn.Conv1d(1, width, 1)
        self.spec_down = SpectralConv1d(width, modes, scale)
        self.mix_down = nn.Conv1d(width, width, 1)
        self.spec_mid = SpectralConv1d(width, modes // 2, scale)
        self.mix_mid = nn.Conv1d(width, width, 1)
        self.fuse = nn.Conv1d(2 * width, width, 1)
        self.spec_up = SpectralConv1d(width, modes, scale)
        self.mix_up = nn.Conv1d(width, width, 1)
        self.proj = nn.Conv1d(width, 1, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = self.lift(u)
        d = F.gelu(self.spec_down(h) + self.mix_down(h))
        m = F.avg_pool1d(d, 2)
        m = F.gelu(self.spec_mid(m) + self.mix_mid(m))
        m = F.interpolate(m, scale_factor=2, mode="linear")
        f = self.fuse(torch.cat([d, m], 1))
        f = F.gelu(self.spec_up(f) + self.mix_up(f))
        return u + self.proj(f)


def advection_fields(gen: torch.Generator, batch: int, steps: int, n: int = 32, shift: int = 1):
    """Random smooth periodic fields and their exact advection by ``shift`` cells per step."""
    x = torch.linspace(0, 2 * math.pi, n + 1)[:-1]
    k = torch.arange(1, 5)
    a = torch.randn(batch, 4, generator=gen) / k
    b = torch.randn(batch, 4, generator=gen) / k
    u0 = (
        a[:, :, None] * torch.sin(k[:, None] * x) + b[:, :, None] * torch.cos(k[:, None] * x)
    ).sum(1, keepdim=True)
    return torch.stack([torch.roll(u0, shifts=shift * t, dims=-1) for t in range(steps + 1)], 0)


@scenario(
    "h75_ufno_rollout_operator",
    "sgd",
    "exploding_gradients",
    where=("spec_down", "spec_mid", "spec_up"),
    diverges="auto",
    heldout=True,
    note="spectral weights initialised 0.6*randn (meant 1/width^2), rollout horizon 1 -> 12",
)
def h75_ufno_rollout_curriculum_explodes(ctx: Context) -> None:
    """A U-shaped Fourier neural operator trained by autoregressive rollout with a horizon
    curriculum (1 step, growing to 12), plain SGD and no clipping. Its spectral weights were
    initialised with a fixed 0.6*randn rather than 1/width^2, so one step of the operator
    amplifies; as the horizon grows, backpropagation through the rollout multiplies the gradient
    up, step after step, until it overflows."""
    gen = seeded(7505)
    model = UFNO1d()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    names = [
        n for n, _ in model.named_children() if any(True for _ in getattr(model, n).parameters())
    ]
    per_module: dict[str, list[float]] = {n: [] for n in names}
    ctx.attach(model, opt)
    for step in range(150):
        horizon = 1 + min(11, step // 10)
        traj = advection_fields(gen, 8, horizon)
        u = traj[0]
        loss = torch.zeros(())
        for t in range(1, horizon + 1):
            u = model(u)
            loss = loss + F.mse_loss(u, traj[t])
        loss = loss / horizon
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        for n in names:
            g = sum(float(p.grad.norm()) ** 2 for p in getattr(model, n).parameters()) ** 0.5
            per_module[n].append(g)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.step(loss)
    base = _median(ctx.grad_norms[5:20])
    norms = [g for g in ctx.grad_norms if math.isfinite(g)]
    first_growth = {}
    for n, gs in per_module.items():
        ref = _median(gs[5:20])
        over = [i for i, g in enumerate(gs) if i >= 20 and (not math.isfinite(g) or g > 100 * ref)]
        if over:
            first_growth[n] = over[0]
    ctx.info = (base, max(norms), first_growth)  # type: ignore[attr-defined]
    ctx.check("gradient norm grew over 1000x its level at steps 5-20", max(norms) > 1e3 * base)
    ctx.check(
        "run broke (non-finite or loss over 1e4)",
        not all(_finite(ctx.losses)) or max(ctx.losses) > 1e4,
    )


# -- 6. APPNP on a block-model graph: a few steps at a wrong learning rate kill the ReLUs ---------


def sbm_graph(gen: torch.Generator, n: int = 300, blocks: int = 3, feats: int = 16):
    """A stochastic block model: labels, noisy class-mean features, normalised adjacency with
    self-loops (D^-1/2 (A+I) D^-1/2) and a 30% training mask."""
    y = torch.arange(n) % blocks
    same = y[:, None] == y[None, :]
    prob = torch.where(same, torch.tensor(0.06), torch.tensor(0.006))
    a = (torch.rand(n, n, generator=gen) < prob).float().triu(1)
    a = a + a.T
    means = torch.randn(blocks, feats, generator=gen)
    x = means[y] * 0.6 + torch.randn(n, feats, generator=gen)
    a_hat = a + torch.eye(n)
    d = a_hat.sum(1).rsqrt()
    adj = d[:, None] * a_hat * d[None, :]
    train = torch.rand(n, generator=gen) < 0.3
    return x, y, a, adj, train


class APPNP(nn.Module):
    def __init__(self, feats: int, hidden: int, classes: int, k: int = 10, alpha: float = 0.1):
        super().__init__()
        self.lin1 = nn.Linear(feats, hidden)
        self.lin2 = nn.Linear(hidden, classes)
        self.k, self.alpha = k, alpha

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.lin1(x))

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h = self.lin2(self.hidden(x))
        z = h
        for _ in range(self.k):
            z = (1 - self.alpha) * adj @ z + self.alpha * h
        return z


@scenario(
    "h75_appnp_sbm_nodes",
    "asgd",
    "loss_of_plasticity",
    where="lin1",
    diverges=None,
    heldout=True,
    note="lin1's bias initialised at -4 (a gate's bias_init copied onto a ReLU layer)",
)
def h75_appnp_relus_dead_from_bias_init(ctx: Context) -> None:
    """APPNP node classification with ASGD, whose first layer takes its bias init from a config
    entry meant for a sigmoid gate (-4): every ReLU of lin1 is off on every node from the first
    step, no gradient reaches lin1, and the run learns only the class priors."""
    gen = seeded(7506)
    x, y, _, adj, train = sbm_graph(gen)
    model = APPNP(16, 64, 3)
    nn.init.constant_(model.lin1.bias, -4.0)
    lin1_grads: list[float] = []
    opt = torch.optim.ASGD(model.parameters(), lr=0.2)
    ctx.attach(model, opt)
    for _step in range(300):
        ctx.targets(y[train])
        loss = F.cross_entropy(model(x, adj)[train], y[train])
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        lin1_grads.append(float(model.lin1.weight.grad.abs().max()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.step(loss)
    with torch.no_grad():
        dead = dead_fraction(model.hidden(x))
    ctx.info = (dead, min(ctx.losses))  # type: ignore[attr-defined]
    ctx.check("over 90% of lin1's units dead at the end", dead > 0.9)
    ctx.check("lin1 never received a gradient", max(lin1_grads) == 0.0)
    ctx.check("loss stuck near chance (ln 3)", min(ctx.losses) > 0.9)


# -- 7. CORAL ordinal regression: the threshold head's LR group typed 100x -------------------------


def rating_batches(gen: torch.Generator, batch: int = 64, feats: int = 10, levels: int = 5):
    """Ratings 0..4: a latent score w.x + noise cut at fixed thresholds."""
    w = torch.randn(feats, generator=gen)
    cuts = torch.tensor([-1.5, -0.5, 0.5, 1.5]) * w.norm()
    while True:
        x = torch.randn(batch, feats, generator=gen)
        score = x @ w + 0.5 * torch.randn(batch, generator=gen)
        yield x, (score[:, None] > cuts).sum(1)


class CoralHead(nn.Module):
    """CORAL: one shared weight vector, K-1 ordered biases."""

    def __init__(self, hidden: int, levels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden, 1, bias=False)
        self.bias = nn.Parameter(torch.linspace(1.0, -1.0, levels - 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h) + self.bias


class CoralNet(nn.Module):
    def __init__(self, feats: int = 10, hidden: int = 32, levels: int = 5) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(feats, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.coral = CoralHead(hidden, levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.coral(self.encoder(x))


def coral_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    levels = (y[:, None] > torch.arange(logits.shape[1])).float()
    return F.binary_cross_entropy_with_logits(logits, levels)


@scenario(
    "h75_coral_ordinal",
    "radam",
    "update_ratio_out_of_range",
    where="coral",
    diverges=None,
    heldout=True,
    note="the CORAL head's param group at lr 1.0 (meant 1e-3), encoder at 1e-3",
)
def h75_coral_head_group_lr_typo(ctx: Context) -> None:
    """CORAL ordinal regression on generated ratings with RAdam and two parameter groups: the
    encoder at 1e-3 and the CORAL head at 1.0 (1e-3 meant). Every step moves the head's weight
    vector and biases by a large share of their size; nothing else is wrong."""
    gen = seeded(7507)
    model = CoralNet()
    opt = torch.optim.RAdam(
        [
            {"params": model.encoder.parameters(), "lr": 1e-3},
            {"params": model.coral.parameters(), "lr": 1.0},
        ]
    )
    ratios: dict[str, list[float]] = {
        "coral.fc.weight": [],
        "coral.bias": [],
        "encoder.2.weight": [],
    }
    params = dict(model.named_parameters())
    ctx.attach(model, opt)
    batches = rating_batches(gen)
    for _step in range(300):
        x, y = next(batches)
        loss = coral_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        before = {n: params[n].detach().clone() for n in ratios}
        opt.step()
        for n in ratios:
            ratios[n].append(float((params[n].detach() - before[n]).norm() / before[n].norm()))
        opt.zero_grad(set_to_none=True)
        ctx.step(loss)
    head = _median(ratios["coral.fc.weight"][20:])
    bias = _median(ratios["coral.bias"][20:])
    enc = _median(ratios["encoder.2.weight"][20:])
    ctx.info = (head, bias, enc)  # type: ignore[attr-defined]
    ctx.check("head weight's update/weight ratio over 0.01 per step", head > 0.01)
    ctx.check("encoder's ratio under 1/10 of the head weight's", enc < 0.1 * head)
    ctx.check("finite throughout", all(_finite(ctx.losses)))


# -- 8. NODE oblivious trees: a manual loss scale whose unscale was skipped once -------------------


class ODST(nn.Module):
    """Differentiable oblivious decision trees (NODE): soft feature choice, thresholds and
    temperatures per depth level, a response per leaf."""

    def __init__(self, in_features: int, trees: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.feature_logits = nn.Parameter(0.1 * torch.randn(in_features, trees, depth))
        self.thresholds = nn.Parameter(0.1 * torch.randn(trees, depth))
        self.log_temperature = nn.Parameter(torch.zeros(trees, depth))
        self.response = nn.Parameter(0.1 * torch.randn(trees, 2**depth))
        codes = torch.tensor([[(leaf >> d) & 1 for d in range(depth)] for leaf in range(2**depth)])
        self.register_buffer("codes", codes.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chosen = torch.einsum("bi,itd->btd", x, torch.softmax(self.feature_logits, 0))
        right = torch.sigmoid((chosen - self.thresholds) * torch.exp(-self.log_temperature))
        r = right[:, :, None, :]  # b t 1 d
        leaf = (self.codes * r + (1 - self.codes) * (1 - r)).prod(-1)  # b t leaves
        return torch.einsum("btl,tl->bt", leaf, self.response)


class NODENet(nn.Module):
    def __init__(self, in_features: int = 30, trees: int = 16) -> None:
        super().__init__()
        self.layer1 = ODST(in_features, trees)
        self.layer2 = ODST(in_features + trees, trees)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer1(x)
        return self.layer2(torch.cat([x, h], 1)).mean(1)


def cancer_batches(gen: torch.Generator, batch: int = 64):
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(d.target, dtype=torch.float32)
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


@scenario(
    "h75_node_oblivious_trees",
    "adamax",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="loss scaled by 2**16 for fp16-style safety; unscale skipped once at step 150",
)
def h75_node_unscale_skipped_adamax(ctx: Context) -> None:
    """NODE oblivious trees on breast cancer with Adamax and a hand-rolled static loss scale
    (2**16, gradients divided back before the step). At step 150, the step right after a
    checkpoint save, the unscale is skipped: one gradient 65536x too large fills every
    parameter's infinity-norm state, and the following updates are ~1e4x smaller for the rest
    of the run; training stalls with the loss well above where it was heading."""
    gen = seeded(7508)
    model = NODENet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scale = 2.0**16
    moved: list[float] = []
    ctx.attach(model, opt)
    batches = cancer_batches(gen)
    for step in range(450):
        x, y = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        (loss * scale).backward()
        if step != 150:
            for p in model.parameters():
                p.grad.div_(scale)
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moved.append(
            sum(
                float((p.detach() - b).abs().sum())
                for p, b in zip(model.parameters(), before, strict=True)
            )
        )
        opt.zero_grad(set_to_none=True)
        ctx.step(loss)
    early = _median(moved[100:150])
    late = _median(moved[200:450])
    ctx.info = (early, late, sum(ctx.losses[140:150]) / 10, sum(ctx.losses[-20:]) / 20)  # type: ignore[attr-defined]
    ctx.check("updates after the spike over 100x smaller", late < early / 100)
    ctx.check(
        "loss still falling before the spike", sum(ctx.losses[100:150]) < sum(ctx.losses[50:100])
    )
    ctx.check("finite throughout", all(_finite(ctx.losses)))


# -- 9. Dueling double DQN on a chain: one replay batch with a glitched reward ---------------------


class DuelingQ(nn.Module):
    def __init__(self, states: int, actions: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(states, hidden), nn.ReLU())
        self.value = nn.Linear(hidden, 1)
        self.advantage = nn.Linear(hidden, actions)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        h = self.body(s)
        a = self.advantage(h)
        return self.value(h) + a - a.mean(1, keepdim=True)


@scenario(
    "h75_dueling_ddqn_chain",
    "rmsprop",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=260,
    note="one replay batch at step 260 carries a reward logged as 5000 (sensor glitch)",
)
def h75_ddqn_chain_reward_glitch(ctx: Context) -> None:
    """A dueling double DQN (target net, replay, n=1) on a 10-state chain with RMSprop. At step
    260 the sampled batch holds one transition whose reward was logged as 5000 instead of 1 (a
    glitch in the environment's logger): the TD loss spikes on that batch."""
    gen = seeded(7509)
    n_states = 10
    eye = torch.eye(n_states)
    q = DuelingQ(n_states)
    target = DuelingQ(n_states)
    target.load_state_dict(q.state_dict())
    opt = torch.optim.RMSprop(q.parameters(), lr=1e-3)
    buffer: list[tuple[int, int, float, int, float]] = []
    state = 0
    ctx.attach(q, opt)
    for step in range(420):
        eps = max(0.1, 1.0 - step / 200)
        for _ in range(4):  # four environment steps per update
            if float(torch.rand((), generator=gen)) < eps:
                action = int(torch.randint(0, 2, (), generator=gen))
            else:
                with torch.no_grad():
                    action = int(q(eye[state : state + 1]).argmax())
            nxt = min(state + 1, n_states - 1) if action == 1 else max(state - 1, 0)
            reward = 1.0 if nxt == n_states - 1 else (0.05 if nxt == 0 else 0.0)
            done = float(nxt == n_states - 1)
            buffer.append((state, action, reward, nxt, done))
            state = 0 if done else nxt
        idx = torch.randint(0, len(buffer), (32,), generator=gen)
        s, a, r, s2, d = (torch.tensor(v) for v in zip(*(buffer[i] for i in idx), strict=True))
        if step == 260:
            r = r.clone()
            r[5] = 5000.0
        with torch.no_grad():
            best = q(eye[s2]).argmax(1, keepdim=True)
            y = r + 0.9 * (1 - d) * target(eye[s2]).gather(1, best).squeeze(1)
        pred = q(eye[s]).gather(1, a[:, None]).squeeze(1)
        loss = F.smooth_l1_loss(pred, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(q))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.step(loss)
        if step % 25 == 0:
            target.load_state_dict(q.state_dict())
    med = _median(ctx.losses[200:260])
    ctx.info = (med, ctx.losses[260])  # type: ignore[attr-defined]
    ctx.check("loss at step 260 over 100x the median before", ctx.losses[260] > 100 * med)
    ctx.check("finite throughout", all(_finite(ctx.losses)))


# -- 10. Lagrangian neural network on a double spring: a near-singular mass matrix ----------------


class LagrangianNN(nn.Module):
    """L(q, qdot) from an MLP; accelerations from the Euler-Lagrange equations,
    qddot = H^-1 (dL/dq - d2L/(dqdot dq) qdot), H = d2L/dqdot2."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.lagrangian = nn.Sequential(
            nn.Linear(4, hidden),
            nn.Softplus(),
            nn.Linear(hidden, hidden),
            nn.Softplus(),
            nn.Linear(hidden, 1),
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if not state.requires_grad:
            state = state.clone().requires_grad_(True)
        lag = self.lagrangian(state).sum()
        grad = torch.autograd.grad(lag, state, create_graph=True)[0]
        rows = [
            torch.autograd.grad(grad[:, 2 + i].sum(), state, create_graph=True)[0] for i in range(2)
        ]
        hess = torch.stack(rows, 1)  # b, 2 (d/dqdot_i), 4
        h_vv = hess[:, :, 2:]
        h_vq = hess[:, :, :2]
        rhs = grad[:, :2] - (h_vq @ state[:, 2:, None]).squeeze(-1)
        self.last_hessian = h_vv.detach()
        return torch.linalg.solve(h_vv, rhs)


def double_spring_batches(gen: torch.Generator, batch: int = 64):
    """Wall - k1 - m1 - k2 - m2, unit masses, k1 = 1, k2 = 2: states and true accelerations."""
    while True:
        state = torch.randn(batch, 4, generator=gen)
        q1, q2 = state[:, 0], state[:, 1]
        a1 = -q1 + 2.0 * (q2 - q1)
        a2 = -2.0 * (q2 - q1)
        yield state, torch.stack([a1, a2], 1)


@scenario(
    "h75_lagrangian_double_spring",
    "sg_adabelief",
    "gradient_spike",
    where="lagrangian",
    diverges=None,
    heldout=True,
    note="no regularisation of the learned mass matrix: it passes near-singular on some states",
)
def h75_lnn_mass_matrix_spike(ctx: Context) -> None:
    """A Lagrangian neural network fitted to a double spring's accelerations with AdaBelief.
    The learned Lagrangian's velocity Hessian (the mass matrix) is not kept positive definite;
    on a state where it is nearly singular, the solve multiplies the gradient up: a one-off
    gradient spike from the Lagrangian net, not from bad data."""
    from steadygrad.optim import AdaBelief

    gen = seeded(7510)
    model = LagrangianNN()
    opt = AdaBelief(model.parameters(), lr=1e-3, fused=False)
    batches = double_spring_batches(gen)
    min_det: list[float] = []
    ctx.attach(model, opt)
    for _step in range(300):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        min_det.append(float(torch.linalg.det(model.last_hessian).abs().min()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.step(loss)
    g = ctx.grad_norms
    spike = max(range(30, len(g)), key=lambda i: g[i] if math.isfinite(g[i]) else -1.0)
    ctx.info = (
        spike,
        g[spike],
        _median(g[30:]),
        min_det[spike],
        _median(min_det),
        sorted(g[30:])[-5:],
    )  # type: ignore[attr-defined]
    ctx.check("one gradient after step 30 over 20x the median", g[spike] > 20 * _median(g[30:]))
    ctx.check(
        "the spike's batch had a mass matrix nearer singular than usual",
        min_det[spike] < 0.5 * _median(min_det),
    )


# -- 11. Cox proportional-hazards net: exp of the risk overflows on a mis-scaled lab value --------


class HazardRatio(nn.Module):
    """exp(risk): the hazard ratio, computed directly (no log-sum-exp in the loss)."""

    def forward(self, risk: torch.Tensor) -> torch.Tensor:
        return torch.exp(risk)


class DeepSurv(nn.Module):
    def __init__(self, feats: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feats, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.risk = nn.Linear(hidden, 1)
        self.hazard = HazardRatio()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hazard(self.risk(self.net(x))).squeeze(-1)


def survival_batches(gen: torch.Generator, batch: int = 128, feats: int = 8):
    """Standardised covariates (column 0: creatinine), exponential event times with log-hazard
    x.beta, independent exponential censoring; batches sorted by time, longest first."""
    beta = torch.tensor([0.9, -0.5, 0.4, 0.0, 0.3, -0.2, 0.0, 0.1])
    while True:
        x = torch.randn(batch, feats, generator=gen)
        t_event = -torch.log(torch.rand(batch, generator=gen)) / torch.exp(x @ beta)
        t_cens = -torch.log(torch.rand(batch, generator=gen)) / 0.5
        time = torch.minimum(t_event, t_cens)
        event = (t_event <= t_cens).float()
        order = torch.argsort(time, descending=True)
        yield x[order], event[order]


def cox_loss(hazard: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood; rows sorted by time, longest first, so the risk set
    of row i is rows 0..i (the naive form: log of a cumulative sum of hazards)."""
    log_risk_set = torch.log(torch.cumsum(hazard, 0))
    return -((torch.log(hazard) - log_risk_set) * event).sum() / event.sum().clamp_min(1.0)


@scenario(
    "h75_deepsurv_cox_censored",
    "sg_stablespam",
    "nonfinite",
    where="hazard",
    diverges=230,
    heldout=True,
    onset=230,
    note="a creatinine value in umol/L among mg/dL ones at step 230: exp(risk) overflows",
)
def h75_cox_hazard_overflow_unit_mixup(ctx: Context) -> None:
    """A DeepSurv Cox model on censored generated data with StableSPAM; the loss takes
    log(exp(risk)) and log(cumsum(exp(risk))) naively. At step 230 one patient's creatinine
    arrives in umol/L (x88.4) and is standardised with the mg/dL statistics, ~350 standard
    deviations out: the risk passes 88, exp overflows to inf in the hazard module, and the
    loss turns NaN."""
    from steadygrad.optim import StableSPAM

    gen = seeded(7511)
    model = DeepSurv()
    opt = StableSPAM(model.parameters(), lr=1e-3, fused=False)
    batches = survival_batches(gen)
    seen: dict[str, bool] = {}

    def watch(_m: nn.Module, _i, out: torch.Tensor) -> None:
        if not torch.isfinite(out).all() and "first" not in seen:
            seen["first"] = True
            seen["step"] = len(ctx.losses)  # type: ignore[assignment]

    model.hazard.register_forward_hook(watch)
    ctx.attach(model, opt)
    for step in range(320):
        x, event = next(batches)
        if step == 230:
            x = x.clone()
            raw_mg_dl = 1.0 + 0.3 * x[17, 0]
            x[17, 0] = (raw_mg_dl * 88.4 - 1.0) / 0.3
        loss = cox_loss(model(x), event)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.step(loss)
    finite = _finite(ctx.losses)
    ctx.info = (seen, ctx.losses[225:232])  # type: ignore[attr-defined]
    ctx.check("finite until 230, not at 230", all(finite[:230]) and not finite[230])
    ctx.check("the hazard module's output went non-finite first at 230", seen.get("step") == 230)
    ctx.check("loss fell before the bad record", sum(ctx.losses[200:230]) < sum(ctx.losses[:30]))


# -- 12. Qwen3-ASR encoder: a resumed run without its optimizer state and LR schedule -------------


def tone_batches(
    gen: torch.Generator, batch: int = 16, classes: int = 4, mels: int = 16, frames: int = 100
):
    """Log-spectrogram-like features of noisy tones: class = pitch band (4 bands over 16 bins),
    random onset, level and a little noise."""
    bins = torch.arange(mels).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        centre = 2 + 4 * y.float() + torch.rand(batch, generator=gen) * 2
        band = torch.exp(-0.5 * (bins[None, :] - centre[:, None]) ** 2)  # b, mels
        t = torch.arange(frames).float()
        start = torch.randint(0, 40, (batch,), generator=gen).float()
        env = ((t[None, :] >= start[:, None]) & (t[None, :] < start[:, None] + 50)).float()
        level = 0.5 + torch.rand(batch, 1, 1, generator=gen)
        power = level * band[:, :, None] * env[:, None, :] + 0.05 * torch.rand(
            batch, mels, frames, generator=gen
        )
        yield torch.log(power + 1e-3), y


class Qwen3AsrClassifier(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        from transformers import Qwen3ASREncoder, Qwen3ASREncoderConfig

        _hf_quiet()
        config = Qwen3ASREncoderConfig(
            num_mel_bins=16,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            d_model=32,
            output_dim=32,
            downsample_hidden_size=8,
            n_window=50,
            n_window_infer=100,
            max_position_embeddings=64,
        )
        self.encoder = Qwen3ASREncoder(config)
        self.head = nn.Linear(32, classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, _, t = feats.shape
        mask = torch.ones(b, t, dtype=torch.long)
        h = self.encoder(input_features=feats, input_features_mask=mask).last_hidden_state
        return self.head(h.reshape(b, -1, h.shape[-1]).mean(1))


@scenario(
    "h75_hf_qwen3_asr_encoder",
    "sg_ademamix",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=170,
    note="resume at step 170: fresh optimizer (state lost), LR restarts at the script default 3e-2",
)
def h75_qwen3asr_resume_without_optimizer_state(ctx: Context) -> None:
    """A Qwen3-ASR audio encoder classifying generated tones with AdEMAMix and a cosine
    schedule (peak 3e-3). At step 170 the job is resumed from a checkpoint that kept the weights
    but not the optimizer or scheduler, and the resume script's default peak LR (3e-2) is used:
    a fresh AdEMAMix with empty moments takes 10x-size steps in every direction, and the loss
    jumps before it settles again."""
    from steadygrad.optim import AdEMAMix

    gen = seeded(7512)
    model = Qwen3AsrClassifier()
    peak = 3e-3
    opt = AdEMAMix(model.parameters(), lr=peak, fused=False)
    ctx.attach(model, opt)
    batches = tone_batches(gen)
    for step in range(260):
        if step == 170:  # resumed: new optimizer, the resume script's default peak, no warm-up
            peak = 3e-2
            opt = AdEMAMix(model.parameters(), lr=peak, fused=False)
        since = step if step < 170 else step - 170
        for group in opt.param_groups:
            group["lr"] = peak * 0.5 * (1 + math.cos(math.pi * since / 260))
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.step(loss)
    before = sum(ctx.losses[150:170]) / 20
    jump = max(ctx.losses[170:185])
    ctx.info = (before, jump, sum(ctx.losses[-20:]) / 20)  # type: ignore[attr-defined]
    ctx.check("learned before the resume", before < 0.5)
    ctx.check("loss jumped over 4x right after the resume", jump > 4 * before)
    ctx.check("finite throughout", all(_finite(ctx.losses)))


# -- healthy controls --------------------------------------------------------------------------------


class Siglip2Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import Siglip2TextConfig, Siglip2TextModel

        _hf_quiet()
        config = Siglip2TextConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=0,
        )
        self.text = Siglip2TextModel(config)
        self.cls = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.text(input_ids=x).pooler_output)


@scenario("h75_hf_siglip2_text", "sg_grams", "healthy", heldout=True, note="token-count task")
def h75_healthy_siglip2_text_grams(ctx: Context) -> None:
    gen = seeded(7513)
    model = Siglip2Classifier()
    from steadygrad.optim import Grams

    opt = Grams(model.parameters(), lr=2e-3, fused=False)
    fit(ctx, model, opt, bert_batches(gen, batch=32, length=16, vocab=128), 300)
    ctx.check("loss went down", sum(ctx.losses[-30:]) < 0.6 * sum(ctx.losses[:30]))
    ctx.check("finite throughout", all(_finite(ctx.losses)))


class ChebConv(nn.Module):
    """Chebyshev spectral graph convolution of order K on the rescaled Laplacian."""

    def __init__(self, fin: int, fout: int, k: int = 3) -> None:
        super().__init__()
        self.lins = nn.ModuleList(nn.Linear(fin, fout, bias=i == 0) for i in range(k))

    def forward(self, x: torch.Tensor, lap: torch.Tensor) -> torch.Tensor:
        t_prev, t_cur = x, lap @ x
        out = self.lins[0](t_prev) + self.lins[1](t_cur)
        for lin in self.lins[2:]:
            t_prev, t_cur = t_cur, 2 * lap @ t_cur - t_prev
            out = out + lin(t_cur)
        return out


class ChebNet(nn.Module):
    def __init__(self, feats: int = 16, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.cheb1 = ChebConv(feats, hidden)
        self.cheb2 = ChebConv(hidden, classes)

    def forward(self, x: torch.Tensor, lap: torch.Tensor) -> torch.Tensor:
        return self.cheb2(F.relu(self.cheb1(x, lap)), lap)


@scenario("h75_chebnet_sbm_nodes", "adagrad", "healthy", heldout=True)
def h75_healthy_chebnet_adagrad(ctx: Context) -> None:
    gen = seeded(7514)
    x, y, a, _, train = sbm_graph(gen)
    deg = a.sum(1).clamp_min(1.0)
    d = deg.rsqrt()
    lap = torch.eye(len(y)) - d[:, None] * a * d[None, :]
    lap_scaled = lap - torch.eye(len(y))  # 2L/lambda_max - I with lambda_max taken as 2
    model = ChebNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    for _step in range(250):
        ctx.targets(y[train])
        loss = F.cross_entropy(model(x, lap_scaled)[train], y[train])
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.step(loss)
    with torch.no_grad():
        acc = float((model(x, lap_scaled).argmax(1) == y)[~train].float().mean())
    ctx.info = acc  # type: ignore[attr-defined]
    ctx.check("loss went down", ctx.losses[-1] < 0.5 * ctx.losses[0])
    ctx.check("held-out nodes over 70% right", acc > 0.7)


class ActorCritic(nn.Module):
    def __init__(self, cells: int = 25, actions: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(cells, hidden), nn.Tanh())
        self.policy = nn.Linear(hidden, actions)
        self.value = nn.Linear(hidden, 1)

    def forward(self, s: torch.Tensor):
        h = self.body(s)
        return self.policy(h), self.value(h).squeeze(-1)


@scenario("h75_a2c_gae_gridworld", "adam", "healthy", heldout=True, note="16 envs, 8-step rollouts")
def h75_healthy_actor_critic_gae(ctx: Context) -> None:
    """Synchronous actor-critic with GAE (lambda 0.95) on a 5x5 gridworld, goal in the far
    corner, 16 parallel environments, Adam."""
    seeded(7515)  # seeds the global generator that Categorical.sample draws from
    size, n_env, horizon, gamma, lam = 5, 16, 8, 0.97, 0.95
    eye = torch.eye(size * size)
    moves = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]])
    model = ActorCritic()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    pos = torch.zeros(n_env, 2, dtype=torch.long)
    finished: list[int] = []
    lengths = torch.zeros(n_env, dtype=torch.long)
    ctx.attach(model, opt)
    for _update in range(250):
        obs, acts, rews, dones, vals, logps, ents = [], [], [], [], [], [], []
        for _ in range(horizon):
            s = eye[pos[:, 0] * size + pos[:, 1]]
            logits, v = model(s)
            dist = torch.distributions.Categorical(logits=logits)
            a = dist.sample()
            pos = (pos + moves[a]).clamp(0, size - 1)
            lengths += 1
            done = (pos == size - 1).all(1) | (lengths >= 40)
            r = torch.where((pos == size - 1).all(1), 1.0, -0.01)
            for i in torch.nonzero(done).flatten().tolist():
                finished.append(int(lengths[i]))
            pos = torch.where(done[:, None], torch.zeros_like(pos), pos)
            lengths = torch.where(done, torch.zeros_like(lengths), lengths)
            obs.append(s)
            acts.append(a)
            rews.append(r)
            dones.append(done.float())
            vals.append(v)
            logps.append(dist.log_prob(a))
            ents.append(dist.entropy())
        with torch.no_grad():
            _, last_v = model(eye[pos[:, 0] * size + pos[:, 1]])
            adv = torch.zeros(horizon, n_env)
            gae = torch.zeros(n_env)
            next_v = last_v
            for t in reversed(range(horizon)):
                nonterm = 1 - dones[t]
                delta = rews[t] + gamma * next_v * nonterm - vals[t].detach()
                gae = delta + gamma * lam * nonterm * gae
                adv[t] = gae
                next_v = vals[t].detach()
            ret = adv + torch.stack(vals).detach()
        v_all = torch.stack(vals)
        loss = (
            -(torch.stack(logps) * adv).mean()
            + 0.5 * (v_all - ret).pow(2).mean()
            - 0.01 * torch.stack(ents).mean()
        )
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.step(loss)
    early = sum(finished[:50]) / 50
    late = sum(finished[-50:]) / 50
    ctx.info = (early, late)  # type: ignore[attr-defined]
    ctx.check("episodes got shorter (agent learned the way to the goal)", late < 0.6 * early)
    ctx.check("finite throughout", all(_finite(ctx.losses)))


class CumulativeLink(nn.Module):
    """Ordinal regression with a cumulative logit link: P(y <= k) = sigmoid(theta_k - f(x)),
    ordered cut-points theta (first one plus softplus increments)."""

    def __init__(self, feats: int = 10, hidden: int = 32, levels: int = 5) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(feats, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.first_cut = nn.Parameter(torch.tensor(-1.0))
        self.gaps = nn.Parameter(torch.zeros(levels - 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cuts = torch.cat(
            [self.first_cut[None], self.first_cut + torch.cumsum(F.softplus(self.gaps) + 0.1, 0)]
        )
        cdf = torch.sigmoid(cuts - self.score(x))  # b, K-1
        ones = torch.ones(len(x), 1)
        zeros = torch.zeros(len(x), 1)
        full = torch.cat([zeros, cdf, ones], 1)
        return (full[:, 1:] - full[:, :-1]).clamp_min(1e-7).log()  # log P(y = k)


@scenario("h75_cumulative_link_ordinal", "adadelta", "healthy", heldout=True)
def h75_healthy_cumulative_link_adadelta(ctx: Context) -> None:
    gen = seeded(7516)
    model = CumulativeLink()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, rating_batches(gen), 300, loss_fn=F.nll_loss)
    ctx.check("loss went down", sum(ctx.losses[-30:]) < 0.7 * sum(ctx.losses[:30]))
    ctx.check("finite throughout", all(_finite(ctx.losses)))
