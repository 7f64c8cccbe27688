"""Held-out set 274 (``h274_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a kitesurf jump-height Huber net whose loss-weight table
holds 100 for 1.0 at one phase boundary, a glacier-ogive band-spacing tanh net whose StepLR
gamma was typed 2.0 for 0.5, a sumi-e brush-stroke classifier whose log_softmax was left out
before nll_loss, a walrus haul-out count Poisson net whose NAdam lr was typed 1e-1 for 1e-3, a
lobster-pot catch regressor fed a batch with an unmasked -9999 sentinel, a speleothem drip-growth
net whose log1p was written log, a bobbin-lace thread-tension net with a head per lace style
switched by the data whose tatting head got lr 0 through a misspelt key, a rag-rug hooking
fault classifier whose inverse-frequency class weights lost their clamp, a seaweed-harvest
dry-weight net whose hand-rolled weight decay has the wrong sign, an icefall serac-collapse deep
ReLU net whose init gain was typed 3 for sqrt(2), and three controls (a hapkido joint-lock
classifier with dropout and label smoothing, a quilting stitch-length Huber net with OneCycleLR
and gradient accumulation, a humpback song-unit fp16 tied-weight autoencoder with a GradScaler).

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


class _Twin:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


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
    amp=False,
    accumulate=1,
    scale=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale(step)`` multiplies
    the backpropagated loss (default 1 / ``accumulate``), ``after(step)`` runs after the
    optimizer step; ``amp``: fp16 autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        mult = scale(step) if scale is not None else 1.0 / accumulate
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float() if amp else out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss * mult
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


def _traces(gen, batch, classes, seed, channels=3, length=32, noise=0.5):
    """Multi-channel traces: each class a different mix of frequencies, random phase and gain."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.9 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        gain = 0.5 + 2.0 * torch.rand(batch, 1, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase)
        yield gain * (x + noise * torch.randn(batch, channels, length, generator=gen)), y


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


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _top_eig(model, x, y, loss_fn=F.mse_loss, iters=12):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = list(model.parameters())
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        nv = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / nv for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- kitesurf: the loss-weight table holds 100 for 1.0 at one phase boundary ---------------------

ONSET_KITE = 120


class KiteNet(nn.Module):
    """A wind branch and a rider branch, joined, then a head: the jump height of a kitesurfer."""

    def __init__(self, d_wind=6, d_rider=6, hidden=32):
        super().__init__()
        self.d_wind = d_wind
        self.wind = nn.Linear(d_wind, hidden)
        self.rider = nn.Linear(d_rider, hidden)
        self.act = nn.SiLU()
        self.joint = nn.Linear(2 * hidden, hidden)
        self.act_joint = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        w = self.act(self.wind(x[:, : self.d_wind]))
        r = self.act(self.rider(x[:, self.d_wind :]))
        h = self.act_joint(self.joint(torch.cat([w, r], -1)))
        return self.head(h).squeeze(-1)


@scenario(
    family="kitesurf_jump_height_two_branch_huber_net",
    optimizer="SGD(momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KITE,
    note="A two-branch SiLU net (wind and rider branches, joint, act_joint, head) regressing a kitesurfer's jump height from 6 standardised wind readings (gust speed, gust factor, direction shift, ...) and 6 rider readings (board speed, kite angle, edge pressure, ...), SGD with momentum 0.9 at 1e-2, Huber loss (delta 1), clipping at 5. The loss is multiplied by a per-phase weight read from a table keyed by step; the entry at the phase boundary, step 120, was typed 100 instead of 1.0: that single step's gradient is about 100x the steps around it while the batch is ordinary. Clipped, the run recovers; finite.",
)
def h274_kitesurf_loss_weight_table_typo(ctx: Context) -> None:
    gen = seeded(27401)
    model = KiteNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    weights = {s: 1.0 for s in range(0, 240, 40)}
    weights[ONSET_KITE] = 100.0  # meant 1.0
    seen = {}

    def scale(step):
        return weights.get(step, 1.0)

    def watch(step, out, x, y):
        if step == ONSET_KITE:
            seen["x_max"] = float(x.abs().max())
            seen["y_max"] = float(y.abs().max())

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 131),
        220,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        clip=5.0,
        scale=scale,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_KITE - 10 : ONSET_KITE])
    before = _median(gn[ONSET_KITE - 20 : ONSET_KITE])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_KITE], ratio=0.6))
    ctx.check(
        "the gradient norm at the onset over 40x the median before", gn[ONSET_KITE] > 40 * before
    )
    ctx.check(
        "the onset's loss is ordinary (under 3x the 10 steps before)", ls[ONSET_KITE] < 3 * pre
    )
    ctx.check("the gradient norm 20 steps after back under 3x", gn[ONSET_KITE + 20] < 3 * before)
    ctx.check(
        "the batch at the onset is ordinary (|x| under 6, |y| under 4)",
        seen.get("x_max", 99.0) < 6 and seen.get("y_max", 99.0) < 4,
    )
    ctx.check(
        "the loss is back under 2x its pre-onset level 60 steps later",
        _mean(ls[ONSET_KITE + 50 : ONSET_KITE + 60]) < 2 * max(pre, 1e-3),
    )


