"""Held-out set 483 (``h483_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a lungo-drom rope-line run-time regressor whose validation hook swaps the EMA weights in
and never restores them (a loss spike it recovers from, NAdam), a storm-petrel pattering net
taking log of a wind speed that reads 0 in a calm (Adagrad), an ogham-stone notch-depth deep ReLU
MLP initialised with std 1.9/sqrt(fan_in) for sqrt(2/fan_in) (exploding gradients, SGD), a skerry
seal haul-out regressor fed one shard with tide height in millimetres (SGD momentum, clipped), a
junk-rig batten-trim regressor whose fc1 group lr is typed 1e-9 (RMSprop), a muntin glazing-bar
classifier whose monotonicity projection clamps fc2 to max=0 for min=0 (dead ReLUs, Adamax), a
sad-iron scorch regressor under a StepLR with gamma typed 10 for 0.1 (full-batch SGD), a
blade-shearing fleece-grade classifier whose class weights are raw counts on one epoch-end step
(SGD Nesterov, clipped), a pizzica tambourine-step classifier with a softmax temperature typed
0.01 for 1.0 (Adam) and a gobelin warp-tension regressor whose hand-written L2 penalty has its
sign flipped (AdamW).

Controls: a tessellated-pavement salt-weathering variational GRU (a Gaussian latent per step, KL
per step with warm-up, Adam, clipping); a box-iron pleat-crease regressor with dropout 0.3 on its
inputs and Adam decayed by 0.5 every 50 steps; a laundress starch-stiffness Conv1d classifier
(AdamW with two param groups, ReduceLROnPlateau, label smoothing, accumulation 2, clipping).
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


def _wnorm(module: nn.Module) -> float:
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in module.parameters()))


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
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss, y)`` returns the loss actually backpropagated, ``after(step)``
    runs after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            out = model(x)
            loss = loss_fn(out, y)
            total = backprop(step, loss, out, y) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(shown)
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
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
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU, dropout=0.0):
        super().__init__()
        self.drop_in = nn.Dropout(dropout)
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(self.drop_in(x)))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- 1. loss spike: the validation hook swaps the EMA weights in and never swaps them back -------------

LUNGO_STEP = 120


@scenario(
    family="lungo_drom_rope_line_run_time_silu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=LUNGO_STEP,
    note="Lungo-drom rope-line run-time regressor (SiLU MLP on runner, rope and street features, "
    "MSE, NAdam with an EMA of the weights kept at decay 0.995). The mid-run validation hook at "
    "step 120 loads the EMA weights into the model and its restore line was deleted in a "
    "refactor: training resumes from the lagging EMA weights once, the loss jumps and the run "
    "recovers within a few dozen steps.",
)
def h483_lungo_drom_ema_swap(ctx) -> None:
    gen = seeded(4831)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ema = [p.detach().clone() for p in model.parameters()]

    def before(step):
        if step == LUNGO_STEP:
            with torch.no_grad():
                for p, e in zip(model.parameters(), ema, strict=True):
                    p.copy_(e)  # the validation swap; the restore was lost

    def after(step):
        with torch.no_grad():
            for p, e in zip(model.parameters(), ema, strict=True):
                e.mul_(0.995).add_(p.detach(), alpha=0.005)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 4831), 240, F.mse_loss, before=before, after=after
    )
    pre = _mean(losses[LUNGO_STEP - 20 : LUNGO_STEP])
    ctx.check("trained before the swap (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("the loss at the swap over 3x the 20 steps before", losses[LUNGO_STEP] > 3 * pre)
    ctx.check(
        "recovered: the last 20 steps under 1.5x the pre-swap mean", _mean(losses[-20:]) < 1.5 * pre
    )
    ctx.check("no NaN", _finite(losses))


# -- 2. nonfinite: log of a wind speed that reads 0 in a calm ----------------------------------------

PETREL_STEP = 90


class _LogFeature(nn.Module):
    """log of the first column (wind speed, m/s) with no floor, the rest passed through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _PetrelNet(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.log_wind = _LogFeature()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)  # mean and log-variance of the foraging bout length
        self.last_min_feature = 0.0

    def forward(self, x):
        f = self.log_wind(x)
        self.last_min_feature = float(f.detach().min())
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(f))))
        return self.head(h)


