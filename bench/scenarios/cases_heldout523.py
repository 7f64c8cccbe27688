"""Held-out set 523 (``h523_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a tres-guitar strum classifier whose logit scale is typed 800 for 8 (softmax saturates,
Adagrad); a hang-glider sink-rate tanh regressor with SGD lr typed 1.0 for 0.1 (past 2/sharpness);
a bell-foundry bronze-pour ReLU regressor whose fc1 biases are initialised at -4 (dead ReLUs,
Adamax); a dog-sled pace regressor whose accumulated loss is multiplied by 8 instead of divided for
one step (SGD Nesterov); a woodturning chatter classifier whose fc1 param group lr is typed 5e-10
(RMSprop); a maple-syrup brix regressor whose penalty-weight schedule returns 1e5 for one step
(AdamW's second moment poisoned); a sea-ice floe net standardising a stuck sensor by a batch std
with no eps (0/0, NAdam); a taiko drumhead regressor fed one row in newtons for kilonewtons (Adam,
clipped); a cork-oak deep tanh MLP initialised N(0, 1) (SGD momentum); an indigo-vat regressor
whose cached targets are rescaled in place every step (slow climb, RAdam).

Controls: an aurora substorm PonderNet-style halting GRU cell (KL to a geometric prior, Adam,
warm-up, clipping); an adobe-brick cure multitask regressor whose auxiliary loss weight ramps from 0
to 1 (the logged total rises while each task falls, AdamW, OneCycleLR); a balafon gourd classifier
under fp16 autocast + GradScaler (SGD Nesterov, label smoothing, ReduceLROnPlateau, accumulation 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``weight(step)`` scales the
    backpropagated loss, ``after(step, loss)``. Stops after a non-finite loss once ``ctx.step``
    has seen it."""
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
        w = weight(step) if weight is not None else 1.0
        (w * loss).backward()
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


# -- 1. softmax collapse: a logit scale typed 800 for 8 ------------------------------------------


class _ScaledNet(nn.Module):
    def __init__(self, d_in, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.act1 = nn.GELU()
        self.head = nn.Linear(48, classes)
        self.scale = scale

    def raw(self, x):
        return self.head(self.act1(self.fc1(x)))

    def forward(self, x):
        return self.raw(x) * self.scale


@scenario(
    family="tres_guitar_strum_pattern_logit_scale_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tres-guitar strum-pattern classifier (GELU MLP on 10 pick-up envelope features, 6 "
    "strum patterns, cross-entropy, Adagrad lr 0.05). The head's logits are multiplied by a fixed "
    "logit scale typed 800 for 8: the softmax saturates and most rows' target probability rounds "
    "to exactly 1.0 in float32.",
)
def h523_tres_guitar_logit_scale_typo(ctx):
    gen = seeded(5231)
    model = _ScaledNet(10, 6, 800.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 6, 52310, spread=0.6),
        150,
        F.cross_entropy,
        classifier=True,
    )
    px, py = next(_grades(torch.Generator().manual_seed(3), 512, 10, 6, 52310, spread=0.6))
    with torch.no_grad():
        raw = model.raw(px)
    ctx.check(
        "over half the rows' target prob exactly 1.0", collapsed_fraction(raw * 800, py) > 0.5
    )
    ctx.check("under 5% at the intended scale 8", collapsed_fraction(raw * 8, py) < 0.05)
    ctx.check("loss finite", _finite(losses))


# -- 2. sharpness above limit: SGD lr typed 1.0 for 0.1 --------------------------------------------


