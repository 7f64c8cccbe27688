"""Held-out set 190 (``h190_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a saxophone overblow-register SiLU classifier whose z-loss
weight has the wrong sign, a candle wick burn-rate regressor whose loss normaliser restarts at
its 1e-4 placeholder on a resume, a river-meander migration tanh regressor under a MultiStepLR
with gamma typed 10 for 0.1, a tuba valve-combination ReLU classifier trained with RMSprop at
an Adagrad recipe's rate, a graupel pellet cosine classifier whose logit scale is stored in
linear units and exponentiated, an ice-storm glaze accretion learned-ODE integrator stepped
with dt in half-hours for a field in storm lengths, a netball centre-pass classifier whose head
is replaced after the optimizer was built, a windsurf planing-speed regressor fed a GPS watch's
9999 sentinel, a geomagnetic-storm Kp regressor whose rolling standard deviation is computed
from moments, a chocolate-tempering cost-to-go TD net whose discount is computed as 1 + rate,
and three controls (a golf swing-plane GELU/LayerNorm classifier at a large batch with a
linear warm-up, a sawmill kerf regressor under fp16 autocast + GradScaler and
ReduceLROnPlateau, a trapeze catch-timing 1-D conv tagger under OneCycleLR).

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
    alter=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    probe=True,
):
    """The file's training loop: ``before(step)`` first (schedules, injected bugs),
    ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)`` after the forward pass,
    ``after(step)`` after the optimizer step; ``accumulate`` micro-batches per step; the loss
    logged is the one backpropagated; stops after logging a NaN loss."""
    probe_batch = next(batches)
    ctx.attach(
        model,
        opt,
        probe=(lambda m, b: loss_fn(m(b[0]), b[1]), probe_batch) if probe else None,
        scaler=scaler,
    )
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
            if scaler is not None:
                scaler.scale(loss / accumulate).backward()
            else:
                (loss / accumulate).backward()
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


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, offset=0.0):
    """Standardised readings and a smooth nonlinear target (about unit scale, times ``scale``
    plus ``offset``)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, generator=gen)
        yield x, offset + scale * y


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


def _sharpness(model, loss_fn, x, y, iters=30) -> float:
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


# -- saxophone: a z-loss weight with the wrong sign -----------------------------------------------

SAX_Z_WEIGHT = -1e-3


def _sax_loss(logits, y):
    """Cross-entropy plus the z-loss weight * logsumexp(logits) ** 2 (PaLM's auxiliary term)."""
    lse = torch.logsumexp(logits, -1)
    return F.cross_entropy(logits, y) + SAX_Z_WEIGHT * (lse**2).mean()


@scenario(
    family="saxophone_overblow_register_zloss_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) naming which of 6 registers an alto saxophone note "
    "sounds in (fundamental or an overblown partial) from 14 embouchure, breath-pressure and "
    "key-pad readings, NAdam at 1e-2, cross-entropy plus a z-loss on logsumexp(logits) ** 2. "
    "The z-loss weight came from a config whose trainer subtracts its regularisers, so it was "
    "entered as -1e-3 and is added here: the term rewards a large logsumexp, and every step "
    "pushes the head's logits up together (which cross-entropy does not oppose). The run "
    "trains normally at first (mean |logit| about 4 and cross-entropy about 0.05 at step 100), "
    "then the head's logits run away: mean |logit| about 40 at step 140 and thousands at step "
    "200, still growing; the cross-entropy part climbs to the hundreds and the logged loss "
    "(the backpropagated total) falls far below zero; finite.",
)
def h190_saxophone_zloss_sign(ctx: Context) -> None:
    gen = seeded(19001)
    model = Stack(14, hidden=64, out=6, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    size, ce = [], []

    def watch(step, out, x, y):
        size.append(float(out.detach().abs().mean()))
        ce.append(float(F.cross_entropy(out.detach(), y)))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 6, seed=1, noise=0.6),
        200,
        _sax_loss,
        classifier=True,
        watch=watch,
    )
    ctx.check("head logits' mean |value| grew 100x from step 100", size[-1] > 100 * size[100])
    ctx.check("head logits still growing over the last 20 steps", size[-1] > 1.5 * size[-20])
    ctx.check("cross-entropy part above 10 at the end", _mean(ce[-10:]) > 10)
    ctx.check("backpropagated total below zero at the end", _mean(ctx.losses[-10:]) < 0)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- candle: a loss normaliser restarted at its 1e-4 placeholder on a resume -----------------------

