"""Held-out set 473 (``h473_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a quidditch quaffle pass-speed Huber regressor whose per-sample weight table is read in
percent for one step (a 100x gradient, clipped, SGD Nesterov), a tosher sewer-find weight regressor
fed one shard in grams for kilograms (SGD momentum, clipped), a kemence bow-pressure two-group
regressor whose trunk lr is typed 2e-9 for 2e-3 (Adamax), a txalaparta plank-strike prototypical
network whose distance temperature is typed 0.001 for 1.0 (softmax saturates, Adam), a
sailing-stone playa-track net taking log(wind speed) with no clamp (a calm reading gives log 0,
Adagrad), a bandoneon bellows Conv1d classifier fed raw 24-bit PCM from one recorder under fp16
autocast (fp16 overflow, RAdam), a skyquake boom-arrival linear state-space regressor whose decay
is typed 1.04 for 0.96 (gradients grow back through time, SGD), a catatumbo lightning-flash ReLU
classifier whose fc1 bias init is typed -6.0 for -0.06 (dead ReLUs, AdamW), a ratcatcher trap-yield regressor
whose hand-written decoupled decay multiplies by (1 + lr * wd) (RMSprop; a slow climb) and a
gorodki figure-knockout BCE tagger fed crowd votes in percent (0..100) as targets (NAdam; the
head's logits grow without bound).

Controls: a kemari kick-style prototypical network on episodes of varying difficulty (Adam,
warm-up and cosine decay, clipping; batch losses swing widely); a bandy stick-strike Conv1d
classifier under fp16 autocast with a GradScaler (SGD Nesterov, OneCycleLR, label smoothing,
clipping); a graupel pellet-size regressor with ASGD, ReduceLROnPlateau, accumulation over 2,
clipping and noisy readings.
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


# -- few-shot episodes and a prototypical network ---------------------------------------------------


def _strike_pool(seed, classes=40, d_in=16):
    """A pool of classes (strike tones): a centre per class, a shared nonlinear mixing."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d_in, generator=g)
    mix = torch.randn(d_in, d_in, generator=g) / math.sqrt(d_in)
    return centres, mix


def _episodes(gen, pool, ways=5, shots=5, queries=8, spread=(0.6, 0.6)):
    """Endless N-way K-shot episodes: (support, query) inputs and query labels. ``spread`` is the
    range of within-class noise; a wide range gives easy and hard episodes."""
    centres, mix = pool
    d_in = centres.shape[1]
    while True:
        cls = torch.randperm(len(centres), generator=gen)[:ways]
        s = spread[0] + (spread[1] - spread[0]) * float(torch.rand(1, generator=gen))
        n = shots + queries
        raw = centres[cls][:, None, :] + s * torch.randn(ways, n, d_in, generator=gen)
        raw = torch.tanh(raw @ mix) + 0.3 * raw
        support = raw[:, :shots].reshape(ways * shots, d_in)
        query = raw[:, shots:].reshape(ways * queries, d_in)
        yq = torch.arange(ways).repeat_interleave(queries)
        yield (support, query, ways, shots), yq


