"""Held-out set 251 (``h251_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a guilloche rose-engine chatter BCE tagger whose resumed
run builds its criterion with reduction='sum' for one step, a passementerie tassel-grade deep
ReLU classifier initialised orthogonal with gain 2 (the squared ReLU gain) for sqrt(2), a nilas
sea-ice thickness regressor whose buoy's thermistor string slips and drifts the targets, a
jereed javelin-outcome classifier whose softmax temperature was typed 2e-3 for 2e-1, a
damascening gold-inlay groove net whose depth spread is std/mean with no guard (0/0 on a
disconnected profilometer), a flugelhorn valve-leak pressure regressor fed one shard with targets
in pascals for hectopascals, a japanning varnish-stoving Gaussian NLL net whose mean head param
group lr was typed 2e-9 for 2e-3, a niello inlay fusing-temperature tanh regressor whose warm
restart peak multiplier was typed 20 for 0.5, a boulle marquetry brass-shell ReLU classifier
under NAdam at lr 3e-1 for 3e-3, a zonda wind-gust 1-D conv net fed one logger's raw ADC counts
under fp16 autocast, and three controls (an ormolu fire-gilding GELU MLP under fp16 autocast with
a GradScaler, warm-up + cosine and clipping; a crewel stitch-type classifier with OneCycleLR,
SGD Nesterov, label smoothing and noisy labels; an oak-swill basket tied-weight autoencoder with
RAdam, ReduceLROnPlateau and accumulation).

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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``weight(step, x, y, out,
    loss)`` returns what is backpropagated, ``after(step)`` runs after the optimizer step; ``amp``
    turns on fp16 autocast; stops after logging a NaN loss."""
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
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if weight is not None:
                total = weight(step, x, y, out, total)
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
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
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


