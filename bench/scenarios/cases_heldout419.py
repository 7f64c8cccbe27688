"""Held-out set 419 (``h419_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a Tuvan throat-song register classifier whose temperature is typed 0.01 for 1.0 (softmax
saturates), a lacrosse pocket-depth tanh regressor whose auxiliary penalty weight is read as 5e3
for 5e-3 for one step (Adam's second moment poisoned), a cooper's hoop-drive ReLU regressor on
RMSprop with lr typed 3e-2 for 3e-4 (ReLUs die), an ice-fishing tip-up 12-layer tanh MLP with
init std typed 3/sqrt(fan_in) (gradients grow through depth), a geyser vent-share net whose share
module divides by the row sum without a clamp (0/0), a pearl-diving breath-hold regressor fed
one shard in seconds for minutes (a corrupted batch), a rickshaw fare-accept BCE net whose
resumed step sums the loss (a gradient burst), an organ-bellows two-group classifier with the
trunk lr typed 1e-9 (frozen trunk), a salt-marsh creek tanh regressor with decoupled decay sign
flipped (slow climb) and a yodel-register classifier on nll_loss of raw logits (logits grow).

Controls: a kelp-canopy evidential Dirichlet classifier (KL annealed over 100 steps, RAdam), a
taiko-drum strike fp16 Huber regressor (GradScaler, AdamW under OneCycleLR, accumulation,
clipping) and a sheep-shearing fleece-grade Conv1d classifier (SGD Nesterov, warm-up,
ReduceLROnPlateau, label smoothing, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import digit_batches, digits, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _gnorm(model: nn.Module) -> float:
    g = [p.grad.detach().reshape(-1) for p in model.parameters() if p.grad is not None]
    return float(torch.cat(g).norm()) if g else 0.0


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _regression(gen: torch.Generator, dim: int = 8, batch: int = 64, noise: float = 0.05):
    """A fixed smooth teacher y = sin(x W) v + noise, endless batches."""
    w = torch.randn(dim, 16, generator=gen) / math.sqrt(dim)
    v = torch.randn(16, 1, generator=gen) / 4
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = torch.sin(x @ w) @ v + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


class ReluNet(nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 64, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


class SmoothNet(nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 64, out: int = 1, act=nn.Tanh) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


# -- faults ----------------------------------------------------------------------------------------


class ThroatSongClassifier(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(64, 10)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act1(self.fc1(x))) / self.temperature


@scenario(
    "tuvan_khoomei_register_temperature_relu_classifier",
    "Adam",
    "softmax_collapse",
    where="head",
    heldout=True,
    onset=60,
    note="Tuvan khoomei register classifier (ReLU MLP on digit-shaped spectrogram patches); the "
    "config reloaded at step 60 has the temperature typed 0.01 for 1.0, logits are divided by it and the softmax "
    "saturates: target probabilities round to exactly 1.0.",
)
def h419_tuvan_khoomei_temperature(ctx) -> None:
    gen = seeded(4191)
    model = ThroatSongClassifier(temperature=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    saturated, saturated_t1 = [], []
    steps = 200
    for step in range(steps):
        if step == 60:
            model.temperature = 0.01  # the reloaded config's temperature, typed 0.01 for 1.0
        x, y = next(batches)
        logits = model(x)
        ctx.targets(y)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.step(loss)
        if step >= steps - 30:
            with torch.no_grad():
                p = logits.softmax(-1).gather(1, y[:, None])
                p1 = (logits * model.temperature).softmax(-1).gather(1, y[:, None])
                saturated.append(float((p == 1.0).float().mean()))
                saturated_t1.append(float((p1 == 1.0).float().mean()))
    ctx.check("over half the rows' target probability exactly 1.0", _mean(saturated) > 0.5)
    ctx.check("under 5% exactly 1.0 at temperature 1.0", _mean(saturated_t1) < 0.05)


@scenario(
    "lacrosse_crosse_pocket_depth_tanh_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    heldout=True,
    onset=100,
    note="Lacrosse crosse pocket-depth tanh regressor; at step 100 a sweep config reloads the "
    "auxiliary output-magnitude penalty with its weight read as 5e3 for 5e-3 for that one step; "
    "the giant gradient fills Adam's second moment and the updates stall afterwards.",
)
def h419_lacrosse_pocket_penalty(ctx) -> None:
    gen = seeded(4192)
    model = SmoothNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    grads, updates = [], []
    for step in range(250):
        x, y = next(batches)
        pred = model(x)
        weight = 5e3 if step == 100 else 5e-3
        mse = F.mse_loss(pred, y)
        loss = mse + weight * (pred**2).mean()
        before = _flat(model)
        opt.zero_grad()
        loss.backward()
        grads.append(_gnorm(model))
        opt.step()
        updates.append(float((_flat(model) - before).abs().median()))
        ctx.step(loss)
    pre_g = _median(grads[50:100])
    ctx.check("gradient at step 100 over 1000x the median before", grads[100] > 1000 * pre_g)
    ctx.check(
        "median update over steps 120-220 under a tenth of steps 50-99",
        _median(updates[120:220]) < 0.1 * _median(updates[50:100]),
    )
    ctx.check("gradients afterwards not smaller", _median(grads[120:220]) > 0.5 * pre_g)
    ctx.check("finite", _finite(ctx.losses))


def _dead_fraction(model: ReluNet, x: torch.Tensor) -> float:
    with torch.no_grad():
        h = model.act2(model.fc2(model.act1(model.fc1(x))))
    return float((h.max(0).values <= 0).float().mean())


def _cooper_run(lr: float, ctx=None) -> tuple[list[float], list[float]]:
    gen = seeded(4193)
    model = ReluNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    if ctx is not None:
        ctx.attach(model, opt)
    batches = _regression(gen)
    probe = torch.randn(256, 8, generator=gen)
    dead, losses = [], []
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if ctx is not None:
            ctx.step(loss)
        losses.append(float(loss.detach()))
        dead.append(_dead_fraction(model, probe))
    return dead, losses


@scenario(
    "cooper_hoop_drive_force_relu_regressor",
    "RMSprop",
    "loss_of_plasticity",
    where="act2",
    heldout=True,
    note="Cooper's hoop-drive force ReLU regressor; RMSprop's lr is typed 3e-2 for 3e-4, the "
    "first large steps push act2's units negative for every input and they never recover.",
)
def h419_cooper_hoop_dead_relu(ctx) -> None:
    dead, _ = _cooper_run(3e-2, ctx)
    dead_ok, _ = _cooper_run(3e-4)
    ctx.check("over 45% of act2's units dead over the last 50 steps", _mean(dead[-50:]) > 0.45)
    ctx.check("under 20% dead at 3e-4", _mean(dead_ok[-50:]) < 0.2)


class DeepTanh(nn.Module):
    def __init__(self, depth: int = 12, width: int = 32, std_scale: float = 1.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8 if i == 0 else width, width) for i in range(depth))
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=std_scale / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs = []
        for layer in self.layers:
            x = layer(x)
            x.retain_grad()
            outs.append(x)
            x = torch.tanh(x)
        return self.head(x), outs


def _ice_run(scale: float, ctx=None) -> list[float]:
    gen = seeded(4194)
    model = DeepTanh(std_scale=scale)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    if ctx is not None:
        ctx.attach(model, opt)
    batches = _regression(gen)
    ratios = []
    for _ in range(120):
        x, y = next(batches)
        pred, outs = model(x)
        loss = F.mse_loss(pred, y)
        opt.zero_grad()
        loss.backward()
        ratios.append(float(outs[0].grad.norm() / outs[-1].grad.norm().clamp_min(1e-20)))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ctx is not None:
            ctx.step(loss)
    return ratios


@scenario(
    "ice_fishing_tipup_flag_deep_tanh_mlp",
    "SGD momentum",
    "exploding_gradients",
    where="layers.0",
    heldout=True,
    note="Ice-fishing tip-up flag-time 12-layer tanh MLP; the init helper is typed std = "
    "3.0 / sqrt(fan_in) for 1.0 / sqrt(fan_in), the net is in the chaotic regime and gradients "
    "grow through depth towards layers.0 (clipped at 1.0, SGD momentum).",
)
def h419_ice_fishing_init_gain(ctx) -> None:
    bad = _ice_run(3.0, ctx)
    good = _ice_run(1.0)
    ctx.check("dL/d(layers.0 out) over 10x dL/d(layers.11 out) at the start", bad[0] > 10)
    ctx.check("median ratio over 10x through the run", _median(bad) > 10)
    ctx.check("under 5x at std 1/sqrt(fan_in)", _median(good) < 5)


class VentShare(nn.Module):
    """Each vent's flow as a share of the total (the clamp_min on the total was dropped)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.sum(-1, keepdim=True)


class GeyserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.share = VentShare()
        self.fc1 = nn.Linear(8, 32)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act1(self.fc1(self.share(x))))


@scenario(
    "geyser_vent_flow_share_silu_regressor",
    "NAdam",
    "nonfinite",
    where="share",
    diverges=90,
    heldout=True,
    onset=90,
    note="Geyser eruption-interval regressor on per-vent flow shares; the share module divides "
    "by the row sum after its clamp_min was dropped, and the shard at step 90 comes from a day "
    "the loggers were down (an all-zero row): 0/0 gives NaN and the loss is NaN at step 90.",
)
def h419_geyser_vent_share_nan(ctx) -> None:
    gen = seeded(4195)
    model = GeyserNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    w = torch.randn(8, 1, generator=gen)
    nan_at = None
    share_nan = False
    for step in range(150):
        x = torch.rand(64, 8, generator=gen) + 0.1
        y = (x / x.sum(-1, keepdim=True)) @ w
        if step == 90:
            x[7] = 0.0
        share_nan = share_nan or bool(torch.isnan(model.share(x)).any())
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.step(loss)
        if not math.isfinite(float(loss)):
            nan_at = step
            break
    ctx.check("the share module produced NaN", share_nan)
    ctx.check("loss NaN at step 90", nan_at == 90)
    ctx.check("finite before step 90", _finite(ctx.losses[:90]))


