"""Held-out set 148 (``h148_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before, with three small hand-written transformers (a hand softmax
over q.k scores, ``scaled_dot_product_attention`` and ``nn.MultiheadAttention``), a GRU, two
BatchNorm conv nets (one under fp16 autocast with a GradScaler) and a two-head multi-task net.

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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    forward=None,
    watch=None,
    weight=None,
    stop_nonfinite=True,
):
    """Train with the monitor attached: ``accumulate`` micro-batches per step, ``alter(step, x,
    y)`` changes a batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records,
    ``weight(step, micro)`` multiplies a micro-batch's loss."""
    ctx.attach(model, opt, scaler=scaler)
    forward = forward or (lambda m, x: m(x))
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for micro in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = forward(model, x)
                loss = loss_fn(out, y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            w = 1.0 if weight is None else weight(step, micro)
            if scaler is not None:
                scaler.scale(loss * w).backward()
            else:
                (loss * w).backward()
            shown += float(loss.detach().float())
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
                sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if stop_nonfinite and math.isnan(shown):
            break


# -- curling sweep calls: a transformer whose hand-written attention lost 1/sqrt(d) -------------


class SweepAttention(nn.Module):
    """Single-head attention, softmax written by hand over the q.k scores."""

    def __init__(self, dim, scale):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        for lin in (self.q, self.k, self.v, self.o):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        self.scale = scale
        self.last_max = 0.0

    def forward(self, x):
        scores = torch.einsum("btd,bsd->bts", self.q(x), self.k(x)) * self.scale
        self.last_max = float(scores.detach().abs().max())
        e = torch.exp(scores - scores.amax(-1, keepdim=True))
        return self.o((e / e.sum(-1, keepdim=True)) @ self.v(x))


class CurlingSweepNet(nn.Module):
    """Reads a stone's 16 speed readings along the sheet (binned to 24 levels) and calls the
    sweep (none, light, hard, brush off) for the next split."""

    def __init__(self, levels=24, dim=32, length=16, calls=4, scale=None):
        super().__init__()
        self.level = nn.Embedding(levels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SweepAttention(dim, 1.0 / math.sqrt(dim) if scale is None else scale)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, calls)

    def forward(self, x):
        h = self.level(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1))


def _sweeps(gen, batch, levels=24, length=16):
    """The call depends on where the slowest reading sits relative to the fastest."""
    while True:
        x = torch.randint(0, levels, (batch, length), generator=gen)
        lo = x.argmin(1)
        hi = x.argmax(1)
        y = (lo > hi).long() * 2 + (x[:, -4:].float().mean(1) > levels / 2).long()
        yield x, y


