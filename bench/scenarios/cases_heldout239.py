"""Held-out set 239 (``h239_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a bull-riding buck-score bilinear-pooling net whose pool
divides by the ride length after its fp16 matmul (overflow when the curriculum moves to full
rides), a team-penning run-time SiLU regressor fed one arena's targets in raw milliseconds, a
woodcut print-block siamese encoder whose InfoNCE temperature was typed 0.0007 for 0.07, a
Nordic-combined jump-distance GELU regressor with a leftover validation gradient probe summed
over 8192 samples (Adam's second moment poisoned), a signwriter brush-stroke regressor whose trunk
rate multiplier is read under a misspelt key (trunk frozen at lr 0), a ski-ballet routine-score
tanh regressor whose resume applies the linear-scaling rule to an already global batch, a
dragon-dance pole-lift ReLU RNN whose IRNN identity init was scaled 1.2 for 1.0, a savate
kick-score net with a hand-written log(1 - sigmoid) head, a horseball shot BCE net whose loss
normaliser defaults to 1 on one step, a linocut gouge-depth ReLU regressor with one raw reading
left out of the standardiser (fc1's ReLUs all die), and three controls (a class-imbalanced
tent-pegging outcome classifier with an inverse-frequency weighted cross-entropy, a pencak-silat
strike conv1d classifier, a telemark edge-angle Gaussian-NLL net under fp16 autocast with a
GradScaler and ASGD).

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
    amp=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
    unscale=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``unscale(step)`` runs between backward and the optimizer
    step, ``after(step)`` runs after the optimizer step; ``amp`` is the autocast dtype (None:
    float32); stops after logging a NaN loss."""
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
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if unscale is not None:
            unscale(step)
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


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
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


# -- bull riding: a bilinear pool divides by the ride length after its fp16 matmul ----------------


class BilinearPool(nn.Module):
    """Second-order pooling of per-frame features: the mean outer product over frames. The
    division by the frame count comes after the matmul (under autocast an fp16 matmul)."""

    def forward(self, h):
        return (h.transpose(1, 2) @ h) / h.shape[1]  # meant: (h / T).transpose(1, 2) @ h


class BuckNet(nn.Module):
    def __init__(self, feat=6, width=12):
        super().__init__()
        self.frame = nn.Linear(feat, width)
        self.pool = BilinearPool()
        self.head = nn.Linear(width * width, 1)

    def forward(self, x):
        h = F.relu(self.frame(x))
        return self.head(self.pool(h).flatten(1)).squeeze(-1)


