"""Held-out set 416 (``h416_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a carillon bell-clapper 10-layer ReLU MLP initialised with std sqrt(4 / fan_in) for
sqrt(2 / fan_in) (gradients grow through depth), a reindeer-sled pull-time SiLU regressor whose
resume at step 120 reloads a stale checkpoint (a one-off loss spike it recovers from), an oud
maqam-mode GELU classifier with its temperature typed 0.01 for 1.0 (softmax saturates), a taiko
drum-stroke multi-exit classifier whose first block's param-group lr is typed 1e-9 for 1e-2 (a
frozen block), a lobster-pot haul-weight regressor fed one shard in grams for kilograms (one
corrupted batch), a bobsleigh push-start BCE net whose accumulation multiplies by the step count
for one step (a gradient burst), a geyser eruption-interval regressor whose peak normaliser lost
its clamp (0/0 on a dead-sensor row), a ropewalk hemp-twist tanh regressor with its hand-written
weight decay's sign flipped (a slow climb), a salt-pan evaporation tanh regressor with its warm-up peak typed
2.0 for 0.2 (past 2/sharpness) and a tatami weave-grade GELU classifier trained with nll_loss on
raw logits (the head's logits grow without bound).

Controls: a shakuhachi breath-tone multi-exit classifier (exit-loss weights ramped from the
early exits to the last, SGD momentum under StepLR), a forge-bellows draft fp16 SiLU Huber
regressor (GradScaler, AdamW with a no-decay bias group, OneCycleLR, accumulation, clipping) and
a cricket-bat knock-in ReLU Conv1d classifier (RAdam, label smoothing, ReduceLROnPlateau on a
held-out batch, clipping, noisy traces).
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
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """This file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step. Stops
    after a non-finite loss (once ``ctx.step`` has seen it)."""
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
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y)
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


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.0 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _flags(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.3 * torch.cos(2 * x[:, 1]) > 0.2).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _traces(gen, batch, classes, seed, length=40, channels=2, noise=0.3):
    """Knock traces: each class a decaying ring at its own frequency, plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.2 + 0.8 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase) * torch.exp(-t / 25)
        yield x + noise * torch.randn(batch, channels, length, generator=gen), y


class _MLP(nn.Module):
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


class _ExitBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return x + F.relu(self.fc(self.norm(x)))


class _MultiExit(nn.Module):
    """A stem, three residual blocks, and an early-exit classifier head after each block.
    Returns the list of exit logits (the last one is the final prediction)."""

    def __init__(self, d_in, dim, classes, blocks=3):
        super().__init__()
        self.stem = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(_ExitBlock(dim) for _ in range(blocks))
        self.exits = nn.ModuleList(nn.Linear(dim, classes) for _ in range(blocks))

    def forward(self, x):
        h = F.relu(self.stem(x))
        outs = []
        for block, exit_head in zip(self.blocks, self.exits, strict=True):
            h = block(h)
            outs.append(exit_head(h))
        return outs


def _exit_loss(weights):
    def loss_fn(outs, y):
        w = weights()
        return sum(wi * F.cross_entropy(o.float(), y) for wi, o in zip(w, outs, strict=True))

    return loss_fn


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((vi * vi).sum() for vi in v))
        v = [vi / norm for vi in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- faults ----------------------------------------------------------------------------------------


class _DeepReLU(nn.Module):
    def __init__(self, d_in, width, depth):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(width, 1)
        self.keep = False
        self.outs: list[torch.Tensor] = []

    def forward(self, x):
        self.outs = []
        for layer in self.layers:
            x = layer(x)
            if self.keep:
                x.retain_grad()
                self.outs.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model, x, y):
    model.keep = True
    model.zero_grad(set_to_none=True)
    F.mse_loss(model(x), y).backward()
    ratio = float(model.outs[0].grad.norm() / model.outs[-1].grad.norm().clamp_min(1e-30))
    model.keep = False
    model.zero_grad(set_to_none=True)
    return ratio


def _carillon_net(std_of_fan_in):
    model = _DeepReLU(12, 32, 10)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.normal_(0.0, std_of_fan_in(layer.in_features))
            layer.bias.zero_()
    return model


