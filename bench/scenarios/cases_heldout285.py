"""Held-out set 285 (``h285_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a dragonfly patrol-beat hand-written LSTM cell unrolled over
100 steps whose recurrent init took gain 4 by a positional-argument slip, a mule packer's
load-balance regressor whose trunk param group took lr 1e-9 for 1e-2, a perry pear-mill yield
regressor whose EMA weights were swapped in for an evaluation and never swapped back, a
hurdy-gurdy rosin-drag regressor whose resume path applied a static loss scale of 65536 to one
step without unscaling (Adam's second moment poisoned), a meteor-shower ZHR Poisson net whose
log-rate lost its eps, a track-cycling pursuit power regressor fed one shard in milliwatts, a
chain-ferry crossing-time regressor whose ragged last micro-batch went through a sum-reduced
loss, a banjo head-tension cosine classifier whose feature normalisation was dropped, a
mushroom forager's species classifier whose z-loss sign was flipped, a quoits ringer-lie ReLU
net whose hidden bias was initialised with a rare-event prior, and three controls (an estuary
salt-wedge LSTM cell trained with truncated backpropagation through time, a skijoring run-fault
classifier under fp16 autocast with a GradScaler, a peat-cutting sod-moisture Huber regressor).

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
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    weight=None,
    extra=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``after(step)`` runs after the optimizer step, ``weight(step, micro)`` multiplies a
    micro-batch's backpropagated loss, ``extra(out)`` is added to the backpropagated loss (the
    logged loss is the plain one); stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for micro in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            total = loss if extra is None else loss + extra(out)
            w = weight(step, micro) if weight is not None else 1.0
            total = w * total / accumulate
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
        if not math.isfinite(shown):
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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


class HandLSTMCell(nn.Module):
    """An LSTM cell written out: gates i, f, g, o from ih(x) + hh(h)."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(d_in, 4 * hidden)
        self.hh = nn.Linear(hidden, 4 * hidden, bias=False)

    def forward(self, x, h, c):
        i, f, g, o = (self.ih(x) + self.hh(h)).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class SeqLSTM(nn.Module):
    """Unrolls ``cell`` over a (batch, time, features) sequence; ``head`` reads the last state
    (``every=True``: every state)."""

    def __init__(self, d_in, hidden, every=False):
        super().__init__()
        self.cell = HandLSTMCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        self.every = every
        self.states: list[torch.Tensor] = []
        self.keep = False
        self.carry = None

    def forward(self, x):
        b = x.shape[0]
        h, c = self.carry if self.carry is not None else (x.new_zeros(b, self.cell.hidden),) * 2
        self.states = []
        outs = []
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], h, c)
            if self.keep:
                h.retain_grad()
                self.states.append(h)
            if self.every:
                outs.append(self.head(h))
        self.last = (h, c)
        if self.every:
            return torch.cat(outs, -1)
        return self.head(h).squeeze(-1)


# -- dragonfly: the recurrent init took gain 4 by a positional-argument slip ---------------------

BEAT_LEN = 100


def _beats(gen, batch, length=BEAT_LEN):
    """A dragonfly's patrol beat: 4 readings per wing-beat window; the target is the mean
    heading reading of the first 10 windows (the territory edge it turned at)."""
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        yield x, x[:, :10, 0].mean(1) * 2.0


