"""Held-out set 525 (``h525_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a campanology bell-rope sally-timing regressor whose loss is left multiplied by 1e6 for
one step (Adam's second moment poisoned); a begena lyre buzz-strap classifier dividing logits by a
temperature typed 0.002 (ASGD); a krar lyre tuning regressor restarted from a stale checkpoint
(loss spike, NAdam); a masenqo bow-rosin Huber regressor fed one shard in grams for kilograms
(RMSprop); a sandur outwash-braid Gaussian-NLL net taking sqrt of a stage below datum (Adamax); a
pewterer casting-pour regressor under fp16 autocast + GradScaler fed millikelvin (AdamW); a
paviour sett-bedding regressor whose fc1 param group lr is typed 1e-9 (Adagrad); a sievemaker
mesh-tension ReLU regressor whose fc2 biases are initialised at -3 (RAdam); a sting-jet gust
16-layer tanh stack with init gain typed 4 (plain SGD); a broommaker besom-binding regressor whose
accumulation divisor becomes a multiplier for one step (SGD Nesterov).

Controls: a Langmuir-circulation windrow classifier, a hand-written complex-valued network
(real and imaginary weight parts, modReLU) over generated oscillating signals (Adam, warm-up +
cosine, label smoothing, clipping); a pututu conch-horn blast classifier whose mini-batches are
drawn by importance sampling on the loss and reweighted by the inverse probability (SGD
momentum, ReduceLROnPlateau); a papermaker deckle pulp regressor (fp16 autocast + GradScaler,
Adadelta, two param groups, OneCycleLR, accumulation 2, clipping).
"""

from __future__ import annotations

