"""Held-out set 184 (``h184_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a bagatelle pocket classifier with a temperature typo, a
weathervane gust-pointer attention net, a lacquerware coat encoder of nn.TransformerEncoderLayer
blocks fine-tuned with a layer-wise decay typo, a peat-bog water-table regressor fed one bad
logger batch, a metronome tanh RNN with a recurrent init gain typo, a flash-flood gauge Poisson
regressor with a log instead of log1p, a blast-furnace tuyere net computing a fourth power under
fp16 autocast, a hurling sliotar BCE net whose manual loss scale is not undone once, a spinning
wheel yarn-grade ReLU classifier fed raw ADC counts, a sundial tanh regressor under a OneCycleLR
typo, and three controls (a coppersmith GRU backbone fine-tuned at a lower rate, a whetstone
fp16 Huber regressor, a shofar blast encoder classifier).

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


def _moved(params, start) -> float:
    return max(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))


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
    alter=None,
    backward=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    after=None,
    stop_on_nan=True,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``alter(step, x, y)`` changes a batch, ``backward(step, loss)`` replaces ``loss.backward()``
    (manual loss scaling), ``watch(step, out, x, y)`` records after the forward pass,
    ``after(step)`` after the optimizer step; ``accumulate`` micro-batches a step; stops after
    logging a NaN loss unless told not to."""
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
            if scaler is not None:
                scaler.scale(total).backward()
            elif backward is not None:
                backward(step, total)
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
        if stop_on_nan and math.isnan(shown):
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


