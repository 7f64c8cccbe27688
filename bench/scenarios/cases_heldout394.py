"""Held-out set 394 (``h394_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a sea-ice lead-opening net whose hand-written window standardiser has no epsilon (a buoy's
frozen logger sends flat windows: 0/0), a bee-smoker fuel-burn Gaussian-NLL net whose validation
hook backpropagates a summed held-out loss into one step (Adam's second moment poisoned), a
cave-diving guideline-reel Conv1d stack initialised with fan_in taken as in_channels only
(gradients grow through depth), a hand-line cod-jig regressor whose EMA shadow (decay typed 1.0) is
swapped in for validation and never swapped back (a one-off loss spike), a sheep-wash pool-level
temporal convolutional network fed one logger's shard with -9999 sentinels (one corrupted batch), a
surf-lifesaving rescue-tube BCE net whose loss-weight table has 100.0 for 1.00 at one step (one
gradient burst), a spirit-level bubble-vial classifier whose body group's lr multiplier is looked
up under a misspelt key and defaults to 0 (frozen), a washboard-road corrugation regressor whose
warm-up lambda lost its min(1, .) clamp (the rate climbs past 2/sharpness), a sand-dollar
test-pattern classifier whose learnt logit scale is initialised at 10 in log space for ln 10 (the
scale sits at its clamp of 100: softmax saturates) and a grain-silo bridging-depth regressor whose
hand-written decoupled weight decay multiplies by (1 + lr * wd) (a slow climb).

Controls: a log-drum resonance regressor (dropout, clipping, AdamW under ReduceLROnPlateau), a
bull-roarer whirl-pitch Conv1d classifier (SGD Nesterov under OneCycleLR, label smoothing,
clipping) and a weathercock spindle-wear tied autoencoder (fp16 autocast with a GradScaler,
accumulation, Huber loss).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


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
    watch=None,
    after=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    inspect=None,
    train=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated (before the division by the accumulation count; a backprop that
    divides itself returns ``(loss, True)``), ``after(step)`` runs after the optimizer step,
    ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)``
    sees the gradients before clipping. Stops after a non-finite loss (once ``ctx.step`` has seen
    it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train(True if train is None else train)
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
            out = out.float()
            loss = loss_fn(out, y)
            total = loss / accumulate
            if backprop is not None:
                total = backprop(step, loss, accumulate)
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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _binary(gen, batch, d_in, seed, flip=0.0):
    """Readings labelled by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.3 * torch.sin(2 * x[:, 0]) > 0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=40, channels=2):
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


def _series(gen, batch, length=64):
    """Generated level series (two tides and a slow swell plus noise); predict the next value."""
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        f = torch.stack(
            [
                0.18 + 0.04 * torch.rand(batch, generator=gen),
                0.05 + 0.02 * torch.rand(batch, generator=gen),
            ],
            1,
        )
        ph = 6.28 * torch.rand(batch, 2, generator=gen)
        amp = torch.tensor([0.8, 0.5]) * (0.7 + 0.6 * torch.rand(batch, 2, generator=gen))
        s = (amp[:, :, None] * torch.sin(f[:, :, None] * t + ph[:, :, None])).sum(1)
        s = s + 0.05 * torch.randn(batch, length + 1, generator=gen)
        yield s[:, None, :-1], s[:, -1]


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


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


# -- nonfinite: a window standardiser without epsilon --------------------------------------------


class _WindowStd(nn.Module):
    """Standardises each reading window: (x - mean) / sqrt(E[x^2] - mean^2), no epsilon."""

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        var = (x * x).mean(-1, keepdim=True) - mu * mu
        return (x - mu) / var.sqrt()


class _LeadNet(nn.Module):
    def __init__(self, length=24, hidden=48):
        super().__init__()
        self.norm = _WindowStd()
        self.fc1 = nn.Linear(length, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.norm(x)))))).squeeze(-1)


