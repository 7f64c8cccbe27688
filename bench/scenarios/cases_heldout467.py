"""Held-out set 467 (``h467_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a koto bridge-shift Elman RNN whose recurrent weights are initialised orthogonal with gain
3 typed for 1 (gradients grow back through time, clipped, RMSprop), a banya venik-steam ReLU
regressor under fp16 autocast with a GradScaler fed pressure columns in pascals from step 80
(fc1's fp16 output overflows, Adam), a tenkara fly-cast GELU classifier with a calibration
temperature 0.002 left in (softmax saturates, NAdam), a cormorant-fishing dive-time GELU regressor
whose manual 2**16 loss scale is not divided back on the resume step (one giant gradient fills
Adam's second moment), a pelota cesta-rebound ReLU regressor fed one shard with a 9999 sentinel
(Adagrad), a tannery bark-liquor net taking log(tannin / water) in the model with no floor and a
blank weighing row at step 100 (0/0, ASGD), an ikebana kenzan-grip two-group regressor whose
trunk lr is typed 1e-9 for 1e-3 (RAdam), a petanque boule-roll ReLU net whose fc2 biases are
initialised to -3 for -0.03 (dead ReLUs, Adamax), a hammered-dulcimer tanh Huber regressor whose
loss-weight table reads 500 for 0.5 at one step (SGD Nesterov, clipped), and a pack-ice drift
tanh regressor with hand-written weight decay of the wrong sign (plain SGD).

Controls: a crewel-embroidery stitch PixelCNN (masked convolutions, per-pixel Bernoulli outputs
over binarised 8x8 digits, Adam, clipping), a yayli-tanbur fret GELU classifier under bf16
autocast with no GradScaler and a cosine schedule (AdamW, label smoothing), a lute string-gauge
Huber regressor (SGD momentum, accumulation over 2, ReduceLROnPlateau, noisy labels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    digits,
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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """The file's training loop (``attach=False``: a reference run outside the monitor)."""
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
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
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


# -- 1. exploding gradients: a recurrent init gain typed 3 for 1 ------------------------------------


