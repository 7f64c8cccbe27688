"""Held-out set 174 (``h174_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before, every activation a functional call (``F.relu``,
``F.gelu``, ``F.silu``, ``torch.tanh``; no activation modules): a bagpipe-chanter transformer
with hand-written attention, an Elman RNN unrolled by hand, a BatchNorm CNN, a GRU language
model with tied weights, a batch-standardising regressor and MLP regressors and classifiers.

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
):
    """One training loop for the whole file. ``before(step)`` runs first (schedules, injected
    bugs), ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)`` records,
    ``accumulate`` micro-batches a step; stops after logging a NaN loss."""
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
            loss = loss_fn(step, out.float(), y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
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


def _plain(fn):
    """A loss of (out, y) as a loss of (step, out, y)."""
    return lambda step, out, y: fn(out, y)


def _sensors(gen, batch, d_in, seed, scale=1.0, offset=0.0, noise=0.05):
    """Standardised readings and a smooth nonlinear target."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(2 * x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, generator=gen)
        yield x, offset + scale * y


def _classes(gen, batch, d_in, classes, seed, noise=0.3):
    """Readings around one prototype per class (overlapping, so not trivially separable)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


class FuncMLP(nn.Module):
    """fc1 -> act -> fc2 -> act -> head, activations as functional calls."""

    def __init__(self, d_in, hidden=64, out=1, act=F.relu):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def features(self, x):
        return self.act(self.fc2(self.act(self.fc1(x))))

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


# -- bagpipe chanter: attention scale multiplied where it should divide --------------------------


class ChanterAttention(nn.Module):
    def __init__(self, dim, heads, scale):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = scale
        self.max_logit = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) * self.scale
        self.max_logit = float(scores.detach().abs().max())
        y = torch.softmax(scores, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class ChanterTransformer(nn.Module):
    """Reads 20 chanter notes (9 pitches) with one gracenote marker and names the tune type."""

    def __init__(self, vocab=18, length=20, dim=32, heads=2, classes=4, scale=None):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.1 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = ChanterAttention(dim, heads, scale)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.tok(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.out(F.gelu(self.fc(self.ln2(h))))
        return self.head(self.ln_f(h)[:, -1])


def _chanter_tunes(gen, batch, length=20, classes=4):
    """Nine plain pitches (0-8) and one gracenoted note (9-17) per phrase; the label is the
    gracenoted pitch folded into 4 tune types."""
    while True:
        x = torch.randint(0, 9, (batch, length), generator=gen)
        at = torch.randint(0, length, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, at] += 9
        y = (x[rows, at] - 9) % classes
        yield x, y


@scenario(
    family="bagpipe_chanter_gracenote_transformer",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with hand-written attention naming a pipe tune's type from "
    "the note that follows a gracenote marker, Adam at 1e-2 with no weight decay. The "
    "attention scale is written `head_dim ** 0.5` where `head_dim ** -0.5` was meant, so the "
    "q.k scores are multiplied by 4 instead of divided by 4; the task wants one sharp "
    "attention target and the scores keep growing while the loss stays finite.",
)
def h174_chanter_attention_scale_inverted(ctx: Context) -> None:
    gen = seeded(17401)
    model = ChanterTransformer(scale=16**0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    logits = []
    _train(
        ctx,
        model,
        opt,
        _chanter_tunes(gen, 64),
        280,
        _plain(F.cross_entropy),
        classifier=True,
        watch=lambda s, o, x, y: logits.append(model.attn.max_logit),
    )
    ctx.check(
        "max attention logit grew 20x from the first steps",
        _mean(logits[-10:]) > 20 * _mean(logits[:5]),
    )
    ctx.check("max attention logit past 100", max(logits) > 100)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- accordion reeds: a label-smoothing anneal with no clamp ---------------------------------------

ACCORDION_EPS0 = 0.1
ACCORDION_ANNEAL = 60


def _smoothing(step: int) -> float:
    """The recipe's linear anneal of the smoothing, written without its max(0, ...)."""
    return ACCORDION_EPS0 * (1 - step / ACCORDION_ANNEAL)


