"""Held-out set 203 (``h203_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a lacemaker pricking-pattern GELU classifier whose
temperature was read as a percentage, a crokinole flick-distance SiLU regressor whose loss
normaliser is reset before its division at an epoch boundary, a toboggan run-time Huber
regressor fed one shard that was never standardised, a zampogna drone-reed 1-D CNN whose trunk
waits for an epoch counter a step-based loop never advances, a mokume-gane bond-strength net
taking the log of a zero hold time, a chair-bodger pole-lathe Elman RNN with a prototype's
recurrent init, an ice-yacht runner-speed tanh regressor whose decay factor was typed 1.05, a
charcoal-clamp yield regressor whose target normaliser accumulates instead of averaging, a
whip-cracking timing attention net trained with no weight decay at a high rate, a moonbow
visibility multi-label net with a negative label-smoothing factor, and three controls (a
wheel-tapper ring-tone GRU LM with tied embeddings, a maltster germination net fine-tuned from
a backbone pre-trained in the scenario, a log-flume splash-height fp16 SiLU MLP).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


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
    watch=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    total_fn=None,
    alter=None,
):
    """This file's training loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` records after the forward pass, ``total_fn(step, loss, out, y)``
    returns what is backpropagated; stops after logging a NaN loss."""
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
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = total_fn(step, loss, out, y) if total_fn is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
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
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


def _gauges(gen, batch, d_in, seed, noise=0.05):
    """Standardised gauge readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(1.3 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _sharpness(model, loss_fn, x, y, iters=15) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(1)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, activations as modules."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.SiLU):
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


# -- lacemaker: a temperature read as a percentage -------------------------------------------------


class PrickingNet(Trunk):
    """A GELU MLP whose logits are divided by a sharpening temperature."""

    def __init__(self, temperature):
        super().__init__(16, hidden=64, out=6, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="lacemaker_pricking_pattern_gelu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A bobbin-lace pricking classifier naming the ground (6 kinds: torchon, rose, "
    "kat-stitch, ...) from 16 hole-spacing readings of a scanned pricking card: a GELU MLP "
    "(fc1, fc2, head), cross-entropy, Adagrad at 1e-2. The logits are divided by a "
    "sharpening temperature of 0.5; the config field is `temp_pct` (a percentage, for the "
    "sweep tool) and the value 0.5 was entered there, so the model divides by 0.005: the "
    "logits are 200x what they should be, the float32 softmax of most rows rounds the "
    "target's probability to exactly 1.0 (and the wrong rows' to 0) and the loss is carried "
    "by a few rows with huge margins.",
)
def h203_lacemaker_temperature_percent(ctx: Context) -> None:
    gen = seeded(20301)
    temp_pct = 0.5
    model = PrickingNet(temperature=temp_pct / 100)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    collapsed, top = [], []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        top.append(float(out.detach().abs().amax()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, seed=31, spread=1.2),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("temperature is 0.005", abs(model.temperature - 0.005) < 1e-9)
    ctx.check(
        "over half the rows' target probability exactly 1.0 (last 10 steps)",
        _mean(collapsed[-10:]) > 0.5,
    )
    ctx.check("largest logit above 30 in the last 10 steps", min(top[-10:]) > 30)
    ctx.check("loss finite", _finite(ctx.losses))


# -- crokinole: the loss normaliser reset before its division --------------------------------------


@scenario(
    family="crokinole_flick_distance_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing how far a crokinole disc slides "
    "(standardised) from 12 readings (flick speed, board wax age, humidity, ...), SGD with "
    "momentum 0.9 at 1e-2. The loss is a summed squared error divided by a running count of "
    "samples (n_seen) that a logging hook resets at each epoch boundary; at step 100 (the "
    "end of the first epoch) the hook resets n_seen before the division instead of after it "
    "and the division falls back to max(n_seen, 1), so that one step's loss is the sum over "
    "64 samples: a single gradient about 50x the usual from an ordinary batch. The run recovers.",
)
def h203_crokinole_normaliser_reset(ctx: Context) -> None:
    gen = seeded(20302)
    model = Trunk(12, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def total_fn(step, loss, out, y):
        sse = ((out - y) ** 2).sum()
        n_seen = 0 if step == 100 else out.shape[0]
        return sse / max(n_seen, 1)

    _loop(ctx, model, opt, _gauges(gen, 64, 12, seed=32), 200, F.mse_loss, total_fn=total_fn)
    g = ctx.grad_norms
    ctx.check(
        "gradient at step 100 over 30x the median of steps 80-99", g[100] > 30 * _median(g[80:100])
    )
    ctx.check(
        "steps 99 and 101 below 3x that median (a single step)",
        max(g[99], g[101]) < 3 * _median(g[80:100]),
    )
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check(
        "loss recovered (last 10 below 2x steps 90-99)",
        _mean(ctx.losses[-10:]) < 2 * _mean(ctx.losses[90:100]),
    )


# -- toboggan: one shard never standardised --------------------------------------------------------


@scenario(
    family="toboggan_run_time_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing a toboggan run's time (standardised) from 10 "
    "readings (speed trap, ice temperature, rider mass, ...), RMSprop at 1e-3, Huber loss, "
    "clip_grad_norm_ at 5. One shard of the dataset was exported by an older script before "
    "the standardisation step: the batch at step 120 carries the speed trap in km/h "
    "(about 100) and the ice temperature in kelvin (about 265) in standardised slots. The "
    "gradient of that one batch is many times the usual; the run recovers.",
)
def h203_toboggan_raw_shard(ctx: Context) -> None:
    gen = seeded(20303)
    model = Trunk(10, hidden=64)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    peak = []

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 0] = 100 + 10 * x[:, 0]
            x[:, 1] = 265 + 3 * x[:, 1]
        peak.append(float(x.abs().max()))
        return x, y

    _loop(ctx, model, opt, _gauges(gen, 64, 10, seed=33), 220, F.huber_loss, clip=5.0, alter=alter)
    g = ctx.grad_norms
    ctx.check("batch 120's largest input over 30x the usual", peak[120] > 30 * _median(peak[:120]))
    ctx.check("gradient at step 120 over 10x the median before", g[120] > 10 * _median(g[100:120]))
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell overall", _fell(ctx.losses))


# -- zampogna: the trunk waits for an epoch counter nobody advances --------------------------------


class DroneNet(nn.Module):
    """1-D CNN over a drone reed's pressure trace: conv1 -> conv2 -> pooled -> head."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _drones(gen, batch, length=48, classes=4):
    """Pressure traces of 4 reed voicings: a base tone with a class-specific beat and noise."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        freq = (0.25 + 0.12 * y.float())[:, None]
        x = torch.sin(freq * t + phase) * (0.6 + 0.2 * (y[:, None] % 2))
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="zampogna_drone_reed_conv1d_classifier",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("conv1", "conv2"),
    diverges=None,
    heldout=True,
    note="A zampogna (bagpipe) reed-voicing classifier (4 voicings) over 48-sample pressure "
    "traces: a 1-D CNN (conv1, conv2, mean pool, head), cross-entropy, NAdam at 3e-3 with "
    "two param groups and a per-group LambdaLR: the head trains at once and the trunk is "
    "meant to unfreeze after the first epoch, `lambda s: 1.0 if state['epoch'] >= 1 else "
    "0.0`. The trainer was moved to a step-based loop and the epoch counter is only advanced "
    "by the old on_epoch_end callback, which is never called: conv1 and conv2 train at lr "
    "exactly 0 for the whole run and only the head learns on random features.",
)
def h203_zampogna_epoch_counter_never_advances(ctx: Context) -> None:
    gen = seeded(20304)
    model = DroneNet()
    trunk = list(model.conv1.parameters()) + list(model.conv2.parameters())
    opt = torch.optim.NAdam([{"params": trunk}, {"params": model.head.parameters()}], lr=3e-3)
    state = {"epoch": 0}
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 1.0 if state["epoch"] >= 1 else 0.0, lambda s: 1.0]
    )
    start = [p.detach().clone() for p in trunk]
    head0 = model.head.weight.detach().clone()
    _loop(ctx, model, opt, _drones(gen, 64), 200, F.cross_entropy, classifier=True, sched=sched)
    moved = max(float((p.detach() - s).abs().max()) for p, s in zip(trunk, start, strict=True))
    ctx.check("trunk group at lr exactly 0 at the end", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("conv1/conv2 weights never changed", moved == 0.0)
    ctx.check("head moved", float((model.head.weight.detach() - head0).abs().max()) > 1e-2)
    ctx.check("loss finite", _finite(ctx.losses))


# -- mokume-gane: log of a zero hold time ----------------------------------------------------------


class LogHold(nn.Module):
    """Replaces the hold-time column (minutes) with its log: diffusion goes as log time."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class BondNet(nn.Module):
    def __init__(self, d_in=8):
        super().__init__()
        self.log_hold = LogHold()
        self.net = Trunk(d_in, hidden=48)

    def forward(self, x):
        return self.net(self.log_hold(x))


def _billets(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, generator=g)
    while True:
        hold = 30 + 90 * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, 7, generator=gen)
        y = 0.8 * (torch.log(hold[:, 0]) - 4.1) + torch.tanh(rest @ w / 2.6)
        yield torch.cat([hold, rest], 1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="mokume_gane_billet_bond_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("log_hold",),
    diverges=80,
    onset=80,
    heldout=True,
    note="A mokume-gane workshop's bond-strength regressor for laminated copper/silver "
    "billets: a `log_hold` module turns the kiln hold time (minutes) into its log, then a "
    "SiLU MLP (net.fc1, net.fc2, net.head), Adam at 1e-3, MSE. The kiln logger writes 0 "
    "when its thermocouple drops out; the batch at step 80 holds such a billet, log(0) is "
    "-inf, and the first Linear turns it into inf - inf: the loss is NaN at step 80.",
)
def h203_mokume_log_zero_hold(ctx: Context) -> None:
    gen = seeded(20305)
    model = BondNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    inf_seen = []

    def alter(step, x, y):
        if step == 80:
            x = x.clone()
            x[7, 0] = 0.0
        return x, y

    def watch(step, out, x, y):
        inf_seen.append(bool(torch.isinf(model.log_hold(x)).any()))

    _loop(ctx, model, opt, _billets(gen, 64, seed=35), 150, F.mse_loss, alter=alter, watch=watch)
    ls = ctx.losses
    ctx.check("loss finite before step 80", len(ls) > 80 and _finite(ls[:80]))
    ctx.check("loss NaN at step 80", len(ls) > 80 and math.isnan(ls[80]))
    ctx.check(
        "log_hold output -inf at step 80 only",
        len(inf_seen) > 80 and inf_seen[80] and not any(inf_seen[:80]),
    )
    ctx.check("loss fell before the fault", _fell(ls[:80]))


# -- chair bodger: a prototype's recurrent init in a 64-unit cell ----------------------------------


class LatheCell(nn.Module):
    """A hand-written tanh Elman RNN over a pole lathe's treadle trace; regression head."""

    def __init__(self, d_in=3, hidden=64, rec_std=0.5):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.rec.weight, std=rec_std)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _treadle(gen, batch, length=40):
    """Treadle force, spring tension and cut depth over 40 strokes; target the mean cut depth
    over the last strokes."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen) * 0.5
        x[:, :, 0] += torch.sin(torch.arange(length) * 0.4)
        yield x, x[:, -8:, 2].mean(1) * 2


@scenario(
    family="chair_bodger_pole_lathe_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A chair bodger's pole-lathe cut-depth predictor: a hand-written tanh Elman RNN "
    "(inp, rec, head) reading 40 strokes of treadle force, spring tension and cut depth, "
    "plain SGD at 1e-2, clip_grad_norm_ at 1.0, MSE. The recurrent init std 0.5 was "
    "copied from the 4-unit "
    "prototype (1/sqrt(4)) into the 64-unit cell, where 1/sqrt(64) = 0.125 was meant: the "
    "recurrent matrix's spectral radius is about 4, the cell is chaotic and the gradient "
    "grows back through time, the earliest hidden state's gradient hundreds of times the "
    "last one's (about 1e7x), the gradient norm before clipping about 1e6 every step; the "
    "clipping keeps the weights finite but the loss does not improve.",
)
def h203_chair_bodger_prototype_rec_init(ctx: Context) -> None:
    gen = seeded(20306)
    model = LatheCell(rec_std=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    radius = float(torch.linalg.eigvals(model.rec.weight.detach()).abs().max())
    ratios = []

    def total_fn(step, loss, out, y):
        loss.backward(retain_graph=True)
        st = model.states
        ratios.append(float(st[0].grad.norm() / (st[-1].grad.norm() + 1e-12)))
        opt.zero_grad(set_to_none=True)
        return loss

    _loop(ctx, model, opt, _treadle(gen, 32), 120, F.mse_loss, total_fn=total_fn, clip=1.0)
    ctx.check("recurrent spectral radius above 3", radius > 3)
    ctx.check(
        "first state's gradient over 100x the last one's (median over the run)",
        _median(ratios) > 100,
    )
    ctx.check("median gradient norm (before clipping) above 1e4", _median(ctx.grad_norms) > 1e4)
    ctx.check("loss did not fall below half its start", not _fell(ctx.losses, ratio=0.5))


# -- ice yacht: a decay factor typed 1.05 ---------------------------------------------------------


@scenario(
    family="ice_yacht_runner_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=20,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing an ice yacht's top speed (standardised) from "
    "10 readings (runner edge angle, ice hardness, wind, ...), plain SGD, MSE. The schedule "
    "is a LambdaLR: a linear warm-up to 0.05 over 20 steps, then exponential decay by a "
    "factor per step typed 1.05 for 0.95. From step 20 the rate grows 5% a step; lr x "
    "sharpness goes from about 0.3 at step 20 past 2, the stability limit, near step 60, "
    "and the loss blows up about 20 steps later.",
)
def h203_ice_yacht_decay_typed_growth(ctx: Context) -> None:
    gen = seeded(20307)
    model = Trunk(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    decay = 1.05
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / 20 if s < 20 else decay ** (s - 20)
    )
    probe = next(_gauges(torch.Generator().manual_seed(77), 256, 10, seed=37))
    products = {}

    def before(step):
        if step % 5 == 0 and (not ctx.losses or _finite(ctx.losses[-1:])):
            lr = opt.param_groups[0]["lr"]
            products[step] = lr * _sharpness(model, F.mse_loss, *probe)

    _loop(
        ctx, model, opt, _gauges(gen, 64, 10, seed=37), 150, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    crossed = [s for s, v in products.items() if math.isfinite(v) and v > 2]
    ctx.check("lr x sharpness below 1 at step 20", products.get(20, 9.0) < 1)
    ctx.check("lr x sharpness past 2 after step 20", bool(crossed) and min(crossed) > 20)
    ctx.check(
        "loss blew up (over 100x its step-20 value or non-finite)",
        not _finite(ls) or max(ls) > 100 * ls[20],
    )


# -- charcoal clamp: a target normaliser that accumulates instead of averaging ---------------------


class RunningTarget:
    """A running mean for target standardisation, the EMA written without its (1 - m) decay."""

    def __init__(self, momentum=0.01):
        self.m = momentum
        self.mean = None

    def __call__(self, y):
        if self.mean is None:
            self.mean = float(y.mean())
        else:
            self.mean = self.mean + self.m * float(y.mean())
        return y - self.mean


def _clamps(gen, batch, seed):
    """Charcoal yield (in % of wood mass, about 25) from 9 burn readings."""
    for x, y in _gauges(gen, batch, 9, seed):
        yield x, 25 + 3 * y


@scenario(
    family="charcoal_burner_clamp_yield_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A charcoal burner's clamp-yield regressor: a SiLU MLP (fc1, fc2, head) predicting "
    "the yield (about 25% of the wood mass) from 9 burn readings (turf cover, vent "
    "openings, smoke colour, ...), RAdam at 3e-3, MSE on a target centred by a running mean. "
    "The running mean was written `mean = mean + m * batch_mean` instead of `mean = (1 - m) "
    "* mean + m * batch_mean` (it starts from the first batch's mean): it never settles "
    "and climbs by about 0.25 a step, the "
    "centred target drifts away faster than the head's bias can follow, and after an "
    "early minimum the loss climbs steadily for the rest of the run (130 steps), about "
    "100-fold, with no single jump.",
)
def h203_charcoal_running_mean_accumulates(ctx: Context) -> None:
    gen = seeded(20308)
    model = Trunk(9, hidden=64)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    norm = RunningTarget()
    centres = []

    def centred(gen_):
        for x, y in gen_:
            yc = norm(y)
            centres.append(norm.mean)
            yield x, yc

    _loop(ctx, model, opt, centred(_clamps(gen, 64, seed=38)), 130, F.mse_loss)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    jumps = [ls[i + 1] / max(ls[i], 1e-9) for i in range(low, len(ls) - 1)]
    ctx.check("running 'mean' past 50 (the target's mean is 25)", centres[-1] > 50)
    ctx.check("loss at the end over 20x its minimum", _mean(ls[-10:]) > 20 * ls[low])
    ctx.check(
        "still climbing (last 10 steps over 1.5x steps 80-90)",
        _mean(ls[-10:]) > 1.5 * _mean(ls[80:90]),
    )
    ctx.check("minimum in the first half", low < len(ls) // 2)
    ctx.check("no single step more than doubles the loss after the minimum", max(jumps) < 2)
    ctx.check("loss finite", _finite(ls))


# -- whip cracking: attention trained without weight decay at a high rate --------------------------


class CrackAttention(nn.Module):
    """Single-head self-attention by hand (q, k, v, o Linears, logits q.k / sqrt(d))."""

    def __init__(self, dim=32):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.dim = dim
        self.logits = None

    def forward(self, h):
        logits = self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(self.dim)
        self.logits = logits.detach()
        return self.o(torch.softmax(logits, -1) @ self.v(h))


class CrackNet(nn.Module):
    def __init__(self, d_in=8, dim=32, classes=5):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = CrackAttention(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.norm(self.embed(x))
        return self.head((h + self.attn(h)).mean(1))


def _whip_frames(gen, batch, length=16):
    """16 audio frames of a whip routine (one of 5 stroke kinds one-hot, loudness, a supersonic
    crack flag on one frame, a noise channel); the label is the stroke on the crack frame."""
    while True:
        kind = torch.randint(0, 5, (batch, length), generator=gen)
        crack = torch.randint(0, length, (batch, 1), generator=gen)
        flag = torch.zeros(batch, length).scatter(1, crack, 1.0)
        loud = torch.rand(batch, length, generator=gen)
        noise = torch.randn(batch, length, generator=gen)
        x = torch.cat(
            [F.one_hot(kind, 5).float(), loud[..., None], flag[..., None], noise[..., None]], -1
        )
        yield x, kind.gather(1, crack).squeeze(1)


@scenario(
    family="whipcracking_crack_timing_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A whip-cracking routine judge naming the stroke (5 kinds: cattleman, flick, "
    "overhead, ...) on the frame of the supersonic crack among 16 audio frames: a Linear "
    "embedding and LayerNorm, one hand-written self-attention module (q/k/v/o Linears, "
    "logits q.k/sqrt(d), no query/key normalisation), a residual, mean pooling and a head, "
    "cross-entropy, AdamW at 2e-2. The run config's optimizer block was copied from a "
    "fine-tuning recipe and sets weight_decay: 0.0: with mean pooling the answer can only "
    "come through attention on the crack frame, q and k grow without restraint and the "
    "largest attention logit grows from below 1 to past 100 and stays there; the "
    "attention is one-hot and the loss finite.",
)
def h203_whipcracking_no_decay_attention(ctx: Context) -> None:
    gen = seeded(20309)
    model = CrackNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
    top, peak = [], []

    def watch(step, out, x, y):
        lg = model.attn.logits
        top.append(float(lg.abs().amax(dim=(1, 2)).mean()))
        peak.append(float(torch.softmax(lg, -1).amax(-1).mean()))

    _loop(
        ctx, model, opt, _whip_frames(gen, 64), 250, F.cross_entropy, classifier=True, watch=watch
    )
    ctx.check("weight decay 0", opt.param_groups[0]["weight_decay"] == 0.0)
    ctx.check("largest attention logit grew 50x from step 0", _mean(top[-10:]) > 50 * top[0])
    ctx.check("largest attention logit above 100 at the end", _mean(top[-10:]) > 100)
    ctx.check("largest attention logit above 100 on every step from 120", min(top[120:]) > 100)
    ctx.check("attention near one-hot (top weight > 0.9) at the end", _mean(peak[-10:]) > 0.9)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))


# -- moonbow: a negative label-smoothing factor ----------------------------------------------------


@scenario(
    family="moonbow_arc_visibility_multilabel_mlp",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A moonbow spotter's multi-label net (6 labels: full arc, double bow, colour "
    "visible, supernumeraries, ...) from 14 night readings (moon altitude and phase, spray "
    "density, cloud cover, ...): a GELU MLP (fc1, fc2, head), BCE with logits, Adamax at "
    "1e-2. The label smoothing was entered as -0.1 (the sweep's sign convention for "
    "'sharpen'), so the targets are t(1 - eps) + eps / 2 = 1.05 and -0.05: no finite logit "
    "is optimal, the head's logits run off in both directions for the whole run (mean "
    "|logit| about 0.09 at step 0, 9 at step 100, 21 at step 200), the loss passing below "
    "zero.",
)
def h203_moonbow_negative_smoothing(ctx: Context) -> None:
    gen = seeded(20310)
    model = Trunk(14, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    eps = -0.1
    g = torch.Generator().manual_seed(40)
    w = torch.randn(14, 6, generator=g)

    def nights(gen_):
        while True:
            x = torch.randn(64, 14, generator=gen_)
            yield x, (x @ w / 3.7 + 0.3 * torch.randn(64, 6, generator=gen_) > 0).float()

    def loss_fn(out, t):
        return F.binary_cross_entropy_with_logits(out, t * (1 - eps) + eps / 2)

    sizes = []

    def watch(step, out, x, y):
        sizes.append(float(out.detach().abs().mean()))

    _loop(ctx, model, opt, nights(gen), 200, loss_fn, watch=watch)
    ctx.check("targets outside [0, 1]", 1 * (1 - eps) + eps / 2 > 1)
    ctx.check("mean |logit| grew 20x from step 0", _mean(sizes[-10:]) > 20 * sizes[0])
    ctx.check(
        "still growing (last 10 steps over 1.3x steps 100-110)",
        _mean(sizes[-10:]) > 1.3 * _mean(sizes[100:110]),
    )
    ctx.check("loss below zero at the end", _mean(ctx.losses[-10:]) < 0)


# -- controls --------------------------------------------------------------------------------------


class RingToneLM(nn.Module):
    """A GRU language model over wheel-tapper ring tones, head tied to the embedding."""

    def __init__(self, vocab=24, dim=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx):
        out, _ = self.gru(self.embed(idx))
        return self.head(out)


def _ring_tones(gen, batch, length=24, vocab=24, seed=41):
    """Sequences of quantised ring tones from a sparse Markov chain (a sound wheel rings
    through a few likely next tones; a cracked one would not)."""
    g = torch.Generator().manual_seed(seed)
    trans = torch.softmax(3 * torch.randn(vocab, vocab, generator=g), -1)
    while True:
        seq = [torch.randint(0, vocab, (batch,), generator=gen)]
        for _ in range(length):
            seq.append(torch.multinomial(trans[seq[-1]], 1, generator=gen).squeeze(1))
        s = torch.stack(seq, 1)
        yield s[:, :-1], s[:, 1:]


@scenario(
    family="wheel_tapper_ring_tone_tied_gru_lm",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A railway wheel tapper's ring-tone language model: an Embedding (24 quantised "
    "tones), a GRU and an output head tied to the embedding (head.weight is embed.weight), "
    "Adam at 3e-3, a LambdaLR linear warm-up over 15 steps then cosine decay, "
    "clip_grad_norm_ at 1.0, cross-entropy with label smoothing 0.05. An ordinary run.",
)
def h203_wheel_tapper_tied_gru_control(ctx: Context) -> None:
    gen = seeded(20311)
    model = RingToneLM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 180
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / 15 if s < 15 else 0.5 * (1 + math.cos(math.pi * (s - 15) / steps)),
    )

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=0.05)

    _loop(ctx, model, opt, _ring_tones(gen, 32), steps, loss_fn, clip=1.0, sched=sched)
    ctx.check("head tied to the embedding", model.head.weight is model.embed.weight)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.75))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="maltster_germination_pretrained_mlp",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A floor maltster's grading net: a SiLU backbone (fc1, fc2) is first pre-trained in "
    "the scenario (before the monitor is attached) to regress the germination energy from 12 "
    "steep-and-couch readings (Adam, MSE, 150 steps), then its regression head is replaced "
    "by a 4-grade classifier head and the whole net is fine-tuned with SGD Nesterov "
    "(momentum 0.9), param groups (backbone at a tenth of the head's rate), OneCycleLR to a "
    "head peak of 5e-2, cross-entropy. An ordinary fine-tune.",
)
def h203_maltster_pretrained_finetune_control(ctx: Context) -> None:
    gen = seeded(20312)
    g = torch.Generator().manual_seed(42)
    w = torch.randn(12, generator=g)
    v = torch.randn(12, generator=g)

    def pretext(gen_):
        while True:
            x = torch.randn(64, 12, generator=gen_)
            yield x, torch.tanh(x @ w / 3.5) + 0.3 * torch.sin(x @ v / 3.5)

    def grading(gen_):
        while True:
            x = torch.randn(64, 12, generator=gen_)
            energy = torch.tanh(x @ w / 3.5) + 0.3 * torch.sin(x @ v / 3.5)
            y = torch.bucketize(
                energy + 0.1 * torch.randn(64, generator=gen_), torch.tensor([-0.5, 0.0, 0.5])
            )
            yield x, y

    model = Trunk(12, hidden=64)
    pre_opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    src = pretext(gen)
    pre_losses = []
    for _ in range(150):
        x, y = next(src)
        loss = F.mse_loss(model(x), y)
        pre_opt.zero_grad()
        loss.backward()
        pre_opt.step()
        pre_losses.append(float(loss.detach()))
    model.head = nn.Linear(64, 4)
    backbone = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.SGD(
        [{"params": backbone, "lr": 5e-3}, {"params": model.head.parameters(), "lr": 5e-2}],
        lr=5e-2,
        momentum=0.9,
        nesterov=True,
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[5e-3, 5e-2], total_steps=steps)
    _loop(ctx, model, opt, grading(gen), steps, F.cross_entropy, classifier=True, sched=sched)
    ctx.check("pre-training loss fell", _fell(pre_losses, ratio=0.5))
    ctx.check("fine-tuning loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="log_flume_splash_height_fp16_silu_mlp",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A log-flume ride's splash-height regressor (standardised) from 10 readings (boat "
    "load, drop height, water level, ...): a SiLU MLP (fc1, fc2, head) under fp16 autocast "
    "with a torch.amp.GradScaler, accumulation over 2 micro-batches, clip_grad_norm_ at "
    "1.0 after unscaling, Huber loss, AdamW at 3e-3 with weight decay 1e-2, "
    "ReduceLROnPlateau (patience 10, factor 0.5). An ordinary mixed-precision run.",
)
def h203_log_flume_fp16_control(ctx: Context) -> None:
    gen = seeded(20313)
    model = Trunk(10, hidden=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10, factor=0.5)
    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 32, 10, seed=43, noise=0.2),
        160,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("scale never fell below 1", min(ctx.scales) >= 1.0)
