"""Held-out set 324 (``h324_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a duck-herding pen-time set transformer over padded flocks
whose attention group's learning rate is typed 2e-2 for 2e-4 (attention logits grow), a sjoelen
disc-slide tanh MLP whose warm-up peak is typed 2.0 for 0.2 (past 2/sharpness), a pancake-race
lap-time ReLU regressor fed one shard logged in milliseconds (one corrupted batch), a slide-whistle
glide GELU regressor whose auxiliary loss weight is read as 1e6 for one step (Adam's second moment
poisoned), a nail-violin bow-pressure ReLU Elman RNN whose identity recurrent init is scaled 1.2
(gradients grow through time), an egg-toss catch-count Poisson net whose rate lost its softplus
(log 0, NaN), an organ-voicing pipe-speech Conv1d classifier whose stem group's learning rate is
typed 1e-8 (stem frozen), a schlagball throw-zone classifier whose temperature is divided where
it should multiply (softmax saturates), a chito disc-knockdown ReLU BCE classifier whose learning
rate is typed 5e-2 for 5e-4 (ReLUs die), a platform-tennis serve-speed Huber regressor whose
partial-batch rescale multiplies one step's loss by 64 (one gradient burst), and three controls
(a snow-chimney vent-temperature dropout MLP with ReduceLROnPlateau on validation loss, a
barrel-rolling lane Conv1d classifier with OneCycleLR and label smoothing, a cornamuse reed-buzz
tied autoencoder with warm-up and accumulation).

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
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moves(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        n: float((p.detach() - before[n]).norm() / (before[n].norm() + 1e-12))
        for n, p in model.named_parameters()
    }


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
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, accumulate)``
    returns the micro-batch loss actually backpropagated, ``after(step)`` runs after the optimizer
    step, ``plateau()`` returns the validation loss for a ReduceLROnPlateau ``sched``. Stops after
    a non-finite loss; returns the step it stopped at."""
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
            total = backprop(step, loss, accumulate) if backprop else loss / accumulate
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
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step
    return steps


def _gauges(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.5 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y - 0.3 + noise * torch.randn(batch, generator=gen)


def _sorts(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class (classes overlap a little)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _waves(gen, batch, classes, seed, length=48, channels=2):
    """Short two-channel waveforms: each class has its own pair of frequencies and decay."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    decay = 0.01 + 0.05 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase) * torch.exp(-decay[y][:, None, None] * t)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU, dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.drop(self.features(x)))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- duck herding: a set transformer whose attention group's lr is typed 2e-2 ---------------------


class MaskedAttention(nn.Module):
    """Hand-written multi-head attention with a key padding mask; keeps its largest valid logit."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.peak = 0.0

    def forward(self, query, keys, key_mask):
        b, tq, d = query.shape
        tk = keys.shape[1]
        hd = d // self.heads
        q = self.q(query).reshape(b, tq, self.heads, hd).transpose(1, 2)
        k = self.k(keys).reshape(b, tk, self.heads, hd).transpose(1, 2)
        v = self.v(keys).reshape(b, tk, self.heads, hd).transpose(1, 2)
        logits = q @ k.transpose(-2, -1) / math.sqrt(hd)
        valid = key_mask[:, None, None, :]
        self.peak = float(logits.detach().masked_fill(~valid, 0.0).abs().max())
        logits = logits.masked_fill(~valid, float("-inf"))
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, tq, d))


class SetBlock(nn.Module):
    """Self-attention block over the set's members (SAB), padded members masked out as keys."""

    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MaskedAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, mask)
        return x + self.ff(self.ln2(x))


