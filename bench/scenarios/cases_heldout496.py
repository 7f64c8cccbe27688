"""Held-out set 496 (``h496_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a camera-obscura pinhole-focus tanh regressor trained full-batch with a warm-up peak lr
typed 10x (past 2/sharpness, SGD), a zoetrope slit-flicker SiLU regressor whose smoothness-loss
weight is read as 1e6 for one step (Adam's second moment poisoned, Adam beta2 0.9999), a
roller-ski split-time ReLU regressor fed one shard in milliseconds (ASGD), a stereoscope-card
parallax GELU classifier with temperature 0.002 for 2.0 (softmax collapse, Adagrad), a
planimeter trace-area SiLU regressor whose per-trace z-score has no epsilon (0/0 on a stuck
wheel, RMSprop), a chine-colle paper-bond Huber regressor whose loss is multiplied by the
logging scale once (one gradient burst, SGD Nesterov), a treadle sewing-machine stitch-skip BCE
net whose fc2 group lr is typed 3e-10 (RAdam), a magic-lantern limelight-flicker ReLU classifier
whose fc2 bias is initialised at -4 (dead units, Adamax), a photogravure etch-depth 12-layer ReLU
MLP initialised with the ReLU gain applied twice (exploding through depth, SGD momentum) and a
ship-in-bottle mast-raise tension SiLU regressor whose L2 penalty is subtracted (slow climb, NAdam).

Controls: a wampum shell-bead grade 20-layer highway network (Adam, OneCycleLR, label smoothing,
clipping), a pastel-stick binder-hardness Gaussian-NLL GELU net under AdamW with weight decay 0.5
(weight norm shrinking while the loss falls) and a praxinoscope mirror-drum frame Conv1d
classifier (fp16 autocast + GradScaler, SGD momentum, ReduceLROnPlateau, accumulation 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
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
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """The file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``backprop(step, loss)`` is the loss actually backpropagated (before the division by
    ``accumulate``), ``after(step, loss)`` runs after the optimizer step. Stops after a
    non-finite loss once ``ctx.step`` has seen it. ``attach=False``: a reference run."""
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
            total = backprop(step, loss) if backprop is not None else loss / accumulate
            total.backward()
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
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _weights_norm(model):
    return float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))


def _top_hessian_eig(model, loss_fn, iters=30):
    """Largest Hessian eigenvalue of ``loss_fn(model)`` by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        nv = math.sqrt(sum(float((a * a).sum()) for a in v))
        v = [a / nv for a in v]
        grads = torch.autograd.grad(loss_fn(model), params, create_graph=True)
        hv = torch.autograd.grad(grads, params, grad_outputs=v)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


# -- 1. sharpness above limit: full-batch warm-up peak lr typed 10x --------------------------------

OBSCURA_PEAK = 40


@scenario(
    family="camera_obscura_pinhole_focus_full_batch_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Camera-obscura pinhole-focus regressor (tanh MLP on pinhole diameter, screen distance, "
    "illuminance and wavelength features, 256 fixed calibration shots full-batch, MSE, plain "
    "SGD, linear warm-up over 40 steps). The warm-up's peak lr was typed 10x the one tuned at "
    "1/sharpness: during the warm-up lr * sharpness passes 2, the iterates oscillate along the "
    "top Hessian direction with growing amplitude and the loss blows up; the intended peak trains.",
)
def h496_camera_obscura_peak_lr(ctx) -> None:
    seeded(4961)
    model = _Net(10, 48, 1, act=nn.Tanh)
    ref = _Net(10, 48, 1, act=nn.Tanh)
    ref.load_state_dict(model.state_dict())
    x, y = next(_readings(torch.Generator().manual_seed(49610), 256, 10, 4961, noise=0.0))
    sharp = _top_hessian_eig(model, lambda m: F.mse_loss(m(x), y))
    intended = 1.0 / sharp

    def run(net, peak, attach):
        opt = torch.optim.SGD(net.parameters(), lr=peak)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / OBSCURA_PEAK))

        def data():
            while True:
                yield x, y

        return _train(ctx, net, opt, data(), 150, F.mse_loss, sched=sched, attach=attach)[0]

    ref_losses = run(ref, intended, False)
    losses = run(model, 10 * intended, True)
    ctx.check("at the intended peak the run trains, finite", _fell(ref_losses, ratio=0.5))
    ctx.check("the typed peak puts lr * sharpness over 2 (at init)", 10 * intended * sharp > 2)
    ctx.check("the intended peak keeps it under 2", intended * sharp < 2)
    ctx.check(
        "the loss blows up (over 1e3x its best or non-finite)",
        not _finite(losses) or max(losses) > 1e3 * min(losses),
    )


