"""Held-out set 333 (``h333_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a lampwork bead mandrel-sag SiLU regressor whose linear
warm-up target lr is typed 0.9 for 0.09 (past 2/sharpness), a hurling sliotar puck-distance
Huber regressor whose accumulation divisor is typed ``loss * accum`` for one step after a resume
(one gradient burst), a kendo valid-strike classifier whose margin term lost its relu hinge (head
logits grow without bound), a ball-lightning lifetime
net whose hand-written softmax pooling takes exp without the max under fp16 autocast (overflow),
a carillon baton-rebound Elman RNN whose recurrent init gain is typed 2.5 for 0.25 (gradients grow
through time), a mbira tine strided Conv1d classifier fed one shard of raw int16 PCM counts (one
corrupted batch), a dune-avalanche runout regressor taking sqrt of an unclamped head (NaN), a
coracle hide-seam leak NAdam regressor whose trunk group lr is typed 1e-7 (frozen trunk), a
sepak-takraw spike ReLU classifier under an RMSprop lr typed 1e-1 for 1e-3 (ReLUs die), a bonsai
wiring-style classifier whose temperature is typed 0.002 (softmax saturates), and three controls
(a cyr-wheel spin regressor with SGD Nesterov and warm restarts; a bossaball serve-zone
classifier with AdamW, OneCycleLR, label smoothing and clipping; a noctilucent-cloud brightness
regressor with a Gaussian NLL and RAdam under fp16 autocast with a GradScaler and
accumulation).

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
    watch=None,
    backprop=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` gives the loss
    actually backpropagated (per micro-batch, before the accumulation divide). Stops after a
    non-finite loss once ``ctx.step`` has seen it; returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss / accumulate
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
            sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05, offset=0.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, offset + y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
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


# -- lampwork: a bead mandrel-sag regressor whose warm-up target lr is typed 0.9 for 0.09 ---------


@scenario(
    family="lampwork_bead_mandrel_sag_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting how far a lampworked glass bead sags on its mandrel from ten standardised torch readings (flame temperature, rotation rate, gather size), plain SGD without momentum, MSE, batch 128, a LambdaLR linear warm-up over 120 steps, 240 steps planned. The warm-up's target lr is meant to be 0.09 and is typed 0.9: the first steps train normally, but as the warm-up ramps the lr passes 2/sharpness (the top Hessian eigenvalue, measured by power iteration along the run) and the loss oscillates and overflows.",
)
def h333_lampwork_warmup_target_typo(ctx: Context) -> None:
    gen = seeded(33301)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 120))
    batches = _readings(gen, 128, 10, 3331)
    probe = next(batches)
    log = []

    def before(step):
        if step % 5 == 0 and _finite(ctx.losses) and (not ctx.losses or ctx.losses[-1] < 10):
            lam = _sharpness(model, F.mse_loss, probe[0], probe[1])
            log.append((step, opt.param_groups[0]["lr"], lam))

    _loop(ctx, model, opt, batches, 240, F.mse_loss, before=before, sched=sched)
    bad = _first_bad(ctx.losses)
    low = min(ctx.losses[: bad or len(ctx.losses)])
    peak = max((v for v in ctx.losses if math.isfinite(v)), default=0.0)
    ctx.check(
        "the loss blows up (NaN/inf or over 100x its lowest value)",
        bad is not None or peak > 100 * low,
    )
    below = [s for s, lr, lam in log if lam > 0 and lr < 2.0 / lam]
    above = [s for s, lr, lam in log if lam > 0 and lr > 2.0 / lam]
    ctx.check(
        "the lr is under 2/sharpness early and over it before the blow-up",
        bool(below) and bool(above) and min(below) < min(above),
    )
    ctx.check(
        "the loss first fell while the lr was small", min(ctx.losses[:40]) < 0.8 * ctx.losses[0]
    )


# -- hurling: accumulation divisor typed loss * accum for one step after a resume -----------------

ONSET_HU = 140


@scenario(
    family="hurling_sliotar_puck_distance_accum_huber_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_HU,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting how far a hurler's puck-out carries from twelve standardised readings (swing speed, sliotar weight, wind), SGD with momentum 0.9 at 0.01, Huber loss, gradient accumulation over 8 micro-batches of 32, 240 steps. The resume path after the checkpoint at step 140 rebuilds the micro-batch loss as loss * accum_steps instead of loss / accum_steps for its first optimizer step: that one step's gradient is 64x the usual (the batch itself is ordinary, the Huber loss bounds every sample), the weights jump, and the run recovers on the following steps.",
)
def h333_hurling_accum_divisor_resume(ctx: Context) -> None:
    gen = seeded(33302)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    accum = 8

    def backprop(step, loss):
        return loss * accum if step == ONSET_HU else loss / accum

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 3332, noise=0.1),
        240,
        F.huber_loss,
        backprop=backprop,
        accumulate=accum,
    )
    g = ctx.grad_norms
    before = _median(g[ONSET_HU - 30 : ONSET_HU])
    ctx.check(
        "the gradient at the onset is over 30x the median of the 30 before",
        g[ONSET_HU] > 30 * before,
    )
    ctx.check("the losses are finite", _finite(ctx.losses))
    ctx.check(
        "the loss recovers to within 1.5x its pre-onset level",
        _mean(ctx.losses[-20:]) < 1.5 * _mean(ctx.losses[ONSET_HU - 20 : ONSET_HU]),
    )
    ctx.check("the gradient is back to ordinary size 30 steps later", _median(g[-30:]) < 3 * before)


# -- kendo: a valid-strike classifier whose margin term lost its hinge ----------------------------


class StrikeNet(nn.Module):
    def __init__(self, d_in, hidden=64, classes=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _margin(out, y):
    """Target logit minus the best other logit."""
    other = out.masked_fill(F.one_hot(y, out.shape[-1]).bool(), float("-inf")).amax(-1)
    return out.gather(1, y[:, None]).squeeze(1) - other


@scenario(
    family="kendo_yuko_datotsu_valid_strike_margin_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU classifier (fc1, fc2, head) judging a kendo strike (men, kote, do or not a valid point) from sixteen standardised sensor readings of the shinai, Adam with two parameter groups (trunk 1e-3, head 1e-3 with no weight decay), cross-entropy plus a margin term 0.1 * relu(2 - margin), 110 steps. The relu of the margin term was left out, so the term is 0.1 * (2 - margin): it rewards the margin between the target logit and the best other logit linearly and without limit, and the head's logits grow step after step, by far over 20x, while the reported cross-entropy stays finite and falls towards zero.",
)
def h333_kendo_margin_hinge_missing(ctx: Context) -> None:
    gen = seeded(33303)
    model = StrikeNet(16)
    head = list(model.head.parameters())
    ids = {id(p) for p in head}
    opt = torch.optim.Adam(
        [
            {"params": [p for p in model.parameters() if id(p) not in ids], "lr": 1e-3},
            {"params": head, "lr": 1e-3, "weight_decay": 0.0},
        ]
    )
    peaks = []
    last = {}

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))
        last["m"] = _margin(out, y)

    def backprop(step, loss):
        return loss + 0.1 * (2.0 - last["m"]).mean()  # meant: F.relu(2.0 - margin).mean()

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 4, 3333, spread=0.6),
        110,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        backprop=backprop,
    )
    ctx.check("the largest head logit grows over 20x", peaks[-1] > 20 * _mean(peaks[:5]))
    ctx.check("the losses are finite", _finite(ctx.losses))
    ctx.check(
        "the largest logit still grows at the end",
        _mean(peaks[-10:]) > 1.3 * _mean(peaks[-60:-50]),
    )


# -- ball lightning: hand-written softmax pooling, exp without the max, under fp16 autocast -------


class ExpPool(nn.Module):
    """Scores every frame and pools by exp(s) / sum exp(s), written by hand without the max."""

    def __init__(self, dim):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.peak = 0.0

    def forward(self, h):
        s = self.score(h).squeeze(-1)
        self.peak = float(s.detach().float().max())
        w = torch.exp(s)  # fp16 under autocast: inf above 11.09
        w = w / w.sum(1, keepdim=True)
        return (w[..., None] * h).sum(1)


class GlowNet(nn.Module):
    def __init__(self, d_in=6, dim=32):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.pool = ExpPool(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        return self.head(self.pool(F.gelu(self.embed(x)))).squeeze(-1)


def _glows(gen, batch, t=24, d_in=6):
    """Twenty-four photometer frames of a ball-lightning sighting; the lifetime is read off the
    frame where the glow peaks (feature 0 is the brightness)."""
    while True:
        x = torch.randn(batch, t, d_in, generator=gen)
        peak = x[..., 0].argmax(1)
        x[torch.arange(batch), peak, 0] += 1.0
        yield x, 2.0 * x[torch.arange(batch), peak, 1]


DIV_BL = 71


@scenario(
    family="ball_lightning_photometer_exp_pool_fp16_net",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("pool",),
    diverges=DIV_BL,
    heldout=True,
    note="A hand-written frame-pooling net (embed with GELU, pool with a score layer, head) estimating a ball-lightning sighting's lifetime from twenty-four photometer frames, Adamax at 1e-2, fp16 autocast with a torch.amp.GradScaler, MSE, 250 steps planned. The pooling is written by hand as exp(score) / sum exp(score) without subtracting the max; the lifetime is read off the brightest frame, so training sharpens the scores, and once a score passes 11.09 its exp overflows fp16 to inf, inf/inf is NaN and the loss is NaN (the same batch in fp32 is finite); the run stops there.",
)
def h333_ball_lightning_exp_pool_overflow(ctx: Context) -> None:
    gen = seeded(33304)
    model = GlowNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    peaks = []
    last = {}

    def watch(step, out, x, y):
        peaks.append(model.pool.peak)
        last["x"] = x

    n = _loop(
        ctx, model, opt, _glows(gen, 64), 250, F.mse_loss, watch=watch, scaler=scaler, amp=True
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite at the step it stops", bad is not None and bad == n - 1)
    ctx.check("the top frame score passed fp16's exp limit 11.09 there", peaks[-1] > 11.09)
    with torch.no_grad():
        fp32 = model(last["x"])
    ctx.check("the same batch in fp32 is finite", bool(torch.isfinite(fp32).all()))
    ctx.check(
        "every loss before was finite", bad is not None and bad > 10 and _finite(ctx.losses[:-1])
    )
    ctx.check("the run stops at the declared step", bad == DIV_BL)


# -- carillon: a baton-rebound Elman RNN whose recurrent init gain is typed 2.5 for 0.25 ----------


class ElmanCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.inp(x) + self.rec(h))


class BatonRNN(nn.Module):
    def __init__(self, d_in=4, hidden=64, gain=1.0):
        super().__init__()
        self.cell = ElmanCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.rec.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _batons(gen, batch, t=40):
    """Forty key-press readings of a carillonneur's baton; the target is the rebound of the
    first strikes, carried to the end of the phrase."""
    while True:
        x = torch.randn(batch, t, 4, generator=gen)
        yield x, x[:, :3, 0].sum(1) / 1.7


def _through_time(model, x, y):
    """|dL/dh_0| / |dL/dh_T|: how much the gradient grows backwards through the sequence."""
    out = model(x)
    g = torch.autograd.grad(F.mse_loss(out, y), [model.states[0], model.states[-1]])
    return float(g[0].norm() / g[1].norm())


@scenario(
    family="carillon_baton_rebound_handwritten_elman_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("cell.rec", "cell"),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (cell with inp and rec, head) reading forty key-press readings of a carillonneur's baton and predicting the rebound of the phrase's first strikes, SGD with momentum 0.9 at 0.01, MSE, 150 steps. The recurrent weight is meant to be orthogonal with gain 0.25 and is written gain 2.5: the recurrence is chaotic, the gradient grows backwards through the forty steps (the gradient reaching the first hidden state is over a thousand times the one at the last, where with gain 0.25 it shrinks), the gradient norms jump from step to step and the net never learns the rebound: the loss stays at or above its starting level (the tanh keeps it bounded, the run does not blow up).",
)
def h333_carillon_recurrent_gain_typo(ctx: Context) -> None:
    gen = seeded(33305)
    model = BatonRNN(gain=2.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = _batons(gen, 32)
    x0, y0 = next(batches)
    ratio = _through_time(model, x0, y0)
    intended = _through_time(BatonRNN(gain=0.25), x0, y0)
    _loop(ctx, model, opt, batches, 150, F.mse_loss)
    g = ctx.grad_norms
    ctx.check(
        "the gradient at the first hidden state is over 1000x the one at the last", ratio > 1000
    )
    ctx.check("with the intended gain 0.25 it is under 1x", intended < 1.0)
    ctx.check("the gradient norm peaks over 5x its median", max(g) > 5 * _median(g))
    ctx.check("the loss does not fall", _mean(ctx.losses[-20:]) > 0.9 * _mean(ctx.losses[:10]))
    ctx.check("the losses are finite", _finite(ctx.losses))


# -- mbira: a strided Conv1d tine classifier fed one shard of raw int16 PCM counts -----------------


class TineNet(nn.Module):
    """Audio-like 1-D conv classifier: three strided convolutions downsample the waveform."""

    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 9, stride=4, padding=4)
        self.conv2 = nn.Conv1d(16, 32, 5, stride=2, padding=2)
        self.conv3 = nn.Conv1d(32, 32, 5, stride=2, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        return self.head(h.mean(-1))


def _tines(gen, batch, classes=6, seed=3336, length=256):
    """Plucked mbira tines: each key has its fundamental, a buzz partial and a decay (in [-1, 1])."""
    g = torch.Generator().manual_seed(seed)
    f0 = 0.05 + 0.25 * torch.rand(classes, generator=g)
    buzz = 0.3 + 0.5 * torch.rand(classes, generator=g)
    decay = 0.005 + 0.02 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(f0[y][:, None] * t + ph) + 0.3 * torch.sin(buzz[y][:, None] * t)
        x = 0.6 * x * torch.exp(-decay[y][:, None] * t)
        yield x + 0.1 * torch.randn(batch, length, generator=gen), y


ONSET_MB = 120


@scenario(
    family="mbira_tine_pluck_strided_conv1d_classifier",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_MB,
    note="A hand-written audio-like 1-D convolutional classifier with strided downsampling (conv1 stride 4, conv2 stride 2, conv3 stride 2, mean pooling, head) naming which of six mbira tines was plucked from a 256-sample recording, AdamW at 2e-3 with weight decay 1e-2, cross-entropy, gradient clipping at 1.0, 220 steps. The batch at step 120 comes from a shard written as raw int16 PCM counts where every other shard holds floats in [-1, 1]: its amplitudes are 32768x, that one batch's loss is orders of magnitude above the rest, the clipped step disturbs the weights and the run recovers on the ordinary batches that follow.",
)
def h333_mbira_int16_shard(ctx: Context) -> None:
    gen = seeded(33306)
    model = TineNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)

    def alter(step, x, y):
        return (x * 32768.0, y) if step == ONSET_MB else (x, y)

    _loop(
        ctx,
        model,
        opt,
        _tines(gen, 64),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    ls = ctx.losses
    pre = _median(ls[ONSET_MB - 20 : ONSET_MB])
    ctx.check("the loss on the int16 batch is over 50x the median before", ls[ONSET_MB] > 50 * pre)
    ctx.check("the losses are finite", _finite(ls))
    ctx.check("the run had learned before the onset", pre < 0.5 * ls[0])
    ctx.check(
        "the loss recovers to within 2x its pre-onset level", _mean(ls[-20:]) < 2 * max(pre, 0.05)
    )


# -- dune avalanche: runout = sqrt(head) with the clamp left out ---------------------------------


class RunoutNet(Trunk):
    def forward(self, x):
        return torch.sqrt(self.head(self.features(x)).squeeze(-1))  # meant: .clamp_min(1e-6)


def _runouts(gen, batch, seed=3337):
    """Slip-face readings; the runout (in tens of metres) is often close to zero."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = F.softplus(2.0 * (x @ w) / math.sqrt(8) - 1.0)
        yield x, y + 0.02 * torch.rand(batch, generator=gen)


