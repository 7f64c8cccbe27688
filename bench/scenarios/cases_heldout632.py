"""Held-out set 632 (``h632_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data or scikit-learn's bundled digits."""

from __future__ import annotations

import copy
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


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 4, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


class GeluNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="fog_horn_diaphone_blast_pressure_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 80 the reservoir pressure channel is logged in "
    "pascals instead of kilopascals (the /1000 dropped in a new logger), fc1's fp16 output "
    "overflows to inf and the loss is non-finite",
)
def h632_fog_horn_pressure_fp16_pascals(ctx: Context) -> None:
    gen = seeded(6321)
    model = nn.Sequential()
    model.fc1 = nn.Linear(8, 32)
    model.act1 = nn.SiLU()
    model.fc2 = nn.Linear(32, 32)
    model.act2 = nn.SiLU()
    model.fc3 = nn.Linear(32, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", o.detach()))
    onset = 80
    for step in range(130):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 2] = x[:, 2] * 3e5 + 2e5  # Pa, not kPa
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
    family="harpoon_line_payout_tension_huber_regressor",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="one bad shard at step 110: a winch logger wrote line tension in newtons where the rest "
    "is kilonewtons (targets 1000x); Huber loss and clipping at 1.0, the run spikes and recovers",
)
def h632_harpoon_tension_bad_shard(ctx: Context) -> None:
    gen = seeded(6322)
    model = GeluNet(8, 32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 110
    for step in range(220):
        x, y = next(batches)
        if step == onset:
            y = y * 1000.0  # N, not kN: one shard
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
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
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="archery_fletching_vane_spin_frozen_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="two param groups with a LambdaLR per group; the first group's lambda was copied from a "
    "freeze-then-unfreeze recipe with the unfreeze step left at 10**9, so fc1 gets lr 0 all run "
    "while fc2 and the head train",
)
def h632_archery_vane_frozen_fc1(ctx: Context) -> None:
    gen = seeded(6323)
    model = GeluNet(8, 32)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 2e-3},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 2e-3},
        ]
    )
    unfreeze_at = 10**9  # meant 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 0.0 if s < unfreeze_at else 1.0, lambda s: min(1.0, (s + 1) / 20)]
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rel1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    rel2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-6 relative", rel1 < 1e-6)
    ctx.check("fc2 moved over 1e-2 relative", rel2 > 1e-2)
    ctx.check("loss fell, finite", ctx.losses[-1] < ctx.losses[0] and math.isfinite(ctx.losses[-1]))


