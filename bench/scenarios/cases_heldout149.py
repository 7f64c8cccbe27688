"""Held-out set 149 (``h149_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before, with hand-written transformers (``scaled_dot_product_attention``,
``nn.MultiheadAttention`` and a hand softmax over q.k scores), a vanilla RNN, 1-D conv nets with
GroupNorm (one under fp16 autocast with a GradScaler), a classifier with a learnt temperature and
plain MLP regressors.

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
                loss = loss_fn(out, y) / accumulate
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


# -- uilleann pipe regulators: a transformer whose SDPA scale was set to 1.0 --------------------


class ReedAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``; records the largest
    q.k logit (times the scale) it used."""

    def __init__(self, dim, heads, scale):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = scale
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        with torch.no_grad():
            self.last_max = float((q @ k.transpose(-1, -2)).abs().amax() * self.scale)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class RegulatorChordNet(nn.Module):
    """Reads 12 drone/chanter pitch readings (binned to 32 levels) and names which of the four
    regulator chords the piper is keying."""

    def __init__(self, levels=32, dim=32, length=12, chords=4, heads=2, scale=None):
        super().__init__()
        self.level = nn.Embedding(levels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        hd = dim // heads
        self.attn = ReedAttention(dim, heads, 1.0 / math.sqrt(hd) if scale is None else scale)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, chords)

    def forward(self, x):
        h = self.level(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1))


def _regulators(gen, batch, levels=32, length=12):
    """The chord depends on whether the highest reading comes before the lowest and on the
    level of the first three readings."""
    while True:
        x = torch.randint(0, levels, (batch, length), generator=gen)
        y = (x.argmax(1) < x.argmin(1)).long() * 2 + (x[:, :3].float().mean(1) > levels / 2).long()
        yield x, y


