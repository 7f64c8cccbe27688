"""Held-out set 437 (``h437_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a will-o'-the-wisp glow regressor whose per-row range normalisation has no epsilon (a
stuck photometer row gives 0/0), a teasel nap-grade ReLU classifier whose Adam lr is typed 1e-1
for 1e-3 (most ReLUs die), a sabot-blank crack tagger whose BCE targets keep an SVM's -1/+1
encoding (the head's logits grow without bound), a fan-maker rib-spacing Conv1d classifier whose
accumulation step at 150 multiplies by the micro-batch count instead of dividing (one gradient
burst), a fishing-weir catch regressor fed one shard with tide height in millimetres (one corrupted
batch), a tack-room bridle-fit regressor whose breed-embedding group's lr is typed 5e-9 for 5e-2
(a frozen embedding), a togishi grit-stage classifier whose temperature is typed 0.005 for 0.5
(softmax saturates), a salt-farm brine-density regressor whose hand-written L2 penalty is
subtracted (a slow climb), an arrow-shaft spine deep ReLU MLP whose init std is 2/sqrt(fan_in)
for sqrt(2/fan_in) (gradients grow through depth) and a parchment stretch-frame regressor under
AdamW with AMSGrad that backpropagates one step with a 1e4 stage-2 loss weight (the second moment
is filled for good).

Controls: a swamp-buggy terrain mixture-of-experts classifier (softmax gate, top-2 routing,
load-balancing loss, router z-loss, AdamW, linear warm-up), a harness-maker stitch-pitch fp16
Conv1d classifier (GradScaler, SGD momentum under OneCycleLR, label smoothing, clipping) and a
verjuice-press tied-weight autoencoder with a Gaussian NLL head (SGD Nesterov, ReduceLROnPlateau,
accumulation, clipping).
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


def _multilabel(gen, batch, d_in, labels, seed):
    """Readings and several binary labels, each by its own hidden rule."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, labels, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, (x @ w + 0.1 * torch.randn(batch, labels, generator=gen) > 0).float()


def _signals(gen, classes=4, batch=32, length=48, noise=0.4):
    """1-d traces whose class is a periodic motif; shifted, with noise."""
    t = torch.arange(length, dtype=torch.float32)
    shapes = torch.stack([torch.sin(2 * math.pi * t * (c + 2) / length) for c in range(classes)])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = torch.randint(0, length, (batch,), generator=gen)
        x = torch.stack([torch.roll(shapes[c], int(s)) for c, s in zip(y, phase, strict=True)])
        yield (x + noise * torch.randn(batch, length, generator=gen))[:, None], y


class _Conv(nn.Module):
    def __init__(self, classes=4, width=12):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(-1))


# -- faults ----------------------------------------------------------------------------------------

WISP_STUCK = 90


class _RangeNorm(nn.Module):
    """(x - min) / (max - min) over each row's photometer readings, written with no epsilon."""

    def forward(self, x):
        lo = x.amin(-1, keepdim=True)
        hi = x.amax(-1, keepdim=True)
        return (x - lo) / (hi - lo)


