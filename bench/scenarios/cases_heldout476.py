"""Held-out set 476 (``h476_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a hurling sliotar seam-lift tanh regressor whose StepLR gamma is typed 10 for 0.1
(full-batch SGD; the lr jumps past 2 / sharpness at step 60 and the loss blows up), a lacrosse
pocket cosine classifier whose temperature is typed 0.001 for 0.1 (a logit scale of 1000, the
softmax saturates, RMSprop), a glacier-moulin plunge-pool ReLU classifier whose fc2 biases are
initialised to -3 by an init copied from a sparse-coding model (dead ReLUs, Adam), a farrier
hoof-angle Huber regressor whose static loss scale is not undone for one step after a resume
(a 1024x gradient, clipped, SGD momentum), a sled-dog gangline-tug ReLU Elman RNN whose
identity recurrent init is scaled 1.15 (gradients grow through time, SGD momentum), a geyser
eruption-interval Gaussian NLL net with a raw linear variance (log of a negative variance,
NAdam), a beekeeper swarm-cell BCE net fed one uint16-saturated reading (AdamW), a cricket-bat
willow two-group regressor whose OneCycleLR max_lr list has 0.0 for the stem (SGD Nesterov), a
foghorn diaphone Conv1d under fp16 autocast whose sum-of-squares energy pool overflows once the
clips lengthen
(Adam, GradScaler) and a kendama classifier trained with F.nll_loss on raw logits (the head's
logits grow without bound, Adagrad).

Controls: a birdsong dialect classifier around a hand-written associative-memory layer (softmax
retrieval over stored patterns, tied keys and values, a learnt inverse temperature clamped to
[1, 30]; AdamW, warm-up and cosine, clipping); a coral-spawning night CNN with weight
standardisation and GroupNorm in place of batch norm (SGD Nesterov, cosine, label smoothing); a
sailcloth stretch Huber regressor with gradient accumulation under OneCycleLR (RMSprop).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    unscale=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``unscale(step)``
    runs on the gradients before the norm is read, ``after(step)`` runs after the optimizer
    step. Stops after a non-finite loss (once ``ctx.step`` has seen it). With ``attach=False``
    it is a reference run outside the monitor."""
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
        if unscale is not None:
            unscale(step)
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


# -- 1. sharpness: a StepLR gamma typed 10 for 0.1 --------------------------------------------------

SLIOTAR_STEP = 60
LR_SLIOTAR = 0.05


@scenario(
    family="hurling_sliotar_stitch_seam_lift_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=SLIOTAR_STEP,
    note="Hurling sliotar seam-lift regressor (tanh MLP on stitch pitch, leather thickness and "
    "cork-core features, MSE, full-batch SGD under StepLR(step_size=60)). The decay factor is "
    "typed gamma=10 for gamma=0.1: at step 60 the lr is multiplied by 10 instead of divided, "
    "lr * sharpness jumps past 2 and the loss oscillates and blows up.",
)
def h476_sliotar_steplr_gamma_typo(ctx) -> None:
    gen = seeded(4761)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4761)
    x, y = next(data)
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=LR_SLIOTAR)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=SLIOTAR_STEP, gamma=10.0)
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (SLIOTAR_STEP - 1, SLIOTAR_STEP):
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 200, F.mse_loss, before=before, sched=sched)
    k = SLIOTAR_STEP
    before_low = min(losses[:k])
    blow = next(
        (
            i
            for i, v in enumerate(losses)
            if i >= k and (not math.isfinite(v) or v > 100 * before_low)
        ),
        None,
    )
    ctx.check("lr * sharpness under 2 before the step", lrs[k - 1] * sharp[k - 1] < 2.0)
    ctx.check("lr * sharpness over 2 at the step", lrs[k] * sharp[k] > 2.0)
    ctx.check("the loss blows up over 100x its lowest after the step", blow is not None)
    ctx.check("trained first", before_low < 0.5 * losses[0])


# -- 2. softmax collapse: a temperature typed 0.001 for 0.1 -----------------------------------------