def _rides(gen, batch, length, seed=1):
    """A bull ride's saddle-mounted IMU: ``length`` frames of 3-axis acceleration (in m/s^2) and
    3-axis rotation (in rad/s, scaled alike), the bull's bucking vigour varying by ride, and the judges' bull
    score, standardised."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(6, 6, generator=g) / math.sqrt(6)
    while True:
        vigour = 1.0 + 2.0 * torch.rand(batch, 1, 1, generator=gen)
        spin = torch.rand(batch, 1, 1, generator=gen)
        t = torch.arange(length, dtype=torch.float32)[None, :, None]
        base = torch.sin(0.2 * t + 6.28 * torch.rand(batch, 1, 6, generator=gen))
        x = 9.81 * vigour * (base + 0.5 * torch.randn(batch, length, 6, generator=gen)) @ mix
        x[..., 3:] = x[..., 3:] * (0.5 + spin)
        y = (vigour.flatten() - 2.0) * 1.5 + (spin.flatten() - 0.5)
        yield x, y


@scenario(
    family="bull_riding_buck_score_bilinear_fp16_net",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("pool",),
    diverges=150,
    onset=150,
    heldout=True,
    note="A second-order pooling regressor (frame: a per-frame Linear + ReLU, pool: the mean outer product of the frame features over time, head) predicting a bull ride's score from a saddle-mounted IMU (accelerations in m/s^2), AdamW at 3e-3, MSE, fp16 autocast with a torch.amp.GradScaler. The pool divides by the frame count after the matmul (h.T @ h / T), which under autocast runs in fp16. A curriculum trains on 16-frame clips and switches to full 1024-frame rides at step 150: the per-frame features are unchanged and finite in fp16, but the unnormalised sum over 1024 frames of their products passes 65504, the fp16 matmul overflows to inf, the prediction is non-finite and the loss NaN at step 150. The same batch through the same weights in float32 gives a finite output: the break is the fp16 overflow.",
)
def h239_bull_riding_bilinear_fp16_long_rides(ctx: Context) -> None:
    gen = seeded(23901)
    onset = 150
    model = BuckNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    short, full = _rides(gen, 16, 16), _rides(gen, 16, 1024)

    def curriculum():
        step = 0
        while True:
            yield next(short if step < onset else full)
            step += 1

    seen = {}

    def watch(step, out, x, y):
        if step == onset:
            seen["out_finite"] = bool(torch.isfinite(out).all())
            with torch.no_grad():
                seen["fp32_finite"] = bool(torch.isfinite(model(x.float())).all())
                with torch.autocast("cpu", dtype=torch.float16):
                    h = F.relu(model.frame(x))
                    seen["frame_finite"] = bool(torch.isfinite(h).all())
                    seen["frame_max"] = float(h.abs().max())
                    seen["pool_finite"] = bool(torch.isfinite(model.pool(h)).all())

    _train(
        ctx,
        model,
        opt,
        curriculum(),
        onset + 40,
        F.mse_loss,
        watch=watch,
        scaler=scaler,
        amp=torch.float16,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite before the onset", _finite(ls[:onset]))
    ctx.check("loss non-finite at the onset", len(ls) > onset and not math.isfinite(ls[onset]))
    ctx.check("the frame features in fp16 finite at the onset", seen.get("frame_finite") is True)
    ctx.check("the pool's fp16 output overflows at the onset", seen.get("pool_finite") is False)
    ctx.check("the fp16 prediction is non-finite at the onset", seen.get("out_finite") is False)
    ctx.check("the same batch in float32 gives a finite output", seen.get("fp32_finite") is True)


# -- team penning: one arena's timer logged in milliseconds -----------------------------------------


def _pennings(gen, batch, seed=2):
    """Ten standardised readings of a team-penning run (herd settle time, rider spacing, cut
    angle, cow temperament score, ...) and the run time, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="team_penning_run_time_silu_regressor",
    optimizer="SGD (Nesterov)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=140,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a team-penning run's time from 10 standardised readings (herd settle time, rider spacing, cut angle, ...), SGD Nesterov at 0.02 with momentum 0.9, MSE, gradient norm clipped at 1. The batch at step 140 comes from one arena whose timer export logged milliseconds, and the loader's standardisation (fitted on seconds) was skipped for that file: its targets are raw run times in ms (about 60000) instead of standardised units, so that batch's loss and (pre-clip) gradient are millions and thousands of times the usual; clipping keeps the step it takes to the usual size and the loss returns to its level; finite.",
)
def h239_team_penning_millisecond_timer(ctx: Context) -> None:
    gen = seeded(23902)
    onset = 140
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    sizes = []

    def alter(step, x, y):
        if step == onset:
            y = (60.0 + 8.0 * y) * 1000.0  # raw milliseconds, never standardised
        sizes.append(float(y.abs().max()))
        return x, y

    _train(ctx, model, opt, _pennings(gen, 64), 260, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("targets at the onset over 1000x the usual", sizes[onset] > 1000 * _median(sizes))
    ctx.check(
        "loss at the onset over 1e6x the median before", ls[onset] > 1e6 * _median(ls[110:140])
    )
    ctx.check(
        "gradient at the onset over 1000x the median before",
        gn[onset] > 1000 * _median(gn[110:140]),
    )
    ctx.check(
        "loss back within 2x its level (steps 220-260)", _mean(ls[220:]) < 2 * _mean(ls[120:140])
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- woodcut: a siamese matcher's temperature typed 0.0007 for 0.07 ---------------------------------


class Tower(nn.Module):
    def __init__(self, d_in=24, hidden=64, dim=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class CosineSimilarity(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.temperature = temperature

    def forward(self, za, zb):
        return F.normalize(za, dim=-1) @ F.normalize(zb, dim=-1).T / self.temperature


class PrintMatcher(nn.Module):
    """One shared tower (the same weights for both impressions) and a temperature-scaled cosine
    similarity: logits[i, j] says how likely impression i and impression j share a block."""

    def __init__(self, temperature):
        super().__init__()
        self.tower = Tower()
        self.sim = CosineSimilarity(temperature)

    def forward(self, pair):
        return self.sim(self.tower(pair[:, 0]), self.tower(pair[:, 1]))


def _impressions(gen, batch, d_in=24, latent=12, seed=3):
    """Pairs of impressions pulled from the same woodcut block: 24 standardised measurements of
    a print (line widths, gouge-mark spacing, grain figure, ink coverage, ...) taken from a
    block's features through the press, with ink and paper varying between pulls; the target of
    row i is column i (the other impression of the same block)."""
    g = torch.Generator().manual_seed(seed)
    press = torch.randn(latent, d_in, generator=g) / math.sqrt(latent)
    while True:
        block = torch.randn(batch, latent, generator=gen)
        pulls = [
            torch.tanh(block @ press) + 0.3 * torch.randn(batch, d_in, generator=gen)
            for _ in range(2)
        ]
        yield torch.stack(pulls, 1), torch.arange(batch)


def _run_matcher(c, temperature, steps, watch=None):
    gen = seeded(23903)
    model = PrintMatcher(temperature)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(
        c,
        model,
        opt,
        _impressions(gen, 64),
        steps,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )


@scenario(
    family="woodcut_print_block_siamese_encoder",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("sim",),
    diverges=None,
    heldout=True,
    note="A siamese matcher (one shared GELU tower tower.fc1, tower.fc2 for both impressions, then sim: cosine similarity divided by a temperature) trained with an InfoNCE cross-entropy (each impression's target is the other impression of the same block among the 64 in the batch) to tell which woodcut prints were pulled from the same block, from 24 standardised measurements of each print, Adam at 1e-3. The temperature was typed 0.0007 for 0.07, so cosine similarities in [-1, 1] become logits up to 1400 apart and from the first steps the float32 softmax rounds the target's probability to exactly 1.0 on most rows (about three quarters in steps 0-10, nearly nine in ten later; those rows give no gradient); the same run at 0.07 saturates under a tenth of the rows; finite.",
)
def h239_woodcut_siamese_temperature_typo(ctx: Context) -> None:
    steps = 200
    fractions = {}

    def watch(step, out, x, y):
        fractions[step] = collapsed_fraction(out.detach(), y)

    _run_matcher(ctx, 0.0007, steps, watch=watch)
    twin_fractions = {}

    def twin_watch(step, out, x, y):
        twin_fractions[step] = collapsed_fraction(out.detach(), y)

    _run_matcher(_Quiet(), 0.07, steps, watch=twin_watch)  # the intended temperature
    late = _mean([fractions[s] for s in range(150, steps)])
    ctx.check("over half the rows' target probability exactly 1.0 (steps 150-200)", late > 0.5)
    ctx.check(
        "with the intended temperature under 10% of rows saturate",
        _mean([twin_fractions[s] for s in range(150, steps)]) < 0.1,
    )
    ctx.check("finite", _finite(ctx.losses))


# -- nordic combined: a validation gradient probe left in, with a summed loss -----------------------


def _jumps(gen, batch, seed=4):
    """Ten standardised readings of a ski jump in the Nordic combined (take-off speed, in-run
    position, wind compensation, suit fit, ...) and the jump distance, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="nordic_combined_jump_distance_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=30,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a Nordic-combined ski jump's distance from 10 standardised readings (take-off speed, in-run position, wind compensation, ...), Adam at 1e-3 (betas 0.9, 0.999), MSE. A debugging probe that measures the gradient norm on 8192 validation jumps was left in the loop at step 30: it backpropagates the validation loss with reduction='sum' and never zeroes the gradients, so that step's optimizer step carries a gradient over 1000x the usual. The steps stay Adam-sized and the loss does not jump (the leftover first moment carries a few more steps of progress), but the squared gradient fills Adam's second moment: from step 100 every update is over 10x smaller than before the probe, and the loss, which was falling fast, stays flat from about step 50 to the end, over 1.5x where the run without the probe gets; finite.",
)
def h239_nordic_combined_val_probe_sum(ctx: Context) -> None:
    onset, steps = 30, 300

    def run(c, probe):
        gen = seeded(23904)
        model = Stack(10, hidden=64, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        val_x, val_y = next(_jumps(torch.Generator().manual_seed(4444), 8192))
        moves, prev = [], {}

        def before(step):
            prev["w"] = [p.detach().clone() for p in model.parameters()]

        def unscale(step):
            if probe and step == onset:  # the leftover probe: no zero_grad afterwards
                F.mse_loss(model(val_x), val_y, reduction="sum").backward()

        def after(step):
            moves.append(
                float(
                    torch.sqrt(
                        sum(
                            ((p.detach() - q) ** 2).sum()
                            for p, q in zip(model.parameters(), prev["w"], strict=True)
                        )
                    )
                )
            )

        _train(
            c,
            model,
            opt,
            _jumps(gen, 64),
            steps,
            F.mse_loss,
            before=before,
            unscale=unscale,
            after=after,
        )
        return moves

    twin = _Quiet()
    run(twin, probe=False)
    moves = run(ctx, probe=True)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at the onset over 1000x the median before", gn[onset] > 1000 * _median(gn[10:30])
    )
    ctx.check(
        "updates over 10x smaller after (steps 100-300) than before (steps 10-30)",
        _median(moves[100:]) < _median(moves[10:30]) / 10,
    )
    ctx.check(
        "no blow-up after the onset (steps 30-70 under 2x the level before)",
        max(ls[onset : onset + 40]) < 2 * _mean(ls[20:30]),
    )
    ctx.check(
        "no progress once the leftover momentum is spent (steps 270-300 over 0.8x steps 50-70)",
        _mean(ls[270:]) > 0.8 * _mean(ls[50:70]),
    )
    ctx.check("loss was falling before the onset", _fell(ls[:onset], ratio=0.7))
    ctx.check(
        "loss at the end over 1.5x that of the run without the probe",
        _mean(ls[-30:]) > 1.5 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


# -- signwriting: a trunk rate multiplier read under a misspelt key ---------------------------------


def _strokes_width(gen, batch, seed=5):
    """Twelve standardised readings of a signwriter's brush stroke (brush load, mahl-stick
    height, enamel viscosity, stroke speed, ...) and the stroke's width, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="signwriter_brush_stroke_width_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the width of a signwriter's brush stroke from 12 standardised readings (brush load, mahl-stick height, enamel viscosity, ...), RMSprop at 1e-3 with two param groups: the trunk (fc1, fc2) at lr x cfg.get('trunk_lr_mult', 0.0) and the head at lr. The config spells the key 'trunk_lr_multiplier', so the default 0.0 (a frozen-trunk fine-tuning default) applies and fc1 and fc2 never move (relative updates exactly 0 while the head moves over 1e-3 of its weights a step). The loss still falls through the head on the random trunk features, but ends well above what the run with the trunk training reaches; finite.",
)
def h239_signwriter_trunk_lr_key_typo(ctx: Context) -> None:
    steps = 240
    cfg = {"lr": 1e-3, "trunk_lr_multiplier": 1.0}

    def run(c, mult):
        gen = seeded(23905)
        model = Stack(12, hidden=64)
        trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
        opt = torch.optim.RMSprop(
            [
                {"params": trunk, "lr": cfg["lr"] * mult},
                {"params": model.head.parameters(), "lr": cfg["lr"]},
            ]
        )
        ratios = {"fc1": [], "fc2": [], "head": []}
        prev = {}

        def before(step):
            for name in ratios:
                prev[name] = getattr(model, name).weight.detach().clone()

        def after(step):
            for name in ratios:
                w = getattr(model, name).weight.detach()
                ratios[name].append(float((w - prev[name]).norm() / w.norm()))

        _train(
            c, model, opt, _strokes_width(gen, 64), steps, F.mse_loss, before=before, after=after
        )
        return ratios

    twin = _Quiet()
    run(twin, cfg["trunk_lr_multiplier"])  # what the config meant, for the checks only
    ratios = run(ctx, cfg.get("trunk_lr_mult", 0.0))
    ls = ctx.losses
    ctx.check("fc1's weights never move", max(ratios["fc1"]) == 0.0)
    ctx.check("fc2's weights never move", max(ratios["fc2"]) == 0.0)
    ctx.check("the head's relative update over 1e-3 per step", _median(ratios["head"]) > 1e-3)
    ctx.check("loss fell", _fell(ls, ratio=0.8))
    ctx.check(
        "loss at the end over 1.5x that of the trunk-training run",
        _mean(ls[-30:]) > 1.5 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


# -- ski ballet: the linear-scaling rule applied on resume to a batch that was already global -------


def _ballet(gen, batch, seed=6):
    """Twelve standardised readings of a ski-ballet (acroski) routine (spin count, pole-flip
    height, edge changes, music sync, ...) and the judges' score, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="ski_ballet_routine_score_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=100,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a ski-ballet routine's score from 12 standardised readings (spin count, pole-flip height, edge changes, ...), plain SGD at 0.05, MSE. The run is resumed at step 100 on 8 workers, and the resume code applies the linear-scaling rule (lr x world size) although the configured batch of 64 is already the global batch, so the rate jumps 8x: lr x sharpness (power iteration on a fixed batch) goes from about 0.6-0.7 to about 5, and the loss, which had been falling, oscillates and blows up (over 100x its low within 30 steps of the onset, inf at step 120).",
)
def h239_ski_ballet_resume_lr_scaling(ctx: Context) -> None:
    gen = seeded(23906)
    onset, world = 100, 8
    model = Stack(12, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.12)
    probe = next(_ballet(torch.Generator().manual_seed(4646), 256))
    record = {}

    def before(step):
        if step == onset:
            for group in opt.param_groups:
                group["lr"] *= world
        if step in (onset - 5, onset, onset + 2) or (step < onset and step % 20 == 0):
            record[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _ballet(gen, 64), 200, F.mse_loss, before=before)
    ls = ctx.losses
    low = min(ls[:onset])
    broke = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check(
        "lr x sharpness under 2 before the onset",
        max(v for s, v in record.items() if s < onset) < 2,
    )
    ctx.check("lr x sharpness over 2 at the onset", record.get(onset, 0.0) > 2)
    ctx.check(
        "loss blows up (100x its low) within 30 steps after the onset",
        broke is not None and onset < broke < onset + 30,
    )


# -- dragon dance: an IRNN's identity init scaled 1.5 for 1.0 ---------------------------------------


class PoleRNN(nn.Module):
    """A hand-written ReLU Elman network: h_t = relu(inp(x_t) + rec(h_{t-1})), head on the last
    state. The IRNN recipe initialises rec as the identity times a scale."""

    def __init__(self, feat=4, hidden=32, scale=1.0):
        super().__init__()
        self.inp = nn.Linear(feat, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(scale * torch.eye(hidden))
            nn.init.normal_(self.inp.weight, std=0.1)
            nn.init.zeros_(self.inp.bias)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _drums(gen, batch, length=30, seed=7):
    """A dragon dance's drum track: ``length`` beats of four standardised readings (drum
    loudness, cymbal hit, gong hit, tempo deviation), and how high the lead pole lifts on the last
    beat, standardised (it follows the last few beats)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        weights = torch.exp(-0.5 * torch.arange(length - 1, -1, -1).float())
        y = torch.tanh((x @ w) * weights).sum(1)
        yield x, y


@scenario(
    family="dragon_dance_pole_lift_relu_rnn",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU Elman network (inp, rec, head; h_t = relu(inp(x_t) + rec(h_{t-1}))) regressing how high a dragon dance's lead pole lifts on the last beat from 30 beats of four standardised drum readings, SGD at 1e-3 with momentum 0.9, MSE. The IRNN recipe initialises the recurrent weights as the identity times a scale; the scale was typed 1.2 for 1.0, so the recurrent map expands the hidden state by about 1.2 a beat: at step 0 the gradient on the hidden state grows at every beat on its way back through time, about 100x from the last beat to the first, the loss starts in the thousands and the first SGD step throws the weights off: the loss is inf at step 1 and NaN at step 2.",
)
def h239_dragon_dance_irnn_scale_typo(ctx: Context) -> None:
    gen = seeded(23907)
    model = PoleRNN(scale=1.2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    seen = {}

    def unscale(step):
        if step == 0:
            seen["norms"] = [float(h.grad.norm()) for h in model.states]

    _train(ctx, model, opt, _drums(gen, 32), 80, F.mse_loss, unscale=unscale)
    ls = ctx.losses
    norms = seen.get("norms", [0.0, 1.0])
    ctx.check(
        "gradient on the hidden state grows over 100x from the last beat to the first (step 0)",
        norms[0] > 100 * max(norms[-1], 1e-30),
    )
    ctx.check(
        "and grows at nearly every beat on the way back",
        sum(a > b for a, b in zip(norms[:-1], norms[1:], strict=True)) > 0.9 * (len(norms) - 1),
    )
    broke = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 1e6 * ls[0]), None)
    ctx.check(
        "loss blows up (non-finite or 1e6x) within 30 steps", broke is not None and broke < 30
    )


# -- savate: a hand-written Bernoulli log-likelihood head without a clamp -------------------------


class ScoreHead(nn.Module):
    """The hand-written head: the log-probabilities of "scored" and "not scored" as
    log(sigmoid(z)) and log(1 - sigmoid(z)) (logsigmoid(z) and logsigmoid(-z) were meant)."""

    def __init__(self, hidden):
        super().__init__()
        self.lin = nn.Linear(hidden, 1)

    def forward(self, h):
        p = torch.sigmoid(self.lin(h)).squeeze(-1)
        return torch.stack([torch.log(p), torch.log(1 - p)], -1)


class KickNet(nn.Module):
    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = ScoreHead(hidden)

    def features(self, x):
        return F.relu(self.fc2(F.relu(self.fc1(x))))

    def forward(self, x):
        return self.head(self.features(x))


def _bernoulli_nll(logp, y):
    return -(y * logp[:, 0] + (1 - y) * logp[:, 1]).mean()


def _kicks(gen, batch, d_in=12, seed=8):
    """Twelve standardised readings of a savate kick (chambering time, hip rotation, foot speed,
    target zone, ...) and whether the judges scored it; clean kicks are scored, so the labels
    are nearly separable."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, (x @ w > 0).float()


@scenario(
    family="savate_kick_score_logprob_bce_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("head",),
    diverges=145,
    heldout=True,
    note="A ReLU MLP (fc1, fc2) with a hand-written Bernoulli head (head: log(sigmoid(z)) and log(1 - sigmoid(z)); logsigmoid(z) and logsigmoid(-z) were meant) predicting whether the judges score a savate kick from 12 standardised readings (chambering time, hip rotation, foot speed, ...), nearly separable labels, Adamax at 3e-3, Bernoulli NLL y log p + (1 - y) log(1 - p). As the net grows confident its logits grow; at step 145 a scored kick's logit passes about 17, its float32 sigmoid rounds to exactly 1.0, the head's log(1 - p) is -inf and (1 - y) x -inf = 0 x -inf makes the loss NaN. BCE with logits on the same logits is finite.",
)
def h239_savate_log_one_minus_sigmoid(ctx: Context) -> None:
    gen = seeded(23908)
    model = KickNet()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    seen = {}

    def watch(step, out, x, y):
        with torch.no_grad():
            z = model.head.lin(model.features(x)).squeeze(-1)
        seen.setdefault("zmax", []).append(float(z.max()))
        if "bad" not in seen and not torch.isfinite(out).all():
            seen["bad"] = step
            seen["neg_inf"] = bool(torch.isneginf(out[:, 1]).any())
            seen["p_one"] = bool((torch.sigmoid(z) == 1.0).any())
            seen["stable"] = bool(math.isfinite(float(F.binary_cross_entropy_with_logits(z, y))))

    _train(ctx, model, opt, _kicks(gen, 64), 300, _bernoulli_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss goes NaN", bad is not None and math.isnan(ls[bad]))
    ctx.check("the head first went non-finite at that step", seen.get("bad") == bad)
    ctx.check("the head's log(1 - p) is -inf at that step", seen.get("neg_inf") is True)
    ctx.check("a sigmoid rounds to exactly 1.0 at that step", seen.get("p_one") is True)
    ctx.check("BCE with logits on the same logits is finite", seen.get("stable") is True)
    ctx.check(
        "loss fell and was finite before", bad is not None and bad > 30 and _fell(ls[:bad], k=10)
    )


# -- horseball: a loss normaliser that defaults to 1 on one step ------------------------------------


def _shots(gen, batch, d_in=10, seed=9):
    """Ten standardised readings of a horseball shot (gallop speed, distance to the hoop, angle,
    defender pressure, ...) and whether it scored."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        p = torch.sigmoid(2.0 * torch.tanh(x @ w / math.sqrt(d_in)) * 2)
        yield x, torch.bernoulli(p, generator=gen)


@scenario(
    family="horseball_shot_goal_bce_mlp",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting whether a horseball shot scores from 10 standardised readings (gallop speed, distance to the hoop, angle, defender pressure, ...), SGD at 0.05 with momentum 0.9, BCE with logits summed over the batch and divided by a normaliser n_valid that the loader returns with each batch (meant for masked samples). At step 120 a loader worker restarts and its first batch comes back without the field, and the loop's `batch.get('n_valid', 1)` divides by 1: that one step's gradient is 64x the usual (the batch and its mean loss are ordinary). The step and the momentum it leaves throw the weights off, the loss jumps, and the run recovers within a few dozen steps; finite.",
)
def h239_horseball_normaliser_default(ctx: Context) -> None:
    gen = seeded(23909)
    onset, batch = 120, 64
    model = Stack(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def scale_loss(step, total):
        n_valid = 1 if step == onset else batch  # batch.get("n_valid", 1)
        return total * batch / n_valid  # the summed loss over n_valid

    _train(
        ctx,
        model,
        opt,
        _shots(gen, batch),
        240,
        F.binary_cross_entropy_with_logits,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at the onset over 30x the median before", gn[onset] > 30 * _median(gn[100:120])
    )
    ctx.check(
        "loss at the onset within 1.5x its level (the batch is ordinary)",
        ls[onset] < 1.5 * _mean(ls[100:120]),
    )
    ctx.check(
        "loss after the kick over 2x its level before", max(ls[121:130]) > 2 * _mean(ls[100:120])
    )
    ctx.check(
        "loss back within 1.3x its level (steps 200-240)",
        _mean(ls[200:]) < 1.3 * _mean(ls[100:120]),
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.8))
    ctx.check("finite", _finite(ls))


# -- linocut: one reading left out of the standardiser's column list -------------------------------


def _gouges(gen, batch, seed=10):
    """Ten readings of a linocut gouge pass (gouge width, hand pressure, lino temperature, cut
    angle, ...) and the cut depth, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


def _raw_width(x):
    """The gouge width in micrometres (about 300 +- 30): the standardiser's column list left it
    out, so it reaches the model raw."""
    x = x.clone()
    x[:, 0] = 300.0 + 30.0 * x[:, 0]
    return x


@scenario(
    family="linocut_gouge_depth_relu_regressor",
    optimizer="SGD (momentum)",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a linocut gouge pass's cut depth from 10 readings (gouge width, hand pressure, lino temperature, ...), SGD at 1e-3 with momentum 0.9, MSE. The standardiser's column list misses the gouge width, which reaches the model raw in micrometres (about 300): fc1's pre-activations are dominated by it, the first steps' large gradients on its weights push the pre-activations of the units still alive below zero for every sample, and within a few steps all of fc1's ReLUs are dead (never positive on a 512-sample probe) and stay dead: the output is a constant and the loss sits at the target's variance for the rest of the run, far above the same run with the width standardised; finite.",
)
def h239_linocut_unstandardised_width(ctx: Context) -> None:
    steps = 240
    probe = next(_gouges(torch.Generator().manual_seed(5050), 512))[0]

    def run(c, raw):
        gen = seeded(23910)
        model = Stack(10, hidden=64)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        dead = {}
        fix = _raw_width if raw else (lambda x: x)

        def measure(step):
            with torch.no_grad():
                dead[step] = dead_fraction(model.act1(model.fc1(fix(probe))))

        measure(-1)
        _train(
            c,
            model,
            opt,
            _gouges(gen, 64),
            steps,
            F.mse_loss,
            alter=lambda step, x, y: (fix(x), y),
            after=lambda step: measure(step) if step in (10, steps - 1) else None,
        )
        return dead

    twin = _Quiet()
    run(twin, raw=False)  # the width standardised, for the checks only
    dead = run(ctx, raw=True)
    ls = ctx.losses
    ctx.check("under 70% of fc1's units dead at init", dead[-1] < 0.7)
    ctx.check("all of fc1's units dead by step 10", dead[10] == 1.0)
    ctx.check("and still all dead at the end", dead[steps - 1] == 1.0)
    ctx.check(
        "loss at the end over 3x that of the run with the width standardised",
        _mean(ls[-30:]) > 3 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


# -- controls -----------------------------------------------------------------------------------


def _tent_runs(gen, batch, d_in=12, seed=11):
    """Twelve standardised readings of a tent-pegging run (lance angle, gallop speed, peg size,
    approach line, ...) and its outcome: missed, struck (the peg hit but not lifted) or carried
    (the peg lifted and carried past the line). Carries are rare: about 80% miss, 15% strike,
    5% carry."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(3, d_in, generator=g)
    prior = torch.tensor([0.80, 0.15, 0.05])
    while True:
        y = torch.multinomial(prior, batch, replacement=True, generator=gen)
        x = protos[y] + torch.randn(batch, d_in, generator=gen)
        yield x, y


@scenario(
    family="tent_pegging_outcome_weighted_ce_classifier",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying a tent-pegging run's outcome (missed, struck, carried) from 12 standardised readings, class-imbalanced (about 80% / 15% / 5%), cross-entropy weighted by inverse class frequency, NAdam at 2e-3, ReduceLROnPlateau (factor 0.5, patience 20). Healthy control.",
)
def h239_control_tent_pegging_weighted(ctx: Context) -> None:
    gen = seeded(23911)
    model = Stack(12, hidden=64, out=3)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    weights = 1.0 / torch.tensor([0.80, 0.15, 0.05])
    weights = weights / weights.sum() * 3
    rare = {"hit": 0, "n": 0}

    def watch(step, out, x, y):
        if step >= 200:
            mask = y == 2
            rare["hit"] += int((out.argmax(1)[mask] == 2).sum())
            rare["n"] += int(mask.sum())

    _train(
        ctx,
        model,
        opt,
        _tent_runs(gen, 64),
        250,
        lambda o, y: F.cross_entropy(o, y, weight=weights),
        classifier=True,
        sched=sched,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.6))
    ctx.check("recall of the rare class over 70% at the end", rare["hit"] > 0.7 * rare["n"])
    ctx.check("finite", _finite(ls))


