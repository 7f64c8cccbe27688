"""Held-out set 548 (``h548_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: dripstone cave drip-interval regressor fed intervals in microseconds under fp16 autocast
(amp_overflow, AdamW); kelp-raft landfall regressor whose tide-gauge labels drift (loss_divergence,
Adagrad); bamboo mast-flowering interval regressor with StepLR gamma typed 10 (sharpness_above_limit,
plain SGD); orb-web spiral-spacing regressor with the spiral group lr typed 3e-9
(update_ratio_out_of_range, RMSprop); beach-cusp spacing regressor fed one logger sentinel
(data_outlier, NAdam); ice-yacht runner-chatter BCE classifier with a one-step stage-boundary loss
weight (gradient_spike, SGD Nesterov); hailstone growth-layer regressor taking the log of a zero
liquid-water reading (nonfinite, Adamax); chimney-swift roost-entry deep ReLU classifier with init
gain typed 2.4 (exploding_gradients, SGD momentum); bell-founder tuning-partial classifier with
temperature typed 1e-3 (softmax_collapse, RAdam); stilt-walker stride regressor hit by one
giant-gradient batch with no clip (adam_second_moment_poisoned, Adam).
Controls: pan-flute pipe classifier whose cosine schedule reaches lr 0 and stays there for the last
tenth (nothing moves at the end, alarming-looking, AdamW); lava-tube skylight network GAT node
classifier on generated graphs (Adam, warm-up, clipping, label smoothing); spinning-wheel yarn
twist Huber regressor (Adadelta, ReduceLROnPlateau, accumulation 2, clipping, noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


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
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, loss)``
    returns the loss actually backpropagated, ``after(step, loss)``. Stops after a non-finite
    loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05, drift=None):
    """Standardised readings and a smooth nonlinear target of about unit scale; ``drift(i)``
    is added to the i-th batch's targets."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    i = 0
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, generator=gen)
        if drift is not None:
            y = y + drift(i)
        i += 1
        yield x, y


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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of loss_fn(model(x), y) by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. amp overflow: drip interval in microseconds under fp16 autocast ---------------------------


class _DripNet(nn.Module):
    """SiLU MLP predicting the mean and log-variance of the next drip's calcite mass."""

    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


def _gauss_nll(out, y):
    mean, logvar = out.float().unbind(-1)
    return F.gaussian_nll_loss(mean, y, logvar.clamp(-6, 6).exp())


