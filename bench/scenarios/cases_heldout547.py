"""Held-out set 547 (``h547_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: shinty caman swing-speed tanh regressor whose warm-up LambdaLR has no cap
(sharpness_above_limit, plain SGD); kyudo arrow-grouping regressor resumed from a weights-only
checkpoint, Adam moments and StepLR lost (loss_spike, Adam); sitar sympathetic-string regressor
dividing two zero energies in a ratio module (nonfinite, NAdam); tide-mill wheel torque regressor
fed raw 16-bit ADC counts under fp16 autocast (amp_overflow, RAdam); pearl-diver descent-rate
12-layer ReLU MLP with the ReLU gain applied twice at init, clipped (exploding_gradients, SGD momentum);
sheepdog-trial outrun classifier whose head group lr is typed 5e-8 (update_ratio_out_of_range,
Adagrad); salt-pan rake-yield regressor fed one shard in parts per million (data_outlier, RMSprop);
polo chukker mallet regressor with a loss weight of 500 for one resumed step (gradient_spike, SGD
Nesterov); fjord-horse coat prototype classifier with temperature typed 0.002 (softmax_collapse,
Adam); tinsmith seam-solder ReLU regressor with fc1 bias initialised -2.5 (loss_of_plasticity,
Adamax). Controls: starling-murmuration Perceiver-IO regressor (AdamW, OneCycleLR, clipping),
dry-stone waller coping regressor under hand-written Lion sign updates (alarming-looking: flat
update norm whatever the gradient, Huber), sulky trotting-gait GRU classifier (SGD momentum,
label smoothing, accumulation 2, clipping, ReduceLROnPlateau).
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


# -- 1. sharpness above limit: a warm-up lambda with no cap ---------------------------------------


@scenario(
    family="shinty_caman_swing_speed_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=20,
    heldout=True,
    note="Shinty caman swing-speed regressor (tanh MLP on grip height, backswing angle, wrist "
    "cock, stance width, ball lie and turf firmness, MSE, plain SGD lr 0.2). The warm-up "
    "LambdaLR is written (s + 1) / 20 with the min(1, ...) cap left out: past step 20 the "
    "learning rate keeps climbing linearly, lr x top Hessian eigenvalue crosses 2 and the loss "
    "oscillates and blows up.",
)
def h547_shinty_warmup_without_cap(ctx):
    gen = seeded(5471)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 20)  # the bug: no cap
    batches = _readings(gen, 64, 6, 54710)
    probe = next(batches)
    products = {}

    def before(step):
        if step % 10 == 0:
            lr = opt.param_groups[0]["lr"]
            products[step] = lr * _top_hessian_eig(model, F.mse_loss, *probe)

    losses, _ = _loop(ctx, model, opt, batches, 300, F.mse_loss, before=before, sched=sched)
    finite = [v for v in losses if math.isfinite(v)]
    crossed = [s for s, p in products.items() if p > 2.0]
    ctx.check("lr x sharpness below 2 at the warm-up's end", products.get(20, 9.0) < 2.0)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses))
    ctx.check(
        "lr x sharpness crossed 2 before the blow-up", bool(crossed) and crossed[0] < first_bad
    )
    ctx.check(
        "loss blew up (non-finite or over 100x its best)",
        (not _finite(losses)) or max(finite[-20:]) > 100 * min(finite),
    )
    ctx.check("trained during warm-up", _fell(losses[:40]))


# -- 2. loss spike: a resume that drops the optimizer and scheduler state -------------------------


@scenario(
    family="kyudo_arrow_grouping_resume_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="Kyudo arrow-grouping regressor (SiLU MLP on draw length, release timing, bow weight, "
    "arrow spine, hand-in position and wind, MSE, Adam lr 1e-2 with StepLR x0.1 at step 80). "
    "At step 150 the job is resumed from a weights-only checkpoint: the Adam moments are empty "
    "and the scheduler restarts at lr 1e-2. The first bias-corrected steps move every weight by "
    "about the full learning rate: the loss jumps several-fold for a few steps with no gradient "
    "burst and no change in the data, then comes back down.",
)
def h547_kyudo_resume_without_optimizer_state(ctx):
    gen = seeded(5472)
    model = _Net(6, 64, 1, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = _readings(gen, 64, 6, 54720)

    def before(step):
        if step == 80:
            opt.param_groups[0]["lr"] = 1e-3
        if step == 150:  # resumed: weights only
            opt.state.clear()
            opt.param_groups[0]["lr"] = 1e-2

    losses, norms = _loop(ctx, model, opt, batches, 260, F.mse_loss, before=before)
    pre = _mean(losses[130:150])
    peak = max(losses[150:160])
    ctx.check("loss over 3x its pre-resume level", peak > 3 * pre)
    ctx.check("no gradient burst at the resume", norms[150] < 3 * _median(norms[100:150]))
    ctx.check("recovered to under 2x within 100 steps", _mean(losses[-10:]) < 2 * pre)
    ctx.check("trained before the resume", _fell(losses[:150]))


# -- 3. nonfinite: 0/0 in a hand-written ratio feature -------------------------------------------


class _RatioFeature(nn.Module):
    """Appends pluck energy / sustain energy to the readings (no epsilon)."""

    def forward(self, x):
        return torch.cat([x[:, 2:], (x[:, :1] / x[:, 1:2])], 1)


class _SitarNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.ratio = _RatioFeature()
        self.fc1 = nn.Linear(5, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(self.ratio(x)))))).squeeze(-1)


@scenario(
    family="sitar_sympathetic_string_ratio_gelu_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("ratio",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Sitar sympathetic-string sustain regressor (GELU MLP on pluck energy / sustain energy "
    "plus four readings, MSE, NAdam). The ratio module divides without an epsilon; at step 90 a "
    "batch holds a take where the taraf strings were damped: pluck and sustain energies are "
    "both 0, 0/0 is NaN and the loss is NaN at step 90.",
)
def h547_sitar_ratio_zero_over_zero(ctx):
    gen = seeded(5473)
    model = _SitarNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    base = _readings(gen, 64, 6, 54730)
    seen = {}
    model.ratio.register_forward_hook(
        lambda m, i, o: seen.__setitem__("nan", bool(torch.isnan(o).any()))
    )

    def energies():
        while True:
            x, y = next(base)
            x = x.clone()
            x[:, 0] = 1.0 + 0.3 * torch.sigmoid(x[:, 0])
            x[:, 1] = 1.5 + 0.3 * torch.sigmoid(x[:, 1])
            yield x, y

    src = energies()
    nan_at = []

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:5, 0] = 0.0
            x[:5, 1] = 0.0
        return x, y

    def after(step, loss):
        nan_at.append(seen["nan"])

    losses, _ = _loop(ctx, model, opt, src, 150, F.mse_loss, alter=alter, after=after)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 90", first_bad == 90)
    ctx.check("ratio output NaN at step 90", len(nan_at) > 90 and nan_at[90])
    ctx.check("ratio finite before step 90", not any(nan_at[:90]))
    ctx.check("trained before step 90", _fell(losses[:90]))


# -- 4. amp overflow: raw 16-bit ADC counts under fp16 autocast -----------------------------------


class _GeluNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="tide_mill_wheel_torque_fp16_gelu_regressor",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Tide-mill wheel torque regressor (GELU MLP on eight sluice and wheel sensor readings, "
    "MSE, RAdam, fp16 autocast + GradScaler). From step 80 the logger exports raw 16-bit ADC "
    "counts (about 2e4 to 6e4, each still inside fp16's range) instead of volts and no "
    "scaling is applied: fc1's fp16 matmul sums eight such counts past 65504 and its output is "
    "inf; the same batch is finite in float32 and the loss is non-finite at step 80.",
)
def h547_tide_mill_raw_adc_counts_fp16(ctx):
    gen = seeded(5474)
    model = _GeluNet(8)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 8, 54740)
    losses, fc1_inf, bad_x = [], [], None
    for step in range(120):
        x, y = next(batches)
        if step >= 80:
            x = (40000.0 + 8000.0 * x).clamp(0.0, 65000.0)
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_inf.append(seen["fc1"][1])
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
    ctx.check("inputs inside fp16's range", bad_x is not None and float(bad_x.abs().max()) < 65504)
    ctx.check("fc1's fp16 output non-finite at step 80", len(fc1_inf) > 80 and fc1_inf[80])
    ctx.check("loss first non-finite at step 80", first_bad == 80)
    ctx.check("no inf before step 80", not any(fc1_inf[:80]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 80", _fell(losses[:80]))


# -- 5. exploding gradients: init gain applied twice in a deep ReLU stack --------------------------


class _DeepRelu(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.net = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.net:
            nn.init.normal_(lin.weight, std=gain * math.sqrt(2.0 / lin.in_features))
            nn.init.zeros_(lin.bias)
        self.acts = []

    def forward(self, x):
        self.acts = []
        for lin in self.net:
            x = F.relu(lin(x))
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
        return self.head(x).squeeze(-1)


def _act_grad_ratio(model, x, y):
    """Gradient norm w.r.t. the first layer's activations over the last layer's."""
    F.mse_loss(model(x), y).backward()
    ratio = float(model.acts[0].grad.norm() / model.acts[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    return ratio


@scenario(
    family="pearl_diver_descent_rate_deep_relu_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("net.0",),
    diverges=None,
    heldout=True,
    note="Pearl-diver descent-rate regressor (12-layer ReLU MLP on weight belt, lung volume, "
    "fin stroke rate, water temperature, lanyard drag and depth target, MSE, SGD momentum 0.9 "
    "lr 1e-3, clip-norm 1). The init helper multiplies He's sqrt(2 / fan_in) by "
    "calculate_gain('relu') a second time: each layer amplifies by about 1.4, the gradient "
    "w.r.t. the first layer's activations is over 30x the last layer's (under 5x with the right "
    "init), the total gradient norm stays in the thousands for tens of steps and clipping turns "
    "training into a crawl.",
)
def h547_pearl_diver_gain_applied_twice(ctx):
    gen = seeded(5475)
    model = _DeepRelu(6, 32, 12, math.sqrt(2.0))  # the bug: gain applied twice
    twin = _DeepRelu(6, 32, 12, 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _readings(gen, 64, 6, 54750)
    x0, y0 = next(batches)
    ratio, twin_ratio = _act_grad_ratio(model, x0, y0), _act_grad_ratio(twin, x0, y0)
    losses, norms = _loop(ctx, model, opt, batches, 150, F.mse_loss, clip=1.0)
    ctx.check("first layer's activation gradient over 30x the last's", ratio > 30)
    ctx.check("under 5x with the intended init", twin_ratio < 5)
    ctx.check("gradient norm over 500 for the first 30 steps", min(norms[:30]) > 500)
    ctx.check("loss finite", _finite(losses))


# -- 6. update ratio out of range: a param-group lr typo ------------------------------------------


@scenario(
    family="sheepdog_trial_outrun_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sheepdog-trial outrun grade classifier (ReLU MLP on outrun width, lift speed, fetch "
    "line deviation, handler whistle count and flock size, 5 grades, cross-entropy, Adagrad "
    "with two param groups). The head group's lr is typed 5e-8 for 5e-2: the head's weights "
    "move by under 1e-5 of their norm over the run while the trunk moves normally; the loss "
    "falls only through the trunk.",
)
def h547_sheepdog_head_group_lr_typo(ctx):
    gen = seeded(5476)
    model = _Net(8, 48, 5, nn.ReLU)
    opt = torch.optim.Adagrad(
        [
            {"params": list(model.fc1.parameters()) + list(model.fc2.parameters()), "lr": 5e-2},
            {"params": model.head.parameters(), "lr": 5e-8},  # the typo: 5e-2
        ]
    )
    h0, t0 = _flat(model.head), _flat(model.fc1)
    batches = _grades(gen, 64, 8, 5, 54760)
    losses, _ = _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    ctx.check("head moved under 1e-5 of its norm", _rel(_flat(model.head), h0) < 1e-5)
    ctx.check("trunk moved over 1e-2 of its norm", _rel(_flat(model.fc1), t0) > 1e-2)
    ctx.check("loss finite", _finite(losses))


# -- 7. data outlier: one shard in parts per million ---------------------------------------------


@scenario(
    family="saltpan_brine_rake_yield_rmsprop_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Salt-pan rake-yield regressor (SiLU MLP on brine salinity, pan depth, sun hours, wind, "
    "evaporation and rake interval, MSE, RMSprop lr 1e-3, clip-norm 1). The batch of step 120 "
    "comes from one pan's logger shard that writes salinity in parts per million (about 3e4) "
    "instead of standardised units: the loss jumps over 20x and the gradient over 10x for that "
    "step; clipping holds the update and the run recovers.",
)
def h547_saltpan_ppm_shard(ctx):
    gen = seeded(5477)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 6, 54770)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 0] = 3.0e4 + 2.0e3 * x[:, 0]
        return x, y

    losses, norms = _loop(ctx, model, opt, batches, 220, F.mse_loss, alter=alter, clip=1.0)
    pre = _median(losses[100:120])
    ctx.check("loss over 20x at step 120", losses[120] > 20 * pre)
    ctx.check("gradient over 10x at step 120", norms[120] > 10 * _median(norms[100:120]))
    ctx.check("recovered (last 20 under 2x pre-onset)", _mean(losses[-20:]) < 2 * pre)
    ctx.check("trained before step 120", _fell(losses[:120]))


# -- 8. gradient spike: a loss weight misread for one step on resume -------------------------------


@scenario(
    family="polo_chukker_mallet_loss_weight_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="Polo chukker mallet-strike distance regressor (SiLU MLP on swing arc, pony speed, "
    "mallet head angle, ball lie, turf and wind, MSE, SGD Nesterov lr 0.02, clip-norm 1). On the "
    "resumed step 90 the loss weight is read from an old config as 500 instead of 1 and "
    "multiplied into the backpropagated loss for that one step only: the gradient is over 100x "
    "its median while the logged loss is ordinary; clipping bounds the update.",
)
def h547_polo_loss_weight_misread(ctx):
    gen = seeded(5478)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    batches = _readings(gen, 64, 6, 54780)

    def backprop(step, loss):
        return loss * (500.0 if step == 90 else 1.0)

    losses, norms = _loop(ctx, model, opt, batches, 180, F.mse_loss, backprop=backprop, clip=1.0)
    ctx.check("gradient over 100x its median at step 90", norms[90] > 100 * _median(norms[60:90]))
    ctx.check("logged loss ordinary at step 90", losses[90] < 3 * _median(losses[60:90]))
    ctx.check("finite and trained", _fell(losses))


# -- 9. softmax collapse: temperature typed 0.01 ---------------------------------------------------


class _ProtoNet(nn.Module):
    """Embeds, L2-normalises, and scores against L2-normalised class prototypes / temperature."""

    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes, bias=False)
        self.temperature = temperature

    def forward(self, x):
        z = F.normalize(self.fc2(F.relu(self.fc1(x))), dim=-1)
        return F.linear(z, F.normalize(self.head.weight, dim=-1)) / self.temperature


@scenario(
    family="fjord_horse_coat_temperature_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Fjord-horse coat-shade classifier (ReLU MLP embedding on mane stripe width, dun factor, "
    "hair reflectance bands and season, L2-normalised, scored against L2-normalised shade "
    "prototypes, 5 shades, cross-entropy, Adam lr 2e-3). The temperature is typed 0.002 for "
    "0.05 (logit scale 500 instead of 20) and the normalisation stops the net from shrinking "
    "it: float32 softmax rounds the target probability of most rows to exactly 1.0.",
)
def h547_fjord_horse_temperature_typo(ctx):
    gen = seeded(5479)
    model = _ProtoNet(10, 48, 5, temperature=0.002)  # the typo: 0.05
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 10, 5, 54790, spread=1.2)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
    ctx.check(
        "over 30% of rows' target probability exactly 1.0", collapsed_fraction(logits, y) > 0.3
    )
    ctx.check(
        "logit gaps over 100", float(logits.max(1).values.sub(logits.min(1).values).max()) > 100
    )
    ctx.check("loss finite", _finite(losses))


# -- 10. loss of plasticity: ReLU bias init copied from a gate ------------------------------------


@scenario(
    family="tinsmith_seam_solder_bias_init_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Tinsmith seam solder-fillet regressor (ReLU MLP on iron temperature, flux amount, "
    "seam gap, sheet gauge, dwell time and solder feed, MSE, Adamax lr 2e-3). fc1's bias "
    "is initialised with the constant -2.5 copied from a gating layer's init: over 70% of "
    "act1's units never fire, get no gradient and stay dead; the loss stalls high.",
)
def h547_tinsmith_bias_init_from_gate(ctx):
    gen = seeded(5480)
    model = _Net(6, 48, 1, nn.ReLU)
    nn.init.constant_(model.fc1.bias, -2.5)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    feats = {}
    model.act1.register_forward_hook(lambda m, i, o: feats.__setitem__("h", o.detach()))
    batches = _readings(gen, 64, 6, 54800)
    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss)
    x, _ = next(batches)
    with torch.no_grad():
        model(x)
    ctx.check("over 70% of act1 dead", dead_fraction(feats["h"]) > 0.7)
    ctx.check(
        "loss stalled (last above 60% of first)", _mean(losses[-10:]) > 0.6 * _mean(losses[:10])
    )
    ctx.check("loss finite", _finite(losses))


# -- 11. control: a Perceiver-IO latent array over a long input ----------------------------------


class _CrossAttention(nn.Module):
    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries, inputs):
        b, n, d = queries.shape
        k, v = self.kv(inputs).split(d, dim=-1)
        q = self.q(queries)
        q, k, v = (z.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class _PerceiverIO(nn.Module):
    def __init__(self, d_in=4, dim=32, latents=16):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.latents = nn.Parameter(0.02 * torch.randn(latents, dim))
        self.ln_in = nn.LayerNorm(dim)
        self.ln_lat = nn.LayerNorm(dim)
        self.encode = _CrossAttention(dim)
        self.ln_self = nn.LayerNorm(dim)
        self.process = _CrossAttention(dim)
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.query = nn.Parameter(0.02 * torch.randn(1, dim))
        self.decode = _CrossAttention(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        inp = self.ln_in(self.embed(x))
        lat = self.latents.expand(x.shape[0], -1, -1)
        lat = lat + self.encode(self.ln_lat(lat), inp)
        h = self.ln_self(lat)
        lat = lat + self.process(h, h)
        lat = lat + self.mlp(self.ln_mlp(lat))
        q = self.query.expand(x.shape[0], -1, -1)
        return self.head(self.decode(q, lat)).reshape(-1)


def _flocks(gen, batch, birds, seed):
    """Starling position/velocity sets; target: the flock's share of birds banking hard."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        spread = 0.5 + torch.rand(batch, 1, 1, generator=gen)
        x = spread * torch.randn(batch, birds, 4, generator=gen)
        y = 3.0 * torch.sigmoid(2.0 * (x @ w)).mean(1)
        yield x, y - 1.5