@scenario(
    family="storm_petrel_pattering_log_windspeed_gaussian_nll_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("log_wind",),
    diverges=PETREL_STEP + 1,
    heldout=True,
    onset=PETREL_STEP,
    note="Storm-petrel pattering bout-length net (tanh MLP on log wind speed, swell and light, "
    "Gaussian NLL of the bout length, Adagrad). The log of the anemometer reading has no floor; "
    "at step 90 a calm is logged as exactly 0 m/s, log 0 = -inf enters fc1 (tanh keeps that "
    "step's loss finite, its gradient is NaN) and the loss is NaN from step 91.",
)
def h483_storm_petrel_log_calm(ctx) -> None:
    gen = seeded(4832)
    model = _PetrelNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    w = torch.randn(8, generator=torch.Generator().manual_seed(4832))

    def data():
        while True:
            wind = torch.exp(0.5 * torch.randn(64, 1, generator=gen) + 1.5)
            rest = torch.randn(64, 7, generator=gen)
            x = torch.cat([wind, rest], 1)
            mu = torch.tanh(0.8 * torch.log(wind[:, 0]) - 1.2) + 0.3 * rest @ w[1:] / 3
            yield x, mu + 0.2 * torch.randn(64, generator=gen)

    def alter(step, x, y):
        if step == PETREL_STEP:
            x = x.clone()
            x[5, 0] = 0.0  # a calm, logged as 0 m/s
        return x, y

    mins = []

    def after(step):
        mins.append(model.last_min_feature)

    def nll(out, y):
        mean, logvar = out[:, 0], out[:, 1]
        return (0.5 * (logvar + (y - mean) ** 2 / logvar.exp())).mean()

    losses, norms = _loop(ctx, model, opt, data(), 200, nll, alter=alter, after=after)
    ctx.check(
        "all finite before step 90", _finite(losses[:PETREL_STEP]) and _finite(norms[:PETREL_STEP])
    )
    ctx.check(
        "trained before the calm",
        _mean(losses[PETREL_STEP - 10 : PETREL_STEP]) < _mean(losses[:10]) - 0.2,
    )
    ctx.check(
        "the gradient is non-finite at step 90",
        len(norms) > PETREL_STEP and not math.isfinite(norms[PETREL_STEP]),
    )
    ctx.check(
        "the loss is NaN at step 91",
        len(losses) > PETREL_STEP + 1 and math.isnan(losses[PETREL_STEP + 1]),
    )
    ctx.check(
        "the log feature is -inf at step 90",
        len(mins) > PETREL_STEP and mins[PETREL_STEP] == -math.inf,
    )


# -- 3. exploding gradients: a deep ReLU MLP initialised with std 1.9/sqrt(fan_in) ---------------------


class _DeepNet(nn.Module):
    """Ten ReLU layers; ``dz`` holds |dL/dz| at the first and last layer's pre-activation."""

    def __init__(self, d_in=12, width=48, depth=10, std_num=1.4142135623730951):
        super().__init__()
        self.dz = {}
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=std_num / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=0.01)  # a small head: the output starts near 0
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            z = layer(x)
            if z.requires_grad and i in (0, len(self.layers) - 1):
                z.register_hook(lambda g, i=i: self.dz.__setitem__(i, float(g.norm())))
            x = F.relu(z)
        return self.head(x).squeeze(-1)


@scenario(
    family="ogham_stone_notch_depth_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges="auto",
    heldout=True,
    note="Ogham-stone notch-depth regressor (ten ReLU layers written by hand on weathering, "
    "lichen and stone-hardness features, MSE, plain SGD). The hand-written He init is typed "
    "std = 1.9/sqrt(fan_in) for sqrt(2/fan_in): each layer multiplies the signal by about 1.34, the "
    "gradient grows through depth back to the first layers, and the loss blows up.",
)
def h483_ogham_init_gain(ctx) -> None:
    gen = seeded(4833)
    model = _DeepNet(std_num=1.9)
    torch.manual_seed(48330)
    ref = _DeepNet(std_num=math.sqrt(2.0))
    data = _readings(gen, 64, 12, 4833)
    x0, y0 = next(data)
    for net in (model, ref):
        F.mse_loss(net(x0), y0).backward()
    first, last = model.dz[0], model.dz[9]
    ref_first, ref_last = ref.dz[0], ref.dz[9]
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3)
    losses, _ = _loop(ctx, model, opt, data, 150, F.mse_loss)
    finite = [v for v in losses if math.isfinite(v)]
    ctx.check("dL/dz at layers.0 over 8x that at layers.9", first > 8 * last)
    ctx.check("under the He init it grows under 3x", ref_first < 3 * ref_last)
    ctx.check("the first loss is ordinary (under 10)", losses[0] < 10)
    ctx.check(
        "the loss blows up (non-finite or over 1e4x its start)",
        len(finite) < len(losses) or max(finite) > 1e4 * losses[0],
    )