# -- glacier ogive: StepLR gamma typed 2.0 for 0.5 -----------------------------------------------


class OgiveNet(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


STEP_OGIVE = 30


@scenario(
    family="glacier_ogive_band_spacing_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=STEP_OGIVE,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the spacing of the ogive bands below a glacier icefall from 10 standardised readings (ice velocity, icefall height, summer melt, winter snow, ...), plain SGD at 0.02, MSE, with a StepLR every 30 steps whose gamma was meant to be 0.5 and was typed 2.0: the rate doubles at every step-size boundary; lr x the loss's top Hessian eigenvalue (power iteration on a fixed batch) is under 2 for the first boundaries and crosses the 2/sharpness stability limit later, after which the loss oscillates and blows up. The twin with gamma 0.5 trains and stays finite. The batches are ordinary.",
)
def h274_glacier_ogive_steplr_gamma_typo(ctx: Context) -> None:
    state = {}

    def run(c, gamma):
        gen = seeded(27402)
        model = OgiveNet(10)
        opt = torch.optim.SGD(model.parameters(), lr=0.02)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=STEP_OGIVE, gamma=gamma)
        probe = next(_readings(torch.Generator().manual_seed(13), 256, 10, 137))
        products = {}

        def before(step):
            if gamma > 1 and step % 5 == 0 and "cross" not in state:
                lr = opt.param_groups[0]["lr"]
                products[step] = lr * _top_eig(model, *probe)
                if products[step] > 2:
                    state["cross"] = step

        _train(
            c, model, opt, _readings(gen, 128, 10, 137), 260, F.mse_loss, sched=sched, before=before
        )
        return products

    twin = _Twin()
    run(twin, 0.5)
    products = run(ctx, 2.0)
    state["products"] = products
    ls = ctx.losses
    cross = state.get("cross", 10**6)
    low = min(ls[: min(cross, len(ls))]) if ls else 0.0
    bad = _first_bad(ls)
    blew = bad is not None or max(ls) > 1e4 * max(low, 1e-6)
    blow = bad if bad is not None else next((i for i, v in enumerate(ls) if v > 1e3 * low), None)
    ctx.check(
        "lr x sharpness under 2 through the first two boundaries",
        all(v < 2 for s, v in products.items() if s <= 2 * STEP_OGIVE),
    )
    ctx.check("lr x sharpness crosses 2 later", 2 * STEP_OGIVE < cross < len(ls))
    ctx.check("loss fell before the crossing", _fell(ls[: min(cross, len(ls))], ratio=0.6))
    ctx.check("the loss blows up (non-finite or over 1e4x its low)", blew)
    ctx.check("the blow-up comes after the crossing", blow is not None and blow >= cross)
    ctx.check("the gamma-0.5 twin stays finite and trains", _fell(twin.losses, ratio=0.6))


# -- sumi-e: nll_loss on raw logits, log_softmax left out ----------------------------------------


class BrushNet(nn.Module):
    def __init__(self, d_in, classes, hidden=48):
        super().__init__()
        self.stem = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.mix = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.mix(self.act1(self.stem(x)))))


