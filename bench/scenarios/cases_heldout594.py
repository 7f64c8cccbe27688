"""Held-out set 594 (``h594_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: tinsmith lantern solder-joint classifier fed one shard of raw millivolt readings
(data_outlier, SGD momentum, clipping); cordwainer boot-last heel-pitch regressor whose resumed
step skips the manual loss unscale (adam_second_moment_poisoned, Adam); sorghum-mill syrup brix
regressor whose in-model per-batch range normaliser divides 0 by 0 on a stuck-sensor batch
(nonfinite, RMSprop); pewter tankard pour regressor under fp16 autocast fed melt temperature in
millikelvin (amp_overflow, AdamW, GradScaler); luge sled-runner steel tanh regressor with SGD lr
typed 2.5 for 0.25 (sharpness_above_limit, plain SGD); katydid stridulation Elman classifier whose
recurrent weights are orthogonal with a stray gain of 1.5 (exploding_gradients, SGD Nesterov);
millwright waterwheel-bucket regressor whose fc1 group lr is multiplied by a frozen-epochs flag
of 0 (update_ratio_out_of_range, Adagrad, param groups); hoof-trimming sole-depth ReLU regressor
hit by a scheduler restart to 300x the base lr (loss_of_plasticity, Adam); kora harp-string
cosine classifier whose logit scale is the feature width instead of its inverse square root
(softmax_collapse, Adamax); lamplighter wick-trim classifier whose auxiliary-loss weight ramp
returns 14 for one step (gradient_spike, ASGD).
Controls: luthier soundboard tap-tone feature-token Transformer, checkpointed at step 120 and
resumed at once with model, optimizer, scheduler and RNG restored (alarming-looking, AdamW,
warm-up + cosine); ektara string-pluck conv1d classifier (RAdam, OneCycleLR, label smoothing,
gradient accumulation); sea-stack erosion-retreat Huber regressor (NAdam, ReduceLROnPlateau,
clipping, heavy-tailed noisy targets).
"""

from __future__ import annotations

import io
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.5, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = spread * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


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
    clip=None,
    sched=None,
    plateau=None,
    after=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
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
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, loss, x, y) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step, out.detach(), y)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _top_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


# -- faults ---------------------------------------------------------------------------------------


@scenario(
    "tinsmith_lantern_solder_joint_gelu_classifier",
    "SGD momentum",
    "data_outlier",
    heldout=True,
    onset=110,
    note="the joint-inspection rig writes one shard in raw millivolts instead of volts (the "
    "export skipped its /1000); the batch drawn from it at step 110 has features 1000x too "
    "large; clipping keeps the update bounded and the run recovers",
)
def h594_tinsmith_lantern_solder_joint_gelu_classifier(ctx):
    gen = seeded(5941)
    model = _Net(16, 48, 5, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = _classes(gen, 64, 16, 5, 59411, spread=0.7)

    def alter(step, x, y):
        return (x * 1000.0 + 2048.0, y) if step == 110 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, alter=alter, clip=1.0
    )
    ctx.check(
        "the loss at 110 is over 20x the median before", losses[110] > 20 * _median(losses[90:110])
    )
    ctx.check(
        "the gradient at 110 is over 10x the median before",
        norms[110] > 10 * _median(norms[90:110]),
    )
    ctx.check(
        "the run recovers: last 20 steps within 2x of before",
        _mean(losses[-20:]) < 2 * _mean(losses[90:110]),
    )
    ctx.check("the run trains and stays finite", _fell(losses))


