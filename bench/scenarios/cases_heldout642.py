"""Held-out set 642 (``h642_``): 10 faults over 10 causes and 3 healthy controls, all
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


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class GeluNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class ReluClassifier(nn.Module):
    def __init__(self, n_in: int = 16, hidden: int = 48, k: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _loop(ctx, model, opt, batches, steps, loss_fn, classifier=False, clip=None, sched=None):
    for _ in range(steps):
        x, y = next(batches)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        loss.backward()
        if clip is not None:
            ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        if sched is not None:
            sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="sugar_boiler_hard_crack_fp16_gelu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 80 a new syrup-pressure gauge driver reports "
    "pascals instead of kilopascals (a units field left at its default), fc1's fp16 output "
    "overflows to inf and the loss is non-finite; the same batch is finite in float32",
)
def h642_sugar_boiler_pascal_fp16(ctx: Context) -> None:
    gen = seeded(6421)
    model = GeluNet(8, 32)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", o.detach()))
    onset = 80
    for step in range(130):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 2] = (x[:, 2] + 101.3) * 1000.0  # pascals, not kPa
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
    family="dry_stone_hedge_batter_decay_sign_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a hand-written weight decay added to the loss with the wrong sign (loss - wd * sum w^2 "
    "after a refactor turned 'penalty' into 'reward'): the weights grow where the wall-batter "
    "data do not pin them, tanh units saturate and the loss climbs slowly after a first fall",
)
def h642_dry_stone_batter_decay_sign(ctx: Context) -> None:
    gen = seeded(6422)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _regression(gen)
    wd = 0.12
    w0 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    for _ in range(200):
        x, y = next(batches)
        mse = F.mse_loss(model(x), y)
        penalty = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        (mse - wd * penalty).backward()  # bug: sign of the decay term
        opt.step()
        ctx.step(mse)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    w1 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    low = min(range(len(ls)), key=lambda i: _median(ls[max(0, i - 5) : i + 6]))
    ctx.check("weight norm grew over 3x", w1 > 3 * w0)
    ctx.check(
        "loss of the last 20 over 3x its running minimum",
        _median(ls[-20:]) > 3 * _median(ls[max(0, low - 5) : low + 6]),
    )
    ctx.check("minimum before step 150", low < 150)
    ctx.check("finite", _finite(ls))


@scenario(
    family="bell_ringing_change_method_accum_relu_classifier",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=95,
    heldout=True,
    note="gradient accumulation over 4 micro-batches; at step 95 an auxiliary-loss weight read "
    "from a config reload comes in as 40.0 for 0.4 (a percent field) for that one step: one "
    "gradient burst over 30x, the logged loss is ordinary, clipping at 1.0 saves the run",
)
def h642_bell_ringing_loss_weight_reload(ctx: Context) -> None:
    gen = seeded(6423)
    model = ReluClassifier(16, 48, 4)
    opt = torch.optim.SGD(model.parameters(), lr=4e-2, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 4, batch=32)
    onset, accum = 95, 4
    for step in range(180):
        logged = 0.0
        weight = 40.0 if step == onset else 1.0  # bug on reload: percent read as a factor
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            (weight * loss / accum).backward()
            logged += float(loss.detach()) / accum
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(gs[onset - 10 : onset])
    ctx.check("gradient at onset over 30x the 10 before", gs[onset] > 30 * pre)
    ctx.check("gradient after onset back under 3x", _median(gs[onset + 5 : onset + 25]) < 3 * pre)
    ctx.check(
        "logged loss at onset under 2x the 10 before",
        ls[onset] < 2 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell, finite", ls[-1] < ls[0] and _finite(ls))


@scenario(
    family="cheese_wheel_rind_brine_huber_gelu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="one bad shard at step 130: a dairy's brine-time targets exported in seconds instead of "
    "hours (every target x3600); Huber loss, clipping at 1.0, the loss spikes and recovers",
)
def h642_cheese_rind_seconds_shard(ctx: Context) -> None:
    gen = seeded(6424)
    model = GeluNet(8, 32)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 130
    for step in range(220):
        x, y = next(batches)
        if step == onset:
            y = y * 3600.0 + 3600.0  # seconds, not hours
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
        "gradient at onset over 5x the 10 before", gs[onset] > 5 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "recovers: last 20 under 2x pre-onset",
        _median(ls[-20:]) < 2 * _median(ls[onset - 20 : onset]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="boomerang_return_arc_frozen_fc2_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups copied from a fine-tuning config; fc2's group kept lr 0.0 from the "
    "freeze stage (the unfreeze edit went to the wrong group), so fc2 never moves while fc1 "
    "and the head train",
)
def h642_boomerang_arc_frozen_group(ctx: Context) -> None:
    gen = seeded(6425)
    model = GeluNet(8, 32)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 2e-3},
            {"params": model.fc2.parameters(), "lr": 0.0},  # left frozen
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    ctx.attach(model, opt)
    w2 = model.fc2.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    _loop(ctx, model, opt, _regression(gen), 180, F.mse_loss)
    ctx.check("fc2 did not move", bool(torch.equal(model.fc2.weight.detach(), w2)))
    rel1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    ctx.check("fc1 moved over 1e-2 relative", rel1 > 1e-2)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="hot_air_balloon_envelope_gain_deep_tanh_mlp",
    optimizer="ASGD",
    cause="exploding_gradients",
    where=("fc0",),
    diverges=None,
    heldout=True,
    note="a 10-layer tanh MLP for envelope-temperature lift, every layer initialised with "
    "xavier gain 4.0 where 5/3 was meant (the logistic-sigmoid gain pasted in): the gradient grows "
    "backwards through depth, fc0's over 10x the last layer's; clipping keeps it finite",
)
def h642_balloon_envelope_init_gain(ctx: Context) -> None:
    gen = seeded(6426)
    torch.manual_seed(6426)

    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for i in range(10):
                lin = nn.Linear(8 if i == 0 else 48, 48)
                nn.init.xavier_normal_(lin.weight, gain=4.0)  # meant 5/3
                nn.init.zeros_(lin.bias)
                self.add_module(f"fc{i}", lin)
            self.head = nn.Linear(48, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for i in range(10):
                x = torch.tanh(getattr(self, f"fc{i}")(x))
            return self.head(x)

    model = Deep()
    opt = torch.optim.ASGD(model.parameters(), lr=5e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    ratios = []
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(float(model.fc0.weight.grad.norm() / model.fc9.weight.grad.norm()))
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("fc0 gradient over 10x fc9's (median)", _median(ratios) > 10)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="archery_bowstring_serving_manual_bce_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("head",),
    diverges=117,
    onset=117,
    heldout=True,
    note="a hand-written BCE, -(y log p + (1-y) log(1-p)) with p = sigmoid(head), whose "
    "clamp(p, eps, 1-eps) was dropped in a refactor; as the serving-wear classifier grows "
    "confident p rounds to exactly 1.0 and 0 * log 0 gives a NaN loss",
)
def h642_archery_serving_bce_log0(ctx: Context) -> None:
    gen = seeded(6427)
    model = ReluClassifier(16, 48, 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    w = torch.randn(16, generator=gen)
    one_at = None
    for step in range(300):
        x = torch.randn(64, 16, generator=gen)
        y = (x @ w > 0).float()[:, None]
        p = torch.sigmoid(model(x))
        if one_at is None and bool(((p == 1.0) | (p == 0.0)).any()):
            one_at = step
        loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()  # bug: no clamp
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("a probability exactly 0 or 1 in the run", one_at is not None)
    ctx.check("loss first non-finite at step 117", len(ls) == 118 and not math.isfinite(ls[117]))
    ctx.check("loss finite and falling first", _finite(ls[:117]) and ls[100] < ls[0])


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
    family="snowshoe_binding_sink_depth_cosine_lr_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="plain SGD with a linear warm-up to a peak lr written 2.0 for 0.2 (a decimal dropped "
    "in the sweep file): once the warm-up passes 2/sharpness of the sink-depth regressor the "
    "loss oscillates and blows up",
)
def h642_snowshoe_sink_lr_typo(ctx: Context) -> None:
    gen = seeded(6428)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    lr = 2.0  # typo: 0.2
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.02, total_iters=250)
    ctx.attach(model, opt)
    batches = _regression(gen)
    x0, y0 = next(batches)
    lam0 = _top_eig(model, x0, y0)
    for _ in range(200):
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
    ctx.check("peak lr x sharpness over 2", lr * lam0 > 2)
    ctx.check("ran over 60 steps before blowing up", len(ls) > 60)
    ctx.check(
        "loss blew up over 100x its start", max(ls) > 100 * ls[0] or not math.isfinite(ls[-1])
    )


@scenario(
    family="farrier_hoof_crack_grade_no_decay_head_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="two param groups; the head lands in the no-decay group at lr 3e-2 (its name matched "
    "the 'norm|bias' filter as 'head.bias' and the weight came along), and the hoof-crack "
    "grades are separable: cross-entropy keeps pushing the head's logits, which grow over 20x",
)
def h642_farrier_hoof_head_no_decay(ctx: Context) -> None:
    gen = seeded(6429)
    model = ReluClassifier(16, 48, 4)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": trunk, "lr": 3e-3, "weight_decay": 0.1},
            {"params": model.head.parameters(), "lr": 3e-2, "weight_decay": 0.0},
        ]
    )
    ctx.attach(model, opt)
    w = torch.randn(16, 4, generator=gen)
    peaks, norms = [], []
    for _ in range(200):
        norms.append(float(model.head.weight.detach().norm()))
        x = torch.randn(96, 16, generator=gen)
        top = (x @ w).topk(2, 1).values
        x = x[top[:, 0] - top[:, 1] > 1.0][:64]  # graders only record clear-cut hooves
        y = (x @ w).argmax(1)
        ctx.targets(y)
        logits = model(x)
        peaks.append(float(logits.detach().abs().max()))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("head logits over 20x their start", _median(peaks[-10:]) > 20 * _median(peaks[:5]))
    ctx.check("head weight norm over 3x its start", norms[-1] > 3 * norms[0])
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="fly_tying_hackle_grade_dead_bias_relu_classifier",
    optimizer="Adadelta",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1's bias initialised with constant -2.5 where the recipe said -2.5e-2 (an exponent "
    "dropped in the init helper's call): most of fc1's ReLU units never fire on the hackle "
    "readings, get no gradient and stay dead; the loss stalls far above what the net can reach",
)
def h642_fly_tying_dead_bias_init(ctx: Context) -> None:
    gen = seeded(64210)
    model = ReluClassifier(16, 48, 4)
    nn.init.constant_(model.fc1.bias, -2.5)  # meant -2.5e-2
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 4, batch=128)
    dead = []
    for _ in range(180):
        x, y = next(batches)
        ctx.targets(y)
        pre = model.fc1(x)
        dead.append(float(((pre > 0).sum(0) == 0).float().mean()))
        h = F.relu(model.fc2(F.relu(pre)))
        loss = F.cross_entropy(model.head(h), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 60% of fc1 units dead at the end", dead[-1] > 0.6)
    ctx.check("loss stalls above 1.0 (of chance 1.39)", _median(ctx.losses[-20:]) > 1.0)
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls ---------------------------------------------------------------------------------


@scenario(
    family="pole_vault_plant_takeoff_steplr_silu_regressor",
    optimizer="SGD (momentum)",
    cause="healthy",
    heldout=True,
    note="healthy but alarming-looking: a StepLR that cuts the lr 10x at step 100 (the "
    "practitioner's step schedule); the noisy plant-angle loss sits on a plateau and then "
    "drops sharply at step 100; the run trains",
)
def h642_pole_vault_steplr_drop(ctx: Context) -> None:
    gen = seeded(64211)
    model = GeluNet(8, 32)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.1)
    ctx.attach(model, opt)
    _loop(ctx, model, opt, _regression(gen, batch=4, noise=0.05), 200, F.mse_loss, sched=sched)
    ls = ctx.losses
    ctx.check(
        "loss drops sharply at step 100: 100-120 under 0.6x 80-100",
        _median(ls[100:120]) < 0.6 * _median(ls[80:100]),
    )
    ctx.check("loss fell overall", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="handbell_choir_peal_fp16_onecycle_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="healthy control: fp16 autocast + GradScaler, OneCycleLR, clipping at 1.0 after "
    "unscale_, noisy clapper-timing readings, Huber loss, weight decay",
)
def h642_handbell_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(64212)
    model = GeluNet(8, 48)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=180)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen, noise=0.2)
    for _ in range(180):
        x, y = next(batches)
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
    ctx.check(
        "loss fell: last 20 under 0.6x the first 20", _median(ls[-20:]) < 0.6 * _median(ls[:20])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="marquetry_veneer_figure_tied_autoencoder",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="healthy control: a tied-weight autoencoder of veneer-figure readings (decoder uses "
    "the encoder's transpose) with a label-smoothed figure-class head, param groups, "
    "2-micro-batch accumulation, ReduceLROnPlateau, clipping",
)
def h642_marquetry_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(64213)

    class TiedAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(16, 8)
            self.dec_bias = nn.Parameter(torch.zeros(16))
            self.head = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = torch.tanh(self.enc(x))
            return F.linear(z, self.enc.weight.t(), self.dec_bias), self.head(z)

    model = TiedAE()
    opt = torch.optim.Adagrad(
        [
            {"params": list(model.enc.parameters()) + [model.dec_bias], "lr": 3e-2},
            {"params": model.head.parameters(), "lr": 1.5e-2},
        ]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    basis = torch.randn(6, 16, generator=gen)
    w = torch.randn(6, 4, generator=gen)
    for _ in range(180):
        total = 0.0
        for _ in range(2):
            c = torch.randn(32, 6, generator=gen)
            x = c @ basis / 2 + 0.05 * torch.randn(32, 16, generator=gen)
            y = (c @ w).argmax(1)
            ctx.targets(y)
            rec, logits = model(x)
            loss = F.mse_loss(rec, x) + F.cross_entropy(logits, y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 under 0.6x the first 20", _median(ls[-20:]) < 0.6 * _median(ls[:20])
    )
    ctx.check("finite", _finite(ls))
