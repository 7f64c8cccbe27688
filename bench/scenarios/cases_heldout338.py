"""Held-out set 338 (``h338_``): hand-written models of trades, crafts, sports and shows not
covered before: a pot-leek show grading classifier whose softmax temperature is typed 0.01 for
1.0 (softmax saturates), a gooseberry-show berry-weight regressor whose trunk group's lr comes
from a missing config key that defaults to 0.0 (trunk frozen), a lawnmower-race lap-time fp16
regressor that converts seconds to milliseconds inside the autocast region (overflow), a
bathtub-race crossing-time regressor whose hand-written decoupled weight decay has its sign
flipped (slow climb), a flitch-trial bacon-cure log-normal NLL net whose spread has no softplus
(log of a negative, NaN), a straw-bear costume BCE tagger fed one shard logged in grams (one
corrupted batch), a gravy-wrestling bout-score Huber regressor whose per-bout loss weight loses
its decimal point for one bout (one gradient burst), a bell-hanging clapper-swing ReLU RNN whose
identity recurrent init has gain 1.2 (gradients grow through time), a pipe-smoking contest
burn-time ReLU classifier whose lr is typed 2.0 for 0.02 (ReLUs die), a nine men's morris
endgame-value regressor whose StepLR gamma is typed 10 for 0.1 (past 2/sharpness), and three
controls (a harp-making soundboard-grade mixture-of-softmaxes classifier with label smoothing 0.2
and a linear warm-up; a shepherd's-crook horn-heating Conv1d classifier with Adagrad, OneCycleLR
and clipping; a giant-onion bulb-girth regressor under fp16 autocast with a GradScaler,
accumulation and ReduceLROnPlateau).

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
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
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
            total = backprop(step, loss) if backprop is not None else loss
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


# -- pot-leek show: the grading softmax's temperature is typed 0.01 for 1.0 -----------------------


class LeekGrader(Trunk):
    """A GELU trunk grading a pot leek (six grades) from twelve show-bench measurements
    (blanch length, girth, flag count, ...); logits are divided by a temperature."""

    def __init__(self, temperature):
        super().__init__(12, 64, out=6, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="leek_show_trench_grade_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) grading a pot leek into six show grades from twelve standardised bench measurements, Adamax at 5e-3, cross-entropy, 160 steps. The forward divides the logits by a temperature that the config meant as 1.0 and that was typed 0.01 (copied from a distillation teacher's entry): the logits reach the softmax 100x too large, so as the grader learns, the softmax saturates and for most rows the target's float32 probability rounds to exactly 1.0 (the rest are confidently wrong); the loss stays finite.",
)
def h338_leek_show_temperature_typo(ctx: Context) -> None:
    gen = seeded(33801)
    model = LeekGrader(temperature=0.01)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    collapsed, peaks = [], []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        peaks.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 338, spread=0.8),
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
    ctx.check("the largest logit is over 50 late in the run", _mean(peaks[-20:]) > 50.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- gooseberry show: the trunk group's lr comes from a missing key, default 0.0 ------------------


@scenario(
    family="gooseberry_show_berry_weight_frozen_group_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a show gooseberry's weight (standardised, about unit scale) from ten readings of the bush and season, AdamW with two parameter groups, MSE, 200 steps. The head group trains at 2e-3; the trunk group (fc1, fc2) takes its rate from config.get('trunk_lr', 0.0) and the key was renamed to 'backbone_lr' in the YAML, so the trunk trains at exactly 0 for the whole run: fc1 and fc2 never move while the head does, and the loss falls only as far as a linear read-out of the random features allows.",
)
def h338_gooseberry_trunk_lr_missing_key(ctx: Context) -> None:
    gen = seeded(33802)
    model = Trunk(10, 64, act=nn.SiLU)
    config = {"head_lr": 2e-3, "backbone_lr": 1e-3}
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": trunk, "lr": config.get("trunk_lr", 0.0)},
            {"params": model.head.parameters(), "lr": config["head_lr"]},
        ],
        weight_decay=0.01,
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    _loop(ctx, model, opt, _readings(gen, 64, 10, 338), 200, F.mse_loss)
    ctx.check(
        "fc1 and fc2 moved under 1e-6 of their norm over the run",
        max(_rel_change(w1, model.fc1.weight), _rel_change(w2, model.fc2.weight)) < 1e-6,
    )
    ctx.check("the head moved over 10% of its norm", _rel_change(wh, model.head.weight) > 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- lawnmower racing: seconds -> milliseconds inside the fp16 autocast region --------------------


class LapTimer(Trunk):
    """A GELU trunk predicting a lap time in seconds; the forward converts to milliseconds."""

    def forward(self, x):
        seconds = self.head(self.features(x)).squeeze(-1)
        return seconds * 1000.0  # under autocast the product is fp16: over 65.504 s it is inf


def _laps(gen, batch, seed):
    """Ten standardised readings (engine, grass, driver); lap time in ms, about 40-80 s."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        s = 56.0 + 11.0 * torch.tanh(x @ w / math.sqrt(10)) + 3.0 * x[:, 1]
        yield x, 1000.0 * (s + 0.4 * torch.randn(batch, generator=gen))