@scenario(
    "pearl_diving_breath_hold_silu_regressor",
    "SGD Nesterov",
    "data_outlier",
    heldout=True,
    onset=120,
    note="Pearl-diving breath-hold regressor (SiLU MLP); one dive station's shard at step 120 "
    "logs breath-hold in seconds for minutes (targets x60); clipped at 1.0, the run recovers.",
)
def h419_pearl_diving_seconds_shard(ctx) -> None:
    gen = seeded(4196)
    model = SmoothNet(act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _regression(gen)
    grads = []
    for step in range(250):
        x, y = next(batches)
        if step == 120:
            y = y * 60.0
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        grads.append(_gnorm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
    pre = _median(ctx.losses[100:120])
    ctx.check("loss at 120 over 50x the median before", ctx.losses[120] > 50 * pre)
    ctx.check(
        "gradient at 120 over 20x the median before", grads[120] > 20 * _median(grads[100:120])
    )
    ctx.check("recovers: last 20 under 2x before", _mean(ctx.losses[-20:]) < 2 * pre)


@scenario(
    "rickshaw_fare_accept_relu_bce_net",
    "SGD",
    "gradient_spike",
    heldout=True,
    onset=140,
    note="Rickshaw fare-acceptance ReLU BCE net; the first step after a resume at 140 builds "
    "its loss with reduction='sum' (the resume path's default), the gradient bursts 64x on a "
    "clean batch while the logged (mean) loss is ordinary; clipped, it recovers.",
)
def h419_rickshaw_resume_sum(ctx) -> None:
    gen = seeded(4197)
    model = ReluNet(dim=10)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)
    ctx.attach(model, opt)
    w = torch.randn(10, 1, generator=gen)
    grads = []
    for step in range(250):
        x = torch.randn(64, 10, generator=gen)
        y = ((x @ w + 0.3 * torch.randn(64, 1, generator=gen)) > 0).float()
        logits = model(x)
        reduction = "sum" if step == 140 else "mean"
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction=reduction)
        opt.zero_grad()
        loss.backward()
        grads.append(_gnorm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(F.binary_cross_entropy_with_logits(logits.detach(), y))
    pre = _median(ctx.losses[120:140])
    ctx.check(
        "gradient at 140 over 30x the median before", grads[140] > 30 * _median(grads[120:140])
    )
    ctx.check("logged loss at 140 ordinary (under 2x)", ctx.losses[140] < 2 * pre)
    ctx.check("recovers", _mean(ctx.losses[-20:]) < 1.5 * pre)


class BellowsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act1(self.fc1(x)))


