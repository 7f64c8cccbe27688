"""Held-out set 513 (``h513_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a tamale-steaming doneness neural additive model whose per-feature param group for masa
moisture has its lr typed 1e-9 (Adamax); a crossbow string-serving wear classifier trained on
separable grades with no weight decay and hard labels (head logits grow, Adam); a maple-sap
evaporator sugar regressor under fp16 autocast + GradScaler fed sugar in ppm instead of Brix
(fp16 overflow, AdamW); a chimney-sweep flue-soot regressor whose loss weight is looked up from
the wrong curriculum row for one step (SGD Nesterov); a peat-turf drying net whose batch range
norm divides by max - min with no epsilon (0/0 on a stuck-sensor batch, NAdam); a farrier
shoe-nail pitch Huber regressor fed one shard in millimetres instead of metres (RMSprop); a
bell-rope sally hand-written Elman RNN with a recurrent init gain typed 3 (gradients grow
through time, SGD momentum); a crêpe-flip height ReLU regressor with Adagrad lr typed 0.5 for 0.005 (ReLUs die);
a sumo ring salt-throw classifier dividing logits by a temperature typed 0.002 (RAdam); a
snow-cornice overhang regressor whose target calibration drifts (slow climb, plain SGD).

Controls: a hay-windrow moisture regressor standardised with statistics recomputed every epoch
from a drifting stream (AdamW, OneCycleLR, clipping); a cuckoo-clock bellows pitch classifier
(Adam, warm-up + cosine, label smoothing, clipping); a cooper's hoop-drive conv1d regressor
(SGD momentum, two param groups, ReduceLROnPlateau, accumulation 2, Huber).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    accumulate=1,
):
    """The file's loop: ``before(step)``, ``alter(step, x, y)``, ``weight(step)`` multiplies the
    backpropagated loss, ``after(step, loss)`` after the optimizer step. Stops after a
    non-finite loss once ``ctx.step`` has seen it."""
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
            if classifier:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            w = weight(step) if weight is not None else 1.0
            (w * loss / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(shown)
        losses.append(shown)
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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


# -- 1. update ratio: a neural additive model's per-feature group lr typed 1e-9 --------------------


class _AdditiveNet(nn.Module):
    """A neural additive model: one small MLP per input feature, their outputs summed into a
    logit."""

    def __init__(self, n_features, hidden=16):
        super().__init__()
        self.shapes = nn.ModuleList(
            nn.Sequential(
                nn.Linear(1, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, 1),
            )
            for _ in range(n_features)
        )
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        parts = [f(x[:, i : i + 1]) for i, f in enumerate(self.shapes)]
        return torch.cat(parts, 1).sum(1) + self.bias


def _tamale_table(gen, batch):
    """Tabular tamale batches: masa moisture, steam minutes, husk layers, pot fill, altitude,
    filling fat; done or not from an additive rule."""
    while True:
        x = torch.randn(batch, 6, generator=gen)
        score = (
            1.5 * torch.tanh(2 * x[:, 0])
            + x[:, 1]
            - 0.5 * x[:, 2] ** 2
            + 0.6 * torch.sin(2 * x[:, 3])
            - 0.4 * x[:, 4]
            + 0.3 * x[:, 5]
        )
        y = (score + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield x, y


@scenario(
    family="tamale_steam_doneness_nam_classifier",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("shapes.0",),
    diverges=None,
    heldout=True,
    note="Tamale-steaming doneness classifier, a hand-written neural additive model (one small "
    "ReLU MLP per tabular feature: masa moisture, steam minutes, husk layers, pot fill, altitude, "
    "filling fat; outputs summed into a logit, BCE). It uses one Adamax param group per feature "
    "net at lr 3e-3; the group for masa moisture (shapes.0), the strongest feature, has its lr "
    "typed 3e-9: its updates are about a millionth of the others' and it stays at its init.",
)
def h513_tamale_steam_masa_group_lr_typo(ctx):
    gen = seeded(5131)
    model = _AdditiveNet(6)
    groups = [
        {"params": f.parameters(), "lr": 3e-9 if i == 0 else 3e-3}
        for i, f in enumerate(model.shapes)
    ]
    groups.append({"params": [model.bias], "lr": 3e-3})
    opt = torch.optim.Adamax(groups)
    start = [[p.detach().clone() for p in f.parameters()] for f in model.shapes]
    losses, _ = _train(
        ctx, model, opt, _tamale_table(gen, 128), 200, F.binary_cross_entropy_with_logits
    )
    moved = [
        max(_rel_change(p, s0) for p, s0 in zip(f.parameters(), s, strict=True))
        for f, s in zip(model.shapes, start, strict=True)
    ]
    frozen, others = moved[0], moved[1:]
    ctx.check("masa net moved under 1e-5", frozen < 1e-5)
    ctx.check("other feature nets moved over 1e-2", min(others) > 1e-2)
    ctx.check("the rest still trained", _fell(losses, ratio=0.9))


# -- 2. output logit divergence: hard labels, separable grades, no weight decay -------------------


@scenario(
    family="crossbow_string_serving_wear_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Crossbow string-serving wear classifier (ReLU MLP on serving thread diameter, wax "
    "film, centre-serving slip, shot count and cam timing features, 4 wear grades, cross-entropy, "
    "Adam lr 3e-3). The grades are perfectly separable and the config has weight_decay typed 0 "
    "for 1e-2 and label_smoothing dropped: nothing holds the head and its logits keep growing "
    "to push the already-correct probabilities towards 1.",
)
def h513_crossbow_serving_logits_grow(ctx):
    gen = seeded(5132)
    model = _Net(10, 48, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=0.0)
    probe = next(_grades(torch.Generator().manual_seed(1), 256, 10, 4, 51320, spread=0.3))[0]
    peaks = []

    def after(step, loss):
        with torch.no_grad():
            peaks.append(float(model(probe).abs().max()))

    with torch.no_grad():
        first = float(model(probe).abs().max())
    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 4, 51320, spread=0.3),
        250,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("head logits grew over 20x", peaks[-1] > 20 * first)
    ctx.check("still growing over the last 100 steps", peaks[-1] > 1.1 * peaks[150])
    ctx.check("finite", _finite(losses))


# -- 3. amp overflow: sugar fed in ppm instead of Brix under fp16 autocast ------------------------

MAPLE_ONSET = 90


@scenario(
    family="maple_sap_boil_sugar_fp16_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=MAPLE_ONSET,
    heldout=True,
    onset=MAPLE_ONSET,
    note="Maple-sap evaporator sugar regressor (ReLU MLP on sap sugar, flue temperature, pan "
    "depth, draw-off interval and boil rate, MSE, fp16 autocast + GradScaler, AdamW). At step 90 "
    "the draw-off refractometer is swapped for a unit that reports sugar in ppm instead of "
    "degrees Brix (syrup near 6.6e5 ppm): under autocast the reading and the first layer's fp16 "
    "output overflow 65504 to inf and the loss is inf/NaN (the same batch in float32 is finite).",
)
def h513_maple_sap_ppm_fp16_overflow(ctx):
    gen = seeded(5133)
    model = _Net(5, 64, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 5, 51330)
    losses, fp32_ok, fc1_inf = [], [], []
    for step in range(160):
        x, y = next(data)
        if step >= MAPLE_ONSET:
            x = x.clone()
            x[:, 0] = 6.6e5 + 2.0e4 * x[:, 0]  # ppm at syrup density, the new unit's reading
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        if step == MAPLE_ONSET:
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
    ctx.check("trained before the switch", _fell(losses[:MAPLE_ONSET]))
    ctx.check("finite before the switch", _finite(losses[:MAPLE_ONSET]))
    ctx.check("fp16 fc1 output overflowed at onset", bool(fc1_inf) and fc1_inf[0])
    ctx.check("the same batch is finite in float32", bool(fp32_ok) and fp32_ok[0])
    ctx.check("loss non-finite at onset", len(losses) == MAPLE_ONSET + 1)


# -- 4. gradient spike: a curriculum loss weight read from the wrong row for one step ------------

SWEEP_ONSET = 140


@scenario(
    family="chimney_sweep_brush_flue_soot_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SWEEP_ONSET,
    note="Chimney-sweep flue-soot regressor (ReLU MLP on flue height, bends, fuel type, burn "
    "hours and draught features, MSE, SGD Nesterov momentum 0.9, clipping at norm 1). At the "
    "curriculum stage switch (step 140) the loss weight is read from the wrong row of the weight "
    "table (100 instead of 1) for that one step: one gradient about 100x the usual, clipping "
    "holds the update and the run carries on.",
)
def h513_chimney_sweep_loss_weight_row(ctx):
    gen = seeded(5134)
    model = _Net(8, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 51340),
        220,
        F.mse_loss,
        weight=lambda s: 100.0 if s == SWEEP_ONSET else 1.0,
        clip=1.0,
    )
    base = _median(norms[SWEEP_ONSET - 30 : SWEEP_ONSET])
    ctx.check("gradient over 30x the median at onset", norms[SWEEP_ONSET] > 30 * base)
    ctx.check("logged loss ordinary at onset", losses[SWEEP_ONSET] < 3 * _median(losses[100:140]))
    ctx.check("trained and finite", _fell(losses))


# -- 5. nonfinite: range norm with no epsilon meets a stuck sensor ---------------------------------

PEAT_ONSET = 110


class _RangeNorm(nn.Module):
    """Scales each feature to [0, 1] by the batch min and max (no epsilon)."""

    def forward(self, x):
        lo = x.min(0, keepdim=True).values
        hi = x.max(0, keepdim=True).values
        return (x - lo) / (hi - lo)


class _PeatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = _RangeNorm()
        self.body = _Net(6, 48, 1)
        self.nan_out = False

    def forward(self, x):
        z = self.norm(x)
        self.nan_out = not bool(torch.isfinite(z).all())
        return self.body(z)


@scenario(
    family="peat_turf_stack_drying_range_norm_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=PEAT_ONSET,
    heldout=True,
    onset=PEAT_ONSET,
    note="Peat-turf stack drying-time net (a batch range-norm layer, then a ReLU MLP on sod "
    "thickness, stack height, wind, humidity, sun hours and ground wetness, MSE, NAdam). The "
    "range norm divides by max - min with no epsilon; at step 110 a shard from a stuck "
    "anemometer has the same wind reading in every row: 0/0 gives NaN in the norm's output and "
    "the loss is NaN.",
)
def h513_peat_turf_range_norm_zero_div(ctx):
    gen = seeded(5135)
    model = _PeatNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    flags = []

    def alter(step, x, y):
        if step == PEAT_ONSET:
            x = x.clone()
            x[:, 2] = 0.7
        return x, y

    def after(step, loss):
        flags.append(model.nan_out)

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 51350), 180, F.mse_loss, alter=alter, after=after
    )
    ctx.check("finite and trained before onset", _fell(losses[:PEAT_ONSET]))
    ctx.check("norm output non-finite at onset", len(flags) > PEAT_ONSET and flags[PEAT_ONSET])
    ctx.check("norm output finite before", not any(flags[:PEAT_ONSET]))
    ctx.check("loss NaN at onset", len(losses) == PEAT_ONSET + 1 and math.isnan(losses[-1]))


# -- 6. data outlier: one shard in millimetres ---------------------------------------------------

FARRIER_ONSET = 120


@scenario(
    family="farrier_shoe_nail_pitch_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=FARRIER_ONSET,
    note="Farrier shoe-nail pitch regressor (ReLU MLP on hoof-wall thickness, nail gauge, "
    "shoe web width, hoof angle and toe length, Huber loss with delta 1, RMSprop, clipping at 5). "
    "One shard (step 120) was exported with the hoof features in millimetres instead of metres "
    "(x1000): the loss and gradient jump for that batch, then the run recovers.",
)
def h513_farrier_nail_mm_shard(ctx):
    gen = seeded(5136)
    model = _Net(7, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        return (x * 1000.0, y) if step == FARRIER_ONSET else (x, y)

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 7, 51360),
        220,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        alter=alter,
        clip=5.0,
    )
    base = _median(losses[FARRIER_ONSET - 20 : FARRIER_ONSET])
    ctx.check("loss over 100x at onset", losses[FARRIER_ONSET] > 100 * base)
    ctx.check(
        "gradient over 20x at onset",
        norms[FARRIER_ONSET] > 20 * _median(norms[FARRIER_ONSET - 20 : FARRIER_ONSET]),
    )
    ctx.check("recovers", _mean(losses[-10:]) < 3 * base)
    ctx.check("finite", _finite(losses))


# -- 7. exploding gradients: a recurrent init gain typo ------------------------------------------


class _Elman(nn.Module):
    """A hand-written Elman RNN over a rope-pull trace; the state after the last frame feeds
    the head."""

    def __init__(self, d_in=3, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _pull_traces(gen, batch, seed, frames=24):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    decay = 0.85 ** torch.arange(frames - 1, -1, -1).float()
    while True:
        x = torch.randn(batch, frames, 3, generator=gen)
        y = torch.tanh((x @ w * decay).sum(1) / 2) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="sally_rope_bell_pull_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Bell-rope sally pull regressor, a hand-written Elman RNN (tanh) over 24 frames of "
    "rope tension, sally height and wheel angle, predicting the bell's swing time; MSE, SGD "
    "momentum 0.9 at lr 0.02. The recurrent weight's orthogonal init gain is typed 3.0 for 1.0: "
    "dL/dh at the first frame is over 100x that at the last, the state saturates and the run "
    "never gets much below the mean predictor (the same net at gain 1 trains).",
)
def h513_sally_rope_recurrent_gain_typo(ctx):
    gen = seeded(5137)
    model = _Elman(gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    data = _pull_traces(gen, 64, 51370)
    losses, ratios = [], []
    for _step in range(150):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first = float(model.states[0].grad.norm())
        last = float(model.states[-1].grad.norm())
        ratios.append(first / max(last, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    var = float(next(_pull_traces(torch.Generator().manual_seed(5), 2048, 51370))[1].var())
    ctx.check("dL/dh at the first frame over 100x the last's at step 0", ratios[0] > 100)
    ctx.check("never gets under 0.7x the target variance", _mean(losses[-20:]) > 0.7 * var)
    ctx.check("finite", _finite(losses))


# -- 8. loss of plasticity: Adagrad lr typed 0.5 for 0.005 kills the ReLUs -----------------------


@scenario(
    family="crepe_flip_height_relu_regressor",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Crêpe-flip height regressor (ReLU MLP on pan mass, wrist snap, batter weight, butter "
    "film and pan tilt, MSE, Adagrad). The config's lr is typed 0.5 for 0.005: Adagrad's first "
    "updates move every weight and bias by about 0.5, most second-layer ReLUs are pushed negative on "
    "every input and never come back; the run stalls near the target's variance.",
)
def h513_crepe_flip_adagrad_lr_typo(ctx):
    gen = seeded(5138)
    model = _Net(6, 64, 1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.5)
    probe = next(_readings(torch.Generator().manual_seed(2), 512, 6, 51380))[0]
    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe))
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 51380), 200, F.mse_loss)
    with torch.no_grad():
        dead1 = dead_fraction(model.features(probe))
        var = float(next(_readings(torch.Generator().manual_seed(3), 2048, 6, 51380))[1].var())
    ctx.check("under 10% dead at init", dead0 < 0.1)
    ctx.check("over 60% of the units dead at the end", dead1 > 0.6)
    ctx.check("stalls near the target variance", _mean(losses[-20:]) > 0.5 * var)
    ctx.check("finite", _finite(losses))


# -- 9. softmax collapse: a temperature typed 0.002 -----------------------------------------------


class _SaltNet(_Net):
    def __init__(self, tau):
        super().__init__(9, 48, 5, act=nn.GELU)
        self.tau = tau

    def forward(self, x):
        return self.head(self.features(x)) / self.tau


@scenario(
    family="sumo_ring_salt_throw_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sumo ring salt-throw style classifier (GELU MLP on throw arc, grain spread, release "
    "height, stance width and wrist angle features, 5 rikishi styles, cross-entropy, RAdam). "
    "The logits are divided by a temperature typed 0.002 for 2.0: the softmax saturates, over "
    "half the rows' target probability rounds to exactly 1.0 in float32.",
)
def h513_sumo_salt_temperature_typo(ctx):
    gen = seeded(5139)
    model = _SaltNet(0.002)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(4), 512, 9, 5, 51390))
    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 9, 5, 51390), 150, F.cross_entropy, classifier=True
    )
    with torch.no_grad():
        frac = collapsed_fraction(model(probe_x), probe_y)
    ctx.check("over half the rows collapsed to exactly 1.0", frac > 0.5)
    ctx.check("finite", _finite(losses))


# -- 10. loss divergence: the target calibration drifts -------------------------------------------


@scenario(
    family="snow_cornice_overhang_drift_target_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Snow-cornice overhang regressor (tanh MLP on wind speed, wind direction, snowfall, "
    "temperature and ridge angle, MSE, plain SGD lr 0.005). The labelling script adds a "
    "cumulative sensor-drift correction with the sign flipped, so the overhang targets drift "
    "further every step: once the fit is made the loss climbs slowly and keeps climbing. No NaN, "
    "no spike.",
)
def h513_snow_cornice_drifting_target(ctx):
    gen = seeded(51310)
    model = _Net(5, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.005)

    def alter(step, x, y):
        return x, y * (1.0 + 0.03 * step) + 0.03 * step

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 5, 51400), 240, F.mse_loss, alter=alter
    )
    best = min(_mean(losses[i : i + 10]) for i in range(0, 100, 10))
    ctx.check("loss climbs over 3x its early best", _mean(losses[-10:]) > 3 * best)
    ctx.check("climbs through the last third", _mean(losses[-10:]) > _mean(losses[160:170]))
    ctx.check(
        "no spike: no step over 3x the one before",
        all(b < 3 * a for a, b in zip(losses[20:], losses[21:], strict=False)),
    )
    ctx.check("finite", _finite(losses))


# -- controls -------------------------------------------------------------------------------------


def _drifting_stream(gen, batch, seed, per_epoch=20):
    """Readings whose raw mean and scale shift a little each epoch; standardised with
    statistics recomputed at the start of every epoch from that epoch's first batches."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    epoch = 0
    while True:
        shift = 0.15 * epoch
        scale = 1.0 + 0.05 * epoch
        raw = [shift + scale * torch.randn(batch, 6, generator=gen) for _ in range(per_epoch)]
        stacked = torch.cat(raw[:4])
        mu, sd = stacked.mean(0), stacked.std(0)
        for r in raw:
            z = (r - mu) / sd
            true = (r - shift) / scale
            y = torch.tanh(true @ w / 2) + 0.05 * torch.randn(batch, generator=gen)
            yield z, y
        epoch += 1


