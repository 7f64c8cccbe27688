"""Held-out set 261 (``h261_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a scissors-grinder bevel regressor whose resumed step sums
its micro-batch losses, a puppeteer's marionette cue-recall attention net trained at an AdamW lr
typed 3e-2 for 3e-4, an hourglass-maker's sand run-time regressor whose resumed step skips the
division of a summed accumulation, a monarch-roost Poisson count net whose log-rate head lacks
its clamp, a karst-spring discharge deep tanh net whose init gain was typed 4 for 1, a pargetting
plaster-cure net whose per-group LambdaLR list is in the wrong order (head frozen), a sausage
casing fill-weight regressor fed a shard logged in milligrams, a tephra grain-type GELU net whose
contrastive temperature divides the classifier's logits, a broomball shot Conv1d net at an
Adam lr typed 3e-1 for 3e-3, a seal-carving stone-grade classifier whose multi-class hinge lost
its clamp, and three controls (a cheesemonger ledger tied byte LM with dropout and eval passes,
a salt-dome caprock mixture-of-experts regressor with a softmax router, a crab-migration fp16
Gaussian-NLL net with a GradScaler).

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
    text_batches,
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


class _Quiet:
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
    divisor=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``divisor(step)`` is what
    each micro-batch loss is divided by (default ``accumulate``), ``after(step)`` runs after the
    optimizer step; ``amp``: fp16 autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        div = divisor(step) if divisor is not None else accumulate
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / div
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


def _traces(gen, batch, classes, seed, channels=2, length=32, noise=0.6):
    """Multi-channel traces: each class a different mix of frequencies, random phase, noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.9 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase)
        yield x + noise * torch.randn(batch, channels, length, generator=gen), y


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


