"""Held-out set 241 (``h241_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a dizi membrane-buzz classifier whose confidence penalty
has the wrong sign, a saltmarsh silt regressor taking log (not log1p) of empty sediment traps, a
skimboard glide regressor whose epoch tail batch is summed instead of averaged for one step, a
goldsmith solder-flow ReLU regressor with RMSprop's lr typed 3e-2 for 3e-4, a comet magnitude
regressor fed one observer's tail lengths in arcseconds, a valiha string classifier whose trunk
lr multiplier is cast to int, a gannet dive-depth deep ReLU MLP initialised with a fourth root for
a square root, a silk-reel cosine classifier whose logit scale starts at 10 for log(10), a drumlin
ice-speed regressor whose StepLR gamma was written 1e1 for 1e-1, a bumblebee pollen regressor
whose hand-written weight decay has the wrong sign, and three controls (a wakeboard landing BCE
classifier, a termite-mound airflow Gaussian NLL net, a kingfisher prey classifier under fp16
autocast with a GradScaler and label smoothing).

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
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; ``amp`` is the
    autocast dtype (None: float32); stops after logging a NaN loss."""
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
                ctx.targets(y if not isinstance(y, tuple) else y[1])
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out, y)
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


# -- dizi: the z-loss added with the wrong sign --------------------------------------


def _dizi_notes(gen, batch, seed=1):
    """Sixteen standardised spectral readings of a dizi note (band energies around the dimo
    membrane's buzz, breath noise, ...) and which of six buzz qualities a player heard."""
    return _kinds(gen, batch, 16, 6, seed, noise=0.3)


@scenario(
    family="dizi_dimo_membrane_buzz_gelu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying the buzz quality of a dizi flute's dimo membrane into six kinds from 16 standardised spectral readings, Adam at 3e-3, cross-entropy plus the auxiliary z-loss (PaLM: 1e-3 x logsumexp(logits)^2, meant to keep the softmax normaliser near 0). A refactor that moved the regularisers into a list of (name, weight, term) entries turned `+` into `-` for this one: the run is rewarded for a large logsumexp, so once the notes are separated the head's logits grow without bound, faster and faster (max |logit| on a fixed probe over 20x that at step 10 and still growing over the last 50 steps, into the tens of thousands), and the logged total loss goes ever more negative; finite within the run. With the intended sign the logits stay small.",
)
def h241_dizi_z_loss_sign(ctx: Context) -> None:
    steps = 240
    probe = next(_dizi_notes(torch.Generator().manual_seed(98), 512))

    def run(c, sign):
        gen = seeded(24101)
        model = Stack(16, hidden=64, out=6, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        sizes = []

        def loss_fn(out, y):
            z = torch.logsumexp(out, -1)
            return F.cross_entropy(out, y) + sign * Z_COEF * z.pow(2).mean()

        def after(step):
            with torch.no_grad():
                sizes.append(float(model(probe[0]).abs().max()))

        _train(c, model, opt, _dizi_notes(gen, 64), steps, loss_fn, classifier=True, after=after)
        return sizes

    twin = _Quiet()
    twin_sizes = run(twin, sign=+1.0)
    sizes = run(ctx, sign=-1.0)
    ctx.check("max |logit| over 20x that at step 10", sizes[-1] > 20 * sizes[10])
    ctx.check("logits still growing over the last 50 steps", sizes[-1] > 1.2 * sizes[-50])
    ctx.check(
        "with the intended sign the logits stay under 1/4 of the bug's",
        twin_sizes[-1] < 0.25 * sizes[-1],
    )
    ctx.check("loss fell from the start", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]))
    ctx.check("the bug's logits grew over 100x from step 0", sizes[-1] > 100 * sizes[0])
    ctx.check("finite", _finite(ctx.losses))


Z_COEF = 1e-3


# -- saltmarsh: log written for log1p on gauge counts ---------------------------------------------


class LogCounts(nn.Module):
    """Turns the two sediment-trap counts into log counts (the feature code's ``log``)."""

    def forward(self, counts):
        return torch.log(counts)


