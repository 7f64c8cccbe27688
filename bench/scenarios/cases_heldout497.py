"""Held-out set 497 (``h497_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a knifemaker edge-bevel ReLU classifier at an Adam lr typed 5e-1 for 5e-3 (dead ReLUs),
an ice-fishing auger-torque 12-layer ReLU MLP initialised with gain 1.4 on He init (exploding
through depth, SGD), a kite-surfing jump-height Huber regressor whose resumed step reads the loss
weight in percent (one gradient burst, SGD Nesterov), a harp string-gauge classifier fed raw
logits into nll_loss (output logits grow without bound, NAdam), a hailstone layer-count net whose
per-profile standardisation divides by a zero std on a stuck sensor (0/0 NaN, RMSprop), a salmon
weir run-count regressor given one shard of raw counter pulses (data outlier, Adamax), a sulky
racing split-time two-group regressor with fc1's group lr typed 1e-9 for 1e-3 (AdamW), a gilder
leaf-grade cosine classifier whose logit scale is initialised at 10 where exp() is taken
(softmax collapse, Adagrad), an ice-road convoy load regressor with its weight decay applied
with the wrong sign (slow climb, RAdam) and a sea-glass tumbling full-batch ReLU regressor
whose warm-up peaks at lr 1.0 typed for 0.1 (past 2/sharpness, SGD).

Controls: a thatcher's trade-jargon skip-gram with negative sampling over a generated corpus
(two embedding tables, sigmoid loss on dot products, SGD, linear decay); a caulker oakum
seam-leak classifier trained with a focal loss (gamma 2; SGD momentum, OneCycleLR, clipping);
a kazoo membrane-buzz GELU classifier under fp16 autocast with a GradScaler (AdamW, warm-up +
cosine, label smoothing, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
)


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
):
    """The file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``weight(step)`` multiplies the backpropagated loss, ``after(step, loss)`` runs after the
    optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        w = weight(step) if weight is not None else 1.0
        (w * loss).backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss.detach())
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


# -- 1. loss of plasticity: Adam lr typed 5e-1 for 5e-3 ---------------------------------------------


@scenario(
    family="knifemaker_edge_bevel_grade_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Knifemaker edge-bevel grade classifier (ReLU MLP on bevel angle, grind width, burr "
    "height and hardness readings, 5 grades, cross-entropy, Adam). The config's lr is typed 5e-1 "
    "for 5e-3: the first few huge Adam steps push most of the second layer's ReLUs negative on "
    "every input, they never fire again and the loss stays near chance.",
)
def h497_knifemaker_dead_relu(ctx) -> None:
    gen = seeded(4971)
    model = _Net(12, 64, 5)
    opt = torch.optim.Adam(model.parameters(), lr=5e-1)  # typed 5e-1 for 5e-3
    probe, _ = next(_grades(torch.Generator().manual_seed(9), 512, 12, 5, 4971))
    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe))
    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 12, 5, 4971), 200, F.cross_entropy, classifier=True
    )
    with torch.no_grad():
        dead = dead_fraction(model.features(probe))
    ctx.check("under 10% of act2's units dead at init", dead0 < 0.1)
    ctx.check("over 60% of act2's units dead at the end", dead > 0.6)
    ctx.check(
        "the loss stays near chance (last 20 over 0.7 ln 5)",
        _mean(losses[-20:]) > 0.7 * math.log(5),
    )
    ctx.check("finite", _finite(losses))


# -- 2. exploding gradients: He init with gain 1.4 in a 12-layer ReLU MLP ----------------------------


