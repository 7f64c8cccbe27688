"""Held-out set 202 (``h202_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a parchment-scraping SiLU MLP whose validation pass
backpropagates a summed loss into .grad, a sousaphone valve-slide tanh regressor with a
hand-written weight decay whose sign was lost, a bog-snorkelling GELU regressor taking the log
of a turbidity reading of 0, a fife-tune Elman RNN whose recurrent init read the input width,
a wainwright wheel-dish tanh regressor with a summed loss and a batch-size ramp, a lyre pluck
classifier whose unfreeze callback wrote initial_lr, a cricket-ball swing regressor fed one
shard in millimetres, a quill-nib SiLU regressor whose logging hook rescales the loss before
backward, a twill-weave classifier multiplying its logits by the distillation temperature, a
fulling-mill ReLU MLP fed raw readings, and three controls (a rogue-wave crest GELU MLP with
heavy-tailed targets under Huber, a cordage SiLU regressor under ReduceLROnPlateau, a hornpipe
step 1-D CNN).

Each fault is induced the way it happens in practice and checked with ``ctx.check``.
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


def _updates(params):
    """Snapshot helper: returns a function giving the mean |change| since the snapshot."""
    start = _snapshot(params)

    def moved():
        delta = sum(float((p.detach() - s).abs().sum()) for p, s in zip(params, start, strict=True))
        count = sum(p.numel() for p in params)
        for s, p in zip(start, params, strict=True):
            s.copy_(p.detach())
        return delta / count

    return moved


# -- parchment maker: a validation pass that backpropagates a summed loss into .grad ------------


@scenario(
    family="parchment_scraping_thickness_silu_mlp",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a parchment skin's thickness "
    "after scraping from 12 readings (lime days, stretch, scraper passes, ...), Adam at 1e-3, "
    "MSE. At step 60 the trainer's mid-epoch validation runs 4096 held-out skins through the "
    "shared criterion, which the validation code had switched to reduction='sum', outside "
    "torch.no_grad, and calls backward on it to 'check the graph'; the gradients land in "
    ".grad before the training step's optimizer.step(), so one gradient is thousands of times "
    "the usual. It fills Adam's second moment (beta2 0.999), the updates afterwards are tens of "
    "times smaller and the loss stalls far above where the run was heading.",
)
def h202_parchment_validation_backward(ctx: Context) -> None:
    gen = seeded(20201)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    val_x, val_y = next(_readings(torch.Generator().manual_seed(7), 4096, 12, seed=21))
    summed = nn.MSELoss(reduction="sum")
    params = list(model.parameters())
    moved = _updates(params)
    sizes = []

    def after(step, when):
        if when == "grad" and step == 60:
            summed(model(val_x), val_y).backward()  # the validation pass's stray backward
        if when == "step":
            sizes.append(moved())

    _train(ctx, model, opt, _readings(gen, 32, 12, seed=21), 240, F.mse_loss, after=after)
    g = ctx.grad_norms
    ctx.check("gradient at step 60 over 1000x the median before", g[60] > 1000 * _median(g[:60]))
    ctx.check(
        "updates of steps 100-200 over 20x smaller than steps 40-60",
        _mean(sizes[100:200]) * 20 < _mean(sizes[40:60]),
    )
    ls = ctx.losses
    ctx.check("loss fell by half before step 60", _mean(ls[50:60]) < 0.5 * _mean(ls[:10]))
    ctx.check(
        "loss stalls: the last 20 steps within 20% of steps 80-100",
        _mean(ls[-20:]) > 0.8 * _mean(ls[80:100]),
    )
    ctx.check("finite", _finite(ls))


# -- sousaphone: a hand-written decoupled weight decay with its sign lost ------------------------


@scenario(
    family="sousaphone_valve_slide_tuning_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing how far a sousaphone's valve slides must be "
    "pulled to tune (standardised) from 10 readings (air temperature, valve, embouchure, ...), "
    "RMSprop at 2e-3, MSE. The trainer applies decoupled weight decay by hand after the step, "
    "`p.mul_(1 - lr * wd)`, but the port wrote `p.mul_(1 + lr * wd)` with wd 4.0: every "
    "weight grows by 0.8% a step while RMSprop fits; the loss falls first, then climbs slowly "
    "and steadily for the rest of the run, with no spike and no single bad step.",
)
def h202_sousaphone_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(20202)
    model = Stack(10, hidden=64, act=nn.Tanh)
    lr, wd = 2e-3, 4.0
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    norms = []

    def after(step, when):
        if when == "step":
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + lr * wd)  # sign lost: should be 1 - lr * wd
            norms.append(float(model.fc1.weight.detach().norm()))

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=22), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("fc1's weight norm grew 3x", norms[-1] > 3 * norms[0])
    ctx.check("loss minimum before step 150", low < 150)
    ctx.check("loss at the end 3x its minimum", _mean(ls[-10:]) > 3 * _mean(ls[low : low + 10]))
    ctx.check(
        "a steady climb: each third of the second half higher than the last",
        _mean(ls[150:200]) < _mean(ls[200:250]) < _mean(ls[250:300]),
    )
    ctx.check("no spike: no step over 3x the final level", max(ls[low:]) < 3 * _mean(ls[-10:]))
    ctx.check("finite", _finite(ls))


# -- bog snorkelling: log of a turbidity reading with no floor ----------------------------------


class LogReading(nn.Module):
    """Log-transforms the first channel (turbidity in NTU), the rest pass through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class SnorkelNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.log_turbidity = LogReading()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.log_turbidity(x)))))
        return self.head(h).squeeze(-1)


