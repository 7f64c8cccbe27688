"""Held-out set 216 (``h216_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a frost-quake ground-crack tanh regressor whose
ExponentialLR gamma was typed 1.05 for 0.95, a bossaball spike-height SiLU regressor whose
loss weight 1 / sigma^2 read a freshly reset running sigma for one step under AdamW, a kaval
breath-pitch deep ReLU regressor whose He-formula init got a gain of 1.5 meant for the
plain formula (clipped, its gradients stay 100x too large), a tide-gauge surge net with
a hand-written batch standardisation without eps meeting a slack-water batch (0/0), a footgolf
kick-distance ReLU MLP fed one batch with the spin in rpm, a melodica reed-buzz GELU regressor
whose stratified importance weight skipped its normalisation for one step, a sarod stroke
encoder/head net whose encoder warm-up used integer division, a bird-ringing cosine classifier
with its scale typed 640 for 64, a spearfishing multi-tag BCE net whose multi-hot targets count
duplicates, a zurna reed-grade ReLU classifier at an Adamax rate typed 1e-1 for 1e-3, and three
controls (a steel-guitar tab numeral residual CNN with BatchNorm under SGD momentum and StepLR,
a pan-flute tube tied autoencoder under AdamW and OneCycleLR, a snow-squall visibility
Gaussian-NLL net under fp16 autocast + GradScaler with accumulation and ReduceLROnPlateau).

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
    digits,
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
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``weight(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; it stops
    after logging a non-finite loss."""
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
                out = model(x)
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if weight is not None:
                total = weight(step, total)
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