class SiltNet(nn.Module):
    def __init__(self, hidden=48):
        super().__init__()
        self.log_counts = LogCounts()
        self.fc1 = nn.Linear(2 + 8, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        feats = torch.cat([self.log_counts(x[:, :2]), x[:, 2:]], -1)
        return self.head(F.silu(self.fc2(F.silu(self.fc1(feats))))).squeeze(-1)


ONSET_SILT = 110


def _silt_tides(gen, batch, empty_from=None, seed=2):
    """Two sediment-trap grain counts (1 to 400 per tide) and eight standardised readings (tide
    height, creek width, vegetation cover, ...) of a saltmarsh creek, and the silt laid down,
    standardised. From step ``empty_from`` the log reaches a neap-tide week where some traps
    caught nothing: counts of 0."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    step = 0
    while True:
        counts = torch.randint(1, 400, (batch, 2), generator=gen).float()
        if empty_from is not None and step >= empty_from:
            counts[: batch // 10, 0] = 0.0
        rest = torch.randn(batch, 8, generator=gen)
        y = 0.4 * torch.log1p(counts).sum(-1) - 4.0 + torch.tanh(rest @ w / 3)
        step += 1
        yield torch.cat([counts, rest], 1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="saltmarsh_creek_silt_log_count_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("log_counts",),
    diverges=ONSET_SILT,
    onset=ONSET_SILT,
    heldout=True,
    note="A SiLU net regressing the silt a saltmarsh creek lays down per tide from two sediment-trap grain counts and eight standardised readings; its log_counts module takes torch.log of the counts where torch.log1p was meant (the first survey had no empty traps). Adamax at 2e-3, MSE. At step 110 the log reaches a neap-tide week where some traps caught nothing: log(0) = -inf, fc1 mixes it with weights of both signs into inf - inf = NaN, and the loss is NaN at step 110. The inputs are finite and the weights are finite at the onset; log1p gives a finite output on the same batch.",
)
def h241_saltmarsh_log_of_empty_trap(ctx: Context) -> None:
    gen = seeded(24102)
    model = SiltNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_SILT:
            with torch.no_grad():
                seen["x_finite"] = bool(torch.isfinite(x).all())
                seen["log_inf"] = bool(torch.isinf(model.log_counts(x[:, :2])).any())
                seen["w_finite"] = all(bool(torch.isfinite(p).all()) for p in model.parameters())
                feats = torch.cat([torch.log1p(x[:, :2]), x[:, 2:]], -1)
                h = F.silu(model.fc2(F.silu(model.fc1(feats))))
                seen["fixed_finite"] = bool(torch.isfinite(model.head(h)).all())

    _train(
        ctx, model, opt, _silt_tides(gen, 64, empty_from=ONSET_SILT), 150, F.mse_loss, watch=watch
    )
    ls = ctx.losses
    ctx.check("finite before the onset", _finite(ls[:ONSET_SILT]))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SILT], ratio=0.7))
    ctx.check("loss NaN at the onset", _first_bad(ls) == ONSET_SILT)
    ctx.check("the onset batch's inputs are finite", seen.get("x_finite") is True)
    ctx.check("log_counts gives -inf at the onset", seen.get("log_inf") is True)
    ctx.check("the weights are finite at the onset", seen.get("w_finite") is True)
    ctx.check("log1p gives a finite output", seen.get("fixed_finite") is True)


# -- skimboard: the epoch's tail batch goes through a reduction='sum' path ------------------------


ONSET_SKIM = 120


def _skim_runs(gen, batch, seed=3):
    """Ten standardised readings of a skimboard run (board length, run-up speed, water depth on
    the sand, drop angle, ...) and the glide distance, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.1)


