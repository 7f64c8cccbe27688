"""Held-out set 153 (``h153_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a rotary-embedding transformer with a hand softmax over
q.k^T, a transformer LM with ``nn.MultiheadAttention`` and tied input/output embeddings, a
``scaled_dot_product_attention`` sequence classifier, a SwiGLU regressor under bf16 autocast, a
hand-written ReLU recurrent cell, MLP classifiers and regressors, a Gaussian-NLL model and an
fp16 autocast + GradScaler energy regressor.

A short set: 9 faults over 9 causes and 3 healthy controls (written in the time given). Each
fault is induced the way it happens in practice and checked with ``ctx.check``.
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
    grad_norm,
    scenario,
    seeded,
    text_batches,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _loop(
    ctx: Context,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches,
    steps: int,
    loss_fn,
    *,
    classifier: bool = False,
    alter=None,
    watch=None,
    clip: float | None = None,
    sched=None,
    accumulate: int = 1,
    scaler=None,
    amp_dtype=None,
):
    """Attach once, then train: ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)``
    records what the checks need; ``amp_dtype`` turns on CPU autocast (fp16 with ``scaler``)."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast(
                "cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
            ):
                out = model(x)
            loss = loss_fn(out.float(), y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            shown += float(loss.detach())
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


# -- yodel phrases: rotary transformer whose hand attention lost its 1/sqrt(d) -------------------


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


class RotaryAttention(nn.Module):
    """Causal self-attention with rotary position embeddings and a hand softmax over q.k^T.
    ``scale`` multiplies the scores; ``last_max`` keeps the largest |score| of the last call."""

    def __init__(self, dim: int, heads: int, context: int, scale: float) -> None:
        super().__init__()
        self.heads, self.hd, self.scale = heads, dim // heads, scale
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim)
        for lin in (self.q, self.k, self.v):
            nn.init.normal_(lin.weight, std=0.02)
        inv = 1.0 / (10000 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        ang = torch.arange(context).float()[:, None] * inv[None]
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)
        self.last_max = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(z):
            return z.reshape(b, t, self.heads, self.hd).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        cos, sin = self.cos[:t], self.sin[:t]
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        self.last_max = float(scores.detach().abs().max())
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        att = torch.exp(scores - scores.amax(-1, keepdim=True))
        att = att / att.sum(-1, keepdim=True)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.o(y)


