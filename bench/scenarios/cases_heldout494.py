"""Held-out set 494 (``h494_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a hardingfele sympathetic-string resonance regressor whose L2 penalty is subtracted
instead of added (a slow climb, SGD momentum), a latte-art pour-pattern classifier whose config
stores 1/T and divides by it (softmax collapse, RMSprop), a shadow-band photodiode regressor
under fp16 autocast fed raw 16-bit ADC counts from a new shard (fp16 overflow, Adam +
GradScaler), a pendulum-clock escapement-drift regressor whose head group's lr is typed 5e-7 for
5e-2 (head frozen, SGD Nesterov), a chain-survey tape-sag regressor whose window norm uses a
one-pass variance with no epsilon (a stuck logger gives 0/0, Adagrad), a sericulture
silk-yield regressor with one shard of cocoon weights in mg (Huber, SGD momentum, clipping), a
knitting-gauge deep ReLU classifier initialised with gain 2.0 for sqrt(2) (exploding through
depth, SGD), a nuno-felting fault tagger whose loss normaliser is reset one step early (one
gradient burst, AdamW, clipping), a block-print ink-density regressor under OneCycleLR with
max_lr typed 3.0 for 0.3 (past the stability limit, SGD) and a monotype-caster matrix-wear
classifier whose hidden biases are initialised at -2.5 for +0.1 (dead ReLUs, Adamax).

Controls: a chajchas rattle decay-time Bayesian neural network trained by Bayes by backprop
(Gaussian NLL + KL to a Gaussian prior, Adam); a Baily's-beads bead-count classifier whose
augmentation (noise and random scaling) switches on at step 100 (RAdam, cosine); a
solar-corona streamer classifier under fp16 autocast with a GradScaler (AdamW, OneCycleLR,
label smoothing, accumulation 2, clipping).
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
    alter=None,
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    attach=True,
):
    """The file's loop: ``alter(step, x, y)`` changes a batch, ``backprop(step, loss, out, y)``
    is the loss actually backpropagated, ``after(step, loss)`` runs after the optimizer step.
    Stops after a non-finite loss once ``ctx.step`` has seen it. ``attach=False``: a
    reference run."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        model.train()
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier and attach:
            ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, loss, out, y) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        shown = float(loss.detach())
        losses.append(shown)
        if attach:
            ctx.step(loss.detach())
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


def _weight_norm(model) -> float:
    return float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))


# -- 1. loss divergence: the L2 penalty subtracted instead of added ---------------------------------


@scenario(
    family="hardingfele_sympathetic_resonance_l2_sign_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Hardanger-fiddle sympathetic-string resonance regressor (tanh MLP on bridge, "
    "string-tension and body-wood features, MSE, SGD momentum). The hand-written L2 penalty is "
    "written loss - wd * ||w||^2 instead of loss + wd * ||w||^2: after fitting, the weights are "
    "pushed outward every step and the data loss climbs slowly with no other mechanism.",
)
def h494_hardingfele_l2_sign(ctx) -> None:
    gen = seeded(4941)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9)
    wd = 0.25
    w0 = _weight_norm(model)

    def backprop(step, loss, out, y):
        penalty = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - wd * penalty  # the sign typo: meant loss + wd * penalty

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4941), 300, F.mse_loss, backprop=backprop
    )
    best = min(_mean(losses[i : i + 10]) for i in range(0, 120, 5))
    ctx.check(
        "trained first (best 10-step mean under 0.7x the start)", best < 0.7 * _mean(losses[:10])
    )
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("the weight norm grew over 2x", _weight_norm(model) > 2 * w0)
    ctx.check("no NaN (a slow climb, not a blow-up)", _finite(losses))


# -- 2. softmax collapse: the config stores 1/T and the code divides by it ------------------------


