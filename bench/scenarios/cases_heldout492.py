"""Held-out set 492 (``h492_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a flowstone drip-rate regressor whose cached targets are unit-converted in place every
epoch (a drifting target, a slow climb, Adamax), a milky-sea glow regressor trained under fp16
autocast with its radiance targets left in raw units (fp16 overflow, Adam + GradScaler), a
bowl-carving gouge-depth regressor whose fc1 warm-up lambda uses floor division (fc1 frozen, SGD
momentum), a suiseki stone-form classifier fed raw logits into nll_loss (output logits grow
without bound, NAdam), a rock-varnish layer regressor taking log of a zero-power scan (NaN,
RMSprop), a brash-ice floe-drift regressor with a -9999 sentinel batch (ASGD), a desert-rose
crystal-size regressor whose accumulation multiplies instead of divides once (one gradient
burst, SGD Nesterov), a moving-rocks trail ReLU RNN initialised with recurrent gain 1.8
(exploding through time, SGD), a qanun mandal-lever cosine classifier with scale 1600 for 16
(softmax collapse, Adagrad) and a patterned-ground polygon classifier at an Adam lr typed 3e-1
for 3e-3 (dead ReLUs, Adam).

Controls: a rebab bowing-notation character model with a mixture-of-softmaxes head tied to the
embedding (AdamW, warm-up + cosine, clipping); a zurna reed-pitch GELU regressor trained in
bfloat16 autocast throughout, beside a float32 reference run (RAdam); a mridang stroke Conv1d
classifier (SGD Nesterov, ReduceLROnPlateau, label smoothing, accumulation 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """The file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``backprop(step, loss)`` is the loss actually backpropagated (before the division by
    ``accumulate``), ``after(step, loss)`` runs after the optimizer step. Stops after a
    non-finite loss once ``ctx.step`` has seen it. ``attach=False``: a reference run."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
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
            loss = loss_fn(model(x), y)
            total = backprop(step, loss) if backprop is not None else loss / accumulate
            total.backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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


# -- 1. loss divergence: cached targets unit-converted in place every epoch --------------------------


@scenario(
    family="flowstone_drip_rate_inplace_unit_drift_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Flowstone drip-rate regressor (SiLU MLP on cave humidity, temperature, ceiling "
    "thickness and rainfall-lag features, MSE, Adamax). The epoch loader converts the cached "
    "drip-rate targets to the reporting unit with ys.mul_(1.15) in place, so every epoch the "
    "targets drift 15% further: after fitting, the loss climbs slowly with no other mechanism.",
)
def h492_flowstone_target_drift(ctx) -> None:
    gen = seeded(4921)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    xs, ys = next(_readings(gen, 1024, 10, 4921))
    y0 = float(ys.abs().mean())

    def data():
        while True:
            ys.mul_(1.15)  # the unit conversion, applied to the cached tensor every epoch
            order = torch.randperm(len(ys), generator=gen)
            for i in range(0, len(ys), 64):
                idx = order[i : i + 64]
                yield xs[idx], ys[idx].clone()

    losses, _ = _train(ctx, model, opt, data(), 260, F.mse_loss)
    best = min(_mean(losses[i : i + 10]) for i in range(0, 120, 5))
    ctx.check(
        "trained first (best 10-step mean under 0.7x the start)", best < 0.7 * _mean(losses[:10])
    )
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("the targets drifted over 3x their scale", float(ys.abs().mean()) > 3 * y0)
    ctx.check("no NaN (a slow climb, not a blow-up)", _finite(losses))


# -- 2. amp overflow: radiance targets in raw units under fp16 autocast ------------------------------


