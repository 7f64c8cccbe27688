"""Held-out set 176 (``h176_``): hand-written models of crafts, trades, sports, instruments and
natural phenomena not covered before: a gold-leaf gilder's SiLU regressor, a deep tanh MLP for
chair-caning strands, an origami crease-pattern CNN, a concertina GRU, a fell-running Gaussian
NLL regressor, a euphonium breath-pressure 1-D conv under fp16, a lenticular-cloud regressor,
a darts GELU classifier, a bonsai-wire regressor, a harpsichord-plectrum regressor, and three
controls (a tatting attention classifier, a papermaking CNN under fp16, a fairy-ring BCE MLP).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    digit_batches,
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


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
    after=None,
    alter=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    total=None,
    stop_at_nan=True,
):
    """One training loop for the whole file. ``before(step)`` runs first (schedules, injected
    bugs), ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)`` records,
    ``total(step, loss)`` is the loss actually backpropagated, ``after(step)`` runs right after
    ``opt.step()``; ``accumulate`` micro-batches a step; stops after logging a NaN loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(step, out.float(), y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            back = total(step, loss) if total is not None else loss
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
            shown += float(loss.detach())
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if after is not None:
            after(step)
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if stop_at_nan and math.isnan(shown):
            break


def _plain(fn):
    """A loss of (out, y) as a loss of (step, out, y)."""
    return lambda step, out, y: fn(out, y)


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(2 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, classes, seed, noise=0.3):
    """Readings around one prototype per class (overlapping, so not trivially separable)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


def _weight_norm(model) -> float:
    with torch.no_grad():
        return float(torch.sqrt(sum((p * p).sum() for p in model.parameters())))


# -- gold-leaf gilding: a hand-written weight decay with its sign flipped --------------------------

GILDER_LR = 0.02
GILDER_WD = 0.4


class TackNet(nn.Module):
    """Size (adhesive) tack-time regressor with SiLU modules."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(d_in, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.body(x).squeeze(-1)


@scenario(
    family="gilder_gold_leaf_tack_silu_regressor",
    optimizer="SGD(momentum)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) predicting when a gilder's oil size reaches the tack to "
    "lay gold leaf, from 10 workshop readings (humidity, temperature, size age, ...), SGD with "
    "momentum 0.9 at 0.02, Huber loss. Weight decay is applied by hand after opt.step() as a "
    "decoupled decay, written p.add_(p, alpha=lr * wd) where alpha=-lr * wd was meant: every "
    "step scales every weight up by 1 + 0.008; the loss first falls, then climbs steadily as "
    "the weights inflate, with nothing else going wrong.",
)
def h176_gilder_decay_sign_flipped(ctx: Context) -> None:
    gen = seeded(17601)
    model = TackNet()
    opt = torch.optim.SGD(model.parameters(), lr=GILDER_LR, momentum=0.9)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.add_(p, alpha=GILDER_LR * GILDER_WD)  # the sign bug
        norms.append(_weight_norm(model))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=1),
        240,
        _plain(F.huber_loss),
        after=after,
    )
    low = min(ctx.losses)
    ctx.check("weights inflated 3x over the run", norms[-1] > 3 * norms[0])
    ctx.check("last losses 3x the run's minimum", _mean(ctx.losses[-10:]) > 3 * low)
    ctx.check("loss reached its minimum in the first half", ctx.losses.index(low) < 120)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- chair caning: a tanh init gain multiplied twice ---------------------------------------------


class CaneTensionNet(nn.Module):
    """A 20-layer tanh MLP (nn.Tanh modules) estimating the tension of a woven cane strand."""

    def __init__(self, d_in=8, hidden=48, depth=20, gain=1.0):
        super().__init__()
        layers = []
        for i in range(depth):
            layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.Tanh()]
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, 1)
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight, gain=gain)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.layers(x)).squeeze(-1)


