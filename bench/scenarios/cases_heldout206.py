"""Held-out set 206 (``h206_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a pinball flipper-shot IRNN whose identity recurrent init was
typed 1.15 for 1.0, a quilling paper-coil classifier that multiplies raw dot products by a
cosine-margin scale of 64, a tuna longline catch regressor fed one batch with the missing-value
sentinel -999 left in its targets, a flamenco zapateado tempo LSTM resumed from a checkpoint
without its Adam state, a glider winch-launch regressor whose warm-up peak was typed 10x, a
bespoke-tailor two-tower MLP whose backbone warm-up uses integer division (lr factor 0), an
anemometer wind-vector MLP that normalises (u, v) with no epsilon, a bicycle wheel-truing ReLU
MLP on raw readings at an Adamax rate typed 10x, a water-ski slalom BCE net with the label
column left among its features, a kettlebell swing-power Huber MLP whose end-of-epoch batch is
summed rather than averaged, and three controls (an alpaca fleece GELU MLP with clipping and a
cosine schedule, a cheerleading stunt classifier in fp16 with a GradScaler and OneCycleLR, a
rally co-driver pace-note tied-weight GRU language model with ReduceLROnPlateau).

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
    scale_loss=None,
    alter=None,
    stop_on_blowup=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` after the
    optimizer step; ``scale_loss(step, loss)`` returns what is backpropagated; stops after
    logging a NaN loss (or a loss above ``stop_on_blowup``)."""
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
        if math.isnan(shown) or (stop_on_blowup is not None and shown > stop_on_blowup):
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


# -- pinball: an IRNN whose identity recurrent init was typed 1.15 for 1.0 ------------------------


class FlipperCell(nn.Module):
    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.rec.bias.zero_()

    def forward(self, x, h):
        return torch.relu(self.inp(x) + self.rec(h))


class PinballIRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.hidden = hidden
        self.cell = FlipperCell(d_in, hidden, gain)
        self.head = nn.Linear(hidden, 1)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _flipper_batches(gen, batch=32, steps=40):
    """Ball-sensor readings over a flipper window; target: the mean of one channel."""
    while True:
        x = 0.5 * torch.randn(batch, steps, 4, generator=gen)
        yield x, x[:, :, 0].mean(1) + 0.3 * x[:, -5:, 1].mean(1)


@scenario(
    family="pinball_flipper_shot_irnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell", "cell.rec"),
    diverges=1,
    heldout=True,
    note="an IRNN's recurrent weights initialised to 1.15 * I (typed 1.15 for 1.0): the hidden "
    "state and its gradient grow geometrically through 40 time steps, NaN at step 1 (plain SGD)",
)
def h206_pinball_irnn_gain_typo(ctx: Context) -> None:
    gen = seeded(20601)
    model = PinballIRNN(gain=1.15)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratio = []

    def watch(step, out, x, y):
        if step == 0:
            s = model.states
            loss = F.mse_loss(out, y)
            g = torch.autograd.grad(loss, [s[0], s[-1]], retain_graph=True)
            ratio.append(float(g[0].norm() / (g[1].norm() + 1e-30)))

    _train(ctx, model, opt, _flipper_batches(gen), 80, F.mse_loss, watch=watch, stop_on_blowup=1e12)
    ctx.check("the gradient at t=0 is over 100x the one at t=39", ratio[0] > 100)
    ls = ctx.losses
    ctx.check(
        "the loss blows up (non-finite or 1000x its start)",
        _first_bad(ls) is not None or max(ls) > 1e3 * ls[0],
    )


# -- quilling: a cosine-margin scale of 64 applied to raw dot products ---------------------------


class CoilNet(Stack):
    """Meant as a normalised cosine classifier (scale 64); the normalisation was never written."""

    def __init__(self, d_in, classes, scale=64.0):
        super().__init__(d_in, hidden=64, out=classes)
        self.head = nn.Linear(64, classes, bias=False)
        self.scale = scale

    def forward(self, x):
        return self.scale * self.head(self.features(x))


@scenario(
    family="quilling_paper_coil_shape_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="an ArcFace-style scale s=64 multiplies raw (unnormalised) head dot products: the "
    "softmax saturates, most target probabilities round to exactly 1.0 in float32",
)
def h206_quilling_unnormalised_cosine_scale(ctx: Context) -> None:
    gen = seeded(20602)
    model = CoilNet(12, 6)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    frac = []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 6, 2602, noise=0.15),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows have target probability exactly 1.0 at the end", _mean(frac[-10:]) > 0.5
    )
    ctx.check("few rows were saturated at the start", frac[0] < 0.3)


