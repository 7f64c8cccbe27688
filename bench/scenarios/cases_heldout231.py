"""Held-out set 231 (``h231_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a theorbo continuo-figure attention classifier whose
attention scores are multiplied by sqrt(d) instead of divided, a penitentes snow-spike GRU
regressor whose checkpoint step sums its loss once under Adam, a plasterer lime-set ReLU
regressor fed raw-unit readings under Adam at 0.1 whose units die, a mistral gust
message-passing net over a graph of valley stations fed one shard in km/h, a solifluction-lobe
creep deep tanh MLP whose normal_ init lost its std argument, a bodyboard
drop-heading regressor taking acos of a normalised vector with no clamp, a mudflow discharge
net de-standardising its output to L/s in fp16 under autocast, a cittern string-action
regressor whose trunk stays frozen by an epoch/step mix-up in its LambdaLR, a gurning-contest
BCE classifier whose static loss scale is not undone for one step, a petrichor soil-type
prototype classifier whose squared distances lost their 1/d scale, and three controls (a
spoons-playing rhythm classifier with dropout and noisy labels, a viola-da-gamba bow-stroke
tied-weight autoencoder under fp16 autocast with a GradScaler, a driftwood arrival-time
Gaussian-NLL net with Adadelta, clipping and ReduceLROnPlateau).

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
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; stops after
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


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


# -- theorbo: attention scores multiplied by sqrt(d) instead of divided -----------------------------


class FigureAttention(nn.Module):
    """Single-head attention pooling from a learnt query over the bass line."""

    def __init__(self, dim):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * 0.1)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.dim = dim
        self.last_scores = torch.zeros(1)
        self.last_weights = torch.zeros(1)

    def forward(self, h):
        q = self.q(self.query)
        k = self.k(h)
        # meant: (k @ q) / math.sqrt(self.dim)
        scores = (k @ q) * math.sqrt(self.dim)
        w = torch.softmax(scores, -1)
        self.last_scores = scores.detach()
        self.last_weights = w.detach()
        return (w.unsqueeze(-1) * self.v(h)).sum(1)


class TheorboNet(nn.Module):
    def __init__(self, notes=12, dim=32, length=16, classes=12):
        super().__init__()
        self.note = nn.Embedding(notes, dim)
        self.figure = nn.Embedding(2, dim)
        self.pos = nn.Embedding(length, dim)
        self.attn = FigureAttention(dim)
        self.head = nn.Linear(dim, classes)
        for emb in (self.note, self.figure, self.pos):
            nn.init.normal_(emb.weight, std=0.1)

    def forward(self, x):
        notes, flags = x
        h = self.note(notes) + self.figure(flags) + self.pos(torch.arange(notes.shape[1]))
        return self.head(self.attn(h))


def _continuo(gen, batch, length=16, notes=12):
    """A theorbo continuo bass line of 16 notes (pitch classes), one of which carries a figure
    (a flag); the chord to realise is named by the figured note's pitch class."""
    while True:
        notes_ = torch.randint(0, notes, (batch, length), generator=gen)
        where = torch.randint(0, length, (batch,), generator=gen)
        flags = torch.zeros(batch, length, dtype=torch.long)
        flags[torch.arange(batch), where] = 1
        yield (notes_, flags), notes_[torch.arange(batch), where]


