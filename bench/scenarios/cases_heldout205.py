"""Held-out set 205 (``h205_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a sextant star-sight tanh regressor whose MultiStepLR gamma was
typed 10 for 0.1, an upholstery spring-firmness ReLU MLP at a learning rate typed 1e-1 for 1e-3,
a tea-taster cosine classifier whose learnt logit scale lost its clamp, a mudslide run-out
regressor with a hand-written weight decay of the wrong sign, a freediving two-tower MLP whose
encoder group's rate was typed 3e-9, a sleet accumulation Poisson net whose log link has no
clamp, a squall gust ReLU RNN with recurrent weights initialised with gain 1.6, an
arm-wrestling grip-force regressor fed one shard in newtons, a modern-pentathlon multitask MLP
whose loss-weight table reads 100 for 1.00 at one step, a gilding gold-leaf classifier dividing
its logits by a contrastive temperature, and three controls (a cirrus-cloud GroupNorm CNN with
weight decay and a step schedule, a taxidermy drying-time Gaussian-NLL net in fp16, a
rope-making tied-weight autoencoder).

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
    dead_fraction,
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


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _moved(params, start) -> float:
    return max(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` after the
    optimizer step; ``scale_loss(step, loss)`` returns what is backpropagated; stops after
    logging a NaN loss."""
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
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
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
        if math.isnan(shown):
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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
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


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

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


# -- sextant: a MultiStepLR whose gamma was typed 10 for 0.1 ---------------------------------------


@scenario(
    family="sextant_star_sight_altitude_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=100,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) correcting a navigator's sextant star sight (the "
    "altitude correction, standardised) from 10 standardised readings (index error, dip, "
    "refraction, temperature, pressure, ...), plain SGD at 0.08, MSE, and a MultiStepLR "
    "meant to decay the rate at step 100 whose config reads `gamma: 10` for `gamma: 0.1`: at "
    "step 100 the rate goes up tenfold to 0.8; lr x sharpness goes from below 1 to far past "
    "2, the stability limit, and the loss blows up soon after.",
)
def h205_sextant_step_gamma_typo(ctx: Context) -> None:
    gen = seeded(20501)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[100], gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(51), 256, 10, seed=1))
    sharp, lrs = {}, {}

    def before(step):
        if step in (99, 100):
            sharp[step] = _sharpness(model, F.mse_loss, *probe)
            lrs[step] = opt.param_groups[0]["lr"]

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=1), 180, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    ctx.check("lr x sharpness below 1 at step 99", lrs[99] * sharp[99] < 1)
    ctx.check("lr x sharpness past 2 at step 100", lrs[100] * sharp[100] > 2)
    ctx.check("rate at step 100 is 10x that at step 99", abs(lrs[100] - 10 * lrs[99]) < 1e-9)
    ctx.check("loss fell before step 100", _fell(ls[:100], ratio=0.5))
    late = [v if math.isfinite(v) else 1e30 for v in ls[100:]]
    ctx.check(
        "loss past 20x its pre-onset level after step 100", max(late) > 20 * _mean(ls[80:100])
    )


# -- upholstery: a learning rate typed 1e-1 for 1e-3 kills the ReLUs --------------------------------


