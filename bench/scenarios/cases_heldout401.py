"""Held-out set 401 (``h401_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: an icicle drip-count Poisson net whose log-rate module takes log(relu(z)) with no floor
(log 0), a marbling-paper comb-drift tanh regressor whose OneCycleLR max_lr is typed 1.0 for 0.1
(the rate passes 2/sharpness), a sauna loyly humidity-rise regressor whose smoothness-penalty
weight table has 5e4 for 5e-4 at one step (Adam's second moment poisoned), a salt-pan brine
density regressor fed one refractometer's shard in specific-gravity points (x1000: one corrupted
batch), a harp pedal-buzz classifier whose layer-wise lr decay exponent is multiplied by 10 (the
lower layers frozen), a yodel register-break classifier whose temperature anneal has its floor
typed 0.005 for 0.5 (softmax saturates), a stilt-walk sway deep tanh MLP initialised with
std 1.0 (gradients grow through depth), a kite-surf landing BCE net whose curriculum weight is
read in percent at the phase switch (one gradient burst), a sundial shadow regressor whose L2 penalty has its sign
flipped (a slow climb) and a whittling knife-grain classifier trained with nll_loss on raw logits
(the head's logits grow without bound).

Controls: a frost-flower heat-conduction physics-informed network (tanh, residual by
torch.autograd.grad plus balanced boundary terms, Adam then a smaller rate), a tanpura jawari
drone Conv1d classifier (SGD momentum under OneCycleLR, label smoothing, clipping) and a cooper
stave bevel-angle regressor (fp16 autocast with a GradScaler, AdamW with a no-decay group,
accumulation, ReduceLROnPlateau, Huber loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    alter=None,
    backprop=None,
    after=None,
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step. Stops
    after a non-finite loss (once ``ctx.step`` has seen it)."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _landings(gen, batch, d_in, seed, flip=0.1):
    """Binary landing outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.cos(2 * x[:, 1]) > 0.2).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _drones(gen, batch, classes, seed, length=48, channels=2):
    """Drone traces: each class a buzzing partial at its own frequency, plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.12 + 0.7 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.04 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * (1 + 0.3 * torch.sign(torch.sin(3 * f * t)))
        yield x + 0.4 * torch.randn(batch, channels, length, generator=gen), y


class _MLP(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- nonfinite: log(relu(z)) with no floor ---------------------------------------------------------


class _LogRate(nn.Module):
    """The log of the drip rate: log(relu(z)). The floor (relu(z) + 1e-6, once a softplus) was
    dropped when the head was 'simplified'."""

    def forward(self, z):
        return torch.log(F.relu(z))


class _DripNet(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        self.log_rate = _LogRate()
        nn.init.constant_(self.head.bias, 4.0)  # rates start positive

    def forward(self, x):
        return self.log_rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _drips(gen, batch, d_in=8, seed=4011):
    """Drip counts per minute under thaw readings: Poisson with rates from 0.02 to about 8."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(1.3 * x @ w - 0.6)
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="icicle_drip_count_relu_poisson_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("log_rate",),
    diverges=105,
    heldout=True,
    note="Icicle drip-count Poisson regressor; the log-rate module computes log(relu(z)) after "
    "its floor (a softplus, later relu + 1e-6) was dropped in a 'simplification'. As the net "
    "fits the low-rate thaw readings a row's pre-activation goes negative, the rate is exactly "
    "0, log 0 = -inf and the Poisson NLL exp(log_rate) - y * log_rate is non-finite.",
)
def h401_icicle_drip_log_zero_rate(ctx) -> None:
    gen = seeded(4011)
    model = _DripNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    batches = _drips(gen, 64)
    zero_rate = {}

    def alter(step, x, y):
        with torch.no_grad():
            z = model.head(model.act2(model.fc2(model.act1(model.fc1(x))))).squeeze(-1)
            if bool((F.relu(z) == 0).any()) and "step" not in zero_rate:
                zero_rate["step"] = step
        return x, y

    def loss_fn(out, y):
        return F.poisson_nll_loss(out, y, log_input=True, full=False)

    ran = _loop(ctx, model, opt, batches, 200, loss_fn, alter=alter)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite within the run", bad is not None and ran == bad + 1)
    ctx.check(
        "a rate is exactly 0 in the batch of the first non-finite loss",
        zero_rate.get("step") == bad,
    )
    ctx.check("the losses before it are finite", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check("the loss is first non-finite at step 105", bad == 105)


# -- sharpness_above_limit: OneCycleLR max_lr typed 1.0 for 0.1 ---------------------------------


@scenario(
    family="marbling_paper_comb_drift_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Marbling-paper comb-drift tanh regressor on plain SGD under OneCycleLR whose max_lr is "
    "typed 1.0 for 0.1. The warm-up from max_lr / 25 takes the rate past 2 / sharpness "
    "(power iteration) and the loss blows up; at the intended 0.1 lr x sharpness stays under 2.",
)
def h401_marbling_comb_onecycle_max_lr(ctx) -> None:
    gen = seeded(4012)
    model = _MLP(10, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 300
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1.0, total_steps=steps, pct_start=0.5, anneal_strategy="linear"
    )
    batches = _readings(gen, 64, 10, 4012)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 10, 4012))
    sharp = {}

    def before(step):
        if step % 10 == 0 and step <= 100:
            sharp[step] = (opt.param_groups[0]["lr"], _sharpness(model, F.mse_loss, *probe))

    _loop(ctx, model, opt, batches, steps, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    blow = next((i for i in range(1, len(ls)) if not ls[i] < 100 * min(ls[:i])), len(ls))
    before_blow = {k: v for k, v in sharp.items() if k < blow}
    lr0, lam0 = sharp[0]
    ctx.check("lr x sharpness under 2 at step 0", lr0 * lam0 < 2)
    crossed = [k for k, (lr, lam) in before_blow.items() if lr * lam > 2]
    ctx.check("lr x sharpness past 2 before the blow-up", bool(crossed))
    top = max(lam for _, lam in before_blow.values())
    ctx.check("the intended max_lr 0.1 stays under 2 / sharpness", 0.1 * top < 2)
    bad = _first_bad(ctx.losses)
    upto = ctx.losses[: bad if bad is not None else len(ctx.losses)]
    ctx.check(
        "the loss blows up to over 100x its lowest value",
        bad is not None or max(upto) > 100 * min(upto),
    )


# -- adam_second_moment_poisoned: a penalty weight typed 5e4 for 5e-4 at one step ---------------


@scenario(
    family="sauna_loyly_humidity_rise_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Sauna loyly humidity-rise GELU regressor on Adam with a smoothness penalty whose "
    "per-phase weight table has 5e4 for 5e-4 in the phase starting at step 100 (one step long). "
    "That one gradient is over 1000x the usual; Adam's second moment fills and the per-weight "
    "updates stall for the rest of the run while the gradients are not smaller.",
)
def h401_sauna_loyly_penalty_weight_typo(ctx) -> None:
    gen = seeded(4013)
    model = _MLP(12, 48, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 12, 4013)
    weights = {0: 5e-4, 100: 5e4, 101: 5e-4}
    w = {"now": 5e-4}
    updates: list[float] = []
    prev = {"p": _flat(model)}

    def before(step):
        w["now"] = weights.get(step, w["now"])

    def backprop(step, loss):
        pen = sum((p[:, 1:] - p[:, :-1]).pow(2).sum() for p in model.parameters() if p.dim() == 2)
        return loss + w["now"] * pen

    def after(step):
        p = _flat(model)
        updates.append(float((p - prev["p"]).abs().median()))
        prev["p"] = p

    _loop(ctx, model, opt, batches, 220, F.mse_loss, before=before, backprop=backprop, after=after)
    g = ctx.grad_norms
    ctx.check(
        "the gradient at step 100 is over 1000x the median before",
        g[100] > 1000 * _median(g[60:100]),
    )
    ctx.check(
        "median per-weight update over steps 120-200 under a tenth of steps 60-100",
        _median(updates[120:200]) < 0.1 * _median(updates[60:100]),
    )
    ctx.check(
        "the gradients after are not smaller than before",
        _median(g[120:200]) > 0.5 * _median(g[60:100]),
    )
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- data_outlier: one refractometer's shard in specific-gravity points -------------------------


@scenario(
    family="salt_pan_brine_density_silu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Salt-pan brine-density SiLU regressor; the step-120 batch comes from one "
    "refractometer's shard logged in specific-gravity points (1120 for 1.120), so its targets "
    "are x1000 after the same offset. Loss and gradient jump over 20x for that batch, clipping "
    "at 1.0 holds the step and the run recovers.",
)
def h401_salt_pan_brine_sg_points_shard(ctx) -> None:
    gen = seeded(4014)
    model = _MLP(10, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    batches = _readings(gen, 64, 10, 4014)

    def alter(step, x, y):
        if step == 120:
            y = y * 1000.0
        return x, y

    _loop(ctx, model, opt, batches, 220, F.mse_loss, alter=alter, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 120 over 100x the median before", ls[120] > 100 * _median(ls[100:120]))
    ctx.check("gradient at step 120 over 20x the median before", g[120] > 20 * _median(g[100:120]))
    ctx.check("the run recovers", _mean(ls[-20:]) < 2 * _mean(ls[100:120]))
    ctx.check("the loss stays finite", _finite(ls))


# -- update_ratio_out_of_range: layer-wise lr decay exponent x10 --------------------------------


@scenario(
    family="harp_pedal_buzz_layerwise_relu_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Harp pedal-buzz ReLU classifier on Adagrad with layer-wise lr decay 0.3 ** (depth - i); "
    "the exponent was written 10 * (depth - i) (a copy of a 10-layer config's stride), so fc1 "
    "runs at 4e-11 and fc2 at 6e-6 of the head's rate: fc1 and fc2 barely move while receiving "
    "gradients and the head alone learns.",
)
def h401_harp_pedal_layer_decay_exponent(ctx) -> None:
    gen = seeded(4015)
    model = _MLP(16, 48, out=6)
    lr, decay, depth = 0.05, 0.3, 2
    layers = [model.fc1, model.fc2, model.head]
    groups = [
        {"params": m.parameters(), "lr": lr * decay ** (10 * (depth - i))}
        for i, m in enumerate(layers)
    ]
    opt = torch.optim.Adagrad(groups, lr=lr)
    batches = _grades(gen, 64, 16, 6, 4015, spread=1.6)
    start = {
        n: m.weight.detach().clone()
        for n, m in (("fc1", model.fc1), ("fc2", model.fc2), ("head", model.head))
    }
    got = {"fc1": 0.0}

    def inspect(step):
        got["fc1"] = max(got["fc1"], float(model.fc1.weight.grad.norm()))

    _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, inspect=inspect)
    ctx.check(
        "fc1 moves under 1e-5 of its norm", _rel_change(start["fc1"], model.fc1.weight) < 1e-5
    )
    ctx.check(
        "fc2 moves under 1e-4 of its norm", _rel_change(start["fc2"], model.fc2.weight) < 1e-4
    )
    ctx.check("fc1 receives gradients", got["fc1"] > 1e-3)
    ctx.check("the head moves over 5%", _rel_change(start["head"], model.head.weight) > 0.05)


# -- softmax_collapse: a temperature anneal without its floor -----------------------------------


class _RegisterNet(nn.Module):
    def __init__(self, d_in=16, hidden=48, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = 1.0

    def logits(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def forward(self, x):
        return self.logits(x) / self.temperature


@scenario(
    family="yodel_register_break_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=14,
    note="Yodel register-break GELU classifier whose softmax temperature is annealed as "
    "max(0.95 ** step, floor) with the floor typed 0.005 for 0.5, so from step 14 the "
    "temperature falls below 0.5 and on to 0.005: the target probability rounds to exactly 1.0 "
    "for most rows, where at the intended floor it does not on the same logits.",
)
def h401_yodel_register_temperature_no_floor(ctx) -> None:
    gen = seeded(4016)
    model = _RegisterNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 16, 5, 4016, spread=1.0)
    seen: list[tuple[float, float]] = []

    def before(step):
        model.temperature = max(0.95**step, 0.005)

    def alter(step, x, y):
        if step >= 170:
            with torch.no_grad():
                z = model.logits(x)
                seen.append(
                    (collapsed_fraction(z / model.temperature, y), collapsed_fraction(z / 0.5, y))
                )
        return x, y

    _loop(
        ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, before=before, alter=alter
    )
    ctx.check(
        "over half the rows collapse over the last 30 steps", _mean([a for a, _ in seen]) > 0.5
    )
    ctx.check("under 5% collapse at the intended floor 0.5", _mean([b for _, b in seen]) < 0.05)
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- exploding_gradients: a deep tanh MLP initialised with std 1.0 ------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in=12, width=32, depth=10, std=None):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(
                m.weight, std=std if std is not None else 1.0 / math.sqrt(m.in_features)
            )
            nn.init.zeros_(m.bias)
        self.outs: list[torch.Tensor] = []

    def forward(self, x):
        self.outs = []
        for m in self.layers:
            z = m(x)
            if z.requires_grad:
                z.retain_grad()
            self.outs.append(z)
            x = torch.tanh(z)
        return self.head(x).squeeze(-1)


def _depth_ratio(model) -> float:
    first, last = model.outs[0].grad, model.outs[-1].grad
    return float(first.norm() / last.norm().clamp_min(1e-20))


@scenario(
    family="stilt_walk_sway_deep_tanh_mlp",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Stilt-walk sway 10-layer tanh regressor initialised with nn.init.normal_(std=1.0) "
    "(a port of a Keras 'RandomNormal(stddev=1.0)' config) for 1/sqrt(fan_in): the net sits in "
    "the chaotic phase and dL/d(layers.0 output) is over 20x dL/d(layers.9 output), against "
    "under 5x at the intended init. Clipped at 1.0.",
)
def h401_stilt_walk_init_std_one(ctx) -> None:
    gen = seeded(4017)
    model = _DeepTanh(std=1.0)
    ref = _DeepTanh()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 12, 4017)
    probe = next(_readings(torch.Generator().manual_seed(3), 128, 12, 4017))
    F.mse_loss(ref(probe[0]), probe[1]).backward()
    ref_ratio = _depth_ratio(ref)
    ratios: list[float] = []

    def inspect(step):
        ratios.append(_depth_ratio(model))

    _loop(ctx, model, opt, batches, 150, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check("gradient ratio layers.0 / layers.9 over 20x at the start", ratios[0] > 20)
    ctx.check("median ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at the intended init", ref_ratio < 5)
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- gradient_spike: a curriculum weight read in percent at the phase switch --------------------


@scenario(
    family="kite_surf_jump_landing_relu_bce_net",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=130,
    note="Kite-surf jump-landing ReLU BCE net (10% noisy labels) whose curriculum switches phase "
    "at step 130; the switch handler reads the new phase's loss weight from the raw config in "
    "percent (60) before the normaliser divides it by 100 from the next step on. One gradient "
    "over 30x on a clean batch with an ordinary logged loss; clipped at 5, recovers.",
)
def h401_kite_surf_curriculum_percent_weight(ctx) -> None:
    gen = seeded(4018)
    model = _MLP(12, 48)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    batches = _landings(gen, 64, 12, 4018)
    raw = {"phase1": 100, "phase2": 60}

    def weight(step):
        if step < 130:
            return raw["phase1"] / 100
        if step == 130:
            return raw["phase2"]  # the switch handler: not yet normalised
        return raw["phase2"] / 100

    def backprop(step, loss):
        return weight(step) * loss

    _loop(
        ctx,
        model,
        opt,
        batches,
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=5.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 130 over 30x the median before", g[130] > 30 * _median(g[110:130]))
    ctx.check("the logged loss at step 130 is ordinary", ls[130] < 2 * _median(ls[110:130]))
    ctx.check("the run recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[110:130]))
    ctx.check("the loss stays finite", _finite(ls))


# -- loss_divergence: an L2 penalty with its sign flipped ---------------------------------------


@scenario(
    family="sundial_gnomon_shadow_l2_sign_tanh_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Sundial gnomon-shadow tanh regressor on NAdam with a hand-written L2 penalty added as "
    "loss - 0.3 * sum(w ** 2) (the sign flipped when the penalty moved into a helper returning "
    "'regularisation gain'). The weights grow steadily and the data loss climbs slowly, no jump, "
    "finite.",
)
def h401_sundial_shadow_l2_sign(ctx) -> None:
    gen = seeded(4019)
    model = _MLP(10, 48, act=nn.Tanh)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    batches = _readings(gen, 64, 10, 4019)
    wd = 0.3
    w0 = float(_flat(model).norm())

    def backprop(step, loss):
        return loss - wd * sum(p.pow(2).sum() for p in model.parameters() if p.dim() == 2)

    _loop(ctx, model, opt, batches, 300, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    means = [_mean(ls[i : i + 10]) for i in range(0, len(ls), 10)]
    lowest = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 20))
    ctx.check("the weights grow over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("the loss climbs to over 3x its lowest 20-step mean", _mean(ls[-20:]) > 3 * lowest)
    ctx.check(
        "no 2x jump between 10-step means",
        all(b < 2 * a for a, b in zip(means, means[1:], strict=False)),
    )
    ctx.check("the loss stays finite", _finite(ls))


# -- output_logit_divergence: nll_loss on raw logits ----------------------------------------------


@scenario(
    family="whittling_knife_grain_raw_nll_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Whittling knife-grain ReLU classifier trained with F.nll_loss on the head's raw output; "
    "the model's LogSoftmax was moved into the export wrapper and the training script kept "
    "nll_loss. The target logit is pushed up without bound: the head's largest logit grows over "
    "20x and the 'loss' goes far below zero.",
)
def h401_whittling_grain_raw_nll(ctx) -> None:
    gen = seeded(4020)
    model = _MLP(16, 48, out=4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    batches = _grades(gen, 64, 16, 4, 4020, spread=1.5)
    probe = next(_grades(torch.Generator().manual_seed(5), 256, 16, 4, 4020, spread=1.5))[0]
    peaks: list[float] = []

    def after(step):
        with torch.no_grad():
            peaks.append(float(model(probe).abs().max()))

    with torch.no_grad():
        start = float(model(probe).abs().max())
    _loop(ctx, model, opt, batches, 200, F.nll_loss, classifier=True, after=after)
    ctx.check("the largest logit grows over 20x", peaks[-1] > 20 * start)
    ctx.check("still growing over the last 50 steps", peaks[-1] > 1.2 * peaks[-50])
    ctx.check("the loss goes below -10", ctx.losses[-1] < -10)
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- healthy: a physics-informed net for steady heat conduction ----------------------------------


class _HeatPINN(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(1, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.fc3 = nn.Linear(hidden, hidden)
        self.act3 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act3(self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))))


def _source(x):
    """Heat source of the frost-flower film: -u'' = pi^2 sin(pi x) + 4 pi^2 sin(2 pi x) / 2."""
    return math.pi**2 * torch.sin(math.pi * x) + 2 * math.pi**2 * torch.sin(2 * math.pi * x)


def _exact(x):
    return torch.sin(math.pi * x) + 0.5 * torch.sin(2 * math.pi * x)


@scenario(
    family="frost_flower_heat_conduction_tanh_pinn",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Frost-flower film steady heat-conduction PINN: tanh MLP u(x) on [0, 1], residual "
    "u'' + f(x) by torch.autograd.grad on the inputs at 64 resampled collocation points, "
    "boundary terms u(0) = u(1) = 0; the residual is divided by the source's scale (pi^4) and "
    "the boundary term weighted 10 to balance them. Adam at 1e-2 then 1e-3 from step 150 "
    "(MultiStepLR). Control.",
)
def h401_frost_flower_heat_pinn(ctx) -> None:
    gen = seeded(4021)
    model = _HeatPINN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[150], gamma=0.1)
    scale = math.pi**4
    ctx.attach(model, opt)
    edges = torch.tensor([[0.0], [1.0]])
    grid = torch.linspace(0, 1, 101)[:, None]
    for _step in range(260):
        x = torch.rand(64, 1, generator=gen).requires_grad_(True)
        u = model(x)
        du = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
        d2u = torch.autograd.grad(du.sum(), x, create_graph=True)[0]
        residual = (d2u + _source(x)).pow(2).mean() / scale
        boundary = model(edges).pow(2).mean()
        loss = residual + 10.0 * boundary
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(loss.item()):
            break
    with torch.no_grad():
        err = float((model(grid) - _exact(grid)).abs().max())
    ctx.check("the loss fell over 10x", _fell(ctx.losses, ratio=0.1))
    ctx.check("max error against the exact solution under 0.1", err < 0.1)
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- healthy: a Conv1d drone classifier under OneCycleLR -----------------------------------------


class _DroneConv(nn.Module):
    def __init__(self, channels=2, classes=6, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).squeeze(-1))


@scenario(
    family="tanpura_jawari_drone_relu_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Tanpura jawari-drone ReLU Conv1d classifier: SGD momentum 0.9 with weight decay under "
    "OneCycleLR (max_lr 0.1), label smoothing 0.1, clipping at 1.0, noisy traces. Control.",
)
def h401_tanpura_drone_onecycle(ctx) -> None:
    gen = seeded(4022)
    model = _DroneConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    batches = _drones(gen, 32, 6, 4022)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, batches, steps, loss_fn, classifier=True, clip=1.0, sched=sched)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- healthy: fp16 autocast with a GradScaler -----------------------------------------------------


@scenario(
    family="cooper_stave_bevel_angle_fp16_silu_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cooper stave bevel-angle SiLU regressor: fp16 autocast with a torch.amp.GradScaler, "
    "AdamW with biases in a no-decay group, accumulation over 2, ReduceLROnPlateau on a "
    "held-out batch, clipping at 1.0, Huber loss. Control.",
)
def h401_cooper_stave_fp16_accum(ctx) -> None:
    gen = seeded(4023)
    model = _MLP(12, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    batches = _readings(gen, 32, 12, 4023)
    held = next(_readings(torch.Generator().manual_seed(9), 256, 12, 4023))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("the loss stays finite", _finite(ctx.losses))