def _top_hessian_eig(model, loss_fn, x, y, iters=30):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="hang_glider_ridge_lift_sink_rate_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Hang-glider sink-rate regressor (tanh MLP on airspeed, bank angle, ridge wind, wing "
    "loading, air density and altitude, MSE, plain SGD). The config's lr is typed 1.0 for 0.1: "
    "the initial top Hessian eigenvalue (about 7) puts 2/sharpness between the two; the loss "
    "grows step after step and blows up to inf within 20 steps.",
)
def h523_hang_glider_sgd_lr_typo(ctx):
    gen = seeded(5232)
    model = _Net(6, 48, 1, act=nn.Tanh)
    data = _readings(gen, 64, 6, 52320)
    px, py = next(_readings(torch.Generator().manual_seed(11), 512, 6, 52320))
    lam = _top_hessian_eig(model, F.mse_loss, px * 2.0, py)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)

    def alter(step, x, y):
        return x * 2.0, y  # readings standardised to 2 sd (the pipeline's convention)

    losses, _ = _loop(ctx, model, opt, data, 150, F.mse_loss, alter=alter)
    fin = [v for v in losses if math.isfinite(v)]
    ctx.check("lr 1.0 above 2/sharpness at init", 1.0 > 2.0 / lam)
    ctx.check("intended lr 0.1 below 2/sharpness", 0.1 < 2.0 / lam)
    ctx.check(
        "loss blew up (non-finite or over 100x its first)",
        len(fin) < len(losses) or max(fin) > 100 * losses[0],
    )


# -- 3. loss of plasticity: fc1 biases initialised at -4 ------------------------------------------


@scenario(
    family="bell_foundry_bronze_pour_dead_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act1", "fc1"),
    diverges=None,
    heldout=True,
    note="Bell-foundry bronze-pour regressor predicting the bell's strike-note deviation (ReLU "
    "MLP on melt temperature, tin share, mould humidity, pour rate and cooling time, MSE, "
    "Adamax). An init helper copied from a thresholding model fills fc1's biases with -4 instead "
    "of 0: nearly every first-layer ReLU is dead from the start and the net stalls near the mean.",
)
def h523_bell_foundry_dead_fc1_bias(ctx):
    gen = seeded(5233)
    model = _Net(5, 48, 1)
    with torch.no_grad():
        model.fc1.bias.fill_(-4.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(9), 512, 5, 52330))
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 5, 52330), 200, F.mse_loss)
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(probe_x)))
    ctx.check("over 80% of act1 units dead", dead > 0.8)
    ctx.check(
        "stalls above 0.6x the target variance", _mean(losses[-20:]) > 0.6 * float(probe_y.var())
    )
    ctx.check("finite", _finite(losses))


# -- 4. gradient spike: accumulated loss multiplied by 8 instead of divided -----------------------

SLED_ONSET = 110


@scenario(
    family="dog_sled_team_pace_accumulation_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SLED_ONSET,
    note="Dog-sled team pace regressor (SiLU MLP on trail firmness, temperature, dog count, "
    "sled load and grade, MSE, SGD Nesterov momentum 0.9, 8 micro-batches accumulated per step, "
    "clipping at norm 1). A refactor of the accumulation path at step 110 multiplies each "
    "micro-batch loss by 8 instead of dividing: one optimizer step's gradient is 64x the usual on "
    "an ordinary logged loss; clipping holds it and the run carries on.",
)
def h523_dog_sled_accumulation_multiplied(ctx):
    gen = seeded(5234)
    model = _Net(5, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen, 16, 5, 52340)
    accum = 8
    losses, norms = [], []
    for step in range(200):
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            loss = F.mse_loss(model(x), y)
            scale = accum if step == SLED_ONSET else 1.0 / accum
            (loss * scale).backward()
            total += float(loss.detach()) / accum
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        logged = torch.tensor(total)
        losses.append(total)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    o = SLED_ONSET
    ctx.check("gradient over 30x the median at onset", norms[o] > 30 * _median(norms[o - 30 : o]))
    ctx.check("logged loss ordinary at onset", losses[o] < 3 * _median(losses[o - 30 : o]))
    ctx.check("trained and finite", _fell(losses))


# -- 5. update ratio: the fc1 param group's lr typed 5e-10 ----------------------------------------


