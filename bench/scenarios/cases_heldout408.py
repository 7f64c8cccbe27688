"""Held-out set 408 (``h408_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a tatami-mat weave-density classifier trained with nll_loss on raw logits (the head's
logits grow without bound), a mandolin tremolo pick-rate Gaussian net whose std head takes sqrt of
a raw linear output after its softplus was dropped (sqrt of a negative), a sandstorm dust-front
speed tanh regressor whose warm-up peak lr is typed 2.0 for 0.2 (past 2/sharpness), a sherpa
load-carry pace ReLU regressor on Adamax with lr typed 5e-1 for 5e-3 (ReLUs die), a woodturning
lathe-chatter deep tanh MLP initialised with gain 3.0 for 1.0 (gradients grow through depth), a
lithograph stone ink regressor fed one shard in wrong units (one corrupted batch), an accordion
bellows air-leak BCE net whose loss weight is read in percent for one step (a gradient burst), a
shamisen bachi-strike regressor whose penalty weight is typed 1e4 for 1e-4 at one step (Adam's
second moment poisoned), an origami crease-count classifier whose trunk param group lr is typed
1e-9 for 1e-2 (a frozen layer) and an ikebana stem-angle classifier whose temperature floor is
typed 0.005 for 0.5 (softmax saturates).

Controls: a bonsai-nursery neural collaborative filtering recommender (user and item embeddings
through an MLP with dropout, BCE on implicit feedback with sampled negatives, Adam at 1e-3 with
weight decay on the embeddings), a taiko ensemble rhythm Conv1d classifier (SGD momentum under
OneCycleLR, label smoothing, clipping) and a letterpress ink-coverage SiLU Huber regressor (fp16
autocast with a GradScaler, AdamW with a no-decay group, accumulation, ReduceLROnPlateau).
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
    family="tatami_mat_weave_density_gelu_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tatami-mat weave-density grader (GELU MLP, 6 grades) trained with F.nll_loss on the "
    "raw head output after the LogSoftmax moved into the export wrapper. nll_loss is then "
    "-logit[target], unbounded below: the head's logits grow without bound and the 'loss' "
    "goes far negative.",
)
def h408_tatami_weave_nll_raw_logits(ctx) -> None:
    gen = seeded(4081)
    model = _MLP(12, 48, 6, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    data = _grades(gen, 64, 12, 6, seed=81)
    probe = next(_grades(torch.Generator().manual_seed(9), 256, 12, 6, seed=81))[0]
    sizes = []

    def after(step):
        with torch.no_grad():
            sizes.append(float(model(probe).abs().max()))

    _loop(ctx, model, opt, data, 200, F.nll_loss, classifier=True, after=after)
    ctx.check("max |logit| over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("logits still growing", sizes[-1] > 1.2 * sizes[-40])
    ctx.check("'loss' below -10", ctx.losses[-1] < -10)
    ctx.check("finite", _finite(ctx.losses))


class _PickRateNet(nn.Module):
    """Mean and std heads over a SiLU trunk; the std head's softplus was dropped."""

    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 32)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(32, 32)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(32, 1)
        self.std_raw = nn.Linear(32, 1)
        nn.init.constant_(self.std_raw.bias, 1.0)
        nn.init.normal_(self.std_raw.weight, std=0.01)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        raw = self.std_raw(h)
        self.last_raw = raw.detach()
        std = torch.sqrt(raw)  # was sqrt(softplus(.)) + 1e-3
        return torch.cat([self.mean(h), std], -1)


