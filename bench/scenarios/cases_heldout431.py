"""Held-out set 431 (``h431_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a rain-gauge runoff regressor whose log-feature module takes log of a dry gauge's 0 mm
reading (log 0), a Fair Isle colourway classifier whose temperature is read in hundredths
(softmax saturates), a flint-wall course-settlement tanh regressor whose MultiStepLR gamma is
typed 10 for 0.1 (lr past 2/sharpness), a type-foundry matrix casting regressor whose loss scale
was not undone for one resumed step (Adam's second moment poisoned), a shrimp-pushing two-head net
whose auxiliary loss weight is read as 400 for one step (a gradient burst), a pigeon-loft
return-time regressor fed one club's shard in kelvin (one corrupted batch), an egg-tempera glaze
drying regressor whose hand-written weight decay has its sign flipped (a slow climb), a racewalk
contact-loss IRNN whose identity init is typed 1.2 for 1.0 (gradients grow through time), a
lure-making spinner-wobble two-group regressor whose trunk lr is typed 3e-9 for 3e-3 (a frozen
trunk) and a glass-engraving chip-depth ReLU regressor whose second layer bias is initialised at
-3 for +0.3 (ReLUs die).

Controls: a spinet quill-plectrum Cox survival net (risk score clamped to [-15, 15], Adam,
ReduceLROnPlateau), a discus-throw phase fp16 Conv1d classifier (autocast with GradScaler, AdamW
under OneCycleLR, label smoothing, clipping) and a land-yacht wheel-load tied autoencoder (SGD
Nesterov, warm-up then cosine, accumulation, clipping, noisy batches).
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


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


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
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor (ctx is None)."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if attach:
            ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    n = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / n for u in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        n = torch.sqrt(sum((u * u).sum() for u in hv)).clamp_min(1e-12)
        v = [u / n for u in hv]
    return lam


# -- faults ----------------------------------------------------------------------------------------


class _LogFeatures(nn.Module):
    """log(mm) of the gauge readings (the missing clamp: log(x.clamp_min(0.1)))."""

    def forward(self, x):
        return torch.log(x)


class _GaugeNet(nn.Module):
    def __init__(self, d_in=8, hidden=40):
        super().__init__()
        self.logf = _LogFeatures()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.logf(x)))).squeeze(-1)


@scenario(
    family="rain_gauge_runoff_log_feature_gelu_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("logf",),
    diverges=90,
    heldout=True,
    onset=90,
    note="Rain-gauge runoff regressor (log-feature module then a GELU MLP, MSE, Adam). The "
    "log-feature module takes torch.log of the gauge readings in mm with no clamp; the first "
    "shard that includes a dry gauge (an honest 0.0 mm reading, step 90) gives log 0 = -inf, "
    "the linear layer turns it into inf - inf and the loss is NaN at step 90.",
)
def h431_rain_gauge_log_zero(ctx) -> None:
    gen = seeded(4311)
    model = _GaugeNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    base = _readings(gen, 64, 8, seed=311)

    def gauges():
        for x, y in base:
            yield torch.exp(0.5 * x) * 5.0, y  # rainfall in mm, strictly positive so far

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[3, 2] = 0.0  # a dry gauge
        return x, y

    _loop(ctx, model, opt, gauges(), 150, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("loss finite before 90", _finite(ls[:90]))
    ctx.check("first non-finite loss at step 90", _first_bad(ls) == 90)
    ctx.check("trained before the dry gauge", _mean(ls[80:90]) < 0.8 * _mean(ls[:10]))


class _ColourwayNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=6, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))) / self.temperature


@scenario(
    family="fair_isle_colourway_tanh_temperature_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Fair Isle colourway classifier (tanh MLP, cross-entropy, AdamW). The softmax "
    "temperature of 0.5 is read from a config that a refactor switched to hundredths, so the "
    "logits are divided by 0.005: most rows' target probability rounds to exactly 1.0 in "
    "float32 and the softmax saturates.",
)
def h431_fair_isle_temperature_hundredths(ctx) -> None:
    gen = seeded(4312)
    model = _ColourwayNet(temperature=0.005)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    data = _grades(gen, 64, 12, 6, seed=312)
    frac, ref_frac = [], []

    def after(step):
        if step >= 170:
            with torch.no_grad():
                x, y = probe
                z = model(x)
                frac.append(collapsed_fraction(z, y))
                ref_frac.append(collapsed_fraction(z * model.temperature, y))

    probe = next(_grades(torch.Generator().manual_seed(9), 256, 12, 6, seed=312))
    _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True, after=after)
    ctx.check("over half the rows collapse over the last 30 steps", _mean(frac) > 0.5)
    ctx.check("under 5% collapse at temperature 1 on the same logits", _mean(ref_frac) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="flint_wall_course_settlement_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="Flint-wall course-settlement regressor (tanh MLP, MSE, full 256-row batches, plain "
    "SGD) under MultiStepLR(milestones=[60], gamma=10) where gamma=0.1 was meant: at step 60 "
    "the lr grows 10x, lr x sharpness passes 2 and the loss blows up.",
)
def h431_flint_wall_multistep_gamma(ctx) -> None:
    gen = seeded(4313)
    model = _Net(8, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.15)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60], gamma=10.0)
    data = _readings(gen, 256, 8, seed=313)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, seed=313))
    edge = []

    def before(step):
        if step % 10 == 0 and step <= 80 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            lr = opt.param_groups[0]["lr"]
            edge.append((step, lr * _sharpness(model, F.mse_loss, *probe)))

    _loop(ctx, model, opt, data, 160, F.mse_loss, before=before, sched=sched)
    ctx.check("lr x sharpness under 2 before 60", all(v < 2 for s, v in edge if s < 60))
    ctx.check("lr x sharpness past 2 from 60", any(v > 2 for s, v in edge if s >= 60))
    ok = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check(
        "loss blows up over 100x its lowest",
        max(ok) > 100 * min(ok) or _first_bad(ctx.losses) is not None,
    )
    ctx.check("loss fell before 60", _mean(ok[50:60]) < 0.7 * _mean(ok[:5]))


@scenario(
    family="type_foundry_matrix_cast_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="Type-foundry matrix casting-temperature regressor (SiLU MLP, Huber, Adam beta2 0.999). A "
    "resume from a mixed-precision checkpoint backpropagates the loss still multiplied by the "
    "saved loss scale 65536 for one step (step 60) without unscaling: one giant gradient fills "
    "Adam's second moment, after a first kick the updates shrink by orders of magnitude and "
    "the loss stalls for the rest of the run.",
)
def h431_type_foundry_scale_not_undone(ctx) -> None:
    gen = seeded(4314)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    moves = []
    prev = [_flat(model)]

    def backprop(step, loss):
        return loss * (65536.0 if step == 60 else 1.0)

    def after(step):
        cur = _flat(model)
        moves.append(float((cur - prev[0]).abs().median()))  # the typical weight's step
        prev[0] = cur

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=314),
        240,
        F.huber_loss,
        backprop=backprop,
        after=after,
    )
    gn, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient at 60 over 1000x the median of 30..59", gn[60] > 1000 * _median(gn[30:60]))
    ctx.check(
        "median weight update over 120..239 under 1/10 of that over 20..59",
        _mean(moves[120:]) < 0.1 * _mean(moves[20:60]),
    )
    ctx.check(
        "loss stalls: last 20 no lower than 0.9x steps 70..90",
        _mean(ls[-20:]) > 0.9 * _mean(ls[70:90]),
    )
    ctx.check("finite", _finite(ls))


class _TwoHead(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.catch = nn.Linear(hidden, 1)
        self.bycatch = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.catch(h), self.bycatch(h)], -1)


def _two_loss(out, y):
    return F.mse_loss(out[:, 0], y) + 0.1 * F.mse_loss(out[:, 1], torch.tanh(y))


@scenario(
    family="shrimp_pushing_net_catch_two_head_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Shrimp-pushing net catch regressor (ReLU trunk with catch and bycatch heads, MSE, SGD "
    "momentum 0.9, clipping at 1). The auxiliary bycatch loss weight is annealed by a helper that, "
    "on the step the annealing table is reloaded (120), returns 400 instead of 0.1 for one step: "
    "one gradient burst on an ordinary logged loss; clipping bounds it and the run recovers.",
)
def h431_shrimp_push_aux_weight_burst(ctx) -> None:
    gen = seeded(4315)
    model = _TwoHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def loss_fn(out, y):
        return _two_loss(out, y)

    def backprop(step, loss):
        if step != 120:
            return loss
        out = model(batch[0])
        return F.mse_loss(out[:, 0], batch[1]) + 400.0 * F.mse_loss(out[:, 1], torch.tanh(batch[1]))

    batch = [None, None]

    def alter(step, x, y):
        batch[0], batch[1] = x, y
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=315),
        220,
        loss_fn,
        alter=alter,
        backprop=backprop,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at 120 over 30x the median of 80..119", gn[120] > 30 * _median(gn[80:120]))
    ctx.check("logged loss at 120 ordinary", ls[120] < 2 * _median(ls[80:120]))
    ctx.check(
        "recovers: last 20 under 1.3x the pre-onset level",
        _mean(ls[-20:]) < 1.3 * _mean(ls[100:120]),
    )
    ctx.check("trained", _fell(ls))


@scenario(
    family="pigeon_fancying_loft_return_relu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=110,
    note="Pigeon-fancying loft-return-time regressor (ReLU MLP on standardised release-site "
    "and loft temperatures and wind readings, MSE, Adagrad, clipping at 5). One club's shard (step 110) carries its "
    "temperatures in kelvin where the pipeline expects standardised celsius: one batch with "
    "inputs near 273, the loss and gradient jump for that step and the run recovers.",
)
def h431_pigeon_loft_kelvin_shard(ctx) -> None:
    gen = seeded(4316)
    model = _Net(8, 48, 1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:, :2] = x[:, :2] + 273.15
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=316),
        200,
        F.mse_loss,
        alter=alter,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss at 110 over 100x the median of 80..109", ls[110] > 100 * _median(ls[80:110]))
    ctx.check("gradient at 110 over 20x the median of 80..109", gn[110] > 20 * _median(gn[80:110]))
    ctx.check(
        "recovers: last 20 under 2x the pre-onset level", _mean(ls[-20:]) < 2 * _mean(ls[90:110])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="egg_tempera_glaze_drying_silu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Egg-tempera glaze drying-time regressor (SiLU MLP, MSE, Adamax) with a hand-written "
    "decoupled weight decay after each step, p.mul_(1 + lr * wd) typed for p.mul_(1 - lr * wd) "
    "with wd 0.5: every weight is pushed outwards each step, the fit loses to it and the loss "
    "slowly climbs after its first fall.",
)
def h431_egg_tempera_decay_sign(ctx) -> None:
    gen = seeded(4317)
    model = _Net(8, 48, 1, act=nn.SiLU)
    lr, wd = 1e-2, 0.5
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # the bug: 1 - lr * wd
        norms.append(float(_flat(model).norm()))

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=317), 280, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(ls)
    ctx.check("loss over the last 20 over 3x its lowest", _mean(ls[-20:]) > 3 * low)
    ctx.check("climbing through the second half", _mean(ls[-20:]) > 1.5 * _mean(ls[140:160]))
    ctx.check("weight norm over 2x its start", norms[-1] > 2 * norms[0])
    ctx.check("finite", _finite(ls))


class _StrideIRNN(nn.Module):
    """A hand-written ReLU Elman RNN over stride readings, identity-initialised (IRNN)."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.inp.weight.mul_(0.3)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _strides(gen, batch, length=30):
    while True:
        x = torch.randn(batch, length, 4, generator=gen) * 0.5
        y = torch.tanh(x[:, -8:, 0].sum(1) / 2) + 0.3 * x[:, -1, 1]
        yield x, y


