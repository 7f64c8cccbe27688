"""Held-out set 507 (``h507_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a llama pack-trek pace tanh regressor whose one resumed step reads the loss weight in
micro-units (1e6, Adam's second moment poisoned, Adam); a reindeer lichen-graze SiLU regressor
restarted from a stale checkpoint (a one-off loss spike, NAdam); an eagle-hunting stoop-quarry
GELU classifier whose distillation temperature is read in percent (softmax collapse, Adamax); a
tower-clock pendulum-drift 10-layer ReLU MLP initialised at a hard-coded std 0.3 for He's 0.2 (exploding
gradients, SGD momentum); a saw-set tooth-bend Huber regressor whose resumed step multiplies by
the accumulation count instead of dividing (a gradient spike, SGD Nesterov); a threshing-flail
husk BCE net fed one shard with moisture in g/kg (a data outlier, SGD momentum); a rice-terrace
paddy-level regressor whose fc1 group lr is typed 1e-9 (Adagrad); a pitch-pine resin-tap Poisson
net taking log of a tap age with no clamp (nonfinite, RMSprop); a firefly flash-phase full-batch
tanh regressor whose resume applies a linear-scaling rule for 8 workers (past 2/sharpness, SGD);
a cicada-emergence soil-temperature SiLU regressor with its L2 penalty subtracted (a slow climb,
ASGD).

Controls: a koinobori streamer-wind BatchEnsemble classifier (AdamW, OneCycleLR, label
smoothing, clipping); a heron-strike depth Huber regressor trained after an LR range test (SGD
momentum, cosine); a hummingbird hover wing-beat Gaussian-NLL net (fp16 autocast + GradScaler,
RAdam, two param groups, ReduceLROnPlateau, accumulation 2, clipping).
"""

from __future__ import annotations

import copy
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
):
    """The file's loop. ``before(step)`` first; ``alter(step, x, y)`` changes a batch;
    ``weight(step)`` multiplies the backpropagated loss; ``after(step, loss)`` runs after the
    optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it."""
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
            if classifier:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            w = weight(step) if weight is not None else 1.0
            (w * loss / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
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


def _sharpness(model, loss_fn, iters=12):
    """Top Hessian eigenvalue of the full-batch loss by power iteration."""
    params = list(model.parameters())
    loss = loss_fn()
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


# -- 1. adam second moment poisoned: a loss weight read in micro-units -----------------------------

LLAMA_ONSET = 80


@scenario(
    family="llama_pack_trek_pace_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=LLAMA_ONSET,
    note="Llama pack-string trek-pace regressor (tanh MLP on pack load, gradient, altitude, "
    "herd size and rest-stop features, MSE, Adam lr 3e-3). The first step after a resume at 80 "
    "reads the loss weight from a config written in micro-units (1e6 for 1.0): one gradient "
    "about a million times too large fills Adam's second moment, and for the rest of the run "
    "the updates are a small fraction of what they were; the loss, knocked up by the one large "
    "update, stalls there.",
)
def h507_llama_weight_micro(ctx) -> None:
    gen = seeded(5071)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    moves, vs = [], []
    prev = [_flat(model)]

    def weight(step):
        return 1e6 if step == LLAMA_ONSET else 1.0

    def after(step, loss):
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now
        v = opt.state[model.fc1.weight]["exp_avg_sq"]
        vs.append(float(v.sqrt().median()))

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5071), 240, F.mse_loss, weight=weight, after=after
    )
    k = LLAMA_ONSET
    ctx.check("the gradient at onset over 1e4x the median", norms[k] > 1e4 * _median(norms[:k]))
    ctx.check("fc1's median sqrt(v) over 30x after", _mean(vs[k + 20 : k + 60]) > 30 * vs[k - 1])
    ctx.check(
        "updates after under 0.2x before",
        _mean(moves[k + 40 : k + 120]) < 0.2 * _mean(moves[k - 30 : k]),
    )
    ctx.check("finite", _finite(losses))


