"""Held-out set 339 (``h339_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a zampona panpipe breath-trace Conv1d regressor whose conv
group's lr exponent is typed 2e-7 for 2e-3 (conv layers barely move), a pilot-gig racing
crossing-time regressor whose resume path reloads an empty Adam state (one loss spike, recovers),
a clog-dancing tap-rhythm ReLU RNN whose orthogonal recurrent init uses tanh's gain 5/3
(gradients grow through time), a stilt-walking gait-phase classifier trained with nll_loss on raw
logits (no log_softmax: the head's logits grow without bound), a pipkrake needle-ice heave
Gaussian NLL net whose spread is sqrt of a raw linear output (sqrt of a negative, NaN), a
kelp-burning ash-yield regressor fed one shard whose missing assays are the lab's -99 sentinel
(one corrupted batch), a charcoal-burning kiln-yield Huber regressor whose logging hook leaves the
criterion at reduction='sum' for one step (one gradient burst), an amber-fishing nugget grader
whose logits are divided by a calibration temperature of 0.02 during training (softmax
saturates), a kite-buggy gust-response ReLU Conv1d classifier whose OneCycleLR max_lr is typed 4.0
for 0.04 (ReLUs die), a salt-panning brine-evaporation regressor whose warm-up target lr has the
linear scaling rule applied twice (past 2/sharpness), and three controls (a skyquake boom
bidirectional-GRU classifier with mean+max pooling over time and clipping at 0.25; a
rush-seating weave-tension fp16 Huber regressor with a GradScaler, accumulation and
ReduceLROnPlateau; a trug-making slat-grade classifier with a tied reconstruction decoder, label
smoothing, Adagrad and StepLR).

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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


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
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, out, y)``
    returns the loss actually backpropagated, ``after(step)`` runs after the optimizer step
    (gradients still in place), ``plateau()`` gives the validation loss for a ReduceLROnPlateau
    ``sched``. Stops after a non-finite loss (once ``ctx.step`` has seen it); returns the number
    of steps run."""
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
            total = backprop(step, loss, out, y) if backprop is not None else loss
            total = total / accumulate
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
            return step + 1
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, shift=0.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, generator=gen)
        yield x, shift + scale * y


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, length, channels, classes, seed, noise=0.5):
    """Sensor traces (batch, length, channels): each class a mix of two tones with its own
    frequencies and channel loadings, random phase, plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, 2, generator=g)
    loads = torch.randn(classes, 2, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 2, 1, generator=gen)
        waves = torch.sin(freqs[y][:, :, None] * t + phase)  # (b, 2, t)
        x = torch.einsum("bkt,bkc->btc", waves, loads[y])
        yield x + noise * torch.randn(batch, length, channels, generator=gen), y


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


class TraceConv(nn.Module):
    """Conv1d over a (batch, length, channels) trace: conv1, act1, conv2, act2, mean pool, head."""

    def __init__(self, channels, width=16, out=1):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, out)

    def maps(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x.transpose(1, 2)))))

    def forward(self, x):
        out = self.head(self.maps(x).mean(-1))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- zampona: the conv group's lr exponent is typed 2e-7 for 2e-3 --------------------------------


def _breaths(gen, batch, seed, length=48):
    """A zampona player's breath traces (pressure, flow, lip contact: 3 channels, 48 samples);
    the target is the note's pitch deviation, standardised, set by the trace's frequency."""
    g = torch.Generator().manual_seed(seed)
    loads = torch.randn(3, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        f = 0.2 + 0.6 * torch.rand(batch, generator=gen)
        a = 0.6 + 0.8 * torch.rand(batch, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        wave = a * torch.sin(f[:, None] * t + phase)
        x = wave[:, :, None] * loads + 0.2 * torch.randn(batch, length, 3, generator=gen)
        yield x, (f - 0.5) / 0.17


@scenario(
    family="zampona_breath_trace_pitch_conv1d_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("conv1", "conv2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d net (conv1, act1, conv2, act2, mean pool, head) predicting an Andean zampona panpipe note's pitch deviation from a 48-sample, 3-channel breath trace (pressure, flow, lip contact), Adamax with two parameter groups, MSE, 200 steps. The head group trains at 2e-3; the conv group's rate in the config was meant as 2e-3 and its exponent was typed 2e-7, so every conv update is about 1e-4 of its normal size: conv1 and conv2 move a negligible fraction of their weights over the run while the head moves normally, and the loss falls only as far as a read-out of the nearly random filters allows; nothing blows up.",
)
def h339_zampona_conv_lr_exponent_typo(ctx: Context) -> None:
    gen = seeded(33901)
    model = TraceConv(3, 16)
    config = {"conv_lr": 2e-7, "head_lr": 2e-3}  # conv_lr meant 2e-3
    convs = list(model.conv1.parameters()) + list(model.conv2.parameters())
    opt = torch.optim.Adamax(
        [
            {"params": convs, "lr": config["conv_lr"]},
            {"params": model.head.parameters(), "lr": config["head_lr"]},
        ]
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.conv1, model.conv2, model.head))
    _loop(ctx, model, opt, _breaths(gen, 64, 339), 200, F.mse_loss)
    moved = max(_rel_change(w1, model.conv1.weight), _rel_change(w2, model.conv2.weight))
    ctx.check("conv1 and conv2 moved under 0.1% of their norm over the run", moved < 1e-3)
    ctx.check("the head moved over 10% of its norm", _rel_change(wh, model.head.weight) > 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pilot-gig racing: the resume path loads an empty Adam state ---------------------------------

ONSET_GG = 150


@scenario(
    family="pilot_gig_racing_crossing_time_resume_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_GG,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a Cornish pilot-gig race's crossing time (standardised) from twelve readings of crew, tide and swell, Adam at 1e-2, MSE, 260 steps. The job is pre-empted and resumed at step 150; the checkpoint held only the model's weights, and the resume path calls opt.load_state_dict(torch.optim.Adam(model.parameters(), lr).state_dict()), an empty state: Adam's moments restart at zero, so the next updates move every weight by about the full learning rate in the sign of one noisy gradient, the loss jumps over 3x for a few steps and then comes back to where it was. No gradient or batch is unusual.",
)
def h339_gig_racing_resume_empty_adam_state(ctx: Context) -> None:
    gen = seeded(33902)
    model = Trunk(12, 64, act=nn.GELU)
    lr = 1e-2
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def before(step):
        if step == ONSET_GG:
            opt.load_state_dict(torch.optim.Adam(model.parameters(), lr=lr).state_dict())

    _loop(ctx, model, opt, _readings(gen, 64, 12, 339, noise=0.05), 260, F.mse_loss, before=before)
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_GG - 30 : ONSET_GG])
    ctx.check("the loss fell before the resume", _fell(ls[:ONSET_GG], ratio=0.5))
    ctx.check(
        "the loss peaks over 3x its pre-resume median within 8 steps of the resume",
        max(ls[ONSET_GG : ONSET_GG + 8]) > 3 * pre,
    )
    ctx.check("the loss comes back under 1.5x that median by the end", _mean(ls[-20:]) < 1.5 * pre)
    ctx.check(
        "the gradient at the resume step is within 3x its pre-resume median",
        gs[ONSET_GG] < 3 * _median(gs[ONSET_GG - 30 : ONSET_GG]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- clog dancing: the ReLU RNN's orthogonal recurrent init uses tanh's gain 5/3 ------------------


class TapRNN(nn.Module):
    """A hand-written ReLU Elman RNN (inp, rec, head) reading a tap-sensor trace step by step;
    classifies from the last state. Keeps each step's state for inspection."""

    def __init__(self, channels, hidden, classes):
        super().__init__()
        self.inp = nn.Linear(channels, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, classes)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