@scenario(
    family="skimboard_glide_distance_huber_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=ONSET_SKIM,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a skimboard's glide distance from 10 standardised readings (board length, run-up speed, water film depth, drop angle, ...), SGD momentum 0.9 at 0.01, Huber loss, gradient accumulation over 2 micro-batches of 32. At step 120 the loader reaches the end of its epoch and the trainer's tail-batch path, copied from an evaluation helper, computes the Huber loss with reduction='sum' instead of 'mean' for that one step: the backpropagated loss and the gradient are 32x (gradient norm over 15x the median of the 20 steps before); the batch itself is an ordinary one. The momentum carries the burst for a few steps; the loss jumps and comes back; finite, no blow-up.",
)
def h241_skimboard_tail_batch_sum_reduction(ctx: Context) -> None:
    gen = seeded(24103)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    state = {"reduction": "mean"}
    seen = {}

    def before(step):
        state["reduction"] = "sum" if step == ONSET_SKIM else "mean"

    def loss_fn(out, y):
        return F.huber_loss(out, y, reduction=state["reduction"])

    def watch(step, out, x, y):
        if step == ONSET_SKIM:
            seen["x_max"] = max(seen.get("x_max", 0.0), float(x.abs().max()))
            seen["y_max"] = max(seen.get("y_max", 0.0), float(y.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _skim_runs(gen, 32),
        220,
        loss_fn,
        before=before,
        watch=watch,
        accumulate=2,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    base = _median(gn[ONSET_SKIM - 20 : ONSET_SKIM])
    ctx.check("gradient norm at the onset over 15x the median before", gn[ONSET_SKIM] > 15 * base)
    ctx.check("gradient norm two steps after under 5x the median", gn[ONSET_SKIM + 2] < 5 * base)
    ctx.check(
        "the onset batch is ordinary (|x| < 6, |y| < 4)",
        seen.get("x_max", 99) < 6 and seen.get("y_max", 99) < 4,
    )
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SKIM], ratio=0.7))
    ctx.check(
        "loss (per-sample) back under 2x its pre-onset level by the end",
        _mean(ls[-10:]) < 2 * _mean(ls[ONSET_SKIM - 10 : ONSET_SKIM]),
    )
    ctx.check("finite", _finite(ls))


# -- goldsmith: RMSprop's lr typed 3e-2 for 3e-4 -------------------------------------------------