def _kinds(gen, batch, d_in, classes, seed, noise=0.35, flip=0.0):
    """Readings around one prototype per class, overlapping; ``flip`` of the labels random."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        if flip > 0:
            wrong = torch.rand(batch, generator=gen) < flip
            y = torch.where(wrong, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


class Net(nn.Module):
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


def _sharpness(model, loss_fn, batch, iters=25) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- guilloche rose engine: the resumed run's criterion sums instead of averaging for one step -----

ONSET_ROSE = 120


@scenario(
    family="guilloche_rose_engine_chatter_bce_tagger",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ROSE,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) tagging which of 6 cut faults (chatter, skipped rosette, torn burr, ...) a guilloche rose-engine pass shows, from 12 standardised readings (spindle speed, rubber pressure, cutter depth, ...), SGD with momentum 0.9 at 5e-2, multi-label BCE with logits. The job is resumed from a checkpoint at step 120, and the resume path builds its first criterion with nn.BCEWithLogitsLoss(reduction='sum') (the default of an old helper) before the loop rebuilds it with 'mean': for that one step the backpropagated loss is the sum over 64 x 6 entries, the gradient about 384x its usual size. The data are ordinary; the run takes one big jolt and recovers.",
)
def h251_guilloche_resume_sum_reduction(ctx: Context) -> None:
    gen = seeded(25101)
    g = torch.Generator().manual_seed(11)
    w = torch.randn(12, 6, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 12, generator=gen)
            logits = 1.5 * torch.tanh(x @ w / 2) + 0.3 * torch.randn(64, 6, generator=gen)
            yield x, (logits > 0.4).float()

    model = Net(12, hidden=48, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    summed = nn.BCEWithLogitsLoss(reduction="sum")

    def weight(step, x, y, out, total):
        if step == ONSET_ROSE:
            return summed(out.float(), y)  # the resume path's criterion
        return total

    _loop(ctx, model, opt, batches(), 280, F.binary_cross_entropy_with_logits, weight=weight)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_ROSE - 20 : ONSET_ROSE])
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_ROSE], ratio=0.7))
    ctx.check("gradient at the onset over 50x the median before", gn[ONSET_ROSE] > 50 * before)
    ctx.check(
        "gradient back under 5x the median 30 steps later",
        _median(gn[ONSET_ROSE + 30 : ONSET_ROSE + 50]) < 5 * before,
    )
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check(
        "loss recovers (last 20 under 1.5x the 20 before the onset)",
        _mean(ls[-20:]) < 1.5 * _mean(ls[ONSET_ROSE - 20 : ONSET_ROSE]),
    )


# -- passementerie tassel grade: orthogonal init with gain 2 for sqrt(2) through 16 ReLU layers ----


class DeepNet(nn.Module):
    """inp -> 16 x (Linear, ReLU) in ``blocks`` -> head."""

    def __init__(self, d_in, width=32, depth=16, classes=5, gain=1.4142135623730951):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, classes)
        for m in [self.inp, *self.blocks]:
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)
        self.hidden: list[torch.Tensor] = []

    def forward(self, x):
        self.hidden = []
        h = self.inp(x)
        for block in self.blocks:
            if h.requires_grad:
                h.retain_grad()
            self.hidden.append(h)
            h = block(F.relu(h))
        return self.head(F.relu(h))


@scenario(
    family="passementerie_tassel_grade_deep_relu_classifier",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("inp", "blocks.0", "blocks.1"),
    diverges="auto",
    heldout=True,
    note="A deep ReLU MLP (inp, blocks.0..blocks.15 with functional ReLU, head) grading passementerie tassels into 5 grades from 20 standardised readings (skirt fullness, bullion twist, head weight, ...), plain SGD at 1e-2, cross-entropy. The init helper calls nn.init.orthogonal_(w, gain=2.0): the squared ReLU gain was typed for calculate_gain('relu') = sqrt(2). Every layer then amplifies the backward signal by about sqrt(2): at step 0 the gradient with respect to the first hidden pre-activation is over 100x that at the last block, the logits are huge and the first SGD updates blow the network up.",
)
def h251_passementerie_orthogonal_gain(ctx: Context) -> None:
    gen = seeded(25102)
    model = DeepNet(20, gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    seen = {}

    def after_backward_probe():
        hs = model.hidden
        if hs and hs[0].grad is not None and hs[-1].grad is not None:
            seen["ratio"] = float(hs[0].grad.norm() / hs[-1].grad.norm().clamp_min(1e-30))

    batches = _kinds(gen, 64, 20, 5, seed=12)
    ctx.attach(model, opt)
    first = None
    for step in range(60):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if step == 0:
            after_backward_probe()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if first is None:
            first = float(loss.detach())
        if math.isnan(float(loss.detach())):
            break
    ls = ctx.losses
    # the same net with the intended gain, for contrast
    twin = DeepNet(20, gain=math.sqrt(2))
    x, y = next(_kinds(torch.Generator().manual_seed(3), 64, 20, 5, seed=12))
    F.cross_entropy(twin(x), y).backward()
    twin_ratio = float(twin.hidden[0].grad.norm() / twin.hidden[-1].grad.norm())
    ctx.check("backward gain first/last hidden over 100x at step 0", seen.get("ratio", 0) > 100)
    ctx.check("the intended gain keeps it under 10x", twin_ratio < 10)
    ctx.check(
        "loss blows up (non-finite or over 100x its start)",
        _first_bad(ls) is not None or max(ls) > 100 * first,
    )


# -- nilas sea-ice thickness: the buoy's thermistor string slips and the targets drift ------------

ONSET_NILAS = 60


@scenario(
    family="nilas_ice_thickness_buoy_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_NILAS,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing new nilas sea-ice thickness from 10 standardised readings (air temperature, wind, snow depth, ocean heat flux, ...) against an ice-mass-balance buoy's thermistor-string thickness, Adagrad at 3e-3, MSE. From step 60 the thermistor string slips slowly through its mount and every reference thickness reads 0.02 (standardised units) more per step. Adagrad's shrinking step cannot keep up with a linear drift: after its low the loss climbs slowly and steadily to many times that low. No spike, no NaN, no bad batch; the same run without the slip keeps its low.",
)
def h251_nilas_thermistor_slip(ctx: Context) -> None:
    steps = 240

    def run(c, drift):
        gen = seeded(25103)
        model = Net(10, hidden=48, act=nn.GELU)
        opt = torch.optim.Adagrad(model.parameters(), lr=3e-3)
        stream = _readings(gen, 64, 10, seed=13)

        def batches():
            step = 0
            while True:
                x, y = next(stream)
                yield x, y + drift * max(step - ONSET_NILAS, 0)
                step += 1

        _loop(c, model, opt, batches(), steps, F.mse_loss)

    twin = _Quiet()
    run(twin, 0.0)
    run(ctx, 0.02)
    ls = ctx.losses
    win = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9)]
    lo = min(win)
    at = win.index(lo)
    jumps = max(ls[i + 1] / max(ls[i], 1e-12) for i in range(len(ls) - 1))
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check("the low comes in the first half", at < steps // 2)
    ctx.check("last 10 steps over 4x the low", _mean(ls[-10:]) > 4 * lo)
    ctx.check("climb is steady (no step over 3x the one before)", jumps < 3)
    ctx.check("without the slip the loss stays near its low", _mean(twin.losses[-10:]) < 1.5 * lo)


# -- jereed javelin outcome: the softmax temperature typed 2e-3 for 2e-1 --------------------------


class TempNet(Net):
    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, hidden=64, out=classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="jereed_javelin_outcome_temperature_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying a jereed throw's outcome (clean hit, glancing hit, caught, dodged, missed) from 14 standardised readings of horse speed, rider angle and javelin release, Adam at 1e-3, cross-entropy on head's logits divided by a temperature. The config meant temperature 2e-1 and says 2e-3: the logits are 500x too sharp, the float32 softmax of most rows rounds the winning class to exactly 1.0 (the others to 0) and the loss on rows it gets wrong is huge; the intended temperature keeps the probabilities soft.",
)
def h251_jereed_temperature_typo(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(25104)
        model = TempNet(14, 5, temperature)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        fracs = []

        def watch(step, out, x, y):
            fracs.append(collapsed_fraction(out.detach(), y))

        _loop(
            c,
            model,
            opt,
            _kinds(gen, 64, 14, 5, seed=14, noise=0.5),
            120,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return fracs

    twin = run(_Quiet(), 2e-1)
    fracs = run(ctx, 2e-3)
    ctx.check("over half the rows' softmax exactly 1.0 at the end", _mean(fracs[-10:]) > 0.5)
    ctx.check("with the intended temperature under 5%", _mean(twin[-10:]) < 0.05)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- damascening gold inlay: groove-depth spread as std/mean with no guard -------------------------

ONSET_INLAY = 90


class CoefVar(nn.Module):
    """The coefficient of variation of a row of readings: std / mean (no epsilon)."""

    def forward(self, x):
        m = x.mean(1, keepdim=True)
        sd = ((x - m) ** 2).mean(1, keepdim=True).sqrt()
        return sd / m


class InlayNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.spread = CoefVar()
        self.fc1 = nn.Linear(17, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        cv = self.spread(x)
        z = torch.cat([(x - 40.0) / 5.0, 10.0 * cv], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


@scenario(
    family="damascening_gold_inlay_groove_ratio_net",
    optimizer="AdamW",
    cause="nonfinite",
    where=("spread",),
    diverges=ONSET_INLAY,
    heldout=True,
    onset=ONSET_INLAY,
    note="A SiLU MLP (spread, fc1, act1, fc2, act2, head) regressing the gold-wire fill of a damascened groove from 16 raw groove-depth readings in micrometres (about 40 +- 5) and their coefficient of variation, computed in the module spread as sqrt(mean((x - m)^2)) / m with no epsilon or clamp. AdamW at 2e-3, MSE. At step 90 the profilometer's cable is unplugged for a few pieces and their 16 readings log as 0.0: spread divides 0 by 0, its output is NaN and the loss is NaN at step 90. The inputs themselves are finite.",
)
def h251_damascening_cv_zero(ctx: Context) -> None:
    gen = seeded(25105)
    stream = _readings(gen, 64, 16, seed=15)

    def batches():
        step = 0
        while True:
            x, y = next(stream)
            raw = 40.0 + 5.0 * x
            if step == ONSET_INLAY:
                raw[:3] = 0.0  # the cable was unplugged
            yield raw, y
            step += 1

    model = InlayNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_INLAY:
            seen["x_finite"] = bool(torch.isfinite(x).all())
            seen["zero_rows"] = int((x == 0).all(1).sum())
            with torch.no_grad():
                seen["spread_finite"] = bool(torch.isfinite(model.spread(x)).all())

    _loop(ctx, model, opt, batches(), 120, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_INLAY], ratio=0.6))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_INLAY)
    ctx.check("inputs finite at the onset", seen.get("x_finite") is True)
    ctx.check("some rows all zero at the onset", seen.get("zero_rows", 0) > 0)
    ctx.check("spread's output non-finite at the onset", seen.get("spread_finite") is False)


# -- flugelhorn valve leak: one shard's targets in pascals for hectopascals -----------------------

ONSET_HORN = 130


@scenario(
    family="flugelhorn_valve_leak_pressure_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_HORN,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the back-pressure drop across a flugelhorn's piston valves from 12 standardised leak-test readings (piston clearance, oil film, spring force, ...), ASGD at 3e-2, MSE. The pressure targets are standardised hectopascals; one shard, written by a test rig whose export was switched to pascals, supplies the batch of step 130 with targets 100x too large. The loss jumps by orders of magnitude for that batch; the data around it are ordinary and the run recovers.",
)
def h251_flugelhorn_pascal_shard(ctx: Context) -> None:
    gen = seeded(25106)
    model = Net(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=3e-2, t0=1e9)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_HORN:
            y = 100.0 * y  # the pascal shard
            seen["y_max"] = float(y.abs().max())
        elif step == ONSET_HORN - 1:
            seen["y_max_before"] = float(y.abs().max())
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 12, seed=16), 260, F.mse_loss, alter=alter)
    ls = ctx.losses
    pre = _median(ls[ONSET_HORN - 20 : ONSET_HORN])
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_HORN], ratio=0.6))
    ctx.check(
        "targets at the onset over 20x the batch before",
        seen.get("y_max", 0) > 20 * seen.get("y_max_before", 1e9),
    )
    ctx.check("loss at the onset over 100x the median before", ls[ONSET_HORN] > 100 * pre)
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check(
        "loss recovers (last 20 under 2x the 20 before)",
        _mean(ls[-20:]) < 2 * _mean(ls[ONSET_HORN - 20 : ONSET_HORN]),
    )


# -- japanning varnish stoving: the mean head's param group lr typed 2e-9 for 2e-3 ----------------


class GaussNet(nn.Module):
    """A trunk (fc1, act1, fc2, act2) and two heads: mean_head and logvar_head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean_head = nn.Linear(hidden, 1)
        self.logvar_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.logvar_head(h)], 1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp().clamp_min(1e-4))