class _PourNet(nn.Module):
    def __init__(self, d_in=14, hidden=48, classes=5, inv_temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.inv_temperature = inv_temperature

    def forward(self, x):
        logits = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return logits / self.inv_temperature  # the config's value is 1/T, not T


@scenario(
    family="latte_art_pour_pattern_temperature_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Latte-art pour-pattern classifier (heart, tulip, rosetta, swan, fern; GELU MLP on "
    "jug height, pour rate, tilt and milk-foam features, cross-entropy, RMSprop). The config "
    "field is the inverse temperature 1/T = 0.01 but the model divides the logits by it as if "
    "it were T: the logits are scaled 100x, and most rows' softmax rounds the target "
    "probability to exactly 1.0.",
)
def h494_latte_art_inverse_temperature(ctx) -> None:
    seeded(4942)
    model = _PourNet(inv_temperature=0.01)
    ref = _PourNet(inv_temperature=1.0)
    ref.load_state_dict(model.state_dict())
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(49420), 256, 14, 5, 4942))

    def run(net, attach):
        opt = torch.optim.RMSprop(net.parameters(), lr=1e-3)
        data = _grades(torch.Generator().manual_seed(49421), 64, 14, 5, 4942)
        return _train(ctx, net, opt, data, 200, F.cross_entropy, classifier=True, attach=attach)

    run(ref, False)
    losses, _ = run(model, True)
    with torch.no_grad():
        frac = collapsed_fraction(model(probe_x), probe_y)
        ref_frac = collapsed_fraction(ref(probe_x), probe_y)
    ctx.check("over half the rows' target probability is exactly 1.0", frac > 0.5)
    ctx.check("with T read correctly under 5% of rows are", ref_frac < 0.05)
    ctx.check("the run stays finite", _finite(losses))


# -- 3. amp overflow: a shard of raw 16-bit ADC counts under fp16 autocast -------------------------

SHADOW_ONSET = 90


class _BandNet(nn.Module):
    def __init__(self, window=128, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(window, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    family="shadow_band_eclipse_photodiode_adc_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=SHADOW_ONSET,
    heldout=True,
    onset=SHADOW_ONSET,
    note="Eclipse shadow-band contrast regressor (ReLU MLP on 128-sample photodiode windows, "
    "MSE, Adam, fp16 autocast with a GradScaler). Windows are normally standardised with the calibration mean and spread, (counts - 58000) / 4000; "
    "from step 90 a new recorder's shard comes in a file format the loader does not "
    "normalise, raw 16-bit counts of 54000-62000: fc1's fp16 output overflows to inf (float32 "
    "would hold it), the loss is non-finite and the scaler skips step after step.",
)
def h494_shadow_band_raw_adc(ctx) -> None:
    gen = seeded(4943)
    model = _BandNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    t = torch.linspace(0, 1, 128)
    losses, scales, peaks, fp32_peak = [], [], [], []
    for step in range(200):
        level = torch.rand(64, generator=gen)
        contrast = 0.2 * torch.rand(64, generator=gen)
        freq = 4 + 8 * torch.rand(64, 1, generator=gen)
        phase = 6.28 * torch.rand(64, 1, generator=gen)
        counts = (
            54000
            + 8000 * level[:, None]
            + 6000 * contrast[:, None] * torch.sin(6.28 * freq * t + phase)
        )
        counts = counts + 200 * torch.randn(64, 128, generator=gen)
        x = (counts - 58000.0) / 4000.0 if step < SHADOW_ONSET else counts  # the unnormalised shard
        y = 2 * level - 1 + 5 * contrast
        with torch.autocast("cpu", dtype=torch.float16):
            h1 = model.fc1(x)
            out = model(x)
        peaks.append(float(h1.detach().float().abs().max()))
        if step == SHADOW_ONSET:
            with torch.no_grad():
                fp32_peak.append(float(model.fc1(x).abs().max()))
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        scales.append(float(scaler.get_scale()))
        ctx.scales.append(scales[-1])
        losses.append(float(loss.detach()))
        ctx.step(loss.detach())
        opt.zero_grad(set_to_none=True)
        if len(losses) > 20 and not any(math.isfinite(v) for v in losses[-20:]):
            break  # twenty non-finite steps in a row: the run is dead
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the first non-finite loss is at step 90", first_bad == SHADOW_ONSET)
    ctx.check(
        "finite and falling before the shard",
        _finite(losses[:SHADOW_ONSET]) and _mean(losses[80:90]) < 0.7 * _mean(losses[:10]),
    )
    ctx.check("fc1's fp16 output hit inf", any(math.isinf(v) for v in peaks[SHADOW_ONSET:]))
    ctx.check(
        "the same batch in float32 exceeds fp16's max but stays finite",
        bool(fp32_peak) and math.isfinite(fp32_peak[0]) and fp32_peak[0] > 65504,
    )
    ctx.check("the scaler's scale fell over 1000x", min(scales) < scales[0] / 1000)


# -- 4. update ratio: the head's param group at lr 5e-7 for 5e-2 -----------------------------------


@scenario(
    family="pendulum_clock_escapement_drift_two_group_regressor",
    optimizer="SGD Nesterov",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Pendulum-clock escapement rate-drift regressor (SiLU MLP on pallet, crutch, bob "
    "temperature and barometric features, MSE, SGD Nesterov with two param groups). The "
    "re-initialised head was meant to get lr 5e-2 but its group is typed 5e-7: the head's "
    "updates are about 1e-5 of the trunk's relative size, it stays at its random init while the "
    "trunk trains and the loss still falls.",
)
def h494_pendulum_clock_head_lr_typo(ctx) -> None:
    gen = seeded(4944)
    model = _Net(10, 48, 1, act=nn.SiLU)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.SGD(
        [{"params": trunk}, {"params": model.head.parameters(), "lr": 5e-7}],
        lr=0.02,
        momentum=0.9,
        nesterov=True,
    )
    wh = model.head.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4944), 220, F.mse_loss)
    dh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    ctx.check("the head moved under 1e-3 of its norm", dh < 1e-3)
    ctx.check("fc1 moved over 5% of its norm", d1 > 0.05)
    ctx.check("the loss still fell (no blow-up)", _fell(losses, ratio=0.8))