@scenario(
    family="chair_caning_strand_tension_tanh_mlp",
    optimizer="SGD(momentum)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 20-layer tanh MLP (nn.Tanh modules, no normalisation) estimating a woven cane "
    "strand's tension from 8 loom readings, SGD with momentum 0.9 at 1e-3, MSE. The init "
    "helper already multiplies xavier_normal_ by calculate_gain('tanh') and the config's "
    "init_gain of 2.5 is applied on top, a gain near 4.2: the net sits deep in the chaotic "
    "phase, the backward pass multiplies the gradient by about 1.5 at each layer, the first "
    "layer's gradient is thousands of times the last one's, its updates thrash and the loss "
    "stalls near twice what the same net reaches with the intended gain.",
)
def h176_chair_caning_gain_twice(ctx: Context) -> None:
    gen = seeded(17602)
    model = CaneTensionNet(gain=nn.init.calculate_gain("tanh") * 2.5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _readings(gen, 64, 8, seed=2)
    x0, y0 = next(_readings(torch.Generator().manual_seed(7), 256, 8, seed=2))
    F.mse_loss(model(x0), y0).backward()
    first = float(model.layers[0].weight.grad.norm())
    last = float(model.layers[38].weight.grad.norm())
    model.zero_grad(set_to_none=True)
    _train(ctx, model, opt, batches, 150, _plain(F.mse_loss))
    # the same recipe with the intended gain, for comparison
    gen = seeded(17602)
    ref = CaneTensionNet(gain=nn.init.calculate_gain("tanh"))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=1e-3, momentum=0.9)
    ref_batches, ref_losses = _readings(gen, 64, 8, seed=2), []
    for _ in range(150):
        x, y = next(ref_batches)
        loss = F.mse_loss(ref(x), y)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_losses.append(float(loss))
    ctx.check("first layer's gradient 1000x the last hidden layer's at init", first > 1000 * last)
    ctx.check("gradient norm past 100 in the run", max(ctx.grad_norms) > 100)
    ctx.check(
        "last losses 1.6x those of the intended gain",
        _mean(ctx.losses[-20:]) > 1.6 * _mean(ref_losses[-20:]),
    )


# -- origami crease patterns: a distillation temperature reused for the hard-label loss -----------

ORIGAMI_T = 1e-3


