"""Held-out set 210 (``h210_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a bagpipe drone-reed pitch tanh regressor whose warm-up
lambda lost its cap, a glassblowing gather-cooling ReLU RNN whose identity init was scaled 1.12,
a sculling oar-catch force regressor whose static loss scale was not undone at one step, a
queen-bee cell grader multiplying its logits by a distillation temperature's inverse, a river
ford wading-speed regressor taking the square root of an unclamped depth, a farrier forge-heat
regressor whose cached targets are recalibrated in place at every draw, an epee touch-timing
two-tower MLP whose blade tower's rate was typed 3e-8, a foghorn audible-range regressor fed one
batch with -9999 sentinels, a raku smoke-reduction ReLU MLP at an Adamax rate typed 1.0, a
nymph-hatch multilabel BCE net with targets smoothed above 1, and three controls (a semaphore
letter-stream GRU with tied embeddings and label smoothing, a cello endpin resonance 1-D CNN
with OneCycleLR, a mud-pot eruption Gaussian-NLL net in fp16).

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

ONSET_FORD = 11  # the step the first NaN appears (measured)


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


# -- bagpipe: a warm-up lambda that lost its min(1, ...) cap ---------------------------------------


@scenario(
    family="bagpipe_drone_reed_pitch_relu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=10,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting a bagpipe drone reed's pitch offset "
    "(standardised cents) from 10 standardised readings (reed length, bridle position, bag "
    "pressure, humidity, ...), plain SGD with a peak rate of 0.05, MSE, and a LambdaLR warm-up "
    "written `lambda s: (s + 1) / 10` where the recipe has `min(1.0, (s + 1) / 10)`: after "
    "step 10 the rate keeps climbing linearly instead of holding at the peak, lr x sharpness "
    "goes from below 1 to past 2, the stability limit, and the loss blows up.",
)
def h210_bagpipe_uncapped_warmup(ctx: Context) -> None:
    gen = seeded(21001)
    model = Stack(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 10)
    probe = next(_readings(torch.Generator().manual_seed(61), 256, 10, seed=11))
    prod = {}

    def before(step):
        if step % 10 == 9:
            lr = opt.param_groups[0]["lr"]
            prod[step] = lr * _sharpness(model, F.mse_loss, *probe)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=11),
        250,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("lr x sharpness below 1 at step 9", prod[9] < 1)
    ctx.check("lr x sharpness past 2 later", max(v for v in prod.values() if math.isfinite(v)) > 2)
    ctx.check("loss fell over the first 40 steps", _mean(ls[30:40]) < 0.7 * _mean(ls[:5]))
    late = [v if math.isfinite(v) else 1e30 for v in ls]
    ctx.check("loss past 20x its step 30-40 level later", max(late) > 20 * _mean(ls[30:40]))


# -- glassblowing: an identity-initialised ReLU RNN scaled 1.3 -------------------------------------


class GatherRNN(nn.Module):
    """A hand-written Elman cell with ReLU (w_ih, w_hh) read over time, and a head."""

    def __init__(self, d_in=4, hidden=48):
        super().__init__()
        self.w_ih = nn.Linear(d_in, hidden)
        self.w_hh = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        self.states: list[float] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.w_hh.in_features)
        norms = []
        for t in range(x.shape[1]):
            h = F.relu(self.w_ih(x[:, t]) + self.w_hh(h))
            norms.append(float(h.detach().norm(dim=-1).mean()))
        self.states = norms
        return self.head(h).squeeze(-1)


def _gathers(gen, batch, steps=24):
    """Glass gather surface-temperature readings over time (4 channels) and the standardised
    time until the gather is too stiff to shape."""
    while True:
        rate = 0.5 + torch.rand(batch, 1, generator=gen)
        t = torch.linspace(0, 1, steps)[None, :]
        temp = torch.exp(-rate * t * 2)
        x = torch.stack(
            [temp, temp * rate, t.expand_as(temp), 0.1 * torch.randn(batch, steps, generator=gen)],
            -1,
        )
        yield x, (1.0 / rate).squeeze(-1) - 1.0


@scenario(
    family="glassblowing_gather_cooling_relu_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("w_hh",),
    diverges=1,
    heldout=True,
    note="A hand-written ReLU Elman RNN (w_ih, w_hh, head) reading a glass gather's surface "
    "temperature over 24 time steps and predicting its working time, plain SGD at 1e-3, MSE. "
    "The IRNN recipe initialises w_hh to the identity; the port wrote `eye_(w); w.mul_(1.12)` "
    "(a gain meant for another layer): the hidden state grows about 1.12x per time step, the "
    "gradient through time grows the same way back (norm 6e4 at step 0), the loss is inf at "
    "step 1 and NaN after.",
)
def h210_glassblowing_irnn_gain(ctx: Context) -> None:
    gen = seeded(21002)
    model = GatherRNN()
    with torch.no_grad():
        nn.init.eye_(model.w_hh.weight)
        model.w_hh.weight.mul_(1.12)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    first = {}

    def watch(step, out, x, y):
        if step == 0:
            first["states"] = list(model.states)

    _train(ctx, model, opt, _gathers(gen, 32), 80, F.mse_loss, watch=watch)
    s = first["states"]
    ctx.check("hidden state 10x larger at the last time step at step 0", s[-1] > 10 * s[0])
    gn = [v if math.isfinite(v) else 1e30 for v in ctx.grad_norms]
    ctx.check("gradient norm above 1e3 at some step", max(gn) > 1e3)
    late = [v if math.isfinite(v) else 1e30 for v in ctx.losses]
    ctx.check("loss later 100x its step-0 level or NaN", max(late) > 100 * ctx.losses[0])


# -- sculling: a static loss scale left on for one step ---------------------------------------------


@scenario(
    family="sculling_oar_catch_force_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting a sculler's peak force at the catch "
    "(standardised) from 12 standardised readings (oar angle, slide speed, gate force, ...), "
    "SGD with Nesterov momentum at 0.01, Huber loss. A legacy fp16 recipe multiplies the loss "
    "by a static scale of 128 and divides the gradients back before the step; on the step "
    "after a checkpoint save (step 120) the divide is skipped: one gradient 128x the usual, "
    "not from the data; the run takes one big step and recovers.",
)
def h210_sculling_static_scale_left_on(ctx: Context) -> None:
    gen = seeded(21003)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    scale = 128.0

    ctx.attach(model, opt)
    batches = _readings(gen, 64, 12, seed=13)
    for step in range(250):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y)
        (loss * scale).backward()
        if step != 120:
            for p in model.parameters():
                p.grad.div_(scale)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    gn, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient at step 120 is 50x the median before", gn[120] > 50 * _median(gn[90:120]))
    ctx.check(
        "no other gradient above 10x that median",
        max(gn[:120] + gn[121:]) < 10 * _median(gn[90:120]),
    )
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check(
        "loss back below 2x its pre-onset level by the end",
        _mean(ls[-10:]) < 2 * _mean(ls[110:120]),
    )


# -- queen bee: logits multiplied by a distillation temperature's inverse ---------------------------


class CellGrader(nn.Module):
    def __init__(self, d_in=14, hidden=48, classes=5, inv_temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.inv_temperature = inv_temperature

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))) * self.inv_temperature


@scenario(
    family="queen_bee_cell_grade_gelu_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) grading queen-bee cells (5 grades) from 14 standardised "
    "readings (cell length, wax colour, larva age, ...), RMSprop at 1e-3, cross-entropy. The "
    "classifier shares its config with a distillation run and multiplies its logits by "
    "`1 / temperature` with `temperature: 0.005`: the logits are 200x, the float32 softmax "
    "rounds the target probability to exactly 1 on most rows within a few dozen steps and "
    "those rows stop giving any gradient; finite.",
)
def h210_queen_bee_inverse_temperature(ctx: Context) -> None:
    gen = seeded(21004)
    model = CellGrader(inv_temperature=1 / 0.005)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    frac = []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 5, seed=14, noise=0.3),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 20% of rows saturated at step 0", frac[0] < 0.2)
    ctx.check("over 50% of rows saturated over the last 10 steps", _mean(frac[-10:]) > 0.5)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- river ford: the square root of an unclamped depth ----------------------------------------------


class Celerity(nn.Module):
    """Shallow-water wave speed sqrt(g h) of a predicted depth; the recipe has softplus on h."""

    def forward(self, h):
        return torch.sqrt(9.81 * h)


class FordNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.depth = nn.Linear(hidden, 1)
        self.celerity = Celerity()
        with torch.no_grad():
            self.depth.bias.fill_(1.0)

    def forward(self, x):
        h = self.depth(F.relu(self.fc2(F.relu(self.fc1(x))))).squeeze(-1)
        return self.celerity(h)


def _fords(gen, batch, seed):
    """Eight standardised readings of a river ford and the wave speed at its depth (some fords
    only ankle-deep: depths from 0.02 to 1.5 m)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        depth = 0.02 + 1.48 * torch.sigmoid(2 * x @ w / math.sqrt(8))
        yield x, torch.sqrt(9.81 * depth)


