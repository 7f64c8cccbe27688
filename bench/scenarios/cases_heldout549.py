"""Held-out set 549 (``h549_``): 10 faults over 10 causes and 3 healthy controls.

Faults: capoeira berimbau toque classifier with temperature typed 1e-3 (softmax_collapse, Adamax);
glassblower gather-weight ReLU regressor with fc1 bias init parsed as -3 (loss_of_plasticity,
RMSprop); geyser eruption-interval regressor taking the sqrt of a negative pressure reading
(nonfinite, Adam); curling-stone curl 12-layer tanh regressor with init gain typed 4
(exploding_gradients, SGD momentum); sandcastle wall-slump tanh regressor whose warm-up peaks at a
typed lr (sharpness_above_limit, plain SGD); bagpipe chanter-reed two-group classifier with the
trunk group's lr typed 3e-9 (update_ratio_out_of_range, Adagrad); snowshoe gait-cadence regressor
fed one shard in raw accelerometer counts (data_outlier, SGD Nesterov); cooper barrel-hoop drive
regressor whose resumed step carries a loss weight of 500 (gradient_spike, AdamW); hot-air balloon
envelope-temperature regressor fed burner pressure in pascals under fp16 autocast (amp_overflow,
NAdam); dune slip-face avalanche-angle regressor with a hand-written decay of flipped sign
(loss_divergence, ASGD).
Controls: mosaic tessera numeral classifier trained with mixup (loss stays high while accuracy
rises, alarming-looking, SGD momentum, OneCycleLR); hurling sliotar strike Hugging Face ALBERT
encoder from a tiny config (AdamW, warm-up, clipping, label smoothing); forge-bellows air-flow
SiLU Huber regressor (RAdam, param groups, ReduceLROnPlateau, accumulation 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    bert_batches,
    collapsed_fraction,
    digit_batches,
    digits,
    grad_norm,
    scenario,
    seeded,
)


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after, before):
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
    """Standardised readings and a smooth target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
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


# -- 1. softmax collapse: berimbau toque classifier, temperature typed 1e-3 ----------------------


class _ToqueNet(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))) / self.temperature


@scenario(
    family="capoeira_berimbau_toque_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    heldout=True,
    note="Capoeira berimbau toque classifier (GELU MLP on 12 stroke-timing and pitch features, "
    "8 toques, cross-entropy, Adamax). The softmax temperature is typed 1e-3 for 1.0 in the run "
    "config: the head's logits are divided by 0.001, so over 40% of rows' target probability "
    "rounds to exactly 1.0 in float32, and the collapse lasts to the end of the run.",
)
def h549_berimbau_toque_temperature_typo(ctx):
    gen = seeded(5491)
    model = _ToqueNet(12, 8, 1e-3)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fracs = []
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(9), 256, 12, 8, 54910, 0.8))

    def after(step, loss):
        if step % 10 == 0:
            with torch.no_grad():
                fracs.append(collapsed_fraction(model(probe_x), probe_y))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 8, 54910, 0.8),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over 40% of rows at probability exactly 1.0", max(fracs) > 0.4)
    ctx.check("collapse persists to the end", fracs[-1] > 0.3)
    ctx.check("finite throughout", _finite(losses))


# -- 2. loss of plasticity: glassblower gather-weight ReLU regressor, fc1 bias -3 -----------------