@scenario(
    "cordwainer_boot_last_heel_pitch_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    where=(),
    heldout=True,
    onset=80,
    note="the loop scales the loss by 2**16 for a half-precision experiment and divides the "
    "gradients back before the step; the step resumed from a checkpoint at 80 skips the unscale, "
    "so one gradient 65536x too large lands in Adam's second moment and the updates stall for "
    "hundreds of steps afterwards",
)
def h594_cordwainer_boot_last_heel_pitch_regressor(ctx):
    gen = seeded(5942)
    model = _Net(12, 48, 1, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = _readings(gen, 64, 12, 59421)
    ctx.attach(model, opt)
    losses, norms, moves = [], [], []
    scale = 2.0**16
    for step in range(220):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        (loss * scale).backward()
        if step != 80:
            for p in model.parameters():
                p.grad.div_(scale)
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        before = _flat(model)
        opt.step()
        moves.append(float((_flat(model) - before).norm()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "the gradient at 80 is over 1000x the median before",
        norms[80] > 1000 * _median(norms[60:80]),
    )
    ctx.check(
        "updates 150-220 are under 1/10 of those 40-80",
        _mean(moves[150:220]) < 0.1 * _mean(moves[40:80]),
    )
    ctx.check("the loss stays finite", _finite(losses))


class _RangeNorm(nn.Module):
    """Per-batch min-max scaling of each reading; the eps in the denominator was dropped."""

    def forward(self, x):
        lo = x.min(0, keepdim=True).values
        hi = x.max(0, keepdim=True).values
        return (x - lo) / (hi - lo)


class _BrixNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.norm = _RangeNorm()
        self.net = _Net(d_in, 40, 1, nn.Tanh)

    def forward(self, x):
        return self.net(self.norm(x))


@scenario(
    "sorghum_mill_syrup_brix_range_norm_regressor",
    "RMSprop",
    "nonfinite",
    where=("norm",),
    diverges=95,
    heldout=True,
    onset=95,
    note="the model min-max scales each reading over the batch with (x - min)/(max - min) and no "
    "eps; at step 95 a batch comes from the evaporator pan whose refractometer is stuck at one "
    "value, max - min = 0, and the normaliser makes 0/0 = NaN",
)
def h594_sorghum_mill_syrup_brix_range_norm_regressor(ctx):
    gen = seeded(5943)
    model = _BrixNet(10)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 10, 59431)
    seen = {}

    def alter(step, x, y):
        if step == 95:
            x = x.clone()
            x[:, 3] = 1.37
            seen["norm_nan"] = bool(torch.isnan(model.norm(x)).any())
        return x, y

    losses, _ = _loop(ctx, model, opt, batches, 160, F.mse_loss, alter=alter)
    ctx.check("the normaliser's output is NaN at 95", seen.get("norm_nan", False))
    ctx.check("the loss is NaN at step 95", len(losses) == 96 and math.isnan(losses[95]))
    ctx.check("the loss was finite and falling before", _fell(losses[:95]))


class _PourNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 64)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x))))).squeeze(-1)


@scenario(
    "pewter_tankard_pour_fp16_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=80,
    heldout=True,
    onset=80,
    note="fp16 autocast + GradScaler; from step 80 the foundry logger sends the melt temperature "
    "in millikelvin instead of hundreds of kelvin (a unit change upstream), so fc1's fp16 output "
    "overflows to inf while the same product is finite in float32",
)
def h594_pewter_tankard_pour_fp16_regressor(ctx):
    gen = seeded(5944)
    model = _PourNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    batches = _readings(gen, 64, 8, 59441)
    ctx.attach(model, opt, scaler=scaler)
    losses, seen = [], {}
    for step in range(150):
        x, y = next(batches)
        if step >= 80:
            x = x.clone()
            x[:, 0] = (x[:, 0] * 0.5 + 6.0) * 1e5
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
            if step == 80:
                h16 = model.fc1(x)
                seen["fp16_inf"] = bool((~torch.isfinite(h16)).any())
        if step == 80:
            seen["fp32_finite"] = bool(torch.isfinite(model.fc1(x)).all())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        ctx.grad_norms.append(grad_norm(model))
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        ctx.scales.append(float(scaler.get_scale()))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("fc1's fp16 output is non-finite at 80", seen.get("fp16_inf", False))
    ctx.check("the same product is finite in float32", seen.get("fp32_finite", False))
    ctx.check("the loss is non-finite at 80", len(losses) == 81 and not math.isfinite(losses[80]))
    ctx.check("the loss fell before", _fell(losses[:80]))


