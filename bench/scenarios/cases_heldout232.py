"""Held-out set 232 (``h232_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a gorodki bat-throw 14-layer ReLU net (functional
activations only) whose init gain is the He variance factor 2.0 for the std factor sqrt(2), a
singing-sand boom-loudness Gaussian NLL net taking torch.sqrt of a raw linear variance, a
pankration bout-duration GELU regressor resumed without AdamW's state, a suona register
classifier whose temperature reads 5e-3 for 5e-1, an eisstock glide-distance regressor fed one
shard in centimetres, a footvolley serve-depth regressor whose accumulation multiplies by the
count for one step, a tromba-marina buzz regressor whose fc1 param group got 3e-9 for 3e-3
under RMSprop, a klootschiet throw-distance ReLU net on raw readings whose units die under
Adamax, a pelota-mixteca rebound regressor whose L2 penalty is subtracted, a gusli pluck
classifier trained with nll_loss on raw logits, and three controls (a waterphone bow-tone
conv1d classifier with AdamW, OneCycleLR and label smoothing, an orb-weaver web two-head net
with RAdam, accumulation and ReduceLROnPlateau, a schwingen grip-hold GELU MLP under fp16
autocast with a GradScaler, SGD Nesterov, warm-up + cosine and Huber).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
)


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


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=None,
    before=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``classifier(y)`` gives the class targets to hand to ``ctx.targets``,
    ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, micro, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; stops after
    logging a NaN loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for micro in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier is not None:
                ctx.targets(classifier(y))
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, micro, total)
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
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=1.0):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * torch.randn(batch, d_in, generator=gen)
        yield x, y


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


# -- gorodki: a deep ReLU net whose init gain is the variance factor, not the std factor ----------


class DeepBat(nn.Module):
    """A deep ReLU regressor written with ``torch.nn.functional`` activations only."""

    def __init__(self, d_in=8, width=64, depth=14, gain=2.0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)
        self.acts: list[torch.Tensor] = []

    def forward(self, x):
        self.acts = []
        h = x
        for layer in self.layers:
            h = F.relu(layer(h))
            if h.requires_grad:
                h.retain_grad()
            self.acts.append(h)
        return self.head(h).squeeze(-1)


@scenario(
    family="gorodki_bat_throw_deep_relu_mlp",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="A hand-written 14-layer ReLU regressor (layers.0 ... layers.13, head; activations through torch.nn.functional only, no activation modules) predicting a gorodki bat throw's flight distance from 8 standardised readings, SGD momentum 0.9 at 3e-5, MSE. The init helper draws each weight with std gain/sqrt(fan_in) and the config's gain reads 2.0, the He variance factor, where the std factor sqrt(2) belongs: every layer multiplies the signal by about sqrt(2), so at step 0 the gradient reaching the first layer's output is over 30x the one at the last hidden layer and the loss starts near 160; the first steps enlarge the weights, the gradient norm grows over 1e4-fold and the loss is NaN at step 3.",
)
def h232_gorodki_deep_relu_gain_typo(ctx: Context) -> None:
    gen = seeded(23201)
    model = DeepBat()
    opt = torch.optim.SGD(model.parameters(), lr=3e-5, momentum=0.9)
    growth = {}

    def after(step):
        if step == 0:
            norms = [float(h.grad.norm()) for h in model.acts if h.grad is not None]
            growth["depth"] = norms[0] / max(norms[-1], 1e-30) if norms else 0.0

    _train(ctx, model, opt, _readings(gen, 64, 8, 1), 80, F.mse_loss, after=after)
    ls, gn = ctx.losses, ctx.grad_norms
    bad = _first_bad(ls)
    ctx.check(
        "gradient at the first layer's output over 30x that at the last (step 0)",
        growth.get("depth", 0.0) > 30,
    )
    ctx.check("loss goes non-finite", bad is not None)
    ctx.check(
        "gradient norm grew over 1e4x before the loss broke",
        bad is not None and max(gn[:bad]) > 1e4 * gn[0],
    )


# -- singing sand: a Gaussian NLL whose std is the square root of a raw linear output ------------


class BoomNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.var.bias.fill_(1.0)

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        return torch.cat([self.mean(h), self.var(h)], -1)


def _booms(gen, batch, seed=2):
    """Six standardised readings of a dune slip face (slope, grain dryness, wind, sand
    temperature, ...) and the loudness of the next booming event, standardised."""
    return _readings(gen, batch, 6, seed, noise=0.1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    sigma = torch.sqrt(var)
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


@scenario(
    family="singing_sand_boom_loudness_gaussian_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("var",),
    diverges=84,
    heldout=True,
    note="A tanh MLP (fc1, fc2, mean, var) giving the loudness of a singing dune's next boom as a Gaussian from 6 standardised slip-face readings, Adam at 3e-4, a hand-written Gaussian NLL with sigma = torch.sqrt(var). The variance head is a raw linear layer (its bias set to 1.0 so it starts positive; the softplus was never written): as the fit tightens the NLL pushes the variance down until one sample's var output goes negative at step 84, the sqrt gives NaN and the loss and every weight are NaN from there (the run stops).",
)
def h232_singing_sand_sqrt_raw_variance(ctx: Context) -> None:
    gen = seeded(23202)
    model = BoomNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    low = {}

    def watch(step, out, x, y):
        low[step] = float(out[:, 1].detach().min())

    _train(ctx, model, opt, _booms(gen, 64), 300, _gauss_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss goes NaN", bad is not None and math.isnan(ls[bad]))
    ctx.check("a variance output is negative at that step", bad is not None and low[bad] < 0)
    ctx.check(
        "every variance output positive before that step",
        bad is not None and all(low[s] > 0 for s in range(bad)),
    )
    ctx.check("finite before that and falling", bad is not None and bad > 20 and _fell(ls[:bad]))


# -- pankration: a resume that restores the weights but not AdamW's state -------------------------


@scenario(
    family="pankration_bout_duration_gelu_regressor",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a pankration bout's duration from 12 standardised readings, AdamW at 2e-2, MSE. At step 120 the job is resumed from its checkpoint: the model weights load, but the optimizer's key was renamed so its state dict is silently skipped and AdamW restarts from empty moments. The next updates are full lr-sized sign steps for every weight, the loss jumps about 20x at step 121 (no gradient burst at the resume, same data), then the run recovers to its level within the next ~100 steps; finite.",
)
def h232_pankration_resume_without_optimizer_state(ctx: Context) -> None:
    gen = seeded(23203)
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.01)
    onset = 120

    def before(step):
        if step == onset:
            # the resume loads model_state_dict; the optimizer key was renamed, so the
            # optimizer state dict is silently skipped and AdamW starts from empty moments
            opt.state = defaultdict(dict)

    _train(ctx, model, opt, _readings(gen, 64, 12, 3, noise=0.05), 240, F.mse_loss, before=before)
    ls, gn = ctx.losses, ctx.grad_norms
    base = _mean(ls[onset - 15 : onset])
    jump = max(ls[onset + 1 : onset + 6])
    ctx.check("loss after the resume over 5x its level before", jump > 5 * base)
    ctx.check(
        "and over 3x the highest of the 30 steps before", jump > 3 * max(ls[onset - 30 : onset])
    )
    ctx.check(
        "no gradient burst at the resume (under 3x the median)",
        gn[onset] < 3 * _median(gn[onset - 30 : onset]),
    )
    ctx.check("loss back within 1.5x its level (last 40 steps)", _mean(ls[-40:]) < 1.5 * base)
    ctx.check("loss fell before the resume", _fell(ls[:onset], ratio=0.2))
    ctx.check("finite", _finite(ls))


# -- suona: a calibration temperature typed 5e-3 for 5e-1 ----------------------------------------


class RegisterNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=4, temperature=5e-3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))) / self.temperature


@scenario(
    family="suona_reed_register_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, head) classifying the register of a suona note (4 classes) from 16 standardised spectral readings, Adagrad at 0.02, cross-entropy on head(x) / temperature. The calibration temperature was meant to be 5e-1 and the config reads 5e-3: the logits are 200x too large, the loss starts near 90, and within the run over half the rows' float32 softmax gives the target exactly 1.0 (the rest are confidently wrong); the loss jumps between 0 and large values; finite.",
)
def h232_suona_temperature_typo(ctx: Context) -> None:
    gen = seeded(23204)
    model = RegisterNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    shares = {}

    def watch(step, out, x, y):
        shares[step] = collapsed_fraction(out.detach(), y)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 4, 4, noise=1.2),
        150,
        F.cross_entropy,
        classifier=lambda y: y,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check(
        "over half the rows' softmax exactly 1.0 on the target (last 30 steps)",
        _mean([shares[s] for s in range(120, 150)]) > 0.5,
    )
    ctx.check("under 20% such rows at step 0", shares[0] < 0.2)
    ctx.check("finite", _finite(ls))


# -- eisstock: one shard of glide distances in centimetres ----------------------------------------


def _glides(gen, batch, seed=5):
    """Eight standardised readings of an eisstock throw (release speed, ice temperature, stock
    weight, ...) and the glide distance in metres (about 18-38 m)."""
    for x, y in _readings(gen, batch, 8, seed, noise=0.05):
        yield x, 28.0 + 5.0 * y


@scenario(
    family="eisstock_glide_distance_regressor",
    optimizer="SGD (Nesterov)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing an eisstock throw's glide distance in metres (about 18-38 m) from 8 standardised readings, SGD Nesterov at 0.01 with momentum 0.9, clipping at 5, MSE. At step 150 one shard from the other timing station arrives with distances in centimetres: that batch's loss is about 1e7 (over 1000x the usual) and its gradient over 1e4x before clipping; the clipped step throws the weights off briefly and the run recovers; finite.",
)
def h232_eisstock_centimetre_shard(ctx: Context) -> None:
    gen = seeded(23205)
    model = Stack(8, hidden=64, act=nn.SiLU)
    with torch.no_grad():
        model.head.bias.fill_(28.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    onset = 150

    def alter(step, x, y):
        return (x, y * 100.0) if step == onset else (x, y)

    _train(ctx, model, opt, _glides(gen, 64), 260, F.mse_loss, alter=alter, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at the shard over 1000x the median before",
        ls[onset] > 1000 * _median(ls[onset - 30 : onset]),
    )
    ctx.check(
        "gradient at the shard over 100x the median before",
        gn[onset] > 100 * _median(gn[onset - 30 : onset]),
    )
    ctx.check("loss fell before the shard", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- footvolley: accumulation multiplies by the count instead of dividing, once -------------------


@scenario(
    family="footvolley_serve_depth_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a footvolley serve's landing depth from 10 standardised readings, plain SGD at 0.05, MSE, gradient accumulated over 8 micro-batches of 16. The epoch-rollover branch at step 100 weights each micro-batch's loss by accumulate instead of 1/accumulate, so that one gradient is 64x the usual (74x the median measured): the loss jumps over 5x, then the run recovers within a few dozen steps; finite.",
)
def h232_footvolley_accumulation_multiplied(ctx: Context) -> None:
    gen = seeded(23206)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    onset, acc = 100, 8

    def scale_loss(step, micro, total):
        # the epoch-rollover branch re-derives the weight as loss * accumulate
        return total * acc * acc if step == onset else total

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 16, 10, 6, noise=0.05),
        220,
        F.mse_loss,
        accumulate=acc,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at the onset over 12x the median before",
        gn[onset] > 12 * _median(gn[onset - 20 : onset]),
    )
    ctx.check(
        "loss after the kick over 2x its level before",
        max(ls[onset + 1 : onset + 6]) > 2 * _mean(ls[onset - 10 : onset]),
    )
    ctx.check(
        "loss back within 1.5x its level (last 40 steps)",
        _mean(ls[-40:]) < 1.5 * _mean(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- tromba marina: a param-group lr typed 3e-9 for 3e-3 ------------------------------------------


@scenario(
    family="tromba_marina_buzz_bridge_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the buzz of a tromba marina's bridge from 12 standardised readings, RMSprop at 3e-3 with one param group per layer. The fc1 group's lr in the config reads 3e-9 (typed for 3e-3): fc1's weights move under 1e-5 of their norm over 200 steps while fc2 moves over 5% of its own; the other layers still fit, the loss falls and stays finite; nothing diverges.",
)
def h232_tromba_marina_group_lr_typo(ctx: Context) -> None:
    gen = seeded(23207)
    model = Stack(12, hidden=64, act=nn.Tanh)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 3e-9},
            {"params": model.fc2.parameters()},
            {"params": model.head.parameters()},
        ],
        lr=3e-3,
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    _train(ctx, model, opt, _readings(gen, 64, 12, 7, noise=0.05), 200, F.mse_loss)
    ls = ctx.losses
    moved1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    moved2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-5 of its norm", moved1 < 1e-5)
    ctx.check("fc2 moved over 5% of its norm", moved2 > 0.05)
    ctx.check("finite", _finite(ls))


# -- klootschiet: raw positive readings and a high Adamax rate kill the ReLUs ---------------------


def _throws(gen, batch, seed=8):
    """Six raw readings of a klootschiet throw (ball mass in g, run-up in m/s, release height in
    cm, ...), all positive and unstandardised, and the throw distance, standardised."""
    scale = torch.tensor([400.0, 7.0, 180.0, 30.0, 12.0, 60.0])
    for x, y in _readings(gen, batch, 6, seed, noise=0.05):
        yield scale * (1.0 + 0.15 * x), y


@scenario(
    family="klootschiet_throw_distance_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a klootschiet throw's distance from 6 raw, positive, unstandardised readings (ball mass in g, run-up in m/s, release height in cm, ...), Adamax at 0.05, MSE. The standardisation step was left out: the first updates are enormous relative to the inputs' scale (the loss jumps to 1e5 at step 1), and from step 20 on over 85% of act2's units (fc2's outputs) are never positive on a batch; the net stops fitting with the few units left, the loss plateaus above 40% of the targets' variance; finite.",
)
def h232_klootschiet_relus_die(ctx: Context) -> None:
    gen = seeded(23208)
    model = Stack(6, hidden=64, act=nn.ReLU)
    opt = torch.optim.Adamax(model.parameters(), lr=0.05)
    dead, spread = {}, []

    def watch(step, out, x, y):
        spread.append(float(y.var()))
        with torch.no_grad():
            dead[step] = dead_fraction(model.fc2(model.act1(model.fc1(x))))

    _train(ctx, model, opt, _throws(gen, 64), 200, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("under half of act2's units dead at step 0", dead[0] < 0.5)
    ctx.check(
        "over 85% of act2's units dead from step 20 on", min(dead[s] for s in range(20, 200)) > 0.85
    )
    ctx.check(
        "the net stops fitting: loss (last 50 steps) over 40% of the targets' variance",
        _mean(ls[-50:]) > 0.4 * _mean(spread),
    )
    ctx.check("finite", _finite(ls))


# -- pelota mixteca: a hand-written weight decay with its sign flipped ----------------------------


@scenario(
    family="pelota_mixteca_glove_rebound_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the rebound speed of a pelota mixteca glove strike from 8 standardised readings, plain SGD at 0.05, MSE plus a hand-written L2 penalty of weight 0.1. A refactor subtracts the penalty instead of adding it: the weights grow steadily (norm over 3x), and after reaching its lowest near step 120 the loss climbs slowly and steadily, every 30-step mean above the one before, to over 3x its low at step 300; finite, no blow-up.",
)
def h232_pelota_mixteca_decay_sign(ctx: Context) -> None:
    gen = seeded(23209)
    model = Stack(8, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    wd = 0.1
    norms = []

    def before(step):
        norms.append(float(_flat(model).norm()))

    def scale_loss(step, micro, total):
        # the L2 term was meant as + wd/2 * |w|^2; the refactor subtracts it
        return total - 0.5 * wd * sum((p * p).sum() for p in model.parameters())

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 9),
        300,
        F.mse_loss,
        before=before,
        scale_loss=scale_loss,
    )
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("loss at the end over 3x its lowest", _mean(ls[-10:]) > 3 * ls[low])
    ctx.check("weight norm grew over 3x", norms[-1] > 3 * norms[0])
    windows = [_mean(ls[i : i + 30]) for i in range(low, len(ls) - 29, 30)]
    ctx.check(
        "the climb is slow and steady (each 30-step mean above the one before, under 2x)",
        len(windows) >= 3
        and all(b > a and b < 2 * a for a, b in zip(windows[:-1], windows[1:], strict=False)),
    )
    ctx.check("finite", _finite(ls))


# -- gusli: nll_loss on raw logits (log_softmax forgotten) ----------------------------------------


class PluckNet(nn.Module):
    def __init__(self, d_in=10, hidden=64, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="gusli_string_pluck_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying which of 6 gusli strings was plucked from 10 standardised readings, NAdam at 2e-3. The loss is F.nll_loss on the head's raw logits (the log_softmax was forgotten), so the loss is -logit[target], unbounded below: the head's logits grow without bound (the largest over 20x its step-0 size and still growing at the end) and the loss falls past -4000; finite.",
)
def h232_gusli_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(23210)
    model = PluckNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    top = {}

    def watch(step, out, x, y):
        top[step] = float(out.detach().abs().max())

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 10, 6, 10, noise=1.0),
        200,
        F.nll_loss,
        classifier=lambda y: y,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("largest logit over 20x its size at step 0", top[199] > 20 * top[0])
    ctx.check("largest logit still growing (last 50 steps)", top[199] > 1.3 * top[150])
    ctx.check("loss keeps falling below zero", ls[-1] < ls[150] < 0)
    ctx.check("finite", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


class BowToneNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(4)
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        h = self.pool(self.act2(self.conv2(self.act1(self.conv1(x.unsqueeze(1))))))
        return self.head(h.flatten(1))


def _bow_tones(gen, batch, length=64):
    """A bowed waterphone rod's pickup trace (64 samples): which of four rods (pitch) is bowed,
    with a random phase, bow pressure and noise."""
    t = torch.arange(length) / length
    freqs = torch.tensor([3.0, 5.0, 7.0, 9.0])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        phase = 6.283 * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        x = amp * torch.sin(6.283 * freqs[y][:, None] * t + phase)
        yield x + 0.5 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="waterphone_bow_tone_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a two-conv 1-d classifier (conv1, act1, conv2, act2, pool, head) naming which of 4 waterphone rods is bowed from a noisy 64-sample pickup trace, AdamW at max 1e-2 with weight decay 0.05, OneCycleLR, label smoothing 0.1, gradient clipping at 1. Trains normally; label smoothing keeps the loss above about 0.5.",
)
def h232_waterphone_conv1d_onecycle_control(ctx: Context) -> None:
    gen = seeded(23211)
    model = BowToneNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        _bow_tones(gen, 32),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=lambda y: y,
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("loss fell by 40% (label smoothing floors it)", _fell(ls, k=15, ratio=0.6))
    ctx.check("finite", _finite(ls))


class WebNet(nn.Module):
    """A shared trunk and two heads: the web's radial-thread tension and the prey kind."""

    def __init__(self, d_in=10, hidden=64, kinds=3):
        super().__init__()
        self.trunk = nn.Linear(d_in, hidden)
        self.act = nn.SiLU()
        self.mix = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.tension = nn.Linear(hidden, 1)
        self.prey = nn.Linear(hidden, kinds)

    def forward(self, x):
        h = self.act2(self.mix(self.act(self.trunk(x))))
        return self.tension(h).squeeze(-1), self.prey(h)


