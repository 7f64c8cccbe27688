"""Held-out set 421 (``h421_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a tamboura jawari-buzz grade GELU classifier whose hand-written cross-entropy lost its
logsumexp term (the head's logits grow without bound), a stalactite drip-interval fp16 regressor
whose target is in milliseconds for seconds (the head's fp16 output overflows), a petanque boule
roll BCE net whose resumed step keeps a static loss scale (one gradient burst), a luge runner-glide
ReLU regressor on RMSprop with lr typed 3e-2 for 3e-4 (ReLUs die), a frost-flower salinity
Gaussian-NLL net whose variance softplus was dropped (log of a negative variance), a marquetry
veneer-cupping regressor fed one shard in micrometres (one corrupted batch), a bellfounder
strike-note two-group regressor whose trunk lr is typed 1e-9 (a frozen trunk), a geode
cavity-depth deep tanh MLP with init gain typed 3.0 (gradients grow through depth), a calligraphy
ink-spread regressor whose hand-written weight decay has its sign flipped (a slow climb) and a
tufa-terrace grade classifier whose temperature is read in thousandths, 0.002 for 2.0 (softmax saturates).

Controls: a bodhran tipper-roll clockwork RNN (modules at periods 1, 2, 4, 8, block-triangular
recurrent mask, truncated BPTT, clipping, RMSprop), a marimba resonator-tune Conv1d classifier
(SGD Nesterov under OneCycleLR, label smoothing, clipping) and a fumarole vent-temperature fp16
Gaussian-NLL net (GradScaler, Adam with a no-decay group, accumulation, ReduceLROnPlateau).
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


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, offset=0.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, generator=gen)
        yield x, offset + scale * y


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _outcomes(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.5 * torch.cos(x[:, 1]) > 0.4).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _hetero(gen, batch, d_in, seed):
    """A target whose noise level depends on the readings (for Gaussian NLL heads)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    u = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        sd = 0.05 + 0.4 * torch.sigmoid(2 * x @ u)
        yield x, torch.sin(1.5 * x @ w) + sd * torch.randn(batch, generator=gen)


class _MLP(nn.Module):
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


def _ce_missing_lse(logits, y):
    # was: (torch.logsumexp(logits, 1) - logits.gather(1, y[:, None]).squeeze(1)).mean()
    return (-logits.gather(1, y[:, None]).squeeze(1)).mean()


