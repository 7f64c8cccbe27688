"""Held-out set 370 (``h370_``): hand-written models of trades, crafts, sports, instruments and
physical systems not covered before: a hammock-sway damper controller trained through a
hand-written mass-spring simulator whose time step is read as 10 ms / 100 (explicit Euler past its
stability limit, gradients grow through time), a tiler's adhesive-cure Gaussian NLL net whose noise
variance is stored raw with log(var) in forward (log of a negative, NaN), a ropemaker's lay-twist
SiLU regressor resumed without Adam's state (a one-off loss spike), a gangway tide-tilt GELU
regressor whose fp32 switch step keeps the static loss scale 65536 (Adam's second moment
poisoned), a miller's millstone-dress SiLU Huber regressor whose epoch-end step sums the batch
(one gradient burst), a jew's-harp twang Conv1d classifier fed one shard in raw ADC counts (one
corrupted batch), a wellie-wanging throw tanh regressor with a sign-flipped hand-written weight
decay (a slow climb), a triangle-beater two-group classifier whose fc1 rate is typed 1e-9 (frozen),
a conker-swing tanh regressor whose linear-scaling rule is applied twice (past 2/sharpness), a
plasterer's trowel-finish classifier with temperature typed 0.005 (softmax collapse), and three
controls (a footbridge tuned-mass-damper simulator with a small time step and clipping, an ox-cart
axle-squeal Conv1d classifier under OneCycleLR, a barge-horse towline Huber regressor under fp16
autocast with a GradScaler).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


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
    watch=None,
    after=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, out, y, loss)``
    returns the loss actually backpropagated (before the division by the accumulation count),
    ``inspect(step)`` sees the gradients before clipping, ``after(step)`` runs after the optimizer
    step, ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``. Stops after a
    non-finite loss (once ``ctx.step`` has seen it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
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
            total = backprop(step, out, y, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


# -- data ---------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=48, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


# -- models -------------------------------------------------------------------------------------------


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

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


class TraceNet(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> mean over time -> head."""

    def __init__(self, channels, classes, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


# -- differentiable mass-spring simulators ------------------------------------------------------------


class SwayPlant(nn.Module):
    """A hammock as a mass-spring-damper (1 kg, 0.6 Hz sway) with a learnable passive damper,
    stepped by a hand-written integrator."""

    def __init__(self, dt, semi_implicit=False):
        super().__init__()
        self.dt = dt
        self.semi_implicit = semi_implicit
        self.k = (2 * math.pi * 0.6) ** 2
        self.raw_c = nn.Parameter(torch.tensor(-3.0))  # softplus: about 0.05 N s / m

    def forward(self, x, v, u):
        c = F.softplus(self.raw_c)
        a = -self.k * x - c * v + u
        if self.semi_implicit:
            v = v + self.dt * a
            return x + self.dt * v, v
        return x + self.dt * v, v + self.dt * a  # explicit (forward) Euler


class HammockRig(nn.Module):
    """plant (the simulator with its damper) and controller (a tanh MLP on position and velocity
    giving the actuator force), unrolled over ``horizon`` time steps."""

    def __init__(self, dt, horizon, semi_implicit=False, umax=4.0):
        super().__init__()
        self.plant = SwayPlant(dt, semi_implicit)
        self.controller = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
        nn.init.normal_(self.controller[2].weight, std=0.01)
        nn.init.zeros_(self.controller[2].bias)
        self.horizon = horizon
        self.umax = umax

    def forward(self, s0, keep=None):
        x, v = s0[:, 0], s0[:, 1]
        xs, us = [], []
        for t in range(self.horizon):
            s = torch.stack([x, v], 1)
            if keep is not None and t in keep:
                s.retain_grad()
                keep[t] = s
            u = self.umax * torch.tanh(self.controller(s).squeeze(-1) / self.umax)
            x, v = self.plant(s[:, 0], s[:, 1], u)
            xs.append(x)
            us.append(u)
        return torch.stack(xs, 1), torch.stack(us, 1)


def _sway_starts(gen, batch):
    while True:
        x0 = 0.3 * (2 * torch.rand(batch, generator=gen) - 1)
        v0 = 0.5 * torch.randn(batch, generator=gen)
        yield torch.stack([x0, v0], 1)


def _sway_loss(xs, us):
    return xs.pow(2).mean() + 1e-3 * us.pow(2).mean()


HAMMOCK_CLIP = 1.0
HAMMOCK_T = 60


@scenario(
    family="hammock_sway_mass_spring_euler_controller",
    optimizer="RAdam",
    cause="exploding_gradients",
    where=("plant", "controller"),
    diverges=None,
    heldout=True,
    note="A learnt controller (controller: tanh MLP on sway position and velocity giving an actuator force) for a hammock, trained through a hand-written differentiable mass-spring-damper simulator (plant: 1 kg, 0.6 Hz sway, learnable passive damper) unrolled over 60 time steps, loss the mean squared sway plus a small force penalty, RAdam at 1e-3, gradient clipping at 1.0, 150 steps. The config gives the time step as 10 (ms) and the loader divides by 100 instead of 1000: dt is 0.1 s where 0.01 s was meant, and the explicit Euler step of the oscillator is past its stability limit (per-step growth about 1.07). A gradient backpropagated from the final position grows over 20x from the last simulated step back to the first (under 5x at dt 0.01 on the same weights) and stays over 10x through the first 50 steps; the median raw gradient norm of the first 50 steps is over 10x the clip threshold. Finite throughout.",
)
def h370_hammock_euler_dt_typo(ctx: Context) -> None:
    gen = seeded(37001)
    dt_ms = 10
    dt = dt_ms / 100  # meant: dt_ms / 1000
    model = HammockRig(dt, HAMMOCK_T)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    starts = _sway_starts(gen, 32)
    probe = next(_sway_starts(torch.Generator().manual_seed(7), 32))
    ratios, raw = {}, []

    def growth(m):
        """|d x_T / d s_0| over |d x_T / d s_(T-1)| on the probe batch: what one backward pass
        through the unrolled simulator multiplies a gradient by."""
        keep = {0: None, m.horizon - 1: None}
        xs, _ = m(probe.clone().requires_grad_(True), keep)
        xs[:, -1].sum().backward()
        first, last = keep[0].grad.norm(), keep[m.horizon - 1].grad.norm()
        m.zero_grad(set_to_none=True)
        return float(first / last.clamp_min(1e-30))

    intended = HammockRig(dt_ms / 1000, HAMMOCK_T)
    intended.load_state_dict(model.state_dict())
    intended_ratio = growth(intended)
    for step in range(150):
        if step % 10 == 0:
            ratios[step] = growth(model)
        xs, us = model(next(starts))
        loss = _sway_loss(xs, us)
        loss.backward()
        raw.append(grad_norm(model))
        ctx.grad_norms.append(raw[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), HAMMOCK_CLIP)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check(
        "a gradient through the simulator grows over 20x from the last step back to the first "
        "at step 0",
        ratios[0] > 20,
    )
    ctx.check(
        "the same growth at the intended dt 0.01 on the same weights is under 5x",
        intended_ratio < 5,
    )
    ctx.check(
        "the growth stays over 10x through the first 50 steps",
        min(ratios[s] for s in range(0, 50, 10)) > 10,
    )
    ctx.check(
        "the raw gradient norm is over 10x the clip threshold (median of the first 50 steps)",
        _median(raw[:50]) > 10 * HAMMOCK_CLIP,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


class DeckWithDamper(nn.Module):
    """A footbridge deck (a mass-spring-damper at 2 Hz) under a pedestrian forcing, with a tuned
    mass damper (damper: learnable log stiffness and log damping of a 5% secondary mass), stepped
    by semi-implicit Euler."""

    def __init__(self, dt, horizon):
        super().__init__()
        self.dt = dt
        self.horizon = horizon
        self.deck = nn.Module()
        self.deck.register_buffer("k", torch.tensor((2 * math.pi * 2.0) ** 2))
        self.deck.register_buffer("c", torch.tensor(0.05))
        self.damper = nn.Module()
        self.damper.mass = 0.05
        self.damper.log_k = nn.Parameter(torch.tensor(math.log(0.05 * (2 * math.pi * 2.6) ** 2)))
        self.damper.log_c = nn.Parameter(torch.tensor(math.log(0.02)))

    def forward(self, freq):
        b = freq.shape[0]
        x = torch.zeros(b)
        v = torch.zeros(b)
        xd = torch.zeros(b)
        vd = torch.zeros(b)
        kd, cd, md = self.damper.log_k.exp(), self.damper.log_c.exp(), self.damper.mass
        xs = []
        for t in range(self.horizon):
            f = torch.sin(2 * math.pi * freq * t * self.dt)
            spring = kd * (xd - x) + cd * (vd - v)
            a = f - self.deck.k * x - self.deck.c * v + spring
            ad = -spring / md
            v = v + self.dt * a
            vd = vd + self.dt * ad
            x = x + self.dt * v
            xd = xd + self.dt * vd
            xs.append(x)
        return torch.stack(xs, 1)


@scenario(
    family="footbridge_tuned_mass_damper_simulator",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written differentiable simulator of a footbridge deck (2 Hz mass-spring-damper) under pedestrian forcing near resonance, with a tuned mass damper whose log stiffness and log damping are learnt (damper), stepped by semi-implicit Euler at a small time step 0.01 s over 150 steps; loss the mean squared deck displacement (scaled), Adam at 3e-2 with cosine decay, gradient clipping at 1.0, 100 steps. A control.",
)
def h370_footbridge_tmd_small_dt(ctx: Context) -> None:
    gen = seeded(37002)
    model = DeckWithDamper(0.01, 150)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)

    def walkers():
        while True:
            yield 1.8 + 0.4 * torch.rand(16, generator=gen), None

    _loop(
        ctx,
        model,
        opt,
        walkers(),
        100,
        lambda xs, y: 1e4 * xs.pow(2).mean(),
        clip=1.0,
        sched=sched,
    )
    ctx.check(
        "the last 10 steps' loss is under 0.75x the first step's",
        _mean(ctx.losses[-10:]) < 0.75 * ctx.losses[0],
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- tiler: noise variance stored raw, log(var) in forward (NaN) ------------------------------------


class RawVarianceNLL(nn.Module):
    """Gaussian negative log-likelihood with one learnt noise variance, ported from a recipe that
    kept log_var; the port stores the variance itself and takes its log with no softplus or
    clamp."""

    def __init__(self, var0=1.0):
        super().__init__()
        self.var = nn.Parameter(torch.tensor(var0))

    def forward(self, mean, y):
        return 0.5 * (torch.log(self.var) + (y - mean).pow(2) / self.var).mean()


class CureNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.trunk = Trunk(d_in, 48, act=nn.SiLU)
        self.nll = RawVarianceNLL()

    def forward(self, x):
        return self.trunk(x)


TILER_DIV = 109


@scenario(
    family="tiler_adhesive_cure_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("nll",),
    diverges=TILER_DIV,
    heldout=True,
    note="A hand-written SiLU MLP (trunk: fc1, act1, fc2, act2, head) predicting a tiler's adhesive cure time from eight readings of bed thickness, humidity and substrate, trained by a hand-written Gaussian negative log-likelihood module (nll) with one learnt noise variance, NAdam at 2e-2, 200 steps planned. The nll module was ported from a recipe that kept log_var; the port stores the variance itself and takes log(var) with no softplus or clamp. The loss falls (below zero, as an NLL may) while the variance shrinks towards the residual noise; NAdam's step overshoots it below zero, log of a negative in nll gives NaN and the loss is first non-finite at step 109.",
)
def h370_tiler_raw_variance_log(ctx: Context) -> None:
    gen = seeded(37003)
    model = CureNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-2)
    seen = {}

    def watch(step, out, x, y):
        seen["var"] = float(model.nll.var.detach())
        seen.setdefault("vars", []).append(seen["var"])

    _loop(ctx, model, opt, _readings(gen, 64, 8, 3701), 200, model.nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(f"the loss is first non-finite at step {TILER_DIV}", bad == TILER_DIV)
    ctx.check("the variance is below zero at the NaN step", bad is not None and seen["var"] < 0)
    ctx.check(
        "the variance was positive until the step before",
        bad is not None and min(seen["vars"][:bad]) > 0,
    )
    ctx.check("the loss fell before the NaN", bad is not None and _fell(ctx.losses[:bad], k=5))


# -- ropemaker: resumed without the optimizer's state (a one-off loss spike) ------------------------

ROPE_ONSET = 150


@scenario(
    family="ropemaker_lay_twist_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the lay twist of a ropewalk's three-strand rope from ten readings, Adam at 1e-2, MSE, 300 steps. The job is preempted and resumed at step 150 from a checkpoint that held model.state_dict() only: Adam restarts with zero moments and a zero step count, its bias-corrected first updates move every weight by about the full rate, and the loss jumps over 3x its median of the 30 steps before on an ordinary batch with an ordinary gradient (under 3x the median), then recovers within the run. Finite throughout.",
    onset=ROPE_ONSET,
)
def h370_ropemaker_resume_without_adam_state(ctx: Context) -> None:
    gen = seeded(37004)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def before(step):
        if step == ROPE_ONSET:
            # the preempted job resumes: the checkpoint held model.state_dict() only, so Adam
            # starts again with zero moments and step count 0
            opt.state.clear()

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3702), 300, F.mse_loss, before=before)
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(ls[ROPE_ONSET - 30 : ROPE_ONSET])
    peak = max(ls[ROPE_ONSET : ROPE_ONSET + 5])
    ctx.check("the loss jumps over 3x its median of the 30 steps before", peak > 3 * pre)
    ctx.check(
        "the gradient at the onset step is ordinary (under 3x the median before)",
        gs[ROPE_ONSET] < 3 * _median(gs[ROPE_ONSET - 30 : ROPE_ONSET]),
    )
    ctx.check(
        "the loss recovers to under 2x the pre-spike median in the last 30 steps",
        _mean(ls[-30:]) < 2 * pre,
    )
    ctx.check("finite throughout", _finite(ls))


