"""Held-out set 625 (``h625_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, scenario, seeded


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 4, batch: int = 64, positive=False):
    """Endless (x, y) batches: y is the argmax of a fixed score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = (
            torch.rand(batch, n_in, generator=gen)
            if positive
            else torch.randn(batch, n_in, generator=gen)
        )
        yield x, ((x - 0.5 if positive else x) @ w).argmax(1)


def _med(xs: list[float], a: int, b: int) -> float:
    return float(torch.tensor(xs[max(0, a) : b]).median())


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _sgd_step(ctx: Context, model: nn.Module, opt, loss, backprop=None) -> None:
    (loss if backprop is None else backprop).backward()
    ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


class Net3(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.silu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="saltpan_brine_density_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    heldout=True,
    onset=90,
    note="fp16 autocast + GradScaler; from step 90 the brine vapour-pressure readings arrive in Pa "
    "instead of bar (no /1e5), fc1's fp16 output overflows to inf (finite in float32), the loss is NaN",
)
def h625_saltpan_brine_fp16_pascal(ctx: Context) -> None:
    gen = seeded(6251)
    model = Net3()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    onset = 90
    for step in range(160):
        x, y = next(batches)
        if step >= onset:
            x = x * 1e5  # bug: Pa, the model was trained on bar
        with torch.autocast("cpu", dtype=torch.float16):
            h1 = model.fc1(x)
            out = model.fc3(F.silu(model.fc2(F.silu(h1))))
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            with torch.no_grad():
                h32 = F.linear(x, model.fc1.weight, model.fc1.bias)
            ctx.check("fc1's fp16 output overflows at onset", not bool(torch.isfinite(h1).all()))
            ctx.check("fc1's float32 output is finite at onset", bool(torch.isfinite(h32).all()))
            ctx.check("fc1's float32 output exceeds fp16 max", float(h32.abs().max()) > 65504.0)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(
            float(sum(p.grad.float().norm() ** 2 for p in model.parameters()) ** 0.5)
        )
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("loss finite before onset", all(math.isfinite(v) for v in ctx.losses[:onset]))
    ctx.check("loss non-finite at onset", not math.isfinite(ctx.losses[onset]))
    ctx.check("loss fell before onset", ctx.losses[onset - 1] < 0.5 * ctx.losses[0])


@scenario(
    family="harness_racing_sulky_split_resume_tanh_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="resumed from a checkpoint at step 150 with the weights loaded but the Adam state not "
    "(optimizer.load_state_dict skipped): the fresh moments take full-size sign steps, the loss "
    "spikes for a few steps with an ordinary gradient and the run recovers",
)
def h625_sulky_split_resume_without_adam_state(ctx: Context) -> None:
    gen = seeded(6252)
    model = Net3(act=torch.tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 150
    for step in range(260):
        if step == onset:
            opt.state.clear()  # bug: the resume path never restores the optimizer state
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        _sgd_step(ctx, model, opt, loss)
    pre = _med(ctx.losses, onset - 20, onset)
    peak = max(ctx.losses[onset : onset + 10])
    ctx.check("loss spikes over 4x after the resume", peak > 4 * pre)
    ctx.check(
        "gradient at the resume is ordinary (under 3x)",
        ctx.grad_norms[onset] < 3 * _med(ctx.grad_norms, onset - 20, onset),
    )
    ctx.check("run recovers (last 20 under 1.5x pre-spike)", _med(ctx.losses, 240, 260) < 1.5 * pre)


def _top_eig(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 30) -> float:
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u**2).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="tanner_hide_liming_time_relu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=100,
    note="MultiStepLR milestone at step 100 with gamma typed 10 instead of 0.1: the rate jumps "
    "10x, lr x sharpness goes from under 2 to over 2, the loss blows up",
)
def h625_tanner_liming_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(6253)
    model = Net3(act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[100], gamma=10.0)  # meant 0.1
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 100
    for step in range(180):
        x, y = next(batches)
        if step == onset:
            lam = _top_eig(model, x, y)
            lr = opt.param_groups[0]["lr"]
            ctx.check("lr x sharpness under 2 before the milestone", 0.1 * lam < 2.0)
            ctx.check("lr x sharpness over 2 after the milestone", lr * lam > 2.0)
        loss = F.mse_loss(model(x), y)
        _sgd_step(ctx, model, opt, loss)
        sched.step()
        if not math.isfinite(float(loss.detach())):
            break
    pre = _med(ctx.losses, onset - 20, onset)
    post = ctx.losses[onset:]
    ctx.check(
        "loss blows up after the milestone (non-finite or over 100x)",
        any((not math.isfinite(v)) or v > 100 * pre for v in post),
    )


