"""Held-out set 520 (``h520_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a samphire-harvest mixture of logistic experts whose gate param group has its lr typed
1e-9 (Adagrad); an urushi-lacquer cure-time regressor whose loss is left multiplied by 1e6 for one
step (Adam's second moment poisoned); a ney-flute breath-pitch ReLU regressor whose fc2 biases are
initialised at -3 (dead ReLUs, NAdam); a cidery keeving regressor under fp16 autocast +
GradScaler fed pectin in mg/L (fp16 overflow, AdamW); a sandglass neck-flow regressor with a
hand-written decay of the wrong sign (slow climb, RAdam); a coracle paddle-stroke regressor whose
loss weight is 128 for one step (SGD Nesterov); a mud-pot bubble-rate net taking log of a zero
count (Adamax); a hurdy-gurdy wheel-rosin Huber regressor fed one shard in micrometres
(RMSprop); a kalimba tine-decay hand-written Elman RNN with recurrent gain 3 (SGD momentum); a
pelota-mixteca strike classifier dividing logits by a temperature typed 0.002 (plain SGD).

Controls: a horseshoe-crab spawning classifier distilled from a teacher trained first in the same
script (T=4, Adam, warm-up + cosine); a sea-smoke fog-depth Huber regressor (AdamW, OneCycleLR,
clipping, noisy batches); a gold-leaf gilding adhesion regressor (fp16 autocast + GradScaler, SGD
momentum, two param groups, ReduceLROnPlateau, accumulation 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    digit_batches,
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``weight(step)`` scales the
    backpropagated loss, ``after(step, loss)``. Stops after a non-finite loss once ``ctx.step``
    has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        w = weight(step) if weight is not None else 1.0
        (w * loss).backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
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


# -- 1. update ratio: a mixture of logistic experts whose gate group lr is typed 1e-9 ------------


class _LogisticExperts(nn.Module):
    """A softmax gate over several linear (logistic) classifiers, mixed in probability space."""

    def __init__(self, d_in, experts=4):
        super().__init__()
        self.gate = nn.Linear(d_in, experts)
        self.experts = nn.Linear(d_in, experts)  # one logistic classifier per column

    def forward(self, x):
        g = torch.softmax(self.gate(x), -1)
        p = torch.sigmoid(self.experts(x))
        return ((g * p).sum(-1)).clamp(1e-6, 1 - 1e-6)


def _samphire_table(gen, batch):
    """Tabular samphire-harvest batches: tide height, salinity, stem length, sun hours, creek
    distance, mud firmness; a good cut or not, a different linear rule in each marsh zone."""
    g = torch.Generator().manual_seed(52010)
    rules = torch.randn(4, 6, generator=g)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        zone = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
        score = (x * rules[zone]).sum(1)
        yield x, (score + 0.3 * torch.randn(batch, generator=gen) > 0).float()


@scenario(
    family="saltmarsh_samphire_harvest_logistic_experts",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("gate",),
    diverges=None,
    heldout=True,
    note="Samphire-harvest cut classifier, a hand-written mixture of logistic experts (softmax "
    "gate over 4 linear logistic classifiers, mixed probabilities, BCE) on tide, salinity, stem "
    "length, sun, creek distance and mud firmness. Gate and experts are trained jointly in two "
    "Adagrad param groups; the gate group's lr is typed 1e-9 for 1e-1: the gate never moves "
    "from its random init while the experts learn.",
)
def h520_samphire_experts_gate_lr_typo(ctx):
    gen = seeded(5201)
    model = _LogisticExperts(6)
    opt = torch.optim.Adagrad(
        [
            {"params": model.gate.parameters(), "lr": 1e-9},
            {"params": model.experts.parameters(), "lr": 1e-1},
        ]
    )
    g0 = model.gate.weight.detach().clone()
    e0 = model.experts.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _samphire_table(gen, 128), 200, F.binary_cross_entropy)
    ctx.check("gate moved under 1e-6 of its norm", _rel_change(model.gate.weight, g0) < 1e-6)
    ctx.check("experts moved over 5%", _rel_change(model.experts.weight, e0) > 0.05)
    ctx.check("the experts still trained (loss under 0.95x)", _fell(losses, ratio=0.95))


# -- 2. adam second moment: the loss left multiplied by 1e6 for one step --------------------------

URUSHI_ONSET = 100


@scenario(
    family="urushi_lacquer_cure_time_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=URUSHI_ONSET,
    note="Urushi-lacquer cure-time regressor (SiLU MLP on humidity, cabinet temperature, coat "
    "thickness, sap age, pigment load, MSE, Adam lr 1e-3, beta2 0.999). At step 100 a unit "
    "conversion meant for the logged value (hours to milliseconds-squared) is applied to the "
    "backpropagated loss instead: one gradient about 1e6x the usual fills Adam's second moment, "
    "whose 0.999 decay keeps every later update tiny; the loss stalls where it was.",
)
def h520_urushi_cure_loss_unit_once(ctx):
    gen = seeded(5202)
    model = _Net(5, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves, vs = [], []
    prev = {}

    def before(step):
        prev["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step, loss):
        moves.append(
            math.sqrt(
                sum(
                    float((p.detach() - q).pow(2).sum())
                    for p, q in zip(model.parameters(), prev["w"], strict=True)
                )
            )
        )
        vs.append(float(opt.state[model.fc1.weight]["exp_avg_sq"].sqrt().median()))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 52020),
        220,
        F.mse_loss,
        before=before,
        after=after,
        weight=lambda s: 1e6 if s == URUSHI_ONSET else 1.0,
    )
    o = URUSHI_ONSET
    ctx.check("gradient over 1e3x the median at onset", norms[o] > 1e3 * _median(norms[o - 30 : o]))
    ctx.check("fc1 median sqrt(v) over 30x after onset", vs[o + 5] > 30 * vs[o - 1])
    ctx.check(
        "updates 70-115 steps after under 0.2x those before",
        _mean(moves[o + 70 : o + 115]) < 0.2 * _mean(moves[o - 40 : o]),
    )
    ctx.check("loss finite", _finite(losses))


# -- 3. loss of plasticity: fc2 biases initialised at -3 -----------------------------------------


@scenario(
    family="ney_flute_breath_pitch_relu_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Ney-flute breath-pitch regressor (ReLU MLP on breath pressure, lip angle, finger "
    "holes, reed length and room temperature, MSE, NAdam). A custom init meant to fill fc2's "
    "biases with -0.03 fills them with -3: the second layer's ReLUs are dead from the start, no "
    "gradient reaches them and the net stalls near predicting the mean.",
)
def h520_ney_flute_dead_fc2_bias(ctx):
    gen = seeded(5203)
    model = _Net(5, 48, 1)
    with torch.no_grad():
        model.fc2.bias.fill_(-3.0)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    data = _readings(gen, 64, 5, 52030)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(9), 512, 5, 52030))
    losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss)
    with torch.no_grad():
        dead = dead_fraction(model.features(probe_x))
    ctx.check("over 80% of act2 units dead", dead > 0.8)
    ctx.check(
        "stalls above 0.6x the target variance", _mean(losses[-20:]) > 0.6 * float(probe_y.var())
    )
    ctx.check("finite", _finite(losses))


# -- 4. amp overflow: pectin in mg/L under fp16 autocast -----------------------------------------

CIDER_ONSET = 90


@scenario(
    family="cidery_keeving_pectin_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=CIDER_ONSET,
    heldout=True,
    onset=CIDER_ONSET,
    note="Cidery keeving chapeau-rise regressor (GELU MLP on pectin, calcium, juice "
    "temperature, pH and pulp time, MSE, fp16 autocast + GradScaler, AdamW). At step 90 a new "
    "lab sheet reports pectin in mg/L instead of g/L (about 9e4): under autocast the first "
    "layer's fp16 output overflows 65504 to inf and the loss is non-finite (the same batch in "
    "float32 is finite).",
)
def h520_cidery_pectin_mg_fp16_overflow(ctx):
    gen = seeded(5204)
    model = _Net(5, 64, 1, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 5, 52040)
    losses, fp32_ok, fc1_inf = [], [], []
    for step in range(160):
        x, y = next(data)
        if step >= CIDER_ONSET:
            x = x.clone()
            x[:, 0] = 9.0e4 + 1.0e4 * x[:, 0]
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        if step == CIDER_ONSET:
            fc1_inf.append(not bool(torch.isfinite(h).all()))
            with torch.no_grad():
                fp32_ok.append(bool(torch.isfinite(model(x)).all()))
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
    ctx.check("trained before the switch", _fell(losses[:CIDER_ONSET]))
    ctx.check("finite before the switch", _finite(losses[:CIDER_ONSET]))
    ctx.check("fp16 fc1 output overflowed at onset", bool(fc1_inf) and fc1_inf[0])
    ctx.check("the same batch is finite in float32", bool(fp32_ok) and fp32_ok[0])
    ctx.check("loss non-finite at onset", len(losses) == CIDER_ONSET + 1)


# -- 5. loss divergence: hand-written decoupled decay with the wrong sign ------------------------


@scenario(
    family="sandglass_neck_flow_decay_sign_silu_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Sandglass neck-flow regressor (SiLU MLP on neck diameter, grain size, sand humidity, "
    "bulb angle and fill mass, MSE, RAdam lr 1e-3). The hand-written decoupled weight decay is "
    "written p.mul_(1 + lr * wd) instead of 1 - lr * wd: the weights grow a little every step and "
    "the loss, after its first fall, climbs slowly with no jump.",
)
def h520_sandglass_decay_sign_bug(ctx):
    gen = seeded(5205)
    model = _Net(5, 48, 1, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    lr, wd = 1e-3, 8.0
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    orig_step = opt.step

    def step_with_decay(*a, **k):
        out = orig_step(*a, **k)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # sign bug: meant 1 - lr * wd
        return out

    opt.step = step_with_decay
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 5, 52050), 260, F.mse_loss)
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    best = min(losses[:120])
    jumps = max(b / a for a, b in zip(losses[:-1], losses[1:], strict=True))
    ctx.check("weights grew over 1.5x", w1 > 1.5 * w0)
    ctx.check("loss climbed over 2x its early best", _mean(losses[-10:]) > 2 * best)
    ctx.check("still climbing", _mean(losses[-10:]) > _mean(losses[-60:-50]))
    ctx.check("no step jumps over 3x", jumps < 3.0 and _finite(losses))


# -- 6. gradient spike: the fp16 loss scale left in the fp32 loop for one step -------------------

CORACLE_ONSET = 130


@scenario(
    family="coracle_paddle_stroke_loss_weight_relu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CORACLE_ONSET,
    note="Coracle paddle-stroke thrust regressor (ReLU MLP on stroke angle, blade depth, "
    "stroke rate, hull load and current, MSE, SGD Nesterov momentum 0.9, clipping at norm 1). "
    "After resuming at step 130 the old fp16 loss scale (128) is multiplied into the fp32 loss "
    "for that one step: one gradient about 128x the usual on an ordinary logged loss; clipping "
    "holds the update and the run carries on.",
)
def h520_coracle_stale_loss_scale(ctx):
    gen = seeded(5206)
    model = _Net(5, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 52060),
        200,
        F.mse_loss,
        weight=lambda s: 128.0 if s == CORACLE_ONSET else 1.0,
        clip=1.0,
    )
    o = CORACLE_ONSET
    ctx.check("gradient over 30x the median at onset", norms[o] > 30 * _median(norms[o - 30 : o]))
    ctx.check("logged loss ordinary at onset", losses[o] < 3 * _median(losses[o - 30 : o]))
    ctx.check("trained and finite", _fell(losses))


# -- 7. nonfinite: log of a zero bubble count ----------------------------------------------------

MUDPOT_ONSET = 100


class _LogRate(nn.Module):
    """Turns bubble counts per minute into log rates (no clamp)."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :2]), x[:, 2:]], 1)


