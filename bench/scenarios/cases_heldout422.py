"""Held-out set 422 (``h422_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: an esker gravel-sorting depth regressor whose hand-written decoupled weight decay has its
sign flipped (a slow climb of the loss), a yardang erosion-rate tanh regressor whose warm-up peak
lr is typed 10x too large (past 2/sharpness), a foehn gust-onset temperature regressor fed one
station's shard in centi-kelvin (one corrupted batch), a stained-glass lead-came grade binarized
network whose binary head lost its 1/fan-in scale (softmax saturates), a haboob visibility net
whose log-rainfall feature has no clamp (log 0 on the first dry day), an ice-shove ridge-pressure
IRNN initialised with 1.25 * I for I (gradients grow through time), a tombolo sandbar-closure BCE
net whose resumed step reads a loss weight in percent (one gradient burst), a theremin pitch
regressor whose trunk group lr is typed 3e-9 for 3e-3 (a frozen trunk), an ocarina breath-crack
BCE classifier fed 1-indexed labels (the head's logits grow without bound) and a hoarfrost
needle-length ReLU regressor on Adam with lr typed 1e-1 for 1e-3 (ReLUs die).

Controls: a ventifact facet-count binarized classifier (real first and last layers, Adam), a jaw
harp twang fp16 Conv1d classifier (GradScaler, SGD Nesterov under OneCycleLR, label smoothing,
clipping) and a moraine boulder-travel GELU Huber regressor (AdamW, ReduceLROnPlateau,
accumulation, clipping, noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor (ctx is None)."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if attach:
            ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.5 * torch.sin(2 * x[:, 1]) > 0.0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    n = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / n for u in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        n = torch.sqrt(sum((u * u).sum() for u in hv)).clamp_min(1e-12)
        v = [u / n for u in hv]
    return lam


# -- a binarized network (sign activations, binary weights, straight-through estimator) -----------


class _SignSTE(torch.autograd.Function):
    """sign(x) forward; the gradient passes straight through where |x| <= 1 (hardtanh STE)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class BinarySign(nn.Module):
    def forward(self, x):
        return _SignSTE.apply(x)


class BinaryLinear(nn.Linear):
    """Binary weights sign(w) in the forward pass over latent real-valued weights (clipped to
    [-1, 1] after each step by ``clip_latent``), no bias."""

    def __init__(self, d_in, d_out):
        super().__init__(d_in, d_out, bias=False)
        nn.init.uniform_(self.weight, -1.0, 1.0)

    def forward(self, x):
        return F.linear(x, _SignSTE.apply(self.weight))


def clip_latent(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BinaryLinear):
                m.weight.clamp_(-1.0, 1.0)


class _BNN(nn.Module):
    """Real-valued first layer, binarized hidden layers (BatchNorm then sign), and a head that is
    real-valued (``binary_head=False``) or binarized with a 1/fan-in output scale."""

    def __init__(self, d_in, hidden, classes, binary_head=False, head_scale=None):
        super().__init__()
        self.fc_in = nn.Linear(d_in, hidden)
        self.bn_in = nn.BatchNorm1d(hidden)
        self.sign_in = BinarySign()
        self.bin1 = BinaryLinear(hidden, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.sign1 = BinarySign()
        self.bin2 = BinaryLinear(hidden, hidden)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.sign2 = BinarySign()
        self.head = BinaryLinear(hidden, classes) if binary_head else nn.Linear(hidden, classes)
        self.head_scale = head_scale

    def raw(self, x):
        h = self.sign_in(self.bn_in(self.fc_in(x)))
        h = self.sign1(self.bn1(self.bin1(h)))
        h = self.sign2(self.bn2(self.bin2(h)))
        return self.head(h)

    def forward(self, x):
        out = self.raw(x)
        return out if self.head_scale is None else out * self.head_scale


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    family="esker_gravel_sorting_depth_decay_sign_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Esker gravel-sorting depth regressor (ReLU MLP, MSE) on SGD with momentum 0.9 and a "
    "hand-written decoupled weight decay applied after each step, p -= lr * wd * p, whose sign was "
    "flipped in a refactor (p += lr * wd * p). The weights inflate a little every step, the fit "
    "keeps losing to the decay, and the loss slowly climbs back past where it started.",
)
def h422_esker_decay_sign(ctx) -> None:
    gen = seeded(4221)
    model = _MLP(8, 48, 1)
    lr, wd = 0.02, 0.4
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    data = _readings(gen, 64, 8, seed=221)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # the bug: should be alpha=-lr * wd
            norms.append(float(torch.cat([p.reshape(-1) for p in model.parameters()]).norm()))

    _loop(ctx, model, opt, data, 240, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10))
    ctx.check(
        "loss over the last 20 steps over 3x its lowest 10-step mean", _mean(ls[-20:]) > 3 * low
    )
    ctx.check("loss climbs through the second half", _mean(ls[-20:]) > 1.5 * _mean(ls[120:140]))
    ctx.check("weight norm over 3x its start", norms[-1] > 3 * norms[0])
    ctx.check("finite", _finite(ls))