class _NegSqDistance(nn.Module):
    """Logits of a prototypical network: -||q - c||^2 / temperature."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, q, protos):
        return -torch.cdist(q, protos).pow(2) / self.temperature


class _ProtoNet(nn.Module):
    """Embeds support and query; class prototypes are the means of the support embeddings."""

    def __init__(self, d_in=16, hidden=64, dim=32, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, dim)
        self.metric = _NegSqDistance(temperature)

    def embed(self, x):
        return self.fc2(self.act1(self.fc1(x)))

    def forward(self, episode):
        support, query, ways, shots = episode
        protos = self.embed(support).reshape(ways, shots, -1).mean(1)
        return self.metric(self.embed(query), protos)


# -- 1. gradient spike: a weight table read in percent for one step ---------------------------------


@scenario(
    family="quidditch_quaffle_pass_speed_nesterov_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Quidditch quaffle pass-speed regressor (tanh MLP on arm, broom and distance features, "
    "per-sample weighted Huber loss, SGD Nesterov, clipping at 1). At step 120 the weight table "
    "is reloaded from a file that stores weights in percent, read as fractions: the weights are "
    "100 for one step, the backpropagated loss and gradient are 100x; the logged (unweighted) "
    "loss is ordinary and the run recovers.",
)
def h473_quaffle_weight_percent(ctx) -> None:
    gen = seeded(4731)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        weight = 100.0 if step == 120 else 1.0
        return weight * loss

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=4731),
        220,
        nn.HuberLoss(delta=1.0),
        backprop=backprop,
        clip=1.0,
    )
    before = norms[100:120]
    ctx.check("gradient at 120 over 50x the median of 100-119", norms[120] > 50 * _median(before))
    ctx.check(
        "the logged loss at 120 ordinary (under 2x the mean of 110-119)",
        losses[120] < 2 * _mean(losses[110:120]),
    )
    ctx.check(
        "recovers: the last 20 steps under 1.5x the 20 before onset",
        _mean(losses[-20:]) < 1.5 * _mean(losses[100:120]),
    )
    ctx.check("trained", _fell(losses))


# -- 2. data outlier: a shard in grams ---------------------------------------------------------------


@scenario(
    family="tosher_sewer_find_weight_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Tosher sewer-find weight regressor (ReLU MLP on sieve, silt-depth and flow features, "
    "MSE, SGD momentum, clipping at 5). The shard read at step 100 was exported by another "
    "team in grams, not kilograms: its targets are 1000x. The loss and gradient spike for that "
    "one batch and the run recovers.",
)
def h473_tosher_grams_shard(ctx) -> None:
    gen = seeded(4732)
    model = _Net(9, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        return (x, 1000.0 * y) if step == 100 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 9, seed=4732), 200, F.mse_loss, alter=alter, clip=5.0
    )
    ctx.check("loss at 100 over 20x the mean of 90-99", losses[100] > 20 * _mean(losses[90:100]))
    ctx.check(
        "gradient at 100 over 10x the median of 90-99", norms[100] > 10 * _median(norms[90:100])
    )
    ctx.check(
        "recovers: the last 20 steps under 1.5x 80-99",
        _mean(losses[-20:]) < 1.5 * _mean(losses[80:100]),
    )
    ctx.check("trained", _fell(losses))


# -- 3. update ratio: a trunk lr typed 2e-9 -----------------------------------------------------------


@scenario(
    family="kemence_bow_pressure_two_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Kemence bow-pressure regressor (GELU MLP on string, finger and bow-speed features, "
    "MSE, Adamax with two param groups: trunk fc1/fc2 and head). The trunk's lr is typed 2e-9 for "
    "2e-3 in the config: the trunk receives gradients but its weights hardly move, only the head "
    "learns; the loss falls slowly and stalls.",
)
def h473_kemence_trunk_lr_typo(ctx) -> None:
    gen = seeded(4733)
    model = _Net(8, 48, 1, act=nn.GELU)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adamax(
        [{"params": trunk, "lr": 2e-9}, {"params": model.head.parameters(), "lr": 2e-3}]
    )
    w1 = model.fc1.weight.detach().clone()
    wh = model.head.weight.detach().clone()
    grads = []
    data = _readings(gen, 64, 8, seed=4733)
    losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss)
    x, y = next(data)
    F.mse_loss(model(x), y).backward()
    grads.append(float(model.fc1.weight.grad.norm()))
    model.zero_grad(set_to_none=True)
    moved1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    movedh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ctx.check("fc1 receives gradients", grads[0] > 1e-4)
    ctx.check("fc1 moved under 1e-5 of its norm", moved1 < 1e-5)
    ctx.check("the head moved over 5% of its norm", movedh > 0.05)
    ctx.check("finite", _finite(losses))


# -- 4. softmax collapse: a prototypical network's temperature typed 0.001 ------------------------


@scenario(
    family="txalaparta_plank_strike_protonet",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("metric",),
    diverges=None,
    heldout=True,
    note="Txalaparta plank-strike tone few-shot classifier: a prototypical network (ReLU "
    "embedding, class prototypes as means of the support embeddings, logits -||q - c||^2 / T, "
    "5-way 5-shot episodes, cross-entropy, Adam). The distance temperature is typed 0.001 for "
    "1.0: the logits are 1000x, the query softmax saturates and most rows' target probability "
    "rounds to exactly 1.0 (the others to 0).",
)
def h473_txalaparta_protonet_temperature(ctx) -> None:
    gen = seeded(4734)
    model = _ProtoNet(temperature=0.001)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    episodes = _episodes(gen, _strike_pool(4734))
    losses, _ = _loop(ctx, model, opt, episodes, 150, F.cross_entropy, classifier=True)
    eps = [
        next(_episodes(torch.Generator().manual_seed(9 + i), _strike_pool(4734))) for i in range(4)
    ]
    with torch.no_grad():
        bad = _mean([collapsed_fraction(model(e), y) for e, y in eps])
        model.metric.temperature = 1.0
        good = _mean([collapsed_fraction(model(e), y) for e, y in eps])
        model.metric.temperature = 0.001
    ctx.check("over half the query rows' target probability exactly 1.0", bad > 0.5)
    ctx.check("under 5% at temperature 1.0 with the same weights", good < 0.05)
    ctx.check("finite", _finite(losses))


# -- 5. nonfinite: log of a calm wind ----------------------------------------------------------------


class _LogWind(nn.Module):
    """log of the wind-speed column (no clamp), concatenated with the other readings."""

    def forward(self, x):
        return torch.cat([x[:, :1], torch.log(x[:, 1:2]), x[:, 2:]], 1)


class _PlayaNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.logwind = _LogWind()
        self.net = _Net(d_in, hidden, 1, act=nn.SiLU)

    def forward(self, x):
        return self.net(self.logwind(x))


@scenario(
    family="sailing_stone_playa_track_log_wind_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logwind",),
    diverges=110,
    heldout=True,
    onset=110,
    note="Sailing-stone playa track-length regressor (SiLU MLP on ice-sheet, mud and wind "
    "readings, MSE, Adagrad). The model takes log(wind speed) with no clamp; the batch at step "
    "110 holds a calm reading (0 m/s): log 0 = -inf, the loss is NaN at 110.",
)
def h473_sailing_stone_log_calm(ctx) -> None:
    gen = seeded(4735)
    model = _PlayaNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    base = _readings(gen, 64, 8, seed=4735)

    def data():
        for x, y in base:
            x = x.clone()
            x[:, 1] = 2.0 + 8.0 * torch.rand(len(x), generator=gen)  # wind, m/s
            yield x, y + 0.1 * torch.log(x[:, 1])

    seen = {}

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[7, 1] = 0.0
            with torch.no_grad():
                seen["inf"] = bool(torch.isinf(model.logwind(x)).any())
        return x, y

    losses, _ = _loop(ctx, model, opt, data(), 200, F.mse_loss, alter=alter)
    ctx.check("finite before 110", _finite(losses[:110]))
    ctx.check("the loss non-finite at 110", len(losses) == 111 and not math.isfinite(losses[110]))
    ctx.check("logwind's output holds -inf at 110", seen.get("inf", False))
    ctx.check("trained before", _mean(losses[100:110]) < 0.8 * _mean(losses[:10]))


# -- 6. amp overflow: raw 24-bit PCM under fp16 autocast ---------------------------------------------


def _tones(gen, batch, classes, seed, length=64):
    """Short bellows/reed recordings in [-1, 1]: a class-specific pair of partials plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0.06, 0.42, classes)
    freqs = torch.stack([base, base * (1.5 + 0.5 * torch.rand(classes, generator=g))], 1)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        ph = 6.28 * torch.rand(batch, 2, 1, generator=gen)
        f = freqs[y][:, :, None]
        x = 0.4 * torch.sin(6.28 * f * t + ph).sum(1) + 0.15 * torch.randn(
            batch, length, generator=gen
        )
        yield x.clamp(-1, 1), y