@scenario(
    family="japanning_varnish_stoving_gaussian_nll_two_group_net",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("mean_head",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, mean_head, logvar_head) predicting the hardness of a japanned (stoved black varnish) tin panel as a Gaussian (mean and log-variance) from 11 standardised readings (oven temperature, coat thickness, linseed fraction, ...), Adamax with two param groups, Gaussian NLL. The trunk and logvar_head group runs at 2e-3 as meant; the mean_head group's lr was typed 2e-9 for 2e-3: mean_head's weights barely move (relative change under 1e-4 over the run) while the trunk's change by percent (with the intended rate mean_head moves by percent too); the trunk compensates and nothing blows up.",
)
def h251_japanning_head_group_typo(ctx: Context) -> None:
    def run(c, head_lr):
        gen = seeded(25107)
        model = GaussNet(11)
        w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        head = list(model.mean_head.parameters())
        rest = [p for n, p in model.named_parameters() if not n.startswith("mean_head")]
        opt = torch.optim.Adamax([{"params": rest, "lr": 2e-3}, {"params": head, "lr": head_lr}])
        _loop(c, model, opt, _readings(gen, 64, 11, seed=17, noise=0.2), 200, _gauss_nll)
        return {
            n: float((p.detach() - w0[n]).norm() / w0[n].norm())
            for n, p in model.named_parameters()
        }

    twin = run(_Quiet(), 2e-3)
    moved = run(ctx, 2e-9)
    ls = ctx.losses
    ctx.check("mean_head weight moved under 1e-4 relative", moved["mean_head.weight"] < 1e-4)
    ctx.check("fc1 weight moved over 1e-2 relative", moved["fc1.weight"] > 1e-2)
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check("with the intended rate mean_head moves over 1e-2", twin["mean_head.weight"] > 1e-2)


