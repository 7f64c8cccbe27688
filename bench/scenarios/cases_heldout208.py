"""Held-out set 208 (``h208_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a bandura phrase classifier on ``nn.MultiheadAttention``
trained by AdamW at a rate and decay copied from a recipe that had qk-normalisation, a teqball
return classifier whose loss is ``F.nll_loss`` on raw logits, a sea-smoke visibility regressor
whose label-jitter augmentation writes into the cached target tensor, a lorimer bit-forging
regressor whose saliency report backpropagates a summed loss into the gradients once, a ringette
pass-speed regressor whose warm-up lambda lost its ``min(1, ...)``, a hair-ice growth net whose
pressure spread is sqrt(E[x^2] - E[x]^2) with no floor, an octopush puck-drive regressor fed a
batch carrying a logger's -9999 sentinel, a typefounder matrix-depth regressor whose final short
batch of the epoch goes through a summed Huber, a glover leather-stretch net whose embedding
group's rate was typed 1e-8, a Brocken-spectre glory-ring classifier multiplying its logits by a
temperature, and three controls (a kin-ball call 1-D CNN with warm-up then cosine, a heat-burst
gust MLP in fp16 with a GradScaler, a diamond-dust Gaussian-NLL MLP with OneCycleLR).

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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
    extra_backward=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``extra_backward(step)``
    runs between backward and the optimizer step, ``after(step)`` after the optimizer step;
    ``scale_loss(step, loss, out, y)`` returns what is backpropagated; stops after logging a
    NaN loss."""
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
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total, out, y)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if extra_backward is not None:
            extra_backward(step)
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
        if math.isnan(shown):
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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


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


# -- bandura: nn.MultiheadAttention trained without the recipe's qk-normalisation ---------------


class PhraseNet(nn.Module):
    """Token + position embeddings, one ``nn.MultiheadAttention`` (``attn``), mean-pool, head."""

    def __init__(self, vocab=17, dim=32, heads=2, length=12, classes=8):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        nn.init.normal_(self.tok.weight, std=0.3)
        nn.init.normal_(self.pos.weight, std=0.3)

    def embed(self, idx):
        return self.tok(idx) + self.pos(torch.arange(idx.shape[1]))

    def forward(self, idx):
        h = self.embed(idx)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.norm(h + a)[:, 0])

    @torch.no_grad()
    def attn_logits(self, idx):
        """q.k / sqrt(head_dim) as nn.MultiheadAttention computes them."""
        h = self.embed(idx)
        d = h.shape[-1]
        heads = self.attn.num_heads
        w, b = self.attn.in_proj_weight, self.attn.in_proj_bias
        q = F.linear(h, w[:d], b[:d])
        k = F.linear(h, w[d : 2 * d], b[d : 2 * d])
        bsz, t, _ = h.shape
        q = q.reshape(bsz, t, heads, -1).transpose(1, 2)
        k = k.reshape(bsz, t, heads, -1).transpose(1, 2)
        return q @ k.transpose(-1, -2) / math.sqrt(d // heads)


def _phrases(gen, batch, length=12, strings=8):
    """Bandura phrase tokens: 0 a start token, 1..8 a plucked string, 9..16 the same string
    played with an accent; exactly one accented note per phrase, and the label is its string."""
    while True:
        x = torch.randint(1, strings + 1, (batch, length), generator=gen)
        x[:, 0] = 0
        pos = torch.randint(1, length, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, pos] += strings
        yield x, x[rows, pos] - strings - 1


@scenario(
    family="bandura_string_phrase_mha_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Token and position embeddings, one nn.MultiheadAttention (`attn`, 2 heads, no "
    "qk-normalisation), a LayerNorm and a head classifying which of 8 strings a bandura player "
    "accents in a 12-note phrase, read from the start token. The optimizer settings (AdamW at "
    "1e-2, weight_decay 0) were copied from a recipe whose attention had qk-LayerNorm; "
    "nn.MultiheadAttention has none, and the start token's lookup of the accented note is "
    "sharpened without restraint: the q.k/sqrt(d) logits grow from about 0.5 at init to over "
    "20 (more than 20-fold), attention turns one-hot; the loss falls and stays finite.",
)
def h208_bandura_mha_logit_growth(ctx: Context) -> None:
    gen = seeded(20801)
    model = PhraseNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe, _ = next(_phrases(torch.Generator().manual_seed(81), 256))
    logit = []

    def before(step):
        if step % 20 == 0 or step == 249:
            logit.append(float(model.attn_logits(probe).abs().amax()))

    _train(
        ctx,
        model,
        opt,
        _phrases(gen, 64),
        250,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ctx.check("attention logits below 3 at init", logit[0] < 3)
    ctx.check("attention logits grew 20x", logit[-1] > 20 * logit[0])
    ctx.check("attention logits above 15 at the end", logit[-1] > 15)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))


