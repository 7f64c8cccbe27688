"""Held-out set 433 (``h433_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a cooperage hoop-seat multilabel BCE net whose curriculum loss weight for one step was
typed 100.0 for 1.00 (one gradient burst), a maple sugarhouse evaporator-draw SiLU regressor whose
hand-written decoupled weight decay multiplies by (1 + lr*wd) instead of (1 - lr*wd) (a slow
climb), a sandboard dune-run 10-layer tanh MLP initialised with gain 3.5 for 5/3 (gradients grow
through depth), a bagpipe chanter reed classifier whose temperature is read in hundredths (softmax
saturates), a lute gut-string log-power net whose log has no floor (a muted string gives log 0),
a freediving lanyard descent-time regressor fed one shard in centimetres for metres (one
corrupted batch), a canal lock fill-time Gaussian-NLL net whose trunk group's lr is typed 3e-9
for 3e-3 (a frozen trunk), a saltpan brine-evaporation regressor whose StepLR gamma is typed 10
for 0.1 (lr past 2/sharpness), a jai-alai cesta rebound classifier trained with nll_loss on raw
logits (the head's logits grow without bound) and a kite aerial-photo tilt ReLU regressor on
Adamax with lr typed 1e-1 for 1e-3 (ReLUs die).

Controls: a chainsaw-carving kerf-depth GELU regressor (linear warm-up, Adam, gradient clipping,
Huber), an aurora Kp-index quantile regression network (pinball losses at 0.1/0.5/0.9, monotone
outputs by cumulative softplus increments, AdamW under OneCycleLR) and a cajon slap-tone fp16
Conv1d classifier (GradScaler, SGD momentum, ReduceLROnPlateau, label smoothing, accumulation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
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


def _teacher_batches(gen, d_in, d_out=1, batch=64, noise=0.05, scale=1.0, squash=True):
    """x ~ N(0, 1); y from a fixed random two-layer teacher, plus noise."""
    w1 = torch.randn(d_in, 16, generator=gen) / math.sqrt(d_in)
    w2 = torch.randn(16, d_out, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        h = torch.tanh(x @ w1) if squash else x @ w1
        y = scale * (h @ w2) + noise * torch.randn(batch, d_out, generator=gen)
        yield x, y


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
):
    """``before(step)`` runs first, ``alter(step, x, y)`` changes a batch, ``backprop(step,
    loss)`` returns the loss backpropagated, ``after(step)`` runs after the optimizer step.
    Stops after a non-finite loss, once ``ctx.step`` has seen it."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        last = None
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
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
            last = loss
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
        shown_t = last.detach() * 0 + shown
        ctx.step(shown_t)
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(shown)
        if not math.isfinite(shown):
            break


# -- 1. gradient_spike: a loss-weight typo for one step -----------------------------------------


class HoopSeatNet(nn.Module):
    """Cooperage: flags which of 6 hoop-seat faults a barrel shows from 12 stave gauges."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 48)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(48, 6)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="cooperage_hoop_seat_accum_bce_net",
    optimizer="SGD(momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="multilabel BCE with accumulation over 4; the curriculum's loss-weight table has step "
    "120's entry typed 100.0 for 1.00, so one step's gradient is 100x; clipped at 1, recovers",
)
def h433_cooperage_hoop_weight_typo(ctx) -> None:
    gen = seeded(4331)
    model = HoopSeatNet()
    w = torch.randn(12, 6, generator=gen)

    def batches():
        while True:
            x = torch.randn(32, 12, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(32, 6, generator=gen)) > 0).float()
            yield x, y

    weights = {s: 1.0 for s in range(220)}
    weights[120] = 100.0  # typed 100.0 for 1.00 in the curriculum table

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _loop(
        ctx,
        model,
        opt,
        batches(),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=lambda s, loss: weights[s] * loss,
        clip=1.0,
        accumulate=4,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "gradient over 30x the median of the 20 steps before", g[120] > 30 * _median(g[100:120])
    )
    ctx.check("logged loss at onset ordinary (under 2x)", ls[120] < 2 * _mean(ls[110:120]))
    ctx.check("finite and recovers", _finite(ls) and _mean(ls[-10:]) < 1.5 * _mean(ls[110:120]))


# -- 2. loss_divergence: decoupled weight decay with its sign flipped ----------------------------


class EvaporatorDrawNet(nn.Module):
    """Maple sugarhouse: when to draw off syrup (minutes) from pan temperatures and sap Brix."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


