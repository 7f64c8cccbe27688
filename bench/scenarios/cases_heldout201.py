"""Held-out set 201 (``h201_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a unicycle-trials balance tanh regressor whose
ExponentialLR gamma was typed 1.03 for 0.97, a mridangam korvai hand-written Elman cell
initialised with std 1, a wool-carding fibre-length SiLU regressor fed one shard in
micrometres, a harbour-pilot ladder-hazard multi-label net with a hand-written BCE whose
softplus lost its sign, a honey pollen varietal classifier dividing by a sharpening temperature
typed 4e-3, a rivet-forge heat-grade ReLU classifier fed raw pyrometer degrees, a cycle-rickshaw
fare-time regressor whose trunk rate was typed 3e-8, a cloud-seeding rainfall-gain net taking
log(seeded / control) with no floor, a harbour tugboat bollard-pull regressor whose
gradient-noise probe left summed per-sample gradients in place, a smokehouse salmon-moisture
regressor with an L2 penalty subtracted, and three controls (a kargyraa undertone GRU
classifier, a gold-panning yield regressor, a saffron stigma-count Poisson net).

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
    clip=None,
    sched=None,
    accumulate=1,
    backward=None,
):
    """The file's loop. ``before(step)`` runs first, ``watch(step, out, x, y)`` after the
    forward pass, ``backward(step, loss, x, y)`` replaces ``loss.backward()`` (injected bugs);
    ``accumulate`` micro-batches a step; stops after logging a NaN loss."""
    ctx.attach(model, opt)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if classifier:
                ctx.targets(y)
            out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            if backward is not None:
                backward(step, loss / accumulate, x, y)
            else:
                (loss / accumulate).backward()
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


# -- unicycle trials: ExponentialLR gamma typed 1.03 for 0.97 -----------------------------------


@scenario(
    family="unicycle_trials_balance_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing a trials unicyclist's time balanced on an "
    "obstacle (standardised) from 10 readings (wheel size, tyre pressure, crank length, "
    "approach speed, ...), plain SGD from 0.02, MSE. The schedule was meant to decay the rate "
    "by 3% a step (ExponentialLR gamma 0.97) and was typed gamma=1.03: the rate grows 3% a "
    "step, lr x sharpness climbs from about 0.1 past 2, the stability limit, and the loss "
    "blows up.",
)
def h201_unicycle_exp_gamma_typo(ctx: Context) -> None:
    gen = seeded(20101)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.03)
    px, py = next(_readings(torch.Generator().manual_seed(77), 256, 10, seed=1))
    products = {}

    def before(step):
        if step % 10 == 0 and step <= 150:
            lam = _sharpness(model, F.mse_loss, px, py)
            products[step] = lam * opt.param_groups[0]["lr"]

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=1), 200, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    ctx.check("scheduler gamma above 1", sched.gamma > 1.0)
    ctx.check("lr x sharpness below 1 at step 0", products[0] < 1.0)
    crossed = [s for s, v in sorted(products.items()) if v > 2.0]
    ctx.check("lr x sharpness past 2 before the blow-up", bool(crossed) and crossed[0] < end)
    ctx.check("loss fell first", _mean(ls[30:40]) < 0.8 * _mean(ls[:10]))
    ctx.check(
        "loss blew up (non-finite or 100x its minimum)",
        bad is not None or max(ls) > 100 * min(ls),
    )


# -- mridangam: a hand-written Elman cell initialised with std 1 -------------------------------


class ElmanCell(nn.Module):
    """h' = tanh(ih(x) + hh(h))."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.ih(x) + self.hh(h))


class KorvaiNet(nn.Module):
    def __init__(self, d_in=6, hidden=48, classes=5, std=None):
        super().__init__()
        self.cell = ElmanCell(d_in, hidden)
        self.head = nn.Linear(hidden, classes)
        self.hidden = hidden
        if std is not None:
            nn.init.normal_(self.cell.hh.weight, std=std)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


