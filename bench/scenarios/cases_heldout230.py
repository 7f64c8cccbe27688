"""Held-out set 230 (``h230_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a pancake-ice floe-diameter tanh regressor whose warm-up
peak was typed 10x too high, a foosball shot-zone classifier whose hand-rolled label smoothing
got a negative epsilon, a grindstone edge-bevel regressor whose manual weight decay has the wrong
sign, a snocross landing-fault BCE tagger whose accumulation divisor is inverted for one step, a
calliope whistle-duration Gamma-NLL net whose rate head lacks its softplus, a theorbo course
tension mixture-of-experts regressor fed one shard of raw-Hz readings, a footvolley serve-landing
regressor whose first layer's param group got 2e-8 for 2e-3, a pipe-and-tabor rhythm deep conv1d
classifier initialised at 2.5x the He scale, a devil-stick trick classifier whose softmax
temperature was read in the wrong unit, a chainsaw-carving kickback regressor whose checkpoint
step backpropagates a summed loss once under Adam, and three controls (an air-hockey rebound
classifier with SGD Nesterov and a cyclic learning rate, a serinette pin-barrel tied-weight
autoencoder under fp16 autocast with a GradScaler, RAdam and OneCycleLR, a crepuscular-ray angle
Huber regressor with Adadelta, clipping and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
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


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
    decay=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``decay()`` runs right after the optimizer step (a
    hand-written weight decay), ``after(step)`` after the monitor's step; stops after logging a
    NaN loss."""
    ctx.attach(model, opt, scaler=scaler)
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
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
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
        if decay is not None:
            decay()
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


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(7)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- pancake ice: a warm-up whose peak rate was typed 10x too high --------------------------------


