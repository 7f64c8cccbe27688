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


# -- 1. sharpness: a warm-up lambda with no min(1, .) -----------------------------------------------


@scenario(
    family="bookbinding_headband_stitch_tension_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=20,
    note="Bookbinding headband stitch-tension regressor (tanh MLP on thread, core and spine "
    "features, MSE, full-batch SGD under a LambdaLR warm-up). The warm-up lambda is written "
    "(s + 1) / 20 without the min(1, .): after step 20 the lr keeps rising linearly, lr * "
    "sharpness crosses 2 and the loss oscillates and blows up.",
)
def h471_headband_warmup_no_clamp(ctx) -> None:
    gen = seeded(4711)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4711)
    x, y = next(data)
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=0.15)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 20)
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 10 == 0:
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 260, F.mse_loss, before=before, sched=sched)
    low = min(v for v in losses if math.isfinite(v))
    low_at = losses.index(low)
    blow = next(
        (i for i, v in enumerate(losses) if i > low_at and (not math.isfinite(v) or v > 100 * low)),
        None,
    )
    cross = next((s for s in sorted(sharp) if lrs[s] * sharp[s] > 2.0), None)
    ctx.check("lr * sharpness under 2 at step 20", lrs[20] * sharp[20] < 2.0)
    ctx.check(
        "lr * sharpness over 2 before the blow-up",
        cross is not None and blow is not None and cross <= blow,
    )
    ctx.check("the loss blows up over 100x its lowest", blow is not None)
    ctx.check("trained first", low < 0.5 * losses[0])


# -- 2. output logits: a mask read as 0/255 --------------------------------------------------------


@scenario(
    family="ice_harvest_block_crack_mask_bce_net",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Ice-harvest block crack tagger (ReLU MLP on saw-sound and clarity features, one "
    "crack/no-crack logit per block face, BCEWithLogits, RAdam). The labels come from 8-bit "
    "mask images and are not divided by 255: targets of 0/255 make the loss unbounded below, "
    "the head's logits grow without bound and the 'loss' goes negative.",
)
def h471_ice_harvest_mask_255(ctx) -> None:
    gen = seeded(4712)
    g = torch.Generator().manual_seed(4712)
    w = torch.randn(12, 4, generator=g)

    def data():
        while True:
            x = torch.randn(64, 12, generator=gen)
            yield x, 255.0 * (x @ w > 0.3).float()

    model = _Net(12, 48, 4)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    probe = torch.randn(256, 12, generator=torch.Generator().manual_seed(1))
    mags = []

    def after(step):
        with torch.no_grad():
            mags.append(float(model(probe).abs().mean()))

    losses, _ = _loop(ctx, model, opt, data(), 220, F.binary_cross_entropy_with_logits, after=after)
    ctx.check(
        "head's mean |logit| over 20x its first steps'", _mean(mags[-10:]) > 20 * _mean(mags[:5])
    )
    ctx.check("still climbing over the last 60 steps", mags[-1] > 1.3 * mags[-60])
    ctx.check("the loss below 0, impossible for a valid BCE", losses[-1] < 0)
    ctx.check("finite", _finite(losses))


# -- 3. gradient spike: a loss-weight table read in per mille ---------------------------------------

SILBO_STEP = 120


@scenario(
    family="silbo_whistle_pitch_glide_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SILBO_STEP,
    note="Silbo whistled-language pitch-glide regressor (tanh MLP on formant-track features, "
    "Huber, SGD Nesterov, clipping at 5). The curriculum loss-weight table switches stage at "
    "step 120 and its entry is read in per mille (300 for 0.3) for that one step: a 1000x "
    "gradient on an ordinary logged loss; the clip bounds the step and the run recovers.",
)
def h471_silbo_loss_weight_per_mille(ctx) -> None:
    gen = seeded(4713)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 128, 8, seed=4713)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (1000.0 if step == SILBO_STEP else 1.0)

    losses, norms = _loop(ctx, model, opt, data, 240, F.huber_loss, backprop=backprop, clip=5.0)
    k = SILBO_STEP
    ctx.check(
        "gradient over 50x the median at the step", norms[k] > 50 * _median(norms[k - 30 : k])
    )
    ctx.check("the logged loss is ordinary there", losses[k] < 2 * _median(losses[k - 30 : k]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[k - 20 : k]))
    ctx.check("finite", _finite(losses))


