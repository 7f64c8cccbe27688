"""Held-out set 270 (``h270_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a saz plectrum-stroke classifier whose softmax
temperature came from a distillation config, a quilting-frame thread-tension net whose loss
weight falls back to a percent default for one step, an orchard apple-firmness net whose
hand-written weight decay has its sign flipped, a brewing yeast-count Poisson net whose rate
exp overflows fp16 under autocast, a bread-oven crust-colour net taking the log of a sensor
that reads exactly 0, a racquetball serve-speed net fed one radar shard in mm/s, a grafting
union-take BCE net whose trunk keeps its staged-unfreeze lr factor, a pruning-shear cut-force
deep tanh net whose init gain 5/3 lost its /3, a mahjong hand attention-pooling classifier
whose attention logits grow without a QK norm or weight decay, a cobblestone sett-bedding
Huber net run at the LR finder's breaking lr, and three controls (a show-jumping fence-fault
fp16 classifier with a GradScaler and clipping, a contrail persistence Gaussian-NLL net with
gradient accumulation and ReduceLROnPlateau, a hat-block felt tied autoencoder with warm-up).

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


class _Twin:
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
    amp=False,
    accumulate=1,
    scale=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale(step)`` multiplies
    the backpropagated loss (default 1 / ``accumulate``), ``after(step)`` runs after the
    optimizer step; ``amp``: fp16 autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        mult = scale(step) if scale is not None else 1.0 / accumulate
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss * mult
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


def _flat(params):
    return torch.cat([p.detach().flatten() for p in params]).clone()


# -- saz plectrum: the softmax temperature came from a distillation config ----------------------


class TemperedStack(Stack):
    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, hidden=48, out=classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="saz_plectrum_stroke_tempered_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) naming which of 6 plectrum strokes (down, up, tremolo, rasgueado-like sweep, ...) a saz player used from 20 standardised pickup readings, Adamax at 2e-3, cross-entropy on head(features) / temperature. The temperature is read from the shared config; the key was copied from a distillation run where it is 0.01, so the logits are multiplied by 100 from the first step: as the margins grow, the float32 softmax of over a third of the rows rounds the target's probability to exactly 1.0 (and the others to 0), those rows give no gradient and the logits stay over 5x the twin's. The twin with temperature 1.0 never saturates a row. Finite, no blow-up.",
)
def h270_saz_plectrum_distillation_temperature(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(27001)
        model = TemperedStack(20, 6, temperature)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        fracs, peaks = [], []

        def watch(step, out, x, y):
            fracs.append(collapsed_fraction(out.detach(), y))
            peaks.append(float(out.detach().abs().max()))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 20, 6, 41, noise=0.6),
            150,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return fracs, peaks

    twin = _Twin()
    twin_fracs, twin_peaks = run(twin, 1.0)
    fracs, peaks = run(ctx, 0.01)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "over 35% of the batch rows give the target exactly probability 1.0 (last 50 steps)",
        _mean(fracs[-50:]) > 0.35,
    )
    ctx.check("the twin with temperature 1.0 saturates no row", max(twin_fracs) == 0.0)
    ctx.check(
        "the logits over 5x the twin's (last 20 steps)",
        _mean(peaks[-20:]) > 5 * _mean(twin_peaks[-20:]),
    )


# -- quilting frame: a loss weight falls back to its percent default for one step ---------------

ONSET_QUILT = 120


@scenario(
    family="quilting_frame_thread_tension_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_QUILT,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the thread tension a long-arm quilting frame should set from 14 standardised readings (batting loft, fabric weight, stitch length, needle size, ...), SGD with Nesterov momentum 0.9 at 1e-2, MSE, gradient clipping at norm 10. The loss is multiplied by a per-fabric weight looked up from a table; at step 120 the batch's fabric code is missing from the table and the lookup falls back to the default 100 (the table was once written in percent) instead of 1.0, for that one step only: the gradient is about 100x its usual size (clipped), the weights are knocked off and the loss jumps, and the run recovers within a few dozen steps. The batch itself is ordinary. Finite, no blow-up.",
)
def h270_quilting_frame_percent_loss_weight(ctx: Context) -> None:
    gen = seeded(27002)
    model = Stack(14, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    xs = []

    def watch(step, out, x, y):
        if step == ONSET_QUILT:
            xs.append(max(float(x.abs().max()), float(y.abs().max())))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 14, 53),
        260,
        F.mse_loss,
        clip=10.0,
        watch=watch,
        scale=lambda s: 100.0 if s == ONSET_QUILT else 1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_QUILT - 20 : ONSET_QUILT])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_QUILT], ratio=0.7))
    ctx.check(
        "the gradient at the onset over 50x the median of the 20 steps before",
        gn[ONSET_QUILT] > 50 * _median(gn[ONSET_QUILT - 20 : ONSET_QUILT]),
    )
    ctx.check("the batch at the onset is ordinary (max |x|, |y| under 7)", max(xs) < 7)
    ctx.check(
        "the loss right after the onset over 2x the level before",
        max(ls[ONSET_QUILT + 1 : ONSET_QUILT + 4]) > 2 * pre,
    )
    ctx.check(
        "recovered: the loss 40-60 steps later under 1.5x the level before",
        _median(ls[ONSET_QUILT + 40 : ONSET_QUILT + 60]) < 1.5 * pre,
    )


# -- orchard: the hand-written decoupled weight decay has its sign flipped ----------------------


@scenario(
    family="orchard_apple_firmness_tanh_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing an apple's flesh firmness at harvest from 12 standardised orchard readings (days after bloom, starch index, fruit size, crop load, ...), SGD with momentum 0.9 at 3e-3, MSE. Weight decay is applied by hand after optimizer.step() as a decoupled per-step shrink, p *= (1 - 0.006), but the expression was written p *= (1 + 0.006): every step inflates every weight by 0.6% against what the gradient can pull back; the loss first falls, then climbs slowly and steadily for the rest of the run while the weight norm keeps growing; the twin with the right sign keeps falling. The batches are ordinary; finite, no blow-up.",
)
def h270_orchard_weight_decay_sign(ctx: Context) -> None:
    def run(c, sign):
        gen = seeded(27003)
        model = Stack(12, hidden=48, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9)
        norms = []

        def after(step):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + sign * 6e-3)
                norms.append(float(_flat(model.parameters()).norm()))

        _train(c, model, opt, _readings(gen, 128, 12, 61), 300, F.mse_loss, after=after)
        return norms

    twin = _Twin()
    run(twin, -1.0)
    norms = run(ctx, +1.0)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell at first", _fell(ls[:60], ratio=0.8))
    ctx.check("the loss at the end over 2x its lowest", _mean(ls[-10:]) > 2 * ls[low])
    ctx.check(
        "a slow climb: the last 100 steps' mean over the 100 before",
        _mean(ls[-100:]) > 1.2 * _mean(ls[-200:-100]),
    )
    ctx.check("the weight norm kept growing", norms[-1] > 1.5 * norms[len(norms) // 3])
    ctx.check("the twin ends under half the loss", _mean(twin.losses[-10:]) < 0.5 * _mean(ls[-10:]))


# -- brewing: the Poisson rate's exp overflows fp16 under autocast -----------------------------

FP16_MAX = 65504.0


class YeastNet(nn.Module):
    """A GELU MLP giving a log count; the rate exp(log_count) is taken inside the forward."""

    def __init__(self, d_in, hidden=48, log_mean=10.7):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)
        nn.init.constant_(self.head.bias, log_mean)

    def forward(self, x):
        return torch.exp(self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1))


def _yeast(gen, batch, d_in, seed):
    """Yeast counts (cells per microlitre) whose log is about 10.7 +- 0.6."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(10.7 + 0.6 * torch.tanh(x @ w / math.sqrt(d_in)))
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(rate, y):
    rate = rate.float()
    return (rate - y * torch.log(rate) - y + y * torch.log(y)).mean() / 1e3


