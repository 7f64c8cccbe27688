"""Held-out set 477 (``h477_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a flax-retting pond-days tanh regressor whose OneCycleLR max_lr is typed 0.5 for 0.05
(full-batch SGD; the lr climbs past 2 / sharpness and the loss blows up), a tenter-frame cloth
stretch BCE tagger fed survey grades 1/2 as targets (the head's logits grow without bound,
RMSprop), a bukkehorn finger-hole classifier fed raw int16 spectrum counts (softmax saturates,
NAdam), an ice-pellet refreeze-depth Gaussian-NLL net taking log of a rain rate with no floor
(a dry gauge at step 120 gives log 0, Adagrad), a glovemaker trank-stretch Huber regressor whose
epoch-end step uses a sum-reduced loss once (SGD Nesterov, clipped), a flax-hackling tow
detector whose rare-event prior bias is applied to every Linear (dead ReLUs, RAdam), a talharpa
bow-drone Elman RNN whose recurrent init std is typed 1.0 for 1/sqrt(h) (gradients grow through
time, clipped, Adamax), a glacier-milk turbidity regressor fed one shard of raw
uncalibrated counts at step 140 (SGD momentum), a thatcher's yelm wetting regressor whose
layer-wise lr decay is typed 0.01 for 0.9 (fc1 and fc2 barely move, AdamW) and a whitesmith
solder-use regressor under fp16 autocast whose hand-written softplus log1p(exp(z)) overflows fp16
at step 74 (Adam, GradScaler).

Controls: a spar-maker mast-taper regressor with FiLM conditioning on wood species and moisture
(AdamW, warm-up and cosine, clipping); a kapa bark-cloth beater-pattern classifier over an
embedding table frozen from the start with a trained head (Adam, ReduceLROnPlateau); a
tole-painting brush-stroke Conv1d classifier under fp16 autocast with a GradScaler, OneCycleLR,
accumulation over 2, label smoothing and clipping (SGD momentum).
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
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier and attach:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        if attach:
            ctx.step(loss)
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


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


# -- 1. sharpness: a OneCycleLR max_lr typed 0.5 for 0.05 ------------------------------------------

FLAX_CROSS = 55


@scenario(
    family="flax_retting_pond_days_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=FLAX_CROSS,
    note="Flax-retting pond-days regressor (tanh MLP on water temperature, stem thickness and "
    "pectin readings, MSE, full-batch SGD under OneCycleLR planned for 600 steps). max_lr is "
    "typed 0.5 for 0.05: as the one-cycle warm-up raises the lr, lr * sharpness crosses 2 "
    "near step 55, the run rides the edge of stability and then the loss oscillates and "
    "blows up.",
)
def h477_flax_retting_onecycle_max_lr(ctx) -> None:
    gen = seeded(4771)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4771)
    x, y = next(data)
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.5, total_steps=600, pct_start=0.5, anneal_strategy="linear"
    )
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 5 == 0:
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 240, F.mse_loss, before=before, sched=sched)
    low = min(v for v in losses if math.isfinite(v))
    low_at = losses.index(low)
    blow = next(
        (i for i, v in enumerate(losses) if i > low_at and (not math.isfinite(v) or v > 100 * low)),
        None,
    )
    cross = next((s for s in sorted(sharp) if lrs[s] * sharp[s] > 2.0), None)
    ctx.check("lr * sharpness under 2 at step 0", lrs[0] * sharp[0] < 2.0)
    ctx.check(
        "lr * sharpness first over 2 within 5 steps of the onset",
        cross is not None and abs(cross - FLAX_CROSS) <= 5,
    )
    ctx.check(
        "lr * sharpness over 2 before the blow-up",
        cross is not None and blow is not None and cross <= blow,
    )
    ctx.check("the loss blows up over 100x its lowest", blow is not None)
    ctx.check("trained first", low < 0.5 * losses[0])


# -- 2. output logits: survey grades 1/2 as BCE targets --------------------------------------------


@scenario(
    family="tenter_frame_cloth_stretch_grade_bce_tagger",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tenter-frame cloth-stretch tagger (ReLU MLP on pin spacing, moisture and weave "
    "features, one over-stretch logit per selvedge zone, BCEWithLogits, RMSprop). The labels "
    "come from a survey coded 1 = fine, 2 = over-stretched and are passed straight as BCE "
    "targets instead of mapped to 0/1: a target of 2 makes the loss unbounded below, the "
    "head's logits grow without bound and the 'loss' goes negative.",
)
def h477_tenter_grade_codes(ctx) -> None:
    gen = seeded(4772)
    g = torch.Generator().manual_seed(4772)
    w = torch.randn(10, 4, generator=g)

    def data():
        while True:
            x = torch.randn(64, 10, generator=gen)
            yield x, 1.0 + (x @ w > 0.5).float()

    model = _Net(10, 48, 4)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    probe = torch.randn(256, 10, generator=torch.Generator().manual_seed(2))
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


# -- 3. softmax collapse: raw int16 spectrum counts ------------------------------------------------


@scenario(
    family="bukkehorn_goat_horn_fingerhole_raw_count_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bukkehorn (goat-horn) finger-hole classifier (GELU MLP on a 24-bin spectrum, "
    "cross-entropy, NAdam). The spectrum comes from the recorder as raw int16 counts and the "
    "/32768 normalisation is skipped: the logits are thousands of units apart from the first "
    "step and the softmax saturates, the target probability rounding to exactly 1.0.",
)
def h477_bukkehorn_raw_counts(ctx) -> None:
    g = torch.Generator().manual_seed(4773)
    protos = torch.rand(6, 24, generator=g)

    def run(scale, attach):
        gen = seeded(4773)
        model = _Net(24, 48, 6, act=nn.GELU)

        def data():
            while True:
                y = torch.randint(0, 6, (64,), generator=gen)
                x = (protos[y] + 0.15 * torch.randn(64, 24, generator=gen)).clamp(0, 1)
                yield scale * x, y

        batches = data()
        opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
        losses, _ = _loop(
            ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, attach=attach
        )
        x, y = next(batches)
        with torch.no_grad():
            return losses, collapsed_fraction(model(x), y)

    _, ref = run(1.0, False)
    losses, frac = run(32768.0, True)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("under 5% with normalised input", ref < 0.05)
    ctx.check("finite", _finite(losses))


# -- 4. nonfinite: log of a rain rate with no floor ------------------------------------------------


class _LogRate(nn.Module):
    """log of the rain-rate column (mm/h), no floor; the other readings pass through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _PelletNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logfeat = _LogRate()
        self.fc1 = nn.Linear(7, 32)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(32, 32)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.logfeat(x))))))