@scenario(
    family="accordion_reed_fault_gelu_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=ACCORDION_ANNEAL,
    note="A GELU MLP naming which of 6 reed faults an accordion's tuning sweep shows, NAdam, "
    "cross-entropy against hand-built smoothed targets (1 - eps) * onehot + eps / K. The "
    "smoothing is annealed linearly from 0.1 to 0 over 60 steps by a helper written without "
    "its max(0, .): from step 60 eps is negative, the wrong classes get negative target mass, "
    "the loss has no lower bound (it goes below zero and keeps falling, finite) and the "
    "head's logits are pushed apart without limit.",
)
def h174_accordion_smoothing_anneal_unclamped(ctx: Context) -> None:
    gen = seeded(17402)
    model = FuncMLP(24, hidden=64, out=6, act=F.gelu)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    span = []

    def loss_fn(step, out, y):
        eps = _smoothing(step)
        target = (1 - eps) * F.one_hot(y, 6).float() + eps / 6
        return -(target * F.log_softmax(out, -1)).sum(-1).mean()

    _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 24, 6, seed=2),
        190,
        loss_fn,
        classifier=True,
        watch=lambda s, o, x, y: span.append(float(o.detach().abs().max())),
    )
    at = ACCORDION_ANNEAL
    ctx.check("smoothing negative after step 60", _smoothing(189) < 0 < _smoothing(at - 1))
    ctx.check(
        "head logits grew 20x after the onset", _mean(span[-10:]) > 20 * _mean(span[at - 5 : at])
    )
    ctx.check("loss below zero at the end", _mean(ctx.losses[-10:]) < 0)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- cobbler's last: foot measurements fed in raw millimetres, dead ReLUs -------------------------


def _feet(gen, batch, seed=3):
    """Ten foot measurements in millimetres (about 205-295) and the last's continental size."""
    readings = _sensors(gen, batch, 10, seed=seed, scale=3.0, offset=40.0)
    while True:
        x, y = next(readings)
        yield 250.0 + 15.0 * x, y