def _springs(gen, batch, seed):
    """Twelve raw readings of an upholstered seat's coil springs (wire gauge, coil count,
    lashing tension, ... in their own units, all positive) around one profile per firmness
    grade (5 grades)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1 + 2 * torch.rand(5, 12, generator=g)
    while True:
        y = torch.randint(0, 5, (batch,), generator=gen)
        x = (protos[y] * (1 + 0.25 * torch.randn(batch, 12, generator=gen))).clamp_min(0)
        yield x, y


@scenario(
    family="upholstery_spring_firmness_relu_mlp",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading an upholstered seat's coil-spring "
    "firmness (5 grades) from 12 raw positive readings (wire gauge, coil count, lashing "
    "tension, ...), Adam, cross-entropy. The config's `lr: 1e-1` was meant as 1e-3: with "
    "positive inputs every weight of an fc1 unit gets a gradient of the same sign, the first "
    "Adam steps move them all by 0.1 together and push most units below zero on every "
    "reading; they never fire again and get no gradient: the share of dead fc1 units goes "
    "from under 20% at init to over 90%, and the loss stays near 1 where the same run at "
    "1e-3 reaches about 0.25; finite.",
)
def h205_upholstery_lr_typo_dead_relu(ctx: Context) -> None:
    gen = seeded(20502)
    model = Stack(12, hidden=64, out=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-1)
    probe_x, _ = next(_springs(torch.Generator().manual_seed(52), 512, seed=2))
    dead = []

    def before(step):
        if step in (0, 149):
            with torch.no_grad():
                dead.append(dead_fraction(model.act1(model.fc1(probe_x))))

    _train(
        ctx,
        model,
        opt,
        _springs(gen, 64, seed=2),
        150,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ctx.check("under 30% of fc1 units dead at step 0", dead[0] < 0.3)
    ctx.check("over 80% of fc1 units dead at the end", dead[1] > 0.8)
    ctx.check("dead share of fc1 grew by 50 points", dead[1] > dead[0] + 0.5)
    ctx.check("loss above 0.6 over the last 20 steps", _mean(ctx.losses[-20:]) > 0.6)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- tea taster: a cosine classifier whose learnt logit scale lost its clamp -----------------------


class ScaledCosineHead(nn.Module):
    """Cosine similarity to one learnt prototype per class times exp(log_scale); the recipe
    clamps log_scale at ln 100, this port does not."""

    def __init__(self, dim, classes):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.log_scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos


class LeafGrader(nn.Module):
    def __init__(self, d_in=16, hidden=48, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = ScaledCosineHead(hidden, classes)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    family="tea_taster_leaf_grade_cosine_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2) with a cosine-similarity head (`head`: learnt class "
    "prototypes times exp(log_scale)) grading tea leaves (6 grades: OP, BOP, FBOP, ...) from "
    "16 standardised tasting readings, AdamW at 3e-2 with weight decay 1e-2 (which does not "
    "reach a scalar this fast), cross-entropy. The recipe clamps log_scale at ln 100; the "
    "port dropped the clamp, the training set is separable, and the scale climbs every step: "
    "the head's logits grow more than 20-fold and are still growing at the end; the "
    "loss is near 0 and finite.",
)
def h205_tea_taster_unclamped_logit_scale(ctx: Context) -> None:
    gen = seeded(20503)
    model = LeafGrader()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=1e-2)
    top = []

    def watch(step, out, x, y):
        top.append(float(out.detach().abs().amax(-1).mean()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=3, noise=0.2),
        250,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    scale = float(model.head.log_scale.detach().exp())
    ctx.check("logit scale grew 5x from 1", scale > 5)
    ctx.check("largest logit grew 20x from step 0", _mean(top[-10:]) > 20 * top[0])
    ctx.check(
        "largest logit still growing (last 10 steps above steps 150-160)",
        _mean(top[-10:]) > _mean(top[150:160]),
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.3))


# -- mudslide: a hand-written weight decay with the wrong sign --------------------------------------


@scenario(
    family="mudslide_runout_distance_relu_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) regressing a mudslide's run-out distance (standardised) "
    "from 10 standardised readings (slope, saturation, volume, ...), plain SGD at 0.03, MSE, "
    "and a hand-written decoupled weight decay after each step written "
    "`p.add_(p, alpha=lr * wd)` (the minus sign lost) with wd 0.1: every weight grows 1.003x "
    "a step, the loss first falls and then climbs slowly and steadily for the rest of the "
    "run with no spike; finite.",
)
def h205_mudslide_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(20504)
    model = Stack(10, hidden=64)
    lr, wd = 0.03, 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)
            norms.append(float(model.fc2.weight.norm()))

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=4), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _mean(ls[max(0, i - 5) : i + 5]))
    ctx.check("weights grew 2x", norms[-1] > 2 * norms[0])
    ctx.check("loss fell first (minimum before step 150)", low < 150)
    ctx.check("loss at the end 3x its minimum", _mean(ls[-10:]) > 3 * _mean(ls[low - 5 : low + 5]))
    ctx.check(
        "climb is gradual (no step above 3x the one before)",
        all(b < 3 * a for a, b in zip(ls[low:], ls[low + 1 :], strict=False)),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- freediving: the encoder group's learning rate typed 3e-9 --------------------------------------


class DiveNet(nn.Module):
    """Two towers (a physiology encoder and a conditions encoder) concatenated into a head."""

    def __init__(self):
        super().__init__()
        self.body_enc = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.sea_enc = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        h = torch.cat([self.body_enc(x[:, :6]), self.sea_enc(x[:, 6:])], -1)
        return self.head(h).squeeze(-1)


@scenario(
    family="freediving_breath_hold_two_tower_mlp",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("body_enc",),
    diverges=None,
    heldout=True,
    note="A two-tower ReLU MLP (`body_enc` over 6 physiology readings: resting heart rate, "
    "lung volume, ...; `sea_enc` over 6 conditions: water temperature, depth, current, ...; a "
    "head) regressing a freediver's breath-hold time (standardised), Adagrad, MSE, three "
    "param groups from a YAML (encoders at 3e-2, head at 1e-2) where the body encoder's "
    "`lr: 3e-2` was typed `3e-9`: its updates are about 1e-9 of its weights, it stays at its "
    "initialisation while the other tower and the head learn; finite.",
)
def h205_freediving_group_lr_typo(ctx: Context) -> None:
    gen = seeded(20505)
    model = DiveNet()
    body = list(model.body_enc.parameters())
    rest = list(model.sea_enc.parameters()) + list(model.head.parameters())
    opt = torch.optim.Adagrad(
        [
            {"params": body, "lr": 3e-9},
            {"params": list(model.sea_enc.parameters()), "lr": 3e-2},
            {"params": list(model.head.parameters()), "lr": 1e-2},
        ]
    )
    body0, rest0 = _snapshot(body), _snapshot(rest)
    _train(ctx, model, opt, _readings(gen, 64, 12, seed=5), 200, F.mse_loss)
    ctx.check("body encoder moved less than 1e-6", _moved(body, body0) < 1e-6)
    ctx.check("the other tower and the head moved past 1e-2", _moved(rest, rest0) > 1e-2)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.8))


# -- sleet: a log link with no clamp --------------------------------------------------------------


class LogRelu(nn.Module):
    """The hand-written log link: log(relu(z)), the recipe's clamp at 1e-6 left out."""

    def forward(self, z):
        return torch.log(F.relu(z))