@scenario(
    family="uilleann_pipe_regulator_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer through scaled_dot_product_attention. The port from a "
    "reference implementation passed scale=1.0 (the reference's 'scale_mult') instead of "
    "1/sqrt(head_dim), and AdamW runs at lr 1e-2 with weight decay 0 on every parameter: the "
    "q.k logits the softmax sees grow more than 10x, past 40.",
)
def h149_uilleann_regulator_sdpa_scale(ctx: Context) -> None:
    gen = seeded(14901)
    model = RegulatorChordNet(scale=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _regulators(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 40", seen[-1] > 40)


# -- queen bee piping: a confidence penalty added with the wrong sign ---------------------------


class QueenPipingNet(nn.Module):
    """Names the call (tooting, quacking, worker piping, silence, swarm hum) from a 24-bin hive
    microphone spectrum."""

    def __init__(self, bins=24, hidden=48, calls=5):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(bins, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, calls)

    def forward(self, x):
        return self.head(self.body(x))


def _hive_calls(gen, batch, bins=24, calls=5):
    centres = torch.randn(calls, bins, generator=torch.Generator().manual_seed(7))
    while True:
        y = torch.randint(0, calls, (batch,), generator=gen)
        x = centres[y] + 3.0 * torch.randn(batch, bins, generator=gen)
        yield x, y


@scenario(
    family="queen_bee_piping_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="The model outputs raw logits, but the loss was written as F.nll_loss(logits, y) "
    "(the log_softmax left in the old model's forward): the loss is minus the target logit, "
    "which has no floor, so with Adamax at lr 2e-3 the head's logits grow without bound (the "
    "logit norm grows more than 20x and is still growing at the end) while the loss runs "
    "negative.",
)
def h149_queen_piping_nll_on_logits(ctx: Context) -> None:
    gen = seeded(14902)
    model = QueenPipingNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    norms = []

    _train(
        ctx,
        model,
        opt,
        _hive_calls(gen, 64),
        200,
        F.nll_loss,
        classifier=True,
        watch=lambda s, o, x, y: norms.append(float(o.detach().norm(dim=-1).mean())),
    )
    ctx.check("logit norm grew 20x", norms[-1] > 20 * _mean(norms[:5]))
    ctx.check("logit norm still growing", norms[-1] > 1.3 * norms[-50])


# -- bobbin lace: a learnt logit scale initialised with the number meant for its exp -------------


class LearntLogitScale(nn.Module):
    """A CLIP-style learnt logit scale: stored as a log, used as ``exp(log_scale)`` clamped to 100."""

    def __init__(self, init):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, cosines):
        return cosines * self.log_scale.exp().clamp(max=100.0)


class LacePatternNet(nn.Module):
    """Names the ground (torchon, rose, Brussels, Bucks point, Cluny, honeycomb) from a 6x6
    pricking-card pattern of pin holes with a cosine classifier."""

    def __init__(self, grounds=6, hidden=64, scale_init=2.3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(36, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, grounds, bias=False)
        self.scale = LearntLogitScale(scale_init)

    def forward(self, x):
        h = F.normalize(self.body(x), dim=-1)
        return self.scale(h @ F.normalize(self.head.weight, dim=-1).T)


def _prickings(gen, batch, grounds=6):
    protos = (torch.rand(grounds, 36, generator=torch.Generator().manual_seed(11)) < 0.4).float()
    while True:
        y = torch.randint(0, grounds, (batch,), generator=gen)
        flip = (torch.rand(batch, 36, generator=gen) < 0.15).float()
        yield (protos[y] - flip).abs(), y


@scenario(
    family="bobbin_lace_pattern_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("scale",),
    diverges=None,
    heldout=True,
    note="A cosine classifier with a CLIP-style learnt logit scale, stored as a log and used "
    "as exp(log_scale) clamped at 100. The config's 'logit_scale_init: 30' (meant as the "
    "scale) was written straight into log_scale: exp(30) is clamped to 100 from the start, "
    "where the clamp passes no gradient, so the scale can never come down; as RMSprop (lr "
    "1e-3) separates the grounds, the float32 softmax rounds most targets' probabilities to "
    "exactly 1.0.",
)
def h149_bobbin_lace_logit_scale_init(ctx: Context) -> None:
    gen = seeded(14903)
    model = LacePatternNet(scale_init=30.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    collapsed = []
    _train(
        ctx,
        model,
        opt,
        _prickings(gen, 64),
        250,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: collapsed.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("half the targets' probabilities are exactly 1.0", _mean(collapsed[-20:]) > 0.5)
    ctx.check("few were at the start", collapsed[0] < 0.2)
    ctx.check("the scale is stuck at the clamp", float(model.scale.log_scale.detach()) > 20)


# -- potter's wheel: a warm-up lambda without its cap ------------------------------------------


class WheelCenteringNet(nn.Module):
    """Regresses how many seconds of coning a lump of clay still needs before it runs true, from
    eight readings (wobble amplitude, wheel speed, clay mass, water, ...)."""

    def __init__(self, hidden=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.net(x)).squeeze(-1)


def _clay(gen, batch):
    w = torch.tensor([0.8, -0.5, 0.3, 0.6, -0.2, 0.4, 0.1, -0.7])
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(x @ w) + 0.3 * x[:, 0] * x[:, 3] + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="potters_wheel_centering_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=10,
    note="Plain SGD (lr 0.1) with a linear warm-up written as LambdaLR(lambda s: s / 10), the "
    "min(1, ...) cap forgotten: after the 10 warm-up steps the learning rate keeps climbing "
    "(0.1 more every 10 steps) until it passes 2/sharpness of the MSE loss, which then "
    "oscillates and blows up.",
)
def h149_potters_wheel_uncapped_warmup(ctx: Context) -> None:
    gen = seeded(14904)
    model = WheelCenteringNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / 10)
    lrs = []
    _train(
        ctx,
        model,
        opt,
        _clay(gen, 64),
        300,
        F.mse_loss,
        sched=sched,
        before=lambda s: lrs.append(opt.param_groups[0]["lr"]),
    )
    ls = ctx.losses
    low = min(ls[:100])
    ctx.check("the loss fell first", low < 0.5 * ls[0])
    ctx.check("then blew up 100x", max(v if math.isfinite(v) else 1e30 for v in ls) > 100 * low)
    ctx.check("lr passed 5x the warm-up target", max(lrs) > 0.5)


# -- cicada chorus: a vanilla RNN whose recurrent init was scaled by the wrong gain ---------------


class ChorusRNN(nn.Module):
    """Reads 40 frames of a 6-band cicada chorus envelope and forecasts the next frame's loudness
    in each band."""

    def __init__(self, bands=6, hidden=48, gain=1.0):
        super().__init__()
        self.rnn = nn.RNN(bands, hidden, batch_first=True, nonlinearity="relu")
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        nn.init.zeros_(self.rnn.bias_hh_l0)
        self.head = nn.Linear(hidden, bands)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _chorus(gen, batch, bands=6, length=40):
    t = torch.arange(length + 1).float()
    while True:
        phase = 6.28 * torch.rand(batch, bands, 1, generator=gen)
        period = 6.0 + 6.0 * torch.rand(batch, bands, 1, generator=gen)
        sig = 0.5 + 0.4 * torch.sin(6.28 * t / period + phase)
        sig = sig + 0.05 * torch.randn(sig.shape, generator=gen)
        yield sig[:, :, :-1].transpose(1, 2), sig[:, :, -1]


@scenario(
    family="cicada_chorus_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="A ReLU RNN (IRNN-style) whose recurrent weights are meant to be orthogonal with gain "
    "1.0; the run's config still carried 'recurrent_gain: 1.63' from a sweep on 10-frame "
    "clips. Over 40 frames the forward state and the back-propagated gradient grow through "
    "time (gradient norm in the thousands at step 0) and SGD with momentum (lr 1e-3, no "
    "clipping) blows the loss up within a dozen steps.",
)
def h149_cicada_chorus_recurrent_gain(ctx: Context) -> None:
    gen = seeded(14905)
    model = ChorusRNN(gain=1.63)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    _train(ctx, model, opt, _chorus(gen, 32), 150, F.mse_loss)
    g = ctx.grad_norms
    ctx.check("gradient norm above 1e3 at the first step", g[0] > 1e3)
    ctx.check(
        "loss blew up 100x or went non-finite",
        not _finite(ctx.losses) or max(ctx.losses) > 100 * min(ctx.losses),
    )


# -- coracle paddling: Adagrad at lr 1.0 kills the ReLUs ---------------------------------------


class CoracleStrokeNet(nn.Module):
    """Names the paddle stroke (figure-of-eight, pull, draw, sculling, brace) from 20 readings of
    a paddle-shaft inertial sensor."""

    def __init__(self, inputs=20, hidden=64, strokes=5):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(hidden, strokes)

    def forward(self, x):
        return self.head(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


def _strokes(gen, batch, inputs=20, strokes=5):
    centres = 0.5 * torch.randn(strokes, inputs, generator=torch.Generator().manual_seed(5))
    while True:
        y = torch.randint(0, strokes, (batch,), generator=gen)
        yield centres[y] + torch.randn(batch, inputs, generator=gen), y


@scenario(
    family="coracle_paddle_stroke_mlp",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc2", "relu2"),
    diverges=None,
    heldout=True,
    note="A two-hidden-layer ReLU MLP trained with Adagrad; the config's 'lr: 1.0e-2' lost its "
    "exponent in a YAML edit and read 1.0. Adagrad's first steps move every weight by about "
    "the learning rate, which drives the second layer's pre-activations negative for every "
    "input: about half of its ReLU units die within 20 steps and receive no gradient again, "
    "and the loss stalls above 1 (the same net at lr 1e-2 reaches about 0.5).",
)
def h149_coracle_adagrad_lr_typo(ctx: Context) -> None:
    gen = seeded(14906)
    model = CoracleStrokeNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=1.0)
    feats = {}
    model.relu2.register_forward_hook(lambda m, i, o: feats.__setitem__("h", o.detach()))
    dead = []
    _train(
        ctx,
        model,
        opt,
        _strokes(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: dead.append(dead_fraction(feats["h"])),
    )
    ctx.check("few units dead at the start", dead[0] < 0.2)
    ctx.check("40% of the units dead at the end", _mean(dead[-10:]) > 0.4)
    ctx.check("the loss stalled above 1.0", _mean(ctx.losses[-20:]) > 1.0)


# -- dhol drumming: a 1-D conv net whose feature extractor sits in a param group at lr 2e-9 ------


class DholStrokeConv(nn.Module):
    """Names the dhol stroke (dagga, tilli, both, rim, muted) from a 64-sample envelope of the two
    heads' contact microphones: 1-D convolutions with GroupNorm."""

    def __init__(self, strokes=5, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(2, width, 5, padding=2),
            nn.GroupNorm(4, width),
            nn.GELU(),
            nn.Conv1d(width, width, 5, padding=2, stride=2),
            nn.GroupNorm(4, width),
            nn.GELU(),
        )
        self.head = nn.Linear(width, strokes)

    def forward(self, x):
        return self.head(self.features(x).mean(-1))


def _dhol(gen, batch, strokes=5, length=64):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, strokes, (batch,), generator=gen)
        onset = torch.randint(5, 40, (batch, 1), generator=gen).float()
        decay = 2.0 + 3.0 * (y % 3).float()[:, None]
        env = torch.exp(-(t - onset).clamp(min=0) / decay) * (t >= onset)
        bass = env * (y < 3).float()[:, None] * torch.sin(0.4 * t)
        treble = env * ((y == 1) | (y >= 3)).float()[:, None] * torch.sin(2.0 * t + y[:, None])
        x = torch.stack([bass, treble], 1) + 0.1 * torch.randn(batch, 2, length, generator=gen)
        yield x, y


@scenario(
    family="dhol_stroke_conv1d_groupnorm",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("features.0", "features.1", "features.3", "features.4"),
    diverges=None,
    heldout=True,
    note="A 1-D conv net with GroupNorm fine-tuned with NAdam in two param groups: the head at "
    "2e-3 and the feature extractor at 'lr * backbone_mult', where backbone_mult was typed "
    "1e-6 instead of 1e-1 (lr 2e-9): the convolutions' updates are under 1e-7 of their weights "
    "per step, they stay where they were initialised (moved under 1e-4 of their norm over the "
    "run), and only the head learns.",
)
def h149_dhol_backbone_group_typo(ctx: Context) -> None:
    gen = seeded(14907)
    model = DholStrokeConv()
    lr = 2e-3
    opt = torch.optim.NAdam(
        [
            {"params": model.features.parameters(), "lr": lr * 1e-6},
            {"params": model.head.parameters(), "lr": lr},
        ]
    )
    conv0 = model.features[0].weight.detach().clone()
    head0 = model.head.weight.detach().clone()
    _train(ctx, model, opt, _dhol(gen, 32), 150, F.cross_entropy, classifier=True)
    conv_moved = float((model.features[0].weight.detach() - conv0).norm() / conv0.norm())
    head_moved = float((model.head.weight.detach() - head0).norm() / head0.norm())
    ctx.check("the convolutions moved under 1e-4 of their norm", conv_moved < 1e-4)
    ctx.check("the head moved over 10% of its norm", head_moved > 0.1)


# -- glacier calving: one shard with the ice thickness in centimetres ---------------------------


class CalvingNet(nn.Module):
    """Regresses the (log) ice volume a tidewater glacier front calves in a day from ten readings
    (ice thickness, water depth, front speed, sea temperature, tide, ...)."""

    def __init__(self, inputs=10, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.trunk(x)).squeeze(-1)


def _calving(gen, batch, inputs=10):
    w = torch.linspace(-1.0, 1.0, inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = 0.6 * torch.sin(x @ w / 2) + 0.4 * x[:, 0] * x[:, 1]
        yield x, y + 0.1 * torch.randn(batch, generator=gen)


@scenario(
    family="glacier_calving_volume_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A Huber-loss regressor trained with SGD + momentum (lr 2e-2). The shard read at step "
    "120 came from a station that logs ice thickness in centimetres, not metres, and the "
    "standardisation used the other stations' statistics: that one batch's first feature is "
    "100x too large, the loss and the gradient norm jump far above every other step, and the "
    "run recovers afterwards.",
)
def h149_glacier_calving_cm_shard(ctx: Context) -> None:
    gen = seeded(14908)
    model = CalvingNet()
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 0] = x[:, 0] * 100.0
        return x, y

    _train(ctx, model, opt, _calving(gen, 64), 250, F.huber_loss, alter=alter)
    ls, g = ctx.losses, ctx.grad_norms
    before = sorted(ls[60:120])[30]
    ctx.check("the loss jumped 20x at the bad shard", ls[120] > 20 * before)
    ctx.check("the gradient jumped 50x there", g[120] > 50 * _mean(g[100:120]))
    ctx.check("the run recovered", _finite(ls) and _mean(ls[-20:]) < 3 * before)


# -- kendo strikes: a loss weight read as 400 for one step --------------------------------------


class KendoStrikeNet(nn.Module):
    """Two heads over a shared trunk: the time (ms) a men/kote/do strike takes to land, and its
    force, from 12 readings of a shinai-mounted accelerometer."""

    def __init__(self, inputs=12, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(inputs, hidden), nn.ELU(), nn.Linear(hidden, hidden))
        self.act = nn.ELU()
        self.timing = nn.Linear(hidden, 1)
        self.force = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act(self.trunk(x))
        return torch.cat([self.timing(h), self.force(h)], -1)


def _strikes(gen, batch, inputs=12):
    w1 = torch.linspace(-0.8, 0.8, inputs)
    w2 = torch.cos(torch.arange(inputs).float())
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = torch.stack([torch.tanh(x @ w1 / 2), 0.3 * (x @ w2) / 3 + 0.2 * x[:, 2] ** 2], -1)
        yield x, y + 0.05 * torch.randn(batch, 2, generator=gen)


@scenario(
    family="kendo_strike_timing_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="A two-head MSE regressor trained with ASGD (lr 2e-2). The force head's loss weight "
    "comes from a per-epoch schedule dict; at step 90 (an epoch boundary) the lookup fell "
    "through to the dict's 'max' entry, 400, for that one step: the batch is ordinary and the "
    "loss the run reports is ordinary, but the gradient of that step is about two orders of "
    "magnitude above its neighbours.",
)
def h149_kendo_loss_weight_lookup(ctx: Context) -> None:
    gen = seeded(14909)
    model = KendoStrikeNet()
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)

    def loss_fn(out, y):
        return F.mse_loss(out[:, 0], y[:, 0]) + F.mse_loss(out[:, 1], y[:, 1])

    def scale_loss(step, loss):
        return loss * 400.0 if step == 90 else loss

    _train(ctx, model, opt, _strikes(gen, 64), 200, loss_fn, scale_loss=scale_loss)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("the gradient jumped 50x at step 90", g[90] > 50 * _mean(g[70:90]))
    ctx.check("the loss at step 90 was ordinary", ls[90] < 2 * _mean(ls[80:90]))
    ctx.check("the run went on finite", _finite(ls))


# -- cheese wheel brining: one step's loss summed instead of averaged ----------------------------


class BrineUptakeNet(nn.Module):
    """Regresses the salt profile (32 depths) of a cheese wheel after brining from eight readings
    (brine strength, temperature, hours, wheel diameter, curd moisture, ...)."""

    def __init__(self, inputs=8, hidden=64, depths=64):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.profile = nn.Linear(hidden, depths)

    def forward(self, x):
        return self.profile(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


def _brine(gen, batch, inputs=8, depths=64):
    d = torch.linspace(0, 1, depths)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        reach = torch.sigmoid(x[:, :1] + 0.5 * x[:, 1:2]) * 0.8 + 0.1
        surface = 1.0 + 0.3 * torch.tanh(x[:, 2:3] - x[:, 3:4])
        y = surface * torch.exp(-d / reach) + 0.02 * torch.randn(batch, depths, generator=gen)
        yield x, y


@scenario(
    family="cheese_wheel_brine_uptake_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="Adam (lr 3e-3) on an MSE profile regressor. A validation-style branch meant for the "
    "last partial batch of an epoch ran once at step 60 with reduction='sum' instead of 'mean' "
    "(128 x 64 elements): one gradient about 8000x the others enters Adam's second moment; "
    "after the first moment's share of it has knocked the loss up 10x, the typical update "
    "for the rest of the run (beta2 0.999) is over 10x smaller than before, and the loss "
    "creeps back only slowly, staying well above its level before step 60.",
)
def h149_cheese_brine_sum_reduction(ctx: Context) -> None:
    gen = seeded(14910)
    model = BrineUptakeNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    moves = []
    prev = {}

    def before(step):
        prev["w"] = model.fc2.weight.detach().clone()

    def after(step):
        moves.append(float((model.fc2.weight.detach() - prev["w"]).abs().median()))

    def scale_loss(step, loss):
        return loss * 128 * 64 if step == 60 else loss

    _train(
        ctx,
        model,
        opt,
        _brine(gen, 128),
        200,
        F.mse_loss,
        before=before,
        after=after,
        scale_loss=scale_loss,
    )
    g = ctx.grad_norms
    ctx.check("the gradient jumped 500x at step 60", g[60] > 500 * _mean(g[40:60]))
    ctx.check(
        "the median update is 10x smaller after", _mean(moves[110:150]) < 0.1 * _mean(moves[40:60])
    )
    ctx.check(
        "the loss stays above its level before step 60",
        _mean(ctx.losses[-10:]) > 2 * _mean(ctx.losses[50:60]),
    )


# -- geyser pools: a variance head with its softplus lost ---------------------------------------


class GeyserPoolNet(nn.Module):
    """Predicts a Gaussian (mean and variance) for the temperature a geyser's pool reaches ten
    minutes ahead from six readings (pool level, vent pressure, air temperature, ...)."""

    def __init__(self, inputs=6, hidden=32):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh())
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)
        nn.init.constant_(self.var.bias, 1.0)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.mean(h), self.var(h)], -1)