class _GlowNet(nn.Module):
    def __init__(self, d_in=8, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


MILK_DIVERGES = 101


@scenario(
    family="milk_sea_glow_radiance_raw_units_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=MILK_DIVERGES,
    heldout=True,
    note="Milky-sea glow regressor (ReLU MLP on satellite band ratios, sea-surface temperature "
    "and chlorophyll features, MSE, Adam, fp16 autocast with a GradScaler). The radiance "
    "targets are left in raw units (tens of thousands, the largest above fp16's 65504) instead "
    "of standardised: as the head's fp16 output grows to fit them it overflows to inf, the loss "
    "is inf and the scaler skips step after step, its scale collapsing.",
)
def h492_milk_sea_fp16_raw_units(ctx) -> None:
    gen = seeded(4922)
    model = _GlowNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    g = torch.Generator().manual_seed(49220)
    w = torch.randn(8, generator=g)
    losses, scales, peaks = [], [], []
    for _step in range(200):
        x = torch.randn(64, 8, generator=gen)
        y = 4.0e4 * (1.0 + 0.45 * torch.tanh(x @ w / math.sqrt(8)))  # raw radiance units
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        peaks.append(float(out.detach().float().abs().max()))
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        scales.append(float(scaler.get_scale()))
        ctx.scales.append(scales[-1])
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if len(losses) > 20 and not any(math.isfinite(v) for v in losses[-20:]):
            break  # twenty non-finite steps in a row: the run is dead
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the loss became inf", first_bad is not None)
    ctx.check(
        "finite and falling before the overflow",
        first_bad is not None
        and first_bad > 10
        and _mean(losses[first_bad - 5 : first_bad]) < 0.7 * _mean(losses[:5]),
    )
    ctx.check("the head's fp16 output hit inf", any(math.isinf(v) for v in peaks))
    ctx.check("the scaler's scale fell over 1000x", min(scales) < scales[0] / 1000)
    ctx.check("the first inf is at step 101", first_bad == MILK_DIVERGES)
    ctx.check(
        "the scaler skipped 20 steps in a row after it",
        first_bad is not None
        and len(losses) >= first_bad + 20
        and scales[-1] < scales[first_bad - 1],
    )


# -- 3. update ratio: fc1's warm-up lambda written with floor division ------------------------------


@scenario(
    family="bowl_carving_gouge_depth_warmup_floor_div_silu_regressor",
    optimizer="SGD momentum",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Bowl-carving gouge-depth regressor (SiLU MLP on wood species, moisture, gouge sweep "
    "and lathe speed features, MSE, SGD momentum with two param groups under LambdaLR). The "
    "first layer's group was meant to warm up over 400 steps with min(1, s / 400) but the lambda "
    "is written min(1, s // 400): its lr is exactly 0 for the whole 220-step run, fc1 never "
    "moves while the rest trains and the loss still falls.",
)
def h492_bowl_carving_floor_div(ctx) -> None:
    gen = seeded(4923)
    model = _Net(10, 48, 1, act=nn.SiLU)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.SGD(
        [{"params": model.fc1.parameters()}, {"params": rest}], lr=0.03, momentum=0.9
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: min(1, s // 400), lambda s: min(1.0, (s + 1) / 20)]
    )
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4923), 220, F.mse_loss, sched=sched)
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    d2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", d1 < 1e-6)
    ctx.check("fc2 moved over 5% of its norm", d2 > 0.05)
    ctx.check("the loss still fell (no blow-up)", _fell(losses))


# -- 4. output logit divergence: nll_loss on raw logits --------------------------------------------


class _FormNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="suiseki_stone_form_raw_logit_nll_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Suiseki viewing-stone form classifier (GELU MLP on silhouette, height-ratio and "
    "surface-texture features, NAdam). The loss is F.nll_loss(model(x), y) on the raw head "
    "logits, the log_softmax having been dropped in a refactor: nothing bounds the objective, "
    "the target logit is pushed up every step and the head's logits grow without limit.",
)
def h492_suiseki_raw_logit_nll(ctx) -> None:
    seeded(4924)
    model = _FormNet()
    ref = _FormNet()
    ref.load_state_dict(model.state_dict())

    def run(net, loss_fn, attach):
        opt = torch.optim.NAdam(net.parameters(), lr=2e-3)
        peak = []
        probe = next(_grades(torch.Generator().manual_seed(49240), 256, 12, 5, 4924))[0]

        def after(step, loss):
            with torch.no_grad():
                peak.append(float(net(probe).abs().max()))

        data = _grades(torch.Generator().manual_seed(49241), 64, 12, 5, 4924)
        losses, _ = _train(
            ctx, net, opt, data, 200, loss_fn, classifier=True, after=after, attach=attach
        )
        return losses, peak

    _, ref_peak = run(ref, lambda o, y: F.nll_loss(F.log_softmax(o, -1), y), False)
    losses, peak = run(model, F.nll_loss, True)
    ctx.check("with log_softmax the logits stay under 30", max(ref_peak) < 30)
    ctx.check("max |logit| over 20x its start", peak[-1] > 20 * peak[0])
    ctx.check("still growing over the last half", _mean(peak[-10:]) > 1.3 * _mean(peak[95:105]))
    ctx.check("the loss went below -10 (no real NLL can)", losses[-1] < -10)


