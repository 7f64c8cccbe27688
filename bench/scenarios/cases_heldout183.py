"""Held-out set 183 (``h183_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a tidal-bore rideability BCE MLP (soft targets exported in percent), a falconry
telemetry set net under fp16 autocast (a sum pooling where the recipe has a mean), a locksmith
pin-binding 16-layer tanh MLP (a uniform bound used as a normal std), a slate-riving thickness
regressor (a shrink-and-perturb hook firing once mid-run), a beaver-dam spillway weir-equation
regressor (h ** 1.5 with no clamp), a skateboard ollie-height regressor (one clip labelled in
pixels), a crumhorn fingering classifier (layer-wise learning rates zipped in the wrong order),
a shipwright plank steam-bend profile regressor (MSE reduction 'sum' under a learning rate tuned
for the mean), a timber-raft log-mark classifier (Adamax handed the SGD recipe's lr), and a
two-head loom warp tension / break net (a diagnostic backward in raw newtons). Controls: a
bioluminescent-bay glow GRU forecaster under CosineAnnealingWarmRestarts, a brewer's
wort-gravity fp16 MLP, and a mammatus cloud-lobe BatchNorm CNN under OneCycleLR with label
smoothing.

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


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


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
    extra=None,
    after_backward=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    stop_on_nan=True,
):
    """The file's training loop. ``before(step)`` runs first (schedules, hooks),
    ``alter(step, x, y)`` changes a batch, ``extra(step, out, loss)`` returns what is
    back-propagated (the logged loss is ``loss_fn(out, y)``), ``after_backward(step)`` runs
    between backward and the optimizer step, ``watch(step, out, x, y)`` records."""
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
            total = extra(step, out, loss) if extra is not None else loss
            total = total / accumulate
            if watch is not None:
                watch(step, out, x, y)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if after_backward is not None:
            after_backward(step)
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
        opt.zero_grad(set_to_none=True)
        if stop_on_nan and math.isnan(shown):
            break


def _signals(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised readings and a smooth nonlinear target (or several) of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(1.7 * x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


def _classes(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class (overlapping)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, activations as modules."""

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


def _top_eig(model, loss_fn, x, y, iters=15) -> float:
    """Largest Hessian eigenvalue of loss_fn(model(x), y) by power iteration."""
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


# -- tidal bore: rideability shares exported in percent into a BCE loss ---------------------------