@scenario(
    "carillon_bell_clapper_deep_relu_mlp",
    "rmsprop",
    "exploding_gradients",
    where=("layers.0",),
    heldout=True,
    note="A 10-layer ReLU MLP predicting clapper strike timing from 12 bell readings; the init "
    "helper was written std = sqrt(4 / fan_in) for He's sqrt(2 / fan_in), each layer scales the "
    "backward signal by about sqrt(2), so dL/d(layers.0 output) is far above dL/d(layers.9 "
    "output) at the start and through the run, against a ratio near 1 at He init. RMSprop, "
    "clipped at 1.0.",
)
def h416_carillon_clapper_init_gain(ctx):
    gen = seeded(41601)
    probe = next(_readings(torch.Generator().manual_seed(5), 128, 12, 416011))
    ref = _carillon_net(lambda n: math.sqrt(2.0 / n))
    ref_ratio = _depth_ratio(ref, *probe)
    model = _carillon_net(lambda n: math.sqrt(4.0 / n))
    start_ratio = _depth_ratio(model, *probe)
    ratios: list[float] = []

    def after(step):
        if step % 20 == 19:
            ratios.append(_depth_ratio(model, *probe))

    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    n = _loop(
        ctx, model, opt, _readings(gen, 64, 12, 416011), 140, F.mse_loss, clip=1.0, after=after
    )
    ctx.check("dL/d(layers.0) over 10x dL/d(layers.9) at the start", start_ratio > 10)
    ctx.check("the ratio's median stays over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at He init sqrt(2 / fan_in)", ref_ratio < 5)
    ctx.check("ran all 140 steps", n == 140)


@scenario(
    "reindeer_sled_pull_time_silu_regressor",
    "adamw",
    "loss_spike",
    heldout=True,
    onset=120,
    note="A SiLU regressor of sled pull times; the job is resumed at step 120 and the loader "
    "picks the checkpoint by modification time, which a copy had touched, so it reloads the "
    "weights saved at step 5 (optimizer state kept); the loss jumps over 3x the 20 steps "
    "before, then the run recovers. AdamW.",
)
def h416_reindeer_sled_stale_resume(ctx):
    gen = seeded(41602)
    model = _MLP(10, 48, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    saved: dict = {}

    def after(step):
        if step == 5:
            saved.update({k: v.clone() for k, v in model.state_dict().items()})

    def before(step):
        if step == 120:
            model.load_state_dict(saved)

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 416021), 220, F.mse_loss, before=before, after=after
    )
    ls = ctx.losses
    pre = _median(ls[100:120])
    ctx.check("loss at resume over 3x the 20 steps before", max(ls[120:125]) > 3 * pre)
    ctx.check(
        "recovers: last 20 steps under 1.5x the pre-resume median", _mean(ls[-20:]) < 1.5 * pre
    )
    ctx.check("finite throughout", _finite(ls))