@scenario(
    family="brewing_yeast_pitch_count_fp16_poisson_net",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) predicting a brewer's yeast cell count per microlitre after pitching (about 45,000, log 10.1 to 11.3) from 10 standardised readings (wort gravity, temperature, aeration, pitch rate, ...), Adam at 1.5e-4, Poisson NLL on rate = exp(head(...)) with the head's bias initialised to the log of the mean count, run under fp16 autocast with a GradScaler. The exp is written inside the model's forward, so under autocast it runs in fp16 on the head's fp16 output: fp16 tops out at 65504 (log 11.09), and the highest true counts are about 80,000: as the fit sharpens, the predictions for those rows' log counts pass 11.09 (near step 60), the exp overflows to inf and the loss turns NaN; the GradScaler skips that step and halves its scale, but the overflow is in the forward pass, which no loss scale can fix. The fp32 twin stays finite to the end. The counts are ordinary.",
)
def h270_brewing_yeast_exp_in_fp16(ctx: Context) -> None:
    def run(c, amp):
        gen = seeded(27004)
        model = YeastNet(10)
        opt = torch.optim.Adam(model.parameters(), lr=1.5e-4)
        scaler = torch.amp.GradScaler("cpu") if amp else None
        peaks, ys = [], []

        def watch(step, out, x, y):
            with torch.no_grad():
                peaks.append(
                    float(model.head(model.act2(model.fc2(model.act1(model.fc1(x))))).max())
                )
            ys.append(float(y.max()))

        _train(
            c,
            model,
            opt,
            _yeast(gen, 64, 10, 83),
            200,
            _poisson_nll,
            watch=watch,
            scaler=scaler,
            amp=amp,
        )
        return peaks, ys

    twin = _Twin()
    run(twin, amp=False)
    peaks, ys = run(ctx, amp=True)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss turned non-finite", bad is not None)
    ctx.check(
        "the loss fell before that", bad is not None and bad > 20 and _fell(ls[:bad], ratio=0.9)
    )
    ctx.check(
        "at that step a log count passed log(65504) = 11.09",
        bad is not None and peaks[bad] > math.log(FP16_MAX),
    )
    ctx.check(
        "before it, every log count stayed under 11.09 (the run was ordinary)",
        bad is not None and max(peaks[:bad]) < math.log(FP16_MAX),
    )
    ctx.check("the counts are ordinary (under 2e5)", max(ys) < 2e5)
    ctx.check(
        "the GradScaler skipped that step: its scale fell",
        bad is not None and ctx.scales[bad] < ctx.scales[bad - 1],
    )
    ctx.check(
        "the fp32 twin stays finite to the end", _finite(twin.losses) and len(twin.losses) == 200
    )


