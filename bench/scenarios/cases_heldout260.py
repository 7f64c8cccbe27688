"""Held-out set 260 (``h260_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a meteotsunami harbour-surge tanh regressor whose MultiStepLR decay
factor was typed 10 for 0.1 (plain SGD), a land-yacht beach-run speed regressor whose fc1 param
group key was typed 'Ir' for 'lr' with the optimizer's default lr 0 (AdamW), an ikebana school
student classifier distilled with the teacher's raw logits passed as soft targets (RMSprop), a
tenkara fly-drift ReLU regressor whose Adam lr was typed 1e-1 for 1e-3, an aufeis icing-growth net
taking the log of a water-air temperature gap that a warm spell makes negative (Adagrad), an ama
diver abalone-haul regressor fed one cooperative's hauls in grams (RAdam), an egg-jarping
crack-force regressor whose epoch-tail accumulation branch multiplies the loss by the
accumulation count (SGD momentum), a supraglacial-lake drainage ten-layer LeakyReLU MLP whose init
std is computed from the input width (SGD Nesterov), a shin-kicking bout BCE net whose new force
plate logs millinewtons under fp16 autocast (Adamax + GradScaler), a yagli-gures hold cosine
classifier whose temperature was typed 1e-3 for 1e-1 (NAdam), and three controls (a
heiligenschein dew-halo residual conv net with GroupNorm, OneCycleLR, label smoothing and
clipping; a harri-jasotzaile stone-lift Gaussian NLL net with clipping, param groups and
ReduceLROnPlateau; a bottle-kicking scrum-push Huber MLP under fp16 autocast with a GradScaler,
accumulation, warm-up + cosine and clipping on ASGD).

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

LR_METEO = 0.1


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


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    scale_loss=None,
    alter=None,
    unscale=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``unscale(step)`` runs after the backward passes (a
    hand-rolled loss scale), ``after(step)`` runs after the optimizer step; ``amp``: fp16
    autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
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
                out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if unscale is not None:
            unscale(step)
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
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

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


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
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


def _moved(model, w0):
    return {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm()) for n, p in model.named_parameters()
    }


# -- meteotsunami: MultiStepLR's decay factor typed 10 for 0.1 -----------------------------------

ONSET_METEO = 60


def _harbour_readings(gen, batch):
    return _readings(gen, batch, 10, 26001)


@scenario(
    family="meteotsunami_harbour_surge_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_METEO,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the peak harbour surge of a meteotsunami from 10 standardised readings (pressure-jump amplitude, squall-line speed, shelf depth, Proudman resonance mismatch, harbour length, ...), plain SGD at 0.1, MSE, a MultiStepLR meant to decay the rate tenfold at step 60 (gamma=0.1) with gamma typed 10: at step 60 the rate jumps from 0.1 to 1.0, lr x (top Hessian eigenvalue of the loss) goes from under 2 to over 2, and the loss oscillates with growing amplitude and blows up.",
)
def h260_meteotsunami_multistep_gamma_typo(ctx: Context) -> None:
    gen = seeded(26001)
    model = Stack(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=LR_METEO)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[ONSET_METEO], gamma=10.0)
    probe = next(_harbour_readings(torch.Generator().manual_seed(5), 256))
    seen = {}

    def before(step):
        if step in (ONSET_METEO - 1, ONSET_METEO):
            seen[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _harbour_readings(gen, 64), 140, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_METEO], ratio=0.7))
    ctx.check("finite before the onset", _finite(ls[:ONSET_METEO]))
    ctx.check("lr x sharpness under 2 just before the onset", seen.get(ONSET_METEO - 1, 99.0) < 2)
    ctx.check("lr x sharpness over 2 at the onset", seen.get(ONSET_METEO, 0.0) > 2)
    ctx.check(
        "the loss blew up after the onset (over 100x, or non-finite)",
        not _finite(ls) or max(ls[ONSET_METEO:]) > 100 * _mean(ls[ONSET_METEO - 10 : ONSET_METEO]),
    )


# -- land yacht: fc1's param group key typed 'Ir' for 'lr', the default lr 0 -----------------------


@scenario(
    family="landyacht_beach_run_speed_two_group_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a land yacht's top speed on a beach run from 12 standardised readings (wind speed, sail trim, sand firmness, wheelbase, pilot mass, ...), AdamW with param groups and weight decay 1e-2: the script passes lr=0.0 as the optimizer's default since every group sets its own rate, and the fc1 group's key was typed 'Ir' (capital i) for 'lr'. AdamW silently gives that group the default rate 0, so fc1 (the input layer) never moves (weight decay is scaled by the rate too) while fc2 and the head move by percents; the loss still falls on a frozen random input layer and stays finite, no blow-up.",
)
def h260_landyacht_group_key_typo(ctx: Context) -> None:
    def run(c, key):
        gen = seeded(26002)
        model = Stack(12, hidden=48, act=nn.SiLU)
        rest = [p for n, p in model.named_parameters() if not n.startswith("fc1")]
        opt = torch.optim.AdamW(
            [{"params": model.fc1.parameters(), key: 3e-3}, {"params": rest, "lr": 3e-3}],
            lr=0.0,
            weight_decay=1e-2,
        )
        w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        _train(c, model, opt, _readings(gen, 64, 12, 26002), 200, F.mse_loss)
        return _moved(model, w0), opt.param_groups[0]["lr"]

    twin = _Quiet()
    twin_moved, _ = run(twin, "lr")
    moved, fc1_lr = run(ctx, "Ir")
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.9))
    ctx.check("fc1's group ran at lr 0", fc1_lr == 0.0)
    ctx.check("fc1's weight moved under 1e-6 of its norm", moved["fc1.weight"] < 1e-6)
    ctx.check("fc2's weight moved over 1e-2 of its norm", moved["fc2.weight"] > 1e-2)
    ctx.check("the head's weight moved over 1e-2 of its norm", moved["head.weight"] > 1e-2)
    ctx.check("the intended key moves fc1 over 1e-2", twin_moved["fc1.weight"] > 1e-2)


# -- ikebana: distillation targets passed as the teacher's raw logits ------------------------------


@scenario(
    family="ikebana_arrangement_school_distilled_gelu_classifier",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU student classifier (fc1, act1, fc2, act2, head) telling which of 6 ikebana schools an arrangement follows from 16 standardised measurements (stem angles, height ratios of the shin/soe/hikae stems, vessel width, ...), distilled from a frozen teacher, RMSprop at 1e-3, loss 0.5 x cross-entropy on the hard labels + 0.5 x cross-entropy on the teacher's soft targets. The soft targets were passed as the teacher's raw (zero-mean) logits instead of their softmax: F.cross_entropy accepts them as class probabilities, the targets sum to about 0 with some entries positive, and the objective is unbounded below, so the head's logits grow steadily without bound and the loss goes negative; finite, no NaN in the run's length.",
)
def h260_ikebana_distill_raw_teacher_logits(ctx: Context) -> None:
    g = torch.Generator().manual_seed(26003)
    teacher = nn.Linear(16, 6)
    with torch.no_grad():
        teacher.weight.copy_(torch.randn(6, 16, generator=g) / 2)
        teacher.bias.zero_()

    def run(c, raw):
        gen = seeded(26003)
        batch = {}
        model = Stack(16, hidden=48, out=6, act=nn.GELU)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 16, 6, 26003))
        peak = []

        def loss_fn(logits, y):
            with torch.no_grad():
                t = teacher(batch["x"])
                t = t - t.mean(1, keepdim=True)
                soft = t if raw else t.softmax(-1)
            return 0.5 * F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(logits, soft)

        def alter(step, x, y):
            batch["x"] = x
            return x, y

        def after(step):
            with torch.no_grad():
                peak.append(float(model(probe[0]).abs().max()))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 6, 26003),
            200,
            loss_fn,
            classifier=True,
            alter=alter,
            after=after,
        )
        return peak

    twin = _Quiet()
    twin_peak = run(twin, raw=False)
    peak = run(ctx, raw=True)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak |logit| grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("the peak is still growing over the last 50 steps", peak[-1] > 1.2 * peak[-50])
    ctx.check("the loss went below zero", ls[-1] < 0)
    ctx.check("the intended soft targets keep the peak 3x smaller", twin_peak[-1] < peak[-1] / 3)


# -- tenkara: Adam's lr typed 1e-1 for 1e-3 -----------------------------------------------------


@scenario(
    family="tenkara_fly_drift_strike_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how long a tenkara (fixed-line) fly drifts before a trout strikes from 12 standardised readings (line length, current speed, fly weight, rod angle, water temperature, ...), Adam, MSE. The lr was meant to be 1e-3 and was typed 1e-1: within the first steps fc2's pre-activations are pushed negative and over half of act2's ReLU units stop firing on every input (measured on a probe batch of 2048) and never come back; the loss stays finite on the few live units, no blow-up.",
)
def h260_tenkara_adam_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(26004)
        model = Stack(12, hidden=64)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        probe = torch.randn(2048, 12, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            dead = [dead_fraction(model.features(probe))]

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _train(c, model, opt, _readings(gen, 64, 12, 26004), 200, F.mse_loss, after=after)
        return dead

    twin = _Quiet()
    twin_dead = run(twin, 1e-3)
    dead = run(ctx, 1e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("act2 under 5% dead before the first step", dead[0] < 0.05)
    ctx.check("act2 over half dead at the end", dead[-1] > 0.5)
    ctx.check("act2 stays over half dead over the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("the intended lr keeps act2 under 20% dead", twin_dead[-1] < 0.2)
    ctx.check(
        "no revival: act2's dead fraction never falls by over 0.05 after step 100",
        min(dead[101:]) > dead[101] - 0.05,
    )


# -- aufeis: log of the water-air temperature gap, a warm spell makes it negative -------------------

ONSET_AUFEIS = 90


class LogGap(nn.Module):
    """log(T_water - T_air) of the first two columns (degrees C): the freezing-gap feature."""

    def forward(self, x):
        return torch.log(x[:, :1] - x[:, 1:2])


class AufeisNet(nn.Module):
    """gap (LogGap) joined to the other readings -> fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_rest=6, hidden=48):
        super().__init__()
        self.gap = LogGap()
        self.fc1 = nn.Linear(d_rest + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.cat([self.gap(x), x[:, 2:]], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


def _aufeis_days(gen, batch, warm_from):
    """Spring-fed groundwater temperature (0.5..4 C), air temperature (-35..-3 C) and six
    standardised readings (spring discharge, snow cover, channel slope, ...); the target, the
    aufeis sheet's daily growth, standardised. From ``warm_from`` a quarter of each batch is from
    a mid-winter warm spell with air at +1..+6 C, warmer than the spring water."""
    step = 0
    while True:
        water = 0.5 + 3.5 * torch.rand(batch, generator=gen)
        air = -35 + 32 * torch.rand(batch, generator=gen)
        if step >= warm_from:
            air[: batch // 4] = 1 + 5 * torch.rand(batch // 4, generator=gen)
        rest = torch.randn(batch, 6, generator=gen)
        gap = torch.log((water - air).clamp(min=0.1))
        y = (gap - 2.7) / 0.6 + 0.5 * rest[:, 0] - 0.3 * torch.tanh(rest[:, 1])
        step += 1
        yield (
            torch.cat([water[:, None], air[:, None], rest], 1),
            y + 0.05 * torch.randn(batch, generator=gen),
        )


@scenario(
    family="aufeis_icing_sheet_growth_log_gap_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("gap",),
    diverges=ONSET_AUFEIS,
    heldout=True,
    onset=ONSET_AUFEIS,
    note="A SiLU MLP (gap, fc1, act1, fc2, act2, head) regressing the daily growth of an aufeis (overflow icing) sheet below a spring from the groundwater and air temperatures in degrees C and six standardised readings, Adagrad at 1e-2, MSE. The `gap` module computes log(T_water - T_air), the freezing-gap feature, with no clamp: every winter day before has air far colder than the spring water. From step 90 a quarter of each batch comes from a mid-winter warm spell with the air at +1..+6 C, warmer than the water: the difference is negative, `gap` takes the log of a negative number and produces NaN, and the loss is NaN at step 90.",
)
def h260_aufeis_log_negative_gap(ctx: Context) -> None:
    gen = seeded(26005)
    model = AufeisNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_AUFEIS:
            with torch.no_grad():
                seen["x_finite"] = bool(torch.isfinite(x).all())
                seen["warm_rows"] = int((x[:, 1] > x[:, 0]).sum())
                seen["gap_nan"] = bool(torch.isnan(model.gap(x)).any())

    _train(ctx, model, opt, _aufeis_days(gen, 64, ONSET_AUFEIS), 120, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_AUFEIS], ratio=0.7))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_AUFEIS)
    ctx.check("the onset batch is finite", seen.get("x_finite") is True)
    ctx.check("the onset batch has air warmer than water", seen.get("warm_rows", 0) > 0)
    ctx.check("gap produces NaN at the onset", seen.get("gap_nan") is True)


