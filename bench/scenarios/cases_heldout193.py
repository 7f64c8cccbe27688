"""Held-out set 193 (``h193_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: an outrigger-canoe hull-speed regressor whose static loss scale is
left on the gradients for the first step after a resume, a skijoring tow-speed regressor fed one
shard exported in raw units, a highline webbing-tension net resumed without its optimizer state,
a cryoseism geophone BatchNorm 1-D CNN normalising each trace by its own peak, a green-flash
deep tanh MLP initialised with a uniform bound used as a normal std, a canicross pace regressor
whose embedding group's rate lost its exponent, a travertine terrace regressor trained with the
linear-scaling rule at batch 1024, an ice-shove severity classifier handed a contrastive
temperature, a buzkashi phase classifier whose epoch-summary step backwards the loss in
percent, a katana quench-hardness ReLU MLP on targets left in Rockwell units, and three
controls (a firenado rotation Huber regressor on heavy-tailed noise, a batik crackle BatchNorm
CNN, a steel-pan tuning Gaussian-NLL regressor in fp16).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, grad_norm, scenario, seeded


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


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _norm(tensors) -> float:
    return float(torch.sqrt(sum((t.detach().float() ** 2).sum() for t in tensors)))


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
    watch=None,
    backward=None,
    fix_grads=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)`` records after the forward
    pass, ``backward(step, loss)`` gives the tensor actually backwarded, ``fix_grads(step)`` runs
    between backward and the optimizer step, ``after(step)`` after the optimizer step;
    ``accumulate`` micro-batches a step. Stops after logging a NaN loss. ``attach=False`` runs a
    twin without the monitor (its losses are returned, not logged)."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    twin = []
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backward(step, loss) if backward is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if fix_grads is not None:
            fix_grads(step)
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
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        if attach:
            ctx.step(torch.tensor(shown))
        else:
            twin.append(shown)
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break
    return twin


def _regression(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    u = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        s = math.sqrt(d_in)
        y = torch.tanh(x @ w / s) + 0.5 * torch.cos(1.3 * x @ v / s) + 0.3 * (x @ u / s) ** 2
        yield x, y + noise * torch.randn(batch, generator=gen)


def _labelled(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around a few centres per class (classes overlap)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 3, d_in, generator=g) * 1.2
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        pick = torch.randint(0, 3, (batch,), generator=gen)
        x = centres[y, pick] + spread * torch.randn(batch, d_in, generator=gen)
        yield x, y


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


class ThreeLayer(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, with activation modules."""

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


# -- outrigger canoe: a static loss scale left on the gradients for one step after a resume -------