def _init_recurrent(weight, chunks, gain=1.0):
    """Orthogonal init of each gate's block of a recurrent matrix."""
    h = weight.shape[1]
    with torch.no_grad():
        for k in range(weight.shape[0] // h):
            block = torch.empty(h, h)
            nn.init.orthogonal_(block, gain=gain)
            weight[k * h : (k + 1) * h] = block


@scenario(
    family="dragonfly_patrol_beat_lstm_cell_regressor",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("cell.hh", "cell"),
    diverges=None,
    heldout=True,
    note="A hand-written LSTM cell (cell.ih, cell.hh, gates i, f, g, o) unrolled over 100 wing-beat windows of a dragonfly's patrol, head regressing the heading at the start of the beat from the last state; forget-gate bias 3 (a long-memory init), RMSprop lr 1e-3, MSE, gradient clipping at 1. The recurrent init helper is init(weight, chunks, gain=1.0) and the call was written init(cell.hh.weight, 4, 4): the gate count landed in gain too, so every gate's recurrent block is orthogonal with gain 4. Backpropagated through time, the gradient on the hidden state grows step after step going back: on the first state it is over 100x the last one's, the pre-clip gradient norm is far above the clip, and the loss hardly falls. Clipping keeps it finite.",
)
def h285_dragonfly_recurrent_gain_slip(ctx: Context) -> None:
    gen = seeded(28501)
    model = SeqLSTM(4, 32)
    _init_recurrent(model.cell.hh.weight, 4, 4)  # meant: _init_recurrent(w, 4), gain 1
    with torch.no_grad():
        model.cell.ih.bias[32:64] = 3.0
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    px, py = next(_beats(torch.Generator().manual_seed(3), 64))

    def through_time():
        model.keep = True
        model.zero_grad()
        F.mse_loss(model(px), py).backward()
        first = float(model.states[0].grad.norm())
        last = float(model.states[-1].grad.norm())
        model.keep = False
        model.zero_grad()
        return first / max(last, 1e-30)

    ratios = [through_time()]
    _train(
        ctx,
        model,
        opt,
        _beats(gen, 32),
        80,
        F.mse_loss,
        clip=1.0,
        after=lambda s: ratios.append(through_time()) if s % 20 == 19 else None,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("gradient on the first state over 100x the last one's at the start", ratios[0] > 100)
    ctx.check("still over 30x at the end", ratios[-1] > 30)
    ctx.check("pre-clip gradient norm over 10x the clip (median)", _median(ctx.grad_norms) > 10)


# -- mule packer: the trunk param group took lr 1e-9 for 1e-2 ------------------------------------


@scenario(
    family="mule_packer_load_balance_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the side-to-side imbalance of a mule's pack from 10 standardised readings (pannier weights, load height, cinch tension), Adagrad with two param groups: the trunk group (fc1) and the rest. The trunk group's lr was typed 1e-9 where the sweep meant 1e-2 (the rest run at 5e-2): fc1 is as good as frozen, its update-to-weight ratio is under 1e-7 every step while fc2 and head move at ordinary rates; the loss falls only as far as the random first layer allows. Finite, no blow-up.",
)
def h285_mule_packer_group_lr_typo(ctx: Context) -> None:
    gen = seeded(28502)
    model = Stack(10, hidden=48)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},  # meant 1e-2
            {"params": [*model.fc2.parameters(), *model.head.parameters()], "lr": 5e-2},
        ]
    )
    ratios: dict[str, list[float]] = {"fc1": [], "head": []}
    prev = {k: _flat(getattr(model, k)) for k in ratios}

    def after(step):
        for k in ratios:
            now = _flat(getattr(model, k))
            ratios[k].append(float((now - prev[k]).norm() / now.norm()))
            prev[k] = now

    _train(ctx, model, opt, _readings(gen, 64, 10, 52), 200, F.mse_loss, after=after)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("fc1 update ratio under 1e-7 every step", max(ratios["fc1"]) < 1e-7)
    ctx.check("head update ratio over 1e-4 (median)", _median(ratios["head"]) > 1e-4)


# -- perry mill: the EMA weights were swapped in for an evaluation, never swapped back ----------

EMA_SWAP = 150