def _gaussian_nll(out, y):
    # the variance head's softplus/clamp went missing when the head was refactored
    mu, var = out[:, 0], out[:, 1]
    return (torch.log(torch.sqrt(var)) + (y - mu) ** 2 / (2 * var)).mean()


def _geyser(gen, batch, inputs=6):
    w = torch.tensor([0.9, -0.4, 0.3, 0.0, 0.5, -0.2])
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        noise = 0.05 + 0.1 * torch.sigmoid(2 * x[:, 3])
        yield x, torch.tanh(x @ w) + noise * torch.randn(batch, generator=gen)


@scenario(
    family="geyser_pool_temperature_nll",
    optimizer="Adam",
    cause="nonfinite",
    where=("var",),
    diverges=38,
    heldout=True,
    note="A Gaussian NLL regressor whose variance head lost its softplus in a refactor: the "
    "loss takes sqrt and log of the raw linear output. As Adam (lr 2e-3) fits the mean, the NLL "
    "pushes the variance down until it crosses zero for some pool readings, sqrt of a negative "
    "gives NaN at step 38.",
)
def h149_geyser_pool_variance_no_softplus(ctx: Context) -> None:
    gen = seeded(14911)
    model = GeyserPoolNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    low = []
    _train(
        ctx,
        model,
        opt,
        _geyser(gen, 64),
        200,
        _gaussian_nll,
        watch=lambda s, o, x, y: low.append(float(o[:, 1].detach().min())),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss went NaN", bad is not None)
    ctx.check("a variance went non-positive at that step", bad is not None and low[bad] <= 0)
    ctx.check("the loss was finite for 20 steps first", bad is not None and bad >= 20)


# -- aurora: a hand-written softplus that overflows under fp16 autocast --------------------------


class AuroraKpNet(nn.Module):
    """Forecasts the (positive) auroral Kp index three hours ahead from 16 solar-wind readings
    (speed, density, Bz, ...), trained under fp16 autocast with a GradScaler."""

    def __init__(self, inputs=16, hidden=64):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU())
        self.rate = nn.Linear(hidden, 1)

    def forward(self, x):
        z = self.rate(self.trunk(x))
        # a hand-written softplus: exp overflows float16 for z > ~11
        return torch.log(1 + torch.exp(z)).squeeze(-1)