# -- tuna longline: one batch with the missing-value sentinel -999 left in its targets -----------


@scenario(
    family="tuna_longline_soak_catch_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="one batch (step 90) comes from a logbook export whose missing catches are coded -999 "
    "and were not filtered: the loss jumps over 1000x for that step",
)
def h206_tuna_missing_sentinel_batch(ctx: Context) -> None:
    gen = seeded(20603)
    model = Stack(8, hidden=48, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == 90:
            y = y.clone()
            y[::4] = -999.0
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 8, 2603), 160, F.mse_loss, alter=alter)
    ls = ctx.losses
    base = _median(ls[70:90])
    ctx.check("the loss at step 90 is over 1000x the median before", ls[90] > 1e3 * base)
    ctx.check("the run is finite", _finite(ls))


# -- flamenco: resumed from a checkpoint without its Adam state ----------------------------------


class ZapateadoLSTM(nn.Module):
    def __init__(self, d_in=3, hidden=32):
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1]).squeeze(-1)


def _zapateado_batches(gen, batch=32, steps=24):
    """Heel, toe and flat-foot strike strengths over a compás; target: the mean tempo proxy."""
    while True:
        x = torch.rand(batch, steps, 3, generator=gen)
        tempo = (
            (x[:, :, 0] * x[:, :, 1]).mean(1) * 4 - 1 + 0.5 * torch.sin(3 * x[:, -4:, 2].mean(1))
        )
        yield x, tempo


@scenario(
    family="flamenco_zapateado_tempo_lstm_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="the job is resumed at step 120 from a checkpoint that saved the model but not the "
    "optimizer: Adam restarts with empty moments and its first bias-corrected steps move every "
    "weight by a full lr, a one-off loss spike the run recovers from",
)
def h206_flamenco_resume_without_adam_state(ctx: Context) -> None:
    gen = seeded(20604)
    model = ZapateadoLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def before(step):
        if step == 120:
            opt.state.clear()

    _train(ctx, model, opt, _zapateado_batches(gen), 220, F.mse_loss, before=before)
    ls = ctx.losses
    base = _median(ls[100:120])
    peak = max(ls[120:130])
    ctx.check("the loss spikes over 4x its median within 10 steps of the resume", peak > 4 * base)
    ctx.check("the run recovers to under 2x that median", _mean(ls[-10:]) < 2 * base)
    ctx.check("the run is finite", _finite(ls))


# -- winch launch: a warm-up whose peak rate was typed 10x ----------------------------------------


@scenario(
    family="winch_launch_release_height_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=23,
    note="a linear warm-up to a peak lr of 1.5 (typed for 0.15), full-batch SGD: near step "
    "23 lr x sharpness passes 2, the loss blows up some 30 steps later",
)
def h206_winch_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(20605)
    data = _readings(gen, 256, 6, 2605)
    x, y = next(data)

    def full():
        while True:
            yield x, y

    model = Stack(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    edge = []

    def before(step):
        if step % 5 == 0 and step <= 100:
            lr = opt.param_groups[0]["lr"]
            edge.append((step, lr * _sharpness(model, F.mse_loss, x, y)))

    _train(ctx, model, opt, full(), 200, F.mse_loss, before=before, sched=sched, stop_on_blowup=1e8)
    ls = ctx.losses
    ctx.check("lr x sharpness starts under 2", edge[0][1] < 2)
    ctx.check("lr x sharpness passes 2 during the warm-up", max(e[1] for e in edge) > 2)
    ctx.check(
        "the loss blows up (non-finite or 100x its minimum)",
        _first_bad(ls) is not None or max(ls) > 100 * min(ls),
    )


# -- bespoke tailor: a warm-up lambda with integer division freezes the towers -------------------


class LapelTwoTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16))
        self.cloth = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        z = torch.cat([self.body(x[:, :6]), self.cloth(x[:, 6:])], 1)
        return self.head(torch.relu(z)).squeeze(-1)


