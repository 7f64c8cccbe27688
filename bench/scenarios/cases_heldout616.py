"""Held-out set 616 (``h616_``): ten faults over ten causes and three healthy controls, all
hand-written models for trades, sports and natural phenomena, tuned only with the stand-in
context (``bench/standin.py``), never with steadygrad's diagnosis.
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

# -- shared helpers --------------------------------------------------------------------------------


def teacher_batches(gen: torch.Generator, dim: int, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a smooth nonlinear teacher: y = tanh(x A) b + noise, (B, 1)."""
    a = torch.randn(dim, 16, generator=gen) / math.sqrt(dim)
    b = torch.randn(16, 1, generator=gen) / 2.0
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = torch.tanh(x @ a) @ b + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def param_norm(model: nn.Module) -> float:
    return float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))


def median(values: list[float]) -> float:
    return float(torch.tensor(values).median())


def finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


class ThreeLayer(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = self.act1(self.fc1(x))
        return h1, self.act2(self.fc2(h1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[1])


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    "eton_wall_game_bully_outcome_relu_classifier",
    "Adam",
    "loss_of_plasticity",
    where=("fc1",),
    heldout=True,
    note="8x8 pressure-mat frames of a wall-game bully fed raw (the /16 normalisation left out "
    "of the loader) and Adam lr typed 5e-2 for 5e-4: the first large updates push fc1's "
    "pre-activations negative for nearly every frame; most fc1 ReLU units die and the loss "
    "stalls far above what the model reaches normally",
)
def h616_eton_wall_dead_relu(ctx: Context) -> None:
    gen = seeded(61601)
    model = ThreeLayer(64, 64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    probe_x, _ = next(batches)
    probe_x = probe_x * 16.0
    dead_start = dead_fraction(model.features(probe_x)[0].detach())
    for _ in range(150):
        x, y = next(batches)
        x = x * 16.0  # the bug: raw 0..16 readings
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        dead_end = dead_fraction(model.features(probe_x)[0])
    ctx.check(
        f"fc1 dead fraction rose from {dead_start:.2f} to over 0.5 ({dead_end:.2f})",
        dead_start < 0.2 and dead_end > 0.5,
    )
    tail = median(ctx.losses[-30:])
    ctx.check(f"loss stalls: last 30 steps' median over 0.4 ({tail:.2f})", tail > 0.4)
    ctx.check("losses finite", finite(ctx.losses))


@scenario(
    "chasse_maree_lugsail_heel_bce_classifier",
    "SGD(momentum)",
    "gradient_spike",
    where=(),
    heldout=True,
    onset=100,
    note="4-micro-batch gradient accumulation; a refactor for step 100 multiplies each micro-batch "
    "loss by 100 where it meant to divide by 4 (a one-step accumulation bug): the backpropagated "
    "gradient bursts over 30x while the logged loss stays ordinary; clipping at 5.0 bounds the "
    "update and the run carries on",
)
def h616_chasse_maree_accum_spike(ctx: Context) -> None:
    gen = seeded(61602)
    dim = 12
    w_true = torch.randn(dim, generator=gen)
    model = ThreeLayer(dim, 32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    for step in range(200):
        logged = 0.0
        for _ in range(4):
            x = torch.randn(16, dim, generator=gen)
            y = ((x @ w_true + 0.3 * torch.randn(16, generator=gen)) > 0).float()[:, None]
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            factor = 100.0 if step == 100 else 0.25  # the bug: x100 for /4 at step 100
            (loss * factor).backward()
            logged += float(loss.detach()) / 4
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    base = median(g[80:100])
    ctx.check(
        f"gradient at step 100 over 30x the median before ({g[100] / base:.0f}x)",
        g[100] > 30 * base,
    )
    ctx.check(
        "logged loss at step 100 ordinary (under 2x the median before)",
        ctx.losses[100] < 2 * median(ctx.losses[80:100]),
    )
    ctx.check(
        "loss fell and stays finite",
        finite(ctx.losses) and median(ctx.losses[-20:]) < 0.7 * ctx.losses[0],
    )


class LogThickness(nn.Module):
    """log of the ice-block thickness reading (column 0), no clamp."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], dim=1)


class IceHotelNet(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.log_thickness = LogThickness()
        self.fc1 = nn.Linear(dim, 32)
        self.fc2 = nn.Linear(32, 32)
        self.mean = nn.Linear(32, 1)
        self.log_var = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.silu(self.fc2(F.silu(self.fc1(self.log_thickness(x)))))
        return self.mean(h), self.log_var(h)


@scenario(
    "ice_hotel_block_melt_gaussian_nll_net",
    "NAdam",
    "nonfinite",
    where=("log_thickness",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Gaussian-NLL melt-rate net taking log(block thickness) in the model without a clamp; at "
    "step 80 a batch carries a dead thickness gauge reading exactly 0, log(0) = -inf, the forward "
    "pass turns NaN and the loss is NaN at step 80",
)
def h616_ice_hotel_log_nan(ctx: Context) -> None:
    gen = seeded(61603)
    dim = 6
    model = IceHotelNet(dim)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    for step in range(150):
        x = torch.randn(64, dim, generator=gen)
        x[:, 0] = 0.3 + torch.rand(64, generator=gen)  # thickness in metres, positive
        if step == 80:
            x[5, 0] = 0.0  # the dead gauge
        y = 0.8 * torch.log(x[:, :1]) + 0.5 * x[:, 1:2] + 0.1 * torch.randn(64, 1, generator=gen)
        mean, log_var = model(x)
        loss = F.gaussian_nll_loss(mean, y, log_var.exp())
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("loss finite before step 80", len(ls) > 80 and finite(ls[:80]))
    ctx.check("loss non-finite at step 80", len(ls) == 81 and not math.isfinite(ls[80]))
    ctx.check("loss fell before the fault", len(ls) > 80 and median(ls[70:80]) < ls[0])


@scenario(
    "pluvial_lake_shoreline_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="shoreline-elevation tanh regressor (MSE) with plain SGD whose lr was typed 3.0 for "
    "0.03: the step is far past 2/sharpness from step 0, the loss oscillates and blows up",
)
def h616_pluvial_lake_lr_typo(ctx: Context) -> None:
    gen = seeded(61604)
    model = ThreeLayer(10, 64, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    ctx.attach(model, opt)
    batches = teacher_batches(gen, 10)
    for _ in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), 3.0 * y + 1.0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    peak = max((v for v in ls if math.isfinite(v)), default=0.0)
    ctx.check(
        "loss blows up (over 100x its start, or non-finite)", peak > 100 * ls[0] or not finite(ls)
    )
    ctx.check("first loss finite", math.isfinite(ls[0]))


class DeepTanh(nn.Module):
    def __init__(self, dim: int, width: int, depth: int, gain: float) -> None:
        super().__init__()
        sizes = [dim] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x)


@scenario(
    "shinny_puck_deflection_deep_tanh_mlp",
    "SGD(nesterov)",
    "exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="16-deep tanh MLP for deflection angle; the init helper multiplies by "
    "calculate_gain('tanh') (5/3) and its caller passes gain=5/3 again, std (5/3)^2/sqrt(fan_in): "
    "the net sits deep in the chaotic phase and the backward signal grows through depth, the "
    "gradient at layers.0 is over 10x the last hidden layer's and SGD (Nesterov) blows up",
)
def h616_shinny_deep_gain(ctx: Context) -> None:
    gen = seeded(61605)
    model = DeepTanh(8, 32, 16, gain=(5 / 3) ** 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = teacher_batches(gen, 8)
    ratio = 0.0
    for step in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if step == 0:
            g0 = float(model.layers[0].weight.grad.norm())
            g_last = float(model.layers[-1].weight.grad.norm())
            ratio = g0 / max(g_last, 1e-30)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    peak = max((v for v in ls if math.isfinite(v)), default=0.0)
    ctx.check(
        f"gradient at layers.0 over 10x the last hidden layer's at step 0 ({ratio:.0f}x)",
        ratio > 10,
    )
    ctx.check(
        "loss blows up (over 100x its start, or non-finite)", peak > 100 * ls[0] or not finite(ls)
    )


@scenario(
    "kiln_flue_draught_silu_huber_regressor",
    "Adamax",
    "data_outlier",
    where=(),
    onset=110,
    heldout=True,
    note="flue-draught SiLU Huber regressor; the shard served at step 110 has its flue-gas "
    "temperatures logged in decikelvin instead of standardised units (a unit bug in one shard): "
    "loss over 20x, gradient over 10x at that step; clipped at 1.0, the run recovers",
)
def h616_kiln_flue_bad_shard(ctx: Context) -> None:
    gen = seeded(61606)
    model = ThreeLayer(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = teacher_batches(gen, 10)
    for step in range(200):
        x, y = next(batches)
        if step == 110:
            x = x.clone()
            x[:, :3] = x[:, :3] * 40.0 + 3000.0  # the bad shard
        loss = F.huber_loss(model(x), 2.0 * y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    before = median(ls[90:110])
    ctx.check(
        f"loss at step 110 over 20x the median before ({ls[110] / before:.0f}x)",
        ls[110] > 20 * before,
    )
    ctx.check("gradient at step 110 over 10x the median before", g[110] > 10 * median(g[90:110]))
    ctx.check(
        "recovers: last 30 steps' median under 2x the median before", median(ls[-30:]) < 2 * before
    )
    ctx.check("losses finite", finite(ls))


@scenario(
    "terp_mound_silt_layer_gelu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    where=(),
    onset=80,
    heldout=True,
    note="silt-layer GELU regressor; a manual loss scale of 65536 left in from an fp16 experiment "
    "multiplies the backpropagated loss for step 80 only: one gradient over 1000x, Adam's second "
    "moment jumps by over 1e4x and stays there (beta2=0.999), so the updates afterwards shrink "
    "and the loss stalls",
)
def h616_terp_mound_loss_scale(ctx: Context) -> None:
    gen = seeded(61607)
    model = ThreeLayer(10, 48, 1, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = teacher_batches(gen, 10)
    v_before = 0.0
    moves: list[float] = []
    for step in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), 2.0 * y)
        (loss * (65536.0 if step == 80 else 1.0)).backward()
        ctx.grad_norms.append(grad_norm(model))
        old = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moves.append(
            float(
                sum(
                    (p.detach() - o).norm() ** 2
                    for p, o in zip(model.parameters(), old, strict=True)
                )
            )
            ** 0.5
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step == 79:
            v_before = sum(float(s["exp_avg_sq"].sum()) for s in opt.state.values())
    v_after = sum(float(s["exp_avg_sq"].sum()) for s in opt.state.values())
    g = ctx.grad_norms
    ctx.check(
        f"gradient at step 80 over 1000x the median before ({g[80] / median(g[60:80]):.0f}x)",
        g[80] > 1000 * median(g[60:80]),
    )
    ctx.check(
        f"second moment at the end over 1e4x its value before ({v_after / v_before:.2g}x)",
        v_after > 1e4 * v_before,
    )
    ctx.check(
        "updates 20-100 steps after under 0.1x those before",
        median(moves[100:180]) < 0.1 * median(moves[60:80]),
    )
    ctx.check("losses finite", finite(ctx.losses))


class MummersClassifier(nn.Module):
    def __init__(self, temp_s: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)
        self.temp_s = temp_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc2(F.relu(self.fc1(x))))
        return self.head(h) / self.temp_s


@scenario(
    "mummers_play_sword_lock_temperature_classifier",
    "Adagrad",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="sword-lock figure classifier from 8x8 motion grids; config temp_ms=0.5 read as seconds "
    "(0.0005 in the model): the head's logits are divided by 0.0005, the float32 softmax rounds "
    "the target probability to exactly 1.0 for most rows and gives 0 to the rest",
)
def h616_mummers_temp_bug(ctx: Context) -> None:
    gen = seeded(61608)
    model = MummersClassifier(temp_s=0.5 / 1000.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
    frac = collapsed_fraction(logits, y)
    ctx.check(f"over 40% of rows' target probability exactly 1.0 ({frac:.2f})", frac > 0.4)
    ctx.check("losses finite", finite(ctx.losses))


@scenario(
    "rushbearing_cart_load_silu_regressor",
    "RMSprop",
    "update_ratio_out_of_range",
    where=("fc2",),
    heldout=True,
    note="rush-cart load SiLU regressor with one param group per layer; fc2's lr typed 1e-9 for "
    "1e-3 in the group list: fc2 never moves while fc1 and the head train",
)
def h616_rushbearing_group_typo(ctx: Context) -> None:
    gen = seeded(61609)
    model = ThreeLayer(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-3},
            {"params": model.fc2.parameters(), "lr": 1e-9},  # the typo
            {"params": model.head.parameters(), "lr": 1e-3},
        ],
        alpha=0.99,
    )
    ctx.attach(model, opt)
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    batches = teacher_batches(gen, 10)
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), 2.0 * y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    d2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check(
        f"fc2 moved under 1e-5 of its norm ({d2:.1e}) while fc1 moved over 1e-2 ({d1:.1e})",
        d2 < 1e-5 and d1 > 1e-2,
    )
    ctx.check("loss fell", median(ctx.losses[-20:]) < 0.7 * median(ctx.losses[:10]))


@scenario(
    "dike_breach_seepage_tanh_regressor",
    "RAdam",
    "loss_divergence",
    where=(),
    heldout=True,
    note="seepage-rate tanh regressor with a hand-written decoupled weight decay after each "
    "step, p -= lr * wd * p, whose sign was flipped (p += lr * wd * p, wd=3.0): the weights grow "
    "steadily and the loss climbs slowly to several times its best, with no single jump",
)
def h616_dike_breach_decay_sign(ctx: Context) -> None:
    gen = seeded(61610)
    model = ThreeLayer(10, 48, 1, act=nn.Tanh)
    lr, wd = 3e-3, 3.0
    opt = torch.optim.RAdam(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    n0 = param_norm(model)
    batches = teacher_batches(gen, 10)
    for _ in range(300):
        x, y = next(batches)
        loss = F.mse_loss(model(x), 2.0 * y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "weight" in name:
                    p.add_(p, alpha=lr * wd)  # the bug: alpha=-lr * wd was meant
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    windows = [median(ls[i : i + 10]) for i in range(0, len(ls) - 9)]
    best = min(ls)
    jumps = max(ls[i + 1] / ls[i] for i in range(len(ls) - 1) if ls.index(best) <= i)
    ctx.check(
        f"weights' norm over 2x its start ({param_norm(model) / n0:.1f}x)",
        param_norm(model) > 2 * n0,
    )
    ctx.check(
        f"loss climbs to over 3x its best 10-step median ({windows[-1] / min(windows):.1f}x)",
        windows[-1] > 3 * min(windows),
    )
    ctx.check(f"no single jump over 3x after the best ({jumps:.2f})", jumps < 3)
    ctx.check("losses finite", finite(ls))


# -- healthy controls ------------------------------------------------------------------------------


class PreNormBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ResidualMLP(nn.Module):
    def __init__(self, dim: int, width: int, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(PreNormBlock(width) for _ in range(blocks))
        self.norm_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)
        for blk in self.blocks:  # GPT-2 style scaled init of the residual outputs
            nn.init.normal_(blk.fc2.weight, std=0.02 / math.sqrt(2 * blocks))
            nn.init.zeros_(blk.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.norm_f(h))


@scenario(
    "coal_seam_fire_vent_temp_deep_residual_prenorm_mlp",
    "AdamW",
    "healthy",
    heldout=True,
    note="vent-temperature regressor, a residual MLP of 16 pre-norm blocks (LayerNorm -> fc1 -> "
    "GELU -> fc2, scaled residual init), AdamW with weight decay 0.01, linear warm-up then "
    "cosine decay, clipping at 1.0, Huber loss: trains normally",
)
def h616_coal_seam_resmlp(ctx: Context) -> None:
    gen = seeded(61611)
    model = ResidualMLP(10, 32, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps, warm = 160, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = teacher_batches(gen, 10)
    for _ in range(steps):
        x, y = next(batches)
        loss = F.huber_loss(model(x), 2.0 * y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell under 0.5x its start", median(ls[-20:]) < 0.5 * median(ls[:5]))
    ctx.check("losses finite", finite(ls))


@scenario(
    "bunnok_horse_bone_throw_silu_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="throw-distance SiLU regressor; AdamW weight decay raised 10x (0.1 -> 1.0) at step 100 "
    "on purpose, to regularise the second phase: the weights' norm shrinks steadily afterwards "
    "and the loss rises a little, which looks alarming but is the intended effect",
)
def h616_bunnok_wd_raise(ctx: Context) -> None:
    gen = seeded(61612)
    model = ThreeLayer(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    ctx.attach(model, opt)
    batches = teacher_batches(gen, 10)
    norms: list[float] = []
    for step in range(260):
        if step == 100:
            for group in opt.param_groups:
                group["weight_decay"] = 1.0
        x, y = next(batches)
        loss = F.mse_loss(model(x), 2.0 * y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        norms.append(param_norm(model))
    ls = ctx.losses
    ctx.check(
        f"weights' norm shrinks after step 100 ({norms[-1] / norms[99]:.2f}x)",
        norms[-1] < 0.9 * norms[99],
    )
    ctx.check("trained: loss under 0.5x its start", median(ls[-20:]) < 0.5 * median(ls[:5]))
    ctx.check("losses finite", finite(ls))


@scenario(
    "hurdle_gate_hinge_wear_fp16_relu_classifier",
    "Adam",
    "healthy",
    heldout=True,
    note="hinge-wear grade classifier from 8x8 strain-gauge frames; fp16 autocast with a "
    "torch.amp.GradScaler, 2-micro-batch accumulation, OneCycleLR, label smoothing 0.1, "
    "clipping at 1.0 after unscale: trains normally",
)
def h616_hurdle_gate_fp16(ctx: Context) -> None:
    gen = seeded(61613)
    model = ThreeLayer(64, 64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = digit_batches(gen, 32)
    for _ in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
            scaler.scale(loss / 2).backward()
            logged += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(torch.tensor(logged))
        sched.step()
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell under 0.5x its start", median(ls[-20:]) < 0.5 * median(ls[:5]))
    ctx.check("losses finite and loss scale finite", finite(ls) and finite(ctx.scales))
