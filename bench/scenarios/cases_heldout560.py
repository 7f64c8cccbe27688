"""Held-out set 560 (``h560_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: ocarina bore-pitch regressor fed a bore length in micrometres under fp16 autocast
(amp_overflow, AdamW); wheelwright wheel-dish regressor whose hand-written decoupled weight decay
multiplies by (1 + lr*wd) (loss_divergence, Adamax); sand-yacht tack-speed regressor whose warm-up
lambda forgot to divide by the warm-up length (sharpness_above_limit, plain SGD); pinewood-derby
run-time regressor with the head's group lr typed 3e-10 (update_ratio_out_of_range, RMSprop);
hammer-dulcimer course-strike classifier fed one shard of raw ADC counts (data_outlier, NAdam);
firefly flash-sync BCE net whose accumulation divisor is read as 1e-3 for one step
(gradient_spike, SGD Nesterov); maple-sugaring evaporator Gaussian-NLL net taking a rate 0/0 on a
stalled logger (nonfinite, Adagrad); tin-whistle fipple Elman RNN with the recurrent init gain
typed 1.5 (exploding_gradients, SGD momentum); mudflat cockle-size classifier with temperature
typed 1e-3 (softmax_collapse, Adam); Welsh-harp pedal-buzz classifier whose fc2 bias was
initialised at -3 (loss_of_plasticity, ASGD).
Controls: pelorus bearing-sight Hugging Face RoBERTa classifier from a tiny config (AdamW, linear
warm-up, clipping); rip-current width regressor whose data shard switches at step 120 to a
harder, clean distribution (loss rises and stays higher, then falls slowly; RAdam,
ReduceLROnPlateau; alarming-looking); lava-tube drip-rate Huber regressor (Rprop, full batch by
accumulating 4 micro-batches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
)

ONSET_SAND = 7


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _readings(gen, batch, d_in, seed, noise=0.05, hard=None):
    """Standardised readings and a smooth nonlinear target of about unit scale; from batch
    ``hard`` on, the readings come from a harder (wider, more curved) but clean regime."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    u = torch.randn(d_in, generator=g)
    i = 0
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        s = math.sqrt(d_in)
        y = torch.tanh(1.3 * x @ w / s) + 0.4 * torch.cos(x @ v / s)
        if hard is not None and i >= hard:
            x = 1.6 * x
            y = torch.tanh(1.3 * x @ w / s) + 0.6 * torch.sin(2.5 * x @ u / s) * torch.cos(
                x @ v / s
            )
        y = y + noise * torch.randn(batch, generator=gen)
        i += 1
        yield x, y


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
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
    forward=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, loss)``
    returns the loss actually backpropagated, ``after(step, loss)``. Stops after a non-finite
    loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    forward = forward or (lambda m, x: m(x))
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(forward(model, x), y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of loss_fn(model(x), y) by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. amp overflow: bore length in micrometres under fp16 autocast ------------------------------


class _OcarinaNet(nn.Module):
    """GELU MLP predicting an ocarina's sounding pitch (cents off target) from its bore."""

    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="ocarina_bore_pitch_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=85,
    onset=85,
    heldout=True,
    note="Ocarina bore-pitch regressor (GELU MLP on bore length, chamber volume, window size, "
    "voicing angle, wall thickness and clay shrinkage; MSE, AdamW, fp16 autocast + "
    "GradScaler). From step 85 a new caliper export writes the bore length in micrometres "
    "(about 2e5) instead of standardised units: fc1 runs in fp16 under autocast, its output "
    "passes 65504 and is non-finite (the same batch is finite in float32), the loss is "
    "non-finite at step 85.",
)
def h560_ocarina_bore_micrometres_fp16(ctx):
    gen = seeded(5601)
    model = _OcarinaNet(6)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 6, 56011)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1_bad", bool((~torch.isfinite(o)).any()))
    )
    losses = []
    for step in range(160):
        x, y = next(batches)
        if step >= 85:
            x = x.clone()
            x[:, 0] = 2.0e5 + 4.0e4 * x[:, 0]  # micrometres, not standardised
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == 85:
            ctx.check("fc1's fp16 output is non-finite at step 85", seen["fc1_bad"])
            with torch.no_grad():
                ctx.check(
                    "the same batch is finite in float32", bool(torch.isfinite(model(x)).all())
                )
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("the loss fell before step 85", _fell(losses[:85]))
    ctx.check(
        "the loss is non-finite at step 85", len(losses) == 86 and not math.isfinite(losses[85])
    )


