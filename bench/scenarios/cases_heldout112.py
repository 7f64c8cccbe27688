"""Held-out set 112 (``h112_``): Hugging Face Idefics2 perceiver resampler, Aria
cross-attention projector from tiny configs, and hand-written models of fields not yet covered
(differentiable-stack RNN, memory-bank retrieval classifier, option-pricing surrogate, drug-target
affinity CNN, chess value net, Hamming channel decoder, power-flow GNN, direction-of-arrival
beamforming net, battery state-of-health GRU, gene-expression denoising autoencoder).

Every fault is induced the way it happens in practice, and each run checks that it happened.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    scenario,
    seeded,
)

# -- shared helpers -------------------------------------------------------------------------------


def _finite(losses: list[float]) -> bool:
    return all(math.isfinite(v) for v in losses)


def _fell(losses: list[float], factor: float = 0.6) -> bool:
    n = max(len(losses) // 8, 5)
    return _finite(losses) and sum(losses[-n:]) / n < factor * sum(losses[:n]) / n


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


# -- Hugging Face Idefics2 perceiver resampler over digit rows -----------------------------------


class PerceiverDigits(nn.Module):
    """Each digit row is a context token; the Idefics2 perceiver resampler pools them into a few
    latents, which a linear head classifies."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import Idefics2PerceiverConfig
        from transformers.models.idefics2.modeling_idefics2 import Idefics2PerceiverResampler

        cfg = Idefics2PerceiverConfig(
            hidden_size=32,
            resampler_n_latents=8,
            resampler_depth=2,
            resampler_n_heads=2,
            resampler_head_dim=16,
            num_key_value_heads=1,
        )
        self.embed = nn.Linear(8, 32)
        self.pos = nn.Parameter(torch.randn(8, 32) * 0.1)
        self.resampler = Idefics2PerceiverResampler(cfg)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(-1, 8, 8)) + self.pos
        mask = torch.ones(tokens.shape[:2], dtype=torch.long)
        return self.head(self.resampler(tokens, attention_mask=mask).mean(1))


def _max_attention_logit(model: PerceiverDigits, x: torch.Tensor) -> float:
    attn = model.resampler.layers[0].self_attn
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
        attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o)),
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    b = x.shape[0]
    q = seen["q"].reshape(b, -1, 2, 16)
    k = seen["k"].reshape(b, -1, 16)
    return float(torch.einsum("bqhd,bkd->bhqk", q, k).abs().max() / 4.0)


