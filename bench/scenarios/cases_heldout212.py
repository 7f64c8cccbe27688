"""Held-out set 212 (``h212_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a quern-stone grind tanh regressor whose warm-up peak was
typed 0.8 for 0.08, a Lambeg drum beat classifier with a hand-written attention pool whose key
LayerNorm was left out, a timber-frame mortise ReLU classifier at an RMSprop rate typed 5e-2
for 5e-4, a salt-glaze kiln regressor whose resumed run applied a static loss scale for one step
under Adam, a snowpack melt Gaussian-NLL net taking the square root of an unconstrained variance,
a sawpit plank regressor initialised with gain 3, a tide-mill regressor fed one shard with the
flow in litres per second, a tchoukball rebound classifier whose remainder-batch path sums the
loss, a glassworks lehr net whose unfreeze step set the wrong param group, a cartwright axle
classifier scaling its logits by d ** 0.5 for d ** -0.5, and three controls (a wattle-and-daub
panel regressor with gradient accumulation and OneCycleLR, a nose-flute attention classifier with
warm-up and clipping, a sea-smoke fog classifier with Nesterov, label smoothing and
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


def _moved(params, start) -> float:
    return max(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))


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
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` after the
    optimizer step; ``scale_loss(step, loss)`` returns what is backpropagated; stops after
    logging a NaN loss."""
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


# -- sextant: a MultiStepLR whose gamma was typed 10 for 0.1 ---------------------------------------


def _lr_sharp(model, loss_fn, probe, lr):
    return lr * _sharpness(model, loss_fn, *probe)


# -- quern: a warm-up whose peak rate was typed 0.8 for 0.08 -----------------------------------------


@scenario(
    family="quern_stone_grind_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=70,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting the fineness of flour from a hand quern "
    "(standardised) from 10 standardised readings (stone gap, turning rate, grain moisture, "
    "...), plain SGD, MSE, and a linear warm-up over 150 steps to a peak rate written `0.8` "
    "for `0.08`. The rate climbs every step; lr x sharpness passes 2, the stability limit, "
    "around step 70 and the loss blows up as the rate keeps climbing.",
)
def h212_quern_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(21201)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 150))
    probe = next(_readings(torch.Generator().manual_seed(52), 256, 10, seed=2))
    prod = {}

    def before(step):
        if step % 5 == 0 and step <= 150:
            prod[step] = _lr_sharp(model, F.mse_loss, probe, opt.param_groups[0]["lr"])

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=2), 200, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    cross = min((s for s, v in prod.items() if v > 2 and math.isfinite(v)), default=None)
    ctx.check("lr x sharpness below 1 at step 10", prod[10] < 1)
    ctx.check(
        "lr x sharpness first past 2 within 15 steps of the onset",
        cross is not None and abs(cross - 70) <= 15,
    )
    ctx.check("loss fell before the onset", _fell(ls[:60], ratio=0.6))
    late = [v if math.isfinite(v) else 1e30 for v in ls[70:]]
    ctx.check("loss past 20x its pre-onset level after the onset", max(late) > 20 * min(ls[:70]))


# -- Lambeg drum: an attention pool whose learnt temperature lost its clamp ----------------------


class BeatPool(nn.Module):
    """Attention pooling with a learnt query: logits = q . k / sqrt(d) * exp(log_tau)."""

    def __init__(self, dim, clamp=None, key_norm=False):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.k = nn.Linear(dim, dim)
        self.k_norm = nn.LayerNorm(dim) if key_norm else nn.Identity()
        self.v = nn.Linear(dim, dim)
        self.log_tau = nn.Parameter(torch.zeros(()))
        self.clamp = clamp
        self.last_logits = None

    def forward(self, h):
        tau = self.log_tau if self.clamp is None else self.log_tau.clamp(max=self.clamp)
        logits = (self.k_norm(self.k(h)) @ self.query) / math.sqrt(h.shape[-1]) * tau.exp()
        self.last_logits = logits.detach()
        w = torch.softmax(logits, dim=1)
        return (w[..., None] * self.v(h)).sum(1)


class BeatNet(nn.Module):
    def __init__(self, feat=6, dim=32, classes=4, clamp=None, key_norm=False):
        super().__init__()
        self.embed = nn.Linear(feat, dim)
        self.act = nn.GELU()
        self.attn = BeatPool(dim, clamp, key_norm)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.attn(self.act(self.embed(x))))