# -- ama diver: one cooperative's haul logged in grams, not standardised ---------------------------

ONSET_AMA = 120


@scenario(
    family="ama_diver_abalone_haul_silu_regressor",
    optimizer="RAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_AMA,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing an ama (Japanese free-diving) diver's abalone haul per session from 10 standardised readings (dive count, bottom time, water temperature, swell, reef depth, ...), RAdam at 3e-3, MSE, gradient clipping at 1.0. The batch at step 120 holds six rows from one diving cooperative whose log gives the haul in grams, and the loader passes them through unstandardised: those targets are in the thousands. The loss and the gradient spike at that step; the inputs are ordinary; clipped, the run recovers, finite, no divergence.",
)
def h260_ama_diver_haul_in_grams(ctx: Context) -> None:
    gen = seeded(26006)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_AMA:
            y = y.clone()
            y[:6] = 1500 + 2500 * torch.rand(6, generator=gen)
            seen["y_max"] = float(y.abs().max())
            seen["x_max"] = float(x.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 26006), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(ls[ONSET_AMA - 20 : ONSET_AMA])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_AMA], ratio=0.6))
    ctx.check("loss at the onset over 100x the median before", ls[ONSET_AMA] > 100 * before)
    ctx.check(
        "gradient at the onset over 100x the median before",
        gn[ONSET_AMA] > 100 * _median(gn[ONSET_AMA - 20 : ONSET_AMA]),
    )
    ctx.check("the onset targets hold the gram values", seen.get("y_max", 0.0) > 1000)
    ctx.check("the onset inputs are ordinary (max |x| under 6)", seen.get("x_max", 99.0) < 6)
    ctx.check(
        "the loss recovered within 60 steps (under 3x its pre-onset level)",
        _mean(ls[ONSET_AMA + 50 : ONSET_AMA + 60]) < 3 * before,
    )


