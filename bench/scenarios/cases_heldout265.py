"""Held-out set 265 (``h265_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a cockle-picker tide-window regressor on an nn.RNNCell
stepped in a loop whose recurrent init gain was typed 4 for 1, a salt-flat crust tanh regressor
whose StepLR gamma was typed 10 for 0.1, a gunsmith bore-wear regressor whose resumed step reads
its loss weight in percent, a woad-vat multi-label BCE net whose hand-written label smoothing has
the wrong sign, a madder-root dye-lot classifier whose temperature was typed 0.02 for 2, a papyrus
tensile Gaussian-NLL net whose variance head lost its softplus before a sqrt, a gargoyle rainspout
regressor fed one batch with the roof area in cm^2, an arborist rigging-load MLP whose layer-wise
lr decay was typed 0.05 for 0.95, a packraft rapid-grade ReLU classifier at an AdamW lr typed
2e-1 for 2e-3, a firestorm heat-flux regressor with raw targets under fp16 autocast, and three
controls (a birch-sap Huber regressor with heavy-tailed targets, a cartographer map-symbol CNN
under OneCycleLR, a clocksmith tick-spectrum tied autoencoder with accumulation).

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
    digit_batches,
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
    alter=None,
    weight=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``weight(step)`` multiplies
    the loss that is backpropagated and logged, ``after(step)`` runs after the optimizer step;
    ``amp``: fp16 autocast; stops after logging a non-finite loss."""
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
            if weight is not None:
                loss = weight(step) * loss
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
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
        if not math.isfinite(shown):
            break


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale (times scale)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


# -- cockle picker: sequence-to-one RNNCell, recurrent init gain typed 4 for 1 -------------------


class TideCell(nn.Module):
    """A tanh nn.RNNCell stepped by hand over the readings, a head on the last state."""

    def __init__(self, d_in=3, hidden=48, gain=1.0):
        super().__init__()
        self.cell = nn.RNNCell(d_in, hidden, nonlinearity="tanh")
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.weight_hh, gain=gain)
        self.states: list[torch.Tensor] = []
        self.keep = False

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if self.keep:
                h.retain_grad()
                self.states.append(h)
        return self.head(h).squeeze(-1)


def _tides(gen, batch, length=40):
    """Tide-gauge height, swell and onshore wind every 10 min; the target is the safe picking
    window left (standardised), set by the mean of the readings over the whole sequence."""
    while True:
        t = torch.arange(length).float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        height = torch.sin(0.16 * t + phase) + 0.2 * torch.randn(batch, length, generator=gen)
        swell = 0.5 * torch.randn(batch, length, generator=gen)
        wind = torch.randn(batch, 1, generator=gen) + 0.3 * torch.randn(
            batch, length, generator=gen
        )
        x = torch.stack([height, swell, wind], -1)
        y = -torch.cos(phase.squeeze(1)) - 0.5 * wind.mean(1) + 0.5 * height[:, :5].mean(1)
        yield x, y


def _through_time(model, batch):
    """|dL/dh_0| / |dL/dh_T-1| on one batch: how much the gradient grows back through time."""
    model.keep = True
    x, y = batch
    loss = F.mse_loss(model(x), y)
    loss.backward()
    first = float(model.states[0].grad.norm())
    last = float(model.states[-1].grad.norm())
    model.keep = False
    model.zero_grad(set_to_none=True)
    return first / max(last, 1e-12)