# -- niello fusing temperature: the warm restart's peak multiplier typed 20 for 0.5 ---------------

ONSET_NIELLO = 100


@scenario(
    family="niello_inlay_fusing_temperature_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_NIELLO,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the fusing temperature at which a niello (sulphide alloy) inlay flows, from 10 standardised readings (silver/copper/lead fractions, sulphur, flux, plate thickness, ...), plain SGD with a hand-written cosine schedule with warm restarts every 100 steps from a base lr of 5e-2, MSE. Each restart was meant to peak at 0.5x the previous cycle's peak; the multiplier was typed 20: at step 100 the lr jumps to 1.0 while the loss's sharpness allows at most 2/sharpness, an order of magnitude less. lr x sharpness goes from under 2 to far over 2 and the loss blows up.",
)
def h251_niello_restart_multiplier(ctx: Context) -> None:
    gen = seeded(25108)
    model = Net(10, hidden=32, act=nn.Tanh)
    base = 5e-2
    opt = torch.optim.SGD(model.parameters(), lr=base)
    batches = _readings(gen, 64, 10, seed=18)
    probe = next(batches)
    seen = {}

    def lr_at(step):
        cycle, t = divmod(step, 100)
        peak = base * 20.0**cycle  # the typo: 20 for 0.5
        return 0.1 * peak + 0.9 * peak * 0.5 * (1 + math.cos(math.pi * t / 100))

    def before(step):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        if step == ONSET_NIELLO:
            seen["sharp"] = _sharpness(model, F.mse_loss, probe)

    _loop(ctx, model, opt, batches, 160, F.mse_loss, before=before)
    ls = ctx.losses
    sharp = seen.get("sharp", float("nan"))
    pre = min(ls[:ONSET_NIELLO])
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_NIELLO], ratio=0.5))
    ctx.check("lr x sharpness under 2 before the restart", lr_at(ONSET_NIELLO - 1) * sharp < 2)
    ctx.check("lr x sharpness over 4 at the restart", lr_at(ONSET_NIELLO) * sharp > 4)
    ctx.check(
        "loss blows up after the restart (over 100x the low, or non-finite)",
        any(not math.isfinite(v) or v > 100 * pre for v in ls[ONSET_NIELLO:]),
    )
    ctx.check("loss finite before the restart", _finite(ls[:ONSET_NIELLO]))


