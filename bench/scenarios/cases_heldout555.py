"""Held-out set 555 (``h555_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: tandoor clay-wall heat regressor fed a thermocouple in microvolts under fp16 autocast
(amp_overflow, AdamW); sauna stove-stone heat regressor with its L2 penalty subtracted
(loss_divergence, Adamax); wakeboard wake-lift regressor with OneCycleLR max_lr typed 4.0
(sharpness_above_limit, plain SGD); mead must-gravity regressor with fc1's group lr read as 2e-9
(update_ratio_out_of_range, RMSprop); quicksand sink-depth regressor fed one shard in millimetres
(data_outlier, NAdam); shuffleboard puck-scoring BCE classifier with a one-step loss weight of 1000
(gradient_spike, SGD Nesterov); bonfire ember-lofting regressor taking the log of a zero moisture
reading (nonfinite, Adagrad); waterski wake-jump 12-layer ReLU regressor with init gain typed 2.2
(exploding_gradients, SGD momentum); clay-pigeon break-pattern classifier with temperature typed
1e-3 (softmax_collapse, RAdam); boomerang return-radius regressor resumed from a weights-only
checkpoint (loss_spike, Adam).
Controls: canyoneering rappel-anchor siamese encoder with a contrastive loss (AdamW, OneCycleLR,
clipping); paraglider wing-shape triplet embedder with batch-hard negative mining switched on at
step 100 (loss jumps, then falls, alarming-looking, Adam); bowling-lane oil-pattern Huber
regressor (Adadelta, ReduceLROnPlateau, accumulation 2, clipping, noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


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


def _readings(gen, batch, d_in, seed, noise=0.05, drift=None):
    """Standardised readings and a smooth nonlinear target of about unit scale; ``drift(i)``
    is added to the i-th batch's targets."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    i = 0
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, generator=gen)
        if drift is not None:
            y = y + drift(i)
        i += 1
        yield x, y


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


# -- 1. amp overflow: thermocouple read in microvolts under fp16 autocast -------------------------