# -- 4. data outlier: one shard with the tide height in millimetres ---------------------------------

SKERRY_STEP = 140


@scenario(
    family="skerry_seal_haulout_tide_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SKERRY_STEP,
    note="Skerry seal haul-out count regressor (ReLU MLP on tide height, swell, wind and time "
    "features, MSE, SGD momentum 0.9, clipping at 1.0). One shard, from a tide gauge that logs "
    "millimetres, was never converted to metres: the batch at step 140 has its tide column about "
    "1000x too large; the loss and gradient jump for that batch and the run recovers.",
)
def h483_skerry_tide_millimetres(ctx) -> None:
    gen = seeded(4834)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xmax = []

    def alter(step, x, y):
        if step == SKERRY_STEP:
            x = x.clone()
            x[:, 0] = 1000.0 * (x[:, 0] + 2.5)  # the raw gauge: millimetres above chart datum
        xmax.append(float(x.abs().max()))
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 4834), 260, F.mse_loss, alter=alter, clip=1.0
    )
    pre = _mean(losses[SKERRY_STEP - 20 : SKERRY_STEP])
    ctx.check(
        "inputs over 100x their usual max at step 140", xmax[SKERRY_STEP] > 100 * _median(xmax)
    )
    ctx.check("the loss at step 140 over 10x the 20 steps before", losses[SKERRY_STEP] > 10 * pre)
    ctx.check("gradient at step 140 over 20x the median", norms[SKERRY_STEP] > 20 * _median(norms))
    ctx.check(
        "recovered: the last 20 steps under 2x the pre-shard mean", _mean(losses[-20:]) < 2 * pre
    )
    ctx.check("no NaN", _finite(losses))


# -- 5. update ratio: fc1's param group lr typed 1e-9 -----------------------------------------------


@scenario(
    family="junk_rig_batten_sail_trim_two_group_tanh_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Junk-rig batten-sail trim regressor (tanh MLP on wind angle, sheet lengths and batten "
    "loads, MSE, RMSprop with two param groups so the input layer can be fine-tuned gently). "
    "The input layer's group lr is typed 1e-9 for 1e-4: fc1's updates are about 1e-7 of its "
    "weights and it stays frozen while fc2 and the head train.",
)
def h483_junk_rig_group_lr(ctx) -> None:
    gen = seeded(4835)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": [*model.fc2.parameters(), *model.head.parameters()], "lr": 1e-3},
        ],
        alpha=0.99,
    )
    start = {
        n: m.weight.detach().clone()
        for n, m in (("fc1", model.fc1), ("fc2", model.fc2), ("head", model.head))
    }
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 4835), 200, F.mse_loss)
    moved = {
        n: float((m.weight.detach() - start[n]).norm() / start[n].norm())
        for n, m in (("fc1", model.fc1), ("fc2", model.fc2), ("head", model.head))
    }
    ctx.check("fc1 moved under 1e-5 of its norm", moved["fc1"] < 1e-5)
    ctx.check("fc2 moved over 5% of its norm", moved["fc2"] > 0.05)
    ctx.check("the head moved over 5% of its norm", moved["head"] > 0.05)
    ctx.check("no NaN", _finite(losses))


# -- 6. loss of plasticity: a monotonicity projection clamps fc2 to max=0 for min=0 -------------------