def _floes(gen, batch, seed=1):
    """Ten standardised readings of a patch of pancake ice (swell period, wave height, air
    temperature, wind, frazil concentration, ...) and the mean floe diameter, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="pancake_ice_floe_diameter_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=30,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the mean floe diameter of pancake ice from 10 standardised readings (swell period, wave height, air temperature, wind, frazil concentration, ...), plain SGD, MSE, a linear warm-up over 200 steps (LambdaLR). The warm-up's peak was typed 2.0 for 0.2: the loss falls at first while the rate is small, then the rising rate passes the stability limit 2/sharpness (sharpness measured by power iteration on a fixed batch) and the loss, which was falling, starts to oscillate and blows up.",
)
def h230_pancake_ice_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(23001)
    model = Stack(10, hidden=64, act=nn.Tanh)
    peak, warm = 2.0, 200
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    probe = next(_floes(torch.Generator().manual_seed(4040), 256))
    record = {}

    def before(step):
        if step % 5 == 0 and not record.get("stop"):
            lr = opt.param_groups[0]["lr"]
            record[step] = lr * _sharpness(model, F.mse_loss, probe)

    def after(step):
        if not math.isfinite(ctx.losses[-1]) or ctx.losses[-1] > 1e6:
            record["stop"] = True

    _train(
        ctx, model, opt, _floes(gen, 64), 160, F.mse_loss, before=before, after=after, sched=sched
    )
    ls = ctx.losses
    low = min(v for v in ls if math.isfinite(v))
    broke = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    crossed = next(
        (s for s in sorted(k for k in record if isinstance(k, int)) if record[s] > 2), None
    )
    ctx.check("loss fell in the first 20 steps", _mean(ls[15:20]) < 0.7 * _mean(ls[:5]))
    ctx.check("lr x sharpness under 2 at step 0", record.get(0, 9.0) < 2)
    ctx.check(
        "lr x sharpness past 2 before the loss broke",
        crossed is not None and broke is not None and crossed < broke,
    )
    ctx.check("loss blows up over 100x its low", broke is not None)


# -- foosball: a hand-rolled label smoothing whose epsilon got a minus sign -----------------------


def _shots(gen, batch, seed=2):
    """Sixteen standardised readings of a foosball shot (rod speed, wrist angle, ball position,
    ...) and the goal zone it ends in (8 zones)."""
    return _kinds(gen, batch, 16, 8, seed, noise=0.45)


def _smoothed_ce(eps):
    def loss(logits, y):
        logp = F.log_softmax(logits, -1)
        nll = -logp.gather(1, y[:, None]).squeeze(1)
        return ((1 - eps) * nll - eps * logp.mean(-1)).mean()

    return loss


@scenario(
    family="foosball_shot_zone_gelu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying which of 8 goal zones a foosball shot ends in from 16 standardised readings (rod speed, wrist angle, ball position, ...), Adam at 3e-3. The loss is a hand-rolled label-smoothed cross-entropy, (1 - eps) * nll - eps * mean(log p); the config's `label_smoothing` reads -0.1 (someone 'sharpened' the targets). With eps negative the loss rewards pushing every non-target log-probability to minus infinity and has no floor: the head's logits grow without bound (over 20x their early size), the loss goes below zero and keeps falling; finite.",
)
def h230_foosball_negative_label_smoothing(ctx: Context) -> None:
    gen = seeded(23002)
    model = Stack(16, hidden=64, out=8, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    peaks = {}

    def watch(step, out, x, y):
        peaks[step] = float(out.detach().abs().max())

    _train(ctx, model, opt, _shots(gen, 64), 240, _smoothed_ce(-0.1), classifier=True, watch=watch)
    ls = ctx.losses
    early = _mean([peaks[s] for s in range(10, 20)])
    late = _mean([peaks[s] for s in range(230, 240)])
    ctx.check("head logits over 20x their early size", late > 20 * early)
    ctx.check("head logits still growing at the end", peaks[239] > 1.2 * peaks[200])
    ctx.check("loss below zero at the end", _mean(ls[-10:]) < 0)
    ctx.check("finite", _finite(ls))


# -- grindstone: a hand-written weight decay with the wrong sign ----------------------------------


def _bevels(gen, batch, seed=3):
    """Twelve standardised readings of a sandstone grindstone session (wheel speed, water feed,
    blade steel hardness, pressure, ...) and the resulting edge bevel angle, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="grindstone_edge_bevel_silu_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the bevel angle a sandstone grindstone leaves on a blade from 12 standardised readings (wheel speed, water feed, steel hardness, pressure, ...), Adagrad at 0.03, MSE. Weight decay is applied by hand after each optimizer step as `p.mul_(1 + lr * wd)` with wd 0.3 where `1 - lr * wd` was meant: every weight is inflated by 0.9% a step. The loss falls for a few dozen steps, then, as Adagrad's effective rate shrinks and can no longer undo the inflation, it climbs slowly and steadily to over ten times its low while the weights grow; no single jump, finite.",
)
def h230_grindstone_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(23003)
    model = Stack(12, hidden=64, act=nn.SiLU)
    lr, wd = 0.03, 0.3
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    norms = []

    def decay():
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant: 1 - lr * wd
            norms.append(float(torch.sqrt(sum((p * p).sum() for p in model.parameters()))))

    _train(ctx, model, opt, _bevels(gen, 64), 240, F.mse_loss, decay=decay)
    ls = ctx.losses
    low_at = min(range(len(ls)), key=lambda i: ls[i])
    jumps = max(ls[i + 1] / max(ls[i], 1e-12) for i in range(len(ls) - 1))
    ctx.check("loss fell first", ls[low_at] < 0.5 * _mean(ls[:5]))
    ctx.check("no single step multiplies the loss by over 4", jumps < 4)
    ctx.check(
        "loss at the end over 3x its low", _mean(ls[-10:]) > 3 * _mean(ls[low_at : low_at + 5])
    )
    ctx.check(
        "loss climbs across the run's last part",
        _mean(ls[-20:]) > _mean(ls[-60:-40]) > _mean(ls[-100:-80]),
    )
    ctx.check("weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check("finite", _finite(ls))


# -- snocross: an accumulation divisor inverted for the step after a resume -----------------------


def _landings(gen, batch, seed=4, tags=6):
    """Fourteen standardised readings of a snocross jump (take-off speed, throttle, ski angle,
    suspension travel, ...) and six landing-fault tags (nose-heavy, case, bounce, ...)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(14, tags, generator=g)
    while True:
        x = torch.randn(batch, 14, generator=gen)
        logits = x @ w / math.sqrt(14) * 2.5 - 0.5
        yield x, (torch.rand(batch, tags, generator=gen) < torch.sigmoid(logits)).float()


@scenario(
    family="snocross_landing_fault_bce_tagger",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) tagging six landing faults of a snocross jump from 14 standardised telemetry readings (take-off speed, throttle, ski angle, suspension travel, ...), BCEWithLogits, SGD with momentum 0.9 at 0.05, gradient accumulation over 8 micro-batches of 16. The training job is resumed from a checkpoint at step 120 and the resume path restores the loss divisor from the checkpoint's `accum_scale` field, which holds 1/8, so for that one step each micro-batch's loss is divided by 1/8 (multiplied by 8) instead of divided by 8: the gradient is 64x the usual. The step throws the weights off and the loss jumps, then the run recovers; finite.",
)
def h230_snocross_accum_divisor_inverted(ctx: Context) -> None:
    gen = seeded(23004)
    model = Stack(14, hidden=64, out=6, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    accum, onset = 8, 120

    def scale_loss(step, total):
        # total is loss / accum; after the resume the divisor reads 1 / accum
        return total * accum * accum if step == onset else total

    _train(
        ctx,
        model,
        opt,
        _landings(gen, 16),
        240,
        F.binary_cross_entropy_with_logits,
        accumulate=accum,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 120 over 40x the median before", gn[onset] > 40 * _median(gn[100:onset])
    )
    ctx.check(
        "loss after the kick over 1.5x its level before",
        max(ls[onset + 1 : onset + 6]) > 1.5 * _mean(ls[onset - 10 : onset]),
    )
    ctx.check(
        "loss back within 1.2x its level (last 40 steps)",
        _mean(ls[-40:]) < 1.2 * _mean(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.8))
    ctx.check("finite", _finite(ls))


# -- calliope: a Gamma NLL whose rate head lost its softplus --------------------------------------


class WhistleGamma(nn.Module):
    """trunk -> (shape, rate): the shape through softplus, the rate head left raw."""

    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.shape = nn.Linear(hidden, 1)
        self.rate = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rate.bias.fill_(1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        k = F.softplus(self.shape(h)) + 1e-3
        r = self.rate(h)  # meant: F.softplus(self.rate(h)) + 1e-3
        return torch.cat([k, r], -1)


def _gamma_nll(out, y):
    k, r = out[:, 0], out[:, 1]
    return -(k * torch.log(r) + (k - 1) * torch.log(y) - r * y - torch.lgamma(k)).mean()


def _blasts(gen, batch, seed=5):
    """Ten standardised readings of a steam calliope through a fairground session (boiler
    pressure first, then valve lift, key force, whistle bore, ...) and the duration of a whistle
    blast in seconds (Gamma-distributed, shape 4). The boiler pressure sags as the session goes
    on, and at low pressure the blasts last longer."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    i = 0
    while True:
        x = torch.randn(batch, 10, generator=gen)
        x[:, 0] = 1.5 - 0.02 * i + 0.3 * x[:, 0]
        mean = 0.5 * torch.exp(-0.8 * x[:, 0] + 0.4 * torch.tanh(x @ w / math.sqrt(10)))
        shape = torch.full((batch,), 4.0)
        y = torch.distributions.Gamma(shape, shape / mean).sample()
        i += 1
        yield x, y.clamp_min(1e-3)


@scenario(
    family="calliope_whistle_blast_gamma_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("rate",),
    diverges=75,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2) with two heads (shape, rate) modelling the duration of a steam-calliope whistle blast in seconds as a Gamma distribution from 10 standardised readings (boiler pressure, valve lift, key force, ...) streamed through a fairground session in which the boiler pressure sags and the blasts lengthen, RMSprop at 1e-3, a hand-written Gamma negative log-likelihood. The shape head goes through softplus, but the rate head's softplus was dropped in a refactor (its bias starts at 1, so the rate is positive at first); the NLL takes log(rate). The loss falls, then as the blasts lengthen the fitted rate is pulled down towards zero, one sample's raw rate goes negative and log(rate) is NaN at step 75.",
)
def h230_calliope_gamma_rate_no_softplus(ctx: Context) -> None:
    gen = seeded(23005)
    torch.manual_seed(23005)
    model = WhistleGamma()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    low = {}

    def watch(step, out, x, y):
        low[step] = float(out.detach()[:, 1].min())

    _train(ctx, model, opt, _blasts(gen, 64), 300, _gamma_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss goes NaN", bad is not None)
    ctx.check("rate head's output negative at the NaN step", bad is not None and low[bad] < 0)
    ctx.check("rate positive at step 0", low[0] > 0)
    ctx.check(
        "loss finite and fell by over 0.3 nats before the NaN",
        bad is not None and bad > 20 and min(ls[:bad]) < ls[0] - 0.3,
    )


# -- theorbo: a mixture-of-experts regressor fed one shard of raw-Hz readings ---------------------


class TopTwoMoE(nn.Module):
    """A mixture of experts with a learnt router: softmax gates, top-2 per sample, renormalised."""

    def __init__(self, dim, experts=4, hidden=32):
        super().__init__()
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            for _ in range(experts)
        )

    def forward(self, x):
        gates = torch.softmax(self.router(x), -1)
        top, idx = gates.topk(2, -1)
        weights = torch.zeros_like(gates).scatter(-1, idx, top / top.sum(-1, keepdim=True))
        outs = torch.stack([e(x) for e in self.experts], -1)
        return (outs * weights.unsqueeze(-2)).sum(-1)


