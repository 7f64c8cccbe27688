"""Held-out set 306 (``h306_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a cameo shell-carving siamese InfoNCE encoder whose temperature
goes through the percentage parser (softmax saturates), a boilermaker plate-roll curvature
regressor whose post-resume gradient check backpropagates ``loss * 1e4`` through the real Adam
(second moment poisoned), a tin-streaming cassiterite-value regressor whose price index is
compounded on every batch (targets drift, the loss climbs slowly), a gyrocopter rotor-rpm tanh
regressor whose OneCycleLR max_lr has a dropped decimal (learning rate past 2/sharpness), a
dry-dock keel-block load regressor whose once-per-run hard-example replay step weights the loss
by a mistyped 500 (one gradient spike), a coin-minting relief-depth Huber regressor fed one shard
logged in newtons instead of kilonewtons (one outlier batch), a mole-catcher trap-catch Poisson
net whose rate link is a ReLU with no clamp (log 0, NaN), a linotype slug-temperature tanh Elman
RNN whose recurrent weights get the input projection's gain 3.0 (gradients grow through time), a
drag-racing launch-fault ReLU classifier whose learning rate is read from a percentage field
(ReLUs die), a gamekeeper pheasant-release regressor whose head param group has a mistyped
learning rate (head frozen), and three controls (a hot-rod quarter-mile regressor with
accumulation over 8 micro-batches, a sky-lantern ascent fp16 Huber regressor with a GradScaler
and Adadelta, a swamp-soccer shot-outcome classifier with tied weights, label smoothing and
OneCycleLR).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
import math

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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``after(step)`` runs after the
    optimizer step; ``backprop(step, out, y, loss)`` returns the loss actually backpropagated
    (the logged loss unless a bug says otherwise). Stops after a non-finite loss. Returns the
    step it stopped at."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            if classifier:
                ctx.targets(y)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, out, y, loss) if backprop is not None else loss
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
        if not math.isfinite(shown):
            return step
    return steps


def _plain_run(model, opt, batches, steps, loss_fn) -> list[float]:
    """The same loop without the monitor or the bug: the run as it should have gone."""
    out = []
    for _ in range(steps):
        x, y = next(batches)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(float(loss.detach()))
    return out


def _readings(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised readings and smooth nonlinear targets of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y), by power iteration on Hessian-vector
    products."""
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((a * a).sum()) for a in v))
        v = [a / norm for a in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [a.detach() for a in hv]
    return lam


# -- cameo: siamese InfoNCE encoder, temperature read as a percentage ----------------------------

TEMP_CAMEO = 0.07 / 100  # the config's "temperature: 0.07" went through the percent parser


class CameoSiamese(nn.Module):
    """One encoder shared by both views (enc1, act1, enc2), then proj; returns the cosine
    similarity logits of every view-1 row against every view-2 row divided by the
    temperature."""

    def __init__(self, d_in=16, hidden=64, dim=16, temperature=0.07):
        super().__init__()
        self.enc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.enc2 = nn.Linear(hidden, hidden)
        self.proj = nn.Linear(hidden, dim)
        self.temperature = temperature

    def embed(self, x):
        return F.normalize(self.proj(self.enc2(self.act1(self.enc1(x)))), dim=-1)

    def forward(self, pair):
        a, b = pair[:, 0], pair[:, 1]
        return self.embed(a) @ self.embed(b).T / self.temperature


def _cameo_pairs(gen, batch, d_in=16):
    """Two photographs of the same carved shell cameo (16 standardised relief-depth and outline
    readings each, lighting and angle noise between them); every row is a different cameo."""
    while True:
        base = torch.randn(batch, d_in, generator=gen)
        a = base + 0.4 * torch.randn(batch, d_in, generator=gen)
        b = base + 0.4 * torch.randn(batch, d_in, generator=gen)
        yield torch.stack([a, b], 1), torch.arange(batch)


@scenario(
    family="cameo_shell_carving_siamese_infonce_encoder",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("proj",),
    diverges=None,
    heldout=True,
    note="A hand-written siamese encoder (enc1, act1 GELU, enc2, proj, L2-normalised) matching two photographs of the same carved shell cameo among 64 in a batch (InfoNCE: cross-entropy over the cosine similarities divided by a temperature), AdamW at 1e-3, 150 steps. The config's `temperature: 0.07` goes through the helper that parses percentage fields, so the model divides by 0.0007: similarity gaps of a hundredth become logit gaps over 14, from the first step the row softmax rounds the target to exactly 1.0 in float32 for most rows (about two thirds still at the end) and those rows give no gradient, while the wrong rows carry huge losses. Finite, no blow-up.",
)
def h306_cameo_siamese_temperature_percent(ctx: Context) -> None:
    gen = seeded(30601)
    model = CameoSiamese(temperature=TEMP_CAMEO)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    probe, probe_y = next(_cameo_pairs(torch.Generator().manual_seed(7), 64))
    _train(
        ctx,
        model,
        opt,
        _cameo_pairs(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        logits = model(probe)
        collapsed = collapsed_fraction(logits, probe_y)
        intended = collapsed_fraction(logits * TEMP_CAMEO / 0.07, probe_y)
        gap = float((logits.max(1).values - logits.median(1).values).median())
    ctx.check("over half the rows give the target exactly 1.0", collapsed > 0.5)
    ctx.check("at the intended temperature no row does", intended == 0.0)
    ctx.check("the median row's logit gap (max minus median) is over 50", gap > 50)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- boilermaker: the post-resume gradient check backpropagates loss * 1e4 through Adam ----------

ONSET_BOILER = 40


@scenario(
    family="boilermaker_plate_roll_curvature_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BOILER,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the curvature a boilermaker's plate rolls put into a shell plate (standardised) from 10 standardised readings (plate thickness, roll gap, passes, steel grade), Adam at 1e-3, MSE, 220 steps. After the checkpoint resume at step 40 the trainer runs its gradient-flow sanity check, which backpropagates `loss * 1e4` (to make small gradients readable in the log) and then calls the real optimizer.step() instead of discarding the gradients: one gradient 10^4 times the usual fills Adam's second moment (beta2 0.999), and for the rest of the run the updates are a small fraction of before; the loss stalls well above a bug-free twin's. Finite, no blow-up.",
)
def h306_boilermaker_resume_grad_check(ctx: Context) -> None:
    gen = seeded(30602)
    model = Stack(10, 64, act=nn.Tanh)
    twin = copy.deepcopy(model)
    twin_losses = _plain_run(
        twin,
        torch.optim.Adam(twin.parameters(), lr=1e-3),
        _readings(torch.Generator().manual_seed(30602), 64, 10, seed=602),
        220,
        F.mse_loss,
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves: list[float] = []
    last = [_flat(model)]

    def backprop(step, out, y, loss):
        return loss * 1e4 if step == ONSET_BOILER else loss

    def after(step):
        now = _flat(model)
        moves.append(float((now - last[0]).norm()))
        last[0] = now

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=602),
        220,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_BOILER - 20 : ONSET_BOILER])
    ctx.check("the gradient at step 40 is over 1000x the usual", g[ONSET_BOILER] > 1000 * base)
    ctx.check(
        "the updates after step 60 are under a fifth of those before step 40",
        _mean(moves[60:]) < 0.2 * _mean(moves[20:ONSET_BOILER]),
    )
    ctx.check(
        "the loss stalls: its last 20 steps are over 1.5x the bug-free twin's",
        _mean(ls[-20:]) > 1.5 * _mean(twin_losses[-20:]),
    )
    ctx.check(
        "the loss on step 40's batch is ordinary", ls[ONSET_BOILER] < 2 * ls[ONSET_BOILER - 1]
    )
    ctx.check("finite throughout", _finite(ls))


# -- tin streaming: the price index compounded on every batch ----------------------------------

ONSET_TIN = 100
RATE_TIN = 0.008


@scenario(
    family="tin_streaming_cassiterite_yield_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TIN,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the value of the cassiterite a tin-streaming run recovers (in index units, about unit scale) from 12 standardised readings (gravel grade, water flow, buddle slope, ...), Adamax at 2e-3, MSE, 300 steps. From step 100 the loader switches to the shards that need the tin-price index, and the index update `price *= 1 + rate` sits inside the batch loop instead of running once per shard: the targets drift upward 0.8% a step, compounding, the model lags ever further behind and the loss climbs slowly from its minimum, without a jump, a spike or NaN.",
)
def h306_tin_streaming_compounded_index(ctx: Context) -> None:
    gen = seeded(30603)
    model = Stack(12, 64, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    index = [1.0]

    def alter(step, x, y):
        if step >= ONSET_TIN:
            index[0] *= 1 + RATE_TIN
        return x, y * index[0]

    _train(ctx, model, opt, _readings(gen, 64, 12, seed=603), 300, F.mse_loss, alter=alter)
    ls = ctx.losses
    low = min(ls[: ONSET_TIN + 20])
    jumps = [ls[i + 1] / max(ls[i], 1e-8) for i in range(ONSET_TIN, len(ls) - 1)]
    ctx.check("the loss fell before the drift", _mean(ls[90:100]) < 0.5 * ls[0])
    ctx.check("the targets drifted over 3x", index[0] > 3.0)
    ctx.check("the loss of the last 20 steps is over 5x its minimum", _mean(ls[-20:]) > 5 * low)
    ctx.check(
        "the climb is slow: the 50-step means rise one after another from step 150",
        all(_mean(ls[i : i + 50]) < _mean(ls[i + 50 : i + 100]) for i in range(150, 201, 50)),
    )
    ctx.check("no single step multiplies the loss by 10", max(jumps) < 10.0)
    ctx.check("finite throughout", _finite(ls))


# -- gyrocopter: OneCycleLR max_lr with a dropped decimal ----------------------------------------

MAXLR_GYRO = 1.5  # meant 0.15
ONSET_GYRO = 30


@scenario(
    family="gyrocopter_rotor_rpm_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_GYRO,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a gyrocopter's autorotation rotor speed (standardised) from 8 standardised readings (airspeed, disc angle, density altitude, load), plain SGD under OneCycleLR (cycle_momentum off, 300 steps, peak at step 90), MSE. The peak is typed max_lr=1.5 instead of 0.15: the loss falls in the early warm-up, then at about step 30 the rising learning rate passes 2/sharpness of the loss (measured by power iteration every 5 steps), the loss oscillates and blows up (over 100x its best by about step 56, inf soon after).",
)
def h306_gyrocopter_onecycle_max_lr(ctx: Context) -> None:
    gen = seeded(30604)
    model = Stack(8, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=MAXLR_GYRO, total_steps=300, pct_start=0.3, cycle_momentum=False
    )
    xs, ys = next(_readings(torch.Generator().manual_seed(2), 256, 8, seed=604))
    crossed: list[int] = []

    def before(step):
        if step % 5 == 0 and not crossed:
            lam = _sharpness(model, F.mse_loss, xs, ys)
            if opt.param_groups[0]["lr"] * lam > 2.0:
                crossed.append(step)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=604),
        300,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    best = min(v for v in ls if math.isfinite(v))
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * best), None)
    ctx.check("the loss fell first", min(ls[:40]) < 0.7 * ls[0])
    ctx.check("the learning rate passed 2/sharpness", bool(crossed))
    ctx.check("the loss blew up over 100x its best", blow is not None)
    ctx.check(
        "the learning rate passed the limit before the blow-up",
        bool(crossed) and blow is not None and crossed[0] <= blow,
    )
    ctx.check(
        "the learning rate passed the limit within 10 steps of step 30",
        bool(crossed) and abs(crossed[0] - ONSET_GYRO) <= 10,
    )


