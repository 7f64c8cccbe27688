"""Held-out set 531 (``h531_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a change-ringing bell-order classifier whose softmax temperature is typed 0.002 for 2
(Adam); a fumarole sulfur-flux log-ratio net taking log(so2 / h2s) of ReLU outputs with no clamp
(Adagrad); a shakuhachi meri-pitch Elman RNN whose recurrent weight is initialised at 1.2 x the
identity (plain SGD, clipped); a canyoning rappel descent-time regressor whose MultiStepLR gamma
is written 20 (1 / 0.05) for 0.05 (SGD momentum); a snowpack settlement regressor whose layer-wise lr decay
factor is typed 0.0 (AdamW, param groups); a knife-forging quench-hardness Huber regressor fed
one bad shard in raw degrees (RMSprop); a fell-pony gait-speed Gaussian-NLL net whose resumed
step sums over batch and micro-batches (SGD Nesterov, clipped); a pingo frost-heave tanh
regressor with a decoupled weight-decay sign bug (NAdam); a thatcher spar-split BCE tagger with
RAdam lr typed 3.0 for 3e-3 (dead ReLUs); a katabatic-wind onset classifier whose z-loss sign is
flipped (Adamax).

Controls: a harness-racing gait classifier whose curriculum adds harder gaits at step 120 (SGD
momentum, cosine, clipping: the loss jumps at the switch); a meteor-shower radiant set
transformer over generated trail sets (AdamW, warm-up + cosine, clipping); a mushroom-foray
cap-grade Conv1d classifier (Adam, label smoothing, accumulation 2, ReduceLROnPlateau, noisy
spectra).
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


FUMAROLE_NAN = 80
RAPPEL_LR = 0.1
PINGO_WD = 3.0


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


# -- 1. softmax collapse: a temperature typed 0.002 for 2 ---------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, hidden, out, temperature):
        super().__init__(d_in, hidden, out)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="bell_ringing_change_order_temperature_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Change-ringing method classifier (ReLU MLP on the strike intervals of 12 bells, 8 "
    "methods, cross-entropy, Adam). The softmax temperature is typed 0.002 for 2: the head's "
    "logits are multiplied by 500, the float32 softmax rounds the predicted method to exactly 1.0 "
    "and the rest to 0, and misclassified rows give losses in the hundreds.",
)
def h531_bell_ringing_temperature_typo(ctx):
    gen = seeded(5311)
    model = _TempNet(12, 64, 8, temperature=0.002)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(9), 512, 12, 8, 53110))
    losses, _ = _loop(
        ctx, model, opt, _grades(gen, 64, 12, 8, 53110), 150, F.cross_entropy, classifier=True
    )
    with torch.no_grad():
        logits = model(probe_x)
    ctx.check(
        "over half the rows' target probability exactly 1.0",
        collapsed_fraction(logits, probe_y) > 0.5,
    )
    ctx.check(
        "scaled logits spread over 20",
        float((logits.max(1).values - logits.min(1).values).median()) > 20,
    )
    ctx.check("finite", _finite(losses))


# -- 2. nonfinite: log(so2 / h2s) of ReLU outputs with no clamp ---------------------------------


class _LogRatio(nn.Module):
    def forward(self, flux):
        return torch.log(flux[:, 0] / flux[:, 1])


class _FumaroleNet(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.flux = nn.Linear(hidden, 2)
        self.act_flux = nn.ReLU()
        self.ratio = _LogRatio()
        nn.init.constant_(self.flux.bias, 1.0)

    def fluxes(self, x):
        return self.act_flux(self.flux(self.act1(self.fc1(x))))

    def forward(self, x):
        return self.ratio(self.fluxes(x))


@scenario(
    family="fumarole_sulfur_flux_log_ratio_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("ratio",),
    diverges=FUMAROLE_NAN,
    heldout=True,
    onset=FUMAROLE_NAN,
    note="Fumarole sulfur-gas net (ReLU MLP on vent temperature, steam fraction, barometric "
    "pressure, rainfall and seismic tremor; two ReLU flux outputs for SO2 and H2S; MSE on "
    "log(SO2 / H2S), Adagrad). The ratio has no clamp or epsilon. From step 80 the vent enters "
    "unrest and the readings swing five times their calibration spread: a flux output reaches an "
    "exact ReLU zero the log gives -inf or log(0/0) = NaN and the loss is non-finite.",
)
def h531_fumarole_log_ratio_no_clamp(ctx):
    gen = seeded(5312)
    model = _FumaroleNet(5, 32)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    zeros = []

    def backprop(step, out, y, loss):
        with torch.no_grad():
            zeros.append(float((model.fluxes(xs[-1]) == 0).any()))
        return loss

    def alter(step, x, y):
        if step >= FUMAROLE_NAN:
            x = 5.0 * x  # unrest: readings five times the calibration spread
        xs.append(x)
        return x, y

    xs = []
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 53120),
        200,
        F.mse_loss,
        alter=alter,
        backprop=backprop,
    )
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    ctx.check(f"loss finite before step {FUMAROLE_NAN}", _finite(losses[:FUMAROLE_NAN]))
    ctx.check(f"loss non-finite at step {FUMAROLE_NAN}", bool(bad) and bad[0] == FUMAROLE_NAN)
    ctx.check("a flux output exactly zero at that step", bool(bad) and zeros[bad[0]] == 1.0)


# -- 3. exploding gradients: Elman recurrent weight initialised at 1.2 x identity ---------------


class _Elman(nn.Module):
    def __init__(self, d_in, hidden, rec_gain):
        super().__init__()
        self.cell_in = nn.Linear(d_in, hidden)
        self.cell_rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.cell_rec.weight.copy_(rec_gain * torch.eye(hidden))
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell_rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.cell_in(x[:, t]) + self.cell_rec(h))
            h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _breath_sequences(gen, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = 0.3 * torch.randn(batch, length, 3, generator=gen)
        decay = 0.9 ** torch.arange(length - 1, -1, -1).float()
        y = torch.tanh((x @ w * decay).sum(1))
        yield x, y


@scenario(
    family="shakuhachi_meri_pitch_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell_rec",),
    diverges=None,
    heldout=True,
    note="Shakuhachi meri-bend pitch regressor (hand-written ReLU Elman RNN over 32 frames of "
    "breath pressure, jaw angle and hole shading, MSE, plain SGD, gradient clipping at 1). The "
    "recurrent weight is initialised at 1.2 x identity (an IRNN init with the gain typed 1.2 for "
    "1.0): the backward pass multiplies by it at every frame and the gradient grows through time, "
    "the first frame's state gradient hundreds of times the last's.",
)
def h531_shakuhachi_irnn_gain(ctx):
    gen = seeded(5313)
    model = _Elman(3, 32, rec_gain=1.2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios = []

    def after(step, loss):
        s = model.states
        if s[0].grad is not None:
            ratios.append(float(s[0].grad.norm() / s[-1].grad.norm().clamp_min(1e-30)))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _breath_sequences(gen, 32, 32, 53130),
        150,
        F.mse_loss,
        after=after,
        clip=1.0,
    )
    ctx.check(
        "first frame's state gradient over 100x the last's at start", _median(ratios[:10]) > 100
    )
    ctx.check("still over 30x at the end", _median(ratios[-20:]) > 30)
    ctx.check("median gradient norm over 50", _median(norms) > 50)
    ctx.check("finite", _finite(losses))


# -- 4. sharpness above limit: MultiStepLR gamma written 20 for 0.05 ----------------------------

RAPPEL_MILESTONE = 100


@scenario(
    family="canyoning_rappel_descent_time_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=RAPPEL_MILESTONE,
    note="Canyoning rappel descent-time regressor (SiLU MLP on pitch height, rope diameter, flow "
    "rate, anchor angle, wetsuit thickness and group size, MSE, SGD momentum 0.9, lr 0.1). The "
    "MultiStepLR decay at step 100 has gamma written 20 (1 / 0.05) for 0.05: the lr jumps 20-fold, past the "
    "2(1 + momentum)/sharpness limit, and the loss oscillates and blows up.",
)
def h531_rappel_multistep_gamma_typo(ctx):
    gen = seeded(5314)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=RAPPEL_LR, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[RAPPEL_MILESTONE], gamma=20.0)
    probe = next(_readings(torch.Generator().manual_seed(9), 256, 6, 53140))
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (RAPPEL_MILESTONE - 1, RAPPEL_MILESTONE):
            sharp[step] = _top_hessian_eig(model, F.mse_loss, *probe)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 53140), 220, F.mse_loss, before=before, sched=sched
    )
    pre, at = RAPPEL_MILESTONE - 1, RAPPEL_MILESTONE
    ctx.check("lr x sharpness under 2 before the milestone", lrs[pre] * sharp[pre] < 2)
    ctx.check("lr x sharpness over 3.8 = 2(1 + momentum) after it", lrs[at] * sharp[at] > 3.8)
    ctx.check("trained before the milestone", _mean(losses[90:100]) < 0.7 * _mean(losses[:10]))
    ctx.check(
        "loss blew up (non-finite or over 100x its best)",
        not _finite(losses) or max(losses) > 100 * min(losses),
    )


# -- 5. update ratio: layer-wise lr decay factor typed 0.0 --------------------------------------


@scenario(
    family="snowpack_settlement_rate_two_group_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Snowpack settlement-rate regressor (GELU MLP on snow depth, density, temperature "
    "gradient, grain size, new-snow load and days since storm, MSE, AdamW with one param group "
    "per layer). The layer-wise lr decay factor is typed 0.0 for 0.8: the head gets base * 0.0**0 "
    "= base, fc2 and fc1 get 0.0: the trunk never moves (updates exactly zero) and only the head "
    "fits, the loss stalls above what the net can reach.",
)
def h531_snowpack_llrd_zero(ctx):
    gen = seeded(5315)
    model = _Net(6, 48, 1, act=nn.GELU)
    base, decay = 3e-3, 0.0
    groups = [
        {"params": model.head.parameters(), "lr": base * decay**0},
        {"params": model.fc2.parameters(), "lr": base * decay**1},
        {"params": model.fc1.parameters(), "lr": base * decay**2},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 53150), 200, F.mse_loss)
    ctx.check("fc1 weight moved under 1e-6 relative", _rel_change(model.fc1.weight, w1) < 1e-6)
    ctx.check("head weight moved over 10% relative", _rel_change(model.head.weight, wh) > 0.1)
    ctx.check("finite", _finite(losses))


# -- 6. data outlier: one shard with the quench temperature in raw degrees ----------------------

QUENCH_ONSET = 120


@scenario(
    family="knife_forging_quench_hardness_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=QUENCH_ONSET,
    note="Knife-forging quench-hardness regressor (ReLU MLP on standardised austenitising "
    "temperature, soak time, quenchant, blade thickness, carbon content and normalising cycles, "
    "Huber loss, RMSprop). One shard from a new forge was written without standardisation: at "
    "step 120 the batch carries the quench temperature in raw degrees Celsius (about 820): one "
    "huge loss and gradient, then the ordinary shards resume.",
)
def h531_quench_raw_degrees_shard(ctx):
    gen = seeded(5316)
    model = _Net(6, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    raw = []

    def alter(step, x, y):
        if step == QUENCH_ONSET:
            x = x.clone()
            x[:, 0] = 820.0 + 30.0 * x[:, 0]
        raw.append(float(x.abs().max()))
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 53160), 220, F.huber_loss, alter=alter
    )
    prior = _median(losses[QUENCH_ONSET - 20 : QUENCH_ONSET])
    ctx.check("the bad batch's input over 500", raw[QUENCH_ONSET] > 500)
    ctx.check("loss at onset over 50x the prior median", losses[QUENCH_ONSET] > 50 * prior)
    ctx.check(
        "gradient at onset over 50x the prior median",
        norms[QUENCH_ONSET] > 50 * _median(norms[QUENCH_ONSET - 20 : QUENCH_ONSET]),
    )
    ctx.check("finite", _finite(losses))


# -- 7. gradient spike: the resumed step sums over batch and micro-batches ----------------------

PONY_RESUME = 110


class _GaussHead(_Net):
    def forward(self, x):
        out = self.head(self.features(x))
        return out[:, 0], F.softplus(out[:, 1]) + 1e-3


def _gauss_nll(out, y):
    mean, var = out
    return F.gaussian_nll_loss(mean, y, var)


@scenario(
    family="fell_pony_gait_speed_gaussian_nll_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=PONY_RESUME,
    note="Fell-pony gait-speed net (SiLU MLP on stride length, cadence, slope, ground firmness, "
    "rider weight and age; mean and variance heads, Gaussian NLL; SGD Nesterov momentum 0.9, "
    "clipping at 5, accumulation 8). On the step after resuming from a checkpoint at step 110 the "
    "loss is summed over the 64 samples and the 8 micro-batches instead of averaged: one gradient "
    "512x too large (clipped before the update); the logged loss is the ordinary mean.",
)
def h531_pony_resume_sum_reduction(ctx):
    gen = seeded(5317)
    model = _GaussHead(6, 48, 2, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)

    def backprop(step, out, y, loss):
        return loss * 64 * 8 if step == PONY_RESUME else loss

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 53170), 200, _gauss_nll, backprop=backprop, clip=5.0
    )
    prior = _median(norms[PONY_RESUME - 20 : PONY_RESUME])
    ctx.check(
        "gradient at the resumed step over 100x the prior median", norms[PONY_RESUME] > 100 * prior
    )
    ctx.check(
        "gradient back under 5x the prior median after",
        _median(norms[PONY_RESUME + 1 : PONY_RESUME + 11]) < 5 * prior,
    )
    ctx.check("trained", _mean(losses[PONY_RESUME - 10 : PONY_RESUME]) < _mean(losses[:10]) - 0.3)
    ctx.check("finite", _finite(losses))


# -- 8. loss divergence: a decoupled weight-decay sign bug --------------------------------------


@scenario(
    family="frost_heave_pingo_growth_tanh_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Pingo frost-heave growth regressor (tanh MLP on permafrost depth, groundwater pressure, "
    "freezing index, soil porosity, lake drainage age and ice-lens count, MSE, NAdam). The "
    "hand-written decoupled weight decay multiplies each weight by (1 + lr * wd) instead of "
    "(1 - lr * wd): the weights grow geometrically, the loss first falls, then climbs slowly.",
)
def h531_pingo_decay_sign_bug(ctx):
    gen = seeded(5318)
    model = _Net(6, 48, 1, act=nn.Tanh)
    lr, wd = 3e-3, PINGO_WD
    opt = torch.optim.NAdam(model.parameters(), lr=lr)
    n0 = float(_flat(model).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # sign bug: meant 1 - lr * wd

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 53180), 300, F.mse_loss, after=after)
    best = min(range(len(losses)), key=lambda i: _mean(losses[max(0, i - 5) : i + 5]))
    ctx.check("weight norm grew over 3x", float(_flat(model).norm()) > 3 * n0)
    ctx.check("loss fell first", _mean(losses[best - 5 : best + 5]) < 0.7 * _mean(losses[:10]))
    ctx.check(
        "final loss over 3x its best", _mean(losses[-10:]) > 3 * _mean(losses[best - 5 : best + 5])
    )
    ctx.check("finite", _finite(losses))


# -- 9. loss of plasticity: RAdam lr typed 3.0 for 3e-3 ----------------------------------------


@scenario(
    family="thatcher_spar_split_relu_bce_tagger",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Thatcher's spar-split tagger (ReLU MLP on hazel rod diameter, moisture, age, knot count, "
    "twist and season, 4 independent defect tags, BCE with logits, RAdam). The lr is typed 3.0 for "
    "3e-3: once RAdam's rectification switches on, the large updates push the second hidden "
    "layer's pre-activations below zero for every input, the units die and the tagger stalls.",
)
def h531_thatcher_radam_lr_typo(ctx):
    gen = seeded(5319)
    model = _Net(6, 64, 4)
    opt = torch.optim.RAdam(model.parameters(), lr=3.0)
    g = torch.Generator().manual_seed(53190)
    w = torch.randn(6, 4, generator=g)

    def tags(gen_):
        while True:
            x = torch.randn(64, 6, generator=gen_)
            yield x, (x @ w + 0.3 * torch.randn(64, 4, generator=gen_) > 0.5).float()

    probe_x, _ = next(tags(torch.Generator().manual_seed(9)))
    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe_x))
    losses, _ = _loop(ctx, model, opt, tags(gen), 200, F.binary_cross_entropy_with_logits)
    with torch.no_grad():
        dead = dead_fraction(model.features(probe_x))
    ctx.check("under 10% of act2 dead at init", dead0 < 0.1)
    ctx.check("over 70% of act2 units dead at the end", dead > 0.7)
    ctx.check("stalls above 0.4 BCE", _mean(losses[-20:]) > 0.4)
    ctx.check("finite", _finite(losses))


# -- 10. output logit divergence: the z-loss sign flipped ---------------------------------------


@scenario(
    family="katabatic_wind_onset_zloss_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Katabatic-wind onset classifier (ReLU MLP on slope temperature deficit, glacier "
    "albedo, cloud cover, pressure gradient and hour, 5 onset classes, cross-entropy, Adamax). "
    "The z-loss regulariser is written ce - 1e-2 * logsumexp**2 (sign flipped): instead of "
    "keeping the head's logits near zero it rewards their growth: they grow without bound and "
    "the cross-entropy, after falling, creeps back up.",
)
def h531_katabatic_zloss_sign(ctx):
    gen = seeded(53110)
    model = _Net(8, 48, 5)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    probe_x, _ = next(_grades(torch.Generator().manual_seed(9), 256, 8, 5, 53200))
    with torch.no_grad():
        l0 = float(model(probe_x).abs().mean())

    def backprop(step, out, y, loss):
        return loss - 1e-2 * (torch.logsumexp(out, 1) ** 2).mean()

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 8, 5, 53200),
        160,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
    )
    with torch.no_grad():
        l1 = float(model(probe_x).abs().mean())
    ctx.check("mean |logit| grew over 20x", l1 > 20 * l0)
    ctx.check("mean |logit| over 30 at the end", l1 > 30)
    ctx.check("finite", _finite(losses))


# -- 11. control: a curriculum that adds harder gaits at step 120 -------------------------------

GAIT_SWITCH = 120


@scenario(
    family="harness_racing_pace_gait_curriculum_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Harness-racing gait classifier (ReLU MLP on hoof-strike timings, sulky load and "
    "hobble tension, 6 gait classes, cross-entropy, SGD momentum 0.9, cosine schedule, clipping "
    "at 1). Curriculum: the first 120 steps show only the 3 clean gaits (trot, pace, gallop) "
    "with little noise, then the 3 broken gaits and noisier strides join: the loss jumps up at "
    "the switch and then falls again. Healthy.",
)
def h531_gait_curriculum_switch(ctx):
    gen = seeded(53111)
    model = _Net(10, 64, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 240
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    easy = _grades(gen, 64, 10, 3, 53210, spread=0.6)  # the first 3 prototypes
    hard = _grades(gen, 64, 10, 6, 53210, spread=1.0)

    def stages():
        step = 0
        while True:
            if step < GAIT_SWITCH:
                yield next(easy)
            else:
                yield next(hard)
            step += 1

    losses, _ = _loop(
        ctx, model, opt, stages(), steps, F.cross_entropy, classifier=True, clip=1.0, sched=sched
    )
    pre = _mean(losses[GAIT_SWITCH - 10 : GAIT_SWITCH])
    ctx.check("stage 1 trained", pre < 0.5 * _mean(losses[:10]))
    ctx.check(
        "loss jumps over 2x at the switch", _mean(losses[GAIT_SWITCH : GAIT_SWITCH + 3]) > 2 * pre
    )
    ctx.check(
        "stage 2 trained", _mean(losses[-10:]) < 0.6 * _mean(losses[GAIT_SWITCH : GAIT_SWITCH + 10])
    )
    ctx.check("finite", _finite(losses))


# -- 12. control: a set transformer over meteor-trail sets --------------------------------------


class _SAB(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class _SetTransformer(nn.Module):
    def __init__(self, d_in, dim=32, heads=4, out=2):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.sab1 = _SAB(dim, heads)
        self.sab2 = _SAB(dim, heads)
        self.seed = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.pma = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out)

    def forward(self, x):
        h = self.sab2(self.sab1(self.embed(x)))
        pooled = self.pma(self.seed.expand(x.shape[0], -1, -1), h, h, need_weights=False)[0]
        return self.head(self.ln(pooled[:, 0]))


def _meteor_sets(gen, batch, n):
    """Trails (start x, y, direction x, y, brightness) radiating away from a hidden radiant."""
    while True:
        radiant = torch.rand(batch, 1, 2, generator=gen) * 2 - 1
        start = torch.rand(batch, n, 2, generator=gen) * 4 - 2
        d = F.normalize(start - radiant, dim=-1) + 0.1 * torch.randn(batch, n, 2, generator=gen)
        bright = torch.rand(batch, n, 1, generator=gen)
        yield torch.cat([start, d, bright], -1), radiant[:, 0]


@scenario(
    family="meteor_shower_radiant_set_transformer",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Meteor-shower radiant locator: a set transformer (two self-attention blocks and "
    "attention pooling by a learnt seed) over generated sets of 16 trails (start point, noisy "
    "direction, brightness), regressing the radiant (MSE, AdamW, 20-step linear warm-up then "
    "cosine, clipping at 1). Healthy.",
)
def h531_meteor_set_transformer(ctx):
    gen = seeded(53112)
    model = _SetTransformer(5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 160, 20

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    losses, _ = _loop(
        ctx, model, opt, _meteor_sets(gen, 32, 16), steps, F.mse_loss, clip=1.0, sched=sched
    )
    ctx.check("loss fell under 0.4x", _fell(losses, ratio=0.4))
    ctx.check("finite", _finite(losses))


# -- 13. control: a Conv1d classifier with accumulation and ReduceLROnPlateau -------------------


class _SporeConv(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _spectra(gen, batch, classes, seed):
    g = torch.Generator().manual_seed(seed)
    freqs = torch.linspace(0.1, 0.6, classes) + 0.02 * torch.rand(classes, generator=g)
    t = torch.arange(32).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freqs[y][:, None] * t + phase) + 0.3 * torch.randn(batch, 32, generator=gen)
        yield x, y


@scenario(
    family="mushroom_foray_cap_grade_conv1d_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Mushroom-foray cap-grade classifier (Conv1d net on noisy 32-point gill-reflectance "
    "spectra, 5 grades, cross-entropy with label smoothing 0.1, Adam, gradient accumulation 2, "
    "ReduceLROnPlateau on the running loss). Healthy.",
)
def h531_mushroom_conv1d_accum_plateau(ctx):
    gen = seeded(53113)
    model = _SporeConv(5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=5)
    ctx.attach(model, opt)
    data = _spectra(gen, 32, 5, 53213)
    losses, accum = [], 2
    for step in range(200):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        (loss / accum).backward()
        ctx.grad_norms.append(grad_norm(model))
        if step % accum == accum - 1:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if step % 20 == 19:
            sched.step(_mean(losses[-20:]))
    ctx.check("loss fell under 0.6x", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
