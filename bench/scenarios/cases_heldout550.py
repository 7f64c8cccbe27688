"""Held-out set 550 (``h550_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: change-ringing bell-rope pull regressor with init gain typed 2.4 (exploding_gradients,
SGD momentum); shibori dye-penetration regressor hit by one batch of readings in micrometres with no
clip (adam_second_moment_poisoned, Adam); pole-vault take-off speed regressor taking sqrt(2 g h) of
a re-zeroed, negative grip height (nonfinite, Adamax); sashiko stitch-pitch regressor fed one shard
of a thread-tension column in millinewtons (data_outlier, RMSprop); fencing-lunge touch BCE
classifier whose accumulation divisor is inverted for one step (gradient_spike, SGD Nesterov);
cloisonne enamel firing-shrink regressor whose resumed lr applies the linear-scaling rule twice
(sharpness_above_limit, plain SGD); damascus billet fold-pattern two-tower regressor with the
pattern-tower group lr typed 1e-9 (update_ratio_out_of_range, Adagrad, param groups); batik
wax-crack pattern classifier with temperature typed 1e-3 (softmax_collapse, NAdam); gold-leaf
gilding adhesion regressor with fc1's bias initialised at -3 (loss_of_plasticity, AdamW);
foehn wall-cloud onset regressor fed pressure in pascals under fp16 autocast (amp_overflow, RAdam).
Controls: singing-sand boom-pitch classifier whose data are reordered easy-first every epoch (loss
saw-tooths at each epoch boundary, alarming-looking, SGD momentum, OneCycleLR); canoe-polo paddle
stroke classifier with a hand-written LSTM (Adam, warm-up, clipping, label smoothing); hoof-trimming
rasp-wear tied-weight autoencoder (SGD Nesterov, ReduceLROnPlateau, accumulation 2, clipping,
Huber, noisy readings).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
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


# -- 1. exploding gradients: init gain typed 2.4 in a deep ReLU stack -----------------------------


class _DeepRelu(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        layers, d = [], d_in
        for _ in range(depth):
            lin = nn.Linear(d, width)
            nn.init.normal_(lin.weight, std=gain / math.sqrt(d))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
            d = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        self.outs: list[torch.Tensor] = []

    def forward(self, x):
        self.outs = []
        for m in self.layers:
            x = m(x)
            if isinstance(m, nn.Linear) and x.requires_grad:
                x.retain_grad()
                self.outs.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="change_ringing_bell_rope_pull_force_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Change-ringing rope-pull force regressor (10-layer ReLU MLP on bell weight, wheel "
    "diameter, stay angle, sally height, handstroke and backstroke timing, MSE, SGD momentum "
    "0.9 lr 1e-3, clip 1.0). The init helper is called with gain typed 2.4 instead of sqrt(2): "
    "every layer multiplies the backward signal by about 1.7, so layer 0's output gradient is "
    "tens of times the last hidden layer's and the raw gradient norm sits far above any "
    "ordinary value; the clip keeps the run finite.",
)
def h550_change_ringing_init_gain_typo(ctx):
    gen = seeded(5501)
    model = _DeepRelu(6, 32, 10, gain=2.4)  # meant math.sqrt(2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios = []

    def after(step, loss):
        if step < 20:
            first = float(model.outs[0].grad.norm())
            last = float(model.outs[-1].grad.norm())
            ratios.append(first / max(last, 1e-30))

    batches = _readings(gen, 64, 6, 55010)
    losses, norms = _train(ctx, model, opt, batches, 120, F.mse_loss, after=after, clip=1.0)
    ctx.check(
        "layer 0's output gradient over 30x the last hidden's (first steps)", _median(ratios) > 30
    )
    ctx.check("raw gradient norm over 100 for the first 20 steps", min(norms[:20]) > 100)
    ctx.check("finite (clipped)", _finite(losses))


# -- 2. adam second moment poisoned: one batch in micrometres, no clip ----------------------------


@scenario(
    family="shibori_dye_penetration_depth_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Shibori dye-penetration regressor (tanh MLP on fold count, clamp pressure, dye bath "
    "time, indigo vat pH, cloth weight and bath temperature, MSE, Adam lr 1e-3, beta2 0.999, no "
    "clip). At step 100 one batch comes from a lab export whose depth labels are in micrometres "
    "instead of centimetres (x10000): one giant gradient fills Adam's second moment, which decays "
    "with beta2 0.999, so for the following steps the updates are a small fraction of what they "
    "were and the fit, knocked off by that one step, stalls well above where it was.",
)
def h550_shibori_micrometre_batch(ctx):
    gen = seeded(5502)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    w = model.fc2.weight
    vmax, upd = [], []
    prev = {}
    params = list(model.parameters())

    def alter(step, x, y):
        return (x, y * 1.0e4) if step == 100 else (x, y)  # um, not cm

    def before(step):
        prev["p"] = torch.cat([p.detach().flatten().clone() for p in params])

    def after(step, loss):
        now = torch.cat([p.detach().flatten() for p in params])
        upd.append(float((now - prev["p"]).norm()))
        vmax.append(float(opt.state[w]["exp_avg_sq"].max()))

    batches = _readings(gen, 64, 6, 55020)
    losses, norms = _train(
        ctx, model, opt, batches, 220, F.mse_loss, alter=alter, before=before, after=after
    )
    ctx.check(
        "gradient at step 100 over 300x the median before", norms[100] > 300 * _median(norms[:100])
    )
    ctx.check("second moment max over 1e4x after step 100", vmax[100] > 1e4 * vmax[99])
    ctx.check(
        "update norm 40-100 steps later under 20% of steps 60-100",
        _mean(upd[140:200]) < 0.2 * _mean(upd[60:100]),
    )
    ctx.check(
        "stalls: loss 140-220 over 3x loss 80-100",
        _mean(losses[140:220]) > 3 * _mean(losses[80:100]),
    )
    ctx.check("finite", _finite(losses))


# -- 3. nonfinite: sqrt(2 g h) of a re-zeroed, negative grip height --------------------------------


class _TakeoffSpeed(nn.Module):
    """Free-fall speed from the grip-height drop: sqrt(2 g h), no clamp."""

    def forward(self, h):
        return torch.sqrt(2 * 9.81 * h)


class _VaultNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.speed = _TakeoffSpeed()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        v = self.speed(x[:, :1])
        z = torch.cat([x[:, 1:], v / 5.0], 1)
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(z))))).squeeze(-1)


@scenario(
    family="pole_vault_takeoff_grip_drop_sqrt_gelu_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("speed",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Pole-vault bar-clearance regressor (GELU MLP on run-up speed, pole stiffness, grip "
    "height drop, plant angle, step count and a derived free-fall speed sqrt(2 g h), MSE, Adamax "
    "lr 2e-3). From step 80 a re-zeroed force-plate rig reports the grip drop relative to a new "
    "datum, so some heights are negative; the speed module has no clamp, sqrt of a negative is "
    "NaN and the loss is NaN at step 80.",
)
def h550_pole_vault_negative_grip_drop(ctx):
    gen = seeded(5503)
    model = _VaultNet(5)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}
    model.speed.register_forward_hook(
        lambda m, i, o: seen.__setitem__("nan", bool(torch.isnan(o).any()))
    )
    nan_at = []

    def alter(step, x, y):
        x = x.clone()
        x[:, 0] = 1.0 + 0.3 * x[:, 0].abs()  # drop in metres, positive
        if step >= 80:
            x[:, 0] = x[:, 0] - 1.4  # new datum: some drops negative
        return x, y

    def after(step, loss):
        nan_at.append(seen["nan"])

    batches = _readings(gen, 64, 6, 55030)
    losses, _ = _train(ctx, model, opt, batches, 160, F.mse_loss, alter=alter, after=after)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 80", first_bad == 80)
    ctx.check("speed module output NaN at step 80", len(nan_at) > 80 and nan_at[80])
    ctx.check("speed module finite before step 80", not any(nan_at[:80]))
    ctx.check("trained before step 80", _mean(losses[70:80]) < 0.7 * _mean(losses[:10]))


# -- 4. data outlier: one shard of thread tension in millinewtons ---------------------------------


@scenario(
    family="sashiko_stitch_pitch_thread_tension_silu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Sashiko stitch-pitch regressor (SiLU MLP on thread tension, needle length, cloth "
    "layers, hand speed, pattern curvature and thimble pressure, MSE, RMSprop lr 1e-3, clip "
    "5.0). At step 120 one shard comes from a tension meter that logs millinewtons instead of "
    "newtons: that batch's first column is 1000x, the loss and gradient jump, the clip limits "
    "the step and the run recovers.",
)
def h550_sashiko_millinewton_shard(ctx):
    gen = seeded(5504)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 0] = 1000.0 * x[:, 0]
        return x, y

    batches = _readings(gen, 64, 6, 55040)
    losses, norms = _train(ctx, model, opt, batches, 200, F.mse_loss, alter=alter, clip=5.0)
    ctx.check(
        "loss at step 120 over 20x the median before", losses[120] > 20 * _median(losses[100:120])
    )
    ctx.check(
        "gradient at step 120 over 10x the median before", norms[120] > 10 * _median(norms[100:120])
    )
    ctx.check(
        "recovers: steps 180-200 under 2x steps 100-120",
        _mean(losses[180:200]) < 2 * _mean(losses[100:120]),
    )
    ctx.check("finite", _finite(losses))


# -- 5. gradient spike: accumulation divisor inverted for one step ---------------------------------


@scenario(
    family="fencing_lunge_touch_validity_gelu_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Fencing-lunge touch-validity classifier (GELU MLP on blade angle, lunge speed, "
    "distance, point pressure, guard position and timing, BCE with logits, SGD Nesterov "
    "momentum 0.9 lr 0.05, clip 2.0). On step 130 a code path for a resumed micro-batch "
    "multiplies the loss by the accumulation count squared times 100 instead of dividing: the "
    "backpropagated loss is 400x for one step, the gradient jumps while the logged loss is "
    "ordinary; the clip holds and training goes on.",
)
def h550_fencing_inverted_accum_divisor(ctx):
    gen = seeded(5505)
    model = _Net(6, 48, 1, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(55050)
    w = torch.randn(6, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 6, generator=gen)
            p = torch.sigmoid(2.5 * x @ w / math.sqrt(6) + 0.5 * x[:, 0] * x[:, 1])
            yield x, (torch.rand(64, generator=gen) < p).float()

    def backprop(step, loss):
        return loss * (4 * 4 * 25) if step == 130 else loss  # meant loss / 4 on a split batch

    losses, norms = _train(
        ctx,
        model,
        opt,
        batches(),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=2.0,
    )
    ctx.check(
        "gradient at step 130 over 100x the median before",
        norms[130] > 100 * _median(norms[100:130]),
    )
    ctx.check(
        "logged loss at step 130 ordinary (under 2x median)",
        losses[130] < 2 * _median(losses[100:130]),
    )
    ctx.check("trained", _mean(losses[-20:]) < _mean(losses[:10]) - 0.05)
    ctx.check("finite", _finite(losses))


# -- 6. sharpness above limit: the linear-scaling rule applied twice on resume ----------------------


@scenario(
    family="cloisonne_enamel_firing_shrink_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=80,
    heldout=True,
    note="Cloisonne enamel firing-shrinkage regressor (tanh MLP on frit grain, layer count, "
    "kiln temperature, firing time, wire height and substrate thickness, MSE, plain SGD lr "
    "0.05). The run resumes at step 80 with a config that applies the linear-scaling rule "
    "(lr x batch/64) to an lr that was already scaled, and the batch field is 1280: the "
    "learning rate becomes 20x, lr x top Hessian eigenvalue passes 2 and the loss blows up.",
)
def h550_cloisonne_double_lr_scaling(ctx):
    gen = seeded(5506)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = _readings(gen, 64, 6, 55060)
    probe = next(batches)
    products = []

    def before(step):
        if step == 80:
            for grp in opt.param_groups:
                grp["lr"] = grp["lr"] * 1280 / 64
        if step % 10 == 0:
            lr = opt.param_groups[0]["lr"]
            products.append((step, lr * _top_hessian_eig(model, F.mse_loss, *probe)))

    losses, _ = _train(ctx, model, opt, batches, 160, F.mse_loss, before=before)
    smooth = [_mean(losses[max(0, i - 4) : i + 1]) for i in range(len(losses))]
    best = min(smooth)
    blow = next((i for i, v in enumerate(smooth) if not math.isfinite(v) or v > 100 * best), None)
    ctx.check("5-step mean loss over 100x its best after step 80", blow is not None and blow > 80)
    ctx.check("lr x sharpness under 2 before step 80", all(p < 2 for s, p in products if s < 80))
    ctx.check("lr x sharpness over 2 at step 80", any(p > 2 for s, p in products if s == 80))


# -- 7. update ratio out of range: pattern-tower lr typed 1e-9 -------------------------------------


class _TwoTower(nn.Module):
    def __init__(self, d_steel, d_pattern, hidden=32):
        super().__init__()
        self.d_steel = d_steel
        self.steel = nn.Sequential(nn.Linear(d_steel, hidden), nn.ReLU())
        self.pattern = nn.Sequential(nn.Linear(d_pattern, hidden), nn.ReLU())
        self.head = nn.Linear(2 * hidden, 1)

    def forward(self, x):
        a = self.steel(x[:, : self.d_steel])
        b = self.pattern(x[:, self.d_steel :])
        return self.head(torch.cat([a, b], 1)).squeeze(-1)


@scenario(
    family="damascus_billet_fold_pattern_two_tower_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("pattern",),
    diverges=None,
    heldout=True,
    note="Damascus billet pattern-contrast regressor (two ReLU towers: steel tower on carbon "
    "content, nickel share, forge temperature; pattern tower on fold count, twist turns, etch "
    "time; MSE, Adagrad with param groups lr 0.05). The pattern group's lr is typed 1e-9 for "
    "1e-2: the pattern tower never moves (relative change under 1e-6), the rest trains and the "
    "loss falls only as far as the steel features allow.",
)
def h550_damascus_pattern_group_lr_typo(ctx):
    gen = seeded(5507)
    model = _TwoTower(3, 3)
    pattern_params = list(model.pattern.parameters())
    ids = {id(p) for p in pattern_params}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adagrad(
        [{"params": rest, "lr": 0.05}, {"params": pattern_params, "lr": 1e-9}]  # meant 1e-2
    )
    p0, s0 = _flat(model.pattern), _flat(model.steel)
    batches = _readings(gen, 64, 6, 55070)
    losses, _ = _train(ctx, model, opt, batches, 200, F.mse_loss)
    p_rel = float((_flat(model.pattern) - p0).norm() / p0.norm())
    s_rel = float((_flat(model.steel) - s0).norm() / s0.norm())
    ctx.check("pattern tower relative change under 1e-6", p_rel < 1e-6)
    ctx.check("steel tower relative change over 1e-2", s_rel > 1e-2)
    ctx.check("loss fell", _fell(losses, ratio=0.9))


# -- 8. softmax collapse: temperature typed 1e-3 ---------------------------------------------------


class _TempClassifier(nn.Module):
    def __init__(self, d_in, classes, hidden=48, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x))))) / self.temperature


@scenario(
    family="batik_wax_crackle_pattern_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Batik wax-crackle pattern classifier (ReLU MLP on wax blend, cooling rate, fold "
    "stress, cloth weave, dye bath time and crack density, 6 crackle styles, cross-entropy, "
    "NAdam lr 1e-3). The logits are divided by a temperature typed 1e-3 for 1.0: the softmax "
    "saturates and many rows' target probability rounds to exactly 1.0 in float32.",
)
def h550_batik_temperature_typo(ctx):
    gen = seeded(5508)
    model = _TempClassifier(6, 6, temperature=1e-3)  # meant 1.0
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    fracs = []

    def alter(step, x, y):
        if step % 10 == 0:
            with torch.no_grad():
                fracs.append(collapsed_fraction(model(x), y))
        return x, y

    batches = _grades(gen, 64, 6, 6, 55080, spread=1.0)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, alter=alter)
    ctx.check("over 40% of rows' target probability exactly 1.0 (late)", max(fracs[-5:]) > 0.4)
    ctx.check("collapse grew from the start", max(fracs[-5:]) > fracs[0])
    ctx.check("finite", _finite(losses))


# -- 9. loss of plasticity: fc1 bias initialised at -3 --------------------------------------------


@scenario(
    family="gold_leaf_gilding_size_adhesion_relu_regressor",
    optimizer="AdamW",
    cause="loss_of_plasticity",
    where=("act1", "fc1"),
    diverges=None,
    heldout=True,
    note="Gold-leaf gilding adhesion regressor (ReLU MLP on size tack time, humidity, leaf "
    "karat, burnisher pressure, gesso layers and bole thickness, MSE, AdamW lr 1e-3). fc1's "
    "bias is initialised at -3, copied from a gate-bias init meant for another model: most of "
    "act1's units never fire on any input, get no gradient and stay dead, and the fit stalls "
    "well above what the net can reach.",
)
def h550_gold_leaf_negative_bias_init(ctx):
    gen = seeded(5509)
    model = _Net(6, 48, 1, nn.ReLU)
    with torch.no_grad():
        model.fc1.weight.mul_(0.5)
        model.fc1.bias.fill_(-3.0)  # copied from a gate-bias init
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    batches = _readings(gen, 256, 6, 55090)
    losses, _ = _train(ctx, model, opt, batches, 200, F.mse_loss)
    probe_x, probe_y = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.fc1(probe_x))
    ref = _Net(6, 48, 1, nn.ReLU)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.01)
    ref_gen = seeded(5509)
    ref_batches = _readings(ref_gen, 256, 6, 55090)
    for _ in range(200):
        x, y = next(ref_batches)
        loss = F.mse_loss(ref(x), y)
        loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
    with torch.no_grad():
        ref_loss = float(F.mse_loss(ref(probe_x), probe_y))
    ctx.check("over 70% of act1's units dead at the end", dead > 0.7)
    ctx.check(
        "stalls: last loss over 2x the same net with a normal init",
        _mean(losses[-10:]) > 2 * ref_loss,
    )
    ctx.check("finite", _finite(losses))


# -- 10. amp overflow: pressure in pascals under fp16 autocast ------------------------------------


class _FoehnNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="foehn_wall_cloud_onset_lead_fp16_silu_regressor",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=70,
    onset=70,
    heldout=True,
    note="Foehn onset lead-time regressor (SiLU MLP on pressure difference across the ridge, "
    "crest wind, wall-cloud height, dew point, lee temperature and humidity, Huber loss, RAdam "
    "lr 2e-3, fp16 autocast + GradScaler). From step 70 a new station feed gives the pressure "
    "difference in pascals, not standardised (about 8e5 after the old scaling): autocast runs "
    "fc1 in fp16, whose range ends at 65504, its output is non-finite while the same batch is "
    "finite in float32, and the loss is non-finite at step 70.",
)
def h550_foehn_pressure_in_pascals(ctx):
    gen = seeded(5510)
    model = _FoehnNet(6)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    losses, fc1_bad = [], []
    batches = _readings(gen, 64, 6, 55100)
    bad_x = None
    for step in range(120):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, 0] = 8.0e5 + 1.0e5 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_bad.append(seen["fc1"][1])
        loss = F.huber_loss(out.float(), y)
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
    ctx.check("loss first non-finite at step 70", first_bad == 70)
    ctx.check("fc1's fp16 output non-finite at step 70", len(fc1_bad) > 70 and fc1_bad[70])
    ctx.check("fc1 finite before step 70", not any(fc1_bad[:70]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 70", _mean(losses[60:70]) < 0.8 * _mean(losses[:10]))


# -- 11. control (alarming-looking): data reordered easy-first every epoch -------------------------


@scenario(
    family="singing_sand_boom_pitch_curriculum_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Singing-sand boom-pitch classifier (ReLU MLP on grain size, sphericity, moisture, "
    "slope angle, avalanche speed and dune height, 5 pitch bands, cross-entropy, SGD momentum "
    "0.9, OneCycleLR peak 0.1). A curriculum reorders the fixed training set by difficulty "
    "every epoch (easy, low-noise samples first, hard ones last, shuffled within bands): the "
    "loss climbs within each epoch and drops at every boundary, a saw-tooth that looks alarming "
    "while the run is healthy and the epoch means fall.",
)
def h550_singing_sand_easy_first_curriculum(ctx):
    gen = seeded(5511)
    n, batch, epochs = 1280, 64, 10
    g = torch.Generator().manual_seed(55110)
    protos = 1.5 * torch.randn(5, 6, generator=g)
    y_all = torch.randint(0, 5, (n,), generator=gen)
    difficulty = torch.rand(n, generator=gen)
    x_all = protos[y_all] + (0.3 + 2.2 * difficulty)[:, None] * torch.randn(n, 6, generator=gen)
    model = _Net(6, 48, 5, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = epochs * (n // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)

    def batches():
        for _ in range(epochs):
            band = (difficulty * 4).floor() + 0.9 * torch.rand(n, generator=gen)
            order = torch.argsort(band)
            for i in range(0, n, batch):
                idx = order[i : i + batch]
                yield x_all[idx], y_all[idx]

    losses, _ = _train(
        ctx, model, opt, batches(), steps, F.cross_entropy, classifier=True, sched=sched
    )
    per = n // batch
    epoch_means = [_mean(losses[e * per : (e + 1) * per]) for e in range(epochs)]
    teeth = sum(
        _mean(losses[e * per : e * per + 3]) < 0.6 * _mean(losses[e * per - 3 : e * per])
        for e in range(1, epochs)
    )
    ctx.check("saw-tooth: loss drops at 7+ of 9 epoch boundaries", teeth >= 7)
    ctx.check("epoch mean fell (last under 0.8x first)", epoch_means[-1] < 0.8 * epoch_means[0])
    ctx.check("finite", _finite(losses))


# -- 12. control: hand-written LSTM, warm-up, clipping, label smoothing ---------------------------


class _HandLSTM(nn.Module):
    """An LSTM cell written out by hand (input, forget, cell, output gates; no peepholes)."""

    def __init__(self, d_in, hidden, classes):
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(d_in, 4 * hidden)
        self.hh = nn.Linear(hidden, 4 * hidden, bias=False)
        self.head = nn.Linear(hidden, classes)
        with torch.no_grad():
            self.ih.bias[hidden : 2 * hidden].fill_(1.0)  # forget-gate bias 1

    def forward(self, x):
        b, t, _ = x.shape
        h = x.new_zeros(b, self.hidden)
        c = x.new_zeros(b, self.hidden)
        for s in range(t):
            i, f, g, o = (self.ih(x[:, s]) + self.hh(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.head(h)


@scenario(
    family="canoe_polo_paddle_stroke_type_handwritten_lstm_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Canoe-polo paddle-stroke classifier (a hand-written LSTM, no peepholes, over 16 "
    "samples of a shaft strain gauge, blade angle and boat yaw rate, 4 stroke types, "
    "cross-entropy with label smoothing 0.1, Adam lr 3e-3 with 20-step linear warm-up, clip "
    "1.0). An ordinary run: the loss falls and stays finite.",
)
def h550_canoe_polo_hand_lstm(ctx):
    gen = seeded(5512)
    t_len = 16
    tt = torch.linspace(0, 1, t_len)

    def batches():
        freqs = torch.tensor([1.0, 2.0, 3.0, 4.0])
        while True:
            y = torch.randint(0, 4, (32,), generator=gen)
            phase = 6.28 * torch.rand(32, 1, generator=gen)
            base = torch.sin(6.28 * freqs[y][:, None] * tt[None] + phase)
            x = torch.stack(
                [base, torch.cos(6.28 * freqs[y][:, None] * tt[None] + phase), 0.3 * base**2], -1
            )
            yield x + 0.3 * torch.randn(32, t_len, 3, generator=gen), y

    model = _HandLSTM(3, 24, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    losses, _ = _train(
        ctx,
        model,
        opt,
        batches(),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell (last 10 under 0.7x first 10)", _fell(losses))
    ctx.check("finite", _finite(losses))


# -- 13. control: tied-weight autoencoder, plateau scheduler, accumulation -------------------------


class _TiedAE(nn.Module):
    def __init__(self, d_in, code):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        z = torch.tanh(self.enc(x))
        return F.linear(z, self.enc.weight.t(), self.dec_bias)  # decoder tied to the encoder


@scenario(
    family="hoof_trimming_rasp_wear_tied_autoencoder",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hoof-trimming rasp-wear autoencoder (tied weights: the decoder is the encoder's "
    "transpose, tanh code of 4 from 12 rasp-tooth wear gauges, Huber reconstruction loss, SGD "
    "Nesterov momentum 0.9 lr 0.05, ReduceLROnPlateau, accumulation 2, clip 1.0, noisy "
    "gauges). An ordinary run: the reconstruction loss falls and stays finite.",
)
def h550_hoof_rasp_tied_autoencoder(ctx):
    gen = seeded(5513)
    g = torch.Generator().manual_seed(55130)
    basis = torch.randn(4, 12, generator=g)
    model = _TiedAE(12, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    losses = []
    for _step in range(160):
        total = 0.0
        for _ in range(2):
            z = torch.randn(32, 4, generator=gen)
            x = z @ basis + 0.2 * torch.randn(32, 12, generator=gen)
            loss = F.huber_loss(model(x), x)
            (loss / 2).backward()
            total = total + loss.detach() / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
        plateau.step(losses[-1])
    ctx.check("loss fell (last 10 under 0.7x first 10)", _fell(losses))
    ctx.check("finite", _finite(losses))
