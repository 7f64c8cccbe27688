"""Held-out set 539 (``h539_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: saw-sharpening tooth-set grade classifier with temperature typed 0.001 (softmax_collapse,
Adam); cockle-raking bed-density regressor with one shard in raw counts per square metre
(data_outlier, RMSprop); shrimp-horse catch net with log of a tide gauge that reads 0.0 on a dropout
(nonfinite, Adagrad); hot-riveter clinch regressor fed hydraulic pressure in pascals under fp16
autocast (amp_overflow, NAdam); cobble-sett bed-depth regressor with OneCycleLR max_lr typed 10x
(sharpness_above_limit, plain SGD); bark-peeler tan-bark yield regressor whose fc1 group lr
multiplier falls back to 0 from a key typo (update_ratio_out_of_range, AdamW); legging-tunnel
transit ReLU IRNN with recurrent identity scaled 1.12 (exploding_gradients, SGD Nesterov);
sexton grave-digging Huber regressor with one resumed step summed over batch and micro-batches
(gradient_spike, SGD momentum); wherryman tack-speed regressor with decoupled decay sign flipped
(loss_divergence, Adamax); plover nest-scrape hatch BCE classifier on separable data without
weight decay (output_logit_divergence, RAdam).
Controls: cliff egg-collecting conditional neural process (Gaussian NLL, Adam, warm-up,
clipping), shire-horse furrow-grade classifier fine-tuned under a fresh head (loss starts high
again, AdamW param groups, label smoothing), riving-froe split-quality Huber regressor (ASGD,
accumulation 2, clipping, ReduceLROnPlateau, noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


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


def _first_bad(losses: list[float]) -> int | None:
    return next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)


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
        y = torch.tanh(1.1 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
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
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. softmax collapse: temperature typed 0.001 for 1.0 -----------------------------------------


class _TempClassifier(_Net):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, classes, nn.ReLU)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="saw_sharpening_tooth_set_grade_temperature_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Saw-sharpening tooth-set grade classifier (ReLU MLP on set width, gullet depth, rake "
    "angle, fleam bevel, jointing flat and file strokes, 6 grades, cross-entropy, Adam lr 1e-3). "
    "The logit temperature in the config is typed 0.001 for 1.0: the head's logits are divided "
    "by 0.001, the float32 softmax saturates and most rows' target probability rounds to "
    "exactly 1.0 (wrong rows to exactly 0.0) from the first steps on.",
)
def h539_saw_sharpening_temperature_typo(ctx):
    gen = seeded(5391)
    model = _TempClassifier(6, 48, 6, temperature=0.001)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    collapsed = []

    def after(step, loss):
        with torch.no_grad():
            logits = model(probe_x)
            p = torch.softmax(logits.float(), -1)
            collapsed.append(float((p.max(-1).values == 1.0).float().mean()))

    probe_x, _ = next(_grades(torch.Generator().manual_seed(7), 256, 6, 6, 53910))
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 6, 6, 53910),
        160,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check(
        "over half the rows' max probability exactly 1.0 (last 20 steps)",
        _mean(collapsed[-20:]) > 0.5,
    )
    with torch.no_grad():
        p_ok = torch.softmax(model(probe_x) * model.temperature, -1)
    ctx.check(
        "at temperature 1.0 the same logits give no exact 1.0",
        bool((p_ok.max(-1).values < 1.0).all()),
    )
    ctx.check("finite", _finite(losses))


# -- 2. data outlier: one shard in raw counts per square metre -----------------------------------


@scenario(
    family="cockle_raking_bed_density_tanh_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Cockle-raking bed-density regressor (tanh MLP on sand grain size, tide exposure, salinity, "
    "rake depth and season, standardised, MSE, RMSprop lr 1e-3, clipping at 1.0). At step 100 one "
    "shard from a new survey boat arrives with its density target in raw cockles per square "
    "metre (around 400) instead of standardised: the loss jumps by orders of magnitude for that "
    "one batch, the gradient bursts, clipping bounds the update and the run recovers.",
)
def h539_cockle_raw_density_shard(ctx):
    gen = seeded(5392)
    model = _Net(5, 48, 1, nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == 100:
            y = 400.0 + 60.0 * y
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 5, 53920), 200, F.mse_loss, alter=alter, clip=1.0
    )
    pre = _median(losses[80:100])
    ctx.check("loss at step 100 over 1000x the preceding median", losses[100] > 1000 * pre)
    ctx.check(
        "gradient at step 100 over 10x the preceding median",
        norms[100] > 10 * _median(norms[80:100]),
    )
    ctx.check("recovers: last 20 under 2x the pre-shard median", _mean(losses[-20:]) < 2 * pre)
    ctx.check("trained before the shard", _mean(losses[90:100]) < 0.7 * _mean(losses[:10]))
    ctx.check("finite", _finite(losses))


# -- 3. nonfinite: log of a tide gauge that reads 0.0 on dropout -----------------------------------


class _LogTide(nn.Module):
    """Replaces column 0 (tide height above chart datum, metres) by its log; no clamp."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _ShrimpNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.log_tide = _LogTide()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.relu(self.fc1(self.log_tide(x)))
        return self.head(F.relu(self.fc2(h))).squeeze(-1)