def _top_eig(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.mse_loss(model(x), y)
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
    family="dhow_lateen_sail_heel_nesterov_tanh_regressor",
    optimizer="SGD (Nesterov)",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="linear warm-up to a peak lr typed 4.0 for 0.04; once the warm-up passes 2/sharpness "
    "(after some 140 steps of its 1000-step warm-up) the loss oscillates and blows up",
)
def h632_dhow_heel_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(6324)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    peak = 4.0  # typo: 0.04
    opt = torch.optim.SGD(model.parameters(), lr=peak, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LinearLR(
        opt, start_factor=1e-3, end_factor=1.0, total_iters=1000
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    x0, y0 = next(batches)
    lam0 = _top_eig(model, x0, y0)
    for _ in range(250):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e8:
            break
    ls = ctx.losses
    # with momentum 0.9 (Nesterov) the stability limit is about 2(1+beta)/lambda
    ctx.check("peak lr x sharpness over 2(1+beta)", peak * lam0 > 2 * 1.9)
    ctx.check(
        "loss blew up over 100x its start", max(ls) > 100 * ls[0] or not math.isfinite(ls[-1])
    )
    ctx.check("loss fell first", min(ls[:30]) < ls[0])


@scenario(
    family="barometer_aneroid_drift_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="14-layer tanh MLP initialised with std 3.5/sqrt(fan_in) (a gain meant for a shallow "
    "ReLU net); the network is chaotic and the gradient grows layer after layer towards the "
    "input, layer 0's gradient over 10x the last layer's",
)
def h632_barometer_drift_deep_tanh_gain(ctx: Context) -> None:
    gen = seeded(6325)

    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(8 if i == 0 else 32, 32) for i in range(14))
            self.head = nn.Linear(32, 1)
            for m in self.layers:
                nn.init.normal_(m.weight, std=3.5 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for m in self.layers:
                x = torch.tanh(m(x))
            return self.head(x)

    model = Deep()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    ratios = []
    for _ in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g0 = float(model.layers[0].weight.grad.norm())
        gl = float(model.layers[-1].weight.grad.norm())
        ratios.append(g0 / max(gl, 1e-12))
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("layer 0 gradient over 10x the last layer's (median)", _median(ratios) > 10)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="cricket_bowling_seam_swing_bce_classifier",
    optimizer="Adagrad",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="an auxiliary-loss weight schedule returns its raw config value (200.0, meant as a "
    "percentage, 2.0/100) for one step at step 100: one gradient burst over 30x, the logged BCE "
    "is ordinary, the run carries on",
)
def h632_cricket_seam_aux_weight_bug(ctx: Context) -> None:
    gen = seeded(6326)
    model = nn.Sequential()
    model.fc1 = nn.Linear(16, 32)
    model.act = nn.ReLU()
    model.head = nn.Linear(32, 1)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 2)
    onset = 100
    for step in range(200):
        x, y = next(batches)
        logit = model(x).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logit, y.float())
        aux = (logit**2).mean()  # keep logits small
        w = 200.0 if step == onset else 0.02  # bug: raw config value for one step
        (loss + w * aux).backward()
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(gs[onset - 10 : onset])
    ctx.check("gradient at onset over 30x the 10 before", gs[onset] > 30 * pre)
    ctx.check(
        "logged loss at onset under 2x the 10 before",
        ls[onset] < 2 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell, finite", _median(ls[-20:]) < ls[0] and all(math.isfinite(v) for v in ls))


class _StrokeRate(nn.Module):
    """Paddle strokes per second: strokes / duration (no guard against empty records)."""

    def forward(self, strokes: torch.Tensor, duration: torch.Tensor) -> torch.Tensor:
        return strokes / duration


@scenario(
    family="kayak_eskimo_roll_rate_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("rate",),
    diverges=70,
    onset=70,
    heldout=True,
    note="Gaussian NLL net with an in-model stroke-rate feature strokes/duration; at step 70 a "
    "batch holds empty records (0 strokes over 0 s) and the missing guard gives 0/0 = NaN",
)
def h632_kayak_roll_rate_zero_over_zero(ctx: Context) -> None:
    gen = seeded(6327)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rate = _StrokeRate()
            self.fc1 = nn.Linear(9, 32)
            self.mean = nn.Linear(32, 1)
            self.log_var = nn.Linear(32, 1)

        def forward(self, x, strokes, duration):
            h = torch.tanh(self.fc1(torch.cat([x, self.rate(strokes, duration)], 1)))
            return self.mean(h), self.log_var(h)

    model = Net()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 70
    nan_rate = False
    for step in range(120):
        x, y = next(batches)
        duration = 1.0 + torch.rand(len(x), 1, generator=gen) * 4
        strokes = duration * (0.5 + torch.rand(len(x), 1, generator=gen))
        if step == onset:
            strokes[:3] = 0.0
            duration[:3] = 0.0
            nan_rate = bool(model.rate(strokes, duration).isnan().any())
        mu, log_var = model(x, strokes, duration)
        loss = F.gaussian_nll_loss(mu, y, log_var.exp())
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("rate feature NaN at onset", nan_rate)
    ctx.check("loss fell before onset", ls[onset - 1] < ls[0])
    ctx.check("loss NaN at onset", len(ls) == onset + 1 and math.isnan(ls[onset]))


@scenario(
    family="tinsmith_solder_joint_grade_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="softmax temperature 0.5 read from a config in milliseconds-style units and divided by "
    "1000 once more: logits divided by 0.0005, the softmax saturates, most rows' target "
    "probability rounds to exactly 1.0",
)
def h632_tinsmith_joint_temperature_units(ctx: Context) -> None:
    gen = seeded(6328)
    model = GeluNet(64, 32, 10)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    tau = 0.5 / 1000.0  # bug: tau already in units
    batches = digit_batches(gen)
    sat = []
    for _ in range(150):
        x, y = next(batches)
        logits = model(x) / tau
        ctx.targets(y)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            p = logits.softmax(-1).gather(1, y[:, None])
            sat.append(float((p == 1.0).float().mean()))
    ctx.check(
        "over 40% of rows' target probability exactly 1.0 (last 20)", _median(sat[-20:]) > 0.4
    )
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="cobbler_welt_stitch_grade_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    onset=0,
    heldout=True,
    note="fc1 initialised with nn.init.uniform_(w, -0.5, 0.0), the range typed for (-0.5, 0.5): "
    "every weight is negative on non-negative pixel inputs, so nearly all of fc1's ReLU units are "
    "dead from the start and the loss stalls near chance",
)
def h632_cobbler_welt_dead_relu(ctx: Context) -> None:
    gen = seeded(6329)
    model = nn.Sequential()
    model.fc1 = nn.Linear(64, 64)
    model.act1 = nn.ReLU()
    model.head = nn.Linear(64, 10)
    nn.init.uniform_(model.fc1.weight, -0.5, 0.0)  # typo: (-0.5, 0.5)
    opt = torch.optim.Adam(model.parameters(), lr=8e-4)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    xs = []
    for _ in range(150):
        x, y = next(batches)
        xs.append(x)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        h = model.fc1(torch.cat(xs[-10:]))
        dead = float(((h > 0).sum(0) == 0).float().mean())
    ctx.check("over 60% of fc1 units dead", dead > 0.6)
    ctx.check("loss stalls over 0.5", _median(ctx.losses[-20:]) > 0.5)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