@scenario(
    "organ_bellows_wind_pressure_two_group_relu_classifier",
    "Adagrad",
    "update_ratio_out_of_range",
    where="fc1",
    heldout=True,
    note="Pipe-organ bellows wind-pressure grade classifier with a trunk and a head param "
    "group; the trunk group's lr is typed 1e-9 for 1e-2, fc1 gets gradients but does not move.",
)
def h419_organ_bellows_frozen_trunk(ctx) -> None:
    gen = seeded(4198)
    model = BellowsNet()
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    g1 = []
    for _ in range(200):
        x, y = next(batches)
        logits = model(x)
        ctx.targets(y)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        g1.append(float(model.fc1.weight.grad.norm()))
        opt.step()
        ctx.step(loss)
    moved1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    movedh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ctx.check("fc1 moves under 1e-5 of its norm", moved1 < 1e-5)
    ctx.check("fc1 receives gradients", _median(g1) > 1e-4)
    ctx.check("head moves over 5%", movedh > 0.05)


@scenario(
    "saltmarsh_creek_sediment_tanh_regressor",
    "Adamax",
    "loss_divergence",
    heldout=True,
    note="Salt-marsh creek sediment-flux tanh regressor with hand-written decoupled weight "
    "decay whose sign is flipped (p *= 1 + lr*wd for 1 - lr*wd); weights grow and the loss "
    "climbs slowly with no jump.",
)
def h419_saltmarsh_decay_sign(ctx) -> None:
    gen = seeded(4199)
    model = SmoothNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    norm0 = float(_flat(model).norm())
    for _ in range(300):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 2e-3 * 5.0)
        ctx.step(loss)
    L = ctx.losses
    means = [_mean(L[i : i + 10]) for i in range(0, len(L) - 9, 10)]
    low = min(means)
    ctx.check("loss climbs to over 2x its lowest 10-step mean", means[-1] > 2 * low)
    ctx.check(
        "no 10-step mean over 2.5x the one before",
        all(b < 2.5 * a for a, b in zip(means, means[1:], strict=False)),
    )
    ctx.check("weight norm over 2x", float(_flat(model).norm()) > 2 * norm0)
    ctx.check("finite", _finite(L))


class YodelNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act1 = nn.GELU()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act1(self.fc1(x)))


@scenario(
    "yodel_register_break_gelu_classifier",
    "AdamW",
    "output_logit_divergence",
    where="head",
    heldout=True,
    note="Yodel register-break classifier (GELU MLP); a refactor dropped the log_softmax and "
    "F.nll_loss is applied to the raw head, which it lowers without bound: the logits grow.",
)
def h419_yodel_nll_raw_logits(ctx) -> None:
    gen = seeded(4200)
    model = YodelNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    peaks = []
    for _ in range(200):
        x, y = next(batches)
        logits = model(x)
        ctx.targets(y)
        loss = F.nll_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.step(loss)
        peaks.append(float(logits.detach().abs().max()))
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * peaks[0])
    ctx.check("still growing", _mean(peaks[-10:]) > _mean(peaks[-60:-50]) * 1.2)
    ctx.check("the 'loss' below -10", ctx.losses[-1] < -10)