class _ToneConv(nn.Module):
    def __init__(self, classes, length=64, width=12):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(width * length // 4, 32)
        self.act3 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act1(self.conv1(x[:, None, :]))
        h = F.max_pool1d(self.act2(self.conv2(h)), 4)
        return self.head(self.act3(self.fc(h.flatten(1))))


def _amp_loop(ctx, model, opt, batches, steps, loss_fn, *, alter=None, sched=None, clip=None):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    losses = []
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = loss_fn(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses


def _first_inf_module(model, x):
    """Name of the first module (in call order) whose fp16-autocast output holds an inf."""
    found = []

    def hook(name):
        def fn(_m, _i, out):
            if not found and torch.is_tensor(out) and torch.isinf(out).any():
                found.append(name)

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        model(x)
    for h in handles:
        h.remove()
    return found[0] if found else None


@scenario(
    family="bandoneon_bellows_pcm_fp16_conv1d_classifier",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("conv1",),
    diverges=120,
    heldout=True,
    onset=120,
    note="Bandoneon bellows-noise Conv1d classifier (reed/valve fault classes, fp16 autocast with "
    "a GradScaler, cross-entropy, RAdam). From step 120 the batches come from a second recorder "
    "that records 24-bit PCM, and the loader returns the raw integer samples (up to 8388607) "
    "instead of dividing by 2**23: conv1's fp16 output exceeds 65504 and overflows to inf and the loss is non-finite "
    "at 120 (float32 stays finite).",
)
def h473_bandoneon_raw_24bit_pcm(ctx) -> None:
    gen = seeded(4736)
    model = _ToneConv(6)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    seen = {}

    def alter(step, x, y):
        if step >= 120:
            x = torch.round(x * 8388607.0)
            if "probe" not in seen:
                seen["probe"] = x
        return x, y

    losses = _amp_loop(
        ctx, model, opt, _tones(gen, 48, 6, seed=4736), 200, F.cross_entropy, alter=alter
    )
    x = seen.get("probe")
    with torch.no_grad():
        f32 = bool(torch.isfinite(model(x)).all()) if x is not None else False
    first = _first_inf_module(model, x) if x is not None else None
    ctx.check("finite before 120", _finite(losses[:120]))
    ctx.check("the loss non-finite at 120", len(losses) == 121 and not math.isfinite(losses[120]))
    ctx.check("conv1's fp16 output is the first to hold inf", first == "conv1")
    ctx.check("float32 forward on the same batch finite", f32)
    ctx.check("trained before", _mean(losses[110:120]) < 0.8 * _mean(losses[:10]))


# -- 7. exploding gradients: a state-space decay typed 1.08 -----------------------------------------


class _SSMCell(nn.Module):
    """A linear recurrent state-space cell: h_t = decay * (A h_{t-1}) + B x_t."""

    def __init__(self, d_in, state, decay):
        super().__init__()
        self.A = nn.Parameter(torch.linalg.qr(torch.randn(state, state))[0])
        self.B = nn.Linear(d_in, state)
        self.decay = decay

    def forward(self, x, keep=None):
        h = torch.zeros(x.shape[0], self.A.shape[0])
        for t in range(x.shape[1]):
            h = self.decay * h @ self.A.T + self.B(x[:, t])
            if keep is not None:
                h.retain_grad()
                keep.append(h)
        return h


class _Arrival(nn.Module):
    def __init__(self, d_in=3, state=24, decay=0.98):
        super().__init__()
        self.cell = _SSMCell(d_in, state, decay)
        self.head = nn.Linear(state, 1)

    def forward(self, x, keep=None):
        return self.head(self.cell(x, keep)).squeeze(-1)


def _microbarograph(gen, batch, length=48):
    """Pressure, wind and infrasound traces; target: a boom's arrival time (scaled)."""
    while True:
        t0 = torch.randint(5, length - 5, (batch,), generator=gen)
        t = torch.arange(length)[None, :]
        pulse = torch.exp(-0.5 * ((t - t0[:, None]) / 2.0) ** 2)
        x = torch.stack(
            [pulse, 0.3 * torch.randn(batch, length, generator=gen), pulse.cumsum(1) / 5], -1
        )
        yield x + 0.05 * torch.randn(batch, length, 3, generator=gen), t0.float() / length


def _time_grad_ratio(model, x, y):
    keep = []
    loss = F.mse_loss(model(x, keep), y)
    loss.backward()
    first, last = float(keep[0].grad.norm()), float(keep[-1].grad.norm())
    norm = grad_norm(model)
    model.zero_grad(set_to_none=True)
    return first / max(last, 1e-12), norm


@scenario(
    family="skyquake_boom_arrival_linear_ssm_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="Skyquake boom arrival-time regressor (a hand-written linear state-space cell over 48 "
    "steps of microbarograph traces, MSE, plain SGD). The cell's decay is typed 1.04 for 0.96 (64 steps, a linear lr warm-up to 1e-3): "
    "the state's Jacobian has spectral radius 1.04, gradients grow back through time (over 10x "
    "at the first step against the last, the first gradients hundreds of times the intended cell's); SGD shrinks the state matrix back and the run limps on without blowing up.",
)
def h473_skyquake_decay_typo(ctx) -> None:
    gen = seeded(4737)
    model = _Arrival(decay=1.04)
    ref = _Arrival(decay=0.96)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, 0.01 + s / 150))
    data = _microbarograph(gen, 32, 64)
    x, y = next(data)
    ratio, norm = _time_grad_ratio(model, x, y)
    ratio_ref, norm_ref = _time_grad_ratio(ref, x, y)
    losses, norms = _loop(ctx, model, opt, data, 250, F.mse_loss, sched=sched)
    ctx.check("gradient at the first step over 10x the last's", ratio > 10)
    ctx.check("under 3x at decay 0.96", ratio_ref < 3)
    ctx.check(
        "gradient norm over 50x the decay-0.96 model's on the same batch", norm > 50 * norm_ref
    )
    ctx.check("the run's first gradient norm over 50x its median", norms[0] > 50 * _median(norms))
    ctx.check("finite", _finite(losses))


# -- 8. plasticity: an AdamW lr typed 0.3 -------------------------------------------------------------


@scenario(
    family="catatumbo_lightning_flash_relu_classifier",
    optimizer="AdamW",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Catatumbo lightning flash-type classifier (ReLU MLP on photodiode and VLF features, "
    "cross-entropy, AdamW). A sparse-activation recipe's fc1 bias init of -0.06 is typed -6.0: "
    "fc1's pre-activations are negative for almost every input, act1's units are dead, get no "
    "gradient and never learn, and the loss stalls far above the intended run's.",
)
def h473_catatumbo_bias_typo_dead(ctx) -> None:
    gen = seeded(4738)
    model = _Net(12, 64, 5)
    ref = _Net(12, 64, 5)
    ref.load_state_dict(model.state_dict())
    nn.init.constant_(model.fc1.bias, -6.0)
    nn.init.constant_(ref.fc1.bias, -0.06)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=1e-2)
    data = _grades(gen, 64, 12, 5, seed=4738)
    losses, _ = _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True)
    ref_data = _grades(torch.Generator().manual_seed(1), 64, 12, 5, seed=4738)
    ref_losses, _ = _loop(ctx, ref, ref_opt, ref_data, 200, F.cross_entropy, attach=False)
    probe, _ = next(_grades(torch.Generator().manual_seed(2), 512, 12, 5, seed=4738))
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(probe)))
        dead_ref = dead_fraction(ref.act1(ref.fc1(probe)))
    ctx.check("over 90% of fc1's units dead at the end", dead > 0.9)
    ctx.check("under 20% dead in the intended run", dead_ref < 0.2)
    ctx.check(
        "the loss over 2x the intended run's at the end",
        _mean(losses[-20:]) > 2 * _mean(ref_losses[-20:]),
    )


