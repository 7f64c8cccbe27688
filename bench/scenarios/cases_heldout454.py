"""Held-out set 454 (``h454_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a farrier gait-trace stride-length regressor (a hand-written 1-D DenseNet with batch
norm: dense blocks concatenating features, transition layers) fed one shard with targets in
millimetres for metres (one corrupted batch), a glass-gather mass regressor whose hand-written
static loss scale (65536) is not divided out at one resumed step (one giant gradient fills
Adam's second moment and the updates stall), an oud string-buzz source classifier whose
hand-written cross-entropy takes its logsumexp from a no-grad metrics helper (the head's logits
grow without bound), a sundial shadow-length regressor whose per-row range normaliser divides 0 by
0 on a flat-lined reading (NaN at step 130), a clog-dance tap-tempo two-group regressor whose
trunk warm-up is typed 1e9 steps for 100 (the trunk frozen under Adamax), a geyser
eruption-interval deep ReLU MLP initialised with std 2.3/sqrt(fan_in) for 1.41/sqrt(fan_in)
(gradients grow back through depth), a kiln-cone slump grade ReLU classifier whose second-stage
lr is typed 3e-1 for 3e-4 (the ReLUs die), a curling-stone sweep classifier whose temperature
is typed 0.002 for 2.0 (softmax saturates), a dog-sled split-time regressor whose auxiliary
loss weight schedule returns 400 for one step (one gradient burst) and a dune-migration rate
regressor whose target scaler multiplies its scale by the batch ratio every step (a drifting
target, a slow climb of the loss).

Controls: a hang-glider thermal-climb regressor whose batch size doubles at step 120 (SGD
momentum, MSE, a step-decay schedule); an fp16 bodhran-stroke multi-label BCE net (GradScaler,
Adam under OneCycleLR, clipping); a lacrosse-pass grade classifier (Adagrad, label smoothing
0.1, accumulation over 2, clipping, ReduceLROnPlateau).
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


def _std(xs: list[float]) -> float:
    m = _mean(xs)
    return math.sqrt(_mean([(v - m) ** 2 for v in xs]))


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    """This file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``backprop(step, loss)`` gives the loss actually backpropagated, ``after(step)`` runs after
    the optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
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
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
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
    return losses, norms


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, size=None):
    """Standardised readings and a smooth nonlinear target of about unit scale. ``size`` (a
    one-element list) lets the caller change the batch size mid-run."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        b = size[0] if size is not None else batch
        x = torch.randn(b, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(b, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _tags(gen, batch, d_in, tags, seed):
    """Readings and multi-label 0/1 tags from a fixed random linear rule."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, tags, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield (
            x,
            (x @ w / math.sqrt(d_in) + 0.3 * torch.randn(batch, tags, generator=gen) > 0).float(),
        )


