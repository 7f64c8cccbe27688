"""Held-out set 240 (``h240_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a gandy-dancer rail-tamp ReLU regressor whose OneCycleLR
max_lr was typed 0.5 for 5e-3, a soapbox-derby run-time regressor whose label scaler divides
Welford's sum of squares by n twice, a hydrofoil-kite lift tanh regressor whose warm-up peak was
written 1.0 for 0.01, a kite-aerial-photography two-head net whose resumed loss weights come back in
percent for one step, a lamplighter flame-gutter net that normalises a calm wind vector by its zero
length, an antlion pit-depth regressor fed one survey's depths in micrometres, a corn-dolly
plait-tension net whose trunk warm-up lambda uses integer division, a bilboquet catch cosine
classifier whose temperature lost two zeros, a hoar-frost crystal-length net fed a new camera's
raw 16-bit counts under fp16 autocast, a trick-roping IRNN whose recurrent init gain was
typed 1.5 for 1.0, and three controls (a sled-hockey shot-type classifier on noisy labels with label
smoothing, a sun-pillar height mixture density network, a hedge-maze solve-time Huber MLP under
fp16 autocast with a GradScaler).

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


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


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
    amp=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; ``amp`` is the
    autocast dtype (None: float32); stops after logging a NaN loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y if not isinstance(y, tuple) else y[1])
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out, y)
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
        if math.isnan(shown):
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


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


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- gandy dancer: OneCycleLR's max_lr typed 0.5 for 5e-3 ----------------------------------------


def _tamping(gen, batch, seed=1):
    """Twelve standardised readings of a track section before tamping (ballast depth, sleeper
    spacing, crew size, bar strokes, ...) and the rail's settlement afterwards, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="gandy_dancer_rail_tamp_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a rail section's settlement after a gandy-dancer crew tamps it from 12 standardised readings (ballast depth, sleeper spacing, crew size, bar strokes, ...), Adam with a OneCycleLR schedule, MSE. The schedule's max_lr was typed 0.5 for 5e-3: the run starts at 0.02 and climbs to 0.5 by step 60. The large Adam steps push fc2's pre-activations negative: over 60% of act2's ReLU units stop firing on every input (measured on a batch of 2048) by step 20 and all of them by step 60, and none comes back; the head sees a constant, and the loss stalls at the target's variance, over 3x that of the intended max_lr, and never blows up; finite.",
)
def h240_gandy_dancer_onecycle_max_lr_typo(ctx: Context) -> None:
    steps = 200

    def run(c, max_lr):
        gen = seeded(24001)
        model = Stack(12, hidden=64)
        opt = torch.optim.Adam(model.parameters(), lr=max_lr / 25)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=max_lr, total_steps=steps, pct_start=0.3
        )
        probe = torch.randn(2048, 12, generator=torch.Generator().manual_seed(7))
        dead = []

        def after(step):
            with torch.no_grad():
                h1 = model.act1(model.fc1(probe))
                h2 = model.act2(model.fc2(h1))
                dead.append((dead_fraction(h1), dead_fraction(h2)))

        _train(c, model, opt, _tamping(gen, 64), steps, F.mse_loss, sched=sched, after=after)
        return dead

    twin = _Quiet()
    twin_dead = run(twin, max_lr=5e-3)
    dead = run(ctx, max_lr=0.5)
    ls = ctx.losses
    ctx.check("act2 over 90% dead at the end", dead[-1][1] > 0.9)
    ctx.check("act2 over 50% dead by step 25", dead[25][1] > 0.5)
    ctx.check("act2 under 20% dead at step 0", dead[0][1] < 0.2)
    ctx.check("the intended max_lr keeps act2 under 20% dead", twin_dead[-1][1] < 0.2)
    ctx.check(
        "loss at the end over 3x that of the intended max_lr",
        _mean(ls[-30:]) > 3 * _mean(twin.losses[-30:]),
    )
    ctx.check(
        "act2's dead units do not revive (dead share at the end >= at step 80)",
        dead[-1][1] >= dead[80][1] - 0.02,
    )
    ctx.check("finite", _finite(ls))


# -- soapbox derby: the label scaler divides Welford's sum of squares by n twice -----------------


