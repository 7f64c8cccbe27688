"""Held-out set 529 (``h529_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a tsuba sword-guard tempering-colour GELU classifier whose z-loss is added with a minus
sign (head logits grow without bound, cross-entropy climbs, AdamW); a chainmail ring-weave tension
regressor whose cost weight is read as 1e6 for one step (Adam's second moment poisoned); a hoodoo
caprock erosion Gaussian-NLL net taking log of a turbidity reading that a new logger reports as 0
(Adagrad); a bladesmith quench regressor under fp16 autocast + GradScaler fed millikelvin (NAdam);
a morin-khuur bow-phrase Elman RNN with recurrent gain typed 3 (SGD momentum); a snowshoe lacing
tension ReLU regressor with Adamax lr typed 0.5 for 0.005 (dead ReLUs); a tapa-cloth beating
thickness Huber regressor fed one shard in millimetres (RMSprop); a bagatelle pin-bounce BCE net
whose resumed accumulation step multiplies by 8 instead of dividing (SGD Nesterov); a salt-pan
crust polygon tanh regressor whose MultiStepLR gamma is typed 10 for 0.1 (plain SGD); a hammock
weave sag regressor whose trunk param group lr is typed 1e-9 (ASGD).

Controls: a fingerboard skate-trick ReLU classifier pruned to half its weights by magnitude at
step 150 and fine-tuned (loss jumps, recovers; SGD momentum, cosine); a sea-spider
molt-count deep-equilibrium Poisson regressor (fixed-point iteration, RAdam, warm-up, clipping); a
kora-harp calabash tied-weight autoencoder (fp16 autocast + GradScaler, Adam, OneCycleLR,
accumulation 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import dead_fraction, grad_norm, scenario, seeded


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


# -- 1. output logit divergence: a z-loss written with the wrong sign ---------------------------


@scenario(
    family="tsuba_guard_tempering_colour_zloss_gelu_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="Tsuba sword-guard tempering-colour classifier (GELU MLP on heat, soak time, alloy "
    "ratios and patina readings, cross-entropy plus a PaLM-style z-loss 1e-3 * logsumexp^2, "
    "AdamW). The z-loss is added with a minus sign (copied from a log-likelihood written as a "
    "reward): instead of pinning logsumexp near 0 it rewards its growth, and the head's logits "
    "grow without bound; the cross-entropy first falls, then the few misclassified readings at "
    "huge logits drive it up without bound.",
)
def h529_tsuba_zloss_wrong_sign(ctx):
    gen = seeded(5291)
    model = _Net(10, 48, 6, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    probe_x, _ = next(_grades(torch.Generator().manual_seed(9), 256, 10, 6, 52910, 0.8))
    with torch.no_grad():
        logit0 = float(model(probe_x).abs().mean())
    mags = []

    def backprop(step, out, y, loss):
        return loss - 1e-3 * (torch.logsumexp(out, -1) ** 2).mean()  # sign typo

    def after(step, loss):
        if step % 20 == 19:
            with torch.no_grad():
                mags.append(float(model(probe_x).abs().mean()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 6, 52910, 0.8),
        240,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        after=after,
    )
    ctx.check("mean |head logit| over 20x its initial value", mags[-1] > 20 * logit0)
    ctx.check("still growing over the last 60 steps", mags[-1] > 1.3 * mags[-4])
    ctx.check("cross-entropy fell at first", _mean(losses[40:60]) < 0.3 * _mean(losses[:10]))
    ctx.check("cross-entropy then climbs over 10x its start", _mean(losses[-10:]) > 10 * losses[0])


# -- 2. adam second moment poisoned: a cost weight read as 1e6 for one step ----------------------

MAIL_ONSET = 100


@scenario(
    family="chainmail_ring_weave_tension_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=MAIL_ONSET,
    note="Chainmail ring-weave tension regressor (SiLU MLP on ring gauge, inner diameter, "
    "aspect ratio, weave pattern, wire temper and closure, MSE, Adam lr 1e-3). The cost-weight "
    "table is reloaded at step 100 and its weight is read in grams per tonne, 1e6 for 1: one "
    "backward carries a gradient a million times too large, fills Adam's second moment, and for "
    "the rest of the run the updates are far smaller than before.",
)
def h529_chainmail_cost_weight_1e6(ctx):
    gen = seeded(5292)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    vs, upd = {}, []
    prev = [p.detach().clone() for p in model.parameters()]

    def backprop(step, out, y, loss):
        return loss * (1e6 if step == MAIL_ONSET else 1.0)

    def after(step, loss):
        st = opt.state[model.fc1.weight]
        vs[step] = float(st["exp_avg_sq"].sqrt().median())
        cur = [p.detach().clone() for p in model.parameters()]
        upd.append(
            float(torch.cat([(c - q).flatten() for c, q in zip(cur, prev, strict=True)]).norm())
        )
        prev[:] = cur

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 52920),
        240,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    ctx.check(
        "gradient at onset over 1e3x the median before",
        norms[MAIL_ONSET] > 1e3 * _median(norms[:MAIL_ONSET]),
    )
    ctx.check(
        "fc1's median sqrt(v) over 30x after onset",
        vs[MAIL_ONSET + 1] > 30 * vs[MAIL_ONSET - 1],
    )
    ctx.check(
        "updates under 0.2x after (steps 150-200 vs 80-99)",
        _mean(upd[150:200]) < 0.2 * _mean(upd[80:100]),
    )
    ctx.check("logged loss ordinary at onset", losses[MAIL_ONSET] < 5 * _mean(losses[80:100]))
    ctx.check("finite", _finite(losses))


# -- 3. nonfinite: log of a turbidity reading a new logger reports as 0 -------------------------

HOODOO_ONSET = 100


class _LogFeature(nn.Module):
    """Replaces column 0 (turbidity, NTU) by its log; the other columns pass through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _HoodooNet(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(self.logfeat(x))))))
        return out[:, 0], out[:, 1]


