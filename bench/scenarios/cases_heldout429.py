"""Held-out set 429 (``h429_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a penny-whistle overblow BCE net whose resumed step multiplies the loss by the
accumulation count instead of dividing (one gradient burst), a gongfu-tea steep-time tanh
regressor whose warm-up lambda lost its min(1, .) (lr keeps climbing past 2/sharpness), a
tarred rope-yarn pickup regressor whose hand-written L2 penalty has its sign flipped (a slow climb
of the loss), a lur-horn bell-resonance deep ReLU MLP initialised with gain 2*sqrt(2) for sqrt(2)
(gradients grow through depth), a sumo shiko stomp-force regressor fed one dojo's shard in newtons
for kilonewtons (one corrupted batch), a kelp-ash soda-yield net whose share normaliser divides by
a row sum with no clamp (0/0 on a dead sensor row), a snowshoe lacing-tension two-group regressor
whose frame group's lr is typed 2e-9 for 2e-3 (a frozen trunk), a quern-stone grind-grade
classifier whose temperature is read in hundredths (softmax saturates), a hazel-hurdle split
classifier whose hinge loss lost its clamp (the head's logits grow without bound) and an oakum
fibre-length ReLU regressor on NAdam with lr typed 5e-2 for 5e-4 (ReLUs die).

Controls: an oyster shell-grade pseudo-labelling self-training classifier (EMA teacher, confidence
threshold 0.95, SGD momentum), a hammered-dulcimer strike fp16 Conv1d classifier (GradScaler,
AdamW under OneCycleLR, label smoothing, clipping) and a sun-dog halo-brightness tied autoencoder
(Huber, Adam, ReduceLROnPlateau, accumulation, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    family="penny_whistle_overblow_accum_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=130,
    note="Penny-whistle overblow detector (ReLU MLP, BCEWithLogits, SGD Nesterov, gradient "
    "accumulation over 8 micro-batches, clipping at 1). The run is resumed at step 130 through a "
    "second code path that multiplies each micro-batch loss by the accumulation count instead of "
    "dividing by it: one step's gradient is 64x on an ordinary logged loss; clipping bounds the "
    "update and the run recovers.",
)
def h429_penny_whistle_accum_resume(ctx) -> None:
    gen = seeded(4291)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    accum = 8

    def backprop(step, loss):
        # _loop divides by accum; the resume path multiplied by accum instead
        return loss * (accum * accum if step == 130 else 1.0)

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 16, 10, seed=291),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
        accumulate=accum,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at 130 over 30x the median of 80..129", gn[130] > 30 * _median(gn[80:130]))
    ctx.check(
        "logged loss at 130 ordinary (under 2x the median)", ls[130] < 2 * _median(ls[80:130])
    )
    ctx.check(
        "recovers: last 20 under 1.3x the pre-onset level",
        _mean(ls[-20:]) < 1.3 * _mean(ls[110:130]),
    )
    ctx.check("trained", _fell(ls))


@scenario(
    family="gongfu_tea_steep_time_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Gongfu-tea steep-time regressor (tanh MLP, MSE, full 256-row batches, plain SGD) under a "
    "LambdaLR warm-up written as lambda s: (s + 1) / 40 whose min(1, .) was lost: the lr keeps "
    "climbing linearly after the warm-up, lr x sharpness passes 2 and the loss blows up.",
)
def h429_gongfu_tea_warmup_no_min(ctx) -> None:
    gen = seeded(4292)
    model = _Net(8, 32, 1, act=nn.Tanh)
    base, warm = 0.3, 40
    opt = torch.optim.SGD(model.parameters(), lr=base)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm)  # min(1, .) lost
    data = _readings(gen, 256, 8, seed=292)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, seed=292))
    edge = []

    def before(step):
        if step % 10 == 0 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            lr = opt.param_groups[0]["lr"]
            edge.append((step, lr * _sharpness(model, F.mse_loss, *probe)))

    _loop(ctx, model, opt, data, 250, F.mse_loss, before=before, sched=sched)
    ctx.check("lr x sharpness under 2 at step 0", edge[0][1] < 2)
    ctx.check("lr x sharpness past 2 later", any(v > 2 for _, v in edge[1:]))
    ok = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check(
        "loss blows up over 100x its lowest",
        max(ok) > 100 * min(ok) or _first_bad(ctx.losses) is not None,
    )
    ctx.check("loss fell first", min(ok[:100]) < 0.7 * _mean(ok[:5]))


@scenario(
    family="tarring_rope_yarn_pickup_l2_sign_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Tarred rope-yarn tar-pickup regressor (SiLU MLP, MSE, RMSprop) with a hand-written L2 "
    "penalty added to the backpropagated loss whose sign was flipped in a refactor "
    "(loss - wd * ||w||^2 for loss + wd * ||w||^2): the weights inflate a little every step, "
    "the fit keeps losing to the penalty and the data loss slowly climbs.",
)
def h429_tarring_l2_sign(ctx) -> None:
    gen = seeded(4293)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    wd = 0.3
    norms = []

    def backprop(step, loss):
        sq = sum((p * p).sum() for p in model.parameters())
        return loss - wd * sq  # the bug: should be + wd * sq

    def after(step):
        with torch.no_grad():
            norms.append(float(torch.cat([p.reshape(-1) for p in model.parameters()]).norm()))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=293),
        260,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10))
    ctx.check(
        "loss over the last 20 steps over 3x its lowest 10-step mean", _mean(ls[-20:]) > 3 * low
    )
    ctx.check("loss climbs through the second half", _mean(ls[-20:]) > 1.5 * _mean(ls[130:150]))
    ctx.check("weight norm over 2x its start", norms[-1] > 2 * norms[0])
    ctx.check("finite", _finite(ls))


class _DeepReLU(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        with torch.no_grad():
            for lin in self.layers:
                lin.weight.normal_(0.0, gain / math.sqrt(lin.in_features))
                lin.bias.zero_()
            self.head.weight.normal_(0.0, 1.0 / math.sqrt(width))
        self.outs = []

    def forward(self, x):
        self.outs = []
        for lin in self.layers:
            x = lin(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model, x, y):
    """|dL/d(layers.0 output)| / |dL/d(last layer output)| on one batch."""
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    first, last = model.outs[0].grad.norm(), model.outs[-1].grad.norm()
    model.zero_grad()
    return float(first / last.clamp_min(1e-30))


@scenario(
    family="lur_horn_bell_resonance_deep_relu_mlp",
    optimizer="Adam",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Lur-horn bell-resonance regressor, a 10-layer ReLU MLP (MSE, Adam, clipping at 1) whose "
    "hand-written He init uses gain 2 * sqrt(2) for sqrt(2): every layer doubles the signal "
    "forwards and the gradient backwards, so the gradient at the first layer's output is about "
    "2^9 times the one at the last.",
)
def h429_lur_horn_init_gain(ctx) -> None:
    gen = seeded(4294)
    model = _DeepReLU(8, 32, 10, gain=2 * math.sqrt(2.0))  # typed 2*sqrt(2) for sqrt(2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    probe = next(_readings(torch.Generator().manual_seed(11), 128, 8, seed=294))
    start = _depth_ratio(model, *probe)
    ref = _depth_ratio(_DeepReLU(8, 32, 10, gain=math.sqrt(2.0)), *probe)
    ratios = []

    def after(step):
        if step % 20 == 0:
            ratios.append(_depth_ratio(model, *probe))

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=294), 120, F.mse_loss, clip=1.0, after=after)
    ctx.check("dL/d(layers.0) over 50x dL/d(layers.9) at the start", start > 50)
    ctx.check("under 5x at the intended gain", ref < 5)
    ctx.check("still over 50x through the run", _median(ratios) > 50)
    ctx.check("gradient norms over 10x the clip at the start", _median(ctx.grad_norms[:10]) > 10)


@scenario(
    family="sumo_shiko_stomp_force_asgd_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=110,
    note="Sumo shiko stomp-force regressor (ReLU MLP, MSE, ASGD, clipping at 5) on force-plate "
    "readings in kilonewtons. The batch at step 110 comes from one dojo's plate that exports "
    "newtons, targets 1000x too large: the loss and gradient jump for that one batch and the run "
    "recovers.",
)
def h429_sumo_newton_shard(ctx) -> None:
    gen = seeded(4295)
    model = _Net(10, 48, 1)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=1e6)
    data = _readings(gen, 64, 10, seed=295, scale=2.0)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 110 else (x, y)

    _loop(ctx, model, opt, data, 200, F.mse_loss, alter=alter, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss at 110 over 100x the median of 60..109", ls[110] > 100 * _median(ls[60:110]))
    ctx.check("gradient at 110 over 20x the median of 60..109", gn[110] > 20 * _median(gn[60:110]))
    ctx.check(
        "recovers: last 20 steps under 2x the pre-onset level",
        _mean(ls[-20:]) < 2 * _mean(ls[90:110]),
    )
    ctx.check("finite", _finite(ls))


class _Shares(nn.Module):
    """Each row's five burn-pit thermocouple readings as shares of their sum (no clamp)."""

    def forward(self, x):
        pits = x[:, :5]
        return torch.cat([pits / pits.sum(1, keepdim=True), x[:, 5:]], 1)