# -- boulle marquetry brass shell: NAdam at 3e-1 for 3e-3 kills the ReLUs -------------------------


@scenario(
    family="boulle_marquetry_brass_shell_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying which of 6 boulle-work defects (lifted brass, cracked tortoiseshell, glue bleed, ...) a marquetry panel shows from 16 standardised readings, NAdam, cross-entropy. The lr was typed 3e-1 for 3e-3: the first large steps push fc2's pre-activations negative for every input and most of act2's units die for good; the run ends at a loss several times the intended run's, whose units stay alive.",
)
def h251_boulle_nadam_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(25109)
        model = Net(16, hidden=64, out=6)
        opt = torch.optim.NAdam(model.parameters(), lr=lr)
        dead = []

        def watch(step, out, x, y):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(x)))

        _loop(
            c,
            model,
            opt,
            _kinds(gen, 128, 16, 6, seed=19, noise=0.8),
            150,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return dead

    twin = _Quiet()
    twin_dead = run(twin, 3e-3)
    dead = run(ctx, 3e-1)
    ctx.check("under 20% of act2 dead at step 0", dead[0] < 0.2)
    ctx.check("over half of act2 dead over the last 30 steps", min(dead[-30:]) > 0.5)
    ctx.check("the intended lr keeps act2 under 20% dead", max(twin_dead[-30:]) < 0.2)
    ctx.check(
        "the loss ends far above the intended run's",
        _mean(ctx.losses[-20:]) > 2 * _mean(twin.losses[-20:]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- zonda wind gust: one logger's raw ADC counts into an fp16 1-D conv net -----------------------

ONSET_ZONDA = 100


class GustConv(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> mean over time -> head, on (batch, 3, 64) series."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(2)).squeeze(-1)


def _gust_series(gen, batch, counts_from):
    """Three standardised series (pressure, temperature, wind speed) over 64 ten-minute steps
    on the lee of the Andes, and the next hour's peak gust. From ``counts_from`` one logger's
    rows arrive as raw 16-bit ADC counts (about 30000 to 60000) instead."""
    t = torch.arange(64, dtype=torch.float32)
    step = 0
    while True:
        onset = torch.rand(batch, 1, generator=gen) * 64
        strength = torch.rand(batch, 1, generator=gen)
        ramp = torch.sigmoid((t - onset) / 3.0) * strength
        p = -2.0 * ramp + 0.3 * torch.randn(batch, 64, generator=gen)
        temp = 1.5 * ramp + 0.3 * torch.randn(batch, 64, generator=gen)
        wind = 2.0 * ramp + 0.3 * torch.randn(batch, 64, generator=gen)
        x = torch.stack([p, temp, wind], 1)
        y = 2.0 * strength.squeeze(1) * torch.sigmoid((64 - onset.squeeze(1)) / 8.0)
        if step >= counts_from:
            x[: batch // 4] = (45000.0 + 5000.0 * x[: batch // 4]).clamp(0.0, 65000.0)
        step += 1
        yield x, y


@scenario(
    family="zonda_wind_gust_fp16_conv1d",
    optimizer="RMSprop",
    cause="amp_overflow",
    where=("conv1",),
    diverges=ONSET_ZONDA,
    heldout=True,
    onset=ONSET_ZONDA,
    note="A 1-D conv net (conv1, act1, conv2, act2, time mean, head) forecasting the next hour's peak zonda (foehn-type Andes lee wind) gust from 64 ten-minute steps of three standardised series (pressure, temperature, wind speed), RMSprop at 1e-3, Huber loss, fp16 autocast with a torch.amp.GradScaler. From step 100 a newly added station's logger sends raw 16-bit ADC counts (about 30000 to 60000, each finite in fp16) and the loader, which standardises by station id, has no entry for it and passes them on. conv1's fp16 convolution sums 15 taps of such values past 65504: its output is inf under autocast, the prediction non-finite and the loss NaN at step 100. The same batch in float32 gives a finite output.",
)
def h251_zonda_adc_counts_fp16(ctx: Context) -> None:
    gen = seeded(25110)
    model = GustConv()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_ZONDA:
            seen["x_max"] = float(x.abs().max())
            seen["x_fp16_finite"] = bool(torch.isfinite(x.half()).all())
            with torch.no_grad():
                seen["fp32_finite"] = bool(torch.isfinite(model(x.float())).all())
                with torch.autocast("cpu", dtype=torch.float16):
                    seen["conv1_finite"] = bool(torch.isfinite(model.conv1(x)).all())
            seen["out_finite"] = bool(torch.isfinite(out).all())

    _loop(
        ctx,
        model,
        opt,
        _gust_series(gen, 32, counts_from=ONSET_ZONDA),
        130,
        F.huber_loss,
        watch=watch,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_ZONDA], ratio=0.7))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_ZONDA)
    ctx.check("inputs at the onset are raw counts (max over 10000)", seen.get("x_max", 0) > 1e4)
    ctx.check("the onset inputs are finite in fp16", seen.get("x_fp16_finite") is True)
    ctx.check("conv1's fp16 output overflows at the onset", seen.get("conv1_finite") is False)
    ctx.check("the fp16 prediction is non-finite at the onset", seen.get("out_finite") is False)
    ctx.check("the same batch in float32 gives a finite output", seen.get("fp32_finite") is True)


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="ormolu_fire_gilding_thickness_fp16_gelu_mlp",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) regressing the gold-layer thickness of an ormolu (fire-gilt bronze) mount from 14 standardised readings (amalgam ratio, burn-off temperature, brush passes, ...), AdamW at 3e-3 with weight decay 1e-2, 20 steps of linear warm-up then cosine decay, clipping at 1.0, Huber loss, fp16 autocast with a torch.amp.GradScaler. An ordinary mixed-precision run.",
)
def h251_ormolu_fp16_control(ctx: Context) -> None:
    gen = seeded(25111)
    model = Net(14, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps, warm = 160, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 14, seed=21, noise=0.1),
        steps,
        F.huber_loss,
        sched=sched,
        clip=1.0,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("loss fell to under half", _fell(ls, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check("the scaler's scale stayed finite and positive", all(0 < s < 1e9 for s in ctx.scales))


@scenario(
    family="crewel_stitch_type_label_smoothed_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP (fc1, act1, fc2, act2, head) classifying 8 crewel-embroidery stitches (stem, chain, satin, French knot, ...) from 18 standardised readings of needle path and wool tension, SGD with Nesterov momentum 0.9 under OneCycleLR (peak 0.1), cross-entropy with label smoothing 0.1, 10% of the labels wrong. An ordinary noisy-label run.",
)
def h251_crewel_onecycle_control(ctx: Context) -> None:
    gen = seeded(25112)
    model = Net(18, hidden=64, out=8)
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 18, 8, seed=22, noise=0.45, flip=0.1),
        steps,
        loss_fn,
        classifier=True,
        sched=sched,
    )
    x, y = next(_kinds(torch.Generator().manual_seed(5), 512, 18, 8, seed=22, noise=0.45))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check("clean accuracy over 70%", acc > 0.7)