class _MudpotNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lograte = _LogRate()
        self.body = _Net(6, 48, 1, act=nn.SiLU)

    def forward(self, x):
        return self.body(self.lograte(x))


def _mudpot_batches(gen, batch):
    base = _readings(gen, batch, 6, 52070)
    while True:
        x, y = next(base)
        x = x.clone()
        x[:, :2] = torch.exp(0.5 * x[:, :2]) * 3.0  # bubble counts per minute, positive
        yield x, y


@scenario(
    family="mudpot_bubble_burst_log_rate_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("lograte",),
    diverges=MUDPOT_ONSET,
    heldout=True,
    onset=MUDPOT_ONSET,
    note="Mud-pot eruption-height net (a log-rate layer on two bubble-burst counts, then a SiLU "
    "MLP with vent temperature, gas flux, mud viscosity and rain, MSE, Adamax). The log has no "
    "clamp; at step 100 a shard from a quiet pot has zero bursts in one row: log 0 = -inf, "
    "-inf times weights of both signs gives NaN and the loss is NaN.",
)
def h520_mudpot_log_zero_count(ctx):
    gen = seeded(5207)
    model = _MudpotNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    flags = []

    def alter(step, x, y):
        if step == MUDPOT_ONSET:
            x = x.clone()
            x[3, 0] = 0.0
            with torch.no_grad():
                flags.append(not bool(torch.isfinite(model.lograte(x)).all()))
        return x, y

    losses, _ = _loop(ctx, model, opt, _mudpot_batches(gen, 64), 160, F.mse_loss, alter=alter)
    ctx.check("trained before onset", _fell(losses[:MUDPOT_ONSET]))
    ctx.check("log-rate output non-finite at onset", bool(flags) and flags[0])
    ctx.check("loss NaN at onset", len(losses) == MUDPOT_ONSET + 1 and math.isnan(losses[-1]))