class TraceNet(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> mean pool -> head over a multi-channel trace."""

    def __init__(self, channels, classes, width=16, act=nn.ReLU):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = act()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = act()
        self.head = nn.Linear(width, classes)

    def features(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x))))

    def forward(self, x):
        return self.head(self.features(x).mean(-1))


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _moved(model, w0):
    return {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm()) for n, p in model.named_parameters()
    }


# -- scissors grinder: the resumed step sums its micro-batch losses ------------------------------

ONSET_GRIND = 120


@scenario(
    family="scissors_grinder_edge_bevel_accumulated_regressor",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_GRIND,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the bevel angle an itinerant knife-and-scissors grinder leaves on a blade from 14 standardised readings (wheel speed, grit, blade steel hardness, pressure, dwell time, ...), SGD with Nesterov momentum 0.9 at 1e-2, MSE, gradient accumulation over 4 micro-batches of 64, clipping at 5. At step 120 the job is resumed and the resume path builds its first step's loss with the evaluation helper, which uses reduction='sum' over each micro-batch instead of the mean: that one step's gradient is about 64x the steps around it. The batches are ordinary; clipped, the run recovers; finite.",
)
def h261_scissors_grinder_resume_sum_reduction(ctx: Context) -> None:
    gen = seeded(26101)
    model = Stack(14, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    xs = []

    def loss_fn(out, y):
        if len(ctx.grad_norms) == ONSET_GRIND:
            return F.mse_loss(out, y, reduction="sum")
        return F.mse_loss(out, y)

    def watch(step, out, x, y):
        if step in (ONSET_GRIND - 1, ONSET_GRIND):
            xs.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 14, 31),
        220,
        loss_fn,
        accumulate=4,
        clip=5.0,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_GRIND - 20 : ONSET_GRIND])
    pre = _mean(ls[ONSET_GRIND - 10 : ONSET_GRIND])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_GRIND], ratio=0.5))
    ctx.check(
        "the gradient norm at the onset over 30x the median before", gn[ONSET_GRIND] > 30 * before
    )
    ctx.check("the gradient norm 20 steps after back under 3x", gn[ONSET_GRIND + 20] < 3 * before)
    ctx.check("the batches at the onset are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check(
        "the loss is back under 2x its pre-onset level 60 steps later",
        _mean(ls[ONSET_GRIND + 50 : ONSET_GRIND + 60]) < 2 * max(pre, 1e-3),
    )


# -- puppeteer: marionette cue recall, AdamW lr typed 3e-2 for 3e-4 ------------------------------


class CueAttention(nn.Module):
    """Single-head self-attention with q, k, v, o projections; keeps its last logits."""

    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.dim = dim
        self.logits = None

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        logits = q @ k.transpose(1, 2) / math.sqrt(self.dim)
        self.logits = logits.detach()
        return self.o(torch.softmax(logits, -1) @ v)


class CueRecall(nn.Module):
    """tok + pos embeddings -> norm -> attn (residual) -> norm2 -> mlp -> head on the last slot."""

    def __init__(self, vocab=24, dim=32, length=13):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = CueAttention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        h = h + self.attn(self.norm(h))
        h = h + self.mlp(self.norm2(h))
        return self.head(h[:, -1])


def _cues(gen, batch, length=13, vocab=24):
    """A show's cue sheet: 13 cues (which marionette each string-pull is for); the label is the
    marionette of the opening cue, to be recalled at the last cue."""
    while True:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        yield x, x[:, 0]


@scenario(
    family="puppeteer_marionette_cue_recall_attention",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A hand-written one-layer attention net (tok, pos, norm, attn with q/k/v/o, norm2, mlp, head) that reads a marionette puppeteer's cue sheet of 13 cues and recalls, at the last cue, which marionette the opening cue was for; AdamW with weight_decay 0, cross-entropy. The lr was meant to be 3e-4 and was typed 3e-2: the query and key projections grow step after step and the pre-softmax attention logits q.k/sqrt(d) on a fixed probe grow over 20x from their start to the hundreds and attention goes one-hot; the intended rate keeps them an order smaller. Finite, no blow-up.",
)
def h261_puppeteer_cue_attention_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(26102)
        model = CueRecall()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        probe = next(_cues(torch.Generator().manual_seed(7), 256))[0]
        peak = []

        def after(step):
            with torch.no_grad():
                model(probe)
                peak.append(float(model.attn.logits.abs().max()))

        _train(c, model, opt, _cues(gen, 64), 200, F.cross_entropy, classifier=True, after=after)
        return peak

    twin = _Quiet()
    twin_peak = run(twin, 3e-4)
    peak = run(ctx, 3e-2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the peak attention logit grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("the peak attention logit is over 50 at the end", peak[-1] > 50)
    ctx.check("the intended lr keeps the peak 5x smaller", twin_peak[-1] < peak[-1] / 5)


# -- hourglass maker: the resumed step skips the division of a summed accumulation ---------------

ONSET_SAND = 40


@scenario(
    family="hourglass_sand_run_time_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SAND,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how long an hourglass maker's glass runs from 12 standardised readings (sand grain size, neck diameter, bulb volume, humidity, fill mass, ...), Adam at 1e-3, MSE. The loop accumulates 8 micro-batches of 128 with reduction='sum' and divides the accumulated loss by the 1024 samples; at step 40, the first step after a resume, the sample count is restored as 1 and the division is skipped: Adam receives one gradient about 1000x the others, which fills its second moment (exp_avg_sq); for tens of steps afterwards every update is over 10x smaller than before (and well under the twin's) and the loss stalls above the twin without the bug. The batches are ordinary; finite, no blow-up.",
)
def h261_hourglass_accumulation_divisor_lost(ctx: Context) -> None:
    def run(c, bug):
        gen = seeded(26103)
        model = Stack(12, hidden=64, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moved, prev = [], {}

        def before(step):
            prev["w"] = _flat(model)

        def after(step):
            moved.append(float((_flat(model) - prev["w"]).norm()))

        def divisor(step):
            # sum over 8 x 128 divided by 1024 is the mean divided by 8; the bug skips the
            # division: the sum itself, 128x each micro-batch's mean
            return 1.0 / 128 if bug and step == ONSET_SAND else 8.0

        _train(
            c,
            model,
            opt,
            _readings(gen, 128, 12, 37),
            170,
            F.mse_loss,
            accumulate=8,
            divisor=divisor,
            before=before,
            after=after,
        )
        return moved

    twin = _Quiet()
    twin_moved = run(twin, bug=False)
    moved = run(ctx, bug=True)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(moved[ONSET_SAND - 20 : ONSET_SAND])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SAND], ratio=0.7))
    ctx.check(
        "the gradient Adam saw at the onset over 300x the median before",
        gn[ONSET_SAND] > 300 * _median(gn[ONSET_SAND - 20 : ONSET_SAND]),
    )
    ctx.check(
        "updates 30-90 steps after the onset over 10x smaller than before",
        _median(moved[ONSET_SAND + 30 : ONSET_SAND + 90]) < pre / 10,
    )
    ctx.check(
        "those updates under half the twin's over the same steps",
        _median(moved[ONSET_SAND + 30 : ONSET_SAND + 90])
        < 0.5 * _median(twin_moved[ONSET_SAND + 30 : ONSET_SAND + 90]),
    )
    ctx.check(
        "the loss stalls: the twin ends under 0.9x of it",
        _mean(twin.losses[-10:]) < 0.9 * _mean(ls[-10:]),
    )


# -- monarch roost: a Poisson log-rate head without its clamp ------------------------------------


class LogRate(nn.Module):
    """log(relu(lin(h))): the rate's log, meant with a clamp_min(1e-6) before the log."""

    def __init__(self, hidden, clamp):
        super().__init__()
        self.lin = nn.Linear(hidden, 1)
        self.clamp = clamp
        with torch.no_grad():
            self.lin.bias.fill_(5.0)
        self.last = None

    def forward(self, h):
        r = F.relu(self.lin(h))
        if self.clamp:
            r = r.clamp_min(1e-6)
        self.last = r.detach()
        return torch.log(r).squeeze(-1)


ONSET_ROOST = 50


class RoostNet(nn.Module):
    def __init__(self, d_in, clamp, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.rate = LogRate(hidden, clamp)

    def forward(self, x):
        return self.rate(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _roost_counts(gen, batch, d_in=8, seed=41):
    """Standardised roost-site readings (tree cover, temperature, wind shelter, nectar, ...) and
    a Poisson count of monarchs at the roost (many empty roosts)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        lam = torch.exp(1.2 * torch.tanh(x @ w / math.sqrt(d_in)) * 1.8 - 0.3)
        yield x, torch.poisson(lam, generator=gen)


def _poisson_nll(log_rate, y):
    return F.poisson_nll_loss(log_rate, y, log_input=True, full=False)


@scenario(
    family="monarch_roost_count_poisson_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("rate",),
    diverges=ONSET_ROOST,
    heldout=True,
    onset=ONSET_ROOST,
    note="A tanh MLP (fc1, act1, fc2, act2) with a log-rate head (rate: lin, relu, log) predicting how many monarch butterflies cluster at a winter roost from 8 standardised site readings (tree cover, temperature, wind shelter, nectar, ...), Poisson negative log-likelihood on the log-rate, Adamax at 2e-3, the rate's bias started at 5. The head computes log(relu(lin(h))) and the clamp_min(1e-6) before the log was left out: as the rates of the many empty roosts are pushed down, one row's relu output reaches exactly 0 at step 50, log(0) = -inf in the rate head, the loss is non-finite and the gradient NaN. The batch is ordinary; the twin with the clamp stays finite.",
)
def h261_monarch_roost_log_rate_no_clamp(ctx: Context) -> None:
    seen = {}

    def run(c, clamp):
        gen = seeded(26104)
        model = RoostNet(8, clamp)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

        def watch(step, out, x, y):
            if not clamp and not torch.isfinite(out).all() and "step" not in seen:
                seen["step"] = step
                seen["zero_rate"] = bool((model.rate.last == 0).any())
                seen["y_max"] = float(y.max())
                seen["x_max"] = float(x.abs().max())

        _train(c, model, opt, _roost_counts(gen, 64), 150, _poisson_nll, watch=watch)

    twin = _Quiet()
    run(twin, clamp=True)
    run(ctx, clamp=False)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss is non-finite first at step 50", bad == ONSET_ROOST)
    ctx.check(
        "finite and falling before step 50",
        _finite(ls[:ONSET_ROOST]) and ls[ONSET_ROOST - 1] < 0.5 * ls[0],
    )
    ctx.check("the rate head produced -inf first at step 50", seen.get("step") == ONSET_ROOST)
    ctx.check("a relu rate of exactly 0 at that step", seen.get("zero_rate", False))
    ctx.check(
        "the batch is ordinary (counts under 60, |x| under 6)",
        seen.get("y_max", 99.0) < 60 and seen.get("x_max", 99.0) < 6,
    )
    ctx.check("the clamped twin stays finite", _finite(twin.losses) and len(twin.losses) == 150)


# -- karst spring: a deep tanh net whose init gain was typed 4 for 1 -----------------------------


class DeepTanh(nn.Module):
    """inp -> layers.0..layers.15 (Linear + tanh) -> head; weights N(0, gain^2 / fan_in)."""

    def __init__(self, d_in, gain, hidden=64, depth=16):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.head = nn.Linear(hidden, 1)
        for m in [self.inp, *self.layers]:
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return self.head(h).squeeze(-1)


@scenario(
    family="karst_spring_discharge_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("inp",) + tuple(f"layers.{i}" for i in range(16)),
    diverges=None,
    heldout=True,
    note="A deep tanh MLP (inp, layers.0-layers.15, head) regressing a karst spring's discharge after rain from 10 standardised readings (rainfall, sinkhole inflow, cave water level, conduit conductivity, ...), plain SGD at 1e-2, MSE. The init helper draws weights N(0, gain^2/fan_in) with the gain meant as 1.0 and typed 4.0: every layer sits in tanh's chaotic regime, the gradient grows layer after layer from the head back to the input, the first layer's gradient is over 100x the last hidden layer's, and the early layers thrash while the twin with gain 1 trains; the tanh keeps the loss finite, no blow-up.",
)
def h261_karst_spring_init_gain_typo(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(26105)
        model = DeepTanh(10, gain)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        ratio = []
        _batches = _readings(gen, 64, 10, 43)
        c.attach(model, opt)
        for _ in range(150):
            x, y = next(_batches)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            ratio.append(float(model.inp.weight.grad.norm() / model.layers[-1].weight.grad.norm()))
            c.grad_norms.append(grad_norm(model))
            opt.step()
            c.step(loss.detach())
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss.detach())):
                break
        return ratio

    twin = _Quiet()
    twin_ratio = run(twin, 1.0)
    ratio = run(ctx, 4.0)
    ls = ctx.losses
    ctx.check(
        "the input layer's gradient over 100x the last hidden layer's at step 0", ratio[0] > 100
    )
    ctx.check("still over 100x at the end", ratio[-1] > 100)
    ctx.check("with gain 1 the ratio is under 10", twin_ratio[0] < 10)
    ctx.check(
        "the twin trains to under 0.7x of this run's final loss",
        _mean(twin.losses[-10:]) < 0.7 * _mean(ls[-10:]),
    )


# -- pargetting: the per-group LambdaLR list in the wrong order ----------------------------------


class CureNet(nn.Module):
    """A backbone (fc1, act1, fc2, act2) and a head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    family="pargetting_plaster_cure_frozen_head_mlp",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2 as the backbone, then head) regressing how long a pargetter's lime-plaster relief takes to cure from 12 standardised readings (lime putty ratio, hair content, wall damp, temperature, relief depth, ...), RMSprop at 2e-3 with two param groups [backbone, head] and a LambdaLR given one lambda per group: the head's warm-up and the backbone's 'frozen for the first 1000 steps' lambda. The list was written [freeze, warm-up] for the group order [head, backbone] while the groups are [backbone, head]: the head's rate is 0 for the whole run and its weights never move; the backbone learns around a frozen random head, so the loss still falls, finite, no blow-up.",
)
def h261_pargetting_lambda_list_swapped(ctx: Context) -> None:
    gen = seeded(26106)
    model = CureNet(12)
    backbone = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.RMSprop([{"params": backbone}, {"params": model.head.parameters()}], lr=2e-3)

    def freeze(s):
        return 0.0 if s < 1000 else 1.0

    def warm(s):
        return min(1.0, (s + 1) / 20)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, [warm, freeze])  # meant [freeze, warm]
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(ctx, model, opt, _readings(gen, 64, 12, 47), 200, F.mse_loss, sched=sched)
    moved = _moved(model, w0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.9))
    ctx.check("the head's weight never moved", moved["head.weight"] == 0.0)
    ctx.check("fc1's weight moved over 1e-2 of its norm", moved["fc1.weight"] > 1e-2)
    ctx.check("fc2's weight moved over 1e-2 of its norm", moved["fc2.weight"] > 1e-2)