# -- gangway: static loss scale left on the fp32 switch step (Adam's second moment) ---------------

GANGWAY_ONSET = 100


@scenario(
    family="gangway_tide_tilt_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the tilt of a harbour gangway from twelve tide and load readings, Adam at 1e-3, MSE, 260 steps. At step 100 the run switches from fp16 to fp32; on the switch step the backward still multiplies the loss by the last static loss scale 65536 while the unscale lived in the GradScaler branch no longer taken. One clean batch's gradient is over 1000x the usual, Adam's second moment fills with it, and 20-100 steps later the median per-weight update is under a tenth of what it was while the gradients are not smaller. Finite throughout.",
    onset=GANGWAY_ONSET,
)
def h370_gangway_static_loss_scale(ctx: Context) -> None:
    gen = seeded(37005)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    upd, grads, prev = {}, {}, {}

    def backprop(step, out, y, loss):
        # the switch from fp16 to fp32 happens on this step: the static loss scale is still
        # multiplied in, the unscale lived in the GradScaler branch that is no longer taken
        return loss * 65536.0 if step == GANGWAY_ONSET else loss

    def inspect(step):
        grads[step] = ctx.grad_norms[-1]
        prev["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        d = torch.cat(
            [
                (p.detach() - w).abs().reshape(-1)
                for p, w in zip(model.parameters(), prev["w"], strict=True)
            ]
        )
        upd[step] = float(d.median())

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 3703),
        260,
        F.mse_loss,
        backprop=backprop,
        inspect=inspect,
        after=after,
    )
    o = GANGWAY_ONSET
    ctx.check(
        "the gradient at the onset is over 1000x the median of the 20 steps before",
        grads[o] > 1000 * _median([grads[s] for s in range(o - 20, o)]),
    )
    ctx.check(
        "the loss at the onset step is ordinary", ctx.losses[o] < 3 * _mean(ctx.losses[o - 20 : o])
    )
    ctx.check(
        "the median update 20-100 steps later is under a tenth of before",
        _median([upd[s] for s in range(o + 20, o + 100)])
        < 0.1 * _median([upd[s] for s in range(o - 40, o)]),
    )
    ctx.check(
        "the gradients 20-100 steps later are not smaller than before",
        _median([grads[s] for s in range(o + 20, o + 100)])
        >= 0.8 * _median([grads[s] for s in range(o - 40, o)]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- miller: epoch-end step sums the batch (one gradient burst) -------------------------------------

MILLER_ONSET = 150
MILLER_CLIP = 5.0


@scenario(
    family="miller_millstone_dress_silu_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the furrow depth a miller dresses into a millstone from nine readings, SGD with momentum 0.9 at 2e-2, Huber loss, batches of 128, gradient clipping at 5.0, 260 steps. The epoch-end step 150 goes through the partial-batch path, which uses reduction='sum' instead of the mean: the clean batch's gradient is over 50x the median of the 20 steps before (128x in the loss), clipped, and the run recovers. Finite throughout.",
    onset=MILLER_ONSET,
)
def h370_miller_epoch_end_sum(ctx: Context) -> None:
    gen = seeded(37006)
    model = Trunk(9, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def backprop(step, out, y, loss):
        if step == MILLER_ONSET:  # epoch end: the partial-batch path uses reduction="sum"
            return F.huber_loss(out, y, reduction="sum")
        return loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 9, 3704),
        260,
        F.huber_loss,
        backprop=backprop,
        clip=MILLER_CLIP,
    )
    o, gs, ls = MILLER_ONSET, ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at the onset is over 50x the median of the 20 steps before",
        gs[o] > 50 * _median(gs[o - 20 : o]),
    )
    ctx.check("the onset batch's loss is ordinary", ls[o] < 2 * _mean(ls[o - 20 : o]))
    ctx.check(
        "the loss recovers in the last 30 steps", _mean(ls[-30:]) < 1.5 * _mean(ls[o - 20 : o])
    )
    ctx.check("finite throughout", _finite(ls))