@scenario(
    family="maple_sugarhouse_evaporator_draw_silu_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written decoupled weight decay applied after each step as p *= (1 + lr * wd) "
    "instead of (1 - lr * wd): the weights grow geometrically and the loss climbs slowly",
)
def h433_maple_evaporator_wd_sign(ctx) -> None:
    gen = seeded(4332)
    model = EvaporatorDrawNet()
    lr, wd = 0.02, 0.4
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    norm0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    @torch.no_grad()
    def decay(step):
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(1 + lr * wd)  # sign bug: should shrink

    _loop(ctx, model, opt, _teacher_batches(gen, 10), 260, F.mse_loss, after=decay)
    ls = ctx.losses
    norm1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    ctx.check("finite", _finite(ls))
    ctx.check("last 20 steps over 3x the lowest loss", _mean(ls[-20:]) > 3 * min(ls))
    ctx.check("climbing through the second half", _mean(ls[-20:]) > 1.5 * _mean(ls[130:150]))
    ctx.check("weight norm over 2x", norm1 > 2 * norm0)


# -- 3. exploding_gradients: init gain typo in a deep tanh stack --------------------------------


class DuneRunNet(nn.Module):
    """Sandboard: run time down a dune from slope, sand moisture and wax readings."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(16 if i == 0 else 64, 64) for i in range(10))
        self.head = nn.Linear(64, 1)
        for lin in self.layers:
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
        self.outs: list[torch.Tensor] = []

    def forward(self, x):
        self.outs = []
        for lin in self.layers:
            x = torch.tanh(lin(x))
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
        return self.head(x)


def _depth_ratio(model, x, y) -> float:
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    first = float(model.outs[0].grad.norm())
    last = float(model.outs[-1].grad.norm())
    model.zero_grad()
    return first / max(last, 1e-12)


@scenario(
    family="sandboard_dune_run_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="10-layer tanh MLP initialised with xavier gain typed 3.5 for 5/3: chaotic regime, "
    "the gradient grows from the last layer back to the first",
)
def h433_sandboard_dune_gain(ctx) -> None:
    gen = seeded(4333)
    batches = _teacher_batches(gen, 16)
    xb, yb = next(batches)
    ref = DuneRunNet(5 / 3)
    ref_ratio = _depth_ratio(ref, xb, yb)
    model = DuneRunNet(3.5)
    start_ratio = _depth_ratio(model, xb, yb)
    ratios = []
    opt = torch.optim.SGD(model.parameters(), lr=0.002)

    def after(step):
        if step % 20 == 0:
            ratios.append(_depth_ratio(model, xb, yb))

    _loop(ctx, model, opt, batches, 160, F.mse_loss, after=after)
    ctx.check("dL/d(layer 0 out) over 20x dL/d(layer 9 out) at start", start_ratio > 20)
    ctx.check("still over 10x in median during training", _median(ratios) > 10)
    ctx.check("under 5x at gain 5/3", ref_ratio < 5)


# -- 4. softmax_collapse: temperature read in hundredths ----------------------------------------


class ChanterReedNet(nn.Module):
    """Bagpipe chanter: grades a reed (10 grades) from an 8x8 pressure-response map."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)
        self.temperature = temperature

    def forward(self, x):
        return self.head(F.gelu(self.fc1(x))) / self.temperature