@scenario(
    family="muntin_glazing_bar_joint_dead_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Muntin glazing-bar joint classifier (ReLU MLP on rebate depth, putty, moisture and "
    "timber features, cross-entropy over 6 joint grades, Adamax). fc2 is meant to be monotone "
    "(non-negative weights), projected after each step, but the clamp is typed clamp_(max=0) for "
    "clamp_(min=0): with non-negative ReLU inputs every fc2 unit is pushed below zero, dies and "
    "never comes back, and the loss stays far above the intended run's.",
)
def h483_muntin_clamp_sign(ctx) -> None:
    seeded(4836)

    def run(net, bound, attach):
        opt = torch.optim.Adamax(net.parameters(), lr=2e-3)

        def project(step=None):
            with torch.no_grad():
                net.fc2.weight.clamp_(**bound)

        project()
        g = torch.Generator().manual_seed(48360)
        losses, _ = _loop(
            ctx,
            net,
            opt,
            _grades(g, 64, 12, 6, 4836, 1.2),
            200,
            F.cross_entropy,
            classifier=True,
            after=project,
            attach=attach,
        )
        x, _ = next(_grades(torch.Generator().manual_seed(1), 512, 12, 6, 4836, 1.2))
        with torch.no_grad():
            dead = dead_fraction(net.fc2(net.act1(net.fc1(x))))
        return losses, dead

    model = _Net(12, 48, 6)
    torch.manual_seed(48361)
    ref_losses, ref_dead = run(_Net(12, 48, 6), {"min": 0.0}, False)
    losses, dead = run(model, {"max": 0.0}, True)
    ctx.check("over 60% of fc2's units dead", dead > 0.6)
    ctx.check("under 20% dead with clamp_(min=0)", ref_dead < 0.2)
    ctx.check(
        "the loss ends over 2x the intended run's",
        _mean(losses[-20:]) > 2 * _mean(ref_losses[-20:]),
    )
    ctx.check("no NaN", _finite(losses))


# -- 7. sharpness: a StepLR with gamma typed 10 for 0.1 ---------------------------------------------

IRON_STEP = 60


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the full-batch loss by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="sad_iron_laundry_scorch_steplr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=IRON_STEP,
    note="Sad-iron scorch-risk regressor (tanh MLP on iron temperature, dwell, fabric and damp "
    "features, MSE, full-batch SGD on 256 pressings). The StepLR meant to cut the lr 10x at "
    "step 60 is written gamma=10 for 0.1: the lr jumps from 0.05 to 0.5 at step 60, past "
    "2/sharpness (the loss starts to oscillate), and to 5.0 at step 120, where it blows up.",
)
def h483_sad_iron_steplr_gamma(ctx) -> None:
    gen = seeded(4837)
    model = _Net(8, 32, 1, act=nn.Tanh)
    x, y = next(_readings(gen, 256, 8, 4837))

    def full():
        while True:
            yield x, y

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=IRON_STEP, gamma=10.0)
    lam = {}

    def before(step):
        if step in (0, IRON_STEP):
            lam[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, full(), 150, F.mse_loss, before=before, sched=sched)
    finite = [v for v in losses if math.isfinite(v)]
    low = min(finite[:IRON_STEP])
    ctx.check("lr * sharpness under 2 at step 0", lam[0] < 2)
    ctx.check("lr * sharpness over 2 at step 60", lam.get(IRON_STEP, 0.0) > 2)
    ctx.check("trained before step 60 (under 0.7x the start)", low < 0.7 * losses[0])
    ctx.check(
        "the loss blows up after step 60 (non-finite or over 100x its lowest)",
        len(finite) < len(losses) or max(finite[IRON_STEP:]) > 100 * low,
    )


# -- 8. gradient spike: class weights left as raw counts on one epoch-end step -----------------------

SHEAR_STEP = 100


@scenario(
    family="blade_shearing_fleece_grade_class_weight_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SHEAR_STEP,
    note="Blade-shearing fleece-grade classifier (ReLU MLP on staple length, crimp, yield and "
    "cut features, class-weighted cross-entropy over 5 grades, SGD Nesterov 0.9, clipping at "
    "1.0). At the epoch end (step 100) the class weights are recomputed from the grade counts "
    "and the normalisation line is skipped: for that one step the backpropagated loss is "
    "weighted by raw counts (hundreds), the gradient bursts, clipping bounds the update and the "
    "run carries on; the logged (unweighted) loss is ordinary.",
)
def h483_blade_shearing_count_weights(ctx) -> None:
    gen = seeded(4838)
    model = _Net(12, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    freq = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1])
    counts = torch.tensor([612.0, 508.0, 401.0, 303.0, 201.0])

    def backprop(step, loss, out, y):
        w = counts if step == SHEAR_STEP else 1.0 / (5 * freq)
        return (w[y] * F.cross_entropy(out, y, reduction="none")).mean()

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 4838, 1.3),
        220,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check("gradient at step 100 over 50x the median", norms[SHEAR_STEP] > 50 * _median(norms))
    ctx.check(
        "the logged loss at step 100 ordinary (under 2x the 10 steps before)",
        losses[SHEAR_STEP] < 2 * _mean(losses[SHEAR_STEP - 10 : SHEAR_STEP]),
    )
    ctx.check("trained (loss fell)", _fell(losses))
    ctx.check("no NaN", _finite(losses))


