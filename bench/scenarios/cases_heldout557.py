"""Held-out set 557 (``h557_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: tar-kettle pitch regressor fed a probe in millikelvin under fp16 autocast (amp_overflow,
AdamW); bamboo-raft draft regressor taking sqrt of a negative freeboard excess (nonfinite,
Adamax); mortar-and-pestle grind regressor fed one shard in micrometres (data_outlier, RMSprop);
disc-golf fade BCE classifier with its accumulation divisor typed 4e-3 for one step
(gradient_spike, SGD Nesterov); hurricane eyewall-replacement 10-layer ReLU regressor with init
std x1.5 (exploding_gradients, SGD momentum); spoke-truing regressor with the head's group lr
typed 5e-9 (update_ratio_out_of_range, NAdam); oar-feathering regressor with a warm-up peak typed
3.0 (sharpness_above_limit, plain SGD); anvil ring-tone classifier multiplying by an inverse
temperature of 1000 (softmax_collapse, RAdam); fireworks burst-height regressor with a loss scale
never unscaled for one step (adam_second_moment_poisoned, Adam); pack-ice ridge regressor
restarted with fresh Adagrad accumulators (loss_spike, Adagrad).
Controls: irrigation-canal hand-written message-passing GNN (AdamW, OneCycleLR, clipping);
zen-garden gravel-raking multi-task net whose second task joins at step 100 (alarming-looking,
Adam); leaf-vein sap-flow Huber regressor (ASGD, StepLR, accumulation 2, clipping).
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


# -- 1. amp overflow: kettle thermometer read in millikelvin under fp16 autocast ------------------


@scenario(
    family="tar_kettle_roofing_pitch_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Roofing tar-kettle pitch-viscosity regressor (GELU MLP on kettle temperature, burner "
    "setting, batch age, ambient temperature, fill level and stir rate, Huber loss, AdamW, fp16 "
    "autocast + GradScaler). From step 90 the replacement kettle probe reports millikelvin "
    "(about 4.8e5) and the column is not standardised: autocast runs fc1 in fp16, whose range "
    "ends at 65504, fc1's output is non-finite (the same batch is finite in float32) and the "
    "loss is non-finite at step 90.",
)
def h557_tar_kettle_probe_millikelvin(ctx):
    gen = seeded(5571)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.02)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    losses, fc1_bad = [], []
    batches = _readings(gen, 64, 6, 55710)
    bad_x = None
    for step in range(140):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 0] = 4.8e5 + 3.0e4 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_bad.append(seen["fc1"][1])
        loss = F.huber_loss(out.float(), y, delta=1.0)
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
    ctx.check("trained before step 90", _mean(losses[80:90]) < 0.7 * _mean(losses[:10]))


# -- 2. nonfinite: sqrt of a negative freeboard excess --------------------------------------------


class _SqrtExcess(nn.Module):
    """sqrt(freeboard - 0.05): the hull-excess feature, written with no clamp."""

    def forward(self, x):
        return torch.cat([torch.sqrt(x[:, :1] - 0.05), x[:, 1:]], 1)


class _RaftNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.excess = _SqrtExcess()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        x = self.excess(x)
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="bamboo_raft_draft_sqrt_excess_gelu_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("excess",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Bamboo-raft draft regressor (sqrt of freeboard above the 5 cm lashing line, then a "
    "GELU MLP with culm count, culm diameter, load, water salinity and lashing age, MSE, "
    "Adamax). The feature module has no clamp; at step 80 a batch from an overloaded raft "
    "reads freeboard below the lashing line, sqrt of a negative is NaN, and the loss is NaN at "
    "step 80.",
)
def h557_bamboo_raft_sqrt_negative(ctx):
    gen = seeded(5572)
    model = _RaftNet(6)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    base = _readings(gen, 64, 6, 55720)
    bad = {}

    def batches():
        step = 0
        while True:
            x, y = next(base)
            x = x.clone()
            x[:, 0] = 0.1 + torch.exp(0.4 * x[:, 0])
            if step == 80:
                x[:6, 0] = 0.01
                bad["x"] = x
            step += 1
            yield x, y

    losses, _ = _loop(ctx, model, opt, batches(), 140, F.mse_loss)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 80", first_bad == 80)
    ctx.check("freeboard below the line", "x" in bad and float(bad["x"][:, 0].min()) < 0.05)
    if "x" in bad:
        with torch.no_grad():
            ctx.check("excess gives NaN", bool(torch.isnan(model.excess(bad["x"])).any()))
    ctx.check("trained before step 80", _mean(losses[70:80]) < 0.7 * _mean(losses[:10]))


# -- 3. data outlier: one shard of grind fineness in micrometres ----------------------------------


@scenario(
    family="mortar_pestle_spice_grind_fineness_silu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Mortar-and-pestle spice grind-fineness regressor (SiLU MLP on strokes, pestle mass, "
    "seed hardness, oil content, bowl roughness and dryness, MSE, RMSprop, clipping at 1). One "
    "kitchen's shard at step 110 logged particle size in micrometres instead of millimetres "
    "(targets x1000): the loss and gradient jump for that batch, clipping holds the update, "
    "the run recovers.",
)
def h557_mortar_grind_micrometres(ctx):
    gen = seeded(5573)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 110 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 55730), 220, F.mse_loss, alter=alter, clip=1.0
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss over 100x at step 110", losses[110] > 100 * _median(losses[90:110]))
    ctx.check("gradient over 10x at step 110", norms[110] > 10 * _median(norms[90:110]))
    ctx.check("recovers", _mean(losses[-20:]) < 1.5 * _mean(losses[90:110]))
    ctx.check("only one bad step", max(losses[112:]) < 10 * _median(losses[90:110]))


# -- 4. gradient spike: accumulation divisor typed 0.004 for one step -----------------------------


@scenario(
    family="disc_golf_fade_turn_gelu_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Disc-golf fade classifier (GELU MLP on release speed, nose angle, hyzer angle, spin, "
    "disc stability and wind, BCE of 'fades left before 60 m', SGD Nesterov, accumulation 4, "
    "clipping at 1). On step 120 the resume path rebuilds the accumulation divisor from the "
    "config's 'accum: 4e-3' meant for the lr: the micro-batch losses are divided by 0.004 "
    "instead of 4, the gradient bursts 1000x, the logged loss is ordinary, clipping bounds it.",
)
def h557_disc_golf_accum_divisor(ctx):
    gen = seeded(5574)
    model = _Net(6, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(55740)
    w = torch.randn(6, generator=g)
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(200):
        div = 4e-3 if step == 120 else 4.0
        total = 0.0
        for _ in range(4):
            x = torch.randn(32, 6, generator=gen)
            y = (x @ w + 0.3 * torch.randn(32, generator=gen) > 0).float()
            part = F.binary_cross_entropy_with_logits(model(x), y)
            (part / div).backward()
            total += float(part.detach()) / 4
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = torch.tensor(total)
        losses.append(total)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 100x at step 120", norms[120] > 100 * _median(norms[100:120]))
    ctx.check("logged loss ordinary at 120", losses[120] < 2 * _mean(losses[110:120]) + 0.05)
    ctx.check("trained", _fell(losses))


# -- 5. exploding gradients: init std scaled by 1.5 through 10 ReLU layers ------------------------


class _Deep(nn.Module):
    def __init__(self, d_in, width=32, depth=10, scale=1.5):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.body = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.body:
            nn.init.normal_(lin.weight, std=scale * math.sqrt(2.0 / lin.in_features))
            nn.init.zeros_(lin.bias)
        self.acts = []

    def forward(self, x):
        self.acts = []
        for lin in self.body:
            x = F.relu(lin(x))
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="hurricane_eyewall_replacement_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("body.0",),
    diverges="auto",
    heldout=True,
    note="Hurricane eyewall-replacement intensity-change regressor (10-layer ReLU MLP on "
    "inner and outer eyewall radii, shear, sea-surface temperature, outflow and moat width, "
    "MSE, SGD momentum). The He-init helper multiplies its std by 1.5 (a 'gain' argument "
    "passed twice): each layer amplifies the signal and the backward gradient by about 1.5, "
    "body.0's output gradient is over 20x the last layer's and the loss blows up.",
)
def h557_hurricane_init_std_doubled_gain(ctx):
    gen = seeded(5575)
    model = _Deep(6)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios = []

    def after(step, loss):
        g0, gl = model.acts[0].grad, model.acts[-1].grad
        if g0 is not None and gl is not None:
            ratios.append(float(g0.norm() / (gl.norm() + 1e-30)))

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 55750), 120, F.mse_loss, after=after
    )
    ok = [v for v in losses if math.isfinite(v)]
    ctx.check(
        "body.0's output gradient over 20x the last's at step 0", bool(ratios) and ratios[0] > 20
    )
    ctx.check("gradient norm over 100 at step 0", norms[0] > 100)
    ctx.check("loss blows up", not _finite(losses) or max(ok) > 100 * ok[0])


# -- 6. update ratio: the head's group lr typed 5e-9 ----------------------------------------------


@scenario(
    family="spoke_truing_wheel_tension_two_group_silu_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bicycle-wheel spoke-truing regressor (SiLU MLP on spoke tension, nipple turns, rim "
    "lateral runout, radial hop, hub flange and spoke gauge, predicting the dish offset, MSE, "
    "NAdam with two param groups). The fine-tuning config gives the head 'lr: 5e-9' (5e-3 with "
    "the exponent mistyped): the head never moves while fc1 and fc2 train; the loss falls only "
    "as far as a random head allows.",
)
def h557_spoke_truing_head_group_lr(ctx):
    gen = seeded(5576)
    model = _Net(6, hidden=48, act=nn.SiLU)
    head = list(model.head.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.NAdam([{"params": rest, "lr": 2e-3}, {"params": head, "lr": 5e-9}])
    head_0, fc1_0 = _flat(model.head), _flat(model.fc1)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 55760), 200, F.mse_loss)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("head moved under 1e-5 relative", _rel(_flat(model.head), head_0) < 1e-5)
    ctx.check("fc1 moved over 1e-2 relative", _rel(_flat(model.fc1), fc1_0) > 1e-2)
    ctx.check("head's group lr is 5e-9", opt.param_groups[1]["lr"] < 1e-8)
    ctx.check("loss fell somewhat", _fell(losses, ratio=0.95))


ONSET_OAR = 3  # the first step lr x sharpness passes 2, measured by the stand-in


# -- 7. sharpness above limit: warm-up peak typed 3.0 for 0.03 ------------------------------------


@scenario(
    family="oar_feathering_blade_angle_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=ONSET_OAR,
    heldout=True,
    note="Rowing oar-feathering blade-angle regressor (tanh MLP on catch angle, wrist drop, "
    "boat speed, stroke rate, gate height and wind, MSE, plain SGD). The linear warm-up's peak "
    "lr is typed 3.0 for 0.03: during the 40-step warm-up the lr climbs past 2 / (top Hessian "
    "eigenvalue), measured in the run by power iteration, and the loss blows up.",
)
def h557_oar_feathering_warmup_peak_typo(ctx):
    gen = seeded(5577)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 40) * 300.0)
    batches = _readings(gen, 128, 6, 55770)
    probe = next(batches)
    crossed = []

    def after(step, loss):
        if math.isfinite(loss) and loss < 1e3:
            eig = _top_hessian_eig(model, F.mse_loss, *probe)
            if opt.param_groups[0]["lr"] * eig > 2.0:
                crossed.append(step)

    losses, _ = _loop(ctx, model, opt, batches, 150, F.mse_loss, after=after, sched=sched)
    ok = [v for v in losses if math.isfinite(v)]
    first_big = next(
        (i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * min(ok)), None
    )
    ctx.check("lr x sharpness past 2 in the run", bool(crossed))
    ctx.check("loss blows up", first_big is not None)
    ctx.check(
        "crossed before the blow-up",
        bool(crossed) and first_big is not None and crossed[0] <= first_big,
    )
    ctx.check("trained first", min(ok[:30]) < 0.8 * _mean(ok[:3]))
    ctx.check(f"first crossing at step {ONSET_OAR}", crossed[:1] == [ONSET_OAR])


# -- 8. softmax collapse: inverse temperature read as 1000 ----------------------------------------


@scenario(
    family="anvil_horn_ring_tone_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Anvil horn ring-tone classifier (GELU MLP on tap spectra, horn length, face hardness, "
    "mass, stand damping and hammer weight, cross-entropy over 5 anvil grades, RAdam). The "
    "config's 'temperature: 1000' is an inverse temperature but the code multiplies the logits "
    "by it: the float32 softmax rounds most rows' target probability to exactly 1.0.",
)
def h557_anvil_inverse_temperature(ctx):
    gen = seeded(5578)
    model = _Net(8, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    fracs = []
    ctx.attach(model, opt)
    batches = _grades(gen, 64, 8, 5, 55780)
    losses = []
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) * 1000.0
        fracs.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("over 40% of rows at probability exactly 1.0", _mean(fracs) > 0.4)
    ctx.check("collapsed from the first steps", _mean(fracs[:10]) > 0.2)
    ctx.check("finite throughout", _finite(losses))


# -- 9. adam second moment poisoned: a loss scale never unscaled for one step ---------------------


@scenario(
    family="fireworks_shell_burst_height_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Fireworks shell burst-height regressor (tanh MLP on lift charge, shell mass, mortar "
    "length, fuse time, air density and launch angle, MSE, Adam, no clipping). On step 100 a "
    "left-over fp16 path multiplies the loss by a static loss scale of 65536 and never "
    "unscales it: one giant gradient fills Adam's second moment (beta2 0.999), the updates "
    "afterwards are a small fraction of their size before and the loss stops improving.",
)
def h557_fireworks_loss_scale_not_unscaled(ctx):
    gen = seeded(5579)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    vmax, moves = [], []
    prev = {}

    def backprop(step, loss):
        prev["w"] = _flat(model)
        return loss * (65536.0 if step == 100 else 1.0)

    def after(step, loss):
        moves.append(float((_flat(model) - prev["w"]).norm()))
        vmax.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 55790),
        220,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 1e3x at step 100", norms[100] > 1e3 * _median(norms[80:100]))
    ctx.check("second moment over 1e4x", vmax[101] > 1e4 * vmax[99])
    eff = [m / (n + 1e-12) for m, n in zip(moves, norms, strict=True)]
    ctx.check(
        "update per unit gradient from step 170 under 10% of before",
        _mean(eff[170:]) < 0.1 * _mean(eff[80:100]),
    )
    ctx.check("still learning before step 100", _mean(losses[90:100]) < 0.9 * _mean(losses[60:70]))
    ctx.check("loss stalls after", _mean(losses[-20:]) > 0.85 * _mean(losses[95:100]))


# -- 10. loss spike: resumed with fresh Adagrad accumulators --------------------------------------


@scenario(
    family="pack_ice_ridge_sail_height_resume_adagrad_regressor",
    optimizer="Adagrad",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="Pack-ice pressure-ridge sail-height regressor (SiLU MLP on floe thickness, "
    "convergence rate, wind stress, snow load, floe size and air temperature, MSE, Adagrad). "
    "At step 150 the job is restarted from a weights-only checkpoint: Adagrad's accumulators "
    "start from zero again, so the first steps after the restart take full lr 0.05 sign-like "
    "updates; the loss jumps over 3x once with no gradient burst and the run recovers.",
)
def h557_pack_ice_weights_only_restart(ctx):
    gen = seeded(5580)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 6, 55800)
    losses, norms = [], []
    for step in range(260):
        if step == 150:
            fresh = torch.optim.Adagrad(model.parameters(), lr=0.05)
            opt.state.clear()
            opt.load_state_dict(fresh.state_dict())
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre = _median(losses[130:150])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss over 3x once after the restart", max(losses[150:160]) > 3 * pre)
    ctx.check("no gradient burst at the restart", norms[150] < 5 * _median(norms[130:150]))
    ctx.check("recovers", _mean(losses[-20:]) < 1.5 * pre)


# -- 11. control: hand-written message-passing GNN over generated canal networks ------------------


class _MessagePassing(nn.Module):
    """h' = relu(W_self h + W_msg (A h / deg)): one round of mean-aggregated messages."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.self_lin = nn.Linear(d_in, d_out)
        self.msg_lin = nn.Linear(d_in, d_out, bias=False)

    def forward(self, h, adj):
        deg = adj.sum(-1, keepdim=True).clamp(min=1.0)
        return F.relu(self.self_lin(h) + self.msg_lin(adj @ h / deg))