@scenario(
    family="cobbler_last_size_relu_mlp",
    optimizer="SGD(momentum)",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (F.relu) picking a shoe last's continental size from 10 foot measurements, "
    "SGD with momentum 0.9 at 1e-4, MSE. The measuring board's export gives millimetres "
    "(205-295, all positive) and the standardisation step of the recipe was left out: the "
    "first updates are scaled by inputs in the hundreds, they push the first layer's units "
    "negative for every foot, every ReLU of fc1 dies, the net outputs a constant and the loss "
    "sits at the size variance for good.",
)
def h174_cobbler_last_raw_millimetres(ctx: Context) -> None:
    gen = seeded(17403)
    model = FuncMLP(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    probe, sizes = next(_feet(torch.Generator().manual_seed(5), 512))

    def dead():
        with torch.no_grad():
            return float((F.relu(model.fc1(probe)) <= 0).all(0).float().mean())

    dead0 = dead()
    _train(ctx, model, opt, _feet(gen, 64), 200, _plain(F.mse_loss))
    with torch.no_grad():
        spread = float(model(probe).std())
    ctx.check("under 60% of fc1's units dead at init", dead0 < 0.6)
    ctx.check("over 95% of fc1's units dead at the end", dead() > 0.95)
    ctx.check("the net's output is constant over 512 feet", spread < 1e-3)
    ctx.check(
        "last losses at the size variance (the fit learnt nothing)",
        abs(_mean(ctx.losses[-20:]) - float(sizes.var())) < 0.3 * float(sizes.var()),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- kayak paddle strokes: a recurrent init std copied from a smaller prototype -------------------


class PaddleElman(nn.Module):
    """An Elman RNN unrolled by hand over 6-axis paddle IMU frames, torch.tanh as its activation."""

    def __init__(self, d_in=6, hidden=48, rec_std=None):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.rec.weight, std=rec_std or 1 / math.sqrt(hidden))
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _paddle_strokes(gen, batch, length=40):
    """IMU frames of a stroke cycle; the target is the stroke rate (strokes per second, scaled)."""
    t = torch.arange(length).float()
    while True:
        rate = 0.5 + torch.rand(batch, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        base = torch.sin(2 * math.pi * rate * t / 10 + phase)
        x = torch.stack([base * (0.5 + 0.1 * k) for k in range(6)], -1)
        x = x + 0.1 * torch.randn(batch, length, 6, generator=gen)
        yield x, rate.squeeze(-1)


@scenario(
    family="kayak_paddle_stroke_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="An Elman RNN unrolled by hand over 40 paddle IMU frames estimating a sprint kayaker's "
    "stroke rate, plain SGD at 0.05, MSE. The recurrent weight is initialised with "
    "nn.init.normal_(std=0.36), a constant copied from an 8-unit prototype where it was "
    "1/sqrt(8); at 48 units it gives a spectral radius near 2.5: the backward pass through "
    "time multiplies the gradient up frame after frame, the gradient of the recurrent weight "
    "reaches 1e5-1e6 and the loss jumps several-fold in the first steps.",
)
def h174_kayak_recurrent_std_copied(ctx: Context) -> None:
    gen = seeded(17404)
    model = PaddleElman(rec_std=0.36)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    through = []

    def watch(step, out, x, y):
        if step == 0:
            # how much the gradient grows back through time, on the first batch
            first, last = model.states[0], model.states[-1]
            g = torch.autograd.grad(out.sum(), [first, last], retain_graph=True)
            through.append(float(g[0].norm() / g[1].norm()))

    _train(ctx, model, opt, _paddle_strokes(gen, 32), 150, _plain(F.mse_loss), watch=watch)
    g = ctx.grad_norms
    ctx.check("gradient at the first frame 1000x the one at the last", through[0] > 1000)
    ctx.check("gradient norm grew 100x over its first value", max(g) > 100 * g[0])
    ctx.check("gradient norm peaked past 1e5", max(g) > 1e5)
    ctx.check("loss jumped 3x over its start early on", max(ctx.losses[:30]) > 3 * ctx.losses[0])
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- sourdough proofing: a hand-written batch standardiser without an epsilon ----------------------

SOURDOUGH_STUCK = 90


class BatchStandardise(nn.Module):
    """Standardises each reading with the batch's own mean and std (no epsilon)."""

    def __init__(self):
        super().__init__()
        self.min_std = math.inf

    def forward(self, x):
        std = x.std(0)
        self.min_std = float(std.min())
        return (x - x.mean(0)) / std


class ProofNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.standardise = BatchStandardise()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc1(self.standardise(x)))
        return self.head(F.silu(self.fc2(h))).squeeze(-1)


def _proofing(gen, batch, seed=4):
    """Chamber temperature (K), humidity, flour protein, hydration, ... and the dough's rise."""
    readings = _sensors(gen, batch, 8, seed=seed)
    centre = torch.tensor([299.0, 75.0, 12.5, 70.0, 2.0, 20.0, 4.0, 1.0])
    spread = torch.tensor([2.0, 8.0, 1.0, 5.0, 0.5, 3.0, 1.0, 0.2])
    while True:
        x, y = next(readings)
        yield centre + spread * x, y


@scenario(
    family="sourdough_proof_rise_silu_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("standardise",),
    diverges=SOURDOUGH_STUCK,
    heldout=True,
    onset=SOURDOUGH_STUCK,
    note="A SiLU MLP (F.silu) predicting a sourdough's proofing rise from 8 chamber and dough "
    "readings, RMSprop, MSE. Its first module standardises each reading with the batch's own "
    "mean and std, written (x - mean) / std with no epsilon. At step 90 a batch comes from a "
    "single chamber whose thermometer is stuck at 299.15 K: that column's std is exactly 0, "
    "0/0 gives NaN in the forward and the loss is NaN.",
)
def h174_sourdough_standardise_no_epsilon(ctx: Context) -> None:
    gen = seeded(17405)
    model = ProofNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    stds = []

    def alter(step, x, y):
        if step == SOURDOUGH_STUCK:
            x = x.clone()
            x[:, 0] = 299.15
        return x, y

    _train(
        ctx,
        model,
        opt,
        _proofing(gen, 64),
        160,
        _plain(F.mse_loss),
        alter=alter,
        watch=lambda s, o, x, y: stds.append(model.standardise.min_std),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss first NaN at step 90", bad == SOURDOUGH_STUCK)
    ctx.check("a reading's batch std exactly 0 at step 90", stds[SOURDOUGH_STUCK] == 0.0)
    ctx.check("every batch std positive before", min(stds[:SOURDOUGH_STUCK]) > 0)
    ctx.check("loss fell before the stuck batch", _fell(ctx.losses[:SOURDOUGH_STUCK]))


# -- sabre fencing: a contrastive temperature kept for the classifier ------------------------------


@scenario(
    family="sabre_fencing_right_of_way_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (F.relu) awarding a sabre touch (left, right, none, simultaneous) from 20 "
    "blade and footwork features, AdamW, cross-entropy. The classifier was fine-tuned from a "
    "contrastive pre-training script and kept its `logits / temperature` with temperature "
    "0.01: the softmax saturates, most rows give their class a probability of exactly 1.0 in "
    "float32 while a misread touch costs a loss in the tens.",
)
def h174_sabre_contrastive_temperature_kept(ctx: Context) -> None:
    gen = seeded(17406)
    model = FuncMLP(20, hidden=64, out=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    temperature = 0.01
    collapsed, worst = [], []

    def loss_fn(step, out, y):
        scaled = out / temperature
        collapsed.append(collapsed_fraction(scaled.detach(), y))
        worst.append(float(F.cross_entropy(scaled.detach(), y, reduction="none").max()))
        return F.cross_entropy(scaled, y)

    _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 20, 4, seed=6, noise=0.8),
        150,
        loss_fn,
        classifier=True,
    )
    ctx.check("over half the rows collapsed to p = 1.0 at the end", _mean(collapsed[-10:]) > 0.5)
    ctx.check("under a quarter collapsed on the first batch", collapsed[0] < 0.25)
    ctx.check("a row's loss above 10 in the last 20 steps", max(worst[-20:]) > 10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- cider press: the linear lr scaling rule without its /256 -------------------------------------


@scenario(
    family="cider_press_juice_yield_gelu_mlp",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A GELU MLP (F.gelu) predicting a rack-and-cloth cider press's juice yield from 12 "
    "apple and pressing readings, plain SGD with an 80-step linear warm-up (LambdaLR), MSE. "
    "The peak learning rate follows the linear scaling rule, written base_lr * batch_size "
    "where base_lr * batch_size / 256 was meant: 0.008 * 128 = 1.024 instead of 0.004. The "
    "loss falls during the warm-up until lr times the loss's top Hessian eigenvalue passes 2 "
    "(about step 20), then it oscillates and blows up.",
)
def h174_cider_press_lr_scaling_rule(ctx: Context) -> None:
    gen = seeded(17407)
    model = FuncMLP(12, hidden=64, act=F.gelu)
    batch = 128
    peak = 0.008 * batch
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / 80, 1.0))
    batches = _sensors(gen, batch, 12, seed=7, scale=2.0, offset=1.0)
    x0, y0 = next(batches)
    edge = {}

    def before(step):
        if step % 5 == 0 and step <= 40:
            lr = opt.param_groups[0]["lr"]
            edge[step] = lr * _sharpness(model, F.mse_loss, x0, y0, iters=10)

    _train(ctx, model, opt, batches, 150, _plain(F.mse_loss), before=before, sched=sched)
    past = [s for s, v in edge.items() if v > 2]
    first = min(past) if past else None
    ctx.check("lr x top Hessian eigenvalue past 2 by step 30", first is not None and first <= 30)
    ctx.check(
        "the loss was still below its start when it passed 2",
        first is not None and ctx.losses[first] < ctx.losses[0],
    )
    ctx.check("loss grew 100x over its start", max(ctx.losses) > 100 * ctx.losses[0])
    ctx.check("loss fell in the first 20 steps", _mean(ctx.losses[15:20]) < ctx.losses[0])