def _sequences(gen, batch, length, d_in, classes, seed, noise=0.8):
    """Sequences whose class is a pattern over time (a prototype per class), noisy."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, length, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * torch.randn(batch, length, d_in, generator=gen)
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


# -- bagatelle: a softmax temperature typed 0.002 for 0.2 -----------------------------------------


class BagatelleNet(nn.Module):
    def __init__(self, d_in=10, hidden=64, classes=8, temperature=0.2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="bagatelle_pin_pocket_gelu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (nn.GELU modules) naming which of 8 pockets of a bagatelle board a ball "
    "falls into from 10 launch-spring, angle and pin-wear readings, Adagrad at 2e-2, "
    "cross-entropy. The head's logits are divided by a sharpening temperature that the config "
    "gives as 0.002 (typed for 0.2), so the logits are 500x their size: the float32 softmax "
    "rounds the top class to exactly 1 and the others to exactly 0 for most rows from the first "
    "steps, and every wrong row costs a loss in the hundreds; finite.",
)
def h184_bagatelle_temperature_typo(ctx: Context) -> None:
    gen = seeded(18401)
    model = BagatelleNet(temperature=0.002)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    frac = []
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 10, 8, seed=1, noise=0.8),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: frac.append(collapsed_fraction(o.detach(), y)),
    )
    with torch.no_grad():
        x, y = next(_kinds(torch.Generator().manual_seed(5), 512, 10, 8, seed=1, noise=0.8))
        logits = model(x)
        top = float((torch.softmax(logits, -1).max(-1).values == 1.0).float().mean())
        wrong = logits.argmax(-1) != y
        wrong_loss = float(F.cross_entropy(logits[wrong], y[wrong])) if wrong.any() else 0.0
    ctx.check("70% of rows' target probability exactly 1.0 over the run", _mean(frac) > 0.7)
    ctx.check("still 70% over the last 20 steps", _mean(frac[-20:]) > 0.7)
    ctx.check("70% of held-out rows' top probability exactly 1.0 at the end", top > 0.7)
    ctx.check("a misclassified held-out row costs above 5 nats at the end", wrong_loss > 5)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- weathervane: a gust pointer trained at a high rate with no qk normalisation -----------------


class GustAttention(nn.Module):
    """One learned query attending over the readings: logits q.k / sqrt(d)."""

    def __init__(self, dim=32):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.dim = dim
        self.last_logits = None

    def forward(self, h):
        q = self.q(self.query)
        logits = (self.k(h) @ q) / math.sqrt(self.dim)
        self.last_logits = logits.detach()
        w = torch.softmax(logits, -1)
        return (w[..., None] * self.v(h)).sum(1)


class WeathervaneNet(nn.Module):
    def __init__(self, d_in=9, dim=32, classes=8):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.act = nn.GELU()
        self.attn = GustAttention(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.attn(self.act(self.embed(x))))


def _gust_logs(gen, batch, length=12):
    """Twelve readings of a vane: wind speed and direction (one of 8, one-hot), with one gust
    above the rest; the label is the direction during that gust (misread 10% of the time)."""
    while True:
        speed = torch.rand(batch, length, generator=gen)
        gust = torch.randint(0, length, (batch, 1), generator=gen)
        speed = speed.scatter(1, gust, 1.5 + 0.5 * torch.rand(batch, 1, generator=gen))
        d = torch.randint(0, 8, (batch, length), generator=gen)
        x = torch.cat([speed[..., None], F.one_hot(d, 8).float()], -1)
        x = x + 0.05 * torch.randn(x.shape, generator=gen)
        y = d.gather(1, gust).squeeze(1)
        misread = torch.rand(batch, generator=gen) < 0.1
        y = torch.where(misread, torch.randint(0, 8, (batch,), generator=gen), y)
        yield x, y


@scenario(
    family="weathervane_gust_attention_pointer",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A weathervane logger net naming the wind direction (8 classes) during the strongest "
    "of 12 gusts: a GELU embedding, one hand-written attention module (a learned query, q/k/v "
    "Linears, logits q.k/sqrt(d)) and a head, cross-entropy. It was trained with Adam at 1e-2 "
    "(the rate copied from the MLP baseline), no weight decay and no query/key normalisation: "
    "to point ever more sharply at the strongest gust the q and k weights grow step after "
    "step, and the attention logit span grows from under 1 at step 10 to about 45 by step 60 "
    "and stays there: the attention is one-hot (entropy collapsed) for the rest of the run, "
    "the loss finite and noisy (10% of the labels are misreadings).",
)
def h184_weathervane_attention_logits_grow(ctx: Context) -> None:
    gen = seeded(18402)
    model = WeathervaneNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    span, peak = [], []

    def watch(step, out, x, y):
        lg = model.attn.last_logits
        span.append(float((lg.max(-1).values - lg.min(-1).values).mean()))
        peak.append(float(torch.softmax(lg, -1).max(-1).values.mean()))

    _train(
        ctx,
        model,
        opt,
        _gust_logs(gen, 64),
        300,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("attention logit span grew 20x from step 10", _mean(span[-10:]) > 20 * span[10])
    ctx.check("attention logit span above 30 at the end", _mean(span[-10:]) > 30)
    ctx.check("attention one-hot (top weight > 0.999) at the end", _mean(peak[-10:]) > 0.999)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- lacquerware: layer-wise lr decay typed 0.0 for 0.8 freezes the lower encoder layers ----------


class CoatEncoder(nn.Module):
    """Readings per coat embedded, nn.TransformerEncoderLayer blocks, mean pool, a head."""

    def __init__(self, d_in=6, dim=32, layers=3, classes=5, length=10):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x) + self.pos
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h).mean(1))


def _decay_groups(named, lr, weight_decay):
    """Two param groups per set of parameters: decayed matrices, and biases and norm weights
    (and position tables) with weight decay 0."""
    decay = [p for n, p in named if p.dim() >= 2 and not n.endswith("pos")]
    plain = [p for n, p in named if p.dim() < 2 or n.endswith("pos")]
    return [
        {"params": decay, "lr": lr, "weight_decay": weight_decay},
        {"params": plain, "lr": lr, "weight_decay": 0.0},
    ]


def _llrd_groups(model, base_lr, decay, weight_decay):
    """Layer-wise learning-rate decay: the head and final norm at base_lr, encoder layer i at
    base_lr * decay ** (depth - i), the embedding at base_lr * decay ** (depth + 1)."""
    depth = len(model.layers) - 1
    groups = []
    top = [
        (n, p) for n, p in model.named_parameters() if n.startswith("head") or n.startswith("norm")
    ]
    groups += _decay_groups(top, base_lr, weight_decay)
    for i, layer in enumerate(model.layers):
        groups += _decay_groups(
            list(layer.named_parameters()), base_lr * decay ** (depth - i), weight_decay
        )
    bottom = [(n, p) for n, p in model.named_parameters() if n.startswith("embed") or n == "pos"]
    groups += _decay_groups(bottom, base_lr * decay ** (depth + 1), weight_decay)
    return groups


@scenario(
    family="lacquerware_coat_sequence_encoder",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("embed", "layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="An encoder of three nn.TransformerEncoderLayer blocks reading 10 lacquer coats "
    "(thickness, cure hours, humidity, ...) and naming one of 5 finish defects, first "
    "pre-trained in the scenario on the workshop's older labels, then fine-tuned on the new "
    "ones with AdamW at 2e-3 and layer-wise learning-rate decay: the head at the base rate, "
    "layer i at base * decay ** (2 - i), the embedding below, each split into a decayed group "
    "and a weight-decay-0 group for biases and norms. The decay factor was typed 0.0 for 0.8: "
    "0.0 ** 0 is 1, so the top layer and the head learn, but layers.0, layers.1 and the "
    "embedding get a learning rate of exactly 0 and never move.",
)
def h184_lacquerware_llrd_decay_zero(ctx: Context) -> None:
    gen = seeded(18403)
    model = CoatEncoder()
    pre = torch.optim.Adam(model.parameters(), lr=2e-3)
    old = _sequences(gen, 32, 10, 6, 5, seed=30)
    for _ in range(60):
        x, y = next(old)
        loss = F.cross_entropy(model(x), y)
        pre.zero_grad()
        loss.backward()
        pre.step()
    opt = torch.optim.AdamW(_llrd_groups(model, 2e-3, 0.0, 1e-2), lr=2e-3)
    frozen = [
        p for n, p in model.named_parameters() if not n.startswith(("layers.2", "head", "norm"))
    ]
    learning = [p for n, p in model.named_parameters() if n.startswith(("layers.2", "head"))]
    frozen0, learning0 = _snapshot(frozen), _snapshot(learning)
    _train(
        ctx,
        model,
        opt,
        _sequences(gen, 32, 10, 6, 5, seed=31),
        120,
        F.cross_entropy,
        classifier=True,
    )
    ctx.check("embedding, layers.0 and layers.1 never moved", _moved(frozen, frozen0) == 0.0)
    ctx.check("top layer and head moved", _moved(learning, learning0) > 1e-2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- peat bog: one logger batch in pascals among standardised readings ---------------------------

PEAT_BAD_BATCH = 90


@scenario(
    family="peat_bog_water_table_regressor",
    optimizer="SGD(momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=PEAT_BAD_BATCH,
    note="A ReLU MLP (nn.ReLU modules) predicting a raised bog's water-table depth from 12 "
    "standardised rainfall, evapotranspiration, barometric and dipwell readings, SGD momentum "
    "0.9 at 1e-2, MSE, clip_grad_norm_ at 1.0. The batch at step 90 comes from one logger whose export skipped the "
    "standardisation: its barometric column is raw pascals (about 1e5) instead of z-scores. "
    "That one batch gives a loss of about 1e7 and a gradient norm about 1e9 (the usual is "
    "under 1); clipping bounds the step, and the loss is back to its level the next step; "
    "finite throughout.",
)
def h184_peat_bog_raw_pascal_batch(ctx: Context) -> None:
    gen = seeded(18404)
    model = Stack(12, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    peak = []

    def alter(step, x, y):
        if step == PEAT_BAD_BATCH:
            x = x.clone()
            x[:, 3] = 101325.0 + 800.0 * x[:, 3]
        peak.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 12, seed=4), 200, F.mse_loss, alter=alter, clip=1.0)
    at = PEAT_BAD_BATCH
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("input 1000x the usual at the bad batch", peak[at] > 1000 * _median(peak[:at]))
    ctx.check(
        "gradient 100x the preceding median at the bad batch", gn[at] > 100 * _median(gn[:at])
    )
    ctx.check(
        "loss 20x the preceding median at the bad batch", ls[at] > 20 * _median(ls[at - 20 : at])
    )
    ctx.check(
        "loss back under 2x the pre-onset level by the end",
        _mean(ls[-10:]) < 2 * _mean(ls[at - 10 : at]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- metronome: a recurrent matrix initialised with gain 3.0 --------------------------------------


class TickCell(nn.Module):
    """h' = tanh(ih(x) + hh(h)), hand-written."""

    def __init__(self, d_in=2, hidden=32, gain=1.0):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.hh.weight, gain=gain)

    def forward(self, x, h):
        return torch.tanh(self.ih(x) + self.hh(h))


