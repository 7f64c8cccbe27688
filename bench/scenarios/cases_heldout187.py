"""Held-out set 187 (``h187_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a pipe-organ flue-voicing deep tanh MLP whose hand-written
Dense layer drops the 1/sqrt(fan_in) of its init, a cutler's edge-retention ReLU classifier with
an inverted warm-up factor, a real-tennis chase regressor taking torch.acos of a cosine that
rounds past 1, an ice-fishing auger torque regressor under a StepLR gamma typed 10 for 0.1, an
oyster-farm spat-growth regressor fed one batch labelled in micrometres, a tuning-fork 1-D conv
classifier whose unfreeze callback never fires (a float steps-per-epoch), a geomagnetic-storm
magnetometer conv net summing squared responses in float16, a steeplejack anchor-load regressor
whose loss normaliser restarts at its floor after a resume, a truffle-dog find classifier with a
cosine head's scale typed 3000 for 30, a windsock gust regressor with hand-written decoupled
weight decay of the wrong sign, and three controls (an ammonite-suture BatchNorm ResNet backbone
pre-trained then fine-tuned, a hang-glider vario fp16 regressor, an archery end-score Gaussian
NLL regressor with a tied reconstruction).

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
    alter=None,
    watch=None,
    after=None,
    loss_scale=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    stop_on_nan=True,
):
    """This file's loop. ``before(step)`` runs first (schedules, callbacks), ``alter(step, x, y)``
    changes a batch, ``watch(step, out, x, y)`` sees the forward pass, ``loss_scale(step)``
    multiplies the loss that is backpropagated (not the one logged), ``after(step)`` runs after
    the optimizer step. ``accumulate`` micro-batches per step; stops after logging a NaN loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        logged = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if loss_scale is not None:
                total = total * loss_scale(step)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            logged += float(loss.detach()) / accumulate
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
                if math.isfinite(logged):
                    sched.step(logged)
            else:
                sched.step()
        ctx.step(torch.tensor(logged))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if stop_on_nan and math.isnan(logged):
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.7 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=1.0):
    """Readings scattered around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


def _sharpness(model, loss_fn, x, y, iters=30) -> float:
    """Top Hessian eigenvalue of the loss on (x, y), by power iteration."""
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
    """fc1 -> act1 -> fc2 -> act2 -> head, activation modules."""

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


# -- pipe organ: a hand-written Dense layer whose init drops the 1/sqrt(fan_in) -------------------


class Dense(nn.Module):
    """y = x W^T + b; W drawn as randn * gain, where randn * gain / sqrt(fan_in) was meant."""

    def __init__(self, fan_in, fan_out, gain=5.0 / 3.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) * gain)
        self.bias = nn.Parameter(torch.zeros(fan_out))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class FlueVoicingNet(nn.Module):
    def __init__(self, d_in=10, width=48, depth=12):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(Dense(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="pipe_organ_flue_voicing_deep_tanh_mlp",
    optimizer="SGD(momentum)",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP predicting a flue pipe's speech (standardised attack time) from "
    "10 voicing measurements (cut-up, mouth width, flue width, foot-hole, wind pressure, ...), "
    "SGD momentum 0.9 at 1e-3, MSE. Its hand-written Dense layer draws the weight as "
    "torch.randn(out, in) * gain with the tanh gain 5/3, the / math.sqrt(fan_in) having been "
    "dropped: the weight std is 5/3 instead of 0.24, every tanh is deep in its chaotic, "
    "saturated phase, and at initialisation the backpropagated gradient grows by orders of "
    "magnitude from the top layer to layers.0 (about 7000x at init, every layer larger than "
    "the one above it). The gradient norm stays in the hundreds, layers.0's weights grow "
    "about 3x, and the loss stays near the data's variance (the same net with the "
    "1/sqrt(fan_in) gets to 0.15); finite.",
)
def h187_flue_voicing_init_without_fan_in(ctx: Context) -> None:
    gen = seeded(18701)
    model = FlueVoicingNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    w0 = float(model.layers[0].weight.detach().norm())
    with torch.no_grad():
        x, y = next(_readings(torch.Generator().manual_seed(3), 256, 10, seed=1))
    loss0 = F.mse_loss(model(x), y)
    init = [float(g.norm()) for g in torch.autograd.grad(loss0, [m.weight for m in model.layers])]
    ratio = []

    def after(step):
        top = float(model.layers[-1].weight.grad.norm())
        ratio.append(float(model.layers[0].weight.grad.norm()) / max(top, 1e-30))

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=1), 150, F.mse_loss, after=after)
    ctx.check(
        "at init the gradient of layers.0 is 1000x the top Dense layer's", init[0] > 1000 * init[-1]
    )
    ctx.check(
        "at init it grows at every layer going down (each at least 1.2x the one above)",
        all(a > 1.2 * b for a, b in zip(init[:-1], init[1:], strict=True)),
    )
    ctx.check("layers.0 gradient 100x the top layer's (median over the run)", _median(ratio) > 100)
    ctx.check(
        "layers.0 weight norm grew 2x in training",
        float(model.layers[0].weight.detach().norm()) > 2 * w0,
    )
    ctx.check(
        "loss over the last 20 steps still above 0.3 (variance 0.5)", _mean(ctx.losses[-20:]) > 0.3
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- cutler: a warm-up factor written warmup / (step + 1) for (step + 1) / warmup -----------------

CUTLER_WARMUP = 50


def _edge_tests(gen, batch, d_in=16, seed=2):
    """Sixteen standardised blade readings (steel hardness HRC, edge angle, grit of the last
    stone, carbide volume, ...); the label is whether the edge still cut the 60th card."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        score = x @ w / math.sqrt(d_in) + 0.9 * torch.cos(1.5 * x @ v / math.sqrt(d_in)) - 0.4
        y = (score + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield x, y


@scenario(
    family="cutler_edge_retention_relu_classifier",
    optimizer="ASGD",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) predicting whether a kitchen knife's edge still cuts "
    "the 60th test card from 16 standardised blade readings, ASGD at 0.5, BCE with logits, a "
    "LambdaLR warm-up over 50 steps written lambda s: warmup / (s + 1) where (s + 1) / warmup "
    "was meant: the rate starts 50x too high (25) and only falls to the base rate at step 50. "
    "The first steps throw the loss up and push nearly all of fc2's units negative on every "
    "input: their ReLUs die and never come back, and the loss stalls at about ln 2 (the same "
    "net with the warm-up the right way round gets under 0.3); finite.",
)
def h187_cutler_warmup_inverted(ctx: Context) -> None:
    gen = seeded(18702)
    model = Stack(16, hidden=64)
    opt = torch.optim.ASGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: CUTLER_WARMUP / (s + 1))
    probe = next(_edge_tests(torch.Generator().manual_seed(7), 512))[0]
    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe))
    lrs = []
    _train(
        ctx,
        model,
        opt,
        _edge_tests(gen, 64),
        200,
        F.binary_cross_entropy_with_logits,
        before=lambda s: lrs.append(opt.param_groups[0]["lr"]),
        sched=sched,
    )
    with torch.no_grad():
        dead = dead_fraction(model.features(probe))
    ctx.check("lr at step 0 is 50x the base rate", abs(lrs[0] - 50 * 0.5) < 1e-9)
    ctx.check("under 10% of fc2's ReLUs dead at init", dead0 < 0.1)
    ctx.check("90% of fc2's ReLUs dead on a held-out batch at the end", dead > 0.9)
    ctx.check("loss over the last 30 steps above 0.6 (ln 2 is 0.69)", _mean(ctx.losses[-30:]) > 0.6)
    ctx.check(
        "loss stalls: last 30 steps within 10% of steps 30-60",
        _mean(ctx.losses[-30:]) > 0.9 * _mean(ctx.losses[30:60]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- real tennis: torch.acos of a cosine that rounds past 1 ---------------------------------------


class ChaseAngle(nn.Module):
    """The angle between the ball's incoming and outgoing velocity at the bounce, from the
    tracker's two velocity vectors: acos(u.v / (|u| |v|)), with no clamp."""

    def forward(self, u, v):
        return _bounce_angle(u, v)


def _bounce_angle(u, v):
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    return torch.acos(cos)


class ChaseNet(nn.Module):
    def __init__(self, d_other=8, hidden=64):
        super().__init__()
        self.chase_angle = ChaseAngle()
        self.fc1 = nn.Linear(d_other + 2, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        a = self.chase_angle(x[:, 0:3], x[:, 3:6])
        h = torch.cat([torch.cos(a)[:, None], torch.sin(a)[:, None], x[:, 6:]], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


TENNIS_DEAD_ROLL = 80


def _bounces(gen, batch, seed=3):
    """Incoming and outgoing ball velocities (m/s) and 8 standardised readings (spin, wall,
    gallery, ...); the target is the chase (where the second bounce lands), standardised. At
    step 80 the tracker exports a rally of balls rolling dead along the floor: it lost the
    bounce and copied the incoming velocity into the outgoing one."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    step = 0
    while True:
        u = torch.randn(batch, 3, generator=gen) * 8.0
        v = torch.randn(batch, 3, generator=gen) * 6.0
        if step == TENNIS_DEAD_ROLL:
            v = u.clone()
        other = torch.randn(batch, 8, generator=gen)
        cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
        y = 0.8 * cos.clamp(-1, 1) + 0.5 * torch.tanh(other @ w / math.sqrt(8))
        step += 1
        yield torch.cat([u, v, other], -1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="real_tennis_chase_angle_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("chase_angle",),
    diverges=TENNIS_DEAD_ROLL,
    heldout=True,
    onset=TENNIS_DEAD_ROLL,
    note="A SiLU MLP (nn.SiLU modules) predicting where a real-tennis chase falls from the "
    "ball's incoming and outgoing velocity at the bounce and 8 standardised readings, Adam at "
    "3e-3, MSE. A `chase_angle` module computes the bounce angle as torch.acos(u.v / (|u| "
    "|v|)) with no clamp. At step 80 the tracker exports a rally of balls rolling dead along "
    "the floor with the outgoing velocity copied from the incoming one: the float32 cosine of "
    "a vector with itself rounds above 1.0 for some rows, acos returns NaN there, and the loss "
    "is NaN at step 80 (the NaN gradient then reaches every weight through Adam).",
)
def h187_real_tennis_acos_unclamped(ctx: Context) -> None:
    gen = seeded(18703)
    model = ChaseNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    nan_angles = []

    def watch(step, out, x, y):
        with torch.no_grad():
            nan_angles.append(int(torch.isnan(_bounce_angle(x[:, 0:3], x[:, 3:6])).sum()))

    _train(ctx, model, opt, _bounces(gen, 64), 160, F.mse_loss, watch=watch)
    at = TENNIS_DEAD_ROLL
    ctx.check("loss finite before step 80", _finite(ctx.losses[:at]))
    ctx.check("loss NaN first at step 80", _first_bad(ctx.losses) == at)
    ctx.check(
        "chase_angle gave NaN rows at step 80 only",
        nan_angles[at] > 0 and sum(nan_angles[:at]) == 0,
    )
    ctx.check("loss fell before the dead-roll batch", _fell(ctx.losses[:at]))


# -- ice fishing: StepLR gamma typed 10 for 0.1 ---------------------------------------------------

AUGER_STEP = 100


@scenario(
    family="ice_fishing_auger_torque_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=AUGER_STEP,
    note="A tanh MLP (nn.Tanh modules) predicting a hand ice-auger's peak torque from 12 "
    "standardised readings (ice thickness, air temperature, blade wear, snow cover, ...), plain "
    "SGD at 0.1, MSE, StepLR(step_size=100, gamma=10): the gamma was typed 10 for 0.1, so at "
    "step 100 the rate goes up to 1.0 instead of down to 0.01. The sharpness (top Hessian "
    "eigenvalue, about 5.7) measured at step 100 puts 0.1 well inside 2/sharpness and 1.0 "
    "well past it: from step 100 the loss climbs by orders of magnitude every step or two "
    "(1e20 by step 110) and is inf at 115 and NaN at 118.",
)
def h187_ice_auger_steplr_gamma_ten(ctx: Context) -> None:
    gen = seeded(18704)
    model = Stack(12, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=AUGER_STEP, gamma=10)
    probe = next(_readings(torch.Generator().manual_seed(9), 512, 12, seed=4))
    lam, lrs = [], []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step == AUGER_STEP:
            twin = Stack(12, hidden=64, act=nn.Tanh)  # a copy without the monitor's hooks
            twin.load_state_dict(model.state_dict())
            lam.append(_sharpness(twin, F.mse_loss, *probe))

    _train(
        ctx, model, opt, _readings(gen, 64, 12, seed=4), 160, F.mse_loss, before=before, sched=sched
    )
    at = AUGER_STEP
    ls = ctx.losses
    ctx.check("lr 10x up at step 100", abs(lrs[at] - 10 * lrs[at - 1]) < 1e-9)
    ctx.check("lr x sharpness under 2 before step 100", lrs[at - 1] * lam[0] < 2)
    ctx.check("lr x sharpness past 2 from step 100", lrs[at] * lam[0] > 2)
    ctx.check("loss fell before step 100", _fell(ls[:at]))
    ctx.check(
        "loss 100x its pre-onset level after step 100",
        max((v for v in ls[at:] if math.isfinite(v)), default=math.inf)
        > 100 * _mean(ls[at - 10 : at])
        or not _finite(ls[at:]),
    )


# -- oyster farm: one hatchery's batch of growth labels in micrometres ---------------------------

OYSTER_BAD_BATCH = 120


def _spat_logs(gen, batch, d_in=10, seed=5):
    """Ten standardised grow-out readings (water temperature, salinity, chlorophyll, stocking
    density, tidal exposure, ...); the target is weekly shell growth in millimetres (0.5-3)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = 1.6 + 0.7 * torch.tanh(x @ w / math.sqrt(d_in)) + 0.4 * torch.sin(x @ v / 2)
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="oyster_farm_spat_growth_regressor",
    optimizer="SGD(nesterov)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=OYSTER_BAD_BATCH,
    note="A ReLU MLP (nn.ReLU modules) predicting oyster spat's weekly shell growth in "
    "millimetres from 10 standardised grow-out readings, SGD Nesterov (momentum 0.9) at 1e-2, "
    "MSE, clip_grad_norm_ at 1.0. The batch at step 120 comes from a second hatchery whose "
    "export gives the growth in micrometres: its labels are 1000x (500-3000 instead of "
    "0.5-3). That one batch's loss is about 1e8x the usual and its gradient norm about 3e4x "
    "the usual; clipping bounds the step, and the loss is back at its level the next step; "
    "finite throughout.",
)
def h187_oyster_growth_in_micrometres(ctx: Context) -> None:
    gen = seeded(18705)
    model = Stack(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    top = []

    def alter(step, x, y):
        if step == OYSTER_BAD_BATCH:
            y = y * 1000.0
        top.append(float(y.abs().max()))
        return x, y

    _train(ctx, model, opt, _spat_logs(gen, 64), 220, F.mse_loss, alter=alter, clip=1.0)
    at = OYSTER_BAD_BATCH
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("labels 100x the usual at the bad batch", top[at] > 100 * _median(top[:at]))
    ctx.check(
        "gradient norm 100x the preceding median at the bad batch", gn[at] > 100 * _median(gn[:at])
    )
    ctx.check(
        "loss 1000x the preceding median at the bad batch",
        ls[at] > 1000 * _median(ls[at - 20 : at]),
    )
    ctx.check(
        "loss back under 2x the pre-onset level by the end",
        _mean(ls[-10:]) < 2 * _mean(ls[at - 10 : at]),
    )
    ctx.check("loss fell before the bad batch", _fell(ls[:at]))
    ctx.check("loss finite throughout", _finite(ls))


# -- tuning fork: an unfreeze callback comparing the step with a float steps-per-epoch -----------

FORK_PITCHES = (256.0, 288.0, 320.0, 341.3, 384.0, 426.7, 480.0, 512.0)


def _fork_recordings(n, seed, length=64, rate=2048.0):
    """n ringing tuning forks, 64 samples at 2048 Hz: a decaying sinusoid at one of 8 pitches
    (a slightly detuned fork, a random phase and decay, room noise)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(FORK_PITCHES), (n,), generator=g)
    f = torch.tensor(FORK_PITCHES)[y] * (1 + 0.01 * torch.randn(n, generator=g))
    t = torch.arange(length) / rate
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    decay = 20 + 30 * torch.rand(n, 1, generator=g)
    x = torch.exp(-decay * t) * torch.sin(2 * math.pi * f[:, None] * t + phase)
    x = x + 0.15 * torch.randn(n, length, generator=g)
    return x[:, None, :], y


def _epochs(gen, x, y, batch):
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


class ForkNet(nn.Module):
    def __init__(self, classes=8):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 9, padding=4)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    family="tuning_fork_pitch_conv1d_classifier",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("conv1", "conv2"),
    diverges=None,
    heldout=True,
    note="A 1-D conv net (two Conv1d + nn.ReLU, mean pool, a head) naming which of 8 tuning "
    "forks is ringing from 64 samples of its recording, Adamax with two param groups, "
    "cross-entropy. The recipe trains the head alone for one epoch (the conv group's lr set "
    "to 0, the head at 1e-2) and an unfreeze callback then sets the conv group to 1e-2; it "
    "fires on "
    "step == UNFREEZE_EPOCH * steps_per_epoch with steps_per_epoch = 1800 / 64 (true "
    "division, 28.125), which no integer step equals: conv1 and conv2 keep a learning rate of "
    "exactly 0 for the whole run and never move, while the head learns on their random "
    "features and the loss stays near ln 8 (with the callback firing it falls under 0.3); "
    "finite.",
)
def h187_tuning_fork_unfreeze_never_fires(ctx: Context) -> None:
    gen = seeded(18706)
    x_all, y_all = _fork_recordings(1800, seed=60)
    model = ForkNet()
    convs = [p for n, p in model.named_parameters() if n.startswith("conv")]
    head = list(model.head.parameters())
    opt = torch.optim.Adamax([{"params": convs, "lr": 0.0}, {"params": head, "lr": 1e-2}], lr=1e-2)
    steps_per_epoch = len(y_all) / 64
    unfreeze_epoch = 1
    conv0, head0 = _snapshot(convs), _snapshot(head)
    conv_lr = []

    def before(step):
        if step == unfreeze_epoch * steps_per_epoch:
            opt.param_groups[0]["lr"] = 1e-2
        conv_lr.append(opt.param_groups[0]["lr"])

    _train(
        ctx,
        model,
        opt,
        _epochs(gen, x_all, y_all, 64),
        160,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ctx.check("conv group's lr still exactly 0 at the last step", conv_lr[-1] == 0.0)
    ctx.check("conv1 and conv2 never moved", _moved(convs, conv0) == 0.0)
    ctx.check("head moved", _moved(head, head0) > 1e-2)
    ctx.check("loss over the last 20 steps above 1.8 (ln 8 is 2.08)", _mean(ctx.losses[-20:]) > 1.8)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- geomagnetic storm: squared conv responses summed in float16 ---------------------------------

STORM_SEASON = 90


class Energy(nn.Module):
    """Sum over the hour of the squared filter responses (in the dtype it is given)."""

    def forward(self, h):
        return (h * h).sum(-1)


class MagnetometerNet(nn.Module):
    def __init__(self, channels=8, hidden=32):
        super().__init__()
        self.response = nn.Conv1d(3, channels, 5, padding=2)
        self.energy = Energy()
        self.fc1 = nn.Linear(channels, hidden)
        self.act1 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        e = self.energy(self.response(x))
        return self.head(self.act1(self.fc1(torch.log1p(e)))).squeeze(-1)


def _magnetograms(gen, batch, length=60):
    """An hour of a three-component magnetometer (H, D, Z variations in nT, one per minute):
    a random walk, and in half the hours a sudden commencement, a step in H of amplitude A
    recovering slowly; the label is whether the hour holds one. Before step 90 the feed is
    the quiet season (A 10-40 nT); from step 90 it is the storm season (A 150-400 nT)."""
    step = 0
    t = torch.arange(length).float()
    while True:
        x = 1.0 * torch.randn(batch, 3, length, generator=gen).cumsum(-1)
        y = (torch.rand(batch, generator=gen) < 0.5).float()
        lo, hi = (150.0, 400.0) if step >= STORM_SEASON else (10.0, 40.0)
        amp = lo + (hi - lo) * torch.rand(batch, generator=gen)
        t0 = torch.randint(5, length - 20, (batch, 1), generator=gen).float()
        jump = (t >= t0).float() * torch.exp(-(t - t0).clamp(min=0) / 40.0)
        x[:, 0] += (y * amp)[:, None] * jump
        step += 1
        yield x, y


@scenario(
    family="geomagnetic_storm_magnetometer_fp16_conv1d",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("energy",),
    diverges=STORM_SEASON,
    heldout=True,
    onset=STORM_SEASON,
    note="A magnetometer net flagging sudden storm commencements in an hour of H, D, Z "
    "variations (nT): a Conv1d filter bank (`response`), an `energy` module summing the "
    "squared responses over the hour, log1p, a GELU layer and a head; AdamW at 2e-3, BCE with "
    "logits, fp16 autocast with a torch.amp.GradScaler. The conv's output is float16 under "
    "autocast and so is the energy: over the quiet season (commencements of 10-40 nT) it "
    "stays under 65504, but from step 90 the feed is the storm season (150-400 nT) and the "
    "sum of squares passes 65504 and is inf: every loss from then on is non-finite, and the "
    "scaler skips each step and keeps halving its scale.",
)
def h187_geomagnetic_fp16_energy_overflow(ctx: Context) -> None:
    gen = seeded(18707)
    model = MagnetometerNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    peak = []

    def watch(step, out, x, y):
        with torch.no_grad():
            r = F.conv1d(x, model.response.weight, model.response.bias, padding=2)
            peak.append(float((r * r).sum(-1).max()))

    _train(
        ctx,
        model,
        opt,
        _magnetograms(gen, 64),
        130,
        F.binary_cross_entropy_with_logits,
        scaler=scaler,
        watch=watch,
        stop_on_nan=False,
    )
    at = STORM_SEASON
    ctx.check("loss finite before the storm season", _finite(ctx.losses[:at]))
    ctx.check("loss non-finite first at step 90", _first_bad(ctx.losses) == at)
    ctx.check("loss non-finite at every step from 90", not any(map(math.isfinite, ctx.losses[at:])))
    ctx.check(
        "float32 energy past float16's max from step 90 only",
        min(peak[at:]) > 65504 > max(peak[:at]),
    )
    ctx.check(
        "scaler's scale fell 1000x after the onset", ctx.scales[-1] < ctx.scales[at - 1] / 1000
    )
    ctx.check("loss fell before the onset", _fell(ctx.losses[:at]))


# -- steeplejack: a loss normaliser buffer left out of the checkpoint -----------------------------

STEEPLE_RESUME = 60


class VarianceNormaliser(nn.Module):
    """Divides the MSE by a running estimate of the target variance (a normalised MSE), floored
    at 1e-4. The estimate is primed from a few batches before training and then updated after
    each loss (taken from the batch when it is 0). It is a non-persistent buffer: state_dict
    leaves it out, so a resume restarts it at 0."""

    def __init__(self, momentum=0.99, floor=1e-4):
        super().__init__()
        self.register_buffer("var_ema", torch.zeros(()), persistent=False)
        self.momentum = momentum
        self.floor = floor

    def forward(self, pred, y):
        loss = F.mse_loss(pred, y) / self.var_ema.clamp(min=self.floor)
        with torch.no_grad():
            if float(self.var_ema) == 0.0:
                self.var_ema.copy_(y.var())
            else:
                self.var_ema.mul_(self.momentum).add_((1 - self.momentum) * y.var())
        return loss


class AnchorNet(nn.Module):
    def __init__(self, d_in=14, hidden=64):
        super().__init__()
        self.net = Stack(d_in, hidden=hidden, act=nn.SiLU)
        self.normaliser = VarianceNormaliser()

    def forward(self, x):
        return self.net(x)


def _anchor_pulls(gen, batch, d_in=14, seed=6):
    """Fourteen standardised readings of a resin anchor (embedment depth, masonry type, cure
    time, hole diameter, temperature, ...); the target is its pull-out load in kN above the
    rated load."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = 1.5 * torch.tanh(x @ w / math.sqrt(d_in)) + 0.8 * torch.sin(x @ v / 2)
        yield x, y + 0.1 * torch.randn(batch, generator=gen)


@scenario(
    family="steeplejack_anchor_pullout_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=STEEPLE_RESUME,
    note="A SiLU MLP (nn.SiLU modules) predicting a steeplejack's resin anchor pull-out load "
    "above its rating (kN) from 14 standardised readings, Adam at 2e-3 (betas 0.9, 0.999). The loss is a "
    "normalised MSE: the MSE divided by a running estimate of the target variance, kept in a "
    "`normaliser` submodule as a non-persistent buffer, so the checkpoint leaves it out. "
    "The fresh run primes the estimate from 10 batches; the resume path skips the priming (it "
    "expects the checkpoint to hold it), so after resuming at step 60 the estimate is 0 and "
    "that step's loss is divided by the 1e-4 floor: one gradient about 1e4x the usual (the "
    "estimate then takes the batch's variance and the next steps are normal). Adam's second moment takes the "
    "burst in and keeps it: the median per-weight update is over 30x smaller than before the "
    "resume for the rest of the run, the loss, thrown up by the burst, makes no further "
    "progress; finite.",
)
def h187_steeplejack_normaliser_not_checkpointed(ctx: Context) -> None:
    gen = seeded(18708)
    model = AnchorNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    moves = []
    prev = [torch.cat([p.detach().flatten() for p in model.parameters()])]
    batches = _anchor_pulls(gen, 64)
    model.normaliser.var_ema.copy_(torch.cat([next(batches)[1] for _ in range(10)]).var())

    def before(step):
        if step == STEEPLE_RESUME:
            model.normaliser.var_ema.zero_()  # what the resume leaves in the buffer

    def after(step):
        now = torch.cat([p.detach().flatten() for p in model.parameters()])
        moves.append(float((now - prev[0]).abs().median()))
        prev[0] = now

    _train(
        ctx,
        model,
        opt,
        batches,
        260,
        lambda out, y: model.normaliser(out, y),
        before=before,
        after=after,
    )
    at = STEEPLE_RESUME
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient 1000x the preceding median at the resume step", gn[at] > 1000 * _median(gn[:at])
    )
    ctx.check(
        "gradient back under 10x the preceding median the step after",
        gn[at + 1] < 10 * _median(gn[:at]),
    )
    ctx.check(
        "median per-weight update 30x smaller from 50 steps after the resume than before it",
        _median(moves[at + 50 :]) < _median(moves[at - 30 : at]) / 30,
    )
    ctx.check("loss fell before the resume", _mean(ls[at - 10 : at]) < 0.8 * _mean(ls[:10]))
    ctx.check(
        "no progress after: the last 50 steps' loss not 10% under the 20 before the resume",
        _mean(ls[-50:]) > 0.9 * _mean(ls[at - 20 : at]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- truffle dog: a cosine head's scale typed 3000 for 30 ----------------------------------------


class CosineHead(nn.Module):
    """logits = scale * cos(feature, class weight)."""

    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class TruffleNet(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=6, scale=30.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="truffle_dog_find_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (nn.GELU modules) with a cosine-similarity head naming which of 6 truffle "
    "species a dog has found from 12 standardised readings (the dog's indication time, soil "
    "pH, depth, host tree, season, ...), NAdam at 2e-3, cross-entropy. The head multiplies "
    "the cosines by a scale the config gives as 3000 (typed for 30): the logits span "
    "thousands, the float32 softmax rounds the top class to exactly 1 and the others to "
    "exactly 0 for nearly every row from the first steps, and every misclassified row costs "
    "hundreds of nats; finite.",
)
def h187_truffle_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(18709)
    model = TruffleNet(scale=3000.0)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    frac, top = [], []

    def watch(step, out, x, y):
        o = out.detach().float()
        frac.append(collapsed_fraction(o, y))
        top.append(float((torch.softmax(o, -1).max(-1).values == 1.0).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 6, seed=7, noise=1.2),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    with torch.no_grad():
        x, y = next(_kinds(torch.Generator().manual_seed(5), 512, 12, 6, seed=7, noise=1.2))
        logits = model(x)
        wrong = logits.argmax(-1) != y
        wrong_loss = float(F.cross_entropy(logits[wrong], y[wrong])) if wrong.any() else 0.0
    ctx.check("90% of rows' top probability exactly 1.0 over the run", _mean(top) > 0.9)
    ctx.check(
        "60% of rows' target probability exactly 1.0 over the last 20 steps",
        _mean(frac[-20:]) > 0.6,
    )
    ctx.check("a misclassified held-out row costs above 20 nats at the end", wrong_loss > 20)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- windsock: hand-written decoupled weight decay with the sign flipped --------------------------


@scenario(
    family="windsock_gust_speed_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) predicting an airfield's peak gust speed over the next "
    "ten minutes from 8 standardised readings (windsock angle, mean wind, pressure tendency, "
    "...), RMSprop at 1e-3, MSE, with decoupled weight decay written by hand after each step "
    "as p.add_(p, alpha=wd) where alpha=-wd was meant (wd 5e-3): every step multiplies every "
    "weight by 1.005 instead of 0.995. The loss falls at first, then the weights outgrow what "
    "the gradient can pull back: from about step 100 the loss climbs slowly and steadily, "
    "about 8x by step 300, without blowing up.",
)
def h187_windsock_decay_sign_flipped(ctx: Context) -> None:
    gen = seeded(18710)
    model = Stack(8, hidden=64)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    wd = 5e-3
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=wd)
            norms.append(float(torch.cat([p.flatten() for p in model.parameters()]).norm()))

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=8), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _mean(ls[max(0, i - 5) : i + 5]))
    ctx.check("weight norm grew 2x over the run", norms[-1] > 2 * norms[0])
    ctx.check("loss fell first (its minimum not in the first 20 steps)", low > 20)
    ctx.check(
        "last 20 steps' loss 3x the lowest 10-step mean",
        _mean(ls[-20:]) > 3 * _mean(ls[max(0, low - 5) : low + 5]),
    )
    ctx.check(
        "a steady climb: each of the last four 25-step means above the one before",
        all(
            _mean(ls[-100 + 25 * i : -75 + 25 * i or None])
            > _mean(ls[-125 + 25 * i : -100 + 25 * i])
            for i in range(4)
        ),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


class ResBlock1d(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU."""

    def __init__(self, ch):
        super().__init__()
        self.conv1 = nn.Conv1d(ch, ch, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(ch)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv1d(ch, ch, 5, padding=2, bias=False)
        self.bn2 = nn.BatchNorm1d(ch)

    def forward(self, x):
        return self.act(x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class SutureResNet(nn.Module):
    def __init__(self, classes, ch=16, blocks=3):
        super().__init__()
        self.stem = nn.Conv1d(1, ch, 7, padding=3, bias=False)
        self.bn = nn.BatchNorm1d(ch)
        self.act = nn.ReLU()
        self.blocks = nn.Sequential(*(ResBlock1d(ch) for _ in range(blocks)))
        self.head = nn.Linear(ch, classes)

    def features(self, x):
        return self.blocks(self.act(self.bn(self.stem(x)))).mean(-1)

    def forward(self, x):
        return self.head(self.features(x))


def _sutures(gen, batch, classes, seed, length=48):
    """A suture line traced along an ammonite's whorl (48 heights): saddles and lobes, a mix
    of three harmonics whose weights and frequencies depend on the genus, plus a random
    phase, a size factor and tracing noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 1.0 + 5.0 * torch.rand(classes, 3, generator=g)
    weights = torch.rand(classes, 3, generator=g) + 0.2
    t = torch.linspace(0, 2 * math.pi, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, 1, generator=gen)
        waves = torch.sin(freqs[y][..., None] * t + phase)
        x = (weights[y][..., None] * waves).sum(1)
        x = x * (0.7 + 0.6 * torch.rand(batch, 1, generator=gen))
        yield (x + 0.3 * torch.randn(batch, length, generator=gen))[:, None, :], y


@scenario(
    family="ammonite_suture_bn_resnet1d",
    optimizer="SGD(nesterov)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A 1-D ResNet (a conv stem with BatchNorm, three residual blocks of conv-BN-ReLU-"
    "conv-BN plus the identity, mean pool, a head) reading the suture line of an ammonite. "
    "It is first pre-trained in the scenario on an older collection's 8 genera (Adam, 80 "
    "steps); the head is then replaced for a new site's 5 genera and the whole net fine-tuned "
    "with SGD Nesterov (momentum 0.9) in two param groups, the backbone at 5e-3 and the new "
    "head at 5e-2, cosine annealing, label smoothing 0.1, cross-entropy. An ordinary "
    "fine-tune: the loss falls and stays finite.",
)
def h187_ammonite_resnet_finetune(ctx: Context) -> None:
    gen = seeded(18711)
    model = SutureResNet(classes=8)
    pre = torch.optim.Adam(model.parameters(), lr=3e-3)
    old = _sutures(gen, 64, 8, seed=110)
    for _ in range(80):
        x, y = next(old)
        loss = F.cross_entropy(model(x), y)
        pre.zero_grad()
        loss.backward()
        pre.step()
    model.head = nn.Linear(16, 5)
    backbone = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.SGD(
        [{"params": backbone, "lr": 5e-3}, {"params": model.head.parameters(), "lr": 5e-2}],
        lr=5e-2,
        momentum=0.9,
        nesterov=True,
    )
    steps = 150
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    _train(
        ctx,
        model,
        opt,
        _sutures(gen, 64, 5, seed=111),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    model.eval()
    with torch.no_grad():
        x, y = next(_sutures(torch.Generator().manual_seed(4), 512, 5, seed=111))
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("loss fell by 40%", _fell(ctx.losses, ratio=0.6))
    ctx.check("held-out accuracy above 60% (chance 20%)", acc > 0.6)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="hang_glider_vario_climb_fp16_mlp",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) predicting a hang glider's climb rate in a thermal from "
    "12 standardised vario, GPS and weather readings, RAdam at 3e-3, Huber loss (delta 1), "
    "fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, "
    "clip_grad_norm_ at 1.0 after unscaling, ReduceLROnPlateau; the labels carry "
    "heavy-tailed (Student-t) noise from gusty thermals. An ordinary run: the loss falls and "
    "stays finite.",
)
def h187_hang_glider_fp16_control(ctx: Context) -> None:
    gen = seeded(18712)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    student = torch.distributions.StudentT(3.0)
    base = _readings(gen, 32, 12, seed=12, noise=0.0)

    def gusty():
        while True:
            x, y = next(base)
            yield x, y + 0.1 * student.sample((len(y),))

    _train(
        ctx,
        model,
        opt,
        gusty(),
        150,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        scaler=scaler,
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("scaler's scale never fell below 1", min(ctx.scales) >= 1.0)


class ArcheryNet(nn.Module):
    """A tanh encoder, a Gaussian head (mean and variance) and a reconstruction of the
    readings through the encoder's transposed weight (tied)."""

    def __init__(self, d_in=12, hidden=32):
        super().__init__()
        self.enc = nn.Linear(d_in, hidden)
        self.act = nn.Tanh()
        self.fc = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act(self.enc(x))
        z = self.act2(self.fc(h))
        recon = F.linear(h, self.enc.weight.t())
        return self.mean(z).squeeze(-1), self.log_var(z).squeeze(-1).exp(), recon, x


def _archery_loss(out, y):
    mean, var, recon, x = out
    return F.gaussian_nll_loss(mean, y, var) + 0.1 * F.mse_loss(recon, x)


def _ends(gen, batch, d_in=12, seed=13):
    """Twelve standardised readings of an archer's end (draw length, anchor drift, wind,
    release time, heart rate, ...); the target is the end's score deviation, its noise
    depending on the wind."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        sd = 0.1 + 0.3 * torch.sigmoid(2 * x[:, 0])
        y = torch.tanh(x @ w / math.sqrt(d_in)) + sd * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="archery_end_score_gaussian_nll_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh net predicting the mean and variance of an archery end's score deviation from "
    "12 standardised readings (Gaussian NLL, the variance depending on the wind), with an "
    "auxiliary reconstruction of the readings through the encoder's transposed weight (tied "
    "weights, weight 0.1), Adadelta with OneCycleLR (max_lr 1.0, no momentum cycling). An "
    "ordinary run: the loss falls and stays finite.",
)
def h187_archery_nll_control(ctx: Context) -> None:
    gen = seeded(18713)
    model = ArcheryNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1.0, total_steps=steps, cycle_momentum=False
    )
    _train(ctx, model, opt, _ends(gen, 64), steps, _archery_loss, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell by 0.5 nats", _mean(ls[-20:]) < _mean(ls[:10]) - 0.5)
    ctx.check("loss finite throughout", _finite(ls))