class _Elman(nn.Module):
    """A hand-written Elman RNN over a sequence of bridge-position frames."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.cell = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.cell.weight, gain=gain)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.out_features)
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.cell(h))
        return self.head(h).squeeze(-1)


def _koto_frames(gen, batch=32, length=20, seed=4671):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        x = 0.5 * torch.randn(batch, length, 4, generator=gen)
        y = torch.tanh(x[:, -5:] @ w).mean(1)
        yield x, y


def _first_last_ratio(model, x, y):
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    g = x.grad.norm(dim=(0, 2))
    model.zero_grad()
    return float(g[0] / g[-1].clamp_min(1e-30))


@scenario(
    family="koto_bridge_shift_elman_rnn_regressor",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="Koto bridge-shift regressor: a hand-written Elman RNN over 20 frames of bridge-position "
    "sensors (MSE, RMSprop, gradient clipping at 1). The recurrent weights are initialised "
    "orthogonal with gain=3 typed for gain=1, so gradients grow back through time: the first "
    "frame's gradient is far larger than the last's; clipping keeps the run from blowing up.",
)
def h467_koto_recurrent_gain_typo(ctx) -> None:
    gen = seeded(4671)
    data = _koto_frames(gen)
    ref = _Elman(gain=1.0)
    model = _Elman(gain=3.0)
    x0, y0 = next(data)
    ratio_ref = _first_last_ratio(ref, x0, y0)
    ratio = _first_last_ratio(model, x0, y0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    losses, norms = _loop(ctx, model, opt, data, 120, F.mse_loss, clip=1.0)
    ctx.check("first frame's gradient over 30x the last's at gain 3", ratio > 30.0)
    ctx.check("under 3x at gain 1", ratio_ref < 3.0)
    ctx.check("gradient norms over the clip threshold", _median(norms) > 1.0)
    ctx.check("the loss stays finite", _finite(losses))


# -- 2. amp overflow: pressure columns in pascals under fp16 autocast -------------------------------

BANYA_STEP = 80


@scenario(
    family="banya_venik_steam_fp16_relu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=BANYA_STEP,
    heldout=True,
    onset=BANYA_STEP,
    note="Banya venik-steam regressor (ReLU MLP, MSE, Adam, fp16 autocast with a GradScaler). "
    "From step 80 a new logger writes the four steam-pressure columns in pascals instead of "
    "standardised units; fc1's fp16 output passes 65504 and overflows to inf, the loss is "
    "non-finite at 80.",
)
def h467_banya_pascal_columns_fp16(ctx) -> None:
    gen = seeded(4672)
    model = _Net(8, 48, 1)
    data = _readings(gen, 64, 8, seed=4672)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    losses, fc1_inf, fc1_f32 = [], {}, {}
    for step in range(160):
        x, y = next(data)
        if step >= BANYA_STEP:
            x = x.clone()
            x[:, :4] = 101325.0 + 3000.0 * x[:, :4]
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        fc1_inf[step] = not bool(torch.isfinite(h).all())
        with torch.no_grad():
            fc1_f32[step] = bool(torch.isfinite(model.fc1(x)).all())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("trained before the logger change", _fell(losses[:BANYA_STEP]))
    ctx.check("fc1's fp16 output inf at 80", fc1_inf.get(BANYA_STEP, False))
    ctx.check("float32 fc1 stays finite", fc1_f32.get(BANYA_STEP, False))
    ctx.check("no inf before 80", not any(fc1_inf[s] for s in range(BANYA_STEP)))
    ctx.check("the loss non-finite at 80", len(losses) == BANYA_STEP + 1 and not _finite(losses))


# -- 3. softmax collapse: a temperature 0.002 left in -----------------------------------------------


class _Caster(_Net):
    def __init__(self, temperature):
        super().__init__(10, 48, 5, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="tenkara_fly_cast_gelu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tenkara fly-cast grade classifier (GELU MLP on rod-tip accelerometer features, "
    "cross-entropy, NAdam). A calibration temperature of 0.002 (meant for a debug run) is left "
    "in the forward pass: the logits are divided by it and over half of the rows' target "
    "probabilities round to exactly 1.0 in float32.",
)
def h467_tenkara_temperature_left_in(ctx) -> None:
    gen = seeded(4673)
    model = _Caster(0.002)
    data = _grades(gen, 64, 10, 5, seed=4673)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    losses, _ = _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True)
    x, y = next(data)
    with torch.no_grad():
        raw = model.head(model.features(x))
        hot = collapsed_fraction(raw / 0.002, y)
        cool = collapsed_fraction(raw, y)
    ctx.check("over half the rows' target probability exactly 1.0", hot > 0.5)
    ctx.check("under 5% at temperature 1", cool < 0.05)
    ctx.check("the logged loss finite", _finite(losses))


# -- 4. adam second moment: a manual loss scale not divided back ------------------------------------

CORMORANT_STEP = 80


@scenario(
    family="cormorant_fishing_dive_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=CORMORANT_STEP,
    note="Cormorant-fishing dive-time regressor (GELU MLP, MSE, Adam beta2=0.999). The loop "
    "multiplies the loss by a manual 2**16 scale for a mixed-precision experiment; on the resume "
    "step 80 the gradients are not divided back. One gradient 65536x too large fills Adam's "
    "second moment and the updates stall for the next hundreds of steps.",
)
def h467_cormorant_manual_scale_resume(ctx) -> None:
    def run(bug, attach):
        gen = seeded(4674)
        model = _Net(8, 48, 1, act=nn.GELU)
        data = _readings(gen, 64, 8, seed=4674)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moves = []
        prev = [p.detach().clone() for p in model.parameters()]

        def after(step):
            cur = [p.detach().clone() for p in model.parameters()]
            moves.append(
                math.sqrt(sum(float((a - b).norm() ** 2) for a, b in zip(cur, prev, strict=True)))
            )
            prev[:] = cur

        def backprop(step, loss):
            return loss * 2.0**16 if bug and step == CORMORANT_STEP else loss

        losses, norms = _loop(
            ctx, model, opt, data, 240, F.mse_loss, backprop=backprop, after=after, attach=attach
        )
        return losses, norms, moves

    clean, _, _ = run(False, False)
    losses, norms, moves = run(True, True)
    ctx.check(
        "gradient over 1e4x the median at 80",
        norms[CORMORANT_STEP] > 1e4 * _median(norms[:CORMORANT_STEP]),
    )
    ctx.check(
        "updates 120-220 under 1/20 of those before",
        _mean(moves[120:220]) < _mean(moves[40:CORMORANT_STEP]) / 20,
    )
    ctx.check(
        "the loss over 1.5x the clean run's at the end",
        _mean(losses[-10:]) > 1.5 * _mean(clean[-10:]),
    )


# -- 5. data outlier: one shard with a 9999 sentinel ------------------------------------------------

PELOTA_STEP = 120


@scenario(
    family="pelota_cesta_rebound_relu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=PELOTA_STEP,
    note="Pelota cesta-rebound distance regressor (ReLU MLP, MSE, Adagrad). The shard read at "
    "step 120 came from a court sensor that writes 9999 for a missed rebound; nobody filtered "
    "it (the loader divides by 100, so six rows arrive as 99.99). The loss and gradient jump on that step and the "
    "run recovers.",
)
def h467_pelota_sentinel_shard(ctx) -> None:
    gen = seeded(4675)
    model = _Net(8, 48, 1)
    data = _readings(gen, 64, 8, seed=4675)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)

    def alter(step, x, y):
        if step == PELOTA_STEP:
            y = y.clone()
            y[:6] = 9999.0 / 100.0
        return x, y

    losses, norms = _loop(ctx, model, opt, data, 220, F.mse_loss, alter=alter)
    before = _median(losses[PELOTA_STEP - 20 : PELOTA_STEP])
    ctx.check("loss over 20x at the shard", losses[PELOTA_STEP] > 20 * before)
    ctx.check(
        "gradient over 10x at the shard",
        norms[PELOTA_STEP] > 10 * _median(norms[PELOTA_STEP - 20 : PELOTA_STEP]),
    )
    ctx.check("recovers", _finite(losses) and _mean(losses[-10:]) < 3 * before)


# -- 6. nonfinite: log(tannin / water) with no floor ------------------------------------------------

TANNER_STEP = 100


class _LogRatio(nn.Module):
    """log(column 0 / column 1): the tannin to water ratio of a bark-liquor pit."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1] / x[:, 1:2]), x[:, 2:]], 1)


