"""Held-out set 432 (``h432_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a starling-murmuration set matcher whose Sinkhorn epsilon anneals with no floor (the
plain-domain kernel underflows, 0/0), a change-ringing peal attention classifier whose scores are
multiplied by sqrt(d) instead of divided (attention logits grow), a dune-creep fp16 sum-pooled
regressor whose labels are in millimetres for metres (the head's fp16 output overflows), a
curling sweep ReLU regressor on RMSprop with lr typed 2e-2 for 1e-3 (ReLUs die), a hurling
sliotar flight regressor fed one club's shard in grams for kilograms (one corrupted batch), a
glassblower gather two-group tanh regressor whose trunk lr is typed 1e-8 for 1e-2 (a frozen
trunk), a dowsing-rod twitch classifier whose temperature is typed 0.01 for 1.0 (softmax
saturates), a kite-line tension regressor whose resumed step reloads the auxiliary loss weight
in per-mille (one gradient burst), a tide-pool gauge regressor whose hand-written decoupled
weight decay lost its minus sign (a slow climb) and an alphorn bore deep leaky-ReLU MLP
initialised with std 0.3 for sqrt(2 / fan_in) (gradients grow through depth).

Controls: a lacrosse cradle classifier with a softmax temperature annealed 3 -> 1 on a cosine
schedule (AdamW, clipping), a sled-dog pace Gaussian-NLL net (RAdam, param groups, warm-up,
clipping) and a bagpipe drone tied-weight GRU byte LM (SGD Nesterov, StepLR, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
    text_batches,
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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


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
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor (ctx is None)."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
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
        if attach:
            ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.cos(2 * x[:, 2]) - 0.2 > 0.0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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


# -- faults ----------------------------------------------------------------------------------------


class _Sinkhorn(nn.Module):
    """Soft matching between a predicted and a target set: plain-domain Sinkhorn on
    exp(-C / eps), the transport cost sum(P * C) / K as the loss."""

    def __init__(self, iters=15):
        super().__init__()
        self.iters = iters
        self.eps = 0.5
        self.last_zero_row = False

    def forward(self, pred, target):
        cost = ((pred[:, :, None, :] - target[:, None, :, :]) ** 2).sum(-1)
        kern = torch.exp(-cost / self.eps)
        k = cost.shape[-1]
        v = torch.ones_like(cost[:, 0, :])
        zero = False
        for _ in range(self.iters):
            kv = (kern @ v[..., None]).squeeze(-1)
            u = 1.0 / kv
            ku = (kern.transpose(1, 2) @ u[..., None]).squeeze(-1)
            v = 1.0 / ku
            zero = zero or bool((kv.detach() == 0).any() or (ku.detach() == 0).any())
            zero = zero or not bool(
                torch.isfinite(u.detach()).all() and torch.isfinite(v.detach()).all()
            )
        self.last_zero_row = zero
        plan = u[..., None] * kern * v[:, None, :]
        return (plan * cost).sum((1, 2)).mean() / k


class _FlockSetNet(nn.Module):
    def __init__(self, d_in=8, k=6, hidden=64):
        super().__init__()
        self.k = k
        self.enc = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.act = nn.GELU()
        self.points = nn.Linear(hidden, 2 * k)
        self.matcher = _Sinkhorn()

    def forward(self, x):
        return self.points(self.act(self.enc(x))).reshape(-1, self.k, 2)


def _flock(gen, batch, d_in=8, k=6, seed=0):
    """A context vector and the unordered set of k bird positions it implies."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, 2 * k, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        pts = torch.tanh(x @ w).reshape(batch, k, 2)
        order = torch.argsort(torch.rand(batch, k, generator=gen), dim=1)
        yield x, torch.gather(pts, 1, order[..., None].expand(-1, -1, 2))