PELLET_STEP = 120


@scenario(
    family="ice_pellet_refreeze_depth_gaussian_nll_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logfeat",),
    diverges=PELLET_STEP,
    heldout=True,
    onset=PELLET_STEP,
    note="Ice-pellet refreeze-layer depth net (log rain rate computed in forward, SiLU MLP "
    "emitting a mean and a log-variance, Gaussian NLL, Adagrad). The log has no floor; at "
    "step 120 a dry gauge reads exactly 0 mm/h, log 0 = -inf, and the loss is non-finite.",
)
def h477_ice_pellet_log_zero_rain(ctx) -> None:
    gen = seeded(4774)
    g = torch.Generator().manual_seed(4774)
    w = torch.randn(7, generator=g)

    def data():
        while True:
            rate = 0.2 + 5.0 * torch.rand(64, 1, generator=gen)
            rest = torch.randn(64, 6, generator=gen)
            x = torch.cat([rate, rest], 1)
            feats = torch.cat([torch.log(rate), rest], 1)
            yield x, torch.tanh(feats @ w / 2.0) + 0.1 * torch.randn(64, generator=gen)

    def nll(out, y):
        return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())

    model = _PelletNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)

    def alter(step, x, y):
        if step == PELLET_STEP:
            x = x.clone()
            x[11, 0] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, data(), 200, nll, alter=alter)
    ctx.check("finite before the step", _finite(losses[:PELLET_STEP]))
    ctx.check(
        "loss non-finite at the step",
        len(losses) > PELLET_STEP and not math.isfinite(losses[PELLET_STEP]),
    )
    ctx.check(
        "trained before it",
        _mean(losses[PELLET_STEP - 10 : PELLET_STEP]) < _mean(losses[:5]) - 0.3,
    )


# -- 5. gradient spike: a sum-reduced loss on the epoch-end step -----------------------------------

GLOVE_STEP = 130