class _CanalGNN(nn.Module):
    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.mp1 = _MessagePassing(d_in, hidden)
        self.mp2 = _MessagePassing(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, graph):
        h, adj = graph
        return self.head(self.mp2(self.mp1(h, adj), adj)).squeeze(-1)


def _canal_graphs(gen, batch=16, nodes=12):
    """Random sparse canal networks; a gate overflows when its own level plus its neighbours'
    mean inflow is high."""
    while True:
        a = (torch.rand(batch, nodes, nodes, generator=gen) < 0.2).float()
        adj = ((a + a.transpose(1, 2)) > 0).float() * (1 - torch.eye(nodes))
        h = torch.randn(batch, nodes, 4, generator=gen)
        deg = adj.sum(-1).clamp(min=1.0)
        inflow = (adj @ h[..., :1]).squeeze(-1) / deg
        score = 1.5 * inflow + h[..., 1] - 0.5 * h[..., 2]
        score = score + 0.3 * torch.randn(batch, nodes, generator=gen)
        yield (h, adj), (score > 0).float()


@scenario(
    family="irrigation_canal_gate_overflow_message_passing_gnn",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Irrigation-canal gate-overflow node classifier (a hand-written two-round "
    "message-passing GNN with mean aggregation over generated canal networks; node features "
    "water level, inflow, gate opening and seepage; per-gate BCE, AdamW, OneCycleLR, clipping "
    "at 1, noisy labels). Healthy control.",
)
def h557_irrigation_canal_gnn(ctx):
    gen = seeded(5581)
    model = _CanalGNN()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _canal_graphs(gen),
        200,
        F.binary_cross_entropy_with_logits,
        clip=1.0,
        sched=sched,
    )
    (h, adj), y = next(_canal_graphs(gen))
    with torch.no_grad():
        acc = float(((model((h, adj)) > 0).float() == y).float().mean())
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check("gate accuracy over 80%", acc > 0.8)