DIV_DA = 99


@scenario(
    family="dune_avalanche_slipface_runout_sqrt_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("head",),
    diverges=DIV_DA,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting how far a dune's slip-face avalanche runs out from eight standardised readings (slope, grain size, wind), Adagrad at 1e-3, MSE, 250 steps planned, head bias started at 2. The runout is taken as sqrt(head) so that it is non-negative and the clamp_min(1e-6) before the sqrt was left out: many runouts are close to zero, training drives the head's output down, one prediction crosses zero, sqrt of a negative is NaN and the loss is NaN, where the run stops.",
)
def h333_dune_avalanche_sqrt_unclamped(ctx: Context) -> None:
    gen = seeded(33307)
    model = RunoutNet(8, 64, act=nn.Tanh)
    with torch.no_grad():
        model.head.bias.fill_(2.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-3)
    raw = []

    def watch(step, out, x, y):
        with torch.no_grad():
            raw.append(float(model.head(model.features(x)).min()))

    n = _loop(ctx, model, opt, _runouts(gen, 64), 250, F.mse_loss, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(
        "the loss is NaN at the step it stops",
        bad is not None and bad == n - 1 and math.isnan(ctx.losses[-1]),
    )
    ctx.check("the head's output is negative there", raw[-1] < 0)
    ctx.check(
        "every loss before was finite and the head positive",
        bad is not None and bad > 5 and min(raw[:-1]) > 0,
    )
    ctx.check("the run stops at the declared step", bad == DIV_DA)


# -- coracle: a NAdam regressor whose trunk group lr is typed 1e-7 --------------------------------


@scenario(
    family="coracle_hide_seam_leak_two_group_nadam_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting how much water a willow-and-hide coracle takes in through its seams from ten standardised readings (hide thickness, tar coats, load), NAdam with two parameter groups, MSE, 250 steps. The trunk group (fc1, fc2) is meant to train at 1e-3 and its lr is typed 1e-7: its updates are about a millionth of its weights, the trunk stays where it was initialised while only the head learns, and the loss plateaus well above what the same net reaches when the whole net trains.",
)
def h333_coracle_trunk_group_lr_typo(ctx: Context) -> None:
    gen = seeded(33308)
    model = Trunk(10, 64, act=nn.GELU)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.NAdam(
        [{"params": trunk, "lr": 1e-7}, {"params": list(model.head.parameters()), "lr": 1e-3}]
    )
    w0 = {
        n: m.weight.detach().clone()
        for n, m in (("fc1", model.fc1), ("fc2", model.fc2), ("head", model.head))
    }
    _loop(ctx, model, opt, _readings(gen, 64, 10, 3338), 250, F.mse_loss)
    moved = {
        n: float((m.weight.detach() - w0[n]).norm() / w0[n].norm())
        for n, m in (("fc1", model.fc1), ("fc2", model.fc2), ("head", model.head))
    }
    ctx.check(
        "fc1 and fc2 move under 0.1% over the run", moved["fc1"] < 1e-3 and moved["fc2"] < 1e-3
    )
    ctx.check("the head moves over 10%", moved["head"] > 0.1)
    ctx.check("the losses are finite", _finite(ctx.losses))


# -- sepak takraw: an RMSprop lr typed 5e-2 for 5e-4 kills the ReLUs -------------------------------


def _magnitudes(gen, batch, seed):
    """Motion magnitudes (non-negative) around one prototype per spike kind."""
    for x, y in _grades(gen, batch, 12, 5, seed):
        yield x.abs(), y


@scenario(
    family="sepak_takraw_spike_block_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying a sepak takraw spike (roll spike, sunback, horse kick, block-out, net fault) from twelve non-negative motion magnitudes, RMSprop with alpha 0.99, cross-entropy, 250 steps. The lr is meant to be 1e-3 and is typed 1e-1: the first updates push most of fc1's pre-activations negative for every input (the inputs are all non-negative), the ReLUs in act1 die (never positive on a batch) and stay dead, and the net learns only through the few units left.",
)
def h333_sepak_takraw_rmsprop_lr_typo(ctx: Context) -> None:
    gen = seeded(33309)
    model = Trunk(12, 64, out=5, act=nn.ReLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-1)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.act1(model.fc1(x))))

    _loop(
        ctx,
        model,
        opt,
        _magnitudes(gen, 64, 3339),
        250,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("act1's dead fraction starts under 25%", dead[0] < 0.25)
    ctx.check("over half of act1 is dead for the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("the losses are finite", _finite(ctx.losses))


# -- bonsai: a wiring-style classifier whose softmax temperature is typed 0.002 --------------------


class StyleNet(Trunk):
    def __init__(self, *a, temperature=1.0, **k):
        super().__init__(*a, **k)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="bonsai_wiring_branch_style_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) naming a bonsai's wiring style (formal upright, informal upright, slanting, cascade, semi-cascade, windswept) from fourteen standardised branch-angle readings, plain SGD at 1e-3, cross-entropy, 200 steps. The logits are divided by a temperature meant to be 2.0 and typed 0.002: the head's own logits are of ordinary size, but divided by 0.002 the float32 softmax gives the target exactly probability 1 on most rows and exactly 0 on the others, so the loss is either 0 or hundreds and the gradient is all-or-nothing.",
)
def h333_bonsai_temperature_typo(ctx: Context) -> None:
    gen = seeded(33310)
    model = StyleNet(14, 64, out=6, act=nn.GELU, temperature=0.002)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    col, raw = [], []

    def watch(step, out, x, y):
        col.append(collapsed_fraction(out.detach(), y))
        raw.append(float((out.detach() * model.temperature).abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 3340, spread=1.2),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' target probability is exactly 1.0 late in the run",
        _mean(col[-30:]) > 0.5,
    )
    ctx.check("the head's own logits stay under 30 (it is the temperature)", max(raw) < 30)
    ctx.check("the losses are finite", _finite(ctx.losses))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="cyr_wheel_spin_duration_nesterov_sgdr_regressor",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting how long a cyr-wheel artist's coin spin lasts from ten standardised readings (entry speed, lean, wheel diameter), SGD with Nesterov momentum 0.9 at 0.05 and weight decay 1e-4, CosineAnnealingWarmRestarts (SGDR, T_0 40, T_mult 2), MSE, 280 steps.",
)
def h333_cyr_wheel_sgdr_control(ctx: Context) -> None:
    gen = seeded(33311)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=40, T_mult=2)
    _loop(ctx, model, opt, _readings(gen, 64, 10, 3341, noise=0.1), 280, F.mse_loss, sched=sched)
    ctx.check("the loss fell by over half", _fell(ctx.losses, ratio=0.5))


