"""Held-out set 460 (``h460_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a salt-pan crust-polygon shifted-window attention classifier whose AdamW peak lr is typed
3e-2 for 3e-4 (the attention logits grow), a luthier top-tap frequency regressor under fp16
autocast fed targets in raw hertz (the output overflows fp16, GradScaler), an icicle-ridge
spacing regressor resumed from a checkpoint that saved the model but not Adam's state (a one-off
loss spike it recovers from), a wind-harp hum Huber regressor whose trunk-unfreeze step is typed
10000 for 100 (the trunk never moves, SGD Nesterov), a sand-yacht lap-speed tanh regressor whose
OneCycleLR max_lr is typed 10x (full-batch SGD past 2 / sharpness), a maple-sap drip Elman RNN
whose recurrent weights are initialised with gain 3 typed for 1 (gradients grow back through
time, RMSprop), an oyster-shucking grade classifier fed one shard with the sensor sentinel 9999
(Adagrad), a lighthouse-lamp flicker regressor with a hand-written norm sqrt(E[x^2] - E[x]^2) and no
eps (a stuck-sensor batch gives 0/0, Adamax), a farrier hoof-angle classifier with a calibration
temperature 0.005 typed for 0.5 (softmax saturates, NAdam) and a snow-cornice conv1d whose
first-layer biases are initialised to -1 for -0.01 (its ReLUs dead, ASGD).

Controls: a quarry-blast fragment net pretrained as a regressor, then fine-tuned as a classifier
with a new head at 10x the backbone's lr (Adam, discriminative rates, in one run); an fp16
cricket-bat knock-in conv1d classifier (GradScaler, SGD momentum, OneCycleLR, label smoothing,
clipping); a dowsing-rod swing tied-weight autoencoder (RAdam, accumulation over 2, clipping,
ReduceLROnPlateau).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    grad_norm,
    scenario,
    seeded,
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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    alter=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
    start=0,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``after(step)`` runs after the optimizer step. Stops after a non-finite loss (once
    ``ctx.step`` has seen it). With ``attach=False`` it is a reference run outside the monitor;
    ``start`` continues the step count of an earlier call (the monitor is attached once)."""
    if attach and start == 0:
        ctx.attach(model, opt, scaler=scaler)
    losses, norms = [], []
    for step in range(start, start + steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, offset=0.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, offset + scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, length, classes, seed, noise=0.4):
    """1-d traces: one damped oscillation per class (frequency and decay differ), noisy."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.15 + 0.5 * torch.rand(classes, generator=g)
    decay = 0.01 + 0.05 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freq[y, None] * t + phase) * torch.exp(-decay[y, None] * t)
        yield (x + noise * torch.randn(batch, length, generator=gen)).unsqueeze(1), y


# -- models ----------------------------------------------------------------------------------------


class _WindowAttention(nn.Module):
    """Multi-head self-attention within non-overlapping square windows of a 2-d grid."""

    def __init__(self, dim, heads, window, shift):
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.last_max_logit = 0.0

    def forward(self, x):  # x: (b, h, w, d)
        b, h, w, d = x.shape
        s, ws = self.shift, self.window
        if s:
            x = torch.roll(x, (-s, -s), (1, 2))
        x = x.reshape(b, h // ws, ws, w // ws, ws, d).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(-1, ws * ws, d)
        q, k, v = self.qkv(x).chunk(3, -1)
        n = x.shape[0]
        q, k, v = (z.reshape(n, ws * ws, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        self.last_max_logit = float(logits.detach().abs().max())
        y = (logits.softmax(-1) @ v).transpose(1, 2).reshape(n, ws * ws, d)
        y = self.proj(y).reshape(b, h // ws, w // ws, ws, ws, d).permute(0, 1, 3, 2, 4, 5)
        y = y.reshape(b, h, w, d)
        if s:
            y = torch.roll(y, (s, s), (1, 2))
        return y


class _WindowBlock(nn.Module):
    def __init__(self, dim, heads, window, shift):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, heads, window, shift)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrustPolygonWindowNet(nn.Module):
    """Salt-pan crust polygons on an 8x8 survey grid: each cell a token, attention in 4x4
    windows, the windows shifted by 2 every other block, mean-pooled into a class head."""

    def __init__(self, dim=24, heads=2, classes=10):
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(8, 8, dim))
        self.blocks = nn.ModuleList(_WindowBlock(dim, heads, 4, 2 * (i % 2)) for i in range(4))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x.reshape(-1, 8, 8, 1)) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean((1, 2)))

    def max_logit(self):
        return max(b.attn.last_max_logit for b in self.blocks)


class _Regressor(nn.Module):
    def __init__(self, d_in, width, act=nn.ReLU, depth=2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.fc2 = nn.Linear(width, width) if depth > 1 else nn.Identity()
        self.head = nn.Linear(width, 1)
        self.act = act()

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x))))).squeeze(-1)


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    "salt_pan_crust_polygon_shifted_window_classifier",
    "adamw",
    "attention_logit_growth",
    where=(
        "blocks.0.attn",
        "blocks.1.attn",
        "blocks.2.attn",
        "blocks.3.attn",
    ),
    heldout=True,
    note="A hand-written shifted-window attention classifier over the 8x8 survey grid of a "
    "salt-pan crust (4x4 windows, shifted by 2 every other block). Its AdamW peak lr is typed "
    "3e-2 for 3e-4 and weight decay is 0; q and k grow and the attention logits with them.",
)
def h460_salt_pan_window_logit_growth(ctx):
    def run(lr, attach):
        gen = seeded(4601)
        model = CrustPolygonWindowNet()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
        logits = []
        _loop(
            ctx,
            model,
            opt,
            digit_batches(gen, 24),
            100,
            F.cross_entropy,
            classifier=True,
            sched=sched,
            clip=1.0,
            attach=attach,
            after=lambda s: logits.append(model.max_logit()),
        )
        return logits

    good = run(3e-4, False)
    logits = run(3e-2, True)
    first = _mean(logits[:5])
    ctx.check("max attention logit over 20x its first steps'", max(logits) > 20 * first)
    ctx.check("max attention logit over 5x the 3e-4 run's", max(logits) > 5 * max(good))


@scenario(
    "luthier_top_tap_frequency_fp16_regressor",
    "adam",
    "amp_overflow",
    where="head",
    diverges=78,
    heldout=True,
    note="A tonewood top's tap-tone frequency regressed under fp16 autocast with a GradScaler; the "
    "target column is left in raw hertz (about 70000 for the tap's overtone band instead of kHz), "
    "so the head's fp16 output has to pass 65504 and overflows to inf.",
)
def h460_luthier_tap_fp16_overflow(ctx):
    gen = seeded(4602)
    model = _Regressor(10, 32, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    peaks = []

    def after(step):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
            peaks.append(float(model(torch.randn(64, 10, generator=gen)).abs().max()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4602, scale=2000.0, offset=70000.0),
        300,
        F.mse_loss,
        amp=True,
        scaler=scaler,
        after=after,
    )
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the fp16 loss is inf", bad is not None)
    ctx.check("the head's fp16 output passed 65504", any(not math.isfinite(p) for p in peaks))
    ctx.check("the GradScaler cut its scale", min(ctx.scales) < 2.0**12)


@scenario(
    "icicle_ridge_spacing_resumed_adam_regressor",
    "adam",
    "loss_spike",
    diverges=None,
    heldout=True,
    note="An icicle-ridge wavelength regressor preempted and resumed at step 150 from a checkpoint "
    "that saved the model but not Adam's state (the optimizer restarts with empty moments, no "
    "warm-up on resume); the loss spikes once and recovers.",
    onset=150,
)
def h460_icicle_ridge_resume_spike(ctx):
    gen = seeded(4603)
    model = _Regressor(12, 64, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def before(step):
        if step == 150:  # resumed: the checkpoint held the weights only
            opt.state.clear()

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 12, 4603), 260, F.mse_loss, before=before
    )
    base = _median(losses[120:150])
    ctx.check("loss over 5x its pre-resume median within 10 steps", max(losses[150:160]) > 5 * base)
    ctx.check("the loss recovers to under 2x that median", _mean(losses[-20:]) < 2 * base)
    ctx.check("finite throughout", _finite(losses))


class HarpHumNet(nn.Module):
    """Wind-harp hum regressor: a trunk over wind and string readings, a head on top."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh())
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    "wind_harp_string_hum_unfreeze_huber_regressor",
    "sgd_nesterov",
    "update_ratio_out_of_range",
    where=("trunk", "trunk.0", "trunk.2"),
    heldout=True,
    note="An aeolian wind-harp hum regressor (Huber) meant to train the head alone for 100 steps, "
    "then unfreeze the trunk; the unfreeze step of the trunk group's LambdaLR is typed 10000, so "
    "the trunk's lr stays 0 for the whole run (SGD Nesterov).",
)
def h460_wind_harp_trunk_never_unfrozen(ctx):
    gen = seeded(4604)
    model = HarpHumNet()
    opt = torch.optim.SGD(
        [
            {"params": model.trunk.parameters(), "lr": 0.05},
            {"params": model.head.parameters(), "lr": 0.05},
        ],
        momentum=0.9,
        nesterov=True,
    )
    unfreeze = 10000  # meant 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 0.0 if s < unfreeze else 1.0, lambda s: 1.0]
    )
    trunk0 = model.trunk[0].weight.detach().clone()
    head0 = model.head.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 4604), 200, F.huber_loss, sched=sched)
    ctx.check(
        "trunk moved under 1e-9 of its norm", _rel_change(trunk0, model.trunk[0].weight) < 1e-9
    )
    ctx.check("head moved over 5% of its norm", _rel_change(head0, model.head.weight) > 0.05)
    ctx.check("finite", _finite(losses))