DIV_LM = 40


@scenario(
    family="lawnmower_race_lap_time_fp16_millisecond_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=DIV_LM,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a ride-on lawnmower race's lap time from ten standardised readings, Adam at 2e-3, fp16 autocast with a torch.amp.GradScaler (initial scale 2^10), 200 steps planned, MSE in s^2 (the millisecond error divided by 1e6), head bias started at the 56 s mean. The timing board wants milliseconds and the forward converts the head's seconds to ms (s * 1000) inside the autocast region, so the product is fp16: once the net learns the slowest laps (over 65.504 s) their ms prediction overflows fp16's 65504 to inf and the loss is inf at that step (the same batch in fp32 is finite); the run stops there.",
)
def h338_lawnmower_fp16_millisecond_overflow(ctx: Context) -> None:
    gen = seeded(33803)
    model = LapTimer(10, 64, act=nn.GELU)
    with torch.no_grad():
        model.head.bias.fill_(56.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    last = {}

    def watch(step, out, x, y):
        last["x"] = x

    def loss_fn(out, y):
        return F.mse_loss(out, y) / 1e6

    n = _loop(
        ctx, model, opt, _laps(gen, 64, 338), 200, loss_fn, watch=watch, scaler=scaler, amp=True
    )
    bad = _first_bad(ctx.losses)
    ctx.check(
        "the loss is inf at the step it stops",
        bad == n - 1 and math.isinf(ctx.losses[-1]),
    )
    with torch.no_grad():
        fp32 = model(last["x"])
    ctx.check(
        "the same batch in fp32 is finite and its largest prediction is over 65504 ms",
        bool(torch.isfinite(fp32).all()) and float(fp32.max()) > 65504.0,
    )
    ctx.check(
        "every loss before it was finite", _finite(ctx.losses[:-1]) and bad is not None and bad > 10
    )
    ctx.check("the run stops at the declared step", bad == DIV_LM)


# -- bathtub racing: the hand-written decoupled weight decay has its sign flipped -----------------


@scenario(
    family="bathtub_race_crossing_time_decay_sign_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a bathtub race's harbour-crossing time (standardised) from ten readings of tub, outboard and sea state, SGD with momentum 0.9 at 1e-2, MSE, 300 steps. The script applies decoupled weight decay by hand after each step and writes p.mul_(1 + lr * wd) for p.mul_(1 - lr * wd) with wd 1.5: every weight is inflated by 1.5% a step, the net fits at first and then the inflation outruns the gradient, saturating the tanh units and scaling the head, so the loss climbs slowly and steadily from its minimum while staying finite.",
)
def h338_bathtub_decay_sign_flip(ctx: Context) -> None:
    gen = seeded(33804)
    model = Trunk(10, 64, act=nn.Tanh)
    lr, wd = 1e-2, 1.5
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant 1 - lr * wd
        norms.append(float(sum((p.detach() ** 2).sum() for p in model.parameters()) ** 0.5))

    _loop(ctx, model, opt, _readings(gen, 64, 10, 338), 300, F.mse_loss, after=after)
    low = min(_mean(ctx.losses[i : i + 10]) for i in range(0, 100, 10))
    ctx.check(
        "the last 20 steps' loss is over 2x the early minimum", _mean(ctx.losses[-20:]) > 2 * low
    )
    ctx.check(
        "the loss climbs steadily (steps 200-250 above 150-200)",
        _mean(ctx.losses[200:250]) > _mean(ctx.losses[150:200]),
    )
    ctx.check("the weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check("finite throughout", _finite(ctx.losses))


# -- flitch trial: the log-normal spread has no softplus -----------------------------------------


class CureNet(nn.Module):
    """A ReLU trunk with a mean head and a spread head for a log-normal cure-loss model."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.mu_head = nn.Linear(hidden, 1)
        self.sigma_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mu_head(h), self.sigma_head(h)], -1)  # sigma: no softplus


def _cures(gen, batch, seed):
    """Eight readings of a bacon flitch (salt, weeks, cellar); cure weight loss, log-normal."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        logy = 0.4 * torch.tanh(x @ w / math.sqrt(8)) + 0.05 * torch.randn(batch, generator=gen)
        yield x, torch.exp(logy)


def _lognormal_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    z = (torch.log(y) - mu) / sigma
    return (torch.log(sigma) + 0.5 * z**2 + torch.log(y)).mean()


DIV_FT = 78


@scenario(
    family="flitch_trial_bacon_cure_lognormal_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("sigma_head",),
    diverges=DIV_FT,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, mu_head, sigma_head) modelling a Dunmow flitch's cure weight loss as log-normal from eight readings (salt, weeks, cellar temperature), NAdam at 3e-4, log-normal negative log-likelihood, 200 steps planned, sigma_head's bias started at 1.0. The spread is written sigma_head(h) with no softplus or clamp: the data's log-noise is about 0.05, the likelihood keeps pushing sigma down, one row's sigma crosses zero and log(sigma) of a negative is NaN; the run stops there.",
)
def h338_flitch_sigma_no_softplus(ctx: Context) -> None:
    gen = seeded(33805)
    model = CureNet()
    with torch.no_grad():
        model.sigma_head.bias.fill_(1.0)
        model.sigma_head.weight.mul_(0.1)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-4)
    low = []

    def watch(step, out, x, y):
        low.append(float(out.detach()[:, 1].min()))

    n = _loop(ctx, model, opt, _cures(gen, 64, 338), 200, _lognormal_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at the step it stops", bad == n - 1 and math.isnan(ctx.losses[-1]))
    ctx.check("a row's sigma is at or below zero at that step", low[-1] <= 0.0)
    ctx.check("every sigma was positive at step 0", low[0] > 0.0)
    ctx.check("the run stops at the declared step", bad == DIV_FT)


# -- straw bear: one shard's straw-bale readings logged in grams ---------------------------------


def _costumes(gen, batch, seed):
    """Twelve standardised readings of a straw-bear costume; five defect tags (multi-label)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 5, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        y = ((x @ w) / math.sqrt(12) + 0.3 * torch.randn(batch, 5, generator=gen) > 0).float()
        yield x, y


ONSET_SB = 120


@scenario(
    family="straw_bear_costume_defect_bce_tagger",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SB,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) tagging five defects of a Whittlesea straw-bear costume (multi-label, BCE with logits) from twelve standardised readings (straw bale weights, binding tension, ...), plain SGD at 0.3, 220 steps. The shard loaded at step 120 was logged in grams instead of kilograms and its standardisation was skipped, so that one batch's inputs are about 1000x their usual scale: the loss and gradient jump far above the run's, the update knocks the net off its fit, and ordinary batches afterwards bring the loss back down.",
)
def h338_straw_bear_gram_shard(ctx: Context) -> None:
    gen = seeded(33806)
    model = Trunk(12, 64, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    peaks = []

    def alter(step, x, y):
        if step == ONSET_SB:
            x = x * 1000.0
        peaks.append(float(x.abs().max()))
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _costumes(gen, 64, 338),
        220,
        F.binary_cross_entropy_with_logits,
        alter=alter,
    )
    pre_g = _median(ctx.grad_norms[ONSET_SB - 20 : ONSET_SB])
    pre_l = _mean(ctx.losses[ONSET_SB - 10 : ONSET_SB])
    ctx.check(
        "the onset batch's inputs are over 100x the usual",
        peaks[ONSET_SB] > 100 * _median(peaks[:ONSET_SB]),
    )
    ctx.check(
        "the gradient at the onset is over 50x the steps before",
        ctx.grad_norms[ONSET_SB] > 50 * pre_g,
    )
    ctx.check(
        "the loss at the onset is over 10x the steps before", ctx.losses[ONSET_SB] > 10 * pre_l
    )
    ctx.check(
        "the last 20 steps' loss is within 2x of before the onset",
        _mean(ctx.losses[-20:]) < 2 * pre_l,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- gravy wrestling: one bout's loss weight loses its decimal point -----------------------------


ONSET_GW = 140


@scenario(
    family="gravy_wrestling_bout_score_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_GW,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a gravy-wrestling bout's judges' score (standardised) from ten readings, SGD with Nesterov momentum 0.9 at 1e-2, Huber loss, 240 steps. Each bout's batch carries a loss weight from the judges' sheet (about 1.0); the sheet for the bout trained at step 140 lost its decimal point (250 for 2.50), so that one step's loss is weighted about 250x on an ordinary batch: the gradient bursts far above the run's, the update knocks the fit off, and the loss recovers afterwards.",
)
def h338_gravy_wrestling_weight_decimal(ctx: Context) -> None:
    gen = seeded(33807)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        weight = 250.0 if step == ONSET_GW else 1.0
        return weight * loss

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3381), 240, F.huber_loss, backprop=backprop)
    pre = _median(ctx.grad_norms[ONSET_GW - 20 : ONSET_GW])
    ctx.check(
        "the gradient at the onset is over 50x the steps before",
        ctx.grad_norms[ONSET_GW] > 50 * pre,
    )
    ctx.check(
        "the onset batch's own loss is ordinary (within 3x of before)",
        ctx.losses[ONSET_GW] < 3 * _mean(ctx.losses[ONSET_GW - 10 : ONSET_GW]),
    )
    ctx.check(
        "the gradients afterwards are back within 5x of before",
        _median(ctx.grad_norms[ONSET_GW + 30 :]) < 5 * pre,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- bell hanging: a ReLU RNN's identity recurrent init with gain 1.2 ----------------------------


class SwingCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return F.relu(self.ih(x) + self.hh(h))


class ClapperRNN(nn.Module):
    """Reads a bell's swing (angle, rope pull) sample by sample; predicts the clapper strike."""

    def __init__(self, d_in=2, hidden=32, gain=1.0):
        super().__init__()
        self.hidden = hidden
        self.cell = SwingCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.cell.hh.weight.copy_(gain * torch.eye(hidden))
            nn.init.normal_(self.cell.ih.weight, std=1e-3)
            self.cell.ih.bias.zero_()
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


def _swings(gen, batch, length=40):
    while True:
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        t = torch.arange(length, dtype=torch.float32)
        angle = amp * torch.sin(0.3 * t + phase)
        pull = 0.3 * torch.randn(batch, length, generator=gen)
        x = torch.stack([angle, pull], -1)
        yield x, amp.squeeze(-1) * torch.cos(phase.squeeze(-1))


@scenario(
    family="bell_hanging_clapper_swing_identity_relu_rnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("cell.hh", "cell"),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU RNN (cell with ih and hh, head) reading a church bell's swing angle and rope pull over 40 samples to predict the clapper strike, RMSprop at 1e-2, MSE, 150 steps planned. The IRNN recipe initialises the input weights cell.ih to N(0, 0.001) and the recurrent matrix cell.hh to the identity; the config's recurrent_init_gain was typed 1.2 for 1.0, so the state and the backward signal are amplified about 1.2x per time step: the gradient reaching the first step's state is hundreds of times the last step's, the first RMSprop updates to the input and recurrent weights are amplified through the 40 steps, and the loss blows up by over 20 orders of magnitude within ten steps and stays there.",
)
def h338_bell_hanging_irnn_gain_typo(ctx: Context) -> None:
    gen = seeded(33808)
    model = ClapperRNN(gain=1.2)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    ratios = []

    def backprop(step, loss):
        if step == 0:
            loss.backward(retain_graph=True)
            g0 = model.states[0].grad.norm()
            g1 = model.states[-1].grad.norm()
            ratios.append(float(g0 / g1.clamp_min(1e-30)))
            for p in model.parameters():
                p.grad = None
        return loss

    _loop(ctx, model, opt, _swings(gen, 32), 150, F.mse_loss, backprop=backprop)
    ctx.check("the first state's gradient is over 500x the last state's at step 0", ratios[0] > 500)
    bad = _first_bad(ctx.losses)
    ctx.check(
        "the loss blows up (non-finite, or 1e10x its first value)",
        bad is not None or max(ctx.losses) > 1e10 * ctx.losses[0],
    )


# -- pipe-smoking contest: the lr is typed 2.0 for 0.02 ------------------------------------------


@scenario(
    family="pipe_smoking_contest_burn_time_relu_classifier",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) sorting a pipe-smoking contest entry into eight burn-time bands from sixteen readings (tobacco cut, packing, draw), SGD with momentum 0.9, cross-entropy, 200 steps. The lr was typed 2.0 for 0.02: the first updates throw fc2's pre-activations far negative, most of act2's ReLUs never fire again on any input and stop learning, and the loss stalls far above what the task allows.",
)
def h338_pipe_smoking_lr_typo_dead_relus(ctx: Context) -> None:
    gen = seeded(33809)
    model = Trunk(16, 64, out=8)
    opt = torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.9)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.act2(model.fc2(model.act1(model.fc1(x))))))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 128, 16, 8, 3389),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 10% of act2's units dead at step 0", dead[0] < 0.1)
    ctx.check("over half of act2's units dead over the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check(
        "the loss stalls above 0.5 nats over the last 20 steps", _mean(ctx.losses[-20:]) > 0.5
    )


