"""Held-out set 470 (``h470_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a hops-kiln drying-time tanh regressor whose LambdaLR warm-up peak factor is typed 10 for
1 (full-batch SGD; the lr climbs past 2 / sharpness and the loss blows up), a dressage
piaffe-grade cosine classifier whose cosine scale is typed 1000 for 10 (softmax saturates, SGD
momentum), a cicada-chorus species classifier trained on a sequence of tasks (new sites every
80 steps) whose Adam lr is typed 1e-1 for 1e-3 (hidden ReLUs die and later tasks barely learn),
a cheese-press whey-yield regressor under fp16 autocast whose press-pressure column switches
from bar to pascals after a firmware update (fp16 activations overflow, NAdam with GradScaler),
a lahar runout deep tanh regressor with orthogonal init gain typed 3 for 1 (gradients grow
through depth, RMSprop, clipped), a hammock weave-sag regressor fed one shard with a -9999
sentinel (Adagrad), a dust-devil heading net normalising the wind vector with no eps (a calm
reading gives 0/0, Adamax), a kulning herding-call reach Huber regressor whose loss-weight table
reads 1000 for 1.0 on one step (SGD Nesterov, clipped), a mudflow levee-breach regressor whose
hand-written loss scale is not divided back on one step (AdamW's second moment poisoned) and a
gongfu tea-steep two-group regressor whose stem lr multiplier is typed 1e-6 for 1e-1 (RAdam).

Controls: a firefly flash-pattern classifier on the same kind of task sequence with experience
replay (Adam; the loss jumps at each switch and recovers); an erhu bow-pressure Conv1d classifier
(fp16 autocast with GradScaler, SGD momentum, OneCycleLR, label smoothing, clipping); a pingo
ice-core tied-weight autoencoder (Adagrad param groups, ReduceLROnPlateau, accumulation over 2,
clipping).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


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
    scaler=None,
    amp=False,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            if scaler is not None:
                scaler.scale(total / accumulate).backward()
            else:
                (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
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


# -- 1. sharpness: a warm-up end_factor typed 10 for 1 ----------------------------------------------

HOPS_WARMUP = 100
HOPS_BASE = 0.2
# the warm-up factor 0.1 + 9.9 t / 100 passes the intended 1.0 at t = 10
HOPS_ONSET = 10


@scenario(
    family="hops_kiln_drying_time_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=HOPS_ONSET,
    note="Hops-kiln drying-time regressor (tanh MLP on bed depth, air temperature, humidity and "
    "cone moisture features, MSE, full-batch SGD with a linear LambdaLR warm-up). The warm-up's "
    "peak factor is typed 10.0 for 1.0: past step 10 the lr keeps climbing above the intended "
    "peak, lr * sharpness crosses 2 and the loss oscillates and blows up.",
)
def h470_hops_kiln_warmup_end_factor_typo(ctx) -> None:
    gen = seeded(4701)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4701)
    x, y = next(data)
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=HOPS_BASE)
    peak = 10.0  # typed for 1.0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.1 + (peak - 0.1) * min(t / HOPS_WARMUP, 1.0)
    )
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 10 == 0:
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 200, F.mse_loss, before=before, sched=sched)
    low = min(losses[:60])
    blow = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * low), None)
    over = [s for s in sorted(sharp) if lrs[s] * sharp[s] > 2.0]
    ctx.check("lr * sharpness under 2 at step 0", lrs[0] * sharp[0] < 2.0)
    ctx.check(
        "lr * sharpness over 2 before the blow-up",
        bool(over) and blow is not None and over[0] <= blow,
    )
    ctx.check("the loss blows up over 100x its lowest", blow is not None and blow > HOPS_ONSET)
    ctx.check("trained before it", low < 0.5 * losses[0])


# -- 2. softmax collapse: a cosine-classifier scale typed 1000 for 10 -------------------------------


class _CosineGrader(nn.Module):
    """A GELU trunk and a cosine-similarity head: logits = s * cos(feature, class weight)."""

    def __init__(self, d_in=12, hidden=48, classes=5, scale=10.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes, bias=False)
        self.scale = scale

    def cosines(self, x):
        h = F.normalize(self.act2(self.fc2(self.act1(self.fc1(x)))), dim=-1)
        return h @ F.normalize(self.head.weight, dim=-1).T

    def forward(self, x):
        return self.scale * self.cosines(x)


@scenario(
    family="dressage_piaffe_grade_cosine_classifier",
    optimizer="SGD momentum",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Dressage piaffe grader (GELU trunk over hoof-timing and cadence features, a "
    "cosine-similarity head, cross-entropy, SGD momentum). The cosine scale is typed 1000 for "
    "10: the logits span +-1000, the softmax saturates and most rows' target probability rounds "
    "to exactly 1.0 in float32.",
)
def h470_dressage_cosine_scale_typo(ctx) -> None:
    gen = seeded(4702)
    model = _CosineGrader(scale=1000.0)
    data = _grades(gen, 64, 12, 5, seed=4702)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses, _ = _loop(ctx, model, opt, data, 160, F.cross_entropy, classifier=True)
    x, y = next(data)
    with torch.no_grad():
        cos = model.cosines(x)
        at_typo = collapsed_fraction(1000.0 * cos, y)
        at_ten = collapsed_fraction(10.0 * cos, y)
    ctx.check("over half the rows' target probability exactly 1.0", at_typo > 0.5)
    ctx.check("under 5% at the intended scale 10 with the same weights", at_ten < 0.05)
    ctx.check("the loss stays finite", _finite(losses))


# -- 3. plasticity: a task sequence under an Adam lr typed 3e-2 for 3e-4 ----------------------------

TASK_LEN = 80
LR_INTENDED, LR_TYPED = 1e-3, 1e-1
TASKS = 3


def _site_tasks(gen, batch, d_in, classes, seed, replay=0.0):
    """A sequence of tasks: every TASK_LEN batches a new recording site with new species
    prototypes (same label slots). With ``replay`` a share of each batch is drawn from the
    earlier sites (experience replay)."""
    g = torch.Generator().manual_seed(seed)
    protos = [1.3 * torch.randn(classes, d_in, generator=g) for _ in range(TASKS)]
    n = 0
    while True:
        task = min(n // TASK_LEN, TASKS - 1)
        y = torch.randint(0, classes, (batch,), generator=gen)
        t = torch.full((batch,), task)
        if replay > 0 and task > 0:
            k = int(replay * batch)
            t[:k] = torch.randint(0, task, (k,), generator=gen)
        x = torch.stack([protos[int(t[i])][y[i]] for i in range(batch)])
        n += 1
        yield x + 0.8 * torch.randn(batch, d_in, generator=gen), y


def _task_probe(seed, d_in, classes, task):
    g = torch.Generator().manual_seed(seed)
    protos = [1.3 * torch.randn(classes, d_in, generator=g) for _ in range(TASKS)]
    gp = torch.Generator().manual_seed(seed + 99)
    y = torch.randint(0, classes, (256,), generator=gp)
    return protos[task][y] + 0.8 * torch.randn(256, d_in, generator=gp), y


@scenario(
    family="cicada_chorus_species_task_sequence_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Cicada-chorus species classifier (ReLU MLP on song-band energy features) trained on a "
    "sequence of recording sites, a new site with new species every 80 steps, cross-entropy, "
    "Adam. The lr is typed 1e-1 for 1e-3: the large early steps push most of the second "
    "hidden layer's ReLUs negative for every input, they never revive, and the later sites are "
    "learnt far worse than with the intended lr.",
)
def h470_cicada_task_sequence_dead_relus(ctx) -> None:
    def run(lr, attach):
        gen = seeded(4703)
        model = _Net(16, 64, 6)
        data = _site_tasks(gen, 64, 16, 6, seed=4703)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        xp = torch.cat([_task_probe(4703, 16, 6, t)[0] for t in range(TASKS)])
        dead_units = {}

        def after(step):
            if (step + 1) % TASK_LEN == 0:
                with torch.no_grad():
                    h = model.features(xp)
                dead_units[step // TASK_LEN] = (h <= 0).all(0)

        losses, _ = _loop(
            ctx,
            model,
            opt,
            data,
            TASK_LEN * TASKS,
            F.cross_entropy,
            classifier=True,
            attach=attach,
            after=after,
        )
        return losses, dead_units

    ref_losses, ref_units = run(LR_INTENDED, False)
    losses, units = run(LR_TYPED, True)
    dead = float(units[TASKS - 1].float().mean())
    ref_dead = float(ref_units[TASKS - 1].float().mean())
    first = units[0]
    revived = float((first & ~units[TASKS - 1]).sum()) / max(float(first.sum()), 1.0)
    ctx.check("over half of act2's units dead at the end", dead > 0.5)
    ctx.check("under 15% dead at the intended lr", ref_dead < 0.15)
    ctx.check(
        "more of act2 dead after the last site than after the first",
        dead > float(first.float().mean()),
    )
    ctx.check("under 10% of the units dead after the first site revive", revived < 0.1)
    ctx.check(
        "the last site's loss over 1.5x the intended run's",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )


# -- 4. amp overflow: a pressure column switched from bar to pascals under fp16 autocast -----------

CHEESE_ONSET = 110


@scenario(
    family="cheese_press_whey_yield_fp16_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=CHEESE_ONSET,
    heldout=True,
    onset=CHEESE_ONSET,
    note="Cheese-press whey-yield regressor (SiLU MLP on press pressure, curd temperature and "
    "hoop fill, MSE, fp16 autocast with a GradScaler, NAdam). After a press-controller firmware "
    "update at step 110 the pressure column arrives in pascals instead of bar (x1e5) with no "
    "rescaling: fc1's fp16 output overflows past 65504 to inf (float32 would stay finite) and "
    "the loss is non-finite.",
)
def h470_cheese_press_pascal_fp16_overflow(ctx) -> None:
    gen = seeded(4704)
    model = _Net(8, 48, 1, act=nn.SiLU)
    data = _readings(gen, 64, 8, seed=4704)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    seen = {}

    def alter(step, x, y):
        if step >= CHEESE_ONSET:
            x = x.clone()
            x[:, 0] = 1e5 * (x[:, 0] + 3.0)
            x[:, 1] = 1e5 * (x[:, 1] + 3.0)
            if step == CHEESE_ONSET:
                with torch.no_grad():
                    with torch.autocast("cpu", dtype=torch.float16):
                        seen["fp16"] = model.fc1(x)
                    seen["fp32"] = model.fc1(x)
        return x, y

    losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss, alter=alter, scaler=scaler, amp=True)
    ctx.check("trained in fp16 before the switch", _fell(losses[:CHEESE_ONSET]))
    ctx.check(
        "fc1's fp16 output not finite at the switch",
        "fp16" in seen and not bool(torch.isfinite(seen["fp16"]).all()),
    )
    ctx.check(
        "fc1's float32 output finite on the same batch",
        "fp32" in seen and bool(torch.isfinite(seen["fp32"]).all()),
    )
    ctx.check(
        "the loss non-finite at the switch",
        len(losses) > CHEESE_ONSET and not math.isfinite(losses[CHEESE_ONSET]),
    )


# -- 5. exploding gradients: orthogonal init gain typed 3 for 1 -------------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in=8, width=32, depth=10, gain=1.0):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        for m in [self.stem, *self.layers]:
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return self.head(h).squeeze(-1)


@scenario(
    family="lahar_runout_deep_tanh_regressor",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0", "stem"),
    diverges=None,
    heldout=True,
    note="Lahar runout regressor (a ten-layer tanh MLP on slope, volume, sediment-fraction and "
    "channel-width features, MSE, RMSprop, gradients clipped at 1). The orthogonal init gain "
    "is typed 3.0 for 1.0: the backward pass multiplies the gradient at every layer and the "
    "first layers' gradients are many times the last's.",
)
def h470_lahar_init_gain_typo(ctx) -> None:
    def run(gain, attach):
        gen = seeded(4705)
        model = _DeepTanh(gain=gain)
        data = _readings(gen, 64, 8, seed=4705)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        losses, _ = _loop(ctx, model, opt, data, 150, F.mse_loss, clip=1.0, attach=attach)
        x, y = next(data)
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        first = float(model.layers[0].weight.grad.norm())
        return losses, first / max(float(model.layers[-1].weight.grad.norm()), 1e-30)

    ref_losses, ref_ratio = run(1.0, False)
    losses, ratio = run(3.0, True)
    ctx.check("layers.0's gradient over 10x layers.9's", ratio > 10)
    ctx.check("under 3x at gain 1", ref_ratio < 3)
    ctx.check("the gain-1 run trains", _fell(ref_losses))


# -- 6. data outlier: one shard with a -9999 sentinel -----------------------------------------------

HAMMOCK_ONSET = 120


@scenario(
    family="hammock_weave_sag_relu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=HAMMOCK_ONSET,
    note="Hammock weave-sag regressor (ReLU MLP on cord gauge, weave density, span and load "
    "features, MSE, Adagrad). One shard at step 120 comes from a logger that writes -9999 for "
    "a missing span reading; nothing filters it: the loss and gradient spike on that batch and "
    "the run recovers.",
)
def h470_hammock_sentinel_shard(ctx) -> None:
    gen = seeded(4706)
    model = _Net(8, 48, 1)
    data = _readings(gen, 64, 8, seed=4706)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)

    def alter(step, x, y):
        if step == HAMMOCK_ONSET:
            x = x.clone()
            x[:8, 2] = -9999.0
        return x, y

    losses, norms = _loop(ctx, model, opt, data, 240, F.mse_loss, alter=alter)
    before = losses[HAMMOCK_ONSET - 20 : HAMMOCK_ONSET]
    ctx.check(
        "loss at the shard over 20x the 20 steps before", losses[HAMMOCK_ONSET] > 20 * _mean(before)
    )
    ctx.check(
        "gradient at the shard over 10x the median before",
        norms[HAMMOCK_ONSET] > 10 * _median(norms[HAMMOCK_ONSET - 20 : HAMMOCK_ONSET]),
    )
    ctx.check("recovers to under 2x its level before", _mean(losses[-20:]) < 2 * _mean(before))
    ctx.check("finite throughout", _finite(losses))


# -- 7. nonfinite: a wind vector normalised with no eps ---------------------------------------------

DUST_ONSET = 90


class _Heading(nn.Module):
    """Unit wind direction: (u, v) / |(u, v)|, written out with no eps."""

    def forward(self, uv):
        return uv / uv.pow(2).sum(-1, keepdim=True).sqrt()


class _DustDevilNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.direction = _Heading()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        x = torch.cat([self.direction(x[:, :2]), x[:, 2:]], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    family="dust_devil_heading_direction_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("direction",),
    diverges=DUST_ONSET,
    heldout=True,
    onset=DUST_ONSET,
    note="Dust-devil heading net (SiLU MLP on the ambient wind direction and surface-heating "
    "features, predicting the vortex drift, MSE, Adamax). The wind vector is normalised as "
    "uv / |uv| with no eps; at step 90 a calm reading (u = v = 0) gives 0/0 and the loss is NaN.",
)
def h470_dust_devil_calm_zero_over_zero(ctx) -> None:
    gen = seeded(4707)
    model = _DustDevilNet()
    data = _readings(gen, 64, 8, seed=4707)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    nan_out = {}

    def alter(step, x, y):
        if step == DUST_ONSET:
            x = x.clone()
            x[3, :2] = 0.0
            with torch.no_grad():
                nan_out["dir"] = bool(torch.isnan(model.direction(x[:, :2])).any())
        return x, y

    losses, _ = _loop(ctx, model, opt, data, 160, F.mse_loss, alter=alter)
    ctx.check("finite before the calm reading", _finite(losses[:DUST_ONSET]))
    ctx.check("direction gives NaN on the calm row", nan_out.get("dir", False))
    ctx.check(
        "the loss NaN at the calm reading",
        len(losses) > DUST_ONSET and math.isnan(losses[DUST_ONSET]),
    )
    ctx.check("trained before it", _fell(losses[:DUST_ONSET]))


# -- 8. gradient spike: a loss-weight table row typed 1000 for 1.0 ----------------------------------

KULNING_ONSET = 150


@scenario(
    family="kulning_herding_call_reach_tanh_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=KULNING_ONSET,
    note="Kulning herding-call reach regressor (tanh MLP on call pitch, loudness, wind and "
    "terrain features, Huber loss, SGD Nesterov, gradients clipped at 1). The per-step "
    "loss-weight table of a curriculum has one row typed 1000 for 1.0 at step 150: that step's "
    "backpropagated loss is 1000x an ordinary logged loss, the gradient bursts, clipping "
    "contains it and the run goes on.",
)
def h470_kulning_loss_weight_row_typo(ctx) -> None:
    gen = seeded(4708)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 64, 8, seed=4708)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    weights = [1.0] * 260
    weights[KULNING_ONSET] = 1000.0  # typed for 1.0

    losses, norms = _loop(
        ctx,
        model,
        opt,
        data,
        260,
        F.huber_loss,
        clip=1.0,
        backprop=lambda step, loss: weights[step] * loss,
    )
    before = norms[KULNING_ONSET - 30 : KULNING_ONSET]
    ctx.check(
        "gradient over 50x the median at the step", norms[KULNING_ONSET] > 50 * _median(before)
    )
    ctx.check(
        "the logged loss at the step ordinary (under 2x the median before)",
        losses[KULNING_ONSET] < 2 * _median(losses[KULNING_ONSET - 30 : KULNING_ONSET]),
    )
    ctx.check(
        "recovers: last 20 under 1.5x the 20 before the step",
        _mean(losses[-20:]) < 1.5 * _mean(losses[KULNING_ONSET - 20 : KULNING_ONSET]),
    )
    ctx.check("finite throughout", _finite(losses))


# -- 9. Adam's second moment: a hand-written loss scale not divided back ----------------------------

MUDFLOW_ONSET = 80


@scenario(
    family="mudflow_levee_breach_gelu_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=MUDFLOW_ONSET,
    note="Mudflow levee-breach regressor (GELU MLP on levee height, saturation, flow depth and "
    "debris features, MSE, AdamW). The hand-written loss scaling from an old fp16 path "
    "multiplies the loss by 2**16 and the division back is skipped on the step after a "
    "checkpoint resume (step 80): one gradient 65536x too large fills Adam's second moment and "
    "the updates stall for the rest of the run.",
)
def h470_mudflow_unscaled_resume_step(ctx) -> None:
    def run(bug, attach):
        gen = seeded(4709)
        model = _Net(8, 48, 1, act=nn.GELU)
        data = _readings(gen, 64, 8, seed=4709)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        moves, prev = [], [_flat(model)]

        def after(step):
            now = _flat(model)
            moves.append(float((now - prev[0]).norm()))
            prev[0] = now

        def backprop(step, loss):
            return loss * 2.0**16 if bug and step == MUDFLOW_ONSET else loss

        losses, norms = _loop(
            ctx,
            model,
            opt,
            data,
            240,
            F.mse_loss,
            backprop=backprop,
            after=after,
            attach=attach,
        )
        return losses, norms, moves

    ref_losses, _, _ = run(False, False)
    losses, norms, moves = run(True, True)
    ctx.check(
        "gradient at the resume step over 1e4x the median before",
        norms[MUDFLOW_ONSET] > 1e4 * _median(norms[MUDFLOW_ONSET - 30 : MUDFLOW_ONSET]),
    )
    ctx.check(
        "updates 40-140 steps later under 1/10 of those before",
        _mean(moves[MUDFLOW_ONSET + 40 : MUDFLOW_ONSET + 140])
        < _mean(moves[MUDFLOW_ONSET - 40 : MUDFLOW_ONSET]) / 10,
    )
    ctx.check(
        "the loss over the last 20 over 1.5x the clean run's",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )
    ctx.check("finite throughout", _finite(losses))


# -- 10. update ratio: a stem lr multiplier typed 1e-6 for 1e-1 -------------------------------------


@scenario(
    family="gongfu_tea_steep_two_group_relu_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Gongfu tea steep-strength regressor (ReLU MLP on leaf mass, water temperature, infusion "
    "count and steep time, Huber loss, RAdam with two param groups: a fine-tuned stem fc1 at "
    "lr * mult and the rest at lr). The stem's multiplier is typed 1e-6 for 1e-1: fc1 receives "
    "gradients but its weights barely move relative to their size.",
)
def h470_gongfu_stem_mult_typo(ctx) -> None:
    gen = seeded(4710)
    model = _Net(8, 48, 1)
    data = _readings(gen, 64, 8, seed=4710)
    lr = 3e-3
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.RAdam(
        [{"params": model.fc1.parameters(), "lr": lr * 1e-6}, {"params": rest, "lr": lr}]
    )
    fc1_0, head_0 = _flat(model.fc1), _flat(model.head)
    grads = []

    def backprop(step, loss):
        loss.backward(retain_graph=True, inputs=[model.fc1.weight])
        grads.append(float(model.fc1.weight.grad.norm()))
        model.fc1.weight.grad = None
        return loss

    losses, _ = _loop(ctx, model, opt, data, 200, F.huber_loss, backprop=backprop)
    fc1_move = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    head_move = float((_flat(model.head) - head_0).norm() / head_0.norm())
    ctx.check("fc1 moved under 1e-5 of its norm", fc1_move < 1e-5)
    ctx.check("the head moved over 5% of its norm", head_move > 0.05)
    ctx.check("fc1 receives gradients (median norm over 1e-3)", _median(grads) > 1e-3)
    ctx.check("finite throughout", _finite(losses))


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="firefly_flash_pattern_replay_task_sequence_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Firefly flash-pattern classifier (ReLU MLP on flash-interval features) trained on a "
    "sequence of meadows, a new meadow with new species every 80 steps, with experience replay "
    "(a quarter of each batch drawn from earlier meadows), cross-entropy, Adam at 1e-3. The loss "
    "jumps at each switch and recovers within the task.",
)
def h470_firefly_task_sequence_replay_control(ctx) -> None:
    gen = seeded(4711)
    model = _Net(16, 64, 6)
    data = _site_tasks(gen, 64, 16, 6, seed=4711, replay=0.25)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, _ = _loop(ctx, model, opt, data, TASK_LEN * TASKS, F.cross_entropy, classifier=True)
    ctx.check("finite throughout", _finite(losses))
    for t in range(1, TASKS):
        s = t * TASK_LEN
        jump = _mean(losses[s : s + 3])
        ctx.check(f"the loss jumps over 2x at switch {t}", jump > 2 * _mean(losses[s - 10 : s]))
        ctx.check(
            f"and recovers under 0.3x the jump by the end of task {t}",
            _mean(losses[s + TASK_LEN - 10 : s + TASK_LEN]) < 0.3 * jump,
        )
    ctx.check("the first task trained", _fell(losses[:TASK_LEN]))


class _BowConv(nn.Module):
    """Conv1d classifier over a bow-pressure trace (one channel, 32 samples)."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act1(self.conv1(x[:, None]))
        h = F.max_pool1d(h, 2)
        h = self.act2(self.conv2(h))
        return self.head(h.mean(-1))


