"""Held-out set 466 (``h466_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before.

Faults: a stilt-walker stride classifier whose log-prior logit adjustment is added in place to
the head's bias and accumulates every step (the head's logits grow without bound, Adam), a
kayak-slalom gate-time tanh regressor whose OneCycleLR max_lr is typed 0.6 for 0.06 (full-batch
SGD; lr * sharpness passes 2 at step 40 and the loss blows up), an oyster-farm spat-growth
regressor fed one shard in micrometres (one batch 1000x off, Adamax), a hoof-trimming angle
regressor whose trunk param-group lr is typed 1e-9 for 1e-3 (fc1 and fc2 frozen, RMSprop,
Huber), a tide-pool salinity net scaling each window by its own range with no epsilon (a stuck
probe gives 0/0 = NaN at step 110, NAdam), a clog-dancing tap regressor whose loss weight 0.5 is
read as 500 on a config hot-reload step (one gradient spike, SGD Nesterov, clipped), a
glacier-calving regressor whose accumulation divisor is read as 1e-6 on the resume step (Adam's
second moment poisoned, AdamW), a cooper's stave-bend ReLU net fed raw unstandardised readings
(most first-layer ReLUs die, Adam), a chimney-sweep soot-grade classifier with a distillation
temperature typed 0.01 for 100 (softmax rounds to exactly 0/1, Adagrad) and a dowsing-rod ReLU
Elman RNN whose identity recurrent init is scaled 1.3 (gradients grow through time, SGD).

Controls: a hang-glider launch-site neural collaborative-filtering recommender (pilot and site
embeddings, MLP, BCE with sampled negatives, Adam; each batch touches only its own embedding
rows); a marimba bar-spectrum tied-weight autoencoder (Huber, AdamW, ReduceLROnPlateau,
clipping); a kiteboard jump-height Gaussian-NLL regressor (SGD momentum, warm-up and cosine,
accumulation over 2, clipping, noisy batches).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _params_norm(params) -> float:
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in params))


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
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
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
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
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


# -- data and a plain net ---------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


# -- 1. output logits: a class-prior correction added to the head's bias in place ---------------------

PRIOR = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05])


class _StrideNet(nn.Module):
    """GELU trunk and a linear head; the forward adds the centred log class prior "to the
    logits" but the in-place add lands on the head's bias, so it accumulates every step."""

    def __init__(self, d_in=10, hidden=48, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.register_buffer("log_prior", PRIOR.log() - PRIOR.log().mean())
        self.max_logit = 0.0

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.head.bias += 0.1 * self.log_prior
        logits = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        self.max_logit = float(logits.detach().abs().max())
        return logits


def _stride_data(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(5, 10, generator=g)
    while True:
        y = torch.multinomial(PRIOR, batch, replacement=True, generator=gen)
        yield protos[y] + 0.8 * torch.randn(batch, 10, generator=gen), y


@scenario(
    family="stilt_walker_stride_prior_bias_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Stilt-walker stride-type classifier (GELU MLP on pole-pressure and sway features, "
    "imbalanced classes, cross-entropy, Adam). A log-prior logit adjustment meant as logits + "
    "0.1 * log_prior is written as an in-place add on head.bias under no_grad: it accumulates "
    "every forward, the head's logits grow without bound and Adam cannot pull them back.",
)
def h466_stilt_walker_prior_bias_accumulates(ctx) -> None:
    gen = seeded(4661)
    model = _StrideNet()
    data = _stride_data(gen, 64, seed=4661)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = []
    b0 = float(model.head.bias.detach().norm())
    losses, _ = _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda s: seen.append(model.max_logit),
    )
    ctx.check("max head logit over 20x its first step's", max(seen[-10:]) > 20 * seen[0])
    ctx.check("still growing: last over 1.5x at mid-run", seen[-1] > 1.5 * seen[len(seen) // 2])
    ctx.check("head bias norm over 10x its start", float(model.head.bias.detach().norm()) > 10 * b0)


# -- 2. sharpness: a OneCycleLR max_lr typed 10x -----------------------------------------------------

KAYAK_STEP = 40  # lr * sharpness first measured over 2 here (every 5 steps)


@scenario(
    family="kayak_slalom_gate_time_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=KAYAK_STEP,
    note="Kayak-slalom gate-time regressor (tanh MLP on paddle-stroke and current features, MSE, "
    "full-batch SGD under OneCycleLR). max_lr is typed 0.6 for 0.06: during the warm-up the lr "
    "climbs past 2 / sharpness and the loss oscillates and blows up.",
)
def h466_kayak_slalom_onecycle_max_lr_typo(ctx) -> None:
    gen = seeded(4662)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4662)
    x, y = next(data)
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=0.06)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.6, total_steps=200, pct_start=0.4)
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 5 == 0 and step <= 80:
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 200, F.mse_loss, before=before, sched=sched)
    low = min(losses)
    blow = next(
        (i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * losses[0]), None
    )
    cross = next((s for s in sorted(sharp) if s < len(lrs) and lrs[s] * sharp[s] > 2.0), None)
    ctx.check("lr * sharpness under 2 at the start", lrs[0] * sharp[0] < 2.0)
    ctx.check("lr * sharpness over 2 before the blow-up", cross is not None and blow is not None)
    ctx.check(
        "the loss blows up over 100x", blow is not None and cross is not None and blow > cross
    )
    ctx.check("trained before it", low < 0.5 * losses[0])