CANDLE_RESUME = 80


class LossNormaliser:
    """The loss divided by a running mean of itself; the running mean starts at a placeholder
    that the first loss seen replaces. It is not part of the checkpoint."""

    def __init__(self, placeholder=1e-4):
        self.ema = placeholder

    def __call__(self, loss, first):
        if first:
            self.ema = float(loss.detach())
        out = loss / self.ema
        self.ema = 0.9 * self.ema + 0.1 * float(loss.detach())
        return out


def _candle_run(ctx, model, fixed, steps=240):
    """Trains to CANDLE_RESUME, 'resumes' from a checkpoint there (the normaliser rebuilt), goes
    on. ``fixed``: the first-loss guard tests the first step of this process, not step 0."""
    gen = seeded(19002)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {"norm": LossNormaliser(), "step": 0}
    params = list(model.parameters())
    moves, raw = [], []

    def loss_fn(out, y):
        step = state["step"]
        loss = F.mse_loss(out, y)
        raw.append(float(loss.detach()))
        first = step in (0, CANDLE_RESUME) if fixed else step == 0
        return state["norm"](loss, first)

    def before(step):
        state["step"] = step
        if step == CANDLE_RESUME:
            state["norm"] = LossNormaliser()  # a fresh process: model and Adam state restored
        state["w"] = _snapshot(params)

    def after(step):
        delta = torch.cat(
            [(p.detach() - w).flatten() for p, w in zip(params, state["w"], strict=True)]
        )
        moves.append(float(delta.abs().median()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=21, noise=0.05),
        steps,
        loss_fn,
        before=before,
        after=after,
        probe=False,
    )
    return moves, raw


class _Quiet(Context):
    """A context for an unmonitored twin run."""

    def attach(self, model, optimizer, *, probe=None, scaler=None):
        return None

    def step(self, loss):
        self.losses.append(float(loss.detach()))


@scenario(
    family="candle_wick_burn_rate_normalised_mlp",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=CANDLE_RESUME,
    note="A ReLU MLP (nn.ReLU modules) predicting a candle's burn rate from 10 wick, wax-blend "
    "and pour readings, Adam at 1e-3, MSE divided by a running mean of itself (a loss "
    "normaliser the team uses across products). The job is pre-empted and resumed from a "
    "checkpoint at step 80: model and Adam state are restored, but the normaliser is not in "
    "the checkpoint and restarts at its 1e-4 placeholder, and its first-loss guard tests "
    "`step == 0`, so the resumed first loss is divided by 1e-4: one gradient about a thousand "
    "times the usual at step 80, then the running mean catches up within a few steps. Adam's "
    "second moment holds that gradient: for the rest of the run the normalised steps are many "
    "times smaller than before and the raw MSE ends well above the same run with the guard "
    "fixed; finite.",
)
def h190_candle_resume_normaliser_placeholder(ctx: Context) -> None:
    model = Stack(10, hidden=64)
    twin = Stack(10, hidden=64)
    twin.load_state_dict(model.state_dict())
    moves, raw = _candle_run(ctx, model, fixed=False)
    moves_fixed, raw_fixed = _candle_run(_Quiet("default", ctx.run_dir), twin, fixed=True)
    at, gn, ls = CANDLE_RESUME, ctx.grad_norms, ctx.losses
    ctx.check("gradient 1000x the preceding median at step 80", gn[at] > 1000 * _median(gn[:at]))
    ctx.check(
        "gradients back under 10x the usual after 10 steps",
        max(gn[at + 10 :]) < 10 * _median(gn[at - 30 : at]),
    )
    ctx.check(
        "median per-weight step from 20 after the spike 10x smaller than before it",
        _mean(moves[at + 20 :]) < _mean(moves[at - 30 : at]) / 10,
    )
    ctx.check(
        "median per-weight step 5x smaller than the fixed run's over the same stretch",
        _mean(moves[at + 20 :]) < _mean(moves_fixed[at + 20 :]) / 5,
    )
    ctx.check(
        "raw MSE at the end 2x the fixed run's", _mean(raw[-10:]) > 2 * _mean(raw_fixed[-10:])
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- river meander: MultiStepLR with gamma typed 10 for 0.1 ----------------------------------------

MEANDER_MILESTONE = 100


@scenario(
    family="river_meander_migration_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=MEANDER_MILESTONE,
    note="A tanh MLP (nn.Tanh modules) predicting the yearly migration of a river bend's apex "
    "from 12 standardised curvature, bank-height, discharge and sediment readings, plain SGD "
    "at 0.1, MSE, under MultiStepLR(milestones=[100, 200]) meant to divide the rate by 10 at "
    "each milestone: gamma was typed 10 for 0.1, so at step 100 the rate jumps to 1.0. "
    "Measured on a fixed batch just before the milestone, lr x sharpness is about 0.65 "
    "before it and about 6.5 after it; the loss climbs geometrically from step 100, passes "
    "1e4 within a few steps and goes to inf and NaN.",
)
def h190_river_meander_gamma_typo(ctx: Context) -> None:
    gen = seeded(19003)
    model = Stack(12, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[100, 200], gamma=10.0)
    fixed = next(_readings(torch.Generator().manual_seed(3), 256, 12, seed=5))
    seen = {}
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step == MEANDER_MILESTONE - 1:
            seen["sharp"] = _sharpness(model, F.mse_loss, *fixed)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=5, noise=0.05),
        160,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    at, ls = MEANDER_MILESTONE, ctx.losses
    sharp = seen.get("sharp", float("nan"))
    ctx.check("lr x sharpness under 1 before the milestone", lrs[at - 1] * sharp < 1.0)
    ctx.check("lr x sharpness above 4 after the milestone", lrs[at] * sharp > 4.0)
    ctx.check("loss fell before the milestone", _fell(ls[:at]))
    blown = [v for v in ls[at:] if not math.isfinite(v) or v > 100 * _mean(ls[at - 10 : at])]
    ctx.check("loss 100x the pre-milestone level (or non-finite) after it", bool(blown))