def _solder_joints(gen, batch, seed=4):
    """Twelve standardised readings of a goldsmith's solder joint (alloy carat, flux amount,
    torch distance, seam gap, ...) and how far the solder flowed, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="goldsmith_solder_flow_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how far the solder flows along a goldsmith's seam from 12 standardised readings (alloy carat, flux amount, torch distance, seam gap, ...), RMSprop, MSE. The lr was typed 3e-2 for 3e-4. RMSprop's early steps of about lr per weight push fc2's pre-activations negative: within 20 steps over half of act2's ReLU units (about 58%, from 6% at the start, measured on a 2048-sample probe) stop firing on every input and none comes back; the model is left with the remaining units, the loss stays jerky and well above (over 3x) that of the intended lr, which keeps act2 under 20% dead; no blow-up, finite.",
)
def h241_goldsmith_rmsprop_lr_typo(ctx: Context) -> None:
    steps = 200

    def run(c, lr):
        gen = seeded(24104)
        model = Stack(12, hidden=64)
        opt = torch.optim.RMSprop(model.parameters(), lr=lr)
        probe = torch.randn(2048, 12, generator=torch.Generator().manual_seed(7))
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _train(c, model, opt, _solder_joints(gen, 64), steps, F.mse_loss, after=after)
        return dead

    twin = _Quiet()
    twin_dead = run(twin, lr=3e-4)
    dead = run(ctx, lr=3e-2)
    ls = ctx.losses
    ctx.check("act2 over 50% dead at the end", dead[-1] > 0.5)
    ctx.check("act2 over 50% dead by step 20", dead[20] > 0.5)
    ctx.check("act2 under 20% dead after step 0", dead[0] < 0.2)
    ctx.check("the intended lr keeps act2 under 20% dead", twin_dead[-1] < 0.2)
    ctx.check("act2's dead units do not revive", dead[-1] >= dead[100] - 0.02)
    ctx.check(
        "loss at the end over 3x that of the intended lr",
        _mean(ls[-30:]) > 3 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


# -- comet: one night's tail lengths logged in arcseconds -----------------------------------------


ONSET_COMET = 140


def _comet_nights(gen, batch, arcsec_at=None, seed=5):
    """Ten readings of a comet on one night (heliocentric distance, geocentric distance, phase
    angle, dust colour, tail length in arcminutes standardised with the arcminute scaler, ...)
    and its total magnitude, standardised. One observer's night at step ``arcsec_at`` logged
    the tail length (column 0) in arcseconds."""
    step = 0
    for x, y in _readings(gen, batch, 10, seed, noise=0.05):
        if arcsec_at is not None and step == arcsec_at:
            arcmin = 40.0 + 12.0 * x[:, 0]
            x = x.clone()
            x[:, 0] = (arcmin * 60.0 - 40.0) / 12.0
        step += 1
        yield x, y


@scenario(
    family="comet_tail_magnitude_tanh_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=ONSET_COMET,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a comet's total magnitude from 10 readings of the night (heliocentric and geocentric distance, phase angle, dust colour, tail length, ...), SGD Nesterov (momentum 0.9) at 0.02 with gradient clipping at norm 1, MSE. One observer's batch, at step 140, logged the tail length in arcseconds where the pipeline expects arcminutes: that column is about 200 instead of about 1, fc1's tanh units saturate, the loss at that step is over 5x the median before and the raw gradient over 10x. Clipping bounds the update; the loss comes back within a few steps; finite.",
)
def h241_comet_tail_in_arcseconds(ctx: Context) -> None:
    gen = seeded(24105)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_COMET:
            seen["x_max"] = float(x.abs().max())

    _train(
        ctx,
        model,
        opt,
        _comet_nights(gen, 64, arcsec_at=ONSET_COMET),
        220,
        F.mse_loss,
        clip=1.0,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(ls[ONSET_COMET - 20 : ONSET_COMET])
    ctx.check("loss at the onset over 5x the median before", ls[ONSET_COMET] > 5 * before)
    ctx.check(
        "raw gradient at the onset over 10x the median before",
        gn[ONSET_COMET] > 10 * _median(gn[ONSET_COMET - 20 : ONSET_COMET]),
    )
    ctx.check("the onset batch has a column in the hundreds", seen.get("x_max", 0.0) > 100)
    ctx.check(
        "loss back under 3x the median before within 20 steps",
        _median(ls[ONSET_COMET + 10 : ONSET_COMET + 20]) < 3 * before,
    )
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_COMET], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- valiha: the config parser casts the trunk's lr multiplier to int -----------------------------


class ValihaNet(nn.Module):
    """Plucked-string spectra -> trunk (fc1, fc2) -> head over eight string positions."""

    def __init__(self, d_in=20, hidden=64, classes=8):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _valiha_plucks(gen, batch, seed=6):
    """Twenty standardised spectral readings of one pluck on a valiha (a bamboo tube zither) and
    which of eight strings was plucked."""
    return _kinds(gen, batch, 20, 8, seed, noise=0.6)


@scenario(
    family="valiha_tube_zither_string_relu_classifier",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2 trunk; head) classifying which of a valiha's eight strings was plucked from 20 standardised spectral readings, NAdam at 2e-3 with two param groups: the trunk at lr x trunk_mult, the head at lr. The YAML gives trunk_mult: 0.3, and the config loader casts every `*_mult` key with int() (written for integer epoch multipliers), so the trunk's rate is exactly 0: fc1 and fc2 never move while the head trains. The loss falls only through the random trunk's features and ends well above that of the intended multiplier; finite.",
)
def h241_valiha_int_cast_lr_multiplier(ctx: Context) -> None:
    steps = 200

    def run(c, mult):
        gen = seeded(24106)
        model = ValihaNet()
        trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
        opt = torch.optim.NAdam(
            [{"params": trunk, "lr": 2e-3 * mult}, {"params": list(model.head.parameters())}],
            lr=2e-3,
        )
        start = {n: getattr(model, n).weight.detach().clone() for n in ("fc1", "fc2", "head")}
        _train(c, model, opt, _valiha_plucks(gen, 64), steps, F.cross_entropy, classifier=True)
        return {
            n: float((getattr(model, n).weight.detach() - w).norm() / w.norm())
            for n, w in start.items()
        }

    twin = _Quiet()
    run(twin, 0.3)
    moved = run(ctx, int("0.3".split(".")[0]))
    ls = ctx.losses
    ctx.check("fc1 did not move at all", moved["fc1"] == 0.0)
    ctx.check("fc2 did not move at all", moved["fc2"] == 0.0)
    ctx.check("the head moved over 10% of its weights", moved["head"] > 0.1)
    ctx.check("loss fell (through the head)", _fell(ls, ratio=0.9))
    ctx.check(
        "loss at the end over 1.5x that of the intended multiplier",
        _mean(ls[-30:]) > 1.5 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


# -- gannet: a deep ReLU net initialised with std 1 (the N(0, 1) default of a port) ---------------


class DiveNet(nn.Module):
    """Eight Linear+ReLU layers (layers.0, layers.2, ...) and a head."""

    def __init__(self, d_in=10, hidden=64, depth=8):
        super().__init__()
        mods = []
        for i in range(depth):
            mods += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.ReLU()]
        self.layers = nn.Sequential(*mods)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.layers(x)).squeeze(-1)


def _gannet_dives(gen, batch, seed=7):
    """Ten standardised readings of a gannet's plunge dive (height at tuck, wing angle, wind,
    fish shoal depth, ...) and the dive depth, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