class SleetNet(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        self.log_rate = LogRelu()
        with torch.no_grad():
            self.fc2.bias.fill_(2.0)

    def forward(self, x):
        return self.log_rate(self.fc2(torch.tanh(self.fc1(x)))).squeeze(-1)


def _poisson_nll(log_rate, y):
    return (log_rate.exp() - y * log_rate).mean()


def _sleet(gen, batch, seed):
    """Eight standardised readings (temperature aloft, dew point, ...) and the count of sleet
    pellets on a sensor plate per minute, Poisson with a rate that is tiny in warm air."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        rate = torch.exp(1.2 * x @ w / math.sqrt(8) - 0.5)
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="sleet_pellet_count_poisson_net",
    optimizer="ASGD",
    cause="nonfinite",
    where=("log_rate",),
    diverges=10,
    heldout=True,
    note="A tanh MLP (fc1, fc2) with a hand-written log link (`log_rate`: log(relu(z)), the "
    "recipe's clamp at 1e-6 left out) predicting the count of sleet pellets per minute on "
    "a sensor plate from 8 standardised readings, Poisson NLL exp(log r) - y log r, ASGD at "
    "0.05. As the fit pushes the rate down for warm-air readings the linear output of fc2 "
    "reaches 0 on one of them at step 10: log(0) = -inf, and exp(-inf) - 0 x (-inf) makes "
    "the loss NaN; the run stops there.",
)
def h205_sleet_log_link_no_clamp(ctx: Context) -> None:
    gen = seeded(20506)
    model = SleetNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    lows = []

    def watch(step, out, x, y):
        lows.append(float(out.detach().min()))

    _train(ctx, model, opt, _sleet(gen, 64, seed=6), 200, _poisson_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss finite for the first 5 steps", _finite(ls[:5]))
    ctx.check("the loss becomes non-finite", bad is not None)
    ctx.check(
        "the log link gave -inf at the first non-finite step",
        bad is not None and lows[bad] == -math.inf,
    )


# -- squall: recurrent weights initialised with gain 1.6 -----------------------------------------------


class GustRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.rnn = nn.RNN(d_in, hidden, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        nn.init.zeros_(self.rnn.bias_hh_l0)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _gusts(gen, batch, length=40):
    """Forty minutes of a squall line's approach (pressure change, temperature, wind, humidity,
    standardised); the target is the peak gust in the next ten minutes, standardised."""
    while True:
        trend = torch.randn(batch, 1, generator=gen)
        t = torch.linspace(0, 1, length)
        press = -trend * t + 0.2 * torch.randn(batch, length, generator=gen)
        temp = -0.5 * trend * t**2 + 0.2 * torch.randn(batch, length, generator=gen)
        wind = torch.cumsum(0.1 * torch.randn(batch, length, generator=gen), 1) + trend * t
        hum = 0.3 * torch.randn(batch, length, generator=gen)
        x = torch.stack([press, temp, wind, hum], -1)
        yield x, torch.tanh(trend.squeeze(1) + 0.5 * wind[:, -1])


@scenario(
    family="squall_line_gust_relu_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="A ReLU Elman RNN (`rnn`, 32 units) reading 40 minutes of a squall line's approach "
    "(pressure change, temperature, wind, humidity) and a head forecasting the next peak "
    "gust, plain SGD at 1e-2, MSE. The init helper's `gain` for the orthogonal recurrent "
    "weights was read from the feed-forward config (1.6, meant for a ReLU MLP) instead of "
    "1.0: the hidden state and the gradient through time grow about 1.6x a step over 40 "
    "steps: the first loss is about 8e4, the first gradient is enormous and the first SGD "
    "step sends the loss to NaN at step 1.",
)
def h205_squall_recurrent_gain(ctx: Context) -> None:
    gen = seeded(20507)
    model = GustRNN(gain=1.6)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    probe_x, probe_y = next(_gusts(torch.Generator().manual_seed(57), 64))
    seen = {}
    probe_h = model.rnn(probe_x)[0].detach()
    seen["early"] = float(probe_h[:, 4].norm(dim=-1).mean())
    seen["late"] = float(probe_h[:, -1].norm(dim=-1).mean())
    _train(ctx, model, opt, _gusts(gen, 64), 120, F.mse_loss)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "hidden state at step 40 is 1000x that at step 5", seen["late"] > 1000 * seen["early"]
    )
    ctx.check("first gradient norm above 1e3", g[0] > 1e3)
    finite = [v if math.isfinite(v) else 1e30 for v in ls]
    ctx.check("loss past 100x the target's scale", max(finite) > 100)


# -- arm wrestling: one shard logged in newtons instead of kilogram-force -----------------------------


def _grip(gen, batch, seed):
    """Ten standardised readings of an arm-wrestling bout (forearm girth, wrist angle, ...)
    and the peak grip force in kilogram-force, centred on 40 and scaled by 10."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        kgf = 40 + 10 * torch.tanh(x @ w / math.sqrt(10)) + torch.randn(batch, generator=gen)
        yield x, (kgf - 40) / 10


