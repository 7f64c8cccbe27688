"""Held-out set 197 (``h197_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a glacial-flour turbidity net whose optical depth is
written -log(1 - sigmoid(z)) with no clamp, a meteor-storm Deep Sets rate model whose sum pool
overflows float16 under autocast, a tightrope balance-pole regressor whose evaluation callback
leaves the EMA weights in place, a cricket-bat willow grain classifier whose trunk is unfrozen
after the optimizer was built from the trainable parameters, a tree sap-flow Elman RNN whose
recurrent matrix got the feed-forward tanh gain, a speed-climbing split regressor fed one wall's
force plates in newtons, a mycelium message-passing net whose accumulation normaliser is taken
from the last micro-batch, a basketry willow cosine classifier with its scale typed 1600 for
16.00, a BMX landing ReLU classifier fed raw units, a mud-crack spacing regressor whose warm-up
lambda lost its min(1, .), and three controls (an ant-trail message-passing net whose
ReduceLROnPlateau halves the rate, a woodpecker drumming GRU with a tied auxiliary head,
warm-up + cosine and clipping, a peat-fire smoulder fp16 MLP with OneCycleLR and accumulation).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
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


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _moved(params, start) -> float:
    return max(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))


def _call(model, inp):
    return model(*inp) if isinstance(inp, tuple) else model(inp)


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    stop_on_nan=True,
):
    """The file's loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after the
    optimizer step; ``accumulate`` micro-batches a step; a batch's input may be a tuple of
    tensors (the model's arguments). Stops after logging a NaN loss unless told not to."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = _call(model, x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            if scaler is not None:
                scaler.scale(loss / accumulate).backward()
            else:
                (loss / accumulate).backward()
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
        if stop_on_nan and math.isnan(shown):
            break


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, activation modules."""

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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


# -- glacial flour: optical depth written -log(1 - sigmoid(z)) with no clamp ---------------------


class OpticalDepth(nn.Module):
    """Turns the net's output into an optical depth through the absorbed fraction:
    a = sigmoid(z), tau = -log(1 - a). Hand-written; the stable form is softplus(z)."""

    def __init__(self):
        super().__init__()
        self.last_z = 0.0

    def forward(self, z):
        self.last_z = float(z.detach().max())
        return -torch.log(1 - torch.sigmoid(z))


class TurbidityNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.optical_depth = OpticalDepth()

    def forward(self, x):
        z = self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        return self.optical_depth(z)


def _meltwater(gen, batch, seed, outburst_from=None, rows=8):
    """Eight standardised readings of a glacial river (discharge, suspended-sediment probe,
    air temperature, ...) and the optical depth of a 1 m water column (0.2 to 4 on ordinary
    days); from ``outburst_from`` a few rows per batch come from outburst-flood days, the water
    thick with rock flour, discharge reading 3-5 sigma, optical depth 18 to 26."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g) / math.sqrt(8)
    step = 0
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = F.softplus(1.2 * (x @ w) + 0.5)
        if outburst_from is not None and step >= outburst_from:
            x[:rows, 0] = 3 + 2 * torch.rand(rows, generator=gen)
            y[:rows] = 18 + 8 * torch.rand(rows, generator=gen)
        step += 1
        yield x, y + 0.03 * torch.randn(batch, generator=gen)


@scenario(
    family="glacial_flour_turbidity_optical_depth_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("optical_depth",),
    diverges=111,
    onset=100,
    heldout=True,
    note="A SiLU MLP estimating the optical depth of a glacial river's water column (rock flour) "
    "from 8 standardised readings, Adam at 3e-3, MSE. The output goes through an "
    "`optical_depth` module written by hand as tau = -log(1 - sigmoid(z)) (no clamp; the "
    "stable form is softplus(z)). From step 100 outburst-flood days (optical depth 18-26) "
    "come into every batch; to fit them z climbs past about 16.6, where sigmoid(z) rounds to "
    "exactly 1.0 in float32, 1 - a is 0, log(0) is -inf: the loss is inf, the backward "
    "pass multiplies inf by sigmoid's zero slope into NaN gradients, Adam writes NaN into "
    "the weights and the loss is NaN from the next step.",
)
def h197_glacial_flour_log_one_minus_sigmoid(ctx: Context) -> None:
    gen = seeded(19701)
    model = TurbidityNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    zs = []
    _train(
        ctx,
        model,
        opt,
        _meltwater(gen, 64, seed=1, outburst_from=100),
        220,
        F.mse_loss,
        watch=lambda s, o, x, y: zs.append(model.optical_depth.last_z),
        stop_on_nan=True,
    )
    onset = 100
    bad = _first_bad(ctx.losses)
    ctx.check("loss finite before step 100", _finite(ctx.losses[:onset]))
    ctx.check("loss fell before step 100", _fell(ctx.losses[:onset]))
    ctx.check("a non-finite loss after step 100", bad is not None and bad > onset)
    ctx.check("largest z below 10 before step 100", max(zs[:onset]) < 10)
    ctx.check(
        "largest z past 16.6 (sigmoid == 1.0 in float32) at the first non-finite loss",
        bad is not None and zs[bad] > 16.6,
    )
    ctx.check(
        "sigmoid of that z is exactly 1.0",
        bad is not None and float(torch.sigmoid(torch.tensor(zs[bad]))) == 1.0,
    )
    ctx.check("the loss after it is NaN", bad is not None and math.isnan(ctx.losses[-1]))


# -- meteor storm: a Deep Sets sum pool in float16 under autocast ---------------------------------


class SumPool(nn.Module):
    """Permutation-invariant pooling: each set's sum over its elements (rows of a flat batch,
    ``seg`` naming each row's set), in the dtype the elements come in (float16 under
    autocast)."""

    def __init__(self):
        super().__init__()
        self.last_peak = 0.0

    def forward(self, h, seg, sets: int):
        pooled = torch.zeros(sets, h.shape[-1], dtype=h.dtype).index_add(0, seg, h)
        self.last_peak = float(pooled.detach().float().abs().max())
        return pooled


class MeteorSetNet(nn.Module):
    def __init__(self, d_in=5, hidden=32):
        super().__init__()
        self.phi1 = nn.Linear(d_in, hidden)
        self.phi2 = nn.Linear(hidden, hidden)
        self.pool = SumPool()
        self.rho = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x, seg, sets: int):
        h = F.relu(self.phi2(F.relu(self.phi1(x))))
        return self.head(F.relu(self.rho(self.pool(h, seg, sets) / 256))).squeeze(-1)


