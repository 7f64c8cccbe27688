"""Held-out set 155 (``h155_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a pre-LN transformer with learned absolute positions and a
hand softmax over q.k^T under a causal mask, a transformer through ``nn.MultiheadAttention`` and
one through ``scaled_dot_product_attention`` (fp16 autocast + GradScaler), a 2-D conv net with
BatchNorm on generated images, a variational autoencoder, a tanh RNN, an attention pooler under
fp16 autocast, and MLP classifiers and regressors (one with two param groups and a LambdaLR).

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
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``scale_loss(step,
    out, y, loss)`` gives the loss that is back-propagated."""
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
            back = loss if scale_loss is None else scale_loss(step, out.float(), y, loss)
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
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


def _features(gen, batch, dim, weights, noise=0.05, bias=0.0):
    """Endless (x, y) batches of a smooth regression: y = tanh(x @ w1) @ w2 + noise."""
    w1, w2 = weights
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + bias + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _teacher(gen, dim, hidden=8):
    return (
        torch.randn(dim, hidden, generator=gen) / math.sqrt(dim),
        torch.randn(hidden, 1, generator=gen) / math.sqrt(hidden),
    )


# -- balalaika tremolo: a hand softmax over q.k^T that lost its 1/sqrt(d) ----------------------


class TremoloAttention(nn.Module):
    """Causal self-attention by hand: softmax over masked q.k^T times ``scale``; records the
    largest |logit| it used."""

    def __init__(self, dim, heads, scale):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scale = scale
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            m(x).reshape(b, t, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        scores = (q @ k.transpose(-1, -2)) * self.scale
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        with torch.no_grad():
            self.last_max = float(scores.masked_fill(mask, 0.0).abs().amax())
        att = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, d))


class TremoloBlock(nn.Module):
    def __init__(self, dim, heads, scale):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = TremoloAttention(dim, heads, scale)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TremoloLM(nn.Module):
    """Predicts the next pick (string x fret token) of a balalaika tremolo passage: token and
    learned absolute position embeddings, pre-LN blocks, a final LayerNorm and a head."""

    def __init__(self, vocab=24, dim=32, heads=2, layers=2, context=24, scale=None):
        super().__init__()
        hd = dim // heads
        scale = 1.0 / math.sqrt(hd) if scale is None else scale
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(TremoloBlock(dim, heads, scale) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


def _tremolo(gen, batch, vocab=24, length=24):
    """Tremolo passages: each passage repeats a 3- or 4-pick figure, shifted up the neck."""
    while True:
        period = torch.randint(3, 5, (batch, 1), generator=gen)
        figure = torch.randint(0, vocab, (batch, 4), generator=gen)
        pos = torch.arange(length + 1)[None, :] % period
        seq = (figure.gather(1, pos) + torch.arange(length + 1)[None, :] // 8) % vocab
        yield seq[:, :-1], seq[:, 1:]


def _lm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    family="balalaika_tremolo_transformer",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A two-block pre-LN causal transformer with learned absolute position embeddings and a "
    "hand-written softmax over q.k^T under a causal mask. The attention was copied from a "
    "version with QK-LayerNorm that folded 1/sqrt(head_dim) into the norm; the norm was "
    "dropped and the scale left at 1.0. Adam at lr 3e-2 with no weight decay: the q.k logits "
    "the softmax sees grow more than 10x.",
)
def h155_balalaika_tremolo_unscaled_qk(ctx: Context) -> None:
    gen = seeded(15501)
    model = TremoloLM(scale=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _tremolo(gen, 32),
        200,
        _lm_loss,
        watch=lambda s, o, x, y: seen.append(
            max(b.attn.last_max for b in model.blocks)  # type: ignore[attr-defined]
        ),
    )
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 30", seen[-1] > 30)


# -- orienteering control feature: NLL on raw logits (the LogSoftmax went with the old head) -----


class ControlFeatureNet(nn.Module):
    """Names the kind of control feature (boulder, re-entrant, knoll, marsh, path junction,
    ruined wall) from 20 map-symbol and contour readings around the control circle."""

    def __init__(self, inputs=20, hidden=48, classes=6):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act(self.body(x)))


def _controls(gen, batch, inputs=20, classes=6):
    centres = torch.randn(classes, inputs, generator=torch.Generator().manual_seed(155))
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + 0.8 * torch.randn(batch, inputs, generator=gen), y