DIVE_BREAK = 1


@scenario(
    family="gannet_plunge_dive_depth_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=tuple(f"layers.{2 * i}" for i in range(8)) + ("head",),
    diverges=DIVE_BREAK,
    heldout=True,
    note="An eight-layer ReLU MLP (layers.0 ... layers.14 Linear, head) regressing a gannet's plunge-dive depth from 10 standardised readings (height at tuck, wing angle, wind, shoal depth, ...), plain SGD at 0.01, MSE. The init helper was meant to draw He-normal weights, std sqrt(2) / fan_in ** 0.5, and was written sqrt(2) / fan_in ** 0.25: every layer multiplies the signal by about 2.8 on the way forward and the error by about 2.8 on the way back, so the activations and the gradients grow about 2.8x per layer through the depth: the loss at step 0 is over 1e4x that of the intended init, the gradient norm over 1e5x, the first SGD step throws the weights out and the loss is non-finite within a few steps. With the intended init the same run trains.",
)
def h241_gannet_init_fourth_root(ctx: Context) -> None:
    def run(c, power):
        gen = seeded(24107)
        model = DiveNet()
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=math.sqrt(2.0) / m.in_features**power)
                nn.init.zeros_(m.bias)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        acts = []

        def watch(step, out, x, y):
            if step == 0:
                with torch.no_grad():
                    h = x
                    for layer in model.layers:
                        h = layer(h)
                        if isinstance(layer, nn.ReLU):
                            acts.append(float(h.pow(2).mean().sqrt()))

        _train(c, model, opt, _gannet_dives(gen, 64), 80, F.mse_loss, watch=watch)
        return acts

    twin = _Quiet()
    run(twin, 0.5)
    acts = run(ctx, 0.25)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 0 over 1e4x that of the intended init", ls[0] > 1e4 * twin.losses[0])
    ctx.check(
        "gradient norm at step 0 over 1e5x that of the intended init",
        gn[0] > 1e5 * twin.grad_norms[0],
    )
    ctx.check(
        "activations grow over 2x per layer through the depth",
        all(b > 2 * a for a, b in zip(acts[:-1], acts[1:], strict=True)),
    )
    ctx.check("loss non-finite at the stated step", _first_bad(ls) == DIVE_BREAK)
    ctx.check("with the intended init the run trains", _fell(twin.losses, ratio=0.7))


# -- silk reeling: a cosine classifier's logit scale initialised at 10 instead of log(10) ---------


LOG10 = math.log(10.0)


class ReelCosine(nn.Module):
    """A SiLU trunk (fc1, fc2) and a cosine head: ``head`` holds the class directions, the logits
    are exp(logit_scale) x cos(feature, direction), CLIP-style."""

    def __init__(self, d_in=16, hidden=64, classes=5, scale_init=LOG10):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(scale_init)))

    def forward(self, x):
        h = F.normalize(F.silu(self.fc2(F.silu(self.fc1(x)))), dim=-1)
        return self.logit_scale.exp() * F.linear(h, F.normalize(self.head.weight, dim=-1))


def _filaments(gen, batch, seed=8):
    """Sixteen standardised readings of a reeled silk filament (cocoon boil time, reel speed,
    tension, denier, ...) and which of five breakage causes ended it."""
    return _kinds(gen, batch, 16, 5, seed, noise=0.5)