class _LiquorNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logratio = _LogRatio()
        self.fc1 = nn.Linear(7, 32)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.logratio(x)))).squeeze(-1)


@scenario(
    family="tannery_bark_liquor_logratio_silu_net",
    optimizer="ASGD",
    cause="nonfinite",
    where=("logratio",),
    diverges=TANNER_STEP,
    heldout=True,
    onset=TANNER_STEP,
    note="Tannery bark-liquor strength net (SiLU MLP on log(tannin / water) and pit readings, "
    "MSE, ASGD). The log-ratio has no floor; at step 100 a blank weighing row (both tannin and "
    "water 0) arrives, 0/0 gives NaN and the loss is NaN at 100.",
)
def h467_tannery_blank_weighing_row(ctx) -> None:
    gen = seeded(4676)
    model = _LiquorNet()
    g = torch.Generator().manual_seed(4676)
    w = torch.randn(6, generator=g)

    def data():
        while True:
            amounts = 0.5 + torch.rand(64, 2, generator=gen)
            rest = torch.randn(64, 6, generator=gen)
            y = 0.8 * torch.log(amounts[:, 0] / amounts[:, 1]) + torch.tanh(rest @ w / 2.5)
            yield torch.cat([amounts, rest], 1), y

    def alter(step, x, y):
        if step == TANNER_STEP:
            x = x.clone()
            x[3, :2] = 0.0
        return x, y

    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)
    losses, _ = _loop(ctx, model, opt, data(), 200, F.mse_loss, alter=alter)
    ctx.check("trained before the blank row", _fell(losses[:TANNER_STEP]))
    ctx.check("finite before 100", _finite(losses[:TANNER_STEP]))
    ctx.check(
        "the loss NaN at 100", len(losses) == TANNER_STEP + 1 and math.isnan(losses[TANNER_STEP])
    )


# -- 7. update ratio: a trunk lr typed 1e-9 for 1e-3 ------------------------------------------------


@scenario(
    family="ikebana_kenzan_two_group_relu_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Ikebana kenzan-grip stem-hold regressor (ReLU MLP, Huber, RAdam with two param "
    "groups). The trunk group's lr is typed 1e-9 for 1e-3: fc1 receives gradients but its "
    "weights move under 1e-5 of their norm; the head and fc2 train normally.",
)
def h467_ikebana_trunk_lr_typo(ctx) -> None:
    gen = seeded(4677)
    model = _Net(8, 48, 1)
    data = _readings(gen, 64, 8, seed=4677)
    opt = torch.optim.RAdam(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": [*model.fc2.parameters(), *model.head.parameters()], "lr": 1e-3},
        ]
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    grads = []

    def after(step):
        grads.append(float(model.fc1.weight.grad.norm()))

    losses, _ = _loop(ctx, model, opt, data, 200, F.smooth_l1_loss, after=after)
    moved1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    moved2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moves under 1e-5 of its norm", moved1 < 1e-5)
    ctx.check("fc1 receives gradients", _median(grads) > 1e-4)
    ctx.check("fc2 moves over 5%", moved2 > 0.05)
    ctx.check("the loss finite", _finite(losses))


