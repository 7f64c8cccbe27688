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
    ctx.check("loss at the bad batch is 1000x the preceding mean",
              ctx.losses[onset] > 1000 * _mean(ctx.losses[onset - 20 : onset]))
    ctx.check("run finite and back under 2x its pre-onset loss by the end",
              _finite(ctx.losses)
              and _mean(ctx.losses[-10:]) < 2 * _mean(ctx.losses[onset - 20 : onset]))