# -- 2. adam second moment poisoned: smoothness weight read as 1e6 once ---------------------------

ZOE_STEP = 80


@scenario(
    family="zoetrope_slit_flicker_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ZOE_STEP,
    note="Zoetrope slit-flicker regressor (SiLU MLP on drum speed, slit count, slit width and "
    "strip contrast features, MSE plus a small L2 penalty on the "
    "weights, Adam with beta2 0.9999). At step 80 a config reload reads the task-loss weight "
    "1.0 in parts per million (1e6): one giant gradient fills Adam's second moment, which with beta2 0.9999 "
    "stays huge, and every update afterwards is tiny: the loss stalls where it was.",
)
def h496_zoetrope_poisoned_v(ctx) -> None:
    gen = seeded(4962)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.9999))
    moves = []

    def loss_fn(out, y):
        return F.mse_loss(out, y)

    def backprop(step, loss):
        weight = 1e6 if step == ZOE_STEP else 1.0  # the task weight read in parts per million
        pen = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return weight * loss + 1e-5 * pen

    prev = [torch.cat([p.detach().flatten() for p in model.parameters()])]

    def after(step, loss):
        cur = torch.cat([p.detach().flatten() for p in model.parameters()])
        moves.append(float((cur - prev[0]).norm()))
        prev[0] = cur

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4962),
        240,
        loss_fn,
        backprop=backprop,
        after=after,
    )
    before = _mean(moves[ZOE_STEP - 20 : ZOE_STEP])
    later = _mean(moves[ZOE_STEP + 60 : ZOE_STEP + 160])
    ctx.check("gradient over 1e4x the median at step 80", norms[ZOE_STEP] > 1e4 * _median(norms))
    ctx.check("updates afterwards under 0.2x those before", later < 0.2 * before)
    ctx.check(
        "the loss stalls (last 20 over 0.8x the 20 before the burst)",
        _mean(losses[-20:]) > 0.8 * _mean(losses[ZOE_STEP - 20 : ZOE_STEP]),
    )
    ctx.check(
        "it was still training before (fell over 10% in the 40 before)",
        _mean(losses[ZOE_STEP - 10 : ZOE_STEP])
        < 0.9 * _mean(losses[ZOE_STEP - 50 : ZOE_STEP - 40]),
    )
    ctx.check("finite", _finite(losses))


# -- 3. data outlier: one shard of split times in milliseconds ------------------------------------

SKI_STEP = 120


@scenario(
    family="roller_ski_split_time_ms_shard_relu_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SKI_STEP,
    note="Roller-ski split-time regressor (ReLU MLP on gradient, asphalt temperature, wheel "
    "resistance class and pole cadence features, MSE on standardised split times, ASGD, clipping "
    "at 1). One timing-gate export wrote its splits in milliseconds and skipped the "
    "standardisation: the batch at step 120 has targets about 1000x too large, the loss and "
    "gradient jump once and the run recovers.",
)
def h496_roller_ski_ms_shard(ctx) -> None:
    gen = seeded(4963)
    model = _Net(10, 48, 1)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    seen = {}

    def alter(step, x, y):
        if step == SKI_STEP:
            y = (y + 3.0) * 1000.0  # raw milliseconds of a ~3 s offset split
        seen[step] = float(y.abs().max())
        return x, y

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4963), 240, F.mse_loss, alter=alter, clip=1.0
    )
    pre = _mean(losses[SKI_STEP - 10 : SKI_STEP])
    ctx.check(
        "targets over 500x the usual at the bad shard", seen[SKI_STEP] > 500 * seen[SKI_STEP - 1]
    )
    ctx.check("loss over 1000x at the bad shard", losses[SKI_STEP] > 1000 * pre)
    ctx.check("gradient over 20x the median", norms[SKI_STEP] > 20 * _median(norms))
    ctx.check("recovered (last 10 under 2x the pre-shard level)", _mean(losses[-10:]) < 2 * pre)
    ctx.check("trained before it, finite", _finite(losses) and pre < 0.7 * _mean(losses[:10]))