def _bore_surveys(gen, batch, d_in=14, stretches=3, seed=1):
    """Tide, river-flow and wind readings; per river stretch, the share of surveyed surfers who
    rated the bore rideable, as exported: in percent (0-100), not as a fraction."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, stretches, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        share = torch.sigmoid(1.5 * x @ w / math.sqrt(d_in))
        yield x, 100.0 * share


@scenario(
    family="tidal_bore_rideability_bce_mlp",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) predicting, for three river stretches, the share of "
    "surveyed surfers who rate a tidal bore rideable from 14 tide, flow and wind readings; "
    "BCEWithLogits on the shares as soft targets, AdamW at 2e-3. The survey export writes the "
    "shares in percent (0-100) and nobody divides by 100: with a target above 1 the BCE has no "
    "finite minimiser (its gradient in the logit is sigmoid(z) - y < 0 for every z), so the "
    "head's logits run off upward for the whole run and the logged loss goes negative and keeps "
    "falling linearly; nothing turns NaN within the run.",
)
def h183_tidal_bore_percent_targets(ctx: Context) -> None:
    gen = seeded(18301)
    model = Trunk(14, hidden=64, out=3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    peak = []
    _loop(
        ctx,
        model,
        opt,
        _bore_surveys(gen, 64),
        200,
        F.binary_cross_entropy_with_logits,
        watch=lambda s, o, x, y: peak.append(float(o.detach().abs().max())),
    )
    ctx.check("head's largest |logit| grew 20x", _mean(peak[-10:]) > 20 * _mean(peak[:10]))
    ctx.check("still growing over the last quarter", _mean(peak[-10:]) > 1.3 * _mean(peak[-50:-40]))
    ctx.check("logged BCE below zero (targets outside [0, 1])", _mean(ctx.losses[-10:]) < 0)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- falconry: telemetry pings sum-pooled in float16 ----------------------------------------------

FALCON_LONG = 60


class PingPool(nn.Module):
    """Pools per-ping features over a flight; written .sum(1) where the recipe has .mean(1)."""

    def forward(self, h):
        return h.sum(1)


class FalconSetNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.ping = nn.Linear(d_in, hidden)
        self.act = nn.ReLU()
        self.pool = PingPool()
        self.fc = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)  # zero-initialised last layer, as the recipe does

    def pooled(self, x):
        return self.pool(self.act(self.ping(x)))

    def forward(self, x):
        return self.head(self.act2(self.fc(self.pooled(x)))).squeeze(-1)


def _falcon_flights(gen, batch, d_in=6):
    """Telemetry pings (standardised altitude, speed, heading, wingbeat...) at 1 Hz; the target is
    the flight's standardised time aloft. Training-lure flights last a minute at 1 Hz; from step
    60 the loader reaches the hunting-season logs of the new tags: an hour at 4 Hz."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(d_in, generator=g)
    step = 0
    while True:
        length = 60 if step < FALCON_LONG else 14400
        base = torch.randn(batch, 1, d_in, generator=gen)
        x = 5.0 + base + 0.5 * torch.randn(batch, length, d_in, generator=gen)
        y = torch.tanh(base[:, 0] @ w / math.sqrt(d_in))
        step += 1
        yield x, y


@scenario(
    family="falconry_flight_telemetry_fp16_set_net",
    optimizer="Adam",
    cause="amp_overflow",
    where=("pool",),
    diverges=FALCON_LONG,
    heldout=True,
    onset=FALCON_LONG,
    note="A set network regressing a falcon's time aloft from its flight's 1 Hz telemetry "
    "pings: a per-ping Linear + ReLU, pooled over the pings (module `pool`), then a ReLU layer "
    "and a zero-initialised head; "
    "Adam at 3e-4, MSE, fp16 autocast with a torch.amp.GradScaler. The pooling was written "
    ".sum(1) where the recipe has .mean(1); under autocast the ping features are float16 and "
    "so is the sum. The lure-training flights (60 pings) stay under 65504, but from step 60 "
    "the new tags' hunting-season logs (an hour at 4 Hz, 14400 pings) whose pooled features "
    "pass 65504 and are inf: nearly every step from then has a non-finite loss, the scaler "
    "skips it and keeps halving its scale. (Before that the scaler settles at 256 in the "
    "first 15 steps: the summed features make the early gradients large.)",
)
def h183_falconry_sum_pool_fp16(ctx: Context) -> None:
    gen = seeded(18302)
    model = FalconSetNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    scaler = torch.amp.GradScaler("cpu")
    peak = []

    def watch(step, out, x, y):
        with torch.no_grad():
            peak.append(float(model.act(model.ping(x)).float().sum(1).max()))  # in float32

    _loop(
        ctx,
        model,
        opt,
        _falcon_flights(gen, 8),
        95,
        F.mse_loss,
        scaler=scaler,
        watch=watch,
        stop_on_nan=False,
    )
    at = FALCON_LONG
    ctx.check("loss finite before the hunting logs", _finite(ctx.losses[:at]))
    ctx.check("loss non-finite first at step 60", _first_bad(ctx.losses) == at)
    bad = [not math.isfinite(v) for v in ctx.losses[at:]]
    ctx.check("loss non-finite at 90% of the steps after", sum(bad) >= 0.9 * len(bad))
    ctx.check(
        "pooled ping features past float16's max from step 60 only",
        min(peak[at:]) > 65504 > max(peak[:at]),
    )
    ctx.check(
        "scaler's scale fell 1000x after the onset", ctx.scales[-1] < ctx.scales[at - 1] / 1000
    )
    ctx.check("loss fell before the onset", _fell(ctx.losses[:at]))


