"""Held-out set 354 (``h354_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a frost-fern window-growth neural cellular automaton whose
port dropped the zero init of the update rule's last conv (gradients grow through its 32
iterations), a bell-metal pour radiant-energy GELU regressor whose (T/100)^4 feature is computed
inside the fp16 autocast region (overflows once hotter melts arrive), a sheepdog-trial outrun
grade classifier whose preemption handler restores a stale checkpoint (one loss spike, recovered),
a hurdy-gurdy buzzing-bridge ReLU regressor whose RAdam lr is typed 0.5 for 5e-3 (ReLUs die),
a seiche barometer-window net whose hand-written window normaliser takes sqrt(mean((x - mean)^2))
with no eps (a flat-lined window gives 0/0), a birch-sap tapping yield SiLU regressor fed one
shard in millilitres (one corrupted batch), a kiteboard landing BCE net whose re-formed process
group sums the loss over 64 ranks for one step (gradient spike), a clavichord tangent-voicing
two-group tanh regressor whose head group's Adadelta lr is typed 1e-6 (frozen), a glacier-mill
depth tanh regressor whose warm-up peaks at an lr typed 4.0 for 0.4 (past 2/sharpness), a
beekeeping comb-cell cosine classifier whose CLIP-style logit scale is stored without its log
(softmax saturates), and three controls (a lichen-colony neural cellular automaton with stochastic
cell updates and per-parameter gradient normalisation, a bones-player rhythm Conv1d classifier
with SGD Nesterov, OneCycleLR and label smoothing, a cider-press pomace-yield Huber regressor with
Adagrad, accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


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


def _dead(h: torch.Tensor) -> float:
    return float((h.detach() <= 0).all(0).float().mean())


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
    forward=None,
):
    """The file's training loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` gives the loss
    actually backpropagated, ``inspect(step)`` sees the gradients before clipping, ``after(step)``
    runs after the optimizer step, ``plateau()`` feeds a ReduceLROnPlateau ``sched``. Stops after
    a non-finite loss once ``ctx.step`` has seen it; returns the number of steps run."""
    forward = forward or (lambda m, x: m(x))
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
                out = forward(model, x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
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


# -- neural cellular automata --------------------------------------------------------------------


class UpdateRule(nn.Module):
    """The cell's update rule: 1x1 convs on the perceived neighbourhood."""

    def __init__(self, channels, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(3 * channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, p):
        return self.fc2(F.relu(self.fc1(p)))


class CellularAutomaton(nn.Module):
    """A hand-written neural cellular automaton: each cell perceives itself and its Sobel
    gradients (fixed depthwise conv), the rule proposes an update, the state adds it, ``iters``
    times on a 16x16 grid. ``fire_rate`` < 1 updates a random subset of cells each iteration."""

    def __init__(self, channels=8, hidden=48, iters=32, fire_rate=1.0, zero_init=True):
        super().__init__()
        self.channels = channels
        self.iters = iters
        self.fire_rate = fire_rate
        sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        ident = torch.zeros(3, 3)
        ident[1, 1] = 1.0
        kernels = torch.stack([ident, sx, sx.T])
        self.register_buffer("kernel", kernels.repeat(channels, 1, 1)[:, None])
        self.rule = UpdateRule(channels, hidden)
        if zero_init:
            nn.init.zeros_(self.rule.fc2.weight)
        self.states: list[torch.Tensor] = []

    def perceive(self, s):
        return F.conv2d(s, self.kernel, padding=1, groups=self.channels)

    def forward(self, seed):
        s = seed
        self.states = []
        for _ in range(self.iters):
            if s.requires_grad:
                s.retain_grad()
            self.states.append(s)
            ds = self.rule(self.perceive(s))
            if self.fire_rate < 1.0:
                mask = (torch.rand(s.shape[0], 1, *s.shape[2:]) < self.fire_rate).float()
                ds = ds * mask
            s = s + ds
        return s[:, :4]


def _patterns(gen, batch, seed, channels=8, size=16):
    """A seed grid (one live cell plus a faint random tint) and a generated RGBA target: a
    rotated six-armed frond pattern around the centre."""
    g = torch.Generator().manual_seed(seed)
    phase = float(torch.rand(1, generator=g)) * math.pi
    r = torch.arange(size).float() - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    rad = torch.sqrt(xx**2 + yy**2)
    ang = torch.atan2(yy, xx)
    while True:
        k = torch.randint(0, 4, (batch,), generator=gen).float()
        arms = torch.cos(6 * (ang[None] + phase + k[:, None, None] * math.pi / 12))
        alpha = ((arms > 0.3) & (rad[None] < 6.5)).float()
        tgt = torch.stack([alpha * 0.9, alpha * 0.95, alpha, alpha], 1)
        s = 0.02 * torch.randn(batch, channels, size, size, generator=gen)
        s[:, 3:, size // 2, size // 2] = 1.0
        yield s, tgt


FERN_STEPS = 120


@scenario(
    family="frost_fern_window_growth_nca",
    optimizer="Adam",
    cause="exploding_gradients",
    where=("rule", "rule.fc2", "rule.fc1"),
    diverges=None,
    heldout=True,
    note="A hand-written neural cellular automaton (a fixed Sobel perception conv, then rule: fc1, a 1x1 conv to 48 channels, ReLU, and fc2, a 1x1 conv back to the 8 state channels; the state adds the proposed update) applied 32 times to a generated 16x16 grid from a one-cell seed, learning a six-armed frost-fern pattern on a window pane, MSE on the RGBA channels, Adam at 2e-3, clipping at 1.0, 120 steps. Porting the reference NCA, the line that zero-initialises rule.fc2 was dropped and the rule has no stochastic update mask, so the update starts at PyTorch's default init and every iteration multiplies the state by I + J_rule, above 1: the state grows through the iterations the first loss is in the thousands, the gradient reaching the second iteration's state is over 100x the gradient at the last one over the first steps and the gradient norm before clipping is over 100x its later median; clipping and Adam pull the rule back down over the first tens of steps and the loss then falls to an ordinary level.",
)
def h354_frost_fern_nca_zero_init_dropped(ctx: Context) -> None:
    gen = seeded(35401)
    model = CellularAutomaton(zero_init=False)  # the port dropped nn.init.zeros_(rule.fc2.weight)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ratios: list[float] = []

    def inspect(step):
        first, last = model.states[1].grad, model.states[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(
        ctx,
        model,
        opt,
        _patterns(gen, 8, 3541),
        FERN_STEPS,
        F.mse_loss,
        clip=1.0,
        inspect=inspect,
    )
    ctx.check(
        "the gradient at the second iteration's state is over 100x that at the last iteration's "
        "over the first 5 steps",
        _mean(ratios[:5]) > 100.0,
    )
    ctx.check(
        "the gradient norm before clipping over the first 5 steps is over 100x its median over "
        "the last 50",
        _mean(ctx.grad_norms[:5]) > 100.0 * _median(ctx.grad_norms[-50:]),
    )
    ctx.check(
        "the first loss is over 1000x the last 20 steps' (the grown state, not the pattern)",
        ctx.losses[0] > 1000.0 * _mean(ctx.losses[-20:]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="lichen_colony_stochastic_nca",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written neural cellular automaton (Sobel perception, rule.fc1 and rule.fc2 as 1x1 convs, rule.fc2 zero-initialised as in the reference) grown 32 iterations on a generated 16x16 grid into a six-armed lichen-colony pattern, each cell updated with probability 0.5 per iteration (stochastic cell updates), each parameter's gradient normalised to unit norm before the step as the reference NCA does, Adam at 2e-3 with MultiStepLR (x0.3 at step 100), MSE, 150 steps. A control: the loss falls and stays finite.",
)
def h354_lichen_colony_nca_stochastic_updates(ctx: Context) -> None:
    gen = seeded(35402)
    model = CellularAutomaton(fire_rate=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[100], gamma=0.3)

    def inspect(step):
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(p.grad.norm() + 1e-8)

    _loop(ctx, model, opt, _patterns(gen, 8, 3542), 150, F.mse_loss, sched=sched, inspect=inspect)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell to under 80% of its start", _fell(ctx.losses, ratio=0.8))


# -- bell-metal pour: the radiant-energy feature is computed under fp16 autocast -----------------

BELL_ONSET = 100


class RadiantFeature(nn.Module):
    """A pyrometer calibration (a linear map, identity at init) and the radiant-energy feature
    (T / 100)^4, computed in whatever dtype the calibration returns."""

    def __init__(self):
        super().__init__()
        self.calib = nn.Linear(1, 1)
        nn.init.ones_(self.calib.weight)
        nn.init.zeros_(self.calib.bias)

    def forward(self, kelvin):
        t = self.calib(kelvin)
        return (t / 100.0) ** 4 / 1e4


class PourNet(nn.Module):
    def __init__(self, d_in=9, hidden=64):
        super().__init__()
        self.radiant = RadiantFeature()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        energy = self.radiant(x[:, :1])
        h = torch.cat([x[:, 1:], energy], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


def _pours(gen, batch, seed):
    """Pour temperature in kelvin (bronze melts about 1370-1480 K; from ``BELL_ONSET`` the
    foundry also pours cast-iron bells, about 1560-1700 K) plus nine standardised readings;
    the target is the mould's fill quality (standardised)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    step = 0
    while True:
        hot = step >= BELL_ONSET
        lo, hi = (1560.0, 1700.0) if hot else (1370.0, 1480.0)
        kelvin = lo + (hi - lo) * torch.rand(batch, 1, generator=gen)
        x = torch.randn(batch, 9, generator=gen)
        y = torch.tanh(x @ w / 3.0) + 0.5 * ((kelvin[:, 0] / 100.0) ** 4 / 1e4 - 4.0)
        step += 1
        yield torch.cat([kelvin, x], 1), y


@scenario(
    family="bell_metal_pour_radiant_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("radiant", "radiant.calib"),
    diverges="auto",
    heldout=True,
    onset=BELL_ONSET,
    note="A hand-written GELU MLP (radiant: a pyrometer calibration Linear and the radiant-energy feature (T/100)^4, then fc1, act1, fc2, act2, head) predicting a bell mould's fill quality from the pour temperature in kelvin and nine standardised readings, AdamW at 1e-3, MSE, fp16 autocast with a GradScaler, 200 steps. The feature is computed inside the autocast region on the calibration Linear's fp16 output; (T/100)^4 passes 65504 once T passes about 1600 K. Bronze pours (under 1480 K) are fine; from step 100 the foundry also casts iron bells (1560-1700 K): the fp16 feature overflows to inf on the first such batch while the same batch in fp32 is finite, the output and the loss are inf, and the run stops there.",
)
def h354_bell_metal_radiant_feature_fp16_overflow(ctx: Context) -> None:
    gen = seeded(35403)
    model = PourNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    overflow: dict[str, bool] = {}

    def watch(step, out, x, y):
        if step >= BELL_ONSET and "fp16" not in overflow:
            with torch.no_grad():
                with torch.autocast("cpu", dtype=torch.float16):
                    e16 = model.radiant(x[:, :1])
                e32 = model.radiant(x[:, :1])
                overflow["fp16"] = bool(torch.isinf(e16).any())
                overflow["fp32"] = bool(torch.isfinite(e32).all())

    _loop(
        ctx,
        model,
        opt,
        _pours(gen, 64, 3543),
        200,
        F.mse_loss,
        scaler=scaler,
        amp=True,
        watch=watch,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("finite before the iron pours", _finite(ctx.losses[:BELL_ONSET]))
    ctx.check("the loss fell before the iron pours", _fell(ctx.losses[:BELL_ONSET]))
    ctx.check("the loss is inf at the first iron pour", bad == BELL_ONSET)
    ctx.check("the fp16 feature is inf on that batch", overflow.get("fp16", False))
    ctx.check("the same batch in fp32 is finite", overflow.get("fp32", False))


# -- sheepdog trial: the preemption handler restores a stale checkpoint --------------------------

DOG_ONSET = 150


@scenario(
    family="sheepdog_trial_outrun_stale_checkpoint_classifier",
    optimizer="SGD momentum",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=DOG_ONSET,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) grading a sheepdog trial's outrun (six grades) from 16 standardised handler and course readings, SGD with momentum 0.9 at 0.02, cross-entropy, 300 steps. The checkpoint callback saves on step == save_every (15) instead of step % save_every == 0, so the only checkpoint is from step 15. At step 150 the job is preempted and the handler restores model and optimizer state from that stale checkpoint: the loss jumps back to its step-15 level (over 3x the steps before), with nothing wrong in the data, learning rate, gradients per unit of loss or numerics, and the run trains back down and recovers by the end.",
)
def h354_sheepdog_outrun_stale_checkpoint_restore(ctx: Context) -> None:
    gen = seeded(35404)
    model = Trunk(16, 64, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    save_every = 15
    saved: dict[str, object] = {}

    def after(step):
        if step == save_every:  # meant: step % save_every == 0
            saved["model"] = {k: v.clone() for k, v in model.state_dict().items()}
            saved["opt"] = {
                "state": {k: {n: t.clone() for n, t in s.items()} for k, s in opt.state.items()},
                "param_groups": [dict(g) for g in opt.state_dict()["param_groups"]],
            }

    def before(step):
        if step == DOG_ONSET:  # preempted: restore the latest checkpoint
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 3544, spread=1.6),
        300,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
    )
    ls = ctx.losses
    pre = _mean(ls[DOG_ONSET - 20 : DOG_ONSET])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss at the restore is over 3x the 20 steps before", ls[DOG_ONSET] > 3.0 * pre)
    ctx.check(
        "the last 20 steps' loss is under 1.3x the pre-restore level", _mean(ls[-20:]) < 1.3 * pre
    )
    ctx.check(
        "the gradient at the restore is under 3x the loss ratio times the median before "
        "(no burst beyond the loss)",
        ctx.grad_norms[DOG_ONSET]
        < 3.0 * (ls[DOG_ONSET] / pre) * _median(ctx.grad_norms[DOG_ONSET - 20 : DOG_ONSET]),
    )


# -- hurdy-gurdy buzzing bridge: RAdam's lr typed 0.5 for 5e-3 ------------------------------------


@scenario(
    family="hurdy_gurdy_buzzing_bridge_relu_regressor",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the buzz strength of a hurdy-gurdy's trompette bridge (standardised) from 12 readings of wheel speed, rosin, string tension and coup pressure, RAdam, MSE, 250 steps. The lr was typed 0.5 for 5e-3: RAdam's first steps (before its variance rectification switches on) are plain momentum steps at 0.5, which throw fc2's biases and weights far negative, and over half of act2's units are never positive on a batch for the last 50 steps and those dead by step 150 never come back; the loss stays finite and the surviving units still fit the target.",
)
def h354_hurdy_gurdy_radam_lr_typo_dead_relus(ctx: Context) -> None:
    gen = seeded(35405)
    model = Trunk(12, 64, 1)
    opt = torch.optim.RAdam(model.parameters(), lr=0.5)  # meant 5e-3
    dead: list[float] = []
    masks: list[torch.Tensor] = []

    def watch(step, out, x, y):
        with torch.no_grad():
            h = model.features(x)
        dead.append(_dead(h))
        masks.append((h <= 0).all(0))

    _loop(ctx, model, opt, _readings(gen, 64, 12, 3545), 250, F.mse_loss, watch=watch)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("over half of act2's units dead for the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("under 10% of act2's units dead at the start", dead[0] < 0.1)
    ctx.check(
        "over 40% of act2's units are dead at step 150 and still dead at the last step",
        float((masks[150] & masks[-1]).float().mean()) > 0.4,
    )


# -- seiche barometer: the window normaliser divides by the window's sd with no eps ---------------

SEICHE_ONSET = 90


class WindowNorm(nn.Module):
    """Hand-written per-window standardisation: (x - mean) / sqrt(mean((x - mean)^2)), no eps."""

    def forward(self, x):
        centred = x - x.mean(-1, keepdim=True)
        return centred / (centred * centred).mean(-1, keepdim=True).sqrt()


class SeicheNet(nn.Module):
    def __init__(self, length=32, hidden=64):
        super().__init__()
        self.wnorm = WindowNorm()
        self.fc1 = nn.Linear(length, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.wnorm(x)))))).squeeze(-1)


def _barometer(gen, batch, seed, length=32):
    """Lake-shore barometer windows in hPa (about 1013 plus a seiche oscillation of 0.05-0.5 hPa
    and noise); the target is the seiche's current phase of displacement, sin of the last
    sample's phase. At ``SEICHE_ONSET`` one
    station's sensor has flat-lined: its window repeats one reading."""
    step = 0
    t = torch.arange(length).float()
    while True:
        period = 4.0 + 12.0 * torch.rand(batch, 1, generator=gen)
        amp = 0.05 + 0.45 * torch.rand(batch, 1, generator=gen)
        base = 1013.25 + 8.0 * torch.randn(batch, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        x = base + amp * torch.sin(2 * math.pi * t / period + phase)
        x = x + 0.01 * torch.randn(batch, length, generator=gen)
        if step == SEICHE_ONSET:
            x[5] = x[5, 0]
        step += 1
        yield x, torch.sin(2 * math.pi * t[-1] / period[:, 0] + phase[:, 0])


@scenario(
    family="seiche_barometer_window_norm_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("wnorm",),
    diverges=SEICHE_ONSET,
    heldout=True,
    onset=SEICHE_ONSET,
    note="A hand-written tanh MLP (wnorm: a per-window standardisation written (x - mean) / sqrt(mean((x - mean)^2)) with no eps, then fc1, act1, fc2, act2, head) estimating a lake seiche's current displacement phase (sin of the oscillation's phase at the last sample) from 32-sample barometer windows in hPa (about 1013 hPa with a 0.05-0.5 hPa oscillation), Adamax at 2e-3, MSE, 200 steps. Live windows always have some spread; at step 90 one station's barometer has flat-lined and its window repeats one reading: the centred window and its standard deviation are exactly 0, the division gives 0/0 = NaN in wnorm, and the loss is NaN at step 90, the input itself being finite and in range.",
)
def h354_seiche_window_norm_no_eps(ctx: Context) -> None:
    gen = seeded(35406)
    model = SeicheNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen: dict[str, bool] = {}

    def watch(step, out, x, y):
        if step == SEICHE_ONSET:
            with torch.no_grad():
                seen["input finite"] = bool(torch.isfinite(x).all())
                seen["wnorm non-finite"] = not bool(torch.isfinite(model.wnorm(x)).all())

    _loop(ctx, model, opt, _barometer(gen, 32, 3546), 200, F.mse_loss, watch=watch)
    ctx.check("finite before the flat-lined window", _finite(ctx.losses[:SEICHE_ONSET]))
    ctx.check("the loss fell before it", _fell(ctx.losses[:SEICHE_ONSET]))
    ctx.check("the loss is NaN at the flat-lined window", _first_bad(ctx.losses) == SEICHE_ONSET)
    ctx.check("the input is finite there", seen.get("input finite", False))
    ctx.check("wnorm's output is non-finite there", seen.get("wnorm non-finite", False))


# -- birch sap tapping: one shard in millilitres ----------------------------------------------------

SAP_ONSET = 120


@scenario(
    family="birch_sap_tapping_yield_silu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SAP_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a birch stand's daily sap yield (standardised) from ten standardised readings (night frost, day thaw, trunk girth, tap height), RMSprop at 1e-3, MSE, clipping at 1.0, 250 steps. One forester's shard, read at step 120, logged the previous days' flows in millilitres rather than litres and skipped standardisation: four of its columns are about 1000x: the loss and the gradient at step 120 are over 20x their median, clipping bounds the update, and the run recovers.",
)
def h354_birch_sap_shard_in_millilitres(ctx: Context) -> None:
    gen = seeded(35407)
    model = Trunk(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == SAP_ONSET:
            x = x.clone()
            x[:, :4] = x[:, :4] * 1000.0 + 2000.0
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3547), 250, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(ls[SAP_ONSET - 30 : SAP_ONSET])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss at the shard is over 20x the median before", ls[SAP_ONSET] > 20.0 * pre)
    ctx.check(
        "the gradient at the shard is over 20x the median before",
        gs[SAP_ONSET] > 20.0 * _median(gs[SAP_ONSET - 30 : SAP_ONSET]),
    )
    ctx.check("the last 20 steps' loss is under 2x the level before", _mean(ls[-20:]) < 2.0 * pre)


# -- kiteboard landing: the re-formed process group sums over 64 ranks for one step ---------------

KITE_ONSET = 140


@scenario(
    family="kiteboard_landing_bce_net",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=KITE_ONSET,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting whether a kiteboard jump is landed (BCE with logits) from 14 standardised readings of kite angle, line tension, board speed and wind, SGD Nesterov (momentum 0.9) at 0.05, clipping at 5.0, 260 steps. At step 140 an elastic job re-forms its process group and the first step after it multiplies the local loss by the world size (64, an all-reduce SUM where the mean was meant) on an ordinary, clean batch: the gradient at step 140 is over 50x its median before, with the batch's loss ordinary; clipping bounds the update and the run recovers.",
)
def h354_kiteboard_world_size_loss_multiplier(ctx: Context) -> None:
    gen = seeded(35408)
    model = Trunk(14, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def labels(batches):
        for x, y in batches:
            yield x, (y > 0.0).float()

    def backprop(step, loss):
        return loss * 64.0 if step == KITE_ONSET else loss  # SUM over 64 ranks, not the mean

    _loop(
        ctx,
        model,
        opt,
        labels(_readings(gen, 64, 14, 3548)),
        260,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=5.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(ls[KITE_ONSET - 30 : KITE_ONSET])
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the gradient at the onset is over 50x the median before",
        gs[KITE_ONSET] > 50.0 * _median(gs[KITE_ONSET - 30 : KITE_ONSET]),
    )
    ctx.check("the loss at the onset is under 2x the median before", ls[KITE_ONSET] < 2.0 * pre)
    ctx.check("the last 20 steps' loss is under 1.5x the level before", _mean(ls[-20:]) < 1.5 * pre)


# -- clavichord tangent voicing: the head group's Adadelta lr typed 1e-6 --------------------------


@scenario(
    family="clavichord_tangent_voicing_two_group_tanh_regressor",
    optimizer="Adadelta",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a clavichord tangent's voiced loudness (standardised) from 12 readings of key dip, tangent height and string gauge, Adadelta with two parameter groups, MSE, 200 steps. The head group's lr was typed 1e-6 where 1.0 (Adadelta's usual rate, the trunk's) was meant: the head moves under 1e-4 of its norm over the run while fc1 moves over 2%, and the loss plateaus above where a trainable head takes it.",
)
def h354_clavichord_head_group_lr_typo(ctx: Context) -> None:
    gen = seeded(35409)
    model = Trunk(12, 64, 1, act=nn.Tanh)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adadelta(
        [
            {"params": trunk, "lr": 1.0},
            {"params": model.head.parameters(), "lr": 1e-6},  # meant 1.0
        ]
    )
    head0 = model.head.weight.detach().clone()
    fc10 = model.fc1.weight.detach().clone()
    _loop(ctx, model, opt, _readings(gen, 64, 12, 3549), 200, F.mse_loss)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the head moved under 1e-4 of its norm", _rel_change(head0, model.head.weight) < 1e-4)
    ctx.check("fc1 moved over 2% of its norm", _rel_change(fc10, model.fc1.weight) > 0.02)


# -- glacier mill: the warm-up peak lr typed 4.0 for 0.4 -------------------------------------------


@scenario(
    family="glacier_mill_moulin_depth_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) estimating a glacier mill's (moulin's) plunge-pool depth (standardised) from eight standardised readings of meltwater discharge, ice thickness and surface slope, full-batch plain SGD, MSE, a linear warm-up over 400 steps towards a peak lr typed 4.0 for 0.4, at most 250 steps. As the warm-up passes about 2 / sharpness the lr times the top Hessian eigenvalue (power iteration) goes over 2 and the loss grows geometrically until it blows up.",
)
def h354_glacier_mill_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(35410)
    model = Trunk(8, 64, 1, act=nn.Tanh)
    peak = 4.0  # meant 0.4
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = next(_readings(gen, 256, 8, 3550))
    sharp: list[float] = []

    def full():
        while True:
            yield x, y

    def before(step):
        lr = peak * min(1.0, (step + 1) / 400)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 5 == 0 and (
            not ctx.losses or math.isfinite(ctx.losses[-1]) and ctx.losses[-1] < 1e3
        ):
            sharp.append(lr * _sharpness(model, F.mse_loss, x, y))

    _loop(ctx, model, opt, full(), 250, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("lr x sharpness passes 2", max(sharp) > 2.0)
    ctx.check("lr x sharpness was under 2 at the start", sharp[0] < 2.0)
    ctx.check(
        "the loss blows up (non-finite or over 1000x its lowest)",
        not _finite(ls) or max(ls) > 1000.0 * min(ls),
    )


# -- beekeeping comb cells: the CLIP-style logit scale stored without its log ----------------------


class ScaledCosineHead(nn.Module):
    """Cosine-similarity head with a learned logit scale, stored as a log and exponentiated."""

    def __init__(self, dim, classes, log_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(log_scale)))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.logit_scale.exp() * cos


CLIP_LOG_SCALE = math.log(1 / 0.07)


class CombCellNet(nn.Module):
    def __init__(self, d_in=20, hidden=64, classes=5, log_scale=CLIP_LOG_SCALE):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = ScaledCosineHead(hidden, classes, log_scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="beekeeping_comb_cell_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2) with a CLIP-style cosine head (head: class prototypes and a learned logit scale stored as a log and exponentiated) classifying a comb frame's cells (worker brood, drone brood, honey, pollen, empty; five) from 20 standardised readings, NAdam at 2e-3, cross-entropy, 200 steps. The logit scale was initialised to 1/0.07 instead of log(1/0.07), so the cosine logits are multiplied by exp(14.3), about 1.6 million: the softmax saturates, and over half the rows' target probability is exactly 1.0 in float32 over the last 20 steps while the wrong rows carry enormous losses; the loss stays finite.",
)
def h354_comb_cell_logit_scale_without_log(ctx: Context) -> None:
    gen = seeded(35411)
    model = CombCellNet(log_scale=1 / 0.07)  # meant math.log(1 / 0.07)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    collapsed: list[float] = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 20, 5, 3551, spread=1.4),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the logit scale is over 1e5", float(model.head.logit_scale.detach().exp()) > 1e5)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )


# -- controls ----------------------------------------------------------------------------------------


class RhythmConv(nn.Module):
    def __init__(self, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _rhythms(gen, batch, classes=4, length=48):
    """A bones player's clack-onset envelope: one of four patterns (triplet, reel, jig, hornpipe
    spacings), jittered, with noisy amplitudes."""
    gaps = [3, 4, 6, 8]
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        shift = torch.randint(0, 8, (batch, 1), generator=gen).float()
        g = torch.tensor([gaps[i] for i in y]).float()[:, None]
        x = torch.exp(-(((t[None] - shift) % g) ** 2) / 0.8)
        x = x * (0.6 + 0.8 * torch.rand(batch, length, generator=gen))
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="bones_player_rhythm_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, mean pool, head) naming a bones player's rhythm (four) from a noisy 48-sample clack-onset envelope, SGD Nesterov (momentum 0.9, weight decay 5e-4) under OneCycleLR (peak 0.1), label smoothing 0.1, clipping at 2.0, 200 steps. A control: the loss falls and stays finite.",
)
def h354_bones_rhythm_onecycle_control(ctx: Context) -> None:
    gen = seeded(35412)
    model = RhythmConv()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _rhythms(gen, 64),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=2.0,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell to under 60% of its start", _fell(ctx.losses, ratio=0.6))


@scenario(
    family="cider_press_pomace_yield_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a cider press's juice yield from the pomace (standardised) from ten standardised readings with noisy targets (noise sd 0.3), Adagrad at 0.05 with a no-decay group for biases, gradient accumulation over 2, Huber loss, ReduceLROnPlateau on a held-out batch, 200 steps. A control: the loss falls and stays finite.",
)
def h354_cider_press_adagrad_plateau_control(ctx: Context) -> None:
    gen = seeded(35413)
    model = Trunk(10, 64, 1, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.Adagrad(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.05,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _readings(gen, 64, 10, 3553, noise=0.3)
    xv, yv = next(batches)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(xv), yv))

    _loop(ctx, model, opt, batches, 200, F.huber_loss, sched=sched, plateau=plateau, accumulate=2)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell to under 70% of its start", _fell(ctx.losses, ratio=0.7))