# -- 9. softmax collapse: a temperature typed 0.01 for 1.0 ------------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="pizzica_tambourine_step_temperature_gelu_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Pizzica (tarantella) step classifier (GELU MLP on tambourine-beat and foot-sensor "
    "features, cross-entropy over 8 steps, Adam). The softmax temperature is copied from a "
    "contrastive config, 0.01 for 1.0: the head's logits are divided by 0.01 and the softmax "
    "saturates, the target probability rounds to exactly 1.0 on most rows.",
)
def h483_pizzica_temperature(ctx) -> None:
    seeded(4839)

    def run(net, attach):
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(48390)
        losses, _ = _loop(
            ctx,
            net,
            opt,
            _grades(g, 64, 12, 8, 4839, 0.5),
            200,
            F.cross_entropy,
            classifier=True,
            attach=attach,
        )
        x, y = next(_grades(torch.Generator().manual_seed(2), 512, 12, 8, 4839, 0.5))
        with torch.no_grad():
            return losses, collapsed_fraction(net(x), y)

    model = _TempNet(12, 48, 8, 0.01)
    torch.manual_seed(48391)
    _, ref = run(_TempNet(12, 48, 8, 1.0), False)
    losses, collapsed = run(model, True)
    ctx.check("over half the rows' target probability exactly 1.0", collapsed > 0.5)
    ctx.check("under 5% at temperature 1.0", ref < 0.05)
    ctx.check("no NaN", _finite(losses))


# -- 10. loss divergence: a hand-written L2 penalty with its sign flipped ----------------------------


@scenario(
    family="gobelin_tapestry_warp_tension_l2_sign_regressor",
    optimizer="AdamW",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Gobelin tapestry warp-tension regressor (SiLU MLP on warp count, weft density, bobbin "
    "and humidity features, MSE, AdamW with weight_decay 0 because an L2 penalty is added to the "
    "loss by hand). The penalty is written loss - wd * sum(p^2) for loss + wd * sum(p^2): every "
    "weight is pushed outwards, the fit degrades and the loss climbs slowly without a blow-up.",
)
def h483_gobelin_l2_sign(ctx) -> None:
    gen = seeded(48310)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    wd = 1e-2

    def backprop(step, loss, out, y):
        return loss - wd * sum((p**2).sum() for p in model.parameters())

    w0 = _wnorm(model)
    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 48310), 300, F.mse_loss, backprop=backprop
    )
    w1 = _wnorm(model)
    best = min(_mean(losses[i : i + 10]) for i in range(0, 150, 5))
    ctx.check(
        "trained first (best 10-step mean under 0.5x the start)", best < 0.5 * _mean(losses[:10])
    )
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("weights grew over 2x", w1 > 2 * w0)
    ctx.check("no NaN (a slow climb, not a blow-up)", _finite(losses))


# -- controls -----------------------------------------------------------------------------------------


class _VariationalGRU(nn.Module):
    """A VRNN: a GRU cell with a Gaussian latent per step (prior from h, posterior from x and h)."""

    def __init__(self, d_x=4, hidden=32, d_z=8):
        super().__init__()
        self.hidden = hidden
        self.prior = nn.Linear(hidden, 2 * d_z)
        self.encoder = nn.Linear(d_x + hidden, 2 * d_z)
        self.decoder = nn.Linear(d_z + hidden, d_x)
        self.cell = nn.GRUCell(d_x + d_z, hidden)

    def forward(self, x):
        b, t, _ = x.shape
        h = x.new_zeros(b, self.hidden)
        recon, kl = [], []
        for i in range(t):
            mu_p, lv_p = self.prior(h).chunk(2, -1)
            mu_q, lv_q = self.encoder(torch.cat([x[:, i], h], -1)).chunk(2, -1)
            z = mu_q + torch.randn_like(mu_q) * (0.5 * lv_q).exp()
            recon.append(self.decoder(torch.cat([z, h], -1)))
            kl.append(
                0.5 * (lv_p - lv_q + (lv_q.exp() + (mu_q - mu_p) ** 2) / lv_p.exp() - 1).sum(-1)
            )
            h = self.cell(torch.cat([x[:, i], z], -1), h)
        return torch.stack(recon, 1), torch.stack(kl, 1)