# -- 4. slow divergence: an L2 term with its sign flipped -------------------------------------------


@scenario(
    family="charcoal_clamp_burn_rate_gelu_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Charcoal-clamp burn-rate regressor (GELU MLP on vent, turf-cover and wood-moisture "
    "features, MSE, SGD momentum 0.9). A hand-written L2 penalty is subtracted from the loss "
    "instead of added (the sign flipped): the weights grow every step and, after training, "
    "the loss climbs slowly with no single mechanism to point at.",
)
def h471_charcoal_l2_sign(ctx) -> None:
    gen = seeded(4714)
    model = _Net(8, 64, 1, act=nn.GELU)
    data = _readings(gen, 64, 8, seed=4714)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    wd = 0.04
    norms = []

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
        after=lambda s: norms.append(_params_norm(model.parameters())),
    )
    ctx.check("trained first", _mean(losses[20:40]) < 0.7 * _mean(losses[:10]))
    ctx.check(
        "loss climbs: last 20 over 3x the best 20",
        _mean(losses[-20:]) > 3 * min(_mean(losses[i : i + 20]) for i in range(0, 280, 10)),
    )
    ctx.check(
        "no single step over 20x the one before",
        all(b < 20 * a for a, b in zip(losses, losses[1:], strict=False)),
    )
    ctx.check("weights grew over 2x", norms[-1] > 2 * norms[0])
    ctx.check("finite", _finite(losses))


# -- 5. Adam's second moment: a loss multiplied by the dataset size once ----------------------------

FIRE_STEP = 80


@scenario(
    family="firewalk_ember_bed_heat_flux_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=FIRE_STEP,
    note="Firewalk ember-bed heat-flux regressor (GELU MLP on ember depth, ash cover and "
    "walk-speed features, MSE, Adam). On the step an epoch-level 'sum over the dataset' "
    "path is taken (step 80) the loss is multiplied by the dataset size 50000 instead of "
    "divided by it before backward: one giant gradient fills Adam's second moment and the "
    "updates stall for a hundred steps and more.",
)
def h471_firewalk_dataset_size_multiply(ctx) -> None:
    def run(bug, attach):
        gen = seeded(4715)
        model = _Net(10, 48, 1, act=nn.GELU)
        data = _readings(gen, 64, 10, seed=4715)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moves, prev = [], [p.detach().clone() for p in model.parameters()]

        def after(step):
            now = [p.detach().clone() for p in model.parameters()]
            moves.append(
                math.sqrt(sum(float((a - b).norm() ** 2) for a, b in zip(now, prev, strict=True)))
            )
            prev[:] = now

        losses, norms = _loop(
            ctx,
            model,
            opt,
            data,
            240,
            F.mse_loss,
            backprop=lambda s, loss: loss * 5e4 if bug and s == FIRE_STEP else loss,
            after=after,
            attach=attach,
        )
        return losses, norms, moves

    ref_losses, _, _ = run(False, False)
    losses, norms, moves = run(True, True)
    k = FIRE_STEP
    ctx.check("gradient over 1e4x the median at the step", norms[k] > 1e4 * _median(norms[:k]))
    ctx.check(
        "updates 40-140 steps later under 1/20 of those before",
        _mean(moves[k + 40 : k + 140]) < _mean(moves[k - 40 : k]) / 20,
    )
    ctx.check(
        "loss at the end over 1.5x the clean run's",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )


# -- 6. nonfinite: a ratio feature 0/0 -------------------------------------------------------------


class _RatioFeatures(nn.Module):
    """coke/iron and flux/iron charge ratios computed in the model, no epsilon."""

    def forward(self, x):
        return torch.cat([x[:, :2] / x[:, 2:3], x[:, 3:]], 1)


class _CupolaNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.ratio = _RatioFeatures()
        self.fc1 = nn.Linear(6, 32)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(32, 32)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.ratio(x)))))).squeeze(-1)


CUPOLA_STEP = 110