def _korvai(gen, batch, length=40):
    """Forty strokes of a mridangam (one of 5 stroke kinds one-hot and a loudness); the label is
    the stroke on the first beat, which the korvai returns to on its last."""
    while True:
        kind = torch.randint(0, 5, (batch, length), generator=gen)
        loud = torch.rand(batch, length, 1, generator=gen)
        x = torch.cat([F.one_hot(kind, 5).float(), loud], -1)
        yield x + 0.05 * torch.randn(x.shape, generator=gen), kind[:, 0]


@scenario(
    family="mridangam_korvai_elman_cell",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.hh", "cell"),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman cell (cell.ih, cell.hh) reading 40 mridangam strokes of a "
    "korvai and naming the first stroke (5 classes), cross-entropy, SGD Nesterov (0.05, "
    "momentum 0.9), clip_grad_norm_ at 1.0. The recurrent matrix was initialised with "
    "nn.init.normal_(std=1.0) copied from a 1-unit toy, for 48 units: a spectral radius near 7, "
    "and the gradient grows back through time, the raw gradient norm over 100 times a twin "
    "initialised with std 1/sqrt(48); the clipping keeps the run finite and it does not learn.",
)
def h201_mridangam_elman_init_std(ctx: Context) -> None:
    gen = seeded(20102)
    model = KorvaiNet(std=1.0)
    twin = KorvaiNet(std=1.0 / math.sqrt(48))
    radius = float(torch.linalg.eigvals(model.cell.hh.weight.detach()).abs().max())
    x0, y0 = next(_korvai(torch.Generator().manual_seed(5), 64))
    twin_loss = F.cross_entropy(twin(x0), y0)
    twin_loss.backward()
    twin_norm = grad_norm(twin)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    growth = []

    def backward(step, loss, x, y):
        loss.backward()
        if step < 5:
            first = float(model.states[0].grad.norm())
            last = float(model.states[-1].grad.norm())
            growth.append(first / max(last, 1e-30))

    _train(
        ctx,
        model,
        opt,
        _korvai(gen, 64),
        120,
        F.cross_entropy,
        classifier=True,
        backward=backward,
        clip=1.0,
    )
    ctx.check("recurrent spectral radius above 3", radius > 3.0)
    ctx.check(
        "state gradient 100x larger at the first stroke than the last (step 0)",
        growth[0] > 100,
    )
    ctx.check(
        "raw gradient norm at step 0 100x the sanely initialised twin's",
        ctx.grad_norms[0] > 100 * twin_norm,
    )
    ctx.check("losses finite (clipped)", _finite(ctx.losses))


# -- wool carding: one shard's fibre lengths in micrometres -------------------------------------


@scenario(
    family="wool_carding_fibre_length_silu_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting the mean fibre length off a carding machine "
    "(in mm, standardised) from 12 settings (swift speed, doffer gap, feed rate, fleece "
    "micron, ...), ASGD at 0.05, MSE, clip_grad_norm_ at 1.0. One mill's shard was exported by a newer gauge that "
    "writes micrometres, and the batch of step 120 comes from it with targets 1000x: the loss "
    "and the gradient jump by orders of magnitude for that one step and the run recovers.",
)
def h201_wool_carding_micrometre_shard(ctx: Context) -> None:
    gen = seeded(20103)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    base = _readings(gen, 64, 12, seed=3)

    def batches():
        step = 0
        while True:
            x, y = next(base)
            if step == 120:
                y = y * 1000.0
            step += 1
            yield x, y

    _train(ctx, model, opt, batches(), 220, F.mse_loss, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 120 above 1000x the median", ls[120] > 1000 * _median(ls[100:120]))
    ctx.check("gradient at step 120 above 100x the median", gn[120] > 100 * _median(gn[100:120]))
    ctx.check("losses finite", _finite(ls))
    ctx.check("loss fell before the shard", _mean(ls[110:120]) < 0.5 * _mean(ls[:10]))
    ctx.check("recovered (last 10 below 2x pre-shard)", _mean(ls[-10:]) < 2 * _mean(ls[110:120]))


# -- harbour pilot: a hand-written BCE whose softplus lost its sign ----------------------------


def _bad_bce(z, y):
    # meant: softplus(z) - y * z  (binary_cross_entropy_with_logits)
    return (F.softplus(-z) - y * z).mean()


def _hazards(gen, batch, d_in=14, tags=6, seed=4):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, tags, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w) / math.sqrt(d_in) + 0.3 * torch.randn(batch, tags, generator=gen) > 0.3
        yield x, y.float()


