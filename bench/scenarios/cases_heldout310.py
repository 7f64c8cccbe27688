"""Held-out set 310 (``h310_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a kecapi zither pluck-kind GELU classifier whose softmax
temperature is read as a percentage (softmax saturates), a morsing twang-pitch GELU regressor
whose mid-run evaluation reloads an early checkpoint into the live model (one loss spike), an
ablation-stake melt heteroscedastic net whose variance head lost its softplus (log of a
negative, NaN), a ghatam stroke-rhythm Elman RNN whose recurrent matrix is initialised with
orthogonal gain 2.0 (gradients grow through time), a narrowboat lock-fill ReLU regressor fed one
lock's log in seconds (one corrupted batch), a gyrocopter rotor-rpm SiLU regressor whose batch-size
ramp divides the loss by the reciprocal of the accumulation count for one step (one gradient
burst), a khaen reed-bank two-group regressor whose layer-wise decay factor is typed 1e-3 (trunk
frozen), a scissor-grinder edge-grade ReLU classifier run at Adam lr 5e-1 for 5e-4 (dead ReLUs),
a sand-yacht beach-speed tanh regressor whose warm-up peak is typed 2.0 for 0.02 (learning rate
past the stability limit), a clog-maker sole-carving SiLU regressor whose L2 penalty is
subtracted (slow climb of the loss), and three controls (a saron bar-strike classifier evaluated
with an EMA of its weights, a chande drum-stroke fp16 Conv1d classifier with a GradScaler, a bonang
kettle-gong mixture density network with accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
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


# -- kecapi: the softmax temperature is read as a percentage -------------------------------------


class PluckClassifier(Trunk):
    def __init__(self, temperature):
        super().__init__(10, 64, out=7, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="kecapi_zither_pluck_temperature_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) sorting kecapi zither plucks into 7 kinds (thumb, index, damped, harmonic, ...) from 10 standardised readings of the string's onset, Adamax at 2e-3, cross-entropy, 200 steps. The calibration temperature is stored in the config as 50 (percent, meaning 0.5) and the model divides it by 100 twice (once in the config loader, once in the model): the logits are divided by 0.005, so the head's logits are 200x what they should be and the float32 softmax of most rows rounds to exactly 1.0 on the target (and the wrong rows give huge losses).",
)
def h310_kecapi_temperature_percent(ctx: Context) -> None:
    gen = seeded(31001)
    model = PluckClassifier(temperature=50 / 100 / 100)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    collapsed, scaled = [], []

    def watch(step, out, x, y):
        if step % 10 == 0:
            collapsed.append(collapsed_fraction(out.detach(), y))
            scaled.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 10, 7, seed=310),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over a quarter of rows' softmax is exactly 1.0 late in the run", max(collapsed[-5:]) > 0.25
    )
    ctx.check("the peak scaled logit is over 100", max(scaled) > 100.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- morsing: the mid-run evaluation reloads an early checkpoint into the live model ------------

SNAP_MORS, ONSET_MORS = 8, 130


@scenario(
    family="morsing_twang_pitch_gelu_regressor",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_MORS,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a morsing (mouth harp) twang's pitch glide and decay (2 outputs, standardised) from 12 readings of the player's mouth cavity and strike, AdamW at 3e-3 with weight decay 1e-2, MSE, 240 steps. The evaluation hook at step 129 should load the best checkpoint into a separate evaluation copy; the path is built from the wrong variable (the first checkpoint, saved at step 8) and it is loaded into the live model. Step 130's loss jumps back near its step-8 level on ordinary data, with the optimizer state intact; the run then trains back down within a few dozen steps.",
)
def h310_morsing_stale_checkpoint(ctx: Context) -> None:
    gen = seeded(31002)
    model = Trunk(12, 64, out=2, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    saved = {}

    def after(step):
        if step == SNAP_MORS:
            saved["ckpt"] = copy.deepcopy(model.state_dict())
        if step == ONSET_MORS - 1:
            model.load_state_dict(saved["ckpt"])

    _loop(ctx, model, opt, _gauges(gen, 64, 12, seed=311, outputs=2), 240, F.mse_loss, after=after)
    ls = ctx.losses
    before = _mean(ls[ONSET_MORS - 10 : ONSET_MORS])
    ctx.check("the loss at step 130 is over 4x the ten steps before", ls[ONSET_MORS] > 4 * before)
    ctx.check(
        "the loss is back under 1.5x its pre-spike level 50 steps on",
        _mean(ls[-10:]) < 1.5 * before,
    )
    ctx.check("finite throughout", _finite(ls))


# -- ablation stake: the variance head lost its softplus ------------------------------------------


class MeltNet(nn.Module):
    """Heteroscedastic regressor: a SiLU trunk, a mean head and a variance head."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.var_head.weight)
        nn.init.constant_(self.var_head.bias, 1.0)  # start at unit variance

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        # the softplus was here; a refactor moved it into a loss that was later replaced
        return torch.cat([self.mean_head(h), self.var_head(h)], -1)


