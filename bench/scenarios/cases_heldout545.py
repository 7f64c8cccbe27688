"""Held-out set 545 (``h545_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: sheep-shearing comb-wear regressor taking log of a fleece-weight reading that is 0 for a
shorn-bare ewe (nonfinite, Adam); sumo-ring salt-throw arc regressor whose trunk param group lr is
typed 3e-9 (update_ratio_out_of_range, NAdam); abacus bead-flick deep ReLU regressor with its init
gain typed 2.0 on the std (exploding_gradients, SGD momentum); pottery-kiln cone-slump regressor
whose StepLR gamma is typed 10 for 0.1 (sharpness_above_limit, plain SGD); snow-cornice collapse
regressor fed one shard of raw load-cell counts (data_outlier, SGD Nesterov); tightrope
balance-pole regressor with a loss-weight typo for one resumed step (gradient_spike, AdamW);
kayak-roll hip-snap classifier with its temperature typed 0.002 (softmax_collapse, Adagrad);
pumice-raft drift regressor whose fc1 bias is initialised from a 'sparsity prior' of -4
(loss_of_plasticity, RMSprop); dew-pond evaporation regressor under fp16 autocast fed a
pond area in square centimetres (amp_overflow, Adamax); bell-ringing rope-sally regressor whose
load-cell targets creep apart since their only tare (loss_divergence, ASGD).
Controls: fairy-ring mushroom spread neural ODE integrated with fixed-step RK4 (Adam, cosine,
clipping), cricket-scorebook numeral classifier whose batch doubles at step 150 with the lr
doubled to match (linear scaling rule, SGD momentum, alarming-looking), quilting-frame stitch
tied-weight autoencoder (fp16 autocast + GradScaler, RAdam, OneCycleLR, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import digit_batches, grad_norm, scenario, seeded


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
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
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


# -- 1. nonfinite: log of a zero fleece weight ----------------------------------------------------


class _LogFleece(nn.Module):
    """Log-transforms column 0 (fleece weight, kg); the rest pass through. No clamp."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _ShearNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.logfeat = _LogFleece()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(self.logfeat(x)))))
        return self.head(h).squeeze(-1)


@scenario(
    family="sheepshearing_comb_wear_log_fleece_gelu_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Sheep-shearing comb-wear regressor (GELU MLP on fleece weight, lanolin grade, comb "
    "strokes, handpiece speed, shearer hours and ambient temperature, MSE, Adam). A hand-written "
    "feature module takes log(fleece weight) with no clamp; at step 90 the batch holds ewes "
    "already shorn bare whose fleece weight is recorded as 0: log 0 = -inf, fc1's output is "
    "infinite, GELU(-inf) gives NaN and the loss is NaN at step 90.",
)
def h545_shearing_log_of_zero_fleece(ctx):
    gen = seeded(5451)
    model = _ShearNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    seen = {}
    model.logfeat.register_forward_hook(
        lambda m, i, o: seen.__setitem__("inf", bool(torch.isinf(o).any()))
    )
    base = _readings(gen, 64, 6, 54510)

    def fleece():
        for x, y in base:
            x = x.clone()
            x[:, 0] = 2.0 + 0.4 * x[:, 0].abs()  # fleece weight in kg, positive
            yield x, y

    batches = fleece()
    flags = []

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:8, 0] = 0.0  # shorn-bare ewes logged with 0 kg of fleece
        return x, y

    def after(step, loss):
        flags.append(seen.get("inf", False))

    losses, _ = _loop(ctx, model, opt, batches, 150, F.mse_loss, alter=alter, after=after)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 90", first_bad == 90)
    ctx.check("log feature infinite at step 90", len(flags) > 90 and flags[90])
    ctx.check("log feature finite before step 90", not any(flags[:90]))
    ctx.check("trained before step 90", _fell(losses[:90]))


# -- 2. update ratio: trunk param group lr typed 3e-9 ---------------------------------------------


