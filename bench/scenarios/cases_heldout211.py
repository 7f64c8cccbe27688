"""Held-out set 211 (``h211_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a polynya-width tanh regressor whose warm-up peak was
multiplied by a world size of 16 on one process, a bladesmith pattern-weld deep ReLU MLP whose
He init reads std=2/sqrt(fan_in), a sea-smoke visibility net whose input norm computes a
one-pass variance with no clamp, a tchoukball rebound regressor fed one shard in millimetres, a
vellum-stretching Huber regressor whose loss-weight table reads 40 for 0.40 at one step, a guqin
harmonic classifier dividing its logits by a contrastive temperature, an underwater-hockey
regressor whose EMA weights were swapped in and never out, a crwth bow-noise 1-D GroupNorm CNN
whose stem group's rate multiplier was typed 1e-5, a mackerel-sky pressure regressor in fp16
whose targets are in pascals, a serpent key-leak BCE tagger whose head group has a 10x rate and
no decay, and three controls (a kho-kho classifier under OneCycleLR, a tinker's solder-seam GRU
with ReduceLROnPlateau, a wattle-hurdle Gaussian-NLL net in fp16).

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


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _moved(params, start) -> float:
    return max(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))


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
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` after the
    optimizer step; ``scale_loss(step, loss)`` returns what is backpropagated; stops after
    logging a NaN loss."""
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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


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


# -- polynya: a warm-up whose peak was multiplied by a world size of 16 on one process ------------

POLYNYA_ONSET = 65


@scenario(
    family="polynya_opening_width_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=POLYNYA_ONSET,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing the width of a coastal polynya (standardised) "
    "from 12 standardised readings (offshore wind, air temperature, current, ...), plain SGD, "
    "MSE, a linear warm-up over 120 steps to a peak computed `base_lr * world_size` with the "
    "launcher's world size read as 16 while the run is on one process: the peak is 0.8 instead "
    "of 0.05. The loss falls early in the warm-up; as the rate climbs, lr x sharpness passes "
    "2, the stability limit, and the loss blows up before the warm-up ends.",
)
def h211_polynya_warmup_world_size(ctx: Context) -> None:
    gen = seeded(21101)
    model = Stack(12, hidden=64, act=nn.Tanh)
    peak, warm = 0.05 * 16, 120
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    probe = next(_readings(torch.Generator().manual_seed(61), 256, 12, seed=11))
    prod = {}

    def before(step):
        if step % 5 == 0 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            prod[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=11),
        160,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    finite = [v if math.isfinite(v) else 1e30 for v in ls]
    blow = next((i for i, v in enumerate(finite) if v > 20 * min(finite[: i + 1])), len(ls))
    cross = next((s for s in sorted(prod) if prod[s] > 2), None)
    ctx.check("lr x sharpness below 1 at step 10", prod[10] < 1)
    ctx.check("lr x sharpness first past 2 at the onset", cross == POLYNYA_ONSET)
    ctx.check("lr x sharpness passed 2 before the blow-up", cross is not None and cross < blow)
    ctx.check("loss fell in the first 30 steps", _mean(ls[20:30]) < 0.7 * _mean(ls[:5]))
    ctx.check("loss past 20x its minimum before the warm-up ended", blow < warm)


# -- bladesmith: He init written std=2/sqrt(fan_in) in a 12-layer ReLU MLP -----------------------


class DeepRelu(nn.Module):
    def __init__(self, d_in, width=64, depth=12):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.blocks = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.blocks:
            # the port's He init: std = 2 / sqrt(fan_in) (meant sqrt(2 / fan_in))
            nn.init.normal_(m.weight, std=2 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)

    def forward(self, x, keep=None):
        for m in self.blocks:
            z = m(x)
            if keep is not None:
                z.retain_grad()
                keep.append(z)
            x = F.relu(z)
        return self.head(x).squeeze(-1)


