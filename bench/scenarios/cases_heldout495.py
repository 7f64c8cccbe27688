"""Held-out set 495 (``h495_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a sleigh-bell jingle-decay tanh RNN initialised with recurrent gain 2.5 (exploding
through time, SGD momentum), a fencing-foil touch classifier whose hand-rolled cross-entropy has
the logsumexp replaced by a mean (output logits grow without bound, RAdam), a cheese-wax coat
regressor resumed from a checkpoint without its Adam state (a one-off loss spike, Adam), a
saddle-stitch tension regressor range-normalising a flat stuck-sensor trace (0/0, NaN,
Adagrad), a tar-paper roof-sag regressor fed one shard in millimetres (SGD Nesterov), a
candle-dipping defect BCE tagger whose loss weight is read in percent for one step (one
gradient burst, SGD), a curling-iron hold Gaussian-NLL regressor whose variance head's lr is
typed 3e-9 (AdamW), a grass-ski run-grade classifier with temperature 0.004 (softmax collapse,
Adamax), a moraine-meltwater channel classifier with fc2's bias filled with -3 (dead ReLUs,
NAdam) and an ironing-crease press regressor whose OneCycleLR max_lr is typed 6.0 for 0.6 (past
the 2/sharpness limit, SGD).

Controls: a croquet-lawn hoop-scene relation network (a shared MLP over every pair of objects,
summed, then a classifier; AdamW, warm-up + cosine, clipping); a snowflake-habit branch-length
Huber regressor whose data are shuffled once so the batches come in the same order every epoch
(RMSprop, ReduceLROnPlateau); a kazoo buzz-timbre Conv1d classifier (SGD Nesterov, OneCycleLR,
label smoothing, accumulation 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
    plateau=False,
):
    """The file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``backprop(step, loss)`` is the loss actually backpropagated (before the division by
    ``accumulate``), ``after(step, loss)`` runs after the optimizer step. Stops after a
    non-finite loss once ``ctx.step`` has seen it. ``attach=False``: a reference run."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            if plateau:
                sched.step(shown)
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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