class CourseMoE(nn.Module):
    def __init__(self, d_in=12, dim=32):
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.norm = nn.LayerNorm(dim)
        self.moe = TopTwoMoE(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.moe(self.norm(h))
        return self.head(h).squeeze(-1)


def _courses(gen, batch, seed=6):
    """Twelve standardised readings of a theorbo course (string length, gauge, pitch in Hz, gut
    or metal, ...) and the course's tension, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="theorbo_course_tension_moe_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="A residual mixture-of-experts regressor (inp, norm, moe with a learnt top-2 router and 4 GELU experts, head) predicting a theorbo course's string tension from 12 standardised readings (string length, gauge, pitch, gut or metal, ...), NAdam at 2e-3, MSE. The shard read at step 130 came from a luthier's spreadsheet whose pitch column was never standardised: raw Hz (about 100 to 400) where every other batch has values of about 1. That one batch's loss and gradient are thousands of times the usual; the run recovers afterwards; finite.",
)
def h230_theorbo_moe_raw_hz_shard(ctx: Context) -> None:
    gen = seeded(23006)
    model = CourseMoE()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    onset = 130
    peak = {}

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:, 2] = 100 + 300 * torch.rand(x.shape[0], generator=gen)  # raw Hz
        peak[step] = float(x.abs().max())
        return x, y

    _train(ctx, model, opt, _courses(gen, 64), 260, F.mse_loss, alter=alter)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the onset batch's inputs over 30x the usual",
        peak[onset] > 30 * _median([peak[s] for s in range(110, onset)]),
    )
    ctx.check(
        "loss at the onset over 20x the median before", ls[onset] > 20 * _median(ls[110:onset])
    )
    ctx.check(
        "gradient at the onset over 20x the median before", gn[onset] > 20 * _median(gn[110:onset])
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check(
        "loss back within 2x its level (last 30 steps)",
        _mean(ls[-30:]) < 2 * _mean(ls[onset - 10 : onset]),
    )
    ctx.check("finite", _finite(ls))


# -- footvolley: a param-group rate typed 2e-8 for 2e-3 -------------------------------------------


def _serves(gen, batch, seed=7):
    """Twelve standardised readings of a footvolley serve (foot speed, contact height, spin,
    sand depth, wind, ...) and the landing distance from the baseline, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="footvolley_serve_landing_relu_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing where a footvolley serve lands from 12 standardised readings (foot speed, contact height, spin, sand depth, wind, ...), AdamW with weight decay 0.01 and two param groups: fc1 ('the input layer') and the rest. The config sets the input layer's rate to `2e-8` where 2e-3 was meant: fc1's weights move by about 1e-5 of their size over the whole run while the rest train at 2e-3. The loss falls through the upper layers only and stalls well above what the same model reaches with fc1 training; finite.",
)
def h230_footvolley_input_group_lr_typo(ctx: Context) -> None:
    def run(c, lr_in):
        gen = seeded(23007)
        model = Stack(12, hidden=32, act=nn.ReLU)
        rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
        opt = torch.optim.AdamW(
            [{"params": model.fc1.parameters(), "lr": lr_in}, {"params": rest}],
            lr=2e-3,
            weight_decay=0.01,
        )
        start = _snapshot([model.fc1.weight, model.fc2.weight])
        _train(c, model, opt, _serves(gen, 64), 300, F.mse_loss)
        moved = [
            float((p.detach() - w).norm() / w.norm())
            for p, w in zip([model.fc1.weight, model.fc2.weight], start, strict=True)
        ]
        return moved

    twin = _Quiet()
    run(twin, 2e-3)  # the same run with the intended rate, for the checks only
    moved = run(ctx, 2e-8)
    ls = ctx.losses
    ctx.check("fc1 moved under 1e-4 of its size over the run", moved[0] < 1e-4)
    ctx.check("fc2 moved over 5% of its size", moved[1] > 0.05)
    ctx.check(
        "loss at the end over 1.5x that of the run with fc1 training",
        _mean(ls[-20:]) > 1.5 * _mean(twin.losses[-20:]),
    )
    ctx.check("finite", _finite(ls))