@scenario(
    family="bladesmith_pattern_weld_layer_count_deep_relu_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("blocks.0", "blocks.1"),
    diverges="auto",
    heldout=True,
    note="A 12-layer ReLU MLP (blocks.0 .. blocks.11, head) regressing the visible layer count "
    "of a pattern-welded billet (standardised) from 10 standardised forging readings (folds, "
    "heat, hammer blows, ...), SGD momentum 0.9 at 3e-5 (already lowered after blow-ups at 1e-3), MSE. The hand-written He init reads "
    "`std=2 / math.sqrt(fan_in)` for `math.sqrt(2 / fan_in)`: each layer multiplies the "
    "signal by about 1.4 and the backward signal by as much, the gradient at blocks.0's output is over "
    "20x that at the last block's, and the "
    "loss swings by orders of magnitude and is NaN within 20 steps.",
)
def h211_bladesmith_he_init_sqrt_typo(ctx: Context) -> None:
    gen = seeded(21102)
    model = DeepRelu(10)
    opt = torch.optim.SGD(model.parameters(), lr=3e-5, momentum=0.9)
    ratio = []
    batches = _readings(gen, 64, 10, seed=12)
    x0, y0 = next(_readings(torch.Generator().manual_seed(62), 256, 10, seed=12))
    keep = []
    F.mse_loss(model(x0, keep), y0).backward()
    ratio.append(float(keep[0].grad.norm() / keep[-1].grad.norm()))
    model.zero_grad(set_to_none=True)
    _train(ctx, model, opt, batches, 80, F.mse_loss)
    ls = ctx.losses
    finite = [v if math.isfinite(v) else 1e30 for v in ls]
    ctx.check(
        "gradient at blocks.0's output over 20x that at the last block's at init", ratio[0] > 20
    )
    ctx.check("loss at step 0 above 100 (targets of unit scale)", ls[0] > 100)
    ctx.check("loss past 1000x its step-0 value", max(finite) > 1000 * ls[0])


# -- sea smoke: a hand-written input norm with the one-pass variance and no clamp ----------------


class OnePassNorm(nn.Module):
    """Per-sample standardisation of the readings with var = E[x^2] - E[x]^2 (no clamp)."""

    def __init__(self):
        super().__init__()
        self.min_var = float("inf")

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        var = (x * x).mean(-1, keepdim=True) - mu * mu
        self.min_var = float(var.min())
        return (x - mu) / torch.sqrt(var + 1e-6)