def _gauss_nll(out, y):
    mean, log_var = out
    return 0.5 * (log_var + (y - mean) ** 2 / log_var.exp()).mean()


def _hoodoo_data(gen, batch, seed):
    base = _readings(gen, batch, 6, seed, noise=0.1)
    while True:
        x, y = next(base)
        turb = torch.exp(0.5 * x[:, 0] + 1.0)  # NTU, positive
        yield torch.cat([turb[:, None], x[:, 1:]], 1), y


@scenario(
    family="hoodoo_caprock_erosion_log_feature_gaussian_nll_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logfeat",),
    diverges=HOODOO_ONSET,
    heldout=True,
    onset=HOODOO_ONSET,
    note="Hoodoo caprock erosion-rate net (SiLU MLP on runoff turbidity, freeze-thaw count, "
    "rainfall, slope and caprock hardness; Gaussian NLL of a predicted mean and log-variance, "
    "Adagrad). The turbidity column is fed through log() with no floor: from step 100 a new "
    "logger reports readings below its detection limit as 0, log(0) = -inf and the loss is NaN.",
)
def h529_hoodoo_log_zero_turbidity(ctx):
    gen = seeded(5293)
    model = _HoodooNet(6, 48)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen = {}

    def alter(step, x, y):
        if step >= HOODOO_ONSET:
            x = x.clone()
            x[::8, 0] = 0.0  # below detection limit, logged as 0
            with torch.no_grad():
                seen["inf"] = bool(torch.isinf(model.logfeat(x)).any())
        return x, y

    losses, _ = _loop(ctx, model, opt, _hoodoo_data(gen, 64, 52930), 200, _gauss_nll, alter=alter)
    ctx.check("finite before onset", _finite(losses[:HOODOO_ONSET]))
    ctx.check("trained before onset", _mean(losses[90:100]) < _mean(losses[:10]) - 0.3)
    ctx.check("logfeat produces -inf at onset", seen.get("inf", False))
    ctx.check(
        "loss non-finite at onset",
        len(losses) > HOODOO_ONSET and not math.isfinite(losses[HOODOO_ONSET]),
    )


# -- 4. amp overflow: a quench-temperature column in millikelvin under fp16 autocast ------------

QUENCH_ONSET = 90


