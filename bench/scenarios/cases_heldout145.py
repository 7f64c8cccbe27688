"""Held-out set 145 (``h145_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before, and a Hugging Face architecture built from a tiny config.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs (a GRU with OneCycleLR and clipping, a BatchNorm conv net under fp16
autocast with a GradScaler and label smoothing, RAdam with gradient accumulation and
ReduceLROnPlateau on noisy batches, ASGD with a Huber loss).
"""

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


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _regression(gen, n_in: int, batch: int, noise: float = 0.05):
    w = torch.randn(n_in, 1, generator=gen)
    v = torch.randn(n_in, 1, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(n_in)) + 0.5 * torch.sin(x @ v / math.sqrt(n_in))
        yield x, y + noise * torch.randn(batch, 1, generator=gen)


def _clusters(gen, n_in: int, classes: int, batch: int, spread: float = 1.0):
    centres = torch.randn(classes, n_in, generator=gen)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + spread * torch.randn(batch, n_in, generator=gen), y


def _train(
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
    scale=None,
    clip=None,
    sched=None,
    after=None,
    scaler=None,
    accumulate=1,
    forward=None,
):
    """A plain loop: ``accumulate`` micro-batches per optimizer step, ``scale(step)`` multiplies
    the backpropagated loss, ``after(step)`` runs after ``opt.step()``."""
    ctx.attach(model, opt, scaler=scaler)
    forward = forward or (lambda m, x: m(x))
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = forward(model, x)
            loss = loss_fn(out.float(), y)
            total = loss * scale(step) if scale is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if after is not None:
            after(step)
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break


# -- banjo string decay: a deep ReLU net initialised with kaiming gain typed 2.0 per layer -------


class BanjoDecayNet(nn.Module):
    """Predicts a plucked string's decay time from 24 envelope frames."""

    def __init__(self, n_in=24, width=48, depth=8):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(n_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


def _envelopes(gen, batch, frames=24):
    t = torch.arange(frames, dtype=torch.float32)
    while True:
        decay = torch.rand(batch, 1, generator=gen) * 0.2 + 0.02
        x = torch.exp(-decay * t) * (0.5 + torch.rand(batch, 1, generator=gen))
        yield x + 0.02 * torch.randn(batch, frames, generator=gen), 10 * decay


@scenario(
    family="banjo_string_decay_net",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="SGD with momentum 0.9 on an 8-layer ReLU net. The init helper multiplies kaiming's "
    "sqrt(2) gain by a 'gain' argument that was set to 2.0 (meant for a tanh net's "
    "xavier call): every layer doubles the signal, the gradient reaching the first layer is "
    "hundreds of times the head's, and the first SGD steps blow the loss up.",
)
def h145_banjo_decay_init_gain(ctx: Context) -> None:
    gen = seeded(14501)
    model = BanjoDecayNet()
    with torch.no_grad():
        for layer in model.layers:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            layer.weight.mul_(2.0)
            layer.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=3e-5, momentum=0.9)
    batches = _envelopes(gen, 32)
    x0, y0 = next(batches)
    acts = []
    h = x0
    for layer in model.layers:
        h = F.relu(layer(h))
        h.retain_grad()
        acts.append(h)
    F.mse_loss(model.head(h), y0).backward()
    first = float(acts[0].grad.norm())
    last = float(acts[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    _train(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("gradient at layer 0's output is 20x that at the last layer's", first > 20 * last)
    ctx.check(
        "loss blew up (non-finite or 100x its start)",
        not _finite(ctx.losses) or max(ctx.losses) > 100 * ctx.losses[0],
    )


# -- croquet mallet strike: one shard logged ball speed in mm/s instead of m/s -------------------


class CroquetStrike(nn.Module):
    """Regresses the ball's roll distance from mallet-sensor features."""

    def __init__(self, n_in=10, width=48):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, width))
        self.act = nn.Tanh()
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.act(self.body(x)))