def _moved(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


# -- 1. exploding gradients: recurrent weights initialised with gain 2.5 ----------------------------


class _BellRNN(nn.Module):
    """A hand-written Elman tanh RNN over a jingle's envelope, regressing its decay rate."""

    def __init__(self, d_in=4, hidden=32, gain=2.5):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _jingles(gen, batch, length=40):
    while True:
        rate = 0.5 + torch.rand(batch, generator=gen)
        t = torch.linspace(0, 1, length)
        env = torch.exp(-rate[:, None] * 3 * t)
        x = torch.stack(
            [
                env,
                env * torch.cos(20 * t),
                0.1 * torch.randn(batch, length, generator=gen),
                t.expand(batch, -1),
            ],
            -1,
        )
        yield x, rate


@scenario(
    family="sleigh_bell_jingle_decay_gain_tanh_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Sleigh-bell jingle-decay regressor (a hand-written Elman tanh RNN over a 40-step "
    "envelope of the jingle, MSE, SGD momentum). The recurrent weight is initialised with "
    "nn.init.orthogonal_(gain=2.5), a gain meant for the input layer, instead of 1.0: the "
    "backpropagated gradient grows step after step back through time, the first state's "
    "gradient is thousands of times the last's and the whole gradient is hundreds of times a "
    "gain-1 run's; the first steps throw the weights into saturation and the run limps on.",
)
def h495_sleigh_bell_recurrent_gain(ctx) -> None:
    gen = seeded(4951)
    model = _BellRNN(gain=2.5)
    ref = _BellRNN(gain=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    data = _jingles(gen, 32)
    x0, y0 = next(data)
    F.mse_loss(ref(x0), y0).backward()
    ref_norm = grad_norm(ref)
    ratios, norms, losses = [], [], []
    for step in range(150):
        x, y = (x0, y0) if step == 0 else next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g0, gl = model.states[0].grad, model.states[-1].grad
        ratios.append(float(g0.norm() / gl.norm()) if float(gl.norm()) > 0 else math.inf)
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("the first state's gradient over 100x the last's at step 0", ratios[0] > 100)
    ctx.check("the gradient over 100x a gain-1 run's on the same batch", norms[0] > 100 * ref_norm)
    ctx.check("the loss stayed finite (no blow-up)", _finite(losses))


# -- 2. output logit divergence: logsumexp replaced by a mean ---------------------------------------


def _mean_logit_ce(logits, y):
    # hand-rolled cross-entropy: -z_y + logsumexp(z), the logsumexp written as a mean
    return (-logits.gather(1, y[:, None]).squeeze(1) + logits.mean(1)).mean()


@scenario(
    family="fencing_foil_touch_mean_logit_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Fencing-foil touch classifier (GELU MLP on blade-pressure, timing and target-area "
    "features, four classes: valid, off-target, no touch, priority; RAdam). The hand-rolled "
    "cross-entropy -z_y + logsumexp(z) has the logsumexp written as z.mean(1): nothing bounds "
    "the objective, the target logit is pushed up and the others down every step and the "
    "head's logits grow without limit.",
)
def h495_fencing_foil_mean_logit(ctx) -> None:
    seeded(4952)
    model = _Net(12, 48, 4, act=nn.GELU)
    ref = _Net(12, 48, 4, act=nn.GELU)
    ref.load_state_dict(model.state_dict())

    def run(net, loss_fn, attach):
        opt = torch.optim.RAdam(net.parameters(), lr=3e-3)
        peak = []
        probe = next(_grades(torch.Generator().manual_seed(49520), 256, 12, 4, 4952))[0]

        def after(step, loss):
            with torch.no_grad():
                peak.append(float(net(probe).abs().max()))

        data = _grades(torch.Generator().manual_seed(49521), 64, 12, 4, 4952)
        losses, _ = _train(
            ctx, net, opt, data, 200, loss_fn, classifier=True, after=after, attach=attach
        )
        return losses, peak

    _, ref_peak = run(ref, F.cross_entropy, False)
    losses, peak = run(model, _mean_logit_ce, True)
    ctx.check("with the real cross-entropy the logits stay under 30", max(ref_peak) < 30)
    ctx.check("max |logit| over 20x its start", peak[-1] > 20 * peak[0])
    ctx.check("still growing over the last half", _mean(peak[-10:]) > 1.3 * _mean(peak[95:105]))
    ctx.check("the loss went below -10 (no real cross-entropy can)", losses[-1] < -10)


# -- 3. loss spike: resumed from a checkpoint without the optimizer state ----------------------------

CHEESE_RESUME = 150


@scenario(
    family="cheese_wax_coat_thickness_state_reset_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CHEESE_RESUME,
    note="Cheese-wax coat-thickness regressor (SiLU MLP on wax temperature, dip time, wheel "
    "size and rind moisture, MSE, Adam). The job is pre-empted and resumed at step 150 from a "
    "checkpoint whose loader restores the model but silently drops the optimizer state: Adam "
    "restarts with empty moments, its first bias-corrected steps move every weight by about "
    "the full lr at once, the loss jumps and the run recovers within a few dozen steps; no "
    "gradient burst, no bad data.",
)
def h495_cheese_wax_state_reset(ctx) -> None:
    gen = seeded(4953)
    model = _Net(8, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def before(step):
        if step == CHEESE_RESUME:
            opt.state.clear()  # the resume path restored the model only

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 8, 4953), 260, F.mse_loss, before=before
    )
    pre = _mean(losses[CHEESE_RESUME - 10 : CHEESE_RESUME])
    spike = max(losses[CHEESE_RESUME : CHEESE_RESUME + 6])
    ctx.check("the loss jumped over 3x just after the resume", spike > 3 * pre)
    ctx.check(
        "it recovered to under 1.5x within 60 steps",
        _mean(losses[CHEESE_RESUME + 50 : CHEESE_RESUME + 60]) < 1.5 * pre,
    )
    ctx.check(
        "the gradient at the resume step is ordinary (under 3x the median)",
        norms[CHEESE_RESUME] < 3 * _median(norms[100:CHEESE_RESUME]),
    )
    ctx.check("finite throughout", _finite(losses))


# -- 4. nonfinite: range normalisation of a flat trace ----------------------------------------------

SADDLE_STEP = 140


class _RangeNorm(nn.Module):
    """Scales each trace to [0, 1] by its own range (no epsilon)."""

    def forward(self, x):
        lo = x.min(-1, keepdim=True).values
        hi = x.max(-1, keepdim=True).values
        return (x - lo) / (hi - lo)


class _StitchNet(nn.Module):
    def __init__(self, window=20, hidden=32):
        super().__init__()
        self.rangenorm = _RangeNorm()
        self.fc1 = nn.Linear(window, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.rangenorm(x)))).squeeze(-1)