class _SaltNet(nn.Module):
    def __init__(self, d_in=7, hidden=64):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.silu(self.trunk(x))).squeeze(-1)


@scenario(
    family="sumo_ring_salt_throw_arc_param_group_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("trunk",),
    diverges=None,
    heldout=True,
    note="Sumo-ring salt-throw arc regressor (SiLU trunk + linear head on wrestler height, arm "
    "speed, release angle, handful mass, ring distance, humidity and stance, MSE, NAdam with two "
    "param groups). The trunk group's lr in the config is typed 3e-9 for 3e-3: the trunk's "
    "weights move by a relative 1e-6 over the whole run while the head moves by tens of percent; "
    "the loss falls only as far as a linear head on random features allows, nothing blows up.",
)
def h545_salt_throw_trunk_lr_typo(ctx):
    gen = seeded(5452)
    model = _SaltNet()
    opt = torch.optim.NAdam(
        [
            {"params": model.trunk.parameters(), "lr": 3e-9},  # the typo: meant 3e-3
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )
    trunk0, head0 = _flat(model.trunk), _flat(model.head)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 7, 54520), 200, F.mse_loss)
    trunk_move = _rel(_flat(model.trunk), trunk0)
    head_move = _rel(_flat(model.head), head0)
    ctx.check("trunk moved under 1e-4 relative", trunk_move < 1e-4)
    ctx.check("head moved over 5% relative", head_move > 0.05)
    ctx.check("head moved 1000x more than the trunk", head_move > 1000 * trunk_move)
    ctx.check("finite throughout", _finite(losses))


# -- 3. exploding gradients: init std gain typed 2.0 on a deep ReLU stack -------------------------


class _DeepRelu(nn.Module):
    def __init__(self, d_in=8, hidden=64, depth=12):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(hidden, 1)
        for lin in self.layers:
            # meant std = sqrt(2 / fan_in) (He); the gain was typed onto the std: 2 / sqrt(fan_in)
            nn.init.normal_(lin.weight, std=2.0 / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="abacus_bead_flick_deep_relu_regressor",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Abacus bead-flick travel regressor (12-layer ReLU MLP on finger force, bead mass, rod "
    "friction, flick angle, frame tilt, bead count, rod wear and humidity, MSE, SGD momentum "
    "0.9, lr 1e-3). The He init is written std = gain / sqrt(fan_in) with gain 2 instead of "
    "sqrt(2): every layer multiplies the signal and the backward gradient by about sqrt(2), so "
    "the first layer's gradient is tens of times the last hidden layer's and the first updates "
    "throw the loss up until it blows up.",
)
def h545_abacus_init_gain_on_std(ctx):
    gen = seeded(5453)
    model = _DeepRelu()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _readings(gen, 64, 8, 54530)
    x0, y0 = next(batches)
    pre = []
    h = x0
    for lin in model.layers:
        z = lin(h)
        z.retain_grad()
        pre.append(z)
        h = F.relu(z)
    F.mse_loss(model.head(h).squeeze(-1), y0).backward()
    ratio = float(pre[0].grad.norm() / pre[-1].grad.norm())
    model.zero_grad(set_to_none=True)

    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("first layer's output gradient over 10x the last hidden layer's", ratio > 10)
    ctx.check(
        "loss blew up (non-finite or over 1000x its start)",
        not _finite(losses) or max(losses) > 1000 * losses[0],
    )


# -- 4. sharpness above limit: StepLR gamma typed 10 -----------------------------------------------


@scenario(
    family="pottery_kiln_cone_slump_steplr_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=100,
    heldout=True,
    note="Pottery-kiln pyrometric cone slump regressor (SiLU MLP on peak temperature, ramp rate, "
    "soak time, cone number, kiln load and flue damper, MSE, plain SGD lr 0.1 with StepLR). "
    "The schedule meant to decay the lr tenfold at step 100 is configured with gamma=10 instead "
    "of 0.1: the lr jumps to 1.0, lr x top Hessian eigenvalue goes from under 2 to well past 2 "
    "and the loss oscillates and blows up.",
)
def h545_kiln_steplr_gamma_typo(ctx):
    gen = seeded(5454)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=10.0)  # meant 0.1
    batches = _readings(gen, 128, 6, 54540)
    probe = next(batches)
    sharp = {}

    def before(step):
        if step in (99, 100):
            sharp[step] = opt.param_groups[0]["lr"] * _top_hessian_eig(
                model, F.mse_loss, probe[0], probe[1]
            )

    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    ctx.check("lr x sharpness under 2 before step 100", sharp.get(99, 9.0) < 2.0)
    ctx.check("lr x sharpness over 2 at step 100", sharp.get(100, 0.0) > 2.0)
    ctx.check("trained before step 100", _fell(losses[:100]))
    best = min(losses[:100])
    ctx.check(
        "loss blew up after step 100",
        not _finite(losses) or max(losses[100:]) > 100 * best,
    )


