"""Held-out set 504 (``h504_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: an enamel-kiln firing-crack 12-layer ReLU MLP whose He gain is applied twice (exploding
through depth, SGD momentum), a sitar jawari buzz-grade GELU classifier whose softmax temperature
is typed 0.002 for 2.0 (softmax collapse, Adagrad), a piano-hammer felt-voicing SiLU regressor
restarted by a watchdog from a stale early checkpoint (a one-off loss spike, NAdam), a
fountain-pen nib-flow two-group ReLU BCE net whose fc1 group lr is typed 1e-9 for 1e-3 (fc1
frozen, RMSprop), an oar-blade catch-force ReLU regressor fed one shard of strain readings in
microstrain (SGD, clipping), a wick-trim flame-height Huber regressor whose loss weight is read
in per-mille for one resumed step (SGD Nesterov), a meerschaum pipe-bowl porosity SiLU net taking
the log of a reading with no clamp (log 0, Adamax), a harpsichord jack-pluck full-batch tanh
regressor whose warm-up peak lr is typed 10x (past 2/sharpness, SGD), a fiddle-rosin bow-grip
SiLU regressor with a hand-rolled decoupled weight decay of the wrong sign (a slow climb, RAdam)
and an ultimate-disc pull hang-time ReLU classifier whose rare-class bias prior is written into
every bias (dead ReLUs, AdamW).

Controls: a spider-web type hand-written graph isomorphism network over generated web graphs
(AdamW, warm-up + cosine, clipping); a stone-skipping bounce-count GELU classifier whose hard
class is sampled in one batch out of ten (fp16 autocast + GradScaler, Adam, OneCycleLR, label
smoothing, clipping); a cheese-harp curd-cube Gaussian-NLL SiLU net (RMSprop, two param groups,
ReduceLROnPlateau, gradient accumulation 2, clipping).
"""

from __future__ import annotations

import copy
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
    accumulate=1,
    attach=True,
):
    """The file's loop. ``before(step)`` first; ``alter(step, x, y)`` changes a batch;
    ``weight(step)`` multiplies the backpropagated loss (1 by default); ``after(step, loss)`` runs
    after the optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it.
    ``attach=False``: a reference run, nothing recorded."""
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
            w = weight(step) if weight is not None else 1.0
            (w * loss / accumulate).backward()
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