@scenario(
    family="dripstone_cave_drip_interval_fp16_gaussian_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Dripstone cave calcite-deposition regressor (SiLU MLP on drip interval, cave air CO2, "
    "drip-water calcium, temperature, humidity and film thickness, Gaussian NLL of the mass, "
    "AdamW, fp16 autocast + GradScaler). From step 90 a new drip logger exports the interval in "
    "microseconds (about 2e6) and the column is not standardised: autocast runs fc1 in fp16, "
    "whose range ends at 65504, fc1's output is non-finite (the same batch is finite in float32) "
    "and the loss is non-finite at step 90.",
)
def h548_dripstone_interval_in_microseconds(ctx):
    gen = seeded(5481)
    model = _DripNet(6)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    losses, fc1_bad = [], []
    batches = _readings(gen, 64, 6, 54810)
    bad_x = None
    for step in range(140):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 0] = 2.0e6 + 2.0e5 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_bad.append(seen["fc1"][1])
        loss = _gauss_nll(out, y)
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
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    ctx.check("inputs beyond fp16's range", bad_x is not None and float(bad_x.abs().max()) > 65504)
    ctx.check("loss first non-finite at step 90", first_bad == 90)
    ctx.check("fc1's fp16 output non-finite at step 90", len(fc1_bad) > 90 and fc1_bad[90])
    ctx.check("fc1 finite before step 90", not any(fc1_bad[:90]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 90", _mean(losses[80:90]) < _mean(losses[:10]) - 0.3)


# -- 2. loss divergence: tide-gauge labels whose datum drifts -------------------------------------


@scenario(
    family="kelp_raft_landfall_distance_gauge_drift_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Kelp-raft landfall-distance regressor (ReLU MLP on raft mass, holdfast size, wind "
    "stress, surface current, wave period and days adrift, MSE, Adagrad lr 0.05). The labels are "
    "offsets from a tide-gauge datum that the ingest job re-zeroes cumulatively, so every batch's "
    "targets sit a little higher than the last (a slow, steady drift). The net fits first; as "
    "Adagrad's step size decays it falls behind the drift and the loss climbs slowly, with no "
    "jump, to several times its best.",
)
def h548_kelp_raft_gauge_datum_drift(ctx):
    gen = seeded(5482)
    model = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    batches = _readings(gen, 64, 6, 54820, drift=lambda i: 0.006 * i)
    losses, _ = _loop(ctx, model, opt, batches, 300, F.mse_loss)
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    ctx.check("fitted first: best 10-step mean under half the first", best < 0.5 * smooth[0])
    ctx.check("loss climbs: last 10 over 3x the best", smooth[-1] > 3 * best)
    ctx.check(
        "slow: no step over 10x the previous 10-step mean",
        all(losses[i] < 10 * _mean(losses[i - 10 : i]) for i in range(10, len(losses))),
    )
    ctx.check("finite", _finite(losses))


# -- 3. sharpness above limit: StepLR gamma typed 10 ----------------------------------------------


@scenario(
    family="bamboo_mast_flowering_interval_steplr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=100,
    heldout=True,
    note="Bamboo mast-flowering interval regressor (tanh MLP on culm age, rhizome density, "
    "rainfall anomaly, altitude, clump diameter and soil nitrogen, MSE, plain SGD lr 0.1). The "
    "StepLR decay is written gamma=10 instead of 0.1: at step 100 the learning rate jumps 10x, "
    "lr x top Hessian eigenvalue passes 2 and the loss blows up.",
)
def h548_bamboo_steplr_gamma_typo(ctx):
    gen = seeded(5483)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=10.0)  # meant 0.1
    batches = _readings(gen, 64, 6, 54830)
    probe = next(batches)
    products = []

    def before(step):
        if step % 10 == 0 or step == 100:
            lr = opt.param_groups[0]["lr"]
            products.append((step, lr * _top_hessian_eig(model, F.mse_loss, *probe)))

    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    smooth = [_mean(losses[max(0, i - 4) : i + 1]) for i in range(len(losses))]
    best = min(smooth)
    blow = next((i for i, v in enumerate(smooth) if not math.isfinite(v) or v > 100 * best), None)
    ctx.check(
        "5-step mean loss over 100x its best (or non-finite) after step 100",
        blow is not None and blow > 100,
    )
    ctx.check("lr x sharpness under 2 before step 100", all(p < 2 for s, p in products if s < 100))
    ctx.check(
        "lr x sharpness over 2 at step 100",
        any(p > 2 for s, p in products if s == 100),
    )
    ctx.check("trained before step 100", _fell(losses[:100]))


# -- 4. update ratio: spiral group lr typed 3e-9 --------------------------------------------------


class _OrbWebNet(nn.Module):
    """A radial-thread encoder and a spiral-thread encoder, merged by a head."""

    def __init__(self, hidden=32):
        super().__init__()
        self.radial = nn.Linear(4, hidden)
        self.spiral = nn.Linear(4, hidden)
        self.merge = nn.Linear(2 * hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.cat([F.gelu(self.radial(x[:, :4])), F.gelu(self.spiral(x[:, 4:]))], -1)
        return self.head(F.gelu(self.merge(h))).squeeze(-1)


@scenario(
    family="orb_web_spiral_spacing_two_tower_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("spiral",),
    diverges=None,
    heldout=True,
    note="Orb-web capture-spiral spacing regressor, a two-tower GELU net (radial-thread readings "
    "and spiral-thread readings, merged; MSE, RMSprop, param groups). The spiral tower's group lr "
    "is typed 3e-9 for 3e-3: its updates are a millionth of its weights' scale, it barely moves, "
    "the other tower fits what it can; the loss falls, nothing blows up.",
)
def h548_orb_web_spiral_lr_exponent_typo(ctx):
    gen = seeded(5484)
    model = _OrbWebNet()
    opt = torch.optim.RMSprop(
        [
            {
                "params": [
                    *model.radial.parameters(),
                    *model.merge.parameters(),
                    *model.head.parameters(),
                ],
                "lr": 3e-3,
            },
            {"params": model.spiral.parameters(), "lr": 3e-9},  # the typo: meant 3e-3
        ]
    )
    spiral0, radial0 = _flat(model.spiral), _flat(model.radial)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 54840), 200, F.mse_loss)
    ctx.check("spiral moved under 1e-5 of its norm", _rel(_flat(model.spiral), spiral0) < 1e-5)
    ctx.check("radial moved over 5% of its norm", _rel(_flat(model.radial), radial0) > 0.05)
    ctx.check("loss fell", _fell(losses))