@scenario(
    family="silk_reel_filament_break_cosine_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A cosine classifier (SiLU trunk fc1, fc2; head of class directions; logits = exp(logit_scale) x cosine) naming which of five causes broke a reeled silk filament from 16 standardised readings, Adagrad at 0.05, cross-entropy. The learnable logit_scale is meant to start at log(10) (a temperature of 0.1, as CLIP's code does) and was initialised at 10: the logits are 22026 x cosine, so cosine gaps of a few hundredths are logit gaps in the hundreds and the float32 softmax rounds to exactly 0 and 1 for most rows from the start (over half of a 512-sample probe's rows give their top class exactly 1.0), the loss is exactly 0.0 on most batches and wrong answers cost tens to hundreds of nats; finite. With the intended init no probe row saturates.",
)
def h241_silk_reel_logit_scale_not_logged(ctx: Context) -> None:
    steps = 150
    probe = next(_filaments(torch.Generator().manual_seed(97), 512))

    def run(c, init):
        gen = seeded(24108)
        model = ReelCosine(scale_init=init)
        opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
        sat = []

        def after(step):
            with torch.no_grad():
                p = F.softmax(model(probe[0]), -1)
                sat.append(float((p.max(-1).values == 1.0).float().mean()))

        _train(
            c, model, opt, _filaments(gen, 64), steps, F.cross_entropy, classifier=True, after=after
        )
        with torch.no_grad():
            col = collapsed_fraction(model(probe[0]), probe[1])
        return sat, col

    twin = _Quiet()
    twin_sat, _ = run(twin, math.log(10.0))
    sat, col = run(ctx, 10.0)
    ls = ctx.losses
    ctx.check("over half the probe's rows saturate to exactly 1.0 at the end", sat[-1] > 0.5)
    ctx.check("over half saturate from the first steps", sat[0] > 0.5)
    ctx.check("some probe rows give their target exactly 1.0", col > 0.2)
    ctx.check("with the intended init no row saturates", max(twin_sat) < 0.01)
    ctx.check("a wrong answer still costs over 10 nats after step 20", max(ls[20:]) > 10)
    ctx.check("the loss is exactly 0.0 on some steps (saturated softmax)", min(ls) == 0.0)
    ctx.check("finite", _finite(ls))


# -- drumlin: StepLR's gamma written 1e1 for 1e-1 ------------------------------------------------


ONSET_DRUMLIN = 120


