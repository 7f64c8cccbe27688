"""Held-out set 638 (``h638_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models (one tiny Hugging Face encoder) on generated data or scikit-learn's digits."""

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
    w2 = torch.randn(16, 1, generator=gen) / 4.0
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


class Net3(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.relu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def _step(ctx: Context, model: nn.Module, opt, loss: torch.Tensor, clip: float | None = None):
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    ctx.grad_norms.append(grad_norm(model))
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)
    return math.isfinite(float(loss.detach()))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="spoon_carving_hook_knife_depth_group_typo_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="two param groups (input layer and the rest); the input layer's lr typed 1e-9 for "
    "1e-3, fc1 barely moves while the rest trains",
)
def h638_spoon_carving_group_lr_typo(ctx: Context) -> None:
    gen = seeded(6381)
    model = Net3(act=torch.tanh)
    opt = torch.optim.Adam(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 1e-3},
        ]
    )
    ctx.attach(model, opt)
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    batches = _regression(gen)
    for _ in range(150):
        x, y = next(batches)
        _step(ctx, model, opt, F.mse_loss(model(x), y))
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    dh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ctx.check("fc1 moved under 1e-5 of its norm", d1 < 1e-5)
    ctx.check("head moved over 1e-2 of its norm", dh > 1e-2)


