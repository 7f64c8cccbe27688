"""Held-out set 434 (``h434_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a sackbut slide-position two-group regressor whose trunk lr is typed 1e-9 for 1e-1 on
Adagrad (a frozen trunk), a cheese-wheel ripeness cumulative-link ordinal net whose cut points are
unconstrained and whose grade probability is logged with no clamp (log of a negative: NaN), a
celesta hammer-felt regressor resumed from a stale step-5 checkpoint (a one-off loss spike), a
kettledrum pedal-pitch classifier trained with nll_loss on raw logits (the head's logits grow
without bound), a shawm reed-pressure regressor whose summed loss reads a stale divisor of 1 for
one step (a gradient burst), a rainstick fill-time regressor fed one shard in milliseconds (one
corrupted batch), a balafon gourd-resonance regressor whose L2 penalty has its sign flipped (a
slow climb), a brinicle growth IRNN whose recurrent identity is initialised at 1.3 (gradients grow
through time), a rebec bowing-style cosine classifier whose scale is typed 1600 for 16 (softmax
saturates) and a fog-bow brightness regressor whose StepLR gamma is typed 10 for 0.1 (past
2/sharpness).

Controls: a glass-harmonica rim-grade ordinal net (softplus-increment cut points, SGD momentum,
cosine schedule), a calliope steam-whistle fp16 Conv1d classifier (GradScaler, AdamW under
OneCycleLR, label smoothing, clipping) and a cryovolcano plume-height Gaussian-NLL regressor (Adam
with warm-up, accumulation, clipping).
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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    n = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / n for u in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        n = torch.sqrt(sum((u * u).sum() for u in hv)).clamp_min(1e-12)
        v = [u / n for u in hv]
    return lam


def _rel(before, after):
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


# -- faults ----------------------------------------------------------------------------------------


class _TwoGroup(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    family="sackbut_slide_position_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="Sackbut slide-position regressor (tanh trunk, linear head, MSE, Adagrad with two param "
    "groups). The trunk group's lr is typed 1e-9 for 1e-1: the trunk receives gradients but its "
    "weights do not move and only the head learns (on the trunk's random features).",
)
def h434_sackbut_trunk_lr_typo(ctx) -> None:
    gen = seeded(4341)
    model = _TwoGroup(10)
    opt = torch.optim.Adagrad(
        [
            {"params": model.trunk.parameters(), "lr": 1e-9},  # typed for 1e-1
            {"params": model.head.parameters(), "lr": 1e-1},
        ]
    )
    w0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    seen = []

    def after(step):
        g = model.trunk[0].weight.grad
        seen.append(float(g.norm()) if g is not None else 0.0)

    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=341), 200, F.mse_loss, after=after)
    ctx.check("trunk.0 moved under 1e-5 of its norm", _rel(w0, model.trunk[0].weight) < 1e-5)
    ctx.check("trunk.0 received gradients", _median(seen) > 1e-4)
    ctx.check("head moved over 10%", _rel(h0, model.head.weight) > 0.1)
    ctx.check("finite", _finite(ctx.losses))


class _Ordinal(nn.Module):
    """Cumulative-link ordinal model: a scalar score per row, P(y <= k) = sigmoid(c_k - score)."""

    def __init__(self, d_in, grades, hidden=32, softplus_gaps=False):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.score = nn.Linear(hidden, 1)
        self.link = _CumulativeLink(grades, softplus_gaps)

    def forward(self, x):
        return self.link(self.score(self.act1(self.fc1(x))).squeeze(-1))


class _CumulativeLink(nn.Module):
    """Returns per-grade probabilities from the score and the learnt cut points."""

    def __init__(self, grades, softplus_gaps):
        super().__init__()
        self.softplus_gaps = softplus_gaps
        if softplus_gaps:
            self.first = nn.Parameter(torch.tensor(-1.5))
            # softplus(0.54) = 1: cut points 1 apart at the start
            self.gaps = nn.Parameter(torch.full((grades - 2,), 0.5413))
        else:
            self.cuts = nn.Parameter(torch.linspace(-1.5, 1.5, grades - 1))

    def thresholds(self):
        if self.softplus_gaps:
            return torch.cat(
                [self.first[None], self.first + torch.cumsum(F.softplus(self.gaps), 0)]
            )
        return self.cuts

    def forward(self, score):
        cum = torch.sigmoid(self.thresholds()[None, :] - score[:, None])
        zero = torch.zeros_like(score)[:, None]
        one = torch.ones_like(score)[:, None]
        cum = torch.cat([zero, cum, one], 1)
        return cum[:, 1:] - cum[:, :-1]


def _ordinal_nll(p, y, clamp=True):
    py = p.gather(1, y[:, None]).squeeze(1)
    if clamp:
        py = py.clamp_min(1e-7)
    return -torch.log(py).mean()


def _grading(gen, batch, d_in, seed, cuts):
    """Rows with a latent quality; the grade is how many cut points it passes."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    cuts = torch.tensor(cuts)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = 2.0 * (x @ w) + 0.3 * torch.cos(x[:, 0]) + 0.3 * torch.randn(batch, generator=gen)
        yield x, (z[:, None] > cuts[None, :]).sum(1)