@scenario(
    family="orienteering_control_classifier",
    optimizer="Adagrad",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="The old model ended in nn.LogSoftmax and was trained with F.nll_loss; the head was "
    "replaced by a plain nn.Linear and the loss left as F.nll_loss on the raw logits, i.e. "
    "minus the target logit with no normaliser: the loss has no minimum and Adagrad at lr 0.05 "
    "pushes the head's logits up without bound (more than 20x).",
)
def h155_orienteering_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(15502)
    model = ControlFeatureNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _controls(gen, 64),
        200,
        F.nll_loss,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(float(o.detach().abs().max())),
    )
    ctx.check("head logits grew 20x", seen[-1] > 20 * _mean(seen[:5]))
    ctx.check("loss went below zero (no minimum)", ctx.losses[-1] < -1.0)
    ctx.check("run stayed finite", _finite(ctx.losses))


# -- saddler stitch grade: the distillation temperature used in the student's own loss ---------


class StitchGradeNet(nn.Module):
    """Grades saddle-stitch regularity (ten grades) from an 8x8 scan of a stitch line (the
    scikit-learn digits stand in for the scans)."""

    def __init__(self, temperature):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act = nn.ReLU()
        self.head = nn.Linear(64, 10)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act(self.fc1(x))) / self.temperature


@scenario(
    family="saddler_stitch_grade_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="The config's 'temperature: 0.001' belonged to the distillation teacher's soft targets; "
    "the student's forward divides its own logits by it too. NAdam at lr 1e-3: the float32 "
    "softmax rounds the target probability to exactly 1.0 on most rows.",
)
def h155_saddler_distill_temperature(ctx: Context) -> None:
    gen = seeded(15503)
    model = StitchGradeNet(temperature=0.001)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    seen = []
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("over half the rows collapsed to p=1.0", _mean(seen[-10:]) > 0.5)
    ctx.check("collapse grew from the start", _mean(seen[-10:]) > _mean(seen[:5]) + 0.3)


# -- chandler wick burn: a warm-up LambdaLR written with max instead of min --------------------


class WickBurnNet(nn.Module):
    """Predicts a candle's burn rate (g/h) from 12 wick, wax-blend and pour readings."""

    def __init__(self, inputs=12, hidden=32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.body(x))