class _CosineHead(nn.Module):
    def __init__(self, dim, classes, temperature):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.temperature = temperature

    def forward(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T / self.temperature


class _PocketNet(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.fc1 = nn.Linear(14, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 32)
        self.head = _CosineHead(32, 5, temperature)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="lacrosse_mesh_pocket_whip_scale_typo_cosine_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Lacrosse mesh-pocket whip grade (ReLU MLP on pocket depth, shooting-string and "
    "channel features, a cosine-similarity head, cross-entropy, RMSprop). The head's "
    "temperature is typed 0.001 for 0.1 in the config: the logit scale is 1000 instead of 10 "
    "and most rows' softmax gives the target exactly 1.0 in float32.",
)
def h476_lacrosse_cosine_temperature_typo(ctx) -> None:
    def run(temp, attach):
        gen = seeded(4762)
        model = _PocketNet(temp)
        data = _grades(gen, 64, 14, 5, seed=4762, spread=0.8)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        losses, _ = _loop(
            ctx, model, opt, data, 150, F.cross_entropy, classifier=True, attach=attach
        )
        x, y = next(data)
        with torch.no_grad():
            return losses, collapsed_fraction(model(x), y)

    _, ref = run(0.1, False)
    losses, frac = run(0.001, True)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("under 5% at temperature 0.1", ref < 0.05)
    ctx.check("finite", _finite(losses))


# -- 3. plasticity: biases of -3 from a sparse-coding init ------------------------------------------


@scenario(
    family="glacier_moulin_plunge_pool_dead_bias_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Glacier-moulin plunge-pool regime classifier (ReLU MLP on meltwater, ice-thickness "
    "and seismic features, cross-entropy, Adam). An init helper copied from a sparse-coding "
    "model sets every hidden bias after the first layer to -3 (to start with sparse "
    "activations on inputs of a much larger scale): here fc2's pre-activations have a spread "
    "under 1, every fc2 ReLU is dead from the start, receives no gradient and stays dead.",
)
def h476_moulin_sparse_bias_init(ctx) -> None:
    def run(bug, attach):
        gen = seeded(4763)
        model = _Net(12, 48, 4)
        if bug:
            with torch.no_grad():
                model.fc2.bias.fill_(-3.0)
        data = _grades(gen, 64, 12, 4, seed=4763, spread=1.0)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        losses, _ = _loop(
            ctx, model, opt, data, 200, F.cross_entropy, classifier=True, attach=attach
        )
        x, _ = next(data)
        with torch.no_grad():
            dead = dead_fraction(model.act2(model.fc2(model.act1(model.fc1(x)))))
        return losses, dead

    ref_losses, ref_dead = run(False, False)
    losses, dead = run(True, True)
    ctx.check("over 90% of fc2's units dead at the end", dead > 0.9)
    ctx.check("under 20% dead without the bug", ref_dead < 0.2)
    ctx.check(
        "loss at the end over 2x the clean run's", _mean(losses[-20:]) > 2 * _mean(ref_losses[-20:])
    )
    ctx.check("finite", _finite(losses))


# -- 4. gradient spike: a static loss scale not undone after a resume -------------------------------

FARRIER_STEP = 150
FARRIER_SCALE = 1024.0


@scenario(
    family="farrier_hoof_angle_static_loss_scale_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=FARRIER_STEP,
    note="Farrier hoof-angle regressor (tanh MLP on hoof-wall, heel and pastern features, Huber, "
    "SGD momentum, clipping at 1). The loop uses a static loss scale of 1024 (loss * 1024 "
    "backward, gradients divided by 1024 before the step); on the first step after a "
    "checkpoint resume (step 150) the division is skipped: a 1024x gradient on an ordinary "
    "loss, bounded by the clip; the run recovers.",
)
def h476_farrier_loss_scale_not_undone(ctx) -> None:
    gen = seeded(4764)
    model = _Net(9, 48, 1, act=nn.Tanh)
    data = _readings(gen, 64, 9, seed=4764)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)

    def unscale(step):
        if step == FARRIER_STEP:
            return
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(FARRIER_SCALE)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        data,
        260,
        F.huber_loss,
        backprop=lambda s, loss: loss * FARRIER_SCALE,
        unscale=unscale,
        clip=1.0,
    )
    k = FARRIER_STEP
    ctx.check(
        "gradient over 50x the median at the step", norms[k] > 50 * _median(norms[k - 30 : k])
    )
    ctx.check("the logged loss is ordinary there", losses[k] < 2 * _median(losses[k - 30 : k]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[k - 20 : k]))
    ctx.check("trained", _mean(losses[k - 20 : k]) < 0.7 * _mean(losses[:10]))
    ctx.check("finite", _finite(losses))


# -- 5. exploding gradients: an identity recurrent init scaled 1.15 ---------------------------------