# -- tuba: RMSprop at an Adagrad recipe's rate kills the ReLUs -----------------------------------


def _valve_takes(gen, batch, seed):
    """16 readings min-max scaled to [0, 1] (a squashed prototype per valve combination)."""
    kinds = _kinds(gen, batch, 16, 8, seed=seed, noise=0.6)
    while True:
        x, y = next(kinds)
        yield torch.sigmoid(x), y


@scenario(
    family="tuba_valve_combination_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1", "fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) naming which of 8 valve combinations a tuba player used "
    "from 16 pitch, partial and lip-buzz readings min-max scaled to [0, 1], cross-entropy. "
    "The optimizer was switched from Adagrad to RMSprop and the Adagrad recipe's rate (5e-2) "
    "kept: RMSprop has no bias correction, so its first steps divide by a tiny running mean "
    "of squares and move each weight by about ten times the rate; with all-positive inputs "
    "the first steps push most of fc1's units (and many of fc2's) below zero for every "
    "input, and they never fire again. About 90% of fc1 is dead at the end, and the loss "
    "stalls above 1 where the same net with RMSprop at 2e-3 reaches about 0.05; finite.",
)
def h190_tuba_rmsprop_adagrad_rate(ctx: Context) -> None:
    gen = seeded(19004)
    model = Stack(16, hidden=64, out=8)
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-2)
    probe_x, _ = next(_valve_takes(torch.Generator().manual_seed(9), 512, seed=4))
    dead1, dead2 = [], []

    def fractions():
        with torch.no_grad():
            h1 = model.fc1(probe_x)
            return dead_fraction(h1), dead_fraction(model.fc2(model.act1(h1)))

    def after(step):
        a, b = fractions()
        dead1.append(a)
        dead2.append(b)

    start1, _ = fractions()
    _train(
        ctx,
        model,
        opt,
        _valve_takes(gen, 64, seed=4),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("fc1 had under 20% dead units at init", start1 < 0.2)
    ctx.check("over 60% of fc1's units dead by step 10", dead1[10] > 0.6)
    ctx.check("over 80% of fc1's units dead at the end", _mean(dead1[-10:]) > 0.8)
    ctx.check("over 40% of fc2's units dead at the end", _mean(dead2[-10:]) > 0.4)
    ctx.check("loss above 0.8 over the last 20 steps", _mean(ctx.losses[-20:]) > 0.8)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- graupel: a logit scale stored in linear units and exponentiated -----------------------------


class CosineHead(nn.Module):
    """Cosine classifier: normalised features against normalised class vectors, times
    exp(logit_scale) (CLIP's log-parameterised scale, a fixed buffer here)."""

    def __init__(self, dim, classes, logit_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return cos * self.logit_scale.exp()


class GraupelNet(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=5, logit_scale=2.659):  # log(1 / 0.07)
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, logit_scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="graupel_pellet_habit_cosine_classifier",
    optimizer="SGD(momentum)",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (nn.GELU modules) with a cosine-classifier head naming which of 5 habits a "
    "graupel pellet has (conical, hexagonal, lump, rimed needle, rimed plate) from 12 "
    "disdrometer fall-speed, size and shape readings, SGD momentum 0.9 at 1e-2, "
    "cross-entropy. The head multiplies the cosines by logit_scale.exp() (CLIP's log "
    "parameterisation), but the config stores the scale in linear units, 1/0.07 = 14.3, so the "
    "scale applied is e^14.3, about 1.6e6: a cosine gap of 1e-5 is already a logit gap of 16, "
    "and the float32 softmax gives most rows exactly 1.0 on one class and exactly 0 on the "
    "rest from the first step to the last (the correct class for about a quarter of them, a "
    "wrong one for the rest); a misclassified row costs a loss in the hundreds of thousands "
    "and the net stays near chance; finite.",
)
def h190_graupel_logit_scale_linear(ctx: Context) -> None:
    gen = seeded(19005)
    model = GraupelNet(logit_scale=1 / 0.07)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    frac, sat = [], []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))
        sat.append(float((torch.softmax(out.detach(), -1).max(-1).values == 1.0).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=6, noise=0.7),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    with torch.no_grad():
        x, y = next(_kinds(torch.Generator().manual_seed(8), 512, 12, 5, seed=6, noise=0.7))
        logits = model(x)
        top = float((torch.softmax(logits, -1).max(-1).values == 1.0).float().mean())
        wrong = logits.argmax(-1) != y
        wrong_loss = float(F.cross_entropy(logits[wrong], y[wrong])) if wrong.any() else 0.0
        acc = float((~wrong).float().mean())
    ctx.check("held-out accuracy under 40% at the end (5 classes)", acc < 0.4)
    ctx.check("95% of rows' top probability exactly 1.0 over the run", _mean(sat) > 0.95)
    ctx.check("still 95% over the last 20 steps", _mean(sat[-20:]) > 0.95)
    ctx.check("15% of rows' target probability exactly 1.0 over the run", _mean(frac) > 0.15)
    ctx.check("80% of held-out rows' top probability exactly 1.0 at the end", top > 0.8)
    ctx.check("a misclassified held-out row costs above 100 nats", wrong_loss > 100)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- ice storm: an accretion integrator stepped with dt in hours for a field fitted in days --------


class AccretionField(nn.Module):
    """dz/dt = fc2(tanh(fc1(z))): the rate of change of the glaze state."""

    def __init__(self, dim=32, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.xavier_normal_(self.fc1.weight)
        nn.init.xavier_normal_(self.fc2.weight)

    def forward(self, z):
        return self.fc2(self.act(self.fc1(z)))


class GlazeIntegrator(nn.Module):
    """Encodes the storm's starting readings, takes ``steps`` explicit Euler steps of the learned
    field (one per half hour of the storm), reads the glaze thickness off the last state."""

    def __init__(self, d_in=10, dim=32, steps=48, dt=1 / 48):
        super().__init__()
        self.encoder = nn.Linear(d_in, dim)
        self.field = AccretionField(dim)
        self.head = nn.Linear(dim, 1)
        self.steps = steps
        self.dt = dt
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        z = self.encoder(x)
        self.states = []
        for _ in range(self.steps):
            if z.requires_grad:
                z.retain_grad()
            self.states.append(z)
            z = z + self.dt * self.field(z)
        if z.requires_grad:
            z.retain_grad()
        self.states.append(z)
        return self.head(z).squeeze(-1)


@scenario(
    family="ice_storm_glaze_accretion_euler_integrator",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("field", "field.fc1", "field.fc2"),
    diverges="auto",
    heldout=True,
    note="A learned-ODE integrator forecasting the glaze thickness an ice storm leaves on power "
    "lines: an encoder of 10 standardised temperature, rain-rate and wind readings, a tanh "
    "field dz/dt (field.fc1, field.fc2) stepped 48 times with explicit Euler, one step per "
    "half hour, and a head; SGD Nesterov 0.9 at 1e-3, Huber. The field is meant to be in "
    "units of the storm's length (dt = 1/48), but the training config gives dt in half-hours "
    "(1.0): each Euler step multiplies the backward signal by I + J, and the gradient "
    "reaching the start of the unroll is about a thousand times the one at its end. The "
    "first updates are far too large for the encoder and the field, the loss climbs by orders "
    "of magnitude and the run blows up.",
)
def h190_ice_storm_euler_dt_units(ctx: Context) -> None:
    gen = seeded(19006)
    model = GlazeIntegrator(dt=1.0)
    twin = GlazeIntegrator(dt=1 / 48)
    twin.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    # at init, on a held-out batch: the gradient along the unroll, and the twin's gradient
    x0, y0 = next(_readings(torch.Generator().manual_seed(2), 64, 10, seed=7))
    F.huber_loss(model(x0), y0).backward()
    growth = float(model.states[0].grad.norm() / model.states[-1].grad.norm())
    init_gn = grad_norm(model)
    model.zero_grad(set_to_none=True)
    F.huber_loss(twin(x0), y0).backward()
    twin_gn = grad_norm(twin)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=7, noise=0.05),
        120,
        F.huber_loss,
    )
    ls = ctx.losses
    ctx.check("gradient at the unroll's start 300x the one at its end (init)", growth > 300)
    ctx.check("gradient norm 100x the dt = 1/48 twin's (init)", init_gn > 100 * twin_gn)
    ctx.check(
        "training gradients 100x the twin's at init (median, first 20 steps)",
        _median(ctx.grad_norms[:20]) > 100 * twin_gn,
    )
    blown = [v for v in ls if not math.isfinite(v) or v > 100 * ls[0]]
    ctx.check("loss 100x its start (or non-finite)", bool(blown))