class _DeepNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, depth=12, gain=1.0):
        super().__init__()
        sizes = [d_in] + [hidden] * (depth - 1) + [1]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain * math.sqrt(2.0 / lin.in_features))
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.layers[-1].weight, std=1e-3)  # a small head, as usual
        self.outs: list[torch.Tensor] = []

    def forward(self, x):
        self.outs = []
        for i, lin in enumerate(self.layers):
            x = lin(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x.squeeze(-1)


@scenario(
    family="ice_fishing_augur_torque_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Ice-fishing auger torque regressor (12-layer ReLU MLP on ice thickness, blade wear, "
    "motor rpm and air temperature, MSE, plain SGD). The init helper multiplies He's std by a "
    "gain of 1.4 (a copied tanh gain): the backward signal grows about 1.4x per layer, the first "
    "layer's gradient is tens of times the last one's, and SGD's first steps blow the loss up.",
)
def h497_augur_deep_gain(ctx) -> None:
    gen = seeded(4972)
    model = _DeepNet(gain=1.4)
    opt = torch.optim.SGD(model.parameters(), lr=3e-4)
    ratios = []
    ref = _DeepNet(gain=1.0)
    xr, yr = next(_readings(torch.Generator().manual_seed(3), 64, 10, 4972))
    F.mse_loss(ref(xr), yr).backward()
    ref_ratio = float(ref.outs[0].grad.norm() / ref.outs[-2].grad.norm())
    ctx.attach(model, opt)
    losses = []
    batches = _readings(gen, 64, 10, 4972)
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g0 = float(model.outs[0].grad.norm())
        gl = float(model.outs[-2].grad.norm())
        ratios.append(g0 / max(gl, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss.detach())
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("dL/dz at layers.0 over 10x at layers.10 (first step)", ratios[0] > 10)
    ctx.check("under 3x with He's gain 1.0", ref_ratio < 3)
    peak = max((v if math.isfinite(v) else float("inf")) for v in losses)
    ctx.check("the loss blows up (over 1000x the first loss or non-finite)", peak > 1e3 * losses[0])


# -- 3. gradient spike: the resumed step reads its loss weight in percent ------------------------------

KITE_SPIKE = 110


@scenario(
    family="kite_surfing_jump_height_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=KITE_SPIKE,
    note="Kite-surfing jump-height regressor (ReLU MLP on wind speed, kite size, line tension and "
    "board speed, Huber loss, SGD Nesterov, clipping at 1). After a pre-emption at step 110 the "
    "resume code reads the loss weight from the checkpoint's config as 100 (percent) instead of "
    "1.0 for that one step: the gradient bursts 100x on an ordinary batch, clipping absorbs it.",
)
def h497_kite_resume_weight(ctx) -> None:
    gen = seeded(4973)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4973),
        220,
        F.huber_loss,
        weight=lambda s: 100.0 if s == KITE_SPIKE else 1.0,
        clip=1.0,
    )
    others = norms[KITE_SPIKE - 30 : KITE_SPIKE]
    ctx.check(
        "the gradient at 110 over 50x the median before", norms[KITE_SPIKE] > 50 * _median(others)
    )
    ctx.check(
        "the loss at 110 ordinary (under 2x the median before)",
        losses[KITE_SPIKE] < 2 * _median(losses[KITE_SPIKE - 30 : KITE_SPIKE]),
    )
    ctx.check("trained and finite", _fell(losses))


# -- 4. output logit divergence: nll_loss on raw logits ------------------------------------------------


@scenario(
    family="harp_string_gauge_raw_nll_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Harp string-gauge classifier (GELU MLP on pluck spectra, 6 gauges, NAdam). The model's "
    "LogSoftmax was removed when the loss was switched to cross_entropy, then the loss was "
    "switched back to nll_loss: nll_loss on raw logits is -logit[y], unbounded below, and the "
    "head's logits grow without bound.",
)
def h497_harp_raw_nll(ctx) -> None:
    gen = seeded(4974)
    model = _Net(16, 48, 6, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    probe, _ = next(_grades(torch.Generator().manual_seed(7), 256, 16, 6, 4974))
    with torch.no_grad():
        start = float(model(probe).abs().max())
    peaks = []

    def after(step, loss):
        if step % 20 == 0:
            with torch.no_grad():
                peaks.append(float(model(probe).abs().max()))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 4974),
        240,
        F.nll_loss,
        classifier=True,
        after=after,
    )
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * start)
    ctx.check(
        "max |logit| still growing in the last third", peaks[-1] > 1.2 * peaks[len(peaks) * 2 // 3]
    )
    ctx.check("the loss keeps falling below zero", losses[-1] < -10)


# -- 5. nonfinite: per-profile standardisation of a stuck sensor -------------------------------------

HAIL_NAN = 90


class _Standardise(nn.Module):
    def forward(self, x):
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)  # no epsilon