@scenario(
    family="bladesmith_quench_hardness_fp16_gelu_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=QUENCH_ONSET,
    heldout=True,
    onset=QUENCH_ONSET,
    note="Bladesmith quench-hardness regressor (GELU MLP on quench-oil temperature, blade "
    "thickness, carbon content, soak time, agitation and normalising cycles, MSE, NAdam, fp16 "
    "autocast + GradScaler). From step 90 a new furnace logger writes the quench temperature in "
    "millikelvin (about 3e5 where kelvin was standardised): fc1's fp16 output passes 65504 and "
    "overflows to inf, the same batch is finite in float32, and the loss is non-finite.",
)
def h529_quench_millikelvin_fp16(ctx):
    gen = seeded(5294)
    model = _Net(6, 64, 1, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 6, 52940)
    losses, seen = [], {}
    for step in range(200):
        x, y = next(data)
        if step >= QUENCH_ONSET:
            x = x.clone()
            x[:, 0] = 330_000.0 + 1000.0 * x[:, 0]  # millikelvin, not standardised
            with torch.no_grad():
                with torch.autocast("cpu", dtype=torch.float16):
                    h16 = model.fc1(x)
                seen["fp16_inf"] = bool(torch.isinf(h16).any())
                seen["fp32_finite"] = bool(torch.isfinite(model.fc1(x)).all())
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
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
    ctx.check("finite and training before onset", _fell(losses[:QUENCH_ONSET]))
    ctx.check("fc1's fp16 output overflows at onset", seen.get("fp16_inf", False))
    ctx.check("the same batch is finite in float32", seen.get("fp32_finite", False))
    ctx.check(
        "loss non-finite at onset",
        len(losses) > QUENCH_ONSET and not math.isfinite(losses[QUENCH_ONSET]),
    )


# -- 5. exploding gradients: an Elman RNN with recurrent gain typed 3 ---------------------------


class _Elman(nn.Module):
    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.w_ih = nn.Linear(d_in, hidden)
        self.w_hh = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.w_hh.weight, gain=gain)
        nn.init.normal_(self.w_ih.weight, std=0.1 / math.sqrt(d_in))
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.w_hh.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.w_ih(x[:, t]) + self.w_hh(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _bow_phrases(gen, batch, frames, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        x = 0.5 * torch.randn(batch, frames, 4, generator=gen)
        y = torch.tanh((x[:, :, :] @ w).mean(1) * 2.0)
        yield x, y


@scenario(
    family="morin_khuur_bow_phrase_elman_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("w_hh",),
    diverges=None,
    heldout=True,
    note="Morin-khuur bow-phrase intensity regressor (hand-written Elman RNN over 30 frames of "
    "bow pressure, speed, contact point and string, MSE, SGD momentum 0.9). The recurrent "
    "weight's orthogonal init gain is typed 3 for 1: the recurrence is chaotic and the gradient "
    "grows backwards through time, dL/dh at the first frame far larger than at the last; the "
    "large early updates then drive the recurrence into saturation.",
)
def h529_morin_khuur_recurrent_gain3(ctx):
    gen = seeded(5295)
    model = _Elman(4, 48, gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=2e-4, momentum=0.9)
    ratios = []
    orig_step = opt.step

    def step_and_measure(*a, **k):
        first, last = model.states[0].grad, model.states[-1].grad
        ratios.append(float(first.norm() / max(float(last.norm()), 1e-30)))
        return orig_step(*a, **k)

    opt.step = step_and_measure
    losses, norms = _loop(ctx, model, opt, _bow_phrases(gen, 32, 30, 52950), 100, F.mse_loss)
    calm = _Elman(4, 48, gain=1.0)
    x, y = next(_bow_phrases(torch.Generator().manual_seed(3), 32, 30, 52950))
    F.mse_loss(calm(x), y).backward()
    calm_ratio = float(calm.states[0].grad.norm() / calm.states[-1].grad.norm())
    calm_norm = grad_norm(calm)
    ctx.check("dL/dh at frame 0 over 100x the last frame's at start", _median(ratios[:10]) > 100)
    ctx.check("over 30x a gain-1 model's ratio", _median(ratios[:10]) > 30 * calm_ratio)
    ctx.check(
        "gradient norm over 5x a gain-1 model's at start", _median(norms[:10]) > 5 * calm_norm
    )


# -- 6. loss of plasticity: Adamax lr typed 0.5 for 0.005 ----------------------------------------


@scenario(
    family="snowshoe_lacing_tension_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Snowshoe lacing-tension regressor (ReLU MLP on rawhide thickness, moisture, frame "
    "wood, weave pattern, cold soak and lacing speed, MSE, Adamax). The lr is typed 0.5 for "
    "0.005 and the target is the tension in newtons (about 15, not standardised): the first large "
    "updates push fc2's pre-activations below zero for every input, act2's units die and the "
    "net stalls far above the target variance.",
)
def h529_snowshoe_adamax_lr_typo(ctx):
    gen = seeded(5296)
    model = _Net(6, 64, 1)
    opt = torch.optim.Adamax(model.parameters(), lr=0.5)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(9), 512, 6, 52960))
    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe_x))
    data = ((x, y + 15.0) for x, y in _readings(gen, 64, 6, 52960))
    losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss)
    with torch.no_grad():
        dead = dead_fraction(model.features(probe_x))
    ctx.check("under 10% of act2 dead at init", dead0 < 0.1)
    ctx.check("over 70% of act2 units dead at the end", dead > 0.7)
    ctx.check(
        "stalls above 0.6x the target variance", _mean(losses[-20:]) > 0.6 * float(probe_y.var())
    )
    ctx.check("finite", _finite(losses))


