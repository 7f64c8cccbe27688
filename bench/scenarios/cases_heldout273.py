"""Held-out set 273 (``h273_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a bell-ringing handstroke-gap recurrent net whose leak
time constant was entered in seconds where the code expects samples, a racquetball ceiling-ball
rebound net resumed from a 'best' checkpoint picked by the highest loss, a gem-cutting
facet-style classifier given its teacher's sharpening temperature through a shared config key, a
silage-clamp dry-matter Gaussian NLL net fed one contractor's shard in g/kg, a glaze-ice
accretion net taking the log of a dry hour's 0 mm, a chukka tack-fault tagger whose lr
multiplier dict misspells fc1, a sand-sculpture slump-angle net whose StepLR gamma was typed 10
for 0.1, a goldbeating leaf-thickness ReLU net whose Nesterov lr was typed 0.3 for 0.03, a
show-jumping rail-clearance Huber net whose epoch-tail batch took the sum reduction, a
thatch-life regressor whose MAP log-prior has its sign flipped, and three controls (a
Gaelic-football solo-run bidirectional GRU tagger with Adagrad and ReduceLROnPlateau, an
eventing cross-country fp16 classifier with a GradScaler and OneCycleLR, a watch jewel-bearing
tied autoencoder with warm-up, cosine decay and gradient accumulation).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
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
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step; ``loss_fn(out, y, step)`` returns the loss, or (the loss logged, the objective
    backpropagated); ``amp``: fp16 autocast; stops after logging a
    non-finite loss."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float() if amp else out, y, step)
            objective = loss
            if isinstance(loss, tuple):
                loss, objective = loss
            if watch is not None:
                watch(step, out, x, y)
            total = objective / accumulate
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


def _plain(fn):
    """A loss of (out, y) as the loop's loss of (out, y, step)."""
    return lambda out, y, step: fn(out, y)


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


def _top_eig(model, x, y, iters=12):
    """Largest Hessian eigenvalue of the MSE on (x, y) by power iteration on Hessian-vector
    products."""
    params = list(model.parameters())
    loss = F.mse_loss(model(x), y)
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


# -- bell ringing: the leak time constant entered in seconds -------------------------------------

TAU_SAMPLES = 4.0  # the intended leak time constant, in samples (0.4 s at 10 Hz)
TAU_TYPED = 0.4  # the same constant entered in seconds


class LeakyRopeCell(nn.Module):
    """h_t = leak * h_{t-1} + tanh(ih(x_t) + hh(h_{t-1})), leak = 1 - 1 / tau (tau in samples)."""

    def __init__(self, d_in, hidden, tau):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.hh.weight, gain=0.5)
        self.leak = 1.0 - 1.0 / tau
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hh.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.leak * h + torch.tanh(self.ih(x[:, t]) + self.hh(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return h


class HandstrokeNet(nn.Module):
    def __init__(self, tau, d_in=3, hidden=32):
        super().__init__()
        self.cell = LeakyRopeCell(d_in, hidden, tau)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.cell(x)).squeeze(-1)


def _rounds(gen, batch, length=16):
    """A ringer's last 16 blows (standardised rope-sight lag, sally height, stroke force) and
    the next handstroke gap, standardised."""
    while True:
        drift = 0.5 * torch.randn(batch, 1, 3, generator=gen)
        t = torch.arange(length).float()[None, :, None]
        x = (
            drift
            + 0.5 * torch.sin(0.7 * t + 3 * drift)
            + 0.3 * torch.randn(batch, length, 3, generator=gen)
        )
        y = torch.tanh(x[:, -4:, 0].mean(1) + 0.5 * x[:, -2:, 1].mean(1) - 0.4 * x[:, -1, 2])
        yield x, y


@scenario(
    family="bell_ringing_handstroke_gap_leaky_rnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="A hand-written leaky recurrent net (cell with ih and hh, then head) reading a change ringer's last 16 blows on a tower bell (rope-sight lag, sally height, stroke force, standardised) and forecasting the next handstroke gap, RMSprop at 1e-3, MSE, gradient clipping at 1. The cell keeps leak * h_{t-1} + tanh(ih(x_t) + hh(h_{t-1})) with leak = 1 - 1 / tau and tau in samples, meant 4 samples (0.4 s at 10 Hz, leak 0.75); the config gave tau in seconds, 0.4, so the leak is 1 - 2.5 = -1.5: the hidden state and the gradient through time grow 1.5x per step backwards through the 16 steps, the gradient on the first hidden state is over 100x the one on the last (about 1x for the twin with tau 4), the gradient norm is orders above the twin's and the loss stays far above it; clipping keeps the run finite, no NaN.",
)
def h273_bell_ringing_tau_in_seconds(ctx: Context) -> None:
    def run(c, tau):
        gen = seeded(27301)
        model = HandstrokeNet(tau)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        growth = []
        batches = _rounds(gen, 64)
        c.attach(model, opt)
        for _ in range(150):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            s = model.cell.states
            growth.append(float(s[0].grad.norm() / (s[-1].grad.norm() + 1e-30)))
            c.grad_norms.append(grad_norm(model))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            c.step(loss.detach())
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss.detach())):
                break
        return growth

    twin = _Twin()
    twin_growth = run(twin, TAU_SAMPLES)
    growth = run(ctx, TAU_TYPED)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the first state's gradient over 100x the last one's at step 0", growth[0] > 100)
    ctx.check("still over 100x at the end", growth[-1] > 100)
    ctx.check(
        "with tau 4 the first state's gradient is under 3x the last one's", twin_growth[0] < 3
    )
    ctx.check(
        "gradient norm over 100x the twin's",
        _median(ctx.grad_norms) > 100 * _median(twin.grad_norms),
    )
    ctx.check(
        "the twin trains to under 0.2x this run's loss",
        _mean(twin.losses[-10:]) < 0.2 * _mean(ls[-10:]),
    )