@scenario(
    family="murmuration_starling_sinkhorn_set_matcher",
    optimizer="Adam",
    cause="nonfinite",
    where=("matcher",),
    diverges=81,
    heldout=True,
    onset=79,
    note="Starling-murmuration set predictor (GELU MLP emitting 6 unordered 2-d positions) "
    "trained by Hungarian-free soft matching: a plain-domain Sinkhorn normalisation of "
    "exp(-C / eps) between predicted and target sets, transport cost as the loss, Adam. The eps "
    "annealing 0.5 * 0.96^step lost its floor max(., 0.02): once eps is small enough, a whole "
    "row of the kernel underflows to 0 in float32, 1 / (K v) is inf and inf * 0 gives NaN.",
)
def h432_murmuration_sinkhorn_eps_no_floor(ctx) -> None:
    gen = seeded(4321)
    model = _FlockSetNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    eps_at = []
    zero_row = []

    def before(step):
        model.matcher.eps = 0.5 * 0.96**step
        eps_at.append(model.matcher.eps)

    def loss_fn(out, y):
        loss = model.matcher(out, y)
        zero_row.append(model.matcher.last_zero_row)
        return loss

    losses = _loop(ctx, model, opt, _flock(gen, 32, seed=4322), 300, loss_fn, before=before)
    bad = _first_bad(losses)
    ctx.check("the loss is non-finite within the run", bad is not None)
    ctx.check(
        "finite and falling before that", bad is not None and bad > 20 and _fell(losses[:bad])
    )
    ctx.check(
        "eps below the intended floor 0.02 at the NaN", bad is not None and eps_at[bad] < 0.02
    )
    ctx.check(
        "a Sinkhorn denominator underflows to 0 (scaling inf) at the NaN",
        bad is not None and zero_row[bad],
    )
    ctx.check("no denominator underflow before", bad is not None and not any(zero_row[:bad]))


class _PealAttention(nn.Module):
    def __init__(self, dim, scale):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.scale = scale
        self.max_logit = 0.0

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2) * self.scale
        self.max_logit = float(scores.detach().abs().max())
        return torch.softmax(scores, -1) @ self.v(x)


class _PealNet(nn.Module):
    def __init__(self, bells=8, dim=16, classes=4, scale=0.25):
        super().__init__()
        self.tok = nn.Embedding(bells, dim)
        self.pos = nn.Embedding(12, dim)
        self.attn = _PealAttention(dim, scale)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        h = self.norm(h + self.attn(h))
        return self.head(h.mean(1))


def _peals(gen, batch):
    """Rows of a peal (bell numbers); the class is which bell leads most often, folded to 4."""
    while True:
        x = torch.randint(0, 8, (batch, 12), generator=gen)
        y = torch.mode(x[:, ::3], dim=1).values % 4
        yield x, y


@scenario(
    family="change_ringing_peal_attention_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Change-ringing peal classifier (one hand-written attention layer, LayerNorm, mean "
    "pool, cross-entropy, Adam lr 1e-2). The score scale is written d ** 0.5 where d ** -0.5 was "
    "meant (16x too large at d=16) and there is no qk-norm: q.k logits grow through training.",
)
def h432_change_ringing_scale_typo(ctx) -> None:
    gen = seeded(4323)
    model = _PealNet(scale=16**0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    logits = []
    losses = _loop(
        ctx,
        model,
        opt,
        _peals(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda s: logits.append(model.attn.max_logit),
    )
    ctx.check("max |attention logit| over 5x its start", logits[-1] > 5 * logits[0])
    ctx.check("max |attention logit| over 300 at the end", logits[-1] > 300)
    ctx.check("still growing over the last 50 steps", _mean(logits[-20:]) > _mean(logits[-60:-40]))
    ctx.check("finite", _finite(losses))


class _DuneNet(nn.Module):
    """Per-reading ReLU encoder, sum-pooled over the transect, a linear head."""

    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def pooled(self, x):
        return self.act(self.enc(x)).sum(1)

    def forward(self, x):
        return self.head(self.pooled(x)).squeeze(-1)


def _dunes(gen, batch, n=32, unit=1.0):
    g = torch.Generator().manual_seed(4325)
    w = torch.randn(4, generator=g)
    while True:
        x = torch.randn(batch, n, 4, generator=gen)
        y = 40.0 + 30.0 * torch.tanh(x.mean(1) @ w)
        yield x, unit * y


@scenario(
    family="dune_creep_mm_fp16_sumpool_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("head",),
    diverges=223,
    heldout=True,
    note="Dune-creep regressor (per-reading ReLU encoder, sum-pooled over a 32-reading transect, "
    "linear head, MSE, AdamW) under fp16 autocast with a GradScaler. The migration labels come in "
    "millimetres for metres (1000x): as the net fits them, the head's fp16 output passes 65504 "
    "and overflows to inf while the same forward in fp32 is finite.",
)
def h432_dune_creep_mm_fp16(ctx) -> None:
    gen = seeded(4324)
    model = _DuneNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    batches = _dunes(gen, 32, unit=1000.0)
    seen = []

    def alter(step, x, y):
        seen.append(x)
        return x, y

    losses = _loop(ctx, model, opt, batches, 300, F.mse_loss, alter=alter, scaler=scaler, amp=True)
    bad = _first_bad(losses)
    ctx.check("the loss is non-finite within the run", bad is not None and bad > 10)
    if bad is not None:
        with torch.no_grad():
            fp32 = model(seen[bad])
            with torch.autocast("cpu", dtype=torch.float16):
                fp16 = model(seen[bad])
        ctx.check(
            "fp32 forward finite over 65504",
            bool(torch.isfinite(fp32).all()) and float(fp32.abs().max()) > 65504,
        )
        ctx.check("fp16 forward overflows", not bool(torch.isfinite(fp16).all()))
    ctx.check("finite before", bad is not None and _finite(losses[:bad]))


def _sweep_run(lr, steps, seed, ctx=None):
    gen = seeded(seed)
    model = _Net(10, 64, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    dead = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(probe)))

    probe = torch.randn(256, 10, generator=torch.Generator().manual_seed(seed + 7))
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed),
        steps,
        F.mse_loss,
        after=after,
        attach=ctx is not None,
    )
    return dead