@scenario(
    family="bagpipe_chanter_reed_grade_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the config's temperature 1 (percent units, '100') is divided by 10000 instead of 100: "
    "logits are scaled by 100 and the softmax rounds to exactly 0/1",
)
def h433_bagpipe_chanter_temperature(ctx) -> None:
    gen = seeded(4334)
    model = ChanterReedNet(temperature=100 / 10000)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = digit_batches(gen, 64)
    fracs, ref = [], []

    def alter(step, x, y):
        if step >= 120:
            with torch.no_grad():
                z = model(x)
                fracs.append(collapsed_fraction(z, y))
                ref.append(collapsed_fraction(z * model.temperature, y))
        return x, y

    _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, alter=alter)
    ctx.check("over half the rows' target prob exactly 1.0 (last 30)", _mean(fracs) > 0.5)
    ctx.check("under 5% at temperature 1 on the same logits", _mean(ref) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- 5. nonfinite: log of a power with no floor --------------------------------------------------


class LogPower(nn.Module):
    def forward(self, p):
        return torch.log(p)  # missing .clamp_min(eps)


class GutStringNet(nn.Module):
    """Lute: gut-string age (weeks) from the power of its 12 partials."""

    def __init__(self) -> None:
        super().__init__()
        self.logpow = LogPower()
        self.fc1 = nn.Linear(12, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, p):
        return self.head(torch.relu(self.fc1(self.logpow(p))))


@scenario(
    family="lute_gut_string_logpower_relu_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("logpow",),
    diverges=90,
    heldout=True,
    onset=90,
    note="partial powers go through log with no floor; at step 90 a batch holds a string "
    "recorded muted (partial power exactly 0): log 0 = -inf and the loss turns non-finite",
)
def h433_lute_gut_log_zero(ctx) -> None:
    gen = seeded(4335)
    model = GutStringNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    decay = torch.linspace(0.2, 2.0, 12)

    def batches():
        while True:
            age = torch.rand(48, 1, generator=gen)
            amp = torch.exp(-decay * (1 + age)) * (1 + 0.1 * torch.rand(48, 12, generator=gen))
            yield amp**2, age

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[5, 7:] = 0.0  # muted string: the upper partials read exactly 0
        return x, y

    _loop(ctx, model, opt, batches(), 150, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("finite before step 90", _finite(ls[:90]) and len(ls) > 90)
    ctx.check("loss non-finite first at step 90", _first_bad(ls) == 90)
    ctx.check("loss fell before the fault", _mean(ls[80:90]) < _mean(ls[:10]))


# -- 6. data_outlier: one shard in centimetres ---------------------------------------------------


class LanyardDescentNet(nn.Module):
    """Freediving: descent time along the lanyard from depth, fin type and pre-dive readings."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@scenario(
    family="freediving_lanyard_descent_relu_regressor",
    optimizer="SGD(nesterov=True)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=110,
    note="one competition's shard at step 110 logs depth in centimetres for metres (x100 on the "
    "depth feature); clipped at 1, the run recovers",
)
def h433_freediving_lanyard_cm(ctx) -> None:
    gen = seeded(4336)
    model = LanyardDescentNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:, 0] = x[:, 0] * 100.0
        return x, y

    _loop(ctx, model, opt, _teacher_batches(gen, 8), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at onset over 50x the median before", ls[110] > 50 * _median(ls[90:110]))
    ctx.check("gradient at onset over 20x the median before", g[110] > 20 * _median(g[90:110]))
    ctx.check("finite and recovers", _finite(ls) and _mean(ls[-10:]) < 2 * _mean(ls[100:110]))


# -- 7. update_ratio_out_of_range: a param-group lr typo ----------------------------------------


class LockFillNet(nn.Module):
    """Canal lock: fill time (mean and variance) from paddle openings and pound levels."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh())
        self.head = nn.Linear(48, 2)

    def forward(self, x):
        return self.head(self.trunk(x))


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, :1], y, F.softplus(out[:, 1:]) + 1e-3)


