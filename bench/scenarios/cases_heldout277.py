"""Held-out set 277 (``h277_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a gegenschein sky-photometer net whose contrast ratio lost its
epsilon, a yak-racing finish-time regressor whose final-day loss weight was entered in percent, a
naadam bokh wrestling-hold classifier whose CLIP-style logit scale was stored unlogged, a
Milankovitch insolation-proxy regressor whose hand-rolled weight decay adds instead of subtracts,
a scallop-diving catch regressor fed one shard logged in millimetres, a dowel-plate diameter
regressor whose unfreeze callback reopens the wrong param group, a marine-snow sinking-rate deep
tanh net initialised orthogonally with gain 4, a fire-rainbow arc-brightness regressor whose
OneCycleLR max_lr was typed 10x, a bee-swarm cluster-weight regressor whose loss is converted to
grams squared for one step before backward, a quadball pass-outcome classifier whose RAdam lr lost
its exponent, and three controls (an ionospheric-scintillation dilated temporal convolution network
under Adam with weight decay and a long warm-up, a hay-stook drying regressor with Adadelta,
gradient accumulation and ReduceLROnPlateau, a watermelon-snow bloom classifier under fp16
autocast with a GradScaler, OneCycleLR, label smoothing and AdamW param groups).

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
    amp=None,
    accumulate=1,
    alter=None,
    scale_loss=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    gives the loss actually backpropagated, ``after(step)`` runs after the optimizer step;
    ``amp``: an autocast dtype; stops after logging a non-finite loss."""
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
            out = out.float() if amp is not None else out
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = scale_loss(step, loss) if scale_loss is not None else loss
            total = total / accumulate
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _top_eig(model, x, y, iters=15):
    """Largest Hessian eigenvalue of the MSE on (x, y) by power iteration."""
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


# -- gegenschein: the sky-to-background contrast ratio lost its epsilon --------------------------

ONSET_GEGEN = 100


class ContrastRatio(nn.Module):
    """(sky - background) / background per photometer channel."""

    def forward(self, x):
        sky, bg = x[:, :8], x[:, 8:]
        # written (sky - bg) / (bg + 1e-6) in the notebook; the epsilon was lost in the port
        return (sky - bg) / bg


