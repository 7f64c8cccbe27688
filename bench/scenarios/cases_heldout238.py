"""Held-out set 238 (``h238_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a rappel descender-heat residual MLP without normalisation
whose branches' zero-init was dropped in a port, a filigree solder-joint net whose spread head
takes the sqrt of a raw linear output, an ice-screw holding-load GELU regressor whose weight EMA
is copied into the live model by a modulo typo, a straight-razor honing SiLU regressor whose
gradual-unfreezing step was typed 2000 for 20, a polder pump-discharge ReLU regressor fed one
station's batch in litres per second, a dredger cutter-torque GELU regressor whose epoch-end batch
goes through a reduction="sum" path, a diving-bell air-pocket GELU regressor whose warm-up peak
was typed 0.8 for 0.08, an opal play-of-colour cosine classifier whose temperature was typed 5e-4
for 5e-2, a seaweed frond-transect conv1d tagger fed 0/255 masks, an ice-shelf rift tanh regressor
with a hand-rolled decoupled weight decay of the wrong sign, and three controls (a sauerkraut
brine-pH ReLU regressor under plain SGD at a high but stable rate, a scything-stroke conv1d
classifier under fp16 autocast with a GradScaler, a bathyscaphe descent-rate GRU regressor).

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
    amp=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
    unscale=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``unscale(step)`` runs between backward and the optimizer
    step, ``after(step)`` runs after the optimizer step; ``amp`` is the autocast dtype (None:
    float32); stops after logging a NaN loss."""
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
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
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
        if scaler is not None:
            scaler.unscale_(opt)
        if unscale is not None:
            unscale(step)
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


# -- rappelling: a residual MLP without normalisation, its branches' zero-init forgotten ---------


class RopeBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        for m in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
        # the recipe zero-initialised fc2 (a residual branch starting as the identity); the port
        # dropped that line, so every branch starts at full Kaiming gain

    def forward(self, x):
        return x + self.fc2(F.relu(self.fc1(x)))


class RappelNet(nn.Module):
    def __init__(self, d_in=10, dim=48, depth=10):
        super().__init__()
        self.stem = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(RopeBlock(dim) for _ in range(depth))
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h).squeeze(-1)


