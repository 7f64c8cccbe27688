"""Held-out set 461 (``h461_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a carillon-bell tierce-partial tanh regressor whose StepLR gamma is typed 10 for 0.1
(full-batch SGD; the lr jumps past 2 / sharpness at step 60), a cooperage stave-bend GELU
regressor whose hand-written decoupled weight decay is added instead of subtracted (a slow
climb, SGD momentum), a sugarbush sap-run sugar regressor taking log of a tap-flow reading with
no clamp (a dry tap at step 90, NaN, Adam), a sliotar-spin ReLU classifier whose NAdam lr is
typed 1e-1 for 1e-3 (its ReLUs die), a kelp-frond sway ReLU Elman RNN whose recurrent identity
init is scaled 1.25 (gradients grow back through time, RMSprop), a lacrosse-pocket two-group
regressor whose head lr is typed 1e-9 for 1e-2 (Adagrad, the head frozen), an aurora-substorm
echo-state network (a fixed random reservoir, a trained input layer and readout) fed one shard
in raw nanotesla (AdamW), a curling-sweep Huber regressor whose loss is rebuilt with
reduction='sum' for one step after a resume (SGD Nesterov), a chanter-reed classifier with a
temperature of 0.01 left in (Adamax, softmax saturates) and a hailstone wet-growth BCE net whose
labels are read as 0/2 (ASGD, the head's logits grow without bound).

Controls: a sled-dog team-pace GELU regressor under SGD momentum with annealed Gaussian gradient
noise added to every gradient; a glass-furnace gather conv1d classifier under AdamW and
OneCycleLR with label smoothing and clipping; an fp16 tied-weight loom-tension autoencoder
(GradScaler, RAdam, accumulation over 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    grad_norm,
    scenario,
    seeded,
)


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.8):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    alter=None,
    backprop=None,
    after=None,
    on_grad=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """One training loop; ``ctx=None`` makes it a reference run outside the monitor."""
    if ctx is not None:
        ctx.attach(model, opt, scaler=scaler)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and ctx is not None:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss, out, y) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        norms.append(grad_norm(model))
        if ctx is not None:
            ctx.grad_norms.append(norms[-1])
        if on_grad is not None:
            on_grad(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if ctx is not None:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if ctx is not None:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _gauges(gen, batch, d_in, seed, noise=0.05):
    """Standardised gauge readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    b = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    c = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.sin(1.5 * x @ a) + 0.5 * torch.tanh(2 * x @ b) * (x @ c)
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, n, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(n, d_in, generator=g)
    while True:
        y = torch.randint(0, n, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)
        self.temperature = temperature

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x)) / self.temperature
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss at (x, y), by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


# -- 1. sharpness: a StepLR gamma typed 10 for 0.1 -------------------------------------------------

BELL_STEP = 60
BELL_LR = 0.05


@scenario(
    family="carillon_bell_tierce_partial_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=BELL_STEP,
    note="Carillon bell-founder's tierce-partial regressor (tanh MLP on wall-thickness profile "
    "readings, MSE, full-batch plain SGD under StepLR every 60 steps). The decay factor is typed "
    "gamma=10 for gamma=0.1: at step 60 the lr jumps tenfold instead of dropping and lr * "
    "sharpness crosses 2 (the loss oscillates); at step 120 it jumps tenfold again and the loss "
    "blows up (NaN at step 129).",
)
def h461_carillon_steplr_gamma_typo(ctx) -> None:
    gen = seeded(4611)
    model = _Net(8, 48, 1, act=nn.Tanh)
    x, y = next(_gauges(gen, 256, 8, seed=4611))
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=BELL_LR)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=BELL_STEP, gamma=10.0)
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 10 == 0 or step == BELL_STEP:
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _train(ctx, model, opt, fixed, 200, F.mse_loss, before=before, sched=sched)
    low = min(v for v in losses[:BELL_STEP])
    blow = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check(
        "lr * sharpness under 2 before the jump",
        all(lrs[s] * sharp[s] < 2.0 for s in sharp if s < BELL_STEP),
    )
    ctx.check("lr * sharpness over 2 at the jump", lrs[BELL_STEP] * sharp[BELL_STEP] > 2.0)
    ctx.check(
        "the loss blows up over 100x its lowest after the jump",
        blow is not None and blow > BELL_STEP,
    )
    ctx.check("trained before it", low < 0.6 * losses[0])