def _top_eigenvalue(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
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


@scenario(
    family="chandler_wick_burn_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=10,
    heldout=True,
    note="Plain SGD with two param groups (body with weight decay, head without) under a "
    "LambdaLR warm-up meant as min(1, step/10); it was typed max(1, step/10), so after the "
    "warm-up the learning rate keeps rising linearly and passes 2/sharpness: the loss "
    "oscillates and blows up.",
)
def h155_chandler_warmup_max_typo(ctx: Context) -> None:
    gen = seeded(15504)
    model = WickBurnNet()
    base = 0.05
    opt = torch.optim.SGD(
        [
            {"params": model.body.parameters(), "weight_decay": 1e-4},
            {"params": model.head.parameters(), "weight_decay": 0.0},
        ],
        lr=base,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(1.0, s / 10))
    batches = _features(gen, 64, 12, _teacher(gen, 12), bias=0.5)
    px, py = next(batches)
    sharp = []
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step == 10:
            sharp.append(_top_eigenvalue(model, F.mse_loss, px, py))

    _train(ctx, model, opt, batches, 300, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(ls[:60])
    bad = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("loss fell before the lr passed its base", low < 0.5 * ls[0])
    ctx.check("loss blew up 100x after the onset", bad is not None and bad > 10)
    ctx.check(
        "lr at the blow-up above 2/sharpness at the onset",
        bad is not None and lrs[bad] > 2.0 / max(sharp[0], 1e-9),
    )


# -- sand dune migration: an IRNN whose identity init got scale 1.25 ---------------------------


class DuneRNN(nn.Module):
    """Forecasts a barchan dune's crest displacement from 40 daily wind-speed and -direction
    readings with a tanh RNN."""

    def __init__(self, inputs=3, hidden=32, gain=1.0):
        super().__init__()
        self.rnn = nn.RNN(inputs, hidden, nonlinearity="tanh", batch_first=True)
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _winds(gen, batch, length=40):
    while True:
        speed = torch.rand(batch, length, 1, generator=gen)
        angle = 2 * math.pi * torch.rand(batch, length, 1, generator=gen)
        x = torch.cat([speed, torch.cos(angle), torch.sin(angle)], -1)
        y = (speed.pow(3) * torch.cos(angle)).mean(1)
        yield x, y


@scenario(
    family="sand_dune_migration_rnn",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="A tanh RNN over 40 daily wind readings whose recurrent weights were initialised with "
    "nn.init.orthogonal_(gain=3.0): the config's 'init_gain: 3' was meant for the input "
    "projection. The recurrence is chaotic; the gradient grows more than 1000x back through "
    "time and the first steps' gradient norms are more than 100x the later ones under "
    "SGD with momentum at lr 1e-3.",
)
def h155_dune_rnn_orthogonal_gain(ctx: Context) -> None:
    gen = seeded(15505)
    model = DuneRNN(gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    # the gradient's growth back through time, on one batch at the start
    x0, y0 = next(_winds(torch.Generator().manual_seed(15555), 32))
    x0.requires_grad_(True)
    F.mse_loss(model(x0), y0).backward()
    g = x0.grad.norm(dim=(0, 2))
    ratio = float(g[0] / g[-1])
    model.zero_grad(set_to_none=True)
    _train(ctx, model, opt, _winds(gen, 32), 150, F.mse_loss)
    gn = ctx.grad_norms
    ctx.check("gradient grew 1000x back through time", ratio > 1000)
    ctx.check("first step's gradient 100x the late median", gn[0] > 100 * _median(gn[100:]))


# -- cricket bowling length: a TF RMSprop recipe without its eps=1.0 ---------------------------


class BowlingLengthNet(nn.Module):
    """Predicts where a delivery pitches (metres from the stumps) from 16 run-up, release and
    seam readings."""

    def __init__(self, inputs=16, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(hidden, 1)
        self.h2 = None

    def forward(self, x):
        h = self.act1(self.fc1(x))
        self.h2 = self.act2(self.fc2(h))
        return self.out(self.h2)


@scenario(
    family="cricket_bowling_length_mlp",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A TensorFlow recipe's RMSprop(lr=1e-2, epsilon=1.0) was ported as "
    "torch.optim.RMSprop(lr=1e-2) with PyTorch's eps=1e-8: the steps are about 100x larger "
    "than the recipe's, and most of the second hidden layer's ReLUs die and stop learning.",
)
def h155_cricket_rmsprop_eps(ctx: Context) -> None:
    gen = seeded(15506)
    model = BowlingLengthNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    dead = []
    _train(
        ctx,
        model,
        opt,
        _features(gen, 64, 16, _teacher(gen, 16), bias=2.0),
        200,
        F.mse_loss,
        watch=lambda s, o, x, y: dead.append(dead_fraction(model.h2.detach())),
    )
    ctx.check("few dead units at the start", dead[0] < 0.2)
    ctx.check("over half the units dead at the end", _mean(dead[-10:]) > 0.5)


# -- cooperage stave bend: the backbone lr key missing from the config --------------------------


class StaveBendNet(nn.Module):
    """Predicts the steam time (min) a white-oak stave needs before bending from 10 grain,
    moisture and thickness readings."""

    def __init__(self, inputs=10, hidden=32):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


@scenario(
    family="cooperage_stave_bend_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("encoder.0", "encoder.2"),
    diverges=None,
    heldout=True,
    note="Adam with two param groups, the encoder's lr read as cfg.get('backbone_lr', 0.0); the "
    "config spells it 'encoder_lr', so the encoder trains at lr 0 and never moves while the "
    "head trains at 3e-3. The loss falls a little and plateaus.",
)
def h155_cooperage_missing_backbone_lr(ctx: Context) -> None:
    gen = seeded(15507)
    model = StaveBendNet()
    cfg = {"encoder_lr": 1e-3, "head_lr": 3e-3}
    opt = torch.optim.Adam(
        [
            {"params": model.encoder.parameters(), "lr": cfg.get("backbone_lr", 0.0)},
            {"params": model.head.parameters(), "lr": cfg["head_lr"]},
        ]
    )
    w0 = [p.detach().clone() for p in model.encoder.parameters()]
    h0 = model.head.weight.detach().clone()
    _train(ctx, model, opt, _features(gen, 64, 10, _teacher(gen, 10)), 150, F.mse_loss)
    moved = max(
        float((p - q).norm() / q.norm())
        for p, q in zip(model.encoder.parameters(), w0, strict=True)
    )
    ctx.check("encoder never moved", moved < 1e-7)
    ctx.check("head moved", float((model.head.weight - h0).norm() / h0.norm()) > 0.05)
    ctx.check("run stayed finite", _finite(ctx.losses))


# -- hurdy-gurdy wheel pitch: a loss scale of 2**16 not undone on one step ----------------------


class WheelPitchNet(nn.Module):
    """Predicts the drone's pitch drift (cents) from 14 wheel-speed, rosin and string readings."""

    def __init__(self, inputs=14, hidden=48):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.net(x))


@scenario(
    family="hurdy_gurdy_wheel_pitch_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=40,
    heldout=True,
    note="A hand-rolled mixed-precision path multiplies the loss by a static scale of 2**16 and "
    "divides the gradients back only when cfg.fp16 is set; at step 40 the run was switched to "
    "fp32 mid-flight and that one step's gradient went into Adam (beta2 0.999) unscaled. The "
    "second moment is filled and the updates afterwards stall more than 30x.",
)
def h155_hurdy_gurdy_unscaled_step(ctx: Context) -> None:
    gen = seeded(15508)
    model = WheelPitchNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    steps = []
    prev = [None]

    def before(step):
        cur = torch.cat([p.detach().flatten() for p in model.parameters()])
        if prev[0] is not None:
            steps.append(float((cur - prev[0]).norm()))
        prev[0] = cur

    def scale_loss(step, out, y, loss):
        return loss * 2.0**16 if step == 40 else loss

    _train(
        ctx,
        model,
        opt,
        _features(gen, 64, 14, _teacher(gen, 14), bias=1.0),
        160,
        F.mse_loss,
        before=before,
        scale_loss=scale_loss,
    )
    g = ctx.grad_norms
    ctx.check("gradient at step 40 is 1000x the median", g[40] > 1000 * _median(g[:40]))
    # steps[i] is the update made at step i
    ctx.check(
        "updates after the spike stall 30x",
        _mean(steps[60:150]) < _mean(steps[10:40]) / 30,
    )


# -- salt marsh tide level: one gauge shard logged in millimetres ------------------------------


class MarshLevelNet(nn.Module):
    """Predicts the water level over a salt-marsh platform (m) from 12 tide, surge and wind
    readings."""

    def __init__(self, inputs=12, hidden=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.net(x))


@scenario(
    family="salt_marsh_tide_level_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=70,
    heldout=True,
    note="Plain SGD at lr 0.05 with gradient clipping at 1.0. One gauge's shard (the batch at "
    "step 70) logged its levels in millimetres instead of metres: the loss spikes by orders of "
    "magnitude on that batch and the run recovers.",
)
def h155_salt_marsh_mm_shard(ctx: Context) -> None:
    gen = seeded(15509)
    model = MarshLevelNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []

    def alter(step, x, y):
        y = y * 1000.0 if step == 70 else y
        seen.append(float(y.abs().mean()))
        return x, y

    _train(
        ctx,
        model,
        opt,
        _features(gen, 64, 12, _teacher(gen, 12), bias=0.8),
        150,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("the bad batch's targets are 1000x the others", seen[70] > 500 * _median(seen[:70]))
    ctx.check("loss spiked 1000x at step 70", ls[70] > 1000 * _median(ls[50:70]))
    ctx.check("run recovered", _finite(ls) and _mean(ls[-10:]) < 3 * _mean(ls[55:70]))


# -- discus spin release: a per-sample loss summed, not averaged, on one accumulation step ------


class DiscusReleaseNet(nn.Module):
    """Predicts the throw distance (m) from 18 spin, release-angle and wind readings."""

    def __init__(self, inputs=18, hidden=48):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.net(x))


@scenario(
    family="discus_spin_release_regressor",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="Huber loss with reduction='none', gradient accumulation over 4 micro-batches of 64, "
    "SGD with momentum at lr 0.01. The code path for the epoch's last step (step 90) calls "
    ".sum() on the per-sample losses instead of .mean(): that step's gradient is 64x the "
    "others, with nothing wrong in the data.",
)
def h155_discus_sum_not_mean(ctx: Context) -> None:
    gen = seeded(15510)
    model = DiscusReleaseNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def scale_loss(step, out, y, loss):
        per = F.huber_loss(out, y, reduction="none")
        return per.sum() / 4 if step == 90 else per.mean() / 4

    _train(
        ctx,
        model,
        opt,
        _features(gen, 64, 18, _teacher(gen, 18), bias=1.5, noise=0.1),
        160,
        F.huber_loss,
        accumulate=4,
        scale_loss=scale_loss,
    )
    g = ctx.grad_norms
    ctx.check("gradient at step 90 is 30x the median", g[90] > 30 * _median(g[60:90]))
    ctx.check("only that step spiked", max(g[91:]) < 10 * _median(g[60:90]))


# -- shoaling wave celerity: sqrt of a predicted depth without its clamp -----------------------


class Celerity(nn.Module):
    """Shallow-water wave speed c = sqrt(g h) from a predicted depth h (m)."""

    def forward(self, depth):
        return torch.sqrt(9.81 * depth)


class ShoalingNet(nn.Module):
    """Predicts the speed of a shoaling wave (m/s) from 10 bathymetry and swell readings,
    through a predicted local depth."""

    def __init__(self, inputs=10, hidden=32):
        super().__init__()
        self.depth = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        with torch.no_grad():
            self.depth[2].bias.fill_(2.0)
        self.celerity = Celerity()
        self.last_depth = None

    def forward(self, x):
        h = self.depth(x)
        self.last_depth = h.detach()
        return self.celerity(h)


def _shoaling(gen, batch, swash_from, inputs=10):
    w = torch.randn(inputs, generator=torch.Generator().manual_seed(1555)) / math.sqrt(inputs)
    step = 0
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        depth = 2.0 + 0.8 * torch.tanh(x @ w)
        if step >= swash_from:  # the swash-zone readings join the curriculum
            x[: batch // 4, 0] = -3.0  # the shoreline-distance reading of the swash zone
            depth[: batch // 4] = 0.02 * torch.rand(batch // 4, generator=gen)
        step += 1
        yield x, torch.sqrt(9.81 * depth)[:, None]


@scenario(
    family="shoaling_wave_celerity_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("celerity",),
    diverges=95,
    onset=60,
    heldout=True,
    note="The physics layer computes c = sqrt(g h) from a predicted depth with no softplus or "
    "clamp on h. From step 60 the curriculum adds swash-zone readings (depth near 0); Adamax "
    "at lr 2e-2 pushes some predicted depths below zero and sqrt gives NaN.",
)
def h155_shoaling_sqrt_negative_depth(ctx: Context) -> None:
    gen = seeded(15511)
    model = ShoalingNet()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    neg = []
    _train(
        ctx,
        model,
        opt,
        _shoaling(gen, 64, 60),
        150,
        F.mse_loss,
        watch=lambda s, o, x, y: neg.append(float(model.last_depth.min())),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss NaN after the onset", bad is not None and bad >= 60)
    ctx.check("a predicted depth was negative there", bad is not None and neg[bad] < 0)
    ctx.check("finite before the onset", _finite(ctx.losses[:60]))


# -- tabla bol pooler: a hand softmax pooling without its max subtraction under fp16 ------------


class StrikePool(nn.Module):
    """Attention pooling over frames by hand: exp(score) / sum exp(score), no max subtracted."""

    def __init__(self, dim):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.last_max = 0.0

    def forward(self, h):
        s = self.score(h)
        self.last_max = float(s.detach().float().max())
        w = torch.exp(s)
        w = w / w.sum(1, keepdim=True)
        return (w * h).sum(1)


class TablaBolNet(nn.Module):
    """Names the bol (na, tin, ge, ka, dha, tirakita) from 48 frames of a 16-band onset
    envelope; one frame holds the strike."""

    def __init__(self, bands=16, dim=32, bols=6):
        super().__init__()
        self.frame = nn.Sequential(nn.Linear(bands, dim), nn.GELU(), nn.Linear(dim, dim))
        self.pool = StrikePool(dim)
        self.head = nn.Linear(dim, bols)

    def forward(self, x):
        return self.head(self.pool(self.frame(x)))


def _tabla(gen, batch, frames=48, bands=16, bols=6):
    shapes = torch.randn(bols, bands, generator=torch.Generator().manual_seed(15512))
    while True:
        y = torch.randint(0, bols, (batch,), generator=gen)
        x = 0.3 * torch.randn(batch, frames, bands, generator=gen)
        at = torch.randint(0, frames, (batch,), generator=gen)
        x[torch.arange(batch), at] += 3.0 * shapes[y]
        yield x, y


@scenario(
    family="tabla_bol_attention_pooler",
    optimizer="Adam",
    cause="amp_overflow",
    where=("pool",),
    diverges=28,
    heldout=True,
    note="fp16 autocast with a GradScaler, Adam at lr 3e-3. The attention pooling over frames "
    "is a hand softmax, exp(score) / sum(exp(score)), without subtracting the max; the scores "
    "run in fp16 and, as the pool learns to focus on the strike frame, exp overflows "
    "65504 (score above 11): inf/inf gives NaN, the scaler skips step after step and its scale "
    "collapses.",
)
def h155_tabla_fp16_exp_pool(ctx: Context) -> None:
    gen = seeded(15512)
    model = TablaBolNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _tabla(gen, 32),
        150,
        F.cross_entropy,
        classifier=True,
        scaler=scaler,
        watch=lambda s, o, x, y: seen.append(model.pool.last_max),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss went non-finite at step 28", bad == 28)
    ctx.check("a pooling score passed fp16 exp's limit (11.09)", max(seen) > 11.09)
    ctx.check("the scaler cut its scale at the overflow", ctx.scales[-1] < max(ctx.scales))


# == healthy controls ==========================================================================


# -- hailstone shape: 2-D conv with BatchNorm on generated images, CosineAnnealingLR ------------


class HailstoneNet(nn.Module):
    """Classifies a hailstone's silhouette (sphere, cone, lobed, layered ring) from a 12x12
    disdrometer image."""

    def __init__(self, width=8, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * 9, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


def _hail(gen, batch, size=12):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        cx = 4 + 4 * torch.rand(batch, 1, 1, generator=gen)
        cy = 4 + 4 * torch.rand(batch, 1, 1, generator=gen)
        r = torch.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        ang = torch.atan2(yy - cy, xx - cx)
        sphere = (r < 3.0).float()
        cone = ((r < 3.5) & ((yy - cy) > -(r * 0.5))).float() * (yy > cy - 1).float()
        lobed = (r < 2.5 + 1.0 * torch.cos(4 * ang)).float()
        ring = ((r > 1.5) & (r < 3.5)).float()
        imgs = torch.stack([sphere, cone, lobed, ring], 1)
        x = imgs[torch.arange(batch), y]
        x = x + 0.3 * torch.randn(batch, size, size, generator=gen)
        yield x[:, None], y


@scenario(
    family="hailstone_shape_bn_convnet",
    optimizer="SGD (nesterov)",
    cause="healthy",
    heldout=True,
    note="Healthy control: a 2-D conv net with BatchNorm on generated 12x12 silhouettes, SGD "
    "Nesterov (lr 0.05, momentum 0.9, weight decay 5e-4), CosineAnnealingLR over the run, "
    "label smoothing 0.1.",
)
def h155_hailstone_bn_cosine(ctx: Context) -> None:
    gen = seeded(15513)
    model = HailstoneNet()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150)
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(1) == y).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _hail(gen, 64),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        watch=watch,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("accuracy above 0.8 at the end", _mean(acc[-10:]) > 0.8)


# -- snowflake crystal VAE: reconstruction + KL with a KL warm-up ------------------------------


class SnowflakeVAE(nn.Module):
    """Encodes a snowflake's 36-point radial arm profile into 4 latent habits and back."""

    def __init__(self, points=36, hidden=48, latent=4):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(points, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, points))
        self.kl = torch.tensor(0.0)

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        self.kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), 1))
        return self.dec(z)


def _snowflakes(gen, batch, points=36):
    t = torch.linspace(0, 1, points)
    while True:
        a = torch.rand(batch, 4, 1, generator=gen)
        x = (
            a[:, 0] * t
            + 0.5 * a[:, 1] * torch.sin(6 * math.pi * t * (1 + a[:, 2]))
            + 0.3 * a[:, 3] * (t > 0.5).float()
        )
        x = x + 0.02 * torch.randn(batch, points, generator=gen)
        yield x, x


@scenario(
    family="snowflake_crystal_vae",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Healthy control: a VAE (MSE reconstruction + KL with a linear KL warm-up over 50 "
    "steps), Adam at lr 2e-3, gradient clipping at 5.0.",
)
def h155_snowflake_vae_kl_warmup(ctx: Context) -> None:
    gen = seeded(15514)
    model = SnowflakeVAE()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def scale_loss(step, out, y, loss):
        return loss + min(1.0, step / 50) * 0.01 * model.kl

    _train(
        ctx,
        model,
        opt,
        _snowflakes(gen, 64),
        200,
        lambda o, y: F.mse_loss(o, y, reduction="none").sum(1).mean(),
        clip=5.0,
        scale_loss=scale_loss,
    )
    ctx.check("reconstruction loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("KL finite", math.isfinite(float(model.kl)))


# -- lute fingering: nn.MultiheadAttention encoder, AdamW param groups, OneCycleLR -------------


class LuteFingeringNet(nn.Module):
    """Names the left-hand position (first to fifth) from a 16-note course-and-fret tablature
    phrase: token + learned position embeddings, one post-LN encoder block through
    nn.MultiheadAttention, mean pooling."""

    def __init__(self, vocab=40, dim=32, heads=4, length=16, positions=5):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.ln2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, positions)

    def forward(self, x):
        h = self.tok(x) + self.pos
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.ln1(h + a)
        h = self.ln2(h + self.ff(h))
        return self.head(h.mean(1))


def _tablature(gen, batch, length=16, vocab=40, positions=5):
    while True:
        y = torch.randint(0, positions, (batch,), generator=gen)
        frets = 1 + 2 * y[:, None] + torch.randint(0, 4, (batch, length), generator=gen)
        course = torch.randint(0, 3, (batch, length), generator=gen)
        yield (frets + 13 * course) % vocab, y


@scenario(
    family="lute_fingering_mha_transformer",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Healthy control: an encoder block through nn.MultiheadAttention, AdamW with two param "
    "groups (weight decay 0.05 on matrices, none on biases, norms and embeddings), OneCycleLR "
    "(max lr 3e-3), gradient clipping at 1.0, label smoothing 0.05.",
)
def h155_lute_mha_onecycle(ctx: Context) -> None:
    gen = seeded(15515)
    model = LuteFingeringNet()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "tok" not in n]
    keep = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "tok" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": keep, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=150)
    _train(
        ctx,
        model,
        opt,
        _tablature(gen, 64),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))


