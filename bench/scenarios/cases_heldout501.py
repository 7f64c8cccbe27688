"""Held-out set 501 (``h501_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a shamal dust-storm visibility-grade ReLU classifier whose hidden biases are initialised
at -6 (fc1's units dead from the start, Adagrad), an orrery gear-train drift tanh regressor whose
resumed step reads the loss weight in micro-units (1e6 for 1, Adam's second moment poisoned),
a seiche lake-level hand-written 1-D feature pyramid network fed one shard in millimetres
(AdamW), a kettlebell-snatch bar-path 12-layer ReLU MLP whose He init applies the ReLU gain twice
(exploding through depth, SGD), a maelstrom whirl-depth SiLU net taking log of the current speed
with no clamp (slack water gives log 0, NAdam), a jokulhlaup flood-discharge regressor with
discharges left in litres per second under fp16 autocast (Adam + GradScaler), a bandoneon
bellows-reversal GELU classifier with its temperature typed 0.002 for 2.0 (RAdam), a scythe
peening edge-angle SiLU regressor whose fc1 param group lr is typed 1e-8 for 1e-2 (SGD momentum),
a foehn wall-cloud multi-label BCE tagger whose loss is divided by a count from the wrong mask
for one step (SGD Nesterov) and a sastrugi ridge-height SiLU regressor with its L2 penalty
subtracted (ASGD).

Controls: a penitente ice-spike height ReLU regressor trained as two local-SGD replicas averaged
every 20 steps (SGD momentum); a hoarfrost crystal-habit GELU classifier under fp16 autocast +
GradScaler (AdamW, OneCycleLR, label smoothing, clipping); a sundog halo-brightness Gaussian-NLL
net (Adadelta, two param groups, ReduceLROnPlateau, accumulation 2).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """The file's loop. ``before(step)`` first; ``alter(step, x, y)`` changes a batch;
    ``weight(step)`` multiplies the backpropagated loss; ``after(step, loss)`` runs after the
    optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it.
    ``attach=False``: a reference run, nothing recorded."""
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
            w = weight(step) if weight is not None else 1.0
            (w * loss / accumulate).backward()
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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


# -- 1. loss of plasticity: hidden biases initialised at -6 -----------------------------------------


@scenario(
    family="shamal_dust_storm_visibility_dead_bias_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="Shamal dust-storm visibility-grade classifier (ReLU MLP on wind speed, gust, humidity, "
    "soil moisture and fetch features, five grades, cross-entropy, Adagrad). The init helper "
    "fills the hidden biases with -6.0 (the config's 'sparse start' meant -0.06): every fc1 "
    "pre-activation is negative on every reading, the ReLUs never fire, no gradient reaches fc1 "
    "and the classifier is stuck at the class prior.",
)
def h501_shamal_dead_bias(ctx) -> None:
    gen = seeded(5011)

    def build(bias):
        torch.manual_seed(50110)
        m = _Net(16, 64, 5)
        with torch.no_grad():
            m.fc1.bias.fill_(bias)
            m.fc2.bias.fill_(bias)
        return m

    ref = build(-0.06)
    ref_losses, _ = _train(
        ctx,
        ref,
        torch.optim.Adagrad(ref.parameters(), lr=3e-2),
        _grades(torch.Generator().manual_seed(50111), 64, 16, 5, 5011),
        200,
        F.cross_entropy,
        attach=False,
    )
    model = build(-6.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 16, 5, 5011), 200, F.cross_entropy, classifier=True
    )
    x, _ = next(_grades(gen, 512, 16, 5, 5011))
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(x)))
        ref_dead = dead_fraction(ref.act1(ref.fc1(x)))
    chance = math.log(5)
    ctx.check("over 90% of fc1's units dead at the end", dead > 0.9)
    ctx.check("under 10% dead with the intended bias", ref_dead < 0.1)
    ctx.check(
        "the loss stuck near chance (last 20 over 0.9 ln 5)", _mean(losses[-20:]) > 0.9 * chance
    )
    ctx.check("the intended bias learns (under 0.4 ln 5)", _mean(ref_losses[-20:]) < 0.4 * chance)
    ctx.check("finite", _finite(losses))


# -- 2. Adam's second moment poisoned: a resumed step reads the loss weight in micro-units ---------

ORRERY_ONSET = 80


@scenario(
    family="orrery_gear_train_drift_loss_weight_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ORRERY_ONSET,
    note="Orrery gear-train drift regressor (tanh MLP on tooth counts, wheel radii, arbor "
    "friction and crank-rate features, MSE, Adam with beta2 0.9999). The job is resumed at step "
    "80 and the resumed config reads the loss weight from a field stored in micro-units: for that "
    "one step the loss is multiplied by 1e6. The one giant gradient fills Adam's second moment, "
    "which with beta2 0.9999 takes thousands of steps to forget; the updates shrink and the loss "
    "stalls.",
)
def h501_orrery_loss_weight_micro(ctx) -> None:
    gen = seeded(5012)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.9999))
    moves = []
    prev = {"w": _flat(model)}

    def weight(step):
        return 1.0e6 if step == ORRERY_ONSET else 1.0

    def after(step, loss):
        now = _flat(model)
        moves.append(float((now - prev["w"]).norm()))
        prev["w"] = now

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 5012),
        240,
        F.mse_loss,
        weight=weight,
        after=after,
    )
    k = ORRERY_ONSET
    ctx.check(
        "gradient at the resumed step over 1e4x the median before",
        norms[k] > 1e4 * _median(norms[:k]),
    )
    ctx.check(
        "updates from 30 steps after under 0.2x those before",
        _mean(moves[k + 30 : k + 80]) < 0.2 * _mean(moves[k - 30 : k]),
    )
    ctx.check(
        "trained before (under 0.6x the start)",
        _mean(losses[k - 10 : k]) < 0.6 * _mean(losses[:10]),
    )
    ctx.check(
        "the loss stalls (last 20 over 0.8x the 10 steps before the onset)",
        _mean(losses[-20:]) > 0.8 * _mean(losses[k - 10 : k]),
    )
    ctx.check("finite", _finite(losses))


# -- 3. data outlier: a 1-D feature pyramid network fed one shard in millimetres -------------------


class SeicheFPN(nn.Module):
    """A hand-written 1-D feature pyramid network: a bottom-up convolutional path (64, 32, 16
    samples), a top-down path with nearest upsampling and 1x1 lateral connections, and an
    envelope prediction at each of the three scales."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(1, 16, 5, padding=2)
        self.c2 = nn.Conv1d(16, 32, 5, stride=2, padding=2)
        self.c3 = nn.Conv1d(32, 48, 5, stride=2, padding=2)
        self.lat1 = nn.Conv1d(16, width, 1)
        self.lat2 = nn.Conv1d(32, width, 1)
        self.lat3 = nn.Conv1d(48, width, 1)
        self.smooth1 = nn.Conv1d(width, width, 3, padding=1)
        self.smooth2 = nn.Conv1d(width, width, 3, padding=1)
        self.head1 = nn.Conv1d(width, 1, 3, padding=1)
        self.head2 = nn.Conv1d(width, 1, 3, padding=1)
        self.head3 = nn.Conv1d(width, 1, 3, padding=1)

    def forward(self, x):
        b1 = F.relu(self.c1(x))
        b2 = F.relu(self.c2(b1))
        b3 = F.relu(self.c3(b2))
        p3 = self.lat3(b3)
        p2 = self.lat2(b2) + F.interpolate(p3, scale_factor=2, mode="nearest")
        p1 = self.lat1(b1) + F.interpolate(p2, scale_factor=2, mode="nearest")
        return (
            self.head1(F.relu(self.smooth1(p1))).squeeze(1),
            self.head2(F.relu(self.smooth2(p2))).squeeze(1),
            self.head3(F.relu(p3)).squeeze(1),
        )