# -- egg jarping: the epoch-tail accumulation step multiplies by the accumulation count ------------

ONSET_EGG = 100
ACCUM_EGG = 8


@scenario(
    family="egg_jarping_shell_crack_force_accum_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_EGG,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the force an egg's shell takes before it cracks in an egg-jarping (egg-tapping) contest from 8 standardised readings (shell thickness, egg length, boiling time, tap angle, ...), SGD with momentum 0.9 at 5e-3, MSE, gradient accumulation over 8 micro-batches of 16, clipping at 5. The loop has a separate branch for the last step of an epoch (step 100) which was written loss * accum_steps instead of loss / accum_steps: that one step's gradient is 64x that of the steps around it. The batches are ordinary; clipped, the run recovers; finite.",
)
def h260_egg_jarping_accum_tail_multiply(ctx: Context) -> None:
    gen = seeded(26007)
    model = Stack(8, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    xs = []

    def scale_loss(step, total):
        # total is loss / ACCUM_EGG; the tail branch's loss * ACCUM_EGG is 64x that
        return total * ACCUM_EGG * ACCUM_EGG if step == ONSET_EGG else total

    def watch(step, out, x, y):
        if step in (ONSET_EGG - 1, ONSET_EGG):
            xs.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 16, 8, 26007),
        180,
        F.mse_loss,
        scale_loss=scale_loss,
        watch=watch,
        accumulate=ACCUM_EGG,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_EGG - 20 : ONSET_EGG])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_EGG], ratio=0.6))
    ctx.check(
        "the gradient norm at the onset over 40x the median before", gn[ONSET_EGG] > 40 * before
    )
    ctx.check("the gradient norm 30 steps after back under 5x", gn[ONSET_EGG + 30] < 5 * before)
    ctx.check("the batches at the onset are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check(
        "the loss recovered within 60 steps (under 2x its pre-onset level)",
        _mean(ls[ONSET_EGG + 50 : ONSET_EGG + 60]) < 2 * _mean(ls[ONSET_EGG - 10 : ONSET_EGG]),
    )