# -- rowing cox calls: SDPA causal LM, fp16 autocast + GradScaler, RAdam, ReduceLROnPlateau -----


class CoxBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 3 * dim), nn.GELU(), nn.Linear(3 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class CoxCallLM(nn.Module):
    """Predicts the next stroke-rate call of a cox's race plan (tokens for rates 18-48)."""

    def __init__(self, vocab=32, dim=32, heads=2, context=24):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.block = CoxBlock(dim, heads)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.ln_f(self.block(h)))


def _race_plans(gen, batch, vocab=32, length=24):
    """Rate calls: a start burst, a settle, then a steady build by a per-race step."""
    while True:
        start = torch.randint(18, vocab, (batch, 1), generator=gen)
        inc = torch.randint(1, 3, (batch, 1), generator=gen)
        t = torch.arange(length + 1)[None, :]
        seq = (start - 10 + (t // 3) * inc) % vocab
        seq[:, :3] = start
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="rowing_cox_call_sdpa_transformer",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Healthy control: a pre-LN causal block through scaled_dot_product_attention, fp16 "
    "autocast with a GradScaler, gradient accumulation over 2 micro-batches, RAdam at lr 3e-3 "
    "with ReduceLROnPlateau, clipping at 1.0.",
)
def h155_cox_sdpa_fp16_radam(ctx: Context) -> None:
    gen = seeded(15516)
    model = CoxCallLM()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _train(
        ctx,
        model,
        opt,
        _race_plans(gen, 32),
        150,
        _lm_loss,
        scaler=scaler,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("scale stayed finite", all(math.isfinite(s) and s > 0 for s in ctx.scales))
