"""Held-out set 228 (``h228_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a reindeer sled-pull ReLU classifier fed raw harness
readings under RMSprop at a high rate, a geomagnetic-substorm count Poisson net whose rate head
lost its softplus, a kilim knot-density ten-layer ReLU MLP initialised with a fixed std meant
for narrow layers, a tapa-cloth beating GELU regressor whose first layer's param group got a
linear-probe multiplier, a goalball throw-speed tanh regressor whose StepLR gamma was typed 5
for 0.5, a boccia roll-distance SiLU regressor whose static loss scale is not undone on the
resume step, a sponge-diving haul-weight regressor fed one shard in grams under clipped ASGD, a wheelchair-rugby
manoeuvre LayerNorm/GELU classifier hit once by a shrink-and-perturb hook that fires by mistake,
a theorbo course-pluck classifier whose hand-written label smoothing has its sign flipped, a
sitting-volleyball serve prototype classifier whose distance scale multiplies by the dimension
instead of dividing, and three controls (a footvolley line-call LayerNorm/GELU net trained with
BCE with logits on soft judge-vote labels under Adam and OneCycleLR, an ice-fog visibility
Gaussian-NLL SiLU net under fp16 autocast with a GradScaler, Adamax, accumulation and warm-up +
cosine, a coasteering jump-entry Huber regressor with SGD Nesterov, clipping and
ReduceLROnPlateau).

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
    grad_norm,
    scenario,
    seeded,
)

# -- helpers --------------------------------------------------------------------------------------


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
):
    """This file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns
    what is backpropagated, ``after(step)`` runs after the optimizer step. Stops after logging a
    NaN loss."""
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
            if backprop is not None:
                total = backprop(step, total)
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
        if math.isnan(shown):
            break


def _smooth_target(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.sin(x @ w / math.sqrt(d_in)) + 0.5 * torch.tanh(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, classes, seed, spread=0.9):
    """Standardised readings scattered around one centre per class."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = centres[y] + spread * torch.randn(batch, d_in, generator=gen)
        yield x, y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, activations as modules."""

    def __init__(self, d_in, hidden, out, act=nn.ReLU):
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


class NormGeluNet(nn.Module):
    """fc1 -> ln1 -> act1 (GELU) -> fc2 -> ln2 -> act2 (GELU) -> head."""

    def __init__(self, d_in, hidden, out):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.ln1 = nn.LayerNorm(hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        h = self.act1(self.ln1(self.fc1(x)))
        h = self.act2(self.ln2(self.fc2(h)))
        out = self.head(h)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- reindeer sled pull: raw harness readings, RMSprop at a high rate, ReLUs die -----------------


def _harness(gen, batch, seed=1):
    """Ten harness readings of a reindeer sled team in raw logger units (load cell in newtons,
    speed in km/h, air temperature in kelvin, ...), all positive and in the tens to hundreds,
    and one of 4 gait classes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 10, generator=g)
    offset = 40.0 + 200.0 * torch.rand(10, generator=g)
    scale = 5.0 + 20.0 * torch.rand(10, generator=g)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        z = centres[y] + 0.8 * torch.randn(batch, 10, generator=gen)
        yield offset + scale * z, y


@scenario(
    family="reindeer_sled_pull_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act1", "fc1"),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (fc1, act1, fc2, act2, head) telling a reindeer sled team's gait (4 classes) from 10 harness readings left in raw logger units (newtons, km/h, kelvin: all positive, tens to hundreds) because the standardiser was skipped, RMSprop at 3e-2, cross-entropy. About a third of act1's units are already negative on every input at init; the first updates swing fc1's pre-activations by hundreds and nearly all the rest follow within 5 steps: over 90% of act1's units are dead on a 512-window batch by the end, they get no gradient and never come back, and the loss stays near chance (ln 4) instead of falling.",
)
def h228_reindeer_sled_dead_relu(ctx: Context) -> None:
    gen = seeded(22801)
    model = Trunk(10, 64, 4)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-2)
    probe_x, _ = next(_harness(torch.Generator().manual_seed(5), 512))
    with torch.no_grad():
        dead_start = dead_fraction(model.act1(model.fc1(probe_x)))
    _loop(ctx, model, opt, _harness(gen, 64), 200, F.cross_entropy, classifier=True)
    with torch.no_grad():
        dead_end = dead_fraction(model.act1(model.fc1(probe_x)))
    ls = ctx.losses
    ctx.check("act1 under 40% dead at init", dead_start < 0.4)
    ctx.check("over 90% of act1's units dead at the end", dead_end > 0.9)
    ctx.check(
        "loss stays above 0.8 ln 4 over the last 30 steps",
        _finite(ls) and _mean(ls[-30:]) > 0.8 * math.log(4),
    )