import copy
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
    attach=True,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``weight(step)`` scales the
    backpropagated loss, ``after(step, loss)``. Stops after a non-finite loss once ``ctx.step``
    has seen it (``ctx`` None: a reference run, nothing attached or recorded)."""
    if ctx is not None and attach:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier and ctx is not None:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        w = weight(step) if weight is not None else 1.0
        (w * loss).backward()
        norms.append(grad_norm(model))
        if ctx is not None:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        if ctx is not None:
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


def _snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def _moved(model, prev) -> float:
    return math.sqrt(
        sum(
            float((p.detach() - q).pow(2).sum())
            for p, q in zip(model.parameters(), prev, strict=True)
        )
    )


# -- 1. adam second moment: a unit conversion applied to the backpropagated loss once ------------

BELL_ONSET = 100


@scenario(
    family="campanology_bell_rope_sally_timing_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=BELL_ONSET,
    note="Change-ringing tower bell-rope sally-catch timing regressor (SiLU MLP on bell weight, "
    "rope length, wheel diameter, stay angle, ringer height and draught, MSE, Adam lr 1e-3, "
    "beta2 0.999). At step 100 a logging hook that converts the loss from seconds^2 to "
    "milliseconds^2 is applied to the backpropagated loss instead of the logged one: one "
    "gradient about 1e6x the usual fills Adam's second moment, whose 0.999 decay keeps every "
    "later update tiny; the loss stalls where it was.",
)
def h525_bell_rope_loss_unit_once(ctx):
    gen = seeded(5251)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves, vs, prev = [], [], {}

    def before(step):
        prev["w"] = _snapshot(model)

    def after(step, loss):
        moves.append(_moved(model, prev["w"]))
        vs.append(float(opt.state[model.fc1.weight]["exp_avg_sq"].sqrt().median()))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 52510),
        220,
        F.mse_loss,
        before=before,
        after=after,
        weight=lambda s: 1e6 if s == BELL_ONSET else 1.0,
    )
    o = BELL_ONSET
    ctx.check("gradient over 1e3x the median at onset", norms[o] > 1e3 * _median(norms[o - 30 : o]))
    ctx.check("fc1 median sqrt(v) over 30x after onset", vs[o + 5] > 30 * vs[o - 1])
    ctx.check(
        "updates 70-115 steps after under 0.2x those before",
        _mean(moves[o + 70 : o + 115]) < 0.2 * _mean(moves[o - 40 : o]),
    )
    ctx.check("loss finite", _finite(losses))


# -- 2. softmax collapse: a temperature typed 0.002 for 2.0 --------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, 64, classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="begena_lyre_buzz_strap_temperature_gelu_classifier",
    optimizer="ASGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Begena lyre buzz-strap classifier (GELU MLP on string gauge, leather-strap thickness, "
    "pluck force, bridge height, soundbox moisture, 6 buzz-timbre grades, cross-entropy, ASGD "
    "lr 1e-2, clipping at norm 1). The config's softmax temperature is typed 0.002 for 2.0: logits are divided by "
    "0.002, the softmax saturates and most rows' target probability rounds to exactly 1.0.",
)
def h525_begena_temperature_typo(ctx):
    gen = seeded(5252)
    model = _TempNet(8, 6, 0.002)
    ref = _TempNet(8, 6, 2.0)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.ASGD(ref.parameters(), lr=1e-2)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 8, 6, 52520),
        200,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
    )
    _loop(
        None,
        ref,
        ref_opt,
        _grades(torch.Generator().manual_seed(5), 64, 8, 6, 52520),
        200,
        F.cross_entropy,
        clip=1.0,
    )
    px, py = next(_grades(torch.Generator().manual_seed(7), 512, 8, 6, 52520))
    with torch.no_grad():
        bad = collapsed_fraction(model(px), py)
        good = collapsed_fraction(ref(px), py)
    ctx.check("over half the rows' target probability exactly 1.0", bad > 0.5)
    ctx.check("under 5% at temperature 2.0", good < 0.05)
    ctx.check("loss finite", _finite(losses))


# -- 3. loss spike: a restart loads a stale checkpoint ------------------------------------------

KRAR_ONSET = 150


@scenario(
    family="krar_lyre_peg_tuning_stale_checkpoint_silu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=KRAR_ONSET,
    note="Krar lyre peg-tuning drift regressor (SiLU MLP on string tension, peg friction, "
    "humidity, temperature and play time, MSE, NAdam lr 2e-3). The job is preempted and the "
    "restart at step 150 picks the wrong checkpoint file (the one written at step 8): the loss "
    "jumps back to its early level, then the run recovers; no gradient burst, no bad data.",
)
def h525_krar_stale_checkpoint(ctx):
    gen = seeded(5253)
    model = _Net(5, 48, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    saved = {}

    def before(step):
        if step == 8:
            saved["w"] = copy.deepcopy(model.state_dict())
        if step == KRAR_ONSET:
            model.load_state_dict(saved["w"])

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 5, 52530), 260, F.mse_loss, before=before
    )
    o = KRAR_ONSET
    base = _median(losses[o - 30 : o])
    ctx.check("loss over 3x the recent median at onset", losses[o] > 3 * base)
    ctx.check("recovers to under 1.5x by the end", _mean(losses[-10:]) < 1.5 * base)
    ctx.check(
        "no gradient burst (under 10x the median)", norms[o] < 10 * _median(norms[o - 30 : o])
    )
    ctx.check("finite", _finite(losses))


# -- 4. data outlier: one shard logged in grams for kilograms -----------------------------------

MASENQO_ONSET = 120


@scenario(
    family="masenqo_bow_horsehair_rosin_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=MASENQO_ONSET,
    note="Masenqo bow-hair rosin-grip regressor (ReLU MLP on bow-hair tension, rosin age, "
    "string gauge, bowing speed, skin-top humidity and player pressure, Huber loss, RMSprop lr "
    "1e-3, clipping at norm 1). One shard from a new workshop at step 120 logs bow-hair tension "
    "in grams instead of kilograms (x1000): that batch's loss and gradient burst, clipping "
    "holds the update and the run recovers.",
)
def h525_masenqo_tension_grams_shard(ctx):
    gen = seeded(5254)
    model = _Net(6, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == MASENQO_ONSET:
            x = x.clone()
            x[:, 0] = 1000.0 * (x[:, 0] + 3.0)
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 52540),
        220,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    o = MASENQO_ONSET
    ctx.check("loss over 100x the median at onset", losses[o] > 100 * _median(losses[o - 30 : o]))
    ctx.check("gradient over 20x the median at onset", norms[o] > 20 * _median(norms[o - 30 : o]))
    ctx.check(
        "recovers to under 2x by the end", _mean(losses[-10:]) < 2 * _median(losses[o - 30 : o])
    )
    ctx.check("finite", _finite(losses))


# -- 5. nonfinite: sqrt of a stage below the gauge datum ----------------------------------------

SANDUR_ONSET = 100


class _Celerity(nn.Module):
    """Shallow-water wave speed sqrt(g * (stage - datum)) of each braid channel (no clamp)."""

    def forward(self, x):
        return torch.cat([torch.sqrt(9.81 * (x[:, :2] - 0.2)), x[:, 2:]], 1)


class _SandurNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.celerity = _Celerity()
        self.body = _Net(6, 48, 2, act=nn.SiLU)

    def forward(self, x):
        return self.body(self.celerity(x))


def _gaussian_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return 0.5 * (log_var + (y - mean) ** 2 / log_var.exp()).mean()


def _sandur_batches(gen, batch):
    base = _readings(gen, batch, 6, 52550)
    while True:
        x, y = next(base)
        x = x.clone()
        x[:, :2] = 0.6 + 0.3 * torch.sigmoid(x[:, :2])  # stages in metres, above the datum
        yield x, y


@scenario(
    family="sandur_outwash_braid_celerity_gaussian_nll_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("celerity",),
    diverges=SANDUR_ONSET,
    heldout=True,
    onset=SANDUR_ONSET,
    note="Sandur outwash-plain braid-migration net (a celerity layer sqrt(g (stage - datum)) on "
    "two channel gauges, then a SiLU MLP with meltwater discharge, sediment load, slope and "
    "temperature; Gaussian NLL of the migration rate, Adamax). The sqrt has no clamp; at step "
    "100 a channel runs dry and one gauge reads below its datum: sqrt of a negative is NaN and "
    "the loss is NaN at step 100.",
)
def h525_sandur_sqrt_below_datum(ctx):
    gen = seeded(5255)
    model = _SandurNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    nan_in_celerity = []

    def alter(step, x, y):
        if step == SANDUR_ONSET:
            x = x.clone()
            x[3, 0] = 0.05
            with torch.no_grad():
                nan_in_celerity.append(bool(torch.isnan(model.celerity(x)).any()))
        return x, y

    losses, _ = _loop(ctx, model, opt, _sandur_batches(gen, 64), 160, _gaussian_nll, alter=alter)
    ctx.check("trained before the dry gauge", _fell(losses[:SANDUR_ONSET], ratio=0.9))
    ctx.check("finite before the dry gauge", _finite(losses[:SANDUR_ONSET]))
    ctx.check("celerity produced NaN at onset", bool(nan_in_celerity) and nan_in_celerity[0])
    ctx.check("loss NaN at step 100", len(losses) == SANDUR_ONSET + 1 and math.isnan(losses[-1]))


# -- 6. amp overflow: pour temperature in millikelvin under fp16 autocast -----------------------

PEWTER_ONSET = 90


@scenario(
    family="pewterer_casting_pour_millikelvin_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=PEWTER_ONSET,
    heldout=True,
    onset=PEWTER_ONSET,
    note="Pewterer's casting-shrink regressor (GELU MLP on pour temperature, mould temperature, "
    "tin share, wall thickness and cooling time, MSE, fp16 autocast + GradScaler, AdamW). At "
    "step 90 a new pyrometer logs the pour temperature in millikelvin (about 5e5) instead of "
    "standardised kelvin: under autocast fc1's fp16 output overflows 65504 to inf and the loss "
    "is non-finite (the same batch in float32 is finite).",
)
def h525_pewterer_millikelvin_fp16(ctx):
    gen = seeded(5256)
    model = _Net(5, 64, 1, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 5, 52560)
    losses, fp32_ok, fc1_inf = [], [], []
    for step in range(160):
        x, y = next(data)
        if step >= PEWTER_ONSET:
            x = x.clone()
            x[:, 0] = 5.2e5 + 2.0e4 * x[:, 0]
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        if step == PEWTER_ONSET:
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
    ctx.check("trained before the new pyrometer", _fell(losses[:PEWTER_ONSET]))
    ctx.check("finite before the new pyrometer", _finite(losses[:PEWTER_ONSET]))
    ctx.check("fp16 fc1 output overflowed at onset", bool(fc1_inf) and fc1_inf[0])
    ctx.check("the same batch is finite in float32", bool(fp32_ok) and fp32_ok[0])
    ctx.check("loss non-finite at onset", len(losses) == PEWTER_ONSET + 1)


# -- 7. update ratio: fc1's param group lr typed 1e-9 -------------------------------------------


@scenario(
    family="paviour_sett_bedding_two_group_tanh_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Paviour's granite-sett bedding-settlement regressor (tanh MLP on sett size, joint "
    "width, mortar mix, sub-base compaction, traffic load and frost days, MSE, Adagrad in two "
    "param groups: fc1 and the rest). fc1's group lr is typed 1e-9 for 5e-2: the first layer "
    "never moves from its init while the layers above learn.",
)
def h525_paviour_fc1_lr_typo(ctx):
    gen = seeded(5257)
    model = _Net(6, 48, 1, act=nn.Tanh)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adagrad(
        [{"params": model.fc1.parameters(), "lr": 1e-9}, {"params": rest, "lr": 5e-2}]
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 52570), 200, F.mse_loss)
    ctx.check("fc1 moved under 1e-6 of its norm", _rel_change(model.fc1.weight, w1) < 1e-6)
    ctx.check("fc2 moved over 5%", _rel_change(model.fc2.weight, w2) > 0.05)
    ctx.check("the rest still trained (loss under 0.9x)", _fell(losses, ratio=0.9))


# -- 8. loss of plasticity: fc2 biases initialised at -3 ----------------------------------------


@scenario(
    family="sievemaker_mesh_tension_dead_relu_regressor",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Sievemaker's riddle-mesh tension regressor (ReLU MLP on wire gauge, mesh count, hoop "
    "diameter, weave angle and wetting, MSE, RAdam lr 2e-3). An init helper meant to set fc2's "
    "biases to -0.03 sets them to -3: the second layer's ReLUs are dead from the start, no "
    "gradient reaches them and the net stalls near predicting the mean.",
)
def h525_sievemaker_dead_fc2_bias(ctx):
    gen = seeded(5258)
    model = _Net(5, 48, 1)
    with torch.no_grad():
        model.fc2.bias.fill_(-3.0)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(9), 512, 5, 52580))
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 5, 52580), 200, F.mse_loss)
    with torch.no_grad():
        dead = dead_fraction(model.features(probe_x))
    ctx.check("over 80% of act2 units dead", dead > 0.8)
    ctx.check(
        "stalls above 0.6x the target variance", _mean(losses[-20:]) > 0.6 * float(probe_y.var())
    )
    ctx.check("finite", _finite(losses))


# -- 9. exploding gradients: a 16-layer tanh stack with init gain typed 4 -----------------------


class _TanhStack(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="sting_jet_cyclone_gust_deep_tanh_stack",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Sting-jet windstorm peak-gust regressor (16-layer tanh stack on pressure tendency, "
    "cloud-head temperature, jet height, dry-slot width, frontal angle and land distance, MSE, "
    "plain SGD lr 1e-3). The init gain is typed 4 for 5/3: each layer multiplies the backward "
    "signal, the first layer's gradient is far larger than the last's and the loss is erratic.",
)
def h525_sting_jet_init_gain_typo(ctx):
    gen = seeded(5259)
    model = _TanhStack(6, 48, 16, 4.0)
    torch.manual_seed(52590)
    good = _TanhStack(6, 48, 16, 5.0 / 3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    first, last = [], []

    data = _readings(gen, 64, 6, 52590)
    x0, y0 = next(_readings(torch.Generator().manual_seed(3), 256, 6, 52590))
    F.mse_loss(good(x0), y0).backward()
    good_first = float(good.layers[0].weight.grad.norm())
    ctx.attach(model, opt)
    losses = []
    for _ in range(150):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first.append(float(model.layers[0].weight.grad.norm()))
        last.append(float(model.layers[-1].weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("first layer's gradient over 50x the last's at start", first[0] > 50 * last[0])
    ctx.check("first gradient over 10x the gain-5/3 model's", first[0] > 10 * good_first)
    ctx.check(
        "first layer's gradient still over 20x the last's at the end", first[-1] > 20 * last[-1]
    )


# -- 10. gradient spike: the accumulation divisor written as a multiplier for one step ----------

BESOM_ONSET = 130
BESOM_ACCUM = 8


@scenario(
    family="broommaker_besom_binding_accumulation_relu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=BESOM_ONSET,
    note="Broommaker's besom-binding pull-out regressor (ReLU MLP on birch-twig count, binding "
    "wire gauge, handle taper, twig moisture and wrap turns, MSE, SGD Nesterov momentum 0.9, "
    "gradient accumulation over 8 micro-batches, clipping at norm 1). On the step the job "
    "resumes (130) a patched loop writes loss * accum instead of loss / accum: one gradient 64x "
    "the usual on an ordinary logged loss; clipping holds the update and the run carries on.",
)
def h525_besom_accum_multiplier(ctx):
    gen = seeded(52510)
    model = _Net(5, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen, 16, 5, 52600)
    losses, norms = [], []
    for step in range(200):
        total = 0.0
        for _ in range(BESOM_ACCUM):
            x, y = next(data)
            loss = F.mse_loss(model(x), y)
            scaled = loss * BESOM_ACCUM if step == BESOM_ONSET else loss / BESOM_ACCUM
            scaled.backward()
            total += float(loss.detach()) / BESOM_ACCUM
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    o = BESOM_ONSET
    ctx.check("gradient over 30x the median at onset", norms[o] > 30 * _median(norms[o - 30 : o]))
    ctx.check("logged loss ordinary at onset", losses[o] < 3 * _median(losses[o - 30 : o]))
    ctx.check("trained and finite", _fell(losses))


# -- control 1: a complex-valued network over generated oscillating signals ---------------------


class _ComplexLinear(nn.Module):
    """z -> W z + b with W = W_re + i W_im, on (real, imaginary) pairs."""

    def __init__(self, d_in, d_out):
        super().__init__()
        s = 1.0 / math.sqrt(2 * d_in)
        self.w_re = nn.Parameter(s * torch.randn(d_out, d_in))
        self.w_im = nn.Parameter(s * torch.randn(d_out, d_in))
        self.b_re = nn.Parameter(torch.zeros(d_out))
        self.b_im = nn.Parameter(torch.zeros(d_out))

    def forward(self, re, im):
        return (
            re @ self.w_re.T - im @ self.w_im.T + self.b_re,
            re @ self.w_im.T + im @ self.w_re.T + self.b_im,
        )


class _ModReLU(nn.Module):
    """relu(|z| + b) * z / |z|: the modulus is thresholded, the phase kept."""

    def __init__(self, d):
        super().__init__()
        self.bias = nn.Parameter(torch.full((d,), -0.1))

    def forward(self, re, im):
        mod = torch.sqrt(re * re + im * im + 1e-8)
        scale = F.relu(mod + self.bias) / mod
        return re * scale, im * scale


class _ComplexNet(nn.Module):
    def __init__(self, d_in, hidden, classes):
        super().__init__()
        self.cin = _ComplexLinear(d_in, hidden)
        self.act1 = _ModReLU(hidden)
        self.cmid = _ComplexLinear(hidden, hidden)
        self.act2 = _ModReLU(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, z):
        re, im = self.act1(*self.cin(z.real, z.imag))
        re, im = self.act2(*self.cmid(re, im))
        return self.head(torch.sqrt(re * re + im * im + 1e-8))


def _windrow_signals(gen, batch, length=32, classes=4):
    """Analytic (complex) surface-drift records of Langmuir cells: a damped rotating current
    whose rotation frequency band is the cell regime, random phase, amplitude and noise."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.08 + 0.09 * y.float() + 0.03 * torch.rand(batch, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        damp = 0.02 * torch.rand(batch, 1, generator=gen)
        arg = 2 * math.pi * freq[:, None] * t + phase
        z = amp * torch.exp(-damp * t) * torch.polar(torch.ones_like(arg), arg)
        noise = torch.complex(
            torch.randn(batch, length, generator=gen), torch.randn(batch, length, generator=gen)
        )
        yield z + 0.3 * noise, y