@scenario(
    family="yardang_wind_erosion_rate_warmup_peak_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Yardang wind-erosion rate regressor (tanh MLP, MSE, full 256-row batches) on plain SGD "
    "with a linear warm-up over 300 steps whose peak lr is typed 4.0 for 0.4. Early on lr x "
    "sharpness is under 2; the warm-up carries it past 2/sharpness and the loss blows up.",
)
def h422_yardang_warmup_peak(ctx) -> None:
    gen = seeded(4222)
    model = _MLP(8, 32, 1, act=nn.Tanh)
    peak, warm = 4.0, 300  # typed 4.0 for 0.4
    opt = torch.optim.SGD(model.parameters(), lr=peak / warm)
    data = _readings(gen, 256, 8, seed=222)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, seed=222))
    edge = []

    def before(step):
        lr = peak * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 10 == 0 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            edge.append((step, lr * _sharpness(model, F.mse_loss, *probe)))

    _loop(ctx, model, opt, data, 200, F.mse_loss, before=before)
    ctx.check("lr x sharpness under 2 at step 0", edge[0][1] < 2)
    ctx.check("lr x sharpness past 2 later", any(v > 2 for _, v in edge[1:]))
    ok = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check(
        "loss blows up over 100x its lowest",
        max(ok) > 100 * min(ok) or _first_bad(ctx.losses) is not None,
    )


def _foehn(gen, batch, d_in, seed):
    """Foehn gust-onset temperature jump in kelvin from standardised station readings."""
    return _readings(gen, batch, d_in, seed, noise=0.05, scale=3.0)