@scenario(
    "oud_maqam_mode_temperature_classifier",
    "nadam",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="A GELU classifier of maqam modes from 16 pitch-histogram features; the logits are "
    "divided by a temperature typed 0.01 for 1.0, so the float32 softmax rounds the target "
    "probability to exactly 1.0 for over a fifth of the rows, which at temperature 1.0 on the same "
    "logits it does not. NAdam.",
)
def h416_oud_maqam_temperature(ctx):
    gen = seeded(41603)
    model = _MLP(16, 48, out=8, act=nn.GELU)
    temperature = 0.01
    fracs: list[float] = []
    plain: list[float] = []
    batches = _grades(gen, 64, 16, 8, 416031, 0.5)
    last: dict = {}

    def alter(step, x, y):
        last["x"], last["y"] = x, y
        return x, y

    def after(step):
        with torch.no_grad():
            raw = model(last["x"])
        fracs.append(collapsed_fraction(raw / temperature, last["y"]))
        plain.append(collapsed_fraction(raw, last["y"]))

    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    _loop(
        ctx,
        model,
        opt,
        batches,
        250,
        lambda out, y: F.cross_entropy(out / temperature, y),
        classifier=True,
        alter=alter,
        after=after,
    )
    ctx.check(
        "over 20% of rows' target probability exactly 1.0 (last 30)", _mean(fracs[-30:]) > 0.2
    )
    ctx.check("under 5% at temperature 1.0 on the same logits", _mean(plain[-30:]) < 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "taiko_drum_stroke_multi_exit_classifier",
    "adagrad",
    "update_ratio_out_of_range",
    where=("blocks.0", "blocks.0.fc"),
    heldout=True,
    note="A multi-exit classifier of taiko strokes (an early-exit head after each of three "
    "residual blocks, the loss a weighted sum of the exits' cross-entropies); blocks.0's param "
    "group has its lr typed 1e-9 for 1e-2, so the block receives gradients but its weights "
    "barely move while the exits train. Adagrad.",
)
def h416_taiko_multi_exit_frozen_block(ctx):
    gen = seeded(41604)
    model = _MultiExit(14, 40, 6)
    first = list(model.blocks[0].parameters())
    ids = {id(p) for p in first}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adagrad([{"params": first, "lr": 1e-9}, {"params": rest, "lr": 1e-2}])
    w0 = model.blocks[0].fc.weight.detach().clone()
    e0 = model.exits[2].weight.detach().clone()
    gnorms: list[float] = []

    def inspect(step):
        gnorms.append(float(model.blocks[0].fc.weight.grad.norm()))

    loss_fn = _exit_loss(lambda: (0.3, 0.3, 1.0))
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 416041, 1.3),
        150,
        loss_fn,
        classifier=True,
        inspect=inspect,
    )
    ctx.check(
        "blocks.0.fc moves under 1e-5 of its norm",
        _rel_change(w0, model.blocks[0].fc.weight) < 1e-5,
    )
    ctx.check("while receiving gradients", _median(gnorms) > 1e-4)
    ctx.check("exits.2 moves over 5%", _rel_change(e0, model.exits[2].weight) > 0.05)
    ctx.check("the loss falls", _fell(ctx.losses, ratio=0.9))


