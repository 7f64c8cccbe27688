"""Held-out set 471 (``h471_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a bookbinding headband stitch-tension tanh regressor whose warm-up lambda has no
min(1, .) (full-batch SGD; the lr keeps climbing past 2 / sharpness and the loss blows up), an
ice-harvest block-crack BCE tagger fed 8-bit masks as 0/255 targets (the head's logits grow
without bound, RAdam), a silbo whistle pitch-glide Huber regressor whose curriculum loss weight
is read in per mille for one step (a 1000x gradient, clipped, SGD Nesterov), a charcoal-clamp
burn-rate regressor whose hand-written L2 term has its sign flipped (SGD momentum; a slow climb),
a firewalk ember-bed heat-flux regressor whose loss is multiplied by the dataset size once (Adam's
second moment poisoned), a cupola-furnace net computing charge ratios with no epsilon (0/0 on a
tap with no charge, Adamax), a needle-ice column-height regressor fed one shard in millimetres
(NAdam), a forcola oarlock two-group regressor whose stem lr is typed 1e-8 for 1e-2 (Adagrad), a
hair-ice bloom classifier whose monotone fc1 init is written -abs(w) (dead ReLUs, ASGD) and a
manja kite-line classifier with a temperature typed 0.002 for 2.0 (softmax saturates, Adadelta).

Controls: a petanque boule-to-pitch two-tower retriever (InfoNCE with in-batch negatives, a
learnt temperature clamped to a logit scale in [1, 100], AdamW, warm-up, clipping); a lake-seiche
regressor under a batch-size warm-up (8 to 512, SGD momentum; the gradient norm falls as the batch
grows); a sea-foam hydrophone Conv1d classifier under fp16 autocast with a GradScaler (RMSprop,
ReduceLROnPlateau, label smoothing, clipping).
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


def _params_norm(params) -> float:
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in params))


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
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
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
            out = model(x)
            loss = loss_fn(out, y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


# -- data and a plain net ---------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


# -- 1. sharpness: a base lr typed 0.8 for 0.08 under a ConstantLR warm-up ------------------------

THUMB_STEP = 80


@scenario(
    family="thumb_wrestling_pin_time_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=THUMB_STEP,
    note="Thumb-wrestling pin-time regressor (tanh MLP on grip-force and reach features, MSE, "
    "full-batch SGD). The base lr is typed 0.8 for 0.08 under a ConstantLR warm-up at factor 0.1 "
    "for 80 steps: the warm-up runs at 0.08 and looks fine, at step 80 the lr jumps to 0.8, "
    "lr * sharpness crosses 2 and the loss oscillates and blows up.",
)
def h468_thumb_wrestling_base_lr_typo(ctx) -> None:
    gen = seeded(4681)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4681)
    x, y = next(data)
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=0.8)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=0.1, total_iters=THUMB_STEP)
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (10, THUMB_STEP - 1, THUMB_STEP):
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 180, F.mse_loss, before=before, sched=sched)
    low = min(losses[:THUMB_STEP])
    blow = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * low), None)
    k = THUMB_STEP
    ctx.check("lr * sharpness under 2 in the warm-up", lrs[k - 1] * sharp[k - 1] < 2.0)
    ctx.check("lr * sharpness over 2 from the step", k in sharp and lrs[k] * sharp[k] > 2.0)
    ctx.check("the loss blows up over 100x after it", blow is not None and blow >= k)
    ctx.check("trained in the warm-up", low < 0.5 * losses[0])


# -- 2. exploding gradients: an orthogonal init gain typed 4 for 1 ---------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in=8, width=32, depth=12, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for m in self.layers:
            h = torch.tanh(m(h))
        return self.head(h).squeeze(-1)


@scenario(
    family="lamellar_armour_lacing_strain_deep_tanh_mlp",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Lamellar-armour lacing-strain regressor (a 12-layer tanh MLP on plate-overlap and "
    "cord-tension features, MSE, RMSprop, clipping at 1). The orthogonal init gain is typed 4 "
    "for 1: every layer amplifies the backward signal, the gradient of the first hidden layer "
    "is many times the last one's; the clip keeps the loss finite.",
)
def h468_lamellar_init_gain_typo(ctx) -> None:
    def run(gain, attach):
        gen = seeded(4682)
        model = _DeepTanh(gain=gain)
        data = _readings(gen, 64, 8, seed=4682)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        ratios = []
        losses, norms = [], []
        if attach:
            ctx.attach(model, opt)
        for _ in range(150):
            xb, yb = next(data)
            loss = F.mse_loss(model(xb), yb)
            loss.backward()
            first = float(model.layers[0].weight.grad.norm())
            last = float(model.layers[-1].weight.grad.norm())
            ratios.append(first / max(last, 1e-12))
            norms.append(grad_norm(model))
            if attach:
                ctx.grad_norms.append(norms[-1])
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            if attach:
                ctx.step(loss)
            opt.zero_grad(set_to_none=True)
        return losses, ratios

    _, ref = run(1.0, False)
    losses, ratios = run(4.0, True)
    ctx.check("layers.0's gradient over 30x layers.11's", _median(ratios[:20]) > 30)
    ctx.check("under 3x at gain 1", _median(ref[:20]) < 3)
    ctx.check("finite", _finite(losses))


# -- 3. data outlier: one shard in millimetres ------------------------------------------------------

WOOL_STEP = 120


@scenario(
    family="wool_combing_fibre_length_relu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=WOOL_STEP,
    note="Wool-combing fibre-length regressor (ReLU MLP on comb-pass and crimp features, MSE, "
    "Adagrad). One shard from a second mill logs the staple length in millimetres, not "
    "centimetres: at step 120 the targets are 10x, the loss and the gradient jump for that batch "
    "and the run recovers.",
)
def h468_wool_combing_millimetre_shard(ctx) -> None:
    gen = seeded(4683)
    model = _Net(10, 48, 1)
    data = _readings(gen, 64, 10, seed=4683, scale=2.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)

    def alter(step, x, y):
        return (x, y * 10.0) if step == WOOL_STEP else (x, y)

    losses, norms = _loop(ctx, model, opt, data, 240, F.mse_loss, alter=alter)
    k = WOOL_STEP
    ctx.check("loss over 20x the median at the shard", losses[k] > 20 * _median(losses[k - 30 : k]))
    ctx.check("gradient over 10x the median there", norms[k] > 10 * _median(norms[k - 30 : k]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[k - 20 : k]))
    ctx.check("finite", _finite(losses))


# -- 4. gradient spike: the accumulation divisor multiplied in on one step -------------------------

ROCK_STEP = 150
ROCK_ACC = 8


@scenario(
    family="rock_stacking_balance_hold_tanh_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ROCK_STEP,
    note="Rock-stacking balance hold-time regressor (tanh MLP on contact-area and tilt features, "
    "MSE, SGD Nesterov, accumulation over 8 micro-batches, clipping at 2). On the step after a "
    "resume (150) the restored code path multiplies each micro-batch loss by the accumulation "
    "count instead of dividing: one 64x gradient on an ordinary logged loss, the clip bounds the "
    "step and the run recovers.",
)
def h468_rock_stacking_accumulation_multiply(ctx) -> None:
    gen = seeded(4684)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 32, 8, seed=4684)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * ROCK_ACC * ROCK_ACC if step == ROCK_STEP else loss

    losses, norms = _loop(
        ctx, model, opt, data, 240, F.mse_loss, backprop=backprop, clip=2.0, accumulate=ROCK_ACC
    )
    k = ROCK_STEP
    ctx.check(
        "gradient over 30x the median at the step", norms[k] > 30 * _median(norms[k - 30 : k])
    )
    ctx.check("the logged loss is ordinary there", losses[k] < 2 * _median(losses[k - 30 : k]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[k - 20 : k]))
    ctx.check("finite", _finite(losses))


# -- 5. slow divergence: a weight-decay sign bug ---------------------------------------------------


@scenario(
    family="amber_polishing_lustre_gelu_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Amber-polishing lustre regressor (GELU MLP on grit, pressure and resin features, MSE, "
    "SGD momentum 0.9). A hand-written L2 term is added to the gradient with the sign flipped "
    "(grad -= wd * p for +=): the weights grow a little every step and after a first fit the "
    "loss climbs slowly.",
)
def h468_amber_polishing_decay_sign(ctx) -> None:
    gen = seeded(4685)
    model = _Net(8, 64, 1, act=nn.GELU)
    data = _readings(gen, 64, 8, seed=4685)
    wd = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = _params_norm(model.parameters())
    pnorms = []

    def backprop(step, loss):
        return loss - 0.5 * wd * sum((p * p).sum() for p in model.parameters())

    losses, _ = _loop(
        ctx,
        model,
        opt,
        data,
        300,
        F.mse_loss,
        backprop=backprop,
        after=lambda s: pnorms.append(_params_norm(model.parameters())),
    )
    low = min(losses)
    best = losses.index(low)
    jumps = max(b / a for a, b in zip(losses[:-1], losses[1:], strict=True) if a > 0)
    ctx.check("weights over 2x their start", pnorms[-1] > 2 * start)
    ctx.check("the loss climbs over 3x its lowest", _mean(losses[-10:]) > 3 * low and best < 250)
    ctx.check("no single step over 5x the one before", jumps < 5)
    ctx.check("finite", _finite(losses))


# -- 6. non-finite: a heat-equation PINN with a diffusivity sqrt(raw) ------------------------------


class _Diffusivity(nn.Module):
    """Thermal diffusivity as sqrt of a raw parameter (meant to stay positive)."""

    def __init__(self, init):
        super().__init__()
        self.raw = nn.Parameter(torch.tensor(float(init)))

    def forward(self):
        return torch.sqrt(self.raw)


class _HeatNet(nn.Module):
    """u(x, t) for a rod, a tanh MLP."""

    def __init__(self, width=32):
        super().__init__()
        self.fc1 = nn.Linear(2, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def forward(self, xt):
        h = torch.tanh(self.fc1(2 * xt - 1))
        return self.head(torch.tanh(self.fc2(h))).squeeze(-1)


def _heat_residual(net, alpha, xt):
    """u_t - alpha * u_xx at the collocation points, derivatives by autograd."""
    xt = xt.clone().requires_grad_(True)
    u = net(xt)
    du = torch.autograd.grad(u.sum(), xt, create_graph=True)[0]
    u_x, u_t = du[:, 0], du[:, 1]
    u_xx = torch.autograd.grad(u_x.sum(), xt, create_graph=True)[0][:, 0]
    return u_t - alpha * u_xx


def _heat_exact(xt, alpha):
    """A rod with ends held at 0 and a sine initial profile: exp(-alpha pi^2 t) sin(pi x)."""
    return torch.exp(-alpha * math.pi**2 * xt[:, 1]) * torch.sin(math.pi * xt[:, 0])


class _ForgeBillet(nn.Module):
    def __init__(self):
        super().__init__()
        self.field = _HeatNet()
        self.diffusivity = _Diffusivity(0.0523)

    def forward(self, xt):
        return self.field(xt)


BILLET_PHYSICS = 60
BILLET_NAN = 112


@scenario(
    family="forge_billet_cooling_heat_pinn",
    optimizer="Adam",
    cause="nonfinite",
    where=("diffusivity",),
    diverges=BILLET_NAN,
    heldout=True,
    onset=BILLET_NAN,
    note="Forge-billet cooling physics-informed network (a tanh MLP u(x, t) fitted to "
    "thermocouple readings plus the 1-D heat-equation residual u_t - alpha u_xx from autograd, "
    "with the diffusivity alpha learnt as sqrt(raw) and no clamp or softplus; Adam). The raw "
    "parameter is driven towards the small true diffusivity, Adam's step carries it below 0 and "
    "sqrt of a negative gives NaN in the residual and the loss.",
)
def h468_forge_billet_sqrt_diffusivity(ctx) -> None:
    gen = seeded(4686)
    model = _ForgeBillet()
    opt = torch.optim.Adam(
        [
            {"params": model.field.parameters(), "lr": 1e-2},
            {"params": model.diffusivity.parameters(), "lr": 5e-3},
        ]
    )
    ctx.attach(model, opt)
    true_alpha = 0.02
    raws, losses = [], []
    for step in range(150):
        obs = torch.rand(64, 2, generator=gen)
        u_obs = _heat_exact(obs, true_alpha) + 0.01 * torch.randn(64, generator=gen)
        col = torch.rand(128, 2, generator=gen)
        data_loss = F.mse_loss(model(obs), u_obs)
        loss = data_loss
        if step >= BILLET_PHYSICS:
            res = _heat_residual(model.field, model.diffusivity(), col)
            loss = data_loss + (res**2).mean()
        raws.append(float(model.diffusivity.raw.detach()))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    k = BILLET_NAN
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the loss is NaN first at the recorded step", first_bad == k)
    ctx.check("the raw diffusivity is negative there", raws[k] < 0 < raws[k - 1])
    ctx.check("finite and falling before", _finite(losses[:k]) and losses[k - 1] < losses[0])


# -- 7. update ratio: a trunk lr typed 1e-9 for 1e-3 -----------------------------------------------


class _ShieldNet(nn.Module):
    """Mean and log-variance of a blow's force."""

    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return self.head(h)