@scenario(
    family="saddle_stitch_thread_tension_range_norm_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("rangenorm",),
    diverges=SADDLE_STEP,
    heldout=True,
    onset=SADDLE_STEP,
    note="Saddle-stitch thread-tension regressor (ReLU MLP on a 20-point tension trace of a "
    "leather stitching pony, each trace range-normalised to [0, 1], MSE, Adagrad). The range "
    "normalisation divides by max - min with no epsilon; at step 140 a batch holds traces from "
    "a stuck sensor that reads the same value throughout: 0/0 gives NaN and the loss is NaN.",
)
def h495_saddle_stitch_flat_trace(ctx) -> None:
    gen = seeded(4954)
    model = _StitchNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    nan_out = []
    model.rangenorm.register_forward_hook(
        lambda m, i, o: nan_out.append(bool(torch.isnan(o).any()))
    )
    g = torch.Generator().manual_seed(49540)
    w = torch.randn(20, generator=g)

    def data():
        while True:
            x = torch.cumsum(torch.randn(64, 20, generator=gen), -1)
            xn = (x - x.min(-1, keepdim=True).values) / (
                x.max(-1, keepdim=True).values - x.min(-1, keepdim=True).values
            )
            yield x, torch.tanh(xn @ w / 3)

    def alter(step, x, y):
        if step == SADDLE_STEP:
            x = x.clone()
            x[:4] = 3.7  # the stuck sensor
        return x, y

    losses, _ = _train(ctx, model, opt, data(), 200, F.mse_loss, alter=alter)
    ctx.check("finite before step 140", _finite(losses[:SADDLE_STEP]))
    ctx.check("the loss fell before it", _fell(losses[:SADDLE_STEP]))
    ctx.check(
        "the loss is NaN at step 140",
        len(losses) > SADDLE_STEP and math.isnan(losses[SADDLE_STEP]),
    )
    ctx.check(
        "the range norm produced the NaN (first NaN output at 140)",
        nan_out.index(True) == SADDLE_STEP if True in nan_out else False,
    )


# -- 5. data outlier: one shard in millimetres -------------------------------------------------------

TAR_STEP = 120


@scenario(
    family="tar_paper_roof_sag_mm_shard_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=TAR_STEP,
    note="Tar-paper roof sag regressor (ReLU MLP on rafter span, felt weight, pitch and "
    "temperature features, MSE, SGD Nesterov, clipping at 1). One shard of the survey data "
    "was exported with the sag in millimetres instead of metres: its batch at step 120 has "
    "targets 1000x too large; the loss and the gradient jump, the clipped step is survived and "
    "the run recovers.",
)
def h495_tar_paper_mm_shard(ctx) -> None:
    gen = seeded(4955)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == TAR_STEP else (x, y)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4955), 220, F.mse_loss, alter=alter, clip=1.0
    )
    pre = _mean(losses[TAR_STEP - 10 : TAR_STEP])
    ctx.check(
        "the loss at the bad batch is over 100x the steps before", losses[TAR_STEP] > 100 * pre
    )
    ctx.check(
        "the gradient there is over 20x the median",
        norms[TAR_STEP] > 20 * _median(norms[60:TAR_STEP]),
    )
    ctx.check(
        "the run recovered (last 10 under 2x the pre-outlier mean)", _mean(losses[-10:]) < 2 * pre
    )
    ctx.check("finite throughout", _finite(losses))


# -- 6. gradient spike: a loss weight read in percent for one step -----------------------------------

CANDLE_STEP = 100