@scenario(
    family="canal_lock_fill_time_two_group_gaussian_nll_net",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="two param groups; the trunk's lr is typed 3e-9 for 3e-3, so the trunk is frozen while "
    "the head trains; Gaussian NLL",
)
def h433_canal_lock_trunk_lr(ctx) -> None:
    gen = seeded(4337)
    model = LockFillNet()
    opt = torch.optim.RAdam(
        [
            {"params": model.trunk.parameters(), "lr": 3e-9},
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )
    t0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    tg = []
    batches = _teacher_batches(gen, 10, noise=0.2)
    _loop(ctx, model, opt, batches, 200, _gauss_nll)
    x, y = next(batches)
    _gauss_nll(model(x), y).backward()
    tg.append(float(model.trunk[0].weight.grad.norm()))
    rel_t = float((model.trunk[0].weight.detach() - t0).norm() / t0.norm())
    rel_h = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check("trunk.0 moved under 1e-4 of its norm", rel_t < 1e-4)
    ctx.check("trunk.0 receives gradients", tg[0] > 1e-4)
    ctx.check("head moved over 10%", rel_h > 0.1)
    ctx.check("finite", _finite(ctx.losses))


# -- 8. sharpness_above_limit: StepLR gamma typed 10 for 0.1 ------------------------------------


class BrineEvapNet(nn.Module):
    """Saltpan: daily brine evaporation (mm) from sun, wind, humidity and brine density."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def _sharpness(model, x, y, iters=20) -> float:
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="saltpan_brine_evaporation_stepsched_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=80,
    note="StepLR(step_size=80) with gamma typed 10 for 0.1: at step 80 the lr jumps 10x, "
    "lr x sharpness goes past 2 and the loss blows up",
)
def h433_saltpan_steplr_gamma(ctx) -> None:
    gen = seeded(4338)
    model = BrineEvapNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=10.0)
    batches = _teacher_batches(gen, 8, scale=3.0)
    xb, yb = next(batches)
    seen = {}

    def before(step):
        if step in (79, 80):
            seen[step] = opt.param_groups[0]["lr"] * _sharpness(model, xb, yb)

    _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 before the jump", seen.get(79, 9) < 2)
    ctx.check("lr x sharpness over 2 after the jump", seen.get(80, 0) > 2)
    blew = _first_bad(ls) is not None or max(ls[80:]) > 100 * _mean(ls[70:80])
    ctx.check("loss blows up after step 80", blew)
    ctx.check("loss fell before the jump", _mean(ls[70:80]) < _mean(ls[:10]))


# -- 9. output_logit_divergence: nll_loss on raw logits ------------------------------------------


class CestaReboundNet(nn.Module):
    """Jai-alai: which of 10 wall zones a cesta rebound lands in, from an 8x8 impact map."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.relu(self.fc1(x)))


@scenario(
    family="jai_alai_fronton_zone_raw_logit_nll_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="F.nll_loss applied to raw logits (log_softmax forgotten): the loss is -logit[target], "
    "unbounded below, and the head's logits grow without bound",
)
def h433_jai_alai_raw_nll(ctx) -> None:
    gen = seeded(4339)
    model = CestaReboundNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    batches = digit_batches(gen, 64)
    xb, _ = next(batches)
    with torch.no_grad():
        start = float(model(xb).abs().max())
    mids = []

    def after(step):
        if step in (149, 299):
            with torch.no_grad():
                mids.append(float(model(xb).abs().max()))

    _loop(ctx, model, opt, batches, 300, F.nll_loss, classifier=True, after=after)
    ctx.check("max |logit| over 20x its start", mids[-1] > 20 * start)
    ctx.check("still growing (last over 1.3x mid-run)", mids[-1] > 1.3 * mids[0])
    ctx.check("'loss' below -10", ctx.losses[-1] < -10)


# -- 10. loss_of_plasticity: Adamax lr typo kills ReLUs ------------------------------------------


class TiltNet(nn.Module):
    """Kite aerial photography: camera-rig tilt from line tension, wind and kite angle."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(64, 1)

    def feats(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        return self.head(self.feats(x))


def _dead(model, x) -> float:
    with torch.no_grad():
        h = model.feats(x)
    return float((h <= 0).all(0).float().mean())


def _tilt_run(lr, gen, ctx=None, steps=200):
    model = TiltNet()
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    batches = _teacher_batches(gen, 12, scale=2.0)
    xb, _ = next(batches)
    fr = []
    if ctx is not None:

        def after(s):
            if s >= steps - 50:
                fr.append(_dead(model, xb))

        _loop(ctx, model, opt, batches, steps, F.mse_loss, after=after)
    else:
        for s in range(steps):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if s >= steps - 50:
                fr.append(_dead(model, xb))
    return _mean(fr)


@scenario(
    family="kite_aerial_photo_rig_tilt_adamax_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Adamax lr typed 1e-1 for 1e-3: the first large updates push fc2's pre-activations "
    "negative for every input and act2's units die and stop learning",
)
def h433_kite_aerial_dead_relu(ctx) -> None:
    gen = seeded(43310)
    ref = _tilt_run(1e-3, gen)
    gen = seeded(43310)
    bad = _tilt_run(1e-1, gen, ctx)
    ctx.check("over 45% of act2's units dead over the last 50 steps", bad > 0.45)
    ctx.check("under 20% dead at lr 1e-3", ref < 0.2)
    ctx.check("finite", _finite(ctx.losses))


# -- controls ------------------------------------------------------------------------------------


class KerfDepthNet(nn.Module):
    """Chainsaw carving: kerf depth from bar angle, chain speed and wood density."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    family="chainsaw_carving_kerf_depth_warmup_gelu_regressor",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="linear warm-up over 30 steps, Adam, gradient clipping at 1, Huber loss, noisy targets",
)
def h433_chainsaw_kerf_warmup_clip(ctx) -> None:
    gen = seeded(43311)
    model = KerfDepthNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    batches = _teacher_batches(gen, 10, noise=0.2, scale=2.0)
    _loop(ctx, model, opt, batches, 200, F.huber_loss, clip=1.0, sched=sched)
    ctx.check("loss fell and finite", _fell(ctx.losses, ratio=0.6))


