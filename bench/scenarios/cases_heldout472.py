"""Held-out set 472 (``h472_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: an armillary-sphere ring-balance tanh regressor whose StepLR gamma is typed 10 for 0.1
(full-batch SGD; at step 60 the lr jumps past 2 / sharpness and the loss blows up), a
ventriloquist dummy jaw-sync classifier trained with nll_loss on raw logits (no log_softmax; the
head's logits grow without bound, SGD momentum), a water-clock outflow net taking log of the
outflow reading with no clamp (an empty vessel at step 100 gives log 0, RMSprop), a wheelchair
fencing parry classifier whose Adamax lr is typed 1.0 for 1e-3 (fc2's ReLUs die), a pitch-and-toss
ten-layer ReLU regressor whose init std exponent is typed 0.25 for 0.5 (gradients grow through
depth, NAdam), an archery quiver draw-time Kolmogorov-Arnold network fed one shard in
deciseconds (Adam), a unicycle-juggling drop regressor whose leftover-window normaliser is
inverted for one step (a 256x gradient, clipped, RAdam), a foil-fencing lunge two-group
regressor whose trunk lr multiplier is typed 1e-5 for 1e-1 (AdamW), a knurr-and-spell carry
profile forecaster whose epoch-end flush uses reduction='sum' (Adam's second moment poisoned)
and a croquet hoop-run GELU classifier whose temperature is typed 0.005 for 0.5 (softmax
saturates, ASGD).

Controls: a Fresnel-lens panel-focus GELU regressor under Adam with a clip norm so tight that every
step is clipped (warm-up); an astrolabe rete-star Conv1d classifier under fp16 autocast with a
GradScaler (SGD Nesterov, OneCycleLR, label smoothing, clipping); an hourglass sand-flow tied
autoencoder (Adagrad param groups, ReduceLROnPlateau, accumulation over 2, clipping).
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


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in params])


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
    accumulate=1,
    attach=True,
):
    """The file's training loop: ``before(step)``, ``alter(step, x, y)``, ``backprop(step,
    loss)`` (the loss actually backpropagated), ``after(step)`` after the optimizer step. Stops
    after a non-finite loss, once ``ctx.step`` has seen it. ``attach=False``: a reference run."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
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
            loss = loss_fn(model(x), y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


# -- data and a plain net ---------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, out=1):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, out, generator=g)
    v = torch.randn(d_in, out, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(y.shape, generator=gen)
        yield x, (y.squeeze(-1) if out == 1 else y)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=64, channels=2):
    """Short sensor traces: a class-specific pair of tones in noise."""
    g = torch.Generator().manual_seed(seed)
    freq = 1.0 + 6.0 * torch.rand(classes, channels, generator=g)
    t = torch.linspace(0, 2 * math.pi, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase)
        yield x + 0.4 * torch.randn(batch, channels, length, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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


class _ConvNet(nn.Module):
    """Conv1d classifier on (batch, channels, length) traces."""

    def __init__(self, channels=2, width=16, classes=6, pool="mean"):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, classes)
        self.pool = pool

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        h = h.sum(-1) if self.pool == "sum" else h.mean(-1)
        return self.head(h)


def _sharpness(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


# -- 1. sharpness: a StepLR gamma typed 10 for 0.1 -------------------------------------------------

ARMILLARY_STEP = 60


@scenario(
    family="armillary_sphere_ring_balance_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ARMILLARY_STEP,
    note="Armillary-sphere ring-balance regressor (tanh MLP on ring mass and pivot features, "
    "MSE, full-batch SGD under StepLR every 60 steps). The decay factor is typed gamma=10 for "
    "0.1: at step 60 the lr jumps tenfold instead of falling, lr * sharpness crosses 2 and the "
    "loss oscillates and blows up.",
)
def h472_armillary_steplr_gamma(ctx) -> None:
    gen = seeded(4721)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4721)
    x, y = next(data)
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ARMILLARY_STEP, gamma=10.0)
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (0, ARMILLARY_STEP - 1, ARMILLARY_STEP):
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 160, F.mse_loss, before=before, sched=sched)
    k = ARMILLARY_STEP
    low = min(v for v in losses[:k])
    blow = next(
        (i for i, v in enumerate(losses) if i >= k and (not math.isfinite(v) or v > 100 * low)),
        None,
    )
    ctx.check("lr * sharpness under 2 before the jump", lrs[k - 1] * sharp[k - 1] < 2.0)
    ctx.check("lr * sharpness over 2 right after the jump", lrs[k] * sharp[k] > 2.0)
    ctx.check("the loss blows up over 100x its lowest after the jump", blow is not None)
    ctx.check("trained first", losses[k - 1] < 0.5 * losses[0])