@scenario(
    family="curling_sweep_call_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with a hand-written softmax over q.k scores. The attention "
    "scale was read from a config field 'attn_scale: 1.0' (meant as a multiplier on "
    "1/sqrt(d), used as the scale itself), and AdamW runs at lr 1e-2 with weight decay off "
    "for every parameter: the raw q.k logits grow more than 20x, past 50.",
)
def h148_curling_sweep_qk_scale(ctx: Context) -> None:
    gen = seeded(14801)
    model = CurlingSweepNet(scale=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen = []
    _loop(
        ctx,
        model,
        opt,
        _sweeps(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 20x", seen[-1] > 20 * _mean(seen[:5]))
    ctx.check("attention logits above 50", seen[-1] > 50)


# -- harmonica bends: a z-loss added with the wrong sign -----------------------------------------


class HarmonicaBendNet(nn.Module):
    """Names the bend (none, half, whole, step and a half, overblow) from a 32-bin spectrum."""

    def __init__(self, bins=32, hidden=64, bends=5):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(bins, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, bends)

    def forward(self, x):
        return self.head(self.body(x))


def _spectra(gen, batch, bins=32, bends=5):
    centres = torch.randn(bends, bins, generator=gen)
    while True:
        y = torch.randint(0, bends, (batch,), generator=gen)
        yield centres[y] + 0.8 * torch.randn(batch, bins, generator=gen), y


@scenario(
    family="harmonica_bend_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="An MLP classifier of harmonica bends with a z-loss on the log-partition (meant as "
    "+1e-2 * logsumexp(logits)^2 to keep the logits small). It was added with a minus sign, "
    "so the loss rewards a large log-partition: RAdam drives the head's logits up without "
    "bound and the total loss falls far below zero while the accuracy is unchanged.",
)
def h148_harmonica_zloss_sign(ctx: Context) -> None:
    gen = seeded(14802)
    model = HarmonicaBendNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    seen = []

    def loss_fn(out, y):
        return F.cross_entropy(out, y) - 1e-2 * torch.logsumexp(out, -1).pow(2).mean()

    _loop(
        ctx,
        model,
        opt,
        _spectra(gen, 64),
        200,
        loss_fn,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(float(o.detach().abs().max())),
    )
    ctx.check("head logits grew 20x", seen[-1] > 20 * _mean(seen[:5]))
    ctx.check("head logits above 100", seen[-1] > 100)
    ctx.check("loss went below zero", ctx.losses[-1] < 0)


# -- bouldering grades: a cosine classifier whose feature normalisation was dropped ---------------


class BoulderBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.ln2(x))


class BoulderGradeNet(nn.Module):
    """Grades a problem (V0..V7) from its sequence of 12 holds."""

    def __init__(self, holds=40, dim=48, length=12, grades=8, scale=64.0, normalise=True):
        super().__init__()
        self.hold = nn.Embedding(holds, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.block = BoulderBlock(dim, 4)
        self.ln_f = nn.LayerNorm(dim, elementwise_affine=False)
        self.head = nn.Linear(dim, grades, bias=False)
        self.scale = scale
        self.normalise = normalise

    def forward(self, x):
        h = self.ln_f(self.block(self.hold(x) + self.pos).mean(1))
        if self.normalise:
            h = F.normalize(h, dim=-1)
        return self.scale * F.linear(h, F.normalize(self.head.weight, dim=-1))


def _saturated(logits):
    """Share of rows whose float32 softmax puts exactly 1.0 on one class."""
    return float((torch.softmax(logits.float(), -1).amax(-1) == 1.0).float().mean())


def _problems(gen, batch, holds=40, length=12, grades=8):
    """Holds come in 8 styles (5 ids each); a problem's grade is set by the style that makes
    up half of its holds, the rest are random."""
    while True:
        y = torch.randint(0, grades, (batch,), generator=gen)
        x = torch.randint(0, holds, (batch, length), generator=gen)
        styled = y[:, None] * 5 + torch.randint(0, 5, (batch, length), generator=gen)
        pick = torch.rand(batch, length, generator=gen) < 0.5
        yield torch.where(pick, styled, x), y


@scenario(
    family="bouldering_grade_transformer",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A one-block transformer (scaled_dot_product_attention, 4 heads) with a cosine "
    "classifier head, logits = 64 * cos(feature, class weight). A refactor dropped the "
    "F.normalize on the pooled feature, so the scale 64 multiplies a LayerNorm output of norm sqrt(48), about 7: "
    "the logit gaps are in the hundreds and the float32 softmax rounds to exactly 0 and 1 "
    "on most rows.",
)
def h148_bouldering_cosine_scale(ctx: Context) -> None:
    gen = seeded(14803)
    model = BoulderGradeNet(normalise=False)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = []
    _loop(
        ctx,
        model,
        opt,
        _problems(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(_saturated(o.detach())),
    )
    ctx.check("over half the rows softmax to exactly 0/1", _mean(seen[-10:]) > 0.5)
    ctx.check("saturation is present from the start", _mean(seen[:10]) > 0.2)


# -- glassblowing: OneCycleLR with max_lr typed ten times too large ------------------------------


def _gathers(gen, batch, feats=6):
    """Gather weight, furnace temperature, blow pressure, turns, pipe length, reheat count
    (standardised) -> wall thickness of the blown bubble (standardised)."""
    w = torch.randn(feats, generator=gen)
    while True:
        x = torch.randn(batch, feats, generator=gen)
        y = (
            torch.tanh(x @ w / 2)
            + 0.3 * x[:, 0] * x[:, 1]
            + 0.05 * torch.randn(batch, generator=gen)
        )
        yield x, y[:, None]


@scenario(
    family="glassblowing_bubble_wall_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP regressing a blown bubble's wall thickness, plain SGD under OneCycleLR. "
    "max_lr was typed as 1.0 for 0.1: the cycle's warm-up ramps the learning rate past 2 / "
    "sharpness (near lr 0.25, step 30) and the MSE blows up by orders of magnitude.",
    onset=30,
)
def h148_glassblowing_onecycle_max_lr(ctx: Context) -> None:
    gen = seeded(14804)
    model = nn.Sequential(
        nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=300)
    _loop(
        ctx,
        model,
        opt,
        _gathers(gen, 64),
        300,
        F.mse_loss,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("loss first fell", min(ls[:40]) < 0.7 * ls[0])
    ctx.check("loss blew up 100x over its minimum", max(ls) > 100 * min(ls[:40]) or not _finite(ls))


# -- bobsled curves: a deep plain MLP initialised with the wrong gain ----------------------------


class BobsledCurveNet(nn.Sequential):
    """Sled speed, curve radius, banking, entry angle, runner temperature, crew mass and two
    steering readings -> peak g-force in the curve: 10 Linear+ReLU layers, no normalisation."""

    def __init__(self, feats=8, width=64, depth=10, std=None):
        layers = []
        for i in range(depth):
            layers += [nn.Linear(feats if i == 0 else width, width), nn.ReLU()]
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)
        if std is not None:
            for m in self:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=std)
                    nn.init.zeros_(m.bias)


def _curves(gen, batch, feats=8):
    w = torch.randn(feats, generator=gen) / math.sqrt(feats)
    while True:
        x = torch.randn(batch, feats, generator=gen)
        y = 1.0 + (x @ w).abs() + 0.3 * x[:, 0] ** 2 + 0.05 * torch.randn(batch, generator=gen)
        yield x, y[:, None]


@scenario(
    family="bobsled_curve_g_force_regressor",
    optimizer="SGD (Nesterov)",
    cause="exploding_gradients",
    where=("0",),
    diverges="auto",
    heldout=True,
    note="A 10-layer plain ReLU MLP (no normalisation) regressing the peak g-force in a "
    "bobsled curve, SGD with Nesterov momentum. The init helper was copied from a 2-layer "
    "model and draws every weight from N(0, 0.25^2) for a width of 64 (He would be about "
    "0.18): each layer multiplies the backward signal by about 1.4, it reaches the first "
    "layer about 25x larger than at the last, the gradient norm starts in the thousands and "
    "the first updates blow the loss up to NaN within 3 steps.",
)
def h148_bobsled_init_gain(ctx: Context) -> None:
    gen = seeded(14805)
    model = BobsledCurveNet(std=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    first, last = [], []

    def tap(store):
        def hook(module, inputs, output):
            output.register_hook(lambda g: store.append(float(g.norm())))

        return hook

    model[1].register_forward_hook(tap(first))
    model[-2].register_forward_hook(tap(last))
    _loop(ctx, model, opt, _curves(gen, 64), 150, F.mse_loss)
    ls = ctx.losses
    ctx.check("backward signal grew 10x from the last layer to the first", first[0] > 10 * last[0])
    ctx.check("gradient norm over 100 at the first step", ctx.grad_norms[0] > 100)
    ctx.check("loss blew up 100x", max(ls) > 100 * ls[0] or not _finite(ls))


# -- tattoo needle depth: a NAdam learning rate typed ten times too large kills the ReLUs ----------


def _needles(gen, batch, feats=10):
    """Needle grouping, voltage, hand speed, skin site, stretch... -> ink depth (mm)."""
    w = torch.randn(feats, generator=gen) / math.sqrt(feats)
    while True:
        x = torch.randn(batch, feats, generator=gen)
        y = (
            F.softplus(x @ w)
            + 0.2 * torch.sin(2 * x[:, 1])
            + 0.05 * torch.randn(batch, generator=gen)
        )
        yield x, y[:, None]


@scenario(
    family="tattoo_needle_depth_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("2", "3"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP regressing ink depth from machine settings, Huber loss, NAdam at lr 0.1 "
    "(typed for 0.01). The first large updates push the second hidden layer's pre-activations "
    "negative: about 80% of its ReLUs stop firing within 20 steps and never come back; the "
    "fit carries on with the few units left.",
)
def h148_tattoo_dead_relus(ctx: Context) -> None:
    gen = seeded(14806)
    model = nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.NAdam(model.parameters(), lr=0.1)
    dead = []
    model[3].register_forward_hook(lambda m, i, o: dead.append(dead_fraction(o.detach())))
    _loop(ctx, model, opt, _needles(gen, 128), 200, F.huber_loss)
    ctx.check("under 20% dead at the start", dead[0] < 0.2)
    ctx.check("over 60% of the layer's units dead at the end", _mean(dead[-10:]) > 0.6)


# -- honeycomb frames: a BatchNorm CNN whose stem sits in a param group at lr 0 -------------------


class HoneycombNet(nn.Module):
    """Classifies an 8x8 patch of a brood frame (capped, open, empty, chalkbrood, varroa)."""

    def __init__(self, width=12, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * 16, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


def _frames(gen, batch, classes=5):
    templates = torch.randn(classes, 1, 8, 8, generator=gen)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        shift = torch.randint(-1, 2, (1,), generator=gen).item()
        x = torch.roll(templates[y], shift, dims=-1)
        yield x + 1.0 * torch.randn(batch, 1, 8, 8, generator=gen), y


@scenario(
    family="honeycomb_brood_frame_cnn",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("conv1",),
    diverges=None,
    heldout=True,
    note="A BatchNorm CNN classifying brood-frame patches, Adagrad with param groups. The "
    "training script came from a fine-tuning recipe whose first group freezes the stem "
    "('lr': 0.0 for conv1); the model here is trained from scratch, so conv1 keeps its "
    "random filters for the whole run (its update ratio is exactly 0) while the rest learns.",
)
def h148_honeycomb_frozen_stem(ctx: Context) -> None:
    gen = seeded(14807)
    model = HoneycombNet()
    stem = list(model.conv1.parameters())
    ids = {id(p) for p in stem}
    opt = torch.optim.Adagrad(
        [
            {"params": stem, "lr": 0.0},
            {"params": [p for p in model.parameters() if id(p) not in ids]},
        ],
        lr=0.03,
    )
    w0 = model.conv1.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    grads = []
    model.conv1.weight.register_hook(lambda g: grads.append(float(g.norm())))
    _loop(ctx, model, opt, _frames(gen, 64), 150, F.cross_entropy, classifier=True)
    moved = float((model.conv1.weight.detach() - w0).abs().max())
    head_moved = float((model.head.weight.detach() - h0).norm())
    ctx.check("conv1 never moved", moved == 0.0)
    ctx.check("conv1 had nonzero gradients all along", min(grads) > 0)
    ctx.check("the head moved", head_moved > 0.1 * float(h0.norm()))
    ctx.check("loss fell", _fell(ctx.losses))


# -- hot-sauce heat: one step whose loss kept a 1e4 manual loss scale poisons Adam's v -------------


def _peppers(gen, batch, feats=8):
    """Pepper variety mix, ripeness, seed share, vinegar, ferment days... -> log Scoville."""
    w = torch.randn(feats, generator=gen) / math.sqrt(feats)
    while True:
        x = torch.randn(batch, feats, generator=gen)
        y = x @ w + 0.5 * torch.tanh(x[:, 2] * x[:, 3]) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y[:, None]


@scenario(
    family="hot_sauce_scoville_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="An MLP regressing log Scoville heat, Adam with betas (0.9, 0.9999). The script "
    "once used a manual loss scale of 65536 for fp16 and divides it back out of the gradients; "
    "on the step after the checkpoint save at step 60 the division is skipped, so one "
    "gradient 65536 times too large enters Adam's second moment. With beta2 0.9999 it stays: "
    "once the poisoned first moment has decayed, the updates are several times smaller than "
    "before and the loss, knocked up by the one step, stays far above where it was.",
    onset=60,
)
def h148_hot_sauce_v_poisoned(ctx: Context) -> None:
    gen = seeded(14808)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.9999))
    moves, last = [], [model[0].weight.detach().clone()]

    def before(step):
        w = model[0].weight.detach().clone()
        moves.append(float((w - last[0]).norm()))
        last[0] = w

    _loop(
        ctx,
        model,
        opt,
        _peppers(gen, 64),
        200,
        F.mse_loss,
        before=before,
        weight=lambda s, m: 65536.0 if s == 60 else 1.0,
    )
    ls = ctx.losses
    g = ctx.grad_norms
    ctx.check("the gradient at step 60 was 1000x the step before", g[60] > 1000 * g[59])
    ctx.check("updates after the onset 2x smaller", _mean(moves[100:]) < _mean(moves[40:60]) / 2)
    ctx.check("loss stays 5x above its pre-onset level", min(ls[80:]) > 5 * min(ls[:60]))


# -- surfboard rocker: one shard logged board speed in cm/s instead of m/s ------------------------


def _boards(gen, batch, feats=7):
    """Rocker, length, volume, fin setup, wave height, rider mass, stance -> speed (m/s)."""
    w = torch.randn(feats, generator=gen) / math.sqrt(feats)
    while True:
        x = torch.randn(batch, feats, generator=gen)
        y = 6.0 + x @ w + 0.4 * torch.sin(x[:, 0]) + 0.1 * torch.randn(batch, generator=gen)
        yield x, y[:, None]


@scenario(
    family="surfboard_rocker_speed_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="An MLP regressing a board's speed from its shape and the wave, MSE, ASGD. One "
    "logging shard recorded the speed in km/h instead of m/s; the batch drawn from it at "
    "step 120 has targets 3.6x too large (about 16 m/s off): the loss jumps by three orders "
    "of magnitude for that step and the run then recovers.",
    onset=120,
)
def h148_surfboard_kmh_batch(ctx: Context) -> None:
    gen = seeded(14809)
    model = nn.Sequential(
        nn.Linear(7, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)

    def alter(step, x, y):
        return (x, y * 3.6) if step == 120 else (x, y)

    _loop(ctx, model, opt, _boards(gen, 64), 300, F.mse_loss, alter=alter)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 120 is 100x the steps before", ls[120] > 100 * _mean(ls[110:120]))
    ctx.check("gradient at step 120 is 50x the steps before", g[120] > 50 * _mean(g[110:120]))
    ctx.check("run recovered", _finite(ls) and _mean(ls[-10:]) < 3 * _mean(ls[110:120]))


# -- horseshoe pitching: a two-head net whose auxiliary loss weight skipped its warm-up once -------


class HorseshoeNet(nn.Module):
    """From the throw's release (angle, spin, speed, height, stance...) predicts the landing
    distance from the stake (regression) and ringer / leaner / miss (classification)."""

    def __init__(self, feats=9, hidden=64):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(feats, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.distance = nn.Linear(hidden, 1)
        self.outcome = nn.Linear(hidden, 3)

    def forward(self, x):
        h = self.trunk(x)
        return self.distance(h), self.outcome(h)


def _throws(gen, batch, feats=9):
    w = torch.randn(feats, generator=gen) / math.sqrt(feats)
    while True:
        x = torch.randn(batch, feats, generator=gen)
        d = (x @ w).abs() + 0.1 * torch.randn(batch, generator=gen)
        c = torch.bucketize(d, torch.tensor([0.3, 0.9]))
        yield x, (d[:, None], c)


@scenario(
    family="horseshoe_pitching_two_head_net",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A two-head MLP (distance regression + ringer/leaner/miss classification), loss = "
    "MSE + w * cross-entropy with SGD momentum and 4 micro-batches accumulated per step. The "
    "weight w is ramped in over the first 100 steps by a hand-written schedule; at the step "
    "where the ramp ends (step 100) an off-by-one divides by (100 - step) + 1e-3 and w is "
    "1000 for that one step: one gradient burst not caused by the data.",
    onset=100,
)
def h148_horseshoe_aux_weight_burst(ctx: Context) -> None:
    gen = seeded(14810)
    model = HorseshoeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    aux = {"w": 0.0}

    def before(step):
        aux["w"] = 1.0 / (100 - step + 1e-3) if step == 100 else min(step / 100, 1.0)

    def loss_fn(out, y):
        return F.mse_loss(out[0], y[0]) + aux["w"] * F.cross_entropy(out[1], y[1])

    _loop(ctx, model, opt, _throws(gen, 32), 200, loss_fn, before=before, accumulate=4)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 100 is 100x the steps before", g[100] > 100 * _mean(g[90:100]))
    ctx.check("loss at step 100 is 100x the steps before", ls[100] > 100 * _mean(ls[90:100]))
    ctx.check("gradient back within 10x of before", _mean(g[-20:]) < 10 * _mean(g[90:100]))


# -- waterfall mist: a Gaussian NLL whose variance head lost its clamp ---------------------------


class WaterfallMistNet(nn.Module):
    """Flow, drop height, wind, humidity, temperature -> mist density: a mean and a variance."""

    def __init__(self, feats=5, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(feats, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)
        nn.init.normal_(self.var_head.weight, std=0.01)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.mean_head(h), self.var_head(h)], 1)


def _mist(gen, batch, feats=5):
    w = torch.randn(feats, generator=gen) / math.sqrt(feats)
    while True:
        x = torch.randn(batch, feats, generator=gen)
        y = x @ w + 0.05 * (1 + x[:, 0].abs()) * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="waterfall_mist_density_nll",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var_head",),
    diverges=75,
    heldout=True,
    note="An MLP with a mean head and a variance head trained with a hand-written Gaussian "
    "NLL, 0.5 * log(var) + (y - mu)^2 / (2 var), RMSprop. The variance head's output was "
    "meant to pass through softplus (or a clamp to 1e-6); neither is there. As the noise is "
    "small the NLL pushes the variance down until the head outputs a negative value for some "
    "sample: log of a negative number is NaN and the loss is NaN from then on.",
)
def h148_waterfall_var_unclamped(ctx: Context) -> None:
    gen = seeded(14811)
    model = WaterfallMistNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-4)
    low = []

    def loss_fn(out, y):
        mu, var = out[:, 0], out[:, 1]
        return (0.5 * torch.log(var) + (y - mu) ** 2 / (2 * var)).mean()

    _loop(
        ctx,
        model,
        opt,
        _mist(gen, 64),
        200,
        loss_fn,
        watch=lambda s, o, x, y: low.append(float(o.detach()[:, 1].min())),
    )
    ls = ctx.losses
    bad = next((i for i, v in enumerate(ls) if not math.isfinite(v)), None)
    ctx.check("loss is NaN at the end", math.isnan(ls[-1]))
    ctx.check("the variance head output went negative", min(low) < 0)
    ctx.check(
        "loss was finite and falling first", bad is not None and bad > 20 and ls[bad - 1] < ls[0]
    )


# -- healthy controls ---------------------------------------------------------------------------


class FletchingBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class FletchingLM(nn.Module):
    """Next-token model over arrow-fletching build logs (vane, cut, offset tokens), tied
    embedding and output weights."""

    def __init__(self, vocab=32, dim=32, length=24):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.blocks = nn.ModuleList(FletchingBlock(dim, 2) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok.weight
        nn.init.normal_(self.tok.weight, std=0.02)
        mask = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
        self.register_buffer("mask", mask)

    def forward(self, x):
        t = x.shape[1]
        h = self.tok(x) + self.pos[:t]
        for block in self.blocks:
            h = block(h, self.mask[:t, :t])
        return self.lm_head(self.ln_f(h))


def _fletch_logs(gen, batch, vocab=32, length=24):
    """A noisy periodic grammar: each log repeats a 3-token vane pattern with 10% typos."""
    while True:
        pat = torch.randint(0, vocab, (batch, 3), generator=gen)
        seq = pat.repeat(1, (length + 1) // 3 + 1)[:, : length + 1]
        typo = torch.rand(batch, length + 1, generator=gen) < 0.1
        seq = torch.where(typo, torch.randint(0, vocab, seq.shape, generator=gen), seq)
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="arrow_fletching_log_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Healthy: a 2-block transformer LM (nn.MultiheadAttention with a causal mask, tied "
    "embedding/output weights) with linear warm-up then cosine decay, AdamW, clipping at "
    "1.0 and label smoothing 0.1 on noisy sequences.",
)
def h148_fletching_lm_healthy(ctx: Context) -> None:
    gen = seeded(14813)
    model = FletchingLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / 20, 0.5 * (1 + math.cos(math.pi * min(s / 200, 1.0))))
    )

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=0.1)

    _loop(ctx, model, opt, _fletch_logs(gen, 32), 200, loss_fn, clip=1.0, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))