def _rappels(gen, batch, seed=1):
    """Ten standardised readings of a rappel (climber mass, rope diameter, descent speed, device
    type, ...) and the descender's peak temperature, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="rappel_descender_heat_residual_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("stem", "blocks.0"),
    diverges="auto",
    heldout=True,
    note="A 10-block residual ReLU MLP without any normalisation (stem, blocks.0-9 each x + fc2(relu(fc1(x))), head) regressing a rappel descender's peak temperature from 10 standardised readings (climber mass, rope diameter, descent speed, ...), plain SGD at 1e-3, MSE. The recipe zero-initialised each branch's fc2 so the blocks start as the identity; the port dropped that line, so both layers of every branch carry full Kaiming gain and each block roughly doubles the residual stream's variance: at step 0 the gradient on the residual stream grows at every block on its way back to the stem (over 100x), the first SGD steps throw the weights off and the loss blows up to inf/NaN within a few steps.",
)
def h238_rappel_residual_no_zero_init(ctx: Context) -> None:
    gen = seeded(23801)
    model = RappelNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    seen = {}
    streams = []

    def keep(module, inputs, output):
        if output.requires_grad:
            output.retain_grad()
            streams.append(output)

    hooks = [model.stem.register_forward_hook(keep)]
    hooks += [b.register_forward_hook(keep) for b in model.blocks]

    def unscale(step):
        if step == 0:
            seen["norms"] = [float(h.grad.norm()) for h in streams]
            for h in hooks:
                h.remove()
        streams.clear()

    _train(ctx, model, opt, _rappels(gen, 64), 60, F.mse_loss, unscale=unscale)
    ls = ctx.losses
    norms = seen.get("norms", [0.0, 1.0])
    ctx.check(
        "gradient on the residual stream grows over 100x from the last block to the stem",
        norms[0] > 100 * max(norms[-1], 1e-30),
    )
    ctx.check(
        "and grows at every block on the way",
        all(a > b for a, b in zip(norms[:-1], norms[1:], strict=True)),
    )
    broke = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 1e6 * ls[0]), None)
    ctx.check(
        "loss blows up (non-finite or 1e6x) within 10 steps", broke is not None and broke < 10
    )


# -- filigree: a Gaussian head taking the sqrt of a raw linear output ------------------------------


class SqrtSpread(nn.Module):
    """The hand-written spread head: sqrt of a raw linear output (softplus was meant)."""

    def __init__(self, hidden):
        super().__init__()
        self.lin = nn.Linear(hidden, 1)
        nn.init.normal_(self.lin.weight, std=0.01)
        nn.init.constant_(self.lin.bias, 1.0)

    def forward(self, h):
        return torch.sqrt(self.lin(h)).squeeze(-1)


class FiligreeNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.spread = SqrtSpread(hidden)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.stack([self.mean(h).squeeze(-1), self.spread(h)], -1)


def _normal_nll(out, y):
    sd = out[:, 1]
    return (torch.log(sd) + 0.5 * ((y - out[:, 0]) / sd) ** 2).mean()


def _joints(gen, batch, seed=2):
    """Eight standardised readings of a silver filigree solder joint (wire gauge, solder grade,
    flame time, flux, ...) and its pull strength, standardised; some joint kinds are measured
    very precisely (noise 0.02), others poorly (noise 0.5)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        sd = 0.02 + 0.48 * torch.sigmoid(4 * x[:, 1])
        y = torch.tanh(x @ w / math.sqrt(8)) + sd * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="filigree_solder_joint_sqrt_spread_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("spread",),
    diverges=116,
    heldout=True,
    note="A SiLU MLP (fc1, fc2) with a mean head and a hand-written spread head (spread: sqrt of a raw linear output; softplus was meant) predicting a silver filigree solder joint's pull strength and its uncertainty from 8 standardised readings, Gaussian NLL log(sd) + (y - mu)^2 / 2sd^2, Adamax at 1e-3. The spread head starts at sd 1; the precisely measured joint kinds (noise 0.02) push their sd down, the linear output under the sqrt crosses 0 for one of them and sqrt of a negative gives NaN: the loss is NaN at that step.",
)
def h238_filigree_sqrt_raw_variance(ctx: Context) -> None:
    gen = seeded(23802)
    model = FiligreeNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    seen = {}

    def watch(step, out, x, y):
        if "bad" not in seen and not torch.isfinite(out).all():
            seen["bad"] = step
            seen["mean_finite"] = bool(torch.isfinite(out[:, 0]).all())
            with torch.no_grad():
                h = F.silu(model.fc2(F.silu(model.fc1(x))))
                seen["neg_under_sqrt"] = bool((model.spread.lin(h) < 0).any())

    _train(ctx, model, opt, _joints(gen, 64), 300, _normal_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss goes NaN", bad is not None and math.isnan(ls[bad]))
    ctx.check("the spread head first went non-finite at that step", seen.get("bad") == bad)
    ctx.check("a negative value under the sqrt at that step", seen.get("neg_under_sqrt") is True)
    ctx.check("the mean head still finite at that step", seen.get("mean_finite") is True)
    ctx.check(
        "loss fell and was finite before", bad is not None and bad > 30 and _fell(ls[:bad], k=10)
    )


# -- ice screws: EMA weights copied into the live model by a modulo typo ---------------------------


def _screws(gen, batch, seed=3):
    """Ten standardised readings of an ice-screw placement (ice temperature, screw length, angle,
    ice type, ...) and the load it held in a pull test, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="ice_screw_holding_load_gelu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the load an ice-screw placement held from 10 standardised readings (ice temperature, screw length, angle, ...), Adam at 2e-3, MSE. The loop keeps an exponential moving average of the weights (decay 0.995) meant to be copied into the model once, at the end (step == 299); the condition was written step % 150 == 0 and step > 0, so at step 150 the lagging average overwrites the live weights once. The loss jumps to several times its level at step 151 and the run recovers within a few dozen steps; the batches, the rate and the gradients before are ordinary; finite.",
)
def h238_ice_screw_ema_swap_typo(ctx: Context) -> None:
    gen = seeded(23803)
    onset = 150
    model = Stack(10, hidden=64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ema = [p.detach().clone() for p in model.parameters()]

    def after(step):
        with torch.no_grad():
            for e, p in zip(ema, model.parameters(), strict=True):
                e.mul_(0.995).add_(p, alpha=0.005)
            if step % onset == 0 and step > 0:  # meant: step == steps - 1
                for e, p in zip(ema, model.parameters(), strict=True):
                    p.copy_(e)

    _train(ctx, model, opt, _screws(gen, 64), 300, F.mse_loss, after=after)
    ls, gn = ctx.losses, ctx.grad_norms
    level = _mean(ls[130:150])
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("loss right after the swap over 3x its level", ls[onset + 1] > 3 * level)
    ctx.check(
        "gradient before the swap ordinary (under 3x the median)",
        gn[onset] < 3 * _median(gn[100:150]),
    )
    ctx.check("loss back within 1.5x its level (steps 250-300)", _mean(ls[250:]) < 1.5 * level)
    ctx.check("finite", _finite(ls))


# -- straight razor honing: a gradual-unfreezing step typed 2000 for 20 ------------------------------


def _edges(gen, batch, seed=4):
    """Twelve standardised readings of a straight razor on the hone (stone grit, laps, pressure,
    bevel width, ...) and the edge's sharpness in a hanging-hair test, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="straight_razor_honing_edge_silu_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a straight razor's edge sharpness from 12 standardised honing readings (grit, laps, pressure, bevel width, ...), AdamW at 3e-3 (weight decay 0.01) with two param groups, body (fc1, fc2) and head, and a gradual-unfreezing LambdaLR that keeps the body's rate at 0 until step `unfreeze_at`. The value was typed 2000 for 20 in the config, so over the 240-step run fc1 and fc2 never move (relative update exactly 0, decoupled decay scaled by the rate too) while the head moves over 1e-3 of its weights a step; the loss falls through the head only and ends well above the intended schedule's; finite.",
)
def h238_straight_razor_unfreeze_typo(ctx: Context) -> None:
    steps = 240

    def run(c, unfreeze_at):
        gen = seeded(23804)
        model = Stack(12, hidden=64, act=nn.SiLU)
        body = list(model.fc1.parameters()) + list(model.fc2.parameters())
        opt = torch.optim.AdamW(
            [{"params": body}, {"params": list(model.head.parameters())}],
            lr=3e-3,
            weight_decay=0.01,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, [lambda s: 0.0 if s < unfreeze_at else 1.0, lambda s: 1.0]
        )
        ratios = {"fc1": [], "fc2": [], "head": []}
        prev = {}

        def before(step):
            for name in ratios:
                prev[name] = getattr(model, name).weight.detach().clone()

        def after(step):
            for name in ratios:
                w = getattr(model, name).weight.detach()
                ratios[name].append(float((w - prev[name]).norm() / w.norm()))

        _train(
            c,
            model,
            opt,
            _edges(gen, 64),
            steps,
            F.mse_loss,
            before=before,
            after=after,
            sched=sched,
        )
        return ratios

    twin = _Quiet()
    run(twin, unfreeze_at=20)  # the intended schedule, for the checks only
    ratios = run(ctx, unfreeze_at=2000)
    ls = ctx.losses
    ctx.check("fc1 never moves", max(ratios["fc1"]) == 0.0)
    ctx.check("fc2 never moves", max(ratios["fc2"]) == 0.0)
    ctx.check("the head's relative update over 1e-3 per step", _median(ratios["head"]) > 1e-3)
    ctx.check(
        "loss at the end over 1.5x that of the intended schedule",
        _mean(ls[-30:]) > 1.5 * _mean(twin.losses[-30:]),
    )
    ctx.check("loss fell", _fell(ls, ratio=0.9))
    ctx.check("finite", _finite(ls))