# -- 5. nonfinite: log of the power of a zero scan ------------------------------------------------

VARNISH_STEP = 130


class _LogPower(nn.Module):
    """Log mean power of a scan (the layer-count model works in decibel-like units)."""

    def forward(self, x):
        return torch.log(x.pow(2).mean(-1, keepdim=True))  # missing + eps


class _VarnishNet(nn.Module):
    def __init__(self, window=24, hidden=32):
        super().__init__()
        self.logpower = _LogPower()
        self.fc1 = nn.Linear(window + 1, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = torch.cat([x, self.logpower(x)], -1)
        return self.head(self.act1(self.fc1(z))).squeeze(-1)


@scenario(
    family="rock_varnish_layer_log_power_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("logpower",),
    diverges=VARNISH_STEP,
    heldout=True,
    onset=VARNISH_STEP,
    note="Rock-varnish layer-thickness regressor (ReLU MLP on a 24-point X-ray fluorescence "
    "scan plus its log mean power, MSE, RMSprop). The log-power module has no epsilon; at step "
    "130 a batch holds two scans the instrument returned as all zeros (a shutter fault), log(0) "
    "is -inf, fc1 turns it into +-inf, the ReLU passes +inf and the head sums inf - inf: the loss is NaN.",
)
def h492_rock_varnish_log_zero(ctx) -> None:
    gen = seeded(4925)
    model = _VarnishNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def data():
        while True:
            amp = 0.5 + torch.rand(64, 1, generator=gen)
            x = amp * torch.randn(64, 24, generator=gen)
            yield x, 2 * amp.squeeze(-1) - 2

    def alter(step, x, y):
        if step == VARNISH_STEP:
            x = x.clone()
            x[:2] = 0.0
        return x, y

    losses, _ = _train(ctx, model, opt, data(), 200, F.mse_loss, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("finite and training before the zero scans", _fell(losses[:VARNISH_STEP]))
    ctx.check("the loss is NaN exactly at step 130", first_bad == VARNISH_STEP)
    with torch.no_grad():
        ctx.check(
            "logpower of a zero scan is -inf",
            bool(model.logpower(torch.zeros(1, 24)).isinf().all()),
        )


# -- 6. data outlier: a -9999 sentinel batch ---------------------------------------------------------

BRASH_STEP = 120


@scenario(
    family="brash_ice_floe_drift_sentinel_target_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=BRASH_STEP,
    note="Brash-ice floe-drift regressor (ReLU MLP on wind, current, floe size and concentration "
    "features, MSE, ASGD, clipping at 1). One buoy file codes lost GPS fixes as -9999 and was "
    "not filtered: the batch at step 120 holds eight -9999 drift targets, the loss and gradient "
    "jump once and the run recovers.",
)
def h492_brash_ice_sentinel(ctx) -> None:
    gen = seeded(4926)
    model = _Net(10, 48, 1)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    seen = {}

    def alter(step, x, y):
        if step == BRASH_STEP:
            y = y.clone()
            y[:8] = -9999.0
        seen[step] = float(y.abs().max())
        return x, y

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4926), 240, F.mse_loss, alter=alter, clip=1.0
    )
    pre = _mean(losses[BRASH_STEP - 10 : BRASH_STEP])
    ctx.check(
        "targets over 1000x the usual at the bad file",
        seen[BRASH_STEP] > 1000 * seen[BRASH_STEP - 1],
    )
    ctx.check("loss over 100x at the bad file", losses[BRASH_STEP] > 100 * pre)
    ctx.check("gradient over 20x the median", norms[BRASH_STEP] > 20 * _median(norms))
    ctx.check("recovered (last 10 under 2x the pre-file level)", _mean(losses[-10:]) < 2 * pre)
    ctx.check("trained before it, finite", _finite(losses) and pre < 0.7 * _mean(losses[:10]))


# -- 7. gradient spike: accumulation multiplies instead of divides once ---------------------------

ROSE_STEP = 110