@scenario(
    family="cheese_wheel_ripeness_cumulative_link_ordinal_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("link",),
    diverges=18,
    heldout=True,
    note="Cheese-wheel ripeness grader (ReLU MLP score, cumulative-link ordinal head with five "
    "grades and four learnt cut points, Adam). The cut points are free parameters with no ordering "
    "constraint and the grade probability P(y <= k) - P(y <= k-1) is logged with no clamp: the "
    "rare middle grade squeezes its two cut points together until they cross, its probability "
    "turns negative and log gives NaN.",
)
def h434_cheese_wheel_unordered_cuts(ctx) -> None:
    gen = seeded(4342)
    model = _Ordinal(8, 5)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    order = []

    def after(step):
        c = model.link.cuts.detach()
        order.append(bool((c[1:] > c[:-1]).all()))

    _loop(
        ctx,
        model,
        opt,
        _grading(gen, 64, 8, seed=342, cuts=[-1.2, -0.2, -0.19, 1.0]),
        300,
        lambda p, y: _ordinal_nll(p, y, clamp=False),
        after=after,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("cut points were ordered at the start", order[0])
    ctx.check("cut points out of order before the NaN", bad is not None and not all(order[:bad]))
    ctx.check("finite before", bad is not None and _finite(ctx.losses[:bad]))


@scenario(
    family="celesta_hammer_felt_wear_relu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Celesta hammer-felt wear regressor (ReLU MLP, MSE, NAdam). At step 120 a resume loads "
    "the weights through a 'latest' checkpoint link that still points at the step-5 snapshot, "
    "keeping the optimizer state: the loss jumps back up for a moment with no gradient or data "
    "fault behind it, and the run recovers.",
)
def h434_celesta_stale_checkpoint(ctx) -> None:
    gen = seeded(4343)
    model = _Net(10, 48, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    snap = {}

    def before(step):
        if step == 5:
            snap.update({k: v.clone() for k, v in model.state_dict().items()})
        if step == 120:
            model.load_state_dict(snap)  # the stale 'latest' link

    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=343), 220, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("loss at 120 over 5x the median of 100..119", ls[120] > 5 * _median(ls[100:120]))
    ctx.check(
        "recovers: last 20 under 1.5x the pre-onset level",
        _mean(ls[-20:]) < 1.5 * _mean(ls[100:120]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="kettledrum_pedal_pitch_raw_nll_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kettledrum pedal-pitch classifier (ReLU MLP, SGD Nesterov). The loss is written "
    "F.nll_loss(logits, y) on the raw head output, the log_softmax forgotten: the 'loss' is "
    "-mean(logit of the target), unbounded below, and the head's logits grow without bound.",
)
def h434_kettledrum_nll_no_log_softmax(ctx) -> None:
    gen = seeded(4344)
    model = _Net(12, 48, 6)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    probe = next(_grades(torch.Generator().manual_seed(9), 256, 12, 6, seed=344))[0]
    sizes = []

    def before(step):
        with torch.no_grad():
            sizes.append(float(model(probe).abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, seed=344),
        150,
        F.nll_loss,
        classifier=True,
        before=before,
    )
    ctx.check("max |logit| over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("still growing over the last 30 steps", sizes[-1] > 1.2 * sizes[-30])
    ctx.check("'loss' below -10", min(v for v in ctx.losses if math.isfinite(v)) < -10)


@scenario(
    family="shawm_reed_pressure_sum_loss_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="Shawm reed-pressure regressor (SiLU MLP, SGD, clipping at 1). The loss is a summed "
    "squared error divided by a batch-size variable; at step 150 the epoch's first batch reads a "
    "stale divisor of 1 instead of 64, so one step's gradient is 64x on an ordinary logged loss. "
    "Clipping bounds the update and the run recovers.",
)
def h434_shawm_stale_divisor(ctx) -> None:
    gen = seeded(4345)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def backprop(step, loss):
        return loss * (64.0 if step == 150 else 1.0)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=345),
        220,
        F.mse_loss,
        backprop=backprop,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at 150 over 30x the median of 120..149", gn[150] > 30 * _median(gn[120:150])
    )
    ctx.check("logged loss at 150 ordinary (under 2x)", ls[150] < 2 * _median(ls[120:150]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.3 * _mean(ls[130:150]))
    ctx.check("trained", _fell(ls))


@scenario(
    family="rainstick_fill_time_relu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Rainstick fill-time regressor (ReLU MLP, MSE, RMSprop, clipping at 1). The shard read "
    "at step 100 logged the fall time in milliseconds instead of seconds (targets 1000x): one "
    "batch's loss and gradient burst; clipping bounds the update and the run recovers.",
)
def h434_rainstick_millisecond_shard(ctx) -> None:
    gen = seeded(4346)
    model = _Net(10, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 100 else (x, y)

    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=346), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss at 100 over 100x the median of 70..99", ls[100] > 100 * _median(ls[70:100]))
    ctx.check("gradient at 100 over 20x the median", gn[100] > 20 * _median(gn[70:100]))
    ctx.check("recovers", _mean(ls[-20:]) < 2 * _mean(ls[80:100]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="balafon_gourd_resonance_l2_sign_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Balafon gourd-resonance regressor (tanh MLP, MSE, SGD momentum 0.9). A hand-written L2 "
    "penalty is added as loss - wd * sum(w^2) (sign flipped): the weights grow steadily and the "
    "loss, after falling, climbs slowly with no single event behind it.",
)
def h434_balafon_l2_sign(ctx) -> None:
    gen = seeded(4347)
    model = _Net(10, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    wd = 5e-2
    w0 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)

    def backprop(step, loss):
        return loss - wd * sum((p**2).sum() for p in model.parameters())  # sign flipped

    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=347), 300, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    w1 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    ctx.check("loss over the last 20 over 3x its lowest", _mean(ls[-20:]) > 3 * min(ls))
    ctx.check("climbing through the second half", _mean(ls[-30:]) > _mean(ls[150:180]))
    ctx.check("weight norm over 2x", w1 > 2 * w0)
    ctx.check("finite", _finite(ls))


class _IRNN(nn.Module):
    def __init__(self, d_in=3, hidden=32, gain=1.0):
        super().__init__()
        self.cell = nn.RNNCell(d_in, hidden, nonlinearity="relu")
        with torch.no_grad():
            self.cell.weight_hh.copy_(gain * torch.eye(hidden))
            self.cell.bias_hh.zero_()
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _brine(gen, batch, length=30):
    """Salinity, temperature and flow along a brinicle's growth; target: its final length."""
    while True:
        x = 0.5 * torch.randn(batch, length, 3, generator=gen)
        y = x[:, :, 0].mean(1) + 0.5 * torch.tanh(x[:, -5:, 1].sum(1))
        yield x, y


def _through_time(model, x, y):
    out = model(x)
    F.mse_loss(out, y).backward()
    r = float(model.states[0].grad.norm() / model.states[-1].grad.norm().clamp_min(1e-12))
    model.zero_grad(set_to_none=True)
    return r


@scenario(
    family="brinicle_growth_relu_irnn_regressor",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="Brinicle growth-length regressor (ReLU RNN cell, IRNN identity init, MSE, Adamax, "
    "clipping at 1) whose recurrent identity is initialised at 1.3 for 1.0: gradients grow "
    "through the 30 time steps by the recurrent weights.",
)
def h434_brinicle_irnn_gain(ctx) -> None:
    gen = seeded(4348)
    model = _IRNN(gain=1.3)
    ref = _IRNN(gain=1.0)
    probe = next(_brine(torch.Generator().manual_seed(11), 128))
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ratios = []

    def before(step):
        if step % 10 == 0:
            ratios.append(_through_time(model, *probe))

    _loop(ctx, model, opt, _brine(gen, 64), 120, F.mse_loss, before=before, clip=1.0)
    r_ref = _through_time(ref, *probe)
    ctx.check("dL/dh_0 over 50x dL/dh_29 at the start", ratios[0] > 50)
    ctx.check("and in median over the run", _median(ratios) > 50)
    ctx.check("under 5x at gain 1.0", r_ref < 5)


class _CosineHead(nn.Module):
    def __init__(self, d_in, classes, hidden=48, scale=16.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, classes, bias=False)
        self.scale = scale

    def cosines(self, x):
        f = F.normalize(self.act1(self.fc1(x)), dim=-1)
        return F.linear(f, F.normalize(self.head.weight, dim=-1))

    def forward(self, x):
        return self.scale * self.cosines(x)


@scenario(
    family="rebec_bowing_style_cosine_scale_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Rebec bowing-style classifier (ReLU features, cosine-similarity head, cross-entropy, "
    "RAdam) whose logit scale is typed 1600 for 16: softmax over the scaled cosines rounds the "
    "target probability to exactly 1.0 on most rows.",
)
def h434_rebec_cosine_scale_typo(ctx) -> None:
    gen = seeded(4349)
    model = _CosineHead(12, 6, scale=1600.0)  # typed for 16
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(5), 256, 12, 6, seed=349))
    frac, ref = [], []

    def after(step):
        with torch.no_grad():
            c = model.cosines(probe_x)
            frac.append(collapsed_fraction(1600.0 * c, probe_y))
            ref.append(collapsed_fraction(16.0 * c, probe_y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, seed=349),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over half the rows at exactly 1.0 over the last 30", _mean(frac[-30:]) > 0.5)
    ctx.check("under 5% at scale 16 on the same cosines", _mean(ref[-30:]) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="fog_bow_brightness_steplr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=100,
    note="Fog-bow brightness regressor (tanh MLP, MSE, full 256-row batches, plain SGD) under a "
    "StepLR meant to cut the lr 10x at step 100 whose gamma is typed 10 for 0.1: the lr jumps "
    "10x, lr x sharpness passes 2 and the loss blows up.",
)
def h434_fog_bow_steplr_gamma(ctx) -> None:
    gen = seeded(4350)
    model = _Net(8, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=10.0)  # typed for 0.1
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, seed=350))
    edge = []

    def before(step):
        if step % 10 == 0 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            lr = opt.param_groups[0]["lr"]
            edge.append((step, lr * _sharpness(model, F.mse_loss, *probe)))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 256, 8, seed=350),
        200,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ok = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check("lr x sharpness under 2 before 100", all(v < 2 for s, v in edge if s < 100))
    ctx.check("lr x sharpness past 2 after 100", any(v > 2 for s, v in edge if s >= 100))
    ctx.check(
        "loss blows up over 100x its lowest",
        max(ok) > 100 * min(ok) or _first_bad(ctx.losses) is not None,
    )
    ctx.check("loss fell first", min(ok[:100]) < 0.7 * _mean(ok[:5]))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="glass_harmonica_rim_grade_softplus_ordinal_net",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Glass-harmonica rim-grade ordinal model (ReLU MLP score, cumulative-link head with cut "
    "points parameterised as a first cut plus softplus increments, so always ordered), clamped "
    "NLL, SGD momentum 0.9 under a cosine schedule. A healthy control.",
)
def h434_glass_harmonica_ordinal(ctx) -> None:
    gen = seeded(4351)
    model = _Ordinal(8, 5, softplus_gaps=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 200
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    _loop(
        ctx,
        model,
        opt,
        _grading(gen, 64, 8, seed=351, cuts=[-1.5, -0.5, 0.5, 1.5]),
        steps,
        _ordinal_nll,
        sched=sched,
    )
    tx, ty = next(
        _grading(torch.Generator().manual_seed(3), 512, 8, seed=351, cuts=[-1.5, -0.5, 0.5, 1.5])
    )
    with torch.no_grad():
        acc = float((model(tx).argmax(1) == ty).float().mean())
    ctx.check("trained", _fell(ctx.losses, ratio=0.7))
    ctx.check("test accuracy over 50% (5 grades)", acc > 0.5)


class _WhistleConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(h)).mean(-1)
        return self.head(h)