@scenario(
    family="curling_stone_sweep_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="Curling sweep-effect regressor (ReLU MLP, MSE, RMSprop) whose lr is typed 2e-2 for "
    "1e-3: the first large steps drive most of the second layer's ReLUs negative on every input "
    "and they never come back.",
)
def h432_curling_sweep_lr_typo(ctx) -> None:
    dead = _sweep_run(2e-2, 200, 4326, ctx)
    ref = _sweep_run(1e-3, 200, 4326)
    ctx.check("over 40% of act2 dead over the last 50 steps", _mean(dead[-50:]) > 0.4)
    ctx.check("under 20% at the intended 1e-3", _mean(ref[-50:]) < 0.2)
    ctx.check("over twice the intended share", _mean(dead[-50:]) > 2 * _mean(ref[-50:]))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="hurling_sliotar_flight_clipped_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Hurling sliotar flight-distance regressor (SiLU MLP, MSE, Adamax, clipping at 1). One "
    "club's shard arrives at step 100 with the ball-mass and stick-speed columns in grams and "
    "cm/s instead of kilograms and m/s (100-1000x): one corrupted batch; clipping bounds the "
    "update and the run recovers.",
)
def h432_hurling_shard_units(ctx) -> None:
    gen = seeded(4327)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def alter(step, x, y):
        if step == 100:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0
            x[:, 1] = x[:, 1] * 100.0
        return x, y

    losses = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 4328), 200, F.mse_loss, alter=alter, clip=1.0
    )
    g = ctx.grad_norms
    ctx.check(
        "loss at step 100 over 20x the median before", losses[100] > 20 * _median(losses[80:100])
    )
    ctx.check("gradient at step 100 over 20x the median before", g[100] > 20 * _median(g[80:100]))
    ctx.check(
        "recovers: last 20 under 2x the pre-onset level",
        _mean(losses[-20:]) < 2 * _mean(losses[80:100]),
    )
    ctx.check("finite", _finite(losses))


