"""Held-out set 181 (``h181_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a cyclocross lap-split Elman RNN whose recurrent matrix got
a feed-forward tanh gain, a morning-glory cloud roll-speed regressor taking the log of a pressure
jump with no floor, a farrier's shoe-size ReLU MLP fed one shard in raw millimetres, a
cabinetmaker's dovetail-gap SiLU MLP with a weight-decay gradient hook of the wrong sign, a djembe
stroke 1-D conv net whose backbone group's rate multiplier was typed 1e-6, a parkour landing tanh
regressor with a warm-up peak typed 10x, an ultimate-frisbee throw classifier dividing by a
stored inverse temperature, a knife-grinder edge-defect ReLU classifier given a plain-SGD learning
rate under NAdam, a trampoline routine-completion GELU MLP (BCE) whose checkpoint step
back-propagates a validation pass into the train gradient, a bioluminescent-bay photon-count
Poisson net with its exp link in float16, and three controls (a psaltery tune GRU language
model with tied embeddings, a snow-roller length SiLU MLP on heavy-tailed targets under Huber, a
kintsugi seam BatchNorm CNN under OneCycleLR).

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
    digit_batches,
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


def _rel_change(now: list[torch.Tensor], start: list[torch.Tensor]) -> float:
    num = math.sqrt(
        sum(float(((a.detach() - b) ** 2).sum()) for a, b in zip(now, start, strict=True))
    )
    den = math.sqrt(sum(float((b**2).sum()) for b in start))
    return num / max(den, 1e-30)


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
    extra=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    stop_on_nan=True,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``alter(step, x, y)`` changes a batch, ``extra(step, out, loss)`` returns what is actually
    back-propagated (the logged loss is ``loss_fn``'s), ``watch(step, out, x, y)`` records,
    ``accumulate`` micro-batches a step; stops after logging a NaN loss unless told not to."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = extra(step, out, loss) if extra is not None else loss
            total = total / accumulate
            if watch is not None:
                watch(step, out, x, y)
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
        opt.zero_grad(set_to_none=True)
        if stop_on_nan and math.isnan(shown):
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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- cyclocross: a feed-forward tanh gain on the recurrent matrix ----------------------------------


class LapRNN(nn.Module):
    """An Elman cell (``cell``) read over the course's segments, the lap split from the last state."""

    def __init__(self, d_in=6, hidden=48, recurrent_gain=1.0):
        super().__init__()
        self.cell = nn.RNNCell(d_in, hidden, nonlinearity="tanh")
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.weight_hh, gain=recurrent_gain)

    def forward(self, x, keep=None):
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if keep is not None and h.requires_grad:
                h.retain_grad()
                keep.append(h)
        return self.head(h).squeeze(-1)


def _laps(gen, batch, segments=60, d_in=6, seed=1):
    """Per-segment course readings (gradient, mud depth, camber, barriers, sand, cornering),
    standardised; the lap split is a sum of every segment's cost plus the start loop's."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, segments, d_in, generator=gen)
        y = 3.0 * torch.tanh(x @ w / 2).mean(1) + 0.3 * torch.tanh(x[:, :5, 0].sum(1))
        yield x, y


@scenario(
    family="cyclocross_lap_split_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="An Elman RNN (nn.RNNCell, tanh) read over 60 course segments to predict a cyclocross "
    "rider's lap split, plain SGD at 1e-3, MSE. The init helper applied "
    "orthogonal_(gain=calculate_gain('tanh')) to every weight matrix, the recurrent one "
    "included: the gain 5/3 meant for feed-forward tanh layers makes the recurrent matrix's "
    "singular values 5/3, and the gradient grows backward through the 60 steps: the loss's "
    "gradient at the first hidden state is about a hundred times that at the last, and the "
    "whole gradient's norm 5-200 (a gain-1 cell's is under 1), for the whole run; the loss "
    "stays finite and falls slowly and unevenly.",
)
def h181_cyclocross_tanh_gain_on_recurrent(ctx: Context) -> None:
    gen = seeded(18101)
    model = LapRNN(recurrent_gain=nn.init.calculate_gain("tanh"))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios = []
    ctx.attach(model, opt)
    batches = _laps(gen, 32)
    for _ in range(150):
        x, y = next(batches)
        keep = []
        loss = F.mse_loss(model(x, keep), y)
        loss.backward()
        ratios.append(float(keep[0].grad.norm()) / max(float(keep[-1].grad.norm()), 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss.detach())):
            break
    ctx.check("gradient at the first hidden state 50x the last's at init", ratios[0] > 50)
    ctx.check("still 20x over the last 20 steps", _median(ratios[-20:]) > 20)
    ctx.check("gradient norm above 10 over the last 20 steps", _median(ctx.grad_norms[-20:]) > 10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- morning glory cloud: the log of a pressure jump with no floor ---------------------------------


class LogJump(nn.Module):
    """Log of the barograph's pressure jump (hPa) as the roll cloud passes."""

    def forward(self, jump):
        out = torch.log(jump)
        self.last = out.detach()
        return out


