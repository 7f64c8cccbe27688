"""Held-out set 441 (``h441_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a pumice-raft drift hypernetwork whose step-120 curriculum weight is typed 100 for 1.0
(one gradient burst), a quoit-pitch ReLU regressor with RMSprop lr typed 3e-2 for 3e-4 (act2's
units die), a peat-cutting turf-moisture regressor fed one shard in percent for fractions (one
corrupted batch), a bell-ringing rope-sally classifier trained with nll_loss on raw logits (the
head's logits grow without bound), a cider-press juice-yield net whose log feature has no clamp (a
dry press reading 0 gives log 0), a banjo head-tension two-group regressor whose trunk lr is typed
1e-9 for 1e-2 (a frozen trunk), a bonsai wire-grade classifier whose temperature is typed 0.01 for
1.0 (softmax saturates), a hailstone-embryo growth regressor whose hand-written decoupled weight
decay has its sign flipped (a slow climb), a kelp holdfast-drag regressor whose debug step 40
backpropagates a loss still scaled by 2**16 (Adam's second moment is poisoned) and a clog-dance
heel-tap 10-layer tanh MLP initialised with xavier gain 3.5 for 5/3 (gradients grow through
depth).

Controls: a hurdy-gurdy wheel-rosin hypernetwork (emitted weights scaled by 1/sqrt(fan-in), Adam,
ReduceLROnPlateau), a lacemaking bobbin-tension fp16 Conv1d classifier (GradScaler, AdamW under
OneCycleLR, label smoothing, clipping) and a sugar-beet clamp-heat Gaussian-NLL SiLU net (SGD
Nesterov, warm-up then cosine, accumulation, clipping).
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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


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


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.cos(2 * x[:, 2]) - 0.2 > 0.0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


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


def _ratio(xs: list[float], k: int = 20) -> float:
    return _mean(xs[-k:]) / max(min(xs), 1e-12)


# -- a hand-written hypernetwork ---------------------------------------------------------------------


class _HyperNet(nn.Module):
    """A task embedding feeds a generator MLP that emits every weight of a 1-16-1 tanh target MLP;
    the input packs (task id, reading) per row. ``fan_in=True`` scales each emitted weight matrix
    by 1/sqrt(its fan-in)."""

    def __init__(self, tasks=12, emb=8, hidden=16, fan_in=True):
        super().__init__()
        self.h = hidden
        self.emb = nn.Embedding(tasks, emb)
        self.gen = nn.Sequential(nn.Linear(emb, 64), nn.Tanh(), nn.Linear(64, 3 * hidden + 1))
        self.s1 = 1.0
        self.s2 = 1.0 / math.sqrt(hidden) if fan_in else 1.0

    def forward(self, x):
        task, r = x[:, 0].long(), x[:, 1:2]
        p = self.gen(self.emb(task))
        h = self.h
        w1, b1, w2, b2 = p[:, :h], p[:, h : 2 * h], p[:, 2 * h : 3 * h], p[:, 3 * h]
        z = torch.tanh(self.s1 * w1 * r + b1)
        return (self.s2 * w2 * z).sum(-1) + b2


def _tasks(gen, batch, seed, tasks=12, noise=0.05):
    """Per task a wave a_t * sin(x + p_t) + c_t; rows mix tasks."""
    g = torch.Generator().manual_seed(seed)
    amp = 0.5 + torch.rand(tasks, generator=g)
    phase = 6.28 * torch.rand(tasks, generator=g)
    off = 0.3 * torch.randn(tasks, generator=g)
    while True:
        t = torch.randint(0, tasks, (batch,), generator=gen)
        r = 6.0 * torch.rand(batch, generator=gen) - 3.0
        y = amp[t] * torch.sin(r + phase[t]) + off[t] + noise * torch.randn(batch, generator=gen)
        yield torch.stack([t.float(), r], 1), y


PUMICE_ONSET = 120


@scenario(
    family="pumice_raft_drift_hypernet_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=PUMICE_ONSET,
    note="Pumice-raft drift hypernetwork (a task embedding per eruption feeds a generator MLP that "
    "emits the weights of a 1-16-1 tanh drift MLP, MSE, SGD momentum 0.9, clipping at 1). The "
    "curriculum's loss-weight table has step 120 typed 100.0 for 1.00: one step's gradient is 100x "
    "on an ordinary logged loss; clipping bounds the update and the run recovers.",
)
def h441_pumice_raft_weight_table(ctx) -> None:
    gen = seeded(4411)
    model = _HyperNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def backprop(step, loss):
        return loss * (100.0 if step == PUMICE_ONSET else 1.0)

    _loop(ctx, model, opt, _tasks(gen, 64, 411), 220, F.mse_loss, backprop=backprop, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    on = PUMICE_ONSET
    ctx.check(
        "gradient at onset over 30x the median of the 40 before",
        gn[on] > 30 * _median(gn[on - 40 : on]),
    )
    ctx.check("logged loss at onset ordinary", ls[on] < 2 * _median(ls[on - 20 : on]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.3 * _mean(ls[on - 20 : on]))
    ctx.check("trained", _fell(ls))


@scenario(
    family="hurdy_gurdy_wheel_rosin_hypernet_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hurdy-gurdy wheel-rosin hypernetwork (a task embedding per instrument feeds a generator "
    "MLP that emits a 1-16-1 tanh buzz-response MLP; each emitted matrix scaled by 1/sqrt(fan-in); "
    "MSE, Adam, ReduceLROnPlateau on a held-out batch). Control.",
)
def h441_hurdy_gurdy_hypernet_control(ctx) -> None:
    gen = seeded(4412)
    model = _HyperNet(fan_in=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_tasks(torch.Generator().manual_seed(12), 256, 412))

    def plateau():
        with torch.no_grad():
            return float(F.mse_loss(model(held[0]), held[1]))

    _loop(ctx, model, opt, _tasks(gen, 64, 412), 240, F.mse_loss, sched=sched, plateau=plateau)
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell under half", _mean(ls[-20:]) < 0.5 * _mean(ls[:10]))
    ctx.check("held-out loss fell", plateau() < 0.5 * float(held[1].var()))


def _dead_run(lr, seed):
    gen = seeded(seed)
    model = _Net(10, 64, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    probe = next(_readings(torch.Generator().manual_seed(13), 512, 10, seed=413))
    dead = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(probe[0])))

    return model, opt, gen, after, dead


@scenario(
    family="quoit_pitch_ringer_distance_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Quoit-pitch ringer-distance regressor (ReLU MLP, MSE, RMSprop). The lr is typed 3e-2 for "
    "3e-4: the first large normalised steps push most of fc2's pre-activations negative for every "
    "input, act2's units die and stop learning.",
)
def h441_quoit_rmsprop_lr_typo(ctx) -> None:
    ref_model, ref_opt, ref_gen, ref_after, ref_dead = _dead_run(3e-4, 4413)
    _loop(
        None,
        ref_model,
        ref_opt,
        _readings(ref_gen, 64, 10, seed=413),
        200,
        F.mse_loss,
        after=ref_after,
        attach=False,
    )
    model, opt, gen, after, dead = _dead_run(3e-2, 4413)
    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=413), 200, F.mse_loss, after=after)
    ctx.check("over 40% of act2's units dead over the last 50 steps", min(dead[-50:]) > 0.4)
    ctx.check("under 20% dead at 3e-4", max(ref_dead[-50:]) < 0.2)
    ctx.check("under 20% dead after the first step", dead[0] < 0.2)
    ctx.check("finite", _finite(ctx.losses))


PEAT_ONSET = 110


@scenario(
    family="peat_cutting_turf_bank_moisture_fraction_silu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=PEAT_ONSET,
    note="Peat-cutting turf-moisture regressor (SiLU MLP, MSE, plain SGD, clipping at 1). One bog's "
    "shard, at step 110, logs moisture in percent for a fraction (targets 100x): one corrupted "
    "batch, the loss and gradient jump, clipping bounds the step and the run recovers.",
)
def h441_peat_percent_shard(ctx) -> None:
    gen = seeded(4414)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def alter(step, x, y):
        return (x, y * 100.0) if step == PEAT_ONSET else (x, y)

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=414), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    on = PEAT_ONSET
    ctx.check("loss at onset over 100x the median before", ls[on] > 100 * _median(ls[on - 20 : on]))
    ctx.check(
        "gradient at onset over 20x the median before", gn[on] > 20 * _median(gn[on - 20 : on])
    )
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[on - 20 : on]))
    ctx.check("trained", _fell(ls))


@scenario(
    family="bell_ringing_rope_sally_raw_nll_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Change-ringing rope-sally grip classifier (ReLU MLP, six grips, AdamW). The loss is "
    "F.nll_loss on the head's raw logits (log_softmax forgotten): the 'loss' is minus the target "
    "logit, unbounded below, and the head's logits grow without bound.",
)
def h441_bell_rope_raw_nll(ctx) -> None:
    gen = seeded(4415)
    model = _Net(10, 48, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    probe = next(_grades(torch.Generator().manual_seed(15), 256, 10, 6, seed=415))
    sizes = []

    def after(step):
        if step % 20 == 0 or step == 199:
            with torch.no_grad():
                sizes.append(float(model(probe[0]).abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 6, seed=415),
        200,
        F.nll_loss,
        classifier=True,
        after=after,
    )
    ctx.check("max |logit| over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("still growing", sizes[-1] > 1.2 * sizes[-3])
    ctx.check("the 'loss' below -10", ctx.losses[-1] < -10)


class _LogFeature(nn.Module):
    """log of the press readings (kPa); no floor."""

    def forward(self, x):
        return torch.log(x)


class _PressNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.gelu(self.fc1(self.logfeat(x)))
        return self.head(F.gelu(self.fc2(h))).squeeze(-1)


CIDER_BREAK = 90


@scenario(
    family="cider_press_juice_yield_log_feature_gelu_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=CIDER_BREAK,
    heldout=True,
    onset=CIDER_BREAK,
    note="Cider-press juice-yield net (log of six press-plate pressure readings into a GELU MLP, "
    "MSE, Adam). The log feature has no floor; at step 90 a dry press (no pomace loaded) reads "
    "0.0 kPa on one plate: log 0 = -inf, and the loss is non-finite at step 90.",
)
def h441_cider_press_log_zero(ctx) -> None:
    gen = seeded(4416)
    model = _PressNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    seen = {}

    def readings():
        base = _readings(gen, 64, 6, seed=416)
        while True:
            x, y = next(base)
            yield torch.exp(0.5 * x) * 40.0, y  # positive pressures in kPa

    def alter(step, x, y):
        if step == CIDER_BREAK:
            x = x.clone()
            x[5, 2] = 0.0
            seen["x"] = x
        return x, y

    _loop(ctx, model, opt, readings(), 150, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("finite before the break", _finite(ls[:CIDER_BREAK]))
    ctx.check("non-finite at the break", _first_bad(ls) == CIDER_BREAK)
    with torch.no_grad():
        feat = model.logfeat(seen["x"])
    ctx.check("the log feature holds -inf", bool(torch.isinf(feat).any()))
    ctx.check("trained before the break", _fell(ls[:CIDER_BREAK]))


class _TwoGroup(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.trunk(x))).squeeze(-1)


@scenario(
    family="banjo_head_tension_two_group_tanh_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="Banjo head-tension regressor (tanh MLP, trunk and head in two param groups, MSE, "
    "Adagrad). The trunk group's lr is typed 1e-9 for 1e-2: the trunk receives gradients but "
    "its weights do not move; only the head learns.",
)
def h441_banjo_trunk_lr_typo(ctx) -> None:
    gen = seeded(4417)
    model = _TwoGroup()
    opt = torch.optim.Adagrad(
        [
            {"params": model.trunk.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    w0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    grads = []
    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=417), 200, F.mse_loss)
    x, y = next(_readings(torch.Generator().manual_seed(17), 64, 8, seed=417))
    F.mse_loss(model(x), y).backward()
    grads.append(float(model.trunk[0].weight.grad.norm()))
    ctx.check("trunk.0 moves under 1e-5 of its norm", _rel_change(w0, model.trunk[0].weight) < 1e-5)
    ctx.check("trunk.0 receives gradients", grads[0] > 1e-4)
    ctx.check("the head moves over 10%", _rel_change(h0, model.head.weight) > 0.1)
    ctx.check("finite", _finite(ctx.losses))


BONSAI_T = 0.01


class _TempNet(_Net):
    def __init__(self, temperature):
        super().__init__(12, 48, 8, act=nn.GELU)
        self.t = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.t


@scenario(
    family="bonsai_wire_grade_temperature_gelu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bonsai wiring-grade classifier (GELU MLP, eight wire gauges, cross-entropy, NAdam). The "
    "softmax temperature is typed 0.01 for 1.0: logits are divided by 0.01, the softmax saturates "
    "and most rows' target probability rounds to exactly 1.0 in float32.",
)
def h441_bonsai_temperature_typo(ctx) -> None:
    gen = seeded(4418)
    model = _TempNet(BONSAI_T)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
    fracs, refs = [], []
    state = {}

    def alter(step, x, y):
        state["b"] = (x, y)
        return x, y

    def after(step):
        x, y = state["b"]
        with torch.no_grad():
            raw = model.head(model.features(x))
        fracs.append(collapsed_fraction(raw / BONSAI_T, y))
        refs.append(collapsed_fraction(raw, y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 8, seed=418, spread=0.5),
        260,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        after=after,
    )
    ctx.check("over half the rows collapsed over the last 30 steps", _mean(fracs[-30:]) > 0.5)
    ctx.check("under 5% at temperature 1 on the same logits", _mean(refs[-30:]) < 0.05)
    ctx.check("under half collapsed at the start", _mean(fracs[:5]) < 0.5)


HAIL_WD = 1.3


@scenario(
    family="hailstone_embryo_growth_silu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Hailstone embryo-growth regressor (SiLU MLP, MSE, Adamax with a hand-written decoupled "
    "weight decay). The decay is applied as p *= (1 + lr * wd) for (1 - lr * wd): the weights "
    "grow a little each step and the loss climbs slowly after its low, with no other mechanism.",
)
def h441_hailstone_decay_sign(ctx) -> None:
    gen = seeded(4419)
    model = _Net(8, 48, 1, act=nn.SiLU)
    lr = 4e-3
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    n0 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * HAIL_WD)  # the sign bug: should be 1 - lr * wd

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=419), 300, F.mse_loss, after=after)
    ls = ctx.losses
    n1 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    ctx.check("last 20 over 3x the lowest", _ratio(ls) > 3)
    ctx.check("climbing through the second half", _mean(ls[-20:]) > 1.5 * _mean(ls[150:170]))
    ctx.check("weight norm over 2x", n1 > 2 * n0)
    ctx.check("finite", _finite(ls))


KELP_ONSET = 40


@scenario(
    family="kelp_holdfast_drag_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=KELP_ONSET,
    note="Kelp holdfast-drag regressor (GELU MLP, MSE, Adam betas (0.9, 0.999)). A debug branch "
    "left on for step 40 backpropagates the loss still multiplied by a 2**16 loss scale from an "
    "fp16 experiment (never unscaled): one gradient 65536x fills Adam's second moment, and for "
    "the rest of the run the updates are a small fraction of what they were; the loss stalls.",
)
def h441_kelp_unscaled_debug_step(ctx) -> None:
    def run(attach):
        gen = seeded(4420)
        model = _Net(10, 64, 1, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
        moves = []
        state = {}

        def before(step):
            state["w"] = [p.detach().clone() for p in model.parameters()]

        def after(step):
            num = sum(
                float((p.detach() - w).norm() ** 2)
                for p, w in zip(model.parameters(), state["w"], strict=True)
            )
            moves.append(math.sqrt(num))

        def backprop(step, loss):
            return loss * (2.0**16 if attach and step == KELP_ONSET else 1.0)

        losses = _loop(
            ctx if attach else None,
            model,
            opt,
            _readings(gen, 64, 10, seed=420),
            240,
            F.mse_loss,
            before=before,
            after=after,
            backprop=backprop,
            attach=attach,
        )
        v = max(float(s["exp_avg_sq"].max()) for s in opt.state.values())
        return losses, moves, v

    ref, ref_moves, ref_v = run(False)
    ls, moves, v = run(True)
    ctx.check("second moment over 1e6x the reference's", v > 1e6 * ref_v)
    ctx.check(
        "updates over steps 100..239 under 1/10 of the reference's and of steps 20..39",
        _median(moves[100:]) < 0.1 * min(_median(ref_moves[100:]), _median(moves[20:40])),
    )
    ctx.check(
        "loss stalls: last 20 over 1.5x the reference's", _mean(ls[-20:]) > 1.5 * _mean(ref[-20:])
    )
    ctx.check("logged loss at onset ordinary", ls[KELP_ONSET] < 2 * _median(ls[30:40]))


class _DeepTanh(nn.Module):
    def __init__(self, d_in=12, width=32, depth=10, gain=5.0 / 3.0):
        super().__init__()
        dims = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.xavier_normal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for m in self.layers:
            x = m(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = torch.tanh(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    return float(model.outs[0].grad.norm() / model.outs[-1].grad.norm().clamp_min(1e-30))


@scenario(
    family="clog_dance_heel_tap_deep_tanh_mlp",
    optimizer="RAdam",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Clog-dance heel-tap timing regressor (10-layer tanh MLP, MSE, RAdam, clipping at 1). "
    "The xavier init gain is typed 3.5 for 5/3: each layer amplifies the backward signal, "
    "dL/d(layers.0 output) is orders of magnitude above dL/d(layers.9 output) and clipping keeps "
    "cutting the gradient.",
)
def h441_clog_dance_init_gain(ctx) -> None:
    def start_ratio(gain):
        seeded(4421)
        m = _DeepTanh(gain=gain)
        x, y = next(_readings(torch.Generator().manual_seed(21), 64, 12, seed=421))
        F.mse_loss(m(x), y).backward()
        return _depth_ratio(m)

    ref = start_ratio(5.0 / 3.0)
    gen = seeded(4421)
    model = _DeepTanh(gain=3.5)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ratios = []

    def after(step):
        ratios.append(_depth_ratio(model))  # the outputs' grads of this step's backward

    _loop(ctx, model, opt, _readings(gen, 64, 12, seed=421), 150, F.mse_loss, clip=1.0, after=after)
    ctx.check("dL/d(layers.0) over 20x dL/d(layers.9) at the start", ratios[0] > 20)
    ctx.check("over 10x in median over the run", _median(ratios) > 10)
    ctx.check("under 5x at gain 5/3", ref < 5)
    ctx.check("gradient over the clip most steps", _median(ctx.grad_norms) > 1.0)


class _BobbinConv(nn.Module):
    """A ReLU Conv1d classifier over a 3-channel bobbin-tension trace of 32 samples."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _bobbin_traces(gen, batch=64, classes=5, length=32):
    """Each lace pattern has its own tension rhythm; the class is the pattern."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = 0.15 + 0.12 * y.float()[:, None]
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        base = torch.stack(
            [torch.sin(f * t + ph), torch.cos(2 * f * t + ph), torch.sin(0.5 * f * t)], 1
        )
        yield base + 0.4 * torch.randn(batch, 3, length, generator=gen), y


@scenario(
    family="lacemaking_bobbin_tension_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bobbin-lace pattern classifier from bobbin-tension traces (ReLU Conv1d, cross-entropy "
    "with label smoothing 0.1, fp16 autocast with a GradScaler, AdamW under OneCycleLR, clipping "
    "at 1). Control.",
)
def h441_lacemaking_fp16_control(ctx) -> None:
    gen = seeded(4422)
    model = _BobbinConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _bobbin_traces(gen),
        steps,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell under 60%", _mean(ls[-20:]) < 0.6 * _mean(ls[:10]))
    x, y = next(_bobbin_traces(torch.Generator().manual_seed(22), 256))
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("held-out accuracy over 80%", acc > 0.8)


class _GaussNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.logvar = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean(h), self.logvar(h).clamp(-8.0, 6.0)], -1)


def _gauss_nll(out, y):
    mu, logvar = out[:, 0], out[:, 1]
    return (0.5 * (logvar + (y - mu) ** 2 / logvar.exp())).mean()


def _clamp_heat(gen, batch=64, seed=423):
    """Sugar-beet clamp core temperature rise with noise that grows with the pile's moisture."""
    base = _readings(gen, batch, 8, seed=seed, noise=0.0)
    while True:
        x, y = next(base)
        sd = 0.05 + 0.3 * torch.sigmoid(x[:, 0])
        yield x, y + sd * torch.randn(batch, generator=gen)


@scenario(
    family="sugar_beet_clamp_heat_gaussian_nll_silu_net",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sugar-beet clamp core-heat forecaster (SiLU MLP with mean and clamped log-variance heads, "
    "Gaussian NLL, SGD Nesterov momentum 0.9, linear warm-up over 20 steps then cosine, "
    "accumulation over 2, clipping at 1, heteroscedastic noise). Control.",
)
def h441_sugar_beet_gaussian_control(ctx) -> None:
    gen = seeded(4423)
    model = _GaussNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    steps = 200

    def lr_at(step):
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    _loop(ctx, model, opt, _clamp_heat(gen), steps, _gauss_nll, sched=sched, clip=1.0, accumulate=2)
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("NLL fell by over 0.4 nats", _mean(ls[-20:]) < _mean(ls[:10]) - 0.4)