@scenario(
    "h112_hf_idefics2_perceiver_digits",
    "adamw",
    "attention_logit_growth",
    where=("resampler.layers.0.self_attn", "resampler.layers.1.self_attn"),
    diverges="auto",
    heldout=True,
    note="a per-step query/key rescale meant to run once inflates the attention logits",
    onset=60,
)
def h112_perceiver_qk_rescale_every_step(ctx: Context) -> None:
    """A port of a "scale q/k projections by a muP factor" fix-up is called inside the training
    loop instead of once after init: from step 60 the query and key weights of every resampler
    layer grow 6% a step, the attention logits grow with their product, the attention saturates
    and the loss, which had been falling, climbs again."""
    gen = seeded(11201)
    model = PerceiverDigits()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    probe_x = digits()[0][:128]
    before_logit = _max_attention_logit(model, probe_x)

    def rescale(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                for layer in model.resampler.layers:
                    layer.self_attn.q_proj.weight.mul_(1.06)
                    layer.self_attn.k_proj.weight.mul_(1.06)

    fit(ctx, model, opt, digit_batches(gen, 64), 150, before=rescale)
    after_logit = _max_attention_logit(model, probe_x)
    ctx.check("attention logits grew over 20x", after_logit > 20 * max(before_logit, 1e-3))
    ctx.check("loss fell before the rescale began", _fell(ctx.losses[:60], 0.8))
    means = [sum(ctx.losses[i : i + 10]) / 10 for i in range(0, 150, 10)]
    ctx.check("loss rose again once attention saturated", means[-1] > 1.2 * min(means))


@scenario(
    "h112_hf_idefics2_perceiver_digits",
    "adam",
    "healthy",
    heldout=True,
    note="warm-up then cosine decay",
)
def h112_perceiver_healthy(ctx: Context) -> None:
    gen = seeded(11202)
    model = PerceiverDigits()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = 180

    def schedule(step: int) -> None:
        warm = min(1.0, (step + 1) / 20)
        opt.param_groups[0]["lr"] = 2e-3 * warm * 0.5 * (1 + math.cos(math.pi * step / steps))

    fit(ctx, model, opt, digit_batches(gen, 64), steps, before=schedule)
    ctx.check("loss fell", _fell(ctx.losses, 0.6))
    ctx.check("finite", _finite(ctx.losses))


# -- Hugging Face Aria cross-attention projector over digit patches ------------------------------


class AriaProjectorDigits(nn.Module):
    """16 2x2 patches of a digit are vision tokens; Aria's projector cross-attends 8 learned
    queries to them; the mean query feeds a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import AriaConfig
        from transformers.models.aria.modeling_aria import AriaProjector

        cfg = AriaConfig(
            text_config=dict(
                hidden_size=32,
                num_attention_heads=2,
                num_hidden_layers=1,
                intermediate_size=64,
                vocab_size=100,
                moe_num_experts=2,
                moe_topk=1,
                num_key_value_heads=2,
            ),
            vision_config=dict(
                hidden_size=24, num_attention_heads=2, num_hidden_layers=1, intermediate_size=48
            ),
            projector_patch_to_query_dict={16: 8},
        )
        self.patch = nn.Linear(4, 24)
        self.pos = nn.Parameter(torch.randn(16, 24) * 0.5)
        self.projector = AriaProjector(cfg)
        self.head = nn.Linear(8 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        return self.head(self.projector(self.patch(img) + self.pos).flatten(1))


def _fixed_set_batches(gen: torch.Generator, n: int, batch: int):
    x, y = digits()
    idx = torch.randperm(len(y), generator=gen)[:n]
    xs, ys = x[idx], y[idx]
    while True:
        order = torch.randperm(n, generator=gen)[:batch]
        yield xs[order], ys[order]


@scenario(
    "h112_hf_aria_projector_digits",
    "nadam",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="head param group with a learning-rate typo, no weight decay, small fine-tuning set",
    onset=0,
)
def h112_aria_head_lr_typo(ctx: Context) -> None:
    """Fine-tuning on 96 digits, the classifier head gets its own group with lr 1.0 (meant
    1e-3) and no weight decay: the head memorises the set and its unnormalised logits keep
    growing to drive the cross-entropy towards zero."""
    gen = seeded(11203)
    model = AriaProjectorDigits()
    head = list(model.head.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.NAdam([{"params": rest, "lr": 1e-3}, {"params": head, "lr": 1.0}])
    batches = _fixed_set_batches(gen, 96, 32)
    probe_x = digits()[0][:96]
    seen: dict[int, float] = {}

    def measure(step: int) -> None:
        if step in (0, 150):
            with torch.no_grad():
                seen[step] = float(model(probe_x).abs().max())

    fit(ctx, model, opt, batches, 300, before=measure)
    with torch.no_grad():
        end = float(model(probe_x).abs().max())
    ctx.check("output logits grew over 100x and past 25", end > 100 * seen[0] and end > 25)
    ctx.check("and were still growing in the second half", end > 1.2 * seen[150])
    ctx.check("finite", _finite(ctx.losses))


@scenario("h112_hf_aria_projector_digits", "radam", "healthy", heldout=True)
def h112_aria_projector_healthy(ctx: Context) -> None:
    gen = seeded(11204)
    model = AriaProjectorDigits()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    fit(ctx, model, opt, digit_batches(gen, 64), 180)
    ctx.check("loss fell", _fell(ctx.losses, 0.6))
    ctx.check("finite", _finite(ctx.losses))


# -- a differentiable-stack RNN on Dyck words ----------------------------------------------------


class StackRNN(nn.Module):
    """Joulin-Mikolov style continuous stack: a ReLU RNN controller chooses push / pop / no-op
    and the pushed value; it reads the top of the stack back each step."""

    def __init__(self, hidden: int = 32, depth: int = 8, gain: float = 1.0) -> None:
        super().__init__()
        self.depth = depth
        self.controller = nn.RNNCell(2 + 1, hidden, nonlinearity="relu")
        nn.init.orthogonal_(self.controller.weight_hh, gain=gain)
        self.action = nn.Linear(hidden, 3)
        self.push_value = nn.Linear(hidden, 1)
        self.out = nn.Linear(hidden + 1, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = torch.zeros(b, self.controller.hidden_size)
        stack = torch.zeros(b, self.depth)
        outs = []
        for i in range(t):
            h = self.controller(torch.cat([x[:, i], stack[:, :1]], 1), h)
            a = torch.softmax(self.action(h), -1)
            v = torch.sigmoid(self.push_value(h))
            pushed = torch.cat([v, stack[:, :-1]], 1)
            popped = torch.cat([stack[:, 1:], torch.zeros(b, 1)], 1)
            stack = a[:, :1] * pushed + a[:, 1:2] * popped + a[:, 2:] * stack
            outs.append(self.out(torch.cat([h, stack[:, :1]], 1)))
        return torch.stack(outs, 1)


def _dyck_batches(gen: torch.Generator, batch: int = 32, length: int = 24):
    """Random Dyck-1 prefixes; the label at each position is the nesting depth (clipped to 4)."""
    while True:
        opens = torch.rand(batch, length, generator=gen) < 0.55
        depth = torch.zeros(batch, dtype=torch.long)
        toks, labels = [], []
        for i in range(length):
            o = opens[:, i] | (depth == 0)
            depth = depth + torch.where(o, 1, -1)
            toks.append(o.long())
            labels.append(depth.clamp(max=4))
        tok = torch.stack(toks, 1)
        yield F.one_hot(tok, 2).float(), torch.stack(labels, 1)


def _seq_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    "h112_diff_stack_dyck_rnn",
    "sgd",
    "exploding_gradients",
    where=("controller",),
    diverges="auto",
    heldout=True,
    note="recurrent weights initialised with orthogonal gain 2.5 (meant 1.0), no clipping",
)
def h112_stack_rnn_gain_typo(ctx: Context) -> None:
    """The ReLU controller's recurrent matrix is initialised orthogonal with gain 2.5 (a typo
    for 1.0) and there is no gradient clipping: through 24 steps of recurrence the backward
    pass compounds the gain, the gradient norm is hundreds of times a sound controller's,
    each SGD step enlarges the recurrent weights further, and within ~10 steps the gradient
    overflows."""
    gen = seeded(11205)
    model = StackRNN(gain=2.5)
    reference = StackRNN(gain=1.0)
    ref_norms = []
    ref_batches = _dyck_batches(seeded(11299))
    for _ in range(10):
        x, y = next(ref_batches)
        reference.zero_grad()
        _seq_ce(reference(x), y).backward()
        ref_norms.append(
            float(torch.cat([p.grad.flatten() for p in reference.parameters()]).norm())
        )
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    fit(ctx, model, opt, _dyck_batches(gen), 80, loss_fn=_seq_ce, classifier=False)
    g = ctx.grad_norms
    ref = _median(ref_norms)
    ctx.check("gradient norm over 50x a gain-1.0 controller's", max(g) > 50 * ref)
    finite = [v for v in g if math.isfinite(v)]
    ctx.check("gradient norm grew over 100x within a few steps", max(finite) > 100 * g[0])
    ctx.check("then overflowed to non-finite", len(finite) < len(g))


# -- a retrieval classifier over a memory bank of class prototypes -------------------------------


class MemoryBankClassifier(nn.Module):
    """An encoder embeds a digit; logits are cosine similarities to a memory bank of learned
    class keys, divided by a temperature."""

    def __init__(self, tau: float) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
        self.keys = nn.Parameter(torch.randn(10, 32))
        self.tau = tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.encoder(x), dim=1)
        return z @ F.normalize(self.keys, dim=1).T / self.tau


@scenario(
    "h112_memory_bank_knn_classifier",
    "adamax",
    "softmax_collapse",
    where=("encoder.2",),
    diverges=None,
    heldout=True,
    note="temperature 0.003 (meant 0.03) on a small set",
)
def h112_memory_bank_low_temperature(ctx: Context) -> None:
    """The temperature of the cosine logits is 0.003 (a typo for 0.03): logits span +-330, and
    on a small set of 200 digits a large share of rows' float32 softmax rounds to exactly
    one-hot (their gradient is exactly zero)."""
    gen = seeded(11206)
    model = MemoryBankClassifier(tau=0.003)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _fixed_set_batches(gen, 200, 50), 200)
    x, y = digits()
    idx = torch.randperm(len(y), generator=seeded(11206))[:200]
    with torch.no_grad():
        frac = collapsed_fraction(model(x[idx]), y[idx])
    ctx.check("over a quarter of the training rows' softmax is exactly one-hot", frac > 0.25)
    ctx.check("finite", _finite(ctx.losses))


# -- a Black-Scholes option-pricing surrogate ----------------------------------------------------


def _bs_batches(gen: torch.Generator, batch: int = 128):
    normal = torch.distributions.Normal(0.0, 1.0)
    while True:
        m = torch.rand(batch, generator=gen) * 0.8 + 0.6  # S / K
        t = torch.rand(batch, generator=gen) * 1.9 + 0.1
        s = torch.rand(batch, generator=gen) * 0.5 + 0.1
        r = torch.rand(batch, generator=gen) * 0.08
        d1 = (torch.log(m) + (r + s**2 / 2) * t) / (s * t.sqrt())
        d2 = d1 - s * t.sqrt()
        price = m * normal.cdf(d1) - torch.exp(-r * t) * normal.cdf(d2)
        yield torch.stack([m, t, s, r * 10], 1), price[:, None]


class OptionPricer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@scenario(
    "h112_option_pricing_mlp",
    "nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="a learning-rate range test left on: lr ramps from 0.02 to 6 from step 40",
    onset=40,
)
def h112_option_pricer_lr_range(ctx: Context) -> None:
    gen = seeded(11207)
    model = OptionPricer()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def schedule(step: int) -> None:
        t = max(0, step - 40) / 160
        opt.param_groups[0]["lr"] = 0.02 * math.exp(min(t, 1.0) * math.log(300))

    fit(
        ctx,
        model,
        opt,
        _bs_batches(gen),
        200,
        loss_fn=F.mse_loss,
        classifier=False,
        before=schedule,
    )
    losses = ctx.losses
    low = min(losses[:60])
    ctx.check("loss fell first", low < 0.5 * losses[0])
    blew = (not _finite(losses)) or max(losses[60:]) > 20 * low
    ctx.check("loss blew up once the ramp passed the limit", blew)


# -- drug-target affinity (DeepDTA-style 1-D CNNs) ------------------------------------------------


def _dta_batches(gen: torch.Generator, batch: int = 64):
    """Generated SMILES-like and protein-like token strings; affinity depends on motif counts."""
    while True:
        drug = torch.randint(0, 20, (batch, 24), generator=gen)
        prot = torch.randint(0, 20, (batch, 40), generator=gen)
        a = (drug < 4).float().mean(1) * 4 + (prot < 3).float().mean(1) * 3
        b = ((drug[:, :-1] == 5) & (drug[:, 1:] == 6)).float().sum(1) * 0.5
        y = 5.0 + a + b + 0.05 * torch.randn(batch, generator=gen)
        yield torch.cat([drug, prot + 20], 1), y[:, None]


class AffinityCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.drug_conv = nn.Conv1d(16, 32, 3, padding=1)
        self.prot_conv = nn.Conv1d(16, 32, 5, padding=2)
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 1)

    def features(self, tok: torch.Tensor) -> torch.Tensor:
        e = self.embed(tok).transpose(1, 2)
        d = F.relu(self.drug_conv(e[:, :, :24])).amax(2)
        p = F.relu(self.prot_conv(e[:, :, 24:])).amax(2)
        return F.relu(self.fc1(torch.cat([d, p], 1)))

    def forward(self, tok: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(tok))


@scenario(
    "h112_drug_target_affinity_cnn",
    "sgd_mom",
    "loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="a partial checkpoint restore loads fc1's bias from a mismatched run",
    onset=90,
)
def h112_dta_bad_bias_restore(ctx: Context) -> None:
    """At step 90 training resumes from a checkpoint whose fc1 bias came from a run with a
    shifted input scale (strict=False load): it is 6 below what the layer needs, every unit of
    the ReLU after fc1 is dead from then on, and the loss stops improving."""
    gen = seeded(11208)
    model = AffinityCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def restore(step: int) -> None:
        if step == 90:
            with torch.no_grad():
                model.fc1.bias.sub_(6.0)

    fit(
        ctx,
        model,
        opt,
        _dta_batches(gen),
        200,
        loss_fn=F.mse_loss,
        classifier=False,
        before=restore,
    )
    tok, _ = next(_dta_batches(seeded(99)))
    with torch.no_grad():
        dead = dead_fraction(model.features(tok))
    ctx.check("over 90% of fc1's ReLU units dead", dead > 0.9)
    ctx.check("loss had fallen before the restore", _fell(ctx.losses[:90], 0.5))


# -- a chess value net ---------------------------------------------------------------------------


def _chess_batches(gen: torch.Generator, batch: int = 64):
    """Random sparse positions in 12 piece planes; the value is tanh of the material balance."""
    worth = torch.tensor([1, 3, 3, 5, 9, 0, -1, -3, -3, -5, -9, 0], dtype=torch.float32)
    while True:
        planes = (torch.rand(batch, 12, 8, 8, generator=gen) < 0.03).float()
        material = (planes.sum((2, 3)) * worth).sum(1)
        yield planes, torch.tanh(material / 6)[:, None]


class ChessValueNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(12, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 16, 64)
        self.value = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return torch.tanh(self.value(F.relu(self.fc(x.flatten(1)))))


@scenario(
    "h112_chess_value_net",
    "adagrad",
    "update_ratio_out_of_range",
    where=("value",),
    diverges=None,
    heldout=True,
    note="value head group lr 1e-7 (a typo for 1e-2): the head barely moves",
)
def h112_chess_value_head_lr_typo(ctx: Context) -> None:
    gen = seeded(11209)
    model = ChessValueNet()
    head = list(model.value.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("value.")]
    opt = torch.optim.Adagrad([{"params": rest, "lr": 0.02}, {"params": head, "lr": 1e-7}])
    w0 = model.value.weight.detach().clone()
    c0 = model.conv1.weight.detach().clone()
    fit(ctx, model, opt, _chess_batches(gen), 160, loss_fn=F.mse_loss, classifier=False)
    head_rel = float((model.value.weight - w0).norm() / w0.norm())
    conv_rel = float((model.conv1.weight - c0).norm() / c0.norm())
    ctx.check("value head moved under 1e-4 relative", head_rel < 1e-4)
    ctx.check("the rest trained", conv_rel > 0.05)


# -- a neural decoder for the Hamming(7,4) code over AWGN ----------------------------------------

_HAMMING_G = torch.tensor(
    [
        [1, 0, 0, 0, 1, 1, 0],
        [0, 1, 0, 0, 1, 0, 1],
        [0, 0, 1, 0, 0, 1, 1],
        [0, 0, 0, 1, 1, 1, 1],
    ],
    dtype=torch.float32,
)


def _channel_batches(gen: torch.Generator, batch: int = 128, snr_db: float = 2.0):
    sigma = 10 ** (-snr_db / 20)
    while True:
        bits = (torch.rand(batch, 4, generator=gen) < 0.5).float()
        code = (bits @ _HAMMING_G) % 2
        rx = (1 - 2 * code) + sigma * torch.randn(batch, 7, generator=gen)
        yield 2 * rx / sigma**2, bits  # LLRs


class HammingDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(7, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@scenario(
    "h112_channel_decoder_hamming",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    note="one step backpropagates the loss times 1e4 (gradient-accumulation divisor inverted)",
    onset=60,
)
def h112_channel_decoder_accum_divisor(ctx: Context) -> None:
    """At step 60 a gradient-accumulation path divides by 1e-4 instead of multiplying: one
    backward pass carries 1e4 times the gradient. Adam's second moment (beta2 0.999) keeps the
    squared spike for hundreds of steps, so every later update is tiny and learning stalls."""
    gen = seeded(11210)
    model = HammingDecoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    w = model.net[0].weight
    snap: dict[int, torch.Tensor] = {}
    vmax: dict[str, float] = {}

    def before(step: int) -> None:
        if step in (40, 50, 100, 110):
            snap[step] = w.detach().clone()
        if step == 60:
            vmax["before"] = float(opt.state[w]["exp_avg_sq"].max())
        if step == 61:
            vmax["after"] = float(opt.state[w]["exp_avg_sq"].max())

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 1e4 if step == 60 else loss

    fit(
        ctx,
        model,
        opt,
        _channel_batches(gen),
        200,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
        before=before,
        extra_loss=extra,
    )
    move_before = float((snap[50] - snap[40]).norm())
    move_after = float((snap[110] - snap[100]).norm())
    ctx.check("second moment jumped over 1e5x", vmax["after"] > 1e5 * vmax["before"])
    ctx.check("updates shrank over 10x after the spike", move_after < 0.1 * move_before)
    ctx.check("reported loss stayed finite", _finite(ctx.losses))


@scenario(
    "h112_channel_decoder_hamming",
    "adadelta",
    "healthy",
    heldout=True,
    note="SNR curriculum from 6 dB down to 2 dB",
)
def h112_channel_decoder_healthy(ctx: Context) -> None:
    gen = seeded(11211)
    model = HammingDecoder()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def curriculum():
        hi, lo = _channel_batches(gen, snr_db=6.0), _channel_batches(gen, snr_db=2.0)
        step = 0
        while True:
            yield next(hi) if step < 60 else next(lo)
            step += 1

    fit(
        ctx,
        model,
        opt,
        curriculum(),
        200,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
    )
    ctx.check("loss fell", _fell(ctx.losses, 0.8))
    ctx.check("finite", _finite(ctx.losses))


# -- a power-flow GNN on a generated 14-bus grid -------------------------------------------------


def _grid_adjacency(n: int = 14) -> torch.Tensor:
    edges = [(i, i + 1) for i in range(n - 1)] + [(0, 4), (1, 5), (3, 8), (5, 11), (8, 13)]
    a = torch.eye(n)
    for i, j in edges:
        a[i, j] = a[j, i] = 1.0
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


def _power_batches(gen: torch.Generator, batch: int = 32, n: int = 14):
    adj = _grid_adjacency(n)
    while True:
        p = torch.randn(batch, n, generator=gen) * 0.5
        q = torch.randn(batch, n, generator=gen) * 0.3
        v = 1.0 + 0.05 * (adj @ (adj @ p[..., None]))[..., 0] + 0.02 * (adj @ q[..., None])[..., 0]
        yield torch.stack([p, q], -1), v


class PowerFlowGNN(nn.Module):
    def __init__(self, n: int = 14) -> None:
        super().__init__()
        self.register_buffer("adj", _grid_adjacency(n))
        self.inp = nn.Linear(2, 32)
        self.gc1 = nn.Linear(32, 32)
        self.gc2 = nn.Linear(32, 32)
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.gc1(self.adj @ h)) + h
        h = torch.tanh(self.gc2(self.adj @ h)) + h
        return self.out(h)[..., 0] + 1.0


@scenario(
    "h112_power_flow_gnn",
    "asgd",
    "data_outlier",
    diverges=None,
    heldout=True,
    note="one SCADA batch logged in kW instead of MW",
    onset=120,
)
def h112_power_flow_units_batch(ctx: Context) -> None:
    """At step 120 one batch of bus injections arrives in kW instead of MW (1000x): that step's
    loss is orders of magnitude above the rest; the tanh layers saturate and training recovers."""
    gen = seeded(11212)
    model = PowerFlowGNN()
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 120:
            x = x * 1000.0
            y = y.clone()
        return x, y

    fit(
        ctx, model, opt, _power_batches(gen), 200, loss_fn=F.mse_loss, classifier=False, alter=alter
    )
    losses = ctx.losses
    ctx.check(
        "the kW batch's loss is over 20x the median", losses[120] > 20 * _median(losses[80:120])
    )
    ctx.check("loss had fallen before", losses[110] < 0.5 * losses[0])


# -- direction-of-arrival estimation with a beamforming front end -------------------------------


def _doa_batches(gen: torch.Generator, batch: int = 64, sensors: int = 8, dead_at: int = -1):
    """Snapshots of a uniform linear array with one source at one of 12 angles; the label is the
    angle bin. ``dead_at``: the batch index whose first frame comes from a dead ADC (all zero)."""
    angles = torch.linspace(-60, 60, 12) * math.pi / 180
    k = 0
    while True:
        y = torch.randint(0, 12, (batch,), generator=gen)
        phase = math.pi * torch.arange(sensors)[None, :] * torch.sin(angles[y])[:, None]
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        noise = 0.3 * torch.randn(batch, sensors, 2, generator=gen)
        re = amp * torch.cos(phase) + noise[..., 0]
        im = amp * torch.sin(phase) + noise[..., 1]
        x = torch.stack([re, im], -1)
        if k == dead_at:
            x = x.clone()
            x[0] = 0.0
        k += 1
        yield x, y


class LogPower(nn.Module):
    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return torch.log(p + self.eps)


class BeamformDOA(nn.Module):
    """A learned beamformer bank (complex weights as two real matrices) gives beam powers; their
    log goes to an MLP classifier over angle bins."""

    def __init__(self, beams: int = 24, sensors: int = 8, eps: float = 0.0) -> None:
        super().__init__()
        self.beam_re = nn.Linear(sensors, beams, bias=False)
        self.beam_im = nn.Linear(sensors, beams, bias=False)
        self.logpow = LogPower(eps)
        self.mlp = nn.Sequential(nn.Linear(beams, 64), nn.ReLU(), nn.Linear(64, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        re, im = x[..., 0], x[..., 1]
        out_re = self.beam_re(re) - self.beam_im(im)
        out_im = self.beam_re(im) + self.beam_im(re)
        return self.mlp(self.logpow(out_re**2 + out_im**2))


@scenario(
    "h112_doa_beamform_net",
    "rmsprop",
    "nonfinite",
    where=("logpow",),
    diverges=90,
    heldout=True,
    note="a dead-ADC frame of zeros reaches log(power) with no floor",
    onset=90,
)
def h112_doa_dead_adc_frame(ctx: Context) -> None:
    gen = seeded(11213)
    model = BeamformDOA(eps=0.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, _doa_batches(gen, dead_at=91), 120)
    losses = ctx.losses
    ctx.check("finite before the dead frame", _finite(losses[:90]))
    ctx.check("loss non-finite from the dead frame", not math.isfinite(losses[90]))
    ctx.check(
        "weights non-finite afterwards",
        not all(torch.isfinite(p).all() for p in model.parameters()),
    )


@scenario("h112_doa_beamform_net", "adam", "healthy", heldout=True, note="log floor, step decay")
def h112_doa_healthy(ctx: Context) -> None:
    gen = seeded(11214)
    model = BeamformDOA(eps=1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 80, 0.5)
    fit(
        ctx,
        model,
        opt,
        _doa_batches(gen, dead_at=91),
        180,
        before=lambda s: sched.step() if s else None,
    )
    ctx.check("loss fell", _fell(ctx.losses, 0.6))
    ctx.check("finite", _finite(ctx.losses))


# -- battery state-of-health from charge curves (GRU) --------------------------------------------


def _battery_batches(gen: torch.Generator, batch: int = 32, length: int = 30):
    while True:
        soh = 0.7 + 0.3 * torch.rand(batch, generator=gen)
        t = torch.linspace(0, 1, length)[None, :]
        volt = 3.0 + 1.2 * (1 - torch.exp(-t / (0.2 * soh[:, None]))) * soh[:, None]
        temp = 0.2 * t * (1.5 - soh[:, None])
        x = torch.stack([volt - 3.5, temp], -1) + 0.01 * torch.randn(
            batch, length, 2, generator=gen
        )
        yield x, soh[:, None]


class BatterySOH(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(2, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1]) + 0.85


@scenario(
    "h112_battery_soh_gru",
    "sgd",
    "gradient_spike",
    where=("gru",),
    diverges=None,
    heldout=True,
    note="a periodic recurrent-weight penalty fires once with coefficient 1 (meant 1e-4)",
    onset=100,
)
def h112_battery_penalty_coefficient(ctx: Context) -> None:
    """An orthogonality penalty on the GRU's recurrent weights runs every 100 steps; its
    coefficient was entered as 3.0 instead of 3e-4, so at step 100 the gradient jumps while the
    reported regression loss does not."""
    gen = seeded(11215)
    model = BatterySOH()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step > 0 and step % 100 == 0:
            coef = 3.0 if step == 100 else 3e-4
            w = model.gru.weight_hh_l0.reshape(3, 32, 32)
            eye = torch.eye(32)
            pen = sum(((wi @ wi.T - eye) ** 2).sum() for wi in w)
            return loss + coef * pen
        return loss

    fit(
        ctx,
        model,
        opt,
        _battery_batches(gen),
        200,
        loss_fn=F.mse_loss,
        classifier=False,
        extra_loss=extra,
    )
    g = ctx.grad_norms
    ctx.check("gradient at step 100 over 30x the median", g[100] > 30 * _median(g[60:100]))
    ctx.check("reported loss did not spike", ctx.losses[100] < 5 * _median(ctx.losses[60:100]))
    ctx.check("finite", _finite(ctx.losses))


# -- a denoising autoencoder on generated gene-expression profiles -------------------------------


def _expression_batches(gen: torch.Generator, batch: int = 64, genes: int = 100):
    programs = torch.randn(5, genes, generator=gen).abs() * 1.5
    while True:
        usage = torch.distributions.Dirichlet(torch.ones(5)).sample((batch,))
        rate = usage @ programs + 0.1
        counts = torch.poisson(rate * 4, generator=gen)
        x = torch.log1p(counts)
        yield x, x


class ExpressionDAE(nn.Module):
    def __init__(self, genes: int = 100) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(genes, 64), nn.ReLU(), nn.Linear(64, 16))
        self.dec = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, genes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noisy = x * (torch.rand_like(x) > 0.2)
        return self.dec(self.enc(noisy))


@scenario(
    "h112_gene_expression_dae",
    "sgd_mom",
    "loss_spike",
    diverges=None,
    heldout=True,
    note="a warm restart in the wrong units: lr x25 for 4 steps, then back",
    onset=120,
)
def h112_gene_dae_warm_restart(ctx: Context) -> None:
    gen = seeded(11216)
    torch.manual_seed(11216)
    model = ExpressionDAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.5 if 120 <= step < 124 else 0.02

    fit(
        ctx,
        model,
        opt,
        _expression_batches(gen),
        220,
        loss_fn=F.mse_loss,
        classifier=False,
        before=schedule,
    )
    losses = ctx.losses
    pre = _median(losses[100:120])
    ctx.check("loss spiked over 5x", max(losses[120:135]) > 5 * pre)
    ctx.check("loss recovered", _median(losses[-20:]) < 1.5 * pre)
    ctx.check("finite", _finite(losses))