@scenario(
    family="desert_rose_crystal_size_accum_multiply_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ROSE_STEP,
    note="Desert-rose crystal-size regressor (ReLU MLP on brine salinity, evaporation rate and "
    "sand grain features, MSE, SGD Nesterov, gradient accumulation 8, clipping at 1). The "
    "resume-after-checkpoint path (taken once, at step 110) scales the micro-batch losses by "
    "loss * accum instead of loss / accum: that step's gradient is 64x normal, from a loss "
    "bug and not from the data; clipping caps the update.",
)
def h492_desert_rose_accum_bug(ctx) -> None:
    gen = seeded(4927)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * 8 if step == ROSE_STEP else loss / 8

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 4927),
        200,
        F.mse_loss,
        backprop=backprop,
        accumulate=8,
        clip=1.0,
    )
    ctx.check("gradient over 30x the median at step 110", norms[ROSE_STEP] > 30 * _median(norms))
    ctx.check(
        "the batches are ordinary (loss at the step under 2x the 10 before)",
        losses[ROSE_STEP] < 2 * _mean(losses[ROSE_STEP - 10 : ROSE_STEP]),
    )
    ctx.check("trained and finite", _fell(losses))


# -- 8. exploding gradients: a ReLU RNN with recurrent gain 1.8 -------------------------------------