class GegenscheinNet(nn.Module):
    def __init__(self, hidden=48):
        super().__init__()
        self.contrast = ContrastRatio()
        self.fc1 = nn.Linear(8, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act1(self.fc1(self.contrast(x)))
        return self.head(self.act2(self.fc2(h))).squeeze(-1)


def _sky_frames(gen, batch, seed):
    """Photometer counts of 8 anti-solar sky patches and their 8 background patches; the target
    is the gegenschein's surface brightness (standardised)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        bg = 40.0 + 15.0 * torch.rand(batch, 8, generator=gen)
        glow = 0.3 * torch.rand(batch, 1, generator=gen) * (1 + 0.3 * torch.rand(batch, 8))
        sky = bg * (1 + glow) + torch.randn(batch, 8, generator=gen)
        r = (sky - bg) / bg
        y = 6.0 * (r @ w.abs() / 8) - 1.0 + 0.3 * torch.sin(4 * r[:, 0])
        yield torch.cat([sky, bg], 1), y + 0.03 * torch.randn(batch, generator=gen)


@scenario(
    family="gegenschein_sky_photometer_contrast_net",
    optimizer="AdamW",
    cause="nonfinite",
    where=("contrast",),
    diverges=ONSET_GEGEN,
    heldout=True,
    onset=ONSET_GEGEN,
    note="A SiLU MLP behind a contrast module (contrast, fc1, act1, fc2, act2, head) estimating the gegenschein's surface brightness from the counts of 8 anti-solar sky patches and their 8 background patches, AdamW at 3e-3 (weight decay 1e-2), MSE. contrast computes (sky - bg) / bg; the notebook had (bg + 1e-6) and the epsilon was lost when it was ported. At step 100 a frame the camera dropped (zero-filled by the capture software, sky and background both exactly 0) is in the batch: 0/0 = NaN in contrast and the loss is NaN at step 100. The loss was falling before.",
)
def h277_gegenschein_contrast_no_eps(ctx: Context) -> None:
    gen = seeded(27701)
    model = GegenscheinNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_GEGEN:
            x = x.clone()
            x[5] = 0.0
        return x, y

    def watch(step, out, x, y):
        if step == ONSET_GEGEN:
            with torch.no_grad():
                seen["nan_in_contrast"] = bool(torch.isnan(model.contrast(x)).any())
                seen["zero_bg"] = bool((x[:, 8:] == 0).any())

    _train(ctx, model, opt, _sky_frames(gen, 64, 11), 160, F.mse_loss, alter=alter, watch=watch)
    ls = ctx.losses
    ctx.check("finite before the dropped frame", _finite(ls[:ONSET_GEGEN]))
    ctx.check("the loss fell before it", _fell(ls[:ONSET_GEGEN], ratio=0.5))
    ctx.check("the loss is NaN at step 100", _first_bad(ls) == ONSET_GEGEN)
    ctx.check("a background channel read exactly 0", seen.get("zero_bg", False))
    ctx.check("contrast produced NaN", seen.get("nan_in_contrast", False))


# -- yak racing: the final day's loss weight was entered in percent -------------------------------

ONSET_YAK = 120


@scenario(
    family="yak_racing_finish_time_silu_huber_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_YAK,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a racing yak's finish time at a highland festival from 12 standardised readings (altitude, course length, rider weight, yak age, coat, ...), SGD momentum 0.9 at 1e-2, Huber loss, clipping at 1.0. The per-race-day loss weights come from a table where the final day's weight was entered as 100 (percent) while the others read 1.0; the final day's batch is the one at step 120, an ordinary batch whose loss is ordinary, but the backpropagated loss is 100x and the gradient is about 100x for that one step. Clipping bounds the update; the loss bumps and recovers within a few tens of steps.",
)
def h277_yak_racing_final_day_weight(ctx: Context) -> None:
    gen = seeded(27702)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    weights = {"heats": 1.0, "final": 100.0}

    def scale_loss(step, loss):
        return loss * weights["final" if step == ONSET_YAK else "heats"]

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 31, noise=0.1),
        240,
        F.huber_loss,
        clip=1.0,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_YAK - 20 : ONSET_YAK])
    pre = _mean(ls[ONSET_YAK - 20 : ONSET_YAK])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the gradient at step 120 over 50x the median before", gn[ONSET_YAK] > 50 * before)
    ctx.check("the batch's own loss ordinary (under 2x)", ls[ONSET_YAK] < 2 * pre)
    ctx.check("the gradient back under 3x the median after", max(gn[ONSET_YAK + 30 :]) < 3 * before)
    ctx.check("the loss recovered to within 1.5x", _mean(ls[-20:]) < 1.5 * pre)


# -- naadam bokh: the CLIP-style logit scale was stored unlogged ---------------------------------


class ScaledCosineHead(nn.Module):
    """CLIP-style head: exp(logit_scale) * cos(embedding, class prototype)."""

    def __init__(self, dim, classes, init_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(init_scale)))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.logit_scale.exp() * cos


class BokhNet(nn.Module):
    def __init__(self, d_in, classes, init_scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 32)
        self.act2 = nn.GELU()
        self.head = ScaledCosineHead(32, classes, init_scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="naadam_bokh_hold_scaled_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP with a CLIP-style scaled cosine head (fc1, act1, fc2, act2, head with weight and logit_scale) naming which of 6 holds a Mongolian bokh wrestler wins with from 16 standardised readings of the bout (grip, stance, weight difference, ...), Adamax at 2e-3, cross-entropy. The head multiplies the cosines by exp(logit_scale); logit_scale was initialised to 1/0.07 (the temperature's inverse) instead of log(1/0.07), so the scale is exp(14.3) = 1.6e6: the float32 softmax rounds one class to exactly 1.0 on essentially every row from the start and through the run, the rows it gets wrong cost enormous losses, and the loss stays far above the twin initialised with log(1/0.07), whose softmax never saturates. Finite, no blow-up.",
)
def h277_bokh_logit_scale_unlogged(ctx: Context) -> None:
    def run(c, init_scale):
        gen = seeded(27703)
        model = BokhNet(16, 6, init_scale)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        fracs = []

        def watch(step, out, x, y):
            p = torch.softmax(out.detach().float(), -1)
            fracs.append(float((p.max(-1).values == 1.0).float().mean()))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 6, 37, noise=0.8),
            160,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return fracs

    twin = _Twin()
    twin_fracs = run(twin, math.log(1 / 0.07))
    fracs = run(ctx, 1 / 0.07)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half the rows' softmax exactly 1.0 on one class", _median(fracs) > 0.5)
    ctx.check("still so over the last 20 steps", _median(fracs[-20:]) > 0.5)
    ctx.check("the twin's collapsed fraction stays under 0.05", max(twin_fracs) < 0.05)
    ctx.check("the loss ends over 3x the twin's", _mean(ls[-10:]) > 3 * _mean(twin.losses[-10:]))


# -- Milankovitch: the hand-rolled decoupled weight decay adds instead of subtracting ------------


def _orbits(gen, batch, seed):
    """Orbital readings (eccentricity, obliquity, sin/cos precession, ...) standardised, and a
    sediment-core insolation proxy."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="milankovitch_insolation_proxy_tanh_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a sediment core's insolation proxy from 10 standardised orbital readings (eccentricity, obliquity, sine and cosine of precession, ...), Adam at 3e-3, MSE, with a hand-rolled decoupled weight decay (coefficient 3.0, carried over from the notebook's smaller net) applied to the Linear weights after each step. The decay was written p.add_(p, alpha=lr * wd) where p.add_(p, alpha=-lr * wd) was meant, so every weight is multiplied by 1.009 a step: the loss first falls, then, as the weights inflate and the tanh units saturate, climbs slowly and steadily to over 3x its minimum with no spike; the weight norm keeps growing; the twin with the sign right keeps training. Finite, no blow-up in the run's length.",
)
def h277_milankovitch_decay_sign(ctx: Context) -> None:
    def run(c, sign):
        gen = seeded(27704)
        model = Stack(10, hidden=64, act=nn.Tanh)
        lr, wd = 3e-3, 3.0
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        decayed = [p for n, p in model.named_parameters() if n.endswith("weight")]
        norms = [float(_flat(model).norm())]

        def after(step):
            with torch.no_grad():
                for p in decayed:
                    p.add_(p, alpha=sign * lr * wd)
            norms.append(float(_flat(model).norm()))

        _train(c, model, opt, _orbits(gen, 128, 43), 300, F.mse_loss, after=after)
        return norms

    twin = _Twin()
    run(twin, -1.0)
    norms = run(ctx, 1.0)
    ls = ctx.losses
    smooth = [_mean(ls[i : i + 10]) for i in range(len(ls) - 9)]
    low = min(range(len(smooth)), key=lambda i: smooth[i])
    spikes = [ls[i] / _mean(ls[i - 10 : i]) for i in range(10, len(ls))]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss first fell to under half its start", smooth[low] < 0.5 * smooth[0])
    ctx.check("the lowest point is in the first half", low < len(ls) // 2)
    ctx.check("then climbed to over 3x its minimum by the end", smooth[-1] > 3 * smooth[low])
    ctx.check("no spike: no step over 2x the mean of the 10 before", max(spikes) < 2)
    ctx.check("the weight norm grew over 2x", norms[-1] > 2 * norms[0])
    ctx.check(
        "the twin with the sign right ends 3x lower",
        _mean(twin.losses[-10:]) < _mean(ls[-10:]) / 3,
    )


# -- scallop diving: one boat's shard logs depth in millimetres ----------------------------------

ONSET_SCALLOP = 100


@scenario(
    family="scallop_diving_catch_weight_relu_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SCALLOP,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a scallop diver's catch weight per dive from 10 standardised readings (depth, bottom time, visibility, current, seabed type, ...), SGD Nesterov momentum 0.9 at 1e-2, MSE, clipping at 1.0. One boat's dive computer exports depth in millimetres; its shard is standardised with the metre statistics, so at step 100 eight rows of the batch have a depth column about 1000 standard deviations out: the loss and the gradient jump over 100x for that one step, clipping bounds the update and the run recovers. The model and the other batches are fine.",
)
def h277_scallop_depth_millimetres(ctx: Context) -> None:
    gen = seeded(27705)
    model = Stack(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_SCALLOP:
            x = x.clone()
            x[:8, 0] = 1000.0 * (x[:8, 0].abs() + 1.0)
            seen["peak"] = float(x.abs().max())
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 59, noise=0.1),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre_l = _median(ls[ONSET_SCALLOP - 20 : ONSET_SCALLOP])
    pre_g = _median(gn[ONSET_SCALLOP - 20 : ONSET_SCALLOP])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the shard's depth about 1000 std out", seen.get("peak", 0) > 500)
    ctx.check("the loss at step 100 over 100x the median before", ls[ONSET_SCALLOP] > 100 * pre_l)
    ctx.check("the gradient at step 100 over 100x", gn[ONSET_SCALLOP] > 100 * pre_g)
    ctx.check("the loss recovered to within 1.5x", _mean(ls[-20:]) < 1.5 * pre_l)


# -- dowel plate: the unfreeze callback reopens the wrong param group ----------------------------

UNFREEZE_DOWEL = 50


@scenario(
    family="dowel_plate_diameter_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    onset=UNFREEZE_DOWEL,
    note="A ReLU MLP in two param groups (trunk: fc1, fc2; head: head) regressing the finished diameter of a dowel driven through a dowel plate from 12 standardised readings (wood species, moisture, blank size, hole size, strike count, ...), RMSprop, MSE. The recipe trains the head alone first (trunk group at lr 0) and a callback at step 50 is meant to set the trunk group to 1e-3; it writes param_groups[-1] (the head, already at 1e-3) instead of param_groups[0], so the trunk's lr stays 0 and its update ratio is exactly 0 for the rest of the run: fc1 and fc2 never move, and the loss plateaus well above the twin whose callback opens the right group. Finite, no blow-up.",
)
def h277_dowel_unfreeze_wrong_group(ctx: Context) -> None:
    def run(c, index):
        gen = seeded(27706)
        model = Stack(12, hidden=64)
        trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
        opt = torch.optim.RMSprop(
            [{"params": trunk, "lr": 0.0}, {"params": model.head.parameters(), "lr": 1e-3}],
            lr=1e-3,
        )
        snaps = {}

        def before(step):
            if step == UNFREEZE_DOWEL:
                opt.param_groups[index]["lr"] = 1e-3
                snaps["trunk"] = _flat(nn.ModuleList([model.fc1, model.fc2]))
                snaps["head"] = _flat(model.head)

        _train(
            c, model, opt, _readings(gen, 64, 12, 61, noise=0.05), 240, F.mse_loss, before=before
        )
        moved = float((_flat(nn.ModuleList([model.fc1, model.fc2])) - snaps["trunk"]).norm())
        head_moved = float((_flat(model.head) - snaps["head"]).norm())
        return moved, head_moved

    twin = _Twin()
    twin_moved, _ = run(twin, 0)
    moved, head_moved = run(ctx, -1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the trunk did not move at all after step 50", moved == 0.0)
    ctx.check("the head kept moving", head_moved > 0.01)
    ctx.check("the twin's trunk moved", twin_moved > 0.01)
    ctx.check(
        "the loss ends over 1.5x the twin's", _mean(ls[-10:]) > 1.5 * _mean(twin.losses[-10:])
    )


# -- marine snow: orthogonal init with gain 4 in a deep tanh net ---------------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in=10, width=48, depth=12, gain=5.0 / 3.0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="marine_snow_sinking_rate_deep_tanh_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP (layers.0..11, head) regressing how fast marine-snow aggregates sink from 10 standardised readings of a sediment-trap camera (aggregate size, porosity, mineral ballast, water density, ...), plain SGD at 1e-2, MSE, clipping at 1.0. The init helper is orthogonal_ with its gain read from the config key meant for the input scaling (4.0) instead of tanh's 5/3: the net sits in the chaotic regime and the gradient grows through depth, layers.0's gradient over 30x the last layer's at the start and through the run; clipping keeps the run finite but the loss ends well above the twin with gain 5/3.",
)
def h277_marine_snow_orthogonal_gain(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(27707)
        model = DeepTanh(gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        ratio = []

        def after(step):
            g0 = model.layers[0].weight.grad.norm()
            gl = model.layers[-1].weight.grad.norm().clamp_min(1e-12)
            ratio.append(float(g0 / gl))

        _train(c, model, opt, _readings(gen, 64, 10, 67), 200, F.mse_loss, clip=1.0, after=after)
        return ratio

    twin = _Twin()
    twin_ratio = run(twin, 5.0 / 3.0)
    ratio = run(ctx, 4.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("layers.0's gradient over 30x the last layer's at the start", ratio[0] > 30)
    ctx.check("and over 30x in median over the run", _median(ratio) > 30)
    ctx.check("the twin's ratio under 10", _median(twin_ratio) < 10)
    ctx.check("the twin ends under 0.7x the loss", _mean(twin.losses[-10:]) < 0.7 * _mean(ls[-10:]))


# -- fire rainbow: OneCycleLR's max_lr typed 10x ------------------------------------------------

ONSET_ARC = 15


@scenario(
    family="fire_rainbow_arc_brightness_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_ARC,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the brightness of a fire rainbow (circumhorizontal arc) from 10 standardised readings (sun elevation, cirrus optical depth, plate-crystal fraction, humidity, ...), plain SGD, MSE, batch 256, OneCycleLR over 200 steps. max_lr was typed 1.2 for 0.12: the schedule starts at max_lr/25 = 0.048, where lr x the loss's top Hessian eigenvalue (power iteration on a fixed batch every 5 steps) is well under 2, and warms up towards 1.2; the product crosses the 2/sharpness stability limit during the warm-up, and the loss oscillates and then blows up. The twin with max_lr 0.12 stays under the limit and trains. The batches are ordinary.",
)
def h277_fire_rainbow_onecycle_max_lr(ctx: Context) -> None:
    def run(c, max_lr):
        gen = seeded(27708)
        model = Stack(10, hidden=48, act=nn.Tanh)
        probe = next(_readings(torch.Generator().manual_seed(9), 256, 10, 71))
        opt = torch.optim.SGD(model.parameters(), lr=max_lr / 25)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=200)
        product = []

        def before(step):
            if step % 5 == 0 and step <= 60:
                product.append((step, opt.param_groups[0]["lr"] * _top_eig(model, *probe)))

        _train(
            c, model, opt, _readings(gen, 256, 10, 71), 200, F.mse_loss, sched=sched, before=before
        )
        return product

    twin = _Twin()
    twin_product = run(twin, 0.12)
    product = run(ctx, 1.2)
    ls = ctx.losses
    crossed = next((s for s, v in product if v > 2), None)
    ctx.check("lr x top eigenvalue under 1 at the start", product[0][1] < 1)
    ctx.check(
        "it crosses 2 within 10 steps of the onset",
        crossed is not None and abs(crossed - ONSET_ARC) <= 10,
    )
    ctx.check("the twin's product stays under 2", max(v for _, v in twin_product) < 2)
    ctx.check(
        "the loss blew up: non-finite or over 100x its start",
        _first_bad(ls) is not None or max(ls) > 100 * ls[0],
    )
    ctx.check("the twin trained and stayed finite", _fell(twin.losses, ratio=0.7))


# -- bee swarm: the loss is converted to grams squared for one step before backward -------------

ONSET_SWARM = 60


@scenario(
    family="bee_swarm_cluster_weight_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SWARM,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the weight of a honeybee swarm's cluster (standardised kilograms) from 12 standardised readings (hive age, colony strength, temperature, queen age, forage, ...) for a swarm catcher, Adam at 3e-3, MSE. A reporting hook added for a field-day demo converts the loss to grams squared (x1e6) in place before backward at step 60, the demo's one logged step: the gradient of that step is 1e6x, Adam's exp_avg_sq takes 1e-3 of its square and is filled about 1e9x: the spike step and the momentum it leaves push every weight a few lr along the spike's sign (the loss rises to about 3x), and every update afterwards is over 10x smaller than before (beta2 0.999 needs thousands of steps to forget it), so the loss never comes back down while the twin without the hook keeps falling. The batch is ordinary, finite throughout.",
)
def h277_bee_swarm_grams_squared(ctx: Context) -> None:
    def run(c, factor):
        gen = seeded(27709)
        model = Stack(12, hidden=64, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        moves = []
        prev = {"w": _flat(model)}

        def after(step):
            w = _flat(model)
            moves.append(float((w - prev["w"]).norm()))
            prev["w"] = w

        def scale_loss(step, loss):
            return loss * factor if step == ONSET_SWARM else loss

        _train(
            c,
            model,
            opt,
            _readings(gen, 64, 12, 73, noise=0.05),
            240,
            F.mse_loss,
            after=after,
            scale_loss=scale_loss,
        )
        return moves

    twin = _Twin()
    run(twin, 1.0)
    moves = run(ctx, 1e6)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the gradient at step 60 over 1e3x the median before",
        gn[ONSET_SWARM] > 1e3 * _median(gn[ONSET_SWARM - 20 : ONSET_SWARM]),
    )
    ctx.check(
        "the median update after it over 10x smaller than before",
        _median(moves[ONSET_SWARM + 5 :]) < _median(moves[ONSET_SWARM - 20 : ONSET_SWARM]) / 10,
    )
    ctx.check(
        "the loss stalls: the twin ends under 0.6x",
        _mean(twin.losses[-10:]) < 0.6 * _mean(ls[-10:]),
    )
    ctx.check(
        "it never comes back below its level before the step",
        _mean(ls[-20:]) > _mean(ls[ONSET_SWARM - 10 : ONSET_SWARM]),
    )


# -- quadball: the RAdam lr lost its exponent --------------------------------------------------------


@scenario(
    family="quadball_pass_outcome_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) naming the outcome of a quadball pass (caught, dropped, intercepted, beaten by a bludger) from 14 standardised tracking readings (distance, chaser speeds, keeper position, ...), RAdam, cross-entropy. The sweep launcher read the lr column without its exponent column, 1.0 for 1e-3: RAdam's steps of up to about 1.0 per weight push fc2's biases and weights so far that act2's units stop firing on any input one after another (over half dead by about step 50, nearly all by the end, fc1 stays alive) and none comes back; the loss is erratic (it jumps to several times its level around step 120) and stays far above the twin at 1e-3, whose dead fraction stays small. Finite, no blow-up.",
)
def h277_quadball_radam_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(27710)
        model = Stack(14, hidden=64, out=4)
        opt = torch.optim.RAdam(model.parameters(), lr=lr)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 14, 4, 79, noise=0.7))[0]
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe))))))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 14, 4, 79, noise=0.7),
            200,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return dead

    twin = _Twin()
    twin_dead = run(twin, 1e-3)
    dead = run(ctx, 1.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half of act2 dead at the end", dead[-1] > 0.5)
    ctx.check("and dead over the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("the twin's dead fraction under 0.1", max(twin_dead) < 0.1)
    ctx.check("the loss ends over 2x the twin's", _mean(ls[-10:]) > 2 * _mean(twin.losses[-10:]))


# -- controls ------------------------------------------------------------------------------------


class CausalDilatedBlock(nn.Module):
    """Two causal dilated convolutions (left padding) with a ReLU and a residual connection."""

    def __init__(self, channels, dilation, kernel=3):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel, dilation=dilation)

    def forward(self, x):
        h = F.relu(self.conv1(F.pad(x, (self.pad, 0))))
        h = self.conv2(F.pad(h, (self.pad, 0)))
        return F.relu(x + h)


class ScintillationTCN(nn.Module):
    def __init__(self, channels=2, width=24, dilations=(1, 2, 4, 8)):
        super().__init__()
        self.inp = nn.Conv1d(channels, width, 1)
        self.blocks = nn.ModuleList(CausalDilatedBlock(width, d) for d in dilations)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h[:, :, -1]).squeeze(-1)