@scenario(
    family="shrimp_horse_fishing_catch_log_tide_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("log_tide",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Shrimp-fishing-on-horseback catch regressor (ReLU MLP on log tide height, wave height, "
    "water temperature, trawl width and pace, MSE on standardised catch, Adagrad lr 0.05). The "
    "tide height enters through log() with no floor; at step 80 a batch holds readings from a "
    "gauge that records a dropout as 0.0 m: log 0 = -inf flows through fc1 and the loss is NaN "
    "at step 80.",
)
def h539_shrimp_horse_log_tide_zero(ctx):
    gen = seeded(5393)
    model = _ShrimpNet(5)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen = {}

    def hook(m, i, o):
        seen["inf"] = bool(torch.isinf(o).any())

    model.log_tide.register_forward_hook(hook)
    infs = []

    def alter(step, x, y):
        x = x.clone()
        x[:, 0] = 2.0 + 0.5 * x[:, 0].clamp(-3, 3)  # metres, always positive
        if step == 80:
            x[:3, 0] = 0.0  # gauge dropout
        return x, y

    def after(step, loss):
        infs.append(seen.get("inf", False))

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 5, 53930), 160, F.mse_loss, alter=alter, after=after
    )
    ctx.check("loss first non-finite at step 80", _first_bad(losses) == 80)
    ctx.check("log_tide output has -inf at step 80", len(infs) > 80 and infs[80])
    ctx.check("log_tide finite before step 80", not any(infs[:80]))
    ctx.check("trained before step 80", _mean(losses[70:80]) < 0.7 * _mean(losses[:10]))


# -- 4. amp overflow: hydraulic pressure in pascals under fp16 autocast -------------------------