# -- geomagnetic substorm: Poisson rate head without its softplus, log of a negative rate ---------


class SubstormNet(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.rate_head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rate_head.bias.fill_(2.0)

    def forward(self, x):
        # the softplus that kept the rate positive was removed when the head was re-initialised
        # at the mean count "so it starts at the right scale"
        return self.rate_head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _substorms(gen, batch, seed=2):
    """Eight standardised solar-wind readings (Bz, speed, density, ...) and the count of
    substorm onsets in the next 6 hours (Poisson, mean about 1.5, many zeros)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        rate = torch.exp(0.9 * (x @ w) / math.sqrt(8) - 0.1)
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


@scenario(
    family="geomagnetic_substorm_count_poisson_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("rate_head",),
    diverges=30,
    heldout=True,
    note="A tanh net (fc1, act1, fc2, act2, rate_head) predicting the number of geomagnetic substorm onsets in the next 6 hours from 8 standardised solar-wind readings, Adagrad at 5e-3, a hand-written Poisson NLL rate - y log(rate). The rate head's softplus was dropped when its bias was initialised at the mean count, so its output is used as the rate directly: the zero-count windows push the rate down at a constant gradient until, for some window, it crosses zero, log of a negative rate is NaN and the loss is NaN at step 30.",
)
def h228_substorm_poisson_log_negative_rate(ctx: Context) -> None:
    gen = seeded(22802)
    model = SubstormNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.005)
    low = []

    def watch(step, out, x, y):
        low.append(float(out.detach().min()))

    _loop(ctx, model, opt, _substorms(gen, 64), 150, _poisson_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss NaN at step 30", bad == 30 and math.isnan(ls[30]))
    ctx.check("every rate positive for the first 10 steps", len(low) > 10 and min(low[:10]) > 0)
    ctx.check("a rate at or below zero at the NaN step", bad is not None and low[bad] <= 0)


# -- kilim knot density: ten ReLU layers initialised with a fixed std of 0.15 ---------------------


class KnotDensityMLP(nn.Module):
    def __init__(self, d_in=16, width=256, depth=10, init_std=0.15):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in [*self.layers, self.head]:
            nn.init.normal_(m.weight, std=init_std)
            nn.init.zeros_(m.bias)

        self.kept: list[torch.Tensor] = []

    def forward(self, x):
        self.kept = []
        for layer in self.layers:
            z = layer(x)
            if z.requires_grad:
                z.retain_grad()
            self.kept.append(z)
            x = F.relu(z)
        return self.head(x).squeeze(-1)


@scenario(
    family="kilim_knot_density_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="A ten-layer ReLU MLP (layers.0 .. layers.8, 256 wide, head) estimating the knot density of a kilim from 16 standardised loom and yarn readings, plain SGD at 1e-3, MSE. Its init copies `init_std: 0.15` from a recipe written for 16-wide layers: at width 256 that is a gain of 2.4 where ReLU needs sqrt(2), so every layer multiplies activations and back-propagated gradients by about 1.7; at init the gradient reaching layers.0's output is over 30x the one at layers.8's, the first SGD step throws the net off and the loss blows up within a few steps.",
)
def h228_kilim_deep_relu_fixed_std_init(ctx: Context) -> None:
    gen = seeded(22803)
    model = KnotDensityMLP()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    depth_ratio = {}
    batches = _smooth_target(gen, 64, 16, seed=3)
    x0, y0 = next(_smooth_target(torch.Generator().manual_seed(9), 64, 16, seed=3))
    F.mse_loss(model(x0), y0).backward()
    depth_ratio["r"] = float(model.kept[0].grad.norm()) / max(
        float(model.kept[-1].grad.norm()), 1e-30
    )
    model.zero_grad(set_to_none=True)
    _loop(ctx, model, opt, batches, 60, F.mse_loss)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check(
        "gradient at layers.0's output over 30x that at the last layer's (init)",
        depth_ratio["r"] > 30,
    )
    ctx.check(
        "loss blows up over 1e4x its first value or goes non-finite",
        bad is not None or max(ls) > 1e4 * ls[0],
    )


# -- tapa cloth beating: first layer's param group at a linear-probe multiplier -------------------


@scenario(
    family="tapa_cloth_beating_thickness_gelu_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A GELU regressor (fc1, act1, fc2, act2, head) predicting the final thickness of a tapa cloth from 12 standardised readings of the bark strip and the beating session, AdamW at 2e-3 (weight decay 1e-2) with one param group per layer. The group list was copied from a linear-probe recipe in which fc1 carried `lr_mult: 1e-6`; left in, fc1's rate is 2e-9, its weights move by under 1e-5 of their size over the whole run while fc2 and the head move by percents; finite.",
)
def h228_tapa_cloth_first_group_lr_mult(ctx: Context) -> None:
    gen = seeded(22804)
    model = Trunk(12, 64, 1, act=nn.GELU)
    base = 2e-3
    mults = {"fc1": 1e-6, "fc2": 1.0, "head": 1.0}
    groups = [
        {"params": list(getattr(model, n).parameters()), "lr": base * m} for n, m in mults.items()
    ]
    opt = torch.optim.AdamW(groups, lr=base, weight_decay=1e-2)
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    _loop(ctx, model, opt, _smooth_target(gen, 64, 12, seed=4), 200, F.mse_loss)
    rel1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    rel2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-5 of its size", rel1 < 1e-5)
    ctx.check("fc2 moved over 1e-2 of its size", rel2 > 1e-2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- goalball throw speed: StepLR gamma typed 5 for 0.5 -------------------------------------------


def _sharpness(model, x, y, iters=20):
    """Top Hessian eigenvalue of the MSE loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="goalball_throw_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=80,
    heldout=True,
    note="A tanh regressor (fc1, act1, fc2, act2, head) predicting a goalball throw's speed at the goal line from 8 standardised readings of the thrower's spin and release, plain SGD at 0.04, MSE, with StepLR every 40 steps. The decay was meant to be gamma 0.5 but the config reads `gamma: 5` (the '0.' lost): the rate becomes 0.2 at step 40, still under 2/sharpness, and 1.0 at step 80, where lr x sharpness passes 2; the loss then climbs and blows up.",
)
def h228_goalball_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(22805)
    model = Trunk(8, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.04)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=40, gamma=5.0)
    px, py = next(_smooth_target(torch.Generator().manual_seed(11), 256, 8, seed=5))
    edge = {}

    def before(step):
        if step in (40, 80):
            edge[step] = opt.param_groups[0]["lr"] * _sharpness(model, px, py)

    _loop(
        ctx,
        model,
        opt,
        _smooth_target(gen, 64, 8, seed=5),
        160,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at step 40", edge.get(40, 9.0) < 2)
    ctx.check("lr x sharpness over 2 at step 80", edge.get(80, 0.0) > 2)
    pre = _median(ls[60:80])
    ctx.check(
        "loss blows up over 100x its pre-onset level after step 80",
        len(ls) > 81 and (not _finite(ls[80:]) or max(ls[80:]) > 100 * pre),
    )


# -- boccia roll distance: the static loss scale is not undone on the resume step -----------------


@scenario(
    family="boccia_ball_roll_distance_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="A SiLU regressor (fc1, act1, fc2, act2, head) predicting how far a boccia ball rolls from 10 standardised readings of the ramp angle, release height and court surface, SGD with momentum 0.9 at 2e-3, MSE. A leftover static loss scale of 64 from an fp16 recipe multiplies the loss before backward, and a gradient hook divides it back out; the hook is registered in the training-loop setup, which the resume path at step 150 skips for its first step, so that one step's gradient is 64x its usual size on an ordinary batch (the loss on it is like its neighbours). That step's update is 64x too large; the run absorbs it with no lasting damage: finite, ending under 2x its pre-onset loss.",
)
def h228_boccia_static_scale_not_undone(ctx: Context) -> None:
    gen = seeded(22806)
    model = Trunk(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9)
    onset, static_scale = 150, 64.0

    def backprop(step, loss):
        scaled = loss * static_scale
        if step != onset:  # the unscale hook (resume path skips its setup for one step)
            scaled = scaled / static_scale
        return scaled

    _loop(ctx, model, opt, _smooth_target(gen, 64, 10, seed=6), 260, F.mse_loss, backprop=backprop)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[onset - 20 : onset])
    ctx.check("gradient at step 150 over 30x the median of the 20 before", gn[onset] > 30 * before)
    ctx.check(
        "loss on the onset batch within 2x the median of the 20 before",
        ls[onset] < 2 * _median(ls[onset - 20 : onset]),
    )
    ctx.check(
        "finite, and back under 2x the pre-onset loss by the end",
        _finite(ls) and _mean(ls[-20:]) < 2 * _median(ls[onset - 20 : onset]),
    )