@scenario(
    family="river_ford_wading_celerity_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("celerity",),
    diverges=ONSET_FORD,
    onset=ONSET_FORD,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, depth) predicting a river ford's depth from 8 standardised "
    "readings, and a `celerity` module turning the depth into the shallow-water wave speed "
    "sqrt(g h), trained on the measured wave speed with Adam at 2e-3, MSE. The recipe puts a "
    "softplus on the depth; the port dropped it: when training pushes the depth of a shallow "
    "ford below zero, the square root of a negative gives NaN, the loss is NaN from step 11.",
)
def h210_river_ford_sqrt_negative_depth(ctx: Context) -> None:
    gen = seeded(21005)
    model = FordNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    _train(ctx, model, opt, _fords(gen, 64, seed=15), 200, F.mse_loss)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check(f"loss NaN first at step {ONSET_FORD}", bad == ONSET_FORD)
    ctx.check("loss finite and falling before it", _fell(ls[:ONSET_FORD], k=5, ratio=0.8))


# -- farrier: cached targets recalibrated in place at every draw ------------------------------------


def _forge(gen, batch, seed, drift):
    """A cached set of 2048 forge readings (10 standardised) and the shoe's standardised
    working heat; a calibration gain meant to be applied once is applied to the cached
    targets in place each time a batch is drawn."""
    g = torch.Generator().manual_seed(seed)
    x_all = torch.randn(2048, 10, generator=g)
    w = torch.randn(10, generator=g)
    y_all = torch.tanh(x_all @ w / math.sqrt(10)) + 0.5
    while True:
        idx = torch.randint(0, 2048, (batch,), generator=gen)
        y_all.mul_(drift)
        yield x_all[idx], y_all[idx].clone()