# -- pipe and tabor: a deep conv1d stack initialised at 2.5x the He scale -------------------------


class TaborConv(nn.Module):
    """Ten conv1d + ReLU layers over a drum-envelope signal, global average pool, head."""

    def __init__(self, width=16, depth=10, classes=5, init_std=0.5):
        super().__init__()
        chans = [1] + [width] * depth
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        self.head = nn.Linear(width, classes)
        for conv in self.convs:
            nn.init.normal_(
                conv.weight, std=init_std
            )  # config init_std; He gives ~0.2 at fan-in 48
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        h = x.unsqueeze(1)
        self.maps = []
        for conv in self.convs:
            h = conv(h)
            if h.requires_grad:
                h.retain_grad()
            self.maps.append(h)
            h = F.relu(h)
        return self.head(h.mean(-1))


def _rhythms(gen, batch, length=48):
    """A pipe-and-tabor player's drum envelope (48 samples, 20 ms each) and which of 5 dance
    rhythms it belongs to (jig, hornpipe, morris, reel, polka), each a different beat period."""
    periods = torch.tensor([4.0, 5.0, 6.0, 8.0, 12.0])
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, 5, (batch,), generator=gen)
        phase = torch.rand(batch, 1, generator=gen) * 12
        beat = torch.cos(2 * math.pi * (t + phase) / periods[y][:, None]).clamp_min(0) ** 4
        yield beat + 0.2 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="pipe_tabor_rhythm_deep_conv1d",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("convs.0", "convs.1"),
    diverges="auto",
    heldout=True,
    note="A ten-layer conv1d ReLU stack (convs.0 .. convs.9, kernel 3, 16 channels, global average pool, head) classifying which of 5 dance rhythms a pipe-and-tabor player's drum envelope belongs to, plain SGD at 0.01, cross-entropy. The config's `init_std: 0.5` (copied from a shallow two-layer model) overrides the He init, about 0.2 at fan-in 48: every layer multiplies the signal and the backward gradient by about 2.5, so the gradient reaching convs.0's output is over 100x the one at convs.9's at step 0 (the loss starts near 100) and the first SGD steps blow the loss up to inf/NaN by step 3.",
)
def h230_pipe_tabor_conv_init_std(ctx: Context) -> None:
    gen = seeded(23008)
    model = TaborConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ratio = {}

    def after(step):
        if step == 0:
            first = float(model.maps[0].grad.norm())
            last = float(model.maps[-1].grad.norm())
            ratio["first"] = first / max(last, 1e-30)

    _train(ctx, model, opt, _rhythms(gen, 32), 80, F.cross_entropy, classifier=True, after=after)
    ls, gn = ctx.losses, ctx.grad_norms
    bad = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 1e4), None)
    ctx.check(
        "gradient at convs.0's output over 100x that at convs.9's (step 0)",
        ratio.get("first", 0.0) > 100,
    )
    ctx.check("loss blows up (non-finite or over 1e4)", bad is not None)
    ctx.check("gradient norm at step 0 over 1e3", gn[0] > 1e3)