class StrikeConv(nn.Module):
    def __init__(self, classes=5, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(3, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x.transpose(1, 2)))
        h = F.max_pool1d(h, 2)
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _silat_strikes(gen, batch, length=64, classes=5):
    """A pencak silat practitioner's wrist IMU (3-axis acceleration) over 64 frames of a strike,
    five strike kinds differing in rhythm and axis, with noise."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.12 + 0.06 * y.float()[:, None, None]
        axis = torch.nn.functional.one_hot(y % 3, 3).float()[:, None, :]
        sig = torch.sin(freq * t[None, :, None]) * (0.5 + axis)
        yield sig + 0.4 * torch.randn(batch, length, 3, generator=gen), y


@scenario(
    family="silat_strike_kind_conv1d_classifier",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A 1-D convolutional classifier (conv1, conv2, head) naming five pencak-silat strike kinds from 64 frames of a wrist IMU, RAdam at 3e-3 with two param groups (no weight decay on biases, 1e-4 on weights), cross-entropy with label smoothing 0.1, OneCycleLR. Healthy control.",
)
def h239_control_silat_conv1d(ctx: Context) -> None:
    gen = seeded(23912)
    steps = 200
    model = StrikeConv()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    hits = []

    def watch(step, out, x, y):
        if step >= steps - 30:
            hits.append(float((out.argmax(1) == y).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _silat_strikes(gen, 64),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check("accuracy over 80% at the end", _mean(hits) > 0.8)
    ctx.check("finite", _finite(ls))


class EdgeNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.spread = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean(h), self.spread(h)], -1)


def _gauss_nll(out, y):
    var = F.softplus(out[:, 1]) + 1e-4
    return F.gaussian_nll_loss(out[:, 0], y, var)


def _turns(gen, batch, seed=13):
    """Ten standardised readings of a telemark turn (knee drop, boot flex, snow hardness, speed,
    ...) and the ski's edge angle, with noise that grows on hard snow; a few batches noisier."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        sd = 0.1 + 0.3 * torch.sigmoid(x[:, 2])
        y = torch.tanh(x @ w / math.sqrt(10)) + sd * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="telemark_turn_edge_angle_fp16_gaussian_nll_net",
    optimizer="ASGD",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (fc1, fc2, mean and spread heads) predicting a mean and a softplus variance of a telemark turn's edge angle from 10 standardised readings, heteroscedastic noise, Gaussian NLL, ASGD at 0.02, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2, gradient norm clipped at 1 after unscaling, linear warm-up over 20 steps then cosine decay (LambdaLR). Healthy control.",
)
def h239_control_telemark_fp16_asgd(ctx: Context) -> None:
    gen = seeded(23913)
    steps, warm = 220, 20
    model = EdgeNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)

    def schedule(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _turns(gen, 64),
        steps,
        _gauss_nll,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
        accumulate=2,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("loss fell by 0.15 nats", _mean(ls[-20:]) < _mean(ls[:20]) - 0.15)
    ctx.check("finite", _finite(ls))
    ctx.check("the scaler's scale stayed above 1", min(ctx.scales) > 1)