def _drumlin_fabric(gen, batch, seed=9):
    """Ten standardised readings of a drumlin (till clast fabric strength, long-axis azimuth
    spread, slope, elongation, ...) and the ice-flow speed reconstructed for it, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="drumlin_till_fabric_ice_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=ONSET_DRUMLIN,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the ice-flow speed reconstructed for a drumlin from 10 standardised readings of its till fabric and shape, plain SGD at 0.02 with a StepLR every 60 steps whose gamma was written 1e1 for 1e-1: the rate goes 0.02, 0.2 at step 60, 2.0 at step 120. At 0.2 the run is still stable; at 2.0 lr times the loss's top Hessian eigenvalue on a fixed batch (power iteration every 5 steps) passes 2 at step 120 (first measured), the loss oscillates and blows up to over 100x its low. With gamma 0.1 lr x sharpness stays under 2 and the loss falls.",
)
def h241_drumlin_steplr_gamma_typo(ctx: Context) -> None:
    steps = 180
    probe = next(_drumlin_fabric(torch.Generator().manual_seed(96), 256))

    def run(c, gamma):
        gen = seeded(24109)
        model = Stack(10, hidden=64, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=0.02)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=gamma)
        lrs, sharp = [], {}

        def before(step):
            lrs.append(opt.param_groups[0]["lr"])
            if step % 5 == 0:
                sharp[step] = _sharpness(model, F.mse_loss, probe)

        _train(
            c, model, opt, _drumlin_fabric(gen, 64), steps, F.mse_loss, before=before, sched=sched
        )
        return lrs, sharp

    twin = _Quiet()
    twin_lrs, twin_sharp = run(twin, 0.1)
    lrs, sharp = run(ctx, 10.0)
    ls = ctx.losses
    over = [s for s, lam in sharp.items() if math.isfinite(lam) and lrs[s] * lam > 2]
    first = over[0] if over else None
    low = min(ls[:ONSET_DRUMLIN])
    ctx.check("lr x sharpness past 2 (first at the onset)", first == ONSET_DRUMLIN)
    ctx.check(
        "loss blows up to over 100x its low after the onset",
        any(not math.isfinite(v) or v > 100 * low for v in ls[ONSET_DRUMLIN:]),
    )
    ctx.check(
        "loss finite and under 3x its start before the onset",
        _finite(ls[:ONSET_DRUMLIN]) and max(ls[10:ONSET_DRUMLIN]) < 3 * ls[0],
    )
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_DRUMLIN], ratio=0.7))
    ctx.check(
        "with gamma 0.1 lr x sharpness stays under 2",
        max(twin_lrs[s] * lam for s, lam in twin_sharp.items()) < 2,
    )
    ctx.check("with gamma 0.1 the loss falls", _fell(twin.losses, ratio=0.5))


WD_BEE = 0.01


# -- bumblebee: decoupled weight decay applied with the wrong sign --------------------------------


def _buzz_visits(gen, batch, seed=10):
    """Twelve standardised readings of a bumblebee's buzz-pollination visit (buzz frequency,
    flower species, bee size, temperature, ...) and the pollen released, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="bumblebee_buzz_pollen_release_relu_regressor",
    optimizer="Adadelta",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the pollen a bumblebee's buzz shakes out of a flower from 12 standardised readings (buzz frequency, flower species, bee size, temperature, ...), Adadelta at lr 1.0, MSE, with decoupled weight decay done by hand after each step. The decay line was written `p.mul_(1 + wd)` for `p.mul_(1 - wd)` (wd 0.01): every weight grows by 1% a step, faster than Adadelta's small steps can pull it back, the three layers' product grows and the loss, after falling for a while, climbs slowly and steadily to over 5x its low with no 10-step mean over 3x the one before; finite, no blow-up in the run. With the intended sign the loss falls.",
)
def h241_bumblebee_weight_decay_sign(ctx: Context) -> None:
    steps = 220

    def run(c, sign):
        gen = seeded(24110)
        model = Stack(12, hidden=64)
        opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
        norms = []

        def after(step):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + sign * WD_BEE)
                norms.append(float(model.fc2.weight.norm()))

        _train(c, model, opt, _buzz_visits(gen, 64), steps, F.mse_loss, after=after)
        return norms

    twin = _Quiet()
    run(twin, -1.0)
    norms = run(ctx, +1.0)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 5]) for i in range(0, 80))
    means = [_mean(ls[i : i + 10]) for i in range(20, len(ls) - 9, 10)]
    jumps = max(b / max(a, 1e-8) for a, b in zip(means[:-1], means[1:], strict=True))
    ctx.check("loss at the end over 5x its low", _mean(ls[-10:]) > 5 * low)
    ctx.check("the climb is slow: no 10-step mean over 3x the one before", jumps < 3)
    ctx.check("fc2's weight norm grows over 3x", norms[-1] > 3 * norms[0])
    ctx.check("with the intended sign the loss falls", _fell(twin.losses, ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- controls ---------------------------------------------------------------------------------------


def _wake_jumps(gen, batch, seed=11):
    """Fourteen standardised readings of a wakeboard jump (boat speed, rope length, edge angle,
    pop timing, wake height, ...) and whether the rider landed it, with 10% of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(14, generator=g)
    v = torch.randn(14, generator=g)
    while True:
        x = torch.randn(batch, 14, generator=gen)
        score = x @ w / math.sqrt(14) + 0.5 * torch.sin(x @ v / math.sqrt(14) * 2)
        y = (score > 0).float()
        flip = torch.rand(batch, generator=gen) < 0.1
        yield x, torch.where(flip, 1 - y, y)


@scenario(
    family="wakeboard_wake_jump_landing_bce_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head with one logit) predicting whether a wakeboarder lands a wake jump from 14 standardised readings (boat speed, rope length, edge angle, pop timing, ...), 10% noisy labels, binary cross-entropy with logits, AdamW (weight decay 0.01) with a OneCycleLR to 3e-3, clipping at norm 1. The loss falls and the accuracy on a held-out probe passes 75%; finite.",
)
def h241_wakeboard_landing_control(ctx: Context) -> None:
    steps = 200
    gen = seeded(24111)
    model = Stack(14, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        _wake_jumps(gen, 64),
        steps,
        F.binary_cross_entropy_with_logits,
        clip=1.0,
        sched=sched,
    )
    px, py = next(_wake_jumps(torch.Generator().manual_seed(95), 1024))
    with torch.no_grad():
        acc = float(((model(px) > 0).float() == py).float().mean())
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.8))
    ctx.check("probe accuracy over 75%", acc > 0.75)
    ctx.check("finite", _finite(ctx.losses))


class MoundNet(nn.Module):
    """A SiLU trunk (fc1, fc2) with a mean head and a log-variance head."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.logvar_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return self.mean_head(h).squeeze(-1), self.logvar_head(h).squeeze(-1)


def _mound_airflow(gen, batch, seed=12):
    """Ten standardised readings of a termite mound (height, chimney width, sun angle, outside
    temperature, ...) and the airflow in its chimney, standardised, with noise whose spread
    depends on the sun angle (heteroscedastic)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        mu = torch.tanh(x @ w / math.sqrt(10))
        sd = 0.05 + 0.3 * torch.sigmoid(2 * x[:, 0])
        yield x, mu + sd * torch.randn(batch, generator=gen)


def _gaussian_nll(out, y):
    mean, logvar = out
    return F.gaussian_nll_loss(mean, y, logvar.clamp(-10, 10).exp())


@scenario(
    family="termite_mound_chimney_airflow_gaussian_nll_net",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU net with a mean head and a log-variance head regressing the airflow in a termite mound's chimney from 10 standardised readings (height, chimney width, sun angle, outside temperature, ...) with heteroscedastic noise, Gaussian negative log-likelihood (F.gaussian_nll_loss, log-variance clamped to [-10, 10]), RAdam at 3e-3 with gradient accumulation over 2 micro-batches and a ReduceLROnPlateau on the training loss. The NLL falls, the predicted spread follows the true one; finite.",
)
def h241_termite_mound_gaussian_nll_control(ctx: Context) -> None:
    gen = seeded(24112)
    model = MoundNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(ctx, model, opt, _mound_airflow(gen, 32), 300, _gaussian_nll, sched=sched, accumulate=2)
    px = torch.randn(1024, 10, generator=torch.Generator().manual_seed(94))
    with torch.no_grad():
        _, logvar = model(px)
    true_sd = 0.05 + 0.3 * torch.sigmoid(2 * px[:, 0])
    corr = float(torch.corrcoef(torch.stack([logvar, true_sd.log()]))[0, 1])
    ctx.check("NLL fell by over 0.5 nats", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.5)
    ctx.check("predicted spread follows the true one (corr over 0.6)", corr > 0.6)
    ctx.check("finite", _finite(ctx.losses))


def _kingfisher_dives(gen, batch, seed=13):
    """Eighteen standardised readings of a kingfisher's dive (perch height, water clarity,
    light, entry angle, ...) and which of seven prey it came up with, overlapping."""
    return _kinds(gen, batch, 18, 7, seed, noise=0.55)


@scenario(
    family="kingfisher_dive_prey_fp16_silu_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) naming which of seven prey a kingfisher came up with from 18 standardised readings of the dive (perch height, water clarity, light, entry angle, ...), cross-entropy with label smoothing 0.1, SGD Nesterov (momentum 0.9) at 0.05 with a 20-step linear warm-up and cosine decay (LambdaLR), fp16 autocast with a torch.amp.GradScaler, clipping at 2 after unscaling. The loss falls, the probe accuracy passes 70%, the scale stays up; finite.",
)
def h241_kingfisher_fp16_label_smoothing_control(ctx: Context) -> None:
    steps, warm = 200, 20
    gen = seeded(24113)
    model = Stack(18, hidden=64, out=7, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def loss_fn(out, y):
        return F.cross_entropy(out.float(), y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _kingfisher_dives(gen, 64),
        steps,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
        clip=2.0,
    )
    px, py = next(_kingfisher_dives(torch.Generator().manual_seed(93), 1024))
    with torch.no_grad():
        acc = float((model(px).argmax(-1) == py).float().mean())
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("probe accuracy over 70%", acc > 0.7)
    ctx.check("the scale stays at or above its start", min(ctx.scales) >= 1024.0)
    ctx.check("finite", _finite(ctx.losses))