# -- 1. exploding gradients: He gain applied twice in a 12-layer ReLU MLP --------------------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            lin.weight.data.mul_(gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x, keep=None):
        for lin in self.layers:
            x = lin(x)
            if keep is not None:
                x.retain_grad()
                keep.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model, x, y) -> float:
    keep: list[torch.Tensor] = []
    F.mse_loss(model(x, keep), y).backward()
    ratio = float(keep[0].grad.norm() / keep[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    return ratio


@scenario(
    family="enamel_kiln_firing_crack_deep_relu_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Enamel-kiln firing-crack regressor (12-layer ReLU MLP on kiln ramp, soak time, frit "
    "thickness and substrate features, MSE, SGD momentum 0.9). The init helper applies "
    "kaiming_normal_ (which already carries the ReLU gain sqrt(2)) and then multiplies by "
    "sqrt(2) again: each layer doubles the variance, the gradient grows backwards through depth "
    "(dL/dz at layers.0 tens of times layers.11's) and the first steps blow the loss up.",
)
def h504_enamel_kiln_double_gain(ctx) -> None:
    gen = seeded(5041)
    batches = _readings(gen, 64, 12, 50410)
    model = _Deep(12, 48, 12, math.sqrt(2.0))
    ref = _Deep(12, 48, 12, 1.0)
    x0, y0 = next(batches)
    ratio = _depth_ratio(model, x0, y0)
    ratio_ref = _depth_ratio(ref, x0, y0)
    opt = torch.optim.SGD(model.parameters(), lr=8e-5, momentum=0.9)
    losses, _ = _train(ctx, model, opt, batches, 120, lambda o, y: F.mse_loss(o, y))
    ctx.check("dL/dz at layers.0 over 10x layers.11's", ratio > 10.0)
    ctx.check("under 3x with the intended He gain", ratio_ref < 3.0)
    ctx.check(
        "the loss blows up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


# -- 2. softmax collapse: temperature typed 0.002 for 2.0 -----------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="sitar_jawari_buzz_grade_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sitar jawari buzz-grade classifier (GELU MLP on the bridge's buzz-spectrum features, "
    "six grades, cross-entropy, Adagrad). The softmax temperature is typed 0.002 for 2.0: the "
    "logits are multiplied by 500 and within a few steps most rows' float32 softmax gives the "
    "target exactly 1.0 (and the others exactly 0).",
)
def h504_sitar_jawari_temperature(ctx) -> None:
    gen = seeded(5042)
    batches = _grades(gen, 64, 16, 6, 50420, spread=1.3)
    model = _TempNet(16, 48, 6, 0.002)
    ref = copy.deepcopy(model)
    ref.temperature = 2.0
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, attach=True)
    ref_opt = torch.optim.Adagrad(ref.parameters(), lr=0.02)
    _train(ctx, ref, ref_opt, batches, 150, F.cross_entropy, attach=False)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
        frac_ref = collapsed_fraction(ref(x), y)
    ctx.check("over half the rows' target probability is exactly 1.0", frac > 0.5)
    ctx.check("under 5% with the intended temperature 2.0", frac_ref < 0.05)
    ctx.check("the loss stays finite", _finite(losses))


# -- 3. loss spike: a watchdog restart reloads a stale early checkpoint ---------------------------

PIANO_ONSET = 120


@scenario(
    family="piano_hammer_felt_voicing_silu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="Piano-hammer felt-voicing regressor (SiLU MLP on needling depth, felt density and "
    "strike-velocity features predicting the tone's brightness, MSE, NAdam). At step 120 a "
    "watchdog restart reloads the checkpoint written at step 3 (the path of the newest "
    "checkpoint is cached at start-up) into the model, keeping the optimizer: the loss jumps "
    "back to its early level, with an ordinary gradient, and the run trains back down.",
    onset=PIANO_ONSET,
)
def h504_piano_hammer_stale_checkpoint(ctx) -> None:
    gen = seeded(5043)
    batches = _readings(gen, 64, 10, 50430)
    model = _Net(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    saved = {}

    def after(step, loss):
        if step == 3:
            saved.update(copy.deepcopy(model.state_dict()))

    def before(step):
        if step == PIANO_ONSET:
            model.load_state_dict(saved)

    losses, norms = _train(
        ctx, model, opt, batches, 240, lambda o, y: F.mse_loss(o, y), before=before, after=after
    )
    pre = _mean(losses[PIANO_ONSET - 20 : PIANO_ONSET])
    ctx.check("the loss jumps over 3x at the restart", losses[PIANO_ONSET] > 3 * pre)
    ctx.check(
        "it recovers within 60 steps (under 1.5x the pre-restart level)",
        _mean(losses[PIANO_ONSET + 50 : PIANO_ONSET + 60]) < 1.5 * pre,
    )
    ctx.check(
        "no gradient burst (under 10x the median at the restart)",
        norms[PIANO_ONSET] < 10 * _median(norms),
    )


# -- 4. update ratio: fc1's param-group lr typed 1e-9 for 1e-3 ------------------------------------


@scenario(
    family="fountain_pen_nib_flow_two_group_bce_net",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Fountain-pen nib blot classifier (ReLU MLP on tine gap, feed channel width, ink "
    "viscosity and paper features, does the nib blot, BCE with logits, RMSprop with two param "
    "groups). The fc1 group's lr is typed 1e-9 for 1e-3: fc1 hardly moves (its updates are a "
    "millionth of what they should be) while fc2 and the head train.",
)
def h504_fountain_pen_group_lr(ctx) -> None:
    gen = seeded(5044)
    raw = _readings(gen, 64, 14, 50440, noise=0.1)

    def batches():
        while True:
            x, y = next(raw)
            yield x, (y > 0.2).float()

    model = _Net(14, 48, 1)
    fc1_0 = model.fc1.weight.detach().clone()
    fc2_0 = model.fc2.weight.detach().clone()
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.RMSprop(
        [{"params": model.fc1.parameters(), "lr": 1e-9}, {"params": rest, "lr": 1e-3}]
    )
    losses, _ = _train(ctx, model, opt, batches(), 200, F.binary_cross_entropy_with_logits)
    ctx.check("fc1 moves under 1e-5 of its norm", _rel_change(model.fc1.weight, fc1_0) < 1e-5)
    ctx.check("fc2 moves over 5% of its norm", _rel_change(model.fc2.weight, fc2_0) > 0.05)
    ctx.check("the loss stays finite", _finite(losses))


# -- 5. data outlier: one shard of strain readings in microstrain ---------------------------------

OAR_ONSET = 120


@scenario(
    family="oar_blade_catch_force_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="Oar-blade catch-force regressor (ReLU MLP on loom strain-gauge readings and stroke "
    "rate, MSE, SGD, gradient clipping at 1). The shard served at step 120 comes from a rig "
    "whose logger writes microstrain instead of strain (inputs 1000x): that batch's loss and "
    "gradient are huge, clipping bounds the step and the run recovers.",
    onset=OAR_ONSET,
)
def h504_oar_blade_microstrain_shard(ctx) -> None:
    gen = seeded(5045)
    batches = _readings(gen, 64, 10, 50450)

    def alter(step, x, y):
        return (x * 1000.0, y) if step == OAR_ONSET else (x, y)

    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses, norms = _train(
        ctx, model, opt, batches, 240, lambda o, y: F.mse_loss(o, y), alter=alter, clip=1.0
    )
    pre = _mean(losses[OAR_ONSET - 20 : OAR_ONSET])
    ctx.check("the loss at the shard is over 100x the level before", losses[OAR_ONSET] > 100 * pre)
    ctx.check(
        "the gradient at the shard is over 20x the median", norms[OAR_ONSET] > 20 * _median(norms)
    )
    ctx.check("the run recovers (last 20 under 2x the level before)", _mean(losses[-20:]) < 2 * pre)


# -- 6. gradient spike: the loss weight read in per-mille for one resumed step --------------------

WICK_ONSET = 110


@scenario(
    family="wick_trim_flame_height_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="Wick-trim flame-height regressor (tanh MLP on wick length, braid, wax blend and draught "
    "features, Huber loss, SGD Nesterov, clipping at 1). The step that resumes a run at 110 "
    "reads the loss weight from the config in per-mille (500 for 0.5): that one step's gradient "
    "is hundreds of times the usual on an ordinary batch and logged loss.",
    onset=WICK_ONSET,
)
def h504_wick_trim_weight_permille(ctx) -> None:
    gen = seeded(5046)
    batches = _readings(gen, 64, 10, 50460)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    losses, norms = _train(
        ctx,
        model,
        opt,
        batches,
        220,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        weight=lambda s: 500.0 if s == WICK_ONSET else 0.5,
        clip=1.0,
    )
    around = losses[WICK_ONSET - 5 : WICK_ONSET] + losses[WICK_ONSET + 1 : WICK_ONSET + 6]
    ctx.check("the gradient at 110 is over 50x the median", norms[WICK_ONSET] > 50 * _median(norms))
    ctx.check(
        "the logged loss at 110 is ordinary (under 2x its neighbours)",
        losses[WICK_ONSET] < 2 * _mean(around),
    )
    ctx.check("the loss stays finite", _finite(losses))


# -- 7. nonfinite: the log of a porosity reading with no clamp ------------------------------------

MEER_ONSET = 100


class _LogFeature(nn.Module):
    def forward(self, x):
        return torch.log(x)


class _MeerNet(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.log_feat = _LogFeature()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.log_feat(x)))).squeeze(-1)


@scenario(
    family="meerschaum_pipe_bowl_porosity_log_silu_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("log_feat",),
    diverges=MEER_ONSET,
    heldout=True,
    note="Meerschaum pipe-bowl porosity regressor (SiLU net on the log of water-uptake readings, "
    "MSE, Adamax). The log has no clamp: at step 100 a batch from a scale that dropped out "
    "carries zero readings, log 0 = -inf, the first layer mixes -inf and +inf and the loss is "
    "NaN at 100.",
    onset=MEER_ONSET,
)
def h504_meerschaum_log_zero(ctx) -> None:
    gen = seeded(5047)
    g = torch.Generator().manual_seed(50470)
    w = torch.randn(8, generator=g)

    def batches():
        while True:
            x = torch.exp(0.5 * torch.randn(64, 8, generator=gen))
            yield x, torch.tanh(torch.log(x) @ w / math.sqrt(8))

    def alter(step, x, y):
        if step == MEER_ONSET:
            x = x.clone()
            x[:8, 2] = 0.0
        return x, y

    model = _MeerNet(8, 48)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    losses, _ = _train(ctx, model, opt, batches(), 200, lambda o, y: F.mse_loss(o, y), alter=alter)
    ctx.check("the loss is finite before step 100", _finite(losses[:MEER_ONSET]))
    ctx.check(
        "the loss is NaN at step 100", len(losses) > MEER_ONSET and math.isnan(losses[MEER_ONSET])
    )


# -- 8. sharpness above the limit: full-batch warm-up peak lr typed 10x ---------------------------


def _sharpness(model, loss_fn, iters=15):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(7)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return abs(lam)


@scenario(
    family="harpsichord_voicing_jack_pluck_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Harpsichord voicing regressor (tanh MLP on plectrum length, thickness and jack "
    "regulation predicting the pluck's loudness, MSE on the full voicing sheet each step, plain "
    "SGD with a 40-step linear warm-up). The warm-up's peak lr is typed 10x the tuned one "
    "(0.5/sharpness): as the warm-up passes 2/sharpness the loss starts oscillating and blows "
    "up (lr * sharpness measured 1.8 at step 10 and 2.6 at step 15).",
    onset=12,
)
def h504_harpsichord_peak_lr(ctx) -> None:
    gen = seeded(5048)
    raw = _readings(gen, 256, 8, 50480)
    x, y = next(raw)
    model = _Net(8, 32, 1, act=nn.Tanh)
    lam0 = _sharpness(model, lambda: F.mse_loss(model(x), y))
    peak = 10 * 0.5 / lam0
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    lrs, sharp = [], []

    def before(step):
        lr = peak * min(1.0, (step + 1) / 40)
        for grp in opt.param_groups:
            grp["lr"] = lr
        lrs.append(lr)
        if step % 5 == 0 and step < 60:
            sharp.append(lr * _sharpness(model, lambda: F.mse_loss(model(x), y)))

    def full():
        while True:
            yield x, y

    losses, _ = _train(ctx, model, opt, full(), 150, lambda o, t: F.mse_loss(o, t), before=before)
    ctx.check("lr * sharpness crosses 2", max(v for v in sharp if math.isfinite(v)) > 2.0)
    ctx.check("lr * sharpness was under 2 early in the warm-up", sharp[0] < 2.0)
    ctx.check(
        "the loss blows up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


# -- 9. loss divergence: hand-rolled decoupled weight decay with the wrong sign -------------------


@scenario(
    family="fiddle_rosin_bow_grip_silu_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Fiddle-rosin bow-grip regressor (SiLU MLP on rosin hardness, humidity and bow-speed "
    "features predicting the string's grip, MSE, RAdam with a hand-rolled decoupled weight decay "
    "after each step). The decay is written p.mul_(1 + lr * wd) instead of p.mul_(1 - lr * wd): "
    "the weights inflate a little every step and the loss climbs slowly from its best, with no "
    "jump.",
)
def h504_fiddle_rosin_decay_sign(ctx) -> None:
    gen = seeded(5049)
    batches = _readings(gen, 64, 10, 50490)
    model = _Net(10, 48, 1, act=nn.SiLU)
    lr, wd = 2e-3, 2.5
    opt = torch.optim.RAdam(model.parameters(), lr=lr)
    w0 = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in model.parameters()))

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    losses, _ = _train(ctx, model, opt, batches, 300, lambda o, y: F.mse_loss(o, y), after=after)
    w1 = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in model.parameters()))
    smooth = [_mean(losses[i : i + 10]) for i in range(len(losses) - 9)]
    best = min(smooth)
    blocks = [_mean(losses[i : i + 10]) for i in range(0, len(losses), 10)]
    jumps = max(b / a for a, b in zip(blocks[:-1], blocks[1:], strict=True))
    ctx.check("the weight norm grows over 1.5x", w1 > 1.5 * w0)
    ctx.check("the 10-step mean loss climbs over 2x its best", smooth[-1] > 2 * best)
    ctx.check("no 10-step block over 3x the one before", jumps < 3.0)


# -- 10. loss of plasticity: the rare-class bias prior written into every bias --------------------


@scenario(
    family="ultimate_disc_pull_hang_time_relu_classifier",
    optimizer="AdamW",
    cause="loss_of_plasticity",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Ultimate-disc pull hang-time grade classifier (ReLU MLP on release angle, spin, wind "
    "and throw features, five grades, cross-entropy, AdamW). The init code meant to set the "
    "head's bias to a rare-class prior of -5 loops over every parameter named '*bias': fc1's "
    "and fc2's ReLUs are dead from step 0, no gradient reaches them, and only the head's bias "
    "learns the class prior.",
)
def h504_ultimate_disc_bias_prior(ctx) -> None:
    gen = seeded(5050)
    batches = _grades(gen, 64, 16, 5, 50500, spread=1.0)
    model = _Net(16, 48, 5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.fill_(-5.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    losses, _ = _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    x, _ = next(batches)
    with torch.no_grad():
        dead1 = dead_fraction(model.fc1(x))
        dead2 = dead_fraction(model.fc2(model.act1(model.fc1(x))))
    ctx.check("over 90% of fc1's units are dead", dead1 > 0.9)
    ctx.check("over 90% of fc2's units are dead", dead2 > 0.9)
    ctx.check(
        "the loss stays near chance (over 0.8 log 5)", _mean(losses[-20:]) > 0.8 * math.log(5)
    )


# -- control 1: a graph isomorphism network over generated spider-web graphs ---------------------


def _web_graph(kind: int, g: torch.Generator, n_max: int) -> torch.Tensor:
    """An adjacency matrix: 0 an orb web (hub, spokes, rings), 1 a sheet web (grid), 2 a
    cobweb (random tangle)."""
    a = torch.zeros(n_max, n_max)
    if kind == 0:
        spokes = int(torch.randint(4, 7, (1,), generator=g))
        rings = 2
        n = 1 + spokes * rings
        for s in range(spokes):
            for r in range(rings):
                i = 1 + r * spokes + s
                j = 0 if r == 0 else 1 + (r - 1) * spokes + s
                a[i, j] = a[j, i] = 1
                k = 1 + r * spokes + (s + 1) % spokes
                a[i, k] = a[k, i] = 1
    elif kind == 1:
        rows = int(torch.randint(3, 5, (1,), generator=g))
        cols = int(torch.randint(3, 5, (1,), generator=g))
        n = rows * cols
        for r in range(rows):
            for c in range(cols):
                i = r * cols + c
                if c + 1 < cols:
                    a[i, i + 1] = a[i + 1, i] = 1
                if r + 1 < rows:
                    a[i, i + cols] = a[i + cols, i] = 1
    else:
        n = int(torch.randint(9, 16, (1,), generator=g))
        upper = (torch.rand(n, n, generator=g) < 0.28).float().triu(1)
        a[:n, :n] = upper + upper.T
    return a


class _GINLayer(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.eps = nn.Parameter(torch.zeros(1))
        self.mlp = nn.Sequential(
            nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out), nn.ReLU()
        )

    def forward(self, h, adj):
        return self.mlp((1 + self.eps) * h + adj @ h)


class _GIN(nn.Module):
    def __init__(self, hidden, layers, classes):
        super().__init__()
        self.convs = nn.ModuleList(
            _GINLayer(1 if i == 0 else hidden, hidden) for i in range(layers)
        )
        self.head = nn.Linear(hidden * layers, classes)

    def forward(self, batch):
        adj, mask = batch
        h = mask[..., None]
        reads = []
        for conv in self.convs:
            h = conv(h, adj) * mask[..., None]
            reads.append(h.sum(1))
        return self.head(torch.cat(reads, -1))


@scenario(
    family="spiderweb_type_gin_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Spider-web type classifier: a hand-written graph isomorphism network (three GIN layers, "
    "each an MLP over (1 + eps) h + sum of neighbours with a learnable eps, a sum readout of "
    "every layer, a linear head) over generated orb, sheet and cobweb graphs with constant node "
    "features, cross-entropy, AdamW, 15-step warm-up then cosine, clipping at 1. Control.",
)
def h504_spiderweb_gin_control(ctx) -> None:
    gen = seeded(5051)
    n_max = 16
    pool_a, pool_m, pool_y = [], [], []
    for _ in range(480):
        kind = int(torch.randint(0, 3, (1,), generator=gen))
        a = _web_graph(kind, gen, n_max)
        pool_a.append(a)
        pool_m.append((a.sum(1) > 0).float())
        pool_y.append(kind)
    adj, mask, ys = torch.stack(pool_a), torch.stack(pool_m), torch.tensor(pool_y)

    def batches():
        while True:
            idx = torch.randint(0, len(ys), (32,), generator=gen)
            yield (adj[idx], mask[idx]), ys[idx]

    model = _GIN(32, 3, 3)
    steps = 160
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 15 if s < 15 else 0.5 * (1 + math.cos(math.pi * (s - 15) / (steps - 15)))
        ),
    )
    losses, _ = _train(
        ctx, model, opt, batches(), steps, F.cross_entropy, classifier=True, clip=1.0, sched=sched
    )
    with torch.no_grad():
        acc = float((model((adj, mask)).argmax(-1) == ys).float().mean())
    ctx.check("the loss fell under 0.5x its start", _fell(losses, ratio=0.5))
    ctx.check("over 80% of the graphs classified right", acc > 0.8)


# -- control 2: the hard class sampled in one batch out of ten ------------------------------------


@scenario(
    family="stoneskip_bounce_count_gelu_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Stone-skipping bounce-count classifier (GELU MLP on throw speed, tilt, spin and stone "
    "shape, six bounce bands, cross-entropy with label smoothing 0.1, Adam, OneCycleLR, fp16 "
    "autocast with a GradScaler, clipping at 1). The class-balanced sampler serves the hard, "
    "noisy 'sinks on the first touch' class as its own batch once every ten steps, so the loss "
    "jumps at that fixed rhythm while the run trains normally. Control.",
)
def h504_stoneskip_rhythm_control(ctx) -> None:
    gen = seeded(5052)
    g = torch.Generator().manual_seed(50520)
    protos = 1.2 * torch.randn(6, 16, generator=g)
    steps = 200

    def batch(step):
        y = torch.randint(0, 5, (64,), generator=gen)
        if step % 10 == 9:
            y[:32] = 5
        x = protos[y] + torch.randn(64, 16, generator=gen)
        x[y == 5] = protos[:5].mean(0) + 2.0 * torch.randn(int((y == 5).sum()), 16, generator=gen)
        return x, y

    model = _Net(16, 64, 6, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    losses = []
    for step in range(steps):
        x, y = batch(step)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ordinary = [v for i, v in enumerate(losses) if i % 10 != 9]
    hard = [v for i, v in enumerate(losses) if i % 10 == 9]
    ctx.check("the ordinary batches' loss fell under 0.5x", _fell(ordinary, ratio=0.5))
    ctx.check("the loss is finite", _finite(losses))
    ctx.check(
        "the hard-class batches' loss is over 1.5x the ordinary ones' in the second half",
        _mean(hard[len(hard) // 2 :]) > 1.5 * _mean(ordinary[len(ordinary) // 2 :]),
    )


# -- control 3: a Gaussian-NLL net with two param groups and ReduceLROnPlateau -------------------


class _GaussNet(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), F.softplus(self.var_head(h)) + 1e-4], -1)


@scenario(
    family="cheese_harp_curd_cube_gaussian_nll_net",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cheese-harp curd-cube regressor (SiLU net on wire spacing, cutting speed, renneting "
    "time and milk temperature, a mean and a softplus variance head, Gaussian NLL, RMSprop with "
    "the heads at a lower lr in their own group, ReduceLROnPlateau, gradient accumulation 2, "
    "clipping at 1). Control.",
)
def h504_cheese_harp_control(ctx) -> None:
    gen = seeded(5053)
    batches = _readings(gen, 32, 10, 50530, noise=0.2)
    model = _GaussNet(10, 48)
    heads = list(model.mean_head.parameters()) + list(model.var_head.parameters())
    body = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.RMSprop([{"params": body, "lr": 1e-3}, {"params": heads, "lr": 5e-4}])
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def loss_fn(out, y):
        return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])

    losses, _ = _train(
        ctx,
        model,
        opt,
        batches,
        220,
        loss_fn,
        accumulate=2,
        clip=1.0,
        after=lambda step, loss: plateau.step(loss),
    )
    ctx.check("the loss is finite", _finite(losses))
    ctx.check(
        "the loss fell by over 0.5 nats",
        _mean(losses[-20:]) < _mean(losses[:20]) - 0.5,
    )