class _HailNet(nn.Module):
    def __init__(self, d_in=24, hidden=48):
        super().__init__()
        self.norm = _Standardise()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(self.norm(x)))))
        return self.head(h).squeeze(-1)


@scenario(
    family="hailstone_layer_count_zero_std_norm_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("norm",),
    diverges=HAIL_NAN,
    heldout=True,
    onset=HAIL_NAN,
    note="Hailstone layer-count regressor (ReLU MLP on 24-point density profiles of sliced "
    "hailstones, MSE, RMSprop). Each profile is standardised by its own mean and std with no "
    "epsilon; at step 90 a batch holds profiles from a stuck densitometer (all readings equal), "
    "std 0, 0/0 gives NaN and the loss is NaN at step 90.",
)
def h497_hailstone_zero_std(ctx) -> None:
    gen = seeded(4975)
    model = _HailNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(4975)
    w = torch.randn(24, generator=g)

    def data():
        while True:
            x = torch.randn(64, 24, generator=gen) + torch.linspace(0, 2, 24)
            z = (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)
            yield x, torch.tanh(z @ w / 4)

    def alter(step, x, y):
        if step == HAIL_NAN:
            x = x.clone()
            x[:4] = 0.73  # the stuck densitometer
        return x, y

    losses, _ = _train(ctx, model, opt, data(), 160, F.mse_loss, alter=alter)
    ctx.check("finite before step 90", _finite(losses[:HAIL_NAN]))
    ctx.check("the loss is NaN at step 90", len(losses) > HAIL_NAN and math.isnan(losses[HAIL_NAN]))
    ctx.check(
        "it had trained before", _mean(losses[HAIL_NAN - 10 : HAIL_NAN]) < 0.7 * _mean(losses[:10])
    )


# -- 6. data outlier: one shard of raw counter pulses --------------------------------------------------

WEIR_BAD = 120


@scenario(
    family="weir_salmon_run_count_silu_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=WEIR_BAD,
    note="Salmon-weir run-count regressor (SiLU MLP on river flow, water temperature, turbidity "
    "and resistivity-counter features, MSE, Adamax, clipping at 5). One shard was exported "
    "before the counter's pulse-to-fish conversion: its counter features are raw pulses, about "
    "300x the scale; the batch at step 120 gives a loss and gradient burst and the run recovers.",
)
def h497_weir_raw_pulses(ctx) -> None:
    gen = seeded(4976)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == WEIR_BAD:
            x = x.clone()
            x[:, 6:] *= 300.0  # raw pulses
        return x, y

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4976), 240, F.mse_loss, alter=alter, clip=5.0
    )
    before = losses[WEIR_BAD - 20 : WEIR_BAD]
    ctx.check("the loss at 120 over 10x the median before", losses[WEIR_BAD] > 10 * _median(before))
    ctx.check(
        "the gradient at 120 over 10x the median before",
        norms[WEIR_BAD] > 10 * _median(norms[WEIR_BAD - 20 : WEIR_BAD]),
    )
    ctx.check(
        "recovers (last 20 under 2x the 20 before the shard)",
        _mean(losses[-20:]) < 2 * _mean(before),
    )
    ctx.check("finite", _finite(losses))


# -- 7. update ratio: fc1's group lr typed 1e-9 for 1e-3 ------------------------------------------------