class SmokeNet(nn.Module):
    def __init__(self, d_in=24):
        super().__init__()
        self.norm = OnePassNorm()
        self.fc1 = nn.Linear(d_in + 1, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        level = (x.mean(-1, keepdim=True) - 275.0) / 5.0
        h = torch.cat([self.norm(x), level], -1)
        return self.head(F.silu(self.fc2(F.silu(self.fc1(h))))).squeeze(-1)


def _sea_temps(gen, batch, seed, frozen_at=None):
    """24 air and sea temperatures in kelvin from a buoy (spread of a few kelvin) and the
    visibility in sea smoke (standardised) that follows from the air-sea difference."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(24, generator=g)
    step = 0
    while True:
        base = 270 + 10 * torch.rand(batch, 1, generator=gen)
        x = base + 3 * torch.randn(batch, 24, generator=gen)
        if step == frozen_at:
            # a buoy whose sensors froze: every reading the same to 1e-4 K
            x = 271.35 + 1e-4 * torch.randn(batch, 24, generator=gen)
        z = (x - x.mean(-1, keepdim=True)) / 3
        y = torch.tanh(z @ w / 5)
        step += 1
        yield x, y


SMOKE_ONSET = 90


@scenario(
    family="sea_smoke_visibility_onepass_norm_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("norm",),
    diverges=SMOKE_ONSET,
    onset=SMOKE_ONSET,
    heldout=True,
    note="A SiLU MLP (norm, fc1, fc2, head) regressing the visibility in sea smoke "
    "(standardised) from 24 air and sea temperatures in kelvin from a buoy, Adam at 1e-3, MSE. "
    "Its hand-written per-sample input norm (`norm`) computes the variance in one pass, "
    "E[x^2] - E[x]^2, with no clamp; at step 90 the batch comes from a buoy whose sensors "
    "froze (every reading 271.35 K to 1e-4): in float32 the cancellation of two numbers near "
    "73,600 leaves a negative variance, sqrt gives NaN and the loss is NaN at step 90.",
)
def h211_sea_smoke_onepass_variance(ctx: Context) -> None:
    gen = seeded(21103)
    model = SmokeNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mins = {}

    def watch(step, out, x, y):
        mins[step] = model.norm.min_var

    _train(
        ctx,
        model,
        opt,
        _sea_temps(gen, 64, seed=13, frozen_at=SMOKE_ONSET),
        150,
        F.mse_loss,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("loss finite before step 90", _finite(ls[:SMOKE_ONSET]))
    ctx.check("loss NaN at step 90", len(ls) > SMOKE_ONSET and math.isnan(ls[SMOKE_ONSET]))
    ctx.check("norm's variance negative at step 90", mins.get(SMOKE_ONSET, 0.0) < 0)
    ctx.check("norm's variance positive before", min(mins[s] for s in range(SMOKE_ONSET)) > 0)
    ctx.check("loss fell before step 90", _fell(ls[:SMOKE_ONSET], ratio=0.7))


# -- tchoukball: one shard of court coordinates in millimetres -----------------------------------

TCHOUK_ONSET = 120


@scenario(
    family="tchoukball_rebound_angle_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=TCHOUK_ONSET,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) regressing the rebound angle off a tchoukball frame "
    "(standardised) from 8 standardised throw readings (court coordinates in metres, speed, "
    "spin, ...), RMSprop at 1e-3, MSE. One shard was exported by the tracking system in "
    "millimetres: the batch at step 120 has inputs 1000x their scale, its loss is thousands "
    "of times the run's; the run carries on after it.",
)
def h211_tchoukball_millimetre_shard(ctx: Context) -> None:
    gen = seeded(21104)
    model = Stack(8, hidden=64)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scale = {}

    def alter(step, x, y):
        if step == TCHOUK_ONSET:
            x = x * 1000.0
        scale[step] = float(x.abs().mean())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=14), 220, F.mse_loss, alter=alter)
    ls = ctx.losses
    before = _median(ls[TCHOUK_ONSET - 20 : TCHOUK_ONSET])
    ctx.check("batch at step 120 is 1000x the scale", scale[TCHOUK_ONSET] > 500 * scale[0])
    ctx.check("loss at step 120 over 100x the median before", ls[TCHOUK_ONSET] > 100 * before)
    ctx.check("loss fell before step 120", _fell(ls[:TCHOUK_ONSET], ratio=0.6))
    ctx.check("loss finite throughout", _finite(ls))


# -- vellum: a loss-weight table read 40 for 0.40 at one step ------------------------------------

VELLUM_ONSET = 110


@scenario(
    family="vellum_stretching_tension_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=VELLUM_ONSET,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head with two outputs) regressing the frame tension and the "
    "final thickness of a vellum skin on the stretching frame (standardised) from 10 "
    "standardised readings (liming days, scraping passes, ...), SGD Nesterov momentum 0.9 at "
    "0.01, Huber on tension plus a weighted MSE on thickness whose weight comes from a "
    "per-step curriculum table; the table's row for step 110 reads `40` for `0.40` (the "
    "decimal point lost in a spreadsheet export): the gradient at step 110 is more than "
    "30x the run's; the logged (backpropagated) loss jumps with it for that step.",
)
def h211_vellum_loss_weight_table(ctx: Context) -> None:
    gen = seeded(21105)
    model = Stack(10, hidden=64, out=2, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    table = [0.40] * 200
    table[VELLUM_ONSET] = 40.0

    def batches():
        r1 = _readings(gen, 64, 10, seed=15)
        r2 = _readings(gen, 64, 10, seed=16)
        while True:
            x, y1 = next(r1)
            _, y2 = next(r2)
            yield x, torch.stack([y1, torch.tanh(2 * y1) + 0.3 * y2], -1)

    step_now = [0]

    def before(step):
        step_now[0] = step

    def loss_fn(out, y):
        w = table[step_now[0]]
        return F.huber_loss(out[:, 0], y[:, 0]) + w * F.mse_loss(out[:, 1], y[:, 1])

    _train(ctx, model, opt, batches(), 200, loss_fn, before=before)
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check(
        "gradient at step 110 over 30x the median before",
        g[VELLUM_ONSET] > 30 * _median(g[VELLUM_ONSET - 20 : VELLUM_ONSET]),
    )
    ctx.check("weight table reads 100x at step 110 only", table.count(40.0) == 1)
    ctx.check("loss fell before step 110", _fell(ls[:VELLUM_ONSET], ratio=0.6))
    ctx.check("loss finite throughout", _finite(ls))


# -- guqin: logits divided by a contrastive temperature of 0.01 ----------------------------------


class TempHead(nn.Module):
    def __init__(self, dim, classes, temperature):
        super().__init__()
        self.proj = nn.Linear(dim, classes)
        self.temperature = temperature

    def forward(self, h):
        return self.proj(h) / self.temperature


class GuqinNet(nn.Module):
    def __init__(self, d_in=20, hidden=64, classes=7, temperature=0.01):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = TempHead(hidden, classes, temperature)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


@scenario(
    family="guqin_harmonic_position_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, fc2) with a head (`head`, a Linear `head.proj` whose logits are "
    "divided by a temperature) naming which of 7 harmonic positions (hui) a guqin player "
    "touched from 20 standardised spectral readings, Adagrad at 0.05, cross-entropy. The "
    "config's `temperature: 0.01` was copied from a contrastive recipe (meant 1.0): the "
    "logits are 100x, the float32 softmax gives exactly 1.0 to the top class on most rows "
    "(the others exactly 0), a batch's loss reaches over 10 when rows are wrong; finite.",
)
def h211_guqin_temperature_typo(ctx: Context) -> None:
    gen = seeded(21106)
    model = GuqinNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    coll = []

    def watch(step, out, x, y):
        top = out.detach().float().argmax(-1)
        coll.append(collapsed_fraction(out.detach(), top))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 7, seed=17),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over half the rows' softmax exactly 1.0 at the end", _mean(coll[-10:]) > 0.5)
    ctx.check("some batch's loss above 10", max(ctx.losses) > 10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- underwater hockey: an EMA swapped in for validation and never swapped out ------------------

HOCKEY_ONSET = 150


@scenario(
    family="underwater_hockey_puck_flick_distance_regressor",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=HOCKEY_ONSET,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) regressing how far an underwater-hockey puck travels "
    "from a flick (standardised) from 10 standardised readings (pusher angle, depth, ...), "
    "AdamW at 3e-3, MSE, with an exponential moving average of the weights (decay 0.995, no "
    "bias correction) swapped in for validation at step 150; the `restore` is in the "
    "branch for the best checkpoint only, so the training weights are replaced by the "
    "lagging average: the loss at step 150 jumps back near its early level, then falls "
    "again within a few dozen steps; finite.",
)
def h211_hockey_ema_not_restored(ctx: Context) -> None:
    gen = seeded(21107)
    model = Stack(10, hidden=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    shadow = _snapshot(model.parameters())

    def after(step):
        with torch.no_grad():
            for s, p in zip(shadow, model.parameters(), strict=True):
                s.mul_(0.995).add_(p.detach(), alpha=0.005)

    def before(step):
        if step == HOCKEY_ONSET:
            with torch.no_grad():
                for s, p in zip(shadow, model.parameters(), strict=True):
                    p.copy_(s)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=18),
        240,
        F.mse_loss,
        before=before,
        after=after,
    )
    ls = ctx.losses
    base = _median(ls[HOCKEY_ONSET - 20 : HOCKEY_ONSET])
    ctx.check("loss at step 150 over 5x the median before", ls[HOCKEY_ONSET] > 5 * base)
    ctx.check("loss back under 2x within 60 steps", _mean(ls[-20:]) < 2 * base)
    ctx.check("loss fell before step 150", _fell(ls[:HOCKEY_ONSET], ratio=0.5))
    ctx.check("loss finite throughout", _finite(ls))


# -- crwth: a 1-D GroupNorm CNN whose stem group's rate multiplier was typed 1e-5 ----------------


class BowNoiseNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Conv1d(1, 16, 7, padding=3)
        self.gn1 = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv1d(16, 32, 5, stride=2, padding=2)
        self.gn2 = nn.GroupNorm(8, 32)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.gn1(self.stem(x[:, None])))
        h = F.relu(self.gn2(self.conv2(h)))
        return self.head(h.mean(-1))


def _bow_noise(gen, batch, length=64):
    """Four kinds of bow noise on a crwth string: a clean tone, a scratch (broadband), a
    wolf (beating) and a slip (sawtooth bursts), with random pitch and noise."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        f = 0.15 + 0.2 * torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        tone = torch.sin(f * t + ph)
        scratch = 0.5 * tone + torch.randn(batch, length, generator=gen)
        wolf = tone * torch.sin(0.05 * t + ph)
        slip = 2 * torch.frac(f * t / 6.28 + ph / 6.28) - 1
        x = torch.stack([tone, scratch, wolf, slip], 1)[torch.arange(batch), y]
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="crwth_bow_noise_gn_conv1d",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("stem",),
    diverges=None,
    heldout=True,
    note="A 1-D CNN with GroupNorm (stem, gn1, conv2, gn2, head) classifying bow noise on a "
    "crwth string (clean, scratch, wolf, slip) from 64-sample waveforms, Adam at 3e-3 with "
    "two param groups: the stem at `base_lr * stem_lr_mult` and the rest at base_lr. The "
    "config reads `stem_lr_mult: 1e-5` for `1e-1`: the stem's weights move less than 1e-6 of "
    "their size a step while conv2's move over 1e-4; the rest of the net learns around the "
    "stuck stem and the loss falls; finite.",
)
def h211_crwth_stem_lr_mult_typo(ctx: Context) -> None:
    gen = seeded(21108)
    model = BowNoiseNet()
    base = 3e-3
    stem = list(model.stem.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("stem.")]
    opt = torch.optim.Adam([{"params": stem, "lr": base * 1e-5}, {"params": rest, "lr": base}])
    ratios = {"stem": [], "conv2": []}
    prev = {}

    def before(step):
        prev["stem"] = model.stem.weight.detach().clone()
        prev["conv2"] = model.conv2.weight.detach().clone()

    def after(step):
        for k in ratios:
            w = getattr(model, k).weight.detach()
            ratios[k].append(float((w - prev[k]).norm() / w.norm()))

    _train(
        ctx,
        model,
        opt,
        _bow_noise(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
    )
    ctx.check("stem's update ratio under 1e-6 a step", max(ratios["stem"]) < 1e-6)
    ctx.check("conv2's update ratio over 1e-4 a step", _median(ratios["conv2"]) > 1e-4)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))