# -- devil stick: a softmax temperature read in the wrong unit ------------------------------------


class TrickNet(Stack):
    def __init__(self, temperature):
        super().__init__(18, hidden=64, out=7, act=nn.SiLU)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


def _tricks(gen, batch, seed=9):
    """Eighteen standardised IMU readings of a devil stick (spin rate, tilt, hand-stick
    contacts, ...) and which of 7 tricks is being played (propeller, helicopter, flip, ...)."""
    return _kinds(gen, batch, 18, 7, seed, noise=0.5)


@scenario(
    family="devil_stick_trick_silu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) classifying which of 7 devil-stick tricks is played from 18 standardised IMU readings, Adamax at 2e-3, cross-entropy. The logits are divided by a softmax temperature; the config gives `temperature: 2` (meant as 2.0, a softening) but the loader still applies the old milli-unit conversion and divides it by 1000, so the logits are divided by 0.002, i.e. multiplied by 500. The loss starts near 80; within a few dozen steps almost every row's softmax rounds a class's probability to exactly 1.0 (the target's for most rows), those rows' gradient is exactly zero, and the rare wrong saturated rows give the loss isolated jumps; finite.",
)
def h230_devil_stick_temperature_units(ctx: Context) -> None:
    gen = seeded(23009)
    model = TrickNet(temperature=2 / 1000)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    frac = {}

    def watch(step, out, x, y):
        frac[step] = collapsed_fraction(out.detach(), y)
        p = torch.softmax(out.detach().float(), -1)
        frac[("any", step)] = float(((p == 1.0).any(-1)).float().mean())

    _train(ctx, model, opt, _tricks(gen, 64), 200, F.cross_entropy, classifier=True, watch=watch)
    ls = ctx.losses
    sat = _mean([frac[("any", s)] for s in range(150, 200)])
    ctx.check("over half the rows have a class at exactly 1.0 (steps 150-200)", sat > 0.5)
    ctx.check(
        "over a third of rows give the target exactly 1.0",
        _mean([frac[s] for s in range(150, 200)]) > 0.33,
    )
    ctx.check("finite", _finite(ls))