# -- 2. output logits: nll_loss on raw logits -------------------------------------------------------


@scenario(
    family="ventriloquist_dummy_jaw_sync_raw_nll_classifier",
    optimizer="SGD momentum",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Ventriloquist dummy jaw-sync classifier (ReLU MLP on lip-closure and syllable "
    "features, 6 jaw positions, SGD momentum 0.9). The loss is F.nll_loss on the raw logits, "
    "the log_softmax forgotten: -logit[target] is unbounded below, the head's logits grow "
    "without bound and the 'loss' goes ever more negative.",
)
def h472_ventriloquist_nll_raw_logits(ctx) -> None:
    gen = seeded(4722)
    model = _Net(10, 48, 6)
    data = _grades(gen, 64, 10, 6, seed=4722)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    probe = next(_grades(torch.Generator().manual_seed(1), 256, 10, 6, seed=4722))[0]
    mags = []

    def after(step):
        with torch.no_grad():
            mags.append(float(model(probe).abs().mean()))

    losses, _ = _loop(ctx, model, opt, data, 200, F.nll_loss, classifier=True, after=after)
    ctx.check(
        "head's mean |logit| over 20x its first steps'", _mean(mags[-10:]) > 20 * _mean(mags[:5])
    )
    ctx.check("still climbing over the last 50 steps", mags[-1] > 1.3 * mags[-50])
    ctx.check("the loss below -10, impossible for a cross-entropy", losses[-1] < -10)
    ctx.check("finite", _finite(losses))


# -- 3. nonfinite: log of an outflow reading with no clamp ------------------------------------------

WATER_STEP = 100


class _LogFlow(nn.Module):
    """log of the outflow-rate reading, no clamp or epsilon."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _WaterClockNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logflow = _LogFlow()
        self.fc1 = nn.Linear(6, 32)
        self.fc2 = nn.Linear(32, 1)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(self.logflow(x)))).squeeze(-1)


@scenario(
    family="water_clock_outflow_log_feature_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("logflow",),
    diverges=WATER_STEP,
    heldout=True,
    onset=WATER_STEP,
    note="Water-clock (clepsydra) hour-mark regressor (SiLU MLP on the log outflow rate, head "
    "of water and vessel features, MSE, RMSprop). The model takes torch.log of the outflow "
    "reading with no clamp; at step 100 a batch holds an emptied vessel whose outflow is "
    "exactly 0: log 0 = -inf and the loss is non-finite at step 100.",
)
def h472_water_clock_log_zero(ctx) -> None:
    gen = seeded(4723)
    g = torch.Generator().manual_seed(4723)
    w = torch.randn(5, generator=g)

    def data():
        while True:
            flow = torch.exp(0.5 * torch.randn(64, 1, generator=gen))
            rest = torch.randn(64, 5, generator=gen)
            y = 0.8 * torch.log(flow[:, 0]) + torch.tanh(rest @ w / 2)
            yield torch.cat([flow, rest], 1), y

    def alter(step, x, y):
        if step == WATER_STEP:
            x = x.clone()
            x[7, 0] = 0.0
        return x, y

    model = _WaterClockNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    losses, _ = _loop(ctx, model, opt, data(), 160, F.mse_loss, alter=alter)
    k = WATER_STEP
    ctx.check("finite before the empty vessel", _finite(losses[:k]))
    ctx.check("the loss non-finite at the step", len(losses) > k and not math.isfinite(losses[k]))
    ctx.check("trained first", _mean(losses[k - 10 : k]) < 0.7 * _mean(losses[:10]))


# -- 4. plasticity: an Adamax lr typed 1.0 for 1e-3 -------------------------------------------------


@scenario(
    family="wheelchair_fencing_parry_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Wheelchair-fencing parry classifier (ReLU MLP on blade-angle and frame-lean "
    "features, 8 parries, cross-entropy, Adamax). The lr is typed 1.0 for 1e-3 (the e-3 lost): the first "
    "updates push fc2's units below zero on every input, the ReLUs die, receive no gradient "
    "and never come back; the loss stays stuck over twice the intended run's.",
)
def h472_wheelchair_fencing_adamax_lr(ctx) -> None:
    def run(lr, attach):
        gen = seeded(4724)
        model = _Net(12, 64, 8)
        data = _grades(gen, 64, 12, 8, seed=4724)
        opt = torch.optim.Adamax(model.parameters(), lr=lr)
        probe = next(_grades(torch.Generator().manual_seed(1), 512, 12, 8, seed=4724))[0]
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.fc2(model.act1(model.fc1(probe)))))

        losses, _ = _loop(
            ctx,
            model,
            opt,
            data,
            200,
            F.cross_entropy,
            classifier=attach,
            after=after,
            attach=attach,
        )
        with torch.no_grad():
            fresh = _Net(12, 64, 8)
            dead0 = dead_fraction(fresh.fc2(fresh.act1(fresh.fc1(probe))))
        return losses, dead, dead0

    ref_losses, ref_dead, _ = run(1e-3, False)
    losses, dead, dead0 = run(1.0, True)
    ctx.check("over half of fc2's units dead at the end", dead[-1] > 0.5)
    ctx.check("few dead at init and in the intended run", dead0 < 0.1 and ref_dead[-1] < 0.1)
    ctx.check("the dead share does not shrink over the last 100 steps", dead[-1] >= dead[-100])
    ctx.check(
        "the loss over 2x the intended run's at the end",
        _mean(losses[-20:]) > 2 * _mean(ref_losses[-20:]),
    )
    ctx.check("finite", _finite(losses))


# -- 5. exploding gradients: an init exponent typed 0.25 for 0.5 ------------------------------------


class _DeepNet(nn.Module):
    def __init__(self, d_in=8, width=64, depth=10, exponent=0.5):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1) + [1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        for m in self.layers:
            nn.init.normal_(m.weight, std=math.sqrt(2.0) / m.in_features**exponent)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.layers[:-1]:
            x = F.relu(m(x))
        return self.layers[-1](x).squeeze(-1)


@scenario(
    family="pitch_and_toss_coin_distance_deep_relu_regressor",
    optimizer="NAdam",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Pitch-and-toss coin-distance regressor (ten-layer ReLU MLP on throw-speed and "
    "release-angle features, Huber, NAdam, clipping at 1). The He init is written std = "
    "sqrt(2) / fan_in ** 0.25 for ** 0.5: every layer multiplies the signal by about 2.8, "
    "the gradient grows through depth and the gradient at the first layer's output is thousands of times the last's.",
)
def h472_pitch_and_toss_init_exponent(ctx) -> None:
    gen = seeded(4725)
    ref = _DeepNet(exponent=0.5)
    model = _DeepNet(exponent=0.25)
    data = _readings(gen, 64, 8, seed=4725)
    x0, y0 = next(_readings(torch.Generator().manual_seed(1), 256, 8, seed=4725))

    def depth_grads(m):
        """Gradient norm w.r.t. the first and the last hidden activations."""
        h, outs = x0, []
        for layer in m.layers[:-1]:
            h = F.relu(layer(h))
            h.retain_grad()
            outs.append(h)
        F.huber_loss(m.layers[-1](h).squeeze(-1), y0).backward()
        first, last = float(outs[0].grad.norm()), float(outs[-1].grad.norm())
        m.zero_grad()
        return first, last

    ref_first, ref_last = depth_grads(ref)
    first, last = depth_grads(model)
    with torch.no_grad():
        ref_loss = float(F.huber_loss(ref(x0), y0))
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    losses, norms = _loop(ctx, model, opt, data, 80, F.huber_loss, clip=1.0)
    ctx.check("gradient at layers.0's output over 100x the last hidden layer's", first > 100 * last)
    ctx.check("under 5x with the intended init", ref_first < 5 * ref_last)
    ctx.check("the first loss over 100x the intended init's", losses[0] > 100 * ref_loss)
    ctx.check("gradient norm over 1e3 at the start", norms[0] > 1e3)


# -- 6. data outlier: a Kolmogorov-Arnold net fed one shard in deciseconds ---------------------------

QUIVER_STEP = 120


class _KANLayer(nn.Module):
    """Every edge i -> j carries its own function: a learnable radial-basis expansion over a
    fixed grid plus a SiLU base term; each node sums its incoming edges."""

    def __init__(self, d_in, d_out, basis=8, lo=-2.5, hi=2.5):
        super().__init__()
        self.register_buffer("grid", torch.linspace(lo, hi, basis))
        self.width = (hi - lo) / (basis - 1)
        self.coef = nn.Parameter(0.1 * torch.randn(d_in, d_out, basis))
        self.base = nn.Parameter(torch.randn(d_in, d_out) / math.sqrt(d_in))

    def forward(self, x):
        rbf = torch.exp(-(((x[..., None] - self.grid) / self.width) ** 2))  # (b, in, K)
        spline = torch.einsum("bik,iok->bo", rbf, self.coef)
        return spline + F.silu(x) @ self.base


class _KAN(nn.Module):
    def __init__(self, d_in=6, hidden=8):
        super().__init__()
        self.kan1 = _KANLayer(d_in, hidden)
        self.kan2 = _KANLayer(hidden, 1)

    def forward(self, x):
        return self.kan2(self.kan1(x)).squeeze(-1)


@scenario(
    family="archery_quiver_draw_time_rbf_kan",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=QUIVER_STEP,
    note="Archery quiver draw-time regressor (a two-layer Kolmogorov-Arnold network: a "
    "learnable Gaussian radial-basis expansion on every edge plus a SiLU base, summed at each "
    "node; MSE, Adam). One shard, served at step 120, was logged by a timer in deciseconds "
    "instead of seconds: its targets are 10x, the loss and gradient spike on that batch and "
    "the run recovers.",
)
def h472_quiver_shard_deciseconds(ctx) -> None:
    gen = seeded(4726)
    model = _KAN(6, 8)
    data = _readings(gen, 64, 6, seed=4726)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        return (x, 10.0 * y) if step == QUIVER_STEP else (x, y)

    losses, norms = _loop(ctx, model, opt, data, 220, F.mse_loss, alter=alter)
    k = QUIVER_STEP
    ctx.check("loss over 20x the median at the shard", losses[k] > 20 * _median(losses[k - 30 : k]))
    ctx.check("gradient over 10x the median there", norms[k] > 10 * _median(norms[k - 30 : k]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[k - 20 : k]))
    ctx.check("trained first", _mean(losses[k - 20 : k]) < 0.7 * _mean(losses[:10]))
    ctx.check("finite", _finite(losses))


# -- 7. gradient spike: a leftover-window normaliser inverted once ----------------------------------

UNICYCLE_STEP = 150


@scenario(
    family="unicycle_juggling_drop_silu_regressor",
    optimizer="RAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=UNICYCLE_STEP,
    note="Unicycle-juggling drop-height regressor (SiLU MLP on wheel-cadence and throw "
    "features, MSE, RAdam, accumulation over 2, clipping at 1). At step 150, the "
    "epoch's leftover window, the accumulation normaliser is written n_left * batch (256) in "
    "the numerator instead of the denominator: a 256x gradient on an ordinary logged loss for "
    "one step; the clip bounds the step and the run recovers.",
)
def h472_unicycle_leftover_normaliser(ctx) -> None:
    gen = seeded(4727)
    model = _Net(8, 48, 1, act=nn.SiLU)
    data = _readings(gen, 64, 8, seed=4727)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def backprop(step, loss):
        return loss * (256.0 if step == UNICYCLE_STEP else 1.0)

    losses, norms = _loop(
        ctx, model, opt, data, 240, F.mse_loss, backprop=backprop, clip=1.0, accumulate=2
    )
    k = UNICYCLE_STEP
    ctx.check(
        "gradient over 50x the median at the step", norms[k] > 50 * _median(norms[k - 30 : k])
    )
    ctx.check("the logged loss is ordinary there", losses[k] < 2 * _median(losses[k - 30 : k]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[k - 20 : k]))
    ctx.check("finite", _finite(losses))


# -- 8. update ratio: a trunk lr multiplier typed 1e-5 for 1e-1 -------------------------------------


@scenario(
    family="foil_fencing_lunge_speed_two_group_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Foil-fencing lunge-speed regressor (ReLU MLP on stance and arm-extension features, "
    "MSE, AdamW with two param groups: trunk fc1/fc2 at lr * trunk_mult, head at lr). "
    "trunk_mult is typed 1e-5 for 1e-1: the trunk receives gradients but its updates are "
    "far too small for its weights, it stays at init while the head alone trains.",
)
def h472_foil_fencing_trunk_mult(ctx) -> None:
    gen = seeded(4728)
    model = _Net(10, 48, 1)
    data = _readings(gen, 64, 10, seed=4728)
    lr = 3e-3
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": trunk, "lr": lr * 1e-5},
            {"params": list(model.head.parameters()), "lr": lr},
        ],
        weight_decay=0.01,
    )
    w1, wh = _flat(model.fc1.parameters()), _flat(model.head.parameters())
    grads = []
    ctx.attach(model, opt)
    losses = []
    for _step in range(260):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        grads.append(float(model.fc1.weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    moved1 = float((_flat(model.fc1.parameters()) - w1).norm() / w1.norm())
    movedh = float((_flat(model.head.parameters()) - wh).norm() / wh.norm())
    ctx.check("fc1 receives gradients", min(grads) > 1e-4)
    ctx.check("fc1 moved under 1e-4 of its norm", moved1 < 1e-4)
    ctx.check("the head moved over 5% of its norm", movedh > 0.05)
    ctx.check("finite", _finite(losses))


# -- 9. Adam's second moment: an epoch-end flush with reduction='sum' ------------------------------

KNURR_STEP = 90


class _ProfileNet(nn.Module):
    def __init__(self, d_in=8, hidden=48, horizon=24):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    family="knurr_and_spell_carry_profile_forecaster",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=KNURR_STEP,
    note="Knurr-and-spell carry-profile forecaster (GELU MLP on pummel-swing and wind "
    "features, a 24-point height profile of the knurr's flight, MSE, Adam). The epoch-end "
    "flush at step 90 builds its own criterion with reduction='sum' instead of 'mean': one "
    "gradient 1536x (64 rows x 24 points) fills Adam's second moment and the updates stall "
    "for a hundred steps and more.",
)
def h472_knurr_flush_reduction_sum(ctx) -> None:
    def run(bug, attach):
        gen = seeded(4729)
        model = _ProfileNet()
        data = _readings(gen, 64, 8, seed=4729, out=24)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moves, prev = [], [_flat(model.parameters())]

        def after(step):
            now = _flat(model.parameters())
            moves.append(float((now - prev[0]).norm()))
            prev[0] = now

        def backprop(step, loss):
            return loss * 1536.0 if bug and step == KNURR_STEP else loss

        losses, norms = _loop(
            ctx, model, opt, data, 240, F.mse_loss, backprop=backprop, after=after, attach=attach
        )
        return losses, norms, moves

    ref_losses, _, _ = run(False, False)
    losses, norms, moves = run(True, True)
    k = KNURR_STEP
    ctx.check("gradient over 1e3x the median at the step", norms[k] > 1e3 * _median(norms[:k]))
    ctx.check(
        "updates 40-140 steps later under 1/10 of those before",
        _mean(moves[k + 40 : k + 140]) < _mean(moves[k - 40 : k]) / 10,
    )
    ctx.check(
        "loss at the end over 1.3x the clean run's",
        _mean(losses[-20:]) > 1.3 * _mean(ref_losses[-20:]),
    )
    ctx.check("finite", _finite(losses))


# -- 10. softmax collapse: a temperature typed 0.005 for 0.5 ---------------------------------------


class _TempNet(_Net):
    def __init__(self, tau):
        super().__init__(12, 48, 6, act=nn.GELU)
        self.tau = tau

    def forward(self, x):
        return super().forward(x) / self.tau


@scenario(
    family="croquet_hoop_run_temperature_gelu_classifier",
    optimizer="ASGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Croquet hoop-run classifier (GELU MLP on mallet-swing and ball-position features, 6 "
    "shot kinds, cross-entropy, ASGD). The calibration temperature is typed 0.005 for 0.5: "
    "the logits are divided by 0.005, most rows' softmax rounds the target's probability to "
    "exactly 1.0 in float32 (and the others' to 0).",
)
def h472_croquet_temperature(ctx) -> None:
    gen = seeded(4730)
    model = _TempNet(0.005)
    data = _grades(gen, 64, 12, 6, seed=4730)
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(1), 256, 12, 6, seed=4730))
    losses, _ = _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        collapsed = collapsed_fraction(model(probe_x), probe_y)
        model.tau = 0.5
        intended = collapsed_fraction(model(probe_x), probe_y)
        model.tau = 0.005
    ctx.check("over half the rows' target probability exactly 1.0", collapsed > 0.5)
    ctx.check("under 5% at temperature 0.5 on the same weights", intended < 0.05)
    ctx.check("finite", _finite(losses))


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="fresnel_lens_panel_focus_gelu_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fresnel-lens panel focal-length regressor (GELU MLP on prism-angle and ring "
    "features, MSE, Adam with a 20-step linear warm-up and gradient clipping at 0.02, so "
    "tight that every step is clipped). Healthy: clipping bounds every step, the run trains.",
)
def h472_fresnel_tight_clip(ctx) -> None:
    gen = seeded(4731)
    model = _Net(8, 48, 1, act=nn.GELU)
    data = _readings(gen, 64, 8, seed=4731)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    losses, norms = _loop(ctx, model, opt, data, 220, F.mse_loss, clip=0.02, sched=sched)
    ctx.check("every step clipped", min(norms) > 0.02)
    ctx.check("loss fell", _fell(losses, 20, 0.5))
    ctx.check("finite", _finite(losses))


@scenario(
    family="astrolabe_rete_star_fp16_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Astrolabe rete-star classifier (ReLU Conv1d on an alidade sighting trace, 6 star "
    "pointers, fp16 autocast with a GradScaler, SGD Nesterov under OneCycleLR, label "
    "smoothing 0.1, clipping at 1). Healthy.",
)
def h472_astrolabe_fp16_onecycle(ctx) -> None:
    gen = seeded(4732)
    model = _ConvNet(2, 16, 6)
    data = _traces(gen, 64, 6, seed=4732)
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    losses = []
    for _step in range(steps):
        x, y = next(data)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, 20, 0.6))
    ctx.check("finite", _finite(losses))
    ctx.check("the scale never collapsed", min(ctx.scales) >= 2.0**8)


class _TiedAutoencoder(nn.Module):
    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


@scenario(
    family="hourglass_sand_flow_tied_autoencoder",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hourglass sand-flow tied-weight autoencoder (tanh code of 6, the decoder reuses the "
    "encoder's weight transposed, on 16 neck-flow sensor readings, MSE, Adagrad with two param "
    "groups, ReduceLROnPlateau, accumulation over 2, clipping at 1). Healthy.",
)
def h472_hourglass_tied_autoencoder(ctx) -> None:
    gen = seeded(4733)
    g = torch.Generator().manual_seed(4733)
    mix = torch.randn(4, 16, generator=g)

    def data():
        while True:
            z = torch.randn(32, 4, generator=gen)
            x = torch.tanh(z @ mix / 2) + 0.05 * torch.randn(32, 16, generator=gen)
            yield x, x

    model = _TiedAutoencoder()
    opt = torch.optim.Adagrad(
        [
            {"params": list(model.enc.parameters()), "lr": 0.05},
            {"params": [model.dec_bias], "lr": 0.02},
        ]
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        data(),
        240,
        F.mse_loss,
        clip=1.0,
        accumulate=2,
        after=lambda s: plateau.step(ctx.losses[-1]),
    )
    ctx.check("loss fell", _fell(losses, 20, 0.5))
    ctx.check("finite", _finite(losses))