@scenario(
    family="farrier_forge_heat_drift_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting a horseshoe's working heat (standardised) "
    "from 10 standardised forge readings, Adam at 1e-3, MSE. The loader applies a "
    "thermocouple calibration gain of 1.01 to the cached targets with an in-place `mul_` "
    "every time it draws a batch instead of once: the target drifts up 1% a step, the model "
    "falls further behind, and after the loss first falls it climbs slowly and steadily with "
    "no spike; finite.",
)
def h210_farrier_inplace_calibration(ctx: Context) -> None:
    gen = seeded(21006)
    model = Stack(10, hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(ctx, model, opt, _forge(gen, 64, seed=16, drift=1.01), 250, F.mse_loss)
    ls = ctx.losses
    low = min(range(5, len(ls) - 5), key=lambda i: _mean(ls[i - 5 : i + 5]))
    ctx.check("loss fell first (minimum before step 120)", low < 120)
    ctx.check("loss at the end 3x its minimum", _mean(ls[-10:]) > 3 * _mean(ls[low - 5 : low + 5]))
    ctx.check(
        "climb is gradual (no 10-step mean above 2x the one before)",
        all(
            _mean(ls[i + 10 : i + 20]) < 2 * _mean(ls[i : i + 10])
            for i in range(low, len(ls) - 19, 10)
        ),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- epee: the blade tower's learning rate typed 3e-8 -----------------------------------------------


class TouchNet(nn.Module):
    """Two towers (blade sensors, footwork) concatenated into a head."""

    def __init__(self):
        super().__init__()
        self.blade = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh())
        self.footwork = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh())
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        z = torch.cat([self.blade(x[:, :8]), self.footwork(x[:, 8:])], -1)
        return self.head(z).squeeze(-1)