@scenario(
    family="murmuration_starling_flock_perceiver_io_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: starling-murmuration banking-share regressor, Perceiver-IO style "
    "(16 learned latents cross-attend to 256 birds' positions and velocities, one latent "
    "self-attention block, an output query cross-attends to the latents), MSE, AdamW with "
    "weight decay 0.05, OneCycleLR, clip-norm 1.",
)
def h547_murmuration_perceiver_io(ctx):
    gen = seeded(5481)
    model = _PerceiverIO()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 120
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    batches = _flocks(gen, 32, 256, 54810)
    losses, _ = _loop(ctx, model, opt, batches, steps, F.mse_loss, clip=1.0, sched=sched)
    ctx.check("loss fell under 50%", _fell(losses, ratio=0.5))


# -- 12. control (alarming): hand-written Lion sign updates ---------------------------------------


class _Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): the update is lr * sign(interpolated momentum)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(b1 * m + (1 - b1) * p.grad), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


@scenario(
    family="dry_stone_waller_coping_lion_sign_regressor",
    optimizer="Lion (hand-written)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control that looks alarming: dry-stone waller coping-stone fit regressor "
    "(SiLU MLP on stone length, thickness, wall batter, hearting fill and frost exposure, Huber, "
    "hand-written Lion lr 3e-4 with decoupled weight decay 0.1). Sign updates: every weight moves "
    "by lr each step whatever its gradient, so the update norm stays flat while the gradient "
    "norm swings several-fold, and the loss is noisy; it trains normally.",
)
def h547_dry_stone_lion_sign_updates(ctx):
    gen = seeded(5482)
    model = _Net(6, 64, 1, nn.SiLU)
    opt = _Lion(model.parameters(), lr=3e-4, weight_decay=0.1)
    batches = _readings(gen, 64, 6, 54820)
    updates, prev = [], [_flat(model)]

    def after(step, loss):
        now = _flat(model)
        updates.append(float((now - prev[0]).norm()))
        prev[0] = now

    losses, norms = _loop(ctx, model, opt, batches, 200, F.huber_loss, after=after)
    ctx.check("loss fell under 50%", _fell(losses, ratio=0.5))
    ctx.check(
        "update norm flat (within 20%)",
        max(updates[5:]) < 1.2 * min(updates[5:]),
    )
    ctx.check("gradient norm varied over 3x", max(norms[5:]) > 3 * min(norms[5:]))