# -- polder: one pumping station's shard in litres per second -------------------------------------


def _pumps(gen, batch, seed=5):
    """Ten standardised readings of a polder pumping station (inner water level, rainfall,
    wind set-up, pump speed, ...) and the discharge in cubic metres per second, standardised
    (about unit scale)."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="polder_pump_discharge_relu_regressor",
    optimizer="SGD (momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=140,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a polder pumping station's discharge from 10 standardised readings (inner water level, rainfall, wind set-up, pump speed, ...), SGD at 0.01 with momentum 0.9, Huber loss (delta 1). The batch at step 140 comes from a station whose export writes litres per second instead of cubic metres per second, so its targets are 1000x: that batch's loss is hundreds of times the usual (the Huber loss is linear out there, so the gradient grows only a few times), and the run returns to its level afterwards; finite.",
)
def h238_polder_litres_per_second_shard(ctx: Context) -> None:
    gen = seeded(23805)
    onset = 140
    model = Stack(10, hidden=64, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sizes = []

    def alter(step, x, y):
        if step == onset:
            y = y * 1000.0  # litres per second, never converted
        sizes.append(float(y.abs().max()))
        return x, y

    _train(
        ctx,
        model,
        opt,
        _pumps(gen, 64),
        240,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        alter=alter,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("targets at the onset over 100x the usual", sizes[onset] > 100 * _median(sizes))
    ctx.check(
        "loss at the onset over 100x the median before", ls[onset] > 100 * _median(ls[110:140])
    )
    ctx.check(
        "gradient at the onset over 2x the median before", gn[onset] > 2 * _median(gn[110:140])
    )
    ctx.check(
        "loss back within 2x its level (steps 200-240)", _mean(ls[200:]) < 2 * _mean(ls[110:140])
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- dredger: the epoch's last batch goes through a reduction="sum" path ---------------------------


def _cutters(gen, batch, seed=6):
    """Ten standardised readings of a cutter-suction dredger (cutter speed, swing rate, soil
    strength, ladder depth, ...) and the cutter-head torque, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="dredger_cutter_head_torque_gelu_regressor",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=119,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a cutter-suction dredger's cutter-head torque from 10 standardised readings (cutter speed, swing rate, soil strength, ...), SGD Nesterov at 0.01 with momentum 0.9, MSE. An epoch is 120 steps; the loop routes an epoch's last batch through a separate path written for partial batches, which builds the loss with reduction='sum' instead of 'mean' (the logged loss is still the per-sample mean). At step 119 the gradient backpropagated is 64x the usual (batch 64) though the batch and its loss are ordinary; the step and the momentum it leaves throw the weights off, the loss jumps and recovers over the next dozens of steps; finite.",
)
def h238_dredger_last_batch_sum_reduction(ctx: Context) -> None:
    gen = seeded(23806)
    onset = 119
    model = Stack(10, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def scale_loss(step, total):
        return total * 64 if step == onset else total  # the partial-batch path sums

    _train(ctx, model, opt, _cutters(gen, 64), 220, F.mse_loss, scale_loss=scale_loss)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at the onset over 30x the median before", gn[onset] > 30 * _median(gn[90:119])
    )
    ctx.check(
        "loss at the onset within 2x its level (the batch is ordinary)",
        ls[onset] < 2 * _mean(ls[100:119]),
    )
    ctx.check(
        "loss after the kick over 2x its level before", max(ls[120:130]) > 2 * _mean(ls[100:119])
    )
    ctx.check(
        "loss back within 1.5x its level (steps 190-220)",
        _mean(ls[190:]) < 1.5 * _mean(ls[100:119]),
    )
    ctx.check("finite", _finite(ls))


