"""Held-out set 215 (``h215_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: an angklung shake-pattern classifier whose attention
dropped the recipe's QK-norm, a red-tide cell-count Huber net taking exp of the log-rate inside
fp16 autocast, a winnowing chaff regressor fed one batch with -9999 missing-value sentinels, a
gig-rowing stroke regressor whose shrink-and-perturb noise was typed 0.2 for 0.002, a milky-sea
glow Poisson net whose rate is a ReLU with no floor before the log, a rainstick Elman RNN whose
recurrent init gain was typed 1.5 for 0.5, a mogul-skiing ReLU classifier on raw readings at an
Adamax rate typed 5e-2 for 5e-4, a clavichord tangent MLP whose layer-wise rate decay was typed
0.01 for 0.9, a hayrick heating classifier whose stage switch applies a loss weight of 40 for
one step, a nacreous-cloud regressor whose hand-written weight decay has the wrong sign, and
three controls (a kulintang gong classifier on ``nn.TransformerEncoderLayer`` with warm-up and
clipping by norm, a dhow sail BatchNorm conv1d regressor with accumulation and OneCycleLR, a
slate-roof tied autoencoder under fp16 autocast with a GradScaler and ReduceLROnPlateau).

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


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


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
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` after the
    optimizer step; ``scale_loss(step, loss)`` returns what is backpropagated; stops after
    logging a NaN loss."""
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
                total = scale_loss(step, total)
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


# -- angklung: an attention pool whose learnt temperature lost its clamp ----------------------------


class ShakePool(nn.Module):
    """Attention pooling with a learnt query: with ``qk_norm`` (the recipe) the logits are the
    cosine of query and key times a fixed 10, bounded by 10; without it, q . k / sqrt(d)."""

    def __init__(self, dim, qk_norm=True):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.qk_norm = qk_norm
        self.last_logits = None

    def forward(self, h):
        k, q = self.k(h), self.query
        if self.qk_norm:
            logits = 10.0 * F.normalize(k, dim=-1) @ F.normalize(q, dim=0)
        else:
            logits = (k @ q) / math.sqrt(h.shape[-1])
        self.last_logits = logits.detach()
        w = torch.softmax(logits, dim=1)
        return (w[..., None] * self.v(h)).sum(1)


class ShakeNet(nn.Module):
    def __init__(self, feat=6, dim=32, classes=4, qk_norm=True):
        super().__init__()
        self.embed = nn.Linear(feat, dim)
        self.act = nn.GELU()
        self.attn = ShakePool(dim, qk_norm)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.attn(self.act(self.embed(x))))


def _shakes(gen, batch, length=10, feat=6, classes=4):
    """Frames of an angklung performance; one frame is cued (feature 0) and the largest of its
    features 1..4 is the label."""
    while True:
        x = torch.randn(batch, length, feat, generator=gen)
        x[..., 0] = 0.0
        cue = torch.randint(0, length, (batch,), generator=gen)
        x[torch.arange(batch), cue, 0] = 2.5
        y = x[torch.arange(batch), cue, 1 : 1 + classes].argmax(-1)
        yield x, y


@scenario(
    family="angklung_shake_pattern_attention_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn", "attn.k"),
    diverges=None,
    heldout=True,
    note="A hand-written attention pool (learnt query, k and v projections) over 10 frames of "
    "an angklung ensemble recording, classifying the shake pattern (4 kinds) of the cued "
    "frame, Adam at 3e-2 without weight decay, cross-entropy. The recipe uses QK-norm (the "
    "cosine of query and key times a fixed 10, so no logit passes 10); the port's refactor "
    "went back to the raw q . k / sqrt(d), and since sharper attention on the cued frame "
    "always lowers the loss the key projection and the query grow unchecked: the attention "
    "logits grow more than 20-fold, past the recipe's bound of 10, and the attention goes "
    "one-hot; the loss is finite.",
)
def h215_angklung_attention_qk_norm_dropped(ctx: Context) -> None:
    gen = seeded(21501)
    model = ShakeNet(qk_norm=False)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    size = {}

    def watch(step, out, x, y):
        size[step] = float(model.attn.last_logits.abs().max(1).values.mean())

    _train(ctx, model, opt, _shakes(gen, 64), 200, F.cross_entropy, classifier=True, watch=watch)
    ls = ctx.losses
    late = _mean([size[s] for s in range(190, 200)])
    ctx.check("attention logits grew more than 20-fold from step 0", late > 20 * size[0])
    ctx.check("mean largest attention logit past the recipe's bound 10", late > 10)
    ctx.check("loss fell and is finite", _fell(ls, ratio=0.5))


