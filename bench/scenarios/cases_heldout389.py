"""Held-out set 389 (``h389_``): hand-written models of crafts, trades, sports, instruments and
natural phenomena not covered before.

Faults: a glass-lehr annealing-strain Elman RNN whose recurrent init gain is typed 3.0 for 1.0
(gradients grow through time), a saltern crystallizer-harvest fp16 regressor whose target unit
is kilograms instead of tonnes (the head's fp16 output overflows), a katana hamon clay-line
regressor resumed with its weights but a fresh NAdam state (a one-off loss spike), a thatching
spar-twist classifier whose stem param group has lr and weight decay swapped (frozen stem), a
frazil-ice crystal-size log-normal NLL net whose sigma head lost its softplus (log of a negative),
a coasteering swell-jump BCE net fed one buoy's shard in centimetres (one corrupted batch), a
saddler's welt-stitch regressor whose loss-weight table is read in percent at one step (one
gradient burst), a cooperage barrel-toast regressor whose resumed step multiplies the loss by a
restored fp16 loss scale (Adam's second moment poisoned), a drumlin-swarm elongation regressor
whose detrend offset is applied per batch instead of per epoch (the targets drift, the loss climbs slowly) and a hurdy-gurdy trompette-buzz
classifier whose distillation temperature in per-mille multiplies the logits (softmax collapse).

Controls: a ship signal-flag hoist LSTM sequence-to-sequence model (cells written out with their
gates, teacher forcing, forget-gate bias 1, Adam, clipping at 1), a kendo men-strike Conv1d
classifier (SGD Nesterov under OneCycleLR, label smoothing, clipping) and a sugarcane-crusher
juice fp16 Huber regressor (autocast with a GradScaler, AdamW with a no-decay group,
accumulation, ReduceLROnPlateau, clipping).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    forward=None,
    before=None,
    alter=None,
    backprop=None,
    after=None,
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss, accumulate)`` returns the loss actually backpropagated,
    ``inspect(step)`` sees the gradients before clipping, ``after(step)`` runs after the
    optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it)."""
    forward = forward or (lambda m, x: m(x))
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
                out = forward(model, x)
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y)
            total = loss / accumulate
            if backprop is not None:
                total = backprop(step, loss, accumulate)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
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
            return step + 1
    return steps


# -- data -------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, offset=0.0, scale=1.0):
    """Standardised readings and a smooth nonlinear target (``offset + scale * f(x)``)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        f = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, offset + scale * (f + noise * torch.randn(batch, generator=gen))


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Readings labelled by a hidden rule, a few labels flipped."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    v = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = ((x @ w + 0.5 * torch.sin(2 * x @ v)) > 0).float()
        noise = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noise, 1 - y, y)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=40, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


def _cooling_curves(gen, batch, length=40, d_in=3):
    """Lehr temperature-zone readings over time; the target is a decayed sum of the first zone
    (the residual strain left at the exit)."""
    decay = 0.9 ** torch.arange(length - 1, -1, -1, dtype=torch.float32)
    while True:
        x = 0.5 * torch.randn(batch, length, d_in, generator=gen)
        y = (x[:, :, 0] * decay).sum(1) / 3.0
        yield x, y


def _hoists(gen, batch, length=7, vocab=12):
    """Signal-flag hoists: a sequence of flag tokens (2..vocab-1) and its reply, the hoist read
    back to front. Token 0 pads nothing here, token 1 starts the reply."""
    while True:
        src = torch.randint(2, vocab, (batch, length), generator=gen)
        yield src, src.flip(1)


# -- models -----------------------------------------------------------------------------------------


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class ElmanCell(nn.Module):
    """h' = tanh(inp(x) + rec(h)), written out."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.inp(x) + self.rec(h))


class ElmanRegressor(nn.Module):
    """Runs the cell over time; ``states`` keeps every hidden state (retain_grad on request)."""

    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.hidden = hidden
        self.cell = ElmanCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.rec.weight, gain=gain)
        self.keep = False
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if self.keep and h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


