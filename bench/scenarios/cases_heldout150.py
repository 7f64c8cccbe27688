"""Held-out set 150 (``h150_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before, with three hand-written transformers (rotary position
embeddings with a hand softmax over q.k, ``nn.MultiheadAttention``, and
``scaled_dot_product_attention`` with tied input/output embeddings under bf16 autocast), a
SwiGLU regressor, 1-D conv nets (one under fp16 autocast with a GradScaler) and plain MLPs.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


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
    autocast=None,
    accumulate=1,
    watch=None,
    scale_loss=None,
    after=None,
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``scale_loss(step,
    loss)`` changes the loss that is back-propagated, ``after(step)`` runs after the update,
    ``autocast`` is None, ``torch.float16`` or ``torch.bfloat16``."""
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
            with torch.autocast(
                "cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None
            ):
                out = model(x)
            loss = loss_fn(out.float(), y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            back = loss if scale_loss is None else scale_loss(step, loss)
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
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
        if after is not None:
            after(step)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


# -- yodel register breaks: a rotary transformer whose attention group got the embedding lr ----


def _rotate(x, cos, sin):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)


class RotaryAttention(nn.Module):
    """Self-attention with rotary position embeddings and a hand softmax over q.k scores; records
    the largest scaled q.k logit it used."""

    def __init__(self, dim, heads, length):
        super().__init__()
        self.heads = heads
        self.hd = dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        inv = 1.0 / (10000 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        ang = torch.arange(length).float()[:, None] * inv[None]
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            m(x).reshape(b, t, self.heads, self.hd).transpose(1, 2)
            for m in (self.q, self.k, self.v)
        )
        q, k = _rotate(q, self.cos[:t], self.sin[:t]), _rotate(k, self.cos[:t], self.sin[:t])
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        self.last_max = float(scores.detach().abs().amax())
        att = torch.exp(scores - scores.amax(-1, keepdim=True))
        att = att / att.sum(-1, keepdim=True)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, d))


class YodelBreakNet(nn.Module):
    """Reads 16 sung pitch levels (32 bins) and names where the chest/head register break falls
    (first or second half) and whether it jumps up or down."""

    def __init__(self, levels=32, dim=32, heads=2, length=16):
        super().__init__()
        self.pitch = nn.Embedding(levels, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = RotaryAttention(dim, heads, length)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        h = self.pitch(x)
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1))