@scenario(
    family="candle_dipping_wick_defect_bce_tagger",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CANDLE_STEP,
    note="Candle-dipping defect tagger (ReLU MLP on dip count, wax temperature, wick type and "
    "cooling time, multi-label BCE over drip, bloom, crack and tunnelling, SGD, clipping at 2). "
    "When the curriculum switches phase at step 100 the new phase's defect-loss weight is read "
    "from the config as 100 (a percentage) instead of 1.0 for that one step before the next "
    "config read corrects it: one gradient burst 100x its size that does not come from the data.",
)
def h495_candle_dipping_percent_weight(ctx) -> None:
    gen = seeded(4956)
    model = _Net(10, 48, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(49560)
    w = torch.randn(10, 4, generator=g)

    def data():
        while True:
            x = torch.randn(64, 10, generator=gen)
            yield x, (x @ w + 0.3 * torch.randn(64, 4, generator=gen) > 0.5).float()

    def backprop(step, loss):
        weight = 100.0 if step == CANDLE_STEP else 1.0
        return weight * loss

    losses, norms = _train(
        ctx,
        model,
        opt,
        data(),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=2.0,
    )
    med = _median(norms[50:CANDLE_STEP])
    ctx.check("the gradient at step 100 is over 50x the median", norms[CANDLE_STEP] > 50 * med)
    ctx.check(
        "the batch itself is ordinary (loss under 2x the steps before)",
        losses[CANDLE_STEP] < 2 * _mean(losses[CANDLE_STEP - 10 : CANDLE_STEP]),
    )
    ctx.check("the loss fell overall and stayed finite", _fell(losses))


# -- 7. update ratio: the variance head's lr typed 3e-9 ----------------------------------------------


class _HoldNet(nn.Module):
    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.var_head(h)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-4)


@scenario(
    family="curling_iron_curl_hold_gaussian_nll_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("var_head",),
    diverges=None,
    heldout=True,
    note="Curling-iron curl-hold regressor (tanh MLP on barrel temperature, hair porosity, "
    "wrap time and humidity, a mean and a variance head, Gaussian NLL, AdamW with param "
    "groups). The variance head's group lr is typed 3e-9 for 3e-3: its updates are some "
    "million times too small for its weights, it never moves while the trunk and the mean head "
    "train and the loss still falls.",
)
def h495_curling_iron_var_lr_typo(ctx) -> None:
    gen = seeded(4957)
    model = _HoldNet()
    rest = [p for n, p in model.named_parameters() if not n.startswith("var_head.")]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 3e-3}, {"params": model.var_head.parameters(), "lr": 3e-9}],
        weight_decay=0.01,
    )
    v0 = model.var_head.weight.detach().clone()
    f0 = model.fc2.weight.detach().clone()
    g = torch.Generator().manual_seed(49570)
    w = torch.randn(9, generator=g)

    def data():
        while True:
            x = torch.randn(64, 9, generator=gen)
            scale = 0.1 + 0.4 * torch.sigmoid(x[:, 0] * 2)
            yield x, torch.tanh(x @ w / 3) + scale * torch.randn(64, generator=gen)

    losses, _ = _train(ctx, model, opt, data(), 200, _gauss_nll)
    ctx.check("var_head moved under 1e-4 of its norm", _moved(model.var_head.weight, v0) < 1e-4)
    ctx.check("fc2 moved over 5% of its norm", _moved(model.fc2.weight, f0) > 0.05)
    ctx.check(
        "the loss still fell (finite)",
        _finite(losses) and _mean(losses[-10:]) < _mean(losses[:10]) - 0.1,
    )


# -- 8. softmax collapse: temperature 0.004 --------------------------------------------------------


class _GradeNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, classes=5, tau=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.tau = tau

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.tau


@scenario(
    family="grass_ski_run_grade_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Grass-ski run-grade classifier (ReLU MLP on slope, turf length, moisture and "
    "track-roller features, five grades, cross-entropy, Adamax). The logits are divided by a "
    "temperature meant to be 1.0 that the config gives as 0.004 (a calibration value pasted in "
    "the wrong field): the softmax saturates, most rows' target probability rounds to exactly "
    "1.0 in float32 and their gradients vanish.",
)
def h495_grass_ski_temperature(ctx) -> None:
    seeded(4958)
    model = _GradeNet(tau=0.004)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(49580), 256, 10, 5, 4958))
    data = _grades(torch.Generator().manual_seed(49581), 64, 10, 5, 4958)
    losses, _ = _train(ctx, model, opt, data, 160, F.cross_entropy, classifier=True)
    with torch.no_grad():
        frac = collapsed_fraction(model(probe_x), probe_y)
        model.tau = 1.0
        frac_ref = collapsed_fraction(model(probe_x), probe_y)
        model.tau = 0.004
    ctx.check("over half the rows' target probability is exactly 1.0", frac > 0.5)
    ctx.check("at temperature 1 none are", frac_ref < 0.05)
    ctx.check("no NaN", _finite(losses))


# -- 9. loss of plasticity: fc2's bias filled with -3 -----------------------------------------------