# -- 5. data outlier: one shard of raw load-cell counts -------------------------------------------


@scenario(
    family="snow_cornice_collapse_outlier_silu_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Snow-cornice collapse-load regressor (SiLU MLP on overhang length, snow density, wind "
    "speed, temperature, slope angle, crust depth, sun hours and load-cell reading, MSE, SGD "
    "Nesterov 0.9, clipping at 1). At step 110 one shard comes from a logger that writes raw "
    "load-cell ADC counts (about 3000) instead of standardised kilonewtons: that batch's loss is "
    "tens of times the running loss and its gradient over 10x the median; clipping holds the "
    "step and the run recovers.",
)
def h545_cornice_raw_adc_shard(ctx):
    gen = seeded(5455)
    model = _Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:, 7] = 3000.0 + 200.0 * x[:, 7]
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 54550), 220, F.mse_loss, alter=alter, clip=1.0
    )
    ref = _mean(losses[100:110])
    ctx.check("loss at step 110 over 20x the ten before", losses[110] > 20 * ref)
    ctx.check("gradient at step 110 over 10x the median", norms[110] > 10 * _median(norms[:110]))
    ctx.check("recovered to under 2x the pre-outlier loss", _mean(losses[-10:]) < 2 * ref)
    ctx.check("finite throughout", _finite(losses))


# -- 6. gradient spike: a loss weight typed 300 for one resumed step --------------------------------


@scenario(
    family="tightrope_balance_pole_loss_weight_regressor",
    optimizer="AdamW",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Tightrope balance-pole sway regressor (ReLU MLP on pole length, pole mass, wire "
    "tension, wind gust, walker mass and step cadence, Huber, AdamW, clipping at 1). On resume "
    "at step 120 the auxiliary-loss weight is read from a hand-edited override as 300 instead of "
    "0.3 for that one step before the regular config is reloaded: the backpropagated gradient is "
    "hundreds of times the median while the logged loss is ordinary; clipping bounds the step.",
)
def h545_tightrope_loss_weight_typo_once(ctx):
    gen = seeded(5456)
    model = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)

    def backprop(step, loss):
        return loss * (300.0 if step == 120 else 0.3)

    def huber(out, y):
        return F.huber_loss(out, y, delta=1.0)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 54560), 200, huber, backprop=backprop, clip=1.0
    )
    med = _median(norms[:120])
    ctx.check("gradient at step 120 over 100x the median", norms[120] > 100 * med)
    ctx.check("logged loss at step 120 ordinary", losses[120] < 2 * _mean(losses[110:120]))
    ctx.check("no other gradient over 10x the median", max(norms[:120] + norms[121:]) < 10 * med)
    ctx.check("finite and trained", _fell(losses))


# -- 7. softmax collapse: temperature typed 0.002 ---------------------------------------------------


class _HipSnap(nn.Module):
    def __init__(self, d_in=10, hidden=48, classes=5, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(x))))
        return self.head(h) / self.temperature


