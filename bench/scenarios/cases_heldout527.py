"""Held-out set 527 (``h527_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a snooker cue-tip chalk-grip ReLU regressor whose Adamax lr is typed 0.5 for 0.005 (dead
ReLUs); a Mongolian-archery surkh-target deep tanh MLP initialised with gain 4 (gradients growing
through depth, SGD Nesterov); a lake-effect snow-band width regressor whose linear warm-up has no
cap (the lr keeps climbing past 2/sharpness, plain SGD); a booming-dune pitch regressor, a
hand-written Lipschitz network (spectral normalisation of every weight by power iteration in the
forward) fed one sample in raw hertz (Adam); a bo-taoshi pole-tilt regressor whose trunk unfreeze
step is counted in samples, not batches (trunk frozen by lr 0 all run, NAdam); a rafflesia bloom
odour regressor whose evaluation loss, summed over 4096 samples, is backpropagated once
(AdamW); a gorodki bat-throw regressor whose resumed step uses a summed loss (gradient spike,
clipped, SGD momentum); an atmospheric gravity-wave net taking sqrt of a negative buoyancy term
(Adagrad); a buzkashi drag regressor under fp16 autocast + GradScaler fed pull time in
milliseconds (RAdam); a tejo target cosine classifier whose scale is typed 1000 for 10 (RMSprop).

Controls: a ssireum satba-grip classifier trained with Adam for 50 steps, then SGD momentum; a
chinlone rattan-kick Conv1d classifier (AdamW, OneCycleLR, label smoothing, clipping, noisy
signals); a pato ball-handle tied-weight autoencoder (fp16 autocast + GradScaler, Adam, two param
groups, ReduceLROnPlateau, accumulation 2).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


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
    scaler=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, out, y,
    loss)`` returns the loss actually backpropagated, ``after(step, loss)``. Stops after a
    non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt, scaler=scaler)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, out, y, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


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


# -- 1. loss of plasticity: Adamax lr typed 0.5 for 0.005 ----------------------------------------


@scenario(
    family="snooker_cue_tip_chalk_grip_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Snooker cue-tip chalk-grip regressor (ReLU MLP on tip hardness, chalk age, humidity, "
    "stroke speed, cue-ball spin and cloth nap, MSE, Adamax). The lr is typed 0.5 for 0.005: the "
    "target is the grip force in newtons (about 20, not standardised): the first large updates "
    "push the hidden ReLUs' pre-activations below zero for every input, the units die and the "
    "net stalls far above the target variance.",
)
def h527_cue_tip_adamax_lr_typo_dead_relus(ctx):
    gen = seeded(5271)
    model = _Net(6, 64, 1)
    opt = torch.optim.Adamax(model.parameters(), lr=0.5)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(9), 512, 6, 52710))
    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe_x))
    data = ((x, y + 20.0) for x, y in _readings(gen, 64, 6, 52710))
    losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss)
    with torch.no_grad():
        dead = dead_fraction(model.features(probe_x))
    ctx.check("under 10% of act2 dead at init", dead0 < 0.1)
    ctx.check("over 80% of act2 units dead at the end", dead > 0.8)
    ctx.check(
        "stalls above 0.6x the target variance", _mean(losses[-20:]) > 0.6 * float(probe_y.var())
    )
    ctx.check("finite", _finite(losses))


# -- 2. exploding gradients: a deep tanh MLP initialised with gain 4 -----------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="mongolian_archery_surkh_target_deep_tanh_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Mongolian-archery surkh-target score regressor (20-layer tanh MLP on draw weight, "
    "arrow mass, wind, distance, fletching and temperature, MSE, SGD Nesterov momentum 0.9). The "
    "hand-written init uses gain 4 where the tanh gain 5/3 was meant: the net sits in the "
    "chaotic regime and the gradient grows layer by layer towards the input, the first layer's "
    "gradient hundreds of times the last's.",
)
def h527_archery_deep_tanh_gain4(ctx):
    gen = seeded(5272)
    model = _DeepTanh(6, 48, 20, gain=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9, nesterov=True)
    ratios = []

    orig_step = opt.step

    def step_and_measure(*a, **k):
        g_first = float(model.layers[0].weight.grad.norm())
        g_last = float(model.layers[-1].weight.grad.norm())
        ratios.append(g_first / max(g_last, 1e-30))
        return orig_step(*a, **k)

    opt.step = step_and_measure
    losses, norms = _loop(ctx, model, opt, _readings(gen, 64, 6, 52720), 160, F.mse_loss)
    ctx.check("first layer's gradient over 100x the last's at start", _median(ratios[:10]) > 100)
    ctx.check("still over 30x at the end", _median(ratios[-20:]) > 30)
    ctx.check("median gradient norm over 20 on a unit-scale loss", _median(norms) > 20)


# -- 3. sharpness above limit: a linear warm-up with no cap --------------------------------------

SNOWBAND_WARM = 40


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((t * t).sum()) for t in v))
        v = [t / n for t in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [t.detach() for t in hv]
    return lam


@scenario(
    family="lake_effect_snowband_width_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=SNOWBAND_WARM,
    note="Lake-effect snow-band width regressor (SiLU MLP on lake-air temperature difference, "
    "fetch, wind direction, shear, inversion height and ice cover, MSE, plain SGD, peak lr 0.2). The warm-up "
    "lambda is written lr * step / warm without min(1, .): after step 40 the lr keeps climbing "
    "linearly, passes 2/sharpness and the loss oscillates and blows up.",
)
def h527_snowband_uncapped_warmup(ctx):
    gen = seeded(5273)
    model = _Net(6, 48, 1, act=nn.SiLU)
    base = 0.2
    opt = torch.optim.SGD(model.parameters(), lr=base)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / SNOWBAND_WARM)  # no cap
    probe = next(_readings(torch.Generator().manual_seed(9), 256, 6, 52730))
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (SNOWBAND_WARM - 10, SNOWBAND_WARM) or step % 10 == 0:
            sharp[step] = _top_hessian_eig(model, F.mse_loss, *probe)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 52730), 300, F.mse_loss, before=before, sched=sched
    )
    finite = [i for i, v in enumerate(losses) if math.isfinite(v) and v < 1e3]
    last = max(k for k in sharp if k <= finite[-1] and math.isfinite(sharp[k]))
    ctx.check(
        "lr x sharpness under 2 before onset",
        lrs[SNOWBAND_WARM - 10] * sharp[SNOWBAND_WARM - 10] < 2,
    )
    ctx.check("lr x sharpness over 2 before the blow-up", lrs[last] * sharp[last] > 2)
    ctx.check("trained during warm-up", _mean(losses[30:40]) < 0.7 * _mean(losses[:10]))
    ctx.check(
        "loss blew up (non-finite or over 100x its best)",
        not _finite(losses) or max(losses) > 100 * min(losses),
    )


# -- 4. data outlier: a Lipschitz network fed one sample in raw hertz ---------------------------

DUNE_ONSET = 110


class _SNLinear(nn.Module):
    """A linear layer whose weight is divided by its spectral norm, estimated by one power
    iteration per forward (the vector ``u`` carried between calls)."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / math.sqrt(d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))
        self.register_buffer("u", F.normalize(torch.randn(d_out), dim=0))

    def sigma(self):
        with torch.no_grad():
            v = F.normalize(self.weight.t() @ self.u, dim=0)
            u = F.normalize(self.weight @ v, dim=0)
            if self.training:
                self.u.copy_(u)
        return u @ self.weight @ v

    def forward(self, x):
        return F.linear(x, self.weight / self.sigma(), self.bias)


