"""Held-out set 284 (``h284_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: an escaramuza pass-timing tanh regressor whose per-step
ExponentialLR gamma was typed 1.03 for 0.97, a pizzaiolo dough-proof SiLU regressor whose log
feature layer meets a CO2 probe reading 0.0, a hurley ash-billet SiLU regressor whose last
partial batch of an epoch is reduced by sum, a gusle epic-meter GELU classifier whose
temperature was written 1e-3 after a unit refactor, an oyster-tonging catch ReLU regressor fed
one shard of bed depths in centimetres, a kokle pluck depthwise-separable SiLU Conv1d
classifier whose body group got lr 1e-8 for 1e-2, a tonkori string-tone ReLU classifier under
NAdam at lr 0.1 for 1e-3, a lusheng breath-phrase ReLU recurrent cell with its identity init
scaled by the tanh gain 5/3, an iridescent-cloud hue BCE tagger whose merged observer reports
lost their clamp, a shelf-cloud gust-front SiLU regressor whose hand-written decoupled weight
decay has its sign flipped, and three controls (a bawu reed-note GELU classifier with OneCycleLR
and heavy AdamW weight decay, an ice-pancake diameter Huber regressor under fp16 autocast with
a GradScaler and param groups, a frost-ring width Gaussian-NLL net with RMSprop,
ReduceLROnPlateau and gradient accumulation).

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


class _Twin:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


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
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=None,
    accumulate=1,
    weight=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step, ``weight(step)`` multiplies the backpropagated loss (the logged loss is
    the unweighted one); ``amp``: an autocast dtype; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        w = weight(step) if weight is not None else 1.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = model(x)
            out = out.float() if amp is not None else out
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = w * loss / accumulate
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


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _top_eig(model, loss_fn, x, y, iters=15):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((h * u).sum()) for h, u in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


def _top_eig(model, loss_fn, x, y, iters=15):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((h * u).sum()) for h, u in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- escaramuza: ExponentialLR gamma typed 1.03 for 0.97 -----------------------------------------


@scenario(
    family="escaramuza_pass_timing_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the timing error of an escaramuza team's crossing pass from 8 standardised readings (gallop speed, rein angle, skirt sweep, arena distance), plain SGD at 0.05, MSE, and a per-step ExponentialLR meant to decay the rate with gamma 0.97. The gamma was typed 1.03, so the rate grows 3% every step; the measured lr x top Hessian eigenvalue starts well under 2, crosses the 2/sharpness stability limit, and the loss then blows up. Nothing is wrong with the data or the init.",
)
def h284_escaramuza_gamma_above_one(ctx: Context) -> None:
    gen = seeded(28401)
    model = Stack(8, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.03)
    px, py = next(_readings(torch.Generator().manual_seed(7), 256, 8, 41))
    products: dict[int, float] = {}

    def before(step):
        if step % 5 == 0:
            lr = opt.param_groups[0]["lr"]
            products[step] = lr * _top_eig(model, F.mse_loss, px, py)

    _train(ctx, model, opt, _readings(gen, 64, 8, 41), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(ls[:60])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    crossed = next((s for s in sorted(products) if products[s] > 2.0), None)
    ctx.check("the loss fell at first", _fell(ls[:40]))
    ctx.check("lr x sharpness was under 1 at the start", products[0] < 1.0)
    ctx.check("lr x sharpness crossed 2", crossed is not None)
    ctx.check(
        "the loss blew up (over 100x its low) after the crossing",
        blow is not None and crossed is not None and blow >= crossed,
    )


# -- pizzaiolo: log feature layer meets a CO2 probe reading 0.0 ----------------------------------

ONSET_PIZZA = 90


class LogFeatures(nn.Module):
    """log of the raw positive probe readings (CO2 rate, dough mass, room humidity), kept
    next to the already standardised ones; no floor on the raw readings."""

    def __init__(self, n_log):
        super().__init__()
        self.n_log = n_log

    def forward(self, x):
        return torch.cat([torch.log(x[:, : self.n_log]), x[:, self.n_log :]], 1)


class ProofNet(nn.Module):
    def __init__(self, d_in=10, n_log=3, hidden=48):
        super().__init__()
        self.logf = LogFeatures(n_log)
        self.body = Stack(d_in, hidden=hidden, act=nn.SiLU)

    def forward(self, x):
        return self.body(self.logf(x))


def _proofs(gen, batch, seed):
    base = _readings(gen, batch, 10, seed)
    while True:
        x, y = next(base)
        x = x.clone()
        x[:, :3] = torch.exp(0.5 * x[:, :3])  # the raw probes read positive, log-normal
        yield x, y


@scenario(
    family="pizzaiolo_dough_proof_log_feature_silu_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("logf",),
    diverges=ONSET_PIZZA,
    heldout=True,
    onset=ONSET_PIZZA,
    note="A SiLU regressor (logf, then body.fc1, body.act1, body.fc2, body.act2, body.head) predicting how far a pizzaiolo's dough has proofed from 10 readings, three of them raw positive probe readings (CO2 rate, dough mass, humidity) that the logf layer takes the log of with no floor; Adam at 1e-3, MSE. At step 90 a batch carries a row from a CO2 probe that had not warmed up and reads exactly 0.0: log(0) = -inf in logf, fc1 turns it into infinities, SiLU(-inf) = -inf * 0 = NaN, and the loss is NaN at step 90. The run stops there.",
)
def h284_pizzaiolo_log_of_zero_probe(ctx: Context) -> None:
    gen = seeded(28402)
    model = ProofNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen: dict[int, bool] = {}

    def alter(step, x, y):
        if step == ONSET_PIZZA:
            x = x.clone()
            x[5, 0] = 0.0
        return x, y

    def watch(step, out, x, y):
        with torch.no_grad():
            seen[step] = bool(torch.isinf(model.logf(x)).any())

    _train(ctx, model, opt, _proofs(gen, 64, 42), 150, F.mse_loss, alter=alter, watch=watch)
    ls = ctx.losses
    ctx.check("finite before step 90", _finite(ls[:ONSET_PIZZA]))
    ctx.check("the loss fell before step 90", _fell(ls[:ONSET_PIZZA], ratio=0.7))
    ctx.check("logf produced -inf at step 90", seen.get(ONSET_PIZZA, False))
    ctx.check("logf was finite before step 90", not any(seen[s] for s in range(ONSET_PIZZA)))
    ctx.check("the first non-finite loss is at step 90", _first_bad(ls) == ONSET_PIZZA)


# -- hurley: the last partial batch of an epoch is reduced by sum --------------------------------

ONSET_HURLEY = 120


@scenario(
    family="hurley_ash_billet_grain_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_HURLEY,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how well a hurley maker's ash billet will hold its grain through the bas from 12 standardised readings, SGD Nesterov momentum 0.9 at 1e-2, MSE, clipping at 1.0. The loss helper switches to reduction='sum' for the epoch's last batch (a branch copied from the evaluation code, meant to sum then divide by the dataset size); at step 120 the backpropagated loss is therefore 64x the mean on an ordinary batch. The gradient jumps about 64x for that one step, clipping bounds the update and the run recovers; the logged (mean) loss is ordinary.",
)
def h284_hurley_sum_reduction_one_step(ctx: Context) -> None:
    gen = seeded(28403)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 43),
        220,
        F.mse_loss,
        clip=1.0,
        weight=lambda step: 64.0 if step == ONSET_HURLEY else 1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    before = gs[ONSET_HURLEY - 20 : ONSET_HURLEY]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the spike", _fell(ls[:ONSET_HURLEY], ratio=0.6))
    ctx.check(
        "the gradient at step 120 is over 30x the median before",
        gs[ONSET_HURLEY] > 30 * _median(before),
    )
    ctx.check(
        "the logged loss at step 120 is ordinary (under 3x the median before)",
        ls[ONSET_HURLEY] < 3 * _median(ls[ONSET_HURLEY - 20 : ONSET_HURLEY]),
    )
    ctx.check(
        "the loss recovered (last 20 under 2x the 20 before the spike)",
        _mean(ls[-20:]) < 2 * _mean(ls[ONSET_HURLEY - 20 : ONSET_HURLEY]),
    )


# -- gusle: the temperature written 1e-3 after a unit refactor -----------------------------------


class TemperedHead(nn.Module):
    def __init__(self, hidden, classes, temperature):
        super().__init__()
        self.fc = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, h):
        return self.fc(h) / self.temperature


class MeterNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=6, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = TemperedHead(hidden, classes, temperature)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="gusle_epic_meter_tempered_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU classifier (fc1, act1, fc2, act2, head with head.fc and a temperature) naming which of 6 decasyllabic meter variants a guslar's epic line follows from 16 standardised bow and voice features, Adamax at 2e-3, cross-entropy. The head divides by a temperature of 1.0 that a config refactor from milliseconds to seconds rewrote as 1e-3: the logits are 1000x too large from the start, the softmax saturates and most rows' probabilities round to exactly 0 and 1 in float32 while the wrong rows carry huge losses.",
)
def h284_gusle_temperature_in_milliseconds(ctx: Context) -> None:
    gen = seeded(28404)
    model = MeterNet(temperature=1e-3)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fracs: list[float] = []

    def watch(step, out, x, y):
        fracs.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, 44),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "over a third of the rows' softmax is exactly 1.0 on average (last 50)",
        _mean(fracs[-50:]) > 1 / 3,
    )
    ctx.check("rows collapsed from the first steps", _mean(fracs[:10]) > 0.1)


# -- oyster tonging: one shard of bed depths in centimetres --------------------------------------

ONSET_OYSTER = 110


@scenario(
    family="oyster_tonging_catch_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_OYSTER,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing an oyster tonger's catch per lick from 10 standardised readings (bed depth, tong width, salinity, tide), SGD momentum 0.9 at 1e-2, MSE, clipping at 1.0. One boat's shard logged the bed depth and tong reach in centimetres instead of metres; the standardisation (fitted on the other shards) leaves them hundreds of standard deviations out, and the batch at step 110 carries six such rows. The loss and the gradient jump on that one batch, clipping bounds the step and the run recovers.",
)
def h284_oyster_tonging_centimetre_shard(ctx: Context) -> None:
    gen = seeded(28405)
    model = Stack(10, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_OYSTER:
            x = x.clone()
            x[:6, :2] = 100.0 * x[:6, :2] + 300.0
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 45), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    before = ls[ONSET_OYSTER - 20 : ONSET_OYSTER]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the shard", _fell(ls[:ONSET_OYSTER], ratio=0.6))
    ctx.check(
        "the loss at step 110 is over 50x the median before",
        ls[ONSET_OYSTER] > 50 * _median(before),
    )
    ctx.check(
        "the gradient at step 110 is over 20x the median before",
        gs[ONSET_OYSTER] > 20 * _median(gs[ONSET_OYSTER - 20 : ONSET_OYSTER]),
    )
    ctx.check(
        "the loss recovered (last 20 under 2x the 20 before)", _mean(ls[-20:]) < 2 * _mean(before)
    )


# -- kokle: the depthwise body's param group got lr 1e-8 for 1e-2 --------------------------------


class PluckNet(nn.Module):
    """stem Conv1d -> SiLU -> depthwise Conv1d -> SiLU -> pointwise Conv1d -> SiLU -> max pool -> head."""

    def __init__(self, width=16, classes=5):
        super().__init__()
        self.stem = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.SiLU()
        self.dw = nn.Conv1d(width, width, 7, padding=3, groups=width)
        self.act2 = nn.SiLU()
        self.pw = nn.Conv1d(width, 2 * width, 1)
        self.act3 = nn.SiLU()
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = self.act3(self.pw(self.act2(self.dw(self.act1(self.stem(x[:, None]))))))
        return self.head(h.amax(-1))


def _plucks(gen, batch, classes=5, length=64):
    """Decaying plucked-string tones; the class is the string (its frequency)."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = 0.05 + 0.06 * y.float() + 0.01 * torch.randn(batch, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        decay = torch.exp(-t / (20 + 20 * torch.rand(batch, 1, generator=gen)))
        x = torch.sin(6.28 * f[:, None] * t + phase) * decay
        yield x + 0.2 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="kokle_string_pluck_depthwise_silu_cnn",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("dw", "pw", "stem"),
    diverges=None,
    heldout=True,
    note="A depthwise-separable Conv1d net with SiLU activations (stem, dw with groups=16, pw, head after a global max pool) naming which of 5 kokle strings was plucked from a 64-sample recording, RAdam with two param groups: the convolutional body (stem, dw, pw) and the head. The body group's lr was typed 1e-8 instead of 1e-2 (head 1e-2): the body's updates are under 1e-6 of its weights each step, effectively frozen at its random init, while the head trains on random features and the loss stays far above a twin run with the body at 1e-2.",
)
def h284_kokle_body_group_lr_typo(ctx: Context) -> None:
    gen = seeded(28406)
    model = PluckNet()
    body = [*model.stem.parameters(), *model.dw.parameters(), *model.pw.parameters()]
    opt = torch.optim.RAdam(
        [{"params": body, "lr": 1e-8}, {"params": model.head.parameters(), "lr": 1e-2}]
    )
    ratios: dict[str, list[float]] = {"dw": [], "head": []}
    snap: dict[str, torch.Tensor] = {}

    def before(step):
        snap["dw"] = model.dw.weight.detach().clone()
        snap["head"] = model.head.weight.detach().clone()

    def after(step):
        for name in ("dw", "head"):
            w = getattr(model, name).weight.detach()
            ratios[name].append(float((w - snap[name]).norm() / w.norm()))

    _train(
        ctx,
        model,
        opt,
        _plucks(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "dw's update ratio stayed under 1e-6 after RAdam's warm-up", max(ratios["dw"][10:]) < 1e-6
    )
    ctx.check("the head's median update ratio is over 1e-4", _median(ratios["head"]) > 1e-4)
    twin = _Twin()
    seeded(28406)
    fixed = PluckNet()
    body = [*fixed.stem.parameters(), *fixed.dw.parameters(), *fixed.pw.parameters()]
    fixed_opt = torch.optim.RAdam(
        [{"params": body, "lr": 1e-2}, {"params": fixed.head.parameters(), "lr": 1e-2}]
    )
    _train(
        twin,
        fixed,
        fixed_opt,
        _plucks(torch.Generator().manual_seed(28406), 64),
        200,
        F.cross_entropy,
    )
    ctx.check("the twin with body lr 1e-2 fell by half", _fell(twin.losses, ratio=0.5))
    ctx.check(
        "the run ends over 1.5x the twin's loss",
        _mean(ls[-20:]) > 1.5 * _mean(twin.losses[-20:]),
    )


# -- tonkori: NAdam at lr 0.1 for 1e-3 kills the ReLUs --------------------------------------------


TONKORI_LR = 0.1


@scenario(
    family="tonkori_string_tone_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (fc1, act1, fc2, act2, head) naming which of 8 tonkori string tones a 20-feature spectral frame holds, NAdam with its lr typed 0.1 for 1e-3, cross-entropy. The first large steps push most of fc2's pre-activations negative on every input: a large share of act2's units never fires again, they get no gradient and stop learning for good; the net carries on with the survivors. Finite throughout.",
)
def h284_tonkori_nadam_lr_typo(ctx: Context) -> None:
    gen = seeded(28407)
    model = Stack(20, hidden=64, out=8)
    opt = torch.optim.NAdam(model.parameters(), lr=TONKORI_LR)
    probe = next(_kinds(torch.Generator().manual_seed(9), 512, 20, 8, 47))[0]

    def dead_now():
        with torch.no_grad():
            return dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe)))))

    dead = [dead_now()]
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 8, 47),
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda step: dead.append(dead_now()),
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 10% of act2 dead at init", dead[0] < 0.1)
    ctx.check("over 40% of act2 dead at the end", dead[-1] > 0.4)
    ctx.check("they stayed dead over the last 100 steps", min(dead[-100:]) > 0.3)