@scenario(
    family="sulky_racing_split_time_two_group_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Sulky-racing split-time regressor (ReLU MLP on track condition, horse weight, gait "
    "cadence and sulky wheel pressure, MSE, AdamW with two param groups). The input layer's "
    "group lr is typed 1e-9 for 1e-3: fc1 barely moves (updates under 1e-6 of its weights) while "
    "the rest trains, and the loss plateaus above what the network can reach.",
)
def h497_sulky_group_typo(ctx) -> None:
    gen = seeded(4977)
    model = _Net(10, 48, 1)
    opt = torch.optim.AdamW(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},  # typed 1e-9 for 1e-3
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 1e-3},
        ],
        weight_decay=0.0,
    )
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4977), 200, F.mse_loss)
    m1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    m2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", m1 < 1e-6)
    ctx.check("fc2 moved over 5% of its norm", m2 > 0.05)
    ctx.check("the loss fell and is finite", _fell(losses, ratio=0.9))


# -- 8. softmax collapse: logit scale initialised at 10 where exp() is taken ------------------------


class _CosineHead(nn.Module):
    def __init__(self, dim, classes, log_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(log_scale)))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.logit_scale.exp() * cos


class _GilderNet(nn.Module):
    def __init__(self, d_in=14, hidden=48, classes=6, log_scale=10.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = _CosineHead(hidden, classes, log_scale)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    family="gilder_leaf_grade_logit_scale_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Gilder's gold-leaf grade classifier (GELU MLP with a cosine head on leaf thickness, "
    "reflectance and lay-down features, 6 grades, cross-entropy, Adagrad). The head's learnable "
    "logit scale is stored as a log and exponentiated, but initialised at 10 (meaning scale 10) "
    "instead of log 10: the scale is e^10 = 22026, the softmax saturates and most rows' target "
    "probability rounds to exactly 1.0 (or 0).",
)
def h497_gilder_logit_scale(ctx) -> None:
    gen = seeded(4978)
    model = _GilderNet(log_scale=10.0)  # should be math.log(10.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    probe, py = next(_grades(torch.Generator().manual_seed(8), 256, 14, 6, 4978))
    fracs = []

    def after(step, loss):
        if step % 20 == 19:
            with torch.no_grad():
                fracs.append(collapsed_fraction(model(probe), py))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 4978),
        160,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ref = _GilderNet(log_scale=math.log(10.0))
    ref.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k != "head.logit_scale"}, strict=False
    )
    with torch.no_grad():
        ref_frac = collapsed_fraction(ref(probe), py)
    ctx.check("over half the rows' target probability exactly 1.0", _mean(fracs[-3:]) > 0.5)
    ctx.check("under 5% at the intended scale 10", ref_frac < 0.05)
    ctx.check("finite", _finite(losses))


# -- 9. loss divergence: weight decay with the wrong sign ------------------------------------------------


@scenario(
    family="ice_road_convoy_load_wd_sign_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Ice-road convoy load regressor (SiLU MLP on ice thickness, air temperature, truck "
    "spacing and speed, MSE, RAdam). The hand-written decoupled weight decay after each step is "
    "p.mul_(1 + lr * wd) instead of 1 - lr * wd: the weights inflate a little every step, and "
    "after fitting the loss climbs slowly with no jump.",
)
def h497_ice_road_wd_sign(ctx) -> None:
    gen = seeded(4979)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    wd = 2.0
    n0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 3e-3 * wd)  # sign bug: should be 1 - lr * wd

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4979), 260, F.mse_loss, after=after)
    n1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    best = min(_mean(losses[i : i + 10]) for i in range(0, len(losses) - 10, 5))
    ctx.check("trained first (best under 0.7x the start)", best < 0.7 * _mean(losses[:10]))
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("the weights inflated over 3x", n1 > 3 * n0)
    ctx.check("no NaN (a slow climb)", _finite(losses))
    jumps = [losses[i + 1] / max(losses[i], 1e-12) for i in range(len(losses) - 1)]
    ctx.check("no single step over 5x the one before", max(jumps) < 5)