class LSTMCell(nn.Module):
    """An LSTM cell with its four gates written out: i, f, g, o from x and h."""

    def __init__(self, d_in, hidden, forget_bias=1.0):
        super().__init__()
        self.hidden = hidden
        self.x2g = nn.Linear(d_in, 4 * hidden)
        self.h2g = nn.Linear(hidden, 4 * hidden, bias=False)
        with torch.no_grad():
            self.x2g.bias.zero_()
            self.x2g.bias[hidden : 2 * hidden].fill_(forget_bias)

    def forward(self, x, state):
        h, c = state
        i, f, g, o = (self.x2g(x) + self.h2g(h)).chunk(4, dim=-1)
        i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
        c = f * c + i * torch.tanh(g)
        h = o * torch.tanh(c)
        return h, c


class HoistSeq2Seq(nn.Module):
    """Encoder LSTM reads the hoist, decoder LSTM writes the reply with teacher forcing (it sees
    the true previous flag), a linear head over the flag vocabulary."""

    def __init__(self, vocab=12, dim=32, hidden=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.encoder = LSTMCell(dim, hidden)
        self.decoder = LSTMCell(dim, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, src, tgt):
        b, t = src.shape
        h = c = src.new_zeros(b, self.encoder.hidden, dtype=torch.float32)
        for e in self.embed(src).unbind(1):
            h, c = self.encoder(e, (h, c))
        start = torch.ones(b, 1, dtype=torch.long)
        dec_in = torch.cat([start, tgt[:, :-1]], 1)  # teacher forcing
        outs = []
        for e in self.embed(dec_in).unbind(1):
            h, c = self.decoder(e, (h, c))
            outs.append(self.head(h))
        return torch.stack(outs, 1)


class Conv1dNet(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> pool -> head over (batch, channels, length)."""

    def __init__(self, channels, classes, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


class LogNormalNet(nn.Module):
    """Body, a mu head and a sigma head; the log-normal NLL is written by hand."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.act = nn.SiLU()
        self.mu_head = nn.Linear(hidden, 1)
        self.sigma_head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = self.act(self.body(x))
        return self.mu_head(z).squeeze(-1), self.sigma_head(z).squeeze(-1)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    "glass_lehr_annealing_strain_elman_rnn",
    "RMSprop",
    "exploding_gradients",
    ("cell.rec", "cell"),
    None,
    heldout=True,
    note="a hand-written tanh Elman RNN reads 40 lehr zone readings and regresses the residual "
    "strain at the exit; the recurrent weight's orthogonal init gain is typed 3.0 for 1.0, so "
    "dL/dh_t grows backwards through time (dL/dh_1 over 20x dL/dh_40 from the start and through "
    "the run, under 5x at gain 1.0); clipping at 1 keeps the loss finite",
)
def h389_glass_lehr_rnn_gain(ctx: Context) -> None:
    gen = seeded(38901)
    model = ElmanRegressor(3, 32, gain=3.0)
    intended = ElmanRegressor(3, 32, gain=1.0)
    model.keep = intended.keep = True
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _cooling_curves(gen, 32)
    ratios: list[float] = []

    def ratio(m):
        first, last = m.states[0].grad, m.states[-1].grad
        return float(first.norm() / last.norm().clamp_min(1e-12))

    def inspect(step):
        ratios.append(ratio(model))

    x0, y0 = next(_cooling_curves(torch.Generator().manual_seed(5), 32))
    F.mse_loss(intended(x0), y0).backward()
    ratio_intended = ratio(intended)
    _loop(ctx, model, opt, batches, 150, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check("dL/dh_1 over 20x dL/dh_40 at step 0", ratios[0] > 20)
    ctx.check("median ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("ratio under 5x at the intended gain 1.0", ratio_intended < 5)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "saltern_crystallizer_harvest_fp16_regressor",
    "Adam",
    "amp_overflow",
    "head",
    97,
    heldout=True,
    note="the harvest regressor trains under fp16 autocast with a GradScaler; the loader's unit "
    "table reads 'kg' for 't', so the salt harvests are 45000-85000 instead of 45-85; Adam "
    "drives the head's output towards their mean, its fp16 output passes 65504 and is inf "
    "(the float32 forward of the same batch is finite), the loss is inf at step 97",
)
def h389_saltern_fp16_kilograms(ctx: Context) -> None:
    gen = seeded(38902)
    model = Trunk(6, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    scaler = torch.amp.GradScaler("cpu")
    batches = _readings(gen, 64, 6, 38902, offset=65000.0, scale=10000.0)
    seen = {}

    def alter(step, x, y):
        seen["x"] = x
        return x, y

    n = _loop(ctx, model, opt, batches, 300, F.mse_loss, alter=alter, scaler=scaler, amp=True)
    bad = _first_bad(ctx.losses)
    with torch.no_grad():
        out32 = model(seen["x"])
        with torch.autocast("cpu", dtype=torch.float16):
            out16 = model(seen["x"])
    ctx.check("loss non-finite at step 97", bad == 97 and n == 98)
    ctx.check("the fp16 head output is inf", bool(torch.isinf(out16).any()))
    ctx.check("the float32 forward is finite", bool(torch.isfinite(out32).all()))
    ctx.check("fp16 output magnitude past 65504", float(out32.abs().max()) > 65504)


@scenario(
    "katana_hamon_clay_line_gelu_regressor",
    "NAdam",
    "loss_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="the hamon clay-line regressor is resumed at step 150 from a checkpoint that holds the "
    "weights but not the NAdam state (the optimizer is rebuilt fresh); the first steps after "
    "the resume take full-size lr steps on every weight, the loss jumps over 3x on an ordinary "
    "batch with an ordinary gradient, and the run recovers",
)
def h389_katana_hamon_fresh_state(ctx: Context) -> None:
    gen = seeded(38903)
    model = Trunk(8, 128, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    batches = _readings(gen, 64, 8, 38903, noise=0.02)

    def before(step):
        if step == 150:
            opt.state.clear()

    _loop(ctx, model, opt, batches, 260, F.mse_loss, before=before)
    ls, gs = ctx.losses, ctx.grad_norms
    base = _median(ls[130:150])
    ctx.check("loss over 3x within 3 steps of the resume", max(ls[151:154]) > 3 * base)
    ctx.check("gradient at the resume ordinary", gs[150] < 3 * _median(gs[130:150]))
    ctx.check("recovers", _mean(ls[-10:]) < 1.5 * _mean(ls[130:150]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    "thatching_spar_twist_grade_classifier",
    "Adagrad",
    "update_ratio_out_of_range",
    "fc1",
    None,
    heldout=True,
    note="two param groups, the stem (fc1) and the rest; the stem group is written "
    "dict(params=..., lr=1e-7, weight_decay=1e-2) with lr and weight decay swapped (meant lr "
    "1e-2, weight decay 1e-7), so fc1 moves under 1e-3 of its norm while receiving gradients "
    "and the head moves over 5%",
)
def h389_thatching_group_swap(ctx: Context) -> None:
    gen = seeded(38904)
    model = Trunk(12, 64, out=5)
    opt = torch.optim.Adagrad(
        [
            dict(params=model.fc1.parameters(), lr=1e-7, weight_decay=1e-2),
            dict(params=[*model.fc2.parameters(), *model.head.parameters()], lr=1e-2),
        ]
    )
    batches = _grades(gen, 64, 12, 5, 38904, spread=1.5)
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    fc1_grads: list[float] = []

    def inspect(step):
        fc1_grads.append(float(model.fc1.weight.grad.norm()))

    _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, inspect=inspect)
    ctx.check("fc1 moves under 1e-3 of its norm", _rel_change(w1, model.fc1.weight) < 1e-3)
    ctx.check("head moves over 5%", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("fc1 receives gradients", min(fc1_grads) > 1e-4)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.9))


@scenario(
    "frazil_ice_crystal_size_lognormal_nll_net",
    "Adamax",
    "nonfinite",
    "sigma_head",
    44,
    heldout=True,
    note="a log-normal NLL of frazil crystal sizes written by hand, log(sigma) + (log y - mu)^2 "
    "/ (2 sigma^2); the softplus on the sigma head was lost in a refactor, the sizes are nearly "
    "noise-free so the NLL drives sigma down, one sample's sigma crosses 0 and log(sigma) is NaN at step 44",
)
def h389_frazil_sigma_no_softplus(ctx: Context) -> None:
    gen = seeded(38905)
    model = LogNormalNet(6)
    with torch.no_grad():
        model.sigma_head.bias.fill_(0.6)
        model.sigma_head.weight.mul_(0.1)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    base = _readings(gen, 64, 6, 38905, noise=0.002)
    batches = ((x, torch.exp(0.5 * y)) for x, y in base)  # sizes in mm, positive
    sigmas: list[float] = []

    def nll(out, y):
        mu, sigma = out
        sigmas.append(float(sigma.detach().min()))
        return (torch.log(sigma) + (torch.log(y) - mu) ** 2 / (2 * sigma**2)).mean()

    _loop(ctx, model, opt, batches, 300, nll)
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite at step 44", bad == 44)
    ctx.check("a sigma below 0 at the NaN step", bad is not None and sigmas[bad] < 0)
    ctx.check("sigmas positive at the start", sigmas[0] > 0)
    ctx.check("loss finite before", bad is not None and _finite(ctx.losses[:bad]))


@scenario(
    "coasteering_swell_jump_go_bce_net",
    "SGD",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=120,
    note="one buoy logs its four swell columns in centimetres instead of metres; its shard "
    "arrives as the batch of step 120 (x100 in those columns), the loss and gradient jump over "
    "20x, clipping at 5 bounds the step and the run recovers",
)
def h389_coasteering_centimetre_shard(ctx: Context) -> None:
    gen = seeded(38906)
    model = Trunk(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = _binary(gen, 64, 10, 38906)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :4] *= 100.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        batches,
        240,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=5.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss over 20x at step 120", ls[120] > 20 * _median(ls[100:120]))
    ctx.check("gradient over 20x at step 120", gs[120] > 20 * _median(gs[100:120]))
    ctx.check("recovers", _mean(ls[-10:]) < 1.5 * _mean(ls[110:120]))
    ctx.check("loss fell", _fell(ls[:120]))


@scenario(
    "saddlers_welt_stitch_pull_silu_regressor",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=140,
    note="the loss weight comes from a curriculum table; its entry for step 140 is typed 100 (a "
    "percent) for 1.00, one step's gradient is 100x its size on a clean batch with an ordinary "
    "logged loss, clipping at 1 bounds the update and the run goes on",
)
def h389_saddler_weight_percent(ctx: Context) -> None:
    gen = seeded(38907)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = _readings(gen, 64, 8, 38907)
    table = {140: 100.0}

    def backprop(step, loss, acc):
        return table.get(step, 1.0) * loss / acc

    _loop(ctx, model, opt, batches, 240, F.mse_loss, backprop=backprop, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 20x at step 140", gs[140] > 20 * _median(gs[120:140]))
    ctx.check("logged loss ordinary at step 140", ls[140] < 2 * _median(ls[120:140]))
    ctx.check("recovers", _mean(ls[-10:]) < 1.5 * _mean(ls[130:140]))
    ctx.check("loss fell", _fell(ls))


@scenario(
    "cooperage_barrel_toast_level_gelu_regressor",
    "AdamW",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=90,
    note="the toast-level regressor is resumed at step 90; the resume restores the loss "
    "multiplier from the checkpoint field that holds the old fp16 loss scale (65536) instead "
    "of 1, that one step's gradient is over 1000x on a clean batch, lands in AdamW's second "
    "moment, and the per-weight updates stall for the next hundred steps",
)
def h389_cooperage_resume_loss_scale(ctx: Context) -> None:
    gen = seeded(38908)
    model = Trunk(8, 64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    batches = _readings(gen, 64, 8, 38908, noise=0.1)
    updates: list[float] = []
    prev = {}

    def before(step):
        prev["w"] = _weights(model)

    def after(step):
        updates.append(float((_weights(model) - prev["w"]).abs().median()))

    def backprop(step, loss, acc):
        return (65536.0 if step == 90 else 1.0) * loss / acc

    _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, after=after, backprop=backprop)
    gs = ctx.grad_norms
    ctx.check("gradient over 1000x at step 90", gs[90] > 1000 * _median(gs[70:90]))
    ctx.check(
        "median update 20-100 steps later under a tenth of before",
        _median(updates[110:190]) < 0.1 * _median(updates[50:90]),
    )
    ctx.check("gradients not smaller then", _median(gs[110:190]) > 0.5 * _median(gs[50:90]))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "drumlin_swarm_elongation_tanh_regressor",
    "RAdam",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="the loader's ice-flow detrend offset (0.02 per survey epoch of 100 batches) is "
    "incremented on every batch instead of every epoch, so the elongation targets drift by "
    "0.02 a step; the regressor lags ever further behind and the loss climbs slowly to over "
    "3x its lowest, with no jump and no NaN",
)
def h389_drumlin_detrend_per_batch(ctx: Context) -> None:
    gen = seeded(38909)
    model = Trunk(8, 64, act=nn.Tanh)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-4)
    raw = _readings(gen, 64, 8, 38909)
    state = {"offset": 0.0}

    def drifting():
        for x, y in raw:
            state["offset"] += 0.02  # meant once per 100 batches
            yield x, y + state["offset"]

    _loop(ctx, model, opt, drifting(), 300, F.mse_loss)
    ls = ctx.losses
    lows = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 20))
    means = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    jumps = max(b / max(a, 1e-12) for a, b in zip(means[2:-1], means[3:], strict=False))
    ctx.check("loss climbs to over 3x its lowest 20-step mean", _mean(ls[-20:]) > 3 * lows)
    ctx.check("no 2x jump between 10-step means", jumps < 2.0)
    ctx.check("targets drifted by over 2", state["offset"] > 2.0)
    ctx.check("loss finite", _finite(ls))