# -- sponge diving: one shard of haul weights in grams --------------------------------------------


@scenario(
    family="sponge_diving_haul_weight_silu_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="A SiLU regressor (fc1, act1, fc2, act2, head) predicting the wet weight of a sponge diver's haul (kg, about unit scale after centring) from 10 standardised readings of the dive (depth, bottom time, current, ...), ASGD at 5e-2, MSE, gradient-norm clipping at 1.0. One boat's logbook shard, read at step 130, records the haul in grams: that batch's targets are 1000x too large, the loss on it is over 1e4x its neighbours' and the gradient over 100x (the clip bounds the step it takes); the model, knocked once, comes back within a few steps and the loss settles to its earlier level; finite.",
)
def h228_sponge_diving_grams_shard(ctx: Context) -> None:
    gen = seeded(22807)
    model = Trunk(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=5e-2)
    onset = 130

    def alter(step, x, y):
        return (x, y * 1000.0) if step == onset else (x, y)

    _loop(
        ctx, model, opt, _smooth_target(gen, 64, 10, seed=7), 260, F.mse_loss, alter=alter, clip=1.0
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[onset - 20 : onset])
    ctx.check("loss at step 130 over 1e4x the median of the 20 before", ls[onset] > 1e4 * pre)
    ctx.check(
        "gradient at step 130 over 100x the median of the 20 before",
        gn[onset] > 100 * _median(gn[onset - 20 : onset]),
    )
    ctx.check(
        "finite, and under 2x the pre-onset loss at the end",
        _finite(ls) and _mean(ls[-20:]) < 2 * pre,
    )