class ReluRNN(nn.Module):
    def __init__(self, hidden: int = 32, gain: float = 1.0) -> None:
        super().__init__()
        self.inp = nn.Linear(2, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.rec.bias.zero_()
        self.states: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


def _morse(gen: torch.Generator, batch: int = 32, length: int = 24):
    """Key-down/up traces with jitter; the target is the keyed fraction of the trace."""
    while True:
        key = (torch.rand(batch, length, generator=gen) < 0.4).float()
        jitter = 0.1 * torch.randn(batch, length, generator=gen)
        x = torch.stack([key + jitter, torch.ones(batch, length)], -1)
        yield x, key.mean(1, keepdim=True)


@scenario(
    family="morse_key_fist_timing_irnn",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="IRNN recurrent weights initialised to 1.1 x identity (gain typed 1.1 for 1.0): the "
    "gradient grows back through time, the first state's gradient is over 5x the last's, "
    "the loss blows up",
)
def h625_morse_fist_irnn_gain(ctx: Context) -> None:
    gen = seeded(6254)
    model = ReluRNN(gain=1.1)
    opt = torch.optim.SGD(model.parameters(), lr=3e-5, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _morse(gen)
    for step in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if step == 0:
            g0 = float(model.states[0].grad.norm())
            g1 = float(model.states[-1].grad.norm())
            ctx.check("first state's gradient over 5x the last's", g0 > 5 * g1)
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check(
        "loss blows up (non-finite or over 1000x its start)",
        any((not math.isfinite(v)) or v > 1000 * ctx.losses[0] for v in ctx.losses),
    )


@scenario(
    family="farrier_hoof_angle_three_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups from a config; fc2's lr typed 1e-7 instead of 1e-1: fc2's weights "
    "never move (relative change under 1e-5) while fc1 and fc3 train and the loss falls",
)
def h625_farrier_hoof_group_lr_typo(ctx: Context) -> None:
    gen = seeded(6255)
    model = Net3(act=F.silu)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-1},
            {"params": model.fc2.parameters(), "lr": 1e-7},  # typo: 1e-1
            {"params": model.fc3.parameters(), "lr": 1e-1},
        ]
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    w1, w2 = _flat(model.fc1), _flat(model.fc2)
    for _ in range(160):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        _sgd_step(ctx, model, opt, loss)
    r1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    r2 = float((_flat(model.fc2) - w2).norm() / w2.norm())
    ctx.check("fc2 relative change under 1e-5", r2 < 1e-5)
    ctx.check("fc1 relative change over 1e-2", r1 > 1e-2)
    ctx.check("loss fell", _med(ctx.losses, 140, 160) < 0.7 * _med(ctx.losses, 0, 10))


@scenario(
    family="peat_bog_core_carbon_huber_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="one shard of core samples logged in mg/g instead of g/g (x1000) reaches the loader at "
    "step 120: the Huber loss jumps over 20x for that batch, clipping at 1.0, the run recovers",
)
def h625_peat_core_bad_shard(ctx: Context) -> None:
    gen = seeded(6256)
    model = Net3(act=F.silu)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 120
    xmax = []
    for step in range(220):
        x, y = next(batches)
        if step == onset:
            x = x * 1000.0  # the bad shard
        xmax.append(float(x.abs().max()))
        loss = F.huber_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre = _med(ctx.losses, onset - 20, onset)
    ctx.check("bad batch's readings over 100x the usual", xmax[onset] > 100 * _med(xmax, 0, onset))
    ctx.check("loss at the bad batch over 20x", ctx.losses[onset] > 20 * pre)
    ctx.check("run recovers (last 20 under 2x)", _med(ctx.losses, 200, 220) < 2 * pre)


@scenario(
    family="crossbow_bolt_grouping_bce_classifier",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a debugging hook left in for step 90 backpropagates the batch-sum loss (loss x 64) "
    "instead of the mean: the gradient spikes over 30x while the logged loss is ordinary",
)
def h625_crossbow_bolt_sum_hook(ctx: Context) -> None:
    gen = seeded(6257)
    model = Net3(n_in=16, act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _classes(gen, k=2)
    onset = 90
    for step in range(200):
        x, y = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float())
        _sgd_step(ctx, model, opt, loss, backprop=loss * 64 if step == onset else None)
    ctx.check(
        "gradient at onset over 30x the median before",
        ctx.grad_norms[onset] > 30 * _med(ctx.grad_norms, onset - 20, onset),
    )
    ctx.check(
        "logged loss at onset ordinary (under 2x)",
        ctx.losses[onset] < 2 * _med(ctx.losses, onset - 20, onset),
    )
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))


class OnePassStandardize(nn.Module):
    """Per-batch feature standardisation with a one-pass variance (E[x^2] - E[x]^2)."""

    def __init__(self) -> None:
        super().__init__()
        self.last_var: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(0)
        var = (x * x).mean(0) - mean * mean  # no clamp(min=0), no eps
        self.last_var = var.detach()
        return (x - mean) / var.sqrt()


class SextantNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = OnePassStandardize()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