def _meteor_nights(gen, batch, storm_from=None):
    """A camera network's detections over one hour per set, in the units the cameras log
    (peak magnitude, duration in s, angular speed in deg/s, distance from the radiant and
    elevation in degrees), 20 to 120 an hour on an ordinary night, flattened with each row's
    set index, and the hour's visual count (Poisson, about 0.45 per detection). From
    ``storm_from`` one set per batch comes from a meteor storm's peak hours: 12 000 to 14 000
    detections."""
    lo = torch.tensor([-2.0, 0.1, 5.0, 0.0, 10.0])
    span = torch.tensor([6.0, 1.9, 55.0, 90.0, 80.0])
    step = 0
    while True:
        sizes = torch.randint(20, 121, (batch,), generator=gen)
        if storm_from is not None and step >= storm_from:
            sizes[0] = int(torch.randint(12000, 14001, (1,), generator=gen))
        seg = torch.repeat_interleave(torch.arange(batch), sizes)
        x = lo + span * torch.rand(len(seg), 5, generator=gen)
        bright = torch.zeros(batch).index_add(0, seg, (x[:, 0] < 1.0).float())
        rate = 0.5 * bright + 0.2 * sizes.float()
        step += 1
        yield (x, seg, batch), torch.poisson(rate, generator=gen)


@scenario(
    family="meteor_storm_hourly_rate_fp16_deepsets",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("pool",),
    diverges=110,
    onset=110,
    heldout=True,
    note="A Deep Sets model (per-meteor phi1/phi2 Linears + ReLU, a `pool` module summing over "
    "the set, rho and a head) estimating an hour's visual meteor count from a camera "
    "network's detections in the cameras' units, Poisson NLL on the log-rate, RAdam at 5e-4, "
    "fp16 autocast with a torch.amp.GradScaler. The sum pool runs in float16 under autocast. "
    "Ordinary nights have 20-120 detections an hour and the pooled sums stay near 3000; from "
    "step 110 one set per batch comes from a meteor storm's peak hours (12 000-14 000 "
    "detections), its sums pass 65504 and overflow to inf, rho turns inf into NaN, the loss "
    "is NaN from step 110, every step is skipped and the scaler halves its scale each step; "
    "the fp32 weights stay finite.",
)
def h197_meteor_storm_fp16_sum_pool(ctx: Context) -> None:
    gen = seeded(19702)
    model = MeteorSetNet()
    opt = torch.optim.RAdam(model.parameters(), lr=5e-4)
    scaler = torch.amp.GradScaler("cpu")
    peak = []
    _train(
        ctx,
        model,
        opt,
        _meteor_nights(gen, 16, storm_from=110),
        122,
        lambda o, y: F.poisson_nll_loss(o, y, log_input=True),
        scaler=scaler,
        watch=lambda s, o, x, y: peak.append(model.pool.last_peak),
        stop_on_nan=False,
    )
    onset = 110
    ctx.check("loss finite before step 110", _finite(ctx.losses[:onset]))
    ctx.check("loss fell before step 110", _fell(ctx.losses[:onset], ratio=0.5))
    ctx.check("first non-finite loss at step 110", _first_bad(ctx.losses) == onset)
    ctx.check("pooled sums below 10000 before step 110", max(peak[:onset]) < 10000)
    ctx.check("pooled sums overflow float16 (inf) from step 110", min(peak[onset:]) == math.inf)
    ctx.check(
        "scaler scale fell 2**10-fold after step 110",
        ctx.scales[-1] < ctx.scales[onset - 1] / 2**10,
    )
    ctx.check(
        "weights still finite", all(bool(torch.isfinite(p).all()) for p in model.parameters())
    )


