"""Held-out set 213 (``h213_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a charcuterie cure weight-loss regressor whose hand-written
decoupled weight decay adds the decay instead of subtracting it, a clavichord tangent-touch
classifier that divides its logits by a contrastive temperature of 0.01, a txalaparta
strike-interval Elman RNN whose recurrent init gain was typed 3 for 1, a bossaball spike-count
Poisson net whose rate head lost its softplus (log 0), a pargeting plaster set-time regressor
whose curriculum table reads a loss weight of 50 for 0.5 at one step, a Catatumbo lightning
flash-rate regressor fed one shard in raw radiometer counts, a shibori dye-resist 1-D CNN whose
layer-wise rate decay was typed 0.05 for 0.95, an ikat warp-tension regressor trained on
targets in centinewtons under fp16 autocast, a fog-bow brightness regressor whose epoch-end
logging line scaled one step's loss by the dataset size under Adam, a footgolf kick-distance
ReLU MLP at an Adagrad rate typed 1.0 for 0.01, and three controls (an apnea dive-phase GRU
classifier with AdamW, warm-up + cosine, clipping and label smoothing, a light-pillar crystal
multi-label MLP with BCE with logits, NAdam and OneCycleLR, a suminagashi ink-ring tied
autoencoder with SGD momentum, accumulation and ReduceLROnPlateau).

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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
    stop_on_nonfinite=False,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` after the
    optimizer step; ``scale_loss(step, loss)`` returns what is backpropagated; stops after
    logging a NaN loss (or any non-finite one with ``stop_on_nonfinite``)."""
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
        if math.isnan(shown) or (stop_on_nonfinite and not math.isfinite(shown)):
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


# -- charcuterie: a load cell recalibration applied to the labels at every read ------------------


def _cure_batches(gen, batch, gain):
    """Weight-loss labels read through the curing-room scale; the pipeline's "recalibration"
    `scale.factor *= gain` runs at every read instead of once per shard."""
    factor = 1.0
    for x, y in _readings(gen, batch, 10, seed=3):
        factor *= gain
        yield x, y * factor


@scenario(
    family="charcuterie_cure_weight_loss_relu_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting the weight lost by a dry-cured salami "
    "(standardised) from 10 standardised readings (room humidity, temperature, casing "
    "diameter, ...), SGD with momentum 0.9 at 0.01, MSE. The label pipeline recalibrates the "
    "curing-room scale with `factor *= 1.008` at every batch read where it was meant to run "
    "once per shard, so the targets drift upwards by 0.8% a step. The loss first falls, then "
    "climbs slowly and steadily for the rest of the run as the model lags the drifting "
    "labels; no single step, batch or layer is at fault and the run never produces a NaN.",
)
def h213_charcuterie_label_drift(ctx: Context) -> None:
    gen = seeded(21301)
    model = Stack(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _train(ctx, model, opt, _cure_batches(gen, 128, 1.008), 300, F.mse_loss)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    windows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 20)]
    ctx.check("loss fell first (its minimum before step 150)", low < 150)
    ctx.check("loss at the end over 3x its minimum", _mean(ls[-10:]) > 3 * ls[low])
    rise = windows[windows.index(min(windows)) :]
    ctx.check(
        "the climb is slow: no 20-step window over 2x the one before",
        max(b / a for a, b in zip(rise, rise[1:], strict=False)) < 2,
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- clavichord: logits divided by a contrastive temperature --------------------------------------


class TemperedStack(Stack):
    """The classifier's logits divided by the shared config's temperature."""

    def __init__(self, tau):
        super().__init__(12, hidden=64, out=6, act=nn.GELU)
        self.tau = tau

    def forward(self, x):
        return super().forward(x) / self.tau


@scenario(
    family="clavichord_tangent_touch_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) classifying the touch a clavichord player used on a key "
    "(6 kinds: legato, portato, Bebung, ...) from 12 standardised tangent-sensor readings, "
    "Adamax at 1e-2, cross-entropy. The classifier shares a config with a contrastive "
    "pre-training stage and divides its logits by its `temperature: 0.01`, meant for the "
    "similarity loss only: the logits reaching the softmax are 100x too large, and within a few "
    "dozen steps most rows' float32 softmax gives the target exactly 1.0 (the rest near 0); "
    "the loss is finite but carried by a few confidently wrong rows.",
)
def h213_clavichord_contrastive_temperature(ctx: Context) -> None:
    gen = seeded(21302)
    tau = 0.01  # the contrastive stage's temperature, read by the classifier too
    collapsed = {}
    raw = {}
    saturated = {}

    def watch(step, out, x, y):
        collapsed[step] = collapsed_fraction(out.detach(), y)
        raw[step] = collapsed_fraction(out.detach() * tau, y)
        saturated[step] = collapsed_fraction(out.detach(), out.detach().argmax(1))

    model = TemperedStack(tau)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 6, seed=4, noise=0.8),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    late = _mean([collapsed[s] for s in range(130, 150)])
    ctx.check("over half the rows' softmax is exactly 1.0 on the target late", late > 0.5)
    ctx.check(
        "the same logits without the temperature collapse no row",
        _mean([raw[s] for s in range(130, 150)]) < 0.05,
    )
    ctx.check("collapse grew from the start", late > _mean([collapsed[s] for s in range(3)]) + 0.3)
    ctx.check(
        "over half the rows' top probability is exactly 1.0 late",
        _mean([saturated[s] for s in range(130, 150)]) > 0.5,
    )
    ctx.check("loss finite", _finite(ls))


