"""Held-out set 214 (``h214_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a sheaf-toss height tanh regressor whose ExponentialLR
gamma was typed 1.02 for 0.98, an oxbow meander-cutoff ReLU RNN whose recurrent weights got the
ReLU init gain, an iceboat runner-chatter regressor fed one shard in raw accelerometer counts, a
moss sporophyte Poisson net with a ReLU rate and no epsilon in its log, an iaido cut-angle
classifier whose temperature was read as its inverse, a pargeting plaster-cure regressor with a
hand-written weight decay of the wrong sign, a bryophyte mat multi-label BCE classifier fed vote
counts for probabilities, a millpond sluice two-tower regressor whose trunk multiplier went
through ``int()``, a cesta-punta two-head regressor with one step's loss weight typed 50 for
0.50, a jaw-harp overtone 1-D CNN at a rate typed 0.5 for 0.05, and three controls (a waka-ama
stroke classifier with AdamW, weight decay and warm-up + cosine, a hedgelaying regressor with
RMSprop, OneCycleLR, accumulation and Huber, a fogbow tied autoencoder with SGD Nesterov,
clipping and ReduceLROnPlateau).

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

SHEAF_ONSET = 150
OXBOW_DIV = 2
MOSS_DIV = 48


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
    watch=None,
    weight=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
):
    """Training loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, y)`` after the forward pass, ``weight(step)`` multiplies what is
    backpropagated, ``after(step)`` after the optimizer step. Stops after logging a NaN."""
    ctx.attach(model, opt)
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
            out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, y)
            total = loss / accumulate
            if weight is not None:
                total = total * weight(step)
            total.backward()
            shown += float(loss.detach()) / accumulate
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
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


def _smooth(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(1.3 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _protos(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _top_eig(model, loss_fn, x, y, iters=20) -> float:
    """Largest Hessian eigenvalue of the loss on (x, y), power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    g = torch.Generator().manual_seed(1)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