class _GeluNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="riveter_hot_rivet_clinch_fp16_gelu_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Hot-riveter clinch-quality regressor (GELU MLP on hydraulic squeeze pressure, rivet "
    "temperature, shank length, plate gap and dolly angle, MSE, NAdam lr 2e-3, fp16 autocast + "
    "GradScaler). From step 90 a new press logs squeeze pressure in pascals (about 2e6) and the "
    "pipeline's standardisation is keyed on the old column name, so it is skipped: fc1's fp16 "
    "output passes 65504 and overflows to inf (finite in float32); the loss is non-finite at 90.",
)
def h539_riveter_fp16_pressure_pascals(ctx):
    gen = seeded(5394)
    model = _GeluNet(5)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool(torch.isinf(o).any())))
    )
    losses, fc1_inf = [], []
    batches = _readings(gen, 64, 5, 53940)
    bad_x = None
    for step in range(150):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 0] = 2.0e6 + 1.5e5 * x[:, 0]
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
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    ctx.check("loss first non-finite at step 90", _first_bad(losses) == 90)
    ctx.check("fc1's fp16 output has inf at step 90", len(fc1_inf) > 90 and fc1_inf[90])
    ctx.check("fc1 finite in fp16 before step 90", not any(fc1_inf[:90]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 90", _fell(losses[:90]))


# -- 5. sharpness above limit: OneCycleLR max_lr typed 10x --------------------------------------


@scenario(
    family="cobble_sett_paving_bed_depth_onecycle_relu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Cobble-sett paving bed-depth regressor (ReLU MLP on sett size, sand grading, compaction "
    "passes, joint width, sub-base stiffness and traffic class, MSE, plain SGD). OneCycleLR's "
    "max_lr is typed 2.0 for 0.2: during the warm-up the learning rate climbs past 2/sharpness "
    "(lr x top Hessian eigenvalue over 2), the loss starts to oscillate and then blows up.",
)
def h539_cobble_sett_onecycle_max_lr_typo(ctx):
    gen = seeded(5395)
    model = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2.0, total_steps=200, pct_start=0.3, cycle_momentum=False
    )
    probe = next(_readings(torch.Generator().manual_seed(9), 256, 6, 53950))
    products = {}

    def before(step):
        if step % 5 == 0:
            lam = _top_hessian_eig(model, F.mse_loss, *probe)
            products[step] = opt.param_groups[0]["lr"] * lam

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 53950), 200, F.mse_loss, before=before, sched=sched
    )
    best = min(v for v in losses if math.isfinite(v))
    ctx.check("lr x sharpness under 2 at step 0", products[0] < 2)
    crossed = [s for s, v in products.items() if math.isfinite(v) and v > 2]
    ctx.check("lr x sharpness past 2 during warm-up", bool(crossed) and min(crossed) <= 60)
    ctx.check(
        "loss blows up (non-finite or over 100x its best)",
        _first_bad(losses) is not None or max(losses) > 100 * best,
    )


# -- 6. update ratio: fc1's lr multiplier falls back to 0 from a key typo ------------------------


@scenario(
    family="barkpeel_oak_tan_bark_yield_group_typo_silu_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Bark-peeler oak tan-bark yield regressor (SiLU MLP on trunk girth, sap rise, coppice age, "
    "peeling-iron width, weather and bark thickness, MSE, AdamW lr 3e-3 with per-layer groups). "
    "The group config spells fc1's multiplier 'lr_mul' where the code reads 'lr_mult' with a "
    "default of 0.0: fc1's learning rate is 0 (and so is its decoupled decay), fc1 never moves "
    "while fc2 and the head train on its random features.",
)
def h539_barkpeel_group_multiplier_typo(ctx):
    gen = seeded(5396)
    model = _Net(6, 48, 1, nn.SiLU)
    cfg = {"fc1": {"lr_mul": 1.0}, "fc2": {"lr_mult": 1.0}, "head": {"lr_mult": 1.0}}
    groups = [
        {"params": getattr(model, n).parameters(), "lr": 3e-3 * c.get("lr_mult", 0.0)}
        for n, c in cfg.items()
    ]
    opt = torch.optim.AdamW(groups, lr=3e-3, weight_decay=1e-2)
    fc1_0, head_0 = _flat(model.fc1), _flat(model.head)
    fc1_grads = []

    model.fc1.weight.register_hook(lambda g: fc1_grads.append(float(g.norm())))
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 53960), 180, F.mse_loss)
    ctx.check("fc1 moved under 1e-6 of its norm", _rel(_flat(model.fc1), fc1_0) < 1e-6)
    ctx.check("head moved over 5% of its norm", _rel(_flat(model.head), head_0) > 0.05)
    ctx.check("fc1 received non-zero gradients", _median(fc1_grads) > 1e-4)
    ctx.check("loss fell", _fell(losses))
    ctx.check("finite", _finite(losses))


# -- 7. exploding gradients: IRNN with identity scaled 1.12 -------------------------------------


class _ReluCell(nn.Module):
    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.w_ih = nn.Linear(d_in, hidden)
        self.w_hh = nn.Linear(hidden, hidden)
        with torch.no_grad():
            self.w_hh.weight.copy_(gain * torch.eye(hidden))  # meant: 1.0 x identity
            self.w_hh.bias.zero_()
            self.w_ih.bias.zero_()
            self.w_ih.weight.mul_(IH_SCALE)

    def forward(self, x, h):
        return F.relu(self.w_ih(x) + self.w_hh(h))