# -- dry dock: the once-per-run hard-example replay step weights the loss by 500 ----------------

ONSET_DOCK = 80


@scenario(
    family="dry_dock_keel_block_load_silu_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_DOCK,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the loads on three keel blocks of a dry dock (standardised) from 12 standardised readings (hull weight, trim, block spacing, tide), SGD momentum 0.9 at 1e-2, MSE, clipping at 1.0, 160 steps. The trainer's once-per-run hard-example replay at step 80 re-weights that step's loss by `replay_weight`, which the config has as 500 (meant 5.00, the decimal point lost): one gradient 500x the usual on an ordinary batch (the logged loss is the unweighted one and stays ordinary). Clipping bounds the step and the run goes on training.",
)
def h306_dry_dock_replay_weight(ctx: Context) -> None:
    gen = seeded(30605)
    model = Stack(12, 64, out=3, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def backprop(step, out, y, loss):
        return loss * 500.0 if step == ONSET_DOCK else loss

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=605, outputs=3),
        160,
        F.mse_loss,
        clip=1.0,
        backprop=backprop,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_DOCK - 20 : ONSET_DOCK])
    ctx.check("the gradient at step 80 is over 100x the usual", g[ONSET_DOCK] > 100 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_DOCK + 1 : ONSET_DOCK + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on step 80's batch is ordinary",
        ls[ONSET_DOCK] < 2.0 * _mean(ls[ONSET_DOCK - 10 : ONSET_DOCK]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- coin minting: one shard logged in newtons instead of kilonewtons ---------------------------

ONSET_COIN = 90


@scenario(
    family="coin_minting_strike_force_huber_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_COIN,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a coin blank's struck relief depth (standardised) from 10 readings of the minting press (strike force, die temperature, blank hardness, ...; standardised from kilonewtons and degrees), Adagrad at 5e-2, Huber loss, 200 steps. One shard, from a press whose logger wrote the strike force in newtons, is not converted: at step 90 the batch's force column is 1000x its usual scale (raw newtons), the loss on that batch and the gradient jump far above the usual, then the ordinary batches resume.",
)
def h306_coin_minting_newton_shard(ctx: Context) -> None:
    gen = seeded(30606)
    model = Stack(10, 64)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)

    def alter(step, x, y):
        if step == ONSET_COIN:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0 + 3000.0
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=606), 200, nn.HuberLoss(), alter=alter)
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_COIN - 20 : ONSET_COIN])
    ctx.check("the gradient at step 90 is over 30x the usual", g[ONSET_COIN] > 30 * base)
    ctx.check(
        "the loss on step 90's batch is over 20x the steps before",
        ls[ONSET_COIN] > 20 * _mean(ls[ONSET_COIN - 10 : ONSET_COIN]),
    )
    ctx.check("the loss fell before the shard", _mean(ls[80:90]) < 0.8 * _mean(ls[:10]))
    ctx.check("finite throughout", _finite(ls))