def _gauss_nll(out, y):
    mean, logvar = out[:, 0], out[:, 1].clamp(-6, 6)
    return F.gaussian_nll_loss(mean, y, logvar.exp())


@scenario(
    family="buhurt_shield_blow_two_group_gaussian_nll_net",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Buhurt shield-blow force net (SiLU MLP giving a mean and a log-variance, Gaussian NLL, "
    "NAdam with two param groups). The trunk group's lr is typed 1e-9 for 1e-3: fc1 and fc2 "
    "receive gradients but move by under 1e-5 of their norm over the run, only the head learns.",
)
def h468_buhurt_trunk_lr_typo(ctx) -> None:
    def run(trunk_lr, attach):
        gen = seeded(4687)
        model = _ShieldNet()
        data = _readings(gen, 64, 10, seed=4687)
        trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
        opt = torch.optim.NAdam(
            [{"params": trunk, "lr": trunk_lr}, {"params": model.head.parameters(), "lr": 1e-3}]
        )
        w0 = {n: m.weight.detach().clone() for n, m in model.named_children()}
        losses, _ = _loop(ctx, model, opt, data, 200, _gauss_nll, attach=attach)
        moved = {
            n: float((m.weight.detach() - w0[n]).norm() / w0[n].norm())
            for n, m in model.named_children()
        }
        return losses, moved

    ref_losses, ref_moved = run(1e-3, False)
    losses, moved = run(1e-9, True)
    ctx.check("fc1 and fc2 move under 1e-5 of their norm", max(moved["fc1"], moved["fc2"]) < 1e-5)
    ctx.check("the head moves over 5%", moved["head"] > 0.05)
    ctx.check("the trunk moves over 5% in the intended run", ref_moved["fc1"] > 0.05)
    ctx.check(
        "loss at the end above the intended run's", _mean(losses[-20:]) > _mean(ref_losses[-20:])
    )


# -- 8. softmax collapse: a temperature of 0.002 left in -------------------------------------------


class _BoutNet(nn.Module):
    def __init__(self, temperature, d_in=12, classes=5):
        super().__init__()
        self.temperature = temperature
        self.fc1 = nn.Linear(d_in, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, classes)

    def logits(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))

    def forward(self, x):
        return self.logits(x) / self.temperature


