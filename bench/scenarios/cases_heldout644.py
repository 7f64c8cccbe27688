"""Held-out set 644 (``h644_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data or scikit-learn's digits, and one Hugging Face GPT-2 from a tiny config."""

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
    hf_gpt2,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 5, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _sequences(gen: torch.Generator, t: int = 20, n_in: int = 4, batch: int = 32):
    """Endless (x, y): y is a decayed sum of the first reading over the sequence."""
    decay = 0.8 ** torch.arange(t - 1, -1, -1, dtype=torch.float32)
    while True:
        x = torch.randn(batch, t, n_in, generator=gen)
        y = (x[:, :, 0] * decay).sum(1, keepdim=True) / 2.0
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _gnorm(model: nn.Module) -> float:
    return float(sum(p.grad.norm() ** 2 for p in model.parameters() if p.grad is not None) ** 0.5)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _sharpness(model: nn.Module, loss: torch.Tensor, iters: int = 30) -> float:
    """Top Hessian eigenvalue of ``loss`` by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u**2).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


class TanhNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class SiluNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


class ReluNet(nn.Module):
    def __init__(self, n_in: int = 64, hidden: int = 64, out: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(self.features(x))))


class ElmanRegressor(nn.Module):
    def __init__(self, n_in: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.RNN(n_in, hidden, batch_first=True, nonlinearity="tanh")
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.rnn(x)
        return self.head(out[:, -1]), out


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="gas_mantle_incandescence_elman_rnn_regressor",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="the recurrent matrix is initialised orthogonal with gain 2.5 (the gain meant for the "
    "input matrix pasted onto weight_hh): the gradient grows back through time, the first "
    "hidden state's gradient is many times the last's; clipping at 1.0 keeps the run finite",
)
def h644_gas_mantle_rnn_recurrent_gain(ctx: Context) -> None:
    gen = seeded(6441)
    model = ElmanRegressor(4, 32)
    nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=2.5)  # bug: gain meant for weight_ih
    nn.init.normal_(model.rnn.weight_ih_l0, std=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    batches = _sequences(gen)
    ratios = []
    for _ in range(120):
        x, y = next(batches)
        x.requires_grad_(True)
        pred, _ = model(x)
        loss = F.mse_loss(pred, y)
        loss.backward()
        g = x.grad.norm(dim=(0, 2))  # gradient reaching each time step
        ratios.append(float(g[0] / g[-1].clamp_min(1e-12)))
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first time step's gradient over 50x the last's at step 0", ratios[0] > 50)
    ctx.check("still over 50x at the end", _median(ratios[-10:]) > 50)
    ctx.check("loss stays above 0.3 (a sound init reaches 0.05)", _median(ctx.losses[-10:]) > 0.3)
    ctx.check(
        "pre-clip gradient over 1.0 (clipping active) on most steps",
        sum(g > 1.0 for g in ctx.grad_norms) > len(ctx.grad_norms) // 2,
    )
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="heliostat_mirror_tracking_elevation_huber_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="one bad shard at step 100: a field logger wrote the sun elevation in arc-seconds instead "
    "of degrees for one file (x3600 on one column); Huber loss, clipping at 1.0, "
    "ReduceLROnPlateau; the run spikes at that batch and recovers",
)
def h644_heliostat_arcsecond_shard(ctx: Context) -> None:
    gen = seeded(6442)
    model = SiluNet(8, 32)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 100
    for step in range(200):
        x, y = next(batches)
        if step == onset:
            x = x.clone()
            x[:, 2] = x[:, 2] * 3600.0  # arc-seconds
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at onset over 20x the 10 before", ls[onset] > 20 * _median(ls[onset - 10 : onset])
    )
    ctx.check(
        "gradient at onset over 10x the 10 before", gs[onset] > 10 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "recovers: last 20 under 2x pre-onset",
        _median(ls[-20:]) < 2 * _median(ls[onset - 20 : onset]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="gilding_bole_burnish_sheen_group_typo_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups; the middle layer's group lr was typed 5e-9 for 5e-2 (an exponent "
    "slip in a per-layer config): fc2 never moves while fc1 and the head train",
)
def h644_gilding_bole_group_lr_typo(ctx: Context) -> None:
    gen = seeded(6443)
    model = TanhNet(8, 32)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 5e-2},
            {"params": model.fc2.parameters(), "lr": 5e-9},  # typo: 5e-2
            {"params": model.head.parameters(), "lr": 5e-2},
        ]
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)

    def moved(name: str) -> float:
        p = dict(model.named_parameters())[name].detach()
        return float((p - w0[name]).norm() / w0[name].norm())

    ctx.check("fc2 weight moved under 1e-6 relative", moved("fc2.weight") < 1e-6)
    ctx.check("fc1 weight moved over 1e-2 relative", moved("fc1.weight") > 1e-2)
    ctx.check("head weight moved over 1e-2 relative", moved("head.weight") > 1e-2)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < _median(ctx.losses[:10]))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="bookbinder_sewing_frame_thread_tension_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=80,
    heldout=True,
    note="a StepLR meant to decay the rate (gamma=0.1 at step 80) was written gamma=10: the rate "
    "jumps from 0.05 to 0.5 at step 80, past 2/sharpness, and the loss blows up",
)
def h644_bookbinder_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(6444)
    model = TanhNet(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=10.0)  # typo: 0.1
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 80
    sharp = 0.0
    for step in range(160):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        if step == onset:
            sharp = _sharpness(model, loss)
            lr_now = opt.param_groups[0]["lr"]
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("lr x sharpness over 2 after the jump", lr_now * sharp > 2)
    ctx.check("0.05 x sharpness under 2 before it", 0.05 * sharp < 2)
    ctx.check("loss fell before onset", _median(ls[onset - 10 : onset]) < 0.5 * ls[0])
    ctx.check(
        "loss after onset over 100x the pre-onset level",
        max((v if math.isfinite(v) else math.inf) for v in ls[onset:])
        > 100 * _median(ls[onset - 10 : onset]),
    )


@scenario(
    family="netmaker_mesh_gauge_knot_slip_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("scale",),
    diverges=82,
    heldout=True,
    note="Gaussian NLL with the scale head passed through ReLU instead of softplus + floor (the "
    "clamp was dropped in a refactor): once a sample's scale reaches exactly 0, log(0) and "
    "the division give a non-finite loss",
)
def h644_netmaker_nll_missing_floor(ctx: Context) -> None:
    gen = seeded(6445)

    class MeshNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.fc2 = nn.Linear(32, 32)
            self.mean = nn.Linear(32, 1)
            self.scale = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = F.silu(self.fc2(F.silu(self.fc1(x))))
            return self.mean(h), F.relu(self.scale(h))  # bug: no softplus, no floor

    model = MeshNet()
    nn.init.constant_(model.scale.bias, 0.3)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _regression(gen)
    zero_at_nan = False
    for _ in range(250):
        x, y = next(batches)
        mu, sigma = model(x)
        loss = (torch.log(sigma) + (y - mu) ** 2 / (2 * sigma**2)).mean()
        if not math.isfinite(float(loss.detach())):
            zero_at_nan = bool((sigma == 0).any())
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss non-finite at the last step", not math.isfinite(ls[-1]))
    ctx.check("a scale exactly 0 on that batch", zero_at_nan)
    ctx.check("finite before it", _finite(ls[:-1]) and len(ls) > 20)
    ctx.check("loss fell before it", _median(ls[-11:-1]) < ls[0])


@scenario(
    family="ice_fog_crystal_growth_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=70,
    onset=70,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 70 a new sensor batch reports humidity in ppm "
    "instead of a fraction (x1e6, an ingest unit flag), fc1's fp16 output overflows to inf and "
    "the loss is non-finite while the same batch is finite in float32",
)
def h644_ice_fog_fp16_ppm(ctx: Context) -> None:
    gen = seeded(6446)
    model = SiluNet(8, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", o.detach()))
    onset = 70
    for step in range(120):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 6] = (x[:, 6].abs() * 0.2 + 0.5) * 1e6  # ppm
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check("fc1 fp16 output non-finite at onset", not bool(seen["fc1"].isfinite().all()))
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model.fc1(x).isfinite().all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
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


@scenario(
    family="gong_chau_hammer_tone_label_smooth_relu_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="a static loss scale of 256 (left over from an fp16 experiment) is applied on every "
    "backward and divided out before the step; on the first step after a checkpoint resume "
    "(step 110) the unscale is skipped, so that step's gradient is 256x; label smoothing 0.1, "
    "clipping at 2.0 bounds the update and the run carries on",
)
def h644_gong_chau_resume_unscale_skipped(ctx: Context) -> None:
    gen = seeded(6447)
    model = ReluNet(16, 64, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _classes(gen)
    onset, scale = 110, 256.0
    for step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        (loss * scale).backward()
        if step != onset:  # bug: the resume path skips the unscale
            for p in model.parameters():
                p.grad.div_(scale)
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 2.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 50x the 10 before", gs[onset] > 50 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "logged loss at onset ordinary (under 2x the 10 before)",
        ls[onset] < 2 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell", _median(ls[-10:]) < 0.7 * ls[0])
    ctx.check("finite", _finite(ls))


@scenario(
    family="bell_wheel_stay_slider_dead_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1's weights initialised uniform(-0.2, 0.02) for uniform(-0.2, 0.2) (a typo in the "
    "init range) on non-negative pixel inputs: most fc1 ReLUs never fire, get no gradient and "
    "stay dead; the loss stalls far above a healthy run's",
)
def h644_bell_wheel_init_range_typo(ctx: Context) -> None:
    gen = seeded(6448)
    model = ReluNet(64, 64, 10)
    nn.init.uniform_(model.fc1.weight, -0.2, 0.02)  # typo: 0.2
    nn.init.zeros_(model.fc1.bias)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    dead = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        with torch.no_grad():
            dead.append(dead_fraction(model.features(x)))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("over 60% of fc1 units dead at the start", dead[0] > 0.6)
    ctx.check("over 60% of fc1 units still dead at the end", _median(dead[-10:]) > 0.6)
    ctx.check("loss stalls: last 10 over 0.8 nats", _median(ls[-10:]) > 0.8)
    ctx.check("finite", _finite(ls))


@scenario(
    family="velocipede_crank_cadence_decay_sign_tanh_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a hand-written decoupled weight decay multiplies the weights by (1 + lr * wd) instead "
    "of (1 - lr * wd) after each step (a sign lost in a helper): the weights grow slowly, tanh "
    "units saturate and the loss climbs after a first fall",
)
def h644_velocipede_decay_sign(ctx: Context) -> None:
    gen = seeded(6449)
    model = TanhNet(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen)
    lr, wd = 0.02, 1.0
    w0 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("weight"):
                    p.mul_(1 + lr * wd)  # bug: 1 - lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    w1 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    low = min(range(len(ls)), key=lambda i: _median(ls[max(0, i - 5) : i + 6]))
    ctx.check("weight norm grew over 3x", w1 > 3 * w0)
    ctx.check(
        "loss of the last 20 over 3x its running minimum",
        _median(ls[-20:]) > 3 * _median(ls[max(0, low - 5) : low + 6]),
    )
    ctx.check("minimum is not at the end (fell first)", low < len(ls) - 40)
    ctx.check("finite", _finite(ls))


@scenario(
    family="carillon_clavier_baton_strike_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the softmax temperature was read from a config in per-mille (2 for 0.002 meant as a "
    "multiplier) and the logits are divided by 0.002 instead of 2.0: the softmax saturates, the "
    "target probability rounds to exactly 1.0 on most rows and those rows give no gradient",
)
def h644_carillon_temperature_units(ctx: Context) -> None:
    gen = seeded(64410)
    model = ReluNet(16, 64, 5)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    temperature = 0.002  # bug: 2.0
    coll = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        coll.append(collapsed_fraction(logits.detach(), y))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 50% of rows collapsed (p_target == 1.0) at the end", _median(coll[-10:]) > 0.5)
    ctx.check("under 50% collapsed at the start", coll[0] < 0.5)
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls ---------------------------------------------------------------------------------


@scenario(
    family="hoarfrost_feather_length_accum16_silu_regressor",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="gradient accumulation over 16 micro-batches of 8 with the rate scaled 16x to 0.32 "
    "(linear scaling for the 128-row effective batch): a learning rate that looks reckless "
    "and a per-micro-batch loss that jumps around, but each micro-loss is divided by 16, so "
    "the step is an ordinary mean-gradient step; healthy",
)
def h644_hoarfrost_accum16_large_rate(ctx: Context) -> None:
    gen = seeded(64411)
    model = SiluNet(8, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.02 * 16)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=8, noise=0.1)
    accum = 16
    for _ in range(80):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            micro = F.mse_loss(model(x), y)
            (micro / accum).backward()
            total += float(micro.detach())
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(torch.tensor(total / accum))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 50%", _median(ls[-10:]) < 0.5 * _median(ls[:5]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="fletcher_crest_band_pattern_hf_gpt2_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="a Hugging Face GPT-2 from a tiny config (tied input/output embeddings) on byte text, "
    "AdamW with no decay on biases and LayerNorms (two param groups), linear warm-up then "
    "cosine decay, clipping at 1.0; healthy",
)
def h644_fletcher_hf_gpt2_warmup_cosine(ctx: Context) -> None:
    gen = seeded(64412)
    model = hf_gpt2(vocab=128, dim=32, layers=2, heads=2, context=32)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 110, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    for _ in range(steps):
        x, y = next(batches)
        loss = lm_loss(model(input_ids=x).logits, y)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 30%", _median(ls[-10:]) < 0.7 * ls[0])
    ctx.check("finite", _finite(ls))


@scenario(
    family="enamel_kiln_firing_window_fp16_onecycle_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="fp16 autocast + GradScaler, OneCycleLR, clipping at 1.0 on unscaled gradients, Huber "
    "loss on noisy pyrometer readings (a few rows with heavy noise each batch); healthy",
)
def h644_enamel_kiln_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(64413)
    model = SiluNet(8, 32)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen, noise=0.1)
    for _ in range(steps):
        x, y = next(batches)
        y = y + 0.5 * (torch.rand(y.shape, generator=gen) < 0.05) * torch.randn(
            y.shape, generator=gen
        )
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y, delta=0.5)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 50%", _median(ls[-10:]) < 0.5 * _median(ls[:5]))
    ctx.check("finite", _finite(ls))
