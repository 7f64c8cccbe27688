"""Held-out set 463 (``h463_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a pysanky kistka wax-line classifier feeding raw logits to nll_loss (the head's logits
grow without bound, Adam), a didgeridoo bore-taper two-group Huber regressor whose trunk lr is
typed 2e-9 for 2e-3 (fc1 and fc2 frozen, Adamax), a hot-air-balloon envelope-lift regressor under
fp16 autocast whose logger starts writing pressures in pascals at step 80 (fc1's fp16 output
overflows, RAdam with a GradScaler), a Zamboni snow-tank regressor whose resume at step 130 reloads
the head from the step-5 checkpoint (a one-off loss spike, NAdam), a sheep-dip vat-dilution Huber
regressor fed one shard in millilitres for litres (one corrupted batch, SGD Nesterov), a tannery
lime-ratio regressor taking log(lime / hide) with no floor on an all-zero weighing row (0/0, NaN at
step 100, ASGD), a yodel echo-decay twelve-layer tanh regressor initialised with orthogonal gain 4
typed for 1 (gradients grow back through depth, RMSprop), a thatch-spar hazel-grade classifier with
a softmax temperature typed 1e-3 for 1.0 (softmax saturates, SGD momentum), a wheelwright
spoke-tenon regressor whose fc2 biases are initialised to -3.0 for -0.03 (its ReLUs dead for good,
AdamW) and a kite-surf line-tension regressor whose curriculum loss-weight table reads 500 for 0.5
at step 120 (one gradient burst, plain SGD).

Controls: a town-crier proclamation character-level LM built from causal dilated convolutions with
a tied embedding/head, its loss summed over a variable number of unpadded tokens per batch and
divided by a fixed constant (AdamW, warm-up and cosine decay, clipping); an fp16 mbira
gourd-resonator conv1d classifier (GradScaler, SGD momentum under OneCycleLR, label smoothing); a
fumarole SO2-flux tied-weight autoencoder with a Gaussian-NLL head (Adagrad param groups,
ReduceLROnPlateau, accumulation over 2, clipping).
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
    text_bytes,
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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
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


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
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


# -- 1. output logits: raw logits into nll_loss ----------------------------------------------------


@scenario(
    family="pysanky_kistka_wax_line_nll_raw_logit_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Pysanky kistka wax-line classifier (ReLU MLP on stylus-trace features, six line "
    "kinds, Adam). The model was changed to return raw logits (the log_softmax moved to the "
    "export path) but the loss still calls F.nll_loss, which just takes -logit[target]: nothing "
    "bounds it, the head's target logits are pushed up without limit and the 'loss' goes far "
    "below zero.",
)
def h463_pysanky_raw_logit_nll(ctx) -> None:
    gen = seeded(4631)
    model = _Net(16, 48, 6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    trace = []
    probe_x, _ = next(_grades(seeded(46310), 256, 16, 6, seed=4631))

    def after(step):
        with torch.no_grad():
            trace.append(float(model(probe_x).abs().max()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, seed=4631),
        200,
        F.nll_loss,
        classifier=True,
        after=after,
    )
    ctx.check("max |logit| over 20x its start", _mean(trace[-10:]) > 20 * _mean(trace[:3]))
    ctx.check("max |logit| still growing", _mean(trace[-10:]) > 1.2 * _mean(trace[-40:-30]))
    ctx.check("the 'loss' below -10", _mean(losses[-10:]) < -10)


# -- 2. update ratio: a trunk lr typo --------------------------------------------------------------


@scenario(
    family="didgeridoo_bore_taper_two_group_huber_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Didgeridoo bore-taper drone-pitch regressor (ReLU MLP, Huber, Adamax with two param "
    "groups: the trunk fc1+fc2 and the head). The trunk's lr is typed 2e-9 for 2e-3 in the "
    "config: fc1 and fc2 receive gradients but barely move, only the head learns and the loss "
    "stays above the intended run's.",
)
def h463_didgeridoo_trunk_lr_typo(ctx) -> None:
    def run(trunk_lr, c):
        gen = seeded(4632)
        model = _Net(8, 48, 1)
        opt = torch.optim.Adamax(
            [
                {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": trunk_lr},
                {"params": model.head.parameters(), "lr": 2e-3},
            ]
        )
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads = []

        def after(step):
            grads.append(float(model.fc1.weight.grad.norm()))

        losses, _ = _loop(
            c,
            model,
            opt,
            _readings(gen, 64, 8, seed=4632),
            200,
            F.huber_loss,
            after=after,
            attach=c is not None,
        )
        moved = {n: _rel_change(start[n], p) for n, p in model.named_parameters()}
        return losses, moved, grads

    ref, _, _ = run(2e-3, None)
    losses, moved, grads = run(2e-9, ctx)
    ctx.check(
        "fc1 and fc2 weights move under 1e-5 of their norm",
        max(moved["fc1.weight"], moved["fc2.weight"]) < 1e-5,
    )
    ctx.check("fc1 receives gradients", _median(grads) > 1e-4)
    ctx.check("the head moves over 5%", moved["head.weight"] > 0.05)
    ctx.check("loss over 1.3x the intended run's", _mean(losses[-20:]) > 1.3 * _mean(ref[-20:]))
    ctx.check("loss finite", _finite(losses))


# -- 3. amp overflow: a logger switched to pascals -------------------------------------------------


BALLOON_STEP = 80


@scenario(
    family="hot_air_balloon_envelope_lift_fp16_relu_regressor",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=BALLOON_STEP,
    heldout=True,
    onset=BALLOON_STEP,
    note="Hot-air-balloon envelope-lift regressor (ReLU MLP on burner, envelope and ambient "
    "readings, MSE, RAdam, fp16 autocast with a torch.amp.GradScaler). From step 80 the flight "
    "logger's new firmware writes the envelope and ambient pressure columns in pascals instead "
    "of standardised kPa deviations, and no input clamp or normaliser catches it: fc1's fp16 "
    "output passes 65504, overflows to inf, and the loss is non-finite at step 80 (the same "
    "batch in float32 stays finite).",
)
def h463_hot_air_balloon_pascals(ctx) -> None:
    gen = seeded(4633)
    model = _Net(8, 48, 1)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    fc1_inf = {}
    seen = {}

    def hook(mod, inp, out):
        fc1_inf[len(seen.setdefault("steps", []))] = bool(torch.isinf(out).any())

    model.fc1.register_forward_hook(hook)

    def alter(step, x, y):
        if step >= BALLOON_STEP:
            x = x.clone()
            x[:, 0] = 101325.0 + 900.0 * x[:, 0]
            x[:, 1] = 101325.0 + 900.0 * x[:, 1]
            seen["bad"] = x
        return x, y

    def after(step):
        seen.setdefault("steps", []).append(step)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=4633),
        160,
        F.mse_loss,
        alter=alter,
        after=after,
        scaler=scaler,
        amp=True,
    )
    with torch.no_grad():
        f32 = model.fc1(seen["bad"]) if "bad" in seen else torch.tensor(float("inf"))
    ctx.check("loss finite before step 80", _finite(losses[:BALLOON_STEP]))
    ctx.check(
        "loss non-finite at step 80",
        len(losses) == BALLOON_STEP + 1 and not math.isfinite(losses[BALLOON_STEP]),
    )
    ctx.check("fc1's fp16 output has inf at step 80", fc1_inf.get(BALLOON_STEP, False))
    ctx.check("fc1's output in float32 finite on the same batch", bool(torch.isfinite(f32).all()))
    ctx.check("trained before it", _mean(losses[70:80]) < 0.8 * _mean(losses[:10]))


# -- 4. a loss spike: a resume reloading the head from a stale checkpoint --------------------------


ZAMBONI_STEP = 130


@scenario(
    family="zamboni_snow_tank_fill_stale_head_gelu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ZAMBONI_STEP,
    note="Zamboni snow-tank fill regressor (GELU MLP on blade depth, speed and ice-temperature "
    "features, MSE, NAdam). The job is pre-empted and resumed at step 130; the resume script "
    "globs 'head_*.pt' and picks the first file, the step-5 head checkpoint, instead of the "
    "latest. The loss jumps for a few steps and the run recovers.",
)
def h463_zamboni_stale_head_resume(ctx) -> None:
    gen = seeded(4634)
    model = _Net(8, 48, 1, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    saved = {}
    diff = {}

    def after(step):
        if step == 5:
            saved["head"] = copy.deepcopy(model.head.state_dict())

    def before(step):
        if step == ZAMBONI_STEP:
            old = model.head.weight.detach().clone()
            model.head.load_state_dict(saved["head"])
            diff["head"] = _rel_change(old, model.head.weight)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=4634),
        220,
        F.mse_loss,
        before=before,
        after=after,
    )
    base = _median(losses[ZAMBONI_STEP - 30 : ZAMBONI_STEP])
    ctx.check("the reloaded head differs from the live one by over 10%", diff.get("head", 0) > 0.1)
    ctx.check("loss at the resume over 3x the median before", losses[ZAMBONI_STEP] > 3 * base)
    ctx.check("back under 1.5x within 60 steps", _mean(losses[180:200]) < 1.5 * base)
    ctx.check("loss finite", _finite(losses))


# -- 5. a data outlier: one shard in millilitres ---------------------------------------------------


SHEEP_STEP = 110


@scenario(
    family="sheep_dip_vat_dilution_relu_huber_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SHEEP_STEP,
    note="Sheep-dip vat dilution regressor (ReLU MLP on vat volume, concentrate dose and "
    "flock-size features, Huber, SGD Nesterov momentum 0.9, clipping at 1). One farm's shard "
    "read at step 110 records the concentrate dose in millilitres instead of litres (a 1000x "
    "column): one corrupted batch, the loss and gradient jump for that step and the run "
    "recovers.",
)
def h463_sheep_dip_millilitre_shard(ctx) -> None:
    gen = seeded(4635)
    model = _Net(8, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == SHEEP_STEP:
            x = x.clone()
            x[:, 2] = 1000.0 * (2.0 + 0.5 * x[:, 2])
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=4635),
        200,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    base = _median(losses[SHEEP_STEP - 30 : SHEEP_STEP])
    gbase = _median(norms[SHEEP_STEP - 30 : SHEEP_STEP])
    ctx.check("loss at the shard over 50x the median before", losses[SHEEP_STEP] > 50 * base)
    ctx.check("gradient at the shard over 10x the median", norms[SHEEP_STEP] > 10 * gbase)
    ctx.check("recovers: last 20 under 2x the median before", _mean(losses[-20:]) < 2 * base)
    ctx.check("loss finite", _finite(losses))


# -- 6. nonfinite: log(lime / hide) with no floor --------------------------------------------------


class _LogRatio(nn.Module):
    """log(lime kg / hide kg) of the last two raw columns, appended to the standardised ones."""

    def __init__(self):
        super().__init__()
        self.last_finite = True

    def forward(self, x):
        r = torch.log(x[:, -2] / x[:, -1])
        self.last_finite = bool(torch.isfinite(r).all())
        return torch.cat([x[:, :-2], r[:, None]], 1)


class _LimeNet(nn.Module):
    def __init__(self, d_std=8, hidden=48):
        super().__init__()
        self.ratio = _LogRatio()
        self.fc1 = nn.Linear(d_std + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = self.ratio(x)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


def _lime_batches(gen, batch, seed):
    base = _readings(gen, batch, 8, seed)
    while True:
        x, y = next(base)
        hide = 20.0 + 5.0 * torch.rand(batch, generator=gen)
        lime = hide * torch.exp(0.3 * torch.randn(batch, generator=gen) - 3.0)
        y = y + 0.8 * (torch.log(lime / hide) + 3.0)
        yield torch.cat([x, lime[:, None], hide[:, None]], 1), y


TANNERY_STEP = 100


@scenario(
    family="tannery_pit_lime_ratio_log_silu_regressor",
    optimizer="ASGD",
    cause="nonfinite",
    where=("ratio",),
    diverges=TANNERY_STEP,
    heldout=True,
    onset=TANNERY_STEP,
    note="Tannery liming-pit swell regressor (SiLU MLP on pit features plus a log(lime kg / "
    "hide kg) feature computed in the model, MSE, ASGD). The ratio has no floor or mask; the "
    "batch at step 100 holds a blank weighing row (both weights logged 0): 0/0, the log is NaN "
    "and the loss is NaN at step 100.",
)
def h463_tannery_log_ratio_zero_row(ctx) -> None:
    gen = seeded(4636)
    model = _LimeNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)
    nan_at = {}

    def alter(step, x, y):
        if step == TANNERY_STEP:
            x = x.clone()
            x[5, -2:] = 0.0
        return x, y

    def after(step):
        if not model.ratio.last_finite and "step" not in nan_at:
            nan_at["step"] = step

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _lime_batches(gen, 64, seed=4636),
        200,
        F.mse_loss,
        alter=alter,
        after=after,
    )
    ctx.check("loss finite before step 100", _finite(losses[:TANNERY_STEP]))
    ctx.check(
        "loss NaN at step 100",
        len(losses) == TANNERY_STEP + 1 and math.isnan(losses[TANNERY_STEP]),
    )
    ctx.check("the ratio's output first non-finite at step 100", nan_at.get("step") == 100)
    ctx.check("trained before it", _mean(losses[90:100]) < 0.8 * _mean(losses[:10]))


# -- 7. exploding gradients: an init gain typo in a deep tanh stack --------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in=8, width=32, depth=12, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="yodel_echo_valley_decay_deep_tanh_regressor",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="Yodel valley-echo decay-time regressor (twelve-layer tanh MLP, MSE, RMSprop, clipping "
    "at 1). The init config's orthogonal gain is typed 4 for 1: the stack is in the chaotic "
    "regime and the gradient grows layer by layer back towards the input, the first layers' "
    "gradients far above the last's.",
)
def h463_yodel_init_gain_typo(ctx) -> None:
    def run(gain, c):
        gen = seeded(4637)
        model = _DeepTanh(gain=gain)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
        ratios = []

        def after(step):
            g1 = float(model.layers[1].weight.grad.norm())
            g11 = float(model.layers[11].weight.grad.norm())
            ratios.append(g1 / max(g11, 1e-12))

        losses, _ = _loop(
            c,
            model,
            opt,
            _readings(gen, 64, 8, seed=4637),
            150,
            F.mse_loss,
            after=after,
            clip=1.0,
            attach=c is not None,
        )
        return losses, ratios

    _, ref = run(1.0, None)
    losses, ratios = run(4.0, ctx)
    ctx.check("layers.1's gradient over 30x layers.11's", _median(ratios) > 30)
    ctx.check("under 3x at gain 1", _median(ref) < 3)
    ctx.check("loss finite", _finite(losses))


# -- 8. softmax collapse: a temperature typo -------------------------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, hidden, out, temperature):
        super().__init__(d_in, hidden, out, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="thatch_spar_hazel_grade_cosine_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Thatcher's hazel-spar grade classifier (GELU MLP on split, twist and moisture "
    "features, five grades, cross-entropy, SGD momentum 0.9 at lr 1e-5). The softmax temperature is typed "
    "1e-3 for 1.0 in the config: the logits are divided by 0.001 and the float32 softmax rounds "
    "the target probability to exactly 1.0 on most rows.",
)
def h463_thatch_temperature_typo(ctx) -> None:
    gen = seeded(4638)
    model = _TempNet(12, 48, 5, temperature=1e-3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    coll, coll_ref = [], []
    probe = next(_grades(seeded(46380), 256, 12, 5, seed=4638))

    def after(step):
        with torch.no_grad():
            raw = model.head(model.features(probe[0]))
            coll.append(collapsed_fraction(raw / model.temperature, probe[1]))
            coll_ref.append(collapsed_fraction(raw, probe[1]))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, seed=4638),
        180,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over half the rows' target probability exactly 1.0", _mean(coll[-30:]) > 0.5)
    ctx.check("under 5% at temperature 1 on the same logits", _mean(coll_ref[-30:]) < 0.05)
    ctx.check("loss finite", _finite(losses))


# -- 9. loss of plasticity: a bias init typo -------------------------------------------------------


@scenario(
    family="wheelwright_spoke_tenon_dead_bias_relu_regressor",
    optimizer="AdamW",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Wheelwright spoke-tenon fit regressor (ReLU MLP on tenon diameter, taper and "
    "timber-moisture features, MSE, AdamW). fc2's biases are initialised to -3.0 for -0.03 "
    "(a typo in the init config): every fc2 pre-activation is negative, act2's ReLUs are dead "
    "from the start, get no gradient and never revive; only the head's bias learns.",
)
def h463_wheelwright_dead_bias(ctx) -> None:
    probe_x, _ = next(_readings(seeded(46390), 256, 8, seed=4639))

    def run(bias, c):
        gen = seeded(4639)
        model = _Net(8, 48, 1)
        nn.init.constant_(model.fc2.bias, bias)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe_x)))

        losses, _ = _loop(
            c,
            model,
            opt,
            _readings(gen, 64, 8, seed=4639),
            200,
            F.mse_loss,
            after=after,
            attach=c is not None,
        )
        return losses, dead

    ref, dead_ref = run(-0.03, None)
    losses, dead = run(-3.0, ctx)
    ctx.check("over 80% of act2's units dead at the end", dead[-1] > 0.8)
    ctx.check("none revive (dead share never falls under 80%)", min(dead) > 0.8)
    ctx.check("under 20% dead at -0.03", dead_ref[-1] < 0.2)
    ctx.check("loss over 1.3x the reference's", _mean(losses[-20:]) > 1.3 * _mean(ref[-20:]))
    ctx.check("loss finite", _finite(losses))


# -- 10. gradient spike: a loss-weight table typo --------------------------------------------------


KITE_STEP = 120


@scenario(
    family="kite_surf_bar_line_tension_aux_weight_tanh_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=KITE_STEP,
    note="Kite-surf bar line-tension regressor (tanh MLP on wind, kite-size and rider-weight "
    "features, MSE, plain SGD, clipping at 5). The curriculum loss-weight table has its step-120 "
    "entry typed 500 for 0.5: for one step the backpropagated loss is 1000x, the gradient "
    "bursts while the logged loss is ordinary, and the run recovers.",
)
def h463_kite_surf_weight_table_typo(ctx) -> None:
    gen = seeded(4640)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    table = [0.5] * 220
    table[KITE_STEP] = 500.0

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=4640),
        220,
        F.mse_loss,
        backprop=lambda s, loss: table[s] * loss,
        clip=5.0,
    )
    base = _median(losses[KITE_STEP - 30 : KITE_STEP])
    gbase = _median(norms[KITE_STEP - 30 : KITE_STEP])
    ctx.check("gradient at step 120 over 50x the median", norms[KITE_STEP] > 50 * gbase)
    ctx.check("logged loss at step 120 ordinary (under 2x)", losses[KITE_STEP] < 2 * base)
    ctx.check("recovers: last 20 under 2x the median before", _mean(losses[-20:]) < 2 * base)
    ctx.check("loss finite", _finite(losses))


# -- control 1: a causal dilated-conv char LM, loss summed over unpadded tokens / a constant -------


CRIER_VOCAB = 96
CRIER_PAD = 96
CRIER_NORM = 512.0  # batch 16 x nominal length 32


class _CausalConv(nn.Module):
    def __init__(self, dim, dilation):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(dim, 2 * dim, 2, dilation=dilation)
        self.mix = nn.Conv1d(dim, dim, 1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):  # x: (b, t, d)
        z = self.norm(x).transpose(1, 2)
        z = self.conv(F.pad(z, (self.dilation, 0)))
        a, g = z.chunk(2, 1)
        return x + self.mix(torch.tanh(a) * torch.sigmoid(g)).transpose(1, 2)


class _CharConvLM(nn.Module):
    """Embedding, five gated causal dilated convolutions (1..16), a head tied to the embedding."""

    def __init__(self, vocab=CRIER_VOCAB + 1, dim=48, dilations=(1, 2, 4, 8, 16)):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_CausalConv(dim, d) for d in dilations)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def _proclamations(gen, batch, counts):
    """Windows of 8..48 characters, right-padded; targets -100 on the padding."""
    data = text_bytes() % CRIER_VOCAB
    while True:
        lengths = torch.randint(8, 49, (batch,), generator=gen)
        t = int(lengths.max())
        x = torch.full((batch, t), CRIER_PAD, dtype=torch.long)
        y = torch.full((batch, t), -100, dtype=torch.long)
        for i, n in enumerate(lengths.tolist()):
            s = int(torch.randint(0, len(data) - n - 1, (1,), generator=gen))
            x[i, :n] = data[s : s + n]
            y[i, :n] = data[s + 1 : s + n + 1]
        counts.append(int(lengths.sum()))
        yield x, y


def _summed_lm_loss(out, y):
    flat = out.reshape(-1, out.shape[-1])
    return F.cross_entropy(flat, y.reshape(-1), ignore_index=-100, reduction="sum") / CRIER_NORM


@scenario(
    family="town_crier_handbell_dilated_causal_conv_char_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Town-crier proclamation character-level LM (hand-written: an embedding, five gated "
    "causal dilated Conv1d blocks with dilations 1-16 and left padding, pre-LN residuals, a head "
    "tied to the embedding; standard-library text stands in for proclamations). Each batch "
    "holds 16 windows of 8-48 characters right-padded; the loss is summed over the unpadded "
    "tokens and divided by a fixed 512 (a common 'sum / nominal tokens' convention), so its "
    "level moves with each batch's token count. AdamW with a 20-step warm-up and cosine decay, "
    "clipping at 1. Healthy control.",
)
def h463_town_crier_conv_lm(ctx) -> None:
    gen = seeded(4641)
    model = _CharConvLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 220
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    counts = []
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _proclamations(gen, 16, counts),
        steps,
        _summed_lm_loss,
        clip=1.0,
        sched=sched,
    )
    per_token = [v * CRIER_NORM / n for v, n in zip(losses, counts, strict=False)]
    n = len(losses)
    c = torch.tensor(counts[:n], dtype=torch.float32)
    lv = torch.tensor(losses)
    late = slice(n // 2, n)
    corr = float(torch.corrcoef(torch.stack([c[late], lv[late]]))[0, 1])
    ctx.check(
        "per-token loss fell under 0.7x", _mean(per_token[-20:]) < 0.7 * _mean(per_token[:10])
    )
    ctx.check("per-token loss under 3 nats at the end", _mean(per_token[-20:]) < 3.0)
    ctx.check("the logged level follows the token count (corr > 0.5)", corr > 0.5)
    ctx.check("loss finite", _finite(losses))


# -- control 2: an fp16 conv1d classifier under OneCycleLR -----------------------------------------


def _plucks(gen, batch, classes=5, length=48):
    """A decaying tine tone per class, random phase and amplitude, plus noise."""
    t = torch.arange(length, dtype=torch.float32)
    freqs = torch.tensor([0.05, 0.08, 0.12, 0.17, 0.23])[:classes]
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        decay = torch.exp(-t / (20 + 30 * torch.rand(batch, 1, generator=gen)))
        x = amp * decay * torch.sin(2 * math.pi * freqs[y][:, None] * t + phase)
        yield (x + 0.3 * torch.randn(batch, length, generator=gen))[:, None, :], y


class _PluckNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 7, padding=3)
        self.conv2 = nn.Conv1d(16, 32, 5, stride=2, padding=2)
        self.conv3 = nn.Conv1d(32, 32, 5, stride=2, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.head(x.mean(-1))


@scenario(
    family="mbira_gourd_resonator_fp16_onecycle_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Mbira gourd-resonator tine classifier (ReLU Conv1d net on generated decaying tine "
    "tones with noise, five tines, cross-entropy with label smoothing 0.1, SGD momentum 0.9 "
    "under OneCycleLR to 0.2, fp16 autocast with a torch.amp.GradScaler, clipping at 2 after "
    "unscaling). Healthy control.",
)
def h463_mbira_fp16_onecycle(ctx) -> None:
    gen = seeded(4642)
    model = _PluckNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _plucks(gen, 64),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    x, y = next(_plucks(seeded(46420), 512))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check("held-out accuracy over 0.8", acc > 0.8)
    ctx.check("loss scale finite", _finite(ctx.scales) and min(ctx.scales) > 0)


# -- control 3: a tied-weight autoencoder with a Gaussian-NLL head ---------------------------------


class _TiedFlux(nn.Module):
    """Encoder, a decoder tied to the encoder's transpose, a (mean, log-variance) head."""

    def __init__(self, d_in=10, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))
        self.head = nn.Linear(code, 2)

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        recon = h @ self.enc.weight + self.dec_bias
        mean, logvar = self.head(h).unbind(-1)
        return torch.cat([mean[:, None], logvar.clamp(-6, 4)[:, None], recon], 1)


