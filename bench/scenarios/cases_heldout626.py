"""Held-out set 626 (``h626_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, scenario, seeded


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
    def __init__(self, n_in: int, hidden: int, out: int, act=F.silu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def _gnorm(model: nn.Module) -> float:
    return float(sum(p.grad.norm() ** 2 for p in model.parameters() if p.grad is not None) ** 0.5)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _med(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="cooper_hoop_driving_nll_bug_relu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="F.nll_loss applied to the raw head logits (the log_softmax was dropped in a refactor): "
    "the loss is -logit[target], unbounded below, and the head's logits grow without bound",
)
def h626_cooper_hoop_nll_without_log_softmax(ctx: Context) -> None:
    gen = seeded(6261)
    model = Net3(16, 32, 4, act=F.relu)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    mags = []
    for _ in range(200):
        x, y = next(batches)
        logits = model(x)
        ctx.targets(y)
        loss = F.nll_loss(logits, y)  # bug: should be F.nll_loss(F.log_softmax(logits, -1), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        mags.append(float(logits.detach().abs().max()))
    ctx.check("head logits grew over 20x", mags[-1] > 20 * mags[0])
    ctx.check("head logits still growing at the end", mags[-1] > 1.3 * mags[-50])
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="hurling_sliotar_catch_gelu_classifier",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="the hard-example sampler's refresh fires once at step 120 and emits the 64 valid "
    "samples nearest a class boundary as one batch (nothing corrupted, no gradient bug): the "
    "loss jumps once and the run recovers",
)
def h626_hurling_catch_hard_batch(ctx: Context) -> None:
    gen = seeded(6262)
    model = Net3(16, 48, 4, act=F.gelu)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    ctx.attach(model, opt)
    w = torch.randn(16, 4, generator=gen)
    onset = 120
    for step in range(220):
        x = torch.randn(64, 16, generator=gen)
        if step == onset:  # the hard-example block: the 64 pool rows nearest a class boundary
            pool = torch.randn(4096, 16, generator=gen)
            top = (pool @ w).topk(2, dim=1).values
            x = pool[(top[:, 0] - top[:, 1]).argsort()[:64]]
        y = (x @ w).argmax(1)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    pre = _med(ls[onset - 10 : onset])
    ctx.check("loss at onset over 3x the median before", ls[onset] > 3 * pre)
    ctx.check(
        "recovers to under 1.5x within 30 steps", _med(ls[onset + 20 : onset + 30]) < 1.5 * pre
    )
    ctx.check("loss fell before onset", pre < 0.5 * ls[0])
    ctx.check("finite", _finite(ls))


@scenario(
    family="sea_stack_erosion_undercut_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="config peak lr typed 4.0 for 0.04 on plain SGD with a 500-step linear warm-up: the "
    "run trains while the lr is small, then lr x sharpness passes 2 and the loss blows up",
)
def h626_sea_stack_lr_typo(ctx: Context) -> None:
    gen = seeded(6263)
    model = Net3(8, 32, 1, act=torch.tanh)
    peak = 4.0  # meant 0.04
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 500))
    ctx.attach(model, opt)
    batches = _regression(gen)
    for _ in range(220):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("trained first (loss fell 2x by step 20)", _med(ls[15:25]) < _med(ls[:5]) / 2)
    ctx.check("loss blew up over 100x its best", not _finite(ls) or max(ls) > 100 * min(ls))


@scenario(
    family="bagpipe_chanter_reed_silu_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups; fc2's lr typed 2e-9 for 2e-3, so fc2 never moves while the rest train",
)
def h626_bagpipe_reed_group_lr_typo(ctx: Context) -> None:
    gen = seeded(6264)
    model = Net3(8, 32, 1)
    groups = [
        {"params": model.fc1.parameters(), "lr": 2e-3},
        {"params": model.fc2.parameters(), "lr": 2e-9},  # typo: meant 2e-3
        {"params": model.head.parameters(), "lr": 2e-3},
    ]
    opt = torch.optim.Adamax(groups)
    ctx.attach(model, opt)
    batches = _regression(gen)
    w0 = model.fc2.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    moved = float((model.fc2.weight.detach() - w0).norm() / w0.norm())
    head_moved = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check("fc2 moved under 1e-5 relative", moved < 1e-5)
    ctx.check("head moved over 5% relative", head_moved > 0.05)
    ctx.check("finite", _finite(ctx.losses))


class DeepTanh(nn.Module):
    def __init__(self, n_in: int = 8, width: int = 32, depth: int = 16, gain: float = 3.0):
        super().__init__()
        dims = [n_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.out = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.layers:
            x = torch.tanh(m(x))
        return self.out(x)


@scenario(
    family="avalanche_slab_depth_deep_tanh_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="16-deep tanh MLP initialised with std 3.0/sqrt(fan_in) (gain copied as 3.0 for 1.0): "
    "gradients grow back through depth, layer 0's gradient is over 10x the last layer's",
)
def h626_avalanche_slab_init_gain(ctx: Context) -> None:
    gen = seeded(6265)
    model = DeepTanh(gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen)
    ratios = []
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        ratios.append(
            float(model.layers[0].weight.grad.norm() / model.layers[-1].weight.grad.norm())
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("layer 0's gradient over 10x the last layer's", _med(ratios[:20]) > 10)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="stonemason_chisel_depth_silu_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="one shard logged its depth gauge in micrometres instead of millimetres: the batch at "
    "step 110 has inputs and targets 1000x; clipped Huber, the loss and gradient jump once, recovers",
)
def h626_stonemason_chisel_micrometre_shard(ctx: Context) -> None:
    gen = seeded(6266)
    model = Net3(8, 32, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 110
    for step in range(200):
        x, y = next(batches)
        if step == onset:
            x, y = x * 1000.0, y * 1000.0
        loss = F.huber_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at onset over 20x", ls[onset] > 20 * _med(ls[onset - 10 : onset]))
    ctx.check("gradient at onset over 10x", gs[onset] > 10 * _med(gs[onset - 10 : onset]))
    ctx.check("recovers", _med(ls[-10:]) < 3 * _med(ls[onset - 10 : onset]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="orienteering_control_punch_relu_bce_classifier",
    optimizer="Adagrad",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="4 micro-batch accumulation; at step 90 (the epoch-boundary branch) the loss is "
    "multiplied by accum*batch instead of divided by accum: one gradient 30x+, clipped, the "
    "logged loss is ordinary",
)
def h626_orienteering_punch_accum_scale(ctx: Context) -> None:
    gen = seeded(6267)
    model = Net3(16, 32, 1, act=F.relu)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    w = torch.randn(16, generator=gen)
    onset, accum = 90, 4
    for step in range(180):
        total = 0.0
        for _ in range(accum):
            x = torch.randn(32, 16, generator=gen)
            y = (x @ w > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
            scale = accum * 32 if step == onset else 1.0 / accum  # bug in the boundary branch
            (loss * scale).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(_gnorm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at onset over 30x", gs[onset] > 30 * _med(gs[onset - 10 : onset]))
    ctx.check("logged loss at onset ordinary", ls[onset] < 2 * _med(ls[onset - 10 : onset]))
    ctx.check("finite", _finite(ls))


class LogFeature(nn.Module):
    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return torch.log(v)  # missing .clamp(min=1e-3)


class GaussNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hum_log = LogFeature()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 32)
        self.mu = nn.Linear(32, 1)
        self.log_var = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor, humidity: torch.Tensor):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        h = h + self.hum_log(humidity)[:, None] * 0.1
        return self.mu(h), self.log_var(h)


@scenario(
    family="hailstone_growth_gaussian_nll_silu_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("hum_log",),
    diverges=80,
    onset=80,
    heldout=True,
    note="in-model log(relative humidity) feature without its clamp; at step 80 a dry-probe "
    "reading of exactly 0 gives log 0 = -inf, the Gaussian NLL is NaN",
)
def h626_hailstone_log_humidity_unclamped(ctx: Context) -> None:
    gen = seeded(6268)
    model = GaussNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 80
    for step in range(120):
        x, y = next(batches)
        hum = 0.3 + 0.6 * torch.rand(64, generator=gen)
        if step == onset:
            hum[5] = 0.0
        mu, log_var = model(x, hum)
        loss = F.gaussian_nll_loss(mu, y, log_var.exp())
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("loss non-finite at step 80", len(ls) == onset + 1 and not math.isfinite(ls[-1]))
    ctx.check("finite before", _finite(ls[:onset]))


class TempNet(Net3):
    def __init__(self, temperature: float) -> None:
        super().__init__(16, 48, 4, act=F.gelu)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / self.temperature


@scenario(
    family="lacrosse_cradle_grip_temperature_gelu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="softmax temperature 0.7 divided by 1000 by a config loader that assumed milliseconds: "
    "logits are divided by 0.0007 and over 40% of rows' target probability rounds to exactly 1.0",
)
def h626_lacrosse_cradle_temperature_units(ctx: Context) -> None:
    gen = seeded(6269)
    model = TempNet(0.7 / 1000.0)  # bug: temperature given in s, converted as if ms
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    sat = []
    for _ in range(150):
        x, y = next(batches)
        logits = model(x)
        ctx.targets(y)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        p = logits.detach().softmax(-1).gather(1, y[:, None])
        sat.append(float((p == 1.0).float().mean()))
    ctx.check("over 40% of rows' target probability exactly 1.0", _med(sat[-20:]) > 0.4)


@scenario(
    family="farrier_shoe_fit_relu_classifier",
    optimizer="SGD Nesterov",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1's bias initialised to -3.0 by a helper copied from a gating layer: over 80% of "
    "fc1's ReLU units never fire and the loss stalls well above a healthy run's",
)
def h626_farrier_fit_dead_bias_init(ctx: Context) -> None:
    gen = seeded(6270)
    model = Net3(16, 64, 4, act=F.relu)
    nn.init.constant_(model.fc1.bias, -3.0)  # bug: gate init copied onto a ReLU layer
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _classes(gen)
    dead = []
    for _ in range(200):
        x, y = next(batches)
        h = model.fc1(x)
        dead.append(float(((h > 0).float().mean(0) == 0).float().mean()))
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 80% of fc1 units dead at the end", dead[-1] > 0.8)
    ctx.check("loss stalls above 0.7", _med(ctx.losses[-20:]) > 0.7)
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="bodhran_tipper_roll_cyclic_relu_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="triangular CyclicLR (0.005 to 0.3, 25 steps up, 25 down): the loss rises and falls "
    "with each cycle, which looks alarming, but the run ends far below its start and is healthy",
)
def h626_bodhran_roll_cyclic_lr(ctx: Context) -> None:
    gen = seeded(6271)
    model = Net3(16, 48, 4, act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.005, max_lr=0.3, step_size_up=25, mode="triangular"
    )
    ctx.attach(model, opt)
    batches = _classes(gen)
    for _ in range(250):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ls = ctx.losses
    peaks = [max(ls[i + 15 : i + 35]) for i in range(50, 250, 50)]
    troughs = [min(ls[i + 40 : i + 55]) for i in range(50, 200, 50)]
    ctx.check(
        "loss rises with each cycle (peak over 1.5x the trough before)",
        sum(p > 1.5 * t for p, t in zip(peaks[1:], troughs, strict=False)) >= 2,
    )
    ctx.check("loss fell over 3x", _med(ls[-10:]) < _med(ls[:10]) / 3)
    ctx.check("finite", _finite(ls))


@scenario(
    family="quarry_blast_fragment_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="AdamW with decay/no-decay param groups, OneCycleLR, label smoothing 0.1, clipping, "
    "fp16 autocast with a GradScaler, 5% noisy labels",
)
def h626_quarry_fragment_onecycle_amp(ctx: Context) -> None:
    gen = seeded(6272)
    model = Net3(16, 48, 4, act=F.gelu)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _classes(gen)
    for _ in range(200):
        x, y = next(batches)
        flip = torch.rand(len(y), generator=gen) < 0.05
        y = torch.where(flip, torch.randint(0, 4, y.shape, generator=gen), y)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(_gnorm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ls = ctx.losses
    ctx.check("loss fell over 2x", _med(ls[-10:]) < _med(ls[:10]) / 2)
    ctx.check("finite", _finite(ls))


@scenario(
    family="ballooning_spider_drift_silu_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Adam, 2-micro-batch accumulation, ReduceLROnPlateau on a running loss, Huber loss, "
    "small noisy batches",
)
def h626_ballooning_drift_plateau_accum(ctx: Context) -> None:
    gen = seeded(6273)
    model = Net3(8, 32, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=16, noise=0.1)
    for _ in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
        sched.step(total)
    ls = ctx.losses
    ctx.check("loss fell over 2x", _med(ls[-10:]) < _med(ls[:10]) / 2)
    ctx.check("finite", _finite(ls))