def _webs(gen, batch, seed=12):
    """Ten standardised readings of an orb-weaver web after a catch (vibration band powers,
    sag, humidity, ...): the radial-thread tension (standardised) and the prey kind."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(3, 10, generator=g)
    w = torch.randn(10, generator=g)
    while True:
        kind = torch.randint(0, 3, (batch,), generator=gen)
        x = protos[kind] + torch.randn(batch, 10, generator=gen)
        tension = torch.tanh(x @ w / math.sqrt(10)) + 0.05 * torch.randn(batch, generator=gen)
        yield x, (tension, kind)


def _web_loss(out, y):
    return F.mse_loss(out[0].float(), y[0]) + 0.5 * F.cross_entropy(out[1].float(), y[1])


@scenario(
    family="orb_weaver_web_tension_two_head_net",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a multi-task net (trunk, act, mix, act2, and two heads: tension, prey) giving an orb-weaver web's radial-thread tension (MSE) and the prey kind (3 classes, cross-entropy at weight 0.5) from 10 standardised web readings, RAdam at 2e-3, gradient accumulated over 2 micro-batches, ReduceLROnPlateau. Trains normally.",
)
def h232_orb_weaver_two_head_control(ctx: Context) -> None:
    gen = seeded(23212)
    model = WebNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _webs(gen, 32),
        150,
        _web_loss,
        classifier=lambda y: y[1],
        accumulate=2,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("loss fell by half", _fell(ls, k=15, ratio=0.5))
    ctx.check("finite", _finite(ls))


@scenario(
    family="schwingen_grip_hold_fp16_mlp",
    optimizer="SGD (Nesterov)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) regressing a schwingen grip's hold time from 9 standardised readings, fp16 autocast with a torch.amp.GradScaler (init scale 2^12), SGD Nesterov at 0.05 with momentum 0.9, 20 steps of linear warm-up then cosine decay, clipping at 2, Huber loss. Trains normally; the scale never collapses.",
)
def h232_schwingen_fp16_scaler_control(ctx: Context) -> None:
    gen = seeded(23213)
    model = Stack(9, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps, warm = 200, 20

    def shape(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 9, 13, noise=0.1),
        steps,
        lambda out, y: F.huber_loss(out.float(), y, delta=0.5),
        sched=sched,
        scaler=scaler,
        clip=2.0,
    )
    ls = ctx.losses
    ctx.check("loss fell by half", _fell(ls, k=15, ratio=0.5))
    ctx.check("finite", _finite(ls))
    ctx.check("the scale never collapsed (stayed at or above 2^10)", min(ctx.scales) >= 2.0**10)