# -- 3. data outlier: one shard in the wrong units --------------------------------------------------

OYSTER_STEP = 120


@scenario(
    family="oyster_farm_spat_count_mm_shard_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=OYSTER_STEP,
    note="Oyster-farm spat-growth regressor (SiLU MLP on water temperature, salinity and "
    "plankton features, MSE, Adamax). One hatchery's shard logs shell length in micrometres "
    "instead of millimetres: the batch at step 120 has targets 1000x off, the loss and "
    "gradient jump for that batch and the run recovers.",
)
def h466_oyster_farm_micrometre_shard(ctx) -> None:
    gen = seeded(4663)
    model = _Net(9, 48, 1, act=nn.SiLU)
    data = _readings(gen, 64, 9, seed=4663)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        return (x, 1000.0 * y) if step == OYSTER_STEP else (x, y)

    losses, norms = _loop(ctx, model, opt, data, 240, F.mse_loss, alter=alter)
    k = OYSTER_STEP
    before = _median(losses[k - 30 : k])
    ctx.check("loss at the shard over 1e4x the median before", losses[k] > 1e4 * before)
    ctx.check("gradient at the shard over 100x the median", norms[k] > 100 * _median(norms[:k]))
    ctx.check("recovered: last 20 under 3x the level before", _mean(losses[-20:]) < 3 * before)
    ctx.check("finite", _finite(losses))


# -- 4. update ratio: a trunk param-group lr typed 1e-9 ---------------------------------------------


@scenario(
    family="hoof_trimming_angle_two_group_rmsprop_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Hoof-trimming angle regressor (ReLU MLP on hoof-wall, sole and heel measurements, "
    "Huber loss, RMSprop with two param groups). The trunk group's lr is typed 1e-9 for 1e-3: "
    "fc1 and fc2 are frozen in effect while the head trains on random features.",
)
def h466_hoof_trimming_trunk_lr_typo(ctx) -> None:
    def run(trunk_lr, attach):
        gen = seeded(4664)
        model = _Net(8, 48, 1)
        data = _readings(gen, 64, 8, seed=4664)
        trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
        opt = torch.optim.RMSprop(
            [{"params": trunk, "lr": trunk_lr}, {"params": model.head.parameters(), "lr": 1e-3}]
        )
        w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
        losses, _ = _loop(ctx, model, opt, data, 200, F.huber_loss, attach=attach)
        r1 = float((model.fc1.weight - w1).norm() / w1.norm())
        rh = float((model.head.weight - wh).norm() / wh.norm())
        return losses, r1, rh

    ref, _, _ = run(1e-3, False)
    losses, r1, rh = run(1e-9, True)
    ctx.check("fc1 moved under 1e-5 of its norm", r1 < 1e-5)
    ctx.check("head moved over 5% of its norm", rh > 0.05)
    ctx.check(
        "loss at the end over 1.3x the 1e-3 run's", _mean(losses[-20:]) > 1.3 * _mean(ref[-20:])
    )
    ctx.check("finite", _finite(losses))


