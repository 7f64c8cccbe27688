"""Held-out set 350 (``h350_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a solfatara vent gas-flux diagonal state-space forecaster
whose decay lost the minus sign of A = -exp(A_log) when ported (state and gradients grow through
time), a faience frit-shrinkage log-normal NLL net whose scale goes through a ReLU for a softplus
(log 0, NaN), a gunflint knapping spall-force GELU regressor that converts to newtons inside the
fp16 autocast region (fp16 overflow), a ronroco strum-pattern two-group classifier whose trunk lr is
typed 1e-7 for 1e-2 (trunk frozen), a noborigama chamber-firing Conv1d classifier fed one shard of
thermocouple traces in Fahrenheit, unstandardised (one corrupted batch), a laouto pick-stroke Huber
regressor whose resumed loop multiplies by the accumulation count instead of dividing for one step
(one gradient burst), a nail-making header-strike SiLU regressor whose target normaliser's running
mean accumulates instead of averaging (drifting target, slow climb), a bizen kiln ash-glaze tanh
regressor whose warm-up peak lr is typed 2.0 for 0.2 (past 2/sharpness), a requinto fingering
classifier whose distillation temperature multiplies the hard-label logits instead of dividing
(softmax saturates), a stumpwork padding-stitch ReLU classifier whose Adam lr is typed 3e-1 for
3e-3 (ReLUs die), and three controls (a kankles string-decay diagonal state-space regressor under
bf16 autocast with a stable, log-parameterised negative decay; a slipware trailing-line Conv1d
classifier with SGD Nesterov, OneCycleLR, label smoothing and clipping; a majolica tin-glaze
opacity Huber regressor with Adagrad, a no-decay bias group, accumulation over 4 and
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
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=None,
    accumulate=1,
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated (before the division by ``accumulate``), ``plateau()`` gives the
    validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the gradients before
    clipping; ``amp`` is None or the autocast dtype. Stops after a non-finite loss (once
    ``ctx.step`` has seen it); returns the number of steps run."""
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
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss / accumulate
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
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, channels=3, length=48, noise=0.4):
    """Multichannel traces: each class a mix of two damped tones per channel, plus noise."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.5 + 2.5 * torch.rand(classes, channels, 2, generator=g)
    phase = 6.28 * torch.rand(classes, channels, 2, generator=g)
    t = torch.linspace(0, 6.28, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f, p = freq[y][..., None], phase[y][..., None]
        shift = 0.3 * torch.randn(batch, 1, 1, 1, generator=gen)
        wave = torch.sin(f * t + p + shift).sum(2) * torch.exp(-0.1 * t)
        yield wave + noise * torch.randn(batch, channels, length, generator=gen), y


def _series(gen, batch, seed, length=64, d_in=3, noise=0.05):
    """Input series (d_in driving readings) and a target that is a leaky, lagged response to
    them (a sum of decaying memories at several time scales), read at every step."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, 3, generator=g) / math.sqrt(d_in)
    rates = torch.tensor([0.6, 0.85, 0.95])
    while True:
        x = torch.randn(batch, length, d_in, generator=gen)
        drive = x @ mix
        mem = torch.zeros(batch, 3)
        ys = []
        for t in range(length):
            mem = rates * mem + (1 - rates) * drive[:, t]
            ys.append(mem.sum(-1))
        y = torch.stack(ys, 1) * 2.0
        yield x, y + noise * torch.randn(batch, length, generator=gen)


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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


# -- diagonal state-space layer (S4D-real / Mamba-style, time-invariant) -------------------------


