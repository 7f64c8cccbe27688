"""Held-out set 278 (``h278_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a mizmar reed-pressure regressor whose shrink-and-perturb
factor was typed 0.4 for 0.94, a fujara register classifier whose filterbank band energies are
taken in fp16 under autocast, an ice-cutting block-yield regressor whose static loss scale is
not divided off on the step after a resume, a footbag hang-time regressor whose CyclicLR peak
was typed 10x, a kilikiti bowl-speed regressor fed one shard of speed-gun readings in cm/s, a
knattleikr strike classifier whose loss is normalised by a stale labelled-row count for one
step, a glory-halo ring-radius Gaussian-NLL net whose droplet spread takes the square root of
E[x^2] - E[x]^2 without a clamp, a sape motif classifier whose per-group LambdaLR list is in
the wrong order, a lethwei strike cosine classifier whose scale was typed 1000 for 10, a
rauschpfeife breath IRNN whose identity recurrence was multiplied by the ReLU gain, and three
controls (a bokator stance-silhouette VAE with KL annealing, a catch-wrestling hold classifier
under fp16 autocast with a GradScaler, OneCycleLR, label smoothing and AdamW param groups, a
mas-wrestling pull-force Huber regressor with gradient accumulation and ReduceLROnPlateau).

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
    digit_batches,
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
    alter=None,
    watch=None,
    after=None,
    grads=None,
    clip=None,
    sched=None,
    scaler=None,
    fp16=False,
    accumulate=1,
):
    """The file's loop. ``before(step)`` first; ``alter(step, x, y)`` changes a batch;
    ``loss_fn(step, out, y)`` gives the loss; ``watch(step, out, x, y)`` after the forward;
    ``grads(step)`` after backward, before clipping and the step; ``after(step)`` after the
    optimizer step. Stops after logging a non-finite loss."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
                out = model(x)
            out = out.float() if fp16 else out
            loss = loss_fn(step, out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if grads is not None:
            grads(step)
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
    """A loss of (out, y) as the loop's loss of (step, out, y)."""
    return lambda step, out, y: fn(out, y)


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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


# -- mizmar: the shrink-and-perturb factor was typed 0.4 for 0.94 --------------------------------

ONSET_MIZMAR = 120


@scenario(
    family="mizmar_reed_pressure_gelu_regressor",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_MIZMAR,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the mouth pressure a mizmar player holds on the double reed from 10 standardised readings (reed gap, staple length, bore, note, ...), AdamW at 3e-3 (weight decay 0.01), MSE. When a new batch of recordings joins the pool (step 120) the trainer warm-starts with shrink-and-perturb (every parameter p <- shrink * p + 0.01 * noise); the shrink was typed 0.4 for 0.94, so the weights fall to 40% at once and the loss jumps over 3x on an ordinary batch (the twin without the warm-start step has an ordinary loss on the same batch), then AdamW retrains it back to its pre-jump level within the run. No data fault, no loss-weight or gradient bug, no blow-up.",
)
def h278_mizmar_shrink_perturb_typo(ctx: Context) -> None:
    def run(c, shrink):
        gen = seeded(27801)
        model = Stack(10, hidden=64, act=nn.GELU)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        norms = {}

        def before(step):
            if step == ONSET_MIZMAR and shrink is not None:
                norms["before"] = float(_flat(model).norm())
                with torch.no_grad():
                    for p in model.parameters():
                        p.mul_(shrink).add_(0.01 * torch.randn_like(p))
                norms["after"] = float(_flat(model).norm())

        _train(c, model, opt, _readings(gen, 64, 10, 81), 260, _plain(F.mse_loss), before=before)
        return norms

    twin = _Twin()
    run(twin, None)
    norms = run(ctx, 0.4)
    ls, k = ctx.losses, ONSET_MIZMAR
    base = _median(ls[k - 20 : k])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the warm-start", _fell(ls[:k], ratio=0.5))
    ctx.check("the weight norm fell to under half at onset", norms["after"] < 0.5 * norms["before"])
    ctx.check("the loss jumped over 3x at onset", ls[k] > 3 * base)
    ctx.check(
        "the batch is ordinary: the twin's loss on it is under 2x its median",
        twin.losses[k] < 2 * _median(twin.losses[k - 20 : k]),
    )
    ctx.check(
        "recovered: the last 20 steps under 1.5x the pre-jump median", _mean(ls[-20:]) < 1.5 * base
    )


# -- fujara: the filterbank band energies are taken in fp16 ---------------------------------------

ONSET_FUJARA = 150


class BandEnergy(nn.Module):
    """Power spectrum through a fixed 64x16 filterbank (a matmul, so fp16 under autocast)."""

    def __init__(self, bins=64, bands=16):
        super().__init__()
        fb = torch.zeros(bins, bands)
        for b in range(bands):
            fb[4 * b : 4 * b + 4, b] = 1.0
        self.register_buffer("fb", fb)

    def forward(self, amp):
        return (amp * amp) @ self.fb


class FujaraNet(nn.Module):
    def __init__(self, bands=16, hidden=48, classes=5):
        super().__init__()
        self.bands = BandEnergy(bands=bands)
        self.norm = nn.LayerNorm(bands)
        self.fc1 = nn.Linear(bands, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, amp):
        h = self.norm(torch.log(self.bands(amp) + 1e-3))
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h)))))