# -- bookbinding: a layer-wise lr decay of 0.05 typed for 0.95 ------------------------------------


class GlueCureNet(nn.Module):
    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.gelu(self.fc1(x))
        h = F.gelu(self.fc2(h))
        h = F.gelu(self.fc3(h))
        return self.head(h).squeeze(-1)


@scenario(
    family="bookbinding_spine_glue_cure_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP predicting how long a bookbinder's spine glue takes to cure from 9 "
    "readings (glue type, thickness, humidity, board stock ...), Adagrad with layer-wise "
    "learning-rate decay lr_l = base * decay ** (depth from the head), Huber loss. The decay "
    "is typed 0.05 for 0.95: fc1 trains at 1.25e-4 times the head's rate and fc2 at 2.5e-3 "
    "times, their weights barely move while the head and fc3 fit what they can; the loss "
    "stays finite and falls, only slower and higher.",
)
def h174_bookbinding_llrd_decay_typo(ctx: Context) -> None:
    gen = seeded(17408)
    model = GlueCureNet()
    base, decay = 0.05, 0.05
    layers = [model.fc1, model.fc2, model.fc3, model.head]
    groups = [
        {"params": layer.parameters(), "lr": base * decay ** (len(layers) - 1 - i)}
        for i, layer in enumerate(layers)
    ]
    opt = torch.optim.Adagrad(groups, lr=base)
    start = {n: m.weight.detach().clone() for n, m in (("fc1", model.fc1), ("head", model.head))}
    snaps = {"fc1": [], "head": []}

    def before(step):
        for n, m in (("fc1", model.fc1), ("head", model.head)):
            snaps[n].append(m.weight.detach().clone())

    _train(
        ctx,
        model,
        opt,
        _sensors(gen, 64, 9, seed=8),
        200,
        _plain(F.huber_loss),
        before=before,
    )

    def moved(n, m):
        return float((m.weight.detach() - start[n]).norm() / start[n].norm())

    def per_step(n):
        w = snaps[n]
        return _median(
            [float((b - a).norm() / a.norm()) for a, b in zip(w[:-1], w[1:], strict=True)]
        )

    ctx.check("fc1's weights moved under 0.1% over the run", moved("fc1", model.fc1) < 1e-3)
    ctx.check("the head's weights moved over 10%", moved("head", model.head) > 0.1)
    ctx.check(
        "fc1's update per step 1000x smaller than the head's",
        per_step("fc1") * 1000 < per_step("head"),
    )
    ctx.check("loss fell and stayed finite", _fell(ctx.losses))