@scenario(
    family="foehn_gust_onset_temperature_relu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Foehn gust-onset temperature-jump regressor (ReLU MLP, MSE, Adagrad, clipping at 5). "
    "The batch at step 120 comes from one valley station whose logger exports centi-kelvin: its "
    "targets are 100x. The loss and gradient jump for that one batch and the run recovers.",
)
def h422_foehn_centikelvin_shard(ctx) -> None:
    gen = seeded(4223)
    model = _MLP(10, 48, 1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    data = _foehn(gen, 64, 10, seed=223)

    def alter(step, x, y):
        return (x, y * 100.0) if step == 120 else (x, y)

    _loop(ctx, model, opt, data, 220, F.mse_loss, alter=alter, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss at 120 over 100x the median of 70..119", ls[120] > 100 * _median(ls[70:120]))
    ctx.check("gradient at 120 over 20x the median of 70..119", gn[120] > 20 * _median(gn[70:120]))
    ctx.check(
        "recovers: last 20 steps under 2x the pre-onset level",
        _mean(ls[-20:]) < 2 * _mean(ls[100:120]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="stained_glass_lead_came_grade_binarized_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Stained-glass lead-came grade classifier, a binarized network (real first layer, "
    "BatchNorm + sign activations, binary weights with a straight-through estimator over latent "
    "weights clipped to [-1, 1]) with a binarized head whose output should be scaled by "
    "1/sqrt(fan_in); the scale was set to 1.0 in a config. Logits are sums of 128 signed "
    "products, so the softmax saturates: most rows' target probability rounds to exactly 1.0.",
)
def h422_stained_glass_bnn_head_scale(ctx) -> None:
    gen = seeded(4224)
    model = _BNN(12, 128, 6, binary_head=True, head_scale=1.0)  # should be 1 / sqrt(128)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    data = _grades(gen, 64, 12, 6, seed=224, spread=0.8)
    probe_x, probe_y = next(
        _grades(torch.Generator().manual_seed(9), 256, 12, 6, seed=224, spread=0.8)
    )
    bad, good = [], []

    def after(step):
        clip_latent(model)
        model.eval()
        with torch.no_grad():
            raw = model.raw(probe_x)
            bad.append(collapsed_fraction(raw, probe_y))
            good.append(collapsed_fraction(raw / math.sqrt(128), probe_y))

    _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check(
        "over half the rows' target probability exactly 1.0 (last 30 steps)", _mean(bad[-30:]) > 0.5
    )
    ctx.check("under 5% with the intended 1/sqrt(128) scale", _mean(good[-30:]) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


class _LogRain(nn.Module):
    """log of the rainfall gauge reading (column 0) alongside the other features."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)  # no clamp, no log1p


class _HaboobNet(nn.Module):
    def __init__(self, d_in, hidden=40):
        super().__init__()
        self.log_rain = _LogRain()
        self.body = _MLP(d_in, hidden, 1, act=nn.SiLU)

    def forward(self, x):
        return self.body(self.log_rain(x))


def _haboob(gen, batch, d_in, seed):
    """Visibility (log km) after a dust front from rainfall of the past week (mm) and readings."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in - 1, generator=g) / math.sqrt(d_in)
    step = 0
    while True:
        rain = torch.exp(torch.randn(batch, 1, generator=gen))
        if step >= 90:  # the dry season: some weeks had no rain at all
            dry = torch.rand(batch, 1, generator=gen) < 0.2
            rain = torch.where(dry, torch.zeros_like(rain), rain)
        x = torch.randn(batch, d_in - 1, generator=gen)
        y = torch.tanh(x @ w) + 0.3 * torch.log1p(rain[:, 0])
        yield torch.cat([rain, x], 1), y + 0.05 * torch.randn(batch, generator=gen)
        step += 1


@scenario(
    family="haboob_dust_front_visibility_log_rain_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("log_rain",),
    diverges=90,
    heldout=True,
    onset=90,
    note="Haboob visibility regressor (SiLU MLP, MSE, Adam) whose first module takes torch.log of "
    "the past week's rainfall with no clamp or log1p. The gauges were all wet until the dry "
    "season starts at step 90: the first 0.0 mm reading gives log 0 = -inf and the loss is NaN.",
)
def h422_haboob_log_rain(ctx) -> None:
    gen = seeded(4225)
    model = _HaboobNet(8)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    _loop(ctx, model, opt, _haboob(gen, 64, 8, seed=225), 150, F.mse_loss)
    ctx.check("finite before step 90", _finite(ctx.losses[:90]))
    ctx.check("loss non-finite at step 90", _first_bad(ctx.losses) == 90)
    ctx.check(
        "loss fell before the dry season", _mean(ctx.losses[80:90]) < 0.8 * _mean(ctx.losses[:10])
    )


class _IRNN(nn.Module):
    """A hand-written ReLU Elman RNN (IRNN): h_t = relu(inp(x_t) + rec(h_{t-1})), identity init."""

    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.rec.bias.zero_()
            self.inp.weight.normal_(0.0, 0.3 / math.sqrt(d_in))
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _ridges(gen, batch, length, seed):
    """Ice-shove ridge pressure from a sequence of wind and temperature readings."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh((x[:, -8:] @ w).mean(1)) + 0.2 * x[:, :, 0].mean(1)
        yield x, y


def _through_time(model, x, y):
    """|dL/dh_0| / |dL/dh_T| for one batch."""
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    first, last = model.states[0].grad.norm(), model.states[-1].grad.norm()
    model.zero_grad()
    return float(first / last.clamp_min(1e-20))


@scenario(
    family="ice_shove_ridge_pressure_irnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Ice-shove ridge-pressure IRNN (hand-written ReLU Elman cell over 30 readings, MSE, "
    "RMSprop, clipping at 1) whose recurrent weight is initialised to 1.25 * I, a typo for the "
    "IRNN's 1.0 * I: the backward pass multiplies by 1.25 each step back through time, so the "
    "gradient at the first state is orders of magnitude larger than at the last.",
)
def h422_ice_shove_irnn_gain(ctx) -> None:
    gen = seeded(4226)
    model = _IRNN(3, 32, gain=1.25)  # typed 1.25 for 1.0
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    probe = next(_ridges(torch.Generator().manual_seed(11), 128, 30, seed=226))
    start = _through_time(model, *probe)
    ref = _through_time(_IRNN(3, 32, gain=1.0), *probe)
    ratios = []

    def after(step):
        if step % 20 == 0:
            ratios.append(_through_time(model, *probe))

    _loop(ctx, model, opt, _ridges(gen, 64, 30, seed=226), 120, F.mse_loss, clip=1.0, after=after)
    ctx.check("dL/dh_0 over 100x dL/dh_T at the start", start > 100)
    ctx.check("under 5x at the intended 1.0 * I", ref < 5)
    ctx.check("still over 100x through the run", _median(ratios) > 100)
    ctx.check(
        "clipped gradient norms over 10x the clip at the start", _median(ctx.grad_norms[:10]) > 10
    )


@scenario(
    family="tombolo_sandbar_closure_bce_resume_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="Tombolo sandbar-closure BCE net (ReLU MLP, 5% noisy labels, SGD Nesterov, clipping at "
    "1). The run is resumed at step 150 and the loss weight read from the old config is in "
    "percent (100.0 for 1.0) until the config is re-parsed a step later: one gradient burst of "
    "100x on an ordinary logged loss; clipping bounds the update and the run recovers.",
)
def h422_tombolo_resume_loss_weight(ctx) -> None:
    gen = seeded(4227)
    model = _MLP(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (100.0 if step == 150 else 1.0)

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 10, seed=227),
        240,
        F.binary_cross_entropy_with_logits,
        classifier=False,
        backprop=backprop,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at 150 over 30x the median of 100..149", gn[150] > 30 * _median(gn[100:150])
    )
    ctx.check(
        "logged loss at 150 ordinary (under 2x the median)", ls[150] < 2 * _median(ls[100:150])
    )
    ctx.check(
        "recovers: last 20 under 1.3x the pre-onset level",
        _mean(ls[-20:]) < 1.3 * _mean(ls[130:150]),
    )
    ctx.check("trained", _fell(ls))


class _Theremin(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    family="theremin_pitch_antenna_two_group_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="Theremin pitch-antenna regressor (SiLU trunk + linear head, MSE, AdamW with two "
    "parameter groups) whose trunk group's lr is typed 3e-9 for 3e-3: the trunk receives "
    "gradients but its updates are ~1e-9 of its weights, so only the head learns.",
)
def h422_theremin_trunk_lr_typo(ctx) -> None:
    gen = seeded(4228)
    model = _Theremin(8)
    opt = torch.optim.AdamW(
        [
            {"params": model.trunk.parameters(), "lr": 3e-9},  # typed 3e-9 for 3e-3
            {"params": model.head.parameters(), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    t0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    trunk_grads = []

    def inspect_grad(step):
        trunk_grads.append(float(model.trunk[0].weight.grad.norm()))

    ctx.attach(model, opt)
    data = _readings(gen, 64, 8, seed=228)
    for step in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        inspect_grad(step)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("trunk.0 moved under 1e-4 of its norm", _rel_change(t0, model.trunk[0].weight) < 1e-4)
    ctx.check("trunk.0 received gradients", _median(trunk_grads) > 1e-3)
    ctx.check("head moved over 10%", _rel_change(h0, model.head.weight) > 0.1)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="ocarina_breath_crack_one_indexed_bce_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Ocarina breath-crack detector (GELU MLP, BCEWithLogits, NAdam) whose labels come from "
    "a spreadsheet coded 1 = clean, 2 = cracked, passed to the loss unshifted. For a target of 2 "
    "the BCE is -2 log s(z) + log(1 - s(z)), unbounded below as z grows, so the head's logits grow "
    "without bound and the 'loss' goes negative.",
)
def h422_ocarina_one_indexed_labels(ctx) -> None:
    gen = seeded(4229)
    model = _MLP(10, 48, 1, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    data = _binary(gen, 64, 10, seed=229)
    probe = next(_binary(torch.Generator().manual_seed(13), 256, 10, seed=229))[0]
    sizes = []

    def alter(step, x, y):
        return x, y + 1.0  # 1-indexed labels

    def after(step):
        with torch.no_grad():
            sizes.append(float(model(probe).abs().max()))

    _loop(ctx, model, opt, data, 200, F.binary_cross_entropy_with_logits, alter=alter, after=after)
    ctx.check("max |logit| over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("logits still growing", sizes[-1] > 1.2 * sizes[-40])
    ctx.check("'loss' below -5", ctx.losses[-1] < -5)
    ctx.check("finite", _finite(ctx.losses))


def _dead_run(lr, steps, seed):
    gen = seeded(seed)
    model = _MLP(10, 64, 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    probe = next(_readings(torch.Generator().manual_seed(17), 512, 10, seed=230, scale=2.0))[0]
    dead = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe))))))

    return model, opt, _readings(gen, 64, 10, seed=230, scale=2.0), probe, dead, after


@scenario(
    family="hoarfrost_needle_length_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Hoarfrost needle-length regressor (ReLU MLP, MSE) on Adam with lr typed 1e-1 for 1e-3: "
    "the first large updates push most of the second layer's ReLUs negative for every input; "
    "they stop receiving gradient and stay dead.",
)
def h422_hoarfrost_adam_lr_typo(ctx) -> None:
    model, opt, data, _, dead, after = _dead_run(1e-1, 200, 4230)  # typed 1e-1 for 1e-3
    _loop(ctx, model, opt, data, 200, F.mse_loss, after=after)
    rmodel, ropt, rdata, _, rdead, rafter = _dead_run(1e-3, 200, 4230)
    _loop(None, rmodel, ropt, rdata, 200, F.mse_loss, after=rafter, attach=False)
    ctx.check("over 45% of act2's units dead over the last 50 steps", _mean(dead[-50:]) > 0.45)
    ctx.check("over twice the share at 1e-3", _mean(dead[-50:]) > 2 * _mean(rdead[-50:]))
    ctx.check("under 20% dead at 1e-3", _mean(rdead[-50:]) < 0.2)
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    family="ventifact_facet_count_binarized_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Ventifact facet-count classifier, a binarized network done properly: real-valued first "
    "layer and head, two binarized hidden layers (BatchNorm + sign activations, binary weights "
    "through a straight-through estimator, latent weights clipped to [-1, 1] after each step), "
    "Adam with a StepLR decay, noisy readings.",
)
def h422_ventifact_bnn_control(ctx) -> None:
    gen = seeded(4231)
    model = _BNN(12, 128, 5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    data = _grades(gen, 64, 12, 5, seed=231, spread=1.0)

    def after(step):
        clip_latent(model)

    _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True, after=after, sched=sched)
    latent = max(
        float(m.weight.abs().max()) for m in model.modules() if isinstance(m, BinaryLinear)
    )
    ctx.check("loss fell under half its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("latent weights within [-1, 1]", latent <= 1.0)
    ctx.check("finite", _finite(ctx.losses))


def _twangs(gen, batch, classes, seed, length=48):
    """Jaw-harp twang traces: each class a decaying tone at its own period, plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.2 + 0.8 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freqs[y][:, None] * t + phase) * torch.exp(-t / 60.0)
        yield (x + 0.3 * torch.randn(batch, length, generator=gen))[:, None], y


class _TwangNet(nn.Module):
    def __init__(self, classes, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


@scenario(
    family="jaw_harp_twang_fp16_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Jaw-harp twang classifier (ReLU Conv1d, 4 tones) under fp16 autocast with a "
    "GradScaler, SGD Nesterov under OneCycleLR, label smoothing 0.1, clipping at 1.",
)
def h422_jaw_harp_fp16_control(ctx) -> None:
    gen = seeded(4232)
    model = _TwangNet(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _twangs(gen, 64, 4, seed=232),
        200,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("loss fell under 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="moraine_boulder_travel_gelu_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Moraine boulder-travel distance regressor (GELU MLP, Huber loss, noisy targets) on "
    "AdamW with weight decay 0.05, ReduceLROnPlateau on a held-out loss, accumulation over 2, "
    "clipping at 1.",
)
def h422_moraine_huber_control(ctx) -> None:
    gen = seeded(4233)
    model = _MLP(10, 64, 1, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_readings(torch.Generator().manual_seed(19), 256, 10, seed=233, noise=0.2))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=233, noise=0.2),
        150,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("loss fell under 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check(
        "held-out loss under 60% of the first batches'", plateau() < 0.6 * _mean(ctx.losses[:10])
    )
    ctx.check("finite", _finite(ctx.losses))