class ShellWhorlNet(nn.Module):
    """Is a seashell's 8x8 whorl patch dextral (1) or sinistral (0)? BatchNorm CNN, one logit."""

    def __init__(self, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width * 16, 1)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1)).squeeze(1)


def _whorls(gen, batch):
    base = torch.randn(1, 1, 8, 8, generator=gen)
    while True:
        y = torch.randint(0, 2, (batch,), generator=gen)
        x = torch.where(y[:, None, None, None] == 1, base, base.flip(-1))
        yield x + 0.8 * torch.randn(batch, 1, 8, 8, generator=gen), y.float()


@scenario(
    family="seashell_whorl_chirality_cnn",
    optimizer="SGD (Nesterov)",
    cause="healthy",
    heldout=True,
    note="Healthy: a BatchNorm CNN with a BCE-with-logits loss under fp16 autocast with a "
    "GradScaler, SGD Nesterov with OneCycleLR, on noisy patches.",
)
def h148_seashell_amp_healthy(ctx: Context) -> None:
    gen = seeded(14814)
    model = ShellWhorlNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=150)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _whorls(gen, 64),
        150,
        lambda o, y: F.binary_cross_entropy_with_logits(o.float(), y),
        sched=sched,
        scaler=scaler,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("scale never collapsed", min(ctx.scales) >= 1024)


