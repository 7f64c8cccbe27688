"""Held-out set 621 (``h621_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models (and one Hugging Face MPNet classifier from a tiny config) on generated data or
scikit-learn's bundled digits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    bert_batches,
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


class Net3(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.silu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _train(ctx, model, opt, batches, steps, loss_fn, *, classifier=False, clip=None, hook=None):
    for step in range(steps):
        x, y = next(batches)
        if hook is not None:
            x, y = hook(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break


# -- faults -----------------------------------------------------------------------------------------


class StrikeNet(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.head = nn.Linear(32, 4)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc1(x))) / self.temperature


@scenario(
    family="hurling_sliotar_strike_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="softmax temperature 0.5 entered as 0.5 * 1e-3 (the config's unit was ms): logits "
    "are divided by 0.0005, the softmax saturates and most rows' target probability is exactly 1.0",
)
def h621_hurling_strike_temperature_ms(ctx: Context) -> None:
    gen = seeded(6211)
    model = StrikeNet(temperature=0.5 * 1e-3)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
    frac = collapsed_fraction(logits, y)
    ctx.check("over 40% of rows' target probability is exactly 1.0", frac > 0.4)
    ctx.check("logits over 1e3 in magnitude", float(logits.abs().max()) > 1e3)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="bellringer_rope_sally_tension_spike_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="the loss weight is read from a config as a percent (100) instead of a fraction (1.0) "
    "for the one step after a config reload at step 100: one backpropagated loss 100x, the "
    "gradient spikes, clipping at 5 holds it, the logged loss stays ordinary and the run recovers",
)
def h621_bellringer_sally_loss_weight_percent(ctx: Context) -> None:
    gen = seeded(6212)
    model = Net3(8, 32, 1, act=torch.tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 100
    for step in range(180):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        weight = 100.0 if step == onset else 1.0  # bug: percent read as a fraction
        (weight * loss).backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check("gradient at onset over 30x the median before", g[onset] > 30 * _median(g[80:onset]))
    ctx.check(
        "logged loss at onset under 3x the median before", ls[onset] < 3 * _median(ls[80:onset])
    )
    ctx.check(
        "run recovers: last losses under 2x pre-onset",
        _median(ls[-10:]) < 2 * _median(ls[80:onset]),
    )
    ctx.check("finite", all(math.isfinite(v) for v in ls))


class SqrtFeature(nn.Module):
    """sqrt of the supersaturation reading (column 0): physically non-negative, unclamped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.sqrt(x[:, :1]), x[:, 1:]], 1)


class DendriteNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feat = SqrtFeature()
        self.body = Net3(8, 32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.feat(x))


@scenario(
    family="snowflake_dendrite_growth_sqrt_regressor",
    optimizer="Adadelta",
    cause="nonfinite",
    where=("feat",),
    diverges=80,
    onset=80,
    heldout=True,
    note="in-model sqrt of the supersaturation reading without its clamp; at step 80 a batch "
    "carries a slightly negative reading from a sensor offset, sqrt gives NaN, the loss is NaN",
)
def h621_snowflake_sqrt_negative_supersaturation(ctx: Context) -> None:
    gen = seeded(6213)
    model = DendriteNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    base = _regression(gen)
    onset = 80

    def readings():
        for x, y in base:
            x = x.clone()
            x[:, 0] = x[:, 0].abs() + 0.05
            yield x, y

    def hook(step, x, y):
        if step == onset:
            x = x.clone()
            x[3, 0] = -0.02  # sensor offset pushes one reading below zero
        return x, y

    _train(ctx, model, opt, readings(), 140, F.mse_loss, hook=hook)
    ls = ctx.losses
    ctx.check("finite before onset", all(math.isfinite(v) for v in ls[:onset]))
    ctx.check("loss is NaN at onset", len(ls) > onset and math.isnan(ls[onset]))
    ctx.check("loss fell before onset", _median(ls[onset - 10 : onset]) < _median(ls[:10]))


@scenario(
    family="glassblower_gather_temperature_fp16_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 90 the furnace pyrometer feed switches to "
    "millikelvin (the /1000 is dropped), fc1's fp16 output overflows to inf, the loss is non-finite",
)
def h621_glassblower_pyrometer_millikelvin(ctx: Context) -> None:
    gen = seeded(6214)
    model = Net3(8, 32, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", o.detach()))
    onset = 90
    overflow = False
    for step in range(130):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 2] = (x[:, 2] + 12.0) * 1e5  # millikelvin reading, conversion dropped
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            overflow = not bool(torch.isfinite(seen["fc1"]).all())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("finite before onset", all(math.isfinite(v) for v in ls[:onset]))
    ctx.check("fc1's fp16 output non-finite at onset", overflow)
    ctx.check("loss non-finite at onset", len(ls) > onset and not math.isfinite(ls[onset]))
    with torch.no_grad():
        x, _ = next(batches)
        x[:, 2] = (x[:, 2] + 12.0) * 1e5
        ctx.check("same input finite in float32", bool(torch.isfinite(model.fc1(x)).all()))


