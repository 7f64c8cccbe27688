"""Held-out set 188 (``h188_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a lime-kiln calcination ReLU MLP whose hand-written
decoupled weight decay multiplies by (1 + lr * wd), a tuba mouthpiece-pressure filterbank net
squaring its filter outputs in float16 under autocast, a quarry blast-vibration regressor resumed
from a checkpoint and fed one contractor batch in grams, an archery clout BCE net whose epoch-tail
micro-batch is summed instead of averaged, a forge-weld 12-layer tanh MLP drawn with std 1 for
1/sqrt(fan_in), a javelin release regressor whose trunk warm-up is given in samples, a
seismograph tremor classifier with a one-pass variance under a square root, a disc-golf putt
regressor with a warm-up peak typed 10x, a netball pass-type cosine classifier with its scale typed
1e3 for 1e1, a harness-racing gait-break ReLU classifier at RMSprop 0.1, and three controls (a
frazil-ice GRU forecaster under CosineAnnealingWarmRestarts, a candlemaker dip LSTM classifier
under OneCycleLR, a steeplechase Gaussian NLL regressor under fp16 autocast + GradScaler).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import io
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _ratio(params, before) -> float:
    """Largest relative update |dp| / |p| over the parameters."""
    return max(
        float((p.detach() - b).norm() / b.norm().clamp_min(1e-12))
        for p, b in zip(params, before, strict=True)
    )


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
    micro_loss=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    on_grads=None,
    after=None,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``alter(step, x, y)`` changes a batch, ``micro_loss(step, i, loss, out, y)`` returns the
    micro-batch's loss to backpropagate (default ``loss / accumulate``), ``watch(step, out, x,
    y)`` records after the forward pass, ``on_grads(step)`` after the backward pass,
    ``after(step)`` after the optimizer step; stops after
    logging a NaN loss."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for i in range(accumulate):
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
            if micro_loss is not None:
                total = micro_loss(step, i, loss, out.float(), y)
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
        if on_grads is not None:
            on_grads(step)
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
        if math.isnan(shown):
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
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


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

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


# -- lime kiln: decoupled weight decay written p *= (1 + lr * wd) -------------------------------


@scenario(
    family="lime_kiln_calcination_relu_mlp",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) predicting the share of limestone calcined in a "
    "shaft lime kiln from 10 standardised burning-zone temperature, draught, fuel-rate and "
    "stone-size readings, ASGD at 5e-3, MSE. Weight decay was ported from AdamW as a "
    "hand-written decoupled step after optimizer.step(), written p.mul_(1 + lr * wd) for "
    "p.mul_(1 - lr * wd) with wd 1.0: every step inflates every weight by 0.5%, the gradient "
    "pulls back less and less, and after its low point near step 120 the loss climbs "
    "steadily, about 3x by step 250; no blow-up within the run, finite.",
)
def h188_lime_kiln_decay_sign(ctx: Context) -> None:
    gen = seeded(18801)
    model = Stack(10, hidden=64)
    lr, wd = 5e-3, 1.0
    opt = torch.optim.ASGD(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)
            norms.append(float(torch.sqrt(sum((p * p).sum() for p in model.parameters()))))

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=1), 250, F.mse_loss, after=after)
    ls = ctx.losses
    smooth = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9)]
    low = min(range(len(smooth)), key=lambda i: smooth[i])
    ctx.check("weight norm grew 2x over the run", norms[-1] > 2 * norms[0])
    ctx.check("10-step mean loss lowest before step 150", low < 150)
    ctx.check("loss over the last 20 steps 2.5x its low point", _mean(ls[-20:]) > 2.5 * smooth[low])
    ctx.check(
        "a climb, not a spike: no step above 3x the last 20 steps' mean",
        max(ls[low:]) < 3 * _mean(ls[-20:]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- tuba: filter outputs squared in float16 under autocast ---------------------------------------


class FilterEnergy(nn.Module):
    """Log band energy of the learned filterbank's outputs: log1p(y ** 2)."""

    def forward(self, y):
        return torch.log1p(y * y)