# -- firework shells: one supplier's shard with the charge mass in milligrams ----------------------

FIREWORK_SHARD = 110


@scenario(
    family="firework_shell_burst_height_regressor",
    optimizer="RAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=FIREWORK_SHARD,
    note="A ReLU MLP predicting an aerial shell's burst height from 10 standardised readings "
    "(calibre, lift charge, mortar length, angle ...), RAdam, Huber loss, clip_grad_norm_ "
    "at 1. One supplier's shard logs the lift charge in milligrams, and the batch at step 110 "
    "comes from it: after the standardiser fitted on grams that reading is in the thousands, "
    "the batch loss spikes by orders of magnitude, the clipped step is absorbed and the run "
    "recovers.",
)
def h174_firework_milligram_shard(ctx: Context) -> None:
    gen = seeded(17409)
    model = FuncMLP(10, hidden=64)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    biggest = []

    def alter(step, x, y):
        if step == FIREWORK_SHARD:
            x = x.clone()
            x[:, 1] = (x[:, 1] * 0.2 + 1.0) * 1000.0
        biggest.append(float(x.abs().max()))
        return x, y

    _train(
        ctx,
        model,
        opt,
        _sensors(gen, 64, 10, seed=9),
        220,
        _plain(F.huber_loss),
        alter=alter,
        clip=1.0,
    )
    ls = ctx.losses
    before = _median(ls[FIREWORK_SHARD - 20 : FIREWORK_SHARD])
    ctx.check("the bad batch has a reading past 500", biggest[FIREWORK_SHARD] > 500)
    ctx.check(
        "no other batch has a reading past 10",
        max(biggest[:FIREWORK_SHARD] + biggest[FIREWORK_SHARD + 1 :]) < 10,
    )
    ctx.check("loss at the bad batch 50x the 20 before", ls[FIREWORK_SHARD] > 50 * before)
    ctx.check("loss back under 2x that level by the end", _mean(ls[-10:]) < 2 * before)
    ctx.check("loss finite throughout", _finite(ls))