@scenario(
    family="theorbo_continuo_figure_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A hand-written attention classifier (note, figure and pos embeddings with std 0.1, attn with a learnt query and q, k, v projections, head) naming the chord a theorbo player realises from a 16-note continuo bass line in which one note carries a figure, AdamW at 1e-2 (weight decay 0.01), cross-entropy. The attention was ported from a paper's pseudo-code as `scores = k @ q * math.sqrt(d)` instead of `/ math.sqrt(d)` (d = 32): the attention logits are 32x the intended ones and nothing normalises q or k, so as AdamW sharpens the read onto the figured note the largest logit grows from about 1 to over 80 within 50 steps and stays there, and the attention rows become exactly one-hot; the loss falls, finite.",
)
def h231_theorbo_attention_scale_inverted(ctx: Context) -> None:
    gen = seeded(23101)
    model = TheorboNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    top, onehot = {}, {}

    def watch(step, out, x, y):
        top[step] = float(model.attn.last_scores.abs().max())
        onehot[step] = float((model.attn.last_weights.max(-1).values == 1.0).float().mean())

    _train(
        ctx,
        model,
        opt,
        _continuo(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    early = _mean([top[s] for s in range(5)])
    late = _mean([top[s] for s in range(180, 200)])
    ctx.check("largest attention logit under 5 at the start", early < 5)
    ctx.check("largest attention logit over 20x its start (steps 180-200)", late > 20 * early)
    ctx.check("largest attention logit over 50 (steps 180-200)", late > 50)
    ctx.check(
        "over half the attention rows exactly one-hot (steps 180-200)",
        _mean([onehot[s] for s in range(180, 200)]) > 0.5,
    )
    ctx.check("finite", _finite(ls))


# -- penitentes: the checkpoint step sums its loss once under Adam ---------------------------------


class SpikeGRU(nn.Module):
    def __init__(self, feat=3, hidden=32):
        super().__init__()
        self.gru = nn.GRU(feat, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _penitentes(gen, batch, length=20, seed=2):
    """Three standardised daily readings on a high-altitude snowfield (insolation, dew point,
    wind) over 20 days, and the height of the penitentes' spikes at the end, standardised."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    decay = 0.9 ** torch.arange(length - 1, -1, -1).float()
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        drive = (x @ w / math.sqrt(3)) * decay
        y = torch.tanh(drive.sum(1) / 2) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="penitentes_spike_height_gru_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="A GRU regressor (gru, head) predicting the height of penitentes (sun-sculpted snow spikes) on a high snowfield from 20 days of 3 standardised readings (insolation, dew point, wind), 64 windows a batch, Adam at 3e-4, MSE. At step 60 the checkpoint callback logs the training loss through a helper that uses reduction='sum', and that summed loss is the one backpropagated: one gradient 64x too large fills Adam's second moment (beta2 0.999). Afterwards the updates are about a third of those before (the unbugged run's stay at three quarters) and the loss, which was falling, stalls: at the end it is over 5x what the same run without the bug reaches; finite.",
)
def h231_penitentes_gru_summed_checkpoint_loss(ctx: Context) -> None:
    steps, onset = 240, 60

    def run(c, buggy):
        gen = seeded(23102)
        model = SpikeGRU()
        opt = torch.optim.Adam(model.parameters(), lr=3e-4)
        params = list(model.parameters())
        moves, prev = {}, {}

        def before(step):
            prev["w"] = _snapshot(params)

        def after(step):
            moves[step] = _mean(
                [
                    float((p.detach() - w).abs().mean())
                    for p, w in zip(params, prev["w"], strict=True)
                ]
            )

        def scale_loss(step, total):
            # the checkpoint helper: F.mse_loss(..., reduction="sum") over the 64 windows
            return total * 64 if buggy and step == onset else total

        _train(
            c,
            model,
            opt,
            _penitentes(gen, 64),
            steps,
            F.mse_loss,
            before=before,
            after=after,
            scale_loss=scale_loss,
        )
        return moves

    twin = _Quiet()
    twin_moves = run(twin, buggy=False)  # the same run without the bug, for the checks only
    moves = run(ctx, buggy=True)
    ls, gn = ctx.losses, ctx.grad_norms
    before_move = _mean([moves[s] for s in range(onset - 20, onset)])
    after_move = _mean([moves[s] for s in range(onset + 30, steps)])
    twin_after = _mean([twin_moves[s] for s in range(onset + 30, steps)])
    ctx.check(
        "gradient at the onset over 30x the median before",
        gn[onset] > 30 * _median(gn[onset - 30 : onset]),
    )
    ctx.check("updates after the onset under 40% of those before", after_move < 0.4 * before_move)
    ctx.check(
        "updates after the onset under 60% of the unbugged run's", after_move < 0.6 * twin_after
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.7))
    ctx.check(
        "loss at the end over 5x that of the same run without the bug",
        _mean(ls[-30:]) > 5 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


# -- plasterer: raw-unit readings under SGD momentum kill the ReLUs -------------------------------


def _lime(gen, batch, seed=3):
    """Six readings of a lime-plaster mix in raw units (lime %, sand %, water ratio x 100, air
    temperature in C, humidity %, coat thickness in mm) and the set time, standardised."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    v = torch.randn(6, generator=g)
    lo = torch.tensor([10.0, 40.0, 30.0, 0.0, 30.0, 5.0])
    hi = torch.tensor([50.0, 80.0, 60.0, 30.0, 100.0, 20.0])
    while True:
        u = torch.rand(batch, 6, generator=gen)
        z = (u - 0.5) * math.sqrt(12)
        y = torch.tanh(z @ w / math.sqrt(6)) + 0.5 * torch.sin(z @ v / math.sqrt(6))
        yield lo + (hi - lo) * u, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="plasterer_lime_set_time_relu_mlp",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the set time of a lime plaster from 6 readings the data loader forgot to standardise (lime %, sand %, water ratio, C, humidity %, mm: tens, all positive), Adam at 0.1 (a rate copied from a recipe for standardised tabular inputs, no warm-up), MSE. With raw positive inputs about 40% of act1's units are already off on every input at step 0; the first large Adam steps push fc1's pre-activations negative on every input for the rest, so by step 50 every act1 unit is dead (never positive on a batch) and stays dead, and the loss stops improving near the target's variance; finite.",
)
def h231_plasterer_raw_units_dead_relu(ctx: Context) -> None:
    gen = seeded(23103)
    model = Stack(6, hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    dead = {}

    def watch(step, out, x, y):
        with torch.no_grad():
            dead[step] = dead_fraction(model.act1(model.fc1(x)))

    _train(ctx, model, opt, _lime(gen, 128), 200, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("under 45% of act1's units dead at step 0", dead[0] < 0.45)
    ctx.check(
        "over 90% of act1's units dead at the end",
        _mean([dead[s] for s in range(180, 200)]) > 0.9,
    )
    ctx.check(
        "loss stopped improving (steps 150-200 vs 30-50)",
        _mean(ls[150:]) > 0.8 * _mean(ls[30:50]),
    )
    ctx.check("finite", _finite(ls))


# -- mistral: a message-passing net over valley stations fed one shard in km/h ---------------------


def _valley_graph(n=10):
    """Adjacency of 10 weather stations down the Rhone valley (a chain) with two cross-valley
    links, row-normalised with self-loops."""
    a = torch.eye(n)
    for i in range(n - 1):
        a[i, i + 1] = a[i + 1, i] = 1.0
    for i, j in ((1, 4), (5, 8)):
        a[i, j] = a[j, i] = 1.0
    return a / a.sum(1, keepdim=True)


class MessagePass(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.msg = nn.Linear(dim, dim)
        self.upd = nn.Linear(2 * dim, dim)

    def forward(self, h, adj):
        m = adj @ self.msg(h)
        return F.silu(self.upd(torch.cat([h, m], -1)))


class MistralMPNN(nn.Module):
    def __init__(self, feat=4, dim=32):
        super().__init__()
        self.register_buffer("adj", _valley_graph())
        self.enc = nn.Linear(feat, dim)
        self.mp1 = MessagePass(dim)
        self.mp2 = MessagePass(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = F.silu(self.enc(x))
        h = self.mp2(self.mp1(h, self.adj), self.adj)
        return self.head(h).squeeze(-1)


def _mistral(gen, batch, seed=4):
    """Four standardised readings at each of 10 valley stations (pressure gradient, temperature
    gap, humidity, hour angle) and each station's peak gust, standardised: it depends on the
    station's own readings and those upstream."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    v = torch.randn(4, generator=g)
    adj = _valley_graph()
    while True:
        x = torch.randn(batch, 10, 4, generator=gen)
        local = torch.tanh(x @ w / 2)
        upstream = adj @ torch.sin(x @ v / 2).unsqueeze(-1)
        yield x, local + 0.7 * upstream.squeeze(-1) + 0.05 * torch.randn(batch, 10, generator=gen)


@scenario(
    family="mistral_gust_valley_station_mpnn",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="A hand-written message-passing net (enc, mp1 and mp2 each with msg and upd, head) over a graph of 10 weather stations down the Rhone valley (a chain with two cross-valley links, mean aggregation with self-loops) predicting each station's peak mistral gust from 4 standardised readings per station, 32 graphs a batch, RMSprop at 1e-3 with gradient clipping at 1.0, MSE. The shard read at step 130 comes from a station network that logs gusts in km/h and was never standardised: its targets are tens, the loss on that batch is over 100x the usual; the clipping bounds the update and the run returns to its level; finite.",
)
def h231_mistral_kmh_shard(ctx: Context) -> None:
    gen = seeded(23104)
    model = MistralMPNN()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    seen = {}

    def alter(step, x, y):
        if step == 130:
            y = (y * 4.0 + 14.0) * 3.6  # m/s de-standardised, then km/h, never standardised
        seen[step] = float(y.abs().mean())
        return x, y

    _train(ctx, model, opt, _mistral(gen, 32), 240, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    ctx.check(
        "targets at step 130 over 20x the usual", seen[130] > 20 * _median(list(seen.values()))
    )
    ctx.check("loss at step 130 over 100x the median before", ls[130] > 100 * _median(ls[100:130]))
    ctx.check(
        "loss back within 1.5x its level (steps 170-240)",
        _mean(ls[170:]) < 1.5 * _mean(ls[110:130]),
    )
    ctx.check("loss fell before", _fell(ls[:130], ratio=0.6))
    ctx.check("finite", _finite(ls))


# -- solifluction: a deep tanh MLP initialised with a std copied from a narrower net -------------


class DeepTanh(nn.Module):
    def __init__(self, d_in=8, width=64, depth=12, init_std=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="solifluction_lobe_creep_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP of width 64 (layers.0 to layers.11, head) regressing the yearly creep of a solifluction lobe on a periglacial slope from 8 standardised readings (slope, freeze-thaw cycles, soil moisture, ...), plain SGD at 1e-2, Huber loss. The init loop calls `nn.init.normal_(layer.weight)` and the `std=1 / math.sqrt(fan_in)` argument was lost in a refactor, so every weight has std 1 (a gain of 8 on the 64-wide layers): the net sits deep in tanh's chaotic regime, the backward signal grows layer after layer, and the first layer's weight gradient is over 1000x the last hidden layer's at step 0 and stays hundreds of times larger; the lower layers thrash and the loss ends several times above what the same net correctly initialised reaches; finite, no blow-up.",
)
def h231_solifluction_init_std_lost(ctx: Context) -> None:
    gen = seeded(23105)
    model = DeepTanh()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ratio, first = {}, {}

    def after(step):
        g0 = model.layers[0].weight.grad
        g_last = model.layers[-1].weight.grad
        ratio[step] = float(g0.norm() / g_last.norm())
        first[step] = float(g0.norm())

    _train(ctx, model, opt, _readings(gen, 64, 8, 5), 200, F.huber_loss, after=after)
    twin = _Quiet()  # the same run with std 1/sqrt(64), for the checks only
    gen = seeded(23105)
    good = DeepTanh(init_std=0.125)
    _train(
        twin,
        good,
        torch.optim.SGD(good.parameters(), lr=1e-2),
        _readings(gen, 64, 8, 5),
        200,
        F.huber_loss,
    )
    ls = ctx.losses
    ctx.check("first layer's gradient over 500x the last hidden layer's at step 0", ratio[0] > 500)
    ctx.check(
        "still over 100x (median of steps 100-200)",
        _median([ratio[s] for s in range(100, 200)]) > 100,
    )
    ctx.check(
        "loss at the end over 3x that of the correctly initialised net",
        _mean(ls[150:]) > 3 * _mean(twin.losses[150:]),
    )
    ctx.check("finite", _finite(ls))


# -- bodyboard: acos of a normalised vector with no clamp -----------------------------------------


class Heading(nn.Module):
    """The drop heading: the angle between the predicted direction and the wave's normal."""

    def forward(self, v):
        u = v[:, 0] / v.norm(dim=-1)
        return torch.acos(u)


class DropNet(nn.Module):
    def __init__(self, d_in=8, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)
        self.heading = Heading()
        self.last_u = torch.zeros(1)

    def forward(self, x):
        v = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        self.last_u = (v[:, 0] / v.norm(dim=-1)).detach()
        return self.heading(v)


def _drops(gen, batch, seed=6):
    """Eight standardised readings of a bodyboarder's take-off (wave face angle, board speed,
    body lean, ...) and the drop heading in radians from the wave's normal (0 to pi/2); a
    straight drop, logged as exactly 0, is common."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        a = (x @ w / math.sqrt(8)).clamp(min=0)
        yield x, (math.pi / 2) * torch.tanh(a)


@scenario(
    family="bodyboard_drop_heading_acos_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("heading",),
    diverges=92,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head, heading) predicting a bodyboarder's drop heading from 8 standardised take-off readings: the head gives a 2-d direction and the heading module returns acos(v_x / |v|), the angle from the wave's normal, with no clamp of the cosine to [-1, 1] (and no eps); Adamax at 1e-3, MSE on the angle in radians. Half the drops are straight (heading exactly 0); as the net learns them their predicted directions line up with the normal, and once a cosine rounds to exactly 1 (or a hair above) acos has an infinite derivative (or returns NaN): the gradient is NaN, the weights turn NaN and the loss is NaN.",
)
def h231_bodyboard_acos_unclamped(ctx: Context) -> None:
    gen = seeded(23109)
    model = DropNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    cos = {}

    def watch(step, out, x, y):
        cos[step] = float(model.last_u.max())

    _train(ctx, model, opt, _drops(gen, 64), 300, F.mse_loss, watch=watch)
    ls, gn = ctx.losses, ctx.grad_norms
    bad = _first_bad(ls)
    ctx.check("loss goes NaN", bad is not None and math.isnan(ls[bad]))
    hit = next((s for s in sorted(cos) if cos[s] >= 1.0), None)
    ctx.check(
        "a cosine reached 1.0 before the NaN", hit is not None and bad is not None and hit < bad
    )
    ctx.check(
        "gradient non-finite at that step",
        hit is not None and hit < len(gn) and not math.isfinite(gn[hit]),
    )
    ctx.check("loss finite and falling before", bad is not None and bad > 20 and _fell(ls[:bad]))


# -- mudflow: the output de-standardised to L/s in fp16 under autocast -----------------------------


class ToLitres(nn.Module):
    """De-standardises the prediction to litres per second for the downstream alarm."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, z):
        return z * self.std + self.mean


class MudflowNet(nn.Module):
    def __init__(self, d_in=8, hidden=64, mean=30000.0, std=25000.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.to_litres = ToLitres(mean, std)
        self.last_max = 0.0

    def forward(self, x):
        z = self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        out = self.to_litres(z)
        self.last_max = float(out.detach().float().abs().max())
        return out


def _mudflows(gen, batch, seed=7, mean=30000.0, std=25000.0):
    """Eight standardised readings of a mudflow surge (rain intensity, slope, channel width,
    ...) and its peak discharge in L/s (tens of thousands; the largest surges pass 65504)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        z = 1.2 * torch.tanh(x @ w / math.sqrt(8)) + 0.5 * torch.relu(x[:, 0])
        yield x, mean + std * (z + 0.05 * torch.randn(batch, generator=gen))


@scenario(
    family="mudflow_discharge_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("to_litres",),
    diverges=32,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head, to_litres) predicting a mudflow surge's peak discharge from 8 standardised readings, AdamW at 1e-3, fp16 autocast with a default torch.amp.GradScaler. For the downstream alarm the model returns litres per second: to_litres computes z * 25000 + 30000 inside the autocast region, in fp16, and the loss re-standardises the float32 copy (MSE on (out - 30000) / 25000). At first the predictions stay near the mean; as the net learns the largest surges its de-standardised prediction passes fp16's 65504, overflows to inf, and the loss is inf at step 32; the GradScaler skips that step and every later one whose batch holds such a surge, halving its scale each time until it is far below 1, while the loss keeps coming back inf; at step 194 the scale has underflowed to 0 and the loss is NaN.",
)
def h231_mudflow_fp16_litres_overflow(ctx: Context) -> None:
    gen = seeded(23107)
    model = MudflowNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    peak, top_target = {}, {}

    def watch(step, out, x, y):
        peak[step] = model.last_max
        top_target[step] = float(y.max())

    def restandardised_mse(out, y):
        return F.mse_loss((out - 30000.0) / 25000.0, (y - 30000.0) / 25000.0)

    _train(
        ctx,
        model,
        opt,
        _mudflows(gen, 64),
        200,
        restandardised_mse,
        watch=watch,
        scaler=scaler,
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss goes non-finite", bad is not None)
    ctx.check(
        "fp16 output overflowed to inf at that step", bad is not None and peak[bad] == math.inf
    )
    ctx.check(
        "fp16 output finite before it",
        bad is not None and bad > 10 and all(math.isfinite(peak[s]) for s in range(bad)),
    )
    ctx.check("targets pass 65504 L/s", max(top_target.values()) > 65504)
    ctx.check(
        "loss non-finite on over 20 later steps (skipped by the GradScaler)",
        bad is not None and sum(not math.isfinite(v) for v in ls[bad:]) > 20,
    )
    ctx.check("loss scale fell below 1 (skips)", min(ctx.scales) < 1.0)
    ctx.check("loss fell before", bad is not None and _fell(ls[:bad], k=5, ratio=0.8))


# -- cittern: a trunk kept frozen by an epoch/step mix-up in its LambdaLR ----------------------


def _actions(gen, batch, seed=8):
    """Ten standardised readings of a cittern's set-up (neck relief, nut height, bridge height,
    string gauge, ...) and the string action at the 12th fret, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="cittern_string_action_frozen_trunk_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the string action of a cittern at the 12th fret from 10 standardised set-up readings, RAdam at 3e-3 with two param groups (trunk: fc1 and fc2; head) and a LambdaLR per group. The recipe freezes the trunk for the first 2 epochs (factor 0), but the trunk's lambda compares the step with 2 * steps_per_epoch where steps_per_epoch was computed as len(dataset) (6400) instead of len(loader) (100): the trunk stays at lr 0 for the whole run, its update/weight ratio is exactly 0 while the head's is about 1e-3, and the loss falls only as far as a linear head on random features allows; finite.",
)
def h231_cittern_trunk_never_unfrozen(ctx: Context) -> None:
    gen = seeded(23108)
    model = Stack(10, hidden=64, act=nn.GELU)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.RAdam([{"params": trunk}, {"params": model.head.parameters()}], lr=3e-3)
    dataset_len, batch = 6400, 64
    steps_per_epoch = dataset_len  # meant: dataset_len // batch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 0.0 if s < 2 * steps_per_epoch else 1.0, lambda s: 1.0]
    )
    ratios = {"fc1": [], "fc2": [], "head": []}
    prev = {}

    def before(step):
        for name in ratios:
            prev[name] = getattr(model, name).weight.detach().clone()

    def after(step):
        for name in ratios:
            w = getattr(model, name).weight.detach()
            ratios[name].append(float((w - prev[name]).norm() / w.norm()))

    _train(
        ctx,
        model,
        opt,
        _actions(gen, batch),
        240,
        F.mse_loss,
        before=before,
        after=after,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("fc1 and fc2 never moved", max(ratios["fc1"] + ratios["fc2"]) < 1e-12)
    ctx.check("head update/weight ratio over 1e-4 (median)", _median(ratios["head"]) > 1e-4)
    ctx.check("trunk lr still 0 at the end", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("loss fell", _fell(ls, ratio=0.9))
    ctx.check("finite", _finite(ls))


# -- gurning: a static loss scale not undone for one step ------------------------------------------


def _gurns(gen, batch, seed=9):
    """Twelve standardised readings of a gurning-contest entry (jaw protrusion, brow travel,
    hold time, horse-collar fit, ...) and whether the judges placed it (1) or not (0)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    v = torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        s = x @ w / math.sqrt(12) + 0.5 * torch.sin(x @ v / math.sqrt(12))
        flip = torch.rand(batch, generator=gen) < 0.05
        y = ((s > 0) ^ flip).float()
        yield x, y


@scenario(
    family="gurning_contest_placing_bce_mlp",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) deciding whether a gurning-contest entry is placed from 12 standardised readings (jaw protrusion, brow travel, hold time, ...), BCEWithLogitsLoss, SGD Nesterov at 0.05 with momentum 0.9. The loop keeps a static loss scale of 64 from an old fp16 recipe: the loss is multiplied by 64 before backward and the gradients divided by 64 in a pre-step hook; after the checkpoint at step 120 the optimizer is rebuilt and the hook is registered one step late, so that one step's gradient is 64x the usual. The weights are thrown off, the loss jumps, and the run recovers within a few dozen steps; finite.",
)
def h231_gurning_loss_scale_not_undone(ctx: Context) -> None:
    gen = seeded(23109)
    model = Stack(12, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    loss_scale, onset = 64.0, 120

    def scale_loss(step, total):
        return total * loss_scale

    def unscale(step):
        if step == onset:
            return  # the hook is not registered yet on the rebuilt optimizer
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(loss_scale)

    ctx.attach(model, opt)
    batches = _gurns(gen, 64)
    for step in range(240):
        x, y = next(batches)
        ctx.targets(y.long())
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        scale_loss(step, loss).backward()
        unscale(step)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 120 over 30x the median before", gn[120] > 30 * _median(gn[90:120]))
    ctx.check(
        "loss after the kick over 2x its level before",
        max(ls[121:126]) > 2 * _mean(ls[110:120]),
    )
    ctx.check(
        "loss back within 1.5x its level (steps 190-240)",
        _mean(ls[190:]) < 1.5 * _mean(ls[110:120]),
    )
    ctx.check("loss fell before the onset", _fell(ls[:120], ratio=0.7))
    ctx.check("finite", _finite(ls))


# -- petrichor: prototype logits whose squared distances lost their 1/d scale -------------------


class Prototypes(nn.Module):
    def __init__(self, classes, dim):
        super().__init__()
        self.centres = nn.Parameter(torch.randn(classes, dim))

    def forward(self, e):
        # meant: -torch.cdist(e, self.centres).pow(2) / e.shape[-1]
        return -torch.cdist(e, self.centres).pow(2)


class PetrichorNet(nn.Module):
    def __init__(self, d_in=16, hidden=128, dim=256, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, dim)
        self.head = Prototypes(classes, dim)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="petrichor_soil_type_prototype_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A prototype classifier (fc1, act1, fc2 giving a 256-d embedding, head holding one learnt centre per class) naming which of 6 soils gave off a petrichor sample from 16 standardised volatile readings (geosmin, 2-MIB, ozone, ...), NAdam at 3e-3, cross-entropy on logits -||e - c||^2. The reference divides the squared distance by the embedding size; the port dropped the 1/256: the logits are raw squared distances in the hundreds, their gaps grow to tens, the float32 softmax rounds most rows to exactly 1.0 for one class (almost none at step 0), and the rows it gets wrong carry losses in the tens, so the loss stays several times what the task allows; finite, no blow-up.",
)
def h231_petrichor_prototype_scale_dropped(ctx: Context) -> None:
    gen = seeded(23110)
    model = PetrichorNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    frac, span = {}, {}

    def watch(step, out, x, y):
        o = out.detach()
        p = torch.softmax(o.float(), -1)
        top2 = o.topk(2, -1).values
        span[step] = float((top2[:, 0] - top2[:, 1]).median())
        frac[step] = (float((p.max(-1).values == 1.0).float().mean()), collapsed_fraction(o, y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, 10, noise=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    late = [frac[s] for s in range(150, 200)]
    ctx.check(
        "over 60% of rows with a softmax of exactly 1.0 (steps 150-200)",
        _mean([a for a, _ in late]) > 0.6,
    )
    ctx.check("over 30% of rows give the target exactly 1.0", _mean([b for _, b in late]) > 0.3)
    ctx.check("under 10% of rows exactly 1.0 at step 0", frac[0][0] < 0.1)
    ctx.check(
        "median gap between the top two logits over 17 (steps 150-200)",
        _mean([span[s] for s in range(150, 200)]) > 17,
    )
    ctx.check("finite", _finite(ls))


# -- controls ---------------------------------------------------------------------------------------


class SpoonsNet(nn.Module):
    def __init__(self, d_in=24, hidden=96, classes=5, p=0.3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.drop2(self.act2(self.fc2(self.drop1(self.act1(self.fc1(x)))))))


def _spoons(gen, batch, classes=5, seed=11, flip=0.15):
    """Twenty-four onset-strength readings of two bars of spoons playing and the rhythm played
    (5 kinds: reel, jig, hornpipe, polka, slide); 15% of the labels are wrong (a tired
    annotator), drawn uniformly."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, 24, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + 0.9 * torch.randn(batch, 24, generator=gen)
        wrong = torch.rand(batch, generator=gen) < flip
        noisy = torch.where(wrong, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, (noisy, y)


@scenario(
    family="spoons_playing_rhythm_dropout_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A ReLU MLP with dropout 0.3 (fc1, act1, drop1, fc2, act2, drop2, head) naming which of 5 rhythms a player of the spoons is playing from 24 onset-strength readings, 15% of the training labels wrong (drawn uniformly), AdamW at 3e-3 with weight decay 0.05, OneCycleLR, cross-entropy with label smoothing 0.1. An ordinary run: the noisy-label loss falls to its floor and accuracy against the clean labels rises.",
)
def h231_spoons_dropout_noisy_labels_control(ctx: Context) -> None:
    gen = seeded(23111)
    model = SpoonsNet()
    steps = 200
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    acc = {}
    batches = _spoons(gen, 64)
    ctx.attach(model, opt)
    for step in range(steps):
        x, (noisy, clean) = next(batches)
        ctx.targets(noisy)
        out = model(x)
        loss = F.cross_entropy(out, noisy, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        acc[step] = float((out.argmax(-1) == clean).float().mean())
        if math.isnan(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check(
        "accuracy on the clean labels over 85% at the end",
        _mean([acc[s] for s in range(180, 200)]) > 0.85,
    )
    ctx.check("finite", _finite(ls))


class TiedAE(nn.Module):
    """A tied-weight autoencoder: the decoder uses the encoder's weight transposed."""

    def __init__(self, d_in=32, code=10):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.GELU()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _bow_strokes(gen, batch, seed=12):
    """Thirty-two standardised bow-sensor readings of a viola da gamba stroke (pressure, speed,
    contact point over 8 instants), lying near a 6-d manifold, as input and target."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(6, 32, generator=g) / math.sqrt(6)
    while True:
        z = torch.randn(batch, 6, generator=gen)
        x = torch.tanh(z @ basis) + 0.05 * torch.randn(batch, 32, generator=gen)
        yield x, x


@scenario(
    family="viola_da_gamba_bow_stroke_tied_autoencoder",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="A tied-weight GELU autoencoder (enc, act, the decoder reusing enc.weight transposed, dec_bias) compressing 32 standardised bow-sensor readings of a viola da gamba stroke to a 10-d code, Adagrad at 5e-2, MSE, fp16 autocast with a default torch.amp.GradScaler (the loss in float32), gradient accumulation over 2 micro-batches of 32. An ordinary run: the reconstruction loss falls, nothing overflows.",
)
def h231_viola_da_gamba_tied_fp16_control(ctx: Context) -> None:
    gen = seeded(23112)
    model = TiedAE()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    scaler = torch.amp.GradScaler("cpu")
    _train(ctx, model, opt, _bow_strokes(gen, 32), 200, F.mse_loss, scaler=scaler, accumulate=2)
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check("finite", _finite(ls))
    ctx.check("loss scale never fell below 1024", min(ctx.scales) >= 1024)


class DriftNLL(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _driftwood(gen, batch, seed=13):
    """Ten standardised readings of a drifting log (release point, current, wind, log size,
    ...) and its days to beaching, standardised, with noise that grows with the wind."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        mu = torch.tanh(x @ w / math.sqrt(10))
        sigma = 0.05 + 0.25 * torch.sigmoid(2 * x[:, 1])
        yield x, mu + sigma * torch.randn(batch, generator=gen)


def _drift_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="driftwood_beaching_time_gaussian_nll_net",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) giving a mean and a softplus variance for the days a piece of driftwood takes to beach from 10 standardised readings, Gaussian NLL, Adadelta at lr 1.0, gradient clipping at 1.0, ReduceLROnPlateau (patience 10, factor 0.5) on the training loss. An ordinary run: the NLL falls, the variance head learns the wind-dependent noise.",
)
def h231_driftwood_adadelta_plateau_control(ctx: Context) -> None:
    gen = seeded(23113)
    model = DriftNLL()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10, factor=0.5)
    _train(ctx, model, opt, _driftwood(gen, 64), 240, _drift_nll, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell by over 0.5 nats", _finite(ls) and _mean(ls[-20:]) < _mean(ls[:10]) - 0.5)
    ctx.check("finite", _finite(ls))