class _WispNet(nn.Module):
    def __init__(self, d_in=16, hidden=48):
        super().__init__()
        self.norm = _RangeNorm()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        level = x.mean(-1, keepdim=True)
        z = torch.cat([self.norm(x), level], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


@scenario(
    family="will_o_wisp_marsh_glow_range_norm_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("norm",),
    diverges=WISP_STUCK,
    heldout=True,
    onset=WISP_STUCK,
    note="Will-o'-the-wisp marsh-glow intensity regressor (16 photometers round a bog pool, "
    "per-row min-max normalisation, SiLU MLP, MSE, Adamax). The normalisation divides by "
    "max - min with no epsilon; at step 90 one rig's photometers are stuck at the same reading, "
    "the row's range is 0, (x - min) / (max - min) is 0/0 = NaN and the loss is NaN at 90.",
)
def h437_will_o_wisp_range_norm(ctx) -> None:
    gen = seeded(4371)
    model = _WispNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}

    def batches():
        g = torch.Generator().manual_seed(371)
        shape = torch.randn(16, generator=g)
        while True:
            level = 1.0 + torch.rand(64, 1, generator=gen)
            x = level * (1 + 0.3 * torch.randn(64, 16, generator=gen))
            xn = (x - x.amin(-1, keepdim=True)) / (x.amax(-1, keepdim=True) - x.amin(-1, True))
            y = torch.tanh(xn @ shape / 4) + 0.5 * level.squeeze(-1)
            yield x, y

    def alter(step, x, y):
        if step == WISP_STUCK:
            x = x.clone()
            x[7] = 1.25  # the stuck rig: every photometer reads the same
        seen["x"] = x
        return x, y

    _loop(ctx, model, opt, batches(), 150, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("finite before 90", _finite(ls[:WISP_STUCK]))
    ctx.check("loss NaN at 90", len(ls) == WISP_STUCK + 1 and math.isnan(ls[WISP_STUCK]))
    x = seen["x"]
    ctx.check("the input batch at 90 is finite", bool(torch.isfinite(x).all()))
    with torch.no_grad():
        z = model.norm(x)
    ctx.check("the normalisation's output is NaN at 90", bool(torch.isnan(z).any()))
    ctx.check("trained before", _mean(ls[80:90]) < 0.5 * _mean(ls[:10]))


@scenario(
    family="teasel_gig_cloth_nap_grade_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Teasel-gig cloth-raising nap-grade classifier (ReLU MLP on pile-height readings, "
    "cross-entropy, Adam). The lr is typed 1e-1 for 1e-3: the first large updates push most "
    "ReLU units' pre-activations negative on every input, they never fire again and the loss "
    "stalls well above the run at the intended lr.",
)
def h437_teasel_nap_dead_relus(ctx) -> None:
    def run(attach, lr):
        gen = seeded(4372)
        model = _Net(20, 64, 6)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        data = _grades(gen, 64, 20, 6, seed=372, spread=1.3)
        x0, _ = next(_grades(torch.Generator().manual_seed(9), 512, 20, 6, seed=372, spread=1.3))
        with torch.no_grad():
            h1 = model.act1(model.fc1(x0))
            d0 = (dead_fraction(h1), dead_fraction(model.features(x0)))
        losses = _loop(
            ctx if attach else None,
            model,
            opt,
            data,
            200,
            F.cross_entropy,
            classifier=True,
            attach=attach,
        )
        with torch.no_grad():
            h1 = model.act1(model.fc1(x0))
            d1 = (dead_fraction(h1), dead_fraction(model.features(x0)))
        return losses, d0, d1

    ref, _, ref_d1 = run(False, 1e-3)
    ls, d0, d1 = run(True, 1e-1)
    ctx.check("under 10% of units dead at init", max(d0) < 0.1)
    ctx.check("over half of fc2's units dead at the end", d1[1] > 0.5)
    ctx.check("under 20% dead at the intended lr", max(ref_d1) < 0.2)
    ctx.check(
        "loss stalls: last 20 over 1.5x the reference's", _mean(ls[-20:]) > 1.5 * _mean(ref[-20:])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="sabot_clog_blank_crack_pm1_bce_tagger",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sabot (wooden clog) blank crack tagger: five crack kinds per blank from tap-test "
    "features (ReLU MLP, BCEWithLogits, RMSprop). The label loader was written for an SVM and "
    "still encodes absent cracks as -1 rather than 0; BCE with a target of -1 falls without "
    "bound as the logit goes to -inf, so the head's logits grow and grow and the 'loss' goes "
    "negative.",
)
def h437_sabot_pm1_targets(ctx) -> None:
    gen = seeded(4373)
    model = _Net(12, 48, 5)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    data = _multilabel(gen, 64, 12, 5, seed=373)
    xp, _ = next(_multilabel(torch.Generator().manual_seed(5), 256, 12, 5, seed=373))
    peaks = []

    def alter(step, x, y):
        return x, 2 * y - 1  # the SVM's -1/+1 labels

    def after(step):
        with torch.no_grad():
            peaks.append(float(model(xp).abs().max()))

    with torch.no_grad():
        start = float(model(xp).abs().max())
    _loop(ctx, model, opt, data, 200, F.binary_cross_entropy_with_logits, alter=alter, after=after)
    ls = ctx.losses
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * start)
    ctx.check("still growing over the last third", peaks[-1] > 1.3 * peaks[133])
    ctx.check("the 'loss' below -10", ls[-1] < -10)
    ctx.check("finite", _finite(ls))


FAN_BURST = 150