class TiedAE(nn.Module):
    """enc -> act -> code; the decoder reuses enc's weight transposed (tied), with its own bias."""

    def __init__(self, d_in, code):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


@scenario(
    family="oak_swill_basket_spelk_tied_autoencoder",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tied-weight autoencoder (enc, act; the decoder is enc.weight transposed plus a bias) compressing 24 standardised readings of an oak swill basket's spelks (riven oak strips: thickness, width, moisture, ...) that lie near a 6-dimensional subspace, RAdam at 3e-2, ReduceLROnPlateau (factor 0.5, patience 30), gradient accumulation over 2 micro-batches, MSE reconstruction. An ordinary run.",
)
def h251_oak_swill_tied_ae_control(ctx: Context) -> None:
    gen = seeded(25113)
    g = torch.Generator().manual_seed(23)
    basis = torch.linalg.qr(torch.randn(24, 6, generator=g))[0] * math.sqrt(4.0)

    def batches():
        while True:
            z = torch.randn(32, 6, generator=gen)
            x = z @ basis.T + 0.1 * torch.randn(32, 24, generator=gen)
            yield x, x

    model = TiedAE(24, 8)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)
    _loop(ctx, model, opt, batches(), 200, F.mse_loss, sched=sched, accumulate=2)
    ls = ctx.losses
    ctx.check("loss fell to under 30%", _fell(ls, ratio=0.3))
    ctx.check("loss finite throughout", _finite(ls))