@scenario(
    family="cockle_picker_tide_window_rnncell",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="A sequence-to-one recurrent regressor written with an nn.RNNCell (tanh, 48 units) stepped in a Python loop over 40 ten-minute readings (tide-gauge height, swell, onshore wind) and a head on the last state, predicting the safe cockle-picking window left on a tidal flat; SGD with momentum 0.9 at 1e-3, MSE, clipping at 1. The recurrent weights are initialised orthogonal with gain typed 4 instead of 1: the cell is chaotic and the gradient grows back through time, |dL/dh_0| over 100x |dL/dh_39| (the twin with gain 1 shrinks it), the median gradient norm before clipping is over 20x the twin's and the loss barely falls. Finite, no blow-up (clipped).",
)
def h265_cockle_picker_rnncell_gain(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(26501)
        model = TideCell(gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        probe = next(_tides(torch.Generator().manual_seed(5), 128))
        growth = [_through_time(model, probe)]
        _train(c, model, opt, _tides(gen, 64), 150, F.mse_loss, clip=1.0)
        clone = TideCell(gain=gain)  # measured on a copy: no backward through the watched model
        clone.load_state_dict(model.state_dict())
        growth.append(_through_time(clone, probe))
        return growth

    twin = _Quiet()
    twin_growth = run(twin, 1.0)
    growth = run(ctx, 4.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the gradient grows over 100x back through time at init", growth[0] > 100)
    ctx.check("and still over 100x at the end", growth[-1] > 100)
    ctx.check("the twin with gain 1 grows it under 10x", twin_growth[0] < 10)
    ctx.check(
        "the median gradient norm is over 20x the twin's",
        _median(gn) > 20 * _median(twin.grad_norms),
    )
    ctx.check("the twin ends with a lower loss", _mean(twin.losses[-20:]) < 0.8 * _mean(ls[-20:]))


# -- salt flat: StepLR gamma typed 10 for 0.1 takes lr x sharpness past 2 ------------------------

ONSET_SALT = 100


def _sharpness(model, loss_fn, batch, iters=30):
    """Top Hessian eigenvalue of the loss on one batch, by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters()]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="salt_flat_crust_thickness_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_SALT,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the crust thickness of a salt flat from 10 standardised readings (evaporation, brine depth, wind, air temperature, ...), plain SGD, MSE. The schedule is a StepLR meant to divide the lr by 10 after 100 steps, with gamma written 10 instead of 0.1: at step 100 the lr jumps from 0.1 to 1.0, and lr x sharpness (top Hessian eigenvalue, measured by power iteration at step 99) goes from under 2 to over 2: the loss oscillates and blows up within a few steps.",
)
def h265_salt_flat_steplr_gamma(ctx: Context) -> None:
    gen = seeded(26502)
    model = Stack(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ONSET_SALT, gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(3), 512, 10, 41))
    lam, lrs = [], []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step == ONSET_SALT - 1:
            clone = Stack(10, hidden=48, act=nn.Tanh)  # probed on a copy of the weights
            clone.load_state_dict(model.state_dict())
            lam.append(_sharpness(clone, F.mse_loss, probe))

    _train(ctx, model, opt, _readings(gen, 64, 10, 41), 160, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    pre = _mean(ls[ONSET_SALT - 10 : ONSET_SALT])
    after = [v if math.isfinite(v) else float("inf") for v in ls[ONSET_SALT:]]
    ctx.check("the loss fell before the onset", _fell(ls[:ONSET_SALT], ratio=0.5))
    ctx.check("lr x sharpness under 2 before the onset", lrs[ONSET_SALT - 1] * lam[0] < 2)
    ctx.check("lr x sharpness over 2 after the onset", lrs[ONSET_SALT] * lam[0] > 2)
    ctx.check("the loss blows up over 100x after the onset", max(after) > 100 * pre)


# -- gunsmith: a resumed step reads the loss weight in percent ----------------------------------

ONSET_GUN = 140


@scenario(
    family="gunsmith_barrel_bore_wear_silu_regressor",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_GUN,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the bore wear a gunsmith measures on a rifle barrel from 12 standardised readings (round count, powder charge, bullet jacket, cleaning interval, ...), SGD with Nesterov momentum 0.9 at 1e-2, Huber loss times a loss weight of 1.0 from the config, clipping at 2. At step 140 the job resumes from a checkpoint whose config stores the weight in percent and the resume path reads 100 instead of 1.0 for its first step: that step's loss and gradient are 100x the steps around it; the batch is ordinary. Clipped, the run recovers at once; finite.",
)
def h265_gunsmith_loss_weight_percent(ctx: Context) -> None:
    gen = seeded(26503)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    xs = []

    def weight(step):
        return 100.0 if step == ONSET_GUN else 1.0

    def watch(step, out, x, y):
        if step in (ONSET_GUN - 1, ONSET_GUN):
            xs.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 43),
        240,
        F.huber_loss,
        clip=2.0,
        weight=weight,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_GUN - 20 : ONSET_GUN])
    pre = _mean(ls[ONSET_GUN - 10 : ONSET_GUN])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_GUN], ratio=0.5))
    ctx.check(
        "the gradient norm at the onset over 30x the median before", gn[ONSET_GUN] > 30 * before
    )
    ctx.check("the gradient norm 10 steps after back under 3x", gn[ONSET_GUN + 10] < 3 * before)
    ctx.check("the batches at the onset are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check(
        "the loss is back under 2x its pre-onset level 30 steps later",
        _mean(ls[ONSET_GUN + 20 : ONSET_GUN + 30]) < 2 * pre,
    )


# -- woad vat: hand-written label smoothing with the wrong sign ----------------------------------


def _shades(gen, batch, d_in=16, labels=6, seed=47):
    """Vat readings (pH, temperature, indoxyl level, dips, ...) and six shade qualities."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, labels, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, (x @ w > 0).float()


@scenario(
    family="woad_vat_shade_multilabel_bce_net",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) tagging six shade qualities (depth, greenness, evenness, ...) of a dip in a woad dye vat from 16 standardised vat readings, multi-label BCE with logits and hand-written label smoothing y * (1 - eps) + eps / 2, Adam at 3e-3. eps was typed -0.2 instead of 0.2: the targets become 1.1 and -0.1, outside [0, 1], the BCE has no minimum and its gradient never vanishes: the head's logits are pushed out without bound, the largest on a fixed probe grows over 20x to over 50, and the loss goes below zero and keeps falling; the twin with eps 0.2 keeps the logits 5x smaller. Finite, no blow-up.",
)
def h265_woad_vat_smoothing_sign(ctx: Context) -> None:
    def run(c, eps):
        gen = seeded(26504)
        model = Stack(16, hidden=64, out=6, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        probe = next(_shades(torch.Generator().manual_seed(9), 256))[0]
        peak = []

        def loss_fn(out, y):
            return F.binary_cross_entropy_with_logits(out, y * (1 - eps) + eps / 2)

        def after(step):
            with torch.no_grad():
                peak.append(float(model(probe).abs().max()))

        with torch.no_grad():
            peak.append(float(model(probe).abs().max()))
        _train(c, model, opt, _shades(gen, 64), 250, loss_fn, after=after)
        return peak

    twin = _Quiet()
    twin_peak = run(twin, 0.2)
    peak = run(ctx, -0.2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the peak head logit grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("the peak head logit is over 50 at the end", peak[-1] > 50)
    ctx.check("the loss went below zero", _mean(ls[-10:]) < 0)
    ctx.check("the twin keeps the peak 5x smaller", twin_peak[-1] < peak[-1] / 5)


# -- madder root: the distillation temperature typed 0.02 for 2 divides the logits ---------------


@scenario(
    family="madder_root_dye_lot_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) sorting a dyer's madder-root lots into 8 grades from 20 standardised readings (alizarin, purpurin, root age, drying, ...), cross-entropy on logits divided by a temperature, NAdam at 1e-2. The temperature, meant to be 2 (carried over from a distillation recipe), was typed 0.02: the logits are multiplied by 50 and the float32 softmax saturates, over half of a probe's rows give the target probability exactly 1.0 while the twin at 2 has none. Finite, no blow-up.",
)
def h265_madder_root_temperature(ctx: Context) -> None:
    def run(c, temp):
        gen = seeded(26505)
        model = Stack(20, hidden=64, out=8, act=nn.GELU)
        opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
        px, py = next(_kinds(torch.Generator().manual_seed(11), 512, 20, 8, 53))
        frac = []

        def loss_fn(out, y):
            return F.cross_entropy(out / temp, y)

        def after(step):
            with torch.no_grad():
                frac.append(collapsed_fraction(model(px) / temp, py))

        _train(
            c, model, opt, _kinds(gen, 64, 20, 8, 53), 200, loss_fn, classifier=True, after=after
        )
        return frac

    twin = _Quiet()
    twin_frac = run(twin, 2.0)
    frac = run(ctx, 0.02)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half the probe rows collapse to exactly 1.0", frac[-1] > 0.5)
    ctx.check("the twin has under 5% collapsed", twin_frac[-1] < 0.05)


# -- papyrus: sqrt of a variance head that lost its softplus -------------------------------------


class TwoHead(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> mean_head and var_head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.var_head(h)], -1)


def _gauss_nll_sqrt(out, y):
    mu, var = out[:, 0], out[:, 1]
    std = torch.sqrt(var)  # the softplus before it was lost in a refactor
    return (torch.log(std) + (y - mu) ** 2 / (2 * std**2)).mean()


DIVERGE_PAPYRUS = 188


@scenario(
    family="papyrus_sheet_tensile_gaussian_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var_head",),
    diverges=DIVERGE_PAPYRUS,
    heldout=True,
    note="A SiLU net (fc1, act1, fc2, act2, mean_head, var_head) predicting the tensile strength of a papyrus sheet and its spread from 10 standardised readings (strip width, soaking days, pressing weight, drying, ...), a hand-written Gaussian NLL log(std) + (y - mu)^2 / (2 std^2) with std = sqrt(var_head(h)), RMSprop at 1e-4. The softplus that kept the variance positive was dropped in a refactor; as the variance is fitted down to the small residuals, var_head's output crosses zero for a sample and sqrt of a negative gives NaN in the loss (first at step 188).",
)
def h265_papyrus_variance_sqrt(ctx: Context) -> None:
    gen = seeded(26506)
    model = TwoHead(10)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    low = []

    def watch(step, out, x, y):
        low.append(float(out[:, 1].detach().min()))

    _train(
        ctx, model, opt, _readings(gen, 64, 10, 59, noise=0.1), 300, _gauss_nll_sqrt, watch=watch
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss is finite and falls before the NaN", bad is not None and _fell(ls[:bad]))
    ctx.check(f"the first non-finite loss is at step {DIVERGE_PAPYRUS}", bad == DIVERGE_PAPYRUS)
    ctx.check("var_head's output is negative at that step", bad is not None and low[bad] < 0)
    ctx.check("var_head's output was positive until then", bad is not None and min(low[:bad]) > 0)


# -- gargoyle rainspout: one shard batch with the roof area in cm^2 ------------------------------

ONSET_GARG = 120


@scenario(
    family="gargoyle_rainspout_discharge_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_GARG,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the discharge from a cathedral gargoyle's rainspout from 8 standardised readings (rain rate, wind, gutter fill, roof area, ...), ASGD at 1e-2, MSE, clipping at 5. The batch at step 120 comes from one survey shard whose roof-area column was written in cm^2 instead of m^2 and not standardised: values about 1e4, loss and gradient hundreds of times the steps around; clipped, the run recovers within tens of steps. Finite.",
)
def h265_gargoyle_roof_area_shard(ctx: Context) -> None:
    gen = seeded(26507)
    model = Stack(8, hidden=48)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
    xs = []

    def alter(step, x, y):
        if step == ONSET_GARG:
            x = x.clone()
            x[:, 3] = 1e4 * (1.0 + 0.2 * x[:, 3].abs())
        return x, y

    def watch(step, out, x, y):
        if step == ONSET_GARG:
            xs.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 61),
        220,
        F.mse_loss,
        clip=5.0,
        alter=alter,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_GARG - 10 : ONSET_GARG])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the onset batch holds values over 1e3", xs[0] > 1e3)
    ctx.check("the loss at the onset is over 100x the mean before", ls[ONSET_GARG] > 100 * pre)
    ctx.check(
        "the gradient norm at the onset is over 100x the median before",
        gn[ONSET_GARG] > 100 * _median(gn[ONSET_GARG - 20 : ONSET_GARG]),
    )
    ctx.check(
        "the loss is back under 2x its pre-onset level 60 steps later",
        _mean(ls[ONSET_GARG + 50 : ONSET_GARG + 60]) < 2 * pre,
    )