class DiagonalSSM(nn.Module):
    """h_t = a * h_{t-1} + B x_t, y_t = C h_t + D x_t, a = exp(dt * A) per state, scanned in a
    Python loop. ``negate`` is the port's A = -exp(A_log) (stable, |a| < 1); without it A =
    exp(A_log) and |a| > 1. With ``keep`` set, the states keep their gradients."""

    def __init__(self, d_model, states=16, dt=0.01, negate=True):
        super().__init__()
        self.A_log = nn.Parameter(torch.log(torch.arange(1, states + 1).float()))
        self.B = nn.Linear(d_model, states, bias=False)
        self.C = nn.Linear(states, d_model, bias=False)
        self.D = nn.Parameter(torch.ones(d_model))
        self.dt = dt
        self.negate = negate
        self.keep = False
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        A = -torch.exp(self.A_log) if self.negate else torch.exp(self.A_log)
        a = torch.exp(self.dt * A).to(x.dtype)
        u = self.B(x)
        h = torch.zeros(x.shape[0], u.shape[-1], dtype=u.dtype)
        hs = []
        self.states = []
        for t in range(x.shape[1]):
            h = a * h + u[:, t]
            if self.keep:
                h.retain_grad()
                self.states.append(h)
            hs.append(h)
        return self.C(torch.stack(hs, 1)) + self.D * x


class SSMForecaster(nn.Module):
    """embed -> ssm -> GELU -> head, read at every time step."""

    def __init__(self, d_in=3, dim=16, states=16, dt=0.01, negate=True):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.ssm = DiagonalSSM(dim, states, dt, negate)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        return self.head(F.gelu(self.ssm(self.embed(x)))).squeeze(-1)


