"""Held-out set 611 (``h611_``): 10 faults over 10 causes and 3 healthy controls, 13 families.

Every model is hand-written; data are generated (or scikit-learn's bundled digits). Each fault is
induced the way it happens in practice and checked in the run itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import Context, digit_batches, grad_norm, scenario, seeded

# -- shared helpers --------------------------------------------------------------------------------


def _regression(gen: torch.Generator, n_in: int, batch: int = 64, noise: float = 0.05):
    """Endless batches of a smooth generated regression task (y = sum of sines of projections)."""
    w = torch.randn(n_in, 4, generator=gen) / math.sqrt(n_in)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w).sum(1, keepdim=True) + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


class _Reg(nn.Module):
    def __init__(self, n_in: int, hidden: int, act: type[nn.Module] = nn.Tanh) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act(self.fc1(x)))))


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    "coracle_paddle_spin_relu_bce_classifier",
    "RMSprop",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=100,
    note="4-micro-batch accumulation; for step 100 the accumulation divisor is applied as a "
    "multiplier (loss * 4 * 25 from a stale config key), so one update's gradient is ~100x; "
    "clipping at 5.0; the logged loss is the ordinary one",
)
def h611_coracle_paddle_spin(ctx: Context) -> None:
    gen = seeded(6111)
    model = nn.Sequential(
        nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 1)
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    w = torch.randn(12, generator=gen)
    accum = 4
    raw_norms = []
    for step in range(180):
        scale = 100.0 if step == 100 else 1.0 / accum
        logged = 0.0
        for _ in range(accum):
            x = torch.randn(32, 12, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(32, generator=gen)) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
            (loss * scale).backward()
            logged += float(loss.detach()) / accum
        raw_norms.append(grad_norm(model))
        ctx.grad_norms.append(raw_norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx.step(torch.tensor(logged))
    before = sorted(raw_norms[80:100])[10]
    ctx.check("gradient at step 100 over 30x the median before", raw_norms[100] > 30 * before)
    ctx.check("logged loss at step 100 ordinary", ctx.losses[100] < 2 * max(ctx.losses[90:100]))
    ctx.check("run stays finite", _finite(ctx.losses))


@scenario(
    "tanner_hide_liming_swell_tanh_regressor",
    "Adam",
    "loss_divergence",
    (),
    None,
    heldout=True,
    onset=0,
    note="hand-written decoupled weight decay p += lr*wd*p (sign flipped from p -= ...), "
    "wd=3.0; the weights grow steadily and the loss climbs slowly with no jump",
)
def h611_tanner_hide_liming(ctx: Context) -> None:
    gen = seeded(6112)
    model = _Reg(10, 48)
    lr, wd = 3e-3, 3.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    data = _regression(gen, 10)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    for _step in range(260):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # bug: should be p.add_(p, alpha=-lr * wd)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    best = min(sum(ctx.losses[i : i + 10]) / 10 for i in range(0, 150, 10))
    late = sum(ctx.losses[-20:]) / 20
    ctx.check("weights' norm grew over 2x", w1 > 2 * w0)
    ctx.check("loss climbs to over 2x its best", late > 2 * best)
    means = [sum(ctx.losses[i : i + 10]) / 10 for i in range(0, 260, 10)]
    ctx.check(
        "no jump: no 10-step mean over 3x the one before",
        max(b / a for a, b in zip(means[:-1], means[1:], strict=True)) < 3.0,
    )
    ctx.check("run stays finite", _finite(ctx.losses))


@scenario(
    "hurling_sliotar_carry_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    note="SGD lr typed 3.0 for 0.03 on a tanh regressor with MSE; past 2/sharpness at once, "
    "the loss blows up",
)
def h611_hurling_sliotar_carry(ctx: Context) -> None:
    gen = seeded(6113)
    model = _Reg(8, 32)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    ctx.attach(model, opt)
    data = _regression(gen, 8)
    for _step in range(80):
        x, y = next(data)
        x = x * 3.0 + 2.0  # raw launch-speed readings, not standardised
        loss = F.mse_loss(model(x), y * 4.0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    finite = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check(
        "loss blows up over 100x its start",
        not _finite(ctx.losses) or max(finite) > 100 * ctx.losses[0],
    )


@scenario(
    "saddler_stitch_pull_silu_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    ("fc2",),
    None,
    heldout=True,
    note="three param groups; fc2's lr typed 1e-9 for 1e-2, so fc2 never moves while the rest "
    "trains",
)
def h611_saddler_stitch_pull(ctx: Context) -> None:
    gen = seeded(6114)
    model = _Reg(10, 48, nn.SiLU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-2},
            {"params": model.fc2.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    ctx.attach(model, opt)
    data = _regression(gen, 10)
    fc2_0 = model.fc2.weight.detach().clone()
    fc1_0 = model.fc1.weight.detach().clone()
    for _step in range(150):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    d2 = float((model.fc2.weight - fc2_0).norm() / fc2_0.norm())
    d1 = float((model.fc1.weight - fc1_0).norm() / fc1_0.norm())
    ctx.check("fc2 moved under 1e-5 of its norm", d2 < 1e-5)
    ctx.check("fc1 moved over 1e-2 of its norm", d1 > 1e-2)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < sum(ctx.losses[:10]))


class _FumaroleNet(nn.Module):
    """Gaussian NLL on gas flux; takes log(vent pressure) inside the model (no clamp)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(9, 48)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(48, 1)
        self.log_var = nn.Linear(48, 1)

    def forward(self, x: torch.Tensor, pressure: torch.Tensor):
        h = torch.cat([x, torch.log(pressure)], 1)  # bug: no clamp on the pressure
        h = self.act2(self.fc2(self.act(self.fc1(h))))
        return self.mean(h), self.log_var(h)