def _yodels(gen, batch, levels=32, length=16):
    while True:
        x = torch.randint(0, levels, (batch, length), generator=gen)
        jump = x[:, 1:] - x[:, :-1]
        at = jump.abs().argmax(1)
        up = jump.gather(1, at[:, None])[:, 0] > 0
        yield x, (at >= length // 2).long() * 2 + up.long()


@scenario(
    family="yodel_register_rotary_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with rotary position embeddings and a hand softmax over q.k "
    "scores. The param-group builder matched 'q'/'k' by substring into the embedding group "
    "(lr x20, weight decay 0), so the query/key projections run at AdamW lr 4e-2 with no "
    "decay while the rest trains at 2e-3: the scaled q.k logits grow more than 10x, past 30.",
)
def h150_yodel_rotary_qk_group(ctx: Context) -> None:
    gen = seeded(15001)
    model = YodelBreakNet()
    qk = [model.attn.q.weight, model.attn.k.weight, model.pitch.weight]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": qk, "lr": 4e-2, "weight_decay": 0.0}, {"params": rest, "lr": 2e-3}],
        weight_decay=0.05,
    )
    seen = []
    _train(
        ctx,
        model,
        opt,
        _yodels(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 30", seen[-1] > 30)


# -- pelota fronton rebounds: a hand logistic loss that lost its softplus --------------------------


class ReboundNet(nn.Module):
    """From the ball's incoming speed, angle, spin and wall zone (10 readings) says whether the
    rebound lands in court."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh())
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(self.body(x))[:, 0]


def _rebounds(gen, batch):
    w = torch.randn(10, generator=gen)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        yield x, (x @ w + 0.5 * x[:, 0] * x[:, 1] > 0).float()


@scenario(
    family="pelota_fronton_rebound_classifier",
    optimizer="SGD momentum",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A binary in-court classifier trained with a hand-written logistic loss; the refactor "
    "that replaced F.binary_cross_entropy_with_logits dropped the softplus around the signed "
    "margin, so the loss is -(2y-1)*logit, unbounded below: SGD momentum drives the head's "
    "logits up without bound (more than 20x) while the loss keeps falling.",
)
def h150_pelota_margin_no_softplus(ctx: Context) -> None:
    gen = seeded(15002)
    model = ReboundNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    seen = []

    def loss_fn(logit, y):
        return (-(2 * y - 1) * logit).mean()

    _train(
        ctx,
        model,
        opt,
        _rebounds(gen, 64),
        200,
        loss_fn,
        watch=lambda s, o, x, y: seen.append(float(o.detach().abs().mean())),
    )
    ctx.check("head logits grew 20x", seen[-1] > 20 * _mean(seen[:5]))
    ctx.check("logits still growing at the end", seen[-1] > 1.2 * seen[-40])


# -- bodhran rhythms: a temperature read as a divisor ---------------------------------------------


class BodhranNet(nn.Module):
    """Names the tune type (jig, reel, slide, polka, hornpipe, slip jig) from 32 tipper-stroke
    onsets and accents."""

    def __init__(self, temperature=1.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 6)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.body(x)) / self.temperature


def _bodhran(gen, batch):
    proto = torch.randn(6, 32, generator=gen)
    while True:
        y = torch.randint(0, 6, (batch,), generator=gen)
        yield proto[y] + 0.8 * torch.randn(batch, 32, generator=gen), y


@scenario(
    family="bodhran_rhythm_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A tune-type classifier whose config gives 'temperature: 0.01' meaning a multiplier "
    "for the logits, while the model divides by it: logits are 100x too sharp and the float32 "
    "softmax rounds most target probabilities to exactly 1.0.",
)
def h150_bodhran_temperature_divisor(ctx: Context) -> None:
    gen = seeded(15003)
    model = BodhranNet(temperature=0.01)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _bodhran(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("over half the rows collapsed to p=1.0", _mean(seen[-10:]) > 0.5)
    ctx.check("collapse grew from the start", _mean(seen[-10:]) > _mean(seen[:5]) + 0.2)


# -- hop kiln moisture: a learning rate typed ten times too large ---------------------------------


def _kiln(gen, batch):
    w = torch.randn(12, generator=gen)
    while True:
        x = 1.5 + torch.randn(batch, 12, generator=gen)
        yield x, (x @ w / 4 + 0.3 * torch.randn(batch, generator=gen))[:, None]


@scenario(
    family="hop_kiln_moisture_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Predicts the moisture left in a hop kiln bed from 12 unnormalised burner and airflow "
    "readings (mean 1.5) with MSE; the lr was typed 0.15 instead of 0.015, past 2/sharpness of "
    "the loss, so plain SGD oscillates with growing amplitude and the loss blows up.",
)
def h150_hop_kiln_lr_typo(ctx: Context) -> None:
    gen = seeded(15004)
    model = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.15)
    _train(ctx, model, opt, _kiln(gen, 64), 120, F.mse_loss)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss blew up 100x or went non-finite", bad is not None or max(ls) > 100 * ls[0])


# -- cornice collapse: an init gain applied twice -------------------------------------------------


class CorniceNet(nn.Module):
    """A deep ReLU MLP from 20 snow-pit readings to a cornice-collapse risk class."""

    def __init__(self, depth=10, width=48, gain=1.0):
        super().__init__()
        sizes = [20] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(width, 3)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain * math.sqrt(2.0 / lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x)


def _snowpits(gen, batch):
    w = torch.randn(20, 3, generator=gen)
    while True:
        x = torch.randn(batch, 20, generator=gen)
        yield x, (x @ w).argmax(1)


@scenario(
    family="cornice_collapse_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="A 10-layer ReLU MLP whose init helper multiplies Kaiming's std (already sqrt(2/fan_in)) "
    "by another gain of 2: activations and gradients grow about 2x per layer, the first layer's "
    "gradient is hundreds of times the last one's and SGD momentum blows the loss up.",
)
def h150_cornice_double_gain(ctx: Context) -> None:
    gen = seeded(15005)
    model = CorniceNet(gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ratio = []
    # the gradient reaching each layer's output on the first batch, before any update
    x0, y0 = next(_snowpits(seeded(15050), 64))
    outs = []
    h = x0
    for lin in model.layers:
        z = lin(h)
        z.retain_grad()
        outs.append(z)
        h = F.relu(z)
    F.cross_entropy(model.head(h), y0).backward()
    ratio.append(float(outs[0].grad.norm()) / max(float(outs[-1].grad.norm()), 1e-30))
    model.zero_grad(set_to_none=True)
    torch.manual_seed(15005)
    _train(ctx, model, opt, _snowpits(gen, 64), 100, F.cross_entropy, classifier=True)
    ls = ctx.losses
    ctx.check("gradient at the first layer 100x that at the last", ratio[0] > 100)
    ctx.check(
        "loss blew up 100x or went non-finite", _first_bad(ls) is not None or max(ls) > 100 * ls[0]
    )


# -- petanque boules: RMSprop at a learning rate meant for SGD ------------------------------------


class BouleNet(nn.Module):
    """From throw height, spin, distance and terrain (16 readings) predicts which of 5 distance
    bands from the jack the boule stops in."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 96)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(96, 5)

    def forward(self, x):
        return self.fc2(self.act1(self.fc1(x)))


def _boules(gen, batch):
    w = torch.randn(16, 5, generator=gen)
    while True:
        x = torch.rand(batch, 16, generator=gen) * 2
        yield x, ((x - 1) @ w).argmax(1)


@scenario(
    family="petanque_boule_mlp",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="The sweep config copied SGD's lr 0.3 into an RMSprop run: the first normalised updates "
    "are huge, most of fc1's ReLU units go negative on every input and never come back, and the "
    "loss stalls well above what the model learns at a sane rate.",
)
def h150_petanque_rmsprop_dead_relu(ctx: Context) -> None:
    gen = seeded(15006)
    model = BouleNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.3)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.fc1(x)))

    _train(ctx, model, opt, _boules(gen, 64), 150, F.cross_entropy, classifier=True, watch=watch)
    ctx.check("over half of fc1's units dead", _mean(dead[-10:]) > 0.5)
    ctx.check("units were alive at the start", dead[0] < 0.1)
    ctx.check("loss stalled above 0.8", _mean(ctx.losses[-10:]) > 0.8)