@scenario(
    family="glassblower_gather_weight_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    heldout=True,
    note="Glassblower gather-weight regressor (ReLU MLP on 10 furnace, punty and gather-turn "
    "readings, MSE, RMSprop). The init config writes fc1's bias as '-3.0e-2' and the parser "
    "drops the exponent: fc1's bias is filled with -3, so almost every unit of act1 is never "
    "positive, their gradients are exactly 0 and they never revive; the loss stalls far above "
    "the same run with the meant bias.",
)
def h549_glassblower_bias_exponent_dropped(ctx):
    gen = seeded(5492)
    model = _Net(10, 64)
    with torch.no_grad():
        model.fc1.bias.fill_(-3.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    probe = next(_readings(torch.Generator().manual_seed(3), 512, 10, 54920))[0]
    dead = []

    def after(step, loss):
        if step % 20 == 0 or step == 199:
            with torch.no_grad():
                dead.append(float((model.act1(model.fc1(probe)) <= 0).all(0).float().mean()))

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 54920), 200, F.mse_loss, after=after)
    # the meant run, for comparison (not monitored)
    seeded(5492)
    ref = _Net(10, 64)
    with torch.no_grad():
        ref.fc1.bias.fill_(-3.0e-2)
    ropt = torch.optim.RMSprop(ref.parameters(), lr=1e-3)
    rb = _readings(torch.Generator().manual_seed(5492), 64, 10, 54920)
    ref_losses = []
    for _ in range(200):
        x, y = next(rb)
        loss = F.mse_loss(ref(x), y)
        loss.backward()
        ropt.step()
        ropt.zero_grad()
        ref_losses.append(float(loss.detach()))
    ctx.check("over 80% of act1 dead at the start", dead[0] > 0.8)
    ctx.check("over 80% of act1 dead at the end", dead[-1] > 0.8)
    ctx.check(
        "stalls over 2x the meant run's loss", _mean(losses[-20:]) > 2 * _mean(ref_losses[-20:])
    )
    ctx.check("finite throughout", _finite(losses))


# -- 3. nonfinite: geyser interval regressor, sqrt of a negative pressure -------------------------


class _SqrtFeature(nn.Module):
    """Adds sqrt(chamber overpressure) as a feature: the physics says it is never negative."""

    def forward(self, x):
        return torch.cat([x[:, 1:], torch.sqrt(x[:, :1])], 1)


class _GeyserNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.sqrtfeat = _SqrtFeature()
        self.fc1 = nn.Linear(d_in, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        h = self.sqrtfeat(x)
        return self.head(F.silu(self.fc2(F.silu(self.fc1(h))))).squeeze(-1)


@scenario(
    family="geyser_eruption_interval_sqrt_feature_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("sqrtfeat",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Geyser eruption-interval regressor (SiLU MLP on conduit temperature, discharge and "
    "sqrt of the chamber overpressure, MSE, Adam). The overpressure gauge is re-zeroed after "
    "maintenance and at step 80 logs small negative readings; sqrtfeat has no clamp, sqrt of a "
    "negative is NaN and the loss is NaN at step 80.",
)
def h549_geyser_sqrt_negative_pressure(ctx):
    gen = seeded(5493)
    model = _GeyserNet(8)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        x = x.clone()
        x[:, 0] = x[:, 0].abs() + 0.1
        if step == 80:
            x[:8, 0] = -0.05
        seen[step] = float(x[:, 0].min())
        return x, y

    model.sqrtfeat.register_forward_hook(
        lambda m, i, o: seen.__setitem__("nan", bool(torch.isnan(o).any()))
    )
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 54930), 140, F.mse_loss, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("negative reading at step 80", seen.get(80, 1.0) < 0)
    ctx.check("sqrtfeat output NaN at the last step", seen.get("nan", False))
    ctx.check("loss first non-finite at step 80", first_bad == 80)
    ctx.check("trained before step 80", _fell(losses[:80]))


# -- 4. exploding gradients: curling-stone curl 12-layer tanh, init gain typed 4 ------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.orthogonal_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)
        self.acts = []

    def forward(self, x):
        self.acts = []
        for layer in self.layers:
            x = torch.tanh(layer(x))
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="curling_stone_curl_deep_tanh_regressor",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    heldout=True,
    note="Curling-stone curl regressor (12-layer tanh MLP on release speed, rotation, pebble "
    "temperature and sweeping readings, MSE, SGD momentum, clipping at 1). The orthogonal init "
    "gain is typed 4 for 1.0 (tanh's gain is 5/3): every layer amplifies the backward signal, the "
    "first layer's activation gradient is tens of times the last's and the raw gradient norm "
    "stays far above the clip for the whole run.",
)
def h549_curling_init_gain_typo(ctx):
    gen = seeded(5494)
    model = _DeepTanh(8, 32, 12, gain=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ratios = []

    def after(step, loss):
        a = model.acts
        if a[0].grad is not None:
            ratios.append(float(a[0].grad.norm() / (a[-1].grad.norm() + 1e-12)))

    # after() runs after opt.step but before zero_grad, so the activation grads are still there
    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 54940), 120, F.mse_loss, after=after, clip=1.0
    )
    ctx.check("first layer's gradient over 20x the last's", _median(ratios) > 20)
    ctx.check("raw gradient norm over 10x the clip", _median(norms) > 10)
    ctx.check("finite throughout", _finite(losses))