@scenario(
    family="cupola_furnace_charge_ratio_melt_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("ratio",),
    diverges=CUPOLA_STEP,
    heldout=True,
    onset=CUPOLA_STEP,
    note="Cupola-furnace melt-temperature net (coke/iron and flux/iron ratios computed in "
    "forward, SiLU MLP, MSE, Adamax). The ratio has no epsilon; at step 110 a tap logged with "
    "no charge (coke, flux and iron all 0) gives 0/0 = NaN and the loss is NaN.",
)
def h471_cupola_zero_charge_ratio(ctx) -> None:
    gen = seeded(4716)
    g = torch.Generator().manual_seed(4716)
    w = torch.randn(6, generator=g)

    def data():
        while True:
            x = torch.cat(
                [
                    torch.rand(64, 2, generator=gen) + 0.2,
                    torch.rand(64, 1, generator=gen) + 1.0,
                    torch.randn(64, 4, generator=gen),
                ],
                1,
            )
            feats = torch.cat([x[:, :2] / x[:, 2:3], x[:, 3:]], 1)
            yield x, torch.tanh(feats @ w / 2.0)

    model = _CupolaNet()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def alter(step, x, y):
        if step == CUPOLA_STEP:
            x = x.clone()
            x[7, :3] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, data(), 200, F.mse_loss, alter=alter)
    ctx.check("finite before the step", _finite(losses[:CUPOLA_STEP]))
    ctx.check("loss NaN at the step", len(losses) > CUPOLA_STEP and math.isnan(losses[CUPOLA_STEP]))
    ctx.check("trained before it", _mean(losses[CUPOLA_STEP - 10 : CUPOLA_STEP]) < 0.5 * losses[0])


# -- 7. data outlier: one shard in millimetres ------------------------------------------------------

NEEDLE_STEP = 130


@scenario(
    family="needle_ice_column_height_relu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=NEEDLE_STEP,
    note="Needle-ice column-height regressor (ReLU MLP on soil-moisture, night-minimum and "
    "wind features, MSE, NAdam). One shard from a second field station logs in millimetres "
    "instead of centimetres: the batch at step 130 is 10x off in its targets and its depth "
    "column, the loss and gradient jump, the run recovers.",
)
def h471_needle_ice_mm_shard(ctx) -> None:
    gen = seeded(4717)
    model = _Net(9, 48, 1)
    data = _readings(gen, 64, 9, seed=4717)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == NEEDLE_STEP:
            x = x.clone()
            x[:, 0] *= 10.0
            return x, 10.0 * y
        return x, y

    losses, norms = _loop(ctx, model, opt, data, 240, F.mse_loss, alter=alter)
    k = NEEDLE_STEP
    ctx.check("loss over 20x the median at the step", losses[k] > 20 * _median(losses[k - 20 : k]))
    ctx.check(
        "gradient over 10x the median at the step", norms[k] > 10 * _median(norms[k - 20 : k])
    )
    ctx.check(
        "recovers: last 20 under 3x the 20 before",
        _mean(losses[-20:]) < 3 * _mean(losses[k - 20 : k]),
    )
    ctx.check("finite", _finite(losses))


# -- 8. update ratio: a stem lr typed 1e-8 for 1e-2 --------------------------------------------------


@scenario(
    family="forcola_oarlock_stroke_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Venetian forcola oarlock stroke-efficiency regressor (ReLU MLP on oar angle, notch "
    "and cadence features, two param groups, MSE, Adagrad). The stem group's lr is typed 1e-8 "
    "for 1e-2: fc1 barely moves while fc2 and the head train normally.",
)
def h471_forcola_stem_lr_typo(ctx) -> None:
    gen = seeded(4718)
    model = _Net(10, 48, 1)
    data = _readings(gen, 64, 10, seed=4718)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-8},
            {"params": [*model.fc2.parameters(), *model.head.parameters()], "lr": 1e-2},
        ]
    )
    start = {n: m.weight.detach().clone() for n, m in (("fc1", model.fc1), ("fc2", model.fc2))}
    grads = []
    losses, _ = _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.mse_loss,
        backprop=lambda s, loss: loss,
        after=lambda s: grads.append(float(model.fc1.weight.grad.norm())),
    )

    def rel(name, m):
        return float((m.weight.detach() - start[name]).norm() / start[name].norm())

    ctx.check("fc1 moves under 1e-5 of its norm", rel("fc1", model.fc1) < 1e-5)
    ctx.check("fc2 moves over 5% of its norm", rel("fc2", model.fc2) > 0.05)
    ctx.check("fc1 receives gradients all along", min(grads) > 1e-4)
    ctx.check("finite", _finite(losses))