# -- sausage maker: a shard logged in milligrams -------------------------------------------------

ONSET_CASE = 110


@scenario(
    family="sausage_casing_fill_weight_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CASE,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the fill weight of a link from a butcher's sausage-filling machine from 10 standardised readings (casing diameter, stuffer pressure, meat temperature, twist count, ...), SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at 1. Fill weights are standardised with the grams mean and spread; one shard came from a machine that logs milligrams, so at step 110 ten rows of one batch carry targets 1000x their gram value, standardised to around 1e4: the loss and the gradient at that step are thousands of times the others; the inputs are ordinary. Clipped, the run recovers; finite.",
)
def h261_sausage_fill_milligram_shard(ctx: Context) -> None:
    gen = seeded(26107)
    model = Stack(10, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}
    mean_g, spread_g = 80.0, 6.0

    def alter(step, x, y):
        if step == ONSET_CASE:
            grams = mean_g + spread_g * y
            y = y.clone()
            y[:10] = (1000.0 * grams[:10] - mean_g) / spread_g
            seen["y_max"] = float(y.max())
            seen["x_max"] = float(x.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 53), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_CASE - 20 : ONSET_CASE])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_CASE], ratio=0.6))
    ctx.check("loss at the onset over 1000x the median before", ls[ONSET_CASE] > 1000 * pre)
    ctx.check(
        "gradient at the onset over 100x the median before",
        gn[ONSET_CASE] > 100 * _median(gn[ONSET_CASE - 20 : ONSET_CASE]),
    )
    ctx.check("the onset targets hold milligram values (over 1e3)", seen.get("y_max", 0.0) > 1e3)
    ctx.check("the onset inputs are ordinary (max |x| under 6)", seen.get("x_max", 99.0) < 6)
    ctx.check(
        "the loss is back under 3x its pre-onset level 80 steps later",
        _mean(ls[ONSET_CASE + 70 : ONSET_CASE + 80]) < 3 * pre,
    )