class TubaNet(nn.Module):
    def __init__(self, frame=256, bands=32, hidden=64):
        super().__init__()
        self.frame = nn.Linear(frame, bands)
        self.energy = FilterEnergy()
        self.fc = nn.Linear(bands, hidden)
        self.act = nn.GELU()
        self.head = nn.Linear(hidden, 1)
        self.last_peak = 0.0

    def forward(self, x):
        y = self.frame(x)
        e = self.energy(y)
        self.last_peak = float(y.detach().float().abs().max())
        self.last_energy_finite = bool(torch.isfinite(e).all())
        return self.head(self.act(self.fc(e))).squeeze(-1)


TUBA_FORTISSIMO = 80


def _mouthpiece_frames(gen, batch, frame=256):
    """Frames of mouthpiece pressure in pascals (a few partials of a played note); the target is
    the player's breath-support score from the band's energy profile. Practice-room takes
    (amplitude 10-60 Pa) first; from step 80 the concert takes, fortissimo up to 3 kPa."""
    t = torch.arange(frame).float() / 8000.0
    step = 0
    while True:
        f0 = 40.0 + 80.0 * torch.rand(batch, 1, generator=gen)
        amp = 10.0 + 50.0 * torch.rand(batch, 1, generator=gen)
        if step >= TUBA_FORTISSIMO:
            loud = torch.rand(batch, 1, generator=gen) < 0.3
            amp = torch.where(loud, 1500.0 + 1500.0 * torch.rand(batch, 1, generator=gen), amp)
        x = sum(
            amp / k * torch.sin(2 * math.pi * k * f0 * t + k) for k in (1, 2, 3, 4)
        ) + 2.0 * torch.randn(batch, frame, generator=gen)
        y = torch.log(amp.squeeze(1)) - 4.0 + 0.2 * (f0.squeeze(1) - 80.0) / 40.0
        step += 1
        yield x, y


@scenario(
    family="tuba_breath_pressure_fp16_mlp",
    optimizer="Adam",
    cause="amp_overflow",
    where=("energy",),
    diverges=TUBA_FORTISSIMO,
    heldout=True,
    onset=TUBA_FORTISSIMO,
    note="A net scoring a tuba player's breath support from 256-sample frames of mouthpiece "
    "pressure in pascals: a learned filterbank (Linear 256 -> 32), a hand-written `energy` "
    "module log1p(y * y), a GELU layer and a head, Adam at 1e-3, MSE, fp16 autocast with a "
    "torch.amp.GradScaler. Under autocast the filterbank's output is float16, and so is the "
    "square: the practice-room takes (10-60 Pa, filter outputs under 256) fit, but the "
    "concert takes reached at step 80 play fortissimo at 1.5-3 kPa, the filter outputs pass "
    "256 and y * y passes float16's 65504: inf energy, inf - inf in the next layer, the loss "
    "is NaN at step 80. The inputs themselves are real recordings (the scaler's usual "
    "skipped first steps while its scale settles from 65536 to 4096 are before that).",
)
def h188_tuba_fp16_band_energy(ctx: Context) -> None:
    gen = seeded(18802)
    model = TubaNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    peaks, finite_e = [], []

    def watch(step, out, x, y):
        peaks.append(model.last_peak)
        finite_e.append(model.last_energy_finite)

    _train(
        ctx, model, opt, _mouthpiece_frames(gen, 32), 150, F.mse_loss, scaler=scaler, watch=watch
    )
    at = TUBA_FORTISSIMO
    ls = ctx.losses
    ctx.check("filter outputs under 256 before the concert takes", max(peaks[:at]) < 256)
    ctx.check("filter outputs past 256 (square past 65504) at step 80", peaks[at] > 256)
    ctx.check(
        "band energy finite before step 80, non-finite at step 80",
        all(finite_e[:at]) and not finite_e[at],
    )
    ctx.check("loss finite and falling before step 80", _fell(ls[:at], ratio=0.9))
    ctx.check("first non-finite loss at step 80", _first_bad(ls) == at)


# -- quarry: a resumed job meets one contractor batch with charge mass in grams ------------------