# -- wheelchair rugby: a shrink-and-perturb hook fires once by mistake -----------------------------


def _manoeuvres(gen, batch, seed=8):
    """Twelve standardised chair-sensor readings (wheel speeds, turn rate, impacts) and one of
    5 wheelchair-rugby manoeuvres (pick, block, spin, sprint, hold)."""
    return _classes(gen, batch, 12, 5, seed, spread=1.1)


@scenario(
    family="wheelchair_rugby_manoeuvre_layernorm_gelu_classifier",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A LayerNorm/GELU classifier (fc1, ln1, act1, fc2, ln2, act2, head) telling 5 wheelchair-rugby manoeuvres from 12 standardised chair-sensor readings, AdamW at 3e-3 (weight decay 1e-2), cross-entropy. The loop carries a shrink-and-perturb hook (weights x 0.3 plus noise) meant for the start of each new season's data; it tests the loader's `new_source` flag, which the shard reader also sets when it wraps round, so at step 120 it fires once mid-run. The weights shrink, the loss on that step jumps several-fold towards chance, and the run learns back to its earlier loss within some tens of steps; nothing in the gradients or the data is wrong; finite.",
)
def h228_wheelchair_rugby_shrink_perturb_fires(ctx: Context) -> None:
    gen = seeded(22808)
    model = NormGeluNet(12, 64, 5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    onset = 120

    def before(step):
        if step == onset:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.3).add_(0.01 * torch.randn_like(p))

    _loop(
        ctx, model, opt, _manoeuvres(gen, 64), 240, F.cross_entropy, classifier=True, before=before
    )
    ls = ctx.losses
    pre = _median(ls[onset - 20 : onset])
    ctx.check("loss at step 120 over 3x the median of the 20 before", ls[onset] > 3 * pre)
    ctx.check(
        "finite, and back under 1.5x the pre-onset loss by the end",
        _finite(ls) and _mean(ls[-20:]) < 1.5 * pre,
    )
    ctx.check("loss had fallen before the onset", pre < 0.6 * _mean(ls[:5]))