class RollCloudNet(nn.Module):
    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.logjump = LogJump()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        feats = torch.cat([self.logjump(x[:, :1]), x[:, 1:]], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(feats))))).squeeze(-1)


GLORY_CALM = 90


def _roll_clouds(gen, batch, d_in=9, seed=2):
    """Station readings as a morning glory roll cloud passes: the pressure jump in hPa (logged
    to 0.1 hPa) and nine standardised wind and humidity readings; the label is the roll's speed
    (standardised). At step 90 the batch holds a calm inland station's record: the cloud passed
    with no measurable jump, 0.0 hPa."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    step = 0
    while True:
        jump = torch.exp(0.5 * torch.randn(batch, 1, generator=gen)) * 1.2
        rest = torch.randn(batch, d_in, generator=gen)
        y = 0.8 * torch.log(jump[:, 0]) + torch.tanh(rest @ w / 3)
        jump = torch.clamp(torch.round(jump * 10) / 10, min=0.1)
        if step == GLORY_CALM:
            jump[:3] = 0.0
        step += 1
        yield torch.cat([jump, rest], -1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="morning_glory_cloud_roll_speed_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("logjump",),
    diverges=GLORY_CALM,
    heldout=True,
    onset=GLORY_CALM,
    note="A ReLU MLP predicting a morning glory roll cloud's speed from the barograph's "
    "pressure jump and nine wind and humidity readings, Adam at 2e-3, MSE. The jump enters "
    "through a module (`logjump`) computing torch.log(jump) with no floor or epsilon; the "
    "jumps are logged to 0.1 hPa and were all at least 0.1 until step 90, whose batch holds a "
    "calm inland station's record with a jump of exactly 0.0: log gives -inf, the first "
    "Linear turns it into +-inf, the second into inf - inf = NaN, and the loss is NaN at that "
    "step.",
)
def h181_morning_glory_log_zero_jump(ctx: Context) -> None:
    gen = seeded(18102)
    model = RollCloudNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    low = []
    _train(
        ctx,
        model,
        opt,
        _roll_clouds(gen, 64),
        140,
        F.mse_loss,
        watch=lambda s, o, x, y: low.append(float(model.logjump.last.min())),
    )
    at = GLORY_CALM
    ctx.check("loss NaN first at the calm station's step", _first_bad(ctx.losses) == at)
    ctx.check("logjump output -inf at that step", len(low) > at and low[at] == -math.inf)
    ctx.check("logjump output finite before", _finite(low[:at]))
    ctx.check("loss fell before the calm station", _fell(ctx.losses[:at]))


# -- farrier: one shard in raw millimetres ---------------------------------------------------------

FARRIER_SHARD = 110


@scenario(
    family="farrier_hoof_shoe_size_relu_mlp",
    optimizer="SGD(nesterov)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=FARRIER_SHARD,
    note="A ReLU MLP (nn.ReLU modules) picking a farrier's shoe size (standardised) from 10 "
    "hoof measurements (width, length, heel and toe angles, wall thickness, ...), SGD with "
    "Nesterov momentum at 1e-2, clip_grad_norm_ at 1.0, MSE. The measurements are "
    "standardised by the export script; a small shard from a second yard's app exported the raw values instead (widths and "
    "lengths in millimetres, angles in degrees, tens to hundreds of times the standardised "
    "scale), and its four hooves land in the batch at step 110. That batch's loss and "
    "gradient (before clipping) are thousands of times the usual; the clipped step moves "
    "the net off its fit for a few steps, then the run recovers.",
)
def h181_farrier_raw_millimetre_shard(ctx: Context) -> None:
    gen = seeded(18103)
    model = Stack(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    raw = torch.tensor([128.0, 135.0, 52.0, 48.0, 11.0, 140.0, 120.0, 55.0, 9.0, 31.0])
    scale = []

    def alter(step, x, y):
        if step == FARRIER_SHARD:
            x = x.clone()
            x[:4] = raw + 0.08 * raw * x[:4]
        scale.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=3), 220, F.mse_loss, alter=alter, clip=1.0)
    at = FARRIER_SHARD
    before = ctx.grad_norms[at - 20 : at]
    ctx.check("the shard's inputs 20x the usual maximum", scale[at] > 20 * max(scale[:at]))
    ctx.check(
        "gradient 100x the preceding median at the shard",
        ctx.grad_norms[at] > 100 * _median(before),
    )
    ctx.check(
        "loss at the shard 20x the preceding mean",
        ctx.losses[at] > 20 * _mean(ctx.losses[at - 10 : at]),
    )
    ctx.check(
        "loss back under 2x the pre-shard level 30 steps later",
        _mean(ctx.losses[at + 30 : at + 40]) < 2 * _mean(ctx.losses[at - 10 : at]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- cabinetmaker: a weight-decay gradient hook of the wrong sign ----------------------------------

CABINET_WD = 0.05


@scenario(
    family="cabinetmaker_dovetail_gap_silu_mlp",
    optimizer="SGD(momentum)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) predicting the gap of a hand-cut dovetail joint from 12 "
    "saw, chisel and timber-moisture readings, SGD momentum 0.9 at 1e-2, MSE. Weight decay was "
    "ported from an AdamW recipe as a gradient hook on every parameter, written "
    "`g - wd * p` (the sign of the decoupled p *= 1 - lr * wd carried into the gradient) "
    "instead of `g + wd * p`, with wd 0.05: every step pushes the weights away from zero. The "
    "loss falls at first, then climbs slowly and keeps climbing, finite.",
)
def h181_cabinetmaker_decay_hook_sign(ctx: Context) -> None:
    gen = seeded(18104)
    model = Stack(12, hidden=64, act=nn.SiLU)
    for p in model.parameters():
        p.register_hook(lambda g, p=p: g - CABINET_WD * p.detach())
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    sizes = []
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=4),
        300,
        F.mse_loss,
        watch=lambda s, o, x, y: sizes.append(
            math.sqrt(sum(float((p.detach() ** 2).sum()) for p in model.parameters()))
        ),
    )
    ls = ctx.losses
    smooth = [_mean(ls[max(0, i - 4) : i + 5]) for i in range(len(ls))]
    low = min(range(len(ls)), key=smooth.__getitem__)
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check("lowest stretch of the loss in the first 60%", low < 0.6 * len(ls))
    ctx.check("loss climbed 2.5x from its lowest stretch", _mean(ls[-10:]) > 2.5 * smooth[low])
    ctx.check("weight norm grew 2x over the run", sizes[-1] > 2 * sizes[0])


# -- djembe: the backbone group's rate multiplier typed 1e-6 for 1e-1 ------------------------------


class DjembeNet(nn.Module):
    def __init__(self, frame=64, width=16, classes=3):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2, stride=2)
        self.conv3 = nn.Conv1d(width, 2 * width, 5, padding=2, stride=2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        return self.head(h.mean(-1))


def _strokes(gen, batch, frame=64):
    """Microphone frames of djembe strokes: bass (low, long), tone (mid), slap (high, short)."""
    t = torch.arange(frame).float()
    freq = torch.tensor([2.0, 6.0, 13.0])
    decay = torch.tensor([40.0, 20.0, 8.0])
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        f = freq[y][:, None] * (1 + 0.15 * torch.randn(batch, 1, generator=gen))
        d = decay[y][:, None] * (1 + 0.2 * torch.rand(batch, 1, generator=gen))
        ph = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        x = torch.sin(2 * math.pi * f * t / frame + ph) * torch.exp(-t / d)
        yield x + 0.3 * torch.randn(batch, frame, generator=gen), y


@scenario(
    family="djembe_stroke_conv1d",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("conv1", "conv2", "conv3"),
    diverges=None,
    heldout=True,
    note="A 1-D conv net (three Conv1d layers, functional ReLU, mean pool, linear head) naming a "
    "djembe stroke (bass, tone, slap) from a 64-sample microphone frame, RMSprop at 2e-3 with two "
    "param groups, cross-entropy. The recipe fine-tunes the conv backbone at a tenth of the "
    "head's rate, but the multiplier was typed `1e-6` for `1e-1`: the backbone's lr is 2e-9, "
    "its updates are about a billionth of its weights, and only the head learns on the random "
    "conv features: the loss stays at ln 3 (chance) for the whole run.",
)
def h181_djembe_backbone_multiplier_typo(ctx: Context) -> None:
    gen = seeded(18105)
    model = DjembeNet()
    base = 2e-3
    backbone = [p for n, p in model.named_parameters() if n.startswith("conv")]
    head = list(model.head.parameters())
    opt = torch.optim.RMSprop(
        [{"params": backbone, "lr": base * 1e-6}, {"params": head, "lr": base}], lr=base
    )
    start = [p.detach().clone() for p in backbone]
    head_start = [p.detach().clone() for p in head]
    _train(ctx, model, opt, _strokes(gen, 64), 160, F.cross_entropy, classifier=True)
    ctx.check("backbone moved less than 1e-5 of its size", _rel_change(backbone, start) < 1e-5)
    ctx.check("head moved more than 10% of its size", _rel_change(head, head_start) > 0.1)
    ctx.check("loss above 1.0 (ln 3 is 1.10) over the last 20 steps", _mean(ctx.losses[-20:]) > 1.0)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- parkour: a warm-up peak typed 10x --------------------------------------------------------------

PARKOUR_WARM = 150
PARKOUR_CROSS = 33


def _parkour_lr(step):
    return 1.5 * min(1.0, (step + 1) / PARKOUR_WARM)


@scenario(
    family="parkour_vault_landing_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=PARKOUR_CROSS,
    note="A tanh MLP (nn.Tanh modules) regressing a parkour vault's landing impact from 10 "
    "run-up and take-off readings, plain SGD with a linear warm-up over 150 steps by LambdaLR, "
    "MSE. The warm-up's peak was typed 1.5 for 0.15: as the rate climbs it passes 2 / sharpness "
    "of the loss at step 33 (lr x sharpness 2.07 on a fixed batch); the loss hovers at the "
    "edge while the rate keeps climbing, then blows up from about step 78 (lr x sharpness "
    "near 5), before the warm-up ends, and is NaN by step 93.",
)
def h181_parkour_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(18106)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _parkour_lr)
    batches = _readings(gen, 128, 10, seed=6)
    probe = next(batches)
    edge = []

    def before(step):
        if _finite(ctx.losses) and (not ctx.losses or ctx.losses[-1] < 10):
            edge.append((step, opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)))

    _train(ctx, model, opt, batches, PARKOUR_WARM, F.mse_loss, sched=sched, before=before)
    ls = ctx.losses
    cross = next((s for s, v in edge if v > 2), None)
    ctx.check("lr x sharpness under 2 at the start", edge[0][1] < 2)
    ctx.check("lr x sharpness past 2 first at step 33", cross == PARKOUR_CROSS)
    ctx.check(
        "loss 100x its lowest after the crossing, or non-finite",
        cross is not None
        and (not _finite(ls[cross:]) or max(ls[cross:]) > 100 * min(ls[: cross + 1])),
    )


# -- ultimate frisbee: an inverse temperature divided in ------------------------------------------


class ThrowNet(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=6, temperature=1.0):
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
    family="ultimate_frisbee_throw_type_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (nn.GELU modules) naming an ultimate frisbee throw (backhand, flick, "
    "hammer, scoober, blade, push pass) from 12 release readings (spin, angle, speed...), "
    "Adamax at 2e-3, cross-entropy. The model divides its head's logits by a temperature read "
    "from the calibration export, which stores the inverse temperature (logit scale) 0.002 "
    "in the same field: the logits are 500 times too large, and the float32 softmax gives the "
    "target class a probability of exactly 1.0 for about half the rows from the first steps "
    "(the top two logits are typically 20-30 apart).",
)
def h181_frisbee_inverse_temperature(ctx: Context) -> None:
    gen = seeded(18107)
    model = ThrowNet(temperature=0.002)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    frac, gap = [], []

    def watch(step, out, x, y):
        o = out.detach()
        frac.append(collapsed_fraction(o, y))
        top2 = o.topk(2, dim=-1).values
        gap.append(float((top2[:, 0] - top2[:, 1]).median()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 6, seed=7, noise=1.2),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("a third of the rows' target probability exactly 1.0", _mean(frac) > 1 / 3)
    ctx.check(
        "median gap between the top two logits above 17 (float32 rounds the top to 1)",
        _median(gap) > 17,
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- knife grinder: a plain-SGD learning rate under NAdam -----------------------------------------


@scenario(
    family="knife_grinder_edge_defect_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) naming one of 10 edge defects (burr, rolled edge, "
    "chip, ...) from an 8x8 reflected-light image of a knife's edge after the grinding wheel "
    "(digit images), cross-entropy. The optimizer was switched from SGD to NAdam but SGD's "
    "learning rate 0.2 was kept: the first adaptive steps move every weight and bias by about "
    "0.2, pushing the pre-activations below zero on every input; within a few dozen steps "
    "every ReLU unit of both hidden layers is dead, no gradient reaches them again and the "
    "loss sits at ln 10 (chance) for the rest of the run, finite.",
)
def h181_knife_grinder_sgd_rate_in_nadam(ctx: Context) -> None:
    gen = seeded(18108)
    model = Stack(64, hidden=64, out=10)
    opt = torch.optim.NAdam(model.parameters(), lr=0.2)
    dead1, dead2 = [], []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead1.append(dead_fraction(model.act1(model.fc1(x))))
            dead2.append(dead_fraction(model.features(x)))

    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "under a third of either layer's units dead at the start", max(dead1[0], dead2[0]) < 1 / 3
    )
    ctx.check(
        "95% of fc1's and fc2's units dead over the last 20 steps",
        min(dead1[-20:] + dead2[-20:]) > 0.95,
    )
    ctx.check(
        "loss within 0.1 of ln 10 over the last 50 steps",
        all(abs(v - math.log(10)) < 0.1 for v in ctx.losses[-50:]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- trampoline: a validation pass back-propagated into the train step ----------------------------

TRAMPOLINE_CKPT = 150
TRAMPOLINE_VAL = 100


def _routines(gen, batch, seed=9):
    """16 standardised jump-height, rotation and twist readings; the label is whether the
    routine was completed without a fall (a noisy threshold of a smooth score)."""
    for x, y in _readings(gen, batch, 16, seed, noise=0.3):
        yield x, (y > 0.0).float()


class RoutineNet(nn.Module):
    def __init__(self, d_in=16, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    family="trampoline_routine_completion_gelu_mlp",
    optimizer="SGD(momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=TRAMPOLINE_CKPT,
    note="A GELU MLP (nn.GELU modules) predicting whether a trampoline routine is completed "
    "without a fall from 16 jump-height, rotation and twist readings, SGD momentum 0.9 at "
    "2e-2, binary cross-entropy on the logit. At the "
    "checkpoint step (150) the trainer first runs validation through the shared "
    "`compute_loss`, which calls loss.backward() itself, with no torch.no_grad and no "
    "zero_grad after: the gradients of 100 validation batches pile into that step's train "
    "gradient, a one-step burst about 35 times the usual; the momentum carries it into "
    "the next steps and the loss climbs from about 0.3 to 0.7, then recovers slowly while "
    "the gradients are back to their usual size.",
)
def h181_trampoline_validation_backward(ctx: Context) -> None:
    gen = seeded(18109)
    model = RoutineNet()
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    batches = _routines(gen, 64)
    val = [next(_routines(torch.Generator().manual_seed(i), 64)) for i in range(TRAMPOLINE_VAL)]
    bce = F.binary_cross_entropy_with_logits

    def before(step):
        if step == TRAMPOLINE_CKPT:
            for x, y in val:
                bce(model(x), y).backward()

    _train(ctx, model, opt, batches, 240, bce, before=before)
    at = TRAMPOLINE_CKPT
    ctx.check(
        "gradient 20x the preceding median at the checkpoint step",
        ctx.grad_norms[at] > 20 * _median(ctx.grad_norms[at - 20 : at]),
    )
    ctx.check(
        "gradient back under 3x the earlier median 10 steps later",
        _median(ctx.grad_norms[at + 10 : at + 30]) < 3 * _median(ctx.grad_norms[at - 20 : at]),
    )
    ctx.check("loss fell before the checkpoint", _fell(ctx.losses[:at]))
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- bioluminescent bay: an exp link in float16 ---------------------------------------------------


class RateHead(nn.Module):
    """The Poisson rate: exp of a linear read-out."""

    def __init__(self, hidden, log_mean):
        super().__init__()
        self.proj = nn.Linear(hidden, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, log_mean)

    def forward(self, h):
        return torch.exp(self.proj(h)).squeeze(-1)


class BayNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, log_mean=8.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.rate_head = RateHead(hidden, log_mean)

    def forward(self, x):
        return self.rate_head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _glow(gen, batch, d_in=10, seed=10):
    """Photon counts a minute from a bay sensor: log-rate 8 +- 2 from water temperature,
    salinity, moon phase, tide...; bloom nights reach counts of a few hundred thousand."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        log_rate = 8.0 + 2.0 * torch.tanh(x @ w / math.sqrt(d_in)) + 1.0 * torch.relu(x[:, 0])
        yield x, torch.poisson(torch.exp(log_rate), generator=gen)