def _gaussian_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()


def _melt(gen, batch, seed):
    """Daily melt at a glacier ablation stake from 8 weather readings; noise grows with sun."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        scale = 0.02 + 0.4 * torch.sigmoid(2 * x[:, 0])
        y = torch.tanh(x @ w / math.sqrt(8)) + scale * torch.randn(batch, generator=gen)
        yield x, y


DIVERGE_ABL = 56


@scenario(
    family="ablation_stake_melt_heteroscedastic_silu_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var_head",),
    diverges=DIVERGE_ABL,
    heldout=True,
    note="A heteroscedastic SiLU regressor (fc1, act1, fc2, act2, mean_head, var_head) predicting the daily melt at a glacier ablation stake and its variance from 8 weather readings (noise grows with sunshine), RMSprop at 3e-4, Gaussian NLL written by hand as 0.5 log var + 0.5 (y - mu)^2 / var, 200 steps planned. A refactor moved the variance head's softplus into the old loss, which was later replaced by this one: var is the raw linear output (initialised at 1). The NLL pushes var down on the quiet (overcast) rows until a row's var crosses zero; log of a negative gives NaN.",
)
def h310_ablation_stake_raw_variance(ctx: Context) -> None:
    gen = seeded(31003)
    model = MeltNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    low = []

    def watch(step, out, x, y):
        low.append(float(out[:, 1].detach().min()))

    stop = _loop(ctx, model, opt, _melt(gen, 64, seed=312), 200, _gaussian_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at the recorded step", bad == DIVERGE_ABL and stop == DIVERGE_ABL)
    ctx.check("a row's variance is not positive at that step", bad is not None and low[bad] <= 0.0)
    ctx.check("every variance was positive at step 0", low[0] > 0.0)
    ctx.check("finite before it", bad is not None and _finite(ctx.losses[:bad]))


# -- ghatam: recurrent matrix initialised orthogonal with gain 2.0 --------------------------------


class ElmanCell(nn.Module):
    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.rec.weight, gain=gain)

    def forward(self, x, h):
        return torch.tanh(self.inp(x) + self.rec(h))


class StrokeRNN(nn.Module):
    def __init__(self, d_in=4, hidden=48, classes=5, gain=2.0):
        super().__init__()
        self.cell = ElmanCell(d_in, hidden, gain)
        self.head = nn.Linear(hidden, classes)
        self.hidden = hidden
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


def _strokes(gen, batch, frames=40, classes=5):
    """40 frames of 4 pressure readings of a ghatam (clay pot drum); the rhythm pattern (class)
    is set by which early frame carries the accented stroke."""
    while True:
        x = 0.3 * torch.randn(batch, frames, 4, generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        x[torch.arange(batch), 2 + 3 * y, 0] += 2.0
        yield x, y


@scenario(
    family="ghatam_stroke_rhythm_elman_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("cell", "cell.rec"),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (cell.inp, cell.rec, head) classifying a ghatam's rhythm pattern (5 kinds) from 40 frames of 4 pressure readings, the pattern set by an accent in the first third of the phrase; SGD momentum 0.9 at 1e-2, cross-entropy, gradient clipping at 1.0, 150 steps. The recurrent matrix is initialised orthogonal with gain nn.init.calculate_gain('relu') ** 2 = 2.0 (copied from a ReLU recipe, squared by a variance-vs-std mix-up) instead of 1.0: backpropagated through 40 frames the state gradient grows by orders of magnitude from the last frame to the first. Clipping keeps the steps bounded so the loss does not blow up.",
)
def h310_ghatam_recurrent_gain(ctx: Context) -> None:
    gen = seeded(31004)
    model = StrokeRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    ratios = []

    def after(step):
        s = model.states
        if s[0].grad is not None and s[-1].grad is not None:
            ratios.append(float(s[0].grad.norm() / (s[-1].grad.norm() + 1e-30)))

    _loop(
        ctx,
        model,
        opt,
        _strokes(gen, 32),
        150,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        after=after,
    )
    ctx.check("the first state's gradient is over 20x the last's at the start", ratios[0] > 20)
    ctx.check("and over 20x on most steps", _median(ratios) > 20)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- narrowboat: one lock's log in seconds ------------------------------------------------------

ONSET_BOAT = 100


@scenario(
    family="narrowboat_lock_fill_time_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BOAT,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a canal lock's fill time (in minutes, standardised) from 10 readings (paddle openings, pound levels, boat length, ...), plain SGD at 5e-2, MSE, clipping at 5.0, 200 steps. The shard behind step 100's batch came from one lock-keeper's logger that records seconds: 8 of its 64 rows have targets 60x the others' scale. The loss and gradient jump for that step only; clipping bounds the step and the run recovers.",
)
def h310_narrowboat_seconds_shard(ctx: Context) -> None:
    gen = seeded(31005)
    model = Trunk(10, 64, out=1)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)
    scales = {}

    def alter(step, x, y):
        if step == ONSET_BOAT:
            y = y.clone()
            scales["clean"] = float(y[8:].abs().mean())
            y[:8] = y[:8] * 60.0 + 60.0 * 2.0
            scales["bad"] = float(y[:8].abs().mean())
        return x, y

    _loop(ctx, model, opt, _gauges(gen, 64, 10, seed=313), 200, F.mse_loss, clip=5.0, alter=alter)
    ls, g = ctx.losses, ctx.grad_norms
    base = _mean(ls[ONSET_BOAT - 10 : ONSET_BOAT])
    ctx.check(
        "the bad rows' targets are over 20x the clean rows'", scales["bad"] > 20 * scales["clean"]
    )
    ctx.check("the loss at step 100 is over 50x the steps before", ls[ONSET_BOAT] > 50 * base)
    ctx.check(
        "the gradient at step 100 is over 20x the median", g[ONSET_BOAT] > 20 * _median(g[80:100])
    )
    ctx.check("the loss recovers to under 3x its level", _mean(ls[-10:]) < 3 * base)
    ctx.check("finite throughout", _finite(ls))


# -- gyrocopter: the batch-size ramp divides by the reciprocal of the accumulation count ---------

ONSET_GYRO, ACC_GYRO = 90, 8


@scenario(
    family="gyrocopter_rotor_rpm_accumulation_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_GYRO,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a gyrocopter's rotor rpm and blade flap (2 outputs, standardised) from 10 flight readings, SGD Nesterov momentum 0.9 at 1e-2, MSE, accumulation over 8 micro-batches of 16 rows, clipping at 1.0, 160 steps. At step 90 the batch-size ramp re-computes the accumulation settings and stores the reciprocal (1/8) where the divisor is read: that step's micro-batch losses are multiplied by 8 instead of divided by 8, a 64x gradient on ordinary data (the logged loss is the mean and stays ordinary). The ramp's next write restores it; clipping bounds the step.",
)
def h310_gyrocopter_accumulation_divisor(ctx: Context) -> None:
    gen = seeded(31006)
    model = Trunk(10, 64, out=2, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def backprop(step, out, y, loss, accumulate):
        divisor = 1.0 / accumulate if step == ONSET_GYRO else accumulate
        return loss / divisor

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 16, 10, seed=314, outputs=2),
        160,
        F.mse_loss,
        clip=1.0,
        accumulate=ACC_GYRO,
        backprop=backprop,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_GYRO - 20 : ONSET_GYRO])
    ctx.check("the gradient at step 90 is over 30x the usual", g[ONSET_GYRO] > 30 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_GYRO + 1 : ONSET_GYRO + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on step 90 is ordinary",
        ls[ONSET_GYRO] < 2.0 * _mean(ls[ONSET_GYRO - 10 : ONSET_GYRO]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- khaen: the layer-wise decay factor typed 1e-3 --------------------------------------------------


@scenario(
    family="khaen_reed_bank_two_group_gelu_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the tuning offsets of a khaen's reed bank (3 outputs, standardised) from 12 readings of the reeds' free length and wax load, NAdam with two parameter groups, MSE, 200 steps. The trunk's rate is lr x decay ** depth with a layer-wise decay meant to be 0.9 but typed 1e-3 in the config, so fc1 and fc2 train at 1e-3 x 1e-6 = 1e-9 while the head trains at 1e-3: the trunk stays where it was initialised (relative updates under 1e-5 per step) and only the head learns. Nothing diverges.",
)
def h310_khaen_layer_decay_typo(ctx: Context) -> None:
    gen = seeded(31007)
    model = Trunk(12, 64, out=3, act=nn.GELU)
    base_lr, decay = 1e-3, 1e-3
    opt = torch.optim.NAdam(
        [
            {
                "params": list(model.fc1.parameters()) + list(model.fc2.parameters()),
                "lr": base_lr * decay**2,
            },
            {"params": model.head.parameters(), "lr": base_lr},
        ]
    )
    start = {n: _flat(getattr(model, n)) for n in ("fc1", "fc2", "head")}
    ratios = []

    def before(step):
        ratios.append(_flat(model.fc2))

    def after(step):
        prev = ratios.pop()
        ratios.append(float((_flat(model.fc2) - prev).norm() / prev.norm()))

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 12, seed=315, outputs=3),
        200,
        F.mse_loss,
        before=before,
        after=after,
    )
    moved = {n: float((_flat(getattr(model, n)) - s).norm() / s.norm()) for n, s in start.items()}
    ctx.check(
        "fc1 and fc2 moved under 1e-4 of their norm all run", max(moved["fc1"], moved["fc2"]) < 1e-4
    )
    ctx.check("fc2's per-step update ratio stays under 1e-5", max(ratios) < 1e-5)
    ctx.check("the head moved over 5% of its norm", moved["head"] > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- scissor grinder: Adam at 5e-2 for 5e-4 kills the ReLUs -----------------------------------------


@scenario(
    family="scissor_grinder_edge_grade_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading a scissor grinder's edges (6 grades) from 14 readings of the bevel, burr and shear test, Adam, cross-entropy, 240 steps. The learning rate is typed 5e-1 instead of 5e-4: the first large updates push fc2's pre-activations negative for every input and over half of act2's units never fire again (their gradient is zero), so the net learns with the few that remain and its loss stalls.",
)
def h310_scissor_grinder_adam_lr_typo(ctx: Context) -> None:
    gen = seeded(31008)
    model = Trunk(14, 64, out=6)
    opt = torch.optim.Adam(model.parameters(), lr=5e-1)
    batches = _sorts(gen, 64, 14, 6, seed=316)
    probe = torch.cat([next(batches)[0] for _ in range(8)])
    dead = []

    def after(step):
        if step % 20 == 0 or step == 239:
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe))
    _loop(ctx, model, opt, batches, 240, F.cross_entropy, classifier=True, after=after)
    ctx.check("under a tenth of act2's units dead at initialisation", dead0 < 0.1)
    ctx.check("over half of act2's units dead at the end", dead[-1] > 0.5)
    ctx.check("over half dead from step 60 on", min(dead[3:]) > 0.5)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sand yacht: warm-up peak typed 2.0 for 0.02 ---------------------------------------------------

WARM_YACHT = 150


def _top_eigen(model, loss_fn, x, y, iters=20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="sand_yacht_beach_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a sand yacht's speed over a beach leg (standardised) from 10 readings of wind, sand firmness and sail trim, plain SGD, MSE, linear warm-up over 150 steps to a peak typed 2.0 instead of 0.02, 200 steps planned. The learning rate climbs steadily; once lr x the loss's top Hessian eigenvalue passes 2 the iterates oscillate with growing amplitude along the sharpest direction and the loss blows up.",
)
def h310_sand_yacht_warmup_peak(ctx: Context) -> None:
    gen = seeded(31009)
    model = Trunk(10, 64, out=1, act=nn.Tanh)
    peak = 2.0
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = _gauges(gen, 64, 10, seed=317)
    px, py = next(batches)
    sharp = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / WARM_YACHT)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 5 == 0 and math.isfinite(ctx.losses[-1] if ctx.losses else 0.0):
            sharp[step] = (lr, _top_eigen(model, F.mse_loss, px, py))

    _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before)
    ls = ctx.losses
    best = min(v for v in ls if math.isfinite(v))
    blew = [i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * max(best, 1e-3)]
    crossed = [s for s, (lr, lam) in sorted(sharp.items()) if lr * lam > 2.0]
    ctx.check("the loss blows up (over 100x its best or non-finite)", bool(blew))
    ctx.check(
        "lr x sharpness passed 2 before the blow-up",
        bool(crossed) and bool(blew) and crossed[0] < blew[0],
    )
    ctx.check("lr x sharpness was under 1 early on", sharp[0][0] * sharp[0][1] < 1.0)
    ctx.check("the loss fell first", _mean(ls[20:30]) < 0.8 * _mean(ls[:10]))


# -- clog maker: the L2 penalty is subtracted -------------------------------------------------------


@scenario(
    family="clog_maker_sole_carving_silu_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the carving depth and heel pitch of an alder clog sole (2 outputs, standardised) from 10 readings of the blank and the last, Adagrad at 3e-2, MSE plus an L2 penalty of 1e-2 written by hand, 300 steps. The penalty is added with the sign of a 'reward' in a shared training helper, so it is subtracted: the objective rewards large weights. The MSE falls at first, then the weights keep growing and the logged MSE climbs slowly to several times its low, with nothing to name but the climb.",
)
def h310_clog_maker_l2_sign(ctx: Context) -> None:
    gen = seeded(31010)
    model = Trunk(10, 64, out=2, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    norm0 = float(_flat(model).norm())

    def backprop(step, out, y, loss, accumulate):
        penalty = sum((p * p).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - 1e-2 * penalty

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 10, seed=318, outputs=2),
        300,
        F.mse_loss,
        backprop=backprop,
    )
    ls = ctx.losses
    low = min(ls)
    ctx.check("the loss fell first", low < 0.5 * _mean(ls[:5]))
    ctx.check("the loss ends over 3x its low", _mean(ls[-10:]) > 3 * low)
    ctx.check("the weights grew over 2x", float(_flat(model).norm()) > 2 * norm0)
    ctx.check("finite throughout", _finite(ls))


# -- controls ------------------------------------------------------------------------------------------


@scenario(
    family="saron_bar_strike_ema_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying a saron (gamelan metallophone) bar strike into 8 kinds from 16 readings, AdamW at 3e-3 with weight decay 0.05, label smoothing 0.1, linear warm-up over 20 steps then cosine decay, clipping at 1.0, 200 steps; an exponential moving average of the weights (decay 0.98) is kept and used for evaluation.",
)
def h310_saron_ema_eval(ctx: Context) -> None:
    gen = seeded(31011)
    model = Trunk(16, 64, out=8, act=nn.GELU)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm)
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, max(0, s - warm) / (steps - warm))))
        ),
    )
    batches = _sorts(gen, 64, 16, 8, seed=319, spread=1.1)

    def after(step):
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.mul_(0.98).add_(pm, alpha=0.02)

    _loop(
        ctx,
        model,
        opt,
        batches,
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        after=after,
    )
    x, y = next(batches)
    with torch.no_grad():
        acc = float((ema(x).argmax(-1) == y).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("the EMA weights classify over 80% of a fresh batch", acc > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))


class StrokeConv(nn.Module):
    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x))
        h = F.gelu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _drum(gen, batch, classes=6, length=48):
    """Two skin-pressure channels of a chande (barrel drum) stroke; the kind sets the frequency."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = (0.1 + 0.12 * y.float())[:, None]
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        decay = torch.exp(-t / 30)
        a = torch.sin(f * t + ph) * decay
        b = torch.cos(0.5 * f * t + ph) * decay
        x = torch.stack([a, b], 1) + 0.3 * torch.randn(batch, 2, length, generator=gen)
        yield x, y