# -- 5. data outlier: one logger sentinel in the targets ------------------------------------------


@scenario(
    family="beach_cusp_spacing_swash_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Beach-cusp spacing regressor (SiLU MLP on swash excursion, wave period, breaker height, "
    "beach slope, grain size and tide stage, MSE, NAdam, clipping at 1). The shard served at "
    "step 110 holds one sample whose spacing is the logger's missing-value sentinel 9999: one "
    "batch's loss and gradient burst, the clip keeps the update bounded and the run recovers.",
)
def h548_beach_cusp_sentinel_sample(ctx):
    gen = seeded(5485)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == 110:
            y = y.clone()
            y[17] = 9999.0
            seen["bad"] = float(y.abs().max())
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 54850), 220, F.mse_loss, alter=alter, clip=1.0
    )
    pre_l, pre_g = _median(losses[90:110]), _median(norms[90:110])
    ctx.check("the sentinel was served at step 110", seen.get("bad", 0.0) == 9999.0)
    ctx.check("loss at step 110 over 100x the median before", losses[110] > 100 * pre_l)
    ctx.check("gradient at step 110 over 100x the median before", norms[110] > 100 * pre_g)
    ctx.check("recovers: last 20 under 2x the pre-shard median", _mean(losses[-20:]) < 2 * pre_l)
    ctx.check("trained before the sample", _fell(losses[:110]))
    ctx.check("finite", _finite(losses))


# -- 6. gradient spike: stage-boundary loss weight for one step -----------------------------------


@scenario(
    family="ice_yacht_runner_chatter_bce_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Ice-yacht runner-chatter detector (GELU MLP on runner edge angle, ice temperature, "
    "hull speed, plank load, accelerometer band power and wind gust, BCE with logits, SGD "
    "Nesterov lr 0.05, clipping at 1). The curriculum re-weights the loss by 1 / (1 - progress); "
    "at the stage boundary step 130 progress is 0.999 and that one step's loss is weighted "
    "1000x: the gradient bursts, the logged loss is ordinary, the clip keeps the run alive.",
)
def h548_ice_yacht_stage_boundary_weight(ctx):
    gen = seeded(5486)
    model = _Net(6, 48, 1, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    base = _readings(gen, 64, 6, 54860)

    def batches():
        while True:
            x, y = next(base)
            yield x, (y > 0.2).float()

    def backprop(step, loss):
        progress = 0.999 if step == 130 else 0.0
        return loss / (1.0 - progress)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        batches(),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check(
        "gradient at step 130 over 100x the median before",
        norms[130] > 100 * _median(norms[110:130]),
    )
    ctx.check(
        "logged loss at step 130 under 2x the median before",
        losses[130] < 2 * _median(losses[110:130]),
    )
    ctx.check("loss fell", _fell(losses))
    ctx.check("finite", _finite(losses))


# -- 7. nonfinite: log of a zero liquid-water reading ---------------------------------------------


class _LogFeature(nn.Module):
    def forward(self, lwc):
        return torch.log(lwc)  # the missing clamp


class _HailNet(nn.Module):
    def __init__(self, hidden=48):
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(6, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.cat([self.logfeat(x[:, :1]), x[:, 1:]], -1)
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(h))))).squeeze(-1)