IH_SCALE = 0.02


class _Irnn(nn.Module):
    def __init__(self, d_in=3, hidden=32, gain=1.12):
        super().__init__()
        self.rnn = _ReluCell(d_in, hidden, gain)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.head.weight.mul_(HEAD_SCALE)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rnn.w_hh.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.rnn(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


HEAD_SCALE = 0.05


def _transits(gen, batch, length):
    """Boat transit traces: legging cadence, hull draught, water level; target: mean speed."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh(x[:, :, 0].mean(1) * 3.0) + 0.3 * x[:, -5:, 1].mean(1)
        yield x, y


@scenario(
    family="legging_tunnel_boat_transit_relu_irnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn.w_hh",),
    diverges=None,
    heldout=True,
    note="Legging-tunnel narrowboat transit-speed ReLU IRNN (60 steps of leggers' cadence, hull "
    "draught and water level, MSE, SGD Nesterov lr 3e-5, no clipping). The recurrent weight is "
    "initialised as 1.12 x identity instead of identity: the state gradient grows about 1.12 "
    "per step back through time, the first state's gradient is hundreds of times the last's "
    "for the whole run; the tiny lr keeps the loss from blowing up but the run is dominated "
    "by the exploding early-time gradients.",
)
def h539_legging_tunnel_irnn_gain(ctx):
    gen = seeded(5397)
    model = _Irnn()
    opt = torch.optim.SGD(model.parameters(), lr=3e-5, momentum=0.9, nesterov=True)
    ratios = []

    def after(step, loss):
        first, last = model.states[0].grad, model.states[-1].grad
        if first is not None and last is not None:
            ratios.append(float(first.norm() / (last.norm() + 1e-30)))

    losses, _ = _loop(ctx, model, opt, _transits(gen, 32, 60), 150, F.mse_loss, after=after)
    ctx.check("state gradient at t=0 over 100x the last's at step 0", ratios[0] > 100)
    ctx.check("median ratio over the first 20 steps over 100x", _median(ratios[:20]) > 100)
    ctx.check(
        "w_hh still above identity at the end",
        float(model.rnn.w_hh.weight.detach().diag().mean()) > 1.05,
    )
    ctx.check("finite", _finite(losses))


# -- 8. gradient spike: a resumed step summed over batch and micro-batches ----------------------


@scenario(
    family="sexton_grave_digging_time_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Sexton grave-digging time regressor (ReLU MLP on soil type, frost depth, rain of the past "
    "week, root density, spade wear and plot depth, Huber, SGD momentum lr 0.02, gradient "
    "clipping at 1.0). The first step after a resume at step 120 rebuilds the loss with "
    "reduction='sum' over the 64 rows and multiplies by the old accumulation count 4 where it "
    "should divide: that one step's gradient is 256x the ordinary one while the logged (mean) loss is ordinary; clipping bounds it.",
)
def h539_sexton_resume_sum_reduction(ctx):
    gen = seeded(5398)
    model = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def backprop(step, loss):
        return loss * 64 * 4 if step == 120 else loss  # summed over 64 rows, x4 not /4

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 53980),
        220,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check(
        "gradient at step 120 over 30x the preceding median",
        norms[120] > 30 * _median(norms[100:120]),
    )
    ctx.check(
        "logged loss at 120 under 2x the preceding median",
        losses[120] < 2 * _median(losses[100:120]),
    )
    ctx.check("trained", _fell(losses))


# -- 9. loss divergence: decoupled weight decay with its sign flipped ---------------------------


@scenario(
    family="wherryman_sail_tack_speed_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Wherryman sail tack-speed regressor (tanh MLP on wind speed, wind angle, cargo weight, "
    "river width and tide, MSE, Adamax lr 2e-3). The hand-written decoupled weight decay "
    "(wd 3) is applied as p *= 1 + lr * wd instead of 1 - lr * wd: the weights grow "
    "geometrically, the net fits first and then the loss climbs slowly, with no jump, to "
    "several times its best.",
)
def h539_wherryman_decay_sign_flipped(ctx):
    gen = seeded(5399)
    model = _Net(5, 48, 1, nn.Tanh)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    w0 = float(_flat(model).norm())
    decay = [p for n, p in model.named_parameters() if "weight" in n]

    def after(step, loss):
        with torch.no_grad():  # meant as p *= 1 - lr * wd
            for p in decay:
                p.mul_(1 + 2e-3 * 3.0)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 5, 53990), 260, F.mse_loss, after=after)
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    ctx.check("last 10 over 3x the best 10-step mean", smooth[-1] > 3 * best)
    ctx.check("fits first: best before the last 60 steps", smooth.index(best) < len(smooth) - 60)
    jumps = [losses[i + 1] / max(losses[i], 1e-12) for i in range(len(losses) - 1)]
    ctx.check("no single-step jump over 5x", max(jumps) < 5)
    ctx.check("weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("finite", _finite(losses))


# -- 10. output logit divergence: separable BCE without weight decay ----------------------------


@scenario(
    family="plover_nest_scrape_hatch_bce_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Plover nest-scrape hatch classifier (ReLU MLP on scrape depth, shingle size, distance to "
    "the tide line, predator sign and incubation days, BCE with logits, RAdam lr 1e-2). The "
    "training set is separable with a margin and the weight decay was left at 0 when the config "
    "was copied: once every scrape is right the only way down is bigger logits, and the "
    "head's median |logit| grows many-fold and keeps growing.",
)
def h539_plover_separable_no_decay(ctx):
    gen = seeded(53910)
    model = _Net(5, 48, 1, nn.ReLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2, weight_decay=0.0)
    g = torch.Generator().manual_seed(539100)
    w = torch.randn(5, generator=g)

    def scrapes():
        while True:
            x = torch.randn(64, 5, generator=gen)
            s = x @ w
            x = x + 0.8 * torch.sign(s)[:, None] * w / w.norm()  # a margin
            yield x, (s > 0).float()

    probe_x, _ = next(scrapes())
    med = []

    def after(step, loss):
        with torch.no_grad():
            med.append(float(model(probe_x).abs().median()))

    losses, _ = _loop(
        ctx, model, opt, scrapes(), 240, F.binary_cross_entropy_with_logits, after=after
    )
    ctx.check("median |logit| at the end over 20x its step-0 value", med[-1] > 20 * med[0])
    ctx.check("still growing: over 1.1x in the last 80 steps", med[-1] > 1.1 * med[-81])
    ctx.check("loss near zero (separable)", _mean(losses[-10:]) < 0.02)
    ctx.check("finite", _finite(losses))


# -- 11. control: conditional neural process over cliff ledges ---------------------------------


class _CondNP(nn.Module):
    """Conditional neural process: encode (x, y) context pairs, mean-pool, decode per target."""

    def __init__(self, hidden=64):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.decoder = nn.Sequential(
            nn.Linear(hidden + 1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.mean = nn.Linear(hidden, 1)
        self.scale = nn.Linear(hidden, 1)

    def forward(self, xc, yc, xt):
        r = self.encoder(torch.cat([xc, yc], -1)).mean(1, keepdim=True)
        h = self.decoder(torch.cat([r.expand(-1, xt.shape[1], -1), xt], -1))
        return self.mean(h).squeeze(-1), 0.01 + F.softplus(self.scale(h)).squeeze(-1)


def _ledge_tasks(gen, batch=16, n_ctx=10, n_tgt=20):
    """Per cliff: egg count against ledge height, a random smooth curve plus noise."""
    while True:
        a = 0.5 + 1.5 * torch.rand(batch, 1, 1, generator=gen)
        ph = 3.0 * torch.rand(batch, 1, 1, generator=gen)
        x = 4 * torch.rand(batch, n_ctx + n_tgt, 1, generator=gen) - 2
        y = a * torch.sin(1.5 * x + ph) + 0.1 * torch.randn(x.shape, generator=gen)
        yield (x[:, :n_ctx], y[:, :n_ctx], x), y.squeeze(-1)


@scenario(
    family="egg_collecting_cliff_ledge_neural_process",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cliff egg-collecting conditional neural process (per cliff face, 10 ledges of "
    "(height, egg count) as context, predicts a Gaussian for 30 ledges; Gaussian negative "
    "log-likelihood, Adam lr 1e-3 with a 30-step linear warm-up, gradient clipping at 1.0). "
    "Healthy control.",
)
def h539_egg_collecting_neural_process(ctx):
    gen = seeded(53911)
    model = _CondNP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    ctx.attach(model, opt)
    losses = []
    batches = _ledge_tasks(gen)
    for _ in range(220):
        (xc, yc, xt), y = next(batches)
        mu, sigma = model(xc, yc, xt)
        loss = F.gaussian_nll_loss(mu, y, sigma**2)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell by over 0.5 nat", _mean(losses[-20:]) < _mean(losses[:20]) - 0.5)
    ctx.check("finite", _finite(losses))


# -- 12. control: trained trunk fine-tuned under a fresh head (alarming-looking) ---------------


@scenario(
    family="shire_horse_plough_furrow_grade_finetune_head_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Shire-horse ploughing-match furrow-grade classifier (ReLU MLP on furrow depth, crown "
    "height, width, straightness, ins-and-outs and finish, 6 grades, cross-entropy with label "
    "smoothing 0.1, AdamW with the trunk at a tenth of the head's lr). Trained for 100 steps "
    "on one society's grading, then fine-tuned on another society's grade scheme: at step 100 "
    "the head is freshly initialised and its Adam state cleared, the loss starts high again "
    "and falls as the new head learns on the trained trunk. Healthy control that looks "
    "alarming.",
)
def h539_shire_horse_new_head_finetune(ctx):
    gen = seeded(53912)
    model = _Net(6, 64, 6, nn.ReLU)
    opt = torch.optim.AdamW(
        [
            {"params": list(model.fc1.parameters()) + list(model.fc2.parameters()), "lr": 3e-4},
            {"params": model.head.parameters(), "lr": 3e-3},
        ],
        weight_decay=1e-2,
    )
    remap = torch.tensor([3, 5, 0, 4, 1, 2])  # the second society's grade for each first one

    def before(step):
        if step == 100:
            model.head.reset_parameters()
            for p in model.head.parameters():
                opt.state.pop(p, None)

    def alter(step, x, y):
        return x, (remap[y] if step >= 100 else y)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 6, 6, 539120),
        220,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        before=before,
        alter=alter,
    )
    pre = _mean(losses[90:100])
    ctx.check("first phase trained", pre < 0.6 * _mean(losses[:10]))
    ctx.check("loss at step 100 over 2x the pre-switch mean", losses[100] > 2 * pre)
    ctx.check(
        "new head learns: last 10 under 0.6x step 100", _mean(losses[-10:]) < 0.6 * losses[100]
    )
    ctx.check("finite", _finite(losses))


# -- 13. control: riving-froe Huber regressor, ASGD, accumulation, plateau schedule ------------


@scenario(
    family="riving_froe_oak_split_quality_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Riving-froe oak split-quality regressor (SiLU MLP on log diameter, ray angle, moisture, "
    "knot count, froe lever length and billet length, Huber, ASGD lr 0.05, gradient "
    "accumulation 2, clipping at 1.0, ReduceLROnPlateau on the running loss, noisy targets). "
    "Healthy control.",
)
def h539_riving_froe_asgd_plateau(ctx):
    gen = seeded(53913)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=50)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    losses = []
    batches = _readings(gen, 32, 6, 539130, noise=0.3)
    for step in range(200):
        loss = 0.0
        for _ in range(2):
            x, y = next(batches)
            micro = F.huber_loss(model(x), y)
            (micro / 2).backward()
            loss = loss + micro.detach() / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 10 == 9:
            plateau.step(_mean(losses[-10:]))
    ctx.check("loss fell", _fell(losses, ratio=0.8))
    ctx.check("finite", _finite(losses))