# -- tephra: the distillation temperature divides the hard-label logits --------------------------


class TemperedNet(Stack):
    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, hidden=48, out=classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="tephra_grain_type_tempered_gelu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) telling which of 6 eruption styles a volcanic ash (tephra) sample came from by 32 standardised grain readings (grain-size and vesicularity histogram bins), RAdam at 3e-3, cross-entropy on hard labels. The shared config's temperature 0.01 belongs to the contrastive (InfoNCE) pre-training head, but the classifier divides its logits by it too: logits 100x too large, within tens of steps the float32 softmax rounds most targets' probabilities to exactly 1 and the mistaken rows carry huge losses; the twin at temperature 1 keeps probabilities soft. Finite, no blow-up.",
)
def h261_tephra_leftover_temperature(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(26108)
        model = TemperedNet(32, 6, temperature)
        opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 32, 6, 59))
        with torch.no_grad():
            fr = [collapsed_fraction(model(probe[0]), probe[1])]

        def after(step):
            with torch.no_grad():
                fr.append(collapsed_fraction(model(probe[0]), probe[1]))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 32, 6, 59),
            200,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return fr

    twin = _Quiet()
    twin_fr = run(twin, 1.0)
    fr = run(ctx, 0.01)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 10% of probe rows saturated at init", fr[0] < 0.1)
    ctx.check("over half the probe rows saturate to exactly 1 at the end", fr[-1] > 0.5)
    ctx.check("the intended temperature saturates under 10%", twin_fr[-1] < 0.1)