class _ElmanReLU(nn.Module):
    """A hand-written ReLU Elman RNN (IRNN style) reading tug-sensor frames."""

    def __init__(self, d_in=6, hidden=32, gain=1.0):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.ih.weight.normal_(0.0, 0.01)
            self.hh.weight.copy_(gain * torch.eye(hidden))
            self.hh.bias.zero_()

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hh.out_features)
        for t in range(x.shape[1]):
            h = F.relu(self.ih(x[:, t]) + self.hh(h))
        return self.head(h).squeeze(-1)


def _tug_series(gen, batch, seed, length=30):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, length, 6, generator=gen)
        y = torch.tanh((x @ w).mean(1))
        yield x, y


SLED_LR = 0.001
SLED_GAIN = 1.15


@scenario(
    family="sled_dog_team_gangline_tug_irnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("hh",),
    diverges="auto",
    heldout=True,
    note="Sled-dog team gangline-tug regressor (a hand-written ReLU Elman RNN over 30 frames of "
    "tug-line sensors, MSE, SGD momentum, input weights drawn with std 0.01). The IRNN identity init of the recurrent weights is "
    "multiplied by a 'gain' of 1.15 meant for the input layer: the recurrent Jacobian has "
    "spectral radius over 1, gradients grow through time and the run blows up.",
)
def h476_sled_dog_irnn_gain(ctx) -> None:
    def run(gain, attach):
        gen = seeded(4765)
        model = _ElmanReLU(gain=gain)
        data = _tug_series(gen, 32, seed=4765)
        opt = torch.optim.SGD(model.parameters(), lr=SLED_LR, momentum=0.9)
        hh, ih = [], []

        def unscale(step):
            hh.append(float(model.hh.weight.grad.norm()))
            ih.append(float(model.ih.weight.grad.norm()))

        losses, norms = _loop(
            ctx, model, opt, data, 150, F.mse_loss, unscale=unscale, attach=attach
        )
        return losses, norms, hh, ih

    ref_losses, ref_norms, _, _ = run(1.0, False)
    losses, norms, hh, ih = run(SLED_GAIN, True)
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 1e4), None)
    ctx.check("the loss blows up (over 1e4 or non-finite)", bad is not None)
    ctx.check("gradient over 100x the clean run's at the start", norms[0] > 100 * ref_norms[0])
    ctx.check("the recurrent weights' gradient over the input layer's", hh[0] > ih[0])
    ctx.check("the clean run trains", _fell(ref_losses, ratio=0.8))


# -- 6. nonfinite: log of a raw linear variance -----------------------------------------------------

GEYSER_STEP = 67


class _LogVariance(nn.Module):
    def forward(self, var):
        return torch.log(var)


class _GeyserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(48, 1)
        self.var_head = nn.Linear(48, 1)
        self.log_var = _LogVariance()
        with torch.no_grad():
            self.var_head.bias.fill_(1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        var = self.var_head(h).squeeze(-1)
        return torch.stack([self.mean_head(h).squeeze(-1), self.log_var(var)], -1)


def _gaussian_nll(out, y):
    mu, log_var = out[:, 0], out[:, 1]
    return 0.5 * (log_var + (y - mu) ** 2 / log_var.exp()).mean()


@scenario(
    family="geyser_eruption_interval_raw_variance_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("log_var", "var_head"),
    diverges=GEYSER_STEP,
    onset=GEYSER_STEP,
    heldout=True,
    note="Geyser eruption-interval net (SiLU MLP on basin pressure, pool temperature and "
    "previous-interval features, Gaussian NLL, NAdam). The variance head is a raw Linear (the "
    "softplus was left out) and its log is taken: as the fit tightens the variance of some "
    "rows crosses 0 and log of a negative number gives NaN.",
)
def h476_geyser_raw_variance_log(ctx) -> None:
    gen = seeded(4766)
    model = _GeyserNet()
    data = _readings(gen, 64, 8, seed=4766, noise=0.02)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-4)
    var_min = []
    model.var_head.register_forward_hook(lambda m, i, o: var_min.append(float(o.detach().min())))
    losses, _ = _loop(ctx, model, opt, data, 300, _gaussian_nll)
    first = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the loss NaN at the step", first == GEYSER_STEP and math.isnan(losses[first]))
    ctx.check(
        "some rows' raw variance at or below 0 at the step",
        len(var_min) > GEYSER_STEP and var_min[GEYSER_STEP] <= 0,
    )
    ctx.check("all variances positive at the start", var_min[0] > 0)
    ctx.check("trained before it", _mean(losses[first - 10 : first]) < 0.5 * losses[0])