@scenario(
    "fumarole_gas_flux_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    ("fc1",),
    80,
    heldout=True,
    onset=80,
    note="in-model log(vent pressure) without its clamp; at step 80 a batch from a dead gauge "
    "reads pressure 0, log gives -inf, fc1's output and the loss are NaN",
)
def h611_fumarole_gas_flux(ctx: Context) -> None:
    gen = seeded(6115)
    model = _FumaroleNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _regression(gen, 8)
    fc1_out = {}
    model.fc1.register_forward_hook(lambda m, i, o: fc1_out.__setitem__("o", o.detach()))
    nan_step = None
    for step in range(120):
        x, y = next(data)
        pressure = 1.0 + torch.rand(x.shape[0], 1, generator=gen)
        if step == 80:
            pressure[:5] = 0.0  # dead gauge
        mean, log_var = model(x, pressure)
        loss = 0.5 * (log_var + (y - mean) ** 2 / log_var.exp()).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            nan_step = step
            break
    ctx.check("loss finite before step 80", _finite(ctx.losses[:80]))
    ctx.check("loss non-finite at step 80", nan_step == 80)
    ctx.check("fc1's output non-finite", not bool(torch.isfinite(fc1_out["o"]).all()))


@scenario(
    "cheesemonger_wheel_rind_age_silu_huber_regressor",
    "NAdam",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=110,
    note="one shard logged rind moisture in grams instead of kilograms (x1000) at step 110; "
    "Huber loss, clipping at 1.0, ReduceLROnPlateau; loss and gradient spike once, recovers",
)
def h611_cheesemonger_rind_age(ctx: Context) -> None:
    gen = seeded(6116)
    model = _Reg(10, 48, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    data = _regression(gen, 10)
    for step in range(200):
        x, y = next(data)
        if step == 110:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0  # bad shard: grams
        loss = F.huber_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before_l = sorted(ctx.losses[90:110])[10]
    before_g = sorted(ctx.grad_norms[90:110])[10]
    ctx.check("loss at step 110 over 20x the median before", ctx.losses[110] > 20 * before_l)
    ctx.check("gradient at step 110 over 10x", ctx.grad_norms[110] > 10 * before_g)
    ctx.check("recovers", sum(ctx.losses[-10:]) / 10 < 2 * before_l)


class _BreathNet(nn.Module):
    def __init__(self, temperature_s: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act = nn.GELU()
        self.head = nn.Linear(64, 10)
        self.temperature = temperature_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc1(x))) / self.temperature