# -- 10. sharpness above limit: warm-up peak lr typed 5e-1 for 5e-2 ---------------------------------


def _sharpness(model, x, y, iters=20):
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
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
    family="sea_glass_tumbling_frosting_full_batch_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Sea-glass tumbling frosting regressor (SiLU MLP on grit size, tumble hours, drum speed "
    "and glass hardness, MSE, full-batch SGD with a linear warm-up). The warm-up's peak lr is "
    "typed 1e-0 for 1e-1: as the lr ramps up it passes 2/sharpness of the loss surface and the "
    "loss blows up.",
)
def h497_sea_glass_peak_lr(ctx) -> None:
    gen = seeded(4980)
    model = _Net(10, 64, 1, act=nn.SiLU)
    x, y = next(_readings(gen, 256, 10, 4980))
    peak, warm = 1.0, 20  # typed 1e-0 for 1e-1
    opt = torch.optim.SGD(model.parameters(), lr=peak / warm)
    products = []

    def before(step):
        lr = peak * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 2 == 0 and step <= warm:
            products.append(lr * _sharpness(model, x, y))

    def full():
        while True:
            yield x, y

    losses, _ = _train(ctx, model, opt, full(), 150, F.mse_loss, before=before)
    first = losses[0]
    peak_loss = max((v if math.isfinite(v) else float("inf")) for v in losses)
    seen = [v for v in products if math.isfinite(v)]
    ctx.check("lr * sharpness passed 2 during the warm-up", bool(seen) and max(seen) > 2)
    ctx.check("lr * sharpness under 2 at the first step", bool(seen) and seen[0] < 2)
    ctx.check("the loss blows up (over 100x the start or non-finite)", peak_loss > 100 * first)
    ctx.check("it trained first (a loss under 0.8x the start)", min(losses[:warm]) < 0.8 * first)


# -- 11. healthy: skip-gram with negative sampling over a generated trade-jargon corpus -------------


class _SkipGram(nn.Module):
    def __init__(self, vocab, dim):
        super().__init__()
        self.center = nn.Embedding(vocab, dim)
        self.context = nn.Embedding(vocab, dim)
        nn.init.uniform_(self.center.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.context.weight)

    def forward(self, c, o, neg):
        u = self.center(c)
        pos = (u * self.context(o)).sum(-1)
        negs = torch.einsum("bd,bkd->bk", u, self.context(neg))
        return -(F.logsigmoid(pos) + F.logsigmoid(-negs).sum(-1)).mean()


@scenario(
    family="thatcher_trade_jargon_sgns_skipgram",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Thatcher's trade-jargon word2vec (skip-gram with negative sampling: a centre and a "
    "context embedding table, a sigmoid loss on their dot products, 5 negatives drawn from the "
    "unigram distribution to the 3/4, window 2) over a generated corpus of sentences about "
    "reed, straw, spars, ridges and tools; plain SGD with word2vec's linear lr decay. Healthy.",
)
def h497_thatcher_skipgram(ctx) -> None:
    gen = seeded(4981)
    vocab, topics, per = 200, 10, 20
    sents = []
    for _ in range(600):
        t = int(torch.randint(0, topics, (1,), generator=gen))
        own = t * per + torch.randint(0, per, (12,), generator=gen)
        other = torch.randint(0, vocab, (12,), generator=gen)
        sents.append(torch.where(torch.rand(12, generator=gen) < 0.8, own, other))
    corpus = torch.stack(sents)
    pairs = []
    for off in (-2, -1, 1, 2):
        lo, hi = max(0, -off), 12 - max(0, off)
        pairs.append(
            torch.stack([corpus[:, lo:hi].flatten(), corpus[:, lo + off : hi + off].flatten()], 1)
        )
    pairs = torch.cat(pairs)
    counts = torch.bincount(corpus.flatten(), minlength=vocab).float()
    noise = counts.pow(0.75)
    noise /= noise.sum()
    model = _SkipGram(vocab, 32)
    steps = 250
    opt = torch.optim.SGD(model.parameters(), lr=20.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(1e-2, 1 - s / steps))

    def batches():
        while True:
            idx = torch.randint(0, len(pairs), (256,), generator=gen)
            neg = torch.multinomial(noise, 256 * 5, replacement=True, generator=gen).view(256, 5)
            yield (pairs[idx, 0], neg), pairs[idx, 1]

    ctx.attach(model, opt)
    losses = []
    it = batches()
    for _step in range(steps):
        (c, neg), o = next(it)
        loss = model(c, o, neg)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss.detach())
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    emb = F.normalize(model.center.weight.detach(), dim=-1)
    sim = emb @ emb.T
    topic = torch.arange(vocab) // per
    same = (topic[:, None] == topic[None, :]) & ~torch.eye(vocab, dtype=torch.bool)
    diff = topic[:, None] != topic[None, :]
    ctx.check("the loss fell (last 10 under 0.7x the first 10)", _fell(losses))
    ctx.check(
        "same-topic words closer than cross-topic by 0.2",
        float(sim[same].mean()) > float(sim[diff].mean()) + 0.2,
    )


