"""Held-out set 681 (``h681_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face SAM 3 vision model built from a tiny
config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
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


def _tiny_sam3_vision():
    from transformers import Sam3VisionConfig, Sam3VisionModel
    from transformers.models.sam3.configuration_sam3 import Sam3ViTConfig

    backbone = Sam3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_channels=3,
        image_size=28,
        patch_size=7,
        window_size=0,
        global_attn_indexes=[1],
        pretrain_image_size=28,
    )
    config = Sam3VisionConfig(
        backbone_config=backbone,
        fpn_hidden_size=16,
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
        scale_factors=[4.0, 2.0, 1.0, 0.5],
    )
    return Sam3VisionModel(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="sirocco_dust_haze_visibility_batch_standardised_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=60,
    heldout=True,
    onset=60,
    note="a sirocco dust-haze visibility regressor whose first module is a hand-written batch "
    "standardisation (x - mean) / std with no eps, NAdam; from step 60 the anemometer channel "
    "of the station feed reads exactly 0 (sensor dropout), its batch std is 0 and 0/0 gives NaN "
    "in the standardisation layer, the loss is NaN at step 60",
)
def h681_sirocco_standardise_no_eps(ctx: Context) -> None:
    class _Standardise(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - x.mean(0)) / x.std(0)  # no eps

    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = _Standardise()
            self.body = _Net(8, 32, 1, nn.SiLU)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(self.norm(x))

    gen = seeded(6811)
    model = _Model()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    normed_nan_at = None
    for step in range(120):
        x, y = next(data)
        x = 2.0 * x + 5.0
        if step >= 60:
            x = x.clone()
            x[:, 3] = 0.0  # anemometer dropout
        with torch.no_grad():
            if normed_nan_at is None and torch.isnan(model.norm(x)).any():
                normed_nan_at = step
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("loss finite before step 60", _finite(ls[:60]))
    ctx.check("loss fell before the dropout", ls[59] < 0.5 * ls[0])
    ctx.check("loss NaN at step 60", len(ls) == 61 and math.isnan(ls[60]))
    ctx.check("the standardisation output first NaN at step 60", normed_nan_at == 60)


@scenario(
    family="stained_glass_came_solder_sam3_vision_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=(
        "sam.neck",
        "sam.neck.fpn_layers.2",
        "sam.neck.fpn_layers.2.proj1",
        "sam.neck.fpn_layers.2.proj2",
    ),
    diverges=None,
    heldout=True,
    note="a tiny SAM 3 vision model (ViT backbone + FPN neck, from a config) regressing the "
    "solder-joint width of stained-glass came from generated 28x28 panel images, AdamW with "
    "param groups; the neck group's lr was typed 1e-9 instead of 1e-3, the FPN neck's updates "
    "are about a million times too small for its weights while the backbone and head train",
)
def h681_stained_glass_sam3_neck_lr_typo(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sam = _tiny_sam3_vision()
            self.head = nn.Linear(16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            feat = self.sam(pixel_values=x).fpn_hidden_states[2]
            return self.head(feat.mean((2, 3)))

    gen = seeded(6812)
    model = _Model()
    groups = [
        {"params": list(model.sam.backbone.parameters()), "lr": 1e-3},
        {"params": list(model.sam.neck.parameters()), "lr": 1e-9},  # typo for 1e-3
        {"params": list(model.head.parameters()), "lr": 1e-3},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    ctx.attach(model, opt)
    grid = torch.linspace(-1, 1, 28)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    neck0 = [p.detach().clone() for p in model.sam.neck.parameters()]
    bb0 = [p.detach().clone() for p in model.sam.backbone.parameters()]
    for _step in range(60):
        width = torch.rand(8, generator=gen) * 0.4 + 0.05
        angle = torch.rand(8, generator=gen) * math.pi
        d = (xx[None] * torch.cos(angle)[:, None, None]) + (
            yy[None] * torch.sin(angle)[:, None, None]
        )
        line = (d.abs() < width[:, None, None]).float()
        img = torch.stack([line, 1 - line, 0.5 * line], 1) + 0.1 * torch.randn(
            8, 3, 28, 28, generator=gen
        )
        y = width[:, None] * 5.0
        loss = F.mse_loss(model(img), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)

    def rel(now, before):
        num = sum(float((a - b).norm() ** 2) for a, b in zip(now, before, strict=True))
        den = sum(float(b.norm() ** 2) for b in before)
        return math.sqrt(num / den)

    neck_rel = rel(list(model.sam.neck.parameters()), neck0)
    bb_rel = rel(list(model.sam.backbone.parameters()), bb0)
    ctx.check("neck weights moved under 1e-5 relative", neck_rel < 1e-5)
    ctx.check("backbone weights moved over 1e-2 relative", bb_rel > 1e-2)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check(
        "loss fell (mean of last 10 below first 10)",
        sum(ctx.losses[-10:]) < sum(ctx.losses[:10]),
    )


@scenario(
    family="curling_stone_sweep_friction_huber_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="a curling-stone sweep-friction regressor, GELU MLP, Huber loss, 4-micro-batch "
    "accumulation, clipping at 1, SGD momentum; on the step after a checkpoint resume (100) the "
    "loss is built with reduction='sum' from the old config instead of 'mean', so that step's "
    "gradient is the batch size (64) times larger; the logged mean loss is ordinary, the data "
    "clean, the clip holds the update and the run carries on",
)
def h681_curling_resume_sum_reduction(ctx: Context) -> None:
    gen = seeded(6813)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    data = _readings(gen, batch=64)
    for step in range(180):
        reduction = "sum" if step == 100 else "mean"
        total = 0.0
        for _ in range(4):
            x, y = next(data)
            out = model(x)
            (F.huber_loss(out, y, reduction=reduction, delta=0.5) / 4).backward()
            total += float(F.huber_loss(out.detach(), y, delta=0.5)) / 4
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    base = _median(g[80:100])
    ctx.check("gradient at step 100 over 30x the median of steps 80-99", g[100] > 30 * base)
    ctx.check("gradient back to ordinary by step 105", g[105] < 5 * base)
    ctx.check(
        "logged loss at step 100 ordinary (< 3x max of 90-99)",
        ctx.losses[100] < 3 * max(ctx.losses[90:100]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="racing_pigeon_loft_homing_time_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a racing-pigeon homing-time regressor, ReLU MLP, MSE, clipping at 2, plain SGD; the "
    "shard read at step 90 came from a club that logs flight times in seconds instead of hours "
    "(targets 3600x), that one batch's loss is enormous, the clip holds the update and the run "
    "recovers on clean batches",
)
def h681_pigeon_loft_seconds_shard(ctx: Context) -> None:
    gen = seeded(6814)
    model = _Net(8, 32, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(200):
        x, y = next(data)
        y = y + 2.0  # hours
        if step == 90:
            y = y * 3600.0  # the seconds shard
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 90 over 1e4x the median of 70-89", ls[90] > 1e4 * _median(ls[70:90]))
    ctx.check("gradient at step 90 over 50x the median of 70-89", g[90] > 50 * _median(g[70:90]))
    ctx.check(
        "loss recovered by the end (median of last 20 < 3x median of 70-89)",
        _median(ls[-20:]) < 3 * _median(ls[70:90]),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="dry_stone_dyke_batter_angle_deep_leaky_regressor",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="a dry-stone-dyke batter-angle regressor, 12 Linear + LeakyReLU layers, SGD Nesterov; "
    "the init helper was called with gain 1.6 where the Kaiming std already included sqrt(2), "
    "every layer multiplies the signal and the backward gradient by about 1.6, the gradient "
    "at the first layer's output is hundreds of times that at the last layer's, the run blows up",
)
def h681_dry_stone_dyke_init_gain(ctx: Context) -> None:
    class _Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(8 if i == 0 else 32, 32) for i in range(12))
            self.act = nn.LeakyReLU(0.1)
            self.head = nn.Linear(32, 1)
            for lin in self.layers:
                nn.init.normal_(lin.weight, std=1.6 * math.sqrt(2.0 / lin.in_features))
                nn.init.zeros_(lin.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for lin in self.layers:
                x = self.act(lin(x))
            return self.head(x)

    gen = seeded(6815)
    model = _Deep()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen)
    ratio0 = None
    for step in range(100):
        x, y = next(data)
        outs = []
        h = x
        for lin in model.layers:
            z = lin(h)
            z.retain_grad()
            outs.append(z)
            h = model.act(z)
        loss = F.mse_loss(model.head(h), y)
        loss.backward()
        if step == 0:
            ratio0 = float(outs[0].grad.norm()) / max(float(outs[-1].grad.norm()), 1e-30)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check(
        "gradient at layers.0 output over 100x that at the last layer's at step 0", ratio0 > 100
    )
    ctx.check(
        "loss blew up (non-finite or over 1e3x its start)",
        (not _finite(ls)) or max(ls) > 1e3 * ls[0],
    )


@scenario(
    family="chimney_sweep_flue_draught_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=30,
    note="a chimney-sweep flue-draught regressor, tanh MLP, MSE, plain SGD with a linear "
    "warm-up; the warm-up's target lr was typed 1.0 instead of 0.1, past step ~30 lr x "
    "sharpness goes over 2 and the loss oscillates and blows up",
)
def h681_chimney_flue_warmup_target_typo(ctx: Context) -> None:
    gen = seeded(6816)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    data = _readings(gen)
    probe_x, probe_y = next(data)
    target_lr = 1.0  # meant 0.1
    lam_at = {}

    def sharpness() -> float:
        params = list(model.parameters())
        loss = F.mse_loss(model(probe_x), probe_y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(20):
            n = math.sqrt(sum(float((u * u).sum()) for u in v))
            v = [u / n for u in v]
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
            v = [h.detach() for h in hv]
        return lam

    for step in range(150):
        lr = target_lr * min(1.0, (step + 1) / 100)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 5 == 0:
            lam_at[step] = (lr, sharpness())
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)) or float(loss) > 1e6:
            break
    ls = ctx.losses
    over = [s for s, (lr, lam) in sorted(lam_at.items()) if lr * lam > 2.0]
    ctx.check("lr x sharpness under 2 at step 0", lam_at[0][0] * lam_at[0][1] < 2.0)
    ctx.check("lr x sharpness over 2 at a probed step", bool(over))
    ctx.check("loss fell first (step 20 below half of step 0)", ls[20] < 0.5 * ls[0])
    ctx.check(
        "loss blew up (non-finite or over 100x its low)",
        (not _finite(ls)) or max(ls) > 100 * min(ls),
    )


@scenario(
    family="beehive_nectar_flow_weight_gain_silu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=0,
    note="a beehive nectar-flow weight-gain regressor, SiLU MLP, Adamax; the hand-written "
    "decoupled weight decay is applied as p *= (1 + lr * wd) instead of (1 - lr * wd), the "
    "weights grow a little every step and the data loss, after falling, climbs slowly with no spike and no NaN",
)
def h681_beehive_decay_sign(ctx: Context) -> None:
    gen = seeded(6817)
    model = _Net(8, 32, 1, nn.SiLU)
    lr, wd = 3e-3, 2.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    data = _readings(gen)
    norms = []
    for _step in range(260):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # sign typo: should be 1 - lr * wd
        l2 = sum((p * p).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        norms.append(float(l2.detach()))
    ls = ctx.losses
    low = min(ls)
    ctx.check("loss climbs past 5x its low by the end", _median(ls[-10:]) > 5 * low)
    ctx.check("weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check("loss finite throughout", _finite(ls))
    jumps = [ls[i + 1] / max(ls[i], 1e-12) for i in range(len(ls) - 1)]
    ctx.check("no one-step jump over 20x (a slow climb)", max(jumps) < 20)


@scenario(
    family="kite_fighting_manja_glass_grade_margin_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a kite-fighting manja (glass-coated string) grade classifier on 8x8 micrograph "
    "digits, ReLU MLP, a hand-written multi-class hinge loss, RAdam; the hinge's clamp(min=0) "
    "was dropped in a refactor, so the loss rewards ever larger margins, the head's logits grow "
    "without bound and the loss falls below zero and keeps falling",
)
def h681_kite_manja_hinge_no_clamp(ctx: Context) -> None:
    gen = seeded(6818)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    scale = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        true = logits.gather(1, y[:, None])
        other = logits.masked_fill(F.one_hot(y, 10).bool(), float("-inf")).max(1).values
        loss = (1.0 - true[:, 0] + other).mean()  # clamp(min=0) dropped
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        scale.append(float(logits.detach().abs().mean()))
    ctx.check("head logits grew over 20x", scale[-1] > 20 * scale[0])
    ctx.check("loss below -10 at the end", ctx.losses[-1] < -10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="ski_wax_glide_snow_crystal_dead_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="a ski-wax glide classifier (snow-crystal class from 8 generated readings), ReLU MLP, "
    "cross-entropy, Adagrad; the 'sparse activations' init sets fc2's bias to -4 with "
    "weights U(-0.05, 0.05), every fc2 ReLU is off on every input, no gradient reaches fc2 or "
    "fc1, and the loss stays near chance",
)
def h681_ski_wax_fc2_bias_init(ctx: Context) -> None:
    gen = seeded(6819)
    model = _Net(8, 32, 4, nn.ReLU)
    nn.init.uniform_(model.fc2.weight, -0.05, 0.05)
    nn.init.constant_(model.fc2.bias, -4.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    w = torch.randn(8, 4, generator=gen)
    fc1_0 = model.fc1.weight.detach().clone()
    feats = None
    for _step in range(150):
        x = torch.randn(64, 8, generator=gen)
        y = (x @ w).argmax(1)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            feats = model.fc2(model.act1(model.fc1(x)))
    ctx.check("over 90% of fc2 units dead at the end", dead_fraction(feats) > 0.9)
    ctx.check("fc1 never moved", float((model.fc1.weight - fc1_0).norm()) < 1e-6)
    ctx.check(
        "loss still near chance (last 10 mean > 0.9 ln 4)",
        sum(ctx.losses[-10:]) / 10 > 0.9 * math.log(4),
    )


@scenario(
    family="sheep_shearing_fleece_weight_poisoned_adam_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=50,
    note="a sheep-shearing fleece-weight regressor, SiLU MLP, MSE, Adam (beta2 0.999, no "
    "clipping); at step 50 the loss was multiplied by the fp16 loss scale 65536 and backed "
    "through without the scale being undone (a half-ported mixed-precision path), one giant "
    "gradient fills Adam's second moment and the updates afterwards are over 10x smaller, the "
    "loss stalls",
)
def h681_sheep_shearing_loss_scale_not_undone(ctx: Context) -> None:
    gen = seeded(6820)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    ctx.attach(model, opt)
    data = _readings(gen)
    steps_size = []
    for step in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        (loss * (65536.0 if step == 50 else 1.0)).backward()
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        steps_size.append(
            math.sqrt(
                sum(
                    float((p - b).norm() ** 2)
                    for p, b in zip(model.parameters(), before, strict=True)
                )
            )
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g, u = ctx.grad_norms, steps_size
    ctx.check("gradient at step 50 over 1e3x the median of 30-49", g[50] > 1e3 * _median(g[30:50]))
    ctx.check(
        "updates over steps 70-120 over 10x smaller than over 30-49",
        _median(u[70:120]) * 10 < _median(u[30:50]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="hot_air_balloon_envelope_lift_clipped_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a hot-air-balloon envelope-lift regressor, GELU MLP, MSE, Adam, gradient clipping at "
    "max-norm 0.01 so every single step is clipped (alarming at a glance, but Adam's update "
    "is invariant to the gradient's scale, so the run trains normally): a healthy control",
)
def h681_hot_air_balloon_tiny_clip(ctx: Context) -> None:
    gen = seeded(6821)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    for _step in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("every step clipped (pre-clip norm > 0.01)", min(ctx.grad_norms) > 0.01)
    ctx.check("loss fell over 5x", _median(ls[-10:]) * 5 < ls[0])
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="lacrosse_stick_pocket_depth_smoothed_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a lacrosse-stick pocket-depth class on 8x8 digit-like mesh scans, ReLU MLP, "
    "cross-entropy with label smoothing 0.1, AdamW with two param groups (no decay on biases), "
    "linear warm-up then cosine decay, noisy inputs: a healthy control",
)
def h681_lacrosse_pocket_warmup_cosine(ctx: Context) -> None:
    gen = seeded(6822)
    model = _Net(64, 64, 10, nn.ReLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    total = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (total - 20)))
        ),
    )
    ctx.attach(model, opt)
    data = digit_batches(gen)
    for _step in range(total):
        x, y = next(data)
        x = x + 0.05 * torch.randn(x.shape, generator=gen)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell below half its start", _median(ls[-10:]) < 0.5 * ls[0])
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="geyser_eruption_interval_plateau_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a geyser eruption-interval regressor, tanh MLP, Huber loss, RMSprop, 2-micro-batch "
    "accumulation, clipping at 1.0, ReduceLROnPlateau on the running loss, noisy readings: a "
    "healthy control",
)
def h681_geyser_interval_plateau(ctx: Context) -> None:
    gen = seeded(6823)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    data = _readings(gen, batch=32, noise=0.2)
    for _step in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell below 0.7x its start", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))