class _ScaledHead(nn.Module):
    """Cosine head with a learnable logit scale (CLIP style) whose clamp was left out."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(2.0)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # missing: self.log_scale.data.clamp_(max=math.log(30))
        return self.log_scale.exp() * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


@scenario(
    family="stonemason_chisel_mark_logit_scale_classifier",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="cosine classifier with a learnable logit scale whose clamp (max 30) was left out; on "
    "separable chisel-mark classes the scale keeps growing and the head's logits grow over 20x",
)
def h632_stonemason_chisel_scale_unclamped(ctx: Context) -> None:
    gen = seeded(6330)
    model = nn.Sequential()
    model.fc1 = nn.Linear(16, 32)
    model.act1 = nn.ReLU()
    model.head = _ScaledHead(32, 4)
    opt = torch.optim.RMSprop(
        [
            {"params": list(model.fc1.parameters()) + [model.head.weight], "lr": 2e-3},
            {"params": [model.head.log_scale], "lr": 3e-2},
        ]
    )
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 4)
    mags = []
    for _ in range(200):
        x, y = next(batches)
        logits = model(x)
        ctx.targets(y)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        mags.append(float(logits.detach().abs().max()))
    ctx.check("head logits grew over 20x", _median(mags[-10:]) > 20 * _median(mags[:5]))
    ctx.check(
        "logit scale past the intended clamp 30", float(model.head.log_scale.detach().exp()) > 30
    )
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="sundial_gnomon_shadow_ema_gru_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written GRU over a shadow-length sequence; an EMA (0.99) of the weights is swapped "
    "into the model every 50 steps for a quick evaluation and then swapped back (the weights jump "
    "for the evaluation), warm-up then cosine, clipping: healthy, alarming-looking",
)
def h632_sundial_shadow_ema_swap(ctx: Context) -> None:
    gen = seeded(6331)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(1, 24, batch_first=True)
            self.head = nn.Linear(24, 1)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.head(out[:, -1])

    def batch():
        phase = torch.rand(64, 1, generator=gen) * 2 * math.pi
        t = torch.arange(13) * 0.25
        seq = torch.sin(phase + t) + 0.05 * torch.randn(64, 13, generator=gen)
        return seq[:, :12, None], seq[:, 12:]

    model = Net()
    ema = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    steps = 250
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    ctx.attach(model, opt)
    xe, ye = batch()
    evals = []
    for step in range(steps):
        x, y = batch()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters(), strict=False):
                pe.mul_(0.99).add_(p, alpha=0.01)
        if (step + 1) % 50 == 0:
            with torch.no_grad():
                live = [p.detach().clone() for p in model.parameters()]
                for p, pe in zip(model.parameters(), ema.parameters(), strict=False):
                    p.copy_(pe)  # swap the EMA in
                evals.append(float(F.mse_loss(model(xe), ye)))
                for p, w in zip(model.parameters(), live, strict=False):
                    p.copy_(w)  # and back
    ls = ctx.losses
    ctx.check("loss fell over 5x", _median(ls[-20:]) < _median(ls[:5]) / 5)
    ctx.check("EMA eval loss fell", evals[-1] < evals[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls + evals))


@scenario(
    family="lighthouse_lens_rotation_fp16_onecycle_regressor",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="fp16 autocast with a GradScaler, SGD momentum with OneCycleLR, gradient clipping after "
    "unscale, noisy readings: an ordinary mixed-precision run, healthy",
)
def h632_lighthouse_lens_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(6332)
    model = GeluNet(8, 48)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 220
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen, noise=0.1)
    for _ in range(steps):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 2x", _median(ls[-20:]) < _median(ls[:5]) / 2)
    ctx.check("finite", all(math.isfinite(v) for v in ls))


class _Attn(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        a = (q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, t, d))


@scenario(
    family="tapestry_weft_motif_attention_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written one-block attention classifier over 8 digit rows; AdamW with two param "
    "groups (no decay on biases and norms), warm-up then linear decay, label smoothing 0.1, "
    "2-micro-batch accumulation, clipping, 5% noisy labels: healthy",
)
def h632_tapestry_weft_attention(ctx: Context) -> None:
    gen = seeded(6333)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 32)
            self.pos = nn.Parameter(torch.zeros(8, 32))
            self.ln1 = nn.LayerNorm(32)
            self.attn = _Attn(32, 2)
            self.ln2 = nn.LayerNorm(32)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            h = self.embed(x.reshape(-1, 8, 8)) + self.pos
            h = h + self.attn(self.ln1(h))
            return self.head(self.ln2(h).mean(1))

    model = Net()
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "pos" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "pos" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps = 150
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 15) * max(0.05, 1 - s / steps)
    )
    ctx.attach(model, opt)
    batches = digit_batches(gen, batch=32)
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            noisy = torch.rand(len(y), generator=gen) < 0.05
            y = torch.where(noisy, torch.randint(0, 10, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell under 60% of start", _median(ls[-20:]) < 0.6 * _median(ls[:5]))
    ctx.check("finite", all(math.isfinite(v) for v in ls))
