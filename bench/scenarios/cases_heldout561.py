"""Held-out set 561 (``h561_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: bagel kettle-boil regressor fed a hydrometer reading in raw counts under fp16 autocast
(amp_overflow, AdamW); pretzel lye-dip browning regressor with its L2 penalty subtracted
(loss_divergence, ASGD); croquet hoop-run regressor whose MultiStepLR gamma is typed 10 for 0.1
(sharpness_above_limit, plain SGD); hammock weave-sag two-tower regressor with the rope group's lr
typed 1e-9 (update_ratio_out_of_range, RMSprop); fly-fishing leader-drift regressor fed one shard
in mm/s (data_outlier, NAdam); kabaddi raid-touch BCE classifier with a one-step stage weight of
1000 (gradient_spike, SGD Nesterov); theremin antenna-gap regressor taking the sqrt of a negative
gap (nonfinite, Adagrad); geomagnetic-storm Kp forecaster with a hand-written gated diagonal
state-space layer whose discretisation sign is flipped (exploding_gradients, SGD momentum);
accordion bellows-reed classifier with temperature typed 1e-3 (softmax_collapse, RAdam); bocce
pallino-roll regressor with fc2's bias filled with -4 (loss_of_plasticity, Adam).
Controls: snooker cue-spin classifier with an auxiliary spin-rate loss ramped from 0 (the total
loss rises while the main loss falls, alarming-looking, Adam); luge track-curve classifier (SGD
momentum, OneCycleLR, label smoothing, accumulation 2, clipping); cobbler heel-wear tied-weight
autoencoder (AdamW, Huber, ReduceLROnPlateau, clipping, noisy gauges).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


def _first_bad(xs: list[float]):
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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, loss)``
    returns the loss actually backpropagated, ``after(step, loss)``. Stops after a non-finite
    loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised gauge readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of loss_fn(model(x), y) by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. amp overflow: a hydrometer column in raw counts under fp16 autocast -----------------------


@scenario(
    family="bagel_kettle_boil_time_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=85,
    onset=85,
    heldout=True,
    note="Bagel kettle-boil time regressor (SiLU MLP on water temperature, malt syrup, lye "
    "strength, dough weight, proof time and a hydrometer reading, MSE, AdamW, fp16 autocast + "
    "GradScaler). From step 85 a new bakery's feed sends the hydrometer as raw ADC counts "
    "(about 3e5) without the standardisation step: autocast runs fc1 in fp16, whose range ends "
    "at 65504, fc1's output is non-finite (the same batch is finite in float32) and the loss is "
    "non-finite at step 85.",
)
def h561_bagel_hydrometer_raw_counts(ctx):
    gen = seeded(5611)
    model = _Net(6, 64, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    losses, fc1_bad = [], []
    batches = _readings(gen, 64, 6, 56110)
    bad_x = None
    for step in range(130):
        x, y = next(batches)
        if step >= 85:
            x = x.clone()
            x[:, 5] = 3.0e5 + 2.0e4 * x[:, 5]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_bad.append(seen["fc1"][1])
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    ctx.check("inputs beyond fp16's range", bad_x is not None and float(bad_x.abs().max()) > 65504)
    ctx.check("loss first non-finite at step 85", _first_bad(losses) == 85)
    ctx.check("fc1's fp16 output non-finite at step 85", len(fc1_bad) > 85 and fc1_bad[85])
    ctx.check("fc1 finite before step 85", not any(fc1_bad[:85]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 85", _mean(losses[75:85]) < 0.7 * _mean(losses[:10]))


# -- 2. loss divergence: an L2 penalty subtracted instead of added --------------------------------


@scenario(
    family="pretzel_lye_dip_browning_negative_l2_tanh_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Pretzel lye-dip browning regressor (tanh MLP on lye concentration, dip seconds, dough "
    "hydration, oven temperature, salt and proof time, MSE, ASGD). The hand-written L2 penalty "
    "was moved into a helper as 'loss - wd * sum(w ** 2)' (a sign slip), so every step pushes "
    "the weights outward: the weights grow steadily and the logged MSE, after falling, climbs "
    "slowly to several times its best with no single jump.",
)
def h561_pretzel_l2_sign_slip(ctx):
    gen = seeded(5612)
    model = _Net(6, 48, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=1e9)
    wd = 0.06
    w0 = float(_flat(model).norm())

    def backprop(step, loss):
        penalty = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - wd * penalty

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 56120), 260, F.mse_loss, backprop=backprop
    )
    best = min(_mean(losses[i : i + 10]) for i in range(0, 100, 5))
    jumps = [b / max(a, 1e-8) for a, b in zip(losses[:-1], losses[1:], strict=False)]
    ctx.check("run finite", _finite(losses))
    ctx.check("weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("late loss over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("no single step jumps over 3x", max(jumps) < 3.0)
    ctx.check("loss fell first", best < 0.8 * _mean(losses[:10]))


# -- 3. sharpness above limit: MultiStepLR gamma typed 10 for 0.1 ---------------------------------

_CROQUET_MILESTONE = 70


@scenario(
    family="croquet_hoop_run_distance_gamma_typo_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=_CROQUET_MILESTONE,
    heldout=True,
    note="Croquet hoop-run distance regressor (tanh MLP on mallet speed, stance, ball spin, lawn "
    "cut height, dew and hoop width, MSE, plain SGD, MultiStepLR). The decay factor was typed "
    "gamma=10.0 for 0.1, so at the step-70 milestone the lr jumps from 0.1 to 1.0 instead of "
    "dropping: lr x top Hessian eigenvalue goes from under 2 to well over 2 and the loss blows "
    "up.",
)
def h561_croquet_gamma_typo(ctx):
    gen = seeded(5613)
    model = _Net(6, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[_CROQUET_MILESTONE, _CROQUET_MILESTONE + 20], gamma=10.0
    )
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(9), 256, 6, 56130))
    state = {}

    def before(step):
        if step == _CROQUET_MILESTONE:
            state["eig"] = _top_hessian_eig(model, F.mse_loss, probe_x, probe_y)
            state["lr"] = opt.param_groups[0]["lr"]

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 56130),
        160,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    eig = state.get("eig", 0.0)
    lr = state.get("lr", 0.0)
    ctx.check("lr jumped to 1.0 at the milestone", abs(lr - 1.0) < 1e-6)
    ctx.check("old lr x sharpness under 2", 0.1 * eig < 2.0)
    ctx.check("new lr x sharpness over 2", lr * eig > 2.0)
    ctx.check("trained before the milestone", _mean(losses[60:70]) < 0.8 * _mean(losses[:10]))
    late = losses[_CROQUET_MILESTONE:]
    ctx.check(
        "loss blows up after the milestone",
        (not _finite(late)) or max(late) > 20 * _mean(losses[60:70]),
    )


# -- 4. update ratio out of range: the rope tower's lr typed 1e-9 ---------------------------------


class _HammockNet(nn.Module):
    """Two towers (rope readings, fabric readings) joined by a head."""

    def __init__(self):
        super().__init__()
        self.rope_tower = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Linear(32, 16))
        self.fabric_tower = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        z = torch.cat([self.rope_tower(x[:, :4]), self.fabric_tower(x[:, 4:])], -1)
        return self.head(F.gelu(z)).squeeze(-1)


@scenario(
    family="hammock_weave_sag_two_tower_gelu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("rope_tower", "rope_tower.0", "rope_tower.2"),
    diverges=None,
    heldout=True,
    note="Hammock weave-sag regressor (two GELU towers: rope diameter, knot spacing, anchor "
    "height and span; fabric weave, thread count, load and humidity; MSE, RMSprop with param "
    "groups). The rope tower's group lr was typed 1e-9 (for 1e-3) in the config: the rope "
    "tower never moves while the fabric tower and head train, and the loss falls only partly.",
)
def h561_hammock_rope_group_lr(ctx):
    gen = seeded(5614)
    model = _HammockNet()
    opt = torch.optim.RMSprop(
        [
            {"params": model.rope_tower.parameters(), "lr": 1e-9},
            {"params": model.fabric_tower.parameters(), "lr": 1e-3},
            {"params": model.head.parameters(), "lr": 1e-3},
        ]
    )
    rope0, fabric0 = _flat(model.rope_tower), _flat(model.fabric_tower)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 56140), 200, F.mse_loss)
    ctx.check("rope tower moved under 1e-5", _rel(_flat(model.rope_tower), rope0) < 1e-5)
    ctx.check("fabric tower moved over 1e-2", _rel(_flat(model.fabric_tower), fabric0) > 1e-2)
    ctx.check("run finite", _finite(losses))
    ctx.check("loss fell somewhat", _mean(losses[-10:]) < 0.95 * _mean(losses[:10]))


# -- 5. data outlier: one shard of drift speeds in mm/s -------------------------------------------

_FLY_ONSET = 110


@scenario(
    family="fly_fishing_leader_drift_speed_silu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=_FLY_ONSET,
    heldout=True,
    note="Fly-fishing leader drift-speed regressor (SiLU MLP on current speed, leader length, "
    "tippet diameter, fly weight, wind and mend count, MSE, NAdam, clipping at 1.0). One shard "
    "from a new gauge logged the target drift speed in mm/s instead of m/s; it arrives as the "
    "batch at step 110: the loss jumps over 100x and the gradient over 10x for that one step, "
    "the clip holds it, and the run recovers.",
)
def h561_fly_fishing_mm_shard(ctx):
    gen = seeded(5615)
    model = _Net(6, 48, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == _FLY_ONSET:
            return x, y * 1000.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 56150), 200, F.mse_loss, alter=alter, clip=1.0
    )
    k = _FLY_ONSET
    ctx.check("loss over 100x at the shard", losses[k] > 100 * _mean(losses[k - 10 : k]))
    ctx.check("gradient over 10x at the shard", norms[k] > 10 * _mean(norms[k - 10 : k]))
    ctx.check("run finite", _finite(losses))
    ctx.check("recovers", _mean(losses[-10:]) < 2 * _mean(losses[k - 10 : k]))


# -- 6. gradient spike: a stage-switch loss weight of 1000 for one step ---------------------------

_KABADDI_ONSET = 130


@scenario(
    family="kabaddi_raid_touch_gelu_bce_classifier",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=_KABADDI_ONSET,
    heldout=True,
    note="Kabaddi raid touch-point BCE classifier (GELU MLP on raider speed, feint count, "
    "defender spacing, ankle-hold attempts, breath time and mat position, BCEWithLogits, SGD "
    "Nesterov momentum 0.9, clipping at 1.0). When the curriculum switches stage at step 130 "
    "the stage weight is read from a dict keyed in per-mille (1000) rather than 1.0 for that "
    "one step: the backpropagated gradient jumps over 100x while the logged loss is ordinary; "
    "the clip holds it.",
)
def h561_kabaddi_stage_weight(ctx):
    gen = seeded(5616)
    model = _Net(6, 48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(56160)
    w = torch.randn(6, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 6, generator=gen)
            yield x, ((x @ w + 0.3 * torch.randn(64, generator=gen)) > 0).float()

    def backprop(step, loss):
        return loss * (1000.0 if step == _KABADDI_ONSET else 1.0)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        batches(),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    k = _KABADDI_ONSET
    ctx.check("gradient over 100x at step 130", norms[k] > 100 * _mean(norms[k - 10 : k]))
    ctx.check("logged loss ordinary at step 130", losses[k] < 2 * _mean(losses[k - 10 : k]))
    ctx.check("trained", _fell(losses))
    ctx.check("run finite", _finite(losses))


# -- 7. nonfinite: sqrt of a negative antenna gap -------------------------------------------------


class _AntennaGap(nn.Module):
    """Turns the hand-to-antenna distance into sqrt(distance - offset) (no clamp)."""

    def __init__(self, offset=0.0):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        gap = torch.sqrt(x[:, :1] - self.offset)
        return torch.cat([gap, x[:, 1:]], -1)


class _ThereminNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gap_feature = _AntennaGap()
        self.fc1 = nn.Linear(6, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(self.gap_feature(x)))))
        return self.head(h).squeeze(-1)


_THEREMIN_ONSET = 80


@scenario(
    family="theremin_antenna_gap_sqrt_gelu_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("gap_feature",),
    diverges=_THEREMIN_ONSET,
    onset=_THEREMIN_ONSET,
    heldout=True,
    note="Theremin pitch regressor (GELU MLP on sqrt of hand-to-antenna distance, volume-loop "
    "distance, room humidity, oscillator warm-up, grounding and player height, MSE, Adagrad). "
    "The gap feature takes sqrt(distance) with no clamp; at step 80 a recalibrated proximity "
    "sensor reports a slightly negative distance for one sample: sqrt of a negative, NaN in "
    "gap_feature's output, NaN loss at step 80.",
)
def h561_theremin_negative_gap(ctx):
    gen = seeded(5617)
    model = _ThereminNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    nan_out = []
    model.gap_feature.register_forward_hook(
        lambda m, i, o: nan_out.append(bool(torch.isnan(o).any()))
    )
    base = _readings(gen, 64, 6, 56170)

    def batches():
        while True:
            x, y = next(base)
            x = x.clone()
            x[:, 0] = 0.2 + torch.rand(64, generator=gen)
            y = y + 0.8 * torch.sqrt(x[:, 0])
            yield x, y

    def alter(step, x, y):
        if step == _THEREMIN_ONSET:
            x = x.clone()
            x[3, 0] = -0.02
        return x, y

    losses, _ = _loop(ctx, model, opt, batches(), 150, F.mse_loss, alter=alter)
    k = _THEREMIN_ONSET
    ctx.check("loss first non-finite at step 80", _first_bad(losses) == k)
    ctx.check("gap_feature output NaN at step 80", len(nan_out) > k and nan_out[k])
    ctx.check("gap_feature finite before step 80", not any(nan_out[:k]))
    ctx.check("trained before step 80", _mean(losses[70:80]) < 0.7 * _mean(losses[:10]))


# -- 8. exploding gradients: a gated diagonal SSM with a flipped discretisation sign ---------------


class _DiagonalSSM(nn.Module):
    """A hand-written gated diagonal linear recurrence (S4D/Mamba-style):
    h_t = a * h_{t-1} + dt * (B x_t),  y_t = (C h_t) * silu(gate(x_t)),  a = exp(dt * A)."""

    def __init__(self, d_in, d_state, sign=-1.0):
        super().__init__()
        self.log_a = nn.Parameter(torch.log(torch.linspace(0.4, 1.6, d_state)))
        self.log_dt = nn.Parameter(torch.full((d_state,), math.log(0.1)))
        self.sign = sign
        self.B = nn.Linear(d_in, d_state, bias=False)
        self.C = nn.Linear(d_state, d_in, bias=False)
        self.gate = nn.Linear(d_in, d_in)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        dt = self.log_dt.exp()
        # meant: A = -exp(log_a) (a stable decay); the port wrote sign=+1
        a = torch.exp(dt * self.sign * self.log_a.exp())
        u = self.B(x) * dt
        h = torch.zeros(x.shape[0], u.shape[-1])
        ys, self.states = [], []
        for t in range(x.shape[1]):
            h = a * h + u[:, t]
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
            ys.append(self.C(h))
        return torch.stack(ys, 1) * F.silu(self.gate(x))


class _KpForecaster(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 16)
        self.ssm = _DiagonalSSM(16, 16, sign=1.0)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.ssm(h)
        return self.head(h[:, -1]).squeeze(-1)


@scenario(
    family="geomagnetic_storm_kp_diagonal_ssm_forecaster",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("ssm",),
    diverges=None,
    heldout=True,
    note="Geomagnetic-storm Kp forecaster (a hand-written gated diagonal state-space layer, "
    "S4D/Mamba-style, over 40 hourly readings of solar-wind speed, density and Bz; MSE; SGD "
    "momentum 0.9). Porting the discretisation a = exp(dt * A) with A = -exp(log_a), the minus "
    "sign was dropped: every state has |a| > 1 (1.04 to 1.17), so the recurrence grows through "
    "time and the gradient at the first time step is over 30x that at the last; the loss starts "
    "high and the run limps on without blowing up (lr 3e-3 is small enough).",
)
def h561_kp_ssm_sign_flip(ctx):
    gen = seeded(5618)
    model = _KpForecaster()
    opt = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    ctx.attach(model, opt)
    steps, t_len = 120, 40
    losses, ratios = [], []
    for _ in range(steps):
        phase = torch.rand(32, 1, generator=gen) * 6.28
        t = torch.arange(t_len).float()[None] * 0.3
        x = torch.stack(
            [
                torch.sin(t + phase),
                torch.cos(0.5 * t + phase),
                0.3 * torch.randn(32, t_len, generator=gen),
            ],
            -1,
        )
        y = torch.sin(t_len * 0.3 + phase[:, 0]) + 0.05 * torch.randn(32, generator=gen)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        st = model.ssm.states
        if st[0].grad is not None and st[-1].grad is not None:
            ratios.append(float(st[0].grad.norm() / (st[-1].grad.norm() + 1e-30)))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    with torch.no_grad():
        a = torch.exp(model.ssm.log_dt.exp() * model.ssm.sign * model.ssm.log_a.exp())
    ctx.check("every decay above 1", bool((a > 1.0).all()))
    ctx.check("first-step state gradient over 30x the last's", bool(ratios) and ratios[0] > 30)
    ctx.check("first-step state gradient still over 10x late", bool(ratios) and ratios[-1] > 10)
    ctx.check("run finite", _finite(losses))


# -- 9. softmax collapse: temperature typed 1e-3 --------------------------------------------------


class _ReedNet(_Net):
    def __init__(self, temperature):
        super().__init__(10, 48, out=6)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="accordion_bellows_reed_temperature_relu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Accordion bellows-reed fault classifier (ReLU MLP on bellows pressure, reed-block "
    "spectra and valve timings, 6 fault classes, cross-entropy, RAdam). The logit temperature "
    "was typed 1e-3 for 1.0 in the config: the logits are scaled by 1000, the softmax rounds "
    "the target probability to exactly 1.0 in float32 for over 40% of rows.",
)
def h561_accordion_temperature_typo(ctx):
    gen = seeded(5619)
    model = _ReedNet(1e-3)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    fracs = []
    last = {}

    def after(step, loss):
        fracs.append(collapsed_fraction(last["logits"], last["y"]))

    def loss_fn(logits, y):
        last["logits"], last["y"] = logits.detach(), y
        return F.cross_entropy(logits, y)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 6, 56190, spread=1.2),
        160,
        loss_fn,
        classifier=True,
        after=after,
    )
    ctx.check("over 40% of rows' target probability exactly 1.0", max(fracs[-20:]) > 0.4)
    ctx.check(
        "max logit over 100", float(last["logits"].abs().max()) > 100 if "logits" in last else 0
    )
    ctx.check("run finite", _finite(losses))


# -- 10. loss of plasticity: fc2 bias filled with -4 from a gate's init ---------------------------


@scenario(
    family="bocce_pallino_roll_dead_bias_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Bocce pallino-roll distance regressor (ReLU MLP on throw speed, release angle, court "
    "surface, slope, ball weight and spin, MSE, Adam). A shared init helper meant for a gate "
    "layer fills fc2's bias with -4: from the first step over 80% of act2's units never fire, "
    "receive no gradient and stay dead all run; the loss barely falls.",
)
def h561_bocce_dead_bias(ctx):
    gen = seeded(5620)
    model = _Net(6, 48)
    with torch.no_grad():
        model.fc2.bias.fill_(-4.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe_x, _ = next(_readings(torch.Generator().manual_seed(3), 512, 6, 56200))
    feats = {}
    model.act2.register_forward_hook(lambda m, i, o: feats.__setitem__("h", o.detach()))
    with torch.no_grad():
        model(probe_x)
    dead0 = dead_fraction(feats["h"])
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 56200), 200, F.mse_loss)
    with torch.no_grad():
        model(probe_x)
    dead1 = dead_fraction(feats["h"])
    ctx.check("over 80% of act2 dead at the start", dead0 > 0.8)
    ctx.check("over 80% of act2 dead at the end", dead1 > 0.8)
    ctx.check("run finite", _finite(losses))


# -- 11. control (alarming-looking): an auxiliary loss ramped up from 0 ---------------------------


class _SnookerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 5)
        self.spin_head = nn.Linear(64, 1)

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return self.head(h), self.spin_head(h).squeeze(-1)


@scenario(
    family="snooker_cue_spin_aux_ramp_gelu_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Snooker shot-type classifier (GELU MLP on cue-tip offset, cue speed, elevation, bridge "
    "length, cloth nap and cushion distances; 5 shot types, cross-entropy) with an auxiliary "
    "spin-rate regression head whose MSE weight is ramped linearly from 0 to 2 over the run "
    "(the spin rate is mostly unexplained by the features, so its loss has a high floor). The "
    "total loss logged rises over the second half while the main cross-entropy keeps falling: "
    "alarming-looking, healthy (Adam, lr 1e-3).",
)
def h561_snooker_aux_ramp(ctx):
    gen = seeded(5621)
    model = _SnookerNet()
    opt = torch.optim.Adam(model.parameters(), lr=4e-4)
    ctx.attach(model, opt)
    base = _grades(gen, 64, 8, 5, 56210, spread=1.3)
    steps = 220
    totals, mains, auxes = [], [], []
    for step in range(steps):
        x, y = next(base)
        spin = 0.3 * x[:, 0] + torch.randn(64, generator=gen)
        ctx.targets(y)
        logits, spin_hat = model(x)
        main = F.cross_entropy(logits, y)
        aux = F.mse_loss(spin_hat, spin)
        weight = 2.0 * step / (steps - 1)
        total = main + weight * aux
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        totals.append(float(total.detach()))
        mains.append(float(main.detach()))
        auxes.append(float(aux.detach()))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("main loss fell over 2x", _mean(mains[-10:]) < 0.5 * _mean(mains[:10]))
    ctx.check("main loss still falling late", _mean(mains[-20:]) < 0.97 * _mean(mains[100:120]))
    ctx.check(
        "total loss rises over the second half", _mean(totals[-10:]) > 1.3 * _mean(totals[100:110])
    )
    ctx.check("aux loss finite and bounded", _finite(auxes) and max(auxes[-20:]) < 3.0)


# -- 12. control: OneCycleLR, label smoothing, accumulation, clipping -----------------------------


@scenario(
    family="luge_track_curve_onecycle_relu_classifier",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Luge track curve-type classifier (ReLU MLP on sled accelerometer, steering pressure, "
    "ice temperature and split times; 7 curve types, cross-entropy with label smoothing 0.1). "
    "SGD momentum 0.9 under OneCycleLR (max_lr 0.1), gradient accumulation over 2 micro-"
    "batches, clipping at 1.0, noisy sensor batches: healthy control.",
)
def h561_luge_onecycle(ctx):
    gen = seeded(5622)
    model = _Net(12, 64, out=7)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps, accum = 180, 2
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    batches = _grades(gen, 32, 12, 7, 56220, spread=1.4)
    losses = []
    for _ in range(steps):
        logged = 0.0
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1) / accum
            loss.backward()
            logged = logged + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(logged))
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained", _fell(losses, ratio=0.5))
    ctx.check("run finite", _finite(losses))


# -- 13. control: tied-weight autoencoder, Huber, ReduceLROnPlateau, clipping ---------------------


class _TiedAutoencoder(nn.Module):
    def __init__(self, d_in=16, d_code=6):
        super().__init__()
        self.encoder = nn.Linear(d_in, d_code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        code = torch.tanh(self.encoder(x))
        return F.linear(code, self.encoder.weight.t(), self.dec_bias)


@scenario(
    family="cobbler_heel_wear_tied_autoencoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cobbler heel-wear profile autoencoder (16 wear gauges around the heel, tanh code of 6, "
    "decoder tied to the encoder's transposed weight, Huber loss, AdamW, ReduceLROnPlateau, "
    "clipping at 1.0, noisy gauges): healthy control.",
)
def h561_cobbler_tied_autoencoder(ctx):
    gen = seeded(5623)
    model = _TiedAutoencoder()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    g = torch.Generator().manual_seed(56230)
    basis = torch.randn(4, 16, generator=g)

    def batches():
        while True:
            z = torch.randn(64, 4, generator=gen)
            x = z @ basis / 2 + 0.1 * torch.randn(64, 16, generator=gen)
            yield x, x

    def after(step, loss):
        sched.step(loss)

    losses, _ = _loop(ctx, model, opt, batches(), 220, F.huber_loss, after=after, clip=1.0)
    ctx.check("trained", _fell(losses, ratio=0.5))
    ctx.check("run finite", _finite(losses))