# -- arborist: layer-wise lr decay typed 0.05 for 0.95 -------------------------------------------


class Deep(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> fc3 -> act3 -> head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, hidden)
        self.act3 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act3(self.fc3(self.act2(self.fc2(self.act1(self.fc1(x))))))
        return self.head(h).squeeze(-1)


@scenario(
    family="arborist_limb_drop_load_llrd_mlp",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, fc3, head) regressing the rope load an arborist's lowering rig takes when a cut limb drops, from 14 standardised readings (limb mass, drop length, friction wraps, rope stretch, ...), Adagrad at 0.05 in one param group per layer with layer-wise lr decay lr * decay**depth from the head down. decay was typed 0.05 instead of 0.95: fc2 gets 1/400 and fc1 1/8000 of the head's rate; fc1's weights move over 1000x less (relative to their size) than the head's and over 100x less than in the twin with 0.95; the loss still falls on the upper layers. Finite.",
)
def h265_arborist_llrd_decay_typo(ctx: Context) -> None:
    def run(c, decay):
        gen = seeded(26508)
        model = Deep(14)
        layers = [model.head, model.fc3, model.fc2, model.fc1]
        groups = [{"params": m.parameters(), "lr": 0.05 * decay**i} for i, m in enumerate(layers)]
        opt = torch.optim.Adagrad(groups, lr=0.05)
        w0 = {n: model.get_submodule(n).weight.detach().clone() for n in ("fc1", "head")}
        _train(c, model, opt, _readings(gen, 64, 14, 67), 200, F.mse_loss)
        return {
            n: float((model.get_submodule(n).weight.detach() - w).norm() / w.norm())
            for n, w in w0.items()
        }

    twin = _Quiet()
    twin_moved = run(twin, 0.95)
    moved = run(ctx, 0.05)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.7))
    ctx.check("fc1 moved over 1000x less than the head", moved["fc1"] < moved["head"] / 1000)
    ctx.check("fc1 moved over 100x less than in the twin", moved["fc1"] < twin_moved["fc1"] / 100)