@scenario(
    family="croquet_mallet_strike_regressor",
    optimizer="SGD",
    cause="data_outlier",
    diverges=None,
    heldout=True,
    onset=90,
    note="Plain SGD with an MSE loss and gradient clipping at 1.0. One shard of the logs came from a sensor firmware that "
    "writes the ball speed (the target) in mm/s instead of m/s: the batch at step 90 has "
    "targets 1000x too large, its gradient is thousands of times the usual one and the loss "
    "jumps; the clipped update knocks the weights off and the run recovers on clean batches.",
)
def h145_croquet_strike_mm_shard(ctx: Context) -> None:
    gen = seeded(14502)
    model = CroquetStrike()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    onset = 90

    def alter(step, x, y):
        return (x, y * 1000.0) if step == onset else (x, y)

    _train(ctx, model, opt, _regression(gen, 10, 32), 200, F.mse_loss, alter=alter, clip=1.0)
    g = ctx.grad_norms
    before = _mean(g[onset - 20 : onset])
    ctx.check("gradient at the bad batch is 100x the preceding mean", g[onset] > 100 * before)
    ctx.check(
        "loss at the bad batch is 1000x the preceding mean",
        ctx.losses[onset] > 1000 * _mean(ctx.losses[onset - 20 : onset]),
    )
    ctx.check(
        "run finite and back under 2x its pre-onset loss by the end",
        _finite(ctx.losses) and _mean(ctx.losses[-10:]) < 2 * _mean(ctx.losses[onset - 20 : onset]),
    )


# -- billiard break: a BatchNorm conv net whose first conv sits in a param group at lr 1e-8 ------


class BilliardBreakCNN(nn.Module):
    """Classifies 8x8 table-occupancy grids (the digits stand in for them) into 10 break types."""

    def __init__(self, width=12):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * 16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


@scenario(
    family="billiard_break_bn_cnn",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("conv1",),
    diverges=None,
    heldout=True,
    note="Adam with per-layer param groups on a BatchNorm conv net. The stem's group was "
    "meant to have lr 1e-3 but the config reads 1e-8 (a typo in the exponent): conv1's "
    "updates are about 1e-8 of its weights, it stays at its random init while the rest "
    "trains at 1e-3; the loss still falls, more slowly.",
)
def h145_billiard_stem_lr_typo(ctx: Context) -> None:
    gen = seeded(14503)
    model = BilliardBreakCNN()
    rest = [p for n, p in model.named_parameters() if not n.startswith("conv1.")]
    opt = torch.optim.Adam(
        [{"params": model.conv1.parameters(), "lr": 1e-8}, {"params": rest, "lr": 1e-3}]
    )
    w1 = model.conv1.weight.detach().clone()
    w2 = model.conv2.weight.detach().clone()
    _train(ctx, model, opt, digit_batches(gen, 64), 150, F.cross_entropy, classifier=True)
    d1 = float((model.conv1.weight - w1).norm() / w1.norm())
    d2 = float((model.conv2.weight - w2).norm() / w2.norm())
    ctx.check("conv1 moved less than 1e-4 of its norm over the run", d1 < 1e-4)
    ctx.check("conv2 moved more than 1e-2 of its norm", d2 > 1e-2)
    ctx.check("loss fell and stayed finite", _fell(ctx.losses))


# -- tabla stroke classifier: Adagrad at lr 0.5 (a 'well-tuned' value from a linear model) ------


class TablaStrokeMLP(nn.Module):
    """Classifies tabla strokes (na, tin, ge, ke, ...) from 24 spectral features."""

    def __init__(self, n_in=24, width=64, classes=8):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def features(self, x):
        return F.relu(self.fc2(F.relu(self.fc1(x))))

    def forward(self, x):
        return self.head(self.features(x))


@scenario(
    family="tabla_stroke_relu_mlp",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Adagrad with lr 0.5, copied from the logistic-regression baseline's config. "
    "Adagrad's first steps move every parameter by about lr: fc2's biases and weights are "
    "pushed so that most of its ReLU units go negative on every input and never come back; "
    "the loss stalls well above what the net can reach.",
)
def h145_tabla_adagrad_dead_relu(ctx: Context) -> None:
    gen = seeded(14504)
    model = TablaStrokeMLP()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.5)
    batches = _clusters(gen, 24, 8, 64, spread=1.5)
    xp, _ = next(batches)
    with torch.no_grad():
        dead0 = dead_fraction(model.features(xp))
    _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        dead1 = dead_fraction(model.features(xp))
    ctx.check("under 10% of fc2 units dead at init", dead0 < 0.1)
    ctx.check("over half of fc2 units dead at the end", dead1 > 0.5)
    ctx.check("loss finite", _finite(ctx.losses))


# -- stalactite growth: a hand-written L2 term added with the wrong sign ------------------------


class StalactiteGrowth(nn.Module):
    """Regresses a stalactite's yearly growth from drip-rate, CO2 and temperature features."""

    def __init__(self, n_in=8, width=48):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