@scenario(
    family="glovemaker_trank_stretch_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=GLOVE_STEP,
    note="Glovemaker's trank-stretch regressor (tanh MLP on leather thickness, temper and "
    "grain features, Huber, SGD Nesterov, clipping at 2). On the epoch-end step (130) the "
    "loss is built by the evaluation helper with reduction='sum' over the 256-row batch "
    "instead of 'mean': a 256x gradient on an ordinary logged loss; the clip bounds the step "
    "and the run recovers.",
)
def h477_glovemaker_sum_reduction(ctx) -> None:
    gen = seeded(4775)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4775)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * 256.0 if step == GLOVE_STEP else loss

    losses, norms = _loop(ctx, model, opt, data, 240, F.huber_loss, backprop=backprop, clip=2.0)
    k = GLOVE_STEP
    ctx.check(
        "gradient over 50x the median at the step", norms[k] > 50 * _median(norms[k - 30 : k])
    )
    ctx.check("the logged loss is ordinary there", losses[k] < 2 * _median(losses[k - 30 : k]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[k - 20 : k]))
    ctx.check("finite", _finite(losses))


# -- 6. plasticity: a rare-event prior bias applied to every Linear --------------------------------


@scenario(
    family="flax_hackling_tow_fraction_prior_bias_relu_detector",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Flax-hackling tow-clump detector (ReLU MLP on comb-pass force and fibre features, "
    "one rare-event logit, BCEWithLogits, RAdam). The focal-loss style prior bias "
    "-log((1 - pi) / pi) with pi = 0.01 is meant for the output head only, but is applied "
    "with model.apply to every Linear: fc1's and fc2's ReLUs are negative on every input "
    "from the start and never recover, the detector only learns the base rate.",
)
def h477_hackling_prior_bias_everywhere(ctx) -> None:
    g = torch.Generator().manual_seed(4776)
    w = torch.randn(12, generator=g)
    prior = -math.log((1 - 0.01) / 0.01)

    def run(bug, attach):
        gen = seeded(4776)
        model = _Net(12, 48, 1)

        def init(m):
            if isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, prior)

        with torch.no_grad():
            if bug:
                model.apply(init)
            else:
                model.head.bias.fill_(prior)

        def data():
            while True:
                x = torch.randn(128, 12, generator=gen)
                yield x, (x @ w / math.sqrt(12) > 1.2).float()

        batches = data()
        opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
        losses, _ = _loop(
            ctx, model, opt, batches, 200, F.binary_cross_entropy_with_logits, attach=attach
        )
        x, _ = next(batches)
        with torch.no_grad():
            d1 = dead_fraction(model.act1(model.fc1(x)))
            d2 = dead_fraction(model.features(x))
        return losses, d1, d2

    ref_losses, ref_d1, _ = run(False, False)
    losses, d1, d2 = run(True, True)
    ctx.check("over 90% of fc1's units dead at the end", d1 > 0.9)
    ctx.check("over 90% of fc2's units dead at the end", d2 > 0.9)
    ctx.check("under 30% dead with the head-only prior", ref_d1 < 0.3)
    ctx.check(
        "loss at the end over 2x the intended run's",
        _mean(losses[-20:]) > 2 * _mean(ref_losses[-20:]),
    )
    ctx.check("finite", _finite(losses))


# -- 7. exploding gradients: a recurrent init std typed 1.0 for 1/sqrt(h) --------------------------


class _ElmanNet(nn.Module):
    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.cell = nn.RNNCell(d_in, hidden, nonlinearity="tanh")
        self.head = nn.Linear(hidden, 1)

    def forward(self, x, states=None):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if states is not None:
                h.retain_grad()
                states.append(h)
        return self.head(h).squeeze(-1)


def _bow_data(gen, batch=32, length=30):
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        pressure = x[:, :, 0].cumsum(1) / math.sqrt(length)
        yield x, torch.tanh(pressure[:, -1] + 0.3 * x[:, -5:, 1].mean(1))


