"""Held-out set 610 (``h610_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Every scenario is plain PyTorch on generated data or scikit-learn's bundled digits; each fault
is induced the way it happens in practice and checked in the run itself.
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
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def _regression_batches(gen: torch.Generator, d: int, batch: int, w: torch.Tensor):
    """Endless (x, y): standardised readings and a smooth nonlinear target with noise."""
    while True:
        x = torch.randn(batch, d, generator=gen)
        y = (
            torch.tanh(x @ w)
            + 0.3 * torch.sin(2 * x[:, :1])
            + 0.05 * torch.randn(batch, 1, generator=gen)
        )
        yield x, y


class ThreeLayer(nn.Module):
    def __init__(self, d: int, h: int, out: int, act: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.act1 = act()
        self.fc2 = nn.Linear(h, h)
        self.act2 = act()
        self.head = nn.Linear(h, out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.features(x))))


# -- 1. update_ratio_out_of_range: a param-group lr typo freezes fc1 ----------------------------


@scenario(
    "saddler_stirrup_leather_stretch_silu_regressor",
    "RMSprop",
    "update_ratio_out_of_range",
    where=("fc1",),
    heldout=True,
    note="param groups: fc1's lr typed 1e-10 for 1e-3 in the config; fc1 never moves while the "
    "rest trains (RMSprop)",
)
def h610_saddler_fc1_group_lr_typo(ctx: Context) -> None:
    gen = seeded(61001)
    w = torch.randn(6, 1, generator=gen)
    model = ThreeLayer(6, 32, 1)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-10},  # typo: 1e-10 for 1e-3
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=1e-3,
    )
    ctx.attach(model, opt)
    fc1_0 = model.fc1.weight.detach().clone()
    fc2_0 = model.fc2.weight.detach().clone()
    batches = _regression_batches(gen, 6, 64, w)
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rel1 = float((model.fc1.weight.detach() - fc1_0).norm() / fc1_0.norm())
    rel2 = float((model.fc2.weight.detach() - fc2_0).norm() / fc2_0.norm())
    ctx.check("fc1 relative change < 1e-6", rel1 < 1e-6)
    ctx.check("fc2 relative change > 1e-2", rel2 > 1e-2)
    ctx.check("fc2 moved over 1e4 times more than fc1", rel2 > 1e4 * max(rel1, 1e-12))


# -- 2. nonfinite: log(slope) without its clamp meets a flat batch ------------------------------


class LogSlope(nn.Module):
    """Takes the log of the first column (a slope reading); the clamp was left out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], dim=1)  # missing .clamp_min(1e-6)


class SlopeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logslope = LogSlope()
        self.fc1 = nn.Linear(5, 32)
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 2)  # mean and log-variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.fc1(self.logslope(x)))
        return self.head(F.silu(self.fc2(h)))


@scenario(
    "cider_press_juice_yield_gaussian_nll_net",
    "NAdam",
    "nonfinite",
    where=("logslope",),
    diverges=80,
    onset=80,
    heldout=True,
    note="in-model log(press-bed slope) without its clamp; the step-80 batch carries a dead-flat "
    "bed (slope 0): log 0 = -inf, the loss is NaN at step 80 (NAdam, Gaussian NLL)",
)
def h610_cider_press_log_without_clamp(ctx: Context) -> None:
    gen = seeded(61002)
    model = SlopeNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    seen: dict[str, torch.Tensor] = {}
    model.logslope.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o.detach()))
    losses_before: list[float] = []
    inf_at_onset = False
    for step in range(160):
        slope = 0.05 + 0.9 * torch.rand(64, 1, generator=gen)
        rest = torch.randn(64, 4, generator=gen)
        if step == 80:
            slope[7, 0] = 0.0  # a flat bed: the reading is exactly 0
        x = torch.cat([slope, rest], 1)
        y = 2.0 * torch.log(slope) + rest[:, :1] + 0.1 * torch.randn(64, 1, generator=gen)
        out = model(x)
        mean, logvar = out[:, :1], out[:, 1:]
        loss = F.gaussian_nll_loss(mean, y, logvar.exp())
        if step == 80:
            inf_at_onset = bool(torch.isinf(seen["out"]).any())
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
        losses_before.append(float(loss))
    ctx.check("loss finite for steps 0-79", len(losses_before) == 80 and _finite(losses_before))
    ctx.check("loss non-finite at step 80", len(ctx.losses) == 81 and math.isnan(ctx.losses[80]))
    ctx.check("logslope output has -inf at step 80", inf_at_onset)