def _gnss(gen, batch, length=64):
    """GNSS receiver traces (signal amplitude and detrended carrier phase, 64 samples); the target
    is the amplitude scintillation index S4 of the last 32 samples (standardised)."""
    while True:
        s4 = 0.05 + 0.55 * torch.rand(batch, 1, generator=gen)
        white = torch.randn(batch, length + 4, generator=gen)
        smooth = (white[:, 4:] + white[:, 3:-1] + white[:, 2:-2] + white[:, 1:-3]) / 2
        amp = 1.0 + s4 * smooth
        phase = 0.5 * s4 * torch.cumsum(torch.randn(batch, length, generator=gen), 1) / 4
        x = torch.stack([amp, phase], 1)
        tail = amp[:, -32:]
        y = (tail.std(1) / tail.mean(1) - 0.3) / 0.15
        yield x, y


@scenario(
    family="ionospheric_scintillation_dilated_tcn",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written temporal convolution network (inp, blocks.0-3 with causal dilated Conv1d pairs at dilations 1, 2, 4, 8 and residual connections, head on the last step) estimating the amplitude scintillation index S4 from 64-sample GNSS receiver traces (signal amplitude and detrended carrier phase), Adam at 2e-3 with weight decay 1e-4, a long linear warm-up over the first 100 of 250 steps then cosine decay to a tenth (LambdaLR), MSE. Trains normally.",
)
def h277_ionospheric_tcn_adam_long_warmup(ctx: Context) -> None:
    gen = seeded(27711)
    model = ScintillationTCN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps, warm = 250, 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    lrs = []

    def after(step):
        lrs.append(opt.param_groups[0]["lr"])

    _train(ctx, model, opt, _gnss(gen, 32), steps, F.mse_loss, sched=sched, after=after)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under 0.3x", _fell(ls, ratio=0.3))
    ctx.check(
        "the lr peaked at step 99 after the warm-up",
        max(range(len(lrs)), key=lrs.__getitem__) == 98,
    )


