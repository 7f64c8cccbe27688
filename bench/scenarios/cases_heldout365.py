"""Held-out set 365 (``h365_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a unicycle-hockey shot-type ReLU classifier whose softmax
temperature is typed 0.01 for 1.0 (the softmax saturates), a pogonip ice-fog visibility 10-layer
ReLU Conv1d regressor whose He init counts only input channels as fan-in (gradients grow through
depth), a clam-rake haul-weight SiLU Huber regressor fed one shard in centimetres (one corrupted
batch), a luthier purfling-depth ReLU regressor whose Adam lr is typed 0.05 for 5e-4 (ReLUs die),
a pushball shove-call embedding classifier whose embedding group's lr is typed 1e-8 for 1e-3
(frozen), a lake-ice singing-pitch tanh regressor whose warm-up peak lr is typed 2.0 for 0.2 (past
2/sharpness), a whale-fall scavenger-count Poisson net whose rate lost its softplus (log 0), a
gong-chime loudness net squaring amplitudes in fp16 under autocast (fp16 overflow), a camel-polo
swing-speed SiLU regressor whose resume step keeps an old static loss scale (one gradient burst),
a clockspring torque GELU regressor whose hand-written weight decay has its sign flipped (a slow
climb), and three controls (a fret-levelling buzz capsule network with dynamic routing over three
iterations and the margin loss, a kite-landboard trick Conv1d classifier with SGD Nesterov,
OneCycleLR and label smoothing, a horse-ball pass-distance SiLU Huber regressor under fp16
autocast with a GradScaler, RMSprop, accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


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


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


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
    watch=None,
    after=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the
    gradients before clipping. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


def _traces(gen, batch, classes, seed, length=32, noise=0.4):
    """Short one-channel traces: each class a fixed mix of two tones, with noise and jitter."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.5 + 3.0 * torch.rand(classes, 2, generator=g)
    amps = 0.5 + torch.rand(classes, 2, generator=g)
    t = torch.linspace(0, 2 * math.pi, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        x = amps[y, :1] * torch.sin(freqs[y, :1] * t + phase) + amps[y, 1:] * torch.cos(
            freqs[y, 1:] * t
        )
        yield (x + noise * torch.randn(batch, length, generator=gen))[:, None, :], y


def _sequences(gen, batch, seed, vocab=40, length=12, classes=4):
    """Token sequences whose class is the most frequent of four token groups."""
    g = torch.Generator().manual_seed(seed)
    group = torch.randint(0, classes, (vocab,), generator=g)
    while True:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        counts = F.one_hot(group[x], classes).sum(1).float()
        y = (counts + 0.1 * torch.randn(batch, classes, generator=gen)).argmax(1)
        yield x, y


# -- unicycle hockey: the temperature of the shot-type softmax typed 0.01 for 1.0 ------------------


class TemperedTrunk(Trunk):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="unicycle_hockey_shot_type_temperature_relu_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU classifier (fc1, act1, fc2, act2, head) naming the shot type (8 kinds) of a unicycle-hockey player from 16 stick and wheel readings, Adam at 1e-3, cross-entropy, 200 steps. The logits are divided by a temperature from the config, typed 0.01 for 1.0: the head's logits are multiplied by 100, the float32 softmax saturates and over 60% of the rows give their target a probability of exactly 1.0 by the end (none would at temperature 1.0), and the loss stays finite.",
)
def h365_unicycle_hockey_temperature_typo(ctx: Context) -> None:
    gen = seeded(36501)
    model = TemperedTrunk(16, 64, 8, temperature=0.01)  # meant: 1.0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    collapsed, plain = [], []

    def watch(step, out, x, y):
        p = torch.softmax(out.detach(), -1)
        collapsed.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))
        p1 = torch.softmax(out.detach() * model.temperature, -1)
        plain.append(float((p1.gather(1, y[:, None]) == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 128, 16, 8, 36511, spread=0.6),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "under 25% of rows give their target probability exactly 1.0 at step 0", collapsed[0] < 0.25
    )
    ctx.check(
        "over 60% of rows give their target probability exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.6,
    )
    ctx.check("at temperature 1.0 the same logits collapse no row", max(plain[-20:]) == 0.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pogonip: a conv stack initialised with fan-in counting channels only ---------------------------


class DeepConv1d(nn.Module):
    """convs.0 .. convs.{depth-1} (Conv1d, ReLU between), mean-pooled into head."""

    def __init__(self, channels=16, depth=10, kernel=5, out=1):
        super().__init__()
        self.stem = nn.Conv1d(1, channels, 1)
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=kernel // 2) for _ in range(depth)
        )
        self.head = nn.Linear(channels, out)
        self.acts = []

    def forward(self, x):
        h = self.stem(x)
        self.acts = []
        for conv in self.convs:
            h = F.relu(conv(h))
            if h.requires_grad:
                h.retain_grad()
            self.acts.append(h)
        out = self.head(h.mean(-1))
        return out.squeeze(-1)


@scenario(
    family="pogonip_ice_fog_visibility_deep_relu_conv1d",
    optimizer="NAdam",
    cause="exploding_gradients",
    where=("convs.0",),
    diverges=None,
    heldout=True,
    note="A hand-written 10-layer ReLU Conv1d regressor (stem, convs.0..convs.9, head) forecasting the visibility under pogonip ice fog from a 32-step trace of humidity readings, NAdam at 1e-3, MSE, gradient clipping at 1.0, 150 steps. The hand-written He initialisation computes the fan-in as the number of input channels and forgets the kernel width of 5: every layer amplifies by about sqrt(5), so the first loss is in the thousands and the gradient at convs.0's output is over 100x that at convs.9's at the start and over 20x through the first 50 steps; the clipping keeps the run from blowing up.",
)
def h365_pogonip_conv_fan_in_bug(ctx: Context) -> None:
    gen = seeded(36502)
    model = DeepConv1d()
    with torch.no_grad():
        for conv in model.convs:
            fan_in = conv.in_channels  # meant: conv.in_channels * conv.kernel_size[0]
            conv.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
            conv.bias.zero_()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    ratios = []

    def traces():
        src = _traces(gen, 64, 4, 36512)
        while True:
            x, c = next(src)
            yield x, 0.5 * c.float() - 0.75 + 0.3 * x.std(-1).squeeze(1)

    def inspect(step):
        first, last = model.acts[0].grad, model.acts[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(ctx, model, opt, traces(), 150, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check(
        "the gradient at convs.0's output is over 100x that at convs.9's at step 0", ratios[0] > 100
    )
    ctx.check("it stays over 20x through the first 50 steps", min(ratios[:50]) > 20)
    ctx.check(
        "the first loss is over 100x the last 20 steps' mean",
        ctx.losses[0] > 100 * _mean(ctx.losses[-20:]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- clam rake: one landing's shard logged in centimetres ------------------------------------------


@scenario(
    family="clam_rake_haul_weight_silu_huber_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A hand-written SiLU regressor (fc1, act1, fc2, act2, head) predicting a clam raker's haul weight from 12 standardised tide, sand and rake readings, Adagrad at 0.05, Huber loss, gradient clipping at 5.0, 240 steps. At step 120 one landing's shard arrives with its depth and distance readings in centimetres, unstandardised (100x): the loss and the gradient jump over 20x on that batch, the clipping bounds the update and the run recovers.",
)
def h365_clam_rake_centimetre_shard(ctx: Context) -> None:
    gen = seeded(36503)
    model = Trunk(12, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :6] = 100.0 * x[:, :6] + 250.0
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 12, 36513), 240, F.huber_loss, alter=alter, clip=5.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 120 is over 20x the median of the 20 steps before",
        ls[120] > 20 * _median(ls[100:120]),
    )
    ctx.check(
        "the gradient at step 120 is over 20x the median of the 20 steps before",
        gs[120] > 20 * _median(gs[100:120]),
    )
    ctx.check(
        "the loss of the last 20 steps is under 1.5x that of the 20 before the shard",
        _mean(ls[-20:]) < 1.5 * _mean(ls[100:120]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- luthier purfling: Adam's learning rate typed 0.05 for 5e-4 kills the ReLUs ---------------------


@scenario(
    family="luthier_purfling_channel_depth_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU regressor (fc1, act1, fc2, act2, head) predicting the depth a luthier's purfling cutter leaves in the channel from 10 standardised readings of the wood and the cutter, Adam, MSE, 240 steps. The learning rate was typed 0.05 for 5e-4: the first large steps drive the second ReLU layer's pre-activations below zero for every input, and the units that are never positive get no gradient again: by step 10 over three quarters of act2 is dead and it stays dead for the rest of the run (the surviving units still fit the loss down); finite throughout.",
)
def h365_luthier_purfling_adam_lr_typo(ctx: Context) -> None:
    gen = seeded(36504)
    model = Trunk(10, 64, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)  # meant: 5e-4
    dead = []

    def watch(step, out, x, y):
        dead.append(_dead(model.act2(model.fc2(model.act1(model.fc1(x))))))

    _loop(ctx, model, opt, _readings(gen, 128, 10, 36514), 240, F.mse_loss, watch=watch)
    ctx.check("under 10% of act2 is dead at step 0", dead[0] < 0.1)
    ctx.check("over 50% of act2 is dead on average over the last 50 steps", _mean(dead[-50:]) > 0.5)
    ctx.check(
        "the dead share never falls back under 40% in the last 50 steps", min(dead[-50:]) > 0.4
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pushball: the embedding's param group typed 1e-8 for 1e-3 --------------------------------------


class TokenPool(nn.Module):
    def __init__(self, vocab=40, dim=16, classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, 64)
        self.act = nn.ReLU()
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.act(self.fc(self.embed(x).mean(1))))


@scenario(
    family="pushball_shove_call_embedding_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("embed",),
    diverges=None,
    heldout=True,
    note="A hand-written token classifier (embed: Embedding of 40 shove calls, mean-pooled, fc, act, head) naming which of four pushball plays a team's 12 calls set up, AdamW with two param groups, cross-entropy, 200 steps. The embedding's group has its lr typed 1e-8 for 1e-3: the embedding is frozen at its random init (it moves under 0.1% of its norm) while fc and head train at 1e-3; the loss falls only as far as the random embedding allows and stays finite.",
)
def h365_pushball_embedding_group_typo(ctx: Context) -> None:
    gen = seeded(36505)
    model = TokenPool()
    opt = torch.optim.AdamW(
        [
            {"params": model.embed.parameters(), "lr": 1e-8},  # meant: 1e-3
            {"params": list(model.fc.parameters()) + list(model.head.parameters())},
        ],
        lr=1e-3,
        weight_decay=0.01,
    )
    e0, h0 = model.embed.weight.detach().clone(), model.head.weight.detach().clone()
    _loop(ctx, model, opt, _sequences(gen, 128, 36515), 200, F.cross_entropy, classifier=True)
    ctx.check(
        "the embedding moved under 0.1% of its norm", _rel_change(e0, model.embed.weight) < 1e-3
    )
    ctx.check("the head moved over 20% of its norm", _rel_change(h0, model.head.weight) > 0.2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- lake-ice singing: the warm-up's target lr typed 2.0 for 0.2 ------------------------------------


@scenario(
    family="lake_ice_singing_pitch_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh regressor (fc1, act1, fc2, act2, head) predicting the pitch of the singing of a freshly frozen lake from 8 standardised ice-thickness, temperature and wind readings, plain SGD, MSE, a linear warm-up over 60 steps to a peak lr typed 2.0 for 0.2. The model trains while the lr is small; as the warm-up raises it, lr times the top Hessian eigenvalue (power iteration) passes 2 and the loss climbs and blows up.",
)
def h365_lake_ice_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(36506)
    model = Trunk(8, 64, 1, act=nn.Tanh)
    peak = 2.0  # meant: 0.2
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 60))
    data = _readings(gen, 128, 8, 36516)
    probe = next(data)
    sharp = {}

    def before(step):
        if step % 5 == 0:
            sharp[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _loop(ctx, model, opt, data, 150, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    crossed = [s for s, v in sorted(sharp.items()) if v > 2]
    ctx.check("lr x sharpness is under 1 at step 0", sharp[0] < 1)
    ctx.check("lr x sharpness passes 2", bool(crossed))
    ctx.check(
        "the loss fell before the crossing", bool(crossed) and min(ls[: crossed[0]]) < 0.5 * ls[0]
    )
    ctx.check(
        "the loss then blows up past 100x its lowest value or to non-finite",
        _first_bad(ls) is not None or max(ls) > 100 * min(ls),
    )


# -- whale fall: the scavenger-count rate lost its softplus ------------------------------------------


class RateNet(nn.Module):
    def __init__(self, d_in=10, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.rate_head = nn.Linear(hidden, 1)
        self.rate = nn.ReLU()  # meant: nn.Softplus()

    def forward(self, x):
        return self.rate(self.rate_head(self.act1(self.fc1(x)))).squeeze(-1)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


def _counts(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        lam = torch.exp(1.2 * x @ w / math.sqrt(d_in) - 0.5)
        yield x, torch.poisson(lam, generator=gen)


@scenario(
    family="whale_fall_scavenger_count_poisson_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("rate_head", "rate"),
    diverges=165,
    heldout=True,
    note="A hand-written Poisson-rate net (fc1, act1, rate_head, rate) predicting how many hagfish a baited whale-fall camera counts per hour from 10 standardised depth, age and current readings, RMSprop at 3e-4, Poisson NLL written by hand as rate - y*log(rate), 200 steps. The rate's softplus was replaced by a ReLU (no clamp, no epsilon): as the counts of zero pull low rates down, rate_head's output goes below zero for a sample, the ReLU makes the rate exactly 0, log(0) is -inf and the loss is non-finite at step 165.",
)
def h365_whale_fall_relu_rate(ctx: Context) -> None:
    gen = seeded(36507)
    model = RateNet()
    with torch.no_grad():
        model.rate_head.weight.mul_(0.1)
        model.rate_head.bias.fill_(1.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    zeros = []

    def watch(step, out, x, y):
        zeros.append(int((out.detach() == 0).sum()))

    _loop(ctx, model, opt, _counts(gen, 64, 10, 36517), 200, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite at some step", bad is not None)
    ctx.check("the loss is finite before it", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check("some rate is exactly 0 at that step", bad is not None and zeros[bad] > 0)
    ctx.check("no rate is exactly 0 at step 0", zeros[0] == 0)


# -- gong chime: sound power summed in fp16 under autocast -------------------------------------------


class Energy(nn.Module):
    """Mean squared amplitude by a fixed averaging projection (a matmul: fp16 under autocast)."""

    def __init__(self, width):
        super().__init__()
        self.register_buffer("avg", torch.full((width, 1), 1.0 / width))

    def forward(self, h):
        return (h * h) @ self.avg


class PowerNet(nn.Module):
    def __init__(self, d_in=16, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.energy = Energy(hidden)

    def forward(self, x):
        e = self.energy(self.fc2(self.act1(self.fc1(x))))
        return (10.0 * torch.log10(e + 1e-3)).squeeze(-1)


@scenario(
    family="gong_chime_strike_loudness_fp16_energy_net",
    optimizer="Adam",
    cause="amp_overflow",
    where=("energy",),
    diverges=133,
    heldout=True,
    note="A hand-written loudness net (fc1, act1, fc2, energy) predicting the sound level in dB of a struck kulintang gong chime from 16 standardised mallet and gong readings, as 10*log10 of the mean squared amplitude of fc2's output, Adam at 3e-2, MSE, fp16 autocast with a GradScaler, 200 steps. The mean square is a matmul, so it runs in fp16 under autocast; the targets are about 62-88 dB, a mean square over 1e6, and as the model learns to reach them a squared amplitude passes 65504 and overflows to inf at step 133 (the same batch in float32 is finite): the loss is inf and the scaler skips the step.",
)
def h365_gong_chime_fp16_energy(ctx: Context) -> None:
    gen = seeded(36508)
    model = PowerNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    seen = []

    def levels():
        src = _readings(gen, 64, 16, 36518, noise=0.05)
        while True:
            x, y = next(src)
            yield x, 75.0 + 8.0 * y

    def watch(step, out, x, y):
        seen.append(x)

    _loop(ctx, model, opt, levels(), 200, F.mse_loss, watch=watch, scaler=scaler, amp=True)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite at some step", bad is not None)
    ctx.check("the loss is finite before it", bad is not None and _finite(ctx.losses[:bad]))
    if bad is not None:
        with torch.no_grad():
            fp32 = model(seen[bad])
            with torch.autocast("cpu", dtype=torch.float16):
                h = model.fc2(model.act1(model.fc1(seen[bad])))
                e16 = model.energy(h)
        ctx.check(
            "the fp16 energy overflows to inf on the failing batch", bool(torch.isinf(e16).any())
        )
        ctx.check("the same batch in float32 is finite", bool(torch.isfinite(fp32).all()))
        h32 = model.fc2(model.act1(model.fc1(seen[bad]))).detach()
        ctx.check("a float32 squared amplitude passes 65504", float((h32 * h32).max()) > 65504)
    else:
        ctx.check("the fp16 energy overflows to inf on the failing batch", False)


# -- camel polo: a static loss scale left on for the resume step --------------------------------------


@scenario(
    family="camel_polo_mallet_swing_speed_silu_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=140,
    note="A hand-written SiLU regressor (fc1, act1, fc2, act2, head) predicting a camel-polo rider's mallet-head speed from 12 standardised reins, saddle and swing readings, SGD with momentum 0.9 at 0.02, MSE, gradient clipping at 1.0, 260 steps. The run resumes from a checkpoint at step 140 and the resume path multiplies the loss by the static loss scale 1024 of an older fp16 set-up before backward for that one step (the flag is restored one step late): the gradient on a clean batch is over 50x the usual one, clipping bounds the update and the run recovers.",
)
def h365_camel_polo_resume_loss_scale(ctx: Context) -> None:
    gen = seeded(36509)
    model = Trunk(12, 64, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def backprop(step, loss):
        return loss * 1024.0 if step == 140 else loss

    _loop(
        ctx, model, opt, _readings(gen, 64, 12, 36519), 260, F.mse_loss, backprop=backprop, clip=1.0
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 140 is over 50x the median of the 20 steps before",
        gs[140] > 50 * _median(gs[120:140]),
    )
    ctx.check(
        "the batch is clean: the loss at step 140 is under 2x the median before",
        ls[140] < 2 * _median(ls[120:140]),
    )
    ctx.check(
        "the last 20 steps' loss is under 1.5x the 20 before the spike",
        _mean(ls[-20:]) < 1.5 * _mean(ls[120:140]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- clockspring: the hand-written decoupled weight decay has its sign flipped --------------------------


@scenario(
    family="clockspring_mainspring_torque_gelu_regressor",
    optimizer="Adadelta",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU regressor (fc1, act1, fc2, act2, head) predicting a clock mainspring's torque from 12 standardised winding, thickness and temper readings, Adadelta at lr 1.0, MSE, 300 steps, with a hand-written decoupled weight decay of 0.01 applied after each step whose sign is flipped (p += wd * p instead of p -= wd * p): the weights grow by 1% a step, the loss first falls and then climbs slowly, step by step, to several times its lowest level; no spike, finite.",
)
def h365_clockspring_decay_sign(ctx: Context) -> None:
    gen = seeded(36510)
    model = Trunk(12, 64, 1, act=nn.GELU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    wd = 0.01

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=wd)  # meant: alpha=-wd

    n0 = float(_flat(model).norm())
    _loop(ctx, model, opt, _readings(gen, 128, 12, 36520), 300, F.mse_loss, after=after)
    ls = ctx.losses
    lows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    ctx.check(
        "the last 20 steps' loss is over 3x the lowest 20-step mean",
        _mean(ls[-20:]) > 3 * min(lows),
    )
    ctx.check(
        "a slow climb: no 10-step mean is over 2.5x the 10-step mean before it",
        max(_mean(ls[i + 10 : i + 20]) / _mean(ls[i : i + 10]) for i in range(0, 280, 10)) < 2.5,
    )
    ctx.check("the weights grew over 5x", float(_flat(model).norm()) > 5 * n0)
    ctx.check("finite throughout", _finite(ls))


# -- fret levelling: a capsule network with three routing iterations (control) ---------------------


def _squash(s, dim=-1):
    n2 = (s * s).sum(dim, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)


class ClassCapsules(nn.Module):
    """Class capsules by dynamic routing by agreement (Sabour et al. 2017)."""

    def __init__(self, n_in, d_in, classes, d_out, iterations=3):
        super().__init__()
        self.W = nn.Parameter(0.1 * torch.randn(n_in, classes, d_out, d_in))
        self.iterations = iterations

    def forward(self, u):
        u_hat = torch.einsum("ncod,bnd->bnco", self.W, u)
        b = torch.zeros(u_hat.shape[:3])
        detached = u_hat.detach()
        for i in range(self.iterations):
            c = torch.softmax(b, dim=2)
            if i == self.iterations - 1:
                return _squash((c[..., None] * u_hat).sum(1))
            v = _squash((c[..., None] * detached).sum(1))
            b = b + (detached * v[:, None]).sum(-1)
        return None


class CapsNet1d(nn.Module):
    def __init__(self, classes=6, channels=32, caps=8, d_caps=8, d_out=12, length=32):
        super().__init__()
        self.conv = nn.Conv1d(1, channels, 5)
        self.act = nn.ReLU()
        self.primary = nn.Conv1d(channels, caps * d_caps, 5, stride=2)
        self.d_caps = d_caps
        n_in = caps * (((length - 4) - 5) // 2 + 1)
        self.class_caps = ClassCapsules(n_in, d_caps, classes, d_out)

    def forward(self, x):
        p = self.primary(self.act(self.conv(x)))
        b, c, t = p.shape
        u = _squash(
            p.reshape(b, c // self.d_caps, self.d_caps, t)
            .permute(0, 1, 3, 2)
            .reshape(b, -1, self.d_caps)
        )
        return self.class_caps(u).norm(dim=-1)


def _margin_loss(lengths, y, m_pos=0.9, m_neg=0.1, lam=0.5):
    t = F.one_hot(y, lengths.shape[1]).float()
    loss = t * F.relu(m_pos - lengths) ** 2 + lam * (1 - t) * F.relu(lengths - m_neg) ** 2
    return loss.sum(1).mean()


@scenario(
    family="fret_levelling_buzz_capsule_routing_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written capsule network (conv, act, primary capsules by a strided Conv1d and squash, class_caps with dynamic routing by agreement over three iterations) naming which of six fret-levelling faults makes a guitar string buzz from a 32-sample pickup trace, Adam at 2e-3 with a linear warm-up over 20 steps, the margin loss (m+ 0.9, m- 0.1, lambda 0.5), gradient clipping at 5.0, 150 steps. A control.",
)
def h365_fret_levelling_capsules(ctx: Context) -> None:
    gen = seeded(36511)
    model = CapsNet1d()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(1) == y).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 6, 36521),
        150,
        _margin_loss,
        classifier=True,
        watch=watch,
        sched=sched,
        clip=5.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("the accuracy of the last 20 steps is over 80%", _mean(acc[-20:]) > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kite landboard: Nesterov under OneCycleLR with label smoothing (control) ------------------------


class Conv1dClassifier(nn.Module):
    def __init__(self, classes=5, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(-1))


@scenario(
    family="kite_landboard_trick_relu_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, head) naming which of five tricks a kite-landboard rider lands from a 32-sample deck accelerometer trace, SGD with Nesterov momentum 0.9 under OneCycleLR (max lr 0.1), weight decay 5e-4, cross-entropy with label smoothing 0.1, gradient clipping at 2.0, 200 steps. A control.",
)
def h365_kite_landboard_onecycle(ctx: Context) -> None:
    gen = seeded(36512)
    model = Conv1dClassifier()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(1) == y).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 36522),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        watch=watch,
        sched=sched,
        clip=2.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("the accuracy of the last 20 steps is over 80%", _mean(acc[-20:]) > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- horse-ball: fp16 autocast, GradScaler, RMSprop, ReduceLROnPlateau (control) ----------------------


@scenario(
    family="horse_ball_pass_distance_fp16_silu_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU regressor (fc1, act1, fc2, act2, head) predicting the distance of a horse-ball pass from 14 standardised rider, horse and ball readings, RMSprop at 1e-3, Huber loss, fp16 autocast with a GradScaler, gradient accumulation over 2 micro-batches, ReduceLROnPlateau on a held-out batch, clipping at 1.0, 160 steps, noisy targets. A control.",
)
def h365_horse_ball_fp16_plateau(ctx: Context) -> None:
    gen = seeded(36513)
    model = Trunk(14, 64, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    data = _readings(gen, 64, 14, 36523, noise=0.2)
    held = next(data)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        data,
        160,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("the held-out loss ends under half the first loss", plateau() < 0.5 * ctx.losses[0])
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the scaler never collapsed", min(ctx.scales) >= 1.0)