@scenario(
    "sand_yacht_lap_speed_onecycle_tanh_regressor",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="A sand-yacht lap-speed tanh regressor trained full-batch with plain SGD under OneCycleLR; "
    "max_lr is typed 4.0 for 0.4, so as the cycle warms up lr * sharpness passes 2 and the loss "
    "blows up.",
)
def h460_sand_yacht_onecycle_typo(ctx):
    gen = seeded(4605)
    model = _Regressor(8, 32, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4.0, total_steps=200, pct_start=0.3)
    data = _readings(gen, 256, 8, 4605)
    x, y = next(data)

    def full():
        while True:
            yield x, y

    def sharpness():
        params = [p for p in model.parameters()]
        loss = F.mse_loss(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(15):
            n = torch.sqrt(sum((u * u).sum() for u in v))
            v = [u / n for u in v]
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
            v = [h.detach() for h in hv]
        return lam

    ratios = []

    def before(step):
        if step % 5 == 0:
            ratios.append((step, opt.param_groups[0]["lr"] * sharpness()))

    losses, _ = _loop(ctx, model, opt, full(), 200, F.mse_loss, sched=sched, before=before)
    finite = [v for v in losses if math.isfinite(v)]
    low = min(finite)
    blow = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("lr * sharpness under 2 at the start", ratios[0][1] < 2)
    ctx.check(
        "lr * sharpness over 2 before the blow-up",
        blow is not None and any(r > 2 for s, r in ratios if s <= blow),
    )
    ctx.check("the loss blows up over 100x its lowest", blow is not None)


class SapDripRNN(nn.Module):
    """Maple-sap drip-rate forecaster: a hand-written Elman cell over 30 hourly readings."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _sap_series(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        x = 0.5 * torch.randn(batch, 30, 4, generator=gen)
        y = torch.tanh((x[:, -5:] @ w).mean(1)) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    "maple_sap_drip_rate_elman_rnn",
    "rmsprop",
    "exploding_gradients",
    where="rec",
    heldout=True,
    note="A hand-written Elman RNN forecasting maple-sap drip rate from 30 hourly readings; the "
    "recurrent weights are initialised orthogonal with gain 3 (typed for 1), so gradients grow "
    "back through time; clipping at 1 keeps the loss finite (RMSprop).",
)
def h460_maple_sap_rnn_gain(ctx):
    def ratio(gain):
        seeded(4606)
        m = SapDripRNN(gain=gain)
        x, y = next(_sap_series(torch.Generator().manual_seed(1), 64, 4606))
        F.mse_loss(m(x), y).backward()
        return float(m.states[0].grad.norm() / m.states[-1].grad.norm())

    good = ratio(1.0)
    gen = seeded(4606)
    model = SapDripRNN(gain=3.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    seen = []

    def after(step):
        seen.append(float(model.states[0].grad.norm() / model.states[-1].grad.norm()))

    losses, norms = _loop(
        ctx, model, opt, _sap_series(gen, 64, 4606), 100, F.mse_loss, clip=1.0, after=after
    )
    ctx.check("the first state's gradient over 30x the last's in the run", _median(seen) > 30)
    ctx.check("under 3x at gain 1", good < 3)
    ctx.check("gradient norm over 10x the clip on average", _mean(norms) > 10)


@scenario(
    "oyster_shucking_grade_sentinel_classifier",
    "adagrad",
    "data_outlier",
    heldout=True,
    note="An oyster-shucking shell-grade classifier; one shard at step 120 comes from a gauge "
    "that logs 9999 for a missing reading and is not filtered (one corrupted batch, Adagrad).",
    onset=120,
)
def h460_oyster_sentinel_shard(ctx):
    gen = seeded(4607)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    model.append(nn.Linear(64, 5))

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 3] = 9999.0
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        torch.optim.Adagrad(model.parameters(), lr=0.05),
        _grades(gen, 64, 16, 5, 4607),
        240,
        F.cross_entropy,
        classifier=True,
        alter=alter,
    )
    base = _median(losses[100:120])
    ctx.check("loss at 120 over 20x the median before", losses[120] > 20 * base)
    ctx.check("gradient at 120 over 10x the median", norms[120] > 10 * _median(norms[100:120]))
    ctx.check("finite", _finite(losses))


class RawNorm(nn.Module):
    """A hand-written feature norm: (x - mean) / sqrt(E[x^2] - E[x]^2), no eps, no clamp."""

    def __init__(self, d):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        var = (x * x).mean(-1, keepdim=True) - mu * mu
        return self.gain * (x - mu) / torch.sqrt(var) + self.bias


class LampFlickerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = RawNorm(12)
        self.fc1 = nn.Linear(12, 48)
        self.fc2 = nn.Linear(48, 1)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(self.norm(x)))).squeeze(-1)


@scenario(
    "lighthouse_lamp_flicker_handwritten_norm_regressor",
    "adamax",
    "nonfinite",
    where="norm",
    diverges=110,
    heldout=True,
    note="A lighthouse lamp-flicker regressor whose input norm is hand-written as "
    "sqrt(E[x^2] - E[x]^2) with no eps; at step 110 a batch holds a photocell stuck at one reading "
    "(all 12 features equal), the variance is 0 and the norm gives 0/0 = NaN (Adamax).",
    onset=110,
)
def h460_lighthouse_norm_nan(ctx):
    gen = seeded(4608)
    model = LampFlickerNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    nan_out = []

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[5] = 0.75
            with torch.no_grad():
                nan_out.append(bool(torch.isnan(model.norm(x)).any()))
        return x, y

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 32, 12, 4608, offset=2.0), 200, F.mse_loss, alter=alter
    )
    ctx.check("the norm's output is NaN on the stuck batch", bool(nan_out) and nan_out[0])
    ctx.check("the loss is NaN at step 110", len(losses) == 111 and math.isnan(losses[110]))
    ctx.check("finite before", _finite(losses[:110]))


@scenario(
    "farrier_hoof_angle_temperature_classifier",
    "nadam",
    "softmax_collapse",
    where="head",
    heldout=True,
    note="A farrier's hoof-angle grade classifier whose logits are divided by a calibration "
    "temperature read from the config as 0.005 (typed for 0.5); the softmax saturates and most "
    "rows' target probability rounds to exactly 1 (NAdam).",
)
def h460_farrier_temperature(ctx):
    def run(temp, attach):
        gen = seeded(4609)
        model = nn.Sequential(nn.Linear(14, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        model.add_module("head", nn.Linear(64, 6))
        opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
        data = _grades(gen, 64, 14, 6, 4609, spread=0.8)
        _loop(
            ctx,
            model,
            opt,
            data,
            150,
            lambda out, y: F.cross_entropy(out / temp, y),
            classifier=True,
            attach=attach,
        )
        x, y = next(data)
        with torch.no_grad():
            return collapsed_fraction(model(x) / temp, y)

    good = run(1.0, False)
    bad = run(0.005, True)
    ctx.check("over half the rows' target probability exactly 1.0", bad > 0.5)
    ctx.check("under 5% at temperature 1", good < 0.05)


class CorniceConv(nn.Module):
    """Snow-cornice collapse classifier over a 64-sample strain trace (inputs in [0, 1])."""

    def __init__(self, bias_init=-0.01):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.head = nn.Linear(16, 4)
        nn.init.constant_(self.conv1.bias, bias_init)
        self.feat = None

    def forward(self, x):
        h = F.relu(self.conv1(x))
        self.feat = h.detach()
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _cornice(gen, seed):
    for x, y in _traces(gen, 48, 64, 4, seed, noise=0.2):
        yield (x + 1.2) / 2.4, y  # min-max scaled into about [0, 1]


@scenario(
    "snow_cornice_collapse_relu_conv1d",
    "asgd",
    "loss_of_plasticity",
    where="conv1",
    heldout=True,
    note="A snow-cornice collapse conv1d classifier on strain traces min-max scaled to [0, 1]; "
    "conv1's biases are initialised to -1.0 (typed for -0.01), so its ReLUs never fire and stay "
    "dead, and nothing after them learns (ASGD).",
)
def h460_snow_cornice_dead_relu(ctx):
    def run(bias, attach):
        gen = seeded(4610)
        model = CorniceConv(bias)
        opt = torch.optim.ASGD(model.parameters(), lr=0.05)
        losses, _ = _loop(
            ctx,
            model,
            opt,
            _cornice(gen, 4610),
            150,
            F.cross_entropy,
            classifier=True,
            attach=attach,
        )
        return losses, dead_fraction(model.feat.transpose(1, 2))

    good_l, good_dead = run(-0.01, False)
    losses, dead = run(-1.0, True)
    ctx.check("over 90% of conv1's units dead at the end", dead > 0.9)
    ctx.check("under 10% dead at -0.01", good_dead < 0.1)
    ctx.check("the loss did not fall", not _fell(losses, ratio=0.9))


# -- healthy controls ------------------------------------------------------------------------------


class BlastFragmentNet(nn.Module):
    """Quarry-blast fragment net: a backbone over drill-pattern readings and a task head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        out = self.head(self.backbone(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


@scenario(
    "quarry_blast_fragment_finetune_net",
    "adam",
    "healthy",
    heldout=True,
    note="Control: a quarry-blast fragment net pretrained 120 steps as a mean-fragment-size "
    "regressor (MSE), then fine-tuned 120 steps as a muck-pile grade classifier with a new head "
    "at 10x the backbone's lr (Adam param groups, discriminative rates), in the same run.",
)
def h460_quarry_blast_finetune(ctx):
    gen = seeded(4611)
    model = BlastFragmentNet()
    opt = torch.optim.Adam(
        [
            {"params": model.backbone.parameters(), "lr": 1e-3},
            {"params": model.head.parameters(), "lr": 1e-3},
        ]
    )
    pre, _ = _loop(ctx, model, opt, _readings(gen, 64, 16, 4611), 120, F.mse_loss)
    model.head = nn.Linear(64, 5)
    opt.param_groups[0]["lr"] = 1e-4
    opt.param_groups[1]["params"] = list(model.head.parameters())
    opt.param_groups[1]["lr"] = 1e-3
    fine, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 4611),
        120,
        F.cross_entropy,
        classifier=True,
        start=120,
    )
    ctx.check("the pretraining loss fell", _fell(pre))
    ctx.check("the fine-tuning loss fell", _fell(fine))


class KnockInConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 7, padding=3)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.conv1(x)), 2)
        return self.head(F.relu(self.conv2(h)).mean(-1))


