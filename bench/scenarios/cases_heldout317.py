"""Held-out set 317 (``h317_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a maar crater-lake level causal transformer forecaster
whose attention group's learning rate is typed 3e-2 for 3e-4 (attention logits grow), a kendang
drum-slap GELU regressor resumed from an fp16 run that multiplies one step's loss by the restored
loss scale without unscaling (Adam's second moment poisoned), a desert-pavement clast-cover SiLU
regressor resumed from a checkpoint that dropped the head (one loss spike), a nougat-slab cutting
force tanh regressor whose load-cell target drifts as the sugar cooker warms the room (slow climb
of the loss), a cestus punch BCE classifier whose hand-written BCE lost its clamp (0 x log 0,
NaN), a toffee hard-crack ReLU
regressor fed one batch of thermometer readings in kelvin (one corrupted batch), a sugarcane-gang
Huber regressor whose criterion sums for one step (one gradient burst), a fire-walk two-group
regressor whose trunk multiplier is typed 1e-6 (trunk frozen), a rope-skipping deep leaky-ReLU MLP
initialised at twice the He gain (gradients grow through depth), a sumi-ink grade classifier that
uses a face-recognition logit scale of 64 on a cosine head (softmax saturates), and three controls (a
gambang mallet GRU clipped by value, a suling ornament fp16 Conv1d classifier with a GradScaler,
a goat-yoga Gaussian NLL net on ASGD with accumulation and ReduceLROnPlateau).

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


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    forward=None,
    watch=None,
    after=None,
    clip=None,
    clip_value=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``forward(model, x)`` replaces ``model(x)``, ``watch(step, out, x, y)`` sees the forward
    pass, ``backprop(step, out, y, loss, accumulate)`` returns the micro-batch loss actually
    backpropagated (``loss / accumulate`` unless a bug says otherwise), ``after(step)`` runs after
    the optimizer step. Stops after a non-finite loss; returns the step it stopped at."""
    ctx.attach(model, opt, scaler=scaler)
    forward = forward or (lambda m, x: m(x))
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = forward(model, x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            if backprop is not None:
                total = backprop(step, out, y, loss, accumulate)
            else:
                total = loss / accumulate
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
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
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
        if not math.isfinite(shown):
            return step
    return steps


def _gauges(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised gauge readings and smooth nonlinear targets of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w / math.sqrt(d_in)
        y = torch.tanh(1.5 * z) + 0.5 * torch.cos(1.3 * x @ v / math.sqrt(d_in)) - 0.3
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


def _sorts(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class (classes overlap a little)."""
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


def _moves(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
    """Relative change of each named parameter since ``before``."""
    return {
        n: float((p.detach() - before[n]).norm() / (before[n].norm() + 1e-12))
        for n, p in model.named_parameters()
    }


# -- maar lake: the attention group's learning rate typed 3e-2 ------------------------------------


class CausalAttention(nn.Module):
    """Hand-written single-head-group causal attention that keeps its largest logit."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.peak = 0.0

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads

        def split(z):
            return z.reshape(b, t, self.heads, hd).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        logits = q @ k.transpose(-2, -1) / math.sqrt(hd)
        self.peak = float(logits.detach().abs().max())
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        logits = logits.masked_fill(mask, float("-inf"))
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class ForecastBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class LakeForecaster(nn.Module):
    """Causal transformer: each position forecasts the next day's lake level."""

    def __init__(self, d_in=2, dim=32, heads=2, layers=2, window=32):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(window, dim))
        self.blocks = nn.ModuleList(ForecastBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.embed(x) + self.pos[: x.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h)).squeeze(-1)


def _lake(gen, batch, window=32):
    """Windows of a maar crater lake's daily level (seasonal swing, rain pulses that drain away)
    and rainfall; the target at each day is the next day's level."""
    length = 400
    t = torch.arange(length, dtype=torch.float32)
    while True:
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        rain = (torch.rand(batch, length, generator=gen) < 0.08).float()
        rain = rain * torch.rand(batch, length, generator=gen) * 2.0
        level = torch.sin(2 * math.pi * t / 90.0 + phase)
        pulse = torch.zeros(batch, length)
        acc = torch.zeros(batch)
        for i in range(length):
            acc = 0.9 * acc + rain[:, i]
            pulse[:, i] = acc
        level = level + 0.4 * pulse + 0.03 * torch.randn(batch, length, generator=gen)
        start = int(torch.randint(0, length - window - 1, (1,), generator=gen))
        x = torch.stack([level[:, start : start + window], rain[:, start : start + window]], -1)
        y = level[:, start + 1 : start + window + 1]
        yield x, y


@scenario(
    family="maar_crater_lake_level_causal_transformer_forecaster",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A hand-written causal time-series transformer (embed, pos, two pre-LN blocks with a hand-written causal attention blocks.N.attn with q, k, v, proj and an upper-triangular mask, ln_f, head) forecasting a maar crater lake's next-day level at every position of a 32-day window of level and rainfall, AdamW with three parameter groups, MSE, 200 steps. The attention group's learning rate is meant to be 3e-4 (a tenth of the base 3e-3, the usual caution for q/k) and is typed 3e-2 with weight decay 0 for that group: q and k grow step after step and the largest pre-softmax logit q.k/sqrt(d) grows by well over an order of magnitude; the rest of the model trains at 3e-3.",
)
def h317_maar_lake_attention_lr_typo(ctx: Context) -> None:
    gen = seeded(31701)
    model = LakeForecaster()
    attn = [p for n, p in model.named_parameters() if ".attn." in n]
    decay = [p for n, p in model.named_parameters() if ".attn." not in n and p.dim() == 2]
    rest = [p for n, p in model.named_parameters() if ".attn." not in n and p.dim() != 2]
    opt = torch.optim.AdamW(
        [
            {"params": attn, "lr": 3e-2, "weight_decay": 0.0},  # meant 3e-4
            {"params": decay, "weight_decay": 1e-2},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=3e-3,
    )
    peaks = []

    def watch(step, out, x, y):
        peaks.append(max(b.attn.peak for b in model.blocks))

    _loop(ctx, model, opt, _lake(gen, 16), 200, F.mse_loss, watch=watch)
    ctx.check(
        "the peak attention logit grows over 100x from step 0", _mean(peaks[-20:]) > 100 * peaks[0]
    )
    ctx.check(
        "it is still higher late than at steps 60-80",
        _mean(peaks[-20:]) > 1.2 * _mean(peaks[60:80]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kendang: a resumed run skips the loss scale's unscale for one step ---------------------------

ONSET_KEN = 100


@scenario(
    family="kendang_drum_slap_loudness_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KEN,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a kendang (Sundanese hand drum) slap's loudness and decay (2 outputs, standardised) from 12 hand and skin readings, Adam at 1e-3 (betas 0.9, 0.999), MSE, 260 steps. The run is resumed at step 100 from a checkpoint of an fp16 run whose loss scale (65536) is restored into the hand-written loop; on the first step after the resume the loss is multiplied by the scale and the gradient is not unscaled. That one gradient, 65536x the usual, goes into Adam's second moment; for the rest of the run sqrt(v) is hundreds of times the gradient, the updates shrink by orders of magnitude and the loss stops falling.",
)
def h317_kendang_resume_unscaled(ctx: Context) -> None:
    gen = seeded(31702)
    model = Trunk(12, 64, out=2, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves, last = [], {}

    def backprop(step, out, y, loss, accumulate):
        return loss * 65536.0 if step == ONSET_KEN else loss

    def before(step):
        last["p"] = _flat(model)

    def after(step):
        moves.append(float((_flat(model) - last["p"]).norm()))

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 12, seed=317, outputs=2),
        260,
        F.mse_loss,
        before=before,
        after=after,
        backprop=backprop,
    )
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check(
        "the gradient at the resume step is over 1000x the median before",
        g[ONSET_KEN] > 1000 * _median(g[ONSET_KEN - 30 : ONSET_KEN]),
    )
    ctx.check(
        "updates from 60 steps after it on are under 1/20 of those before it",
        _mean(moves[ONSET_KEN + 60 :]) < _mean(moves[ONSET_KEN - 40 : ONSET_KEN]) / 20,
    )
    ctx.check(
        "the loss stops falling: the last 20 steps are within 20% of steps 160-180",
        _mean(ls[-20:]) > 0.8 * _mean(ls[160:180]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- desert pavement: a resume drops the head's weights --------------------------------------------

ONSET_PAV = 120


@scenario(
    family="desert_pavement_clast_cover_silu_regressor",
    optimizer="SGD momentum",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PAV,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a desert pavement's clast cover and its mean clast size after a decade (2 outputs, standardised) from 10 readings of slope, dust flux, rain, wind and shrink-swell clay, SGD momentum 0.9 at 2e-2, MSE, 260 steps. The job is pre-empted after step 119 and resumed: the checkpoint writer saved only the parameters whose names start with 'fc', and the resume loads it with strict=False into a freshly built model, so the head silently keeps a fresh random init while the trunk and the optimizer state come back. Step 120's loss jumps several-fold on ordinary data; the run trains back down within a few dozen steps.",
)
def h317_desert_pavement_resume_drops_head(ctx: Context) -> None:
    gen = seeded(31703)
    model = Trunk(10, 64, out=2, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def after(step):
        if step == ONSET_PAV - 1:
            saved = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc")}
            fresh = Trunk(10, 64, out=2, act=nn.SiLU)
            fresh.load_state_dict(saved, strict=False)
            with torch.no_grad():
                for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
                    p.copy_(q)

    _loop(ctx, model, opt, _gauges(gen, 64, 10, seed=318, outputs=2), 260, F.mse_loss, after=after)
    ls = ctx.losses
    before = _mean(ls[ONSET_PAV - 10 : ONSET_PAV])
    ctx.check("the loss at step 120 is over 4x the ten steps before", ls[ONSET_PAV] > 4 * before)
    ctx.check(
        "the loss is back under 1.5x its pre-spike level at the end", _mean(ls[-10:]) < 1.5 * before
    )
    ctx.check("finite throughout", _finite(ls))


# -- nougat: the load cell warms with the sugar cooker -------------------------------------------


def _nougat(gen, batch, seed, drift):
    """Guillotine cutting force on a nougat slab from 8 readings of slab temperature, nut load,
    honey ratio and blade speed; the logged target is read off a load cell without temperature
    compensation, so it creeps up as the sugar cooker warms the room (one batch per logged
    minute)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    minute = 0
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(8)) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y * (1 + drift * minute) + 2 * drift * minute
        minute += 1


@scenario(
    family="nougat_slab_cutting_force_tanh_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the guillotine cutting force on a confectioner's nougat slab from 8 readings of slab temperature, nut load, honey ratio and blade speed, RMSprop at 3e-4, MSE, 300 steps, batches in logging order. The logged target comes off a load cell whose temperature compensation was left off: as the sugar cooker warms the room the cell's gain and offset creep up (1% of scale per minute), so the target drifts faster than the model can follow and the loss, after an early fall, climbs slowly and steadily for the rest of the run with no single jump.",
)
def h317_nougat_load_cell_drift(ctx: Context) -> None:
    gen = seeded(31704)
    model = Trunk(8, 48, out=1, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    _loop(ctx, model, opt, _nougat(gen, 64, seed=319, drift=0.01), 300, F.mse_loss)
    ls = ctx.losses
    low = min(ls[:100])
    ctx.check("the last 20 steps' loss is over 3x the early low", _mean(ls[-20:]) > 3 * low)
    ctx.check(
        "it climbs steadily: each 50-step mean after step 100 is above the one before",
        all(_mean(ls[a + 50 : a + 100]) > _mean(ls[a : a + 50]) for a in range(100, 250, 50)),
    )
    ctx.check(
        "no single jump: no step is over 3x the mean of the ten before",
        all(ls[i] < 3 * _mean(ls[i - 10 : i]) for i in range(10, len(ls))),
    )
    ctx.check("finite throughout", _finite(ls))


# -- cestus: hand-written BCE without a clamp -----------------------------------------------------


class PunchNet(nn.Module):
    def __init__(self, d_in=10, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        self.squash = nn.Sigmoid()

    def forward(self, x):
        return self.squash(self.head(self.act1(self.fc1(x)))).squeeze(-1)


def _bce_by_hand(p, y):
    # the torch.clamp(p, 1e-7, 1 - 1e-7) of the original notebook was dropped in a clean-up
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def _punches(gen, batch, seed):
    """10 accelerometer readings of a punch; landed or not, well separated."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        yield x, (x @ w > 0).float()


DIVERGE_CES = 133


@scenario(
    family="cestus_glove_punch_landed_bce_classifier",
    optimizer="Adamax",
    cause="nonfinite",
    where=("squash",),
    diverges=DIVERGE_CES,
    heldout=True,
    note="A ReLU net (fc1, act1, head, squash = nn.Sigmoid) deciding whether a boxer's punch in a reconstructed cestus glove landed, from 10 accelerometer readings (the classes are linearly separable), Adamax at 1e-2, binary cross-entropy written by hand as -(y log p + (1 - y) log(1 - p)), 200 steps planned. The clamp of p into [1e-7, 1 - 1e-7] was dropped in a notebook clean-up: as the net grows confident the sigmoid of a landed punch rounds to exactly 1.0 in float32, (1 - y) log(1 - p) is 0 x log 0 = 0 x -inf, and the loss is NaN.",
)
def h317_cestus_bce_missing_clamp(ctx: Context) -> None:
    gen = seeded(31705)
    model = PunchNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    ones = []

    def watch(step, out, x, y):
        ones.append(int((out.detach() == 1.0).sum()))

    stop = _loop(ctx, model, opt, _punches(gen, 64, seed=320), 200, _bce_by_hand, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at the recorded step", bad == DIVERGE_CES and stop == DIVERGE_CES)
    ctx.check("a probability is exactly 1.0 at that step", bad is not None and ones[bad] > 0)
    ctx.check("no probability was exactly 1.0 at step 0", ones[0] == 0)
    ctx.check("finite before it", bad is not None and _finite(ctx.losses[:bad]))


# -- toffee: one batch of thermometer readings in kelvin -----------------------------------------

ONSET_TOF = 110


def _toffee(gen, batch, seed):
    """Minutes to the hard-crack stage of a toffee boil from 6 standardised readings (thermometer
    temperature, its rise, pan, burner, sugar load, humidity)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(6)) + 0.3 * torch.sin(2 * x[:, 0])
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="toffee_hard_crack_time_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TOF,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing minutes to the hard-crack stage of a confectioner's toffee boil from 6 standardised readings, plain SGD at 5e-2, MSE, gradient clipping at 1.0, 240 steps. The batch at step 110 comes from one kitchen's logger whose thermometer column was exported in kelvin and skipped the standardiser (it was flagged as already standardised): that batch's temperature column reads about 420 instead of about 0. The loss on that one batch is over 20x the rest and its gradient bursts; clipping bounds the step and the run recovers on the clean batches after it.",
)
def h317_toffee_kelvin_batch(ctx: Context) -> None:
    gen = seeded(31706)
    model = Trunk(6, 48)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)
    peak = []

    def alter(step, x, y):
        if step == ONSET_TOF:
            x = x.clone()
            x[:, 0] = 273.15 + 150.0 + 3.0 * x[:, 0]
        peak.append(float(x.abs().max()))
        return x, y

    _loop(ctx, model, opt, _toffee(gen, 64, seed=321), 240, F.mse_loss, alter=alter, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("the bad batch's inputs are over 50x the usual", peak[ONSET_TOF] > 50 * _median(peak))
    ctx.check(
        "the loss at step 110 is over 20x the ten steps before",
        ls[ONSET_TOF] > 20 * _mean(ls[ONSET_TOF - 10 : ONSET_TOF]),
    )
    ctx.check(
        "the gradient at step 110 is over 20x the median before",
        g[ONSET_TOF] > 20 * _median(g[ONSET_TOF - 30 : ONSET_TOF]),
    )
    ctx.check(
        "the run recovers to under 2x its pre-outlier loss",
        _mean(ls[-10:]) < 2 * _mean(ls[ONSET_TOF - 10 : ONSET_TOF]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- cane cutting: the evaluation hook leaves the loss summing for one step ----------------------

ONSET_CAN = 130


@scenario(
    family="sugarcane_cutting_row_tonnage_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CAN,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the tonnage a sugarcane cutting gang takes off a row from 10 standardised readings of stalk density, row length and crew, SGD Nesterov (momentum 0.9) at 1e-2, Huber loss (delta 1.0), gradient clipping at 5.0, 260 steps. The evaluation hook at step 129 switches the shared criterion's reduction to 'sum' to total the validation error and restores it one step late: step 130's training loss is summed over the 64 rows instead of averaged, on an ordinary batch, so that one gradient is 64x the usual. Clipping bounds the step and the run carries on.",
)
def h317_cane_cutting_sum_reduction(ctx: Context) -> None:
    gen = seeded(31707)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    crit = nn.HuberLoss(delta=1.0)

    def before(step):
        crit.reduction = "sum" if step == ONSET_CAN else "mean"

    def backprop(step, out, y, loss, accumulate):
        return crit(out, y)

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 10, seed=322),
        260,
        lambda out, y: F.huber_loss(out, y, delta=1.0),
        before=before,
        backprop=backprop,
        clip=5.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 130 is over 30x the median of the 30 steps before",
        g[ONSET_CAN] > 30 * _median(g[ONSET_CAN - 30 : ONSET_CAN]),
    )
    ctx.check(
        "the batch itself is ordinary: its mean loss is under 2x the ten steps before",
        ls[ONSET_CAN] < 2 * _mean(ls[ONSET_CAN - 10 : ONSET_CAN]),
    )
    ctx.check(
        "the gradient is back under 3x the median 5 steps on", g[ONSET_CAN + 5] < 3 * _median(g)
    )
    ctx.check("finite throughout", _finite(ls))


# -- fire walk: the trunk group's multiplier typed 1e-6 -------------------------------------------


@scenario(
    family="fire_walk_coal_bed_heat_flux_two_group_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the heat flux into a fire walker's sole from 9 standardised readings of the ember bed (depth, age, ash cover, wood), RAdam with two parameter groups, MSE, 240 steps. The trunk group's learning rate is meant to be base x 1e-1 and the multiplier is typed 1e-6: fc1 and fc2 train at 3e-9, their total move over the run is under 1e-4 of their norm and they stay at their random init, while the head trains at 3e-3 on frozen random features. The loss falls only as far as a linear read-out of random features allows.",
)
def h317_fire_walk_trunk_multiplier(ctx: Context) -> None:
    gen = seeded(31708)
    model = Trunk(9, 64, act=nn.GELU)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.RAdam(
        [
            {"params": trunk, "lr": 3e-3 * 1e-6},  # meant 3e-3 * 1e-1
            {"params": model.head.parameters()},
        ],
        lr=3e-3,
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loop(ctx, model, opt, _gauges(gen, 64, 9, seed=323), 240, F.mse_loss)
    moved = _moves(model, start)
    ctx.check(
        "fc1 and fc2 moved under 1e-4 of their norm",
        max(moved["fc1.weight"], moved["fc2.weight"]) < 1e-4,
    )
    ctx.check("the head moved over 1e-2 of its norm", moved["head.weight"] > 1e-2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- rope skipping: leaky ReLU init gain doubled ---------------------------------------------------


DOUBLED_HE_GAIN = 2 * math.sqrt(2.0)  # the He gain sqrt(2), doubled by a stray residual line


class DeepLeaky(nn.Module):
    def __init__(self, d_in=12, width=32, depth=10, gain=DOUBLED_HE_GAIN):
        super().__init__()
        sizes = [d_in] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=False):
            lin = nn.Linear(a, b)
            nn.init.normal_(lin.weight, std=gain / math.sqrt(a))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.LeakyReLU(0.1)]
        self.net = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)
        self.acts: list[torch.Tensor] = []

    def forward(self, x):
        self.acts = []
        for i, layer in enumerate(self.net):
            x = layer(x)
            if i % 2 == 0 and x.requires_grad:
                x.retain_grad()
                self.acts.append(x)
        return self.head(self.norm(x)).squeeze(-1)


@scenario(
    family="rope_skipping_double_under_count_deep_leaky_mlp",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("net.0", "net.2"),
    diverges=None,
    heldout=True,
    note="A 10-layer leaky-ReLU MLP (net.0, net.2, ..., net.18, norm, head) regressing a rope skipper's double-under count in a 30 s round (standardised) from 12 readings of rope speed, jump height and cadence, Adagrad at 1e-2, MSE, gradient clipping at 1.0, 150 steps. Every hidden layer is initialised normal with std gain/sqrt(fan_in) where the gain is typed 2 sqrt(2) (the He gain sqrt(2) doubled by a copy of a 'x2 for the residual branch' line that has no residual here): each layer multiplies the backward signal by about 2, so the gradient at the first layer's output is hundreds of times that at the last hidden layer's (the LayerNorm before the head hides the forward growth from the loss). Clipping bounds the steps so the loss does not blow up.",
)
def h317_rope_skipping_init_gain(ctx: Context) -> None:
    gen = seeded(31709)
    model = DeepLeaky()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ratios = []

    def grab(step):
        a = model.acts
        if a and a[0].grad is not None and a[-1].grad is not None:
            ratios.append(float(a[0].grad.norm() / (a[-1].grad.norm() + 1e-30)))

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 12, seed=324),
        150,
        F.mse_loss,
        clip=1.0,
        after=grab,
    )
    ctx.check(
        "the gradient at net.0's output is over 50x that at the last hidden layer's at step 0",
        ratios[0] > 50,
    )
    ctx.check("and over 50x on most steps", _median(ratios) > 50)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sumi ink: a face-recognition logit scale on a 6-grade cosine classifier ----------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class InkGrader(Trunk):
    def __init__(self, scale):
        super().__init__(11, 64, out=6, act=nn.GELU)
        self.head = CosineHead(64, 6, scale)


@scenario(
    family="sumi_ink_stick_grind_grade_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP with a cosine head (fc1, act1, fc2, act2, head) grading a calligrapher's ground sumi ink into 6 grades from 11 readings of the stick, stone, water and grinding time, NAdam at 2e-3, cross-entropy, 200 steps. The head is a cosine classifier (normalised features against normalised class weights) whose inverse temperature s = 64 was copied from a face-recognition (ArcFace) config meant for thousands of identities with an angular margin; here there are 6 grades and no margin, so once the classes separate by a cosine gap of about 0.26 the float32 softmax of most rows rounds to exactly 1.0 on the predicted class.",
)
def h317_sumi_ink_face_recognition_scale(ctx: Context) -> None:
    gen = seeded(31710)
    model = InkGrader(scale=64.0)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    collapsed, scaled = [], []

    def watch(step, out, x, y):
        if step % 10 == 0:
            collapsed.append(collapsed_fraction(out.detach(), y))
            top = out.detach().topk(2, dim=-1).values
            scaled.append(_median((top[:, 0] - top[:, 1]).tolist()))

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 11, 6, seed=325, spread=0.5),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over a quarter of rows' softmax is exactly 1.0 late in the run", max(collapsed[-5:]) > 0.25
    )
    ctx.check(
        "the median top-1 lead over the runner-up grows over 5x from step 0",
        max(scaled[-5:]) > 5 * scaled[0],
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls -------------------------------------------------------------------------------------


class MalletGRU(nn.Module):
    def __init__(self, d_in=3, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _mallet(gen, batch, frames=24):
    """24 frames of a gambang player's mallet (height, speed, bar index); the target is the
    ringing level of the last struck bar, decayed by the frames since each strike."""
    while True:
        x = torch.randn(batch, frames, 3, generator=gen)
        strike = (x[:, :, 1] > 0.8).float()
        decay = torch.pow(0.8, torch.arange(frames - 1, -1, -1, dtype=torch.float32))
        y = (strike * (1 + 0.3 * x[:, :, 2]) * decay).sum(1) / 2.0
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="gambang_mallet_ring_level_gru_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="Control: a GRU regressor (gru, head) of the ringing level of a gambang (gamelan wooden xylophone) from 24 frames of mallet height, speed and bar, SGD momentum 0.9 at 5e-2 under StepLR (x0.5 every 60 steps), MSE, gradient clipping by value at 0.5 (clip_grad_value_), 180 steps.",
)
def h317_gambang_gru_clip_value(ctx: Context) -> None:
    gen = seeded(31711)
    model = MalletGRU()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    _loop(ctx, model, opt, _mallet(gen, 32), 180, F.mse_loss, clip_value=0.5, sched=sched)
    ctx.check("the loss fell to under 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


class BreathConv(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x.transpose(1, 2)))
        h = F.gelu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _ornaments(gen, batch, frames=48, classes=5):
    """48 frames of a suling (bamboo flute) player's breath pressure and finger-hole sensor; the
    ornament kind sets the frequency of a wobble in the pressure."""
    t = torch.arange(frames, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.12 * y.float()
        p = torch.sin(freq[:, None] * t + 6.28 * torch.rand(batch, 1, generator=gen))
        f = torch.cos(0.5 * freq[:, None] * t)
        x = torch.stack([p, f], -1) + 0.3 * torch.randn(batch, frames, 2, generator=gen)
        yield x, y


@scenario(
    family="suling_flute_ornament_fp16_conv1d_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: a GELU Conv1d classifier (conv1, conv2, head) of a suling flute ornament (5 kinds) from 48 frames of breath pressure and finger-hole readings, fp16 autocast with a torch.amp.GradScaler, Adam under OneCycleLR (max 5e-3), label smoothing 0.1, clipping at 1.0 after unscaling, 150 steps.",
)
def h317_suling_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(31712)
    model = BreathConv()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _ornaments(gen, 32),
        150,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell to under 70% of its start", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


class PoseNet(nn.Module):
    """Trunk with a mean head and a softplus variance head."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), F.softplus(self.var_head(h)) + 1e-4], -1)


def _pose_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


def _poses(gen, batch, seed):
    """Seconds a goat-yoga class holds a pose (standardised) from 8 readings; noisier when a
    goat climbs on (reading 0 high)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        scale = 0.05 + 0.3 * torch.sigmoid(2 * x[:, 0])
        yield x, torch.tanh(x @ w / math.sqrt(8)) + scale * torch.randn(batch, generator=gen)


@scenario(
    family="goat_yoga_pose_hold_time_gaussian_nll_net",
    optimizer="ASGD",
    cause="healthy",
    heldout=True,
    note="Control: a heteroscedastic SiLU regressor (fc1, act1, fc2, act2, mean_head, var_head with softplus) of how long a goat-yoga class holds a pose, Gaussian NLL (F.gaussian_nll_loss), ASGD with two parameter groups (heads at 2e-2, trunk at 1e-2), gradient accumulation over 2, ReduceLROnPlateau (patience 20), clipping at 2.0, 200 steps.",
)
def h317_goat_yoga_asgd_plateau(ctx: Context) -> None:
    gen = seeded(31713)
    model = PoseNet()
    heads = list(model.mean_head.parameters()) + list(model.var_head.parameters())
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.ASGD([{"params": trunk}, {"params": heads, "lr": 2e-2}], lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _loop(
        ctx,
        model,
        opt,
        _poses(gen, 32, seed=326),
        200,
        _pose_nll,
        clip=2.0,
        sched=sched,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("the loss fell by over 0.3 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.3)
    ctx.check("finite throughout", _finite(ls))