@scenario(
    family="sumi_e_brush_stroke_kind_gelu_classifier",
    optimizer="Adagrad",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (stem, act1, mix, act2, head) telling which of 5 sumi-e ink-painting strokes (bone, orchid leaf, bamboo node, dot, wash) a brush made from 16 standardised readings of a pressure-sensing brush (tip pressure, drag speed, ink load, lift angle, ...), Adagrad at 5e-2, cross-entropy meant as nll_loss(log_softmax(logits)). The log_softmax was dropped when the head was refactored, so the run minimises nll_loss(logits) = -mean(target logit): the objective is unbounded below and the head's logits grow step after step (over 20x, still growing at the end) while the loss goes ever more negative; the twin with log_softmax keeps them an order smaller. Finite, no blow-up.",
)
def h274_sumi_e_nll_without_log_softmax(ctx: Context) -> None:
    def run(c, log_softmax):
        gen = seeded(27403)
        model = BrushNet(16, 5)
        opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 16, 5, 139))[0]
        with torch.no_grad():
            peak = [float(model(probe).abs().max())]

        def after(step):
            with torch.no_grad():
                peak.append(float(model(probe).abs().max()))

        def loss_fn(out, y):
            return F.nll_loss(F.log_softmax(out, -1) if log_softmax else out, y)

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 5, 139),
            200,
            loss_fn,
            classifier=True,
            after=after,
        )
        return peak

    twin = _Twin()
    twin_peak = run(twin, True)
    peak = run(ctx, False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak |logit| grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("the peak is still growing over the last 50 steps", peak[-1] > 1.2 * peak[-50])
    ctx.check("the loss went below zero", ls[-1] < 0)
    ctx.check("the twin with log_softmax keeps the peak 5x smaller", twin_peak[-1] < peak[-1] / 5)


# -- walrus haul-out: NAdam lr typed 1e-1 for 1e-3 -----------------------------------------------


def _haulouts(gen, batch, d_in=12, seed=149):
    """Standardised readings of a beach and day (sea-ice distance, air temperature, wind, tide,
    disturbance, ...) and the Poisson count of walruses hauled out (mean a few to tens)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(1.5 + 0.6 * torch.tanh(x @ w / math.sqrt(d_in)) + 0.4 * torch.sin(x @ v))
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="walrus_haul_out_count_poisson_relu_net",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting the log-rate of how many walruses haul out on a beach from 12 standardised readings (sea-ice distance, air temperature, wind, tide, disturbance, ...), Poisson NLL with log input, NAdam. The rate was meant to be 1e-3 and was typed 1e-1 (copied from an SGD recipe): the first large steps push fc2's pre-activations negative on every input, over half of act2's ReLU units stop firing on a 512-row probe and never fire again, and the loss stalls far above the twin at 1e-3, which keeps its units alive. Finite, no blow-up.",
)
def h274_walrus_nadam_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(27404)
        model = Stack(12, hidden=64)
        opt = torch.optim.NAdam(model.parameters(), lr=lr)
        probe = next(_haulouts(torch.Generator().manual_seed(5), 512))[0]

        def dead():
            with torch.no_grad():
                return dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe)))))

        fr = [dead()]

        def after(step):
            fr.append(dead())

        _train(
            c,
            model,
            opt,
            _haulouts(gen, 64),
            200,
            lambda o, y: F.poisson_nll_loss(o, y, log_input=True),
            after=after,
        )
        return fr

    twin = _Twin()
    twin_fr = run(twin, 1e-3)
    fr = run(ctx, 1e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("act2 under 20% dead at init", fr[0] < 0.2)
    ctx.check("act2 over half dead at the end", fr[-1] > 0.5)
    ctx.check("act2 over half dead over the last 100 steps", min(fr[-100:]) > 0.5)
    ctx.check("the intended lr keeps act2 under 20% dead", twin_fr[-1] < 0.2)
    ctx.check(
        "the twin ends under 0.8x this run's loss", _mean(twin.losses[-10:]) < 0.8 * _mean(ls[-10:])
    )


# -- lobster pot: an unmasked -9999 sentinel -----------------------------------------------------

ONSET_LOBSTER = 100


@scenario(
    family="lobster_pot_catch_weight_relu_regressor",
    optimizer="SGD(nesterov=True)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_LOBSTER,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the catch weight of a lobster fisher's string of pots from 10 standardised readings (soak days, depth, bottom type, water temperature, bait freshness, the logger's seabed temperature, ...), SGD with Nesterov momentum 0.9 at 1e-2, MSE, clipping at 2. One boat's seabed logger writes -9999 when it loses contact, and the loader does not mask that sentinel: at step 100 twelve rows of one batch carry -9999 in that column (thousands of standard deviations), the targets are ordinary. The loss and gradient at that step are hundreds of times the others; clipped, the run recovers; finite.",
)
def h274_lobster_pot_unmasked_sentinel(ctx: Context) -> None:
    gen = seeded(27405)
    model = Stack(10, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_LOBSTER:
            x = x.clone()
            x[:12, 7] = -9999.0
            seen["x_max"] = float(x.abs().max())
            seen["y_max"] = float(y.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 151), 200, F.mse_loss, alter=alter, clip=2.0)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_LOBSTER - 20 : ONSET_LOBSTER])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_LOBSTER], ratio=0.6))
    ctx.check("loss at the onset over 100x the median before", ls[ONSET_LOBSTER] > 100 * pre)
    ctx.check(
        "gradient at the onset over 100x the median before",
        gn[ONSET_LOBSTER] > 100 * _median(gn[ONSET_LOBSTER - 20 : ONSET_LOBSTER]),
    )
    ctx.check("the onset inputs hold the sentinel (over 1e3)", seen.get("x_max", 0.0) > 1e3)
    ctx.check("the onset targets are ordinary (|y| under 4)", seen.get("y_max", 99.0) < 4)
    ctx.check(
        "the loss is back under 3x its pre-onset level 60 steps later",
        _mean(ls[ONSET_LOBSTER + 50 : ONSET_LOBSTER + 60]) < 3 * pre,
    )


# -- speleothem: log1p written log ---------------------------------------------------------------

ONSET_CAVE = 80


class LogCount(nn.Module):
    """Log-transforms the drip-count column (meant log1p)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.last_bad = False

    def forward(self, counts):
        out = self.fn(counts)
        self.last_bad = bool((~torch.isfinite(out)).any())
        return out


class GrowthNet(nn.Module):
    """logcount on the drip counts, joined with the other readings: fc1 -> act1 -> fc2 -> head."""

    def __init__(self, d_in, fn, hidden=48):
        super().__init__()
        self.logcount = LogCount(fn)
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = torch.cat([self.logcount(x[:, :1]) - 3.0, x[:, 1:]], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


def _drips(gen, batch, d_in=8, seed=157):
    """A cave logger's weekly drip count (first column, raw) and standardised readings (cave air
    CO2, humidity, surface rainfall, ...); the target is the stalagmite's standardised growth."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in - 1, generator=g)
    while True:
        counts = 3.0 + torch.poisson(torch.full((batch, 1), 20.0), generator=gen)
        rest = torch.randn(batch, d_in - 1, generator=gen)
        y = 0.8 * (torch.log(counts[:, 0]) - 3.0) + torch.tanh(rest @ w / math.sqrt(d_in))
        yield torch.cat([counts, rest], -1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="speleothem_drip_growth_log_count_relu_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("logcount",),
    diverges=ONSET_CAVE,
    heldout=True,
    onset=ONSET_CAVE,
    note="A ReLU MLP (logcount, fc1, act1, fc2, act2, head) regressing the growth of a cave stalagmite from a logger's weekly drip count (log-transformed in the logcount module) and 7 standardised readings (cave air CO2, humidity, surface rainfall, ...), RMSprop at 1e-3, MSE. The transform was meant as log1p and written log; every count seen so far was positive, and at step 80 one logger reports a dry week with exactly 0 drips: log 0 = -inf in logcount, -inf times weights of both signs gives NaN in fc1 and the loss is NaN from that step. The twin with log1p stays finite.",
)
def h274_speleothem_log_instead_of_log1p(ctx: Context) -> None:
    seen = {}

    def run(c, fn, buggy):
        gen = seeded(27406)
        model = GrowthNet(8, fn)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

        def alter(step, x, y):
            if step == ONSET_CAVE:
                x = x.clone()
                x[5, 0] = 0.0
            if buggy:
                seen.setdefault("min_count", []).append(float(x[:, 0].min()))
            return x, y

        def watch(step, out, x, y):
            if buggy and model.logcount.last_bad and "step" not in seen:
                seen["step"] = step

        _train(c, model, opt, _drips(gen, 64), 160, F.mse_loss, alter=alter, watch=watch)

    twin = _Twin()
    run(twin, torch.log1p, False)
    run(ctx, torch.log, True)
    ls = ctx.losses
    mins = seen.get("min_count", [0.0])
    ctx.check("the loss is non-finite first at step 80", _first_bad(ls) == ONSET_CAVE)
    ctx.check(
        "finite and falling before step 80",
        _finite(ls[:ONSET_CAVE]) and _fell(ls[:ONSET_CAVE], ratio=0.6),
    )
    ctx.check(
        "logcount produced a non-finite value first at step 80", seen.get("step") == ONSET_CAVE
    )
    ctx.check("every count before step 80 is positive", min(mins[:ONSET_CAVE]) > 0)
    ctx.check("the twin with log1p stays finite", _finite(twin.losses) and len(twin.losses) == 160)


# -- bobbin lace: a head per lace style, the tatting head's lr key misspelt ----------------------

STYLES = ("bobbin", "needle", "tatting")


class LaceNet(nn.Module):
    """A shared trunk and one head per lace style; the style column of each row picks its head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.trunk = nn.Linear(d_in, hidden)
        self.act = nn.GELU()
        self.heads = nn.ModuleDict({s: nn.Linear(hidden, 1) for s in STYLES})

    def forward(self, x):
        style = x[:, 0].long()
        h = self.act(self.trunk(x[:, 1:]))
        outs = torch.cat([self.heads[s](h) for s in STYLES], -1)
        return outs.gather(1, style[:, None]).squeeze(-1)


def _lace(gen, batch, d_in=10, seed=163):
    """A style column (0 bobbin, 1 needle, 2 tatting) and standardised readings (thread count,
    pin spacing, humidity, hours worked, ...); the thread tension depends on the style."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(len(STYLES), d_in, generator=g)
    off = torch.tensor([0.0, 1.0, -1.5])
    while True:
        style = torch.randint(0, len(STYLES), (batch,), generator=gen)
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh((x * w[style]).sum(-1) / math.sqrt(d_in)) + off[style]
        yield torch.cat([style[:, None].float(), x], -1), y


@scenario(
    family="bobbin_lace_thread_tension_style_switched_heads",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("heads.tatting",),
    diverges=None,
    heldout=True,
    note="A mixture of heads switched by the data: a GELU trunk shared by three heads (heads.bobbin, heads.needle, heads.tatting), the lace-style column of each row picking the head that predicts the thread tension a lace maker should keep from 10 standardised readings (thread count, pin spacing, humidity, hours worked, ...), Adam with one param group per head, MSE. The per-head rates are read from a config dict with .get(name, 0.0) and the tatting entry was spelt 'tating': heads.tatting's group runs at lr 0, its weights never move (update ratio exactly 0 while the other heads move over 1e-4 of their norm per step); the tatting rows keep an error over 3x the twin's with the key spelt right, the other styles train. Finite, no blow-up.",
)
def h274_bobbin_lace_head_lr_key_typo(ctx: Context) -> None:
    def run(c, cfg):
        gen = seeded(27407)
        model = LaceNet(10)
        groups = [{"params": model.trunk.parameters(), "lr": 3e-3}]
        groups += [{"params": model.heads[s].parameters(), "lr": cfg.get(s, 0.0)} for s in STYLES]
        opt = torch.optim.Adam(groups, lr=3e-3)
        ratios = {s: [] for s in STYLES}
        prev = {}
        probe = next(_lace(torch.Generator().manual_seed(7), 600))
        per_style = []

        def before(step):
            for s in STYLES:
                prev[s] = model.heads[s].weight.detach().clone()

        def after(step):
            for s in STYLES:
                w = model.heads[s].weight.detach()
                ratios[s].append(float((w - prev[s]).norm() / w.norm()))

        _train(c, model, opt, _lace(gen, 64), 200, F.mse_loss, before=before, after=after)
        with torch.no_grad():
            err = (model(probe[0]) - probe[1]) ** 2
            for i in range(len(STYLES)):
                per_style.append(float(err[probe[0][:, 0] == i].mean()))
        return {s: _median(v[10:]) for s, v in ratios.items()}, per_style

    twin = _Twin()
    _, twin_err = run(twin, {"bobbin": 3e-3, "needle": 3e-3, "tatting": 3e-3})
    r, err = run(ctx, {"bobbin": 3e-3, "needle": 3e-3, "tating": 3e-3})
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("heads.tatting's update ratio is 0", r["tatting"] == 0.0)
    ctx.check(
        "the other heads move over 1e-4 of their norm per step",
        min(r["bobbin"], r["needle"]) > 1e-4,
    )
    ctx.check("the tatting rows' error over 3x the twin's", err[2] > 3 * twin_err[2])
    ctx.check(
        "the other styles train (error under 0.3 of the tatting rows')",
        max(err[0], err[1]) < 0.3 * err[2],
    )


# -- rug hooking: the inverse-frequency class weights lost their clamp --------------------------

ONSET_RUG = 60


def _loops(gen, batch, d_in=16, seed=167):
    """Standardised readings of a rag rug's hooked loops (loop height, strip width, backing
    count, hook angle, ...) and which of 4 known faults they show; from ONSET_RUG on, one row of
    the onset batch is the fifth fault kind the tally never saw (an ordinary reading)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(5, d_in, generator=g)
    step = 0
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        if step == ONSET_RUG:
            y[3] = 4
        x = protos[y] + 0.35 * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        step += 1
        yield x, y


@scenario(
    family="rug_hooking_loop_fault_class_weighted_gelu_classifier",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_RUG,
    note="A GELU MLP (fc1, act1, fc2, act2, head) telling which of 5 faults (loops too high, too low, twisted, packed, pulled through) a rag-rug hooker's work shows from 16 standardised readings, Adam at 1e-3, cross-entropy per row times an inverse-frequency class weight, mean_count / (count + 1e-6), meant to be clamped at 10. The clamp was left out and the tally was taken on an older shard where the fifth fault never occurred (count 0): when the first ordinary row of that fault arrives at step 60 its weight is over 1e9, Adam receives one gradient over a thousand times the others, which fills its second moment (exp_avg_sq); from 50 to 120 steps afterwards every update is over 10x smaller than before (and well under the twin's with the clamp) and the loss stalls above the twin. Finite, no blow-up.",
)
def h274_rug_hooking_class_weight_no_clamp(ctx: Context) -> None:
    counts = torch.tensor([2500.0, 2500.0, 2500.0, 2500.0, 0.0])

    def run(c, clamp):
        gen = seeded(27408)
        model = Stack(16, hidden=48, out=5, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        weight = counts[:4].mean() / (counts + 1e-6)
        if clamp:
            weight = weight.clamp(max=10.0)
        moved, prev, xs = [], {}, []

        def before(step):
            prev["w"] = _flat(model)

        def after(step):
            moved.append(float((_flat(model) - prev["w"]).norm()))

        def watch(step, out, x, y):
            if step in (ONSET_RUG - 1, ONSET_RUG):
                xs.append(float(x.abs().max()))

        def loss_fn(out, y):
            return (F.cross_entropy(out, y, reduction="none") * weight[y]).mean()

        _train(
            c,
            model,
            opt,
            _loops(gen, 64),
            200,
            loss_fn,
            classifier=True,
            before=before,
            after=after,
            watch=watch,
        )
        return moved, xs, float(weight[4])

    twin = _Twin()
    twin_moved, _, _ = run(twin, True)
    moved, xs, w4 = run(ctx, False)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(moved[ONSET_RUG - 20 : ONSET_RUG])
    late = moved[ONSET_RUG + 50 : ONSET_RUG + 120]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the unseen fault's weight is over 1e9", w4 > 1e9)
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_RUG], ratio=0.7))
    ctx.check(
        "the gradient Adam saw at the onset over 1e3x the median before",
        gn[ONSET_RUG] > 1e3 * _median(gn[ONSET_RUG - 20 : ONSET_RUG]),
    )
    ctx.check("the inputs at the onset are ordinary (max |x| under 10)", max(xs) < 10)
    ctx.check(
        "updates 50-120 steps after the onset over 10x smaller than before",
        _median(late) < pre / 10,
    )
    ctx.check(
        "those updates under a fifth of the twin's over the same steps",
        _median(late) < 0.2 * _median(twin_moved[ONSET_RUG + 50 : ONSET_RUG + 120]),
    )
    ctx.check(
        "the loss stalls: the twin ends under 0.8x of it",
        _mean(twin.losses[-10:]) < 0.8 * _mean(ls[-10:]),
    )