# -- jew's harp: one shard in raw ADC counts (one corrupted batch) ----------------------------------

HARP_ONSET = 120


@scenario(
    family="jew_harp_twang_relu_conv1d_classifier",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, head) sorting two-channel jew's-harp twang recordings into five tongue-pluck styles, Adagrad at 3e-2, cross-entropy, gradient clipping at 1.0, 240 steps. One recording session's shard was exported as raw 16-bit ADC counts instead of normalised amplitude and arrives at step 120 (inputs about 8000x): the loss and the gradient are over 20x their medians at that step, the update is clipped and the run recovers. Finite throughout.",
    onset=HARP_ONSET,
)
def h370_jew_harp_raw_adc_shard(ctx: Context) -> None:
    gen = seeded(37007)
    model = TraceNet(2, 5)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)

    def alter(step, x, y):
        if step == HARP_ONSET:  # one session's shard was written as raw 16-bit ADC counts
            return x * 32768.0 / 4.0, y
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 3705),
        240,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    o, gs, ls = HARP_ONSET, ctx.grad_norms, ctx.losses
    ctx.check(
        "the loss at the onset is over 20x the median before", ls[o] > 20 * _median(ls[o - 20 : o])
    )
    ctx.check(
        "the gradient at the onset is over 20x the median before",
        gs[o] > 20 * _median(gs[o - 20 : o]),
    )
    ctx.check(
        "the loss recovers in the last 30 steps", _mean(ls[-30:]) < 1.5 * _mean(ls[o - 20 : o])
    )
    ctx.check("finite throughout", _finite(ls))