# -- netball: the head replaced after the optimizer was built -------------------------------------


class CentrePassNet(nn.Module):
    def __init__(self, d_in=18, hidden=64, classes=7):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.trunk(x))


@scenario(
    family="netball_centre_pass_route_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules in an nn.Sequential trunk) naming which of 5 routes a "
    "netball centre pass takes from 18 player-position and timing readings, Adagrad at 5e-2, "
    "cross-entropy with label smoothing 0.1. The script builds the model with the 7-class "
    "head of the positions task it was copied from, builds the optimizer over "
    "model.parameters(), and only then sets model.head = nn.Linear(64, 5) for the routes: "
    "the new head's weight and bias are not in the optimizer and keep their random init for "
    "the whole run, while the trunk alone learns to serve a fixed random head (the loss still "
    "falls, the trunk compensating); finite.",
)
def h190_netball_head_after_optimizer(ctx: Context) -> None:
    gen = seeded(19007)
    model = CentrePassNet(classes=7)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    model.head = nn.Linear(64, 5)
    head0, trunk0 = _snapshot(model.head.parameters()), _snapshot(model.trunk.parameters())
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 18, 5, seed=9, noise=0.8),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
    )
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    ctx.check(
        "head's parameters absent from the optimizer",
        not any(id(p) in in_opt for p in model.head.parameters()),
    )
    ctx.check("head never moved", _moved(list(model.head.parameters()), head0) == 0.0)
    ctx.check("trunk moved", _moved(list(model.trunk.parameters()), trunk0) > 1e-2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- windsurf: a GPS logger's 9999 sentinel in one batch ------------------------------------------

WINDSURF_BAD = 120


@scenario(
    family="windsurf_planing_speed_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=WINDSURF_BAD,
    note="A ReLU MLP (nn.ReLU modules) predicting a windsurfer's planing speed from 12 "
    "standardised wind, sail-size, board-volume and GPS readings, ASGD at 1e-2, MSE, "
    "clip_grad_norm_ at 1.0. In the batch at step 120 one session comes from a GPS watch that "
    "writes 9999 for a lost fix, and the export standardised everything but that sentinel: "
    "one sample's GPS column reads 9999 among z-scores. That batch gives a loss of about 1.6e3 "
    "(the usual is about 0.3) and a gradient norm about 1e5 times the usual; clipping bounds "
    "the step, and the loss is back at its level the next step; finite throughout.",
)
def h190_windsurf_gps_sentinel(ctx: Context) -> None:
    gen = seeded(19008)
    model = Stack(12, hidden=64)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
    peak = []

    def alter(step, x, y):
        if step == WINDSURF_BAD:
            x = x.clone()
            x[17, 5] = 9999.0
        peak.append(float(x.abs().max()))
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=10, noise=0.05),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    at, ls, gn = WINDSURF_BAD, ctx.losses, ctx.grad_norms
    ctx.check("one input 1000x the usual peak at the bad batch", peak[at] > 1000 * _median(peak))
    ctx.check("gradient 100x the preceding median there", gn[at] > 100 * _median(gn[:at]))
    ctx.check("loss 50x the preceding median there", ls[at] > 50 * _median(ls[at - 20 : at]))
    ctx.check(
        "loss back under 2x the pre-onset level by the end",
        _mean(ls[-10:]) < 2 * _mean(ls[at - 10 : at]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- geomagnetic storm: a rolling standard deviation computed from moments --------------------------

GEOMAG_FROZEN = 90


class RollingStd(nn.Module):
    """Windowed standard deviation of each station's trace, as sqrt(E[x^2] - E[x]^2)."""

    def __init__(self, window=8):
        super().__init__()
        self.window = window

    def forward(self, x):
        w = x.unfold(-1, self.window, 1)
        return torch.sqrt((w * w).mean(-1) - w.mean(-1) ** 2)


class KpNet(nn.Module):
    """Magnetometer traces (batch, 32 samples) -> roughness features and the raw trace -> a SiLU
    MLP -> mean and log-variance of the next Kp index."""

    def __init__(self, length=32, window=8, hidden=64):
        super().__init__()
        self.roughness = RollingStd(window)
        self.fc1 = nn.Linear(length + length - window + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        h = torch.cat([x, self.roughness(x)], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h)))))