def _gait_traces(gen, batch, length=32, seed=0):
    """Hoof-accelerometer traces (a stride rhythm with harmonics and noise); target: stride
    length in metres, a smooth function of the rhythm's frequency and amplitude."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        f = 0.15 + 0.25 * torch.rand(batch, 1, generator=gen)
        a = 0.5 + torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        x = a * torch.sin(f * t + ph) + 0.3 * a * torch.sin(2 * f * t + 0.5 * ph)
        x = x + 0.1 * torch.randn(batch, length, generator=gen)
        y = 0.8 + 2.0 * f.squeeze(1) * a.squeeze(1)
        yield x[:, None, :], y


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


# -- a hand-written 1-D DenseNet with batch normalisation ------------------------------------------


class _DenseLayer(nn.Module):
    def __init__(self, c_in, growth):
        super().__init__()
        self.bn = nn.BatchNorm1d(c_in)
        self.conv = nn.Conv1d(c_in, growth, 3, padding=1)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


class _DenseBlock(nn.Sequential):
    def __init__(self, c_in, growth, layers):
        super().__init__(*(_DenseLayer(c_in + i * growth, growth) for i in range(layers)))


class _Transition(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.bn = nn.BatchNorm1d(c_in)
        self.conv = nn.Conv1d(c_in, c_out, 1)

    def forward(self, x):
        return F.avg_pool1d(self.conv(F.relu(self.bn(x))), 2)


class _DenseNet1d(nn.Module):
    """Stem conv, two dense blocks (each layer's features concatenated onto its input) joined
    by a transition (BN, 1x1 conv, pooling), BN, global average pooling, a linear head."""

    def __init__(self, growth=8, layers=3, out=1):
        super().__init__()
        self.stem = nn.Conv1d(1, 16, 5, padding=2)
        self.block1 = _DenseBlock(16, growth, layers)
        c = 16 + layers * growth
        self.trans1 = _Transition(c, c // 2)
        self.block2 = _DenseBlock(c // 2, growth, layers)
        c = c // 2 + layers * growth
        self.bn_final = nn.BatchNorm1d(c)
        self.head = nn.Linear(c, out)

    def forward(self, x):
        z = self.block2(self.trans1(self.block1(self.stem(x))))
        z = F.relu(self.bn_final(z)).mean(-1)
        out = self.head(z)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- faults ----------------------------------------------------------------------------------------

GAIT_ONSET = 120


@scenario(
    family="farrier_gait_trace_stride_densenet1d_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=GAIT_ONSET,
    note="Farrier gait-trace stride-length regressor: a hand-written 1-D DenseNet (batch norm, "
    "two dense blocks concatenating features, a transition layer) over hoof-accelerometer "
    "traces, MSE, SGD momentum, clipping at 1. One shard exported by another yard gives the "
    "stride length in millimetres instead of metres: the batch at step 120 carries targets "
    "1000x too large. The loss and the gradient jump at that batch; the clipped run recovers.",
)
def h454_farrier_gait_densenet_mm_shard(ctx) -> None:
    gen = seeded(4541)
    model = _DenseNet1d()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == GAIT_ONSET else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _gait_traces(gen, 32), 220, F.mse_loss, alter=alter, clip=1.0
    )
    pre_l, pre_g = _median(losses[60:GAIT_ONSET]), _median(norms[60:GAIT_ONSET])
    ctx.check(
        "loss at the mm batch over 1000x the median before", losses[GAIT_ONSET] > 1000 * pre_l
    )
    ctx.check("gradient at the mm batch over 50x the median before", norms[GAIT_ONSET] > 50 * pre_g)
    ctx.check(
        "the run recovers: last 20 steps under 5x the median before",
        _mean(losses[-20:]) < 5 * pre_l,
    )
    ctx.check("finite throughout", _finite(losses))


GATHER_ONSET = 60


@scenario(
    family="glass_gather_mass_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=GATHER_ONSET,
    note="Glass-furnace gather-mass SiLU regressor, MSE, Adam (betas 0.9, 0.999). The loop "
    "applies a hand-written static loss scale of 65536 and divides the gradients back; the step "
    "resumed from a checkpoint at 60 skips the division, so one gradient 65536x too large "
    "reaches Adam. Its second moment keeps that gradient for hundreds of steps: the updates "
    "afterwards shrink to a small fraction of those before and the loss stalls.",
)
def h454_glass_gather_adam_loss_scale(ctx) -> None:
    gen = seeded(4542)
    model = _Net(12, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    moves = []
    prev = [_flat(model)]

    def backprop(step, loss):
        scale = 65536.0
        scaled = loss * scale
        return scaled if step == GATHER_ONSET else scaled / scale

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 45420),
        240,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    pre_g = _median(norms[20:GATHER_ONSET])
    ctx.check(
        "gradient at the unscaled step over 10000x the median before",
        norms[GATHER_ONSET] > 1e4 * pre_g,
    )
    before_move = _mean(moves[20:GATHER_ONSET])
    after_move = _mean(moves[GATHER_ONSET + 20 : GATHER_ONSET + 120])
    ctx.check(
        "updates 20-120 steps later under 10% of those before", after_move < 0.1 * before_move
    )
    drop_before = losses[20] - _mean(losses[GATHER_ONSET - 10 : GATHER_ONSET])
    ctx.check("the loss was falling before the step", drop_before > 0)
    ctx.check("finite throughout", _finite(losses))


@scenario(
    family="oud_string_buzz_source_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="Oud string-buzz source classifier (which of six frets or the bridge buzzes, from "
    "fret and bridge readings, ReLU MLP, NAdam). The hand-written cross-entropy copies its "
    "logsumexp from a metrics helper that runs under torch.no_grad(): the loss only pushes the "
    "target logit up and nothing pulls the others down, so the head's logits climb without "
    "bound for the whole run (the true cross-entropy climbs into the thousands).",
)
def h454_oud_buzz_detached_logsumexp(ctx) -> None:
    gen = seeded(4543)
    model = _Net(10, 48, out=6)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    peak, true_ce = [], []

    def lse_metric(out):
        with torch.no_grad():
            return torch.logsumexp(out, -1)

    def loss_fn(out, y):
        peak.append(float(out.detach().abs().max()))
        true_ce.append(float(F.cross_entropy(out.detach(), y)))
        return (lse_metric(out) - out.gather(1, y[:, None]).squeeze(1)).mean()

    losses, _ = _loop(
        ctx, model, opt, _grades(gen, 64, 10, 6, 45430), 200, loss_fn, classifier=True
    )
    ctx.check("max |logit| over 20x its first step's", peak[-1] > 20 * peak[0])
    ctx.check("logits still growing over the last 50 steps", peak[-1] > 1.2 * peak[-50])
    ctx.check("the logged loss matches a real cross-entropy", abs(losses[-1] - true_ce[-1]) < 1e-4)
    ctx.check("finite throughout", _finite(losses))


SUNDIAL_ONSET = 130


class _RangeNorm(nn.Module):
    """Per-row min-max scaling of the readings, with no floor on the range."""

    def forward(self, x):
        lo = x.min(-1, keepdim=True).values
        hi = x.max(-1, keepdim=True).values
        return (x - lo) / (hi - lo)


class _SundialNet(nn.Module):
    def __init__(self, d_in=16, hidden=48):
        super().__init__()
        self.norm = _RangeNorm()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(self.norm(x)))))
        return self.head(h).squeeze(-1)


@scenario(
    family="sundial_gnomon_range_norm_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=SUNDIAL_ONSET,
    heldout=True,
    onset=SUNDIAL_ONSET,
    note="Sundial shadow-length regressor over a row of 16 light-sensor readings, each row "
    "min-max scaled by a hand-written range normaliser with no floor on the range, tanh MLP, "
    "MSE, RAdam. At step 130 an overcast batch holds a flat-lined sensor row (all readings "
    "equal): max - min is 0, the normaliser divides 0 by 0 and the loss is NaN.",
)
def h454_sundial_range_norm_zero_over_zero(ctx) -> None:
    gen = seeded(4544)
    model = _SundialNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    nan_rows = []

    def alter(step, x, y):
        if step == SUNDIAL_ONSET:
            x = x.clone()
            x[3] = 0.42
        return x, y

    def loss_fn(out, y):
        nan_rows.append(int(torch.isnan(out.detach()).sum()))
        return F.mse_loss(out, y)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 16, 45440), 200, loss_fn, alter=alter)
    ctx.check("loss finite before the flat row", _finite(losses[:SUNDIAL_ONSET]))
    ctx.check(
        "loss NaN at step 130", len(losses) > SUNDIAL_ONSET and math.isnan(losses[SUNDIAL_ONSET])
    )
    ctx.check(
        "the NaN starts in the normaliser's row (one NaN output)",
        len(nan_rows) > SUNDIAL_ONSET and nan_rows[SUNDIAL_ONSET] == 1,
    )
    ctx.check(
        "it was learning before",
        _mean(losses[SUNDIAL_ONSET - 10 : SUNDIAL_ONSET]) < 0.8 * _mean(losses[:10]),
    )


@scenario(
    family="clog_dance_tap_tempo_two_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Clog-dance tap-tempo regressor with two param groups (trunk fc1/fc2, head), Huber "
    "loss, Adamax under LambdaLR with one warm-up lambda per group. The trunk's warm-up length "
    "is typed 1e9 steps for 100, so its lr stays near 1e-12 the whole run: the trunk never "
    "moves while the head trains.",
)
def h454_clog_tempo_trunk_warmup_typo(ctx) -> None:
    gen = seeded(4545)
    model = _Net(14, 48)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adamax(
        [{"params": trunk, "lr": 2e-3}, {"params": model.head.parameters(), "lr": 2e-3}]
    )
    warm_trunk, warm_head = 1e9, 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: min(1.0, (s + 1) / warm_trunk), lambda s: min(1.0, (s + 1) / warm_head)]
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 14, 45450), 200, F.huber_loss, sched=sched
    )

    def rel(a, m):
        return float((m.weight.detach() - a).norm() / a.norm())

    ctx.check("fc1 moves under 1e-6 of its norm", rel(w1, model.fc1) < 1e-6)
    ctx.check("fc2 moves under 1e-6 of its norm", rel(w2, model.fc2) < 1e-6)
    ctx.check("the head moves over 5% of its norm", rel(wh, model.head) > 0.05)
    ctx.check("finite throughout", _finite(losses))


class _DeepReLU(nn.Module):
    def __init__(self, d_in=16, hidden=32, depth=10, std_gain=2.3):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=std_gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
        self.acts = []

    def forward(self, x):
        self.acts = []
        for m in self.layers:
            x = F.relu(m(x))
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model, x, y):
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    g0, gl = model.acts[0].grad.norm(), model.acts[-1].grad.norm()
    model.zero_grad()
    return float(g0 / gl)


@scenario(
    family="geyser_cone_interval_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Geyser eruption-interval regressor, a 10-layer ReLU MLP, MSE, plain SGD with "
    "clipping at 1. The init std is typed 2.3/sqrt(fan_in) for He's 1.41/sqrt(fan_in): each "
    "layer multiplies the backward signal by about 1.6, so the gradient at the first hidden "
    "layer is over 50 times that at the last (at He's gain it is of the same order).",
)
def h454_geyser_deep_relu_init_gain(ctx) -> None:
    gen = seeded(4546)
    batches = _readings(gen, 64, 16, 45460)
    probe = next(batches)
    ref = _DeepReLU(std_gain=math.sqrt(2.0))
    torch.manual_seed(4546)
    model = _DeepReLU(std_gain=2.3)
    ref_ratio = _depth_ratio(ref, *probe)
    ratio = _depth_ratio(model, *probe)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses, norms = _loop(ctx, model, opt, batches, 120, F.mse_loss, clip=1.0)
    ctx.check("first hidden layer's gradient over 50x the last's", ratio > 50)
    ctx.check("at He's gain under 5x", ref_ratio < 5)
    ctx.check("gradient norm over 100 at the start", norms[0] > 100)
    ctx.check("finite throughout", _finite(losses))


KILN_ONSET = 60


@scenario(
    family="kiln_cone_bend_grade_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act1", "act2"),
    diverges=None,
    heldout=True,
    onset=KILN_ONSET,
    note="Kiln pyrometric-cone bend grade classifier, ReLU MLP, cross-entropy, Adam at 3e-4. "
    "The second training stage (from step 60) sets lr from a config where 3e-4 is typed 3e-1: "
    "the big steps push most hidden ReLUs negative on every input; they die and the loss stops "
    "improving.",
)
def h454_kiln_cone_stage_lr_dead_relus(ctx) -> None:
    gen = seeded(4547)
    batches = _grades(gen, 64, 12, 8, 45470, spread=1.2)
    model = _Net(12, 64, out=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    probe = next(batches)[0]

    def dead():
        with torch.no_grad():
            h1 = model.act1(model.fc1(probe))
            h2 = model.act2(model.fc2(h1))
        return max(float((h1 <= 0).all(0).float().mean()), float((h2 <= 0).all(0).float().mean()))

    seen = {}

    def before(step):
        if step == KILN_ONSET:
            seen["before"] = dead()
            for g in opt.param_groups:
                g["lr"] = 3e-1

    losses, _ = _loop(
        ctx, model, opt, batches, 220, F.cross_entropy, classifier=True, before=before
    )
    end = dead()
    ctx.check("under 10% dead units before the stage", seen.get("before", 1.0) < 0.1)
    ctx.check("over half the units of a layer dead at the end", end > 0.5)
    ctx.check(
        "the loss stops improving: last 20 steps not under the onset's",
        _mean(losses[-20:]) >= 0.9 * _mean(losses[KILN_ONSET - 10 : KILN_ONSET]),
    )
    ctx.check("finite throughout", _finite(losses))


class _SweepNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, classes=5, temperature=2.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return self.head(h) / self.temperature


@scenario(
    family="curling_sweep_call_temperature_gelu_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Curling-stone sweep-call classifier (five calls from stone speed and curl readings), "
    "GELU MLP, cross-entropy, plain SGD, the logits divided by a softmax temperature. The "
    "temperature is typed 0.002 for 2.0 (a config in thousandths): the logits are 1000x too "
    "sharp and the target probabilities round to exactly 1.0 in float32.",
)
def h454_curling_sweep_temperature_typo(ctx) -> None:
    gen = seeded(4548)
    batches = _grades(gen, 64, 10, 5, 45480)
    model = _SweepNet(temperature=0.002)
    opt = torch.optim.SGD(model.parameters(), lr=2e-3)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        raw = model.head(F.gelu(model.fc2(F.gelu(model.fc1(x)))))
    bad = collapsed_fraction(raw / 0.002, y)
    good = collapsed_fraction(raw / 2.0, y)
    ctx.check("over half the rows' target probability exactly 1.0", bad > 0.5)
    ctx.check("under 5% at temperature 2.0 on the same features", good < 0.05)
    ctx.check("finite throughout", _finite(losses))


SLED_ONSET = 110


@scenario(
    family="dog_sled_checkpoint_split_aux_regressor",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SLED_ONSET,
    note="Dog-sled checkpoint split-time regressor with an auxiliary trail-grade head, tanh "
    "MLP, MSE plus 0.1 x auxiliary MSE, SGD Nesterov, clipping at 1. The auxiliary weight "
    "schedule is a lookup table indexed by step // 10; an off-by-one in its rebuild at step "
    "110 returns the table length (400) for the weight for that one step: one gradient burst "
    "with an ordinary batch and an ordinary logged loss.",
)
def h454_dog_sled_aux_weight_burst(ctx) -> None:
    gen = seeded(4549)
    model = _Net(12, 48, out=2, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    aux = {}

    def loss_fn(out, y):
        aux["loss"] = F.mse_loss(out[:, 1], torch.tanh(2 * y))
        return F.mse_loss(out[:, 0], y)

    def backprop(step, loss):
        weight = 400.0 if step == SLED_ONSET else 0.1
        return loss + weight * aux["loss"]

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 12, 45490), 200, loss_fn, backprop=backprop, clip=1.0
    )
    pre_g, pre_l = _median(norms[60:SLED_ONSET]), _median(losses[60:SLED_ONSET])
    ctx.check("gradient at step 110 over 50x the median before", norms[SLED_ONSET] > 50 * pre_g)
    ctx.check("logged loss at step 110 under 2x the median before", losses[SLED_ONSET] < 2 * pre_l)
    ctx.check("recovers: last 20 steps under 2x the median before", _mean(losses[-20:]) < 2 * pre_l)
    ctx.check("finite throughout", _finite(losses))


@scenario(
    family="barchan_crest_creep_target_scaler_regressor",
    optimizer="AdamW",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Dune crest-creep rate regressor, SiLU MLP, MSE, AdamW. The target scaler should set "
    "its scale from the running batch statistics; a refactor multiplies the scale by the ratio "
    "of batch to running std every step (about 0.8% up per step on these batches): the targets "
    "drift upwards faster than the model follows and the loss climbs slowly through the run.",
)
def h454_barchan_scaler_drift(ctx) -> None:
    gen = seeded(4550)
    model = _Net(12, 48, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    scale = [1.0]

    def alter(step, x, y):
        scale[0] *= 1.008
        return x, y * scale[0]

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 12, 45500), 240, F.mse_loss, alter=alter)
    low = min(losses)
    ctx.check("last 20 steps over 3x the lowest loss", _mean(losses[-20:]) > 3 * low)
    ctx.check(
        "climbing through the second half", _mean(losses[-20:]) > 1.5 * _mean(losses[120:140])
    )
    ctx.check("finite throughout", _finite(losses))


# -- healthy controls ------------------------------------------------------------------------------

GLIDER_DOUBLE = 120


@scenario(
    family="hang_glider_thermal_core_batch_doubling_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hang-glider thermal-core climb-rate regressor, tanh MLP, MSE, SGD momentum with a "
    "step decay (x0.5 at step 180). The batch size doubles from 32 to 64 at step 120 (a "
    "batch-size ramp instead of an lr decay): the loss gets smoother and the gradient norm "
    "drops there. Control.",
)
def h454_hang_glider_batch_doubling(ctx) -> None:
    gen = seeded(4551)
    size = [32]
    model = _Net(12, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=180, gamma=0.5)

    def before(step):
        if step == GLIDER_DOUBLE:
            size[0] = 64

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 45510, noise=0.3, size=size),
        260,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    d = GLIDER_DOUBLE
    ctx.check("loss fell", _fell(losses))
    ctx.check(
        "gradient norm lower after the doubling",
        _mean(norms[d : d + 40]) < 0.9 * _mean(norms[d - 40 : d]),
    )
    ctx.check(
        "loss smoother after the doubling", _std(losses[d : d + 40]) < _std(losses[d - 40 : d])
    )
    ctx.check("finite throughout", _finite(losses))


@scenario(
    family="bodhran_stroke_fp16_multilabel_bce_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bodhran stroke tagger (five multi-label stroke tags from tipper readings), ReLU MLP, "
    "BCE with logits, fp16 autocast with a GradScaler, Adam under OneCycleLR, clipping at 1. "
    "Control.",
)
def h454_bodhran_fp16_onecycle(ctx) -> None:
    gen = seeded(4552)
    model = _Net(16, 64, out=5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _tags(gen, 64, 16, 5, 45520),
        steps,
        F.binary_cross_entropy_with_logits,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check("finite throughout", _finite(losses))
    ctx.check("the scale never collapsed", min(ctx.scales) >= 2.0**8)


@scenario(
    family="lacrosse_pass_grade_smoothed_classifier",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lacrosse pass-grade classifier (six grades from stick and ball-flight readings), "
    "SiLU MLP, cross-entropy with label smoothing 0.1, Adagrad, accumulation over 2, clipping "
    "at 1, ReduceLROnPlateau on the loss. Control.",
)
def h454_lacrosse_pass_smoothed_plateau(ctx) -> None:
    gen = seeded(4553)
    model = _Net(12, 48, out=6, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 32, 12, 6, 45530, spread=1.3),
        160,
        loss_fn,
        classifier=True,
        accumulate=2,
        clip=1.0,
        sched=sched,
        plateau=lambda: ctx.losses[-1] if ctx.losses else 0.0,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.8))
    ctx.check("loss under half its first step's", _mean(losses[-20:]) < 0.5 * losses[0])
    ctx.check("finite throughout", _finite(losses))