@scenario(
    family="arm_wrestling_grip_force_huber_mlp",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) regressing an arm-wrestler's peak grip force from 10 "
    "standardised readings, NAdam at 3e-3, MSE on the force standardised as (kgf - 40) / 10. "
    "One shard of the data came from a dynamometer logging newtons, not kilogram-force: the "
    "batch at step 90 has targets about 9.8x too large (around 35 standardised units instead "
    "of 0): the loss jumps a thousandfold on that one batch, its gradient is far beyond the "
    "usual, and the run recovers over the following steps; finite.",
)
def h205_arm_wrestling_newton_shard(ctx: Context) -> None:
    gen = seeded(20508)
    model = Stack(10, hidden=64)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    onset = 90

    def alter(step, x, y):
        if step == onset:
            return x, (9.80665 * (10 * y + 40) - 40) / 10
        return x, y

    _train(ctx, model, opt, _grip(gen, 64, seed=8), 200, F.mse_loss, alter=alter)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 90 is 100x the median before", ls[90] > 100 * _median(ls[60:90]))
    ctx.check("gradient at step 90 is 30x the median before", g[90] > 30 * _median(g[60:90]))
    ctx.check(
        "loss recovered (last 20 below 3x the pre-onset median)",
        _mean(ls[-20:]) < 3 * _median(ls[60:90]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- modern pentathlon: the loss-weight table reads 100 for 1.00 at one step ----------------------------


class PentathlonNet(nn.Module):
    """A shared SiLU trunk and two heads: the total points and the fencing win rate."""

    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.points = nn.Linear(hidden, 1)
        self.fencing = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.points(h), self.fencing(h)], -1)