def _gaussian_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _magnetograms(gen, batch, length=32):
    """Horizontal-field traces (hundreds of nT): a slow drift plus storm-time ripple whose size
    sets the Kp to predict (scaled to about unit range)."""
    t = torch.linspace(0, 1, length)
    while True:
        level = 0.5 * torch.randn(batch, 1, generator=gen)
        storm = torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        ripple = storm * torch.sin(25 * t + phase) + 0.1 * torch.randn(batch, length, generator=gen)
        x = level + 0.3 * t + ripple
        yield x, 3 * storm.squeeze(1) + 0.2 * torch.randn(batch, generator=gen)


@scenario(
    family="geomagnetic_storm_kp_rolling_std_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("roughness",),
    diverges=GEOMAG_FROZEN,
    heldout=True,
    onset=GEOMAG_FROZEN,
    note="A SiLU MLP (nn.SiLU modules) forecasting the next Kp index of a geomagnetic storm, "
    "as a Gaussian (mean and log-variance, Gaussian NLL), from 32-sample magnetometer traces "
    "and a hand-written `roughness` module: each trace's rolling standard deviation over 8 "
    "samples, computed as sqrt(E[x^2] - E[x]^2). RAdam at 1e-3. At step 90 the batch holds a "
    "station whose magnetometer froze and repeated its last value, 0.0378 (hundreds of nT); "
    "for a constant window float32 rounding makes E[x^2] - E[x]^2 slightly negative, the "
    "square root returns NaN, and the loss is NaN at step 90.",
)
def h190_geomagnetic_frozen_station(ctx: Context) -> None:
    gen = seeded(19009)
    model = KpNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    bad = {}

    def alter(step, x, y):
        if step == GEOMAG_FROZEN:
            x = x.clone()
            x[5] = 0.0378
        return x, y

    def watch(step, out, x, y):
        with torch.no_grad():
            r = model.roughness(x)
        bad[step] = bool(torch.isnan(r).any())

    _train(
        ctx,
        model,
        opt,
        _magnetograms(gen, 64),
        200,
        _gaussian_nll,
        alter=alter,
        watch=watch,
    )
    at, ls = GEOMAG_FROZEN, ctx.losses
    ctx.check("loss finite before step 90", _finite(ls[:at]))
    ctx.check("loss fell before step 90", _fell(ls[:at]))
    ctx.check("roughness output has no NaN before step 90", not any(bad[s] for s in range(at)))
    ctx.check("roughness output NaN at step 90", bad.get(at, False))
    ctx.check("loss NaN at step 90", len(ls) > at and math.isnan(ls[at]))