class _LipschitzNet(nn.Module):
    def __init__(self, d_in, hidden, scale):
        super().__init__()
        self.sn1 = _SNLinear(d_in, hidden)
        self.sn2 = _SNLinear(hidden, hidden)
        self.sn3 = _SNLinear(hidden, 1)
        self.scale = scale

    def forward(self, x):
        h = F.relu(self.sn2(F.relu(self.sn1(x))))
        return self.scale * self.sn3(h).squeeze(-1)


@scenario(
    family="booming_dune_pitch_lipschitz_regressor",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=DUNE_ONSET,
    note="Booming-dune pitch regressor, a hand-written Lipschitz network (every weight divided "
    "by its spectral norm from one power iteration in the forward, ReLU, fixed output scale 2) "
    "on grain size, slope, moisture, avalanche speed and wind; standardised pitch target, MSE, "
    "Adam lr 2e-3. At step 110 one sample's pitch comes from a field sheet in raw hertz (95 Hz) "
    "instead of standardised: the loss and the gradient spike for that batch, then the run "
    "recovers.",
)
def h527_dune_pitch_raw_hertz_sample(ctx):
    gen = seeded(5274)
    model = _LipschitzNet(5, 48, 2.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == DUNE_ONSET:
            y = y.clone()
            y[7] = 95.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 5, 52740), 220, F.mse_loss, alter=alter
    )
    o = DUNE_ONSET
    with torch.no_grad():
        sig = [
            float(torch.linalg.matrix_norm(m.weight / m.sigma(), 2))
            for m in (model.sn1, model.sn2, model.sn3)
        ]
    ctx.check(
        "every layer's effective spectral norm within 5% of 1", all(0.95 < s < 1.05 for s in sig)
    )
    ctx.check("loss over 50x the median at onset", losses[o] > 50 * _median(losses[o - 30 : o]))
    ctx.check("gradient over 10x the median at onset", norms[o] > 10 * _median(norms[o - 30 : o]))
    ctx.check(
        "recovers (loss 40 steps after under 2x before)",
        _mean(losses[o + 40 : o + 60]) < 2 * _mean(losses[o - 20 : o]),
    )
    ctx.check("trained before onset", _fell(losses[:o]))