# -- locksmith: a uniform bound used as a normal std in a hand-written init ------------------------


class Dense(nn.Module):
    """A hand-written dense layer. Its init was meant to be Kaiming uniform with the tanh gain,
    U(-a, a) with a = (5/3) * sqrt(3 / fan_in), but it draws a normal with std a."""

    def __init__(self, fan_in, fan_out):
        super().__init__()
        bound = (5.0 / 3.0) * math.sqrt(3.0 / fan_in)
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) * bound)
        self.bias = nn.Parameter(torch.zeros(fan_out))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class PinBindingNet(nn.Module):
    def __init__(self, d_in=20, width=64, depth=16, pins=5):
        super().__init__()
        dims = [d_in] + [width] * depth
        self.layers = nn.ModuleList(Dense(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.acts = nn.ModuleList(nn.Tanh() for _ in range(depth))
        self.head = nn.Linear(width, pins)

    def forward(self, x):
        for layer, act in zip(self.layers, self.acts, strict=True):
            x = act(layer(x))
        return self.head(x)


@scenario(
    family="locksmith_pin_binding_deep_tanh_mlp",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A 16-layer tanh MLP (nn.Tanh modules) built from a hand-written Dense layer, naming "
    "which of 5 pins binds first in a pin-tumbler lock from 20 tension-wrench torque and "
    "feedback readings; SGD Nesterov (momentum 0.9) at 5e-3, cross-entropy. Dense's init was "
    "meant to be Kaiming uniform with the tanh gain, U(-a, a) with a = (5/3) sqrt(3 / fan_in), "
    "but it draws a normal with std a: a weight std of 2.9 / sqrt(fan_in), sqrt(3) times too "
    "large. The tanh stack sits in the chaotic phase: the forward stays bounded but the "
    "backward pass multiplies the gradient by about 1.3 at every layer, so the first layers' "
    "gradients are tens of times the last hidden layer's for the whole run.",
)
def h183_locksmith_uniform_bound_as_std(ctx: Context) -> None:
    gen = seeded(18303)
    model = PinBindingNet()
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    ratios = []
    ctx.attach(model, opt)
    batches = _classes(gen, 64, 20, 5, seed=3, spread=1.2)
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        first = float(model.layers[0].weight.grad.norm())
        last = float(model.layers[-1].weight.grad.norm())
        ratios.append(first / max(last, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss.detach())):
            break
    ctx.check("first layer's gradient 30x the last hidden layer's at init", ratios[0] > 30)
    ctx.check("still 15x over the last 20 steps", _median(ratios[-20:]) > 15)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- slate riving: a shrink-and-perturb hook that fires once mid-run -------------------------------

SLATE_HOOK = 160
SLATE_BATCH = 64


@scenario(
    family="slate_riving_thickness_relu_mlp",
    optimizer="RAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SLATE_HOOK,
    note="A ReLU MLP (nn.ReLU modules) predicting the thickness (standardised) of a slate "
    "split off a block from 16 grain, cleavage and moisture readings, RAdam at 3e-3, MSE. The "
    "trainer carries a shrink-and-perturb hook (w <- 0.5 w + 0.01 noise) meant for the "
    "boundary between quarries in a continual-learning run; its trigger "
    "`samples_seen % 10240 < batch_size` was written for one quarry's size, so on this single "
    "quarry it fires once, at step 160. The weights are shrunk, the loss jumps to about the "
    "target's variance for one step, and the run recovers within tens of steps; data, "
    "gradients and learning rate are ordinary.",
)
def h183_slate_shrink_perturb_fires(ctx: Context) -> None:
    gen = seeded(18304)
    model = Trunk(16, hidden=64)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    noise = torch.Generator().manual_seed(4)
    fired = []

    def hook(step):
        if (step * SLATE_BATCH) % 10240 < SLATE_BATCH and step > 0:
            fired.append(step)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.5).add_(0.01 * torch.randn(p.shape, generator=noise))

    _loop(ctx, model, opt, _signals(gen, SLATE_BATCH, 16, seed=4), 260, F.mse_loss, before=hook)
    ls, at = ctx.losses, SLATE_HOOK
    before = _mean(ls[at - 10 : at])
    ctx.check("the hook fired once, at step 160", fired == [at])
    ctx.check("loss at the hook step 5x the ten steps before", ls[at] > 5 * before)
    ctx.check(
        "recovered: last 20 steps under 1.5x the pre-hook level", _mean(ls[-20:]) < 1.5 * before
    )
    ctx.check(
        "gradient at the hook step under 10x the median before (no burst)",
        ctx.grad_norms[at] < 10 * _median(ctx.grad_norms[at - 30 : at]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- beaver dam: the weir equation on a predicted head with no clamp -------------------------------


class Weir(nn.Module):
    """Broad-crested weir: Q = C * L * h ** 1.5, with a learnt discharge coefficient."""

    def __init__(self):
        super().__init__()
        self.log_c = nn.Parameter(torch.tensor(0.0))

    def forward(self, head, length):
        return torch.exp(self.log_c) * length * head**1.5  # no clamp(min=0) on the head


class SpillwayNet(nn.Module):
    def __init__(self, d_in=10, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.stage = nn.Linear(hidden, 1)
        self.weir = Weir()
        nn.init.normal_(self.stage.weight, std=0.01)
        nn.init.constant_(self.stage.bias, 1.0)  # start every head at 1 m

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x[:, 1:]))))
        self.head_m = self.stage(h).squeeze(-1)
        return self.weir(self.head_m, x[:, 0])