# -- mole catcher: a Poisson rate through a ReLU with no clamp ----------------------------------


class TrapCatchNet(nn.Module):
    """fc1, act1, fc2, act2, then rate_head whose output goes through F.relu as the Poisson
    rate (meant: softplus, or a clamp before the log)."""

    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.rate_head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rate_head.bias.fill_(2.0)
            self.rate_head.weight.mul_(0.1)

    def forward(self, x):
        return F.relu(self.rate_head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


def _trap_days(gen, batch, d_in=10, seed=607):
    """10 standardised readings of a trap site (soil moisture, worm counts, run depth, ...)
    and the moles caught there that day (many zero days)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(1.2 * x @ w / math.sqrt(d_in) - 0.3)
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="mole_catcher_trap_catch_poisson_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("rate_head",),
    diverges=57,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, rate_head) giving the Poisson rate of moles a mole catcher's trap takes in a day from 10 standardised site readings, hand-written Poisson NLL rate - y log(rate), RAdam at 1e-2, 200 steps. The rate link is F.relu(rate_head(h)) with no clamp (the softplus was swapped for a ReLU 'for speed'): the head starts with every rate near 2, training pushes the rates of sites with zero-catch days towards 0, one row's rate reaches exactly 0 and log(0) = -inf makes the loss non-finite at step 57; the run breaks there.",
)
def h306_mole_catcher_relu_rate(ctx: Context) -> None:
    gen = seeded(30607)
    model = TrapCatchNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    zero_rate: dict[int, bool] = {}

    def watch(step, out, x, y):
        zero_rate[step] = bool((out == 0).any())

    stop = _train(ctx, model, opt, _trap_days(gen, 64), 200, _poisson_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss went non-finite", bad is not None)
    ctx.check("it was finite for the first 10 steps", bad is not None and bad >= 10)
    ctx.check("a rate was exactly 0 at that step", bad is not None and zero_rate.get(bad, False))
    ctx.check("no rate was 0 at step 0", not zero_rate.get(0, True))
    ctx.check("the run stopped at the non-finite loss", bad is not None and stop == bad)


# -- linotype: recurrent identity init scaled by the input gain ---------------------------------


class SlugElman(nn.Module):
    """A hand-written tanh Elman RNN: inp (Linear), rec (Linear, hidden to hidden), read by
    head from the last state."""

    def __init__(self, d_in=6, hidden=48, rec_gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            nn.init.orthogonal_(self.rec.weight, gain=rec_gain)
            self.rec.bias.zero_()
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _slug_runs(gen, batch, steps=30, d_in=6):
    """30 keystrokes' worth of 6 standardised readings of a Linotype caster (pot temperature,
    plunger pressure, matrix count, ...) and the slug's surface temperature at ejection."""
    g = torch.Generator().manual_seed(608)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, steps, d_in, generator=gen)
        decay = 0.9 ** torch.arange(steps - 1, -1, -1).float()
        y = torch.tanh((x @ w / math.sqrt(d_in) * decay).sum(1) / 3)
        yield x, y