def _signal(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised readings and a smooth nonlinear target (or targets) of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(1.3 * x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


def _classes(gen, batch, d_in, classes, seed, noise=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * torch.randn(batch, d_in, generator=gen)
        yield x, y


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


class Net(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, activations as modules."""

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


# -- frost quake: an ExponentialLR whose gamma was typed 1.05 for 0.95 -----------------------------


@scenario(
    family="frost_quake_ground_crack_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=58,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting the length of the ground crack a frost quake "
    "(cryoseism) opens (standardised) from 10 standardised readings (temperature drop rate, "
    "soil moisture, snow cover, ...), plain SGD from 0.02, MSE, and an ExponentialLR meant to "
    "decay with gamma 0.95 but written `gamma=1.05`: the rate grows 5% a step, lr x sharpness "
    "passes 2, the stability limit, around step 58 and the loss blows up as the rate keeps "
    "climbing.",
)
def h216_frost_quake_exponential_gamma_typo(ctx: Context) -> None:
    gen = seeded(21601)
    model = Net(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.05)
    probe = next(_signal(torch.Generator().manual_seed(61), 256, 10, seed=1))
    prod = {}

    def before(step):
        if step % 5 == 0 and step <= 120:
            lr = opt.param_groups[0]["lr"]
            prod[step] = lr * _sharpness(model, F.mse_loss, *probe)

    _loop(
        ctx, model, opt, _signal(gen, 64, 10, seed=1), 160, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    cross = min((s for s, v in prod.items() if math.isfinite(v) and v > 2), default=None)
    ctx.check("lr x sharpness below 1 at step 10", prod[10] < 1)
    ctx.check(
        "lr x sharpness first past 2 within 15 steps of the onset",
        cross is not None and abs(cross - 58) <= 15,
    )
    ctx.check("loss fell before the onset", _fell(ls[:55], ratio=0.7))
    late = [v if math.isfinite(v) else 1e30 for v in ls[58:]]
    ctx.check("loss past 20x its pre-onset low after the onset", max(late) > 20 * min(ls[:58]))


# -- bossaball: a loss weight 1 / sigma^2 read from a freshly reset running sigma ------------------


class BossaNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    family="bossaball_spike_height_silu_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting the contact height of a bossaball spike off "
    "the trampoline (standardised) from 8 standardised readings (approach speed, bounce "
    "timing, bed tension, ...), AdamW at 1e-3, MSE weighted by 1 / sigma^2 with sigma a running "
    "estimate of the target spread (about 1). At step 80 the run resumes from a checkpoint "
    "that did not save the running-statistics buffer; it is re-initialised to its default "
    "sigma = 0.01 and used for one step before being updated: the loss weight is 10,000 for "
    "that step, one gradient 10,000x too large fills Adam's second moment (beta2 0.999), and "
    "afterwards every update is over 20x smaller than before; the loss, pushed up by the burst, never gets back down to its earlier level; "
    "finite.",
)
def h216_bossaball_reset_sigma_weight(ctx: Context) -> None:
    gen = seeded(21602)
    model = BossaNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    params = list(model.parameters())
    sigma = {"v": 1.0}
    prev, moves = {}, {}

    def before(step):
        prev["w"] = _snapshot(params)
        if step == 80:
            sigma["v"] = 0.01  # the buffer's default after a resume without it

    def weight(step, total):
        w = total / sigma["v"] ** 2
        sigma["v"] = 1.0
        return w

    def after(step):
        moves[step] = _mean(
            [float((p.detach() - w).abs().mean()) for p, w in zip(params, prev["w"], strict=True)]
        )

    _loop(
        ctx,
        model,
        opt,
        _signal(gen, 64, 8, seed=2, noise=0.1),
        220,
        F.mse_loss,
        before=before,
        weight=weight,
        after=after,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 80 over 1000x the median before", gn[80] > 1000 * _median(gn[:80]))
    before_move = _mean([moves[s] for s in range(60, 80)])
    after_move = _mean([moves[s] for s in range(120, 220)])
    ctx.check(
        "updates after step 120 over 20x smaller than before the burst",
        after_move * 20 < before_move,
    )
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell before the burst", _fell(ls[:80], ratio=0.7))
    ctx.check(
        "loss at the end above its level before the burst", _mean(ls[-20:]) > _mean(ls[60:80])
    )


# -- kaval: a He-formula init helper handed a gain meant for a plain-formula helper ---------------


class DeepReLU(nn.Module):
    """Ten Linear layers (layers.0 .. layers.9) with functional ReLU between them, initialised
    with std = gain * sqrt(2 / fan_in) (the He formula, which already holds the ReLU gain)."""

    def __init__(self, d_in=12, width=64, depth=10, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1) + [1]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=gain * math.sqrt(2.0 / layer.in_features))
            nn.init.zeros_(layer.bias)

    def hidden(self, x):
        acts = []
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
            acts.append(x)
        return acts

    def forward(self, x):
        return self.layers[-1](self.hidden(x)[-1]).squeeze(-1)


def _depth_grads(model, x, y):
    """Backward signal at layers.0's and layers.8's outputs and layers.0's weight gradient."""
    acts = model.hidden(x)
    loss = F.mse_loss(model.layers[-1](acts[-1]).squeeze(-1), y)
    g = torch.autograd.grad(loss, [acts[0], acts[-1], model.layers[0].weight])
    return float(g[0].norm()), float(g[1].norm()), float(g[2].norm())


def _reference_grads(model, opt, batches, steps, clip):
    """The same loop without the monitor: (losses, pre-clip gradient norms)."""
    ls, gs = [], []
    for _ in range(steps):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gs.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ls.append(float(loss.detach()))
    return ls, gs


@scenario(
    family="kaval_breath_pitch_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A 10-layer ReLU MLP (layers.0 .. layers.9) predicting the pitch deviation of a "
    "kaval (end-blown shepherd's flute) in cents (standardised) from 12 standardised breath "
    "and fingering readings, SGD with momentum 0.9 at 1e-3, gradient clipping at 1.0, MSE. "
    "The init helper uses the He formula std = gain * sqrt(2 / fan_in), but the config's "
    "`init_gain: 1.5` was written for the old helper (std = gain / sqrt(fan_in)): every layer "
    "multiplies the backward signal by about 1.5, so it is over 20x larger at layers.0's "
    "output than at layers.8's and layers.0's weight gradient is over 1000x the correctly "
    "initialised model's at step 0. Clipping keeps the run finite, but the gradient norm "
    "stays over 100x that of the same run with gain 1 and the loss stays over 20x higher "
    "for all 150 steps.",
)
def h216_kaval_init_gain_formula_mixup(ctx: Context) -> None:
    probe = next(_signal(torch.Generator().manual_seed(63), 256, 12, seed=3))
    seeded(21633)
    ref = DeepReLU(gain=1.0)
    ref_ls, ref_gs = _reference_grads(
        ref,
        torch.optim.SGD(ref.parameters(), lr=1e-3, momentum=0.9),
        _signal(torch.Generator().manual_seed(21603), 64, 12, seed=3),
        150,
        1.0,
    )
    gen = seeded(21603)
    model = DeepReLU(gain=1.5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    bottom, top, g0 = _depth_grads(model, *probe)
    _, _, ref_g0 = _depth_grads(DeepReLU(gain=1.0), *probe)
    _loop(ctx, model, opt, _signal(gen, 64, 12, seed=3), 150, F.mse_loss, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("backward signal over 20x larger at layers.0 than at layers.8", bottom > 20 * top)
    ctx.check("layers.0 weight gradient over 1000x the He-init model's", g0 > 1000 * ref_g0)
    ctx.check(
        "gradient norm over the last 50 steps over 100x the gain-1 run's",
        _median(gn[-50:]) > 100 * _median(ref_gs[-50:]),
    )
    ctx.check(
        "loss over the last 20 steps over 20x the gain-1 run's",
        _mean(ls[-20:]) > 20 * _mean(ref_ls[-20:]),
    )
    ctx.check("finite", _finite(ls))


# -- tide gauge: a batch standardisation without eps meets a slack-water batch --------------------


class BatchStandardise(nn.Module):
    """Standardises each channel over the batch: (x - mean) / std, no eps."""

    def forward(self, x):
        return (x - x.mean(0)) / x.std(0)


class SurgeNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.norm = BatchStandardise()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.norm(x)))))).squeeze(-1)


def _gauge(gen, batch, seed):
    """Raw readings: gauge level (m, quantised to 1 cm), wind speed (m/s), pressure (hPa),
    wind direction sin/cos, river flow (m^3/s); target: the surge residual (standardised)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    loc = torch.tensor([2.0, 8.0, 1010.0, 0.0, 0.0, 40.0])
    scale = torch.tensor([0.8, 4.0, 12.0, 0.7, 0.7, 15.0])
    while True:
        z = torch.randn(batch, 6, generator=gen)
        x = loc + scale * z
        x[:, 0] = torch.round(x[:, 0] * 100) / 100
        y = torch.tanh(z @ w / math.sqrt(6)) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="tide_gauge_surge_standardised_silu_net",
    optimizer="Adadelta",
    cause="nonfinite",
    where=("norm",),
    diverges=95,
    onset=95,
    heldout=True,
    note="A SiLU MLP predicting the storm-surge residual at a harbour tide gauge from 6 raw "
    "readings (gauge level in m to the centimetre, wind, pressure, river flow), whose first "
    "module `norm` standardises every channel over the batch as (x - mean) / std with no eps, "
    "Adadelta at 1.0, MSE. Batches are drawn at random until step 95, when the loader serves "
    "one hour of slack water in time order: the gauge reads the same 2.00 m in every row, its "
    "std is exactly 0 and 0 / 0 gives NaN in every prediction: the loss is NaN at step 95.",
)
def h216_tide_gauge_slack_water_zero_std(ctx: Context) -> None:
    gen = seeded(21604)
    model = SurgeNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    seen = {}

    def alter(step, x, y):
        if step == 95:
            x = x.clone()
            x[:, 0] = 2.0
            seen["std"] = float(x[:, 0].std())
        return x, y

    _loop(ctx, model, opt, _gauge(gen, 64, seed=4), 140, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("gauge channel std exactly 0 in the step-95 batch", seen.get("std") == 0.0)
    ctx.check("loss finite before step 95", _finite(ls[:95]))
    ctx.check("first non-finite loss at step 95", _first_bad(ls) == 95)
    ctx.check("loss fell before step 95", _fell(ls[:95], ratio=0.7))


# -- footgolf: one batch with the spin logged in rpm instead of rev/s ----------------------------


@scenario(
    family="footgolf_kick_distance_relu_mlp",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting the carry of a footgolf drive (standardised) "
    "from 10 launch-monitor readings standardised with fixed statistics, RMSprop at 1e-3, MSE. "
    "The batch at step 120 comes from one course's export, where the monitor logged the spin "
    "columns (two of them) in rpm instead of rev/s: those inputs are 60x too large for that "
    "batch alone. The loss and gradient spike over 20x at step 120 and the run recovers.",
)
def h216_footgolf_spin_rpm_batch(ctx: Context) -> None:
    gen = seeded(21605)
    model = Net(10, hidden=64)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 3:5] = (x[:, 3:5] + 2.5) * 60.0
        return x, y

    _loop(ctx, model, opt, _signal(gen, 64, 10, seed=5), 200, F.mse_loss, alter=alter)
    ls, gn = ctx.losses, ctx.grad_norms
    base = _median(ls[100:120])
    ctx.check("loss at step 120 over 20x the median of the 20 before", ls[120] > 20 * base)
    ctx.check(
        "gradient at step 120 over 20x the median before", gn[120] > 20 * _median(gn[100:120])
    )
    ctx.check("finite", _finite(ls))
    ctx.check("loss back under 3x its pre-batch level by the end", _mean(ls[-10:]) < 3 * base)


# -- melodica: a stratified importance weight that skipped its normalisation for one step -------


class ReedNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    family="melodica_reed_buzz_gelu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) predicting the buzz level of a melodica reed plate "
    "(standardised) from 10 standardised bench readings, SGD with Nesterov momentum at 0.01, "
    "Huber loss. Batches are sampled stratified over 48 reed-plate lots, each sample weighted "
    "by 1 / (48 p_lot) = 1. At step 100 the sampler is rebuilt at the epoch boundary and for "
    "that one step the weight is computed as 1 / p_lot, without the 48: the loss and its "
    "gradient are 48x for one step (the batch itself is ordinary); the run recovers.",
)
def h216_melodica_importance_weight_unnormalised(ctx: Context) -> None:
    gen = seeded(21606)
    model = ReedNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    lots = 48

    def weight(step, total):
        p_lot = 1.0 / lots
        w = 1.0 / p_lot if step == 100 else 1.0 / (lots * p_lot)
        return total * w

    _loop(
        ctx,
        model,
        opt,
        _signal(gen, 64, 10, seed=6, noise=0.1),
        200,
        F.huber_loss,
        weight=weight,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 100 over 30x the median of the 20 before",
        gn[100] > 30 * _median(gn[80:100]),
    )
    ctx.check(
        "the step-100 loss itself is ordinary (under 3x the median before)",
        ls[100] < 3 * _median(ls[80:100]),
    )
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell over the run", _fell(ls, ratio=0.7))


# -- sarod: an encoder warm-up written with integer division -------------------------------------


class StrokeNet(nn.Module):
    def __init__(self, d_in=16, hidden=48, classes=6):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.encoder(x))


@scenario(
    family="sarod_stroke_encoder_head_net",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("encoder", "encoder.0", "encoder.2"),
    diverges=None,
    heldout=True,
    note="An encoder (encoder.0, encoder.2, GELU) and a linear head classifying six sarod "
    "right-hand strokes (da, ra, diri, ...) from 16 standardised pick-sensor features, RAdam "
    "with two param groups (encoder and head at 5e-3), cross-entropy. A LambdaLR gives the "
    "head a constant rate and the encoder a warm-up written `min(1.0, step // 500)`, integer "
    "division for `step / 500`: the encoder's factor is 0 for the whole 200-step run, its "
    "weights never move while the head trains on random features; finite.",
)
def h216_sarod_encoder_warmup_floor_division(ctx: Context) -> None:
    gen = seeded(21607)
    model = StrokeNet()
    opt = torch.optim.RAdam(
        [
            {"params": model.encoder.parameters(), "lr": 5e-3},
            {"params": model.head.parameters(), "lr": 5e-3},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: min(1.0, s // 500), lambda s: 1.0])
    enc, head = list(model.encoder.parameters()), list(model.head.parameters())
    enc0, head0 = _snapshot(enc), _snapshot(head)
    _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 6, seed=7, noise=0.8),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("encoder weights never moved", _moved(enc, enc0) == 0.0)
    ctx.check("head weights moved over 0.05", _moved(head, head0) > 0.05)
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell somewhat (head only)", _fell(ls, ratio=0.9))


# -- bird ringing: a cosine classifier's scale typed 640 for 64 ------------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class RingingNet(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=8, scale=64.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="bird_ringing_wing_species_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP with a cosine head (normalised features against normalised class "
    "weights, times a scale) identifying 8 warbler species at a bird-ringing station from 12 "
    "biometrics (wing length, tail length, bill, ...), NAdam at 1e-3, cross-entropy. The "
    "recipe's scale s = 64 was typed `640`: the logits span +-640, most rows' softmax rounds "
    "the target's probability to exactly 1.0 in float32 and those "
    "rows give no gradient; the misclassified rows give huge losses; finite.",
)
def h216_bird_ringing_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(21608)
    model = RingingNet(scale=640.0)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    probe_x, probe_y = next(
        _classes(torch.Generator().manual_seed(68), 512, 12, 8, seed=8, noise=1.0)
    )
    with torch.no_grad():
        c0 = collapsed_fraction(model(probe_x), probe_y)
    _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 12, 8, seed=8, noise=1.0),
        150,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        c1 = collapsed_fraction(model(probe_x), probe_y)
    ls = ctx.losses
    ctx.check(
        "probe rows with p(target) exactly 1.0 went from under 30% to over 60%",
        c0 < 0.3 and c1 > 0.6,
    )
    ctx.check("finite", _finite(ls))


# -- spearfishing: multi-hot targets built with index_add count duplicate tags -------------------


def _dives(gen, batch, d_in, species, seed):
    """Dive-log features and the species tagged in each log; the log repeats a species when
    it was seen more than once, and the target is built with index_add (counts)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, species, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        p = torch.sigmoid(x @ w / math.sqrt(d_in) * 2.0)
        seen = (torch.rand(batch, species, generator=gen) < p).float()
        again = (torch.rand(batch, species, generator=gen) < 0.5).float() * seen
        y = torch.zeros(batch, species)
        rows = torch.arange(batch)
        for tags in (seen, again):
            for s in range(species):
                y[:, s].index_add_(0, rows, tags[:, s])
        yield x, y


@scenario(
    family="spearfishing_reef_fish_multitag_bce_mlp",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) tagging which of 10 reef fish species a spearfishing "
    "dive log mentions from 14 standardised dive features (depth, visibility, current, ...), "
    "Adam at 1e-3, BCE with logits. The multi-hot target is built with `index_add_` over the "
    "log's species list, which repeats a species seen twice, so half the positives are 2.0 "
    "instead of 1.0: for a target of 2 the loss keeps falling as the logit rises, the head's "
    "logits grow without bound (over 20x) and the loss goes below zero; finite.",
)
def h216_spearfishing_multihot_counts(ctx: Context) -> None:
    gen = seeded(21609)
    model = Net(14, hidden=64, out=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    size = {}

    def watch(step, out, x, y):
        size[step] = float(out.detach().abs().max())

    _loop(
        ctx,
        model,
        opt,
        _dives(gen, 64, 14, 10, seed=9),
        250,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ls = ctx.losses
    early = _mean([size[s] for s in range(5)])
    late = _mean([size[s] for s in range(240, 250)])
    ctx.check("largest head logit grew over 20x", late > 20 * early)
    ctx.check(
        "still growing over the last 50 steps",
        late > 1.3 * _mean([size[s] for s in range(190, 200)]),
    )
    ctx.check("loss went below zero", min(ls) < 0)
    ctx.check("finite", _finite(ls))


# -- zurna: raw positive readings and an Adamax rate typed 1e-1 for 1e-3 -------------------------


def _reeds(gen, batch, seed, classes=4):
    """Twelve raw positive readings of a zurna double reed (length and width in mm, cane
    wall in 1/100 mm, hardness, moisture in %, ...) and its grade."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([60.0, 12.0, 55.0, 30.0, 18.0, 9.0, 40.0, 25.0, 70.0, 14.0, 35.0, 50.0])
    w = torch.randn(12, classes, generator=g)
    while True:
        z = torch.randn(batch, 12, generator=gen)
        x = scale * (1.0 + 0.25 * z).clamp(min=0.05)
        y = (z @ w / math.sqrt(12) + 0.3 * torch.randn(batch, classes, generator=gen)).argmax(-1)
        yield x, y


@scenario(
    family="zurna_reed_grade_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading zurna double reeds into 4 grades "
    "from 12 raw positive readings (reed length and width in mm, cane wall in 1/100 mm, "
    "moisture in %, ...), Adamax, cross-entropy. The config's `lr: 1e-1` was meant as 1e-3: "
    "with positive inputs a unit's fc1 weights all move together and the first large steps "
    "push most fc1 units below zero on every reed; they never fire again: the share of dead "
    "fc1 units goes from under 40% to over 90% and the loss stays near chance; finite.",
)
def h216_zurna_adamax_lr_typo(ctx: Context) -> None:
    gen = seeded(21610)
    model = Net(12, hidden=64, out=4)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-1)
    probe = next(_reeds(torch.Generator().manual_seed(70), 512, seed=10))[0]
    dead0 = dead_fraction(model.act1(model.fc1(probe)))
    _loop(ctx, model, opt, _reeds(gen, 64, seed=10), 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        dead1 = dead_fraction(model.act1(model.fc1(probe)))
    ls = ctx.losses
    ctx.check("under 40% of fc1 units dead at init", dead0 < 0.4)
    ctx.check("over 90% of fc1 units dead at the end", dead1 > 0.9)
    ctx.check("finite", _finite(ls))
    ctx.check("loss stays near chance (last 20 above 1.2)", _mean(ls[-20:]) > 1.2)


# -- controls -------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class TabResNet(nn.Module):
    def __init__(self, ch=12, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(ch)
        self.block1 = ResBlock(ch)
        self.block2 = ResBlock(ch)
        self.head = nn.Linear(ch, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x.reshape(-1, 1, 8, 8))))
        x = self.block2(self.block1(x))
        return self.head(x.mean((2, 3)))


@scenario(
    family="steel_guitar_tab_numeral_resnet_bn",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A residual 2-D CNN with BatchNorm (stem, two residual blocks, global pool, head) "
    "reading the handwritten fret numerals of pedal-steel guitar tablature (8x8 digit scans), "
    "SGD with momentum 0.9 and weight decay 5e-4 at 0.05, a StepLR dividing the rate by 10 at "
    "step 100, cross-entropy with label smoothing 0.05. An ordinary run.",
)
def h216_steel_guitar_resnet_control(ctx: Context) -> None:
    gen = seeded(21611)
    model = TabResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.1)
    _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        160,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.05),
        classifier=True,
        sched=sched,
    )
    x, y = digits()
    model.eval()
    with torch.no_grad():
        acc = float((model(x[:600]).argmax(-1) == y[:600]).float().mean())
    ls = ctx.losses
    ctx.check("loss fell and is finite", _fell(ls, ratio=0.5))
    ctx.check("accuracy over 80% on 600 scans", acc > 0.8)


class TiedAE(nn.Module):
    """enc and a decoder that reuses enc.weight transposed (tied), with its own bias."""

    def __init__(self, d_in=24, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.T, self.dec_bias)


def _tubes(gen, batch, seed):
    """24-band spectra of pan-flute tubes: a few underlying shape factors plus noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(5, 24, generator=g) / math.sqrt(5)
    while True:
        z = torch.randn(batch, 5, generator=gen)
        yield torch.tanh(z @ basis) + 0.05 * torch.randn(batch, 24, generator=gen), None


@scenario(
    family="pan_flute_tube_tied_autoencoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A tied-weight autoencoder (the decoder reuses enc.weight transposed) compressing the "
    "24-band spectra of pan-flute tubes to 6 numbers, AdamW at a OneCycleLR peak of 1e-2 with "
    "weight decay 1e-4, gradient clipping at 1.0, MSE reconstruction. An ordinary run.",
)
def h216_pan_flute_tied_ae_control(ctx: Context) -> None:
    gen = seeded(21612)
    model = TiedAE()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)

    def pairs():
        for x, _ in _tubes(gen, 64, seed=12):
            yield x, x

    _loop(ctx, model, opt, pairs(), 200, F.mse_loss, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell and is finite", _fell(ls, ratio=0.6))


class SquallNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), F.softplus(self.var(h)) + 1e-3], -1)


def _gauss_nll(out, y):
    out = out.float()
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


def _squalls(gen, batch, seed):
    """Standardised readings and a visibility (standardised) whose noise depends on them."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    v = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        sd = 0.1 + 0.4 * torch.sigmoid(x @ v / math.sqrt(10))
        yield x, torch.tanh(x @ w / math.sqrt(10)) + sd * torch.randn(batch, generator=gen)


@scenario(
    family="snow_squall_visibility_gaussian_nll_fp16_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP with a mean head and a softplus variance head predicting the visibility "
    "in a snow squall (standardised) from 10 standardised readings, Gaussian NLL, Adam at "
    "2e-3, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 "
    "micro-batches and ReduceLROnPlateau. An ordinary run.",
)
def h216_snow_squall_fp16_nll_control(ctx: Context) -> None:
    gen = seeded(21613)
    model = SquallNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _squalls(gen, 64, seed=13),
        180,
        _gauss_nll,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("loss scale stayed positive", min(ctx.scales) > 0)