@scenario(
    family="talharpa_bow_drone_elman_rnn_regressor",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="Talharpa (bowed lyre) drone-pressure regressor (a hand-written Elman loop over an "
    "RNNCell on 30 bow-sensor frames, MSE, Adamax, clipping at 1). The recurrent weights are "
    "re-initialised with normal(0, std) where std is typed 1.0 for 1/sqrt(hidden): the "
    "recurrence is far past the edge of chaos and the gradient grows through time, the "
    "clip firing on every step.",
)
def h477_talharpa_recurrent_init_std(ctx) -> None:
    def run(std, attach):
        gen = seeded(4777)
        model = _ElmanNet()
        with torch.no_grad():
            model.cell.weight_hh.normal_(0.0, std)
        data = _bow_data(gen)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        losses, norms = _loop(ctx, model, opt, data, 150, F.mse_loss, clip=1.0, attach=attach)
        x, y = next(data)
        states = []
        F.mse_loss(model(x, states), y).backward()
        ratio = float(states[0].grad.norm() / states[-1].grad.norm())
        model.zero_grad()
        return losses, norms, ratio

    _, ref_norms, ref_ratio = run(1.0 / math.sqrt(32), False)
    losses, norms, ratio = run(1.0, True)
    ctx.check("dL/dh_0 over 100x dL/dh_T at the end", ratio > 100)
    ctx.check("under 10x at std 1/sqrt(32)", ref_ratio < 10)
    ctx.check(
        "gradient norm over 10x the intended run's (median)",
        _median(norms) > 10 * _median(ref_norms),
    )
    ctx.check("finite", _finite(losses))


# -- 8. data outlier: one shard with a bad turbidity unit ------------------------------------------

MILK_STEP = 140


@scenario(
    family="glacier_milk_rock_flour_turbidity_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=MILK_STEP,
    note="Glacier-milk rock-flour turbidity regressor (ReLU MLP on discharge, melt-degree and "
    "suspended-load features, MSE, SGD momentum). One shard from a second meltwater gauge "
    "was exported before its calibration step: its turbidity targets and discharge column "
    "are raw sensor counts, 12x the calibrated units. The batch at step 140 comes from it; "
    "the loss and gradient jump, the run recovers.",
)
def h477_glacier_milk_bad_shard(ctx) -> None:
    gen = seeded(4778)
    model = _Net(9, 48, 1)
    data = _readings(gen, 64, 9, seed=4778)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def alter(step, x, y):
        if step == MILK_STEP:
            x = x.clone()
            x[:, 0] *= 12.0
            return x, 12.0 * y
        return x, y

    losses, norms = _loop(ctx, model, opt, data, 240, F.mse_loss, alter=alter)
    k = MILK_STEP
    ctx.check("loss over 20x the median at the step", losses[k] > 20 * _median(losses[k - 20 : k]))
    ctx.check(
        "gradient over 10x the median at the step", norms[k] > 10 * _median(norms[k - 20 : k])
    )
    ctx.check(
        "recovers: last 20 under 3x the 20 before",
        _mean(losses[-20:]) < 3 * _mean(losses[k - 20 : k]),
    )
    ctx.check("finite", _finite(losses))


# -- 9. update ratio: a layer-wise lr decay typed 0.01 for 0.9 -------------------------------------


@scenario(
    family="thatcher_yelm_straw_wetting_llrd_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Thatcher's yelm straw-wetting regressor (ReLU MLP on straw length, wetting time and "
    "humidity features, MSE, AdamW with layer-wise lr decay: lr * decay ** depth). The decay "
    "is typed 0.01 for 0.9: fc2 gets 1e-5 and fc1 1e-7 against the head's 1e-3, so the two "
    "hidden layers barely move while receiving gradients all along.",
)
def h477_yelm_llrd_typo(ctx) -> None:
    gen = seeded(4779)
    model = _Net(10, 48, 1)
    data = _readings(gen, 64, 10, seed=4779)
    decay, base = 0.01, 1e-3
    opt = torch.optim.AdamW(
        [
            {"params": model.fc1.parameters(), "lr": base * decay**2},
            {"params": model.fc2.parameters(), "lr": base * decay},
            {"params": model.head.parameters(), "lr": base},
        ],
        weight_decay=0.01,
    )
    start = {n: getattr(model, n).weight.detach().clone() for n in ("fc1", "fc2", "head")}
    grads = []
    losses, _ = _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.mse_loss,
        after=lambda s: grads.append(float(model.fc1.weight.grad.norm())),
    )

    def rel(name):
        w = getattr(model, name).weight.detach()
        return float((w - start[name]).norm() / start[name].norm())

    ctx.check("fc1 moves under 1e-4 of its norm", rel("fc1") < 1e-4)
    ctx.check("fc2 moves under 5% of its norm", rel("fc2") < 0.05)
    ctx.check("the head moves over 10% of its norm", rel("head") > 0.1)
    ctx.check("fc1 receives gradients all along", min(grads) > 1e-4)
    ctx.check("finite", _finite(losses))