class BreathRNN(nn.Module):
    def __init__(self, hidden: int = 48) -> None:
        super().__init__()
        self.rnn = nn.RNN(8, hidden, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(-1, 8, 8).repeat(1, 3, 1))
        return self.head(out[:, -1])


@scenario(
    family="didgeridoo_circular_breath_irnn_classifier",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="IRNN init with the recurrent identity scaled by 1.22 (a gain meant for the input "
    "weights pasted onto weight_hh): over 24 steps the ReLU recurrence amplifies, the "
    "gradient reaching the first time step is over 10x the last's, the loss jumps to over 5x "
    "chance in the first steps and the run never learns (stays near chance)",
)
def h621_didgeridoo_irnn_recurrent_gain(ctx: Context) -> None:
    gen = seeded(6215)
    model = BreathRNN()
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(1.22 * torch.eye(48))
        model.rnn.bias_hh_l0.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    ratios: list[float] = []
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        seq = x.reshape(-1, 8, 8).repeat(1, 3, 1).requires_grad_(not ratios)
        out, _ = model.rnn(seq)
        loss = F.cross_entropy(model.head(out[:, -1]), y)
        loss.backward()
        if not ratios:  # gradient reaching the first time step vs the last
            ratios.append(float(seq.grad[:, 0].norm()) / float(seq.grad[:, -1].norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("input gradient at the first time step over 10x the last's at step 0", ratios[0] > 10)
    ctx.check("loss over 5x chance (2.3) in the first 5 steps", max(ls[:5]) > 5 * 2.3)
    ctx.check("never learns: last losses over 1.8", _median(ls[-10:]) > 1.8)


@scenario(
    family="sailmaker_seam_load_group_typo_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="three param groups; fc1's lr typed 2e-9 for 2e-3: fc1 never moves while fc2 and the "
    "head learn, the loss falls but plateaus above what the full model reaches",
)
def h621_sailmaker_fc1_lr_typo(ctx: Context) -> None:
    gen = seeded(6216)
    model = Net3(8, 32, 1)
    opt = torch.optim.NAdam(
        [
            {"params": model.fc1.parameters(), "lr": 2e-9},  # typo: 2e-3
            {"params": model.fc2.parameters(), "lr": 2e-3},
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    ctx.attach(model, opt)
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    _train(ctx, model, opt, _regression(gen), 200, F.mse_loss)
    rel1 = float((model.fc1.weight - w1).norm() / w1.norm())
    rel2 = float((model.fc2.weight - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-5 of its norm", rel1 < 1e-5)
    ctx.check("fc2 moved over 1e-2 of its norm", rel2 > 1e-2)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < _median(ctx.losses[:10]))


@scenario(
    family="avalanche_runout_onecycle_sgd_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="OneCycleLR max_lr typed 4.0 for 0.4: the run trains during warm-up, then the rate "
    "passes the 2/sharpness limit and the loss blows up",
)
def h621_avalanche_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(6217)
    model = Net3(8, 32, 1, act=torch.tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=4.0, total_steps=200, pct_start=0.4, div_factor=100.0
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    lrs: list[float] = []
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    low = min(ls[:40])
    k = next((i for i, v in enumerate(ls) if (not math.isfinite(v)) or v > 100 * low), None)
    ctx.check("loss fell early in warm-up", low < 0.7 * ls[0])
    ctx.check("loss blows up (over 100x its early best or non-finite)", k is not None)
    ctx.check(
        "blow-up after the rate rose over 5x its start", k is not None and lrs[k] > 5 * lrs[0]
    )


@scenario(
    family="beekeeper_hive_weight_outlier_huber_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="one sample of the step-100 batch comes from a scale shard logged in grams instead of "
    "kilograms (readings x1000): loss and gradient spike, clipping at 1 holds it, the run recovers",
)
def h621_beekeeper_hive_grams_shard(ctx: Context) -> None:
    gen = seeded(6218)
    model = Net3(8, 32, 1)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    onset = 100

    def hook(step, x, y):
        if step == onset:
            x = x.clone()
            x[5] = x[5] * 1000.0  # grams shard
        return x, y

    _train(ctx, model, opt, _regression(gen), 180, F.huber_loss, clip=1.0, hook=hook)
    ls, g = ctx.losses, ctx.grad_norms
    pre = _median(ls[80:onset])
    ctx.check("loss at onset over 20x the median before", ls[onset] > 20 * pre)
    ctx.check("gradient at onset over 10x the median before", g[onset] > 10 * _median(g[80:onset]))
    ctx.check("recovers: last losses under 2x pre-onset", _median(ls[-10:]) < 2 * pre)


class ChiselNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


@scenario(
    family="stonemason_chisel_digit_dead_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="a non-negativity constraint copied from another model is applied with the wrong sign "
    "at init (fc1.weight = -|w|, bias -0.1) on non-negative pixel inputs: nearly every fc1 ReLU "
    "is dead from step 0, gets no gradient and the loss stalls near chance",
)
def h621_stonemason_negative_abs_init(ctx: Context) -> None:
    gen = seeded(6219)
    model = ChiselNet()
    with torch.no_grad():
        model.fc1.weight.copy_(-model.fc1.weight.abs())  # bug: meant +|w|
        model.fc1.bias.fill_(-0.1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.fc1(x))
    ctx.check("over 80% of fc1 units dead at the end", dead > 0.8)
    ctx.check("loss stays over 1.5 (chance is 2.3)", _median(ctx.losses[-10:]) > 1.5)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="kite_surf_line_load_adam_poison_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="Adam with beta2 0.9999; at step 60 a debugging line multiplies the loss by 1e5 for "
    "one step (left in from a scale test): the second moment fills with the giant gradient and "
    "the updates afterwards are orders smaller, the loss stalls",
)
def h621_kitesurf_adam_second_moment(ctx: Context) -> None:
    gen = seeded(62110)
    model = Net3(8, 32, 1, act=torch.tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.9999))
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 60
    ups: list[float] = []
    for step in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        (loss * (1e5 if step == onset else 1.0)).backward()
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        ups.append(
            float(
                sum(
                    (p.detach() - b).norm() ** 2
                    for p, b in zip(model.parameters(), before, strict=True)
                )
                ** 0.5
            )
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "gradient at onset over 1e4x the median before",
        ctx.grad_norms[onset] > 1e4 * _median(ctx.grad_norms[40:onset]),
    )
    ctx.check(
        "updates after onset under 0.05x those before",
        _median(ups[onset + 20 :]) < 0.05 * _median(ups[40:onset]),
    )
    ctx.check(
        "loss stalls: last 10 within 10% of onset's 10",
        _median(ls[-10:]) > 0.9 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("finite", all(math.isfinite(v) for v in ls))


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    family="cricket_bowling_action_hf_mpnet_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Hugging Face MPNet sequence classifier from a tiny config; AdamW with no decay on "
    "biases and LayerNorm, linear warm-up then decay, clipping at 1.0",
)
def h621_cricket_mpnet_control(ctx: Context) -> None:
    from transformers import MPNetConfig, MPNetForSequenceClassification

    gen = seeded(62111)
    config = MPNetConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = MPNetForSequenceClassification(config)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    steps = 150
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 15) * max(0.1, 1 - s / steps)
    )
    ctx.attach(model, opt)
    batches = bert_batches(gen)
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(input_ids=x).logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell by over 30%", _median(ls[-10:]) < 0.7 * _median(ls[:10]))
    ctx.check("finite", all(math.isfinite(v) for v in ls))


class GeyseriteNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU())
        self.height_head = nn.Linear(32, 1)
        self.erupt_head = nn.Linear(32, 1)
        self.log_var = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.height_head(h), self.erupt_head(h)


@scenario(
    family="hot_spring_geyserite_uncertainty_two_task_net",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="two tasks (sinter-height MSE, eruption BCE) weighted by learnt log-variances "
    "(Kendall et al.): total = sum exp(-s_i) L_i + s_i goes negative and keeps falling as the "
    "log-variances shrink; Adam with ReduceLROnPlateau on the task losses; healthy, looks alarming",
)
def h621_geyserite_uncertainty_weighting(ctx: Context) -> None:
    gen = seeded(62112)
    model = GeyseriteNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.02)
    tasks: list[float] = []
    for _ in range(250):
        x, y = next(batches)
        erupt = (x[:, :1] + 0.5 * x[:, 1:2] > 0).float()
        h, e = model(x)
        l1 = F.mse_loss(h, y)
        l2 = F.binary_cross_entropy_with_logits(e, erupt)
        s = model.log_var
        loss = torch.exp(-s[0]) * l1 + s[0] + torch.exp(-s[1]) * l2 + s[1]
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step(float(l1 + l2))
        tasks.append(float(l1 + l2))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("total loss goes negative", min(ls) < 0)
    ctx.check("task losses fell by over half", _median(tasks[-10:]) < 0.5 * _median(tasks[:10]))
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="bagpipe_drone_reed_rmsprop_smoothing_classifier",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="RMSprop, label smoothing 0.1, 2-micro-batch gradient accumulation, StepLR, clipping "
    "at 2.0, 5% of labels noisy (mis-tagged reeds)",
)
def h621_bagpipe_reed_control(ctx: Context) -> None:
    gen = seeded(62113)
    model = Net3(16, 48, 5, act=F.relu)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 5, 32)
    for _ in range(160):
        total = 0.0
        for _micro in range(2):
            x, y = next(batches)
            noisy = torch.rand(len(y), generator=gen) < 0.05
            y = torch.where(noisy, torch.randint(0, 5, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1) / 2
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell by over 40%", _median(ls[-10:]) < 0.6 * _median(ls[:10]))
    ctx.check("finite", all(math.isfinite(v) for v in ls))