# -- supraglacial lake: the init helper takes its std from the raw input width ---------------------


class DeepLeaky(nn.Module):
    """inp -> eight LeakyReLU layers (layers.0 .. layers.7) -> head."""

    def __init__(self, d_in=6, width=32, depth=8, init_fan=None):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        for m in [self.inp, *self.layers, self.head]:
            fan = init_fan or m.in_features
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan))
            nn.init.zeros_(m.bias)

    def forward(self, x):
        h = F.leaky_relu(self.inp(x), 0.01)
        for layer in self.layers:
            h = F.leaky_relu(layer(h), 0.01)
        return self.head(h).squeeze(-1)


@scenario(
    family="supraglacial_lake_drainage_deep_leaky_mlp",
    optimizer="SGD(nesterov=True)",
    cause="exploding_gradients",
    where=("inp", "layers.0", "layers.1"),
    diverges="auto",
    heldout=True,
    note="A ten-layer LeakyReLU MLP (inp, layers.0 .. layers.7, head) regressing how fast a supraglacial meltwater lake drains through a hydrofracture from 6 standardised readings (lake volume, ice thickness, surface velocity, air temperature, ...), SGD with Nesterov momentum 0.9 at 1e-3, MSE. The init helper meant to draw each layer's weights with He's std sqrt(2 / fan_in) and was written sqrt(2 / n_features) with the dataset's 6 input features for every layer: each 32-wide layer's std is 2.3x too large, the activations and the gradients grow layer by layer, at step 0 the gradient with respect to inp's output is over 50x that with respect to the last layer's, the first updates throw the weights far off and the loss blows up.",
)
def h260_supraglacial_init_fan_typo(ctx: Context) -> None:
    gen = seeded(26008)
    model = DeepLeaky(init_fan=6)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    seen = {}
    batches = _readings(gen, 64, 6, 26008)
    ctx.attach(model, opt)
    for step in range(80):
        x, y = next(batches)
        states = []
        h = F.leaky_relu(model.inp(x), 0.01)
        h.retain_grad()
        states.append(h)
        for layer in model.layers:
            h = F.leaky_relu(layer(h), 0.01)
            h.retain_grad()
            states.append(h)
        loss = F.mse_loss(model.head(h).squeeze(-1), y)
        loss.backward()
        if step == 0:
            seen["ratio"] = float(states[0].grad.norm() / states[-1].grad.norm())
            seen["loss0"] = float(loss.detach())
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    twin = DeepLeaky()
    with torch.no_grad():
        x, y = next(_readings(torch.Generator().manual_seed(1), 256, 6, 26008))
        twin_loss = float(F.mse_loss(twin(x), y))
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at inp's output over 50x that at the last layer's (step 0)",
        seen.get("ratio", 0.0) > 50,
    )
    ctx.check(
        "the step-0 loss over 100x the intended init's", seen.get("loss0", 0.0) > 100 * twin_loss
    )
    ctx.check(
        "the loss blew up (over 1000x its start, or non-finite)",
        not _finite(ls) or max(ls) > 1000 * ls[0],
    )
    ctx.check(
        "the gradient norm grew over 100x",
        not _finite(gn) or max(gn) > 100 * gn[0],
    )