@scenario(
    family="tessellated_pavement_salt_weathering_variational_gru",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Tessellated-pavement salt-weathering VRNN (a hand-written GRU cell with a Gaussian "
    "latent per step, learnt prior from the state, KL per step summed over time with a linear "
    "warm-up of its weight over 60 steps, Gaussian reconstruction of wetting, salt and crack "
    "readings over 16 tides, Adam 3e-3, clipping at 1.0). Control.",
)
def h483_tessellated_pavement_vrnn(ctx) -> None:
    gen = seeded(48311)
    model = _VariationalGRU()

    def data():
        while True:
            t = torch.arange(16.0)
            phase = 6.28 * torch.rand(32, 1, 1, generator=gen)
            freq = 0.3 + 0.3 * torch.rand(32, 1, 1, generator=gen)
            k = torch.arange(1.0, 5.0)
            x = torch.sin(freq * k * t[None, :, None] / 2 + phase)
            yield x + 0.1 * torch.randn(32, 16, 4, generator=gen), None

    beta = {"w": 0.0}

    def before(step):
        beta["w"] = min(1.0, step / 60)

    _vrnn_last = {}

    def alter(step, x, y):
        _vrnn_last["x"] = x
        return x, y

    def forward_loss(out, _):
        recon, kl = out
        rec = 0.5 * ((recon - _vrnn_last["x"]) ** 2).sum((1, 2)).mean()
        return rec + beta["w"] * kl.sum(1).mean()

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, _ = _loop(
        ctx, model, opt, data(), 150, forward_loss, before=before, alter=alter, clip=1.0
    )
    ctx.check("trained (the last 10 under 0.7x the first 10)", _fell(losses))
    ctx.check("finite throughout", _finite(losses))


@scenario(
    family="box_iron_pleat_crease_input_dropout_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Box-iron pleat-crease sharpness regressor (ReLU MLP on slug temperature, dwell, "
    "fabric and damp features with dropout 0.3 on the inputs, MSE, Adam 3e-3 decayed by 0.5 "
    "every 50 steps with StepLR). Control.",
)
def h483_box_iron_dropout_steplr(ctx) -> None:
    gen = seeded(48312)
    model = _Net(10, 64, 1, dropout=0.3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 48312), 200, F.mse_loss, sched=sched)
    ctx.check("trained (the last 10 under 0.7x the first 10)", _fell(losses))
    ctx.check("the lr really halved 4 times", abs(opt.param_groups[0]["lr"] - 3e-3 / 16) < 1e-9)
    ctx.check("finite throughout", _finite(losses))


class _StarchConv(nn.Module):
    def __init__(self, channels=3, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.norm1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.conv2(F.max_pool1d(x, 2)))
        return self.head(x.mean(-1))


@scenario(
    family="laundress_starch_stiffness_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Laundress starch-stiffness classifier (a BatchNorm Conv1d net on press-force, "
    "steam and moisture traces across a collar, cross-entropy with label smoothing 0.1 over 4 "
    "stiffness grades, AdamW with weight decay on the weights and none on biases and norms, "
    "ReduceLROnPlateau, gradient accumulation over 2, clipping at 1.0). Control.",
)
def h483_laundress_starch_conv(ctx) -> None:
    gen = seeded(48313)
    model = _StarchConv()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    shapes = torch.randn(4, 3, 32, generator=torch.Generator().manual_seed(48313))

    def data():
        while True:
            y = torch.randint(0, 4, (32,), generator=gen)
            shift = torch.randint(0, 8, (1,), generator=gen).item()
            x = torch.roll(shapes[y], shift, -1) + 0.8 * torch.randn(32, 3, 32, generator=gen)
            yield x, y

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _loop(
        ctx, model, opt, data(), 150, loss_fn, classifier=True, sched=sched, accumulate=2, clip=1.0
    )
    ctx.check("trained (the last 10 under 0.7x the first 10)", _fell(losses))
    ctx.check("finite throughout", _finite(losses))