# -- theorbo course pluck: hand-written label smoothing with its sign flipped ---------------------


def _flipped_smoothing(eps=0.1):
    def loss(logits, y):
        logp = F.log_softmax(logits, -1)
        nll = -logp.gather(1, y[:, None]).squeeze(1)
        # should be  (1 - eps) * nll - eps * logp.mean(-1)
        return ((1 - eps) * nll + eps * logp.mean(-1)).mean()

    return loss


@scenario(
    family="theorbo_course_pluck_relu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (fc1, act1, fc2, act2, head) telling which of 8 theorbo courses was plucked from 16 standardised pickup-spectrum readings, Adam at 3e-3, a hand-written label-smoothed cross-entropy (eps 0.1) whose smoothing term was typed `+ eps * logp.mean()` for `- eps * logp.mean()`. Instead of pulling the wrong classes up, it rewards pushing their log-probabilities to minus infinity: the head's logits grow steadily without bound (over 20x from step 10 to the end), the loss goes negative and keeps falling; finite.",
)
def h228_theorbo_label_smoothing_sign(ctx: Context) -> None:
    gen = seeded(22809)
    model = Trunk(16, 64, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    peak = []

    def watch(step, out, x, y):
        peak.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 8, seed=9),
        260,
        _flipped_smoothing(),
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("head's largest logit over 20x its step-10 value", peak[-1] > 20 * peak[10])
    ctx.check("largest logit still rising over the last 60 steps", peak[-1] > 1.2 * peak[-60])
    ctx.check("loss negative at the end", _finite(ls) and ls[-1] < 0)


# -- sitting volleyball serve: prototype distances multiplied by the dimension ------------------


class ProtoHead(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(classes, dim))
        self.dim = dim

    def forward(self, z):
        d2 = ((z[:, None, :] - self.prototypes[None]) ** 2).sum(-1)
        return -d2 * self.dim  # meant: -d2 / self.dim


class ServeNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, dim=32, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.embed = nn.Linear(hidden, dim)
        self.head = ProtoHead(dim, classes)

    def forward(self, x):
        return self.head(self.embed(self.act1(self.fc1(x))))


@scenario(
    family="sitting_volleyball_serve_prototype_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A prototype classifier (fc1, act1, embed, head) telling 6 sitting-volleyball serve types from 10 standardised ball-tracking readings: the head scores each class by minus the squared distance from the 32-d embedding to a learnt prototype, scaled by the dimension. The scale was meant as 1/dim and is typed `* self.dim`: the logits are 1024x too large, in the hundreds to thousands, and within the first 5 steps over half the rows' softmax gives the target exactly 1.0 in float32 (over 70% over the last 20 steps). RAdam at 1e-3, cross-entropy.",
)
def h228_sitting_volleyball_proto_scale(ctx: Context) -> None:
    gen = seeded(22810)
    model = ServeNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    frac = []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 10, 6, seed=10),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check(
        "over 70% of rows' target softmax exactly 1.0 over the last 20 steps",
        _mean(frac[-20:]) > 0.7,
    )
    ctx.check("over half already within the first 5 steps", max(frac[:5]) > 0.5)
    ctx.check("finite", _finite(ls))


# -- controls ---------------------------------------------------------------------------------------