# -- seaweed harvest: the hand-rolled weight decay has the wrong sign ----------------------------


@scenario(
    family="seaweed_harvest_dry_weight_silu_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the dry weight of a shore seaweed harvester's cut from 12 standardised readings (tide height, frond length, holdfast density, water temperature, drying hours, ...), SGD with momentum 0.9 at 1e-2, MSE. Weight decay is hand-rolled after each step as decoupled decay, p *= 1 - lr * wd with wd 0.5, and it was written p *= 1 + lr * wd: every weight grows by 0.5% a step on top of the gradient step; the loss falls at first, then climbs slowly and steadily for the rest of the run to several times its low (no single jump), while the weight norm keeps growing; the twin with the right sign keeps training. Finite within the run.",
)
def h274_seaweed_weight_decay_sign(ctx: Context) -> None:
    def run(c, sign):
        gen = seeded(27409)
        model = Stack(12, hidden=48, act=nn.SiLU)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        norms = [float(_flat(model).norm())]

        def after(step):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + sign * 1e-2 * 0.5)
            norms.append(float(_flat(model).norm()))

        _train(c, model, opt, _readings(gen, 64, 12, 173), 300, F.mse_loss, after=after)
        return norms

    twin = _Twin()
    run(twin, -1.0)
    norms = run(ctx, 1.0)
    ls = ctx.losses
    low_at = min(range(len(ls)), key=lambda i: _mean(ls[i : i + 10]))
    low = _mean(ls[low_at : low_at + 10])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell at first", _fell(ls[:60], ratio=0.7))
    ctx.check("the loss ends over 3x its low", _mean(ls[-10:]) > 3 * low)
    ctx.check(
        "the climb is slow (10-step means never jump over 2x)",
        all(
            _mean(ls[i + 10 : i + 20]) < 2 * _mean(ls[i : i + 10])
            for i in range(low_at, len(ls) - 20, 10)
        ),
    )
    ctx.check("the weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check(
        "the twin ends under 0.3x this run's loss",
        _mean(twin.losses[-10:]) < 0.3 * _mean(ls[-10:]),
    )