@scenario(
    family="clog_dancing_tap_rhythm_relu_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU Elman RNN (inp, rec, head) classifying a clog-dancing step (six kinds: shuffle, heel-toe, rattle, ...) from a 24-sample, 4-channel tap-sensor trace, SGD with momentum 0.9 at 0.02, cross-entropy, 150 steps planned. The recurrent weight is initialised with nn.init.orthogonal_(rec.weight, gain=nn.init.calculate_gain('tanh')), a gain of 5/3 meant for feed-forward tanh layers, on a ReLU recurrence: each step through time multiplies the state and its gradient by more than one, so the gradient reaching the first time step is over 10x that at the last; the net learns for a while, then the recurrence's growth through time produces ever larger gradient bursts and the loss blows up to NaN.",
)
def h339_clog_dancing_rnn_tanh_gain(ctx: Context) -> None:
    gen = seeded(33903)
    model = TapRNN(4, 48, 6)
    nn.init.orthogonal_(model.rec.weight, gain=nn.init.calculate_gain("tanh"))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ratio = []

    def after(step):
        first = model.states[0].grad
        last = model.states[-1].grad
        if first is not None and last is not None:
            ratio.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 24, 4, 6, 339, noise=0.5),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ls = ctx.losses
    gs = ctx.grad_norms
    bad = _first_bad(ls)
    ctx.check("the first state's gradient is over 10x the last's at step 0", ratio[0] > 10)
    ctx.check("the loss turns non-finite after step 30", bad is not None and bad > 30)
    ctx.check(
        "the loss fell first (steps 20-30 under half of step 0)", _mean(ls[20:30]) < 0.5 * ls[0]
    )
    ctx.check(
        "before the blow-up the gradient norm bursts over 10x its steps 10-30 median",
        max((g for g in gs[30:-1] if math.isfinite(g)), default=0.0) > 10 * _median(gs[10:30])
        or not _finite(gs[30:]),
    )