# -- 9. plasticity: a monotone init with its sign flipped -------------------------------------------


@scenario(
    family="hair_ice_fungus_bloom_relu_classifier",
    optimizer="ASGD",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Hair-ice bloom classifier (ReLU MLP on non-negative humidity, bark and frost "
    "readings in [0, 1], cross-entropy, ASGD). fc1 was meant to start non-negative (abs of "
    "its init, for a monotone first layer) but the init writes -abs(w) with a bias of -0.1: "
    "every fc1 unit is negative on every input, the ReLUs are dead from the start and stay "
    "dead, the loss stays at chance.",
)
def h471_hair_ice_negative_init(ctx) -> None:
    def run(bug, attach):
        gen = seeded(4719)
        model = _Net(12, 48, 4)
        with torch.no_grad():
            model.fc1.weight.copy_((-1.0 if bug else 1.0) * model.fc1.weight.abs())
            model.fc1.bias.fill_(-0.1 if bug else 0.0)
        g = torch.Generator().manual_seed(4719)
        protos = torch.rand(4, 12, generator=g)

        def data():
            while True:
                y = torch.randint(0, 4, (64,), generator=gen)
                yield (protos[y] + 0.15 * torch.rand(64, 12, generator=gen)).clamp(0, 1), y

        batches = data()
        opt = torch.optim.ASGD(model.parameters(), lr=0.05)
        losses, _ = _loop(
            ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, attach=attach
        )
        x, _ = next(batches)
        with torch.no_grad():
            dead = dead_fraction(model.act1(model.fc1(x)))
        return losses, dead

    ref_losses, ref_dead = run(False, False)
    losses, dead = run(True, True)
    ctx.check("over 90% of fc1's units dead at the end", dead > 0.9)
    ctx.check("under 10% dead without the bug", ref_dead < 0.1)
    ctx.check(
        "loss at the end over 2x the clean run's", _mean(losses[-20:]) > 2 * _mean(ref_losses[-20:])
    )


# -- 10. softmax collapse: a temperature typed 0.002 for 2.0 ----------------------------------------


class _ManjaNet(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.temperature = temperature
        self.fc1 = nn.Linear(16, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.GELU()
        self.head = nn.Linear(64, 6)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="manja_kite_line_cut_grade_gelu_classifier",
    optimizer="Adadelta",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Manja kite-line cut-grade classifier (GELU MLP on glass-coating and twist features, "
    "cross-entropy, Adadelta). The softening temperature is typed 0.002 for 2.0 (a unit slip "
    "in the config): logits are divided by 0.002 and most rows' softmax rounds the target to "
    "exactly 1.0 in float32.",
)
def h471_manja_temperature_typo(ctx) -> None:
    def run(temp, attach):
        gen = seeded(4720)
        model = _ManjaNet(temp)
        data = _grades(gen, 64, 16, 6, seed=4720, spread=0.9)
        opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
        losses, _ = _loop(
            ctx, model, opt, data, 150, F.cross_entropy, classifier=True, attach=attach
        )
        x, y = next(data)
        with torch.no_grad():
            return losses, collapsed_fraction(model(x), y)

    _, ref = run(2.0, False)
    losses, frac = run(0.002, True)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("under 5% at temperature 2", ref < 0.05)


# -- controls ---------------------------------------------------------------------------------------


class _Tower(nn.Module):
    def __init__(self, d_in, dim=16):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(64, dim)

    def forward(self, x):
        return F.normalize(self.fc2(self.act(self.fc1(x))), dim=-1)


class _TwoTower(nn.Module):
    """A pitch tower and a boule tower; in-batch negatives, a learnt temperature whose logit
    scale is clamped to [1, 100] (CLIP style)."""

    def __init__(self, d_q=10, d_d=12):
        super().__init__()
        self.d_q = d_q
        self.query = _Tower(d_q)
        self.item = _Tower(d_d)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def scale(self):
        return self.log_scale.clamp(0.0, math.log(100.0)).exp()

    def forward(self, x):
        q, d = self.query(x[:, : self.d_q]), self.item(x[:, self.d_q :])
        return self.scale() * q @ d.T


def _pairs(gen, batch, seed, d_q=10, d_d=12, latent=6):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(latent, d_q, generator=g)
    b = torch.randn(latent, d_d, generator=g)
    while True:
        z = torch.randn(batch, latent, generator=gen)
        q = torch.tanh(z @ a) + 0.1 * torch.randn(batch, d_q, generator=gen)
        d = z @ b + 0.1 * torch.randn(batch, d_d, generator=gen)
        yield torch.cat([q, d], 1), torch.arange(batch)


@scenario(
    family="petanque_boule_to_pitch_two_tower_retriever",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Petanque boule-to-pitch retriever: a hand-written two-tower model (a pitch tower "
    "over gravel, slope and moisture readings, a boule tower over weight, striation and "
    "hardness), L2-normalised embeddings, InfoNCE with in-batch negatives (symmetric "
    "cross-entropy), a learnt temperature clamped so the logit scale stays in [1, 100]; AdamW "
    "with warm-up, clipping at 1. A healthy control.",
)
def h471_petanque_two_tower_control(ctx) -> None:
    gen = seeded(4721)
    model = _TwoTower()
    data = _pairs(gen, 64, seed=4721)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))

    def infonce(logits, y):
        return 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))

    losses, _ = _loop(ctx, model, opt, data, 200, infonce, classifier=True, clip=1.0, sched=sched)
    x, y = next(_pairs(torch.Generator().manual_seed(99), 64, seed=4721))
    with torch.no_grad():
        recall = float((model(x).argmax(1) == y).float().mean())
        scale = float(model.scale())
    ctx.check("loss fell under 50% of its start", _fell(losses, ratio=0.5))
    ctx.check("recall@1 on a fresh batch over 50%", recall > 0.5)
    ctx.check("logit scale inside [1, 100]", 1.0 <= scale <= 100.0)
    ctx.check("finite", _finite(losses))


