"""Held-out set 518 (``h518_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a kettle-drum head-tension regressor whose param group for the second layer has its lr
typed 2e-10 (Adam); a hurling sliotar strike-zone classifier on separable zones with no weight
decay and hard labels (head logits grow, Adamax); a whetstone grit-progression regressor whose
gradient-accumulation divisor is applied as a multiplier for one step (SGD Nesterov); a
rowing-ergometer split-pace Huber regressor fed one shard with pace in centiseconds (RMSprop);
a fog-horn audibility regressor whose log-power layer has no clamp and meets a dead microphone
(log 0, Adagrad); a pottery-wheel wall-thickness deep ReLU net with an init gain typed 3
(gradients grow through depth, plain SGD); a mandolin string-intonation regressor whose
hand-written weight decay has its sign flipped (slow climb, SGD momentum); a glass-harmonica
rim-pitch classifier dividing logits by a temperature typed 0.001 (NAdam); a sled-dog team pace
ReLU regressor with Adam lr typed 0.5 for 5e-4 (ReLUs die); a pipe-organ wind-chest regressor
under fp16 autocast + GradScaler fed raw ADC counts instead of kilopascals (AdamW).

Controls: a dragonfly wingbeat-sequence hand-written gMLP (spatial gating unit) with weight
decay warmed up linearly from 0 to 0.1 over the first half of training (AdamW, OneCycleLR,
clipping); a kettle-corn popping conv1d classifier (SGD momentum, ReduceLROnPlateau,
accumulation 2, label smoothing); a tuba valve-slide Huber regressor under fp16 autocast +
GradScaler (RAdam, warm-up + cosine, clipping, noisy batches).
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


# -- 1. update ratio: the second layer's param group lr typed 2e-10 ------------------------------


@scenario(
    family="kettle_drum_head_tension_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Kettle-drum (timpani) head-tension regressor (ReLU MLP on lug torques, head "
    "diameter, pedal position, bowl depth and room humidity, MSE, Adam with three param groups: "
    "fc1 and head at 2e-3, fc2 meant to be 2e-3 but typed 2e-10). fc2's updates are about "
    "1e-7 of its weights per step: the layer stays at its init while the rest trains around it.",
)
def h518_kettle_drum_fc2_group_lr_typo(ctx):
    gen = seeded(5181)
    model = _Net(9, 48, 1)
    opt = torch.optim.Adam(
        [
            {"params": model.fc1.parameters(), "lr": 2e-3},
            {"params": model.fc2.parameters(), "lr": 2e-10},
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    w2, w1 = model.fc2.weight.detach().clone(), model.fc1.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 9, 51810), 200, F.mse_loss)
    ctx.check("fc2 moved under 1e-6", _rel_change(model.fc2.weight, w2) < 1e-6)
    ctx.check("fc1 moved over 1e-2", _rel_change(model.fc1.weight, w1) > 1e-2)
    ctx.check("the rest still trained", _fell(losses, ratio=0.8))


# -- 2. output logit divergence: separable zones, hard labels, no weight decay -------------------


@scenario(
    family="hurling_sliotar_strike_zone_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Hurling sliotar strike-zone classifier (ReLU MLP on hurley swing speed, bas angle, "
    "ball spin, contact height and wrist roll features, 5 strike zones, cross-entropy, Adamax lr "
    "4e-3). The zones are perfectly separable and the config has weight_decay typed 0 and "
    "label_smoothing dropped: nothing holds the head, and its logits keep growing to push "
    "already-correct probabilities towards 1.",
)
def h518_hurling_sliotar_logits_grow(ctx):
    gen = seeded(5182)
    model = _Net(12, 48, 5)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3, weight_decay=0.0)
    probe = next(_grades(torch.Generator().manual_seed(2), 256, 12, 5, 51820, spread=0.3))[0]
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
        _grades(gen, 64, 12, 5, 51820, spread=0.3),
        260,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("head logits grew over 20x", peaks[-1] > 20 * first)
    ctx.check("still growing over the last 160 steps", peaks[-1] > 1.05 * peaks[100])
    ctx.check("finite", _finite(losses))


# -- 3. gradient spike: accumulation divisor applied as a multiplier for one step ---------------

WHET_ONSET = 130


@scenario(
    family="whetstone_grit_progression_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=WHET_ONSET,
    note="Whetstone grit-progression regressor (tanh MLP on grit size, stone flatness, water "
    "soak, blade steel hardness and edge angle, MSE, SGD Nesterov momentum 0.9, gradient "
    "accumulation over 4 micro-batches, clipping at 1). At step 130, when the accumulation "
    "count is changed mid-run, one step multiplies each micro-batch loss by the count squared "
    "instead of dividing by it (64x the intended weight): one gradient far above the usual, "
    "while the logged loss is ordinary; clipping holds the update and the run carries on.",
)
def h518_whetstone_accum_multiplier_bug(ctx):
    gen = seeded(5183)
    model = _Net(7, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 7, 51830),
        200,
        F.mse_loss,
        weight=lambda s: 64.0 if s == WHET_ONSET else 1.0,
        clip=1.0,
        accumulate=4,
    )
    base = _median(norms[WHET_ONSET - 30 : WHET_ONSET])
    ctx.check("gradient over 30x the median at onset", norms[WHET_ONSET] > 30 * base)
    ctx.check("logged loss ordinary at onset", losses[WHET_ONSET] < 3 * _median(losses[90:130]))
    ctx.check("trained and finite", _fell(losses))


# -- 4. data outlier: one shard with pace in centiseconds ---------------------------------------

ERG_ONSET = 110


@scenario(
    family="rowing_ergometer_split_pace_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ERG_ONSET,
    note="Rowing-ergometer 500 m split regressor (SiLU MLP on stroke rate, drive length, "
    "drag factor, catch angle and heart rate, Huber loss with delta 1, RMSprop lr 1e-3, "
    "clipping at 5). One shard (step 110) came from a monitor export that writes the split "
    "targets and stroke features in centiseconds (x100): the loss and gradient jump for that "
    "batch, then the run recovers.",
)
def h518_rowing_erg_centisecond_shard(ctx):
    gen = seeded(5184)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        return (x * 100.0, y * 100.0) if step == ERG_ONSET else (x, y)

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 51840),
        200,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        alter=alter,
        clip=5.0,
    )
    base = _median(losses[ERG_ONSET - 20 : ERG_ONSET])
    ctx.check("loss over 100x at onset", losses[ERG_ONSET] > 100 * base)
    ctx.check(
        "gradient over 20x at onset",
        norms[ERG_ONSET] > 20 * _median(norms[ERG_ONSET - 20 : ERG_ONSET]),
    )
    ctx.check("recovers", _mean(losses[-10:]) < 3 * base)
    ctx.check("finite", _finite(losses))


# -- 5. nonfinite: a log-power layer with no clamp meets a dead microphone -----------------------

FOG_ONSET = 120


class _LogPower(nn.Module):
    """Turns microphone power readings into decibel-like features: log of the power, no clamp."""

    def forward(self, x):
        return torch.log(x)


class _FogHornNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logpower = _LogPower()
        self.body = _Net(6, 48, 1)
        self.bad = False

    def forward(self, x):
        z = self.logpower(x)
        self.bad = not bool(torch.isfinite(z).all())
        return self.body(z)


@scenario(
    family="fog_horn_audibility_logpower_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logpower",),
    diverges=FOG_ONSET,
    heldout=True,
    onset=FOG_ONSET,
    note="Lighthouse fog-horn audibility-range regressor (a log-power layer over six buoy "
    "microphone power readings, then a ReLU MLP, MSE, Adagrad lr 0.05). The log has no clamp "
    "or epsilon; at step 120 one buoy's microphone is dead and reports power exactly 0: log 0 "
    "is -inf, the MLP turns it into NaN and the loss is NaN.",
)
def h518_fog_horn_log_zero_power(ctx):
    gen = seeded(5185)
    model = _FogHornNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    flags = []
    base = _readings(gen, 64, 6, 51850)

    def powers():
        while True:
            z, y = next(base)
            yield torch.exp(0.5 * z), y

    def alter(step, x, y):
        if step == FOG_ONSET:
            x = x.clone()
            x[:, 3] = 0.0
        return x, y

    def after(step, loss):
        flags.append(model.bad)

    losses, _ = _train(ctx, model, opt, powers(), 200, F.mse_loss, alter=alter, after=after)
    ctx.check("trained before the dead microphone", _fell(losses[:FOG_ONSET]))
    ctx.check("log-power finite before", not any(flags[:FOG_ONSET]))
    ctx.check("log-power non-finite at onset", len(flags) > FOG_ONSET and flags[FOG_ONSET])
    ctx.check("loss NaN at onset", len(losses) == FOG_ONSET + 1 and math.isnan(losses[-1]))


# -- 6. exploding gradients: an init gain typed 3 through a deep ReLU stack ----------------------


class _DeepWheel(nn.Module):
    def __init__(self, d_in=6, width=32, depth=20, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="pottery_wheel_wall_thickness_deep_relu_net",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Pottery-wheel thrown-wall thickness regressor (a 20-layer tanh stack on wheel speed, "
    "clay moisture, pull count, rib pressure, cone height and hand spacing, MSE, plain SGD lr "
    "1e-3, clipping at 1). The init helper was meant to use the tanh gain 5/3 but has gain "
    "typed 3: the stack sits in the chaotic regime, each layer multiplies the backward signal, "
    "and the first layer's gradient is tens of times the last layer's; clipping keeps the run "
    "finite.",
)
def h518_pottery_wheel_init_gain_typo(ctx):
    gen = seeded(5186)
    model = _DeepWheel(gain=3.0)
    meant = _DeepWheel(gain=5 / 3)
    px, py = next(_readings(torch.Generator().manual_seed(6), 128, 6, 51860))
    first = []
    for net in (model, meant):
        F.mse_loss(net(px), py).backward()
        first.append(float(net.layers[0].weight.grad.norm()))
        net.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios = []

    def after(step, loss):
        g = [float(lin.weight.grad.norm()) for lin in model.layers]
        ratios.append(g[0] / g[-1])

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 6, 51860), 150, F.mse_loss, clip=1.0, after=after
    )
    ctx.check("first layer's gradient over 50x the last's at start", ratios[0] > 50)
    ctx.check("over 20x through the first 30 steps", min(ratios[:30]) > 20)
    ctx.check("first layer's gradient over 10x the gain-5/3 init's", first[0] > 10 * first[1])
    ctx.check("finite", _finite(losses))


# -- 7. loss divergence: a hand-written weight decay with its sign flipped -----------------------


@scenario(
    family="mandolin_string_intonation_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Mandolin string-intonation regressor (tanh MLP on saddle offset, string gauge, "
    "action height, fret crown wear and tuning, MSE, SGD momentum 0.9 lr 5e-3). Weight decay is "
    "applied by hand after each step as p -= lr * wd * p (wd 4, a strong decay against "
    "overfitting), but the refactor wrote p += lr * wd * p: the weights inflate 2% every step "
    "and the loss, after an early fall, climbs slowly with no spike.",
)
def h518_mandolin_weight_decay_sign(ctx):
    gen = seeded(5187)
    model = _Net(6, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=5e-3 * 4.0)

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 51870), 280, F.mse_loss, after=after)
    best = min(_mean(losses[i : i + 10]) for i in range(0, 120, 10))
    ctx.check("loss climbs over 3x its early best", _mean(losses[-10:]) > 3 * best)
    ctx.check("climbs through the last third", _mean(losses[-10:]) > _mean(losses[180:190]))
    ctx.check(
        "no spike: no step over 3x the one before",
        all(b < 3 * a for a, b in zip(losses[20:], losses[21:], strict=False)),
    )
    ctx.check("finite", _finite(losses))


# -- 8. softmax collapse: a temperature typed 0.001 ----------------------------------------------


class _RimNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, classes=7, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return self.head(h) / self.temperature


@scenario(
    family="glass_harmonica_rim_pitch_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Glass-harmonica rim-pitch classifier (GELU MLP on bowl diameter, wall thickness, "
    "rim wetness, spindle speed and finger pressure features, 7 pitch classes, cross-entropy, "
    "NAdam lr 1e-3). The logits are divided by a temperature from the config, meant 1.0 but "
    "typed 0.001: the softmax saturates and most rows' target probability rounds to exactly 1.0 "
    "in float32.",
)
def h518_glass_harmonica_temperature_typo(ctx):
    gen = seeded(5188)
    model = _RimNet(temperature=0.001)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(8), 256, 10, 7, 51880))
    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 7, 51880),
        150,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        frac = collapsed_fraction(model(probe_x), probe_y)
        wrong = float((model(probe_x).argmax(1) != probe_y).float().mean())
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("some rows still wrong (loss stays large there)", wrong > 0.0)
    ctx.check("finite", _finite(losses))


# -- 9. loss of plasticity: Adam lr typed 0.3 for 3e-4 --------------------------------------------


@scenario(
    family="sled_dog_team_pace_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Sled-dog team pace regressor (ReLU MLP on team size, snow crust hardness, sled load, "
    "trail grade, air temperature and musher weight, MSE, Adam). The lr was meant to be 5e-4 "
    "and is typed 0.5: the first large updates push most of the second layer's ReLUs negative "
    "on every input; they stop getting gradient, never revive, and the run stalls with the few "
    "that survive.",
)
def h518_sled_dog_adam_lr_typo(ctx):
    gen = seeded(5189)
    model = _Net(6, 48, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.5)
    probe = next(_readings(torch.Generator().manual_seed(9), 512, 6, 51890))[0]
    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe))
    masks = {}

    def after(step, loss):
        if step in (30, 199):
            with torch.no_grad():
                masks[step] = (model.features(probe) <= 0).all(0)

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 51890), 200, F.mse_loss, after=after)
    with torch.no_grad():
        dead = dead_fraction(model.features(probe))
    ctx.check("few dead at init", dead0 < 0.2)
    ctx.check("over 60% of fc2's ReLUs dead at the end", dead > 0.6)
    ctx.check("over half already dead by step 30", float(masks[30].float().mean()) > 0.5)
    ctx.check(
        "over 90% of the units dead at step 30 still dead at the end",
        float(masks[199][masks[30]].float().mean()) > 0.9,
    )
    var = float(next(_readings(torch.Generator().manual_seed(19), 512, 6, 51890))[1].var())
    ctx.check("stalls over 60% of the target variance", _mean(losses[-20:]) > 0.6 * var)
    ctx.check("finite", _finite(losses))


# -- 10. amp overflow: raw ADC counts under fp16 autocast ---------------------------------------

ORGAN_ONSET = 100


@scenario(
    family="pipe_organ_wind_chest_fp16_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ORGAN_ONSET,
    heldout=True,
    onset=ORGAN_ONSET,
    note="Pipe-organ wind-chest regulator regressor (ReLU MLP on wind pressure, pallet "
    "opening, stop count, blower speed and reservoir fill, MSE, fp16 autocast + GradScaler, "
    "AdamW). At step 100 the manometer driver is updated and reports wind pressure as raw "
    "24-bit ADC counts (about 8e6) instead of standardised kilopascals, the conversion call "
    "dropped: under autocast the first "
    "layer's fp16 output overflows 65504 to inf and the loss is non-finite (the same batch in "
    "float32 is finite).",
)
def h518_pipe_organ_pascal_fp16_overflow(ctx):
    gen = seeded(51810)
    model = _Net(5, 64, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 5, 518100)
    losses, fp32_ok, fc1_inf = [], [], []
    for step in range(160):
        x, y = next(data)
        if step >= ORGAN_ONSET:
            x = x.clone()
            x[:, 0] = 8.0e6 + 2.0e5 * x[:, 0]  # raw 24-bit ADC counts, never converted
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        if step == ORGAN_ONSET:
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
    ctx.check("trained before the switch", _fell(losses[:ORGAN_ONSET]))
    ctx.check("finite before the switch", _finite(losses[:ORGAN_ONSET]))
    ctx.check("fp16 fc1 output overflowed at onset", bool(fc1_inf) and fc1_inf[0])
    ctx.check("the same batch is finite in float32", bool(fp32_ok) and fp32_ok[0])
    ctx.check("loss non-finite at onset", len(losses) == ORGAN_ONSET + 1)


# -- controls -------------------------------------------------------------------------------------


class _SpatialGatingUnit(nn.Module):
    """Splits channels in two; one half is normalised and mixed across tokens by a learnt
    token-by-token matrix (init near 0, bias 1), then gates the other half."""

    def __init__(self, dim, tokens):
        super().__init__()
        self.norm = nn.LayerNorm(dim // 2)
        self.spatial = nn.Linear(tokens, tokens)
        nn.init.uniform_(self.spatial.weight, -1e-3, 1e-3)
        nn.init.ones_(self.spatial.bias)

    def forward(self, x):
        u, v = x.chunk(2, dim=-1)
        v = self.spatial(self.norm(v).transpose(1, 2)).transpose(1, 2)
        return u * v


class _GMLPBlock(nn.Module):
    def __init__(self, dim, tokens, ff=64):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, ff)
        self.sgu = _SpatialGatingUnit(ff, tokens)
        self.proj_out = nn.Linear(ff // 2, dim)

    def forward(self, x):
        return x + self.proj_out(self.sgu(F.gelu(self.proj_in(self.norm(x)))))


class _WingbeatGMLP(nn.Module):
    def __init__(self, d_in=3, dim=32, tokens=16, depth=2, classes=4):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(_GMLPBlock(dim, tokens) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))


def _wingbeats(gen, batch, tokens=16, classes=4):
    """Generated wingbeat traces: the class sets the beat frequency and phase lag between the
    fore- and hind-wing channels; a third channel is wind noise."""
    t = torch.arange(tokens).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.35 + 0.25 * (y % 2).float()
        lag = 0.8 * (y // 2).float()
        phase = 2 * math.pi * torch.rand(batch, generator=gen)
        fore = torch.sin(freq[:, None] * t + phase[:, None])
        hind = torch.sin(freq[:, None] * t + phase[:, None] + lag[:, None])
        wind = torch.randn(batch, tokens, generator=gen)
        x = torch.stack([fore, hind, wind], -1) + 0.3 * torch.randn(batch, tokens, 3, generator=gen)
        yield x, y


@scenario(
    family="dragonfly_wingbeat_gmlp_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Dragonfly flight-mode classifier, a hand-written gMLP (spatial gating units mixing the "
    "16 frames of a generated fore-wing / hind-wing / wind trace through a learnt 16x16 token "
    "matrix) over 4 modes set by beat frequency and fore-hind phase lag, cross-entropy, AdamW "
    "with OneCycleLR and clipping at 1; weight decay is warmed up linearly from 0 to 0.1 over "
    "the first half of training. Control.",
)
def h518_dragonfly_gmlp_wd_warmup(ctx):
    gen = seeded(51811)
    model = _WingbeatGMLP()
    steps = 200
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps)
    decays = []

    def before(step):
        wd = 0.1 * min(1.0, step / (steps / 2))
        for g in opt.param_groups:
            g["weight_decay"] = wd
        decays.append(wd)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _wingbeats(gen, 32),
        steps,
        F.cross_entropy,
        classifier=True,
        before=before,
        clip=1.0,
        sched=sched,
    )
    ctx.check("weight decay warmed 0 -> 0.1 by mid-run", decays[0] == 0.0 and decays[-1] == 0.1)
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))


class _PopConv(nn.Module):
    """A 1-D conv net over a kettle-corn popping sound envelope (24 frames x 2 channels)."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 24, 3, padding=1)
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        h = F.relu(self.conv2(F.max_pool1d(F.relu(self.conv1(x)), 2)))
        return self.head(h.amax(-1))


