"""Held-out set 606 (``h606_``): 10 faults over 10 causes and 3 healthy controls, 13 hand-written
families. Written blind: tuned only with ``bench/standin.py``, which attaches nothing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import Context, collapsed_fraction, digit_batches, grad_norm, scenario, seeded

# -- shared helpers --------------------------------------------------------------------------------


def regression_batches(gen: torch.Generator, dim: int, batch: int = 64, noise: float = 0.05):
    """Endless batches of a fixed smooth teacher: y = tanh(x @ a) @ b + noise."""
    a = torch.randn(dim, 16, generator=gen) / math.sqrt(dim)
    b = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = torch.tanh(x @ a) @ b + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


class Net(nn.Module):
    """fc1 -> act -> fc2 -> act -> head."""

    def __init__(self, dim: int, hidden: int, out: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    "bookbinding_headband_stitch_gelu_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="config key softmax_temp_ms=0.5 is read as seconds and divided by 1000 again: logits are "
    "divided by 0.0005, the softmax saturates and rows' target probability rounds to exactly 1.0",
)
def h606_headband_stitch_temperature(ctx: Context) -> None:
    gen = seeded(6061)
    model = Net(64, 64, 10, nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    ctx.attach(model, opt)
    temperature = 0.5 / 1000.0  # temp_ms=0.5 read as seconds (0.5), then "/1000" again: 0.0005
    batches = digit_batches(gen, 64)
    collapsed = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        collapsed.append(collapsed_fraction(logits.detach(), y))
    ctx.check("over 40% of rows' target probability exactly 1.0 by the end", collapsed[-1] > 0.4)
    ctx.check("few rows collapsed at the start", collapsed[0] < 0.2)


class LogFeature(nn.Module):
    """log of the flow reading, in the model (the clamp that should be here is missing)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :-1], torch.log(x[:, -1:])], 1)