# -- 12. healthy: focal loss (gamma 2) -------------------------------------------------------------


def _focal(logits, y, gamma=2.0):
    logp = F.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


@scenario(
    family="caulker_oakum_seam_leak_focal_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Caulker's oakum seam-leak classifier (ReLU MLP on seam width, oakum density, pitch "
    "temperature and hull-flex readings, 4 leak grades, focal loss with gamma 2, SGD momentum "
    "0.9, OneCycleLR, clipping at 1). As examples become easy their focal weight (1 - p)^2 fades "
    "and so do their gradients. Healthy.",
)
def h497_caulker_focal(ctx) -> None:
    gen = seeded(4982)
    model = _Net(12, 64, 4)
    steps = 240
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    probe, py = next(_grades(torch.Generator().manual_seed(5), 512, 12, 4, 4982, spread=1.6))

    def easy_weight():
        with torch.no_grad():
            p = torch.softmax(model(probe), -1)
            pt = p.gather(1, py[:, None]).squeeze(1)
            right = p.argmax(-1) == py
            return float(((1 - pt[right]) ** 2).mean()) if right.any() else 1.0

    w0 = easy_weight()
    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 4, 4982, spread=1.6),
        steps,
        _focal,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    w1 = easy_weight()
    ctx.check("the loss fell (last 10 under 0.5x the first 10)", _fell(losses, ratio=0.5))
    ctx.check("the easy examples' focal weight faded under 0.3x", w1 < 0.3 * w0)


# -- 13. healthy: fp16 autocast + GradScaler ---------------------------------------------------------


@scenario(
    family="kazoo_membrane_buzz_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kazoo membrane-buzz classifier (GELU MLP on buzz spectra, 5 membrane states, "
    "cross-entropy with label smoothing 0.1, AdamW with weight decay, fp16 autocast and a "
    "GradScaler, linear warm-up then cosine decay, clipping at 1 after unscale). Healthy.",
)
def h497_kazoo_fp16(ctx) -> None:
    gen = seeded(4983)
    model = _Net(16, 64, 5, act=nn.GELU)
    steps = 220
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def lr_at(s):
        return (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = _grades(gen, 64, 16, 5, 4983, spread=1.4)
    losses, scales = [], []
    for _step in range(steps):
        x, y = next(batches)
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
        sched.step()
        scales.append(float(scaler.get_scale()))
        ctx.scales.append(scales[-1])
        losses.append(float(loss.detach()))
        ctx.step(loss.detach())
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("the loss fell (last 10 under 0.6x the first 10)", _fell(losses, ratio=0.6))
    ctx.check("the scale never fell below 1/16 of its start", min(scales) >= 2.0**6)