class _GatherNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    family="glassblower_gather_two_group_tanh_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("trunk", "trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="Glassblower gather-weight regressor (tanh MLP, Huber, Adagrad with two param groups). "
    "The trunk group's lr is typed 1e-8 for 1e-2: the trunk receives gradients but its weights "
    "do not move; only the head learns and the loss plateaus high.",
)
def h432_glassblower_trunk_lr_typo(ctx) -> None:
    gen = seeded(4329)
    model = _GatherNet()
    opt = torch.optim.Adagrad(
        [
            {"params": model.trunk.parameters(), "lr": 1e-8},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    w0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    tg = []

    def after(step):
        if model.trunk[0].weight.grad is not None:
            tg.append(float(model.trunk[0].weight.grad.norm()))

    losses = _loop(ctx, model, opt, _readings(gen, 64, 10, 4330), 200, F.huber_loss, after=after)
    ctx.check("trunk.0 moves under 1e-5 of its norm", _rel_change(w0, model.trunk[0].weight) < 1e-5)
    ctx.check("trunk.0 receives gradients", len(tg) > 0 and _median(tg) > 1e-3)
    ctx.check("the head moves over 10%", _rel_change(h0, model.head.weight) > 0.1)
    ctx.check("finite", _finite(losses))


@scenario(
    family="dowsing_rod_twitch_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Dowsing-rod twitch classifier (GELU MLP, cross-entropy on logits / T, NAdam lr 5e-3). "
    "The config's temperature is typed 0.01 for 1.0: the softmax saturates and most rows' target "
    "probability rounds to exactly 1.0 in float32.",
)
def h432_dowsing_temperature_typo(ctx) -> None:
    gen = seeded(4331)
    model = _Net(12, 64, 6, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
    temp = 0.01
    seen = []

    def loss_fn(out, y):
        seen.append((out.detach(), y))
        return F.cross_entropy(out / temp, y)

    losses = _loop(ctx, model, opt, _grades(gen, 64, 12, 6, 4332), 200, loss_fn, classifier=True)
    bug = [collapsed_fraction(o / temp, y) for o, y in seen[-30:]]
    ref = [collapsed_fraction(o / 1.0, y) for o, y in seen[-30:]]
    ctx.check("over half the rows collapse over the last 30 steps", _mean(bug) > 0.5)
    ctx.check("under 5% at T=1 on the same logits", _mean(ref) < 0.05)
    ctx.check("finite", _finite(losses))


@scenario(
    family="kite_line_tension_aux_loss_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Kite-line tension regressor (tanh MLP, MSE plus a 0.002-weighted weight-energy auxiliary "
    "term, SGD momentum 0.9, clipping at 1). The run is resumed at step 120 and that step reads "
    "the auxiliary weight from the checkpoint in per-mille (2 for 0.002): one gradient burst on "
    "an ordinary logged loss; clipping bounds the update and the run recovers.",
)
def h432_kite_aux_weight_resume(ctx) -> None:
    gen = seeded(4333)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def backprop(step, loss):
        w = 2.0 if step == 120 else 2e-3
        aux = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss + w * aux

    losses = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 4334), 200, F.mse_loss, backprop=backprop, clip=1.0
    )
    g = ctx.grad_norms
    ctx.check("gradient at step 120 over 30x the median before", g[120] > 30 * _median(g[100:120]))
    ctx.check(
        "logged loss at 120 under 2x the median before", losses[120] < 2 * _median(losses[100:120])
    )
    ctx.check(
        "recovers: last 20 under 1.5x the pre-onset level",
        _mean(losses[-20:]) < 1.5 * _mean(losses[100:120]),
    )
    ctx.check("finite", _finite(losses))


@scenario(
    family="tide_pool_gauge_decay_sign_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Tide-pool water-level regressor (SiLU MLP, MSE, Adam lr 5e-3) with a hand-written "
    "decoupled weight decay (2.0) applied after each step as p.add_(p, alpha=lr * wd): the minus "
    "sign is missing, so every weight is inflated by 1% a step; Adam holds it at first, then the "
    "loss climbs slowly with no mechanism in the model.",
)
def h432_tide_pool_decay_sign(ctx) -> None:
    gen = seeded(4335)
    model = _Net(8, 48, 1, act=nn.SiLU)
    lr, wd = 5e-3, 2.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    norm0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)

    losses = _loop(ctx, model, opt, _readings(gen, 64, 8, 4336), 240, F.mse_loss, after=after)
    norm = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    low = min(losses)
    ctx.check("last 20 over 5x the lowest loss", _mean(losses[-20:]) > 5 * low)
    ctx.check(
        "climbing through the second half",
        _mean(losses[-40:]) > _mean(losses[120:160]) > _mean(losses[80:120]),
    )
    ctx.check("weight norm over 2x its start", norm > 2 * norm0)
    ctx.check("no blow-up: last 20 under 10", _mean(losses[-20:]) < 10)
    ctx.check("finite", _finite(losses))


