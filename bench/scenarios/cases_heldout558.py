"""Held-out set 558 (``h558_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: halling-dance kick-grade classifier with weight decay typed 0 on separable grades
(output_logit_divergence, Adam); cannon-casting bore-void regressor with lr typed 5e-2
(loss_of_plasticity, Adam); mbube choir breath regressor with an eps-less hand-written
standardiser fed a stuck microphone (nonfinite, Adamax); cornrow braid scalp-tension regressor fed
pascals under fp16 autocast (amp_overflow, AdamW); ebru marbling comb-spread regressor with
StepLR gamma typed 10 (sharpness_above_limit, plain SGD); kolam line-width regressor with fc1's
group lr typed 3e-9 (update_ratio_out_of_range, NAdam); mammatus lobe-depth regressor fed one
shard in millimetres (data_outlier, SGD momentum); sheaf-toss BCE classifier with a one-step
class-weight of 1000 (gradient_spike, SGD Nesterov); quilling coil-shape cosine classifier with
scale typed 1000 (softmax_collapse, RAdam); lenticular-cloud wavelength regressor with a
decoupled weight-decay sign bug (loss_divergence, Adagrad).
Controls: crwth bow-stroke classifier with CosineAnnealingWarmRestarts (two restarts, loss jumps,
alarming-looking, SGD momentum); sastrugi ridge-drift neural ODE integrated with hand-written
RK4 (Rprop, full batch); birling log-roll balance classifier (ASGD, OneCycleLR, accumulation 2,
clipping, label smoothing 0.1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, loss)``
    returns the loss actually backpropagated, ``after(step, loss)``. Stops after a non-finite
    loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Reg(nn.Module):
    """fc1 -> act -> fc2 -> act -> head (scalar)."""

    def __init__(self, d_in, width, act=F.silu, out=1):
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, out)
        self.act = act
        self.out = out

    def features(self, x):
        return self.act(self.fc2(self.act(self.fc1(x))))

    def forward(self, x):
        z = self.head(self.features(x))
        return z.squeeze(-1) if self.out == 1 else z


# -- 1. output logit divergence: weight decay typed 0 on separable grades --------------------------


@scenario(
    "halling_dance_kick_grade_relu_classifier",
    "Adam",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Halling-dance kick-height grader (12 motion-capture features, 5 separable grades, ReLU "
    "MLP, cross-entropy, Adam lr 1e-2). The config's weight_decay was typed 0 (meant 0.1) and "
    "label smoothing is off, so on separable grades nothing bounds the head: its logits keep "
    "growing long after the training loss is small.",
)
def h558_halling_kick_logit_growth(ctx):
    gen = seeded(5581)
    model = _Reg(12, 64, act=F.relu, out=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe_x, _ = next(_grades(torch.Generator().manual_seed(1), 256, 12, 5, 58, spread=0.8))
    peaks = []

    def after(step, loss):
        with torch.no_grad():
            peaks.append(float(model(probe_x).abs().max()))

    with torch.no_grad():
        start = float(model(probe_x).abs().max())
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 58, spread=0.8),
        250,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("head's max |logit| grew over 20x", peaks[-1] > 20 * start)
    ctx.check("still growing in the last quarter", peaks[-1] > 1.2 * peaks[3 * len(peaks) // 4])
    ctx.check("loss finite and fell", _fell(losses, ratio=0.1))


# -- 2. loss of plasticity: RMSprop lr typed 5e-2 kills fc2's ReLUs -------------------------------


@scenario(
    "cannon_casting_bore_void_relu_regressor",
    "Adam",
    "loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Cannon-casting bore-void regressor (10 foundry readings: pour temperature, mould "
    "moisture, cooling time..., ReLU MLP, MSE, Adam). The lr was typed 5e-2 for 5e-4: the "
    "first updates push most of fc2's pre-activations negative for every input, those ReLU "
    "units die and never come back; the few survivors carry the fit.",
)
def h558_cannon_bore_dead_relus(ctx):
    gen = seeded(5582)
    model = _Reg(10, 64, act=F.relu)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    probe_x, _ = next(_readings(torch.Generator().manual_seed(2), 512, 10, 59))

    def dead():
        with torch.no_grad():
            h = model.fc2(F.relu(model.fc1(probe_x)))
            return float(((h > 0).sum(0) == 0).float().mean())

    start = dead()
    late = []

    def after(step, loss):
        if step >= 130:
            late.append(dead())

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 59), 150, F.mse_loss, after=after)
    ctx.check("under 20% of fc2's units dead at start", start < 0.2)
    ctx.check("over half of fc2's units dead in the last 20 steps", min(late) > 0.5)
    ctx.check("losses finite", _finite(losses))


# -- 3. nonfinite: eps-less standardiser fed a stuck microphone ------------------------------------


class _Standardise(nn.Module):
    """Per-row standardisation over the window, written by hand without an eps."""

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = (x * x).mean(-1, keepdim=True) - mean * mean
        return (x - mean) / var.sqrt()


class _Breath(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = _Standardise()
        self.fc1 = nn.Linear(16, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(self.norm(x)))))).squeeze(-1)


@scenario(
    "mbube_choir_phrase_breath_norm_regressor",
    "Adamax",
    "nonfinite",
    where=("norm",),
    diverges=70,
    onset=70,
    heldout=True,
    note="Mbube choir phrase-length regressor from a 16-sample breath-pressure window, "
    "standardised per row by a hand-written module (var = E[x^2] - E[x]^2, no eps, no clamp), "
    "GELU MLP, MSE, Adamax. At step 70 one microphone is stuck at a constant reading: its "
    "variance is 0 or slightly negative by cancellation, sqrt / division give NaN, the loss is NaN.",
)
def h558_mbube_breath_stuck_mic(ctx):
    gen = seeded(5583)
    model = _Breath()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}

    def batches():
        g = torch.Generator().manual_seed(60)
        w = torch.randn(16, generator=g)
        while True:
            x = 3.0 + torch.randn(32, 16, generator=gen)
            yield x, torch.tanh((x - x.mean(-1, keepdim=True)) @ w / 4)

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[5] = 1013.37
            with torch.no_grad():
                seen["norm"] = bool(torch.isfinite(model.norm(x)).all())
        return x, y

    losses, _ = _loop(ctx, model, opt, batches(), 150, F.mse_loss, alter=alter)
    ctx.check("finite before step 70", _finite(losses[:70]) and len(losses) > 70)
    ctx.check("norm's output non-finite at step 70", seen.get("norm") is False)
    ctx.check("loss NaN at step 70", len(losses) == 71 and math.isnan(losses[70]))


# -- 4. amp overflow: scalp tension in pascals under fp16 autocast ---------------------------------


@scenario(
    "cornrow_braid_scalp_tension_fp16_silu_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Cornrow braid scalp-tension regressor (8 readings: strand count, hair density, pull "
    "sensor in kPa..., SiLU MLP, MSE, AdamW, fp16 autocast + GradScaler). From step 90 a new "
    "pull sensor reports pascals (about 3e5) and the column is not standardised: fc1 runs in "
    "fp16 under autocast and its output overflows 65504 to inf; in float32 it stays finite.",
)
def h558_cornrow_tension_pascals(ctx):
    gen = seeded(5584)
    model = _Reg(8, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 8, 61)
    losses, seen = [], {}
    for step in range(150):
        x, y = next(data)
        if step >= 90:
            x = x.clone()
            x[:, 3] = 3.0e5 + 1.0e4 * x[:, 3]
            with torch.no_grad():
                with torch.autocast("cpu", dtype=torch.float16):
                    h16 = model.fc1(x)
                seen.setdefault("fp16", bool(torch.isfinite(h16).all()))
                seen.setdefault("fp32", bool(torch.isfinite(model.fc1(x.float())).all()))
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("loss finite and fell before step 90", _fell(losses[:90]))
    ctx.check("fc1's fp16 output non-finite at step 90", seen.get("fp16") is False)
    ctx.check("fc1's float32 output finite at step 90", seen.get("fp32") is True)
    ctx.check("loss non-finite at step 90", len(losses) == 91 and not math.isfinite(losses[90]))


# -- 5. sharpness above limit: StepLR gamma typed 10 -----------------------------------------------


def _sharpness(model, x, y, iters=20):
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((a * a).sum() for a in v))
        v = [a / n for a in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    "ebru_marbling_comb_spread_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=60,
    heldout=True,
    note="Ebru paper-marbling comb-spread regressor (10 readings: size viscosity, comb pitch, "
    "paint drop count..., tanh MLP, MSE, plain SGD). The StepLR was meant to decay by "
    "gamma=0.1 at step 60 but gamma was typed 10: lr jumps 10x, lr x sharpness passes 2 and "
    "the loss blows up.",
)
def h558_ebru_comb_steplr_gamma(ctx):
    gen = seeded(5585)
    model = _Reg(10, 48, act=torch.tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=10.0)
    px, py = next(_readings(torch.Generator().manual_seed(3), 256, 10, 62))
    seen = {}

    def before(step):
        if step in (59, 61):
            seen[step] = opt.param_groups[0]["lr"] * _sharpness(model, px, py)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 62), 120, F.mse_loss, before=before, sched=sched
    )
    ctx.check("lr x sharpness under 2 before step 60", seen.get(59, 9.0) < 2.0)
    ctx.check("lr x sharpness over 2 after step 60", seen.get(61, 0.0) > 2.0)
    best = min(losses[:60])
    ctx.check(
        "loss blows up after step 60",
        any((not math.isfinite(v)) or v > 100 * best for v in losses[60:]),
    )


# -- 6. update ratio out of range: fc1 group lr typed 3e-9 -----------------------------------------


@scenario(
    "kolam_rice_flour_line_width_gelu_regressor",
    "NAdam",
    "update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Kolam rice-flour line-width regressor (9 readings: flour grind, finger gap, floor "
    "dampness..., GELU MLP, MSE, NAdam with param groups: fc1 at 3e-4 for the fine-tuned "
    "stem, fc2/head at 3e-3). The stem group's lr was typed 3e-9: fc1 never moves while the "
    "rest trains.",
)
def h558_kolam_stem_group_lr(ctx):
    gen = seeded(5586)
    model = _Reg(9, 64, act=F.gelu)
    opt = torch.optim.NAdam(
        [
            {"params": model.fc1.parameters(), "lr": 3e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 3e-3},
        ]
    )
    w1, w2 = _flat(model.fc1), _flat(model.fc2)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 9, 63), 150, F.mse_loss)
    ctx.check("fc1 moved under 1e-5 relative", _rel(_flat(model.fc1), w1) < 1e-5)
    ctx.check("fc2 moved over 1e-2 relative", _rel(_flat(model.fc2), w2) > 1e-2)
    ctx.check("losses finite", _finite(losses))


# -- 7. data outlier: one shard of lobe depths in millimetres -------------------------------------


@scenario(
    "mammatus_cloud_lobe_depth_silu_regressor",
    "SGD momentum",
    "data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Mammatus-cloud lobe-depth regressor (12 radiosonde readings, SiLU MLP, MSE, SGD "
    "momentum 0.9, clipping at 1.0). The shard read at step 110 came from a station logging "
    "lobe depth in millimetres instead of kilometres-scaled units: one batch of targets 1000x, "
    "loss and gradient spike, the clip holds the update and the run recovers.",
)
def h558_mammatus_mm_shard(ctx):
    gen = seeded(5587)
    model = _Reg(12, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 110 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 12, 64), 200, F.mse_loss, alter=alter, clip=1.0
    )
    ctx.check("loss over 100x at step 110", losses[110] > 100 * _median(losses[90:110]))
    ctx.check("gradient over 20x at step 110", norms[110] > 20 * _median(norms[90:110]))
    ctx.check("recovers", _finite(losses) and _mean(losses[-10:]) < 2 * _mean(losses[100:110]))


# -- 8. gradient spike: class-weight 1000 for one step --------------------------------------------


@scenario(
    "sheaf_toss_bar_clear_gelu_bce_classifier",
    "SGD Nesterov",
    "gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Sheaf-toss bar-clear BCE classifier (10 readings: pitchfork angle, sheaf weight, bar "
    "height..., GELU MLP, SGD Nesterov, clipping at 2). The loss weight comes from a per-shard "
    "positive-count table; at step 130 a new shard's table is empty and the weight computed "
    "as 1/(count + 1e-3) is 1000 for that one step. The logged loss is ordinary; the "
    "backpropagated gradient bursts.",
)
def h558_sheaf_toss_weight_burst(ctx):
    gen = seeded(5588)
    model = _Reg(10, 48, act=F.gelu)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def batches():
        g = torch.Generator().manual_seed(65)
        w = torch.randn(10, generator=g)
        while True:
            x = torch.randn(64, 10, generator=gen)
            yield x, (x @ w + 0.3 * torch.randn(64, generator=gen) > 0).float()

    def backprop(step, loss):
        return loss * (1.0 / (0 + 1e-3) if step == 130 else 1.0)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        batches(),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=2.0,
    )
    ctx.check("gradient over 100x at step 130", norms[130] > 100 * _median(norms[110:130]))
    ctx.check("logged loss ordinary at step 130", losses[130] < 2 * _median(losses[110:130]))
    ctx.check("finite and fell", _fell(losses))


# -- 9. softmax collapse: cosine-head scale typed 1000 ---------------------------------------------


class _CosineNet(nn.Module):
    def __init__(self, d_in, width, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, classes, bias=False)
        self.scale = scale

    def forward(self, x):
        h = F.normalize(F.gelu(self.fc2(F.gelu(self.fc1(x)))), dim=-1)
        return self.scale * h @ F.normalize(self.head.weight, dim=-1).t()


@scenario(
    "quilling_paper_coil_shape_cosine_classifier",
    "RAdam",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Quilling paper-coil shape classifier (14 readings of a coil scan, 6 shapes: tight, "
    "loose, teardrop, marquise..., cosine-similarity head, cross-entropy, RAdam). The head's "
    "scale was typed 1000 for 10: the softmax saturates, many rows' target probability rounds "
    "to exactly 1.0 and the others get no useful gradient.",
)
def h558_quilling_cosine_scale(ctx):
    gen = seeded(5589)
    model = _CosineNet(14, 48, 6, scale=1000.0)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    px, py = next(_grades(torch.Generator().manual_seed(4), 256, 14, 6, 66))
    fracs = []

    def after(step, loss):
        if step % 10 == 9:
            with torch.no_grad():
                fracs.append(collapsed_fraction(model(px), py))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 66),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over 40% of rows' target probability exactly 1.0", max(fracs[-5:]) > 0.4)
    ctx.check("losses finite", _finite(losses))


# -- 10. loss divergence: decoupled weight-decay sign bug -----------------------------------------


@scenario(
    "lenticular_cloud_wave_length_relu_regressor",
    "Adagrad",
    "loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Lenticular-cloud wavelength regressor (10 readings: wind at crest height, stability, "
    "ridge width..., ReLU MLP, MSE, Adagrad). A hand-written decoupled weight decay after "
    "opt.step() multiplies the weights by (1 + lr * wd) instead of (1 - lr * wd): the weights "
    "grow a little every step and the loss climbs slowly with no jump.",
)
def h558_lenticular_decay_sign(ctx):
    gen = seeded(5590)
    model = _Reg(10, 64, act=F.relu)
    lr, wd = 0.01, 0.4
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    w0 = float(_flat(model).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 67), 250, F.mse_loss, after=after)
    means = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9, 10)]
    best = min(means)
    k = means.index(best)
    rise = max([b - a for a, b in zip(means[k:-1], means[k + 1 :], strict=True)] or [0.0])
    ctx.check("weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss ends over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check(
        "no 10-step window carries half the climb",
        rise < 0.5 * (means[-1] - best),
    )
    ctx.check("losses finite", _finite(losses))


# -- 11. control: cosine schedule with warm restarts (loss jumps twice) ----------------------------


@scenario(
    "crwth_bow_stroke_relu_classifier",
    "SGD momentum",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Crwth bow-stroke classifier (16 bow-sensor readings, 8 stroke kinds, ReLU MLP, "
    "cross-entropy, SGD momentum 0.9, CosineAnnealingWarmRestarts T_0=70 over 210 steps). The "
    "lr jumps back to its peak at steps 70 and 140 and the loss jumps at each restart, then "
    "falls again: alarming-looking, healthy.",
)
def h558_crwth_cosine_restarts(ctx):
    gen = seeded(5591)
    model = _Reg(16, 64, act=F.relu, out=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=70, eta_min=1e-4)
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 8, 68, spread=1.6),
        210,
        F.cross_entropy,
        classifier=True,
        before=before,
        sched=sched,
    )
    restarts = [i for i in range(1, len(lrs)) if lrs[i] > 10 * lrs[i - 1]]
    ctx.check("lr back at its peak twice", restarts == [70, 140])
    ctx.check(
        "loss jumps at each restart",
        all(_mean(losses[r + 1 : r + 6]) > 1.2 * _mean(losses[r - 5 : r]) for r in restarts)
        and len(restarts) == 2,
    )
    ctx.check("trained: loss fell, finite", _fell(losses, ratio=0.5))


# -- 12. control: neural ODE integrated with hand-written RK4 --------------------------------------


class _ODEFunc(nn.Module):
    def __init__(self, dim, width):
        super().__init__()
        self.fc1 = nn.Linear(dim + 1, width)
        self.fc2 = nn.Linear(width, dim)

    def forward(self, t, z):
        tt = torch.full_like(z[:, :1], t)
        return self.fc2(torch.tanh(self.fc1(torch.cat([z, tt], -1))))


class _NeuralODE(nn.Module):
    def __init__(self, d_in, dim, steps=6):
        super().__init__()
        self.encode = nn.Linear(d_in, dim)
        self.func = _ODEFunc(dim, 32)
        self.head = nn.Linear(dim, 1)
        self.steps = steps

    def forward(self, x):
        z, h = self.encode(x), 1.0 / self.steps
        for i in range(self.steps):
            t = i * h
            k1 = self.func(t, z)
            k2 = self.func(t + h / 2, z + h / 2 * k1)
            k3 = self.func(t + h / 2, z + h / 2 * k2)
            k4 = self.func(t + h, z + h * k3)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return self.head(z).squeeze(-1)


@scenario(
    "sastrugi_ridge_drift_rk4_neural_ode_regressor",
    "Rprop",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sastrugi ridge-drift regressor (8 readings: wind speed and fetch, snow temperature, "
    "age..., a neural ODE integrated over [0, 1] with 6 fixed RK4 steps written by hand, MSE, "
    "Rprop on a fixed full batch of 512 survey points): healthy control.",
)
def h558_sastrugi_rk4_ode(ctx):
    gen = seeded(5592)
    model = _NeuralODE(8, 16)
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    x, y = next(_readings(gen, 512, 8, 69))

    def full():
        while True:
            yield x, y

    losses, _ = _loop(ctx, model, opt, full(), 120, F.mse_loss)
    ctx.check("trained: loss fell, finite", _fell(losses, ratio=0.5))


# -- 13. control: ASGD, OneCycleLR, accumulation, clipping, label smoothing ------------------------


@scenario(
    "birling_log_roll_balance_gelu_classifier",
    "ASGD",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Birling log-roll balance classifier (12 foot-pressure readings, 4 states: steady, "
    "drifting, spinning, falling; GELU MLP, cross-entropy with label smoothing 0.1, ASGD, "
    "OneCycleLR, gradient accumulation 2, clipping at 1, noisy readings): healthy control.",
)
def h558_birling_asgd_onecycle(ctx):
    gen = seeded(5593)
    model = _Reg(12, 64, act=F.gelu, out=4)
    opt = torch.optim.ASGD(model.parameters(), lr=0.1)
    steps, accum = 160, 2
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.2, total_steps=steps, cycle_momentum=False
    )
    ctx.attach(model, opt)
    data = _grades(gen, 32, 12, 4, 70, spread=1.5)
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / accum).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        ctx.step(torch.tensor(total))
    ctx.check("trained: loss fell, finite", _fell(losses, ratio=0.6))