# -- 7. data outlier: one shard with the bark-cloth thickness in millimetres --------------------

TAPA_ONSET = 120


@scenario(
    family="tapa_cloth_beating_thickness_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=TAPA_ONSET,
    note="Tapa-cloth beating regressor (ReLU MLP on bark strip width, soak hours, beater "
    "groove count, strokes per minute, anvil wood and starting thickness, Huber loss, RMSprop, "
    "clipping at 1). One shard at step 120 comes from a workshop that logs the starting "
    "thickness in millimetres where the rest is standardised metres: the batch's inputs are a "
    "thousand times too large, the loss and gradient spike, clipping holds and the run recovers.",
)
def h529_tapa_shard_millimetres(ctx):
    gen = seeded(5297)
    model = _Net(6, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == TAPA_ONSET:
            x = x.clone()
            x[:, 5] = 1000.0 * (x[:, 5] + 3.0)  # mm, not standardised
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 52970),
        260,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    before = _mean(losses[TAPA_ONSET - 20 : TAPA_ONSET])
    ctx.check("loss at onset over 100x the steps before", losses[TAPA_ONSET] > 100 * before)
    ctx.check(
        "gradient at onset over 20x the median",
        norms[TAPA_ONSET] > 20 * _median(norms[:TAPA_ONSET]),
    )
    ctx.check("recovers (last 20 under 2x pre-onset)", _mean(losses[-20:]) < 2 * before)
    ctx.check("finite", _finite(losses))


# -- 8. gradient spike: a resumed accumulation step multiplies by 8 instead of dividing ---------

BAGATELLE_ONSET = 130
BAGATELLE_ACCUM = 8


def _pin_bounces(gen, batch, seed):
    base = _readings(gen, batch, 8, seed, noise=0.0)
    while True:
        x, y = next(base)
        yield x, (y + 0.3 * torch.randn(batch, generator=gen) > 0.2).float()


@scenario(
    family="bagatelle_pin_bounce_pocket_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=BAGATELLE_ONSET,
    note="Bagatelle pin-bounce pocket predictor (ReLU MLP on cue force, launch angle, pin "
    "spacing, board tilt, ball wear and felt age; BCE with logits of 'lands in a scoring cup', "
    "SGD Nesterov momentum 0.9, 8 accumulated micro-batches, clipping at 5). After a resume at "
    "step 130 the first step's micro-batch losses are multiplied by 8 instead of divided: one "
    "gradient 64x too large on an ordinary logged loss; clipping holds.",
)
def h529_bagatelle_accum_multiply(ctx):
    gen = seeded(5298)
    model = _Net(8, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _pin_bounces(gen, 16, 52980)
    losses, norms = [], []
    for step in range(200):
        total = 0.0
        for _ in range(BAGATELLE_ACCUM):
            x, y = next(data)
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            scale = BAGATELLE_ACCUM if step == BAGATELLE_ONSET else 1.0 / BAGATELLE_ACCUM
            (loss * scale).backward()
            total += float(loss.detach()) / BAGATELLE_ACCUM
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "gradient at onset over 30x the median before",
        norms[BAGATELLE_ONSET] > 30 * _median(norms[:BAGATELLE_ONSET]),
    )
    ctx.check(
        "logged loss ordinary at onset",
        losses[BAGATELLE_ONSET] < 1.5 * _mean(losses[BAGATELLE_ONSET - 10 : BAGATELLE_ONSET]),
    )
    ctx.check("trained", _fell(losses, ratio=0.8))
    ctx.check("finite", _finite(losses))


# -- 9. sharpness above limit: MultiStepLR gamma typed 10 for 0.1 -------------------------------

SALTPAN_ONSET = 100