# -- 4. softmax collapse: temperature 0.002 for 2.0 ----------------------------------------------


class _ParallaxNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=6, temperature=2.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="stereoscope_card_parallax_temperature_gelu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Stereoscope-card parallax-depth classifier (GELU MLP on left/right image offsets, "
    "lens separation and card curvature features, cross-entropy, Adagrad). The logits are "
    "divided by a temperature meant to be 2.0, typed 0.002 in the config: the logits span "
    "thousands, most rows' float32 softmax rounds the target probability to exactly 1.0 and "
    "those rows give no gradient.",
)
def h496_stereoscope_temperature(ctx) -> None:
    gen = seeded(4964)
    model = _ParallaxNet(temperature=0.002)
    ref = _ParallaxNet(temperature=2.0)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    data = _grades(gen, 64, 12, 6, 4964, spread=1.0)
    losses, _ = _train(ctx, model, opt, data, 150, F.cross_entropy, classifier=True)
    x, y = next(data)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
        ref_frac = collapsed_fraction(ref(x), y)
    ctx.check("over half the rows' target probability is exactly 1.0", frac > 0.5)
    ctx.check("none at temperature 2.0 (same weights at init)", ref_frac < 0.05)
    ctx.check("finite", _finite(losses))


# -- 5. nonfinite: per-trace z-score with no epsilon ------------------------------------------------

PLANI_STEP = 100


class _ZScore(nn.Module):
    """Standardise each trace by its own mean and spread (no epsilon)."""

    def forward(self, x):
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)


