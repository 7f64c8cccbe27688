"""Held-out set 247 (``h247_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a wool-bale press load net fed one press's load cells in
grams under fp16 autocast, a honey-extractor spin-yield regressor whose hand-written decoupled
weight decay has its sign flipped, a sheep-shearing handpiece regressor whose head param group lr
was typed 5e-7 for 5e-2, a caber-toss turnover regressor whose resumed accumulation multiplies the
micro-loss by the accumulation count for one step, a hemp-rope lay net whose strand-spread
feature takes the square root of a cancelling variance, a barrel-hoop tension regressor fed one
shard with targets in newtons for kilonewtons, a carillon clapper-interval Elman RNN whose
recurrent init std lost its fan-in scaling, a falconry hood-fit classifier whose temperature was
typed 1e-3 for 1e-1, an anagama ash-glaze run tanh regressor whose StepLR gamma was typed 10 for
0.1, a horseshoe-pitching ringer-distance ReLU regressor whose RAdam lr was typed 3e-1 for 3e-4,
and three controls (a luge start-paddle GELU classifier with OneCycleLR, label smoothing and
clipping, a morel-flush count Poisson regressor with ReduceLROnPlateau and accumulation, a
swordsmith folding-layer Huber MLP under fp16 autocast with a GradScaler).

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


# -- wool bale press: one press's load cells in grams into an fp16 forward ------------------------

ONSET_BALE = 100


def _bale_readings(gen, batch, grams_from, seed=2):
    """Sixteen corner load-cell readings of a wool-bale press (four platens, four corners) in
    kilonewton-scaled standard units, and the bale's final density, standardised. From
    ``grams_from`` the new press at the shed reports each corner's load as grams of bale mass."""
    stream = _readings(gen, batch, 16, seed, noise=0.05)
    step = 0
    while True:
        x, y = next(stream)
        if step >= grams_from:
            x = (56000.0 + 3000.0 * x).clamp(0.0, 65000.0)  # grams, the loader only rescales kN
        step += 1
        yield x, y


@scenario(
    family="wool_bale_press_load_fp16_silu_mlp",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ONSET_BALE,
    heldout=True,
    onset=ONSET_BALE,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a wool bale's final density from 16 corner load-cell readings of the press (four platens, four corners), AdamW at 2e-3, MSE, fp16 autocast with a torch.amp.GradScaler. From step 100 a second press's readings arrive: its load cells report the mass on each corner in grams (about 56000, at most 65000, representable in fp16) and the loader, which only standardises kilonewton readings, passes them on raw. fc1's fp16 matmul sums 16 such readings past 65504 to inf under autocast: the prediction is non-finite and the loss NaN at step 100. The same batch through the same weights in float32 gives a finite output.",
)
def h247_wool_bale_grams_fp16(ctx: Context) -> None:
    gen = seeded(24701)
    model = Stack(16, hidden=64, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_BALE:
            seen["x_max"] = float(x.abs().max())
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
        _bale_readings(gen, 64, grams_from=ONSET_BALE),
        130,
        loss_fn,
        watch=watch,
        scaler=scaler,
        amp=torch.float16,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_BALE], ratio=0.5))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_BALE)
    ctx.check("inputs at the onset in grams (max over 10000)", seen.get("x_max", 0.0) > 10000)
    ctx.check("the onset inputs are finite in fp16", seen.get("x_fp16_finite") is True)
    ctx.check("fc1's fp16 output overflows at the onset", seen.get("fc1_finite") is False)
    ctx.check("the fp16 prediction is non-finite at the onset", seen.get("out_finite") is False)
    ctx.check("the same batch in float32 gives a finite output", seen.get("fp32_finite") is True)


# -- honey extractor: a hand-written decoupled weight decay with its sign flipped -----------------


class GeluNet(nn.Module):
    """fc1 -> act1 (GELU) -> fc2 -> act2 (GELU) -> head."""

    def __init__(self, d_in, hidden=48, out=1):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