def _fujara_spectra(gen, batch, classes=5, seed=83):
    """Magnitude spectra (64 bins, raw recorder units) of 5 overtone registers: each register a
    different harmonic profile, random gain, noise."""
    g = torch.Generator().manual_seed(seed)
    profiles = 10.0 + 55.0 * torch.rand(classes, 64, generator=g) ** 3
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        gain = 0.6 + 0.4 * torch.rand(batch, 1, generator=gen)
        noise = 1.0 + 0.25 * torch.randn(batch, 64, generator=gen)
        yield (gain * profiles[y] * noise).abs(), y


@scenario(
    family="fujara_overtone_register_fp16_band_energy_classifier",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("bands",),
    diverges=ONSET_FUJARA,
    heldout=True,
    onset=ONSET_FUJARA,
    note="A classifier of which overtone register a fujara (Slovak overtone flute) is sounding from a 64-bin magnitude spectrum in the recorder's raw units: bands (power spectrum through a fixed 16-band filterbank, a matmul), log, norm (LayerNorm, so the gain cancels), fc1, act1, fc2, act2, head; NAdam at 2e-3, cross-entropy, trained under fp16 autocast with a torch.amp.GradScaler. The filterbank matmul is autocast to fp16, so the band energies are stored in fp16: ordinary takes keep them under about 2e4, but at step 150 a take recorded with the preamp 8 dB hotter (amplitudes 2.5x, physically valid, the same batch gives an ordinary loss in fp32) pushes band energies past 65504, they become inf, the LayerNorm turns inf into NaN and the loss is NaN at step 150. The fp32 twin on the same data stays finite.",
)
def h278_fujara_fp16_band_energy(ctx: Context) -> None:
    def run(c, fp16):
        gen = seeded(27802)
        model = FujaraNet()
        opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
        scaler = torch.amp.GradScaler("cpu") if fp16 else None
        seen = {"peak": 0.0}

        def alter(step, x, y):
            if step == ONSET_FUJARA:
                x = 2.5 * x
            return x, y

        def watch(step, out, x, y):
            with torch.no_grad():
                if step < ONSET_FUJARA:
                    seen["peak"] = max(seen["peak"], float(model.bands(x).max()))
                if step == ONSET_FUJARA and fp16:
                    with torch.autocast("cpu", dtype=torch.float16):
                        e = model.bands(x)
                    seen["inf"] = bool(torch.isinf(e).any())
                    seen["dtype16"] = e.dtype == torch.float16
                    seen["fp32_loss"] = float(F.cross_entropy(model(x), y))

        _train(
            c,
            model,
            opt,
            _fujara_spectra(gen, 64),
            220,
            _plain(F.cross_entropy),
            classifier=True,
            alter=alter,
            watch=watch,
            scaler=scaler,
            fp16=fp16,
        )
        return seen

    twin = _Twin()
    run(twin, False)
    seen = run(ctx, True)
    ls, k = ctx.losses, ONSET_FUJARA
    ctx.check("finite before the hot take", _finite(ls[:k]))
    ctx.check("the loss fell before it", _fell(ls[:k], ratio=0.6))
    ctx.check("ordinary band energies stayed under 65504", seen["peak"] < 65504)
    ctx.check("the band energies are fp16 under autocast", seen.get("dtype16", False))
    ctx.check("the hot take's band energies overflowed to inf", seen.get("inf", False))
    ctx.check("the loss is non-finite at step 150", _first_bad(ls) == k)
    ctx.check(
        "in fp32 the same batch gives an ordinary loss (under 5x the median)",
        seen.get("fp32_loss", math.inf) < 5 * _median(ls[k - 30 : k]),
    )
    ctx.check("the fp32 twin stays finite", _finite(twin.losses) and len(twin.losses) == 220)