@scenario(
    family="outrigger_canoe_hull_speed_relu_mlp",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing an outrigger canoe's hull speed (standardised) "
    "from 12 paddling readings (stroke rate, crew weight, swell, ama lift, ...), Adam at 1e-3, "
    "MSE. The loop was ported from an fp16 trainer and keeps a static loss scale: it backwards "
    "loss * 65536 and divides the gradients by 65536 before optimizer.step(). At step 100 the "
    "job resumes from a preemption checkpoint and the resume path calls optimizer.step() "
    "without the unscale for its first step: one gradient 65536x the usual, not from the data. "
    "Adam's second moment takes 0.001 * 65536^2 of it, millions of times its level, its square "
    "root stays hundreds of times too large for thousands of steps and the updates stall "
    "(about 25x smaller): the loss, on a plateau near 0.33 at step 100 that a clean twin leaves "
    "for about 0.1, stays near 0.38 to the end; finite.",
)
def h193_outrigger_resume_skips_unscale(ctx: Context) -> None:
    onset, scale = 100, 65536.0

    def run(bug, attach):
        gen = seeded(19301)
        model = ThreeLayer(12, hidden=64, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        params = list(model.parameters())
        moves, second = [], []
        prev = []

        def fix_grads(step):
            if bug and step == onset:
                return  # the resume path's first optimizer.step() skips the unscale
            for p in params:
                p.grad.div_(scale)

        def before(step):
            prev[:] = _snapshot(params)

        def after(step):
            moves.append(_norm([p.detach() - q for p, q in zip(params, prev, strict=True)]))
            second.append(max(float(opt.state[p]["exp_avg_sq"].max()) for p in params))

        losses = _train(
            ctx,
            model,
            opt,
            _regression(gen, 64, 12, seed=1, noise=0.1),
            300,
            F.mse_loss,
            backward=lambda step, loss: loss * scale,
            fix_grads=fix_grads,
            before=before,
            after=after,
            attach=attach,
        )
        return losses, moves, second

    _, moves, second = run(True, True)
    twin, _, _ = run(False, False)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 100 1000x the median before", g[onset] > 1e3 * _median(g[50:onset]))
    ctx.check(
        "Adam's largest second moment 1e4x its level after step 100",
        second[onset] > 1e4 * second[onset - 1],
    )
    ctx.check(
        "update size from step 130 below 1/15 of steps 80-100",
        _mean(moves[130:]) < _mean(moves[80:onset]) / 15,
    )
    ctx.check("loss fell by half before step 100", _mean(ls[90:100]) < 0.5 * _mean(ls[:10]))
    ctx.check(
        "loss over the last 20 steps within 10% of steps 110-120",
        _mean(ls[-20:]) > 0.9 * _mean(ls[110:120]),
    )
    ctx.check("a clean twin ends 2x lower", _mean(ls[-20:]) > 2 * _mean(twin[-20:]))
    ctx.check("loss finite throughout", _finite(ls))


# -- skijoring: one shard exported in raw units ----------------------------------------------------


_SKI_MEAN = torch.tensor([-8.0, 2.0, 78.0, 4200.0, 35.0, 1.2, 310.0, 12.0])
_SKI_STD = torch.tensor([5.0, 0.8, 9.0, 1500.0, 6.0, 0.3, 120.0, 4.0])


@scenario(
    family="skijoring_tow_speed_relu_mlp",
    optimizer="SGD(momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) regressing a skijoring team's tow speed (standardised) "
    "from 8 standardised readings (snow temperature, dog count, skier weight, course length in "
    "m, dog weight, line length, elevation gain, wind), SGD with momentum 0.9 at 0.02, MSE, "
    "clip_grad_norm_ at 5. At step 80 the batch comes from one race's shard that was exported "
    "before the standardisation step: its inputs are in raw units (course length about 4200, "
    "elevation about 300), hundreds to thousands of times the usual; the loss and the "
    "(unclipped) gradient of that one batch are orders of magnitude above the rest, the "
    "clipped step knocks the weights and the run recovers; finite.",
)
def h193_skijoring_raw_unit_shard(ctx: Context) -> None:
    gen = seeded(19302)
    model = ThreeLayer(8, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    onset = 80

    def alter(step, x, y):
        if step == onset:
            x = _SKI_MEAN + _SKI_STD * x  # this shard skipped the standardisation
        return x, y

    _train(
        ctx,
        model,
        opt,
        _regression(gen, 64, 8, seed=2),
        200,
        F.mse_loss,
        alter=alter,
        clip=5.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 80 1000x the median before", ls[onset] > 1e3 * _median(ls[50:onset]))
    ctx.check("gradient at step 80 100x the median before", g[onset] > 100 * _median(g[50:onset]))
    ctx.check(
        "loss over the last 20 steps within 2x of steps 60-80",
        _mean(ls[-20:]) < 2 * _mean(ls[60:onset]),
    )
    ctx.check("loss fell before step 80", _fell(ls[:onset], ratio=0.6))
    ctx.check("loss finite throughout", _finite(ls))


# -- highline: a resume that restores the weights but not the optimizer ---------------------------


@scenario(
    family="highline_webbing_tension_gelu_mlp",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head, 128 wide) regressing the peak tension in a highline's "
    "webbing (standardised) from 10 rigging readings (span, sag, webbing stretch, walker "
    "weight, wind, ...), AdamW at 1e-2 with weight decay 1e-2 after a 20-step linear warm-up "
    "computed from the global step, MSE. At step 120 the job is preempted and resumed; the "
    "checkpoint holds model.state_dict() and the global step but not the optimizer's state, so "
    "AdamW starts again with empty moments and a step count of 0 at the full rate and no "
    "warm-up. Its first bias-corrected updates are about lr * sign(g) on every weight, several "
    "times the settled run's, the loss jumps about twentyfold at step 121 and the run recovers to "
    "its earlier level within a hundred steps; the gradient at the resume and the data are "
    "ordinary; finite.",
)
def h193_highline_resume_without_optimizer_state(ctx: Context) -> None:
    gen = seeded(19303)
    model = ThreeLayer(10, hidden=128, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    onset = 120
    steps_seen = []

    def before(step):
        if step == onset:
            opt.state.clear()  # the resume built AdamW afresh: no moments, step 0
        p = next(iter(model.parameters()))
        steps_seen.append(float(opt.state[p]["step"]) if p in opt.state else 0.0)

    _train(
        ctx,
        model,
        opt,
        _regression(gen, 64, 10, seed=3),
        260,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls, g = ctx.losses, ctx.grad_norms
    base = _median(ls[90:onset])
    ctx.check("optimizer step count back to 0 at step 120", steps_seen[onset] == 0.0)
    ctx.check(
        "loss within steps 121-126 5x the median before", max(ls[onset + 1 : onset + 7]) > 5 * base
    )
    ctx.check(
        "gradient at step 120 within 3x the median before", g[onset] < 3 * _median(g[90:onset])
    )
    ctx.check("loss over the last 20 steps within 1.5x of before", _mean(ls[-20:]) < 1.5 * base)
    ctx.check("loss finite throughout", _finite(ls))


# -- cryoseism: each geophone trace divided by its own peak, and a cut cable ----------------------


class PeakNorm(nn.Module):
    """Scales each trace of a window to a peak of 1: x / max|x| per channel (no epsilon)."""

    def __init__(self):
        super().__init__()
        self.last_min_peak = 0.0

    def forward(self, x):
        peak = x.abs().amax(-1, keepdim=True)
        self.last_min_peak = float(peak.min())
        return x / peak


class FrostQuakeNet(nn.Module):
    def __init__(self, channels=3, classes=4):
        super().__init__()
        self.peak_norm = PeakNorm()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(self.peak_norm(x))))
        h = F.relu(self.bn2(self.conv2(F.max_pool1d(h, 2))))
        return self.head(h.mean(-1))


def _geophone(gen, batch, length=48, cut_at=None):
    """Three-component geophone windows from a lake shore in a cold snap: a frost quake (a sharp
    broadband onset), a tree cracking (a decaying ring), passing traffic (a slow hum) or ice
    noise; amplitudes vary a hundredfold between windows. At ``cut_at`` one station's vertical
    channel is flat zero (its cable cut by the ice)."""
    t = torch.arange(length).float()
    step = 0
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        onset = torch.randint(8, 30, (batch, 1, 1), generator=gen).float()
        after = (t - onset).clamp(min=0)
        quake = (t >= onset) * torch.exp(-after / 3) * torch.randn(batch, 3, length, generator=gen)
        freq = 0.5 + 0.3 * torch.rand(batch, 1, 1, generator=gen)
        crack = (t >= onset) * torch.exp(-after / 12) * torch.sin(freq * after)
        hum = torch.sin(0.15 * t + 6 * torch.rand(batch, 3, 1, generator=gen))
        kinds = torch.stack([quake, crack.expand(-1, 3, -1), hum, torch.zeros_like(quake)], 1)
        x = kinds[torch.arange(batch), y] + 0.3 * torch.randn(batch, 3, length, generator=gen)
        x = x * 10 ** (2 * torch.rand(batch, 1, 1, generator=gen) - 1)
        if cut_at is not None and step == cut_at:
            x[5, 2] = 0.0
        step += 1
        yield x, y


@scenario(
    family="cryoseism_geophone_bn_conv1d",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("peak_norm",),
    diverges=90,
    onset=90,
    heldout=True,
    note="A 1-D CNN (conv1, bn1, conv2, bn2 with BatchNorm1d in train mode, global mean pooling, "
    "a head) naming what shook a lake-shore geophone in a cold snap (frost quake, tree crack, "
    "traffic, ice noise) from 48-sample three-component windows, Adagrad at 2e-2, "
    "cross-entropy. Its first module `peak_norm` scales each trace to a peak of 1 as "
    "x / x.abs().amax(-1) with no epsilon (amplitudes vary a hundredfold between windows). At "
    "step 90 the batch holds a window from a station whose vertical channel's cable the ice "
    "had cut: that trace is exactly zero, 0 / 0 gives NaN, BatchNorm's batch statistics carry "
    "it to every sample and the loss is NaN at step 90.",
)
def h193_cryoseism_peak_norm_zero_trace(ctx: Context) -> None:
    gen = seeded(19304)
    model = FrostQuakeNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    onset, peaks = 90, []
    _train(
        ctx,
        model,
        opt,
        _geophone(gen, 32, cut_at=onset),
        160,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: peaks.append(model.peak_norm.last_min_peak),
    )
    ls = ctx.losses
    ctx.check("BatchNorm layers in train mode", model.bn1.training and model.bn2.training)
    ctx.check("loss finite before step 90", _finite(ls[:onset]))
    ctx.check("loss fell before step 90", _fell(ls[:onset], ratio=0.7))
    ctx.check("smallest trace peak above 1e-2 before step 90", min(peaks[:onset]) > 1e-2)
    ctx.check("a trace peak exactly 0 at step 90", len(peaks) > onset and peaks[onset] == 0.0)
    ctx.check("first non-finite loss at step 90", _first_bad(ls) == onset)


# -- green flash: a uniform init bound used as a normal std in a deep tanh stack ------------------


class DeepTanh(nn.Module):
    """``depth`` tanh Linear layers in ``layers`` and a head; ``init_std(fan_in)`` draws W."""

    def __init__(self, d_in, width, depth, classes, init_std):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        self.head = nn.Linear(width, classes)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=init_std(layer.in_features))
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


@scenario(
    family="green_flash_sighting_deep_tanh_mlp",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A 24-layer tanh MLP (layers.0 ... layers.23, 64 wide, and a head) predicting whether a "
    "green flash will be seen at sunset (2 classes) from 10 standardised readings (horizon "
    "clarity, temperature inversion, humidity, refraction index gradient, ...), SGD with "
    "Nesterov momentum 0.9 at 3e-3, cross-entropy. The init helper draws "
    "normal(0, sqrt(6 / fan_in)): the Glorot/He uniform bound sqrt(6 / fan_in) used as a "
    "normal standard deviation, a weight gain of about 2.45 where tanh needs about 1. The "
    "stack is in the chaotic phase: activations stay bounded by tanh, but the backward "
    "signal grows by about 1.2x per layer, so layers.0's gradient is over a hundred times the "
    "last layer's at step 0 (and ten times a LeCun-initialised twin's) and tens of times "
    "through the run; the early layers' weights are thrown about and the loss stays near "
    "chance for the first hundred steps; finite.",
)
def h193_green_flash_uniform_bound_as_std(ctx: Context) -> None:
    gen = seeded(19305)
    model = DeepTanh(10, 64, 24, 2, init_std=lambda fan_in: math.sqrt(6 / fan_in))
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9, nesterov=True)
    ratio, act = [], []

    def fix_grads(step):
        first = model.layers[0].weight.grad.norm()
        last = model.layers[-1].weight.grad.norm()
        ratio.append(float(first / last))

    def watch(step, out, x, y):
        if step == 0:
            with torch.no_grad():
                h = x
                for layer in model.layers:
                    h = torch.tanh(layer(h))
                    act.append(float(h.pow(2).mean().sqrt()))

    _train(
        ctx,
        model,
        opt,
        _labelled(gen, 64, 10, 2, seed=5),
        150,
        F.cross_entropy,
        classifier=True,
        fix_grads=fix_grads,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("layers.0's gradient 100x the last layer's at step 0", ratio[0] > 100)
    ctx.check("layers.0's gradient 30x the last layer's over the run (median)", _median(ratio) > 30)
    ctx.check(
        "activations do not grow with depth at step 0 (last rms within 1.5x of the first)",
        act[-1] < 1.5 * act[0],
    )
    ctx.check("loss over steps 50-100 above 0.6 (chance 0.69)", _mean(ls[50:100]) > 0.6)
    seeded(19305)
    twin = DeepTanh(10, 64, 24, 2, init_std=lambda fan_in: 1 / math.sqrt(fan_in))
    x, y = next(_labelled(torch.Generator().manual_seed(19305), 64, 10, 2, seed=5))  # step 0's
    F.cross_entropy(twin(x), y).backward()
    ctx.check(
        "gradient at step 0 10x a LeCun-initialised twin's",
        ctx.grad_norms[0] > 10 * grad_norm(twin),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- canicross: the embedding group's rate lost its exponent ---------------------------------------


class PairPace(nn.Module):
    """Runner and dog embeddings (each LayerNorm'd) next to race readings, a GELU MLP, a pace."""

    def __init__(self, runners=40, dogs=60, d_in=6, dim=8, hidden=64):
        super().__init__()
        self.runner = nn.Embedding(runners, dim)
        self.dog = nn.Embedding(dogs, dim)
        self.runner_norm = nn.LayerNorm(dim)
        self.dog_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(2 * dim + d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, batch):
        r, d, x = batch
        h = torch.cat([self.runner_norm(self.runner(r)), self.dog_norm(self.dog(d)), x], -1)
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(h))))).squeeze(-1)