@scenario(
    family="honey_extractor_spin_yield_gelu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the honey yield of a radial extractor spin from 10 standardised readings (frame count, comb temperature, spin speed, spin time, ...), RMSprop at 1e-3, MSE. The team moved weight decay out of the optimizer into a hand-written decoupled step after opt.step(), and wrote p.mul_(1 + lr * wd) for p.mul_(1 - lr * wd) with wd 8: every step grows the weight matrices by 0.8%. The loss first falls, then climbs slowly and steadily to several times its low while the weight norm keeps growing; there is no spike, no bad batch, no NaN.",
)
def h247_honey_extractor_decay_sign(ctx: Context) -> None:
    steps = 260

    def run(c, sign):
        gen = seeded(24702)
        model = GeluNet(10)
        lr, wd = 1e-3, 8.0
        opt = torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.99)
        norms = []

        def after(step):
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() > 1:
                        p.mul_(1 + sign * lr * wd)
                norms.append(float(sum(p.norm() ** 2 for p in model.parameters()) ** 0.5))

        _train(c, model, opt, _readings(gen, 64, 10, 5), steps, F.mse_loss, after=after)
        return norms

    twin = _Quiet()
    run(twin, sign=-1.0)
    norms = run(ctx, sign=1.0)
    ls = ctx.losses
    lo = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9))
    at = min(range(0, len(ls) - 9), key=lambda i: _mean(ls[i : i + 10]))
    means = [_mean(ls[i : i + 10]) for i in range(at, len(ls) - 9, 10)]
    jumps = max(
        (b / max(a, 1e-8) for a, b in zip(means[:-1], means[1:], strict=True)), default=99.0
    )
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss first fell (low under 0.6x the start)", lo < 0.6 * _mean(ls[:10]))
    ctx.check("the loss ends over 3x its low", _mean(ls[-10:]) > 3 * lo)
    ctx.check("the climb is gradual (no 10-step mean over 2x the one before)", jumps < 2.0)
    ctx.check("the weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check(
        "the twin with the right sign ends under 1/3 of it",
        _mean(twin.losses[-10:]) < _mean(ls[-10:]) / 3,
    )


# -- sheep shearing: the head param group's lr typed 5e-7 for 5e-2 --------------------------------


@scenario(
    family="sheep_shearing_handpiece_comb_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a shearer's blow count per sheep from 12 standardised readings of the handpiece and comb (comb width, cutter sharpness, motor speed, fleece density, ...), Adagrad with two param groups: the trunk (fc1, fc2) at 5e-2 and the head at a rate meant to be 5e-2 but typed 5e-7. The head's weights move by under 1e-5 of their norm over the whole run while the trunk's move by percents; the trunk learns around a head stuck at its random init, so the loss still falls and stays finite, no blow-up.",
)
def h247_sheep_shearing_head_lr_typo(ctx: Context) -> None:
    steps = 200

    def run(c, head_lr):
        gen = seeded(24703)
        model = Stack(12, hidden=48, act=nn.SiLU)
        trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
        opt = torch.optim.Adagrad(
            [
                {"params": trunk, "lr": 5e-2},
                {"params": model.head.parameters(), "lr": head_lr},
            ]
        )
        w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        _train(c, model, opt, _readings(gen, 64, 12, 8), steps, F.mse_loss)
        return {
            n: float((p.detach() - w0[n]).norm() / w0[n].norm())
            for n, p in model.named_parameters()
        }

    twin = _Quiet()
    twin_moved = run(twin, head_lr=5e-2)
    moved = run(ctx, head_lr=5e-7)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head weight moved under 1e-4 of its norm", moved["head.weight"] < 1e-4)
    ctx.check("fc1's weight moved over 1e-2 of its norm", moved["fc1.weight"] > 1e-2)
    ctx.check("fc2's weight moved over 1e-2 of its norm", moved["fc2.weight"] > 1e-2)
    ctx.check(
        "the head moved under 1e-3 of what the intended config moves it",
        moved["head.weight"] < 1e-3 * twin_moved["head.weight"],
    )


# -- caber toss: a resumed accumulation multiplies the micro-loss for one step -------------------

ONSET_CABER = 120