def _lead_windows(gen, batch, length=24):
    """Lead-width windows (metres, offset and trend vary); target: the opening rate's sign-ish."""
    t = torch.linspace(0, 1, length)
    while True:
        base = 2.0 + 3.0 * torch.rand(batch, 1, generator=gen)
        slope = torch.randn(batch, 1, generator=gen)
        wig = 0.4 * torch.sin(6.28 * (t * (1 + torch.rand(batch, 1, generator=gen))))
        x = base + slope * t + wig + 0.1 * torch.randn(batch, length, generator=gen)
        yield x, torch.tanh(slope.squeeze(1)) + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    "sea_ice_lead_opening_window_std_net",
    "NAdam",
    "nonfinite",
    "norm",
    90,
    heldout=True,
    onset=90,
    note="each buoy's 24-reading lead-width window is standardised by a hand-written module as "
    "(x - mean) / sqrt(E[x^2] - mean^2) with no epsilon; from step 90 one buoy's frozen logger "
    "repeats its last reading (2.5 m) across the window for six rows, the variance is exactly 0, "
    "0/0 gives NaN and the loss is NaN at step 90",
)
def h394_sea_ice_lead_window_std_nan(ctx: Context) -> None:
    gen = seeded(3941)
    model = _LeadNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step >= 90:
            x = x.clone()
            x[:6] = 2.5
        return x, y

    def watch(step, out, x, y):
        if step == 90:
            z = model.norm(x)
            seen["input_finite"] = bool(torch.isfinite(x).all())
            seen["norm_nonfinite"] = bool((~torch.isfinite(z)).any())

    _loop(ctx, model, opt, _lead_windows(gen, 64), 200, F.mse_loss, alter=alter, watch=watch)
    ls = ctx.losses
    ctx.check("loss finite and falling before step 90", _fell(ls[:90]))
    ctx.check("loss non-finite first at step 90", _first_bad(ls) == 90)
    ctx.check("the batch at step 90 is finite", seen.get("input_finite", False))
    ctx.check("the window standardiser's output is non-finite", seen.get("norm_nonfinite", False))


# -- adam_second_moment_poisoned: a validation hook backpropagates into a training step ----------


def _gauss_nll(out, y, reduction="mean"):
    """Gaussian negative log-likelihood of y under (mean, log-variance) = out[:, 0], out[:, 1]."""
    mu, logvar = out[:, 0], out[:, 1]
    nll = 0.5 * (logvar + (y - mu) ** 2 / logvar.exp())
    return nll.sum() if reduction == "sum" else nll.mean()