# -- 5. sharpness above limit: sandcastle slump tanh regressor, warm-up peak typed -----------------


@scenario(
    family="sandcastle_wall_slump_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=20,
    heldout=True,
    note="Sandcastle wall-slump regressor (tanh MLP on water content, grain size, wall height "
    "and tide time, MSE, plain SGD). A linear warm-up over 100 steps is meant to peak at lr 0.02 "
    "but the peak is typed 2.0: from about step 20 lr x the top Hessian eigenvalue is past 2 and "
    "the loss blows up.",
)
def h549_sandcastle_warmup_peak_typo(ctx):
    gen = seeded(5495)
    model = _Net(8, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = next(_readings(torch.Generator().manual_seed(4), 256, 8, 54950))
    products = {}

    def before(step):
        lr = 2.0 * min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 10 == 0:
            products[step] = lr * _top_hessian_eig(model, F.mse_loss, *probe)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 54950), 150, F.mse_loss, before=before)
    best = min(v for v in losses if math.isfinite(v))
    blew = not _finite(losses) or max(losses) > 100 * best
    ctx.check("lr x sharpness below 2 at step 0", products[0] < 2)
    ctx.check("lr x sharpness past 2 from step 20", all(products[k] > 2 for k in (20, 30, 40)))
    ctx.check("loss blows up to over 100x its best", blew)
    ctx.check("trained at first", _mean(losses[10:20]) < _mean(losses[:5]))


# -- 6. update ratio: bagpipe chanter-reed classifier, trunk group lr typed 3e-9 ------------------


class _ReedNet(nn.Module):
    def __init__(self, d_in, classes):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.trunk(x))


@scenario(
    family="bagpipe_chanter_reed_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("trunk",),
    heldout=True,
    note="Bagpipe chanter-reed strength classifier (ReLU MLP trunk and head on 14 reed-gauge, "
    "humidity and pressure readings, 6 strengths, cross-entropy, Adagrad with two param groups). "
    "The trunk group's lr is typed 3e-9 for 3e-2: the trunk's weights never move (relative change "
    "under 1e-6) while the head trains on random features.",
)
def h549_bagpipe_trunk_group_lr_typo(ctx):
    gen = seeded(5496)
    model = _ReedNet(14, 6)
    opt = torch.optim.Adagrad(
        [
            {"params": model.trunk.parameters(), "lr": 3e-9},
            {"params": model.head.parameters(), "lr": 3e-2},
        ]
    )
    t0, h0 = _flat(model.trunk), _flat(model.head)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 54960, 1.4),
        160,
        F.cross_entropy,
        classifier=True,
    )
    ctx.check("trunk moved under 1e-6", _rel(_flat(model.trunk), t0) < 1e-6)
    ctx.check("head moved over 5%", _rel(_flat(model.head), h0) > 0.05)
    ctx.check("finite throughout", _finite(losses))


# -- 7. data outlier: snowshoe cadence regressor, one shard in raw counts -------------------------


@scenario(
    family="snowshoe_gait_cadence_silu_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    onset=100,
    heldout=True,
    note="Snowshoe gait-cadence regressor (SiLU MLP on 10 boot accelerometer and snow-depth "
    "features, MSE, SGD Nesterov, clipping at 1). At step 100 one shard from an old logger holds "
    "the accelerometer columns in raw 12-bit counts (x 800): the loss jumps over 20x and the "
    "gradient over 10x for that batch; clipping holds it and the run recovers.",
)
def h549_snowshoe_raw_count_shard(ctx):
    gen = seeded(5497)
    model = _Net(10, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == 100:
            x = x.clone()
            x[:, :4] = x[:, :4] * 800.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 54970), 200, F.mse_loss, alter=alter, clip=1.0
    )
    base_l, base_g = _median(losses[80:100]), _median(norms[80:100])
    ctx.check("loss over 20x at step 100", losses[100] > 20 * base_l)
    ctx.check("gradient over 10x at step 100", norms[100] > 10 * base_g)
    ctx.check("recovers", _mean(losses[-20:]) < 2 * base_l)
    ctx.check("finite throughout", _finite(losses))