# -- bread oven: the log of a steam sensor that reads exactly 0 ---------------------------------

ONSET_OVEN = 140


class LogReadings(nn.Module):
    """log of the positive readings (the first ``k`` columns), the rest passed through."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return torch.cat([torch.log(x[:, : self.k]), x[:, self.k :]], 1)


class CrustNet(nn.Module):
    def __init__(self, k, d_in, hidden=48):
        super().__init__()
        self.logf = LogReadings(k)
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.logf(x)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


def _oven(gen, batch, seed):
    """4 positive readings (steam, humidity, ...) then 6 standardised ones; crust colour score."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        z = torch.randn(batch, 10, generator=gen)
        x = torch.cat([torch.exp(0.5 * z[:, :4]), z[:, 4:]], 1)
        yield x, torch.tanh(z @ w / math.sqrt(10)) + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="bread_oven_crust_colour_log_feature_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logf",),
    diverges=ONSET_OVEN,
    heldout=True,
    onset=ONSET_OVEN,
    note="A SiLU MLP (logf, fc1, act1, fc2, act2, head) scoring a deck oven's crust colour from 10 readings, the first four positive (steam injection, humidity, top and sole heat flux), taken through log by a LogReadings module (logf) with no clamp or eps, NAdam at 2e-3, MSE. At step 140 the steam sensor of one loaf reads exactly 0.0 (the injector was off, which the sensor reports as 0 rather than as missing): log(0) = -inf in logf, the first layer's sums meet -inf times weights of both signs and give NaN, and the loss is NaN from that step. The reading is in its ordinary range otherwise; nothing in the batch is non-finite before the log.",
)
def h270_bread_oven_log_of_zero(ctx: Context) -> None:
    gen = seeded(27005)
    model = CrustNet(4, 10)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_OVEN:
            x = x.clone()
            x[7, 0] = 0.0
            seen["x"] = x
        return x, y

    def watch(step, out, x, y):
        if step == ONSET_OVEN:
            with torch.no_grad():
                seen["log"] = model.logf(x)

    _train(ctx, model, opt, _oven(gen, 64, 89), 220, F.mse_loss, alter=alter, watch=watch)
    ls = ctx.losses
    ctx.check("finite before the onset", _finite(ls[:ONSET_OVEN]))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_OVEN], ratio=0.7))
    ctx.check("the loss is NaN at the onset", len(ls) > ONSET_OVEN and math.isnan(ls[ONSET_OVEN]))
    ctx.check(
        "the batch at the onset is finite with a reading of exactly 0",
        "x" in seen
        and bool(torch.isfinite(seen["x"]).all())
        and bool((seen["x"][:, :4] == 0).any()),
    )
    ctx.check("logf gave -inf there", "log" in seen and bool(torch.isneginf(seen["log"]).any()))