# -- broomball: Adam's lr typed 3e-1 for 3e-3 ----------------------------------------------------


@scenario(
    family="broomball_shot_accelerometer_relu_cnn",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU Conv1d classifier (conv1, act1, conv2, act2, head) telling a broomball shot's kind (5 kinds) from 32 samples of a broom-mounted 3-axis accelerometer, Adam, cross-entropy. The lr was meant to be 3e-3 and was typed 3e-1: within the first steps conv2's pre-activations are pushed negative and over half of act2's ReLU channels stop firing on every input of a 512-trace probe and never come back, while the intended lr keeps them alive; the loss stays finite, no blow-up.",
)
def h261_broomball_adam_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(26109)
        model = TraceNet(3, 5)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        probe = next(_traces(torch.Generator().manual_seed(5), 512, 5, 61, channels=3))[0]
        with torch.no_grad():
            dead = [dead_fraction(model.features(probe).transpose(1, 2))]

        def after(step):
            if step % 2 == 1:
                with torch.no_grad():
                    dead.append(dead_fraction(model.features(probe).transpose(1, 2)))

        _train(
            c,
            model,
            opt,
            _traces(gen, 64, 5, 61, channels=3),
            150,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return dead

    twin = _Quiet()
    twin_dead = run(twin, 3e-3)
    dead = run(ctx, 3e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("act2 under 20% dead at init", dead[0] < 0.2)
    ctx.check("act2 over half dead at the end", dead[-1] > 0.5)
    ctx.check("act2 stays over half dead over the last 50 steps", min(dead[-25:]) > 0.5)
    ctx.check("the intended lr keeps act2 under 20% dead", twin_dead[-1] < 0.2)


# -- seal carving: the multi-class hinge lost its clamp ------------------------------------------


def _hinge(clamp):
    def loss(logits, y):
        s_y = logits.gather(1, y[:, None])
        margins = 1.0 - s_y + logits
        if clamp:
            margins = margins.clamp_min(0.0)
        mask = torch.ones_like(logits).scatter_(1, y[:, None], 0.0)
        return (margins * mask).sum(1).mean()

    return loss


@scenario(
    family="seal_carving_stone_grade_margin_classifier",
    optimizer="Adagrad",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) grading a seal carver's stone (5 grades of soapstone, shoushan and jade blanks) from 16 standardised readings (hardness, translucency, inclusions, grain, ...), Adagrad at 5e-2, a hand-written multi-class hinge loss sum_j max(0, 1 - s_y + s_j). The max(0, .) clamp was left out: the objective is linear in the logits and unbounded below, so the head's logits grow without bound on every input and the loss goes ever more negative; the twin with the clamp keeps the logits an order smaller. Finite, no NaN in the run's length.",
)
def h261_seal_carving_hinge_no_clamp(ctx: Context) -> None:
    def run(c, clamp):
        gen = seeded(26110)
        model = Stack(16, hidden=48, out=5, act=nn.GELU)
        opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 16, 5, 67))[0]
        peak = []

        def after(step):
            with torch.no_grad():
                peak.append(float(model(probe).abs().max()))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 5, 67),
            200,
            _hinge(clamp),
            classifier=True,
            after=after,
        )
        return peak

    twin = _Quiet()
    twin_peak = run(twin, True)
    peak = run(ctx, False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak |logit| grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("the peak is still growing over the last 50 steps", peak[-1] > 1.2 * peak[-50])
    ctx.check("the loss went below zero", ls[-1] < 0)
    ctx.check("the clamped twin keeps the peak 5x smaller", twin_peak[-1] < peak[-1] / 5)


# -- healthy controls -----------------------------------------------------------------------------


class LedgerLM(nn.Module):
    """A fixed-context byte model: embed the last 8 bytes, fc1 -> act1 -> drop -> fc2 -> norm ->
    head, head.weight tied to embed.weight."""

    def __init__(self, vocab=128, dim=32, context=8, hidden=128, p=0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(context * dim, hidden)
        self.act1 = nn.GELU()
        self.drop = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.embed.weight, std=0.1)
        self.head.weight = self.embed.weight  # tied

    def forward(self, idx):
        h = self.drop(self.act1(self.fc1(self.embed(idx).flatten(1))))
        return self.head(self.norm(self.fc2(h)))


def _next_byte(gen, batch):
    stream = text_batches(gen, batch, 8)
    while True:
        x, y = next(stream)
        yield x, y[:, -1]


@scenario(
    family="cheesemonger_ledger_tied_byte_lm",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a fixed-context byte model (embed, fc1, act1, drop, fc2, norm, head with head.weight tied to embed.weight) predicting the next byte of a cheesemonger's ledger (here the bytes of standard-library sources) from the 8 before it, dropout 0.1, NAdam at 3e-3 with a StepLR halving every 80 steps, cross-entropy with label smoothing 0.05, gradient clipping at 1; every 40 steps an evaluation pass in model.eval() under torch.no_grad() on a held-out batch, then back to model.train(). Trains normally.",
)
def h261_cheesemonger_ledger_dropout_eval_control(ctx: Context) -> None:
    gen = seeded(26111)
    model = LedgerLM()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    held = next(_next_byte(torch.Generator().manual_seed(11), 512))
    evals = []

    def after(step):
        if step % 40 == 0 or step == 239:
            model.eval()
            with torch.no_grad():
                evals.append(float(F.cross_entropy(model(held[0]), held[1])))
            model.train()

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.05)

    _train(
        ctx,
        model,
        opt,
        _next_byte(gen, 64),
        240,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        after=after,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.8))
    ctx.check("the held-out loss fell by over 0.5 nats", evals[-1] < evals[0] - 0.5)
    ctx.check("the model is back in training mode", model.training)