class LogFeature(nn.Module):
    """log of the brine-to-fresh ratio channel, no epsilon."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


@scenario(
    family="salt_pan_brine_evaporation_log_feature_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=90,
    onset=90,
    heldout=True,
    note="in-model log of the brine-ratio channel without an epsilon; at step 90 a dry pan "
    "reports ratio 0, log 0 = -inf and the loss is NaN",
)
def h638_salt_pan_log_zero(ctx: Context) -> None:
    gen = seeded(6382)
    model = nn.Sequential()
    model.logfeat = LogFeature()
    model.fc1 = nn.Linear(8, 32)
    model.act1 = nn.GELU()
    model.fc2 = nn.Linear(32, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 90
    for step in range(150):
        x, y = next(batches)
        x = x.clone()
        x[:, 0] = x[:, 0].abs() + 0.5
        if step == onset:
            x[:5, 0] = 0.0
            with torch.no_grad():
                ctx.check(
                    "logfeat output non-finite at onset",
                    not bool(model.logfeat(x).isfinite().all()),
                )
        if not _step(ctx, model, opt, F.mse_loss(model(x), y)):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < 0.7 * ls[0])
    ctx.check("loss NaN at onset", len(ls) == onset + 1 and math.isnan(ls[onset]))


@scenario(
    family="barchan_dune_migration_warmup_typo_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=75,
    heldout=True,
    note="linear warm-up over 200 steps to a peak lr typed 1.5 for 0.015; plain SGD on MSE goes "
    "past 2/sharpness as the warm-up climbs (around step 75, where the loss turns up) and the "
    "loss blows up",
)
def h638_barchan_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(6383)
    model = Net3(act=torch.tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.02)
    peak = 1.5
    for step in range(200):
        for g in opt.param_groups:
            g["lr"] = peak * min(1.0, (step + 1) / 200)
        x, y = next(batches)
        if not _step(ctx, model, opt, F.mse_loss(model(x), y)):
            break
    ls = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check(
        "loss blew up over 100x its start",
        max(ls) > 100 * ctx.losses[0] or len(ls) < len(ctx.losses),
    )
    ctx.check("loss fell early in the warm-up", min(ctx.losses[:40]) < 0.5 * ctx.losses[0])


@scenario(
    family="kitesurf_line_tension_deep_tanh_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("0",),
    diverges=None,
    heldout=True,
    note="14-deep tanh MLP initialised with std 3.0/sqrt(fan_in) (a gain meant for the last "
    "layer only applied everywhere); the gradient grows through depth towards layer 0",
)
def h638_kitesurf_deep_tanh_gain(ctx: Context) -> None:
    gen = seeded(6384)
    sizes = [8] + [32] * 13 + [1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        lin = nn.Linear(a, b)
        nn.init.normal_(lin.weight, std=3.0 / math.sqrt(a))
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen)
    ratios = []
    for step in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if step < 10:
            ratios.append(float(model[0].weight.grad.norm() / model[-1].weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("layer 0 gradient over 10x the last layer's", _median(ratios) > 10)


@scenario(
    family="oyster_dredge_catch_weight_huber_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="one boat's shard logs the catch in grams instead of kilograms; the batch at step 100 "
    "has targets 1000x, Huber loss over 20x, the run recovers",
)
def h638_oyster_dredge_grams_shard(ctx: Context) -> None:
    gen = seeded(6385)
    model = Net3(act=F.silu)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 100
    for step in range(180):
        x, y = next(batches)
        if step == onset:
            y = y * 1000.0
        _step(ctx, model, opt, F.huber_loss(model(x), y, delta=1.0))
    ls = ctx.losses
    med = _median(ls[onset - 20 : onset])
    ctx.check("loss over 20x at onset", ls[onset] > 20 * med)
    ctx.check(
        "gradient over 5x at onset",
        ctx.grad_norms[onset] > 5 * _median(ctx.grad_norms[onset - 20 : onset]),
    )
    ctx.check("run recovered", _median(ls[-20:]) < 3 * med)


@scenario(
    family="change_ringing_rope_sally_catch_bce_classifier",
    optimizer="Adagrad",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="auxiliary smoothness loss weight read from a config override typed 300 for 0.03 for "
    "one step (step 120); the backpropagated gradient spikes, the logged loss is ordinary",
)
def h638_change_ringing_aux_weight_typo(ctx: Context) -> None:
    gen = seeded(6386)
    model = Net3(n_in=16, out=1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _classes(gen, k=2)
    onset = 120
    for step in range(180):
        x, y = next(batches)
        out = model(x).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(out, y.float())
        aux = out.pow(2).mean()
        w = 300.0 if step == onset else 0.03
        (loss + w * aux).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check("gradient over 30x at onset", g[onset] > 30 * _median(g[onset - 20 : onset]))
    ls = ctx.losses
    ctx.check("logged loss ordinary at onset", ls[onset] < 2 * _median(ls[onset - 20 : onset]))


@scenario(
    family="kiln_pyrometric_cone_bend_temperature_classifier",
    optimizer="SGD Nesterov",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="softmax temperature 0.5 written as 0.5/1000 (milli-units mix-up), logits divided by "
    "5e-4; the target probabilities round to exactly 1.0 in float32",
)
def h638_kiln_cone_temperature_typo(ctx: Context) -> None:
    gen = seeded(6387)
    model = Net3(n_in=64, hidden=64, out=10)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    temp = 0.5 / 1000
    batches = digit_batches(gen)
    frac = 0.0
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temp
        frac = collapsed_fraction(logits.detach(), y)
        _step(ctx, model, opt, F.cross_entropy(logits, y))
    ctx.check("over 40% of rows' target probability exactly 1.0", frac > 0.4)


@scenario(
    family="chandler_wick_bias_dead_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1 bias initialised with constant -4.0 (meant for the gate of another model); most "
    "ReLU units never fire and stop learning",
)
def h638_chandler_dead_bias_init(ctx: Context) -> None:
    gen = seeded(6388)
    model = Net3(n_in=16, hidden=64, out=4)
    nn.init.constant_(model.fc1.bias, -4.0)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", o.detach()))
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        _step(ctx, model, opt, F.cross_entropy(model(x), y))
    ctx.check("over 60% of fc1 units dead", dead_fraction(seen["fc1"]) > 0.6)


class CosineHead(nn.Module):
    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, dim) / math.sqrt(dim))
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


@scenario(
    family="snowshoe_gait_cosine_classifier",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="cosine classifier with a learnable logit scale whose clamp at 16 was dropped in a "
    "refactor, in its own param group at lr 0.3; the head's logits grow without bound",
)
def h638_snowshoe_cosine_scale_unclamped(ctx: Context) -> None:
    gen = seeded(6389)
    model = nn.Sequential()
    model.fc1 = nn.Linear(16, 32)
    model.act1 = nn.ReLU()
    model.head = CosineHead(32, 4)
    opt = torch.optim.RMSprop(
        [
            {"params": [model.fc1.weight, model.fc1.bias, model.head.weight], "lr": 1e-3},
            {"params": [model.head.scale], "lr": 0.3},
        ]
    )
    ctx.attach(model, opt)
    batches = _classes(gen)
    sizes = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        sizes.append(float(logits.detach().abs().max()))
        _step(ctx, model, opt, F.cross_entropy(logits, y))
    ctx.check("head logits grew over 20x", sizes[-1] > 20 * sizes[0])


@scenario(
    family="geyser_eruption_interval_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=70,
    onset=70,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 70 the basin temperature channel arrives in "
    "millikelvin from a new logger (x1000 + offset), fc1's fp16 output overflows to inf",
)
def h638_geyser_fp16_millikelvin(ctx: Context) -> None:
    gen = seeded(63810)
    model = nn.Sequential()
    model.fc1 = nn.Linear(8, 32)
    model.act1 = nn.SiLU()
    model.fc2 = nn.Linear(32, 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", o.detach()))
    onset = 70
    for step in range(120):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 3] = x[:, 3] * 1e5 + 3.7e5
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check("fc1 fp16 output non-finite at onset", not bool(seen["fc1"].isfinite().all()))
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model.fc1(x).isfinite().all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < 0.7 * ls[0])
    ctx.check("loss non-finite at onset", len(ls) == onset + 1 and not math.isfinite(ls[onset]))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="banjo_head_tension_llrd_mlp",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="layer-wise lr decay: each layer's lr 0.5x the one above it (input layer at 1/16 of "
    "the head's), warm-up + cosine, clipping; the low layers' tiny update ratios look alarming",
)
def h638_banjo_llrd_control(ctx: Context) -> None:
    gen = seeded(63811)
    model = nn.Sequential()
    model.l0 = nn.Linear(8, 32)
    model.a0 = nn.GELU()
    model.l1 = nn.Linear(32, 32)
    model.a1 = nn.GELU()
    model.l2 = nn.Linear(32, 32)
    model.a2 = nn.GELU()
    model.l3 = nn.Linear(32, 32)
    model.a3 = nn.GELU()
    model.head = nn.Linear(32, 1)
    top = 3e-3
    names = ["head", "l3", "l2", "l1", "l0"]
    groups = [
        {"params": getattr(model, n).parameters(), "lr": top * 0.5**i} for i, n in enumerate(names)
    ]
    opt = torch.optim.AdamW(groups, weight_decay=1e-2)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    for _ in range(steps):
        x, y = next(batches)
        _step(ctx, model, opt, F.mse_loss(model(x), y), clip=1.0)
        sched.step()
    ls = ctx.losses
    ctx.check("loss fell over 3x", _median(ls[-20:]) < _median(ls[:10]) / 3)
    ctx.check("losses finite", all(math.isfinite(v) for v in ls))


class ClogStepEncoder(nn.Module):
    """A tiny Hugging Face BERT encoder (from a config) with a pooled classification head."""

    def __init__(self, vocab: int = 32, k: int = 4) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
        )
        self.encoder = BertModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(32, k)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=ids).last_hidden_state
        return self.head(h.mean(1))


@scenario(
    family="clog_dance_step_hf_bert_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="tiny Hugging Face BERT encoder from a config, OneCycleLR, label smoothing 0.1, "
    "clipping at 1.0, 2-micro-batch gradient accumulation, 5% noisy labels",
)
def h638_clog_dance_bert_control(ctx: Context) -> None:
    gen = seeded(63812)
    model = ClogStepEncoder()
    steps = 100
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    ctx.attach(model, opt)

    def batch():
        ids = torch.randint(1, 32, (16, 12), generator=gen)
        y = (ids < 8).sum(1).clamp(max=3)
        noisy = torch.rand(16, generator=gen) < 0.05
        y = torch.where(noisy, torch.randint(0, 4, (16,), generator=gen), y)
        return ids, y

    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            ids, y = batch()
            ctx.targets(y)
            loss = F.cross_entropy(model(ids), y, label_smoothing=0.1) / 2
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell", _median(ls[-15:]) < 0.8 * _median(ls[:10]))
    ctx.check("losses finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="peat_moss_growth_asgd_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="ASGD with ReduceLROnPlateau on noisy field readings (heavy sensor noise), Huber loss",
)
def h638_peat_moss_asgd_control(ctx: Context) -> None:
    gen = seeded(63813)
    model = Net3(act=torch.tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=50)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.2)
    for _ in range(200):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        _step(ctx, model, opt, loss)
        sched.step(float(loss.detach()))
    ls = ctx.losses
    ctx.check("loss fell", _median(ls[-20:]) < 0.7 * _median(ls[:10]))
    ctx.check("losses finite", all(math.isfinite(v) for v in ls))