# -- wellie wanging: weight decay with its sign flipped (a slow climb) -------------------------------


@scenario(
    family="wellie_wanging_throw_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a wellie-wanging throw distance from ten readings of run-up, release angle and boot size, Adamax at 1e-2, MSE, 300 steps, with a hand-written decoupled weight decay 0.8 applied after each step whose sign is flipped (p *= 1 + lr * wd for 1 - lr * wd). The loss falls, then the weights grow over 3x, the tanh units saturate and the loss climbs slowly to over 3x its lowest 20-step mean with no step over 3x the one before. Finite throughout.",
)
def h370_wellie_decay_sign(ctx: Context) -> None:
    gen = seeded(37008)
    model = Trunk(10, 64, act=nn.Tanh)
    lr, wd = 1e-2, 0.8
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    w0 = sum(float(p.detach().norm() ** 2) for p in model.parameters()) ** 0.5

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant: 1 - lr * wd

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3706), 300, F.mse_loss, after=after)
    ls = ctx.losses
    w1 = sum(float(p.detach().norm() ** 2) for p in model.parameters()) ** 0.5
    lows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    ctx.check("the weights grow over 3x", w1 > 3 * w0)
    ctx.check(
        "the last 20 steps' loss is over 3x its lowest 20-step mean",
        _mean(ls[-20:]) > 3 * min(lows),
    )
    ctx.check(
        "no jump: no step's loss is over 3x the step before",
        all(b < 3 * a for a, b in zip(ls[:-1], ls[1:], strict=True)),
    )
    ctx.check("finite throughout", _finite(ls))