class _RunningScaler:
    """Standardises the run-time labels with running statistics merged batch by batch (Chan's
    parallel Welford update, ``n`` counting batches). ``bug``: the std is taken as
    sqrt(M2 / n / n) where sqrt(M2 / n) was meant, so it shrinks as 1/sqrt(n)."""

    def __init__(self, bug: bool):
        self.n, self.mean, self.m2, self.bug = 0, 0.0, 0.0, bug

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        bm, bv = float(y.mean()), float(y.var(unbiased=False))
        n = self.n + 1
        delta = bm - self.mean
        self.mean += delta / n
        self.m2 += bv + delta * delta * self.n / n
        self.n = n
        var = self.m2 / n / n if self.bug else self.m2 / n
        return (y - self.mean) / math.sqrt(var + 1e-8)


def _derby_runs(gen, batch, scaler, seed=2):
    """Ten standardised readings of a soapbox cart and its driver (wheel bearings, axle
    alignment, mass, ballast position, ...) and the run time down the hill in seconds (about 30
    s), standardised by the running label scaler."""
    for x, y in _readings(gen, batch, 10, seed, noise=0.05):
        yield x, scaler(30.0 + 3.0 * y)


@scenario(
    family="soapbox_derby_run_time_drift_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a soapbox-derby cart's run time from 10 standardised readings (bearings, axle alignment, mass, ballast position, ...), RMSprop at 1e-3, MSE. The labels are standardised on the fly by a running scaler that merges each batch's statistics with Chan's update; its std was written sqrt(M2 / n / n) for sqrt(M2 / n), so it shrinks as 1/sqrt(batches seen) and the standardised targets drift outward as sqrt(step). The model follows the drifting target only partly: the loss climbs slowly and noisily, to over 5x its low, with no 10-step mean over 3x the one before; finite, no blow-up. With the correct std the loss falls.",
)
def h240_soapbox_derby_welford_double_divide(ctx: Context) -> None:
    steps = 200

    def run(c, bug):
        gen = seeded(24002)
        model = Stack(10, hidden=64, act=nn.SiLU)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        scales = []

        def watch(step, out, x, y):
            scales.append(float(y.std()))

        _train(
            c,
            model,
            opt,
            _derby_runs(gen, 64, _RunningScaler(bug)),
            steps,
            F.mse_loss,
            watch=watch,
        )
        return scales

    twin = _Quiet()
    run(twin, bug=False)
    scales = run(ctx, bug=True)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 5]) for i in range(0, 60))
    means = [_mean(ls[i : i + 10]) for i in range(20, len(ls) - 9, 10)]
    jumps = max(b / max(a, 1e-8) for a, b in zip(means[:-1], means[1:], strict=True))
    ctx.check("loss at the end over 5x its low", _mean(ls[-10:]) > 5 * low)
    ctx.check("the climb is slow: no 10-step mean over 3x the one before, from step 20", jumps < 3)
    ctx.check("target spread grows over 4x from step 5 to the end", scales[-1] > 4 * scales[5])
    ctx.check("with the correct std the loss falls", _fell(twin.losses, ratio=0.5))
    ctx.check("finite", _finite(ls))


ONSET_FOIL = 20


# -- hydrofoil kite: the warm-up peak written 1.0 for 0.01 -----------------------------------------