# -- 5. nonfinite: range normalisation of a stuck sensor (0/0) ----------------------------------------


class _RangeNorm(nn.Module):
    """Scales each window to [0, 1] by its own min and max, with no epsilon."""

    def forward(self, x):
        lo = x.min(dim=1, keepdim=True).values
        hi = x.max(dim=1, keepdim=True).values
        return (x - lo) / (hi - lo)


class _PoolNet(nn.Module):
    def __init__(self, steps=12):
        super().__init__()
        self.norm = _RangeNorm()
        self.fc1 = nn.Linear(steps, 32)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(32, 32)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.norm(x)))))).squeeze(-1)


TIDE_STEP = 110


@scenario(
    family="tide_pool_salinity_range_norm_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=TIDE_STEP,
    heldout=True,
    onset=TIDE_STEP,
    note="Tide-pool salinity-swing net (a window of 12 salinity readings scaled to [0, 1] by its "
    "own min and max, SiLU MLP, MSE, NAdam). The range has no epsilon; at step 110 one probe "
    "is stuck and logs a flat window: (x - min) / (max - min) = 0/0 = NaN and the loss is NaN.",
)
def h466_tide_pool_flat_window(ctx) -> None:
    gen = seeded(4665)

    def data():
        t = torch.linspace(0, 1, 12)
        while True:
            phase = 6.28 * torch.rand(64, 1, generator=gen)
            amp = 0.5 + torch.rand(64, 1, generator=gen)
            x = 30 + amp * torch.sin(6.28 * t + phase) + 0.05 * torch.randn(64, 12, generator=gen)
            yield x, torch.cos(phase.squeeze(1))

    model = _PoolNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == TIDE_STEP:
            x = x.clone()
            x[7] = 31.5
        return x, y

    losses, _ = _loop(ctx, model, opt, data(), 200, F.mse_loss, alter=alter)
    ctx.check("finite before the step", _finite(losses[:TIDE_STEP]))
    ctx.check("loss NaN at the step", len(losses) > TIDE_STEP and math.isnan(losses[TIDE_STEP]))
    ctx.check("trained before it", _mean(losses[TIDE_STEP - 10 : TIDE_STEP]) < 0.5 * losses[0])


# -- 6. gradient spike: a loss weight read from the percent field on a hot reload --------------------

CLOG_STEP = 150


@scenario(
    family="clog_dancing_tap_aux_weight_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CLOG_STEP,
    note="Clog-dancing tap-loudness regressor (ReLU MLP on shoe-plate accelerometer features, "
    "MSE, SGD Nesterov, clipping at 1). On the step the config is hot-reloaded (150) the loss "
    "weight 0.5 is read from the percent field as 500: one gradient about 1000x the usual, "
    "the batch itself is ordinary; clipping keeps the run going.",
)
def h466_clog_dancing_loss_weight_reload(ctx) -> None:
    gen = seeded(4666)
    model = _Net(10, 48, 1)
    data = _readings(gen, 64, 10, seed=4666)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (500.0 if step == CLOG_STEP else 0.5)

    losses, norms = _loop(ctx, model, opt, data, 240, F.mse_loss, backprop=backprop, clip=1.0)
    k = CLOG_STEP
    ctx.check("gradient at the step over 300x the median", norms[k] > 300 * _median(norms[:k]))
    ctx.check(
        "the batch's loss is ordinary (under 3x the median)",
        losses[k] < 3 * _median(losses[k - 30 : k]),
    )
    ctx.check("trained", _fell(losses))


# -- 7. Adam second moment: an accumulation divisor read as 1e-4 -------------------------------------

