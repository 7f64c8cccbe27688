"""Held-out set 402 (``h402_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a whirlwind vortex-core 12-layer tanh MLP initialised with std 3.0 / sqrt(fan_in)
(gradients grow through depth), a sugar-skull icing-pattern DenseNet-style classifier whose
temperature is typed 0.002 for 1.0 (softmax saturates), a sipsi reed-pitch regressor resumed at
step 150 with a freshly built optimizer (a one-off loss spike it recovers from), a trumpet-marine
string-buzz regressor trained under fp16 autocast on targets in grams (the head's fp16 output
overflows), a camanachd caman-swing net whose speed module takes sqrt(2 E / m) with no clamp on
the predicted energy (sqrt of a negative), a suikinkutsu drip-tone regressor fed one shard in
millimetres at step 120 (a corrupted batch), a tsugaru-shamisen bachi-strike regressor whose
auxiliary loss weight is read in per-mille at the curriculum switch (one gradient burst), a kecak
chant-cycle classifier whose trunk group lr is typed 1e-9 (frozen trunk), a lightning-sprite
column classifier trained with a multi-class hinge that lost its clamp (logits grow without
bound) and a gamelan kotekan tanh regressor whose hand-written weight decay has its sign flipped (slow climb).

Controls: a BN-before-each-conv DenseNet-style classifier with growth rate 8 (SGD momentum,
StepLR), a camanachd shot-outcome classifier (Adadelta, label smoothing, noisy labels,
clipping) and a tsugaru-shamisen skin-tension regressor (fp16 autocast with a GradScaler, AdamW
with a no-decay group under OneCycleLR, accumulation over 2, Huber loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, digit_batches, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.8):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs):
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _flat(params):
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


def _regression(gen, dim, batch=64, scale=1.0, noise=0.05):
    w = torch.randn(dim, generator=gen) / math.sqrt(dim)
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = torch.sin(2.0 * x @ w) + 0.5 * (x[:, 0] * x[:, 1]).tanh()
        y = y + noise * torch.randn(batch, generator=gen)
        yield x, (scale * y)[:, None]


def _classes(gen, dim=16, classes=4, batch=64, flip=0.0):
    centres = 1.5 * torch.randn(classes, dim, generator=gen)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = centres[y] + torch.randn(batch, dim, generator=gen)
        if flip > 0:
            bad = torch.rand(batch, generator=gen) < flip
            y = torch.where(bad, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


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
    inspect=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    forward=None,
):
    forward = forward or (lambda m, x: m(x))
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
                out = forward(model, x)
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
            sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


# -- models ---------------------------------------------------------------------------------------


class Regressor(nn.Module):
    def __init__(self, dim, width=32, act=nn.SiLU, out=1):
        super().__init__()
        self.fc1 = nn.Linear(dim, width)
        self.act1 = act()
        self.fc2 = nn.Linear(width, width)
        self.act2 = act()
        self.head = nn.Linear(width, out)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


class DeepTanh(nn.Module):
    def __init__(self, dim, width=32, depth=12, std=1.0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(dim if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=std / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for layer in self.layers:
            x = torch.tanh(layer(x))
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
        return self.head(x)


class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin) if bn else nn.Identity()
        self.conv = nn.Conv2d(cin, growth, 3, padding=1)

    def forward(self, x):
        return self.conv(F.relu(self.bn(x)))


class DenseNetDigits(nn.Module):
    """Each dense layer reads the concatenation of the stem and all earlier layers' maps."""

    def __init__(self, growth=8, layers=4, stem=16, bn=False, temperature=1.0):
        super().__init__()
        self.stem = nn.Conv2d(1, stem, 3, padding=1)
        self.dense = nn.ModuleList(DenseLayer(stem + i * growth, growth, bn) for i in range(layers))
        width = stem + layers * growth
        self.bn_out = nn.BatchNorm2d(width) if bn else nn.Identity()
        self.head = nn.Linear(width * 16, 10)
        self.temperature = temperature

    def logits(self, x):
        feats = [self.stem(x.reshape(-1, 1, 8, 8))]
        for layer in self.dense:
            feats.append(layer(torch.cat(feats, 1)))
        z = F.max_pool2d(F.relu(self.bn_out(torch.cat(feats, 1))), 2)
        return self.head(z.flatten(1))

    def forward(self, x):
        return self.logits(x) / self.temperature