@scenario(
    family="hay_windrow_moisture_epoch_standardised_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hay-windrow moisture regressor (SiLU MLP on dew, sun, windrow width, tedding count, "
    "wind and clover share, MSE, AdamW, OneCycleLR, clipping at 1). The field-sensor stream "
    "drifts: the inputs are standardised with mean and std recomputed at the start of every "
    "epoch from that epoch's first batches, so the inputs shift a little at each epoch. Control.",
)
def h513_hay_windrow_epoch_standardised(ctx):
    gen = seeded(51311)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=200)
    losses, _ = _train(
        ctx, model, opt, _drifting_stream(gen, 64, 51311), 200, F.mse_loss, clip=1.0, sched=sched
    )
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))


@scenario(
    family="cuckoo_clock_bellows_pitch_gelu_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cuckoo-clock bellows pitch classifier (GELU MLP on bellows volume, pipe length, "
    "weight drop, leather stiffness and flap timing, 6 pitch grades with noisy overlapping "
    "readings, cross-entropy with label smoothing 0.1, Adam with linear warm-up 20 steps then "
    "cosine decay, clipping at 1). Control.",
)
def h513_cuckoo_bellows_warmup_cosine(ctx):
    gen = seeded(51312)
    model = _Net(10, 64, 6, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def lam(s):
        return (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / 180))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 48, 10, 6, 51312, spread=1.2),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))