@scenario(
    "lobster_pot_haul_weight_silu_regressor",
    "sgd_nesterov",
    "data_outlier",
    heldout=True,
    onset=100,
    note="A SiLU regressor of lobster-pot haul weight; one boat's shard at step 100 logs the "
    "catch in grams for kilograms (targets x1000), the loss jumps over 50x and the gradient "
    "over 20x, clipping holds and the run recovers. SGD Nesterov, clipped at 1.0.",
)
def h416_lobster_pot_grams_shard(ctx):
    gen = seeded(41605)
    model = _MLP(9, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 100 else (x, y)

    _loop(ctx, model, opt, _readings(gen, 64, 9, 416051), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 100 over 50x the median before", ls[100] > 50 * _median(ls[80:100]))
    ctx.check("gradient at step 100 over 20x the median before", gs[100] > 20 * _median(gs[80:100]))
    ctx.check(
        "recovers: last 20 under 2x the pre-shard median", _mean(ls[-20:]) < 2 * _median(ls[80:100])
    )
    ctx.check("finite throughout", _finite(ls))


@scenario(
    "bobsleigh_push_start_relu_bce_net",
    "sgd_momentum",
    "gradient_spike",
    heldout=True,
    onset=110,
    note="A ReLU BCE net predicting a clean push start; accumulation over 8 micro-batches, and "
    "the branch for the last step before a sled change multiplies each micro-loss by 8 instead "
    "of dividing at step 110, a 64x gradient on a clean batch whose logged loss is ordinary; "
    "clipped, the run recovers. SGD momentum.",
)
def h416_bobsleigh_accum_multiply(ctx):
    gen = seeded(41606)
    model = _MLP(12, 48)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def backprop(step, loss):
        return loss * 64.0 if step == 110 else loss

    _loop(
        ctx,
        model,
        opt,
        _flags(gen, 32, 12, 416061),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
        accumulate=8,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 110 over 30x the median before", gs[110] > 30 * _median(gs[90:110]))
    ctx.check("logged loss at step 110 ordinary (under 2x)", ls[110] < 2 * _median(ls[90:110]))
    ctx.check(
        "recovers: last 20 under 1.5x the pre-burst median",
        _mean(ls[-20:]) < 1.5 * _median(ls[90:110]),
    )
    ctx.check("finite throughout", _finite(ls))


class _PeakNorm(nn.Module):
    """Scales each sensor window by its peak; the clamp_min(1e-6) was dropped in a cleanup."""

    def forward(self, x):
        return x / x.abs().amax(dim=-1, keepdim=True)


class _GeyserNet(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.peak_norm = _PeakNorm()
        self.body = _MLP(d_in, hidden, act=nn.SiLU)

    def forward(self, x):
        return self.body(self.peak_norm(x))


@scenario(
    "geyser_eruption_interval_peak_norm_regressor",
    "adam",
    "nonfinite",
    where=("peak_norm",),
    diverges=80,
    heldout=True,
    onset=80,
    note="A geyser eruption-interval regressor whose input windows are scaled by their peak; the "
    "clamp on the peak was dropped, and the shard at step 80 has a dead sensor whose window is "
    "all zeros, so peak_norm computes 0/0 and the loss is NaN at step 80. Adam.",
)
def h416_geyser_peak_norm_zero(ctx):
    gen = seeded(41607)
    model = _GeyserNet(16, 48)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen: dict = {}

    def alter(step, x, y):
        if step == 80:
            x = x.clone()
            x[3] = 0.0
            seen["peak"] = float(x.abs().amax(-1).min())
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 16, 416071), 150, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("finite before step 80", len(ls) > 80 and _finite(ls[:80]))
    ctx.check("the loss is NaN at step 80", len(ls) > 80 and math.isnan(ls[80]))
    ctx.check("a window's peak is exactly 0", seen.get("peak", 1.0) == 0.0)
    ctx.check("it had trained before", _fell(ls[:80]))


@scenario(
    "ropewalk_hemp_twist_tanh_regressor",
    "adamax",
    "loss_divergence",
    heldout=True,
    note="A tanh regressor of hemp-rope twist; the hand-written decoupled weight decay reads "
    "p.mul_(1 + lr * wd) for 1 - lr * wd, the weights grow slowly, and the loss falls then "
    "climbs to over 2x its lowest 20-step mean with no 10-step mean jumping 2.5x. Adamax.",
)
def h416_ropewalk_decay_sign(ctx):
    gen = seeded(41608)
    model = _MLP(10, 48, act=nn.Tanh)
    lr, wd = 2e-3, 4.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    n0 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    _loop(ctx, model, opt, _readings(gen, 64, 10, 416081), 300, F.mse_loss, after=after)
    ls = ctx.losses
    n1 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    w20 = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 10)]
    w10 = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    ctx.check("weight norm over 2x", n1 > 2 * n0)
    ctx.check("final 20 over 2x the lowest 20-step mean", _mean(ls[-20:]) > 2 * min(w20))
    ctx.check(
        "no 10-step mean over 2.5x the one before",
        max(b / a for a, b in zip(w10, w10[1:], strict=False)) < 2.5,
    )
    ctx.check("finite throughout", _finite(ls))


@scenario(
    "salt_pan_evaporation_tanh_regressor",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="A tanh regressor of salt-pan evaporation; a linear warm-up over 200 steps from 1/100 "
    "of the peak lr, the peak typed 2.0 for 0.2; lr x the power-iteration sharpness is under 2 "
    "at step 0 and passes 2 during the warm-up, the loss then blows up while 0.2 x the "
    "sharpness stays under 2 (sharpness measured every 5 steps while the loss is under its start). "
    "Plain SGD.",
)
def h416_salt_pan_lr_typo(ctx):
    gen = seeded(41609)
    model = _MLP(8, 32, act=nn.Tanh)
    batches = _readings(gen, 128, 8, 416091)
    x0, y0 = next(batches)
    peak = 2.0
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=200)
    products: list[tuple[float, float]] = []

    def before(step):
        if step % 5 == 0 and (not ctx.losses or ctx.losses[-1] < ctx.losses[0]):
            sharp = _sharpness(model, F.mse_loss, x0, y0)
            if math.isfinite(sharp):
                products.append((opt.param_groups[0]["lr"] * sharp, 0.2 * sharp))

    _loop(ctx, model, opt, batches, 150, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at step 0", products[0][0] < 2)
    ctx.check("lr x sharpness past 2 before the blow-up", max(p[0] for p in products) > 2)
    ctx.check("0.2 x sharpness under 2 before the blow-up", max(p[1] for p in products) < 2)
    ctx.check("ran over 60 steps", len(ls) > 60)
    ctx.check("the loss blows up over 20x its start", not _finite(ls) or max(ls) > 20 * ls[0])


@scenario(
    "tatami_weave_grade_gelu_classifier",
    "radam",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="A GELU classifier of tatami weave grades; a refactor dropped the log_softmax before "
    "F.nll_loss, which on raw logits rewards growing the target logit without bound: max "
    "|logit| grows over 20x and the 'loss' goes below -10. RAdam.",
)
def h416_tatami_nll_raw_logits(ctx):
    gen = seeded(41610)
    model = _MLP(12, 48, out=5, act=nn.GELU)
    batches = _grades(gen, 64, 12, 5, 416101)
    probe = next(_grades(torch.Generator().manual_seed(3), 128, 12, 5, 416101))
    with torch.no_grad():
        m0 = float(model(probe[0]).abs().max())
    maxes: list[float] = []

    def after(step):
        with torch.no_grad():
            maxes.append(float(model(probe[0]).abs().max()))

    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    _loop(ctx, model, opt, batches, 200, F.nll_loss, classifier=True, after=after)
    ctx.check("max |logit| over 20x its start", maxes[-1] > 20 * m0)
    ctx.check("still growing over the last 50 steps", maxes[-1] > 1.2 * maxes[-50])
    ctx.check("the 'loss' below -10", ctx.losses[-1] < -10)


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "shakuhachi_breath_tone_multi_exit_classifier",
    "sgd_momentum",
    "healthy",
    heldout=True,
    note="A multi-exit classifier of shakuhachi breath tones (an early-exit head after each of "
    "three residual blocks); the exit-loss weights are ramped over training from the early "
    "exits to the last, SGD momentum under StepLR. Control.",
)
def h416_shakuhachi_multi_exit_control(ctx):
    gen = seeded(41611)
    model = _MultiExit(14, 40, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.3)
    steps = 200
    state = {"step": 0}

    def before(step):
        state["step"] = step

    def weights():
        t = state["step"] / steps
        return (1.0 - 0.7 * t, 0.7, 0.3 + 0.7 * t)

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 416111, 1.3),
        steps,
        _exit_loss(weights),
        classifier=True,
        before=before,
        sched=sched,
    )
    probe = next(_grades(torch.Generator().manual_seed(9), 256, 14, 6, 416111, 1.3))
    with torch.no_grad():
        acc = float((model(probe[0])[-1].argmax(-1) == probe[1]).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("the last exit's held-out accuracy over 0.7", acc > 0.7)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "bellows_forge_draft_fp16_huber_regressor",
    "adamw",
    "healthy",
    heldout=True,
    note="A forge-bellows draft SiLU Huber regressor under fp16 autocast with a GradScaler, "
    "AdamW with a no-decay bias group, OneCycleLR, accumulation over 2, clipping. Control.",
)
def h416_bellows_fp16_control(ctx):
    gen = seeded(41612)
    model = _MLP(10, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 416121, noise=0.1),
        steps,
        lambda out, y: F.huber_loss(out, y, delta=0.5),
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


class _KnockConv(nn.Module):
    def __init__(self, channels, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 24, 7, padding=3)
        self.conv2 = nn.Conv1d(24, 24, 5, padding=2)
        self.head = nn.Linear(48, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.head(torch.cat([x.mean(-1), x.amax(-1)], -1))


@scenario(
    "cricket_bat_knock_in_conv1d_classifier",
    "radam",
    "healthy",
    heldout=True,
    note="A ReLU Conv1d classifier of cricket-bat knock-in stages from noisy mallet traces; "
    "RAdam, label smoothing 0.1, ReduceLROnPlateau on a held-out batch, clipping. Control.",
)
def h416_cricket_bat_conv_control(ctx):
    gen = seeded(41613)
    model = _KnockConv(2, 5)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_traces(torch.Generator().manual_seed(7), 128, 5, 416131))

    def plateau():
        with torch.no_grad():
            return float(F.cross_entropy(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 416131),
        160,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        plateau=plateau,
        clip=1.0,
    )
    with torch.no_grad():
        acc = float((model(held[0]).argmax(-1) == held[1]).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("held-out accuracy over 0.7", acc > 0.7)
    ctx.check("finite throughout", _finite(ctx.losses))