@scenario(
    family="fan_maker_rib_spacing_conv1d_accum_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=FAN_BURST,
    note="Folding-fan maker's rib-spacing classifier on guard-to-guard spacing traces (ReLU "
    "Conv1d, cross-entropy, SGD Nesterov, accumulation over 8, clipping at 1). At step 150 (the "
    "epoch boundary) the last accumulation window takes a code path that multiplies the loss by "
    "the micro-batch count instead of dividing: one step's gradient is 64x on an ordinary logged "
    "loss; clipping bounds the update and the run recovers.",
)
def h437_fan_maker_accum_multiply(ctx) -> None:
    gen = seeded(4374)
    model = _Conv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (64.0 if step == FAN_BURST else 1.0)  # loss * 8 where loss / 8 was meant

    _loop(
        ctx,
        model,
        opt,
        _signals(gen, batch=8),
        220,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        clip=1.0,
        accumulate=8,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at 150 over 20x the median of 110..149",
        gn[FAN_BURST] > 20 * _median(gn[110:FAN_BURST]),
    )
    ctx.check("logged loss at 150 ordinary", ls[FAN_BURST] < 2 * _median(ls[110:FAN_BURST]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.3 * _mean(ls[130:FAN_BURST]) + 0.05)
    ctx.check("trained", _fell(ls))


WEIR_SHARD = 120


@scenario(
    family="fishing_weir_tide_catch_huber_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=WEIR_SHARD,
    note="Tidal fishing-weir catch regressor (SiLU MLP on tide, wind and season features, Huber, "
    "SGD momentum 0.9, clipping at 5). The shard read at step 120 comes from a gauge that logs the "
    "tide height in millimetres for metres: one batch with a feature 1000x off; the loss and "
    "gradient jump and the run recovers.",
)
def h437_weir_millimetre_shard(ctx) -> None:
    gen = seeded(4375)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == WEIR_SHARD:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0  # tide height in mm
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=375),
        220,
        F.huber_loss,
        alter=alter,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    s = WEIR_SHARD
    ctx.check("loss at 120 over 100x the median of 100..119", ls[s] > 100 * _median(ls[100:s]))
    ctx.check("gradient at 120 over 20x the median", gn[s] > 20 * _median(gn[100:s]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[100:s]))
    ctx.check("trained", _fell(ls))


