"""Held-out set 399 (``h399_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a punkin-chunk launch-distance regressor fed one team's shard logged in centimetres (one
corrupted batch), a Cresta-run descent-split deep tanh MLP initialised with a gain typed 2.5 for
1.0 (gradients grow through depth), a kaninhop rabbit-jump fault classifier whose softmax
temperature is typed 1e-3 for 1.0 (softmax saturates), a Segway-tour battery-drain regressor
whose resume hook reloads the step-10 checkpoint (a one-off loss spike), a sealing-wax drip
regressor whose log-feature layer meets a zero reading (log 0), a periwig curl-set classifier
whose trunk group's lr is typed 1e-9 for 1e-3 (frozen), an outhouse-racing push-speed regressor
whose OneCycleLR max_lr is typed 10x (past 2/sharpness), a pianola-roll perforation tagger whose
loss weight is read in percent for one step (one gradient burst), an umbrella-rib tension
regressor whose decoupled weight decay has its sign flipped (a slow climb) and a gymkhana
pole-bending classifier trained with F.nll_loss on raw logits (the head's logits grow).

Controls: a pigeon-tumbler roll-landing conditional RealNVP flow (tanh-bounded log-scales,
ActNorm initialised from the first batch, Adam), a bagpipe reed-cane crack Conv1d classifier
(SGD Nesterov under OneCycleLR, label smoothing, clipping) and a shell-button blank-thickness
Huber regressor (fp16 autocast with a GradScaler, AdamW with a no-decay group,
ReduceLROnPlateau, accumulation, clipping).

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


# -- data_outlier: one team's shard logged in centimetres -----------------------------------------


@scenario(
    "punkin_chunk_launch_distance_relu_regressor",
    "SGD momentum",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=110,
    note="a ReLU MLP regressing pumpkin-launch distance (tens of metres, standardised to unit "
    "scale) from arm, counterweight and release readings; the step-110 batch comes from one "
    "team's shard whose distances were logged in centimetres, so its targets are x100: the loss "
    "and the gradient jump over 20x for that batch, clipping keeps the run and it recovers",
)
def h399_punkin_chunk_centimetre_shard(ctx: Context) -> None:
    gen = seeded(3991)
    model = _MLP(10, 48)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == 110:
            y = y * 100.0
            seen["finite"] = bool(torch.isfinite(x).all() and torch.isfinite(y).all())
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3992), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss fell before step 110", _fell(ls[:110]))
    ctx.check(
        "loss at step 110 over 20x the median of steps 90-109", ls[110] > 20 * _median(ls[90:110])
    )
    ctx.check(
        "gradient at step 110 over 20x the median of steps 90-109",
        gs[110] > 20 * _median(gs[90:110]),
    )
    ctx.check("the step-110 batch is finite", seen.get("finite", False))
    ctx.check(
        "recovers: last 20 steps under 2x the mean of steps 90-109",
        _finite(ls) and _mean(ls[-20:]) < 2 * _mean(ls[90:110]),
    )


# -- exploding_gradients: a deep tanh MLP with init gain typed 2.5 --------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width=32, depth=16, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        self.acts = []

    def forward(self, x):
        self.acts = []
        for lin in self.layers:
            x = lin(x)
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
            x = torch.tanh(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model) -> float:
    first, last = model.acts[0].grad, model.acts[-1].grad
    return float(first.norm() / last.norm().clamp_min(1e-30))


@scenario(
    "cresta_run_descent_split_deep_tanh_mlp",
    "Adamax",
    "exploding_gradients",
    "layers.0",
    None,
    heldout=True,
    note="a 16-layer tanh MLP regressing Cresta-run split times from corner and ice readings; the "
    "hand-written init uses std = gain / sqrt(fan_in) with the gain typed 2.5 for 1.0, the "
    "network sits in the chaotic regime and dL/d(layers.0 output) is over 20x dL/d(layers.15 "
    "output) at the start and its median over the run stays over 10x, against under 5x at gain "
    "1.0; clipped, Adamax",
)
def h399_cresta_run_init_gain_typo(ctx: Context) -> None:
    gen = seeded(3993)
    ref = _DeepTanh(12, gain=1.0)
    batches = _readings(gen, 64, 12, 3994)
    x0, y0 = next(batches)
    F.mse_loss(ref(x0), y0).backward()
    ref_ratio = _depth_ratio(ref)
    model = _DeepTanh(12, gain=2.5)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    ratios = []

    def inspect(step):
        ratios.append(_depth_ratio(model))

    _loop(ctx, model, opt, batches, 150, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check("dL/d(layers.0) over 20x dL/d(layers.15) at step 0", ratios[0] > 20)
    ctx.check("median ratio over the run over 10x", _median(ratios) > 10)
    ctx.check("ratio under 5x at the intended gain 1.0", ref_ratio < 5)
    ctx.check("loss finite", _finite(ctx.losses))


# -- softmax_collapse: a temperature typed 1e-3 for 1.0 -------------------------------------------


class _TempNet(_MLP):
    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, 48, classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    "kaninhop_rabbit_jump_fault_temperature_classifier",
    "RMSprop",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="a GELU classifier of rabbit show-jumping faults (clear, pole down, refusal, ...) from "
    "jump-gate sensor readings; the logits are divided by a softmax temperature typed 1e-3 for "
    "1.0, so over half the rows' float32 target probability is exactly 1.0 over the last 30 "
    "steps, against under 5% of rows at temperature 1 on the same logits",
)
def h399_kaninhop_temperature_typo(ctx: Context) -> None:
    gen = seeded(3995)
    model = _TempNet(12, 6, 1e-3)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sat, sat_ref = [], []

    def watch(step, out, x, y):
        if step >= 120:
            with torch.no_grad():
                p = torch.softmax(out.float(), -1).gather(1, y[:, None])
                q = torch.softmax(out.float() * model.temperature, -1).gather(1, y[:, None])
            sat.append(float((p == 1.0).float().mean()))
            sat_ref.append(float((q == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 3996),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' target probability exactly 1.0 over the last 30 steps",
        _mean(sat) > 0.5,
    )
    ctx.check("under 5% of rows at temperature 1 on the same logits", _mean(sat_ref) < 0.05)
    ctx.check("loss finite", _finite(ctx.losses))


# -- loss_spike: a resume hook reloads the step-10 checkpoint --------------------------------------


@scenario(
    "segway_tour_battery_drain_gelu_regressor",
    "Adam",
    "loss_spike",
    (),
    None,
    heldout=True,
    onset=120,
    note="a GELU regressor of Segway-tour battery drain from route, load and temperature "
    "readings; the checkpoint hook's condition reads step == 10 for step % 10 == 0, so when the "
    "job is pre-empted and resumed at step 120 the 'latest' checkpoint is the step-10 one while "
    "the data and Adam's state carry on: the loss is over 3x for one step with no gradient burst "
    "before it, and the run recovers",
)
def h399_segway_stale_checkpoint(ctx: Context) -> None:
    gen = seeded(3997)
    model = _MLP(10, 48, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    saved = {}

    def after(step):
        if step == 10:  # meant: step % 10 == 0
            saved["latest"] = {k: v.clone() for k, v in model.state_dict().items()}

    def before(step):
        if step == 120:
            model.load_state_dict(saved["latest"])

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3998, noise=0.02),
        220,
        F.mse_loss,
        before=before,
        after=after,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss fell before step 120", _fell(ls[:120]))
    ctx.check(
        "loss at step 120 over 3x the mean of steps 100-119", ls[120] > 3 * _mean(ls[100:120])
    )
    ctx.check(
        "no gradient burst at step 119 (under 3x the median of 100-119)",
        gs[119] < 3 * _median(gs[100:120]),
    )
    ctx.check(
        "recovers: last 20 steps under 1.5x the mean of steps 100-119",
        _finite(ls) and _mean(ls[-20:]) < 1.5 * _mean(ls[100:120]),
    )


# -- nonfinite: a log-feature layer meets a zero reading -------------------------------------------


class _LogFeatures(nn.Module):
    """log of the positive readings (viscosity, wick length, drip rate, ...), no floor."""

    def forward(self, x):
        return torch.log(x)


class _WaxNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.logf = _LogFeatures()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.logf(x)))))).squeeze(-1)


def _wax_readings(gen, batch, d_in=8):
    g = torch.Generator().manual_seed(39910)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        z = 0.5 * torch.randn(batch, d_in, generator=gen)
        yield z.exp(), torch.tanh(z @ w * 2) + 0.03 * torch.randn(batch, generator=gen)


@scenario(
    "sealing_wax_drip_viscosity_log_feature_net",
    "Adagrad",
    "nonfinite",
    "logf",
    81,
    heldout=True,
    onset=80,
    note="a tanh regressor of sealing-wax drip length from positive readings (viscosity, "
    "temperature ratio, wick length, ...) taken through a hand-written log-feature layer with no "
    "floor; at step 80 one station's drip counter reports exactly 0 for three rows, log(0) = "
    "-inf, fc1 passes +-inf to a tanh that squashes it (the step-80 loss is still finite) but "
    "the backward pass gives 0 * inf = NaN gradients, Adagrad writes NaN into the weights and "
    "the loss is NaN from step 81",
)
def h399_sealing_wax_log_zero(ctx: Context) -> None:
    gen = seeded(3999)
    model = _WaxNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen = {}

    def alter(step, x, y):
        if step == 80:
            x = x.clone()
            x[:3, 2] = 0.0
        return x, y

    def watch(step, out, x, y):
        if step == 80:
            seen["input_finite"] = bool(torch.isfinite(x).all())
            seen["exact_zero"] = bool((x == 0).any())
            seen["logf_nonfinite"] = bool((~torch.isfinite(model.logf(x))).any())

    _loop(ctx, model, opt, _wax_readings(gen, 64), 150, F.mse_loss, alter=alter, watch=watch)
    ls = ctx.losses
    ctx.check("loss finite and falling before step 80", _fell(ls[:80]))
    ctx.check("gradient non-finite first at step 80", _first_bad(ctx.grad_norms) == 80)
    ctx.check("loss non-finite first at step 81", _first_bad(ls) == 81)
    ctx.check(
        "the step-80 batch is finite with an exact 0 reading",
        seen.get("input_finite", False) and seen.get("exact_zero", False),
    )
    ctx.check("the log-feature layer's output is non-finite", seen.get("logf_nonfinite", False))


# -- update_ratio_out_of_range: the trunk group's lr typed 1e-9 ------------------------------------


@scenario(
    "periwig_curl_set_two_group_relu_classifier",
    "AdamW",
    "update_ratio_out_of_range",
    ("fc1", "fc2"),
    None,
    heldout=True,
    note="a ReLU classifier of periwig curl-set grades from steam, pin and drying readings, "
    "trained with two param groups (trunk fc1 + fc2, and the head); the trunk's lr is typed 1e-9 "
    "for 1e-3, so fc1 and fc2 move under 1e-5 of their norm while receiving gradients and the head "
    "moves over 5%",
)
def h399_periwig_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(39911)
    model = _MLP(12, 48, 5)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.AdamW(
        [{"params": trunk, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-3}],
        weight_decay=0.01,
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    gnorm = []

    def inspect(step):
        gnorm.append(float(model.fc1.weight.grad.norm()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 39912, spread=1.5),
        150,
        F.cross_entropy,
        classifier=True,
        inspect=inspect,
    )
    ctx.check("fc1 moved under 1e-5 of its norm", _rel_change(w1, model.fc1.weight) < 1e-5)
    ctx.check("fc2 moved under 1e-5 of its norm", _rel_change(w2, model.fc2.weight) < 1e-5)
    ctx.check("fc1 received gradients", min(gnorm) > 1e-4)
    ctx.check("the head moved over 5%", _rel_change(wh, model.head.weight) > 0.05)


# -- sharpness_above_limit: OneCycleLR max_lr typed 10x --------------------------------------------


def _sharpness(model, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the MSE loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


OUTHOUSE_LR = 4.0  # meant 0.4


@scenario(
    "outhouse_racing_push_speed_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    note="a tanh regressor of outhouse-race push speed from crew and track readings, plain SGD "
    "under OneCycleLR with max_lr typed 4.0 for 0.4; lr x top Hessian eigenvalue (power "
    "iteration) is under 2 at the start, passes 2 as the warm-up climbs and the loss blows up; "
    "the intended peak stays under 2/sharpness",
)
def h399_outhouse_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(39913)
    model = _MLP(10, 32, act=nn.Tanh)
    batches = _readings(gen, 128, 10, 39914)
    xp, yp = next(batches)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=OUTHOUSE_LR, total_steps=200, pct_start=0.5
    )
    lam0 = _sharpness(model, xp, yp)
    products = []

    def before(step):
        if step % 5 == 0 and _finite(ctx.losses):
            products.append((step, opt.param_groups[0]["lr"] * _sharpness(model, xp, yp)))

    _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    bad = _first_bad(ls)
    blow = next(
        (i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * min(ls[:20])), None
    )
    ctx.check("lr x sharpness under 2 at step 0", products[0][1] < 2)
    ctx.check("the intended peak 0.4 x initial sharpness under 2", 0.1 * OUTHOUSE_LR * lam0 < 2)
    ctx.check(
        "lr x sharpness over 2 before the blow-up",
        blow is not None and any(p > 2 for s, p in products if s < blow),
    )
    ctx.check(
        "loss blows up (over 100x or non-finite)",
        blow is not None and (bad is not None or max(ls) > 100 * min(ls[:20])),
    )


# -- gradient_spike: a loss weight read in percent for one step ------------------------------------


@scenario(
    "pianola_roll_perforation_bce_tagger",
    "SGD Nesterov",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=130,
    note="a ReLU multilabel BCE tagger of pianola-roll perforation faults (torn, doubled, "
    "clogged, ...) from tracker-bar readings, gradient accumulation over 2; at step 130 the "
    "resumed run re-reads its loss-weight schedule from a file that stores it in percent, so "
    "the step is weighted 100.0 for 1.00: the gradient is over 30x on a clean batch while the "
    "logged loss is ordinary; clipped, the run recovers",
)
def h399_pianola_loss_weight_percent(ctx: Context) -> None:
    gen = seeded(39915)
    g = torch.Generator().manual_seed(39916)
    w = torch.randn(16, 8, generator=g) / 1.0

    def rolls():
        while True:
            x = torch.randn(32, 16, generator=gen)
            yield x, (x @ w + 0.3 * torch.randn(32, 8, generator=gen) > 0).float()

    model = _MLP(16, 48, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss, accumulate):
        weight = 100.0 if step == 130 else 1.0
        return weight * loss / accumulate

    _loop(
        ctx,
        model,
        opt,
        rolls(),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        accumulate=2,
        clip=2.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss fell before step 130", _fell(ls[:130]))
    ctx.check(
        "gradient at step 130 over 30x the median of steps 110-129",
        gs[130] > 30 * _median(gs[110:130]),
    )
    ctx.check(
        "logged loss at step 130 ordinary (under 1.5x the median of 110-129)",
        ls[130] < 1.5 * _median(ls[110:130]),
    )
    ctx.check(
        "recovers: last 20 steps under 1.5x the mean of steps 110-129",
        _finite(ls) and _mean(ls[-20:]) < 1.5 * _mean(ls[110:130]),
    )


# -- loss_divergence: decoupled weight decay with its sign flipped ---------------------------------


@scenario(
    "umbrella_maker_rib_tension_tanh_regressor",
    "NAdam",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="a tanh regressor of umbrella-rib spring tension from rib, runner and canopy readings; "
    "NAdam with hand-written decoupled weight decay applied after each step as "
    "p.mul_(1 + lr * wd) for p.mul_(1 - lr * wd): the weights grow over 2x and the loss climbs "
    "slowly to over 3x its lowest 20-step mean with no 2x jump between 10-step means, finite",
)
def h399_umbrella_decay_sign(ctx: Context) -> None:
    gen = seeded(39917)
    model = _MLP(10, 48, act=nn.Tanh)
    lr, wd = 2e-3, 3.0
    opt = torch.optim.NAdam(model.parameters(), lr=lr)
    n0 = float(_params(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant 1 - lr * wd

    _loop(ctx, model, opt, _readings(gen, 64, 10, 39918), 300, F.mse_loss, after=after)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    tens = [_mean(ls[i : i + 10]) for i in range(0, len(ls), 10)]
    ctx.check("weights grew over 2x", float(_params(model).norm()) > 2 * n0)
    ctx.check("last 20 steps over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3 * min(means))
    ctx.check(
        "no 2x jump between consecutive 10-step means",
        all(b < 2 * a for a, b in zip(tens, tens[1:], strict=False)),
    )
    ctx.check("loss finite", _finite(ls))


# -- output_logit_divergence: F.nll_loss on raw logits ---------------------------------------------


@scenario(
    "gymkhana_pole_bending_raw_nll_classifier",
    "RAdam",
    "output_logit_divergence",
    "head",
    None,
    heldout=True,
    note="a ReLU classifier of gymkhana pole-bending penalties from horse and rider readings; a "
    "refactor moved log_softmax into the evaluation code and training kept F.nll_loss on the "
    "head's raw output, so the loss is unbounded below: the head's largest logit grows over 20x "
    "its start and is still growing, the 'NLL' falls below -10, finite",
)
def h399_gymkhana_raw_nll(ctx: Context) -> None:
    gen = seeded(39919)
    model = _MLP(12, 48, 6)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    peaks = []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 39920),
        200,
        F.nll_loss,
        classifier=True,
        watch=watch,
    )
    ctx.check("the head's largest logit over 20x its start", peaks[-1] > 20 * peaks[0])
    ctx.check("still growing: last over 1.2x that at step 130", peaks[-1] > 1.2 * peaks[130])
    ctx.check("loss below -10 at the end", ctx.losses[-1] < -10)
    ctx.check("loss finite", _finite(ctx.losses))


# -- healthy: a conditional RealNVP flow with tanh-bounded log-scales and ActNorm ------------------


class _ActNorm(nn.Module):
    """Per-feature affine map initialised from the first batch to zero mean and unit variance."""

    def __init__(self, dim):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.ready = False

    def forward(self, x):
        if not self.ready:
            with torch.no_grad():
                self.bias.copy_(-x.mean(0))
                self.log_scale.copy_(-x.std(0).clamp_min(1e-6).log())
            self.ready = True
        z = (x + self.bias) * self.log_scale.exp()
        return z, self.log_scale.sum().expand(x.shape[0])


class _Coupling(nn.Module):
    """Affine coupling: the masked half (and the condition) sets scale and shift of the rest."""

    def __init__(self, mask, cond_dim, hidden=32, bound=2.0):
        super().__init__()
        self.register_buffer("mask", mask)
        self.bound = bound
        self.net = nn.Sequential(
            nn.Linear(2 + cond_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 4),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x, c):
        raw_s, t = self.net(torch.cat([x * self.mask, c], 1)).chunk(2, 1)
        s = self.bound * torch.tanh(raw_s / self.bound) * (1 - self.mask)
        z = x * self.mask + (1 - self.mask) * (x * s.exp() + t)
        return z, s.sum(1)


class _CondFlow(nn.Module):
    def __init__(self, cond_dim=3, layers=6):
        super().__init__()
        self.actnorm = _ActNorm(2)
        masks = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
        self.couplings = nn.ModuleList(_Coupling(masks[i % 2], cond_dim) for i in range(layers))

    def forward(self, xc):
        """Per-row negative log-likelihood of x = xc[:, :2] given c = xc[:, 2:], log-determinants
        summed by hand."""
        x, c = xc[:, :2], xc[:, 2:]
        z, logdet = self.actnorm(x)
        for layer in self.couplings:
            z, ld = layer(z, c)
            logdet = logdet + ld
        log_pz = -0.5 * (z * z).sum(1) - math.log(2 * math.pi)
        return -(log_pz + logdet)


def _tumbler_landings(gen, batch):
    """2-D landing offsets (m) of tumbler pigeons after a roll; three breeds, a crescent each."""
    while True:
        breed = torch.randint(0, 3, (batch,), generator=gen)
        ang = math.pi * torch.rand(batch, generator=gen) + breed * 2.1
        r = 1.5 + 0.5 * breed + 0.15 * torch.randn(batch, generator=gen)
        x = torch.stack([r * torch.cos(ang), r * torch.sin(ang) + 0.5 * breed], 1)
        yield x + 0.05 * torch.randn(batch, 2, generator=gen), F.one_hot(breed, 3).float()


@scenario(
    "pigeon_tumbler_roll_landing_conditional_realnvp",
    "Adam",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: a conditional RealNVP flow of tumbler-pigeon landing offsets given the breed "
    "(an ActNorm initialised from the first batch, six affine couplings with alternating masks "
    "whose log-scales are bounded by 2 tanh(s / 2), log-determinants summed by hand, Gaussian "
    "base), Adam with clipping",
)
def h399_pigeon_tumbler_flow_control(ctx: Context) -> None:
    gen = seeded(39921)
    model = _CondFlow()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = _tumbler_landings(gen, 128)
    x0, c0 = next(data)
    model(torch.cat([x0, c0], 1))  # the data-dependent ActNorm initialisation
    _loop(
        ctx,
        model,
        opt,
        ((torch.cat([x, c], 1), None) for x, c in data),
        250,
        lambda out, _: out.mean(),
        clip=5.0,
    )
    ls = ctx.losses
    ctx.check("loss finite", _finite(ls))
    ctx.check("NLL fell by over 0.5 nats", _mean(ls[-20:]) < _mean(ls[:10]) - 0.5)


# -- healthy: a Conv1d classifier under OneCycleLR -------------------------------------------------


class _ReedConv(nn.Module):
    def __init__(self, channels=2, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(-1))


@scenario(
    "bagpipe_reed_cane_crack_conv1d_classifier",
    "SGD Nesterov",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: a ReLU Conv1d classifier of bagpipe reed-cane crack types from two-channel "
    "tap-response traces, SGD Nesterov with weight decay under OneCycleLR, label smoothing 0.1, "
    "clipping",
)
def h399_bagpipe_reed_control(ctx: Context) -> None:
    gen = seeded(39923)
    model = _ReedConv()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 4, 39924),
        200,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss finite and fell", _fell(ctx.losses, ratio=0.7))


# -- healthy: fp16 autocast with a GradScaler ------------------------------------------------------


@scenario(
    "button_maker_shell_blank_thickness_fp16_huber_regressor",
    "AdamW",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: a SiLU Huber regressor of shell-button blank thickness from cutting-lathe "
    "readings under fp16 autocast with a GradScaler, AdamW with biases in a no-decay group, "
    "accumulation over 2, ReduceLROnPlateau on a held-out batch, clipping",
)
def h399_button_blank_fp16_control(ctx: Context) -> None:
    gen = seeded(39925)
    model = _MLP(10, 48, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    batches = _readings(gen, 32, 10, 39926)
    xv, yv = next(batches)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(xv), yv))

    _loop(
        ctx,
        model,
        opt,
        batches,
        150,
        F.huber_loss,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    ctx.check("loss finite and fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss scale finite and positive", all(math.isfinite(s) and s > 0 for s in ctx.scales))