# -- 2. loss spike: a pre-emption restart loads a stale checkpoint ---------------------------------

REINDEER_ONSET = 150


@scenario(
    family="reindeer_herd_lichen_graze_silu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=REINDEER_ONSET,
    note="Reindeer-herd lichen-graze regressor (SiLU MLP on snow depth, crust hardness, lichen "
    "cover and herd density features, MSE, NAdam lr 2e-3). After a pre-emption at step 150 the "
    "restart script picks the checkpoint by lexical order and loads the stale step-5 checkpoint "
    "(model and optimizer): the loss jumps back to its early level, then the run recovers. No "
    "gradient burst, no bad data.",
)
def h507_reindeer_stale_ckpt(ctx) -> None:
    gen = seeded(5072)
    model = _Net(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    saved = {}

    def after(step, loss):
        if step == 5:
            saved["model"] = copy.deepcopy(model.state_dict())
            saved["opt"] = copy.deepcopy(opt.state_dict())

    def before(step):
        if step == REINDEER_ONSET:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 5072),
        280,
        F.mse_loss,
        before=before,
        after=after,
    )
    k = REINDEER_ONSET
    pre = _mean(losses[k - 10 : k])
    ctx.check("trained before (under 0.4x the start)", pre < 0.4 * _mean(losses[:10]))
    ctx.check("the loss at the restart over 3x its level before", losses[k] > 3 * pre)
    ctx.check("recovered (last 10 under 1.5x the level before)", _mean(losses[-10:]) < 1.5 * pre)
    ctx.check("no gradient burst (onset under 10x the median)", norms[k] < 10 * _median(norms[:k]))
    ctx.check("finite", _finite(losses))


# -- 3. softmax collapse: a distillation temperature read in percent ------------------------------


@scenario(
    family="eagle_hunting_stoop_quarry_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Eagle-hunting (berkutchi) stoop quarry classifier (GELU MLP on stoop angle, release "
    "height, wind and terrain features, 6 quarry classes, cross-entropy, Adamax lr 2e-3). The "
    "softening temperature is read from a config written in percent (0.5 for 50%): the logits are "
    "divided by 0.005 instead of 0.5, so the float32 softmax saturates and most rows' target "
    "probability rounds to exactly 1.0.",
)
def h507_eagle_temperature_percent(ctx) -> None:
    gen = seeded(5073)
    model = _Net(12, 48, 6, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    temperature = 0.005  # meant 0.5

    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 5073),
        200,
        lambda out, y: F.cross_entropy(out / temperature, y),
        classifier=True,
    )
    x, y = next(_grades(torch.Generator().manual_seed(1), 256, 12, 6, 5073))
    with torch.no_grad():
        logits = model(x)
    ctx.check(
        "over half the rows' target probability exactly 1.0",
        collapsed_fraction(logits / temperature, y) > 0.5,
    )
    ctx.check("under 5% at the intended temperature", collapsed_fraction(logits / 0.5, y) < 0.05)
    ctx.check("finite", _finite(losses))


# -- 4. exploding gradients: init std typed 0.3 for 0.03 -------------------------------------------


class _DeepReLU(nn.Module):
    def __init__(self, d_in, width=48, depth=10, std=0.3):
        super().__init__()
        dims = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
        self.zs = []

    def forward(self, x):
        self.zs = []
        for layer in self.layers:
            z = layer(x)
            if z.requires_grad:
                z.retain_grad()
            self.zs.append(z)
            x = F.relu(z)
        return self.head(x).squeeze(-1)


def _depth_ratio(model, x, y):
    loss = F.mse_loss(model(x), y)
    loss.backward()
    g = [float(z.grad.norm()) for z in model.zs]
    model.zero_grad(set_to_none=True)
    return g[0] / g[-1]