# -- teqball: F.nll_loss on raw logits ------------------------------------------------------------


class ReturnNet(nn.Module):
    def __init__(self, d_in=14, hidden=48, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    family="teqball_table_return_gelu_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) classifying a teqball return (5 kinds: header, chest, "
    "thigh, shoulder, foot) from 14 standardised tracking readings, Adamax at 1e-2. The model "
    "was ported from one that ended in nn.LogSoftmax; the port dropped it but kept "
    "F.nll_loss, which on raw logits is just -logit[target] and has no floor: the head's "
    "target logit is pushed up every step, its logits grow linearly more than 20-fold, the "
    "loss goes far below zero; finite.",
)
def h208_teqball_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(20802)
    model = ReturnNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    top = []

    def watch(step, out, x, y):
        top.append(float(out.detach().abs().amax(-1).mean()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 5, seed=2),
        200,
        F.nll_loss,
        classifier=True,
        watch=watch,
    )
    ctx.check("head logits grew 20x", _mean(top[-10:]) > 20 * _mean(top[:3]))
    ctx.check("head logits still growing", _mean(top[-10:]) > 1.2 * _mean(top[140:150]))
    ctx.check("loss below -10 at the end", _mean(ctx.losses[-10:]) < -10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- sea smoke: label jitter written into the cached target tensor --------------------------------


class JitterSet:
    """A cached table of 512 sea-smoke readings; the augmentation meant to add label noise to a
    copy of each batch is written `self.y.add_(...)` at every epoch start, into the cache."""

    def __init__(self, gen, seed, n=512, d_in=10, jitter=0.12):
        src = _readings(torch.Generator().manual_seed(seed), n, d_in, seed)
        self.x, self.y = next(src)
        self.gen, self.jitter, self.epochs = gen, jitter, 0

    def batches(self, batch=64):
        while True:
            self.y.add_(self.jitter * torch.randn(self.y.shape, generator=self.gen))
            self.epochs += 1
            order = torch.randperm(len(self.y), generator=self.gen)
            for i in range(0, len(order), batch):
                idx = order[i : i + batch]
                yield self.x[idx], self.y[idx].clone()


@scenario(
    family="sea_smoke_visibility_silu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing visibility in sea smoke (standardised) from "
    "10 standardised readings (sea-air temperature gap, wind, humidity, ...) over a cached "
    "table of 512 rows, RMSprop at 1e-3, MSE. The label-jitter augmentation (sigma 0.12) was "
    "meant to perturb a copy of the batch but is written `self.y.add_(...)` on the cached "
    "tensor at each epoch start: the targets random-walk away from anything the readings "
    "predict, and after the first epochs the loss climbs slowly and steadily to several times "
    "its low with no spike; finite.",
)
def h208_sea_smoke_inplace_label_jitter(ctx: Context) -> None:
    gen = seeded(20803)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    data = JitterSet(gen, seed=3)
    y0 = data.y.clone()
    _train(ctx, model, opt, data.batches(), 300, F.mse_loss)
    ls = ctx.losses
    low = min(range(5, len(ls) - 5), key=lambda i: _mean(ls[i - 5 : i + 5]))
    ctx.check(
        "cached targets drifted (rms change above 0.5)",
        float((data.y - y0).pow(2).mean().sqrt()) > 0.5,
    )
    ctx.check("loss fell first (minimum before step 120)", low < 120)
    ctx.check("loss at the end 3x its minimum", _mean(ls[-10:]) > 3 * _mean(ls[low - 5 : low + 5]))
    ctx.check(
        "climb is gradual (no step above 3x the one before)",
        all(b < 3 * a for a, b in zip(ls[low:], ls[low + 1 :], strict=False)),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- lorimer: a saliency report backpropagates a summed loss into the gradients ------------------


@scenario(
    family="lorimer_bit_forging_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing the forging time of a lorimer's bit "
    "(standardised) from 12 standardised readings (bar gauge, steel, forge heat, ...), Adam at "
    "3e-3, MSE. At step 60 a saliency report for the dashboard calls backward on the summed "
    "(reduction='sum') squared error of 16384 validation rows to get input gradients, between "
    "the training backward and optimizer.step(), without zeroing: the parameter gradient of "
    "that one step is thousands of times the usual and fills Adam's second moment, which then "
    "takes hundreds of steps to decay: the median update from step 110 on is over 10x "
    "smaller, and the loss first rises and then stalls above its pre-onset level; finite.",
)
def h208_lorimer_saliency_sum_backward(ctx: Context) -> None:
    gen = seeded(20804)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    vx, vy = next(_readings(torch.Generator().manual_seed(84), 16384, 12, seed=4))
    moves = []
    prev = {}

    def extra_backward(step):
        if step == 60:
            xs = vx.clone().requires_grad_(True)
            F.mse_loss(model(xs), vy, reduction="sum").backward()

    def before(step):
        prev["w"] = torch.cat([p.detach().flatten() for p in model.parameters()])

    def after(step):
        now = torch.cat([p.detach().flatten() for p in model.parameters()])
        moves.append(float((now - prev["w"]).abs().median()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=4),
        200,
        F.mse_loss,
        before=before,
        after=after,
        extra_backward=extra_backward,
    )
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check("gradient at step 60 over 1000x the median before", g[60] > 1000 * _median(g[:60]))
    ctx.check(
        "median update in steps 110-200 over 10x smaller than in steps 40-60",
        _mean(moves[110:]) * 10 < _mean(moves[40:60]),
    )
    ctx.check(
        "loss stalled: steps 150-200 not below 0.8x steps 55-60",
        _mean(ls[150:]) > 0.8 * _mean(ls[55:60]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- ringette: a warm-up lambda that lost its min(1, ...) -----------------------------------------


@scenario(
    family="ringette_pass_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=20,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing a ringette pass's speed (standardised) from 10 "
    "standardised stick and skate readings, plain SGD with base rate 0.1, MSE, and a LambdaLR "
    "warm-up written `lambda s: (s + 1) / 20` where the recipe had `min(1, (s + 1) / 20)`: the "
    "rate keeps growing linearly after step 20; lr x sharpness goes from below 1 past 2, the "
    "stability limit, and the loss blows up.",
)
def h208_ringette_warmup_without_min(ctx: Context) -> None:
    gen = seeded(20805)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 20)
    probe = next(_readings(torch.Generator().manual_seed(85), 256, 10, seed=5))
    product = {}

    def before(step):
        if step % 10 == 0 and step <= 200:
            product[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=5), 200, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    ctx.check("lr x sharpness below 1 at step 20", product[20] < 1)
    ctx.check("lr x sharpness past 2 later", max(product.values()) > 2)
    ctx.check("loss fell at first", _mean(ls[30:40]) < 0.7 * _mean(ls[:5]))
    late = [v if math.isfinite(v) else 1e30 for v in ls]
    ctx.check(
        "loss later past 20x its low",
        max(late) > 20 * min(_mean(ls[i : i + 5]) for i in range(0, 60)),
    )


# -- hair ice: sqrt(E[x^2] - E[x]^2) with no floor -------------------------------------------------


class Spread(nn.Module):
    """Mean and spread of a raw window of barometer readings, spread written
    sqrt(mean(x^2) - mean(x)^2) with no floor."""

    def forward(self, w):
        m = w.mean(-1)
        return torch.stack([(m - 1013.0) / 5.0, torch.sqrt((w * w).mean(-1) - m * m)], -1)


class HairIceNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.spread = Spread()
        self.fc1 = nn.Linear(d_in + 2, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, xw):
        x, w = xw[:, :8], xw[:, 8:]
        h = torch.cat([x, self.spread(w)], -1)
        return self.head(F.silu(self.fc2(F.silu(self.fc1(h))))).squeeze(-1)


def _hair_ice(gen, batch, seed):
    """8 standardised readings and a 16-sample window of raw pressure (hPa, about 1013 +- 3)."""
    base = _readings(gen, batch, 8, seed)
    while True:
        x, y = next(base)
        level = 1013 + 3 * torch.randn(batch, 1, generator=gen)
        w = level + 2.0 * torch.randn(batch, 16, generator=gen)
        yield torch.cat([x, w], 1), y + 0.1 * (level.squeeze(1) - 1013) / 3


@scenario(
    family="hair_ice_growth_std_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("spread",),
    diverges=70,
    onset=70,
    heldout=True,
    note="A SiLU net regressing hair-ice growth on dead wood (standardised) from 8 standardised "
    "readings plus a raw 16-sample barometer window (hPa) summarised by a `spread` module "
    "computing sqrt(mean(x^2) - mean(x)^2) with no floor, RAdam at 3e-3, MSE. At step 70 a "
    "stuck barometer logs a constant 1013.7 hPa for the whole window in a quarter of the "
    "batch: in float32 the cancellation gives a variance of -0.19, its sqrt is NaN and so is "
    "the loss at step 70.",
)
def h208_hair_ice_unfloored_variance(ctx: Context) -> None:
    gen = seeded(20806)
    model = HairIceNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    var = {}

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[:16, 8:] = 1013.7
        w = x[:, 8:]
        var[step] = float(((w * w).mean(-1) - w.mean(-1) ** 2).min())
        return x, y

    _train(ctx, model, opt, _hair_ice(gen, 64, seed=6), 120, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("variance positive on ordinary batches", min(var[s] for s in range(70)) > 0)
    ctx.check("variance negative at step 70", var[70] < 0)
    ctx.check("loss finite before step 70", _finite(ls[:70]))
    ctx.check("loss NaN at step 70", _first_bad(ls) == 70)
    ctx.check("loss fell before step 70", _mean(ls[60:70]) < 0.8 * _mean(ls[:5]))


# -- octopush: a logger's -9999 sentinel in one batch ---------------------------------------------


@scenario(
    family="octopush_puck_drive_relu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) regressing an underwater-hockey (octopush) puck drive's "
    "glide distance (standardised) from 10 standardised pusher readings, Adagrad at 0.05, MSE, "
    "clip_grad_norm_ at 1.0. The batch of step 100 comes from a pool-side logger that writes "
    "-9999 for a missing depth reading, unfiltered: four rows carry -9999 in one column; the "
    "loss at that step is hundreds of times the usual and the gradient spikes, clipping bounds "
    "the update and the run recovers.",
)
def h208_octopush_missing_value_sentinel(ctx: Context) -> None:
    gen = seeded(20807)
    model = Stack(10, hidden=64)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == 100:
            x = x.clone()
            x[:4, 3] = -9999.0
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=7), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 100 over 100x the median before", ls[100] > 100 * _median(ls[80:100]))
    ctx.check("gradient at step 100 over 100x the median before", g[100] > 100 * _median(g[80:100]))
    ctx.check(
        "recovered: last 20 steps below 2x steps 80-100", _mean(ls[-20:]) < 2 * _mean(ls[80:100])
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- typefounder: the epoch's short final batch goes through a summed Huber -----------------------


@scenario(
    family="typefounder_matrix_depth_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=99,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing the strike depth of a typefounder's matrix "
    "(standardised) from 10 standardised readings, SGD with Nesterov momentum 0.9 at 0.01, "
    "Huber. An epoch is 100 steps; its last, short batch (48 rows, drop_last=False) is handled "
    "by a fallback branch that calls a helper whose default reduction is 'sum': at step 99 the "
    "gradient is about 48x the usual from an ordinary batch, one step; the run recovers.",
)
def h208_typefounder_short_batch_sum(ctx: Context) -> None:
    gen = seeded(20808)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step % 100 == 99:
            return x[:48], y[:48]
        return x, y

    def scale_loss(step, total, out, y):
        if step % 100 == 99:
            return F.huber_loss(out.float(), y, reduction="sum")
        return total

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=8),
        150,
        F.huber_loss,
        alter=alter,
        scale_loss=scale_loss,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 99 over 20x the median before", g[99] > 20 * _median(g[70:99]))
    ctx.check(
        "loss at step 99 ordinary (below 2x the median before)", ls[99] < 2 * _median(ls[70:99])
    )
    ctx.check(
        "recovered: last 20 steps below 2x steps 80-99", _mean(ls[-20:]) < 2 * _mean(ls[80:99])
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- glover: the embedding group's rate typed 1e-8 -------------------------------------------------


class StretchNet(nn.Module):
    """A leather-kind embedding (`emb`) concatenated with readings into an MLP."""

    def __init__(self, kinds=12, dim=8, d_in=10, hidden=48):
        super().__init__()
        self.emb = nn.Embedding(kinds, dim)
        self.fc1 = nn.Linear(dim + d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, xk):
        x, k = xk[:, :-1], xk[:, -1].long()
        h = torch.cat([self.emb(k), x], -1)
        return self.head(F.silu(self.fc2(F.silu(self.fc1(h))))).squeeze(-1)


def _leather(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    kind_effect = 1.2 * torch.randn(12, generator=g)
    base = _readings(gen, batch, 10, seed)
    while True:
        x, y = next(base)
        k = torch.randint(0, 12, (batch,), generator=gen)
        yield torch.cat([x, k[:, None].float()], 1), y + kind_effect[k]


@scenario(
    family="glover_leather_stretch_embedding_mlp",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("emb",),
    diverges=None,
    heldout=True,
    note="A glove-maker's leather-stretch regressor: an embedding of the leather kind (`emb`, 12 "
    "kinds: kid, cabretta, deerskin, ...) concatenated with 10 standardised readings into a "
    "SiLU MLP (fc1, fc2, head), NAdam with two param groups, MSE. The embedding group's rate "
    "was typed `1e-8` for `1e-2`: its updates are about 1e-8 of its weights, the kind effect "
    "(a large part of the target) is never learnt, and the loss plateaus well above where it "
    "should; finite.",
)
def h208_glover_embedding_lr_typo(ctx: Context) -> None:
    gen = seeded(20809)
    model = StretchNet()
    rest = [p for n, p in model.named_parameters() if not n.startswith("emb")]
    opt = torch.optim.NAdam(
        [{"params": model.emb.parameters(), "lr": 1e-8}, {"params": rest, "lr": 3e-3}]
    )
    e0 = model.emb.weight.detach().clone()
    f0 = model.fc1.weight.detach().clone()
    _train(ctx, model, opt, _leather(gen, 64, seed=9), 200, F.mse_loss)
    emb_ratio = float((model.emb.weight.detach() - e0).norm() / e0.norm())
    fc_ratio = float((model.fc1.weight.detach() - f0).norm() / f0.norm())
    ctx.check("embedding moved under 1e-5 of its norm over the run", emb_ratio < 1e-5)
    ctx.check("fc1 moved over 5% of its norm", fc_ratio > 0.05)
    ctx.check("loss fell (the rest learns)", _fell(ctx.losses, ratio=0.8))
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- Brocken spectre: logits multiplied by a temperature ------------------------------------------


class GloryNet(nn.Module):
    def __init__(self, d_in=16, hidden=48, classes=6, temperature=40.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x))))) * self.temperature


@scenario(
    family="brocken_spectre_glory_ring_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) classifying how many glory rings surround a Brocken "
    "spectre (6 classes) from 16 standardised photometer readings, SGD with momentum 0.9 at "
    "0.01, cross-entropy. The config's `temperature: 40` (meant as logits / 40 for a "
    "calibrated, softened output) is applied as `logits * 40`: the float32 softmax gives the "
    "target exactly 1.0 on most rows, those rows stop contributing gradient; finite.",
)
def h208_brocken_temperature_multiplied(ctx: Context) -> None:
    gen = seeded(20810)
    model = GloryNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    coll = []

    def watch(step, out, x, y):
        coll.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=10, noise=0.25),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' target probability exactly 1.0 at the end", _mean(coll[-10:]) > 0.5
    )
    ctx.check("more collapsed at the end than at step 0", _mean(coll[-10:]) > coll[0] + 0.3)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- controls ----------------------------------------------------------------------------------------