# -- txalaparta: an Elman RNN whose recurrent init gain was typed 3 for 1 --------------------------


class ElmanCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.inp(x) + self.rec(h))


class StrikeRNN(nn.Module):
    def __init__(self, d_in=3, hidden=48, gain=1.0):
        super().__init__()
        self.hidden = hidden
        self.cell = ElmanCell(d_in, hidden)
        nn.init.normal_(self.cell.rec.weight, std=gain / math.sqrt(hidden))
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _strikes(gen, batch, length=40):
    """Plank strikes of two players (timing jitter, loudness, hand); the target is the
    interval expected next, a smooth function of the last few strikes."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh(x[:, -3:, 0].sum(1) / 2) + 0.5 * x[:, -1, 1] * x[:, -2, 2]
        yield x, 0.8 * y


@scenario(
    family="txalaparta_strike_interval_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.rec", "cell"),
    diverges=None,
    heldout=True,
    note="A hand-written Elman RNN (cell.inp, cell.rec, tanh; head on the last state) reading "
    "40 strikes of a txalaparta duo (timing, loudness, hand) and predicting the next "
    "interval, plain SGD at 0.05, MSE. The recurrent weights are initialised "
    "normal(0, gain / sqrt(hidden)) with `gain: 3` typed for 1: the recurrence is chaotic and "
    "the gradient grows backwards through time, hundreds of times larger at the first strike "
    "than at the last and the whole gradient orders of magnitude above the same net at gain "
    "1; the gradient keeps bursting through the run and the loss jumps about.",
)
def h213_txalaparta_recurrent_gain(ctx: Context) -> None:
    gen = seeded(21303)
    model = StrikeRNN(gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    through = {}
    rec_grads = []
    _orig_step = opt.step

    def step_and_read(*a, **k):
        st = model.states
        if st and st[0].grad is not None:
            through[len(through)] = float(st[0].grad.norm() / (st[-1].grad.norm() + 1e-12))
        rec_grads.append(float(model.cell.rec.weight.grad.norm()))
        return _orig_step(*a, **k)

    opt.step = step_and_read
    _train(ctx, model, opt, _strikes(gen, 32), 150, F.mse_loss)
    ls = ctx.losses
    torch.manual_seed(21303)
    calm = StrikeRNN(gain=1.0)
    x, y = next(_strikes(torch.Generator().manual_seed(21303), 32))
    F.mse_loss(calm(x), y).backward()
    calm_rec = float(calm.cell.rec.weight.grad.norm())
    ctx.check("gradient at the first strike over 100x the last one's at step 0", through[0] > 100)
    ctx.check(
        "recurrent gradient at step 0 over 30x the gain-1 net's", rec_grads[0] > 30 * calm_rec
    )
    ctx.check(
        "recurrent gradient over 10x the gain-1 net's at a tenth of the steps or more",
        sum(g > 10 * calm_rec for g in rec_grads) >= len(rec_grads) / 10,
    )
    ctx.check("loss finite", _finite(ls))


# -- bossaball: a Poisson rate head whose softplus was swapped for a ReLU -------------------------


class RateHead(nn.Module):
    """log of a non-negative rate; the recipe uses softplus (strictly positive)."""

    def __init__(self, hidden):
        super().__init__()
        self.lin = nn.Linear(hidden, 1)
        nn.init.constant_(self.lin.bias, 1.0)
        self.act = nn.ReLU()  # the recipe: nn.Softplus()

    def forward(self, h):
        return torch.log(self.act(self.lin(h))).squeeze(-1)


class SpikeCounter(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.rate = RateHead(hidden)

    def forward(self, x):
        return self.rate(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _spikes(gen, batch, d_in=8, seed=5):
    """Spikes per rally from the trampoline side (many rallies with none)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(1.2 * torch.tanh(x @ w / math.sqrt(d_in)) - 0.6)
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(log_rate, y):
    return (log_rate.exp() - y * log_rate).mean()