# -- mackerel sky: surface pressure targets in pascals under fp16 autocast -----------------------

MACKEREL_DIVERGES = 58


@scenario(
    family="mackerel_sky_front_pressure_fp16_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("head",),
    diverges=MACKEREL_DIVERGES,
    onset=0,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) forecasting the surface pressure under an approaching "
    "front from 12 standardised sky readings (mackerel-sky cover, cloud height, wind "
    "backing, ...), NAdam at 0.05, MSE, fp16 autocast with a torch.amp.GradScaler. The target "
    "column is in pascals (around 101,000) where the config's `target_scale: 1e-3` (to kPa) "
    "was dropped: the scaler first backs off to about 1e-3 on the huge gradients; as the head's output climbs towards the targets it passes 65,504, the "
    "fp16 maximum (first at step 58), the loss is inf on almost every step from then on "
    "and on all of the last 100, every such step is skipped and the scale collapses towards 0.",
)
def h211_mackerel_sky_pascal_fp16(ctx: Context) -> None:
    gen = seeded(21109)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")

    def batches():
        for x, y in _readings(gen, 64, 12, seed=19):
            yield x, 101325.0 + 1500.0 * y

    _train(ctx, model, opt, batches(), 200, F.mse_loss, scaler=scaler)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss finite until step 58", _finite(ls[:MACKEREL_DIVERGES]))
    ctx.check("loss inf first at step 58", bad == MACKEREL_DIVERGES and math.isinf(ls[bad]))
    ctx.check("loss inf on every one of the last 100 steps", all(math.isinf(v) for v in ls[-100:]))
    ctx.check("grad scale fell below 1e-30", ctx.scales[-1] < 1e-30)