@scenario(
    family="stalactite_growth_regressor",
    optimizer="AdamW",
    cause="loss_divergence",
    diverges=None,
    heldout=True,
    note="AdamW (its own weight decay off) with a hand-written L2 penalty that was added as "
    "'loss - wd * sum(w**2)' (a sign bug; the data loss is what is logged). The optimizer "
    "climbs the weight norm: the loss first falls, then climbs slowly and steadily for the rest of the run.",
)
def h145_stalactite_l2_sign_bug(ctx: Context) -> None:
    gen = seeded(14505)
    model = StalactiteGrowth()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    wd = 3e-2
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    ctx_losses = ctx.losses

    def penalised(out, y):
        # the logged value is the data loss; the gradient carries the sign-flipped penalty
        l2 = sum(p.pow(2).sum() for p in model.parameters())
        return F.mse_loss(out, y) - wd * l2 + (wd * l2).detach()

    _train(ctx, model, opt, _regression(gen, 8, 32), 300, penalised)
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    low = min(ctx_losses[:100])
    ctx.check("weight norm grew 3x", w1 > 3 * w0)
    ctx.check("loss at the end is 3x its early minimum", _mean(ctx_losses[-20:]) > 3 * low)
    ctx.check("loss finite", _finite(ctx_losses))


# -- whale song call-type classifier: temperature 0.002 where a scale of 500 was meant ----------------------


class WhaleCallNet(nn.Module):
    """Classifies humpback song units into 6 call types from 20 acoustic features."""

    def __init__(self, n_in=20, width=64, classes=6, temperature=1.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, width), nn.GELU(), nn.Linear(width, width))
        self.act = nn.GELU()
        self.head = nn.Linear(width, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act(self.body(x))) / self.temperature