def _seiche_batches(gen, batch=32, length=64):
    """Lake-level traces (metres): a standing wave with a slowly varying envelope, plus noise;
    the target is the envelope."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        f = 0.25 + 0.35 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        a0 = 0.3 + 0.7 * torch.rand(batch, 1, generator=gen)
        slope = 0.6 * (torch.rand(batch, 1, generator=gen) - 0.5)
        env = a0 * (1 + slope * torch.sin(t / length * 3.14 + phase))
        x = env * torch.sin(f * t + phase) + 0.05 * torch.randn(batch, length, generator=gen)
        yield x[:, None, :], env


def _pyramid_loss(outs, env):
    targets = (
        env,
        F.avg_pool1d(env[:, None], 2).squeeze(1),
        F.avg_pool1d(env[:, None], 4).squeeze(1),
    )
    return sum(F.mse_loss(o, t) for o, t in zip(outs, targets, strict=True))


SEICHE_ONSET = 120


@scenario(
    family="seiche_lake_level_envelope_fpn1d_forecaster",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SEICHE_ONSET,
    note="Seiche envelope forecaster: a hand-written 1-D feature pyramid network (bottom-up "
    "Conv1d path, top-down path with upsampling and lateral 1x1 connections, an envelope head at "
    "each scale, summed MSE, AdamW, gradient clipping at 1). One gauge's shard at step 120 is "
    "exported in millimetres instead of metres (levels and envelopes 1000x): one huge loss and "
    "gradient, clipped, and the run recovers.",
)
def h501_seiche_fpn_mm_shard(ctx) -> None:
    gen = seeded(5013)
    model = SeicheFPN()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)

    def alter(step, x, y):
        if step == SEICHE_ONSET:
            return 1000.0 * x, 1000.0 * y  # the gauge's shard in millimetres
        return x, y

    losses, norms = _train(
        ctx, model, opt, _seiche_batches(gen), 240, _pyramid_loss, alter=alter, clip=1.0
    )
    k = SEICHE_ONSET
    pre = _mean(losses[k - 20 : k])
    ctx.check("trained before the shard (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("the shard's loss over 1000x the 20 steps before", losses[k] > 1000 * pre)
    ctx.check("the shard's gradient over 20x the median before", norms[k] > 20 * _median(norms[:k]))
    ctx.check("recovered (last 20 under 2x the pre-shard level)", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 4. exploding gradients: the ReLU gain applied twice in a 12-layer MLP -------------------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain * math.sqrt(2.0 / lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x, keep=None):
        h = x
        for lin in self.layers:
            z = lin(h)
            if keep is not None:
                z.retain_grad()
                keep.append(z)
            h = F.relu(z)
        return self.head(h).squeeze(-1)


def _depth_ratio(model, x, y):
    keep = []
    F.mse_loss(model(x, keep), y).backward()
    ratio = float(keep[0].grad.norm() / keep[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    return ratio


@scenario(
    family="kettlebell_snatch_bar_path_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Kettlebell-snatch bar-path regressor (12-layer ReLU MLP on wrist, hip and bell "
    "accelerometer features, MSE, plain SGD). The init helper draws std = gain * sqrt(2/fan_in) "
    "and is called with gain=sqrt(2) (the ReLU gain applied twice): activations and gradients "
    "grow by about 1.4x per layer, the gradient at the first layer is far above the last's, and "
    "the loss blows up part-way through the geometric warm-up (1e-6 to 1e-2 over 100 steps) "
    "that trains the correctly initialised net.",
)
def h501_kettlebell_double_gain(ctx) -> None:
    gen = seeded(5014)
    torch.manual_seed(50140)
    ref = _Deep(12, 48, 12, 1.0)
    torch.manual_seed(50140)
    model = _Deep(12, 48, 12, math.sqrt(2.0))
    x0, y0 = next(_readings(torch.Generator().manual_seed(50141), 128, 12, 5014))
    ratio = _depth_ratio(model, x0, y0)
    ref_ratio = _depth_ratio(ref, x0, y0)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=1e-6)

    def ref_warm(step):
        for g in ref_opt.param_groups:
            g["lr"] = 1e-6 * (1e4) ** min(1.0, step / 100)

    ref_losses, _ = _train(
        ctx,
        ref,
        ref_opt,
        _readings(torch.Generator().manual_seed(50142), 64, 12, 5014),
        150,
        F.mse_loss,
        before=ref_warm,
        attach=False,
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)

    def warm(step):  # geometric warm-up from 1e-6 to the tuned 1e-2 over 100 steps
        for g in opt.param_groups:
            g["lr"] = 1e-6 * (1e4) ** min(1.0, step / 100)

    def stop_big(step, loss):
        if loss > 1e8:
            raise _Blown

    losses = []
    try:
        losses, _ = _train(
            ctx,
            model,
            opt,
            _readings(gen, 64, 12, 5014),
            150,
            F.mse_loss,
            before=warm,
            after=stop_big,
        )
    except _Blown:
        losses = ctx.losses
    ctx.check("dL/dz at layers.0 over 10x the last layer's", ratio > 10)
    ctx.check("under 3x with the intended init", ref_ratio < 3)
    ctx.check(
        "the loss blows up (non-finite or over 1e4x its start)",
        (not _finite(losses)) or max(losses) > 1e4 * losses[0],
    )
    ctx.check("the intended init trains", _fell(ref_losses))


class _Blown(Exception):
    pass


# -- 5. nonfinite: log of the current speed with no clamp -----------------------------------------

MAELSTROM_ONSET = 100


class LogFeature(nn.Module):
    """log of the current-speed reading (column 0), appended to the other features."""

    def forward(self, x):
        return torch.cat([x[:, 1:], torch.log(x[:, :1])], 1)


class MaelstromNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_speed = LogFeature()
        self.net = _Net(8, 48, 1, act=nn.SiLU)

    def forward(self, x):
        return self.net(self.log_speed(x))


def _maelstrom_batches(gen, batch=64):
    g = torch.Generator().manual_seed(50150)
    w = torch.randn(7, generator=g)
    while True:
        speed = 0.3 + 2.5 * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, 7, generator=gen)
        y = 0.8 * torch.log(speed).squeeze(1) + torch.tanh(rest @ w / 3)
        yield torch.cat([speed, rest], 1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="maelstrom_whirl_depth_log_silu_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("log_speed",),
    diverges=MAELSTROM_ONSET,
    heldout=True,
    onset=MAELSTROM_ONSET,
    note="Maelstrom whirl-depth regressor (SiLU MLP on tidal current speed, lunar phase, wind and "
    "bathymetry features, MSE, NAdam). The feature module takes log of the current speed with no "
    "clamp; the batch at step 100 comes from slack water where the current meter reads exactly 0: "
    "log 0 = -inf, the SiLU gives -inf * 0 = NaN and the loss is NaN at step 100.",
)
def h501_maelstrom_log_zero(ctx) -> None:
    gen = seeded(5015)
    model = MaelstromNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == MAELSTROM_ONSET:
            x = x.clone()
            x[:8, 0] = 0.0  # slack water
        return x, y

    losses, _ = _train(ctx, model, opt, _maelstrom_batches(gen), 200, F.mse_loss, alter=alter)
    k = MAELSTROM_ONSET
    ctx.check(f"the loss is NaN at step {k}", len(losses) > k and math.isnan(losses[k]))
    ctx.check("finite before", _finite(losses[:k]))
    ctx.check(
        "trained before (under 0.5x the start)",
        _mean(losses[k - 10 : k]) < 0.5 * _mean(losses[:10]),
    )


# -- 6. amp overflow: discharges left in litres per second under fp16 autocast --------------------


JOKULHLAUP_DIVERGES = 98


@scenario(
    family="jokulhlaup_flood_discharge_raw_litres_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=JOKULHLAUP_DIVERGES,
    heldout=True,
    note="Jokulhlaup (glacial outburst flood) peak-discharge regressor (ReLU MLP on lake level, "
    "ice-dam thickness, melt rate and tunnel features, MSE, Adam, fp16 autocast with a "
    "GradScaler). The gauge's discharges are left in litres per second (80 000 to 120 000, above "
    "fp16's 65504) instead of cubic metres: as the head's fp16 output grows to fit them it "
    "overflows to inf, the loss is inf and the scaler skips step after step.",
)
def h501_jokulhlaup_fp16_litres(ctx) -> None:
    gen = seeded(5016)
    model = _Net(8, 64, 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    g = torch.Generator().manual_seed(50160)
    w = torch.randn(8, generator=g)
    losses, scales, peaks = [], [], []
    for _step in range(220):
        x = torch.randn(64, 8, generator=gen)
        y = 1.0e5 * (1.0 + 0.2 * torch.tanh(x @ w / math.sqrt(8)))  # litres per second
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
            break
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
    ctx.check(f"the first inf is at step {JOKULHLAUP_DIVERGES}", first_bad == JOKULHLAUP_DIVERGES)


# -- 7. softmax collapse: temperature typed 0.002 for 2.0 -----------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="bandoneon_bellows_reversal_temperature_gelu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bandoneon bellows-reversal classifier (GELU MLP on bellows pressure, button and "
    "air-valve features, six reversal kinds, cross-entropy, RAdam). The logits are divided by a "
    "temperature typed 0.002 instead of 2.0: the softmax saturates, most rows' target "
    "probability rounds to exactly 1.0 in float32 and their gradient vanishes.",
)
def h501_bandoneon_temperature(ctx) -> None:
    gen = seeded(5017)
    torch.manual_seed(50170)
    ref = _TempNet(12, 48, 6, 2.0)
    torch.manual_seed(50170)
    model = _TempNet(12, 48, 6, 0.002)
    _train(
        ctx,
        ref,
        torch.optim.RAdam(ref.parameters(), lr=3e-3),
        _grades(torch.Generator().manual_seed(50171), 64, 12, 6, 5017),
        200,
        F.cross_entropy,
        attach=False,
    )
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 12, 6, 5017), 200, F.cross_entropy, classifier=True
    )
    x, y = next(_grades(gen, 512, 12, 6, 5017))
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
        ref_frac = collapsed_fraction(ref(x), y)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("under 5% at the intended temperature", ref_frac < 0.05)
    ctx.check("finite", _finite(losses))


# -- 8. update ratio out of range: fc1's param group lr typed 1e-8 for 1e-2 ------------------------


@scenario(
    family="scythe_peening_edge_two_group_silu_regressor",
    optimizer="SGD momentum",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Scythe-peening edge-angle regressor (SiLU MLP on hammer blows, anvil jig, blade steel "
    "and moisture features, MSE, SGD momentum 0.9 with two param groups). The fc1 group's lr is "
    "typed 1e-8 instead of 1e-2: fc1 practically never moves while the rest trains.",
)
def h501_scythe_group_lr_typo(ctx) -> None:
    gen = seeded(5018)
    model = _Net(10, 48, 1, act=nn.SiLU)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.SGD(
        [{"params": model.fc1.parameters(), "lr": 1e-8}, {"params": rest, "lr": 1e-2}],
        momentum=0.9,
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5018), 200, F.mse_loss)
    ctx.check("fc1 moved under 1e-5 of its norm", _rel_change(model.fc1.weight, w1) < 1e-5)
    ctx.check("fc2 moved over 5% of its norm", _rel_change(model.fc2.weight, w2) > 0.05)
    ctx.check("finite", _finite(losses))


# -- 9. gradient spike: the loss divided by a count from the wrong mask for one step --------------

FOEHN_ONSET = 110


@scenario(
    family="foehn_wall_cloud_multilabel_bce_tagger",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=FOEHN_ONSET,
    note="Foehn wall-cloud tagger (ReLU MLP on pressure gradient, lee temperature, humidity and "
    "crest-wind features, eight weather tags, summed BCE divided by the number of valid tag "
    "slots, SGD Nesterov, clipping at 1). At step 110 the count is taken from the wrong mask "
    "(the missing-tag mask, one slot) instead of the valid one (512 slots): the backpropagated "
    "loss is 512x for that step while the logged mean loss is ordinary; the clip holds it.",
)
def h501_foehn_wrong_mask_count(ctx) -> None:
    gen = seeded(5019)
    g = torch.Generator().manual_seed(50190)
    proj = torch.randn(12, 8, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 12, generator=gen)
            yield (
                x,
                (x @ proj / math.sqrt(12) + 0.3 * torch.randn(64, 8, generator=gen) > 0).float(),
            )

    model = _Net(12, 48, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    def weight(step):
        return 512.0 if step == FOEHN_ONSET else 1.0  # n_valid from the wrong mask

    losses, norms = _train(
        ctx, model, opt, batches(), 220, F.binary_cross_entropy_with_logits, weight=weight, clip=1.0
    )
    k = FOEHN_ONSET
    others = norms[k - 40 : k] + norms[k + 1 : k + 40]
    ctx.check("gradient at the step over 50x the median around it", norms[k] > 50 * _median(others))
    ctx.check(
        "the logged loss ordinary (under 1.5x the 10 before)",
        losses[k] < 1.5 * _mean(losses[k - 10 : k]),
    )
    ctx.check("trained", _fell(losses))


# -- 10. loss divergence: the L2 penalty subtracted ---------------------------------------------


@scenario(
    family="sastrugi_ridge_height_wd_sign_silu_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Sastrugi ridge-height regressor (SiLU MLP on wind speed, snow age, temperature and "
    "fetch features, MSE, ASGD). The hand-written L2 penalty is subtracted from the loss "
    "instead of added (a sign slip when the regulariser was moved into the loss function): the "
    "weights grow steadily and the loss climbs slowly after its best, with no jump.",
)
def h501_sastrugi_l2_sign(ctx) -> None:
    gen = seeded(50110)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)
    wd = 1.0e-1
    norm0 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())

    def loss_fn(out, y):
        return F.mse_loss(out, y)

    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, 50110)
    losses = []
    for _step in range(300):
        x, y = next(batches)
        loss = loss_fn(model(x), y)
        l2 = sum((p * p).sum() for p in model.parameters())
        (loss - wd * l2).backward()  # the sign slip
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    norm1 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    windows = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9, 10)]
    best = min(windows)
    jumps = [b / max(a, 1e-12) for a, b in zip(windows[:-1], windows[1:], strict=True)]
    ctx.check("weights over 1.5x their initial norm", norm1 > 1.5 * norm0)
    ctx.check("the loss climbs over 2x its best 10-step mean", _mean(losses[-20:]) > 2 * best)
    ctx.check("no 10-step mean over 3x the one before", max(jumps) < 3)
    ctx.check("finite", _finite(losses))


# -- 11. control: two local-SGD replicas averaged every 20 steps ---------------------------------


@scenario(
    family="penitente_ice_spike_height_local_sgd_relu_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Penitente ice-spike height regressor (ReLU MLP on sun elevation, humidity, wind and "
    "snow-age features, MSE, SGD momentum 0.9, cosine schedule) trained as two replicas on "
    "different batches whose weights are averaged every 20 steps (local SGD): the monitored "
    "replica's weights jump at each averaging. Control.",
)
def h501_penitente_local_sgd(ctx) -> None:
    gen = seeded(50111)
    model = _Net(10, 48, 1)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    opt2 = torch.optim.SGD(twin.parameters(), lr=2e-2, momentum=0.9)
    steps = 240
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, steps)
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, 50111)
    losses, moves, jumps = [], [], []
    for step in range(steps):
        before = _flat(model)
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        x2, y2 = next(batches)
        F.mse_loss(twin(x2), y2).backward()
        opt2.step()
        sched.step()
        sched2.step()
        moved = _flat(model)
        if (step + 1) % 20 == 0:
            with torch.no_grad():
                for p, q in zip(model.parameters(), twin.parameters(), strict=True):
                    avg = 0.5 * (p + q)
                    p.copy_(avg)
                    q.copy_(avg)
            jumps.append(float((_flat(model) - moved).norm()))
        moves.append(float((moved - before).norm()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        opt2.zero_grad(set_to_none=True)
    ctx.check("trained (last 10 under 0.5x the first 10)", _fell(losses, ratio=0.5))
    ctx.check("the averaging jumps over 2x the median step", _median(jumps) > 2 * _median(moves))
    ctx.check("finite", _finite(losses))


# -- 12. control: fp16 autocast + GradScaler, AdamW, OneCycleLR, label smoothing, clipping --------


@scenario(
    family="hoarfrost_crystal_habit_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hoarfrost crystal-habit classifier (GELU MLP on supersaturation, temperature, wind and "
    "surface features, seven habits, cross-entropy with label smoothing 0.1, noisy readings) "
    "under fp16 autocast with a GradScaler, AdamW, OneCycleLR, clipping at 1 after unscaling. "
    "Control.",
)
def h501_hoarfrost_fp16_control(ctx) -> None:
    gen = seeded(50112)
    model = _Net(14, 64, 7, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 240
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _grades(gen, 64, 14, 7, 50112, spread=1.3)
    losses, scales = [], []
    for _step in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        scales.append(float(scaler.get_scale()))
        ctx.scales.append(scales[-1])
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained (last 10 under 0.5x the first 10)", _fell(losses, ratio=0.5))
    ctx.check("the scale never fell below its start / 16", min(scales) >= scales[0] / 16)
    ctx.check("finite", _finite(losses))


# -- 13. control: Gaussian NLL, Adadelta, two groups, ReduceLROnPlateau, accumulation 2 -----------


class _MeanVar(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean_head(h), F.softplus(self.var_head(h)) + 1e-4], 1)


def _nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


@scenario(
    family="sundog_halo_brightness_gaussian_nll_adadelta_net",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sundog halo-brightness net (SiLU MLP with a mean and a softplus variance head on sun "
    "elevation, ice-crystal, cirrus and humidity features, Gaussian NLL, Adadelta with two param "
    "groups (variance head at half rate), ReduceLROnPlateau, gradient accumulation 2). Control.",
)
def h501_sundog_nll_control(ctx) -> None:
    gen = seeded(50113)
    model = _MeanVar(10)
    body = [p for n, p in model.named_parameters() if not n.startswith("var_head.")]
    opt = torch.optim.Adadelta(
        [{"params": body, "lr": 1.0}, {"params": model.var_head.parameters(), "lr": 0.5}]
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def after(step, loss):
        plateau.step(loss)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 50113, noise=0.1),
        200,
        _nll,
        after=after,
        accumulate=2,
    )
    ctx.check(
        "trained (last 10 over 0.5 below the first 10)",
        _mean(losses[-10:]) < _mean(losses[:10]) - 0.5,
    )
    ctx.check("finite", _finite(losses))
