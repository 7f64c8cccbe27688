"""Held-out set 651 (``h651_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and one Hugging Face xLSTM built from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    scenario,
    seeded,
    text_batches,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _gnorm(params) -> float:
    gs = [p.grad.float().norm() ** 2 for p in params if p.grad is not None]
    return float(sum(gs) ** 0.5) if gs else 0.0


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class TanhNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class ReluNet(nn.Module):
    def __init__(self, n_in: int = 12, hidden: int = 64, out: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(self.features(x))))


class GeluNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


def _top_hessian_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    """Largest Hessian eigenvalue of ``loss_fn(model)`` by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="cooperage_stave_bevel_warmup_units_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a stave-bevel tanh regressor whose linear warm-up target was written as 1.5 (meant "
    "0.15, a units slip between 'lr' and 'lr x 10' in the config); plain SGD, MSE; as the "
    "warm-up climbs, lr x top Hessian eigenvalue passes 2 and the loss blows up",
)
def h651_cooperage_stave_warmup_units(ctx: Context) -> None:
    gen = seeded(6511)
    model = TanhNet(8, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ctx.attach(model, opt)
    batches = _readings(gen)
    probe_x, probe_y = next(batches)
    peak, warm = 1.5, 80
    crossed = None
    products: list[float] = []
    for step in range(150):
        lr = 0.01 + (peak - 0.01) * min(step / warm, 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 5 == 0 and crossed is None:
            lam = _top_hessian_eig(model, lambda m: F.mse_loss(m(probe_x), probe_y))
            products.append(lr * lam)
            if lr * lam > 2.0:
                crossed = step
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    best = min(v for v in ls if math.isfinite(v))
    ctx.check("lr x sharpness under 2 early", bool(products) and products[0] < 2.0)
    ctx.check("lr x sharpness passed 2 during warm-up", crossed is not None)
    ctx.check("loss fell first", best < 0.5 * ls[0])
    ctx.check(
        "loss blew up after crossing (last over 20x the best, or non-finite)",
        not math.isfinite(ls[-1]) or ls[-1] > 20 * best,
    )


@scenario(
    family="hurling_sliotar_puck_zone_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="a sliotar strike-zone ReLU classifier trained with Adam at lr 0.5 (a sweep's upper "
    "bound pasted as the default) and fc1's bias initialised at -1 (copied from a sparse "
    "feature layer); the first large updates push most fc2 units negative on every input, "
    "they never come back and the loss stalls far above what the task allows",
)
def h651_hurling_zone_dead_relu(ctx: Context) -> None:
    gen = seeded(6512)
    model = ReluNet(12, 64, 5)
    nn.init.constant_(model.fc1.bias, -1.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.5)
    ctx.attach(model, opt)
    batches = _labels(gen)
    probe_x, _ = next(batches)
    dead: list[float] = []
    for _step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            dead.append(dead_fraction(F.relu(model.fc2(model.features(probe_x)))))
    ls = ctx.losses
    ctx.check("under 40% of fc2 units dead at step 0", dead[0] < 0.4)
    ctx.check("over 70% of fc2 units dead at the end", dead[-1] > 0.7)
    ctx.check("loss stalls above 0.5 over the last 30", _median(ls[-30:]) > 0.5)
    ctx.check("finite", _finite(ls))


@scenario(
    family="peat_cutting_sod_moisture_sqrt_var_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=48,
    onset=48,
    heldout=True,
    note="a heteroscedastic Gaussian NLL for peat-sod moisture whose std is sqrt(var_head(h)) "
    "after a refactor dropped the softplus; once var_head gives a negative variance on one "
    "row, sqrt of a negative is NaN and the loss is NaN",
)
def h651_peat_sod_sqrt_negative_var(ctx: Context) -> None:
    gen = seeded(6513)

    class SodNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.mean_head = nn.Linear(32, 1)
            self.var_head = nn.Linear(32, 1)
            nn.init.constant_(self.var_head.bias, 2.0)
            nn.init.normal_(self.var_head.weight, std=0.01)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = F.gelu(self.fc1(x))
            var = self.var_head(h)  # bug: softplus dropped in a refactor
            return self.mean_head(h), torch.sqrt(var)

    model = SodNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.2)
    neg_at = None
    for step in range(200):
        x, y = next(batches)
        mu, std = model(x)
        if neg_at is None and bool((model.var_head(F.gelu(model.fc1(x))) < 0).any()):
            neg_at = step
        loss = (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    bad = len(ls) - 1
    ctx.check("loss ends non-finite", not math.isfinite(ls[-1]))
    ctx.check("a negative variance on the NaN step", neg_at is not None and neg_at == bad)
    ctx.check("loss finite before", _finite(ls[:bad]))
    ctx.check(f"NaN at step {_NAN_PEAT}", bad == _NAN_PEAT)


_NAN_PEAT = 48


@scenario(
    family="barometric_foehn_pressure_pa_fp16_regressor",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=60,
    onset=60,
    heldout=True,
    note="a foehn-gust regressor trained under fp16 autocast with a GradScaler; from step 60 a "
    "new station feed logs station pressure in pascals instead of kilopascals (no rescale "
    "in the loader), fc1's fp16 output passes 65504 and is inf, the loss is inf and the scaler "
    "skips every step while its scale collapses",
)
def h651_foehn_pressure_pascal_fp16(ctx: Context) -> None:
    gen = seeded(6514)
    model = GeluNet(8, 32)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    onset = 60
    fp32_finite = True
    fc1_inf = False
    for step in range(onset + 30):
        x, y = next(batches)
        if step >= onset:  # the new feed: pressure column in Pa, around 1e5
            x = x.clone()
            x[:, 0] = 101325.0 + 800.0 * x[:, 0]
            with torch.no_grad():
                fp32_finite &= bool(torch.isfinite(model(x)).all())
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
            if step == onset:
                fc1_inf = bool(torch.isinf(model.fc1(x)).any())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(_gnorm(model.parameters()))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, sc = ctx.losses, ctx.scales
    ctx.check("loss finite before onset", _finite(ls[:onset]))
    ctx.check("loss fell before onset", _median(ls[onset - 10 : onset]) < 0.7 * _median(ls[:10]))
    ctx.check("fc1 fp16 output inf at onset", fc1_inf)
    ctx.check("loss non-finite from onset on", not any(math.isfinite(v) for v in ls[onset:]))
    ctx.check("same forward in fp32 finite", fp32_finite)
    ctx.check("scale fell over 1000x after onset", sc[-1] < sc[onset - 1] / 1000)


@scenario(
    family="hoop_rolling_roll_distance_mm_shard_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="a hoop-rolling distance regressor (MSE, Adamax); one shard at step 120 came from a "
    "club that logs distance in millimetres, so that batch's targets are 1000x too large; the "
    "loss spikes by orders of magnitude for that batch and the run recovers",
)
def h651_hoop_roll_millimetre_shard(ctx: Context) -> None:
    gen = seeded(6515)
    model = GeluNet(8, 32)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    onset = 120
    for step in range(220):
        x, y = next(batches)
        if step == onset:
            y = y * 1000.0  # the millimetre shard
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    before = _median(ls[onset - 10 : onset])
    ctx.check("loss at onset over 1000x the 10 before", ls[onset] > 1000 * before)
    ctx.check("gradient at onset over 100x", gs[onset] > 100 * _median(gs[onset - 10 : onset]))
    ctx.check("recovers: last 20 under 3x the 10 before onset", _median(ls[-20:]) < 3 * before)
    ctx.check("finite", _finite(ls))


@scenario(
    family="kabaddi_raid_outcome_sum_reduction_relu_classifier",
    optimizer="SGD-Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="a kabaddi raid-outcome ReLU classifier (SGD Nesterov, clipping at 2.0); the "
    "end-of-epoch step 100 takes a separate code path for the last batch that computes "
    "cross_entropy with reduction='sum' instead of 'mean', so that one step's gradient is 64x; "
    "the batch itself is ordinary and the logged mean loss looks normal; clipping absorbs it",
)
def h651_kabaddi_raid_sum_reduction(ctx: Context) -> None:
    gen = seeded(6516)
    model = ReluNet(12, 64, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _labels(gen)
    onset = 100
    for step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        total = F.cross_entropy(logits, y, reduction="sum") if step == onset else loss
        total.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 30x the 10 before", gs[onset] > 30 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "logged loss at onset under 3x the 10 before",
        ls[onset] < 3 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="handbell_peal_relu_rnn_gain_regressor",
    optimizer="SGD-momentum",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="a handbell-peal timing ReLU Elman RNN over 24 strokes whose recurrent weights were "
    "initialised orthogonal with gain 1.45 (an IRNN recipe's gain typed for the input weights "
    "applied to weight_hh); the gradient through time grows by the gain per step, SGD "
    "momentum without clipping and the loss blows up",
)
def h651_handbell_peal_rnn_gain(ctx: Context) -> None:
    gen = seeded(6517)

    class PealRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(4, 32, nonlinearity="relu", batch_first=True)
            self.head = nn.Linear(32, 1)
            nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=1.45)  # bug: gain meant for w_ih

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    model = PealRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    w = torch.randn(4, generator=gen) / 2
    ratio0 = None
    for step in range(120):
        x = 0.1 * torch.randn(32, 24, 4, generator=gen)
        y = torch.tanh((x @ w).sum(1, keepdim=True) / 5)
        if step == 0:
            h0 = torch.zeros(1, 32, 32, requires_grad=True)
            out, _ = model.rnn(x, h0)
            out.retain_grad()
            F.mse_loss(model.head(out[:, -1]), y).backward()
            late = float(out.grad[:, -1].norm())
            ratio0 = float(h0.grad.norm()) / max(late, 1e-30)
            model.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check(
        "gradient at t=0 over 30x the last step's at init", ratio0 is not None and ratio0 > 30
    )
    ctx.check(
        "loss blew up: last over 100x the first, or non-finite",
        not math.isfinite(ls[-1]) or ls[-1] > 100 * ls[0],
    )


@scenario(
    family="dowsing_rod_dip_group_typo_rmsprop_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="a dowsing-rod dip-angle regressor with a param group per layer; fc1's group lr was "
    "typed 1e-8 (meant 1e-3): its weights barely move for the whole run while fc2 and the "
    "head train; the loss falls but plateaus well above the healthy level",
)
def h651_dowsing_rod_group_typo(ctx: Context) -> None:
    gen = seeded(6518)
    model = TanhNet(8, 32)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-8},  # typo: meant 1e-3
            {"params": model.fc2.parameters()},
            {"params": model.head.parameters()},
        ],
        lr=1e-3,
    )
    ctx.attach(model, opt)
    batches = _readings(gen)
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    for _step in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    d2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-5 relative", d1 < 1e-5)
    ctx.check("fc2 moved over 1e-2 relative", d2 > 1e-2)
    ctx.check("loss fell", _median(ls[-20:]) < 0.8 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="sumo_kimarite_inverse_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a sumo winning-technique classifier whose calibration temperature 1000.0 was applied "
    "as a multiplier (logits * T) instead of a divisor; Adagrad; the float32 softmax rounds "
    "the target probability to exactly 1.0 on most rows while the wrong rows get huge losses",
)
def h651_sumo_kimarite_temperature(ctx: Context) -> None:
    gen = seeded(6519)
    model = ReluNet(12, 64, 5)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _labels(gen)
    temp = 1000.0
    collapsed: list[float] = []
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) * temp  # bug: meant model(x) / temp
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        collapsed.append(collapsed_fraction(logits.detach(), y))
    ls = ctx.losses
    ctx.check("under 30% of rows at p = 1.0 at step 0", collapsed[0] < 0.3)
    ctx.check("over half the rows at p = 1.0 over the last 20", _median(collapsed[-20:]) > 0.5)
    ctx.check("finite", _finite(ls))


