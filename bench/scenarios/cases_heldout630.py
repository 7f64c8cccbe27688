"""Held-out set 630 (``h630_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data or scikit-learn's bundled digits."""

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


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 2.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 4, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _wnorm(model: nn.Module) -> float:
    return float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())


class TanhNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mid(torch.tanh(self.inp(x)))))


class GeluNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.sensor = nn.Linear(n_in, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.mix(F.gelu(self.sensor(x)))))


def _top_hessian_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u**2).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h**2).sum() for h in hv))
        v = [h / norm for h in hv]
    return eig


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="geothermal_vent_plume_height_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="plain SGD with lr typed 1.8 for 0.018 in the config: lr times the measured top Hessian "
    "eigenvalue is over 2 (the intended rate is well under), the MSE oscillates and blows up",
)
def h630_geothermal_plume_lr_typo(ctx: Context) -> None:
    gen = seeded(6301)
    model = TanhNet(8, 32)
    batches = _regression(gen)
    xp, yp = next(batches)
    lr = 1.8  # meant 0.018
    sharp = _top_hessian_eig(model, lambda: F.mse_loss(model(xp), yp))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    for _ in range(80):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]) or ctx.losses[-1] > 1e8:
            break
    ls = ctx.losses
    ctx.check("lr x sharpness over 2", lr * sharp > 2.0)
    ctx.check("intended lr x sharpness under 2", 0.018 * sharp < 2.0)
    ctx.check(
        "loss blows up over 100x its start",
        (not math.isfinite(ls[-1])) or max(ls) > 100 * ls[0],
    )


class EncoderHead(nn.Module):
    def __init__(self, n_in: int = 16, hidden: int = 32, k: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Linear(n_in, hidden)
        self.hidden = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.hidden(F.relu(self.encoder(x)))))


