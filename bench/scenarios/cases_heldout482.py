"""Held-out set 482 (``h482_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before.

Faults: a hay-baler knotter twine-tension tanh regressor whose warm-up end multiplier is typed
10.0 for 1.0 (full-batch SGD walks past 2/sharpness), a bocce pallino-approach Huber regressor
whose manual loss scale is not undone on one accumulation-boundary step (Adam's second moment
poisoned), an arctic-tern flyway-leg classifier whose temperature is divided by 1000 (softmax
saturates, NAdam), a gold-panning flake-yield Huber regressor whose accumulation remainder step
multiplies by the accumulation count instead of dividing (one gradient burst, SGD Nesterov,
clipped), a snowcat groomer track-depth regressor fed one shard in millimetres (SGD momentum), a
diamond-dust crystal-fall net taking log of a supersaturation that can be 0 (Adagrad), a
fly-tying hackle-wrap regressor whose per-layer lr table misspells fc1 so it gets lr 0 (RMSprop),
a discus release-spin classifier whose hidden biases are all initialised at -2.5 (dead ReLUs,
Adamax), a
skeleton-sled steering ReLU Elman RNN with an orthogonal recurrent init of gain 1.6 (exploding
gradients, SGD) and a rockfall talus-runout regressor whose target normaliser rescales the cached
targets in place every step (a drifting target, RAdam).

Controls: a sea-foam drift-lag deep equilibrium-style regressor (one weight-tied block iterated
24 times until its state settles, AdamW, warm-up + cosine, clipping); an orienteering
control-terrain classifier resampled each epoch with class-balanced sampling (SGD momentum,
OneCycleLR, label smoothing); a lamplighter wick-flame Conv1d classifier under fp16 autocast with
a GradScaler (Adam, ReduceLROnPlateau, clipping after unscale_).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _wnorm(module: nn.Module) -> float:
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in module.parameters()))


def _snap(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _moved(module: nn.Module, snap: list[torch.Tensor]) -> float:
    return math.sqrt(
        sum(
            float((p.detach() - w).norm() ** 2)
            for p, w in zip(module.parameters(), snap, strict=True)
        )
    )


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
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier and attach:
            ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        if attach:
            ctx.step(loss)
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
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


def _sharpness(model, loss_fn, iters=20):
    """Top Hessian eigenvalue of ``loss_fn(model)`` by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        grads = torch.autograd.grad(loss_fn(model), params, create_graph=True)
        hv = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v, strict=True)), params)
        lam = sum(float((h * u).sum()) for h, u in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- 1. sharpness above the limit: a warm-up end multiplier typed 10.0 for 1.0 ------------------------

KNOT_ONSET = 14


class _KnotterNet(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x))))).squeeze(-1)