# -- wildfire embers: a validation helper that back-propagates ------------------------------------

WILDFIRE_EVAL = 100
WILDFIRE_VAL = 200


class EmberNet(nn.Module):
    """Spotting distance of wind-borne embers from fuel, wind and terrain readings."""

    def __init__(self, d_in=11, hidden=64):
        super().__init__()
        self.fuel = nn.Linear(d_in, hidden)
        self.plume = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.tanh(self.fuel(x))
        h = h + F.relu(self.plume(h))
        return self.head(h).squeeze(-1)


@scenario(
    family="wildfire_ember_spotting_distance_net",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=WILDFIRE_EVAL,
    note="A residual tanh/ReLU MLP predicting how far a wildfire throws spot-fire embers from 11 "
    "fuel, wind and slope readings, SGD with Nesterov momentum, MSE, validated every 100 "
    "steps. The validation loop reuses the training helper `compute_loss`, which calls "
    "backward(), and runs without torch.no_grad(): at step 100 the gradients of the 200 "
    "validation batches pile up in .grad before the training batch, the step's gradient is "
    "about 70 times its usual norm and the loss jumps, then the run recovers.",
)
def h174_wildfire_validation_backprop(ctx: Context) -> None:
    gen = seeded(17410)
    model = EmberNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    batches = _sensors(gen, 64, 11, seed=10, scale=1.5)
    val = _sensors(torch.Generator().manual_seed(11), 64, 11, seed=10, scale=1.5)
    val_batches = [next(val) for _ in range(WILDFIRE_VAL)]

    def compute_loss(x, y):
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    def before(step):
        if step == WILDFIRE_EVAL:
            for x, y in val_batches:
                compute_loss(x, y)

    _train(ctx, model, opt, batches, 200, _plain(F.mse_loss), before=before)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "gradient norm at step 100 over 30x the median of the 20 before",
        g[WILDFIRE_EVAL] > 30 * _median(g[WILDFIRE_EVAL - 20 : WILDFIRE_EVAL]),
    )
    ctx.check(
        "loss after the step 5x the level before",
        max(ls[WILDFIRE_EVAL + 1 : WILDFIRE_EVAL + 4])
        > 5 * _median(ls[WILDFIRE_EVAL - 20 : WILDFIRE_EVAL]),
    )
    ctx.check(
        "loss back near its level by the end",
        _mean(ls[-10:]) < 2 * _median(ls[WILDFIRE_EVAL - 20 : WILDFIRE_EVAL]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- healthy controls ------------------------------------------------------------------------------


class BrandGlyphCNN(nn.Module):
    """Reads an 8x8 scan of a cattle brand's glyph (the digits set); BatchNorm, F.relu."""

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
    family="cattle_brand_glyph_bn_cnn",
    optimizer="SGD(momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A BatchNorm CNN (F.relu) reading scanned brand glyphs (the 8x8 digits set), SGD with "
    "momentum 0.9 and weight decay 5e-4 under OneCycleLR (max_lr 0.1), cross-entropy with "
    "label smoothing 0.1. An ordinary run.",
)
def h174_cattle_brand_bn_cnn_onecycle(ctx: Context) -> None:
    gen = seeded(17411)
    model = BrandGlyphCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        steps,
        _plain(lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1)),
        classifier=True,
        sched=sched,
    )
    model.eval()
    x, y = next(digit_batches(torch.Generator().manual_seed(12), 512))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell by half and stayed finite", _fell(ctx.losses, ratio=0.5))
    ctx.check("accuracy over 85% on 512 glyphs", acc > 0.85)