@scenario(
    family="woodturning_bowl_chatter_param_group_classifier",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Woodturning bowl-chatter classifier (ReLU MLP on lathe speed, tool overhang, wall "
    "thickness, grain angle and vibration spectrum bands, 4 chatter grades, cross-entropy, "
    "RMSprop in two param groups). The fc1 group's lr is typed 5e-10 for 5e-4: the first layer "
    "stays at its random init while the upper layers learn.",
)
def h523_woodturning_fc1_lr_typo(ctx):
    gen = seeded(5235)
    model = _Net(12, 48, 4)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 5e-10},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 5e-4},
        ]
    )
    w0 = model.fc1.weight.detach().clone()
    h0 = model.fc2.weight.detach().clone()
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 4, 52350, spread=1.0),
        200,
        F.cross_entropy,
        classifier=True,
    )
    ctx.check("fc1 moved under 1e-5 of its norm", _rel_change(model.fc1.weight, w0) < 1e-5)
    ctx.check("fc2 moved over 5%", _rel_change(model.fc2.weight, h0) > 0.05)
    ctx.check("the upper layers still trained", _fell(losses, ratio=0.8))


# -- 6. adam second moment: a penalty-weight schedule returning 1e5 for one step ------------------

MAPLE_ONSET = 90


@scenario(
    family="maple_syrup_brix_penalty_weight_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=MAPLE_ONSET,
    note="Maple-syrup brix regressor (GELU MLP on sap sugar, boil time, evaporator pan "
    "temperature, flue draft and ambient pressure, MSE plus a smoothness penalty, AdamW lr 1e-3, "
    "beta2 0.999). The penalty weight comes from a piecewise schedule whose boundary is off by "
    "one: at step 90 it returns the raw 1e5 meant as a denominator. One gradient about 1e4x the "
    "usual fills Adam's second moment and every later update is tiny; the loss stalls.",
)
def h523_maple_syrup_penalty_schedule_off_by_one(ctx):
    gen = seeded(5236)
    model = _Net(5, 48, 1, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    moves, vs = [], []
    prev = {}

    def before(step):
        prev["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step, loss):
        moves.append(
            math.sqrt(
                sum(
                    float((p.detach() - q).pow(2).sum())
                    for p, q in zip(model.parameters(), prev["w"], strict=True)
                )
            )
        )
        vs.append(float(opt.state[model.fc1.weight]["exp_avg_sq"].sqrt().median()))

    def loss_fn(out, y):
        return F.mse_loss(out, y) + 1e-3 * model.fc1.weight.pow(2).mean()

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 52360),
        220,
        loss_fn,
        before=before,
        after=after,
        weight=lambda s: 1e5 if s == MAPLE_ONSET else 1.0,
    )
    o = MAPLE_ONSET
    ctx.check("gradient over 1e3x the median at onset", norms[o] > 1e3 * _median(norms[o - 30 : o]))
    ctx.check("fc1 median sqrt(v) over 30x after onset", vs[o + 5] > 30 * vs[o - 1])
    ctx.check(
        "updates 60-120 steps after under 0.2x those before",
        _mean(moves[o + 60 : o + 120]) < 0.2 * _mean(moves[o - 40 : o]),
    )
    ctx.check("loss finite", _finite(losses))


# -- 7. nonfinite: a batch std with no eps on a stuck sensor --------------------------------------

SEAICE_ONSET = 100


class _BatchStandardise(nn.Module):
    """Standardises each reading by the batch mean and std (no eps)."""

    def forward(self, x):
        mu = x.mean(0, keepdim=True)
        sd = x.std(0, unbiased=False, keepdim=True)
        return (x - mu) / sd


class _FloeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = _BatchStandardise()
        self.body = _Net(6, 48, 1, act=nn.SiLU)

    def forward(self, x):
        return self.body(self.norm(x))