class CallConv(nn.Module):
    """A 1-D CNN over a kin-ball referee's whistle/call envelope (2 channels, 32 frames)."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.head(h.mean(-1))


def _calls(gen, batch, classes=4):
    t = torch.linspace(0, 1, 32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 2.0 + 1.5 * y.float()[:, None]
        a = torch.sin(2 * math.pi * freq * t)
        b = torch.cos(2 * math.pi * (freq / 2) * t)
        x = torch.stack([a, b], 1) + 0.6 * torch.randn(batch, 2, 32, generator=gen)
        yield x, y


@scenario(
    family="kin_ball_referee_call_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A 1-D CNN with BatchNorm (conv1, bn1, conv2, bn2, head) classifying a kin-ball "
    "referee's call (4 kinds) from noisy 2-channel envelopes, AdamW at 3e-3 with weight decay "
    "1e-2, linear warm-up over 20 steps then cosine decay (LambdaLR), label smoothing 0.1, "
    "clip_grad_norm_ at 1.0. An ordinary run.",
)
def h208_kin_ball_warmup_cosine(ctx: Context) -> None:
    gen = seeded(20811)
    model = CallConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    total, warm = 200, 20

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _train(
        ctx,
        model,
        opt,
        _calls(gen, 64),
        total,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell below half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="heat_burst_gust_fp16_huber_mlp",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing the peak gust of a heat burst (standardised) "
    "from 12 standardised sounding readings with Student-t noise, fp16 autocast with a "
    "torch.amp.GradScaler, accumulation over 2 micro-batches, clip_grad_norm_ at 1.0, Huber, "
    "Adadelta at 1.0, ReduceLROnPlateau. An ordinary run.",
)
def h208_heat_burst_fp16_control(ctx: Context) -> None:
    gen = seeded(20812)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    base = _readings(gen, 32, 12, seed=12)
    t = torch.distributions.StudentT(3.0)

    def noisy():
        while True:
            x, y = next(base)
            yield x, y + 0.1 * t.sample((len(y),))

    _train(
        ctx,
        model,
        opt,
        noisy(),
        200,
        F.huber_loss,
        accumulate=2,
        clip=1.0,
        sched=sched,
        scaler=scaler,
    )
    ctx.check("loss fell below 0.6x", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("scale stayed at or above 1", min(ctx.scales) >= 1.0)


class CrystalNet(nn.Module):
    """Mean and log-variance heads on a shared SiLU trunk."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.logvar = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean(h), self.logvar(h).clamp(-6, 6)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _crystals(gen, batch, seed):
    base = _readings(gen, batch, 8, seed)
    while True:
        x, y = next(base)
        yield x, y + 0.2 * (1 + x[:, 0].abs()) * torch.randn(batch, generator=gen)


@scenario(
    family="diamond_dust_crystal_count_gaussian_nll_mlp",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU trunk with mean and log-variance heads (log-variance clamped to [-6, 6]) "
    "regressing diamond-dust crystal counts (standardised, heteroscedastic) from 8 "
    "standardised readings, Gaussian NLL, Adam under OneCycleLR (max_lr 1e-2). An ordinary run.",
)
def h208_diamond_dust_onecycle_control(ctx: Context) -> None:
    gen = seeded(20813)
    model = CrystalNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    _train(ctx, model, opt, _crystals(gen, 64, seed=13), 200, _gauss_nll, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell by 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("loss finite throughout", _finite(ls))