@scenario(
    family="harbour_pilot_ladder_hazard_multilabel_silu_mlp",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) tagging six hazards of a pilot-ladder boarding "
    "(freeboard, swell, ladder wear, lee side, night, speed) from 14 readings, Adamax at 2e-3. "
    "The multi-label loss was hand-written as softplus(-z) - y*z for softplus(z) - y*z: for a "
    "positive tag it falls without bound as z grows, so the head's logits run off, growing "
    "20x and more and still growing at the end, the loss heading below zero, all finite.",
)
def h201_harbour_pilot_bce_sign(ctx: Context) -> None:
    gen = seeded(20104)
    model = Stack(14, hidden=64, out=6, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    top = []

    def watch(step, out, x, y):
        top.append(float(out.detach().abs().max(1).values.mean()))

    _train(ctx, model, opt, _hazards(gen, 64), 250, _bad_bce, watch=watch)
    ctx.check("head logits grew 20x", _mean(top[-10:]) > 20 * _mean(top[:5]))
    ctx.check("head logits still growing", _mean(top[-10:]) > 1.3 * _mean(top[150:160]))
    ctx.check("loss below zero at the end", _mean(ctx.losses[-10:]) < 0.0)
    ctx.check("losses finite", _finite(ctx.losses))


# -- honey pollen: a sharpening temperature typed 4e-3 ----------------------------------------


@scenario(
    family="honey_pollen_varietal_gelu_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) naming a honey's floral source (8 classes) from 16 pollen "
    "counts (melissopalynology), Adam at 1e-3, cross-entropy. The logits are divided by a "
    "sharpening temperature that the config meant as 0.4 and wrote 4e-3: the float32 softmax "
    "rounds the target to exactly 1.0 (and the others to 0) on most rows.",
)
def h201_honey_pollen_temperature_typo(ctx: Context) -> None:
    gen = seeded(20105)
    model = Stack(16, hidden=64, out=8, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    temperature = 4e-3
    frac = []

    def loss_fn(out, y):
        return F.cross_entropy(out / temperature, y)

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach() / temperature, y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 8, seed=5),
        150,
        loss_fn,
        classifier=True,
        watch=watch,
    )
    ctx.check("over half the rows' target probability exactly 1.0", _mean(frac[-10:]) > 0.5)
    ctx.check("under 20% collapsed at step 0", frac[0] < 0.2)
    ctx.check("losses finite", _finite(ctx.losses))


# -- rivet forge: raw pyrometer degrees, the scaler's transform dropped ------------------------


def _rivet_heats(gen, batch):
    """A rivet boy's forge: 6 readings in raw units (pyrometer degC 700-1100, soak seconds,
    rivet diameter mm, ...) and the heat grade (4 classes) a standardised view would separate."""
    g = torch.Generator().manual_seed(6)
    protos = torch.randn(4, 6, generator=g)
    mean = torch.tensor([900.0, 40.0, 22.0, 60.0, 5.0, 300.0])
    scale = torch.tensor([100.0, 10.0, 3.0, 15.0, 1.0, 50.0])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        z = protos[y] + 0.6 * torch.randn(batch, 6, generator=gen)
        yield mean + scale * z, y