# -- faults ---------------------------------------------------------------------------------------


@scenario(
    family="whirlwind_vortex_core_deep_tanh_mlp",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0",),
    heldout=True,
    note="12-layer tanh MLP predicting a whirlwind's core pressure drop; the init helper was "
    "called with std 3.0 / sqrt(fan_in) (a gain meant for ReLU nets copied wrongly) for 1.0: the "
    "backward gain per layer is over 1 and dL/d(layer output) grows from the top layer down to "
    "layers.0; clipping at 1.0 keeps the run finite",
)
def h402_whirlwind_vortex_core_deep_tanh_mlp(ctx):
    gen = seeded(40201)
    model = DeepTanh(8, std=3.0)
    ratios = []

    def inspect(step):
        g0 = model.outs[0].grad.norm()
        gl = model.outs[-1].grad.norm().clamp_min(1e-12)
        ratios.append(float(g0 / gl))

    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    _loop(ctx, model, opt, _regression(gen, 8), 150, F.mse_loss, inspect=inspect, clip=1.0)
    # the intended init on the same data
    seeded(40201)
    ref = DeepTanh(8, std=1.0)
    x, y = next(_regression(torch.Generator().manual_seed(7), 8))
    F.mse_loss(ref(x), y).backward()
    ref_ratio = float(ref.outs[0].grad.norm() / ref.outs[-1].grad.norm().clamp_min(1e-12))
    ctx.check("dL/d(layers.0 out) over 10x dL/d(layers.11 out) at step 0", ratios[0] > 10)
    ctx.check("median ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at the intended init", ref_ratio < 5)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="sugar_skull_icing_pattern_densenet_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    heldout=True,
    note="DenseNet-style classifier (each layer convolves the concatenation of the stem and all "
    "earlier maps) of icing-pattern glyphs (digits); the config's temperature is typed 0.002 for "
    "1.0, so the logits are divided by 0.002 and the float32 softmax of most rows rounds the "
    "target probability to exactly 1.0",
)
def h402_sugar_skull_icing_pattern_densenet_classifier(ctx):
    gen = seeded(40202)
    model = DenseNetDigits(growth=8, temperature=0.002)
    batches = digit_batches(gen, 64)
    frac, ref = [], []

    def fwd(m, x):
        out = m(x)
        return out

    def loss_fn(out, y):
        frac.append(collapsed_fraction(out.detach(), y))
        ref.append(collapsed_fraction(out.detach() * 0.002, y))
        return F.cross_entropy(out, y)

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _loop(ctx, model, opt, batches, 120, loss_fn, classifier=True, forward=fwd)
    ctx.check(
        "over half the rows' target probability exactly 1.0 (last 30)", _mean(frac[-30:]) > 0.5
    )
    ctx.check("under 5% at temperature 1.0 on the same logits", _mean(ref[-30:]) < 0.05)
    ctx.check("under 5% at the start", frac[0] < 0.05)