# -- red tide: exp of the log-rate inside fp16 autocast --------------------------------------------


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


class BloomNet(nn.Module):
    def __init__(self, d_in=8, hidden=64, log_mean=9.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.rate = Exp()
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.fill_(log_mean)

    def forward(self, x):
        return self.rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _blooms(gen, batch, seed):
    """Eight standardised water readings and the red-tide cell count per litre (about 5e2 to
    3e5, log-normal around a smooth function of the readings)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        log_y = (
            9.0 + 2.2 * torch.tanh(x @ w / math.sqrt(8)) + 0.3 * torch.randn(batch, generator=gen)
        )
        yield x, log_y.exp()


def _thousands_huber(out, y):
    return F.huber_loss(out / 1000.0, y / 1000.0)


@scenario(
    family="red_tide_cell_count_fp16_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("rate", "head"),
    diverges=22,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head, then an exp module `rate`) predicting the Karenia cell "
    "count per litre of a red-tide sample from 8 standardised water readings (temperature, "
    "salinity, nitrate, ...), AdamW at 3e-3, Huber loss on counts in thousands, fp16 autocast "
    "with a GradScaler. The recipe computes the count as exp(log-rate) in float32 outside "
    "autocast; the port moved the exp into the model so the export returns counts, and under "
    "autocast it runs in fp16, whose largest value is 65504 (exp(11.09)). The head starts at "
    "the log of the median count (about 8100); as it learns the blooms (counts up to some 3e5) the exp "
    "overflows to inf for the bloom samples, the loss is inf, the scaler skips the step and "
    "halves its scale, again and again: the scale collapses and training stops.",
)
def h215_red_tide_exp_in_autocast(ctx: Context) -> None:
    gen = seeded(21502)
    model = BloomNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    top = {}

    def watch(step, out, x, y):
        top[step] = float(out.detach().float().max())

    _train(
        ctx, model, opt, _blooms(gen, 64, seed=2), 120, _thousands_huber, scaler=scaler, watch=watch
    )
    ls, sc = ctx.losses, ctx.scales
    bad = _first_bad(ls)
    ctx.check("loss finite before step 22 and inf at step 22", bad == 22 and math.isinf(ls[22]))
    ctx.check("fp16 count output reached inf", any(math.isinf(v) for v in top.values()))
    ctx.check(
        "over half the steps after the first overflow have an inf loss",
        bad is not None and sum(not math.isfinite(v) for v in ls[bad:]) > 0.5 * len(ls[bad:]),
    )
    ctx.check(
        "scaler's scale fell over 1000-fold from its peak",
        max(sc) > 1000 * sc[-1],
    )


# -- winnowing: one batch with -9999 missing-value sentinels in the target ------------------------


@scenario(
    family="winnowing_chaff_fraction_regressor",
    optimizer="SGD (momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting the chaff fraction left in winnowed grain "
    "(standardised) from 10 standardised readings (wind speed, toss height, grain moisture, "
    "...), SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0. The batch read at "
    "step 110 comes from a field logger that writes a missing weighing as -9999; the loader "
    "does not drop those rows and 6 of the 64 targets are -9999. The loss jumps by six orders "
    "of magnitude at that step and the gradient by far more than 100x; clipping bounds the step "
    "and the run recovers; finite.",
)
def h215_winnowing_missing_sentinel_batch(ctx: Context) -> None:
    gen = seeded(21503)
    model = Stack(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == 110:
            y = y.clone()
            y[:6] = -9999.0
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=3, noise=0.1),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at step 110 over 1e4x the median of steps 90-109",
        ls[110] > 1e4 * _median(ls[90:110]),
    )
    ctx.check(
        "gradient at step 110 over 100x the median of steps 90-109",
        gn[110] > 100 * _median(gn[90:110]),
    )
    ctx.check(
        "loss back under 2x its pre-onset level by the end",
        _mean(ls[-20:]) < 2 * _mean(ls[90:110]),
    )
    ctx.check("loss fell before the onset", _fell(ls[:110], ratio=0.6))
    ctx.check("finite", _finite(ls))


# -- gig rowing: shrink-and-perturb noise typed 0.5 for 0.005 -------------------------------------


@scenario(
    family="gig_rowing_stroke_power_regressor",
    optimizer="RAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting the boat-speed gain of a Cornish pilot gig's "
    "stroke (standardised) from 12 standardised readings (stroke rate, catch angle, crew "
    "weight, sea state, ...), RAdam at 3e-3, MSE. The recipe applies shrink-and-perturb once, "
    "at step 120 (weights x 0.9 plus Gaussian noise of std 0.002 to keep the net plastic for "
    "the next season's data); the config has `perturb_std: 0.2`. The noise wipes out much of "
    "what was learnt: the loss jumps over 10-fold at step 120, nothing in the data, the "
    "gradients' scale or the rate explains it, and the run climbs back down to its old level; "
    "finite.",
)
def h215_gig_rowing_shrink_perturb_typo(ctx: Context) -> None:
    gen = seeded(21504)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    noise = torch.Generator().manual_seed(4)

    def before(step):
        if step == 120:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.9).add_(0.2 * torch.randn(p.shape, generator=noise))

    _train(
        ctx, model, opt, _readings(gen, 64, 12, seed=4, noise=0.1), 300, F.mse_loss, before=before
    )
    ls = ctx.losses
    pre = _mean(ls[100:120])
    ctx.check("loss at step 120 over 10x the mean of steps 100-119", ls[120] > 10 * pre)
    ctx.check("loss fell before the onset", _fell(ls[:120], ratio=0.5))
    ctx.check("loss back under 1.5x its pre-onset level by the end", _mean(ls[-20:]) < 1.5 * pre)
    ctx.check("finite", _finite(ls))


# -- milky sea: a ReLU rate with no floor before the log -------------------------------------------


class GlowNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)
        self.rate = nn.ReLU()  # the recipe: softplus plus 1e-6
        with torch.no_grad():
            self.head.bias.fill_(1.5)

    def forward(self, x):
        return self.rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _glows(gen, batch, seed):
    """Eight standardised ocean readings (bacterial density proxy, temperature, wind, ...) and
    the count of glow bursts a ship's camera records per minute (Poisson, mostly 0 to 5)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        rate = torch.exp(0.3 + 1.2 * torch.tanh(x @ w / math.sqrt(8)))
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


@scenario(
    family="milky_sea_glow_burst_poisson_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("rate",),
    diverges=21,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head, then a rate module) predicting the rate of bioluminescent "
    "glow bursts per minute in a milky-sea event from 8 standardised ocean readings, Adagrad "
    "at 5e-3, Poisson NLL written by hand as rate - y log(rate). The recipe's rate is "
    "softplus(head) + 1e-6; the port used a ReLU, which gives exactly 0 as soon as the head "
    "goes negative for one sample: log(0) is -inf and y log(rate) is 0 x -inf = NaN for a "
    "zero count, so the loss is NaN at step 21.",
)
def h215_milky_sea_relu_rate_log_zero(ctx: Context) -> None:
    gen = seeded(21505)
    model = GlowNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-3)
    low = {}

    def watch(step, out, x, y):
        low[step] = float(out.detach().min())

    _train(ctx, model, opt, _glows(gen, 64, seed=5), 250, _poisson_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss NaN at the declared step", bad == 21 and math.isnan(ls[21]))
    ctx.check("rate exactly 0 for some sample at that step", bad is not None and low[bad] == 0.0)
    ctx.check(
        "rate positive for every sample before it",
        bad is not None and min(low[s] for s in range(bad)) > 0,
    )
    ctx.check("loss finite and falling before", bad is not None and _fell(ls[:bad], ratio=0.95))


# -- rainstick: an Elman RNN whose recurrent init gain was typed 1.5 for 0.5 ---------------------


class PebbleRNN(nn.Module):
    """A hand-written Elman RNN (ih, hh, ReLU) reading the rainstick's sound envelope, then a
    head on the last state."""

    def __init__(self, feat=4, hidden=32, gain=0.5):
        super().__init__()
        self.ih = nn.Linear(feat, hidden)
        self.hh = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.hh.weight, gain=gain)
        nn.init.zeros_(self.hh.bias)

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hh.out_features)
        for t in range(x.shape[1]):
            h = F.relu(self.ih(x[:, t]) + self.hh(h))
        return self.head(h).squeeze(-1)