# -- 5. nonfinite: a one-pass variance with no epsilon meets a stuck logger ---------------------------

CHAIN_STEP = 120


class _OnePassNorm(nn.Module):
    """Standardises each window with a one-pass variance, E[x^2] - E[x]^2 (no epsilon)."""

    def forward(self, x):
        m = x.mean(-1, keepdim=True)
        var = (x * x).mean(-1, keepdim=True) - m * m
        return (x - m) / torch.sqrt(var)


class _SagNet(nn.Module):
    def __init__(self, window=32, hidden=40):
        super().__init__()
        self.norm = _OnePassNorm()
        self.fc1 = nn.Linear(window + 1, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = torch.cat([self.norm(x), x.mean(-1, keepdim=True) / 100.0], -1)
        return self.head(self.act1(self.fc1(z))).squeeze(-1)


@scenario(
    family="chain_survey_tape_sag_one_pass_norm_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("norm",),
    diverges=CHAIN_STEP,
    heldout=True,
    onset=CHAIN_STEP,
    note="Chain-survey tape-sag correction regressor (ReLU MLP on 32-reading tension-logger "
    "windows in newtons, standardised per window, MSE, Adagrad). The window norm computes the "
    "variance in one pass as E[x^2] - E[x]^2 with no epsilon; at step 120 a stuck logger "
    "repeats one reading across a whole window, the variance is 0 (or rounds negative), and "
    "0/0 or sqrt of a negative makes the loss NaN.",
)
def h494_chain_survey_stuck_logger(ctx) -> None:
    gen = seeded(4945)
    model = _SagNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(49450)
    w = torch.randn(32, generator=g)
    stuck_var = []

    def data():
        while True:
            base = 80 + 10 * torch.rand(64, 1, generator=gen)
            wiggle = torch.randn(64, 32, generator=gen)
            x = base + 2.0 * wiggle
            y = torch.tanh(wiggle @ w / 6) + (base.squeeze(-1) - 85) / 5
            yield x, y

    def alter(step, x, y):
        if step == CHAIN_STEP:
            x = x.clone()
            x[7] = 87.25  # the stuck logger (0.25 N resolution)
            m = x[7].mean()
            stuck_var.append(float((x[7] * x[7]).mean() - m * m))
        return x, y

    losses, _ = _train(ctx, model, opt, data(), 220, F.mse_loss, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the loss is NaN at step 120", first_bad == CHAIN_STEP and math.isnan(losses[-1]))
    ctx.check("the stuck window's one-pass variance is <= 0", bool(stuck_var) and stuck_var[0] <= 0)
    ctx.check("finite and falling before it", _fell(losses[:CHAIN_STEP]))


# -- 6. data outlier: one shard of cocoon weights in mg instead of g ------------------------------

SILK_STEP = 140


@scenario(
    family="sericulture_cocoon_silk_yield_huber_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SILK_STEP,
    note="Sericulture silk-yield regressor (ReLU MLP on cocoon weight, shell ratio, rearing "
    "temperature and mulberry-leaf features, Huber loss, SGD momentum, clipping at 1). One "
    "batch at step 140 comes from a farm whose sheet records cocoon weights in milligrams, "
    "1000x the rest: the loss and gradient spike at that batch; clipping limits the step and "
    "the run recovers.",
)
def h494_sericulture_mg_batch(ctx) -> None:
    gen = seeded(4946)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == SILK_STEP:
            x = x.clone()
            x[:, 0] = 1000 * x[:, 0].abs() + 1000  # cocoon weight in mg, not standardised g
        return x, y

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4946), 240, F.huber_loss, alter=alter, clip=1.0
    )
    before = losses[SILK_STEP - 20 : SILK_STEP]
    ctx.check("the loss at step 140 over 50x the 20 before", losses[SILK_STEP] > 50 * _mean(before))
    ctx.check(
        "the gradient at step 140 over 20x the median",
        norms[SILK_STEP] > 20 * _median(norms[SILK_STEP - 20 : SILK_STEP]),
    )
    ctx.check(
        "recovers (last 10 under 2x the mean before)", _mean(losses[-10:]) < 2 * _mean(before)
    )
    ctx.check("finite throughout", _finite(losses))