@scenario(
    family="sipsi_reed_pitch_resume_silu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    heldout=True,
    onset=150,
    note="SiLU regressor of a sipsi reed's pitch; the job is pre-empted and resumed at step 150 "
    "from a checkpoint that saved the model but not the optimizer or its cosine schedule (1e-2 "
    "decayed to 1e-4), so NAdam restarts at 1e-2 with empty moments and its first updates move every weight by about lr: the loss spikes once and the "
    "run recovers; gradients and data are ordinary",
)
def h402_sipsi_reed_pitch_resume_silu_regressor(ctx):
    gen = seeded(40203)
    model = Regressor(10, width=256)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    batches = _regression(gen, 10)
    ctx.attach(model, opt)
    for step in range(300):
        for g in opt.param_groups:
            g["lr"] = 1e-2 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, 150) / 150)))
        if step == 150:
            opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    base = _median(ls[120:150])
    ctx.check("loss over 3x its median within 10 steps of the resume", max(ls[150:160]) > 3 * base)
    ctx.check("recovers: last 20 under 2x the pre-resume median", _mean(ls[-20:]) < 2 * base)
    ctx.check("gradient at the resume under 3x its median", gs[150] < 3 * _median(gs[120:150]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="trumpet_marine_string_buzz_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="SiLU regressor of a trumpet marine's bridge-buzz force under fp16 autocast with a "
    "GradScaler; the target column is in milli-newtons (values near 1e5) instead of newtons, so "
    "the head's fp16 output climbs past 65504 and overflows to inf",
)
def h402_trumpet_marine_string_buzz_fp16_silu_regressor(ctx):
    gen = seeded(40204)
    model = Regressor(6, width=32)
    scaler = torch.amp.GradScaler("cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=1e-4)
    base = _regression(gen, 6)

    def batches():
        for x, y in base:
            yield x, 1.0e5 + 2.0e4 * y

    seen = {}

    def fwd(m, x):
        out = m(x)
        seen["x"] = x
        seen["out"] = out
        return out

    _loop(ctx, model, opt, batches(), 300, F.mse_loss, scaler=scaler, amp=True, forward=fwd)
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite within 300 steps", bad is not None)
    ctx.check("loss finite before", bad is not None and _finite(ctx.losses[:bad]))
    inf_fp16 = bool(torch.isinf(seen["out"]).any())
    with torch.no_grad():
        f32 = model(seen["x"]).float()
    ctx.check("the head's fp16 output is inf at the break", inf_fp16)
    ctx.check(
        "the float32 forward is finite and under 1e6",
        bool(torch.isfinite(f32).all()) and float(f32.abs().max()) < 1e6,
    )


class CamanSwing(nn.Module):
    def __init__(self, dim, width=32):
        super().__init__()
        self.fc1 = nn.Linear(dim, width)
        self.fc2 = nn.Linear(width, width)
        self.energy = nn.Linear(width, 1)
        nn.init.constant_(self.energy.bias, 4.0)
        self.speed = KineticSpeed(mass=0.5)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return self.speed(self.energy(h))


class KineticSpeed(nn.Module):
    def __init__(self, mass):
        super().__init__()
        self.mass = mass
        self.last = None

    def forward(self, e):
        self.last = e.detach()
        return torch.sqrt(2.0 * e / self.mass)


@scenario(
    family="camanachd_caman_swing_energy_sqrt_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("speed",),
    diverges="auto",
    heldout=True,
    note="shinty caman swing: a net predicts the swing's kinetic energy and its speed module "
    "returns sqrt(2 E / m) with the clamp on E dropped; slow swings near 0 m/s pull E to zero and "
    "past it, sqrt of a negative energy is NaN",
)
def h402_camanachd_caman_swing_energy_sqrt_net(ctx):
    gen = seeded(40205)
    model = CamanSwing(6)
    base = _regression(gen, 6)

    def batches():
        for x, y in base:
            yield x, (y.abs() * 1.5).clamp_max(4.0)

    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    _loop(ctx, model, opt, batches(), 300, F.mse_loss)
    bad = _first_bad(ctx.losses)
    ctx.check("loss NaN within 300 steps", bad is not None)
    ctx.check("loss finite before", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check("a predicted energy is negative at the break", float(model.speed.last.min()) < 0)


@scenario(
    family="suikinkutsu_drip_tone_silu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    heldout=True,
    onset=120,
    note="SiLU regressor of a suikinkutsu water-harp's drip tone; one recorder's shard at step "
    "120 logs the drop height and jar depth in millimetres instead of metres (features x1000): "
    "one corrupted batch, clipped, and the run recovers",
)
def h402_suikinkutsu_drip_tone_silu_regressor(ctx):
    gen = seeded(40206)
    model = Regressor(8, width=32)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :3] *= 1000.0
        return x, y

    _loop(ctx, model, opt, _regression(gen, 8), 220, F.mse_loss, alter=alter, clip=5.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at 120 over 20x its median", ls[120] > 20 * _median(ls[90:120]))
    ctx.check("gradient at 120 over 20x its median", gs[120] > 20 * _median(gs[90:120]))
    ctx.check(
        "recovers: last 20 under 2x the pre-onset median", _mean(ls[-20:]) < 2 * _median(ls[90:120])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="tsugaru_shamisen_bachi_strike_relu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    heldout=True,
    onset=140,
    note="ReLU regressor of a tsugaru shamisen bachi strike's loudness with an auxiliary "
    "smoothness term; at the curriculum switch (step 140) the schedule reads the auxiliary "
    "weight in per-mille (500 for 0.5) for that one step: one gradient burst on clean data with an "
    "ordinary logged loss, clipped, recovers",
)
def h402_tsugaru_shamisen_bachi_strike_relu_regressor(ctx):
    gen = seeded(40207)
    model = Regressor(8, width=32, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        w = 500.0 if step == 140 else 0.5
        aux = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss + w * 1e-2 * aux

    _loop(ctx, model, opt, _regression(gen, 8), 220, F.mse_loss, backprop=backprop, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at 140 over 30x its median", gs[140] > 30 * _median(gs[110:140]))
    ctx.check("logged loss at 140 under 2x its median", ls[140] < 2 * _median(ls[110:140]))
    ctx.check(
        "recovers: last 20 under 2x the pre-onset median",
        _mean(ls[-20:]) < 2 * _median(ls[110:140]),
    )
    ctx.check("finite", _finite(ls))


class TwoGroup(nn.Module):
    def __init__(self, dim=16, width=64, classes=4):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.trunk(x))


@scenario(
    family="kecak_chant_cycle_two_group_relu_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("trunk.0", "trunk.2"),
    heldout=True,
    note="ReLU classifier of kecak chant-cycle parts with a trunk and a head param group; the "
    "trunk's lr is typed 1e-9 for 1e-2, so trunk.0 and trunk.2 receive gradients but never move",
)
def h402_kecak_chant_cycle_two_group_relu_classifier(ctx):
    gen = seeded(40208)
    model = TwoGroup()
    opt = torch.optim.Adagrad(
        [
            {"params": model.trunk.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    t0, h0 = _flat(model.trunk.parameters()), _flat(model.head.parameters())
    gsum = []

    def inspect(step):
        gsum.append(float(model.trunk[0].weight.grad.norm()))

    _loop(
        ctx,
        model,
        opt,
        _classes(gen, flip=0.1),
        150,
        F.cross_entropy,
        classifier=True,
        inspect=inspect,
    )
    t1, h1 = _flat(model.trunk.parameters()), _flat(model.head.parameters())
    ctx.check("trunk moves under 1e-5 of its norm", float((t1 - t0).norm() / t0.norm()) < 1e-5)
    ctx.check("trunk.0 receives gradients", _median(gsum) > 1e-4)
    ctx.check("head moves over 5% of its norm", float((h1 - h0).norm() / h0.norm()) > 0.05)


@scenario(
    family="lightning_sprite_column_hinge_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    heldout=True,
    note="GELU classifier of red-sprite column vs carrot shapes from generated photometer "
    "features with a hand-written multi-class hinge, mean(1 - (z_y - z_other)), whose "
    "clamp_min(0) was dropped: the loss rewards an ever larger margin and the head's logits "
    "grow without bound",
)
def h402_lightning_sprite_column_hinge_classifier(ctx):
    gen = seeded(40209)
    model = Regressor(16, width=32, act=nn.GELU, out=2)
    peak = []

    def hinge(z, y):
        peak.append(float(z.detach().abs().max()))
        zy = z.gather(1, y[:, None])[:, 0]
        zo = z.gather(1, (1 - y)[:, None])[:, 0]
        return (1.0 - (zy - zo)).mean()

    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    _loop(ctx, model, opt, _classes(gen, classes=2, flip=0.05), 200, hinge, classifier=True)
    ctx.check("max |logit| over 20x its start", _mean(peak[-10:]) > 20 * peak[0])
    ctx.check(
        "still growing (last 10 over 1.3x steps 140-150)",
        _mean(peak[-10:]) > 1.3 * _mean(peak[140:150]),
    )
    ctx.check("loss below -10", ctx.losses[-1] < -10)


@scenario(
    family="gamelan_gong_kebyar_kotekan_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    heldout=True,
    note="tanh regressor of a gong kebyar kotekan's interlock timing; the hand-written L2 "
    "gradient term is subtracted, g - 0.5 w, instead of added, so plain SGD inflates every weight by 2.5% a step against the fit: the "
    "loss falls, then climbs slowly with no jump",
)
def h402_gamelan_gong_kebyar_kotekan_tanh_regressor(ctx):
    gen = seeded(40210)
    model = Regressor(8, width=32, act=nn.Tanh)
    w0 = float(_flat(model.parameters()).norm())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def decay(step):
        for p in model.parameters():
            p.grad.add_(p.detach(), alpha=-0.5)

    _loop(ctx, model, opt, _regression(gen, 8), 260, F.mse_loss, inspect=decay)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 20))
    ctx.check("weights over 2x their start", float(_flat(model.parameters()).norm()) > 2 * w0)
    ctx.check("loss climbs to over 3x its lowest 20-step mean", _mean(ls[-20:]) > 3 * low)
    means = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    ctx.check(
        "no 2x jump between 10-step means",
        all(b < 2 * a for a, b in zip(means[:-1], means[1:], strict=False)),
    )
    ctx.check("finite", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="sugar_skull_icing_pattern_bn_densenet_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="DenseNet-style digits classifier with BatchNorm before each conv (BN-ReLU-conv), growth "
    "rate 8, SGD momentum 0.9 with weight decay, StepLR x0.1 at step 90",
)
def h402_sugar_skull_icing_pattern_bn_densenet_classifier(ctx):
    gen = seeded(40211)
    model = DenseNetDigits(growth=8, bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=90, gamma=0.1)
    _loop(
        ctx, model, opt, digit_batches(gen, 64), 130, F.cross_entropy, classifier=True, sched=sched
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.3))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="camanachd_shot_outcome_relu_classifier",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="ReLU classifier of shinty shot outcomes from generated features, 10% noisy labels, "
    "Adadelta lr 1.0, label smoothing 0.1, clipping at 1.0",
)
def h402_camanachd_shot_outcome_relu_classifier(ctx):
    gen = seeded(40212)
    model = TwoGroup(classes=4)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    _loop(
        ctx,
        model,
        opt,
        _classes(gen, flip=0.1),
        150,
        lambda z, y: F.cross_entropy(z, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="tsugaru_shamisen_skin_tension_fp16_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="SiLU Huber regressor of a shamisen skin's tension under fp16 autocast with a "
    "GradScaler, AdamW with a no-decay bias group under OneCycleLR, accumulation over 2, clipping",
)
def h402_tsugaru_shamisen_skin_tension_fp16_huber_regressor(ctx):
    gen = seeded(40213)
    model = Regressor(8, width=64)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=160)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _regression(gen, 8),
        160,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))