@scenario(
    "didgeridoo_circular_breath_gelu_classifier",
    "Adamax",
    "softmax_collapse",
    ("head",),
    None,
    heldout=True,
    note="config temp_ms=2.0 read as seconds and converted (2.0 / 1000), so the logits are "
    "divided by 0.002; the softmax saturates, target probabilities round to exactly 1.0",
)
def h611_didgeridoo_breath(ctx: Context) -> None:
    gen = seeded(6117)
    model = _BreathNet(2.0 / 1000.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    frac = 0.0
    for _step in range(120):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        p = torch.softmax(logits.detach(), -1)
        frac = float((p.gather(1, y[:, None]) == 1.0).float().mean())
    ctx.check("over 40% of rows' target probability exactly 1.0", frac > 0.4)


@scenario(
    "sepak_takraw_spike_arc_deep_relu_mlp",
    "SGD momentum",
    "exploding_gradients",
    ("0",),
    "auto",
    heldout=True,
    note="12-deep ReLU MLP; init std 2.0/sqrt(fan_in) where sqrt(2/fan_in) was meant (x1.41 per "
    "layer), the backward signal grows through depth, SGD momentum 0.9 blows up",
)
def h611_sepak_takraw_spike(ctx: Context) -> None:
    gen = seeded(6118)
    layers: list[nn.Module] = []
    for i in range(12):
        layers.append(nn.Linear(32 if i else 10, 32))
        layers.append(nn.ReLU())
    layers.append(nn.Linear(32, 1))
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=2.0 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ctx.attach(model, opt)
    data = _regression(gen, 10)
    ratio = None
    for _step in range(100):
        x, y = next(data)
        if ratio is None:
            pre, h = [], x
            for m in model:
                h = m(h)
                if isinstance(m, nn.Linear):
                    h.retain_grad()
                    pre.append(h)
            loss = F.mse_loss(h, y)
        else:
            loss = F.mse_loss(model(x), y)
        loss.backward()
        if ratio is None:
            ratio = float(pre[0].grad.norm() / pre[11].grad.norm())
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    finite = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check("layer 0's gradient over 10x the last hidden layer's", ratio > 10)
    ctx.check(
        "loss blows up over 100x its start",
        not _finite(ctx.losses) or max(finite) > 100 * ctx.losses[0],
    )


@scenario(
    "glassblower_gather_temp_fp16_silu_regressor",
    "AdamW",
    "amp_overflow",
    ("fc1",),
    70,
    heldout=True,
    onset=70,
    note="fp16 autocast + GradScaler; from step 70 the pyrometer feed is in millikelvin "
    "instead of kelvin/1000, fc1's fp16 output overflows to inf (finite in float32)",
)
def h611_glassblower_gather(ctx: Context) -> None:
    gen = seeded(6119)
    model = _Reg(8, 64, nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    data = _regression(gen, 8)
    fc1_out = {}
    model.fc1.register_forward_hook(lambda m, i, o: fc1_out.__setitem__("o", o.detach()))
    f32_ok = None
    for step in range(110):
        x, y = next(data)
        if step >= 70:
            x = x.clone()
            x[:, 0] = 1.4e6 + 1e5 * x[:, 0]  # millikelvin
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        if step == 70:
            f16_bad = not bool(torch.isfinite(fc1_out["o"]).all())
            with torch.no_grad():
                f32_ok = bool(torch.isfinite(model.fc1(x)).all())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite before step 70", _finite(ctx.losses[:70]))
    ctx.check("loss non-finite from step 70", not math.isfinite(ctx.losses[70]))
    ctx.check("fc1's fp16 output non-finite at step 70", f16_bad)
    ctx.check("fc1's float32 output finite at step 70", bool(f32_ok))
    ctx.check("scaler backed off", ctx.scales[-1] < ctx.scales[69])


@scenario(
    "cranberry_bog_flood_depth_gelu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=80,
    note="a manual loss scale of 65536 left in for step 80 (debug path), one gradient ~65536x "
    "fills Adam's second moment (beta2 0.999), the updates shrink and the loss stalls",
)
def h611_cranberry_bog_flood(ctx: Context) -> None:
    gen = seeded(6120)
    model = _Reg(10, 48, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = _regression(gen, 10)
    vmax, upd = [], []
    for step in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        (loss * (65536.0 if step == 80 else 1.0)).backward()
        ctx.grad_norms.append(grad_norm(model))
        w = model.fc2.weight.detach().clone()
        opt.step()
        upd.append(float((model.fc2.weight - w).norm()))
        vmax.append(float(opt.state[model.fc2.weight]["exp_avg_sq"].max()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient at step 80 over 1000x", ctx.grad_norms[80] > 1000 * ctx.grad_norms[79])
    ctx.check("second moment over 1e4x 60 steps on", vmax[140] > 1e4 * vmax[79])
    ctx.check("updates 60 steps on under 1/20 of before", upd[140] < sum(upd[60:80]) / 20 / 20)
    ctx.check("logged loss at step 80 ordinary", ctx.losses[80] < 3 * max(ctx.losses[70:80]))


# -- healthy controls -----------------------------------------------------------------------------


class _Perceiver(nn.Module):
    """A few learnt latents cross-attend to a long input, then latent self-attention."""

    def __init__(self, d_in: int = 3, dim: int = 32, latents: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.pos = nn.Parameter(torch.randn(1, 128, dim) * 0.02)
        self.latents = nn.Parameter(torch.randn(1, latents, dim) * 0.02)
        self.ln_x = nn.LayerNorm(dim)
        self.ln_q = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.ln_s = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.ln_f = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        kv = self.ln_x(self.embed(x) + self.pos[:, :t])
        z = self.latents.expand(b, -1, -1)
        q = self.ln_q(z)
        z = z + self.cross(q, kv, kv, need_weights=False)[0]
        s = self.ln_s(z)
        z = z + self.self_attn(s, s, s, need_weights=False)[0]
        z = z + self.ff(self.ln_f(z))
        return self.head(z.mean(1))


def _murmuration_batches(gen: torch.Generator, batch: int = 32, length: int = 128):
    """Starling-flock radar tracks: 4 roosting patterns told apart by their swirl frequency."""
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        freq = (2.0 + 3.0 * y.float())[:, None]
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        xs = (0.5 + 0.5 * y.float()[:, None]) * torch.sin(2 * math.pi * freq * t + phase)
        ys = torch.cos(2 * math.pi * freq * t + phase)
        dens = t.expand(batch, -1) * (y[:, None] % 2)
        x = torch.stack([xs, ys, dens], -1) + 0.3 * torch.randn(batch, length, 3, generator=gen)
        yield x, y


@scenario(
    "murmuration_starling_roost_perceiver",
    "AdamW",
    "healthy",
    (),
    None,
    heldout=True,
    note="Perceiver-style: 8 learnt latents cross-attend to 128 generated radar points, then "
    "latent self-attention; AdamW with no decay on norms/latents, linear warm-up + cosine, "
    "clipping at 1.0",
)
def h611_murmuration_perceiver(ctx: Context) -> None:
    gen = seeded(6121)
    model = _Perceiver()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "ln" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "ln" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 150, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = _murmuration_batches(gen)
    correct = []
    for _step in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        correct.append(float((logits.argmax(1) == y).float().mean()))
    ctx.check("loss fell below half its start", sum(ctx.losses[-10:]) / 10 < 0.5 * ctx.losses[0])
    ctx.check("accuracy over 60% at the end", sum(correct[-10:]) / 10 > 0.6)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "farrier_hoof_trim_angle_gelu_regressor",
    "Adam",
    "healthy",
    (),
    None,
    heldout=True,
    note="annealed Gaussian gradient noise (Neelakantan et al. 2015) added to every gradient, "
    "variance 0.3/(1+t)^0.55: early gradient norms are mostly noise and jump around; healthy "
    "(alarming-looking control)",
)
def h611_farrier_hoof_trim(ctx: Context) -> None:
    gen = seeded(6122)
    model = _Reg(10, 48, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = _regression(gen, 10)
    clean, noisy = [], []
    for t in range(220):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        clean.append(grad_norm(model))
        std = math.sqrt(0.3 / (1 + t) ** 0.55)
        with torch.no_grad():
            for p in model.parameters():
                p.grad.add_(torch.randn(p.shape, generator=gen) * std)
        noisy.append(grad_norm(model))
        ctx.grad_norms.append(noisy[-1])
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "early gradient norm over 3x the clean one (mostly noise)",
        sum(noisy[:20]) > 3 * sum(clean[:20]),
    )
    ctx.check("loss fell below half its start", sum(ctx.losses[-10:]) / 10 < 0.5 * ctx.losses[0])
    ctx.check("finite", _finite(ctx.losses))


class _KoraConv(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 7, padding=3)
        self.conv2 = nn.Conv1d(12, 24, 5, padding=2)
        self.head = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x[:, None]))
        h = F.max_pool1d(h, 2)
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


@scenario(
    "kora_harp_string_buzz_conv1d_classifier",
    "SGD Nesterov",
    "healthy",
    (),
    None,
    heldout=True,
    note="conv1d over generated string recordings (clean, buzzing, muted); SGD Nesterov, "
    "OneCycleLR, label smoothing 0.1, 2-micro-batch accumulation, clipping at 2.0",
)
def h611_kora_harp_buzz(ctx: Context) -> None:
    gen = seeded(6123)
    model = _KoraConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    t = torch.linspace(0, 1, 64)

    def batch(n: int = 32):
        y = torch.randint(0, 3, (n,), generator=gen)
        f = 4 + 4 * torch.rand(n, 1, generator=gen)
        x = torch.sin(2 * math.pi * f * t)
        buzz = torch.sign(torch.sin(2 * math.pi * 3 * f * t)) * 0.6
        decay = torch.exp(-8 * t)
        x = torch.where((y == 1)[:, None], x + buzz, x)
        x = torch.where((y == 2)[:, None], x * decay, x)
        return x + 0.2 * torch.randn(n, 64, generator=gen), y

    for _step in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = batch()
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            logged += float(loss) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell below 60% of its start", sum(ctx.losses[-10:]) / 10 < 0.6 * ctx.losses[0])
    ctx.check("finite", _finite(ctx.losses))