def _envelopes(gen, batch, seed, length=30):
    """A rainstick's sound envelope in 30 frames (4 standardised band energies) and the
    pebble-fall time (standardised), mostly set by the early frames."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    decay = torch.exp(-torch.arange(length, dtype=torch.float32) / 8.0)
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        y = torch.tanh((x @ w * decay).sum(1) / 2.0)
        yield x, y


def _through_time(model, x, y) -> float:
    """|d loss / d h_0| / |d loss / d h_T|: how the gradient grows back through time."""
    hs = []
    h = torch.zeros(x.shape[0], model.hh.out_features)
    for t in range(x.shape[1]):
        h = F.relu(model.ih(x[:, t]) + model.hh(h))
        h.retain_grad()
        hs.append(h)
    F.mse_loss(model.head(h).squeeze(-1), y).backward()
    return float(hs[0].grad.norm() / hs[-1].grad.norm())


@scenario(
    family="rainstick_pebble_fall_elman_rnn",
    optimizer="SGD (Nesterov)",
    cause="exploding_gradients",
    where=("hh",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Elman RNN (ih, hh, head) reading 30 frames of a rainstick's "
    "sound envelope and predicting how long the pebbles take to fall (standardised), SGD with "
    "Nesterov momentum 0.9 at 1e-3, MSE. The recurrent weights are initialised orthogonal "
    "with `gain=1.5` where the recipe has 0.5: every step through time multiplies the state "
    "and the backpropagated gradient by more than 1, so the gradient grows as it goes back "
    "through the frames (where a 0.5-initialised copy's shrinks by orders of magnitude) and the gradient norm at init "
    "is hundreds of times that of a 0.5-initialised copy. The small rate keeps the run alive: the loss starts far above its level and comes down; finite.",
)
def h215_rainstick_recurrent_gain_typo(ctx: Context) -> None:
    gen = seeded(21506)
    model = PebbleRNN(gain=1.5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    x0, y0 = next(_envelopes(torch.Generator().manual_seed(56), 128, seed=6))
    torch.manual_seed(0)
    proper = PebbleRNN(gain=0.5)
    for net in (model, proper):
        F.mse_loss(net(x0), y0).backward()
    ratio = grad_norm(model) / grad_norm(proper)
    model.zero_grad(set_to_none=True)
    through_time = _through_time(model, x0, y0)
    proper_through_time = _through_time(proper, x0, y0)
    model.zero_grad(set_to_none=True)
    _train(ctx, model, opt, _envelopes(gen, 64, seed=6), 150, F.mse_loss)
    ctx.check("gradient at init over 100x that of a gain-0.5 copy", ratio > 100)
    ctx.check("gradient grows back through time (first frame over the last)", through_time > 1)
    ctx.check(
        "first-to-last-frame gradient ratio over 1000x that of the gain-0.5 copy",
        through_time > 1000 * proper_through_time,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 0 over 100x the median of the last 20", gn[0] > 100 * _median(gn[-20:])
    )
    ctx.check("loss at step 0 over 5x its final level", ls[0] > 5 * _mean(ls[-20:]))
    ctx.check("finite", _finite(ls))


# -- mogul skiing: Adamax at a rate typed 5e-2 for 5e-4 on raw readings kills the ReLUs --------------


def _runs(gen, batch, seed):
    """Twelve raw positive readings of a mogul-skiing run (speed in km/h, air time in ms, turn
    count, knee angle in degrees, ...) and whether the judges scored it clean."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([45.0, 600.0, 30.0, 110.0, 8.0, 25.0, 350.0, 60.0, 15.0, 90.0, 5.0, 40.0])
    w = torch.randn(12, generator=g)
    while True:
        z = torch.randn(batch, 12, generator=gen)
        x = scale * (1.0 + 0.25 * z).clamp(min=0.05)
        y = ((z @ w) / math.sqrt(12) + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield x, y


@scenario(
    family="mogul_skiing_clean_run_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) deciding whether a mogul-skiing run is "
    "scored clean from 12 raw positive readings (speed in km/h, air time in ms, knee angle in "
    "degrees, ...), Adamax, BCE with logits. The config's `lr: 5e-2` was meant as 5e-4: with "
    "positive inputs a unit's fc1 weights all move together and the first steps push most fc1 "
    "units below zero on every run; they never fire again: the share of dead fc1 units goes "
    "from under a third to over 70% and the loss stays near chance; finite.",
)
def h215_mogul_adamax_lr_typo(ctx: Context) -> None:
    gen = seeded(21507)
    model = Stack(12, hidden=64)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-2)
    probe = next(_runs(torch.Generator().manual_seed(57), 512, seed=7))[0]
    dead0 = dead_fraction(model.act1(model.fc1(probe)))
    _train(ctx, model, opt, _runs(gen, 64, seed=7), 150, F.binary_cross_entropy_with_logits)
    with torch.no_grad():
        dead1 = dead_fraction(model.act1(model.fc1(probe)))
    ls = ctx.losses
    ctx.check("under a third of fc1 units dead at init", dead0 < 0.34)
    ctx.check("over 70% of fc1 units dead at the end", dead1 > 0.7)
    ctx.check("finite", _finite(ls))
    ctx.check("loss stays near chance (last 20 above 0.55)", _mean(ls[-20:]) > 0.55)