# -- shin kicking: a replacement force plate logs millinewtons, fc1 overflows in fp16 -------------

ONSET_SHIN = 100


def _kick_bouts(gen, batch, raw_from):
    """12 standardised readings of a shin-kicking bout (force-plate peak force in column 0, kick
    rate, stance width, straw padding, ...) and whether the first kicker wins. From ``raw_from``
    the replacement force plate's firmware logs newtons x 1000 (millinewtons) unstandardised."""
    g = torch.Generator().manual_seed(26009)
    w = torch.randn(12, generator=g)
    step = 0
    while True:
        x = torch.randn(batch, 12, generator=gen)
        y = (x @ w / math.sqrt(12) + 0.5 * torch.randn(batch, generator=gen) > 0).float()
        if step >= raw_from:
            x = x.clone()
            x[:, 0] = (900 + 250 * x[:, 0]) * 1000
        step += 1
        yield x, y


@scenario(
    family="shin_kicking_bout_outcome_fp16_bce_net",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ONSET_SHIN,
    heldout=True,
    onset=ONSET_SHIN,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting whether the first kicker wins a shin-kicking bout at the Cotswold Olimpicks from 12 standardised readings (force-plate peak force, kick rate, stance width, straw padding, ...), BCE with logits, Adamax at 2e-3, fp16 autocast with a torch.amp.GradScaler. From step 100 a replacement force plate logs the peak force in millinewtons (about 9e5) and the loader does not standardise it: fc1's fp16 matmul overflows the float16 range (65504) to inf under autocast while the same product in float32 is finite, and the loss is non-finite from step 100.",
)
def h260_shin_kicking_fp16_force_plate(ctx: Context) -> None:
    gen = seeded(26009)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_SHIN:
            with torch.no_grad():
                seen["x_finite"] = bool(torch.isfinite(x).all())
                with torch.autocast("cpu", dtype=torch.float16):
                    h16 = model.fc1(x)
                seen["fc1_fp16_finite"] = bool(torch.isfinite(h16).all())
                seen["fc1_fp32_finite"] = bool(torch.isfinite(model.fc1(x)).all())

    _train(
        ctx,
        model,
        opt,
        _kick_bouts(gen, 64, ONSET_SHIN),
        130,
        F.binary_cross_entropy_with_logits,
        watch=watch,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SHIN], ratio=0.9))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_SHIN)
    ctx.check("the onset batch is finite", seen.get("x_finite") is True)
    ctx.check("fc1's fp16 output overflows at the onset", seen.get("fc1_fp16_finite") is False)
    ctx.check("fc1's float32 output is finite at the onset", seen.get("fc1_fp32_finite") is True)