def _foil(gen, batch, seed=3):
    """Ten standardised readings of a hydrofoil kite run (kite size, wind speed, foil area, mast
    length, board speed, ...) and the foil's lift, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="hydrofoil_kite_lift_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=ONSET_FOIL,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a hydrofoil kite board's lift from 10 standardised readings (kite size, wind speed, foil area, mast length, ...), plain SGD with a linear warm-up over 60 steps, MSE. The config's peak was written 1.0 where 0.01 was meant (the recipe's `lr_mult: 1.0` copied into `lr`). The loss falls while the rate is small; as it ramps, lr times the loss's top Hessian eigenvalue on a fixed batch (power iteration every 5 steps) passes 2 at step 20 (first measured, from 1.7 at step 15), climbs to over 4, the loss oscillates and blows up to over 100x its low by step 50 and to inf/NaN after. With the intended peak lr x sharpness stays under 2 and the loss falls.",
)
def h240_hydrofoil_kite_warmup_peak_typo(ctx: Context) -> None:
    steps, warmup = 160, 60
    probe = next(_foil(torch.Generator().manual_seed(99), 256))

    def run(c, peak):
        gen = seeded(24003)
        model = Stack(10, hidden=64, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        lrs, sharp = [], {}

        def before(step):
            lr = peak * min(1.0, (step + 1) / warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            lrs.append(lr)
            if step % 5 == 0:
                sharp[step] = _sharpness(model, F.mse_loss, probe)

        _train(c, model, opt, _foil(gen, 64), steps, F.mse_loss, before=before)
        return lrs, sharp

    twin = _Quiet()
    twin_lrs, twin_sharp = run(twin, peak=0.01)
    lrs, sharp = run(ctx, peak=1.0)
    ls = ctx.losses
    over = [s for s, lam in sharp.items() if lrs[s] * lam > 2]
    first = over[0] if over else None
    low = min(ls[: first or len(ls)])
    ctx.check("lr x sharpness past 2 (first at the onset)", first == ONSET_FOIL)
    ctx.check("lr x sharpness under 2 at the start", lrs[0] * sharp[0] < 2)
    ctx.check(
        "loss blows up to over 100x its low after the onset",
        any(not math.isfinite(v) or v > 100 * low for v in ls[ONSET_FOIL:]),
    )
    ctx.check(
        "loss fell before the onset",
        _mean(ls[ONSET_FOIL - 5 : ONSET_FOIL]) < 0.8 * _mean(ls[:5]),
    )
    ctx.check(
        "with the intended peak lr x sharpness stays under 2",
        max(twin_lrs[s] * lam for s, lam in twin_sharp.items()) < 2,
    )
    ctx.check("with the intended peak the loss falls", _fell(twin.losses, ratio=0.5))


# -- kite aerial photography: resumed loss weights come back in percent for one step -------------


class CameraRigNet(nn.Module):
    """A GELU trunk (fc1, fc2) with two heads: ``tilt_head`` regresses the camera cradle's tilt
    correction, ``sky_head`` tags whether the horizon is in frame."""

    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.tilt_head = nn.Linear(hidden, 1)
        self.sky_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return self.tilt_head(h).squeeze(-1), self.sky_head(h).squeeze(-1)


def _kite_frames(gen, batch, seed=4):
    """Twelve standardised readings of a kite-aerial camera rig (line angle, wind speed, kite
    pull, pendulum swing, ...): the tilt correction (standardised) and whether the horizon is in
    frame."""
    g = torch.Generator().manual_seed(seed)
    w, v = torch.randn(12, generator=g), torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        tilt = torch.tanh(x @ w / math.sqrt(12)) + 0.05 * torch.randn(batch, generator=gen)
        sky = ((x @ v) / math.sqrt(12) + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield x, (tilt, sky)


ONSET_KITE = 100


@scenario(
    family="kite_aerial_camera_tilt_two_head_net",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=ONSET_KITE,
    heldout=True,
    note="A two-head GELU net (fc1, fc2 trunk; tilt_head regression, sky_head horizon tag) for a kite-aerial-photography camera rig, SGD momentum 0.9 at 0.01, loss 0.5 x MSE(tilt) + 0.5 x BCE-with-logits(horizon in frame). The job is preempted and resumed at step 100; the resume path reads the loss weights from the checkpoint's run metadata, where the dashboard stored them in percent (50, 50), and the trainer re-reads the config only at the next step. For that one step the backpropagated loss and the gradient are 100x (gradient norm over 30x the median of the 20 steps before); the batch is an ordinary one. The momentum carries the burst for a few steps, the loss jumps and then comes back; finite, no blow-up.",
)
def h240_kite_aerial_resume_weights_in_percent(ctx: Context) -> None:
    gen = seeded(24004)
    model = CameraRigNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    weights = {"tilt": 0.5, "sky": 0.5}
    seen = {}

    def before(step):
        pct = step == ONSET_KITE  # the resume step: weights from the metadata, in percent
        weights["tilt"], weights["sky"] = (50.0, 50.0) if pct else (0.5, 0.5)

    def loss_fn(out, y):
        tilt, sky = out
        return weights["tilt"] * F.mse_loss(tilt, y[0]) + weights["sky"] * (
            F.binary_cross_entropy_with_logits(sky, y[1])
        )

    def watch(step, out, x, y):
        if step == ONSET_KITE:
            seen["x_max"] = float(x.abs().max())

    _train(ctx, model, opt, _kite_frames(gen, 64), 200, loss_fn, before=before, watch=watch)
    ls, gn = ctx.losses, ctx.grad_norms
    base = _median(gn[ONSET_KITE - 20 : ONSET_KITE])
    ctx.check("gradient norm at the onset over 30x the median before", gn[ONSET_KITE] > 30 * base)
    ctx.check("gradient norm the step after under 3x the median", gn[ONSET_KITE + 1] < 3 * base)
    ctx.check("the onset batch is ordinary (max |x| under 6)", seen.get("x_max", 99.0) < 6)
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_KITE], ratio=0.7))
    ctx.check(
        "loss back under 2x its pre-onset level by the end",
        _mean(ls[-10:]) < 2 * _mean(ls[ONSET_KITE - 10 : ONSET_KITE]),
    )
    ctx.check("finite", _finite(ls))


# -- lamplighter: a calm wind vector normalised by its zero length --------------------------------


class UnitDirection(nn.Module):
    """Turns the anemometer's (u, v) into a unit direction, as the station code does."""

    def forward(self, uv):
        return uv / uv.norm(dim=-1, keepdim=True)