# -- racquetball: the resume loads the step-4 'best' checkpoint -----------------------------------------

SNAP_RACQUET = 4
ONSET_RACQUET = 120


@scenario(
    family="racquetball_ceiling_ball_rebound_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_RACQUET,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing where a racquetball ceiling ball lands after its rebound from 12 standardised readings (racquet face angle, swing speed, contact height, ball temperature, court position, ...), Adam at 2e-3, MSE. The job is pre-empted at step 120 and resumed; the resume path loads 'best.pt' (model and optimizer) instead of 'last.pt', and the 'best' checkpoint is kept by max of the validation loss (the comparison written for accuracy), so it is the one from step 4. The loss jumps back to its step-4 level (over 3x the steps before) and the run recovers within 40 steps. The batches are ordinary, the gradient at the jump is no larger than it was early on, the rate is unchanged; finite, no blow-up.",
)
def h273_racquetball_resume_from_worst_best_checkpoint(ctx: Context) -> None:
    gen = seeded(27302)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    saved, seen = {}, {}

    def before(step):
        if step == SNAP_RACQUET:
            saved["model"] = copy.deepcopy(model.state_dict())
            saved["opt"] = copy.deepcopy(opt.state_dict())
        if step == ONSET_RACQUET:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])

    def watch(step, out, x, y):
        if step == ONSET_RACQUET:
            seen["x_max"] = float(x.abs().max())
            seen["y_max"] = float(y.abs().max())

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 131),
        220,
        _plain(F.mse_loss),
        before=before,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_RACQUET - 20 : ONSET_RACQUET])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_RACQUET], ratio=0.5))
    ctx.check("loss at the onset over 3x the median before", ls[ONSET_RACQUET] > 3 * pre)
    ctx.check(
        "the gradient at the onset no larger than 1.5x the largest of the first 10 steps",
        gn[ONSET_RACQUET] < 1.5 * max(gn[:10]),
    )
    ctx.check(
        "the batch at the onset is ordinary (|x| under 6, |y| under 3)",
        seen.get("x_max", 99.0) < 6 and seen.get("y_max", 99.0) < 3,
    )
    ctx.check(
        "the loss is back under 1.5x its pre-onset level 40 steps later",
        _mean(ls[ONSET_RACQUET + 35 : ONSET_RACQUET + 45]) < 1.5 * pre,
    )


# -- gem cutting: an inverse temperature read as the temperature ---------------------------------