@scenario(
    family="epee_touch_timing_two_tower_mlp",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("blade", "blade.0", "blade.2"),
    diverges=None,
    heldout=True,
    note="A two-tower tanh MLP (blade: 8 blade-sensor readings; footwork: 6 footwork "
    "readings; head) predicting an epee fencer's touch timing (standardised), NAdam with two "
    "param groups, MSE. The blade group's rate was typed `3e-8` for `3e-4` (the footwork "
    "group and head at 3e-3): the blade tower's updates are about 1e-7 of its weights, it "
    "stays at its init while the rest trains; the loss falls only as far as the footwork "
    "tower alone allows; finite.",
)
def h210_epee_blade_group_lr_typo(ctx: Context) -> None:
    gen = seeded(21007)
    model = TouchNet()
    opt = torch.optim.NAdam(
        [
            {"params": model.blade.parameters(), "lr": 3e-8},
            {"params": list(model.footwork.parameters()) + list(model.head.parameters())},
        ],
        lr=3e-3,
    )
    blade0 = _snapshot(model.blade.parameters())
    foot0 = _snapshot(model.footwork.parameters())
    _train(ctx, model, opt, _readings(gen, 64, 14, seed=17), 200, F.mse_loss)
    ctx.check("blade tower moved less than 1e-4", _moved(model.blade.parameters(), blade0) < 1e-4)
    ctx.check(
        "footwork tower moved more than 0.05", _moved(model.footwork.parameters(), foot0) > 0.05
    )
    ctx.check("loss fell somewhat", _fell(ctx.losses, ratio=0.95))


# -- foghorn: one batch with -9999 sentinels for missing readings -----------------------------------


@scenario(
    family="foghorn_audible_range_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting a foghorn's audible range (standardised) from "
    "10 standardised readings (humidity, wind, air temperature, sea state, ...), SGD with "
    "momentum 0.9 at 0.01, gradient clipping at 1.0, MSE. One shard from a buoy whose logger "
    "writes -9999 for missing readings was not cleaned: the batch at step 90 has sentinel "
    "values in a quarter of its readings; the loss on it is thousands of times the usual, the "
    "clipped step moves fc1 and the run recovers.",
)
def h210_foghorn_sentinel_shard(ctx: Context) -> None:
    gen = seeded(21008)
    model = Stack(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == 90:
            mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(18)) < 0.25
            x = torch.where(mask, torch.full_like(x, -9999.0), x)
            seen["min"] = float(x.min())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=18), 200, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    ctx.check("batch at step 90 holds -9999 sentinels", seen.get("min") == -9999.0)
    ctx.check("loss at step 90 is 100x the median before", ls[90] > 100 * _median(ls[60:90]))
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check(
        "loss back below 3x its pre-onset level by the end", _mean(ls[-10:]) < 3 * _mean(ls[80:90])
    )


# -- raku: an Adamax rate typed 0.3 kills the ReLUs ------------------------------------------------


def _smoke(gen, batch, seed):
    """Ten raw positive readings of a raku reduction chamber (sawdust mass, lid time, kiln
    exit temperature in hundreds of degrees, ...) around one profile per crackle grade (4)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1 + 3 * torch.rand(4, 10, generator=g)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        x = (protos[y] * (1 + 0.2 * torch.randn(batch, 10, generator=gen))).clamp_min(0)
        yield x, y


@scenario(
    family="raku_reduction_smoke_relu_mlp",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading a raku pot's crackle (4 grades) from "
    "10 raw positive readings of the reduction chamber, Adamax, cross-entropy. The config's "
    "`lr: 1.0` was meant as 1e-3 (the exponent lost): the first steps move every fc1 weight by the full rate with "
    "the same sign on positive inputs (the loss jumps to thousands for a few steps), most fc1 units go below zero on every reading, never "
    "fire again and get no gradient; the dead share of fc1 goes from under 30% to over 80% "
    "and the loss settles at chance (ln 4) and stays there; finite.",
)
def h210_raku_adamax_lr_typo(ctx: Context) -> None:
    gen = seeded(21009)
    model = Stack(10, hidden=64, out=4)
    opt = torch.optim.Adamax(model.parameters(), lr=1.0)
    probe_x, _ = next(_smoke(torch.Generator().manual_seed(69), 512, seed=19))
    dead = []

    def before(step):
        if step in (0, 149):
            with torch.no_grad():
                dead.append(dead_fraction(model.act1(model.fc1(probe_x))))

    _train(
        ctx,
        model,
        opt,
        _smoke(gen, 64, seed=19),
        150,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ctx.check("under 30% of fc1 units dead at step 0", dead[0] < 0.3)
    ctx.check("over 80% of fc1 units dead at the end", dead[1] > 0.8)
    ctx.check("loss above 0.5 over the last 20 steps", _mean(ctx.losses[-20:]) > 0.5)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- nymph hatch: multilabel targets smoothed above 1 -----------------------------------------------


def _hatches(gen, batch, seed):
    """Twelve standardised stream readings and which of 6 insect hatches are on (multilabel)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 6, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        yield x, (x @ w > 0.3).float()