@scenario(
    "cricket_bat_knock_in_fp16_conv1d_classifier",
    "sgd_momentum",
    "healthy",
    heldout=True,
    note="Control: a cricket-bat knock-in stage classifier over mallet-strike sound traces, "
    "fp16 autocast with a GradScaler, SGD momentum under OneCycleLR, label smoothing 0.1, "
    "clipping at 1.",
)
def h460_cricket_bat_fp16_control(ctx):
    gen = seeded(4612)
    model = KnockInConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _traces(gen, 48, 64, 5, 4612),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(losses))


class TiedRodAutoencoder(nn.Module):
    """Dowsing-rod swing autoencoder: the decoder reuses the encoder's weights transposed."""

    def __init__(self, d=20, code=6):
        super().__init__()
        self.enc = nn.Linear(d, code)
        self.dec_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _swings(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, 20, generator=g)
    while True:
        x = torch.randn(batch, 4, generator=gen) @ basis / 2
        x = x + 0.05 * torch.randn(batch, 20, generator=gen)
        yield x, x


@scenario(
    "dowsing_rod_swing_tied_autoencoder",
    "radam",
    "healthy",
    heldout=True,
    note="Control: a tied-weight autoencoder of dowsing-rod swing traces (RAdam, gradient "
    "accumulation over 2, clipping at 1, ReduceLROnPlateau on the loss).",
)
def h460_dowsing_tied_ae_control(ctx):
    gen = seeded(4613)
    model = TiedRodAutoencoder()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    seen = []
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _swings(gen, 32, 4613),
        200,
        F.mse_loss,
        accumulate=2,
        clip=1.0,
        sched=sched,
        plateau=lambda: seen[-1] if seen else 1.0,
        after=lambda s: seen.append(ctx.losses[-1]),
    )
    ctx.check("the loss fell", _fell(losses, ratio=0.5))