# -- lusheng: an identity recurrent init scaled by the tanh gain 5/3 -----------------------------


LUSHENG_T = 12
LUSHENG_LR = 3e-3


class ReluCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden)

    def forward(self, x, h):
        return torch.relu(self.ih(x) + self.hh(h))


class PhraseRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, classes=5, gain=1.0):
        super().__init__()
        self.cell = ReluCell(d_in, hidden)
        self.head = nn.Linear(hidden, classes)
        nn.init.eye_(self.cell.hh.weight)
        with torch.no_grad():
            self.cell.hh.weight.mul_(gain)
        nn.init.zeros_(self.cell.hh.bias)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hh.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


def _phrases(gen, batch, length=LUSHENG_T, classes=5):
    """Breath-pressure phrases: a class-dependent contour plus noise, 4 channels."""
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        base = torch.sin(3.14 * (1 + y.float())[:, None] * t)
        x = torch.stack([base, torch.cos(3.14 * y.float()[:, None] * t), base**2, -base], -1)
        yield x + 0.3 * torch.randn(batch, length, 4, generator=gen), y


@scenario(
    family="lusheng_breath_phrase_relu_cell",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.hh", "cell"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU recurrent cell (cell.ih, cell.hh; IRNN-style identity recurrent init) read over 12-step breath-pressure phrases of a lusheng player, then a head naming one of 5 phrase types, plain SGD at 3e-3, cross-entropy, clipping at 1.0. The init multiplies the identity by nn.init.calculate_gain('tanh') = 5/3, copied from the tanh cell's recipe: every step through cell.hh amplifies the state and the gradient flowing back through time, the gradient on the first state is over 30x the last one's and the raw gradient norm stays far above the clip; clipping keeps the run finite but it trains poorly.",
)
def h284_lusheng_identity_times_tanh_gain(ctx: Context) -> None:
    gen = seeded(28408)
    model = PhraseRNN(gain=5 / 3)
    opt = torch.optim.SGD(model.parameters(), lr=LUSHENG_LR)
    through: list[float] = []

    def after(step):
        first, last = model.states[0].grad, model.states[-1].grad
        if first is not None and last is not None and float(last.norm()) > 0:
            through.append(float(first.norm() / last.norm()))

    _train(
        ctx,
        model,
        opt,
        _phrases(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the gradient on the first state is over 30x the last state's at step 0", through[0] > 30
    )
    ctx.check(
        "the first state's gradient stays over 10x the last's (median)", _median(through) > 10
    )
    ctx.check("the raw gradient norm stays over 10x the clip (median)", _median(gs) > 10)


# -- iridescent cloud: merged observer reports lost their clamp ----------------------------------


def _hue_reports(gen, batch, d_in=12, tags=6, seed=49):
    """Three observers' multi-hot hue-band reports, merged by summing; the clamp(max=1) that
    should follow the merge was lost."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, tags, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        p = torch.sigmoid(x @ w / math.sqrt(d_in) * 2)
        merged = sum((torch.rand(batch, tags, generator=gen) < p).float() for _ in range(3))
        yield x, merged


@scenario(
    family="iridescent_cloud_hue_band_bce_tagger",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU tagger (fc1, act1, fc2, act2, head) marking which of 6 hue bands an iridescent cloud shows from 12 standardised sky-camera features, BCE with logits, AdamW at 1e-2 without weight decay. The labels merge three observers' multi-hot reports by summing, and the clamp(max=1) after the merge was lost in a refactor: targets of 2 and 3 make the BCE keep falling as the logits grow, so the head's logits grow without bound (over 20x and still growing at the end) and the loss goes negative. Finite throughout.",
)
def h284_iridescent_cloud_unclamped_merge(ctx: Context) -> None:
    gen = seeded(28409)
    model = Stack(12, hidden=48, out=6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe = next(_hue_reports(torch.Generator().manual_seed(3), 256))[0]

    def peak_now():
        with torch.no_grad():
            return float(model(probe).abs().max())

    peaks = [peak_now()]
    _train(
        ctx,
        model,
        opt,
        _hue_reports(gen, 64),
        200,
        F.binary_cross_entropy_with_logits,
        after=lambda step: peaks.append(peak_now()),
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("it was still growing over the last 50 steps", peaks[-1] > 1.2 * peaks[-50])
    ctx.check("the loss went negative", min(ls) < 0)


# -- shelf cloud: hand-written decoupled weight decay with its sign flipped ----------------------


SHELF_WD = 0.2


@scenario(
    family="shelf_cloud_gust_front_silu_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the gust-front wind jump under a shelf cloud from 10 standardised station readings, Adagrad at 5e-2, MSE, with a hand-written decoupled weight decay after each step that should shrink the weight matrices by (1 - lr * wd) but multiplies them by (1 + lr * wd), wd = 0.2. The loss falls at first; as Adagrad's steps shrink the flipped decay wins, the weights inflate a little every step and the loss climbs slowly and steadily to several times its low. No single step jumps, nothing blows up.",
)
def h284_shelf_cloud_decay_sign_flipped(ctx: Context) -> None:
    gen = seeded(28410)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    mats = [p for p in model.parameters() if p.dim() > 1]
    norms = [float(torch.stack([p.detach().norm() for p in mats]).norm())]

    def after(step):
        with torch.no_grad():
            for p in mats:
                p.mul_(1 + 5e-2 * SHELF_WD)
        norms.append(float(torch.stack([p.norm() for p in mats]).norm()))

    _train(ctx, model, opt, _readings(gen, 64, 10, 50), 300, F.mse_loss, after=after)
    ls = ctx.losses
    sm = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    low = min(sm)
    at = sm.index(low)
    jumps = [sm[i + 20] / sm[i] for i in range(at, len(sm) - 20)]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell at first", _fell(ls[:60], ratio=0.8))
    ctx.check("the 20-step mean climbed to over 3x its low", sm[-1] > 3 * low)
    ctx.check("the weight norm grew over 2x", norms[-1] > 2 * norms[0])
    ctx.check("gradual: no 20-step mean over 2x the one before it", max(jumps) < 2.0)


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="bawu_reed_note_onecycle_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU classifier (fc1, act1, fc2, act2, head) naming which of 7 bawu notes a 16-feature reed-vibration frame holds, AdamW with heavy weight decay 0.5, OneCycleLR to 1e-2 over 200 steps, label smoothing 0.1, clipping at 1.0. It trains normally.",
)
def h284_bawu_onecycle_heavy_decay(ctx: Context) -> None:
    gen = seeded(28411)
    model = Stack(16, hidden=64, out=7, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 7, 51),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    px, py = next(_kinds(torch.Generator().manual_seed(11), 512, 16, 7, 51))
    with torch.no_grad():
        acc = float((model(px).argmax(1) == py).float().mean())
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("held-out accuracy over 0.8", acc > 0.8)


@scenario(
    family="ice_pancake_diameter_fp16_huber_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the diameter of pancake ice from 10 standardised wave and temperature readings with a few heavy-tailed targets, Huber loss, fp16 autocast with a torch.amp.GradScaler, SGD momentum 0.9 with two param groups (body 2e-2, head 1e-2), clipping at 1.0 after unscaling. It trains normally.",
)
def h284_ice_pancake_fp16_param_groups(ctx: Context) -> None:
    gen = seeded(28412)
    model = Stack(10, hidden=48, act=nn.SiLU)
    body = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.SGD(
        [{"params": body, "lr": 2e-2}, {"params": model.head.parameters(), "lr": 1e-2}],
        momentum=0.9,
    )
    scaler = torch.amp.GradScaler("cpu")
    base = _readings(gen, 64, 10, 52)

    def noisy():
        while True:
            x, y = next(base)
            tail = torch.distributions.StudentT(2.0).sample((len(y),)) * 0.1
            yield x, y + tail

    _train(ctx, model, opt, noisy(), 200, F.huber_loss, clip=1.0, scaler=scaler, amp=torch.float16)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check(
        "the scale stayed finite and positive", all(math.isfinite(s) and s > 0 for s in ctx.scales)
    )


class MeanVarNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.body = Stack(d_in, hidden=hidden, out=2, act=nn.Tanh)

    def forward(self, x):
        return self.body(x)


def _ring_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return F.gaussian_nll_loss(mean, y, log_var.exp())


def _rings(gen, batch, seed=53):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        sd = 0.1 + 0.4 * torch.sigmoid(x[:, 0])
        yield x, torch.tanh(x @ w / 3) + sd * torch.randn(batch, generator=gen)


@scenario(
    family="frost_ring_width_gaussian_nll_net",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tanh net (body.fc1, body.act1, body.fc2, body.act2, body.head) predicting the mean and clamped log-variance of a tree's frost-ring width from 8 standardised late-frost readings with heteroscedastic noise, Gaussian NLL, RMSprop at 2e-3, ReduceLROnPlateau, gradient accumulation over 2, clipping at 5. It trains normally.",
)
def h284_frost_ring_nll_plateau(ctx: Context) -> None:
    gen = seeded(28413)
    model = MeanVarNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(ctx, model, opt, _rings(gen, 32), 200, _ring_nll, clip=5.0, sched=sched, accumulate=2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the NLL fell by over 0.5 nats", _mean(ls[:3]) - _mean(ls[-20:]) > 0.5)