# -- ice cutting: the static loss scale is not divided off on the step after a resume -------------

ONSET_ICE = 30
LOSS_SCALE = 4096.0


@scenario(
    family="ice_cutting_block_yield_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ICE,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the usable block yield of a lake ice-cutting crew's day from 12 standardised readings (ice thickness, snow cover, air temperature, saw passes, ...), Adam at 1e-3, MSE. The trainer keeps a static loss scale of 4096 from an old fp16 recipe: the loss is multiplied by it before backward and the gradients are divided by it inside the clipping helper; the resume path skips the clipping helper on its first step, so at step 30 (the first step after a pre-emption) the gradients reach Adam 4096x too large on an ordinary batch. exp_avg_sq fills with the burst (beta2 0.999 keeps it for hundreds of steps), the updates afterwards are over 10x smaller than before, and the loss stalls near 0.23 while the twin without the bug goes on down to about 0.10. Finite, no blow-up.",
)
def h278_ice_cutting_loss_scale_on_resume(ctx: Context) -> None:
    def run(c, buggy):
        gen = seeded(27803)
        model = Stack(12, hidden=64, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moves, sq = [], []
        prev = {}

        def loss_fn(step, out, y):
            return F.mse_loss(out, y)

        def grads(step):
            resumed_first = buggy and step == ONSET_ICE
            for p in model.parameters():
                p.grad.mul_(LOSS_SCALE)  # loss * scale, backpropagated
                if not resumed_first:
                    p.grad.div_(LOSS_SCALE)  # unscale inside the clipping helper
            prev["w"] = _flat(model)

        def after(step):
            moves.append(float((_flat(model) - prev["w"]).abs().median()))
            sq.append(sum(float(s["exp_avg_sq"].sum()) for s in opt.state.values()))

        _train(c, model, opt, _readings(gen, 64, 12, 85), 300, loss_fn, grads=grads, after=after)
        return moves, sq

    twin = _Twin()
    run(twin, False)
    moves, sq = run(ctx, True)
    ls, g, k = ctx.losses, ctx.grad_norms, ONSET_ICE
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the gradient at onset is over 1000x the median before", g[k] > 1000 * _median(g[:k]))
    ctx.check(
        "the batch is ordinary: loss at onset under 2x the median",
        ls[k] < 2 * _median(ls[k - 20 : k]),
    )
    ctx.check("exp_avg_sq jumped over 1000x", sq[k] > 1000 * sq[k - 1])
    ctx.check(
        "median updates from 30 steps after onset over 10x smaller",
        _median(moves[k + 30 : k + 90]) < 0.1 * _median(moves[k - 20 : k]),
    )
    ctx.check(
        "the loss stalls: the twin ends over 40% lower",
        _mean(twin.losses[-20:]) < 0.6 * _mean(ls[-20:]),
    )


# -- footbag: the CyclicLR peak was typed 10x ----------------------------------------------------


def _sharpness(model, loss_of, iters=12):
    """Largest Hessian eigenvalue of the probe loss by power iteration."""
    params = [p for p in model.parameters()]
    loss = loss_of(model)
    gs = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(gs, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="footbag_kick_hangtime_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=55,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a footbag kick's hang time from 8 standardised readings (contact height, foot speed, bag fill, ...), plain SGD with a triangular CyclicLR from 0.01 up over 200 steps, MSE. The CyclicLR max_lr was typed 2.0 for 0.2, so the rate climbs ten times past the recipe's peak: lr x sharpness (the top Hessian eigenvalue, measured on a probe batch) crosses the 2 stability limit at about step 55 (lr near 0.56), the loss hovers at the edge of stability for some 25 steps while the rate keeps rising and then blows up past step 80 (inf, then NaN); the twin with max_lr 0.2 trains normally. Ordinary data throughout.",
)
def h278_footbag_cyclic_lr_peak(ctx: Context) -> None:
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, 87))

    def run(c, max_lr):
        gen = seeded(27804)
        model = Stack(8, hidden=32, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.CyclicLR(
            opt, base_lr=0.01, max_lr=max_lr, step_size_up=200, cycle_momentum=False
        )
        trace = []

        def before(step):
            if step % 5 == 0:
                lam = _sharpness(model, lambda m: F.mse_loss(m(probe[0]), probe[1]))
                trace.append((step, opt.param_groups[0]["lr"], lam))

        _train(
            c,
            model,
            opt,
            _readings(gen, 64, 8, 87),
            200,
            _plain(F.mse_loss),
            before=before,
            sched=sched,
        )
        return trace

    twin = _Twin()
    run(twin, 0.2)
    trace = run(ctx, 2.0)
    ls = ctx.losses
    cross = next((s for s, lr, lam in trace if lr * lam > 2), None)
    low = min(v for v in ls if math.isfinite(v))
    bad = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("lr x sharpness crossed 2", cross is not None)
    ctx.check("the loss blew up (non-finite or over 100x its low)", bad is not None)
    ctx.check(
        "the crossing came before the blow-up",
        cross is not None and bad is not None and cross < bad,
    )
    ctx.check(
        "finite and falling before the crossing",
        cross is not None and _fell(ls[: cross + 1], k=5, ratio=0.9),
    )
    ctx.check("the twin stays finite and falls", _fell(twin.losses, ratio=0.5))


# -- kilikiti: one shard of speed-gun readings in cm/s --------------------------------------------

ONSET_KILIKITI = 110


@scenario(
    family="kilikiti_bowl_speed_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KILIKITI,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing where a kilikiti (Samoan cricket) bowl pitches from 10 standardised readings, three of them from a village speed gun (release, mid-flight and bounce speed), SGD momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0. One village's shard was exported in cm/s instead of m/s and standardised with the m/s statistics: the batch at step 110 holds 8 rows whose three speed columns are about 100x their usual size. The loss jumps over 20x and the (pre-clip) gradient over 20x on that batch; clipping bounds the update and the run recovers to its earlier level. No blow-up.",
)
def h278_kilikiti_speed_gun_cm_per_s(ctx: Context) -> None:
    gen = seeded(27805)
    model = Stack(10, hidden=64, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_KILIKITI:
            x = x.clone()
            x[:8, :3] = 100.0 * x[:8, :3]
            seen["peak"] = float(x.abs().max())
        return x, y

    _train(
        ctx, model, opt, _readings(gen, 64, 10, 89), 240, _plain(F.mse_loss), alter=alter, clip=1.0
    )
    ls, g, k = ctx.losses, ctx.grad_norms, ONSET_KILIKITI
    base = _median(ls[k - 20 : k])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the bad shard", _fell(ls[:k], ratio=0.5))
    ctx.check("the bad rows' readings exceed 50 standard deviations", seen["peak"] > 50)
    ctx.check("the loss jumped over 20x at onset", ls[k] > 20 * base)
    ctx.check("the pre-clip gradient jumped over 20x", g[k] > 20 * _median(g[k - 20 : k]))
    ctx.check("recovered: last 20 steps under 2x the pre-onset median", _mean(ls[-20:]) < 2 * base)


# -- knattleikr: the loss is normalised by a stale labelled-row count -----------------------------

ONSET_KNATT = 100


@scenario(
    family="knattleikr_stick_strike_gelu_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KNATT,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying which of 6 strikes a knattleikr (Norse stick-and-ball game) player makes from 16 standardised stick-sensor readings, SGD Nesterov momentum 0.9 at 2e-2, clipping at 5.0; the loss is cross-entropy summed over the labelled rows and divided by the labelled-row count. The counter is reset at an epoch boundary and read before the new epoch's first batch has been counted, so at step 100 the sum over 64 rows is divided by 1: one loss and one gradient 64x their size on an ordinary batch (its mean cross-entropy is ordinary). Clipping bounds the step and the run recovers. No blow-up.",
)
def h278_knattleikr_stale_row_count(ctx: Context) -> None:
    gen = seeded(27806)
    model = Stack(16, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    means = []

    def loss_fn(step, out, y):
        per_row = F.cross_entropy(out, y, reduction="none")
        count = 1 if step == ONSET_KNATT else len(y)  # the stale counter after the reset
        means.append(float(per_row.detach().mean()))
        return per_row.sum() / count

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, 91, noise=0.7),
        220,
        loss_fn,
        classifier=True,
        clip=5.0,
    )
    ls, g, k = ctx.losses, ctx.grad_norms, ONSET_KNATT
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before onset", _fell(ls[:k], ratio=0.6))
    ctx.check(
        "the gradient at onset is over 30x the median before", g[k] > 30 * _median(g[k - 20 : k])
    )
    ctx.check(
        "the batch is ordinary: its mean cross-entropy under 2x the median",
        means[k] < 2 * _median(means[k - 20 : k]),
    )
    ctx.check(
        "the gradient is back to ordinary after",
        _median(g[k + 5 : k + 30]) < 3 * _median(g[k - 20 : k]),
    )
    ctx.check(
        "recovered: last 20 steps under 1.5x the pre-onset median",
        _mean(ls[-20:]) < 1.5 * _median(ls[k - 20 : k]),
    )


# -- glory halo: the droplet spread takes sqrt(E[x^2] - E[x]^2) without a clamp ------------------

ONSET_GLORY = 90
SATURATED = 47.85  # the probe's saturation reading after calibration


class DropletSpread(nn.Module):
    """Per-sample spread of the 16 droplet-probe bins: sqrt(E[x^2] - E[x]^2); written with a
    clamp_min(0) before the sqrt in the original notebook, lost when it was vectorised."""

    def forward(self, bins):
        return torch.sqrt((bins * bins).mean(-1, keepdim=True) - bins.mean(-1, keepdim=True) ** 2)


class GloryNet(nn.Module):
    def __init__(self, bins=16, hidden=48):
        super().__init__()
        self.spread = DropletSpread()
        self.fc1 = nn.Linear(bins + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.logvar_head = nn.Linear(hidden, 1)

    def forward(self, bins):
        h = torch.cat([bins / 50.0, self.spread(bins) / 10.0], -1)
        h = self.act2(self.fc2(self.act1(self.fc1(h))))
        return torch.cat([self.mean_head(h), self.logvar_head(h)], -1)


def _gaussian_nll(step, out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _droplets(gen, batch, seed=93):
    """16-bin droplet-probe size counts (raw units, 10 to 45) and the glory ring's angular
    radius (standardised), which falls with the mean droplet size and widens with its spread."""
    g = torch.Generator().manual_seed(seed)
    shape = torch.linspace(-1.5, 1.5, 16)
    w = torch.randn(16, generator=g) / 4
    while True:
        centre = 25.0 + 10.0 * torch.rand(batch, 1, generator=gen)
        width = 2.0 + 6.0 * torch.rand(batch, 1, generator=gen)
        x = centre + width * shape + 1.5 * torch.randn(batch, 16, generator=gen)
        y = -(centre[:, 0] - 30.0) / 3.0 + (width[:, 0] - 5.0) / 3.0 + (x - centre) @ w / 10
        yield x, y + 0.1 * torch.randn(batch, generator=gen)


@scenario(
    family="glory_halo_ring_radius_gaussian_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("spread",),
    diverges=ONSET_GLORY,
    heldout=True,
    onset=ONSET_GLORY,
    note="A Gaussian-NLL net (spread, fc1, act1, fc2, act2, mean_head, logvar_head) predicting the angular radius of a glory (the rings round an aircraft's shadow on cloud) from a 16-bin droplet-probe spectrum in raw units plus its spread, RMSprop at 1e-3. The spread module computes sqrt(E[x^2] - E[x]^2); the clamp_min(0) before the sqrt was lost when the notebook was vectorised. At step 90 a batch holds four rows from a pass where the probe saturated (all 16 bins read the calibrated saturation value 47.85): their variance is 0 in exact arithmetic, float32 cancellation makes it slightly negative, the sqrt gives NaN and the loss is NaN at step 90.",
)
def h278_glory_halo_sqrt_negative_variance(ctx: Context) -> None:
    gen = seeded(27807)
    model = GloryNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_GLORY:
            x = x.clone()
            x[:4] = SATURATED
        return x, y

    def watch(step, out, x, y):
        if step == ONSET_GLORY:
            with torch.no_grad():
                var = (x * x).mean(-1) - x.mean(-1) ** 2
                seen["neg"] = bool((var[:4] < 0).all())
                seen["nan"] = bool(torch.isnan(model.spread(x)[:4]).all())
                seen["rest_ok"] = bool(torch.isfinite(model.spread(x)[4:]).all())

    _train(ctx, model, opt, _droplets(gen, 64), 200, _gaussian_nll, alter=alter, watch=watch)
    ls, k = ctx.losses, ONSET_GLORY
    ctx.check("finite before onset", _finite(ls[:k]))
    ctx.check("the loss fell before onset", _mean(ls[k - 10 : k]) < _mean(ls[:10]) - 0.5)
    ctx.check("the saturated rows' variance came out negative", seen.get("neg", False))
    ctx.check(
        "the spread is NaN on exactly those rows",
        seen.get("nan", False) and seen.get("rest_ok", False),
    )
    ctx.check("the loss is NaN at step 90", _first_bad(ls) == k)


# -- sape: the per-group LambdaLR list is in the wrong order --------------------------------------


class SapeNet(nn.Module):
    def __init__(self, d_in=20, hidden=64, classes=8):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.trunk(x))


@scenario(
    family="sape_lute_motif_two_group_relu_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (trunk: Linear, ReLU, Linear, ReLU; head) naming which of 8 motifs a sape (Borneo boat lute) player picks from 20 standardised pluck readings, Adagrad at 5e-2 with two param groups (head first, trunk second) and a LambdaLR given one lambda per group: the recipe holds the trunk at 0 for a 1000-step linear-probe phase and trains the head from the start. The lambda list was written [trunk, head] while the groups are [head, trunk], so the head gets the probe-phase factor 0 and the trunk trains: the head's lr is 0 for the whole 200-step run, its weights never move (update ratio exactly 0) while the trunk's move normally; the loss still falls because the trunk adapts to the random fixed head, so nothing in the loss shows the frozen head; the twin with the list in the right order moves its head.",
)
def h278_sape_lambda_list_order(ctx: Context) -> None:
    def run(c, swapped):
        gen = seeded(27808)
        model = SapeNet()
        opt = torch.optim.Adagrad(
            [{"params": model.head.parameters()}, {"params": model.trunk.parameters()}], lr=5e-2
        )

        def probe_then_train(step):
            return 0.0 if step < 1000 else 1.0

        def always(step):
            return 1.0

        lambdas = [probe_then_train, always] if swapped else [always, probe_then_train]
        # the intent: the head trains, the trunk waits; the twin gets the order right
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
        head0, trunk0 = _flat(model.head), _flat(model.trunk)
        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 20, 8, 95, noise=0.6),
            200,
            _plain(F.cross_entropy),
            classifier=True,
            sched=sched,
        )
        return head0, trunk0, model, opt

    twin = _Twin()
    twin_head0, _, twin_model, _ = run(twin, False)
    twin_moved = not torch.equal(_flat(twin_model.head), twin_head0)
    head0, trunk0, model, opt = run(ctx, True)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's group has lr 0", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("the head's weights never moved", bool(torch.equal(_flat(model.head), head0)))
    ctx.check(
        "the trunk moved over 5% of its norm",
        float((_flat(model.trunk) - trunk0).norm()) > 0.05 * float(trunk0.norm()),
    )
    ctx.check("the twin's head moved", twin_moved)
    ctx.check("the loss still fell (the trunk learns under the fixed head)", _fell(ls, ratio=0.5))