@scenario(
    "luge_sled_runner_steel_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="the sweep config types lr=2.5 for 0.25; lr x top Hessian eigenvalue is past 2 from the "
    "first step and the loss blows up",
)
def h594_luge_sled_runner_steel_tanh_regressor(ctx):
    gen = seeded(5945)
    model = _Net(10, 48, 1, nn.Tanh)
    lr = 2.5
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 128, 10, 59451)
    x0, y0 = next(batches)
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.mse_loss)
    ctx.check("lr x top eigenvalue is past 2 at step 0", lr * eig > 2.0)
    ctx.check(
        "the loss blows up: over 100x its start or non-finite",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


class _ElmanTagger(nn.Module):
    def __init__(self, hidden=48, k=4):
        super().__init__()
        self.rnn = nn.RNN(6, hidden, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(hidden, k)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _chirps(gen, batch, seed, k=4, length=40):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(k, 6, generator=g)
    t = torch.arange(length, dtype=torch.float32)[None, :, None]
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        x = protos[y][:, None, :] * torch.sin(0.3 * t * (1 + y[:, None, None]))
        yield x + 0.3 * torch.randn(batch, length, 6, generator=gen), y


@scenario(
    "katydid_stridulation_elman_classifier",
    "SGD Nesterov",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="a ReLU (identity-style) Elman RNN whose recurrent weights are initialised orthogonal "
    "with gain=1.5, the gain meant for the input projection, where the recipe calls for 1.0; "
    "over 40 chirp steps the backward signal grows through time and, with no clipping, the run "
    "blows up",
)
def h594_katydid_stridulation_elman_classifier(ctx):
    gen = seeded(5946)
    model = _ElmanTagger()
    nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=1.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    batches = _chirps(gen, 32, 59461)
    x, y = next(batches)
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    g_first = float(x.grad[:, 0].norm())
    g_last = float(x.grad[:, -1].norm())
    model.zero_grad(set_to_none=True)
    losses, norms = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    ctx.check(
        "the input gradient at the first time step is over 5x the last's", g_first > 5 * g_last
    )
    ctx.check(
        "the loss blows up: over 10x its start or non-finite",
        not _finite(losses) or max(losses) > 10 * losses[0],
    )


@scenario(
    "millwright_waterwheel_bucket_group_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    where=("fc1",),
    heldout=True,
    note="param groups: fc1's lr is written base_lr * int(freeze_epochs == 0) meaning to freeze "
    "it only during warm-up epochs, but freeze_epochs is 2 for the whole run, so fc1's lr is 0 "
    "and it never moves while the rest trains",
)
def h594_millwright_waterwheel_bucket_group_regressor(ctx):
    gen = seeded(5947)
    model = _Net(12, 48, 1, nn.SiLU)
    base_lr, freeze_epochs = 0.05, 2
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": base_lr * int(freeze_epochs == 0)},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=base_lr,
    )
    batches = _readings(gen, 64, 12, 59471)
    w0 = _flat(model.fc1)
    f0 = _flat(model.fc2)
    losses, _ = _loop(ctx, model, opt, batches, 200, F.huber_loss)
    ctx.check("fc1 never moved", torch.equal(_flat(model.fc1), w0))
    ctx.check("fc2 moved", float((_flat(model.fc2) - f0).norm()) > 0.01 * float(f0.norm()))
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "hoof_trimming_sole_depth_relu_regressor",
    "Adam",
    "loss_of_plasticity",
    where=("fc2", "act2"),
    heldout=True,
    onset=60,
    note="a warm-restart scheduler is given the restart peak 3e-1 where 3e-3 was meant (an exponent "
    "typo); the 10-step burst at step 60 pushes most of fc2's ReLU units "
    "negative on every input and they never come back",
)
def h594_hoof_trimming_sole_depth_relu_regressor(ctx):
    gen = seeded(5948)
    model = _Net(10, 64, 1, nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 10, 59481)
    probe = torch.randn(512, 10, generator=torch.Generator().manual_seed(59482))
    dead = {}

    def before(step):
        for gr in opt.param_groups:
            gr["lr"] = 0.3 if 60 <= step < 70 else 1e-3
        if step == 59:
            with torch.no_grad():
                dead["before"] = dead_fraction(model.features(probe))

    losses, _ = _loop(ctx, model, opt, batches, 240, F.mse_loss, before=before)
    with torch.no_grad():
        dead["after"] = dead_fraction(model.features(probe))
    ctx.check("under 10% of fc2's units are dead before 60", dead["before"] < 0.1)
    ctx.check("over 50% of fc2's units are dead at the end", dead["after"] > 0.5)
    ctx.check(
        "the loss stays over 5x its level before 60", _mean(losses[-20:]) > 5 * _mean(losses[40:60])
    )
    ctx.check("the loss stays finite", _finite(losses))


