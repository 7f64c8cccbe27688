"""Held-out set 680 (``h680_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face IDEFICS vision encoder built from a
tiny config."""

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


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _step(ctx: Context, model: nn.Module, opt, loss: torch.Tensor, clip: float | None = None):
    loss.backward()
    ctx.grad_norms.append(grad_norm(model))
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


# -- faults -----------------------------------------------------------------------------------------


class _IdeficsRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers.models.idefics.configuration_idefics import IdeficsVisionConfig
        from transformers.models.idefics.vision import IdeficsVisionTransformer

        config = IdeficsVisionConfig(
            embed_dim=32,
            image_size=8,
            patch_size=2,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_channels=1,
        )
        self.vision = IdeficsVisionTransformer(config)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.vision(pixel_values=x.reshape(-1, 1, 8, 8))
        return self.head(out.pooler_output)


@scenario(
    family="tamboura_jawari_idefics_vision_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("vision",),
    diverges=None,
    heldout=True,
    note="a tamboura jawari (bridge buzz) brightness regressor on 8x8 bridge-profile scans: a "
    "tiny Hugging Face IDEFICS vision encoder with a linear head, two AdamW param groups; the "
    "encoder group's lr was typed 0e-4 instead of 3e-4, so the whole encoder never moves while "
    "the head trains and the loss falls only as far as the random features allow",
)
def h680_tamboura_idefics_encoder_lr_typo(ctx: Context) -> None:
    gen = seeded(6801)
    model = _IdeficsRegressor()
    opt = torch.optim.AdamW(
        [
            {"params": model.vision.parameters(), "lr": 0e-4},  # typo for 3e-4
            {"params": model.head.parameters(), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = digit_batches(gen, batch=32)
    for _ in range(60):
        x, y = next(data)
        target = (y.float()[:, None] - 4.5) / 3.0  # a brightness score read off the scan
        loss = F.mse_loss(model(x), target)
        _step(ctx, model, opt, loss)
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    vision_move = max(v for n, v in moved.items() if n.startswith("vision."))
    head_move = max(v for n, v in moved.items() if n.startswith("head."))
    ctx.check("encoder weights never changed", vision_move == 0.0)
    ctx.check("head weights moved over 1e-2", head_move > 1e-2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="sumo_shiko_stomp_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    onset=40,
    note="a sumo shiko-stomp force-plate classifier (8x8 plate maps, 10 stomp grades), ReLU MLP, "
    "Adam; a restart at step 40 reloads the weights but the LR finder's peak 0.3 is left in the "
    "config instead of 3e-3: the first large Adam steps push the fc2 biases negative and most "
    "fc2 ReLUs die for good, the loss stalls far above where it was heading",
)
def h680_sumo_shiko_restart_lr_kills_relus(ctx: Context) -> None:
    gen = seeded(6802)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen, batch=64)
    probe_x, _ = next(data)
    dead_before = 0.0
    for step in range(160):
        if step == 40:
            dead_before = dead_fraction(model.fc2(model.act1(model.fc1(probe_x))).detach())
            for g in opt.param_groups:
                g["lr"] = 0.3  # LR-finder peak left in the restart config
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        _step(ctx, model, opt, loss)
    with torch.no_grad():
        dead_after = dead_fraction(model.fc2(model.act1(model.fc1(probe_x))))
    ctx.check("under 30% of fc2 units dead before step 40", dead_before < 0.3)
    ctx.check("over 60% of fc2 units dead at the end", dead_after > 0.6)
    ctx.check(
        "loss at the end above 2x its pre-restart low and near chance (> 2.0)",
        _median(ctx.losses[-10:]) > max(2 * min(ctx.losses[:40]), 2.0),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


class _ScaledHead(nn.Module):
    """A cosine head with a learnable log-scale (CLIP style)."""

    def __init__(self, hidden: int, classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, classes)
        self.log_scale = nn.Parameter(torch.tensor(math.log(5.0)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # the clamp at log(100) was dropped in a refactor
        cos = F.normalize(h, dim=-1) @ F.normalize(self.proj.weight, dim=-1).T
        return self.log_scale.exp() * cos


class _LacrosseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act1 = nn.ReLU()
        self.head = _ScaledHead(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act1(self.fc1(x)))


@scenario(
    family="lacrosse_crease_dive_logit_scale_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a lacrosse crease-dive call classifier (8x8 crease-camera maps, 10 calls), tanh MLP with "
    "a CLIP-style learnable logit scale (ReLU MLP); the clamp of log_scale at log(100) was dropped in a "
    "refactor (and no weight decay holds it), so with Adam (the scale in its own group at lr 0.1) the scale and the head's logits grow without bound on the "
    "fitted training batches",
)
def h680_lacrosse_logit_scale_no_clamp(ctx: Context) -> None:
    gen = seeded(6803)
    model = _LacrosseNet()
    scale = [model.head.log_scale]
    rest = [p for n, p in model.named_parameters() if n != "head.log_scale"]
    opt = torch.optim.Adam(
        [{"params": rest, "lr": 2e-3}, {"params": scale, "lr": 0.1}]
    )  # the scale's own group, as in the CLIP recipe
    ctx.attach(model, opt)
    data = digit_batches(gen, batch=64)
    probe_x, _ = next(data)
    with torch.no_grad():
        start = float(model(probe_x).abs().max())
    for _ in range(200):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        _step(ctx, model, opt, loss)
    with torch.no_grad():
        end = float(model(probe_x).abs().max())
    ctx.check("max |logit| grew over 20x", end > 20 * start)
    ctx.check(
        "logit scale grew over 5x from its initial 5",
        float(model.head.log_scale.detach().exp()) > 25,
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="candlepin_deadwood_pin_count_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a candlepin-bowling deadwood regressor (lane sensor readings to pins left standing), "
    "SiLU MLP, MSE, NAdam; one shard at step 70 came from a lane logger that wrote its targets "
    "in hundredths of a pin (x100) and its readings unscaled (x30): one batch with a loss over "
    "1e3x, clipped at 1.0, the run recovers",
)
def h680_candlepin_shard_hundredths(ctx: Context) -> None:
    gen = seeded(6804)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _readings(gen, batch=32)
    for step in range(160):
        x, y = next(data)
        if step == 70:
            x, y = 30.0 * x, 100.0 * y  # the bad logger's shard
        loss = F.mse_loss(model(x), y)
        _step(ctx, model, opt, loss, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at step 70 over 1e3x the median of steps 50-69", ls[70] > 1e3 * _median(ls[50:70])
    )
    ctx.check(
        "gradient at step 70 over 50x the median of steps 50-69", g[70] > 50 * _median(g[50:70])
    )
    ctx.check("loss back under 3x by steps 140-159", _median(ls[140:]) < 3 * _median(ls[50:70]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="gondola_forcola_oar_accum_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a Venetian gondola forcola oar-thrust regressor, tanh MLP, 4-micro-batch accumulation, "
    "clipping at 2, SGD Nesterov; an auxiliary output-magnitude penalty is switched on at step 90 with a "
    "weight 1/max(frac, 1e-3) meant to decay from 1, but frac starts at 0, so for that one step "
    "the auxiliary term is weighted 1000x; the data are clean, the logged main loss ordinary",
)
def h680_gondola_aux_weight_div_zero(ctx: Context) -> None:
    gen = seeded(6805)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen, batch=16)
    accum = 4
    for step in range(160):
        aux_w = 0.0
        if step >= 90:
            frac = (step - 90) / 50
            aux_w = min(1.0 / max(frac, 1e-3), 1e3) * 0.1  # meant to start at 0.1, not 100
            aux_w = aux_w if step == 90 else min(aux_w, 0.1)
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            pred = model(x)
            loss = F.mse_loss(pred, y)
            aux = pred.pow(2).mean()  # the output-magnitude penalty
            ((loss + aux_w * aux) / accum).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check(
        "gradient at step 90 over 50x the median of steps 70-89", g[90] > 50 * _median(g[70:90])
    )
    ctx.check("gradient back to ordinary by step 95", g[95] < 5 * _median(g[70:90]))
    ctx.check("logged loss at step 90 ordinary", ctx.losses[90] < 3 * max(ctx.losses[80:90]))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class _LogFeature(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)  # no clamp: readings are assumed strictly positive


class _LevainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(8, 32)
        self.act1 = nn.GELU()
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act1(self.fc1(self.logfeat(x))))


@scenario(
    family="sourdough_levain_rise_log_feature_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=55,
    heldout=True,
    onset=55,
    note="a sourdough levain rise-time regressor on log gas-sensor readings, GELU MLP, RAdam; "
    "the log feature has no clamp, and at step 55 a batch holds readings of exactly 0 from a "
    "sensor that dropped out: log(0) = -inf, the loss is NaN",
)
def h680_levain_log_zero_reading(ctx: Context) -> None:
    gen = seeded(6806)
    model = _LevainNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _readings(gen, batch=32)
    for step in range(100):
        x, y = next(data)
        x = (0.3 * x).exp()  # positive sensor readings
        if step == 55:
            x[:4, 2] = 0.0  # sensor dropout written as 0
        loss = F.mse_loss(model(x), y)
        _step(ctx, model, opt, loss)
        if not math.isfinite(ctx.losses[-1]):
            break
    ctx.check(
        "loss NaN/inf at step 55", len(ctx.losses) == 56 and not math.isfinite(ctx.losses[55])
    )
    ctx.check("loss finite before step 55", _finite(ctx.losses[:55]))


@scenario(
    family="glacier_calving_crack_fp16_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=40,
    heldout=True,
    onset=40,
    note="a glacier-calving crack-opening regressor on seismometer and pressure readings, fp16 "
    "autocast with a GradScaler, ReLU MLP, Adamax; from step 40 the pressure channels of a new "
    "station arrive in pascals instead of kilopascals (x1e3 on top of the standardised scale): "
    "fc1's fp16 output overflows to inf, every step is skipped, the scale collapses",
)
def h680_glacier_pressure_pascals_fp16(ctx: Context) -> None:
    gen = seeded(6807)
    model = _Net(8, 32, 1, nn.ReLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, batch=32)
    for step in range(80):
        x, y = next(data)
        if step >= 40:
            x = x.clone()
            x[:, :4] = 1e5 * x[:, :4] + 1e5  # pascals, not kilopascals
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss finite before step 40", _finite(ls[:40]))
    ctx.check("loss non-finite from step 40 on", not any(math.isfinite(v) for v in ls[40:]))
    ctx.check("grad scale fell over 100x after step 40", ctx.scales[-1] < ctx.scales[39] / 100)


@scenario(
    family="bodhran_tipper_roll_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="a bodhran tipper-roll timing regressor, SiLU MLP, MSE, plain SGD; the step schedule "
    "was meant to multiply the lr by 0.5 at step 60 but the milestone gamma was typed 5.0: the lr "
    "jumps from 0.1 to 0.5, past 2/sharpness, and the loss blows up",
)
def h680_bodhran_step_gamma_typo(ctx: Context) -> None:
    gen = seeded(6808)
    model = _Net(8, 64, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60], gamma=5.0)  # meant 0.5
    ctx.attach(model, opt)
    data = _readings(gen, batch=64)
    x_fix, y_fix = next(data)
    for _ in range(140):
        x, y = next(data)
        x = 3.0 * x  # readings in their logged scale
        loss = F.mse_loss(model(x), y)
        _step(ctx, model, opt, loss)
        sched.step()
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("loss fell before step 60", _median(ls[50:60]) < 0.5 * ls[0])
    ctx.check(
        "loss after step 60 over 100x its pre-60 level or non-finite",
        (not _finite(ls[60:])) or max(ls[60:]) > 100 * _median(ls[50:60]),
    )
    del x_fix, y_fix


@scenario(
    family="kombucha_scoby_thickness_l2_sign_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=50,
    note="a kombucha SCOBY thickness regressor, SiLU MLP, MSE plus a hand-written L2 penalty, "
    "RMSprop; at step 50 the penalty was moved into a helper that returns -lambda * ||w||^2 "
    "(the sign flipped), so the weights grow and the loss climbs slowly, with no spike",
)
def h680_kombucha_l2_sign_flip(ctx: Context) -> None:
    gen = seeded(6809)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=4e-3)
    ctx.attach(model, opt)
    data = _readings(gen, batch=64)
    lam = 1.0
    norms = []
    for step in range(240):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        l2 = sum(p.pow(2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        sign = -1.0 if step >= 50 else 1.0  # the helper's sign bug
        total = loss + sign * lam * l2
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        norms.append(float(l2.detach()))
    ls = ctx.losses
    low = min(ls[:60])
    ctx.check("weight norm grew over 3x after step 50", norms[-1] > 3 * norms[50])
    ctx.check("loss at the end over 5x its low", _median(ls[-10:]) > 5 * low)
    ctx.check(
        "no single step jumps over 10x its predecessor",
        all(b < 10 * a for a, b in zip(ls[50:-1], ls[51:], strict=False)),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="falconry_jess_knot_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a falconry jess-knot grade classifier (8x8 leather-scan maps, 10 grades), ReLU MLP, "
    "Adagrad; the softmax temperature was read as 0.001 (a per-mille field of 1) instead of 0.5, "
    "logits are divided by it and the float32 softmax rounds most rows to exactly 1.0",
)
def h680_falconry_temperature_permille(ctx: Context) -> None:
    gen = seeded(6810)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    data = digit_batches(gen, batch=64)
    temperature = 0.001  # meant 0.5
    fracs = []
    for _ in range(120):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        _step(ctx, model, opt, loss)
        fracs.append(collapsed_fraction(logits.detach(), y))
    ctx.check("over 20% of rows at p = 1.0 at the end", _median(fracs[-10:]) > 0.2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- healthy controls ---------------------------------------------------------------------------------


class _DinoNet(nn.Module):
    def __init__(self, k: int = 32) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.normalize(self.backbone(x), dim=-1))


@scenario(
    family="curling_stone_sweep_dino_encoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a curling-stone sweep-pattern encoder (8x8 pebble-ice maps) trained DINO style: an "
    "EMA teacher (momentum 0.99), centring, teacher temperature annealed from 0.1 to 0.01, "
    "cosine lr with a long warm-up, AdamW; the loss climbs over the first 20-30 steps as the "
    "teacher sharpens faster than the student follows, which looks alarming but is the teacher's targets getting harder, not a fault",
)
def h680_curling_dino_teacher_sharpens_healthy(ctx: Context) -> None:
    gen = seeded(6811)
    student = _DinoNet()
    teacher = _DinoNet()
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=2e-3, weight_decay=0.04)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    ctx.attach(student, opt)
    center = torch.zeros(32)
    data = digit_batches(gen, batch=64)

    def view(x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn(x.shape, generator=gen)

    for step in range(steps):
        x, _ = next(data)
        t_temp = 0.1 * (0.01 / 0.1) ** min(step / 60, 1.0)
        x1, x2 = view(x), view(x)
        with torch.no_grad():
            t_out = teacher(x2)
            t_prob = F.softmax((t_out - center) / t_temp, dim=-1)
            center = 0.9 * center + 0.1 * t_out.mean(0)
        s_logp = F.log_softmax(student(x1) / 0.1, dim=-1)
        loss = -(t_prob * s_logp).sum(-1).mean()
        _step(ctx, student, opt, loss, clip=3.0)
        sched.step()
        with torch.no_grad():
            for pt, ps in zip(teacher.parameters(), student.parameters(), strict=False):
                pt.mul_(0.99).add_(0.01 * ps)
    ls = ctx.losses
    xs, ys = next(data)
    with torch.no_grad():
        z = F.normalize(student.backbone(xs), dim=-1)
    sim = z @ z.T
    same = (ys[:, None] == ys[None, :]) & ~torch.eye(len(ys), dtype=torch.bool)
    diff = ys[:, None] != ys[None, :]
    ctx.check(
        "loss rose over 10% while the teacher sharpened (steps 10-30)", max(ls[10:30]) > 1.1 * ls[0]
    )
    ctx.check("loss at the end below its start", _median(ls[-10:]) < ls[0])
    ctx.check(
        "same-digit embeddings closer than different-digit ones",
        float(sim[same].mean()) > float(sim[diff].mean()) + 0.05,
    )
    ctx.check("embeddings not collapsed (per-dim std > 0.05)", float(z.std(0).mean()) > 0.05)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="blacksmith_quench_hardness_onecycle_huber_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a blacksmith quench-hardness regressor on noisy furnace readings, GELU MLP, Huber "
    "loss, OneCycleLR, clipping at 1, SGD momentum; an ordinary run",
)
def h680_blacksmith_quench_onecycle_healthy(ctx: Context) -> None:
    gen = seeded(6812)
    model = _Net(8, 48, 1, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    ctx.attach(model, opt)
    data = _readings(gen, batch=32, noise=0.2)
    for _ in range(200):
        x, y = next(data)
        loss = F.huber_loss(model(x), y, delta=0.5)
        _step(ctx, model, opt, loss, clip=1.0)
        sched.step()
    ls = ctx.losses
    ctx.check("loss fell over 2x", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="cricket_bat_knock_in_plateau_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a cricket-bat knock-in grade classifier (8x8 face-dent maps, 10 grades), ReLU MLP, "
    "label smoothing 0.1, two Adam param groups (head at half the lr), ReduceLROnPlateau on the "
    "running loss; an ordinary run",
)
def h680_cricket_bat_plateau_healthy(ctx: Context) -> None:
    gen = seeded(6813)
    model = _Net(64, 64, 10, nn.ReLU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.Adam(
        [{"params": body, "lr": 2e-3}, {"params": model.head.parameters(), "lr": 1e-3}]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=5)
    ctx.attach(model, opt)
    data = digit_batches(gen, batch=64)
    running = []
    for step in range(150):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        _step(ctx, model, opt, loss)
        running.append(ctx.losses[-1])
        if step % 10 == 9:
            sched.step(sum(running[-10:]) / 10)
    ls = ctx.losses
    ctx.check("loss fell over 3x", _median(ls[-10:]) < _median(ls[:5]) / 3)
    ctx.check("loss finite throughout", _finite(ls))