# -- stilt walking: nll_loss on raw logits (log_softmax forgotten) -------------------------------


DIV_SW = 51


@scenario(
    family="stilt_walking_gait_phase_raw_nll_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=DIV_SW,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying a stilt walker's gait phase (five phases) from ten standardised leg-sensor readings, SGD with momentum 0.9 at 0.01, 150 steps. The model's forward returns raw logits and the training script uses F.nll_loss(logits, y), written for a model that ended in log_softmax: the loss is -logit[target], unbounded below, so the head keeps pushing the target logit up with nothing to stop it, and the trunk's features grow with it: the head's logits grow many-fold, faster and faster, the loss runs ever more negative and finally overflows to -inf/NaN.",
)
def h339_stilt_walking_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(33904)
    model = Trunk(10, 64, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    peaks = []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, 3391, spread=1.0),
        150,
        F.nll_loss,
        classifier=True,
        watch=watch,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the largest logit grows over 20x from step 0 by step 35", peaks[35] > 20 * peaks[0])
    ctx.check(
        "it grows steadily (each 10-step mean above the last, steps 0-40)",
        all(_mean(peaks[i + 10 : i + 20]) > _mean(peaks[i : i + 10]) for i in range(0, 30, 10)),
    )
    ctx.check("the loss is finite for over 30 steps, then non-finite", bad is not None and bad > 30)
    ctx.check("the run stops at the declared step", bad == DIV_SW)


# -- pipkrake: the spread is sqrt of a raw linear output ----------------------------------------


class HeaveNet(nn.Module):
    """A SiLU trunk with a mean head and a variance head for needle-ice frost heave."""

    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mu_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        sigma = torch.sqrt(self.var_head(h))  # softplus dropped in a refactor
        return torch.cat([self.mu_head(h), sigma], -1)


def _gauss_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


DIV_PK = 71


@scenario(
    family="pipkrake_needle_ice_heave_sqrt_variance_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var_head",),
    diverges=DIV_PK,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, mu_head, var_head) modelling the frost heave of pipkrake (needle ice) on a bare soil plot as Gaussian from nine night-time readings (soil moisture, air and soil temperature, wind), RMSprop at 3e-4, Gaussian negative log-likelihood, 200 steps planned, var_head's bias started at 1.0. The spread is computed as torch.sqrt(var_head(h)): the softplus that kept the variance positive was dropped in a refactor. The data's noise is about 0.03, the likelihood drives the variance down, one row's variance crosses zero and sqrt of a negative is NaN; the loss is NaN from that step and the run stops.",
)
def h339_pipkrake_sqrt_of_raw_variance(ctx: Context) -> None:
    gen = seeded(33905)
    model = HeaveNet()
    with torch.no_grad():
        model.var_head.bias.fill_(1.0)
        model.var_head.weight.mul_(0.1)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    low = []

    def watch(step, out, x, y):
        with torch.no_grad():
            h = model.act2(model.fc2(model.act1(model.fc1(x))))
            low.append(float(model.var_head(h).min()))

    n = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 9, 3395, noise=0.03, scale=0.5),
        200,
        _gauss_nll,
        watch=watch,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at the step it stops", bad == n - 1 and math.isnan(ctx.losses[-1]))
    ctx.check("a row's variance is below zero at that step", low[-1] < 0.0)
    ctx.check("every variance was positive at step 0", low[0] > 0.0)
    ctx.check("finite for over 20 steps first", bad is not None and bad > 20)
    ctx.check("the run stops at the declared step", bad == DIV_PK)