@scenario(
    family="tamboura_jawari_buzz_grade_gelu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tamboura jawari-buzz grader (GELU MLP, 6 grades) with a hand-written cross-entropy "
    "whose logsumexp term sat behind a normalise= flag that defaults to False after a refactor: "
    "the loss is -logit[target], unbounded below, so the head's logits grow without bound.",
)
def h421_tamboura_ce_missing_logsumexp(ctx) -> None:
    gen = seeded(4211)
    model = _MLP(10, 48, 6, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = _grades(gen, 64, 10, 6, seed=211)
    probe = next(_grades(torch.Generator().manual_seed(5), 256, 10, 6, seed=211))[0]
    sizes = []

    def after(step):
        with torch.no_grad():
            sizes.append(float(model(probe).abs().max()))

    _loop(ctx, model, opt, data, 200, _ce_missing_lse, classifier=True, after=after)
    ctx.check("max |logit| over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("logits still growing", sizes[-1] > 1.2 * sizes[-40])
    ctx.check("'loss' below -10", ctx.losses[-1] < -10)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="stalactite_drip_interval_fp16_relu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("head",),
    diverges=86,
    heldout=True,
    note="Stalactite drip-interval regressor (ReLU MLP) under fp16 autocast with a GradScaler; "
    "the cave logger exports the interval in milliseconds where the config says seconds "
    "(40-110 s becomes 40000-110000). As the head learns that scale its fp16 output passes "
    "65504 on the slowest drips, overflows to inf and the loss is non-finite.",
)
def h421_stalactite_drip_fp16_milliseconds(ctx) -> None:
    gen = seeded(4212)
    model = _MLP(6, 64, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu")
    data = _readings(gen, 64, 6, seed=212, noise=0.03, scale=30000.0, offset=75000.0)
    seen = {}

    def alter(step, x, y):
        seen["x"] = x
        return x, y

    steps = _loop(ctx, model, opt, data, 300, F.mse_loss, alter=alter, scaler=scaler, amp=True)
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("finite before it", bad is not None and _finite(ctx.losses[:bad]))
    with torch.no_grad():
        fp32 = model(seen["x"])
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.features(seen["x"])
            half = model.head(h)
    ctx.check(
        "fp32 head output finite and over 65504",
        bool(fp32.isfinite().all()) and float(fp32.abs().max()) > 65504,
    )
    ctx.check(
        "fp16 hidden finite, fp16 head output inf",
        bool(h.isfinite().all()) and not bool(half.isfinite().all()),
    )
    ctx.check("ran before overflowing", steps > 20)


@scenario(
    family="petanque_boule_roll_relu_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=140,
    note="Petanque boule roll-out predictor (ReLU MLP, BCE with logits, SGD Nesterov 0.9, clipped "
    "at 5). The job was trained with a static fp16 loss scale of 1024 and resumed at step 140 in "
    "fp32; the resumed step multiplies the loss by the checkpoint's scale before unscale is "
    "wired back in: one gradient 1024x too large on an ordinary batch.",
)
def h421_petanque_resume_static_loss_scale(ctx) -> None:
    gen = seeded(4213)
    model = _MLP(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    data = _outcomes(gen, 128, 10, seed=213)

    def backprop(step, loss):
        return loss * 1024.0 if step == 140 else loss

    _loop(
        ctx,
        model,
        opt,
        data,
        250,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=5.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 50x at 140", gs[140] > 50 * _median(gs[120:140]))
    ctx.check("logged loss ordinary at 140", ls[140] < 1.5 * _median(ls[120:140]))
    ctx.check("recovers", _finite(ls) and _mean(ls[-20:]) < 1.5 * _mean(ls[120:140]))


def _dead_share(model, probe) -> float:
    with torch.no_grad():
        a = model.features(probe)
    return float((a <= 0).all(0).float().mean())


def _luge_run(lr, steps, ctx=None):
    gen = seeded(4214)
    model = _MLP(8, 64, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    data = _readings(gen, 64, 8, seed=214)
    probe = next(_readings(torch.Generator().manual_seed(6), 512, 8, seed=214))[0]
    dead = []
    if ctx is not None:
        _loop(
            ctx,
            model,
            opt,
            data,
            steps,
            F.mse_loss,
            after=lambda s: dead.append(_dead_share(model, probe)),
        )
        return dead
    for _ in range(steps):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        dead.append(_dead_share(model, probe))
    return dead


@scenario(
    family="luge_runner_glide_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Luge runner-glide time regressor (ReLU MLP) on RMSprop whose lr is typed 3e-2 for "
    "3e-4: the first normalised steps knock most of the second layer's ReLUs below zero on every "
    "input and they never come back; the same run at 3e-4 keeps its units alive.",
)
def h421_luge_rmsprop_lr_typo_dead_relus(ctx) -> None:
    dead = _luge_run(3e-2, 200, ctx)
    ref = _luge_run(3e-4, 200)
    ctx.check("over 45% of act2 units dead over the last 50 steps", min(dead[-50:]) > 0.45)
    ctx.check("under 20% dead at 3e-4", max(ref[-50:]) < 0.2)
    ctx.check("under 20% dead at init", _dead_share_init() < 0.2)
    ctx.check("finite", _finite(ctx.losses))


def _dead_share_init() -> float:
    torch.manual_seed(4214)
    model = _MLP(8, 64, 1)
    probe = next(_readings(torch.Generator().manual_seed(6), 512, 8, seed=214))[0]
    return _dead_share(model, probe)


class _SalinityNet(nn.Module):
    """Mean and variance of frost-flower brine salinity; the variance's softplus was dropped."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)
        nn.init.constant_(self.var.bias, 0.5)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        var = self.var(h).squeeze(-1)  # was F.softplus(...) + 1e-4
        self.last_var = var.detach()
        return torch.stack([self.mean(h).squeeze(-1), var], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()


@scenario(
    family="frost_flower_salinity_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("var",),
    diverges=26,
    heldout=True,
    note="Frost-flower brine-salinity net with a Gaussian NLL head (mean and variance); the "
    "variance head's softplus was dropped when the model was ported. Fitting the quiet readings "
    "drives one row's raw variance below zero, log(var) is NaN and so is the loss.",
)
def h421_frost_flower_variance_no_softplus(ctx) -> None:
    gen = seeded(4215)
    model = _SalinityNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    data = _hetero(gen, 64, 8, seed=215)
    _loop(ctx, model, opt, data, 300, _gauss_nll)
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("finite before it", bad is not None and bad > 5 and _finite(ctx.losses[:bad]))
    ctx.check("a row's variance <= 0 at the NaN step", bool((model.last_var <= 0).any()))


@scenario(
    family="marquetry_veneer_cupping_silu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Marquetry veneer-cupping regressor (SiLU MLP, SGD momentum 0.9, clipped at 1.0); one "
    "workshop's shard, drawn at step 120, logs the cup depth in micrometres where every other "
    "shard uses millimetres. One corrupted batch: the loss and gradient spike, the run recovers.",
)
def h421_marquetry_micrometre_shard(ctx) -> None:
    gen = seeded(4216)
    model = _MLP(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    data = _readings(gen, 64, 8, seed=216)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 120 else (x, y)

    _loop(ctx, model, opt, data, 250, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss over 100x at 120", ls[120] > 100 * _median(ls[100:120]))
    ctx.check("gradient over 20x at 120", gs[120] > 20 * _median(gs[100:120]))
    ctx.check("recovers", _finite(ls) and _mean(ls[-20:]) < 2 * _mean(ls[100:120]))


class _TwoPart(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    family="bellfounder_strike_note_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="Bellfounder strike-note regressor with two param groups (trunk, head) on Adagrad; the "
    "trunk group's lr is typed 1e-9 for 1e-2 in the YAML, so the trunk's updates are far too "
    "small for its weights (effectively frozen) while the head trains.",
)
def h421_bellfounder_trunk_lr_typo(ctx) -> None:
    gen = seeded(4217)
    model = _TwoPart(8)
    opt = torch.optim.Adagrad(
        [
            {"params": model.trunk.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    data = _readings(gen, 64, 8, seed=217)
    w0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    tg = []

    def inspect(step):
        tg.append(float(model.trunk[0].weight.grad.norm()))

    _loop(ctx, model, opt, data, 200, F.mse_loss, inspect=inspect)
    ctx.check("trunk.0 moved under 1e-5 of its norm", _rel_change(w0, model.trunk[0].weight) < 1e-5)
    ctx.check("trunk.0 receives gradients", _median(tg) > 1e-3)
    ctx.check("head moved over 5%", _rel_change(h0, model.head.weight) > 0.05)
    ctx.check("finite", _finite(ctx.losses))


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1)
        self.layers = nn.ModuleList(nn.Linear(a, width) for a in sizes)
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for lin in self.layers:
            z = lin(x)
            if z.requires_grad:
                z.retain_grad()
            self.outs.append(z)
            x = torch.tanh(z)
        return self.head(x).squeeze(-1)


def _grad_depth_ratio(model):
    first = float(model.outs[0].grad.norm()) / math.sqrt(model.outs[0].numel())
    last = float(model.outs[-1].grad.norm()) / math.sqrt(model.outs[-1].numel())
    return first / max(last, 1e-30)


@scenario(
    family="geode_cavity_depth_deep_tanh_mlp",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Geode cavity-depth estimator from ultrasound readings (12-layer tanh MLP, no "
    "normalisation, clipped at 1.0, Adamax) whose init std is typed 3.0 / sqrt(fan_in) for "
    "1.0 / sqrt(fan_in): the net sits in the chaotic phase and the gradient grows through depth, "
    "the first layer's over 10x the last's.",
)
def h421_geode_tanh_init_gain_typo(ctx) -> None:
    gen = seeded(4218)
    model = _DeepTanh(8, 32, 12, 3.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    data = _readings(gen, 64, 8, seed=218)
    ratios = []

    def inspect(step):
        ratios.append(_grad_depth_ratio(model))

    _loop(ctx, model, opt, data, 150, F.mse_loss, inspect=inspect, clip=1.0)
    torch.manual_seed(4218)
    ref = _DeepTanh(8, 32, 12, 1.0)
    x, y = next(_readings(torch.Generator().manual_seed(4), 64, 8, seed=218))
    F.mse_loss(ref(x), y).backward()
    ctx.check("dL/d(layers.0) over 10x dL/d(layers.11) at the start", ratios[0] > 10)
    ctx.check("median ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at gain 1.0", _grad_depth_ratio(ref) < 5)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="calligraphy_brush_ink_spread_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Calligraphy brush ink-spread regressor (tanh MLP, plain SGD) with hand-written "
    "decoupled weight decay after the step whose sign is flipped, p *= 1 + lr * wd for "
    "1 - lr * wd: the weights grow every step and the loss, after falling, climbs slowly.",
)
def h421_calligraphy_decay_sign_flip(ctx) -> None:
    gen = seeded(4219)
    model = _MLP(8, 48, 1, act=nn.Tanh)
    lr, wd = 0.05, 0.3
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    data = _readings(gen, 64, 8, seed=219)
    n0 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # was 1 - lr * wd

    _loop(ctx, model, opt, data, 250, F.mse_loss, after=after)
    ls = ctx.losses
    n1 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    w = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    ctx.check("weight norm over 2x", n1 > 2 * n0)
    ctx.check("loss climbs to over 2x its lowest 10-step mean", w[-1] > 2 * min(w))
    ctx.check(
        "no 10-step mean over 2.5x the one before",
        all(b < 2.5 * a for a, b in zip(w[:-1], w[1:], strict=True)),
    )
    ctx.check("finite", _finite(ls))


class _TempClassifier(_MLP):
    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, 48, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="tufa_terrace_grade_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tufa-terrace growth-grade classifier (ReLU MLP, 5 grades) whose softmax temperature "
    "is read from a config kept in thousandths, 0.002 for 2.0: logits are multiplied by 500, the "
    "softmax saturates and most rows' target probability rounds to exactly 1.0 in float32.",
)
def h421_tufa_temperature_typo(ctx) -> None:
    gen = seeded(4220)
    model = _TempClassifier(10, 5, 0.002)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    data = _grades(gen, 64, 10, 5, seed=220, spread=0.5)
    shares, ref = [], []
    probe_x, probe_y = next(
        _grades(torch.Generator().manual_seed(7), 256, 10, 5, seed=220, spread=0.5)
    )

    def after(step):
        with torch.no_grad():
            raw = model.head(model.features(probe_x))
        shares.append(collapsed_fraction(raw / 0.002, probe_y))
        ref.append(collapsed_fraction(raw / 2.0, probe_y))

    _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check("over half the rows at p=1.0 over the last 30 steps", min(shares[-30:]) > 0.5)
    ctx.check("under 5% at temperature 2.0 on the same logits", max(ref[-30:]) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- controls --------------------------------------------------------------------------------------


class _ClockworkRNN(nn.Module):
    """Koutnik et al. 2014: hidden modules with periods 1, 2, 4, 8; module i is updated only
    when t % period_i == 0 and reads only from modules at least as slow (block-triangular mask)."""

    def __init__(self, d_in=1, module_size=8, periods=(1, 2, 4, 8)):
        super().__init__()
        self.periods = periods
        self.k = module_size
        n = module_size * len(periods)
        self.inp = nn.Linear(d_in, n)
        self.rec = nn.Linear(n, n, bias=False)
        nn.init.orthogonal_(self.rec.weight, gain=0.9)
        mask = torch.zeros(n, n)
        for i in range(len(periods)):
            mask[i * module_size : (i + 1) * module_size, i * module_size :] = 1.0
        self.register_buffer("mask", mask)
        self.head = nn.Linear(n, 1)

    def forward(self, x, h, t0):
        outs = []
        w = self.rec.weight * self.mask
        period = torch.tensor(self.periods).repeat_interleave(self.k)
        for t in range(x.shape[1]):
            active = ((t0 + t) % period == 0).float()
            new = torch.tanh(self.inp(x[:, t]) + h @ w.T)
            h = active * new + (1 - active) * h
            outs.append(self.head(h).squeeze(-1))
        return torch.stack(outs, 1), h


@scenario(
    family="bodhran_tipper_roll_clockwork_rnn",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="Bodhran tipper-roll next-sample predictor: a hand-written clockwork RNN (modules at "
    "periods 1, 2, 4, 8, block-triangular recurrent mask) trained with truncated BPTT over "
    "windows of 16 of a long stream, hidden state carried and detached, RMSprop, clipping at "
    "1.0. Control.",
)
def h421_bodhran_clockwork_tbptt(ctx) -> None:
    gen = seeded(4221)
    model = _ClockworkRNN()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3, alpha=0.95)
    batch, window, steps = 16, 16, 200
    n = window * steps + 1
    t = torch.arange(n, dtype=torch.float32)
    freq = 0.2 + 0.15 * torch.rand(batch, 1, generator=gen)
    phase = 6.28 * torch.rand(batch, 1, generator=gen)
    stream = torch.sin(freq * t + phase) + 0.4 * torch.sin(0.5 * freq * t) ** 3
    stream = stream + 0.05 * torch.randn(batch, n, generator=gen)
    ctx.attach(model, opt)
    h = torch.zeros(batch, model.k * len(model.periods))
    for step in range(steps):
        s = step * window
        x = stream[:, s : s + window, None]
        y = stream[:, s + 1 : s + window + 1]
        pred, h = model(x, h, s)
        loss = F.mse_loss(pred, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        h = h.detach()
    ctx.check("loss fell to under half", _fell(ctx.losses, 10, 0.5))
    ctx.check("finite", _finite(ctx.losses))


def _resonances(gen, batch, classes, seed, length=48, channels=2):
    """Mallet-strike traces: each class a decaying tone at its own pitch, plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.2 + 0.9 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase) * torch.exp(-t / 30)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


class _ToneConv(nn.Module):
    def __init__(self, channels=2, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x)).mean(-1)
        return self.head(x)


@scenario(
    family="marimba_resonator_tune_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Marimba resonator-tune classifier (ReLU Conv1d over two-microphone strike traces), "
    "SGD Nesterov with weight decay under OneCycleLR, label smoothing 0.1, clipping at 1.0. "
    "Control.",
)
def h421_marimba_conv1d_onecycle(ctx) -> None:
    gen = seeded(4222)
    model = _ToneConv()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    data = _resonances(gen, 64, 6, seed=222)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, data, steps, loss_fn, classifier=True, clip=1.0, sched=sched)
    x, y = next(_resonances(torch.Generator().manual_seed(8), 512, 6, seed=222))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell", _fell(ctx.losses, 10, 0.7))
    ctx.check("held-out accuracy over 0.7", acc > 0.7)
    ctx.check("finite", _finite(ctx.losses))


class _VentNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        var = F.softplus(self.var(h)) + 1e-4
        return torch.stack([self.mean(h).squeeze(-1), var.squeeze(-1)], -1)


@scenario(
    family="fumarole_vent_temperature_fp16_gaussian_nll_net",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Fumarole vent-temperature net with mean and softplus-variance heads (Gaussian NLL) "
    "under fp16 autocast with a GradScaler, Adam with a no-decay group for biases, accumulation "
    "over 2, ReduceLROnPlateau on a held-out batch, clipping at 1.0. Control.",
)
def h421_fumarole_fp16_gaussian_nll(ctx) -> None:
    gen = seeded(4223)
    model = _VentNet(8)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.Adam(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    data = _hetero(gen, 64, 8, seed=223)
    hx, hy = next(_hetero(torch.Generator().manual_seed(9), 256, 8, seed=223))

    def loss_fn(out, y):
        return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])

    def plateau():
        with torch.no_grad():
            return float(loss_fn(model(hx), hy))

    _loop(
        ctx,
        model,
        opt,
        data,
        150,
        loss_fn,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell by over 0.5 nats", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.5)
    ctx.check("finite", _finite(ctx.losses))
