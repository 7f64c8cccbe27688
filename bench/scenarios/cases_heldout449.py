"""Held-out set 449 (``h449_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a pyrotechnic star-colour cosine classifier whose scale is typed 1000 for 10 (softmax
saturates), a shot-tower lead-drop roundness classifier trained with nll_loss on raw logits (the
head's logits grow without bound), a whip-top spin-duration hand-written Elman RNN whose recurrent
init gain is typed 3.0 for 1.0 (gradients grow back through time), a punt-gun recoil-sled
regressor whose trunk lr multiplier is cast with int() (0.1 becomes 0: a frozen layer), a
ringing-rocks strike-pitch regressor whose log-amplitude feature has no clamp (a missed strike
gives log 0), a salt-maker brine-yield regressor fed one shard in kg/m^3 for g/cm^3 (one
corrupted batch), a nettle-eating leaf-rate regressor whose validation hook leaves
reduction='sum' on for one training step (one gradient burst), a ducks-and-drakes skip-count
regressor whose target scaler's running mean is updated with 0.01 for 0.001 (the target drifts,
a slow climb), a quill-cutting nib-slit regressor whose warm-up peak lr is typed 0.8 for 0.08
(past the 2/sharpness limit) and a fell-pony trek-pace regressor whose validation hook swaps the
EMA weights in and never back (a one-off loss spike it recovers from).

Controls: a stave-church timber multi-task net (shared trunk, three heads, learnt uncertainty
weighting, AdamW param groups under OneCycleLR, clipping), a bungee-jump rebound regressor that
gets a new bounce-count head (and optimizer param group) at step 100 (Adagrad), and a
fairground-organ book-hole fp16 Conv1d classifier (GradScaler, NAdam under ReduceLROnPlateau,
label smoothing, accumulation over 2, clipping).
"""

from __future__ import annotations

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
    With ``attach=False`` it is a reference run outside the monitor."""
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


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, shift=0.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, shift + scale * (y + noise * torch.randn(batch, generator=gen))


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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _rel_moves(model, before):
    return {n: _rel_change(before[n], p) for n, p in model.named_parameters() if n in before}


# -- models ----------------------------------------------------------------------------------------


class _CosineHead(nn.Module):
    """Cosine-similarity classifier: scale * cos(feature, class weight)."""

    def __init__(self, d_in, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d_in) / math.sqrt(d_in))
        self.scale = scale

    def cosine(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T

    def forward(self, h):
        return self.scale * self.cosine(h)


class _StarColour(nn.Module):
    def __init__(self, d_in=14, classes=6, scale=10.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(64, 32)
        self.head = _CosineHead(32, classes, scale)

    def features(self, x):
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, x):
        return self.head(self.features(x))


class _ElmanCell(nn.Module):
    """h' = tanh(W x + U h), written by hand."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.hidden = hidden
        self.wx = nn.Linear(d_in, hidden)
        self.wh = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.wx(x) + self.wh(h))


class _WhipTop(nn.Module):
    def __init__(self, d_in=3, hidden=48, gain=1.0):
        super().__init__()
        self.cell = _ElmanCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.wh.weight, gain=gain)

    def forward(self, x, keep=None):
        h = x.new_zeros(x.shape[0], self.cell.hidden)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if keep is not None:
                h.retain_grad()
                keep.append(h)
        return self.head(h).squeeze(-1)


def _spins(gen, batch, steps=30):
    """Gyro readings of a whipped top over 30 samples; the spin duration left from them."""
    while True:
        lash = torch.rand(batch, 1, generator=gen)
        t = torch.arange(steps).float()[None]
        spin = (0.5 + lash) * torch.exp(-0.02 * t * (1.5 - lash))
        wobble = 0.1 * torch.sin(0.7 * t + 6.28 * torch.rand(batch, 1, generator=gen))
        x = torch.stack([spin, wobble, 0.1 * torch.randn(batch, steps, generator=gen)], -1)
        yield x, 2 * lash.squeeze(-1) - 1 + 0.05 * torch.randn(batch, generator=gen)


class _LogAmplitude(nn.Module):
    """Strike spectrum magnitudes to log amplitude (no clamp: the bug)."""

    def forward(self, x):
        return torch.log(x)


class _RingingRocks(nn.Module):
    def __init__(self, bands=16, hidden=48):
        super().__init__()
        self.logamp = _LogAmplitude()
        self.fc1 = nn.Linear(bands, hidden)
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.logamp(x)))).squeeze(-1)