@scenario(
    family="sextant_noon_sight_one_pass_norm_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=110,
    heldout=True,
    onset=110,
    note="in-model standardiser computes the variance as E[x^2]-E[x]^2 with no clamp or eps; at "
    "step 110 the barometer channel sticks at 1013.2 for the whole batch, the variance is <= 0, "
    "sqrt/divide gives NaN",
)
def h625_sextant_stuck_barometer_sqrt(ctx: Context) -> None:
    gen = seeded(6258)
    model = SextantNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 110
    for step in range(180):
        x, y = next(batches)
        x = x.clone()
        x[:, 7] = 1013.2 + 5.0 * x[:, 7]
        if step == onset:
            x[:, 7] = 1013.2  # stuck barometer
        loss = F.mse_loss(model(x), y)
        if step == onset:
            ctx.check("variance of the stuck channel <= 0", float(model.norm.last_var[7]) <= 0.0)
        _sgd_step(ctx, model, opt, loss)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("loss finite before onset", all(math.isfinite(v) for v in ctx.losses[:onset]))
    ctx.check("loss NaN at onset", math.isnan(ctx.losses[onset]))


class CosineHead(nn.Module):
    def __init__(self, dim: int, classes: int, log_scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.log_scale = log_scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return cos * math.exp(self.log_scale)


@scenario(
    family="bonspiel_stone_path_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the config's cosine-head scale s=10 is passed to a head that expects a log-scale, so "
    "the logits are cos x e^10 (22026): over 40% of rows' target probability is exactly 1.0",
)
def h625_bonspiel_path_logscale_bug(ctx: Context) -> None:
    gen = seeded(6259)
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32)))
    model.add_module("head", CosineHead(32, 4, log_scale=10.0))  # meant scale 10
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    fracs = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        fracs.append(collapsed_fraction(logits.detach(), y))
        _sgd_step(ctx, model, opt, loss)
    ctx.check("over 40% of rows collapsed late in the run", sum(fracs[-20:]) / 20 > 0.4)
    ctx.check("logits exceed 1000 in magnitude", float(logits.detach().abs().max()) > 1000)


@scenario(
    family="cider_press_pomace_grade_relu_classifier",
    optimizer="Adadelta",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1's weights initialised uniform(-a, 0.1a) from a mis-copied init (meant (-a, a)); "
    "with non-negative pomace readings over 70% of fc1's ReLUs never fire and stay dead, the "
    "loss stalls",
)
def h625_cider_pomace_dead_relu_init(ctx: Context) -> None:
    gen = seeded(6260)
    model = Net3(n_in=16, out=4, act=F.relu)
    a = 1.0 / math.sqrt(16)
    with torch.no_grad():
        model.fc1.weight.uniform_(-a, 0.1 * a)  # typo: (-a, a)
        model.fc1.bias.uniform_(-a, 0.0)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    batches = _classes(gen, positive=True)
    for _ in range(160):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        _sgd_step(ctx, model, opt, loss)
    with torch.no_grad():
        x, _ = next(batches)
        dead = dead_fraction(model.fc1(x))
    ctx.check("over 70% of fc1's units dead at the end", dead > 0.7)
    ctx.check("loss stalls above 0.9 (chance is 1.39)", _med(ctx.losses, 140, 160) > 0.9)


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="lacrosse_crease_shot_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="fp16 autocast with a GradScaler started at init_scale 2**24: the first several steps "
    "overflow and are skipped while the scale halves, then training proceeds normally (control)",
)
def h625_lacrosse_crease_fp16_big_init_scale(ctx: Context) -> None:
    gen = seeded(6261)
    model = Net3(act=F.gelu)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    for _ in range(200):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(
            float(sum(p.grad.float().norm() ** 2 for p in model.parameters()) ** 0.5)
        )
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    skipped = sum(1 for a, b in zip([2.0**24] + ctx.scales, ctx.scales, strict=False) if b < a)
    ctx.check("at least 3 steps skipped at the start", skipped >= 3 and ctx.scales[9] < 2.0**24)
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss fell over 3x", _med(ctx.losses, 180, 200) < _med(ctx.losses, 0, 10) / 3)


@scenario(
    family="fog_harp_mesh_yield_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="RMSprop with ReduceLROnPlateau, Huber loss, clipping at 1.0 and noisy targets (control)",
)
def h625_fog_harp_plateau_control(ctx: Context) -> None:
    gen = seeded(6262)
    model = Net3(act=torch.tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.2)
    for _ in range(220):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step(float(loss))
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss fell over 3x", _med(ctx.losses, 200, 220) < ctx.losses[0] / 3)


@scenario(
    family="taiko_drum_stroke_smoothed_gelu_classifier",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="ASGD with two param groups (no decay on biases), OneCycleLR, label smoothing 0.1, "
    "2-micro-batch accumulation, clipping and 5% noisy labels (control)",
)
def h625_taiko_stroke_onecycle_control(ctx: Context) -> None:
    gen = seeded(6263)
    model = Net3(n_in=16, out=4, act=F.gelu)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.ASGD(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.05,
    )
    steps = 180
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.5, total_steps=steps, cycle_momentum=False
    )
    ctx.attach(model, opt)
    batches = _classes(gen, batch=32)
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            flip = torch.rand(len(y), generator=gen) < 0.05
            y = torch.where(flip, torch.randint(0, 4, (len(y),), generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total = total + loss.detach() / 2
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss fell below 1.0 (start ~1.4)", _med(ctx.losses, 160, 180) < 1.0)