# -- controls --------------------------------------------------------------------------------------


class EvidentialNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.head(self.act1(self.fc1(x))))  # evidence


def _dirichlet_kl_to_uniform(alpha: torch.Tensor) -> torch.Tensor:
    k = alpha.shape[-1]
    s = alpha.sum(-1, keepdim=True)
    return (
        torch.lgamma(s).squeeze(-1)
        - math.lgamma(k)
        - torch.lgamma(alpha).sum(-1)
        + ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(s))).sum(-1)
    )


@scenario(
    "kelp_canopy_cover_evidential_dirichlet_classifier",
    "RAdam",
    "healthy",
    heldout=True,
    note="Kelp-canopy cover-class evidential classifier: softplus evidence, Dirichlet "
    "concentrations alpha = evidence + 1, the expected-MSE evidential loss plus the KL to the "
    "uniform Dirichlet of the misleading evidence, annealed over 100 steps; RAdam (control).",
)
def h419_kelp_evidential_control(ctx) -> None:
    gen = seeded(4201)
    model = EvidentialNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-2)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    fit_terms = []
    for step in range(200):
        x, y = next(batches)
        alpha = model(x) + 1
        ctx.targets(y)
        s = alpha.sum(-1, keepdim=True)
        p = alpha / s
        onehot = F.one_hot(y, 10).float()
        mse = ((onehot - p) ** 2 + p * (1 - p) / (s + 1)).sum(-1)
        alpha_tilde = onehot + (1 - onehot) * alpha
        anneal = min(1.0, step / 100)
        loss = (mse + anneal * _dirichlet_kl_to_uniform(alpha_tilde)).mean()
        fit_terms.append(float(mse.detach().mean()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.step(loss)
    xa, ya = digits()
    with torch.no_grad():
        acc = float((model(xa[:500]).argmax(-1) == ya[:500]).float().mean())
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("the expected-MSE term fell", _fell(fit_terms, ratio=0.8))
    ctx.check("accuracy over 0.8", acc > 0.8)


@scenario(
    "taiko_drum_strike_force_fp16_huber_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="Taiko drum strike-force SiLU Huber regressor under fp16 autocast with a GradScaler, "
    "AdamW with a no-decay bias group under OneCycleLR, accumulation over 2, clipping (control).",
)
def h419_taiko_fp16_control(ctx) -> None:
    gen = seeded(4202)
    model = SmoothNet(act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, accum = 150, 2
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen, noise=0.1)
    for _ in range(steps):
        opt.zero_grad()
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            with torch.autocast("cpu", dtype=torch.float16):
                pred = model(x)
            loss = F.huber_loss(pred.float(), y) / accum
            scaler.scale(loss).backward()
            total = total + loss.detach()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.step(total)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))


class FleeceConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(8, 16, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.conv2(self.act1(self.conv1(x.reshape(-1, 8, 8)))))
        return self.head(h.mean(-1))


@scenario(
    "sheep_shearing_fleece_grade_relu_conv1d_classifier",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="Sheep-shearing fleece-grade ReLU Conv1d classifier; SGD Nesterov with weight decay, a "
    "20-step linear warm-up, ReduceLROnPlateau on a held-out batch, label smoothing 0.1, "
    "clipping (control).",
)
def h419_sheep_shearing_control(ctx) -> None:
    gen = seeded(4203)
    model = FleeceConv()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=5)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    xa, ya = digits()
    xv, yv = xa[-256:], ya[-256:]
    for step in range(200):
        if step < 20:
            for g in opt.param_groups:
                g["lr"] = 0.1 * (step + 1) / 20
        x, y = next(batches)
        logits = model(x)
        ctx.targets(y)
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        if step >= 20 and step % 10 == 0:
            with torch.no_grad():
                plateau.step(float(F.cross_entropy(model(xv), yv)))
    with torch.no_grad():
        acc = float((model(xv).argmax(-1) == yv).float().mean())
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("held-out accuracy over 0.7", acc > 0.7)