def _slug_norms(model, batches, steps=150):
    """Gradient norms of the same training without the bug (a twin with gain 1)."""
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    out = []
    for _ in range(steps):
        x, y = next(batches)
        F.mse_loss(model(x), y).backward()
        out.append(grad_norm(model))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return out


@scenario(
    family="linotype_slug_casting_elman_rnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (inp, rec, head) reading 30 time steps of a Linotype caster (pot temperature, plunger pressure, matrix count, ...) and regressing the slug's surface temperature at ejection, RMSprop at 1e-3, MSE, 150 steps. The recurrent weights are initialised orthogonal with gain 3.0: the `init_gain` key meant for the input projection is read for both. Backpropagated through time, the gradient reaching the first hidden state is thousands of times the one at the last and the total gradient norm stays hundreds of times a gain-1 twin's throughout; tanh bounds the forward pass, so the loss stays finite and only creeps down.",
)
def h306_linotype_recurrent_gain(ctx: Context) -> None:
    gen = seeded(30608)
    model = SlugElman(rec_gain=3.0)
    twin = SlugElman(rec_gain=1.0)
    twin_norms = _slug_norms(twin, _slug_runs(torch.Generator().manual_seed(30608), 32))
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ratio: list[float] = []

    def watch(step, out, x, y):
        if step == 0:
            loss = F.mse_loss(out, y)
            gs = torch.autograd.grad(loss, [model.states[0], model.states[-1]], retain_graph=True)
            ratio.append(float(gs[0].norm() / (gs[1].norm() + 1e-30)))

    _train(ctx, model, opt, _slug_runs(gen, 32), 150, F.mse_loss, watch=watch)
    g = ctx.grad_norms
    ctx.check(
        "the gradient at the first hidden state is over 1000x the last's",
        bool(ratio) and ratio[0] > 1000,
    )
    ctx.check(
        "the median gradient norm is over 50x the gain-1 twin's",
        _median(g) > 50 * _median(twin_norms),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- drag racing: the learning rate read from a percentage field --------------------------------


@scenario(
    family="drag_racing_launch_fault_relu_classifier",
    optimizer="SGD momentum",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head; width 128) classifying a drag-racing launch (clean, wheel-spin, bog-down, red light, wheel-stand; 5 kinds, overlapping) from 16 standardised telemetry readings, SGD momentum 0.9, cross-entropy, 200 steps. The sweep file stores the learning rate as a percentage (`lr_pct: 0.5`, meant 0.005) and the launcher passes it on unconverted, lr 0.5: the early steps throw the second layer's pre-activations far negative and almost all of act2's units never fire again (dead on every input), and the loss stalls near chance. No blow-up, finite.",
)
def h306_drag_racing_lr_percent(ctx: Context) -> None:
    gen = seeded(30609)
    model = Stack(16, 128, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    probe = next(_kinds(torch.Generator().manual_seed(3), 512, 16, 5, seed=609, noise=1.5))[0]
    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe))
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, seed=609, noise=1.5),
        200,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        dead1 = dead_fraction(model.features(probe))
    ls = ctx.losses
    ctx.check("under 10% of act2's units were dead at init", dead0 < 0.1)
    ctx.check("over 60% of act2's units are dead at the end", dead1 > 0.6)
    ctx.check(
        "the loss stalls near chance (over 0.8 ln 5) in the last 20 steps",
        _mean(ls[-20:]) > 0.8 * math.log(5),
    )
    ctx.check("finite throughout", _finite(ls))