@scenario(
    family="bespoke_tailor_lapel_roll_two_tower_mlp",
    optimizer="Adadelta",
    cause="update_ratio_out_of_range",
    where=("body", "cloth"),
    diverges=None,
    heldout=True,
    note="the towers' param group warms up with lambda s: min(1, s // 2000) (integer division "
    "for s / 2000): their lr factor is 0 for the whole run, only the head learns",
)
def h206_tailor_integer_division_warmup(ctx: Context) -> None:
    gen = seeded(20606)
    model = LapelTwoTower()
    towers = list(model.body.parameters()) + list(model.cloth.parameters())
    opt = torch.optim.Adadelta([{"params": towers}, {"params": model.head.parameters()}], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: min(1.0, s // 2000), lambda s: 1.0])
    start = [p.detach().clone() for p in towers]
    head0 = model.head.weight.detach().clone()
    _train(ctx, model, opt, _readings(gen, 64, 10, 2606), 150, F.mse_loss, sched=sched)
    moved = max(float((p.detach() - s).abs().max()) for p, s in zip(towers, start, strict=True))
    ctx.check("the tower weights did not move at all", moved == 0.0)
    ctx.check("the head did move", float((model.head.weight.detach() - head0).abs().max()) > 1e-3)
    ctx.check("the run is finite", _finite(ctx.losses))


# -- anemometer: a wind-vector normalisation with no epsilon --------------------------------------


class WindDirection(nn.Module):
    """(u, v) -> unit direction; written without an epsilon or clamp."""

    def forward(self, uv):
        return uv / uv.norm(dim=1, keepdim=True)


class AnemometerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.direction = WindDirection()
        self.fc1 = nn.Linear(7, 48)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        uv = x[:, :2]
        feats = torch.cat([self.direction(uv), uv.norm(dim=1, keepdim=True), x[:, 2:]], 1)
        return self.head(self.act1(self.fc1(feats))).squeeze(-1)


def _wind_batches(gen, batch=64):
    while True:
        uv = 3 * torch.randn(batch, 2, generator=gen)
        rest = torch.randn(batch, 4, generator=gen)
        speed = uv.norm(dim=1)
        y = 0.1 * speed**1.5 + 0.3 * torch.tanh(uv[:, 0] - uv[:, 1]) + 0.2 * rest[:, 0]
        yield torch.cat([uv, rest], 1), y


@scenario(
    family="anemometer_cup_wind_vector_mlp",
    optimizer="ASGD",
    cause="nonfinite",
    where=("direction",),
    diverges=70,
    heldout=True,
    onset=70,
    note="the wind direction is uv / |uv| with no epsilon; at step 70 a batch holds calm "
    "readings (u = v = 0, cups stalled): 0/0 gives NaN and the loss is NaN at step 70",
)
def h206_anemometer_calm_zero_division(ctx: Context) -> None:
    gen = seeded(20607)
    model = AnemometerNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)
    nan_dir = []

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[:3, :2] = 0.0
        return x, y

    def watch(step, out, x, y):
        if step == 70:
            nan_dir.append(bool(torch.isnan(model.direction(x[:, :2])).any()))

    _train(ctx, model, opt, _wind_batches(gen), 120, F.mse_loss, alter=alter, watch=watch)
    ls = ctx.losses
    ctx.check("the direction module produced NaN at step 70", bool(nan_dir) and nan_dir[0])
    ctx.check("the loss is first non-finite at step 70", _first_bad(ls) == 70)
    ctx.check("the loss was finite and falling before", _fell(ls[:70]))


# -- bicycle wheel truing: raw spoke tensions at an Adamax rate typed 10x -------------------------


def _spoke_batches(gen, batch=64):
    """Raw spoke tensions in kgf (about 100-130, not standardised); target: rim wobble in mm."""
    g = torch.Generator().manual_seed(2608)
    w = torch.randn(10, generator=g)
    while True:
        t = 115 + 8 * torch.randn(batch, 10, generator=gen)
        z = (t - 115) / 8
        yield t, torch.tanh(z @ w / 3) + 0.3 * torch.sin(z[:, 0] * z[:, 1])


@scenario(
    family="bicycle_wheel_truing_spoke_relu_mlp",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="raw spoke tensions (about 115 kgf, never standardised) into a ReLU MLP trained with "
    "Adamax at lr 2e-2 (typed for 2e-3): the first layer's units die one after another and "
    "the loss stalls well above what the task allows",
)
def h206_wheel_truing_raw_tension_dead_relu(ctx: Context) -> None:
    gen = seeded(20608)
    model = Stack(10, hidden=64)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.act1(model.fc1(x))))

    _train(ctx, model, opt, _spoke_batches(gen), 200, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("under half of fc1's units are dead at the start", dead[0] < 0.5)
    ctx.check("over 70% of fc1's units are dead at the end", _mean(dead[-10:]) > 0.7)
    ctx.check("the dead fraction rose by over 0.25", _mean(dead[-10:]) > dead[0] + 0.25)
    ctx.check(
        "the loss stalls: the last 50 steps no lower than 0.8x steps 100-150",
        _mean(ls[-50:]) > 0.8 * _mean(ls[100:150]),
    )
    ctx.check("the run is finite", _finite(ls))


# -- water ski: the label column left among the features ------------------------------------------


def _buoy_batches(gen, batch=64):
    """Pass readings (speed, rope length, edge angle...); target: buoy made (1) or missed."""
    g = torch.Generator().manual_seed(2609)
    w = torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        p = torch.sigmoid(x @ w / 2)
        y = (torch.rand(batch, generator=gen) < p).float()
        # the export kept the 'made' column: the label sits in the last feature
        yield torch.cat([x, y[:, None]], 1), y


@scenario(
    family="water_ski_slalom_buoy_bce_mlp",
    optimizer="Rprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the feature export kept the label column ('buoy made'): the data become separable and "
    "the head's logits grow without bound under BCE with Rprop's growing steps, over 20x",
)
def h206_water_ski_label_leak_logits(ctx: Context) -> None:
    gen = seeded(20609)
    model = Stack(13, hidden=32)
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    mags = []

    def watch(step, out, x, y):
        mags.append(float(out.detach().abs().mean()))

    _train(
        ctx, model, opt, _buoy_batches(gen), 200, F.binary_cross_entropy_with_logits, watch=watch
    )
    ctx.check(
        "the mean |logit| grows over 20x from step 20 to the end", _mean(mags[-10:]) > 20 * mags[20]
    )
    ctx.check("the run is finite", _finite(ctx.losses))


# -- kettlebell: the end-of-epoch batch is summed, not averaged ----------------------------------


@scenario(
    family="kettlebell_swing_power_huber_mlp",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="the end-of-epoch code path (step 100) computes the Huber loss with reduction='sum' "
    "instead of 'mean' over 128 rows: one gradient 128x the usual, SGD momentum",
)
def h206_kettlebell_sum_reduction_step(ctx: Context) -> None:
    gen = seeded(20610)
    model = Stack(8, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)

    def scale_loss(step, loss):
        return loss * 128 if step == 100 else loss

    _train(ctx, model, opt, _readings(gen, 128, 8, 2610), 180, F.huber_loss, scale_loss=scale_loss)
    g = ctx.grad_norms
    ctx.check(
        "the gradient at step 100 is over 30x the median before", g[100] > 30 * _median(g[80:100])
    )
    ctx.check("the run is finite", _finite(ctx.losses))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="alpaca_fleece_micron_gelu_mlp",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="an ordinary run: AdamW with weight decay, 10-step linear warm-up then cosine decay, "
    "gradient clipping at 1.0",
)
def h206_alpaca_fleece_cosine_clip(ctx: Context) -> None:
    gen = seeded(20611)
    model = Stack(9, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=10)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=190)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[10])
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 9, 2611, noise=0.1),
        200,
        F.mse_loss,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell and stayed finite", _fell(ctx.losses, ratio=0.5))