class FacetNet(nn.Module):
    def __init__(self, d_in, classes, temperature, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="gem_cutting_facet_style_tempered_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) telling which of 6 cut styles (brilliant, step, cushion, rose, briolette, cabochon) a lapidary's faceting machine log belongs to from 20 standardised readings (crown angle, pavilion depth, facet count, table ratio, ...), AdamW at 2e-3, cross-entropy, the head's logits divided by a calibration temperature. The temperature is read from the shared config key 'temperature', meant 1.0 for this student; the distillation recipe that shares the config set it to 0.01 for sharpening its teacher's pseudo-labels, so the student's logits are divided by 0.01 (multiplied by 100); as the classes separate, the float32 softmax rounds the target's probability to exactly 1 on most rows of a probe while the mistaken rows carry huge losses; the twin at temperature 1 keeps its probabilities below 1. Finite, no blow-up.",
)
def h273_gem_cutting_shared_temperature_key(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(27303)
        model = FacetNet(20, 6, temperature)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 20, 6, 137, noise=0.6))
        with torch.no_grad():
            fr = [collapsed_fraction(model(probe[0]), probe[1])]

        def after(step):
            with torch.no_grad():
                fr.append(collapsed_fraction(model(probe[0]), probe[1]))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 20, 6, 137, noise=0.6),
            200,
            _plain(F.cross_entropy),
            classifier=True,
            after=after,
        )
        return fr

    twin = _Twin()
    twin_fr = run(twin, 1.0)
    fr = run(ctx, 0.01)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("no row collapsed at init", fr[0] < 0.05)
    ctx.check("over half of the probe rows collapsed at the end", fr[-1] > 0.5)
    ctx.check("over half collapsed through the last 50 steps", min(fr[-50:]) > 0.5)
    ctx.check("the twin at temperature 1 collapses under 5% of rows", max(twin_fr) < 0.05)


# -- silage clamp: one farm's shard reports dry matter in g/kg -----------------------------------

ONSET_SILAGE = 100


class DryMatterNet(nn.Module):
    """A SiLU trunk (fc1, act1, fc2, act2) with a mean head and a log-variance head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _gaussian_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].clamp(-8, 8).exp())


@scenario(
    family="silage_clamp_dry_matter_gaussian_nll_net",
    optimizer="SGD(momentum=0.9)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SILAGE,
    note="A SiLU net (fc1, act1, fc2, act2, then a mean head and a log-variance head) forecasting the dry-matter fraction of a farm's grass silage clamp from 10 standardised readings (cut date, wilting hours, sward height, additive dose, clamp density, ...), Gaussian NLL, SGD with momentum 0.9 at 5e-3, clipping at 1. The targets are standardised assuming a fraction (0.32 +- 0.06); one contractor's shard reports dry matter in g/kg, and at step 100 eight rows of a batch carry targets about 5e3 standard deviations out. The inputs are ordinary. The loss and gradient at that step are thousands of times the others; clipped, the run recovers; finite.",
)
def h273_silage_clamp_grams_per_kilo_shard(ctx: Context) -> None:
    gen = seeded(27304)
    model = DryMatterNet(10)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_SILAGE:
            y = y.clone()
            fraction = 0.32 + 0.06 * y[:8]
            y[:8] = (1000.0 * fraction - 0.32) / 0.06
            seen["x_max"] = float(x.abs().max())
            seen["y_max"] = float(y.abs().max())
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 139, noise=0.2),
        220,
        _plain(_gaussian_nll),
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_SILAGE - 20 : ONSET_SILAGE])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", ls[ONSET_SILAGE - 1] < ls[0] - 0.3)
    ctx.check("loss at the onset over 1e3 above the median before", ls[ONSET_SILAGE] > pre + 1e3)
    ctx.check(
        "gradient at the onset over 100x the median before",
        gn[ONSET_SILAGE] > 100 * _median(gn[ONSET_SILAGE - 20 : ONSET_SILAGE]),
    )
    ctx.check("the onset targets hold g/kg readings (over 1e3)", seen.get("y_max", 0.0) > 1e3)
    ctx.check("the onset inputs are ordinary (|x| under 6)", seen.get("x_max", 99.0) < 6)
    ctx.check(
        "the loss is back within 0.5 of its pre-onset level 60 steps later",
        _mean(ls[ONSET_SILAGE + 50 : ONSET_SILAGE + 60]) < pre + 0.5,
    )


# -- glaze ice: log of a dry hour's 0 mm ---------------------------------------------------------

ONSET_GLAZE = 80


class LogRain(nn.Module):
    """Replaces the freezing-rain column (mm, positive) by its log; meant with a clamp."""

    def __init__(self, floor):
        super().__init__()
        self.floor = floor
        self.last_bad = False

    def forward(self, x):
        rain = x[:, :1]
        if self.floor is not None:
            rain = rain.clamp_min(self.floor)
        out = torch.cat([torch.log(rain), x[:, 1:]], -1)
        self.last_bad = bool((~torch.isfinite(out)).any())
        return out


class GlazeNet(nn.Module):
    def __init__(self, d_in, floor, hidden=48):
        super().__init__()
        self.logp = LogRain(floor)
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.logp(x)))))
        return self.head(h).squeeze(-1)


def _freezing_rain(gen, batch, d_in=8, seed=143):
    """Hourly freezing-rain amount in mm (first column, log-normal, always wet so far) and 7
    standardised readings (air and surface temperature, wind, cable diameter, ...); the target
    is the standardised glaze accretion."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in - 1, generator=g) / math.sqrt(d_in - 1)
    while True:
        rain = torch.exp(0.6 * torch.randn(batch, 1, generator=gen))
        rest = torch.randn(batch, d_in - 1, generator=gen)
        y = torch.tanh(0.9 * torch.log(rain[:, 0]) + rest @ w) + 0.05 * torch.randn(
            batch, generator=gen
        )
        yield torch.cat([rain, rest], -1), y