class _CosineHead(nn.Module):
    def __init__(self, dim, k):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, dim) * 0.1)
        self.scale = dim  # should have been dim ** -0.5 on the unnormalised features

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T * 4.0


class _KoraNet(nn.Module):
    def __init__(self, d_in, k, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = _CosineHead(hidden, k)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    "kora_harp_string_scaled_cosine_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="the cosine head multiplies by the feature width times a 4.0 margin (256) where the "
    "port meant a scale of about 4 / sqrt(width); the float32 softmax rounds most rows' target "
    "probability to exactly 1.0",
)
def h594_kora_harp_string_scaled_cosine_classifier(ctx):
    gen = seeded(5949)
    model = _KoraNet(18, 7)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 18, 7, 59491)
    last = {}

    def after(step, out, y):
        last["frac"] = collapsed_fraction(out, y)

    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows' target probability is exactly 1.0", last.get("frac", 0) > 0.4)
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "lamplighter_wick_trim_aux_loss_classifier",
    "ASGD",
    "gradient_spike",
    heldout=True,
    onset=140,
    note="an auxiliary wick-height loss has its weight ramped by a helper that reads the step "
    "as a fraction of the run; at step 140 (a checkpoint resume) it is handed the raw step and "
    "returns 14 instead of 0.1 for that one step; the logged loss is the main loss only",
)
def h594_lamplighter_wick_trim_aux_loss_classifier(ctx):
    gen = seeded(5950)
    model = _Net(14, 48, 4, nn.GELU)
    aux = nn.Linear(48, 1)
    model.aux = aux
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    batches = _classes(gen, 64, 14, 4, 59501)
    steps = 220

    def weight(step):
        frac = step if step == 140 else step / steps  # the resumed step passes the raw step
        return 0.1 * max(frac, 1.0)

    def backprop(step, loss, x, y):
        h = model.features(x)
        target = x[:, :1]
        return loss + weight(step) * F.mse_loss(model.aux(h), target)

    losses, norms = _loop(
        ctx, model, opt, batches, steps, F.cross_entropy, classifier=True, backprop=backprop
    )
    ctx.check(
        "the gradient at 140 is over 30x the median before",
        norms[140] > 30 * _median(norms[120:140]),
    )
    ctx.check("the logged loss at 140 is ordinary", losses[140] < 2 * _mean(losses[130:140]))
    ctx.check("the run trains and stays finite", _fell(losses))


# -- healthy controls -----------------------------------------------------------------------------


class _FeatureTokenizer(nn.Module):
    """Each numeric feature becomes a token: x_f * w_f + b_f; a learned CLS token is prepended."""

    def __init__(self, n_features, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, dim) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.zeros(n_features, dim))
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)

    def forward(self, x):
        tokens = x[:, :, None] * self.weight + self.bias
        return torch.cat([self.cls.expand(len(x), 1, -1), tokens], 1)