class _TandoorNet(nn.Module):
    """GELU MLP predicting the clay wall's inner-face temperature a minute ahead."""

    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="tandoor_clay_wall_heat_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Tandoor clay-wall heat regressor (GELU MLP on thermocouple, charcoal load, lid gap, "
    "ambient temperature, wall thickness and dough count, MSE, AdamW, fp16 autocast + "
    "GradScaler). From step 90 a replacement thermocouple amplifier reports the raw reading in "
    "microvolts (about 4e5) and the column is not standardised: autocast runs fc1 in fp16, "
    "whose range ends at 65504, fc1's output is non-finite (the same batch is finite in "
    "float32) and the loss is non-finite at step 90.",
)
def h555_tandoor_thermocouple_microvolts(ctx):
    gen = seeded(5551)
    model = _TandoorNet(6)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    losses, fc1_bad = [], []
    batches = _readings(gen, 64, 6, 55510)
    bad_x = None
    for step in range(140):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 0] = 4.0e5 + 4.0e4 * x[:, 0]
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
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    ctx.check("inputs beyond fp16's range", bad_x is not None and float(bad_x.abs().max()) > 65504)
    ctx.check("loss first non-finite at step 90", first_bad == 90)
    ctx.check("fc1's fp16 output non-finite at step 90", len(fc1_bad) > 90 and fc1_bad[90])
    ctx.check("fc1 finite before step 90", not any(fc1_bad[:90]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 90", _mean(losses[80:90]) < 0.7 * _mean(losses[:10]))


# -- 2. loss divergence: an L2 penalty subtracted instead of added --------------------------------


@scenario(
    family="sauna_stove_stone_heat_negative_l2_relu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Sauna stove stone-heat regressor (ReLU MLP on stone mass, stove power, water ladled, "
    "room volume, vent opening and time since firing, MSE, Adamax). The hand-written L2 "
    "penalty is written 'loss - wd * sum(w ** 2)' (a sign slip when the regulariser was moved "
    "out of the optimizer): the net fits first, then the penalty rewards growing weights, the "
    "weights grow steadily and the logged MSE climbs slowly, with no jump, to several times its "
    "best.",
)
def h555_sauna_stones_l2_sign_slip(ctx):
    gen = seeded(5552)
    model = _Net(6, hidden=48)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    w0 = float(_flat(model).norm())
    wd = 5e-2

    def backprop(step, loss):
        penalty = sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)
        return loss - wd * penalty

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 55520), 260, F.mse_loss, backprop=backprop
    )
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    jumps = [smooth[i + 5] / smooth[i] for i in range(len(smooth) - 5)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("weights over 2x their init norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 3x its best", smooth[-1] > 3 * best)
    ctx.check("best reached before the last third", smooth.index(best) < 2 * len(smooth) // 3)
    ctx.check("no jump: 5-step moving mean never doubles", max(jumps) < 2.0)


# -- 3. sharpness above limit: OneCycleLR max_lr typed 10x ----------------------------------------


@scenario(
    family="wakeboard_wake_lift_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=6,
    heldout=True,
    note="Wakeboard wake-lift regressor (tanh MLP on boat speed, ballast, rope length, rider "
    "mass, edge angle and approach distance, MSE, plain SGD). OneCycleLR's max_lr is typed 4.0 "
    "for 0.4: during the warm-up the lr climbs past 2 / (top Hessian eigenvalue), measured in "
    "the run by power iteration, and the loss blows up.",
)
def h555_wakeboard_onecycle_max_lr_typo(ctx):
    gen = seeded(5553)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4.0, total_steps=160, pct_start=0.3)
    batches = _readings(gen, 128, 6, 55530)
    probe = next(batches)
    crossed = []

    def after(step, loss):
        if math.isfinite(loss) and loss < 1e3:
            eig = _top_hessian_eig(model, F.mse_loss, *probe)
            if opt.param_groups[0]["lr"] * eig > 2.0:
                crossed.append(step)

    losses, _ = _loop(ctx, model, opt, batches, 160, F.mse_loss, after=after, sched=sched)
    ok = [v for v in losses if math.isfinite(v)]
    first_big = next(
        (i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * min(ok)), None
    )
    ctx.check("lr x sharpness past 2 in the run", bool(crossed))
    ctx.check("loss blows up", first_big is not None)
    ctx.check(
        "crossed before the blow-up",
        bool(crossed) and first_big is not None and crossed[0] <= first_big,
    )
    ctx.check("trained first", min(ok[:40]) < 0.7 * _mean(ok[:5]))
    ctx.check("first crossing at step 6", crossed[:1] == [6])


# -- 4. update ratio: fc1's param-group lr typed 2e-9 ---------------------------------------------


@scenario(
    family="mead_must_gravity_two_group_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Mead must specific-gravity regressor (SiLU MLP on honey ratio, yeast pitch, must "
    "temperature, nutrient dose, pH and days in the carboy, MSE, RMSprop with two param "
    "groups). The config's 'fc1_lr: 2e-3' is read through a units helper that treats it as "
    "micro-units, so fc1's group runs at lr 2e-9: fc1 never moves while fc2 and the head "
    "train; the loss falls only as far as the random fc1 features allow.",
)
def h555_mead_fc1_group_lr_units(ctx):
    gen = seeded(5554)
    model = _Net(6, hidden=48, act=nn.SiLU)
    fc1 = list(model.fc1.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.RMSprop([{"params": fc1, "lr": 2e-9}, {"params": rest, "lr": 2e-3}])
    fc1_0, head_0 = _flat(model.fc1), _flat(model.head)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 55540), 200, F.mse_loss)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fc1 moved under 1e-5 relative", _rel(_flat(model.fc1), fc1_0) < 1e-5)
    ctx.check("head moved over 1e-2 relative", _rel(_flat(model.head), head_0) > 1e-2)
    ctx.check("fc1's group lr is 2e-9", opt.param_groups[0]["lr"] < 1e-8)
    ctx.check("loss fell somewhat", _fell(losses, ratio=0.9))


# -- 5. data outlier: one shard of sink depth in millimetres --------------------------------------