# -- 8. data outlier: one shard in micrometres ----------------------------------------------------

GURDY_ONSET = 120


@scenario(
    family="hurdy_gurdy_wheel_rosin_shard_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=GURDY_ONSET,
    note="Hurdy-gurdy wheel-rosin buzz regressor (ReLU MLP on wheel speed, rosin film, string "
    "pressure, cotton wrap and humidity, Huber loss, RMSprop, clipping at norm 1). The shard at "
    "step 120 was exported with the rosin film in micrometres instead of millimetres (1000x): "
    "one batch with a huge loss and gradient; clipping holds it and the run recovers.",
)
def h520_hurdy_gurdy_micrometre_shard(ctx):
    gen = seeded(5208)
    model = _Net(5, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == GURDY_ONSET:
            x = x.clone()
            x[:, 1] = x[:, 1] * 1000.0
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 52080),
        220,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    o = GURDY_ONSET
    pre = _median(losses[o - 30 : o])
    ctx.check("loss over 100x at onset", losses[o] > 100 * pre)
    ctx.check("gradient over 20x at onset", norms[o] > 20 * _median(norms[o - 30 : o]))
    ctx.check("recovers under 2x", _mean(losses[-20:]) < 2 * pre and _finite(losses))


# -- 9. exploding gradients: a hand-written Elman RNN with recurrent gain 3 ------------------------