# -- 13. control: GRU gait classifier with the usual practice -----------------------------------


class _GaitGRU(nn.Module):
    def __init__(self, d_in=4, hidden=32, classes=3):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def _gaits(gen, batch, length=24):
    """Sulky trotting hoof-sensor traces: trot, pace and gallop differ in beat and phase."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        freq = (0.25 + 0.12 * y.float())[:, None]
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        lag = (math.pi / 2) * (y == 1).float()[:, None] + math.pi * (y == 2).float()[:, None]
        x = torch.stack(
            [
                torch.sin(freq * t + phase),
                torch.sin(freq * t + phase + lag),
                torch.cos(freq * t + phase),
                torch.cos(freq * t + phase + lag),
            ],
            -1,
        )
        yield x + 0.3 * torch.randn(x.shape, generator=gen), y


@scenario(
    family="sulky_trotting_gait_gru_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: sulky harness-racing gait classifier (GRU over 24 frames of four hoof "
    "sensors, trot / pace / gallop, cross-entropy with label smoothing 0.1, SGD momentum 0.9 "
    "lr 0.1, gradient accumulation 2, clip-norm 1, ReduceLROnPlateau, noisy traces).",
)
def h547_sulky_gait_gru(ctx):
    gen = seeded(5483)
    model = _GaitGRU()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _gaits(gen, 32)
    losses, window = [], []
    for step in range(240):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        (loss / 2).backward()
        losses.append(float(loss.detach()))
        window.append(losses[-1])
        if step % 2 == 1:
            ctx.grad_norms.append(grad_norm(model))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            plateau.step(_mean(window))
            window = []
        ctx.step(loss)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("loss fell under 60%", _fell(losses, ratio=0.6))