GLACIER_STEP = 90


@scenario(
    family="glacier_calving_iceberg_volume_accum_divisor_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=GLACIER_STEP,
    note="Glacier-calving iceberg-volume regressor (GELU MLP on terminus-height, melt and tide "
    "features, MSE, AdamW). On the resume step (90) the accumulation divisor is read from the "
    "wrong config key and is 1e-6 (the epsilon) instead of 1: one gradient 1e6x too large fills "
    "Adam's second moment and the updates stall for hundreds of steps.",
)
def h466_glacier_calving_accum_divisor(ctx) -> None:
    def run(bug, attach):
        gen = seeded(4667)
        model = _Net(10, 48, 1, act=nn.GELU)
        data = _readings(gen, 64, 10, seed=4667)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        moves, prev = [], [p.detach().clone() for p in model.parameters()]

        def after(step):
            now = [p.detach().clone() for p in model.parameters()]
            moves.append(
                math.sqrt(sum(float((a - b).norm() ** 2) for a, b in zip(now, prev, strict=True)))
            )
            prev[:] = now

        losses, norms = _loop(
            ctx,
            model,
            opt,
            data,
            260,
            F.mse_loss,
            backprop=lambda s, loss: loss / 1e-6 if bug and s == GLACIER_STEP else loss,
            after=after,
            attach=attach,
        )
        return losses, norms, moves

    ref_losses, _, _ = run(False, False)
    losses, norms, moves = run(True, True)
    k = GLACIER_STEP
    ctx.check("gradient over 1e3x the median at the step", norms[k] > 1e3 * _median(norms[:k]))
    ctx.check(
        "updates 40-140 steps later under 1/20 of those before",
        _mean(moves[k + 40 : k + 140]) < _mean(moves[k - 40 : k]) / 20,
    )
    ctx.check(
        "loss at the end over 1.5x the clean run's",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )


# -- 8. plasticity: raw, unstandardised gauge readings kill the ReLUs ---------------------------------