@scenario(
    "bee_smoker_fuel_burn_time_gaussian_nll_net",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=100,
    note="a SiLU Gaussian-NLL net (mean and log-variance heads) of smoker fuel-burn time; at "
    "step 100 a validation hook computes the "
    "held-out NLL on its 4096-row buffer with reduction='sum', outside torch.no_grad and "
    "without zero_grad, and calls backward, so its gradient lands in step 100's update: the "
    "gradient is over 1000x on a clean batch, Adam's second moment fills with it and the "
    "per-weight updates 30-90 steps later are under a tenth of before while the gradients are "
    "not smaller",
)
def h394_bee_smoker_eval_hook_backward(ctx: Context) -> None:
    gen = seeded(3942)
    model = _MLP(10, 48, out=2, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    held = next(_readings(torch.Generator().manual_seed(77), 4096, 10, 3942))
    upd: list[float] = []
    snap = {}

    def before(step):
        snap["p"] = _params(model)

    def backprop(step, loss, accumulate):
        if step == 100:
            hx, hy = held
            return loss + _gauss_nll(model(hx), hy, reduction="sum")
        return loss

    def after(step):
        upd.append(float((_params(model) - snap["p"]).abs().median()))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3942),
        200,
        _gauss_nll,
        before=before,
        backprop=backprop,
        after=after,
    )
    g = ctx.grad_norms
    ctx.check(
        "gradient at step 100 over 1000x the median of steps 80-99",
        g[100] > 1000 * _median(g[80:100]),
    )
    ctx.check(
        "median update in steps 130-190 under a tenth of steps 60-99",
        _median(upd[130:190]) < 0.1 * _median(upd[60:100]),
    )
    ctx.check(
        "gradients in steps 130-190 not smaller than in steps 60-99",
        _median(g[130:190]) > 0.5 * _median(g[60:100]),
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- exploding_gradients: He init with fan_in taken as in_channels --------------------------------


class _ReelStack(nn.Module):
    """Eight Conv1d ReLU layers over a reel-tension trace, mean-pooled into a regression head."""

    def __init__(self, channels=2, width=16, depth=8, wrong_fan_in=True):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(channels if i == 0 else width, width, 3, padding=1) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for conv in self.convs:
            fan_in = conv.in_channels if wrong_fan_in else conv.in_channels * 3
            nn.init.normal_(conv.weight, std=math.sqrt(2.0 / fan_in))
            nn.init.zeros_(conv.bias)
        self.outs: list[torch.Tensor] = []

    def forward(self, x):
        self.outs = []
        for conv in self.convs:
            x = F.relu(conv(x))
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
        return self.head(x.mean(-1)).squeeze(-1)


def _reel_traces(gen, batch, length=40):
    """Line-tension traces (two channels) and the mean tension to predict."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        f = 0.1 + 0.3 * torch.rand(batch, 2, 1, generator=gen)
        a = 0.5 + torch.rand(batch, 2, 1, generator=gen)
        x = a * torch.sin(f * t) + 0.2 * torch.randn(batch, 2, length, generator=gen)
        yield x, (a.squeeze(-1) * f.squeeze(-1)).sum(1) - 0.5


def _depth_ratio(model) -> float:
    first = model.outs[0].grad.norm()
    last = model.outs[-1].grad.norm().clamp_min(1e-20)
    return float(first / last)


@scenario(
    "cave_diving_guideline_reel_tension_deep_conv1d",
    "RMSprop",
    "exploding_gradients",
    "convs.0",
    None,
    heldout=True,
    note="an eight-layer ReLU Conv1d stack regressing guideline-reel tension from two-channel "
    "traces; the hand-written He init takes fan_in as in_channels instead of in_channels * "
    "kernel_size, so every layer's weights are sqrt(3)x too large and the gradient grows about "
    "1.7x per layer towards the input: dL/d(convs.0 output) is over 20x dL/d(convs.7 output) at "
    "the start and over 10x through the run (under 3x with the right fan_in); clipped at 1, so "
    "the run does not diverge",
)
def h394_cave_diving_reel_fan_in_init(ctx: Context) -> None:
    gen = seeded(3943)
    model = _ReelStack()
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-4)
    ratios: list[float] = []
    _loop(
        ctx,
        model,
        opt,
        _reel_traces(gen, 32),
        150,
        F.mse_loss,
        clip=1.0,
        inspect=lambda step: ratios.append(_depth_ratio(model)),
    )
    torch.manual_seed(3943)
    right = _ReelStack(wrong_fan_in=False)
    x, y = next(_reel_traces(torch.Generator().manual_seed(5), 32))
    F.mse_loss(right(x), y).backward()
    ctx.check("dL/d(convs.0) over 20x dL/d(convs.7) at step 0", ratios[0] > 20)
    ctx.check("median ratio over the run over 10x", _median(ratios) > 10)
    ctx.check("under 3x with fan_in = in_channels * kernel_size", _depth_ratio(right) < 3)
    ctx.check("loss finite", _finite(ctx.losses))


# -- loss_spike: an EMA shadow that never moved is swapped in and never swapped back -------------


@scenario(
    "hand_line_cod_jig_catch_gelu_regressor",
    "Adamax",
    "loss_spike",
    (),
    None,
    heldout=True,
    onset=120,
    note="a GELU regressor of hand-line jig catch; the EMA shadow's decay is typed 1.0 for "
    "0.999, so the shadow stays at the initial weights; at step 120 the validation hook swaps "
    "the shadow in and the swap back was lost in a refactor, so training goes on from the "
    "initial weights: the loss jumps over 3x with no gradient burst before it and the run "
    "recovers within 80 steps",
)
def h394_hand_line_ema_swap(ctx: Context) -> None:
    gen = seeded(3944)
    model = _MLP(8, 48, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    decay = 1.0
    shadow = [p.detach().clone() for p in model.parameters()]
    init = _params(model)
    seen = {}

    def before(step):
        if step == 120:  # validation: swap the EMA weights in (and never back)
            with torch.no_grad():
                for p, s in zip(model.parameters(), shadow, strict=True):
                    p.copy_(s)
            seen["at_init"] = _rel_change(init, _params(model)) < 1e-6

    def after(step):
        with torch.no_grad():
            for p, s in zip(model.parameters(), shadow, strict=True):
                s.mul_(decay).add_(p.detach(), alpha=1 - decay)

    _loop(ctx, model, opt, _readings(gen, 64, 8, 3944), 220, F.mse_loss, before=before, after=after)
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[100:120])
    ctx.check("loss at step 120 over 3x the mean of steps 100-119", ls[120] > 3 * pre)
    ctx.check("the weights at step 120 are the initial weights", seen.get("at_init", False))
    ctx.check("no gradient burst in steps 100-119", max(g[100:120]) < 3 * _median(g[80:120]))
    ctx.check("recovered: last 20 steps under 1.5x the pre-spike mean", _mean(ls[-20:]) < 1.5 * pre)
    ctx.check("loss finite", _finite(ls))


# -- data_outlier: a temporal convolutional network fed one shard with -9999 sentinels ----------


class _TemporalBlock(nn.Module):
    """Two weight-normalised causal dilated Conv1d layers with a residual connection."""

    def __init__(self, c_in, c_out, dilation, k=3, drop=0.0):
        super().__init__()
        wn = nn.utils.parametrizations.weight_norm
        self.pad = (k - 1) * dilation
        self.conv1 = wn(nn.Conv1d(c_in, c_out, k, dilation=dilation))
        self.conv2 = wn(nn.Conv1d(c_out, c_out, k, dilation=dilation))
        self.drop = nn.Dropout(drop)
        self.down = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x):
        h = self.drop(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))
        h = self.drop(F.relu(self.conv2(F.pad(h, (self.pad, 0)))))
        res = x if self.down is None else self.down(x)
        return F.relu(h + res)


class _TCN(nn.Module):
    def __init__(self, c_in=1, width=16, dilations=(1, 2, 4, 8)):
        super().__init__()
        self.blocks = nn.ModuleList(
            _TemporalBlock(c_in if i == 0 else width, width, d) for i, d in enumerate(dilations)
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x[:, :, -1]).squeeze(-1)


@scenario(
    "sheep_wash_pool_level_tcn_forecaster",
    "AdamW",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=110,
    note="a temporal convolutional network (four residual blocks of weight-normalised causal "
    "dilated Conv1d layers, dilations 1-8) forecasting a sheep-wash pool's next level from 64 "
    "generated readings; at step 110 one logger's shard arrives with its -9999 missing-value "
    "sentinel in a run of readings of a quarter of the rows: loss and gradient over 20x, "
    "clipped at 1, the run recovers",
)
def h394_sheep_wash_tcn_sentinel_shard(ctx: Context) -> None:
    gen = seeded(3945)
    model = _TCN()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:8, :, 40:52] = -9999.0
        return x, y

    _loop(ctx, model, opt, _series(gen, 32), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss finite and falling before step 110", _fell(ls[:110]))
    ctx.check(
        "loss at step 110 over 20x the median of steps 90-109", ls[110] > 20 * _median(ls[90:110])
    )
    ctx.check(
        "gradient at step 110 over 20x the median of steps 90-109", g[110] > 20 * _median(g[90:110])
    )
    ctx.check(
        "recovered: last 20 steps under 2x steps 90-109", _mean(ls[-20:]) < 2 * _mean(ls[90:110])
    )
    ctx.check("loss finite", _finite(ls))


# -- gradient_spike: a loss-weight table with 100.0 for 1.00 at one step --------------------------


@scenario(
    "surf_lifesaving_rescue_tube_bce_net",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=130,
    note="a ReLU BCE net (BCEWithLogits) judging rescue-tube holds, SGD momentum 0.9, accumulation "
    "over 2; the loss-weight ramp table has 100.0 typed for 1.00 at step 130, so that step's "
    "backpropagated loss is 100x on a clean batch: the gradient is over 30x the median, clipped "
    "at 1, the run recovers",
)
def h394_surf_lifesaving_loss_weight_typo(ctx: Context) -> None:
    gen = seeded(3946)
    model = _MLP(12, 48)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    table = {s: 1.0 for s in range(240)}
    table[130] = 100.0

    def backprop(step, loss, accumulate):
        return table[step] * loss / accumulate

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 32, 12, 3946, flip=0.05),
        240,
        F.binary_cross_entropy_with_logits,
        classifier=False,
        backprop=backprop,
        clip=1.0,
        accumulate=2,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 130 over 30x the median of steps 110-129",
        g[130] > 30 * _median(g[110:130]),
    )
    ctx.check("the logged loss at step 130 is ordinary", ls[130] < 2 * _mean(ls[110:130]))
    ctx.check("loss fell", _fell(ls[:130]))
    ctx.check(
        "recovered: last 20 steps under 1.5x steps 110-129",
        _mean(ls[-20:]) < 1.5 * _mean(ls[110:130]),
    )


# -- update_ratio_out_of_range: a misspelt lr-multiplier key freezes the body --------------------


@scenario(
    "spirit_level_bubble_vial_two_group_classifier",
    "Adagrad",
    "update_ratio_out_of_range",
    ("fc1", "fc2"),
    None,
    heldout=True,
    note="a ReLU classifier grading bubble vials, two param groups built from an lr-multiplier "
    "dict; the config spells the key 'back_bone' and the code reads lr_mult.get('backbone', 0.0), "
    "so fc1 and fc2 train at lr 0 while receiving gradients: they move under 1e-6 of their norm "
    "while the head moves over 5%",
)
def h394_spirit_level_frozen_body(ctx: Context) -> None:
    gen = seeded(3947)
    model = _MLP(16, 64, out=6)
    lr = 2e-2
    lr_mult = {"back_bone": 1.0, "head": 1.0}
    body = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [
            {"params": body, "lr": lr * lr_mult.get("backbone", 0.0)},
            {"params": model.head.parameters(), "lr": lr * lr_mult.get("head", 0.0)},
        ]
    )
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    grads: list[float] = []

    def inspect(step):
        grads.append(float(model.fc1.weight.grad.norm()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 3947, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        inspect=inspect,
    )
    ctx.check("fc1 moved under 1e-6 of its norm", _rel_change(w1, model.fc1.weight) < 1e-6)
    ctx.check("head moved over 5% of its norm", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("fc1 received gradients", min(grads) > 0)
    ctx.check("loss finite", _finite(ctx.losses))


# -- sharpness_above_limit: a warm-up lambda without its clamp ------------------------------------


def _top_eig(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of loss_fn(model(x), y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    "washboard_road_corrugation_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=10,
    note="a tanh regressor of washboard-road corrugation height, plain SGD; the 10-step warm-up "
    "is a LambdaLR whose lambda is step / 10 without its min(1, .) clamp, so the rate keeps "
    "rising after step 10: lr x top Hessian eigenvalue (power iteration) is under 2 at step 10 "
    "and past 2 later, and the loss blows up",
)
def h394_washboard_road_warmup_no_clamp(ctx: Context) -> None:
    gen = seeded(3948)
    model = _MLP(8, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 10)
    probe = next(_readings(torch.Generator().manual_seed(9), 256, 8, 3948))
    sharp: dict[int, float] = {}

    def before(step):
        if step % 10 == 0:
            sharp[step] = opt.param_groups[0]["lr"] * _top_eig(model, F.mse_loss, probe)

    _loop(ctx, model, opt, _readings(gen, 64, 8, 3948), 250, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    ctx.check("lr x sharpness under 2 at step 10", sharp[10] < 2)
    ctx.check(
        "lr x sharpness past 2 before the blow-up", any(v > 2 for s, v in sharp.items() if s < end)
    )
    ctx.check("loss fell during warm-up", _mean(ls[5:15]) < _mean(ls[:5]))
    ctx.check(
        "loss blew up (non-finite or over 100x its lowest)",
        bad is not None or max(ls) > 100 * min(ls),
    )


# -- softmax_collapse: a learnt logit scale initialised at 10 in log space -------------------------


class _ScaledHead(nn.Module):
    """CLIP-style cosine head: scale * cos(h, w_c), scale = exp(log_scale) clamped at 100."""

    def __init__(self, hidden, classes, log_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, hidden) / math.sqrt(hidden))
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))

    def cosines(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).t()

    def forward(self, h):
        return self.log_scale.exp().clamp(max=100.0) * self.cosines(h)


class _TestNet(nn.Module):
    def __init__(self, d_in=16, hidden=48, classes=5, log_scale=10.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = _ScaledHead(hidden, classes, log_scale)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        return self.head(self.features(x))


def _collapsed(logits, y) -> float:
    p = torch.softmax(logits.float(), dim=-1)
    return float((p.gather(1, y[:, None]) == 1.0).float().mean())


@scenario(
    "sand_dollar_test_pattern_scaled_logit_classifier",
    "RAdam",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="a GELU cosine classifier of sand-dollar petaloid patterns with a CLIP-style learnt "
    "logit scale exp(log_scale) clamped at 100; log_scale is initialised at 10.0, the scale "
    "itself, instead of ln 10, so the scale sits at the clamp (no gradient reaches it) and the "
    "cosines are multiplied by 100 for 10: over half the rows' target probability is exactly 1.0 "
    "in float32 over the last 30 steps against under 5% at scale 10 on the same cosines",
)
def h394_sand_dollar_log_scale_init(ctx: Context) -> None:
    gen = seeded(3949)
    model = _TestNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    frac: list[float] = []
    intended: list[float] = []

    def watch(step, out, x, y):
        with torch.no_grad():
            frac.append(_collapsed(out, y))
            intended.append(_collapsed(10.0 * model.head.cosines(model.features(x)), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 3949, spread=1.0),
        160,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the target probabilities exactly 1.0 (last 30 steps)", _mean(frac[-30:]) > 0.5
    )
    ctx.check("under 5% at the intended scale 10 on the same logits", _mean(intended[-30:]) < 0.05)
    scale = float(model.head.log_scale.detach().exp().clamp(max=100.0))
    ctx.check("the scale sits at the clamp, 100", scale > 99.0)


# -- loss_divergence: decoupled weight decay with its sign flipped ---------------------------------


@scenario(
    "grain_silo_bridging_depth_tanh_regressor",
    "Adam",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="a tanh regressor of grain-silo bridging depth; the training script's hand-written "
    "decoupled weight decay after opt.step() is p.mul_(1 + lr * wd) for p.mul_(1 - lr * wd), "
    "wd 2.0: the weights grow over 2x, the tanh units saturate and the loss climbs slowly to "
    "over 3x its lowest 20-step mean, with no single jump over 2x, finite",
)
def h394_grain_silo_decay_sign(ctx: Context) -> None:
    gen = seeded(3950)
    model = _MLP(10, 48, act=nn.Tanh)
    lr, wd = 3e-3, 2.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    w0 = float(_params(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3950), 300, F.mse_loss, after=after)
    ls = ctx.losses
    lowest = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 20))
    jumps = max(b / max(a, 1e-12) for a, b in zip(ls[:-1], ls[1:], strict=True))
    ctx.check("last 20 steps over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3 * lowest)
    ctx.check("no single-step jump over 2x", jumps < 2)
    ctx.check("weights grew over 2x", float(_params(model).norm()) > 2 * w0)
    ctx.check("loss finite", _finite(ls))


# -- controls --------------------------------------------------------------------------------------


class _DropMLP(nn.Module):
    def __init__(self, d_in, hidden=64, p=0.1):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.drop1(self.act1(self.fc1(x)))
        return self.head(self.drop2(self.act2(self.fc2(h)))).squeeze(-1)


@scenario(
    "log_drum_resonance_decay_dropout_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a SiLU regressor of log-drum resonance decay with dropout 0.1, AdamW "
    "(weight decay 1e-2, no decay on biases), ReduceLROnPlateau on a held-out batch, clipping at 1",
)
def h394_log_drum_dropout_plateau_control(ctx: Context) -> None:
    gen = seeded(3951)
    model = _DropMLP(10)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    hx, hy = next(_readings(torch.Generator().manual_seed(11), 256, 10, 3951))

    def plateau():
        model.eval()
        with torch.no_grad():
            v = float(F.mse_loss(model(hx), hy))
        model.train()
        return v

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3951),
        200,
        F.mse_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    ctx.check("loss fell to under half", _fell(ctx.losses, ratio=0.5))
    ctx.check("held-out loss under half its start", plateau() < 0.5 * float(hy.var()))
    ctx.check("loss finite", _finite(ctx.losses))


class _WhirlNet(nn.Module):
    def __init__(self, channels=2, classes=5, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


@scenario(
    "bull_roarer_whirl_pitch_conv1d_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="control: a ReLU Conv1d classifier of bull-roarer whirl pitch from two-channel traces, "
    "SGD Nesterov (momentum 0.9, weight decay 5e-4) under OneCycleLR, label smoothing 0.1, "
    "clipping at 2",
)
def h394_bull_roarer_onecycle_control(ctx: Context) -> None:
    gen = seeded(3952)
    model = _WhirlNet()
    steps = 200
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 3952),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ctx.check("loss fell to under 60%", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite", _finite(ctx.losses))


class _TiedAE(nn.Module):
    def __init__(self, d_in=24, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _wear_profiles(gen, batch, d_in=24, seed=3953):
    """Spindle-wear profiles: a few smooth modes plus noise (the autoencoder's target is x)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, d_in)
    modes = torch.stack(
        [torch.sin(3.14 * k * t + torch.rand(1, generator=g).item()) for k in range(1, 5)]
    )
    while True:
        x = torch.randn(batch, 4, generator=gen) @ modes + 0.05 * torch.randn(
            batch, d_in, generator=gen
        )
        yield x, x


@scenario(
    "weathercock_spindle_wear_tied_autoencoder",
    "Adam",
    "healthy",
    heldout=True,
    note="control: a tied-weight tanh autoencoder of weathercock spindle-wear profiles (the "
    "decoder reuses the encoder weight transposed), fp16 autocast with a GradScaler, Adam, "
    "accumulation over 2, clipping at 1, Huber loss",
)
def h394_weathercock_tied_ae_fp16_control(ctx: Context) -> None:
    gen = seeded(3953)
    model = _TiedAE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _wear_profiles(gen, 32),
        200,
        lambda out, y: F.huber_loss(out, y, delta=1.0),
        clip=1.0,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell to under half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite", _finite(ctx.losses))