@scenario(
    family="rivet_forge_heat_grade_relu_classifier",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("act1", "fc1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1/act1, fc2/act2, head) grading a forge's rivet heat (4 classes) from 6 "
    "readings, SGD momentum 0.9 at 3e-3, cross-entropy. A StandardScaler was fitted but the "
    "pipeline's transform call was dropped, so the readings come in raw units (pyrometer "
    "degrees near 900): about half of act1's units start off on the raw offsets, the first "
    "updates are huge and kill the rest, and over 90% of act1 is dead by the end, never "
    "coming back; the loss sits at chance (ln 4).",
)
def h201_rivet_forge_raw_degrees(ctx: Context) -> None:
    gen = seeded(20106)
    model = Stack(6, hidden=64, out=4)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.act1(model.fc1(x))))

    _train(
        ctx,
        model,
        opt,
        _rivet_heats(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("act1 under 60% dead at step 0", dead[0] < 0.6)
    ctx.check("act1's dead fraction rose by 35 points", _mean(dead[-10:]) > dead[0] + 0.35)
    ctx.check("act1 over 90% dead at the end", _mean(dead[-10:]) > 0.9)
    ctx.check(
        "loss near chance at the end (above 0.8 ln 4)", _mean(ctx.losses[-10:]) > 0.8 * math.log(4)
    )
    ctx.check("losses finite", _finite(ctx.losses))


# -- cycle rickshaw: the trunk's rate typed 3e-8 ----------------------------------------------


class FareNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    family="cycle_rickshaw_fare_time_gelu_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (trunk.0, trunk.2, head) predicting a cycle-rickshaw ride's time "
    "(standardised) from 10 readings (distance, gradient, load, traffic, rain, ...), AdamW "
    "param groups, Huber. The trunk group's rate was meant as 3e-4 and typed 3e-8, the head's "
    "3e-3: the trunk's update/weight ratio sits about 1e4 below the head's, the trunk barely "
    "moves, and only the head learns; the loss falls a little and stalls, all finite.",
)
def h201_rickshaw_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(20107)
    model = FareNet()
    opt = torch.optim.AdamW(
        [
            {"params": model.trunk.parameters(), "lr": 3e-8},
            {"params": model.head.parameters(), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    ratios = {"trunk": [], "head": []}
    prev = {}

    def before(step):
        for name in ("trunk", "head"):
            w = getattr(model, name)[0].weight if name == "trunk" else model.head.weight
            if name in prev:
                ratios[name].append(float((w.detach() - prev[name]).norm() / w.detach().norm()))
            prev[name] = w.detach().clone()

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=7), 150, F.huber_loss, before=before)
    t, h = _mean(ratios["trunk"][10:]), _mean(ratios["head"][10:])
    ctx.check("trunk update/weight ratio below 1e-6", t < 1e-6)
    ctx.check("trunk ratio 1000x below the head's", t * 1000 < h)
    ctx.check("losses finite", _finite(ctx.losses))


# -- cloud seeding: log(seeded / control) with no floor ---------------------------------------


class LogRatio(nn.Module):
    """Rain enhancement as log(seeded gauge / control gauge)."""

    def forward(self, seeded_mm, control_mm):
        return torch.log(seeded_mm / control_mm)


class SeedingNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.log_ratio = LogRatio()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        r = self.log_ratio(x[:, -2], x[:, -1])[:, None]
        h = self.act2(self.fc2(self.act1(self.fc1(torch.cat([x[:, :-2], r], 1)))))
        return torch.cat([self.mean(h), self.log_var(h)], 1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _seeding(gen, batch, bad_step):
    """8 cloud readings (top temperature, liquid water, updraft, ...) and the gauges of the
    seeded and the control catchment; the target is the standardised rainfall gain."""
    g = torch.Generator().manual_seed(8)
    w = torch.randn(8, generator=g)
    step = 0
    while True:
        x = torch.randn(batch, 8, generator=gen)
        control = 2.0 + torch.rand(batch, generator=gen) * 8
        seeded_mm = control * (1.1 + 0.2 * torch.rand(batch, generator=gen))
        if step == bad_step:
            control[5] = 0.0  # a dry day at the control gauge
        y = torch.tanh(x @ w / math.sqrt(8)) + 0.1 * torch.randn(batch, generator=gen)
        step += 1
        yield torch.cat([x, seeded_mm[:, None], control[:, None]], 1), y


@scenario(
    family="cloud_seeding_rainfall_gain_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("log_ratio",),
    diverges=70,
    onset=70,
    heldout=True,
    note="A SiLU net with mean and log-variance heads (Gaussian NLL) predicting a cloud-seeding "
    "trial's rainfall gain from 8 cloud readings and a `log_ratio` module computing "
    "log(seeded gauge / control gauge) with no floor, RAdam at 1e-3. On step 70 a dry day at "
    "the control gauge reads 0.0: the ratio is inf, log gives inf, and the loss is NaN.",
)
def h201_cloud_seeding_log_ratio(ctx: Context) -> None:
    gen = seeded(20108)
    model = SeedingNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    _train(ctx, model, opt, _seeding(gen, 64, 70), 140, _gauss_nll)
    ls = ctx.losses
    ctx.check("first non-finite loss at step 70", _first_bad(ls) == 70)
    ctx.check("loss fell before step 70", _mean(ls[60:70]) < _mean(ls[:10]))


# -- harbour tugboat: a gradient-noise probe leaves summed per-sample gradients ---------------


@scenario(
    family="harbour_tugboat_bollard_pull_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting a harbour tug's bollard pull (standardised) "
    "from 10 readings (engine load, propeller pitch, draught, towline angle, ...), SGD momentum "
    "0.9 at 5e-3, MSE. At step 100 a gradient-noise-scale probe runs inside the training step: "
    "it backpropagates the batch's per-sample losses summed (not averaged) to estimate the "
    "noise and never zeroes the gradients, so the optimizer steps on the ordinary gradient "
    "plus 64 per-sample gradients: one step's gradient about 65x the usual from an ordinary "
    "batch; the run recovers.",
)
def h201_tugboat_noise_probe_sum(ctx: Context) -> None:
    gen = seeded(20109)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)

    def backward(step, loss, x, y):
        loss.backward()
        if step == 100:
            per_sample = (model(x) - y) ** 2
            per_sample.sum().backward()

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=9), 200, F.mse_loss, backward=backward)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 100 above 30x the median", gn[100] > 30 * _median(gn[80:100]))
    ctx.check(
        "batch loss at step 100 ordinary (below 3x median)", ls[100] < 3 * _median(ls[80:100])
    )
    ctx.check("losses finite", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.5))