# -- 5. update ratio: the trunk's unfreeze step counted in samples, not batches ------------------


class _TrunkHead(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.head = nn.Sequential(nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    family="bo_taoshi_pole_tilt_two_group_gelu_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("trunk", "trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="Bo-taoshi pole-tilt regressor (GELU trunk + head on attackers, defenders, pole "
    "height, ground friction, climber mass and time, MSE, NAdam in two param groups with a "
    "LambdaLR per group). The trunk is meant to stay frozen for 2 epochs while the head warms "
    "up, but the unfreeze step is written 2 * len(dataset) (samples, 4096) instead of 2 * "
    "batches per epoch: its lr multiplier is 0 the whole run, the trunk never moves.",
)
def h527_bo_taoshi_trunk_never_unfrozen(ctx):
    gen = seeded(5275)
    model = _TrunkHead(6, 48)
    opt = torch.optim.NAdam(
        [
            {"params": model.trunk.parameters(), "lr": 2e-3},
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    dataset_len, batch = 2048, 64
    unfreeze = 2 * dataset_len  # meant 2 * (dataset_len // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: float(s >= unfreeze), lambda s: min(1.0, (s + 1) / 20)]
    )
    t0 = model.trunk[0].weight.detach().clone()
    h0 = model.head[1].weight.detach().clone()
    losses, _ = _loop(
        ctx, model, opt, _readings(gen, batch, 6, 52750), 220, F.mse_loss, sched=sched
    )
    ctx.check("trunk moved under 1e-9 of its norm", _rel_change(model.trunk[0].weight, t0) < 1e-9)
    ctx.check("head moved over 10%", _rel_change(model.head[1].weight, h0) > 0.1)
    ctx.check("the head still trained (loss under 0.9x)", _fell(losses, ratio=0.9))


# -- 6. adam second moment: an evaluation loss summed over 4096 samples backpropagated once -----

RAFFLESIA_ONSET = 100


@scenario(
    family="rafflesia_bloom_odour_silu_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=RAFFLESIA_ONSET,
    note="Rafflesia bloom odour-strength regressor (SiLU MLP on bud age, host-vine girth, "
    "humidity, canopy light and temperature, MSE, AdamW lr 1e-3). At step 100 an evaluation "
    "pass, written with reduction='sum' over 4096 samples and left inside the grad context, is "
    "added to the training loss before backward: one gradient thousands of times the usual "
    "fills AdamW's second moment and the later updates stay tiny; the loss stalls.",
)
def h527_rafflesia_summed_eval_backprop(ctx):
    gen = seeded(5276)
    model = _Net(5, 48, 1, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    ex, ey = next(_readings(torch.Generator().manual_seed(11), 4096, 5, 52760))
    moves, vs, prev = [], [], {}

    def before(step):
        prev["w"] = _flat(model)

    def backprop(step, out, y, loss):
        if step == RAFFLESIA_ONSET:
            return loss + F.mse_loss(model(ex), ey, reduction="sum")
        return loss

    def after(step, loss):
        moves.append(float((_flat(model) - prev["w"]).norm()))
        vs.append(float(opt.state[model.fc1.weight]["exp_avg_sq"].sqrt().median()))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 52760),
        220,
        F.mse_loss,
        before=before,
        backprop=backprop,
        after=after,
    )
    o = RAFFLESIA_ONSET
    ctx.check("gradient over 1e3x the median at onset", norms[o] > 1e3 * _median(norms[o - 30 : o]))
    ctx.check("fc1 median sqrt(v) over 30x after onset", vs[o + 5] > 30 * vs[o - 1])
    ctx.check(
        "updates 70-115 steps after under 0.2x those before",
        _mean(moves[o + 70 : o + 115]) < 0.2 * _mean(moves[o - 40 : o]),
    )
    ctx.check("loss finite", _finite(losses))


# -- 7. gradient spike: a resumed step with a summed loss ----------------------------------------

GORODKI_ONSET = 140


@scenario(
    family="gorodki_bat_throw_gelu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=GORODKI_ONSET,
    note="Gorodki bat-throw distance regressor (GELU MLP on bat length, release angle, spin, "
    "run-up and figure, MSE, SGD momentum 0.9, clipping at norm 1). On the first step after a "
    "resume at step 140 the restored loss uses reduction='sum' (a stale config key) while the "
    "logged loss is the mean: one gradient 128x the usual on an ordinary logged loss; clipping "
    "holds the update and the run carries on.",
)
def h527_gorodki_resume_sum_reduction(ctx):
    gen = seeded(5277)
    model = _Net(5, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def backprop(step, out, y, loss):
        if step == GORODKI_ONSET:
            return F.mse_loss(out, y, reduction="sum")
        return loss

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 5, 52770),
        240,
        F.mse_loss,
        backprop=backprop,
        clip=1.0,
    )
    o = GORODKI_ONSET
    ctx.check("gradient over 30x the median at onset", norms[o] > 30 * _median(norms[o - 30 : o]))
    ctx.check("logged loss ordinary at onset", losses[o] < 2 * _median(losses[o - 30 : o]))
    ctx.check("trained and finite", _fell(losses))