# -- racquetball: one radar shard logged in mm/s -------------------------------------------------

ONSET_RACQ = 150


@scenario(
    family="racquetball_serve_speed_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_RACQ,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a racquetball serve's speed off the front wall from 10 standardised readings (racquet head speed from a radar, contact height, stance, ...), SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at norm 1. One court's radar logged in mm/s instead of m/s and its shard was standardised with the other courts' statistics: the batch at step 150 carries six rows whose radar columns are about 1000x too large (thousands of standard deviations); the loss on that batch is thousands of times the usual, the clipped update knocks the weights off, and the run recovers within a few dozen steps. Finite, no blow-up.",
)
def h270_racquetball_radar_mm_per_s(ctx: Context) -> None:
    gen = seeded(27006)
    model = Stack(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    big = []

    def alter(step, x, y):
        if step == ONSET_RACQ:
            x = x.clone()
            x[:6, :2] = x[:6, :2] * 1000.0 + 1000.0
        big.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 97), 260, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    pre = _median(ls[ONSET_RACQ - 20 : ONSET_RACQ])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_RACQ], ratio=0.7))
    ctx.check(
        "the batch at the onset has inputs over 100x the largest before",
        big[ONSET_RACQ] > 100 * max(big[:ONSET_RACQ]),
    )
    ctx.check("the loss at the onset over 100x the level before", ls[ONSET_RACQ] > 100 * pre)
    ctx.check(
        "recovered: the loss 40-60 steps later under 2x the level before",
        _median(ls[ONSET_RACQ + 40 : ONSET_RACQ + 60]) < 2 * pre,
    )


# -- grafting: the trunk group keeps its staged-unfreeze lr factor -------------------------------