class FlameNet(nn.Module):
    """Wind direction (``wind_dir``) and speed plus six readings -> fc1 -> fc2 -> head."""

    def __init__(self, hidden=48):
        super().__init__()
        self.wind_dir = UnitDirection()
        self.fc1 = nn.Linear(2 + 1 + 6, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        uv, rest = x[:, :2], x[:, 2:]
        feats = torch.cat([self.wind_dir(uv), uv.norm(dim=-1, keepdim=True), rest], -1)
        return self.head(F.silu(self.fc2(F.silu(self.fc1(feats))))).squeeze(-1)


ONSET_LAMP = 90


def _lamp_nights(gen, batch, calm_from=None, seed=5):
    """Wind (u, v) in m/s from the street's anemometer and six standardised readings (mantle age,
    gas pressure, glass cleanliness, ...) and how often the flame gutters, standardised. From
    step ``calm_from`` the log reaches the first calm nights: the anemometer writes (0, 0)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    step = 0
    while True:
        ang = 6.283 * torch.rand(batch, generator=gen)
        speed = 0.5 + 6 * torch.rand(batch, generator=gen)
        if calm_from is not None and step >= calm_from:
            speed[: batch // 8] = 0.0
        uv = torch.stack([speed * torch.cos(ang), speed * torch.sin(ang)], 1)
        rest = torch.randn(batch, 6, generator=gen)
        y = 0.3 * speed * (1 + torch.cos(ang - 1.0)) / 2 + torch.tanh(rest @ w / 2.5) - 0.9
        step += 1
        yield torch.cat([uv, rest], 1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="lamplighter_flame_gutter_wind_vector_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("wind_dir",),
    diverges=ONSET_LAMP,
    onset=ONSET_LAMP,
    heldout=True,
    note="A SiLU net predicting how often a gas street lamp's flame gutters from the anemometer's wind vector and six standardised readings (mantle age, gas pressure, ...); its wind_dir module turns (u, v) into a unit direction as uv / |uv| with no epsilon. Adamax at 2e-3, MSE. The log is in date order; at step 90 it reaches the first calm nights, where the anemometer writes (0, 0): wind_dir computes 0/0 = NaN, the forward and the loss are NaN at step 90. The inputs themselves are finite; a clamped norm gives a finite output on the same batch.",
)
def h240_lamplighter_calm_wind_zero_norm(ctx: Context) -> None:
    gen = seeded(24005)
    model = FlameNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_LAMP:
            with torch.no_grad():
                seen["x_finite"] = bool(torch.isfinite(x).all())
                seen["dir_nan"] = bool(torch.isnan(model.wind_dir(x[:, :2])).any())
                seen["fc1_w_finite"] = bool(torch.isfinite(model.fc1.weight).all())
                uv = x[:, :2]
                safe = uv / uv.norm(dim=-1, keepdim=True).clamp_min(1e-6)
                rest = x[:, 2:]
                feats = torch.cat([safe, uv.norm(dim=-1, keepdim=True), rest], -1)
                h = F.silu(model.fc2(F.silu(model.fc1(feats))))
                seen["fixed_finite"] = bool(torch.isfinite(model.head(h)).all())

    _train(
        ctx,
        model,
        opt,
        _lamp_nights(gen, 64, calm_from=ONSET_LAMP),
        140,
        F.mse_loss,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("finite before the onset", _finite(ls[:ONSET_LAMP]))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_LAMP], ratio=0.7))
    ctx.check("loss NaN at the onset", _first_bad(ls) == ONSET_LAMP)
    ctx.check("the onset batch's inputs are finite", seen.get("x_finite") is True)
    ctx.check("wind_dir's output has NaN at the onset", seen.get("dir_nan") is True)
    ctx.check("the weights are finite at the onset", seen.get("fc1_w_finite") is True)
    ctx.check("a clamped norm gives a finite output", seen.get("fixed_finite") is True)


# -- antlion: one survey's pit depths in micrometres ----------------------------------------------


ONSET_ANTLION = 130


def _antlion_pits(gen, batch, micrometre_at=None, seed=6):
    """Ten standardised readings of a sand patch (grain size, moisture, slope, shade, ...) and the
    antlion pit's depth, standardised with the millimetre scaler (mean 35 mm, std 8 mm). The
    survey at step ``micrometre_at`` logged depths in micrometres."""
    step = 0
    for x, y in _readings(gen, batch, 10, seed, noise=0.05):
        mm = 35.0 + 8.0 * y
        if micrometre_at is not None and step == micrometre_at:
            mm = mm * 1000.0
        step += 1
        yield x, (mm - 35.0) / 8.0


@scenario(
    family="antlion_pit_depth_silu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=ONSET_ANTLION,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing an antlion pit's depth from 10 standardised readings of the sand patch (grain size, moisture, slope, shade, ...), Adagrad at 0.05 with gradient clipping at norm 1, MSE on depths standardised with the millimetre scaler. One field survey, the batch at step 130, logged its depths in micrometres: its standardised targets are about 4000 instead of about 1, the loss at that step is over 1e4x the median before and the raw gradient over 100x. Clipping bounds the update; the loss comes back within a few steps; finite.",
)
def h240_antlion_survey_in_micrometres(ctx: Context) -> None:
    gen = seeded(24006)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_ANTLION:
            seen["y_max"] = float(y.abs().max())

    _train(
        ctx,
        model,
        opt,
        _antlion_pits(gen, 64, micrometre_at=ONSET_ANTLION),
        200,
        F.mse_loss,
        clip=1.0,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(ls[ONSET_ANTLION - 20 : ONSET_ANTLION])
    ctx.check("loss at the onset over 1e4x the median before", ls[ONSET_ANTLION] > 1e4 * before)
    ctx.check(
        "raw gradient at the onset over 100x the median before",
        gn[ONSET_ANTLION] > 100 * _median(gn[ONSET_ANTLION - 20 : ONSET_ANTLION]),
    )
    ctx.check("the onset batch's targets are in the thousands", seen.get("y_max", 0.0) > 1000)
    ctx.check(
        "loss back under 3x the median before within 15 steps",
        _median(ls[ONSET_ANTLION + 5 : ONSET_ANTLION + 15]) < 3 * before,
    )
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_ANTLION], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- corn dolly: the trunk's warm-up lambda uses integer division --------------------------------


def _plaits(gen, batch, seed=7):
    """Twelve standardised readings of a straw plait (straw variety, moisture, number of straws,
    plait pattern, ...) and its tension at the knot, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="corn_dolly_plait_tension_trunk_head_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the knot tension of a corn-dolly straw plait from 12 standardised readings, RAdam at 3e-3 with two param groups (trunk: fc1, fc2; head) and a LambdaLR whose trunk lambda is a linear warm-up over 5 epochs of 60 steps, written `min(1.0, step // 300)`: integer division makes it 0 for the whole 200-step run, so the trunk's rate is exactly 0 and fc1 and fc2 never move, while the head trains at 3e-3. The loss falls only through the head and ends well above that of the intended `step / 300`; finite.",
)
def h240_corn_dolly_integer_division_warmup(ctx: Context) -> None:
    steps, warm = 200, 5 * 60

    def run(c, lam):
        gen = seeded(24007)
        model = Stack(12, hidden=64)
        trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
        opt = torch.optim.RAdam(
            [{"params": trunk}, {"params": list(model.head.parameters())}], lr=3e-3
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [lam, lambda s: 1.0])
        start = {
            n: m.weight.detach().clone()
            for n, m in (("fc1", model.fc1), ("fc2", model.fc2), ("head", model.head))
        }
        _train(c, model, opt, _plaits(gen, 64), steps, F.mse_loss, sched=sched)
        return {
            n: float((getattr(model, n).weight.detach() - w).norm() / w.norm())
            for n, w in start.items()
        }

    twin = _Quiet()
    run(twin, lambda s: min(1.0, s / warm))
    moved = run(ctx, lambda s: min(1.0, s // warm))
    ls = ctx.losses
    ctx.check("fc1 did not move at all", moved["fc1"] == 0.0)
    ctx.check("fc2 did not move at all", moved["fc2"] == 0.0)
    ctx.check("the head moved over 10% of its weights", moved["head"] > 0.1)
    ctx.check("loss fell (through the head)", _fell(ls, ratio=0.9))
    ctx.check(
        "loss at the end over 1.5x that of the intended warm-up",
        _mean(ls[-30:]) > 1.5 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


# -- bilboquet: the cosine classifier's temperature lost two zeros -------------------------------


class CosineHead(nn.Module):
    """Cosine-similarity logits to learnt class prototypes, divided by a temperature."""

    def __init__(self, dim, classes, temperature):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.temperature = temperature

    def forward(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T / self.temperature


class CatchNet(nn.Module):
    def __init__(self, d_in=14, hidden=64, classes=5, temperature=0.1):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes, temperature)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


@scenario(
    family="bilboquet_catch_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2) with a cosine-similarity head classifying a bilboquet (cup-and-ball) catch into five kinds (cup, spike, reverse cup, ...) from 14 standardised wrist-sensor readings, NAdam at 2e-3, cross-entropy. The head divides the cosines by a temperature that the config wrote 1e-3 where 1e-1 was meant: logit gaps of a few hundredths of a cosine become tens, and the float32 softmax rounds the predicted class's probability to exactly 1.0 on most rows from the first steps: the loss starts over 10 (misclassified rows cost hundreds), then is exactly 0 on over half the batches after step 20, the saturated rows giving no gradient. With the intended temperature no row saturates; finite.",
)
def h240_bilboquet_temperature_lost_zeros(ctx: Context) -> None:
    steps = 200

    def run(c, temperature):
        gen = seeded(24008)
        model = CatchNet(temperature=temperature)
        opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
        collapsed = []

        def watch(step, out, x, y):
            collapsed.append(collapsed_fraction(out.detach(), y))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 14, 5, seed=8),
            steps,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return collapsed

    twin = _Quiet()
    twin_collapsed = run(twin, 0.1)
    collapsed = run(ctx, 1e-3)
    ls = ctx.losses
    ctx.check("over half the rows saturated at the end", _mean(collapsed[-20:]) > 0.5)
    ctx.check(
        "loss exactly 0 on over half the batches after step 20",
        _mean([v == 0.0 for v in ls[20:]]) > 0.5,
    )
    ctx.check("loss at step 0 over 10 (misclassified rows cost hundreds)", ls[0] > 10)
    ctx.check("the intended temperature saturates no row", max(twin_collapsed) == 0.0)
    ctx.check("finite", _finite(ls))


# -- hoar frost: a frost camera's 12-bit counts into an fp16 forward ------------------------------


ONSET_FROST = 110


def _frost_frames(gen, batch, raw_from=None, seed=9):
    """Sixteen intensity features of a frost camera's close-up of hoar crystals (edge density,
    facet brightness, ...) in [0, 1] and the crystals' mean length, standardised. From step
    ``raw_from`` the camera's new firmware sends 12-bit counts scaled to 16 bits (0..60000) and the
    loader, which only rescales 8-bit frames, passes them on raw."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, generator=g)
    step = 0
    while True:
        x = torch.rand(batch, 16, generator=gen)
        y = torch.tanh((x - 0.5) @ w / 1.2) + 0.05 * torch.randn(batch, generator=gen)
        if raw_from is not None and step >= raw_from:
            x = torch.round(x * 4095) * 14.65
        step += 1
        yield x, y


class FrostNet(nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(16, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="hoar_frost_crystal_length_fp16_net",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ONSET_FROST,
    onset=ONSET_FROST,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing hoar-frost crystal length from 16 intensity features of a frost camera, AdamW at 2e-3, MSE, fp16 autocast with a torch.amp.GradScaler. From step 110 the camera's new firmware sends 12-bit counts scaled to 16 bits (up to 60000, still representable in fp16) and the loader, which only rescales 8-bit frames, passes them on raw; fc1's fp16 matmul sums 16 such counts past 65504 to inf under autocast: the prediction is non-finite and the loss NaN at step 110. The same batch through the same weights in float32 gives a finite output: the break is the fp16 overflow.",
)
def h240_hoar_frost_raw_counts_fp16(ctx: Context) -> None:
    gen = seeded(24009)
    model = FrostNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_FROST:
            seen["x_max"] = float(x.max())
            with torch.no_grad():
                seen["fp32_finite"] = bool(torch.isfinite(model(x.float())).all())
                seen["x_fp16_finite"] = bool(torch.isfinite(x.half()).all())
                with torch.autocast("cpu", dtype=torch.float16):
                    seen["fc1_finite"] = bool(torch.isfinite(model.fc1(x)).all())
                seen["out_finite"] = bool(torch.isfinite(out).all())

    def loss_fn(out, y):
        return F.mse_loss(out.float(), y)

    _train(
        ctx,
        model,
        opt,
        _frost_frames(gen, 64, raw_from=ONSET_FROST),
        150,
        loss_fn,
        watch=watch,
        scaler=scaler,
        amp=torch.float16,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_FROST], ratio=0.5))
    ctx.check("finite before the onset", _finite(ls[:ONSET_FROST]))
    ctx.check("loss non-finite at the onset", _first_bad(ls) == ONSET_FROST)
    ctx.check("inputs at the onset in raw counts (max over 1000)", seen.get("x_max", 0.0) > 1000)
    ctx.check("the onset inputs are finite in fp16", seen.get("x_fp16_finite") is True)
    ctx.check("fc1's fp16 output overflows at the onset", seen.get("fc1_finite") is False)
    ctx.check("the fp16 prediction is non-finite at the onset", seen.get("out_finite") is False)
    ctx.check("the same batch in float32 gives a finite output", seen.get("fp32_finite") is True)


# -- trick roping: the recurrent init gain typed 1.5 for 1.0 --------------------------------------


class LoopRNN(nn.Module):
    """A hand-written tanh RNN over a rope's wrist-sensor sequence: ``inp`` and ``rec`` make the
    state, ``head`` reads the last one."""

    def __init__(self, d_in=3, hidden=48, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _rope_spins(gen, batch, length=40):
    """Wrist-sensor sequences of a flat-loop spin (three gyro axes, standardised) and the loop's
    mean size over the spin, standardised: it needs the whole sequence."""
    while True:
        phase = 6.283 * torch.rand(batch, 1, generator=gen)
        rate = 0.2 + 0.3 * torch.rand(batch, 1, generator=gen)
        t = torch.arange(length).float()
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        gx = amp * torch.sin(rate * t + phase)
        gy = amp * torch.cos(rate * t + phase)
        gz = 0.3 * torch.randn(batch, length, generator=gen)
        x = torch.stack([gx, gy, gz], -1)
        y = 2.0 * (amp.squeeze(1) - 1.0) + (rate.squeeze(1) - 0.35) * 4
        yield x, y


@scenario(
    family="trick_roping_flat_loop_irnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=1,
    heldout=True,
    note="A hand-written ReLU RNN in the IRNN style (inp, rec, head) regressing a trick roper's flat-loop size from 40 steps of wrist-gyro readings, plain SGD at 0.01, MSE. The recurrent weights are initialised orthogonal with the config's `rec_gain: 1.5`, typed for 1.0: the state and the loss's gradient grow through time, the gradient at the first state is over 10x that at the last (under 0.01x with gain 1.0), the loss at step 0 is already in the thousands, the gradient norm at step 0 is over 1000x that of the intended gain, and the first SGD step blows the run up: the loss is NaN at step 1. With gain 1.0 the loss falls.",
)
def h240_trick_roping_rec_gain_typo(ctx: Context) -> None:
    steps = 120

    def run(c, gain):
        gen = seeded(24010)
        model = LoopRNN(gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        seen = {}

        def after(step):
            if step == 0:
                first, last = model.states[0].grad, model.states[-1].grad
                seen["ratio"] = float(first.norm() / last.norm().clamp_min(1e-12))

        _train(c, model, opt, _rope_spins(gen, 32), steps, F.mse_loss, after=after)
        seen["rec0"] = c.grad_norms[0] if c.grad_norms else 0.0
        return seen

    twin = _Quiet()
    calm = run(twin, 1.0)
    seen = run(ctx, 1.5)
    ls = ctx.losses
    ctx.check("gradient at the first state over 10x that at the last", seen["ratio"] > 10)
    ctx.check("with the intended gain under 0.01x", calm["ratio"] < 0.01)
    ctx.check(
        "gradient norm at step 0 over 1000x that of the intended gain",
        seen["rec0"] > 1000 * calm["rec0"],
    )
    ctx.check(
        "loss blows up (over 1e6 or non-finite) by step 5",
        any(not math.isfinite(v) or v > 1e6 for v in ls[:6]),
    )
    ctx.check("with the intended gain the loss falls", _fell(twin.losses, ratio=0.5))


# -- controls -------------------------------------------------------------------------------------


def _noisy(batches, classes, rate, gen):
    """Flips a share ``rate`` of the labels to a random class (mislabelled shots)."""
    for x, y in batches:
        flip = torch.rand(len(y), generator=gen) < rate
        yield x, torch.where(flip, torch.randint(0, classes, y.shape, generator=gen), y)


@scenario(
    family="sled_hockey_shot_type_noisy_label_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying a para ice hockey shot (wrist, slap, snap, backhand, sweep, deflection) from 16 standardised stick- and sled-sensor readings, with 15% of the labels flipped at random (the taggers disagree), cross-entropy with label smoothing 0.1, AdamW at 3e-3 with weight decay 1e-2 under OneCycleLR, gradient clipping at 1. The loss falls, the clean accuracy on held-out shots is well above chance; finite.",
)
def h240_sled_hockey_noisy_labels_control(ctx: Context) -> None:
    gen = seeded(24011)
    steps = 200
    model = Stack(16, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    batches = _noisy(_kinds(gen, 64, 16, 6, seed=11), 6, 0.15, gen)
    _train(
        ctx,
        model,
        opt,
        batches,
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    xt, yt = next(_kinds(torch.Generator().manual_seed(5), 1024, 16, 6, seed=11))
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("clean held-out accuracy over 0.6", acc > 0.6)
    ctx.check("finite", _finite(ctx.losses))


class PillarMDN(nn.Module):
    """A mixture density network: a tanh trunk (fc1, fc2) and three heads for K Gaussians'
    logit weights (``pi_head``), means (``mu_head``) and scales (``sigma_head``)."""

    def __init__(self, d_in=8, hidden=64, k=3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.pi_head = nn.Linear(hidden, k)
        self.mu_head = nn.Linear(hidden, k)
        self.sigma_head = nn.Linear(hidden, k)

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        return self.pi_head(h), self.mu_head(h), F.softplus(self.sigma_head(h)) + 1e-3


def _mdn_nll(out, y):
    logit, mu, sigma = out
    logp = -0.5 * ((y[:, None] - mu) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(F.log_softmax(logit, -1) + logp, -1).mean()


def _pillars(gen, batch, seed=12):
    """Eight standardised readings of a cold night (temperature, humidity, wind, light source
    distance, ...) and the sun or light pillar's height, standardised. Plate crystals give tall
    pillars, columns short ones: the height is bimodal given the readings."""
    g = torch.Generator().manual_seed(seed)
    w, v = torch.randn(8, generator=g), torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        plate = torch.rand(batch, generator=gen) < torch.sigmoid(x @ v / 2)
        base = torch.tanh(x @ w / 3)
        y = torch.where(plate, base + 1.2, base - 1.0) + 0.15 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="sun_pillar_height_mixture_density_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a mixture density network (tanh trunk fc1, fc2; pi_head, mu_head, sigma_head for three Gaussians, softplus scales with a 1e-3 floor) for a sun pillar's height, bimodal as plate or column crystals form, from 8 standardised readings of the night; mixture NLL via log_softmax + logsumexp, Adam at 2e-3, gradient accumulation over 2 micro-batches, ReduceLROnPlateau. The NLL falls well below its start; finite.",
)
def h240_sun_pillar_mdn_control(ctx: Context) -> None:
    gen = seeded(24012)
    model = PillarMDN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(ctx, model, opt, _pillars(gen, 32), 160, _mdn_nll, accumulate=2, sched=sched)
    ls = ctx.losses
    ctx.check("NLL fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("finite", _finite(ls))


@scenario(
    family="hedge_maze_solve_time_fp16_huber_mlp",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing a hedge maze's solve time from 12 standardised readings (path length, dead ends, hedge height, visitor age, ...) with Student-t noise on the targets, Huber loss, SGD Nesterov (momentum 0.9) at 0.03 with a 20-step warm-up and cosine decay, fp16 autocast with a torch.amp.GradScaler, clipping at 1 after unscaling. The loss falls, the scale stays up; finite.",
)
def h240_hedge_maze_fp16_control(ctx: Context) -> None:
    gen = seeded(24013)
    steps = 200
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    noise = torch.distributions.StudentT(3.0)

    def mazes():
        for x, y in _readings(gen, 64, 12, seed=13, noise=0.0):
            yield x, y + 0.1 * noise.sample((len(y),))

    _train(
        ctx,
        model,
        opt,
        mazes(),
        steps,
        lambda out, y: F.huber_loss(out.float(), y, delta=1.0),
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss scale at the end at least 64", ctx.scales[-1] >= 64)
    ctx.check("finite", _finite(ctx.losses))