@scenario(
    family="moraine_meltwater_channel_bias_init_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Moraine meltwater-channel classifier (ReLU MLP on slope, grain size, discharge and "
    "debris-cover features, six channel types, cross-entropy, NAdam). An init helper copied "
    "from a gated model fills fc2's bias with -3: almost every fc2 ReLU is dead on the data from "
    "the start, gets no gradient and never comes back, and the run learns little beyond the "
    "class prior.",
)
def h495_moraine_dead_bias(ctx) -> None:
    seeded(4959)
    model = _Net(12, 48, 6)
    ref = _Net(12, 48, 6)
    ref.load_state_dict(model.state_dict())
    nn.init.constant_(model.fc2.bias, -3.0)
    probe_x, _ = next(_grades(torch.Generator().manual_seed(49590), 256, 12, 6, 4959, 1.5))

    def run(net, attach):
        opt = torch.optim.NAdam(net.parameters(), lr=3e-3)
        data = _grades(torch.Generator().manual_seed(49591), 64, 12, 6, 4959, 1.5)
        losses, _ = _train(
            ctx, net, opt, data, 200, F.cross_entropy, classifier=True, attach=attach
        )
        return losses

    ref_losses = run(ref, False)
    losses = run(model, True)
    with torch.no_grad():
        dead = dead_fraction(model.features(probe_x))
        dead_ref = dead_fraction(ref.features(probe_x))
    ctx.check("over 80% of fc2's units are dead at the end", dead > 0.8)
    ctx.check("with the default bias under 20% are", dead_ref < 0.2)
    ctx.check(
        "the run ends over 2x the reference's loss",
        _mean(losses[-10:]) > 2 * _mean(ref_losses[-10:]),
    )
    ctx.check("no NaN", _finite(losses))


# -- 10. sharpness above the limit: OneCycleLR max_lr typed 6.0 for 0.6 ------------------------------


def _sharpness(model, x, y, loss_fn, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
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
    family="ironing_crease_press_time_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Ironing crease press-time regressor (tanh MLP on fabric weight, fibre blend, steam "
    "and sole-plate temperature, MSE, plain SGD under OneCycleLR). max_lr is typed 6.0 for "
    "0.6: the warm-up takes the learning rate past 2/sharpness, the loss starts oscillating "
    "and then blows up.",
)
def h495_ironing_crease_onecycle(ctx) -> None:
    gen = seeded(4960)
    model = _Net(8, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=6.0, total_steps=200, pct_start=0.5)
    probe = next(_readings(torch.Generator().manual_seed(49600), 256, 8, 4960))
    records = []

    def before(step):
        if step % 5 == 0:
            records.append((step, opt.param_groups[0]["lr"], _sharpness(model, *probe, F.mse_loss)))

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 8, 4960), 200, F.mse_loss, sched=sched, before=before
    )
    best = min(range(len(losses)), key=lambda i: losses[i] if math.isfinite(losses[i]) else 1e30)
    ctx.check("it trained first (best under 0.5x the start)", losses[best] < 0.5 * losses[0])
    ctx.check(
        "the loss blew up (non-finite or over 100x its best)",
        not _finite(losses) or max(losses[best:]) > 100 * losses[best],
    )
    ctx.check(
        "lr x sharpness crossed 2 before the blow-up",
        any(lr * lam > 2 for s, lr, lam in records if s <= len(losses)),
    )
    ctx.check(
        "and was under 2 at the start",
        records[0][1] * records[0][2] < 2,
    )


# -- 11. healthy: a relation network over croquet-lawn scenes -------------------------------------


class _RelationNet(nn.Module):
    """g: a shared MLP over every ordered pair of objects (both and their absolute
    difference), summed; f: the classifier."""

    def __init__(self, d_obj=6, hidden=64, classes=3):
        super().__init__()
        self.g1 = nn.Linear(3 * d_obj, hidden)
        self.g2 = nn.Linear(hidden, hidden)
        self.f1 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, objs):
        b, n, d = objs.shape
        left = objs[:, :, None, :].expand(b, n, n, d)
        right = objs[:, None, :, :].expand(b, n, n, d)
        pairs = torch.cat([left, right, (left - right).abs()], -1)
        rel = F.relu(self.g2(F.relu(self.g1(pairs))))
        mask = 1.0 - torch.eye(n)[None, :, :, None]
        return self.head(F.relu(self.f1((rel * mask).sum((1, 2)) / n)))