@scenario(
    family="solfatara_vent_gas_flux_diagonal_ssm_forecaster",
    optimizer="Adam",
    cause="exploding_gradients",
    where=("ssm",),
    diverges=None,
    heldout=True,
    note="A hand-written diagonal linear state-space forecaster (embed, ssm: h_t = a * h_{t-1} + B x_t with a = exp(dt * A) per state, 16 states, scanned in a Python loop, y = C h + D x, then GELU, head) predicting a solfatara vent's CO2 flux (standardised) at every one of 64 steps from three driving readings (barometric pressure, soil temperature, rain), Adam at 3e-3, MSE, 200 steps. The layer was ported from a Mamba-style reference that stores A_log and computes A = -exp(A_log); the port wrote A = exp(A_log), dropping the minus sign, so every state's decay a = exp(dt * A) is above 1 (1.01 to 1.17 at dt 0.01): the states and the gradient flowing back through the scan grow geometrically with the distance in time: the gradient at the first state is orders of magnitude larger than at the last, the gradient norm is thousands of times that of the correctly signed layer, the loss starts near 1e4 and, though it falls, stays erratic and far above what the correct port reaches; no NaN.",
)
def h350_solfatara_ssm_decay_sign_dropped(ctx: Context) -> None:
    gen = seeded(35001)
    model = SSMForecaster(negate=False)
    probe = next(_series(torch.Generator().manual_seed(3501), 16, 350))
    twin = SSMForecaster(negate=True)
    twin.load_state_dict(model.state_dict())
    norms = {}
    for name, m in (("port", model), ("reference", twin)):
        m.ssm.keep = True
        F.mse_loss(m(probe[0]), probe[1]).backward()
        norms[name] = grad_norm(m)
        if name == "port":
            first, last = m.ssm.states[0].grad, m.ssm.states[-1].grad
            norms["through_time"] = float(first.norm() / last.norm().clamp_min(1e-30))
        m.ssm.keep = False
        m.zero_grad(set_to_none=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    _loop(ctx, model, opt, _series(gen, 16, 350), 200, F.mse_loss)
    decay = torch.exp(0.01 * torch.exp(model.ssm.A_log.detach()))
    ctx.check(
        "before training the gradient at the first state is over 100x that at the last",
        norms["through_time"] > 100.0,
    )
    ctx.check(
        "before training the gradient norm is over 1000x the correctly signed port's",
        norms["port"] > 1000.0 * norms["reference"],
    )
    ctx.check(
        "the median gradient norm over the run is over 100x the correct port's at the start",
        _median(ctx.grad_norms) > 100.0 * norms["reference"],
    )
    ctx.check("every state's decay a is still above 1 at the end", bool((decay > 1.0).all()))


# -- faience frit: the log-normal scale goes through a ReLU --------------------------------------


class FritShrinkNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2, then loc_head and scale_head (the scale through a ReLU)."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.loc_head = nn.Linear(hidden, 1)
        self.scale_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        scale = F.relu(self.scale_head(h))  # meant: F.softplus(...) + 1e-4
        return torch.cat([self.loc_head(h), scale], -1)


def _lognormal_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    z = (torch.log(y) - mu) / sigma
    return (torch.log(sigma) + 0.5 * z * z + torch.log(y)).mean()


def _shrinkage(gen, batch, seed):
    """Firing shrinkage (percent, positive, skewed) from eight frit readings."""
    for x, y in _readings(gen, batch, 8, seed, noise=0.0):
        yield x, torch.exp(1.5 + 0.5 * y + 0.15 * torch.randn(batch, generator=gen))


@scenario(
    family="faience_frit_shrinkage_lognormal_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("scale_head",),
    diverges=91,
    heldout=True,
    note="A hand-written SiLU net (fc1, act1, fc2, act2, loc_head, scale_head) predicting the firing shrinkage of an Egyptian-faience frit body (percent, skewed, positive) from eight readings of quartz grain size, soda and lime content and kiln ramp, as a log-normal: the log-normal NLL log(sigma) + (log y - mu)^2 / (2 sigma^2) + log y written by hand, RAdam at 1e-2, 300 steps. The scale was meant to be softplus(scale_head(h)) + 1e-4 and was written F.relu(scale_head(h)): the NLL pushes sigma down on the rows it fits well until scale_head's output crosses zero on a row, the ReLU gives exactly 0, log(0) is -inf and the residual over 0 is inf or NaN, and the loss is NaN from that step (the run stops there).",
)
def h350_faience_scale_relu_log_zero(ctx: Context) -> None:
    gen = seeded(35002)
    model = FritShrinkNet()
    with torch.no_grad():
        model.scale_head.bias.fill_(0.5)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    zeros = []

    def watch(step, out, x, y):
        zeros.append(float((out[:, 1] == 0).float().sum()))

    n = _loop(ctx, model, opt, _shrinkage(gen, 32, 3502), 300, _lognormal_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite at some step", bad is not None)
    ctx.check(
        "scale_head gives a scale of exactly 0 on the step the loss turns non-finite",
        bad is not None and zeros[bad] > 0,
    )
    ctx.check("the loss was finite before, for over 20 steps", bad is not None and bad > 20)
    ctx.check("the run stopped at the non-finite loss", n == len(ctx.losses))


# -- gunflint knapping: newtons computed inside the fp16 region ---------------------------------


class ToNewtons(nn.Module):
    """Turns the standardised prediction back into newtons: y * spread + mean."""

    def __init__(self, mean, spread):
        super().__init__()
        self.mean = mean
        self.spread = spread

    def forward(self, z):
        return z * self.spread + self.mean


class SpallForceNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head -> to_newtons."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)
        self.to_newtons = ToNewtons(30000.0, 22000.0)

    def forward(self, x):
        z = self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        return self.to_newtons(z)


def _spall(gen, batch, seed):
    """Peak spall force in newtons (about 30 kN, spread 22 kN) from ten knapping readings."""
    for x, y in _readings(gen, batch, 10, seed):
        yield x, 30000.0 + 22000.0 * 1.6 * y


def _relative_huber(out, y):
    return F.huber_loss(out / 22000.0, y / 22000.0)


@scenario(
    family="gunflint_knapping_spall_force_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("to_newtons",),
    diverges=35,
    heldout=True,
    note="A hand-written GELU regressor (fc1, act1, fc2, act2, head, to_newtons) predicting the peak force of a gunflint spall (about 30 kN, spread 22 kN) from ten readings of the hammerstone, the flint nodule and the strike angle, AdamW at 1e-3, Huber loss on the residual over the spread, under fp16 autocast with a GradScaler, 250 steps. The deployment wanted the model to return newtons, so to_newtons (z * 22000 + 30000) was added inside forward, inside the autocast region: its output is fp16, whose largest finite value is 65504 N. Once the head has learned the heavy strikes, the predictions for the largest spalls pass 65504 N, overflow to inf in fp16 (the same batch in fp32 is finite), and the loss is inf at that step (the run stops there).",
)
def h350_gunflint_newtons_in_fp16(ctx: Context) -> None:
    gen = seeded(35003)
    model = SpallForceNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    seen = {}

    def watch(step, out, x, y):
        if not torch.isfinite(out).all() and "step" not in seen:
            with torch.no_grad():
                seen["step"] = step
                seen["fp32_finite"] = bool(torch.isfinite(model(x)).all())
                seen["fp32_max"] = float(model(x).max())

    _loop(
        ctx,
        model,
        opt,
        _spall(gen, 64, 3503),
        250,
        _relative_huber,
        watch=watch,
        scaler=scaler,
        amp=torch.float16,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the fp16 prediction overflows to inf at some step", "step" in seen)
    ctx.check(
        "the same batch in fp32 is finite, with its largest prediction over 65504 N",
        seen.get("fp32_finite", False) and seen.get("fp32_max", 0.0) > 65504.0,
    )
    ctx.check("the loss is non-finite at that step", bad is not None and bad == seen.get("step"))
    ctx.check("the loss fell before the overflow", bad is not None and bad > 20)


# -- ronroco: the trunk group's lr is typed 1e-7 for 1e-2 ---------------------------------------


@scenario(
    family="ronroco_strum_pattern_two_group_relu_classifier",
    optimizer="SGD momentum",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU classifier (fc1, act1, fc2, act2, head) naming which of eight strum patterns (rasgueo, chasquido, ...) a ronroco player used from sixteen accelerometer features of the strumming hand, SGD with momentum 0.9 and two parameter groups, cross-entropy, 240 steps. The config meant the trunk (fc1, fc2) at 1e-2 like the head and had it typed 1e-7: the trunk's weights move under 1e-3 of their norm over the whole run while the head's move over 10%, so only the head learns, on random features; the loss falls slowly and stays finite.",
)
def h350_ronroco_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(35004)
    model = Trunk(16, 64, out=8)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.SGD(
        [
            {"params": trunk, "lr": 1e-7},  # meant: 1e-2
            {"params": model.head.parameters(), "lr": 1e-2},
        ],
        momentum=0.9,
    )
    w0 = {k: getattr(model, k).weight.detach().clone() for k in ("fc1", "fc2", "head")}
    _loop(
        ctx, model, opt, _grades(gen, 64, 16, 8, 3504, 1.4), 240, F.cross_entropy, classifier=True
    )
    moved = {k: _rel_change(w0[k], getattr(model, k).weight) for k in w0}
    ctx.check("fc1 and fc2 move under 1e-3 of their norm", max(moved["fc1"], moved["fc2"]) < 1e-3)
    ctx.check("the head moves over 10% of its norm", moved["head"] > 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- noborigama: one shard of traces logged in Fahrenheit ----------------------------------------


class ChamberConv(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> pool -> head over three thermocouple traces."""

    def __init__(self, channels=3, width=16, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    family="noborigama_chamber_firing_conv1d_classifier",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, mean pool, head) naming the firing stage (five: body-dry, water-smoking, reduction, body-reduction, soaking) of a noborigama climbing-kiln chamber from three standardised thermocouple traces of 48 readings, RMSprop at 1e-3, cross-entropy, clipping at 1.0, 260 steps. At step 120 one chamber's shard comes from a logger that wrote degrees Fahrenheit and skipped the standardisation (readings around 2200 for about 0): that one batch's loss and gradient are tens of times the usual, the step is clipped, and the run recovers from the next clean batch.",
)
def h350_noborigama_fahrenheit_shard(ctx: Context) -> None:
    gen = seeded(35005)
    model = ChamberConv()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == 120:
            return 2200.0 + 180.0 * x, y
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 3505),
        260,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    l, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 120 is over 20x the median of steps 100-119",
        l[120] > 20 * _median(l[100:120]),
    )
    ctx.check(
        "the gradient at step 120 is over 20x the median of steps 100-119",
        g[120] > 20 * _median(g[100:120]),
    )
    ctx.check(
        "the run recovers: the last 20 steps average under 1.5x steps 100-119",
        _mean(l[-20:]) < 1.5 * _mean(l[100:120]),
    )
    ctx.check("the loss fell before the shard", _fell(l[:120]))


# -- laouto: the resumed loop multiplies by the accumulation count -------------------------------


@scenario(
    family="laouto_pick_stroke_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="A hand-written GELU regressor (fc1, act1, fc2, act2, head) predicting the loudness (standardised) of a laouto pick stroke from twelve readings of the plectrum angle, speed and the course plucked, SGD with Nesterov momentum 0.9 at 2e-2, Huber loss, gradient accumulation over 8 micro-batches, clipping at 5.0, 220 steps. The run resumes from a checkpoint at step 150 through a separate code path whose first step computes loss * accum instead of loss / accum: that one step's gradient is 64x the usual on clean data, the clip bounds the update, and the run goes on normally.",
)
def h350_laouto_resume_accum_multiplied(ctx: Context) -> None:
    gen = seeded(35006)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    accum = 8

    def backprop(step, loss):
        if step == 150:
            return loss * accum  # meant: loss / accum
        return loss / accum

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 16, 12, 3506, noise=0.1),
        220,
        F.huber_loss,
        backprop=backprop,
        clip=5.0,
        accumulate=accum,
    )
    l, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 150 is over 30x the median of steps 130-149",
        g[150] > 30 * _median(g[130:150]),
    )
    ctx.check(
        "the loss at step 150 is ordinary: under 2x the median of steps 130-149",
        l[150] < 2 * _median(l[130:150]),
    )
    ctx.check(
        "the run recovers: the last 20 steps average under 1.5x steps 130-149",
        _mean(l[-20:]) < 1.5 * _mean(l[130:150]),
    )
    ctx.check("finite throughout", _finite(l))


# -- nail making: the target normaliser's running mean accumulates -------------------------------


@scenario(
    family="nail_making_header_strike_silu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU regressor (fc1, act1, fc2, act2, head) predicting the number of hammer strikes a nailer needs to head a nail in the nail header (about 6, spread 1.5) from ten readings of the rod's heat colour, gauge and iron, Adamax at 3e-4, MSE on the normalised target, 260 steps. The target normaliser keeps a running mean updated as running_mean += 0.005 * batch_mean, the (1 - 0.005) * running_mean factor left out: the running mean grows by about 0.03 strikes a step instead of settling at 6, the normalised targets drift steadily away faster than the model follows, and the loss climbs slowly and steadily to tens of times its start, with no single jump and no NaN.",
)
def h350_nail_header_running_mean_accumulates(ctx: Context) -> None:
    gen = seeded(35007)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-4)
    stats = {"mean": 6.0, "spread": 1.5}
    means = []

    def strikes():
        for x, y in _readings(gen, 32, 10, 3507):
            raw = 6.0 + 1.5 * y
            stats["mean"] += 0.005 * float(raw.mean())  # meant: 0.995 * mean + 0.005 * batch
            means.append(stats["mean"])
            yield x, (raw - stats["mean"]) / stats["spread"]

    _loop(ctx, model, opt, strikes(), 260, F.mse_loss)
    l = ctx.losses
    smooth = [_mean(l[i : i + 10]) for i in range(0, len(l) - 9)]
    jumps = [smooth[i + 10] / smooth[i] for i in range(len(smooth) - 10)]
    ctx.check("the running mean drifts over 6 strikes past the true 6", means[-1] > 12.0)
    ctx.check(
        "the last 20 steps' loss is over 5x the lowest 10-step mean",
        _mean(l[-20:]) > 5 * min(smooth),
    )
    ctx.check("no 10-step mean is over 2x the one before it", max(jumps) < 2.0)
    ctx.check("finite throughout", _finite(l))


# -- bizen kiln: the warm-up peak lr is typed 2.0 for 0.2 ----------------------------------------


@scenario(
    family="bizen_kiln_ash_glaze_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh regressor (fc1, act1, fc2, act2, head) predicting the thickness of the natural ash glaze (goma, standardised) on a Bizen pot from ten readings of its place in the anagama, the wood burnt and the firing days, plain SGD, MSE, a linear warm-up over 60 steps to the peak lr, 200 steps. The peak lr was meant to be 0.2 and was typed 2.0: during the warm-up the lr passes 2 / (top Hessian eigenvalue, measured by power iteration on Hessian-vector products every 5 steps), the loss starts oscillating and then blows up.",
)
def h350_bizen_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(35008)
    model = Trunk(10, 64, act=nn.Tanh)
    peak = 2.0  # meant: 0.2
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = next(_readings(torch.Generator().manual_seed(3508), 256, 10, 3508))
    products = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / 60)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 5 == 0 and (not ctx.losses or _finite(ctx.losses)):
            products[step] = lr * _sharpness(model, F.mse_loss, *probe)

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3508), 200, F.mse_loss, before=before)
    l = ctx.losses
    over = [s for s, v in sorted(products.items()) if v > 2.0]
    blow = next(
        (i for i, v in enumerate(l) if not math.isfinite(v) or v > 100 * min(l[: i + 1])), None
    )
    ctx.check("lr x top Hessian eigenvalue passes 2 at some step", bool(over))
    ctx.check("the loss blows up (non-finite or over 100x its lowest so far)", blow is not None)
    ctx.check(
        "the product passed 2 before the blow-up",
        bool(over) and blow is not None and over[0] < blow,
    )
    ctx.check("the loss fell first", blow is not None and min(l[:blow]) < 0.7 * l[0])


# -- requinto: the distillation temperature multiplies the hard-label logits ---------------------


@scenario(
    family="requinto_fingering_position_gelu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU classifier (fc1, act1, fc2, act2, head) naming the fingering position (ten) a requinto guitarist used from twenty features of the note's attack and timbre, NAdam at 1e-2, 220 steps. The loss was ported from a distillation recipe whose hard-label term reads cross_entropy(logits / T, y) with T = 50, the recipe's temperature, and the port wrote logits * T: every logit the softmax sees is 50x what the head computes, so each small step of the head moves the softmax's margins 50x as far, the softmax saturates, and from about step 40 on over half the rows' target probability rounds to exactly 1.0 in float32 (over 90% late in the run), while the rows it gets wrong carry huge losses.",
)
def h350_requinto_temperature_multiplied(ctx: Context) -> None:
    gen = seeded(35009)
    model = Trunk(20, 64, out=10, act=nn.GELU)
    T = 50.0
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    collapsed = []

    def loss_fn(out, y):
        return F.cross_entropy(out * T, y)  # meant: out / T

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach() * T, y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 20, 10, 3509, 0.8),
        220,
        loss_fn,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' target probability is exactly 1.0, last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("under a tenth at the start", _mean(collapsed[:5]) < 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- stumpwork: Adam's lr typed 3e-1 for 3e-3 ----------------------------------------------------


@scenario(
    family="stumpwork_padding_stitch_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU classifier (fc1, act1, fc2, act2, head) naming which of six padding stitches (felt, string, satin, ...) raised a stumpwork motif from fourteen readings of its height profile, Adam, cross-entropy, 240 steps. The lr was meant to be 3e-3 and was typed 3e-1: the first few large steps push most of fc2's pre-activations negative on every input, act2's units die (never positive on a batch) and get no gradient to come back; over half of them stay dead for the rest of the run and the loss stays erratic and over 0.7x chance (ln 6).",
)
def h350_stumpwork_adam_lr_typo(ctx: Context) -> None:
    gen = seeded(35010)
    model = Trunk(14, 64, out=6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-1)  # meant: 3e-3
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(x)))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 3510, 1.2),
        240,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half of act2's units are dead in each of the last 50 steps", min(dead[-50:]) > 0.5
    )
    ctx.check("under a tenth dead at the start", dead[0] < 0.1)
    ctx.check(
        "the loss is still over 0.7x chance (ln 6) over the last 20 steps",
        _mean(ctx.losses[-20:]) > 0.7 * math.log(6),
    )


# -- controls ------------------------------------------------------------------------------------


@scenario(
    family="kankles_string_decay_bf16_diagonal_ssm_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: the hand-written diagonal linear state-space model (embed, ssm: h_t = a * h_{t-1} + B x_t, a = exp(dt * A) with the stable A = -exp(A_log), 16 states, scanned in a Python loop, then GELU, head) predicting a kankles string's ringing amplitude (standardised) at every one of 64 steps from three pluck readings, under bf16 autocast, AdamW at 3e-3 with weight decay 0.01, a 20-step linear warm-up then cosine decay (LambdaLR), clipping at 1.0, MSE, 200 steps. Trains normally.",
)
def h350_kankles_bf16_stable_ssm(ctx: Context) -> None:
    gen = seeded(35011)
    model = SSMForecaster(negate=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 200

    def shape(step):
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    _loop(
        ctx,
        model,
        opt,
        _series(gen, 16, 3511),
        steps,
        F.mse_loss,
        clip=1.0,
        sched=sched,
        amp=torch.bfloat16,
    )
    decay = torch.exp(0.01 * -torch.exp(model.ssm.A_log.detach()))
    ctx.check("the loss fell: last 10 under 0.3x the first 10", _fell(ctx.losses, ratio=0.3))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("every state's decay stays below 1", bool((decay < 1.0).all()))


@scenario(
    family="slipware_trailing_line_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, mean pool, head) naming which of four slip-trailing lines (dot, feather, combed, marbled) a potter drew from three noisy traces of the trailer's pressure and nozzle speed (48 readings), SGD with Nesterov momentum 0.9 under OneCycleLR (max_lr 0.05), cross-entropy with label smoothing 0.1, clipping at 1.0, 220 steps. Trains normally.",
)
def h350_slipware_conv1d_onecycle(ctx: Context) -> None:
    gen = seeded(35012)
    model = ChamberConv(classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=220)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 4, 3512, noise=0.6),
        220,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell: last 10 under 0.6x the first 10", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="majolica_tin_glaze_opacity_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written SiLU regressor (fc1, act1, fc2, act2, head) predicting the opacity (standardised) of a majolica tin glaze from twelve readings of tin oxide, lead and firing temperature, Adagrad at 5e-2 with two parameter groups (weights with weight decay 1e-4, biases without), Huber loss, accumulation over 4 micro-batches of noisy readings, ReduceLROnPlateau on a held-out batch (factor 0.5, patience 10), 180 steps. Trains normally.",
)
def h350_majolica_adagrad_plateau(ctx: Context) -> None:
    gen = seeded(35013)
    model = Trunk(12, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    plain = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.Adagrad(
        [{"params": decay, "weight_decay": 1e-4}, {"params": plain, "weight_decay": 0.0}], lr=5e-2
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_readings(torch.Generator().manual_seed(3513), 256, 12, 3513, noise=0.2))

    def plateau():
        model.eval()
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 16, 12, 3513, noise=0.2),
        180,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        accumulate=4,
    )
    ctx.check("the loss fell: last 10 under 0.5x the first 10", _fell(ctx.losses, ratio=0.5))
    ctx.check(
        "the held-out loss ends under 0.5x the first batch's loss", plateau() < 0.5 * ctx.losses[0]
    )
    ctx.check("finite throughout", _finite(ctx.losses))