def _bow_traces(gen, batch, classes=4):
    """Bowing strokes: the class sets the pressure envelope's shape and its tremble rate."""
    t = torch.linspace(0, 1, 32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = 2.0 + 3.0 * y.float()
        env = torch.where(y[:, None] % 2 == 0, t, 1 - t)
        x = env * torch.sin(2 * math.pi * rate[:, None] * t) + 0.3 * torch.randn(
            batch, 32, generator=gen
        )
        yield x, y


@scenario(
    family="erhu_bow_pressure_fp16_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Erhu bow-pressure stroke classifier (ReLU Conv1d over noisy pressure traces, "
    "cross-entropy with label smoothing 0.1, fp16 autocast with a GradScaler, SGD momentum "
    "under OneCycleLR, gradients clipped at 1 after unscaling). A normal mixed-precision run.",
)
def h470_erhu_fp16_onecycle_control(ctx) -> None:
    gen = seeded(4712)
    model = _BowConv()
    data = _bow_traces(gen, 64)
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        data,
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("the loss fell under 0.6x its start", _fell(losses, ratio=0.6))


class _TiedAutoencoder(nn.Module):
    """Encoder weights reused transposed by the decoder (tied), tanh code."""

    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.T, self.dec_bias)


def _ice_cores(gen, batch, d_in=16, rank=4, seed=4713):
    """Ice-core layer profiles: a few latent factors (season, dust, melt, age) plus noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d_in, generator=g) / math.sqrt(rank)
    while True:
        z = torch.randn(batch, rank, generator=gen)
        x = torch.tanh(z @ basis) + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="pingo_ice_core_tied_autoencoder",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Pingo ice-core profile tied-weight autoencoder (tanh code, decoder reuses the encoder "
    "weight transposed, MSE, Adagrad with two param groups, ReduceLROnPlateau on the loss, "
    "accumulation over 2, clipping at 1). A normal run.",
)
def h470_pingo_tied_autoencoder_control(ctx) -> None:
    gen = seeded(4713)
    model = _TiedAutoencoder()
    data = _ice_cores(gen, 32)
    opt = torch.optim.Adagrad(
        [
            {"params": model.enc.parameters(), "lr": 0.05},
            {"params": [model.dec_bias], "lr": 0.02},
        ]
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    seen = []

    def after(step):
        seen.append(ctx.losses[-1])
        plateau.step(seen[-1])

    losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss, accumulate=2, clip=1.0, after=after)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("the reconstruction loss fell under 0.5x its start", _fell(losses, ratio=0.5))