# -- chainsaw carving: the checkpoint step backpropagates a summed loss once ----------------------


def _kickbacks(gen, batch, seed=10):
    """Fourteen standardised readings of a chainsaw-carving cut (bar angle, chain speed, wood
    density, nose contact, ...) and eight standardised outputs (kickback angle, bar torque, ...)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(14, 8, generator=g)
    v = torch.randn(14, 8, generator=g)
    while True:
        x = torch.randn(batch, 14, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(14)) + 0.5 * torch.sin(x @ v / math.sqrt(14))
        yield x, y + 0.05 * torch.randn(batch, 8, generator=gen)


@scenario(
    family="chainsaw_carving_kickback_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing eight standardised outputs of a chainsaw-carving cut (kickback angle, bar torque, ...) from 14 standardised readings, 256 cuts a batch, Adam at 1e-3, MSE. At step 60 the checkpoint hook logs the loss with reduction='sum' and that tensor is the one backpropagated: one gradient 2048x too large fills Adam's second moment (beta2 0.999). Afterwards every update is several times smaller than before and the loss, which was falling, crawls: at the end it is about 1.5x what the same run without the bug reaches; finite.",
)
def h230_chainsaw_carving_summed_checkpoint_loss(ctx: Context) -> None:
    steps, onset = 240, 60

    def run(c, buggy):
        gen = seeded(23010)
        model = Stack(14, hidden=64, out=8, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        params = list(model.parameters())
        moves, prev = {}, {}

        def before(step):
            prev["w"] = _snapshot(params)

        def after(step):
            moves[step] = _mean(
                [
                    float((p.detach() - w).abs().mean())
                    for p, w in zip(params, prev["w"], strict=True)
                ]
            )

        def scale_loss(step, total):
            return total * 256 * 8 if buggy and step == onset else total

        _train(
            c,
            model,
            opt,
            _kickbacks(gen, 256),
            steps,
            F.mse_loss,
            before=before,
            after=after,
            scale_loss=scale_loss,
        )
        return moves

    twin = _Quiet()
    run(twin, buggy=False)
    moves = run(ctx, buggy=True)
    ls, gn = ctx.losses, ctx.grad_norms
    before_move = _mean([moves[s] for s in range(onset - 20, onset)])
    after_move = _mean([moves[s] for s in range(onset + 30, steps)])
    ctx.check(
        "gradient at the onset over 500x the median before", gn[onset] > 500 * _median(gn[:onset])
    )
    ctx.check("updates after the onset under 25% of those before", after_move < 0.25 * before_move)
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.7))
    ctx.check(
        "loss at the end over 1.3x that of the same run without the bug",
        _mean(ls[-30:]) > 1.3 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


def _rebounds(gen, batch, seed=11):
    """Sixteen standardised readings of an air-hockey shot (puck speed, angle, mallet spin, rail
    distance, ...) and which of 6 rebound lanes the puck takes."""
    return _kinds(gen, batch, 16, 6, seed, noise=0.45)


@scenario(
    family="air_hockey_puck_rebound_gelu_classifier",
    optimizer="SGD (Nesterov)",
    cause="healthy",
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying the rebound lane of an air-hockey shot from 16 standardised readings, SGD Nesterov (momentum cycled 0.8-0.9) with a triangular cyclic learning rate between 0.01 and 0.1 (CyclicLR, half-cycle 40 steps), gradient-norm clipping at 5, cross-entropy with label smoothing 0.05.",
)
def h230_air_hockey_cyclic_lr_control(ctx: Context) -> None:
    gen = seeded(23011)
    model = Stack(16, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.01, max_lr=0.1, step_size_up=40, base_momentum=0.8, max_momentum=0.9
    )
    _train(
        ctx,
        model,
        opt,
        _rebounds(gen, 64),
        240,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.05),
        classifier=True,
        clip=5.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("loss fell by over half", _fell(ls, ratio=0.5))
    ctx.check("finite", _finite(ls))


class PinAutoencoder(nn.Module):
    """A tied-weight autoencoder: the decoder reuses the encoder's weight, transposed."""

    def __init__(self, d=32, code=8):
        super().__init__()
        self.enc = nn.Linear(d, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _barrels(gen, batch, seed=12):
    """A serinette (bird organ) pin barrel, one 32-reading row of standardised pin heights per
    turn segment, lying near an 8-dimensional set of tunes."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, 32, generator=g) / math.sqrt(8)
    while True:
        z = torch.randn(batch, 8, generator=gen)
        x = torch.tanh(z) @ basis + 0.05 * torch.randn(batch, 32, generator=gen)
        yield x, x


@scenario(
    family="serinette_pin_barrel_tied_autoencoder",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a tied-weight tanh autoencoder (enc, act, the decoder reusing enc.weight transposed) reconstructing a serinette pin barrel's 32 standardised pin heights per segment, fp16 autocast with a torch.amp.GradScaler, RAdam under OneCycleLR peaking at 1e-2, gradient accumulation over 2 micro-batches, MSE.",
)
def h230_serinette_tied_autoencoder_amp_control(ctx: Context) -> None:
    gen = seeded(23012)
    model = PinAutoencoder()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _barrels(gen, 32),
        steps,
        F.mse_loss,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("loss fell by over half", _fell(ls, ratio=0.5))
    ctx.check("finite", _finite(ls))
    ctx.check(
        "the scaler's scale stayed finite and positive", all(0 < s < math.inf for s in ctx.scales)
    )


def _rays(gen, batch, seed=13):
    """Ten standardised readings of a sunset sky (sun elevation, cloud-gap width, aerosol depth,
    humidity, ...) and the spread angle of the crepuscular rays, standardised, with occasional
    gross errors from cloud-contaminated frames (Student-t noise)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    v = torch.randn(10, generator=g)
    t = torch.distributions.StudentT(torch.tensor(2.5))
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(10)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(10))
        yield x, y + 0.1 * t.sample((batch,))


@scenario(
    family="crepuscular_ray_spread_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the spread angle of crepuscular rays from 10 standardised sky readings with heavy-tailed (Student-t) label noise, Adadelta at lr 1.0 with weight decay 1e-4, Huber loss, gradient-norm clipping at 1, ReduceLROnPlateau on the training loss.",
)
def h230_crepuscular_ray_adadelta_control(ctx: Context) -> None:
    gen = seeded(23013)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _rays(gen, 64),
        240,
        lambda out, y: F.huber_loss(out, y, delta=0.5),
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("loss fell by over half", _fell(ls, ratio=0.5))
    ctx.check("finite", _finite(ls))