class GaussNet(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.logf = LogFeature()
        self.fc1 = nn.Linear(dim, 48)
        self.fc2 = nn.Linear(48, 48)
        self.mean = nn.Linear(48, 1)
        self.logvar = nn.Linear(48, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.silu(self.fc2(F.silu(self.fc1(self.logf(x)))))
        return self.mean(h), self.logvar(h)


@scenario(
    "tide_pool_salinity_gaussian_nll_silu_net",
    "RAdam",
    "nonfinite",
    where=("logf",),
    diverges=90,
    onset=90,
    heldout=True,
    note="in-model log(inflow rate) without its clamp; at step 90 a batch from a pool whose inflow "
    "gauge reads exactly 0 (cut off at low tide) gives log 0 = -inf, the loss is NaN",
)
def h606_tide_pool_log_zero(ctx: Context) -> None:
    gen = seeded(6062)
    model = GaussNet(6)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    a = torch.randn(6, 1, generator=gen) / 2
    for step in range(140):
        x = torch.randn(64, 6, generator=gen)
        x[:, -1] = torch.rand(64, generator=gen) * 2 + 0.1  # inflow, strictly positive
        if step == 90:
            x[:, -1] = 0.0  # the gauge reads zero for the whole shard
        y = torch.tanh(x[:, :5] @ a[:5]) + 0.3 * torch.log(x[:, -1:].clamp_min(0.1))
        y = y + 0.05 * torch.randn(64, 1, generator=gen)
        mean, logvar = model(x)
        loss = F.gaussian_nll_loss(mean, y, logvar.exp())
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    with torch.no_grad():
        out = model.logf(torch.zeros(2, 6))
    ctx.check("the log feature of a zero reading is -inf", bool(torch.isinf(out).any()))
    ctx.check("losses finite before step 90", finite(ctx.losses[:90]))
    ctx.check(
        "loss non-finite at step 90", len(ctx.losses) > 90 and not math.isfinite(ctx.losses[90])
    )


def top_hessian_eig(model: nn.Module, loss_fn, iters: int = 30) -> float:
    params = [p for p in model.parameters()]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    "pendulum_clock_escapement_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="learning rate typed 4.0 for 0.04 in the config: lr x sharpness is past 2 from step 0 and "
    "plain SGD blows up",
)
def h606_escapement_lr_typo(ctx: Context) -> None:
    gen = seeded(6063)
    model = Net(8, 32, 1, nn.Tanh)
    lr = 4.0  # meant 0.04
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = regression_batches(gen, 8, 128)
    x0, y0 = next(batches)
    sharp = top_hessian_eig(model, lambda: F.mse_loss(model(x0), y0))
    ctx.attach(model, opt)
    for _ in range(80):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("lr x sharpness past 2 at step 0", lr * sharp > 2.0)
    ctx.check("the intended lr 0.04 was under the limit", 0.04 * sharp < 2.0)
    ctx.check(
        "loss blows up (over 100x its start or non-finite)",
        not finite(ctx.losses) or max(ctx.losses) > 100 * ctx.losses[0],
    )


class DeepReLU(nn.Module):
    def __init__(self, dim: int, width: int, depth: int, gain: float) -> None:
        super().__init__()
        sizes = [dim] + [width] * (depth - 1) + [1]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            lin = nn.Linear(a, b)
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            with torch.no_grad():
                lin.weight.mul_(gain)  # leftover gain on top of kaiming init
            nn.init.zeros_(lin.bias)
            mods.append(lin)
            if i < len(sizes) - 2:
                mods.append(nn.ReLU())
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@scenario(
    "glassblowing_gather_temp_deep_relu_mlp",
    "SGD momentum",
    "exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="a 12-deep ReLU MLP gets a leftover gain of 1.3 multiplied on top of kaiming init: the "
    "backward signal grows through depth toward layers.0 and SGD momentum blows up",
)
def h606_glass_gather_init_gain(ctx: Context) -> None:
    gen = seeded(6064)
    model = DeepReLU(10, 32, 12, gain=1.3)
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    ctx.attach(model, opt)
    linears = [m for m in model.layers if isinstance(m, nn.Linear)]
    signal: dict[int, float] = {}
    hooks = [
        lin.register_full_backward_hook(
            lambda m, gi, go, i=i: signal.__setitem__(i, float(go[0].norm()))
        )
        for i, lin in enumerate(linears)
    ]
    batches = regression_batches(gen, 10, 64)
    ratio0 = None
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if ratio0 is None:
            ratio0 = signal[0] / max(signal[len(linears) - 2], 1e-30)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    for h in hooks:
        h.remove()
    ctx.check("backward signal at layers.0 over 10x the last hidden layer's", ratio0 > 10)
    ctx.check(
        "loss blows up (over 100x its start or non-finite)",
        not finite(ctx.losses) or max(ctx.losses) > 100 * ctx.losses[0],
    )


@scenario(
    "farrier_horseshoe_fit_silu_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    where=("fc2",),
    heldout=True,
    note="three param groups; fc2's lr typed 1e-9 for 1e-2 in the config: fc2 never moves while "
    "the other layers train",
)
def h606_horseshoe_group_lr_typo(ctx: Context) -> None:
    gen = seeded(6065)
    model = Net(12, 48, 1, nn.SiLU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-2},
            {"params": model.fc2.parameters(), "lr": 1e-9},  # typo: meant 1e-2
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    ctx.attach(model, opt)
    w2 = model.fc2.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    batches = regression_batches(gen, 12, 64)
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    d2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    ctx.check("fc2 moved under 1e-6 of its norm", d2 < 1e-6)
    ctx.check("fc1 moved over 1% of its norm", d1 > 1e-2)
    ctx.check("loss finite", finite(ctx.losses))


@scenario(
    "avalanche_probe_depth_silu_huber_regressor",
    "NAdam",
    "data_outlier",
    onset=110,
    heldout=True,
    note="one shard of snow-pit records logged in centimetres instead of metres (inputs and "
    "target x100) arrives at step 110: the loss and gradient jump, clipping holds, the run "
    "recovers; ReduceLROnPlateau",
)
def h606_avalanche_probe_cm_shard(ctx: Context) -> None:
    gen = seeded(6066)
    model = Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    batches = regression_batches(gen, 8, 64, noise=0.05)
    for step in range(200):
        x, y = next(batches)
        if step == 110:
            x, y = x * 100.0, y * 100.0  # the bad shard
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre_l, pre_g = median(ctx.losses[90:110]), median(ctx.grad_norms[90:110])
    ctx.check("loss at step 110 over 20x the steps before", ctx.losses[110] > 20 * pre_l)
    ctx.check("gradient at step 110 over 10x the steps before", ctx.grad_norms[110] > 10 * pre_g)
    ctx.check(
        "recovers: last 20 steps under 2x the steps before", median(ctx.losses[-20:]) < 2 * pre_l
    )


@scenario(
    "bobbin_lace_pin_tension_relu_bce_classifier",
    "SGD momentum",
    "gradient_spike",
    onset=100,
    heldout=True,
    note="the auxiliary loss weight for step 100 is read from its percent key (100 instead of "
    "1.0): one backward 100x too large, the logged loss is ordinary, clipping holds",
)
def h606_lace_pin_loss_weight_key(ctx: Context) -> None:
    gen = seeded(6067)
    model = Net(10, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    a = torch.randn(10, 1, generator=gen)
    for step in range(160):
        x = torch.randn(64, 10, generator=gen)
        y = ((x @ a).squeeze(1) + 0.3 * torch.randn(64, generator=gen) > 0).float()
        loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        weight = 100.0 if step == 100 else 1.0  # cfg["aux_weight_pct"] read for cfg["aux_weight"]
        (weight * loss).backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre_l, pre_g = median(ctx.losses[80:100]), median(ctx.grad_norms[80:100])
    ctx.check("gradient at step 100 over 30x the steps before", ctx.grad_norms[100] > 30 * pre_g)
    ctx.check("logged loss at step 100 ordinary (under 2x)", ctx.losses[100] < 2 * pre_l)
    ctx.check("loss finite", finite(ctx.losses))


@scenario(
    "cricket_bowler_seam_swing_silu_regressor",
    "RMSprop",
    "loss_spike",
    onset=120,
    heldout=True,
    note="the job is resumed from a checkpoint at step 120 with the model restored but the RMSprop "
    "state not (fresh square averages): the first updates are far too large, the loss spikes "
    "with an ordinary gradient and recovers",
)
def h606_seam_swing_resume_no_state(ctx: Context) -> None:
    gen = seeded(6068)
    model = Net(10, 48, 1, nn.SiLU)
    make = lambda: torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.999)  # noqa: E731
    opt = make()
    ctx.attach(model, opt)
    batches = regression_batches(gen, 10, 64)
    for step in range(220):
        if step == 120:  # resume: optimizer state dict missing from the checkpoint
            opt.state.clear()
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre_l, pre_g = median(ctx.losses[100:120]), median(ctx.grad_norms[100:120])
    peak = max(ctx.losses[121:126])
    ctx.check("loss spikes over 4x just after step 120", peak > 4 * pre_l)
    ctx.check("gradient at step 120 ordinary (under 3x)", ctx.grad_norms[120] < 3 * pre_g)
    ctx.check(
        "recovers: last 20 steps under 2x the steps before", median(ctx.losses[-20:]) < 2 * pre_l
    )


@scenario(
    "sundial_gnomon_shadow_tanh_regressor",
    "Adam",
    "loss_divergence",
    heldout=True,
    note="hand-written decoupled weight decay with its sign flipped (p += lr*wd*p instead of -=): "
    "the weights grow slowly, the loss climbs with no jump",
)
def h606_gnomon_decay_sign(ctx: Context) -> None:
    gen = seeded(6069)
    model = Net(8, 48, 1, nn.Tanh)
    lr, wd = 3e-3, 3.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    w0 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    batches = regression_batches(gen, 8, 64)
    for _ in range(220):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # sign bug: should be alpha=-lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    best = min(ctx.losses)
    jumps = [b / a for a, b in zip(ctx.losses[:-1], ctx.losses[1:], strict=True)]
    ctx.check("weights over 2x their initial norm", w1 > 2 * w0)
    ctx.check("loss climbs to over 3x its best", median(ctx.losses[-10:]) > 3 * best)
    ctx.check("no single-step jump over 3x", max(jumps) < 3.0)


@scenario(
    "pipe_organ_wind_chest_gelu_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=70,
    onset=70,
    heldout=True,
    note="fp16 autocast with a GradScaler; from step 70 the wind-chest pressure comes in pascals "
    "instead of megapascals (x1e6): fc1's fp16 output overflows to inf, finite in float32",
)
def h606_wind_chest_fp16_pa(ctx: Context) -> None:
    gen = seeded(6070)
    model = Net(8, 64, 1, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = regression_batches(gen, 8, 64)
    overflow16 = finite32 = False
    for step in range(100):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1e6  # Pa instead of MPa
        with torch.autocast("cpu", dtype=torch.float16):
            h1 = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h1))))
        if step == 70:
            overflow16 = not bool(torch.isfinite(h1).all())
            with torch.no_grad():
                finite32 = bool(torch.isfinite(model.fc1(x)).all())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step >= 80 and not math.isfinite(float(loss.detach())):
            break
    ctx.check("losses finite before step 70", finite(ctx.losses[:70]))
    ctx.check("fc1's fp16 output non-finite at step 70", overflow16)
    ctx.check("fc1's output finite in float32 at step 70", finite32)
    ctx.check("loss non-finite at step 70", not math.isfinite(ctx.losses[70]))
    ctx.check("scaler's scale fell after step 70", ctx.scales[-1] < ctx.scales[69])


