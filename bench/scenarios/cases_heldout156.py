"""Held-out set 156 (``h156_``): hand-written models of crafts, sports and natural phenomena not
covered before: three hand-written transformers (a hand softmax over q.k scores,
``scaled_dot_product_attention``, and a CLS-token encoder on ``nn.MultiheadAttention``), a 1-D
U-Net-like conv regressor with skip connections, a residual MLP with LayerNorm, an LSTM language
model with tied embeddings, deep and plain MLPs, and a regressor under fp16 autocast with a
GradScaler.

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
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    scale_loss=None,
    after=None,
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``scale_loss(step,
    loss)`` changes the loss that is back-propagated, ``after(step)`` runs after the update."""
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
            loss = loss_fn(out.float(), y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            back = loss if scale_loss is None else scale_loss(step, loss)
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
            shown += float(loss.detach())
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
        if after is not None:
            after(step)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break


def _regression(gen, batch, d_in, d_out=1, noise=0.05, hidden=16):
    """A fixed random teacher (tanh features) and endless (x, y) batches from it."""
    w1 = torch.randn(d_in, hidden, generator=gen) / math.sqrt(d_in)
    w2 = torch.randn(hidden, d_out, generator=gen) / math.sqrt(hidden)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(2 * x @ w1) @ w2 + noise * torch.randn(batch, d_out, generator=gen)
        yield x, y


def _classes(gen, batch, d_in, classes, margin=2.0):
    """Gaussian blobs around fixed class centres."""
    centres = margin * torch.randn(classes, d_in, generator=gen) / math.sqrt(d_in) * 3
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = centres[y] + torch.randn(batch, d_in, generator=gen)
        yield x, y


def _sequences(gen, batch, levels=16, length=12):
    """Token sequences; the class depends on the order of the largest and smallest tokens and
    on whether the first three tokens are high."""
    while True:
        x = torch.randint(0, levels, (batch, length), generator=gen)
        y = (x.argmax(1) < x.argmin(1)).long() * 2 + (x[:, :3].float().mean(1) > levels / 2).long()
        yield x, y


# -- calligraphy: a hand softmax over q.k multiplied by sqrt(d) instead of divided --------------


class BrushAttention(nn.Module):
    """Single-head attention written out: softmax(q.k^T * scale) v; records the largest logit."""

    def __init__(self, dim, scale):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scale = scale
        self.last_max = 0.0

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-1, -2) * self.scale
        self.last_max = float(scores.detach().abs().amax())
        return self.o(torch.softmax(scores, dim=-1) @ self.v(x))