BEAVER_DRY = 90
BEAVER_NAN = 111


def _beaver_logs(gen, batch, d_in=10):
    """Spillway length (m) and 10 standardised rain, inflow and pond readings; the target is
    the overflow discharge (m^3/s). From step 90 the loader reaches the late-summer logs,
    where the pond barely tops the crest and many discharges are near zero."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(d_in, generator=g)
    step = 0
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        length = 1.0 + torch.rand(batch, 1, generator=gen)
        z = x @ w / math.sqrt(d_in)
        if step < BEAVER_DRY:
            head = 0.4 + 0.5 * F.softplus(z)  # spring: the pond well over the crest
        else:
            head = 0.5 * F.softplus(z - 2.0)  # late summer: barely over it
        q = 1.6 * length[:, 0] * head**1.5
        step += 1
        yield torch.cat([length, x], 1), q


@scenario(
    family="beaver_dam_spillway_weir_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("weir",),
    diverges=BEAVER_NAN,
    heldout=True,
    onset=BEAVER_DRY,
    note="A physics-informed regressor of the overflow discharge over a beaver dam: a tanh "
    "MLP predicts the water head over the crest (`stage`), and a weir module applies "
    "Q = C L h^1.5 with a learnt coefficient; RMSprop at 3e-3, MSE. The head is a plain "
    "Linear output with no clamp(min=0) (or softplus) before the fractional power. On the "
    "spring logs the predicted head stays positive; from step 90 the loader reaches the "
    "late-summer logs, where the pond barely tops the crest, the fit pushes low heads down, "
    "one goes below zero at step 111, and h ** 1.5 of a negative number is NaN: the loss is "
    "NaN there and the run stops.",
)
def h183_beaver_weir_negative_head(ctx: Context) -> None:
    gen = seeded(18305)
    model = SpillwayNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    low = []
    _loop(
        ctx,
        model,
        opt,
        _beaver_logs(gen, 64),
        200,
        F.mse_loss,
        watch=lambda s, o, x, y: low.append(float(model.head_m.detach().min())),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss NaN first at step 111", bad == BEAVER_NAN)
    ctx.check("a predicted head below zero at that step", bad is not None and low[bad] < 0)
    ctx.check("every predicted head positive before", bad is not None and min(low[:bad]) > 0)
    ctx.check("every head above 0.1 m on the spring logs", min(low[:BEAVER_DRY]) > 0.1)
    ctx.check("loss fell before the late-summer logs", _fell(ctx.losses[:BEAVER_DRY]))


# -- skateboarding: one clip's height labelled in pixels -------------------------------------------

OLLIE_PIXELS = 120


@scenario(
    family="skateboard_ollie_height_gelu_mlp",
    optimizer="SGD(momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=OLLIE_PIXELS,
    note="A GELU MLP (nn.GELU modules) predicting an ollie's height (standardised with the "
    "training set's mean and std, in centimetres) from 18 board-accelerometer and pop "
    "readings; SGD momentum 0.9 at 1e-2, MSE, clip_grad_norm_ at 10. One clip in the batch at "
    "step 120 was annotated on the 4K frame, in pixels rather than centimetres: its label "
    "comes out about 200 standard deviations above the mean. The loss spikes for that step, "
    "the clipped update knocks the weights, and the run recovers.",
)
def h183_ollie_height_in_pixels(ctx: Context) -> None:
    gen = seeded(18306)
    model = Trunk(18, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == OLLIE_PIXELS:
            y = y.clone()
            y[7] = 200.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _signals(gen, 64, 18, seed=6),
        220,
        F.mse_loss,
        alter=alter,
        clip=10.0,
    )
    ls, at = ctx.losses, OLLIE_PIXELS
    before = _mean(ls[at - 10 : at])
    ctx.check("loss at step 120 100x the ten steps before", ls[at] > 100 * before)
    ctx.check(
        "gradient at step 120 50x the median before",
        ctx.grad_norms[at] > 50 * _median(ctx.grad_norms[at - 30 : at]),
    )
    ctx.check(
        "recovered: last 20 steps under 2x the pre-outlier level", _mean(ls[-20:]) < 2 * before
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- crumhorn: layer-wise learning rates zipped in the wrong order ---------------------------------


class CrumhornNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, fingerings=12):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, fingerings)

    def forward(self, x):
        x = F.silu(self.fc1(x))
        x = F.silu(self.fc2(x))
        return self.head(F.silu(self.fc3(x)))


@scenario(
    family="crumhorn_fingering_silu_classifier",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (functional F.silu) naming which of 12 fingerings a crumhorn player used "
    "from 16 windcap-pressure and pitch readings, NAdam, cross-entropy. The recipe gives each "
    "layer its own rate, decaying by 10x per layer from the head down "
    "(head 2e-3, fc3 2e-4, fc2 2e-5, fc1 2e-6); the param groups were built by zipping the "
    "rates, listed head-first, with the layers in forward order, so the freshly initialised "
    "head gets 2e-6 (its weights move by about 0.5% of their norm over the run) while fc1 "
    "gets 2e-3. The loss still falls slowly through the lower layers; nothing blows up.",
)
def h183_crumhorn_lrs_zipped_reversed(ctx: Context) -> None:
    gen = seeded(18307)
    model = CrumhornNet()
    rates = [2e-3 * 0.1**i for i in range(4)]  # head first
    layers = [model.fc1, model.fc2, model.fc3, model.head]  # forward order
    opt = torch.optim.NAdam(
        [{"params": m.parameters(), "lr": r} for m, r in zip(layers, rates, strict=True)]
    )
    start = {n: m.weight.detach().clone() for n, m in model.named_children()}
    _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 12, seed=7, spread=1.0),
        160,
        F.cross_entropy,
        classifier=True,
    )

    def moved(name):
        w = getattr(model, name).weight.detach()
        return float((w - start[name]).norm() / start[name].norm())

    ctx.check("head's weights moved under 1% of their norm", moved("head") < 1e-2)
    ctx.check("fc1's weights moved over 10% of their norm", moved("fc1") > 0.1)
    ctx.check(
        "head's group lr is 1000x below fc1's",
        opt.param_groups[3]["lr"] * 999 < opt.param_groups[0]["lr"],
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- shipwright: MSE with reduction='sum' under a learning rate tuned for the mean -----------------

PLANK_STATIONS = 16
PLANK_BATCH = 32


class PlankNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, stations=PLANK_STATIONS):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, stations)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


PLANK_EDGE = 26


def _plank_sum(out, y):
    return F.mse_loss(out, y, reduction="sum")


@scenario(
    family="shipwright_plank_steam_bend_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=PLANK_EDGE,
    note="A tanh MLP predicting the set (standardised deflection) of a steam-bent oak plank at "
    "16 stations along it from 10 steaming-time, thickness and grain readings, plain SGD with a "
    "linear warm-up to 0.05 over 300 steps. The lr was tuned with the mean-reduced MSE; a port "
    "from a per-sample loop wrote F.mse_loss(..., reduction='sum'), which multiplies the "
    "loss's curvature by batch x stations = 512. As the warm-up raises the lr, lr x sharpness "
    "(measured on a fixed batch) passes 2 at step 26; the loss stops falling, oscillates, "
    "and blows up from about step 60 (inf by step 96).",
)
def h183_plank_mse_reduction_sum(ctx: Context) -> None:
    gen = seeded(18308)
    model = PlankNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 300))
    batches = _signals(gen, PLANK_BATCH, 10, seed=8, outputs=PLANK_STATIONS)
    probe = next(batches)
    lrs, edge = [], []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 2 == 0 and len(edge) < 30:
            edge.append((step, lrs[-1] * _top_eig(model, _plank_sum, *probe)))

    _loop(ctx, model, opt, batches, 120, _plank_sum, sched=sched, before=before)
    ls = ctx.losses
    crossed = next((s for s, v in edge if v > 2), None)
    ctx.check("lr x sharpness under 2 at the start", edge[0][1] < 2)
    ctx.check("lr x sharpness first past 2 at step 26", crossed == PLANK_EDGE)
    ctx.check(
        "loss blew up 100x its lowest after the crossing",
        crossed is not None
        and (max(ls[crossed:]) > 100 * min(ls[: crossed + 1]) or not _finite(ls)),
    )


# -- timber rafting: Adamax handed the SGD recipe's learning rate ----------------------------------


@scenario(
    family="timber_raft_log_mark_relu_mlp",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act1", "fc1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) reading the owner's mark hammered into the end of a "
    "river-driven log (8x8 end-grain scans, the digit images, pixels in [0, 1]) into one of "
    "10 timber companies; cross-entropy. The optimizer was switched from the team's SGD recipe "
    "to Adamax without retuning, and the SGD learning rate 0.3 was kept: Adamax moves every "
    "weight by about the lr per step, the non-negative pixels push whole units' pre-activations "
    "below zero on every image within the first tens of steps, nearly all of the first layer "
    "dies, and the loss stops falling far above where the model can go; finite throughout.",
)
def h183_log_mark_adamax_sgd_lr(ctx: Context) -> None:
    gen = seeded(18309)
    model = Trunk(64, hidden=64, out=10)
    opt = torch.optim.Adamax(model.parameters(), lr=0.3)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.act1(model.fc1(x))))

    _loop(
        ctx, model, opt, digit_batches(gen, 64), 200, F.cross_entropy, classifier=True, watch=watch
    )
    ls = ctx.losses
    ctx.check("under half of fc1's units dead at the start", dead[0] < 0.5)
    ctx.check("90% of fc1's units dead over the last 20 steps", _mean(dead[-20:]) > 0.9)
    ctx.check("loss still above 1.0 over the last 20 steps", _mean(ls[-20:]) > 1.0)
    ctx.check(
        "loss flat over the second half (within 20%)",
        _mean(ls[-20:]) > 0.8 * _mean(ls[100:120]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- loom: a two-head warp tension / break net and a diagnostic backward in raw newtons ------------

LOOM_DIAG = 100
TENSION_MEAN, TENSION_STD = 2400.0, 180.0  # newtons


class LoomNet(nn.Module):
    def __init__(self, d_in=14, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.tension_head = nn.Linear(hidden, 1)
        self.break_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(x))))
        return torch.cat([self.tension_head(h), self.break_head(h)], -1)


def _loom_logs(gen, batch, d_in=14):
    """Shed, beat-up and let-off readings; the warp tension (standardised) and whether a warp
    end broke within the next hundred picks."""
    g = torch.Generator().manual_seed(10)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        t = torch.tanh(x @ w / math.sqrt(d_in)) + 0.1 * torch.randn(batch, generator=gen)
        p = torch.sigmoid(2 * x @ v / math.sqrt(d_in) + 1.5 * t)
        b = (torch.rand(batch, generator=gen) < p).float()
        yield x, torch.stack([t, b], -1)


def _loom_loss(out, y):
    return F.huber_loss(out[:, 0], y[:, 0]) + F.binary_cross_entropy_with_logits(out[:, 1], y[:, 1])


@scenario(
    family="loom_warp_tension_two_head_net",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=("fc1", "fc2", "tension_head"),
    diverges=None,
    heldout=True,
    onset=LOOM_DIAG,
    note="A multi-task ReLU MLP (functional F.relu) with two heads on a shared trunk for a "
    "power loom: `tension_head` regresses the warp tension (standardised, Huber loss) and "
    "`break_head` predicts a warp-end break (BCE); the two losses are summed; Adam at 1e-3. "
    "At step 100 an end-of-epoch diagnostic helper logs the gradient norm of the tension "
    "error in raw newtons: it un-standardises prediction and label (x 180 N + 2400 N), takes "
    "the sum of squared errors (the figure the mill reports) and calls backward() with no "
    "zero_grad after, so that one optimizer step gets a gradient about a million times the "
    "usual, through the trunk and the tension head (the break head gets none of it). Adam's "
    "second moment fills with it; once the momentum has decayed, the trunk's and tension "
    "head's updates are over a hundred times smaller than before and the loss stops falling.",
)
def h183_loom_raw_newton_diagnostic(ctx: Context) -> None:
    gen = seeded(18310)
    model = LoomNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _loom_logs(gen, 64)
    moves = []
    poisoned = [p for n, p in model.named_parameters() if not n.startswith("break_head")]
    last = [p.detach().clone() for p in poisoned]

    def diagnostic(step):
        if step == LOOM_DIAG:
            x, y = next(batches)
            pred = model(x)[:, 0] * TENSION_STD + TENSION_MEAN
            F.mse_loss(pred, y[:, 0] * TENSION_STD + TENSION_MEAN, reduction="sum").backward()

    def before(step):
        moves.append(
            sum(float((p.detach() - q).abs().sum()) for p, q in zip(poisoned, last, strict=True))
        )
        for p, q in zip(poisoned, last, strict=True):
            q.copy_(p.detach())

    _loop(ctx, model, opt, batches, 260, _loom_loss, before=before, after_backward=diagnostic)
    ls, at, gn = ctx.losses, LOOM_DIAG, ctx.grad_norms
    ctx.check(
        "gradient at step 100 100000x the median before",
        gn[at] > 1e5 * _median(gn[at - 30 : at]),
    )
    ctx.check(
        "updates over the last 100 steps 100x smaller than the 20 before the spike",
        _mean(moves[-100:]) * 100 < _mean(moves[at - 19 : at + 1]),
    )
    ctx.check("loss fell before the spike", _fell(ls[:at]))
    ctx.check(
        "loss flat after (last 20 steps within 10% of steps 110-130)",
        abs(_mean(ls[-20:]) - _mean(ls[at + 10 : at + 30])) < 0.1 * _mean(ls[at + 10 : at + 30]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- controls ---------------------------------------------------------------------------------------


class GlowForecaster(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.gru = nn.GRU(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _glow_windows(gen, batch, length=24):
    """Hourly glow of a bioluminescent bay (dinoflagellate flashes, standardised) driven by the
    tide and the night: the last 24 hours of glow and of tide height; the next hour's glow."""
    while True:
        t0 = 1000 * torch.rand(batch, 1, generator=gen)
        t = t0 + torch.arange(length + 1).float()
        tide = torch.sin(2 * math.pi * t / 12.42)
        night = torch.cos(2 * math.pi * t / 24.0).clamp(min=0)
        glow = 1.5 * night * (1 + 0.5 * tide) - 0.5
        glow = glow + 0.1 * torch.randn(batch, length + 1, generator=gen)
        x = torch.stack([glow[:, :-1], tide[:, :-1]], -1)
        yield x, glow[:, -1]