class Net(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

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


# -- sheaf toss: an ExponentialLR whose gamma was typed 1.02 for 0.98 --------------------------------


@scenario(
    family="sheaf_toss_height_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=SHEAF_ONSET,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting the bar height cleared in a Highland-games "
    "sheaf toss (standardised) from 10 standardised readings (fork length, sheaf weight, "
    "release angle, wind, ...), plain SGD from 0.02, MSE. The decay schedule "
    "`ExponentialLR(gamma=1.02)` was meant as 0.98: the rate grows 2% a step, lr x sharpness "
    "passes 2, the stability limit, around step 150 and the loss blows up.",
)
def h214_sheaf_toss_gamma_typo(ctx: Context) -> None:
    gen = seeded(21401)
    model = Net(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.02)
    probe = next(_smooth(torch.Generator().manual_seed(61), 256, 10, seed=4))
    prod = {}

    def before(step):
        if step % 5 == 0 and step <= 200:
            prod[step] = opt.param_groups[0]["lr"] * _top_eig(model, F.mse_loss, *probe)

    _loop(
        ctx, model, opt, _smooth(gen, 64, 10, seed=4), 220, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    cross = min((s for s, v in prod.items() if math.isfinite(v) and v > 2), default=None)
    ctx.check("lr x sharpness below 0.5 at step 0", prod[0] < 0.5)
    ctx.check(
        "lr x sharpness first past 2 within 15 steps of the onset",
        cross is not None and abs(cross - SHEAF_ONSET) <= 15,
    )
    ctx.check("loss fell before the onset", _fell(ls[: SHEAF_ONSET - 10], ratio=0.7))
    late = [v if math.isfinite(v) else 1e30 for v in ls[SHEAF_ONSET:]]
    ctx.check("loss past 20x its pre-onset minimum after the onset", max(late) > 20 * min(ls))


# -- oxbow: a ReLU RNN whose recurrent weights were drawn with std 0.3 for 0.03 ---------------------


class MeanderRNN(nn.Module):
    """A hand-written ReLU recurrence h_t = relu(inp(x_t) + rec(h_{t-1})), regression head."""

    def __init__(self, feat=4, hidden=64, rec_std=0.025):
        super().__init__()
        self.inp = nn.Linear(feat, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.rec.weight, std=rec_std)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.act(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _meanders(gen, batch, length=20, feat=4):
    """Monthly river readings (discharge, sediment, bank height, rain; standardised) and the
    next month's neck width (standardised)."""
    while True:
        x = torch.randn(batch, length, feat, generator=gen)
        drift = torch.cumsum(x[..., 0], 1) / math.sqrt(length)
        y = torch.tanh(drift[:, -1] + 0.3 * x[:, -1, 1])
        yield x, y


@scenario(
    family="oxbow_meander_cutoff_relu_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=OXBOW_DIV,
    heldout=True,
    note="A hand-written ReLU RNN (inp, rec, act, head) reading 20 months of river readings "
    "(discharge, sediment load, bank height, rain) to forecast the neck width of a meander "
    "before its oxbow cut-off, SGD with Nesterov momentum at 1e-3, MSE. The recurrent init "
    "`normal_(rec.weight, std=0.25)` was meant as std 0.025: the recurrent map's "
    "spectral radius is about 2 instead of 0.2, so the backward signal grows by orders of magnitude "
    "through the 20 steps (first at rec); the gradient is huge from the first step and the "
    "loss is inf at step 1 and NaN at step 2.",
)
def h214_oxbow_rnn_rec_std_typo(ctx: Context) -> None:
    gen = seeded(21402)
    model = MeanderRNN(rec_std=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    growth = {}

    def after(step):
        st = model.states
        if st and st[0].grad is not None and st[-1].grad is not None:
            growth[step] = float(st[0].grad.norm() / (st[-1].grad.norm() + 1e-30))

    _loop(ctx, model, opt, _meanders(gen, 32), 80, F.mse_loss, after=after)
    ls = ctx.losses
    ctx.check("backward signal over 100x larger at t=0 than at t=19 at step 0", growth[0] > 100)
    ctx.check("gradient norm over 1e3 at step 0", ctx.grad_norms[0] > 1e3)
    bad = [v if math.isfinite(v) else 1e30 for v in ls]
    ctx.check("loss blows up past 1e6 or NaN", max(bad) > 1e6)


# -- iceboat: one shard of raw accelerometer counts ---------------------------------------------------


@scenario(
    family="iceboat_runner_chatter_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting the chatter amplitude of an iceboat's runner "
    "plank (standardised) from 8 standardised readings (runner edge angle, ice temperature, "
    "boat speed, ...), SGD with momentum 0.9 at 0.01, MSE, gradient clipping at 1. The shard "
    "read at step 120 came from a logger that stored raw 16-bit accelerometer counts (2048 "
    "per g) instead of standardised values: that one batch's loss and gradient are thousands "
    "of times the usual; clipping bounds the update and the run goes on, finite.",
)
def h214_iceboat_raw_counts_shard(ctx: Context) -> None:
    gen = seeded(21403)
    model = Net(8, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def alter(step, x, y):
        if step == 120:
            return x * 2048.0, y
        return x, y

    _loop(ctx, model, opt, _smooth(gen, 64, 8, seed=5), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 120 over 100x the median before", ls[120] > 100 * _median(ls[100:120]))
    ctx.check(
        "gradient at step 120 over 100x the median before", gn[120] > 100 * _median(gn[100:120])
    )
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell before the shard", _fell(ls[:120], ratio=0.6))


# -- moss: a Poisson rate through a ReLU and a log with no epsilon -----------------------------------


class SporeCount(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.rate = nn.ReLU()
        nn.init.constant_(self.head.bias, 3.0)

    def forward(self, x):
        return self.rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


def _capsules(gen, batch, seed):
    """Six standardised readings of a moss cushion (shade, moisture, pH, ...) and its count of
    sporophyte capsules, Poisson with log-rate from -2 to 2."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        lam = torch.exp(1.6 * torch.tanh(x @ w / math.sqrt(6)) + 0.2)
        yield x, torch.poisson(lam, generator=gen)


@scenario(
    family="moss_sporophyte_count_poisson_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("rate", "head"),
    diverges=MOSS_DIV,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head, rate) predicting the count of sporophyte capsules on a "
    "moss cushion from 6 standardised readings (shade, moisture, pH, ...), NAdam at 1e-3, "
    "Poisson NLL written by hand as `rate - y * log(rate)`. The rate goes through a ReLU "
    "(instead of softplus or exp) and the log has no epsilon; the head's bias starts at the "
    "mean count 3 so every rate starts positive. Cushions with no capsules keep pushing their "
    "rate down; when one reaches exactly 0, `0 * log(0)` is NaN and the loss is NaN at step "
    "48.",
)
def h214_moss_relu_rate_log(ctx: Context) -> None:
    gen = seeded(21404)
    model = SporeCount()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    zero_rate = {}

    def watch(step, out, y):
        zero_rate[step] = bool((out == 0).any())

    _loop(ctx, model, opt, _capsules(gen, 64, seed=6), 300, _poisson_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss finite before the break", bad is not None and _finite(ls[:bad]))
    ctx.check("a rate of exactly 0 at the NaN step", bad is not None and zero_rate[bad])
    ctx.check(f"loss is NaN at step {MOSS_DIV}", bad == MOSS_DIV and math.isnan(ls[MOSS_DIV]))


# -- iaido: the temperature read as its inverse --------------------------------------------------------


@scenario(
    family="iaido_cut_angle_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) sorting an iaido practitioner's cut into 8 angle "
    "classes (kesa-giri, gyaku-kesa, yoko-ichimonji, ...) from 16 standardised sword-motion "
    "readings, Adagrad at 0.05, cross-entropy. The logits are divided by a temperature taken "
    "from the config key `tau`, which in the shared config is the EMA decay rate 0.004, not "
    "the intended 1.0: logits are 250x too large and the float32 softmax rounds the target's "
    "probability to exactly 1 for most cuts; the loss is finite.",
)
def h214_iaido_temperature_key(ctx: Context) -> None:
    gen = seeded(21405)
    cfg = {"tau": 0.004, "temperature": 1.0}
    base = Net(16, hidden=64, out=8, act=nn.GELU)

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act1, self.fc2 = base.fc1, base.act1, base.fc2
            self.act2, self.head = base.act2, base.head

        def forward(self, x):
            return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / cfg["tau"]

    model = Scaled()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    probe = next(_protos(torch.Generator().manual_seed(65), 512, 16, 8, seed=7, spread=0.8))
    with torch.no_grad():
        c0 = collapsed_fraction(model(probe[0]), probe[1])
    _loop(
        ctx,
        model,
        opt,
        _protos(gen, 64, 16, 8, seed=7, spread=0.8),
        150,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        c1 = collapsed_fraction(model(probe[0]), probe[1])
    ctx.check("under 10% of probe rows collapsed at init", c0 < 0.1)
    ctx.check("over half of probe rows collapsed at the end", c1 > 0.5)
    ctx.check("finite", _finite(ctx.losses))


# -- pargeting: a humidity correction applied in place to the cached targets --------------------------


def _cure_cache(seed, n=1024):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    w = torch.randn(10, generator=g)
    y = torch.tanh(x @ w / math.sqrt(10)) + 0.3 * torch.randn(n, generator=g) * 0.1
    return x, y


@scenario(
    family="pargeting_plaster_cure_relu_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting the cure hardness of lime pargeting plaster "
    "(standardised) from 10 standardised readings (lime putty ratio, hair content, humidity, "
    "...), SGD with momentum 0.9 at 0.01, MSE, over a cached table of 1024 panels. The batch "
    "function applies the humidity correction `hardness *= 1.008` in place on the cached "
    "target tensor instead of on the batch's copy, so every draw rescales all targets again: "
    "the targets drift up 1.008x a step (10x over the run), the model lags behind them and "
    "the loss, after falling for some 60 steps, climbs slowly for the rest of the run; finite, "
    "with no single jump.",
)
def h214_pargeting_inplace_target_drift(ctx: Context) -> None:
    gen = seeded(21406)
    model = Net(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xs, ys = _cure_cache(66)
    scale0 = float(ys.abs().mean())

    def draws():
        while True:
            idx = torch.randint(0, len(ys), (64,), generator=gen)
            ys.mul_(1.008)  # meant: y = ys[idx] * 1.008
            yield xs[idx], ys[idx]

    _loop(ctx, model, opt, draws(), 300, F.mse_loss)
    ls = ctx.losses
    low = min(range(len(ls) - 10), key=lambda i: _mean(ls[i : i + 10]))
    jumps = max(ls[i + 1] / ls[i] for i in range(len(ls) - 1))
    ctx.check("finite", _finite(ls))
    ctx.check("targets grew over 8x", float(ys.abs().mean()) > 8 * scale0)
    ctx.check(
        "last 20 steps over 5x the lowest 10-step mean",
        _mean(ls[-20:]) > 5 * _mean(ls[low : low + 10]),
    )
    ctx.check("the lowest point before step 120", low < 120)
    ctx.check("no single step more than 5x the one before", jumps < 5)


# -- bryophyte: vote counts fed to BCE as probabilities ----------------------------------------------


def _mats(gen, batch, seed, species=6, voters=3):
    """Twenty standardised spectral readings of a bryophyte mat and, per species, how many of
    three botanists marked it present (0..3)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(20, species, generator=g)
    while True:
        x = torch.randn(batch, 20, generator=gen)
        p = torch.sigmoid(2.0 * x @ w / math.sqrt(20))
        votes = torch.stack([torch.bernoulli(p, generator=gen) for _ in range(voters)]).sum(0)
        yield x, votes


@scenario(
    family="bryophyte_mat_species_multilabel_bce",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) tagging which of 6 moss and liverwort species are "
    "present in a bryophyte mat from 20 standardised spectral readings, multi-label, "
    "AdamW at 3e-3 (weight decay 0.01), BCE with logits. The labels are the number of three "
    "botanists who marked each species (0..3) and the division by 3 was left out: wherever a "
    "target is above 1 the loss keeps falling as the logit grows, without bound, so the "
    "head's logits grow over 20-fold and keep growing; the loss goes negative, finite.",
)
def h214_bryophyte_vote_counts(ctx: Context) -> None:
    gen = seeded(21407)
    model = Net(20, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    probe = next(_mats(torch.Generator().manual_seed(67), 512, seed=9))[0]
    with torch.no_grad():
        size0 = float(model(probe).abs().mean())
    sizes = []

    def after(step):
        if step % 20 == 19:
            with torch.no_grad():
                sizes.append(float(model(probe).abs().mean()))

    _loop(
        ctx,
        model,
        opt,
        _mats(gen, 64, seed=9),
        200,
        F.binary_cross_entropy_with_logits,
        after=after,
    )
    ctx.check("head logits grew over 20-fold", sizes[-1] > 20 * size0)
    ctx.check("still growing over the last 100 steps", sizes[-1] > 1.5 * sizes[4])
    ctx.check("finite", _finite(ctx.losses))


# -- millpond: a trunk multiplier passed through int() -------------------------------------------------


class SluiceTowers(nn.Module):
    def __init__(self):
        super().__init__()
        self.gauge = nn.Sequential(nn.Linear(6, 48), nn.SiLU(), nn.Linear(48, 32), nn.SiLU())
        self.weather = nn.Sequential(nn.Linear(6, 48), nn.SiLU(), nn.Linear(48, 32), nn.SiLU())
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        h = torch.cat([self.gauge(x[:, :6]), self.weather(x[:, 6:])], -1)
        return self.head(h).squeeze(-1)


@scenario(
    family="millpond_sluice_flow_two_tower_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("weather", "weather.0", "weather.2"),
    diverges=None,
    heldout=True,
    note="A two-tower SiLU regressor (gauge tower on 6 pond-gauge readings, weather tower on "
    "6 rain and wind readings, joint head) predicting the flow through a mill-pond sluice "
    "(standardised), Adamax at 2e-3 with one param group per tower, MSE. The weather tower's "
    "rate is `base_lr * int(cfg['weather_lr_mult'])` with the multiplier 0.5 in the config: "
    "`int(0.5)` is 0, so the weather tower never moves (update ratio exactly 0) while the "
    "rest trains; the loss falls only as far as the pond gauges explain it; finite.",
)
def h214_millpond_int_lr_mult(ctx: Context) -> None:
    gen = seeded(21408)
    cfg = {"weather_lr_mult": "0.5"}
    model = SluiceTowers()
    base = 2e-3
    opt = torch.optim.Adamax(
        [
            {"params": model.gauge.parameters(), "lr": base},
            {"params": model.weather.parameters(), "lr": base * int(float(cfg["weather_lr_mult"]))},
            {"params": model.head.parameters(), "lr": base},
        ]
    )
    w0 = [p.detach().clone() for p in model.weather.parameters()]
    g0 = [p.detach().clone() for p in model.gauge.parameters()]

    def flows(seed):
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randn(6, generator=g), torch.randn(6, generator=g)
        while True:
            x = torch.randn(64, 12, generator=gen)
            y = torch.tanh(x[:, :6] @ a / 2.5) + torch.sin(x[:, 6:] @ b / 2.5)
            yield x, y

    _loop(ctx, model, opt, flows(10), 200, F.mse_loss)
    moved_w = max(
        float((p.detach() - q).abs().max())
        for p, q in zip(model.weather.parameters(), w0, strict=True)
    )
    moved_g = max(
        float((p.detach() - q).abs().max())
        for p, q in zip(model.gauge.parameters(), g0, strict=True)
    )
    ctx.check("weather tower did not move", moved_w == 0.0)
    ctx.check("gauge tower moved", moved_g > 1e-2)
    ctx.check("weather tower got gradients", ctx.grad_norms[-1] > 0)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.9))


# -- cesta punta: one step's loss weight typed 50 for 0.50 ---------------------------------------------


def _throws(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, 2, generator=g)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        yield x, torch.tanh(x @ w / 3.0)


def _two_term(out, y):
    return F.huber_loss(out[:, 0], y[:, 0]) + 0.5 * F.mse_loss(out[:, 1], y[:, 1])


@scenario(
    family="cesta_punta_throw_two_head_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=140,
    heldout=True,
    note="A ReLU MLP with a two-output head predicting a cesta-punta (jai-alai) throw's ball "
    "speed (Huber) and spin (MSE, weight 0.5) from 9 standardised readings of the throw, SGD "
    "with momentum 0.9 at 0.01. The loss-weight table used when the spin data is re-weighted "
    "at step 140 has `loss_scale: 50` typed for `0.50`, applied for that one step: the "
    "backpropagated gradient is about 50x the usual for one step (the data are ordinary), "
    "the momentum carries it a few steps and the loss jumps, then the run settles; finite.",
)
def h214_cesta_loss_weight_typo(ctx: Context) -> None:
    gen = seeded(21409)
    model = Net(9, hidden=64, out=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    table = {140: 50.0}  # meant 0.50 and only a logging marker

    def weight(step):
        return table.get(step, 1.0)

    _loop(ctx, model, opt, _throws(gen, 64, seed=11), 240, _two_term, weight=weight)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 140 over 20x the median before", gn[140] > 20 * _median(gn[120:140])
    )
    ctx.check(
        "batch loss at step 140 ordinary (under 3x median)", ls[140] < 3 * _median(ls[120:140])
    )
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:140], ratio=0.6))


# -- jaw harp: Adam at a rate typed 5e-2 for 5e-4 kills the conv ReLUs ----------------------------------


class OvertoneNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 7, padding=3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def features(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))

    def forward(self, x):
        return self.head(self.features(x).mean(-1))


def _spectra(gen, batch, bins=64, classes=5):
    """Magnitude spectra (positive, in raw amplitude) of a jaw harp's twang; the label is the
    emphasised overtone (the player's mouth shape)."""
    f = torch.arange(bins, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        centre = 8.0 + 10.0 * y.float()
        s = 2.0 * torch.exp(-((f[None] - centre[:, None]) ** 2) / 8.0)
        s = s + 1.0 / (1.0 + 0.2 * f[None]) + 0.3 * torch.rand(batch, bins, generator=gen)
        yield 40.0 * s, y


@scenario(
    family="jaw_harp_overtone_conv1d_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("conv2", "act2"),
    diverges=None,
    heldout=True,
    note="A 1-D CNN (conv1, act1, conv2, act2, mean pool, head) naming which overtone a jaw "
    "harp player emphasises (5 mouth shapes) from a 64-bin magnitude spectrum in raw "
    "amplitude (positive, up to about 100), Adam, cross-entropy. The config's `lr: 5e-2` was "
    "meant as 5e-4: the first large steps push most conv2 channels negative on every spectrum "
    "and they never fire again: the dead share of conv2 channels goes from under a quarter to "
    "over 70% and the loss stays high; finite.",
)
def h214_jaw_harp_adam_lr_typo(ctx: Context) -> None:
    gen = seeded(21410)
    model = OvertoneNet()
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    probe = next(_spectra(torch.Generator().manual_seed(70), 256))[0]
    with torch.no_grad():
        d0 = dead_fraction(model.features(probe).transpose(1, 2))
    _loop(ctx, model, opt, _spectra(gen, 64), 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        d1 = dead_fraction(model.features(probe).transpose(1, 2))
    ls = ctx.losses
    ctx.check("under a quarter of conv2 channels dead at init", d0 < 0.25)
    ctx.check("over 70% of conv2 channels dead at the end", d1 > 0.7)
    ctx.check("finite", _finite(ls))
    ctx.check("loss stays high (last 20 above 1.0)", _mean(ls[-20:]) > 1.0)


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    family="waka_ama_stroke_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, fc2, head) naming a waka-ama paddler's stroke phase (5 "
    "kinds) from 12 standardised paddle-shaft IMU readings, AdamW at 3e-3 with weight decay "
    "0.05, linear warm-up over 20 steps then cosine decay, cross-entropy with label smoothing "
    "0.05. Trains normally.",
)
def h214_waka_ama_control(ctx: Context) -> None:
    gen = seeded(21411)
    model = Net(12, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    total = 250
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (total - 20)))
        ),
    )
    _loop(
        ctx,
        model,
        opt,
        _protos(gen, 64, 12, 5, seed=12, spread=1.2),
        total,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05),
        classifier=True,
        sched=sched,
    )
    ctx.check("loss fell below 60% and finite", _fell(ctx.losses, ratio=0.6))