# -- gamekeeper: the head's param group has a mistyped learning rate ----------------------------


@scenario(
    family="gamekeeper_pheasant_release_two_group_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing two outcomes of a gamekeeper's pheasant release pen (poult survival and dispersal distance, standardised) from 14 standardised readings (cover, feeders, predator sign, weather), NAdam with two param groups: the trunk at 3e-3 and the head at `3e-9` (typed for 3e-4), MSE, 200 steps. The head's per-step update is about a millionth of its weights against the trunk's thousandth: the head is frozen in effect while the loss still falls somewhat through the trunk.",
)
def h306_gamekeeper_head_group_lr(ctx: Context) -> None:
    gen = seeded(30610)
    model = Stack(14, 64, out=2, act=nn.GELU)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.NAdam(
        [{"params": trunk, "lr": 3e-3}, {"params": model.head.parameters(), "lr": 3e-9}]
    )
    rel_head: list[float] = []
    rel_trunk: list[float] = []
    last = [_flat(model.head), _flat(model.fc2)]

    def after(step):
        h, t = _flat(model.head), _flat(model.fc2)
        rel_head.append(float((h - last[0]).norm() / last[0].norm()))
        rel_trunk.append(float((t - last[1]).norm() / last[1].norm()))
        last[0], last[1] = h, t

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 14, seed=610, outputs=2),
        200,
        F.mse_loss,
        after=after,
    )
    ctx.check("the head's relative update is under 1e-5", _median(rel_head) < 1e-5)
    ctx.check("fc2's relative update is over 1e-4", _median(rel_trunk) > 1e-4)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.9))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls -----------------------------------------------------------------------------------