# -- chocolate tempering: a discount computed as 1 + rate ---------------------------------------


def _tempering_transitions(gen, batch, states=512, d_in=12, seed=11):
    """(state, (cost, next state)) from a fixed pool of tempering-machine states (bowl, seed
    and cooling-tunnel temperatures, viscosity, ...) and a fixed transition between them."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(states, d_in, generator=g)
    nxt = torch.randperm(states, generator=g)
    w = torch.randn(d_in, generator=g)
    cost = torch.sigmoid(pool @ w / math.sqrt(d_in))
    while True:
        i = torch.randint(0, states, (batch,), generator=gen)
        yield pool[i], torch.cat([cost[i, None], pool[nxt[i]]], 1)


def _tempering_run(ctx, model, gamma, steps=300, sync=5):
    gen = seeded(19010)
    target = Stack(12, hidden=64)
    target.load_state_dict(model.state_dict())
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    values = []

    def td_loss(out, y):
        with torch.no_grad():
            boot = y[:, 0] + gamma * target(y[:, 1:])
        return F.huber_loss(out, boot)

    def watch(step, out, x, y):
        values.append(float(out.detach().mean()))

    def after(step):
        if step % sync == 0:
            target.load_state_dict(model.state_dict())

    _train(
        ctx,
        model,
        opt,
        _tempering_transitions(gen, 64),
        steps,
        td_loss,
        watch=watch,
        after=after,
        probe=False,
    )
    return values


@scenario(
    family="chocolate_tempering_cost_to_go_td_mlp",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) learning the discounted cost-to-go of a chocolate "
    "tempering machine's states (bowl, seed and cooling-tunnel temperatures, viscosity, 12 "
    "readings) by temporal-difference learning: target = cost + gamma * V_target(next state), "
    "the target net synced every 5 steps, Adamax at 2e-3, Huber. The config gives the "
    "discount as a per-step decay rate (0.05) and the code computes gamma = 1 + rate where "
    "it should be 1 - rate: with gamma 1.05 every bootstrapped target sits above the value "
    "it was built from, the targets drift upward sync after sync, and the TD loss climbs "
    "slowly and steadily for the rest of the run (with gamma 0.95 the same run settles); no "
    "layer misbehaves, finite.",
)
def h190_chocolate_discount_sign(ctx: Context) -> None:
    model = Stack(12, hidden=64)
    twin = Stack(12, hidden=64)
    twin.load_state_dict(model.state_dict())
    values = _tempering_run(ctx, model, gamma=1.05)
    quiet = _Quiet("default", ctx.run_dir)
    _tempering_run(quiet, twin, gamma=0.95)
    ls, tw = ctx.losses, quiet.losses
    fifth = len(ls) // 5
    stages = [_mean(ls[i * fifth : (i + 1) * fifth]) for i in range(5)]
    ctx.check(
        "loss over the last 20 steps 10x its minimum 20-step mean",
        _mean(ls[-20:]) > 10 * min(_mean(ls[i : i + 20]) for i in range(len(ls) - 20)),
    )
    ctx.check(
        "each of the last three fifths above the one before", stages[2] < stages[3] < stages[4]
    )
    ctx.check("mean value grew 10x from step 30", abs(values[-1]) > 10 * abs(values[30]))
    ctx.check("the gamma 0.95 twin ends 5x lower", _mean(tw[-20:]) * 5 < _mean(ls[-20:]))
    ctx.check("loss finite throughout", _finite(ls))


# -- controls ------------------------------------------------------------------------------------


class SwingBlock(nn.Module):
    """Pre-LN residual MLP block: x + fc2(GELU(fc1(LayerNorm(x))))."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class SwingPlaneNet(nn.Module):
    def __init__(self, d_in=20, dim=64, blocks=3, classes=9):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(SwingBlock(dim) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


@scenario(
    family="golf_swing_plane_gelu_layernorm_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A pre-LN residual MLP (nn.GELU modules, nn.LayerNorm in every block and before the "
    "head) naming which of 9 ball-flight shapes (straight, draw, fade, hook, slice, push, "
    "pull, ...) a golf swing produces from 20 launch-monitor readings, at a large batch of "
    "1024: AdamW at 3e-3 with a weight-decay-0.05 group for matrices and a weight-decay-0 "
    "group for biases and norms, a linear warm-up from 1% over 30 steps (LinearLR) then "
    "cosine decay (SequentialLR), clip_grad_norm_ at 1.0, label smoothing 0.1. A healthy "
    "run: the loss falls and stays finite.",
)
def h190_golf_swing_large_batch_warmup(ctx: Context) -> None:
    gen = seeded(19011)
    model = SwingPlaneNet()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    plain = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": plain, "weight_decay": 0.0}],
        lr=3e-3,
    )
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=30)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=120)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[30])
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 1024, 20, 9, seed=12, noise=0.8),
        150,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    with torch.no_grad():
        x, y = next(_kinds(torch.Generator().manual_seed(13), 1024, 20, 9, seed=12, noise=0.8))
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("loss fell under half its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("held-out accuracy above 70% (9 classes)", acc > 0.7)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="sawmill_kerf_width_fp16_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) predicting the kerf width a bandsaw blade cuts from 14 "
    "standardised feed-rate, tooth-set, blade-tension and timber-density readings, under fp16 "
    "autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, "
    "clip_grad_norm_ at 1.0 after unscaling, Huber loss, Adadelta at 1.0 and "
    "ReduceLROnPlateau (factor 0.5, patience 15) on the training loss; noisy labels. A "
    "healthy run: the loss falls and stays finite.",
)
def h190_sawmill_kerf_fp16_plateau(ctx: Context) -> None:
    gen = seeded(19012)
    model = Stack(14, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 14, seed=14, noise=0.3),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell under 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("loss scale finite and positive", all(0 < s < math.inf for s in ctx.scales))


