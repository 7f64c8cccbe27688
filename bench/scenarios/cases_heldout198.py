"""Held-out set 198 (``h198_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a lion-dance drum-cue attention net whose no-decay filter
caught the attention weights, a coachbuilder leaf-spring sag tanh regressor resumed after a
preemption with its learning rate scaled twice, a surfcasting sinker-distance SiLU MLP whose
hand-written loss scaling switched on one step before its unscale, a sherpa carry-time
Gaussian-NLL net with a weight-decay sign bug, a rope-bridge sway deep tanh MLP initialised with
std 1, a santoor spectrum classifier normalising by the total with no epsilon, a woodpecker
drumming fp16 sum-pool net whose clips grow 64-fold, an ice-rink resurfacing ReLU MLP fed
temperatures in Fahrenheit, a fishmonger catch-grade mixture of experts whose router's warm-up
lambda uses floor division, a kendama trick classifier dividing by a contrastive temperature,
and three controls (a dinghy tack-speed regressor at the edge of stability, a vineyard frost-fan
fp16 SiLU MLP, a lumberjack log-roll GRU tagger).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
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


def _moved(params, start) -> float:
    return max(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    stop_on_nan=True,
    scale_loss=None,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` after the
    optimizer step; ``scale_loss(step, loss)`` returns what is backpropagated; ``accumulate``
    micro-batches a step; stops after logging a NaN loss unless told not to."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if after is not None:
            after(step, "grad")
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
            after(step, "step")
        opt.zero_grad(set_to_none=True)
        if stop_on_nan and math.isnan(shown):
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


# -- lion dance: the no-decay filter catches the attention weights --------------------------------


class CueAttention(nn.Module):
    """Single-head self-attention by hand: logits q.k / sqrt(d), softmax over the beats."""

    def __init__(self, dim=32):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.dim = dim
        self.last_logits = None

    def forward(self, h):
        logits = self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(self.dim)
        self.last_logits = logits.detach()
        return self.o(torch.softmax(logits, -1) @ self.v(h))


class CueNet(nn.Module):
    def __init__(self, d_in=9, dim=32, classes=7):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = CueAttention(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.norm(self.embed(x))
        return self.head((h + self.attn(h)).max(1).values)


def _drum_cues(gen, batch, length=12):
    """Twelve beats of a lion-dance drum (one of 7 patterns one-hot, the loudness, a cymbal
    crash flag on exactly one beat); the label is the pattern played on the crash, the cue the
    lion follows."""
    while True:
        pattern = torch.randint(0, 7, (batch, length), generator=gen)
        crash = torch.randint(0, length, (batch, 1), generator=gen)
        flag = torch.zeros(batch, length).scatter(1, crash, 1.0)
        loud = torch.rand(batch, length, generator=gen)
        x = torch.cat([F.one_hot(pattern, 7).float(), loud[..., None], flag[..., None]], -1)
        yield x + 0.05 * torch.randn(x.shape, generator=gen), pattern.gather(1, crash).squeeze(1)


@scenario(
    family="lion_dance_drum_cue_attention_net",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A lion-dance troupe's cue reader naming the drum pattern (7 classes) played on the "
    "cymbal crash among 12 beats: a Linear embedding and LayerNorm, one hand-written "
    "self-attention module (q/k/v/o Linears, logits q.k/sqrt(d), no query/key normalisation), "
    "a residual, max pooling and a head, cross-entropy, AdamW at 2e-2. The weight-decay filter meant to exempt biases and norms (`p.ndim < 2 or 'norm' in "
    "name`) was written `'n' in name`, which also matches every `attn.*` parameter: the "
    "attention weights get no decay, q and k grow to point every beat at the crash ever more "
    "sharply, and the largest attention logit grows from below 1 at step 0 to past 100, still "
    "climbing in the second half of the run; the attention is one-hot and the loss finite.",
)
def h198_lion_dance_no_decay_filter(ctx: Context) -> None:
    gen = seeded(19801)
    model = CueNet()
    named = list(model.named_parameters())
    no_decay = [p for n, p in named if p.ndim < 2 or "n" in n]
    decay = [p for n, p in named if not (p.ndim < 2 or "n" in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-2,
    )
    attn_ids = {id(p) for p in model.attn.parameters()}
    top, peak = [], []

    def watch(step, out, x, y):
        lg = model.attn.last_logits
        top.append(float(lg.abs().amax(dim=(1, 2)).mean()))
        peak.append(float(torch.softmax(lg, -1).amax(-1).mean()))

    _train(
        ctx,
        model,
        opt,
        _drum_cues(gen, 64),
        250,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "every attention parameter in the no-decay group",
        attn_ids <= {id(p) for p in opt.param_groups[1]["params"]},
    )
    ctx.check("largest attention logit grew 100x from step 0", _mean(top[-10:]) > 100 * top[0])
    ctx.check("largest attention logit above 100 at the end", _mean(top[-10:]) > 100)
    ctx.check(
        "largest attention logit still growing (last 10 steps 1.5x steps 100-110)",
        _mean(top[-10:]) > 1.5 * _mean(top[100:110]),
    )
    ctx.check("attention near one-hot (top weight > 0.9) at the end", _mean(peak[-10:]) > 0.9)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))


# -- coachbuilder: a resumed run whose learning rate is scaled by the world size twice ---------


@scenario(
    family="coachbuilder_leaf_spring_sag_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=100,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing a carriage leaf spring's sag under load "
    "(standardised) from 10 readings (leaf count, thickness, camber, temper, ...), plain SGD, "
    "MSE. The launcher scales the base rate 0.01 by the world size (8) to 0.08 and the "
    "checkpoint stores that scaled rate. At step 100 the job is preempted and the trainer "
    "resumes in-process from its step-90 checkpoint (model and optimizer state loaded in "
    "place); the resume path reads the stored rate as the base and multiplies by the world "
    "size again, so the rate is 0.64. lr x sharpness goes from about 0.6 to about 4.7, past 2, the "
    "stability limit, and the loss blows up within a few dozen steps of the resume.",
)
def h198_coachbuilder_resume_lr_rescaled(ctx: Context) -> None:
    gen = seeded(19802)
    model = Stack(10, hidden=64, act=nn.Tanh)
    world = 8
    base = 0.01
    opt = torch.optim.SGD(model.parameters(), lr=base * world)
    probe = next(_readings(torch.Generator().manual_seed(66), 256, 10, seed=6))
    ckpt = {}
    sharp, lrs = {}, {}

    def before(step):
        if step == 90:
            ckpt["model"] = copy.deepcopy(model.state_dict())
            ckpt["opt"] = copy.deepcopy(opt.state_dict())
            ckpt["lr"] = opt.param_groups[0]["lr"]
        if step == 99:
            sharp[99] = _sharpness(model, F.mse_loss, *probe)
            lrs[99] = opt.param_groups[0]["lr"]
        if step == 100:  # preempted: resume from the step-90 checkpoint
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            for group in opt.param_groups:
                group["lr"] = ckpt["lr"] * world
            sharp[100] = _sharpness(model, F.mse_loss, *probe)
            lrs[100] = opt.param_groups[0]["lr"]

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=6), 180, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("lr x sharpness below 1 before the resume", lrs[99] * sharp[99] < 1)
    ctx.check("lr x sharpness past 2 at the resume", lrs[100] * sharp[100] > 2)
    ctx.check("rate after the resume is 8x the stored one", abs(lrs[100] - 8 * lrs[99]) < 1e-9)
    ctx.check("loss fell before the resume", _fell(ls[:100], ratio=0.5))
    late = [v if math.isfinite(v) else 1e30 for v in ls[100:]]
    ctx.check(
        "loss past 20x its pre-resume level after step 100", max(late) > 20 * _mean(ls[80:100])
    )


# -- surfcasting: hand-written loss scaling switched on one step before its unscale --------------


def _casts(gen, batch, seed):
    """Twelve standardised readings of a surfcast (rod length, sinker weight, line diameter,
    wind, release angle, ...) and the cast's distance, standardised; a bumpy target that keeps
    the loss falling for a few hundred steps."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 6, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        z = x @ w / math.sqrt(12)
        y = torch.sin(2 * z).sum(-1) / 2 + 0.3 * (z[:, 0] * z[:, 1])
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="surfcasting_sinker_distance_silu_mlp",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing a surfcast's distance from 12 standardised "
    "readings, Adam at 2e-3, MSE, in float32 with a hand-written static loss scale ported from "
    "an fp16 recipe, switched on at step 60 (after an fp32 warm-up). The loop multiplies the "
    "loss by 2**14 when `scaling_on(step)` holds and divides the gradients when "
    "`scaling_on(step - 1)` held (the flag read before the switch): on step 60 the gradients "
    "come through 16384x, one giant gradient that fills Adam's second moment; with beta2 "
    "0.999 it takes hundreds of steps to drain: once the step-60 momentum has drained (a "
    "small rise of the loss) the updates are about 50 times smaller than before and the loss, "
    "still falling at step 60, stalls for the rest of the run; finite throughout.",
)
def h198_surfcasting_loss_scale_off_by_one(ctx: Context) -> None:
    gen = seeded(19803)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scale, switch = 2.0**16, 60

    def scaling_on(step):
        return step >= switch

    def scale_loss(step, loss):
        return loss * scale if scaling_on(step) else loss

    params = list(model.parameters())
    moves, prev = [], {}

    def after(step, when):
        if when == "grad" and scaling_on(step - 1):
            for p in params:
                p.grad.div_(scale)
        if when == "grad":
            prev["w"] = _snapshot(params)
        if when == "step":
            moves.append(
                sum(float((p.detach() - s).norm()) for p, s in zip(params, prev["w"], strict=True))
            )

    _train(
        ctx,
        model,
        opt,
        _casts(gen, 128, seed=3),
        260,
        F.mse_loss,
        after=after,
        scale_loss=scale_loss,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 60 is 1000x the median before", g[60] > 1000 * _median(g[20:60]))
    ctx.check(
        "gradients after step 60 back to their usual size", _median(g[61:]) < 10 * _median(g[20:60])
    )
    ctx.check(
        "updates after step 120 are 1/30 of those before step 60",
        _mean(moves[120:]) < _mean(moves[30:60]) / 30,
    )
    ctx.check("loss still falling at step 60", _mean(ls[50:60]) < 0.9 * _mean(ls[20:30]))
    ctx.check(
        "loss stalled after step 80 (last 20 within 5% of steps 80-100)",
        abs(_mean(ls[-20:]) - _mean(ls[80:100])) < 0.05 * _mean(ls[80:100]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- sherpa: a hand-written weight decay with the wrong sign --------------------------------------


class CarryNet(nn.Module):
    """A mean and a log-variance head over a tanh trunk."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="sherpa_load_carry_time_nll_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head with a mean and a softplus variance) predicting a porter's "
    "carry time between two lodges (standardised) from 8 readings (load, altitude gain, "
    "trail state, ...), Adagrad at 5e-2, Gaussian NLL. Weight decay is applied by hand after "
    "each step as `p.mul_(1 - lr * wd)`, but the refactor moved the minus sign into wd "
    "(wd = -0.15, read from a config where negative meant 'decoupled'): every step multiplies "
    "the weights by 1.0075. Adagrad's shrinking steps cannot keep up, the tanh units "
    "saturate and the predictions drift away from the data: after an early fall the loss "
    "climbs slowly and steadily from about step 150 to the end of the 360 steps (more than one "
    "nat above its best), finite, no single event.",
)
def h198_sherpa_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(19804)
    model = CarryNet()
    lr, wd = 5e-2, -0.15
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    norms = []

    def after(step, when):
        if when == "step":
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 - lr * wd)
            norms.append(
                float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
            )

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=7, noise=0.2), 360, _nll, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _mean(ls[max(0, i - 5) : i + 5]))
    windows = [_mean(ls[i : i + 50]) for i in range(160, 360, 50)]
    ctx.check("weights grew 5x", norms[-1] > 5 * norms[0])
    ctx.check("the best 10-step mean comes before step 120", low < 120)
    ctx.check(
        "each 50-step mean above the last from step 160",
        all(b > a for a, b in zip(windows, windows[1:], strict=False)),
    )
    ctx.check(
        "loss at the end well above its best", _mean(ls[-10:]) > _mean(ls[low - 5 : low + 5]) + 1.0
    )
    tens = [_mean(ls[i : i + 10]) for i in range(0, 360, 10)]
    ctx.check(
        "no 10-step mean 0.5 above the one before",
        all(b < a + 0.5 for a, b in zip(tens, tens[1:], strict=False)),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- rope bridge: a deep tanh MLP initialised with std 1 --------------------------------------------


class SwayNet(nn.Module):
    """An input layer, six tanh hidden layers in ``trunk`` and a head."""

    def __init__(self, d_in=10, hidden=64, depth=6, init_std=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.trunk = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.head = nn.Linear(hidden, 1)
        for layer in self.trunk:
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for layer in self.trunk:
            h = torch.tanh(layer(h))
        return self.head(h).squeeze(-1)


@scenario(
    family="rope_bridge_sway_deep_tanh_mlp",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("trunk.0", "trunk.1", "trunk.2", "trunk.3", "trunk.4", "trunk.5"),
    diverges=None,
    heldout=True,
    note="A deep tanh MLP (inp, six 64-unit tanh layers trunk.0..trunk.5, head) regressing the "
    "peak sway of a Himalayan rope bridge (standardised) from 10 standardised readings (span, "
    "load, wind, cable sag, ...), SGD with Nesterov momentum 0.9 at 2e-3, MSE, no clipping. "
    "The trunk is initialised with nn.init.normal_(std=init_std) where init_std=1.0 was the "
    "config's value for an embedding table, not 1/sqrt(64): each layer's gain is about 8, the "
    "network is deep in the chaotic regime and the gradient grows back through depth, "
    "trunk.0's weight gradient about thirty times trunk.5's and twenty times what the "
    "intended init gives; the saturated trunk still fits the target slowly, finite.",
)
def h198_rope_bridge_init_std_one(ctx: Context) -> None:
    gen = seeded(19805)
    model = SwayNet()
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9, nesterov=True)
    ratio, first0 = [], []

    def after(step, when):
        if when == "grad":
            first0.append(float(model.trunk[0].weight.grad.norm()))
            first = float(model.trunk[0].weight.grad.norm())
            last = float(model.trunk[-1].weight.grad.norm())
            ratio.append(first / max(last, 1e-30))

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=8), 150, F.mse_loss, after=after)
    ctx.check("trunk.0 gradient 30x trunk.5's at step 0", ratio[0] > 30)
    ctx.check("trunk.0 gradient 30x trunk.5's over the run (median)", _median(ratio) > 30)
    ctx.check(
        "trunk.0 gradient 10x the intended init's at step 0", first0[0] > 10 * _healthy_sway_grad()
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


def _healthy_sway_grad() -> float:
    """The same net and first batch with the intended init std 1/sqrt(64): its gradient norm."""
    state = torch.random.get_rng_state()
    gen = torch.Generator().manual_seed(19805)
    torch.manual_seed(19805)
    model = SwayNet(init_std=1 / 8)
    x, y = next(_readings(gen, 64, 10, seed=8))
    F.mse_loss(model(x), y).backward()
    torch.random.set_rng_state(state)
    return float(model.trunk[0].weight.grad.norm())


# -- santoor: a spectrum normalised by its total with no epsilon -----------------------------------


class TotalNorm(nn.Module):
    """Divides each spectrum by its total energy: x / x.sum(-1), no epsilon."""

    def forward(self, x):
        total = x.sum(-1, keepdim=True)
        self.last_min_total = float(total.detach().min())
        return x / total


class SantoorNet(nn.Module):
    def __init__(self, bins=32, hidden=64, classes=6):
        super().__init__()
        self.norm = TotalNorm()
        self.fc1 = nn.Linear(bins, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.act1(self.fc1(self.norm(x) * 32))
        return self.head(self.act2(self.fc2(h)))


def _santoor_spectra(gen, batch, seed, silent_at=None, bins=32, classes=6):
    """32-bin magnitude spectra of a santoor's struck string courses (six courses, each with
    its own partials); from ``silent_at`` on, one clip of the batch is a silent gap the clip
    cutter kept (all bins exactly zero after the noise gate)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(classes, bins, generator=g) ** 3
    step = 0
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        loud = 0.5 + torch.rand(batch, 1, generator=gen)
        x = loud * (protos[y] + 0.15 * torch.rand(batch, bins, generator=gen))
        if silent_at is not None and step == silent_at:
            x[3] = 0.0
        step += 1
        yield x, y


@scenario(
    family="santoor_course_spectrum_gelu_classifier",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=90,
    onset=90,
    heldout=True,
    note="A GELU MLP naming which of six string courses of a santoor was struck from a 32-bin "
    "magnitude spectrum, NAdam at 2e-3, cross-entropy. A `norm` module divides each spectrum "
    "by its total energy to remove loudness, with no epsilon and no clamp. At step 90 the clip "
    "cutter hands in a silent gap (every bin exactly zero after the noise gate): 0/0 gives "
    "NaN for that row, the logits and the loss are NaN at step 90, and the run stops.",
)
def h198_santoor_total_norm_zero(ctx: Context) -> None:
    gen = seeded(19806)
    model = SantoorNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    totals = []
    _train(
        ctx,
        model,
        opt,
        _santoor_spectra(gen, 64, seed=9, silent_at=90),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: totals.append(model.norm.last_min_total),
    )
    ls = ctx.losses
    ctx.check("loss finite before step 90", _finite(ls[:90]))
    ctx.check("loss fell before step 90", _fell(ls[:90], ratio=0.5))
    ctx.check("first non-finite loss at step 90", _first_bad(ls) == 90)
    ctx.check("smallest spectrum total positive before step 90", min(totals[:90]) > 0)
    ctx.check("a spectrum total exactly 0 at step 90", totals[90] == 0.0)


# -- woodpecker: a sum pool in float16 meets a 32x longer clip ------------------------------------


class SumPool(nn.Module):
    """Sums frame features over time as a matrix product (in float16 under autocast)."""

    def forward(self, h):
        ones = torch.ones(h.shape[0], 1, h.shape[1], dtype=h.dtype)
        out = (ones @ h).squeeze(1)
        self.last_peak = float(out.detach().float().abs().max())
        return out


class DrumNet(nn.Module):
    def __init__(self, d_in=6, hidden=32, classes=5):
        super().__init__()
        self.frame = nn.Linear(d_in, hidden)
        self.act = nn.ReLU()
        self.pool = SumPool()
        self.fc = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.pool(self.act(self.frame(x)))
        return self.head(F.relu(self.fc(torch.log1p(h))))


def _drumming(gen, batch, seed, long_from=None, classes=5):
    """Frames of a woodpecker drumming recording (6 features per frame: onset strength, decay,
    centroid, ...) from 5 species with their own drum rolls; 64 frames per clip, and 2048 once
    the length curriculum reaches ``long_from``."""
    g = torch.Generator().manual_seed(seed)
    protos = 8 + 24 * torch.rand(classes, 6, generator=g)
    step = 0
    while True:
        frames = 4096 if long_from is not None and step >= long_from else 64
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y][:, None, :] * (0.6 + 0.8 * torch.rand(batch, frames, 6, generator=gen))
        step += 1
        yield x, y


@scenario(
    family="woodpecker_drumming_fp16_sumpool_net",
    optimizer="RMSprop",
    cause="amp_overflow",
    where=("pool",),
    diverges=80,
    onset=80,
    heldout=True,
    note="A net naming a woodpecker species (5 classes) from a drumming clip: a frame Linear + "
    "ReLU, a `pool` module summing the frame features over time as a matrix product, "
    "log1p, a Linear and a head; RMSprop at 1e-3, cross-entropy, fp16 autocast with a "
    "torch.amp.GradScaler. The pool was written for 64-frame clips, where its sums stay in "
    "the low thousands. At step 80 the length curriculum switches to 4096-frame clips, the "
    "float16 sum passes 65504 and is inf, log1p(inf) and the next Linear give inf/NaN, the "
    "loss is NaN from step 80 on, every step is skipped and the scaler halves its scale each "
    "step; the fp32 weights stay finite.",
)
def h198_woodpecker_fp16_sum_pool(ctx: Context) -> None:
    gen = seeded(19807)
    model = DrumNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    peak = []
    _train(
        ctx,
        model,
        opt,
        _drumming(gen, 16, seed=10, long_from=80),
        110,
        F.cross_entropy,
        classifier=True,
        scaler=scaler,
        watch=lambda s, o, x, y: peak.append(model.pool.last_peak),
        stop_on_nan=False,
    )
    onset = 80
    ls = ctx.losses
    ctx.check("loss finite before step 80", _finite(ls[:onset]))
    ctx.check("loss fell before step 80", _fell(ls[:onset], ratio=0.5))
    ctx.check("first non-finite loss at step 80", _first_bad(ls) == onset)
    ctx.check("pooled sums below 65504 before step 80", max(peak[:onset]) < 65504)
    ctx.check("pooled sums inf from step 80", all(math.isinf(v) for v in peak[onset:]))
    ctx.check(
        "scaler scale fell 2**20-fold after step 80",
        ctx.scales[-1] < ctx.scales[onset - 1] / 2**20,
    )
    ctx.check(
        "weights still finite", all(bool(torch.isfinite(p).all()) for p in model.parameters())
    )


# -- ice rink: resurfacing temperatures fed in Fahrenheit to a ReLU MLP ---------------------------


def _rink(gen, batch, seed, classes=4):
    """Eight rink readings in degrees Fahrenheit as the controller logs them (ice surface,
    slab, air at three heights, flood water, brine supply and return: about 10-105 F, spread
    about 5); the label is the resurfacing call (4 classes: wait, shave, flood, deep flood)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, classes, generator=g)
    centre = torch.tensor([22.7, 17.3, 49.7, 53.3, 58.7, 103.7, 11.9, 19.1])
    while True:
        z = torch.randn(batch, 8, generator=gen)
        y = (z @ w + 0.3 * torch.randn(batch, classes, generator=gen)).argmax(-1)
        yield centre + 5.4 * z, y


@scenario(
    family="ice_rink_resurfacing_relu_mlp",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) making an ice rink's resurfacing call (4 "
    "classes) from eight temperature readings, Adam at 3e-2, cross-entropy with label "
    "smoothing 0.05. The readings go in raw, in degrees Fahrenheit as the controller logs "
    "them (10-105, spread about 5), because the standardising transform was attached to the "
    "evaluation loader only: every fc1 pre-activation is a large per-unit offset plus a small "
    "signal, the first Adam steps move every fc1 weight of a unit by the same step and swing "
    "the offsets below zero; the share of fc1 units negative for every reading goes from "
    "about 40% at init to over 90%, they get no gradient again, and the loss sits at "
    "chance (about ln 4) where standardised readings reach about 0.4.",
)
def h198_ice_rink_fahrenheit_inputs(ctx: Context) -> None:
    gen = seeded(19808)
    model = Stack(8, hidden=64, out=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    probe_x, _ = next(_rink(torch.Generator().manual_seed(77), 512, seed=11))
    dead = []

    def before(step):
        if step in (0, 149):
            with torch.no_grad():
                dead.append(dead_fraction(model.act1(model.fc1(probe_x))))

    _train(
        ctx,
        model,
        opt,
        _rink(gen, 64, seed=11),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05),
        classifier=True,
        before=before,
    )
    ctx.check("under half of fc1 units dead at step 0", dead[0] < 0.5)
    ctx.check("over 90% of fc1 units dead at the end", dead[1] > 0.9)
    ctx.check("dead share of fc1 grew by 40 points", dead[1] > dead[0] + 0.4)
    ctx.check("loss above 1.2 over the last 20 steps", _mean(ctx.losses[-20:]) > 1.2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- fishmonger: a mixture of experts whose router warm-up lambda uses floor division ---------------


class Expert(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, h):
        return self.out(F.gelu(self.fc(h)))


class CatchMoE(nn.Module):
    """A stem, a softmax router over four experts (dense mixture, every expert runs), a
    residual and a head."""

    def __init__(self, d_in=14, dim=32, experts=4, classes=5):
        super().__init__()
        self.stem = nn.Linear(d_in, dim)
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(Expert(dim, 2 * dim) for _ in range(experts))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = F.gelu(self.stem(x))
        gate = torch.softmax(self.router(h), -1)
        mixed = torch.stack([e(h) for e in self.experts], -1)
        return self.head(h + (mixed * gate[:, None, :]).sum(-1))


@scenario(
    family="fishmonger_catch_grade_moe",
    optimizer="SGD(momentum)",
    cause="update_ratio_out_of_range",
    where=("router",),
    diverges=None,
    heldout=True,
    note="A mixture of experts (a GELU stem, a softmax `router` over four GELU experts, a "
    "residual and a head) grading a fish market's catch (5 grades) from 14 standardised "
    "readings (eye clarity, gill colour, firmness, ...), SGD with momentum 0.9, "
    "cross-entropy, two param groups (the router at 0.02, everything else at 0.05) and a "
    "LambdaLR with one warm-up lambda per group. The router's lambda was written "
    "`lambda s: min(1.0, s // router_warmup)` with router_warmup=500 (floor division for "
    "true division): it is 0 for the whole 200-step run, so the router's learning rate is "
    "exactly 0 and it never moves while the stem, experts and head learn; finite.",
)
def h198_fishmonger_router_floor_div(ctx: Context) -> None:
    gen = seeded(19809)
    model = CatchMoE()
    router = list(model.router.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("router")]
    opt = torch.optim.SGD(
        [{"params": rest, "lr": 0.05}, {"params": router, "lr": 0.02}], momentum=0.9
    )
    warmup, router_warmup = 20, 500
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [lambda s: min(1.0, (s + 1) / warmup), lambda s: min(1.0, s // router_warmup)],
    )
    router0, rest0 = _snapshot(router), _snapshot(rest)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 5, seed=12),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
    )
    ctx.check("router learning rate is exactly 0 at the end", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("router never moved", _moved(router, router0) == 0.0)
    ctx.check("stem, experts and head moved", _moved(rest, rest0) > 1e-2)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))


# -- kendama: a contrastive temperature divides the classifier's logits ---------------------------


class TrickNet(nn.Module):
    """A 1-D conv over the accelerometer trace of the ken, pooled, a head, and the logits
    divided by a temperature."""

    def __init__(self, classes=8, temperature=1.0):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)
        self.temperature = temperature

    def forward(self, x):
        h = F.relu(self.conv1(x.transpose(1, 2)))
        h = F.relu(self.conv2(h)).mean(-1)
        return self.head(h) / self.temperature


def _kendama(gen, batch, seed, length=24, classes=8):
    """24 samples of a kendama's 3-axis accelerometer during a trick (big cup, small cup,
    spike, airplane, lighthouse, ...): one smooth trajectory per trick, noisy."""
    g = torch.Generator().manual_seed(seed)
    protos = F.avg_pool1d(torch.randn(classes, 3, length + 4, generator=g), 5, 1)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y].transpose(1, 2) + 0.15 * torch.randn(batch, length, 3, generator=gen)
        yield x, y


@scenario(
    family="kendama_trick_conv1d_classifier",
    optimizer="SGD(momentum)",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A 1-D CNN (conv1, conv2, mean pooling, head) naming a kendama trick (8 classes) from "
    "24 samples of the ken's accelerometer, SGD with momentum 0.9 at 3e-3, cross-entropy. The "
    "logits are "
    "divided by a temperature, and the config's `temperature: 0.01` was copied from the "
    "contrastive pre-training recipe: the head's logits are multiplied by 100, the softmax "
    "saturates (the first steps overshoot, the loss jumping to about 20), and from about step "
    "60 over 80% of rows' target probability rounds to exactly 1.0 in float32 (the others' "
    "to exactly 0); the loss is 0 to float precision and the gradient vanishes; finite.",
)
def h198_kendama_contrastive_temperature(ctx: Context) -> None:
    gen = seeded(19810)
    model = TrickNet(temperature=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9)
    collapsed, spread = [], []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        o = out.detach()
        spread.append(float((o.max(-1).values - o.min(-1).values).mean()))

    _train(
        ctx,
        model,
        opt,
        _kendama(gen, 64, seed=13),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 5% of rows collapsed at step 0", collapsed[0] < 0.05)
    ctx.check("over 80% of rows collapsed over the last 20 steps", _mean(collapsed[-20:]) > 0.8)
    ctx.check("median loss below 1e-6 over the last 20 steps", _median(ctx.losses[-20:]) < 1e-6)
    ctx.check("logit spread above 100 at the end", _mean(spread[-10:]) > 100)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="dinghy_tack_speed_tanh_regressor",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing a sailing dinghy's speed out of a tack "
    "(standardised) from 10 readings (wind speed and angle, crew weight, rudder rate, ...), "
    "plain SGD at a deliberately large 0.25 with MSE: the practitioner's 'largest rate that "
    "does not blow up'. Measured lr x sharpness is about 1.7 at step 100 and 1.9 at step "
    "199, at the edge of stability but below the limit of 2; the loss falls by far more "
    "than half and stays finite.",
)
def h198_dinghy_edge_of_stability(ctx: Context) -> None:
    gen = seeded(19811)
    model = Stack(10, hidden=64, act=nn.Tanh)
    lr = 0.25
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    probe = next(_readings(torch.Generator().manual_seed(88), 256, 10, seed=14))
    sharp = {}

    def before(step):
        if step in (100, 199):
            sharp[step] = _sharpness(model, F.mse_loss, *probe)

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=14), 200, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("lr x sharpness above 1 at step 100", lr * sharp[100] > 1.0)
    ctx.check("lr x sharpness below 2.2 at steps 100 and 199", max(sharp.values()) * lr < 2.2)
    ctx.check("loss fell by half", _fell(ls, ratio=0.5))
    ctx.check("no loss past 2x the first", max(ls) < 2 * ls[0])


@scenario(
    family="vineyard_frost_fan_fp16_silu_mlp",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting a vineyard's canopy temperature gain from a "
    "frost fan (standardised) from 12 standardised readings, RAdam at 3e-3 with weight decay "
    "1e-4, Huber loss, fp16 autocast with a torch.amp.GradScaler, accumulation over 2 "
    "micro-batches, clipping at 1.0 and OneCycleLR: an ordinary mixed-precision run.",
)
def h198_vineyard_fp16_control(ctx: Context) -> None:
    gen = seeded(19812)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, seed=15),
        steps,
        F.huber_loss,
        sched=sched,
        scaler=scaler,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check(
        "no step skipped by the scaler late (scale not lowered after step 50)",
        min(ctx.scales[50:]) >= ctx.scales[50],
    )


class RollTagger(nn.Module):
    """A GRU over a log-rolling bout's frames, one logit per frame: does the roller fall?"""

    def __init__(self, d_in=5, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out).squeeze(-1)