class _PlanimeterNet(nn.Module):
    def __init__(self, window=24, hidden=40):
        super().__init__()
        self.zscore = _ZScore()
        self.fc1 = nn.Linear(window + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = torch.cat([self.zscore(x), x.std(-1, keepdim=True)], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


@scenario(
    family="planimeter_trace_area_zscore_silu_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("zscore",),
    diverges=PLANI_STEP,
    heldout=True,
    onset=PLANI_STEP,
    note="Polar-planimeter traced-area regressor (SiLU MLP on a 24-reading measuring-wheel trace, "
    "each trace z-scored by its own mean and standard deviation with no epsilon, MSE, RMSprop). "
    "At step 100 a batch holds three traces from a wheel that stuck: constant readings, std 0, "
    "the z-score is 0/0 = NaN and the loss is NaN.",
)
def h496_planimeter_stuck_wheel(ctx) -> None:
    gen = seeded(4965)
    model = _PlanimeterNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def data():
        t = torch.linspace(0, 6.28, 24)
        while True:
            amp = 0.5 + torch.rand(64, 1, generator=gen)
            ph = 6.28 * torch.rand(64, 1, generator=gen)
            x = amp * torch.sin(t + ph) + 0.1 * torch.randn(64, 24, generator=gen)
            yield x, 2 * amp.squeeze(-1) ** 2 - 1.5

    def alter(step, x, y):
        if step == PLANI_STEP:
            x = x.clone()
            x[:3] = 0.37  # the wheel stuck: one reading repeated
        return x, y

    losses, _ = _train(ctx, model, opt, data(), 160, F.mse_loss, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("finite and training before the stuck wheel", _fell(losses[:PLANI_STEP]))
    ctx.check("the loss is NaN exactly at step 100", first_bad == PLANI_STEP)
    with torch.no_grad():
        ctx.check(
            "zscore of a constant trace is NaN",
            bool(model.zscore(torch.full((1, 24), 0.37)).isnan().all()),
        )


# -- 6. gradient spike: the loss multiplied by the logging scale once -----------------------------

CHINE_STEP = 110


@scenario(
    family="chine_colle_paper_bond_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CHINE_STEP,
    note="Chine-colle paper-bond strength regressor (ReLU MLP on paste dilution, press pressure, "
    "tissue weight and dampening time features, Huber loss, SGD Nesterov, clipping at 1). The "
    "checkpoint step (once, at step 110) multiplies the loss by the logging scale 1000 before "
    "backward instead of after: that step's gradient is 1000x normal on an ordinary batch; "
    "clipping caps the update.",
)
def h496_chine_colle_log_scale(ctx) -> None:
    gen = seeded(4966)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * 1000.0 if step == CHINE_STEP else loss

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4966),
        200,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        backprop=backprop,
        clip=1.0,
    )
    ctx.check("gradient over 100x the median at step 110", norms[CHINE_STEP] > 100 * _median(norms))
    ctx.check(
        "the batch is ordinary (loss at the step under 2x the 10 before)",
        losses[CHINE_STEP] < 2 * _mean(losses[CHINE_STEP - 10 : CHINE_STEP]),
    )
    ctx.check("trained and finite", _fell(losses))


# -- 7. update ratio: fc2's group lr typed 3e-10 ------------------------------------------------------


@scenario(
    family="treadle_sewing_machine_stitch_skip_two_group_bce_net",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Treadle sewing-machine skipped-stitch detector (ReLU MLP on treadle cadence, thread "
    "tension, needle size and fabric thickness features, BCE with logits, RAdam with one param "
    "group per layer). fc2's group lr was typed 3e-10 for 3e-4: fc2's updates are about 1e-9 of "
    "its weights while fc1 and the head train and the loss still falls.",
)
def h496_sewing_machine_group_lr(ctx) -> None:
    gen = seeded(4967)
    model = _Net(10, 48, 1)
    opt = torch.optim.RAdam(
        [
            {"params": model.fc1.parameters(), "lr": 3e-3},
            {"params": model.fc2.parameters(), "lr": 3e-10},
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )

    def data():
        for x, y in _readings(gen, 64, 10, 4967):
            yield x, (y > 0.1).float()

    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, data(), 220, F.binary_cross_entropy_with_logits)
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    d2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc2 moved under 1e-6 of its norm", d2 < 1e-6)
    ctx.check("fc1 moved over 5% of its norm", d1 > 0.05)
    ctx.check("the loss still fell (no blow-up)", _fell(losses, ratio=0.8))


# -- 8. loss of plasticity: fc2 bias initialised at -4 -----------------------------------------------


@scenario(
    family="magic_lantern_limelight_flicker_dead_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Magic-lantern limelight flicker classifier (ReLU MLP on oxygen and hydrogen flow, "
    "lime-cylinder wear and lens temperature features, cross-entropy, Adamax). fc2's bias is "
    "initialised at -4 by an init helper meant for a gating layer: every fc2 pre-activation is "
    "negative for every input, fc2's ReLUs are dead and pass no gradient, and the run sits near "
    "chance while the same net with a zero bias trains.",
)
def h496_magic_lantern_dead_fc2(ctx) -> None:
    seeded(4968)
    model = _Net(12, 48, 6)
    ref = _Net(12, 48, 6)
    ref.load_state_dict(model.state_dict())
    nn.init.constant_(model.fc2.bias, -4.0)
    nn.init.zeros_(ref.fc2.bias)

    def data():
        return _grades(torch.Generator().manual_seed(49680), 64, 12, 6, 4968, spread=1.5)

    ref_losses, _ = _train(
        ctx,
        ref,
        torch.optim.Adamax(ref.parameters(), lr=4e-3),
        data(),
        200,
        F.cross_entropy,
        attach=False,
    )
    stream = data()
    losses, _ = _train(
        ctx,
        model,
        torch.optim.Adamax(model.parameters(), lr=4e-3),
        stream,
        200,
        F.cross_entropy,
        classifier=True,
    )
    x, _ = next(stream)
    with torch.no_grad():
        dead = dead_fraction(model.fc2(model.act1(model.fc1(x))))
        ref_dead = dead_fraction(ref.fc2(ref.act1(ref.fc1(x))))
    ctx.check("over 90% of fc2's units dead", dead > 0.9)
    ctx.check("under 20% dead with a zero bias", ref_dead < 0.2)
    ctx.check(
        "stalled over 2x the zero-bias loss", _mean(losses[-20:]) > 2 * _mean(ref_losses[-20:])
    )
    ctx.check("near chance (last 20 over 0.8 ln 6)", _mean(losses[-20:]) > 0.8 * math.log(6))
    ctx.check("finite", _finite(losses))


# -- 9. exploding gradients: the ReLU gain applied twice over 12 layers -----------------------------


class _DeepNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, depth=12, gain=1.0):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, 1)
        for lin in self.layers:
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            lin.weight.data.mul_(gain)
            nn.init.zeros_(lin.bias)
        self.outs: list[torch.Tensor] = []

    def forward(self, x):
        self.outs = []
        for lin in self.layers:
            x = lin(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="photogravure_etch_depth_double_gain_deep_relu_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Photogravure etch-depth regressor (12-layer ReLU MLP on ferric-chloride bath strength, "
    "bath temperature, aquatint grain and tissue exposure features, MSE, SGD momentum). The "
    "init helper multiplies He-initialised weights by calculate_gain('relu') a second time "
    "(sqrt 2 twice): each layer amplifies the backward signal by about 1.4, the gradient at "
    "layers.0's output is over 20x the last layer's and the loss blows up.",
)
def h496_photogravure_double_gain(ctx) -> None:
    seeded(4969)
    model = _DeepNet(gain=math.sqrt(2.0))
    ref = _DeepNet(gain=1.0)

    def depth_ratio(net):
        x, y = next(_readings(torch.Generator().manual_seed(49690), 128, 10, 4969))
        F.mse_loss(net(x), y).backward()
        r = float(net.outs[0].grad.norm() / net.outs[-1].grad.norm().clamp_min(1e-30))
        net.zero_grad()
        return r

    ref_ratio = depth_ratio(ref)
    ratio = depth_ratio(model)

    def run(net, attach):
        opt = torch.optim.SGD(net.parameters(), lr=3e-3, momentum=0.9)
        data = _readings(torch.Generator().manual_seed(49691), 64, 10, 4969)
        return _train(ctx, net, opt, data, 150, F.mse_loss, attach=attach)[0]

    ref_losses = run(ref, False)
    losses = run(model, True)
    ctx.check("with He init the same run trains, finite", _fell(ref_losses, ratio=0.8))
    ctx.check("layers.0's output gradient over 20x the last layer's", ratio > 20)
    ctx.check("under 3x with He init", ref_ratio < 3)
    ctx.check(
        "the loss blows up (over 1e3x its best or non-finite)",
        not _finite(losses) or max(losses) > 1e3 * min(losses),
    )