class _BridleNet(nn.Module):
    """Breed embedding beside head and muzzle measurements; predicts the bridle-fit score."""

    def __init__(self, breeds=12, dim=8, d_in=6, hidden=48):
        super().__init__()
        self.breed = nn.Embedding(breeds, dim)
        self.fc1 = nn.Linear(dim + d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        b, m = x[:, 0].long(), x[:, 1:]
        z = torch.cat([self.breed(b), m], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


def _bridle_fits(gen, batch=64, breeds=12, seed=376):
    g = torch.Generator().manual_seed(seed)
    offset = 1.5 * torch.randn(breeds, generator=g)
    w = torch.randn(6, generator=g) / math.sqrt(6)
    while True:
        b = torch.randint(0, breeds, (batch,), generator=gen)
        m = torch.randn(batch, 6, generator=gen)
        y = offset[b] + torch.tanh(m @ w) + 0.05 * torch.randn(batch, generator=gen)
        yield torch.cat([b[:, None].float(), m], -1), y


@scenario(
    family="tack_room_bridle_fit_embedding_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("breed",),
    diverges=None,
    heldout=True,
    note="Tack-room bridle-fit regressor (horse-breed embedding beside head measurements, ReLU "
    "MLP, Huber, Adagrad with two param groups). The embedding group's lr is typed 5e-9 for "
    "5e-2: the breed embedding never moves from its random init while the trunk trains; the "
    "trunk has to work around fixed random breed vectors.",
)
def h437_tack_room_embedding_lr_typo(ctx) -> None:
    def run(attach, emb_lr):
        gen = seeded(4376)
        model = _BridleNet()
        opt = torch.optim.Adagrad(
            [
                {"params": model.breed.parameters(), "lr": emb_lr},
                {"params": [p for n, p in model.named_parameters() if not n.startswith("breed")]},
            ],
            lr=5e-2,
        )
        e0 = model.breed.weight.detach().clone()
        f0 = model.fc1.weight.detach().clone()
        losses = _loop(
            ctx if attach else None,
            model,
            opt,
            _bridle_fits(gen),
            200,
            F.huber_loss,
            attach=attach,
        )
        return losses, _rel_change(e0, model.breed.weight), _rel_change(f0, model.fc1.weight)

    _, ref_emb_move, _ = run(False, 5e-2)
    ls, emb_move, fc1_move = run(True, 5e-9)
    ctx.check("the embedding moves under 1e-5 of its norm", emb_move < 1e-5)
    ctx.check("fc1 moves over 10% of its norm", fc1_move > 0.1)
    ctx.check("at the intended 5e-2 it moves over 10%", ref_emb_move > 0.1)
    ctx.check("finite", _finite(ls))


class _Temper(nn.Module):
    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, z):
        return z / self.t


class _GritNet(_Net):
    def __init__(self, t):
        super().__init__(16, 48, 5, act=nn.GELU)
        self.temper = _Temper(t)

    def forward(self, x):
        return self.temper(self.head(self.features(x)))


@scenario(
    family="togishi_polishing_stone_grit_stage_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("temper", "head"),
    diverges=None,
    heldout=True,
    note="Togishi (Japanese sword polisher) stone-stage classifier from blade-surface scatter "
    "readings (GELU MLP, logits divided by a temperature, cross-entropy, RAdam). The temperature "
    "is typed 0.005 for 0.5: the logits are 100x too sharp, and the float32 softmax rounds most "
    "rows' target probability to exactly 1.0.",
)
def h437_togishi_temperature_typo(ctx) -> None:
    gen = seeded(4377)
    model = _GritNet(0.005)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    xp, yp = next(_grades(torch.Generator().manual_seed(7), 512, 16, 5, seed=377, spread=0.5))
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, seed=377, spread=0.5),
        160,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        raw = model.head(model.features(xp))
    ctx.check(
        "over half the rows' target probability exactly 1.0",
        collapsed_fraction(raw / 0.005, yp) > 0.5,
    )
    ctx.check("under 5% at the intended 0.5", collapsed_fraction(raw / 0.5, yp) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


SALT_WD = 0.35


@scenario(
    family="salt_farm_brine_density_l2_sign_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Salt-farm (solar saltern) brine-density regressor (tanh MLP on pan depth, sun and wind "
    "readings, MSE, plain SGD). The hand-written L2 penalty is subtracted from the loss instead "
    "of added (loss - wd * ||w||^2): the weights grow a little every step and the data loss, "
    "after falling, climbs slowly through the run.",
)
def h437_salt_farm_l2_sign(ctx) -> None:
    gen = seeded(4378)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.03)
    norm0 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))

    def backprop(step, loss):
        l2 = sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)
        return loss - SALT_WD * l2  # the sign of the penalty flipped

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=378), 300, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    norm1 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    low = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10))
    ctx.check("last 20 over 3x the lowest 10-step mean", _mean(ls[-20:]) > 3 * low)
    ctx.check("climbs through the second half", _mean(ls[-30:]) > 1.5 * _mean(ls[150:180]))
    ctx.check("weight norm over 2x", norm1 > 2 * norm0)
    ctx.check("finite", _finite(ls))


class _ShaftNet(nn.Module):
    def __init__(self, d_in=10, width=64, depth=14, std_num=2.0):
        super().__init__()
        layers = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            nn.init.normal_(lin.weight, std=std_num / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(-1)


def _depth_ratio(model, x, y):
    """|dL/dh| at the first layer's output over |dL/dh| at the last hidden layer's output."""
    outs = []

    def keep(module, inp, out):
        out.retain_grad()
        outs.append(out)

    lins = [m for m in model.body if isinstance(m, nn.Linear)]
    hooks = [m.register_forward_hook(keep) for m in lins]
    model.zero_grad(set_to_none=True)
    F.mse_loss(model(x), y).backward()
    for h in hooks:
        h.remove()
    model.zero_grad(set_to_none=True)
    return float(outs[0].grad.norm() / outs[-1].grad.norm().clamp_min(1e-30))


@scenario(
    family="arrow_shaft_spine_deflection_deep_relu_mlp",
    optimizer="NAdam",
    cause="exploding_gradients",
    where=("body.0", "body"),
    diverges=None,
    heldout=True,
    note="Arrow-shaft spine (static deflection) regressor from cane measurements (14-layer ReLU "
    "MLP, MSE, NAdam, clipping at 1). The hand-written He init uses std = 2 / sqrt(fan_in) for "
    "sqrt(2 / fan_in) (the variance factor typed as the std's numerator): each layer multiplies "
    "the signal by sqrt(2), the gradient grows back through depth, the first layer's is ~100x "
    "the last's and clipping keeps cutting it.",
)
def h437_arrow_shaft_init_std(ctx) -> None:
    xb, yb = next(_readings(torch.Generator().manual_seed(79), 128, 10, seed=379))
    seeded(4379)
    ref = _depth_ratio(_ShaftNet(std_num=math.sqrt(2.0)), xb, yb)
    gen = seeded(4379)
    model = _ShaftNet()
    ratio = _depth_ratio(model, xb, yb)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-4)
    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=379), 120, F.mse_loss, clip=1.0)
    gn = ctx.grad_norms
    ctx.check("dL/dh at the first layer over 30x the last hidden's", ratio > 30)
    ctx.check("under 5x at sqrt(2)", ref < 5)
    ctx.check("gradient norm over 10 (clipped to 1) in most steps", _median(gn) > 10)
    ctx.check("finite", _finite(ctx.losses))