# -- icefall serac: the init gain typed 3 for sqrt(2) --------------------------------------------


class SeracNet(nn.Module):
    """A deep ReLU stack (body.0, body.2, ... Linear; odd indices ReLU) and a head."""

    def __init__(self, d_in, gain, hidden=32, depth=8):
        super().__init__()
        layers = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else hidden, hidden)
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, 1)
        self.acts = []

    def forward(self, x):
        self.acts = []
        for m in self.body:
            x = m(x)
            if isinstance(m, nn.Linear) and x.requires_grad:
                x.retain_grad()
                self.acts.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="icefall_serac_collapse_depth_deep_relu_net",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("body.0", "body"),
    diverges=None,
    heldout=True,
    note="A deep ReLU MLP (8 Linear layers body.0, body.2, ..., body.14 with ReLUs between, then head) regressing how far an icefall's serac collapse runs out from 10 standardised readings (ice velocity, temperature swing, crevasse density, slope, ...), Adamax at 1e-3, MSE, clipping at 1. The hand-written init draws each weight with std gain / sqrt(fan_in), gain meant sqrt(2) for ReLU and typed 3: every layer multiplies the signal by about 2x forward and the gradient by about 2x backward, the gradient on the first layer's pre-activation is over 30x the last one's (under 3x for the twin), the gradient norm is over 100x the twin's and the loss stays far above it; the clipping keeps the run finite.",
)
def h274_icefall_serac_init_gain_typo(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(27410)
        model = SeracNet(10, gain)
        opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
        batches = _readings(gen, 64, 10, 179)
        growth = []
        c.attach(model, opt)
        for _ in range(150):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            a = model.acts
            growth.append(float(a[0].grad.norm() / (a[-1].grad.norm() + 1e-30)))
            c.grad_norms.append(grad_norm(model))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            c.step(loss.detach())
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss.detach())):
                break
        return growth

    twin = _Twin()
    twin_growth = run(twin, math.sqrt(2))
    growth = run(ctx, 3.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the first layer's gradient over 30x the last one's at step 0", growth[0] > 30)
    ctx.check("still over 30x at the end", growth[-1] > 30)
    ctx.check("with gain sqrt(2) the ratio is under 3x", twin_growth[0] < 3)
    ctx.check(
        "gradient norm over 100x the twin's",
        _median(ctx.grad_norms) > 100 * _median(twin.grad_norms),
    )
    ctx.check(
        "the twin trains to under 0.2x this run's loss",
        _mean(twin.losses[-10:]) < 0.2 * _mean(ls[-10:]),
    )


# -- healthy controls -----------------------------------------------------------------------------


class LockNet(nn.Module):
    def __init__(self, d_in, classes, hidden=64, p=0.2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.drop1(self.act1(self.fc1(x)))
        return self.head(self.drop2(self.act2(self.fc2(h))))


@scenario(
    family="hapkido_joint_lock_technique_dropout_classifier",
    optimizer="SGD(nesterov=True)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a ReLU MLP with dropout 0.2 (fc1, act1, drop1, fc2, act2, drop2, head) telling which of 7 hapkido joint locks a practitioner applied from 24 standardised motion-capture readings (wrist rotation, elbow angle, stance width, ...), SGD with Nesterov momentum 0.9 at 5e-2 with weight decay 5e-4, cross-entropy with label smoothing 0.1, a linear warm-up over 20 steps then cosine decay (SequentialLR), clipping at 2. Trains normally.",
)
def h274_hapkido_dropout_label_smoothing_control(ctx: Context) -> None:
    gen = seeded(27411)
    model = LockNet(24, 7)
    opt = torch.optim.SGD(
        model.parameters(), lr=5e-2, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=20)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[20])
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 24, 7, 181),
        220,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check(
        "the gradient stays bounded (max under 20x the median)",
        max(ctx.grad_norms) < 20 * _median(ctx.grad_norms),
    )