@scenario(
    family="sea_ice_floe_thickness_batch_std_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=SEAICE_ONSET,
    heldout=True,
    onset=SEAICE_ONSET,
    note="Sea-ice floe-thickness net (a hand-written batch standardisation of six buoy readings, "
    "then a SiLU MLP, MSE, NAdam). The standardisation divides by the batch std with no eps; at "
    "step 100 a shard from a buoy whose snow-depth sensor is stuck at 0 arrives: that column's "
    "std is 0, 0/0 gives NaN and the loss is NaN.",
)
def h523_sea_ice_stuck_sensor_zero_std(ctx):
    gen = seeded(5237)
    model = _FloeNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    flags = []

    def alter(step, x, y):
        if step == SEAICE_ONSET:
            x = x.clone()
            x[:, 2] = 0.0
            with torch.no_grad():
                flags.append(not bool(torch.isfinite(model.norm(x)).all()))
        return x, y

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 52370), 160, F.mse_loss, alter=alter)
    ctx.check("trained before onset", _fell(losses[:SEAICE_ONSET]))
    ctx.check("norm output non-finite at onset", bool(flags) and flags[0])
    ctx.check("loss NaN at onset", len(losses) == SEAICE_ONSET + 1 and math.isnan(losses[-1]))


# -- 8. data outlier: one row's target in newtons for kilonewtons ---------------------------------

TAIKO_ONSET = 120


@scenario(
    family="taiko_drumhead_tension_target_unit_regressor",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=TAIKO_ONSET,
    note="Taiko drumhead-tension regressor (ReLU MLP on hide thickness, rope turns, strike "
    "pitch, humidity and rim diameter, MSE, Adam, clipping at norm 1). One row of the batch at "
    "step 120 was logged in newtons instead of kilonewtons (1000x): one batch with a huge loss and "
    "gradient; clipping holds it and the run recovers.",
)
def h523_taiko_newton_row(ctx):
    gen = seeded(5238)
    model = _Net(5, 48, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == TAIKO_ONSET:
            y = y.clone()
            y[5] = y[5] * 1000.0 + 1000.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 5, 52380), 220, F.mse_loss, alter=alter, clip=1.0
    )
    o = TAIKO_ONSET
    pre = _median(losses[o - 30 : o])
    ctx.check("loss over 100x at onset", losses[o] > 100 * pre)
    ctx.check("gradient over 20x at onset", norms[o] > 20 * _median(norms[o - 30 : o]))
    ctx.check("recovers under 2x", _mean(losses[-20:]) < 2 * pre and _finite(losses))


# -- 9. exploding gradients: a deep tanh MLP initialised N(0, 1) ----------------------------------


def _cork_mlp(gain, depth=10, width=32):
    layers: list[nn.Module] = []
    d = 8
    for _ in range(depth):
        lin = nn.Linear(d, width)
        if gain is None:
            nn.init.normal_(lin.weight, std=1.0)  # the bug: N(0, 1) instead of xavier
        else:
            nn.init.xavier_normal_(lin.weight, gain=gain)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.Tanh()]
        d = width
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


class _CorkNet(nn.Module):
    def __init__(self, gain):
        super().__init__()
        self.net = _cork_mlp(gain)

    def forward(self, x):
        return self.net(x).squeeze(-1)


@scenario(
    family="cork_oak_bark_harvest_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("net.0",),
    diverges=None,
    heldout=True,
    note="Cork-oak bark-harvest yield regressor, a 10-layer tanh MLP on trunk girth, bark age, "
    "rainfall, soil depth, slope, aspect, stripping height and tree age (MSE, SGD momentum 0.9, "
    "lr 1e-4). Every layer is initialised nn.init.normal_(std=1.0) instead of xavier-normal with gain 5/3 "
    "(about 5.7x too large for width 32): the network runs in the chaotic regime, the backward pass grows layer by layer toward the input and the "
    "first layer's gradient is far larger than the last hidden layer's.",
)
def h523_cork_oak_unit_normal_init(ctx):
    gen = seeded(5239)
    model = _CorkNet(None)
    ref = _CorkNet(5.0 / 3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x0, y0 = next(_readings(torch.Generator().manual_seed(7), 128, 8, 52390))
    F.mse_loss(ref(x0), y0).backward()
    ref_ratio = float(ref.net[0].weight.grad.norm() / ref.net[18].weight.grad.norm())
    F.mse_loss(model(x0), y0).backward()
    ratio = float(model.net[0].weight.grad.norm() / model.net[18].weight.grad.norm())
    model.zero_grad(set_to_none=True)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 52390), 120, F.mse_loss)
    ctx.check("first layer's gradient over 30x the last hidden layer's", ratio > 30)
    ctx.check("that ratio over 10x a gain-5/3 model's", ratio > 10 * ref_ratio)
    ctx.check("loss finite", _finite(losses))