# -- lethwei: the cosine classifier's scale was typed 1000 for 10 ---------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class LethweiNet(nn.Module):
    def __init__(self, d_in=18, hidden=64, classes=7, scale=10.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="lethwei_strike_kind_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU net (fc1, act1, fc2, act2) with a cosine-similarity head (normalised features against normalised class weights, times a scale) classifying which of 7 strikes (punch, elbow, knee, headbutt, ...) a lethwei (Burmese bare-knuckle boxing) fighter throws from 18 standardised glove and shin sensor readings, Adamax at 2e-3, cross-entropy. The scale was typed 1000 for 10 (the config said '1e3' where the recipe says '1e1'): cosines differ by tenths, so the logits differ by hundreds and the float32 softmax rounds to exactly 1.0 and 0.0; by the end most probe rows give their target probability exactly 1.0 (the twin with scale 10 none). Finite, no blow-up.",
)
def h278_lethwei_cosine_scale_typo(ctx: Context) -> None:
    probe = next(_kinds(torch.Generator().manual_seed(11), 512, 18, 7, 97, noise=0.5))

    def run(c, scale):
        gen = seeded(27809)
        model = LethweiNet(scale=scale)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 18, 7, 97, noise=0.5),
            200,
            _plain(F.cross_entropy),
            classifier=True,
        )
        with torch.no_grad():
            return collapsed_fraction(model(probe[0]), probe[1])

    twin = _Twin()
    twin_frac = run(twin, 10.0)
    frac = run(ctx, 1000.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half the probe rows give the target exactly 1.0", frac > 0.5)
    ctx.check("the twin with scale 10 under 1%", twin_frac < 0.01)
    ctx.check("the loss fell", _fell(ls, ratio=0.5))


# -- rauschpfeife: the identity recurrence was multiplied by the ReLU gain ------------------------


class BreathIRNN(nn.Module):
    """h_t = relu(xh(x_t) + hh(h_{t-1})), hh initialised as a scaled identity (Le et al. 2015)."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.xh = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.hh.weight.copy_(gain * torch.eye(hidden))
            self.hh.bias.zero_()
            self.xh.weight.normal_(0, 0.1)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hh.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.xh(x[:, t]) + self.hh(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _breath(gen, batch, length=24):
    """Breath-pressure and finger-hole sensor sequences; the target is the sustained
    pressure the reed sees at the end, a leaky average of the breath channel."""
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        decay = 0.8 ** torch.arange(length - 1, -1, -1).float()
        y = (x[:, :, 0] * decay).sum(1) / 2 + 0.3 * x[:, -1, 1]
        yield x, y


@scenario(
    family="rauschpfeife_breath_pressure_irnn_regressor",
    optimizer="RAdam",
    cause="exploding_gradients",
    where=("hh",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU recurrent net (xh input weights, hh recurrent weights, head) reading 24 steps of breath-pressure and finger-hole sensors from a rauschpfeife (a Renaissance capped-reed shawm) and regressing the pressure the reed sees at the end, RAdam at 1e-3, MSE, clipping at 1.0. The IRNN recipe initialises hh as the identity; the init helper multiplied it by nn.init.calculate_gain('relu') (sqrt 2), so the recurrence amplifies by about 1.41 a step: the hidden state and the gradient grow through time, the gradient on the first hidden state is over 100x the one on the last, the loss starts over 100x the twin's (identity init) and stays far above it, and the pre-clip gradient norm runs over 100x the twin's. Clipping keeps the numbers finite; no NaN.",
)
def h278_rauschpfeife_irnn_relu_gain(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(27810)
        model = BreathIRNN(gain=gain)
        opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
        ratios = []

        def grads(step):
            if step % 20 == 0:
                first, last = model.states[0].grad, model.states[-1].grad
                ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

        _train(c, model, opt, _breath(gen, 32), 160, _plain(F.mse_loss), grads=grads, clip=1.0)
        return ratios

    twin = _Twin()
    twin_ratios = run(twin, 1.0)
    ratios = run(ctx, math.sqrt(2.0))
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the first state's gradient is over 100x the last's at the start", ratios[0] > 100)
    ctx.check("and still over 100x at the end", ratios[-1] > 100)
    ctx.check("the twin's ratio stays under 30", max(twin_ratios) < 30)
    ctx.check("the loss starts over 100x the twin's", ls[0] > 100 * twin.losses[0])
    ctx.check("and ends over 10x the twin's", _mean(ls[-20:]) > 10 * _mean(twin.losses[-20:]))
    ctx.check(
        "the pre-clip gradient norm over 100x the twin's (median)",
        _median(g) > 100 * _median(twin.grad_norms),
    )


# -- controls --------------------------------------------------------------------------------------


class StanceVAE(nn.Module):
    """An 8x8 silhouette VAE: enc -> (mu, logvar) -> reparameterised z -> dec logits."""

    def __init__(self, d=64, hidden=128, latent=8):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, d))
        self.kl = torch.zeros(())

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        self.kl = 0.5 * (mu * mu + logvar.exp() - 1.0 - logvar).sum(-1).mean()
        return self.dec(z)


@scenario(
    family="bokator_stance_silhouette_vae",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a VAE (enc, mu, logvar, dec) of 8x8 stance silhouettes for a bokator (Khmer martial art) stance catalogue (scikit-learn's bundled 8x8 digits stand in for the silhouettes), Adam at 2e-3, Bernoulli reconstruction (BCE with logits, summed over pixels) plus a KL term whose weight is annealed linearly from 0 to 1 over the first 120 steps, clipping at 10. The ELBO falls; the KL stays finite and positive.",
)
def h278_bokator_vae_kl_annealing(ctx: Context) -> None:
    gen = seeded(27811)
    model = StanceVAE()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    recon, kls = [], []

    def loss_fn(step, out, y):
        beta = min(1.0, step / 120)
        rec = F.binary_cross_entropy_with_logits(out, y, reduction="sum") / len(y)
        recon.append(float(rec.detach()))
        kls.append(float(model.kl.detach()))
        return rec + beta * model.kl

    def silhouettes():
        for x, _ in digit_batches(gen, 64):
            yield x, x

    _train(ctx, model, opt, silhouettes(), 250, loss_fn, clip=10.0)
    ls = ctx.losses
    elbo = [r + k for r, k in zip(recon, kls, strict=True)]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the reconstruction loss fell", _mean(recon[-20:]) < 0.8 * _mean(recon[:10]))
    ctx.check("the full ELBO (beta 1) fell", _mean(elbo[-20:]) < 0.8 * _mean(elbo[:10]))
    ctx.check("the KL is positive and finite at the end", 0 < _mean(kls[-20:]) < 1e3)


class HoldNet(nn.Module):
    def __init__(self, d_in=24, hidden=96, classes=9):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.act1(self.norm(self.fc1(x)))
        return self.head(self.drop(self.act2(self.fc2(h))))


@scenario(
    family="catch_wrestling_hold_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU classifier with LayerNorm and dropout (fc1, norm, act1, fc2, act2, drop, head) naming which of 9 holds a catch-as-catch-can wrestler applies from 24 standardised mat-pressure readings, AdamW with two param groups (weights with decay 0.05, biases and norm without), OneCycleLR peaking at 3e-3, label smoothing 0.1, clipping at 1.0, fp16 autocast with a torch.amp.GradScaler. Trains normally.",
)
def h278_catch_wrestling_fp16_control(ctx: Context) -> None:
    gen = seeded(27812)
    model = HoldNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and "norm" not in n]
    rest = [
        p for n, p in model.named_parameters() if not (n.endswith("weight") and "norm" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps = 220
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    probe = next(_kinds(torch.Generator().manual_seed(13), 512, 24, 9, 99, noise=0.6))
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 24, 9, 99, noise=0.6),
        steps,
        lambda step, out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        fp16=True,
    )
    model.eval()
    with torch.no_grad():
        acc = float((model(probe[0]).argmax(-1) == probe[1]).float().mean())
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.6))
    ctx.check("probe accuracy over 80%", acc > 0.8)
    ctx.check(
        "the loss scale stayed positive and finite", all(0 < s < math.inf for s in ctx.scales)
    )


@scenario(
    family="mas_wrestling_stick_pull_force_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the peak pull force in a mas-wrestling (Yakut stick-pulling) bout from 14 standardised readings (grip, body mass, foot-board angle, ...), ASGD at 0.2, Huber loss (delta 0.5) on noisy targets (a tenth of the rows carry noise 5x the usual), gradient accumulation over 2 micro-batches, ReduceLROnPlateau (patience 15, factor 0.5). Trains normally.",
)
def h278_mas_wrestling_huber_control(ctx: Context) -> None:
    gen = seeded(27813)
    model = Stack(14, hidden=64, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=15, factor=0.5)

    def noisy():
        for x, y in _readings(gen, 32, 14, 101, noise=0.1):
            rough = torch.rand(len(y), generator=gen) < 0.1
            yield x, y + rough * 0.5 * torch.randn(len(y), generator=gen)

    _train(
        ctx,
        model,
        opt,
        noisy(),
        220,
        lambda step, out, y: F.huber_loss(out, y, delta=0.5),
        sched=sched,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under half", _fell(ls, ratio=0.5))
