"""Held-out set 293 (``h293_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a sugar-maple sap-pressure tanh regressor whose warm-up
peak came from a linear batch-size rule applied to the global batch twice (past the 2/sharpness
limit), a biathlon rifle shot-group ReLU classifier trained with RMSprop at 0.1 on raw readings
(units die), a cryoconite-hole melt net taking sqrt of a vapour-pressure deficit that goes
negative in supersaturated air (NaN), an ice-lens freezing-front physics-informed network whose
heat-equation residual weight was read in percent for one step (gradient spike), a kick-wheel
pot-wall ReLU regressor fed one shard in millimetres (data outlier), a cooper's croze
groove-depth two-group regressor whose trunk lr exponent was mistyped (update ratio), a
kettle-hole pond-level tanh recurrent cell with recurrent gain 3 (exploding gradients), a
tambura jawari-buzz GELU classifier whose temperature was written in percent (softmax collapse),
a lagerphone jingle-decay SiLU regressor with hand-written weight decay of the wrong sign (slow
divergence), a halfpipe snowboard amplitude GELU regressor whose stage-switch step read the raw
loss weight 1e5 (Adam's second moment poisoned), and three controls (a forcola oar-pivot load
ReLU regressor with SGD momentum and a step decay, a cuatro strum-pattern Conv1d classifier
under fp16 autocast with a GradScaler, OneCycleLR and label smoothing, a limbo bar-clearance
Huber regressor with RMSprop, accumulation and ReduceLROnPlateau).

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
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    weight=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step, ``weight(step)`` multiplies the backpropagated loss (the logged loss is
    the unweighted one); ``amp``: fp16 autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        w = weight(step) if weight is not None else 1.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = w * loss / accumulate
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
        if not math.isfinite(shown):
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


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = math.sqrt(sum(float((u * u).sum()) for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=False))
        norm = math.sqrt(sum(float((h * h).sum()) for h in hv))
        if norm == 0.0 or not math.isfinite(norm):
            break
        v = [h / norm for h in hv]
    return eig


# -- sugar maple: the warm-up peak scaled by the global batch twice -----------------------------


@scenario(
    family="sugar_maple_sap_pressure_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the stem pressure of a sugar maple during a freeze-thaw sap run from 10 standardised readings (air and xylem temperature, snow depth, soil moisture), plain SGD, MSE, linear warm-up over 150 steps. The recipe's base lr 0.05 for batch 64 was scaled by the linear batch-size rule, but the rule was applied in the launcher and again in the trainer (0.05 x 8 x 8 = 3.2 instead of 0.4): the warm-up keeps raising the lr and lr x sharpness (the top Hessian eigenvalue, measured in the run) crosses 2 before the loss blows up.",
)
def h293_sugar_maple_warmup_peak(ctx: Context) -> None:
    gen = seeded(29301)
    model = Stack(10, 64, act=nn.Tanh)
    peak = 0.05 * 8 * 8  # meant 0.05 * 8
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = next(_readings(torch.Generator().manual_seed(11), 256, 10, seed=931))
    products: list[tuple[int, float]] = []

    def before(step):
        lr = peak * min(1.0, (step + 1) / 150)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 10 == 0:
            products.append((step, lr * _sharpness(model, F.mse_loss, *probe)))

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=931), 200, F.mse_loss, before=before)
    ls = ctx.losses
    low = min(v for v in ls if math.isfinite(v))
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("the loss blew up", blow is not None)
    cross = next((s for s, p in products if p > 2.0), None)
    ctx.check(
        "lr x sharpness crossed 2 before the blow-up",
        cross is not None and blow is not None and cross <= blow,
    )
    ctx.check("lr x sharpness was under 2 early on", products[0][1] < 2.0)
    ctx.check("the loss fell before the blow-up", blow is not None and low < 0.8 * _mean(ls[:5]))


# -- biathlon rifle: RMSprop at 0.1 on raw readings kills the ReLUs ------------------------------


@scenario(
    family="biathlon_rifle_shot_group_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (fc1, act1, fc2, act2, head) naming where a biathlete's five-shot group lands (centre, high, low, left, right) from 12 rifle and athlete readings in raw positive units (heart rate, breathing phase, trigger pressure, wind flag; the standardiser was dropped in a refactor), RMSprop, cross-entropy. The lr was set to 0.1 (meant 1e-3): RMSprop's first steps move every weight by about the lr, and with all-positive inputs the units are pushed below zero for every input; they get no gradient again, over half of act1 is dead for good (under a quarter at init) and the loss stays far above what the net reaches.",
)
def h293_biathlon_rifle_rmsprop_lr(ctx: Context) -> None:
    gen = seeded(29302)
    model = Stack(12, 64, out=5)
    opt = torch.optim.RMSprop(model.parameters(), lr=0.1)
    probe = next(_kinds(torch.Generator().manual_seed(5), 512, 12, 5, seed=932, noise=0.6))[0]
    probe = probe + 3.0

    def alter(step, x, y):
        return x + 3.0, y

    def dead():
        with torch.no_grad():
            return float((model.act1(model.fc1(probe)) <= 0).all(0).float().mean())

    start = dead()
    mids: list[float] = []

    def after(step):
        if step == 100:
            mids.append(dead())

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=932, noise=0.6),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        after=after,
    )
    end = dead()
    torch.manual_seed(29302)
    twin = Stack(12, 64, out=5)
    twin_opt = torch.optim.RMSprop(twin.parameters(), lr=1e-3)
    twin_batches = _kinds(torch.Generator().manual_seed(29302), 64, 12, 5, seed=932, noise=0.6)
    twin_losses = []
    for _ in range(200):
        x, y = next(twin_batches)
        loss = F.cross_entropy(twin(x + 3.0), y)
        twin_opt.zero_grad()
        loss.backward()
        twin_opt.step()
        twin_losses.append(float(loss.detach()))
    ctx.check("under a quarter of act1 dead at init", start < 0.25)
    ctx.check("over half of act1 dead at step 100 and at the end", mids[0] > 0.5 and end > 0.5)
    ctx.check(
        "the loss ends over 1.5x the twin's at lr 1e-3",
        _mean(ctx.losses[-20:]) > 1.5 * _mean(twin_losses[-20:]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- cryoconite hole: sqrt of a vapour-pressure deficit that goes negative ---------------------

ONSET_CRYO = 80


class DeficitFeature(nn.Module):
    """sqrt of the vapour-pressure deficit e_s(T) * (1 - RH): columns 0 (air temperature, C)
    and 1 (relative humidity, a fraction) of the raw readings."""

    def forward(self, x):
        t, rh = x[:, 0], x[:, 1]
        es = 0.6108 * torch.exp(17.27 * t / (t + 237.3))
        return torch.sqrt(es * (1.0 - rh))[:, None]


class CryoconiteNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.deficit = DeficitFeature()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.cat([self.deficit(x), x[:, 2:]], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


def _cryoconite(gen, batch):
    g = torch.Generator().manual_seed(933)
    w = torch.randn(8, generator=g)
    while True:
        t = 4.0 * torch.rand(batch, generator=gen) - 1.0
        rh = 0.3 + 0.65 * torch.rand(batch, generator=gen)
        rest = torch.randn(batch, 8, generator=gen)
        es = 0.6108 * torch.exp(17.27 * t / (t + 237.3))
        y = 2.0 * torch.sqrt(es * (1 - rh)) + 0.3 * torch.tanh(rest @ w / 3)
        yield torch.cat([t[:, None], rh[:, None], rest], 1), y


@scenario(
    family="cryoconite_hole_melt_sqrt_deficit_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("deficit",),
    diverges=ONSET_CRYO,
    heldout=True,
    onset=ONSET_CRYO,
    note="A SiLU net (deficit = a hand-written feature sqrt(e_s(T) * (1 - RH)), fc1, act1, fc2, act2, head) regressing the melt rate in a glacier's cryoconite holes from an automatic weather station's air temperature, relative humidity and 8 standardised radiation readings, Adamax at 2e-3, MSE. The feature has no clamp at zero: humidity had always been under 1, until a fog episode at step 80 in which the capacitive hygrometer, wetted, reads 1.04; the deficit is negative, sqrt gives NaN in the deficit module and the loss is NaN from step 80.",
)
def h293_cryoconite_sqrt_negative_deficit(ctx: Context) -> None:
    gen = seeded(29303)
    model = CryoconiteNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == ONSET_CRYO:
            x = x.clone()
            x[:4, 1] = 1.04
        return x, y

    _train(ctx, model, opt, _cryoconite(gen, 64), 150, F.mse_loss, alter=alter)
    ls = ctx.losses
    with torch.no_grad():
        bad = model.deficit(torch.tensor([[2.0, 1.04] + [0.0] * 8]))
    ctx.check("the deficit feature gives NaN at RH 1.04", bool(torch.isnan(bad).any()))
    ctx.check("finite before the fog", _finite(ls[:ONSET_CRYO]))
    ctx.check("the loss is NaN at step 80", len(ls) > ONSET_CRYO and math.isnan(ls[ONSET_CRYO]))
    ctx.check(
        "the loss fell before", _mean(ls[ONSET_CRYO - 10 : ONSET_CRYO]) < 0.8 * _mean(ls[:10])
    )


# -- ice lens: a physics-informed net whose residual weight was read in percent for one step -----

ONSET_LENS = 120
DIFF = 0.1  # thermal diffusivity of the frozen soil, in the scaled units


class FreezingFrontPINN(nn.Module):
    """u(z, t): soil temperature at depth z and time t (both scaled to [0, 1])."""

    def __init__(self, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, zt):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(zt))))).squeeze(-1)


def _exact(zt):
    z, t = zt[:, 0], zt[:, 1]
    return torch.exp(-DIFF * math.pi**2 * t) * torch.sin(math.pi * z)


@scenario(
    family="ice_lens_freezing_front_heat_pinn",
    optimizer="RAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_LENS,
    note="A physics-informed network (fc1, fc2, head, tanh) for the soil temperature u(z, t) under a growing ice lens, fitted to 64 thermistor readings per step plus the residual of the heat equation u_t - a u_zz at 128 collocation points, loss = data MSE + w * residual MSE with w = 1, RAdam at 3e-3, clipping at 1.0. The curriculum switches collocation sets at step 120 and the switch code re-reads w from the config, where it is written as `residual_weight_pct: 100`, without dividing by 100: for that one step the residual term is weighted 100x and the gradient is over 30x the usual on ordinary data. Clipping bounds the step and the run goes on.",
)
def h293_ice_lens_pinn_residual_weight(ctx: Context) -> None:
    gen = seeded(29304)
    model = FreezingFrontPINN()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    for step in range(200):
        zt = torch.rand(64, 2, generator=gen)
        u_obs = _exact(zt) + 0.01 * torch.randn(64, generator=gen)
        data = F.mse_loss(model(zt), u_obs)
        col = torch.rand(128, 2, generator=gen).requires_grad_(True)
        u = model(col)
        du = torch.autograd.grad(u.sum(), col, create_graph=True)[0]
        u_zz = torch.autograd.grad(du[:, 0].sum(), col, create_graph=True)[0][:, 0]
        residual = ((du[:, 1] - DIFF * u_zz) ** 2).mean()
        w = 100.0 if step == ONSET_LENS else 1.0  # residual_weight_pct read without / 100
        loss = data + residual
        (data + w * residual).backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    base = _median(g[ONSET_LENS - 20 : ONSET_LENS])
    ctx.check("the gradient at step 120 is over 30x the usual", g[ONSET_LENS] > 30 * base)
    ctx.check(
        "the logged loss at step 120 is ordinary",
        ls[ONSET_LENS] < 2.0 * _mean(ls[ONSET_LENS - 10 : ONSET_LENS]),
    )
    ctx.check("the loss fell", _fell(ls))
    ctx.check("finite throughout", _finite(ls))


# -- kick wheel: one shard's wall thickness in millimetres ---------------------------------------

ONSET_KICK = 110


@scenario(
    family="kickwheel_pot_wall_thickness_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KICK,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the fired wall thickness of a pot thrown on a kick wheel from 10 standardised readings (clay weight, wheel speed, throwing time, clay moisture), SGD momentum 0.9 at 1e-2, MSE, clipping at 1.0. One studio's logbook shard recorded the target in millimetres where every other shard uses the standardised value: the batch at step 110 carries eight rows with targets about 1000x too large. The loss and gradient jump by orders of magnitude on that one batch; clipping bounds the step and the run recovers.",
)
def h293_kickwheel_millimetre_shard(ctx: Context) -> None:
    gen = seeded(29305)
    model = Stack(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_KICK:
            y = y.clone()
            y[:8] = y[:8] * 1000.0 + 600.0
        return x, y

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=935), 220, F.mse_loss, alter=alter, clip=1.0
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_KICK - 20 : ONSET_KICK])
    ctx.check("the loss on the bad batch is over 1000x the usual", ls[ONSET_KICK] > 1000 * pre)
    ctx.check(
        "the gradient on the bad batch is over 100x the usual",
        g[ONSET_KICK] > 100 * _median(g[ONSET_KICK - 20 : ONSET_KICK]),
    )
    ctx.check("the run recovered", _mean(ls[-20:]) < 2.0 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- cooper's croze: the trunk lr exponent mistyped ----------------------------------------------


@scenario(
    family="cooper_croze_groove_depth_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the depth a cooper's croze cuts for the head groove from 12 standardised readings (stave thickness, chime length, oak density, moisture), Adagrad with two param groups: the trunk (fc1) meant at 1e-2 but typed 1e-9, the rest at 1e-2, MSE. fc1's update ratio |dW|/|W| stays under 1e-6 every step, so it is effectively frozen at its random init while fc2 and the head train and the loss still falls.",
)
def h293_croze_trunk_lr_exponent(ctx: Context) -> None:
    gen = seeded(29306)
    model = Stack(12, 64)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adagrad(
        [{"params": model.fc1.parameters(), "lr": 1e-9}, {"params": rest, "lr": 1e-2}], lr=1e-2
    )
    ratios: list[float] = []
    prev = [_flat(model.fc1)]

    def after(step):
        now = _flat(model.fc1)
        ratios.append(float((now - prev[0]).norm()) / float(prev[0].norm()))
        prev[0] = now

    fc2_0 = _flat(model.fc2)
    _train(ctx, model, opt, _readings(gen, 64, 12, seed=936), 200, F.mse_loss, after=after)
    ctx.check("fc1's update ratio is under 1e-6 every step", max(ratios) < 1e-6)
    ctx.check(
        "fc2 moved over 1% of its norm",
        float((_flat(model.fc2) - fc2_0).norm()) > 0.01 * float(fc2_0.norm()),
    )
    ctx.check("the loss still fell", _fell(ctx.losses))


# -- kettle hole: a tanh recurrent cell with recurrent gain 3 -----------------------------------


class KettleCell(nn.Module):
    """A hand-written Elman cell over daily readings: h = tanh(inp(x) + rec(h))."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.hidden = hidden

    def forward(self, x, states=None):
        h = torch.zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if states is not None:
                h.retain_grad()
                states.append(h)
        return self.head(h).squeeze(-1)