class MetronomeRNN(nn.Module):
    def __init__(self, hidden=32, gain=1.0):
        super().__init__()
        self.cell = TickCell(2, hidden, gain)
        self.head = nn.Linear(hidden, 1)
        self.hidden = hidden
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _tick_logs(gen, batch, length=40):
    """Forty tick-interval deviations (and the beat phase) of a wind-up metronome; the target
    is its drift in beats per minute per minute, a weighted sum over the whole log."""
    weights = torch.linspace(0.2, 1.0, length)
    while True:
        dev = torch.randn(batch, length, generator=gen) * 0.5
        phase = torch.sin(torch.arange(length).float() * 0.7).expand(batch, length)
        x = torch.stack([dev, phase], -1)
        y = torch.tanh((dev * weights).sum(1) / 4) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="metronome_drift_tanh_rnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("cell", "cell.hh"),
    diverges=None,
    heldout=True,
    note="A hand-written tanh RNN cell (ih and hh Linears) reading 40 tick-interval "
    "deviations of a wind-up metronome and predicting its tempo drift, RMSprop at 1e-3, MSE. "
    "The recurrent matrix is initialised with nn.init.orthogonal_(gain=3.0), the 3.0 copied "
    "from a ReLU conv's init line for the intended 1.0: the recurrence is in its chaotic "
    "regime and the gradient of the loss with respect to the hidden state grows about 1e5 "
    "times going back through the 40 steps (with gain 1.0 it shrinks), the gradient norm is "
    "in the thousands, and it stays so through training; the loss stays high, finite.",
)
def h184_metronome_recurrent_gain_three(ctx: Context) -> None:
    gen = seeded(18405)
    model = MetronomeRNN(gain=3.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    growth = []

    def backward(step, loss):
        loss.backward()
        first = float(model.states[0].grad.norm())
        last = float(model.states[-1].grad.norm())
        growth.append(first / max(last, 1e-30))

    _train(ctx, model, opt, _tick_logs(gen, 32), 150, F.mse_loss, backward=backward)
    ctx.check("hidden-state gradient 1e4x larger at t=0 than at t=39 at the start", growth[0] > 1e4)
    ctx.check("still 1e4x (median) over the last 30 steps", _median(growth[-30:]) > 1e4)
    ctx.check("gradient norm above 1000 (median) over the run", _median(ctx.grad_norms) > 1000)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- flash flood: torch.log for torch.log1p meets the first dry hour ------------------------------


class LogRain(nn.Module):
    """Compresses hourly rainfall (mm): written torch.log where log1p was meant."""

    def forward(self, rain):
        return torch.log(rain)


class FlashFloodNet(nn.Module):
    def __init__(self, hours=12, d_other=4, hidden=48):
        super().__init__()
        self.compress = LogRain()
        self.fc1 = nn.Linear(hours + d_other, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.rate = nn.Linear(hidden, 1)
        self.hours = hours

    def forward(self, x):
        rain, other = x[:, : self.hours], x[:, self.hours :]
        h = torch.cat([self.compress(rain), other], -1)
        return self.rate(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


FLOOD_DRY_SHARD = 85


def _gauge_logs(gen, batch, hours=12):
    """Hourly rainfall over a catchment (mm) and 4 soil readings; the target is the count of
    gauge-threshold crossings in the next 6 hours. Wet-season shards first: every hour has
    some rain; from step 85 the dry-season shard, where some hours are exactly 0.0 mm."""
    step = 0
    while True:
        rain = -4.0 * torch.log(torch.rand(batch, hours, generator=gen)) + 0.2
        if step >= FLOOD_DRY_SHARD:
            dry = torch.rand(batch, hours, generator=gen) < 0.3
            rain = torch.where(dry, torch.zeros_like(rain), rain * 0.3)
        other = torch.randn(batch, 4, generator=gen)
        rate = torch.exp(0.08 * rain.sum(1) - 1.5 + 0.3 * other[:, 0])
        y = torch.poisson(rate, generator=gen)
        step += 1
        yield torch.cat([rain, other], -1), y


@scenario(
    family="flash_flood_gauge_log_poisson_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("compress",),
    diverges=FLOOD_DRY_SHARD,
    heldout=True,
    onset=FLOOD_DRY_SHARD,
    note="A ReLU MLP predicting the log-rate of a river gauge's threshold crossings from 12 "
    "hours of catchment rainfall (mm) and 4 soil readings, Poisson NLL on the log-rate "
    "(F.poisson_nll_loss, log_input=True, full=True), Adamax at 1e-2. The rainfall goes through a "
    "hand-written `compress` module written torch.log(rain) where log1p was meant: the "
    "wet-season shards have rain every hour, but the dry-season shard reached at step 85 has "
    "hours of exactly 0.0 mm: log(0) = -inf, the first Linear turns it into inf - inf = NaN, "
    "and the loss is NaN at step 85.",
)
def h184_flash_flood_log_of_dry_hour(ctx: Context) -> None:
    gen = seeded(18406)
    model = FlashFloodNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    lowest = []

    def watch(step, out, x, y):
        with torch.no_grad():
            lowest.append(float(model.compress(x[:, : model.hours]).min()))

    _train(
        ctx,
        model,
        opt,
        _gauge_logs(gen, 64),
        160,
        lambda o, y: F.poisson_nll_loss(o, y, log_input=True, full=True),
        watch=watch,
    )
    at = FLOOD_DRY_SHARD
    ctx.check("loss NaN first at the dry shard's step", _first_bad(ctx.losses) == at)
    ctx.check("compress output -inf at that step", len(lowest) > at and lowest[at] == -math.inf)
    ctx.check("compress output finite before", _finite(lowest[:at]))
    ctx.check("loss fell before the dry shard", _fell(ctx.losses[:at]))


# -- blast furnace: a Stefan-Boltzmann fourth power computed in float16 ---------------------------


class Radiant(nn.Module):
    """Radiant heat features: a learned emissivity-weighted projection of the hot-blast
    temperature (in 100 K) raised to the fourth power."""

    def __init__(self, n=8):
        super().__init__()
        self.lin = nn.Linear(1, n)
        nn.init.uniform_(self.lin.weight, 0.8, 1.0)
        nn.init.zeros_(self.lin.bias)

    def forward(self, t):
        h = self.lin(t)
        return (h * h) * (h * h)


class TuyereNet(nn.Module):
    def __init__(self, d_other=10, hidden=64):
        super().__init__()
        self.radiant = Radiant(8)
        self.fc1 = nn.Linear(8 + d_other, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        q = self.radiant(x[:, :1]) * 1e-4
        h = torch.cat([q, x[:, 1:]], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


FURNACE_HOT_BLAST = 70


def _tuyere_logs(gen, batch):
    """Hot-blast temperature (100 K) and 10 standardised burden and coolant readings; the target
    is the tuyere cooling-water heat load, standardised. From step 70 the furnace is on its
    oxygen-enriched campaign and the blast runs at 1700-1900 K instead of 1100-1300 K."""
    step = 0
    while True:
        lo, hi = (17.0, 19.0) if step >= FURNACE_HOT_BLAST else (11.0, 13.0)
        t = lo + (hi - lo) * torch.rand(batch, 1, generator=gen)
        other = torch.randn(batch, 10, generator=gen)
        y = 2.0 * ((t[:, 0] / 12) ** 4 - 1) + 1.2 * other[:, 0] - 0.9 * other[:, 1] * other[:, 2]
        step += 1
        yield torch.cat([t, other], -1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="blast_furnace_tuyere_fp16_silu_mlp",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("radiant",),
    diverges=FURNACE_HOT_BLAST,
    heldout=True,
    onset=FURNACE_HOT_BLAST,
    note="A SiLU MLP (nn.SiLU modules) predicting a blast furnace tuyere's cooling-water heat "
    "load from the hot-blast temperature (in 100 K) and 10 standardised readings, RAdam at "
    "1e-2, Huber loss, fp16 autocast with a torch.amp.GradScaler. A `radiant` module projects "
    "the temperature with a Linear (float16 under autocast) and raises it to the fourth "
    "power in float16 (Stefan-Boltzmann) before scaling it by 1e-4: at 1100-1300 K the power "
    "stays under 65504, but from step 70 the oxygen-enriched campaign runs the blast at "
    "1700-1900 K, the fourth power passes 65504 and is inf, and every loss from then on is "
    "non-finite; the scaler skips each step and halves its scale again and again.",
)
def h184_blast_furnace_fp16_fourth_power(ctx: Context) -> None:
    gen = seeded(18407)
    model = TuyereNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    peak = []

    def watch(step, out, x, y):
        with torch.no_grad():
            peak.append(float(model.radiant(x[:, :1]).max()))

    _train(
        ctx,
        model,
        opt,
        _tuyere_logs(gen, 64),
        110,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        scaler=scaler,
        watch=watch,
        stop_on_nan=False,
    )
    at = FURNACE_HOT_BLAST
    ctx.check("loss finite before the campaign", _finite(ctx.losses[:at]))
    ctx.check("loss non-finite first at step 70", _first_bad(ctx.losses) == at)
    ctx.check("loss non-finite at every step from 70", not any(map(math.isfinite, ctx.losses[at:])))
    ctx.check(
        "float32 fourth power past float16's max from step 70 only",
        min(peak[at:]) > 65504 > max(peak[:at]),
    )
    ctx.check(
        "scaler's scale fell 1000x after the onset", ctx.scales[-1] < ctx.scales[at - 1] / 1000
    )
    ctx.check("loss fell before the onset", _fell(ctx.losses[:at]))


# -- hurling: a manual static loss scale not undone on the step after a resume --------------------

HURLING_RESUME = 60
HURLING_LOSS_SCALE = 4096.0


def _sliotar_strikes(gen, batch, d_in=14, seed=8):
    """Fourteen standardised strike readings (hurley speed, contact height, wind, distance,
    angle, ...); the label is whether the sliotar went over the bar."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        score = x @ w / math.sqrt(d_in) + 0.8 * torch.sin(2 * x @ v / math.sqrt(d_in))
        y = (score + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield x, y


@scenario(
    family="hurling_sliotar_flight_bce_mlp",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=HURLING_RESUME,
    note="A ReLU MLP (nn.ReLU modules) predicting whether a hurling strike puts the sliotar "
    "over the bar from 14 standardised readings, BCE with logits, Adam at 3e-3 with betas "
    "(0.9, 0.9999). The loop keeps a static loss scale of 4096 from its fp16 days: the loss is "
    "multiplied by 4096 before backward and the gradients divided by 4096 in a hook. On the "
    "first step after resuming from a checkpoint (step 60) the hook is not registered yet, "
    "so that one step's gradient is 4096x too large. Adam's second moment takes it in and "
    "with beta2 = 0.9999 keeps it: once the spike's first moment has decayed (about 50 steps, "
    "during which the loss is thrown up and comes back) the median per-weight update is 100x "
    "and more smaller than before the resume, and the loss makes no further progress; "
    "finite.",
)
def h184_hurling_loss_scale_not_undone(ctx: Context) -> None:
    gen = seeded(18408)
    model = Stack(14, hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.9999))
    moves = []
    prev = [torch.cat([p.detach().flatten() for p in model.parameters()])]

    def backward(step, loss):
        (loss * HURLING_LOSS_SCALE).backward()
        if step != HURLING_RESUME:
            for p in model.parameters():
                p.grad /= HURLING_LOSS_SCALE

    def after(step):
        now = torch.cat([p.detach().flatten() for p in model.parameters()])
        moves.append(float((now - prev[0]).abs().median()))
        prev[0] = now

    _train(
        ctx,
        model,
        opt,
        _sliotar_strikes(gen, 64),
        240,
        F.binary_cross_entropy_with_logits,
        backward=backward,
        after=after,
    )
    at = HURLING_RESUME
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient 1000x the preceding median at the resume step", gn[at] > 1000 * _median(gn[:at])
    )
    ctx.check(
        "median per-weight update 30x smaller from 60 steps after the resume than before it",
        _median(moves[at + 60 :]) < _median(moves[at - 30 : at]) / 30,
    )
    ctx.check("loss fell before the resume", _mean(ls[at - 10 : at]) < 0.8 * _mean(ls[:10]))
    ctx.check(
        "no progress after: the last 50 steps' loss not 10% under the 20 before the resume",
        _mean(ls[-50:]) > 0.9 * _mean(ls[at - 20 : at]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- spinning wheel: raw ADC counts fed to a ReLU net (the /1023 left out) ------------------------


def _yarn_scans(gen, batch, d_in=48, classes=6, seed=9, adc=1023.0):
    """A photodiode scan of the drafting zone (48 thickness readings in [0, 1] as ADC counts
    0-1023) and one of 6 yarn grades; ``adc`` is what the loader divides by (1.0 = the bug)."""
    g = torch.Generator().manual_seed(seed)
    protos = 0.25 + 0.5 * torch.rand(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = (protos[y] + 0.15 * torch.randn(batch, d_in, generator=gen)).clamp(0, 1)
        yield torch.round(x * 1023.0) / adc, y


@scenario(
    family="spinning_wheel_yarn_grade_relu_mlp",
    optimizer="SGD(nesterov)",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) grading spun yarn (6 grades) from a 48-point photodiode "
    "scan of a spinning wheel's drafting zone, SGD Nesterov (momentum 0.9) at 1e-3, "
    "cross-entropy. The scans arrive as 10-bit ADC counts and the loader's division by 1023 "
    "was dropped when the loader was rewritten: the inputs are all positive and in the "
    "hundreds, the first steps' gradients push every fc1 unit's pre-activation below zero for "
    "every scan, and within about 8 steps 63 of fc1's 64 ReLUs are dead for good (the last "
    "fires on a rare scan): the gradient to fc1 is exactly 0 on almost every step and the "
    "loss sits at ln 6 for the rest of the run.",
)
def h184_spinning_wheel_raw_adc_counts(ctx: Context) -> None:
    gen = seeded(18409)
    model = Stack(48, hidden=64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    dead, fc1_grad = [], []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.act1(model.fc1(x))))

    def backward(step, loss):
        loss.backward()
        fc1_grad.append(float(model.fc1.weight.grad.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _yarn_scans(gen, 64, adc=1.0),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        backward=backward,
    )
    ctx.check("under half of fc1's units dead at the first step", dead[0] < 0.5)
    ctx.check("95% of fc1's units dead at every one of the last 100 steps", min(dead[-100:]) > 0.95)
    ctx.check(
        "fc1's gradient exactly 0 on 90 of the last 100 steps",
        sum(g == 0.0 for g in fc1_grad[-100:]) >= 90,
    )
    ctx.check(
        "loss within 0.05 of ln 6 over the last 50 steps",
        abs(_mean(ctx.losses[-50:]) - math.log(6)) < 0.05,
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- sundial: OneCycleLR max_lr typed 3.0 for 0.3 ------------------------------------------------

SUNDIAL_PAST_LIMIT = 10


@scenario(
    family="sundial_shadow_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=SUNDIAL_PAST_LIMIT,
    note="A tanh MLP (nn.Tanh modules) correcting a garden sundial's shadow reading (equation "
    "of time, latitude and gnomon-tilt terms) from 6 standardised readings, plain SGD with "
    "batches of 256, MSE, OneCycleLR over 200 steps (30% warm-up, no momentum cycling). "
    "max_lr was typed 3.0 for 0.3: the warm-up carries the rate past 2/sharpness at about "
    "step 10 (lr x top Hessian eigenvalue on a probe batch: 0.96 at step 5, 2.2 at step 10, "
    "2.9 at step 12); the loss "
    "oscillates up from step 13, grows a thousandfold by step 23 and is NaN ten steps later.",
)
def h184_sundial_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(18410)
    model = Stack(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3.0, total_steps=200, pct_start=0.3, cycle_momentum=False
    )
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 6, seed=10))
    product = {}

    def before(step):
        if step in (5, 10, 12):
            lam = _sharpness(model, F.mse_loss, *probe)
            product[step] = opt.param_groups[0]["lr"] * lam

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 256, 6, seed=10),
        200,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    at = SUNDIAL_PAST_LIMIT
    ls = ctx.losses
    ctx.check("lr x sharpness under 1.5 at step 5", 0 < product.get(5, 9) < 1.5)
    ctx.check("lr x sharpness past 2 at step 10", product.get(10, 0) > 2)
    ctx.check("lr x sharpness past 2.5 at step 12", product.get(12, 0) > 2.5)
    ctx.check("loss fell before the limit", _mean(ls[at - 3 : at]) < 0.5 * _mean(ls[:3]))
    ctx.check(
        "loss then blew up 1000x or went non-finite",
        _first_bad(ls) is not None or max(ls[at:]) > 1000 * min(ls[:at]),
    )


# -- controls ------------------------------------------------------------------------------------


class HammerBackbone(nn.Module):
    """A GRU over the acoustic envelope of hammer blows, then a LayerNorm of its last state."""

    def __init__(self, d_in=5, hidden=48):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.norm(out[:, -1])


class KettleNet(nn.Module):
    def __init__(self, classes, hidden=48):
        super().__init__()
        self.backbone = HammerBackbone(hidden=hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def _blow_envelopes(gen, batch, coarse, length=16, d_in=5, kinds=8, seed=11):
    """Sixteen frames of a hammer blow's acoustic envelope (5 bands) from one of 8 kinds of
    dent; ``coarse`` labels only the hammer (kind // 2), otherwise the dent kind itself."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(kinds, length, d_in, generator=g)
    while True:
        k = torch.randint(0, kinds, (batch,), generator=gen)
        x = protos[k] + 0.9 * torch.randn(batch, length, d_in, generator=gen)
        yield x, (k // 2 if coarse else k)


@scenario(
    family="coppersmith_kettle_dent_gru_finetune",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A coppersmith's kettle-dent classifier: a GRU backbone with a LayerNorm "
    "over 16 frames of a hammer blow's 5-band acoustic envelope, first pre-trained in the "
    "scenario (Adam, 120 steps) to name the hammer (4 classes), then given a new head and "
    "fine-tuned to name the dent (8 classes): AdamW with the backbone at 1e-4 and the head at "
    "3e-3, each split into a weight-decay 0.01 group and a weight-decay-0 group for biases "
    "and the LayerNorm, ReduceLROnPlateau on the loss, cross-entropy. An ordinary fine-tune.",
)
def h184_coppersmith_gru_finetune(ctx: Context) -> None:
    gen = seeded(18411)
    model = KettleNet(classes=4)
    pre = torch.optim.Adam(model.parameters(), lr=3e-3)
    hammer = _blow_envelopes(gen, 64, coarse=True)
    pre_losses = []
    for _ in range(120):
        x, y = next(hammer)
        loss = F.cross_entropy(model(x), y)
        pre.zero_grad()
        loss.backward()
        pre.step()
        pre_losses.append(float(loss.detach()))
    model.head = nn.Linear(48, 8)
    groups = []
    for part, lr in ((model.backbone, 1e-4), (model.head, 3e-3)):
        named = list(part.named_parameters())
        groups.append(
            {"params": [p for n, p in named if p.dim() >= 2], "lr": lr, "weight_decay": 1e-2}
        )
        groups.append(
            {"params": [p for n, p in named if p.dim() < 2], "lr": lr, "weight_decay": 0.0}
        )
    opt = torch.optim.AdamW(groups)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _blow_envelopes(gen, 64, coarse=False),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
    )
    ctx.check(
        "pre-training loss fell by half", _mean(pre_losses[-10:]) < 0.5 * _mean(pre_losses[:10])
    )
    ctx.check("fine-tune loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="whetstone_grit_fp16_huber_mlp",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GELU MLP with a LayerNorm predicting the surface roughness a whetstone "
    "leaves from 10 standardised grit, pressure, angle and slurry readings (labels from a "
    "noisy profilometer), NAdam under OneCycleLR (max 3e-3), fp16 autocast with a "
    "torch.amp.GradScaler, gradient accumulation over 2 micro-batches, clip_grad_norm_ at "
    "1.0, Huber loss. An ordinary mixed-precision run.",
)
def h184_whetstone_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(18412)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(10, 64))
    model.add_module("norm", nn.LayerNorm(64))
    model.add_module("act1", nn.GELU())
    model.add_module("fc2", nn.Linear(64, 64))
    model.add_module("act2", nn.GELU())
    model.add_module("head", nn.Linear(64, 1))
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=180)
    scaler = torch.amp.GradScaler("cpu")

    def noisy(gen):
        for x, y in _readings(gen, 32, 10, seed=12):
            yield x, y + 0.2 * torch.randn(y.shape, generator=gen)

    _train(
        ctx,
        model,
        opt,
        noisy(gen),
        180,
        lambda o, y: F.huber_loss(o.squeeze(-1), y, delta=0.5),
        sched=sched,
        scaler=scaler,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell by a third", _fell(ctx.losses, ratio=0.67))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class BlastEncoder(nn.Module):
    def __init__(self, d_in=5, dim=32, layers=2, classes=4, length=16):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim,
                nhead=4,
                dim_feedforward=2 * dim,
                dropout=0.0,
                batch_first=True,
                norm_first=True,
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x) + self.pos
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h).mean(1))


@scenario(
    family="shofar_blast_encoder_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. Two pre-LN nn.TransformerEncoderLayer blocks over 16 frames of a shofar "
    "call's 5-band envelope naming the blast (tekiah, shevarim, teruah, tekiah gedolah), "
    "Adam at 2e-3 with a 20-step linear warm-up then cosine decay (LambdaLR), "
    "clip_grad_norm_ at 1.0, cross-entropy with label smoothing 0.1, 8% of the labels "
    "wrong. An ordinary run.",
)
def h184_shofar_encoder_warmup_cosine(ctx: Context) -> None:
    gen = seeded(18413)
    model = BlastEncoder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps, warm = 200, 20

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def noisy(gen):
        for x, y in _sequences(gen, 32, 16, 5, 4, seed=13, noise=1.0):
            wrong = torch.rand(len(y), generator=gen) < 0.08
            yield x, torch.where(wrong, torch.randint(0, 4, y.shape, generator=gen), y)

    _train(
        ctx,
        model,
        opt,
        noisy(gen),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))