def _solar_wind(gen, batch, inputs=16):
    """The Kp index in the provider's 'Kp x 10' units (0 to 90)."""
    w = torch.linspace(0.2, 1.0, inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        yield x, 10 * F.softplus(x @ w / 2)


@scenario(
    family="aurora_kp_index_forecaster",
    optimizer="SGD momentum",
    cause="amp_overflow",
    where=("rate",),
    diverges=95,
    heldout=True,
    onset=95,
    note="A Kp forecaster trained under fp16 autocast with a GradScaler (SGD momentum, lr 1e-4). "
    "Its positive output is a hand-written softplus, log(1 + exp(z)), computed on the float16 "
    "output of the last Linear: the targets are in the provider's 'Kp x 10' units (up to "
    "about 40 here), so z has to pass 11, where exp overflows float16 to inf (first at step "
    "95). From then on the loss is inf on almost every batch (every one with a storm "
    "reading), the GradScaler skips those steps and halves its scale each time, and training "
    "stops making progress.",
)
def h149_aurora_kp_fp16_softplus(ctx: Context) -> None:
    gen = seeded(14912)
    model = AuroraKpNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    zmax = []

    def watch(step, out, x, y):
        with torch.no_grad():
            zmax.append(float(model.rate(model.trunk(x)).max()))

    _train(ctx, model, opt, _solar_wind(gen, 64), 150, F.mse_loss, scaler=scaler, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss went inf", bad is not None)
    ctx.check("z passed 11 at that step", bad is not None and zmax[bad] > 11.0)
    ctx.check("the scale fell a millionfold", ctx.scales[-1] < 1e-6 * ctx.scales[0])
    ctx.check("the loss stayed non-finite", bad is not None and not _finite(ctx.losses[-10:]))


# -- controls -------------------------------------------------------------------------------------


class MorseBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class MorseKeyingNet(nn.Module):
    """Reads a hand-keyed letter as up to 8 (mark length, gap length) pairs and names it, with
    nn.MultiheadAttention blocks over the marks."""

    def __init__(self, letters=26, dim=32, heads=4, layers=2, length=8):
        super().__init__()
        self.embed = nn.Linear(2, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.blocks = nn.ModuleList(MorseBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, letters)

    def forward(self, x):
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h).mean(1))


def _morse(gen, batch, letters=26, length=8):
    table = torch.randint(0, 2, (letters, length), generator=torch.Generator().manual_seed(3))
    sizes = torch.randint(2, 6, (letters,), generator=torch.Generator().manual_seed(4))
    while True:
        y = torch.randint(0, letters, (batch,), generator=gen)
        dah = table[y].float()
        present = (torch.arange(length)[None] < sizes[y][:, None]).float()
        speed = 0.7 + 0.6 * torch.rand(batch, 1, generator=gen)
        mark = (
            present * speed * (1 + 2 * dah) * (1 + 0.15 * torch.randn(batch, length, generator=gen))
        )
        gap = present * speed * (1 + 0.15 * torch.randn(batch, length, generator=gen))
        yield torch.stack([mark, gap], -1), y


@scenario(
    family="morse_code_keying_transformer",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A two-block transformer over nn.MultiheadAttention trained as practitioners do: AdamW "
    "(lr 3e-3, weight decay 0.05 on matrices only), 20 warm-up steps then cosine decay, "
    "clipping at 1.0 and label smoothing 0.1.",
)
def h149_morse_keying_control(ctx: Context) -> None:
    gen = seeded(14913)
    model = MorseKeyingNet()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "pos"]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2 or n == "pos"]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 250
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    _train(
        ctx,
        model,
        opt,
        _morse(gen, 64),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell by half", _fell(ctx.losses, ratio=0.5))


class KalimbaOnsetNet(nn.Module):
    """Says which of 8 kalimba tines sound in a 128-sample pickup frame: 1-D convolutions with
    GroupNorm and a multi-label (BCE) head."""

    def __init__(self, tines=8, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 9, padding=4)
        self.norm1 = nn.GroupNorm(4, width)
        self.conv2 = nn.Conv1d(width, 2 * width, 9, padding=4, stride=2)
        self.norm2 = nn.GroupNorm(4, 2 * width)
        self.head = nn.Linear(2 * width, tines)

    def forward(self, x):
        h = F.silu(self.norm1(self.conv1(x)))
        h = F.silu(self.norm2(self.conv2(h)))
        return self.head(h.amax(-1))


def _kalimba(gen, batch, tines=8, length=128):
    t = torch.arange(length).float()
    freqs = torch.linspace(0.2, 1.6, tines)
    while True:
        y = (torch.rand(batch, tines, generator=gen) < 0.3).float()
        amp = y * (0.5 + torch.rand(batch, tines, generator=gen))
        wave = (amp[:, :, None] * torch.sin(freqs[None, :, None] * t)).sum(1)
        wave = wave * torch.exp(-t / 80) + 0.05 * torch.randn(batch, length, generator=gen)
        yield wave[:, None], y


@scenario(
    family="kalimba_tine_conv1d_groupnorm",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="A 1-D conv net with GroupNorm trained multi-label (BCE with logits) under fp16 autocast "
    "with a GradScaler, SGD with Nesterov momentum 0.9 and a OneCycleLR schedule up to 0.1.",
)
def h149_kalimba_fp16_control(ctx: Context) -> None:
    gen = seeded(14914)
    model = KalimbaOnsetNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _train(
        ctx,
        model,
        opt,
        _kalimba(gen, 32),
        steps,
        lambda o, y: F.binary_cross_entropy_with_logits(o.float(), y),
        sched=sched,
        scaler=scaler,
    )
    ctx.check("the loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("the scale never collapsed", min(ctx.scales) >= 2.0**6)


class SootRegressor(nn.Module):
    """Regresses the soot depth (mm) a chimney sweep will find from nine readings (fuel, burn
    hours, flue height, bends, draught, ...): a residual MLP."""

    def __init__(self, inputs=9, hidden=48):
        super().__init__()
        self.inp = nn.Linear(inputs, hidden)
        self.res1 = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.Mish())
        self.res2 = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.Mish())
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.res1(h)
        h = h + self.res2(h)
        return self.out(h).squeeze(-1)


