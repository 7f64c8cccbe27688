"""Held-out set 390 (``h390_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a psaltery bridge-pin tuning classifier trained with NLLLoss whose LogSoftmax was
dropped (the head's logits grow without bound), a lahar deposit-thickness tanh regressor whose
linear warm-up misses its min(., 1) (the lr keeps rising past 2/sharpness), a graupel fall-speed
regressor fed one logger's shard in cm/s (one corrupted batch), an ocarina breath-pressure pitch
regressor whose loss-weight table gives 1e5 for one step (Adam's second moment poisoned), a
washboard-road corrugation BCE classifier whose leftover branch sums one step's loss over the
batch (one gradient burst), a hoarfrost crystal-count Poisson net whose rate is a ReLU with no
floor (log 0), an anchor-ice riverbed-lift deep tanh MLP whose init std is typed
gain / fan_in ** 0.25 (gradients grow through depth), a netsuke ivory-grain GRU classifier whose
encoder group's lr is typed 1e-9 (frozen), a banjo bridge-placement ReLU regressor whose lr is
typed 1e-1 (ReLUs die) and a crwth bridge-wear classifier whose calibration temperature is typed
0.002 (the softmax saturates).

Controls: a melodeon button-row distillation (frozen teacher, smaller student, KL at T=4 scaled
by T^2 plus cross-entropy, AdamW), a pewter-spinning wall-thickness regressor (fp16 autocast with
a GradScaler, NAdam under OneCycleLR, accumulation, Huber loss) and a roll-cloud arcus-front
Conv1d classifier (SGD Nesterov, warm-up then cosine, label smoothing, clipping, noisy labels).

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


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


def _median(xs) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs):
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's loop: ``before(step)``, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` sees the output, ``weight(step, loss, x, y)`` returns the loss
    actually backpropagated, ``after(step)`` runs after the optimizer step. Stops after a
    non-finite loss once ``ctx.step`` has seen it."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            if watch is not None:
                watch(step, out, x, y)
            loss = loss_fn(out.float(), y)
            total = weight(step, loss, x, y) if weight is not None else loss
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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _binary(gen, batch, d_in, seed, flip=0.0):
    """Readings labelled by a hidden linear rule, a share ``flip`` of labels flipped."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w > 0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1.0 - y, y)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=32, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


# -- models ----------------------------------------------------------------------------------------


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


def _accuracy(model, batches, n=4) -> float:
    model.eval()
    hits, total = 0, 0
    with torch.no_grad():
        for _ in range(n):
            x, y = next(batches)
            hits += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    model.train()
    return hits / total


# -- output logits: NLLLoss on raw logits (the LogSoftmax left out) --------------------------------