# -- 10. loss divergence: the L2 penalty subtracted -------------------------------------------------


@scenario(
    family="ship_in_bottle_mast_raise_tension_l2_sign_silu_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Ship-in-bottle mast-raising thread-tension regressor (SiLU MLP on mast height, hinge "
    "stiffness, bottle-neck diameter and rigging count features, MSE plus an L2 penalty, NAdam). "
    "The penalty is written loss - wd * ||w||^2 instead of +: after fitting, the weights grow "
    "steadily and the loss climbs slowly, with no jump and no NaN.",
)
def h496_ship_in_bottle_l2_sign(ctx) -> None:
    gen = seeded(4970)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    n0 = _weights_norm(model)

    def backprop(step, loss):
        pen = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - 1e-2 * pen

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4970), 280, F.mse_loss, backprop=backprop
    )
    best = min(_mean(losses[i : i + 10]) for i in range(0, 150, 5))
    jumps = max(losses[i + 1] / max(losses[i], 1e-12) for i in range(len(losses) - 1))
    ctx.check(
        "trained first (best 10-step mean under 0.7x the start)", best < 0.7 * _mean(losses[:10])
    )
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("the weights grew over 1.5x", _weights_norm(model) > 1.5 * n0)
    ctx.check("no NaN (a slow climb, not a blow-up)", _finite(losses))
    ctx.check("no single-step jump over 10x", jumps < 10)