# -- 2. slow divergence: decoupled weight decay with its sign flipped -----------------------------

STAVE_WD = 0.8
STAVE_LR = 0.01


@scenario(
    family="cooperage_oak_stave_bend_force_gelu_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Cooper's oak-stave bending-force regressor (GELU MLP on stave thickness, moisture and "
    "fire-time readings, MSE, SGD momentum 0.9). The hand-written decoupled weight decay is "
    "written p.add_(p, alpha=lr * wd) instead of alpha=-lr * wd: every step the weights are "
    "inflated a little, the loss falls at first and then climbs slowly and steadily with no "
    "spike and no other mechanism.",
)
def h461_cooperage_decay_sign(ctx) -> None:
    gen = seeded(4612)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=STAVE_LR, momentum=0.9)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=STAVE_LR * STAVE_WD)
            norms.append(math.sqrt(sum(float(p.norm() ** 2) for p in model.parameters())))

    losses, _ = _train(
        ctx, model, opt, _gauges(gen, 64, 10, seed=4612), 300, F.mse_loss, after=after
    )
    low_at = min(range(len(losses)), key=lambda i: _mean(losses[max(0, i - 5) : i + 5]))
    ctx.check("loss finite", _finite(losses))
    ctx.check("lowest early (before step 150)", low_at < 150)
    ctx.check(
        "the last 20 steps over 3x the lowest 10-step mean",
        _mean(losses[-20:]) > 3 * _mean(losses[max(0, low_at - 5) : low_at + 5]),
    )
    ctx.check("weights grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check(
        "no single step over 20x the one before",
        all(b < 20 * a for a, b in zip(losses, losses[1:], strict=False)),
    )


# -- 3. nonfinite: log of a dry tap's flow ---------------------------------------------------------

SAP_STEP = 90