# -- smokehouse: a hand-written decoupled weight decay with its sign lost --------------------


@scenario(
    family="smokehouse_salmon_moisture_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting a cold-smoked salmon side's moisture loss "
    "(standardised) from 10 readings (smoke hours, kiln temperature, humidity, brine strength, "
    "...), NAdam at 2e-3, MSE. The trainer applies decoupled weight decay by hand after each "
    "step and wrote p.add_(p, alpha=lr * wd) for alpha=-lr * wd, with wd 4: every weight "
    "grows 0.8% a step, and after the fit (near step 100) the loss climbs slowly and steadily "
    "through the rest of the run, about 20x from its low, finite throughout.",
)
def h201_smokehouse_decay_sign(ctx: Context) -> None:
    gen = seeded(20110)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    wd = 4.0
    norms = []

    def before(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=opt.param_groups[0]["lr"] * wd)
        norms.append(float(sum((p.detach() ** 2).sum() for p in model.parameters()).sqrt()))

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=10), 250, F.mse_loss, before=before)
    ls = ctx.losses
    lows = [_mean(ls[i : i + 10]) for i in range(0, 120, 10)]
    ctx.check("weight norm grew 3x", norms[-1] > 3 * norms[0])
    ctx.check("loss fell first", min(lows) < 0.7 * _mean(ls[:10]))
    ctx.check("loss climbed 3x from its low", _mean(ls[-10:]) > 3 * min(lows))
    ctx.check("climb steady (steps 200-250 above 150-200)", _mean(ls[200:]) > _mean(ls[150:200]))
    ctx.check("losses finite", _finite(ls))