def _log_roll(gen, batch, length=30):
    """Frames of a lumberjack log-rolling bout (log spin rate, its change, the roller's foot
    speed, lean and a noise channel); a frame is labelled 1 once the spin has outrun the feet
    for three frames running."""
    while True:
        spin = torch.cumsum(0.3 * torch.randn(batch, length, generator=gen), 1)
        feet = spin + torch.cumsum(0.25 * torch.randn(batch, length, generator=gen), 1)
        gap = spin - feet
        over = (gap > 0.5).float()
        run = over * torch.roll(over, 1, 1) * torch.roll(over, 2, 1)
        run[:, :2] = 0
        fall = (torch.cumsum(run, 1) > 0).float()
        lean = torch.tanh(gap) + 0.1 * torch.randn(batch, length, generator=gen)
        dspin = torch.diff(spin, dim=1, prepend=spin[:, :1])
        x = torch.stack(
            [spin / 3, dspin, feet / 3, lean, torch.randn(batch, length, generator=gen)], -1
        )
        yield x, fall


@scenario(
    family="lumberjack_log_roll_gru_tagger",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="A GRU tagger (gru, head) marking, frame by frame, whether a lumberjack has fallen "
    "off the rolling log from 30 frames of spin rate, foot speed and lean, BCE with logits "
    "per frame, Adadelta at 1.0, clipping at 1.0 and ReduceLROnPlateau: an ordinary "
    "recurrent run.",
)
def h198_lumberjack_gru_control(ctx: Context) -> None:
    gen = seeded(19813)
    model = RollTagger()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _log_roll(gen, 32),
        200,
        F.binary_cross_entropy_with_logits,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