class _KelpNet(nn.Module):
    def __init__(self, d_in, hidden=40):
        super().__init__()
        self.shares = _Shares()
        self.body = _Net(d_in, hidden, 1, act=nn.GELU)

    def forward(self, x):
        return self.body(self.shares(x))


def _kelp(gen, batch, d_in, seed, dead_from):
    """Soda-ash yield from five pit readings (positive) and other standardised readings; from
    ``dead_from`` on, a logger sometimes sends a row of zeros for the pits."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in - 5, generator=g) / math.sqrt(d_in)
    step = 0
    while True:
        pits = torch.exp(0.5 * torch.randn(batch, 5, generator=gen))
        x = torch.randn(batch, d_in - 5, generator=gen)
        share = pits / pits.sum(1, keepdim=True)
        y = torch.tanh(x @ w) + 2.0 * (share[:, 0] - 0.2)
        if step >= dead_from:
            dead = torch.rand(batch, 1, generator=gen) < 0.05
            pits = torch.where(dead, torch.zeros_like(pits), pits)
        yield torch.cat([pits, x], 1), y + 0.05 * torch.randn(batch, generator=gen)
        step += 1


@scenario(
    family="kelp_ash_soda_yield_share_normaliser_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("shares",),
    diverges=80,
    heldout=True,
    onset=80,
    note="Kelp-ash soda-yield regressor (GELU MLP, MSE, Adam) whose first module turns the five "
    "burn-pit thermocouple readings into shares of their sum with no clamp on the denominator. "
    "From step 80 a logger sometimes sends a row of zeros: 0/0 = NaN and the loss is NaN.",
)
def h429_kelp_ash_zero_row(ctx) -> None:
    gen = seeded(4296)
    model = _KelpNet(10)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    _loop(ctx, model, opt, _kelp(gen, 64, 10, seed=296, dead_from=80), 140, F.mse_loss)
    ctx.check("finite before step 80", _finite(ctx.losses[:80]))
    ctx.check("loss non-finite at step 80", _first_bad(ctx.losses) == 80)
    ctx.check(
        "loss fell before the dead rows", _mean(ctx.losses[70:80]) < 0.8 * _mean(ctx.losses[:10])
    )


class _Snowshoe(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.frame = nn.Sequential(
            nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.frame(x)).squeeze(-1)


@scenario(
    family="snowshoe_lacing_tension_radam_two_group_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("frame.0", "frame.2"),
    diverges=None,
    heldout=True,
    note="Snowshoe lacing-tension regressor (tanh frame + linear head, Huber loss, RAdam with two "
    "parameter groups) whose frame group's lr is typed 2e-9 for 2e-3: the frame receives "
    "gradients but its updates are ~1e-9 of its weights, so only the head learns.",
)
def h429_snowshoe_frame_lr_typo(ctx) -> None:
    gen = seeded(4297)
    model = _Snowshoe(8)
    opt = torch.optim.RAdam(
        [
            {"params": model.frame.parameters(), "lr": 2e-9},  # typed 2e-9 for 2e-3
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    f0 = model.frame[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    frame_grads = []

    ctx.attach(model, opt)
    data = _readings(gen, 64, 8, seed=297)
    for _step in range(200):
        x, y = next(data)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        frame_grads.append(float(model.frame[0].weight.grad.norm()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("frame.0 moved under 1e-4 of its norm", _rel_change(f0, model.frame[0].weight) < 1e-4)
    ctx.check("frame.0 received gradients", _median(frame_grads) > 1e-4)
    ctx.check("head moved over 10%", _rel_change(h0, model.head.weight) > 0.1)
    ctx.check("finite", _finite(ctx.losses))


class _Quern(nn.Module):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def raw(self, x):
        return self.head(self.body(x))

    def forward(self, x):
        return self.raw(x) / self.temperature


@scenario(
    family="quern_stone_grind_grade_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Quern-stone flour grind-grade classifier (ReLU MLP, cross-entropy, Adamax) whose "
    "softmax temperature is read from a config in hundredths (1 meant 1.0, read as 0.01): the "
    "logits are divided by 0.01, and most rows' target probability rounds to exactly 1.0.",
)
def h429_quern_temperature_units(ctx) -> None:
    gen = seeded(4298)
    model = _Quern(12, 64, 6, temperature=0.01)  # 1 read in hundredths
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    data = _grades(gen, 64, 12, 6, seed=298, spread=0.9)
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(9), 256, 12, 6, 298, 0.9))
    bad, good = [], []

    def after(step):
        with torch.no_grad():
            raw = model.raw(probe_x)
            bad.append(collapsed_fraction(raw / 0.01, probe_y))
            good.append(collapsed_fraction(raw, probe_y))

    _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check(
        "over half the rows' target probability exactly 1.0 (last 30 steps)", _mean(bad[-30:]) > 0.5
    )
    ctx.check("under 5% at temperature 1.0 on the same logits", _mean(good[-30:]) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


def _unclamped_hinge(z, y):
    """Hinge loss on +/-1 labels whose clamp was lost: mean(1 - y z) for mean(relu(1 - y z))."""
    return (1.0 - (2.0 * y - 1.0) * z).mean()


@scenario(
    family="hurdle_making_hazel_split_hinge_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Hazel-hurdle rod split-or-snap classifier (ReLU MLP, hand-written hinge loss, AdamW) "
    "whose clamp at zero was lost in a refactor: mean(1 - y z) for mean(relu(1 - y z)). The loss "
    "is linear in the logit and unbounded below, so the head's logits grow without bound and "
    "the 'loss' goes ever more negative.",
)
def h429_hurdle_hinge_no_clamp(ctx) -> None:
    gen = seeded(4299)
    model = _Net(10, 48, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    data = _binary(gen, 64, 10, seed=299)
    probe = next(_binary(torch.Generator().manual_seed(13), 256, 10, seed=299))[0]
    sizes = []

    def after(step):
        with torch.no_grad():
            sizes.append(float(model(probe).abs().max()))

    _loop(ctx, model, opt, data, 200, _unclamped_hinge, after=after)
    ctx.check("max |logit| over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("logits still growing", sizes[-1] > 1.2 * sizes[-40])
    ctx.check("'loss' below -10", ctx.losses[-1] < -10)
    ctx.check("finite", _finite(ctx.losses))


def _oakum_run(lr, steps, seed, ctx=None):
    gen = seeded(seed)
    model = _Net(10, 64, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=lr)
    probe = next(_readings(torch.Generator().manual_seed(17), 256, 10, seed=300))[0]
    dead = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(probe)))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=300, scale=3.0),
        steps,
        F.mse_loss,
        after=after,
        attach=ctx is not None,
    )
    return dead


@scenario(
    family="oakum_picking_fibre_length_relu_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="Oakum-picking fibre-length regressor (ReLU MLP, MSE, NAdam) whose lr is typed 5e-2 for "
    "5e-4: the first large steps push most of the second layer's ReLUs negative on every input, "
    "and those units never come back.",
)
def h429_oakum_nadam_lr_typo(ctx) -> None:
    dead = _oakum_run(5e-2, 200, 4300, ctx)
    ref = _oakum_run(5e-4, 200, 4300)
    ctx.check("over 45% of act2 dead over the last 50 steps", _mean(dead[-50:]) > 0.45)
    ctx.check("under 20% at the intended 5e-4", _mean(ref[-50:]) < 0.2)
    ctx.check("over twice the intended run's share", _mean(dead[-50:]) > 2 * _mean(ref[-50:]))
    ctx.check("finite", _finite(ctx.losses))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="oyster_grading_shell_pseudo_label_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Oyster shell-grade classifier (ReLU MLP) trained by hand-written pseudo-labelling "
    "self-training: a small labelled pool (cross-entropy) plus unlabeled batches whose targets "
    "are an EMA teacher's predictions where its confidence is at least 0.95 (weight ramped in "
    "over 40 steps), SGD with momentum 0.9 and weight decay. A healthy control.",
)
def h429_oyster_pseudo_label(ctx) -> None:
    gen = seeded(4301)
    model = _Net(12, 64, 5)
    teacher = _Net(12, 64, 5)
    teacher.load_state_dict(model.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    pool_x, pool_y = next(_grades(torch.Generator().manual_seed(31), 60, 12, 5, 301, 1.1))
    unlabeled = _grades(gen, 128, 12, 5, seed=301, spread=1.1)
    test_x, test_y = next(_grades(torch.Generator().manual_seed(32), 512, 12, 5, 301, 1.1))
    threshold, decay = 0.95, 0.99
    used, right = [], []

    ctx.attach(model, opt)
    for step in range(200):
        idx = torch.randint(0, len(pool_y), (32,), generator=gen)
        x, y = pool_x[idx], pool_y[idx]
        ux, uy = next(unlabeled)  # uy is never used for training, only to score pseudo-labels
        ctx.targets(y)
        with torch.no_grad():
            conf, pseudo = torch.softmax(teacher(ux), 1).max(1)
            mask = conf >= threshold
        used.append(float(mask.float().mean()))
        if mask.any():
            right.append(float((pseudo[mask] == uy[mask]).float().mean()))
        sup = F.cross_entropy(model(x), y)
        unsup = (F.cross_entropy(model(ux), pseudo, reduction="none") * mask).mean()
        loss = sup + min(1.0, step / 40) * unsup
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(sup)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for pt, ps in zip(teacher.parameters(), model.parameters(), strict=True):
                pt.mul_(decay).add_(ps, alpha=1 - decay)
    with torch.no_grad():
        acc = float((teacher(test_x).argmax(1) == test_y).float().mean())
    ctx.check("trained", _fell(ctx.losses))
    ctx.check("teacher test accuracy over 80%", acc > 0.8)
    ctx.check("pseudo-labels used (over 20% of unlabeled rows late)", _mean(used[-20:]) > 0.2)
    ctx.check("pseudo-labels over 90% right", _mean(right[-50:]) > 0.9)


class _DulcimerConv(nn.Module):
    def __init__(self, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(2))


def _strikes(gen, batch, length=48, classes=4):
    """A hammered string's decaying tone; the class is which course (frequency) was struck."""
    t = torch.arange(length, dtype=torch.float32)
    freqs = torch.tensor([0.15, 0.3, 0.5, 0.8])[:classes]
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        decay = 0.02 + 0.04 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freqs[y][:, None] * t + phase) * torch.exp(-decay * t)
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="dulcimer_hammer_strike_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hammered-dulcimer course classifier (ReLU Conv1d, mean pool, linear head) under fp16 "
    "autocast with a GradScaler, AdamW under OneCycleLR, label smoothing 0.1, clipping at 1, "
    "noisy strikes. A healthy control.",
)
def h429_dulcimer_fp16_onecycle(ctx) -> None:
    gen = seeded(4302)
    model = _DulcimerConv()
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
        _strikes(gen, 64),
        steps,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    test_x, test_y = next(_strikes(torch.Generator().manual_seed(33), 512))
    with torch.no_grad():
        acc = float((model(test_x).argmax(1) == test_y).float().mean())
    ctx.check("trained", _fell(ctx.losses, ratio=0.6))
    ctx.check("test accuracy over 85%", acc > 0.85)
    ctx.check("loss scale finite", all(math.isfinite(s) for s in ctx.scales))