@scenario(
    family="quilting_stitch_length_onecycle_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) regressing the stitch length a hand quilter's stitches come out at from 10 standardised readings (batting loft, needle size, thread weight, fabric count, hoop tension, ...), noisy labels, Huber loss (delta 1), RAdam with weight decay 1e-4 under OneCycleLR (max_lr 3e-3) over 200 steps, gradient accumulation over 2 micro-batches of 32 (each loss halved). Trains normally.",
)
def h274_quilting_onecycle_accum_control(ctx: Context) -> None:
    gen = seeded(27412)
    model = Stack(10, hidden=48, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 191, noise=0.3),
        200,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        accumulate=2,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check(
        "the gradient stays bounded (max under 20x the median)",
        max(ctx.grad_norms) < 20 * _median(ctx.grad_norms),
    )


class TiedAutoencoder(nn.Module):
    """encoder Linear, decoder uses the encoder's weight transposed plus its own bias."""

    def __init__(self, d_in, code=8):
        super().__init__()
        self.encoder = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.decoder_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.encoder(x)), self.encoder.weight.T, self.decoder_bias)


def _song_units(gen, batch, d_in=24, rank=5, seed=193):
    """Band energies of a humpback song unit: a few latent factors mixed into 24 bands."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(rank, d_in, generator=g) / math.sqrt(rank)
    while True:
        z = torch.randn(batch, rank, generator=gen)
        x = torch.tanh(z) @ mix + 0.1 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="humpback_song_unit_fp16_tied_autoencoder",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a tied-weight autoencoder (encoder, act; the decoder reuses encoder.weight transposed with its own decoder_bias) compressing 24 band energies of a humpback whale song unit to 8 codes, MSE reconstruction, fp16 autocast with a torch.amp.GradScaler, Adadelta at lr 1.0, clipping at 1 after unscale_. Trains normally; the scale stays finite.",
)
def h274_humpback_tied_autoencoder_fp16_control(ctx: Context) -> None:
    gen = seeded(27413)
    model = TiedAutoencoder(24)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _song_units(gen, 64),
        200,
        F.mse_loss,
        clip=1.0,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check(
        "the loss scale stays finite and over 1",
        all(math.isfinite(s) and s > 1 for s in ctx.scales),
    )