@scenario(
    family="finger_jousting_bout_outcome_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Finger-jousting bout-outcome classifier (GELU MLP on grip and wrist-sensor features, "
    "cross-entropy, Adamax). A sharpening temperature of 0.002 from a calibration notebook is "
    "left in forward: the logits are 500x too large and most rows' softmax rounds the target "
    "to exactly 1.0 in float32.",
)
def h468_finger_jousting_temperature_left_in(ctx) -> None:
    gen = seeded(4688)
    model = _BoutNet(0.002)
    data = _grades(gen, 64, 12, 5, seed=4688, spread=0.9)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True)
    x, y = next(data)
    with torch.no_grad():
        raw = model.logits(x)
    ctx.check(
        "over half the rows' target probability exactly 1.0",
        collapsed_fraction(raw / 0.002, y) > 0.5,
    )
    ctx.check("under 5% at temperature 1 on the same logits", collapsed_fraction(raw, y) < 0.05)


# -- 9. plasticity: fc2 biases initialised -3 for -0.03 --------------------------------------------


@scenario(
    family="jet_carving_blank_grade_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Whitby-jet carving blank-grade classifier (ReLU MLP on hardness, lustre and fracture "
    "features, cross-entropy, RAdam). fc2's biases are initialised to -3.0 for -0.03: nearly "
    "all of fc2's ReLUs are dead from the start, get no gradient and never revive; the loss "
    "stays near chance.",
)
def h468_jet_carving_bias_init_typo(ctx) -> None:
    def run(bias, attach):
        gen = seeded(4689)
        model = _Net(10, 48, 6)
        nn.init.constant_(model.fc2.bias, bias)
        data = _grades(gen, 64, 10, 6, seed=4689)
        opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
        losses, _ = _loop(
            ctx, model, opt, data, 200, F.cross_entropy, classifier=True, attach=attach
        )
        x, _ = next(data)
        with torch.no_grad():
            dead = dead_fraction(model.features(x))
        return losses, dead

    ref_losses, ref_dead = run(-0.03, False)
    losses, dead = run(-3.0, True)
    ctx.check("over 90% of act2's units dead at the end", dead > 0.9)
    ctx.check("under 10% dead at -0.03", ref_dead < 0.1)
    ctx.check("the loss stays near chance", _mean(losses[-20:]) > 0.8 * math.log(6))
    ctx.check("the -0.03 run trains", _fell(ref_losses, ratio=0.5))