# -- diving bell: a warm-up peak typed 0.8 for 0.08 --------------------------------------------------


def _bells(gen, batch, seed=7):
    """Twelve standardised readings of a diving bell's descent (depth, water temperature,
    pump rate, crew count, ...) and the air pocket's volume, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="diving_bell_air_pocket_gelu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=50,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a diving bell's air-pocket volume from 12 standardised readings (depth, water temperature, pump rate, ...), plain SGD, MSE, with a linear warm-up over 100 steps to a peak meant to be 0.08 (LambdaLR). The peak was typed 0.8: the rate keeps climbing, lr x sharpness (power iteration on a fixed batch) passes 2 around step 50 of the warm-up; the run hovers at the edge of stability for a while (loss oscillating a little above its level) while the rate keeps climbing, lr x sharpness reaches 3 and more, and the loss blows up to inf/NaN at step 107.",
)
def h238_diving_bell_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(23807)
    warm, peak = 100, 0.8
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 1.0))
    probe = next(_bells(torch.Generator().manual_seed(4747), 256))
    record = {}

    def before(step):
        if step % 5 == 0 and step <= warm:
            lr = opt.param_groups[0]["lr"]
            record[step] = lr * _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _bells(gen, 64), 160, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    cross = next((s for s in sorted(record) if record[s] > 2), None)
    low = min(ls[: cross or len(ls)])
    broke = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("lr x sharpness under 2 at first", record.get(0, 9.0) < 2)
    ctx.check("lr x sharpness passes 2 during the warm-up", cross is not None)
    ctx.check("loss fell before", cross is not None and _fell(ls[:cross], ratio=0.5))
    ctx.check("lr x sharpness over 3 before the blow-up", max(record.values()) > 3)
    ctx.check(
        "loss blows up (100x its low) within 70 steps after the crossing",
        broke is not None and cross is not None and cross < broke < cross + 70,
    )


# -- opal: a cosine classifier's temperature typed 5e-4 for 5e-2 ----------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, tau):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.tau = tau

    def forward(self, z):
        return F.normalize(z, dim=-1) @ F.normalize(self.weight, dim=-1).T / self.tau


class OpalNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=6, tau=0.05):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes, tau)

    def forward(self, x):
        return self.head(self.fc2(F.relu(self.fc1(x))))


@scenario(
    family="opal_play_of_colour_cosine_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A cosine classifier (fc1, fc2, head: cosine similarity to learned class vectors divided by a temperature) grading an opal's play of colour into six grades from 16 standardised spectral readings, Adagrad at 0.05, cross-entropy. The temperature was typed 5e-4 for 5e-2, so the logits span +-2000: the float32 softmax rounds the target's probability to exactly 1.0 on over half the rows by steps 150-200 (the same run at 5e-2 saturates on under a tenth); finite.",
)
def h238_opal_cosine_temperature_typo(ctx: Context) -> None:
    def run(tau, c):
        gen = seeded(23808)
        model = OpalNet(tau=tau)
        opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
        fractions = {}

        def watch(step, out, x, y):
            fractions[step] = collapsed_fraction(out.detach(), y)

        batches = _kinds(gen, 64, 16, 6, seed=8, noise=0.5)
        _train(c, model, opt, batches, 200, F.cross_entropy, classifier=True, watch=watch)
        return fractions

    fixed = run(0.05, _Quiet())  # the intended temperature, for the checks only
    fractions = run(5e-4, ctx)
    ls = ctx.losses
    late = _mean([fractions[s] for s in range(150, 200)])
    ctx.check("over half the rows' target probability exactly 1.0 (steps 150-200)", late > 0.5)
    ctx.check(
        "with the intended temperature under 10% of rows saturate",
        _mean([fixed[s] for s in range(150, 200)]) < 0.1,
    )
    ctx.check("finite", _finite(ls))


# -- seaweed: frond masks stored as 0/255 and never divided ---------------------------------------


class FrondTagger(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(2, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Conv1d(width, 1, 1)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(h).squeeze(1)


def _transects(gen, batch, length=48, scale=255.0):
    """A diver's transect over a kelp bed: 48 positions of two standardised readings (green and
    near-infrared reflectance) and the frond mask, a 0/255 PNG strip; ``scale`` is what the
    loader leaves the mask at (255: never divided)."""
    pos = torch.arange(length, dtype=torch.float32)
    while True:
        centre = length * torch.rand(batch, 1, generator=gen)
        width = 4 + 8 * torch.rand(batch, 1, generator=gen)
        mask = ((pos - centre).abs() < width).float()
        green = 0.8 * mask + 0.4 * torch.randn(batch, length, generator=gen)
        nir = -0.6 * mask + 0.4 * torch.randn(batch, length, generator=gen)
        yield torch.stack([green, nir], 1), mask * scale


@scenario(
    family="seaweed_frond_transect_conv1d_tagger",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A 1-D convolutional tagger (conv1, conv2, head: a 1x1 convolution) marking which of 48 positions along a diver's transect lie over seaweed fronds from green and near-infrared reflectance, RAdam at 3e-3, BCEWithLogitsLoss. The masks are stored as 0/255 PNG strips and the loader never divides by 255, so frond positions have target 255: the BCE gradient sigmoid(z) - 255 never vanishes, the head's logits on frond positions are pushed up without bound (over 20x their early size, still growing at the end), and the loss falls far below 0; finite.",
)
def h238_seaweed_mask_not_divided(ctx: Context) -> None:
    gen = seeded(23809)
    model = FrondTagger()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sizes = {}

    def watch(step, out, x, y):
        sizes[step] = float(out.detach().abs().max(1).values.mean())

    _train(
        ctx,
        model,
        opt,
        _transects(gen, 32),
        240,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ls = ctx.losses
    early = _mean([sizes[s] for s in range(10, 20)])
    late = _mean([sizes[s] for s in range(220, 240)])
    ctx.check("head logits grew over 20x from steps 10-20 to the end", late > 20 * early)
    ctx.check(
        "head logits still growing at the end",
        late > 1.1 * _mean([sizes[s] for s in range(180, 200)]),
    )
    ctx.check("loss below 0 at the end", _mean(ls[-10:]) < 0)
    ctx.check("finite", _finite(ls))


# -- ice shelf: a hand-rolled decoupled weight decay with the wrong sign------------------------------------------


def _rifts(gen, batch, seed=10):
    """Ten standardised readings of an ice-shelf rift (ocean temperature, tidal flexure,
    thickness, strain rate, ...) and its monthly growth, standardised; noisy labels."""
    return _readings(gen, batch, 10, seed, noise=0.2)


@scenario(
    family="ice_shelf_rift_growth_tanh_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing an ice-shelf rift's monthly growth from 10 standardised readings (ocean temperature, tidal flexure, thickness, ...), noisy labels, RMSprop at 1e-3, MSE. torch's RMSprop has only coupled weight decay, so the team added a hand-rolled decoupled decay after each step on the weight matrices; its sign is wrong (p += lr x wd x p instead of p -= ...), with wd 8: every weight matrix grows by 0.8% a step against RMSprop's bounded steps. The loss falls at first, then climbs slowly and steadily as the weights inflate and the tanh units saturate, ending over 2x its low; no single step jumps; finite.",
)
def h238_ice_shelf_decay_sign(ctx: Context) -> None:
    gen = seeded(23810)
    lr, wd = 1e-3, 8.0
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.add_(p, alpha=lr * wd)  # meant: alpha=-lr * wd
        norms.append(float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm()))

    _train(ctx, model, opt, _rifts(gen, 64), 300, F.mse_loss, after=after)
    ls = ctx.losses
    smooth = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    low = min(smooth)
    at = smooth.index(low)
    ctx.check("loss fell at first", low < 0.8 * smooth[0])
    ctx.check("loss at the end over 2x its low", smooth[-1] > 2 * low)
    ctx.check("weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check(
        "the climb is gradual (no 10-step mean over 1.5x the one before after the low)",
        all(b < 1.5 * a for a, b in zip(smooth[at:], smooth[at + 1 :], strict=False)),
    )
    ctx.check("finite", _finite(ls))


# -- controls -----------------------------------------------------------------------------------


def _brines(gen, batch, seed=11):
    """Ten standardised readings of a sauerkraut crock (salt ratio, cellar temperature, days,
    cabbage variety, ...) and the brine's pH, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.1)