@scenario(
    family="quicksand_footprint_sink_depth_silu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Quicksand footprint sink-depth regressor (SiLU MLP on grain size, pore-water "
    "pressure, load, contact area, tide height and agitation, MSE, NAdam, clipping at 1). One "
    "survey shard at step 110 logged the sink depth in millimetres instead of metres (targets "
    "x1000): the loss and gradient jump for that one batch, clipping holds the update, and the "
    "run recovers.",
)
def h555_quicksand_depth_in_millimetres(ctx):
    gen = seeded(5555)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 110 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 55550), 220, F.mse_loss, alter=alter, clip=1.0
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss over 100x at step 110", losses[110] > 100 * _median(losses[90:110]))
    ctx.check("gradient over 10x at step 110", norms[110] > 10 * _median(norms[90:110]))
    ctx.check("recovers", _mean(losses[-20:]) < 1.5 * _mean(losses[90:110]))
    ctx.check("only one bad step", max(losses[112:]) < 10 * _median(losses[90:110]))


# -- 6. gradient spike: one step's loss weight typed 1000 -----------------------------------------


@scenario(
    family="shuffleboard_puck_scoring_gelu_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Shuffleboard puck-scoring classifier (GELU MLP on release speed, spin, board wax, "
    "angle, puck mass and slide length, BCE of 'lands in the scoring zone', SGD Nesterov, "
    "clipping at 1). The stage-switch hook at step 130 sets the loss weight from "
    "'1e3' meant as the logging interval: the backpropagated loss is 1000x for one step, the "
    "gradient bursts, the logged loss is ordinary, clipping bounds the update.",
)
def h555_shuffleboard_stage_switch_weight(ctx):
    gen = seeded(5556)
    model = _Net(6, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def batches():
        g = torch.Generator().manual_seed(55560)
        w = torch.randn(6, generator=g)
        while True:
            x = torch.randn(64, 6, generator=gen)
            yield x, (x @ w + 0.3 * torch.randn(64, generator=gen) > 0).float()

    def backprop(step, loss):
        return loss * (1000.0 if step == 130 else 1.0)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        batches(),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 100x at step 130", norms[130] > 100 * _median(norms[110:130]))
    ctx.check("logged loss ordinary at 130", losses[130] < 2 * _mean(losses[120:130]) + 0.05)
    ctx.check("trained", _fell(losses))


# -- 7. nonfinite: log of a zero moisture reading -------------------------------------------------


class _EmberNet(nn.Module):
    """Log-transforms fuel moisture, then a GELU MLP predicts the ember lofting height."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.logfeat = _LogFirst()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        x = self.logfeat(x)
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


class _LogFirst(nn.Module):
    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


@scenario(
    family="bonfire_ember_lofting_log_feature_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logfeat",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Bonfire ember-lofting height regressor (log of fuel moisture, then a GELU MLP on it "
    "with wind, log diameter, stack height, air humidity and flame temperature, MSE, Adagrad). "
    "The log-feature module has no clamp; at step 80 a batch from kiln-dried wood reads "
    "moisture 0.0, log 0 = -inf, and the loss is NaN at step 80.",
)
def h555_bonfire_log_zero_moisture(ctx):
    gen = seeded(5557)
    model = _EmberNet(6)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    base = _readings(gen, 64, 6, 55570)
    bad = {}

    def batches():
        step = 0
        while True:
            x, y = next(base)
            x = x.clone()
            x[:, 0] = torch.exp(0.3 * x[:, 0])
            if step == 80:
                x[:8, 0] = 0.0
                bad["x"] = x
            step += 1
            yield x, y

    losses, _ = _loop(ctx, model, opt, batches(), 140, F.mse_loss)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 80", first_bad == 80)
    ctx.check("zero moisture in the batch", "x" in bad and float(bad["x"][:, 0].min()) == 0.0)
    if "x" in bad:
        with torch.no_grad():
            ctx.check("logfeat gives -inf", bool(torch.isinf(model.logfeat(bad["x"])).any()))
    ctx.check("trained before step 80", _mean(losses[70:80]) < 0.7 * _mean(losses[:10]))


# -- 8. exploding gradients: init gain typed 2.2 through 12 ReLU layers --------------------------


class _DeepRelu(nn.Module):
    def __init__(self, d_in, width=32, depth=12, gain=2.2):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.body = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.body:
            nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
        self.acts = []

    def forward(self, x):
        self.acts = []
        for lin in self.body:
            x = F.relu(lin(x))
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="waterski_wake_jump_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("body.0",),
    diverges="auto",
    heldout=True,
    note="Waterski wake-jump distance regressor (12-layer ReLU MLP on boat speed, rope length, "
    "approach angle, cut timing, ski length and rider mass, MSE, SGD momentum). The init helper "
    "is called with gain=2.2 (copied from a config meant for a different activation) instead "
    "of sqrt(2): each layer multiplies the signal and the backward gradient by about 1.55, "
    "body.0's output gradient is over 30x the last layer's, and the run blows up within a few "
    "steps.",
)
def h555_waterski_init_gain_typo(ctx):
    gen = seeded(5558)
    model = _DeepRelu(6)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios = []

    def after(step, loss):
        g0, gl = model.acts[0].grad, model.acts[-1].grad
        if g0 is not None and gl is not None:
            ratios.append(float(g0.norm() / (gl.norm() + 1e-30)))

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 55580), 120, F.mse_loss, after=after
    )
    ok = [v for v in losses if math.isfinite(v)]
    ctx.check(
        "body.0's output gradient over 30x the last's at step 0", bool(ratios) and ratios[0] > 30
    )
    ctx.check("gradient norm over 100 at step 0", norms[0] > 100)
    ctx.check("loss blows up", not _finite(losses) or max(ok) > 100 * ok[0])


# -- 9. softmax collapse: temperature typed 1e-3 --------------------------------------------------


@scenario(
    family="clay_pigeon_break_pattern_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Clay-pigeon break-pattern classifier (GELU MLP on shot spread, pellet count, target "
    "speed, angle, range and choke, cross-entropy over 6 break patterns, RAdam). The logits are "
    "divided by a temperature typed 1e-3 for 1.0: the float32 softmax rounds most rows' target "
    "probability to exactly 1.0 and the rest to near 0.",
)
def h555_clay_pigeon_temperature_typo(ctx):
    gen = seeded(5559)
    model = _Net(8, hidden=48, out=6, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    fracs = []

    class _Hot(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) / 1e-3

    hot = _Hot(model)

    def loss_fn(logits, y):
        fracs.append(collapsed_fraction(logits.detach(), y))
        return F.cross_entropy(logits, y)

    ctx.attach(model, opt)
    batches = _grades(gen, 64, 8, 6, 55590)
    losses = []
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = loss_fn(hot(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("over 40% of rows at probability exactly 1.0", _mean(fracs) > 0.4)
    ctx.check("collapsed from the first steps", _mean(fracs[:10]) > 0.2)
    ctx.check("finite throughout", _finite(losses))


# -- 10. loss spike: resumed from a weights-only checkpoint ---------------------------------------


@scenario(
    family="boomerang_return_radius_resume_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="Boomerang return-radius regressor (SiLU MLP on throw speed, spin rate, layover "
    "angle, wing span, wind and release height, MSE, Adam with cosine decay). At step 150 the "
    "job is resumed from a weights-only checkpoint: Adam's moments and the scheduler are "
    "rebuilt from scratch, so the first steps take full-size lr 1e-2 sign-like updates; the "
    "loss jumps over 3x once with no gradient burst and the run recovers.",
)
def h555_boomerang_weights_only_resume(ctx):
    gen = seeded(5560)
    model = _Net(6, hidden=48, act=nn.SiLU)
    state = {}

    def make():
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        state["sched"] = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=300, eta_min=1e-4)
        return opt

    opt = make()
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 6, 55600)
    losses, norms = [], []
    for step in range(260):
        if step == 150:
            fresh = make()
            opt.state.clear()
            opt.load_state_dict(fresh.state_dict())
            state["sched"] = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=300, eta_min=1e-4
            )
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        state["sched"].step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre = _median(losses[130:150])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss over 3x once after the resume", max(losses[150:160]) > 3 * pre)
    ctx.check("no gradient burst at the resume", max(norms[150:152]) < 5 * _median(norms[130:150]))
    ctx.check("recovers", _mean(losses[-20:]) < 1.5 * pre)


# -- 11. control: siamese anchor-pair encoder with a contrastive loss -----------------------------


class _Siamese(nn.Module):
    """One shared SiLU encoder applied to both readings of a pair."""

    def __init__(self, d_in, hidden=48, dim=16):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(d_in, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, pair):
        a, b = pair
        return self.encoder(a), self.encoder(b)


def _contrastive(out, same, margin=1.0):
    d = F.pairwise_distance(*out)
    return (same * d.pow(2) + (1 - same) * F.relu(margin - d).pow(2)).mean()


@scenario(
    family="canyoneering_rappel_anchor_siamese_contrastive_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Canyoneering rappel-anchor matcher (siamese SiLU encoder on bolt torque, rock "
    "hardness, webbing age, pull angle, flow and wetness readings; pairs from the same anchor "
    "type or not; contrastive loss with margin 1, AdamW, OneCycleLR, clipping at 1, noisy "
    "readings). Healthy control.",
)
def h555_canyoneering_siamese_anchor_pairs(ctx):
    gen = seeded(5561)
    model = _Siamese(8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    g = torch.Generator().manual_seed(55610)
    protos = 1.2 * torch.randn(8, 8, generator=g)

    def batches():
        while True:
            ya = torch.randint(0, 8, (64,), generator=gen)
            same = (torch.rand(64, generator=gen) < 0.5).long()
            yb = torch.where(same.bool(), ya, (ya + torch.randint(1, 8, (64,), generator=gen)) % 8)
            a = protos[ya] + 0.5 * torch.randn(64, 8, generator=gen)
            b = protos[yb] + 0.5 * torch.randn(64, 8, generator=gen)
            yield (a, b), same.float()

    losses, _ = _loop(ctx, model, opt, batches(), 200, _contrastive, clip=1.0, sched=sched)
    (a, b), same = next(batches())
    with torch.no_grad():
        d = F.pairwise_distance(*model((a, b)))
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("same-anchor pairs closer", float(d[same == 1].mean()) < float(d[same == 0].mean()))


# -- 12. control: hard-negative mining switched on mid-run (alarming-looking) ---------------------


@scenario(
    family="paragliding_line_wing_shape_hard_negative_triplet_embedder",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Paraglider wing-shape embedder (GELU MLP on line-tension readings from 12 risers, "
    "triplet margin loss, Adam). Random negatives for the first 100 steps, then batch-hard "
    "negative mining is switched on as planned: the loss jumps up (the negatives are now the "
    "hardest in the batch) and then falls again. Alarming-looking, healthy control.",
)
def h555_paragliding_hard_negatives_on(ctx):
    gen = seeded(5562)
    model = nn.Sequential(
        nn.Linear(12, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 16)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(55620)
    protos = torch.randn(10, 12, generator=g)
    ctx.attach(model, opt)
    losses = []
    for step in range(240):
        y = torch.randint(0, 10, (96,), generator=gen)
        x = protos[y] + 0.7 * torch.randn(96, 12, generator=gen)
        pos_y = y
        xp = protos[pos_y] + 0.7 * torch.randn(96, 12, generator=gen)
        e, ep = model(x), model(xp)
        if step < 100:
            ny = (y + torch.randint(1, 10, (96,), generator=gen)) % 10
            en = model(protos[ny] + 0.7 * torch.randn(96, 12, generator=gen))
        else:
            d = torch.cdist(e.detach(), e.detach())
            d = d.masked_fill(y[:, None] == y[None, :], float("inf"))
            en = e[d.argmin(1)]
        loss = F.triplet_margin_loss(e, ep, en, margin=1.0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fell with random negatives", _mean(losses[90:100]) < 0.5 * _mean(losses[:10]))
    ctx.check(
        "jumps over 1.5x when mining starts", _mean(losses[100:105]) > 1.5 * _mean(losses[90:100])
    )
    ctx.check("falls again after", _mean(losses[-10:]) < 0.7 * _mean(losses[100:105]))


# -- 13. control: Adadelta Huber regressor with accumulation ---------------------------------------


@scenario(
    family="bowling_lane_oil_pattern_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bowling-lane oil-pattern hook regressor (SiLU MLP on oil volume, pattern length, "
    "ball speed, rev rate, axis tilt and lane board, Huber loss on noisy hook readings, "
    "Adadelta, ReduceLROnPlateau, accumulation 2, clipping at 1). Healthy control.",
)
def h555_bowling_lane_oil_hook(ctx):
    gen = seeded(5563)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 6, 55630, noise=0.2)
    losses = []
    for step in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            part = F.huber_loss(model(x), y, delta=0.5) / 2
            part.backward()
            total = total + part.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = torch.as_tensor(total)
        losses.append(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 10 == 9:
            plateau.step(_mean(losses[-10:]))
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses))
