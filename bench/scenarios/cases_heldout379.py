"""Held-out set 379 (``h379_``): hand-written models of sports, trades, instruments and natural
phenomena: a pesapallo fielder-zone GELU classifier whose softmax temperature is read as a
fraction from a percent field (softmax collapse), an espresso tamp-pressure SiLU regressor resumed
from a checkpoint without its Adam state (one loss spike), a shinty caman swing-speed Huber
regressor whose loss weight is reloaded in percent for one step (one gradient burst), a pewter
mould-fill ReLU regressor with RMSprop's lr typed 3e-2 for 3e-4 (dead ReLUs), a tandoor wall
BCE net fed one batch whose missing readings are the sentinel -9999 (one corrupted batch), a
beehive entrance traffic-share net whose count normaliser divides a night's zero counts by zero
(0/0, NaN), a bobsleigh runner-wax mixture-of-experts regressor whose router lr multiplier is
computed as 1 // 10 (frozen router), a kendama catch Elman RNN whose recurrent init gain is typed
2.5 for 0.25 (gradients grow through time), a sastrugi drift-depth regressor whose hand-written
decoupled weight decay has its sign flipped (slow climb), a korfball shot-clock classifier with a
hand-written label smoothing typed -0.2 (head logits diverge), and three controls (a hornussen
bat-flex top-2 mixture-of-experts with a load-balancing loss at 0.01 and a router z-loss, a kora
bridge-buzz Conv1d classifier under fp16 autocast with a GradScaler and OneCycleLR, a gamelan saron
damping tanh regressor with SGD Nesterov, accumulation, clipping and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs):
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _moved(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _train(
    ctx,
    model,
    opt,
    data,
    steps,
    loss_fn,
    *,
    classifier=False,
    alter=None,
    pre=None,
    post=None,
    weigh=None,
    seen=None,
    grads=None,
    clip=None,
    sched=None,
    val=None,
    scaler=None,
    amp=False,
    micro=1,
):
    """Train for ``steps`` optimizer steps. ``pre(step)`` runs first; ``alter(step, x, y)``
    changes a batch; ``seen(step, out, x, y)`` sees the forward pass; ``weigh(step, loss)`` gives
    the loss backpropagated (before division by ``micro``); ``grads(step)`` sees the unscaled
    gradients before clipping; ``post(step)`` runs after the optimizer step; ``val()`` feeds a
    ReduceLROnPlateau ``sched``. Stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if pre is not None:
            pre(step)
        model.train()
        shown = 0.0
        for _ in range(micro):
            x, y = next(data)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if seen is not None:
                seen(step, out, x, y)
            total = (weigh(step, loss) if weigh is not None else loss) / micro
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / micro
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if grads is not None:
            grads(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            sched.step(val()) if val is not None else sched.step()
        ctx.step(torch.tensor(shown))
        if post is not None:
            post(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


# -- generated data ---------------------------------------------------------------------------------


def _gauges(gen, batch, d_in, seed, noise=0.05):
    """Standardised gauge readings and a smooth target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    b = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    c = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.sin(1.5 * x @ a) + 0.6 * torch.tanh(2 * x @ b) * (x @ c)
        yield x, y + noise * torch.randn(batch, generator=gen)


def _clusters(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings around one centre per class."""
    g = torch.Generator().manual_seed(seed)
    centres = 1.3 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _rule(gen, batch, d_in, seed, flip=0.0):
    """Readings labelled by a hidden quadratic rule, with optional label noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = ((x @ w) + 0.3 * (x[:, 0] ** 2 - 1) > 0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _signals(gen, batch, classes, seed, length=32, channels=2):
    """Multichannel vibration traces, one ringing frequency per class."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.2 + 0.9 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase) * torch.exp(-t / 30.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


class Net(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)
        self.temperature = temperature

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- softmax collapse -------------------------------------------------------------------------------


@scenario(
    "pesapallo_fielder_zone_percent_temperature_gelu_classifier",
    "SGD",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="the config gives the softmax temperature in percent (temperature_pct: 1, meaning 1.0 "
    "after the conversion someone forgot) and the model divides the logits by 0.01: the logits "
    "are 100x, the softmax saturates and most rows' target probability rounds to exactly 1.0 in "
    "float32; SGD with Nesterov momentum",
)
def h379_pesapallo_percent_temperature(ctx: Context) -> None:
    gen = seeded(37901)
    temperature_pct = 1.0
    model = Net(10, 64, out=7, act=nn.GELU, temperature=temperature_pct / 100.0)  # meant 1.0
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    late = []

    def seen(step, out, x, y):
        if step >= 120:
            p = torch.softmax(out.detach(), -1).gather(1, y[:, None])
            late.append(float((p == 1.0).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _clusters(gen, 64, 10, 7, 379011, spread=0.8),
        180,
        F.cross_entropy,
        classifier=True,
        seen=seen,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "over half the rows' target probability exactly 1.0 after step 120", _mean(late) > 0.5
    )


# -- one loss spike ---------------------------------------------------------------------------------


@scenario(
    "espresso_tamp_pressure_resume_silu_regressor",
    "Adam",
    "loss_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="the job is pre-empted and resumed at step 150; the resume code restores the weights but "
    "builds a fresh Adam (the optimizer state dict is not saved), so the first updates after the "
    "resume are lr x sign(g) on every weight; the loss jumps for a few steps and the run recovers",
)
def h379_espresso_resume_without_adam_state(ctx: Context) -> None:
    gen = seeded(37902)
    model = Net(12, 128, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    onset = 150

    def pre(step):
        if step == onset:
            fresh = torch.optim.Adam(model.parameters(), lr=1e-2)
            opt.state.clear()
            opt.load_state_dict(fresh.state_dict())

    _train(ctx, model, opt, _gauges(gen, 64, 12, 379021, noise=0.02), 260, F.mse_loss, pre=pre)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite losses", _finite(ls))
    peak = max(ls[onset : onset + 10])
    ctx.check(
        "the loss within 10 steps of the resume over 5x the median of the 30 before",
        peak > 5 * _median(ls[onset - 30 : onset]),
    )
    ctx.check(
        "the gradient at the resume step itself ordinary (under 3x the median before)",
        gn[onset] < 3 * _median(gn[onset - 30 : onset]),
    )
    ctx.check(
        "recovered: the last 30 steps under 2x the 30 before the resume",
        _mean(ls[-30:]) < 2 * _mean(ls[onset - 30 : onset]),
    )


# -- one gradient burst ----------------------------------------------------------------------------


@scenario(
    "shinty_caman_swing_speed_accum_huber_regressor",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=140,
    note="the loss weight is reloaded from the config at step 140 (a hot reload after an "
    "evaluation) where it is written in percent, 100 for 1.0; that one step's gradient is 100x "
    "on a clean batch; accumulation over 2, SGD with momentum 0.9, clipping at 1",
)
def h379_shinty_percent_loss_weight(ctx: Context) -> None:
    gen = seeded(37903)
    model = Net(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    onset = 140

    def weigh(step, loss):
        return loss * (100.0 if step == onset else 1.0)

    _train(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 10, 379031),
        230,
        F.huber_loss,
        weigh=weigh,
        micro=2,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    base = _median(gn[onset - 40 : onset])
    ctx.check("finite losses", _finite(ls))
    ctx.check("the step-140 gradient over 30x the median of the 40 before", gn[onset] > 30 * base)
    ctx.check(
        "no other step after 60 over 5x that median",
        all(gn[i] < 5 * base for i in range(60, len(gn)) if i != onset),
    )
    ctx.check(
        "the step-140 batch's own loss ordinary (under 3x the median before)",
        ls[onset] < 3 * _median(ls[onset - 40 : onset]),
    )


# -- dead ReLUs -------------------------------------------------------------------------------------


@scenario(
    "pewter_mould_fill_time_rmsprop_relu_regressor",
    "RMSprop",
    "loss_of_plasticity",
    ("act2", "fc2"),
    None,
    heldout=True,
    note="RMSprop's lr typed 3e-2 for 3e-4; its first steps (the square average starts at 0) "
    "throw fc2's pre-activations negative on every input, act2's ReLUs die and stop learning, "
    "and the fill-time loss stays far above what the net fits",
)
def h379_pewter_rmsprop_lr_typo(ctx: Context) -> None:
    gen = seeded(37904)
    model = Net(8, 64)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-2)
    dead, var = [], []

    def seen(step, out, x, y):
        with torch.no_grad():
            h = model.act2(model.fc2(model.act1(model.fc1(x))))
            dead.append(float((h <= 0).all(0).float().mean()))
            var.append(float(y.var()))

    _train(ctx, model, opt, _gauges(gen, 128, 8, 379041), 200, F.mse_loss, seen=seen)
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check("under 20% of act2's units dead at the start", dead[0] < 0.2)
    ctx.check("over 50% of act2's units dead on each of the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check(
        "not fitted: the last 50 steps' loss over 0.3x the targets' variance",
        _mean(ctx.losses[-50:]) > 0.3 * _mean(var[-50:]),
    )


# -- a corrupted batch ------------------------------------------------------------------------------


@scenario(
    "tandoor_wall_heat_ready_sentinel_relu_bce_net",
    "Adagrad",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=110,
    note="one logger's export writes missing wall-thermocouple readings as the sentinel -9999 "
    "instead of NaN-and-impute; the step-110 batch comes from it; loss and gradient jump for "
    "that batch, the gradient is clipped at 1 and the run recovers",
)
def h379_tandoor_sentinel_batch(ctx: Context) -> None:
    gen = seeded(37905)
    model = Net(8, 48)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    onset = 110

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[::3, 2] = -9999.0
        return x, y

    _train(
        ctx,
        model,
        opt,
        _rule(gen, 64, 8, 379051, flip=0.03),
        200,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite losses", _finite(ls))
    ctx.check(
        "the step-110 loss over 20x the median before", ls[onset] > 20 * _median(ls[70:onset])
    )
    ctx.check(
        "the step-110 gradient over 20x the median before", gn[onset] > 20 * _median(gn[70:onset])
    )
    ctx.check(
        "recovered: the last 30 steps under 1.5x the 30 before the batch",
        _mean(ls[-30:]) < 1.5 * _mean(ls[onset - 30 : onset]),
    )


# -- an operation's NaN ------------------------------------------------------------------------------


class Share(nn.Module):
    """Counts per entrance -> share of the hour's traffic (no guard for an empty hour)."""

    def forward(self, counts):
        return counts / counts.sum(-1, keepdim=True)


class TrafficNet(nn.Module):
    def __init__(self, entrances, hidden=48):
        super().__init__()
        self.share = Share()
        self.fc1 = nn.Linear(entrances, hidden)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, counts):
        return self.head(self.act1(self.fc1(self.share(counts)))).squeeze(-1)


def _hive_counts(gen, batch, entrances, seed, night_at):
    """Bee counts per entrance for an hour; target: the forager return rate (a smooth function of
    the shares). The stream's ``night_at``-th batch holds a night hour with no traffic."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(entrances, generator=g)
    i = 0
    while True:
        counts = torch.poisson(20 * torch.rand(batch, entrances, generator=gen) + 1, generator=gen)
        if i == night_at:
            counts[5] = 0.0
        share = counts / counts.sum(-1, keepdim=True).clamp_min(1)
        yield counts, torch.tanh(3 * (share @ w))
        i += 1


@scenario(
    "beehive_entrance_hourly_share_normaliser_net",
    "NAdam",
    "nonfinite",
    "share",
    90,
    heldout=True,
    onset=90,
    note="the entrance counts are turned into shares of the hour's traffic by counts / "
    "counts.sum() with no guard; the step-90 batch holds a night hour with zero bees at every "
    "entrance, 0/0 is NaN in the share module and the loss is NaN",
)
def h379_beehive_zero_count_share(ctx: Context) -> None:
    gen = seeded(37906)
    model = TrafficNet(6)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    empty = []

    def seen(step, out, x, y):
        empty.append(bool((x.sum(-1) == 0).any()))

    ran = _train(ctx, model, opt, _hive_counts(gen, 64, 6, 379061, 90), 200, F.mse_loss, seen=seen)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at step 90", bad == 90)
    ctx.check("the step-90 batch has an hour with zero counts", len(empty) > 90 and empty[90])
    ctx.check("no earlier batch had one", not any(empty[:90]))
    ctx.check("the run stopped there", ran == 91)


# -- mixture of experts -----------------------------------------------------------------------------


class Expert(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.out = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.out(self.act(self.fc(x)))


class MoE(nn.Module):
    """Top-k softmax router over ``experts`` small MLPs. ``aux`` holds the Switch-style
    load-balancing loss (experts x sum_i fraction_i x mean router prob_i) and ``z`` the router
    z-loss (mean squared logsumexp of the router logits) from the last forward pass."""

    def __init__(self, dim, experts=4, hidden=32, k=2):
        super().__init__()
        self.router = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(experts))
        self.k = k
        self.aux = torch.zeros(())
        self.z = torch.zeros(())

    def forward(self, x):
        logits = self.router(x)
        probs = torch.softmax(logits, -1)
        top_p, top_i = probs.topk(self.k, -1)
        top_p = top_p / top_p.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        n = len(self.experts)
        for e, expert in enumerate(self.experts):
            mask = top_i == e
            rows = mask.any(-1)
            if rows.any():
                weight = (top_p * mask).sum(-1)[rows, None]
                out[rows] = out[rows] + weight * expert(x[rows])
        chosen = F.one_hot(top_i, n).float().sum(1) / self.k
        self.aux = n * (chosen.mean(0) * probs.mean(0)).sum()
        self.z = torch.logsumexp(logits, -1).pow(2).mean()
        return out


class MoERegressor(nn.Module):
    def __init__(self, d_in, dim=32, experts=4, k=2):
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.norm = nn.LayerNorm(dim)
        self.moe = MoE(dim, experts, 2 * dim, k)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.moe(self.norm(h))
        return self.head(h).squeeze(-1)


@scenario(
    "bobsleigh_runner_wax_glide_moe_router_regressor",
    "AdamW",
    "update_ratio_out_of_range",
    "moe.router",
    None,
    heldout=True,
    note="a top-2 mixture-of-experts regressor with a load-balancing loss at 0.01; the router's "
    "param group takes lr x router_lr_mult where the multiplier is computed as 1 // 10 (integer "
    "division, 0) for 1 / 10: the router never moves while the experts learn",
)
def h379_bobsleigh_router_int_division(ctx: Context) -> None:
    gen = seeded(37907)
    model = MoERegressor(10)
    router_lr_mult = 1 // 10  # the bug: 1 / 10
    router = list(model.moe.router.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("moe.router")]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 2e-3}, {"params": router, "lr": 2e-3 * router_lr_mult}],
        weight_decay=0.01,
    )
    wr = model.moe.router.weight.detach().clone()
    we = model.moe.experts[0].fc.weight.detach().clone()

    def weigh(step, loss):
        return loss + 0.01 * model.moe.aux

    _train(ctx, model, opt, _gauges(gen, 64, 10, 379071), 180, F.mse_loss, weigh=weigh, clip=1.0)
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check("the router moved under 1e-6 of its norm", _moved(wr, model.moe.router.weight) < 1e-6)
    ctx.check(
        "an expert moved over 5% of its norm", _moved(we, model.moe.experts[0].fc.weight) > 0.05
    )


# -- gradients growing through time ----------------------------------------------------------------


class ElmanCatch(nn.Module):
    """Hand-written Elman RNN over a kendama IMU trace: h = tanh(inp(x_t) + rec(h)), head on the
    last state."""

    def __init__(self, channels, hidden, classes, gain):
        super().__init__()
        self.inp = nn.Linear(channels, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, classes)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states = []

    def forward(self, x):
        b, c, t = x.shape
        h = torch.zeros(b, self.rec.weight.shape[0])
        self.states = []
        drive = self.inp(x.transpose(1, 2))
        for i in range(t):
            h = torch.tanh(drive[:, i] + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


@scenario(
    "kendama_catch_outcome_gain_elman_rnn",
    "SGD",
    "exploding_gradients",
    "rec",
    None,
    heldout=True,
    note="the recurrent weight's orthogonal init gain is typed 2.5 for 0.25; the Elman cell is "
    "chaotic and the gradient grows backwards through the 32 time steps (clipped at 1, plain "
    "SGD, so nothing overflows)",
)
def h379_kendama_recurrent_gain_typo(ctx: Context) -> None:
    gen = seeded(37908)
    model = ElmanCatch(2, 32, 3, gain=2.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    ratios = []

    def grads(step):
        first, last = model.states[0].grad, model.states[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _train(
        ctx,
        model,
        opt,
        _signals(gen, 32, 3, 379081),
        120,
        F.cross_entropy,
        classifier=True,
        grads=grads,
        clip=1.0,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "the gradient at the first state over 20x that at the last at the start", ratios[0] > 20
    )
    ctx.check("and over 10x on the median of the last 50 steps", _median(ratios[-50:]) > 10)


# -- slow climb ------------------------------------------------------------------------------------


@scenario(
    "sastrugi_drift_depth_decay_sign_regressor",
    "Adamax",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="a hand-written decoupled weight decay applied after each Adamax step multiplies the "
    "weights by (1 + lr x wd) instead of (1 - lr x wd); the weights grow a little every step "
    "and the drift-depth loss climbs slowly, with no spike",
)
def h379_sastrugi_decay_sign(ctx: Context) -> None:
    gen = seeded(37909)
    model = Net(8, 64, act=nn.SiLU)
    lr, wd = 1e-2, 0.6
    opt = torch.optim.Adamax(model.parameters(), lr=lr)

    def post(step):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("weight"):
                    p.mul_(1 + lr * wd)  # the bug: 1 - lr * wd

    _train(ctx, model, opt, _gauges(gen, 64, 8, 379091), 300, F.mse_loss, post=post)
    ls = ctx.losses
    windows = [_mean(ls[i : i + 30]) for i in range(0, len(ls) - 29, 10)]
    ctx.check("finite losses", _finite(ls))
    ctx.check(
        "the last 30 steps' loss over 3x the lowest 30-step mean",
        _mean(ls[-30:]) > 3 * min(windows),
    )
    ctx.check(
        "gradual: no 30-step window over 2x the one before it after step 60",
        all(_mean(ls[i : i + 30]) < 2 * _mean(ls[i - 30 : i]) for i in range(60, len(ls) - 29, 30)),
    )


# -- output logits ---------------------------------------------------------------------------------


def _smoothed_ce(eps):
    def loss(logits, y):
        k = logits.shape[-1]
        target = (1 - eps) * F.one_hot(y, k).float() + eps / k
        return -(target * F.log_softmax(logits, -1)).sum(-1).mean()

    return loss


@scenario(
    "korfball_shot_clock_negative_smoothing_classifier",
    "RAdam",
    "output_logit_divergence",
    "head",
    None,
    heldout=True,
    note="a hand-written label-smoothed cross-entropy with the smoothing typed -0.2 for 0.2: the "
    "wrong classes get negative target mass, the loss has no lower bound and the head's logits "
    "grow without limit (the loss keeps falling below zero)",
)
def h379_korfball_negative_smoothing(ctx: Context) -> None:
    gen = seeded(37910)
    model = Net(12, 64, out=4, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    peaks = []

    def seen(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))

    _train(
        ctx,
        model,
        opt,
        _clusters(gen, 64, 12, 4, 379101),
        240,
        _smoothed_ce(-0.2),
        classifier=True,
        seen=seen,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check("the head's largest logit over 20x its value at the start", peaks[-1] > 20 * peaks[0])
    ctx.check(
        "still growing: the last logit over 1.3x that 60 steps before", peaks[-1] > 1.3 * peaks[-61]
    )
    ctx.check("the loss went below zero", min(ctx.losses) < 0)


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    "hornussen_bat_flex_top2_moe_zloss_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a top-2 mixture-of-experts regressor of bat flex with a load-balancing loss "
    "at 0.01 and a router z-loss at 1e-3, AdamW with linear warm-up then cosine decay, clipping "
    "at 1",
)
def h379_hornussen_moe_control(ctx: Context) -> None:
    gen = seeded(37911)
    model = MoERegressor(10, experts=4, k=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 180, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    usage = []

    def weigh(step, loss):
        return loss + 0.01 * model.moe.aux + 1e-3 * model.moe.z

    def seen(step, out, x, y):
        usage.append(float(model.moe.aux.detach()))

    _train(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 10, 379111),
        steps,
        F.mse_loss,
        weigh=weigh,
        seen=seen,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained: the last 10 steps' loss under 0.8x the first 10", _fell(ctx.losses))
    ctx.check("balanced: the load-balancing loss under 1.5 at the end", usage[-1] < 1.5)


class BuzzConv(nn.Module):
    def __init__(self, channels, classes, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(-1))


@scenario(
    "kora_bridge_buzz_fp16_conv1d_classifier",
    "Adam",
    "healthy",
    heldout=True,
    note="control: a ReLU Conv1d classifier of kora bridge buzz under fp16 autocast with a "
    "GradScaler, Adam under OneCycleLR, label smoothing 0.1, clipping at 1",
)
def h379_kora_fp16_control(ctx: Context) -> None:
    gen = seeded(37912)
    model = BuzzConv(2, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _signals(gen, 32, 4, 379121),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("trained: the last 10 steps' loss under 0.8x the first 10", _fell(ctx.losses))


@scenario(
    "gamelan_saron_damping_plateau_tanh_regressor",
    "SGD",
    "healthy",
    heldout=True,
    note="control: a tanh regressor of saron bar damping time, SGD with Nesterov momentum, "
    "accumulation over 2, clipping at 1, ReduceLROnPlateau on a held-out batch, noisy targets",
)
def h379_gamelan_plateau_control(ctx: Context) -> None:
    gen = seeded(37913)
    model = Net(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    data = _gauges(gen, 64, 10, 379131, noise=0.2)
    vx, vy = next(data)

    def val():
        with torch.no_grad():
            return float(F.mse_loss(model(vx), vy))

    _train(ctx, model, opt, data, 200, F.mse_loss, clip=1.0, sched=sched, val=val, micro=2)
    ctx.check("trained: the last 10 steps' loss under 0.8x the first 10", _fell(ctx.losses))