# -- 2. loss divergence: decoupled weight decay with its sign flipped ------------------------------


@scenario(
    family="wheelwright_dish_angle_decay_sign_silu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Wheelwright wheel-dish regressor (SiLU MLP on spoke angle, felloe width, tyre shrink, "
    "hub mortise depth and timber moisture; MSE, Adamax). The hand-written decoupled weight "
    "decay after opt.step() multiplies every weight by (1 + lr*wd) instead of (1 - lr*wd): the "
    "weights grow steadily, and the loss, after an ordinary fall, climbs slowly to several "
    "times its best with no single jump.",
)
def h560_wheelwright_decay_sign_flip(ctx):
    gen = seeded(5602)
    model = _Net(5, hidden=48, act=nn.SiLU)
    lr, wd = 2e-3, 4.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    w0 = float(_flat(model).norm())

    def decay(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(1 + lr * wd)  # should be 1 - lr * wd

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 5, 56021), 260, F.mse_loss, after=decay)
    best = min(losses[:120])
    win = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9, 10)]
    jumps = [b / max(a, 1e-9) for a, b in zip(win, win[1:], strict=False)]
    ctx.check("the loss fell first", _fell(losses[:60]))
    ctx.check("the loss climbs to over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("the weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("no 10-step window jumps the loss 3x", max(jumps) < 3.0)


# -- 3. sharpness above the limit: a warm-up lambda that forgot its division ----------------------


@scenario(
    family="sand_yacht_tack_speed_warmup_typo_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=ONSET_SAND,
    heldout=True,
    note="Sand-yacht tack-speed regressor (tanh MLP on wind speed, apparent wind angle, sail "
    "sheeting, sand firmness and pilot weight; MSE, plain SGD, LambdaLR warm-up). The warm-up "
    "lambda is written min(step + 1, 25) instead of min(step + 1, 25) / 25, so the lr climbs "
    "linearly to 25x the intended 0.04: lr x top Hessian eigenvalue (power iteration, measured "
    "each step) passes 2 at the onset step and the loss blows up a few steps later.",
)
def h560_sand_yacht_warmup_without_division(ctx):
    gen = seeded(5603)
    model = _Net(5, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.04)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s + 1, 25))  # forgot / 25
    batches = _readings(gen, 128, 5, 56031)
    probe = next(batches)
    crossed = []

    def measure(step):
        if crossed or step > 60:
            return
        lr = opt.param_groups[0]["lr"]
        eig = _top_hessian_eig(model, F.mse_loss, *probe, iters=15)
        if lr * eig > 2.0:
            crossed.append(step)

    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss, before=measure, sched=sched)
    bad = next(
        (i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * min(losses)), None
    )
    ctx.check("lr x sharpness passed 2", bool(crossed))
    ctx.check("the loss blew up", bad is not None)
    ctx.check(
        "the crossing came at the onset, before the blow-up",
        bool(crossed) and bad is not None and crossed[0] == ONSET_SAND and crossed[0] < bad,
    )
    ctx.check("the loss fell while lr x sharpness was under 2", min(losses) < 0.7 * losses[0])


# -- 4. update ratio: the head's param-group lr typed 3e-10 --------------------------------------


@scenario(
    family="pinewood_derby_run_time_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Pinewood-derby run-time regressor (ReLU MLP on car weight, weight position, axle "
    "polish, wheel bore, alignment and lane; MSE, RMSprop with two param groups: the body at "
    "1e-3 and the head at a 'smaller' lr typed 3e-10 instead of 3e-4). The head's updates are "
    "about 1e-9 of its weights: it never moves while the body (which compensates, so the "
    "loss still falls) moves over 5%.",
)
def h560_pinewood_head_group_lr_typo(ctx):
    gen = seeded(5604)
    model = _Net(6, hidden=48)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.RMSprop(
        [{"params": body, "lr": 1e-3}, {"params": model.head.parameters(), "lr": 3e-10}]
    )
    head0, fc1_0 = _flat(model.head), _flat(model.fc1)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 56041), 200, F.mse_loss)
    head_rel = float((_flat(model.head) - head0).norm() / head0.norm())
    fc1_rel = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    ctx.check("the head moved less than 1e-6 of its weights", head_rel < 1e-6)
    ctx.check("fc1 moved over 5% of its weights", fc1_rel > 0.05)
    ctx.check("finite throughout", _finite(losses))