@scenario(
    family="glaze_ice_accretion_log_rain_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logp",),
    diverges=ONSET_GLAZE,
    heldout=True,
    onset=ONSET_GLAZE,
    note="A SiLU net (logp, fc1, act1, fc2, act2, head) regressing how much glaze ice accretes on an overhead line in an hour of freezing rain from the rain gauge's amount in mm and 7 standardised readings (air and surface temperature, wind speed, cable diameter, ...), NAdam at 3e-3, Huber loss. The logp module takes the log of the rain amount and was meant to clamp it at 1e-3 mm first; the clamp was left out, and the shards so far held only wet hours. At step 80 a batch holds one dry hour whose gauge reads exactly 0.0: log 0 = -inf in logp's output, fc1's pre-activations on that row are +-inf, act1's SiLU of -inf is NaN (-inf x 0) and the loss is NaN from that step. The other rows are ordinary; the twin with the clamp stays finite.",
)
def h273_glaze_ice_log_without_clamp(ctx: Context) -> None:
    seen = {}

    def run(c, floor):
        gen = seeded(27305)
        model = GlazeNet(8, floor)
        opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

        def alter(step, x, y):
            if step == ONSET_GLAZE:
                x = x.clone()
                x[11, 0] = 0.0
                if floor is None:
                    seen["x_max"] = float(x.abs().max())
            return x, y

        def watch(step, out, x, y):
            if floor is None and model.logp.last_bad and "step" not in seen:
                seen["step"] = step

        _train(
            c,
            model,
            opt,
            _freezing_rain(gen, 64),
            160,
            _plain(F.huber_loss),
            alter=alter,
            watch=watch,
        )

    twin = _Twin()
    run(twin, 1e-3)
    run(ctx, None)
    ls = ctx.losses
    ctx.check("the loss is non-finite first at step 80", _first_bad(ls) == ONSET_GLAZE)
    ctx.check(
        "finite and falling before step 80",
        _finite(ls[:ONSET_GLAZE]) and _fell(ls[:ONSET_GLAZE], ratio=0.6),
    )
    ctx.check("logp produced a non-finite value first at step 80", seen.get("step") == ONSET_GLAZE)
    ctx.check("the batch is otherwise ordinary (max |x| under 10)", seen.get("x_max", 99.0) < 10)
    ctx.check(
        "the twin with the clamp stays finite", _finite(twin.losses) and len(twin.losses) == 160
    )


# -- chukka: the lr multiplier dict misspells fc1 ------------------------------------------------