def _bog_laps(gen, batch, clear_at, step_of):
    """Turbidity (NTU, log-normal), water temperature, wind, snorkeller readings; lap time."""
    g = torch.Generator().manual_seed(23)
    w = torch.randn(7, generator=g)
    while True:
        ntu = torch.exp(1.0 + 0.5 * torch.randn(batch, 1, generator=gen))
        rest = torch.randn(batch, 7, generator=gen)
        y = 0.4 * torch.log(ntu).squeeze(1) + torch.tanh(rest @ w / 2.6)
        if step_of() == clear_at:
            ntu[5, 0] = 0.0  # a clear-water day: the turbidity meter reads 0 NTU
        yield torch.cat([ntu, rest], 1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="bog_snorkel_lap_time_gelu_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("log_turbidity",),
    diverges=80,
    onset=80,
    heldout=True,
    note="A GELU MLP (nn.GELU modules) regressing a bog-snorkelling lap time (standardised) "
    "from the trench's turbidity in NTU and 7 standardised readings; a `log_turbidity` module "
    "takes torch.log of the turbidity with no floor (the meter had never read 0 in the "
    "training seasons). RAdam at 3e-3, MSE. The batch of step 80 holds a clear-water day "
    "whose meter reads exactly 0 NTU: log 0 = -inf, the first Linear mixes -inf with +inf, "
    "and the loss is NaN at step 80.",
)
def h202_bog_snorkel_log_zero(ctx: Context) -> None:
    gen = seeded(20203)
    model = SnorkelNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    state = {"step": 0}
    bad = {}

    def before(step):
        state["step"] = step

    def watch(step, out, x, y):
        if step == 80:
            bad["inf"] = bool(torch.isinf(model.log_turbidity(x)).any())

    _train(
        ctx,
        model,
        opt,
        _bog_laps(gen, 64, 80, lambda: state["step"]),
        200,
        F.mse_loss,
        before=before,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("the log module gives -inf at step 80", bad.get("inf", False))
    ctx.check("first non-finite loss at step 80", _first_bad(ls) == 80)
    ctx.check("loss fell before step 80", _mean(ls[70:80]) < 0.5 * _mean(ls[:10]))


# -- fife: a hand-written Elman RNN whose recurrent init reads the input width ------------------


class FifeRNN(nn.Module):
    """h_t = tanh(inp(x_t) + rec(h_{t-1})), a head on the last state."""

    def __init__(self, d_in=4, hidden=64):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        # the init helper's std 1/sqrt(fan_in) read fan_in from the input layer (4), not 64
        nn.init.normal_(self.rec.weight, std=1 / math.sqrt(self.inp.in_features))
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _fife_phrases(gen, batch, length=40):
    """Fingering (3 holes) and breath per note, 40 notes; the target: the breath-weighted mean
    pitch of the opening notes, what the phrase's tuning depends on."""
    while True:
        x = 0.5 * torch.randn(batch, length, 4, generator=gen)
        y = (x[:, :8, :3].sum(-1) * (1 + x[:, :8, 3])).mean(1)
        yield x, y


@scenario(
    family="fife_tune_phrase_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (inp, rec Linears, head) reading 40 notes of a fife "
    "tune (three hole states and breath) and regressing the phrase's tuning offset, which "
    "depends on its opening notes. SGD with Nesterov momentum 0.9 at 1e-2, MSE, "
    "clip_grad_norm_ at 1.0. "
    "The init "
    "helper's std 1/sqrt(fan_in) took fan_in from the input layer (4) instead of the hidden "
    "width (64): rec's weights have std 0.5, spectral radius about 4.6; the gradient grows "
    "back through time (dL/dh at the first note is over 1e6x dL/dh at the last), the raw "
    "gradient norm sits near 1e6 all run, clip_grad_norm_ at 1.0 keeps the run finite and "
    "the loss never falls.",
)
def h202_fife_recurrent_init_fan_in(ctx: Context) -> None:
    gen = seeded(20204)
    model = FifeRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    radius = float(torch.linalg.eigvals(model.rec.weight.detach()).abs().max())
    growth = []

    def after(step, when):
        if when == "grad":
            gs = [h.grad for h in model.states if h.grad is not None]
            if len(gs) == len(model.states):
                growth.append(float(gs[0].norm() / (gs[-1].norm() + 1e-30)))

    _train(ctx, model, opt, _fife_phrases(gen, 32), 150, F.mse_loss, after=after, clip=1.0)
    ctx.check("rec spectral radius above 3", radius > 3)
    ctx.check(
        "dL/dh at the first note over 1e4x dL/dh at the last (median over the run)",
        _median(growth) > 1e4,
    )
    ctx.check("raw gradient norm above 1e4 on most steps", _median(ctx.grad_norms) > 1e4)
    ctx.check(
        "the run does not learn (last 20 steps above 0.7x the first 10)",
        _mean(ctx.losses[-20:]) > 0.7 * _mean(ctx.losses[:10]),
    )
    ctx.check("finite (kept so by clipping)", _finite(ctx.losses))


# -- wainwright: a summed loss and a batch-size ramp ---------------------------------------------


def _sized_readings(gen, size_of, d_in, seed, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(size_of(), d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(len(y), generator=gen)


def _sum_mse(out, y):
    return F.mse_loss(out, y, reduction="sum")


@scenario(
    family="wainwright_wheel_dish_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=80,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing a cartwheel's dish (standardised) from 10 "
    "readings of the spokes, hub and felloes, plain SGD at 3.5e-3, MSE with reduction='sum' "
    "(the recipe was tuned at batch 16, where the summed loss and that rate were stable). At "
    "step 80 a batch-size ramp switches the loader from 16 to 512 rows; with a summed loss the "
    "sharpness grows with the batch, so lr x sharpness goes from about 0.5 to about 10, past "
    "the 2 stability limit, and the loss blows up (NaN within 15 steps).",
)
def h202_wainwright_sum_loss_batch_ramp(ctx: Context) -> None:
    gen = seeded(20205)
    model = Stack(10, hidden=64, act=nn.Tanh)
    lr = 3.5e-3
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    state = {"step": 0}
    sharp = {}
    pg = torch.Generator().manual_seed(55)
    small = next(_sized_readings(pg, lambda: 16, 10, seed=25))
    big = next(_sized_readings(pg, lambda: 512, 10, seed=25))

    def before(step):
        state["step"] = step
        if step == 79:
            sharp["before"] = lr * _sharpness(model, _sum_mse, *small)
            sharp["after"] = lr * _sharpness(model, _sum_mse, *big)

    _train(
        ctx,
        model,
        opt,
        _sized_readings(gen, lambda: 16 if state["step"] < 80 else 512, 10, seed=25),
        200,
        _sum_mse,
        before=before,
    )
    ls = ctx.losses
    ctx.check("lr x sharpness below 1 at batch 16", sharp["before"] < 1.0)
    ctx.check("lr x sharpness above 2 at batch 512", sharp["after"] > 2.0)
    ctx.check("loss fell before step 80", _mean(ls[70:80]) < 0.5 * _mean(ls[:10]))
    per_row = [v / 512 for v in ls[80:]]
    ctx.check(
        "per-row loss after the ramp rose 100x above its level before",
        (not _finite(per_row)) or max(per_row) > 100 * _mean(ls[70:80]) / 16,
    )


# -- lyre: an unfreeze callback that writes initial_lr instead of lr ----------------------------


@scenario(
    family="lyre_string_pluck_relu_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    onset=40,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) naming which of 8 lyre strings was plucked "
    "from 20 spectral readings, cross-entropy, Adagrad with two param groups: the "
    "trunk (fc1, fc2) at lr 0 for a 40-step linear-probe phase, the head at 5e-2. At step 40 "
    "the unfreeze callback sets the trunk group's `initial_lr` to 5e-2 (the key schedulers "
    "read) instead of `lr`, so the trunk stays at lr exactly 0 for the whole run: its weights "
    "never change while the head trains on fixed random features.",
)
def h202_lyre_unfreeze_initial_lr(ctx: Context) -> None:
    gen = seeded(20206)
    model = Stack(20, hidden=64, out=8)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 0.0}, {"params": model.head.parameters()}], lr=5e-2
    )
    snap = {}

    def before(step):
        if step == 40:
            opt.param_groups[0]["initial_lr"] = 5e-2  # should be opt.param_groups[0]["lr"]
            snap["trunk"] = _snapshot(trunk)
            snap["head"] = _snapshot(model.head.parameters())

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 8, seed=26, noise=0.9),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ctx.check("trunk group lr exactly 0 at the end", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("fc1/fc2 unchanged after the unfreeze", _moved(trunk, snap["trunk"]) == 0.0)
    ctx.check("head moved after the unfreeze", _moved(model.head.parameters(), snap["head"]) > 1e-3)
    ctx.check("finite", _finite(ctx.losses))


# -- cricket ball: one shard's swing in millimetres ---------------------------------------------


@scenario(
    family="cricket_ball_swing_deviation_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) regressing a bowled cricket ball's late swing (metres, "
    "standardised) from 12 readings (seam angle, release speed, humidity, ball age, ...), "
    "ASGD at 1e-2, MSE, clip_grad_norm_ at 5.0. One ground's ball-tracking export wrote the "
    "deviation in millimetres; its rows make up the batch of step 90, so the targets are "
    "1000x; the gradient spikes, the clipped step knocks the loss up, and the run recovers.",
)
def h202_cricket_ball_millimetre_shard(ctx: Context) -> None:
    gen = seeded(20207)
    model = Stack(12, hidden=64)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
    ys = []
    src = _readings(gen, 64, 12, seed=27)

    def batches():
        step = 0
        while True:
            x, y = next(src)
            if step == 90:
                y = y * 1000.0  # the millimetre shard
            ys.append(float(y.abs().max()))
            step += 1
            yield x, y

    _train(ctx, model, opt, batches(), 240, F.mse_loss, clip=5.0)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("targets of step 90 over 100x the usual", ys[90] > 100 * _median(ys[:90]))
    ctx.check("gradient at step 90 over 50x the median before", g[90] > 50 * _median(g[:90]))
    ctx.check(
        "the run recovers (last 20 steps below 2x steps 70-90)",
        _mean(ls[-20:]) < 2 * _mean(ls[70:90]),
    )
    ctx.check("finite", _finite(ls))


# -- quill pen: a logging hook that rescales the loss before backward ----------------------------


@scenario(
    family="quill_pen_nib_flex_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a cut quill nib's flex "
    "(standardised) from 10 readings (barrel diameter, slit length, curing days, ...), SGD "
    "with momentum 0.9 at 1e-2, MSE, batch 128. Every 100 steps a logging hook converts the "
    "mean loss to the per-epoch total for the dashboard, `loss = loss * len(batch)`, "
    "reassigning the variable the trainer backpropagates afterwards: at step 100 one "
    "gradient is 128x the usual from an ordinary batch; the loss jumps and the run recovers.",
)
def h202_quill_logging_hook_rescale(ctx: Context) -> None:
    gen = seeded(20208)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def scale_loss(step, total):
        if step and step % 100 == 0:
            return total * 128  # the logging hook's per-batch total, backpropagated
        return total

    _train(
        ctx, model, opt, _readings(gen, 128, 10, seed=28), 180, F.mse_loss, scale_loss=scale_loss
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient at step 100 over 50x the median before", g[100] > 50 * _median(g[:100]))
    ctx.check(
        "step 100's batch loss ordinary (below 2x steps 90-100)", ls[100] < 2 * _mean(ls[90:100])
    )
    ctx.check("loss jumps after the spike (3x)", max(ls[101:110]) > 3 * _mean(ls[90:100]))
    ctx.check(
        "the run recovers (last 20 steps below 2x steps 80-100)",
        _mean(ls[-20:]) < 2 * _mean(ls[80:100]),
    )
    ctx.check("finite", _finite(ls))


# -- weaver: logits multiplied by the distillation temperature ----------------------------------


class TwillNet(nn.Module):
    def __init__(self, d_in=24, hidden=64, classes=10, temperature=50.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        z = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return z * self.temperature  # should be z / self.temperature


@scenario(
    family="weaver_twill_pattern_relu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) naming which of 10 twill weaves a cloth "
    "sample is from 24 readings of its warp and weft crossings, cross-entropy, Adamax at "
    "1e-2. The model was ported from a distilled student whose forward divides the head's "
    "logits by the distillation temperature 50; the port wrote `z * self.temperature`, so "
    "the logits are 50x: the softmax saturates, about half the rows' target probability "
    "rounds to exactly 1.0 in float32 (the other classes exactly 0).",
)
def h202_weaver_temperature_multiplied(ctx: Context) -> None:
    gen = seeded(20209)
    model = TwillNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    frac = []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 24, 10, seed=29, noise=0.25),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 10% of rows collapsed at step 0", frac[0] < 0.1)
    ctx.check(
        "over 40% of rows' target probability exactly 1.0 (last 20 steps)", _mean(frac[-20:]) > 0.4
    )
    ctx.check("finite", _finite(ctx.losses))


# -- fuller: raw fulling-mill readings into a ReLU MLP at a high rate ----------------------------


@scenario(
    family="fuller_cloth_shrinkage_relu_mlp",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how much a woollen cloth shrinks "
    "in the fulling mill (standardised) from 10 readings (stocks' beat rate, water temperature "
    "in C, soap grams, hours, ...). The StandardScaler fitted in the notebook was not saved "
    "with the pipeline, so the model gets the raw, all-positive readings (tens to hundreds), "
    "and NAdam runs at the 5e-2 tuned on scaled inputs: the first large steps push fc1's "
    "biases and weights so that most of act1's units never fire again, and the loss stalls "
    "near the target's variance.",
)
def h202_fuller_raw_readings(ctx: Context) -> None:
    gen = seeded(20210)
    model = Stack(10, hidden=64)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-2)
    g = torch.Generator().manual_seed(30)
    centre = 20 + 180 * torch.rand(10, generator=g)
    spread = 0.15 * centre
    dead = []
    src = _readings(gen, 64, 10, seed=30)

    def raw():
        while True:
            x, y = next(src)
            yield centre + spread * x, y  # the scaler was not applied

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.act1(model.fc1(x))))

    _train(ctx, model, opt, raw(), 200, F.mse_loss, watch=watch)
    ctx.check("act1 under half dead at step 0", dead[0] < 0.5)
    ctx.check("act1 over 80% dead at the end", _mean(dead[-10:]) > 0.8)
    ctx.check("loss stalls near the variance (last 20 above 0.5)", _mean(ctx.losses[-20:]) > 0.5)
    ctx.check("finite", _finite(ctx.losses))