QUARRY_GRAMS_BATCH = 60
QUARRY_CKPT_STEP = 100


@scenario(
    family="quarry_blast_vibration_huber_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=QUARRY_GRAMS_BATCH,
    note="A SiLU MLP (nn.SiLU modules) predicting the peak particle velocity a quarry blast "
    "causes at a nearby house from 14 standardised charge-per-delay, distance, burden, "
    "stemming and geology readings, Adamax at 2e-3, Huber loss, clip_grad_norm_ at 1.0. The "
    "job was pre-empted: a first job trained 100 steps and saved model and optimizer "
    "state_dicts to a checkpoint, and the monitored job resumes from it (torch.load, "
    "load_state_dict for both). The resumed job reads a new shard in which one batch (its "
    "step 60) comes from a contractor's export with the charge mass in grams, unstandardised "
    "(about 2e4 where the rest are z-scores): that one batch gives a loss and a gradient about 1e5 "
    "times the usual; clipping bounds the step and the loss is back at its level soon after; "
    "finite throughout.",
)
def h188_quarry_resumed_grams_batch(ctx: Context) -> None:
    gen = seeded(18803)
    model = Stack(14, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    data = _readings(gen, 64, 14, seed=3)
    first_job = []
    for _ in range(QUARRY_CKPT_STEP):
        x, y = next(data)
        loss = F.huber_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        first_job.append(float(loss.detach()))
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "step": QUARRY_CKPT_STEP}, buf
    )
    del model, opt
    buf.seek(0)
    ckpt = torch.load(buf)
    model = Stack(14, hidden=64, act=nn.SiLU)
    model.load_state_dict(ckpt["model"])
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    opt.load_state_dict(ckpt["opt"])
    peak = []

    def alter(step, x, y):
        if step == QUARRY_GRAMS_BATCH:
            x = x.clone()
            x[:, 0] = 1000.0 * (20.0 + 4.0 * x[:, 0])
        peak.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, data, 160, F.huber_loss, alter=alter, clip=1.0)
    at = QUARRY_GRAMS_BATCH
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "resumed at the checkpoint's loss (first 10 steps within 1.5x of the last 10 saved)",
        _mean(ls[:10]) < 1.5 * _mean(first_job[-10:]),
    )
    ctx.check("input 1000x the usual at the bad batch", peak[at] > 1000 * _median(peak[:at]))
    ctx.check(
        "gradient 100x the preceding median at the bad batch", gn[at] > 100 * _median(gn[:at])
    )
    ctx.check(
        "loss 20x the preceding median at the bad batch", ls[at] > 20 * _median(ls[at - 20 : at])
    )
    ctx.check(
        "loss back under 2x the pre-onset level by the end",
        _mean(ls[-10:]) < 2 * _mean(ls[at - 10 : at]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- archery clout: the epoch-tail micro-batch summed, not averaged ------------------------------

CLOUT_EPOCH_TAIL = 120


@scenario(
    family="archery_clout_hit_bce_mlp",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CLOUT_EPOCH_TAIL,
    note="A tanh MLP (nn.Tanh modules) predicting whether a clout-shooting arrow lands inside "
    "the scoring ring from 12 standardised draw-weight, elevation, wind and arrow-mass "
    "readings, BCE with logits, SGD Nesterov (momentum 0.9) at 5e-2, gradient accumulation "
    "over 4 micro-batches of 64. The loop's branch for the epoch's tail (reached once, at "
    "step 120) was written separately and calls the loss with reduction='sum' and no / 4: that "
    "one micro-batch's gradient is 256x what it should be and the step's gradient over 100x "
    "the usual. The step throws the weights off, the loss jumps, and the run recovers over "
    "the next steps; the data are ordinary.",
)
def h188_archery_tail_sum_reduction(ctx: Context) -> None:
    gen = seeded(18804)
    model = Stack(12, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(12, generator=g)

    def shots():
        while True:
            x = torch.randn(64, 12, generator=gen)
            logit = 1.5 * (x @ w) / math.sqrt(12) + 0.8 * torch.sin(x[:, 0] * x[:, 1])
            y = (torch.rand(64, generator=gen) < torch.sigmoid(2 * logit)).float()
            yield x, y

    def micro_loss(step, i, loss, out, y):
        if step == CLOUT_EPOCH_TAIL and i == 3:
            return F.binary_cross_entropy_with_logits(out, y, reduction="sum")
        return loss / 4

    _train(
        ctx,
        model,
        opt,
        shots(),
        220,
        F.binary_cross_entropy_with_logits,
        micro_loss=micro_loss,
        accumulate=4,
    )
    at = CLOUT_EPOCH_TAIL
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient 30x the preceding median at step 120", gn[at] > 30 * _median(gn[:at]))
    ctx.check(
        "no step from 20 to 119 above 5x the median",
        max(gn[20:at]) < 5 * _median(gn[:at]),
    )
    ctx.check(
        "loss jumps 1.5x the preceding median after the step",
        max(ls[at + 1 : at + 4]) > 1.5 * _median(ls[at - 20 : at]),
    )
    ctx.check(
        "loss back under 1.2x the pre-onset level by the end",
        _mean(ls[-10:]) < 1.2 * _mean(ls[at - 10 : at]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- forge weld: a deep tanh MLP drawn with std 1 for 1 / sqrt(fan_in) ----------------------------


class Dense(nn.Module):
    """A hand-written tanh layer; its init draws the weight with std `scale`."""

    def __init__(self, d_in, d_out, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) * scale)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        return torch.tanh(x @ self.weight.T + self.bias)


class WeldNet(nn.Module):
    def __init__(self, d_in=8, width=32, depth=12, std=None):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            Dense(a, b, std if std is not None else 1.0 / math.sqrt(a))
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="forge_weld_heat_deep_tanh_mlp",
    optimizer="SGD(momentum)",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP of hand-written Dense layers predicting the strength of a "
    "blacksmith's forge weld from 8 standardised heat colour, flux, hammer-blow and scale "
    "readings, SGD momentum 0.9 at 1e-3, MSE. Dense's init was meant to draw the weight "
    "with std 1/sqrt(fan_in) but the config's `init_std: 1.0` overrides it: with fan_in 32 "
    "the gain is about 5.7, the tanh stack is in its chaotic phase, and the gradient grows "
    "several hundred times from the top layer back to layers.0 at every step of the run (a "
    "correctly initialised copy's shrinks); the loss stays "
    "high and noisy, finite.",
)
def h188_forge_weld_init_std_one(ctx: Context) -> None:
    gen = seeded(18805)
    model = WeldNet(std=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    growth = []

    def on_grads(step):
        first = model.layers[0].weight.grad.norm()
        last = model.layers[-1].weight.grad.norm()
        growth.append(float(first / last.clamp_min(1e-30)))

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=5), 200, F.mse_loss, on_grads=on_grads)
    ctx.check("layers.0's gradient 30x layers.11's at the start", growth[0] > 30)
    ctx.check("still 30x (median) over the last 50 steps", _median(growth[-50:]) > 30)
    ref = WeldNet()
    x, y = next(_readings(torch.Generator().manual_seed(1), 64, 8, seed=5))
    F.mse_loss(ref(x), y).backward()
    ref_growth = float(ref.layers[0].weight.grad.norm() / ref.layers[-1].weight.grad.norm())
    ctx.check("a copy initialised with 1/sqrt(fan_in): ratio under 2", ref_growth < 2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- javelin: the trunk's warm-up length given in samples, not steps ------------------------------


@scenario(
    family="javelin_release_speed_silu_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) predicting a javelin throw's distance from 12 "
    "standardised run-up speed, release angle, release height and block-leg readings, NAdam "
    "with two param groups (trunk fc1/fc2 and head, both at 2e-3), MSE, and a LambdaLR "
    "warm-up with one lambda per group. The head's warm-up is 20 steps; the trunk's was "
    "taken from the pre-training config, where it is given in samples (2,000,000) rather "
    "than steps (2,000): the trunk's rate stays under 1e-4 of its nominal value for the whole "
    "run, its relative updates are about 1e-6 a step while the head's are about 3e-2; the "
    "loss falls only as far as the head can take it, finite.",
)
def h188_javelin_warmup_in_samples(ctx: Context) -> None:
    gen = seeded(18806)
    model = Stack(12, hidden=64, act=nn.SiLU)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    head = list(model.head.parameters())
    opt = torch.optim.NAdam([{"params": trunk, "lr": 2e-3}, {"params": head, "lr": 2e-3}], lr=2e-3)
    warm = [2_000_000, 20]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s, w=w: min(1.0, (s + 1) / w) for w in warm]
    )
    trunk_ratio, head_ratio = [], []
    snap = {}

    def before(step):
        snap["trunk"], snap["head"] = _snapshot(trunk), _snapshot(head)

    def after(step):
        trunk_ratio.append(_ratio(trunk, snap["trunk"]))
        head_ratio.append(_ratio(head, snap["head"]))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=6),
        200,
        F.mse_loss,
        before=before,
        after=after,
        sched=sched,
    )
    ctx.check("trunk's relative update under 1e-5 every step", max(trunk_ratio) < 1e-5)
    ctx.check(
        "head's relative update above 1e-4 (median) after its warm-up",
        _median(head_ratio[20:]) > 1e-4,
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- seismograph: a one-pass variance under a square root meets a flat vertical channel ----------


class Spread(nn.Module):
    """Per-channel standard deviation of a window, one-pass: sqrt(E[x^2] - E[x]^2)."""

    def forward(self, x):
        return torch.sqrt((x * x).mean(-1) - x.mean(-1) ** 2)


class TremorNet(nn.Module):
    def __init__(self, channels=3, hidden=64, classes=4):
        super().__init__()
        self.spread = Spread()
        self.fc1 = nn.Linear(3 * channels, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        spread = self.spread(x)
        peak = (x - x.mean(-1, keepdim=True)).abs().amax(-1)
        h = torch.cat([torch.log(spread + 1e-3), torch.log(peak + 1e-3), x.mean(-1)], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h)))))