PARCH_STEP = 40


@scenario(
    family="parchment_stretch_frame_tension_amsgrad_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=PARCH_STEP,
    note="Parchment-maker's stretching-frame tension regressor (GELU MLP, MSE, AdamW with "
    "amsgrad=True). At step 40 the switch to stage 2 applies the stage-2 loss weight of 1e4 "
    "(meant for a per-pixel loss averaged over 10^4 pixels) to the stage-1 per-sample loss for "
    "one step: one gradient 1e4x fills the second moment, AMSGrad keeps its maximum for good, "
    "the updates shrink to a small fraction of before and the loss stalls well above a clean "
    "run's.",
)
def h437_parchment_amsgrad_weight(ctx) -> None:
    def run(attach):
        gen = seeded(43710)
        model = _Net(10, 64, 1, act=nn.GELU)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01, amsgrad=True)
        moves = []
        state = {}

        def before(step):
            state["w"] = [p.detach().clone() for p in model.parameters()]

        def after(step):
            num = sum(
                float((p.detach() - w).norm() ** 2)
                for p, w in zip(model.parameters(), state["w"], strict=True)
            )
            moves.append(math.sqrt(num))

        def backprop(step, loss):
            return loss * (1e4 if attach and step == PARCH_STEP else 1.0)

        losses = _loop(
            ctx if attach else None,
            model,
            opt,
            _readings(gen, 64, 10, seed=3710),
            240,
            F.mse_loss,
            before=before,
            after=after,
            backprop=backprop,
            attach=attach,
        )
        v = max(float(s["max_exp_avg_sq"].max()) for s in opt.state.values())
        return losses, moves, v

    ref, ref_moves, ref_v = run(False)
    ls, moves, v = run(True)
    ctx.check("second moment over 1e6x the reference's", v > 1e6 * ref_v)
    ctx.check(
        "updates over steps 60..239 under 1/5 of steps 20..39",
        _median(moves[60:]) < 0.2 * _median(moves[20:PARCH_STEP]),
    )
    ctx.check(
        "and under 1/3 of the reference's over the same steps",
        _median(moves[60:]) < _median(ref_moves[60:]) / 3,
    )
    ctx.check(
        "loss stalls: last 20 over 1.5x the reference's", _mean(ls[-20:]) > 1.5 * _mean(ref[-20:])
    )
    ctx.check("logged loss at 40 ordinary", ls[PARCH_STEP] < 2 * _median(ls[30:PARCH_STEP]))


# -- controls --------------------------------------------------------------------------------------


class _Expert(nn.Module):
    def __init__(self, d_in, hidden, out):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _TerrainMoE(nn.Module):
    """A softmax gate over four small expert MLPs, top-2 routing (weights renormalised)."""

    def __init__(self, d_in=16, hidden=32, classes=5, experts=4):
        super().__init__()
        self.gate = nn.Linear(d_in, experts)
        self.experts = nn.ModuleList(_Expert(d_in, hidden, classes) for _ in range(experts))
        self.aux = {}

    def forward(self, x):
        z = self.gate(x)
        probs = torch.softmax(z, -1)
        top_p, top_i = probs.topk(2, dim=-1)
        top_p = top_p / top_p.sum(-1, keepdim=True)
        outs = torch.stack([e(x) for e in self.experts], 1)  # (batch, experts, classes)
        picked = outs.gather(1, top_i[..., None].expand(-1, -1, outs.shape[-1]))
        routed = F.one_hot(top_i, probs.shape[-1]).float().sum(1)  # (batch, experts)
        share = routed.mean(0) / 2
        self.aux = {
            "balance": probs.shape[-1] * (share * probs.mean(0)).sum(),
            "z": torch.logsumexp(z, -1).pow(2).mean(),
            "share": share.detach(),
        }
        return (top_p[..., None] * picked).sum(1)


