"""Held-out set 144 (``h144_``): a Hugging Face EXAONE-4.5 vision tower from a tiny config, and
hand-written models of trades, crafts, sports, instruments and natural phenomena not covered
before.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs (fp16 autocast with a GradScaler on a GroupNorm conv net with
OneCycleLR and label smoothing, plain SGD with gradient accumulation, clipping and
ReduceLROnPlateau on noisy batches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, digit_batches, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _tabular(gen, n_in: int, batch: int, noise: float = 0.05, scale: float = 1.0):
    w = torch.randn(n_in, 1, generator=gen)
    v = torch.randn(n_in, 1, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(n_in)) + 0.5 * torch.sin(x @ v / math.sqrt(n_in))
        yield x, scale * (y + noise * torch.randn(batch, 1, generator=gen))


def _clusters(gen, n_in: int, classes: int, batch: int, spread: float = 1.0):
    centres = torch.randn(classes, n_in, generator=gen)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + spread * torch.randn(batch, n_in, generator=gen), y


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
    scale=None,
    clip=None,
    sched=None,
    after=None,
    scaler=None,
    forward=None,
):
    ctx.attach(model, opt, scaler=scaler)
    forward = forward or (lambda m, x: m(x))
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if before is not None:
            before(step)
        if classifier:
            ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
            out = forward(model, x)
        loss = loss_fn(out.float(), y)
        total = loss * scale(step) if scale is not None else loss
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if after is not None:
            after(step)
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(float(loss.detach()))
            else:
                sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break


class Regressor(nn.Module):
    def __init__(self, n_in, width, depth=2, act=nn.Tanh, n_out=1):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(n_in if i == 0 else width, width), act()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        return self.head(self.body(x))


def _flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


# -- Hugging Face EXAONE-4.5 vision tower on digits: a one-step 65536x loss fills Adam's v -------


def _exaone_vision():
    from transformers import AutoConfig, Exaone4_5_VisionModel

    config = AutoConfig.for_model(
        "exaone4_5_vision",
        depth=2,
        fullatt_block_indexes=[1],
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        num_key_value_heads=2,
        out_hidden_size=32,
        patch_size=4,
        in_channels=1,
        temporal_patch_size=1,
        spatial_merge_size=2,
        window_size=8,
    )
    return Exaone4_5_VisionModel(config)


class ExaoneDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.tower = _exaone_vision()
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        b = x.shape[0]
        img = F.interpolate(x.reshape(b, 1, 8, 8), size=16, mode="nearest")
        patches = img.reshape(b, 1, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(b * 16, 16)
        thw = torch.tensor([[1, 4, 4]] * b)
        pooled = self.tower(patches, grid_thw=thw).pooler_output
        return self.head(pooled.reshape(b, 4, 32).mean(1))


@scenario(
    family="hf_exaone4_5_vision_digits",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=40,
    note="Adam on an EXAONE-4.5 vision tower (tiny config). The GradScaler was taken out but "
    "the code path after an evaluation still multiplies the loss by the old 65536 loss scale "
    "(hard-coded), so one backward carries a 65536x gradient; Adam's second moment fills with "
    "it and, with beta2 0.999, the updates afterwards shrink by orders of magnitude: the run "
    "stalls.",
)
def h144_exaone_vision_scale_leftover(ctx: Context) -> None:
    gen = seeded(14401)
    model = ExaoneDigits()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    onset = 40
    upd: list[float] = []
    prev = {"p": _flat_params(model)}

    def after(_step):
        cur = _flat_params(model)
        upd.append(float((cur - prev["p"]).norm() / cur.norm()))
        prev["p"] = cur

    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 48),
        140,
        F.cross_entropy,
        classifier=True,
        scale=lambda s: 65536.0 if s == onset else 1.0,
        after=after,
    )
    g = ctx.grad_norms
    ctx.check("gradient at onset >1000x the median before", g[onset] > 1000 * _median(g[:onset]))
    before = _mean(upd[onset - 10 : onset])
    later = _mean(upd[onset + 30 : onset + 60])
    ctx.check("relative update size fell >10x after the onset", later < before / 10)
    ctx.check(
        "loss stalled: 100 steps after the onset still above its level before the onset",
        _mean(ctx.losses[-10:]) > _mean(ctx.losses[onset - 10 : onset]),
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- wheelwright spoke-load regressor: an auxiliary loss weight read as 80 for one step ----------


@scenario(
    family="wheelwright_spoke_load_regressor",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    diverges=None,
    heldout=True,
    onset=60,
    note="SGD with Nesterov momentum, Huber loss, on spoke-load features (felloe width, dish "
    "angle, timber density). At step 60 the loss weights are reloaded from a config where the "
    "weight was written as 80 (meant 0.8) and the next reload puts it back: one backward "
    "carries an ~100x gradient that does not come from the data.",
)
def h144_wheelwright_loss_weight_typo(ctx: Context) -> None:
    gen = seeded(14402)
    model = Regressor(12, 48, depth=2, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    onset = 60
    _train(
        ctx,
        model,
        opt,
        _tabular(gen, 12, 64, noise=0.05),
        160,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        scale=lambda s: 100.0 if s == onset else 1.0,
    )
    g = ctx.grad_norms
    ctx.check("gradient at onset >50x the median before", g[onset] > 50 * _median(g[:onset]))
    ctx.check(
        "a single burst: 5 steps later the gradient is >20x below it",
        max(g[onset + 5 :]) < g[onset] / 20,
    )
    ctx.check(
        "the data at onset is ordinary (its loss <3x the median before)",
        ctx.losses[onset] < 3 * _median(ctx.losses[onset - 20 : onset]),
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- sinkhole subsidence forecaster: a Gaussian NLL whose variance is clamped at 0, not eps ------


class SubsidenceNet(nn.Module):
    def __init__(self, n_in: int = 10, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, width))
        self.act = nn.Tanh()
        self.mean_head = nn.Linear(width, 1)
        self.var_head = nn.Linear(width, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act(self.body(x))
        # the bug: clamp(min=0.0) where the recipe says clamp(min=1e-6) (or a softplus)
        return torch.cat([self.mean_head(h), self.var_head(h).clamp(min=0.0)], 1)


def _gauss_nll(out, y):
    mu, var = out[:, :1], out[:, 1:]
    return (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()


@scenario(
    family="sinkhole_subsidence_forecaster",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var_head",),
    diverges=80,
    heldout=True,
    note="RMSprop, heteroscedastic Gaussian NLL on borehole features (water-table drop, "
    "overburden, karst index). The variance head is clamped with min=0.0 instead of a small "
    "eps: as the fit sharpens the predicted variance shrinks until one sample's variance is "
    "exactly 0, and log(0) and (y-mu)^2/0 give a non-finite loss.",
)
def h144_sinkhole_variance_clamp_zero(ctx: Context) -> None:
    gen = seeded(14403)
    model = SubsidenceNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-4, alpha=0.99)
    min_var: list[float] = []
    model.var_head.register_forward_hook(lambda _m, _i, o: min_var.append(float(o.detach().min())))
    _train(ctx, model, opt, _tabular(gen, 10, 64, noise=0.02), 200, _gauss_nll)
    bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check("loss non-finite first at step 80", bad == 80)
    ctx.check("finite for the first 20 steps", _finite(ctx.losses[:20]))
    ctx.check(
        "the variance head's raw output reached <=0 at the non-finite step",
        bad is not None and min_var[bad] <= 0.0,
    )
    ctx.check("the variance head started well above 0", min_var[0] > 0.3)


# -- cranberry bog yield: plot yields in grams, sum-pooled under fp16 autocast ------------------


class SumPool(nn.Module):
    def forward(self, x):
        return x.sum(1)


class BogYieldNet(nn.Module):
    def __init__(self, n_feat: int = 6, width: int = 32):
        super().__init__()
        self.plot_mlp = nn.Sequential(nn.Linear(n_feat, width), nn.ReLU(), nn.Linear(width, 1))
        self.pool = SumPool()

    def forward(self, x):
        return self.pool(self.plot_mlp(x))


def _bog_batches(gen, batch: int = 32, plots: int = 48, n_feat: int = 6):
    w = torch.rand(n_feat, generator=gen)
    while True:
        x = torch.rand(batch, plots, n_feat, generator=gen)
        grams = 1500.0 + 1500.0 * (x * w).sum(-1, keepdim=True) / w.sum()  # per plot
        yield x, grams.sum(1)  # the bog's total harvest, in grams


@scenario(
    family="cranberry_bog_yield_pooler",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("pool",),
    diverges=89,
    heldout=True,
    onset=89,
    note="AdamW under fp16 autocast with a GradScaler: per-plot yields are predicted and "
    "sum-pooled over 48 plots into the bog's harvest, with targets left in grams (the "
    "kilogram conversion was dropped). As the predictions approach the targets the pooled "
    "sum passes fp16's 65504 and the forward pass overflows to inf; the GradScaler cannot "
    "help because the overflow is in the activations.",
)
def h144_cranberry_grams_fp16_sum(ctx: Context) -> None:
    gen = seeded(14404)
    model = BogYieldNet()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    pooled: list[float] = []
    model.pool.register_forward_hook(
        lambda _m, _i, o: pooled.append(float(o.detach().float().abs().max()))
    )
    _train(ctx, model, opt, _bog_batches(gen), 300, F.mse_loss, scaler=scaler)
    bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check("loss non-finite first at step 89", bad == 89)
    ctx.check("finite for the first 30 steps", _finite(ctx.losses[:30]))
    ctx.check(
        "the pooled fp16 output is inf at that step, below 65504 at the start",
        bad is not None and math.isinf(pooled[bad]) and pooled[0] < 65504,
    )


# -- cheesemonger rind-age regressor: a hand-rolled decoupled weight decay with its sign flipped -


@scenario(
    family="cheesemonger_rind_age_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    diverges=None,
    heldout=True,
    note="Adagrad on rind features (colour, firmness, mould cover) with the team's hand-rolled "
    "decoupled weight decay, p.mul_(1 + lr * wd) where it should be p.mul_(1 - lr * wd): "
    "every step inflates the weights a little; once Adagrad's effective rate has decayed the "
    "fit cannot keep up and the loss climbs slowly, with no spike and no single bad step.",
)
def h144_cheesemonger_decay_sign(ctx: Context) -> None:
    gen = seeded(14405)
    model = Regressor(9, 40, depth=2, act=nn.Tanh)
    lr, wd = 0.05, 0.2
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    norms: list[float] = []

    def after(_step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # the bug: should be 1 - lr * wd
        norms.append(float(_flat_params(model).norm()))

    _train(ctx, model, opt, _tabular(gen, 9, 64, noise=0.05), 260, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _mean(ls[max(i - 5, 0) : i + 5]))
    ctx.check("loss fell first (its minimum is past step 10)", low > 10)
    ctx.check(
        "loss at the end >3x its smoothed minimum",
        _mean(ls[-10:]) > 3 * _mean(ls[low - 5 : low + 5]),
    )
    ctx.check("weight norm grew >3x", norms[-1] > 3 * norms[0])
    ctx.check("loss finite", _finite(ls))


# -- sumo bout-duration regressor: raw-second targets and SGD kill the second ReLU layer --------


@scenario(
    family="sumo_bout_duration_regressor",
    optimizer="SGD(momentum)",
    cause="loss_of_plasticity",
    where=("body.2", "body.3"),
    diverges=None,
    heldout=True,
    note="SGD with momentum 0.9 at lr 0.01 on tachiai features (mass, reach, stance, charge "
    "speed), the bout duration left in raw seconds (mean 30 s, the target standardisation "
    "step skipped). The first large MSE gradients push the second ReLU layer's "
    "pre-activations negative on every input; those units never fire again and the "
    "regressor is stuck predicting the mean duration.",
)
def h144_sumo_dead_relus(ctx: Context) -> None:
    gen = seeded(14406)
    model = Regressor(16, 64, depth=2, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = ((x, 30.0 + 20.0 * y) for x, y in _tabular(gen, 16, 64, noise=0.05))
    feats: dict[str, torch.Tensor] = {}
    model.body[3].register_forward_hook(lambda _m, _i, o: feats.__setitem__("h", o.detach()))
    probe_x, probe_y = next(data)

    def dead() -> float:
        with torch.no_grad():
            model(probe_x)
        return dead_fraction(feats["h"])

    dead0 = dead()
    _train(ctx, model, opt, data, 200, F.mse_loss)
    dead1 = dead()
    ctx.check("second-layer ReLUs dead at the start <10%", dead0 < 0.1)
    ctx.check("second-layer ReLUs dead at the end >90%", dead1 > 0.9)
    ctx.check(
        "stuck at the mean: last 20 losses >50% of the target variance",
        _mean(ctx.losses[-20:]) > 0.5 * float(probe_y.var()),
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- badminton shuttle-drop regressor: one shard of hawk-eye positions in millimetres ----------


@scenario(
    family="badminton_shuttle_drop_regressor",
    optimizer="RAdam",
    cause="data_outlier",
    diverges=None,
    heldout=True,
    onset=70,
    note="RAdam, MSE on hawk-eye features of a smash (contact height, racket speed, shuttle "
    "position at 10 ms, ...) to the landing distance. One shard came from a second camera "
    "rig that writes positions in millimetres instead of metres: the batch at step 70 has "
    "inputs ~1000x too large; its loss and gradient jump, the run then goes on.",
)
def h144_badminton_mm_shard(ctx: Context) -> None:
    gen = seeded(14407)
    model = Regressor(14, 48, depth=2, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    onset = 70
    x_max: list[float] = []

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:, :6] = x[:, :6] * 1000.0  # the position columns, in mm
        x_max.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _tabular(gen, 14, 64, noise=0.05), 200, F.mse_loss, alter=alter)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("the onset batch's inputs >100x the usual max", x_max[onset] > 100 * _median(x_max))
    ctx.check(
        "loss at onset >20x the median before", ls[onset] > 20 * _median(ls[onset - 20 : onset])
    )
    ctx.check("gradient at onset >20x the median before", g[onset] > 20 * _median(g[:onset]))
    ctx.check("loss finite", _finite(ls))


# -- theremin pitch tracker: resumed from a checkpoint without the optimizer state --------------


def _theremin_batches(gen, batch: int = 64, n: int = 24):
    t = torch.linspace(0, 1, n)
    while True:
        y = torch.randint(0, 12, (batch,), generator=gen)
        f = 2.0 * 2.0 ** (y.float() / 12.0)
        phase = 6.2832 * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        wave = amp * torch.sin(6.2832 * f[:, None] * t * 3.0 + phase)
        yield wave + 0.3 * torch.randn(batch, n, generator=gen), y


@scenario(
    family="theremin_pitch_tracker",
    optimizer="Adamax",
    cause="loss_spike",
    diverges=None,
    heldout=True,
    onset=100,
    note="Adamax, cross-entropy over 12 semitones from a noisy antenna-voltage window. The job "
    "is pre-empted and resumed at step 100; the resume code restores the model weights but "
    "not the optimizer state, so Adamax starts over with empty moments and takes a few "
    "sign-like steps at the full rate on every weight: the loss jumps, then the run recovers.",
)
def h144_theremin_resume_without_optimizer(ctx: Context) -> None:
    gen = seeded(14408)
    model = Regressor(24, 256, depth=2, act=nn.ReLU, n_out=12)
    opt = torch.optim.Adamax(model.parameters(), lr=0.01)
    onset = 100

    def before(step):
        if step == onset:
            opt.state.clear()  # the optimizer's state_dict was never loaded

    _train(
        ctx,
        model,
        opt,
        _theremin_batches(gen),
        220,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ls, g = ctx.losses, ctx.grad_norms
    base = _median(ls[onset - 20 : onset])
    ctx.check("loss jumps >2x within 5 steps of the resume", max(ls[onset : onset + 6]) > 2 * base)
    ctx.check(
        "the gradient at the resume is ordinary (<3x the median)",
        g[onset] < 3 * _median(g[onset - 20 : onset]),
    )
    ctx.check("recovered: last 20 steps within 1.2x the loss before", _mean(ls[-20:]) < 1.2 * base)
    ctx.check("loss finite", _finite(ls))


# -- handbell choir note classifier: an ordinary fp16 autocast run of a GroupNorm conv net ------


class HandbellNet(nn.Module):
    def __init__(self, classes: int = 8, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.gn1 = nn.GroupNorm(4, width)
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2, stride=2)
        self.gn2 = nn.GroupNorm(4, 2 * width)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.gelu(self.gn1(self.conv1(x[:, None])))
        h = F.gelu(self.gn2(self.conv2(h)))
        return self.head(h.mean(-1))


def _handbell_batches(gen, batch: int = 32, n: int = 64, classes: int = 8):
    t = torch.linspace(0, 1, n)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = 3.0 + 1.5 * y.float()
        decay = torch.exp(-t * (2.0 + 2.0 * torch.rand(batch, 1, generator=gen)))
        wave = decay * torch.sin(
            6.2832 * f[:, None] * t + 6.2832 * torch.rand(batch, 1, generator=gen)
        )
        yield wave + 0.2 * torch.randn(batch, n, generator=gen), y


@scenario(
    family="handbell_choir_note_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A Conv1d + GroupNorm net on decaying bell strikes (8 notes), fp16 autocast with a "
    "GradScaler, AdamW with OneCycleLR, label smoothing 0.1, clipping at 1.0 after unscale_.",
)
def h144_handbell_amp_onecycle_control(ctx: Context) -> None:
    gen = seeded(14409)
    model = HandbellNet()
    steps = 160
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _handbell_batches(gen),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
    )
    ctx.check("loss fell below 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("the GradScaler scale stayed >=1", min(ctx.scales) >= 1.0)
    ctx.check("loss finite", _finite(ctx.losses))


# -- hammered-dulcimer strike-velocity regressor: an ordinary accumulated SGD run ---------------


@scenario(
    family="dulcimer_hammer_velocity_regressor",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Plain SGD (no momentum) on noisy string-vibration features to the hammer velocity, "
    "Huber loss, gradient accumulation over 4 micro-batches of 16, clipping at 2.0, "
    "ReduceLROnPlateau on the loss, label noise on the targets.",
)
def h144_dulcimer_accum_plateau_control(ctx: Context) -> None:
    gen = seeded(14410)
    model = Regressor(20, 48, depth=2, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    data = _tabular(gen, 20, 16, noise=0.2)
    ctx.attach(model, opt)
    accum = 4
    for _step in range(150):
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=1.0)
            (loss / accum).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell below 70% of its start", _fell(ctx.losses, ratio=0.7))
    ctx.check("loss finite", _finite(ctx.losses))