# -- clavichord: layer-wise rate decay typed 0.01 for 0.9 --------------------------------------------


class TangentNet(nn.Module):
    def __init__(self, d_in=10, width=64, depth=3):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for lin in self.layers:
            x = F.gelu(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="clavichord_tangent_bebung_llrd_mlp",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (layers.0 .. layers.2, head) predicting the pitch bend of a clavichord "
    "note under bebung (standardised) from 10 standardised readings (key pressure, tangent "
    "height, string tension, ...), RMSprop with layer-wise rate decay (one param group per "
    "layer, rate 1e-3 x decay ** distance from the head), MSE. The config's `llrd: 0.01` was "
    "meant as 0.9: layers.1 gets 1e-7 and layers.0 1e-9, so their updates are some 1e-6 and "
    "1e-8 of their weights per step, while the head moves normally; the loss falls a little "
    "and levels off well above what the net can reach; finite.",
)
def h215_clavichord_llrd_typo(ctx: Context) -> None:
    gen = seeded(21508)
    model = TangentNet()
    decay = 0.01  # meant 0.9
    mods = [*model.layers, model.head]
    groups = [
        {"params": m.parameters(), "lr": 1e-3 * decay ** (len(mods) - 1 - i)}
        for i, m in enumerate(mods)
    ]
    opt = torch.optim.RMSprop(groups)
    ratios: dict[str, list[float]] = {"layers.0": [], "layers.1": [], "head": []}
    prev = {}

    def before(step):
        for name in ratios:
            prev[name] = model.get_submodule(name).weight.detach().clone()

    def after(step):
        for name in ratios:
            w = model.get_submodule(name).weight.detach()
            ratios[name].append(float((w - prev[name]).norm() / w.norm()))

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=8), 200, F.mse_loss, before=before, after=after
    )
    ls = ctx.losses
    r0, r1, rh = (_median(ratios[n]) for n in ("layers.0", "layers.1", "head"))
    ctx.check("layers.0 update/weight ratio under 1e-6", r0 < 1e-6)
    ctx.check("layers.1 update/weight ratio under 1e-5", r1 < 1e-5)
    ctx.check("head update/weight ratio over 1e-4", rh > 1e-4)
    ctx.check("finite", _finite(ls))