@scenario(
    family="tower_clock_pendulum_drift_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Tower-clock pendulum-drift regressor (10-layer ReLU MLP, width 48, on crutch wear, "
    "suspension-spring stiffness, temperature and escapement features, MSE, SGD momentum 0.9, "
    "lr 3e-4). The init helper's std is hard-coded 0.3, copied from a width-16 model where it was "
    "about He scale, instead of sqrt(2/fan_in) = 0.2 at width 48: every layer multiplies the signal "
    "and the backward gradient by about 1.5, dL/dz at the first layer is tens of times the last "
    "layer's, and the loss blows up.",
)
def h507_tower_clock_init_std(ctx) -> None:
    gen = seeded(5074)
    batches = _readings(gen, 64, 10, 5074)
    x0, y0 = next(batches)
    ratio_ok = _depth_ratio(_DeepReLU(10, std=math.sqrt(2 / 48)), x0, y0)  # He std
    model = _DeepReLU(10, std=0.3)  # copied from the width-16 model: sqrt(2 / 16) ~ 0.35
    ratio_bad = _depth_ratio(model, x0, y0)
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    losses, _ = _train(ctx, model, opt, batches, 150, F.mse_loss)
    ctx.check("dL/dz at layers.0 over 10x the last layer's", ratio_bad > 10)
    ctx.check("under 3x with a He-scale std", ratio_ok < 3)
    ctx.check(
        "the loss blew up (over 100x its start, or non-finite)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


# -- 5. gradient spike: the resumed step multiplies by the accumulation count ---------------------

SAWSET_ONSET = 110


@scenario(
    family="saw_set_tooth_bend_gelu_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SAWSET_ONSET,
    note="Saw-set tooth-bend regressor (GELU MLP on plunger depth, tooth pitch, plate thickness "
    "and steel hardness features, Huber, SGD Nesterov momentum 0.9, accumulation 8, clipping at "
    "norm 1). The first step after a resume at 110 runs an older accumulation helper that writes "
    "loss * accumulate instead of loss / accumulate: one step's gradient is 64x too large while "
    "the logged loss is ordinary; clipping holds the update.",
)
def h507_sawset_accum_multiply(ctx) -> None:
    gen = seeded(5075)
    model = _Net(10, 64, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    acc = 8

    def weight(step):
        return float(acc * acc) if step == SAWSET_ONSET else 1.0  # loss * acc, not loss / acc

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 5075),
        200,
        F.huber_loss,
        weight=weight,
        clip=1.0,
        accumulate=acc,
    )
    k = SAWSET_ONSET
    others = norms[k - 40 : k] + norms[k + 1 : k + 40]
    pre = _mean(losses[k - 20 : k])
    ctx.check("the gradient at the resume over 30x the median", norms[k] > 30 * _median(others))
    ctx.check("the logged loss at the resume is ordinary (under 2x)", losses[k] < 2 * pre)
    ctx.check("trained before (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("no divergence afterwards (last 20 under 2x pre)", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 6. data outlier: one shard with moisture in g/kg --------------------------------------------

FLAIL_ONSET = 120


def _husk_batches(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = (torch.sigmoid(2.0 * x @ w / math.sqrt(8)) > torch.rand(batch, generator=gen)).float()
        yield x, y


@scenario(
    family="grain_threshing_flail_husk_bce_net",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=FLAIL_ONSET,
    note="Threshing-flail husk-separation net (ReLU MLP on swipple weight, stroke rate, straw "
    "moisture and floor features, BCE on whether the husks come clean, SGD momentum 0.9, "
    "clipping at norm 1). One shard, from a barn logger that records moisture in g/kg rather "
    "than as a standardised fraction, arrives at step 120: that batch's moisture column is 1000x; "
    "the loss and gradient jump for the one batch, clipping holds the update, and the run "
    "recovers.",
)
def h507_flail_moisture_units(ctx) -> None:
    gen = seeded(5076)
    model = _Net(8, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=3e-2, momentum=0.9)

    def alter(step, x, y):
        if step == FLAIL_ONSET:
            x = x.clone()
            x[:, 2] = x[:, 2] * 1000.0  # g/kg for the standardised fraction
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _husk_batches(gen, 64, 5076),
        240,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    k = FLAIL_ONSET
    pre = _mean(losses[k - 20 : k])
    ctx.check("the loss at the bad shard over 20x", losses[k] > 20 * pre)
    ctx.check("the gradient at the bad shard over 20x the median", norms[k] > 20 * _median(norms))
    ctx.check("trained before (under 0.8x the start)", pre < 0.8 * _mean(losses[:10]))
    ctx.check("recovered (last 20 under 1.5x pre)", _mean(losses[-20:]) < 1.5 * pre)
    ctx.check("finite", _finite(losses))


# -- 7. update ratio out of range: fc1's group lr typed 1e-9 ---------------------------------------


@scenario(
    family="rice_terrace_paddy_water_level_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Rice-terrace paddy water-level regressor (ReLU MLP on inflow, bund height, "
    "evaporation and rainfall features, MSE, Adagrad with one param group per layer). The "
    "first layer's group lr is typed 1e-9 for 1e-2: fc1 hardly moves (relative change under "
    "1e-6) while the other layers train normally.",
)
def h507_terrace_group_lr(ctx) -> None:
    gen = seeded(5077)
    model = _Net(10, 48, 1)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},  # meant 1e-2
            {"params": model.fc2.parameters()},
            {"params": model.head.parameters()},
        ],
        lr=1e-2,
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5077), 200, F.mse_loss)
    r1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    r2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", r1 < 1e-6)
    ctx.check("fc2 moved over 5% of its norm", r2 > 0.05)
    ctx.check("finite", _finite(losses))