# -- packraft: AdamW lr typed 5e-2 for 5e-4 kills the ReLUs --------------------------------------


@scenario(
    family="packraft_rapid_grade_relu_classifier",
    optimizer="AdamW",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading a river rapid for packrafting into 6 classes from 18 standardised readings (gradient, discharge, boulder density, hole depth, ...), AdamW (weight_decay 0.01), cross-entropy. The lr was meant to be 2e-3 and was typed 2e-1: the first large steps push fc2's pre-activations negative and over half of act2's units never fire again on a fixed probe (the twin at 2e-3 keeps under 10% dead); the loss stays well above the twin's. Finite.",
)
def h265_packraft_adamw_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(26509)
        model = Stack(18, hidden=64, out=6)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        px = next(_kinds(torch.Generator().manual_seed(13), 512, 18, 6, 71, noise=0.8))[0]
        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 18, 6, 71, noise=0.8),
            200,
            F.cross_entropy,
            classifier=True,
        )
        with torch.no_grad():
            return dead_fraction(model.features(px))

    twin = _Quiet()
    twin_dead = run(twin, 2e-3)
    dead = run(ctx, 2e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half of act2's units are dead at the end", dead > 0.5)
    ctx.check("the twin keeps under 10% dead", twin_dead < 0.1)
    ctx.check("the loss stays above the twin's", _mean(ls[-20:]) > 1.3 * _mean(twin.losses[-20:]))


# -- firestorm: raw heat-release targets under fp16 autocast -------------------------------------


DIVERGE_FIRE = 61


@scenario(
    family="firestorm_convection_heat_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=DIVERGE_FIRE,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the convective heat flux of a firestorm column from 12 standardised readings (fuel load, wind, humidity, plume height, ...), fp16 autocast with a torch.amp.GradScaler, Adam at 5e-2, MSE. The targets were left in raw kW/m^2 (about 1e5) instead of standardised: the fp16 gradients overflow step after step and the scaler skips them and cuts its scale from 65536 to under 65; as the head's output climbs towards the targets it passes 65504 and the fp16 Linear output overflows to inf: the loss is inf at step 61. The same run in float32 stays finite for 200 steps.",
)
def h265_firestorm_raw_targets_fp16(ctx: Context) -> None:
    def run(c, amp):
        gen = seeded(26510)
        model = Stack(12, hidden=64)
        opt = torch.optim.Adam(model.parameters(), lr=5e-2)
        scaler = torch.amp.GradScaler("cpu", enabled=amp)
        peak = []

        def watch(step, out, x, y):
            peak.append(float(out.detach().float().abs().max()))

        def loss_fn(out, y):
            return F.mse_loss(out.float(), y)

        _train(
            c,
            model,
            opt,
            _readings(gen, 64, 12, 73, scale=5e4, noise=0.1),
            200,
            loss_fn,
            scaler=scaler if amp else None,
            amp=amp,
            watch=watch,
        )
        return peak

    twin = _Quiet()
    run(twin, False)
    peak = run(ctx, True)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss is finite before the overflow", bad is not None and _finite(ls[:bad]))
    ctx.check(f"the first non-finite loss is at step {DIVERGE_FIRE}", bad == DIVERGE_FIRE)
    ctx.check(
        "the fp16 head output is inf at that step and under 65504 before",
        bad is not None and math.isinf(peak[bad]) and max(peak[:bad]) < 65504,
    )
    ctx.check("the scaler cut its scale over 1000x", min(ctx.scales) < 65536.0 / 1000)
    ctx.check(
        "the float32 twin stays finite for 200 steps",
        len(twin.losses) == 200 and _finite(twin.losses),
    )


# -- birch sap: heavy-tailed run volumes, Huber, AdamW with warm-up + cosine (healthy) -----------


def _sap(gen, batch, d_in=10, seed=79):
    """Tapping-day readings (night frost, day thaw, trunk girth, ...) and the sap run volume,
    with Student-t (2 degrees of freedom) noise: most days near the trend, a few far off."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = torch.randn(batch, generator=gen)
        u = torch.rand(batch, generator=gen).clamp_min(1e-6)
        t2 = z / torch.sqrt(-torch.log(u))  # Student-t with 2 dof: z / sqrt(chi2_2 / 2)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x[:, 0] * x[:, 1])
        yield x, y + 0.2 * t2


@scenario(
    family="birch_sap_run_volume_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the sap a tapped birch runs in a day from 10 standardised readings (night frost, day thaw, trunk girth, ...); the targets carry Student-t noise with 2 degrees of freedom (heavy-tailed: a few days far off the trend), Huber loss (delta 1), AdamW (weight_decay 0.01) at 3e-3 with a 20-step linear warm-up and cosine decay, clipping at 1. Trains normally.",
)
def h265_birch_sap_heavy_tail(ctx: Context) -> None:
    gen = seeded(26511)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 250
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    big = []

    def watch(step, out, x, y):
        big.append(float(y.abs().max()))

    _train(ctx, model, opt, _sap(gen, 64), steps, F.huber_loss, clip=1.0, sched=sched, watch=watch)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, k=20, ratio=0.8))
    ctx.check("the targets are heavy-tailed (some |y| over 10)", max(big) > 10)


# -- cartographer: map-symbol CNN, SGD Nesterov + OneCycleLR + label smoothing (healthy) ---------


class SymbolNet(nn.Module):
    """conv1 -> bn1 -> act1 -> conv2 -> bn2 -> act2 -> pool -> head over an 8x8 glyph."""

    def __init__(self, width=12, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.act2 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(2 * width * 16, classes)

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        h = self.pool(self.act2(self.bn2(self.conv2(h))))
        return self.head(h.flatten(1))


@scenario(
    family="cartographer_map_symbol_bn_cnn",
    optimizer="SGD(nesterov=True)",
    cause="healthy",
    heldout=True,
    note="Healthy control: a hand-written CNN (conv1, bn1, act1, conv2, bn2, act2, pool, head) reading a cartographer's hand-drawn 8x8 map symbols (scikit-learn's bundled digits standing in for ten symbols), SGD with Nesterov momentum 0.9 and weight decay 5e-4 under a OneCycleLR to 0.1, cross-entropy with label smoothing 0.1. Trains normally.",
)
def h265_cartographer_symbol_onecycle(ctx: Context) -> None:
    gen = seeded(26512)
    model = SymbolNet()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    model.eval()
    x, y = next(digit_batches(torch.Generator().manual_seed(17), 512))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.5))
    ctx.check("over 85% of symbols read right", acc > 0.85)


# -- clocksmith: tick-spectrum tied autoencoder, Adamax + ReduceLROnPlateau, accumulation -------


class TiedAutoencoder(nn.Module):
    """encoder Linear -> decoder through the encoder's weight transposed (tied), linear."""

    def __init__(self, d_in=32, code=6):
        super().__init__()
        self.encoder = nn.Linear(d_in, code)
        self.decoder_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.encoder(x), self.encoder.weight.t(), self.decoder_bias)


def _ticks(gen, batch, d_in=32, rank=4, seed=83):
    """Log-spectra of a clock's escapement ticks: a few resonances mixed, plus noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d_in, generator=g) / math.sqrt(rank)
    while True:
        mix = torch.randn(batch, rank, generator=gen)
        x = mix @ basis + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="clocksmith_tick_spectrum_tied_autoencoder",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="Healthy control: a tied autoencoder (encoder Linear 32 -> 6, decoding through the encoder's weight transposed plus a decoder_bias) compressing the log-spectra of a clocksmith's escapement ticks, Adamax at 5e-3, MSE, gradient accumulation over 2 micro-batches, ReduceLROnPlateau (factor 0.5, patience 10) on the training loss. Trains normally.",
)
def h265_clocksmith_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(26513)
    model = TiedAutoencoder()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _train(ctx, model, opt, _ticks(gen, 32), 200, F.mse_loss, accumulate=2, sched=sched)
    x = next(_ticks(torch.Generator().manual_seed(19), 512))[0]
    with torch.no_grad():
        err = float(F.mse_loss(model(x), x))
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.5))
    ctx.check(
        "reconstruction error under a quarter of the data's variance", err < 0.25 * float(x.var())
    )
