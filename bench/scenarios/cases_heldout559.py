"""Held-out set 559 (``h559_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: maple-sap brix regressor fed a refractometer in raw counts under fp16 autocast
(amp_overflow, AdamW); oyster-bed salinity regressor whose hand-written weight decay has its sign flipped
(loss_divergence, Adagrad); cobbler's-last heel-pitch regressor with MultiStepLR gamma typed 10
(sharpness_above_limit, plain SGD); bell-foundry alloy regressor with the alloy embedding's group
lr typed 1e-9 (update_ratio_out_of_range, RMSprop); ice-screw hold regressor fed one shard in
newtons x 1000 (data_outlier, NAdam); kayak-roll BCE classifier with a one-step loss weight of
1000 (gradient_spike, SGD Nesterov); chimney-draught regressor taking sqrt of a negative
temperature difference (nonfinite, Adamax); dry-stone-wall 12-layer ReLU regressor with init gain
typed 2.2 (exploding_gradients, SGD momentum); tea-withering grade classifier with temperature
typed 1e-3 (softmax_collapse, RAdam); hop-kiln moisture classifier with fc2 biases at -4
(loss_of_plasticity, Adam).
Controls: snow-crystal habit affine-coupling flow by maximum likelihood (Adam, warm-up,
clipping); darts checkout classifier whose batch size is doubled twice in place of decaying the
rate (gradient norm drops at each change, alarming-looking, SGD momentum, label smoothing);
barge tow-rope tension Huber regressor (ASGD, ReduceLROnPlateau, accumulation 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    digit_batches,
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


# -- 1. amp overflow: refractometer read in raw counts under fp16 autocast ------------------------


@scenario(
    family="sugarhouse_maple_sap_brix_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=85,
    onset=85,
    heldout=True,
    note="Sugarhouse maple-sap brix regressor (GELU MLP on refractometer, sap temperature, "
    "flow rate, tap age, night frost and day high, MSE, AdamW, fp16 autocast + GradScaler). From "
    "step 85 a swapped refractometer reports its raw ADC counts (about 2e5) and the column is not "
    "standardised: fc1 runs in fp16 under autocast, its output overflows 65504 to inf, the loss "
    "is non-finite at step 85 (the same batch is finite in float32).",
)
def h559_maple_sap_refractometer_counts(ctx):
    gen = seeded(5591)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    losses, fc1_bad = [], []
    batches = _readings(gen, 64, 6, 55910)
    bad_x = None
    for step in range(130):
        x, y = next(batches)
        if step >= 85:
            x = x.clone()
            x[:, 0] = 2.0e5 + 2.0e4 * x[:, 0]
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
    ctx.check("inputs beyond fp16's range", bad_x is not None and float(bad_x.abs().max()) > 65504)
    ctx.check("loss first non-finite at step 85", first_bad == 85)
    ctx.check("fc1's fp16 output non-finite at step 85", len(fc1_bad) > 85 and fc1_bad[85])
    ctx.check("fc1 finite before step 85", not any(fc1_bad[:85]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 85", _mean(losses[75:85]) < 0.7 * _mean(losses[:10]))


# -- 2. loss divergence: hand-written decoupled weight decay with its sign flipped --------------


@scenario(
    family="oyster_bed_salinity_decay_sign_adagrad_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Oyster-bed salinity regressor (ReLU MLP on tide height, river discharge, rainfall, "
    "water temperature, wind and hour, MSE, Adagrad). Decoupled weight decay is applied by hand "
    "after each step as p.mul_(1 + lr * wd) (a sign slip for 1 - lr * wd): the net fits first, "
    "then the weights grow a little every step while Adagrad's shrinking steps can no longer "
    "pull them back, and the loss climbs slowly and steadily, with no jump, to several times "
    "its best.",
)
def h559_oyster_bed_decay_sign_slip(ctx):
    gen = seeded(5592)
    model = _Net(6, hidden=48)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    w0 = float(_flat(model).norm())
    wd = 0.15

    def after(step, loss):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "weight" in n:
                    p.mul_(1 + opt.param_groups[0]["lr"] * wd)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 55920), 240, F.mse_loss, after=after)
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    jumps = [losses[i] / _mean(losses[i - 10 : i]) for i in range(10, len(losses))]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("weights over 2x their init norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 3x its best", smooth[-1] > 3 * best)
    ctx.check("best reached before the last third", smooth.index(best) < 2 * len(smooth) // 3)
    ctx.check("no jump: no step over 5x the previous 10 steps' mean", max(jumps) < 5.0)


# -- 3. sharpness above limit: MultiStepLR gamma typed 10 for 0.1 -------------------------------


@scenario(
    family="cobblers_last_heel_pitch_multistep_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=60,
    heldout=True,
    note="Cobbler's-last heel-pitch regressor (tanh MLP on foot length, instep girth, heel "
    "height, toe spring, leather stiffness and wearer mass, MSE, plain SGD). MultiStepLR's gamma "
    "is typed 10 for 0.1: at the milestone (step 60) the rate rises tenfold instead of falling, "
    "lr x top Hessian eigenvalue (power iteration in the run) goes past 2 and the loss blows up.",
)
def h559_cobblers_last_gamma_typo(ctx):
    gen = seeded(5593)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.15)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60, 120], gamma=10.0)
    batches = _readings(gen, 128, 6, 55930)
    probe = next(batches)
    crossed, before_ok = [], []

    def after(step, loss):
        if math.isfinite(loss) and loss < 1e3 and step in range(50, 80):
            eig = _top_hessian_eig(model, F.mse_loss, *probe)
            lr = opt.param_groups[0]["lr"]
            (crossed if lr * eig > 2.0 else before_ok).append(step)

    losses, _ = _loop(ctx, model, opt, batches, 140, F.mse_loss, after=after, sched=sched)
    ok = [v for v in losses if math.isfinite(v)]
    first_big = next(
        (
            i
            for i in range(60, len(losses))
            if not math.isfinite(losses[i]) or losses[i] > 20 * min(ok[:60])
        ),
        None,
    )
    ctx.check("lr x sharpness under 2 before the milestone", 55 in before_ok)
    ctx.check("lr x sharpness past 2 after the milestone", bool(crossed) and crossed[0] >= 59)
    ctx.check("loss blows up after step 60", first_big is not None and first_big >= 60)
    ctx.check("trained first", _mean(ok[50:60]) < 0.7 * _mean(ok[:5]))


# -- 4. update ratio: the alloy embedding's param-group lr typed 1e-9 -----------------------------


class _BellNet(nn.Module):
    """Bell partial-tuning regressor: alloy embedding + casting readings through a SiLU MLP."""

    def __init__(self, d_in, alloys=8, emb=8, hidden=48):
        super().__init__()
        self.alloy = nn.Embedding(alloys, emb)
        self.fc1 = nn.Linear(d_in + emb, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        a = self.alloy(x[:, 0].long())
        h = torch.cat([a, x[:, 1:]], 1)
        return self.head(F.silu(self.fc2(F.silu(self.fc1(h))))).squeeze(-1)


def _bell_batches(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    shift = 1.5 * torch.randn(8, generator=g)
    base = _readings(gen, batch, 5, seed)
    while True:
        x, y = next(base)
        a = torch.randint(0, 8, (batch,), generator=gen)
        yield torch.cat([a[:, None].float(), x], 1), y + shift[a]


@scenario(
    family="bell_foundry_alloy_embed_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("alloy",),
    diverges=None,
    heldout=True,
    note="Bell-foundry hum-partial regressor (alloy embedding + SiLU MLP on wall thickness, "
    "mould temperature, pour time, cooling time and lip diameter, MSE, RMSprop, param groups). "
    "The alloy embedding's group lr is typed 1e-9 for 1e-3 in the config: its updates are about "
    "1e-9 of its weights, it never moves, and the alloy-dependent offset is never learnt while "
    "the rest of the net trains normally.",
)
def h559_bell_foundry_alloy_group_lr(ctx):
    gen = seeded(5594)
    model = _BellNet(5)
    rest = [p for n, p in model.named_parameters() if not n.startswith("alloy")]
    opt = torch.optim.RMSprop(
        [{"params": model.alloy.parameters(), "lr": 1e-9}, {"params": rest, "lr": 1e-3}]
    )
    a0, r0 = _flat(model.alloy), _flat(model.fc1)
    losses, _ = _loop(ctx, model, opt, _bell_batches(gen, 64, 55940), 200, F.mse_loss)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("alloy embedding moved under 1e-6", _rel(_flat(model.alloy), a0) < 1e-6)
    ctx.check("fc1 moved over 1e-2", _rel(_flat(model.fc1), r0) > 1e-2)
    ctx.check("rest of the net trained", _fell(losses))


# -- 5. data outlier: one shard of pull-out loads in millinewtons -------------------------------


@scenario(
    family="ice_climbing_screw_hold_silu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Ice-climbing screw-hold regressor (SiLU MLP on ice temperature, screw length, "
    "placement angle, bubble density, sun exposure and age of the ice, pull-out load as target, "
    "MSE, NAdam, clipping 1.0). One shard, read at step 110, came from a test rig logging the "
    "load in millinewtons instead of kilonewtons-standardised: that batch's targets are x1000, "
    "the loss and gradient jump at that step, and the run recovers.",
)
def h559_ice_screw_millinewton_shard(ctx):
    gen = seeded(5595)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 110 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 55950), 200, F.mse_loss, alter=alter, clip=1.0
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss at 110 over 100x its neighbours", losses[110] > 100 * _median(losses[95:110]))
    ctx.check("gradient at 110 over 10x its neighbours", norms[110] > 10 * _median(norms[95:110]))
    ctx.check("recovers", _mean(losses[-10:]) < 2 * _mean(losses[100:110]))
    ctx.check("trained", _fell(losses))


# -- 6. gradient spike: a stage-weight bug multiplies one step's loss by 1000 --------------------


class _KayakNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


def _roll_batches(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        p = torch.sigmoid(2.0 * x @ w / math.sqrt(d_in) + 0.5 * torch.sin(2 * x[:, 0]))
        yield x, (torch.rand(batch, generator=gen) < p).float()


@scenario(
    family="kayak_roll_success_gelu_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Kayak-roll success classifier (GELU MLP on hip-snap timing, paddle angle, head "
    "position, boat width, water temperature, paddler mass and wave height, BCE with logits, SGD "
    "Nesterov, clipping 5.0). A curriculum stage switch at step 130 reads the next stage's loss "
    "weight before it is normalised (1000 instead of 1): that one step's backpropagated loss is "
    "1000x, the gradient bursts, the logged loss is ordinary, and training continues.",
)
def h559_kayak_roll_stage_weight(ctx):
    gen = seeded(5596)
    model = _KayakNet(7)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * 1000.0 if step == 130 else loss

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _roll_batches(gen, 64, 7, 55960),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=5.0,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check(
        "gradient at 130 over 100x its neighbours", norms[130] > 100 * _median(norms[115:130])
    )
    ctx.check("logged loss at 130 ordinary", losses[130] < 2 * _median(losses[115:130]))
    ctx.check("trained", _mean(losses[-10:]) < 0.85 * _mean(losses[:10]))


# -- 7. nonfinite: sqrt of a negative temperature difference --------------------------------------


class _Draught(nn.Module):
    """Stack-effect feature sqrt(T_flue - T_outside) with no clamp."""

    def forward(self, x):
        return torch.cat([torch.sqrt(x[:, :1] - x[:, 1:2]), x[:, 2:]], 1)


class _ChimneyNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.draught = _Draught()
        self.fc1 = nn.Linear(d_in - 1, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.draught(x)
        return self.head(F.relu(self.fc2(F.relu(self.fc1(h))))).squeeze(-1)


@scenario(
    family="chimney_sweep_draught_sqrt_relu_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("draught",),
    diverges=75,
    onset=75,
    heldout=True,
    note="Chimney-sweep draught regressor (stack-effect feature sqrt(T_flue - T_outside), then a "
    "ReLU MLP with flue height, liner diameter, soot depth and wind, MSE, Adamax). The feature "
    "module has no clamp; at step 75 one house's flue is cold (a fire not yet lit) while a sunny "
    "wall reads warmer outside, the difference is negative, sqrt gives NaN and the loss is NaN at "
    "step 75.",
)
def h559_chimney_cold_flue_sqrt(ctx):
    gen = seeded(5597)
    model = _ChimneyNet(6)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    base = _readings(gen, 64, 4, 55970)

    def batches():
        while True:
            x, y = next(base)
            t_flue = 3.0 + 0.5 * torch.rand(len(y), generator=gen)
            t_out = 0.5 * torch.rand(len(y), generator=gen)
            yield (
                torch.cat([t_flue[:, None], t_out[:, None], x], 1),
                y + 0.3 * torch.sqrt(t_flue - t_out),
            )

    seen = {}
    model.draught.register_forward_hook(
        lambda m, i, o: seen.__setitem__("bad", bool(torch.isnan(o).any()))
    )

    def alter(step, x, y):
        if step == 75:
            x = x.clone()
            x[3, 0], x[3, 1] = 0.2, 1.1
        return x, y

    flags = []

    def after(step, loss):
        flags.append(seen["bad"])

    losses, _ = _loop(ctx, model, opt, batches(), 120, F.mse_loss, alter=alter, after=after)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first NaN at step 75", first_bad == 75)
    ctx.check("draught output NaN at step 75", len(flags) > 75 and flags[75])
    ctx.check("draught finite before step 75", not any(flags[:75]))
    ctx.check("trained before step 75", _mean(losses[65:75]) < 0.7 * _mean(losses[:10]))


# -- 8. exploding gradients: 12-layer ReLU regressor with init gain typed 2.2 ------------------


class _WallNet(nn.Module):
    def __init__(self, d_in, hidden=32, depth=12, gain=2.2):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.body = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, 1)
        for m in self.body:
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.body:
            x = F.relu(m(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="dry_stone_wall_batter_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("body.0",),
    diverges="auto",
    heldout=True,
    note="Dry-stone-wall batter regressor (12-layer ReLU MLP on stone size mix, wall height, "
    "hearting fill, through-stone spacing, frost days and slope, predicting bulge, MSE, SGD "
    "momentum 0.9). The orthogonal init gain is typed 2.2 for sqrt(2): each layer amplifies the "
    "backward signal, body.0's output gradient is tens of times the last layer's, and the loss "
    "blows up within the first steps.",
)
def h559_dry_stone_wall_gain_typo(ctx):
    gen = seeded(5598)
    model = _WallNet(6)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    outs = {}

    def keep(name):
        def hook(m, i, o):
            o.retain_grad()
            outs[name] = o

        return hook

    for name in ("body.0", "body.11"):
        model.get_submodule(name).register_forward_hook(keep(name))
    ratios = []

    def after(step, loss):
        g0, g11 = outs["body.0"].grad, outs["body.11"].grad
        if g0 is not None and g11 is not None and float(g11.norm()) > 0:
            ratios.append(float(g0.norm() / g11.norm()))

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 55980), 80, F.mse_loss, after=after)
    ok = [v for v in losses if math.isfinite(v)]
    ctx.check(
        "body.0 output gradient over 20x the last layer's at step 0", ratios[:1] and ratios[0] > 20
    )
    ctx.check(
        "loss blows up (over 100x its start or non-finite)",
        len(ok) < len(losses) or max(ok) > 100 * losses[0],
    )


# -- 9. softmax collapse: temperature typed 1e-3 -----------------------------------------------


class _TeaNet(nn.Module):
    def __init__(self, d_in, classes, hidden=48, temperature=1e-3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))) / self.temperature


@scenario(
    family="tea_leaf_withering_grade_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tea-leaf withering grade classifier (GELU MLP on leaf moisture, trough airflow, "
    "humidity, hours withered, leaf thickness, plucking standard and colour reading, 6 grades, "
    "cross-entropy, RAdam). The logit temperature is typed 1e-3 for 1.0: the logits are 1000x, "
    "float32 softmax rounds many rows' target probability to exactly 1.0 (and others' to 0).",
)
def h559_tea_withering_temperature_typo(ctx):
    gen = seeded(5599)
    model = _TeaNet(7, 6)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    batches = _grades(gen, 64, 7, 6, 55990)
    fracs = []
    last = {}

    def alter(step, x, y):
        last["xy"] = (x, y)
        return x, y

    def after(step, loss):
        with torch.no_grad():
            x, y = last["xy"]
            fracs.append(collapsed_fraction(model(x), y))

    losses, _ = _loop(
        ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, alter=alter, after=after
    )
    ctx.check("over 40% of rows' target probability exactly 1.0 late", _mean(fracs[-20:]) > 0.4)
    ctx.check("max |logit| over 100", float(model(last["xy"][0]).detach().abs().max()) > 100)


# -- 10. loss of plasticity: fc2 biases initialised at -4 ---------------------------------------


class _HopNet(nn.Module):
    def __init__(self, d_in, classes, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        nn.init.constant_(self.fc2.bias, -4.0)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="hop_kiln_moisture_dead_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Hop-kiln moisture classifier (ReLU MLP on kiln air temperature, bed depth, airflow, "
    "hours on the floor, cone colour and bract crackle, 4 dryness classes, cross-entropy, Adam). "
    "fc2's biases are initialised with nn.init.constant_(-4.0), copied from a gating layer's "
    "init: most of fc2's ReLUs are never positive, get no gradient and stay dead all run, and the "
    "loss stalls well above what the net could reach.",
)
def h559_hop_kiln_dead_fc2(ctx):
    gen = seeded(55100)
    model = _HopNet(6, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _grades(gen, 64, 6, 4, 551000, spread=1.5)
    b0 = _flat(model.fc2)
    dead = []
    model.act2.register_forward_hook(lambda m, i, o: dead.append(dead_fraction(o.detach())))
    losses, _ = _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    ctx.check("over 80% of fc2's units dead at the start", dead[0] > 0.8)
    ctx.check("over 80% of fc2's units dead at the end", dead[-1] > 0.8)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fc2 moved under 5%", _rel(_flat(model.fc2), b0) < 0.05)


# -- control 1: snow-crystal habit affine-coupling flow by maximum likelihood --------------------


class _Coupling(nn.Module):
    """RealNVP affine coupling: x_b -> x_b * exp(s(x_a)) + t(x_a), s bounded by tanh."""

    def __init__(self, dim, flip, hidden=32):
        super().__init__()
        self.flip = flip
        half = dim // 2
        self.net = nn.Sequential(
            nn.Linear(half, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.scale = nn.Linear(hidden, dim - half)
        self.shift = nn.Linear(hidden, dim - half)
        nn.init.zeros_(self.scale.weight)
        nn.init.zeros_(self.scale.bias)

    def forward(self, x):
        half = x.shape[1] // 2
        a, b = (x[:, half:], x[:, :half]) if self.flip else (x[:, :half], x[:, half:])
        h = self.net(a)
        s = torch.tanh(self.scale(h))
        b = b * torch.exp(s) + self.shift(h)
        out = torch.cat([b, a], 1) if self.flip else torch.cat([a, b], 1)
        return out, s.sum(1)


class _SnowFlow(nn.Module):
    def __init__(self, dim=4, layers=6):
        super().__init__()
        self.couplings = nn.ModuleList(_Coupling(dim, i % 2 == 1) for i in range(layers))

    def forward(self, x):
        logdet = torch.zeros(x.shape[0])
        for c in self.couplings:
            x, ld = c(x)
            logdet = logdet + ld
        return x, logdet


def _flow_nll(model, x):
    z, logdet = model(x)
    logp = -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
    return -(logp + logdet).mean()


def _crystal_batches(gen, batch):
    """Habit measurements: temperature and supersaturation on a bent manifold, plus two
    correlated growth readings."""
    while True:
        t = torch.rand(batch, generator=gen) * 2 * math.pi
        r = 2.0 + 0.2 * torch.randn(batch, generator=gen)
        a = r * torch.cos(t)
        b = r * torch.sin(t)
        c = 0.5 * a * b / 2 + 0.2 * torch.randn(batch, generator=gen)
        d = torch.sin(a) + 0.2 * torch.randn(batch, generator=gen)
        yield torch.stack([a, b, c, d], 1)


@scenario(
    family="snow_crystal_habit_affine_coupling_flow",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Snow-crystal habit density model: a RealNVP-style normalising flow of 6 affine "
    "coupling layers (tanh-bounded log-scales, SiLU conditioners) over air temperature, "
    "supersaturation, arm growth and plate growth readings, trained by maximum likelihood "
    "(negative log-likelihood under a standard normal base plus the log-determinant), Adam with "
    "a 20-step linear warm-up, clipping 5.0. An ordinary run: the NLL falls.",
)
def h559_snow_crystal_flow_control(ctx):
    gen = seeded(55110)
    model = _SnowFlow()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    ctx.attach(model, opt)
    batches = _crystal_batches(gen, 128)
    losses = []
    for _ in range(220):
        x = next(batches)
        loss = _flow_nll(model, x)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("NLL fell by over 0.5 nats", _mean(losses[-20:]) < _mean(losses[:10]) - 0.5)


# -- control 2: batch size doubled twice in place of decaying the rate --------------------------


@scenario(
    family="darts_checkout_route_batch_ramp_relu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Darts checkout-route classifier (ReLU MLP on 8x8 dartboard-hit grids, the sklearn "
    "digits standing in, 10 routes, cross-entropy with label smoothing 0.1, SGD momentum 0.9 at a "
    "constant rate). Following 'don't decay the learning rate, increase the batch size', the "
    "batch is doubled at step 100 (32 to 64) and at step 200 (64 to 128): the gradient norm drops "
    "at each change, which looks alarming on a dashboard, but the run is healthy and the loss "
    "keeps falling.",
)
def h559_darts_batch_doubling_control(ctx):
    gen = seeded(55120)
    model = _Net(64, hidden=64, out=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    streams = {32: digit_batches(gen, 32), 64: digit_batches(gen, 64), 128: digit_batches(gen, 128)}
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(300):
        batch = 32 if step < 100 else 64 if step < 200 else 128
        x, y = next(streams[batch])
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("trained", _fell(losses, ratio=0.5))
    ctx.check(
        "gradient norm drops at step 100",
        _median(norms[100:130]) < 0.9 * _median(norms[70:100]),
    )
    ctx.check(
        "gradient norm drops at step 200",
        _median(norms[200:230]) < 0.9 * _median(norms[170:200]),
    )


# -- control 3: barge tow-rope tension Huber regressor ------------------------------------------


@scenario(
    family="barge_tow_rope_tension_asgd_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Barge tow-rope tension regressor (SiLU MLP on towing speed, current, barge draught, "
    "rope length, wind and bend radius, Huber loss, ASGD, ReduceLROnPlateau, gradient "
    "accumulation 2, clipping 1.0, noisy load-cell targets). An ordinary run.",
)
def h559_barge_tow_rope_control(ctx):
    gen = seeded(55130)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _readings(gen, 32, 6, 551300, noise=0.2)
    ctx.attach(model, opt)
    losses = []
    for _ in range(180):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5) / 2
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(float(total))
        losses.append(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("trained", _fell(losses))