# -- controls -----------------------------------------------------------------------------------


class UndertoneGRU(nn.Module):
    def __init__(self, d_in=8, hidden=32, classes=4):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out.mean(1))


def _undertones(gen, batch, length=24):
    """24 spectral frames (8 bands) of a kargyraa phrase; the label is the vowel (4 classes)
    shaping the undertone, a slow formant pattern under noise."""
    g = torch.Generator().manual_seed(11)
    formants = torch.randn(4, 8, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        wobble = torch.sin(0.4 * t + 6.28 * torch.rand(batch, 1, generator=gen))[..., None]
        x = formants[y][:, None, :] * (0.6 + 0.4 * wobble)
        yield x + 0.8 * torch.randn(batch, length, 8, generator=gen), y


@scenario(
    family="kargyraa_undertone_gru_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A GRU reading 24 spectral frames of a kargyraa (Tuvan undertone) phrase and naming "
    "the vowel (4 classes) from its mean state; AdamW 3e-3 with param groups (no decay on "
    "biases), a 20-step linear warm-up then cosine, clip_grad_norm_ at 1.0, label smoothing "
    "0.1. A control.",
)
def h201_kargyraa_gru_warmup_cosine(ctx: Context) -> None:
    gen = seeded(20111)
    model = UndertoneGRU()
    named = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if "bias" not in n], "weight_decay": 0.05},
            {"params": [p for n, p in named if "bias" in n], "weight_decay": 0.0},
        ],
        lr=3e-3,
    )
    total, warm = 150, 20

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _train(
        ctx,
        model,
        opt,
        _undertones(gen, 32),
        total,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    family="gold_panning_yield_silu_regressor",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting a prospector's pan yield (standardised) from "
    "10 readings of a gravel bar (depth, black-sand share, current, bend position, ...), "
    "Adadelta at lr 1.0, Huber, gradient accumulation over 2 micro-batches, ReduceLROnPlateau "
    "(patience 10, factor 0.5). A control.",
)
def h201_gold_panning_adadelta_plateau(ctx: Context) -> None:
    gen = seeded(20112)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10, factor=0.5)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=12, noise=0.2),
        150,
        F.huber_loss,
        sched=sched,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("losses finite", _finite(ctx.losses))


def _stigmas(gen, batch):
    """8 readings of a saffron bed (corm size, soil temperature, autumn rain, ...) and the
    stigma count of a flower plot, Poisson around exp of a smooth function."""
    g = torch.Generator().manual_seed(13)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        rate = torch.exp(1.5 + 0.6 * torch.tanh(x @ w / math.sqrt(8)))
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="saffron_stigma_count_poisson_net",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) predicting the log rate of a saffron plot's stigma "
    "count from 8 bed readings, Poisson NLL (log input, full), Adagrad under OneCycleLR (max_lr "
    "5e-2), clip_grad_norm_ at 5.0. A control.",
)
def h201_saffron_poisson_onecycle(ctx: Context) -> None:
    gen = seeded(20113)
    model = Stack(8, hidden=48, act=nn.GELU)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    total = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=5e-2, total_steps=total, cycle_momentum=False
    )
    _train(
        ctx,
        model,
        opt,
        _stigmas(gen, 64),
        total,
        lambda o, y: F.poisson_nll_loss(o, y, log_input=True, full=True),
        clip=5.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("losses finite", _finite(ctx.losses))