# -- 8. nonfinite: log of a tap age with no clamp -------------------------------------------------

PINE_NAN = 100


class _LogFeature(nn.Module):
    def forward(self, x):
        return torch.log(x)  # meant: torch.log(x.clamp_min(0.5))


class _TapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(8, 48)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(48, 1)
        self.last_log = None

    def forward(self, x):
        lg = self.logfeat(x[:, :2])
        self.last_log = lg.detach()
        return self.head(self.act1(self.fc1(torch.cat([lg, x[:, 2:]], 1)))).squeeze(-1)


def _tap_batches(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = 0.4 * torch.randn(6, generator=g)
    while True:
        days = 1.0 + 30.0 * torch.rand(batch, 2, generator=gen)
        rest = torch.randn(batch, 6, generator=gen)
        rate = torch.exp(0.6 * torch.log(days[:, 0]) - 0.3 * torch.log(days[:, 1]) + rest @ w)
        yield torch.cat([days, rest], 1), torch.poisson(rate, generator=gen)


@scenario(
    family="pitch_pine_resin_tap_yield_poisson_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("logfeat",),
    diverges=PINE_NAN,
    heldout=True,
    onset=PINE_NAN,
    note="Pitch-pine resin-tap yield net (log of days since the streak was freshened and of "
    "days since rain, then a ReLU MLP; Poisson NLL on the cup count, RMSprop lr 1e-3). The log "
    "feature has no clamp; at step 100 a batch from a new tapping crew logs freshly cut streaks "
    "at 0 days: log 0 = -inf goes through fc1 and the loss is NaN.",
)
def h507_pine_log_zero(ctx) -> None:
    gen = seeded(5078)
    model = _TapNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    seen = {}

    def alter(step, x, y):
        if step == PINE_NAN:
            x = x.clone()
            x[:8, 0] = 0.0
        return x, y

    def after(step, loss):
        if step == PINE_NAN:
            seen["inf"] = bool(torch.isinf(model.last_log).any())

    losses, _ = _train(
        ctx,
        model,
        opt,
        _tap_batches(gen, 64, 5078),
        200,
        lambda out, y: F.poisson_nll_loss(out, y, log_input=True),
        alter=alter,
        after=after,
    )
    ctx.check("finite before step 100", _finite(losses[:PINE_NAN]))
    ctx.check(
        "the loss is non-finite at step 100",
        len(losses) > PINE_NAN and not math.isfinite(losses[PINE_NAN]),
    )
    ctx.check("logfeat produced -inf at step 100", seen.get("inf", False))
    ctx.check("trained before (fell under 0.8x)", losses[PINE_NAN - 1] < 0.8 * losses[0])


# -- 9. sharpness above the limit: a linear-scaling rule applied for 8 workers -------------------

FIREFLY_ONSET = 100


@scenario(
    family="firefly_sync_flash_phase_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=FIREFLY_ONSET,
    note="Firefly flash-synchrony phase regressor (tanh MLP on neighbour phases, canopy density "
    "and temperature features, 256 fixed swarms full-batch, MSE, plain SGD at 0.4/sharpness). "
    "The run resumes at step 100 on one process, but the resume code applies the linear-scaling "
    "rule for the 8 workers of the original launch (lr * 8): the lr goes past 2/sharpness and "
    "the full-batch loss oscillates and blows up.",
)
def h507_firefly_linear_scaling(ctx) -> None:
    gen = seeded(5079)
    model = _Net(8, 32, 1, act=nn.Tanh)
    x, y = next(_readings(gen, 256, 8, 5079, noise=0.0))
    lam0 = _sharpness(model, lambda: F.mse_loss(model(x), y))
    opt = torch.optim.SGD(model.parameters(), lr=0.4 / lam0)
    ctx.attach(model, opt)
    losses, lam_at, lr_at = [], None, None
    for step in range(200):
        if step == FIREFLY_ONSET:
            for g in opt.param_groups:
                g["lr"] *= 8  # linear scaling for 8 workers; the resumed run has one
            lam_at = _sharpness(model, lambda: F.mse_loss(model(x), y))
            lr_at = opt.param_groups[0]["lr"]
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]) or losses[-1] > 1e6:
            break
    k = FIREFLY_ONSET
    ctx.check("trained before (under 0.6x the start)", losses[k - 1] < 0.6 * losses[0])
    ctx.check("lr * sharpness over 2 after the resume", lam_at is not None and lr_at * lam_at > 2)
    ctx.check(
        "the loss blew up (over 100x its pre-resume level, or non-finite)",
        not _finite(losses) or max(losses[k:]) > 100 * losses[k - 1],
    )