@scenario(
    family="sauerkraut_brine_ph_relu_regressor",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a sauerkraut crock's brine pH from 10 standardised readings (salt ratio, cellar temperature, days, ...), plain SGD at a high but stable constant rate of 0.15 (lr x sharpness on a fixed batch about 1 at the start and 1.8 at the end, under the limit of 2), MSE, noisy labels. Healthy control.",
)
def h238_control_sauerkraut_sgd_high_lr(ctx: Context) -> None:
    gen = seeded(23811)
    lr = 0.15
    model = Stack(10, hidden=64, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    probe = next(_brines(torch.Generator().manual_seed(5151), 256))
    record = {}

    def before(step):
        if step in (0, 199):
            record[step] = lr * _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _brines(gen, 64), 200, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.5))
    ctx.check("lr x sharpness between 0.5 and 2 at the start", 0.5 < record.get(0, 0.0) < 2)
    ctx.check("lr x sharpness under 2 at the end", record.get(199, 9.0) < 2)
    ctx.check("finite", _finite(ls))


class SwathConv(nn.Module):
    def __init__(self, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(2, width, 7, padding=3)
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.max_pool1d(h, 2)
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _swaths(gen, batch, length=64, classes=4):
    """A scythe's sweep: 64 samples of a handle accelerometer (two axes), four stroke kinds
    (clean cut, chatter, ground strike, wet-grass drag) differing in rhythm and jolts."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.1 + 0.07 * y.float()[:, None] + 0.01 * torch.randn(batch, 1, generator=gen)
        a = torch.sin(freq * t)
        b = torch.cos(freq * t) * (1 + (y[:, None] == 2).float())
        x = torch.stack([a, b], 1) + 0.4 * torch.randn(batch, 2, length, generator=gen)
        yield x, y


@scenario(
    family="scything_stroke_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A 1-D convolutional classifier (conv1, conv2, head) naming four scything stroke kinds from 64 samples of a two-axis handle accelerometer, AdamW at 3e-3 with weight decay 0.01, cross-entropy with label smoothing 0.1, OneCycleLR, fp16 autocast with a torch.amp.GradScaler. Healthy control.",
)
def h238_control_scything_fp16(ctx: Context) -> None:
    gen = seeded(23812)
    steps = 200
    model = SwathConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    hits = []

    def watch(step, out, x, y):
        if step >= steps - 30:
            hits.append(float((out.argmax(1) == y).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _swaths(gen, 64),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check("accuracy over 80% at the end", _mean(hits) > 0.8)
    ctx.check("the scaler's scale stayed above 1", min(ctx.scales) > 1)
    ctx.check("finite", _finite(ls))


class BallastGRU(nn.Module):
    def __init__(self, feat=3, hidden=32):
        super().__init__()
        self.gru = nn.GRU(feat, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _dives(gen, batch, length=20, seed=13):
    """A bathyscaphe's descent: 20 frames of three standardised readings (ballast shot released,
    gasoline float temperature, current) and the descent rate at the last frame, standardised;
    heavy-tailed label noise (Student-t)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    t_noise = torch.distributions.StudentT(2.5)
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        drive = torch.tanh(x @ w / math.sqrt(3))
        weights = torch.exp(-0.2 * torch.arange(length - 1, -1, -1).float())
        y = (drive * weights).sum(1) / weights.sum() * 3
        yield x, y + t_noise.sample((batch,)) * 0.1


@scenario(
    family="bathyscaphe_descent_rate_gru_regressor",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="A GRU regressor (gru, head) of a bathyscaphe's descent rate from 20 frames of three standardised readings, heavy-tailed (Student-t) label noise, NAdam at 3e-3, Huber loss, gradient norm clipped at 1, gradient accumulation over 2, linear warm-up over 20 steps then cosine decay (LambdaLR). Healthy control.",
)
def h238_control_bathyscaphe_gru(ctx: Context) -> None:
    gen = seeded(23813)
    steps, warm = 160, 20
    model = BallastGRU()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def schedule(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    _train(
        ctx,
        model,
        opt,
        _dives(gen, 64),
        steps,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.6))
    ctx.check("finite", _finite(ls))