class RoastNet(nn.Module):
    def __init__(self, d_in=14, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc1(x))
        h = F.silu(self.fc2(h))
        return self.head(h).squeeze(-1)


@scenario(
    family="coffee_roast_first_crack_fp16_mlp",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (F.silu) predicting the time to first crack of a coffee roast (in minutes, "
    "standardised) from 14 drum and bean readings with noisy labels, fp16 autocast with a "
    "torch.amp.GradScaler, Adamax, Huber loss, gradient accumulation over 2 micro-batches, "
    "clip_grad_norm_ at 1 after unscale_, ReduceLROnPlateau. An ordinary run.",
)
def h174_coffee_roast_fp16_adamax(ctx: Context) -> None:
    gen = seeded(17412)
    model = RoastNet()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _sensors(gen, 32, 14, seed=12, noise=0.15),
        180,
        _plain(F.huber_loss),
        sched=sched,
        scaler=scaler,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell by half and stayed finite", _fell(ctx.losses, ratio=0.5))
    ctx.check("grad scaler never fell below its start", min(ctx.scales) >= ctx.scales[0] / 2)


def _plain_hunt(gen, batch, bells=6, rows=10):
    """Rows of plain hunt on 6 bells from a random start, one separator token between rows."""
    sep = bells
    while True:
        seqs = []
        for _ in range(batch):
            row = torch.randperm(bells, generator=gen).tolist()
            flip = int(torch.randint(0, 2, (1,), generator=gen))
            out = []
            for r in range(rows):
                out += row + [sep]
                start = (r + flip) % 2
                for i in range(start, bells - 1, 2):
                    row[i], row[i + 1] = row[i + 1], row[i]
            seqs.append(out)
        x = torch.tensor(seqs)
        yield x[:, :-1], x[:, 1:]


class HuntGRU(nn.Module):
    """A GRU LM over bell numbers with its output head tied to the embedding."""

    def __init__(self, vocab=7, dim=48):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        h, _ = self.gru(self.emb(x))
        return self.head(torch.tanh(self.proj(h)))


@scenario(
    family="plain_hunt_bell_row_tied_gru_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A GRU language model over change-ringing rows (plain hunt on six bells from a random "
    "start) with its head tied to the embedding, AdamW with param groups (no weight decay on "
    "biases and the embedding), linear warm-up then cosine decay (LambdaLR), clip_grad_norm_ "
    "at 1. An ordinary run.",
)
def h174_plain_hunt_tied_gru_cosine(ctx: Context) -> None:
    gen = seeded(17413)
    model = HuntGRU()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1 and not n.startswith("emb")]
    rest = [p for n, p in model.named_parameters() if p.dim() <= 1 or n.startswith("emb")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=1e-2
    )
    steps, warm = 200, 20

    def lr_at(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    _train(
        ctx,
        model,
        opt,
        _plain_hunt(gen, 16),
        steps,
        _plain(lambda o, y: F.cross_entropy(o.reshape(-1, o.shape[-1]), y.reshape(-1))),
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell by half and stayed finite", _fell(ctx.losses, ratio=0.5))
    ctx.check("head still tied to the embedding", model.head.weight is model.emb.weight)
    ctx.check("last losses under 0.5 nats a bell", _mean(ctx.losses[-10:]) < 0.5)