class CalligraphyStrokeNet(nn.Module):
    """Names the script hand (4 classes) from a sequence of 12 quantised brush-stroke
    directions."""

    def __init__(self, levels=16, dim=32, length=12, classes=4, scale=None):
        super().__init__()
        self.stroke = nn.Embedding(levels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = BrushAttention(dim, 1.0 / math.sqrt(dim) if scale is None else scale)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.stroke(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(h.mean(1))


@scenario(
    family="calligraphy_stroke_hand_attention_transformer",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with the attention written out by hand. The scores are "
    "multiplied by sqrt(d) where the paper divides by it (scale = d ** 0.5 instead of "
    "d ** -0.5), and Adam runs at lr 1e-2: the q.k logits the softmax sees grow more than 10x.",
)
def h156_calligraphy_stroke_qk_times_sqrt_d(ctx: Context) -> None:
    gen = seeded(15601)
    model = CalligraphyStrokeNet(scale=math.sqrt(32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _sequences(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 100", seen[-1] > 100)


# -- lacemaking: a distillation temperature left dividing the logits ----------------------------


def _lace(gen, batch, levels=16, length=12, classes=4):
    """Each ground draws most of its crossing codes from its own quarter of the codes."""
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        own = y[:, None] * (levels // classes) + torch.randint(
            0, levels // classes, (batch, length), generator=gen
        )
        other = torch.randint(0, levels, (batch, length), generator=gen)
        x = torch.where(torch.rand(batch, length, generator=gen) < 0.6, own, other)
        yield x, y


class BobbinAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class BobbinLaceNet(nn.Module):
    """Names the lace ground (4 classes) from 12 bobbin-crossing codes; the logits are divided
    by a temperature."""

    def __init__(self, levels=16, dim=32, length=12, classes=4, heads=4, temperature=1.0):
        super().__init__()
        self.cross = nn.Embedding(levels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = BobbinAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.temperature = temperature

    def forward(self, x):
        h = self.cross(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1)) / self.temperature


@scenario(
    family="lacemaking_bobbin_sdpa_transformer",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A transformer classifier through scaled_dot_product_attention. The config's "
    "distillation temperature (0.005) is read by the student's forward as well and divides "
    "its logits on every step: with NAdam at lr 3e-3 the float32 softmax rounds the target "
    "probability to exactly 1.0 on most rows.",
)
def h156_lacemaking_bobbin_temperature_divides(ctx: Context) -> None:
    gen = seeded(15602)
    model = BobbinLaceNet(temperature=0.005)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _lace(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("half the rows collapsed to p=1.0", _mean(seen[-10:]) > 0.5)
    ctx.check("collapse grew from the start", _mean(seen[-10:]) > _mean(seen[:5]) + 0.3)


# -- lapidary: MultiStepLR with gamma typed 10 for 0.1 ------------------------------------------


class CabochonPolishNet(nn.Module):
    """Predicts the polish time of a cabochon from 8 measurements (hardness, dome, grit...)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.out = nn.Linear(64, 1)

    def forward(self, x):
        return self.out(self.body(x))


@scenario(
    family="lapidary_cabochon_polish_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP regressor trained with plain SGD at lr 0.1 under MultiStepLR(milestones="
    "[80], gamma=10) -- gamma typed as 10 for 0.1: at step 80 the learning rate jumps to 1.0, "
    "past 2/sharpness, and the loss blows up.",
    onset=80,
)
def h156_lapidary_polish_multistep_gamma(ctx: Context) -> None:
    gen = seeded(15603)
    model = CabochonPolishNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[80], gamma=10.0)
    lrs = []
    _train(
        ctx,
        model,
        opt,
        _regression(gen, 128, 8),
        160,
        F.mse_loss,
        sched=sched,
        before=lambda s: lrs.append(opt.param_groups[0]["lr"]),
    )
    ls = ctx.losses
    ctx.check("lr jumped 10x at step 80", len(lrs) > 81 and lrs[80] > 9 * lrs[79])
    ctx.check("loss fell before the jump", _mean(ls[70:80]) < 0.7 * _mean(ls[:5]))
    after = ls[80:]
    ctx.check(
        "loss blew up after the jump",
        _first_bad(after) is not None or max(after) > 100 * _mean(ls[70:80]),
    )


# -- crochet: a deep ReLU MLP whose init gain was applied twice ---------------------------------


class CrochetTensionNet(nn.Module):
    """Predicts yarn tension (3 outputs) from 12 hook and yarn readings: ten ReLU layers."""

    def __init__(self, depth=10, width=64, gain=1.0):
        super().__init__()
        sizes = [12] + [width] * depth
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=False):
            lin = nn.Linear(a, b)
            nn.init.normal_(lin.weight, std=gain * math.sqrt(2.0 / a))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(width, 3)
        self.delta: dict[int, float] = {}

    def forward(self, x):
        h = x
        for i, layer in enumerate(self.net):
            h = layer(h)
            if i % 2 == 0 and h.requires_grad:
                h.register_hook(lambda g, i=i: self.delta.__setitem__(i, float(g.norm())))
        return self.out(h)


@scenario(
    family="crochet_stitch_tension_deep_mlp",
    optimizer="SGD-Nesterov",
    cause="exploding_gradients",
    where=("net.0", "net.2"),
    diverges="auto",
    heldout=True,
    note="A ten-layer ReLU MLP initialised with Kaiming std sqrt(2/fan_in) times a gain of "
    "1.3 (the helper multiplies by a gain again): the back-propagated gradient grows through "
    "depth, the first layer's output gradient is over 5x the last's, and SGD Nesterov at lr "
    "1e-3 blows up.",
)
def h156_crochet_tension_gain_twice(ctx: Context) -> None:
    gen = seeded(15604)
    model = CrochetTensionNet(gain=1.3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ratio = []

    def watch_grads(step):
        if step < 3 and 0 in model.delta and 18 in model.delta:
            ratio.append(model.delta[0] / (model.delta[18] + 1e-12))

    _train(ctx, model, opt, _regression(gen, 64, 12, 3), 100, F.mse_loss, after=watch_grads)
    ls = ctx.losses
    ctx.check("first layer's output gradient 5x the last's", bool(ratio) and ratio[0] > 5)
    ctx.check(
        "loss blew up",
        _first_bad(ls) is not None or max(ls) > 100 * _mean(ls[:3]),
    )


# -- lawn bowls: SGD's learning rate copied into RMSprop, dead ReLUs ----------------------------


class BowlsDrawNet(nn.Module):
    """Names the shot (draw, trail, drive, wick, ...: 6 classes) from 20 delivery readings."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Linear(128, 6)

    def forward(self, x):
        return self.head(self.body(x))


@scenario(
    family="lawn_bowls_draw_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("body.0", "body.1"),
    diverges=None,
    heldout=True,
    note="A two-layer ReLU MLP classifier fed the rink's raw readings (all positive, around "
    "3; the standardiser was not applied). The config switched from SGD to RMSprop but kept "
    "SGD's lr 0.1: the first normalised updates push nearly every first-layer ReLU negative "
    "for every input and they never come back; the loss stalls at chance.",
)
def h156_lawn_bowls_rmsprop_dead_relu(ctx: Context) -> None:
    gen = seeded(15605)
    model = BowlsDrawNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.1)
    batches = _classes(gen, 64, 20, 6, margin=1.0)
    probe = torch.cat([next(batches)[0] for _ in range(8)]) + 3.0
    dead = []

    def measure(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.body[:2](probe)))

    def raw(step, x, y):
        return x + 3.0, y

    measure(-1)
    _train(
        ctx,
        model,
        opt,
        batches,
        150,
        F.cross_entropy,
        classifier=True,
        alter=raw,
        after=measure,
    )
    ctx.check("first-layer dead fraction rose by 0.3", dead[-1] > dead[0] + 0.3)
    ctx.check("over 90% of the units dead at the end", dead[-1] > 0.9)
    ctx.check("still dead over the last 50 steps", min(dead[-50:]) > 0.9)
    ctx.check("loss stuck near chance", _mean(ctx.losses[-10:]) > 0.9 * math.log(6))


# -- skeleton sled: a misspelt param-group key leaves the U-Net encoder at lr 0 -----------------


class SplitUNet1d(nn.Module):
    """Maps a 64-sample sled accelerometer trace (2 channels) to the split-time profile along
    the track: a 1-D U-Net with two levels and skip connections."""

    def __init__(self, c=16):
        super().__init__()
        self.down1 = nn.Conv1d(2, c, 5, padding=2)
        self.down2 = nn.Conv1d(c, 2 * c, 5, padding=2)
        self.mid = nn.Conv1d(2 * c, 2 * c, 3, padding=1)
        self.up2 = nn.Conv1d(4 * c, c, 3, padding=1)
        self.up1 = nn.Conv1d(2 * c, c, 3, padding=1)
        self.out = nn.Conv1d(c, 1, 1)

    def forward(self, x):
        e1 = F.relu(self.down1(x))
        e2 = F.relu(self.down2(F.avg_pool1d(e1, 2)))
        m = F.relu(self.mid(F.avg_pool1d(e2, 2)))
        d2 = F.relu(self.up2(torch.cat([F.interpolate(m, scale_factor=2), e2], 1)))
        d1 = F.relu(self.up1(torch.cat([F.interpolate(d2, scale_factor=2), e1], 1)))
        return self.out(d1).squeeze(1)


def _sled_traces(gen, batch, length=64):
    """Two accelerometer channels; the target is a smoothed cumulative 'speed' profile."""
    kernel = torch.ones(1, 1, 9) / 9
    while True:
        x = torch.randn(batch, 2, length, generator=gen)
        drive = F.conv1d(x[:, :1] + 0.5 * x[:, 1:], kernel, padding=4).squeeze(1)
        y = torch.tanh(drive.cumsum(1) / 4)
        yield x, y


@scenario(
    family="skeleton_sled_split_unet1d",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("down1", "down2"),
    diverges=None,
    heldout=True,
    note="A 1-D U-Net-like conv regressor with Adagrad param groups: the encoder group reads "
    "cfg.get('encoder_lr', 0.0) while the config spells it 'enocder_lr', so the encoder "
    "convolutions train at lr 0 and never move; the decoder (lr 0.05) learns what it can.",
)
def h156_skeleton_sled_unet_encoder_lr0(ctx: Context) -> None:
    gen = seeded(15606)
    model = SplitUNet1d()
    cfg = {"enocder_lr": 0.05, "decoder_lr": 0.05}
    encoder = [*model.down1.parameters(), *model.down2.parameters()]
    decoder = [p for n, p in model.named_parameters() if not n.startswith("down")]
    opt = torch.optim.Adagrad(
        [
            {"params": encoder, "lr": cfg.get("encoder_lr", 0.0)},
            {"params": decoder, "lr": cfg.get("decoder_lr", 0.05)},
        ]
    )
    w0 = model.down1.weight.detach().clone()
    u0 = model.up1.weight.detach().clone()
    _train(ctx, model, opt, _sled_traces(gen, 32), 150, F.mse_loss)
    ctx.check("encoder never moved", bool(torch.equal(model.down1.weight, w0)))
    ctx.check(
        "decoder moved", float((model.up1.weight.detach() - u0).norm()) > 0.05 * float(u0.norm())
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- ropemaking: one shard of breaking strengths in newtons instead of kilonewtons --------------


class YarnStrengthNet(nn.Module):
    """Predicts a rope's breaking strength (kN) from 10 yarn and lay measurements."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.out = nn.Linear(64, 1)

    def forward(self, x):
        return self.out(self.body(x))


@scenario(
    family="ropemaking_yarn_strength_regressor",
    optimizer="SGD-momentum",
    cause="data_outlier",
    where=(),
    diverges="auto",
    heldout=True,
    note="An MLP regressor trained with SGD momentum (lr 0.02). At step 120 one shard from "
    "another rope walk arrives with breaking strengths in newtons instead of kilonewtons "
    "(targets x1000): the gradient spikes by orders of magnitude and the run blows up.",
    onset=120,
)
def h156_ropemaking_strength_newton_shard(ctx: Context) -> None:
    gen = seeded(15607)
    model = YarnStrengthNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def shard(step, x, y):
        return (x, y * 1000.0) if step == 120 else (x, y)

    _train(ctx, model, opt, _regression(gen, 64, 10), 200, F.mse_loss, alter=shard)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient spiked 100x at step 120", g[120] > 100 * _median(g[100:120]))
    ctx.check("loss fell before the shard", _mean(ls[110:120]) < 0.7 * _mean(ls[:5]))
    ctx.check(
        "run blew up after the shard",
        _first_bad(ls[121:]) is not None or max(ls[121:]) > 100 * _mean(ls[110:120]),
    )


# -- billiards: one step's loss summed instead of averaged after a resume -----------------------


class CushionAngleNet(nn.Module):
    """Predicts the rebound angle off the cushion (sin, cos) from 8 shot readings (spin,
    speed, incidence)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.out = nn.Linear(64, 2)

    def forward(self, x):
        return self.out(self.body(x))


@scenario(
    family="billiards_cushion_angle_mlp",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP regressor trained with ASGD (lr 0.05), 4 micro-batches accumulated per "
    "step and gradients clipped at norm 1. On the first step after a resume (step 90) the "
    "restored loss function uses reduction='sum' instead of 'mean' and the loss is not divided "
    "by the accumulation count: one gradient ~500x larger, clipped, and the run carries on.",
    onset=90,
)
def h156_billiards_resume_sum_reduction(ctx: Context) -> None:
    gen = seeded(15608)
    model = CushionAngleNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)

    def bug(step, loss):
        return loss * 4 * 64 * 2 if step == 90 else loss

    _train(
        ctx,
        model,
        opt,
        _regression(gen, 64, 8, 2),
        160,
        F.mse_loss,
        accumulate=4,
        clip=1.0,
        scale_loss=bug,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient spiked 100x at step 90", g[90] > 100 * _median(g[70:90]))
    ctx.check("only that step", max(g[91:]) < 10 * _median(g[70:90]))
    ctx.check("loss finite and fell", _fell(ls))


# -- cave drips: a Poisson rate through ReLU, log 0 ---------------------------------------------


class DripRateNet(nn.Module):
    """Predicts the drip count per minute from a stalactite (Poisson rate) from 6 readings
    (rainfall lag, temperature, CO2, ...)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.Tanh())
        self.rate = nn.Linear(32, 1)
        nn.init.constant_(self.rate.bias, 2.0)

    def forward(self, x):
        return F.relu(self.rate(self.body(x))).squeeze(1)


def _drips(gen, batch):
    w = torch.randn(6, generator=gen)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        lam = torch.exp(0.8 * torch.tanh(x @ w / 2))
        yield x, torch.poisson(lam, generator=gen)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


@scenario(
    family="cave_drip_rate_poisson_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("rate",),
    diverges=8,
    heldout=True,
    note="A Poisson regressor whose rate is relu(linear) -- the softplus was swapped for a "
    "ReLU 'for speed' -- and the hand-written NLL takes log(rate) with no floor. Adam at lr "
    "3e-2 pushes a rate to exactly 0 on a sample with drips: log 0 gives an infinite loss and "
    "NaN gradients.",
)
def h156_cave_drip_relu_rate_log0(ctx: Context) -> None:
    gen = seeded(15609)
    model = DripRateNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    _train(ctx, model, opt, _drips(gen, 64), 200, _poisson_nll)
    bad = _first_bad(ctx.losses)
    ctx.check("loss went non-finite", bad is not None)
    ctx.check("after some finite steps", bad is not None and bad > 5)


# -- chalk stream: a flow energy summed in fp16 under autocast ----------------------------------


class FlowEnergy(nn.Module):
    """The kinetic-energy feature: sum of squared velocity features (computed in the autocast
    dtype)."""

    def forward(self, h):
        return (h * h).sum(-1, keepdim=True)


class ChalkStreamNet(nn.Module):
    """Predicts a chalk stream's weed-cut discharge from 16 velocity-profile readings."""

    def __init__(self):
        super().__init__()
        self.lift = nn.Linear(16, 256)
        self.energy = FlowEnergy()
        self.body = nn.Sequential(nn.Linear(256, 32), nn.ReLU())
        self.out = nn.Linear(33, 1)

    def forward(self, x):
        h = self.lift(x)
        e = self.energy(h)
        return self.out(torch.cat([self.body(h), e.log1p()], -1))


def _flows(gen, batch, step_of):
    w = torch.randn(16, generator=gen) / 4
    while True:
        gauge = 1.0 + 0.2 * step_of[0]  # spring flows rise through the season's curriculum
        x = gauge * torch.randn(batch, 16, generator=gen)
        yield x, (torch.tanh(x @ w / gauge) + 0.1 * gauge).unsqueeze(1)


@scenario(
    family="chalk_stream_flow_fp16_mlp",
    optimizer="Adam",
    cause="amp_overflow",
    where=("energy",),
    diverges=79,
    heldout=True,
    note="A discharge regressor trained under fp16 autocast with a GradScaler (Adam, lr 1e-3). "
    "Its kinetic-energy feature sums squared velocity features in the autocast dtype; as the "
    "curriculum raises the gauge readings the fp16 sum passes 65504, the feature becomes inf "
    "and so does the loss.",
)
def h156_chalk_stream_fp16_energy_sum(ctx: Context) -> None:
    gen = seeded(15610)
    model = ChalkStreamNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    step_of = [0]
    peak = []

    def before(step):
        step_of[0] = step

    def watch(step, out, x, y):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
            peak.append(float(model.energy(model.lift(x)).float().amax()))

    _train(
        ctx,
        model,
        opt,
        _flows(gen, 64, step_of),
        300,
        F.huber_loss,
        scaler=scaler,
        before=before,
        watch=watch,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss went non-finite", bad is not None)
    ctx.check("the fp16 energy overflowed there", bad is not None and math.isinf(peak[bad]))
    ctx.check("finite for a while first", bad is not None and bad > 10)


# -- halfpipe: hand-written decoupled weight decay with the wrong sign --------------------------


class TrickScoreNet(nn.Module):
    """Scores a halfpipe run from 14 readings (amplitude, rotation, landing...)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(14, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.out = nn.Linear(64, 1)

    def forward(self, x):
        return self.out(self.body(x))


@scenario(
    family="halfpipe_trick_score_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP regressor trained with Adamax (lr 2e-3) and a hand-written decoupled "
    "weight decay applied after each step as p.mul_(1 + lr * wd) -- the sign flipped from "
    "1 - lr * wd -- with wd 3.0: the weights swell a little every step and, after the loss "
    "first falls, it climbs slowly.",
)
def h156_halfpipe_score_decay_sign(ctx: Context) -> None:
    gen = seeded(15611)
    model = TrickScoreNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    wd = 3.0
    norms = []

    def decay(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 2e-3 * wd)
            norms.append(float(torch.stack([p.norm() for p in model.parameters()]).norm()))

    _train(ctx, model, opt, _regression(gen, 64, 14), 300, F.mse_loss, after=decay)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _mean(ls[max(0, i - 5) : i + 5]))
    ctx.check("loss fell first", _mean(ls[low - 5 : low + 5]) < 0.7 * _mean(ls[:5]))
    ctx.check("then climbed 3x", _mean(ls[-10:]) > 3 * _mean(ls[max(0, low - 5) : low + 5]))
    ctx.check("weights swelled 3x", norms[-1] > 3 * norms[0])
    ctx.check("loss finite", _finite(ls))


# -- squash: a confidence penalty added with the wrong sign -------------------------------------


class ResBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class BounceResMLP(nn.Module):
    """Names the squash ball's bounce (nick, dead, tin, back wall, ...: 5 classes) from 12
    tracking readings: a residual MLP with LayerNorm."""

    def __init__(self, dim=48, blocks=3):
        super().__init__()
        self.inp = nn.Linear(12, dim)
        self.blocks = nn.Sequential(*[ResBlock(dim) for _ in range(blocks)])
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        return self.head(self.blocks(self.inp(x)))


@scenario(
    family="squash_ball_bounce_residual_mlp",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A residual MLP with LayerNorm. The confidence penalty (Pereyra et al.) is added as "
    "loss + 0.5 * entropy instead of loss - 0.5 * entropy, so training rewards ever sharper "
    "outputs; with Adam at lr 1e-2 and no weight decay the head's logits grow more than 20x.",
)
def h156_squash_bounce_entropy_sign(ctx: Context) -> None:
    gen = seeded(15612)
    model = BounceResMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = []
    probe = next(_classes(seeded(15699), 256, 12, 5))[0]

    def penalty(step, loss):
        p = F.softmax(model(probe), -1)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
        return loss + 0.5 * entropy

    def watch(step, out, x, y):
        seen.append(float(out.detach().abs().amax()))

    torch.manual_seed(15612)
    _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 12, 5),
        150,
        F.cross_entropy,
        classifier=True,
        scale_loss=penalty,
        watch=watch,
    )
    ctx.check("head logits grew 20x", _mean(seen[-5:]) > 20 * seen[0])
    ctx.check("head logits above 50", _mean(seen[-5:]) > 50)
    ctx.check("loss finite", _finite(ctx.losses))


# -- controls ------------------------------------------------------------------------------------


class ThermalEncoder(nn.Module):
    """Names the thermal (bubble, column, street, wave, none) from 16 vario readings binned to
    24 levels: a CLS token, pre-LN encoder blocks on nn.MultiheadAttention."""

    def __init__(self, levels=24, dim=32, length=16, classes=4, heads=4, layers=2):
        super().__init__()
        self.level = nn.Embedding(levels, dim)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(length + 1, dim))
        self.ln1 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.attn = nn.ModuleList(
            nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(layers)
        )
        self.ln2 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.ff = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.level(x)
        h = torch.cat([self.cls.expand(len(x), -1, -1), h], 1) + self.pos
        for ln1, attn, ln2, ff in zip(self.ln1, self.attn, self.ln2, self.ff, strict=True):
            a = ln1(h)
            h = h + attn(a, a, a, need_weights=False)[0]
            h = h + ff(ln2(h))
        return self.head(self.ln_f(h[:, 0]))


@scenario(
    family="paragliding_thermal_cls_transformer",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A CLS-token transformer encoder on nn.MultiheadAttention trained with AdamW in two "
    "param groups (weight decay 0.05 on matrices, none on norms, biases, the CLS token and "
    "positions), linear warm-up then cosine decay to lr 3e-3, clipping at 1.0 and label "
    "smoothing 0.1.",
)
def h156_paragliding_thermal_cls_control(ctx: Context) -> None:
    gen = seeded(15613)
    model = ThermalEncoder()
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 and "pos" not in n and "cls" not in n else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 250, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    _train(
        ctx,
        model,
        opt,
        _sequences(gen, 64, levels=24, length=16),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses))


class DyeVatLM(nn.Module):
    """A character LSTM language model of dyers' vat logs (here: byte text), tied embeddings."""

    def __init__(self, vocab=128, dim=64):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, num_layers=2, batch_first=True)
        self.decoder = nn.Linear(dim, vocab)
        self.decoder.weight = self.emb.weight

    def forward(self, x):
        return self.decoder(self.lstm(self.emb(x))[0])


@scenario(
    family="dyer_vat_lstm_lm",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A two-layer LSTM language model with the decoder tied to the embedding, trained with "
    "RAdam at lr 3e-3, gradients clipped at 0.5 and an ExponentialLR decay of 0.995.",
)
def h156_dyer_vat_lstm_control(ctx: Context) -> None:
    gen = seeded(15614)
    model = DyeVatLM()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.995)
    _train(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=32),
        200,
        lambda o, y: F.cross_entropy(o.reshape(-1, o.shape[-1]), y.reshape(-1)),
        clip=0.5,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("tied weights still shared", model.decoder.weight is model.emb.weight)


class FrostGrowthNet(nn.Module):
    """Predicts hoarfrost crystal growth per hour from 10 readings (humidity, wind, surface
    temperature, ...)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 96), nn.SiLU(), nn.Linear(96, 96), nn.SiLU())
        self.out = nn.Linear(96, 1)

    def forward(self, x):
        return self.out(self.body(x))


@scenario(
    family="hoarfrost_growth_regressor",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP regressor trained with Adadelta under fp16 autocast with a GradScaler, "
    "Huber loss, 2 accumulated micro-batches per step, noisy batches (every tenth step's "
    "targets carry extra sensor noise), clipping at 1.0 and a OneCycleLR schedule up to 1.0.",
)
def h156_hoarfrost_growth_amp_control(ctx: Context) -> None:
    gen = seeded(15615)
    model = FrostGrowthNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1.0, total_steps=steps, cycle_momentum=False
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def noisy(step, x, y):
        return (x, y + 0.3 * torch.randn(y.shape, generator=gen)) if step % 10 == 9 else (x, y)

    _train(
        ctx,
        model,
        opt,
        _regression(gen, 64, 10),
        steps,
        F.huber_loss,
        accumulate=2,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        alter=noisy,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("scaler kept a usable scale", ctx.scales[-1] >= 1.0)
