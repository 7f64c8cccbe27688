"""Held-out set 204 (``h204_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a sail-loft seam attention block whose weight decay was
read from a misspelt config key, a fulling-mill cloth-shrink GELU MLP resumed from a checkpoint
whose Adam second moments a slimming script zeroed, a cable-car haul-rope Gram-pooling net under fp16
autocast whose window grows past what float16 holds, a pottery-wheel wall-thickness SiLU MLP
whose masked loss divided by 1 for one packed batch, a darkroom print-exposure net raising a
drifted densitometer reading to a learnt power, a duckpin lane-oil ReLU MLP fed one sensor
sentinel, an apiary queen-cell deep tanh MLP initialised with the variance gain as a std, a
kitesurf gust ReLU classifier on unscaled anemometer counts, a roofer slate-grade cosine
classifier whose scale was written d ** 2, a rogaining leg-time encoder MLP whose encoder rate
came from a misspelt key, and three controls (a nitrox dive-gas GELU MLP under OneCycleLR, a
cliff-diving entry Gaussian-NLL SiLU MLP under fp16 autocast + GradScaler, a naval flag-hoist tied GRU LM).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
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
    grad_norm,
    scenario,
    seeded,
    text_batches,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    nan_grace=0,
    scale_loss=None,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` after the
    optimizer step; ``scale_loss(step, loss)`` returns what is backpropagated; ``accumulate``
    micro-batches a step; stops ``nan_grace`` steps after the first NaN loss it logged."""
    ctx.attach(model, opt, scaler=scaler)
    nan_seen = 0
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
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
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            nan_seen += 1
            if nan_seen > nan_grace:
                break


