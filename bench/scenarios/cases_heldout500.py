"""Held-out set 500 (``h500_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a kalamkari pen-stroke classifier whose loss is written -logit[target] with the
log-softmax forgotten (output logits grow without bound, Adam), a humpback bubble-net ring
regressor taking log of sonar readings with no clamp (a dropped reading of 0 gives -inf, NaN
loss, Adadelta), a qeswachaka grass-rope sag regressor whose MultiStepLR gamma is typed 10 for 0.1
(full-batch SGD past 2/sharpness), a jiggering plate-wall Huber regressor whose step 120 reuses
the evaluation loss with reduction="sum" (one gradient burst, SGD momentum), a smoke-firing pot
crack BCE net fed one shard with kiln pressure in pascals (Adamax), a peg-loom weft-tension
regressor whose trunk param group lr is typed 3e-9 (Adagrad), a chip-carving rosette-depth
regressor with its L2 penalty subtracted (slow loss climb, SGD), a bandola course classifier with
a distillation temperature read in percent (softmax collapse, RMSprop), a tres cubano montuno
hand-written IRNN whose identity init is scaled 1.15 (exploding through time, SGD Nesterov) and a
mola applique stitch regressor resumed from the wrong checkpoint (a one-off loss spike, NAdam).

Controls: an adire resist-pattern spatial transformer classifier (AdamW, OneCycleLR, label
smoothing, clipping); a soumak weft-wrap regressor magnitude-pruned by half at step 150 then
fine-tuned (RAdam); an ajrakh block-print dye-depth Huber regressor under fp16 autocast +
GradScaler (Adam, ReduceLROnPlateau, accumulation 2, clipping).
"""

from __future__ import annotations

import copy
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _train(
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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """The file's loop. ``before(step)`` first; ``alter(step, x, y)`` changes a batch;
    ``weight(step)`` multiplies the backpropagated loss (1 by default); ``after(step, loss)`` runs
    after the optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it.
    ``attach=False``: a reference run, nothing recorded."""
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
            loss = loss_fn(model(x), y)
            w = weight(step) if weight is not None else 1.0
            (w * loss / accumulate).backward()
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
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


def _sharpness(model, loss_fn, iters=12):
    """Top Hessian eigenvalue of a full-batch loss by power iteration."""
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- 1. output logit divergence: the NLL written without its log-softmax ---------------------------


@scenario(
    family="kalamkari_pen_stroke_unnormalised_score_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kalamkari pen-stroke classifier (ReLU MLP on bamboo-pen pressure, angle and dye-flow "
    "features, 8 stroke kinds, Adam). The loss is hand-written as -logits.gather(1, y).mean(): "
    "the log-softmax (the log-sum-exp term) is forgotten, so the loss has no floor and the head's "
    "logits grow without bound.",
)
def h500_kalamkari_missing_log_softmax(ctx) -> None:
    gen = seeded(5001)
    model = _Net(16, 48, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    probe, _ = next(_grades(torch.Generator().manual_seed(50010), 256, 16, 8, 5001))
    peaks = []

    def after(step, loss):
        if step % 10 == 0:
            with torch.no_grad():
                peaks.append(float(model(probe).abs().max()))

    def loss_fn(out, y):
        return -out.gather(1, y[:, None]).mean()  # the log_softmax is missing

    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 8, 5001),
        220,
        loss_fn,
        classifier=True,
        after=after,
    )
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * peaks[0])
    ctx.check(
        "still growing (last over 1.2x the value 50 steps before)", peaks[-1] > 1.2 * peaks[-6]
    )
    ctx.check("the loss has no floor (under -10)", losses[-1] < -10)
    ctx.check("finite", _finite(losses))


# -- 2. nonfinite: log of a sonar reading with no clamp ----------------------------------------------

BUBBLE_ONSET = 110