class YodelPhraseModel(nn.Module):
    def __init__(
        self, vocab: int = 64, dim: int = 32, heads: int = 2, context: int = 24, scale=None
    ):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = RotaryAttention(dim, heads, context, scale or (dim // heads) ** -0.5)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        x = x + self.attn(self.ln1(x))
        x = x + self.ff(self.ln2(x))
        return self.head(self.ln_f(x))


@scenario(
    family="yodel_phrase_rotary_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A rotary-embedding transformer over yodel-phrase tokens with hand-written attention; "
    "the score scale was typed as hd**0.5 instead of hd**-0.5 (scores multiplied by sqrt(d)), "
    "and with AdamW at 1e-2 and no weight decay the q.k logits grow until the softmax is one-hot.",
)
def h153_yodel_phrase_rotary_attention(ctx: Context) -> None:
    gen = seeded(15301)
    model = YodelPhraseModel(scale=16**0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    maxes: list[float] = []

    def watch(step, out, x, y):
        maxes.append(model.attn.last_max)

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    _loop(ctx, model, opt, text_batches(gen, 16, 24, 64), 200, loss_fn, watch=watch)
    ctx.check(
        "attention logits grew 20x from their start", _mean(maxes[-10:]) > 20 * _mean(maxes[:5])
    )
    ctx.check("attention logits end above 100", _mean(maxes[-10:]) > 100)


# -- jai alai rebounds: a learnable logit scale without its clamp --------------------------------


class ScaledHead(nn.Module):
    """Linear head times exp(log_scale), CLIP-style; the clamp of log_scale was left out."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h) * self.log_scale.exp()


class ReboundClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh())
        self.head = ScaledHead(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@scenario(
    family="jai_alai_rebound_classifier",
    optimizer="SGD(momentum)",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A rebound-zone classifier (64 wall-sensor features, 10 zones) trained on a fixed small "
    "set with a CLIP-style learnable logit scale whose clamp was left out: the scale and the "
    "head's logits grow without bound while the training loss goes to zero.",
)
def h153_jai_alai_rebound_logit_scale(ctx: Context) -> None:
    gen = seeded(15302)
    xs, ys = next(digit_batches(gen, 128))

    def batches():
        while True:
            idx = torch.randint(0, 128, (32,), generator=gen)
            yield xs[idx], ys[idx]

    model = ReboundClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mags: list[float] = []

    def watch(step, out, x, y):
        mags.append(float(out.detach().abs().max()))

    _loop(ctx, model, opt, batches(), 300, F.cross_entropy, classifier=True, watch=watch)
    ctx.check("head logits grew 50x", _mean(mags[-10:]) > 50 * _mean(mags[:5]))
    ctx.check("logit scale more than doubled", float(model.head.log_scale.detach().exp()) > 2.5)


# -- gemstone facets: a temperature divided instead of multiplied --------------------------------


@scenario(
    family="gemstone_facet_cut_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("4",),
    diverges=None,
    heldout=True,
    note="A facet-cut classifier (64 reflectance features, 10 cuts) fine-tuned on a small "
    "fixed set of graded stones; the config key temperature: 1e-3 (meant for the teacher's "
    "soft targets in a distillation run) divides the student's logits, so within a few dozen "
    "steps the float32 softmax rounds most targets' probability to exactly 1.",
)
def h153_gemstone_facet_temperature(ctx: Context) -> None:
    gen = seeded(15303)
    xs, ys = next(digit_batches(gen, 256))

    def batches():
        while True:
            idx = torch.randint(0, 256, (64,), generator=gen)
            yield xs[idx], ys[idx]

    model = nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    temperature = 1e-3
    frac: list[float] = []

    def loss_fn(out, y):
        return F.cross_entropy(out / temperature, y)

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach() / temperature, y))

    _loop(ctx, model, opt, batches(), 200, loss_fn, classifier=True, watch=watch)
    ctx.check("40%+ of targets round to probability 1.0 late", _mean(frac[-40:]) > 0.4)
    ctx.check("none did at the start", frac[0] < 0.1)


# -- sea shanty rhythm: a ReLU recurrent cell initialised with gain 1.5 --------------------------


class ShantyCell(nn.Module):
    def __init__(self, hidden: int, gain: float) -> None:
        super().__init__()
        self.inp = nn.Linear(1, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.rec.weight, gain=gain)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return F.relu(self.inp(x) + self.rec(h))


class ShantyRhythmRNN(nn.Module):
    def __init__(self, hidden: int = 32, gain: float = 1.0) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = ShantyCell(hidden, gain)
        self.head = nn.Linear(hidden, 1)
        self.states: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t, None], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _shanty_batches(gen: torch.Generator, batch: int = 32, length: int = 40):
    """Stamp patterns: a periodic beat plus noise; the target is the beat period (scaled)."""
    while True:
        period = torch.randint(2, 8, (batch, 1), generator=gen).float()
        t = torch.arange(length).float()[None]
        x = (torch.remainder(t, period) == 0).float() + 0.1 * torch.randn(
            batch, length, generator=gen
        )
        yield x, period.squeeze(1) / 8.0


@scenario(
    family="sea_shanty_rhythm_rnn",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("cell.rec", "cell"),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU recurrent cell reads 40 stamps of a shanty's beat and regresses its "
    "period; the recurrent weight was initialised orthogonal with gain 1.8 (the config said 0.8, "
    "a typo), so the hidden state and the gradient through time grow at every step and "
    "the run blows up under SGD with Nesterov momentum.",
)
def h153_sea_shanty_recurrent_gain(ctx: Context) -> None:
    gen = seeded(15304)
    model = ShantyRhythmRNN(gain=1.8)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ratios: list[float] = []

    def loss_fn(out, y):
        return F.mse_loss(out, y)

    ctx.attach(model, opt)
    batches = _shanty_batches(gen)
    for step in range(120):
        x, y = next(batches)
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        if step == 0:
            first, last = model.states[0].grad, model.states[-1].grad
            ratios.append(float(first.norm() / (last.norm() + 1e-30)))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ctx.check("gradient grew 100x back through time at step 0", ratios[0] > 100)
    ctx.check(
        "loss blew up (1000x or non-finite)",
        _first_bad(ctx.losses) is not None or max(ctx.losses) > 1000 * ctx.losses[0],
    )


# -- dry-stone walling: RMSprop at a learning rate copied from a different model ---------------


class WallBatterRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def _wall_batches(gen: torch.Generator, batch: int = 64):
    """Stone-course survey features (digit pixels as stand-in texture) and a batter angle."""
    w = torch.randn(64, generator=gen) / 8
    for x, _ in digit_batches(gen, batch):
        yield x, x @ w + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="drystone_wall_batter_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("net.2", "net.3"),
    diverges=None,
    heldout=True,
    note="A dry-stone wall batter-angle regressor (ReLU MLP) trained with RMSprop at lr 0.05, "
    "copied from a linear baseline's config: the first large normalised steps push most units of "
    "the second hidden layer negative on every input and they never come back, so most of "
    "that layer stops learning.",
)
def h153_drystone_wall_dead_relus(ctx: Context) -> None:
    gen = seeded(15305)
    model = WallBatterRegressor()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.05)
    dead: list[float] = []
    model.net[3].register_forward_hook(lambda m, i, o: dead.append(dead_fraction(o.detach())))
    _loop(ctx, model, opt, _wall_batches(gen), 150, F.mse_loss)
    ctx.check("under 20% of units dead at the start", dead[0] < 0.2)
    ctx.check("over 60% of units dead at the end", _mean(dead[-10:]) > 0.6)


# -- millrace flow: an encoder param group whose lr key was misspelt ---------------------------


class MillraceFlowNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU())
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).squeeze(-1)


@scenario(
    family="millrace_flow_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("encoder", "encoder.0", "encoder.2"),
    diverges=None,
    heldout=True,
    note="A millrace flow regressor (sluice-gate sensor features) with two Adam param groups; "
    "the encoder's rate is read as cfg.get('enc_lr', 0.0) but the config spells it "
    "'encoder_lr', so the encoder trains at lr 0 for the whole run and only the head learns.",
)
def h153_millrace_encoder_lr_key(ctx: Context) -> None:
    gen = seeded(15306)
    model = MillraceFlowNet()
    cfg = {"encoder_lr": 1e-3, "head_lr": 1e-3}
    opt = torch.optim.Adam(
        [
            {"params": model.encoder.parameters(), "lr": cfg.get("enc_lr", 0.0)},
            {"params": model.head.parameters(), "lr": cfg.get("head_lr", 0.0)},
        ]
    )
    enc0 = model.encoder[0].weight.detach().clone()
    head0 = model.head.weight.detach().clone()
    _loop(ctx, model, opt, _wall_batches(gen), 150, F.mse_loss)
    ctx.check("encoder weights never moved", torch.equal(model.encoder[0].weight.detach(), enc0))
    ctx.check("head weights moved", not torch.equal(model.head.weight.detach(), head0))


# -- fog banks: one shard logged in metres instead of kilometres --------------------------------


@scenario(
    family="fog_bank_visibility_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges="auto",
    heldout=True,
    onset=100,
    note="A fog-bank visibility regressor (km) trained with plain SGD; the batch at step 100 "
    "comes from a station shard logged in metres, so its targets are 1000x too large and its "
    "loss and gradient jump by about a million; one SGD step from it throws the weights far off.",
)
def h153_fog_bank_metres_shard(ctx: Context) -> None:
    gen = seeded(15307)
    model = nn.Sequential(nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def alter(step, x, y):
        return x, (y * 1000.0 if step == 100 else y)

    def loss_fn(out, y):
        return F.mse_loss(out.squeeze(-1), y)

    _loop(ctx, model, opt, _wall_batches(gen), 160, loss_fn, alter=alter)
    before = sorted(ctx.losses[80:100])[10]
    ctx.check("loss at step 100 is 1e4x the median before", ctx.losses[100] > 1e4 * before)
    ctx.check(
        "gradient at step 100 is 100x the step before",
        ctx.grad_norms[100] > 100 * ctx.grad_norms[99],
    )


# -- waterspouts: Gaussian NLL with a ReLU variance and no floor --------------------------------


class FunnelWidthNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 48), nn.Tanh())
        self.mean_head = nn.Linear(48, 1)
        self.var_head = nn.Linear(48, 1)
        nn.init.constant_(self.var_head.bias, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return torch.cat([self.mean_head(h), F.relu(self.var_head(h))], -1)


@scenario(
    family="waterspout_funnel_width_nll",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("var_head",),
    diverges=77,
    heldout=True,
    onset=77,
    note="A waterspout funnel-width model with mean and variance heads and a hand-written "
    "Gaussian NLL, 0.5*log(var) + (y-mu)^2/(2 var); the variance is relu(raw) with no floor (the "
    "softplus + 1e-6 of the paper was dropped), so once a sample's raw variance crosses zero "
    "log(0) and a division by zero make the loss non-finite.",
)
def h153_waterspout_relu_variance(ctx: Context) -> None:
    gen = seeded(15308)
    model = FunnelWidthNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    mins: list[float] = []

    def loss_fn(out, y):
        mu, var = out[:, 0], out[:, 1]
        return (0.5 * torch.log(var) + (y - mu) ** 2 / (2 * var)).mean()

    def watch(step, out, x, y):
        mins.append(float(out[:, 1].detach().min()))

    def widths():
        for x, y in _wall_batches(gen):
            yield x, 4.0 * y + 0.2 * torch.randn(y.shape, generator=gen)

    _loop(ctx, model, opt, widths(), 250, loss_fn, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("loss turns non-finite", bad is not None)
    ctx.check("a variance reached exactly 0 there", bad is not None and mins[bad] == 0.0)
    ctx.check("finite for 60+ steps before", bad is not None and bad >= 60)


# -- handpan resonance: a band-energy sum left in fp16 under autocast ---------------------------


class HandpanEnergyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 32)
        self.band = nn.Linear(32, 1, bias=False)
        nn.init.constant_(self.band.weight, 1.0)
        nn.init.constant_(self.proj.bias, 10.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        energy = self.band(h * h)  # fp16 under autocast: overflows past 65504
        return torch.log(energy.float().squeeze(-1) + 1e-3)


def _handpan_batches(gen: torch.Generator, batch: int = 32):
    """Strike spectra and the log of the note's resonance energy (9 to 13 nepers)."""
    w = torch.randn(64, generator=gen) / 8
    for x, _ in digit_batches(gen, batch):
        yield x, 11.0 + 2.0 * torch.tanh(x @ w)


@scenario(
    family="handpan_resonance_energy_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("band",),
    diverges=147,
    heldout=True,
    onset=147,
    note="A handpan resonance-energy regressor trained under fp16 autocast with a GradScaler; "
    "the band energy sum(h^2) is computed by a Linear inside autocast instead of in float32, so "
    "as the model learns the loud notes (log energy above ln 65504 = 11.1) the fp16 sum "
    "overflows to inf, those steps' losses and gradients are non-finite and the scaler keeps "
    "skipping steps and cutting its scale.",
)
def h153_handpan_energy_fp16(ctx: Context) -> None:
    gen = seeded(15309)
    model = HandpanEnergyNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _handpan_batches(gen),
        200,
        F.mse_loss,
        scaler=scaler,
        amp_dtype=torch.float16,
    )
    bad = [i for i, v in enumerate(ctx.losses) if not math.isfinite(v)]
    ctx.check("fp16 energy overflowed on 20+ steps", len(bad) >= 20)
    ctx.check("finite for the first 10 steps", bool(bad) and bad[0] >= 10)
    ctx.check(
        "scaler cut its scale 2^8-fold", bool(ctx.scales) and min(ctx.scales) <= 65536.0 / 256
    )


# -- taiko patterns: a tied-embedding transformer LM with warm restarts (healthy) -------------


class TaikoBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 3 * dim), nn.GELU(), nn.Linear(3 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class TaikoPatternLM(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 32, heads: int = 4, context: int = 24) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(context, dim))
        self.blocks = nn.ModuleList(TaikoBlock(dim, heads) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.tok.weight, std=0.05)
        self.head.weight = self.tok.weight  # tied input/output embeddings

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


@scenario(
    family="taiko_drum_pattern_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A taiko drum-pattern language model (nn.MultiheadAttention, tied input/output "
    "embeddings) with AdamW, weight decay, CosineAnnealingWarmRestarts, clipping at 1.0 and "
    "label smoothing 0.1: an ordinary run.",
)
def h153_taiko_tied_lm_restarts(ctx: Context) -> None:
    gen = seeded(15310)
    model = TaikoPatternLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=50, T_mult=2)

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=0.1)

    _loop(ctx, model, opt, text_batches(gen, 16, 24, 64), 200, loss_fn, clip=1.0, sched=sched)
    ctx.check("loss fell and stayed finite", _fell(ctx.losses))
    ctx.check("head still tied to the embedding", model.head.weight is model.tok.weight)