# -- controls --------------------------------------------------------------------------------


@scenario(
    family="rogue_wave_crest_height_gelu_mlp",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (nn.GELU modules) regressing a buoy's crest height over the "
    "significant wave height from 12 sea-state readings; the targets are heavy-tailed "
    "(Student-t noise with 2 degrees of freedom: the occasional rogue wave), fitted with a "
    "Huber loss (delta 1.0), AdamW (weight decay 1e-2), OneCycleLR to 3e-3, clip_grad_norm_ "
    "at 1.0.",
)
def h202_rogue_wave_huber_control(ctx: Context) -> None:
    gen = seeded(20211)
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = 240
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    t = torch.distributions.StudentT(2.0)
    src = _readings(gen, 64, 12, seed=31, noise=0.0)
    tails = []

    def batches():
        while True:
            x, y = next(src)
            e = 0.3 * t.sample((len(y),))
            tails.append(float(e.abs().max()))
            yield x, y + e

    _train(
        ctx, model, opt, batches(), steps, lambda o, y: F.huber_loss(o, y), clip=1.0, sched=sched
    )
    ctx.check("heavy tails: some target noise over 10x the scale 0.3", max(tails) > 3.0)
    ctx.check("loss fell", _fell(ctx.losses, k=20, ratio=0.8))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="cordage_twist_strength_silu_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (nn.SiLU modules) regressing a hemp cord's breaking strength "
    "(standardised) from 10 readings (twist per metre, strand count, fibre length, ...), "
    "Adadelta at lr 1.0, MSE, gradient accumulation over 2 micro-batches, ReduceLROnPlateau "
    "(factor 0.5, patience 25, min_lr 0.1) on the step loss, clip_grad_norm_ at 2.0.",
)
def h202_cordage_plateau_control(ctx: Context) -> None:
    gen = seeded(20212)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=25, min_lr=0.1)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=32),
        200,
        F.mse_loss,
        sched=sched,
        accumulate=2,
        clip=2.0,
    )
    ctx.check("the plateau scheduler lowered the rate", opt.param_groups[0]["lr"] < 1.0)
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))