def _whistles(gen, batch, length=48, classes=4):
    """A steam whistle's pressure trace; the class is which pipe (frequency) sounded."""
    t = torch.arange(length, dtype=torch.float32)
    freqs = torch.tensor([0.2, 0.4, 0.65, 0.9])[:classes]
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freqs[y][:, None] * t + phase) * (1 - torch.exp(-0.2 * t))
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="calliope_steam_whistle_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Calliope steam-whistle pipe classifier (ReLU Conv1d, mean pool, linear head) under fp16 "
    "autocast with a GradScaler, AdamW under OneCycleLR, label smoothing 0.1, clipping at 1. A "
    "healthy control.",
)
def h434_calliope_fp16_onecycle(ctx) -> None:
    gen = seeded(4352)
    model = _WhistleConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _whistles(gen, 64),
        steps,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    tx, ty = next(_whistles(torch.Generator().manual_seed(33), 512))
    with torch.no_grad():
        acc = float((model(tx).argmax(1) == ty).float().mean())
    ctx.check("trained", _fell(ctx.losses, ratio=0.6))
    ctx.check("test accuracy over 85%", acc > 0.85)
    ctx.check("loss scale finite", all(math.isfinite(s) for s in ctx.scales))


class _MeanVar(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-4)


def _plumes(gen, batch, d_in=8, seed=353):
    """Plume height with noise that grows with the vent pressure (the first reading)."""
    base = _readings(gen, batch, d_in, seed, noise=0.0)
    while True:
        x, y = next(base)
        yield x, y + (0.05 + 0.2 * torch.sigmoid(x[:, 0])) * torch.randn(batch, generator=gen)


@scenario(
    family="cryovolcano_plume_height_gaussian_nll_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cryovolcano plume-height regressor predicting a mean and a softplus variance (SiLU MLP, "
    "Gaussian NLL, Adam with a linear warm-up, accumulation over 2, clipping at 5, heteroscedastic "
    "noisy batches). A healthy control.",
)
def h434_cryovolcano_gaussian_nll(ctx) -> None:
    gen = seeded(4353)
    model = _MeanVar(8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    _loop(ctx, model, opt, _plumes(gen, 64), 200, _gauss_nll, sched=sched, clip=5.0, accumulate=2)
    ls = ctx.losses
    ctx.check("trained", _finite(ls) and _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