# -- 5. data outlier: one shard of raw ADC counts ---------------------------------------------------


@scenario(
    family="hammer_dulcimer_course_strike_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Hammer-dulcimer course-strike classifier (GELU MLP on 12 piezo-pickup features, "
    "8 strike kinds, cross-entropy, NAdam, clipping at 1.0). The batch at step 120 comes from "
    "a shard exported as raw 16-bit ADC counts (x 3000) instead of standardised readings: the "
    "loss at that step is over 20x the median and the gradient over 10x; clipping holds the "
    "step and the run recovers.",
)
def h560_hammer_dulcimer_adc_count_shard(ctx):
    gen = seeded(5605)
    model = _Net(12, hidden=48, out=8, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x * 3000.0 if step == 120 else x), y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 8, 56051, spread=1.5),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    ctx.check(
        "the loss at step 120 is over 20x the median", losses[120] > 20 * _median(losses[:120])
    )
    ctx.check(
        "the gradient at step 120 is over 10x the median", norms[120] > 10 * _median(norms[:120])
    )
    ctx.check("the run recovers", _mean(losses[-10:]) < 2 * _mean(losses[100:120]))
    ctx.check("the loss fell", _fell(losses))


# -- 6. gradient spike: the accumulation divisor read as 1e-3 for one step ------------------------


class _FireflyNet(nn.Module):
    """GELU MLP: is this firefly in phase with the swarm's flash (BCE)?"""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="firefly_flash_sync_phase_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=140,
    heldout=True,
    note="Firefly flash-sync BCE net (GELU MLP on flash interval, phase lag to neighbours, "
    "temperature and light level; BCEWithLogits, SGD Nesterov momentum 0.9, gradient "
    "accumulation over 2 micro-batches, clipping at 5). At step 140 the accumulation divisor "
    "is read from a resumed config as 1e-3 instead of 2, so that step's backpropagated loss is "
    "2000x the logged one: the gradient spikes over 100x the median while the logged loss is "
    "ordinary; clipping holds the step and the run goes on.",
)
def h560_firefly_accumulation_divisor(ctx):
    gen = seeded(5606)
    model = _FireflyNet(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _grades(gen, 32, 8, 2, 56061, spread=1.6)
    losses, norms = [], []
    for step in range(220):
        divisor = 1e-3 if step == 140 else 2.0
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.binary_cross_entropy_with_logits(model(x), y.float())
            (loss / divisor).backward()
            logged += float(loss.detach()) / 2
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "the gradient at step 140 is over 100x the median", norms[140] > 100 * _median(norms[:140])
    )
    ctx.check("the logged loss at step 140 is ordinary", losses[140] < 3 * _median(losses[100:140]))
    ctx.check("the loss fell", _fell(losses))


# -- 7. nonfinite: a rate feature 0/0 on a stalled logger -----------------------------------------


class _RateFeature(nn.Module):
    """Brix rise per minute: delta / elapsed, no guard against a stalled logger."""

    def forward(self, x):
        rate = x[:, :1] / x[:, 1:2]
        return torch.cat([x[:, 2:], rate], 1)