def _pop_envelopes(gen, batch, frames=24):
    """Popping envelopes: class 0 under-popped (sparse pops), 1 ready (dense burst), 2 burning
    (pops fading, scorch hiss rising); noisy and overlapping."""
    t = torch.linspace(0, 1, frames)
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        rate = torch.tensor([0.15, 0.5, 0.25])[y]
        pops = (torch.rand(batch, frames, generator=gen) < rate[:, None]).float()
        hiss = (y == 2).float()[:, None] * t[None] * 1.2
        x = torch.stack([pops, hiss + 0.4 * torch.randn(batch, frames, generator=gen)], 1)
        yield x, y


@scenario(
    family="kettle_corn_popping_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kettle-corn popping-stage classifier (1-D conv net over 24 frames of pop count and "
    "scorch-hiss channels, 3 stages with noisy overlapping envelopes, cross-entropy with label "
    "smoothing 0.1, SGD momentum 0.9, two param groups: convs at 0.05, head at 0.02, "
    "ReduceLROnPlateau, accumulation 2, clipping at 2). Control.",
)
def h518_kettle_corn_plateau_accum(ctx):
    gen = seeded(51812)
    model = _PopConv()
    opt = torch.optim.SGD(
        [
            {"params": list(model.conv1.parameters()) + list(model.conv2.parameters()), "lr": 0.05},
            {"params": model.head.parameters(), "lr": 0.02},
        ],
        momentum=0.9,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _pop_envelopes(gen, 32),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check("finite", _finite(losses))


@scenario(
    family="tuba_valve_slide_fp16_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Tuba valve-slide tuning regressor (SiLU MLP on slide extension, valve combination, "
    "bore temperature, breath pressure and partial number, noisy readings, Huber loss, fp16 "
    "autocast + GradScaler, RAdam with linear warm-up 20 steps then cosine decay, clipping at "
    "1 after unscaling). Control.",
)
def h518_tuba_valve_fp16_warmup_cosine(ctx):
    gen = seeded(51813)
    model = _Net(7, 48, 1, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def lam(s):
        return (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / 180))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 7, 518130, noise=0.2)
    losses = []
    for _ in range(200):
        x, y = next(data)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y, delta=1.0)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
