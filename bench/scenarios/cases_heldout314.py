"""Held-out set 314 (``h314_``): hand-written models of trades, crafts, sports and instruments
not covered before: a wingfoil pump-phase perceiver (a latent array cross-attending to the frames)
run at the small-MLP recipe's learning rate with no decay on q and k (cross-attention logits
grow), an ocean-rowing shift-split SiLU regressor whose preempted job resumes with a fresh Adam
and MultiStepLR (one loss spike), a packrafting rapid-grade GELU classifier whose loss normaliser
is left at 1 by the checkpoint hook for one step (one gradient burst), a ski-mountaineering skin
track ReLU classifier on a BatchNorm net's learning rate (dead ReLUs), a cherry-pit spitting foul
net with a hand-written unclamped BCE (log 0, NaN), a sandboard run-speed ReLU regressor fed one
station's sand temperature in kelvin (one corrupted batch), a cobza string-course two-group
classifier whose head warm-up lambda uses integer division (head frozen), a fat-bike rolling
resistance tanh regressor whose learning rate is linearly scaled twice (past the stability
limit), a trials-bike hop-height fp16 regressor fed raw ADC counts (fp16 overflow), a xun
breath 16-layer tanh MLP whose variance-scaling factor is used as a gain (gradients grow through
depth), and three controls (a lorinery strike bf16 Conv1d classifier with AdamW and weight decay,
a jorkyball rally classifier with OneCycleLR and label smoothing, a mixed-climbing torque-hook
Huber regressor with RAdam, accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, grad_norm, scenario, seeded


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


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    scaler=None,
    amp=None,
    accumulate=1,
    clip=None,
    sched=None,
    before=None,
    alter=None,
    watch=None,
    after=None,
    reduce=None,
    skip_nonfinite=False,
):
    """The file's training loop. ``before(step)`` runs first; ``alter(step, x, y)`` changes a
    batch; ``watch(step, out, x, y)`` sees each forward pass; ``reduce(step, loss, accumulate)``
    gives the micro-batch loss actually backpropagated (``loss / accumulate`` unless a bug says
    otherwise); ``after(step)`` runs after the optimizer step. ``amp`` is an autocast dtype.
    Stops after a non-finite loss (once ``ctx.step`` has seen it) unless ``skip_nonfinite`` (a
    GradScaler run that skips those steps); returns the step it stopped at."""
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
            with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = reduce(step, loss, accumulate) if reduce is not None else loss / accumulate
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
        if not math.isfinite(shown) and not skip_nonfinite:
            return step
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised sensor readings and smooth nonlinear targets of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.sin(x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


def _kinds(gen, batch, d_in, classes, seed, spread=1.0, flip=0.0):
    """Readings around one prototype per class; ``flip`` of the labels are noisy."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + spread * torch.randn(batch, d_in, generator=gen)
        if flip:
            wrong = torch.rand(batch, generator=gen) < flip
            y = torch.where(wrong, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


class Stack(nn.Module):
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


# -- wingfoil: a perceiver at the small-MLP learning rate, no qk-norm -----------------------------


class LatentCrossAttention(nn.Module):
    """Latents (queries) attend to the input frames (keys, values); keeps its largest logit."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.max_logit = 0.0

    def forward(self, lat, x):
        b, t, d = x.shape
        h = self.heads
        q = self.q(lat).reshape(b, -1, h, d // h).transpose(1, 2)
        k = self.k(x).reshape(b, t, h, d // h).transpose(1, 2)
        v = self.v(x).reshape(b, t, h, d // h).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        self.max_logit = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, -1, d))


class PumpPerceiver(nn.Module):
    """Perceiver-style: a learned latent array cross-attends to the embedded frames, a latent MLP,
    mean over latents, a classifier head."""

    def __init__(self, d_in=6, frames=24, dim=32, latents=8, classes=5):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.pos = nn.Parameter(0.1 * torch.randn(frames, dim))
        self.latents = nn.Parameter(torch.randn(latents, dim))
        self.cross_attn = LatentCrossAttention(dim)
        self.ln = nn.LayerNorm(dim)
        self.latent_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        e = self.embed(x) + self.pos
        lat = self.latents.expand(x.shape[0], -1, -1)
        lat = lat + self.cross_attn(lat, e)
        lat = lat + self.latent_mlp(self.ln(lat))
        return self.head(lat.mean(1))


def _pump_frames(gen, batch, seed, frames=24, d_in=6, classes=5):
    """24 frames of 6 board readings; one frame carries the marker (channel 0) and the pump
    pattern that decides the class, the others are chop."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.5 * torch.randn(classes, d_in - 1, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = torch.randn(batch, frames, d_in, generator=gen)
        x[:, :, 0] = 0.0
        at = torch.randint(0, frames, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, at, 0] = 3.0
        x[rows, at, 1:] = protos[y] + 0.5 * torch.randn(batch, d_in - 1, generator=gen)
        yield x, y


@scenario(
    family="wingfoil_pump_phase_perceiver",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("cross_attn",),
    diverges=None,
    heldout=True,
    note="A hand-written perceiver (embed, learned pos, a latent array of 8 that cross-attends to the frames in cross_attn, LayerNorm, latent_mlp, mean over latents, head) classifying a wingfoil rider's pump phase (5 kinds) from 24 frames of 6 board readings, one marked frame carrying the pattern. AdamW, cross-entropy, 200 steps. The run copies the learning rate of the team's small-MLP recipe (2e-2, for 1e-3) and its no-decay filter, which matches every name containing 'q' or 'k' (so the query and key projections get no weight decay); there is no qk-norm. The query and key weights grow and the cross-attention logits q.k/sqrt(d) grow from about 1 to over 100 (the same model at lr 1e-3 stays under 20), the attention saturating onto single frames and the loss turning unstable.",
)
def h314_wingfoil_perceiver_logits(ctx: Context) -> None:
    gen = seeded(31401)
    model = PumpPerceiver()
    decay = [p for n, p in model.named_parameters() if "q" not in n and "k" not in n]
    no_decay = [p for n, p in model.named_parameters() if "q" in n or "k" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-2,
    )
    logits = []

    def watch(step, out, x, y):
        logits.append(model.cross_attn.max_logit)

    _train(
        ctx,
        model,
        opt,
        _pump_frames(gen, 32, seed=314),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    early = _mean(logits[:5])
    ctx.check(
        "the cross-attention's largest logit grows over 80x its start",
        max(logits[-20:]) > 80 * early,
    )
    ctx.check(
        "the largest logit averages over 100 in the last 10 steps (under 20 at lr 1e-3)",
        _mean(logits[-10:]) > 100,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- ocean rowing: a preempted job resumes with a fresh optimizer and scheduler ------------------

RESUME_OCR = 150


@scenario(
    family="ocean_rowing_shift_split_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=RESUME_OCR,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing an ocean-rowing crew's split and drift over a two-hour shift (2 outputs, standardised) from 12 readings of wind, swell, current and stroke rate, Adam at 3e-2 with a MultiStepLR (x0.1 at steps 60 and 120), MSE, 280 steps. The job is preempted after step 149 and resumes from its checkpoint; the resume code reloads the model's weights but builds a fresh Adam and a fresh MultiStepLR (their state dicts were never saved). The learning rate jumps from 3e-4 back to 3e-2 with empty moments, so the first updates move every weight by about the full learning rate: the loss jumps on ordinary data and trains back down once the new schedule decays.",
)
def h314_ocean_rowing_fresh_optimizer_resume(ctx: Context) -> None:
    gen = seeded(31402)
    model = Stack(12, 64, out=2, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60, 120], gamma=0.1)
    lrs = []

    def after(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step == RESUME_OCR - 1:
            # the resume: weights from the checkpoint (the same ones), but Adam and the
            # MultiStepLR rebuilt from scratch: empty moments, lr back at 3e-2, milestones
            # counted again from 0
            opt.state.clear()
            opt.param_groups[0]["lr"] = 3e-2
            sched.last_epoch = 0

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=3142, outputs=2),
        280,
        F.mse_loss,
        sched=sched,
        after=after,
    )
    ls = ctx.losses
    before = _mean(ls[RESUME_OCR - 10 : RESUME_OCR])
    ctx.check(
        "the learning rate after the resume is 100x the one before",
        lrs[RESUME_OCR] > 50 * lrs[RESUME_OCR - 2],
    )
    ctx.check(
        "a loss within 5 steps of the resume is over 4x the ten before",
        max(ls[RESUME_OCR : RESUME_OCR + 5]) > 4 * before,
    )
    ctx.check(
        "the last ten losses are back under 1.5x the pre-resume level",
        _mean(ls[-10:]) < 1.5 * before,
    )
    ctx.check("finite throughout", _finite(ls))


# -- packrafting: the loss normaliser is reset to 1 by the checkpoint hook for one step -----------

ONSET_PKR = 110


@scenario(
    family="packrafting_rapid_grade_gelu_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PKR,
    note="A GELU MLP (fc1, act1, fc2, act2, head) grading a packrafting rapid (6 grades) from 14 readings of gradient, flow and obstacles, SGD with Nesterov momentum 0.9 at 2e-2, cross-entropy summed over the batch and divided by n_rows (set by the loader for each batch), 220 steps. The checkpoint hook after step 109 reuses the name n_rows for its own counter and leaves it at 1, so step 110 divides its summed loss by 1 instead of 64: one ordinary batch's gradient is 64x, then the loader sets n_rows right again.",
)
def h314_packrafting_normaliser_reset(ctx: Context) -> None:
    gen = seeded(31403)
    model = Stack(14, 64, out=6, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    state = {"n_rows": 64}

    def reduce(step, loss, accumulate):
        return loss * 64 / state["n_rows"]  # summed over the batch, divided by n_rows

    def after(step):
        # the loader sets n_rows for each batch; the checkpoint hook reuses the name as its
        # own counter and leaves it at 1 for the step after the save
        state["n_rows"] = 1 if step == ONSET_PKR - 1 else 64

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 6, seed=3143),
        220,
        F.cross_entropy,
        classifier=True,
        reduce=reduce,
        after=after,
    )
    g = ctx.grad_norms
    base = _median(g[ONSET_PKR - 20 : ONSET_PKR])
    ctx.check(
        "the gradient at step 110 is over 30x the median of the 20 before", g[ONSET_PKR] > 30 * base
    )
    ctx.check(
        "the gradient is back under 3x that median 10 steps later",
        max(g[ONSET_PKR + 10 : ONSET_PKR + 20]) < 3 * base,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- ski mountaineering: a BN-net's learning rate on a plain ReLU MLP -----------------------------


@scenario(
    family="skimo_skin_track_relu_classifier",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying a ski-mountaineering skin track's snow (7 kinds) from 16 readings of slope, skin glide and snow temperature, SGD with momentum 0.9, cross-entropy, 200 steps. The config was copied from the team's BatchNorm ConvNet recipe (lr 0.3) but this model has no normalisation: the run learns for 40 steps, then large updates drive act2's units' pre-activations negative for every input, one after another, and the dead ReLUs never come back (the loss returns to chance and stays there).",
)
def h314_skimo_dead_relus(ctx: Context) -> None:
    gen = seeded(31404)
    model = Stack(16, 64, out=7)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    dead = []

    def watch(step, out, x, y):
        if step % 10 == 0:
            with torch.no_grad():
                h1 = model.act1(model.fc1(x))
                dead.append((dead_fraction(h1), dead_fraction(model.act2(model.fc2(h1)))))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 7, seed=3144),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under a fifth of the units are dead at the start", max(dead[0]) < 0.2)
    ctx.check(
        "over half of act2's units are dead over the last 50 steps",
        min(d[1] for d in dead[-5:]) > 0.5,
    )
    ctx.check(
        "the last 20 losses are near chance (over 0.9 ln 7): the run stopped learning",
        _mean(ctx.losses[-20:]) > 0.9 * math.log(7),
    )
    ctx.check("the loss had fallen under 1.2 before the units died", min(ctx.losses[:60]) < 1.2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- cherry-pit spitting: a hand-written BCE with no clamp ---------------------------------------


class FoulNet(Stack):
    def __init__(self):
        super().__init__(10, 48, out=1, act=nn.ReLU)


def _bce_by_hand(z, y):
    p = torch.sigmoid(z)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def _fouls(gen, batch, seed):
    """Spits are foul when the toe crosses the line: a clean margin in the readings."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = (x @ w > 0).float()
        yield x, y


DIVERGE_CHP = 68


@scenario(
    family="cherry_pit_spitting_foul_bce_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("head",),
    diverges=DIVERGE_CHP,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) calling a cherry-pit spitting attempt foul from 10 readings of the spitter's toe and stance, NAdam at 3e-3, binary cross-entropy written by hand as -(y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))) with no clamp or logsigmoid, 300 steps planned. The classes separate cleanly and the head's logits grow; once a positive row's logit passes about 17, sigmoid rounds to exactly 1.0 in float32, log(1 - p) is -inf and 0 * -inf is NaN.",
)
def h314_cherry_pit_unclamped_bce(ctx: Context) -> None:
    gen = seeded(31405)
    model = FoulNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    top = []

    def watch(step, out, x, y):
        top.append(float(out.detach().max()))

    _train(ctx, model, opt, _fouls(gen, 64, seed=3145), 300, _bce_by_hand, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(f"the loss is NaN at step {DIVERGE_CHP}", bad == DIVERGE_CHP)
    ctx.check(
        "the head's largest logit passes 16.6 at the NaN step", bad is not None and top[bad] > 16.6
    )
    ctx.check("the loss is finite before that step", bad is not None and _finite(ctx.losses[:bad]))


# -- sandboarding: one station's sand temperature logged in kelvin -------------------------------

ONSET_SBD = 100


@scenario(
    family="sand_boarding_run_speed_relu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SBD,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a sandboard run's top speed (standardised) from 10 readings of dune slope, sand grain, moisture and sand temperature, RMSprop at 1e-3, MSE, 220 steps. The batch at step 100 comes from one dune station whose logger writes the sand temperature in kelvin rather than as a standardised value: that column reads about 300 instead of about 0 for the whole batch. One batch's loss and gradient explode; the following batches are clean and the run recovers.",
)
def h314_sand_boarding_kelvin_shard(ctx: Context) -> None:
    gen = seeded(31406)
    model = Stack(10, 64)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == ONSET_SBD:
            x = x.clone()
            x[:, 3] = 300.0 + 5.0 * x[:, 3]
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=3146), 220, F.mse_loss, alter=alter)
    ls, g = ctx.losses, ctx.grad_norms
    base_g = _median(g[ONSET_SBD - 20 : ONSET_SBD])
    base_l = _mean(ls[ONSET_SBD - 10 : ONSET_SBD])
    ctx.check(
        "the gradient at step 100 is over 20x the median of the 20 before",
        g[ONSET_SBD] > 20 * base_g,
    )
    ctx.check("the loss at step 100 is over 20x the ten before", ls[ONSET_SBD] > 20 * base_l)
    ctx.check("the last ten losses are under 2x the pre-shard level", _mean(ls[-10:]) < 2 * base_l)
    ctx.check("finite throughout", _finite(ls))


# -- cobza: the new head's warm-up lambda uses integer division -----------------------------------


@scenario(
    family="cobza_string_course_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) naming which of a cobza's 5 string courses was plucked from 12 readings of the soundboard, Adagrad at 5e-2 in two param groups (trunk, new head) under a LambdaLR with one lambda per group, cross-entropy, 200 steps. The head's warm-up lambda is written min(1, step // 300) instead of min(1, step / 300): integer division gives 0 for every step of the run, so the head's learning rate is exactly 0 and it stays at its random init while the trunk trains.",
)
def h314_cobza_head_floor_warmup(ctx: Context) -> None:
    gen = seeded(31407)
    model = Stack(12, 64, out=5, act=nn.GELU)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adagrad(
        [{"params": trunk}, {"params": list(model.head.parameters())}], lr=5e-2
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: 1.0, lambda s: min(1.0, s // 300)])
    head0, fc1_0 = _flat(model.head), _flat(model.fc1)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=3147),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
    )
    head_moved = float((_flat(model.head) - head0).norm() / head0.norm())
    fc1_moved = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    ctx.check("the head moved less than 1e-6 of its norm", head_moved < 1e-6)
    ctx.check("fc1 moved over 5% of its norm", fc1_moved > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- fat bike: the linear scaling rule applied to the global batch twice -------------------------


def _top_eig(model, loss_fn, x, y, iters=12):
    """Largest Hessian eigenvalue of the loss at (x, y), by power iteration on HVPs."""
    params = [p for p in model.parameters()]
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


WARM_FAT, ONSET_FAT = 100, 26


@scenario(
    family="fat_bike_snow_rolling_resistance_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_FAT,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a fat bike's rolling resistance on snow (standardised) from 8 readings of tyre pressure, snow density and temperature, plain SGD, MSE, batch 256, 150 steps with a linear warm-up over 100 steps. The recipe's lr 0.02 is for batch 32; the launcher applies the linear scaling rule (x 256/32) and the config loader applies it again, so the warm-up climbs towards 1.28 instead of 0.16. Learning rate times the loss's top Hessian eigenvalue (power iteration on a fixed batch) passes 2 at step 26, hovers at 2-3 for a while, then the loss blows up.",
)
def h314_fat_bike_double_lr_scaling(ctx: Context) -> None:
    gen = seeded(31408)
    model = Stack(8, 32, act=nn.Tanh)
    peak = 0.02 * (256 / 32) * (256 / 32)
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARM_FAT))
    batches = _readings(gen, 256, 8, seed=3148)
    xp, yp = next(batches)
    products = []

    def before(step):
        if step % 2 == 0 and _finite(ctx.losses):
            lam = _top_eig(model, F.mse_loss, xp, yp)
            products.append((step, opt.param_groups[0]["lr"] * lam))

    _train(ctx, model, opt, batches, 150, F.mse_loss, sched=sched, before=before)
    ls = ctx.losses
    crossed = next((s for s, p in products if p > 2.0), None)
    ctx.check(
        "lr x top Hessian eigenvalue first passes 2 within 6 steps of step 26",
        crossed is not None and abs(crossed - ONSET_FAT) <= 6,
    )
    ctx.check(
        "the loss blows up to over 100x its low (or NaN)",
        not _finite(ls) or max(ls) > 100 * min(ls),
    )


# -- trials bike: raw load-cell counts under fp16 autocast ----------------------------------------


def _hops(gen, batch, seed):
    """Rear-wheel load-cell readings in raw ADC counts (about 40000 +- 8000) and hop heights."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        z = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(z @ w / math.sqrt(8)) + 0.05 * torch.randn(batch, generator=gen)
        yield 40000.0 + 8000.0 * z, y


class HopNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(64, 1)
        self.peak = {}

    def forward(self, x):
        h1 = self.fc1(x)
        h2 = self.fc2(self.act1(h1))
        self.peak = {
            "fc1": float(h1.detach().float().abs().max()),
            "fc2": float(h2.detach().float().abs().max()),
        }
        return self.head(self.act2(h2)).squeeze(-1)


DIVERGE_TRB = 6


@scenario(
    family="trials_bike_hop_height_fp16_relu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=DIVERGE_TRB,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a trials-bike rider's hop height (standardised) from 8 rear-wheel load-cell readings, trained under fp16 autocast with a torch.amp.GradScaler, Adamax at 2e-3, MSE, 200 steps. The load cells are fed as raw 16-bit ADC counts (about 40000 each) because the normalisation step was left out of the new loader: fc1's fp16 outputs sit just under 65504 and on many batches pass it, so the forward pass overflows to inf (loss NaN from step 6). Each overflow halves the GradScaler's scale and skips the step; the scale falls below 1e-10, the gradients underflow and the run stops learning.",
)
def h314_trials_bike_raw_counts_fp16(ctx: Context) -> None:
    gen = seeded(31409)
    model = HopNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    peaks = []

    def watch(step, out, x, y):
        peaks.append(dict(model.peak))

    _train(
        ctx,
        model,
        opt,
        _hops(gen, 64, seed=3149),
        200,
        F.mse_loss,
        amp=torch.float16,
        scaler=scaler,
        watch=watch,
        skip_nonfinite=True,
    )
    ls = ctx.losses
    overflowed = sum(1 for p in peaks if not math.isfinite(p["fc1"]))
    ctx.check(f"the loss is first non-finite at step {DIVERGE_TRB}", _first_bad(ls) == DIVERGE_TRB)
    ctx.check("fc1's fp16 output overflows to inf on over 10 steps", overflowed > 10)
    ctx.check("the scaler's scale falls below 1e-10", min(ctx.scales) < 1e-10)
    finite = [v for v in ls if math.isfinite(v)]
    ctx.check(
        "the finite losses of the last 50 steps are over a fifth of the first 10",
        _mean([v for v in ls[-50:] if math.isfinite(v)]) > 0.2 * _mean(finite[:10]),
    )


# -- xun: a variance-scaling factor read as a gain -----------------------------------------------


class DeepBreath(nn.Module):
    """16 Linear+Tanh layers (layers.0, layers.2, ..., layers.30) and a head."""

    def __init__(self, d_in=10, width=64, depth=16, init_scale=3.0):
        super().__init__()
        mods = []
        for i in range(depth):
            mods += [nn.Linear(d_in if i == 0 else width, width), nn.Tanh()]
        self.layers = nn.Sequential(*mods)
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            if isinstance(m, nn.Linear):
                # meant: std = sqrt(init_scale / fan_in); the helper treats it as a gain
                nn.init.normal_(m.weight, std=init_scale / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.layers(x)).squeeze(-1)


@scenario(
    family="xun_vessel_flute_breath_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 16-layer tanh MLP (layers.0 ... layers.30 Linear, head) regressing the pitch bend of a xun (clay vessel flute, standardised) from 10 readings of breath pressure and finger coverage, SGD with momentum 0.9 at 1e-2, MSE, 150 steps. The config's init_scale 3.0 is a variance-scaling factor (std = sqrt(3 / fan_in)) but the init helper uses it as a gain (std = 3 / sqrt(fan_in)): the network sits deep in the chaotic phase, the forward signal stays bounded by the tanh but gradients grow layer by layer going back, layers.0's gradient over 20x layers.30's.",
)
def h314_xun_init_scale_as_gain(ctx: Context) -> None:
    gen = seeded(31410)
    model = DeepBreath()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    first, last = model.layers[0].weight, model.layers[30].weight
    ratios = []

    def after(step):
        ratios.append(float(first.grad.norm() / last.grad.norm()))

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=31410), 150, F.mse_loss, after=after)
    ls = ctx.losses
    ctx.check("at step 0 layers.0's gradient is over 20x layers.30's", ratios[0] > 20)
    ctx.check("layers.0's gradient stays over 10x layers.30's (median)", _median(ratios) > 10)
    ctx.check("finite throughout", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


class StrikeConv(nn.Module):
    """Conv1d over a strike's waveform: conv1, act1, conv2, act2, pool, head."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2, stride=2)
        self.act2 = nn.GELU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _strikes(gen, batch, length=64, classes=4):
    """Hammer-strike waveforms of a lorimer's bit forging: class sets ring frequency and decay."""
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 4.0 + 3.0 * y.float() + 0.5 * torch.randn(batch, generator=gen)
        decay = 2.0 + y.float() + 0.3 * torch.randn(batch, generator=gen)
        wave = torch.sin(2 * math.pi * freq[:, None] * t) * torch.exp(-decay[:, None] * t)
        yield wave + 0.2 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="lorinery_bit_forging_strike_bf16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU Conv1d classifier (conv1, act1, conv2, act2, head) sorting a lorimer's hammer strikes on a bit blank into 4 kinds from the 64-sample ring waveform, bf16 autocast, AdamW at 3e-3 with weight decay 5e-2, 10-step warm-up then cosine decay, clipping at 1.0, cross-entropy, 200 steps.",
)
def h314_lorinery_bf16_adamw_control(ctx: Context) -> None:
    gen = seeded(31411)
    model = StrikeConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-2)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    _train(
        ctx,
        model,
        opt,
        _strikes(gen, 32),
        steps,
        F.cross_entropy,
        classifier=True,
        amp=torch.bfloat16,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell under half its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="jorkyball_rally_outcome_label_smoothed_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP (fc1, act1, fc2, act2, head) predicting how a jorkyball (two-a-side cage football) rally ends (6 outcomes) from 18 readings of ball and player tracking, 5% of labels noisy, SGD with Nesterov momentum 0.9 under OneCycleLR (max lr 0.1), label smoothing 0.1, clipping at 2.0, 200 steps.",
)
def h314_jorkyball_onecycle_control(ctx: Context) -> None:
    gen = seeded(31412)
    model = Stack(18, 64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)

    def smoothed(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 18, 6, seed=31412, flip=0.05),
        200,
        smoothed,
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ctx.check("the loss fell under 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="mixed_climbing_torque_hook_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the holding load of a mixed-climbing torque hook in a rock crack (standardised) from 12 readings of crack width, pick angle and rock type, noisy readings, RAdam at 1e-2, Huber loss, gradient accumulation over 2 micro-batches, ReduceLROnPlateau (patience 15), clipping at 1.0, 200 steps.",
)
def h314_mixed_climbing_radam_control(ctx: Context) -> None:
    gen = seeded(31413)
    model = Stack(12, 64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, seed=31413, noise=0.15),
        200,
        F.huber_loss,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell under 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