class _LogFlow(nn.Module):
    """Takes log of the tap-flow column (litres per hour), as the feature sheet prescribes."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _SapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logflow = _LogFlow()
        self.fc1 = nn.Linear(6, 32)
        self.act = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.logflow(x)))).squeeze(-1)


@scenario(
    family="sugarbush_sap_run_sugar_content_silu_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("logflow",),
    diverges=SAP_STEP,
    heldout=True,
    onset=SAP_STEP,
    note="Sugarbush sap-run sugar-content regressor (SiLU MLP on log tap flow, temperatures and "
    "tree girth, MSE, Adam). The log of the flow column has no clamp: at step 90 a batch holds "
    "a dry tap reporting 0.0 l/h, log(0) = -inf goes through fc1 and the loss is NaN at step 90.",
)
def h461_sugarbush_log_dry_tap(ctx) -> None:
    gen = seeded(4613)
    base = _gauges(gen, 64, 6, seed=4613)

    def batches():
        for x, y in base:
            x = x.clone()
            x[:, 0] = torch.exp(0.5 * x[:, 0])  # a positive flow
            yield x, y

    def alter(step, x, y):
        if step == SAP_STEP:
            x = x.clone()
            x[7, 0] = 0.0
        return x, y

    model = _SapNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, _ = _train(ctx, model, opt, batches(), 200, F.mse_loss, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss NaN/Inf first at step 90", first_bad == SAP_STEP)
    ctx.check(
        "finite and falling before it", _finite(losses[:SAP_STEP]) and _fell(losses[:SAP_STEP])
    )
    probe = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])
    ctx.check("the log of a 0.0 flow is -inf", bool(torch.isinf(model.logflow(probe)).any()))


# -- 4. loss of plasticity: an lr typed 1e-1 for 1e-3 -----------------------------------------------

SLIOTAR_LR = 1e-1


@scenario(
    family="sliotar_spin_rate_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Hurling-ball (sliotar) spin-rate band classifier (ReLU MLP on eight stitched-seam "
    "high-speed-camera features, cross-entropy, NAdam). The lr is typed 1e-1 for 1e-3: the first "
    "large updates push fc2's pre-activations negative on every input, over half of its ReLUs "
    "die and never come back, while the same model at 1e-3 keeps nearly all of them.",
)
def h461_sliotar_nadam_lr_typo(ctx) -> None:
    def run(lr, c):
        gen = seeded(4614)
        model = _Net(8, 64, 6)
        opt = torch.optim.NAdam(model.parameters(), lr=lr)
        data = _classes(gen, 64, 8, 6, seed=4614)
        probe_x, _ = next(_classes(torch.Generator().manual_seed(1), 512, 8, 6, seed=4614))
        dead = []
        losses, _ = _train(
            c,
            model,
            opt,
            data,
            200,
            F.cross_entropy,
            classifier=True,
            after=lambda s: dead.append(
                dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe_x)))).detach())
            ),
        )
        return losses, dead

    _, ref_dead = run(SLIOTAR_LR / 100, None)
    losses, dead = run(SLIOTAR_LR, ctx)
    ctx.check("over half of fc2's units dead at the end", dead[-1] > 0.5)
    ctx.check("none revive over the last 100 steps", min(dead[-100:]) >= dead[-100] - 1e-9)
    ctx.check("under 10% dead at 1e-3", ref_dead[-1] < 0.1)
    ctx.check("loss finite", _finite(losses))


# -- 5. exploding gradients: a recurrent identity init scaled 1.25 ---------------------------------

KELP_GAIN = 1.25
KELP_T = 24


class _Elman(nn.Module):
    """A ReLU Elman RNN written out: h_t = relu(inp(u_t) + rec(h_{t-1})); keeps its states."""

    def __init__(self, d_in=3, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.inp.weight.mul_(0.5)
        self.states = []

    def forward(self, u):
        h = torch.zeros(u.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(u.shape[1]):
            h = F.relu(self.inp(u[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _swell(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        u = 0.3 * torch.randn(batch, KELP_T, 3, generator=gen)
        decay = 0.9 ** torch.arange(KELP_T - 1, -1, -1).float()
        y = torch.tanh((u @ w * decay).sum(1))
        yield u, y


@scenario(
    family="kelp_frond_sway_swell_relu_elman_rnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Kelp-frond sway swell-energy forecaster (a hand-written ReLU Elman RNN over 24 "
    "pressure-sensor steps, MSE, RMSprop, clipped at 1). The recurrent weights are initialised "
    "IRNN-style as the identity but multiplied by a gain of 1.25 meant for the input layer: "
    "through 24 steps the gradient reaching the first hidden state is far larger than the one "
    "at the last, where the same model at gain 1 keeps them within a few times of each other.",
)
def h461_kelp_irnn_gain(ctx) -> None:
    def run(gain, c, steps):
        gen = seeded(4615)
        model = _Elman(gain=gain)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        ratios = []

        def on_grad(step):
            g0 = model.states[0].grad
            gt = model.states[-1].grad
            if g0 is not None and gt is not None:
                ratios.append(float(g0.norm() / gt.norm().clamp_min(1e-12)))

        losses, norms = _train(
            c, model, opt, _swell(gen, 32, 4615), steps, F.mse_loss, on_grad=on_grad, clip=1.0
        )
        return losses, norms, ratios

    _, ref_norms, ref_ratios = run(1.0, None, 20)
    losses, norms, ratios = run(KELP_GAIN, ctx, 150)
    ctx.check("first state's gradient over 50x the last's at step 0", ratios[0] > 50)
    ctx.check("under 5x at gain 1", ref_ratios[0] < 5)
    ctx.check("gradient norm over 20x the gain-1 run's at step 0", norms[0] > 20 * ref_norms[0])
    ctx.check("loss finite", _finite(losses))


# -- 6. update ratio: a head lr typed 1e-9 for 1e-2 -------------------------------------------------


@scenario(
    family="lacrosse_pocket_depth_ball_release_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Lacrosse stick-pocket depth to ball-release-angle regressor (ReLU MLP, two param "
    "groups: trunk and head, MSE, Adagrad). The head group's lr is typed 1e-9 for 1e-2 in the "
    "config: the head's weights move by under 1e-7 of their norm over the run while the trunk "
    "moves over 5%; the loss does not blow up, it only stays high.",
)
def h461_lacrosse_head_lr_typo(ctx) -> None:
    gen = seeded(4616)
    model = _Net(8, 48, 1)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 1e-2}, {"params": model.head.parameters(), "lr": 1e-9}]
    )
    head0 = model.head.weight.detach().clone()
    fc10 = model.fc1.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _gauges(gen, 64, 8, seed=4616), 200, F.mse_loss)
    rel_head = float((model.head.weight.detach() - head0).norm() / head0.norm())
    rel_fc1 = float((model.fc1.weight.detach() - fc10).norm() / fc10.norm())
    ctx.check("head moved under 1e-7 of its norm", rel_head < 1e-7)
    ctx.check("fc1 moved over 5% of its norm", rel_fc1 > 0.05)
    ctx.check("loss finite", _finite(losses))


# -- 7. data outlier: an echo-state network fed one shard in raw nanotesla ------------------------

AURORA_STEP = 120
AURORA_T = 20


class _EchoState(nn.Module):
    """An echo-state network: a trained input layer, a fixed random reservoir (spectral radius
    0.9, never trained) and a trained linear readout from the last state."""

    def __init__(self, d_in=2, size=64, radius=0.9, seed=4617):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.inp = nn.Linear(d_in, size)
        self.reservoir = nn.Linear(size, size, bias=False)
        w = torch.randn(size, size, generator=g) * (torch.rand(size, size, generator=g) < 0.2)
        w = w * radius / float(torch.linalg.eigvals(w).abs().max())
        with torch.no_grad():
            self.reservoir.weight.copy_(w)
        self.reservoir.weight.requires_grad_(False)
        self.readout = nn.Linear(size, 1)

    def forward(self, u):
        h = torch.zeros(u.shape[0], self.reservoir.weight.shape[0])
        for t in range(u.shape[1]):
            h = torch.tanh(self.inp(u[:, t]) + self.reservoir(h))
        return self.readout(h).squeeze(-1)


def _magnetometer(gen, batch):
    """Two standardised magnetometer components; target: the next H-component value."""
    while True:
        f = 0.2 + 0.3 * torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        t = torch.arange(AURORA_T + 1).float()
        h = torch.sin(f * t + ph) + 0.3 * torch.sin(2.1 * f * t + ph)
        z = torch.cos(f * t + ph)
        u = torch.stack([h[:, :-1], z[:, :-1]], -1) + 0.03 * torch.randn(
            batch, AURORA_T, 2, generator=gen
        )
        yield u, h[:, -1]


@scenario(
    family="aurora_substorm_magnetometer_echo_state_network",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=AURORA_STEP,
    note="Aurora-substorm magnetometer forecaster (a hand-written echo-state network: trained "
    "input layer, fixed random reservoir of spectral radius 0.9, trained readout; MSE, AdamW). "
    "One shard at step 120 comes from a station logging raw nanotesla instead of standardised "
    "units (inputs and targets x400): that batch's loss and gradient jump, then the clean "
    "batches bring the run back.",
)
def h461_aurora_esn_raw_nanotesla(ctx) -> None:
    gen = seeded(4617)
    model = _EchoState()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    res0 = model.reservoir.weight.detach().clone()

    def alter(step, u, y):
        return (400.0 * u, 400.0 * y) if step == AURORA_STEP else (u, y)

    losses, norms = _train(
        ctx, model, opt, _magnetometer(gen, 32), 220, F.mse_loss, alter=alter, clip=1.0
    )
    pre = losses[AURORA_STEP - 20 : AURORA_STEP]
    ctx.check("loss at step 120 over 100x the 20 before", losses[AURORA_STEP] > 100 * _median(pre))
    ctx.check(
        "gradient at step 120 over 10x the 20 before",
        norms[AURORA_STEP] > 10 * _median(norms[AURORA_STEP - 20 : AURORA_STEP]),
    )
    ctx.check(
        "recovers: the last 20 steps under 3x the 20 before the shard",
        _mean(losses[-20:]) < 3 * _mean(pre),
    )
    ctx.check("reservoir untouched", bool(torch.equal(res0, model.reservoir.weight.detach())))
    ctx.check("trained before the shard", _mean(pre) < 0.5 * _mean(losses[:10]))


# -- 8. gradient spike: reduction='sum' for one step after a resume ---------------------------------

CURL_STEP = 150


@scenario(
    family="curling_sweep_stone_curl_tanh_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CURL_STEP,
    note="Curling-sweep stone-curl regressor (tanh MLP on release speed, rotation and sweep "
    "pressure readings, Huber loss, SGD Nesterov momentum, clipped at 1). At step 150 the run "
    "resumes from a checkpoint and the loss object is rebuilt from a default config with "
    "reduction='sum' for one step before the config is re-read: the backpropagated loss is 128x "
    "the logged mean, one gradient burst with an ordinary logged loss, and the run carries on.",
)
def h461_curling_sum_reduction_resume(ctx) -> None:
    gen = seeded(4618)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss, out, y):
        return F.huber_loss(out.float(), y, reduction="sum") if step == CURL_STEP else loss

    losses, norms = _train(
        ctx,
        model,
        opt,
        _gauges(gen, 128, 8, seed=4618),
        250,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    med = _median(norms[CURL_STEP - 30 : CURL_STEP])
    ctx.check(
        "gradient at step 150 over 50x the median of the 30 before", norms[CURL_STEP] > 50 * med
    )
    ctx.check(
        "logged loss at step 150 ordinary (under 2x the median before)",
        losses[CURL_STEP] < 2 * _median(losses[CURL_STEP - 30 : CURL_STEP]),
    )
    ctx.check(
        "no other step over 5x that median",
        all(n < 5 * med for i, n in enumerate(norms) if i > CURL_STEP),
    )
    ctx.check("trained", _fell(losses))


# -- 9. softmax collapse: a temperature of 0.01 left in --------------------------------------------

REED_T = 0.01
REED_LR = 2e-3


@scenario(
    family="chanter_reed_cane_grade_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Pipe-chanter reed cane-grade classifier (ReLU MLP on 16 reed-gouge profile readings, "
    "six grades, cross-entropy, Adamax). The logits are divided by a sharpening "
    "temperature of 0.01 left in from an experiment: the softmax saturates, over half of the "
    "rows give the target a probability of exactly 1.0 in float32, against almost none at 1.",
)
def h461_chanter_reed_temperature(ctx) -> None:
    def run(temp, c):
        gen = seeded(4619)
        model = _Net(16, 48, 6, temperature=temp)
        opt = torch.optim.Adamax(model.parameters(), lr=REED_LR)
        data = _classes(gen, 64, 16, 6, seed=4619, spread=0.6)
        px, py = next(_classes(torch.Generator().manual_seed(3), 512, 16, 6, seed=4619, spread=0.6))
        losses, _ = _train(c, model, opt, data, 250, F.cross_entropy, classifier=True)
        with torch.no_grad():
            return losses, collapsed_fraction(model(px), py)

    _, ref = run(1.0, None)
    losses, coll = run(REED_T, ctx)
    ctx.check("over half the rows' target probability exactly 1.0", coll > 0.5)
    ctx.check("under 5% at temperature 1", ref < 0.05)
    ctx.check("loss finite", _finite(losses))


# -- 10. output logits: BCE labels read as 0/2 ------------------------------------------------------


@scenario(
    family="hailstone_wet_growth_detector_bce_net",
    optimizer="ASGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Hailstone growth-layer 'wet growth' detector (ReLU MLP on radar reflectivity and "
    "updraft features, BCE with logits, ASGD). The label column comes from a sheet coding wet "
    "growth as 2 (not 1): with targets of 2 the BCE gradient sigmoid(z) - 2 never vanishes, so "
    "the head pushes its logits up without bound.",
)
def h461_hailstone_labels_zero_two(ctx) -> None:
    def run(scale, c):
        gen = seeded(4620)
        model = _Net(8, 48, 1)
        opt = torch.optim.ASGD(model.parameters(), lr=0.01)
        data = ((x, scale * (y == 1).float()) for x, y in _classes(gen, 64, 8, 2, seed=4620))
        probe = next(_classes(torch.Generator().manual_seed(2), 256, 8, 2, seed=4620))[0]
        trace = []

        def after(step):
            with torch.no_grad():
                trace.append(float(model(probe).abs().mean()))

        losses, _ = _train(
            c, model, opt, data, 200, F.binary_cross_entropy_with_logits, after=after
        )
        return losses, trace

    _, ref = run(1.0, None)
    losses, trace = run(2.0, ctx)
    ctx.check("mean |logit| over 20x its first steps'", _mean(trace[-10:]) > 20 * _mean(trace[:5]))
    ctx.check("over 3x the 0/1 run's at the end", _mean(trace[-10:]) > 3 * _mean(ref[-10:]))
    ctx.check("still climbing over the last 50 steps", trace[-1] > 1.2 * trace[-50])
    ctx.check("loss finite", _finite(losses))


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="sled_dog_team_pace_gelu_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="Sled-dog team-pace regressor (GELU MLP on snow, temperature and team features, MSE, "
    "SGD momentum 0.9) with annealed Gaussian gradient noise (Neelakantan et al.): every "
    "gradient gets N(0, 0.3 / (1 + t)^0.55) noise before the step. Trains normally.",
)
def h461_sled_dog_gradient_noise(ctx) -> None:
    gen = seeded(4621)
    noise_gen = torch.Generator().manual_seed(46210)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sigmas = []

    def on_grad(step):
        sigma = math.sqrt(0.3 / (1 + step) ** 0.55)
        sigmas.append(sigma)
        for p in model.parameters():
            p.grad.add_(sigma * torch.randn(p.shape, generator=noise_gen))

    losses, _ = _train(
        ctx, model, opt, _gauges(gen, 64, 10, seed=4621), 250, F.mse_loss, on_grad=on_grad
    )
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
    ctx.check("noise annealed", sigmas[-1] < 0.5 * sigmas[0])


class _FurnaceConv(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16 * 16, classes)

    def forward(self, x):
        z = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        z = F.max_pool1d(F.relu(self.conv2(z)), 2)
        return self.head(z.flatten(1))


@scenario(
    family="glass_furnace_gather_viscosity_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Glass-furnace gather viscosity-band classifier (ReLU conv1d over a 64-sample "
    "thermocouple trace, the bundled digits flattened stand in; cross-entropy with label "
    "smoothing 0.1, AdamW under OneCycleLR, clipping at 1). Trains normally.",
)
def h461_glass_furnace_onecycle(ctx) -> None:
    gen = seeded(4622)
    model = _FurnaceConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    losses, _ = _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))


class _TiedAutoencoder(nn.Module):
    """Encoder and decoder share one weight (decoder uses its transpose)."""

    def __init__(self, d=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


@scenario(
    family="jacquard_loom_warp_tension_fp16_tied_autoencoder",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Jacquard-loom warp-tension profile autoencoder (tied weights, tanh code of 6, MSE) "
    "under fp16 autocast with a GradScaler, RAdam, accumulation over 2 micro-batches and "
    "clipping at 1. Trains normally.",
)
def h461_jacquard_fp16_tied_ae(ctx) -> None:
    gen = seeded(4623)
    g = torch.Generator().manual_seed(4623)
    basis = torch.randn(4, 16, generator=g)

    def profiles():
        while True:
            z = torch.randn(32, 4, generator=gen)
            x = torch.tanh(z @ basis / 2) + 0.05 * torch.randn(32, 16, generator=gen)
            yield x, x

    model = _TiedAutoencoder()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    losses, _ = _train(
        ctx,
        model,
        opt,
        profiles(),
        200,
        F.mse_loss,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