@scenario(
    family="perry_pear_mill_yield_ema_gelu_regressor",
    optimizer="SGD momentum",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=EMA_SWAP,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a perry pear mill's juice yield from 8 standardised readings, SGD momentum 0.9 at lr 0.02, MSE, with an EMA of the weights (decay 0.999) kept for evaluation. At step 150 the evaluation hook copies the EMA weights into the model to evaluate them and the restore line was left out: from step 150 on the model trains from the EMA weights, which with decay 0.999 over 150 steps are still mostly the initial ones. The loss jumps back to near its starting level at step 150 (over 3x the level just before) and the run trains back down (under a third of the spike) within about 60 steps. No data, gradient or optimizer fault.",
)
def h285_perry_mill_ema_swap_not_restored(ctx: Context) -> None:
    gen = seeded(28503)
    model = Stack(8, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    shadow = [p.detach().clone() for p in model.parameters()]

    def after(step):
        with torch.no_grad():
            for s, p in zip(shadow, model.parameters(), strict=True):
                s.mul_(0.999).add_(p, alpha=0.001)
            if step == EMA_SWAP - 1:  # evaluate with the EMA weights ... never restored
                for s, p in zip(shadow, model.parameters(), strict=True):
                    p.copy_(s)

    _train(ctx, model, opt, _readings(gen, 64, 8, 53), 260, F.mse_loss, after=after)
    ls = ctx.losses
    before = _median(ls[EMA_SWAP - 20 : EMA_SWAP])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss at the swap over 3x the level before", ls[EMA_SWAP] > 3 * before)
    ctx.check(
        "back under a third of the spike within 60 steps",
        _mean(ls[EMA_SWAP + 50 : EMA_SWAP + 60]) < ls[EMA_SWAP] / 3,
    )


# -- hurdy-gurdy: the resume path scaled one step's loss by 65536 and never unscaled -------------

RESUME = 60
STATIC_SCALE = 65536.0


@scenario(
    family="hurdy_gurdy_rosin_wheel_drag_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=RESUME,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the drag of a hurdy-gurdy's rosined wheel on its strings from 12 standardised readings, Adam lr 1e-3 with betas (0.9, 0.999), MSE. The run is resumed at step 60 and the resume path, written for an old fp16 recipe, multiplies that first step's loss by a static loss scale of 65536 and never unscales the gradients. That one gradient, over 10^4x the usual, fills Adam's second moment: with beta2 0.999 it decays only slowly, so for the next hundred steps the updates are over 20x smaller than before the resume and the loss, still falling before step 60, stalls. No blow-up.",
)
def h285_hurdy_gurdy_resume_static_scale(ctx: Context) -> None:
    gen = seeded(28504)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    moves: list[float] = []
    prev = [_flat(model)]

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 54),
        200,
        F.mse_loss,
        weight=lambda step, micro: STATIC_SCALE if step == RESUME else 1.0,
        after=after,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("gradient at the resume over 10^4x the median", gn[RESUME] > 1e4 * _median(gn))
    ctx.check(
        "updates over the 100 steps after are 20x smaller than the 40 before",
        _mean(moves[RESUME + 20 : RESUME + 120]) < _mean(moves[RESUME - 40 : RESUME]) / 20,
    )
    ctx.check(
        "the loss was falling before the resume",
        _mean(ls[RESUME - 10 : RESUME]) < 0.8 * _mean(ls[:10]),
    )
    ctx.check(
        "then stalls: not 20% lower 100 steps later",
        _mean(ls[RESUME + 90 : RESUME + 110]) > 0.8 * _mean(ls[RESUME - 10 : RESUME]),
    )


# -- meteor shower: the log-rate lost its eps -----------------------------------------------------


class LogRelu(nn.Module):
    """log of a ReLU rate link: meant log(relu(z) + 1e-6); the eps was dropped in a cleanup."""

    def forward(self, z):
        return torch.log(F.relu(z))


class ZhrNet(nn.Module):
    def __init__(self, d_in=6, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        self.log_rate = LogRelu()
        with torch.no_grad():
            self.head.bias.fill_(4.0)

    def forward(self, x):
        return self.log_rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1))