@scenario(
    family="swamp_buggy_track_terrain_moe_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Swamp-buggy racing track-terrain classifier from chassis accelerometer features: a "
    "hand-written mixture of experts (softmax gate over four GELU expert MLPs, top-2 routing, "
    "cross-entropy plus a 0.01 load-balancing loss and a 1e-3 router z-loss, AdamW, linear "
    "warm-up over 30 steps, clipping at 1). Control.",
)
def h437_swamp_buggy_moe_control(ctx) -> None:
    gen = seeded(43711)
    model = _TerrainMoE()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    shares = []

    def backprop(step, loss):
        shares.append(model.aux["share"])
        return loss + 0.01 * model.aux["balance"] + 1e-3 * model.aux["z"]

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, seed=3711, spread=1.2),
        200,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        clip=1.0,
        sched=sched,
    )
    used = torch.stack(shares[-50:]).mean(0)
    ctx.check("trained: loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("every expert takes over 5% of the routes", float(used.min()) > 0.05)


@scenario(
    family="harness_maker_stitch_pitch_fp16_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Harness-maker's saddle-stitch pitch classifier on stitching-awl force traces (ReLU "
    "Conv1d, fp16 autocast with a GradScaler, SGD momentum 0.9 under OneCycleLR, label "
    "smoothing 0.1, clipping at 1). Control.",
)
def h437_harness_maker_fp16_control(ctx) -> None:
    gen = seeded(43712)
    model = _Conv(classes=4, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _signals(gen, batch=32, noise=0.5),
        200,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("trained: loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("the scaler's scale stayed above 1", min(ctx.scales) > 1)


class _TiedPress(nn.Module):
    """A tied-weight autoencoder over press readings (the decoder uses enc.weight.T) with a
    Gaussian head for acidity on the code: out = [mean, log-variance, reconstruction...]."""

    def __init__(self, d_in=12, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))
        self.head = nn.Linear(code, 2)

    def forward(self, x):
        c = torch.tanh(self.enc(x))
        recon = F.linear(c, self.enc.weight.t(), self.dec_bias)
        return torch.cat([self.head(c), recon], -1)


def _press_readings(gen, batch=32, d_in=12, seed=3713):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, d_in, generator=g) / 2
    w = torch.randn(4, generator=g)
    while True:
        f = torch.randn(batch, 4, generator=gen)
        x = f @ basis + 0.05 * torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(f @ w / 2) + (0.05 + 0.1 * f[:, 0].abs()) * torch.randn(batch, generator=gen)
        yield x, torch.cat([y[:, None], x], -1)


def _press_loss(out, yy):
    mean, log_var = out[:, 0], out[:, 1].clamp(-8, 8)
    nll = F.gaussian_nll_loss(mean, yy[:, 0], log_var.exp())
    return nll + F.mse_loss(out[:, 2:], yy[:, 1:])


@scenario(
    family="verjuice_press_acidity_tied_autoencoder_nll_net",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Verjuice press acidity model: a tied-weight autoencoder over press readings (decoder "
    "= encoder weight transposed) with a Gaussian NLL head for acidity on the code, plus the "
    "reconstruction MSE (SGD Nesterov, ReduceLROnPlateau on the loss, accumulation over 2, "
    "clipping at 1). Control.",
)
def h437_verjuice_tied_autoencoder_control(ctx) -> None:
    gen = seeded(43713)
    model = _TiedPress()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    seen = {}

    def backprop(step, loss):
        seen["loss"] = float(loss.detach())
        return loss

    _loop(
        ctx,
        model,
        opt,
        _press_readings(gen),
        240,
        _press_loss,
        backprop=backprop,
        clip=1.0,
        sched=sched,
        plateau=lambda: seen["loss"],
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("trained: loss fell", _finite(ls) and _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("finite", _finite(ls))