class _HoopConv(nn.Module):
    """A 1-D conv net over a hoop-drive hammer trace (16 blows x 2 channels)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 3, padding=1)
        self.conv2 = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(h.mean(-1)).squeeze(-1)


def _hoop_traces(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, generator=g)
    while True:
        x = torch.randn(batch, 2, 16, generator=gen)
        drive = (a * x[:, 0] + b * x[:, 1]).mean(-1) * 3
        snag = (x[:, 0, 1:] * x[:, 1, :-1]).mean(-1) * 2
        y = torch.tanh(drive) + 0.5 * snag + 0.1 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="cooper_hoop_drive_conv1d_regressor",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cooper's hoop-drive seat regressor (1-D conv net over a trace of 16 hammer blows, "
    "blow force and hoop travel channels, Huber loss, SGD momentum 0.9, two param groups: convs "
    "at 0.03, head at 0.01, ReduceLROnPlateau, accumulation 2, clipping at 2). Control.",
)
def h513_cooper_hoop_plateau_accum(ctx):
    gen = seeded(51313)
    model = _HoopConv()
    opt = torch.optim.SGD(
        [
            {"params": list(model.conv1.parameters()) + list(model.conv2.parameters()), "lr": 0.03},
            {"params": model.head.parameters(), "lr": 0.01},
        ],
        momentum=0.9,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _hoop_traces(gen, 32, 51313),
        200,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        clip=2.0,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check("finite", _finite(losses))