@scenario(
    family="whale_song_call_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="RMSprop on a call-type classifier. The config's 'logit_scale: 500' was read as a "
    "temperature, so the forward divides the logits by 0.002: the softmax saturates, most "
    "rows give their top class a float32 probability of exactly 1.0, and the gradient of "
    "those rows is exactly zero while the wrong ones carry huge losses.",
)
def h145_whale_call_temperature_bug(ctx: Context) -> None:
    gen = seeded(14506)
    model = WhaleCallNet(temperature=0.002)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _clusters(gen, 20, 6, 64, spread=1.2)
    xp, yp = next(batches)
    _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        logits = model(xp)
    frac = collapsed_fraction(logits, yp)
    top = torch.softmax(logits, -1).max(-1).values
    ctx.check("over half the rows put exactly 1.0 on their target", frac > 0.5)
    ctx.check(
        "over 80% of rows have a top probability of exactly 1.0",
        float((top == 1.0).float().mean()) > 0.8,
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- snooker cue-ball spin: a token-count normaliser of 1 instead of the batch's count ----------


class SnookerSpin(nn.Module):
    """Regresses the cue ball's spin rate from cue-tip contact features."""

    def __init__(self, n_in=12, width=64):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


@scenario(
    family="snooker_cue_spin_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    diverges=None,
    heldout=True,
    onset=80,
    note="SGD with Nesterov momentum; the summed squared error is normalised by the number of "
    "valid shots in the batch. At the epoch boundary (step 80) the count comes from an "
    "empty mask and falls back to 1 instead of 64: that one backward is 64x too large, the "
    "batch itself is clean. The loss jumps after the update and recovers.",
)
def h145_snooker_spin_normaliser_bug(ctx: Context) -> None:
    gen = seeded(14507)
    model = SnookerSpin()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    onset = 80

    def scale(step):
        return 64.0 if step == onset else 1.0

    _train(ctx, model, opt, _regression(gen, 12, 64), 200, F.mse_loss, scale=scale)
    g = ctx.grad_norms
    pre = sorted(g[onset - 20 : onset])[10]
    ctx.check("gradient at onset is 30x the preceding median", g[onset] > 30 * pre)
    ctx.check(
        "loss after the step is 3x the pre-onset mean",
        max(ctx.losses[onset + 1 : onset + 5]) > 3 * _mean(ctx.losses[onset - 20 : onset]),
    )
    ctx.check(
        "run finite and recovered to 2x its pre-onset loss",
        _finite(ctx.losses) and _mean(ctx.losses[-10:]) < 2 * _mean(ctx.losses[onset - 20 : onset]),
    )


# -- thatch roof runoff: a gradient-check debug multiplier left in for one step ------------------


class ThatchRunoff(nn.Module):
    """Regresses rain runoff through a thatched roof from pitch, reed depth and rain features."""

    def __init__(self, n_in=10, width=64):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


@scenario(
    family="thatch_roof_runoff_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=60,
    note="Adam (beta2 0.999). A debugging line that multiplies the loss by 1e5 to make tiny "
    "gradients visible was left in on the first validation step (step 60), which also "
    "trains: one gradient 1e5x the usual fills Adam's second moment, and with beta2 0.999 "
    "the updates afterwards are orders of magnitude smaller: the loss stops falling.",
)
def h145_thatch_debug_multiplier(ctx: Context) -> None:
    gen = seeded(14508)
    model = ThatchRunoff()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    onset = 60
    upd: list[float] = []
    prev = {"p": torch.cat([p.detach().flatten() for p in model.parameters()])}

    def after(_step):
        cur = torch.cat([p.detach().flatten() for p in model.parameters()])
        upd.append(float((cur - prev["p"]).norm()))
        prev["p"] = cur

    def scale(step):
        return 1e5 if step == onset else 1.0

    _train(ctx, model, opt, _regression(gen, 10, 32), 220, F.mse_loss, scale=scale, after=after)
    before = _mean(upd[onset - 20 : onset])
    later = _mean(upd[onset + 80 : onset + 140])
    ctx.check(
        "gradient at onset is 1e4x the preceding mean",
        ctx.grad_norms[onset] > 1e4 * _mean(ctx.grad_norms[onset - 20 : onset]),
    )
    ctx.check(
        "updates 80-140 steps after onset are under 1/10 of those before", later < 0.1 * before
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- hurricane pressure drop: a warm-up that ends at 10x the intended peak learning rate --------


class HurricaneDrop(nn.Module):
    """Regresses a hurricane's 24-hour central-pressure drop from sea-surface and shear
    features: a linear 'persistence' term plus a small MLP correction."""

    def __init__(self, n_in=16, width=32):
        super().__init__()
        self.linear = nn.Linear(n_in, 1)
        self.fc1 = nn.Linear(n_in, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.linear(x) + self.head(torch.tanh(self.fc1(x)))


def _storm_batches(gen, batch, n_in=16):
    w = torch.randn(n_in, 1, generator=gen) / math.sqrt(n_in)
    scale = torch.ones(n_in)
    scale[0] = 4.0  # sea-surface temperature anomaly in kelvin, left unnormalised
    while True:
        x = torch.randn(batch, n_in, generator=gen) * scale
        y = x @ w * 0.5 + torch.sin(x[:, 1:2]) + 0.05 * torch.randn(batch, 1, generator=gen)
        yield x, y


@scenario(
    family="hurricane_pressure_drop_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=29,
    note="Plain SGD with a linear warm-up over 100 steps. The peak learning rate was written "
    "'peak_lr: 0.2' instead of 0.02 (the batch-size scaling was applied twice); one input "
    "(an unnormalised temperature anomaly) makes the loss sharp along its weight. The run "
    "trains while the rate is small; once the warm-up passes 2/sharpness the loss "
    "oscillates with growing amplitude and blows up.",
)
def h145_hurricane_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(14509)
    model = HurricaneDrop()
    peak, warm = 0.2, 100
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s + 1, warm) / warm)
    batches = _storm_batches(gen, 64)
    # the sharpness along the linear weights: 2 * top eigenvalue of E[x x^T]
    xs = torch.cat([next(batches)[0] for _ in range(8)])
    sharp = float(2 * torch.linalg.eigvalsh(xs.T @ xs / len(xs))[-1])
    cross = math.ceil(2 / sharp / (peak / warm))
    _train(ctx, model, opt, batches, 200, F.mse_loss, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell before the rate crossed 2/sharpness", min(ls[:cross]) < 0.5 * ls[0])
    ctx.check("the warm-up crosses 2/sharpness before its end", cross < warm)
    ctx.check(
        "loss blew up after the crossing (non-finite or 100x its minimum before)",
        not _finite(ls) or max(ls[cross:]) > 100 * min(ls[:cross]),
    )


# -- gamelan gong decay: a hand-written standardiser whose variance is E[x^2] - E[x]^2 ----------


class BatchStandardise(nn.Module):
    """Standardises each feature over the batch: (x - mean) / sqrt(E[x^2] - mean^2)."""

    def forward(self, x):
        mean = x.mean(0, keepdim=True)
        var = (x * x).mean(0, keepdim=True) - mean * mean
        return (x - mean) / var.sqrt()


class GamelanGongDecay(nn.Module):
    """Regresses a gong's decay time from its partials' frequencies (Hz) and amplitudes."""

    def __init__(self, n_in=8, width=48):
        super().__init__()
        self.norm = BatchStandardise()
        self.fc1 = nn.Linear(n_in, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc1(self.norm(x))))


def _gong_batches(gen, batch, n_in=8, stuck=None):
    w = torch.randn(n_in, 1, generator=gen) / math.sqrt(n_in)
    step = 0
    while True:
        z = torch.randn(batch, n_in, generator=gen)
        x = 300.0 + 40.0 * z  # partial frequencies in Hz
        if stuck is not None and step >= stuck:
            x[:, 0] = 437.3  # the pickup on the first partial is stuck at one reading
        y = torch.tanh(z @ w) + 0.05 * torch.randn(batch, 1, generator=gen)
        step += 1
        yield x, y


@scenario(
    family="gamelan_gong_decay_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=70,
    heldout=True,
    onset=70,
    note="RAdam on a regressor with a hand-written batch standardiser that computes the "
    "variance as E[x^2] - E[x]^2 with no epsilon and no clamp. From step 70 one pickup "
    "reads a constant, the feature's variance cancels to zero or a tiny negative number in "
    "float32 and sqrt / division produce NaN: the loss is NaN at step 70.",
)
def h145_gamelan_variance_no_clamp(ctx: Context) -> None:
    gen = seeded(14510)
    model = GamelanGongDecay()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    _train(ctx, model, opt, _gong_batches(gen, 32, stuck=70), 150, F.mse_loss)
    ls = ctx.losses
    ctx.check(
        "loss finite and falling before step 70",
        _finite(ls[:70]) and _mean(ls[60:70]) < 0.8 * _mean(ls[:10]),
    )
    ctx.check("loss is NaN at step 70", len(ls) > 70 and math.isnan(ls[70]))


# -- controls ----------------------------------------------------------------------------------


class ViolaBowGRU(nn.Module):
    """Classifies bow strokes (détaché, spiccato, legato, ...) from 20 frames of bow-pressure and
    speed sensors with a GRU."""

    def __init__(self, n_in=4, hidden=32, classes=5):
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def _bow_batches(gen, batch, frames=20, classes=5):
    freqs = torch.linspace(0.2, 1.4, classes)
    t = torch.arange(frames, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        base = torch.sin(freqs[y][:, None] * t + phase)
        x = torch.stack([base, base.abs(), torch.cos(freqs[y][:, None] * t + phase), base**2], -1)
        yield x + 0.3 * torch.randn(batch, frames, 4, generator=gen), y


@scenario(
    family="viola_bow_stroke_gru",
    optimizer="Adam",
    cause="healthy",
    diverges=None,
    heldout=True,
    note="Control: Adam with OneCycleLR (max lr 1e-2) and gradient clipping at 1.0 on a GRU "
    "over noisy bow-sensor frames.",
)
def h145_viola_gru_onecycle_control(ctx: Context) -> None:
    gen = seeded(14511)
    model = ViolaBowGRU()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=150)
    _train(
        ctx,
        model,
        opt,
        _bow_batches(gen, 32),
        150,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell to under half its start and stayed finite", _fell(ctx.losses, 10, 0.5))


class BiathlonTargetCNN(nn.Module):
    """Scores 8x8 biathlon target-card images (the digits stand in for them) into 10 shot
    patterns with a BatchNorm conv net."""

    def __init__(self, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * 16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


@scenario(
    family="biathlon_target_bn_cnn",
    optimizer="SGD",
    cause="healthy",
    diverges=None,
    heldout=True,
    note="Control: SGD with Nesterov momentum, cosine annealing and label smoothing 0.1 on a "
    "BatchNorm conv net under fp16 autocast with a torch.amp.GradScaler.",
)
def h145_biathlon_amp_control(ctx: Context) -> None:
    gen = seeded(14512)
    model = BiathlonTargetCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        150,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
    )
    ctx.check("loss fell to under half its start and stayed finite", _fell(ctx.losses, 10, 0.5))
    ctx.check("the loss scale never fell below its start", min(ctx.scales) >= 1024.0)