class _ElmanCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.inp(x) + self.rec(h))


class _KalimbaRNN(nn.Module):
    def __init__(self, gain, hidden=32):
        super().__init__()
        self.cell = _ElmanCell(2, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.rec.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.head.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _kalimba_batches(gen, batch, frames=40):
    """Tine envelope frames (amplitude, pitch); target: the decay rate set at the first frame."""
    while True:
        rate = torch.rand(batch, generator=gen)
        t = torch.arange(frames).float() / frames
        amp = torch.exp(-(1 + 3 * rate[:, None]) * t) + 0.05 * torch.randn(
            batch, frames, generator=gen
        )
        pitch = 0.1 * torch.randn(batch, frames, generator=gen)
        yield torch.stack([amp, pitch], -1), rate - 0.5


@scenario(
    family="kalimba_tine_ring_decay_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.rec", "cell"),
    diverges=None,
    heldout=True,
    note="Kalimba tine ring-decay regressor, a hand-written Elman RNN over 40 envelope frames "
    "(MSE, SGD momentum 0.9, lr 1e-3). The recurrent weight is initialised orthogonal with gain "
    "typed 3 for 1: the backward pass multiplies through the recurrence, dL/dh grows from the "
    "last frame back to the first and the gradient is far larger than a gain-1 model's.",
)
def h520_kalimba_rnn_gain_typo(ctx):
    gen = seeded(5209)
    model = _KalimbaRNN(3.0)
    ref = _KalimbaRNN(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x0, y0 = next(_kalimba_batches(torch.Generator().manual_seed(7), 64))
    F.mse_loss(ref(x0), y0).backward()
    ref_norm = grad_norm(ref)
    F.mse_loss(model(x0), y0).backward()
    first, last = model.states[0].grad.norm(), model.states[-1].grad.norm()
    first_norm = grad_norm(model)
    model.zero_grad(set_to_none=True)
    ratio = float(first / last)
    losses, norms = _loop(ctx, model, opt, _kalimba_batches(gen, 64), 120, F.mse_loss)
    ctx.check("dL/dh at the first frame over 100x the last", ratio > 100)
    ctx.check("first gradient over 20x a gain-1 model's", first_norm > 20 * ref_norm)
    ctx.check("loss finite", _finite(losses))


# -- 10. softmax collapse: temperature typed 0.002 -------------------------------------------------


class _TempNet(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.body = _Net(12, 48, 5)
        self.temperature = temperature

    def forward(self, x):
        return self.body(x) / self.temperature


@scenario(
    family="pelota_mixteca_glove_strike_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("body.head",),
    diverges=None,
    heldout=True,
    note="Pelota-mixteca glove-strike classifier (ReLU MLP on glove-impact accelerometer "
    "features, 5 strike kinds, cross-entropy, plain SGD lr 1e-3). The logits are divided by a "
    "temperature typed 0.002 for 2.0: the softmax saturates and most rows' target probability "
    "rounds to exactly 1.0 in float32.",
)
def h520_pelota_mixteca_temperature_typo(ctx):
    gen = seeded(5210)
    model = _TempNet(0.002)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 52100, spread=0.5),
        150,
        F.cross_entropy,
        classifier=True,
    )
    px, py = next(_grades(torch.Generator().manual_seed(3), 512, 12, 5, 52100, spread=0.5))
    with torch.no_grad():
        raw = model.body(px)
    ctx.check(
        "over half the rows' target prob exactly 1.0", collapsed_fraction(raw / 0.002, py) > 0.5
    )
    ctx.check("under 5% at the intended 2.0", collapsed_fraction(raw / 2.0, py) < 0.05)
    ctx.check("loss finite", _finite(losses))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="horseshoe_crab_spawn_kd_student_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Horseshoe-crab spawning-beach classifier on 8x8 digit-like survey grids (control): a "
    "wide ReLU teacher is trained first in the script (Adam, 150 steps), then a small student "
    "learns from the teacher's softened targets at temperature 4 (KL times T^2, weight 0.7) mixed "
    "with the labels' cross-entropy (0.3), Adam with linear warm-up and cosine decay.",
)
def h520_horseshoe_crab_distilled_student(ctx):
    gen = seeded(5211)
    teacher = _Net(64, 128, 10)
    topt = torch.optim.Adam(teacher.parameters(), lr=2e-3)
    tdata = digit_batches(gen, 64)
    for _ in range(150):
        x, y = next(tdata)
        F.cross_entropy(teacher(x), y).backward()
        topt.step()
        topt.zero_grad(set_to_none=True)
    teacher.eval()
    student = _Net(64, 24, 10)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    steps, warm, temp = 200, 20, 4.0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )

    def kd_loss(out, y):
        with torch.no_grad():
            soft = torch.softmax(teacher(cur["x"]) / temp, -1)
        kl = F.kl_div(F.log_softmax(out / temp, -1), soft, reduction="batchmean")
        return 0.7 * kl * temp**2 + 0.3 * F.cross_entropy(out, y)

    cur = {}
    data = digit_batches(gen, 64)

    def batches():
        while True:
            x, y = next(data)
            cur["x"] = x
            yield x, y

    losses, _ = _loop(ctx, student, opt, batches(), steps, kd_loss, classifier=True, sched=sched)
    x, y = digits()
    with torch.no_grad():
        acc_s = float((student(x).argmax(1) == y).float().mean())
        acc_t = float((teacher(x).argmax(1) == y).float().mean())
    ctx.check("teacher learned (acc > 0.85)", acc_t > 0.85)
    ctx.check("student learned (acc > 0.8)", acc_s > 0.8)
    ctx.check("loss fell and finite", _fell(losses, ratio=0.5))