# -- 7. data outlier: one uint16-saturated reading --------------------------------------------------

SWARM_STEP = 140


@scenario(
    family="beekeeper_swarm_cell_uint16_glitch_bce_net",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SWARM_STEP,
    note="Beekeeper swarm-cell detector (GELU MLP on hive acoustics, weight and brood-frame "
    "temperature features, BCEWithLogits, AdamW). One hive logger's acoustic channel "
    "saturates at the uint16 maximum 65535 and that record lands in the batch at step 140: "
    "one sample 65535 on a standardised feature, the loss and gradient jump; the run recovers.",
)
def h476_swarm_uint16_saturated_reading(ctx) -> None:
    gen = seeded(4767)
    g = torch.Generator().manual_seed(4767)
    w = torch.randn(10, generator=g)

    def data():
        while True:
            x = torch.randn(64, 10, generator=gen)
            yield x, (x @ w + 0.3 * torch.randn(64, generator=gen) > 0).float()

    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)

    def alter(step, x, y):
        if step == SWARM_STEP:
            x = x.clone()
            x[5, 2] = 65535.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, data(), 260, F.binary_cross_entropy_with_logits, alter=alter
    )
    k = SWARM_STEP
    ctx.check("loss over 5x the median at the step", losses[k] > 5 * _median(losses[k - 20 : k]))
    ctx.check(
        "gradient over 20x the median at the step", norms[k] > 20 * _median(norms[k - 20 : k])
    )
    ctx.check(
        "recovers: last 20 under 2x the 20 before",
        _mean(losses[-20:]) < 2 * _mean(losses[k - 20 : k]),
    )
    ctx.check("finite", _finite(losses))


# -- 8. update ratio: a OneCycleLR max_lr of 0.0 for the stem ---------------------------------------


@scenario(
    family="cricket_bat_willow_grain_onecycle_zero_group_regressor",
    optimizer="SGD Nesterov",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Cricket-bat willow-grain regressor (ReLU MLP on grain count, cleft moisture and "
    "pressing features, two param groups, MSE, SGD Nesterov under OneCycleLR). The per-group "
    "max_lr list is built from a config whose stem key is missing and defaults to 0.0: "
    "max_lr=[0.0, 0.05], so fc1 never moves while fc2 and the head train.",
)
def h476_cricket_bat_onecycle_zero_stem(ctx) -> None:
    gen = seeded(4768)
    model = _Net(10, 48, 1)
    data = _readings(gen, 64, 10, seed=4768)
    opt = torch.optim.SGD(
        [
            {"params": model.fc1.parameters()},
            {"params": [*model.fc2.parameters(), *model.head.parameters()]},
        ],
        lr=0.01,
        momentum=0.9,
        nesterov=True,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.0, 0.05], total_steps=220)
    start = {n: m.weight.detach().clone() for n, m in (("fc1", model.fc1), ("fc2", model.fc2))}
    grads = []
    losses, _ = _loop(
        ctx,
        model,
        opt,
        data,
        220,
        F.mse_loss,
        sched=sched,
        unscale=lambda s: grads.append(float(model.fc1.weight.grad.norm())),
    )

    def rel(name, m):
        return float((m.weight.detach() - start[name]).norm() / start[name].norm())

    ctx.check("fc1 moves under 1e-6 of its norm", rel("fc1", model.fc1) < 1e-6)
    ctx.check("fc2 moves over 5% of its norm", rel("fc2", model.fc2) > 0.05)
    ctx.check("fc1 receives gradients all along", min(grads) > 1e-4)
    ctx.check("loss fell (the rest trains)", _fell(losses, ratio=0.8))


# -- 9. amp overflow: a sum-pool in fp16 once the clips lengthen ------------------------------------

FOGHORN_STEP = 100


class _EnergyPool(nn.Module):
    """RMS-energy pooling written as a sum of squares over time, to be divided by the clip
    length: the division uses the design-time constant 256."""

    def forward(self, h):
        return h.pow(2).sum(-1)


class _DiaphoneNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 7, padding=3)
        self.conv2 = nn.Conv1d(16, 32, 7, padding=3)
        self.pool = _EnergyPool()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(h))
        return self.head(torch.sqrt(self.pool(h) / 256.0))