# -- 9. divergence: a decoupled decay with its sign flipped -------------------------------------------


@scenario(
    family="ratcatcher_trap_yield_decoupled_decay_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Ratcatcher trap-yield regressor (tanh MLP on bait, site and season features, MSE, "
    "RMSprop with a hand-written decoupled weight decay after each step). The decay is written "
    "p.mul_(1 + lr * wd) for p.mul_(1 - lr * wd): every weight grows by 1% a step, and the loss, "
    "after falling, climbs slowly with no single event.",
)
def h473_ratcatcher_decay_sign(ctx) -> None:
    gen = seeded(4739)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    w0 = math.sqrt(sum(float(p.norm() ** 2) for p in model.parameters()))

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 1e-3 * 10.0)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 8, seed=4739), 250, F.mse_loss, after=after
    )
    w1 = math.sqrt(sum(float(p.norm() ** 2) for p in model.parameters()))
    best = min(_mean(losses[i : i + 10]) for i in range(0, len(losses) - 10))
    ctx.check("weights over 2x their initial norm", w1 > 2 * w0)
    ctx.check("the loss climbs over 3x its best (10-step means)", _mean(losses[-10:]) > 3 * best)
    ctx.check("finite", _finite(losses))


# -- 10. output logits: crowd votes in percent as BCE targets ----------------------------------------