class FlockSetTransformer(nn.Module):
    """Set transformer: embed each duck, two SAB blocks, pooling by attention from a learned seed
    (PMA), head. Input (x, mask) with x (batch, max_set, features), mask True for real ducks."""

    def __init__(self, d_in=5, dim=32, heads=2):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(SetBlock(dim, heads) for _ in range(2))
        self.seed = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.pool = MaskedAttention(dim, heads)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, inputs):
        x, mask = inputs
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, mask)
        pooled = self.pool(self.seed.expand(h.shape[0], 1, -1), h, mask)
        return self.head(self.ln_f(pooled[:, 0])).squeeze(-1)


def _flocks(gen, batch, max_ducks=12):
    """Flocks of 3-12 runner ducks: position (m), velocity (m/s), distance to the dog; the target
    is the (standardised) time the sheepdog needs to pen them: spread, straggler and heading."""
    while True:
        n = torch.randint(3, max_ducks + 1, (batch,), generator=gen)
        mask = torch.arange(max_ducks)[None, :] < n[:, None]
        centre = 4.0 * torch.randn(batch, 1, 2, generator=gen)
        pos = centre + torch.randn(batch, max_ducks, 2, generator=gen)
        vel = 0.5 * torch.randn(batch, max_ducks, 2, generator=gen)
        dog = pos.norm(dim=-1, keepdim=True)
        x = torch.cat([pos / 4.0, vel, dog / 6.0], -1) * mask[..., None]
        m = mask.float()
        mean = (pos * m[..., None]).sum(1) / n[:, None]
        spread = (((pos - mean[:, None]) ** 2).sum(-1) * m).sum(1) / n
        straggler = (dog[..., 0] * m).amax(1)
        heading = ((vel * m[..., None]).sum(1) * mean).sum(-1) / (n * (1 + mean.norm(dim=-1)))
        y = 0.4 * spread + 0.15 * straggler + 0.8 * heading + 0.05 * n - 1.6
        yield (x, mask), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="duck_herding_flock_pen_time_set_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn", "pool"),
    diverges=None,
    heldout=True,
    note="A hand-written set transformer (embed, two pre-LN self-attention blocks blocks.N.attn with q, k, v, proj and a key padding mask for the padded members, pooling by multi-head attention 'pool' from a learned seed, ln_f, head) predicting a sheepdog's pen time from a flock of 3-12 runner ducks padded to 12, AdamW with two parameter groups, MSE, 200 steps. The attention group (every q, k, v and proj) is meant to train at 2e-4 (a tenth of the base 2e-3) and is typed 2e-2 with weight decay 0: q and k grow and the largest valid pre-softmax logit q.k/sqrt(d) grows by well over an order of magnitude while the loss stays finite.",
)
def h324_duck_herding_attention_lr_typo(ctx: Context) -> None:
    gen = seeded(32401)
    model = FlockSetTransformer()
    attn = [p for n, p in model.named_parameters() if ".attn." in n or n.startswith("pool.")]
    rest = [p for n, p in model.named_parameters() if not (".attn." in n or n.startswith("pool."))]
    opt = torch.optim.AdamW(
        [
            {"params": attn, "lr": 2e-2, "weight_decay": 0.0},  # meant 2e-4
            {"params": rest, "weight_decay": 1e-2},
        ],
        lr=2e-3,
    )
    peaks = []

    def watch(step, out, x, y):
        peaks.append(max(model.blocks[0].attn.peak, model.blocks[1].attn.peak, model.pool.peak))

    _loop(ctx, model, opt, _flocks(gen, 32), 200, F.mse_loss, watch=watch)
    ctx.check(
        "the peak attention logit grows over 20x from step 0", _mean(peaks[-20:]) > 20 * peaks[0]
    )
    ctx.check(
        "it is still higher late than at steps 60-80",
        _mean(peaks[-20:]) > 1.2 * _mean(peaks[60:80]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sjoelen: the warm-up peak typed 2.0 for 0.2 takes SGD past 2/sharpness ------------------------


def _sharpness(model, loss_fn, batch, iters=20):
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
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


WARM_SJ = 100
PEAK_SJ = 2.0  # meant 0.2


@scenario(
    family="sjoelen_disc_slide_score_tanh_mlp",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=15,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) scoring a sjoelen (Dutch shuffleboard) disc's slide from eight release readings, plain SGD, MSE, a linear warm-up over 100 steps. The warm-up's peak learning rate is typed 2.0 for 0.2: the loss's top Hessian eigenvalue (measured by power iteration every 5 steps) is about 6-7, so from about step 15 the learning rate is past the 2/sharpness stability limit; the loss first oscillates, then grows geometrically and overflows to inf before the warm-up ends.",
)
def h324_sjoelen_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(32402)
    model = Trunk(8, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = next(_gauges(torch.Generator().manual_seed(7), 256, 8, 32402))
    lams, lrs = {}, []

    def before(step):
        lr = PEAK_SJ * min(1.0, (step + 1) / WARM_SJ)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        if step % 5 == 0:
            lams[step] = _sharpness(model, F.mse_loss, probe)

    _loop(ctx, model, opt, _gauges(gen, 64, 8, 32402), 200, F.mse_loss, before=before)
    ls = ctx.losses
    low = min(ls[:15])
    past = next(
        (s for s in range(len(lrs)) if lrs[s] > 2.0 / lams[max(k for k in lams if k <= s)]), None
    )
    blown = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("the loss fell while the learning rate was under 2/sharpness", low < 0.5 * ls[0])
    ctx.check(
        "the learning rate passed 2/sharpness (power iteration) before the loss blew up",
        past is not None and blown is not None and past < blown,
    )
    ctx.check(
        "the loss blew up over 1e6x its early low",
        _first_bad(ls) is not None or max(ls) > 1e6 * low,
    )


# -- pancake race: one shard's split times logged in milliseconds ---------------------------------

ONSET_PC = 120


@scenario(
    family="pancake_race_lap_time_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PC,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting an Olney-style pancake race's lap time from ten standardised readings (split times, flip counts, stride), SGD with momentum 0.9, MSE, gradient clipping at 1.0, 220 steps. The batch at step 120 comes from a shard whose first two columns (the split times) were logged in milliseconds instead of seconds, so they are a thousand times their scale: that one batch's loss jumps by orders of magnitude, the clipped step disturbs the weights, and the run recovers on the ordinary batches that follow.",
)
def h324_pancake_race_millisecond_shard(ctx: Context) -> None:
    gen = seeded(32403)
    model = Trunk(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scale = []

    def alter(step, x, y):
        if step == ONSET_PC:
            x = x.clone()
            x[:, :2] = x[:, :2] * 1000.0  # the shard in milliseconds
        scale.append(float(x.abs().max()))
        return x, y

    _loop(ctx, model, opt, _gauges(gen, 64, 10, 32403), 220, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    pre = _median(ls[ONSET_PC - 20 : ONSET_PC])
    ctx.check(
        "the shard's inputs are over 100x the usual scale", scale[ONSET_PC] > 100 * _median(scale)
    )
    ctx.check("the loss of the bad batch is over 100x the steps before", ls[ONSET_PC] > 100 * pre)
    ctx.check("the run recovers within 100 steps", _mean(ls[-10:]) < 2.0 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- slide whistle: an auxiliary loss weight read as 1e6 for one step ------------------------------

ONSET_SW = 100


@scenario(
    family="slide_whistle_pitch_glide_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SW,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a slide whistle's pitch glide from twelve standardised readings (slide position, breath pressure, bore), Adam with betas (0.9, 0.999), MSE, 240 steps. At step 100 the auxiliary-loss weight schedule is reloaded from a config and for one step its warm-up length (1e6 samples) is read in place of the weight, so that step's backpropagated loss is 1e6x: one gradient about 1e6 times the usual fills Adam's second moment, and with beta2 0.999 every update afterwards is far smaller (the gradients themselves are back to normal), so the loss stalls.",
)
def h324_slide_whistle_aux_weight_read_as_step(ctx: Context) -> None:
    gen = seeded(32404)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    moves, prev = [], {}

    def backprop(step, loss, accumulate):
        weight = 1e6 if step == ONSET_SW else 1.0  # the warm-up length read as the weight
        return weight * loss / accumulate

    def before(step):
        prev.update(_snapshot(model))

    def after(step):
        moves.append(
            math.sqrt(
                sum(float(((p.detach() - prev[n]) ** 2).sum()) for n, p in model.named_parameters())
            )
        )

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 12, 32404),
        240,
        F.mse_loss,
        backprop=backprop,
        before=before,
        after=after,
    )
    g = ctx.grad_norms
    ctx.check("the gradient at onset is over 1000x the median", g[ONSET_SW] > 1000 * _median(g))
    ctx.check(
        "the gradients after onset are of the usual order (under 10x those before)",
        _median(g[ONSET_SW + 60 :]) < 10 * _median(g[ONSET_SW - 30 : ONSET_SW]),
    )
    ctx.check(
        "updates 60 steps on are under 1/20 of those before",
        _median(moves[ONSET_SW + 60 :]) < _median(moves[ONSET_SW - 30 : ONSET_SW]) / 20,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- nail violin: the IRNN identity init scaled 1.2 -----------------------------------------------


class BowRNN(nn.Module):
    """A hand-written ReLU Elman RNN: h = relu(inp(x_t) + rec(h)); head reads the last state."""

    def __init__(self, d_in=3, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.inp.weight.mul_(0.2)
            self.inp.bias.zero_()
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _bowing(gen, batch, length=24):
    """Bow pressure, bow speed and contact point over 24 frames; the target is the nail's
    (standardised) loudness, which follows pressure x speed with a lag."""
    while True:
        p = 0.5 + 0.3 * torch.randn(batch, length, generator=gen).cumsum(1) / math.sqrt(length)
        s = 0.5 + 0.3 * torch.randn(batch, length, generator=gen).cumsum(1) / math.sqrt(length)
        c = torch.rand(batch, length, generator=gen)
        x = torch.stack([p - 0.5, s - 0.5, c - 0.5], -1)
        y = (p * s)[:, -8:].mean(1) * 2.0 - c[:, -4:].mean(1) - 0.2
        yield x, y


GAIN_NV = 1.2  # IRNN: identity recurrent init, gain meant 1.0


@scenario(
    family="nail_violin_bow_pressure_relu_elman_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU Elman RNN (inp, rec, head; h = relu(inp(x_t) + rec(h))) reading 24 frames of bow pressure, speed and contact point on a nail violin's rod and predicting its loudness, SGD with momentum 0.9 at 1e-2, MSE, 150 steps. The IRNN recipe initialises the recurrent weights to the identity; the init is written with a gain of 1.2 (meant 1.0), so backpropagation through the 24 steps multiplies the gradient at every step: the gradient reaching the first hidden state is tens of times the one at the last, the first steps' gradients are enormous and the loss blows up by many orders of magnitude within ten steps (with gain 1.0 the same run trains).",
)
def h324_nail_violin_irnn_gain(ctx: Context) -> None:
    gen = seeded(32405)
    model = BowRNN(gain=GAIN_NV)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ratios = []
    ctx.attach(model, opt)
    batches = _bowing(gen, 32)
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first, last = model.states[0].grad, model.states[-1].grad
        ratios.append(float(first.norm() / (last.norm() + 1e-30)))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("the first hidden state's gradient is over 20x the last's at step 0", ratios[0] > 20)
    ctx.check("the gradient norm grows over 1e4x within 10 steps", max(g[:10]) > 1e4 * g[0])
    ctx.check(
        "the loss blows up over 1e6x its start",
        _first_bad(ls) is not None or max(ls[:20]) > 1e6 * ls[0],
    )


# -- egg toss: the Poisson rate lost its softplus --------------------------------------------------


def _catches(gen, batch, d_in, seed):
    """Throw distance, wind, glove grip ... and the number of clean catches before the egg breaks
    (a Poisson count whose rate is often well under one)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(1.2 * x @ w / math.sqrt(d_in) - 0.5)
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="egg_toss_catch_count_poisson_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("head",),
    diverges=97,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting how many clean catches an egg-toss pair makes before the egg breaks (a Poisson count, often 0) from eight standardised readings, Adamax, a hand-written Poisson NLL, 200 steps planned. The rate is meant to be softplus(head) + 1e-6 and is written relu(head) with no floor; the head's bias starts at 2 so every rate is positive at first, but as the net learns the low-count throws one rate reaches exactly 0: log(0) = -inf, 0 x -inf = NaN, and the loss is NaN at step 97, where the run stops.",
)
def h324_egg_toss_rate_without_softplus(ctx: Context) -> None:
    gen = seeded(32406)
    model = Trunk(8, 64)
    with torch.no_grad():
        model.head.bias.fill_(2.0)  # start near the mean count
    opt = torch.optim.Adamax(model.parameters(), lr=5e-4)
    low = []

    def nll(out, y):
        rate = F.relu(out)  # meant F.softplus(out) + 1e-6
        return (rate - y * torch.log(rate) + torch.lgamma(y + 1)).mean()

    def watch(step, out, x, y):
        low.append(float(F.relu(out.detach()).min()))

    stop = _loop(ctx, model, opt, _catches(gen, 64, 8, 32406), 200, nll, watch=watch)
    ls = ctx.losses
    ctx.check("every rate is positive for the first 20 steps", min(low[:20]) > 0)
    ctx.check("the loss is finite until it turns NaN at step 97", _first_bad(ls) == 97 == stop)
    ctx.check("a rate is exactly 0 at the NaN step", low[-1] == 0.0)


# -- organ voicing: the stem group's learning rate typed 1e-8 --------------------------------------


class PipeConv(nn.Module):
    """conv1 (stem) -> conv2 -> global average -> head, over a two-channel waveform."""

    def __init__(self, classes, channels=2, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2, stride=2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x))
        h = F.gelu(self.conv2(h))
        return self.head(h.mean(-1))


@scenario(
    family="organ_voicing_pipe_speech_conv1d_classifier",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("conv1",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU Conv1d classifier (conv1 stem, conv2, mean pooling, head) grading an organ voicer's pipe speech (five classes: prompt, slow, chiffy, overblown, fluty) from the pipe's two-channel onset waveform, Adam with two parameter groups, cross-entropy, 160 steps. The stem group's learning rate is meant to be 1e-2 like the rest and is typed 1e-8: conv1 moves by well under 1e-5 of its norm for the whole run while conv2 and the head train and the loss falls on the random stem features.",
)
def h324_organ_voicing_stem_lr_typo(ctx: Context) -> None:
    gen = seeded(32407)
    model = PipeConv(5)
    stem = list(model.conv1.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("conv1.")]
    opt = torch.optim.Adam([{"params": stem, "lr": 1e-8}, {"params": rest}], lr=1e-2)  # meant 1e-2
    start = _snapshot(model)
    _loop(ctx, model, opt, _waves(gen, 32, 5, 32407), 160, F.cross_entropy, classifier=True)
    mv = _moves(model, start)
    ctx.check(
        "conv1 moved under 1e-5 of its norm", max(mv["conv1.weight"], mv["conv1.bias"]) < 1e-5
    )
    ctx.check(
        "conv2 and the head moved over 1e-2", min(mv["conv2.weight"], mv["head.weight"]) > 1e-2
    )
    ctx.check("the loss fell", _fell(ctx.losses))


# -- schlagball: the temperature divided where it should multiply ----------------------------------

TAU_SB = 0.02  # a temperature of 50 written as its inverse and then divided by


class ZoneNet(Trunk):
    def forward(self, x):
        return self.head(self.features(x)) / TAU_SB  # meant logits / 50 (or * TAU_SB)


@scenario(
    family="schlagball_throw_zone_tempered_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying which of six field zones a schlagball throw lands in from ten standardised release readings, NAdam at 3e-3, cross-entropy, 200 steps. The logits are meant to be softened by a temperature of 50 (logits / 50); the config stores it as its inverse 0.02 and the code still divides, so the logits are 50x too sharp: the share of rows whose float32 softmax gives the target probability exactly 1.0 (and the others exactly 0) climbs from none to about 40% over the run.",
)
def h324_schlagball_temperature_inverted(ctx: Context) -> None:
    gen = seeded(32408)
    model = ZoneNet(10, 64, out=6)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    frac = []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 10, 6, 32408, spread=0.6),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 5% of rows saturated at step 0", frac[0] < 0.05)
    ctx.check("over a quarter of rows' softmax is exactly 1.0 late", _mean(frac[-20:]) > 0.25)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- chito: the learning rate typed 5e-2 for 5e-4 kills the ReLUs ---------------------------------


@scenario(
    family="chito_disc_knockdown_relu_bce_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting whether a chito throw (a disc thrown at a wooden cylinder topped with coins) knocks the cylinder down, from ten standardised readings, Adam, BCE with logits, 200 steps. The learning rate is meant to be 5e-4 and is typed 5e-2: the large early updates push fc2's pre-activations negative on every input, and the share of fc2's ReLU units that never fire on a fixed 512-throw probe climbs from under a tenth to about three quarters and stays there; the dead units get no gradient and never come back, so the net keeps only a fraction of its capacity while the loss stays noisy and high.",
)
def h324_chito_lr_typo_dead_relus(ctx: Context) -> None:
    gen = seeded(32409)
    model = Trunk(10, 64)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)  # meant 5e-4
    probe = next(_sorts(torch.Generator().manual_seed(3), 512, 10, 2, 32409))[0]
    dead1, dead2 = [], []

    def after(step):
        with torch.no_grad():
            h1 = model.act1(model.fc1(probe))
            dead1.append(dead_fraction(h1))
            dead2.append(dead_fraction(model.act2(model.fc2(h1))))

    def bce(out, y):
        return F.binary_cross_entropy_with_logits(out, y.float())

    _loop(ctx, model, opt, _sorts(gen, 64, 10, 2, 32409, spread=1.6), 200, bce, after=after)
    ctx.check("under 15% of fc2's units are dead at the start", dead2[0] < 0.15)
    ctx.check("over half of fc2's units are dead late", _mean(dead2[-20:]) > 0.5)
    ctx.check("they do not come back", _mean(dead2[-20:]) >= _mean(dead2[90:110]))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- platform tennis: the partial-batch rescale multiplies one step's loss by 64 --------------------

ONSET_PT = 150


@scenario(
    family="platform_tennis_serve_speed_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PT,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a platform-tennis serve's speed from ten standardised readings, SGD with Nesterov momentum 0.9, Huber loss, gradient clipping at 5.0, 250 steps. At step 150 (an epoch boundary) the loop's rescale for a partial last batch, loss * batch_size / len(last_batch), is applied to a full ordinary batch with len(last_batch) left at 1 from the previous epoch: that one step's backpropagated loss is 64x, its gradient about 64x the usual; the clipped step disturbs the weights and the run recovers.",
)
def h324_platform_tennis_partial_batch_rescale(ctx: Context) -> None:
    gen = seeded(32410)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss, accumulate):
        last_len = 1 if step == ONSET_PT else 64  # stale from the previous epoch's last batch
        return loss * 64 / last_len / accumulate

    _loop(
        ctx, model, opt, _gauges(gen, 64, 10, 32410), 250, F.huber_loss, backprop=backprop, clip=5.0
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("the gradient at onset is over 30x the median", g[ONSET_PT] > 30 * _median(g))
    ctx.check("no other step's gradient is over 10x the median", sorted(g)[-2] < 10 * _median(g))
    ctx.check("the loss had fallen before onset", _fell(ls[:ONSET_PT]))
    ctx.check("the loss recovers", _mean(ls[-10:]) < 2.0 * _mean(ls[ONSET_PT - 10 : ONSET_PT]))


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="snow_chimney_vent_temperature_dropout_mlp",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP with dropout 0.2 before the head (fc1, act1, fc2, act2, drop, head) predicting the vent temperature of a fumarolic snow chimney from ten standardised readings, RMSprop at 1e-3, MSE, 250 steps, ReduceLROnPlateau (factor 0.5, patience 10) stepped on a held-out validation batch's loss evaluated in eval mode. A healthy control.",
)
def h324_snow_chimney_dropout_plateau(ctx: Context) -> None:
    gen = seeded(32411)
    model = Trunk(10, 64, dropout=0.2)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    xv, yv = next(_gauges(torch.Generator().manual_seed(5), 256, 10, 32411))
    vals = []

    def validate():
        model.eval()
        with torch.no_grad():
            vals.append(float(F.mse_loss(model(xv), yv)))
        return vals[-1]

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 10, 32411),
        250,
        F.mse_loss,
        sched=sched,
        plateau=validate,
    )
    ctx.check("the training loss fell", _fell(ctx.losses))
    ctx.check("the validation loss fell below half its start", vals[-1] < 0.5 * vals[0])


@scenario(
    family="barrel_rolling_race_lane_conv1d_classifier",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU Conv1d classifier (conv1, conv2, mean pooling, head) telling which of four lanes a barrel-rolling racer's barrel is in from a two-channel accelerometer trace, Adamax, OneCycleLR up to 2e-2, cross-entropy with label smoothing 0.1, gradient clipping at 1.0, 200 steps. A healthy control.",
)
def h324_barrel_rolling_onecycle(ctx: Context) -> None:
    gen = seeded(32412)
    model = PipeConv(4)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-2, total_steps=200)
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(1) == y).float().mean()))

    def smooth(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _waves(gen, 32, 4, 32412),
        200,
        smooth,
        classifier=True,
        sched=sched,
        clip=1.0,
        watch=watch,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("late accuracy is over 80%", _mean(acc[-20:]) > 0.8)


class TiedAutoencoder(nn.Module):
    """enc (Linear) -> tanh -> decoder reusing enc.weight transposed, with its own bias."""

    def __init__(self, d_in=32, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _spectra(gen, batch, seed, bins=32, rank=5):
    """Cornamuse reed-buzz spectra: a few harmonic templates mixed per note, plus noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, bins, generator=g) / math.sqrt(bins) * 2.0
    while True:
        mix = torch.randn(batch, rank, generator=gen) * 0.6
        yield mix @ basis + 0.05 * torch.randn(batch, bins, generator=gen), None


@scenario(
    family="cornamuse_reed_buzz_tied_autoencoder",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tied-weight autoencoder (enc; the decoder reuses enc.weight transposed with its own bias) compressing cornamuse reed-buzz spectra (32 bins) to 8 codes, RAdam with weight decay, a 20-step linear warm-up then cosine decay (LambdaLR), gradient accumulation over 2 micro-batches, MSE, 200 steps. A healthy control.",
)
def h324_cornamuse_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(32413)
    model = TiedAutoencoder()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2, weight_decay=1e-4)

    def shape(step):
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / 180))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    batches = ((x, x) for x, _ in _spectra(gen, 32, 32413))
    _loop(ctx, model, opt, batches, 200, F.mse_loss, sched=sched, accumulate=2)
    ctx.check("the loss fell below a third of its start", _fell(ctx.losses, ratio=0.33))