def _soot(gen, batch, inputs=9):
    w = torch.linspace(0.5, -0.5, inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = F.softplus(x @ w) + 0.5 * torch.sin(2 * x[:, 4])
        noisy = torch.rand(batch, generator=gen) < 0.05  # a few mis-logged sweeps
        y = (
            y
            + noisy * 3 * torch.randn(batch, generator=gen)
            + 0.1 * torch.randn(batch, generator=gen)
        )
        yield x, y


@scenario(
    family="chimney_sweep_soot_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A residual MLP with LayerNorm trained with RAdam (lr 3e-3, decoupled weight decay on "
    "matrices only), Huber loss against a few mis-logged targets, two micro-batches "
    "accumulated per step, clipping at 5 and ReduceLROnPlateau on the training loss.",
)
def h149_chimney_sweep_control(ctx: Context) -> None:
    gen = seeded(14915)
    model = SootRegressor()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 1e-3}, {"params": rest, "weight_decay": 0.0}],
        lr=3e-3,
        decoupled_weight_decay=True,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _soot(gen, 32),
        200,
        F.huber_loss,
        accumulate=2,
        clip=5.0,
        sched=sched,
    )
    ctx.check("the loss fell by half", _fell(ctx.losses, ratio=0.5))


class LastAttention(nn.Module):
    """Single-head attention with the softmax over q.k / sqrt(d) written by hand."""

    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.dim = dim

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / math.sqrt(self.dim)
        e = torch.exp(scores - scores.amax(-1, keepdim=True))
        return self.o((e / e.sum(-1, keepdim=True)) @ self.v(x))