# -- 10. loss divergence: the L2 penalty is subtracted ---------------------------------------------


@scenario(
    family="cicada_emergence_soil_temp_silu_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Periodical-cicada emergence regressor (SiLU MLP on soil temperature at 20 cm, "
    "degree-days, canopy shade and brood-year features, MSE, ASGD lr 3e-2 with a hand-written L2 "
    "penalty). The penalty line reads loss - wd * sum(w**2) instead of +: the weights inflate "
    "slowly and, once the fit is made, the loss climbs and keeps climbing. No NaN, no spike.",
)
def h507_cicada_l2_sign(ctx) -> None:
    gen = seeded(50710)
    model = _Net(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=3e-2)
    wd = 6e-2
    n0 = float(_flat(model).norm())

    def total(out, y):
        l2 = sum((p**2).sum() for p in model.parameters())
        return F.mse_loss(out, y), l2

    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, 50710)
    losses = []
    for _ in range(300):
        xb, yb = next(batches)
        mse, l2 = total(model(xb), yb)
        (mse - wd * l2).backward()  # the sign bug: meant mse + wd * l2
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(mse.detach()))
        ctx.step(mse)
        opt.zero_grad(set_to_none=True)
    n1 = float(_flat(model).norm())
    best = min(range(len(losses) - 10), key=lambda i: _mean(losses[i : i + 10]))
    low = _mean(losses[best : best + 10])
    tens = [_mean(losses[i : i + 10]) for i in range(0, len(losses), 10)]
    jumps = max(b / a for a, b in zip(tens[:-1], tens[1:], strict=True))
    ctx.check("it first trained (best 10 under 0.5x the start)", low < 0.5 * _mean(losses[:10]))
    ctx.check("then climbed (last 20 over 2x the best 10)", _mean(losses[-20:]) > 2 * low)
    ctx.check("the weights inflated over 1.5x", n1 > 1.5 * n0)
    ctx.check("no 10-step mean over 3x the one before", jumps < 3)
    ctx.check("no NaN", _finite(losses))


