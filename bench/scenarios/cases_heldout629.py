"""Held-out set 629 (``h629_``): 10 faults over 10 causes and 3 healthy controls, all
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
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 5, batch: int = 64, flip: float = 0.0):
    """Endless (x, y) batches: y is the argmax of a fixed score of the readings (a share ``flip``
    of labels replaced by random ones)."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = (torch.tanh(x) @ w).argmax(1)
        if flip > 0:
            noisy = torch.rand(batch, generator=gen) < flip
            y = torch.where(noisy, torch.randint(0, k, (batch,), generator=gen), y)
        yield x, y


class Net3(nn.Module):
    def __init__(self, n_in: int, hidden: int, out: int, act=F.relu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _train_step(ctx: Context, model, opt, loss, backprop=None, clip: float | None = None) -> None:
    (loss if backprop is None else backprop).backward()
    ctx.grad_norms.append(grad_norm(model))
    if clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="bunnock_throw_knockdown_deep_tanh_regressor",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("0",),
    diverges=None,
    heldout=True,
    note="16-deep tanh MLP initialised with std 3.0/sqrt(fan_in) (gain typed 3.0 for tanh's 5/3): "
    "the gradient grows through depth, layer 0's gradient is over 10x the last layer's",
)
def h629_bunnock_deep_tanh_init_gain(ctx: Context) -> None:
    gen = seeded(6291)
    sizes = [8] + [32] * 15 + [1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        lin = nn.Linear(a, b)
        nn.init.normal_(lin.weight, std=3.0 / math.sqrt(a))  # bug: gain 3.0, tanh's is 5/3
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=5e-4, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen)
    first, last = model[0], model[len(model) - 1]
    ratios = []
    for _ in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(float(first.weight.grad.norm() / (last.weight.grad.norm() + 1e-12)))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check(
        "layer 0's gradient over 10x the last layer's (first 10 steps)", _median(ratios[:10]) > 10
    )
    ctx.check("layer 0's gradient over 10x the last layer's (whole run)", _median(ratios) > 10)


@scenario(
    family="cairn_stack_stability_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="manual static loss scaling (loss x 65536 before backward, grads divided after): on the "
    "step after a checkpoint resume (step 70) the unscale is skipped, Adam gets one gradient 65536x "
    "too large; its second moment jumps, the updates shrink over 30x and the loss stalls",
)
def h629_cairn_adam_loss_scale_skip(ctx: Context) -> None:
    gen = seeded(6292)
    model = Net3(8, 48, 1, act=F.silu)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.02)
    scale = 65536.0
    moves: list[float] = []
    v_before = v_after = 0.0
    for step in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        (loss * scale).backward()
        if step != 70:  # bug: the resume path skips the unscale on its first step
            for p in model.parameters():
                p.grad.div_(scale)
        ctx.grad_norms.append(grad_norm(model))
        before = _flat(model)
        if step == 69:
            v_before = max(float(s["exp_avg_sq"].max()) for s in opt.state.values())
        opt.step()
        if step == 70:
            v_after = max(float(s["exp_avg_sq"].max()) for s in opt.state.values())
        moves.append(float((_flat(model) - before).norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "gradient at step 70 over 1000x the median before",
        ctx.grad_norms[70] > 1000 * _median(ctx.grad_norms[50:70]),
    )
    ctx.check("Adam's second moment over 1e6x after step 70", v_after > 1e6 * v_before)
    ctx.check(
        "updates 60-130 steps after the burst over 30x smaller",
        _median(moves[130:200]) * 30 < _median(moves[50:70]),
    )
    ctx.check(
        "loss stalls: less than 20% drop over the 120 steps after the burst",
        _median(ls[180:200]) > 0.8 * _median(ls[60:70]),
    )
    ctx.check(
        "loss was still falling before the burst", _median(ls[60:70]) < 0.7 * _median(ls[:10])
    )


@scenario(
    family="dew_point_fog_onset_relu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="param groups copied from a fine-tuning config where the middle layer was frozen: fc2's "
    "group keeps lr 0.0, fc2 never moves while fc1 and the head train",
)
def h629_dew_point_frozen_group(ctx: Context) -> None:
    gen = seeded(6293)
    model = Net3(8, 32, 1)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 0.05},
            {"params": model.fc2.parameters(), "lr": 0.0},  # bug: left from the fine-tuning config
            {"params": model.head.parameters(), "lr": 0.05},
        ]
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    w2 = model.fc2.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    for _ in range(160):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        _train_step(ctx, model, opt, loss)
    d2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    ctx.check("fc2 moved less than 1e-6 of its norm", d2 < 1e-6)
    ctx.check("fc1 moved over 5% of its norm", d1 > 0.05)
    ctx.check(
        "loss fell (the other layers trained)",
        _median(ctx.losses[-10:]) < 0.7 * _median(ctx.losses[:10]),
    )