class _EvaporatorNet(nn.Module):
    """SiLU MLP with a mean and a log-variance head for the finished syrup's Brix."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.rate = _RateFeature()
        self.fc1 = nn.Linear(d_in - 1, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(self.rate(x)))))
        return self.head(h)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="sugaring_evaporator_brix_gaussian_nll_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("rate",),
    diverges=95,
    onset=95,
    heldout=True,
    note="Maple-sugaring evaporator Brix net (SiLU MLP with mean and log-variance heads, "
    "Gaussian NLL, Adagrad). Its rate module divides the Brix rise by the elapsed minutes "
    "with no guard; at step 95 a stalled logger reports a rise of 0 over 0 minutes, 0/0 is "
    "NaN in the rate module's output and the loss is NaN at step 95.",
)
def h560_sugaring_stalled_logger_zero_over_zero(ctx):
    gen = seeded(5607)
    model = _EvaporatorNet(7)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    base = _readings(gen, 64, 5, 56071)
    seen = {}
    model.rate.register_forward_hook(
        lambda m, i, o: seen.__setitem__("nan", bool(torch.isnan(o).any()))
    )

    def batches():
        for x, y in base:
            elapsed = 5.0 + torch.rand(len(y), 1, generator=gen)
            delta = 0.2 * elapsed * (1 + 0.1 * torch.randn(len(y), 1, generator=gen))
            yield torch.cat([delta, elapsed, x], 1), y

    nan_at = {}

    def alter(step, x, y):
        if step == 95:
            x = x.clone()
            x[3, 0], x[3, 1] = 0.0, 0.0
        return x, y

    def after(step, loss):
        if seen.get("nan") and "step" not in nan_at:
            nan_at["step"] = step

    losses, _ = _loop(ctx, model, opt, batches(), 160, _gauss_nll, alter=alter, after=after)
    ctx.check("the rate module's output is NaN first at step 95", nan_at.get("step") == 95)
    ctx.check("the loss is NaN at step 95", len(losses) == 96 and math.isnan(losses[95]))
    ctx.check("the loss fell before", _mean(losses[85:95]) < _mean(losses[:10]) - 0.3)


# -- 8. exploding gradients: recurrent init gain typed 1.5 ----------------------------------------


class _WhistleRNN(nn.Module):
    """Elman RNN over a tin whistle's breath-pressure frames, regressing the tone's brightness."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.rnn = nn.RNN(d_in, hidden, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _breath_batches(gen, batch=32, length=40):
    while True:
        x = 0.5 * torch.randn(batch, length, 4, generator=gen)
        y = torch.tanh(x[:, -8:, 0].mean(1) * 2 + x[:, -8:, 1].mean(1))
        yield x, y


@scenario(
    family="tin_whistle_fipple_tone_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="Tin-whistle fipple-tone Elman RNN (ReLU recurrence over 40 breath-pressure frames, "
    "MSE, SGD momentum 0.9). The recurrent weights are initialised orthogonal with gain typed "
    "1.5 instead of 0.5: the gradient grows back through time (the loss's gradient with "
    "respect to the first frame is over 20x that for the last frame), and the loss blows up.",
)
def h560_tin_whistle_recurrent_gain_typo(ctx):
    gen = seeded(5608)
    model = _WhistleRNN(gain=1.5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _breath_batches(gen)
    x, y = next(batches)
    x = x.clone().requires_grad_(True)
    F.mse_loss(model(x), y).backward()
    first, last = float(x.grad[:, 0].norm()), float(x.grad[:, -1].norm())
    model.zero_grad(set_to_none=True)
    losses, norms = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("the first frame's gradient is over 20x the last's", first > 20 * last)
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 1e3), None)
    ctx.check("the loss blew up", bad is not None)
    ctx.check("the gradient norm grew over 100x", max(norms) > 100 * norms[0])


# -- 9. softmax collapse: temperature typed 1e-3 ---------------------------------------------------


class _CockleNet(nn.Module):
    """GELU MLP grading cockles by size class; logits divided by a temperature."""

    def __init__(self, d_in, classes, temperature, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))) / self.temperature