@scenario(
    family="caber_toss_turnover_accum_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CABER,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the turnover angle of a caber toss from 14 standardised readings (caber length and mass, run-up speed, release height, ...), SGD with momentum 0.9 at 1e-2, MSE, gradient accumulation over 8 micro-batches. At step 120 the job is resumed from a checkpoint and the resume path scales each micro-loss by `loss * accum_steps` instead of `loss / accum_steps` for its first optimizer step: the accumulated gradient is 64x that of the steps around it. The batches are ordinary; the loss jumps after the step and the run recovers; finite.",
)
def h247_caber_toss_resume_accum_bug(ctx: Context) -> None:
    gen = seeded(24704)
    model = Stack(14, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    accum = 8
    xs = []

    def scale_loss(step, total):
        # total is loss / accum; the resumed step uses loss * accum instead
        return total * accum * accum if step == ONSET_CABER else total

    def watch(step, out, x, y):
        if step in (ONSET_CABER - 1, ONSET_CABER):
            xs.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 14, 11),
        200,
        F.mse_loss,
        accumulate=accum,
        scale_loss=scale_loss,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_CABER - 20 : ONSET_CABER])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_CABER], ratio=0.5))
    ctx.check(
        "the gradient norm at the onset over 30x the median before", gn[ONSET_CABER] > 30 * before
    )
    ctx.check("the gradient norm after the onset back under 5x", gn[ONSET_CABER + 30] < 5 * before)
    ctx.check("the batches at the onset are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check(
        "the loss recovered within 60 steps (under 2x its pre-onset level)",
        _mean(ls[ONSET_CABER + 50 : ONSET_CABER + 60])
        < 2 * _mean(ls[ONSET_CABER - 10 : ONSET_CABER]),
    )


# -- hemp rope lay: the strand-spread feature takes sqrt of a cancelling variance ----------------

ONSET_ROPE = 90


class StrandSpread(nn.Module):
    """The spread of the strand tensions, sqrt(E[x^2] - E[x]^2), in units of 50 N (no clamp)."""

    def forward(self, t):
        var = (t * t).mean(1, keepdim=True) - t.mean(1, keepdim=True) ** 2
        return torch.sqrt(var) / 50.0


class RopeLayNet(nn.Module):
    def __init__(self, strands=8, extra=4, hidden=32):
        super().__init__()
        self.strands = strands
        self.spread = StrandSpread()
        self.fc1 = nn.Linear(strands + extra + 1, hidden)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        t = x[:, : self.strands]
        z = torch.cat([(t - 800.0) / 50.0, x[:, self.strands :], self.spread(t)], 1)
        return self.head(self.act1(self.fc1(z))).squeeze(-1)