# -- tightrope: an evaluation callback loads the EMA weights and never swaps back -----------------


@scenario(
    family="tightrope_balance_pole_correction_gelu_mlp",
    optimizer="SGD(nesterov)",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=151,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) predicting a tightrope walker's balance-pole correction "
    "from 12 standardised IMU readings, SGD with Nesterov momentum 0.9 at 0.02, MSE, an EMA "
    "of the weights kept at decay 0.999 for evaluation. At step 150 the evaluation callback "
    "loads the EMA weights into the model (model.load_state_dict(ema.state_dict())) and "
    "never restores the training weights; after only 150 steps at decay 0.999 the EMA is "
    "still mostly the initialisation, so at step 151 the loss jumps back near its starting "
    "level, 5x and more what it was, and the run relearns in a few dozen steps. The data "
    "are clean, the gradient at the jump is of ordinary size and nothing diverges.",
)
def h197_tightrope_ema_left_loaded(ctx: Context) -> None:
    gen = seeded(19703)
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ema = copy.deepcopy(model)
    decay = 0.999

    def after(step):
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.mul_(decay).add_(p, alpha=1 - decay)
        if step == 150:  # evaluation callback: swaps the EMA in, forgets to swap back
            model.load_state_dict(ema.state_dict())

    _train(ctx, model, opt, _readings(gen, 64, 12, seed=3), 260, F.mse_loss, after=after)
    ls, gn = ctx.losses, ctx.grad_norms
    onset = 151
    before = _mean(ls[onset - 20 : onset])
    ctx.check("loss fell before the swap", _fell(ls[:onset], ratio=0.5))
    ctx.check("loss at step 151 5x the 20 steps before", ls[onset] > 5 * before)
    ctx.check(
        "loss back within 1.5x of the pre-swap level by step 220",
        _mean(ls[210:220]) < 1.5 * before,
    )
    ctx.check(
        "gradient at step 151 under 10x the median of the 20 steps before",
        gn[onset] < 10 * _median(gn[onset - 20 : onset]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- cricket-bat willow: the trunk is unfrozen after the optimizer was built ----------------------


class CleftNet(nn.Module):
    """A 1-D conv net over a willow cleft's grain-spacing profile (48 readings across the
    face): conv1, conv2 (ReLU, pooling), a Linear head over 5 grades."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32 * 6, classes)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        h = F.max_pool1d(F.relu(self.conv2(h)), 2)
        return self.head(F.adaptive_avg_pool1d(h, 6).flatten(1))


def _clefts(gen, batch, seed, classes=5):
    """Grain-spacing profiles (mm between growth rings across the face): grade sets the ring
    count, the straightness and the width of a butterfly stain; noisy."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(classes, generator=g) * 6
    t = torch.linspace(0, 1, 48)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rings = 6 + 3 * y.float()[:, None]
        wobble = 0.3 * torch.sin(rings * 6.28 * t + phase[y][:, None])
        stain = (torch.abs(t - 0.5) < 0.04 * (classes - y[:, None])).float()
        x = wobble + stain + 0.3 * torch.randn(batch, 48, generator=gen)
        yield x, y


@scenario(
    family="cricket_bat_willow_cleft_grade_conv1d",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("conv1", "conv2"),
    diverges=None,
    onset=40,
    heldout=True,
    note="A 1-D CNN (conv1, conv2, head) grading English willow clefts for cricket bats (5 "
    "grades) from a 48-point grain-spacing profile, Adagrad at 0.05, cross-entropy. The "
    "recipe trains the head alone for 40 steps with the trunk frozen, then unfreezes it; "
    "the optimizer was built once at the start from [p for p in model.parameters() if "
    "p.requires_grad], so when requires_grad is switched back on at step 40 conv1 and conv2 "
    "get gradients every step but are in no param group: their update is exactly 0 for the "
    "rest of the run while the head keeps learning on random conv features.",
)
def h197_cricket_bat_unfreeze_outside_optimizer(ctx: Context) -> None:
    gen = seeded(19704)
    model = CleftNet()
    trunk = list(model.conv1.parameters()) + list(model.conv2.parameters())
    for p in trunk:
        p.requires_grad_(False)
    opt = torch.optim.Adagrad([p for p in model.parameters() if p.requires_grad], lr=0.05)
    trunk0 = _snapshot(trunk)
    head0 = _snapshot(list(model.head.parameters()))
    trunk_grad = []

    def before(step):
        if step == 40:
            for p in trunk:
                p.requires_grad_(True)

    def after(step):
        trunk_grad.append(
            sum(float(p.grad.norm()) for p in trunk if p.grad is not None) if step >= 40 else 0.0
        )

    _train(
        ctx,
        model,
        opt,
        _clefts(gen, 32, seed=4),
        180,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
    )
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    ctx.check("conv1/conv2 in no param group", not any(id(p) in in_opt for p in trunk))
    ctx.check("conv1/conv2 get gradients after step 40", min(trunk_grad[40:]) > 1e-4)
    ctx.check("conv1/conv2 never moved", _moved(trunk, trunk0) == 0.0)
    ctx.check("head moved", _moved(list(model.head.parameters()), head0) > 1e-2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- sap flow: a recurrent matrix initialised with the feed-forward tanh gain, far too large ------


class SapCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.ih(x) + self.hh(h))


class SapFlowRNN(nn.Module):
    """A hand-written Elman RNN over 48 half-hourly readings; the head reads the last state."""

    def __init__(self, d_in=4, hidden=64):
        super().__init__()
        self.cell = SapCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        self.hidden = hidden
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _sap_days(gen, batch, seed, length=48):
    """A day of half-hourly readings at a tree (vapour-pressure deficit, radiation, soil
    moisture, air temperature; standardised) and the night's sap-flow recovery, which depends
    on the whole day's water deficit."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        x = torch.randn(batch, length, 4, generator=gen) * 0.5
        x[..., 0] += torch.sin(torch.linspace(0, 3.14, length))
        deficit = (x @ w).mean(1)
        yield x, torch.tanh(deficit) + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="tree_sap_flow_recovery_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.hh", "cell"),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh Elman RNN (cell.ih, cell.hh, head; 64 units) reading a day of "
    "48 half-hourly readings at a tree (vapour-pressure deficit, radiation, soil moisture, "
    "temperature) and predicting the night's sap-flow recovery, plain SGD at 0.05, MSE, no "
    "clipping. The init helper draws the recurrent matrix with std 1/sqrt(fan_in) but reads "
    "fan_in from cell.ih's weight (4 inputs) instead of cell.hh's (64 units): std 0.5, four "
    "times the intended 0.125, a spectral radius near 4. Back through the 48 steps the "
    "gradient grows about 1e8-fold, the first step's gradient is millions of times a "
    "correctly initialised copy's on the same batch, SGD throws the weights far out and the "
    "loss climbs without bound over the following steps (inf near step 70, then NaN).",
)
def h197_sap_flow_recurrent_fan_in(ctx: Context) -> None:
    gen = seeded(19705)
    model = SapFlowRNN()
    fan_in = model.cell.ih.weight.shape[1]  # should be model.cell.hh.weight.shape[1]
    nn.init.normal_(model.cell.hh.weight, std=1 / math.sqrt(fan_in))
    ref = copy.deepcopy(model)
    nn.init.normal_(ref.cell.hh.weight, std=1 / math.sqrt(ref.hidden))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = _sap_days(gen, 32, seed=5)
    x0, y0 = next(batches)
    F.mse_loss(ref(x0), y0).backward()
    ref_norm = grad_norm(ref)
    through_time = []

    def first(step, x, y):
        return (x0, y0) if step == 0 else (x, y)

    def after(step):
        if step == 0:
            s = model.states
            through_time.append(float(s[0].grad.norm() / s[-1].grad.norm()))

    _train(ctx, model, opt, batches, 100, F.mse_loss, alter=first, after=after)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient grew 1e4-fold back through the 48 steps at step 0", through_time[0] > 1e4)
    ctx.check("step-0 gradient 1e4x a correctly initialised copy's", gn[0] > 1e4 * ref_norm)
    ctx.check(
        "loss 1000x its first value by step 30",
        max(v for v in ls[:31] if math.isfinite(v)) > 1000 * ls[0],
    )
    ctx.check(
        "loss past 1e20 or non-finite later in the run",
        any(not math.isfinite(v) or v > 1e20 for v in ls[30:]),
    )


# -- speed climbing: one wall's force plates export newtons, not kilonewtons ----------------------


@scenario(
    family="speed_climbing_split_force_plate_gelu_mlp",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) predicting a speed climber's split time (standardised) "
    "on the 15 m wall from 10 features, the first four force-plate peaks in kilonewtons "
    "(standardised), RMSprop at 1e-3, Huber loss. The batch at step 90 comes from a "
    "competition wall whose plates export newtons: its four force channels are 1000x the "
    "rest. That batch's loss is thousands of times the usual and so is its gradient, fc1 "
    "takes one large step, the loss runs somewhat higher for a few dozen steps "
    "and recovers; every other batch is clean.",
)
def h197_speed_climbing_newton_shard(ctx: Context) -> None:
    gen = seeded(19706)
    model = Stack(10, hidden=64, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    onset = 90
    peak = []

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:, :4] = x[:, :4] * 1000
        peak.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=6), 200, F.huber_loss, alter=alter)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("inputs past 500 at step 90", peak[onset] > 500)
    ctx.check("inputs below 10 on every other step", max(peak[:onset] + peak[onset + 1 :]) < 10)
    ctx.check(
        "gradient at step 90 over 50x the median before", gn[onset] > 50 * _median(gn[:onset])
    )
    ctx.check("loss fell before step 90", _fell(ls[:onset], ratio=0.7))
    ctx.check(
        "loss at step 90 over 100x the 20 steps before",
        ls[onset] > 100 * _mean(ls[onset - 20 : onset]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- mycelium: the accumulation normaliser is read from the last micro-batch ----------------------


class HyphalMP(nn.Module):
    """One message-passing round: h + relu(self_lin(h) + nbr_lin(mean of neighbours' h))."""

    def __init__(self, dim):
        super().__init__()
        self.self_lin = nn.Linear(dim, dim)
        self.nbr_lin = nn.Linear(dim, dim)

    def forward(self, h, adj):
        deg = adj.sum(-1, keepdim=True).clamp(min=1)
        return h + F.relu(self.self_lin(h) + self.nbr_lin(adj @ h / deg))


class MyceliumMPNN(nn.Module):
    def __init__(self, d_in=4, dim=32):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.mp1 = HyphalMP(dim)
        self.mp2 = HyphalMP(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x, adj):
        h = self.mp2(self.mp1(self.embed(x), adj), adj)
        return self.head(h).squeeze(-1)


def _mycelium_graphs(gen, count, seed, nodes=8):
    """``count`` mycelial networks of 8 hyphal junctions (thickness, distance to the food
    source, moisture, age; standardised) joined along random hyphae, and each junction's
    nutrient flux, which follows its own and its neighbours' readings."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    v = torch.randn(4, generator=g)
    x = torch.randn(count, nodes, 4, generator=gen)
    upper = (torch.rand(count, nodes, nodes, generator=gen) < 0.35).float().triu(1)
    adj = upper + upper.transpose(1, 2)
    deg = adj.sum(-1).clamp(min=1)
    y = torch.tanh(x @ w / 2) + 0.5 * torch.tanh((adj @ (x @ v)[..., None]).squeeze(-1) / deg)
    return x, adj, y + 0.05 * torch.randn(count, nodes, generator=gen)


@scenario(
    family="mycelium_nutrient_flux_mpnn",
    optimizer="SGD(momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=99,
    heldout=True,
    note="A message-passing net (embed, two rounds mp1/mp2 of self + mean-of-neighbours "
    "Linears with a residual, a head) predicting each junction's nutrient flux in 8-node "
    "mycelial networks, SGD with momentum 0.9 at 0.01, squared error, 5 micro-batches of 64 "
    "graphs accumulated per step over an epoch of 31 937 graphs. The trainer divides each "
    "micro-batch's summed error by accumulate * the node count of the last micro-batch (a "
    "variable left over from the loop that loaded them). Within the epoch every micro-batch "
    "holds 64 graphs and the result is the mean; the epoch's last step (step 99: 4 full "
    "micro-batches and a remainder of 1 graph) divides by 8 * 5 instead of 512 * 5, so that "
    "one step's gradient is about 50x the usual while its data and its loss are ordinary; "
    "the loss drifts up a little for a few dozen steps and nothing diverges.",
)
def h197_mycelium_last_microbatch_normaliser(ctx: Context) -> None:
    gen = seeded(19707)
    micro, accumulate, nodes = 64, 5, 8
    count = micro * (accumulate * 100 - 1) + 1
    xs, adjs, ys = _mycelium_graphs(gen, count, seed=7)
    model = MyceliumMPNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    order = torch.randperm(count, generator=gen)
    cursor, norms = 0, []
    for _step in range(160):
        chunks = []
        for _ in range(accumulate):
            if cursor >= count:
                break
            chunks.append(order[cursor : cursor + micro])
            cursor += micro
        if cursor >= count:  # epoch over: reshuffle
            order, cursor = torch.randperm(count, generator=gen), 0
        n_last = len(chunks[-1]) * nodes  # the bug: the last micro-batch's node count
        norms.append(n_last * len(chunks))
        sse, seen = 0.0, 0
        for idx in chunks:
            err = (model(xs[idx], adjs[idx]) - ys[idx]) ** 2
            (err.sum() / (n_last * len(chunks))).backward()
            sse += float(err.sum().detach())
            seen += err.numel()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(torch.tensor(sse / seen))
        opt.zero_grad(set_to_none=True)
    ls, gn = ctx.losses, ctx.grad_norms
    spike = max(range(len(gn)), key=gn.__getitem__)
    onset = 99
    ctx.check(
        "normaliser 40 at step 99, 2560 on every other step",
        norms[onset] == 40 and set(norms[:onset] + norms[onset + 1 :]) == {2560},
    )
    ctx.check("largest gradient at step 99", spike == onset)
    ctx.check(
        "gradient at step 99 over 30x the median of the 20 steps before",
        gn[onset] > 30 * _median(gn[onset - 20 : onset]),
    )
    ctx.check(
        "loss at step 99 within 1.5x the 20 steps before (ordinary data)",
        ls[onset] < 1.5 * _mean(ls[onset - 20 : onset]),
    )
    ctx.check("loss fell before step 99", _fell(ls[:onset], ratio=0.7))
    ctx.check("loss finite throughout", _finite(ls))


# -- basketry: a cosine classifier's scale typed 1600 for 16.00 -----------------------------------


class CosineHead(nn.Module):
    """Logits = scale * cos(feature, class prototype)."""

    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class WillowNet(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=6, scale=16.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _willow_rods(gen, batch, seed, classes=6, noise=0.9):
    """Twelve measurements of a basket-maker's willow rod (bark colour channels, pith
    diameter, taper, bending stiffness, ...; standardised) around one prototype per variety."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, 12, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, 12, generator=gen), y


@scenario(
    family="basketry_willow_variety_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP with a cosine-similarity head (logits = scale * cos(feature, prototype)) "
    "naming which of 6 willow varieties a basket-maker's rod is from 12 measurements, NAdam "
    "at 2e-3, cross-entropy. The config's scale of 16.00 was typed 1600 (the decimal point "
    "dropped): cosine gaps of a few hundredths become logit gaps in the tens, and float32 "
    "softmax gives the top class exactly 1.0 and the others exactly 0 on most rows from the "
    "first steps on; the rows it gets right give exactly zero gradient and the wrong ones a "
    "loss in the tens to hundreds; finite throughout.",
)
def h197_basketry_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(19708)
    model = WillowNet(scale=1600.0)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    probe_x, probe_y = next(_willow_rods(torch.Generator().manual_seed(80), 256, seed=8))
    with torch.no_grad():
        model.head.scale = 16.0
        intended = collapsed_fraction(model(probe_x), probe_y)
        model.head.scale = 1600.0
    collapsed, exact_zero = [], []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        p = torch.softmax(out.detach(), -1)
        exact_zero.append(float((p == 0).any(-1).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _willow_rods(gen, 64, seed=8),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("at scale 16 no row collapses at init", intended == 0.0)
    ctx.check(
        "over half the rows' target probability exactly 1.0 at the end",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check(
        "over 80% of rows hold an exact 0 probability from step 10", min(exact_zero[10:]) > 0.8
    )
    ctx.check(
        "loss of the wrong rows in the tens or more: mean loss above 1 at the end",
        _mean(ctx.losses[-20:]) > 1.0,
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- BMX: the pipeline's scaler step dropped, raw units into a ReLU net at a high rate -----------


def _bmx_jumps(gen, batch, seed):
    """A BMX jump in the units the timing rig logs: take-off speed (km/h), ramp angle (deg),
    lip height (cm), rider mass (kg), wheel size (inch), head wind (km/h); label: landed
    clean."""
    lo = torch.tensor([20.0, 30.0, 100.0, 50.0, 20.0, 0.0])
    span = torch.tensor([25.0, 30.0, 200.0, 40.0, 6.0, 20.0])
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        u = torch.rand(batch, 6, generator=gen)
        logit = 3 * torch.tanh((u - 0.5) @ w) + torch.sin(6 * u[:, 0] * u[:, 1])
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(2 * logit)).float()
        yield lo + span * u, y


@scenario(
    family="bmx_jump_landing_raw_units_relu_mlp",
    optimizer="AdamW",
    cause="loss_of_plasticity",
    where=("fc1", "act1", "fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting whether a BMX rider lands a jump "
    "clean from six readings, BCE with logits, AdamW at 3e-2 (weight decay 1e-2), a rate "
    "tuned on standardised inputs. The StandardScaler step was dropped from the pipeline, so "
    "the inputs come in raw units (speeds 20-45 km/h, heights 100-300 cm, ...), all positive "
    "and large: every gradient a unit gets has the same sign on all its weights, Adam's "
    "steps move them together, and fc1's dead share goes from a quarter at init to over 90% "
    "by step 25 (fc2's to about three quarters) and never comes back; the loss stalls "
    "above 0.5.",
)
def h197_bmx_raw_units_dead_relu(ctx: Context) -> None:
    gen = seeded(19709)
    model = Stack(6, hidden=64, act=nn.ReLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=1e-2)
    probe_x, _ = next(_bmx_jumps(torch.Generator().manual_seed(90), 512, seed=9))
    dead1, dead2 = [], []

    def after(step):
        with torch.no_grad():
            h1 = model.act1(model.fc1(probe_x))
            dead1.append(dead_fraction(h1))
            dead2.append(dead_fraction(model.act2(model.fc2(h1))))

    with torch.no_grad():
        h1 = model.act1(model.fc1(probe_x))
        start1, start2 = dead_fraction(h1), dead_fraction(model.act2(model.fc2(h1)))
    _train(
        ctx,
        model,
        opt,
        _bmx_jumps(gen, 64, seed=9),
        200,
        F.binary_cross_entropy_with_logits,
        after=after,
    )
    ctx.check("under 30% of fc1's units dead at init", start1 < 0.3)
    ctx.check("over 90% of fc1's units dead at the end", dead1[-1] > 0.9)
    ctx.check("fc1's dead share never below 85% after step 50", min(dead1[50:]) > 0.85)
    ctx.check("fc2's dead share grew by a quarter", dead2[-1] > start2 + 0.25)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- mud cracks: a linear warm-up lambda that lost its min(1, .) ----------------------------------


@scenario(
    family="mud_crack_polygon_spacing_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=40,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting the spacing of desiccation-crack polygons in "
    "drying mud (standardised) from 8 readings (clay fraction, layer thickness, drying "
    "rate, ...), plain SGD, MSE, a LambdaLR warm-up written lambda s: s / warmup with "
    "warmup 40 and base 0.2: the min(1.0, .) was left out, so after step 40 the rate keeps "
    "climbing linearly (0.2 at 40, 0.4 at 80, 0.7 at 140). The sharpness falls from about 7 "
    "as the rate rises but not fast enough: lr x sharpness, about 1.4 at step 40, passes 2 "
    "by step 140, the iterates oscillate along the sharpest direction with growing "
    "amplitude and the loss blows up near step 150.",
)
def h197_mud_crack_warmup_without_min(ctx: Context) -> None:
    gen = seeded(19710)
    model = Stack(8, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    warmup = 40
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / warmup)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(100), 256, 8, seed=10))
    products = {}

    def before(step):
        if step % 20 == 0:
            lr = opt.param_groups[0]["lr"]
            products[step] = lr * _sharpness(model, F.mse_loss, probe_x, probe_y)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=10),
        300,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    finite = [v for v in ls if math.isfinite(v)]
    low = min(finite[: warmup + 20])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("lr x sharpness below 2 at step 40", products[warmup] < 2)
    ctx.check(
        "lr x sharpness past 2 before the blow-up",
        blow is not None and any(v > 2 for s, v in products.items() if s < blow),
    )
    ctx.check("loss fell during the warm-up", _fell(ls[:warmup], ratio=0.7))
    ctx.check("loss blew up 100x its early low after step 40", blow is not None and blow > warmup)


# -- controls -------------------------------------------------------------------------------------


class TrailRound(nn.Module):
    """A message-passing round: LayerNorm(h + GELU(upd(h) + msg(sum of neighbours' h)))."""

    def __init__(self, dim):
        super().__init__()
        self.upd = nn.Linear(dim, dim)
        self.msg = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h, adj):
        return self.norm(h + F.gelu(self.upd(h) + self.msg(adj @ h)))


class AntTrailMPNN(nn.Module):
    def __init__(self, d_in=5, dim=32):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.round1 = TrailRound(dim)
        self.round2 = TrailRound(dim)
        self.round3 = TrailRound(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x, adj):
        h = self.embed(x)
        for r in (self.round1, self.round2, self.round3):
            h = r(h, adj)
        return self.head(h).squeeze(-1)


def _ant_trails(gen, batch, seed, nodes=10):
    """Foraging-trail networks of 10 junctions (distance to the nest, to food, ground
    temperature, slope, traffic count; standardised), trails between neighbours, and each
    junction's pheromone level, which follows its own readings and its neighbours' traffic."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, generator=g)
    v = torch.randn(5, generator=g)
    while True:
        x = torch.randn(batch, nodes, 5, generator=gen)
        upper = (torch.rand(batch, nodes, nodes, generator=gen) < 0.3).float().triu(1)
        adj = upper + upper.transpose(1, 2)
        y = torch.tanh(x @ w / 2) + 0.2 * (adj @ torch.tanh(x @ v)[..., None]).squeeze(-1)
        yield (x, adj), y + 0.1 * torch.randn(batch, nodes, generator=gen)


@scenario(
    family="ant_foraging_trail_pheromone_mpnn",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A message-passing net (embed, three rounds of update + summed-neighbour messages "
    "with a residual and LayerNorm, a head) predicting each junction's pheromone level on "
    "ant foraging-trail networks, Adamax at 4e-3, Huber loss, noisy targets, "
    "ReduceLROnPlateau on the training loss (factor 0.5, patience 15): the rate is halved "
    "at least once during the run as the loss levels off. A control.",
)
def h197_ant_trail_plateau_halving(ctx: Context) -> None:
    gen = seeded(19711)
    model = AntTrailMPNN()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(ctx, model, opt, _ant_trails(gen, 32, seed=11), 260, F.huber_loss, sched=sched)
    lr = opt.param_groups[0]["lr"]
    ctx.check("learning rate halved at least once (<= 2e-3 at the end)", lr <= 2e-3 + 1e-12)
    ctx.check("loss fell by half", _fell(ctx.losses, k=20, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class DrumGRU(nn.Module):
    """Embeds quantised inter-strike intervals, a GRU, a species head from the last state and
    an auxiliary next-interval head tied to the embedding."""

    def __init__(self, vocab=32, dim=24, hidden=48, classes=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)
        self.to_embed = nn.Linear(hidden, dim)

    def forward(self, tokens):
        out, _ = self.gru(self.embed(tokens))
        nxt = self.to_embed(out) @ self.embed.weight.T  # tied with the embedding
        return self.head(out[:, -1]), nxt


def _drum_rolls(gen, batch, seed, length=24, classes=5, vocab=32):
    """A woodpecker's drum roll as quantised intervals between strikes: each species drums at
    its own starting interval and acceleration; noisy."""
    g = torch.Generator().manual_seed(seed)
    start = 8 + 16 * torch.rand(classes, generator=g)
    accel = -0.4 + 0.8 * torch.rand(classes, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        iv = (
            start[y][:, None]
            + accel[y][:, None] * t
            + 2.5 * torch.randn(batch, length, generator=gen)
        )
        yield iv.round().clamp(0, vocab - 1).long(), y


@scenario(
    family="woodpecker_drum_roll_species_gru",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A GRU classifier naming which of 5 woodpecker species drummed a roll from 24 "
    "quantised inter-strike intervals, with an auxiliary next-interval head tied to the "
    "input embedding (weight 0.2), AdamW at 3e-3 in two param groups (weight decay 0.05 on "
    "matrices, none on biases and the embedding), linear warm-up over 20 steps then cosine "
    "decay, gradient clipping at 1.0, label smoothing 0.1. A control.",
)
def h197_woodpecker_drum_gru_warmup_cosine(ctx: Context) -> None:
    gen = seeded(19712)
    model = DrumGRU()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 220, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = _drum_rolls(gen, 32, seed=12)
    correct = []
    for _ in range(steps):
        tokens, y = next(batches)
        ctx.targets(y)
        logits, nxt = model(tokens)
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        aux = F.cross_entropy(nxt[:, :-1].reshape(-1, nxt.shape[-1]), tokens[:, 1:].reshape(-1))
        (loss + 0.2 * aux).backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        correct.append(float((logits.argmax(-1) == y).float().mean()))
    ctx.check("loss fell by half", _fell(ctx.losses, k=20, ratio=0.5))
    ctx.check("accuracy above 80% over the last 20 steps", _mean(correct[-20:]) > 0.8)
    ctx.check("loss finite throughout", _finite(ctx.losses))


def _smoulder(gen, batch, seed):
    """Ten readings over a peat fire (surface temperature, moisture, bulk density, wind, ...;
    standardised) and the smoulder front's depth (standardised), with noisy probes."""
    yield from _readings(gen, batch, 10, seed, noise=0.15)


@scenario(
    family="peat_fire_smoulder_depth_fp16_silu_mlp",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP estimating how deep a peat fire's smouldering front has burned from 10 "
    "standardised surface readings, Adam under OneCycleLR (max 3e-3), Huber loss, fp16 "
    "autocast with a torch.amp.GradScaler, 2 micro-batches accumulated per step, noisy "
    "probes. A control.",
)
def h197_peat_fire_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(19713)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 240
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _smoulder(gen, 32, seed=13),
        steps,
        F.huber_loss,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, k=20, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("scaler scale never fell below 2**10", min(ctx.scales) >= 2**10)