@scenario(
    family="salt_pan_crust_polygon_width_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=SALTPAN_ONSET,
    note="Salt-pan crust polygon-width regressor (tanh MLP on brine depth, evaporation rate, "
    "grain size, wind, temperature and ridge age, MSE, plain SGD lr 0.1). MultiStepLR's gamma "
    "is typed 10 for 0.1: at the milestone step 100 the lr jumps to 1.0 instead of dropping, "
    "lr x sharpness passes 2 and the loss oscillates and blows up.",
)
def h529_saltpan_multistep_gamma10(ctx):
    gen = seeded(5299)
    model = _Net(6, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[SALTPAN_ONSET], gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(9), 256, 6, 52990))
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (SALTPAN_ONSET - 1, SALTPAN_ONSET):
            sharp[step] = _top_hessian_eig(model, F.mse_loss, *probe)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 52990), 200, F.mse_loss, before=before, sched=sched
    )
    ctx.check(
        "lr x sharpness under 2 before the milestone",
        lrs[SALTPAN_ONSET - 1] * sharp[SALTPAN_ONSET - 1] < 2,
    )
    ctx.check(
        "lr x sharpness over 2 at the milestone", lrs[SALTPAN_ONSET] * sharp[SALTPAN_ONSET] > 2
    )
    ctx.check("trained before the milestone", _fell(losses[:SALTPAN_ONSET]))
    ctx.check(
        "loss blew up after the milestone (non-finite or over 1e3x its pre-milestone mean)",
        not _finite(losses[SALTPAN_ONSET:])
        or max(losses[SALTPAN_ONSET:]) > 1e3 * _mean(losses[SALTPAN_ONSET - 20 : SALTPAN_ONSET]),
    )


# -- 10. update ratio out of range: trunk param group lr typed 1e-9 -----------------------------


@scenario(
    family="hammock_weave_sag_two_group_silu_regressor",
    optimizer="ASGD",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Hammock-weave sag regressor (SiLU MLP on cord gauge, weave density, span, spreader "
    "bar, load and humidity, MSE, ASGD with two param groups). The trunk group's lr is typed "
    "1e-9 where 1e-2 was meant (the head group has 1e-2): fc1 barely moves all run while the "
    "upper layers train on its random features.",
)
def h529_hammock_trunk_lr_1e9(ctx):
    gen = seeded(52910)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.ASGD(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 1e-2},
        ],
        lr=1e-2,
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 529100), 200, F.mse_loss)
    ctx.check("fc1 moves under 1e-6 of its norm", _rel_change(model.fc1.weight, w1) < 1e-6)
    ctx.check("fc2 moves over 1% of its norm", _rel_change(model.fc2.weight, w2) > 1e-2)
    ctx.check("finite", _finite(losses))


# -- 11. control: magnitude pruning to half the weights mid-run, then fine-tuning ---------------

PRUNE_AT = 150


@scenario(
    family="fingerboard_skate_trick_pruned_relu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fingerboard skate-trick classifier (ReLU MLP on finger-pressure traces summarised as "
    "12 features, 8 tricks, 16 hidden units, cross-entropy, SGD momentum 0.9, cosine "
    "schedule). At step 150 half of each layer's weights are pruned by magnitude (masks kept "
    "and re-applied after every step) and the net is fine-tuned: the loss jumps at the prune, "
    "then recovers. A standard compression recipe, healthy.",
)
def h529_fingerboard_prune_half_finetune(ctx):
    gen = seeded(52911)
    model = _Net(12, 16, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=300, eta_min=5e-3)
    layers = [model.fc1, model.fc2, model.head]
    masks: dict[nn.Linear, torch.Tensor] = {}

    def before(step):
        if step == PRUNE_AT:
            with torch.no_grad():
                for lin in layers:
                    w = lin.weight
                    cut = w.abs().flatten().kthvalue(w.numel() // 2).values
                    masks[lin] = (w.abs() > cut).float()
                    w.mul_(masks[lin])

    def after(step, loss):
        with torch.no_grad():
            for lin, mask in masks.items():
                lin.weight.mul_(mask)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 8, 529110, spread=0.6),
        300,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
        sched=sched,
    )
    pre = _mean(losses[PRUNE_AT - 10 : PRUNE_AT])
    zero = _mean([float((lin.weight == 0).float().mean()) for lin in layers])
    ctx.check("half the weights are zero at the end", zero >= 0.49)
    ctx.check(
        "loss jumps at the prune (3 steps over 2x)",
        _mean(losses[PRUNE_AT : PRUNE_AT + 3]) > 2 * pre,
    )
    ctx.check("recovers (last 20 under 1.2x pre-prune)", _mean(losses[-20:]) < 1.2 * pre)
    ctx.check("trained", _fell(losses))