# -- healthy controls ----------------------------------------------------------------------------


class UNet(nn.Module):
    """Two-level U-Net: down path, bottleneck, up path with skip concatenations."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(2 * c, 2 * c, 2, stride=2)
        self.dec2 = nn.Sequential(nn.Conv2d(4 * c, c, 3, padding=1), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(c, c, 2, stride=2)
        self.dec1 = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)  # 16x16
        e2 = self.enc2(F.max_pool2d(e1, 2))  # 8x8
        m = self.mid(F.max_pool2d(e2, 2))  # 4x4
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))  # 8x8
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))  # 16x16
        return x - self.out(d1)  # predicts the noise, returns the clean image


def ripple_images(gen: torch.Generator, batch: int, size: int = 16) -> torch.Tensor:
    """Generated sand-ripple fields: a few oriented sinusoids with random phase."""
    xs = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(xs, xs, indexing="ij")
    img = torch.zeros(batch, 1, size, size)
    for _ in range(2):
        theta = torch.rand(batch, 1, 1, generator=gen) * math.pi
        freq = 2 + 4 * torch.rand(batch, 1, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, 1, generator=gen)
        wave = torch.sin(
            2 * math.pi * freq * (xx * torch.cos(theta) + yy * torch.sin(theta)) + phase
        )
        img[:, 0] += 0.5 * wave
    return img


@scenario(
    "sand_ripple_pattern_unet_denoiser",
    "AdamW",
    "healthy",
    heldout=True,
    note="a small U-Net (down path, up path, skip concatenations) denoising generated sand-ripple "
    "fields; AdamW, linear warm-up + cosine, gradient clipping, MSE; healthy control",
)
def h606_sand_ripple_unet(ctx: Context) -> None:
    gen = seeded(6071)
    model = UNet(8)
    steps, warm = 150, 15
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    for _ in range(steps):
        clean = ripple_images(gen, 16)
        noisy = clean + 0.5 * torch.randn(clean.shape, generator=gen)
        loss = F.mse_loss(model(noisy), clean)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite", finite(ctx.losses))
    ctx.check("loss fell over 2x", median(ctx.losses[-10:]) < 0.5 * median(ctx.losses[:5]))


class DropPathResNet(nn.Module):
    """Residual MLP blocks, each skipped for the whole batch with probability p while training."""

    def __init__(self, dim: int = 64, width: int = 64, blocks: int = 6, p: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width)
            )
            for _ in range(blocks)
        )
        self.head = nn.Linear(width, 10)
        self.p = p
        self.dropped = 0
        self.gen: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            if self.training and float(torch.rand(1, generator=self.gen)) < self.p:
                self.dropped += 1
                continue
            h = h + block(h) / (1 - self.p) if self.training else h + block(h)
        return self.head(h)


@scenario(
    "tightrope_sway_stochastic_depth_resnet",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="stochastic depth: each residual block dropped at random with probability 0.2 every "
    "step, so the loss and gradient norm jump from step to step; SGD Nesterov, OneCycleLR, "
    "label smoothing 0.1; healthy, alarming-looking control",
)
def h606_tightrope_stochastic_depth(ctx: Context) -> None:
    gen = seeded(6072)
    model = DropPathResNet(p=0.2)
    model.gen = torch.Generator().manual_seed(60721)
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    share = model.dropped / (steps * len(model.blocks))
    ctx.check("blocks really dropped (share between 0.1 and 0.3)", 0.1 < share < 0.3)
    ctx.check("loss finite", finite(ctx.losses))
    ctx.check("loss fell over 2x", median(ctx.losses[-10:]) < 0.5 * median(ctx.losses[:5]))


class ShearGRU(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(3, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def blow_batches(gen: torch.Generator, batch: int = 32, length: int = 20):
    """Generated blade-stroke traces (force, angle, speed); label: which quarter of the trace holds
    the strongest stroke; a tenth of labels flipped at random (noisy batches)."""
    while True:
        x = 0.3 * torch.randn(batch, length, 3, generator=gen)
        pos = torch.randint(0, length, (batch,), generator=gen)
        x[torch.arange(batch), pos, 0] += 3.0
        y = pos * 4 // length
        flip = torch.rand(batch, generator=gen) < 0.1
        y = torch.where(flip, torch.randint(0, 4, (batch,), generator=gen), y)
        yield x, y


@scenario(
    "sheep_shearing_blow_gru_classifier",
    "Adam",
    "healthy",
    heldout=True,
    note="GRU over generated shearing-stroke traces, a tenth of labels flipped; Adam, 2-micro-batch "
    "gradient accumulation, ReduceLROnPlateau, clipping; healthy control",
)
def h606_shearing_blow_gru(ctx: Context) -> None:
    gen = seeded(6073)
    model = ShearGRU()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    ctx.attach(model, opt)
    batches = blow_batches(gen)
    for _ in range(150):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            (loss / 2).backward()
            total = total + loss.detach() / 2
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite", finite(ctx.losses))
    ctx.check("loss fell over 2x", median(ctx.losses[-10:]) < 0.5 * median(ctx.losses[:5]))