@scenario(
    family="gorodki_figure_knockout_vote_bce_tagger",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Gorodki figure-knockout tagger (ReLU MLP on bat-throw features, one logit per pin of "
    "the figure, BCEWithLogits on soft targets from judges' votes, NAdam). The vote share is "
    "exported in percent (0..100) and not divided by 100: targets above 1 make the loss "
    "unbounded below, the head's logits grow without bound and the 'loss' goes negative.",
)
def h473_gorodki_vote_percent(ctx) -> None:
    gen = seeded(4740)
    g = torch.Generator().manual_seed(4740)
    w = torch.randn(10, 5, generator=g)

    def data():
        while True:
            x = torch.randn(64, 10, generator=gen)
            yield x, 100.0 * torch.sigmoid(x @ w)

    model = _Net(10, 48, 5)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    probe = torch.randn(256, 10, generator=torch.Generator().manual_seed(1))
    mags = []

    def after(step):
        with torch.no_grad():
            mags.append(float(model(probe).abs().mean()))

    losses, _ = _loop(ctx, model, opt, data(), 200, F.binary_cross_entropy_with_logits, after=after)
    ctx.check(
        "head's mean |logit| over 20x its first steps'", _mean(mags[-10:]) > 20 * _mean(mags[:5])
    )
    ctx.check("still climbing over the last 60 steps", mags[-1] > 1.3 * mags[-60])
    ctx.check("the loss below 0, impossible for a valid BCE", losses[-1] < 0)
    ctx.check("finite", _finite(losses))


# -- controls -------------------------------------------------------------------------------------------


@scenario(
    family="kemari_kick_style_episode_protonet",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kemari kick-style few-shot classifier: a prototypical network (ReLU embedding, class "
    "prototypes as means of the support embeddings, logits -||q - c||^2, 5-way 5-shot "
    "episodes, cross-entropy, Adam with linear warm-up and cosine decay, clipping at 5). Each "
    "episode's within-class spread is drawn from 0.2 to 1.6, so easy and hard episodes "
    "alternate and the batch loss swings widely; it trains normally.",
)
def h473_kemari_protonet_control(ctx) -> None:
    gen = seeded(4741)
    model = _ProtoNet(temperature=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = 240
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    pool = _strike_pool(4741)
    episodes = _episodes(gen, pool, spread=(0.2, 1.6))
    losses, _ = _loop(
        ctx, model, opt, episodes, steps, F.cross_entropy, classifier=True, clip=5.0, sched=sched
    )
    evals = [
        next(_episodes(torch.Generator().manual_seed(70 + i), pool, spread=(0.6, 0.6)))
        for i in range(8)
    ]
    with torch.no_grad():
        acc = _mean([float((model(e).argmax(1) == y).float().mean()) for e, y in evals])
    late = [v for v in losses[-60:] if v > 0]
    ctx.check(
        "trained: the last 30 episodes' mean under 0.6x the first 30's", _fell(losses, 30, 0.6)
    )
    ctx.check("query accuracy over 0.7 on held-out episodes", acc > 0.7)
    ctx.check("batch losses swing widely (late max over 5x late min)", max(late) > 5 * min(late))


@scenario(
    family="bandy_stick_strike_fp16_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bandy stick-strike Conv1d classifier (accelerometer traces of strike types, fp16 "
    "autocast with a GradScaler, SGD Nesterov under OneCycleLR, label smoothing 0.1, clipping "
    "at 2). Inputs are scaled correctly; it trains normally.",
)
def h473_bandy_fp16_control(ctx) -> None:
    gen = seeded(4742)
    model = _ToneConv(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
    losses = _amp_loop(
        ctx,
        model,
        opt,
        _tones(gen, 48, 6, seed=4742),
        200,
        nn.CrossEntropyLoss(label_smoothing=0.1),
        sched=sched,
        clip=2.0,
    )
    ctx.check("trained: loss fell under 0.6x", _fell(losses, 10, 0.6))
    ctx.check("finite", _finite(losses) and len(losses) == 200)


class _TiedAE(nn.Module):
    """A tanh autoencoder whose decoder reuses the encoder's weight (tied), plus a size head."""

    def __init__(self, d_in=12, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))
        self.head = nn.Linear(code, 1)

    def forward(self, x):
        z = torch.tanh(self.enc(x))
        return F.linear(z, self.enc.weight.T, self.dec_bias), self.head(z).squeeze(-1)


@scenario(
    family="graupel_pellet_size_asgd_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Graupel pellet-size regressor (a tied-weight tanh autoencoder of disdrometer readings "
    "with a size head, MSE reconstruction plus Huber size loss, ASGD with two param groups, "
    "ReduceLROnPlateau, accumulation over 2, clipping at 1, noisy readings). It trains normally.",
)
def h473_graupel_asgd_control(ctx) -> None:
    gen = seeded(4743)
    model = _TiedAE()
    opt = torch.optim.ASGD(
        [
            {"params": [model.enc.weight, model.enc.bias, model.dec_bias], "lr": 0.05},
            {"params": model.head.parameters(), "lr": 0.1},
        ],
        t0=100,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    base = _readings(gen, 32, 12, seed=4743, noise=0.2)
    huber = nn.HuberLoss(delta=0.5)

    def data():
        for x, y in base:
            yield x, (x, y)

    def loss_fn(out, target):
        recon, size = out
        return F.mse_loss(recon, target[0]) + huber(size, target[1])

    def after(step):
        if step % 10 == 9:
            sched.step(_mean(ctx.losses[-10:]))

    losses, _ = _loop(ctx, model, opt, data(), 200, loss_fn, accumulate=2, clip=1.0, after=after)
    ctx.check("trained: loss fell under 0.8x", _fell(losses, 10, 0.8))
    ctx.check("finite", _finite(losses))