# -- yagli gures: a cosine classifier's temperature typed 1e-3 for 1e-1 ----------------------------


class CosineClassifier(nn.Module):
    """fc1 -> act1 -> fc2 -> head: cosine of normalised features and class weights / tau."""

    def __init__(self, d_in, classes, tau, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes, bias=False)
        self.tau = tau

    def forward(self, x):
        h = F.normalize(self.fc2(self.act1(self.fc1(x))), dim=-1)
        return F.linear(h, F.normalize(self.head.weight, dim=-1)) / self.tau


@scenario(
    family="yagli_gures_oil_wrestling_hold_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A cosine classifier (fc1, act1, fc2, head: cosine between normalised features and normalised class weights, divided by a temperature) telling which of 6 holds a yagli gures (Turkish oil wrestling) pehlivan wins with from 16 standardised wrestling-sensor readings, NAdam at 1e-3, cross-entropy. The temperature was meant to be 0.1 and was typed 0.001: logits reach +-1000, within the first tens of steps the float32 softmax rounds most targets' probabilities to exactly 1, those rows' gradients vanish and the wrong rows carry huge losses; the intended temperature keeps the probabilities soft. Finite, no blow-up.",
)
def h260_yagli_gures_cosine_temperature_typo(ctx: Context) -> None:
    def run(c, tau):
        gen = seeded(26010)
        model = CosineClassifier(16, 6, tau)
        opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 16, 6, 26010))
        fr = []

        def after(step):
            with torch.no_grad():
                fr.append(collapsed_fraction(model(probe[0]), probe[1]))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 6, 26010),
            150,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return fr

    twin = _Quiet()
    twin_fr = run(twin, 0.1)
    fr = run(ctx, 0.001)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half the probe rows saturate to exactly 1 by step 40", fr[40] > 0.5)
    ctx.check("over half saturate at the end", fr[-1] > 0.5)
    ctx.check("the intended temperature saturates under 10%", twin_fr[-1] < 0.1)


# -- healthy controls -------------------------------------------------------------------------------