@scenario(
    family="racewalk_stride_contact_relu_irnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Racewalk contact-loss regressor (hand-written ReLU Elman RNN over 30 stride readings, "
    "identity-initialised recurrent weight, MSE, RMSprop, clipping at 1). The IRNN init gain "
    "is typed 1.2 for 1.0: the backward pass multiplies by 1.2 per step, dL/dh grows through "
    "time and the gradient at the first time step is orders of magnitude above the last.",
)
def h431_racewalk_irnn_gain(ctx) -> None:
    gen = seeded(4318)
    model = _StrideIRNN(gain=1.2)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    ratios = []
    ctx.attach(model, opt)
    data = _strides(gen, 32)
    for _step in range(120):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g0 = float(model.states[0].grad.norm())
        gT = float(model.states[-1].grad.norm()) + 1e-30
        ratios.append(g0 / gT)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ref = _StrideIRNN(gain=1.0)
    x, y = next(_strides(torch.Generator().manual_seed(5), 32))
    F.mse_loss(ref(x), y).backward()
    ref_ratio = float(ref.states[0].grad.norm()) / (float(ref.states[-1].grad.norm()) + 1e-30)
    ctx.check("dL/dh_0 over 50x dL/dh_29 at the start", ratios[0] > 50)
    ctx.check("and in median over the run", _median(ratios) > 50)
    ctx.check("under 5x with gain 1.0", ref_ratio < 5)


