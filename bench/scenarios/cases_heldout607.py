"""Held-out set 607 (``h607_``): 10 faults over 10 causes and 3 healthy controls, 13 families.

All hand-written: small models for tasks from trades, crafts, sports and natural phenomena on
generated data (or scikit-learn's bundled digits). Each fault is induced the way it happens in
practice and checks, in the run, that it really happened.
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


def _finite(x: float) -> bool:
    return math.isfinite(x)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def _regression_batches(gen: torch.Generator, features: int, batch: int = 64, noise: float = 0.05):
    """A fixed smooth nonlinear target over standardised features (different per seed)."""
    w1 = torch.randn(features, 16, generator=gen) / math.sqrt(features)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, features, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


class _Regressor(nn.Module):
    def __init__(self, features: int, hidden: int = 32, act: type[nn.Module] = nn.Tanh) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


# -- 1. sharpness_above_limit ---------------------------------------------------------------------


@scenario(
    "cranberry_bog_flood_depth_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    diverges="auto",
    heldout=True,
    note="cranberry-bog harvest flood-depth tanh regressor; the config's lr typed 0.3 for 0.03, "
    "plain SGD past the 2/sharpness limit from step 0, the loss oscillates and blows up",
)
def h607_cranberry_flood_lr_typo(ctx) -> None:
    gen = seeded(60701)
    batches = _regression_batches(gen, 8)
    model = _Regressor(8, 64)
    # readings in centimetres of flood depth: targets scaled by 10, a sharp quadratic bowl
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    ctx.attach(model, opt)
    for _ in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), 10.0 * y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        if not _finite(ctx.losses[-1]):
            break
    first = ctx.losses[0]
    worst = max((v if _finite(v) else float("inf")) for v in ctx.losses)
    ctx.check("loss blows up past 100x its start", worst > 100 * first)


# -- 2. exploding_gradients -----------------------------------------------------------------------


class _DeepNet(nn.Sequential):
    def __init__(self, width: int, depth: int) -> None:
        layers: list[nn.Module] = [nn.Linear(6, width), nn.LeakyReLU(0.1)]
        for _ in range(depth - 2):
            layers += [nn.Linear(width, width), nn.LeakyReLU(0.1)]
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)


@scenario(
    "bellfounder_tuning_deep_relu_mlp",
    "SGD momentum",
    "exploding_gradients",
    ("0",),
    diverges="auto",
    heldout=True,
    note="bell-founder strike-note tuning 14-deep leaky-ReLU MLP; an init helper multiplies every "
    "kaiming-initialised weight by a stray gain 1.4, the backward signal grows through depth "
    "(the backward signal at layer 0 over 10x the last layer's), SGD momentum blows up",
)
def h607_bellfounder_init_gain(ctx) -> None:
    gen = seeded(60702)
    batches = _regression_batches(gen, 6)
    model = _DeepNet(48, 14)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, a=0.1)
                m.weight.mul_(1.4)  # the stray gain
                m.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=2e-5, momentum=0.9)
    ctx.attach(model, opt)
    signal: dict[int, float] = {}
    last = len(model) - 1
    hooks = [
        model[i].register_full_backward_hook(
            lambda mod, gi, go, i=i: signal.__setitem__(i, float(go[0].norm()))
        )
        for i in (0, last)
    ]
    ratio = 0.0
    for step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            ratio = signal[0] / signal[last]
            for h in hooks:
                h.remove()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        if not _finite(ctx.losses[-1]):
            break
    worst = max((v if _finite(v) else float("inf")) for v in ctx.losses)
    ctx.check("backward signal at layer 0 over 10x the last layer's at step 0", ratio > 10)
    ctx.check("loss blows up past 100x its start", worst > 100 * ctx.losses[0])


# -- 3. loss_of_plasticity ------------------------------------------------------------------------


class _DigitMLP(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(self.features(x))))


@scenario(
    "sumo_shikiri_charge_relu_classifier",
    "SGD",
    "loss_of_plasticity",
    ("fc1",),
    diverges=None,
    heldout=True,
    note="sumo shikiri tachi-ai charge ReLU classifier on raw 0-16 sensor counts (the /16 "
    "normalisation dropped) with SGD lr typed 0.5 for 0.05: the first steps push fc1's biases "
    "negative, over 80% of fc1's units never fire again, the loss stalls near chance",
)
def h607_sumo_dead_relus(ctx) -> None:
    gen = seeded(60703)
    batches = digit_batches(gen, 64)
    model = _DigitMLP(64)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ctx.attach(model, opt)
    x0, _ = next(batches)
    for _ in range(150):
        x, y = next(batches)
        x = x * 16.0  # the dropped normalisation
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    with torch.no_grad():
        dead = dead_fraction(model.features(x0 * 16.0))
    tail = sum(ctx.losses[-20:]) / 20
    ctx.check("over 80% of fc1's units dead at the end", dead > 0.8)
    ctx.check("loss stalls above 1.5 (chance is 2.3)", tail > 1.5)


# -- 4. update_ratio_out_of_range -----------------------------------------------------------------


@scenario(
    "gilding_leaf_adhesion_two_group_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    ("fc2",),
    diverges=None,
    heldout=True,
    note="gold-leaf gilding adhesion SiLU regressor with two param groups; fc2's group lr typed "
    "1e-10 for 1e-1, fc2 never moves while the rest trains, the loss plateaus high",
)
def h607_gilding_frozen_group(ctx) -> None:
    gen = seeded(60704)
    batches = _regression_batches(gen, 10)
    model = _Regressor(10, 48, nn.SiLU)
    opt = torch.optim.Adagrad(
        [
            {"params": [*model.fc1.parameters(), *model.head.parameters()], "lr": 1e-1},
            {"params": model.fc2.parameters(), "lr": 1e-10},  # the typo
        ]
    )
    ctx.attach(model, opt)
    w2 = model.fc2.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    moved2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    moved1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    ctx.check("fc2 moved under 1e-6 of its norm", moved2 < 1e-6)
    ctx.check("fc1 moved over 1% of its norm", moved1 > 1e-2)


# -- 5. data_outlier ------------------------------------------------------------------------------


@scenario(
    "snowpack_creep_rate_huber_regressor",
    "NAdam",
    "data_outlier",
    (),
    diverges=None,
    heldout=True,
    onset=100,
    note="snowpack creep-rate SiLU Huber regressor; one shard logged in micrometres per day "
    "instead of millimetres (targets x1000) arrives at step 100, loss over 20x, gradient over "
    "10x, clipped at 1.0, the run recovers",
)
def h607_snowpack_bad_shard(ctx) -> None:
    gen = seeded(60705)
    batches = _regression_batches(gen, 8)
    model = _Regressor(8, 48, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    for step in range(200):
        x, y = next(batches)
        if step == 100:
            y = y * 1000.0  # the mis-logged shard
        loss = F.huber_loss(model(x), y, delta=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
    before = _median(ctx.losses[80:100])
    ctx.check("loss at step 100 over 20x the median before", ctx.losses[100] > 20 * before)
    gb = _median(ctx.grad_norms[80:100])
    ctx.check("gradient at step 100 over 10x the median before", ctx.grad_norms[100] > 10 * gb)
    ctx.check("loss recovers under 2x the earlier median", _median(ctx.losses[-20:]) < 2 * before)


# -- 6. gradient_spike ----------------------------------------------------------------------------


@scenario(
    "curling_sweep_call_bce_classifier",
    "SGD Nesterov",
    "gradient_spike",
    (),
    diverges=None,
    heldout=True,
    onset=120,
    note="curling sweep-or-not call ReLU BCE classifier with 3-micro-batch accumulation; the "
    "per-step loss weight table has 100 typed for 1.00 at step 120, the backpropagated gradient "
    "spikes over 30x while the logged loss is ordinary, clipped at 5, SGD Nesterov",
)
def h607_curling_loss_weight_typo(ctx) -> None:
    gen = seeded(60706)
    w = torch.randn(12, generator=gen)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(12, 32))
    model.add_module("relu", nn.ReLU())
    model.add_module("head", nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    weights = {120: 100.0}
    for step in range(200):
        total = 0.0
        opt.zero_grad(set_to_none=True)
        for _ in range(3):
            x = torch.randn(32, 12, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(32, generator=gen)) > 0).float()[:, None]
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            (weights.get(step, 1.0) * loss / 3).backward()
            total += float(loss) / 3
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(torch.tensor(total))
    gb = _median(ctx.grad_norms[100:120])
    ctx.check("gradient at step 120 over 30x the median before", ctx.grad_norms[120] > 30 * gb)
    lb = _median(ctx.losses[100:120])
    ctx.check("logged loss at step 120 ordinary (under 2x)", ctx.losses[120] < 2 * lb)


# -- 7. nonfinite ---------------------------------------------------------------------------------


class _LogDrip(nn.Module):
    """log of the drip interval (seconds): the clamp the original had was dropped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _DripNLL(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logdrip = _LogDrip()
        self.fc1 = nn.Linear(6, 32)
        self.fc2 = nn.Linear(32, 32)
        self.mean = nn.Linear(32, 1)
        self.log_var = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.silu(self.fc2(F.silu(self.fc1(self.logdrip(x)))))
        return self.mean(h), self.log_var(h)


@scenario(
    "stalactite_drip_rate_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    ("logdrip",),
    diverges=80,
    heldout=True,
    onset=80,
    note="stalactite growth Gaussian-NLL SiLU net; in-model log(drip interval) without its "
    "clamp, a batch from a dry cave season (interval 0) at step 80 gives log 0 = -inf and a NaN "
    "loss, RAdam",
)
def h607_stalactite_log_zero(ctx) -> None:
    gen = seeded(60707)
    model = _DripNLL()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    nan_step = -1
    for step in range(120):
        x = torch.randn(64, 6, generator=gen)
        x[:, 0] = torch.rand(64, generator=gen) * 2 + 0.5
        if step == 80:
            x[:5, 0] = 0.0  # dry season: no drip
        y = (torch.log(x[:, :1].clamp_min(1e-3)) + 0.5 * x[:, 1:2]) + 0.1 * torch.randn(
            64, 1, generator=gen
        )
        mean, log_var = model(x)
        loss = F.gaussian_nll_loss(mean, y, log_var.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        if not _finite(ctx.losses[-1]):
            nan_step = step
            break
    ctx.check("loss non-finite at step 80", nan_step == 80)
    ctx.check("loss finite before step 80", all(_finite(v) for v in ctx.losses[:80]))


# -- 8. amp_overflow ------------------------------------------------------------------------------


@scenario(
    "copper_enamel_firing_fp16_gelu_regressor",
    "AdamW",
    "amp_overflow",
    ("fc1",),
    diverges=70,
    heldout=True,
    onset=70,
    note="copper-enamel kiln-firing GELU regressor under fp16 autocast + GradScaler; from step 70 "
    "the kiln thermocouple feed switches to raw millikelvin (x1e5), fc1's fp16 output overflows "
    "to inf (finite in float32), the loss is non-finite, the scaler skips steps",
)
def h607_enamel_fp16_overflow(ctx) -> None:
    gen = seeded(60708)
    batches = _regression_batches(gen, 8)
    model = _Regressor(8, 64, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    overflow16 = finite32 = False
    for step in range(100):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1e5 + 3e5  # raw millikelvin
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        if step == 70:
            with torch.no_grad():
                with torch.autocast("cpu", dtype=torch.float16):
                    h16 = model.fc1(x)
                h32 = model.fc1(x)
            overflow16 = not bool(torch.isfinite(h16).all())
            finite32 = bool(torch.isfinite(h32).all())
        if not _finite(ctx.losses[-1]) and step > 75:
            break
    ctx.check("fc1's fp16 output non-finite at step 70", overflow16)
    ctx.check("fc1's float32 output finite at step 70", finite32)
    ctx.check("loss finite before 70", all(_finite(v) for v in ctx.losses[:70]))
    ctx.check("loss non-finite at 70", not _finite(ctx.losses[70]))


# -- 9. softmax_collapse --------------------------------------------------------------------------


class _KendoNet(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return self.head(h) / self.temperature


@scenario(
    "kendo_strike_zone_temperature_classifier",
    "Adam",
    "softmax_collapse",
    ("head",),
    diverges=None,
    heldout=True,
    note="kendo strike-zone (men/kote/do/tsuki...) GELU classifier; the config's temp_ms=0.5 is "
    "read as seconds and divided by 1000, logits divided by 0.0005, over 40% of rows' target "
    "probability rounds to exactly 1.0, Adam",
)
def h607_kendo_temperature_bug(ctx) -> None:
    gen = seeded(60709)
    batches = digit_batches(gen, 64)
    model = _KendoNet(temperature=0.5 / 1000)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    fracs: list[float] = []
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        fracs.append(collapsed_fraction(logits.detach(), y))
    ctx.check(
        "over 40% of rows' target probability exactly 1.0 (last 10 steps)",
        sum(fracs[-10:]) / 10 > 0.4,
    )


# -- 10. loss_divergence --------------------------------------------------------------------------


@scenario(
    "peat_bog_subsidence_tanh_regressor",
    "RMSprop",
    "loss_divergence",
    (),
    diverges=None,
    heldout=True,
    onset=0,
    note="peat-bog subsidence tanh regressor; hand-written decoupled weight decay after "
    "RMSprop's step with its sign flipped (p *= 1 + lr*wd), the weights grow over 2x and the "
    "loss climbs slowly to over 3x its best with no single jump",
)
def h607_peat_decay_sign(ctx) -> None:
    gen = seeded(60710)
    batches = _regression_batches(gen, 8)
    model = _Regressor(8, 32)
    lr, wd = 1e-3, 8.0
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # should be 1 - lr*wd
        ctx.step(loss)
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    best = min(ctx.losses)
    meds = [_median(ctx.losses[i : i + 10]) for i in range(0, 200, 10)]
    jumps = max(b / a for a, b in zip(meds[:-1], meds[1:], strict=False))
    ctx.check("weights' norm over 2x", w1 > 2 * w0)
    ctx.check("loss ends over 3x its best", _median(ctx.losses[-10:]) > 3 * best)
    ctx.check("no 10-step window's median over 2x the one before", jumps < 2.0)
    ctx.check("loss finite throughout", all(_finite(v) for v in ctx.losses))


# -- controls -------------------------------------------------------------------------------------


class _DroneConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _drone_batches(gen: torch.Generator, batch: int = 32, length: int = 64):
    """Four drone modes: fundamental only, with a 2nd, a 3rd partial, or a beating pair."""
    t = torch.arange(length) / length
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        f = 3 + 2 * torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.28 * f * t + ph)
        x = x + (y == 1)[:, None] * 0.6 * torch.sin(2 * 6.28 * f * t)
        x = x + (y == 2)[:, None] * 0.6 * torch.sin(3 * 6.28 * f * t)
        x = x + (y == 3)[:, None] * 0.8 * torch.sin(6.28 * (f + 0.7) * t + ph)
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    "didgeridoo_drone_mode_cosine_restart_classifier",
    "SGD momentum",
    "healthy",
    (),
    diverges=None,
    heldout=True,
    note="didgeridoo drone-mode conv1d classifier, SGD momentum with CosineAnnealingWarmRestarts "
    "(T_0=50): the rate jumps back to its peak every 50 steps and the loss bumps up each time "
    "(alarming-looking control), clipping at 1.0",
)
def h607_didgeridoo_warm_restarts(ctx) -> None:
    gen = seeded(60711)
    batches = _drone_batches(gen)
    model = _DroneConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=50)
    ctx.attach(model, opt)
    for _ in range(250):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
    first = sum(ctx.losses[:10]) / 10
    last = sum(ctx.losses[-10:]) / 10
    ctx.check("loss fell under half its start", last < 0.5 * first)
    ctx.check("loss finite throughout", all(_finite(v) for v in ctx.losses))
    bumps = sum(
        _median(ctx.losses[r : r + 5]) > _median(ctx.losses[r - 8 : r]) for r in (50, 100, 150)
    )
    ctx.check("loss bumps up after at least one restart", bumps >= 1)


def _birdsong_batches(gen: torch.Generator, batch: int = 16, length: int = 32, vocab: int = 24):
    """Generated song: motifs of syllables from a small first-order grammar, with repeats."""
    trans = torch.rand(vocab, vocab, generator=gen) ** 6
    trans = trans / trans.sum(1, keepdim=True)
    while True:
        seq = torch.empty(batch, length + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, vocab, (batch,), generator=gen)
        for t in range(1, length + 1):
            seq[:, t] = torch.multinomial(trans[seq[:, t - 1]], 1, generator=gen)[:, 0]
        yield seq[:, :-1], seq[:, 1:]


class _TiedLSTM(nn.Module):
    def __init__(self, vocab: int = 24, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.decoder = nn.Linear(dim, vocab)
        self.decoder.weight = self.embed.weight  # tied input and output embeddings

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(idx))
        return self.decoder(out)


@scenario(
    "birdsong_syllable_tied_lstm_lm",
    "Adam",
    "healthy",
    (),
    diverges=None,
    heldout=True,
    note="songbird syllable-sequence LSTM language model with tied input and output embeddings "
    "over generated song grammar, Adam with warm-up, gradient clipping at 0.5 (control)",
)
def h607_birdsong_tied_lstm(ctx) -> None:
    gen = seeded(60712)
    batches = _birdsong_batches(gen)
    model = _TiedLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    ctx.attach(model, opt)
    for _ in range(150):
        x, y = next(batches)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        sched.step()
        ctx.step(loss)
    first = sum(ctx.losses[:10]) / 10
    last = sum(ctx.losses[-10:]) / 10
    ctx.check("decoder weight is the embedding (tied)", model.decoder.weight is model.embed.weight)
    ctx.check("loss fell by over 25%", last < 0.75 * first)
    ctx.check("loss finite throughout", all(_finite(v) for v in ctx.losses))


@scenario(
    "sailmaker_panel_cut_adamax_classifier",
    "Adamax",
    "healthy",
    (),
    diverges=None,
    heldout=True,
    note="sailmaker panel-cut GELU classifier on digits-like 8x8 panel scans, Adamax with "
    "OneCycleLR, label smoothing 0.1, 2-micro-batch accumulation, a tenth of labels noisy "
    "(control)",
)
def h607_sailmaker_onecycle(ctx) -> None:
    gen = seeded(60713)
    batches = digit_batches(gen, 32)
    model = _KendoNet(temperature=1.0)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    ctx.attach(model, opt)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            noisy = torch.rand(len(y), generator=gen) < 0.1
            y = torch.where(noisy, torch.randint(0, 10, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss) / 2
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
    first = sum(ctx.losses[:10]) / 10
    last = sum(ctx.losses[-10:]) / 10
    ctx.check("loss fell under 60% of its start", last < 0.6 * first)
    ctx.check("loss finite throughout", all(_finite(v) for v in ctx.losses))
