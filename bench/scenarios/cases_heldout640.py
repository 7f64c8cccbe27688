"""Held-out set 640 (``h640_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data or scikit-learn's bundled digits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, digit_batches, scenario, seeded


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


def _gnorm(model: nn.Module) -> float:
    return float(sum(p.grad.norm() ** 2 for p in model.parameters() if p.grad is not None) ** 0.5)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


class ReluNet(nn.Module):
    def __init__(self, n_in: int = 16, hidden: int = 32, out: int = 5, act=F.relu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="kendama_trick_grade_temperature_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the softmax temperature is read from a config in the wrong unit (1e-3 for 1.0: logits "
    "are divided by 0.001); the softmax saturates, most probabilities round to exactly 0 or 1 "
    "and the loss stays large and noisy instead of falling smoothly",
)
def h640_kendama_trick_temperature(ctx: Context) -> None:
    gen = seeded(6401)
    model = ReluNet(16, 32, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    temperature = 1e-3
    saturated = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        with torch.no_grad():
            p = logits.softmax(-1)
            saturated.append(float((p.max(-1).values == 1.0).float().mean()))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over half the rows have a probability exactly 1", _mean(saturated[-50:]) > 0.5)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="sepak_takraw_kick_zone_raw_nll_classifier",
    optimizer="SGD momentum",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="F.nll_loss is called on the head's raw logits (the log_softmax was dropped in a "
    "refactor): the loss is -logit[target], unbounded below, and the head's logits grow without "
    "bound while the loss runs off to large negative values",
)
def h640_sepak_takraw_raw_nll(ctx: Context) -> None:
    gen = seeded(6402)
    model = ReluNet(16, 32, 5)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    ctx.attach(model, opt)
    batches = _classes(gen)
    sizes = []
    for _ in range(100):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        sizes.append(float(logits.detach().abs().mean()))
        loss = F.nll_loss(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("head logits grew over 20x", sizes[-1] > 20 * sizes[0])
    ctx.check("loss below -10 at the end", ctx.losses[-1] < -10)
    ctx.check("loss finite", _finite(ctx.losses))


class VaneNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 32)
        self.mean_head = nn.Linear(32, 1)
        self.var_head = nn.Linear(32, 1)
        nn.init.zeros_(self.var_head.weight)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x: torch.Tensor):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        return self.mean_head(h), self.var_head(h)


@scenario(
    family="fletching_vane_drag_sqrt_variance_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var_head",),
    diverges=71,
    heldout=True,
    note="a Gaussian-NLL drag regressor takes the standard deviation as sqrt of the variance "
    "head's raw output (the softplus/clamp was left out); once the fit is good the head is pushed "
    "below zero for some samples, sqrt of a negative gives NaN and the loss is NaN",
)
def h640_fletching_vane_sqrt_variance(ctx: Context) -> None:
    gen = seeded(6403)
    model = VaneNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.02)
    neg_at_nan = False
    for _ in range(300):
        x, y = next(batches)
        mu, var = model(x)
        std = torch.sqrt(var)
        loss = (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()
        if not math.isfinite(float(loss.detach())):
            neg_at_nan = bool((var.detach() < 0).any())
            ctx.step(loss)
            break
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell before the NaN", min(ls) < ls[0] - 0.5)
    ctx.check("loss NaN at step 71", len(ls) == 72 and not math.isfinite(ls[71]))
    ctx.check("var_head output negative at the NaN", neg_at_nan)


class DeepTanh(nn.Module):
    def __init__(self, depth: int = 10, width: int = 32, gain: float = 1.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8 if i == 0 else width, width) for i in range(depth))
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.layers:
            x = torch.tanh(m(x))
        return self.head(x)


@scenario(
    family="cave_stalagmite_drip_deep_tanh_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="a 10-layer tanh drip-rate regressor initialised with orthogonal gain 5.0 (a gain meant "
    "for the input scaling copied into the init call): the backward pass multiplies the "
    "gradient up layer after layer, layers.0's gradient is far larger than the last layer's and "
    "the loss thrashes instead of falling; the total norm is clipped so it does not NaN",
)
def h640_cave_stalagmite_gain(ctx: Context) -> None:
    gen = seeded(6404)
    model = DeepTanh(10, 32, gain=5.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _regression(gen)
    ratios = []
    for _ in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(
            float(model.layers[0].weight.grad.norm() / model.layers[9].weight.grad.norm())
        )
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("layers.0 gradient over 10x layers.9's", _mean(ratios[:20]) > 10)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="saddler_stitch_tension_two_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="two param groups (fc1 as a 'backbone', the rest as 'head'); the backbone lr is typed "
    "2e-9 for 2e-3, so fc1 gets its gradient but never moves from its random init; the rest "
    "of the net fits on top of random features",
)
def h640_saddler_stitch_group_typo(ctx: Context) -> None:
    gen = seeded(6405)
    model = ReluNet(8, 32, 1, act=torch.tanh)
    w0 = model.fc1.weight.detach().clone()
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 2e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 2e-3},
        ]
    )
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.01)
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        if _ < 149:
            opt.zero_grad(set_to_none=True)
    moved = float((model.fc1.weight.detach() - w0).norm() / w0.norm())
    g1 = float(model.fc1.weight.grad.norm()) if model.fc1.weight.grad is not None else 0.0
    ctx.check("fc1 moved less than 1e-6 of its norm", moved < 1e-6)
    ctx.check("fc1 receives a gradient", g1 > 1e-5)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="pelota_fronton_rebound_silu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="one shard of wall-sensor readings was exported in millimetres instead of metres: the "
    "batch at step 100 has inputs 1000x too large, the loss and gradient spike for that step "
    "(clipped) and the run recovers on the clean batches that follow",
)
def h640_pelota_fronton_mm_shard(ctx: Context) -> None:
    gen = seeded(6406)
    model = ReluNet(8, 32, 1, act=F.silu)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 100
    norms = []
    for step in range(200):
        x, y = next(batches)
        if step == onset:
            x = x * 1000.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norms.append(_gnorm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    before = _mean(ls[onset - 10 : onset])
    ctx.check("loss over 20x at onset", ls[onset] > 20 * before)
    ctx.check("gradient over 10x at onset", norms[onset] > 10 * _mean(norms[onset - 10 : onset]))
    ctx.check("recovers within 2x", _mean(ls[-10:]) < 2 * before)


@scenario(
    family="bagpipe_drone_reed_accum_relu_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="4-micro-batch gradient accumulation; at step 80 (the first step after a resume) the "
    "accumulation counter is restored as 0.01 instead of 4, so that step's micro-batch losses "
    "are multiplied by 100 before backward: one gradient burst, ordinary logged loss, clipped",
)
def h640_bagpipe_drone_accum_resume(ctx: Context) -> None:
    gen = seeded(6407)
    model = ReluNet(16, 32, 5)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _classes(gen, batch=16)
    onset = 80
    norms = []
    for step in range(160):
        div = 0.01 if step == onset else 4.0
        total = 0.0
        for _ in range(4):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            (loss / div).backward()
            total += float(loss.detach()) / 4
        norms.append(_gnorm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("gradient over 50x at onset", norms[onset] > 50 * _mean(norms[onset - 10 : onset]))
    ctx.check("logged loss ordinary at onset", ls[onset] < 2 * _mean(ls[onset - 10 : onset]))
    ctx.check("loss fell", _mean(ls[-10:]) < 0.6 * ls[0])


@scenario(
    family="salt_marsh_creek_silt_drift_regressor",
    optimizer="AdamW",
    cause="loss_divergence",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="the silt-load targets are de-trended with an offset whose increment was moved out of "
    "its once-per-epoch branch at step 60: the offset grows every step, the target drifts away "
    "faster than AdamW follows and the loss climbs slowly after its first fall, no burst, no NaN",
)
def h640_salt_marsh_target_drift(ctx: Context) -> None:
    gen = seeded(6408)
    model = ReluNet(8, 32, 1, act=F.silu)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 60
    shift = 0.0
    for step in range(240):
        x, y = next(batches)
        if step >= onset:
            shift += 0.002 * (step - onset)
        loss = F.mse_loss(model(x), y + shift)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    low = min(ls[:onset])
    ctx.check("loss fell first", low < 0.5 * ls[0])
    ctx.check("loss climbs over 5x its low", _mean(ls[-10:]) > 5 * low)
    ctx.check(
        "no single jump over 3x", all(b < 3 * a + 1e-3 for a, b in zip(ls, ls[1:], strict=False))
    )
    ctx.check("loss finite", _finite(ls))


def _sharpness(model: nn.Module, loss: torch.Tensor, iters: int = 20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="trebuchet_throw_range_warm_restart_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=100,
    heldout=True,
    note="a hand-written warm-restart schedule restarts at step 100 with the peak typed 2.0 for "
    "0.2: lr x sharpness passes 2, the loss oscillates with growing amplitude and blows up",
)
def h640_trebuchet_restart_peak_typo(ctx: Context) -> None:
    gen = seeded(6409)
    model = ReluNet(8, 32, 1, act=torch.tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=256)
    onset = 100
    product = 0.0
    for step in range(160):
        peak = 0.2 if step < onset else 2.0
        cycle = step if step < onset else step - onset
        lr = peak * (0.55 + 0.45 * math.cos(math.pi * min(cycle, 100) / 100))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        if step == onset:
            product = lr * _sharpness(model, loss)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e6:
            break
    ls = ctx.losses
    ctx.check("lr x sharpness over 2 at onset", product > 2)
    ctx.check("loss fell before onset", ls[onset - 1] < 0.5 * ls[0])
    ctx.check("loss blew up over 100x", max(ls[onset:]) > 100 * ls[onset - 1])


@scenario(
    family="ice_climbing_pick_placement_relu_regressor",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="ice-temperature readings are fed raw (all positive, around 250 K: the centring step "
    "was skipped) to a ReLU regressor on Adagrad at lr 0.5; the first large updates drive fc1's "
    "pre-activations negative on every input, most fc1 units die and the loss stalls",
)
def h640_ice_climbing_dead_relu(ctx: Context) -> None:
    gen = seeded(6410)
    model = ReluNet(8, 32, 1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.5)
    ctx.attach(model, opt)
    batches = _regression(gen)
    dead = 0.0
    for _ in range(150):
        x, y = next(batches)
        x = x + 250.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            dead = float((F.relu(model.fc1(x)) <= 0).all(0).float().mean())
    ls = ctx.losses
    ctx.check("over half of fc1 units dead", dead > 0.5)
    ctx.check("loss stalls above 0.02", _mean(ls[-20:]) > 0.02)
    ctx.check("loss finite", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="mail_sorter_postcode_digit_relu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control that looks alarming: a postcode-digit MLP on the bundled 8x8 digits at a high "
    "constant lr 0.5 (no schedule, no decay) trained until the training loss is near zero; "
    "the loss is noisy early and then collapses towards 0, which is simply a fit",
)
def h640_mail_sorter_digits_high_lr(ctx: Context) -> None:
    gen = seeded(6411)
    model = ReluNet(64, 128, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ctx.attach(model, opt)
    batches = digit_batches(gen, batch=128)
    for _ in range(300):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("training loss near zero", _mean(ls[-20:]) < 0.05)
    ctx.check("loss fell over 20x", _mean(ls[-20:]) < ls[0] / 20)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="clay_pigeon_trap_lead_fp16_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control: fp16 autocast + GradScaler, OneCycleLR, gradient clipping after unscale, "
    "Huber loss on noisy trap-lead readings",
)
def h640_clay_pigeon_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(6412)
    model = ReluNet(8, 32, 1, act=F.silu)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen, noise=0.1)
    for _ in range(200):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y, delta=0.5)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 2x", _mean(ls[-20:]) < 0.5 * _mean(ls[:5]))
    ctx.check("loss finite", _finite(ls))


class TiedAutoencoder(nn.Module):
    def __init__(self, n_in: int = 16, code: int = 6) -> None:
        super().__init__()
        self.enc = nn.Linear(n_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(n_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


@scenario(
    family="tinsmith_seam_fold_tied_autoencoder",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control: tied-weight autoencoder of seam-fold gauge profiles, two param groups (no "
    "decay on the bias), 2-micro-batch accumulation, ReduceLROnPlateau, clipping, noisy batches",
)
def h640_tinsmith_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(6413)
    model = TiedAutoencoder(16, 6)
    opt = torch.optim.RAdam(
        [
            {"params": [model.enc.weight], "weight_decay": 1e-4},
            {"params": [model.enc.bias, model.dec_bias], "weight_decay": 0.0},
        ],
        lr=2e-2,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    basis = 0.4 * torch.randn(4, 16, generator=gen)
    for _ in range(200):
        total = 0.0
        for _ in range(2):
            z = torch.randn(32, 4, generator=gen)
            x = z @ basis + 0.05 * torch.randn(32, 16, generator=gen)
            loss = F.mse_loss(model(x), x)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 2x", _mean(ls[-20:]) < 0.5 * _mean(ls[:5]))
    ctx.check("loss finite", _finite(ls))