def _psaltery(log_softmax, steps, ctx=None):
    gen = seeded(39001)
    model = Trunk(12, 64, out=6, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = _grades(gen, 64, 12, 6, 390011, spread=0.6)
    logits = []

    def loss_fn(out, y):
        return F.nll_loss(F.log_softmax(out, -1) if log_softmax else out, y)

    def watch(step, out, x, y):
        logits.append(float(out.detach().abs().max()))

    if ctx is not None:
        _train(ctx, model, opt, data, steps, loss_fn, classifier=True, watch=watch)
    else:
        for step in range(steps):
            x, y = next(data)
            out = model(x)
            watch(step, out, x, y)
            loss_fn(out, y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return model, logits


@scenario(
    "psaltery_bridge_pin_tuning_nll_classifier",
    "Adam",
    "output_logit_divergence",
    "head",
    None,
    heldout=True,
    note="a classifier of which bridge pin a psaltery string is tuned against, trained with "
    "F.nll_loss; the model's final LogSoftmax was dropped in a refactor, so the loss is "
    "-logit[target] on the raw head output: it has no minimum, the head's logits grow without "
    "bound (over 20x their start) and the 'NLL' goes negative",
)
def h390_psaltery_nll_without_log_softmax(ctx: Context) -> None:
    _, logits = _psaltery(False, 200, ctx)
    ls = ctx.losses
    _, ref = _psaltery(True, 200)
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "max |logit| over the last 20 steps over 20x that of the first 5",
        _mean(logits[-20:]) > 20 * _mean(logits[:5]),
    )
    ctx.check("the 'NLL' is negative by the end (impossible for a true NLL)", _mean(ls[-10:]) < 0)
    ctx.check(
        "with the LogSoftmax the logits grow under a quarter as much",
        _mean(ref[-20:]) / _mean(ref[:5]) < 0.25 * _mean(logits[-20:]) / _mean(logits[:5]),
    )


# -- sharpness: a warm-up without its min(., 1) ----------------------------------------------------


def _sharpness(model, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the MSE on (x, y) by power iteration."""
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    "lahar_deposit_thickness_warmup_sgd_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=20,
    note="a tanh regressor of lahar deposit thickness trained with plain SGD under a hand-written "
    "linear warm-up lr = 0.1 * step / 20 that misses its min(., 1): after step 20 the lr keeps "
    "rising linearly, passes 2/sharpness (measured by power iteration on the Hessian) and the "
    "loss blows up",
)
def h390_lahar_warmup_no_cap(ctx: Context) -> None:
    gen = seeded(39002)
    model = Trunk(10, 64, act=nn.Tanh)
    peak = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    data = _readings(gen, 128, 10, 390021)
    px, py = next(_readings(torch.Generator().manual_seed(390022), 256, 10, 390021))
    lrs, sharp = [], {}

    def before(step):
        lr = peak * (step + 1) / 20  # the bug: no min(1.0, ...)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        if step % 10 == 0:
            sharp[step] = _sharpness(model, px, py)

    _train(ctx, model, opt, data, 300, F.mse_loss, before=before)
    ls = ctx.losses
    blow = next(
        (i for i in range(20, len(ls)) if not math.isfinite(ls[i]) or ls[i] > 100 * min(ls[:i])),
        None,
    )
    ctx.check("the loss blows up after the onset (over 100x its minimum so far)", blow is not None)
    ctx.check("the loss fell during warm-up", _mean(ls[15:20]) < 0.5 * _mean(ls[:5]))
    if blow is None:
        return
    prior = [s for s in sharp if s <= blow - 5]
    k = max(prior) if prior else 0
    ctx.check(
        "lr x sharpness over 2 shortly before the blow-up",
        lrs[k] * sharp[k] > 2.0 if prior else False,
    )
    ctx.check("lr x sharpness under 2 at the onset (step 20)", lrs[20] * sharp[20] < 2.0)


# -- data outlier: one logger's shard in cm/s ------------------------------------------------------


@scenario(
    "graupel_fall_speed_logger_shard_regressor",
    "SGD momentum",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=110,
    note="a regressor of graupel pellet fall speed from disdrometer readings, SGD momentum 0.9 "
    "with clipping at 1; one logger's shard records the speed in cm/s instead of m/s, so the "
    "batch of step 110 has targets 100x; the loss and gradient spike at that batch, the clip "
    "bounds the update and the run recovers",
)
def h390_graupel_cm_shard(ctx: Context) -> None:
    gen = seeded(39003)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    data = _readings(gen, 64, 8, 390031)

    def alter(step, x, y):
        return (x, y * 100.0) if step == 110 else (x, y)

    _train(ctx, model, opt, data, 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "the loss at step 110 over 100x the median of 90-109", ls[110] > 100 * _median(ls[90:110])
    )
    ctx.check(
        "the gradient at step 110 over 20x the median of 90-109", gs[110] > 20 * _median(gs[90:110])
    )
    ctx.check(
        "the run recovers (steps 180-219 under 2x steps 90-109)",
        _mean(ls[180:]) < 2 * _mean(ls[90:110]),
    )


# -- Adam's second moment: a loss-weight table gives 1e5 for one step ------------------------------


def _ocarina(spike, steps, seed, ctx=None):
    gen = seeded(seed)
    model = Trunk(6, 48, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = _readings(gen, 64, 6, 390041)
    moved = []
    state = {"prev": _flat(model)}

    def weight(step, loss, x, y):
        return loss * (1e5 if spike and step == 60 else 1.0)

    def after(step):
        now = _flat(model)
        moved.append(float((now - state["prev"]).abs().median()))
        state["prev"] = now

    if ctx is not None:
        _train(ctx, model, opt, data, steps, F.mse_loss, weight=weight, after=after)
        return moved, ctx.losses
    losses = []
    for step in range(steps):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        weight(step, loss, x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        after(step)
    return moved, losses


@scenario(
    "ocarina_breath_pressure_pitch_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=60,
    note="a regressor of an ocarina's pitch from breath pressure, Adam; a loss-weight table "
    "indexed by epoch falls back to its 'debug' entry 1e5 at the step where the epoch counter "
    "rolls over (step 60), so one gradient 1e5x the usual fills Adam's second moment and the "
    "updates of the next hundred steps are tiny: the loss stalls where it stood",
)
def h390_ocarina_loss_weight_rollover(ctx: Context) -> None:
    moved, ls = _ocarina(True, 200, 39004, ctx)
    _, ref = _ocarina(False, 200, 39004)
    gs = ctx.grad_norms
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "the gradient at step 60 over 1000x the median before", gs[60] > 1000 * _median(gs[:60])
    )
    ctx.check(
        "the median per-weight update over steps 90-150 under a tenth of steps 30-59",
        _mean(moved[90:150]) < 0.1 * _mean(moved[30:60]),
    )
    ctx.check(
        "the gradients after are not smaller (steps 90-150 over half of steps 30-59)",
        _mean(gs[90:150]) > 0.5 * _mean(gs[30:60]),
    )
    ctx.check(
        "the loss stalls (last 20 over 0.7x steps 50-59) while the clean run keeps falling",
        _mean(ls[-20:]) > 0.7 * _mean(ls[50:60]) and _mean(ref[-20:]) < 0.7 * _mean(ref[50:60]),
    )


# -- gradient spike: one step's loss summed over the batch -----------------------------------------


@scenario(
    "washboard_road_corrugation_onset_bce_classifier",
    "SGD Nesterov",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=90,
    note="a BCE classifier of whether a gravel-road section develops washboard corrugations "
    "(traffic, moisture, grading readings; 10% of labels noisy), SGD with Nesterov momentum; "
    "a leftover branch for a short last batch computes the step-90 loss "
    "with reduction='sum' instead of 'mean', so one clean batch's gradient is 64x; the run "
    "jolts and recovers",
)
def h390_washboard_sum_reduction(ctx: Context) -> None:
    gen = seeded(39005)
    model = Trunk(8, 64, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    data = _binary(gen, 64, 8, 390051, flip=0.1)
    bce = F.binary_cross_entropy_with_logits

    def weight(step, loss, x, y):
        if step == 90:
            return bce(model(x), y, reduction="sum")
        return loss

    _train(ctx, model, opt, data, 200, bce, weight=weight)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "the gradient at step 90 over 30x the median of 70-89", gs[90] > 30 * _median(gs[70:90])
    )
    ctx.check(
        "the batch of step 90 is not an outlier (loss under 3x the median)",
        ls[90] < 3 * _median(ls[70:90]),
    )
    ctx.check(
        "the run recovers (last 30 under 2x steps 70-89)", _mean(ls[-30:]) < 2 * _mean(ls[70:90])
    )


# -- nonfinite: a Poisson rate through a ReLU with no floor ----------------------------------------


class CountNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(48, 1)
        self.rate_act = nn.ReLU()
        nn.init.constant_(self.head.bias, 2.0)

    def forward(self, x):
        return self.rate_act(self.head(self.act1(self.fc1(x)))).squeeze(-1)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate) + torch.lgamma(y + 1)).mean()


def _crystal_counts(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        lam = torch.exp(1.5 * x @ w / math.sqrt(d_in) - 0.5)
        yield x, torch.poisson(lam, generator=gen)


@scenario(
    "hoarfrost_crystal_count_poisson_net",
    "Adamax",
    "nonfinite",
    "rate_act",
    127,
    heldout=True,
    note="a Poisson regressor of hoarfrost crystal counts per plate whose rate is a ReLU of the "
    "head with no floor (the clamp_min(1e-6) is missing) and a hand-written NLL "
    "rate - y * log(rate); once a low-count plate's rate reaches exactly 0, log(0) makes the "
    "loss non-finite (step 127)",
)
def h390_hoarfrost_relu_rate_log0(ctx: Context) -> None:
    gen = seeded(39006)
    model = CountNet(8)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    data = _crystal_counts(gen, 64, 8, 390061)
    seen = {}

    def watch(step, out, x, y):
        seen["rate"], seen["y"] = out.detach(), y

    _train(ctx, model, opt, data, 300, _poisson_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss non-finite at step 127, finite before", bad == 127 and _finite(ls[:127]))
    ctx.check("the rate holds an exact 0 at that step", bool((seen["rate"] == 0).any()))


# -- exploding gradients: the init std typed gain / fan_in ** 0.25 ---------------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, exponent):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=(5 / 3) / lin.in_features**exponent)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


def _layer_grads(model, x, y):
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    gs = [float(lin.weight.grad.norm()) for lin in model.layers]
    model.zero_grad()
    return gs


@scenario(
    "anchor_ice_riverbed_lift_deep_tanh_mlp",
    "RMSprop",
    "exploding_gradients",
    "layers.0",
    None,
    heldout=True,
    note="a 16-layer tanh MLP of how much riverbed gravel anchor ice lifts; the hand-written "
    "init's std is typed gain / fan_in ** 0.25 for gain / fan_in ** 0.5, an effective gain of "
    "about 4, so the net sits in the chaotic regime and the gradient grows layer on layer back "
    "through depth: layers.0's gradient is hundreds of times layers.15's, start to end",
)
def h390_anchor_ice_init_exponent(ctx: Context) -> None:
    gen = seeded(39007)
    model = DeepTanh(8, 32, 16, exponent=0.25)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    data = _readings(gen, 64, 8, 390071)
    px, py = next(_readings(torch.Generator().manual_seed(390072), 256, 8, 390071))
    start = _layer_grads(model, px, py)
    _train(ctx, model, opt, data, 120, F.mse_loss)
    end = _layer_grads(model, px, py)
    torch.manual_seed(390073)
    ref = _layer_grads(DeepTanh(8, 32, 16, exponent=0.5), px, py)
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("layers.0's gradient over 50x layers.15's at the start", start[0] > 50 * start[-1])
    ctx.check("and still over 30x at the end", end[0] > 30 * end[-1])
    ctx.check("at the intended exponent it is under 10x", ref[0] < 10 * ref[-1])
    ctx.check(
        "at the start the gradient grows layer on layer back through depth",
        all(a > b for a, b in zip(start[:-1], start[1:], strict=True)),
    )


# -- update ratio: a param group's lr typed 1e-9 ---------------------------------------------------


class GrainGRU(nn.Module):
    def __init__(self, d_in=4, hidden=32, classes=5):
        super().__init__()
        self.encoder = nn.Linear(d_in, 16)
        self.gru = nn.GRU(16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.gru(torch.tanh(self.encoder(x.transpose(1, 2))))
        return self.head(out[:, -1])


@scenario(
    "netsuke_ivory_grain_gru_classifier",
    "Adagrad",
    "update_ratio_out_of_range",
    "encoder",
    None,
    heldout=True,
    note="a GRU classifier of the grain of a netsuke blank from a line scan, Adagrad with three "
    "param groups; the encoder group's lr is typed 1e-9 for 1e-1, so the encoder never moves "
    "(updates under 1e-6 of its weights) while the GRU and the head train",
)
def h390_netsuke_encoder_lr_typo(ctx: Context) -> None:
    gen = seeded(39008)
    model = GrainGRU(2, 32, 5)
    opt = torch.optim.Adagrad(
        [
            {"params": model.encoder.parameters(), "lr": 1e-9},
            {"params": model.gru.parameters(), "lr": 5e-2},
            {"params": model.head.parameters(), "lr": 5e-2},
        ]
    )
    data = _traces(gen, 32, 5, 390081, length=24)
    enc0 = model.encoder.weight.detach().clone()
    head0 = model.head.weight.detach().clone()
    enc_grads = []

    def after(step):
        enc_grads.append(float(model.encoder.weight.grad.norm()))

    _train(ctx, model, opt, data, 120, F.cross_entropy, classifier=True, after=after)
    ls = ctx.losses
    enc_moved = float((model.encoder.weight.detach() - enc0).norm() / enc0.norm())
    head_moved = float((model.head.weight.detach() - head0).norm() / head0.norm())
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the encoder moved under 1e-6 of its norm", enc_moved < 1e-6)
    ctx.check("the head moved over 5% of its norm", head_moved > 0.05)
    ctx.check("the encoder's gradient is not zero", _median(enc_grads) > 1e-4)
    ctx.check("the loss fell (last 20 under 0.8x the first 10)", _fell(ls, 20, 0.8))


# -- plasticity: an lr typed 1e-1 for 1e-3 ---------------------------------------------------------


def _banjo(lr, seed, ctx=None, steps=200):
    gen = seeded(seed)
    model = Trunk(6, 64, act=nn.ReLU)
    opt = torch.optim.NAdam(model.parameters(), lr=lr)
    data = _readings(gen, 64, 6, 390092)
    probe = next(_readings(torch.Generator().manual_seed(390093), 256, 6, 390092))[0]

    def dead():
        with torch.no_grad():
            return dead_fraction(model.fc2(model.act1(model.fc1(probe))))

    deads = [dead()]
    silent = []

    def after(step):
        deads.append(dead())
        g = model.fc2.weight.grad
        silent.append(float((g.abs().sum(1) == 0).float().mean()))

    if ctx is not None:
        _train(ctx, model, opt, data, steps, F.mse_loss, after=after)
        return deads, silent
    losses = []
    for step in range(steps):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        after(step)
        opt.zero_grad(set_to_none=True)
    return deads, silent


@scenario(
    "banjo_bridge_placement_relu_regressor",
    "NAdam",
    "loss_of_plasticity",
    ("fc2", "act2"),
    None,
    heldout=True,
    note="a ReLU regressor of a banjo bridge's intonation offset from the strings' readings; the "
    "sweep config's lr reads 1e-1 for 1e-3, and NAdam's first large steps throw most of fc2's "
    "units negative for every input: over 60% of act2's units die for good, their rows of fc2 "
    "get exactly zero gradient and never come back",
)
def h390_banjo_lr_typo_dead_relus(ctx: Context) -> None:
    deads, silent = _banjo(1e-1, 39009, ctx)
    ref_deads, _ = _banjo(1e-3, 39009)
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("under 20% of act2's units dead at init", deads[0] < 0.2)
    ctx.check("over 60% dead for the last 50 steps", min(deads[-50:]) > 0.6)
    ctx.check("at lr 1e-3 under 20% stay dead", max(ref_deads[-50:]) < 0.2)
    ctx.check(
        "over half of fc2's rows got exactly zero gradient over the last 20 steps",
        _mean(silent[-20:]) > 0.5,
    )


# -- softmax collapse: a calibration temperature typed 0.002 ---------------------------------------


class TempClassifier(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(64, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))) / self.temperature


def _crwth(temperature, seed, ctx=None, steps=150):
    gen = seeded(seed)
    model = TempClassifier(10, 4, temperature)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    data = _grades(gen, 64, 10, 4, 390101, spread=1.0)
    frac = []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))

    if ctx is not None:
        _train(ctx, model, opt, data, steps, F.cross_entropy, classifier=True, watch=watch)
        return frac, ctx.losses
    for step in range(steps):
        x, y = next(data)
        out = model(x)
        watch(step, out, x, y)
        F.cross_entropy(out, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return frac, None


@scenario(
    "crwth_bridge_wear_temperature_classifier",
    "RAdam",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="a classifier of crwth bridge wear grade from bow-noise features whose config's "
    "temperature reads 0.002 for 0.2 (logits / T): the softmax saturates from the first "
    "steps, most rows give their target probability exactly 1.0 in float32 and the wrong "
    "rows get losses in the hundreds",
)
def h390_crwth_temperature_typo(ctx: Context) -> None:
    frac, ls = _crwth(0.002, 39010, ctx)
    ref, _ = _crwth(0.2, 39010)
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "over half the rows collapsed (p = 1.0) over the last 20 steps", _mean(frac[-20:]) > 0.5
    )
    ctx.check("at T = 0.2 under 5% of rows collapse", _mean(ref[-20:]) < 0.05)
    ctx.check("some step's loss over 50 (a confidently wrong row)", max(ls) > 50)


# -- controls --------------------------------------------------------------------------------------


@scenario(
    "melodeon_button_row_kd_student_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: knowledge distillation of which button row a melodeon phrase is played on: a "
    "frozen teacher (a wider MLP trained first) and a smaller student trained with "
    "T^2 * KL(teacher/T || student/T) at T = 4 plus cross-entropy (0.5 each), AdamW",
)
def h390_melodeon_kd_control(ctx: Context) -> None:
    gen = seeded(39011)
    data = _grades(gen, 64, 16, 6, 390111, spread=1.3)
    teacher = Trunk(16, 128, out=6, act=nn.GELU)
    topt = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    for _ in range(150):
        x, y = next(data)
        F.cross_entropy(teacher(x), y).backward()
        topt.step()
        topt.zero_grad(set_to_none=True)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = Trunk(16, 24, out=6, act=nn.GELU)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3, weight_decay=1e-2)
    T = 4.0

    def weight(step, loss, x, y):
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        kl = F.kl_div(
            F.log_softmax(s / T, -1),
            F.log_softmax(t / T, -1),
            log_target=True,
            reduction="batchmean",
        )
        return 0.5 * loss + 0.5 * T * T * kl

    _train(ctx, student, opt, data, 200, F.cross_entropy, classifier=True, weight=weight)
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss fell (last 20 under 0.6x the first 10)", _fell(ls, 20, 0.6))
    acc = _accuracy(student, _grades(torch.Generator().manual_seed(390112), 64, 16, 6, 390111, 1.3))
    ctx.check("held-out accuracy over 0.7 (chance 1/6)", acc > 0.7)
    ctx.check("the teacher stayed frozen", all(p.grad is None for p in teacher.parameters()))


@scenario(
    "pewter_spinning_wall_thickness_fp16_regressor",
    "NAdam",
    "healthy",
    heldout=True,
    note="control: a regressor of the wall thickness a pewter spinner leaves on a lathe, fp16 "
    "autocast with a GradScaler, NAdam under OneCycleLR, accumulation over 2, clipping at 1, "
    "Huber loss",
)
def h390_pewter_fp16_control(ctx: Context) -> None:
    gen = seeded(39012)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    data = _readings(gen, 64, 10, 390121, noise=0.1)
    _train(
        ctx,
        model,
        opt,
        data,
        200,
        F.huber_loss,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss fell (last 20 under 0.5x the first 10)", _fell(ls, 20, 0.5))
    ctx.check("the loss scale finite and positive", all(0 < s < math.inf for s in ctx.scales))


class Arcus(nn.Module):
    def __init__(self, channels=2, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(F.max_pool1d(self.act1(self.conv1(x)), 2)))
        return self.head(h.mean(-1))


@scenario(
    "roll_cloud_arcus_front_conv1d_classifier",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="control: a Conv1d classifier of an arcus cloud front's type from pressure and wind "
    "traces, SGD Nesterov with a linear warm-up then cosine decay (LambdaLR), label smoothing "
    "0.1, clipping at 1, 10% of labels noisy",
)
def h390_arcus_conv1d_control(ctx: Context) -> None:
    gen = seeded(39013)
    model = Arcus()
    opt = torch.optim.SGD(
        model.parameters(), lr=1e-1, momentum=0.9, nesterov=True, weight_decay=1e-4
    )

    def lam(step):
        return (step + 1) / 20 if step < 20 else 0.5 * (1 + math.cos(math.pi * (step - 20) / 200))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    data = _traces(gen, 32, 4, 390131)

    def alter(step, x, y):
        noisy = torch.rand(len(y), generator=gen) < 0.1
        return x, torch.where(noisy, torch.randint(0, 4, y.shape, generator=gen), y)

    def smooth(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(ctx, model, opt, data, 220, smooth, classifier=True, alter=alter, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss fell (last 20 under 0.7x the first 10)", _fell(ls, 20, 0.7))
    acc = _accuracy(model, _traces(torch.Generator().manual_seed(390132), 64, 4, 390131))
    ctx.check("held-out accuracy over 0.7 (chance 0.25)", acc > 0.7)