class _TiedAE(nn.Module):
    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _halo(gen, batch, d_in=16, seed=303):
    """Brightness along a sun dog's arc: a few smooth modes plus sensor noise and rare glints."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, d_in, generator=g) / 2
    while True:
        z = torch.randn(batch, 4, generator=gen)
        x = z @ basis + 0.1 * torch.randn(batch, d_in, generator=gen)
        glint = torch.rand(batch, d_in, generator=gen) < 0.01
        x = torch.where(glint, x + 2.0, x)
        yield x, x


@scenario(
    family="sun_dog_halo_brightness_tied_autoencoder",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sun-dog halo brightness autoencoder with its decoder tied to the encoder's weight "
    "(tanh code), Huber loss against rare glints, Adam, accumulation over 2, ReduceLROnPlateau "
    "on a held-out batch, clipping at 1. A healthy control.",
)
def h429_sun_dog_tied_ae(ctx) -> None:
    gen = seeded(4303)
    model = _TiedAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held_x, _ = next(_halo(torch.Generator().manual_seed(34), 256))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held_x), held_x))

    _loop(
        ctx,
        model,
        opt,
        _halo(gen, 32),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("trained", _fell(ctx.losses, ratio=0.5))
    ctx.check("held-out loss under half the first steps'", plateau() < 0.5 * _mean(ctx.losses[:5]))