# -- 3. sharpness_above_limit: SGD lr typed 100x too large -------------------------------------


@scenario(
    "glassblower_gather_weight_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="plain SGD lr typed 3.0 for 0.03 (MSE); the step is past 2/sharpness and the loss "
    "blows up",
)
def h610_glassblower_sgd_lr_typo(ctx: Context) -> None:
    gen = seeded(61003)
    w = torch.randn(8, 1, generator=gen)
    model = ThreeLayer(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)  # typo: 3.0 for 0.03
    ctx.attach(model, opt)
    batches = _regression_batches(gen, 8, 64, w)
    for _ in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    peak = max((v if math.isfinite(v) else float("inf")) for v in ls)
    ctx.check("loss blows up to over 10x its start", peak > 10 * ls[0])


# -- 4. exploding_gradients: a stray init gain through 12 ReLU layers --------------------------


@scenario(
    "shinty_caman_swing_speed_12_deep_relu_mlp",
    "SGD Nesterov",
    "exploding_gradients",
    where=("0",),
    diverges="auto",
    heldout=True,
    note="12-deep ReLU MLP, kaiming init then a stray extra gain of 1.3 on every weight; the "
    "backward signal at layer 0 is over 10x the last layer's and the run blows up (SGD Nesterov)",
)
def h610_shinty_init_gain_explodes(ctx: Context) -> None:
    gen = seeded(61004)
    w = torch.randn(10, 1, generator=gen)
    sizes = [10] + [48] * 11 + [1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.weight.mul_(1.3)  # stray gain left over from a tanh experiment
                nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=2e-4, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _regression_batches(gen, 10, 64, w)
    ratio0 = 0.0
    for step in range(150):
        x, y = next(batches)
        outs: dict[int, torch.Tensor] = {}
        h = x
        for i, m in enumerate(model):
            h = m(h)
            if i in (0, 22) and step == 0:
                h.retain_grad()
                outs[i] = h
        loss = F.mse_loss(h, y)
        loss.backward()
        if step == 0:
            ratio0 = float(outs[0].grad.norm() / outs[22].grad.norm())
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    peak = max((v if math.isfinite(v) else float("inf")) for v in ls)
    ctx.check("backward signal at layer 0 over 10x the last layer's at step 0", ratio0 > 10)
    ctx.check("loss blows up to over 100x its start", peak > 100 * ls[0])


# -- 5. data_outlier: one shard in the wrong units ---------------------------------------------


@scenario(
    "tennis_racket_string_tension_silu_huber_regressor",
    "Adamax",
    "data_outlier",
    onset=100,
    heldout=True,
    note="one shard logged in newtons instead of kilonewtons at step 100 (inputs x1000); loss "
    "jumps, gradient bursts, clipping holds it, the run recovers (Adamax, Huber, clip 1.0)",
)
def h610_tennis_string_shard_wrong_units(ctx: Context) -> None:
    gen = seeded(61005)
    w = torch.randn(6, 1, generator=gen)
    model = ThreeLayer(6, 32, 1)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression_batches(gen, 6, 64, w)
    for step in range(200):
        x, y = next(batches)
        if step == 100:
            x = x * 1000.0  # this shard was exported in N, not kN
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    pre_l, pre_g = _median(ls[80:100]), _median(gs[80:100])
    ctx.check("loss at step 100 over 20x the median before", ls[100] > 20 * pre_l)
    ctx.check("gradient at step 100 over 10x the median before", gs[100] > 10 * pre_g)
    ctx.check(
        "recovers: last 20 steps under 2x the pre-onset median", _median(ls[180:]) < 2 * pre_l
    )
    ctx.check("all finite", _finite(ls))


# -- 6. gradient_spike: sum reduction for one accumulation step --------------------------------


def _ring_batches(gen: torch.Generator, batch: int = 64):
    """Is the throw a ringer? two-ring geometry features, a nonlinear boundary."""
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = ((x[:, 0] * x[:, 1] + x[:, 2] - 0.5 * x[:, 3] ** 2) > 0).float()
        yield x, y


@scenario(
    "horseshoe_pitching_ringer_relu_bce_classifier",
    "SGD momentum",
    "gradient_spike",
    onset=90,
    heldout=True,
    note="at step 90 the end-of-epoch branch backpropagates the summed loss (reduction='sum' "
    "for one step), gradient over 15x; the logged (mean) loss is ordinary (SGD momentum, BCE)",
)
def h610_horseshoe_sum_reduction_one_step(ctx: Context) -> None:
    gen = seeded(61006)
    model = ThreeLayer(8, 32, 1, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    batches = _ring_batches(gen)
    for step in range(180):
        x, y = next(batches)
        logit = model(x).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logit, y)
        if step == 90:  # the epoch-end branch: reduction='sum' instead of 'mean'
            total = F.binary_cross_entropy_with_logits(logit, y, reduction="sum")
        else:
            total = loss
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 90 over 15x the median before", gs[90] > 15 * _median(gs[70:90]))
    ctx.check("logged loss at step 90 under 2x the median before", ls[90] < 2 * _median(ls[70:90]))
    ctx.check("all finite", _finite(ls))


# -- 7. loss_divergence: L2 penalty with its sign flipped --------------------------------------


@scenario(
    "pottery_wheel_wall_thickness_gelu_regressor",
    "Adam",
    "loss_divergence",
    heldout=True,
    note="hand-written L2 penalty added with its sign flipped (loss - 1e-2 * sum w^2); weights "
    "grow steadily and the loss climbs to over 3x its best with no jump (Adam)",
)
def h610_pottery_l2_sign_flip(ctx: Context) -> None:
    gen = seeded(61007)
    w = torch.randn(6, 1, generator=gen)
    model = ThreeLayer(6, 32, 1, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    norm0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    batches = _regression_batches(gen, 6, 64, w)
    for _ in range(300):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        l2 = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        total = loss - 1e-2 * l2  # sign bug: should be + wd * l2
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    norm1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    best = min(ls)
    windows = [_median(ls[i : i + 10]) for i in range(0, len(ls), 10)]
    jumps = max(b / a for a, b in zip(windows[:-1], windows[1:], strict=False))
    ctx.check("weight norm over 2x its start", norm1 > 2 * norm0)
    ctx.check("final loss over 3x its best", _median(ls[-10:]) > 3 * best)
    ctx.check("no 10-step window over 3x the one before", jumps < 3)
    ctx.check("all finite", _finite(ls))


# -- 8. softmax_collapse: temperature in ms read as seconds ------------------------------------


@scenario(
    "bell_ringing_change_method_gelu_classifier",
    "Adagrad",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="softmax temperature configured as temp_ms=0.5 but read as seconds and divided by 1000: "
    "logits divided by 0.0005, over 40% of rows' target probability exactly 1.0 (Adagrad, digits)",
)
def h610_bell_ringing_temperature_units(ctx: Context) -> None:
    gen = seeded(61008)
    model = ThreeLayer(64, 64, 10, act=nn.GELU)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    temp = 0.5 / 1000.0  # temp_ms read as seconds, then converted again
    batches = digit_batches(gen, 64)
    fracs: list[float] = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temp
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        fracs.append(collapsed_fraction(logits.detach(), y))
    ctx.check("over 40% of rows' target probability exactly 1.0 late", _median(fracs[-20:]) > 0.4)
    ctx.check("loss finite", _finite(ctx.losses))


# -- 9. output_logit_divergence: z-loss coefficient typed negative -----------------------------


@scenario(
    "sheep_shearing_fleece_grade_silu_classifier",
    "RAdam",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="z-loss coefficient typed -1e-2 for 1e-4: the penalty rewards a large logsumexp, the "
    "head's logits grow over 20x and keep growing (RAdam, digits)",
)
def h610_shearing_zloss_sign_typo(ctx: Context) -> None:
    gen = seeded(61009)
    model = ThreeLayer(64, 64, 10)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    mags: list[float] = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        total = loss + (-1e-2) * z  # typo: -1e-2 for 1e-4
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        mags.append(float(logits.detach().abs().mean()))
    ctx.check("head logits over 20x their start", mags[-1] > 20 * mags[0])
    ctx.check("head logits still growing", mags[-1] > 1.2 * mags[-40])


# -- 10. loss_of_plasticity: unstandardised readings and a hot lr kill fc1's ReLUs -------------


def _rocker_batches(gen: torch.Generator, batch: int = 64):
    """Raw sensor readings (tens to hundreds) for a 4-class grade; nobody standardised them."""
    centres = torch.randn(4, 12, generator=gen)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        x = centres[y] + 0.7 * torch.randn(batch, 12, generator=gen)
        yield 80.0 + 40.0 * x, y


@scenario(
    "surfboard_shaper_rocker_grade_relu_classifier",
    "SGD",
    "loss_of_plasticity",
    where=("fc1",),
    heldout=True,
    note="unstandardised readings (around 80, spread 40) and SGD lr typed 0.1 for 0.001: the "
    "first updates knock fc1's ReLUs off, over 80% of fc1 units die, loss stalls at chance",
)
def h610_surfboard_relus_die(ctx: Context) -> None:
    gen = seeded(61010)
    model = ThreeLayer(12, 64, 4, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx.attach(model, opt)
    batches = _rocker_batches(gen)
    dead: list[float] = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        feats = model.features(x)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        dead.append(dead_fraction(feats.detach()))
    ls = ctx.losses
    ctx.check("over 80% of fc1 units dead late", _median(dead[-20:]) > 0.8)
    ctx.check("loss stalls near chance (ln 4)", _median(ls[-20:]) > 0.8 * math.log(4))


# -- 11. control: a temporal convolutional network forecaster ---------------------------------


class CausalBlock(nn.Module):
    def __init__(self, ch: int, dilation: int) -> None:
        super().__init__()
        self.pad = 2 * dilation
        self.conv1 = nn.Conv1d(ch, ch, 3, dilation=dilation)
        self.conv2 = nn.Conv1d(ch, ch, 3, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(F.pad(x, (self.pad, 0))))
        h = self.conv2(F.pad(h, (self.pad, 0)))
        return F.relu(x + h)


class TCN(nn.Module):
    def __init__(self, ch: int = 16, dilations: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.inp = nn.Conv1d(1, ch, 1)
        self.blocks = nn.ModuleList(CausalBlock(ch, d) for d in dilations)
        self.head = nn.Conv1d(ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def _swell_series(gen: torch.Generator, batch: int = 32, length: int = 64):
    """Generated swell-height series: two random-phase sines plus noise; predict the next value."""
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        f1 = 0.1 + 0.1 * torch.rand(batch, 1, generator=gen)
        f2 = 0.3 + 0.2 * torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 2, generator=gen)
        s = torch.sin(f1 * t + ph[:, :1]) + 0.5 * torch.sin(f2 * t + ph[:, 1:])
        s = s + 0.05 * torch.randn(batch, length + 1, generator=gen)
        yield s[:, None, :-1], s[:, None, 1:]


@scenario(
    "big_wave_surf_swell_height_tcn_forecaster",
    "AdamW",
    "healthy",
    heldout=True,
    note="temporal convolutional network (dilated causal conv1d, residuals) forecasting the next "
    "value of generated swell series; AdamW, OneCycleLR, Huber loss, clipping at 1.0 (control)",
)
def h610_swell_tcn_control(ctx: Context) -> None:
    gen = seeded(61011)
    model = TCN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    ctx.attach(model, opt)
    batches = _swell_series(gen)
    for _ in range(steps):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell to under 30% of its start", _median(ls[-10:]) < 0.3 * _median(ls[:5]))
    ctx.check("all finite", _finite(ls))


# -- 12. control (looks alarming): fine-tuning with the first half of layers frozen -----------


class SixLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(64, 64)
        self.l2 = nn.Linear(64, 64)
        self.l3 = nn.Linear(64, 64)
        self.l4 = nn.Linear(64, 64)
        self.l5 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (self.l1, self.l2, self.l3, self.l4, self.l5):
            x = F.gelu(layer(x))
        return self.head(x)


@scenario(
    "calligraphy_brush_stroke_frozen_base_gelu_classifier",
    "Adam",
    "healthy",
    heldout=True,
    note="fine-tuning: a pre-trained checkpoint gets a fresh head, l1-l3 (the first half of "
    "the layers) frozen with requires_grad=False from the start of fine-tuning; their "
    "updates are exactly zero throughout (all parameters still handed to Adam, label smoothing "
    "0.1) (alarming-looking control)",
)
def h610_calligraphy_frozen_half_control(ctx: Context) -> None:
    gen = seeded(61012)
    model = SixLayer()
    # pre-training (no monitor: this is the checkpoint being fine-tuned)
    pre = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = digit_batches(gen, 64)
    for _ in range(100):
        x, y = next(batches)
        F.cross_entropy(model(x), y).backward()
        pre.step()
        pre.zero_grad(set_to_none=True)
    model.head.reset_parameters()  # a fresh head for the fine-tuning task
    for layer in (model.l1, model.l2, model.l3):
        for p in layer.parameters():
            p.requires_grad_(False)
    frozen0 = [
        p.detach().clone() for layer in (model.l1, model.l2, model.l3) for p in layer.parameters()
    ]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    frozen1 = [p.detach() for layer in (model.l1, model.l2, model.l3) for p in layer.parameters()]
    ls = ctx.losses
    ctx.check(
        "frozen layers exactly unchanged",
        all(torch.equal(a, b) for a, b in zip(frozen0, frozen1, strict=True)),
    )
    ctx.check("loss fell to under 60% of its start", _median(ls[-10:]) < 0.6 * _median(ls[:5]))
    ctx.check("all finite", _finite(ls))


# -- 13. control: SGD Nesterov, OneCycleLR, accumulation, label smoothing, clipping ------------


def _climb_batches(gen: torch.Generator, batch: int = 32):
    """Generated climbing-hold grip features (16), a 5-class grip type."""
    centres = 1.5 * torch.randn(5, 16, generator=gen)
    while True:
        y = torch.randint(0, 5, (batch,), generator=gen)
        x = centres[y] + torch.randn(batch, 16, generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.05  # a few mislabelled holds: noisy batches
        y = torch.where(flip, torch.randint(0, 5, (batch,), generator=gen), y)
        yield x, y


@scenario(
    "bouldering_hold_grip_type_silu_classifier",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="SGD Nesterov with OneCycleLR, 2-micro-batch gradient accumulation, label smoothing 0.1, "
    "clipping at 1.0, 5% noisy labels (control)",
)
def h610_bouldering_accumulation_control(ctx: Context) -> None:
    gen = seeded(61013)
    model = ThreeLayer(16, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    batches = _climb_batches(gen)
    for _ in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell to under 50% of its start", _median(ls[-10:]) < 0.5 * _median(ls[:5]))
    ctx.check("all finite", _finite(ls))