class _LogFeat(nn.Module):
    """log of the three positive sonar readings, the rest passed through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :3]), x[:, 3:]], 1)


class _BubbleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logfeat = _LogFeat()
        self.fc1 = nn.Linear(8, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 2)

    def forward(self, x):
        h = torch.relu(self.fc2(torch.relu(self.fc1(self.logfeat(x)))))
        return self.head(h)


@scenario(
    family="bubble_net_ring_diameter_log_feature_gaussian_nll_net",
    optimizer="Adadelta",
    cause="nonfinite",
    where=("logfeat",),
    diverges=BUBBLE_ONSET,
    heldout=True,
    onset=BUBBLE_ONSET,
    note="Humpback bubble-net feeding ring-diameter net (ReLU MLP, Gaussian NLL with a predicted "
    "log-variance, Adadelta) taking torch.log of three sonar readings with no clamp. At step 110 "
    "one hydrophone reading drops out as 0.0: log 0 = -inf in logfeat, inf - inf in fc1, and the "
    "loss is NaN.",
)
def h500_bubble_net_log_zero(ctx) -> None:
    gen = seeded(5002)
    model = _BubbleNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    g = torch.Generator().manual_seed(50020)
    w = torch.randn(8, generator=g)
    feats = []

    def batches():
        while True:
            pos = 0.5 + 4.5 * torch.rand(64, 3, generator=gen)
            rest = torch.randn(64, 5, generator=gen)
            x = torch.cat([pos, rest], 1)
            z = torch.cat([torch.log(pos), rest], 1)
            y = torch.tanh(z @ w / 3) + 0.1 * torch.randn(64, generator=gen)
            yield x, y

    def alter(step, x, y):
        if step == BUBBLE_ONSET:
            x = x.clone()
            x[7, 1] = 0.0  # a dropped hydrophone reading
        with torch.no_grad():
            feats.append(bool(torch.isfinite(model.logfeat(x)).all()))
        return x, y

    def nll(out, y):
        mu, logvar = out[:, 0], out[:, 1]
        return (0.5 * (logvar + (y - mu) ** 2 / logvar.exp())).mean()

    losses, _ = _train(ctx, model, opt, batches(), 220, nll, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check(f"the loss is NaN/inf at step {BUBBLE_ONSET}", first_bad == BUBBLE_ONSET)
    ctx.check("logfeat's output non-finite at the onset", not feats[BUBBLE_ONSET])
    ctx.check("logfeat finite before the onset", all(feats[:BUBBLE_ONSET]))
    ctx.check("trained before the onset", _fell(losses[:BUBBLE_ONSET], ratio=0.9))


# -- 3. sharpness above the limit: MultiStepLR gamma typed 10 for 0.1 ------------------------------

QESWACHAKA_ONSET = 100


@scenario(
    family="qeswachaka_grass_rope_sag_steplr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=QESWACHAKA_ONSET,
    note="Qeswachaka grass-rope bridge sag regressor (tanh MLP on span, rope count, grass "
    "moisture and load features, 256 fixed surveys full-batch, MSE, plain SGD). The "
    "MultiStepLR decay at step 100 has gamma typed 10 for 0.1: the lr jumps 10x past "
    "2/sharpness and the full-batch loss oscillates and blows up.",
)
def h500_qeswachaka_gamma_typo(ctx) -> None:
    gen = seeded(5003)
    model = _Net(8, 32, 1, act=nn.Tanh)
    ref = copy.deepcopy(model)
    x, y = next(_readings(gen, 256, 8, 5003, noise=0.0))
    lam0 = _sharpness(model, lambda: F.mse_loss(model(x), y))
    base = 0.8 / lam0

    def run(net, gamma, attach):
        opt = torch.optim.SGD(net.parameters(), lr=base)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [QESWACHAKA_ONSET], gamma=gamma)
        if attach:
            ctx.attach(net, opt)
        losses, lams = [], []
        for step in range(220):
            lr = opt.param_groups[0]["lr"]
            if attach and step % 10 == 0:
                lams.append((step, lr * _sharpness(net, lambda: F.mse_loss(net(x), y))))
            loss = F.mse_loss(net(x), y)
            loss.backward()
            if attach:
                ctx.grad_norms.append(grad_norm(net))
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if attach:
                ctx.step(loss)
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(losses[-1]) or losses[-1] > 1e6:
                break
        return losses, lams

    ref_losses, _ = run(ref, 0.1, False)
    losses, lams = run(model, 10.0, True)
    k = QESWACHAKA_ONSET
    ctx.check("with gamma 0.1 the run trains", _fell(ref_losses, ratio=0.5))
    ctx.check("lr * sharpness under 2 before the decay step", all(v < 2 for s, v in lams if s < k))
    ctx.check("lr * sharpness over 2 after it", any(v > 2 for s, v in lams if s >= k))
    ctx.check("trained before the decay step", _mean(losses[k - 10 : k]) < 0.5 * _mean(losses[:10]))
    ctx.check(
        "the loss blows up after it (over 100x its best)",
        not math.isfinite(losses[-1]) or max(losses[k:]) > 100 * min(losses[:k]),
    )


# -- 4. gradient spike: the evaluation loss (reduction="sum") reused for one step -----------------

JIGGER_ONSET = 120


@scenario(
    family="jiggering_plate_wall_thickness_sum_reduction_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=JIGGER_ONSET,
    note="Jiggering (pottery plate forming) wall-thickness regressor (GELU MLP on clay moisture, "
    "profile-tool angle, wheel speed and bat diameter features, Huber, SGD momentum 0.9, "
    "clipping at 1.0). After the evaluation at step 120 the loop keeps the evaluation's loss "
    "object, built with reduction='sum', for one training step: the backpropagated loss is 128x "
    "the logged mean, one gradient burst (clipped), and the run goes on.",
)
def h500_jigger_sum_reduction(ctx) -> None:
    gen = seeded(5004)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    state = {"step": 0}

    def before(step):
        state["step"] = step

    def weight(step):
        return 128.0 if step == JIGGER_ONSET else 1.0  # sum over the batch of 128, not the mean

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 128, 10, 5004),
        240,
        F.huber_loss,
        before=before,
        weight=weight,
        clip=1.0,
    )
    k = JIGGER_ONSET
    others = norms[k - 40 : k] + norms[k + 5 :]
    ctx.check(
        "gradient at the onset over 50x the median elsewhere", norms[k] > 50 * _median(others)
    )
    ctx.check(
        "the logged loss at the onset ordinary (under 2x)",
        losses[k] < 2 * _median(losses[k - 20 : k]),
    )
    ctx.check("trained and finite", _fell(losses))
    ctx.check(
        "recovered (last 20 under 1.5x before)",
        _mean(losses[-20:]) < 1.5 * _mean(losses[k - 20 : k]),
    )


# -- 5. data outlier: one shard with kiln pressure in pascals ---------------------------------------

SMOKE_ONSET = 120


@scenario(
    family="smoke_firing_pot_crack_pascal_shard_bce_net",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SMOKE_ONSET,
    note="Smoke-firing (pit/sawdust firing) pot-crack BCE net (ReLU MLP on sawdust load, draught "
    "pressure, wall thickness and burnish features, Adamax, clipping at 1.0). The shard read at "
    "step 120 comes from a logger that writes the draught pressure in pascals instead of "
    "kilopascals (1000x): one huge loss and gradient, clipped, and the run recovers.",
)
def h500_smoke_firing_pascal_shard(ctx) -> None:
    gen = seeded(5005)
    model = _Net(10, 48, 1)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(50050)
    w = torch.randn(10, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 10, generator=gen)
            p = torch.sigmoid(2.5 * x @ w / math.sqrt(10))
            yield x, torch.bernoulli(p, generator=gen)

    def alter(step, x, y):
        if step == SMOKE_ONSET:
            x = x.clone()
            x[:, 2] = 1000.0 * (x[:, 2] + 3.0)  # pascals, not kilopascals
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        batches(),
        240,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    k = SMOKE_ONSET
    pre = _median(losses[k - 20 : k])
    ctx.check("loss at the shard over 100x the median before", losses[k] > 100 * pre)
    ctx.check(
        "gradient at the shard over 20x the median before",
        norms[k] > 20 * _median(norms[k - 20 : k]),
    )
    ctx.check("trained before the shard", _fell(losses[:k]))
    ctx.check(
        "recovered (last 20 under 1.5x before)",
        _mean(losses[-20:]) < 1.5 * _mean(losses[k - 20 : k]),
    )
    ctx.check("finite", _finite(losses))


# -- 6. update ratio out of range: the trunk group's lr typed 3e-9 --------------------------------


@scenario(
    family="peg_loom_weft_tension_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Peg-loom weft-tension regressor (ReLU MLP on peg spacing, roving thickness, beat "
    "force and row count features, MSE, Adagrad with two param groups). The first layer's "
    "group has lr typed 3e-9 for 3e-2: fc1 barely moves while fc2 and the head train, and the "
    "loss plateaus at what a random first layer allows.",
)
def h500_peg_loom_group_typo(ctx) -> None:
    gen = seeded(5006)
    model = _Net(10, 48, 1)
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 3e-9},  # typed for 3e-2
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 3e-2},
        ]
    )
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5006), 200, F.mse_loss)
    ctx.check("fc1 moved under 1e-6 of its norm", _rel_change(model.fc1.weight, w1) < 1e-6)
    ctx.check("fc2 moved over 2% of its norm", _rel_change(model.fc2.weight, w2) > 0.02)
    ctx.check("finite", _finite(losses))


# -- 7. loss divergence: the L2 penalty subtracted -------------------------------------------------


@scenario(
    family="chip_carving_rosette_depth_l2_sign_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Chip-carving rosette cut-depth regressor (ReLU MLP on knife angle, wood hardness, "
    "grain direction and chip size features, MSE, plain SGD) with a hand-written L2 penalty "
    "written loss - wd * sum(p**2) instead of +: the weights grow a little every step and the "
    "loss, after falling, climbs slowly with no jump.",
)
def h500_chip_carving_l2_sign(ctx) -> None:
    gen = seeded(5007)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2)
    wd = 0.08
    n0 = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))

    def loss_fn(out, y):
        return F.mse_loss(out, y)

    def weight(step):
        return 1.0

    # the penalty goes into the backpropagated loss; the logged loss is the data term
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, 5007)
    losses = []
    for _step in range(280):
        x, y = next(batches)
        mse = loss_fn(model(x), y)
        penalty = sum((p**2).sum() for p in model.parameters())
        (mse - wd * penalty).backward()  # the sign bug
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(mse.detach()))
        ctx.step(mse.detach())
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    n1 = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))
    best = min(_mean(losses[i : i + 20]) for i in range(0, len(losses) - 19, 5))
    smooth = [_mean(losses[i : i + 20]) for i in range(0, len(losses) - 19, 20)]
    jumps = [b / a for a, b in zip(smooth[:-1], smooth[1:], strict=True) if a > 0]
    ctx.check("the weight norm grew over 1.3x", n1 > 1.3 * n0)
    ctx.check("the loss climbed over 2x its best 20-step mean", _mean(losses[-20:]) > 2 * best)
    ctx.check("no jump (20-step means under 1.5x apart)", max(jumps) < 1.5)
    ctx.check("finite", _finite(losses))


# -- 8. softmax collapse: a distillation temperature read in percent -------------------------------


@scenario(
    family="bandola_course_temperature_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bandola (llanera) string-course classifier (GELU MLP on pluck spectrum features, 6 "
    "courses, cross-entropy on logits / T, RMSprop). The temperature is read from a config that "
    "stores it in percent: T = 2 / 100 = 0.02 instead of 2.0, so the scaled logits are 100x too "
    "large and the softmax saturates, target probabilities rounding to exactly 1.0.",
)
def h500_bandola_temperature_percent(ctx) -> None:
    gen = seeded(5008)
    model = _Net(12, 48, 6, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    temp = 2.0 / 100  # the config's "2" read as percent
    probe_x, probe_y = next(
        _grades(torch.Generator().manual_seed(50080), 256, 12, 6, 5008, spread=0.6)
    )
    fracs = []

    def after(step, loss):
        if step % 20 == 0:
            with torch.no_grad():
                fracs.append(collapsed_fraction(model(probe_x) / temp, probe_y))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 5008, spread=0.6),
        200,
        lambda out, y: F.cross_entropy(out / temp, y),
        classifier=True,
        after=after,
    )
    with torch.no_grad():
        intended = collapsed_fraction(model(probe_x) / 2.0, probe_y)
    ctx.check("over half the rows' target probability exactly 1.0", fracs[-1] > 0.5)
    ctx.check("at T = 2 under 1% would be", intended < 0.01)
    ctx.check("finite", _finite(losses))


# -- 9. exploding gradients: IRNN identity init scaled 1.15 ------------------------------------------


class _IRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.recur = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.recur.weight.copy_(gain * torch.eye(hidden))
            self.recur.bias.zero_()
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.recur.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.recur(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


@scenario(
    family="tres_cubano_montuno_irnn_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("recur",),
    diverges="auto",
    heldout=True,
    note="Tres cubano montuno accent regressor: a hand-written ReLU RNN (IRNN) reading 30 "
    "beats of pluck features and predicting the next accent strength (MSE, SGD Nesterov). "
    "The identity init of the recurrent weights is scaled 1.15 (a gain typed for 1.0): states "
    "and gradients grow geometrically through time and the loss blows up.",
)
def h500_tres_irnn_gain(ctx) -> None:
    gen = seeded(5009)
    model = _IRNN(gain=1.15)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(50090)
    w = torch.randn(4, generator=g)
    losses, ratios = [], []
    for _step in range(150):
        x = 0.3 * torch.randn(32, 30, 4, generator=gen)
        y = torch.tanh(x[:, -3:] @ w).mean(1)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first, last = model.states[0].grad, model.states[-1].grad
        if first is not None and last is not None and float(last.norm()) > 0:
            ratios.append(float(first.norm() / last.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]) or losses[-1] > 1e8:
            break
    ctx.check("dL/dh at t=0 over 10x dL/dh at t=29", bool(ratios) and ratios[0] > 10)
    ctx.check(
        "the loss blows up after its best (non-finite or over 1000x)",
        not math.isfinite(losses[-1])
        or max(losses[losses.index(min(losses)) :]) > 1000 * min(losses),
    )


# -- 10. loss spike: resumed from the wrong checkpoint -----------------------------------------------

MOLA_ONSET = 130


@scenario(
    family="mola_reverse_applique_stitch_stale_checkpoint_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=MOLA_ONSET,
    note="Mola (reverse applique) stitch-density regressor (SiLU MLP on cloth layer count, "
    "cut width and thread features, MSE, NAdam). The job is preempted and resumed at step 130 "
    "from ckpt_0020 instead of ckpt_0120 (a glob sorted as strings): the weights go back to an "
    "early state, the loss jumps once and the run recovers. No gradient burst, no bad data.",
)
def h500_mola_wrong_checkpoint(ctx) -> None:
    gen = seeded(5010)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    saved = {}

    def before(step):
        if step == MOLA_ONSET:
            model.load_state_dict(saved[20])  # ckpt_0020 for ckpt_0120

    def after(step, loss):
        if step % 10 == 0:
            saved[step] = copy.deepcopy(model.state_dict())

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5010), 260, F.mse_loss, before=before, after=after
    )
    k = MOLA_ONSET
    pre = _mean(losses[k - 20 : k])
    others = norms[k - 40 : k] + norms[k + 30 :]
    ctx.check("trained before the resume (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("the loss at the resume over 3x the 20 steps before", losses[k] > 3 * pre)
    ctx.check("recovered (last 20 under 1.5x before)", _mean(losses[-20:]) < 1.5 * pre)
    ctx.check("no gradient burst (under 10x the median elsewhere)", norms[k] < 10 * _median(others))
    ctx.check("finite", _finite(losses))


# -- 11. control: an adire resist-pattern spatial transformer network -----------------------------


def _adire_patterns(gen, batch, size=16):
    """Resist-dye motifs (ring, cross, square outline, disk) rotated, scaled and shifted."""
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        ang = (torch.rand(batch, generator=gen) - 0.5) * 1.0
        sc = 0.8 + 0.3 * torch.rand(batch, generator=gen)
        sh = (torch.rand(batch, 2, generator=gen) - 0.5) * 0.5
        cx = xx[None] - sh[:, 0, None, None]
        cy = yy[None] - sh[:, 1, None, None]
        c, s = torch.cos(ang)[:, None, None], torch.sin(ang)[:, None, None]
        u = (c * cx + s * cy) / sc[:, None, None]
        v = (-s * cx + c * cy) / sc[:, None, None]
        r = torch.sqrt(u**2 + v**2)
        m = torch.maximum(u.abs(), v.abs())
        ring = ((r - 0.5).abs() < 0.12).float()
        cross = (((u.abs() < 0.12) | (v.abs() < 0.12)) & (m < 0.6)).float()
        square = ((m > 0.45) & (m < 0.6)).float()
        disk = (r < 0.35).float()
        img = torch.stack([ring, cross, square, disk], 1)[torch.arange(batch), y]
        img = img + 0.15 * torch.randn(batch, size, size, generator=gen)
        yield img[:, None], y


class _AdireSTN(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.loc_conv = nn.Conv2d(1, 8, 5, stride=2, padding=2)
        self.loc_fc1 = nn.Linear(8 * 8 * 8, 32)
        self.loc_fc2 = nn.Linear(32, 6)
        with torch.no_grad():  # start at the identity warp
            self.loc_fc2.weight.zero_()
            self.loc_fc2.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 16, 3, padding=1)
        self.head = nn.Linear(16 * 4 * 4, classes)

    def warp(self, x):
        h = F.relu(self.loc_conv(x))
        theta = self.loc_fc2(F.relu(self.loc_fc1(h.flatten(1)))).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)

    def forward(self, x):
        x = self.warp(x)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


@scenario(
    family="adire_resist_pattern_spatial_transformer_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Adire (Yoruba resist-dye) motif classifier: a hand-written spatial transformer network "
    "(a localisation net predicts an affine warp, initialised at the identity, applied with "
    "affine_grid and grid_sample, before a small conv classifier) over generated 16x16 motifs "
    "(ring, cross, square, disk) rotated, scaled and shifted with noise. AdamW, OneCycleLR, "
    "label smoothing 0.1, clipping at 1.0. A healthy control.",
)
def h500_adire_stn_control(ctx) -> None:
    gen = seeded(5011)
    model = _AdireSTN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _adire_patterns(gen, 32),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    xt, yt = next(_adire_patterns(torch.Generator().manual_seed(50110), 256))
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    ctx.check("the loss fell (last 10 under 0.6x the first)", _fell(losses, ratio=0.6))
    ctx.check("held-out accuracy over 80%", acc > 0.8)


# -- 12. control: magnitude-pruned by half at step 150, then fine-tuned ---------------------------

SOUMAK_PRUNE = 150


@scenario(
    family="soumak_weft_wrap_density_pruned_relu_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Soumak weft-wrapping density regressor (ReLU MLP on warp sett, wrap count, yarn "
    "twist and beater force features, MSE, RAdam). At step 150 every Linear weight is "
    "magnitude-pruned by half (the smallest 50% set to zero and masked from then on) and the "
    "net is fine-tuned: the loss jumps at the pruning and recovers. A healthy control.",
)
def h500_soumak_prune_finetune(ctx) -> None:
    gen = seeded(5012)
    model = _Net(10, 64, 1)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    masks = {}

    def before(step):
        if step == SOUMAK_PRUNE:
            with torch.no_grad():
                for m in (model.fc1, model.fc2, model.head):
                    cut = m.weight.abs().flatten().kthvalue(m.weight.numel() // 2).values
                    masks[m] = (m.weight.abs() > cut).float()
                    m.weight.mul_(masks[m])

    def after(step, loss):
        with torch.no_grad():
            for m, mask in masks.items():
                m.weight.mul_(mask)

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5012), 280, F.mse_loss, before=before, after=after
    )
    k = SOUMAK_PRUNE
    pre = _mean(losses[k - 10 : k])
    zeros = float((model.fc2.weight == 0).float().mean())
    ctx.check("trained before pruning (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("the loss jumped at the pruning (over 1.3x)", losses[k] > 1.3 * pre)
    ctx.check("recovered (last 20 under 1.3x before)", _mean(losses[-20:]) < 1.3 * pre)
    ctx.check("half of fc2's weights still zero", zeros >= 0.49)
    ctx.check("finite", _finite(losses))


# -- 13. control: fp16 autocast + GradScaler, ReduceLROnPlateau, accumulation -------------------


@scenario(
    family="ajrakh_block_print_dye_depth_fp16_huber_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Ajrakh block-print dye-depth Huber regressor (SiLU MLP on mordant strength, block "
    "pressure, resist paste and wash count features, standardised targets) under fp16 autocast "
    "with a GradScaler, Adam, ReduceLROnPlateau, gradient accumulation 2, clipping at 1.0. A "
    "healthy control.",
)
def h500_ajrakh_fp16_control(ctx) -> None:
    gen = seeded(5013)
    model = _Net(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 32, 10, 5013)
    losses, scales = [], []
    for _step in range(220):
        shown = 0.0
        for _ in range(2):
            x, y = next(batches)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.huber_loss(out.float(), y)
            scaler.scale(loss / 2).backward()
            shown += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        scales.append(float(scaler.get_scale()))
        ctx.scales.append(scales[-1])
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        sched.step(shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    ctx.check("the loss fell (last 10 under 0.6x the first)", _fell(losses, ratio=0.6))
    ctx.check("the scaler's scale did not collapse", min(scales) >= 2.0**8)