def _pentathlon(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 2, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        z = x @ w / math.sqrt(12)
        y = torch.stack([torch.tanh(z[:, 0]) + 0.3 * z[:, 1], torch.sigmoid(2 * z[:, 1])], -1)
        yield x, y + 0.05 * torch.randn(batch, 2, generator=gen)


@scenario(
    family="modern_pentathlon_points_multitask_mlp",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A SiLU trunk with two heads (`points`: the athlete's total points, `fencing`: the "
    "fencing win rate) over 12 standardised readings, SGD with Nesterov momentum 0.9 at 0.01, "
    "Huber loss on points plus a weighted MSE on fencing. The fencing weight comes from a "
    "per-step table that ramps it; the entry for step 120 was typed `100` for `1.00`: on that "
    "one step the backpropagated loss, and the gradient, are about 100x larger, one burst "
    "that does not come from the data; the loss jumps and the run recovers; finite.",
)
def h205_pentathlon_loss_weight_typo(ctx: Context) -> None:
    gen = seeded(20509)
    model = PentathlonNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    weights = {s: min(1.0, s / 100) for s in range(200)}
    weights[120] = 100.0

    state = {"step": 0}

    def before(step):
        state["step"] = step

    def loss_fn(out, y):
        return F.huber_loss(out[:, 0], y[:, 0]) + weights[state["step"]] * F.mse_loss(
            out[:, 1], y[:, 1]
        )

    _train(ctx, model, opt, _pentathlon(gen, 64, seed=9), 200, loss_fn, before=before)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 120 is 30x the median before", g[120] > 30 * _median(g[90:120]))
    ctx.check("gradients back to usual after step 140", _median(g[140:]) < 5 * _median(g[90:120]))
    ctx.check("loss fell before the burst", _fell(ls[:120], ratio=0.5))
    ctx.check("loss finite throughout", _finite(ls))


# -- gilding: logits divided by a contrastive temperature ------------------------------------------


class LeafDefectNet(nn.Module):
    def __init__(self, d_in=20, hidden=48, classes=5, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return self.head(h) / self.temperature


@scenario(
    family="gilding_gold_leaf_defect_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) naming the defect in a sheet of gold leaf laid by a "
    "gilder (5 classes: holiday, crack, tarnish, ...) from 20 standardised optical readings, "
    "Adamax at 2e-3, cross-entropy; the logits are divided by `temperature`, and the config's "
    "0.005 was copied from a contrastive pre-training recipe: the logits are multiplied by "
    "200, the softmax saturates and over 80% of rows' target probability rounds to exactly "
    "1.0 in float32 by the end; loss near 0 and finite.",
)
def h205_gilding_contrastive_temperature(ctx: Context) -> None:
    gen = seeded(20510)
    model = LeafDefectNet(temperature=0.005)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 5, seed=10, noise=0.25),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 30% of rows collapsed at step 0", collapsed[0] < 0.3)
    ctx.check("over 80% of rows collapsed over the last 20 steps", _mean(collapsed[-20:]) > 0.8)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- controls ----------------------------------------------------------------------------------------


class CloudNet(nn.Module):
    """A 2-D CNN with GroupNorm over a 12x12 sky patch (brightness, one channel)."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.gn2 = nn.GroupNorm(8, 32)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.gn1(self.conv1(x)))
        h = F.max_pool2d(h, 2)
        h = F.relu(self.gn2(self.conv2(h)))
        return self.head(h.mean((2, 3)))


def _clouds(gen, batch, size=12):
    """Sky patches: cirrus (thin diagonal streaks), cumulus (blobs), stratus (smooth banded
    gradient), clear (noise only); noisy brightness."""
    i, j = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        phase = torch.rand(batch, 1, 1, generator=gen) * 6.28
        cx = torch.rand(batch, 1, 1, generator=gen) * size
        cy = torch.rand(batch, 1, 1, generator=gen) * size
        streak = torch.sin(0.9 * (i + j) + phase)
        blob = torch.exp(-((i - cx) ** 2 + (j - cy) ** 2) / 8)
        band = (i / size) - 0.5 + 0 * phase
        base = torch.stack([streak, 2 * blob, band, torch.zeros_like(streak)], 1)
        x = base[torch.arange(batch), y] + 0.4 * torch.randn(batch, size, size, generator=gen)
        yield x[:, None], y


@scenario(
    family="cirrus_cloud_patch_groupnorm_cnn",
    optimizer="SGD(momentum)",
    cause="healthy",
    heldout=True,
    note="A 2-D CNN with GroupNorm (conv1, gn1, conv2, gn2, head) naming the cloud type "
    "(cirrus, cumulus, stratus, clear) in a 12x12 sky patch, SGD with momentum 0.9 at 0.05, "
    "weight decay 5e-4, StepLR halving the rate every 50 steps, cross-entropy with label "
    "smoothing 0.05: an ordinary run.",
)
def h205_cirrus_groupnorm_control(ctx: Context) -> None:
    gen = seeded(20511)
    model = CloudNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)
    _train(
        ctx,
        model,
        opt,
        _clouds(gen, 32),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05),
        classifier=True,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("rate halved three times", abs(opt.param_groups[0]["lr"] - 0.05 / 8) < 1e-12)


class DryingNet(nn.Module):
    """A SiLU trunk and a head giving the mean and the log-variance of the drying time."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


def _gaussian_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return F.gaussian_nll_loss(mean, y, log_var.exp())


@scenario(
    family="taxidermy_mount_drying_time_gaussian_nll_net",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head: a mean and a clamped log-variance) predicting how long "
    "a taxidermy mount takes to dry (standardised) from 10 readings (hide thickness, "
    "humidity, salt, ...), Gaussian NLL, RAdam at 3e-3, fp16 autocast with a "
    "torch.amp.GradScaler, accumulation over 2 micro-batches, clipping at 1.0 and "
    "OneCycleLR: an ordinary mixed-precision run.",
)
def h205_taxidermy_fp16_control(ctx: Context) -> None:
    gen = seeded(20512)
    model = DryingNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=12, noise=0.2),
        steps,
        _gaussian_nll,
        sched=sched,
        scaler=scaler,
        accumulate=2,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("loss fell by 0.5 nats", _finite(ls) and _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("scale not lowered after step 50", min(ctx.scales[50:]) >= ctx.scales[50])


class TiedAutoencoder(nn.Module):
    """An encoder Linear and a decoder that reuses its weight, transposed."""

    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.T, self.dec_bias)


def _strands(gen, batch, seed):
    """Sixteen tension readings along a rope's three strands as it is laid: a few smooth
    underlying factors plus noise."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(4, 16, generator=g) / 2
    while True:
        z = torch.randn(batch, 4, generator=gen)
        x = z @ mix + 0.1 * torch.randn(batch, 16, generator=gen)
        yield x, x


@scenario(
    family="rope_making_strand_tension_tied_autoencoder",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="A tied-weight autoencoder (`enc` Linear 16->6, tanh, the decoder reusing enc.weight "
    "transposed) compressing 16 strand-tension readings of a ropewalk, MSE, Adam at 1e-2, "
    "clipping at 1.0 and ReduceLROnPlateau: an ordinary run.",
)
def h205_rope_making_tied_control(ctx: Context) -> None:
    gen = seeded(20513)
    model = TiedAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(ctx, model, opt, _strands(gen, 64, seed=13), 200, F.mse_loss, sched=sched, clip=1.0)
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