def _raw_staves(gen, batch, seed):
    """Stave thickness (mm), moisture (%), steam minutes...: positive raw readings around 20-60."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    centre = 20 + 40 * torch.rand(8, generator=g)
    while True:
        z = torch.randn(batch, 8, generator=gen)
        x = centre + 5 * z
        yield x, torch.tanh(z @ w / math.sqrt(8)) + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="cooper_barrel_stave_bend_raw_input_relu_net",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="Cooper's barrel-stave bend regressor (ReLU MLP, MSE, Adam at 3e-2 from a recipe for "
    "standardised inputs). The input standardisation step was skipped, so the raw readings "
    "(20-60 mm, %, minutes) go in: the first updates move fc1's pre-activations by tens, push "
    "them negative for every input and over 90% of the first-layer ReLUs die for good.",
)
def h466_cooper_barrel_raw_inputs(ctx) -> None:
    gen = seeded(4668)
    model = _Net(8, 64, 1)
    data = _raw_staves(gen, 64, seed=4668)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    probe, _ = next(_raw_staves(torch.Generator().manual_seed(1), 256, seed=4668))
    dead = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.act1(model.fc1(probe))))

    losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss, after=after)
    ctx.check("over 80% of fc1's ReLUs dead at the end", dead[-1] > 0.8)
    ctx.check("dead from early on and staying dead", min(dead[50:]) > 0.8)
    ctx.check("finite", _finite(losses))


# -- 9. softmax collapse: a temperature typed 0.01 for 100 ---------------------------------------------


class _Temperature(nn.Module):
    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, z):
        return z / self.t


class _SootNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=6, t=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(hidden, classes)
        self.temperature = _Temperature(t)

    def forward(self, x):
        return self.temperature(self.head(self.act1(self.fc1(x))))


@scenario(
    family="chimney_sweep_soot_grade_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("temperature",),
    diverges=None,
    heldout=True,
    note="Chimney-sweep soot-grade classifier (tanh MLP on flue-draught and deposit-thickness "
    "features, cross-entropy, Adagrad). The softening temperature from the distillation config "
    "(T = 100, logits / T) is typed 0.01: the logits are 100x too sharp and the float32 softmax "
    "rounds most rows to exactly 0/1.",
)
def h466_chimney_sweep_temperature_typo(ctx) -> None:
    gen = seeded(4669)
    model = _SootNet(t=0.01)
    data = _grades(gen, 64, 12, 6, seed=4669, spread=0.9)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(2), 256, 12, 6, seed=4669))
    coll = []

    def after(step):
        with torch.no_grad():
            coll.append(collapsed_fraction(model(probe_x), probe_y))

    losses, _ = _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True, after=after)
    with torch.no_grad():
        plain = collapsed_fraction(model(probe_x) * 0.01, probe_y)
    ctx.check("over half the rows give the target exactly 1.0", _mean(coll[-20:]) > 0.5)
    ctx.check("at T = 1 the same weights give none", plain < 0.05)
    ctx.check("finite", _finite(losses))


# -- 10. exploding gradients: an IRNN identity init scaled 1.3 ------------------------------------------


class _Elman(nn.Module):
    def __init__(self, d_in=3, hidden=32, gain=1.3):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.rec.bias.zero_()
            nn.init.normal_(self.inp.weight, std=0.05)
            nn.init.zeros_(self.inp.bias)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _swings(gen, batch, length=24):
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        yield x, torch.tanh(x[:, -6:, 0].mean(1) - x[:, -6:, 1].mean(1))


@scenario(
    family="dowsing_rod_swing_deep_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Dowsing-rod swing regressor (a hand-written ReLU Elman RNN over 24 steps of rod-angle "
    "readings, IRNN identity init for the recurrent weights, MSE, plain SGD). The identity is "
    "scaled by 1.3 (a gain copied from a tanh init recipe) instead of 1.0: the state and the "
    "gradients grow through time, the first step's gradient reaches the first state hundreds "
    "of times larger than the last. The lr was lowered to 3e-6 until it stopped NaN-ing, so the "
    "run limps on with huge, erratic gradients.",
)
def h466_dowsing_rod_irnn_gain(ctx) -> None:
    gen = seeded(46610)
    model = _Elman(gain=1.3)
    data = _swings(gen, 32)
    opt = torch.optim.SGD(model.parameters(), lr=3e-6)
    ratio = []

    def backprop(step, loss):
        if step == 0:
            loss.backward(retain_graph=True)
            s = model.states
            ratio.append(float(s[0].grad.norm() / (s[-1].grad.norm() + 1e-30)))
            opt.zero_grad(set_to_none=True)
        return loss

    losses, norms = _loop(ctx, model, opt, data, 150, F.mse_loss, backprop=backprop)
    ctx.check("gradient at step 0 over 100x at the first state than the last", ratio[0] > 100)
    ctx.check(
        "gradient at the start over 30x the median of the last 50 steps",
        norms[0] > 30 * _median(norms[-50:]),
    )
    ctx.check("finite", _finite(losses))


# -- healthy 1: a neural collaborative-filtering recommender ----------------------------------------


class _NCF(nn.Module):
    def __init__(self, users, items, dim=16, hidden=32):
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.item = nn.Embedding(items, dim)
        self.fc1 = nn.Linear(2 * dim, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden // 2)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(hidden // 2, 1)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    def forward(self, pairs):
        h = torch.cat([self.user(pairs[:, 0]), self.item(pairs[:, 1])], -1)
        return self.out(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


@scenario(
    family="hang_glider_thermal_venue_ncf_recommender",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hang-glider launch-site recommender (neural collaborative filtering: pilot and site "
    "embeddings, an MLP over their concatenation, BCE on implicit 'flew there' feedback with 4 "
    "sampled negatives per positive, Adam). Each batch touches only its own pilots and sites: "
    "most embedding rows get no gradient at most steps. Trains normally.",
)
def h466_hang_glider_ncf_healthy(ctx) -> None:
    gen = seeded(46611)
    users, items = 600, 400
    g = torch.Generator().manual_seed(46611)
    taste = torch.randn(users, 6, generator=g)
    trait = torch.randn(items, 6, generator=g)
    score = taste @ trait.T
    pos = (score > score.quantile(0.9, dim=1, keepdim=True)).nonzero()

    def data():
        while True:
            p = pos[torch.randint(0, len(pos), (32,), generator=gen)]
            neg_u = p[:, 0].repeat(4)
            neg_i = torch.randint(0, items, (128,), generator=gen)
            pairs = torch.cat([p, torch.stack([neg_u, neg_i], 1)])
            yield pairs, torch.cat([torch.ones(32), torch.zeros(128)])

    model = _NCF(users, items)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    touched = []

    def after(step):
        gr = model.user.weight.grad
        touched.append(float((gr.abs().sum(1) > 0).float().mean()))

    losses, _ = _loop(ctx, model, opt, data(), 300, F.binary_cross_entropy_with_logits, after=after)
    ctx.check("loss fell", _fell(losses, ratio=0.85))
    ctx.check("finite", _finite(losses))
    ctx.check("under 20% of pilot rows get a gradient at each step", max(touched) < 0.2)


# -- healthy 2: a tied-weight autoencoder under ReduceLROnPlateau -------------------------------------


class _TiedAE(nn.Module):
    """Encoder Linear; the decoder reuses the encoder's weight transposed (tied weights)."""

    def __init__(self, d_in=32, code=10):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.T, self.dec_bias)