# -- scythe mowing strokes: a backbone lr multiplier typed 1e-6 ------------------------------------


class SwathNet(nn.Module):
    """A 1-D conv net reading 64 samples of a scythe snath's torque through one mowing stroke,
    classing the cut as clean, shallow, ploughing or bouncing."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 5, padding=2)
        self.conv2 = nn.Conv1d(12, 24, 5, padding=2)
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _swaths(gen, batch):
    t = torch.linspace(0, 6.28, 64)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        f = 1.0 + y.float()
        x = torch.sin(f[:, None] * t) * (0.5 + 0.3 * y.float())[:, None]
        yield x + 0.3 * torch.randn(batch, 64, generator=gen), y


@scenario(
    family="scythe_mowing_stroke_cnn",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("conv1", "conv2"),
    diverges=None,
    heldout=True,
    note="The conv backbone goes in its own Adagrad param group at lr * backbone_mult with "
    "backbone_mult typed 1e-6 instead of 1e-1: the conv layers' update-to-weight ratio is "
    "around 1e-8, they stay at their random init while the head trains.",
)
def h150_scythe_backbone_mult(ctx: Context) -> None:
    gen = seeded(15007)
    model = SwathNet()
    lr = 0.05
    opt = torch.optim.Adagrad(
        [
            {
                "params": list(model.conv1.parameters()) + list(model.conv2.parameters()),
                "lr": lr * 1e-6,
            },
            {"params": model.head.parameters(), "lr": lr},
        ]
    )
    w0 = model.conv2.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    _train(ctx, model, opt, _swaths(gen, 64), 150, F.cross_entropy, classifier=True)
    conv_change = float((model.conv2.weight.detach() - w0).norm() / w0.norm())
    head_change = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check("conv weights moved less than 1e-4 relative", conv_change < 1e-4)
    ctx.check("head moved more than 10% relative", head_change > 0.1)
    ctx.check("loss finite", _finite(ctx.losses))


# -- zither string tension: one giant gradient into Adam with beta2 0.9999 ------------------------


class ZitherNet(nn.Module):
    """Predicts the tension (kN) of a zither string from gauge, length, pitch and wrap readings."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 64)
        self.fc2 = nn.Linear(64, 64)
        self.out = nn.Linear(64, 1)

    def forward(self, x):
        return self.out(F.silu(self.fc2(F.silu(self.fc1(x)))))