# -- 12. control: a deep-equilibrium layer solved by fixed-point iteration ----------------------


class _DEQ(nn.Module):
    """z* = tanh(W z* + U x + b), found by fixed-point iteration without gradient, then one
    differentiable step from z* (the one-step / Jacobian-free backward). W is rescaled to
    spectral norm at most 0.9 so the map contracts."""

    def __init__(self, d_in, width, iters=30):
        super().__init__()
        self.W = nn.Linear(width, width, bias=False)
        self.U = nn.Linear(d_in, width)
        self.iters = iters
        self.residual = 0.0
        nn.init.normal_(self.W.weight, std=0.5 / math.sqrt(width))

    def weight(self):
        sigma = torch.linalg.matrix_norm(self.W.weight, 2)
        return self.W.weight * torch.clamp(0.9 / sigma, max=1.0)

    def forward(self, x):
        w, inj = self.weight(), self.U(x)
        with torch.no_grad():
            z = torch.zeros_like(inj)
            for _ in range(self.iters):
                z_next = torch.tanh(z @ w.t() + inj)
                self.residual = float((z_next - z).norm() / (z_next.norm() + 1e-8))
                z = z_next
        return torch.tanh(z @ w.t() + inj)


class _MoltDEQ(nn.Module):
    def __init__(self, d_in, width):
        super().__init__()
        self.deq = _DEQ(d_in, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.deq(x)).squeeze(-1)  # log-rate


def _molt_counts(gen, batch, seed):
    base = _readings(gen, batch, 6, seed, noise=0.0)
    while True:
        x, f = next(base)
        yield x, torch.poisson(torch.exp(1.0 + f), generator=gen)


@scenario(
    family="sea_spider_molt_count_deq_poisson_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sea-spider molt-count regressor (a deep-equilibrium layer z = tanh(W z + U x + b) "
    "solved by 30 fixed-point iterations, W kept under spectral norm 0.9, one-step backward, "
    "linear log-rate head; Poisson NLL of water temperature, depth, food density, salinity, "
    "light and season readings, RAdam, 10-step warm-up, clipping at 1). Healthy control.",
)
def h529_sea_spider_deq_poisson(ctx):
    gen = seeded(52912)
    model = _MoltDEQ(6, 32)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    res = []

    def after(step, loss):
        res.append(model.deq.residual)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _molt_counts(gen, 64, 529120),
        200,
        lambda out, y: F.poisson_nll_loss(out, y, log_input=True),
        after=after,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained", _fell(losses, ratio=0.8))
    ctx.check("fixed point converged (residual under 1e-3 at the end)", _median(res[-20:]) < 1e-3)
    ctx.check("finite", _finite(losses))


# -- 13. control: a tied-weight autoencoder under fp16 autocast + GradScaler --------------------


class _TiedAE(nn.Module):
    def __init__(self, d_in, code):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.GELU()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _resonance_spectra(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(5, 24, generator=g)
    while True:
        x = torch.randn(batch, 5, generator=gen) @ basis / math.sqrt(5)
        yield x + 0.1 * torch.randn(batch, 24, generator=gen), None


@scenario(
    family="kora_harp_calabash_resonance_fp16_tied_autoencoder",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kora-harp calabash resonance autoencoder (tied weights: the decoder is the encoder "
    "matrix transposed, GELU code of 8, MSE reconstruction of 24-band resonance spectra with "
    "measurement noise, Adam, OneCycleLR, fp16 autocast + GradScaler, 2 accumulated "
    "micro-batches, clipping at 1). Healthy control.",
)
def h529_kora_tied_ae_fp16(ctx):
    gen = seeded(52913)
    model = _TiedAE(24, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps, accum = 200, 2
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    data = _resonance_spectra(gen, 32, 529130)
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(accum):
            x, _ = next(data)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.mse_loss(out.float(), x)
            scaler.scale(loss / accum).backward()
            total += float(loss.detach()) / accum
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("trained", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
    ctx.check("loss scale stayed above 1", min(ctx.scales) >= 1.0)