@scenario(
    family="sea_smoke_fog_depth_onecycle_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sea-smoke fog-depth regressor (control): SiLU MLP on air-sea temperature gap, wind, "
    "humidity, fetch and pressure, Huber loss on noisy buoy targets (noise 0.3), AdamW weight "
    "decay 1e-2, OneCycleLR peak 5e-3, clipping at norm 1.",
)
def h520_sea_smoke_onecycle_control(ctx):
    gen = seeded(5212)
    model = _Net(5, 48, 1, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-2)
    steps = 220
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 52120, noise=0.3),
        steps,
        F.huber_loss,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell and finite", _fell(losses, ratio=0.8))
    ctx.check("no gradient burst over 10x the median", max(norms) < 10 * _median(norms) + 1.0)


@scenario(
    family="gold_leaf_gilding_adhesion_fp16_plateau_regressor",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Gold-leaf gilding adhesion regressor (control): GELU MLP on size tack time, leaf "
    "carat, gesso layers, humidity and burnish pressure, MSE under fp16 autocast + GradScaler, "
    "SGD momentum 0.9 in two param groups (head at half the lr), ReduceLROnPlateau, gradient "
    "accumulation 2, clipping at norm 1 after unscaling.",
)
def h520_gold_leaf_fp16_control(ctx):
    gen = seeded(5213)
    model = _Net(5, 48, 1, act=nn.GELU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.SGD(
        [
            {"params": body, "lr": 0.03},
            {"params": model.head.parameters(), "lr": 0.015},
        ],
        momentum=0.9,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 32, 5, 52130)
    losses = []
    for _ in range(180):
        shown = 0.0
        for _ in range(2):
            x, y = next(data)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.mse_loss(out.float(), y)
            scaler.scale(loss / 2).backward()
            shown += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        plateau.step(shown)
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell and finite", _fell(losses, ratio=0.6))
    ctx.check("scaler scale stayed finite", _finite(ctx.scales))