# -- 8. loss of plasticity: fc2 biases initialised -3 for -0.03 -------------------------------------


def _boule_run(ctx, bias, attach):
    gen = seeded(4678)
    model = _Net(8, 48, 1)
    nn.init.constant_(model.fc2.bias, bias)
    g = torch.Generator().manual_seed(4678)
    w = torch.randn(8, generator=g)

    def stream():
        while True:
            x = torch.rand(64, 8, generator=gen)
            yield x, torch.sin(2.0 * x @ w / math.sqrt(8))

    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    losses, _ = _loop(ctx, model, opt, stream(), 200, F.mse_loss, attach=attach)
    x, _ = next(stream())
    with torch.no_grad():
        dead = dead_fraction(model.fc2(model.act1(model.fc1(x))))
    return losses, dead


@scenario(
    family="petanque_boule_roll_dead_relu_net",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Petanque boule-roll distance net (ReLU MLP on [0, 1] throw features, MSE, Adamax). "
    "fc2's biases are initialised to -3.0 (typed for -0.03): almost all of fc2's ReLUs are "
    "never positive, receive no gradient and stay dead; the loss stays near the mean predictor.",
)
def h467_petanque_bias_init_typo(ctx) -> None:
    ref_losses, ref_dead = _boule_run(ctx, -0.03, False)
    losses, dead = _boule_run(ctx, -3.0, True)
    ctx.check("over 90% of fc2's units dead at the end", dead > 0.9)
    ctx.check("under half dead at -0.03", ref_dead < 0.5)
    ctx.check(
        "the loss over 1.3x the reference's", _mean(losses[-10:]) > 1.3 * _mean(ref_losses[-10:])
    )


# -- 9. gradient spike: a loss-weight table entry 500 for 0.5 ---------------------------------------

DULCIMER_STEP = 120


@scenario(
    family="hammered_dulcimer_course_tanh_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=DULCIMER_STEP,
    note="Hammered-dulcimer string-course pitch-drift regressor (tanh MLP, Huber, SGD with "
    "Nesterov momentum, clipping at 5). The curriculum's loss-weight table reads 500 for 0.5 at "
    "step 120: one step's gradient is ~1000x the usual on an ordinary logged loss; clipping "
    "bounds the step and the run recovers.",
)
def h467_dulcimer_loss_weight_typo(ctx) -> None:
    gen = seeded(4679)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 64, 8, seed=4679)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (500.0 if step == DULCIMER_STEP else 0.5)

    losses, norms = _loop(ctx, model, opt, data, 220, F.smooth_l1_loss, backprop=backprop, clip=5.0)
    base = _median(norms[DULCIMER_STEP - 30 : DULCIMER_STEP])
    ctx.check("gradient over 50x the median at 120", norms[DULCIMER_STEP] > 50 * base)
    ctx.check(
        "the logged loss ordinary at 120",
        losses[DULCIMER_STEP] < 3 * _median(losses[DULCIMER_STEP - 20 : DULCIMER_STEP]),
    )
    ctx.check("recovers", _finite(losses) and _mean(losses[-10:]) < 2 * _mean(losses[100:120]))


# -- 10. loss divergence: weight decay with the wrong sign ------------------------------------------

WD = 0.1