@scenario(
    family="cheerleading_stunt_grade_fp16_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="an ordinary run: fp16 autocast with a GradScaler, SGD with Nesterov momentum, "
    "OneCycleLR, accumulation over 2 micro-batches, label smoothing 0.1",
)
def h206_cheerleading_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(20612)
    model = Stack(16, hidden=64, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=150)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 32, 16, 5, 2612),
        150,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("the loss fell and stayed finite", _fell(ctx.losses, ratio=0.7))


class PaceNoteLM(nn.Module):
    def __init__(self, vocab=64, dim=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx):
        out, _ = self.gru(self.embed(idx))
        return self.head(out)


@scenario(
    family="rally_codriver_pace_note_tied_gru_lm",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="an ordinary run: a GRU language model with tied input/output embeddings, NAdam with "
    "two param groups (no decay on the embedding), ReduceLROnPlateau",
)
def h206_rally_pace_note_tied_gru(ctx: Context) -> None:
    gen = seeded(20613)
    model = PaceNoteLM()
    opt = torch.optim.NAdam(
        [
            {"params": model.embed.parameters(), "weight_decay": 0.0},
            {"params": model.gru.parameters(), "weight_decay": 1e-4},
        ],
        lr=5e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)

    def lm(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    _train(ctx, model, opt, text_batches(gen, batch=16, length=24, vocab=64), 150, lm, sched=sched)
    ctx.check("the head is tied to the embedding", model.head.weight is model.embed.weight)
    ctx.check("the loss fell and stayed finite", _fell(ctx.losses, ratio=0.8))