# -- hayrick: a stage switch applies a loss weight of 40 for one step ------------------------------


@scenario(
    family="hayrick_heating_risk_classifier",
    optimizer="NAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) classifying the spontaneous-heating risk of a hayrick (4 "
    "levels) from 14 standardised readings (core temperature, moisture, bale density, ...), "
    "NAdam at 2e-3, cross-entropy. The curriculum switches stage at step 100; the switch reads "
    "the new stage's loss weight from the config as `weight_pct: 40` and applies it raw for "
    "that step before the normaliser divides it by 100 from the next step on: one step's "
    "gradient is 40x too large (the batch is normal); the run goes on; finite.",
)
def h215_hayrick_stage_weight_pct(ctx: Context) -> None:
    gen = seeded(21509)
    model = Stack(14, hidden=64, out=4)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def scale_loss(step, total):
        return total * 40.0 if step == 100 else total

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 4, seed=9, noise=0.6),
        200,
        F.cross_entropy,
        classifier=True,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 100 over 20x the median of steps 80-99",
        gn[100] > 20 * _median(gn[80:100]),
    )
    ctx.check(
        "loss at step 100 within 1.5x of steps 90-99 (the data are normal)",
        ls[100] < 1.5 * _mean(ls[90:100]),
    )
    ctx.check("loss fell over the run and is finite", _fell(ls, ratio=0.7))