# -- 8. nonfinite: sqrt of a negative buoyancy term ---------------------------------------------

GRAVITY_ONSET = 80


class _Buoyancy(nn.Module):
    """Brunt-Vaisala frequency N = sqrt(g / theta * dtheta/dz) from columns 0 (theta, K) and 1
    (dtheta/dz, K/km)."""

    def forward(self, x):
        return torch.sqrt(9.81 / x[:, :1] * x[:, 1:2] * 1e-3) * 100.0


class _GravityWaveNet(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.buoyancy = _Buoyancy()
        self.fc1 = nn.Linear(d_in - 2 + 1, hidden)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        n = self.buoyancy(x)
        return self.head(self.act1(self.fc1(torch.cat([n, x[:, 2:]], 1)))).squeeze(-1)


def _soundings(gen, batch, unstable_from):
    g = torch.Generator().manual_seed(52780)
    w = torch.randn(4, generator=g)
    step = 0
    while True:
        theta = 290.0 + 8.0 * torch.rand(batch, 1, generator=gen)
        lapse = 1.0 + 7.0 * torch.rand(batch, 1, generator=gen)
        if step >= unstable_from:
            lapse[::8] = -2.0 * torch.rand(lapse[::8].shape, generator=gen)
        rest = torch.randn(batch, 3, generator=gen)
        x = torch.cat([theta, lapse, rest], 1)
        n = torch.sqrt(9.81 / theta * lapse.clamp(min=0) * 1e-3).squeeze(1) * 100.0
        y = torch.tanh(rest @ w[:3]) * n + 0.05 * torch.randn(batch, generator=gen)
        step += 1
        yield x, y


@scenario(
    family="atmospheric_gravity_wave_buoyancy_sqrt_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("buoyancy",),
    diverges=GRAVITY_ONSET,
    heldout=True,
    onset=GRAVITY_ONSET,
    note="Atmospheric gravity-wave amplitude net (a Brunt-Vaisala feature module computing "
    "sqrt(g / theta * dtheta/dz), then a SiLU MLP with the wind-shear readings, MSE, Adagrad). "
    "The sqrt has no clamp: trained on stable night soundings, at step 80 a daytime shard "
    "brings convectively unstable soundings (dtheta/dz < 0) and sqrt of a negative gives NaN.",
)
def h527_gravity_wave_unclamped_sqrt(ctx):
    gen = seeded(5278)
    model = _GravityWaveNet(5, 32)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    nan_out = []

    def alter(step, x, y):
        if step == GRAVITY_ONSET:
            with torch.no_grad():
                nan_out.append(bool(torch.isnan(model.buoyancy(x)).any()))
        return x, y

    losses, _ = _loop(
        ctx, model, opt, _soundings(gen, 64, GRAVITY_ONSET), 160, F.mse_loss, alter=alter
    )
    ctx.check("trained and finite before onset", _fell(losses[:GRAVITY_ONSET]))
    ctx.check("buoyancy output NaN at onset", bool(nan_out) and nan_out[0])
    ctx.check("loss NaN at onset", len(losses) == GRAVITY_ONSET + 1 and math.isnan(losses[-1]))


# -- 9. amp overflow: pull time in milliseconds under fp16 autocast ------------------------------

BUZKASHI_ONSET = 90


@scenario(
    family="buzkashi_carcass_drag_fp16_gelu_regressor",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=BUZKASHI_ONSET,
    heldout=True,
    onset=BUZKASHI_ONSET,
    note="Buzkashi carcass-drag regressor (GELU MLP on pull time, carcass mass, horse mass, "
    "ground firmness and rider count, MSE, fp16 autocast + GradScaler, RAdam). At step 90 a new "
    "referee sheet gives pull time in milliseconds (about 9e4) instead of seconds: under "
    "autocast the input and the first layer's fp16 output overflow 65504 to inf and the loss is "
    "non-finite (the same batch in float32 is finite).",
)
def h527_buzkashi_pull_time_ms_fp16(ctx):
    gen = seeded(5279)
    model = _Net(5, 64, 1, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 5, 52790)
    losses, fp32_ok, fc1_inf = [], [], []
    for step in range(160):
        x, y = next(data)
        if step >= BUZKASHI_ONSET:
            x = x.clone()
            x[:, 0] = 9.0e4 + 1.5e4 * x[:, 0].abs()
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        if step == BUZKASHI_ONSET:
            fc1_inf.append(not bool(torch.isfinite(h).all()))
            with torch.no_grad():
                fp32_ok.append(bool(torch.isfinite(model(x)).all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("trained before the switch", _fell(losses[:BUZKASHI_ONSET]))
    ctx.check("fp16 fc1 output overflowed at onset", bool(fc1_inf) and fc1_inf[0])
    ctx.check("the same batch is finite in float32", bool(fp32_ok) and fp32_ok[0])
    ctx.check("loss non-finite at onset", len(losses) == BUZKASHI_ONSET + 1)


# -- 10. softmax collapse: a cosine classifier's scale typed 1000 for 10 -------------------------


class _CosineClassifier(nn.Module):
    def __init__(self, d_in, hidden, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, classes, bias=False)
        self.scale = scale

    def cosines(self, x):
        h = F.normalize(self.act1(self.fc1(x)), dim=-1)
        return h @ F.normalize(self.head.weight, dim=-1).t()

    def forward(self, x):
        return self.scale * self.cosines(x)


@scenario(
    family="tejo_mecha_target_cosine_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tejo throw-outcome classifier (ReLU encoder + cosine head on throw distance, disc "
    "mass, release angle, clay softness and mecha position; 6 outcomes, cross-entropy, RMSprop). "
    "The cosine scale is typed 1000 for 10: logits span +-1000, float32 softmax rounds most "
    "target probabilities to exactly 1.0 (or 0) and those rows give no gradient.",
)
def h527_tejo_cosine_scale_typo(ctx):
    gen = seeded(52710)
    model = _CosineClassifier(5, 48, 6, scale=1000.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    data = _grades(gen, 64, 5, 6, 527100, spread=0.8)
    losses, _ = _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True)
    px, py = next(_grades(torch.Generator().manual_seed(9), 512, 5, 6, 527100, spread=0.8))
    with torch.no_grad():
        cos = model.cosines(px)
    ctx.check(
        "over half the rows' target probability exactly 1.0",
        collapsed_fraction(1000 * cos, py) > 0.5,
    )
    ctx.check("at scale 10 under 5% collapse", collapsed_fraction(10 * cos, py) < 0.05)
    ctx.check("finite", _finite(losses))


# -- controls ------------------------------------------------------------------------------------


@scenario(
    family="ssireum_satba_grip_two_optimizer_relu_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Ssireum satba-grip outcome classifier (ReLU MLP on grip height, belt tension, stance, "
    "weight difference and leg hook; 5 outcomes, cross-entropy). Trained with Adam lr 1e-3 for "
    "50 steps, then switched to SGD momentum 0.9 lr 0.05 for the rest, as practitioners do: the "
    "update sizes change at the switch, the run keeps learning.",
)
def h527_ssireum_adam_then_sgd(ctx):
    gen = seeded(52711)
    model = _Net(5, 48, 5)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, adam)
    data = _grades(gen, 64, 5, 5, 527110)
    losses, moves = [], []
    for step in range(200):
        opt = adam if step < 50 else sgd
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        w = _flat(model)
        opt.step()
        moves.append(float((_flat(model) - w).norm()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ratio = _mean(moves[50:60]) / _mean(moves[40:50])
    ctx.check("update size changed over 1.5x at the switch", ratio > 1.5 or ratio < 1 / 1.5)
    ctx.check("loss fell and finite", _fell(losses, ratio=0.5))
    ctx.check("kept learning after the switch", _mean(losses[-10:]) < _mean(losses[45:55]))


class _KickConv(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _kicks(gen, batch, classes, length=48):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.12 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freq[:, None] * t + phase) + 0.5 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    family="chinlone_rattan_kick_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Chinlone rattan-ball kick classifier (Conv1d over a noisy foot-sensor trace, 4 kick "
    "kinds, cross-entropy with label smoothing 0.1, AdamW, OneCycleLR, clipping at norm 1): an "
    "ordinary run.",
)
def h527_chinlone_kick_onecycle(ctx):
    gen = seeded(52712)
    model = _KickConv(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _kicks(gen, 64, 4),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    px, py = next(_kicks(torch.Generator().manual_seed(9), 512, 4))
    with torch.no_grad():
        acc = float((model(px).argmax(-1) == py).float().mean())
    ctx.check("loss fell and finite", _fell(losses))
    ctx.check("accuracy over 0.7", acc > 0.7)


class _TiedAutoencoder(nn.Module):
    def __init__(self, d_in, code):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


@scenario(
    family="pato_ball_handle_fp16_tied_autoencoder",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Pato ball-handle grip autoencoder (tied weights: the decoder is the encoder's "
    "transpose; 12 handle-strain readings, MSE, fp16 autocast + GradScaler, Adam in two param "
    "groups, ReduceLROnPlateau, gradient accumulation 2, noisy batches): an ordinary run.",
)
def h527_pato_tied_autoencoder_fp16(ctx):
    gen = seeded(52713)
    model = _TiedAutoencoder(12, 4)
    opt = torch.optim.Adam(
        [{"params": model.enc.parameters(), "lr": 2e-2}, {"params": [model.dec_bias], "lr": 5e-3}]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    g = torch.Generator().manual_seed(527130)
    basis = torch.randn(4, 12, generator=g)
    losses = []
    for step in range(240):
        x = torch.randn(32, 4, generator=gen) @ basis + 0.1 * torch.randn(32, 12, generator=gen)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), x)
        scaler.scale(loss / 2).backward()
        if step % 2 == 1:
            scaler.unscale_(opt)
            ctx.grad_norms.append(grad_norm(model))
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
            opt.zero_grad(set_to_none=True)
            sched.step(float(loss.detach()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
    ctx.check("loss fell under 0.5x and finite", _fell(losses, ratio=0.5))
    ctx.check("loss scale finite and positive", all(0 < s < math.inf for s in ctx.scales))