@scenario(
    family="seiche_lake_oscillation_batch_ramp_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lake-seiche period regressor (SiLU MLP on basin length, depth and wind-setdown "
    "features, MSE, SGD momentum 0.9) under a batch-size warm-up: the batch grows "
    "geometrically from 8 to 512 over the first 150 steps, and the gradient norm falls as the "
    "batch grows. A healthy control.",
)
def h471_seiche_batch_warmup_control(ctx) -> None:
    gen = seeded(4722)
    model = _Net(8, 64, 1, act=nn.SiLU)
    size = [8]
    g = torch.Generator().manual_seed(4722)
    w = torch.randn(8, generator=g)
    v = torch.randn(8, generator=g)

    def data():
        while True:
            b = size[0]
            x = torch.randn(b, 8, generator=gen)
            y = torch.tanh(1.2 * x @ w / math.sqrt(8)) + 0.5 * torch.sin(x @ v / math.sqrt(8))
            yield x, y + 0.3 * torch.randn(b, generator=gen)

    def before(step):
        size[0] = int(round(8 * 64 ** min(step / 150, 1.0)))

    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses, norms = _loop(ctx, model, opt, data(), 220, F.mse_loss, before=before)
    ctx.check("loss fell under 60% of its start", _fell(losses, ratio=0.6))
    ctx.check(
        "gradient norm in the last 40 steps under half of steps 20-60's",
        _mean(norms[-40:]) < 0.5 * _mean(norms[20:60]),
    )
    ctx.check("finite", _finite(losses))


class _FoamNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


@scenario(
    family="sea_foam_bubble_size_fp16_conv1d_classifier",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sea-foam bubble-size class from a hydrophone trace (ReLU Conv1d net, fp16 autocast "
    "with a torch.amp.GradScaler, cross-entropy with label smoothing 0.1, RMSprop, "
    "ReduceLROnPlateau on the loss, clipping the unscaled gradient at 1). A healthy control.",
)
def h471_sea_foam_fp16_control(ctx) -> None:
    gen = seeded(4723)
    model = _FoamNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    t = torch.arange(48).float()
    freqs = torch.tensor([0.15, 0.3, 0.6, 1.2])
    losses = []
    for _ in range(160):
        y = torch.randint(0, 4, (32,), generator=gen)
        phase = 6.28 * torch.rand(32, 1, generator=gen)
        noise = 0.4 * torch.randn(32, 48, generator=gen)
        x = torch.sin(freqs[y][:, None] * t[None] + phase) + noise
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
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        plateau.step(float(loss))
        losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            break
    ctx.check("loss fell under 60% of its start", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