def _rope_readings(gen, batch, stuck_from, seed=13):
    """Eight strand tensions of a ropewalk's laying machine in newtons (about 800 N each), four
    standardised readings (twist rate, hemp moisture, ...) and the rope's lay quality. From
    ``stuck_from`` the tension logger is stuck and repeats one reading on all eight strands."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    step = 0
    while True:
        t = 800.0 + 50.0 * torch.randn(batch, 8, generator=gen)
        e = torch.randn(batch, 4, generator=gen)
        z = torch.cat([(t - 800.0) / 50.0, e], 1)
        spread = ((t - t.mean(1, keepdim=True)) ** 2).mean(1).sqrt() / 50.0
        y = torch.tanh(z @ w / math.sqrt(12)) - 0.8 * spread
        if step >= stuck_from:
            t = t[:, :1].expand(-1, 8).clone()
        step += 1
        yield torch.cat([t, e], 1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="hemp_rope_lay_twist_spread_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("spread",),
    diverges=ONSET_ROPE,
    heldout=True,
    onset=ONSET_ROPE,
    note="A rope-lay quality net: a `spread` module computing the spread of eight strand tensions (newtons, about 800 N) as sqrt(E[x^2] - E[x]^2) with no clamp, then fc1 (SiLU) and a head, Adamax at 2e-3, MSE. From step 90 the tension logger sticks and repeats one reading on all eight strands: the variance is zero in exact arithmetic, but E[x^2] - E[x]^2 cancels catastrophically in float32 and comes out slightly negative on some rows; the square root gives NaN in `spread`, and the loss is NaN at step 90.",
)
def h247_hemp_rope_sqrt_negative_variance(ctx: Context) -> None:
    gen = seeded(24705)
    model = RopeLayNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_ROPE:
            with torch.no_grad():
                t = x[:, :8]
                var = (t * t).mean(1) - t.mean(1) ** 2
                seen["neg_rows"] = int((var < 0).sum())
                seen["spread_nan"] = bool(torch.isnan(model.spread(t)).any())
                seen["x_finite"] = bool(torch.isfinite(x).all())

    _train(
        ctx,
        model,
        opt,
        _rope_readings(gen, 64, stuck_from=ONSET_ROPE),
        120,
        F.mse_loss,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_ROPE], ratio=0.7))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_ROPE)
    ctx.check("the onset batch is finite", seen.get("x_finite") is True)
    ctx.check("the float32 variance is negative on some onset rows", seen.get("neg_rows", 0) > 0)
    ctx.check("spread produces NaN at the onset", seen.get("spread_nan") is True)


# -- barrel hoop: one shard's targets in newtons for kilonewtons ----------------------------------

ONSET_HOOP = 140


@scenario(
    family="barrel_hoop_driving_tension_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_HOOP,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the hoop tension a cooper reaches when driving a hoop onto a barrel, in kilonewtons, from 10 standardised readings (stave thickness, bilge diameter, hoop width, driver strikes, ...), NAdam at 2e-3, MSE. The batch at step 140 comes from one workshop's shard whose tensions were exported in newtons: its targets are 1000x the others. The loss and gradient spike at that step; the inputs are ordinary; finite, no divergence.",
)
def h247_barrel_hoop_newton_shard(ctx: Context) -> None:
    gen = seeded(24706)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_HOOP:
            y = y * 1000.0 + 2000.0
            seen["y_max"] = float(y.abs().max())
            seen["x_max"] = float(x.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 17), 220, F.mse_loss, alter=alter)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_HOOP], ratio=0.5))
    ctx.check(
        "loss at the onset over 1000x the median before",
        ls[ONSET_HOOP] > 1000 * _median(ls[ONSET_HOOP - 20 : ONSET_HOOP]),
    )
    ctx.check(
        "gradient at the onset over 100x the median before",
        gn[ONSET_HOOP] > 100 * _median(gn[ONSET_HOOP - 20 : ONSET_HOOP]),
    )
    ctx.check("the onset targets are in newtons (over 500)", seen.get("y_max", 0.0) > 500)
    ctx.check("the onset inputs are ordinary (max |x| under 6)", seen.get("x_max", 99.0) < 6)


# -- carillon clapper: the recurrent init std lost its fan-in scaling ----------------------------


class ElmanNet(nn.Module):
    """A hand-written Elman RNN: h_t = relu(inp(x_t) + rec(h_{t-1})), a head on the last state."""

    def __init__(self, d_in=4, hidden=32, rec_std=None):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.rec.weight, std=rec_std if rec_std is not None else hidden**-0.5)
        self.hidden = hidden
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _clapper_sequences(gen, batch, length=24):
    """Four standardised readings per stroke of a carillon's clapper (pull force, wire travel,
    bell mass class, strike interval so far) over ``length`` strokes, and the next interval."""
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        decay = 0.85 ** torch.arange(length - 1, -1, -1).float()
        y = torch.tanh((x[:, :, 0] * decay).sum(1) / 3 + 0.5 * x[:, -1, 3])
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="carillon_clapper_strike_gap_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU Elman RNN (inp, rec, head) reading 24 strokes of a carillon clapper (pull force, wire travel, bell mass class, interval so far) and regressing the next strike interval, plain SGD at 1e-3, MSE. The recurrent init was meant to be normal with std hidden**-0.5 and was written std=hidden**-0.25 (0.42 for 32 units): the recurrent map's gain is over 1 per stroke, so the hidden state and the gradient grow stroke by stroke: at step 0 the gradient with respect to the first hidden state is over 100x that at the last one and the loss is already about 1e7; the first SGD update blows the weights up and the loss is NaN at step 1.",
)
def h247_carillon_clapper_rec_init_std(ctx: Context) -> None:
    gen = seeded(24707)
    model = ElmanNet(rec_std=32**-0.25)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratio = {}
    batches = _clapper_sequences(gen, 32)
    ctx.attach(model, opt)
    for step in range(120):
        x, y = next(batches)
        out = model(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        if step == 0:
            first = model.states[0].grad.norm()
            last = model.states[-1].grad.norm()
            ratio["t"] = float(first / max(float(last), 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at the first stroke over 100x that at the last (step 0)",
        ratio.get("t", 0.0) > 100,
    )
    ctx.check(
        "the loss blew up (over 1000x its start, or non-finite)",
        not _finite(ls) or max(ls) > 1000 * ls[0],
    )
    ctx.check(
        "the gradient norm grew over 100x",
        max(v for v in gn if math.isfinite(v)) > 100 * gn[0] or not _finite(gn),
    )


# -- falconry hood: the softmax temperature typed 1e-3 for 1e-1 ----------------------------------


class HoodNet(nn.Module):
    """fc1 -> act1 (ReLU) -> head, logits divided by a temperature."""

    def __init__(self, d_in, classes, temperature, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))) / self.temperature


@scenario(
    family="falconry_hood_fit_temperature_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (fc1, act1, head) grading how a falconer's hood fits (5 grades) from 16 standardised readings of the bird's head and the hood (beak opening, brace tension, crown height, ...), Adam at 1e-3, cross-entropy. The logits are divided by a temperature meant to be 0.1 and typed 1e-3: from the first steps the float32 softmax rounds most targets' probabilities to exactly 1 (or 0), the gradients of those rows vanish and the wrong rows carry huge losses; the intended temperature keeps probabilities soft. Finite, no blow-up.",
)
def h247_falconry_hood_temperature_typo(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(24708)
        model = HoodNet(16, 5, temperature)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 16, 5, 19))
        fr = []

        def after(step):
            with torch.no_grad():
                fr.append(collapsed_fraction(model(probe[0]), probe[1]))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 5, 19),
            150,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return fr

    twin = _Quiet()
    twin_fr = run(twin, 0.1)
    fr = run(ctx, 1e-3)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half the probe rows saturate to exactly 1 by step 20", fr[20] > 0.5)
    ctx.check("over half saturate at the end", fr[-1] > 0.5)
    ctx.check("the intended temperature saturates under 10%", twin_fr[-1] < 0.1)


# -- anagama ash glaze: StepLR's gamma typed 10 for 0.1 ------------------------------------------

ONSET_GLAZE = 80


@scenario(
    family="anagama_ash_glaze_run_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_GLAZE,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how far the natural ash glaze runs down a pot in an anagama firing from 10 standardised readings (kiln position, wood species, stoking rate, firing days, ...), plain SGD at 0.1, MSE, StepLR with step_size 80. Its gamma was meant to decay the rate to 0.01 and was typed 10 for 0.1: at step 80 the rate becomes 1.0 and lr x (top Hessian eigenvalue) passes 2, so the loss oscillates and blows up.",
)
def h247_anagama_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(24709)
    model = Stack(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ONSET_GLAZE, gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(5), 256, 10, 23))
    seen = {}

    def before(step):
        if step == ONSET_GLAZE:
            seen["lr"] = opt.param_groups[0]["lr"]
            seen["sharp"] = _sharpness(model, F.mse_loss, probe)
        if step == 0:
            seen["lr0"] = opt.param_groups[0]["lr"]
            seen["sharp0"] = _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _readings(gen, 64, 10, 23), 140, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_GLAZE], ratio=0.7))
    ctx.check("finite before the onset", _finite(ls[:ONSET_GLAZE]))
    ctx.check("lr x sharpness under 2 at step 0", seen["lr0"] * seen["sharp0"] < 2)
    ctx.check("lr x sharpness over 2 at the onset", seen.get("lr", 0) * seen.get("sharp", 0) > 2)
    ctx.check(
        "the loss blew up after the onset (over 100x, or non-finite)",
        not _finite(ls) or max(ls[ONSET_GLAZE:]) > 100 * _mean(ls[ONSET_GLAZE - 10 : ONSET_GLAZE]),
    )


# -- horseshoe pitching: RAdam's lr typed 3e-1 for 3e-4 -----------------------------------------


@scenario(
    family="horseshoe_pitching_ringer_distance_relu_regressor",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how far a pitched horseshoe lands from the stake from 12 standardised readings (release height, spin, arc, shoe mass, ...), RAdam, MSE. The lr was meant to be 3e-4 and was typed 3e-1: once RAdam's rectification lets the adaptive step in, fc2's pre-activations are pushed negative and most of act2's ReLU units stop firing on every input (measured on a batch of 2048) and do not come back; the loss keeps falling on the few live units, finite, no blow-up.",
)
def h247_horseshoe_radam_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(24710)
        model = Stack(12, hidden=64)
        opt = torch.optim.RAdam(model.parameters(), lr=lr)
        probe = torch.randn(2048, 12, generator=torch.Generator().manual_seed(9))
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _train(c, model, opt, _readings(gen, 64, 12, 29), 200, F.mse_loss, after=after)
        return dead

    twin = _Quiet()
    twin_dead = run(twin, 3e-4)
    dead = run(ctx, 3e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("act2 under 20% dead at step 0", dead[0] < 0.2)
    ctx.check("act2 over 60% dead at the end", dead[-1] > 0.6)
    ctx.check("act2 stays over 60% dead over the last 50 steps", min(dead[-50:]) > 0.6)
    ctx.check("the intended lr keeps act2 under 20% dead", twin_dead[-1] < 0.2)
    ctx.check(
        "no revival: act2's dead fraction never falls by over 0.05 after step 100",
        min(dead[100:]) > dead[100] - 0.05,
    )


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    family="luge_start_paddle_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) classifying a luge slider's start-paddle technique (6 kinds) from 20 standardised readings of the start ramp's force plates and handle pull, AdamW at a OneCycleLR schedule (max_lr 5e-3), cross-entropy with label smoothing 0.1 on 10% mislabelled starts, gradient clipping at 1.0. Trains normally.",
)
def h247_luge_start_onecycle_control(ctx: Context) -> None:
    gen = seeded(24711)
    steps = 200
    model = GeluNet(20, hidden=64, out=6)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps, pct_start=0.25)
    stream = _kinds(gen, 64, 20, 6, 31)

    def noisy():
        while True:
            x, y = next(stream)
            flip = torch.rand(len(y), generator=gen) < 0.1
            y = torch.where(flip, torch.randint(0, 6, y.shape, generator=gen), y)
            yield x, y

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(ctx, model, opt, noisy(), steps, loss_fn, classifier=True, clip=1.0, sched=sched)
    ls = ctx.losses
    x, y = next(_kinds(torch.Generator().manual_seed(4), 1024, 20, 6, 31))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("held-out accuracy over 0.6", acc > 0.6)


def _flush_counts(gen, batch, seed=37):
    """Ten standardised readings of a morel patch after rain (soil temperature, moisture, days
    since burn, canopy, ...) and the count of morels flushing, Poisson with a log-linear rate."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        rate = torch.exp(1.5 + 0.6 * torch.tanh(x @ w / math.sqrt(10)) + 0.3 * x[:, 0])
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="morel_mushroom_flush_count_poisson_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) predicting the log-rate of a Poisson count of morels flushing on a patch after rain from 10 standardised readings, Poisson negative log-likelihood (log_input), Adam at 3e-3 with ReduceLROnPlateau, gradient accumulation over 2. Trains normally.",
)
def h247_morel_flush_poisson_control(ctx: Context) -> None:
    gen = seeded(24712)
    model = Stack(10, hidden=32, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)

    def loss_fn(out, y):
        return F.poisson_nll_loss(out, y, log_input=True)

    _train(ctx, model, opt, _flush_counts(gen, 64), 200, loss_fn, sched=sched, accumulate=2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))


@scenario(
    family="swordsmith_folding_layer_fp16_huber_mlp",
    optimizer="SGD(nesterov=True)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the edge hardness of a folded blade from 14 standardised readings of a swordsmith's folding (fold count, forge temperature, hammer rate, carbon, ...) with heavy-tailed noise, SGD with Nesterov momentum at 2e-2, warm-up then cosine (LambdaLR), Huber loss, gradient clipping at 1.0, fp16 autocast with a torch.amp.GradScaler. Trains normally.",
)
def h247_swordsmith_fp16_huber_control(ctx: Context) -> None:
    gen = seeded(24713)
    steps = 200
    model = Stack(14, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)

    def lam(step):
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    stream = _readings(gen, 64, 14, 41)
    t = torch.distributions.StudentT(3.0)

    def heavy():
        while True:
            x, y = next(stream)
            yield x, y + 0.1 * t.sample(y.shape)

    def loss_fn(out, y):
        return F.huber_loss(out.float(), y, delta=1.0)

    _train(
        ctx,
        model,
        opt,
        heavy(),
        steps,
        loss_fn,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check("the loss scale stayed finite", all(math.isfinite(s) and s > 0 for s in ctx.scales))