class CatchTagger(nn.Module):
    """1-D conv net tagging each frame of a trapeze act with (hands released, catch made)."""

    def __init__(self, channels=6, width=32, tags=2):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.norm1 = nn.BatchNorm1d(width)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.norm2 = nn.BatchNorm1d(width)
        self.act2 = nn.ReLU()
        self.head = nn.Conv1d(width, tags, 1)

    def forward(self, x):
        h = self.act1(self.norm1(self.conv1(x)))
        h = self.act2(self.norm2(self.conv2(h)))
        return self.head(h)


def _trapeze_takes(gen, batch, length=48):
    """Six accelerometer and rope-tension channels; tags: hands off the bar (a stretch of
    frames after a release spike) and a catch (a tension spike)."""
    while True:
        x = 0.5 * torch.randn(batch, 6, length, generator=gen)
        release = torch.randint(8, 24, (batch,), generator=gen)
        catch = release + torch.randint(6, 18, (batch,), generator=gen)
        t = torch.arange(length)
        off = (t[None] >= release[:, None]) & (t[None] < catch[:, None])
        at_catch = (t[None] - catch[:, None]).abs() <= 1
        x[:, 0] += 2.0 * (t[None] == release[:, None]).float()
        x[:, 1] += 2.0 * (t[None] == catch[:, None]).float()
        x[:, 2] += 0.8 * off.float()
        yield x, torch.stack([off, at_catch], 1).float()


@scenario(
    family="trapeze_catch_timing_conv1d_tagger",
    optimizer="SGD(nesterov)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A 1-D conv net (BatchNorm1d, nn.ReLU modules, a 1x1 conv head) tagging every frame "
    "of a flying-trapeze act with 'hands off the bar' and 'catch made' from six "
    "accelerometer and rope-tension channels, BCE with logits per frame and tag, SGD "
    "Nesterov 0.9 with weight decay 1e-4 under OneCycleLR (max_lr 0.1), clip_grad_norm_ at "
    "2.0. A healthy run: the loss falls and stays finite.",
)
def h190_trapeze_catch_onecycle(ctx: Context) -> None:
    gen = seeded(19013)
    model = CatchTagger()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    _train(
        ctx,
        model,
        opt,
        _trapeze_takes(gen, 32),
        200,
        F.binary_cross_entropy_with_logits,
        clip=2.0,
        sched=sched,
    )
    ctx.check("loss fell under half its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))