class _TrailRNN(nn.Module):
    """A hand-written ReLU recurrence over a sequence of wind/ice readings."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _trails(gen, batch=32, length=30, curriculum=None):
    """Wind/ice reading sequences; ``curriculum`` (a one-item list) sets the length live."""
    while True:
        t = curriculum[0] if curriculum is not None else length
        x = torch.randn(batch, t, 4, generator=gen)
        y = torch.tanh(x[:, :, 0].mean(1) * 3 + x[:, -5:, 1].mean(1))
        yield x, y


@scenario(
    family="moving_rocks_trail_length_relu_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="Racetrack-playa moving-rocks trail-length regressor (hand-written ReLU RNN over wind and "
    "ice-sheet readings, MSE, plain SGD, a sequence-length curriculum from 6 readings growing "
    "by one every 3 steps). The recurrent weight is "
    "initialised orthogonal with gain 1.8 (the init helper was handed the input layer's gain "
    "instead of 1.0): the gradient grows step by step back through time, the first step's "
    "state of a 30-reading sequence gets a gradient over 100x the last one's; the short "
    "sequences train, and as the curriculum lengthens them the loss blows up.",
)
def h492_moving_rocks_rec_gain(ctx) -> None:
    seeded(4928)
    model = _TrailRNN(gain=1.8)
    ref = _TrailRNN(gain=1.0)

    def depth_ratio(net):
        x, y = next(_trails(torch.Generator().manual_seed(49280)))
        F.mse_loss(net(x), y).backward()
        r = float(net.states[0].grad.norm() / net.states[-1].grad.norm().clamp_min(1e-30))
        net.zero_grad()
        return r

    ref_ratio = depth_ratio(ref)
    ratio = depth_ratio(model)

    def run(net, attach):
        length = [6]

        def before(step):
            length[0] = 6 + step // 3  # the sequence-length curriculum: 6 readings, then longer

        data = _trails(torch.Generator().manual_seed(49281), curriculum=length)
        opt = torch.optim.SGD(net.parameters(), lr=1e-2)
        return _train(ctx, net, opt, data, 150, F.mse_loss, before=before, attach=attach)[0]

    ref_losses = run(ref, False)
    losses = run(model, True)
    ctx.check(
        "at gain 1.0 the same run stays finite and bounded",
        _finite(ref_losses) and max(ref_losses) < 10,
    )
    ctx.check("first-step state gradient over 100x the last one's (30 steps)", ratio > 100)
    ctx.check("that ratio is over 100x the gain-1.0 one", ratio > 100 * ref_ratio)
    ctx.check("trained on the short sequences first", _mean(losses[10:20]) < 0.7 * losses[0])
    ctx.check(
        "the loss blows up (over 1e3x its best or non-finite)",
        not _finite(losses) or max(losses) > 1e3 * min(losses),
    )


# -- 9. softmax collapse: cosine-classifier scale 1600 for 16 ---------------------------------------


class _LeverNet(nn.Module):
    def __init__(self, d_in=14, hidden=48, classes=6, scale=16.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, classes, bias=False)
        self.scale = scale

    def forward(self, x):
        h = F.normalize(self.act1(self.fc1(x)), dim=-1)
        return self.scale * h @ F.normalize(self.head.weight, dim=-1).T


@scenario(
    family="qanun_mandal_lever_cosine_scale_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Qanun mandal-lever position classifier (ReLU MLP with a cosine-similarity head on "
    "string-pitch and lever-click features, cross-entropy, Adagrad). The cosine scale is meant "
    "to be 16 but the config has 1600 (a percent-to-fraction slip): the logits span hundreds, "
    "the float32 softmax of most rows rounds to exactly 1.0 and those rows give no gradient.",
)
def h492_qanun_cosine_scale(ctx) -> None:
    gen = seeded(4929)
    model = _LeverNet(scale=1600.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    data = _grades(gen, 64, 14, 6, 4929, spread=1.0)
    losses, _ = _train(ctx, model, opt, data, 150, F.cross_entropy, classifier=True)
    x, y = next(data)
    with torch.no_grad():
        out = model(x)
        frac = collapsed_fraction(out, y)
        top2 = out.topk(2, -1).values
        gap = float((top2[:, 0] - top2[:, 1]).median())
    ctx.check("over half the rows' target probability is exactly 1.0", frac > 0.5)
    ctx.check("median top-1 minus top-2 logit gap over 20", gap > 20)
    ctx.check("finite", _finite(losses))


# -- 10. loss of plasticity: an Adam lr typed 3e-1 for 3e-3 -------------------------------------


@scenario(
    family="patterned_ground_polygon_no_warmup_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Patterned-ground polygon-type classifier (ReLU MLP on crack spacing, stone sorting "
    "and freeze-thaw features, cross-entropy, Adam, no warm-up). The lr is typed 3e-1 for 3e-3: "
    "the first large updates push fc2's pre-activations negative for every input, fc2's ReLUs "
    "die and never come back, and the run stalls near chance while lr 3e-3 trains; the loss "
    "never blows up.",
)
def h492_patterned_ground_no_warmup(ctx) -> None:
    seeded(4930)
    model = _Net(12, 48, 6)
    ref = _Net(12, 48, 6)
    ref.load_state_dict(model.state_dict())
    ref_losses, _ = _train(
        ctx,
        ref,
        torch.optim.Adam(ref.parameters(), lr=3e-3),
        _grades(torch.Generator().manual_seed(49300), 64, 12, 6, 4930, spread=1.5),
        200,
        F.cross_entropy,
        attach=False,
    )
    data = _grades(torch.Generator().manual_seed(49300), 64, 12, 6, 4930, spread=1.5)
    losses, _ = _train(
        ctx,
        model,
        torch.optim.Adam(model.parameters(), lr=0.3),
        data,
        200,
        F.cross_entropy,
        classifier=True,
    )
    x, _ = next(data)
    with torch.no_grad():
        dead = dead_fraction(model.fc2(model.act1(model.fc1(x))))
        ref_dead = dead_fraction(ref.fc2(ref.act1(ref.fc1(x))))
    ctx.check("over 70% of fc2's units dead", dead > 0.7)
    ctx.check("under 20% dead at lr 3e-3", ref_dead < 0.2)
    ctx.check("stalled over 2x the lr-3e-3 loss", _mean(losses[-20:]) > 2 * _mean(ref_losses[-20:]))
    ctx.check("finite", _finite(losses))


# -- 11. control: a character model with a mixture-of-softmaxes head ------------------------------


class _MoSCharLM(nn.Module):
    """Causal dilated Conv1d character model; the head mixes ``mixtures`` softmaxes (each over
    its own projection of the state) with a learnt gate, decoder tied to the embedding."""

    def __init__(self, vocab=128, dim=48, mixtures=4):
        super().__init__()
        self.mixtures, self.dim = mixtures, dim
        self.embed = nn.Embedding(vocab, dim)
        self.conv1 = nn.Conv1d(dim, dim, 3, dilation=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, dilation=2)
        self.conv3 = nn.Conv1d(dim, dim, 3, dilation=4)
        self.latent = nn.Linear(dim, mixtures * dim)
        self.gate = nn.Linear(dim, mixtures)
        self.decoder = nn.Linear(dim, vocab)
        self.decoder.weight = self.embed.weight  # tied

    def forward(self, idx):
        h = self.embed(idx).transpose(1, 2)
        for conv in (self.conv1, self.conv2, self.conv3):
            pad = (conv.kernel_size[0] - 1) * conv.dilation[0]
            h = h + F.gelu(conv(F.pad(h, (pad, 0))))
        h = h.transpose(1, 2)
        b, t, _ = h.shape
        comp = torch.tanh(self.latent(h)).reshape(b, t, self.mixtures, self.dim)
        log_pi = F.log_softmax(self.gate(h), -1)
        self.last_gate = log_pi.detach().exp().mean((0, 1))
        log_p = F.log_softmax(self.decoder(comp), -1)
        return torch.logsumexp(log_pi[..., None] + log_p, dim=2)  # log of the mixture


@scenario(
    family="rebab_bowing_notation_mos_char_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Rebab bowing-notation character model (hand-written causal dilated Conv1d over bytes, "
    "a mixture-of-softmaxes head: four softmaxes over tanh projections of the state, mixed by "
    "a learnt gate, decoder tied to the embedding; NLL of the mixture, AdamW, warm-up + cosine, "
    "clipping at 1). Control.",
)
def h492_rebab_mos_control(ctx) -> None:
    gen = seeded(4931)
    model = _MoSCharLM()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * (0.55 + 0.45 * math.cos(math.pi * s / steps)),
    )

    def loss_fn(log_mix, y):
        return F.nll_loss(log_mix.reshape(-1, log_mix.shape[-1]), y.reshape(-1))

    losses, _ = _train(
        ctx, model, opt, text_batches(gen, 16, 32), steps, loss_fn, clip=1.0, sched=sched
    )
    x, _ = next(text_batches(gen, 16, 32))
    with torch.no_grad():
        model(x)
        gate = model.last_gate
    ctx.check("trained (last 10 under 0.7x the first 10), finite", _fell(losses, ratio=0.7))
    ctx.check(
        "the mixture is a mixture (every component keeps over 5% weight)", bool((gate > 0.05).all())
    )


# -- 12. control: bfloat16 autocast throughout, beside a float32 run -------------------------------


@scenario(
    family="zurna_reed_pitch_bf16_gelu_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Zurna reed-pitch regressor (GELU MLP on reed length, staple bore, lip pressure and "
    "blowing-pressure features, 256 fixed recordings full-batch, MSE, RAdam, clipping at 1) trained in bfloat16 autocast "
    "throughout; a float32 run of the same model and data is kept for comparison. The bf16 "
    "losses are visibly noisier (8-bit mantissa) but the run trains. Control.",
)
def h492_zurna_bf16_control(ctx) -> None:
    seeded(4932)
    model = _Net(10, 64, 1, act=nn.GELU)
    ref = _Net(10, 64, 1, act=nn.GELU)
    ref.load_state_dict(model.state_dict())

    def run(net, dtype, attach):
        opt = torch.optim.RAdam(net.parameters(), lr=3e-3)
        if attach:
            ctx.attach(net, opt)
        x, y = next(_readings(torch.Generator().manual_seed(49320), 256, 10, 4932, noise=0.0))
        losses = []
        for _ in range(200):  # full-batch: the float32 curve is smooth, bf16 rounding shows
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
                out = net(x)
            loss = F.mse_loss(out.float(), y)
            loss.backward()
            if attach:
                ctx.grad_norms.append(grad_norm(net))
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            if attach:
                ctx.step(loss)
            opt.zero_grad(set_to_none=True)
        return losses

    ref_losses = run(ref, torch.float32, False)
    losses = run(model, torch.bfloat16, True)

    def roughness(ls):  # mean |second difference of log loss| over the last 100 steps (jitter)
        t = [math.log(v) for v in ls[-100:]]
        return _mean([abs(t[i + 1] - 2 * t[i] + t[i - 1]) for i in range(1, len(t) - 1)])

    ctx.check("bf16 trained (last 10 under 0.3x the first 10), finite", _fell(losses, ratio=0.3))
    ctx.check("float32 trained too", _fell(ref_losses, ratio=0.3))
    ctx.check(
        "bf16 losses over 1.5x as rough as float32's",
        roughness(losses) > 1.5 * roughness(ref_losses),
    )


# -- 13. control: Conv1d classifier, SGD Nesterov, ReduceLROnPlateau, accumulation -----------------


class _StrokeConv(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 7, padding=3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(12, 16, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _strokes(gen, batch=32, length=48, classes=5):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.12 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freq[:, None] * t + phase) * torch.exp(-t / 30.0)
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="mridang_stroke_plateau_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Mridang stroke classifier (ReLU Conv1d over a noisy damped strike waveform with a "
    "random phase, cross-entropy with label smoothing 0.1, SGD Nesterov 0.9, ReduceLROnPlateau, "
    "gradient accumulation 2, clipping at 2). Control.",
)
def h492_mridang_plateau_control(ctx) -> None:
    gen = seeded(4933)
    model = _StrokeConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)

    def after(step, loss):
        plateau.step(loss)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _strokes(gen),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        accumulate=2,
        after=after,
    )
    ctx.check("trained (last 10 under 0.7x the first 10), finite", _fell(losses, ratio=0.7))