@scenario(
    family="bossaball_serve_zone_onecycle_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written GELU MLP (fc1, act1, fc2, act2, head) calling which of seven zones a bossaball serve lands in from twelve standardised readings of the trampoline and ball, AdamW (weight decay 0.05) under OneCycleLR with max_lr 3e-3, cross-entropy with label smoothing 0.1, gradient clipping at 1.0, noisy batches of 48, 200 steps.",
)
def h333_bossaball_onecycle_control(ctx: Context) -> None:
    gen = seeded(33312)
    model = Trunk(12, 64, out=7, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 48, 12, 7, 3342, spread=1.3),
        200,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))


@scenario(
    family="noctilucent_cloud_band_brightness_fp16_radam_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written SiLU MLP (fc1, act1, fc2, act2, head) estimating a noctilucent cloud band's brightness from twelve standardised twilight readings, RAdam at 2e-3, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, a Gaussian NLL (mean and softplus variance heads), 200 steps.",
)
def h333_noctilucent_fp16_radam_control(ctx: Context) -> None:
    gen = seeded(33313)
    model = Trunk(12, 64, out=2, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def nll(out, y):
        return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 3343, noise=0.1),
        200,
        nll,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check(
        "the NLL fell by over 0.5 nats and stayed finite",
        _finite(ctx.losses) and _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.5,
    )
    ctx.check("the loss scale stayed at or above its start", min(ctx.scales) >= 2.0**10)
