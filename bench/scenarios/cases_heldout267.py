"""Held-out set 267 (``h267_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a ball-mill grind-size SiLU regressor resumed with its
Adam state silently not loaded (a loss spike it recovers from), a chessboxing round-outcome ReLU
classifier at an SGD-momentum lr typed 0.3 for 0.03 (act2's units die), a welder's
bead-penetration BCE net under fp16 autocast whose power source starts logging milliamps (fc1's
fp16 matmul overflows), a santur course-recall attention net at an Adam lr typed 3e-2 for 3e-4
(attention logits grow), a grunion-run Gaussian-NLL net whose spread is sqrt of a raw linear
output (sqrt of a negative, NaN), a canal lockkeeper's fill-time GELU MLP whose input layer's
Adagrad group lr froze at its warm-up start (updates far too small), a sardine-run shoal-depth
regressor fed a sonar shard with its -9999 sentinel standardised (one bad batch), a cistern
overflow SiLU regressor whose warm-up peak lr was typed 2.0 for 0.2 (past 2/sharpness, blow-up),
a chocolatier's tempering classifier whose temperature was read as 0.002 for 2.0 (softmax
saturates), a ferryman's drift tanh RNN whose recurrent init gain was typed 3 for 1 (gradients
explode back through time), and three controls (a marzipan-mould BatchNorm CNN with noisy labels,
label smoothing and OneCycleLR, a shotcrete-rebound fp16 Huber net with a GradScaler,
accumulation and warm-up + cosine, an agogo bell-pattern GRU language model with tied weights
and ReduceLROnPlateau).

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


def _moved(model, w0):
    return {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm()) for n, p in model.named_parameters()
    }


# -- ball mill: a resume that restores the weights but drops Adam's state -----------------------

ONSET_MILL = 120


@scenario(
    family="ball_mill_ore_grind_size_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_MILL,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the P80 grind size leaving a mining concentrator's ball mill from 10 standardised readings (feed rate, ball charge, mill speed, pulp density, motor power, ...), Adam at 1e-2, MSE. At step 120 the job is pre-empted and resumed: the checkpoint restores the model but the optimizer state is saved under 'optim' and loaded from 'optimizer', so the load is skipped silently and Adam starts again with empty moments: its next updates are sign-like steps of the full lr on every weight, several times the converged run's, and the loss jumps for a few steps, then the run recovers. The gradient at the resume and the batches are ordinary; finite, no blow-up.",
)
def h267_ball_mill_resume_drops_adam_state(ctx: Context) -> None:
    def run(c, bug):
        gen = seeded(26701)
        model = Stack(10, hidden=128, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        xs = []

        def before(step):
            if bug and step == ONSET_MILL:
                opt.state.clear()  # the optimizer state dict was never loaded

        def watch(step, out, x, y):
            if ONSET_MILL - 1 <= step <= ONSET_MILL + 5:
                xs.append(float(x.abs().max()))

        _train(
            c, model, opt, _readings(gen, 64, 10, 61), 240, F.mse_loss, before=before, watch=watch
        )
        return xs

    twin = _Quiet()
    run(twin, bug=False)
    xs = run(ctx, bug=True)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_MILL - 20 : ONSET_MILL])
    peak = max(ls[ONSET_MILL + 1 : ONSET_MILL + 8])
    twin_peak = max(twin.losses[ONSET_MILL + 1 : ONSET_MILL + 8])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_MILL], ratio=0.5))
    ctx.check(f"the loss jumps over 4x its pre-resume median ({peak / pre:.1f}x)", peak > 4 * pre)
    ctx.check(
        "the gradient at the resume step is ordinary (under 3x the median before)",
        gn[ONSET_MILL] < 3 * _median(gn[ONSET_MILL - 20 : ONSET_MILL]),
    )
    ctx.check("the batches around the resume are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check("the twin with its state restored has no jump (under 2x)", twin_peak < 2 * pre)
    ctx.check(
        "the loss is back under 2x its pre-resume level 60 steps later",
        _mean(ls[ONSET_MILL + 55 : ONSET_MILL + 65]) < 2 * pre,
    )


# -- chessboxing: SGD momentum lr typed 0.3 for 0.03, ReLUs die ---------------------------------


@scenario(
    family="chessboxing_round_outcome_relu_classifier",
    optimizer="SGD(momentum=0.9)",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying how a chessboxing round ends (checkmate, knockout, flag fall, points, referee stop) from 16 standardised, heavily overlapping readings (clock times, punch counts, heart rate, material balance, ...), cross-entropy, SGD with momentum 0.9. The lr was meant as 0.03 and typed 0.3: the first large momentum steps drive fc2's biases and weights so far that most ReLU units of act2 never fire again on any input, their gradient is zero and they stay dead; the loss ends above where it started while the twin at the intended lr keeps nearly every unit alive and learns. Finite, no blow-up.",
)
def h267_chessboxing_sgd_lr_typo(ctx: Context) -> None:
    probe = next(_kinds(torch.Generator().manual_seed(5), 512, 16, 5, 67, noise=1.2))[0]

    def run(c, lr):
        gen = seeded(26702)
        model = Stack(16, hidden=64, out=5)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        batches = _kinds(gen, 64, 16, 5, 67, noise=1.2)
        _train(c, model, opt, batches, 160, F.cross_entropy, classifier=True)
        with torch.no_grad():
            h2 = model.act2(model.fc2(model.act1(model.fc1(probe))))
        return dead_fraction(h2)

    twin = _Quiet()
    t2 = run(twin, 0.03)
    d2 = run(ctx, 0.3)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(f"over half of act2's units are dead at the end ({d2:.2f})", d2 > 0.5)
    ctx.check(f"the intended lr keeps act2 under 10% dead ({t2:.2f})", t2 < 0.1)
    ctx.check(
        "the twin ends with a loss under 0.7x this run's",
        _mean(twin.losses[-10:]) < 0.7 * _mean(ls[-10:]),
    )


# -- welder: a power source that logs milliamps, under fp16 autocast -----------------------------

ONSET_WELD = 90


@scenario(
    family="welder_bead_penetration_fp16_bce_net",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ONSET_WELD,
    heldout=True,
    onset=ONSET_WELD,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting whether a weld bead reaches full penetration (pass/fail in the bend test) from 12 readings (arc current, voltage, travel speed, wire feed, gas flow, plate thickness, ...), BCE with logits, NAdam at 2e-3, fp16 autocast with a torch.amp.GradScaler. The arc current is standardised in amps; from step 90 the shop's new power source logs it in milliamps and the feature arrives raw (about 1.5e5): in float32 fc1's output would be finite, but under autocast fc1's fp16 matmul exceeds 65504 and gives inf, the logits are inf/NaN and the loss is non-finite at step 90.",
)
def h267_welder_milliamp_fp16_overflow(ctx: Context) -> None:
    gen = seeded(26703)
    model = Stack(12, hidden=64)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    seen = {}

    def beads():
        g = torch.Generator().manual_seed(71)
        w = torch.randn(12, generator=g)
        step = 0
        while True:
            x = torch.randn(64, 12, generator=gen)
            y = ((x @ w / math.sqrt(12) + 0.3 * torch.randn(64, generator=gen)) > 0).float()
            if step >= ONSET_WELD:
                x = x.clone()
                x[:, 0] = 1000.0 * (150.0 + 20.0 * x[:, 0])  # milliamps, unstandardised
            step += 1
            yield x, y

    def watch(step, out, x, y):
        if step == ONSET_WELD:
            with torch.no_grad():
                with torch.autocast("cpu", dtype=torch.float16):
                    h16 = model.fc1(x)
                h32 = model.fc1(x.float())
                seen["fc1_fp16_inf"] = bool(torch.isinf(h16).any())
                seen["fc1_fp16_dtype"] = str(h16.dtype)
                seen["fc1_fp32_max"] = float(h32.abs().max())
                seen["fp32_loss"] = float(F.binary_cross_entropy_with_logits(model(x.float()), y))

    _train(
        ctx,
        model,
        opt,
        beads(),
        200,
        F.binary_cross_entropy_with_logits,
        amp=True,
        scaler=scaler,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("the loss is non-finite first at step 90", _first_bad(ls) == ONSET_WELD)
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_WELD], ratio=0.8))
    ctx.check("fc1 ran in float16 under autocast", seen.get("fc1_fp16_dtype") == "torch.float16")
    ctx.check("fc1's fp16 output has inf at step 90", seen.get("fc1_fp16_inf", False))
    ctx.check(
        "in float32 fc1's output at step 90 is finite and over 65504",
        65504 < seen.get("fc1_fp32_max", 0.0) < float("inf"),
    )
    ctx.check(
        "in float32 the loss at step 90 is finite", math.isfinite(seen.get("fp32_loss", math.nan))
    )


# -- santur: course recall attention at an Adam lr typed 3e-2 for 3e-4 ---------------------------


class CourseAttention(nn.Module):
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


class CourseRecall(nn.Module):
    """tok + pos -> norm -> attn (residual) -> norm2 -> ff -> head on the last slot."""

    def __init__(self, vocab=18, dim=32, length=12):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = CourseAttention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        h = h + self.attn(self.norm(h))
        h = h + self.ff(self.norm2(h))
        return self.head(h[:, -1])


def _strikes(gen, batch, length=12, vocab=18):
    """A santur player's phrase: 12 mallet strikes, each on one of 18 string courses; the label
    is the course struck second (the phrase's anchor note), recalled at the last strike."""
    while True:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        yield x, x[:, 1]


@scenario(
    family="santur_mallet_course_recall_attention",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A hand-written one-layer attention net (tok, pos, norm, attn with q/k/v/o, norm2, ff, head) reading a santur player's phrase of 12 mallet strikes and recalling at the last strike which string course was struck second; Adam, cross-entropy. The lr was meant as 3e-4 and typed 3e-2: the query and key projections grow step after step and the pre-softmax attention logits q.k/sqrt(d) on a fixed probe grow over 20x from their start to the hundreds, attention goes one-hot; the intended rate keeps them far smaller. Finite, no blow-up.",
)
def h267_santur_course_attention_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(26704)
        model = CourseRecall()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        probe = next(_strikes(torch.Generator().manual_seed(9), 256))[0]
        peak = []

        def after(step):
            with torch.no_grad():
                model(probe)
                peak.append(float(model.attn.logits.abs().max()))

        _train(c, model, opt, _strikes(gen, 64), 200, F.cross_entropy, classifier=True, after=after)
        return peak

    twin = _Quiet()
    twin_peak = run(twin, 3e-4)
    peak = run(ctx, 3e-2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        f"the peak attention logit grew over 20x ({peak[-1] / peak[0]:.0f}x)",
        peak[-1] > 20 * peak[0],
    )
    ctx.check(f"the peak attention logit is over 50 at the end ({peak[-1]:.0f})", peak[-1] > 50)
    ctx.check("the intended lr keeps the peak 5x smaller", twin_peak[-1] < peak[-1] / 5)


ONSET_GRUNION = 54


# -- grunion run: a Gaussian NLL whose scale head takes sqrt of a raw linear output --------------


class SqrtScale(nn.Module):
    """The predictive spread: sqrt(lin(h)), meant as sqrt(softplus(lin(h)) + 1e-4)."""

    def __init__(self, hidden):
        super().__init__()
        self.lin = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.lin.bias.fill_(1.0)
        self.last = None

    def forward(self, h):
        raw = self.lin(h).squeeze(-1)
        self.last = raw.detach()
        return torch.sqrt(raw)


class BeachNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean = nn.Linear(hidden, 1)
        self.scale = SqrtScale(hidden)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.stack([self.mean(h).squeeze(-1), self.scale(h)], -1)


def _gauss_nll(out, y):
    mu, sd = out[:, 0], out[:, 1]
    return (torch.log(sd) + 0.5 * ((y - mu) / sd) ** 2).mean()


@scenario(
    family="grunion_run_beach_height_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("scale",),
    diverges=ONSET_GRUNION,
    heldout=True,
    onset=ONSET_GRUNION,
    note="A tanh MLP (fc1, act1, fc2, act2) with a mean head and a spread head (scale: lin, sqrt) predicting how high up the beach grunion strand to spawn on a spring-tide night from 9 standardised readings (tide height, moon phase, swell, beach slope, water temperature, ...), Gaussian negative log-likelihood, RAdam at 3e-3, the spread's bias started at 1. The spread was meant as sqrt(softplus(lin(h)) + 1e-4) and is sqrt(lin(h)): as the model learns the spread is small, lin(h) is pushed towards 0 and for one row of an ordinary batch it goes negative: sqrt of a negative gives NaN in the scale head, the loss is NaN and the run stops. The twin with softplus stays finite.",
)
def h267_grunion_sqrt_of_negative_spread(ctx: Context) -> None:
    seen = {}

    def run(c, fixed):
        gen = seeded(26705)
        model = BeachNet(9)
        if fixed:
            model.scale.forward = lambda h: torch.sqrt(
                F.softplus(model.scale.lin(h)).squeeze(-1) + 1e-4
            )
        opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

        def watch(step, out, x, y):
            if not fixed and not torch.isfinite(out).all() and "step" not in seen:
                seen["step"] = step
                seen["negative"] = bool((model.scale.last < 0).any())
                seen["x_max"] = float(x.abs().max())
                seen["y_max"] = float(y.abs().max())

        _train(c, model, opt, _readings(gen, 64, 9, 73, noise=0.1), 200, _gauss_nll, watch=watch)

    twin = _Quiet()
    run(twin, fixed=True)
    run(ctx, fixed=False)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check(f"the loss is non-finite first at step {ONSET_GRUNION} ({bad})", bad == ONSET_GRUNION)
    ctx.check(
        "finite and falling before it",
        _finite(ls[:ONSET_GRUNION]) and ls[ONSET_GRUNION - 1] < ls[0] - 0.2,
    )
    ctx.check("the scale head produced NaN first at that step", seen.get("step") == ONSET_GRUNION)
    ctx.check("a negative lin(h) under the sqrt at that step", seen.get("negative", False))
    ctx.check(
        "the batch is ordinary (|x| under 6, |y| under 4)",
        seen.get("x_max", 99.0) < 6 and seen.get("y_max", 99.0) < 4,
    )
    ctx.check("the softplus twin stays finite", _finite(twin.losses) and len(twin.losses) == 200)


# -- lockkeeper: a param group's warm-up factor evaluated once and frozen ------------------------


class FillNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head (GELU)."""

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
    family="lockkeeper_canal_lock_fill_time_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing how long a canal lockkeeper's chamber takes to fill from 12 standardised readings (head difference, paddle openings, chamber area, boat displacement, leakage, ...), MSE, Adagrad at 5e-2 with two param groups [fc1, rest]. The input layer was to be warmed up from a 1e-5 factor, and its group's lr was written as base_lr * warmup_factor(step) once when the optimizer was built (at step 0) and never updated: fc1 trains the whole run at 5e-7, its updates are about 1e-6 of its weights while the other layers' are thousands of times larger; the loss still falls through the other layers; finite, no blow-up.",
)
def h267_lockkeeper_group_lr_frozen_warmup(ctx: Context) -> None:
    gen = seeded(26706)
    model = FillNet(12)
    base = 5e-2

    def warmup_factor(step):
        return min(1.0, 1e-5 + step / 30)

    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1")]
    opt = torch.optim.Adagrad(
        [{"params": model.fc1.parameters(), "lr": base * warmup_factor(0)}, {"params": rest}],
        lr=base,
    )
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    ratio = {"fc1": [], "fc2": [], "head": []}
    prev = {}

    def before(step):
        prev.update({k: getattr(model, k).weight.detach().clone() for k in ratio})

    def after(step):
        for k in ratio:
            w = getattr(model, k).weight.detach()
            ratio[k].append(float((w - prev[k]).norm() / w.norm()))

    _train(ctx, model, opt, _readings(gen, 64, 12, 79), 200, F.mse_loss, before=before, after=after)
    moved = _moved(model, w0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check(
        f"fc1's median update is under 1e-5 of its weight ({_median(ratio['fc1']):.1e})",
        _median(ratio["fc1"]) < 1e-5,
    )
    ctx.check(
        "fc2's and head's median updates are over 1000x fc1's",
        min(_median(ratio["fc2"]), _median(ratio["head"])) > 1000 * _median(ratio["fc1"]),
    )
    ctx.check(
        f"fc1 moved under 1e-3 of its norm ({moved['fc1.weight']:.1e})", moved["fc1.weight"] < 1e-3
    )
    ctx.check("fc2 moved over 1e-2 of its norm", moved["fc2.weight"] > 1e-2)


# -- sardine run: the sonar's missing-depth sentinel standardised with the rest ------------------

ONSET_SARDINE = 130


@scenario(
    family="sardine_run_shoal_depth_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SARDINE,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the depth of the sardine-run shoal off the Wild Coast from 10 standardised readings (sea temperature, current, gannet count, dolphin sightings, sonar echo strength, ...), SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at 1. One boat's sonar writes -9999 when it loses the echo and its shard was standardised without filtering the sentinel: at step 130 six rows of one batch carry a feature of about -1000; the loss and gradient at that step are over a hundred times the others. The other batches are ordinary; clipped, the run recovers; finite.",
)
def h267_sardine_sonar_sentinel_batch(ctx: Context) -> None:
    gen = seeded(26707)
    model = Stack(10, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_SARDINE:
            x = x.clone()
            x[:6, 4] = (-9999.0 - 35.0) / 10.0  # the sentinel, standardised with mean 35, sd 10
            seen["x_min"] = float(x.min())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 83), 240, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_SARDINE - 20 : ONSET_SARDINE])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SARDINE], ratio=0.6))
    ctx.check("loss at the onset over 100x the median before", ls[ONSET_SARDINE] > 100 * pre)
    ctx.check(
        "gradient at the onset over 30x the median before",
        gn[ONSET_SARDINE] > 30 * _median(gn[ONSET_SARDINE - 20 : ONSET_SARDINE]),
    )
    ctx.check("the batch carries the sentinel (x under -900)", seen.get("x_min", 0.0) < -900)
    ctx.check(
        "the loss is back under 3x its pre-onset level 60 steps later",
        _mean(ls[ONSET_SARDINE + 55 : ONSET_SARDINE + 65]) < 3 * pre,
    )


# -- cistern: a warm-up whose peak lr was typed 10x ---------------------------------------------


def _sharpness(model, loss_fn, x, y, iters=20):
    """The top Hessian eigenvalue of the loss on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


PEAK_CISTERN = 2.0
ONSET_CISTERN = 25


@scenario(
    family="cistern_overflow_level_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_CISTERN,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how high a rain-fed village cistern fills before its overflow from 8 standardised readings (rainfall, roof area, gutter condition, draw-off, evaporation, ...), plain SGD, MSE, a linear warm-up over 100 steps to a peak lr meant as 0.2 and typed 2.0. The product of the lr and the loss's top Hessian eigenvalue (measured on a fixed probe) is under 2 early in the warm-up and passes the 2/sharpness stability limit near step 25 (lr about 0.5); the run oscillates at the edge of stability while the lr keeps rising, and around step 50 the loss blows up to inf/NaN. The twin warmed up to 0.2 trains normally.",
)
def h267_cistern_warmup_peak_typo(ctx: Context) -> None:
    probe = next(_readings(torch.Generator().manual_seed(3), 256, 8, 89))

    def run(c, peak, measure):
        gen = seeded(26708)
        model = Stack(8, hidden=32, act=nn.SiLU)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        lrs, sharp = [], {}

        def before(step):
            lr = peak * min(1.0, (step + 1) / 100)
            for g in opt.param_groups:
                g["lr"] = lr
            lrs.append(lr)
            if measure and step % 5 == 0:
                sharp[step] = _sharpness(model, F.mse_loss, *probe)

        _train(c, model, opt, _readings(gen, 64, 8, 89), 160, F.mse_loss, before=before)
        return lrs, sharp

    twin = _Quiet()
    run(twin, PEAK_CISTERN / 10, False)
    lrs, sharp = run(ctx, PEAK_CISTERN, True)
    ls = ctx.losses
    product = {s: lrs[s] * lam for s, lam in sharp.items() if math.isfinite(lam)}
    cross = min((s for s, v in product.items() if v > 2), default=None)
    blow = next(
        (i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * min(ls[: i + 1])), None
    )
    ctx.check("lr x sharpness under 2 at step 10", product.get(10, 9.0) < 2)
    ctx.check(
        f"lr x sharpness first over 2 near step {ONSET_CISTERN} ({cross})",
        cross is not None and abs(cross - ONSET_CISTERN) <= 10,
    )
    ctx.check(
        f"the loss blows up (over 100x its minimum) after the crossing ({blow})",
        blow is not None and cross is not None and blow > cross,
    )
    ctx.check(
        "the twin at the intended peak stays finite and trains", _fell(twin.losses, ratio=0.7)
    )


# -- chocolatier: a temperature typed 0.002 for 2.0 divides the logits ----------------------------


class TemperNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, logits divided by a temperature."""

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
    family="chocolatier_temper_curve_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying a chocolatier's tempering run (untempered, form IV, form V, overheated, seeded, bloom risk) from 14 standardised points of its cooling curve and viscosity, cross-entropy, Adamax at 2e-3. The head's logits are divided by a softening temperature meant as 2.0 and read from a config in the wrong unit as 0.002: the scaled logits are hundreds of times too large and within tens of steps the softmax of most rows gives the target exactly 1.0 in float32 (and the others exactly 0); the twin at 2.0 has no saturated row. Finite, no blow-up.",
)
def h267_chocolatier_temperature_unit_typo(ctx: Context) -> None:
    probe = next(_kinds(torch.Generator().manual_seed(11), 512, 14, 6, 97, noise=0.5))

    def run(c, temperature):
        gen = seeded(26709)
        model = TemperNet(14, 6, temperature)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 14, 6, 97, noise=0.5),
            150,
            F.cross_entropy,
            classifier=True,
        )
        with torch.no_grad():
            return collapsed_fraction(model(probe[0]), probe[1])

    twin = _Quiet()
    t_col = run(twin, 2.0)
    col = run(ctx, 0.002)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(f"over half the probe rows saturated to exactly 1.0 ({col:.2f})", col > 0.5)
    ctx.check(f"the twin at 2.0 has under 5% saturated ({t_col:.2f})", t_col < 0.05)


# -- ferryman: a hand-written RNN whose recurrent init gain was typed 3 for 1 ---------------------


class HandRNNCell(nn.Module):
    """h' = tanh(inp(x) + rec(h)); rec's weights N(0, gain^2 / hidden)."""

    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        nn.init.normal_(self.rec.weight, std=gain / math.sqrt(hidden))

    def forward(self, x, h):
        return torch.tanh(self.inp(x) + self.rec(h))


class DriftRNN(nn.Module):
    def __init__(self, d_in=3, hidden=48, gain=1.0):
        super().__init__()
        self.cell = HandRNNCell(d_in, hidden, gain)
        self.head = nn.Linear(hidden, 1)
        self.hidden = hidden
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _crossings(gen, batch, length=30):
    """A river ferry crossing: per minute (current, wind, rudder angle); the target is the
    final downstream drift, a decaying sum of the minutes' pushes."""
    decay = 0.9 ** torch.arange(length - 1, -1, -1).float()
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        push = 0.6 * x[:, :, 0] + 0.3 * x[:, :, 1] - 0.4 * torch.tanh(x[:, :, 2])
        yield x, (push * decay).sum(1) / 3.0


@scenario(
    family="ferryman_river_crossing_drift_rnn",
    optimizer="SGD(nesterov=True)",
    cause="exploding_gradients",
    where=("cell", "cell.rec"),
    diverges=None,
    heldout=True,
    note="A hand-written tanh RNN (cell: inp, rec; then head) reading a river ferryman's crossing minute by minute (current, wind, rudder angle) over 30 minutes and regressing the final downstream drift, MSE, SGD with Nesterov momentum 0.9 at 5e-3, gradient clipping at 1. The recurrent init draws rec's weights N(0, gain^2/hidden) with the gain meant as 1.0 and typed 3.0: the recurrence sits in tanh's chaotic regime, the loss gradient grows step after step back through time, the gradient on the first hidden state is over 100x the last's, and the clipped updates thrash while the gain-1 twin trains; the tanh keeps the loss finite, no blow-up.",
)
def h267_ferryman_recurrent_gain_typo(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(26710)
        model = DriftRNN(gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
        ratio = []
        batches = _crossings(gen, 64)
        c.attach(model, opt)
        for _ in range(150):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            first, last = model.states[0].grad.norm(), model.states[-1].grad.norm()
            ratio.append(float(first / last))
            c.grad_norms.append(grad_norm(model))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            c.step(loss.detach())
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss.detach())):
                break
        return ratio

    twin = _Quiet()
    twin_ratio = run(twin, 1.0)
    ratio = run(ctx, 3.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        f"the first state's gradient over 100x the last's at step 0 ({ratio[0]:.0f})",
        ratio[0] > 100,
    )
    ctx.check(f"still over 100x at the end ({ratio[-1]:.0f})", ratio[-1] > 100)
    ctx.check(f"with gain 1 the ratio is under 10 ({twin_ratio[0]:.1f})", twin_ratio[0] < 10)
    ctx.check(
        "the twin trains to under 0.7x of this run's final loss",
        _mean(twin.losses[-10:]) < 0.7 * _mean(ls[-10:]),
    )


# -- controls ------------------------------------------------------------------------------------


class MouldCNN(nn.Module):
    """conv1 -> bn1 -> relu -> pool -> conv2 -> bn2 -> relu -> pool -> head on 12x12 images."""

    def __init__(self, classes=4, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * 9, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


def _imprints(gen, batch, flip=0.0, size=12):
    """Grey 12x12 photos of a marzipan mould's imprint: ridges at one of four angles (the mould's
    pattern), random ridge spacing and phase, shading and noise; ``flip`` of the labels wrong."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    angles = torch.tensor([0.0, 0.25, 0.5, 0.75]) * math.pi
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        a = angles[y][:, None, None]
        freq = 0.9 + 0.5 * torch.rand(batch, 1, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, 1, generator=gen)
        img = torch.sin(freq * (xx * torch.cos(a) + yy * torch.sin(a)) + phase)
        img = img + 0.3 * torch.randn(batch, 1, 1, generator=gen) * (xx / size)
        img = img + 0.5 * torch.randn(batch, size, size, generator=gen)
        noisy = y.clone()
        wrong = torch.rand(batch, generator=gen) < flip
        noisy[wrong] = torch.randint(0, 4, (int(wrong.sum()),), generator=gen)
        yield img[:, None], noisy


@scenario(
    family="marzipan_mould_imprint_bn_cnn",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written conv net with BatchNorm (conv1, bn1, conv2, bn2, head) classifying which of four carved marzipan moulds pressed an imprint from grey 12x12 photos (ridges at one of four angles, random spacing, shading and noise); a fifth of the training labels are wrong (sorters' mistakes), cross-entropy with label smoothing 0.1, SGD with momentum 0.9 and weight decay 5e-4 under a OneCycleLR to 0.1, 150 steps. An ordinary run: the loss falls and a clean probe is classified well.",
)
def h267_marzipan_mould_bn_cnn_noisy_labels(ctx: Context) -> None:
    gen = seeded(26711)
    model = MouldCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=150)
    _train(
        ctx,
        model,
        opt,
        _imprints(gen, 64, flip=0.2),
        150,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    model.eval()
    x, y = next(_imprints(torch.Generator().manual_seed(13), 512))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.8))
    ctx.check(f"clean probe accuracy over 0.8 ({acc:.2f})", acc > 0.8)


class ReboundNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head (SiLU)."""

    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _rebound(gen, batch, d_in=11, seed=101):
    """Standardised spraying readings and a rebound fraction with heavy-tailed noise."""
    base = _readings(gen, batch, d_in, seed, noise=0.0)
    t = torch.distributions.StudentT(3.0)
    while True:
        x, y = next(base)
        yield x, y + 0.1 * t.sample((batch,))


@scenario(
    family="shotcrete_rebound_fp16_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how much sprayed shotcrete rebounds off a tunnel wall from 11 standardised readings (nozzle distance, air pressure, accelerator dose, aggregate size, wall angle, ...) with heavy-tailed Student-t noise, Huber loss, AdamW at 3e-3 with weight decay 1e-2 on the weights and none on the biases (two param groups), fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, clipping at 1 after unscaling, a linear warm-up of 20 steps then cosine decay. An ordinary mixed-precision run.",
)
def h267_shotcrete_fp16_huber_control(ctx: Context) -> None:
    gen = seeded(26712)
    model = ReboundNet(11)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 180

    def schedule(s):
        return (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _rebound(gen, 64),
        steps,
        lambda out, y: F.huber_loss(out.float(), y, delta=0.5),
        amp=True,
        scaler=scaler,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check(
        "the loss scale stayed finite and positive", all(0 < v < float("inf") for v in ctx.scales)
    )


class PatternLM(nn.Module):
    """emb -> gru -> norm -> head, the head's weight tied to the embedding."""

    def __init__(self, vocab=64, dim=48):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight
        nn.init.normal_(self.emb.weight, std=0.05)

    def forward(self, idx):
        h, _ = self.gru(self.emb(idx))
        return self.head(self.norm(h))


def _lm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    family="agogo_bell_pattern_tied_gru_lm",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A next-stroke model for an agogo player's transcribed bell patterns (emb, gru, norm, head with the head's weight tied to the embedding, initialised N(0, 0.05^2)), trained on 64-symbol stroke sequences (here the bytes of a few standard-library sources folded into 64 symbols), cross-entropy, Adam at 3e-3, clipping at 1, ReduceLROnPlateau on the training loss, 200 steps. An ordinary language-model run.",
)
def h267_agogo_tied_gru_control(ctx: Context) -> None:
    gen = seeded(26713)
    model = PatternLM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    batches = text_batches(gen, batch=16, length=32, vocab=64)
    _train(ctx, model, opt, batches, 200, _lm_loss, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("the head is tied to the embedding", model.head.weight is model.emb.weight)