@scenario(
    family="foghorn_diaphone_blast_sumpool_fp16_conv1d",
    optimizer="Adam",
    cause="amp_overflow",
    where=("pool",),
    diverges=FOGHORN_STEP,
    heldout=True,
    onset=FOGHORN_STEP,
    note="Foghorn diaphone blast-type classifier (ReLU Conv1d over a pressure trace, fp16 "
    "autocast with a torch.amp.GradScaler, cross-entropy, Adam). The RMS-energy pooling sums "
    "squared activations over time in fp16 and divides by a constant 256 (the clip length at "
    "design time) instead of taking a mean in fp32; at step 100 the length curriculum moves "
    "to 8192-sample clips and the fp16 sum of squares overflows 65504 to inf: the loss is "
    "non-finite and the scaler skips the step.",
)
def h476_foghorn_fp16_sumpool_overflow(ctx) -> None:
    gen = seeded(4769)
    model = _DiaphoneNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    freqs = torch.tensor([0.05, 0.1, 0.2, 0.4])
    losses, pooled, pooled32 = [], [], []
    for step in range(160):
        length = 256 if step < FOGHORN_STEP else 8192
        t = torch.arange(length).float()
        y = torch.randint(0, 4, (16,), generator=gen)
        phase = 6.28 * torch.rand(16, 1, generator=gen)
        x = 2.0 * torch.sin(freqs[y][:, None] * t[None] + phase)
        x = x + 0.3 * torch.randn(16, length, generator=gen)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            h = F.relu(model.conv2(F.relu(model.conv1(x[:, None]))))
            s = model.pool(h)
            out = model.head(torch.sqrt(s / 256.0))
        pooled.append(float(s.detach().float().abs().max()))
        pooled32.append(float(h.detach().float().pow(2).sum(-1).max()))
        loss = F.cross_entropy(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            break
    k = FOGHORN_STEP
    ctx.check("finite before the step", _finite(losses[:k]))
    ctx.check("loss non-finite at the step", len(losses) > k and not math.isfinite(losses[k]))
    ctx.check(
        "the fp16 sum of squares is inf at the step", len(pooled) > k and math.isinf(pooled[k])
    )
    ctx.check(
        "the same sum of squares in fp32 is over 65504", len(pooled32) > k and pooled32[k] > 65504
    )
    ctx.check("the scaler's scale fell at the step", ctx.scales[k] < ctx.scales[k - 1])
    ctx.check("trained before it", _mean(losses[k - 10 : k]) < 0.7 * _mean(losses[:10]))


# -- 10. output logits: F.nll_loss on raw logits ----------------------------------------------------


@scenario(
    family="kendama_tama_spin_raw_logit_nll_classifier",
    optimizer="Adagrad",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kendama trick-landing classifier (ReLU MLP on tama spin, string tension and ken-angle "
    "features, Adagrad). The loss is F.nll_loss applied to the head's raw logits (the "
    "log_softmax was dropped in a refactor): the 'loss' is minus the target logit, unbounded "
    "below, and the head's logits grow without bound.",
)
def h476_kendama_nll_on_raw_logits(ctx) -> None:
    gen = seeded(4770)
    model = _Net(12, 48, 5)
    data = _grades(gen, 64, 12, 5, seed=4770, spread=1.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    probe = next(_grades(torch.Generator().manual_seed(1), 256, 12, 5, seed=4770))[0]
    mags = []

    def after(step):
        with torch.no_grad():
            mags.append(float(model(probe).abs().mean()))

    losses, _ = _loop(ctx, model, opt, data, 200, F.nll_loss, classifier=True, after=after)
    ctx.check(
        "head's mean |logit| over 20x its first steps'", _mean(mags[-10:]) > 20 * _mean(mags[:5])
    )
    ctx.check("still climbing over the last 60 steps", mags[-1] > 1.3 * mags[-60])
    ctx.check("the loss below 0, impossible for a valid NLL", losses[-1] < 0)
    ctx.check("finite", _finite(losses))


# -- controls ---------------------------------------------------------------------------------------


class _AssociativeMemory(nn.Module):
    """Softmax retrieval over stored patterns (keys and values tied), with a learnt inverse
    temperature clamped to [1, 30]."""

    def __init__(self, dim, patterns):
        super().__init__()
        self.patterns = nn.Parameter(torch.randn(patterns, dim) / math.sqrt(dim))
        self.log_beta = nn.Parameter(torch.tensor(math.log(4.0)))

    def beta(self):
        return self.log_beta.clamp(0.0, math.log(30.0)).exp()

    def forward(self, q):
        attn = torch.softmax(self.beta() * F.normalize(q, dim=-1) @ self.patterns.T, dim=-1)
        return attn @ self.patterns


class _DialectNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(64, 32)
        self.act = nn.GELU()
        self.memory = _AssociativeMemory(32, 40)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        q = self.act(self.query(x))
        return self.head(self.norm(q + self.memory(q)))


@scenario(
    family="birdsong_dialect_associative_memory_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Birdsong dialect classifier (8x8 sonogram patches) around a hand-written "
    "associative-memory layer: softmax retrieval over 40 stored patterns with keys and values "
    "tied, a learnt inverse temperature clamped to [1, 30], a residual and LayerNorm; "
    "cross-entropy, AdamW with linear warm-up then cosine decay, clipping at 1. A healthy "
    "control.",
)
def h476_birdsong_associative_memory_control(ctx) -> None:
    gen = seeded(4771)
    model = _DialectNet()
    data = digit_batches(gen, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    total = 220
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))),
    )
    losses, _ = _loop(
        ctx, model, opt, data, total, F.cross_entropy, classifier=True, clip=1.0, sched=sched
    )
    x, y = next(digit_batches(torch.Generator().manual_seed(99), 256))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
        beta = float(model.memory.beta())
    ctx.check("loss fell under 30% of its start", _fell(losses, ratio=0.3))
    ctx.check("accuracy on a fresh batch over 85%", acc > 0.85)
    ctx.check("inverse temperature inside [1, 30]", 1.0 <= beta <= 30.0)
    ctx.check("finite", _finite(losses))


