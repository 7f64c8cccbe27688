"""Held-out set 311 (``h311_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a nilometer flood-stage dilated Conv1d classifier run at
Adam lr 3e-1 typed for 3e-4 (dead ReLU channels), a hedgerow-laying pleacher-cut multilabel BCE
tagger whose mid-run evaluation criterion (reduction='sum') is backpropagated for one step (one
gradient burst), a cupola-furnace tap-temperature fp16 GELU regressor fed targets in raw degrees
Celsius (fp16 gradient overflow under a GradScaler), a tanbark-pit tannin SiLU regressor whose
hand-written decoupled weight decay has its sign flipped (slow climb of the loss), a kiln-shelf
warp ReLU regressor given one shard with the kiln temperature in raw Fahrenheit (one corrupted
batch), a gravel-shoal riffle-speed regressor computing sqrt(2 g h) of an unclamped head (sqrt of
a negative, NaN), a nunatak wind-scour two-group GELU regressor whose trunk learning rate is an
absolute rate used as a multiplier (trunk frozen), a grike limestone-pavement tanh regressor
whose MultiStepLR gamma is typed 3.0 for 0.3 (learning rate past the stability limit), a snath
scythe-hang 12-layer ReLU MLP initialised with the ReLU gain applied twice (gradients grow
through depth), a dulcian reed-articulation GELU classifier whose temperature reads the
neighbouring config key 1e-2 (softmax saturates), and three controls (a clam-shell grab
momentum-0.99 SGD classifier with a long warm-up, a toad-in-the-hole throw fp16 GELU classifier
with a GradScaler, a quintain-ride Gaussian NLL net with Adadelta, accumulation and
ReduceLROnPlateau).

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


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    forward=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``forward(model, x)`` replaces ``model(x)``, ``watch(step, out, x, y)`` sees the forward
    pass, ``backprop(step, out, y, loss, accumulate)`` returns the micro-batch loss actually
    backpropagated (``loss / accumulate`` unless a bug says otherwise), ``after(step)`` runs after
    the optimizer step. Stops after a non-finite loss; returns the step it stopped at."""
    ctx.attach(model, opt, scaler=scaler)
    forward = forward or (lambda m, x: m(x))
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = forward(model, x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            if backprop is not None:
                total = backprop(step, out, y, loss, accumulate)
            else:
                total = loss / accumulate
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
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step
    return steps


def _gauges(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised gauge readings and smooth nonlinear targets of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w / math.sqrt(d_in)
        y = torch.tanh(1.5 * z) + 0.5 * torch.cos(1.3 * x @ v / math.sqrt(d_in)) - 0.3
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


def _sorts(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class (classes overlap a little)."""
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


def _top_eigen(model, loss_fn, x, y, iters=20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- nilometer: a dilated Conv1d over gauge traces at Adam lr 3e-1 typed for 3e-4 -----------------


class DilatedGaugeNet(nn.Module):
    """Three dilated ReLU Conv1d layers (dilation 1, 2, 4) over gauge traces, mean-pooled head."""

    def __init__(self, channels=2, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 3, padding=1, dilation=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 3, padding=2, dilation=2)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv1d(32, 32, 3, padding=4, dilation=4)
        self.act3 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def features(self, x):
        return self.act3(self.conv3(self.act2(self.conv2(self.act1(self.conv1(x))))))

    def forward(self, x):
        return self.head(self.features(x).mean(-1))


def _dead_channels(h: torch.Tensor) -> float:
    """Share of channels of a (batch, channels, time) map never positive on the batch."""
    return float((h <= 0).all(-1).all(0).float().mean())


def _gauge_traces(gen, batch, classes=5, length=64):
    """Two channels (water level, turbidity) of a river gauge over 64 readings; the flood stage
    (class) sets the rise rate and the period of the daily swell."""
    t = torch.arange(length, dtype=torch.float32) / length
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = (0.4 * y.float() - 0.8)[:, None]
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        level = rate * t + 0.5 * torch.sin((4 + 2 * y.float())[:, None] * t * 3.14 + ph)
        turb = torch.cos((2 + y.float())[:, None] * t * 3.14 + ph)
        x = torch.stack([level, turb], 1) + 0.3 * torch.randn(batch, 2, length, generator=gen)
        yield x, y


@scenario(
    family="nilometer_flood_stage_dilated_conv1d_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("conv3", "act3"),
    diverges=None,
    heldout=True,
    note="A hand-written dilated ReLU Conv1d network (conv1 d=1, conv2 d=2, conv3 d=4, mean pool, head) classifying a river's flood stage (5 stages) from 64 readings of two nilometer gauge channels (level, turbidity), Adam, cross-entropy, 200 steps. The learning rate is typed 3e-1 instead of 3e-4: the first updates throw conv3's pre-activations negative for every input and time step, from step 20 on over 70% of act3's channels (against about 15% at initialisation) never fire again on any input (zero gradient), and the net can only learn through the few channels left.",
)
def h311_nilometer_adam_lr_typo(ctx: Context) -> None:
    gen = seeded(31101)
    model = DilatedGaugeNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-1)
    batches = _gauge_traces(gen, 32)
    probe = torch.cat([next(batches)[0] for _ in range(4)])
    dead = []

    def after(step):
        if step % 20 == 0 or step == 199:
            with torch.no_grad():
                dead.append(_dead_channels(model.features(probe)))

    with torch.no_grad():
        dead0 = _dead_channels(model.features(probe))
    _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, after=after)
    ctx.check("under a fifth of act3's channels dead at initialisation", dead0 < 0.2)
    ctx.check("over 70% of act3's channels dead at the end", dead[-1] > 0.7)
    ctx.check("over 70% dead from step 20 on", min(dead[1:]) > 0.7)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- hedgerow laying: the evaluation criterion (reduction='sum') is backpropagated once -----------

ONSET_HEDGE = 90


def _pleachers(gen, batch, d_in, labels, seed):
    """Readings of a hedge stem (girth, species, lean, ...) and which of 5 cut faults it shows."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, labels, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        logits = 1.5 * x @ w / math.sqrt(d_in) + 0.3 * torch.randn(batch, labels, generator=gen)
        yield x, (logits > 0.3).float()


@scenario(
    family="hedgerow_laying_pleacher_cut_multilabel_bce_tagger",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_HEDGE,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) tagging which of 5 cut faults a laid hedge's pleacher shows (too deep, torn heel, ...) from 16 stem readings, ASGD at 5e-2, BCE with logits, clipping at 1.0, 180 steps. At step 90 a mid-run evaluation builds its criterion as BCEWithLogitsLoss(reduction='sum') and the refactored loop backpropagates that criterion's value on the training batch instead of the mean: 64 rows x 5 labels, a 320x gradient on ordinary data for one step (the logged loss is the mean and stays ordinary). Clipping bounds the step.",
)
def h311_hedgerow_sum_criterion(ctx: Context) -> None:
    gen = seeded(31102)
    model = Trunk(16, 64, out=5, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.3)

    def backprop(step, out, y, loss, accumulate):
        if step == ONSET_HEDGE:
            return F.binary_cross_entropy_with_logits(out, y, reduction="sum")
        return loss

    _loop(
        ctx,
        model,
        opt,
        _pleachers(gen, 64, 16, 5, seed=320),
        180,
        F.binary_cross_entropy_with_logits,
        clip=1.0,
        backprop=backprop,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_HEDGE - 20 : ONSET_HEDGE])
    ctx.check("the gradient at step 90 is over 50x the usual", g[ONSET_HEDGE] > 50 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_HEDGE + 1 : ONSET_HEDGE + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on step 90 is ordinary",
        ls[ONSET_HEDGE] < 1.5 * _mean(ls[ONSET_HEDGE - 10 : ONSET_HEDGE]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- cupola furnace: targets in raw degrees Celsius under fp16 autocast -----------------------------


@scenario(
    family="cupola_furnace_tap_temperature_fp16_gelu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing an iron-foundry cupola's tap temperature from 12 standardised readings of blast, coke ratio and charge, fp16 autocast on with a torch.amp.GradScaler (init scale 65536), Adamax at 1e-2, MSE, 150 steps. The target column is passed in raw degrees Celsius (about 1450-1550) instead of standardised: the loss's gradient at the head's fp16 output is about 2 x 1500 / 64 ~ 47 per row, times the loss scale it overflows fp16, and the scaler skips step after step while it halves the scale down by over 30x.",
)
def h311_cupola_raw_celsius(ctx: Context) -> None:
    gen = seeded(31103)
    model = Trunk(12, 64, out=1, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    raw = _gauges(gen, 64, 12, seed=321)

    def celsius():
        for x, y in raw:
            yield x, 1500.0 + 40.0 * y

    head_inf = []
    hook = model.head.weight.register_hook(
        lambda grad: head_inf.append(bool(not torch.isfinite(grad).all())) or grad
    )
    _loop(ctx, model, opt, celsius(), 150, F.mse_loss, scaler=scaler, amp=True)
    hook.remove()
    s = ctx.scales
    skipped = sum(1 for a, b in zip([65536.0] + s[:-1], s, strict=True) if b < a)
    ctx.check("the loss scale fell over 30x", min(s) < 65536.0 / 30)
    ctx.check("over 5 steps were skipped for inf gradients", skipped > 5)
    ctx.check("the head's scaled gradient was non-finite on the first step", head_inf[0])
    ctx.check("the logged loss stays finite", _finite(ctx.losses))


# -- tanbark pit: hand-written decoupled weight decay with its sign flipped -------------------------


@scenario(
    family="tanbark_pit_tannin_strength_silu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the tannin strength and pH of a tanyard's tanbark pit liquor (2 outputs, standardised) from 10 readings of bark age, soak days and temperature, RMSprop at 2e-3, MSE, 300 steps, with a hand-written decoupled weight decay applied after each step. The decay is written p.mul_(1 + lr * wd) instead of p.mul_(1 - lr * wd) (wd 3.0): every step scales the weights up a little. The MSE falls at first, then the weights keep growing and the loss climbs slowly to several times its low, with no other mechanism.",
)
def h311_tanbark_decay_sign(ctx: Context) -> None:
    gen = seeded(31104)
    model = Trunk(10, 64, out=2, act=nn.SiLU)
    lr, wd = 2e-3, 3.0
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    norm0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("weight"):
                    p.mul_(1 + lr * wd)

    _loop(ctx, model, opt, _gauges(gen, 64, 10, seed=322, outputs=2), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(ls)
    ctx.check("the loss fell first", low < 0.5 * _mean(ls[:5]))
    ctx.check("the loss ends over 3x its low", _mean(ls[-10:]) > 3 * low)
    ctx.check("the weights grew over 2x", float(_flat(model).norm()) > 2 * norm0)
    ctx.check("finite throughout", _finite(ls))


# -- kiln shelf: one shard with the kiln temperature in raw Fahrenheit ---------------------------

ONSET_KILN = 110


@scenario(
    family="kiln_shelf_warp_relu_huber_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KILN,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a silicon-carbide kiln shelf's warp after a firing (standardised) from 10 standardised readings (peak temperature, load, span, ...), SGD momentum 0.9 at 1e-2, Huber loss, clipping at 1.0, 220 steps. The shard behind step 110's batch came from a kiln controller exporting the peak-temperature column raw in Fahrenheit (about 2300) instead of standardised: 8 of 64 rows carry the raw value. That step's loss and gradient jump; clipping bounds the step and the run recovers.",
)
def h311_kiln_shelf_fahrenheit_shard(ctx: Context) -> None:
    gen = seeded(31105)
    model = Trunk(10, 64, out=1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_KILN:
            x = x.clone()
            seen["clean"] = float(x[8:, 0].abs().max())
            x[:8, 0] = 2300.0 + 20.0 * x[:8, 0]
            seen["bad"] = float(x[:8, 0].abs().min())
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 10, seed=323),
        220,
        F.huber_loss,
        clip=1.0,
        alter=alter,
    )
    ls, g = ctx.losses, ctx.grad_norms
    base = _mean(ls[ONSET_KILN - 10 : ONSET_KILN])
    ctx.check(
        "the bad rows' column is over 100x the clean rows'", seen["bad"] > 100 * seen["clean"]
    )
    ctx.check("the loss at step 110 is over 20x the steps before", ls[ONSET_KILN] > 20 * base)
    ctx.check(
        "the gradient at step 110 is over 20x the median", g[ONSET_KILN] > 20 * _median(g[90:110])
    )
    ctx.check("the loss recovers to under 3x its level", _mean(ls[-10:]) < 3 * base)
    ctx.check("finite throughout", _finite(ls))


# -- gravel shoal: sqrt(2 g h) of an unclamped head ---------------------------------------------------


class Torricelli(nn.Module):
    """Flow speed from an effective head: v = sqrt(2 g h) (the clamp h >= 0 was never written)."""

    def forward(self, h):
        return torch.sqrt(2 * 9.81 * h)


class RiffleNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.speed = Torricelli()
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, 0.05)

    def forward(self, x):
        h = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return self.speed(h).squeeze(-1)


def _riffles(gen, batch, seed):
    """Surface speed over a gravel shoal riffle (m/s) from 8 standardised readings; at low stage
    the riffle runs dry and the speed logged is 0."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        h = 0.05 * F.relu(x @ w / math.sqrt(8) + 0.2)
        yield x, torch.sqrt(2 * 9.81 * h)


DIVERGE_RIFFLE = 15


@scenario(
    family="gravel_shoal_riffle_speed_sqrt_head_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("speed", "head"),
    diverges=DIVERGE_RIFFLE,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) whose head predicts the effective head of water h over a gravel-shoal riffle and a Torricelli module (speed) turns it into the surface speed sqrt(2 g h), regressed on logged speeds in m/s from 8 standardised readings of stage, slope and grain size, RAdam at 1e-3, MSE, 200 steps planned. The riffle runs dry at low stage and its logged speed is 0 for a good share of the rows; the clamp h >= 0 before the sqrt was never written. The loss pulls h towards 0 on the dry rows, where the sqrt's slope is unbounded, a row's h overshoots below zero and sqrt of a negative gives NaN at step 15.",
)
def h311_gravel_shoal_sqrt_head(ctx: Context) -> None:
    gen = seeded(31106)
    model = RiffleNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    low = []

    def watch(step, out, x, y):
        with torch.no_grad():
            h = model.head(model.act2(model.fc2(model.act1(model.fc1(x)))))
        low.append(float(h.min()))

    stop = _loop(ctx, model, opt, _riffles(gen, 64, seed=324), 200, F.mse_loss, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(
        "the loss is NaN at the recorded step", bad == DIVERGE_RIFFLE and stop == DIVERGE_RIFFLE
    )
    ctx.check("a row's head is negative at that step", bad is not None and low[bad] < 0.0)
    ctx.check("every head was positive at step 0", low[0] > 0.0)
    ctx.check("finite before it", bad is not None and _finite(ctx.losses[:bad]))


# -- nunatak: an absolute trunk learning rate used as a multiplier -------------------------------


@scenario(
    family="nunatak_wind_scour_two_group_gelu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the depth and width of the wind-scour moat around a nunatak (2 outputs, standardised) from 12 readings of wind, slope and snow, Adagrad with two parameter groups, MSE, 200 steps. The config gives the trunk's learning rate as an absolute 1e-6 under the key the code reads as a multiplier of the head's 1e-2, so fc1 and fc2 train at 1e-8: they stay where they were initialised (relative updates under 1e-5 per step) while the head learns. Nothing diverges.",
)
def h311_nunatak_trunk_multiplier(ctx: Context) -> None:
    gen = seeded(31107)
    model = Trunk(12, 64, out=2, act=nn.GELU)
    base_lr, trunk = 1e-2, 1e-6
    opt = torch.optim.Adagrad(
        [
            {
                "params": list(model.fc1.parameters()) + list(model.fc2.parameters()),
                "lr": base_lr * trunk,
            },
            {"params": model.head.parameters(), "lr": base_lr},
        ]
    )
    start = {n: _flat(getattr(model, n)) for n in ("fc1", "fc2", "head")}
    ratios = []

    def before(step):
        ratios.append(_flat(model.fc1))

    def after(step):
        prev = ratios.pop()
        ratios.append(float((_flat(model.fc1) - prev).norm() / prev.norm()))

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 12, seed=325, outputs=2),
        200,
        F.mse_loss,
        before=before,
        after=after,
    )
    moved = {n: float((_flat(getattr(model, n)) - s).norm() / s.norm()) for n, s in start.items()}
    ctx.check(
        "fc1 and fc2 moved under 1e-4 of their norm all run", max(moved["fc1"], moved["fc2"]) < 1e-4
    )
    ctx.check("fc1's per-step update ratio stays under 1e-5", max(ratios) < 1e-5)
    ctx.check("the head moved over 5% of its norm", moved["head"] > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- grike: MultiStepLR gamma typed 3.0 for 0.3 --------------------------------------------------


@scenario(
    family="grike_limestone_pavement_dissolution_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the dissolution rate of grikes in a limestone pavement (standardised) from 10 readings of rainfall, soil pH and joint spacing, plain SGD at 0.02, MSE, MultiStepLR with milestones every 40 steps and gamma typed 3.0 instead of 0.3, 240 steps planned. The schedule meant to cut the rate multiplies it by 3 at every milestone; once lr x the loss's top Hessian eigenvalue passes 2 the iterates oscillate with growing amplitude along the sharpest direction and the loss blows up.",
)
def h311_grike_multistep_gamma(ctx: Context) -> None:
    gen = seeded(31108)
    model = Trunk(10, 64, out=1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[40, 80, 120, 160, 200], gamma=3.0)
    batches = _gauges(gen, 64, 10, seed=326)
    px, py = next(batches)
    sharp = {}

    def before(step):
        if step % 5 == 0 and math.isfinite(ctx.losses[-1] if ctx.losses else 0.0):
            sharp[step] = (opt.param_groups[0]["lr"], _top_eigen(model, F.mse_loss, px, py))

    _loop(ctx, model, opt, batches, 240, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    best = min(v for v in ls if math.isfinite(v))
    blew = [i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * max(best, 1e-3)]
    crossed = [s for s, (lr, lam) in sorted(sharp.items()) if lr * lam > 2.0]
    ctx.check("the loss blows up (over 100x its best or non-finite)", bool(blew))
    ctx.check(
        "lr x sharpness passed 2 before the blow-up",
        bool(crossed) and bool(blew) and crossed[0] < blew[0],
    )
    ctx.check("lr x sharpness was under 1 early on", sharp[0][0] * sharp[0][1] < 1.0)
    ctx.check("the loss fell first", _mean(ls[30:40]) < 0.8 * _mean(ls[:10]))


# -- snath: the ReLU gain applied twice in a 12-layer init --------------------------------------------


class DeepHang(nn.Module):
    """12 Linear layers in a ModuleList 'layers' with ReLUs between; records each layer's output."""

    def __init__(self, d_in=10, hidden=64, depth=12, gain_twice=True):
        super().__init__()
        sizes = [d_in] + [hidden] * (depth - 1) + [1]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        gain = nn.init.calculate_gain("relu")
        for layer in self.layers:
            # the helper already returns the He std sqrt(2 / fan_in); the gain is applied on top
            std = math.sqrt(2.0 / layer.in_features) * (gain if gain_twice else 1.0)
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        self.outs: list[torch.Tensor] = []

    def forward(self, x):
        self.outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x.squeeze(-1)


@scenario(
    family="snath_scythe_blade_hang_deep_relu_mlp",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A 12-layer ReLU MLP (layers.0 ... layers.11) regressing how a scythe blade hangs on its snath (lay angle, standardised) from 10 readings of grip heights, tang and mower's stature, SGD Nesterov momentum 0.9 at 1e-3, Huber loss, clipping at 1.0, 150 steps. The init helper already returns the He std sqrt(2/fan_in) and the call site multiplies it by calculate_gain('relu') = sqrt(2) again: every layer scales the signal and the backward gradient by about sqrt(2), so the gradient at layers.0's output is about 40x that at layers.11's at the start and stays over 10x throughout (a He-init twin's is about 1x). Clipping keeps the steps bounded and the loss does not blow up.",
)
def h311_snath_gain_twice(ctx: Context) -> None:
    gen = seeded(31109)
    model = DeepHang()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ratios = []

    def after(step):
        o = model.outs
        if o[0].grad is not None and o[-1].grad is not None:
            ratios.append(float(o[0].grad.norm() / (o[-1].grad.norm() + 1e-30)))

    _loop(ctx, model, opt, _gauges(gen, 64, 10, seed=327), 150, F.huber_loss, clip=1.0, after=after)
    twin = DeepHang(gain_twice=False)
    x, y = next(_gauges(torch.Generator().manual_seed(5), 64, 10, seed=327))
    F.huber_loss(twin(x), y).backward()
    twin_ratio = float(twin.outs[0].grad.norm() / twin.outs[-1].grad.norm())
    ctx.check("layers.0's output gradient is over 20x layers.11's at the start", ratios[0] > 20)
    ctx.check("and over 10x on every step", min(ratios) > 10)
    ctx.check("a He-init twin's ratio is over 5x smaller", twin_ratio * 5 < ratios[0])
    ctx.check("finite throughout", _finite(ctx.losses))


# -- dulcian: the temperature reads the neighbouring config key ----------------------------------


class ArticulationClassifier(Trunk):
    def __init__(self, temperature):
        super().__init__(12, 64, out=6, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="dulcian_reed_articulation_temperature_gelu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) sorting a dulcian (Renaissance bassoon) player's reed articulations into 6 kinds (tongued, slurred, double-tongued, ...) from 12 readings of mouthpiece pressure and reed vibration, NAdam at 2e-3, cross-entropy, 200 steps. The logits are divided by a temperature meant to be 1.0; after a config refactor the loader reads it from the neighbouring key (the mixup alpha, 1e-2), so the logits are 100x what they should be and the float32 softmax of most rows rounds to exactly 1.0 on the target while the wrong rows give huge losses.",
)
def h311_dulcian_temperature_key(ctx: Context) -> None:
    gen = seeded(31110)
    model = ArticulationClassifier(temperature=1e-2)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    collapsed, scaled = [], []

    def watch(step, out, x, y):
        if step % 10 == 0:
            collapsed.append(collapsed_fraction(out.detach(), y))
            scaled.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 12, 6, seed=328),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over a quarter of rows' softmax is exactly 1.0 late in the run", max(collapsed[-5:]) > 0.25
    )
    ctx.check("the peak scaled logit is over 30", max(scaled) > 30.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ----------------------------------------------------------------------------------------


@scenario(
    family="clam_shell_grab_bite_momentum_relu_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP (fc1, act1, fc2, act2, head) classifying a clam-shell grab's bite (5 kinds: full, partial, snagged, ...) from 14 crane readings, SGD with heavy momentum 0.99 at a peak of 1e-3, linear warm-up over 120 steps then cosine decay, cross-entropy, clipping at 1.0, 260 steps.",
)
def h311_clam_shell_heavy_momentum(ctx: Context) -> None:
    gen = seeded(31111)
    model = Trunk(14, 64, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99)
    steps, warm = 260, 120
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm)
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, max(0, s - warm) / (steps - warm))))
        ),
    )
    batches = _sorts(gen, 64, 14, 5, seed=329, spread=1.0)
    _loop(
        ctx,
        model,
        opt,
        batches,
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    x, y = next(batches)
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("over 80% of a fresh batch classified", acc > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="toad_in_the_hole_throw_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying a toad-in-the-hole (pub game) brass-disc throw's outcome (4 kinds: hole, lead, off, edge) from 10 readings, fp16 autocast with a torch.amp.GradScaler, AdamW in two parameter groups (weight decay 0.05 on Linear weights, none on biases) under OneCycleLR (max 5e-3), label smoothing 0.1, clipping at 1.0 after unscaling, 180 steps.",
)
def h311_toad_in_the_hole_fp16(ctx: Context) -> None:
    gen = seeded(31112)
    model = Trunk(10, 64, out=4, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=5e-3
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=180)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 10, 4, seed=330, spread=1.0),
        180,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss scale never fell below its start / 4", min(ctx.scales) >= 256.0)