@scenario(
    family="langmuir_circulation_windrow_complex_valued_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Langmuir-circulation windrow regime classifier: a hand-written complex-valued network "
    "(complex linear layers with real and imaginary weight parts, modReLU on the modulus, the "
    "modulus fed to a real head) over generated complex surface-drift records (damped rotating "
    "currents, 4 frequency bands, random phase, noise). Adam lr 3e-3 with linear warm-up over "
    "20 steps then cosine, cross-entropy with label smoothing 0.1, clipping at norm 1.",
)
def h525_langmuir_complex_control(ctx):
    gen = seeded(52511)
    model = _ComplexNet(32, 32, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))
        ),
    )
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _windrow_signals(gen, 64),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    px, py = next(_windrow_signals(torch.Generator().manual_seed(11), 512))
    with torch.no_grad():
        acc = float((model(px).argmax(-1) == py).float().mean())
    ctx.check("loss fell under 0.6x and stayed finite", _fell(losses, ratio=0.6))
    ctx.check("held-out accuracy over 80%", acc > 0.8)


# -- control 2: importance sampling on the loss -------------------------------------------------


@scenario(
    family="pututu_conch_horn_blast_importance_sampled_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Pututu conch-horn blast-type classifier (ReLU MLP on embouchure pressure, shell "
    "length, lip opening, breath duration, spire cut, 6 blast types, 5% mislabelled, "
    "cross-entropy, SGD momentum 0.9, ReduceLROnPlateau on the loss). Mini-batches are drawn "
    "from a pool of 2048 recordings by importance sampling on each one's last seen loss (mixed "
    "half and half with uniform), each sample reweighted by 1 / (N p) so the loss stays "
    "unbiased.",
)
def h525_pututu_importance_sampling_control(ctx):
    gen = seeded(52512)
    n = 2048
    pool_x, pool_y = next(_grades(gen, n, 8, 6, 52620, spread=1.2))
    flip = torch.rand(n, generator=gen) < 0.05
    pool_y = torch.where(flip, torch.randint(0, 6, (n,), generator=gen), pool_y)
    model = _Net(8, 64, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    seen = torch.ones(n)
    ctx.attach(model, opt)
    losses, max_w = [], []
    for _ in range(250):
        p = 0.5 * seen / seen.sum() + 0.5 / n
        idx = torch.multinomial(p, 64, replacement=True, generator=gen)
        w = 1.0 / (n * p[idx])
        x, y = pool_x[idx], pool_y[idx]
        ctx.targets(y)
        per = F.cross_entropy(model(x), y, reduction="none")
        loss = (w * per).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step(float(loss.detach()))
        seen[idx] = per.detach() + 1e-3
        losses.append(float(loss.detach()))
        max_w.append(float(w.max()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        full = float(F.cross_entropy(model(pool_x), pool_y))
    ctx.check("reweighted loss fell under 0.6x and stayed finite", _fell(losses, ratio=0.6))
    ctx.check("pool loss under 0.8", full < 0.8)
    ctx.check("importance weights bounded (under 2.01)", max(max_w) < 2.01)


# -- control 3: fp16 autocast + GradScaler, Adadelta, two groups, OneCycleLR, accumulation -------


@scenario(
    family="papermaker_deckle_pulp_fp16_adadelta_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Papermaker's hand-mould sheet-weight regressor (SiLU MLP on pulp consistency, "
    "deckle depth, dip angle, couching pressure, fibre length and vat temperature, MSE with "
    "noisy readings, fp16 autocast + GradScaler, Adadelta in two param groups (body lr 1.0, "
    "head 0.5), OneCycleLR, gradient accumulation over 2, clipping at norm 1).",
)
def h525_papermaker_fp16_control(ctx):
    gen = seeded(52513)
    model = _Net(6, 64, 1, act=nn.SiLU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.Adadelta(
        [{"params": body, "lr": 1.0}, {"params": model.head.parameters(), "lr": 0.5}]
    )
    steps = 180
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[1.0, 0.5], total_steps=steps, cycle_momentum=False
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 32, 6, 52630, noise=0.2)
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(data)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.mse_loss(out.float(), y)
            scaler.scale(loss / 2).backward()
            total += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell under 0.7x and stayed finite", _fell(losses))
    ctx.check("scaler scale stayed finite", _finite(ctx.scales))