class _WSConv2d(nn.Conv2d):
    """A convolution with weight standardisation (zero mean, unit variance per output filter)."""

    def forward(self, x):
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        std = w.std(dim=(1, 2, 3), keepdim=True) + 1e-5
        return F.conv2d(x, (w - mean) / std, self.bias, self.stride, self.padding)


class _SpawningNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = _WSConv2d(1, 16, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, 16)
        self.conv2 = _WSConv2d(16, 32, 3, padding=1)
        self.gn2 = nn.GroupNorm(8, 32)
        self.head = nn.Linear(32 * 16, 10)

    def forward(self, x):
        h = F.relu(self.gn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        h = F.max_pool2d(F.relu(self.gn2(self.conv2(h))), 2)
        return self.head(h.flatten(1))


@scenario(
    family="coral_spawning_night_ws_gn_cnn",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Coral-spawning night classifier from 8x8 reef-camera tiles: a CNN with weight "
    "standardisation in its convolutions and GroupNorm in place of batch norm; cross-entropy "
    "with label smoothing 0.1, SGD Nesterov with cosine annealing, weight decay 5e-4. A "
    "healthy control.",
)
def h476_coral_spawning_ws_gn_control(ctx) -> None:
    gen = seeded(4772)
    model = _SpawningNet()
    data = digit_batches(gen, 64)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=180)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _loop(ctx, model, opt, data, 180, loss_fn, classifier=True, sched=sched)
    x, y = next(digit_batches(torch.Generator().manual_seed(98), 256))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell under 40% of its start", _fell(losses, ratio=0.4))
    ctx.check("accuracy on a fresh batch over 85%", acc > 0.85)
    ctx.check("finite", _finite(losses))


@scenario(
    family="sailmaker_sailcloth_stretch_accum_onecycle_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sailmaker sailcloth-stretch regressor (SiLU MLP on weave, resin and load-angle "
    "features with noisy targets, Huber, RMSprop under OneCycleLR, gradient accumulation over "
    "4 micro-batches of 16, clipping at 1). A healthy control.",
)
def h476_sailcloth_accum_onecycle_control(ctx) -> None:
    gen = seeded(4773)
    model = _Net(8, 64, 1, act=nn.SiLU)
    data = _readings(gen, 16, 8, seed=4773, noise=0.2)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=200, cycle_momentum=False
    )
    losses, _ = _loop(ctx, model, opt, data, 200, F.huber_loss, sched=sched, accumulate=4, clip=1.0)
    ctx.check("loss fell under 60% of its start", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