def _line_calls(gen, batch, seed=11):
    """Fourteen standardised ball-tracking readings of a footvolley ball near the line and the
    share of 5 line judges calling it in (soft labels 0, 0.2, ..., 1)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(14, generator=g)
    while True:
        x = torch.randn(batch, 14, generator=gen)
        p = torch.sigmoid(1.5 * x @ w / math.sqrt(14))
        votes = torch.bernoulli(p[:, None].expand(batch, 5), generator=gen)
        yield x, votes.mean(1)


@scenario(
    family="footvolley_line_call_soft_vote_gelu_net",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Healthy control: a LayerNorm/GELU net (fc1, ln1, act1, fc2, ln2, act2, head) predicting the share of 5 line judges who call a footvolley ball in from 14 standardised tracking readings, BCE with logits on those soft labels, Adam with OneCycleLR (peak 3e-3) over 220 steps.",
)
def h228_footvolley_soft_label_bce(ctx: Context) -> None:
    gen = seeded(22811)
    model = NormGeluNet(14, 48, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 220
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _line_calls(gen, 64),
        steps,
        F.binary_cross_entropy_with_logits,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("loss fell by over 15%", _fell(ls, 20, 0.85))
    ctx.check("finite", _finite(ls))


class FogNet(nn.Module):
    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        mean = self.mean_head(h).squeeze(-1)
        var = F.softplus(self.var_head(h)).squeeze(-1) + 1e-3
        return torch.stack([mean, var], -1)


def _fog_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


def _ice_fog(gen, batch, seed=12):
    """Nine standardised readings (temperature, dew point, wind, traffic emissions, ...) and the
    log visibility in ice fog, with noise that grows with the emissions reading."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        sd = 0.1 + 0.2 * torch.sigmoid(x[:, 3])
        yield x, torch.tanh(x @ w / 3) + sd * torch.randn(batch, generator=gen)


@scenario(
    family="ice_fog_visibility_fp16_gaussian_nll_silu_net",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="Healthy control: a SiLU net with mean and softplus variance heads (fc1, act1, fc2, act2, mean_head, var_head) predicting log visibility in ice fog from 9 standardised readings, Gaussian NLL, fp16 autocast with a torch.amp.GradScaler, Adamax at 2e-3 with a LambdaLR linear warm-up over 20 steps then cosine decay, gradient accumulation over 2 batches.",
)
def h228_ice_fog_fp16_adamax_control(ctx: Context) -> None:
    gen = seeded(22812)
    model = FogNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    steps, warm = 180, 20

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _ice_fog(gen, 32),
        steps,
        _fog_nll,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("loss fell by over 0.5 nats", _finite(ls) and _mean(ls[-20:]) < _mean(ls[:10]) - 0.5)
    ctx.check("finite", _finite(ls))
    ctx.check("grad scale finite and positive", all(0 < s < float("inf") for s in ctx.scales))


def _jumps(gen, batch, seed=13):
    """Eleven standardised readings of a coasteering jump (height, run-up, swell phase, ...) and
    the entry depth, with heavy-tailed (Student-t, 3 dof) measurement noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(11, generator=g)
    v = torch.randn(11, generator=g)
    t3 = torch.distributions.StudentT(3.0)
    while True:
        x = torch.randn(batch, 11, generator=gen)
        y = torch.sin(x @ w / math.sqrt(11)) + 0.4 * (x @ v / math.sqrt(11)) ** 2
        yield x, y + 0.1 * t3.sample((batch,))


@scenario(
    family="coasteering_jump_entry_huber_relu_regressor",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Healthy control: a ReLU regressor (fc1, act1, fc2, act2, head) predicting a coasteering jump's entry depth from 11 standardised readings with Student-t noise, Huber loss (delta 1), SGD Nesterov (momentum 0.9) at 1e-2, gradient-norm clipping at 1.0, ReduceLROnPlateau (factor 0.5, patience 10).",
)
def h228_coasteering_huber_nesterov_control(ctx: Context) -> None:
    gen = seeded(22813)
    model = Trunk(11, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _loop(ctx, model, opt, _jumps(gen, 64), 220, F.huber_loss, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell by over 30%", _fell(ls, 20, 0.7))
    ctx.check("finite", _finite(ls))