@scenario(
    family="kayak_roll_hip_snap_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kayak-roll technique classifier (ReLU MLP on hip-snap timing, paddle sweep angle, head "
    "lift, torso rotation and six IMU features, five roll styles, cross-entropy, Adagrad lr "
    "0.02). The logit temperature is typed 0.002 for 2.0: logits are divided by 0.002, the "
    "float32 softmax rounds most rows' target probability to exactly 1.0 (and wrong rows to 0) "
    "within a few steps.",
)
def h545_kayak_roll_temperature_typo(ctx):
    gen = seeded(5457)
    model = _HipSnap(temperature=0.002)  # meant 2.0
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    batches = _grades(gen, 64, 10, 5, 54570, spread=1.0)
    fracs = []

    def after(step, loss):
        x, y = probe
        with torch.no_grad():
            p = torch.softmax(model(x), -1)
        fracs.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))

    probe = next(batches)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows' target probability exactly 1.0", max(fracs) > 0.4)
    ctx.check("under 40% at the start", fracs[0] < 0.4 or len(fracs) < 2)
    ctx.check("finite throughout", _finite(losses))


# -- 8. loss of plasticity: fc1 bias from a 'sparsity prior' of -4 ---------------------------------


@scenario(
    family="pumice_raft_drift_dead_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act1",),
    diverges=None,
    heldout=True,
    note="Pumice-raft drift-speed regressor (ReLU MLP on raft area, clast size, wind speed, "
    "current speed, swell height and sea temperature, MSE, RMSprop lr 1e-3). The fc1 bias is "
    "initialised from a 'sparsity prior' entry of -4 meant for a log-scale config (-4 in log10 "
    "units, about 1e-4): most of act1's units are never positive, receive no gradient and stay "
    "dead, and the loss stalls far above what the same net reaches.",
)
def h545_pumice_raft_bias_prior(ctx):
    gen = seeded(5458)
    model = _Net(6, 48, 1, nn.ReLU)
    nn.init.constant_(model.fc1.bias, -4.0)  # meant 1e-4
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 6, 54580)
    probe = next(batches)
    dead = []

    def after(step, loss):
        if step % 20 == 0 or step == 159:
            with torch.no_grad():
                a = model.act1(model.fc1(probe[0]))
            dead.append(float((a <= 0).all(0).float().mean()))

    losses, _ = _loop(ctx, model, opt, batches, 160, F.mse_loss, after=after)
    ctx.check("over 60% of act1 dead at the start", dead[0] > 0.6)
    ctx.check("over 60% of act1 still dead at the end", dead[-1] > 0.6)
    ctx.check(
        "loss stalls (last 10 over 60% of first 10)", _mean(losses[-10:]) > 0.6 * _mean(losses[:10])
    )
    ctx.check("finite throughout", _finite(losses))


# -- 9. amp overflow: pond area in square centimetres under fp16 autocast -------------------------