class GNResBlock(nn.Module):
    """conv1 -> gn1 -> relu -> conv2 -> gn2, plus the input, -> relu."""

    def __init__(self, ch, groups=4):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(groups, ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(groups, ch)

    def forward(self, x):
        h = F.relu(self.gn1(self.conv1(x)))
        return F.relu(x + self.gn2(self.conv2(h)))


class HaloResNet(nn.Module):
    """stem (conv + GroupNorm) -> block1 -> block2 -> global average pool -> head."""

    def __init__(self, ch=16, classes=4):
        super().__init__()
        self.stem = nn.Conv2d(1, ch, 3, padding=1, bias=False)
        self.stem_gn = nn.GroupNorm(4, ch)
        self.block1 = GNResBlock(ch)
        self.block2 = GNResBlock(ch)
        self.head = nn.Linear(ch, classes)

    def forward(self, x):
        h = F.relu(self.stem_gn(self.stem(x)))
        h = self.block2(self.block1(h))
        return self.head(h.mean((2, 3)))


def _halo_frames(gen, batch, classes=4, size=12):
    """12x12 camera frames of dewy grass around an observer's shadow: a bright halo ring
    (heiligenschein) whose radius and width depend on the kind (4 kinds of dew / grass), with
    a random centre offset and noise."""
    c = torch.arange(size).float() - (size - 1) / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    radius = torch.tensor([1.5, 2.5, 3.5, 4.5])
    width = torch.tensor([0.6, 1.0, 0.6, 1.2])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        off = torch.randn(batch, 2, 1, 1, generator=gen)
        r = torch.sqrt((xx - off[:, 0]) ** 2 + (yy - off[:, 1]) ** 2)
        img = torch.exp(-(((r - radius[y][:, None, None]) / width[y][:, None, None]) ** 2))
        img = img + 0.4 * torch.randn(batch, size, size, generator=gen)
        yield img[:, None], y


@scenario(
    family="heiligenschein_dew_halo_gn_resnet",
    optimizer="SGD(nesterov=True)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a convolutional net with residual blocks and GroupNorm (stem, stem_gn, block1, block2 each conv1/gn1/conv2/gn2 with a skip, head on the global average pool) telling which of 4 kinds of dew and grass makes the heiligenschein (the bright halo of dew around an observer's shadow) in noisy 12x12 camera frames, SGD with Nesterov momentum 0.9 and weight decay 5e-4, OneCycleLR (max_lr 0.05), cross-entropy with label smoothing 0.1, gradient clipping at 2.0. Trains normally.",
)
def h260_heiligenschein_gn_resnet_control(ctx: Context) -> None:
    gen = seeded(26011)
    steps = 150
    model = HaloResNet()
    opt = torch.optim.SGD(
        model.parameters(), lr=2e-3, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps, pct_start=0.3)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _halo_frames(gen, 32),
        steps,
        loss_fn,
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ls = ctx.losses
    x, y = next(_halo_frames(torch.Generator().manual_seed(4), 512))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("held-out accuracy over 0.7", acc > 0.7)


class GaussianHeadNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2, then mean and log_var heads."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], 1)


def _gaussian_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="harri_jasotzaile_stone_lift_time_gaussian_nll_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2) with mean and log_var heads predicting a Gaussian over the time a harri-jasotzaile (Basque stone lifter) takes for a set of lifts from 10 standardised readings (stone mass and shape, lifter mass, number of lifts, ...) with noise whose spread depends on the inputs, Gaussian negative log-likelihood (F.gaussian_nll_loss), Adam at 3e-3 with param groups (weight decay 1e-4 on weights, none on biases), ReduceLROnPlateau, gradient clipping at 1.0. Trains normally.",
)
def h260_harri_jasotzaile_gaussian_nll_control(ctx: Context) -> None:
    gen = seeded(26012)
    model = GaussianHeadNet(10)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.Adam(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    stream = _readings(gen, 64, 10, 26012, noise=0.0)

    def hetero():
        while True:
            x, y = next(stream)
            sd = 0.05 + 0.25 * torch.sigmoid(x[:, 2])
            yield x, y + sd * torch.randn(y.shape, generator=gen)

    _train(ctx, model, opt, hetero(), 200, _gaussian_nll, sched=sched, clip=1.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)


@scenario(
    family="bottle_kicking_scrum_push_fp16_huber_mlp",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) regressing how far the scrum pushes the barrel in a Hallaton bottle-kicking match each minute from 12 standardised readings (players on each side, slope, mud depth, ...) with Student-t noise, ASGD at 0.1, linear warm-up then cosine (LambdaLR), Huber loss, gradient accumulation over 2, gradient clipping at 1.0, fp16 autocast with a torch.amp.GradScaler. Trains normally.",
)
def h260_bottle_kicking_fp16_huber_control(ctx: Context) -> None:
    gen = seeded(26013)
    steps = 180
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.1)

    def lam(step):
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    stream = _readings(gen, 32, 12, 26013, noise=0.0)
    t = torch.distributions.StudentT(3.0)

    def noisy():
        while True:
            x, y = next(stream)
            yield x, y + 0.1 * t.sample(y.shape)

    def loss_fn(out, y):
        return F.huber_loss(out.float(), y, delta=1.0)

    _train(
        ctx,
        model,
        opt,
        noisy(),
        steps,
        loss_fn,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("the loss scale stayed finite", all(math.isfinite(s) and s > 0 for s in ctx.scales))