def _tack_faults(gen, batch, d_in=16, labels=5, seed=149):
    """Standardised readings of a polo pony after a chukka (heart rate, stride asymmetry, sweat
    patch area, girth pressure, ...) and which of 5 tack faults a groom flags (multilabel)."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(d_in, 32, generator=g) / math.sqrt(d_in)
    w2 = torch.randn(32, labels, generator=g) / math.sqrt(32)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        logits = 4.0 * torch.tanh(1.5 * x @ w1) @ w2
        yield x, (torch.rand(batch, labels, generator=gen) < torch.sigmoid(logits)).float()


@scenario(
    family="chukka_polo_tack_fault_multilabel_bce_net",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) tagging which of 5 tack faults (girth gall, bit rub, loose shoe, boot slip, bandage slip) a polo groom flags on a pony after a chukka from 16 standardised readings, Adam at 3e-3, BCE-with-logits. The recipe builds one param group per layer with lr = base * mult.get(name, 0.0), and the multiplier dict was written {'fc_1': 1.0, 'fc2': 1.0, 'head': 1.0}: the misspelt key leaves fc1 at lr 0, its weights never move (update ratio exactly 0) while fc2's and head's ratios are ordinary, where the twin with the key spelt right moves fc1 like the others. Finite, no blow-up.",
)
def h273_chukka_lr_mult_key_typo(ctx: Context) -> None:
    def run(c, mult):
        gen = seeded(27306)
        model = Stack(16, hidden=32, out=5, act=nn.Tanh)
        base = 3e-3
        groups = [
            {"params": getattr(model, n).parameters(), "lr": base * mult.get(n, 0.0)}
            for n in ("fc1", "fc2", "head")
        ]
        opt = torch.optim.Adam(groups, lr=base)
        ratios = {"fc1": [], "fc2": [], "head": []}
        prev = {}

        def before(step):
            for k in ratios:
                prev[k] = getattr(model, k).weight.detach().clone()

        def after(step):
            for k in ratios:
                w = getattr(model, k).weight.detach()
                ratios[k].append(float((w - prev[k]).norm() / w.norm()))

        _train(
            c,
            model,
            opt,
            _tack_faults(gen, 64),
            200,
            _plain(F.binary_cross_entropy_with_logits),
            before=before,
            after=after,
        )
        return {k: _median(v[20:]) for k, v in ratios.items()}

    twin = _Twin()
    twin_r = run(twin, {"fc1": 1.0, "fc2": 1.0, "head": 1.0})
    r = run(ctx, {"fc_1": 1.0, "fc2": 1.0, "head": 1.0})
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("fc1's update ratio is 0", r["fc1"] == 0.0)
    ctx.check("fc2's and head's update ratios over 1e-4", min(r["fc2"], r["head"]) > 1e-4)
    ctx.check("the twin's fc1 update ratio over 1e-4", twin_r["fc1"] > 1e-4)


# -- sand sculpture: StepLR's gamma typed 10 for 0.1 ---------------------------------------------

STEP_SAND = 50


@scenario(
    family="sand_sculpture_slump_angle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=STEP_SAND,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the angle at which a competition sand sculpture's wall slumps from 10 standardised readings (sand grain size, water content, compaction passes, wall height, drying hours, ...), plain SGD at 0.1 with StepLR every 50 steps, MSE. StepLR's gamma was typed 10 for 0.1: at step 50 the rate becomes 1.0 and lr x the loss's top Hessian eigenvalue (measured by power iteration on a fixed batch) jumps from about 0.5 to over 2, past the 2/sharpness stability limit; the loss oscillates and blows up. The twin with gamma 0.1 trains and stays finite. The batches are ordinary.",
)
def h273_sand_sculpture_steplr_gamma_typo(ctx: Context) -> None:
    state = {}

    def run(c, gamma):
        gen = seeded(27307)
        model = Stack(10, hidden=32, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=STEP_SAND, gamma=gamma)
        probe = next(_readings(torch.Generator().manual_seed(11), 256, 10, 149))
        products = {}

        def before(step):
            if gamma > 1 and step % 5 == 0 and "cross" not in state:
                products[step] = opt.param_groups[0]["lr"] * _top_eig(model, *probe)
                if products[step] > 2:
                    state["cross"] = step

        _train(
            c,
            model,
            opt,
            _readings(gen, 128, 10, 149),
            180,
            _plain(F.mse_loss),
            sched=sched,
            before=before,
        )
        return products

    twin = _Twin()
    run(twin, 0.1)
    products = run(ctx, 10.0)
    ls = ctx.losses
    cross = state.get("cross", 10**6)
    low = min(ls[: min(cross, len(ls))]) if ls else 0.0
    bad = _first_bad(ls)
    blew = bad is not None or max(ls) > 1e4 * max(low, 1e-6)
    blow = bad if bad is not None else next((i for i, v in enumerate(ls) if v > 1e3 * low), None)
    ctx.check(
        "lr x sharpness under 2 before the step",
        all(v < 2 for s, v in products.items() if s < STEP_SAND),
    )
    ctx.check("lr x sharpness over 2 at the step", cross == STEP_SAND)
    ctx.check("loss fell before the step", _fell(ls[:STEP_SAND], ratio=0.6))
    ctx.check("the loss blows up (non-finite or over 1e4x its low)", blew)
    ctx.check("the blow-up comes after the step", blow is not None and blow >= STEP_SAND)
    ctx.check("the twin stays finite and trains", _fell(twin.losses, ratio=0.6))


# -- goldbeating: the Nesterov lr typed 0.3 for 0.03 ---------------------------------------------


@scenario(
    family="goldbeating_leaf_thickness_relu_regressor",
    optimizer="SGD(nesterov=True)",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the thickness a goldbeater's leaf reaches in the cutch from 12 standardised readings (hammer weight, blow count, packet temperature, skin age, alloy carat, ...), SGD with Nesterov momentum 0.9, MSE. The rate was meant 0.03 and typed 0.3: the first large steps push fc2's pre-activations below zero on every input, most of act2's ReLU units stop firing on a 512-row probe and never fire again, and the loss ends far above the twin at 0.03, which keeps its units alive. Finite, no blow-up.",
)
def h273_goldbeating_nesterov_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(27308)
        model = Stack(12, hidden=64)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
        probe = next(_readings(torch.Generator().manual_seed(5), 512, 12, 151))[0]

        def dead():
            with torch.no_grad():
                return dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe)))))

        fr = [dead()]

        def after(step):
            fr.append(dead())

        _train(c, model, opt, _readings(gen, 64, 12, 151), 200, _plain(F.mse_loss), after=after)
        return fr

    twin = _Twin()
    twin_fr = run(twin, 0.03)
    fr = run(ctx, 0.3)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("act2 under 20% dead at init", fr[0] < 0.2)
    ctx.check("act2 over half dead at the end", fr[-1] > 0.5)
    ctx.check("act2 over half dead over the last 50 steps", min(fr[-50:]) > 0.5)
    ctx.check("the intended lr keeps act2 under 20% dead", max(twin_fr) < 0.2)
    ctx.check(
        "the twin ends under half this run's loss", _mean(twin.losses[-20:]) < 0.5 * _mean(ls[-20:])
    )


# -- show jumping: the epoch-tail batch takes the sum reduction ----------------------------------

ONSET_SHOW = 140


@scenario(
    family="showjumping_rail_knock_height_huber_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SHOW,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing by how much a show jumper's hind hooves clear (or knock) the top rail from 12 standardised readings (take-off distance, approach speed, stride length, fence height, ...), SGD with momentum 0.9 at 1e-2, Huber loss, clipping at 20. The loader's epoch-tail path was written for evaluation and calls the criterion with reduction='sum'; at step 140 the tail batch takes that path: that step's loss and gradient are 64x the steps around it (clipped to 20), the batch itself is ordinary, the run recovers; finite.",
)
def h273_showjumping_tail_batch_sum_reduction(ctx: Context) -> None:
    gen = seeded(27309)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}

    def loss_fn(out, y, step):
        reduction = "sum" if step == ONSET_SHOW else "mean"
        return F.huber_loss(out, y, reduction=reduction, delta=1.0)

    def watch(step, out, x, y):
        if step == ONSET_SHOW:
            seen["x_max"] = float(x.abs().max())
            seen["y_max"] = float(y.abs().max())

    _train(ctx, model, opt, _readings(gen, 64, 12, 153), 220, loss_fn, clip=20.0, watch=watch)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_SHOW - 10 : ONSET_SHOW])
    before = _median(gn[ONSET_SHOW - 20 : ONSET_SHOW])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SHOW], ratio=0.5))
    ctx.check(
        "the gradient norm at the onset over 30x the median before", gn[ONSET_SHOW] > 30 * before
    )
    ctx.check("the gradient norm 20 steps after back under 3x", gn[ONSET_SHOW + 20] < 3 * before)
    ctx.check(
        "the batch at the onset is ordinary (|x| under 6, |y| under 3)",
        seen.get("x_max", 99.0) < 6 and seen.get("y_max", 99.0) < 3,
    )
    ctx.check(
        "the loss is back under 2x its pre-onset level 60 steps later",
        _mean(ls[ONSET_SHOW + 50 : ONSET_SHOW + 60]) < 2 * max(pre, 1e-3),
    )


# -- thatching: the log-prior's sign flipped -----------------------------------------------------


@scenario(
    family="thatcher_reed_coat_life_map_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how many years a thatcher's water-reed coat lasts from 12 standardised readings (reed length, coat thickness, roof pitch, rainfall, moss cover, ...), RAdam at 3e-3, MAP training: the data MSE minus the log of a Gaussian prior on the weights, with the prior's coefficient 0.1. The log-prior was written +0.1 * ||w||^2 instead of -0.1 * ||w||^2, so the objective rewards large weights: after the data loss first falls, the weights keep growing and the data MSE climbs slowly for the rest of the run, ending well above its low; the twin with the right sign keeps falling. The batches are ordinary; finite, no blow-up.",
)
def h273_thatcher_log_prior_sign(ctx: Context) -> None:
    def run(c, sign):
        gen = seeded(27310)
        model = Stack(12, hidden=48, act=nn.SiLU)
        opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
        weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
        norms = []

        def loss_fn(out, y, step):
            data = F.mse_loss(out, y)
            prior = 0.1 * sum((w**2).sum() for w in weights)
            return data, data + sign * prior

        def watch(step, out, x, y):
            norms.append(float(sum((w.detach() ** 2).sum() for w in weights)))

        _train(c, model, opt, _readings(gen, 64, 12, 157), 400, loss_fn, watch=watch)
        return norms

    twin = _Twin()
    run(twin, 1.0)
    norms = run(ctx, -1.0)

    def win_twin(t):
        return _mean(t.losses[-20:])

    ls = ctx.losses
    win = [_mean(ls[i : i + 20]) for i in range(0, len(ls), 20)]
    low = min(range(len(win)), key=win.__getitem__)
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the data loss fell first (its low is past the first window)", low >= 1)
    ctx.check("the low comes before the last third", low < 2 * len(win) // 3)
    ctx.check("the data loss ends over 1.5x its low", win[-1] > 1.5 * win[low])
    ctx.check(
        "the climb is steady: windows after the low mostly rise",
        sum(b > a for a, b in zip(win[low:], win[low + 1 :], strict=False))
        >= 0.7 * (len(win) - low - 1),
    )
    ctx.check("the weights' squared norm grew over 5x", norms[-1] > 5 * norms[0])
    ctx.check("the twin ends under 0.8x this run's data loss", win_twin(twin) < 0.8 * win[-1])


# -- controls -------------------------------------------------------------------------------------


class SoloTagger(nn.Module):
    """A bidirectional GRU over a boot IMU trace, tagging every sample's phase; returns the
    logits of all samples flattened to (batch * time, phases)."""

    def __init__(self, channels=6, hidden=24, phases=4):
        super().__init__()
        self.gru = nn.GRU(channels, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, phases)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out).reshape(-1, self.head.out_features)


def _solo_runs(gen, batch, length=24, channels=6, phases=4, seed=163):
    """A Gaelic footballer's boot IMU (6 channels) through a solo run: segments of running,
    bouncing, toe-tapping and kicking, each with its own mean signature, noisy; the labels of
    every sample flattened."""
    g = torch.Generator().manual_seed(seed)
    sig = torch.randn(phases, channels, generator=g)
    while True:
        cuts = torch.randint(1, 4, (batch, length), generator=gen)
        change = torch.rand(batch, length, generator=gen) < 0.15
        labels = torch.zeros(batch, length, dtype=torch.long)
        cur = torch.randint(0, phases, (batch,), generator=gen)
        for t in range(length):
            cur = torch.where(change[:, t], (cur + cuts[:, t]) % phases, cur)
            labels[:, t] = cur
        x = sig[labels] + 1.1 * torch.randn(batch, length, channels, generator=gen)
        yield x, labels.reshape(-1)


@scenario(
    family="gaelic_football_solo_run_bigru_tagger",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a bidirectional nn.GRU tagger (gru, head) labelling every sample of a Gaelic footballer's boot IMU trace (24 samples, 6 channels) as running, bouncing, toe-tapping (the solo) or kicking, Adagrad at 0.05, cross-entropy over all samples, clipping at 1, ReduceLROnPlateau on the training loss (factor 0.5, patience 10). Noisy batches; trains normally.",
)
def h273_gaelic_football_bigru_control(ctx: Context) -> None:
    gen = seeded(27311)
    model = SoloTagger()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _train(
        ctx,
        model,
        opt,
        _solo_runs(gen, 32),
        200,
        _plain(F.cross_entropy),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    probe = next(_solo_runs(torch.Generator().manual_seed(7), 256))
    with torch.no_grad():
        acc = float((model(probe[0]).argmax(-1) == probe[1]).float().mean())
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under 0.6x its start", _fell(ls, ratio=0.6))
    ctx.check("the tagger labels over 70% of probe samples right", acc > 0.7)


@scenario(
    family="eventing_cross_country_fence_outcome_fp16_classifier",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) telling how an eventing horse meets a cross-country fence (clear, run-out, refusal, rider fall) from 20 standardised readings (approach speed, stride count, fence type, ground, horse fitness, ...), fp16 autocast with a torch.amp.GradScaler, Adamax under OneCycleLR (max_lr 1e-2 over 200 steps), cross-entropy with label smoothing 0.1, clipping at 1 after unscale_. Trains normally; the scale stays finite.",
)
def h273_eventing_fp16_onecycle_control(ctx: Context) -> None:
    gen = seeded(27312)
    model = Stack(20, hidden=64, out=4, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=4096.0)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 4, 167, noise=0.6),
        200,
        _plain(lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1)),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under 0.6x its start", _fell(ls, ratio=0.6))
    ctx.check("the loss scale stayed finite and at least 1", all(1 <= s < 1e9 for s in ctx.scales))


class BearingAE(nn.Module):
    """A tied-weight autoencoder: the decoder reuses the encoder's weight transposed."""

    def __init__(self, d_in=24, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return self.act(self.enc(x)) @ self.enc.weight + self.dec_bias


def _rate_traces(gen, batch, d_in=24, code=6, seed=173):
    """A watch's timegrapher readings at 24 positions and temperatures, standardised; the rate
    deviations come from 6 causes (jewel-bearing wear, lubricant, poise, ...) plus noise."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(code, d_in, generator=g) / math.sqrt(code)
    while True:
        z = torch.randn(batch, code, generator=gen)
        yield z @ mix + 0.1 * torch.randn(batch, d_in, generator=gen), None


@scenario(
    family="watch_jewel_bearing_rate_tied_autoencoder",
    optimizer="SGD(nesterov=True)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a tied-weight autoencoder (enc, act; the decoder reuses enc.weight transposed plus its own bias) compressing a watchmaker's 24 timegrapher rate readings (dial up and down, crown positions, temperatures) to 6 codes to flag worn jewel bearings, SGD with Nesterov momentum 0.9 at 0.05, a 20-step linear warm-up then cosine decay (LambdaLR), gradient accumulation over 2 batches, MSE reconstruction. Noisy batches; trains normally.",
)
def h273_watch_jewel_tied_ae_control(ctx: Context) -> None:
    gen = seeded(27313)
    model = BearingAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    total = 200

    def shape(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / (total - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    batches = ((x, x) for x, _ in _rate_traces(gen, 64))
    _train(ctx, model, opt, batches, total, _plain(F.mse_loss), accumulate=2, sched=sched)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under 0.5x its start", _fell(ls, ratio=0.5))