@scenario(
    family="hailstone_growth_layer_log_water_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("logfeat",),
    diverges=70,
    onset=70,
    heldout=True,
    note="Hailstone growth-layer thickness regressor (GELU MLP on log liquid-water content, "
    "updraft speed, cloud-top temperature, residence time, embryo size and altitude, MSE, "
    "Adamax). The log-feature module takes torch.log with no floor; the batch at step 70 holds a "
    "reading from a dry slot with liquid-water content exactly 0: log 0 is -inf in 'logfeat', "
    "the net turns it into NaN and the loss is non-finite at step 70.",
)
def h548_hailstone_log_of_zero_water(ctx):
    gen = seeded(5487)
    model = _HailNet()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    seen = {}
    model.logfeat.register_forward_hook(
        lambda m, i, o: seen.__setitem__("bad", bool((~torch.isfinite(o)).any()))
    )
    base = _readings(gen, 64, 6, 54870)
    flags = []

    def batches():
        while True:
            x, y = next(base)
            x = x.clone()
            x[:, 0] = torch.exp(0.5 * x[:, 0])  # liquid-water content, positive
            yield x, y

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[9, 0] = 0.0
            ctx.check("inputs finite at step 70", bool(torch.isfinite(x).all()))
        return x, y

    def after(step, loss):
        flags.append(seen["bad"])

    losses, _ = _loop(ctx, model, opt, batches(), 140, F.mse_loss, alter=alter, after=after)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 70", first_bad == 70)
    ctx.check("logfeat's output non-finite at step 70", len(flags) > 70 and flags[70])
    ctx.check("logfeat finite before step 70", not any(flags[:70]))
    ctx.check("trained before step 70", _fell(losses[:70]))


# -- 8. exploding gradients: deep ReLU stack with init gain typed 2.4 -----------------------------


class _DeepNet(nn.Module):
    def __init__(self, d_in, classes, hidden=32, depth=10, gain=1.0):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, classes)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x, keep=None):
        for lin in self.layers:
            z = lin(x)
            if keep is not None:
                z.retain_grad()
                keep.append(z)
            x = F.relu(z)
        return self.head(x)


@scenario(
    family="chimney_swift_roost_entry_deep_relu_classifier",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Chimney-swift roost-entry phase classifier (a 10-layer ReLU MLP on dusk light level, "
    "flock size, swirl radius, wind, temperature, chimney height and more, 5 phases, "
    "cross-entropy, SGD momentum lr 0.01, clipping at 1). The hand-written init uses "
    "std = gain / sqrt(fan_in) with gain typed 2.4 (meant sqrt(2) = 1.41): every layer amplifies "
    "by about 1.7x, the gradient grows through depth towards the input: the gradient at the "
    "first layer's output is orders of magnitude above the last hidden layer's.",
)
def h548_chimney_swift_init_gain_typo(ctx):
    gen = seeded(5488)
    model = _DeepNet(12, 5, gain=2.4)  # the typo: meant math.sqrt(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = _grades(gen, 64, 12, 5, 54880)
    probe_x, probe_y = next(batches)

    def depth_ratio():
        zs = []
        F.cross_entropy(model(probe_x, zs), probe_y).backward()
        r = float(zs[0].grad.norm() / zs[-1].grad.norm())
        model.zero_grad(set_to_none=True)
        return r

    ratio0 = depth_ratio()
    losses, norms = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, clip=1.0)
    ctx.check("gradient at layer 0's output over 30x the last hidden layer's at init", ratio0 > 30)
    ctx.check("gradient clipped at most steps (raw norm over 1)", _median(norms) > 1)
    ctx.check("finite", _finite(losses))


# -- 9. softmax collapse: temperature typed 1e-3 --------------------------------------------------


class _BellNet(nn.Module):
    def __init__(self, d_in, classes, temperature, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x))))) / self.temperature