class MoE(nn.Module):
    """A mixture of experts: a softmax router over ``n`` two-layer experts, top-2 combined."""

    def __init__(self, dim, n=4, hidden=64, top=2):
        super().__init__()
        self.router = nn.Linear(dim, n)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))
            for _ in range(n)
        )
        self.top = top
        self.balance = torch.tensor(0.0)

    def forward(self, h):
        probs = torch.softmax(self.router(h), -1)
        w, idx = probs.topk(self.top, -1)
        w = w / w.sum(-1, keepdim=True)
        outs = torch.stack([e(h) for e in self.experts], 1)  # (b, n, d)
        picked = outs.gather(1, idx[:, :, None].expand(-1, -1, h.shape[-1]))
        load = F.one_hot(idx[:, 0], probs.shape[-1]).float().mean(0)
        self.balance = probs.shape[-1] * (load * probs.mean(0)).sum()
        return (w[:, :, None] * picked).sum(1)


class CaprockNet(nn.Module):
    def __init__(self, d_in, dim=32):
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.norm = nn.LayerNorm(dim)
        self.moe = MoE(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.moe(self.norm(h))
        return self.head(h).squeeze(-1)


@scenario(
    family="salt_dome_caprock_depth_moe_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a residual regressor with a hand-written mixture-of-experts layer (inp, norm, moe with a softmax router over 4 SiLU experts, top-2, a load-balancing auxiliary loss, head) predicting the depth of a salt dome's caprock from 12 standardised survey readings (gravity anomaly, seismic two-way time, well logs, ...) with noisy picks, AdamW at 3e-3 with warm-up then cosine (LambdaLR), Huber loss, gradient clipping at 1. Trains normally.",
)
def h261_salt_dome_moe_control(ctx: Context) -> None:
    gen = seeded(26112)
    steps = 200
    model = CaprockNet(12)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)

    def lam(step):
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    stream = _readings(gen, 64, 12, 71, noise=0.15)
    used = []

    def loss_fn(out, y):
        return F.huber_loss(out, y, delta=1.0) + 0.01 * model.moe.balance

    def watch(step, out, x, y):
        with torch.no_grad():
            idx = torch.softmax(model.moe.router(model.norm(model.inp(x))), -1).argmax(-1)
            used.append(len(set(idx.tolist())))

    _train(ctx, model, opt, stream, steps, loss_fn, clip=1.0, sched=sched, watch=watch)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check("at least 3 experts still chosen at the end", min(used[-10:]) >= 3)


class CrossingNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2, then mean and log-variance heads."""

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
        return torch.cat([self.mean(h), self.log_var(h)], 1)


def _gauss_nll(out, y):
    out = out.float()
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="crab_migration_crossing_count_fp16_gaussian_net",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2) with mean and log-variance heads predicting a Gaussian over the (standardised, log) number of red crabs crossing a road during the island's annual migration from 10 standardised readings (rainfall, moon phase, hour, humidity, ...) with heteroscedastic noise, Gaussian negative log-likelihood, ASGD at 5e-2, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2, ReduceLROnPlateau, clipping at 2. Trains normally.",
)
def h261_crab_migration_fp16_control(ctx: Context) -> None:
    gen = seeded(26113)
    model = CrossingNet(10)
    opt = torch.optim.ASGD(model.parameters(), lr=5e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    stream = _readings(gen, 64, 10, 73, noise=0.0)

    def noisy():
        while True:
            x, y = next(stream)
            yield x, y + (0.05 + 0.2 * torch.sigmoid(x[:, 0])) * torch.randn(y.shape, generator=gen)

    _train(
        ctx,
        model,
        opt,
        noisy(),
        200,
        _gauss_nll,
        accumulate=2,
        clip=2.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("the loss scale stayed finite", all(math.isfinite(s) and s > 0 for s in ctx.scales))