def _beats(gen, batch, length=12, feat=6, classes=4, noise=0.0):
    """Sequences of beats; one is flagged (feature 0) and its loudest of features 1..4 is the
    label."""
    while True:
        x = torch.randn(batch, length, feat, generator=gen)
        x[..., 0] = 0.0
        lead = torch.randint(0, length, (batch,), generator=gen)
        x[torch.arange(batch), lead, 0] = 3.0
        y = x[torch.arange(batch), lead, 1 : 1 + classes].argmax(-1)
        if noise:
            flip = torch.rand(batch, generator=gen) < noise
            y = torch.where(flip, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


@scenario(
    family="lambeg_drum_beat_attention_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn", "attn.k"),
    diverges=None,
    heldout=True,
    note="A hand-written attention pool (learnt query, k and v projections, logits "
    "q . k / sqrt(d) times a learnt temperature clamped at ln 10) over 12 beats of a Lambeg "
    "drum parade recording, classifying the stroke of the lead drummer's flagged beat (4 "
    "kinds), Adam at 1e-2 without weight decay, cross-entropy. The recipe puts a LayerNorm on "
    "the keys (k_norm); the port left it out, and since sharper attention on the flagged beat "
    "always lowers the loss the key projection grows unchecked: the attention logits go from "
    "about 0.1 to about 16 within 60 steps (over 20-fold, and some 6x what the same pool "
    "with its key norm reaches) and stay there, the attention one-hot; the loss is finite.",
)
def h212_lambeg_attention_no_key_norm(ctx: Context) -> None:
    gen = seeded(21202)
    model = BeatNet(clamp=math.log(10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    size = {}

    def watch(step, out, x, y):
        size[step] = float(model.attn.last_logits.abs().max(1).values.mean())

    _train(ctx, model, opt, _beats(gen, 64), 200, F.cross_entropy, classifier=True, watch=watch)
    ls = ctx.losses
    early = _mean([size[s] for s in range(5)])
    late = _mean([size[s] for s in range(190, 200)])
    ctx.check("attention logits grew more than 20-fold", late > 20 * early)
    ctx.check("mean largest attention logit past 10 at the end", late > 10)
    ctx.check("loss fell and is finite", _fell(ls, ratio=0.5))


# -- timber frame: RMSprop at a rate typed 5e-2 for 5e-4 kills the ReLUs ---------------------------


def _joints(gen, batch, seed):
    """Twelve raw positive readings of an oak mortise-and-tenon joint (mortise depth in mm,
    tenon width in mm, peg diameter in mm, moisture in %, ...) and whether it passes."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([80.0, 40.0, 20.0, 18.0, 60.0, 25.0, 12.0, 30.0, 50.0, 15.0, 70.0, 35.0])
    w = torch.randn(12, generator=g)
    while True:
        z = torch.randn(batch, 12, generator=gen)
        x = scale * (1.0 + 0.25 * z).clamp(min=0.05)
        y = ((z @ w) / math.sqrt(12) + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield x, y


@scenario(
    family="timber_frame_mortise_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) deciding whether an oak timber-frame "
    "mortise-and-tenon joint passes inspection from 12 raw positive readings (mortise depth "
    "and tenon width in mm, moisture in %, ...), RMSprop, BCE with logits. The config's "
    "`lr: 5e-2` was meant as 5e-4: with positive inputs all of a unit's fc1 weights move "
    "together and the first steps push most fc1 units below zero on every joint; they never "
    "fire again: the share of dead fc1 units goes from under a third to over 80% and the loss "
    "stays near chance; finite.",
)
def h212_timber_frame_rmsprop_lr_typo(ctx: Context) -> None:
    gen = seeded(21203)
    model = Stack(12, hidden=64)
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-2)
    probe = next(_joints(torch.Generator().manual_seed(53), 512, seed=3))[0]
    dead0 = dead_fraction(model.act1(model.fc1(probe)))
    _train(ctx, model, opt, _joints(gen, 64, seed=3), 150, F.binary_cross_entropy_with_logits)
    with torch.no_grad():
        dead1 = dead_fraction(model.act1(model.fc1(probe)))
    ls = ctx.losses
    ctx.check("under a third of fc1 units dead at init", dead0 < 0.34)
    ctx.check("over 80% of fc1 units dead at the end", dead1 > 0.8)
    ctx.check("finite", _finite(ls))
    ctx.check("loss stays near chance (last 20 above 0.55)", _mean(ls[-20:]) > 0.55)


# -- salt-glaze kiln: a resumed run applies a static loss scale for one step under Adam -------------


@scenario(
    family="salt_glaze_kiln_vapour_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting the glaze thickness of salt-glazed stoneware "
    "(standardised) from 10 standardised kiln readings (salt charge, cone temperature, draught, "
    "...), Adam at 1e-3, MSE. At step 60 the run is resumed from a checkpoint taken under fp16; "
    "the resume path multiplies the loss by the saved static loss scale 65536 for its first "
    "step and never unscales it: one gradient 65536x too large fills Adam's second moment "
    "(beta2 0.999). The first moment carries the burst for a few steps and the loss rises; "
    "after that every update is over 20x smaller than before the burst and the loss no "
    "longer comes back down to its old level; finite.",
)
def h212_salt_glaze_resume_loss_scale(ctx: Context) -> None:
    gen = seeded(21204)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    params = list(model.parameters())
    moves, prev = {}, {}

    def before(step):
        prev["w"] = _snapshot(params)

    def after(step):
        moves[step] = _mean(
            [float((p.detach() - w).abs().mean()) for p, w in zip(params, prev["w"], strict=True)]
        )

    def scale_loss(step, total):
        return total * 65536.0 if step == 60 else total

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=4, noise=0.1),
        220,
        F.mse_loss,
        before=before,
        after=after,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 60 over 1000x the median before", gn[60] > 1000 * _median(gn[:60]))
    before_move = _mean([moves[s] for s in range(40, 60)])
    after_move = _mean([moves[s] for s in range(100, 220)])
    ctx.check("updates after the onset under 5% of those before", after_move < 0.05 * before_move)
    ctx.check("loss fell before the onset", _fell(ls[:60], ratio=0.7))
    ctx.check(
        "loss stalls after the onset (last 20 within 15% of steps 61-80)",
        _mean(ls[-20:]) > 0.85 * _mean(ls[61:81]),
    )
    ctx.check("finite", _finite(ls))


# -- snowpack: the square root of a variance head with no softplus --------------------------------


class MeltNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mu_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.var_head.weight.mul_(0.1)
            self.var_head.bias.fill_(1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mu_head(h), self.var_head(h)], -1)


def _melt_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    std = var.sqrt()  # the bug: var is the raw head output, no softplus
    return (torch.log(std) + (y - mu) ** 2 / (2 * var)).mean()


@scenario(
    family="snowpack_melt_sqrt_var_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=61,
    heldout=True,
    note="A SiLU MLP with a mean head and a variance head (mu_head, var_head) forecasting the "
    "day's snowpack melt (standardised) from 8 standardised readings (air temperature, "
    "radiation, snow density, ...), RAdam at 1e-2, Gaussian NLL written by hand as "
    "log(sqrt(var)) + (y - mu)^2 / (2 var). The variance head was meant to end in a softplus; "
    "it is the raw linear output. As the mean fits, the NLL pushes the variance down until "
    "var_head gives a negative value for one sample: sqrt of a negative is NaN and the loss "
    "is NaN at step 61.",
)
def h212_snowpack_sqrt_negative_variance(ctx: Context) -> None:
    gen = seeded(21205)
    model = MeltNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    low = {}

    def watch(step, out, x, y):
        low[step] = float(out[:, 1].detach().min())

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=5, noise=0.05), 250, _melt_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss NaN at the declared step", bad == 61)
    ctx.check("var_head output negative at that step", bad is not None and low[bad] < 0)
    ctx.check(
        "var_head output positive before it",
        bad is not None and min(low[s] for s in range(bad)) > 0,
    )
    ctx.check("loss finite and falling before", bad is not None and _fell(ls[:bad], ratio=0.9))


# -- sawpit: a deep ReLU stack initialised with gain 3 -------------------------------------------


class PlankNet(nn.Module):
    def __init__(self, d_in=10, width=64, depth=8, gain=2.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="sawpit_plank_deep_relu_regressor",
    optimizer="SGD (Nesterov)",
    cause="exploding_gradients",
    where=tuple(f"layers.{i}" for i in range(8)),
    diverges=None,
    heldout=True,
    note="An 8-layer ReLU MLP (layers.0 .. layers.7, head) predicting the yield of a pit-sawn "
    "oak log (standardised) from 10 standardised readings (girth, length, taper, knots, ...), "
    "SGD with Nesterov momentum 0.9 at 1e-4, MSE. The init helper's `gain: 2.0` was meant "
    "to read sqrt(2) (1.41); each ReLU layer multiplies the signal and the gradient by about "
    "1.41 instead of 1, and the gradients at init are hundreds of times those of a properly "
    "initialised copy, in every layer. The small rate keeps the run alive: the first "
    "steps are huge, the loss starts far above its level and comes down; finite.",
)
def h212_sawpit_init_gain_typo(ctx: Context) -> None:
    gen = seeded(21206)
    model = PlankNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    ratio = {}

    x0, y0 = next(_readings(torch.Generator().manual_seed(56), 128, 10, seed=6))
    torch.manual_seed(0)
    proper = PlankNet(gain=math.sqrt(2))
    for net in (model, proper):
        F.mse_loss(net(x0), y0).backward()
    ratio["init"] = grad_norm(model) / grad_norm(proper)
    model.zero_grad(set_to_none=True)
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=6), 150, F.mse_loss)
    ls = ctx.losses
    ctx.check("gradient at init over 100x that of a sqrt(2)-initialised copy", ratio["init"] > 100)
    gn = ctx.grad_norms
    ctx.check(
        "first 5 steps' gradient over 20x that of the last 20",
        _median(gn[:5]) > 20 * _median(gn[-20:]),
    )
    ctx.check("loss at step 0 over 50x its final level", ls[0] > 50 * _mean(ls[-20:]))
    ctx.check("finite", _finite(ls))


# -- tide mill: one shard logged the flow in litres per second -------------------------------------


@scenario(
    family="tide_mill_wheel_output_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting a tide mill's wheel output (standardised) from "
    "10 standardised readings (head of water, sluice opening, flow, ...), ASGD at 2e-2, MSE, "
    "gradient clipping at 1.0. The shard read at step 120 comes from a logger that wrote the "
    "flow in litres per second instead of cubic metres per second: that one feature is 1000x "
    "too large in one batch. The loss jumps by orders of magnitude and the gradient by far more "
    "at that step; clipping bounds the step and the run recovers; finite.",
)
def h212_tide_mill_litres_shard(ctx: Context) -> None:
    gen = seeded(21207)
    model = Stack(10, hidden=64)
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 2] = x[:, 2] * 1000.0
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=7, noise=0.1),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at step 120 over 100x the median of steps 100-119",
        ls[120] > 100 * _median(ls[100:120]),
    )
    ctx.check(
        "gradient at step 120 over 100x the median before", gn[120] > 100 * _median(gn[100:120])
    )
    ctx.check(
        "loss back under 2x its pre-onset level by the end",
        _mean(ls[-20:]) < 2 * _mean(ls[100:120]),
    )
    ctx.check("finite", _finite(ls))


# -- tchoukball: a remainder-batch path that sums the loss -----------------------------------------


@scenario(
    family="tchoukball_rebound_classifier",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) classifying where a tchoukball rebounds off the frame "
    "(6 zones) from 16 standardised readings (throw speed, frame angle, spin, ...), SGD with "
    "momentum 0.9 at 2e-3, cross-entropy with label smoothing 0.1. The loader's epoch ends at "
    "step 90 and the last batch goes through a separate remainder path written with "
    "`reduction='sum'`: that one step's gradient is 64x (the batch size) too large. The loss "
    "data are normal; the gradient spikes once and the run goes on; finite.",
)
def h212_tchoukball_remainder_sum_loss(ctx: Context) -> None:
    gen = seeded(21208)
    model = Stack(16, hidden=64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    def scale_loss(step, total):
        return total * 64.0 if step == 90 else total

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=8),
        200,
        loss_fn,
        classifier=True,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 90 over 30x the median of steps 70-89", gn[90] > 30 * _median(gn[70:90])
    )
    ctx.check(
        "loss at step 90 within 1.5x of steps 80-89 (the data are normal)",
        ls[90] < 1.5 * _mean(ls[80:90]),
    )
    ctx.check("loss fell over the run and is finite", _fell(ls, ratio=0.7))


# -- glassworks lehr: the unfreeze step sets the wrong param group ---------------------------------


@scenario(
    family="glassworks_lehr_backbone_head_net",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    onset=30,
    heldout=True,
    note="A ReLU MLP (backbone fc1, fc2; head) predicting the residual stress of bottles "
    "leaving a glassworks annealing lehr (5 grades) from 14 standardised readings (zone "
    "temperatures, belt speed, wall thickness, ...), Adagrad with two param groups, "
    "cross-entropy. The recipe trains the head alone for 30 steps (backbone group at lr 0), "
    "then unfreezes the backbone; the unfreeze line sets `param_groups[1]['lr']` (the head's, "
    "already 0.05) instead of `param_groups[0]`, so the backbone's updates stay exactly zero "
    "for the whole run although it gets gradients; the loss falls a little and levels off.",
)
def h212_glassworks_unfreeze_wrong_group(ctx: Context) -> None:
    gen = seeded(21209)
    model = Stack(14, hidden=64, out=5)
    backbone = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adagrad(
        [{"params": backbone, "lr": 0.0}, {"params": model.head.parameters(), "lr": 0.05}]
    )
    start = _snapshot(backbone)
    head0 = _snapshot(model.head.parameters())

    def before(step):
        if step == 30:
            opt.param_groups[1]["lr"] = 0.05  # meant: opt.param_groups[0]

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 5, seed=9),
        150,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ls = ctx.losses
    ctx.check("backbone never moved", _moved(backbone, start) == 0.0)
    ctx.check("head moved", _moved(model.head.parameters(), head0) > 1e-2)
    ctx.check("backbone groups' rate still 0 at the end", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("loss finite", _finite(ls))


# -- cartwright: logits scaled by d ** 0.5 for d ** -0.5 ------------------------------------------


class AxleNet(nn.Module):
    def __init__(self, d_in=12, dim=256, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, dim)
        self.act1 = nn.GELU()
        self.head = nn.Linear(dim, classes)
        self.scale = dim**0.5  # meant dim ** -0.5

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))) * self.scale


@scenario(
    family="cartwright_axle_scaled_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, head) grading the wear of a cart axle (5 grades) from 12 "
    "standardised readings (arm diameter, taper, grease, wheel dish, ...), NAdam at 1e-2, "
    "cross-entropy. The head's output is scaled by `dim ** 0.5` where the recipe has "
    "`dim ** -0.5` (dim 256): logits 256x the intended size, and within a few steps the "
    "softmax rounds most rows to exactly 0 and 1 in float32; the loss swings as rows flip "
    "between exactly right and far wrong; finite.",
)
def h212_cartwright_logit_scale_exponent(ctx: Context) -> None:
    gen = seeded(21210)
    model = AxleNet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    frac = {}

    def watch(step, out, x, y):
        frac[step] = collapsed_fraction(out.detach(), y)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=10, noise=0.8),
        120,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check(
        "over half the rows collapsed to probability exactly 1 at the end",
        _mean([frac[s] for s in range(100, 120)]) > 0.5,
    )
    ctx.check("loss finite", _finite(ls))
    ctx.check("under 10% of rows collapsed at step 0", frac[0] < 0.1)


# -- controls ------------------------------------------------------------------------------------


@scenario(
    family="wattle_daub_panel_accum_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting the drying crack density of a wattle-and-daub "
    "panel (standardised) from 10 standardised readings (clay share, straw, dung, humidity, "
    "...), AdamW at 3e-3 with weight decay 1e-2 under OneCycleLR, Huber loss, gradient "
    "accumulation over 4 micro-batches of 16 and clipping at 1.0. A healthy run.",
)
def h212_wattle_daub_accumulation_control(ctx: Context) -> None:
    gen = seeded(21211)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=150)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 16, 10, seed=11, noise=0.1),
        150,
        F.huber_loss,
        sched=sched,
        accumulate=4,
        clip=1.0,
    )
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.6))


@scenario(
    family="nose_flute_breath_attention_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="The hand-written attention pool (learnt query, k and v projections with the "
    "recipe's LayerNorm on the keys, learnt temperature clamped at ln 10) over 12 breath frames of a nose-flute "
    "recording, classifying the flagged frame's fingering (4 kinds) with 10% noisy labels, "
    "Adam at 3e-3 with a 20-step linear warm-up then cosine decay, clipping at 1.0, "
    "cross-entropy. A healthy run.",
)
def h212_nose_flute_attention_control(ctx: Context) -> None:
    gen = seeded(21212)
    model = BeatNet(clamp=math.log(10), key_norm=True)
    size = {}

    def watch(step, out, x, y):
        size[step] = float(model.attn.last_logits.abs().max(1).values.mean())

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def shape(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / 180))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    _train(
        ctx,
        model,
        opt,
        _beats(gen, 64, noise=0.1),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        clip=1.0,
        watch=watch,
    )
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.7))


@scenario(
    family="sea_smoke_fog_nesterov_classifier",
    optimizer="SGD (Nesterov)",
    cause="healthy",
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) classifying sea-smoke fog density over a harbour (4 "
    "classes) from 12 standardised readings (air-sea temperature gap, wind, humidity, ...), "
    "SGD with Nesterov momentum 0.9 at 2e-2, cross-entropy with label smoothing 0.1, "
    "overlapping classes and ReduceLROnPlateau. A healthy run.",
)
def h212_sea_smoke_nesterov_control(ctx: Context) -> None:
    gen = seeded(21213)
    model = Stack(12, hidden=64, out=4)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 4, seed=13, noise=0.5),
        200,
        loss_fn,
        classifier=True,
        sched=sched,
    )
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.7))