class _TabAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _TabBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _TabAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class _FTTransformer(nn.Module):
    def __init__(self, n_features, k, dim=32, heads=4, layers=2):
        super().__init__()
        self.tokenizer = _FeatureTokenizer(n_features, dim)
        self.blocks = nn.ModuleList(_TabBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, k)

    def forward(self, x):
        h = self.tokenizer(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h[:, 0]))


@scenario(
    "luthier_soundboard_tap_tone_feature_token_transformer",
    "AdamW",
    "healthy",
    heldout=True,
    note="feature-token Transformer (one token per tap-tone feature, a CLS token, "
    "self-attention) with linear warm-up and cosine decay; at step 120 it saves a checkpoint "
    "(model, optimizer, scheduler, torch and data RNG) and resumes from it at once: nothing "
    "changes, the run carries on as before",
)
def h594_luthier_soundboard_tap_tone_feature_token_transformer(ctx):
    gen = seeded(5951)
    model = _FTTransformer(10, 5)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps, warm = 220, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    batches = _classes(gen, 64, 10, 5, 59511, spread=0.9)
    ctx.attach(model, opt)
    losses, same = [], {}
    for step in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step == 120:
            buf = io.BytesIO()
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "data_rng": gen.get_state(),
                },
                buf,
            )
            saved = _flat(model)
            lr_saved = opt.param_groups[0]["lr"]
            buf.seek(0)
            ckpt = torch.load(buf, weights_only=False)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
            torch.set_rng_state(ckpt["torch_rng"])
            gen.set_state(ckpt["data_rng"])
            same["params"] = torch.equal(_flat(model), saved)
            same["lr"] = opt.param_groups[0]["lr"] == lr_saved
            same["state"] = len(opt.state) == len(list(model.parameters()))
    ctx.check("the parameters are identical after the resume", same.get("params", False))
    ctx.check(
        "the lr and optimizer state came back", same.get("lr", False) and same.get("state", False)
    )
    ctx.check("no jump at the resume", losses[121] < 1.5 * _mean(losses[111:121]) + 0.05)
    ctx.check("the run trains and stays finite", _fell(losses))


class _PluckConv(nn.Module):
    def __init__(self, k=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, k)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.max_pool1d(F.relu(self.conv2(h)), 2)
        return self.head(h.mean(-1))


def _plucks(gen, batch, k=5, length=48):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        freq = 0.15 + 0.12 * y[:, None].float()
        decay = torch.exp(-t / 20.0)
        x = torch.sin(freq * t) * decay + 0.3 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    "ektara_string_pluck_conv1d_classifier",
    "RAdam",
    "healthy",
    heldout=True,
    note="1-d conv classifier of plucked-string envelopes: label smoothing 0.1, 2-micro-batch "
    "gradient accumulation, OneCycleLR",
)
def h594_ektara_string_pluck_conv1d_classifier(ctx):
    gen = seeded(5952)
    model = _PluckConv()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-2, total_steps=steps)
    batches = _plucks(gen, 32)
    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check("the run trains and stays finite", _fell(losses))


@scenario(
    "sea_stack_erosion_retreat_huber_regressor",
    "NAdam",
    "healthy",
    heldout=True,
    note="Huber regressor of sea-stack retreat with Student-t (df=2) noisy targets, "
    "ReduceLROnPlateau and clipping at 1.0",
)
def h594_sea_stack_erosion_retreat_huber_regressor(ctx):
    gen = seeded(5953)
    model = _Net(9, 48, 1, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    student = torch.distributions.StudentT(2.0)
    clean = _readings(gen, 64, 9, 59531, noise=0.0)

    def noisy():
        while True:
            x, y = next(clean)
            yield x, y + 0.2 * student.sample((len(y),))

    losses, _ = _loop(ctx, model, opt, noisy(), 200, F.huber_loss, clip=1.0, plateau=plateau)
    ctx.check("the run trains and stays finite", _fell(losses, k=20, ratio=0.8))
