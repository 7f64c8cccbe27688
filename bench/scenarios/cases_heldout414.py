"""Held-out set 414 (``h414_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a glacier-moraine boulder-cloud generator against a plain Sinkhorn loss whose epsilon
floor is typed 1e-3 for 1e-1 (division by a vanishing kernel mass, NaN), a curling-stone curl
classifier whose temperature is read in hundredths (softmax saturates), a hurdy-gurdy rosin-drag
regressor whose input param group lr is typed 1e-10 for 1e-2 (a frozen layer), a sourdough
rise-height regressor with a hand-written weight decay of flipped sign (a slow climb), a
beekeeping swarm-alarm BCE net whose accumulation divisor is reset on resume for one step (a
gradient burst), an avalanche run-out regressor fed one station's shard in wrong units (one
corrupted batch), a sheepdog-trial course-time regressor on NAdam with lr typed 3e-1 for 3e-3
(ReLUs die), a blacksmith quench-crack deep ReLU MLP initialised with gain 2.0 on He init
(gradients grow through depth), a kitesurf jump classifier whose hinge loss lost its clamp (the
head's logits grow) and a bagpipe drone-reed regressor whose manual loss scale is not divided
out for one step (Adam's second moment poisoned).

Controls: a coral-spawning slick generator against an entropic Sinkhorn loss at epsilon 0.1 (Adam
with warm-up and a cosine schedule), a ski-jump distance Huber regressor (fp16 autocast with a
GradScaler, AdamW with a no-decay group, OneCycleLR, accumulation, clipping) and a tabla
bol-stroke classifier with a head tied to its class embeddings (SGD Nesterov, label smoothing,
clipping, ReduceLROnPlateau).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded

ONSET_SINK = 76
DIV_SINK = 100
WD_SOUR = 0.3


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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


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
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step. Stops
    after a non-finite loss (once ``ctx.step`` has seen it)."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.0):
    """Gaussian clusters around k random centres: readings and class labels."""
    g = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield centres[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _clouds(gen, batch, n, seed):
    """Target point clouds: noisy rings of random radius (2-d), with a conditioning code."""
    g = torch.Generator().manual_seed(seed)
    del g
    while True:
        r = 0.5 + torch.rand(batch, 1, generator=gen)
        th = 2 * math.pi * torch.rand(batch, n, generator=gen)
        pts = torch.stack([r * torch.cos(th), r * torch.sin(th)], -1)
        yield r, pts + 0.05 * torch.randn(batch, n, 2, generator=gen)


def _sinkhorn(x, y, eps, iters=30):
    """Entropic OT cost between clouds x (b, n, 2) and y (b, m, 2), plain (not log-domain)
    Sinkhorn scaling with uniform weights, differentiable through the iterations."""
    c = torch.cdist(x, y) ** 2
    k = torch.exp(-c / eps)
    b, n, m = c.shape
    a = torch.full((b, n), 1.0 / n)
    bb = torch.full((b, m), 1.0 / m)
    v = torch.ones(b, m)
    for _ in range(iters):
        u = a / (k @ v[..., None]).squeeze(-1)
        v = bb / (k.transpose(1, 2) @ u[..., None]).squeeze(-1)
    plan = u[..., None] * k * v[:, None, :]
    return (plan * c).sum((1, 2)).mean()


# -- models ----------------------------------------------------------------------------------------


class CloudGenerator(nn.Module):
    """A code (ring radius) plus per-point noise mapped to 2-d points by a shared SiLU MLP."""

    def __init__(self, n: int = 24, z: int = 4, hidden: int = 48) -> None:
        super().__init__()
        self.n, self.z = n, z
        self.embed = nn.Linear(1, hidden)
        self.point = nn.Linear(z, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(code.shape[0], self.n, self.z)
        h = F.silu(self.embed(code)[:, None, :] + self.point(noise))
        return self.out(F.silu(self.mix(h)))


class Net(nn.Module):
    """A hand-written MLP trunk (fc1, act1, fc2, act2) and a head."""

    def __init__(self, d_in: int, hidden: int, d_out: int, act=nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, d_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class DeepReLU(nn.Module):
    """A deep ReLU stack ``layers.0`` .. ``layers.{depth-1}`` and a head."""

    def __init__(self, d_in: int, width: int, depth: int, gain: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain * math.sqrt(2.0 / lin.in_features))
            nn.init.zeros_(lin.bias)
        self.outs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.outs = []
        for lin in self.layers:
            x = lin(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


class TiedClassifier(nn.Module):
    """Readings projected into a class-embedding space; the head reuses the class embeddings."""

    def __init__(self, d_in: int, dim: int, k: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, dim)
        self.mid = nn.Linear(dim, dim)
        self.classes = nn.Embedding(k, dim)
        self.head = nn.Linear(dim, k, bias=False)
        self.head.weight = self.classes.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.proj(x))
        return self.head(F.gelu(self.mid(h)) + h)


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    family="glacier_moraine_boulder_point_cloud_sinkhorn_generator",
    optimizer="Adam",
    cause="nonfinite",
    where=(),
    diverges=DIV_SINK,
    heldout=True,
    onset=ONSET_SINK,
    note="Glacier-moraine boulder-field generator (SiLU point MLP) trained against a plain "
    "(not log-domain) entropic Sinkhorn loss between generated and surveyed point clouds. The "
    "epsilon anneals as max(0.97 ** step, floor) with the floor typed 1e-3 for 1e-1; once "
    "epsilon is small, exp(-C / eps) leaves rows and columns of the kernel with a mass near 1e-13, "
    "the scaling u = a / (K v) divides by it, the backward pass through the iterations overflows "
    "to inf/NaN and the next step's loss is NaN (no clamp, no log-domain).",
)
def h414_moraine_cloud_sinkhorn_eps_floor(ctx):
    gen = seeded(41401)
    model = CloudGenerator()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    clouds = _clouds(gen, 16, 24, 41401)
    eps_at: list[float] = []
    empty: list[float] = []

    def loss_fn(out, y):
        eps = max(0.97 ** len(ctx.losses), 1e-3)
        eps_at.append(eps)
        with torch.no_grad():
            kern = torch.exp(-(torch.cdist(out, y) ** 2) / eps)
            empty.append(min(float(kern.sum(-1).min()), float(kern.sum(-2).min())))
        return _sinkhorn(out, y, eps)

    def batches():
        while True:
            r, pts = next(clouds)
            yield r, pts

    stop = _loop(ctx, model, opt, batches(), 250, loss_fn)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN/Inf at a step", bad is not None)
    ctx.check("finite before the onset", _finite(ctx.losses[:ONSET_SINK]))
    ctx.check("the loss fell while epsilon was sane", ctx.losses[ONSET_SINK - 1] < ctx.losses[0])
    ctx.check(
        "eps below 0.1 (the intended floor) when it broke",
        bad is not None and eps_at[bad] < 0.1,
    )
    ctx.check("the run stopped at the bad step", bad is not None and stop == bad + 1)
    ctx.check(
        "the kernel's smallest row/column mass under 1e-10 just before the break",
        bad is not None and min(empty[bad - 5 : bad]) < 1e-10,
    )
    ctx.check("that mass over 1e-3 over the first 20 steps", min(empty[:20]) > 1e-3)
    ctx.check(
        "the gradient is non-finite on the step before the NaN loss",
        bad is not None and not math.isfinite(ctx.grad_norms[bad - 1]),
    )


@scenario(
    family="curling_stone_curl_direction_temperature_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=60,
    note="Curling-stone curl-direction classifier (ReLU MLP, 5 classes). From step 60 a "
    "calibration temperature is read from a config written in hundredths, 0.01 for 1.0, and the "
    "logits are divided by it; the float32 softmax saturates and most rows' target probability "
    "rounds to exactly 1.0 (the others to 0).",
)
def h414_curling_curl_temperature_units(ctx):
    gen = seeded(41402)
    model = Net(10, 48, 5)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    temp = [1.0]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before(step):
        temp[0] = 0.01 if step >= 60 else 1.0

    def loss_fn(out, y):
        seen.append((out.detach(), y))
        return F.cross_entropy(out / temp[0], y)

    _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 10, 5, 41402),
        150,
        loss_fn,
        classifier=True,
        before=before,
    )
    tail = seen[-30:]
    hot = _mean([collapsed_fraction(o / 0.01, y) for o, y in tail])
    cool = _mean([collapsed_fraction(o, y) for o, y in tail])
    early = _mean([collapsed_fraction(o, y) for o, y in seen[30:60]])
    ctx.check("over half the rows' target probability is exactly 1.0 (last 30)", hot > 0.5)
    ctx.check("under 5% at temperature 1.0 on the same logits", cool < 0.05)
    ctx.check("under 5% before the onset", early < 0.05)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="hurdy_gurdy_wheel_rosin_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Hurdy-gurdy wheel rosin-drag regressor (GELU MLP) with two Adagrad param groups; the "
    "input group's lr is typed 1e-10 for 1e-2 (a dropped digit group in a sweep file). fc1 "
    "receives ordinary gradients but barely moves; fc2 and the head train at 1e-2.",
)
def h414_hurdy_gurdy_frozen_input_group(ctx):
    gen = seeded(41403)
    model = Net(12, 48, 1, act=nn.GELU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-10},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 1e-2},
        ]
    )
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    g1: list[float] = []

    def inspect(step):
        g1.append(float(model.fc1.weight.grad.norm()))

    _loop(ctx, model, opt, _readings(gen, 64, 12, 41403), 200, F.mse_loss, inspect=inspect)
    ctx.check("fc1 moved under 1e-6 of its norm", _rel_change(w1, model.fc1.weight) < 1e-6)
    ctx.check("the head moved over 5%", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("fc1 received gradients all along", min(g1) > 1e-4)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="sourdough_starter_rise_height_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=0,
    note="Sourdough-starter rise-height regressor (ReLU MLP) on SGD momentum with a hand-written "
    "decoupled weight decay whose sign is flipped (p.mul_(1 + lr * wd) for 1 - lr * wd). The "
    "loss first falls, then the weights inflate step by step and the loss climbs slowly.",
)
def h414_sourdough_decay_sign(ctx):
    gen = seeded(41404)
    model = Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    lr, wd = 2e-2, WD_SOUR
    norms: list[float] = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)
        norms.append(float(_flat(model).norm()))

    _loop(ctx, model, opt, _readings(gen, 64, 10, 41404), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("finite", _finite(ls))
    ctx.check("the loss fell first", _mean(ls[low - 5 : low + 5]) < 0.7 * _mean(ls[:10]))
    ctx.check(
        "the last 20 steps' loss is over 3x its lowest window",
        _mean(ls[-20:]) > 3 * _mean(ls[max(low - 10, 0) : low + 10]),
    )
    ctx.check("the weight norm grew over 50%", norms[-1] > 1.5 * norms[0])


@scenario(
    family="beekeeping_swarm_alarm_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Beekeeping swarm-alarm detector (ReLU MLP, BCE with logits) on SGD Nesterov with "
    "clipping at 1.0, gradient accumulation over 4 micro-batches. At step 120 a resumed job's "
    "accumulation counter is reset, so the micro-batch losses are multiplied by 4 * 250 (the "
    "steps-per-epoch) instead of divided by 4 for that one step: a clean batch, an ordinary "
    "logged loss, a gradient burst; clipping absorbs it and the run recovers.",
)
def h414_beekeeping_accumulation_reset(ctx):
    gen = seeded(41405)
    model = Net(16, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    base = _classes(gen, 32, 16, 2, 41405, spread=1.5)

    def batches():
        while True:
            x, y = next(base)
            yield x, y.float()

    def backprop(step, loss):
        return loss * (4 * 250 * 4) if step == 120 else loss

    _loop(
        ctx,
        model,
        opt,
        batches(),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        accumulate=4,
        clip=1.0,
    )
    gn, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "gradient norm at step 120 over 100x the median of 60-119",
        gn[120] > 100 * _median(gn[60:120]),
    )
    ctx.check("the logged loss at step 120 is ordinary", ls[120] < 2 * max(ls[100:120]))
    ctx.check(
        "recovered: loss of the last 20 under that of the first 10",
        _mean(ls[-20:]) < _mean(ls[:10]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="avalanche_runout_distance_huber_regressor",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Avalanche run-out distance regressor (SiLU MLP, Huber loss, clipped at 1.0, AdamW). "
    "At step 100 one observer station's shard arrives with slope readings in tenths of a degree "
    "instead of standardised and the run-out in metres instead of kilometres: one corrupted "
    "batch, a loss spike and a gradient burst, then the run recovers.",
)
def h414_avalanche_bad_station_shard(ctx):
    gen = seeded(41406)
    model = Net(12, 48, 1, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)

    def alter(step, x, y):
        if step == 100:
            return x * 10.0, y * 1000.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 41406),
        220,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        alter=alter,
        clip=1.0,
    )
    gn, ls = ctx.grad_norms, ctx.losses
    ctx.check("loss at step 100 over 100x the median of 80-99", ls[100] > 100 * _median(ls[80:100]))
    ctx.check(
        "gradient at step 100 over 20x the median of 80-99", gn[100] > 20 * _median(gn[80:100])
    )
    ctx.check(
        "recovered: last 20 under 2x the median of 80-99", _mean(ls[-20:]) < 2 * _median(ls[80:100])
    )
    ctx.check("finite", _finite(ls))


def _dead_run(ctx, lr, seed):
    gen = seeded(seed)
    model = Net(10, 64, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=lr)
    fracs: list[float] = []
    probe = next(_readings(torch.Generator().manual_seed(seed + 1), 256, 10, seed))[0]

    def after(step):
        with torch.no_grad():
            fracs.append(dead_fraction(model.features(probe)))

    batches = _readings(gen, 64, 10, seed)
    if ctx is not None:
        _loop(ctx, model, opt, batches, 200, F.mse_loss, after=after)
        return fracs
    for step in range(200):  # the same run at the intended lr, unmonitored, for comparison
        x, y = next(batches)
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        after(step)
    return fracs


@scenario(
    family="sheepdog_trial_course_time_relu_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="Sheepdog-trial course-time regressor (ReLU MLP, MSE) on NAdam with lr typed 3e-1 for "
    "3e-3. The first large steps push most second-layer ReLUs negative on every input: they die "
    "and stop learning for the rest of the run.",
)
def h414_sheepdog_nadam_lr_typo(ctx):
    fracs = _dead_run(ctx, 3e-1, 41407)
    ls = list(ctx.losses)
    control = _dead_run(None, 3e-3, 41407)
    ctx.check("over 50% of act2's units dead over the last 50 steps", _mean(fracs[-50:]) > 0.5)
    ctx.check("under 20% dead at lr 3e-3", _mean(control[-50:]) < 0.2)
    ctx.check("finite", _finite(ls))


@scenario(
    family="blacksmith_quench_crack_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Blacksmith quench-crack risk regressor, a 10-layer ReLU MLP initialised with "
    "std = 2.0 * sqrt(2 / fan_in) (a gain of 2.0 typed on top of He init) for sqrt(2 / fan_in). "
    "Each layer doubles the backward signal: dL/d(layers.0 output) is hundreds of times "
    "dL/d(layers.9 output); plain SGD with clipping at 5.0 keeps the loss from blowing up.",
)
def h414_blacksmith_init_gain(ctx):
    gen = seeded(41408)
    model = DeepReLU(8, 32, 10, gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    ratios: list[float] = []

    def inspect(step):
        first, last = model.outs[0].grad, model.outs[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(ctx, model, opt, _readings(gen, 64, 8, 41408), 120, F.mse_loss, inspect=inspect, clip=5.0)
    ref = DeepReLU(8, 32, 10, gain=1.0)
    x, y = next(_readings(torch.Generator().manual_seed(7), 64, 8, 41408))
    F.mse_loss(ref(x), y).backward()
    ref_ratio = float(ref.outs[0].grad.norm() / ref.outs[-1].grad.norm())
    ctx.check("dL/d(layers.0 out) over 100x dL/d(layers.9 out) at step 0", ratios[0] > 100)
    ctx.check("median ratio over the run over 100x", _median(ratios) > 100)
    ctx.check("under 5x at gain 1.0", ref_ratio < 5)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="kitesurf_jump_class_hinge_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kitesurf jump-class classifier (GELU MLP, 6 classes) trained with a hand-written "
    "multi-class hinge loss whose clamp(min=0) was lost in a refactor: mean(logit_other - "
    "logit_target + 1) keeps rewarding a wider margin, so the head's logits grow without bound.",
)
def h414_kitesurf_hinge_missing_clamp(ctx):
    gen = seeded(41409)
    model = Net(12, 48, 6, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    peak: list[float] = []

    def loss_fn(out, y):
        peak.append(float(out.detach().abs().max()))
        tgt = out.gather(1, y[:, None])
        return (out - tgt + 1.0).mean()

    _loop(ctx, model, opt, _classes(gen, 64, 12, 6, 41409), 200, loss_fn, classifier=True)
    ctx.check("max |logit| over 20x its start", peak[-1] > 20 * peak[0])
    ctx.check("still growing over the last 50 steps", peak[-1] > 1.3 * peak[-50])
    ctx.check("the loss went below -5", min(ctx.losses) < -5)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="bagpipe_drone_reed_pressure_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Bagpipe drone-reed pressure regressor (tanh MLP, MSE, Adam with a static manual loss "
    "scale of 65536). At step 100 the checkpoint-resume path skips the unscale, so one step's "
    "gradients reach Adam 65536x too large; the second moment fills with them and the updates "
    "stall afterwards although the gradients are ordinary.",
)
def h414_bagpipe_skipped_unscale(ctx):
    gen = seeded(41410)
    model = Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves: list[float] = []
    prev = [_flat(model)]
    grads: list[float] = []

    def backprop(step, loss):
        # scale by 65536, backward, unscale: the same as no scaling, except where it is skipped
        return loss * 65536.0 if step == 100 else loss

    def inspect(step):
        grads.append(grad_norm(model))

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).abs().median()))
        prev[0] = now

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 41410),
        250,
        F.mse_loss,
        backprop=backprop,
        inspect=inspect,
        after=after,
    )
    ctx.check(
        "gradient at step 100 over 1000x the median of 50-99",
        grads[100] > 1000 * _median(grads[50:100]),
    )
    ctx.check(
        "median update over 120-249 under a tenth of 50-99",
        _median(moves[120:]) < 0.1 * _median(moves[50:100]),
    )
    ctx.check(
        "gradients after not smaller than a third of before",
        _median(grads[120:]) > _median(grads[50:100]) / 3,
    )
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    family="coral_spawning_slick_point_cloud_sinkhorn_generator",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Coral-spawning slick generator (SiLU point MLP) trained against an entropic Sinkhorn "
    "loss at a fixed moderate epsilon 0.1, Adam at 3e-3 with a cosine schedule and a short "
    "linear warm-up; control.",
)
def h414_coral_slick_sinkhorn_cosine(ctx):
    gen = seeded(41411)
    model = CloudGenerator()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 150
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    _loop(
        ctx,
        model,
        opt,
        _clouds(gen, 16, 24, 41411),
        steps,
        lambda o, y: _sinkhorn(o, y, 0.1),
        sched=sched,
    )
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))


@scenario(
    family="ski_jump_distance_fp16_silu_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Ski-jump distance regressor (SiLU MLP, Huber loss) under fp16 autocast with a "
    "GradScaler, AdamW with a no-decay group for biases, OneCycleLR, accumulation over 2 and "
    "clipping at 1.0; control.",
)
def h414_ski_jump_amp_onecycle(ctx):
    gen = seeded(41412)
    model = Net(12, 64, 1, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 41412),
        steps,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))


@scenario(
    family="tabla_bol_stroke_tied_gelu_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Tabla bol-stroke classifier (GELU projection into a class-embedding space, head tied "
    "to the class embeddings, 8 classes, noisy clusters) on SGD Nesterov with label smoothing "
    "0.1, clipping at 2.0 and ReduceLROnPlateau on a held-out batch; control.",
)
def h414_tabla_bol_tied_plateau(ctx):
    gen = seeded(41413)
    model = TiedClassifier(16, 32, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held_x, held_y = next(_classes(torch.Generator().manual_seed(99), 256, 16, 8, 41413))

    def plateau():
        with torch.no_grad():
            return float(F.cross_entropy(model(held_x), held_y))

    _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 8, 41413, spread=1.2),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        sched=sched,
        plateau=plateau,
    )
    with torch.no_grad():
        acc = float((model(held_x).argmax(1) == held_y).float().mean())
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("held-out accuracy over 60%", acc > 0.6)