@scenario(
    family="hay_stook_drying_moisture_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A SiLU MLP (fc1, act1, fc2, act2, head) regressing the moisture left in a hay stook after a day in the field from 12 standardised readings (sun hours, wind, humidity, sheaf density, crop, ...), Adadelta at lr 1.0, Huber loss on noisy targets, gradient accumulation over 2 micro-batches, ReduceLROnPlateau on the loss (factor 0.5, patience 20). Trains normally.",
)
def h277_hay_stook_adadelta_accum(ctx: Context) -> None:
    gen = seeded(27712)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 83, noise=0.2),
        200,
        F.huber_loss,
        sched=sched,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under 0.6x", _fell(ls, ratio=0.6))


class BloomNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.norm(self.fc2(self.act1(self.fc1(x))))))


@scenario(
    family="watermelon_snow_bloom_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GELU MLP with a LayerNorm (fc1, act1, fc2, norm, act2, head) naming which of 5 stages a watermelon-snow algal bloom is in from 16 standardised readings of a snowfield (reflectance bands, snow temperature, liquid water, ...), trained under fp16 autocast with a torch.amp.GradScaler, AdamW with two param groups (weight decay 0.05 on the Linear weights, none on biases and the LayerNorm), OneCycleLR (max_lr 3e-3), cross-entropy with label smoothing 0.1, clipping at 1.0 after unscaling. Trains normally.",
)
def h277_watermelon_snow_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(27713)
    model = BloomNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and "norm" not in n]
    rest = [
        p for n, p in model.named_parameters() if not (n.endswith("weight") and "norm" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=1e-4
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, 89, noise=0.8),
        steps,
        nn.CrossEntropyLoss(label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under 0.6x", _fell(ls, ratio=0.6))
    ctx.check("the scale stayed finite and positive", all(0 < s < math.inf for s in ctx.scales))