@scenario(
    family="bell_foundry_clapper_tone_relu_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("encoder",),
    diverges=None,
    heldout=True,
    note="two param groups with LambdaLR; the encoder's warm-up lambda is written step // 2000 "
    "(integer division) instead of min(1, step / 20): its lr is 0 for the whole run, the encoder "
    "never moves while the rest trains",
)
def h630_bell_foundry_encoder_lambda_floor(ctx: Context) -> None:
    gen = seeded(6302)
    model = EncoderHead()
    opt = torch.optim.Adagrad(
        [
            {"params": model.encoder.parameters(), "lr": 0.05},
            {"params": list(model.hidden.parameters()) + list(model.head.parameters()), "lr": 0.05},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [lambda s: s // 2000, lambda s: min(1.0, (s + 1) / 20)],  # bug: should be s / 20
    )
    ctx.attach(model, opt)
    w0 = model.encoder.weight.detach().clone()
    h0 = model.hidden.weight.detach().clone()
    batches = _classes(gen)
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ls = ctx.losses
    moved = float((model.encoder.weight.detach() - w0).norm())
    ctx.check("encoder weight never moved", moved == 0.0)
    ctx.check("hidden layer moved", float((model.hidden.weight.detach() - h0).norm()) > 0.1)
    ctx.check("loss fell", sum(ls[-10:]) / 10 < 0.8 * sum(ls[:10]) / 10)
    ctx.check("finite", _finite(ls))


@scenario(
    family="glassblower_gather_temperature_gelu_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written L2 term subtracted instead of added (loss - wd*|w|^2, a sign slip when "
    "porting from a reward-maximising codebase): weights grow and the MSE climbs slowly",
)
def h630_glassblower_gather_l2_sign(ctx: Context) -> None:
    gen = seeded(6303)
    model = GeluNet(8, 32)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    wd = 0.05
    w0 = _wnorm(model)
    for _ in range(240):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        penalty = sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)
        (loss - wd * penalty).backward()  # bug: should be + wd * penalty
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    best = min(ls[:100])
    tail = sum(ls[-10:]) / 10
    smooth = [sum(ls[i : i + 20]) / 20 for i in range(0, len(ls) - 19, 20)]
    jumps = [b - a for a, b in zip(smooth[:-1], smooth[1:], strict=False)]
    ctx.check("weight norm grew over 2x", _wnorm(model) > 2 * w0)
    ctx.check("loss ends over 3x its best", tail > 3 * best)
    ctx.check("no 20-step jump over 1/2 of the climb", max(jumps) < (tail - best) / 2)
    ctx.check("finite", _finite(ls))


@scenario(
    family="ski_jump_inrun_speed_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("sensor",),
    diverges=100,
    onset=100,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 100 the new timing gates log the in-run speed "
    "in mm/s instead of m/s (no /1000): the sensor layer's fp16 output overflows to inf and "
    "the loss is non-finite",
)
def h630_ski_jump_speed_fp16_mm(ctx: Context) -> None:
    gen = seeded(6304)
    model = GeluNet(8, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.sensor.register_forward_hook(lambda m, i, o: seen.__setitem__("s", o.detach()))
    onset = 100
    for step in range(150):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 2] = x[:, 2] * 1e6 + 2.5e6  # speed in mm/s, conversion dropped
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check(
                "sensor fp16 output non-finite at onset", not bool(seen["s"].isfinite().all())
            )
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model.sensor(x).isfinite().all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("finite before onset", _finite(ls[:onset]))
    ctx.check("loss non-finite at onset", not math.isfinite(ls[onset]))
    ctx.check("loss fell before onset", sum(ls[90:100]) < 0.7 * sum(ls[:10]))


class DeepLeaky(nn.Module):
    def __init__(self, n_in: int = 8, width: int = 32, depth: int = 12, gain: float = 2.6):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(n_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers:
            x = F.leaky_relu(lin(x), 0.1)
        return self.head(x)


@scenario(
    family="cave_diving_line_reel_depth_leaky_mlp",
    optimizer="SGD(momentum)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="12-deep leaky-ReLU MLP initialised with std 2.6/sqrt(fan_in) (a gain copied from a "
    "paper's sqrt(2) He init but applied twice as 2.6): activations and gradients grow layer "
    "by layer, the gradient at layer 0's output is over 30x the last layer's; clipped at 1.0",
)
def h630_cave_diving_reel_init_gain(ctx: Context) -> None:
    gen = seeded(6305)
    model = DeepLeaky()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen)
    outs: list[torch.Tensor] = []

    def keep(m: nn.Module, a: tuple, o: torch.Tensor) -> None:
        o.retain_grad()
        outs.append(o)

    for i in (0, len(model.layers) - 1):
        model.layers[i].register_forward_hook(keep)
    ratios = []
    for _ in range(100):
        x, y = next(batches)
        outs.clear()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        g0 = float(outs[0].grad.norm())
        gl = float(outs[1].grad.norm())
        ratios.append(g0 / max(gl, 1e-30))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient at layer 0's output over 30x the last layer's", ratios[0] > 30)
    ctx.check("ratio stays over 10x", _median(ratios) > 10)
    ctx.check("gradient norm over 100 at start", ctx.grad_norms[0] > 100)


@scenario(
    family="beekeeper_hive_weight_gain_silu_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="one shard from a hive scale whose tare was never set: at step 110 the readings of a "
    "batch carry a +40 offset; Huber loss and clipping, the loss spikes over 10x and recovers",
)
def h630_beekeeper_hive_untared_shard(ctx: Context) -> None:
    gen = seeded(6306)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 110
    for step in range(220):
        x, y = next(batches)
        if step == onset:
            x = x + 40.0  # untared scale shard
            y = y + 40.0
        loss = F.huber_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(ls[onset - 10 : onset])
    ctx.check("loss at onset over 10x the median before", ls[onset] > 10 * pre)
    ctx.check(
        "gradient at onset over 10x the median before",
        gs[onset] > 10 * _median(gs[onset - 10 : onset]),
    )
    ctx.check("recovers within 2x after 40 steps", _median(ls[-20:]) < 2 * pre)
    ctx.check("finite", _finite(ls))


@scenario(
    family="kayak_eskimo_roll_success_relu_bce_classifier",
    optimizer="RAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=95,
    heldout=True,
    note="BCE classifier whose auxiliary-loss weight is read from a schedule dict keyed by step; "
    "a stray entry {95: 200.0} (meant 2.0, for step 950) multiplies the backpropagated loss by "
    "200 for one step: the gradient spikes over 30x while the logged loss is ordinary",
)
def h630_kayak_roll_loss_weight_entry(ctx: Context) -> None:
    gen = seeded(6307)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _classes(gen, k=2)
    weights = {95: 200.0}  # bug: a typo for {950: 2.0}
    onset = 95
    for step in range(200):
        x, y = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float())
        (weights.get(step, 1.0) * loss).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at onset over 30x the median before", gs[onset] > 30 * _median(gs[85:95]))
    ctx.check("logged loss at onset under 3x the median before", ls[onset] < 3 * _median(ls[85:95]))
    ctx.check("loss fell", _median(ls[-10:]) < 0.7 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))