def _top_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    params = [p for p in model.parameters()]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="underwater_hockey_puck_glide_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=10,
    note="linear warm-up to a peak lr typed 1.5 for 0.15: from step ~10 lr x top Hessian "
    "eigenvalue exceeds 2 and the MSE blows up",
)
def h629_underwater_hockey_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(6294)
    model = Net3(8, 32, 1, act=torch.tanh)
    peak, warm = 1.5, 60  # bug: peak typed 1.5 for 0.15
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    ctx.attach(model, opt)
    batches = _regression(gen)
    probe = next(batches)
    over = []
    for step in range(150):
        x, y = next(batches)
        if step % 5 == 0 and step <= 60:
            lam = _top_eig(model, lambda: F.mse_loss(model(probe[0]), probe[1]))
            over.append((step, opt.param_groups[0]["lr"] * lam))
        loss = F.mse_loss(model(x), y)
        _train_step(ctx, model, opt, loss)
        sched.step()
        if not math.isfinite(float(loss.detach())):
            break
    ls = [v if math.isfinite(v) else float("inf") for v in ctx.losses]
    first_over = min((s for s, r in over if r > 2), default=None)
    ctx.check("lr x sharpness passes 2 by step 10", first_over is not None and first_over <= 10)
    ctx.check("lr x sharpness below 2 at the start", over[0][1] < 2)
    ctx.check("loss blows up past 100x its best", max(ls) > 100 * min(ls))
    ctx.check("loss was falling before the blow-up", min(ls[:30]) < 0.7 * ls[0])