@scenario(
    family="bell_founder_tuning_partial_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bell-founder tuning-partial classifier (ReLU MLP on the hum, prime, tierce, quint and "
    "nominal partial frequencies and wall thickness, 7 tuning faults, cross-entropy, RAdam). The "
    "config's softmax temperature is typed 1e-3 (the line was copied from the lr): the head's "
    "logits are divided by 0.001, float32 softmax rounds most rows to exactly 0 and 1.",
)
def h548_bell_founder_temperature_typo(ctx):
    gen = seeded(5489)
    model = _BellNet(10, 7, temperature=1e-3)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 10, 7, 54890, spread=1.0)
    probe_x, probe_y = next(batches)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        logits = model(probe_x)
        p = torch.softmax(logits.float(), -1)
    exact = float((p.max(-1).values == 1.0).float().mean())
    ctx.check("over half the rows' max probability exactly 1.0", exact > 0.5)
    ctx.check(
        "over 40% of rows' target probability exactly 1.0",
        collapsed_fraction(logits, probe_y) > 0.4,
    )
    ctx.check("finite", _finite(losses))


# -- 10. adam second moment poisoned: one giant gradient, no clip ---------------------------------


@scenario(
    family="stilt_walker_stride_balance_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Stilt-walker stride-length regressor (tanh MLP on stilt height, cadence, trunk lean, "
    "ground firmness, arm swing and load, MSE, Adam lr 3e-4, betas (0.9, 0.999), no clipping). "
    "At step 100 one batch's targets come from a motion-capture export in micrometres (x1e6): "
    "one gradient thousands of times the usual fills Adam's second moment, and for the next "
    "hundred steps the updates are a small fraction of what they were (training crawls).",
)
def h548_stilt_walker_micrometre_batch(ctx):
    gen = seeded(54810)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    moves = []
    state = {}

    def before(step):
        state["w"] = _flat(model)
        if step == 100:
            state["v0"] = max(float(st["exp_avg_sq"].max()) for st in opt.state.values())

    def alter(step, x, y):
        return x, (y * 1.0e6 if step == 100 else y)

    def after(step, loss):
        moves.append(float((_flat(model) - state["w"]).norm()))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 548100),
        220,
        F.mse_loss,
        before=before,
        alter=alter,
        after=after,
    )
    ctx.check(
        "gradient at step 100 over 1000x the median before",
        norms[100] > 1000 * _median(norms[80:100]),
    )
    ctx.check(
        "updates over steps 150-220 under 10% of those over 80-100",
        _mean(moves[150:220]) < 0.1 * _mean(moves[80:100]),
    )
    ctx.check(
        "loss was still falling before step 100", _mean(losses[90:100]) < 0.9 * _mean(losses[60:70])
    )
    v_after = max(float(st["exp_avg_sq"].max()) for st in opt.state.values())
    ctx.check("Adam's second moment over 1e4x its pre-spike value", v_after > 1e4 * state["v0"])
    ctx.check("finite", _finite(losses))


# -- 11. control: cosine schedule to exactly 0, then lr 0 for the last tenth ----------------------


@scenario(
    family="pan_flute_pipe_stopper_depth_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Pan-flute pipe stopper-depth classifier (ReLU MLP on the measured pitch, bore, wall, "
    "embouchure and humidity readings, 8 depth classes, cross-entropy, AdamW with weight decay). "
    "The cosine schedule decays to exactly 0 at 90% of the run and the run goes on at lr 0 for "
    "the last tenth (a common 'cosine to zero' config): nothing moves at the end, the weights "
    "are frozen by design, the loss just reflects the batches. Healthy, alarming-looking.",
)
def h548_pan_flute_cosine_to_zero(ctx):
    gen = seeded(54811)
    model = _Net(10, 48, 8, nn.ReLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps, decay = 200, 180
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s / decay, 1.0)))
    )
    lrs, snaps = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (decay, steps - 1):
            snaps[step] = _flat(model)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 8, 548110, spread=1.2),
        steps,
        F.cross_entropy,
        classifier=True,
        before=before,
        sched=sched,
    )
    ctx.check("lr exactly 0 for the last tenth", all(v == 0.0 for v in lrs[decay:]))
    ctx.check("lr positive before", all(v > 0.0 for v in lrs[:decay]))
    ctx.check(
        "weights identical over the last tenth",
        decay in snaps and steps - 1 in snaps and bool(torch.equal(snaps[decay], snaps[steps - 1])),
    )
    ctx.check("loss fell", _fell(losses, ratio=0.5))