def _canicross(gen, batch, seed, runners=40, dogs=60):
    """Races of a runner harnessed to a dog: each runner and each dog has its own pace offset
    (the larger part of the signal); 6 standardised race readings (temperature, gradient,
    surface, distance, ...) add a smooth term."""
    g = torch.Generator().manual_seed(seed)
    r_off = torch.randn(runners, generator=g)
    d_off = 0.8 * torch.randn(dogs, generator=g)
    w = torch.randn(6, generator=g)
    while True:
        r = torch.randint(0, runners, (batch,), generator=gen)
        d = torch.randint(0, dogs, (batch,), generator=gen)
        x = torch.randn(batch, 6, generator=gen)
        y = r_off[r] + d_off[d] + 0.5 * torch.tanh(x @ w / 2)
        yield (r, d, x), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="canicross_runner_dog_pace_embedding_mlp",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("runner", "dog"),
    diverges=None,
    heldout=True,
    note="A canicross pace regressor: runner and dog embeddings (nn.Embedding, 8 dims, each "
    "followed by a LayerNorm) concatenated with 6 standardised race readings, a GELU MLP (fc1, "
    "fc2, head), MSE, RAdam at a base rate of 3e-3 with param groups built by module name from "
    "the config's lr_mult table ({runner_emb: 3, dog_emb: 3}). The modules had been renamed "
    "`runner` and `dog`, the table's keys no longer match, and the builder's default "
    "multiplier for an unlisted module is 0 (a freeze-by-default policy kept from a "
    "fine-tuning stage): both embeddings train at lr exactly 0 and never move while fc1, fc2 "
    "and the head do. The runner and dog offsets, most of the signal, are learnt only through "
    "the random frozen codes: the loss ends about ten times a twin's with the intended "
    "multiplier; finite, no blow-up.",
)
def h193_canicross_embedding_lr_mult_key(ctx: Context) -> None:
    def run(table, attach):
        gen = seeded(19306)
        model = PairPace()
        base = 3e-3
        groups = {}
        for name, p in model.named_parameters():
            module = name.split(".")[0]
            mult = table.get(module, 1.0 if module in ("fc1", "fc2", "head") else 0.0)
            groups.setdefault(mult, []).append(p)
        opt = torch.optim.RAdam([{"params": ps, "lr": base * k} for k, ps in groups.items()])
        emb = list(model.runner.parameters()) + list(model.dog.parameters())
        rest = [p for n, p in model.named_parameters() if not n.startswith(("runner.", "dog."))]
        ratios = {"emb": [], "rest": []}
        prev = []

        def before(step):
            prev[:] = _snapshot(emb + rest)

        def after(step):
            moved = [p.detach() - q for p, q in zip(emb + rest, prev, strict=True)]
            k = len(emb)
            ratios["emb"].append(_norm(moved[:k]) / _norm(prev[:k]))
            ratios["rest"].append(_norm(moved[k:]) / _norm(prev[k:]))

        losses = _train(
            ctx,
            model,
            opt,
            _canicross(gen, 64, seed=6),
            250,
            F.mse_loss,
            before=before,
            after=after,
            attach=attach,
        )
        return losses, ratios, opt

    _, ratios, opt = run({"runner_emb": 3.0, "dog_emb": 3.0}, True)
    twin, _, _ = run({"runner": 3.0, "dog": 3.0}, False)
    ls = ctx.losses
    ctx.check("a param group at lr exactly 0", min(g["lr"] for g in opt.param_groups) == 0.0)
    ctx.check("embeddings never moved (update / weight 0)", max(ratios["emb"]) == 0.0)
    ctx.check(
        "other layers' update / weight above 1e-4 per step (median)",
        _median(ratios["rest"]) > 1e-4,
    )
    ctx.check("loss over the last 20 steps 3x a twin's", _mean(ls[-20:]) > 3 * _mean(twin[-20:]))
    ctx.check("no step's loss above 3x the first", max(ls) < 3 * ls[0])
    ctx.check("loss finite throughout", _finite(ls))