class _BoreNet(nn.Module):
    def __init__(self, d_in=16, width=64, depth=10, std=None):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(
                lin.weight, std=std if std is not None else math.sqrt(2.0 / lin.in_features)
            )
            nn.init.zeros_(lin.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for lin in self.layers:
            x = lin(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.leaky_relu(x, 0.1)
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    return float(model.outs[0].grad.norm() / model.outs[-1].grad.norm().clamp_min(1e-30))


@scenario(
    family="alphorn_bore_deep_leaky_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Alphorn bore-resonance regressor (10-layer leaky-ReLU MLP, MSE, plain SGD lr 1e-3, "
    "clipping at 1). The hand-written init uses std 0.3 where sqrt(2 / fan_in) = 0.18 was meant: "
    "each layer multiplies the backward signal by about 1.7, so gradients grow through depth "
    "toward the input layer.",
)
def h432_alphorn_init_std(ctx) -> None:
    gen = seeded(4337)
    model = _BoreNet(std=0.3)
    ref = _BoreNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios = []
    batches = _readings(gen, 64, 16, 4338)

    def after(step):
        ratios.append(_depth_ratio(model))

    losses = _loop(ctx, model, opt, batches, 150, F.mse_loss, after=after, clip=1.0)
    x, y = next(batches)
    F.mse_loss(ref(x), y).backward()
    ctx.check("dL/d(layers.0 out) over 50x dL/d(layers.9 out) at the start", ratios[0] > 50)
    ctx.check("over 20x in median", _median(ratios) > 20)
    ctx.check("under 5x at the intended init", _depth_ratio(ref) < 5)
    ctx.check("finite", _finite(losses))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="lacrosse_cradle_temperature_annealed_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lacrosse cradle-style classifier (GELU MLP, cross-entropy with label smoothing 0.05 on "
    "logits / T) whose softmax temperature is annealed 3 -> 1 on a cosine schedule over the run, "
    "AdamW with weight decay under a cosine lr schedule, clipping at 1. A healthy control.",
)
def h432_lacrosse_temperature_anneal(ctx) -> None:
    gen = seeded(4341)
    model = _Net(12, 64, 5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = 220
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=3e-4)
    temp = [3.0]

    def before(step):
        temp[0] = 1.0 + 2.0 * 0.5 * (1 + math.cos(math.pi * step / steps))

    def loss_fn(out, y):
        return F.cross_entropy(out / temp[0], y, label_smoothing=0.05)

    losses = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 4342, spread=1.3),
        steps,
        loss_fn,
        classifier=True,
        before=before,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("temperature reached about 1", abs(temp[0] - 1.0) < 0.01)
    ctx.check("finite", _finite(losses))


class _PaceNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.body(x)
        return torch.stack([self.mean(h).squeeze(-1), self.log_var(h).squeeze(-1)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].clamp(-8, 8).exp(), eps=1e-4)


@scenario(
    family="sled_dog_pace_gaussian_nll_net",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sled-dog team pace net (SiLU MLP with mean and log-variance heads, Gaussian NLL on "
    "noisy split times, log-variance clamped), RAdam with two param groups (the variance head at "
    "a third of the lr), a 30-step linear warm-up by LambdaLR, clipping at 1. A healthy control.",
)
def h432_sled_dog_gaussian_nll(ctx) -> None:
    gen = seeded(4343)
    model = _PaceNet()
    opt = torch.optim.RAdam(
        [
            {"params": list(model.body.parameters()) + list(model.mean.parameters()), "lr": 3e-3},
            {"params": model.log_var.parameters(), "lr": 1e-3},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    losses = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4344, noise=0.2),
        200,
        _gauss_nll,
        clip=1.0,
        sched=sched,
    )
    ctx.check(
        "loss fell by over 0.5 nats",
        _finite(losses) and _mean(losses[-10:]) < _mean(losses[:10]) - 0.5,
    )
    ctx.check("finite", _finite(losses))


class _DroneLM(nn.Module):
    def __init__(self, vocab=64, dim=48):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return out


@scenario(
    family="bagpipe_drone_tied_gru_lm",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bagpipe drone-tune byte language model (GRU, output head tied to the embedding), "
    "cross-entropy, SGD Nesterov momentum 0.9 under StepLR, clipping at 0.5, noisy small batches. "
    "A healthy control.",
)
def h432_bagpipe_tied_gru(ctx) -> None:
    gen = seeded(4345)
    model = _DroneLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    text = text_batches(gen, batch=16, length=24, vocab=64)

    def batches():
        while True:
            x, y = next(text)
            yield x, y.reshape(-1)

    def loss_fn(out, y):
        return F.cross_entropy(model.head(out).reshape(-1, 64), y)

    losses = _loop(
        ctx, model, opt, batches(), 200, loss_fn, classifier=False, clip=0.5, sched=sched
    )
    ctx.check("loss fell", _fell(losses, ratio=0.75))
    ctx.check("head tied to the embedding", model.head.weight is model.embed.weight)
    ctx.check("finite", _finite(losses))