def _strings(gen, batch):
    w = torch.randn(8, generator=gen)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        yield x, (torch.sin(x @ w / 2) + 0.3 * x[:, 0] ** 2)[:, None]


@scenario(
    family="zither_string_tension_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="Adam with betas (0.9, 0.9999) copied from a long pre-training recipe. At step 60 one "
    "batch comes from a luthier whose tensions are logged in millinewtons, not kilonewtons "
    "(x1e6): one gradient about 1e6x the usual fills every layer's second moment, and with beta2 "
    "0.9999 the updates stay far smaller afterwards: the loss stops falling.",
)
def h150_zither_beta2_poisoned(ctx: Context) -> None:
    gen = seeded(15008)
    model = ZitherNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.9999))
    moves = []
    prev = [model.fc1.weight.detach().clone()]

    def alter(step, x, y):
        return (x, y * 1e6) if step == 60 else (x, y)

    def after(step):
        w = model.fc1.weight.detach()
        moves.append(float((w - prev[0]).norm()))
        prev[0] = w.clone()

    _train(ctx, model, opt, _strings(gen, 64), 200, F.mse_loss, alter=alter, after=after)
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check("gradient at onset 1e4x the median", g[60] > 1e4 * _median(g[:60]))
    ctx.check(
        "fc1 updates 10x smaller after onset", _mean(moves[100:150]) < 0.1 * _mean(moves[40:60])
    )
    ctx.check("loss was falling before onset", _mean(ls[50:60]) < 0.8 * _mean(ls[:10]))
    ctx.check("loss stalled after onset", _mean(ls[-10:]) > 0.8 * _mean(ls[50:60]))


# -- sugar beet clamps: one shard logged in kelvin ------------------------------------------------


def _clamps(gen, batch):
    w = torch.randn(10, generator=gen)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        yield x, (4.0 + 2.0 * torch.tanh(x @ w / 3))[:, None]