@scenario(
    family="pack_ice_floe_drift_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Pack-ice floe-drift regressor (tanh MLP on wind and current features, MSE, plain SGD). "
    "A hand-written weight decay is added to the gradients as -wd * w instead of +wd * w: the "
    "weights grow steadily and, after an initial fall, the loss climbs slowly.",
)
def h467_pack_ice_decay_sign(ctx) -> None:
    gen = seeded(46710)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 64, 8, seed=46710)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    start = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))

    def backprop(step, loss):
        decay = sum((p * p).sum() for p in model.parameters())  # wd * w, sign flipped
        return loss - 0.5 * WD * decay

    losses, _ = _loop(ctx, model, opt, data, 300, F.mse_loss, backprop=backprop)
    end = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    best = min(losses)
    jumps = max(losses[i + 1] / max(losses[i], 1e-12) for i in range(len(losses) - 1))
    ctx.check("weights over 2x", end > 2 * start)
    ctx.check("the loss climbs over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("no single step over 5x", jumps < 5.0)
    ctx.check("finite", _finite(losses))


# -- controls -----------------------------------------------------------------------------------------


class _MaskedConv(nn.Conv2d):
    """A PixelCNN masked convolution: type 'A' hides the centre pixel, 'B' shows it."""

    def __init__(self, kind, c_in, c_out, k):
        super().__init__(c_in, c_out, k, padding=k // 2)
        mask = torch.ones_like(self.weight)
        mask[:, :, k // 2, k // 2 + (kind == "B") :] = 0
        mask[:, :, k // 2 + 1 :] = 0
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class _StitchPixelCNN(nn.Module):
    def __init__(self, width=24):
        super().__init__()
        self.conv_a = _MaskedConv("A", 1, width, 5)
        self.conv_b1 = _MaskedConv("B", width, width, 3)
        self.conv_b2 = _MaskedConv("B", width, width, 3)
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        h = F.relu(self.conv_a(x))
        h = h + F.relu(self.conv_b1(h))
        h = h + F.relu(self.conv_b2(h))
        return self.out(h)


@scenario(
    family="crewel_embroidery_stitch_pixelcnn",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Crewel-embroidery stitch-pattern density model: a hand-written PixelCNN (a type-A "
    "masked 5x5 convolution, two residual type-B masked 3x3 convolutions, a 1x1 output) over "
    "binarised 8x8 digits, per-pixel Bernoulli outputs (BCE with logits), Adam, clipping at 1. "
    "Control.",
)
def h467_crewel_pixelcnn_control(ctx) -> None:
    gen = seeded(46711)
    x_all = (digits()[0] > 0.5).float().reshape(-1, 1, 8, 8)
    model = _StitchPixelCNN()

    def stream():
        while True:
            idx = torch.randint(0, len(x_all), (64,), generator=gen)
            yield x_all[idx], x_all[idx]

    # causality: the logit at a pixel must not depend on that pixel or later ones
    probe = torch.zeros(1, 1, 8, 8, requires_grad=True)
    model(probe)[0, 0, 3, 3].backward()
    leak = float(probe.grad[0, 0, 3, 3:].abs().sum() + probe.grad[0, 0, 4:].abs().sum())
    model.zero_grad()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, _ = _loop(ctx, model, opt, stream(), 150, F.binary_cross_entropy_with_logits, clip=1.0)
    ctx.check("masks causal", leak == 0.0)
    ctx.check("the loss fell", _fell(losses, ratio=0.6))


class _FretClassifier(_Net):
    def __init__(self):
        super().__init__(64, 64, 10, act=nn.GELU)


@scenario(
    family="yayli_tanbur_fret_bf16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Yayli-tanbur fret-position classifier (GELU MLP on 8x8 fingerboard pressure maps, here "
    "the bundled digits), bf16 autocast with no GradScaler (bf16 has float32's range), AdamW "
    "weight decay 0.01, 10-step linear warm-up then cosine decay, label smoothing 0.1. Control.",
)
def h467_tanbur_bf16_cosine_control(ctx) -> None:
    gen = seeded(46712)
    xs, ys = digits()
    model = _FretClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 10 if s < 10 else 0.5 * (1 + math.cos(math.pi * (s - 10) / (steps - 10)))
        ),
    )
    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(ys), (64,), generator=gen)
        x, y = xs[idx], ys[idx]
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        acc = float((model(xs).argmax(1) == ys).float().mean())
    ctx.check("the loss fell", _fell(losses, ratio=0.5))
    ctx.check("accuracy over 85%", acc > 0.85)
    ctx.check("bf16 in the forward", out.dtype == torch.bfloat16)


@scenario(
    family="lute_string_gauge_momentum_huber_regressor",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lute string-gauge tension regressor (SiLU MLP, Huber, SGD momentum 0.9, accumulation "
    "over 2, clipping at 1, ReduceLROnPlateau on the logged loss, noisy labels). Control.",
)
def h467_lute_gauge_control(ctx) -> None:
    gen = seeded(46713)
    model = _Net(8, 48, 1, act=nn.SiLU)
    data = _readings(gen, 32, 8, seed=46713, noise=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    seen = []

    def after(step):
        seen.append(ctx.losses[-1])
        plateau.step(_mean(seen[-10:]))

    losses, _ = _loop(
        ctx, model, opt, data, 200, F.smooth_l1_loss, accumulate=2, clip=1.0, after=after
    )
    ctx.check("the loss fell", _fell(losses, ratio=0.6))