QUANTILES = (0.1, 0.5, 0.9)


class KpQuantileNet(nn.Module):
    """Aurora: quantiles of the next 3-hour Kp index from solar-wind readings; monotone by
    construction (a base plus cumulative softplus increments)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, len(QUANTILES))

    def forward(self, x):
        z = self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))
        return torch.cat([z[:, :1], z[:, :1] + torch.cumsum(F.softplus(z[:, 1:]), 1)], 1)


def _pinball(q_pred, y):
    losses = []
    for i, q in enumerate(QUANTILES):
        e = y[:, 0] - q_pred[:, i]
        losses.append(torch.maximum(q * e, (q - 1) * e).mean())
    return sum(losses)


@scenario(
    family="aurora_kp_index_quantile_pinball_net",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="quantile regression at 0.1/0.5/0.9 with pinball losses, monotone outputs by "
    "cumulative softplus increments, AdamW under OneCycleLR",
)
def h433_aurora_kp_quantiles(ctx) -> None:
    gen = seeded(43312)
    model = KpQuantileNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=220)
    w = torch.randn(8, generator=gen)

    def batches():
        while True:
            x = torch.randn(64, 8, generator=gen)
            scale = 0.3 + 0.5 * torch.sigmoid(x[:, 1:2])
            y = 3 + torch.tanh(x @ w / 3)[:, None] + scale * torch.randn(64, 1, generator=gen)
            yield x, y

    b = batches()
    _loop(ctx, model, opt, b, 220, _pinball, sched=sched)
    x, y = next(b)
    with torch.no_grad():
        q = model(x)
    cover = float((y[:, 0] <= q[:, 2]).float().mean())
    ctx.check("loss fell and finite", _fell(ctx.losses, ratio=0.6))
    ctx.check("quantiles ordered", bool((q[:, 1:] >= q[:, :-1]).all()))
    ctx.check("0.9 quantile covers 75-99%", 0.75 < cover < 0.99)


class SlapToneNet(nn.Module):
    """Cajon: slap, bass or tip tone (and 7 hand positions) from a 64-sample strike trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16 * 16, 10)

    def forward(self, x):
        x = x.reshape(-1, 1, 64)
        x = F.max_pool1d(F.relu(self.conv1(x)), 2)
        x = F.max_pool1d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


@scenario(
    family="cajon_slap_tone_fp16_conv1d_plateau_classifier",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    heldout=True,
    note="fp16 autocast with GradScaler, SGD momentum, ReduceLROnPlateau, label smoothing 0.1, "
    "accumulation over 2, clipping at 2",
)
def h433_cajon_slap_fp16(ctx) -> None:
    gen = seeded(43313)
    model = SlapToneNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 32),
        160,
        lambda z, y: F.cross_entropy(z, y, label_smoothing=0.1),
        classifier=True,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=2.0,
    )
    ctx.check("loss fell and finite", _fell(ctx.losses, ratio=0.6))
    ctx.check("scale finite and positive", all(0 < s < math.inf for s in ctx.scales))