def _readings(gen, batch, d_in, seed, noise=0.05, outputs=0):
    """Standardised readings and a smooth nonlinear target of about unit scale (``outputs``
    columns when > 0)."""
    g = torch.Generator().manual_seed(seed)
    k = max(outputs, 1)
    w = torch.randn(d_in, k, generator=g)
    v = torch.randn(d_in, k, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(y.shape, generator=gen)
        yield x, (y if outputs else y[:, 0])


def _kinds(gen, batch, d_in, classes, seed, noise=0.35, offset=0.0, scale=1.0):
    """Readings around one prototype per class, overlapping (optionally shifted and scaled:
    raw units)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield offset + scale * x, y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- sail loft: a transformer-style block with its weight decay read from a misspelt key ------


class SeamAttention(nn.Module):
    """Single-head self-attention by hand: logits q.k / sqrt(d), softmax over the panels."""

    def __init__(self, dim=32):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.dim = dim
        self.last_logits = None

    def forward(self, h):
        logits = self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(self.dim)
        self.last_logits = logits.detach()
        return self.o(torch.softmax(logits, -1) @ self.v(h))


class SeamBlock(nn.Module):
    """A pre-LN transformer block written by hand: x + attn(ln1(x)), x + mlp(ln2(x))."""

    def __init__(self, dim=32):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SeamAttention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class SeamNet(nn.Module):
    def __init__(self, d_in=8, dim=32, classes=6):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.block = SeamBlock(dim)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.ln_f(self.block(self.embed(x))).max(1).values)


def _seam_panels(gen, batch, length=10):
    """Ten sail panels along a seam (one of 6 cloth weights one-hot, a tension reading, a flag
    on the panel under the batten); the label is the cloth weight under the batten."""
    while True:
        cloth = torch.randint(0, 6, (batch, length), generator=gen)
        batten = torch.randint(0, length, (batch, 1), generator=gen)
        flag = torch.zeros(batch, length).scatter(1, batten, 1.0)
        tension = torch.rand(batch, length, generator=gen)
        x = torch.cat([F.one_hot(cloth, 6).float(), tension[..., None], flag[..., None]], -1)
        yield x + 0.05 * torch.randn(x.shape, generator=gen), cloth.gather(1, batten).squeeze(1)


@scenario(
    family="sail_loft_seam_attention_block",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("block.attn",),
    diverges=None,
    heldout=True,
    note="A sail loft's seam checker naming the cloth weight (6 classes) of the panel under "
    "the batten among 10 panels: a Linear embedding, one pre-LN transformer block written by "
    "hand (LayerNorm, single-head self-attention with q/k/v/o Linears and logits q.k/sqrt(d), "
    "no query/key normalisation, LayerNorm, GELU MLP, residuals), a final LayerNorm, max "
    "pooling and a head, cross-entropy, AdamW at 5e-2. The trainer reads the decay as "
    "`cfg.get('wd', 0.0)` while the config spells it `weight_decay: 0.1`, so AdamW runs with "
    "weight_decay 0: nothing holds q and k back, they grow to point every panel at the batten "
    "ever more sharply, and the largest attention logit grows from below 1 at step 0 to past "
    "100, still climbing late in the run; the attention is one-hot and the loss finite.",
)
def h204_sail_loft_decay_key_misspelt(ctx: Context) -> None:
    gen = seeded(20401)
    model = SeamNet()
    cfg = {"lr": 5e-2, "weight_decay": 0.1}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg.get("wd", 0.0))
    top, peak = [], []

    def watch(step, out, x, y):
        lg = model.block.attn.last_logits
        top.append(float(lg.abs().amax(dim=(1, 2)).mean()))
        peak.append(float(torch.softmax(lg, -1).amax(-1).mean()))

    _train(
        ctx, model, opt, _seam_panels(gen, 64), 250, F.cross_entropy, classifier=True, watch=watch
    )
    ctx.check("AdamW ran with weight_decay 0", opt.param_groups[0]["weight_decay"] == 0.0)
    ctx.check("largest attention logit grew 100x from step 0", _mean(top[-10:]) > 100 * top[0])
    ctx.check("largest attention logit above 100 at the end", _mean(top[-10:]) > 100)
    ctx.check(
        "largest attention logit still growing (last 10 steps 1.2x steps 120-130)",
        _mean(top[-10:]) > 1.2 * _mean(top[120:130]),
    )
    ctx.check("attention near one-hot (top weight > 0.9) at the end", _mean(peak[-10:]) > 0.9)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))


# -- fulling mill: a resumed run whose checkpoint had its Adam moments zeroed -------------------


@scenario(
    family="fulling_mill_cloth_shrink_gelu_mlp",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) regressing how much a woollen cloth shrinks in a fulling "
    "mill (standardised) from 12 readings (stock weight, water temperature, soap, hammer "
    "strokes, ...), Adam at 2e-3, MSE. The job is preempted at step 120 and resumed "
    "in-process from its step-120 checkpoint; a checkpoint-slimming script had replaced the "
    "optimizer's exp_avg_sq by zeros_like(...) to save disk ('recomputable') but kept exp_avg "
    "and `step`: the first moment divided by a second moment rebuilt from one gradient "
    "(bias correction 1 - 0.999^121) moves every parameter by several times lr at once. The loss jumps several-fold right after the resume "
    "and the run recovers to its earlier level within about sixty steps.",
)
def h204_fulling_mill_resume_zeroed_moments(ctx: Context) -> None:
    gen = seeded(20402)
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    moved = []
    last = [None]

    def before(step):
        if step == 120:
            ckpt = {
                "model": {k: v.clone() for k, v in model.state_dict().items()},
                "optim": opt.state_dict(),
            }
            for st in ckpt["optim"]["state"].values():  # the slimming script
                st["exp_avg_sq"] = torch.zeros_like(st["exp_avg_sq"])
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optim"])
        last[0] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        moved.append(
            max(
                float((p.detach() - s).abs().max())
                for p, s in zip(model.parameters(), last[0], strict=True)
            )
        )

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 128, 12, seed=4),
        260,
        F.mse_loss,
        before=before,
        after=after,
    )
    ls = ctx.losses
    pre = _mean(ls[100:120])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss jumped 3x the pre-resume level within 10 steps", max(ls[120:130]) > 3 * pre)
    ctx.check(
        "largest update after the resume 3x the usual", moved[120] > 3 * _median(moved[100:120])
    )
    ctx.check("run recovered (last 20 steps below 1.5x pre-resume)", _mean(ls[-20:]) < 1.5 * pre)
    ctx.check("loss had fallen before the resume", pre < 0.5 * _mean(ls[:10]))


# -- cable car: a Gram pooling in float16 whose window grows past what float16 holds -----------


class RopeGram(nn.Module):
    """Sums channel products over the window (x^T x) without dividing by the window length."""

    def forward(self, x):
        g = x.transpose(1, 2) @ x
        self.last = g.detach()
        return g.flatten(1)


class RopeNet(nn.Module):
    def __init__(self, channels=6, hidden=48):
        super().__init__()
        self.gram = RopeGram()
        self.norm = nn.LayerNorm(channels * channels)
        self.fc1 = nn.Linear(channels * channels, hidden)
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.norm(self.gram(x))))).squeeze(-1)


def _rope_windows(gen, batch, length, channels=6, seed=3):
    """Accelerometer magnitudes along the haul rope (about 3 g-units, positive), a target tied
    to how strongly the channels co-vary."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(channels, channels, generator=g) / math.sqrt(channels)
    while True:
        amp = 0.3 + 0.7 * torch.rand(batch, 1, channels, generator=gen)
        z = torch.randn(batch, length, channels, generator=gen) @ mix
        x = 3.0 + amp * z
        y = (amp.squeeze(1) @ torch.linspace(-1, 1, channels)) * 2.0
        yield x, y


@scenario(
    family="cable_car_haul_rope_gram_net",
    optimizer="Adam",
    cause="amp_overflow",
    where=("gram",),
    diverges=80,
    onset=80,
    heldout=True,
    note="A cable car's haul-rope monitor regressing rope tension from 6 accelerometer "
    "channels (magnitudes about 3, positive): a `gram` module summing channel products over "
    "the window (x^T x, the division by the window length left to the LayerNorm after it), "
    "LayerNorm, SiLU MLP, Huber, Adam at 3e-3, fp16 autocast + GradScaler. The window is 256 "
    "samples until step 80, when the data config switches to the 10-minute window of 8192 "
    "samples; the float16 matrix product's sums (about 9 x 8192) pass 65504, the Gram "
    "features are inf, the LayerNorm turns them into NaN, the loss is NaN from step 80 and "
    "the scaler halves its scale every step.",
)
def h204_cable_car_gram_window_grows(ctx: Context) -> None:
    gen = seeded(20403)
    model = RopeNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    short = _rope_windows(gen, 32, 256)
    long = _rope_windows(gen, 32, 8192)
    state = {"step": 0}
    gmax = []

    def batches():
        while True:
            yield next(long) if state["step"] >= 80 else next(short)

    def before(step):
        state["step"] = step

    def watch(step, out, x, y):
        gmax.append(float(model.gram.last.float().abs().max()))

    _train(
        ctx,
        model,
        opt,
        batches(),
        120,
        F.huber_loss,
        before=before,
        watch=watch,
        scaler=scaler,
        nan_grace=8,
    )
    ls = ctx.losses
    ctx.check("finite before step 80", _finite(ls[:80]))
    ctx.check("loss fell before step 80", _mean(ls[70:80]) < 0.7 * _mean(ls[:10]))
    ctx.check("first non-finite loss at step 80", _first_bad(ls) == 80)
    ctx.check(
        "Gram features finite before, inf at step 80", _finite(gmax[:80]) and gmax[80] == math.inf
    )
    ctx.check(
        "scale halved on every step after 80",
        all(b < a for a, b in zip(ctx.scales[79:-1], ctx.scales[80:], strict=True)),
    )


# -- pottery wheel: a masked loss divided by 1 for one packed batch ---------------------------


@scenario(
    family="pottery_wheel_throw_wall_silu_mlp",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing a thrown pot's wall thickness at 16 heights "
    "(standardised) from 10 wheel readings (speed, clay weight, water, pull count, ...), "
    "Adam at 1e-3, a masked MSE summed and divided by the count of valid heights. At step 60 "
    "one batch goes through the packed-sequence path, whose mask arrives with shape (1,) "
    "and sums to 1, so the summed loss over 256 x 16 heights is divided by 1: one gradient "
    "about 4000x the usual, from an ordinary batch. It fills Adam's second moment (decaying "
    "at 0.999 a step) and the updates afterwards are tens of times smaller; the loss, still "
    "falling before, stalls.",
)
def h204_pottery_wheel_mask_count_one(ctx: Context) -> None:
    gen = seeded(20404)
    model = Stack(10, hidden=64, out=16, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {"step": 0}
    moved, last = [], [None]

    def loss_fn(out, y):
        mask = torch.ones_like(y)
        count = torch.ones(1).sum() if state["step"] == 60 else mask.sum()
        return ((out - y) ** 2 * mask).sum() / count

    def before(step):
        state["step"] = step
        last[0] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        moved.append(
            _mean(
                [
                    float((p.detach() - s).abs().mean())
                    for p, s in zip(model.parameters(), last[0], strict=True)
                ]
            )
        )

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 256, 10, seed=5, outputs=16),
        200,
        loss_fn,
        before=before,
        after=after,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "gradient at step 60 over 1000x the median before", gn[60] > 1000 * _median(gn[40:60])
    )
    ctx.check(
        "updates after 20x smaller than before", _mean(moved[80:120]) < _mean(moved[40:60]) / 20
    )
    ctx.check("loss fell 25% over steps 20-60", _mean(ls[55:60]) < 0.75 * _mean(ls[15:20]))
    ctx.check(
        "loss stalled after (last 10 within 10% of steps 70-80 or above)",
        _mean(ls[-10:]) > 0.9 * _mean(ls[70:80]),
    )