class RangeNorm(nn.Module):
    """Scales each trace to [0, 1] by its own min and max (no epsilon)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo = x.min(1, keepdim=True).values
        hi = x.max(1, keepdim=True).values
        return (x - lo) / (hi - lo)  # bug: no clamp on the range


class SeismoNet(nn.Module):
    def __init__(self, n_in: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.rangenorm = RangeNorm()
        self.body = nn.Linear(n_in, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.logvar = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.body(self.rangenorm(x)))
        return self.mean(h), self.logvar(h)


@scenario(
    family="sand_dune_singing_boom_gaussian_nll_net",
    optimizer="Adadelta",
    cause="nonfinite",
    where=("rangenorm",),
    diverges=120,
    onset=120,
    heldout=True,
    note="per-trace min-max normalisation without a clamp on (max - min); at step 120 a "
    "microphone that recorded a flat trace (all samples equal) arrives: 0/0 gives NaN and the "
    "Gaussian NLL is NaN",
)
def h630_sand_dune_flat_trace_range(ctx: Context) -> None:
    gen = seeded(6308)
    model = SeismoNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    w = torch.randn(16, generator=gen)
    onset = 120
    seen: dict[str, torch.Tensor] = {}
    model.rangenorm.register_forward_hook(lambda m, i, o: seen.__setitem__("r", o.detach()))
    for step in range(160):
        x = torch.randn(64, 16, generator=gen)
        y = (torch.sin(x @ w / 4.0) + 0.1 * torch.randn(64, generator=gen))[:, None]
        if step == onset:
            x[7] = 0.35  # flat trace
        mu, logvar = model(x)
        loss = 0.5 * (logvar + (y - mu) ** 2 / logvar.exp()).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step == onset:
            ctx.check("rangenorm output NaN at onset", bool(seen["r"].isnan().any()))
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("finite before onset", _finite(ls[:onset]))
    ctx.check("loss NaN at onset", math.isnan(ls[onset]))
    ctx.check("loss fell before onset", _median(ls[110:120]) < _median(ls[:10]))


class CosineHead(nn.Module):
    def __init__(self, dim: int, k: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, dim) * 0.1)
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(h, dim=1) @ F.normalize(self.weight, dim=1).T


class CosineNet(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = CosineHead(32, 10, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@scenario(
    family="calligraphy_brush_stroke_cosine_softmax_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="cosine classifier whose scale s=30 was entered as 3000 (a percent field): logits span "
    "thousands, the float32 softmax rounds the target probability to exactly 1.0 for most rows",
)
def h630_calligraphy_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(6309)
    model = CosineNet(scale=3000.0)  # meant 30.0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    frac = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        frac.append(collapsed_fraction(logits.detach(), y))
    ctx.check(
        "over 40% of rows' target probability exactly 1.0 at the end", _median(frac[-10:]) > 0.4
    )
    ctx.check("logit range over 1000", float(logits.detach().max() - logits.detach().min()) > 1000)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="fly_fishing_cast_loop_relu_classifier",
    optimizer="SGD(momentum)",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1's bias initialised to -2.5 by an init routine written for a gating layer "
    "(meant for the output gate, applied to every Linear named fc1): most ReLU units of fc1 "
    "are dead from the start and stay dead, the loss stalls far above a healthy run's",
)
def h630_fly_fishing_fc1_bias_init(ctx: Context) -> None:
    gen = seeded(6310)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.relu(self.fc1(x)))

    model = Net()
    nn.init.constant_(model.fc1.bias, -2.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o.detach()))
    dead = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        dead.append(dead_fraction(seen["h"]))
    ls = ctx.losses
    ctx.check("over 80% of fc1 units dead at the end", dead[-1] > 0.8)
    ctx.check("loss stalls over 1.0", _median(ls[-10:]) > 1.0)
    ctx.check("finite", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="rowing_eight_stroke_rate_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="AdamW with a strong decoupled weight decay 0.5 (lr 5e-3): the weight norm shrinks "
    "steadily the whole run, which looks alarming, while the loss keeps falling (control)",
)
def h630_rowing_eight_adamw_strong_decay(ctx: Context) -> None:
    gen = seeded(6311)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4)
    )
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.5 / math.sqrt(m.in_features))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.5)
    ctx.attach(model, opt)
    batches = _classes(gen)
    norms = [_wnorm(model)]
    for step in range(250):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 25 == 24:
            norms.append(_wnorm(model))
    ls = ctx.losses
    ctx.check("weight norm shrank over 25%", norms[-1] < 0.75 * norms[0])
    ctx.check(
        "weight norm fell in most 25-step windows",
        sum(b < a for a, b in zip(norms[:-1], norms[1:], strict=False)) >= 0.8 * (len(norms) - 1),
    )
    ctx.check("loss fell over 50%", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("loss still falling in the second half", _median(ls[-20:]) < _median(ls[115:135]))
    ctx.check("finite", _finite(ls))


class LoomConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


@scenario(
    family="mosaic_tessera_colour_conv_classifier",
    optimizer="SGD(nesterov)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="small CNN on digits, SGD Nesterov with OneCycleLR, label smoothing 0.1, two-micro-batch "
    "gradient accumulation, clipping at 1.0, 5% of labels noisy (control)",
)
def h630_mosaic_tessera_onecycle(ctx: Context) -> None:
    gen = seeded(6312)
    model = LoomConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    batches = digit_batches(gen, batch=32)
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            noisy = torch.rand(len(y), generator=gen) < 0.05
            y = torch.where(noisy, torch.randint(0, 10, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 50%", _median(ls[-10:]) < 0.5 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="sled_dog_team_pace_silu_huber_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="SiLU regressor with two param groups (head at half lr), Huber loss, ReduceLROnPlateau "
    "on a smoothed loss, noisy readings (control)",
)
def h630_sled_dog_pace_plateau(ctx: Context) -> None:
    gen = seeded(6313)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.Adamax(
        [
            {"params": list(model[0].parameters()) + list(model[2].parameters()), "lr": 4e-3},
            {"params": model[4].parameters(), "lr": 2e-3},
        ]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.15)
    for step in range(200):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 10 == 9:
            sched.step(sum(ctx.losses[-10:]) / 10)
    ls = ctx.losses
    ctx.check("loss fell over 50%", _median(ls[-10:]) < 0.5 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))