# -- 8. gradient spike: cooper hoop-drive regressor, loss weight 500 on the resumed step ----------


@scenario(
    family="cooper_barrel_hoop_drive_gelu_regressor",
    optimizer="AdamW",
    cause="gradient_spike",
    where=(),
    onset=120,
    heldout=True,
    note="Cooper barrel hoop-drive regressor (GELU MLP on stave moisture, bilge diameter, hoop "
    "gauge and driver strokes, Huber, AdamW, clipping at 1). On the step the run resumes (120) "
    "the loss weight is read as 500 for 0.5 from an old config for one step: the backpropagated "
    "gradient is over 100x the usual while the logged loss is ordinary.",
)
def h549_cooper_resume_loss_weight(ctx):
    gen = seeded(5498)
    model = _Net(9, 48, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)

    def backprop(step, loss):
        return loss * (500.0 if step == 120 else 0.5)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 9, 54980),
        200,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check("gradient over 100x at step 120", norms[120] > 100 * _median(norms[100:120]))
    ctx.check("logged loss ordinary at step 120", losses[120] < 3 * _median(losses[100:120]))
    ctx.check("trained", _fell(losses[:120]))
    ctx.check("finite throughout", _finite(losses))


# -- 9. amp overflow: hot-air balloon envelope regressor, burner pressure in pascals --------------