def _kettle(gen, batch, steps=40):
    while True:
        x = 0.5 * torch.randn(batch, steps, 4, generator=gen)
        decay = 0.9 ** torch.arange(steps - 1, -1, -1).float()
        y = (x[..., 0] * decay).sum(1) / 3.0 + 0.2 * x[:, -5:, 1].sum(1)
        yield x, y


@scenario(
    family="kettle_hole_pond_level_tanh_recurrent_cell",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written Elman cell (inp, rec, head; h = tanh(inp(x) + rec(h))) unrolled over 40 days of rain, evaporation, groundwater and frost readings to forecast the water level of a glacial kettle-hole pond, SGD Nesterov momentum 0.9 at 1e-3, MSE, clipping at 1.0. The recurrent weight was initialised orthogonal with gain 3 (the init helper's `gain` argument took the value meant for the input scaling): the gradient grows back through time through rec, the state gradient at day 0 is over 30x the one at day 39, and the pre-clip gradient norm is far above the clip all run.",
)
def h293_kettle_hole_recurrent_gain(ctx: Context) -> None:
    gen = seeded(29307)
    model = KettleCell(gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ratios: list[float] = []
    batches = _kettle(gen, 32)
    ctx.attach(model, opt)
    for _step in range(100):
        x, y = next(batches)
        states: list[torch.Tensor] = []
        loss = F.mse_loss(model(x, states), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        ratios.append(float(states[0].grad.norm()) / max(float(states[-1].grad.norm()), 1e-12))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("day 0's state gradient is over 30x day 39's", _median(ratios) > 30)
    ctx.check("the pre-clip gradient norm is over 10x the clip", _median(ctx.grad_norms) > 10)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- tambura jawari: the temperature written in percent ------------------------------------------


class JawariNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=5, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="tambura_string_jawari_buzz_tempered_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU classifier (fc1, act1, fc2, act2, head, logits divided by a temperature) grading the jawari buzz of a tambura string (dull, thin, open, harsh, rattling) from a 16-band spectrum, AdamW at 2e-3, cross-entropy. The config writes the temperature as `temp_pct: 0.5` (meaning 0.5) and the loader divides it by 100, so the logits are divided by 0.005: 200x what the head gives, and the float32 softmax rounds most rows' target probability to exactly 1.0 (zero gradient on them).",
)
def h293_tambura_jawari_temperature_pct(ctx: Context) -> None:
    gen = seeded(29308)
    model = JawariNet(temperature=0.5 / 100)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    fractions: list[float] = []

    def watch(step, out, x, y):
        fractions.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, seed=938),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over a third of the rows' softmax is exactly 1.0", _mean(fractions[-20:]) > 1 / 3)
    ctx.check("under a tenth at the start", fractions[0] < 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- lagerphone: hand-written weight decay with the wrong sign -----------------------------------


@scenario(
    family="lagerphone_jingle_decay_silu_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how long a lagerphone's bottle-cap jingles ring after a stamp from 10 standardised readings (cap count, nail tension, stick length, strike force), NAdam at 2e-3 with weight decay applied by hand after each step, MSE. The hand-written decoupled decay was written p.mul_(1 + lr * wd) instead of 1 - lr * wd (wd 3): every weight grows by 0.6% a step. The loss first falls, then climbs slowly and steadily to over 3x its low as the weights inflate; no single step or batch is at fault.",
)
def h293_lagerphone_decay_sign(ctx: Context) -> None:
    gen = seeded(29309)
    model = Stack(10, 64, act=nn.SiLU)
    lr, wd = 2e-3, 3.0
    opt = torch.optim.NAdam(model.parameters(), lr=lr)

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(1 + lr * wd)  # meant 1 - lr * wd

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=939), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low_at = min(range(len(ls)), key=lambda i: ls[i] if math.isfinite(ls[i]) else 1e30)
    low = _mean(ls[max(0, low_at - 5) : low_at + 5])
    ctx.check("the loss fell first", low < 0.7 * _mean(ls[:10]))
    ctx.check("then climbed to over 3x its low", _mean(ls[-20:]) > 3 * low)
    ctx.check("finite throughout", _finite(ls))


# -- halfpipe snowboard: the stage-switch step reads the raw loss weight ----------------------

ONSET_PIPE = 50


@scenario(
    family="halfpipe_snowboard_amplitude_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PIPE,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a halfpipe snowboarder's air amplitude above the coping from 10 standardised readings (drop-in speed, wall angle, snow firmness, pump timing), Adam at 1e-3 (betas 0.9, 0.999), MSE, no clipping. The training script switches data stages at step 50 and the switch code looks the stage's loss weight up by name; the name was misspelt and the fallback returned the raw normaliser 1e5 instead of 1.0, for that one step on an ordinary batch. The step itself is bounded by Adam, but the gradient over 10,000x the usual fills the second moment, which decays only as 0.999^t: every update afterwards is over 10x smaller and the loss, falling fast before, stalls.",
)
def h293_halfpipe_stage_loss_weight(ctx: Context) -> None:
    gen = seeded(29310)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves: list[float] = []
    prev = [_flat(model)]

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=940),
        200,
        F.mse_loss,
        weight=lambda s: 1e5 if s == ONSET_PIPE else 1.0,
        after=after,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at step 50 is over 10,000x the usual",
        g[ONSET_PIPE] > 1e4 * _median(g[ONSET_PIPE - 20 : ONSET_PIPE]),
    )
    ctx.check(
        "updates after step 50 are over 10x smaller than before",
        _median(moves[ONSET_PIPE + 10 : ONSET_PIPE + 110])
        < 0.1 * _median(moves[ONSET_PIPE - 20 : ONSET_PIPE]),
    )
    ctx.check(
        "the loss falls before step 50 and stalls after it",
        _mean(ls[ONSET_PIPE - 10 : ONSET_PIPE]) < 0.8 * _mean(ls[:10])
        and _mean(ls[-20:]) > 0.8 * _mean(ls[ONSET_PIPE + 1 : ONSET_PIPE + 21]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- controls ------------------------------------------------------------------------------------


@scenario(
    family="forcola_oar_pivot_load_relu_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP (fc1, act1, fc2, act2, head) regressing the load on a gondolier's forcola (the carved walnut oarlock) from 10 standardised stroke readings, SGD momentum 0.9 at 2e-2 with a step decay (StepLR, x0.3 every 80 steps), MSE, clipping at 2.0. Trains normally.",
)
def h293_forcola_step_decay_control(ctx: Context) -> None:
    gen = seeded(29311)
    model = Stack(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.3)
    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=941), 240, F.mse_loss, sched=sched, clip=2.0
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("the lr stepped down at least twice", opt.param_groups[0]["lr"] < 2e-2 * 0.1)


class StrumNet(nn.Module):
    """Conv1d over 6 accelerometer channels of a strumming hand, 32 samples."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(6, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x))
        h = F.gelu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _strums(gen, batch, classes=4):
    g = torch.Generator().manual_seed(942)
    freqs = 1.0 + torch.rand(classes, 6, generator=g) * 3
    t = torch.linspace(0, 2 * math.pi, 32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = torch.rand(batch, 6, 1, generator=gen) * 2 * math.pi
        x = torch.sin(freqs[y][..., None] * t + phase)
        yield x + 0.5 * torch.randn(batch, 6, 32, generator=gen), y


@scenario(
    family="cuatro_strum_pattern_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU Conv1d classifier (conv1, conv2, head) naming a Venezuelan cuatro strum pattern (joropo, merengue, vals, golpe) from a wrist accelerometer, AdamW at 3e-3 (weight decay 0.05 on conv and linear weights, none on biases: two param groups), OneCycleLR, label smoothing 0.1, fp16 autocast with a torch.amp.GradScaler, clipping at 1.0. Trains normally.",
)
def h293_cuatro_fp16_onecycle_control(ctx: Context) -> None:
    gen = seeded(29312)
    model = StrumNet()
    decay = [p for p in model.parameters() if p.dim() > 1]
    other = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=160)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _strums(gen, 64),
        160,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell and stayed finite", _fell(ctx.losses, ratio=0.6))


@scenario(
    family="limbo_bar_clearance_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing how far under the limbo bar a dancer's chest passes from 10 standardised readings (bar height, knee bend, approach speed, back arch), heavy-tailed (Student-t) target noise, Huber loss, RMSprop at 1e-3, gradient accumulation over 2 micro-batches, ReduceLROnPlateau, clipping at 1.0. Trains normally.",
)
def h293_limbo_huber_rmsprop_control(ctx: Context) -> None:
    gen = seeded(29313)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    student = torch.distributions.StudentT(3.0)

    def noisy():
        for x, y in _readings(gen, 32, 10, seed=943):
            yield x, y + 0.1 * student.sample((len(y),))

    _train(
        ctx,
        model,
        opt,
        noisy(),
        200,
        F.huber_loss,
        sched=sched,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell and stayed finite", _fell(ctx.losses, ratio=0.6))