def _gauss_nll(out, y):
    mu, std = out[:, 0], out[:, 1]
    return (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()


@scenario(
    family="mandolin_tremolo_pick_variance_sqrt_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("std_raw",),
    diverges=109,
    heldout=True,
    note="Mandolin tremolo pick-rate regressor with a Gaussian NLL; its std head computes "
    "sqrt(linear(h)) after the softplus in sqrt(softplus(.)) + 1e-3 was dropped. As the NLL "
    "shrinks the predicted spread on the clean readings a row's pre-activation goes negative, "
    "sqrt of a negative is NaN and the loss is non-finite.",
)
def h408_mandolin_tremolo_sqrt_negative(ctx) -> None:
    gen = seeded(4082)
    model = _PickRateNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    data = _readings(gen, 64, 8, seed=82, noise=0.03)
    _loop(ctx, model, opt, data, 300, _gauss_nll)
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("finite before the NaN", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check(
        "std head pre-sqrt negative on a row at the NaN step", bool((model.last_raw < 0).any())
    )
    print("first non-finite step", bad)


@scenario(
    family="sandstorm_dust_front_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Sandstorm dust-front speed tanh regressor on plain SGD with a linear warm-up to a peak "
    "typed 2.0 for 0.2. Partway through the warm-up lr x sharpness (power iteration) passes 2 and "
    "the loss blows up; at the intended peak it stays under 2.",
)
def h408_sandstorm_warmup_peak_typo(ctx) -> None:
    gen = seeded(4083)
    model = _MLP(10, 48, 1, act=nn.Tanh)
    peak, warm = 2.0, 150
    opt = torch.optim.SGD(model.parameters(), lr=peak / warm)
    data = _readings(gen, 64, 10, seed=83)
    fixed = next(_readings(torch.Generator().manual_seed(3), 256, 10, seed=83))
    lrs, lam = [], {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        if step % 10 == 0 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            lam[step] = lr * _sharpness(model, F.mse_loss, *fixed)

    _loop(ctx, model, opt, data, 200, F.mse_loss, before=before)
    base = _median(ctx.losses[10:40])
    blow = next(
        (i for i, v in enumerate(ctx.losses) if not math.isfinite(v) or v > 50 * base), None
    )
    ctx.check("lr x sharpness under 2 at step 0", lam[0] < 2)
    ctx.check(
        "lr x sharpness past 2 before the blow-up",
        blow is not None and any(v > 2 for s, v in lam.items() if s < blow),
    )
    ctx.check("loss blows up", blow is not None)
    ctx.check("intended peak 0.2 x sharpness under 2 at step 0", 0.2 * lam[0] / lrs[0] < 2)
    print("lam", {k: round(v, 2) for k, v in lam.items()}, "blow", blow)


def _dead_over(acts):
    return float((torch.cat(acts) <= 0).all(0).float().mean())


def _sherpa_run(lr, steps, ctx=None):
    gen = seeded(4084)
    model = _MLP(10, 64, 1, act=nn.ReLU)
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    data = _readings(gen, 64, 10, seed=84)
    acts = []
    model.act2.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    if ctx is not None:
        _loop(ctx, model, opt, data, steps, F.mse_loss)
    else:
        for _ in range(steps):
            x, y = next(data)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _dead_over(acts[-50:]), _dead_over(acts[:5])


@scenario(
    family="sherpa_load_carry_pace_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="Sherpa load-carry pace ReLU regressor on Adamax with lr typed 5e-1 for 5e-3. The first "
    "large updates push most of act2's units negative on every input; they receive no gradient "
    "again and the net stops learning with a fraction of its units.",
)
def h408_sherpa_pace_adamax_lr_typo(ctx) -> None:
    dead, dead0 = _sherpa_run(5e-1, 200, ctx)
    intended, _ = _sherpa_run(5e-3, 200)
    ctx.check("over 50% of act2 dead over the last 50 steps", dead > 0.5)
    ctx.check("under 20% dead at the start", dead0 < 0.2)
    ctx.check("under 20% dead at the intended 5e-3", intended < 0.2)
    print("dead", dead, "start", dead0, "intended", intended)


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width=32, depth=10, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        self.head = nn.Linear(width, 1)
        self.trace = []

    def forward(self, x):
        self.trace = []
        for lin in self.layers:
            z = lin(x)
            if z.requires_grad:
                z.retain_grad()
            self.trace.append(z)
            x = torch.tanh(z)
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    return float(model.trace[0].grad.norm() / model.trace[-1].grad.norm().clamp_min(1e-12))


@scenario(
    family="woodturning_lathe_chatter_deep_tanh_mlp",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Woodturning lathe-chatter amplitude regressor, a 12-layer tanh MLP whose init std is "
    "typed 3.0 / sqrt(fan_in) for 1.0 / sqrt(fan_in). In that chaotic regime the backward pass "
    "amplifies through depth: the gradient at the first layer's output is many times the last "
    "layer's. Clipping keeps the run from blowing up.",
)
def h408_woodturning_chatter_init_gain(ctx) -> None:
    gen = seeded(4085)
    model = _DeepTanh(10, depth=12, gain=3.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    data = _readings(gen, 64, 10, seed=85)
    ratios = []
    _loop(
        ctx,
        model,
        opt,
        data,
        150,
        F.mse_loss,
        clip=1.0,
        inspect=lambda s: ratios.append(_depth_ratio(model)),
    )
    seeded(4085)
    ref = _DeepTanh(10, depth=12, gain=1.0)
    x, y = next(_readings(torch.Generator().manual_seed(4), 64, 10, seed=85))
    F.mse_loss(ref(x), y).backward()
    ctx.check("dL/d(layers.0) over 10x dL/d(layers.11) at the start", ratios[0] > 10)
    ctx.check("median ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at gain 1.0", _depth_ratio(ref) < 5)
    ctx.check("finite", _finite(ctx.losses))
    print("ratio0", ratios[0], "median", _median(ratios), "ref", _depth_ratio(ref))


@scenario(
    family="lithograph_stone_grain_ink_silu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Lithograph stone ink-uptake SiLU regressor on SGD with momentum and clipping; at step "
    "120 one print shop's shard arrives with the ink-weight target in milligrams for grams "
    "(x1000). That one batch's loss and gradient jump; the run recovers.",
)
def h408_lithograph_ink_unit_shard(ctx) -> None:
    gen = seeded(4086)
    model = _MLP(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = _readings(gen, 64, 10, seed=86)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 120 else (x, y)

    _loop(ctx, model, opt, data, 220, F.mse_loss, alter=alter, clip=1.0)
    pre = _median(ctx.losses[100:120])
    ctx.check("loss over 100x at step 120", ctx.losses[120] > 100 * pre)
    ctx.check(
        "gradient over 20x at step 120", ctx.grad_norms[120] > 20 * _median(ctx.grad_norms[100:120])
    )
    ctx.check("recovers", _mean(ctx.losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="accordion_bellows_air_leak_relu_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="Accordion bellows air-leak tagger (ReLU MLP, BCE, 10% noisy labels) on SGD with Nesterov "
    "and clipping; at step 150 the curriculum's phase switch reads the loss weight in percent "
    "(80 for 0.80) for one step. The gradient bursts on a clean batch while the logged loss is "
    "ordinary; clipping bounds it and the run recovers.",
)
def h408_accordion_leak_weight_percent(ctx) -> None:
    gen = seeded(4087)
    model = _MLP(10, 48, 1, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    data = _leaks(gen, 64, 10, seed=87)

    def backprop(step, loss):
        return loss * (80.0 if step == 150 else 0.8)

    _loop(
        ctx, model, opt, data, 220, F.binary_cross_entropy_with_logits, backprop=backprop, clip=1.0
    )
    g = ctx.grad_norms
    ctx.check("gradient over 30x at step 150", g[150] > 30 * _median(g[130:150]))
    ctx.check(
        "logged loss ordinary at step 150", ctx.losses[150] < 2 * _median(ctx.losses[130:150])
    )
    ctx.check("recovers", _mean(ctx.losses[-20:]) < 1.3 * _mean(ctx.losses[130:150]))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="shamisen_bachi_strike_loudness_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Shamisen bachi-strike loudness GELU regressor on Adam with a smoothness penalty whose "
    "weight schedule has 1e4 for 1e-4 at step 100 (one step). That gradient is over 1000x the "
    "usual; Adam's second moment fills and the per-weight updates stall for the rest of the run "
    "while the gradients are not smaller.",
)
def h408_shamisen_penalty_weight_typo(ctx) -> None:
    gen = seeded(4088)
    model = _MLP(10, 48, 1, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _readings(gen, 64, 10, seed=88)
    moves, prev = [], [_flat(model)]

    def backprop(step, loss):
        w = 1e4 if step == 100 else 1e-4
        return loss + w * sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).abs().median()))
        prev[0] = now

    _loop(ctx, model, opt, data, 220, F.mse_loss, backprop=backprop, after=after)
    g = ctx.grad_norms
    ctx.check("gradient over 1000x at step 100", g[100] > 1000 * _median(g[80:100]))
    ctx.check("updates stall after", _median(moves[120:220]) < 0.1 * _median(moves[60:100]))
    ctx.check("gradients not smaller", _median(g[120:220]) > 0.5 * _median(g[60:100]))
    ctx.check("finite", _finite(ctx.losses))
    print("moves", _median(moves[60:100]), _median(moves[120:220]))


@scenario(
    family="origami_crease_fold_count_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Origami crease-pattern fold-count classifier (ReLU MLP, 5 classes) on Adagrad with two "
    "param groups: the trunk group's lr is typed 1e-9 for 1e-2. fc1 receives gradients but "
    "barely moves; only the head and fc2 (in the head group) learn.",
)
def h408_origami_trunk_group_lr_typo(ctx) -> None:
    gen = seeded(4089)
    model = _MLP(12, 48, 5, act=nn.ReLU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 1e-2},
        ]
    )
    data = _grades(gen, 64, 12, 5, seed=89, spread=1.5)
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    gn = []
    _loop(
        ctx,
        model,
        opt,
        data,
        150,
        F.cross_entropy,
        classifier=True,
        inspect=lambda s: gn.append(float(model.fc1.weight.grad.norm())),
    )
    ctx.check("fc1 moves under 1e-5 of its norm", _rel_change(w1, model.fc1.weight) < 1e-5)
    ctx.check("fc1 receives gradients", _median(gn) > 1e-3)
    ctx.check("head moves over 5%", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("finite", _finite(ctx.losses))


class _Tempered(nn.Module):
    def __init__(self, d_in, classes):
        super().__init__()
        self.body = _MLP(d_in, 48, classes, act=nn.GELU)
        self.temperature = 1.0

    def forward(self, x):
        return self.body(x) / self.temperature


@scenario(
    family="ikebana_stem_angle_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("body.head",),
    diverges=None,
    heldout=True,
    note="Ikebana stem-angle style classifier (GELU MLP, 7 styles) whose softmax temperature is "
    "annealed as max(0.95 ** step, floor) with the floor typed 0.005 for 0.5. The logits are "
    "divided by 0.005; the target probability rounds to exactly 1.0 on most rows and their "
    "gradient vanishes.",
)
def h408_ikebana_temperature_floor_typo(ctx) -> None:
    gen = seeded(4090)
    model = _Tempered(12, 7)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    data = _grades(gen, 64, 12, 7, seed=90)
    fracs, intended = [], []
    state = {}

    def before(step):
        model.temperature = max(0.95**step, 0.005)

    def alter(step, x, y):
        state["x"], state["y"] = x, y
        return x, y

    def after(step):
        with torch.no_grad():
            raw = model.body(state["x"])
            fracs.append(collapsed_fraction(raw / model.temperature, state["y"]))
            intended.append(collapsed_fraction(raw / max(0.95**step, 0.5), state["y"]))

    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        alter=alter,
        after=after,
    )
    ctx.check("over half the rows at exactly 1.0 over the last 30 steps", _mean(fracs[-30:]) > 0.5)
    ctx.check("under 5% at the intended floor", _mean(intended[-30:]) < 0.05)
    ctx.check("under 5% at the start", _mean(fracs[:5]) < 0.05)
    print("collapsed", _mean(fracs[-30:]), "intended", _mean(intended[-30:]))


# -- controls --------------------------------------------------------------------------------------


class _NCF(nn.Module):
    """Neural collaborative filtering: user and item embeddings concatenated through an MLP."""

    def __init__(self, users, items, dim=16):
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.item = nn.Embedding(items, dim)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        self.fc1 = nn.Linear(2 * dim, 64)
        self.act1 = nn.ReLU()
        self.drop1 = nn.Dropout(0.2)
        self.fc2 = nn.Linear(64, 32)
        self.act2 = nn.ReLU()
        self.drop2 = nn.Dropout(0.2)
        self.head = nn.Linear(32, 1)

    def forward(self, pairs):
        h = torch.cat([self.user(pairs[:, 0]), self.item(pairs[:, 1])], -1)
        h = self.drop1(self.act1(self.fc1(h)))
        h = self.drop2(self.act2(self.fc2(h)))
        return self.head(h).squeeze(-1)


def _purchases(gen, batch, users, items, seed, negatives=3):
    """Implicit feedback from hidden buyer/tree tastes; each positive with sampled negatives."""
    g = torch.Generator().manual_seed(seed)
    u_f, i_f = torch.randn(users, 6, generator=g), torch.randn(items, 6, generator=g)
    score = u_f @ i_f.T
    bought = score > score.quantile(0.8, dim=1, keepdim=True)
    pos = bought.nonzero()
    while True:
        pick = pos[torch.randint(0, len(pos), (batch,), generator=gen)]
        neg_u = pick[:, 0].repeat(negatives)
        neg_i = torch.randint(0, items, (batch * negatives,), generator=gen)
        pairs = torch.cat([pick, torch.stack([neg_u, neg_i], 1)])
        labels = bought[pairs[:, 0], pairs[:, 1]].float()
        yield pairs, labels


@scenario(
    family="bonsai_nursery_buyer_tree_ncf_recommender",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Bonsai-nursery buyer/tree recommender: neural collaborative filtering (user and item "
    "embeddings concatenated through a ReLU MLP with dropout 0.2), BCE on implicit purchases "
    "with three sampled negatives per positive, Adam at 1e-3 with weight decay 1e-5 on the "
    "embedding group only. Control.",
)
def h408_bonsai_ncf_control(ctx) -> None:
    gen = seeded(4091)
    model = _NCF(30, 40)
    emb = list(model.user.parameters()) + list(model.item.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith(("user", "item"))]
    opt = torch.optim.Adam(
        [{"params": emb, "weight_decay": 1e-5}, {"params": rest, "weight_decay": 0.0}], lr=1e-3
    )
    data = _purchases(gen, 64, 30, 40, seed=91)
    _loop(ctx, model, opt, data, 300, F.binary_cross_entropy_with_logits)
    ctx.check("loss fell", _fell(ctx.losses, k=20, ratio=0.85))
    ctx.check("finite", _finite(ctx.losses))


class _RhythmNet(nn.Module):
    def __init__(self, channels, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act1(self.conv1(x))
        h = self.act2(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


@scenario(
    family="taiko_ensemble_rhythm_relu_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Taiko ensemble rhythm-pattern classifier (ReLU Conv1d, 6 patterns) on SGD with momentum "
    "and weight decay under OneCycleLR, label smoothing 0.1, clipping at 1.0. Control.",
)
def h408_taiko_rhythm_control(ctx) -> None:
    gen = seeded(4092)
    model = _RhythmNet(2, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=steps)
    data = _rhythms(gen, 64, 6, seed=92)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, data, steps, loss_fn, classifier=True, clip=1.0, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses, k=20, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="letterpress_ink_coverage_silu_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Letterpress ink-coverage SiLU regressor: fp16 autocast with a GradScaler, AdamW with a "
    "no-decay bias group, accumulation over 2, ReduceLROnPlateau on a held-out batch, clipping, "
    "Huber loss. Control.",
)
def h408_letterpress_ink_control(ctx) -> None:
    gen = seeded(4093)
    model = _MLP(10, 48, 1, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    data = _readings(gen, 32, 10, seed=93)
    held = next(_readings(torch.Generator().manual_seed(7), 256, 10, seed=93))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, k=20, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))