@scenario(
    family="chande_drum_stroke_fp16_gelu_conv1d_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU Conv1d classifier (conv1, conv2, head) of a chande drum's stroke (6 kinds) from 48 frames of two skin-pressure channels, fp16 autocast with a torch.amp.GradScaler, Adam under OneCycleLR (max 1e-2), label smoothing 0.05, clipping at 1.0 after unscaling, 150 steps.",
)
def h310_chande_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(31012)
    model = StrokeConv()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _drum(gen, 32),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss scale never fell below its start / 4", min(ctx.scales) >= 256.0)


class GongMDN(nn.Module):
    """Mixture density network: a tanh trunk and heads for K mixing logits, means, log sigmas."""

    def __init__(self, k=3, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(1, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.pi_head = nn.Linear(hidden, k)
        self.mu_head = nn.Linear(hidden, k)
        self.sigma_head = nn.Linear(hidden, k)

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        return torch.cat([self.pi_head(h), self.mu_head(h), self.sigma_head(h).clamp(-5, 3)], -1)


def _mdn_nll(out, y):
    logit, mu, log_sigma = out.chunk(3, -1)
    log_pi = torch.log_softmax(logit, -1)
    z = (y[:, None] - mu) / log_sigma.exp()
    comp = -0.5 * z * z - log_sigma - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(log_pi + comp, -1).mean()


def _gong(gen, batch):
    """Inverse problem: the hammer position (target) from a kettle gong's measured pitch shift,
    which folds back on itself, so one reading has several positions."""
    while True:
        pos = torch.rand(batch, generator=gen)
        shift = pos + 0.3 * torch.sin(2 * math.pi * pos) + 0.05 * torch.randn(batch, generator=gen)
        yield (shift[:, None] - 0.5) * 2, (pos - 0.5) * 2


@scenario(
    family="bonang_kettle_gong_mixture_density_net",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a mixture density network (fc1, fc2, pi_head, mu_head, sigma_head; 3 Gaussian components, log sigma clamped to [-5, 3]) recovering where a bonang kettle gong was struck from its measured pitch shift (a multi-valued inverse problem), RAdam at 3e-3, mixture NLL, accumulation over 2 micro-batches, ReduceLROnPlateau, clipping at 5.0, 200 steps.",
)
def h310_bonang_mdn_plateau(ctx: Context) -> None:
    gen = seeded(31013)
    model = GongMDN()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _loop(ctx, model, opt, _gong(gen, 64), 200, _mdn_nll, clip=5.0, sched=sched, accumulate=2)
    ls = ctx.losses
    ctx.check("the NLL fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("finite throughout", _finite(ls))