# -- controls ---------------------------------------------------------------------------------------


class _BELinear(nn.Module):
    """BatchEnsemble linear: one shared (slow) weight, per-member rank-1 fast weights r_i s_i^T
    and per-member biases. Input is the batch repeated once per member, member-major."""

    def __init__(self, d_in, d_out, members=4):
        super().__init__()
        self.members = members
        self.shared = nn.Linear(d_in, d_out, bias=False)
        sign = lambda *s: torch.where(torch.rand(*s) < 0.5, -1.0, 1.0)  # noqa: E731
        self.r = nn.Parameter(sign(members, d_in) * (1 + 0.1 * torch.randn(members, d_in)))
        self.s = nn.Parameter(sign(members, d_out) * (1 + 0.1 * torch.randn(members, d_out)))
        self.bias = nn.Parameter(torch.zeros(members, d_out))

    def forward(self, x):
        m = self.members
        xb = x.reshape(m, -1, x.shape[-1])
        out = self.shared(xb * self.r[:, None, :]) * self.s[:, None, :] + self.bias[:, None, :]
        return out.reshape(-1, out.shape[-1])


class _BatchEnsemble(nn.Module):
    def __init__(self, d_in, hidden, classes, members=4):
        super().__init__()
        self.members = members
        self.be1 = _BELinear(d_in, hidden, members)
        self.act1 = nn.ReLU()
        self.be2 = _BELinear(hidden, hidden, members)
        self.act2 = nn.ReLU()
        self.head = _BELinear(hidden, classes, members)

    def member_logits(self, x):
        xs = x.repeat(self.members, 1)
        out = self.head(self.act2(self.be2(self.act1(self.be1(xs)))))
        return out.reshape(self.members, x.shape[0], -1)

    def forward(self, x):
        """The members' predictions averaged: log of the mean softmax."""
        probs = torch.softmax(self.member_logits(x), -1).mean(0)
        return torch.log(probs.clamp_min(1e-12))