def _takes(gen, batch, d_in, seed):
    """Binary outcome (the graft union took) of a nonlinear mix of 16 readings, 10% flipped."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        score = torch.tanh(x @ w / math.sqrt(d_in)) + torch.sin(1.5 * x @ v / math.sqrt(d_in))
        y = (score > 0).float()
        flip = torch.rand(batch, generator=gen) < 0.1
        yield x, torch.where(flip, 1 - y, y)


class GraftNet(Stack):
    def forward(self, x):
        return self.head(self.features(x)).squeeze(-1)


@scenario(
    family="grafting_union_take_two_group_bce_net",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) predicting whether a nursery's bench graft (scion on rootstock) takes from 16 standardised readings (cambium contact, callus temperature, scion diameter, ...), BCE with logits, Adagrad at 5e-2 with two param groups, trunk (fc1, fc2) and head. The recipe stages the unfreezing: the trunk group's lr is multiplied by 1e-5 for the first 5 steps and restored after; the restore sets param_groups[1]['lr'] (the head) instead of the trunk's, so the trunk stays at 5e-7 for the whole run: its updates are under 1e-6 of its weights per step while the head's are over 1e-4 of its weights, and the loss stalls above the twin whose trunk is restored. Finite, no blow-up.",
)
def h270_grafting_unfreeze_restore_wrong_group(ctx: Context) -> None:
    def run(c, bug):
        gen = seeded(27007)
        model = GraftNet(16, hidden=64, act=nn.Tanh)
        trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
        opt = torch.optim.Adagrad(
            [{"params": trunk, "lr": 5e-2 * 1e-5}, {"params": model.head.parameters(), "lr": 5e-2}]
        )
        ratios = {"trunk": [], "head": []}
        prev = {}

        def before(step):
            if step == 5:
                opt.param_groups[1 if bug else 0]["lr"] = 5e-2
            prev["trunk"] = _flat(trunk)
            prev["head"] = _flat(model.head.parameters())

        def after(step):
            for name, ps in (("trunk", trunk), ("head", list(model.head.parameters()))):
                now = _flat(ps)
                ratios[name].append(float((now - prev[name]).norm() / now.norm()))

        _train(
            c,
            model,
            opt,
            _takes(gen, 128, 16, 101),
            200,
            F.binary_cross_entropy_with_logits,
            before=before,
            after=after,
        )
        return ratios

    twin = _Twin()
    run(twin, bug=False)
    ratios = run(ctx, bug=True)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the trunk's update ratio under 1e-6 (median)", _median(ratios["trunk"][5:]) < 1e-6)
    ctx.check("the head's update ratio over 1e-4 (median)", _median(ratios["head"][5:]) > 1e-4)
    ctx.check(
        "the loss stalls: the twin ends under 0.85x of it",
        _mean(twin.losses[-20:]) < 0.85 * _mean(ls[-20:]),
    )


# -- pruning shears: a deep tanh net initialised with gain 5 for 5/3 ---------------------------


class DeepCut(nn.Module):
    def __init__(self, d_in, hidden=48, depth=12, gain=5.0 / 3.0):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="pruning_shear_cut_force_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP (layers.0 ... layers.11, head) regressing the cutting force a bypass pruning shear needs on a branch from 10 standardised readings (wood species hardness, branch diameter, moisture, blade angle, ...), plain SGD at 3e-2, MSE. The init helper draws N(0, gain^2 / fan_in) with tanh's gain 5/3; the call was written gain=5 (the /3 lost in a config edit), which puts the net deep in the chaotic phase: the forward stays bounded by the tanh, but the backward signal grows layer after layer, so layers.0's weight gradient is over 100x the last hidden layer's from the first step and stays over 30x for the whole run; the early layers' updates scramble the features and the loss stalls far above the twin with gain 5/3, which trains. Finite, no blow-up.",
)
def h270_pruning_shear_tanh_gain_typo(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(27008)
        model = DeepCut(10, gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=3e-2)
        ratio = []

        c.attach(model, opt)
        batches = _readings(gen, 64, 10, 103)
        for _ in range(150):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            first = float(model.layers[0].weight.grad.norm())
            last = float(model.layers[-1].weight.grad.norm())
            ratio.append(first / max(last, 1e-30))
            c.grad_norms.append(grad_norm(model))
            opt.step()
            c.step(loss.detach())
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss.detach())):
                break
        return ratio

    twin = _Twin()
    twin_ratio = run(twin, 5.0 / 3.0)
    ratio = run(ctx, 5.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("layers.0's gradient over 100x the last hidden layer's at step 0", ratio[0] > 100)
    ctx.check("still over 30x over the last 20 steps", _median(ratio[-20:]) > 30)
    ctx.check("the twin's ratio under 3 (median)", _median(twin_ratio) < 3)
    ctx.check(
        "the loss stalls: the twin ends under half of it",
        _mean(twin.losses[-20:]) < 0.5 * _mean(ls[-20:]),
    )


# -- mahjong: an attention-pooling classifier over a hand of tiles, no QK norm, no decay -------


class AttentionPool(nn.Module):
    """One learned query attends over the set: softmax(key(h) . query / sqrt(d)) weights."""

    def __init__(self, dim):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.last_logits = None

    def forward(self, h):
        logits = self.key(h) @ self.query / math.sqrt(h.shape[-1])
        self.last_logits = logits.detach()
        w = torch.softmax(logits, dim=-1)
        return (w[..., None] * self.value(h)).sum(1)


class HandPooler(nn.Module):
    def __init__(self, d_item, dim, classes):
        super().__init__()
        self.embed = nn.Linear(d_item, dim)
        self.act = nn.GELU()
        self.pool = AttentionPool(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.pool(self.act(self.embed(x))))


def _hands(gen, batch, items, d_item, classes, seed):
    """Sets of tiles; one is flagged (feature 0 = 2) and its kind is the label."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_item - 1, generator=g)
    while True:
        x = torch.randn(batch, items, d_item, generator=gen)
        x[:, :, 0] = 0.0
        y = torch.randint(0, classes, (batch,), generator=gen)
        pick = torch.randint(0, items, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, pick, 1:] = protos[y] + 0.3 * torch.randn(batch, d_item - 1, generator=gen)
        x[rows, pick, 0] = 2.0
        yield x, y