@scenario(
    family="bioluminescent_bay_glow_gru_forecaster",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A GRU forecasting the next hour's glow of a bioluminescent bay from the last 24 "
    "hours of glow and tide height, MSE; AdamW with two param groups (weight decay 1e-2 on "
    "matrices, none on biases), CosineAnnealingWarmRestarts (T_0 = 40 steps, T_mult = 2), "
    "clip_grad_norm_ at 1.",
)
def h183_control_glow_warm_restarts(ctx: Context) -> None:
    gen = seeded(18311)
    model = GlowForecaster()
    decay = [p for n, p in model.named_parameters() if "weight" in n]
    rest = [p for n, p in model.named_parameters() if "weight" not in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": rest, "weight_decay": 0.0}], lr=5e-3
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=40, T_mult=2)
    lrs = []
    _loop(
        ctx,
        model,
        opt,
        _glow_windows(gen, 32),
        200,
        F.mse_loss,
        clip=1.0,
        sched=sched,
        before=lambda s: lrs.append(opt.param_groups[0]["lr"]),
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("the lr restarted (back to its peak at step 40)", lrs[40] > 0.99 * lrs[0] > lrs[39])
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="brewer_wort_gravity_fp16_silu_mlp",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) predicting a brew's original wort gravity "
    "(standardised) from 16 mash-temperature, grist and sparge readings with noisy labels; "
    "fp16 autocast with a torch.amp.GradScaler, Adagrad at 3e-2, Huber loss, gradient "
    "accumulation over 2 micro-batches, clip_grad_norm_ at 5 after unscaling, "
    "ReduceLROnPlateau.",
)
def h183_control_wort_fp16(ctx: Context) -> None:
    gen = seeded(18312)
    model = Trunk(16, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _signals(gen, 32, 16, seed=12, noise=0.2),
        160,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        clip=5.0,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("scaler's scale still at 1024 or more at the end", ctx.scales[-1] >= 1024)


class LobeCNN(nn.Module):
    def __init__(self, width=8, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * 16, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


@scenario(
    family="mammatus_cloud_lobe_bn_cnn",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A small BatchNorm CNN (functional F.relu) sorting 8x8 sky-camera patches of "
    "mammatus cloud lobes into 10 lobe patterns (the digit images); Adadelta under "
    "OneCycleLR (max_lr 1.0, cycle_momentum off), cross-entropy with label smoothing 0.1.",
)
def h183_control_mammatus_onecycle(ctx: Context) -> None:
    gen = seeded(18313)
    model = LobeCNN()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1.0, total_steps=steps, cycle_momentum=False
    )
    _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))