@scenario(
    family="tchoukball_frame_rebound_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="one shard of frame-sensor readings exported in millimetres instead of metres (x1000) "
    "lands at step 100: the Huber loss jumps over 20x, the gradient over 10x; clipping holds and "
    "the run recovers",
)
def h629_tchoukball_mm_shard(ctx: Context) -> None:
    gen = seeded(6295)
    model = Net3(8, 32, 1, act=F.gelu)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    ctx.attach(model, opt)
    batches = _regression(gen)
    for step in range(220):
        x, y = next(batches)
        if step == 100:
            x = x * 1000.0  # bad shard: millimetres
        loss = F.huber_loss(model(x), y, delta=1.0)
        _train_step(ctx, model, opt, loss, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 100 over 20x the median before", ls[100] > 20 * _median(ls[85:100]))
    ctx.check("gradient at step 100 over 10x the median before", gs[100] > 10 * _median(gs[85:100]))
    ctx.check(
        "recovers: final loss under 2x the pre-shard median",
        _median(ls[-10:]) < 2 * _median(ls[85:100]),
    )


@scenario(
    family="morning_glory_cloud_roll_speed_relu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="per-sample loss weights recomputed at an epoch boundary (step 90) with raw station counts "
    "instead of normalised weights: one backprop gradient over 30x the median while the logged "
    "(unweighted) loss is ordinary; clipping holds",
)
def h629_morning_glory_weight_counts(ctx: Context) -> None:
    gen = seeded(6296)
    model = Net3(8, 32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _regression(gen)
    for step in range(200):
        x, y = next(batches)
        per = F.mse_loss(model(x), y, reduction="none").squeeze(1)
        weights = torch.ones_like(per)
        if step == 90:
            weights = torch.randint(200, 800, per.shape, generator=gen).float()  # bug: raw counts
        loss = per.mean()
        _train_step(ctx, model, opt, loss, backprop=(weights * per).mean(), clip=2.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 90 over 30x the median before", gs[90] > 30 * _median(gs[70:90]))
    ctx.check("logged loss at step 90 under 3x the median before", ls[90] < 3 * _median(ls[70:90]))
    ctx.check(
        "loss recovers under 2x the pre-spike median", _median(ls[-10:]) < 2 * _median(ls[70:90])
    )


class RangeNorm(nn.Module):
    """Scales each sample's readings to [0, 1] by its own min and max (no epsilon)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo = x.min(1, keepdim=True).values
        hi = x.max(1, keepdim=True).values
        return (x - lo) / (hi - lo)  # bug: no clamp on hi - lo


class BrinicleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = RangeNorm()
        self.body = Net3(8, 32, 1, act=F.silu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(x))


@scenario(
    family="brinicle_growth_rate_range_norm_regressor",
    optimizer="Adadelta",
    cause="nonfinite",
    where=("norm",),
    diverges=80,
    heldout=True,
    onset=80,
    note="in-model per-sample min-max normalisation without an epsilon; at step 80 a frozen "
    "thermistor string reads the same value on all 8 channels: 0/0 in `norm`, the loss is NaN",
)
def h629_brinicle_range_norm_zero_div(ctx: Context) -> None:
    gen = seeded(6297)
    model = BrinicleNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    batches = _regression(gen)
    norm_nan = False
    for step in range(160):
        x, y = next(batches)
        if step == 80:
            x = x.clone()
            x[5] = -1.7  # frozen sensor: every channel the same reading
        if step == 80:
            norm_nan = bool(torch.isnan(model.norm(x)).any()) and bool(torch.isfinite(x).all())
        loss = F.mse_loss(model(x), y)
        if not math.isfinite(float(loss)):
            ctx.grad_norms.append(float("nan"))
            ctx.step(loss)
            break
        _train_step(ctx, model, opt, loss)
    ls = ctx.losses
    ctx.check("loss NaN at step 80", len(ls) == 81 and math.isnan(ls[80]))
    ctx.check("finite before step 80", all(math.isfinite(v) for v in ls[:80]))
    ctx.check("norm's output NaN from a finite input", norm_nan)
    ctx.check("loss fell before", _median(ls[70:80]) < 0.7 * _median(ls[:10]))


@scenario(
    family="kubb_baton_throw_outcome_relu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="softmax temperature 0.07 read from a config in percent (divided by 100): logits are "
    "divided by 0.0007 and over 40% of rows' target probability is exactly 1.0 in float32",
)
def h629_kubb_temperature_percent(ctx: Context) -> None:
    gen = seeded(6298)
    model = Net3(16, 32, 5)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    temperature = 0.07 / 100  # bug: config value was already a fraction
    fracs = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        fracs.append(collapsed_fraction(logits.detach(), y))
        _train_step(ctx, model, opt, loss)
    ctx.check("over 40% of rows collapsed to p=1.0 (last 20 steps)", _median(fracs[-20:]) > 0.4)
    ctx.check("loss finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="birling_log_roll_fall_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1's bias initialised to -2.5 by an init helper copied from a gated layer's "
    "'closed' setting; the inputs (log-roller foot-pressure counts) are non-negative, over 80% "
    "of fc1's ReLUs never fire and the loss stalls near chance",
)
def h629_birling_gate_bias_dead_relu(ctx: Context) -> None:
    gen = seeded(6299)
    model = Net3(16, 64, 4)
    with torch.no_grad():
        model.fc1.weight.uniform_(-0.1, 0.1)
        model.fc1.bias.fill_(-2.5)  # bug: gate-closed init copied onto a ReLU layer
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    w = torch.randn(16, 4, generator=gen)

    def batches():
        while True:
            x = torch.rand(64, 16, generator=gen) * 2.0
            yield x, ((x - 1.0) @ w).argmax(1)

    it = batches()
    for _ in range(160):
        x, y = next(it)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        _train_step(ctx, model, opt, loss)
    x, _ = next(it)
    dead = dead_fraction(F.relu(model.fc1(x)).detach())
    ctx.check("over 80% of fc1's units dead at the end", dead > 0.8)
    ctx.check(
        "loss stalls above 0.8x its start",
        _median(ctx.losses[-10:]) > 0.8 * _median(ctx.losses[:10]),
    )


@scenario(
    family="caber_toss_turn_bce_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="turn / no-turn labels exported as 1/2 instead of 0/1 and fed to BCEWithLogits: for "
    "target 2 the loss falls without bound as the logit rises, the head's logits grow over 20x",
)
def h629_caber_bce_label_encoding(ctx: Context) -> None:
    gen = seeded(62910)
    model = Net3(12, 32, 1, act=F.gelu)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    w = torch.randn(12, generator=gen)
    sizes = []
    for _ in range(200):
        x = torch.randn(64, 12, generator=gen)
        y = (x @ w > 0).float() + 1.0  # bug: classes exported as 1/2
        logits = model(x).squeeze(1)
        sizes.append(float(logits.detach().abs().max()))
        loss = F.binary_cross_entropy_with_logits(logits, y)
        _train_step(ctx, model, opt, loss)
    ctx.check("head's logits over 20x their start", _median(sizes[-10:]) > 20 * _median(sizes[:10]))
    ctx.check(
        "logits still growing at the end", _median(sizes[-10:]) > 1.2 * _median(sizes[-60:-50])
    )
    ctx.check("loss finite", all(math.isfinite(v) for v in ctx.losses))


# -- healthy controls ----------------------------------------------------------------------------


class StickConv(nn.Module):
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
    family="bandy_stick_pass_sam_conv_classifier",
    optimizer="SAM (SGD momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="sharpness-aware minimisation (rho 0.05): each step a first forward-backward, the "
    "weights moved along the normalised gradient, a second forward-backward at the perturbed "
    "point, weights restored, SGD momentum step with the second gradient; control that looks "
    "alarming (two passes, the stepped gradient is not the logged loss's)",
)
def h629_bandy_sam_control(ctx: Context) -> None:
    gen = seeded(62911)
    model = StickConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    rho = 0.05
    params = list(model.parameters())
    perturbed_higher = 0
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        with torch.no_grad():
            gn = torch.sqrt(sum((p.grad**2).sum() for p in params)) + 1e-12
            eps = [rho * p.grad / gn for p in params]
            for p, e in zip(params, eps, strict=False):
                p.add_(e)
        opt.zero_grad(set_to_none=True)
        loss2 = F.cross_entropy(model(x), y)
        loss2.backward()
        perturbed_higher += int(float(loss2) > float(loss))
        with torch.no_grad():
            for p, e in zip(params, eps, strict=False):
                p.sub_(e)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("trained: loss under 0.3x its start", _median(ls[-10:]) < 0.3 * _median(ls[:10]))
    ctx.check("finite", all(math.isfinite(v) for v in ls))
    ctx.check("SAM perturbation raised the loss on most steps", perturbed_higher > 100)


@scenario(
    family="korfball_shot_outcome_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="AdamW with decay/no-decay param groups, OneCycleLR, label smoothing 0.1, 2-micro-batch "
    "accumulation, clipping at 1.0, 5% noisy labels: an ordinary run",
)
def h629_korfball_onecycle_control(ctx: Context) -> None:
    gen = seeded(62912)
    model = Net3(16, 48, 5, act=F.gelu)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 180
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    ctx.attach(model, opt)
    batches = _classes(gen, batch=32, flip=0.05)
    for _ in range(steps):
        total = 0.0
        for _micro in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1) / 2
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.as_tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("trained: loss under 0.6x its start", _median(ls[-10:]) < 0.6 * _median(ls[:10]))
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="mudpot_bubble_height_huber_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Adam with a no-decay bias group, Huber loss on noisy gauge readings, "
    "ReduceLROnPlateau on a running loss, clipping at 5.0: an ordinary run",
)
def h629_mudpot_plateau_control(ctx: Context) -> None:
    gen = seeded(62913)
    model = Net3(8, 32, 1, act=F.silu)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.Adam(
        [{"params": weights, "weight_decay": 1e-4}, {"params": biases, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.2)
    running = []
    for step in range(200):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        _train_step(ctx, model, opt, loss, clip=5.0)
        running.append(float(loss))
        if step % 10 == 9:
            sched.step(sum(running[-10:]) / 10)
    ls = ctx.losses
    ctx.check("trained: loss under 0.6x its start", _median(ls[-10:]) < 0.6 * _median(ls[:10]))
    ctx.check("finite", all(math.isfinite(v) for v in ls))