class CreaseCNN(nn.Module):
    """Reads an 8x8 crease-pattern scan (the digits set) and names the base fold."""

    def __init__(self, width=12, classes=10, temperature=1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(2 * width * 16, classes)
        self.temperature = temperature

    def forward(self, x):
        x = x.reshape(-1, 1, 8, 8)
        x = self.act(self.conv1(x))
        x = F.max_pool2d(self.act(self.conv2(x)), 2)
        return self.head(x.flatten(1)) / self.temperature


@scenario(
    family="origami_crease_pattern_cnn",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A small CNN naming the base fold from an 8x8 scan of an origami crease pattern (the "
    "digits set), Adamax at 2e-3, cross-entropy. The model reads `temperature` from the "
    "shared config, where 0.001 is the pseudo-labeller's near-argmax sharpening: the "
    "classifier divides its training logits by 0.001, the softmax saturates and half the rows' "
    "target probabilities round to exactly 1.0 in float32 (their gradient is exactly 0).",
)
def h176_origami_distill_temperature(ctx: Context) -> None:
    gen = seeded(17603)
    model = CreaseCNN(temperature=ORIGAMI_T)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    xp, yp = next(digit_batches(torch.Generator().manual_seed(3), 512))
    with torch.no_grad():
        start = collapsed_fraction(model(xp), yp)
    _train(ctx, model, opt, digit_batches(gen, 64), 200, _plain(F.cross_entropy), classifier=True)
    with torch.no_grad():
        end = collapsed_fraction(model(xp), yp)
    ctx.check("under 5% of rows saturated at init", start < 0.05)
    ctx.check("over 40% of rows' target probability exactly 1.0 at the end", end > 0.4)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- concertina: an encoder learning rate typed 3e-7 for 3e-3 -------------------------------------


def _concertina_tunes(gen, batch, length=24, buttons=20, keys=4):
    """Button presses of an Anglo concertina tune; each key favours its own 7 buttons."""
    g = torch.Generator().manual_seed(4)
    sets = torch.stack([torch.randperm(buttons, generator=g)[:7] for _ in range(keys)])
    while True:
        y = torch.randint(0, keys, (batch,), generator=gen)
        pick = torch.randint(0, 7, (batch, length), generator=gen)
        x = sets[y][torch.arange(batch)[:, None], pick]
        stray = torch.rand(batch, length, generator=gen) < 0.4
        x = torch.where(stray, torch.randint(0, buttons, (batch, length), generator=gen), x)
        yield x, y


class ButtonGRU(nn.Module):
    def __init__(self, buttons=20, dim=16, hidden=48, keys=4):
        super().__init__()
        self.emb = nn.Embedding(buttons, dim)
        self.rnn = nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, keys)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.head(h[:, -1])


@scenario(
    family="concertina_button_key_gru",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("rnn", "emb"),
    diverges=None,
    heldout=True,
    note="A GRU naming the key of an Anglo concertina tune from its button presses, RMSprop "
    "with two param groups: the encoder (embedding + GRU) and the head. The encoder's rate "
    "is read from a YAML string typed '3e-7' where '3e-3' was meant: the GRU and the "
    "embedding move by about 1e-7 of their norm per step, effectively frozen, while the head "
    "trains on random recurrent features; the loss falls a little and stalls.",
)
def h176_concertina_encoder_lr_typo(ctx: Context) -> None:
    gen = seeded(17604)
    model = ButtonGRU()
    encoder = [*model.emb.parameters(), *model.rnn.parameters()]
    opt = torch.optim.RMSprop(
        [{"params": encoder, "lr": float("3e-7")}, {"params": model.head.parameters()}],
        lr=3e-3,
    )
    w_rnn, w_head = model.rnn.weight_hh_l0, model.head.weight
    prev = {}
    ratios = {"rnn": [], "head": []}

    def before(step):
        prev["rnn"], prev["head"] = w_rnn.detach().clone(), w_head.detach().clone()

    def after(step):
        with torch.no_grad():
            ratios["rnn"].append(float((w_rnn - prev["rnn"]).norm() / w_rnn.norm()))
            ratios["head"].append(float((w_head - prev["head"]).norm() / w_head.norm()))

    _train(
        ctx,
        model,
        opt,
        _concertina_tunes(gen, 64),
        150,
        _plain(F.cross_entropy),
        classifier=True,
        before=before,
        after=after,
    )
    ctx.check("GRU update ratio under 1e-5 per step", _median(ratios["rnn"]) < 1e-5)
    ctx.check("head update ratio over 1e-4 per step", _median(ratios["head"]) > 1e-4)
    ctx.check(
        "head moves 1000x faster than the GRU",
        _median(ratios["head"]) > 1000 * _median(ratios["rnn"]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- fell running: the variance head's softplus replaced by a ReLU --------------------------------


class DescentNLL(nn.Module):
    """Predicts a fell runner's descent time as a Gaussian (mean and variance heads)."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.act = nn.Tanh()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)
        self.min_var = math.inf

    def forward(self, x):
        h = self.act(self.trunk(x))
        var = F.relu(self.var_head(h))  # the recipe had F.softplus
        self.min_var = float(var.detach().min())
        return torch.cat([self.mean_head(h), var], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * (torch.log(var) + (y - mu) ** 2 / var)).mean()


@scenario(
    family="fell_running_descent_time_nll_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("var_head",),
    diverges=80,
    heldout=True,
    note="A tanh MLP with mean and variance heads predicting a fell runner's descent time "
    "from 8 route and runner readings, Adam at 3e-4, a hand-written Gaussian NLL "
    "0.5 * (log var + (y - mu)^2 / var). The variance head's F.softplus was swapped for "
    "F.relu in a refactor ('same shape, cheaper'); as the fit sharpens the NLL pushes the "
    "variance down, one runner's variance reaches exactly 0 and log(0) with (y - mu)^2 / 0 "
    "makes the loss NaN.",
)
def h176_fell_running_relu_variance(ctx: Context) -> None:
    gen = seeded(17605)
    model = DescentNLL()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    mins = []
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=5, noise=0.05),
        200,
        _plain(_gauss_nll),
        watch=lambda s, o, x, y: mins.append(model.min_var),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss NaN at step 80", bad == 80)
    ctx.check("every variance positive at the start", mins[0] > 0.05)
    ctx.check("a variance exactly 0 where the loss went NaN", bad is not None and mins[bad] == 0)
    ctx.check("loss finite before", bad is not None and _finite(ctx.losses[:bad]))


# -- euphonium breath pressure: a frame energy summed in fp16 -------------------------------------

EUPH_LOUD = 80


def _breath(gen, batch, loud_from, length=64):
    """Mouth-pressure frames of a euphonium phrase in hPa and its dynamic level (log pressure,
    standardised). From ``loud_from`` the loader reaches the fortissimo sessions (40-90 hPa)."""
    t = torch.arange(length).float()
    step = 0
    while True:
        loud = step >= loud_from and bool(torch.rand(1, generator=gen) < 0.7)
        lo, hi = (40.0, 90.0) if loud else (5.0, 15.0)
        level = lo + (hi - lo) * torch.rand(batch, 1, generator=gen)
        rate = 2 + 4 * torch.rand(batch, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        x = level * (0.8 + 0.2 * torch.sin(2 * math.pi * rate * t / length + phase))
        x = x + 0.3 * torch.randn(batch, length, generator=gen)
        step += 1
        yield x, (torch.log(level.squeeze(-1)) - 2.3) / 0.5


class FrameEnergy(nn.Module):
    """Log energy of each channel over the phrase, written sum(h * h) / n."""

    def __init__(self):
        super().__init__()
        self.overflowed = False

    def forward(self, h):
        energy = (h * h).sum(-1) / h.shape[-1]  # the sum runs in fp16 under autocast
        self.overflowed = bool(torch.isinf(energy).any())
        return torch.log(energy + 1e-3)


class BreathConv(nn.Module):
    def __init__(self, channels=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 7, padding=3)
        self.energy = FrameEnergy()
        self.fc = nn.Linear(channels, 32)
        self.act = nn.GELU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        h = self.conv1(x[:, None])
        return self.head(self.act(self.fc(self.energy(h)))).squeeze(-1)


@scenario(
    family="euphonium_breath_energy_fp16_conv1d",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("energy",),
    diverges=EUPH_LOUD,
    heldout=True,
    onset=EUPH_LOUD,
    note="A 1-D conv front end with a log frame-energy layer reading a euphonium player's "
    "mouth pressure (hPa) to grade the phrase's dynamic level, AdamW at 3e-3, MSE, fp16 "
    "autocast with a torch.amp.GradScaler (the loop skips non-finite steps and carries on, "
    "as AMP loops do). The energy is written (h * h).sum(-1) / n instead of .mean(): the sum "
    "runs in fp16 and passes 65504 once the loader reaches the fortissimo sessions at step "
    "80 (40-90 hPa, finite in fp32); log(inf) makes those steps' loss NaN, the scaler halves "
    "its scale at each and it sinks by many orders of magnitude.",
)
def h176_euphonium_energy_sum_fp16(ctx: Context) -> None:
    gen = seeded(17606)
    model = BreathConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    flags, batches = [], []

    def watch(step, out, x, y):
        flags.append(model.energy.overflowed)
        if step >= EUPH_LOUD and model.energy.overflowed and not batches:
            batches.append((x, y))

    _train(
        ctx,
        model,
        opt,
        _breath(gen, 32, EUPH_LOUD),
        150,
        _plain(F.mse_loss),
        scaler=scaler,
        watch=watch,
        stop_at_nan=False,
    )
    bad = _first_bad(ctx.losses)
    with torch.no_grad():
        fp32 = float(F.mse_loss(model(batches[0][0]), batches[0][1])) if batches else math.nan
    ctx.check("loss first non-finite at step 80", bad == EUPH_LOUD)
    ctx.check("fp16 energy overflowed on over a third of the later steps", _mean(flags[80:]) > 0.33)
    ctx.check("the same batch is finite in fp32", math.isfinite(fp32))
    ctx.check("grad scale sank 1e6-fold", ctx.scales[-1] < 1e-6 * max(ctx.scales))
    ctx.check("loss fell before the loud sessions", _fell(ctx.losses[:EUPH_LOUD], ratio=0.5))


# -- lenticular clouds: one sounding with the missing-value code ----------------------------------

LENT_BAD = 70
LENT_CENTRE = torch.tensor([15.0, 0.012, 270.0, 2500.0, 60.0, 8.0, 45.0, 1.5, 700.0])
LENT_SPREAD = torch.tensor([5.0, 0.003, 8.0, 600.0, 15.0, 3.0, 20.0, 0.5, 40.0])


def _soundings(gen, batch):
    """Radiosonde readings (wind at ridge height, Brunt-Vaisala frequency, temperature, ...) in
    physical units, and the lee-wave wavelength (standardised)."""
    readings = _readings(gen, batch, 9, seed=7)
    while True:
        x, y = next(readings)
        yield LENT_CENTRE + LENT_SPREAD * x, y


class LeeWaveNet(nn.Module):
    def __init__(self, d_in=9, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, raw):
        x = (raw - LENT_CENTRE) / LENT_SPREAD
        return self.head(self.act(self.fc2(self.act(self.fc1(x))))).squeeze(-1)


@scenario(
    family="lenticular_cloud_wavelength_regressor",
    optimizer="SGD(nesterov)",
    cause="data_outlier",
    where=(),
    diverges=73,
    heldout=True,
    onset=LENT_BAD,
    note="A ReLU MLP (nn.ReLU) predicting the wavelength of lee-wave lenticular clouds from 9 "
    "radiosonde readings standardised inside the model with fixed station means, SGD with "
    "Nesterov momentum 0.9 at 0.01, MSE. One sounding in the batch of step 70 carries the "
    "archive's missing-value code -9999 in the ridge-height wind column (a launch whose "
    "anemometer failed); standardised it is about -2000, and that single sample's gradient "
    "throws the weights far off and the loss is NaN three steps later.",
)
def h176_lenticular_missing_code(ctx: Context) -> None:
    gen = seeded(17607)
    model = LeeWaveNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    seen = []

    def alter(step, x, y):
        if step == LENT_BAD:
            x = x.clone()
            x[5, 0] = -9999.0
        seen.append(float(x[:, 0].min()))
        return x, y

    _train(ctx, model, opt, _soundings(gen, 64), 160, _plain(F.mse_loss), alter=alter)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "one wind reading is -9999 at step 70 only",
        seen[LENT_BAD] == -9999.0 and min(seen[:LENT_BAD]) > -100,
    )
    ctx.check(
        "gradient at step 70 over 100x the median before", g[LENT_BAD] > 100 * _median(g[:LENT_BAD])
    )
    ctx.check("loss at step 70 over 100x the step before", ls[LENT_BAD] > 100 * ls[LENT_BAD - 1])
    ctx.check("loss first non-finite at step 73", _first_bad(ls) == 73)


# -- darts checkout: a fp16 loss scale left on for the first step after a resume ------------------

DARTS_RESUME = 70
DARTS_SCALE = 2.0**16


@scenario(
    family="darts_checkout_route_gelu_classifier",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=DARTS_RESUME,
    note="A GELU MLP (nn.GELU modules) picking the checkout route (which of 6 doubles to leave) "
    "from 16 features of a darts leg, Adam at 1e-3 (betas 0.9, 0.999), cross-entropy. On "
    "resuming from a checkpoint at step 70 the loop takes the fp16 branch for one step: the "
    "loss is multiplied by the static loss scale 65536 but the run is in fp32 and no unscale "
    "follows. That one gradient fills Adam's second moment; for the next hundred steps the "
    "updates are a tiny fraction of what they were and learning stalls.",
)
def h176_darts_resume_loss_scale(ctx: Context) -> None:
    gen = seeded(17608)
    model = nn.Sequential(
        nn.Linear(16, 96), nn.GELU(), nn.Linear(96, 96), nn.GELU(), nn.Linear(96, 6)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves, prev = [], {}

    def before(step):
        prev["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        with torch.no_grad():
            d = sum(
                float((p - q).norm() ** 2)
                for p, q in zip(model.parameters(), prev["w"], strict=True)
            )
        moves.append(math.sqrt(d))

    _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 6, seed=8, noise=0.9),
        200,
        _plain(F.cross_entropy),
        classifier=True,
        before=before,
        after=after,
        total=lambda step, loss: loss * DARTS_SCALE if step == DARTS_RESUME else loss,
    )
    g, k = ctx.grad_norms, DARTS_RESUME
    ctx.check("gradient at step 70 over 1e4x the median before", g[k] > 1e4 * _median(g[:k]))
    ctx.check(
        "updates 30-100 steps later under 5% of those before",
        _mean(moves[k + 30 : k + 100]) < 0.05 * _mean(moves[k - 30 : k]),
    )
    ctx.check(
        "last losses 1.5x those just before step 70",
        _mean(ctx.losses[-20:]) > 1.5 * _mean(ctx.losses[k - 10 : k]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- bonsai wiring: the epoch's remainder batch summed instead of averaged ------------------------

BONSAI_N = 6000
BONSAI_BATCH = 64
BONSAI_TAIL = BONSAI_N // BONSAI_BATCH  # step 93: the first epoch's remainder of 48 samples


def _wire_bends(gen, n=BONSAI_N, batch=BONSAI_BATCH):
    """Epochs over a fixed table of bends (wire gauge, copper or aluminium, branch diameter,
    bend angle, ...) and the springback angle (standardised); the last batch is short."""
    x, y = next(_readings(torch.Generator().manual_seed(9), n, 8, seed=9, noise=0.1))
    while True:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


@scenario(
    family="bonsai_wire_springback_regressor",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=BONSAI_TAIL,
    note="A ReLU MLP predicting how far a wired bonsai branch springs back from 8 readings, "
    "SGD with Nesterov momentum 0.9 at 0.02, MSE. The loop sends a short batch through a "
    "helper written for evaluation that uses reduction='sum': the first epoch's remainder of "
    "48 samples, at step 93, is backpropagated summed, a 48x gradient for that one step; the "
    "weights jump, the loss spikes and the run then recovers.",
)
def h176_bonsai_remainder_sum(ctx: Context) -> None:
    gen = seeded(17609)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    sizes = []

    def loss_fn(step, out, y):
        sizes.append(len(y))
        reduction = "mean" if len(y) == BONSAI_BATCH else "sum"
        return F.mse_loss(out.squeeze(-1), y, reduction=reduction)

    _train(ctx, model, opt, _wire_bends(gen), 170, loss_fn)
    g, ls, k = ctx.grad_norms, ctx.losses, BONSAI_TAIL
    ctx.check("the only short batch is at step 93", sizes.index(48) == k and sizes.count(48) == 1)
    ctx.check("gradient at step 93 over 20x the median before", g[k] > 20 * _median(g[:k]))
    ctx.check(
        "loss after the step 3x the loss before", max(ls[k + 1 : k + 6]) > 3 * _mean(ls[k - 10 : k])
    )
    ctx.check("loss recovered by the end", _mean(ls[-10:]) < 1.5 * _mean(ls[k - 10 : k]))
    ctx.check("loss finite throughout", _finite(ls))


# -- harpsichord plectra: a warm-up peak typed 2.0 for 0.2 ----------------------------------------

HARP_WARM = 200
HARP_PEAK = 2.0


class VoicingNet(nn.Module):
    """Predicts the pluck force of a voiced plectrum from 10 quill and jack measurements."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x))))).squeeze(-1)


@scenario(
    family="harpsichord_plectrum_voicing_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=30,
    note="A tanh MLP predicting the pluck force of a voiced harpsichord plectrum from 10 quill "
    "and jack measurements, plain SGD, MSE, a linear warm-up over 200 steps to a peak typed "
    "2.0 where 0.2 was meant. At step 30 (lr 0.31) the learning rate passes 2 / sharpness "
    "of the loss (measured every 5 steps), the iterates start to oscillate along the sharpest direction and the loss "
    "blows up.",
)
def h176_harpsichord_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(17610)
    model = VoicingNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = _readings(gen, 64, 10, seed=10)
    xp, yp = next(_readings(torch.Generator().manual_seed(11), 256, 10, seed=10))
    rates, sharp = [], {}

    def before(step):
        lr = HARP_PEAK * min(1.0, (step + 1) / HARP_WARM)
        for group in opt.param_groups:
            group["lr"] = lr
        rates.append(lr)
        if step % 5 == 0:
            sharp[step] = _sharpness(model, F.mse_loss, xp, yp)

    _train(ctx, model, opt, batches, 160, _plain(F.mse_loss), before=before)
    crossed = [s for s, lam in sharp.items() if rates[s] * lam > 2]
    ctx.check("lr under 2/sharpness at the start", rates[0] * sharp[0] < 2)
    ctx.check("lr first past 2/sharpness at step 30", bool(crossed) and crossed[0] == 30)
    ctx.check("loss blew up 100x over its start", max(ctx.losses) > 100 * ctx.losses[0])


# -- healthy controls ------------------------------------------------------------------------------


def _tatting_patterns(gen, batch, length=24, vocab=8, classes=4):
    """Stitch sequences of a tatted edging (double stitch, picot, join, ring close, chain, ...);
    each pattern favours its own stitch, and the picot count decides between pairs."""
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        fav = torch.rand(batch, length, generator=gen) < 0.3
        x = torch.where(fav, (y + 1)[:, None].expand(-1, length), x)
        yield x, y


class StitchAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / math.sqrt(x.shape[-1])
        return self.out(torch.softmax(scores, -1) @ self.v(x))


class TattingClassifier(nn.Module):
    def __init__(self, vocab=8, length=24, dim=32, classes=4):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.1 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = StitchAttention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.proj = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.tok(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.proj(self.act(self.fc(self.ln2(h))))
        return self.head(h.mean(1))


@scenario(
    family="tatting_stitch_pattern_attention_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A one-block transformer with hand-written attention and a GELU MLP naming a tatted "
    "edging's pattern from its stitch sequence, AdamW (weight decay 0.05) at 2e-3 under a "
    "linear warm-up over 15 steps then cosine decay (LambdaLR), clip_grad_norm_ at 1. An "
    "ordinary run.",
)
def h176_tatting_warmup_cosine(ctx: Context) -> None:
    gen = seeded(17611)
    model = TattingClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps, warm = 150, 15

    def lr_at(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    _train(
        ctx,
        model,
        opt,
        _tatting_patterns(gen, 32),
        steps,
        _plain(F.cross_entropy),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    x, y = next(_tatting_patterns(torch.Generator().manual_seed(13), 512))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell by half and stayed finite", _fell(ctx.losses, ratio=0.5))
    ctx.check("accuracy over 80% on 512 edgings", acc > 0.8)


class SheetCNN(nn.Module):
    """Grades an 8x8 formation scan of a handmade sheet (the digits set); BatchNorm, ReLU."""

    def __init__(self, width=12, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.act = nn.ReLU()
        self.head = nn.Linear(2 * width * 16, classes)

    def forward(self, x):
        x = x.reshape(-1, 1, 8, 8)
        x = self.act(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.act(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


@scenario(
    family="papermaking_deckle_sheet_fp16_cnn",
    optimizer="SGD(nesterov)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A BatchNorm CNN grading a handmade sheet's formation from an 8x8 scan (the digits "
    "set), fp16 autocast with a torch.amp.GradScaler, SGD with Nesterov momentum 0.9 and "
    "weight decay 5e-4 under OneCycleLR (max_lr 0.05), cross-entropy with label smoothing "
    "0.1. An ordinary run.",
)
def h176_papermaking_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(17612)
    model = SheetCNN()
    opt = torch.optim.SGD(
        model.parameters(), lr=5e-3, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = 120
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        steps,
        _plain(lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1)),
        classifier=True,
        sched=sched,
        scaler=scaler,
    )
    model.eval()
    x, y = next(digit_batches(torch.Generator().manual_seed(14), 512))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell by half and stayed finite", _fell(ctx.losses, ratio=0.5))
    ctx.check("accuracy over 85% on 512 sheets", acc > 0.85)
    ctx.check("grad scaler never fell below half its start", min(ctx.scales) >= ctx.scales[0] / 2)


def _fairy_rings(gen, batch, seed=15):
    """Soil and weather readings of a meadow plot and whether a fairy ring fruits there."""
    readings = _readings(gen, batch, 12, seed=seed, noise=0.3)
    while True:
        x, y = next(readings)
        yield x, (y > 0.2).float()


@scenario(
    family="fairy_ring_fruiting_bce_mlp",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU) predicting whether a fairy ring of mushrooms fruits on a meadow "
    "plot from 12 soil and weather readings with noisy labels, NAdam at 3e-3, "
    "binary cross-entropy with logits, gradient accumulation over 2 micro-batches, "
    "ReduceLROnPlateau. An ordinary run.",
)
def h176_fairy_ring_nadam_plateau(ctx: Context) -> None:
    gen = seeded(17613)
    model = nn.Sequential(
        nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _train(
        ctx,
        model,
        opt,
        _fairy_rings(gen, 32),
        150,
        _plain(lambda o, y: F.binary_cross_entropy_with_logits(o.squeeze(-1), y)),
        sched=sched,
        accumulate=2,
    )
    ctx.check("loss fell by a third and stayed finite", _fell(ctx.losses, ratio=0.67))