# -- 7. exploding gradients: a deep ReLU stack initialised with gain 2.0 --------------------------


class _DeepGauge(nn.Module):
    def __init__(self, d_in=16, width=48, depth=10, classes=6, gain=1.4142):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, classes)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


@scenario(
    family="knitting_gauge_stitch_count_deep_relu_classifier",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Knitting-gauge stitch-count classifier (ten-layer ReLU MLP on yarn weight, needle "
    "size, fibre and tension features, six gauge classes, cross-entropy, plain SGD). The "
    "hand-written init uses std = gain / sqrt(fan_in) with gain 2.0 where He's sqrt(2) was "
    "meant: each layer amplifies by about 1.4, the gradient grows backwards through depth to "
    "the first layer and the run blows up.",
)
def h494_knitting_gauge_gain(ctx) -> None:
    gen = seeded(4947)
    model = _DeepGauge(gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    ratios, first, losses = [], [], []
    data = _grades(gen, 64, 16, 6, 4947)
    ctx.attach(model, opt)
    for _step in range(200):
        x, y = next(data)
        ctx.targets(y)
        hs = []
        h = x
        for layer in model.layers:
            h = layer(h)
            h.retain_grad()
            hs.append(h)
            h = F.relu(h)
        loss = F.cross_entropy(model.head(h), y)
        loss.backward()
        ratios.append(float(hs[0].grad.norm()) / max(float(hs[-1].grad.norm()), 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        first.append(ctx.grad_norms[-1])
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss.detach())
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check(
        "the gradient at layers.0's output over 10x that at the last layer's, at init",
        ratios[0] > 10,
    )
    ctx.check(
        "the loss blew up (NaN or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )
    ctx.check("the gradient norm grew over 100x", max(first) > 100 * first[0] or not _finite(first))


# -- 8. gradient spike: the loss normaliser reset one step early ------------------------------------

NUNO_STEP = 150


@scenario(
    family="nuno_felting_fault_multilabel_bce_tagger",
    optimizer="AdamW",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=NUNO_STEP,
    note="Nuno-felting fault tagger (six faults: pucker, thin spot, fibre migration, "
    "bubbling, shrinkage, silk show-through; ReLU MLP on wool weight, silk gauze, agitation "
    "and water-temperature features, BCE with logits summed and divided by a running count, "
    "AdamW, clipping at 1). The epoch-end hook resets the count one step early, so at step 150 "
    "the summed loss is divided by max(count, 1) = 1 instead of 384: one gradient burst of "
    "about 384x that has nothing to do with the data.",
)
def h494_nuno_felting_normaliser_reset(ctx) -> None:
    gen = seeded(4948)
    model = _Net(12, 48, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(49480)
    w = torch.randn(12, 6, generator=g)

    def data():
        while True:
            x = torch.randn(64, 12, generator=gen)
            p = torch.sigmoid(1.5 * x @ w / math.sqrt(12))
            yield x, (torch.rand(64, 6, generator=gen) < p).float()

    def backprop(step, loss, out, y):
        summed = F.binary_cross_entropy_with_logits(out, y, reduction="sum")
        count = 0 if step == NUNO_STEP else y.numel()  # reset one step early
        return summed / max(count, 1)

    losses, norms = _train(
        ctx,
        model,
        opt,
        data(),
        240,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    before = losses[NUNO_STEP - 20 : NUNO_STEP]
    ctx.check(
        "the gradient at step 150 over 50x the median",
        norms[NUNO_STEP] > 50 * _median(norms[NUNO_STEP - 20 : NUNO_STEP]),
    )
    ctx.check(
        "the loss at 150 is ordinary (the batch is not the cause)",
        losses[NUNO_STEP] < 1.5 * max(before),
    )
    ctx.check("trained before it", _fell(losses[:NUNO_STEP], ratio=0.9))
    ctx.check(
        "recovers (last 10 under 1.2x the mean before)", _mean(losses[-10:]) < 1.2 * _mean(before)
    )


# -- 9. sharpness above limit: OneCycleLR with max_lr typed 3.0 for 0.3 ----------------------------


def _top_eigenvalue(model, x, y, iters=30) -> float:
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="block_print_ink_density_onecycle_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Woodblock-print ink-density regressor (tanh MLP on block pressure, paper moisture, "
    "pigment load and baren-stroke features, MSE, plain SGD under OneCycleLR). max_lr is typed "
    "3.0 for 0.3: the warm-up first trains the model, then carries the lr past 2 / sharpness "
    "and the loss oscillates and blows up; with 0.3 the same run trains.",
)
def h494_block_print_onecycle_max_lr(ctx) -> None:
    seeded(4949)
    model = _Net(10, 48, 1, act=nn.Tanh)
    ref = _Net(10, 48, 1, act=nn.Tanh)
    ref.load_state_dict(model.state_dict())
    snaps, lrs = [], []

    def run(net, max_lr, attach):
        opt = torch.optim.SGD(net.parameters(), lr=max_lr / 100)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=max_lr, total_steps=300, pct_start=0.9, div_factor=100
        )

        def after(step, loss):
            if attach:
                snaps.append({k: v.clone() for k, v in net.state_dict().items()})
                lrs.append(opt.param_groups[0]["lr"])

        data = _readings(torch.Generator().manual_seed(49490), 64, 10, 4949)
        return _train(ctx, net, opt, data, 300, F.mse_loss, sched=sched, after=after, attach=attach)

    ref_losses, _ = run(ref, 0.3, False)
    losses, _ = run(model, 3.0, True)
    low = min(range(len(losses)), key=lambda i: losses[i] if math.isfinite(losses[i]) else 1e30)
    blow = next((i for i in range(low, len(losses)) if not (losses[i] < 10 * losses[low])), None)
    ctx.check("with max_lr 0.3 the run trains", _fell(ref_losses))
    ctx.check("trained first", _mean(losses[low : low + 1]) < 0.5 * _mean(losses[:10]))
    ctx.check(
        "then blew up (NaN or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )
    ok = False
    if blow is not None and blow >= 3:
        k = blow - 3
        probe = _Net(10, 48, 1, act=nn.Tanh)
        probe.load_state_dict(snaps[k])
        x, y = next(_readings(torch.Generator().manual_seed(49491), 512, 10, 4949))
        lam = _top_eigenvalue(probe, x, y)
        ok = lrs[k] * lam > 2.0
    ctx.check("lr x sharpness over 2 just before the blow-up", ok)


# -- 10. loss of plasticity: hidden biases initialised at -2.5 ------------------------------------


@scenario(
    family="monotype_caster_matrix_wear_neg_bias_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Monotype caster matrix-wear classifier (ReLU MLP on type-metal temperature, pump "
    "stroke, mould water and casting-count features, four wear grades, cross-entropy, Adamax). "
    "The hidden biases were meant to start at +0.1 (a dead-ReLU guard) but the init writes "
    "fill_(-2.5): almost every unit of fc2 is dead on every input, gets no gradient and never "
    "comes back; the loss stalls far above a run with the intended init.",
)
def h494_monotype_negative_bias(ctx) -> None:
    seeded(4950)
    model = _Net(12, 48, 4)
    ref = _Net(12, 48, 4)
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for net, b in ((model, -2.5), (ref, 0.1)):
            net.fc1.bias.fill_(b)
            net.fc2.bias.fill_(b)
    probe = next(_grades(torch.Generator().manual_seed(49500), 512, 12, 4, 4950))[0]

    def run(net, attach):
        opt = torch.optim.Adamax(net.parameters(), lr=2e-3)
        data = _grades(torch.Generator().manual_seed(49501), 64, 12, 4, 4950)
        return _train(ctx, net, opt, data, 220, F.cross_entropy, classifier=True, attach=attach)

    ref_losses, _ = run(ref, False)
    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe))
    losses, _ = run(model, True)
    with torch.no_grad():
        dead1 = dead_fraction(model.features(probe))
    ctx.check("over 80% of fc2's units dead at the end", dead1 > 0.8)
    ctx.check("none came back", dead1 >= dead0)
    ctx.check(
        "the loss stalls over 3x the intended init's",
        _mean(losses[-10:]) > 3 * _mean(ref_losses[-10:]),
    )
    ctx.check("finite", _finite(losses))


# -- 11. control: a Bayesian neural network trained by Bayes by backprop -------------------------


class _BayesLinear(nn.Module):
    def __init__(self, d_in, d_out, prior_sigma=1.0):
        super().__init__()
        self.w_mu = nn.Parameter(torch.randn(d_out, d_in) / math.sqrt(d_in))
        self.w_rho = nn.Parameter(torch.full((d_out, d_in), -4.0))
        self.b_mu = nn.Parameter(torch.zeros(d_out))
        self.b_rho = nn.Parameter(torch.full((d_out,), -4.0))
        self.prior_sigma = prior_sigma

    def forward(self, x):
        w_sigma = F.softplus(self.w_rho)
        b_sigma = F.softplus(self.b_rho)
        w = self.w_mu + w_sigma * torch.randn_like(w_sigma)  # reparameterisation, every step
        b = self.b_mu + b_sigma * torch.randn_like(b_sigma)
        return F.linear(x, w, b)

    def kl(self):
        total = 0.0
        s2 = self.prior_sigma**2
        for mu, rho in ((self.w_mu, self.w_rho), (self.b_mu, self.b_rho)):
            sigma = F.softplus(rho)
            total = (
                total
                + 0.5 * ((sigma**2 + mu**2) / s2 - 1 - 2 * torch.log(sigma) + math.log(s2)).sum()
            )
        return total


class _RattleBNN(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.bl1 = _BayesLinear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.bl2 = _BayesLinear(hidden, 2)

    def forward(self, x):
        return self.bl2(self.act1(self.bl1(x)))

    def kl(self):
        return self.bl1.kl() + self.bl2.kl()


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="chajchas_hoof_rattle_decay_bayes_by_backprop_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: chajchas goat-hoof rattle decay-time regressor, a hand-written Bayesian "
    "neural network trained by Bayes by backprop (two Bayesian linear layers with softplus "
    "sigmas, weights sampled with the reparameterisation trick every step, Gaussian NLL of the "
    "decay time plus the KL to a N(0, 1) prior divided by the 2048 training samples, Adam).",
)
def h494_chajchas_bayes_by_backprop(ctx) -> None:
    gen = seeded(4951)
    model = _RattleBNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xs, ys = next(_readings(gen, 2048, 8, 4951, noise=0.1))
    n = len(ys)

    def data():
        while True:
            order = torch.randperm(n, generator=gen)
            for i in range(0, n - 63, 64):
                idx = order[i : i + 64]
                yield xs[idx], ys[idx]

    def backprop(step, loss, out, y):
        return loss + model.kl() / n

    losses, _ = _train(ctx, model, opt, data(), 250, _gauss_nll, backprop=backprop)
    with torch.no_grad():
        a, b = model(xs[:32]), model(xs[:32])
    ctx.check(
        "the loss fell (NLL down by over 0.5 nats)", _mean(losses[-10:]) < _mean(losses[:10]) - 0.5
    )
    ctx.check("finite", _finite(losses))
    ctx.check("two forwards differ (weights are sampled)", float((a - b).abs().max()) > 1e-4)


# -- 12. control: augmentation that switches on at step 100 ---------------------------------------

AUG_STEP = 100


@scenario(
    family="baily_beads_bead_count_augmented_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: Baily's-beads bead-count classifier (ReLU MLP on a lunar-limb profile "
    "of 16 brightness samples, five count classes, cross-entropy, RAdam under a cosine "
    "schedule). Data augmentation (Gaussian noise and a random per-sample brightness scale) "
    "switches on at step 100 as planned: the loss rises at the switch and then falls again.",
)
def h494_baily_beads_aug_switch(ctx) -> None:
    gen = seeded(4952)
    model = _Net(16, 64, 5)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=260, eta_min=3e-4)

    def alter(step, x, y):
        if step >= AUG_STEP:
            scale = 0.6 + 0.8 * torch.rand(len(x), 1, generator=gen)
            x = x * scale + 0.7 * torch.randn(x.shape, generator=gen)
        return x, y

    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 4952, spread=0.8),
        260,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        sched=sched,
    )
    pre = _mean(losses[AUG_STEP - 10 : AUG_STEP])
    at = _mean(losses[AUG_STEP : AUG_STEP + 10])
    ctx.check("trained before the switch", pre < 0.5 * _mean(losses[:10]))
    ctx.check("the loss rises at the switch", at > 1.3 * pre)
    ctx.check("then falls again", _mean(losses[-20:]) < 0.8 * at)
    ctx.check("finite", _finite(losses))


# -- 13. control: fp16 autocast with a GradScaler, OneCycleLR, accumulation -------------------------


@scenario(
    family="solar_corona_streamer_shape_fp16_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: solar-corona streamer-shape classifier (GELU MLP on radial brightness "
    "profile features, six classes, cross-entropy with label smoothing 0.1, AdamW with two "
    "param groups (no decay on biases) under OneCycleLR, fp16 autocast with a GradScaler, "
    "gradient accumulation 2, clipping at 1 after unscaling).",
)
def h494_solar_corona_fp16(ctx) -> None:
    gen = seeded(4953)
    model = _Net(20, 64, 6, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=160)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    data = _grades(gen, 32, 20, 6, 4953, spread=1.2)
    losses = []
    for _step in range(160):
        shown = 0.0
        for _ in range(2):
            x, y = next(data)
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
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    ctx.check("the loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