class _EnvelopeNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="hot_air_balloon_envelope_temp_fp16_gelu_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Hot-air balloon envelope-temperature regressor (GELU MLP on burner pressure, fuel "
    "flow, ambient temperature, altitude and climb rate, MSE, NAdam, fp16 autocast + "
    "GradScaler). From step 90 a new burner sensor reports pressure in pascals (about 8e5) with "
    "no standardisation: fc1 runs in fp16 under autocast, its output passes 65504 and is "
    "non-finite (the same batch is finite in float32), and the loss is non-finite at step 90.",
)
def h549_balloon_burner_pressure_pascals(ctx):
    gen = seeded(5499)
    model = _EnvelopeNet(7)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 7, 54990)
    losses, fc1_bad, bad_x = [], [], None
    for step in range(140):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 0] = 8.0e5 + 5.0e4 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_bad.append(seen["fc1"][1])
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
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    ctx.check("loss first non-finite at step 90", first_bad == 90)
    ctx.check("fc1's fp16 output non-finite at step 90", len(fc1_bad) > 90 and fc1_bad[90])
    ctx.check("fc1 finite before step 90", not any(fc1_bad[:90]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 90", _fell(losses[:90]))


# -- 10. loss divergence: dune slip-face regressor, hand-written decay with its sign flipped -------


@scenario(
    family="dune_slipface_avalanche_angle_relu_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    heldout=True,
    note="Dune slip-face avalanche-angle regressor (ReLU MLP on wind speed, grain size, moisture "
    "and crest height, MSE, ASGD lr 0.002). A hand-written decoupled weight decay (wd 3.0) "
    "applied after each step has its sign flipped (p += lr * wd * p): the weights grow steadily and the loss climbs "
    "smoothly to several times its best with no jump.",
)
def h549_dune_decay_sign_flipped(ctx):
    gen = seeded(54910)
    model = _Net(8, 48)
    opt = torch.optim.ASGD(model.parameters(), lr=0.002, t0=1e9)
    w0 = float(_flat(model).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=0.002 * 3.0)  # meant p.add_(p, alpha=-lr * wd)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 549100), 250, F.mse_loss, after=after
    )
    best = min(_mean(losses[i : i + 10]) for i in range(0, 150, 10))
    means = [_mean(losses[i : i + 10]) for i in range(0, len(losses), 10)]
    jumps = [b / a for a, b in zip(means[:-1], means[1:], strict=True)]
    ctx.check("weights over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("no 10-step mean over 3x the previous", max(jumps) < 3)
    ctx.check("finite throughout", _finite(losses))


# -- 11. control (alarming-looking): mosaic tessera numeral classifier trained with mixup ---------


class _TesseraNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


@scenario(
    family="mosaic_tessera_numeral_mixup_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    heldout=True,
    note="Mosaic tessera numeral classifier (ReLU MLP on 8x8 digits, SGD momentum, OneCycleLR). "
    "Trained with mixup (alpha 1.0): every batch is mixed with a shuffled copy of itself and the "
    "cross-entropy is taken against both labels with the mixing weight, so the training loss "
    "stays high (it cannot go much below the entropy of the mix) and jumps with each drawn "
    "weight, while the accuracy on clean digits climbs past 90%. Healthy, alarming-looking.",
)
def h549_tessera_mixup_control(ctx):
    gen = seeded(54911)
    model = _TesseraNet()
    steps = 240
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    beta = torch.distributions.Beta(torch.tensor(1.0), torch.tensor(1.0))
    xs, ys = digits()
    clean_x, clean_y = xs[-400:], ys[-400:]

    def accuracy():
        with torch.no_grad():
            return float((model(clean_x).argmax(1) == clean_y).float().mean())

    acc0 = accuracy()
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    losses = []
    for _ in range(steps):
        x, y = next(batches)
        lam = float(beta.sample())
        perm = torch.randperm(len(y), generator=gen)
        x = lam * x + (1 - lam) * x[perm]
        ctx.targets(y)
        out = model(x)
        loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    acc1 = accuracy()
    ctx.check("loss fell", _mean(losses[-20:]) < _mean(losses[:10]))
    ctx.check("loss stays high (last 20 mean over 0.5)", _mean(losses[-20:]) > 0.5)
    ctx.check("clean accuracy rose from under 30% to over 90%", acc0 < 0.3 and acc1 > 0.9)
    ctx.check("finite throughout", _finite(losses))


# -- 12. control: hurling sliotar strike ALBERT encoder from a tiny config -----------------------


def _albert(vocab=128, dim=32, layers=2, heads=2):
    from transformers import AlbertConfig, AlbertForSequenceClassification

    config = AlbertConfig(
        vocab_size=vocab,
        embedding_size=16,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * dim,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
    )
    return AlbertForSequenceClassification(config)


@scenario(
    family="hurling_sliotar_strike_albert_encoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    heldout=True,
    note="Hurling sliotar strike-sequence classifier: a Hugging Face ALBERT encoder (shared "
    "layer weights, factorised embeddings) built from a tiny config, on generated strike-token "
    "sequences (which of two strike kinds is more frequent), AdamW, linear warm-up then linear "
    "decay, clipping at 1, label smoothing 0.1. Healthy.",
)
def h549_sliotar_albert_control(ctx):
    gen = seeded(54912)
    model = _albert()
    steps = 200
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps)
    )

    def loss_fn(out, y):
        return F.cross_entropy(out.logits, y, label_smoothing=0.1)

    batches = bert_batches(gen, 32, 16)
    losses, _ = _loop(
        ctx, model, opt, batches, steps, loss_fn, classifier=True, clip=1.0, sched=sched
    )
    x, y = next(bert_batches(torch.Generator().manual_seed(7), 512, 16))
    with torch.no_grad():
        acc = float((model(x).logits.argmax(1) == y).float().mean())
    ctx.check("loss fell", _fell(losses, 20, 0.8))
    ctx.check("held-out accuracy over 75%", acc > 0.75)
    ctx.check("finite throughout", _finite(losses))


# -- 13. control: forge-bellows air-flow SiLU Huber regressor ------------------------------------


@scenario(
    family="forge_bellows_air_flow_silu_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    heldout=True,
    note="Forge-bellows air-flow regressor (SiLU MLP on stroke length, rate, nozzle bore and "
    "fire depth, Huber loss on noisy anemometer targets, RAdam with two param groups (head at "
    "half the lr, no decay on it), ReduceLROnPlateau, gradient accumulation 2, clipping at 1). "
    "Healthy.",
)
def h549_bellows_huber_control(ctx):
    gen = seeded(54913)
    model = _Net(9, 48, act=nn.SiLU)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.RAdam(
        [
            {"params": trunk, "lr": 3e-3, "weight_decay": 1e-4},
            {"params": model.head.parameters(), "lr": 1.5e-3, "weight_decay": 0.0},
        ]
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=5)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 9, 549130, noise=0.2)
    losses, window = [], []
    for _ in range(240):
        for _micro in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        window.append(losses[-1])
        if len(window) == 10:
            plateau.step(_mean(window))
            window = []
    ctx.check("loss fell", _fell(losses, 20, 0.7))
    ctx.check("finite throughout", _finite(losses))