class StepConv(nn.Module):
    """A 1-D CNN over 32 frames of 6 foot sensors: conv/BatchNorm/ReLU twice, pooled head."""

    def __init__(self, channels=6, width=24, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(width)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(width)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x)))
        h = self.act2(self.bn2(self.conv2(h)))
        return self.head(h.mean(-1))


def _hornpipe_steps(gen, batch, classes=6, length=32):
    g = torch.Generator().manual_seed(33)
    motifs = torch.randn(classes, 6, 8, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = 0.8 * torch.randn(batch, 6, length, generator=gen)
        start = torch.randint(0, length - 8, (batch,), generator=gen)
        for i in range(batch):
            s = int(start[i])
            x[i, :, s : s + 8] += motifs[y[i]]
        yield x, y


@scenario(
    family="hornpipe_step_pattern_bn_conv1d",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a 1-D CNN (conv1/bn1/act1, conv2/bn2/act2, mean pool, head) naming which of 6 "
    "sailor's-hornpipe steps a dancer's 6 foot sensors recorded over 32 frames, SGD with "
    "Nesterov momentum 0.9 at 5e-2, weight decay 5e-4, CosineAnnealingLR, label smoothing "
    "0.1, clip_grad_norm_ at 5.0.",
)
def h202_hornpipe_conv_control(ctx: Context) -> None:
    gen = seeded(20213)
    model = StepConv()
    opt = torch.optim.SGD(
        model.parameters(), lr=5e-2, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = 160
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    _train(
        ctx,
        model,
        opt,
        _hornpipe_steps(gen, 64),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=5.0,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))