def _lawn_scenes(gen, batch, n=6):
    """Balls (x, y, one-hot of three colours, size); label: how many pairs of balls lie
    within 0.2 of each other (0, 1, 2 or more)."""
    while True:
        pos = torch.rand(batch, n, 2, generator=gen)
        colour = torch.randint(0, 3, (batch, n), generator=gen)
        size = 0.5 + 0.5 * torch.rand(batch, n, 1, generator=gen)
        objs = torch.cat([pos, F.one_hot(colour, 3).float(), size], -1)
        dist = torch.cdist(pos, pos)
        close = (dist < 0.2) & ~torch.eye(n, dtype=torch.bool)
        yield objs, (close.sum((1, 2)) // 2).clamp(max=2)


@scenario(
    family="croquet_lawn_hoop_scene_relation_network",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Croquet-lawn scene classifier: a hand-written relation network (a shared ReLU MLP "
    "over every pair of the six balls, summed, then a classifier) counting pairs of balls "
    "within a mallet's reach (0, 1, 2+), cross-entropy, AdamW, linear warm-up + cosine decay, "
    "gradient clipping at 1. A healthy control.",
)
def h495_croquet_relation_network(ctx) -> None:
    gen = seeded(4961)
    model = _RelationNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 300
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    losses, _ = _train(
        ctx,
        model,
        opt,
        _lawn_scenes(gen, 64),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    test_x, test_y = next(_lawn_scenes(torch.Generator().manual_seed(49610), 512))
    with torch.no_grad():
        acc = float((model(test_x).argmax(1) == test_y).float().mean())
    prior = float(torch.bincount(test_y, minlength=3).max()) / len(test_y)
    ctx.check("the loss fell under 0.8x its start, finite", _fell(losses, ratio=0.8))
    ctx.check("held-out accuracy beats the majority class by 10 points", acc > prior + 0.1)


# -- 12. healthy: data shuffled once, the same batch order every epoch -----------------------------

SNOW_BATCHES = 8


@scenario(
    family="snowflake_habit_branch_length_fixed_order_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Snowflake-habit branch-length regressor (SiLU MLP on temperature, supersaturation, "
    "fall time and pressure, Huber loss, RMSprop, ReduceLROnPlateau). The 512 growth-chamber "
    "samples are shuffled once when the dataset is built and then served in the same order "
    "every epoch (8 batches), so the per-batch losses repeat with the epoch's period. A "
    "healthy control.",
)
def h495_snowflake_fixed_order(ctx) -> None:
    gen = seeded(4962)
    xs, ys = next(_readings(gen, 512, 9, 4962, noise=0.3))
    order = torch.randperm(512, generator=gen)  # shuffled once
    xs, ys = xs[order], ys[order]
    served = []

    def data():
        while True:
            for i in range(SNOW_BATCHES):
                served.append(i)
                yield xs[i * 64 : (i + 1) * 64], ys[i * 64 : (i + 1) * 64]

    model = _Net(9, 48, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    losses, _ = _train(ctx, model, opt, data(), 240, F.huber_loss, sched=sched, plateau=True)
    tail = losses[-96:]
    p = SNOW_BATCHES

    def corr(lag):
        a, b = torch.tensor(tail[:-lag]), torch.tensor(tail[lag:])
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    ctx.check("the loss fell under 0.7x its start, finite", _fell(losses))
    ctx.check("the batches came in the same order every epoch", served[:p] == served[-p:])
    ctx.check("per-batch losses repeat with the epoch's period (lag-8 corr > 0.5)", corr(p) > 0.5)


# -- 13. healthy: a Conv1d kazoo classifier with the usual practice ---------------------------------


class _KazooNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 7, padding=3)
        self.conv2 = nn.Conv1d(12, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _buzzes(gen, batch, length=64):
    t = torch.arange(length) / length
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        f = (3 + 3 * y).float()[:, None] + 0.5 * torch.randn(batch, 1, generator=gen)
        x = torch.sign(torch.sin(2 * math.pi * f * t)) * (
            0.5 + 0.5 * torch.rand(batch, 1, generator=gen)
        )
        yield x + 0.4 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="kazoo_buzz_timbre_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kazoo buzz-timbre classifier (ReLU Conv1d over a 64-sample membrane trace, four "
    "timbres, cross-entropy with label smoothing 0.1, SGD Nesterov under OneCycleLR, gradient "
    "accumulation 2, clipping at 1). A healthy control.",
)
def h495_kazoo_conv1d(ctx) -> None:
    gen = seeded(4963)
    model = _KazooNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=150)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _buzzes(gen, 32),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell under 0.7x its start, finite", _fell(losses))