class ShoeLastNet(nn.Module):
    """A cordwainer's last sizer: reads 16 foot-scan points (x, y, height) and predicts a Gaussian
    over the last length, with a hand-softmax attention block."""

    def __init__(self, dim=32):
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = LastAttention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(h.mean(1))


def _feet(gen, batch, points=16):
    while True:
        size = torch.rand(batch, 1, generator=gen)
        width = 0.3 + 0.2 * torch.rand(batch, 1, generator=gen)
        u = torch.rand(batch, points, generator=gen)
        pts = torch.stack(
            [
                u * (0.8 + size),
                width * torch.sin(3.14 * u),
                0.2 * torch.rand(batch, points, generator=gen),
            ],
            -1,
        )
        yield pts + 0.01 * torch.randn(pts.shape, generator=gen), 2 * size.squeeze(-1) - 1


def _normal_nll(out, y):
    mu, var = out[:, 0], F.softplus(out[:, 1]) + 1e-4
    return F.gaussian_nll_loss(mu, y, var)


@scenario(
    family="cordwainer_shoe_last_transformer",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="A one-block transformer with a hand softmax over q.k / sqrt(d) trained with a "
    "Gaussian NLL (softplus variance with a floor), Adamax (lr 2e-3) and a linear warm-up over "
    "15 steps.",
)
def h149_cordwainer_last_control(ctx: Context) -> None:
    gen = seeded(14916)
    model = ShoeLastNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 15))
    _train(ctx, model, opt, _feet(gen, 32), 200, _normal_nll, sched=sched)
    ls = ctx.losses
    ctx.check("the NLL fell by 1 nat", _finite(ls) and _mean(ls[-10:]) < _mean(ls[:10]) - 1.0)