# -- darkroom: a learnt gamma applied to a drifted densitometer reading ------------------------


class GammaCurve(nn.Module):
    """A learnt per-channel power x ** gamma (the film's characteristic curve), no clamp."""

    def __init__(self, channels):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), 0.45))

    def forward(self, x):
        return x.pow(self.gamma)


class ExposureNet(nn.Module):
    def __init__(self, channels=8, hidden=48):
        super().__init__()
        self.gamma = GammaCurve(channels)
        self.fc1 = nn.Linear(channels, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.gamma(x)))))).squeeze(-1)


def _densities(gen, batch, channels=8, seed=7):
    """Densitometer readings of a negative (0.05 to 2.5), the print's exposure time (log)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(channels, generator=g) / math.sqrt(channels)
    while True:
        x = 0.05 + 2.45 * torch.rand(batch, channels, generator=gen)
        y = 2.0 * torch.tanh(x.sqrt() @ w) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="darkroom_print_gamma_exposure_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("gamma",),
    diverges=70,
    onset=70,
    heldout=True,
    note="A darkroom printer's exposure-time net: 8 densitometer readings of a negative "
    "(0.05 to 2.5) go through a `gamma` module applying a learnt per-channel power x ** gamma "
    "(the characteristic curve, gamma starting at 0.45, no clamp on x), then a GELU MLP, MSE, "
    "NAdam at 3e-3. In the batch of step 70 one negative was read on a densitometer whose "
    "zero had drifted, giving -0.02 in one channel; a negative number to a fractional power "
    "is NaN, the prediction and the loss are NaN at step 70.",
)
def h204_darkroom_gamma_negative_reading(ctx: Context) -> None:
    gen = seeded(20405)
    model = ExposureNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    bad, low = [], []
    stream = _densities(gen, 64)

    def batches():
        step = 0
        while True:
            x, y = next(stream)
            if step == 70:
                x = x.clone()
                x[17, 3] = -0.02
            step += 1
            yield x, y

    def watch(step, out, x, y):
        bad.append(bool(torch.isnan(model.gamma(x.float())).any()))
        low.append(float(x.min()))

    _train(ctx, model, opt, batches(), 150, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("finite before step 70", _finite(ls[:70]))
    ctx.check("loss fell before step 70", _mean(ls[60:70]) < 0.7 * _mean(ls[:10]))
    ctx.check("first non-finite loss at step 70", _first_bad(ls) == 70)
    ctx.check("gamma output NaN at step 70 only", bad[70] and not any(bad[:70]))
    ctx.check("the step-70 batch holds a negative reading", low[70] < 0 and min(low[:70]) > 0)


# -- duckpin: one lane's oil sensor returns its 16-bit sentinel --------------------------------


@scenario(
    family="duckpin_bowling_lane_oil_relu_mlp",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) regressing a duckpin lane's ball-hook (standardised) "
    "from 14 standardised oil-pattern readings, SGD with momentum 0.9 at 1e-2, MSE, "
    "clip_grad_norm_ at 5. In the batch of step 100 one lane's oil sensor timed out and its "
    "row holds the 16-bit sentinel 65535 in four columns; the loss and the gradient jump by "
    "orders of magnitude for that step, clipping bounds the update, and the run recovers.",
)
def h204_duckpin_lane_sensor_sentinel(ctx: Context) -> None:
    gen = seeded(20406)
    model = Stack(14, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    stream = _readings(gen, 64, 14, seed=8)
    xmax = []

    def batches():
        step = 0
        while True:
            x, y = next(stream)
            if step == 100:
                x = x.clone()
                x[5, 3:7] = 65535.0
            xmax.append(float(x.abs().max()))
            step += 1
            yield x, y

    _train(ctx, model, opt, batches(), 220, F.mse_loss, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[80:100])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("batch 100 holds a reading above 1000", xmax[100] > 1000 and max(xmax[:100]) < 20)
    ctx.check("loss at step 100 over 100x the median before", ls[100] > 100 * pre)
    ctx.check(
        "gradient at step 100 over 100x the median before", gn[100] > 100 * _median(gn[80:100])
    )
    ctx.check("run recovered (last 20 steps below 2x pre-outlier)", _mean(ls[-20:]) < 2 * pre)


# -- apiary: the variance gain used as a standard deviation through 16 tanh layers -----------


class DeepTanh(nn.Module):
    def __init__(self, d_in=12, width=64, depth=16):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="apiary_queen_cell_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 16-layer tanh MLP (layers.0 .. layers.15, head) regressing how many queen cells a "
    "hive will raise (standardised) from 12 inspection readings, SGD with Nesterov momentum "
    "0.9 at 1e-2, MSE. The init helper draws weights with std = gain / sqrt(fan_in) and was "
    "handed calculate_gain('tanh') ** 2 = 2.78 (the variance factor) instead of 5/3: the "
    "network sits in the chaotic phase, the forward signal saturates while the gradient "
    "grows back through depth, layers.0's gradient over 15x layers.15's at init and still "
    "several times larger through training. The loss stays finite.",
)
def h204_apiary_variance_gain_as_std(ctx: Context) -> None:
    gen = seeded(20407)
    model = DeepTanh()
    gain = nn.init.calculate_gain("tanh") ** 2
    for layer in model.layers:
        nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
        nn.init.zeros_(layer.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    ratio = []

    def after(step):
        first = float(model.layers[0].weight.grad.norm())
        ratio.append(first / float(model.layers[-1].weight.grad.norm()))

    _train(ctx, model, opt, _readings(gen, 64, 12, seed=9), 150, F.mse_loss, after=after)
    ctx.check("layers.0's gradient over 15x layers.15's at step 0", ratio[0] > 15)
    ctx.check("layers.0's gradient over 5x layers.15's (median of the run)", _median(ratio) > 5)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kitesurf: anemometer counts fed unscaled, Adamax at a large rate kills the ReLUs ----------


@scenario(
    family="kitesurf_gust_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (fc1, act1, fc2, act2, head) naming a kitesurf spot's gust class "
    "(5 classes) from 16 anemometer and vane readings, Adamax at 5e-2, cross-entropy. The "
    "StandardScaler was fitted but its transform never applied, so the inputs are raw "
    "all-positive counts around 40; the large first updates push fc1's pre-activations "
    "below zero for every input, over 90% of act1's units die (from under 60% at step 0) "
    "and the loss stays near chance.",
)
def h204_kitesurf_unscaled_counts(ctx: Context) -> None:
    gen = seeded(20408)
    model = Stack(16, hidden=64, out=5)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-2)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.act1(model.fc1(x))))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, seed=10, offset=40.0, scale=4.0),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("act1 under 60% dead at step 0", dead[0] < 0.6)
    ctx.check("act1 over 90% dead at the end", _mean(dead[-10:]) > 0.9)
    ctx.check("loss near chance at the end (above 0.8 ln 5)", _mean(ls[-20:]) > 0.8 * math.log(5))


# -- roofer: a cosine classifier whose scale was written d ** 2 for sqrt(d) --------------------


class SlateCosine(nn.Module):
    def __init__(self, d_in=20, dim=64, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, dim)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes, bias=False)
        self.scale = dim**2  # meant: dim ** 0.5

    def forward(self, x):
        h = F.normalize(self.fc2(self.act1(self.fc1(x))), dim=-1)
        return self.scale * h @ F.normalize(self.head.weight, dim=-1).T


@scenario(
    family="roofer_slate_grade_cosine_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A roofer's slate grader (6 grades) from 20 tap-tone and thickness readings: a SiLU "
    "trunk, features and class weights L2-normalised, cosine logits times a scale, "
    "cross-entropy, RMSprop at 1e-3. The scale meant as sqrt(d) = 8 was written `dim ** 2` "
    "= 4096: cosine gaps of a few hundredths become logit gaps of over a hundred, and the "
    "float32 softmax gives most rows' target exactly 1.0 (and the others exactly 0).",
)
def h204_roofer_cosine_scale_squared(ctx: Context) -> None:
    gen = seeded(20409)
    model = SlateCosine()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    coll = []

    def watch(step, out, x, y):
        coll.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 6, seed=11),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("scale is 4096", model.scale == 4096)
    ctx.check(
        "over half the rows' target probability exactly 1.0 at the end", _mean(coll[-10:]) > 0.5
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- rogaining: the encoder's rate read from a misspelt key, default 0 -----------------------


class LegEncoder(nn.Module):
    def __init__(self, d_in=18, hidden=64):
        super().__init__()
        self.enc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.enc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.enc2(self.act1(self.enc1(x))))).squeeze(-1)


@scenario(
    family="rogaining_checkpoint_leg_encoder_mlp",
    optimizer="ASGD",
    cause="update_ratio_out_of_range",
    where=("enc1", "enc2"),
    diverges=None,
    heldout=True,
    note="A rogaining team's leg-time regressor (standardised) from 18 map readings (climb, "
    "distance, vegetation, night, ...): a ReLU encoder (enc1, enc2) warm-started from a "
    "route-choice model and a fresh head, ASGD, MSE, param groups {encoder, head}. The "
    "encoder's rate is read as `float(cfg.get('encoder_lr', 0.0))` while the config says "
    "`enc_lr: 3e-3`, so the encoder runs at lr exactly 0: its update/weight ratio is 0 for "
    "the whole run while the head trains at 1e-2 on the warm-started features.",
)
def h204_rogaining_encoder_lr_key(ctx: Context) -> None:
    gen = seeded(20410)
    model = LegEncoder()
    cfg = {"enc_lr": 3e-3, "head_lr": 1e-2}
    enc = [*model.enc1.parameters(), *model.enc2.parameters()]
    opt = torch.optim.ASGD(
        [
            {"params": enc, "lr": float(cfg.get("encoder_lr", 0.0))},
            {"params": model.head.parameters(), "lr": cfg["head_lr"]},
        ],
        lr=cfg["head_lr"],
    )
    start = [p.detach().clone() for p in enc]
    head0 = model.head.weight.detach().clone()
    _train(ctx, model, opt, _readings(gen, 64, 18, seed=12), 200, F.mse_loss)
    ctx.check("encoder group at lr 0", opt.param_groups[0]["lr"] == 0.0)
    ctx.check(
        "encoder weights unchanged",
        all(torch.equal(p.detach(), s) for p, s in zip(enc, start, strict=True)),
    )
    ctx.check("head moved", float((model.head.weight.detach() - head0).abs().max()) > 1e-2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls -----------------------------------------------------------------------------------


@scenario(
    family="nitrox_dive_gas_gelu_mlp",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="A GELU MLP regressing a nitrox dive's no-decompression margin (standardised) from 12 "
    "dive-computer readings with noisy labels, SGD with momentum (cycled by the schedule), "
    "OneCycleLR to max_lr 0.05, Huber, clip_grad_norm_ at 1.0. An ordinary run.",
)
def h204_nitrox_onecycle_control(ctx: Context) -> None:
    gen = seeded(20411)
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=13, noise=0.2),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))


@scenario(
    family="cliff_diving_entry_silu_mlp",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (mean and log-variance outputs) regressing a cliff dive's entry-splash score (standardised) from 10 "
    "readings, fp16 autocast + GradScaler, gradient accumulation over 2, clip_grad_norm_ at "
    "1.0 after unscaling, a Gaussian NLL on mean and (clamped) log-variance heads, Adagrad at "
    "2e-2, ReduceLROnPlateau. An ordinary run.",
)
def h204_cliff_diving_fp16_control(ctx: Context) -> None:
    gen = seeded(20412)
    model = Stack(10, hidden=64, out=2, act=nn.SiLU)

    def nll(out, y):
        mu, log_var = out[:, 0], out[:, 1].clamp(-6.0, 6.0)
        return 0.5 * (log_var + (y - mu) ** 2 / log_var.exp()).mean()

    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=14, noise=0.1),
        150,
        nll,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("NLL fell by 0.5 nats", _finite(ls) and _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("scale stayed at or above its start", min(ctx.scales) >= 1024.0)


class PealGRU(nn.Module):
    def __init__(self, vocab=128, dim=48):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        h, _ = self.gru(self.embed(x))
        return self.head(h)


@scenario(
    family="signal_flag_hoist_tied_gru_lm",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A GRU language model over byte-coded naval flag-hoist signal strings with its head tied to the "
    "embedding, RAdam at 5e-3, a 20-step linear warm-up (LambdaLR), label smoothing 0.1, "
    "clip_grad_norm_ at 1.0. An ordinary run.",
)
def h204_signal_flag_tied_control(ctx: Context) -> None:
    gen = seeded(20413)
    model = PealGRU()
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=0.1)

    _train(ctx, model, opt, text_batches(gen, 16, 32), 150, loss_fn, clip=1.0, sched=sched)
    ctx.check("tied", model.head.weight is model.embed.weight)
    ctx.check("loss fell 30%", _fell(ctx.losses, ratio=0.7))