@scenario(
    family="hedgelaying_stake_spacing_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, fc2, head) predicting how long a laid hedge holds its "
    "pleachers (standardised) from 8 standardised readings (stake spacing, pleacher angle, "
    "stem thickness, ...), noisy targets, RMSprop with OneCycleLR (peak 3e-3), gradient "
    "accumulation over 2, clipping at 1, Huber loss. Trains normally.",
)
def h214_hedgelaying_control(ctx: Context) -> None:
    gen = seeded(21412)
    model = Net(8, hidden=64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _smooth(gen, 32, 8, seed=13, noise=0.2),
        200,
        F.huber_loss,
        sched=sched,
        clip=1.0,
        accumulate=2,
    )
    ctx.check("loss fell below 70% and finite", _fell(ctx.losses, ratio=0.7))


class TiedAutoencoder(nn.Module):
    """Encoder enc; the decoder reuses enc.weight transposed (tied), with its own bias."""

    def __init__(self, d=16, code=5):
        super().__init__()
        self.enc = nn.Linear(d, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


@scenario(
    family="fogbow_arc_brightness_tied_autoencoder",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tied-weight tanh autoencoder (enc, decoder = enc.weight transposed) "
    "compressing 16-angle brightness profiles of fogbow arcs (standardised, low-rank plus "
    "noise), SGD with Nesterov momentum 0.9 at 0.02, clipping at 2, ReduceLROnPlateau, MSE. "
    "Trains normally.",
)
def h214_fogbow_control(ctx: Context) -> None:
    gen = seeded(21413)
    model = TiedAutoencoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    basis = torch.randn(4, 16, generator=torch.Generator().manual_seed(74))

    def arcs():
        while True:
            z = torch.randn(64, 4, generator=gen)
            x = z @ basis / 2 + 0.1 * torch.randn(64, 16, generator=gen)
            yield x, x

    _loop(ctx, model, opt, arcs(), 200, F.mse_loss, sched=sched, clip=2.0)
    ctx.check("loss fell below 60% and finite", _fell(ctx.losses, ratio=0.6))