# -- nine men's morris: the StepLR gamma is typed 10 for 0.1 -------------------------------------


def _top_eigen(model, batch, loss_fn, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return abs(lam)


ONSET_NM = 100


@scenario(
    family="nine_mens_morris_endgame_value_steplr_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_NM,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) valuing nine men's morris endgame positions (standardised value) from twelve board features, plain SGD at 0.1, MSE, 200 steps planned, StepLR every 100 steps. The gamma was typed 10 for 0.1, so at step 100 the lr becomes 1.0: lr times the top Hessian eigenvalue (power iteration) passes 2, the loss oscillates and grows, and the run blows up.",
)
def h338_nine_mens_morris_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(33810)
    model = Trunk(12, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=10.0)
    batches = _readings(gen, 128, 12, 3380)
    probe = next(batches)
    sharp = {}

    def before(step):
        if step == ONSET_NM:
            sharp["lam"] = _top_eigen(model, probe, F.mse_loss)
            sharp["lr"] = opt.param_groups[0]["lr"]

    _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    ctx.check("the loss fell before the onset", _fell(ctx.losses[:ONSET_NM]))
    ctx.check("lr x top eigenvalue passes 2 at the onset", sharp["lr"] * sharp["lam"] > 2.0)
    ls = ctx.losses[ONSET_NM:]
    ctx.check(
        "the loss blows up after the onset (non-finite or 100x its pre-onset level)",
        not _finite(ls) or max(ls) > 100 * _mean(ctx.losses[ONSET_NM - 10 : ONSET_NM]),
    )


# -- controls -------------------------------------------------------------------------------------


class MixtureOfSoftmaxes(nn.Module):
    """Yang et al.'s mixture of softmaxes: K components, each with its own projection and
    softmax over the classes, mixed by a learned prior; returns log-probabilities."""

    def __init__(self, dim, classes, k=3):
        super().__init__()
        self.k = k
        self.prior = nn.Linear(dim, k)
        self.latent = nn.Linear(dim, k * dim)
        self.decoder = nn.Linear(dim, classes)

    def forward(self, h):
        b, d = h.shape
        log_prior = F.log_softmax(self.prior(h), -1)
        z = torch.tanh(self.latent(h)).reshape(b, self.k, d)
        log_comp = F.log_softmax(self.decoder(z), -1)
        return torch.logsumexp(log_prior[..., None] + log_comp, dim=1)


class SoundboardGrader(nn.Module):
    def __init__(self, d_in=14, hidden=48, classes=7):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.mos = MixtureOfSoftmaxes(hidden, classes)

    def forward(self, x):
        return self.mos(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _smoothed_nll(logp, y, eps=0.2):
    return (1 - eps) * F.nll_loss(logp, y) - eps * logp.mean(-1).mean()


@scenario(
    family="harp_making_soundboard_grade_mixture_of_softmaxes_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written GELU MLP (fc1, act1, fc2, act2) with a mixture-of-softmaxes output layer (mos: prior, latent, decoder; three components) grading a harp maker's spruce soundboard into seven grades from fourteen tap-tone and grain readings, AdamW at 3e-3 with weight decay 0.01, label smoothing 0.2 on the mixture's log-probabilities, a linear warm-up over the first 30 steps then constant, noisy batches of 64, 220 steps. It trains normally.",
)
def h338_harp_making_mos_control(ctx: Context) -> None:
    gen = seeded(33811)
    model = SoundboardGrader()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    batches = _grades(gen, 64, 14, 7, 3381, spread=1.4)
    _loop(ctx, model, opt, batches, 220, _smoothed_nll, classifier=True, sched=sched)
    x, y = next(batches)
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("held-out accuracy over 60%", acc > 0.6)
    ctx.check("finite throughout", _finite(ctx.losses))


class HornStageNet(nn.Module):
    """A ReLU Conv1d classifier of a ram's-horn heating trace (two channels, 48 samples)."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.conv1(x)), 2)
        h = F.relu(self.conv2(h)).mean(-1)
        return self.head(h)


def _heating(gen, batch, classes, seed, length=48):
    """Heat-gun traces: each stage has its own rise rate and ripple."""
    g = torch.Generator().manual_seed(seed)
    rate = 0.02 + 0.08 * torch.rand(classes, generator=g)
    ripple = 0.2 + 0.6 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        temp = 1 - torch.exp(-rate[y][:, None] * t)
        flex = torch.sin(ripple[y][:, None] * t + phase)
        x = torch.stack([temp, flex], 1)
        yield x + 0.3 * torch.randn(batch, 2, length, generator=gen), y


@scenario(
    family="shepherds_crook_horn_heating_stage_conv1d_classifier",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written ReLU Conv1d classifier (conv1, conv2, head) naming the stage of a crook maker's ram's-horn heating from a two-channel trace (temperature, flex), Adagrad under OneCycleLR (max_lr 0.05, no momentum cycling), gradient clipping at 1.0, noisy batches of 64, cross-entropy, 200 steps. It trains normally.",
)
def h338_shepherds_crook_conv1d_control(ctx: Context) -> None:
    gen = seeded(33812)
    model = HornStageNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=200, cycle_momentum=False
    )
    _loop(
        ctx,
        model,
        opt,
        _heating(gen, 64, 5, 3382),
        200,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="giant_onion_show_bulb_girth_fp16_accumulation_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a show onion's bulb girth (standardised) from ten growing readings, RAdam at 2e-3, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, Huber loss, ReduceLROnPlateau on a fixed validation batch (patience 10, factor 0.5), 180 steps. It trains normally.",
)
def h338_giant_onion_fp16_accumulation_control(ctx: Context) -> None:
    gen = seeded(33813)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10, factor=0.5)
    batches = _readings(gen, 64, 10, 3383, noise=0.1)
    xv, yv = next(batches)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(xv), yv))

    _loop(
        ctx,
        model,
        opt,
        batches,
        180,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