class LanceNet(nn.Module):
    """Gaussian regressor: a tanh trunk, a mean head and a softplus scale head."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.scale_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        sigma = F.softplus(self.scale_head(h)) + 1e-3
        return torch.cat([self.mean_head(h), sigma], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1] ** 2)


def _quintain(gen, batch, seed):
    """The swing speed of a struck quintain's arm from 8 readings of the rider and lance; the
    noise grows with the approach speed."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        scale = 0.05 + 0.3 * torch.sigmoid(2 * x[:, 1])
        yield x, torch.tanh(x @ w / math.sqrt(8)) + scale * torch.randn(batch, generator=gen)


@scenario(
    family="quintain_ride_arm_swing_gaussian_nll_net",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a heteroscedastic tanh regressor (fc1, fc2, mean_head, scale_head with softplus + 1e-3) predicting the swing speed of a quintain's arm after a tilting rider's strike and its spread, Adadelta at lr 1.0, Gaussian NLL (torch's gaussian_nll_loss), accumulation over 2 micro-batches, ReduceLROnPlateau, clipping at 5.0, 200 steps.",
)
def h311_quintain_adadelta_nll(ctx: Context) -> None:
    gen = seeded(31113)
    model = LanceNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _loop(
        ctx,
        model,
        opt,
        _quintain(gen, 64, seed=331),
        200,
        _gauss_nll,
        clip=5.0,
        sched=sched,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("the NLL fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("finite throughout", _finite(ls))