@scenario(
    family="hay_baler_knotter_twine_tension_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=KNOT_ONSET,
    note="Hay-baler knotter twine-tension regressor (tanh MLP on plunger load, bale density, "
    "twine gauge and knife timing, MSE, full-batch SGD). A LambdaLR warm-up is meant to ramp the "
    "lr from 0 to its base over 60 steps, but the end multiplier is typed 10.0 for 1.0: the lr "
    "keeps climbing towards 10x the base, crosses 2/sharpness near step 14 and the loss blows up some twenty steps later.",
)
def h482_hay_baler_warmup_peak(ctx) -> None:
    gen = seeded(4821)
    x = torch.randn(256, 8, generator=gen)
    w = torch.randn(8, generator=gen)
    y = torch.tanh(x @ w / math.sqrt(8)) + 0.3 * torch.sin(2 * x[:, 0])

    def full_loss(m, b=None):
        return F.mse_loss(m(x), y)

    def run(peak, attach):
        torch.manual_seed(48211)
        model = _KnotterNet()
        base = 0.15
        opt = torch.optim.SGD(model.parameters(), lr=base)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: peak * min(1.0, (s + 1) / 60))
        if attach:
            ctx.attach(model, opt, probe=(full_loss, None))
        losses, lr_sharp = [], {}
        for step in range(120):
            if step in (0, KNOT_ONSET - 4, KNOT_ONSET + 4, 100):
                lr_sharp[step] = opt.param_groups[0]["lr"] * _sharpness(model, full_loss)
            loss = full_loss(model)
            loss.backward()
            if attach:
                ctx.grad_norms.append(grad_norm(model))
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if attach:
                ctx.step(loss)
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(losses[-1]):
                break
        return losses, lr_sharp

    ref, ref_ls = run(1.0, False)
    losses, ls = run(10.0, True)
    low = min(losses[: KNOT_ONSET + 10])
    ctx.check("lr * sharpness under 2 at step 0", ls.get(0, 99.0) < 2)
    ctx.check(f"lr * sharpness under 2 at step {KNOT_ONSET - 4}", ls.get(KNOT_ONSET - 4, 99.0) < 2)
    ctx.check(f"lr * sharpness over 2 at step {KNOT_ONSET + 4}", ls.get(KNOT_ONSET + 4, 0.0) > 2)
    ctx.check(
        "the loss blows up over 100x its lowest",
        not _finite(losses) or max(losses) > 100 * low,
    )
    ctx.check(
        "with the multiplier 1.0 the run trains and stays under the limit",
        _fell(ref) and ref_ls.get(100, 99.0) < 2,
    )


# -- 2. Adam's second moment: a manual loss scale not undone on one step ------------------------------

BOCCE_STEP = 90


@scenario(
    family="bocce_pallino_approach_silu_huber_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=BOCCE_STEP,
    note="Bocce pallino-approach regressor (SiLU MLP on throw speed, spin, court slope and "
    "surface features, Huber, Adam). The trainer multiplies the loss by a static scale of 32768 "
    "and divides the gradients by it before the step; the branch taken on the step after the "
    "epoch-end evaluation (step 90) skips the division. One gradient 32768x normal fills Adam's "
    "second moment and the updates stall for the following hundred steps.",
)
def h482_bocce_unscale_skipped(ctx) -> None:
    gen = seeded(4822)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scale = 32768.0
    ctx.attach(model, opt)
    data = _readings(gen, 64, 10, 4822)
    losses, norms, moves = [], [], []
    for step in range(220):
        snap = _snap(model)
        x, y = next(data)
        loss = F.huber_loss(model(x), y)
        (loss * scale).backward()
        if step != BOCCE_STEP:
            for p in model.parameters():
                p.grad.div_(scale)
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        moves.append(_moved(model, snap))
    before_mv = _mean(moves[BOCCE_STEP - 30 : BOCCE_STEP])
    after_mv = _mean(moves[BOCCE_STEP + 30 : BOCCE_STEP + 110])
    ctx.check(
        "the gradient at step 90 over 1e4x the median before",
        norms[BOCCE_STEP] > 1e4 * _median(norms[:BOCCE_STEP]),
    )
    ctx.check("updates 30-110 steps later under 0.1x those before", after_mv < 0.1 * before_mv)
    ctx.check(
        "trained before step 90",
        _mean(losses[BOCCE_STEP - 10 : BOCCE_STEP]) < 0.7 * _mean(losses[:10]),
    )
    ctx.check(
        "the loss no better 100 steps later",
        _mean(losses[-20:]) > 0.8 * _mean(losses[BOCCE_STEP - 20 : BOCCE_STEP]),
    )


# -- 3. softmax collapse: a temperature divided by 1000 -----------------------------------------------


class _TernNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=6, temperature=2.0, unit=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature
        self.unit = unit

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return self.head(h) / (self.temperature * self.unit)