@scenario(
    family="mudflat_cockle_size_temperature_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Mudflat cockle-size classifier (GELU MLP on shell length, width, rib count, weight "
    "and riddle position; 6 size classes, cross-entropy, Adam). The logit temperature is "
    "typed 1e-3 instead of 1.0: the softmax saturates, over 40% of rows give their target "
    "probability exactly 1.0 in float32.",
)
def h560_mudflat_cockle_temperature_typo(ctx):
    gen = seeded(5609)
    model = _CockleNet(10, 6, temperature=1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _grades(gen, 64, 10, 6, 56091, spread=0.8)
    frac = []

    def after(step, loss):
        if step % 20 == 19:
            x, y = next(batches)
            with torch.no_grad():
                frac.append(collapsed_fraction(model(x), y))

    losses, _ = _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows have target probability exactly 1.0", max(frac) > 0.4)
    ctx.check("finite throughout", _finite(losses))


# -- 10. loss of plasticity: fc2 bias initialised at -3 --------------------------------------------


@scenario(
    family="welsh_harp_pedal_buzz_dead_relu_classifier",
    optimizer="ASGD",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="Welsh-harp pedal-buzz classifier (ReLU MLP on 10 contact-mic features, 5 buzz sources, "
    "cross-entropy, ASGD). An init helper meant to set the head's bias to -3 for a rare "
    "class is applied to fc2's bias: fc2's pre-activations are all below zero, over 90% of "
    "act2's units are dead for the whole run, fc1 gets almost no gradient, and the loss stays near "
    "chance.",
)
def h560_welsh_harp_fc2_bias_minus_three(ctx):
    gen = seeded(5610)
    model = _Net(10, hidden=48, out=5)
    with torch.no_grad():
        model.fc2.bias.fill_(-3.0)  # meant for the head's rare-class bias
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    batches = _grades(gen, 64, 10, 5, 56101, spread=1.2)
    feats = {}
    model.act2.register_forward_hook(lambda m, i, o: feats.__setitem__("h", o.detach()))
    fc1_0 = _flat(model.fc1)
    losses, _ = _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    ctx.check("over 90% of act2's units are dead at the end", dead_fraction(feats["h"]) > 0.9)
    fc1_rel = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    ctx.check("fc1 moved under 2% of its weights", fc1_rel < 0.02)
    ctx.check("the loss stays near chance", _mean(losses[-20:]) > 0.8 * math.log(5))


# -- 11. control: a Hugging Face RoBERTa from a tiny config ----------------------------------------


def _tiny_roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        num_labels=2,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return RobertaForSequenceClassification(config)


@scenario(
    family="pelorus_bearing_sight_roberta_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Pelorus bearing-sight classifier: a Hugging Face RoBERTa built from a tiny config "
    "(2 layers, width 32) reads a sequence of sight tokens and says whether the port sightings "
    "(token 1) outnumber the starboard ones (token 2); cross-entropy, AdamW with weight decay "
    "0.01, linear warm-up over 30 steps then linear decay, clipping at 1.0. Healthy control.",
)
def h560_pelorus_roberta_warmup(ctx):
    gen = seeded(5611)
    model = _tiny_roberta()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    steps = 220
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / 30, max(0.05, (steps - s) / (steps - 30)))
    )
    losses, _ = _loop(
        ctx,
        model,
        opt,
        bert_batches(gen, batch=32, length=16),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    ctx.check("the loss fell", _fell(losses, k=20, ratio=0.8))
    ctx.check("finite throughout", _finite(losses))


# -- 12. control (alarming): the shard switches at step 120 to a harder, clean regime -------------


@scenario(
    family="rip_current_width_shard_switch_silu_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Rip-current width regressor (SiLU MLP on wave height, period, tide stage, bar depth, "
    "beach slope and wind; MSE, RAdam, ReduceLROnPlateau). At step 120 the data loader moves "
    "from the calm-season shard to the storm-season shard: wider readings and a more curved "
    "but clean target. The loss jumps and stays higher, then falls slowly: alarming-looking, "
    "healthy control.",
)
def h560_rip_current_storm_shard_switch(ctx):
    gen = seeded(5612)
    model = _Net(6, hidden=64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 56121, hard=120),
        300,
        F.mse_loss,
        after=lambda step, loss: plateau.step(loss),
    )
    ctx.check("the loss fell before the switch", _fell(losses[:120]))
    ctx.check(
        "the loss rose over 2x at the switch", _mean(losses[120:130]) > 2 * _mean(losses[100:120])
    )
    ctx.check("the loss falls slowly after", _mean(losses[-20:]) < 0.8 * _mean(losses[120:140]))
    ctx.check("finite throughout", _finite(losses))


# -- 13. control: Rprop on full batches by accumulating 4 micro-batches ---------------------------


@scenario(
    family="lava_tube_drip_rate_rprop_huber_regressor",
    optimizer="Rprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lava-tube drip-rate regressor (tanh MLP on cave temperature, humidity, rainfall lag, "
    "roof thickness and season; Huber loss, Rprop on a fixed set of 256 readings, the full "
    "batch accumulated over 4 micro-batches of 64, noisy targets). Healthy control.",
)
def h560_lava_tube_rprop_full_batch(ctx):
    gen = seeded(5613)
    model = _Net(5, hidden=32, act=nn.Tanh)
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen, 256, 5, 56131, noise=0.1)
    xs, ys = next(data)
    losses = []
    for _step in range(150):
        total = 0.0
        for i in range(0, 256, 64):
            loss = F.huber_loss(model(xs[i : i + 64]), ys[i : i + 64], delta=0.5) / 4
            loss.backward()
            total += float(loss.detach())
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell", _fell(losses, ratio=0.5))
    ctx.check("finite throughout", _finite(losses))