# -- serpent: a BCE tagger whose head group has a 10x rate and no weight decay -------------------


@scenario(
    family="serpent_horn_crook_leak_bce_tagger",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) tagging which of 8 keys leak on a serpent (the bass "
    "horn) from 16 standardised air-flow readings, Adamax, BCE with logits, two param "
    "groups: the body at 1e-2 with weight decay 0.05 and the head at `head_lr_mult: 10` with "
    "no decay (a fine-tuning recipe applied to a run from scratch). The tags are separable; "
    "nothing holds the head back and its logits grow 20-fold and are still growing at the "
    "end; the loss falls to about a quarter of its start; finite.",
)
def h211_serpent_head_group_no_decay(ctx: Context) -> None:
    gen = seeded(21110)
    model = Stack(16, hidden=64, out=8)
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.Adamax(
        [
            {"params": body, "lr": 1e-2, "weight_decay": 0.05},
            {"params": model.head.parameters(), "lr": 1e-1, "weight_decay": 0.0},
        ]
    )
    g = torch.Generator().manual_seed(20)
    w = torch.randn(16, 8, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 16, generator=gen)
            yield x, (x @ w > 0).float()

    top = []

    def watch(step, out, x, y):
        top.append(float(out.detach().abs().mean()))

    _train(ctx, model, opt, batches(), 250, F.binary_cross_entropy_with_logits, watch=watch)
    ctx.check("mean |logit| grew 20x", _mean(top[-10:]) > 20 * top[0])
    ctx.check("still growing (last 10 above steps 150-160)", _mean(top[-10:]) > _mean(top[150:160]))
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.3))
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="kho_kho_chase_dive_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, fc2, head) naming which of 6 moves a kho-kho chaser makes "
    "(dive, pole turn, ...) from 14 standardised readings, SGD momentum 0.9 with weight "
    "decay 5e-4 under OneCycleLR (max 0.1), cross-entropy with label smoothing 0.1.",
)
def h211_kho_kho_onecycle_control(ctx: Context) -> None:
    gen = seeded(21111)
    model = Stack(14, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.004, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 6, seed=21),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class SeamGRU(nn.Module):
    def __init__(self, d_in=6, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _solder_runs(gen, batch, steps=20, seed=22):
    """Iron temperature, feed rate, ... along a tinker's solder seam; the target is the
    seam's leak-test pressure (standardised), a smoothed function of the run, noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, steps, 6, generator=gen)
        s = torch.zeros(batch)
        for t in range(steps):
            s = 0.8 * s + 0.2 * torch.tanh(x[:, t] @ w / 2)
        yield x, 6 * s + 0.1 * torch.randn(batch, generator=gen)


@scenario(
    family="tinker_kettle_solder_seam_gru_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GRU (gru, head) regressing the leak-test pressure of a tinker's solder "
    "seam (standardised) from 20 steps of 6 readings along the seam, RAdam at 1e-2, Huber, "
    "clipping at 1.0, ReduceLROnPlateau (factor 0.5, patience 20) on the training loss.",
)
def h211_tinker_gru_plateau_control(ctx: Context) -> None:
    gen = seeded(21112)
    model = SeamGRU()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(ctx, model, opt, _solder_runs(gen, 64), 200, F.huber_loss, clip=1.0, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class GaussHead(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


def _gauss_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-8, 8)
    return F.gaussian_nll_loss(mean, y, log_var.exp())


@scenario(
    family="wattle_hurdle_weave_gaussian_nll_mlp",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, fc2, head with a mean and a clamped log-variance) "
    "predicting the wind load a woven wattle hurdle holds (standardised) with its "
    "uncertainty from 10 standardised readings (rod count, rod diameter, ...), AdamW at 3e-3 "
    "with a 20-step linear warm-up then cosine decay, Gaussian NLL, fp16 autocast with a "
    "torch.amp.GradScaler, accumulation over 2 micro-batches, clipping at 1.0.",
)
def h211_wattle_fp16_gaussian_control(ctx: Context) -> None:
    gen = seeded(21113)
    model = GaussHead()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    total = 150
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
    )
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=23, noise=0.2),
        total,
        _gauss_nll,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.5)
    ctx.check("loss finite throughout", _finite(ctx.losses))