# -- nacreous cloud: a hand-written weight decay with the wrong sign ------------------------------


@scenario(
    family="nacreous_cloud_iridescence_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting the iridescence brightness of a nacreous "
    "(polar stratospheric) cloud (standardised) from 10 standardised readings (stratospheric "
    "temperature, sun elevation, ...), plain SGD at 5e-2, MSE plus a hand-written L2 term "
    "written `loss - wd * sum(p ** 2)` for `+`, wd 0.1. The loss first falls; then the "
    "weights grow geometrically, the tanh units saturate and the head's weights swell, and "
    "the data loss climbs steadily for the rest of the run, with no spike and no single "
    "bad step; finite.",
)
def h215_nacreous_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(21510)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)
    wd = 0.1

    def scale_loss(step, total):
        return total - wd * sum((p**2).sum() for p in model.parameters())

    norm0 = float(
        torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in model.parameters()]))
    )
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=10), 230, F.mse_loss, scale_loss=scale_loss)
    norm1 = float(
        torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in model.parameters()]))
    )
    ctx.check("weight norm grew over 2x", norm1 > 2 * norm0)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _mean(ls[max(0, i - 5) : i + 5]))
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell over the first 50 steps", _fell(ls[:50], ratio=0.8))
    ctx.check(
        "last 20 steps over 2x the lowest 10-step mean",
        _mean(ls[-20:]) > 2 * _mean(ls[low - 5 : low + 5]),
    )