@scenario(
    family="sugar_beet_clamp_temperature_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Predicts the core temperature of a beet clamp (degC) from 10 weather and ventilation "
    "readings; one storage site's shard, served at step 120, logged its targets in kelvin "
    "(+273.15): the MSE loss spikes thousands of times and the run recovers afterwards.",
)
def h150_beet_clamp_kelvin_shard(ctx: Context) -> None:
    gen = seeded(15009)
    model = nn.Sequential(
        nn.Linear(10, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        return (x, y + 273.15) if step == 120 else (x, y)

    _train(ctx, model, opt, _clamps(gen, 64), 260, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("loss at onset 100x the median before", ls[120] > 100 * _median(ls[100:120]))
    ctx.check("run finite", _finite(ls))
    ctx.check("loss fell 10x back from the spike", _mean(ls[-10:]) < 0.1 * _mean(ls[121:126]))


# -- kabaddi raids: an auxiliary loss weight that is 500 for one step ----------------------------


class RaidNet(nn.Module):
    """From 24 raid features (raider speed, defenders' positions, time) predicts success, with an
    auxiliary head regressing the number of touch points."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(24, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.head = nn.Linear(64, 2)
        self.aux = nn.Linear(64, 1)

    def forward(self, x):
        h = self.body(x)
        return torch.cat([self.head(h), self.aux(h)], 1)


def _raids(gen, batch):
    w = torch.randn(24, generator=gen)
    while True:
        x = torch.randn(batch, 24, generator=gen)
        s = x @ w / 4
        y = torch.stack([(s > 0).float(), s.abs().clamp(max=3)], 1)
        yield x, y


@scenario(
    family="kabaddi_raid_outcome_classifier",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="The auxiliary touch-point loss weight ramps to 1 by step 90; the resume at the step-90 "
    "checkpoint reads the weight from a config that stores it in percent (500 meant 5.00), for "
    "one step before the schedule overwrites it: one gradient burst far above the others (before "
    "clipping at 1.0), not from the data; the run carries on.",
)
def h150_kabaddi_aux_weight_burst(ctx: Context) -> None:
    gen = seeded(15010)
    model = RaidNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=1e9)

    aux_w = []

    def full_loss(out, y):
        step = len(ctx.losses)
        w = 500.0 if step == 90 else min(1.0, (step + 1) / 90)
        aux_w.append(w)
        cls = F.cross_entropy(out[:, :2], y[:, 0].long())
        return cls + w * F.mse_loss(out[:, 2], y[:, 1])

    _train(ctx, model, opt, _raids(gen, 64), 180, full_loss, clip=1.0)
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check("aux weight was 500 at onset", aux_w[90] == 500.0)
    ctx.check("gradient at onset 50x the median", g[90] > 50 * _median(g[60:90]))
    ctx.check("run finite", _finite(ls))


# -- waterspout counts: a Poisson rate clamped with relu instead of softplus ----------------------


class WaterspoutNet(nn.Module):
    """Predicts the daily count of waterspouts off a coast from 12 sounding readings (lapse
    rate, sea-surface temperature, shear) as a Poisson rate."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 48), nn.Tanh())
        self.rate_head = nn.Linear(48, 1)
        nn.init.normal_(self.rate_head.weight, std=0.01)
        nn.init.constant_(self.rate_head.bias, 1.0)

    def forward(self, x):
        return F.relu(self.rate_head(self.body(x)))[:, 0]


def _soundings(gen, batch):
    w = torch.randn(12, generator=gen)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        yield x, torch.poisson(torch.exp(x @ w / 3 - 0.5), generator=gen)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


@scenario(
    family="waterspout_count_poisson",
    optimizer="Adam",
    cause="nonfinite",
    where=("rate_head",),
    diverges=27,
    heldout=True,
    note="A Poisson regressor whose rate is F.relu(rate_head(h)) (the softplus was swapped for "
    "relu 'to save an exp'), with a hand-written NLL rate - y*log(rate): at step 27 a rate is "
    "clamped to exactly 0, log(0) = -inf (0 * -inf = NaN on a calm day) makes the loss NaN.",
)
def h150_waterspout_relu_rate(ctx: Context) -> None:
    gen = seeded(15011)
    model = WaterspoutNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    zeros = []

    def watch(step, out, x, y):
        zeros.append(bool((out.detach() == 0).any()))

    _train(ctx, model, opt, _soundings(gen, 64), 150, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("a rate was exactly 0 there", bad is not None and zeros[bad])
    ctx.check("no zero rate before", bad is not None and not any(zeros[:bad]))


# -- pot still cuts: decoupled weight decay applied with the wrong sign --------------------------


class StillNet(nn.Module):
    """From 16 still readings (head temperature, reflux, ABV, time since heads) predicts the
    ethanol fraction in the spirit run."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.fc2 = nn.Linear(64, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc2(F.gelu(self.fc1(x))))


def _still(gen, batch):
    w = torch.randn(16, generator=gen)
    while True:
        x = torch.randn(batch, 16, generator=gen)
        yield x, torch.sigmoid(x @ w / 3)[:, None]


@scenario(
    family="pot_still_cut_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Adamax with a hand-written decoupled weight decay after each step, p *= (1 + lr*wd) "
    "instead of (1 - lr*wd), wd 2.0: the weights grow slowly every step, the loss falls first "
    "and then climbs back steadily with no other mechanism.",
)
def h150_pot_still_decay_sign(ctx: Context) -> None:
    gen = seeded(15012)
    model = StillNet()
    lr, wd = 5e-3, 2.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)
        norms.append(float(model.fc1.weight.norm()))

    _train(ctx, model, opt, _still(gen, 64), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i] if math.isfinite(ls[i]) else 1e30)
    ctx.check("loss fell first", _mean(ls[low - 5 : low + 5]) < 0.7 * _mean(ls[:10]))
    ctx.check(
        "loss climbed 2x from its low", _mean(ls[-10:]) > 2 * _mean(ls[max(low - 5, 0) : low + 5])
    )
    ctx.check("weights grew 3x", norms[-1] > 3 * norms[0])
    ctx.check("run finite", _finite(ls))


# -- controls --------------------------------------------------------------------------------------


class BowBlock(nn.Module):
    """A pre-LN block around ``nn.MultiheadAttention``."""

    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class KeyedFiddleNet(nn.Module):
    """Reads 12 played key-press numbers on a nyckelharpa (16 keys) and names the tune's mode
    (four classes)."""

    def __init__(self, keys=16, dim=32, heads=4, length=12):
        super().__init__()
        self.key = nn.Embedding(keys, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.blocks = nn.ModuleList(BowBlock(dim, heads) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        h = self.key(x) + self.pos
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln_f(h).mean(1))


def _tunes(gen, batch, keys=16, length=12):
    scales = torch.stack([torch.randperm(keys, generator=gen)[:6] for _ in range(4)])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        pick = torch.randint(0, 6, (batch, length), generator=gen)
        x = scales[y].gather(1, pick)
        noise = torch.rand(batch, length, generator=gen) < 0.15
        x = torch.where(noise, torch.randint(0, keys, (batch, length), generator=gen), x)
        yield x, y


@scenario(
    family="nyckelharpa_tune_transformer",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a two-block nn.MultiheadAttention transformer, AdamW with param groups (no "
    "decay on norms, biases and embeddings), CosineAnnealingWarmRestarts (T_0 40, T_mult 2), "
    "label smoothing 0.1 and clipping at 1.0.",
)
def h150_nyckelharpa_warm_restarts_control(ctx: Context) -> None:
    gen = seeded(15013)
    model = KeyedFiddleNet()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "key" not in n]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=40, T_mult=2)
    _train(
        ctx,
        model,
        opt,
        _tunes(gen, 64),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))


class SwiGLU(nn.Module):
    """A gated MLP block: W2(silu(W1 x) * W3 x), with a residual and LayerNorm."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        h = self.norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class WallerNet(nn.Module):
    """Predicts the batter (lean, degrees) a dry-stone wall section settles to from 14 course
    readings (stone sizes, hearting fill, through-stones)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(14, 32)
        self.blocks = nn.Sequential(SwiGLU(32, 64), SwiGLU(32, 64))
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


def _walls(gen, batch):
    w = torch.randn(14, generator=gen)
    while True:
        x = torch.randn(batch, 14, generator=gen)
        noise = 0.2 * torch.randn(batch, generator=gen)
        yield x, (torch.tanh(x @ w / 3) * 2 + 0.3 * x[:, 0] * x[:, 1] + noise)[:, None]


@scenario(
    family="dry_stone_wall_swiglu_regressor",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: residual SwiGLU blocks, Huber loss, NAdam under OneCycleLR, gradient "
    "accumulation over 2 micro-batches of noisy readings.",
)
def h150_dry_stone_swiglu_control(ctx: Context) -> None:
    gen = seeded(15014)
    model = WallerNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=150)
    _train(ctx, model, opt, _walls(gen, 32), 150, F.huber_loss, accumulate=2, sched=sched)
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))


class StrokeAttention(nn.Module):
    """Causal attention through ``scaled_dot_product_attention``."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class HangDrumLM(nn.Module):
    """Next-stroke model over hang drum stroke tokens (tone field, ding, slap, ghost: 24
    tokens), with the output head tied to the input embedding."""

    def __init__(self, vocab=24, dim=32, heads=2, length=24):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = StrokeAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.lm_head.weight = self.tok.weight

    def forward(self, x):
        h = self.tok(x) + self.pos[: x.shape[1]]
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.lm_head(self.ln_f(h))


def _grooves(gen, batch, vocab=24, length=24):
    """Repeating grooves of period 3 to 6 with occasional ghost-note substitutions."""
    while True:
        period = torch.randint(3, 7, (batch,), generator=gen)
        motif = torch.randint(0, vocab, (batch, 6), generator=gen)
        idx = torch.arange(length + 1)[None] % period[:, None]
        seq = motif.gather(1, idx)
        ghost = torch.rand(batch, length + 1, generator=gen) < 0.05
        seq = torch.where(ghost, torch.randint(0, vocab, (batch, length + 1), generator=gen), seq)
        yield seq[:, :-1], seq[:, 1:]


def _lm_loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    family="hang_drum_tied_transformer",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a causal scaled_dot_product_attention language model over hang drum strokes "
    "with tied input/output embeddings, bf16 autocast (no GradScaler), RAdam with a linear "
    "warm-up then constant rate and clipping at 1.0.",
)
def h150_hang_drum_tied_bf16_control(ctx: Context) -> None:
    gen = seeded(15015)
    model = HangDrumLM()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    _train(
        ctx,
        model,
        opt,
        _grooves(gen, 32),
        200,
        _lm_loss,
        autocast=torch.bfloat16,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell by 40%", _fell(ctx.losses, ratio=0.6))


class KickNet(nn.Module):
    """A 1-D conv net on 48 samples of a sepak takraw player's ankle IMU, saying whether the
    roll spike lands in (BCE)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))[:, 0]


def _kicks(gen, batch):
    t = torch.linspace(0, 1, 48)
    while True:
        speed = torch.rand(batch, generator=gen) * 2 + 0.5
        phase = torch.rand(batch, generator=gen)
        base = torch.stack(
            [
                torch.sin(6.28 * (speed[:, None] * t + phase[:, None])),
                torch.cos(6.28 * speed[:, None] * t),
                t.expand(batch, -1),
            ],
            1,
        )
        x = base + 0.3 * torch.randn(batch, 3, 48, generator=gen)
        yield x, ((speed > 1.4) ^ (phase > 0.8)).float()


@scenario(
    family="sepak_takraw_kick_conv_net",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a 1-D conv net under fp16 autocast with a torch.amp.GradScaler, BCE with "
    "logits, SGD Nesterov momentum 0.9 and ReduceLROnPlateau.",
)
def h150_sepak_takraw_fp16_control(ctx: Context) -> None:
    gen = seeded(15016)
    model = KickNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _kicks(gen, 64),
        200,
        F.binary_cross_entropy_with_logits,
        autocast=torch.float16,
        scaler=scaler,
        sched=sched,
    )
    ctx.check("loss fell by 30%", _fell(ctx.losses, ratio=0.7))
    ctx.check("scaler kept a finite scale", all(math.isfinite(s) and s > 0 for s in ctx.scales))