# -- 10. amp overflow: a hand-written softplus exp(z) in fp16 --------------------------------------


class _NaiveSoftplus(nn.Module):
    """log(1 + exp(z)) written out, without F.softplus's threshold: exp overflows fp16 past 11."""

    def forward(self, z):
        return torch.log1p(torch.exp(z))


class _SolderNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(48, 1)
        self.rate = _NaiveSoftplus()

    def forward(self, x):
        return self.rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


SOLDER_STEP = 74


@scenario(
    family="whitesmith_tinplate_solder_use_fp16_softplus_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("rate",),
    diverges=SOLDER_STEP,
    heldout=True,
    onset=SOLDER_STEP,
    note="Whitesmith's solder-use regressor (grams per seam from tinplate gauge, seam length and "
    "iron temperature; SiLU MLP, a positive rate head, MSE, Adam, fp16 autocast with a "
    "torch.amp.GradScaler). The rate head's softplus is hand-written log1p(exp(z)) without the "
    "threshold: under autocast z is fp16, and once the net learns the heavy seams (z past "
    "11.1, at step 74; no overflow and no scale drop before) exp(z) overflows fp16 to inf "
    "while float32 stays finite, and the loss is inf.",
)
def h477_whitesmith_fp16_softplus(ctx) -> None:
    gen = seeded(4780)
    g = torch.Generator().manual_seed(4780)
    w = torch.randn(8, generator=g)
    model = _SolderNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    losses = []
    x = y = None
    for _ in range(200):
        x = torch.randn(64, 8, generator=gen)
        y = 2.0 + 6.0 * F.softplus(x @ w / 2.0) + 0.2 * torch.randn(64, generator=gen)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    k = len(losses) - 1
    with torch.no_grad():
        h = model.head(model.act2(model.fc2(model.act1(model.fc1(x))))).squeeze(-1)
        with torch.autocast("cpu", dtype=torch.float16):
            h16 = model.head(model.act2(model.fc2(model.act1(model.fc1(x))))).squeeze(-1)
        exp16 = torch.exp(h16)
        exp32 = torch.exp(h.float())
    ctx.check("finite before the break", _finite(losses[:k]) and k == SOLDER_STEP)
    ctx.check("no scale drop (overflow) before the break", min(ctx.scales[:k]) == 2.0**10)
    ctx.check("loss non-finite at the break", not math.isfinite(losses[k]))
    ctx.check("fp16 exp(z) inf at the break", bool(torch.isinf(exp16).any()))
    ctx.check("float32 exp(z) finite there", bool(torch.isfinite(exp32).all()))
    ctx.check("trained before it", _mean(losses[k - 10 : k]) < 0.5 * _mean(losses[:5]))


# -- controls --------------------------------------------------------------------------------------


class _FiLM(nn.Module):
    """A conditioning network that emits a scale and a shift per channel."""

    def __init__(self, d_cond, channels):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_cond, 32), nn.ReLU(), nn.Linear(32, 2 * channels))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, c):
        gamma, beta = self.net(c).chunk(2, dim=-1)
        return 1.0 + gamma, beta