class _SpinnerNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.act = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.trunk(x))).squeeze(-1)


@scenario(
    family="lure_making_spinner_wobble_two_group_tanh_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("trunk", "trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="Lure-making spinner-wobble regressor (tanh trunk and a linear head in two param groups, "
    "Huber, NAdam). The trunk group's lr is typed 3e-9 for 3e-3: the trunk receives gradients "
    "but barely moves while the head trains on random features.",
)
def h431_lure_spinner_trunk_lr_typo(ctx) -> None:
    gen = seeded(4319)
    model = _SpinnerNet()
    opt = torch.optim.NAdam(
        [
            {"params": model.trunk.parameters(), "lr": 3e-9},
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )
    t0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=319),
        200,
        F.huber_loss,
    )
    rel_t = float((model.trunk[0].weight.detach() - t0).norm() / t0.norm())
    rel_h = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check("trunk.0 moved under 1e-4 of its norm", rel_t < 1e-4)
    ctx.check("head moved over 10%", rel_h > 0.1)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="glass_engraving_wheel_chip_relu_regressor",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Glass-engraving wheel chip-depth regressor (ReLU MLP, MSE, RAdam). The second layer's "
    "bias is meant to start at +0.3 to keep units alive; the init line was typed -3.0: most of "
    "act2's units are never positive, get no gradient and stay dead through the run.",
)
def h431_glass_engraving_bias_init(ctx) -> None:
    def build(bias):
        m = _Net(8, 48, 1)
        with torch.no_grad():
            m.fc2.bias.fill_(bias)
        return m

    gen = seeded(4310)
    model = build(-3.0)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    probe = next(_readings(torch.Generator().manual_seed(3), 256, 8, seed=310))[0]
    dead = []

    def after(step):
        if step >= 150:
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=310), 200, F.mse_loss, after=after)
    gen2 = seeded(4310)
    ref = build(0.3)
    ropt = torch.optim.RAdam(ref.parameters(), lr=2e-3)
    _loop(None, ref, ropt, _readings(gen2, 64, 8, seed=310), 200, F.mse_loss, attach=False)
    with torch.no_grad():
        ref_dead = dead_fraction(ref.features(probe))
    ctx.check("over 50% of act2's units dead over the last 50 steps", _mean(dead) > 0.5)
    ctx.check("under 20% dead with the +0.3 init", ref_dead < 0.2)
    ctx.check("finite", _finite(ctx.losses))