def _strikes(gen, batch, bands=16):
    """Spectral magnitudes of a hammer strike on a ringing boulder; the pitch from the peak."""
    f = torch.arange(bands).float()
    while True:
        pitch = torch.rand(batch, generator=gen)
        centre = 2 + 11 * pitch
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        x = amp * (torch.exp(-0.5 * ((f - centre[:, None]) / 1.5) ** 2) + 0.05)
        x = x * torch.exp(0.1 * torch.randn(batch, bands, generator=gen))
        yield x, 2 * pitch - 1


class _TargetScaler:
    """Running mean / std of the target, to train on standardised targets."""

    def __init__(self, rate):
        self.rate = rate
        self.mu = None
        self.sd = None

    def __call__(self, y):
        if self.mu is None:
            self.mu, self.sd = float(y.mean()), float(y.std())
        else:
            self.mu = 0.999 * self.mu + self.rate * float(y.mean())
        return (y - self.mu) / self.sd


def _skims(gen, batch, seed, shift, d_in=8):
    """Stone mass, spin, throw speed, entry angle...; the skip count (about ``shift``)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = shift + 1.5 * (x @ w) + 0.3 * torch.relu(x[:, 0])
        yield x, y + 0.1 * torch.randn(batch, generator=gen)


class _StaveChurch(nn.Module):
    """Shared trunk, three heads: moisture (regression), rot class (3), crack (binary)."""

    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.act = nn.GELU()
        self.moisture = nn.Linear(hidden, 1)
        self.rot = nn.Linear(hidden, 3)
        self.crack = nn.Linear(hidden, 1)
        self.log_vars = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        h = self.act(self.trunk(x))
        return self.moisture(h).squeeze(-1), self.rot(h), self.crack(h).squeeze(-1)


def _timbers(gen, batch, d_in=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w.T
        moisture = torch.tanh(z[:, 0]) + 0.1 * torch.randn(batch, generator=gen)
        rot = torch.bucketize(z[:, 1] + 0.3 * z[:, 0], torch.tensor([-0.4, 0.4]))
        crack = (z[:, 2] - 0.5 * z[:, 0] > 0).float()
        yield x, (moisture, rot, crack)


class _Bungee(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.rebound = nn.Linear(hidden, 1)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        return self.rebound(self.features(x)).squeeze(-1)


def _jumps(gen, batch, d_in=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    v = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rebound = torch.tanh(x @ w) + 0.05 * torch.randn(batch, generator=gen)
        bounces = 1.5 + torch.sigmoid(2 * x @ v) + 0.5 * torch.relu(x @ w)
        yield x, torch.stack([rebound, bounces], -1)


class _OrganBook(nn.Module):
    def __init__(self, channels=4, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 3, padding=1)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.head(x.amax(-1))


def _books(gen, batch, classes=5, length=40, channels=4):
    """Key-frame pressure traces as the punched book passes; the register the holes open."""
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        period = 4.0 + 2.0 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        holes = (torch.sin(6.28 * t / period[:, None] + phase) > 0.3).float()
        x = 0.3 * torch.randn(batch, channels, length, generator=gen)
        x[:, 0] += holes
        x[torch.arange(batch), 1 + (y % 3)] += 0.8 * holes
        yield x, y


# -- faults ----------------------------------------------------------------------------------------


STAR_SCALE = 1000.0  # typed for 10.0


@scenario(
    family="pyrotechnic_star_colour_cosine_scale_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Pyrotechnic star-colour classifier (GELU MLP on flame emission-line intensities, a "
    "cosine-similarity head, 6 colours, cross-entropy, Adamax). The cosine head's scale is typed "
    "1000 for 10 in the config: the logits span +-1000 and the softmax saturates, most rows' "
    "target probability rounding to exactly 1.0 in float32.",
)
def h449_pyrotechnic_star_cosine_scale(ctx) -> None:
    gen = seeded(4491)
    model = _StarColour(scale=STAR_SCALE)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    data = _grades(gen, 64, 14, 6, seed=491)
    _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True)
    x, y = next(data)
    with torch.no_grad():
        cos = model.head.cosine(model.features(x))
    ctx.check(
        "over half the rows' target probability exactly 1.0 at scale 1000",
        collapsed_fraction(cos * STAR_SCALE, y) > 0.5,
    )
    ctx.check("under 5% on the same cosines at scale 10", collapsed_fraction(cos * 10.0, y) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="shot_tower_lead_drop_roundness_raw_nll_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Shot-tower lead-drop roundness classifier (ReLU MLP on drop height, lead temperature "
    "and quench features, 4 roundness grades, Adam). The training code calls F.nll_loss on the "
    "raw logits (the log_softmax was dropped when the model's output layer was refactored): "
    "nll_loss is -logit[target], unbounded below, so the head's logits grow without limit and the "
    "'loss' goes ever more negative.",
)
def h449_shot_tower_raw_nll(ctx) -> None:
    gen = seeded(4492)
    model = _Net(9, 48, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _grades(gen, 64, 9, 4, seed=492)
    x0, _ = next(data)
    peaks = []

    def after(step):
        with torch.no_grad():
            peaks.append(float(model(x0).abs().max()))

    with torch.no_grad():
        start = float(model(x0).abs().max())
    _loop(ctx, model, opt, data, 150, F.nll_loss, classifier=True, after=after)
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * start)
    ctx.check("still growing over the last 50 steps", peaks[-1] > 1.3 * peaks[-50])
    ctx.check("the 'loss' below -10", ctx.losses[-1] < -10)
    ctx.check("finite", _finite(ctx.losses))


WHIP_GAIN = 3.0  # typed for 1.0


@scenario(
    family="whip_top_spin_duration_elman_rnn_regressor",
    optimizer="Adam",
    cause="exploding_gradients",
    where=("cell.wh",),
    diverges=None,
    heldout=True,
    note="Whip-top spin-duration regressor: a hand-written tanh Elman cell reads 30 gyro samples "
    "of a whipped top and a head regresses the spin time left (MSE, Adam). The recurrent weight "
    "is initialised orthogonal with gain=3.0 typed for 1.0: the recurrence starts in tanh's "
    "chaotic regime and the gradient grows back through time, the gradient at the first hidden "
    "state many times that at the last.",
)
def h449_whip_top_recurrent_gain(ctx) -> None:
    def growth(gain, x, y):
        torch.manual_seed(4493)
        m = _WhipTop(gain=gain)
        keep = []
        F.mse_loss(m(x, keep), y).backward()
        return float(keep[0].grad.norm() / keep[-1].grad.norm()), m

    gen = seeded(4493)
    data = _spins(gen, 32)
    x0, y0 = next(data)
    good, _ = growth(1.0, x0, y0)
    bad, _ = growth(WHIP_GAIN, x0, y0)
    torch.manual_seed(4493)
    model = _WhipTop(gain=WHIP_GAIN)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _loop(ctx, model, opt, data, 100, F.mse_loss)
    ctx.check("gradient at h_0 over 20x that at h_29 at gain 3", bad > 20)
    ctx.check("under 5x at gain 1 on the same batch", good < 5)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="punt_gun_recoil_sled_int_lr_mult_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Punt-gun recoil-sled travel regressor (ReLU MLP on charge, shot load and punt trim, "
    "MSE, RMSprop with two param groups). fc1 is the 'encoder' group whose lr is base_lr * "
    "int(cfg['encoder_lr_mult']) and the config gives 0.1: int(0.1) is 0, so fc1 is frozen for "
    "the whole run while the rest trains; the loss falls, more slowly.",
)
def h449_punt_gun_int_lr_mult(ctx) -> None:
    gen = seeded(4494)
    model = _Net(8, 48, 1)
    cfg = {"lr": 1e-3, "encoder_lr_mult": 0.1}
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1")]
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": cfg["lr"] * int(cfg["encoder_lr_mult"])},
            {"params": rest, "lr": cfg["lr"]},
        ],
        alpha=0.99,
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=494), 200, F.mse_loss)
    moved = _rel_moves(model, start)
    ctx.check("fc1's weight moves under 1e-6 of its norm", moved["fc1.weight"] < 1e-6)
    ctx.check("fc2's weight moves over 5% of its norm", moved["fc2.weight"] > 0.05)
    ctx.check("the loss falls", _fell(ctx.losses, ratio=0.9))


ROCK_MISS = 80


@scenario(
    family="ringing_rocks_strike_pitch_log_amplitude_regressor",
    optimizer="AdamW",
    cause="nonfinite",
    where=("logamp",),
    diverges=ROCK_MISS,
    heldout=True,
    onset=ROCK_MISS,
    note="Ringing-rocks strike-pitch regressor (log-amplitude spectrum, SiLU MLP, MSE, AdamW) on "
    "16-band spectra of hammer strikes on a boulder field. The log-amplitude module calls "
    "torch.log with no clamp or epsilon: at step 80 one strike misses (the microphone records "
    "silence, a legitimate all-zero spectrum) and log 0 = -inf; the loss is NaN at that step.",
)
def h449_ringing_rocks_log_zero(ctx) -> None:
    gen = seeded(4495)
    model = _RingingRocks()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    seen = {}

    def alter(step, x, y):
        if step == ROCK_MISS:
            x = x.clone()
            x[11] = 0.0  # a missed strike: silence
            seen["x"] = x
        return x, y

    _loop(ctx, model, opt, _strikes(gen, 64), 200, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("loss non-finite first at step 80", _first_bad(ls) == ROCK_MISS)
    ctx.check("trained before the miss", _fell(ls[:ROCK_MISS]))
    with torch.no_grad():
        out = model.logamp(seen["x"])
    ctx.check("logamp gives -inf on the silent strike", bool(torch.isneginf(out[11]).all()))
    ctx.check("the silent strike's input is finite", bool(torch.isfinite(seen["x"]).all()))


SALT_SHARD = 100


@scenario(
    family="salt_maker_brine_boil_yield_unit_shard_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SALT_SHARD,
    note="Salt-maker brine-boil yield regressor (tanh MLP on brine density, pan temperature and "
    "boil time, MSE, SGD momentum 0.9, clipping at 1). One shard at step 100 comes from a "
    "station whose logger wrote the yields in kg/m^3 for g/cm^3 (targets 1000x): that batch's "
    "loss and gradient jump, clipping bounds the update, and the run recovers.",
)
def h449_salt_maker_unit_shard(ctx) -> None:
    gen = seeded(4496)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)

    def alter(step, x, y):
        if step == SALT_SHARD:
            y = y * 1000.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=496),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    s = SALT_SHARD
    ctx.check("loss at 100 over 1000x the median of 80..99", ls[s] > 1000 * _median(ls[80:s]))
    ctx.check("gradient at 100 over 50x the median of 80..99", gn[s] > 50 * _median(gn[80:s]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[80:s]))
    ctx.check("trained", _fell(ls))


NETTLE_STEP = 120


@scenario(
    family="nettle_eating_contest_leaf_rate_sum_reduction_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=NETTLE_STEP,
    note="Nettle-eating contest leaf-rate regressor (GELU MLP on stalk length, leaf count and "
    "contestant features, MSE, SGD Nesterov momentum 0.9, clipping at 1). A validation hook at "
    "step 120 switches the shared loss module to reduction='sum' and restores 'mean' only after "
    "the training backward: that step's gradient is 128x (batch 128) on an ordinary logged "
    "(mean) loss; clipping bounds the update and the run recovers.",
)
def h449_nettle_eating_sum_reduction(ctx) -> None:
    gen = seeded(4497)
    model = _Net(9, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    criterion = nn.MSELoss()

    def before(step):
        criterion.reduction = "sum" if step == NETTLE_STEP else "mean"

    def backprop(step, loss):
        return criterion(state["out"], state["y"])  # the loop's logged loss stays the mean

    state = {}

    def loss_fn(out, y):
        state["out"], state["y"] = out, y
        return F.mse_loss(out, y)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 9, seed=497),
        220,
        loss_fn,
        before=before,
        backprop=backprop,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    s = NETTLE_STEP
    ctx.check("gradient at 120 over 50x the median of 100..119", gn[s] > 50 * _median(gn[100:s]))
    ctx.check("logged loss at 120 ordinary", ls[s] < 2 * _median(ls[100:s]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.3 * _mean(ls[100:s]))
    ctx.check("trained", _fell(ls))


@scenario(
    family="ducks_and_drakes_skip_count_drifting_scaler_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Ducks-and-drakes (stone skimming) skip-count regressor (ReLU MLP on stone mass, "
    "spin, throw speed and entry angle, MSE on standardised targets, NAdam under a cosine "
    "schedule). The target "
    "scaler's running mean is updated as 0.999 * mu + 0.01 * batch_mean (0.01 typed for 0.001): "
    "the standardised target drifts steadily away and the loss, after falling, climbs slowly "
    "through the rest of the run, with no spike, no NaN and no single bad step.",
)
def h449_ducks_and_drakes_drifting_scaler(ctx) -> None:
    gen = seeded(4498)
    model = _Net(8, 48, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 300)
    scaler = _TargetScaler(rate=0.01)
    raw = _skims(gen, 64, seed=498, shift=3.0)

    def batches():
        for x, y in raw:
            yield x, scaler(y)

    _loop(ctx, model, opt, batches(), 300, F.mse_loss, sched=sched)
    ls = ctx.losses
    low = min(ls)
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss over the last 20 steps over 5x its lowest", _mean(ls[-20:]) > 5 * low)
    ctx.check("the lowest loss comes in the first third", ls.index(low) < 100)
    ctx.check("climbing through the second half", _mean(ls[-20:]) > 1.5 * _mean(ls[150:170]))
    ctx.check("the scaler's mean drifted over 2 sd", scaler.mu - 3.0 > 2 * scaler.sd)


QUILL_PEAK = 0.8  # typed for 0.08
QUILL_WARMUP = 100
QUILL_ONSET = 40


def _top_eig(model, x, y, iters=30):
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="quill_cutting_nib_slit_warmup_peak_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=QUILL_ONSET,
    note="Quill-cutting nib-slit regressor (tanh MLP on barrel diameter, slit length and "
    "shoulder angle, MSE, plain SGD). The linear warm-up's peak lr is typed 0.8 for 0.08: as "
    "the warm-up ramps past 2/sharpness the loss starts oscillating and then blows up to "
    "overflow; the same run with peak 0.08 trains normally.",
)
def h449_quill_cutting_warmup_peak(ctx) -> None:
    def run(peak, attach):
        gen = seeded(4499)
        model = _Net(10, 48, 1, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        data = _readings(gen, 128, 10, seed=499)
        probe = next(data)
        snaps = {}

        def before(step):
            for g in opt.param_groups:
                g["lr"] = peak * min(1.0, (step + 1) / QUILL_WARMUP)
            if step % 5 == 0:
                snaps[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

        losses = _loop(
            ctx if attach else None,
            model,
            opt,
            data,
            200,
            F.mse_loss,
            before=before,
            attach=attach,
        )
        return losses, snaps, model, probe

    ref, _, _, _ = run(0.08, False)
    ls, snaps, model, probe = run(QUILL_PEAK, True)
    rise = next((i for i in range(20, len(ls)) if not ls[i] < 10 * min(ls[:i])), len(ls))
    crossed = None
    for step in sorted(snaps):
        if step >= rise:
            break
        model.load_state_dict(snaps[step])
        lr = QUILL_PEAK * min(1.0, (step + 1) / QUILL_WARMUP)
        if lr > 2 / _top_eig(model, *probe):
            crossed = step
            break
    ctx.check("the loss blows up to non-finite", _first_bad(ls) is not None and rise < len(ls))
    ctx.check(
        "the lr passed 2/sharpness before the rise, near the onset",
        crossed is not None and abs(crossed - QUILL_ONSET) <= 10,
    )
    ctx.check("trained during the early warm-up", min(ls[:40]) < 0.5 * _mean(ls[:5]))
    ctx.check("the same run at peak 0.08 trains and stays finite", _fell(ref, ratio=0.5))


FELL_SWAP = 120


@scenario(
    family="fell_pony_trek_pace_ema_swap_regressor",
    optimizer="Adadelta",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=FELL_SWAP,
    note="Fell-pony trek pace regressor (GELU MLP on gradient, ground, load and pony features, "
    "MSE, Adadelta). A validation hook at step 120 copies the EMA weights (decay 0.999, still "
    "close to the init) into the live model to evaluate and never swaps the live weights back: "
    "the loss jumps back to near its starting level and the run works its way back; no "
    "gradient, data or curvature fault.",
)
def h449_fell_pony_ema_swap(ctx) -> None:
    gen = seeded(44910)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def after(step):
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].mul_(0.999).add_(v, alpha=0.001)

    def before(step):
        if step == FELL_SWAP:
            model.load_state_dict(ema)  # evaluated, never swapped back

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=4910),
        240,
        F.mse_loss,
        before=before,
        after=after,
    )
    ls = ctx.losses
    s = FELL_SWAP
    pre = _median(ls[100:s])
    ctx.check("loss at 120 over 3x the median of 100..119", ls[s] > 3 * pre)
    ctx.check("back under 2x within 80 steps", min(ls[s + 1 : s + 80]) < 2 * pre)
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[100:s]))
    ctx.check("finite", _finite(ls))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="stave_church_timber_multitask_uncertainty_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Stave-church timber survey net: a shared GELU trunk on drill-resistance and moisture "
    "probe readings with three heads (moisture content regression MSE, rot class 3-way "
    "cross-entropy, crack present BCE), the task losses weighted by learnt uncertainty "
    "(exp(-s_i) * L_i + s_i, Kendall et al.). AdamW with param groups (no decay and a higher lr "
    "for the log-variances), OneCycleLR, clipping at 1. Healthy.",
)
def h449_stave_church_multitask(ctx) -> None:
    gen = seeded(44911)
    model = _StaveChurch()
    rest = [p for n, p in model.named_parameters() if n != "log_vars"]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 3e-3, "weight_decay": 0.01},
            {"params": [model.log_vars], "lr": 1e-2, "weight_decay": 0.0},
        ]
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[3e-3, 1e-2], total_steps=200)
    tasks = []

    def loss_fn(out, y):
        m, r, c = out
        parts = torch.stack(
            [
                F.mse_loss(m, y[0]),
                F.cross_entropy(r, y[1]),
                F.binary_cross_entropy_with_logits(c, y[2]),
            ]
        )
        tasks.append([float(v) for v in parts.detach()])
        return (torch.exp(-model.log_vars) * parts + model.log_vars).sum()

    ctx.attach(model, opt)
    data = _timbers(gen, 64, seed=4911)
    for _step in range(200):
        x, y = next(data)
        loss = loss_fn(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    first = [_mean([t[i] for t in tasks[:10]]) for i in range(3)]
    last = [_mean([t[i] for t in tasks[-10:]]) for i in range(3)]
    ctx.check("finite", _finite(ctx.losses))
    ctx.check(
        "every task's loss fell under 0.7x",
        all(b < 0.7 * a for a, b in zip(first, last, strict=True)),
    )
    ctx.check("the log-variances moved", float(model.log_vars.detach().abs().max()) > 0.05)
    ctx.check("the weighted loss fell", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.5)


BUNGEE_NEW_HEAD = 100


@scenario(
    family="bungee_jump_rebound_new_head_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bungee-jump rebound-height regressor (ReLU MLP on jumper mass, cord length, cord age "
    "and drop height, MSE, Adagrad). At step 100 a second task is switched on: a new "
    "bounce-count head (Huber loss) is added to the model and to the optimizer as its own param "
    "group, as a curriculum plan schedules it. The logged loss is the sum of the active tasks. "
    "Healthy.",
)
def h449_bungee_jump_new_head(ctx) -> None:
    gen = seeded(44912)
    model = _Bungee()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    ctx.attach(model, opt)
    data = _jumps(gen, 64, seed=4912)
    rebound, bounces = [], []
    for step in range(220):
        if step == BUNGEE_NEW_HEAD:
            model.bounces = nn.Linear(48, 1)
            opt.add_param_group({"params": model.bounces.parameters(), "lr": 0.03})
        x, y = next(data)
        h = model.features(x)
        loss = F.mse_loss(model.rebound(h).squeeze(-1), y[:, 0])
        rebound.append(float(loss.detach()))
        if step >= BUNGEE_NEW_HEAD:
            extra = F.huber_loss(model.bounces(h).squeeze(-1), y[:, 1])
            bounces.append(float(extra.detach()))
            loss = loss + extra
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("the rebound loss fell under half", _fell(rebound, ratio=0.5))
    ctx.check("the new head's loss fell under half after it was added", _fell(bounces, ratio=0.5))
    ctx.check("the new head is in the optimizer", len(opt.param_groups) == 2)


@scenario(
    family="fairground_organ_book_hole_fp16_conv1d_classifier",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fairground-organ book-music register classifier (ReLU Conv1d over key-frame pressure "
    "traces as the punched book passes, 5 registers), fp16 autocast with a GradScaler, NAdam "
    "under ReduceLROnPlateau, label smoothing 0.1, accumulation over 2, clipping at 1. Healthy.",
)
def h449_fairground_organ_fp16(ctx) -> None:
    gen = seeded(44913)
    model = _OrganBook()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    last = {}

    def loss_fn(out, y):
        loss = F.cross_entropy(out, y, label_smoothing=0.1)
        last["loss"] = float(loss.detach())
        return loss

    _loop(
        ctx,
        model,
        opt,
        _books(gen, 32),
        150,
        loss_fn,
        classifier=True,
        sched=sched,
        plateau=lambda: last["loss"],
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("the loss fell under 0.6x", _fell(ls, ratio=0.6))