BAY_OVERFLOW = 30


def _poisson(out, y):
    return F.poisson_nll_loss(out, y, log_input=False, full=True) / 1e3


@scenario(
    family="bioluminescent_bay_photon_count_fp16_poisson",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("rate_head",),
    diverges=BAY_OVERFLOW,
    heldout=True,
    onset=BAY_OVERFLOW,
    note="A SiLU MLP with a Poisson rate head (`rate_head`: exp of a linear read-out, bias "
    "initialised at the mean log count 8) predicting a bioluminescent bay sensor's photon "
    "counts per minute, AdamW at 3e-3, Poisson NLL on the rate (full, scaled by 1e-3), fp16 "
    "autocast with a torch.amp.GradScaler. The exp runs in float16 under autocast; as the net "
    "learns the bloom nights its log-rate passes 11.09 (first at step 30) and exp overflows "
    "65504 to inf: the loss is NaN and the scaler skips the step and halves its scale, again "
    "on every later batch with a bloom night, so the weights stay where they were.",
)
def h181_bioluminescent_fp16_exp_link(ctx: Context) -> None:
    gen = seeded(18110)
    model = BayNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    top = []
    _train(
        ctx,
        model,
        opt,
        _glow(gen, 64),
        200,
        _poisson,
        scaler=scaler,
        stop_on_nan=False,
        watch=lambda s, o, x, y: top.append(float(o.detach().float().max())),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss NaN first at step 30", bad == BAY_OVERFLOW)
    ctx.check(
        "the rate head's float16 output is inf at that step",
        bad is not None and top[bad] == math.inf,
    )
    ctx.check("rates finite before", bad is not None and _finite(top[:bad]))
    ctx.check(
        "NaN on most later steps",
        bad is not None and _mean([not math.isfinite(v) for v in ctx.losses[bad:]]) > 0.5,
    )
    ctx.check("scaler's scale fell 100x from its start", min(ctx.scales) < ctx.scales[0] / 100)
    ctx.check("loss fell before the overflow", bad is not None and _fell(ctx.losses[:bad]))


# -- controls ---------------------------------------------------------------------------------------


class TiedGRULM(nn.Module):
    def __init__(self, vocab=128, dim=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.lm_head = nn.Linear(dim, vocab)
        self.lm_head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=0.05)

    def forward(self, idx):
        out, _ = self.gru(self.embed(idx))
        return self.lm_head(out)


@scenario(
    family="psaltery_tune_tied_gru_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A GRU language model over psaltery tune-book text (bytes) whose output projection "
    "shares the input embedding's weight (tied embeddings), AdamW at 3e-3 with 20 warm-up steps "
    "then cosine decay by LambdaLR, clip_grad_norm_ at 1.0, cross-entropy.",
)
def h181_control_psaltery_tied_lm(ctx: Context) -> None:
    gen = seeded(18111)
    model = TiedGRULM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 200, 20

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)

    def lm(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    _train(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=32),
        steps,
        lm,
        clip=1.0,
        sched=sched,
    )
    ctx.check("output weight is the embedding", model.lm_head.weight is model.embed.weight)
    ctx.check("loss fell by a third", _fell(ctx.losses, ratio=0.67))
    ctx.check("loss finite throughout", _finite(ctx.losses))