class _PondNet(nn.Module):
    def __init__(self, d_in=6, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="dew_pond_evaporation_fp16_gelu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=100,
    onset=100,
    heldout=True,
    note="Dew-pond evaporation regressor (GELU MLP on pond area, clay-lining depth, night "
    "humidity, wind, sun hours and air temperature, MSE, Adamax, fp16 autocast + GradScaler). "
    "From step 100 a new survey export gives the pond area in square centimetres (about 4e6) "
    "instead of standardised square metres: under autocast fc1 runs in fp16, whose range ends at "
    "65504, and fc1's output is infinite; the same batch is finite in float32.",
)
def h545_dew_pond_area_in_cm2(ctx):
    gen = seeded(5459)
    model = _PondNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.update(dtype=o.dtype, inf=bool((~torch.isfinite(o)).any()))
    )
    batches = _readings(gen, 64, 6, 54590)
    losses, fc1_inf, bad_x = [], [], None
    for step in range(150):
        x, y = next(batches)
        if step >= 100:
            x = x.clone()
            x[:, 0] = 4.0e6 + 3.0e5 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_inf.append(seen["inf"])
        loss = F.mse_loss(out.float(), y)
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
    ctx.check("fc1 ran in fp16", seen["dtype"] == torch.float16)
    ctx.check("loss first non-finite at step 100", first_bad == 100)
    ctx.check("fc1's fp16 output non-finite at step 100", len(fc1_inf) > 100 and fc1_inf[100])
    ctx.check("fc1 finite before step 100", not any(fc1_inf[:100]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 100", _fell(losses[:100]))


# -- 10. loss divergence: load cells creeping since their only tare --------------------------------


@scenario(
    family="bell_ringing_rope_sally_creeping_tare_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Change-ringing rope-sally catch-force regressor (ReLU MLP on bell weight, wheel "
    "diameter, stay angle, ringer height, rope stretch and tower sway, MSE, ASGD lr 0.02). The "
    "target comes from load cells in 16 towers that were tared once when logging began and "
    "creep, each at its own rate; the tower is not a feature: the targets drift apart in a way "
    "the net cannot follow, and after fitting first the loss climbs slowly and smoothly, with no "
    "jump, to several times its best.",
)
def h545_rope_sally_creeping_tare(ctx):
    gen = seeded(54510)
    model = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    creep = torch.randn(16, generator=torch.Generator().manual_seed(545101))
    base = _readings(gen, 64, 6, 545100)
    offsets = []

    def drifting():
        for t, (x, y) in enumerate(base):
            tower = torch.randint(0, 16, (len(y),), generator=gen)
            off = creep[tower] * 0.004 * t  # each cell's creep since the only tare
            offsets.append(float(off.std()))
            yield x, y + off

    losses, _ = _loop(ctx, model, opt, drifting(), 250, F.mse_loss)
    best = min(losses)
    means = [_mean(losses[i : i + 10]) for i in range(0, len(losses), 10)]
    jumps = [b / a for a, b in zip(means[:-1], means[1:], strict=False)]
    ctx.check("target offsets' spread grew over 10x", offsets[-1] > 10 * offsets[10])
    ctx.check("loss ends over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("best loss reached before the last 100 steps", losses.index(best) < len(losses) - 100)
    ctx.check("no 10-step mean over 2x the one before", max(jumps) < 2.0)
    ctx.check("finite throughout", _finite(losses))


# -- 11. control: fairy-ring spread neural ODE with a fixed-step RK4 solver ------------------------


class _RingField(nn.Module):
    """dz/dt = f(z, t): the learnt vector field."""

    def __init__(self, dim=2, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(dim + 1, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, t, z):
        tt = torch.full_like(z[:, :1], t)
        return self.fc2(torch.tanh(self.fc1(torch.cat([z, tt], 1))))


class _RingODE(nn.Module):
    def __init__(self, steps=8, horizon=1.0):
        super().__init__()
        self.field = _RingField()
        self.steps, self.horizon = steps, horizon

    def forward(self, z):
        h = self.horizon / self.steps
        t = 0.0
        for _ in range(self.steps):  # classical Runge-Kutta 4, fixed step
            k1 = self.field(t, z)
            k2 = self.field(t + h / 2, z + h / 2 * k1)
            k3 = self.field(t + h / 2, z + h / 2 * k2)
            k4 = self.field(t + h, z + h * k3)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            t += h
        return z


def _ring_batches(gen, batch=64):
    """Fairy-ring (radius, nutrient front) states and their state one season later, from a
    damped rotation-with-growth system integrated finely."""
    a = torch.tensor([[-0.1, -1.2], [1.0, -0.2]])
    while True:
        z0 = torch.randn(batch, 2, generator=gen)
        z = z0.clone()
        for _ in range(100):
            z = z + 0.01 * (z @ a.T + 0.3 * torch.tanh(z))
        yield z0, z + 0.01 * torch.randn(batch, 2, generator=gen)


@scenario(
    family="mushroom_fairy_ring_spread_rk4_neural_ode",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fairy-ring mushroom spread neural ODE (a tanh MLP vector field integrated over one "
    "season with a fixed-step classical Runge-Kutta 4 solver, 8 steps, mapping the ring's "
    "radius and nutrient-front state to the next season's, MSE, Adam lr 1e-2 with cosine "
    "annealing and clipping at 1). A healthy control: the loss falls by over 10x.",
)
def h545_fairy_ring_rk4_ode(ctx):
    gen = seeded(54511)
    model = _RingODE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    losses, _ = _loop(ctx, model, opt, _ring_batches(gen), 200, F.mse_loss, clip=1.0, sched=sched)
    ctx.check("finite and loss fell by over 10x", _fell(losses, ratio=0.1))


# -- 12. control: batch doubles at step 150 with the lr doubled (linear scaling rule) -------------


class _ScoreNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 96)
        self.fc2 = nn.Linear(96, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


@scenario(
    family="cricket_scorebook_numeral_batch_doubling_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cricket-scorebook numeral classifier (ReLU MLP on 8x8 handwritten digits, "
    "cross-entropy, SGD momentum 0.9, weight decay 5e-4). At step 150 the batch doubles from "
    "32 to 64 and the lr doubles from 0.02 to 0.04 to match (the linear scaling rule): the "
    "gradient noise and the update size change at once, which looks alarming in the curves, but "
    "the run is healthy and keeps improving.",
)
def h545_scorebook_batch_doubling(ctx):
    gen = seeded(54512)
    model = _ScoreNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    small, large = digit_batches(gen, 32), digit_batches(gen, 64)
    sizes, lrs = [], []

    def switching():
        for step in range(10**9):
            x, y = next(small if step < 150 else large)
            sizes.append(len(y))
            yield x, y

    def before(step):
        if step == 150:
            for g in opt.param_groups:
                g["lr"] *= 64 / 32  # linear scaling rule
        lrs.append(opt.param_groups[0]["lr"])

    losses, _ = _loop(
        ctx, model, opt, switching(), 300, F.cross_entropy, classifier=True, before=before
    )
    ctx.check("batch doubled at step 150", sizes[149] == 32 and sizes[150] == 64)
    ctx.check("lr doubled at step 150", abs(lrs[150] - 2 * lrs[149]) < 1e-12)
    ctx.check("finite and loss fell", _fell(losses, ratio=0.3))
    ctx.check("kept improving after the switch", _mean(losses[-20:]) < _mean(losses[150:170]))


# -- 13. control: tied-weight autoencoder under fp16 autocast + GradScaler -------------------------


class _TiedAE(nn.Module):
    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        h = F.gelu(self.enc(x))
        return F.linear(h, self.enc.weight.t(), self.dec_bias)  # decoder tied to enc.weight


def _stitch_batches(gen, batch=64, d_in=16, seed=545130):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, d_in, generator=g) / 2
    while True:
        z = torch.randn(batch, 4, generator=gen)
        x = z @ basis + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="quilting_frame_stitch_tied_autoencoder_fp16",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Quilting-frame stitch-tension autoencoder (16 needle-bar tension readings to a 6-unit "
    "GELU code and back through the transposed encoder weight, tied weights, MSE, RAdam with "
    "OneCycleLR, fp16 autocast + GradScaler, clipping at 1 after unscaling). A healthy control: "
    "the reconstruction loss falls and the scale never collapses.",
)
def h545_quilting_tied_ae_fp16(ctx):
    gen = seeded(54513)
    model = _TiedAE()
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-2, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _stitch_batches(gen)
    losses = []
    for _ in range(200):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
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
    ctx.check("finite and loss fell", _fell(losses, ratio=0.5))
    ctx.check("loss scale stayed at or above 1", min(ctx.scales) >= 1.0)