# -- controls ------------------------------------------------------------------------------------


class GongEncoder(nn.Module):
    """An input projection, learnt positions, one ``nn.TransformerEncoderLayer`` (pre-LN,
    batch-first), mean pooling and a head."""

    def __init__(self, feat=6, dim=32, heads=4, length=10, classes=4):
        super().__init__()
        self.embed = nn.Linear(feat, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.encoder = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.encoder(self.embed(x) + self.pos)
        return self.head(self.norm(h).mean(1))


@scenario(
    family="kulintang_gong_row_encoder_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A classifier on one `nn.TransformerEncoderLayer` (4 heads, pre-LN, no dropout) over "
    "10 frames of a kulintang gong-row performance, naming the cued frame's gong (4 kinds), "
    "AdamW at 2e-3 with weight decay 1e-2, a 20-step linear warm-up then cosine decay, "
    "cross-entropy with label smoothing 0.1 and gradient clipping by norm at 1.0. A healthy "
    "run.",
)
def h215_kulintang_encoder_clip_control(ctx: Context) -> None:
    gen = seeded(21511)
    model = GongEncoder()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)

    def shape(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / 180))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _shakes(gen, 64),
        200,
        loss_fn,
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.7))


class SailConv(nn.Module):
    """Conv1d + BatchNorm over a sail's wind record, pooled, then a head."""

    def __init__(self, channels=3, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.head(h.mean(-1)).squeeze(-1)


def _winds(gen, batch, seed, length=32):
    """A 32-sample record of three standardised wind channels (speed, direction sine and
    cosine) and the dhow's speed over ground (standardised), from the record's smoothed
    energy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = torch.randn(batch, 3, length, generator=gen).cumsum(-1) / math.sqrt(length)
        y = torch.tanh((w[:, None] * x).sum(1).mean(-1)) + 0.1 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="dhow_lateen_sail_bn_conv1d_regressor",
    optimizer="SGD (momentum)",
    cause="healthy",
    heldout=True,
    note="A Conv1d + BatchNorm net (conv1, bn1, conv2, bn2, head) predicting a dhow's speed "
    "over ground under its lateen sail (standardised) from a 32-sample wind record (3 "
    "channels), SGD with momentum 0.9 under OneCycleLR (peak 5e-2), Huber loss, gradient "
    "accumulation over 2 micro-batches of 32. A healthy run.",
)
def h215_dhow_sail_onecycle_control(ctx: Context) -> None:
    gen = seeded(21512)
    model = SailConv()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-2, total_steps=150)
    _train(ctx, model, opt, _winds(gen, 32, seed=12), 150, F.huber_loss, sched=sched, accumulate=2)
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.6))


class TiedAutoencoder(nn.Module):
    """enc then a decoder that reuses enc's weight transposed (tied), plus its own bias."""

    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _slates(gen, batch, seed):
    """Sixteen standardised tap-test readings of a roofing slate, lying near a 4-dim subspace."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, 16, generator=g) / 2
    while True:
        x = torch.randn(batch, 4, generator=gen) @ basis + 0.1 * torch.randn(
            batch, 16, generator=gen
        )
        yield x, x


@scenario(
    family="slater_roof_tap_tied_autoencoder",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="A tied-weight tanh autoencoder (enc; the decoder reuses enc.weight transposed) "
    "compressing 16 tap-test readings of roofing slates to a 6-dim code, Adam at 1e-2, MSE, "
    "fp16 autocast with a GradScaler and ReduceLROnPlateau. A healthy run.",
)
def h215_slater_tied_autoencoder_amp_control(ctx: Context) -> None:
    gen = seeded(21513)
    model = TiedAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    _train(ctx, model, opt, _slates(gen, 64, seed=13), 200, F.mse_loss, sched=sched, scaler=scaler)
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.5))