@scenario(
    "hurdy_gurdy_trompette_buzz_temperature_classifier",
    "SGD",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="the buzz-pattern classifier reuses a distillation recipe whose temperature is stored in "
    "per-mille (1000 = 1.0); the training forward multiplies the logits by it as if it were "
    "1/T, the logits are 1000x, over half the rows' target probability rounds to exactly 1.0 "
    "in float32 against none at the intended temperature on the same logits",
)
def h389_hurdy_gurdy_permille_temperature(ctx: Context) -> None:
    gen = seeded(38910)
    model = Trunk(10, 64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=2e-4, momentum=0.9, nesterov=True)
    batches = _grades(gen, 64, 10, 6, 38910)
    temperature = 1000.0
    collapsed: list[float] = []
    intended: list[float] = []

    def forward(m, x):
        return m(x) * temperature

    def loss_fn(out, y):
        with torch.no_grad():
            p = torch.softmax(out, -1).gather(1, y[:, None])
            q = torch.softmax(out / temperature, -1).gather(1, y[:, None])
            collapsed.append(float((p == 1.0).float().mean()))
            intended.append(float((q == 1.0).float().mean()))
        return F.cross_entropy(out, y)

    _loop(ctx, model, opt, batches, 200, loss_fn, classifier=True, forward=forward)
    ctx.check("over half the rows at exactly 1.0, last 30 steps", _mean(collapsed[-30:]) > 0.5)
    ctx.check("none at the intended temperature", max(intended[-30:]) == 0.0)
    ctx.check("loss finite", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    "ship_signal_flag_hoist_lstm_seq2seq",
    "Adam",
    "healthy",
    heldout=True,
    note="control: an LSTM encoder-decoder with its cells written out (input, forget, cell and "
    "output gates), teacher forcing, forget-gate bias 1, Adam, clipping at 1, learning to "
    "read generated flag hoists back to front",
)
def h389_flag_hoist_lstm_control(ctx: Context) -> None:
    gen = seeded(38911)
    model = HoistSeq2Seq()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = _hoists(gen, 32)

    def forward(m, src):
        return m(src, src.flip(1))

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    _loop(ctx, model, opt, batches, 250, loss_fn, forward=forward, clip=1.0)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "kendo_men_strike_conv1d_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="control: a Conv1d classifier of shinai accelerometer traces, SGD Nesterov under "
    "OneCycleLR (max 0.1), label smoothing 0.1, clipping at 1",
)
def h389_kendo_onecycle_control(ctx: Context) -> None:
    gen = seeded(38912)
    model = Conv1dNet(2, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    batches = _traces(gen, 32, 5, 38912)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, batches, 200, loss_fn, classifier=True, clip=1.0, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "sugarcane_crusher_juice_fp16_huber_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a SiLU juice-yield regressor under fp16 autocast with a GradScaler, AdamW "
    "with a no-decay bias group, accumulation over 2, ReduceLROnPlateau on a held-out batch, "
    "clipping at 1, Huber loss",
)
def h389_sugarcane_fp16_control(ctx: Context) -> None:
    gen = seeded(38913)
    model = Trunk(8, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [dict(params=decay, weight_decay=1e-2), dict(params=no_decay, weight_decay=0.0)],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    batches = _readings(gen, 32, 8, 38913, noise=0.1)
    xv, yv = next(_readings(torch.Generator().manual_seed(7), 256, 8, 38913, noise=0.1))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(xv), yv))

    _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("loss finite", _finite(ctx.losses))