@scenario(
    family="koinobori_streamer_wind_batch_ensemble_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Koinobori carp-streamer wind-class classifier, a hand-written BatchEnsemble (four "
    "members share each layer's slow weight, each with its own rank-1 fast weights and bias; the "
    "members' softmax predictions averaged), on pole sway, streamer fill and flutter features, 7 "
    "wind classes with noisy readings. Each member trained with cross-entropy and label "
    "smoothing 0.1, AdamW, OneCycleLR, clipping at norm 1.",
)
def h507_koinobori_batch_ensemble(ctx) -> None:
    gen = seeded(50711)
    model = _BatchEnsemble(12, 48, 7)
    steps = 220
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    members = model.members

    def loss_fn(out, y):
        return F.cross_entropy(
            out.reshape(-1, out.shape[-1]), y.repeat(members), label_smoothing=0.1
        )

    ctx.attach(model, opt)
    batches = _grades(gen, 64, 12, 7, 50711, spread=1.3)
    losses = []
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        loss = loss_fn(model.member_logits(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    xt, yt = next(_grades(torch.Generator().manual_seed(2), 512, 12, 7, 50711, spread=1.3))
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
        member_acc = (model.member_logits(xt).argmax(-1) == yt).float().mean(1)
    ctx.check("the loss fell (under 0.6x)", _fell(losses, ratio=0.6))
    ctx.check("the averaged ensemble is accurate (over 80%)", acc > 0.8)
    ctx.check(
        "the ensemble is no worse than its mean member", acc >= float(member_acc.mean()) - 0.01
    )
    ctx.check("finite", _finite(losses))


@scenario(
    family="heron_strike_depth_lr_range_huber_regressor",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Heron strike-depth regressor (GELU MLP on neck-coil angle, water clarity, prey depth "
    "and glare features, Huber, SGD momentum 0.9). It first runs an LR range test: 100 steps with "
    "the lr rising exponentially from 1e-5 to 10, stopped once the loss passes 4x its best; then "
    "it restores the initial weights and optimizer state and trains 180 steps at a tenth of the "
    "lr where the smoothed loss was lowest, with cosine annealing.",
)
def h507_heron_lr_range_test(ctx) -> None:
    gen = seeded(50712)
    model = _Net(10, 64, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    init_model = copy.deepcopy(model.state_dict())
    init_opt = copy.deepcopy(opt.state_dict())
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, 50712)
    losses, test_lrs, smooth = [], [], []
    avg, best, blew = 0.0, float("inf"), False
    for i in range(100):
        lr = 1e-5 * (10 / 1e-5) ** (i / 99)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = next(batches)
        loss = F.huber_loss(model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value) or value > 4 * best:
            blew = True
            break
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(value)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        avg = 0.9 * avg + 0.1 * value
        sm = avg / (1 - 0.9 ** (i + 1))
        smooth.append(sm)
        test_lrs.append(lr)
        best = min(best, sm)
    chosen = test_lrs[min(range(len(smooth)), key=smooth.__getitem__)] / 10
    range_steps = len(losses)
    model.load_state_dict(init_model)
    opt.load_state_dict(init_opt)
    for g in opt.param_groups:
        g["lr"] = chosen
        g["initial_lr"] = chosen
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=180)
    with torch.no_grad():
        xs, ys = next(batches)
        start = float(F.huber_loss(model(xs), ys))
    for _ in range(180):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    train = losses[range_steps:]
    ctx.check("the range test found the blow-up (stopped over 4x its best)", blew)
    ctx.check("the chosen lr is in the tested range", 1e-6 < chosen < 1.0)
    ctx.check("training after the restore fell (under 0.4x)", _fell(train, ratio=0.4))
    ctx.check(
        "the restore reset the weights (loss within 2x the first step's)",
        losses[0] / 2 < start < 2 * losses[0],
    )
    ctx.check("finite", _finite(losses))


class _WingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 64)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out[:, 0], out[:, 1]


@scenario(
    family="hummingbird_hover_wingbeat_fp16_gaussian_nll_net",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Hummingbird hover wing-beat frequency net (SiLU MLP on body mass, air density, "
    "nectar load and feeder-flower features; mean and log-variance heads, Gaussian NLL, "
    "heteroscedastic noise) under fp16 autocast with a torch.amp.GradScaler; RAdam with two "
    "param groups (head at half the lr, no weight decay), ReduceLROnPlateau, gradient "
    "accumulation 2, clipping at norm 1.",
)
def h507_hummingbird_amp_gnll(ctx) -> None:
    gen = seeded(50713)
    model = _WingNet()
    opt = torch.optim.RAdam(
        [
            {"params": list(model.fc1.parameters()) + list(model.fc2.parameters())},
            {"params": model.head.parameters(), "lr": 1e-3, "weight_decay": 0.0},
        ],
        lr=2e-3,
        weight_decay=1e-4,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    base = _readings(gen, 64, 10, 50713, noise=0.0)
    losses = []
    for _ in range(200):
        shown = 0.0
        for _ in range(2):
            x, y = next(base)
            y = y + (0.05 + 0.2 * torch.sigmoid(x[:, 0])) * torch.randn(len(y), generator=gen)
            with torch.autocast("cpu", dtype=torch.float16):
                mean, logvar = model(x)
            loss = F.gaussian_nll_loss(mean.float(), y, logvar.float().exp())
            scaler.scale(loss / 2).backward()
            shown += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        sched.step(shown)
        opt.zero_grad(set_to_none=True)
    ctx.check("the NLL fell by over 0.08 nat", _mean(losses[-10:]) < _mean(losses[:10]) - 0.08)
    ctx.check("finite", _finite(losses))
    ctx.check("the loss scale stayed usable (over 1)", min(ctx.scales) > 1)