@scenario(
    family="arctic_tern_flyway_leg_temperature_gelu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Arctic-tern flyway-leg classifier (GELU MLP on geolocator light, wind and sea-surface "
    "features, 6 legs, cross-entropy, NAdam). The softmax temperature 2.0 is multiplied by a "
    "unit factor copied from the logger's millisecond fields (1e-3): the logits are divided by "
    "0.002, the softmax saturates and most rows give the target probability exactly 1.0.",
)
def h482_arctic_tern_temperature_units(ctx) -> None:
    gen = seeded(4823)
    model = _TernNet(unit=1e-3)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    last = {}

    def loss_fn(out, y):
        last["logits"], last["y"] = out.detach(), y
        return F.cross_entropy(out, y)

    data = _grades(gen, 64, 12, 6, 4823, spread=0.8)
    losses, _ = _loop(ctx, model, opt, data, 150, loss_fn, classifier=True)
    frac = collapsed_fraction(last["logits"], last["y"])

    torch.manual_seed(48231)
    ref = _TernNet(unit=1.0)
    ropt = torch.optim.NAdam(ref.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(48232)
    rlast = {}

    def rloss(out, y):
        rlast["logits"], rlast["y"] = out.detach(), y
        return F.cross_entropy(out, y)

    rlosses, _ = _loop(ctx, ref, ropt, _grades(g, 64, 12, 6, 4823, 0.8), 150, rloss, attach=False)
    rfrac = collapsed_fraction(rlast["logits"], rlast["y"])
    ctx.check("over half the rows' target probability exactly 1.0 at the end", frac > 0.5)
    ctx.check("under 5% at the intended temperature 2.0", rfrac < 0.05)
    ctx.check("the intended run trains", _fell(rlosses))
    ctx.check("finite losses", _finite(losses))


# -- 4. gradient spike: an accumulation remainder multiplied instead of divided ----------------------

GOLD_STEP = 110
GOLD_ACC = 8


@scenario(
    family="gold_panning_flake_yield_tanh_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=GOLD_STEP,
    note="Gold-panning flake-yield regressor (tanh MLP on gravel size, water flow, pan angle and "
    "swirl features, Huber, SGD Nesterov, clip norm 1.0) with gradient accumulation over 8 "
    "micro-batches. The epoch-end remainder step (step 110) takes a separate branch written "
    "loss * accum instead of loss / accum: one gradient 64x normal from an ordinary batch; the "
    "clip bounds the update and the run recovers.",
)
def h482_gold_panning_accum_remainder(ctx) -> None:
    gen = seeded(4824)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen, 16, 10, 4824)
    losses, norms = [], []
    for step in range(200):
        shown = 0.0
        for _ in range(GOLD_ACC):
            x, y = next(data)
            loss = F.huber_loss(model(x), y)
            weight = GOLD_ACC if step == GOLD_STEP else 1.0 / GOLD_ACC
            (loss * weight).backward()
            shown += float(loss.detach()) / GOLD_ACC
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
    med = _median(norms[GOLD_STEP - 40 : GOLD_STEP])
    ctx.check("the gradient at step 110 over 50x the median before", norms[GOLD_STEP] > 50 * med)
    ctx.check(
        "the logged loss at step 110 ordinary (under 2x the 10 before)",
        losses[GOLD_STEP] < 2 * _mean(losses[GOLD_STEP - 10 : GOLD_STEP]),
    )
    ctx.check(
        "recovers: the last 20 steps no worse than 1.2x the 20 before the burst",
        _mean(losses[-20:]) < 1.2 * _mean(losses[GOLD_STEP - 20 : GOLD_STEP]),
    )
    ctx.check("trained and finite", _fell(losses))


# -- 5. data outlier: one shard in millimetres ------------------------------------------------------

SNOW_STEP = 100