# -- kelp burning: one shard's missing assays are the lab's -99 sentinel -------------------------

ONSET_KB = 130


@scenario(
    family="kelp_burning_ash_yield_sentinel_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KB,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the soda-ash yield of an Orkney kelp-burning kiln (standardised) from eleven readings of weed, drying days and kiln draught, SGD with momentum 0.9 at 3e-3, MSE, 240 steps. The shard read at step 130 came from a season whose assays were never run, and the lab writes a missing assay as -99; nobody masked it, so that one batch's targets are all -99: its loss and gradient are orders of magnitude above the run's, the update throws the fit off, and ordinary batches afterwards bring the loss back down.",
)
def h339_kelp_burning_sentinel_shard(ctx: Context) -> None:
    gen = seeded(33906)
    model = Trunk(11, 64)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_KB:
            y = torch.full_like(y, -99.0)
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 11, 3396), 240, F.mse_loss, alter=alter)
    ls, gs = ctx.losses, ctx.grad_norms
    pre_l = _median(ls[ONSET_KB - 30 : ONSET_KB])
    ctx.check(
        "the gradient at the shard is over 50x its pre-shard median",
        gs[ONSET_KB] > 50 * _median(gs[ONSET_KB - 30 : ONSET_KB]),
    )
    ctx.check(
        "the loss at the shard is over 1000x its pre-shard median", ls[ONSET_KB] > 1000 * pre_l
    )
    ctx.check("the loss comes back under 2x that median by the end", _mean(ls[-20:]) < 2 * pre_l)
    ctx.check("finite throughout", _finite(ls))


# -- charcoal burning: a logging hook leaves the criterion at reduction='sum' for one step --------

ONSET_CB = 120