# -- hay bales: a SwiGLU regressor under bf16 autocast (healthy) -------------------------------


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class HayBaleDensityNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 48)
        self.norm = nn.LayerNorm(48)
        self.mlp = SwiGLU(48, 96)
        self.out = nn.Linear(48, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.mlp(self.norm(h))
        return self.out(h).squeeze(-1)


@scenario(
    family="hay_bale_density_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A hay-bale density regressor with a SwiGLU block, trained under bf16 autocast (no "
    "GradScaler) with RAdam, OneCycleLR and a Huber loss: an ordinary run.",
)
def h153_hay_bale_swiglu_bf16(ctx: Context) -> None:
    gen = seeded(15311)
    model = HayBaleDensityNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _wall_batches(gen),
        200,
        F.huber_loss,
        sched=sched,
        amp_dtype=torch.bfloat16,
    )
    ctx.check("loss fell and stayed finite", _fell(ctx.losses, ratio=0.7))


# -- carrom strikes: a scaled_dot_product_attention classifier (healthy) -----------------------


class StrikeAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(x).split(d, -1)
        )
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class CarromStrikeClassifier(nn.Module):
    def __init__(self, vocab: int = 32, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = StrikeAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        x = x + self.attn(self.ln1(x))
        x = x + self.ff(self.ln2(x))
        return self.head(x.mean(1))


def _strike_batches(gen: torch.Generator, batch: int = 32, length: int = 16, vocab: int = 32):
    """Strike sequences: does the striker pot (token 1) more often than it fouls (token 2)?"""
    while True:
        x = torch.randint(3, vocab, (batch, length), generator=gen)
        pots = torch.rand(batch, length, generator=gen) < 0.25
        fouls = torch.rand(batch, length, generator=gen) < 0.25
        x = torch.where(pots, 1, torch.where(fouls, 2, x))
        yield x, ((x == 1).sum(1) > (x == 2).sum(1)).long()


@scenario(
    family="carrom_strike_transformer",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="A carrom strike-sequence classifier (scaled_dot_product_attention, mean pool) with "
    "Adamax, gradient accumulation over two micro-batches and ReduceLROnPlateau: an ordinary run.",
)
def h153_carrom_strike_sdpa(ctx: Context) -> None:
    gen = seeded(15312)
    model = CarromStrikeClassifier()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _loop(
        ctx,
        model,
        opt,
        _strike_batches(gen),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        accumulate=2,
    )
    ctx.check("loss fell and stayed finite", _fell(ctx.losses, ratio=0.7))