# -- travertine: the linear-scaling rule taken to batch 1024 -------------------------------------


@scenario(
    family="travertine_terrace_deposition_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=64,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing the deposition rate on a travertine terrace "
    "rim (standardised) from 8 spring readings (CO2 degassing, flow depth, temperature, "
    "calcite saturation, ...), plain SGD, MSE. It trains at batch 32 and lr 0.05 for 60 "
    "steps; at step 60 the job is moved to 32 workers (batch 1024) and the launcher applies "
    "the linear-scaling rule, 0.05 * 1024 / 32 = 1.6, reached by a 30-step linear warm-up. The "
    "loss's sharpness is about 7: lr x sharpness is about 0.7 at step 60, passes the "
    "stability limit of 2 near step 64 (lr about 0.3, a fifth of the target) and keeps "
    "rising, the iterates oscillate, the sharpness itself climbs and the loss blows up near "
    "step 74, long before the warm-up ends.",
)
def h193_travertine_linear_scaling_rule(ctx: Context) -> None:
    gen = seeded(19307)
    model = ThreeLayer(8, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = next(_regression(torch.Generator().manual_seed(77), 1024, 8, seed=7))
    switch, target, product = 60, 0.05 * 1024 / 32, {}

    def batches():
        small, big = _regression(gen, 32, 8, seed=7), _regression(gen, 1024, 8, seed=7)
        for step in range(10**9):
            yield next(small if step < switch else big)

    def before(step):
        if step >= switch:
            ramp = min(1.0, (step - switch + 1) / 30)
            opt.param_groups[0]["lr"] = 0.05 + (target - 0.05) * ramp
        if step in (switch, 66):
            product[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _train(ctx, model, opt, batches(), 130, F.mse_loss, before=before)
    ls = ctx.losses
    late = [v if math.isfinite(v) else 1e30 for v in ls]
    ctx.check("lr x sharpness below 1 at step 60", product.get(switch, 9.0) < 1)
    ctx.check("lr x sharpness past 2 at step 66", product.get(66, 0.0) > 2)
    ctx.check("loss fell over the first 60 steps", _mean(ls[40:60]) < 0.8 * _mean(ls[:10]))
    ctx.check("loss finite before step 66", _finite(ls[:66]))
    ctx.check(
        "loss past 100x its steps 40-60 level by step 90",
        max(late[switch:90]) > 100 * _median(ls[40:switch]),
    )


# -- ice shove: a temperature annealed with its floor's config key misspelt ----------------------


class Temperature(nn.Module):
    """Divides the logits by a temperature the training loop sets each step."""

    def __init__(self, t=1.0):
        super().__init__()
        self.t = t

    def forward(self, logits):
        return logits / self.t


class ShoveNet(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temp = Temperature()
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.temp(self.head(F.silu(self.fc2(F.silu(self.fc1(x))))))


@scenario(
    family="ice_shove_severity_silu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("temp", "head"),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head, then a `temp` module dividing the logits by a "
    "temperature) grading the severity of an ice shove onto a lake shore (5 classes) from 12 "
    "standardised readings (wind fetch, ice thickness, thaw days, shore slope, ...), NAdam at "
    "2e-3, cross-entropy. The recipe sharpens the classifier by annealing the temperature by "
    "0.97 a step down to a floor `min_temperature: 0.1`; the loop reads the floor as "
    "cfg.get('min_temp', 0.0), the key does not match and the floor is 0, so the temperature "
    "falls to about 5e-4 by step 250. From about step 100 the float32 softmax rounds more and "
    "more rows' target probability to exactly 1.0 (and the rest to exactly 0): near 80% of "
    "rows by the end, and for about 40% every class's probability is exactly 0 or 1; the correct rows give no gradient and the misclassified ones a loss "
    "growing as 1/T (the mean loss climbs from 0.3 to a few); finite.",
)
def h193_ice_shove_temperature_floor_key(ctx: Context) -> None:
    gen = seeded(19308)
    model = ShoveNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    cfg = {"temperature": 1.0, "temp_decay": 0.97, "min_temperature": 0.1}
    collapsed, saturated = [], []

    def before(step):
        t = cfg["temperature"] * cfg["temp_decay"] ** step
        model.temp.t = max(cfg.get("min_temp", 0.0), t)

    def watch(step, out, x, y):
        p = torch.softmax(out.detach().float(), -1)
        collapsed.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))
        saturated.append(float(((p == 1.0) | (p == 0.0)).all(-1).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _labelled(gen, 64, 12, 5, seed=8),
        250,
        F.cross_entropy,
        classifier=True,
        before=before,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("temperature below 1e-3 at the end (no floor)", model.temp.t < 1e-3)
    ctx.check("under 5% of rows collapsed over the first 50 steps", max(collapsed[:50]) < 0.05)
    ctx.check(
        "over 60% of rows' target probability exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.6,
    )
    ctx.check(
        "over 25% of rows' softmax all exactly 0/1 over the last 20 steps",
        _mean(saturated[-20:]) > 0.25,
    )
    ctx.check("loss fell over the first 50 steps", _mean(ls[40:50]) < 0.5 * ls[0])
    ctx.check("loss finite throughout", _finite(ls))


# -- buzkashi: the epoch-summary step backwards the loss in percent ------------------------------


@scenario(
    family="buzkashi_match_phase_silu_classifier",
    optimizer="SGD(momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) naming the phase of a buzkashi match (6 classes: scrum, "
    "breakaway, carry, chase, scoring run, reset) from 14 standardised rider-tracking "
    "readings, SGD with momentum 0.9 at 0.05, cross-entropy. The trainer writes an epoch "
    "summary at step 100 and, on that step only, converts the loss to percent for the log "
    "before calling backward on the converted tensor: one gradient 100x the usual from a "
    "loss weight bug, not from the data (the batch is ordinary). The weights are thrown, the "
    "loss jumps to tens of times its level on the next steps and the run recovers within "
    "about a hundred steps; finite.",
)
def h193_buzkashi_percent_loss_backward(ctx: Context) -> None:
    gen = seeded(19309)
    model = ThreeLayer(14, hidden=64, out=6, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    onset = 100

    def backward(step, loss):
        return loss * 100 if step == onset else loss  # the summary's loss in percent

    _train(
        ctx,
        model,
        opt,
        _labelled(gen, 64, 14, 6, seed=9),
        220,
        F.cross_entropy,
        classifier=True,
        backward=backward,
    )
    ls, g = ctx.losses, ctx.grad_norms
    base = _median(ls[70:onset])
    ctx.check("gradient at step 100 50x the median before", g[onset] > 50 * _median(g[70:onset]))
    ctx.check("loss at step 100 within 2x the median before", ls[onset] < 2 * base)
    ctx.check(
        "loss within steps 101-105 3x the median before", max(ls[onset + 1 : onset + 6]) > 3 * base
    )
    ctx.check("loss over the last 20 steps within 1.5x of before", _mean(ls[-20:]) < 1.5 * base)
    ctx.check("loss finite throughout", _finite(ls))


# -- katana: a OneCycleLR peak typed 3e-1 for 3e-3 ----------------------------------------------


@scenario(
    family="katana_quench_hardness_relu_mlp",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head with nn.ReLU modules) regressing the edge "
    "hardness of a clay-quenched blade (standardised) from 10 standardised forging readings "
    "(clay thickness, quench temperature, water temperature, carbon content, ...), Adam under "
    "a OneCycleLR over 200 steps, MSE. The schedule's max_lr was typed 3e-1 for 3e-3: as the "
    "rate warms up past about 0.05 the updates throw fc2's biases and weights so far that "
    "act2's units (fed by non-negative ReLU outputs) stop firing on any input: about a third "
    "dead by step 20, nearly all by step 60, and they never come back. The output falls to a "
    "constant, the loss, down to about 0.2 at step 20, climbs back to the target's variance "
    "(about 0.9) and stays there while a twin with max_lr 3e-3 ends near 0.08; finite.",
)
def h193_katana_onecycle_max_lr_typo(ctx: Context) -> None:
    probe = next(_regression(torch.Generator().manual_seed(101), 512, 10, seed=10))[0]

    def run(max_lr, attach):
        gen = seeded(19310)
        model = ThreeLayer(10, hidden=64)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=200)
        dead = []

        def dead_now():
            with torch.no_grad():
                return dead_fraction(model.features(probe))

        start = dead_now()
        losses = _train(
            ctx,
            model,
            opt,
            _regression(gen, 64, 10, seed=10),
            200,
            F.mse_loss,
            sched=sched,
            after=lambda step: dead.append(dead_now()),
            attach=attach,
        )
        return losses, start, dead

    _, start, dead = run(3e-1, True)
    twin, _, twin_dead = run(3e-3, False)
    ls = ctx.losses
    ctx.check("act2 under 10% dead before training", start < 0.1)
    ctx.check("act2 over 90% dead from step 60 on", min(dead[60:]) > 0.9)
    ctx.check("a twin with max_lr 3e-3 keeps act2 under 20% dead", max(twin_dead) < 0.2)
    ctx.check("loss fell over the first 20 steps", _mean(ls[15:20]) < 0.5 * _mean(ls[:5]))
    ctx.check("loss over the last 20 steps 5x the twin's", _mean(ls[-20:]) > 5 * _mean(twin[-20:]))
    ctx.check("loss finite throughout", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="firenado_rotation_huber_gelu_mlp",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GELU MLP (fc1, fc2, head) regressing the rotation speed of a fire whirl "
    "(standardised) from 10 standardised readings (fire-line intensity, wind shear, terrain "
    "slope, plume height, ...), whose labels come from noisy video tracking: Student-t noise "
    "with 2 degrees of freedom, so a few labels per batch are off by several units. Huber "
    "loss (delta 1), AdamW at a OneCycleLR peak of 3e-3 with weight decay 1e-2, "
    "clip_grad_norm_ at 1.0. An ordinary run.",
)
def h193_firenado_huber_heavy_tailed_labels(ctx: Context) -> None:
    gen = seeded(19311)
    model = ThreeLayer(10, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    t_noise = torch.distributions.StudentT(2.0)
    worst = []

    def noisy(gen):
        for x, y in _regression(gen, 64, 10, seed=11, noise=0.0):
            e = 0.3 * t_noise.sample((len(y),))
            worst.append(float(e.abs().max()))
            yield x, y + e

    probe = next(_regression(torch.Generator().manual_seed(111), 512, 10, seed=11, noise=0.0))

    def probe_error():
        with torch.no_grad():
            return float((model(probe[0]) - probe[1]).abs().mean())

    before = probe_error()
    _train(ctx, model, opt, noisy(gen), 200, F.huber_loss, sched=sched, clip=1.0)
    ls = ctx.losses
    ctx.check("loss fell by half", _fell(ls, ratio=0.5))
    ctx.check("error on clean targets fell by half", probe_error() < 0.5 * before)
    ctx.check("labels heavy-tailed (some label off by more than 3)", max(worst) > 3)
    ctx.check("loss finite throughout", _finite(ls))


class CrackleNet(nn.Module):
    """Two Conv2d + BatchNorm2d + ReLU stages, max pooling, a Linear head."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 24, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(24)
        self.head = nn.Linear(24 * 9, classes)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.relu(self.bn2(self.conv2(h)))
        return self.head(F.adaptive_avg_pool2d(h, 3).flatten(1))


def _crackle(gen, batch):
    """12x12 scans of batik wax crackle: fine hairline, broad web, parallel (a folded cloth) or
    spotted, as oriented stripes and blobs under dye noise."""
    ii, jj = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        angle = math.pi * torch.rand(batch, 1, 1, generator=gen)
        phase = 6 * torch.rand(batch, 1, 1, generator=gen)
        u = ii * torch.cos(angle) + jj * torch.sin(angle)
        v = -ii * torch.sin(angle) + jj * torch.cos(angle)
        fine = torch.sin(2.2 * u + phase) * torch.sin(1.9 * v)
        web = torch.sin(0.8 * u + phase) + torch.sin(0.8 * v)
        parallel = torch.sin(1.4 * u + phase)
        spots = torch.sin(1.2 * u + phase) * torch.sin(1.2 * v + phase)
        kinds = torch.stack([fine, web, parallel, spots.sign() * spots.abs().sqrt()], 1)
        x = kinds[torch.arange(batch), y] + 0.8 * torch.randn(batch, 12, 12, generator=gen)
        yield x[:, None], y


@scenario(
    family="batik_wax_crackle_bn_cnn",
    optimizer="SGD(nesterov)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A 2-D CNN (conv1, bn1, conv2, bn2 with BatchNorm2d in train mode, a Linear "
    "head) naming the wax-crackle pattern of a batik cloth (4 kinds) from 12x12 scans under "
    "dye noise, SGD with Nesterov momentum 0.9 at 0.05 and weight decay 5e-4, "
    "CosineAnnealingLR over the run, cross-entropy with label smoothing 0.1. An ordinary run.",
)
def h193_batik_bn_cnn_cosine(ctx: Context) -> None:
    gen = seeded(19312)
    model = CrackleNet()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150)
    _train(
        ctx,
        model,
        opt,
        _crackle(gen, 32),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    ctx.check("BatchNorm layers in train mode", model.bn1.training and model.bn2.training)
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class PanTuner(nn.Module):
    """A SiLU MLP with a mean and a log-variance head."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _gaussian_nll(out, y):
    out = out.float()
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _pan_notes(gen, batch, seed):
    """A steel pan note's pitch error after a hammer pass (cents, standardised) from 10
    readings (hammer force, dome height, note area, ...); the spread grows with force."""
    base = _regression(gen, batch, 10, seed=seed, noise=0.0)
    while True:
        x, y = next(base)
        spread = 0.05 + 0.25 * torch.sigmoid(2 * x[:, 0])
        yield x, y + spread * torch.randn(batch, generator=gen)


@scenario(
    family="steel_pan_tuning_gaussian_nll_fp16",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A SiLU MLP with a mean and a log-variance head (fc1, fc2, mean, log_var) "
    "predicting a steel pan note's pitch error after a hammer pass and its spread from 10 "
    "standardised readings (hammer force, dome height, note area, ...), Gaussian NLL, Adamax "
    "at 1e-2, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 "
    "micro-batches, clip_grad_norm_ at 5 on the unscaled gradients, ReduceLROnPlateau. An "
    "ordinary run.",
)
def h193_steel_pan_gaussian_nll_fp16(ctx: Context) -> None:
    gen = seeded(19313)
    model = PanTuner()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _pan_notes(gen, 32, seed=13),
        200,
        _gaussian_nll,
        sched=sched,
        scaler=scaler,
        accumulate=2,
        clip=5.0,
    )
    ls = ctx.losses
    ctx.check("loss fell by 1 nat", _mean(ls[-10:]) < _mean(ls[:10]) - 1.0)
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check("scaler scale stayed at or above 1024", min(ctx.scales) >= 1024)