# -- 10. loss divergence: cached targets rescaled in place every step -----------------------------


def _indigo_batches(gen, batch):
    """A cached table of vat readings; the target normaliser rescales it in place (the bug)."""
    xs, ys = next(_readings(gen, 1024, 6, 52400))
    while True:
        idx = torch.randint(0, len(ys), (batch,), generator=gen)
        ys.mul_(1.006)  # meant: y = ys[idx] * unit, applied to the cache in place every draw
        yield xs[idx], ys[idx].clone()


@scenario(
    family="indigo_vat_reduction_drifting_target_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Indigo-vat reduction regressor (SiLU MLP on pH, vat temperature, bran feed, lime dose, "
    "froth colour and day, MSE, RAdam lr 1e-3). The target unit conversion is written as an "
    "in-place multiply on the cached target table, so every batch draw rescales all targets by "
    "1.006: the targets drift slowly away, and after its first fall the loss climbs with no jump.",
)
def h523_indigo_vat_inplace_target_rescale(ctx):
    gen = seeded(52310)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    seen = []

    def alter(step, x, y):
        seen.append(float(y.abs().mean()))
        return x, y

    losses, _ = _loop(ctx, model, opt, _indigo_batches(gen, 64), 260, F.mse_loss, alter=alter)
    best = min(losses[:120])
    jumps = max(b / a for a, b in zip(losses[:-1], losses[1:], strict=True))
    ctx.check("targets grew over 3x", _mean(seen[-10:]) > 3 * _mean(seen[:10]))
    ctx.check("loss climbed over 2x its early best", _mean(losses[-10:]) > 2 * best)
    ctx.check("still climbing", _mean(losses[-20:]) > 1.1 * _mean(losses[-100:-80]))
    ctx.check("no step jumps over 3x", jumps < 3.0 and _finite(losses))


# -- controls -------------------------------------------------------------------------------------