# -- 11. control: a 20-layer highway network on tabular bead grades -------------------------------


class _HighwayLayer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.transform = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)
        nn.init.constant_(self.gate.bias, -2.0)  # start carrying (Srivastava et al. 2015)

    def forward(self, x):
        t = torch.sigmoid(self.gate(x))
        return t * F.relu(self.transform(x)) + (1 - t) * x


class _HighwayNet(nn.Module):
    def __init__(self, d_in=14, dim=32, depth=20, classes=5):
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.layers = nn.ModuleList(_HighwayLayer(dim) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = F.relu(self.inp(x))
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


@scenario(
    family="wampum_shell_bead_grade_highway_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Wampum shell-bead grade classifier on tabular measurements (bead length, bore "
    "straightness, shell colour and polish features): a hand-written 20-layer highway network, "
    "each layer a learnt transform gate around a ReLU transform with the carry 1 - T, gate biases "
    "at -2; cross-entropy with label smoothing 0.1, Adam under OneCycleLR, clipping at 1. Control.",
)
def h496_wampum_highway_control(ctx) -> None:
    gen = seeded(4971)
    model = _HighwayNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 5, 4971, spread=1.5),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained (last 10 under 0.6x the first 10), finite", _fell(losses, ratio=0.6))


# -- 12. control: AdamW with weight decay 0.5 --------------------------------------------------------


class _BinderNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 2)
        for lin in (self.fc1, self.fc2, self.head):
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _gaussian_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="pastel_stick_binder_hardness_gaussian_nll_gelu_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Soft-pastel stick binder-hardness model (GELU MLP on gum tragacanth ratio, pigment "
    "load, chalk filler and drying time features, He-initialised, predicting a mean and a softplus "
    "variance, Gaussian NLL, AdamW with weight decay 0.5, linear warm-up 20 steps). The large decay "
    "shrinks the weight norm steadily while the loss still falls. Control.",
)
def h496_pastel_adamw_decay_control(ctx) -> None:
    gen = seeded(4972)
    model = _BinderNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    norms = [_weights_norm(model)]

    def after(step, loss):
        if step % 50 == 49:
            norms.append(_weights_norm(model))

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4972), 300, _gaussian_nll, sched=sched, after=after
    )
    ctx.check(
        "trained (last 20 under the first 20 minus 0.5 nats), finite",
        _finite(losses) and _mean(losses[-20:]) < _mean(losses[:20]) - 0.5,
    )
    ctx.check("the weight norm fell under 0.8x its start", norms[-1] < 0.8 * norms[0])
    ctx.check(
        "it shrank at every 50-step mark",
        all(b < a for a, b in zip(norms[:-1], norms[1:], strict=True)),
    )


# -- 13. control: fp16 autocast + GradScaler Conv1d, accumulation, plateau -------------------------


class _DrumConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 7, padding=3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(12, 16, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _frames(gen, batch=32, length=48, classes=4):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = 0.2 + 0.15 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sign(torch.sin(rate[:, None] * t + phase))  # the mirror-drum flicker
        yield x + 0.4 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="praxinoscope_mirror_drum_frame_fp16_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Praxinoscope mirror-drum frame-rate classifier (ReLU Conv1d over a noisy photocell "
    "flicker trace, cross-entropy with label smoothing 0.05, SGD momentum 0.9, fp16 autocast "
    "with a GradScaler, gradient accumulation 2, clipping at 2 after unscale, "
    "ReduceLROnPlateau). Control.",
)
def h496_praxinoscope_fp16_control(ctx) -> None:
    gen = seeded(4973)
    model = _DrumConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)
    ctx.attach(model, opt, scaler=scaler)
    data = _frames(gen)
    losses = []
    for _step in range(200):
        shown = 0.0
        for _ in range(2):
            x, y = next(data)
            ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=0.05)
            scaler.scale(loss / 2).backward()
            shown += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        plateau.step(shown)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained (last 10 under 0.6x the first 10), finite", _fell(losses, ratio=0.6))
    ctx.check("the scaler's scale stayed above 1", min(ctx.scales) > 1.0)