# -- 10. output logits: masks read as 0/255 --------------------------------------------------------


class _HaloSeg(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        return self.head(F.relu(self.conv2(F.relu(self.conv1(x))))).squeeze(1)


def _halo_frames(gen, batch, scale=1.0):
    """8x8 sky frames with a bright arc of random radius over noise; the mask marks the arc."""
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    while True:
        r = 2.0 + 4.0 * torch.rand(batch, 1, 1, generator=gen)
        cy = 7.0 + torch.rand(batch, 1, 1, generator=gen)
        d = torch.sqrt((yy - cy) ** 2 + (xx - 3.5) ** 2)
        mask = ((d - r).abs() < 0.7).float()
        x = mask * 0.8 + 0.4 * torch.randn(batch, 8, 8, generator=gen)
        yield x[:, None], mask * scale


@scenario(
    family="ice_halo_arc_mask_bce_conv_net",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Ice-halo arc segmenter (a small conv net giving a logit per pixel of an 8x8 sky "
    "frame, BCE with logits, AdamW). The masks are read as 8-bit PNGs and never divided by "
    "255: the targets are 0/255, the loss keeps falling linearly in the logits, and the head's "
    "logits grow without bound.",
)
def h468_ice_halo_mask_not_scaled(ctx) -> None:
    def run(scale, attach):
        gen = seeded(4690)
        model = _HaloSeg()
        data = _halo_frames(gen, 32, scale)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        seen = []
        probe, _ = next(_halo_frames(torch.Generator().manual_seed(7), 64))

        def after(step):
            with torch.no_grad():
                seen.append(float(model(probe).abs().mean()))

        losses, _ = _loop(
            ctx,
            model,
            opt,
            data,
            200,
            F.binary_cross_entropy_with_logits,
            after=after,
            attach=attach,
        )
        return losses, seen

    ref_losses, ref = run(1.0, False)
    losses, seen = run(255.0, True)
    ctx.check("mean |logit| over 20x its first steps'", seen[-1] > 20 * _mean(seen[:5]))
    ctx.check("still climbing at the end", seen[-1] > 1.2 * seen[-50])
    ctx.check("over 5x the 0/1 run's", seen[-1] > 5 * ref[-1])
    ctx.check("the 0/1 run trains", _fell(ref_losses))
    ctx.check("finite", _finite(losses))


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="copper_kettle_planishing_heat_pinn_ramped_residual",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Copper-kettle planishing heat PINN (a tanh MLP u(x, t) for the temperature across a "
    "sheet after a hammer blow; data from thermocouples plus the 1-D heat-equation residual "
    "u_t - alpha u_xx from autograd at collocation points). The residual's weight is ramped "
    "from 0.1 to 100 between steps 80 and 140, so the total loss rises while the weight rises; "
    "Adam with cosine decay. Control.",
)
def h468_copper_kettle_pinn_control(ctx) -> None:
    gen = seeded(4691)
    model = _HeatNet()
    alpha = 0.05
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=240, eta_min=5e-4)
    ctx.attach(model, opt)
    totals, datas, resids = [], [], []
    for step in range(240):
        weight = 0.1 * (1000.0 ** min(max(step - 80, 0) / 60, 1.0))
        obs = torch.rand(64, 2, generator=gen)
        u_obs = _heat_exact(obs, alpha) + 0.02 * torch.randn(64, generator=gen)
        col = torch.rand(128, 2, generator=gen)
        data_loss = F.mse_loss(model(obs), u_obs)
        resid = (_heat_residual(model, alpha, col) ** 2).mean()
        loss = data_loss + weight * resid
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        totals.append(float(loss.detach()))
        datas.append(float(data_loss.detach()))
        resids.append(float(resid.detach()))
    ctx.check("finite", _finite(totals))
    ctx.check("the data term fell over 5x", _mean(datas[-10:]) < _mean(datas[:10]) / 5)
    ctx.check(
        "the total rises while the weight rises",
        _mean(totals[130:140]) > 1.5 * _mean(totals[70:80]),
    )
    ctx.check("the residual at the end under its peak / 2", _mean(resids[-10:]) < max(resids) / 2)


class _CatchConv(nn.Module):
    def __init__(self, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(3, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(h.mean(-1))


def _catches(gen, batch, classes=4, length=32):
    """Three-axis wrist accelerometer traces; each catch type has its own swing frequency."""
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = (1.5 + y.float())[:, None, None]
        ph = 6.28 * torch.rand(batch, 3, 1, generator=gen)
        x = torch.sin(6.28 * f * t + ph) + 0.5 * torch.randn(batch, 3, length, generator=gen)
        yield x, y


@scenario(
    family="cup_and_ball_catch_fp16_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cup-and-ball catch-type classifier (ReLU conv1d over wrist accelerometer traces, "
    "cross-entropy with label smoothing 0.1, fp16 autocast with a GradScaler, SGD momentum "
    "under OneCycleLR, clipping at 1 after unscale). Control.",
)
def h468_cup_and_ball_fp16_control(ctx) -> None:
    gen = seeded(4692)
    model = _CatchConv()
    data = _catches(gen, 32)
    steps = 160
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    losses, correct = [], []
    for _ in range(steps):
        x, y = next(data)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        correct.append(float((out.argmax(-1) == y).float().mean()))
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("accuracy over 70% at the end", _mean(correct[-20:]) > 0.7)


class _TiedAE(nn.Module):
    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _render_batches(gen, batch, d_in=16, code=4):
    """Fat-render profiles (temperature, clarity, yield readings) on a low-dimensional set."""
    g = torch.Generator().manual_seed(4693)
    basis = torch.randn(code, d_in, generator=g) / math.sqrt(code)
    while True:
        z = torch.randn(batch, code, generator=gen)
        clean = z @ basis
        yield clean + 0.2 * torch.randn(batch, d_in, generator=gen), clean


@scenario(
    family="pemmican_render_fat_tied_denoising_autoencoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Pemmican render-fat profile denoising autoencoder (decoder tied to the encoder's "
    "weight, MSE to the clean profile, AdamW with no decay on biases as a second param group, "
    "accumulation over 2, clipping at 1, ReduceLROnPlateau). Control.",
)
def h468_pemmican_tied_autoencoder_control(ctx) -> None:
    gen = seeded(4693)
    model = _TiedAE()
    data = _render_batches(gen, 32)
    opt = torch.optim.AdamW(
        [
            {"params": [model.enc.weight], "weight_decay": 1e-2},
            {"params": [model.enc.bias, model.dec_bias], "weight_decay": 0.0},
        ],
        lr=1e-2,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.mse_loss,
        clip=1.0,
        accumulate=2,
        after=lambda s: plateau.step(_mean(ctx.losses[-10:])),
    )
    ctx.check("loss fell", _fell(losses, ratio=0.5))