@scenario(
    family="marimba_bar_tuning_tied_autoencoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Marimba bar-tuning spectrum autoencoder (32 partial amplitudes of a struck rosewood "
    "bar, a tanh code of 10, decoder tied to the encoder's weight, Huber loss, AdamW with "
    "ReduceLROnPlateau and clipping at 1, noisy batches). Trains normally.",
)
def h466_marimba_tied_autoencoder_healthy(ctx) -> None:
    gen = seeded(46612)
    g = torch.Generator().manual_seed(46612)
    basis = torch.randn(6, 32, generator=g) / math.sqrt(6)

    def data():
        while True:
            z = torch.randn(64, 6, generator=gen)
            yield (z @ basis + 0.1 * torch.randn(64, 32, generator=gen),) * 2

    model = _TiedAE()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    seen = []

    def after(step):
        seen.append(ctx.losses[-1] if ctx.losses else 0.0)
        plateau.step(seen[-1])

    losses, _ = _loop(ctx, model, opt, data(), 250, F.huber_loss, clip=1.0, after=after)
    ctx.check("loss fell under half", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))


# -- healthy 3: a Gaussian-NLL regressor with warm-up, cosine, accumulation -------------------------


class _JumpNet(nn.Module):
    def __init__(self, d_in=7, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="kiteboard_jump_height_gaussian_nll_net",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kiteboard jump-height regressor (SiLU MLP giving mean and log-variance, Gaussian NLL, "
    "SGD momentum with linear warm-up then cosine decay, accumulation over 2 batches, clipping "
    "at 2, noisy wind-gust batches). Trains normally.",
)
def h466_kiteboard_gaussian_nll_healthy(ctx) -> None:
    gen = seeded(46613)
    g = torch.Generator().manual_seed(46613)
    w = torch.randn(7, generator=g)

    def data():
        while True:
            x = torch.randn(32, 7, generator=gen)
            gust = 0.1 + 0.4 * torch.rand(32, generator=gen) * (x[:, 0] > 0)
            yield x, torch.tanh(x @ w / 2.6) + gust * torch.randn(32, generator=gen)

    model = _JumpNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    total, warm = 200, 20

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses, _ = _loop(
        ctx, model, opt, data(), total, _gauss_nll, sched=sched, accumulate=2, clip=2.0
    )
    ctx.check("NLL fell by over 0.5 nats", _mean(losses[-20:]) < _mean(losses[:10]) - 0.5)
    ctx.check("finite", _finite(losses))