# -- 12. control: GAT over generated lava-tube networks -------------------------------------------


class _GATLayer(nn.Module):
    """Dense multi-head graph attention (Velickovic et al.) over an adjacency mask."""

    def __init__(self, d_in, d_out, heads, concat=True):
        super().__init__()
        self.heads, self.d_out, self.concat = heads, d_out, concat
        self.proj = nn.Linear(d_in, heads * d_out, bias=False)
        self.att_src = nn.Parameter(torch.randn(heads, d_out) * 0.1)
        self.att_dst = nn.Parameter(torch.randn(heads, d_out) * 0.1)

    def forward(self, x, adj):
        n = x.shape[0]
        h = self.proj(x).reshape(n, self.heads, self.d_out)
        src = (h * self.att_src).sum(-1)
        dst = (h * self.att_dst).sum(-1)
        e = F.leaky_relu(dst.T[:, :, None] + src.T[:, None, :], 0.2)  # heads, n, n
        e = e.masked_fill(~adj[None], float("-inf"))
        a = torch.softmax(e, -1)
        out = torch.einsum("hij,jhd->ihd", a, h)
        return out.reshape(n, -1) if self.concat else out.mean(1)


class _LavaTubeGAT(nn.Module):
    def __init__(self, d_in, classes, hidden=16, heads=4):
        super().__init__()
        self.gat1 = _GATLayer(d_in, hidden, heads)
        self.gat2 = _GATLayer(hidden * heads, classes, 1, concat=False)

    def forward(self, g):
        x, adj = g
        return self.gat2(F.elu(self.gat1(x, adj)), adj)


def _lava_tube_graphs(gen, nodes, classes, d_in, seed):
    """Stochastic-block graphs: skylights of one lava tube connect densely, across tubes rarely;
    node readings are weak, noisy hints of the tube (neighbours carry the signal)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (nodes,), generator=gen)
        same = y[:, None] == y[None, :]
        p = torch.where(same, 0.25, 0.02)
        adj = torch.rand(nodes, nodes, generator=gen) < p
        adj = adj | adj.T | torch.eye(nodes, dtype=torch.bool)
        x = 0.6 * protos[y] + torch.randn(nodes, d_in, generator=gen)
        yield (x, adj), y


@scenario(
    family="lava_tube_skylight_network_gat_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lava-tube skylight network classifier, a two-layer graph attention network (4 heads, "
    "then 1) over generated graphs: skylights are nodes with noisy thermal and collapse readings, "
    "edges are surveyed passages, each node is assigned to its tube (cross-entropy with label "
    "smoothing 0.1, Adam, linear warm-up over 20 steps, clipping at 1). Healthy.",
)
def h548_lava_tube_gat_control(ctx):
    gen = seeded(54812)
    model = _LavaTubeGAT(8, 4)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    batches = _lava_tube_graphs(gen, 64, 4, 8, 548120)
    probe_g, probe_y = next(batches)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _loop(
        ctx, model, opt, batches, 150, loss_fn, classifier=True, clip=1.0, sched=sched
    )
    with torch.no_grad():
        acc = float((model(probe_g).argmax(-1) == probe_y).float().mean())
    ctx.check("probe accuracy over 60% (chance 25%)", acc > 0.6)
    ctx.check("loss fell", _fell(losses))


# -- 13. control: Adadelta, plateau scheduler, accumulation, clipping -----------------------------


@scenario(
    family="spinning_wheel_yarn_twist_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Spinning-wheel yarn-twist regressor (SiLU MLP on drive ratio, treadle cadence, drafting "
    "length, fibre staple, whorl size and brake tension, Huber loss on noisy twist counts, "
    "Adadelta lr 1.0, gradient accumulation 2, clipping at 1, ReduceLROnPlateau on the loss). "
    "Healthy.",
)
def h548_spinning_wheel_control(ctx):
    gen = seeded(54813)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 6, 548130, noise=0.2)
    losses, accum = [], 2
    for _ in range(160):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y)
            (loss / accum).backward()
            total = total + loss.detach() / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(total))
        ctx.step(total)
        plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, ratio=0.6))