@scenario(
    family="snowcat_groomer_track_depth_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SNOW_STEP,
    note="Snowcat groomer track-depth regressor (ReLU MLP on snow depth, density, tiller speed "
    "and blade height, MSE, SGD momentum, clip norm 5). One shard exported by an older logger "
    "gives the snow depth and blade height in millimetres for metres; its batch arrives at step "
    "100: the loss and gradient jump once and the run recovers.",
)
def h482_snowcat_millimetre_shard(ctx) -> None:
    gen = seeded(4825)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == SNOW_STEP:
            x = x.clone()
            x[:, :2] = x[:, :2] * 1000.0
            seen["x"] = float(x.abs().max())
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 4825), 220, F.mse_loss, alter=alter, clip=5.0
    )
    pre = _mean(losses[SNOW_STEP - 10 : SNOW_STEP])
    ctx.check("the shard's inputs over 100x the usual scale", seen.get("x", 0.0) > 100 * 4.0)
    ctx.check("the loss at step 100 over 10x the 10 before", losses[SNOW_STEP] > 10 * pre)
    ctx.check(
        "the gradient at step 100 over 10x the median",
        norms[SNOW_STEP] > 10 * _median(norms[:SNOW_STEP]),
    )
    ctx.check("recovers (last 20 under 2x the 10 before the shard)", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite throughout", _finite(losses))


# -- 6. non-finite: log of a supersaturation that can be 0 ---------------------------------------------

DUST_STEP = 100


class _LogExcess(nn.Module):
    """log of the vapour excess over ice saturation (no clamp)."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _DustNet(nn.Module):
    def __init__(self, d_in=8, hidden=40):
        super().__init__()
        self.logfeat = _LogExcess()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc1(self.logfeat(x)))
        return self.head(F.silu(self.fc2(h))).squeeze(-1)


@scenario(
    family="diamond_dust_crystal_fall_log_ratio_silu_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logfeat",),
    diverges=DUST_STEP,
    heldout=True,
    onset=DUST_STEP,
    note="Diamond-dust crystal-fall regressor (SiLU MLP on log vapour excess over ice "
    "saturation, temperature, wind and inversion-height features, MSE, Adagrad). The log is "
    "taken with no clamp; at step 100 a station reads exactly saturated air (excess 0), log 0 "
    "gives -inf in logfeat, the next layer turns it into NaN and the loss is NaN at step 100.",
)
def h482_diamond_dust_log_zero(ctx) -> None:
    gen = seeded(4826)
    model = _DustNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)

    def data():
        while True:
            excess = 0.05 + torch.rand(64, 1, generator=gen)
            rest = torch.randn(64, 7, generator=gen)
            y = 0.8 * torch.log(excess[:, 0]) + 0.3 * rest[:, 0] - 0.2 * rest[:, 1] ** 2
            yield torch.cat([excess, rest], 1), y

    seen = {}

    def alter(step, x, y):
        if step == DUST_STEP:
            x = x.clone()
            x[5, 0] = 0.0
            seen["feat"] = bool(torch.isinf(model.logfeat(x)).any())
        return x, y

    losses, _ = _loop(ctx, model, opt, data(), 160, F.mse_loss, alter=alter)
    ctx.check("logfeat gives -inf on the step-100 batch", seen.get("feat", False))
    ctx.check("finite before step 100", _finite(losses[:DUST_STEP]))
    ctx.check(
        "the loss non-finite at step 100",
        len(losses) > DUST_STEP and not math.isfinite(losses[DUST_STEP]),
    )
    ctx.check("trained before step 100", _fell(losses[:DUST_STEP]))


# -- 7. update ratio: a per-layer lr table with a misspelt key ---------------------------------------


@scenario(
    family="fly_tying_hackle_wrap_two_group_relu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Fly-tying hackle-wrap count regressor (ReLU MLP on feather barb length, stem "
    "stiffness, hook size and thread tension, MSE, RMSprop). Param groups are built from a "
    "per-layer lr table looked up with lrs.get(name, 0.0) (the 'frozen' default); the table's "
    "key for the first layer is typed 'fc_1', so fc1 trains at lr 0 while the rest train.",
)
def h482_fly_tying_lr_table_key(ctx) -> None:
    gen = seeded(4827)
    model = _Net(10, 48, 1)
    lrs = {"fc_1": 1e-3, "fc2": 1e-3, "head": 1e-3}
    groups = [
        {"params": list(m.parameters()), "lr": lrs.get(name, 0.0)}
        for name, m in (("fc1", model.fc1), ("fc2", model.fc2), ("head", model.head))
    ]
    opt = torch.optim.RMSprop(groups, lr=1e-3)
    s1, sh = _snap(model.fc1), _snap(model.head)
    n1, nh = _wnorm(model.fc1), _wnorm(model.head)
    g1 = []

    ctx.attach(model, opt)
    data = _readings(gen, 64, 10, 4827)
    losses = []
    for _step in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g1.append(float(model.fc1.weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("fc1 receives gradients", _median(g1) > 1e-4)
    ctx.check("fc1 moves under 1e-6 of its norm", _moved(model.fc1, s1) < 1e-6 * n1)
    ctx.check("the head moves over 5% of its norm", _moved(model.head, sh) > 0.05 * nh)
    ctx.check("the loss still falls through the other layers", _fell(losses, ratio=0.9))


# -- 8. loss of plasticity: an Adamax lr typed 0.5 for 0.005 -----------------------------------------


@scenario(
    family="discus_release_spin_grade_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Discus release-spin grade classifier (ReLU MLP on release angle, spin rate, wrist "
    "lag and wind, 5 grades, cross-entropy, Adamax lr 0.005). An init routine copied from a "
    "sparse-coding model sets every hidden layer's bias to -2.5 (meant for its encoder only): "
    "fc2's ReLU units are negative on every input from the start, they never receive a "
    "gradient, and the loss stays at chance, far above the intended run's.",
)
def h482_discus_sparse_bias_init(ctx) -> None:
    gen = seeded(4828)
    model = _Net(12, 64, 5)
    for layer in (model.fc1, model.fc2):  # the sparse-coding init applied to every hidden layer
        nn.init.constant_(layer.bias, -2.5)
    opt = torch.optim.Adamax(model.parameters(), lr=0.005)
    last = {}

    data = _grades(gen, 64, 12, 5, 4828, spread=1.0)
    losses, _ = _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True)
    xb, _ = next(_grades(torch.Generator().manual_seed(48281), 512, 12, 5, 4828, 1.0))
    with torch.no_grad():
        h1 = model.act1(model.fc1(xb))
        h2 = model.act2(model.fc2(h1))
    last["d1"], last["d2"] = dead_fraction(h1), dead_fraction(h2)

    torch.manual_seed(48282)
    ref = _Net(12, 64, 5)
    ropt = torch.optim.Adamax(ref.parameters(), lr=0.005)
    g = torch.Generator().manual_seed(48283)
    rlosses, _ = _loop(
        ctx, ref, ropt, _grades(g, 64, 12, 5, 4828, 1.0), 200, F.cross_entropy, attach=False
    )
    with torch.no_grad():
        rd = dead_fraction(ref.act2(ref.fc2(ref.act1(ref.fc1(xb)))))
    ctx.check("over 80% of fc1's or fc2's units dead at the end", max(last["d1"], last["d2"]) > 0.8)
    ctx.check("under 20% of fc2's units dead with zero biases", rd < 0.2)
    ctx.check(
        "the loss over 2x the intended run's at the end",
        _mean(losses[-20:]) > 2 * _mean(rlosses[-20:]),
    )
    ctx.check("finite losses", _finite(losses))


# -- 9. exploding gradients: an orthogonal recurrent init with gain 1.6 -------------------------------


class _SledRNN(nn.Module):
    """A hand-written ReLU Elman RNN over 40 steering-sensor steps, a head on the last state."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _sled_data(gen, batch=32, length=40):
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        y = 0.5 * x[:, -10:, 0].mean(1) - 0.3 * x[:, -5:, 1].mean(1)
        yield x, y


@scenario(
    family="skeleton_sled_runner_steer_relu_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="Skeleton-sled runner-steering regressor (a hand-written ReLU Elman RNN over 40 "
    "steering-sensor steps, MSE, plain SGD). The recurrent weight is initialised with "
    "nn.init.orthogonal_(gain=1.6), the gain copied from a feed-forward init table instead of "
    "1.0: the state and the gradient grow through time, dL/dh_0 dwarfs dL/dh_T and the loss "
    "blows up.",
)
def h482_skeleton_sled_orthogonal_gain(ctx) -> None:
    gen = seeded(4829)

    def ratio(net, x, y):
        net.zero_grad()
        F.mse_loss(net(x), y).backward()
        r = float(net.states[0].grad.norm()) / max(float(net.states[-1].grad.norm()), 1e-30)
        net.zero_grad()
        return r

    xb, yb = next(_sled_data(torch.Generator().manual_seed(48291)))
    torch.manual_seed(48292)
    model = _SledRNN(gain=1.6)
    torch.manual_seed(48292)
    ref = _SledRNN(gain=1.0)
    r_bad, r_ref = ratio(model, xb, yb), ratio(ref, xb, yb)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses, norms = _loop(ctx, model, opt, _sled_data(gen), 120, F.mse_loss)
    ctx.check("dL/dh_0 over 100x dL/dh_T at gain 1.6", r_bad > 100)
    ctx.check("under 10x at gain 1.0", r_ref < 10)
    ctx.check(
        "the loss blows up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


# -- 10. loss divergence: a target normaliser applied in place each step ------------------------------


@scenario(
    family="rockfall_talus_runout_gelu_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=0,
    note="Rockfall talus-runout regressor (GELU MLP on block volume, slope angle, drop height "
    "and talus roughness, MSE, RAdam). The cached targets are rescaled by a running "
    "normaliser's gain with y.mul_(gain) on the cached tensor each step instead of on a copy: "
    "the targets drift up 1.2% a step and the loss, after first falling, climbs slowly.",
)
def h482_rockfall_inplace_target_drift(ctx) -> None:
    gen = seeded(48210)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-2)
    data = _readings(gen, 512, 10, 48210)
    xs, ys = next(data)
    y0 = float(ys.abs().mean())

    def batches():
        while True:
            idx = torch.randint(0, 512, (64,), generator=gen)
            yield xs[idx], ys[idx]

    def after(step):
        ys.mul_(1.012)

    losses, _ = _loop(ctx, model, opt, batches(), 240, F.mse_loss, after=after)
    best = min(_mean(losses[i : i + 10]) for i in range(0, 120, 5))
    ctx.check("trained first (best 10-step mean under 0.7x the start)", best < 0.7 * losses[0])
    ctx.check("the targets drifted over 4x", float(ys.abs().mean()) > 4 * y0)
    ctx.check("the loss climbs over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("no NaN (a slow climb, not a blow-up)", _finite(losses))


# -- 11. control: a deep equilibrium-style regressor ---------------------------------------------------


class _FoamDEQ(nn.Module):
    """One weight-tied block z <- tanh(W z + U x + b) applied 24 times from z = 0; W is rescaled
    to spectral norm at most 0.9 so the iteration contracts and settles."""

    def __init__(self, d_in=10, width=48, iters=24):
        super().__init__()
        self.inject = nn.Linear(d_in, width)
        self.cell = nn.Linear(width, width, bias=False)
        self.head = nn.Linear(width, 1)
        self.iters = iters
        self.residual = 0.0
        nn.init.normal_(self.cell.weight, std=0.5 / math.sqrt(width))

    def forward(self, x):
        w = self.cell.weight
        sn = torch.linalg.matrix_norm(w, ord=2)
        w = w / torch.clamp(sn / 0.9, min=1.0)
        u = self.inject(x)
        z = torch.zeros_like(u)
        prev = z
        for _ in range(self.iters):
            prev = z
            z = torch.tanh(z @ w.T + u)
        self.residual = float((z - prev).detach().norm() / (z.detach().norm() + 1e-12))
        return self.head(z).squeeze(-1)


@scenario(
    family="sea_foam_drift_lag_deq_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sea-foam drift-lag regressor, a deep equilibrium-style model: one weight-tied tanh "
    "block applied 24 times until its state settles (the cell weight rescaled to spectral norm "
    "0.9), MSE, AdamW with weight decay, 20-step warm-up then cosine decay, clip norm 1.0. "
    "Control.",
)
def h482_sea_foam_deq_control(ctx) -> None:
    gen = seeded(48211)
    model = _FoamDEQ()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    total = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
    )
    res = []

    def after(step):
        res.append(model.residual)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 48211),
        total,
        F.mse_loss,
        after=after,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell under 0.5x its start", _fell(losses, ratio=0.5))
    ctx.check("the fixed-point iteration settles (last-step residual under 1e-3)", max(res) < 1e-3)
    ctx.check("finite throughout", _finite(losses))


# -- 12. control: class-balanced resampling each epoch ---------------------------------------------


@scenario(
    family="orienteering_control_terrain_balanced_sampler_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Orienteering control-site terrain classifier (ReLU MLP on contour, vegetation and "
    "rock features, 5 terrain kinds with a 10:1 imbalance, cross-entropy with label smoothing "
    "0.1, SGD momentum under OneCycleLR, clip norm 2). Each epoch the pool is reshuffled and "
    "resampled with replacement by inverse class frequency (a WeightedRandomSampler-style "
    "draw), so batch losses differ epoch to epoch. Control.",
)
def h482_orienteering_balanced_resample(ctx) -> None:
    gen = seeded(48212)
    counts = torch.tensor([400, 200, 100, 60, 40])
    protos = 1.1 * torch.randn(5, 12, generator=gen)
    y_pool = torch.repeat_interleave(torch.arange(5), counts)
    x_pool = protos[y_pool] + torch.randn(len(y_pool), 12, generator=gen)
    weights = (1.0 / counts.float())[y_pool]
    batch, n = 64, len(y_pool)
    epochs = []

    def batches():
        while True:
            idx = torch.multinomial(weights, n, replacement=True, generator=gen)
            epochs.append(torch.bincount(y_pool[idx], minlength=5))
            for i in range(0, n - batch + 1, batch):
                j = idx[i : i + batch]
                yield x_pool[j], y_pool[j]

    model = _Net(12, 48, 5)
    steps = 180
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    per_epoch = n // batch

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _loop(
        ctx, model, opt, batches(), steps, loss_fn, classifier=True, clip=2.0, sched=sched
    )
    e1 = losses[per_epoch : 2 * per_epoch]
    e2 = losses[2 * per_epoch : 3 * per_epoch]
    balance = max(float(c.max() / c.min()) for c in epochs)
    ctx.check("the loss fell under 0.6x its start", _fell(losses, ratio=0.6))
    ctx.check("resampled classes balanced (max/min count under 1.6 each epoch)", balance < 1.6)
    ctx.check(
        "batch losses differ epoch to epoch",
        len(e1) == len(e2) and max(abs(a - b) for a, b in zip(e1, e2, strict=True)) > 1e-3,
    )
    ctx.check("finite throughout", _finite(losses))


# -- 13. control: fp16 autocast with a GradScaler ---------------------------------------------------


class _WickConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.max_pool1d(h, 2)
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _flicker(gen, batch=32, length=64, classes=4):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.08 + 0.06 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freq[:, None] * t + phase) + 0.4 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    family="lamplighter_wick_flame_fp16_conv1d_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lamplighter wick-flame flicker classifier (ReLU Conv1d on a photodiode trace, 4 flame "
    "states, cross-entropy) under fp16 autocast with a torch.amp.GradScaler, Adam, "
    "ReduceLROnPlateau on a 20-step running loss, clip norm 2 after scaler.unscale_. Control.",
)
def h482_lamplighter_fp16_control(ctx) -> None:
    gen = seeded(48213)
    model = _WickConv()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    ctx.attach(model, opt, scaler=scaler)
    data = _flicker(gen)
    losses, skipped = [], 0
    for step in range(200):
        x, y = next(data)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped += int(scaler.get_scale() < before)
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 20 == 19:
            plateau.step(_mean(losses[-20:]))
    ctx.check("the loss fell under 0.6x its start", _fell(losses, ratio=0.6))
    ctx.check("at most 3 steps skipped by the scaler", skipped <= 3)
    ctx.check("finite throughout", _finite(losses))
