"""Held-out set 415 (``h415_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a kettledrum pedal-tuning grade classifier trained with nll_loss on raw logits (the head's
logits grow without bound), a sumo tachiai impact-force regressor under fp16 autocast whose target
is in newtons for kilonewtons (the head's fp16 output overflows), a fog-harp droplet-yield tanh
regressor whose StepLR gamma is typed 10 for 0.1 (past 2/sharpness), a cave-diver line-depth deep
ReLU MLP initialised with the Kaiming-uniform bound as a normal std (gradients grow through
depth), a hoof-trimming crack-count Poisson net whose softplus rate was swapped for a ReLU
(log 0), a gondolier oar-stroke speed regressor fed one shard in cm/s (one corrupted batch), a
shepherd's crook catch BCE net whose resumed first step sums the loss (a gradient burst), a
parquet floor-cup regressor whose trunk warm-up is typed 1_000_000 steps for 100 (a frozen
trunk), a spelunker rope-stretch ReLU regressor on RMSprop with lr typed 1e-1 for 1e-3 (ReLUs
die) and a birdsong-dialect cosine classifier with its scale typed 100 for 10 (softmax
saturates).

Controls: an apothecary tincture-response neural additive model on scikit-learn's diabetes set
(one small MLP per feature, feature dropout, AdamW weight decay, ReduceLROnPlateau), a
lighthouse lens-rotation fp16 Conv1d classifier (GradScaler, SGD Nesterov under OneCycleLR, label
smoothing, clipping) and a scythe-peening edge-hardness GELU Huber regressor (Adam with warm-up
and cosine decay, accumulation, clipping, noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


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


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


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
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step. Stops
    after a non-finite loss (once ``ctx.step`` has seen it)."""
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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _leaks(gen, batch, d_in, seed, flip=0.1):
    """Binary leak outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.sin(2 * x[:, 0]) > 0.1).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _rhythms(gen, batch, classes, seed, length=48, channels=2):
    """Drum traces: each class a pulse train at its own period, plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.relu(torch.sin(freqs[y][:, :, None] * t + phase)) ** 3
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


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
    v = [torch.randn_like(p) for p in params]
    n = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / n for u in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        n = torch.sqrt(sum((u * u).sum() for u in hv)).clamp_min(1e-12)
        v = [u / n for u in hv]
    return lam


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    family="kettledrum_pedal_tuning_grade_gelu_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kettledrum pedal-tuning grader (GELU MLP, 5 grades) whose training script calls "
    "F.nll_loss on the raw head output: the log_softmax lived in the old model's forward and was "
    "dropped in a refactor. nll_loss is then -logit[target], unbounded below, so the head's "
    "logits grow without bound and the 'loss' goes far negative.",
)
def h415_kettledrum_nll_raw_logits(ctx) -> None:
    gen = seeded(4151)
    model = _MLP(10, 48, 5, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    data = _grades(gen, 64, 10, 5, seed=151)
    probe = next(_grades(torch.Generator().manual_seed(5), 256, 10, 5, seed=151))[0]
    sizes = []

    def after(step):
        with torch.no_grad():
            sizes.append(float(model(probe).abs().max()))

    _loop(ctx, model, opt, data, 200, F.nll_loss, classifier=True, after=after)
    ctx.check("max |logit| over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("logits still growing", sizes[-1] > 1.2 * sizes[-40])
    ctx.check("'loss' below -10", ctx.losses[-1] < -10)
    ctx.check("finite", _finite(ctx.losses))


def _impacts(gen, batch, d_in, seed, newtons=True):
    """Tachiai impact force from standardised bout readings, 40-110 kN."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        kn = 75.0 + 30.0 * torch.tanh(x @ w) + 2.0 * torch.randn(batch, generator=gen)
        yield x, kn * (1000.0 if newtons else 1.0)


@scenario(
    family="sumo_tachiai_impact_force_fp16_relu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=83,
    heldout=True,
    note="Sumo tachiai impact-force regressor (ReLU MLP) trained under fp16 autocast with a "
    "GradScaler; the label export writes the force in newtons where the model card says "
    "kilonewtons (40-110 kN becomes 40000-110000). As the head learns the scale its fp16 output "
    "passes 65504 on the strongest bouts, overflows to inf and the loss is non-finite.",
)
def h415_sumo_impact_fp16_newtons(ctx) -> None:
    gen = seeded(4152)
    model = _MLP(6, 64, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    scaler = torch.amp.GradScaler("cpu")
    data = _impacts(gen, 64, 6, seed=152)
    seen = {}

    def alter(step, x, y):
        seen["x"] = x
        return x, y

    steps = _loop(ctx, model, opt, data, 300, F.mse_loss, alter=alter, scaler=scaler, amp=True)
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("finite before it", bad is not None and _finite(ctx.losses[:bad]))
    with torch.no_grad():
        fp32 = model(seen["x"])
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.act2(model.fc2(model.act1(model.fc1(seen["x"]))))
            half = model.head(h)
    ctx.check(
        "fp32 head output finite and over 65504",
        bool(fp32.isfinite().all()) and float(fp32.abs().max()) > 65504,
    )
    ctx.check(
        "fp16 hidden finite, fp16 head output inf",
        bool(h.isfinite().all()) and not bool(half.isfinite().all()),
    )
    ctx.check("ran before overflowing", steps > 20)


@scenario(
    family="fog_harp_droplet_yield_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="Fog-harp droplet-yield regressor (tanh MLP, plain SGD at 0.05) with a StepLR every 60 "
    "steps whose gamma is typed 10 for 0.1: at step 60 the 'decay' multiplies the lr by ten, "
    "taking lr x sharpness past 2 (the loss oscillates at the edge), at step 120 by ten again "
    "and the loss blows up.",
)
def h415_fog_harp_steplr_gamma_typo(ctx) -> None:
    gen = seeded(4153)
    model = _MLP(8, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=10.0)
    data = _readings(gen, 64, 8, seed=153)
    held = next(_readings(torch.Generator().manual_seed(3), 256, 8, seed=153))
    sharp = {}

    def before(step):
        if step in (0, 60):
            sharp[step] = _sharpness(model, F.mse_loss, *held) * opt.param_groups[0]["lr"]

    _loop(ctx, model, opt, data, 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at step 0", sharp.get(0, 9.0) < 2)
    ctx.check("lr x sharpness over 2 at step 60", sharp.get(60, 0.0) > 2)
    ctx.check(
        "finite and falling before 60", _finite(ls[:60]) and _mean(ls[50:60]) < _mean(ls[:10])
    )
    after = ls[60:]
    ctx.check(
        "loss blows up after 60",
        len(after) > 0 and (not _finite(after) or max(after) > 100 * ls[59]),
    )


class _DeepRelu(nn.Module):
    def __init__(self, d_in, width, depth, std_of):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1)
        self.layers = nn.ModuleList(nn.Linear(a, width) for a in sizes)
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=std_of(lin.in_features))
            nn.init.zeros_(lin.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for lin in self.layers:
            z = lin(x)
            if z.requires_grad:
                z.retain_grad()
            self.outs.append(z)
            x = F.relu(z)
        return self.head(x).squeeze(-1)


def _grad_depth_ratio(model):
    first = float(model.outs[0].grad.norm()) / math.sqrt(model.outs[0].numel())
    last = float(model.outs[-1].grad.norm()) / math.sqrt(model.outs[-1].numel())
    return first / max(last, 1e-30)


@scenario(
    family="cave_diver_line_depth_deep_relu_mlp",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Cave-diver line-depth estimator (10-layer ReLU MLP, no normalisation, clipped at 1.0, "
    "Adagrad) whose init uses the Kaiming-uniform bound sqrt(6 / fan_in) as the std of a normal: "
    "every layer multiplies activations and gradients by about sqrt(3), so the gradient grows "
    "through depth, the first layer's over 10x the last's.",
)
def h415_cave_diver_init_bound_as_std(ctx) -> None:
    gen = seeded(4154)
    model = _DeepRelu(8, 32, 10, lambda fan: math.sqrt(6.0 / fan))
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    data = _readings(gen, 64, 8, seed=154)
    ratios = []

    def inspect(step):
        ratios.append(_grad_depth_ratio(model))

    _loop(ctx, model, opt, data, 150, F.mse_loss, inspect=inspect, clip=1.0)
    torch.manual_seed(4154)
    ref = _DeepRelu(8, 32, 10, lambda fan: math.sqrt(2.0 / fan))
    x, y = next(_readings(torch.Generator().manual_seed(4), 64, 8, seed=154))
    F.mse_loss(ref(x), y).backward()
    ctx.check("dL/d(layers.0) over 10x dL/d(layers.9) at the start", ratios[0] > 10)
    ctx.check("median ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x with std sqrt(2 / fan_in)", _grad_depth_ratio(ref) < 5)
    ctx.check("finite", _finite(ctx.losses))


class _CrackCountNet(nn.Module):
    """Poisson rate of hoof-wall cracks; the rate's softplus was swapped for a ReLU."""

    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 32)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(32, 32)
        self.act2 = nn.ReLU()
        self.rate = nn.Linear(32, 1)
        nn.init.constant_(self.rate.bias, 1.0)

    def forward(self, x):
        raw = self.rate(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        self.last_raw = raw.detach()
        return F.relu(raw)  # was F.softplus(raw)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate) + torch.lgamma(y + 1)).mean()


def _crack_counts(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        lam = torch.exp(1.2 * x @ w - 1.0)
        yield x, torch.poisson(lam, generator=gen)


@scenario(
    family="hoof_trimming_wall_crack_count_poisson_relu_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("rate",),
    diverges=35,
    heldout=True,
    note="Farrier's hoof-wall crack-count model (Poisson NLL on a ReLU MLP) whose rate head's "
    "softplus was swapped for a ReLU. Fitting the many zero-count hooves pushes a row's rate "
    "pre-activation below zero, the rate is exactly 0, log(0) = -inf and 0 * -inf is NaN.",
)
def h415_hoof_crack_relu_rate_log0(ctx) -> None:
    gen = seeded(4155)
    model = _CrackCountNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    data = _crack_counts(gen, 64, 8, seed=155)
    _loop(ctx, model, opt, data, 300, _poisson_nll)
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("finite before it", bad is not None and bad > 5 and _finite(ctx.losses[:bad]))
    ctx.check("a row's rate is exactly 0 at the NaN step", bool((model.last_raw <= 0).any()))


@scenario(
    family="gondolier_oar_stroke_speed_silu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Gondolier oar-stroke boat-speed regressor (SiLU MLP, SGD Nesterov, clipped at 1.0); "
    "one boatyard's shard, drawn at step 120, logs speed in cm/s where every other shard uses "
    "m/s. One corrupted batch: the loss and gradient spike, the run recovers.",
)
def h415_gondolier_speed_cm_shard(ctx) -> None:
    gen = seeded(4156)
    model = _MLP(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    data = _readings(gen, 64, 8, seed=156)

    def alter(step, x, y):
        return (x, y * 100.0) if step == 120 else (x, y)

    _loop(ctx, model, opt, data, 250, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss over 100x at 120", ls[120] > 100 * _median(ls[100:120]))
    ctx.check("gradient over 20x at 120", gs[120] > 20 * _median(gs[100:120]))
    ctx.check("recovers", _finite(ls) and _mean(ls[-20:]) < 2 * _mean(ls[100:120]))


def _catches(gen, batch, d_in, seed, flip=0.05):
    """Did the crook hook the ewe: a hidden rule on the swing readings, a few labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.5 * torch.cos(x[:, 1]) > 0.4).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


@scenario(
    family="shepherd_crook_swing_catch_relu_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="Shepherd's crook swing-catch predictor (ReLU MLP, BCE with logits, SGD momentum 0.9, "
    "batch 128, clipped at 5); the job is resumed from a checkpoint at step 150 and the first "
    "step after the resume builds the loss with the library default reduction='sum' before the "
    "config's 'mean' is applied: one gradient 128x too large on an ordinary batch.",
)
def h415_shepherd_crook_resume_sum_reduction(ctx) -> None:
    gen = seeded(4157)
    model = _MLP(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = _catches(gen, 128, 10, seed=157)

    def backprop(step, loss):
        return loss * 128 if step == 150 else loss  # reduction='sum' for the resumed step

    _loop(
        ctx,
        model,
        opt,
        data,
        260,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=5.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 30x at 150", gs[150] > 30 * _median(gs[130:150]))
    ctx.check("logged loss ordinary at 150", ls[150] < 1.5 * _median(ls[130:150]))
    ctx.check("recovers", _finite(ls) and _mean(ls[-20:]) < 1.5 * _mean(ls[130:150]))


class _TwoPartRegressor(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    family="parquet_floor_cup_depth_two_group_regressor",
    optimizer="ASGD",
    cause="update_ratio_out_of_range",
    where=("trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="Parquet floor cupping-depth regressor with two param groups (trunk, head) under a "
    "per-group LambdaLR warm-up; the trunk's warmup_steps is typed 1_000_000 for 100, so its lr "
    "multiplier stays under 3e-4 for the whole run: the trunk's updates are far too small for its "
    "weights (effectively frozen) while the head trains.",
)
def h415_parquet_trunk_warmup_typo(ctx) -> None:
    gen = seeded(4158)
    model = _TwoPartRegressor(8)
    opt = torch.optim.ASGD(
        [
            {"params": model.trunk.parameters(), "lr": 0.05},
            {"params": model.head.parameters(), "lr": 0.05},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [lambda s: min(1.0, (s + 1) / 1_000_000), lambda s: min(1.0, (s + 1) / 100)],
    )
    data = _readings(gen, 64, 8, seed=158)
    w0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    tg = []

    def inspect(step):
        tg.append(float(model.trunk[0].weight.grad.norm()))

    _loop(ctx, model, opt, data, 250, F.mse_loss, inspect=inspect, sched=sched)
    ctx.check("trunk.0 moved under 1e-3 of its norm", _rel_change(w0, model.trunk[0].weight) < 1e-3)
    ctx.check("trunk.0 receives gradients", _median(tg) > 1e-3)
    ctx.check("head moved over 10%", _rel_change(h0, model.head.weight) > 0.1)
    ctx.check("finite", _finite(ctx.losses))


def _dead(acts):
    return float((acts <= 0).all(0).float().mean())


def _rope_run(lr, steps, ctx=None):
    gen = seeded(4159)
    model = _MLP(8, 64, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    data = _readings(gen, 64, 8, seed=159)
    probe = next(_readings(torch.Generator().manual_seed(2), 512, 8, seed=159))[0]
    dead = []

    def after(step):
        with torch.no_grad():
            dead.append(_dead(model.act2(model.fc2(model.act1(model.fc1(probe))))))

    if ctx is not None:
        _loop(ctx, model, opt, data, steps, F.mse_loss, after=after)
        return dead
    ctx_like = _Quiet()
    _loop(ctx_like, model, opt, data, steps, F.mse_loss, after=after)
    return dead


class _Quiet:
    """A context for the reference run: records nothing, attaches nothing."""

    def __init__(self):
        self.grad_norms, self.scales = [], []

    def attach(self, *a, **k):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        pass


@scenario(
    family="spelunker_rope_stretch_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="Spelunker rope-stretch regressor (ReLU MLP) on RMSprop with lr typed 3e-2 for 3e-4: "
    "the first oversized updates push most of the second layer's pre-activations negative on "
    "every input, those ReLUs die and never come back.",
)
def h415_spelunker_rope_rmsprop_lr_typo(ctx) -> None:
    dead = _rope_run(3e-2, 200, ctx)
    ref = _rope_run(3e-4, 200)
    ctx.check("over 45% of act2 dead over the last 50 steps", _mean(dead[-50:]) > 0.45)
    ctx.check("under 20% dead at lr 3e-4", _mean(ref[-50:]) < 0.2)
    ctx.check("over twice the dead share at 3e-4", _mean(dead[-50:]) > 2 * _mean(ref[-50:]))
    ctx.check("dead units did not revive", min(dead[-50:]) > 0.4)


class _CosineHead(nn.Module):
    def __init__(self, d, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d) * 0.1)
        self.scale = scale

    def forward(self, h):
        self.cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.scale * self.cos


class _DialectNet(nn.Module):
    def __init__(self, d_in, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 32)
        self.head = _CosineHead(32, classes, scale)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="birdsong_dialect_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Birdsong-dialect classifier (GELU trunk, cosine-similarity head) whose logit scale is "
    "typed 100 for 10: once the cosines separate, the target's float32 softmax probability "
    "rounds to exactly 1.0 on most rows (the softmax saturates).",
)
def h415_birdsong_cosine_scale_typo(ctx) -> None:
    gen = seeded(4160)
    model = _DialectNet(12, 6, 100.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    data = _grades(gen, 64, 12, 6, seed=160, spread=0.8)
    frac, ref = [], []
    seen = {}

    def alter(step, x, y):
        seen["y"] = y
        return x, y

    def after(step):
        cos = model.head.cos.detach()
        frac.append(collapsed_fraction(100.0 * cos, seen["y"]))
        ref.append(collapsed_fraction(10.0 * cos, seen["y"]))

    _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True, alter=alter, after=after)
    ctx.check("over half the rows' p(target) exactly 1.0, last 30 steps", _mean(frac[-30:]) > 0.5)
    ctx.check("under 5% at scale 10 on the same cosines", _mean(ref[-30:]) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls ------------------------------------------------------------------------------


class _FeatureNet(nn.Module):
    def __init__(self, hidden=16):
        super().__init__()
        self.fc1 = nn.Linear(1, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


class _NeuralAdditiveModel(nn.Module):
    """One small MLP per input feature, their outputs summed (Agarwal et al. 2021), with
    feature dropout: a whole feature's contribution is dropped during training."""

    def __init__(self, n_features, feature_dropout=0.1):
        super().__init__()
        self.features = nn.ModuleList(_FeatureNet() for _ in range(n_features))
        self.bias = nn.Parameter(torch.zeros(1))
        self.feature_dropout = nn.Dropout(feature_dropout)

    def forward(self, x):
        parts = torch.cat([f(x[:, i : i + 1]) for i, f in enumerate(self.features)], -1)
        return self.feature_dropout(parts).sum(-1) + self.bias


def _diabetes(gen, batch):
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, held = order[:352], order[352:]

    def stream():
        while True:
            perm = train[torch.randperm(len(train), generator=gen)]
            for i in range(0, len(perm) - batch + 1, batch):
                idx = perm[i : i + batch]
                yield x[idx], y[idx]

    return stream(), (x[held], y[held])


@scenario(
    family="apothecary_tincture_response_neural_additive_model",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Apothecary tincture-response neural additive model on scikit-learn's diabetes set "
    "(ten per-feature ReLU MLPs summed, feature dropout 0.1, AdamW with weight decay 1e-3, "
    "ReduceLROnPlateau on the held-out loss, MSE on the standardised target): a control.",
)
def h415_apothecary_nam_control(ctx) -> None:
    gen = seeded(4161)
    model = _NeuralAdditiveModel(10)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    data, (hx, hy) = _diabetes(gen, 32)

    def plateau():
        model.eval()
        with torch.no_grad():
            return float(F.mse_loss(model(hx), hy))

    _loop(ctx, model, opt, data, 200, F.mse_loss, sched=sched, plateau=plateau)
    ctx.check("loss fell", _fell(ctx.losses, k=20, ratio=0.8))
    ctx.check("held-out MSE under 0.75 of the variance", plateau() < 0.75)
    ctx.check("finite", _finite(ctx.losses))


class _LensNet(nn.Module):
    def __init__(self, channels, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


@scenario(
    family="lighthouse_lens_rotation_fp16_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Lighthouse lens-rotation character classifier (ReLU Conv1d on light-sensor traces) "
    "under fp16 autocast with a GradScaler, SGD Nesterov under OneCycleLR, label smoothing 0.1, "
    "clipping at 1.0: a control.",
)
def h415_lighthouse_lens_fp16_control(ctx) -> None:
    gen = seeded(4162)
    model = _LensNet(2, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    data = _rhythms(gen, 64, 5, seed=162)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        data,
        steps,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("loss fell", _fell(ctx.losses, k=15, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="scythe_peening_edge_hardness_gelu_regressor",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Scythe-peening edge-hardness regressor (GELU MLP, Huber loss on noisy anvil readings), "
    "Adam with a 20-step linear warm-up then cosine decay, gradient accumulation over 2, "
    "clipping at 1.0: a control.",
)
def h415_scythe_peening_control(ctx) -> None:
    gen = seeded(4163)
    model = _MLP(10, 48, 1, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 200

    def lam(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    data = _readings(gen, 32, 10, seed=163, noise=0.2)
    _loop(ctx, model, opt, data, steps, F.huber_loss, clip=1.0, sched=sched, accumulate=2)
    ctx.check("loss fell", _fell(ctx.losses, k=20, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))
