"""Held-out set 142 (``h142_``): a Hugging Face Beam causal LM from a tiny config, a GroupNorm
CNN, and hand-written models of trades, crafts, sports and natural phenomena not covered before.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs (warm-up with clipping, OneCycleLR with label smoothing, fp16
autocast with a GradScaler, ReduceLROnPlateau on noisy batches).
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
    digit_batches,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _tabular(gen, n_in: int, batch: int, noise: float = 0.05):
    w = torch.randn(n_in, 1, generator=gen)
    v = torch.randn(n_in, 1, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(n_in)) + 0.5 * torch.sin(x @ v / math.sqrt(n_in))
        yield x, y + noise * torch.randn(batch, 1, generator=gen)


def _clusters(gen, n_in: int, classes: int, batch: int, spread: float = 1.0):
    centres = torch.randn(classes, n_in, generator=gen)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + spread * torch.randn(batch, n_in, generator=gen), y


class Regressor(nn.Module):
    def __init__(self, n_in, width, depth=2, act=nn.Tanh, n_out=1):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(n_in if i == 0 else width, width), act()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        return self.head(self.body(x))


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
    scale=None,
    clip=None,
    sched=None,
    after=None,
    scaler=None,
    forward=None,
):
    ctx.attach(model, opt, scaler=scaler)
    forward = forward or (lambda m, x: m(x))
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if before is not None:
            before(step)
        if classifier:
            ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
            out = forward(model, x)
        loss = loss_fn(out.float(), y)
        total = loss * scale(step) if scale is not None else loss
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if after is not None:
            after(step)
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(float(loss.detach()))
            else:
                sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break


# -- saddle-tree fit regressor: a new shard logs the gullet width in micrometres -------------


@scenario(
    family="saddle_tree_fit_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("body.0",),
    diverges=60,
    heldout=True,
    onset=60,
    note="fp16 autocast with a GradScaler; from step 60 a new shard logs the gullet width in "
    "micrometres instead of millimetres (x1000 on one feature): the first Linear's fp16 output "
    "overflows to inf, the loss is inf and the scaler keeps skipping and halving.",
)
def h142_saddle_tree_amp_overflow(ctx: Context) -> None:
    gen = seeded(14201)
    model = Regressor(8, 64, act=nn.ReLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    seen: dict[int, bool] = {}

    def alter(step, x, y):
        if step >= 60:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1.0e5 + 2.0e5
        return x, y

    def hook(_m, _i, out):
        seen[len(ctx.losses)] = bool(torch.isinf(out).any())

    model.body[0].register_forward_hook(hook)
    _train(ctx, model, opt, _tabular(gen, 8, 64), 80, F.mse_loss, alter=alter, scaler=scaler)
    ls = ctx.losses
    ctx.check("finite before the unit bug", _finite(ls[:60]))
    ctx.check("loss non-finite at step 60", len(ls) > 60 and not math.isfinite(ls[60]))
    ctx.check("body.0 fp16 output overflowed at step 60", seen.get(60, False))
    ctx.check("no overflow in body.0 before step 60", not any(seen.get(i, True) for i in range(60)))


@scenario(
    family="saddle_tree_fit_regressor",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="fp16 autocast with a GradScaler, Huber loss, NAdam with clipping after unscale_.",
)
def h142_saddle_tree_amp_control(ctx: Context) -> None:
    gen = seeded(14202)
    model = Regressor(8, 64)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    _train(ctx, model, opt, _tabular(gen, 8, 64), 150, F.huber_loss, scaler=scaler, clip=1.0)
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("scale stayed above 1", min(ctx.scales) >= 1.0)


# -- bobsleigh: a checkpoint resume forgets Adam's state ---------------------------------------


@scenario(
    family="bobsleigh_push_start_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="The job is pre-empted and resumed at step 100, but the resume code restores the "
    "weights and not the optimizer state: Adam restarts with zero moments, its first "
    "bias-corrected steps move every weight by ~lr, the loss spikes once and recovers.",
)
def h142_bobsleigh_resume_spike(ctx: Context) -> None:
    gen = seeded(14203)
    model = Regressor(10, 64, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)

    def before(step):
        if step == 100:
            opt.state.clear()

    _train(ctx, model, opt, _tabular(gen, 10, 64, noise=0.02), 200, F.mse_loss, before=before)
    ls = ctx.losses
    pre = _median(ls[80:100])
    ctx.check("loss spiked >3x after the resume", max(ls[100:110]) > 3 * pre)
    ctx.check("recovered to within 2x of before", _mean(ls[-10:]) < 2 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- carillon-free bell foundry: a StepLR gamma typo multiplies the lr by 10 -----------------


@scenario(
    family="bell_foundry_casting_temp_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="Full-batch SGD on a quadratic-ish regression; StepLR(step_size=60, gamma=10) typed "
    "instead of gamma=0.1: at step 60 the lr jumps past 2/sharpness and the loss blows up.",
)
def h142_bell_foundry_gamma_typo(ctx: Context) -> None:
    gen = seeded(14204)
    model = Regressor(6, 32, depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=10.0)
    x, y = next(_tabular(gen, 6, 256))

    def fixed():
        while True:
            yield x, y

    _train(ctx, model, opt, fixed(), 120, F.mse_loss, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell before the jump", ls[59] < 0.8 * ls[0])
    ctx.check("loss blew up (>100x) after step 60", max(ls[60:]) > 100 * ls[59] or not _finite(ls))


# -- iceberg drift net: an init gain typo makes gradients grow through depth -------------------


class Deep(nn.Module):
    def __init__(self, n_in, width, depth):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(n_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x)


@scenario(
    family="iceberg_drift_vector_net",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="kaiming_normal_ applied and then the std multiplied by 2 (a gain meant for "
    "the head applied to all 12 layers): activations and gradients grow ~4x per layer through "
    "depth, the first layer's gradient is largest and SGD with momentum blows up.",
)
def h142_iceberg_drift_init_gain(ctx: Context) -> None:
    gen = seeded(14205)
    model = Deep(8, 48, 12)
    twin = Deep(8, 48, 12)
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        for lin, tl in zip(model.layers, twin.layers, strict=True):
            nn.init.kaiming_normal_(lin.weight)
            tl.weight.copy_(lin.weight)
            lin.weight.mul_(2.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratio: list[float] = []

    ctx.attach(model, opt)
    batches = _tabular(gen, 8, 64)
    x0, y0 = next(batches)
    F.mse_loss(twin(x0), y0.expand(-1, 2)).backward()
    F.mse_loss(model(x0), y0.expand(-1, 2)).backward()
    ratio.append(float(model.layers[0].weight.grad.norm() / twin.layers[0].weight.grad.norm()))
    model.zero_grad(set_to_none=True)
    for _step in range(80):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y.expand(-1, 2))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("layers.0 grad >1000x its correctly initialised twin's", ratio[0] > 1e3)
    ctx.check("loss blew up (>1000x) or went non-finite", not _finite(ls) or max(ls) > 1e3 * ls[0])


# -- crab-pot catch regressor: a sentinel -9999 in one batch ----------------------------------


@scenario(
    family="crab_pot_catch_regressor",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="One shard's missing soak times were filled with the sentinel -9999 and not masked; "
    "the batch at step 90 carries them: one huge loss and gradient, then training goes on.",
)
def h142_crab_pot_sentinel_batch(ctx: Context) -> None:
    gen = seeded(14206)
    model = Regressor(7, 48, act=nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:8, 2] = -9999.0
        return x, y

    _train(ctx, model, opt, _tabular(gen, 7, 64), 160, F.mse_loss, alter=alter)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("grad norm at step 90 >50x median", g[90] > 50 * _median(g[:90]))
    ctx.check("loss at step 90 >50x median", ls[90] > 50 * _median(ls[60:90]))
    ctx.check("finite throughout", _finite(ls))


# -- lock-keeper fill time: an aux-loss weight read as 200 for one step ------------------------


@scenario(
    family="lock_keeper_fill_time_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A config hot-reload at step 120 reads the loss weight '2.00' as '200' for one step "
    "before the next reload fixes it: one backward pass 100x too large, the data are fine.",
)
def h142_lock_keeper_loss_weight(ctx: Context) -> None:
    gen = seeded(14207)
    model = Regressor(6, 48)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def scale(step):
        return 200.0 if step == 120 else 2.0

    _train(ctx, model, opt, _tabular(gen, 6, 64), 200, F.mse_loss, scale=scale)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("grad norm at step 120 >30x median", g[120] > 30 * _median(g[90:120]))
    ctx.check("finite throughout", _finite(ls))


# -- cheddar curd pH: one giant gradient fills Adam's second moment ----------------------------


@scenario(
    family="cheddar_curd_ph_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="Adam with beta2=0.9999; at step 60 the pH column of one batch is read in mV "
    "(x1000 on the targets): one enormous gradient fills v, and for the rest of the run the "
    "updates are ~100x smaller, so the loss stalls well above where it was heading.",
)
def h142_cheddar_poisoned_v(ctx: Context) -> None:
    gen = seeded(14208)
    model = Regressor(8, 48)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.9999))
    vsum: dict[int, float] = {}

    def alter(step, x, y):
        return (x, y * 3000.0) if step == 60 else (x, y)

    def after(step):
        vsum[step] = float(sum(opt.state[p]["exp_avg_sq"].sum() for p in model.parameters()))

    _train(ctx, model, opt, _tabular(gen, 8, 64), 160, F.mse_loss, alter=alter, after=after)
    g = ctx.grad_norms
    ctx.check("grad at step 60 >1000x median", g[60] > 1000 * _median(g[:60]))
    ls = ctx.losses
    ctx.check("second moment at step 150 >100x step 59's", vsum[150] > 100 * vsum[59])
    ctx.check("loss stalled >5x above pre-onset", _mean(ls[-20:]) > 5 * _mean(ls[40:60]))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- fumarole gas flux: a variance head without softplus, log of a negative -------------------


class MeanVar(nn.Module):
    def __init__(self, n_in, width):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(n_in, width), nn.Tanh())
        self.mean_head = nn.Linear(width, 1)
        self.var_head = nn.Linear(width, 1)
        with torch.no_grad():
            self.var_head.weight.mul_(0.1)
            self.var_head.bias.fill_(1.0)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.mean_head(h), self.var_head(h)], 1)


def _gauss_nll_no_clamp(out, y):
    mu, var = out[:, :1], out[:, 1:]
    return (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()


@scenario(
    family="fumarole_gas_flux_model",
    optimizer="AdamW",
    cause="nonfinite",
    where=("var_head",),
    diverges=11,
    heldout=True,
    note="Gaussian NLL written by hand with the variance head used raw (the softplus was "
    "dropped in a refactor): as the fit improves Adam drives the predicted variance down "
    "through 0 and log(var) of a negative gives NaN.",
)
def h142_fumarole_raw_variance(ctx: Context) -> None:
    gen = seeded(14209)
    model = MeanVar(6, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    neg: list[bool] = []

    def hook(_m, _i, out):
        neg.append(bool((out <= 0).any()))

    model.var_head.register_forward_hook(hook)
    _train(ctx, model, opt, _tabular(gen, 6, 64, noise=0.01), 300, _gauss_nll_no_clamp)
    ls = ctx.losses
    k = next((i for i, v in enumerate(ls) if not math.isfinite(v)), None)
    ctx.check("loss first NaN at step 11", k == 11)
    ctx.check("var_head output <= 0 at the NaN step", k is not None and neg[k])


# -- kestrel hover stability: a bias-init bug and a high lr kill the ReLUs ---------------------


@scenario(
    family="kestrel_hover_stability_classifier",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("body.0",),
    diverges=None,
    heldout=True,
    note="The hidden biases are initialised to -3 (copied from a sparse-coding recipe) and "
    "the lr is 1.5: after a few large steps almost every unit of body.0 is never positive "
    "again, and the BCE loss stops improving.",
)
def h142_kestrel_dead_relus(ctx: Context) -> None:
    gen = seeded(14210)
    model = Regressor(10, 64, depth=1, act=nn.ReLU)
    with torch.no_grad():
        model.body[0].bias.fill_(-3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.5)
    base = _clusters(gen, 10, 2, 64, spread=1.5)

    def batches():
        for x, y in base:
            yield x * 3.0, y.float()[:, None]

    _train(ctx, model, opt, batches(), 150, F.binary_cross_entropy_with_logits)
    x, _ = next(base)
    with torch.no_grad():
        dead = dead_fraction(model.body[0](x * 3.0))
    ctx.check("over 80% of body.0 units dead", dead > 0.8)
    ctx.check("loss still above 0.4", _mean(ctx.losses[-10:]) > 0.4)


# -- nightjar churr classifier: temperature divided instead of multiplied ---------------------


@scenario(
    family="nightjar_churr_classifier",
    optimizer="SGD Nesterov",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A temperature of 0.02 meant for the teacher is applied to the student as "
    "logits / 0.02: the softmax saturates and most targets' probabilities round to 1.0.",
)
def h142_nightjar_temperature_bug(ctx: Context) -> None:
    gen = seeded(14211)
    model = Regressor(12, 48, act=nn.ReLU, n_out=6)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    batches = _clusters(gen, 12, 6, 64, spread=0.8)
    _train(
        ctx,
        model,
        opt,
        batches,
        120,
        F.cross_entropy,
        classifier=True,
        forward=lambda m, x: m(x) / 0.02,
    )
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x) / 0.02, y)
    ctx.check("over half the rows' target prob is exactly 1.0", frac > 0.5)


# -- dovecote homing time: the encoder's param group lr typo ---------------------------------


@scenario(
    family="dovecote_homing_time_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("body.0",),
    diverges=None,
    heldout=True,
    note="Two param groups: the first layer's lr written 2e-9 instead of 2e-3 (a typo in the "
    "config): body.0 barely moves while the rest trains.",
)
def h142_dovecote_group_typo(ctx: Context) -> None:
    gen = seeded(14212)
    model = Regressor(9, 48)
    first = list(model.body[0].parameters())
    ids = {id(p) for p in first}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adamax([{"params": first, "lr": 2e-9}, {"params": rest, "lr": 2e-3}])
    w0 = model.body[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    _train(ctx, model, opt, _tabular(gen, 9, 64), 120, F.mse_loss)
    rel0 = float((model.body[0].weight.detach() - w0).norm() / w0.norm())
    relh = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check("body.0 moved <1e-5 relative", rel0 < 1e-5)
    ctx.check("head moved >1e-2 relative", relh > 1e-2)


# -- perry press yield: a weight-decay sign bug ------------------------------------------------


@scenario(
    family="perry_press_yield_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Decoupled weight decay applied by hand after each RMSprop step as p += lr*wd*p "
    "(sign flipped): the weights inflate slowly and the loss climbs steadily.",
)
def h142_perry_press_decay_sign(ctx: Context) -> None:
    gen = seeded(14213)
    model = Regressor(8, 48)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=1e-3 * 30.0)

    _train(ctx, model, opt, _tabular(gen, 8, 64), 200, F.mse_loss, after=after)
    ls = ctx.losses
    ctx.check("loss climbed to >3x its minimum", _mean(ls[-10:]) > 3 * min(ls))
    ctx.check("finite throughout", _finite(ls))


# -- chainmail ring defect CNN (GroupNorm + BatchNorm): a healthy control ---------------------


class RingCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.gn1 = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16 * 16, 10)

    def forward(self, x):
        x = F.relu(self.gn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


@scenario(
    family="chainmail_ring_defect_cnn",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="GroupNorm and BatchNorm CNN on 8x8 ring scans, Nesterov SGD with OneCycleLR and "
    "label smoothing 0.1.",
)
def h142_chainmail_onecycle_control(ctx: Context) -> None:
    gen = seeded(14214)
    model = RingCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=120)
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        120,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))


# -- perry press control: Adagrad with ReduceLROnPlateau on noisy batches ---------------------


@scenario(
    family="perry_press_yield_regressor",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="Adagrad on noisy batches (noise 0.3) with ReduceLROnPlateau on the training loss.",
)
def h142_perry_press_plateau_control(ctx: Context) -> None:
    gen = seeded(14215)
    model = Regressor(8, 48)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(ctx, model, opt, _tabular(gen, 8, 64, noise=0.3), 200, F.mse_loss, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses))


# -- Hugging Face Beam causal LM: warm-up with clipping ---------------------------------------


def _beam(vocab=128):
    from transformers import BeamConfig, BeamForCausalLM

    config = BeamConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        moe_intermediate_size=16,
        num_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        sliding_window=16,
    )
    return BeamForCausalLM(config)


@scenario(
    family="hf_beam_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A tiny Beam causal LM (MoE, logit soft-capping) on bytes, AdamW with linear warm-up "
    "and gradient clipping at 1.0.",
)
def h142_hf_beam_warmup_control(ctx: Context) -> None:
    gen = seeded(14216)
    model = _beam()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))

    def lm(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    _train(
        ctx,
        model,
        opt,
        text_batches(gen, 8, 32),
        100,
        lm,
        clip=1.0,
        sched=sched,
        forward=lambda m, x: m(x).logits,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.8))