@scenario(
    family="mahjong_hand_tile_attention_pool_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("pool",),
    diverges=None,
    heldout=True,
    note="A hand-written attention-pooling classifier over a set of 14 mahjong tiles (embed, act, pool, head): each tile's 12 features are embedded, a learned query attends over the tiles with softmax(key(h) . query / sqrt(d)) and the pooled vector is classified into one of 5 winning-pattern kinds, which is decided by the one flagged tile; AdamW at 1e-2, cross-entropy. The run's config override dropped both the QK LayerNorm the recipe uses and the weight decay (weight_decay=0): nothing bounds the query or the key weights, and since sharper attention on the flagged tile always lowers the loss, Adam grows them step after step until the attention saturates: the largest attention logit grows over 20x from the start (about 0.2 to over 12 in 75 steps), the query's norm more than doubles, and the attention's entropy falls under 0.01 nats, a one-hot pooling that no longer passes gradient to the other tiles. Finite, no blow-up.",
)
def h270_mahjong_attention_pool_unbounded(ctx: Context) -> None:
    gen = seeded(27009)
    model = HandPooler(12, 32, 5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe = next(_hands(torch.Generator().manual_seed(7), 256, 14, 12, 5, 107))[0]
    peaks, ents = [], []

    def after(step):
        with torch.no_grad():
            model(probe)
            lg = model.pool.last_logits
            peaks.append(float(lg.abs().max()))
            p = torch.softmax(lg, -1)
            ents.append(float(-(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean()))

    with torch.no_grad():
        model(probe)
        start = float(model.pool.last_logits.abs().max())
        q0 = float(model.pool.query.detach().norm())
    _train(
        ctx,
        model,
        opt,
        _hands(gen, 64, 14, 12, 5, 107),
        250,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("the largest attention logit grew over 20x", peaks[-1] > 20 * start)
    ctx.check("the query's norm over 2x its init", float(model.pool.query.detach().norm()) > 2 * q0)
    ctx.check("the attention entropy fell under 0.01 nats", ents[-1] < 0.01)


# -- cobblestone: the LR finder's breaking point pasted as the lr -------------------------------


@scenario(
    family="cobblestone_sett_bedding_depth_relu_huber_regressor",
    optimizer="SGD momentum",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how deep a paver should bed a granite sett in sand from 12 standardised readings (sett height, sand grading, moisture, expected traffic load, ...), SGD with momentum 0.9, Huber loss (delta 1). The lr was pasted from the LR finder's plot at the point where the loss broke (1.0) instead of a tenth of the minimum's lr (0.02): the Huber loss bounds each gradient so the loss does not blow up, but the first big steps push fc2's biases and weights so far that over half of act2's units (on a fixed probe of 1024 inputs) never fire again on any input, and more die as the run goes on; those units get no gradient, stay dead to the end, and the loss stalls above the twin at 0.02, which keeps nearly all its units. Finite, no blow-up.",
)
def h270_cobblestone_lr_finder_breaking_point(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(27010)
        model = Stack(12, hidden=64)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        probe = next(_readings(torch.Generator().manual_seed(9), 1024, 12, 109))[0]
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _train(c, model, opt, _readings(gen, 64, 12, 109), 200, F.huber_loss, after=after)
        return dead

    twin = _Twin()
    twin_dead = run(twin, 0.02)
    dead = run(ctx, 1.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half of act2's units dead at the end", dead[-1] > 0.5)
    ctx.check("they stayed dead: over half dead for the last 100 steps", min(dead[-100:]) > 0.5)
    ctx.check("the twin keeps over 90% of its units", twin_dead[-1] < 0.1)
    ctx.check(
        "the loss stalls: the twin ends under 0.7x of it",
        _mean(twin.losses[-20:]) < 0.7 * _mean(ls[-20:]),
    )


# -- controls ------------------------------------------------------------------------------------


@scenario(
    family="showjumping_fence_fault_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) naming which of 5 faults (rail down, refusal, run-out, water, none) a show-jumping round had at a fence from 24 standardised readings (take-off distance, approach speed, stride count, ...), AdamW at 3e-3 with weight decay 1e-2 and OneCycleLR, cross-entropy with label smoothing 0.1, under fp16 autocast with a GradScaler and gradient clipping at norm 1 (after unscale_). Ordinary run.",
)
def h270_showjumping_fp16_control(ctx: Context) -> None:
    gen = seeded(27011)
    model = Stack(24, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 24, 5, 113, noise=0.5),
        200,
        lambda out, y: F.cross_entropy(out.float(), y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    skipped = sum(b < a for a, b in zip(ctx.scales[:-1], ctx.scales[1:], strict=True))
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check("the GradScaler skipped under 5% of the steps", skipped < 0.05 * len(ls))


class SpreadNet(nn.Module):
    """A SiLU trunk with a mean head and a log-variance head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _gauss_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-8, 8)
    return 0.5 * (log_var + (y - mean) ** 2 / log_var.exp()).mean()


def _contrails(gen, batch, d_in, seed):
    """Persistence (minutes, standardised) with noise whose spread depends on humidity."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        spread = 0.1 + 0.4 * torch.sigmoid(2 * x[:, 0])
        yield x, torch.tanh(x @ w / math.sqrt(d_in)) + spread * torch.randn(batch, generator=gen)


@scenario(
    family="contrail_persistence_gaussian_nll_net",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU net (fc1, act1, fc2, act2, mean, log_var) predicting how long an aircraft contrail persists, and how uncertain that is, from 10 standardised readings (ice supersaturation, temperature at flight level, wind shear, engine type, ...), heteroscedastic noisy targets, Gaussian NLL with the log-variance clamped, RMSprop at 1e-3, gradient accumulation over 2 micro-batches, ReduceLROnPlateau. Ordinary run.",
)
def h270_contrail_gaussian_nll_control(ctx: Context) -> None:
    gen = seeded(27012)
    model = SpreadNet(10)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx, model, opt, _contrails(gen, 64, 10, 127), 200, _gauss_nll, accumulate=2, sched=sched
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell by over 0.3 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.3)


class TiedAutoencoder(nn.Module):
    """encoder Linear; the decoder reuses the encoder's weight transposed (tied)."""

    def __init__(self, d_in, code):
        super().__init__()
        self.encoder = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.decoder_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.encoder(x)), self.encoder.weight.t(), self.decoder_bias)


def _felt(gen, batch, seed, d_in=32, rank=6):
    """Hat-block felt thickness profiles: low-rank plus noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d_in, generator=g) / math.sqrt(rank)
    while True:
        z = torch.randn(batch, rank, generator=gen)
        x = z @ basis + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="hat_block_felt_profile_tied_autoencoder",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a tied-weight tanh autoencoder (encoder, act, decoder_bias; the decoder is the encoder's weight transposed) compressing 32-point felt thickness profiles a milliner measures around a hat block into 8 codes, RAdam at 2e-2 with a linear warm-up over 20 steps then cosine decay (LambdaLR), MSE. Ordinary run.",
)
def h270_hat_block_tied_autoencoder_control(ctx: Context) -> None:
    gen = seeded(27013)
    model = TiedAutoencoder(32, 8)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-2)

    def shape(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / 180))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    _train(ctx, model, opt, _felt(gen, 64, 131), 200, F.mse_loss, sched=sched)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.5))