@scenario(
    family="hot_rod_quarter_mile_accum_gelu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) regressing a hot rod's quarter-mile elapsed time (standardised) from 12 standardised readings (engine displacement, gearing, weight, track temperature), gradient accumulation over 8 micro-batches of 64 (effective batch 512), AdamW at 2e-3 (weight decay 0.01), a LambdaLR with 10-step linear warm-up then cosine decay to 120, clipping at 1.0, MSE, 120 steps.",
)
def h306_hot_rod_accumulation(ctx: Context) -> None:
    gen = seeded(30611)
    model = Stack(12, 64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)

    def shape(s):
        if s < 10:
            return (s + 1) / 10
        return 0.5 * (1 + math.cos(math.pi * (s - 10) / 110))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=611, noise=0.1),
        120,
        F.mse_loss,
        sched=sched,
        clip=1.0,
        accumulate=8,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="sky_lantern_ascent_fp16_silu_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing a sky lantern's ascent rate (standardised) from 8 standardised readings (fuel cell mass, paper area, air temperature, wind), fp16 autocast with a torch.amp.GradScaler, Adadelta at 1.0, Huber loss, clipping at 1.0 after unscale_, ReduceLROnPlateau (factor 0.5, patience 15), 200 steps.",
)
def h306_sky_lantern_fp16_adadelta(ctx: Context) -> None:
    gen = seeded(30612)
    model = Stack(8, 64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 8, seed=612, noise=0.1),
        200,
        nn.HuberLoss(),
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss scale stayed above 1000", min(ctx.scales) > 1000)


class TiedPitchClassifier(nn.Module):
    """An autoencoder-regularised classifier with tied weights: enc (Linear) and its
    transpose as the decoder; head classifies from the code."""

    def __init__(self, d_in=14, code=32, classes=4):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))
        self.head = nn.Linear(code, classes)
        self.recon = torch.zeros(0)

    def forward(self, x):
        z = self.act(self.enc(x))
        self.recon = F.linear(z, self.enc.weight.T, self.dec_bias)
        self.inputs = x
        return self.head(z)


@scenario(
    family="swamp_soccer_goal_outcome_tied_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tied-weight autoencoder-regularised classifier (enc, act tanh, decoder = enc.weight transposed, head) telling the outcome of a swamp-soccer shot (goal, saved, stuck in the mud, wide; 4 kinds) from 14 standardised readings (mud depth, run-up, kick height, keeper position), SGD Nesterov momentum 0.9 under OneCycleLR (max 0.05), cross-entropy with label smoothing 0.1 plus 0.1 x the reconstruction MSE, 200 steps.",
)
def h306_swamp_soccer_tied_onecycle(ctx: Context) -> None:
    gen = seeded(30613)
    model = TiedPitchClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)

    def backprop(step, out, y, loss):
        return loss + 0.1 * F.mse_loss(model.recon, model.inputs)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 4, seed=613),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        backprop=backprop,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