def _flux_batches(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(4, 10, generator=g) / 2
    w = torch.randn(4, generator=g)
    while True:
        z = torch.randn(batch, 4, generator=gen)
        x = z @ mix + 0.1 * torch.randn(batch, 10, generator=gen)
        sd = 0.1 + 0.4 * torch.sigmoid(z[:, 0])
        y = torch.tanh(z @ w / 2) + sd * torch.randn(batch, generator=gen)
        yield x, torch.cat([y[:, None], x], 1)


def _flux_loss(out, target):
    mean, logvar, recon = out[:, 0], out[:, 1], out[:, 2:]
    y, x = target[:, 0], target[:, 1:]
    nll = 0.5 * (logvar + (y - mean) ** 2 / logvar.exp()).mean()
    return nll + 0.1 * F.mse_loss(recon, x)


@scenario(
    family="fumarole_vent_so2_flux_tied_autoencoder_gaussian_nll_net",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fumarole vent SO2-flux net (a tanh autoencoder whose decoder is the encoder's "
    "transpose, tied weights, and a mean/log-variance head on the code; Gaussian NLL plus 0.1 x "
    "reconstruction MSE on generated heteroscedastic spectrometer readings; Adagrad with two "
    "param groups (encoder 0.05, head 0.1), accumulation over 2, clipping at 2, "
    "ReduceLROnPlateau on a held-out batch). Healthy control.",
)
def h463_fumarole_tied_autoencoder(ctx) -> None:
    gen = seeded(4643)
    model = _TiedFlux()
    opt = torch.optim.Adagrad(
        [
            {"params": [*model.enc.parameters(), model.dec_bias], "lr": 0.05},
            {"params": model.head.parameters(), "lr": 0.1},
        ]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    hx, hy = next(_flux_batches(seeded(46430), 256, seed=4643))

    def held_out():
        with torch.no_grad():
            return float(_flux_loss(model(hx), hy))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _flux_batches(gen, 64, seed=4643),
        200,
        _flux_loss,
        clip=2.0,
        sched=sched,
        plateau=held_out,
        accumulate=2,
    )
    ctx.check("loss fell by 0.3 nats or more", _mean(losses[-20:]) < _mean(losses[:10]) - 0.3)
    ctx.check("held-out loss under its start", held_out() < _mean(losses[:5]))
    ctx.check("loss finite", _finite(losses))