@scenario(
    family="bonsai_pruning_cut_neg_class_weight_classifier",
    optimizer="Adadelta",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a bonsai pruning-cut classifier with class weights meant to be -log(frequency); the "
    "sign was dropped, so the most frequent class gets a negative weight and the weighted "
    "cross-entropy is unbounded below: the head pushes that class's logit down without bound "
    "and the logits grow over 20x while the loss falls below zero",
)
def h651_bonsai_cut_negative_class_weight(ctx: Context) -> None:
    gen = seeded(6510)
    model = ReluNet(12, 64, 5)
    opt = torch.optim.Adadelta(model.parameters(), lr=0.1)
    ctx.attach(model, opt)
    batches = _labels(gen)
    freq = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    weight = torch.log(freq) + 1.0  # bug: meant -log(freq); class 0 weight is negative
    mags: list[float] = []
    for _step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y, weight=weight)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        mags.append(float(logits.detach().abs().max()))
    ls = ctx.losses
    ctx.check("a class weight is negative", bool((weight < 0).any()))
    ctx.check("max logit over 20x the first 5 steps'", _median(mags[-10:]) > 20 * _median(mags[:5]))
    ctx.check("loss below zero at the end", ls[-1] < 0)


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    family="sheaf_binding_twine_tension_swa_gelu_regressor",
    optimizer="SGD-momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="stochastic weight averaging done as in the PyTorch recipe: cosine annealing to 2e-3, "
    "then at swa_start=120 SWALR raises the rate back up to 0.05 (25x) in 5 steps and "
    "AveragedModel collects the weights; the loss jumps and turns noisy at the restart (looks "
    "alarming) but the run is healthy and the averaged model fits well",
)
def h651_sheaf_twine_swa_restart(ctx: Context) -> None:
    gen = seeded(6520)
    model = GeluNet(8, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    swa_start, steps = 120, 220
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=swa_start, eta_min=2e-3)
    swa_model = torch.optim.swa_utils.AveragedModel(model)
    swa_sched = torch.optim.swa_utils.SWALR(opt, swa_lr=0.05, anneal_epochs=5)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.1)
    hx, hy = next(batches)
    lrs: list[float] = []
    for step in range(steps):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        lrs.append(opt.param_groups[0]["lr"])
        if step >= swa_start:
            swa_model.update_parameters(model)
            swa_sched.step()
        else:
            sched.step()
    ls = ctx.losses
    with torch.no_grad():
        swa_loss = float(F.mse_loss(swa_model(hx), hy))
        first = float(F.mse_loss(swa_model.module.__class__.forward(model, hx), hy))
    ctx.check("lr raised over 10x after swa_start", max(lrs[swa_start:]) > 10 * lrs[swa_start - 1])
    ctx.check("loss fell", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("averaged model fits: held-out loss under 0.5x the first", swa_loss < 0.5 * ls[0])
    ctx.check("finite", _finite(ls) and math.isfinite(first))


@scenario(
    family="morris_dance_bell_pad_xlstm_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face xLSTMForCausalLM (2 mLSTM blocks, width 32, native kernels) on "
    "byte text, AdamW with a no-decay group for norms and biases, linear warm-up then cosine, "
    "clipping at 1.0: an ordinary language-model run",
)
def h651_morris_bell_pad_xlstm(ctx: Context) -> None:
    from transformers import xLSTMConfig, xLSTMForCausalLM

    gen = seeded(6521)
    config = xLSTMConfig(
        vocab_size=64,
        hidden_size=32,
        embedding_dim=32,
        num_heads=2,
        num_blocks=2,
        qk_dim_factor=0.5,
        v_dim_factor=1.0,
        chunk_size=16,
        mode="train",
        chunkwise_kernel="chunkwise--native_autograd",
        sequence_kernel="native_sequence__native",
        step_kernel="native",
        use_cache=False,
    )
    model = xLSTMForCausalLM(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 120, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32, vocab=64)
    for _ in range(steps):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, 64), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 10 under 0.75x the first 5", _median(ls[-10:]) < 0.75 * _median(ls[:5])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="ice_sculpture_melt_stage_asgd_classifier",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="an ice-sculpture melt-stage ReLU classifier with ASGD, label smoothing 0.1, "
    "2-micro-batch gradient accumulation, noisy readings (10% of rows relabelled at random), "
    "clipping at 1.0 and ReduceLROnPlateau on the running loss: an ordinary run",
)
def h651_ice_sculpture_asgd(ctx: Context) -> None:
    gen = seeded(6522)
    model = ReluNet(12, 64, 5)
    opt = torch.optim.ASGD(model.parameters(), lr=0.3, t0=50)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _labels(gen, batch=32)
    for _step in range(150):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            flip = torch.rand(len(y), generator=gen) < 0.1
            y = torch.where(flip, torch.randint(0, 5, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(_gnorm(model.parameters()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
        plateau.step(total)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 under 0.6x the first 10", _median(ls[-20:]) < 0.6 * _median(ls[:10])
    )
    ctx.check("finite", _finite(ls))