# -- 12. control: a second task head joins the loss at step 100 (alarming-looking) ----------------


class _RakeNet(nn.Module):
    def __init__(self, d_in=8, hidden=64, patterns=5):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.depth_head = nn.Linear(hidden, 1)
        self.pattern_head = nn.Linear(hidden, patterns)

    def forward(self, x):
        z = F.gelu(self.trunk(x))
        return self.depth_head(z).squeeze(-1), self.pattern_head(z)


@scenario(
    family="gravel_raking_zen_garden_two_head_multitask_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Zen-garden gravel-raking multi-task net (GELU trunk on rake tine spacing, stroke "
    "speed, gravel grain, moisture, slope, pressure, pass count and wind; a groove-depth head "
    "with MSE, and a rake-pattern head with cross-entropy over 5 patterns and label smoothing "
    "0.1, Adam). As planned, only the depth task trains for 100 steps; at step 100 the "
    "pattern task's loss joins the sum: the summed loss jumps up, then falls as the new head "
    "learns. Alarming-looking, healthy control.",
)
def h557_gravel_raking_second_task_joins(ctx):
    gen = seeded(5582)
    model = _RakeNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(55820)
    w = torch.randn(8, generator=g)
    protos = 1.2 * torch.randn(5, 8, generator=g)
    ctx.attach(model, opt)
    losses, pattern = [], []
    for step in range(240):
        yp = torch.randint(0, 5, (64,), generator=gen)
        x = protos[yp] + torch.randn(64, 8, generator=gen)
        yd = torch.tanh(x @ w / 3) + 0.05 * torch.randn(64, generator=gen)
        depth, logits = model(x)
        loss = F.mse_loss(depth, yd)
        if step >= 100:
            ctx.targets(yp)
            part = F.cross_entropy(logits, yp, label_smoothing=0.1)
            pattern.append(float(part.detach()))
            loss = loss + part
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("depth task fell first", _mean(losses[90:100]) < 0.5 * _mean(losses[:10]))
    ctx.check(
        "summed loss jumps over 2x at step 100", _mean(losses[100:103]) > 2 * _mean(losses[95:100])
    )
    ctx.check("falls again after", _mean(losses[-10:]) < 0.6 * _mean(losses[100:103]))
    ctx.check("pattern task learnt", _mean(pattern[-10:]) < 0.6 * _mean(pattern[:3]))


# -- 13. control: ASGD Huber regressor with accumulation ------------------------------------------


@scenario(
    family="leaf_vein_sap_flow_asgd_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Leaf-vein sap-flow regressor (SiLU MLP on vein density, leaf area, stomatal "
    "conductance, light, vapour-pressure deficit and petiole width, Huber loss on noisy "
    "sap-flow readings, ASGD, StepLR, accumulation 2, clipping at 1). Healthy control.",
)
def h557_leaf_vein_sap_flow(ctx):
    gen = seeded(5583)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 6, 55830, noise=0.2)
    losses = []
    for _step in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            part = F.huber_loss(model(x), y, delta=0.5) / 2
            part.backward()
            total = total + part.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss = torch.as_tensor(total)
        losses.append(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses))