# -- triangle beater: fc1's param-group lr typed 1e-9 (frozen) ---------------------------------------


@scenario(
    family="triangle_beater_strike_two_group_relu_classifier",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying an orchestral triangle player's beater strike into six placements from twelve accelerometer readings, RMSprop with two parameter groups, cross-entropy, 200 steps. fc1's group rate is typed 1e-9 for 1e-3: fc1 moves under 1e-5 of its norm over the run while the head moves over 5% and the loss falls through fc2 and the head alone. Finite throughout.",
)
def h370_triangle_group_lr_typo(ctx: Context) -> None:
    gen = seeded(37009)
    model = Trunk(12, 64, out=6)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},  # meant: 1e-3
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=1e-3,
    )
    fc1 = model.fc1.weight.detach().clone()
    head = model.head.weight.detach().clone()
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 3707, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
    )
    ctx.check("fc1 moves under 1e-5 of its norm", _rel_change(fc1, model.fc1.weight) < 1e-5)
    ctx.check("the head moves over 5% of its norm", _rel_change(head, model.head.weight) > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- conker: linear-scaling rule applied twice (past 2/sharpness) -----------------------------------

CONKER_DIV = "auto"


@scenario(
    family="conker_string_swing_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges=CONKER_DIV,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the strike speed of a conker on its string from eight readings, plain SGD with linear warm-up over 30 steps, MSE on batches of 1024. The config already holds the rate scaled to the batch (0.05 x 1024 / 256 = 0.2) and the launcher applies the linear-scaling rule again (0.8): lr x top Hessian eigenvalue (power iteration) is under 2 at the start, passes 2 during warm-up, the loss oscillates, blows up past 100x its start and is non-finite at step 38.",
)
def h370_conker_double_linear_scaling(ctx: Context) -> None:
    gen = seeded(37010)
    model = Trunk(8, 64, act=nn.Tanh)
    batch = 1024
    base = 0.05 * batch / 256  # the config already holds the scaled rate, 0.2
    lr = base * batch / 256  # and the launcher scales it again: 0.8
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    probe = next(_readings(torch.Generator().manual_seed(3), batch, 8, 3708))
    ratio = {}

    def before(step):
        if step % 5 == 0:
            ratio[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _loop(
        ctx, model, opt, _readings(gen, batch, 8, 3708), 200, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    ctx.check("lr x sharpness is under 2 at the start", ratio[0] < 2.0)
    ctx.check("lr x sharpness passes 2", max(ratio.values()) > 2.0)
    ctx.check("the loss blows up past 100x its start", max(ls) > 100 * ls[0] or not _finite(ls))


# -- plasterer: softmax temperature typed 0.005 (softmax collapse) ----------------------------------


class TemperedHead(nn.Module):
    def __init__(self, d_in, classes, tau):
        super().__init__()
        self.trunk = Trunk(d_in, 64, out=classes, act=nn.GELU)
        self.tau = tau

    def forward(self, x):
        return self.trunk(x) / self.tau


@scenario(
    family="plasterer_trowel_finish_gelu_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("trunk.head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (trunk: fc1, act1, fc2, act2, head) grading a plasterer's trowel finish into five classes from ten readings, logits divided by a softmax temperature, AdamW at 1e-3, cross-entropy, 200 steps. The temperature is typed 0.005 for 0.5: over half the rows' float32 target probability is exactly 1.0 over the last 50 steps, against under 5% for the same weights at the intended temperature. Finite throughout.",
)
def h370_plasterer_temperature_typo(ctx: Context) -> None:
    gen = seeded(37011)
    model = TemperedHead(10, 5, tau=0.005)  # meant: 0.5
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    frac = []

    def watch(step, out, x, y):
        p = torch.softmax(out.detach(), -1)
        frac.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, 3709, spread=0.8),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ref = TemperedHead(10, 5, tau=0.5)
    ref.trunk.load_state_dict(model.trunk.state_dict())
    x, y = next(_grades(torch.Generator().manual_seed(5), 256, 10, 5, 3709, spread=0.8))
    with torch.no_grad():
        pr = torch.softmax(ref(x), -1)
    ref_frac = float((pr.gather(1, y[:, None]) == 1.0).float().mean())
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 50 steps",
        _mean(frac[-50:]) > 0.5,
    )
    ctx.check("under 5% at the intended temperature on the same weights", ref_frac < 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls -----------------------------------------------------------------------------------------


@scenario(
    family="oxcart_axle_squeal_relu_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, head) sorting two-channel axle-squeal recordings of ox-carts into five wear grades, SGD with Nesterov momentum 0.9 and weight decay 5e-4 under OneCycleLR (peak 0.1), label smoothing 0.1, gradient clipping at 1.0, 200 steps. A control.",
)
def h370_oxcart_onecycle(ctx: Context) -> None:
    gen = seeded(37012)
    model = TraceNet(2, 5)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 3710),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="barge_horse_towline_pull_silu_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the towline pull of a canal barge horse from ten readings, AdamW with a no-decay bias group, fp16 autocast with a torch.amp.GradScaler, accumulation over 2 micro-batches, ReduceLROnPlateau on a held-out batch, gradient clipping at 1.0, Huber loss, 160 steps. A control.",
)
def h370_barge_horse_fp16(ctx: Context) -> None:
    gen = seeded(37013)
    model = Trunk(10, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    nodecay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": nodecay, "weight_decay": 0.0}], lr=2e-3
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    xv, yv = next(_readings(torch.Generator().manual_seed(9), 256, 10, 3711))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(xv), yv))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 3711),
        160,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