def _meteors(gen, batch, seed=55):
    """Hourly meteor counts from 6 sky readings (radiant altitude, moon, limiting magnitude):
    mostly a few an hour, many hours with none."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        rate = torch.exp(0.9 * x @ w / math.sqrt(6) - 0.2)
        yield x, torch.poisson(rate, generator=gen)


LOG0_STEP = 36  # measured: the step whose loss is the first non-finite one


def _poisson_nll(log_rate, y):
    return (torch.exp(log_rate) - y * log_rate).mean()


@scenario(
    family="meteor_shower_zhr_poisson_relu_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("log_rate",),
    diverges=LOG0_STEP,
    heldout=True,
    note="A ReLU net (fc1, act1, fc2, act2, head, log_rate) modelling hourly meteor counts of a shower from 6 sky readings with a Poisson NLL exp(l) - y l, Adamax lr 3e-3. The log-rate link was log(relu(z) + 1e-6); a cleanup dropped the eps. Hours with no meteors pull the rate down, and once the head's output for some hour goes to or below 0 the link returns log(0) = -inf: the NLL is inf or NaN (0 x -inf) and the run is dead from that step (step 36).",
)
def h285_meteor_zhr_log_eps_dropped(ctx: Context) -> None:
    gen = seeded(28505)
    model = ZhrNet()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    _train(ctx, model, opt, _meteors(gen, 64), 300, _poisson_nll)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss went non-finite", bad is not None)
    ctx.check("first non-finite at the recorded step", bad == LOG0_STEP)
    ctx.check("finite for at least 10 steps first", bad is not None and bad >= 10)
    ctx.check("the loss fell before", bad is not None and min(ls[:bad]) < 0.8 * ls[0])


# -- track cycling: one shard's power columns in milliwatts ---------------------------------------

MW_STEP = 120


@scenario(
    family="track_cycling_pursuit_power_tanh_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=MW_STEP,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a team pursuit rider's lap split from 10 readings (three power-meter columns, cadence, position in the line), standardised with watt statistics, plain SGD lr 0.05, MSE, gradient clipping at 1. One shard came from a power meter logging in milliwatts and was not converted: at step 120 the batch's three power columns are 1000x (about 1000 standard deviations out). That batch's loss and gradient spike, clipping caps the step, and the run recovers.",
)
def h285_pursuit_power_milliwatt_shard(ctx: Context) -> None:
    gen = seeded(28506)
    model = Stack(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scale: list[float] = []

    def alter(step, x, y):
        if step == MW_STEP:
            x = x.clone()
            x[:, :3] *= 1000.0
        scale.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 56), 240, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(ls[MW_STEP - 20 : MW_STEP])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the shard's inputs over 100x the usual peak", scale[MW_STEP] > 100 * _median(scale))
    ctx.check("loss at the shard over 5x the level before", ls[MW_STEP] > 5 * before)
    ctx.check("gradient at the shard over 5x the median", gn[MW_STEP] > 5 * _median(gn))
    ctx.check("recovered: last 20 under 2x the level before", _mean(ls[-20:]) < 2 * before)


# -- chain ferry: the ragged last micro-batch went through a sum-reduced loss -------------------

RAGGED = 100


@scenario(
    family="chain_ferry_crossing_time_gelu_regressor",
    optimizer="NAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=RAGGED,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a chain ferry's crossing time from 8 standardised readings (river flow, load, chain slack), NAdam lr 2e-3, MSE, gradient accumulation over 4 micro-batches, clipping at 1. At step 100 the loader's epoch ends with a ragged micro-batch, and the ragged-batch code path builds its loss with reduction='sum' and skips the division by the accumulation count: that micro-batch's contribution is 64 x 4 = 256x too large, and the step's gradient is over 50x the median on an ordinary batch (its own loss is ordinary). Clipping caps the step and the run goes on training.",
)
def h285_chain_ferry_ragged_sum_loss(ctx: Context) -> None:
    gen = seeded(28507)
    model = Stack(8, hidden=48, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 57),
        200,
        F.mse_loss,
        accumulate=4,
        clip=1.0,
        weight=lambda step, micro: 64.0 * 4 if step == RAGGED and micro == 3 else 1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("gradient at the ragged step over 50x the median", gn[RAGGED] > 50 * _median(gn))
    ctx.check(
        "the batch itself is ordinary (loss under 2x the level before)",
        ls[RAGGED] < 2 * _median(ls[RAGGED - 20 : RAGGED]),
    )
    ctx.check("the loss fell overall", _fell(ls, ratio=0.7))


# -- banjo head: the cosine classifier's feature normalisation was dropped ----------------------


class CosineHead(nn.Module):
    """s * normalize(f) @ normalize(W).T; the feature normalisation was lost in a refactor."""

    def __init__(self, dim, classes, s=30.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.s = s

    def forward(self, f):
        return self.s * f @ F.normalize(self.weight, dim=-1).T  # meant F.normalize(f, dim=-1)


class BanjoNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = CosineHead(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="banjo_head_tension_cosine_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2) with a cosine-softmax head (scale 30) naming which of 6 tension grades a banjo head is at from 16 tap-tone readings, AdamW lr 3e-3, cross-entropy. A refactor dropped F.normalize on the features (only the class weights are normalised), so the logits are 30 x the feature norm instead of at most 30: the peak logit passes 30, the most the intended head could give, and over half the rows' float32 softmax gives the target probability exactly 1.0 (others exactly 0). Finite, no blow-up.",
)
def h285_banjo_head_cosine_unnormalised(ctx: Context) -> None:
    gen = seeded(28508)
    model = BanjoNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    px, py = next(_kinds(torch.Generator().manual_seed(8), 256, 16, 6, 58))
    _train(ctx, model, opt, _kinds(gen, 64, 16, 6, 58), 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        logits = model(px)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half the rows' softmax exactly 1.0", collapsed_fraction(logits, py) > 0.5)
    ctx.check(
        "peak logit over 30 (the most a cosine head can give)", float(logits.abs().max()) > 30
    )


# -- mushroom forager: the z-loss sign was flipped ----------------------------------------------


@scenario(
    family="mushroom_forager_species_zloss_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) naming which of 8 mushroom species a forager's find is from 20 readings (cap, gill, spore print, habitat), RAdam lr 3e-3, cross-entropy plus a z-loss 1e-3 * logsumexp(z)^2 meant to keep the output logits small. The z-loss was added with a minus sign (copied from a reward-style term): it now pays for larger logits, unboundedly, and the head's logits grow over 20x and keep growing to the end. The cross-entropy stays finite.",
)
def h285_mushroom_zloss_sign_flip(ctx: Context) -> None:
    gen = seeded(28509)
    model = Stack(20, hidden=64, out=8, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    px, _ = next(_kinds(torch.Generator().manual_seed(9), 256, 20, 8, 59))

    def peak():
        with torch.no_grad():
            return float(model(px).abs().max())

    peaks = [peak()]
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 8, 59),
        200,
        F.cross_entropy,
        classifier=True,
        extra=lambda out: -1e-3 * torch.logsumexp(out, -1).pow(2).mean(),  # meant +1e-3
        after=lambda s: peaks.append(peak()),
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("still growing over the last 50 steps", peaks[-1] > 1.3 * peaks[-50])


# -- quoits: the hidden bias took a rare-event prior init ---------------------------------------


@scenario(
    family="quoits_ringer_lie_relu_mlp",
    optimizer="SGD Nesterov",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) naming how a thrown quoit lies around the hob (5 classes) from 12 readings of the throw, SGD Nesterov momentum 0.9 at lr 0.05, cross-entropy. The init loop meant to give only the head a rare-event prior bias (-log((1 - p) / p) for p 0.05, about -2.9) was written over linears[1:] for linears[-1:], so fc2's bias starts at -2.9 too. Over half of act2's units are never positive on any input from the first step, get no gradient, and stay dead to the end; the loss stays at chance level (log 5).",
)
def h285_quoits_hidden_bias_prior(ctx: Context) -> None:
    gen = seeded(28510)
    model = Stack(12, hidden=64, out=5)
    prior = -math.log((1 - 0.05) / 0.05)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in linears[1:]:  # meant linears[-1:]: the head only
        nn.init.constant_(m.bias, prior)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    px, _ = next(_kinds(torch.Generator().manual_seed(10), 512, 12, 5, 60))

    def dead():
        with torch.no_grad():
            return dead_fraction(model.features(px))

    start = dead()
    _train(ctx, model, opt, _kinds(gen, 64, 12, 5, 60), 200, F.cross_entropy, classifier=True)
    end = dead()
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half of act2's units dead at the start", start > 0.5)
    ctx.check("over half still dead at the end", end > 0.5)
    ctx.check("the loss stayed within 10% of its start", _mean(ls[-20:]) > 0.9 * ls[0])


# -- controls --------------------------------------------------------------------------------------


def _salinity(gen, batch, length, chunk):
    """Salt-wedge salinity at a gauge: tidal harmonics plus river-flow noise, served as
    consecutive chunks of long sequences (input: 3 readings, target: the next salinity)."""
    while True:
        t = torch.arange(length + 1, dtype=torch.float32)
        phase = 2 * math.pi * torch.rand(batch, 2, generator=gen)
        flow = 0.3 * torch.randn(batch, 1, generator=gen)
        sal = (
            torch.sin(2 * math.pi * t / 25 + phase[:, :1])
            + 0.5 * torch.sin(2 * math.pi * t / 12.5 + phase[:, 1:])
            - flow
            + 0.05 * torch.randn(batch, length + 1, generator=gen)
        )
        feats = torch.stack(
            [
                sal[:, :-1],
                flow.expand(-1, length),
                torch.cos(2 * math.pi * t[:-1] / 25).expand(batch, -1),
            ],
            -1,
        )
        for s in range(0, length, chunk):
            yield feats[:, s : s + chunk], sal[:, s + 1 : s + chunk + 1], s == 0


@scenario(
    family="estuary_salt_wedge_tbptt_lstm_cell",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: a hand-written LSTM cell (cell.ih, cell.hh) with a head on every state forecasting the next salinity reading at an estuary gauge from a 400-step record, trained with truncated backpropagation through time: windows of 25 steps, the state carried over and detached between windows, reset at each new record; forget-gate bias 1, Adam lr 3e-3, MSE, clipping at 1.",
)
def h285_salt_wedge_tbptt_control(ctx: Context) -> None:
    gen = seeded(28511)
    model = SeqLSTM(3, 32, every=True)
    with torch.no_grad():
        model.cell.ih.bias[32:64] = 1.0
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    stream = _salinity(gen, 16, 400, 25)

    def windows():
        for x, y, fresh in stream:
            if fresh:
                model.carry = None
            yield x, y

    def after(step):
        h, c = model.last
        model.carry = (h.detach(), c.detach())

    _train(ctx, model, opt, windows(), 160, F.mse_loss, clip=1.0, after=after)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, k=16, ratio=0.5))


@scenario(
    family="skijoring_run_fault_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) naming which of 6 faults a skijoring run had (line slack, missed gate, horse break) from 16 readings, under fp16 autocast with a torch.amp.GradScaler, AdamW with weight decay 0.05, OneCycleLR peaking at 3e-3, label smoothing 0.1, gradient accumulation over 2, clipping at 1.",
)
def h285_skijoring_fp16_control(ctx: Context) -> None:
    gen = seeded(28512)
    model = Stack(16, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 32, 16, 6, 62),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.7))


def _sods(gen, batch, seed=63):
    """Peat sod moisture after cutting from 10 readings; heavy-tailed (Student-t) noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    t = torch.distributions.StudentT(2.5)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        noise = t.sample((batch,)) * 0.2
        yield x, torch.tanh(x @ w / math.sqrt(10)) * 1.5 + noise


@scenario(
    family="peat_cutting_sod_moisture_huber_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing a cut peat sod's moisture from 10 readings with heavy-tailed (Student-t) target noise, Huber loss (delta 1), SGD momentum 0.9 with two param groups (no weight decay on the head), a linear warm-up over 20 steps then ReduceLROnPlateau, clipping at 2.",
)
def h285_peat_sod_huber_control(ctx: Context) -> None:
    gen = seeded(28513)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(
        [
            {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "weight_decay": 1e-4},
            {"params": model.head.parameters(), "weight_decay": 0.0},
        ],
        lr=0.03,
        momentum=0.9,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def before(step):
        if step < 20:
            for g in opt.param_groups:
                g["lr"] = 0.03 * (step + 1) / 20

    _train(
        ctx,
        model,
        opt,
        _sods(gen, 64),
        220,
        F.huber_loss,
        before=before,
        sched=plateau,
        clip=2.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, k=20, ratio=0.6))