@scenario(
    family="bossaball_spike_count_poisson_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("rate", "rate.act"),
    diverges=49,
    onset=49,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, and a rate head: rate.lin, rate.act, then log) predicting the "
    "number of spikes a bossaball attacker makes from the trampoline per rally (Poisson, many "
    "rallies with none) from 8 standardised tracking readings, RAdam at 1e-2, Poisson NLL "
    "on the log-rate. The port swapped the head's softplus for a ReLU; the bias starts at 1 so "
    "every rate is positive at first, but as the net learns the quiet rallies some rates are "
    "pushed to exactly 0 and log 0 = -inf gives a NaN loss (0 * -inf) at step 49.",
)
def h213_bossaball_relu_rate_log(ctx: Context) -> None:
    gen = seeded(21304)
    model = SpikeCounter()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    zeros = {}

    def watch(step, out, x, y):
        zeros[step] = int(torch.isinf(out.detach()).sum())

    _train(ctx, model, opt, _spikes(gen, 64), 200, _poisson_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss NaN at step 49", bad == 49 and math.isnan(ls[49]))
    ctx.check(
        "a log-rate of -inf (rate exactly 0) at that step", bad is not None and zeros[bad] > 0
    )
    ctx.check("no rate was 0 before", all(zeros[s] == 0 for s in range(bad or 0)))
    ctx.check("loss fell before", _fell(ls[: bad or 0], k=5, ratio=0.95))


# -- pargeting: a curriculum table whose loss weight reads 50 for 0.5 -----------------------------


@scenario(
    family="pargeting_plaster_set_time_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting the set time of lime plaster for pargeting "
    "(standardised) from 9 standardised readings (lime putty age, hair content, wall "
    "moisture, ...), SGD with Nesterov momentum 0.9 at 0.02, Huber loss. A curriculum table "
    "weights the loss per stage; the entry for stage 2, used at step 100 only before the "
    "next entry takes over, reads `50` where every other entry is a fraction (0.5): one step's "
    "gradient is 100x the others, from no data problem; the loss jumps after it and recovers.",
)
def h213_pargeting_curriculum_weight(ctx: Context) -> None:
    gen = seeded(21305)
    model = Stack(9, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    table = {100: 50.0}

    def scale_loss(step, loss):
        return loss * table.get(step, 1.0)

    _train(ctx, model, opt, _readings(gen, 64, 9, seed=6), 250, F.huber_loss, scale_loss=scale_loss)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[80:100])
    ctx.check(
        "gradient at step 100 over 30x the median of the 20 steps before", gn[100] > 30 * before
    )
    ctx.check(
        "no other step over 5x that median",
        max(gn[80:100] + gn[101:]) < 5 * max(_median(gn[80:100]), _median(gn[150:])),
    )
    ctx.check("loss jumped after the spike", max(ls[101:106]) > 2 * _mean(ls[90:100]))
    ctx.check(
        "loss recovered and finite", _finite(ls) and _mean(ls[-10:]) < 1.5 * _mean(ls[90:100])
    )


# -- Catatumbo: one shard in raw radiometer counts ------------------------------------------------


@scenario(
    family="catatumbo_lightning_flash_rate_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting the flash rate of the Catatumbo lightning over "
    "Lake Maracaibo (standardised) from 10 standardised readings (humidity, CAPE, lake "
    "temperature, two radiometer channels, ...), RMSprop at 1e-3, MSE, gradient clipping at "
    "1. One shard, read at step 130, came from a station whose exporter skipped the "
    "radiometer conversion: its two radiometer columns are raw counts, some 1000x the "
    "standardised values. That batch's loss is over a million times the run's; the clipped "
    "step dents the fit and the loss recovers.",
)
def h213_catatumbo_raw_counts_shard(ctx: Context) -> None:
    gen = seeded(21306)
    model = Stack(10, hidden=64)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    seen = {}

    def alter(step, x, y):
        if step == 130:
            x = x.clone()
            x[:, 3:5] = 1000.0 * x[:, 3:5].abs() + 2000.0
        seen[step] = float(x.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=7), 250, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    ctx.check(
        "the batch at step 130 has inputs over 100x any other",
        seen[130] > 100 * max(v for s, v in seen.items() if s != 130),
    )
    ctx.check("loss at step 130 over 100x the median before", ls[130] > 100 * _median(ls[110:130]))
    ctx.check("loss recovered and finite", _finite(ls) and _mean(ls[-10:]) < 2 * _mean(ls[110:130]))


# -- shibori: layer-wise rate decay typed 0.05 for 0.95 -------------------------------------------


class DyeNet(nn.Module):
    """Conv1d stem, two conv blocks, pooled head: the dye depth along a resist fold."""

    def __init__(self, ch=16):
        super().__init__()
        self.stem = nn.Conv1d(2, ch, 5, padding=2)
        self.act0 = nn.ReLU()
        self.block1 = nn.Conv1d(ch, ch, 3, padding=1)
        self.act1 = nn.ReLU()
        self.block2 = nn.Conv1d(ch, ch, 3, padding=1)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(ch, 1)

    def forward(self, x):
        h = self.act0(self.stem(x))
        h = h + self.act1(self.block1(h))
        h = h + self.act2(self.block2(h))
        return self.head(h.mean(-1)).squeeze(-1)


def _folds(gen, batch, length=32):
    """Binding tension and dye-bath profile along a fold; target: mean penetration."""
    kernel = torch.tensor([0.2, 0.5, 1.0, 0.5, 0.2])
    while True:
        x = torch.randn(batch, 2, length, generator=gen)
        band = F.conv1d(x[:, :1], kernel.view(1, 1, -1), padding=2)
        y = torch.tanh(band).mean((1, 2)) * 2 + 0.5 * (x[:, 1] * x[:, 0]).mean(-1)
        yield x, y


@scenario(
    family="shibori_dye_resist_depth_conv1d",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("stem",),
    diverges=None,
    heldout=True,
    note="A 1-D CNN (stem, block1, block2 with residuals, mean-pooled head) predicting how deep "
    "indigo penetrates a shibori resist fold from its binding-tension and dye-bath profiles "
    "(2 x 32), Adam at 3e-3 with layer-wise rate decay, MSE. The group rates are "
    "`base * decay ** depth` from the head down, with `decay: 0.05` typed for 0.95: the stem "
    "(depth 3) trains at 3e-3 * 1.25e-4, its updates some 2e-6 of its weights at most each step, "
    "effectively frozen, while the blocks and head learn and the loss still falls.",
)
def h213_shibori_layer_decay_typo(ctx: Context) -> None:
    gen = seeded(21307)
    model = DyeNet()
    base, decay = 3e-3, 0.05  # meant 0.95
    groups = [
        {"params": model.head.parameters(), "lr": base},
        {"params": model.block2.parameters(), "lr": base * decay},
        {"params": model.block1.parameters(), "lr": base * decay**2},
        {"params": model.stem.parameters(), "lr": base * decay**3},
    ]
    opt = torch.optim.Adam(groups)
    stem0 = model.stem.weight.detach().clone()
    head0 = model.head.weight.detach().clone()
    ratios = []
    prev = {}

    def before(step):
        prev["w"] = model.stem.weight.detach().clone()

    def after(step):
        w = model.stem.weight.detach()
        ratios.append(float((w - prev["w"]).norm() / w.norm()))

    _train(ctx, model, opt, _folds(gen, 64), 200, F.mse_loss, before=before, after=after)
    ls = ctx.losses
    stem_moved = float((model.stem.weight.detach() - stem0).norm() / stem0.norm())
    head_moved = float((model.head.weight.detach() - head0).norm() / head0.norm())
    ctx.check("stem's update under 1e-5 of its weights at every step", max(ratios) < 1e-5)
    ctx.check(
        "stem moved under 1e-3 over the run while the head moved over 10%",
        stem_moved < 1e-3 and head_moved > 0.1,
    )
    ctx.check("loss fell and is finite", _fell(ls, ratio=0.7))


# -- ikat: warp-tension targets in centinewtons under fp16 autocast -------------------------------


@scenario(
    family="ikat_warp_tension_fp16_silu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting the warp tension on an ikat loom from 8 "
    "standardised readings (thread count, dye-bundle weight, beam angle, ...), Adam at 5e-2, "
    "MSE, under fp16 autocast with a GradScaler. The targets were left in centinewtons "
    "(about 3e4 to 9e4) instead of standardised: the head's fp16 output climbs towards them "
    "and passes 65,504, the largest fp16 value, so the output and the loss are inf; the "
    "scaler skips the steps and shrinks its scale while the forward keeps overflowing.",
)
def h213_ikat_centinewton_targets_fp16(ctx: Context) -> None:
    gen = seeded(21308)
    model = Stack(8, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    scaler = torch.amp.GradScaler("cpu")
    peak = {}

    def tension(batches):
        for x, y in batches:
            yield x, 6e4 + 2e4 * y

    def watch(step, out, x, y):
        peak[step] = float(out.detach().float().abs().max())

    _train(
        ctx,
        model,
        opt,
        tension(_readings(gen, 64, 8, seed=8)),
        200,
        F.mse_loss,
        watch=watch,
        scaler=scaler,
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the head's fp16 output was finite and under 65,504 at step 0", peak[0] < 65504)
    ctx.check("the output overflowed to inf later", bad is not None and math.isinf(peak[bad]))
    ctx.check(
        "the scaler's scale fell after the overflow",
        bad is not None and ctx.scales[-1] < ctx.scales[max(bad - 1, 0)],
    )


# -- fog bow: a logging unit conversion applied in place before backward ----------------------------


@scenario(
    family="fog_bow_arc_brightness_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting the brightness of a fog bow (standardised) "
    "from 6 standardised readings (droplet size, sun elevation, fog depth, ...), Adam at "
    "1e-3, MSE. At the end of the first epoch (step 80) an epoch-end logging hook converts "
    "the loss to the photometer's micro-units in place, `loss *= 1e6`, before `backward` "
    "runs: one gradient a million times the others fills Adam's second moment. The spike's "
    "first moment drags the weights for a few dozen steps (the loss jumps about 8x), then "
    "the updates are over 10x smaller than before and the loss stays up, no longer improving.",
)
def h213_fog_bow_logging_units_in_place(ctx: Context) -> None:
    gen = seeded(21309)
    model = Stack(6, hidden=64, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sizes = []
    prev = {}

    def before(step):
        prev["p"] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        sizes.append(
            float(
                sum(
                    (p.detach() - q).norm() ** 2
                    for p, q in zip(model.parameters(), prev["p"], strict=True)
                ).sqrt()
            )
        )

    def scale_loss(step, loss):
        return loss * 1e6 if step == 80 else loss  # the logging conversion, in place

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, seed=9),
        240,
        F.mse_loss,
        before=before,
        after=after,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 80 over 1000x the median before", gn[80] > 1000 * _median(gn[60:80])
    )
    ctx.check(
        "updates over steps 160-240 over 10x smaller than before the onset",
        _mean(sizes[160:240]) < _mean(sizes[60:80]) / 10,
    )
    ctx.check(
        "loss stalled: the last 20 steps no better than 0.9x steps 140-160",
        _mean(ls[-20:]) > 0.9 * _mean(ls[140:160]),
    )
    ctx.check("loss finite", _finite(ls))


# -- footgolf: an SGD rate typed 1.0 for 1e-2 ----------------------------------------------------


@scenario(
    family="footgolf_kick_distance_relu_mlp",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting the carry of a footgolf kick "
    "(standardised) from 10 standardised readings (approach speed, plant-foot angle, ball "
    "pressure, wind, ...), SGD with momentum 0.9 at `1.0` where the config meant `1e-2` (the "
    "exponent was lost), MSE. The first few overshooting steps drive fc2's biases far "
    "negative: within a few dozen steps every fc2 unit is off on every input and never fires "
    "again, no gradient reaches fc1, and the loss sits at the target's variance (the head's "
    "bias) for the rest of the run.",
)
def h213_footgolf_rate_exponent_lost(ctx: Context) -> None:
    gen = seeded(21310)
    model = Stack(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    probe = next(_readings(torch.Generator().manual_seed(77), 512, 10, seed=10))[0]
    dead = {}

    def after(step):
        with torch.no_grad():
            dead[step] = dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe)))))

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=10), 200, F.mse_loss, after=after)
    ls = ctx.losses
    torch.manual_seed(21310)
    calm = Stack(10, hidden=64)
    copt = torch.optim.SGD(calm.parameters(), lr=1e-2, momentum=0.9)
    cl = []
    for _, (x, y) in zip(range(200), _readings(seeded(21310), 64, 10, seed=10), strict=False):
        loss = F.mse_loss(calm(x), y)
        copt.zero_grad()
        loss.backward()
        copt.step()
        cl.append(float(loss.detach()))
    ctx.check("fc2 under 20% dead after the first step", dead[0] < 0.2)
    ctx.check(
        "fc2 over 95% dead over the last 100 steps", min(dead[s] for s in range(100, 200)) > 0.95
    )
    ctx.check("loss at the end over 3x the run at 1e-2", _mean(ls[-20:]) > 3 * _mean(cl[-20:]))
    ctx.check("loss finite", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


class DivePhaseGRU(nn.Module):
    def __init__(self, d_in=3, hidden=32, classes=4):
        super().__init__()
        self.embed = nn.Linear(d_in, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.gru(torch.tanh(self.embed(x)))
        return self.head(out[:, -1])


def _dive_logs(gen, batch, length=24, classes=4, noise=0.1):
    """Depth-rate, heart-rate and fin-kick traces of a freediver; the label is the phase the
    last window belongs to (descent, bottom, ascent, surface) read from the sign pattern of
    the depth rate over the trace (label noise: ``noise``)."""
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = torch.tensor([1.0, 0.0, -1.0, 0.0])[y]
        kick = torch.tensor([1.0, 0.2, 1.0, -0.5])[y]
        x = 0.6 * torch.randn(batch, length, 3, generator=gen)
        x[..., 0] += rate[:, None]
        x[..., 2] += kick[:, None]
        flip = torch.rand(batch, generator=gen) < noise
        y = torch.where(flip, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


@scenario(
    family="apnea_dive_phase_gru_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a GRU sequence classifier (embed, gru, head on the last state) reading 24 "
    "steps of a freediver's depth-rate, heart-rate and fin-kick traces and naming the dive "
    "phase (4 kinds, 10% noisy labels), AdamW at 3e-3 with weight decay 0.01, a 15-step "
    "linear warm-up then cosine decay, gradient clipping at 1, label smoothing 0.1.",
)
def h213_apnea_gru_control(ctx: Context) -> None:
    gen = seeded(21311)
    model = DivePhaseGRU()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 160

    def shape(s):
        if s < 15:
            return (s + 1) / 15
        return 0.5 * (1 + math.cos(math.pi * (s - 15) / (steps - 15)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    _train(
        ctx,
        model,
        opt,
        _dive_logs(gen, 32),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    x, y = next(_dive_logs(torch.Generator().manual_seed(5), 512, noise=0.0))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell and is finite", _fell(ls, ratio=0.6))
    ctx.check("held-out accuracy over 80% on clean labels", acc > 0.8)


def _halos(gen, batch, d_in=10, labels=6, seed=12):
    """Readings of ice-crystal columns under a light; labels: which pillar features show."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, labels, generator=g)
    b = torch.randn(labels, generator=g) * 0.5
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        logits = 1.5 * x @ w / math.sqrt(d_in) + b
        y = (torch.rand(batch, labels, generator=gen) < torch.sigmoid(3 * logits)).float()
        yield x, y


@scenario(
    family="light_pillar_crystal_multilabel_bce_mlp",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="Control: a GELU MLP (fc1, fc2, head) tagging which features a light pillar shows "
    "(6 labels: upper pillar, lower pillar, colour banding, ...) from 10 standardised "
    "readings of the plate-crystal layer, multi-label BCE with logits, NAdam under a "
    "OneCycleLR schedule peaking at 5e-3.",
)
def h213_light_pillar_multilabel_control(ctx: Context) -> None:
    gen = seeded(21312)
    model = Stack(10, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    _train(ctx, model, opt, _halos(gen, 64), steps, F.binary_cross_entropy_with_logits, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell and is finite", _fell(ls, ratio=0.85))
    ctx.check("loss ended under 0.6 (chance is ln 2)", _mean(ls[-10:]) < 0.6)


class TiedRings(nn.Module):
    """A tied autoencoder: the decoder uses the encoder's weight transposed."""

    def __init__(self, d_in=64, code=16):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


@scenario(
    family="suminagashi_ink_ring_tied_autoencoder",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Control: a tied tanh autoencoder (enc, its weight transposed as the decoder) "
    "compressing 8x8 scans of suminagashi ink-ring prints (the bundled digits stand in) to "
    "16 codes, SGD with momentum 0.9 at 0.05, MSE, gradient accumulation over 2 batches, "
    "ReduceLROnPlateau on the training loss.",
)
def h213_suminagashi_tied_autoencoder_control(ctx: Context) -> None:
    gen = seeded(21313)
    model = TiedRings()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def scans(batches):
        for x, _ in batches:
            yield x, x

    _train(
        ctx, model, opt, scans(digit_batches(gen, 32)), 200, F.mse_loss, accumulate=2, sched=sched
    )
    ls = ctx.losses
    ctx.check("loss fell and is finite", _fell(ls, ratio=0.6))