class _PonderCell(nn.Module):
    """PonderNet-style: a GRU cell steps on the same input; each step has an output and a
    halting probability lambda_n; p_n = lambda_n * prod_{j<n} (1 - lambda_j), the last step takes
    the remainder."""

    def __init__(self, d_in, hidden, classes, max_steps=6):
        super().__init__()
        self.embed = nn.Linear(d_in, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.out = nn.Linear(hidden, classes)
        self.halt = nn.Linear(hidden, 1)
        self.max_steps = max_steps

    def forward(self, x):
        e = torch.tanh(self.embed(x))
        h = torch.zeros_like(e)
        not_halted = torch.ones(x.shape[0])
        ps, ys = [], []
        for n in range(self.max_steps):
            h = self.cell(e, h)
            ys.append(self.out(h))
            if n == self.max_steps - 1:
                ps.append(not_halted)
            else:
                lam = torch.sigmoid(self.halt(h)).squeeze(-1)
                ps.append(not_halted * lam)
                not_halted = not_halted * (1 - lam)
        return torch.stack(ys, 0), torch.stack(ps, 0)


def _geometric_prior(lam_p, steps):
    p = torch.tensor([lam_p * (1 - lam_p) ** n for n in range(steps)])
    return p / p.sum()


@scenario(
    family="aurora_substorm_onset_pondernet_halting_cell",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Aurora substorm-onset classifier (control) on 12 magnetometer and solar-wind features, "
    "5 substorm phases: a hand-written PonderNet-style cell (GRU cell pondering up to 6 steps, a "
    "halting probability per step, loss = expected cross-entropy under the halting distribution "
    "+ 0.01 KL to a geometric prior with lambda_p 0.3), Adam with linear warm-up, clipping at 1.",
)
def h523_aurora_pondernet_control(ctx):
    gen = seeded(52311)
    model = _PonderCell(12, 32, 5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    prior = _geometric_prior(0.3, model.max_steps)
    ctx.attach(model, opt)
    data = _grades(gen, 64, 12, 5, 52311, spread=1.0)
    losses, sums, expected = [], [], []
    for _step in range(200):
        x, y = next(data)
        ctx.targets(y)
        ys, ps = model(x)
        ce = torch.stack([F.cross_entropy(ys[n], y, reduction="none") for n in range(len(ys))])
        task = (ps * ce).sum(0).mean()
        pm = ps.mean(1).clamp_min(1e-8)
        kl = (pm * (pm.log() - prior.log())).sum()
        loss = task + 0.01 * kl
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        sums.append(float((ps.detach().sum(0) - 1).abs().max()))
        expected.append(float((ps.detach() * torch.arange(1, len(ps) + 1)[:, None]).sum(0).mean()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell under 0.5x", _fell(losses, ratio=0.5))
    ctx.check("halting distribution sums to 1", max(sums) < 1e-4)
    ctx.check("expected ponder steps within 1..6", 1.0 <= _mean(expected[-10:]) <= 6.0)


class _AdobeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.strength = nn.Linear(48, 1)
        self.shrink = nn.Linear(48, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return self.strength(h).squeeze(-1), self.shrink(h).squeeze(-1)


@scenario(
    family="adobe_brick_cure_aux_ramp_multitask_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Adobe-brick cure regressor (control): a shared SiLU trunk on clay share, straw, sand, "
    "water, sun hours and wind, a main head for compressive strength and an auxiliary head for "
    "shrinkage (noisier, larger scale), MSE each; the auxiliary loss weight ramps linearly from 0 "
    "to 1 over training, so the logged total rises while each task's loss falls. AdamW, "
    "OneCycleLR.",
)
def h523_adobe_aux_weight_ramp_control(ctx):
    gen = seeded(52312)
    model = _AdobeNet()
    steps = 240
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(52312)
    wa, wb = torch.randn(6, generator=g), torch.randn(6, generator=g)
    totals, mains, auxes = [], [], []
    for step in range(steps):
        x = torch.randn(64, 6, generator=gen)
        ya = torch.tanh(x @ wa / 2) + 0.05 * torch.randn(64, generator=gen)
        yb = 2.5 * torch.sin(x @ wb / 2) + 1.5 + 1.2 * torch.randn(64, generator=gen)
        pa, pb = model(x)
        main = F.mse_loss(pa, ya)
        aux = F.mse_loss(pb, yb)
        w = step / (steps - 1)
        total = main + w * aux
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        totals.append(float(total.detach()))
        mains.append(float(main.detach()))
        auxes.append(float(aux.detach()))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("logged total rose", _mean(totals[-20:]) > _mean(totals[:20]))
    ctx.check("main task fell under 0.5x", _fell(mains, k=20, ratio=0.5))
    ctx.check("aux task fell under 0.8x", _fell(auxes, k=20, ratio=0.8))
    ctx.check("finite", _finite(totals))


@scenario(
    family="balafon_gourd_resonance_fp16_label_smoothed_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Balafon gourd-resonator classifier (control) on 8x8 digit-like spectrogram tiles, 10 "
    "key pitches: GELU MLP under fp16 autocast + GradScaler, SGD Nesterov momentum 0.9, "
    "cross-entropy with label smoothing 0.1, accumulation 2, clipping at 2, ReduceLROnPlateau on "
    "a running loss.",
)
def h523_balafon_fp16_smoothed_control(ctx):
    gen = seeded(52313)
    model = _Net(64, 64, 10, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = digit_batches(gen, 32)
    losses = []
    for _step in range(200):
        parts = []
        for _ in range(2):
            x, y = next(data)
            ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
            scaler.scale(loss / 2).backward()
            parts.append(loss.detach())
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        logged = torch.stack(parts).mean()
        losses.append(float(logged))
        plateau.step(_mean(losses[-10:]))
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell under 0.5x", _fell(losses, ratio=0.5))
    ctx.check("loss scale finite", all(math.isfinite(s) and s > 0 for s in ctx.scales))