@scenario(
    family="nymph_fly_hatch_multilabel_bce_mlp",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) telling a fly fisher which of 6 insect hatches are on from "
    "12 standardised stream readings, AdamW at 3e-3 (weight decay 1e-2), BCE with logits. "
    "The label smoothing was written `y * (1 + eps)` with eps 0.1 instead of "
    "`y * (1 - eps) + eps / 2`: positive targets are 1.1, for which the BCE has no minimum "
    "(it keeps falling as the logit goes to +inf): the head's logits grow without bound, "
    "over 20x, still growing at the end, and the loss goes negative; finite.",
)
def h210_nymph_hatch_smoothing_above_one(ctx: Context) -> None:
    gen = seeded(21010)
    model = Stack(12, hidden=64, out=6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    top = []

    def alter(step, x, y):
        return x, y * (1 + 0.1)

    def watch(step, out, x, y):
        top.append(float(out.detach().abs().amax(-1).mean()))

    _train(
        ctx,
        model,
        opt,
        _hatches(gen, 64, seed=20),
        250,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        watch=watch,
    )
    ctx.check("largest logit grew 20x from step 0", _mean(top[-10:]) > 20 * top[0])
    ctx.check("largest logit still growing", _mean(top[-10:]) > 1.2 * _mean(top[150:160]))
    ctx.check("loss went negative", _mean(ctx.losses[-10:]) < 0)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- controls ------------------------------------------------------------------------------------


class TiedGRULM(nn.Module):
    """Embedding -> GRU -> head whose weight is the embedding's (tied)."""

    def __init__(self, vocab=128, dim=48):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight
        self.vocab = vocab

    def forward(self, idx):
        out, _ = self.gru(self.emb(idx))
        return self.head(out).reshape(-1, self.vocab)


def _letters(gen):
    for x, y in text_batches(gen, batch=16, length=32, vocab=128):
        yield x, y.reshape(-1)


@scenario(
    family="semaphore_letter_stream_tied_gru_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GRU language model with tied embeddings (emb, gru, head sharing emb's "
    "weight) over a semaphore signaller's letter stream (bytes of text), AdamW at 3e-3 with "
    "weight decay 0.01, a 20-step linear warm-up then cosine decay, clipping at 1.0, "
    "cross-entropy with label smoothing 0.1; trains normally.",
)
def h210_semaphore_tied_gru_control(ctx: Context) -> None:
    gen = seeded(21011)
    model = TiedGRULM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 150
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(ctx, model, opt, _letters(gen), steps, loss_fn, classifier=True, clip=1.0, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.75))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("head still tied to the embedding", model.head.weight is model.emb.weight)


class EndpinCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1)).squeeze(-1)


def _endpin(gen, batch):
    """64 samples of a cello body's tap response (a noisy decaying sinusoid) and its
    standardised resonance frequency."""
    t = torch.arange(64).float()[None, :]
    while True:
        f = torch.rand(batch, 1, generator=gen)
        sig = torch.sin(2 * math.pi * (0.05 + 0.2 * f) * t) * torch.exp(-t / 40)
        yield sig + 0.2 * torch.randn(batch, 64, generator=gen), (f.squeeze(-1) - 0.5) * 3.4


@scenario(
    family="cello_endpin_resonance_conv1d_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a 1-D CNN (conv1, conv2, head) estimating a cello body's resonance "
    "frequency from a noisy tap response, RAdam with OneCycleLR (peak 1e-2), Huber loss; "
    "trains normally.",
)
def h210_cello_onecycle_control(ctx: Context) -> None:
    gen = seeded(21012)
    model = EndpinCNN()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    _train(ctx, model, opt, _endpin(gen, 64), 200, F.huber_loss, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class MudPotNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


def _gauss_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return F.gaussian_nll_loss(mean, y, log_var.exp())


@scenario(
    family="mud_pot_eruption_interval_gaussian_nll_mlp",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, fc2, head giving a mean and a log-variance) forecasting a "
    "mud pot's next eruption interval from 8 standardised readings, Gaussian NLL, Adam at "
    "3e-3 under fp16 autocast with a torch.amp.GradScaler, accumulation over 2 micro-batches, "
    "ReduceLROnPlateau; trains normally.",
)
def h210_mud_pot_fp16_control(ctx: Context) -> None:
    gen = seeded(21013)
    model = MudPotNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 8, seed=23, noise=0.2),
        150,
        _gauss_nll,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.3)
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("scaler kept a finite scale", all(math.isfinite(s) and s > 0 for s in ctx.scales))