SEISMO_QUIET_WINDOW = 90


def _tremor_windows(gen, batch, length=32):
    """Three-axis accelerometer windows (m/s^2, the vertical axis carries 1 g) labelled with one
    of 4 kinds: volcanic tremor, tectonic, quarry blast, wind noise. At step 90 the batch holds a
    quiet night window from a station whose vertical channel sits flat at 9.81 (the motion is
    below the digitiser's step)."""
    t = torch.arange(length).float()
    freqs = torch.tensor([0.15, 0.6, 1.2, 2.5])
    amps = torch.tensor([0.05, 0.3, 0.8, 0.02])
    step = 0
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 3, 1, generator=gen)
        a = amps[y][:, None, None] * (0.5 + torch.rand(batch, 3, 1, generator=gen))
        x = a * torch.sin(freqs[y][:, None, None] * t + phase)
        x = x + 0.01 * torch.randn(batch, 3, length, generator=gen)
        x[:, 2] += 9.81
        if step == SEISMO_QUIET_WINDOW:
            x[0, 2] = 9.81
        step += 1
        yield x, y


@scenario(
    family="seismograph_tremor_spread_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("spread",),
    diverges=SEISMO_QUIET_WINDOW,
    heldout=True,
    onset=SEISMO_QUIET_WINDOW,
    note="A ReLU MLP naming the kind of ground motion (volcanic tremor, tectonic, quarry "
    "blast, wind noise) in 32-sample three-axis accelerometer windows from the log spread, "
    "log peak and mean of each channel, Adam at 2e-3, cross-entropy. The spread is a "
    "hand-written `spread` module computing the standard deviation in one pass, "
    "sqrt(mean(x^2) - mean(x)^2), with no clamp. At step 90 the batch holds a quiet night "
    "window from a station whose vertical channel sits flat at 9.81 m/s^2 (1 g, the motion "
    "below the digitiser's step): in float32 mean(x^2) - mean(x)^2 comes out -7.6e-6, its "
    "square root is NaN and so is the loss at step 90.",
)
def h188_seismograph_one_pass_variance(ctx: Context) -> None:
    gen = seeded(18807)
    model = TremorNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    least = []

    def watch(step, out, x, y):
        least.append(float(((x * x).mean(-1) - x.mean(-1) ** 2).min()))

    _train(
        ctx,
        model,
        opt,
        _tremor_windows(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    at = SEISMO_QUIET_WINDOW
    ls = ctx.losses
    ctx.check("one-pass variance positive before step 90", min(least[:at]) > 0)
    ctx.check("one-pass variance negative at step 90", least[at] < 0)
    ctx.check("loss finite and falling before step 90", _fell(ls[:at], ratio=0.7))
    ctx.check("first non-finite loss at step 90", _first_bad(ls) == at)


# -- disc golf: a warm-up peak typed 10x ----------------------------------------------------------


@scenario(
    family="disc_golf_putt_distance_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (nn.Tanh modules) predicting how far past the basket a disc-golf putt "
    "ends up from 8 standardised release speed, spin, nose angle, wind and distance "
    "readings, plain SGD, MSE, a linear warm-up over 60 steps to a peak learning rate read "
    "from the config as 2.0 (typed for 0.2). Once the warm-up takes lr past 2 / sharpness of "
    "the loss (the top Hessian eigenvalue, measured by power iteration every 5 steps), about step 15 at lr 0.53, the loss "
    "oscillates along the sharp direction, grows from step 33 and is inf by step 48, NaN at "
    "51.",
)
def h188_disc_golf_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(18808)
    model = Stack(8, hidden=32, act=nn.Tanh)
    peak_lr, warm = 2.0, 60
    opt = torch.optim.SGD(model.parameters(), lr=peak_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    data = _readings(gen, 128, 8, seed=8)
    probe = next(data)
    past = []

    def before(step):
        if step % 5 == 0:
            lr = opt.param_groups[0]["lr"]
            lam = _sharpness(model, F.mse_loss, *probe)
            if math.isfinite(lam):
                past.append((step, lr * lam))

    _train(ctx, model, opt, data, 120, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    crossed = next((s for s, v in past if v > 2), None)
    ctx.check("lr x sharpness under 2 at step 0", past[0][1] < 2)
    ctx.check("lr x sharpness past 2 during the warm-up", crossed is not None and crossed < warm)
    ctx.check(
        "loss 100x its pre-crossing minimum (or non-finite) after crossing",
        crossed is not None
        and (not _finite(ls) or max(ls[crossed:]) > 100 * min(ls[: crossed + 1])),
    )


# -- netball: a cosine classifier's scale typed 1e3 for 1e1 --------------------------------------


class CosineHead(nn.Module):
    """Logits s * cos(feature, class weight)."""

    def __init__(self, d, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class PassNet(nn.Module):
    def __init__(self, d_in=10, hidden=64, classes=6, scale=10.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="netball_pass_type_cosine_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP with a cosine head naming a netball pass (chest, bounce, shoulder, lob, "
    "overhead, underarm) from 10 standardised wrist-sensor readings, RAdam at 2e-3, "
    "cross-entropy. The head's logits are scale * cos(feature, class weight) with scale "
    "read from the config as 1e3 (typed for 1e1): a cosine gap of 0.02 is already 20 nats, "
    "so from the first steps the float32 softmax gives most rows' top class exactly 1.0 and "
    "every other class exactly 0, and a misclassified row costs hundreds of nats; finite.",
)
def h188_netball_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(18809)
    model = PassNet(scale=1e3)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    frac = []
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 10, 6, seed=9, noise=0.8),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: frac.append(collapsed_fraction(o.detach(), y)),
    )
    with torch.no_grad():
        x, y = next(_kinds(torch.Generator().manual_seed(5), 512, 10, 6, seed=9, noise=0.8))
        logits = model(x)
        top = float((torch.softmax(logits, -1).max(-1).values == 1.0).float().mean())
        wrong = logits.argmax(-1) != y
        wrong_loss = float(F.cross_entropy(logits[wrong], y[wrong])) if wrong.any() else 0.0
    ctx.check("60% of rows' target probability exactly 1.0 over the run", _mean(frac) > 0.6)
    ctx.check("still 60% over the last 20 steps", _mean(frac[-20:]) > 0.6)
    ctx.check("70% of held-out rows' top probability exactly 1.0 at the end", top > 0.7)
    ctx.check("a misclassified held-out row costs above 10 nats at the end", wrong_loss > 10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- harness racing: RMSprop at the SGD recipe's 0.1 kills the ReLUs -----------------------------


def _hoof_readings(gen, batch, classes, seed, noise=0.25, d_in=16):
    """Min-max scaled sensor readings in [0, 1] around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = (protos[y] + noise * torch.randn(batch, d_in, generator=gen)).clamp(0, 1)
        yield x, y


@scenario(
    family="harness_racing_gait_break_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules, 32 wide) naming the stride phase in which a "
    "standardbred trotter breaks gait (8 classes) from 16 min-max scaled hoof-sensor, speed "
    "and sulky-load readings in [0, 1], cross-entropy. The optimizer was switched from SGD "
    "to RMSprop and kept the SGD recipe's learning rate, 0.1: RMSprop's first steps move "
    "each weight by about 10 * lr (the loss jumps into the hundreds for a few steps), fc1's "
    "weights and biases are thrown negative, and from step 5 31 of fc1's 32 ReLUs are zero on every input and stay so; no gradient reaches "
    "them, and the loss sits near 1.7 for the rest of the run where the same net at 1e-3 "
    "gets under 0.3; finite.",
)
def h188_harness_racing_rmsprop_lr(ctx: Context) -> None:
    gen = seeded(18810)
    model = Stack(16, hidden=32, out=8)
    opt = torch.optim.RMSprop(model.parameters(), lr=0.1)
    dead1 = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead1.append(dead_fraction(model.act1(model.fc1(x))))

    _train(
        ctx,
        model,
        opt,
        _hoof_readings(gen, 64, 8, seed=10),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ref_gen = seeded(18811)
    ref = Stack(16, hidden=32, out=8)
    ref_opt = torch.optim.RMSprop(ref.parameters(), lr=1e-3)
    ref_data = _hoof_readings(ref_gen, 64, 8, seed=10)
    ref_losses = []
    for _ in range(200):
        x, y = next(ref_data)
        loss = F.cross_entropy(ref(x), y)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_losses.append(float(loss.detach()))
    ls = ctx.losses
    ctx.check("under 25% of fc1's units dead at step 0", dead1[0] < 0.25)
    ctx.check("90% of fc1's units dead at every step of the last 100", min(dead1[-100:]) > 0.9)
    ctx.check(
        "loss flat: last 50 steps within 15% of steps 100-150",
        abs(_mean(ls[-50:]) - _mean(ls[100:150])) < 0.15 * _mean(ls[100:150]),
    )
    ctx.check(
        "loss over the last 20 steps 3x the same net's at lr 1e-3",
        _mean(ls[-20:]) > 3 * _mean(ref_losses[-20:]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


class FrazilGRU(nn.Module):
    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(self.norm(out[:, -1])).squeeze(-1)


def _river_nights(gen, batch, length=24):
    """Hourly water temperature, air temperature, wind and flow on a winter river; the target is
    the slush (frazil) concentration the next hour, driven by the supercooling over the night."""
    t = torch.arange(length).float()
    while True:
        air = -8.0 * torch.rand(batch, 1, generator=gen) + 3.0 * torch.sin(
            t / 4.0 + 6.28 * torch.rand(batch, 1, generator=gen)
        )
        wind = torch.rand(batch, length, generator=gen)
        flow = 0.5 + torch.rand(batch, 1, generator=gen).expand(batch, length)
        water = 0.05 * torch.cumsum(air * (0.5 + wind) / flow, 1) / length
        x = torch.stack([water, air / 8.0, wind, flow], -1)
        x = x + 0.03 * torch.randn(x.shape, generator=gen)
        y = torch.relu(-water[:, -1] * 4.0) + 0.3 * torch.relu(-air[:, -1] / 8.0)
        yield x, y + 0.02 * torch.randn(batch, generator=gen)


@scenario(
    family="frazil_ice_slush_gru_forecaster",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. An nn.GRU (32 units) with a LayerNorm and a head forecasting next hour's "
    "frazil-ice slush concentration on a winter river from 24 hours of water and air "
    "temperature, wind and flow, AdamW at 3e-3 with a weight-decay 1e-2 group for the "
    "matrices and a weight-decay-0 group for biases and the LayerNorm, "
    "CosineAnnealingWarmRestarts (T_0 40, T_mult 2), clip_grad_norm_ at 1.0, MSE on noisy "
    "targets. An ordinary run.",
)
def h188_frazil_gru_warm_restarts(ctx: Context) -> None:
    gen = seeded(18811)
    model = FrazilGRU()
    named = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if p.dim() >= 2], "weight_decay": 1e-2},
            {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=40, T_mult=2)
    _train(ctx, model, opt, _river_nights(gen, 32), 200, F.mse_loss, clip=1.0, sched=sched)
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class DipLSTM(nn.Module):
    def __init__(self, d_in=3, hidden=32, classes=4):
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def _candle_dips(gen, batch, length=20, classes=4, seed=12):
    """Per dip: wax temperature, dwell seconds and the cooling gap, standardised; the class is
    the finished taper's grade (smooth, ringed, sagging, cracked), from how the dips evolve."""
    g = torch.Generator().manual_seed(seed)
    trend = torch.randn(classes, 3, generator=g)
    t = torch.linspace(0, 1, length)[:, None]
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = trend[y][:, None, :] * t + 0.5 * torch.randn(batch, length, 3, generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.05
        y = torch.where(flip, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


@scenario(
    family="candlemaker_dip_grade_lstm_classifier",
    optimizer="SGD(nesterov)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. An nn.LSTM (32 units) and a head grading a hand-dipped taper (4 grades) "
    "from 20 dips' wax temperature, dwell and cooling gap, SGD Nesterov (momentum 0.9) under "
    "OneCycleLR (max 0.1), gradient accumulation over 2 micro-batches, clip_grad_norm_ at "
    "1.0, cross-entropy with label smoothing 0.1 on labels with 5% grading mistakes. An "
    "ordinary run.",
)
def h188_candlemaker_lstm_onecycle(ctx: Context) -> None:
    gen = seeded(18812)
    model = DipLSTM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        _candle_dips(gen, 32),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ctx.check("loss fell by a third", _fell(ctx.losses, ratio=0.67))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class SteepleNet(nn.Module):
    """A SiLU trunk with a mean head and a log-variance head."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _gaussian_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-8.0, 8.0)
    return F.gaussian_nll_loss(mean, y, log_var.exp())


def _water_jumps(gen, batch, d_in=10, seed=13):
    """Standardised approach speed, take-off distance, fatigue and lap readings; the target is
    the landing distance past the water jump's barrier, noisier for tired runners."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        mu = torch.tanh(x @ w / math.sqrt(d_in)) + 0.3 * x[:, 1]
        sigma = 0.1 + 0.3 * torch.sigmoid(2 * x[:, 2])
        yield x, mu + sigma * torch.randn(batch, generator=gen)


@scenario(
    family="steeplechase_water_jump_nll_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A SiLU MLP with a mean and a log-variance head predicting how far past "
    "the steeplechase water-jump barrier a runner lands (noisier when tired), Gaussian "
    "NLL (F.gaussian_nll_loss, log-variance clamped), Adagrad at 3e-2, fp16 autocast with a "
    "torch.amp.GradScaler, ReduceLROnPlateau on the loss. An ordinary mixed-precision run.",
)
def h188_steeplechase_fp16_gaussian_nll(ctx: Context) -> None:
    gen = seeded(18813)
    model = SteepleNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    scaler = torch.amp.GradScaler("cpu")
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(ctx, model, opt, _water_jumps(gen, 64), 200, _gaussian_nll, scaler=scaler, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell by 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("loss finite throughout", _finite(ls))