class TidepoolGRU(nn.Module):
    """Water level, temperature and wave readings over 24 steps -> next starfish count
    (log scale), as a Gaussian: a mean and a log-variance."""

    def __init__(self, feats=3, hidden=32):
        super().__init__()
        self.rnn = nn.GRU(feats, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _tides(gen, batch, length=24):
    while True:
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        t = torch.arange(length + 1) * 0.4
        level = torch.sin(t + phase)
        x = torch.stack(
            [
                level[:, :-1],
                0.5 * torch.cos(t[:-1] + phase),
                torch.randn(batch, length, generator=gen) * 0.3,
            ],
            -1,
        )
        y = level[:, -1] + 0.2 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="tidepool_starfish_gru",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Healthy: a GRU forecaster with a Gaussian NLL (mean and log-variance heads), "
    "2 micro-batches accumulated per step, ReduceLROnPlateau and clipping at 5, on noisy "
    "readings.",
)
def h148_tidepool_gru_healthy(ctx: Context) -> None:
    gen = seeded(14815)
    model = TidepoolGRU()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def loss_fn(out, y):
        return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())

    _loop(ctx, model, opt, _tides(gen, 32), 150, loss_fn, sched=sched, clip=5.0, accumulate=2)
    ctx.check(
        "loss fell", _finite(ctx.losses) and _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.3
    )