def _heavy_tailed(gen, batch, d_in, seed):
    """Readings and a target with Student-t (2 degrees of freedom) measurement noise."""
    for x, y in _readings(gen, batch, d_in, seed, noise=0.0):
        u = torch.rand(batch, generator=gen).clamp(1e-6, 1 - 1e-6)
        yield x, 2.0 * y + 0.3 * _t2(u)


def _tail_ratio(out, y):
    r = (out.float() - y).abs()
    return float(r.max() / r.median().clamp_min(1e-12))


def _t2(u):
    """Inverse CDF of Student's t with 2 degrees of freedom."""
    return (2 * u - 1) / torch.sqrt(2 * u * (1 - u))


@scenario(
    family="snow_roller_length_huber_mlp",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) predicting how far a snow roller rolls (standardised) "
    "from 12 wind, slope and snow-crust readings, with field-measured labels whose noise is "
    "Student-t with 2 degrees of freedom (a few wildly off per batch): Huber loss (delta 1), "
    "RAdam, gradient accumulation over 2 micro-batches, clip_grad_norm_ at 2, "
    "ReduceLROnPlateau.",
)
def h181_control_snow_roller_huber(ctx: Context) -> None:
    gen = seeded(18112)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=40)
    tails = []
    _train(
        ctx,
        model,
        opt,
        _heavy_tailed(gen, 64, 12, seed=12),
        200,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        clip=2.0,
        sched=sched,
        accumulate=2,
        watch=lambda s, o, x, y: tails.append(_tail_ratio(o.detach(), y)),
    )
    ls = ctx.losses
    ctx.check("heavy tails: largest residual 5x the median one, on average", _mean(tails) > 5)
    ctx.check(
        "loss fell (median of the last 20 steps under half the first 20's)",
        _median(ls[-20:]) < 0.5 * _median(ls[:20]),
    )
    ctx.check("loss finite throughout", _finite(ls))


class SeamNet(nn.Module):
    def __init__(self, width=12, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * 16, classes)

    def forward(self, x):
        x = x.reshape(-1, 1, 8, 8)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


@scenario(
    family="kintsugi_seam_pattern_bn_cnn",
    optimizer="SGD(nesterov)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A BatchNorm CNN classifying 8x8 kintsugi gold-seam patterns (digit images) into 10 "
    "repair styles, SGD with Nesterov momentum under OneCycleLR (max lr 0.1), weight decay "
    "5e-4, cross-entropy with label smoothing 0.1.",
)
def h181_control_kintsugi_onecycle(ctx: Context) -> None:
    gen = seeded(18113)
    model = SeamNet()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))