# -- controls --------------------------------------------------------------------------------------


def _quills(gen, batch, d_in=8, seed=331):
    """Covariates, exponential event times with a log-linear hazard, random censoring."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        risk = x @ w + 0.5 * torch.sin(2 * x[:, 0])
        t = -torch.log(torch.rand(batch, generator=gen)) / torch.exp(risk)
        c = -torch.log(torch.rand(batch, generator=gen)) * 1.5
        yield x, torch.stack([torch.minimum(t, c), (t <= c).float()], 1)


def _cox_loss(score, ty):
    """Negative Breslow partial log-likelihood per event (the score is a log relative risk)."""
    t, e = ty[:, 0], ty[:, 1]
    order = torch.argsort(t, descending=True)
    s, e = score[order], e[order]
    log_risk = torch.logcumsumexp(s, 0)
    return -((s - log_risk) * e).sum() / e.sum().clamp_min(1.0)


class _CoxNet(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))).squeeze(-1).clamp(-15.0, 15.0)


@scenario(
    family="spinet_quill_plectrum_failure_cox_survival_net",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Spinet quill-plectrum time-to-failure survival net (ReLU MLP risk score clamped to [-15, 15], Cox "
    "partial likelihood with logcumsumexp over generated censored event times, Adam, "
    "ReduceLROnPlateau on a held-out batch). Control.",
)
def h431_spinet_quill_cox(ctx) -> None:
    gen = seeded(4321)
    model = _CoxNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_quills(torch.Generator().manual_seed(11), 256))

    def plateau():
        with torch.no_grad():
            return float(_cox_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _quills(gen, 128),
        200,
        _cox_loss,
        sched=sched,
        plateau=plateau,
    )
    ctx.check("trained", _fell(ctx.losses, k=20, ratio=0.95))
    ctx.check("finite", _finite(ctx.losses))


class _PhaseConv(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _throw_traces(gen, batch, classes=5, length=32):
    tt = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.2 + 0.15 * y.float()
        decay = torch.exp(-tt[None] / (6 + 3 * (y[:, None] % 2)))
        x = torch.sin(freq[:, None] * tt[None]) * decay
        yield x + 0.15 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="discus_throw_phase_fp16_relu_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Discus-throw phase classifier (ReLU Conv1d, fp16 autocast with GradScaler, AdamW under "
    "OneCycleLR, label smoothing 0.1, clipping at 1). Control.",
)
def h431_discus_phase_fp16_onecycle(ctx) -> None:
    gen = seeded(4322)
    model = _PhaseConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")

    def loss_fn(z, y):
        return F.cross_entropy(z, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _throw_traces(gen, 64),
        steps,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("trained", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))


class _TiedAE(nn.Module):
    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _wheel_loads(gen, batch, d_in=16, code=4, seed=333):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(code, d_in, generator=g) / math.sqrt(code)
    while True:
        z = torch.randn(batch, code, generator=gen)
        x = z @ basis + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="land_yacht_wheel_load_tied_autoencoder",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Land-yacht wheel-load tied autoencoder (decoder tied to the encoder's weight, "
    "MSE, SGD Nesterov, linear warm-up then cosine, accumulation over 2, clipping at 1, noisy "
    "readings). Control.",
)
def h431_land_yacht_tied_ae(ctx) -> None:
    gen = seeded(4323)
    model = _TiedAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    _loop(
        ctx,
        model,
        opt,
        _wheel_loads(gen, 32),
        steps,
        F.mse_loss,
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ctx.check("trained", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))