class _MastFiLMNet(nn.Module):
    """Taper readings through two FiLM-modulated layers, conditioned on species and moisture."""

    def __init__(self, d_in=8, d_cond=5, hidden=48):
        super().__init__()
        self.d_in = d_in
        self.fc1 = nn.Linear(d_in, hidden)
        self.film1 = _FiLM(d_cond, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.film2 = _FiLM(d_cond, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, xc):
        x, c = xc[:, : self.d_in], xc[:, self.d_in :]
        g1, b1 = self.film1(c)
        h = F.relu(g1 * self.fc1(x) + b1)
        g2, b2 = self.film2(c)
        h = F.relu(g2 * self.fc2(h) + b2)
        return self.head(h).squeeze(-1)


@scenario(
    family="spar_maker_mast_taper_film_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Spar-maker's mast-taper deflection regressor: a hand-written FiLM network (a "
    "conditioning MLP over wood species (one-hot of 4) and moisture emits a scale and a shift "
    "per channel of each hidden layer, initialised to the identity), MSE, AdamW with a linear "
    "warm-up and cosine decay, clipping at 1. A healthy control.",
)
def h477_spar_maker_film_control(ctx) -> None:
    gen = seeded(4781)
    g = torch.Generator().manual_seed(4781)
    w = torch.randn(4, 8, generator=g)

    def data():
        while True:
            x = torch.randn(64, 8, generator=gen)
            sp = torch.randint(0, 4, (64,), generator=gen)
            moist = torch.rand(64, 1, generator=gen)
            c = torch.cat([F.one_hot(sp, 4).float(), moist], 1)
            y = torch.tanh((x * w[sp]).sum(1) / 3.0) * (1.0 + moist[:, 0])
            yield torch.cat([x, c], 1), y + 0.05 * torch.randn(64, generator=gen)

    model = _MastFiLMNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    total = 250

    def lam(s):
        return (s + 1) / 25 if s < 25 else 0.5 * (1 + math.cos(math.pi * (s - 25) / (total - 25)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    batches = data()
    losses, _ = _loop(ctx, model, opt, batches, total, F.mse_loss, clip=1.0, sched=sched)
    xc, _ = next(batches)
    with torch.no_grad():
        gamma, _ = model.film1(xc[:, 8:])
    ctx.check("loss fell under 40% of its start", _fell(losses, ratio=0.4))
    ctx.check("FiLM scales differ across conditions", float(gamma.std(0).mean()) > 0.02)
    ctx.check("finite", _finite(losses))


class _KapaNet(nn.Module):
    """Beater-groove tokens through a frozen embedding table, mean-pooled, a trained head."""

    def __init__(self, vocab=40, dim=24, classes=5):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.emb.weight.requires_grad_(False)
        self.fc = nn.Linear(dim, 64)
        self.act = nn.GELU()
        self.head = nn.Linear(64, classes)

    def forward(self, idx):
        return self.head(self.act(self.fc(self.emb(idx).mean(1))))


@scenario(
    family="kapa_bark_cloth_beater_pattern_frozen_embedding_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kapa bark-cloth beater-pattern classifier (sequences of beater-groove tokens through "
    "an nn.Embedding table frozen from the start with requires_grad False, mean-pooled, a "
    "trained GELU head; cross-entropy, Adam over the trainable parameters only, "
    "ReduceLROnPlateau). A healthy control.",
)
def h477_kapa_frozen_embedding_control(ctx) -> None:
    gen = seeded(4782)
    g = torch.Generator().manual_seed(4782)
    styles = torch.rand(5, 40, generator=g) ** 4

    def data():
        while True:
            y = torch.randint(0, 5, (64,), generator=gen)
            idx = torch.multinomial(styles[y], 16, replacement=True, generator=gen)
            yield idx, y

    model = _KapaNet()
    table = model.emb.weight.detach().clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        data(),
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda s: plateau.step(ctx.losses[-1]),
    )
    ctx.check("loss fell under 40% of its start", _fell(losses, ratio=0.4))
    ctx.check("the embedding table is unchanged", bool(torch.equal(table, model.emb.weight)))
    ctx.check("finite", _finite(losses))


class _StrokeNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


@scenario(
    family="tole_painting_brush_stroke_fp16_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Tole-painting brush-stroke type (comma, S-stroke, teardrop, line) from a stylus "
    "pressure and tilt trace (ReLU Conv1d net, fp16 autocast with a torch.amp.GradScaler, "
    "cross-entropy with label smoothing 0.1, SGD momentum under OneCycleLR, gradient "
    "accumulation over 2 micro-batches, clipping the unscaled gradient at 1). A healthy "
    "control.",
)
def h477_tole_painting_fp16_control(ctx) -> None:
    gen = seeded(4783)
    model = _StrokeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    t = torch.linspace(0, 1, 40)
    shapes = torch.stack(
        [
            torch.stack([torch.sin(math.pi * t), t]),
            torch.stack([torch.sin(2 * math.pi * t), 1 - t]),
            torch.stack([t**2, torch.cos(math.pi * t)]),
            torch.stack([0.5 + 0 * t, 0.5 * t]),
        ]
    )
    losses = []
    for _ in range(steps):
        shown = 0.0
        for _ in range(2):
            y = torch.randint(0, 4, (32,), generator=gen)
            x = shapes[y] + 0.3 * torch.randn(32, 2, 40, generator=gen)
            ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
            scaler.scale(loss / 2).backward()
            shown += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        losses.append(shown)
        if not math.isfinite(shown):
            break
    ctx.check("loss fell under 50% of its start", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