@scenario(
    family="charcoal_burning_kiln_yield_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CB,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a charcoal burner's earth-kiln yield (standardised) from ten readings of wood species, moisture and burn hours, SGD with Nesterov momentum 0.9 at 5e-3, Huber loss (an nn.HuberLoss criterion), batch 96, 220 steps. At step 120 a logging hook that reports the summed error over the batch sets criterion.reduction = 'sum' and restores 'mean' only after the next training step, so that one ordinary batch is backpropagated summed instead of averaged: its gradient is 96x the usual, and the run recovers afterwards. The batch itself is ordinary.",
)
def h339_charcoal_burning_sum_reduction_hook(ctx: Context) -> None:
    gen = seeded(33907)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    criterion = nn.HuberLoss(delta=1.0)
    backed = []

    def backprop(step, loss, out, y):
        criterion.reduction = "sum" if step == ONSET_CB else "mean"
        total = criterion(out, y)
        backed.append(float(total.detach()) / max(float(loss.detach()), 1e-12))
        return total

    _loop(ctx, model, opt, _readings(gen, 96, 10, 3397), 220, F.huber_loss, backprop=backprop)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the backpropagated loss is 96x the shown loss at onset", abs(backed[ONSET_CB] - 96) < 1
    )
    ctx.check(
        "the gradient at onset is over 50x its pre-onset median",
        gs[ONSET_CB] > 50 * _median(gs[ONSET_CB - 30 : ONSET_CB]),
    )
    ctx.check(
        "the shown loss at onset is within 3x its pre-onset median (the batch is ordinary)",
        ls[ONSET_CB] < 3 * _median(ls[ONSET_CB - 30 : ONSET_CB]),
    )
    ctx.check(
        "the loss comes back under 1.5x its pre-onset median by the end",
        _mean(ls[-20:]) < 1.5 * _median(ls[ONSET_CB - 30 : ONSET_CB]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- amber fishing: a calibration temperature of 0.02 applied in training -------------------------


class NuggetGrader(Trunk):
    """A GELU trunk grading beach amber (seven grades); logits divided by a temperature."""

    def __init__(self, temperature):
        super().__init__(14, 64, out=7, act=nn.GELU)
        self.register_buffer("temperature", torch.tensor(temperature))

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="amber_fishing_nugget_grade_calibrated_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) grading amber nuggets netted from the Baltic surf into seven grades from fourteen standardised readings (density, colour, inclusions), AdamW at 3e-3, cross-entropy, 160 steps. The model is built from a checkpoint config that includes a post-hoc calibration temperature buffer (0.02, fitted for a different, under-confident model), and forward divides the logits by it during training too: the logits reach the softmax 50x too large, so as the grader learns the softmax saturates and for most rows the target's float32 probability rounds to exactly 1.0; the loss stays finite.",
)
def h339_amber_fishing_calibration_temperature(ctx: Context) -> None:
    gen = seeded(33908)
    model = NuggetGrader(temperature=0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    collapsed, peaks = [], []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        peaks.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 7, 3398, spread=0.9),
        160,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under a third of rows collapsed at step 0", collapsed[0] < 0.34)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("the largest logit is over 30 late in the run", _mean(peaks[-20:]) > 30.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kite buggy: OneCycleLR's max_lr typed 4.0 for 0.04 ------------------------------------------


@scenario(
    family="kite_buggy_gust_response_relu_conv1d_classifier",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("conv2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d net (conv1, act1, conv2, act2, mean pool, head) classifying a kite buggy's response to a gust (five kinds: carve, skid, lift, stall, roll-over) from a 32-sample, 4-channel line-tension and wheel-load trace, SGD with momentum 0.9 under OneCycleLR over 200 steps, cross-entropy. max_lr was typed 4.0 for 0.04: as the cycle ramps up, the huge updates push conv2's biases and filters so that most of its channels are never positive on any input, their gradients are zero from then on, the remaining channels cannot carry the task and the loss sits near chance for the rest of the run.",
)
def h339_kite_buggy_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(33909)
    model = TraceConv(4, 16, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.004, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4.0, total_steps=200)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.maps(x).transpose(1, 2)))

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 32, 4, 5, 3399, noise=0.5),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        sched=sched,
    )
    ctx.check("under 10% of conv2's channels dead at step 0", dead[0] < 0.1)
    ctx.check("over half of conv2's channels dead over the last 50 steps", _mean(dead[-50:]) > 0.5)
    ctx.check(
        "the loss sits within 10% of chance over the last 30 steps",
        abs(_mean(ctx.losses[-30:]) - math.log(5)) < 0.1 * math.log(5),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- salt panning: the warm-up target lr has the linear scaling rule applied twice ----------------


def _top_eigen(model, batch, loss_fn, iters=15):
    """The top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="salt_panning_brine_evaporation_warmup_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a Guérande salt-marsh pan's daily evaporation (standardised) from eight readings (brine depth, salinity, sun, wind), plain SGD with batch 256, MSE, a linear warm-up over 120 steps, 200 steps planned. The warm-up target is meant as base_lr * batch / 64 (the linear scaling rule, 0.4); the config already held the scaled rate and the script scaled it again, so warm-up climbs towards 1.6: the loss falls while the rate is low, then lr times the loss's top Hessian eigenvalue passes 2, the iterates oscillate with growing amplitude and the loss blows up.",
)
def h339_salt_panning_double_lr_scaling(ctx: Context) -> None:
    gen = seeded(33910)
    model = Trunk(8, 64, act=nn.Tanh)
    base, batch = 0.4, 256
    peak = base * batch / 64  # base was already scaled: 1.6 instead of 0.4
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    data = _readings(gen, batch, 8, 33910)
    probe = next(data)
    sharp = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / 120)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 10 == 0:
            sharp[step] = lr * _top_eigen(model, probe, F.mse_loss)

    n = _loop(ctx, model, opt, data, 200, F.mse_loss, before=before)
    ls = ctx.losses
    crossed = min((k for k, v in sharp.items() if v > 2.0), default=None)
    ctx.check("lr x top eigenvalue is under 1 at step 0", sharp[0] < 1.0)
    ctx.check("lr x top eigenvalue passes 2 during the warm-up", crossed is not None)
    ctx.check("the loss fell first (steps 20-30 under 0.7x step 0-10)", _fell(ls[:30], ratio=0.7))
    ctx.check(
        "the loss blows up after the crossing (over 100x its minimum, or non-finite)",
        crossed is not None
        and (not _finite(ls[crossed:]) or max(ls[crossed:]) > 100 * min(ls[:crossed])),
    )
    ctx.check("the run breaks before step 200", n < 200 or not _finite(ls) or max(ls[-10:]) > 10)


# -- controls -------------------------------------------------------------------------------------


class BoomBiGRU(nn.Module):
    """A hand-written bidirectional GRU classifier: input projection, a 1-layer bidirectional
    GRU, mean and max pooling over time, a small head."""

    def __init__(self, channels, hidden, classes):
        super().__init__()
        self.proj = nn.Linear(channels, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(4 * hidden)
        self.head = nn.Linear(4 * hidden, classes)

    def forward(self, x):
        out, _ = self.gru(torch.tanh(self.proj(x)))
        pooled = torch.cat([out.mean(1), out.amax(1)], -1)
        return self.head(self.norm(pooled))


@scenario(
    family="skyquake_boom_infrasound_bigru_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written bidirectional GRU classifier (proj, gru, norm, head) sorting skyquake booms (six sources: surf, sonic boom, quarry blast, ...) from a 32-sample, 3-channel infrasound trace, mean and max pooling over time, Adam at 3e-3 with a cosine schedule, cross-entropy, gradients clipped to norm 0.25 every step, 150 steps.",
)
def h339_skyquake_bigru_clip_control(ctx: Context) -> None:
    gen = seeded(33911)
    model = BoomBiGRU(3, 24, 6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150)
    hits = []

    def watch(step, out, x, y):
        hits.append(float((out.argmax(-1) == y).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 32, 3, 6, 33911, noise=0.6),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        clip=0.25,
        sched=sched,
    )
    ctx.check("the loss fell under 0.5x its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("accuracy over the last 20 steps is over 0.7", _mean(hits[-20:]) > 0.7)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="rush_seating_weave_tension_fp16_huber_regressor",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the tension of a rush-seated chair's weave (standardised) from twelve readings of rush moisture, twist and frame, NAdam at 2e-3, Huber loss, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, ReduceLROnPlateau on a held-out batch's loss, 150 steps.",
)
def h339_rush_seating_fp16_plateau_control(ctx: Context) -> None:
    gen = seeded(33912)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    data = _readings(gen, 32, 12, 33912)
    held = next(data)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        data,
        150,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell under 0.5x its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the scaler's scale stayed finite and positive", all(0 < s < 1e9 for s in ctx.scales))


class SlatGrader(nn.Module):
    """A trug slat grader with a tied reconstruction decoder: enc (its weight reused,
    transposed, to rebuild the input), act, fc, act2, head."""

    def __init__(self, d_in=16, hidden=32, classes=4):
        super().__init__()
        self.enc = nn.Linear(d_in, hidden)
        self.act = nn.Tanh()
        self.fc = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))
        self.recon = None

    def forward(self, x):
        z = self.act(self.enc(x))
        self.recon = F.linear(z, self.enc.weight.t(), self.dec_bias)  # tied weights
        return self.head(self.act2(self.fc(z)))


@scenario(
    family="trug_making_slat_grade_tied_decoder_classifier",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written classifier (enc, act, fc, act2, head) with a tied reconstruction decoder (the encoder's weight transposed) grading Sussex trug sweet-chestnut slats into four grades from sixteen standardised readings, Adagrad at 0.05 under StepLR (gamma 0.5 every 60 steps), cross-entropy with label smoothing 0.1 plus 0.1 x the reconstruction MSE, 180 steps.",
)
def h339_trug_making_tied_decoder_control(ctx: Context) -> None:
    gen = seeded(33913)
    model = SlatGrader()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    hits = []

    def watch(step, out, x, y):
        hits.append(float((out.argmax(-1) == y).float().mean()))

    def backprop(step, loss, out, y):
        return loss + 0.1 * F.mse_loss(model.recon, last["x"])

    last = {}

    def alter(step, x, y):
        last["x"] = x
        return x, y

    def smoothed(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 4, 33913, spread=1.2),
        180,
        smoothed,
        classifier=True,
        watch=watch,
        backprop=backprop,
        alter=alter,
        sched=sched,
    )
    ctx.check(
        "the last 10 steps' loss is under 0.5x the first step's",
        _finite(ctx.losses) and _mean(ctx.losses[-10:]) < 0.5 * ctx.losses[0],
    )
    ctx.check("accuracy over the last 20 steps is over 0.8", _mean(hits[-20:]) > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))
