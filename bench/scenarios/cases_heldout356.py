"""Held-out set 356 (``h356_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a wheelwright's hub-mortise grade classifier trained
quantisation-aware (4-bit fake-quantised weights, straight-through estimator) whose head group's
lr is typed 3e-8 for 3e-3 (the head never moves), a hedge-layer's binder-stake tagger whose
multi-label BCE is fed per-tag counts where presence flags were meant (the head's logits grow
without bound), a thatcher's spar-yield regressor whose resumed step multiplies the loss by a
loss weight written in basis points (Adam's second moment poisoned), a kiteboard loop-class
classifier whose temperature is read in percent (softmax saturates), a fumarole sulphur-crust
Gaussian NLL net whose variance head has no softplus (log of a negative variance, NaN), a
sling-stone range regressor fed one shard in millimetres (one corrupted batch), a sculling
catch-angle regressor whose resumed step multiplies by the accumulation count where it divides
(one gradient burst), a sea-cave swell-boom deep ReLU Conv1d classifier whose init gain is
applied twice (gradients grow through depth), a stone-skimming impact-energy regressor that
converts speed to cm/s inside the fp16 autocast region (overflow), a rope-walk lay-angle ReLU
regressor whose Adamax lr is typed 0.5 for 0.005 (ReLUs die), and three controls (a gamelan
kempul stroke Conv1d classifier with learnt per-channel scales at a small rate; a pargeting
motif tied-weight autoencoder classifier on the digits with SGD Nesterov, OneCycleLR and label
smoothing; a pingo ice-mound lift Huber regressor under fp16 autocast with a GradScaler,
Adadelta, accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    digit_batches,
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _flat(model: nn.Module) -> torch.Tensor:
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
    alter=None,
    watch=None,
    after=None,
    weight=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``alter(step, x, y)`` changes a batch, ``watch(step, out, x,
    y)`` sees the forward pass, ``weight(step)`` multiplies the backpropagated loss (1 by
    default), ``after(step)`` runs after the optimizer step, ``plateau()`` gives the validation
    loss for a ReduceLROnPlateau ``sched``. Stops after a non-finite loss (once ``ctx.step`` has
    seen it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
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
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            w = weight(step) if weight is not None else 1.0
            total = loss * w / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
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


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, shift=0.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, shift + scale * y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=32, noise=0.3):
    """One-channel traces: a class-specific mix of two tones plus noise, (batch, 1, length)."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.5 + 3.0 * torch.rand(classes, 2, generator=g)
    phase = 6.28 * torch.rand(classes, 2, generator=g)
    t = torch.linspace(0, 6.28, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f, p = freqs[y], phase[y]
        sig = torch.sin(f[:, :1] * t + p[:, :1]) + 0.6 * torch.sin(f[:, 1:] * t + p[:, 1:])
        sig = sig + noise * torch.randn(batch, length, generator=gen)
        yield sig[:, None, :], y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
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


def _mean_abs_update(before: list[torch.Tensor], params: list[torch.Tensor]) -> float:
    num = sum(float((p.detach() - b).abs().sum()) for p, b in zip(params, before, strict=True))
    return num / sum(p.numel() for p in params)


# -- wheelwright hub mortise, quantisation-aware: head group's lr typed 3e-8 for 3e-3 -----------


class FakeQuantLinear(nn.Linear):
    """A linear layer whose weights are fake-quantised to signed 4-bit (per-tensor symmetric
    scale max|w| / 7) in the forward pass, with a straight-through estimator backward."""

    bits = 4

    def forward(self, x):
        qmax = 2 ** (self.bits - 1) - 1
        scale = self.weight.detach().abs().max().clamp_min(1e-8) / qmax
        q = torch.clamp(torch.round(self.weight / scale), -qmax - 1, qmax) * scale
        w = self.weight + (q - self.weight).detach()
        return F.linear(x, w, self.bias)


def _levels(w: torch.Tensor) -> torch.Tensor:
    """The signed 4-bit integer levels FakeQuantLinear gives ``w``."""
    w = w.detach()
    return torch.clamp(torch.round(w / (w.abs().max().clamp_min(1e-8) / 7)), -8, 7)


class MortiseGrader(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=5):
        super().__init__()
        self.fq1 = FakeQuantLinear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fq2 = FakeQuantLinear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = FakeQuantLinear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fq2(self.act1(self.fq1(x)))))


@scenario(
    family="wheelwright_hub_mortise_grade_qat_fake_quant_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written quantisation-aware ReLU classifier (fq1, act1, fq2, act2, head: every "
    "layer a FakeQuantLinear whose weights are fake-quantised to signed 4 bits per tensor in the "
    "forward pass with a straight-through estimator) grading a wheelwright's hub mortise (five "
    "grades) from sixteen gauge readings, AdamW with two parameter groups, cross-entropy, 220 "
    "steps. The head group's lr was typed 3e-8 for 3e-3: fq1 and fq2 train at 3e-3 while the "
    "head's latent weights move under 1e-4 of their norm over the whole run (its quantised "
    "weights never change a level), so the trunk learns against a frozen random head.",
)
def h356_wheelwright_qat_head_lr_typo(ctx: Context) -> None:
    gen = seeded(35601)
    model = MortiseGrader()
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.AdamW(
        [{"params": trunk, "lr": 3e-3}, {"params": head, "lr": 3e-8}], weight_decay=0.01
    )
    w_head = model.head.weight.detach().clone()
    w_fq1 = model.fq1.weight.detach().clone()
    q_head = _levels(model.head.weight)
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 35611, spread=1.3),
        220,
        F.cross_entropy,
        classifier=True,
    )
    ctx.check(
        "head's latent weights moved under 1e-4 of their norm",
        _rel_change(w_head, model.head.weight) < 1e-4,
    )
    ctx.check(
        "fq1's weights moved over 5% of their norm", _rel_change(w_fq1, model.fq1.weight) > 0.05
    )
    ctx.check(
        "head's quantised weights never changed",
        bool(torch.equal(_levels(model.head.weight), q_head)),
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- hedge-laying binder stakes: BCE fed per-tag counts for presence flags ------------------------


@scenario(
    family="hedge_layer_binder_stake_count_as_flag_bce_tagger",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP tagger (fc1, act1, fc2, act2, head) marking which of eight "
    "faults (split pleacher, loose binder, missing stake...) a laid hedge length has from twenty "
    "survey readings, multi-label BCE with logits, RMSprop at 2e-3, 240 steps. The label loader "
    "returns the survey's per-fault counts (0 to 3) where presence flags were meant (the "
    "clamp(max=1) was dropped in a refactor): for every target above 1 the BCE keeps falling as "
    "the logit rises, with no minimum, so the head's logits grow without bound (the peak logit "
    "over 20x its start and still rising at the end) and the loss goes negative and keeps "
    "falling, finite throughout.",
)
def h356_hedge_binder_counts_as_flags(ctx: Context) -> None:
    gen = seeded(35602)
    model = Trunk(20, 64, out=8, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(35612)
    proj = torch.randn(20, 8, generator=g)

    def survey():
        while True:
            x = torch.randn(64, 20, generator=gen)
            counts = torch.clamp(torch.round(1.2 * (x @ proj) / math.sqrt(20) + 0.8), 0, 3)
            yield x, counts

    peaks: list[float] = []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        survey(),
        240,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ctx.check(
        "peak logit over 20x its start at the end", _mean(peaks[-20:]) > 20 * _mean(peaks[:5])
    )
    ctx.check(
        "peak logit still rising at the end", _mean(peaks[-20:]) > 1.2 * _mean(peaks[-80:-60])
    )
    ctx.check("loss went negative", min(ctx.losses) < 0)
    ctx.check("loss finite", _finite(ctx.losses))


# -- thatcher's spar yield: resumed step multiplies the loss by a weight in basis points ---------

SPAR_ONSET = 100


@scenario(
    family="thatcher_hazel_spar_bundle_resume_basis_point_weight_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=SPAR_ONSET,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting how many spars a "
    "thatcher splits from a hazel bundle (standardised) from twelve readings of the rods, Adam at "
    "1e-3 (betas 0.9, 0.999), MSE, 260 steps. The run resumes at step 100 and the resume path "
    "reads the loss weight from an old config that stored it in basis points (10000 for 1.0), "
    "applied to that one step's loss only: one clean batch's gradient is 10000x, Adam's second "
    "moment takes 0.1% of its square and keeps it for thousands of steps, and once the first "
    "moment has forgotten the burst the mean per-weight update stays under a tenth of its size "
    "before while the gradients are not smaller; the loss stays finite and stops improving.",
)
def h356_thatcher_spar_basis_point_weight(ctx: Context) -> None:
    gen = seeded(35603)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    params = list(model.parameters())
    updates: list[float] = []
    prev: list[list[torch.Tensor]] = [[p.detach().clone() for p in params]]

    def after(step):
        updates.append(_mean_abs_update(prev[0], params))
        prev[0] = [p.detach().clone() for p in params]

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 35613),
        260,
        F.mse_loss,
        weight=lambda s: 10000.0 if s == SPAR_ONSET else 1.0,
        after=after,
    )
    g = ctx.grad_norms
    o = SPAR_ONSET
    ctx.check(
        "gradient at onset over 1000x the median before", g[o] > 1000 * _median(g[o - 30 : o])
    )
    ctx.check(
        "loss at onset is an ordinary batch's", ctx.losses[o] < 3 * _median(ctx.losses[o - 20 : o])
    )
    ctx.check(
        "mean update 80-160 steps later under a tenth of before",
        _mean(updates[o + 80 : o + 160]) < 0.1 * _mean(updates[o - 40 : o]),
    )
    ctx.check(
        "gradients later not smaller than before",
        _median(g[o + 80 : o + 160]) > 0.5 * _median(g[o - 40 : o]),
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- kiteboard loop class: temperature 2 read as a percentage -------------------------------------


class LoopClassifier(nn.Module):
    def __init__(self, d_in=14, hidden=64, classes=6, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="kiteboard_kiteloop_class_percent_temperature_silu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU classifier (fc1, act1, fc2, act2, head, logits divided by a "
    "temperature) naming which of six kiteloops a kiteboarder threw from fourteen kite and board "
    "readings, Adagrad at 0.05, cross-entropy, 220 steps. The temperature 2 is given in the "
    "config in percent (2) and the loader divides by 100 to get a fraction, so the logits are "
    "divided by 0.02: the softmax saturates and late in the run over half the rows' target "
    "probability is exactly 1.0 in float32.",
)
def h356_kiteboard_temperature_percent(ctx: Context) -> None:
    gen = seeded(35604)
    model = LoopClassifier(temperature=2 / 100)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    fractions: list[float] = []
    meant: list[float] = []

    def watch(step, out, x, y):
        fractions.append(collapsed_fraction(out.detach(), y))
        meant.append(collapsed_fraction(out.detach() * model.temperature / 2.0, y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 35614, spread=1.2),
        220,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' target probability exactly 1.0 late", _mean(fractions[-30:]) > 0.5
    )
    ctx.check(
        "with the meant temperature 2 the same logits give almost none",
        _mean(meant[-30:]) < 0.05,
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- fumarole sulphur crust: Gaussian NLL with a variance head and no softplus -------------------


class GaussianNLL(nn.Module):
    """Per-sample Gaussian negative log-likelihood, 0.5 log var + (y - mu)^2 / (2 var)."""

    def forward(self, mu, var, y):
        return 0.5 * torch.log(var) + (y - mu) ** 2 / (2 * var)


class CrustNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        self.nll = GaussianNLL()
        nn.init.constant_(self.var_head.bias, 1.0)
        nn.init.normal_(self.var_head.weight, std=0.01)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        # the variance should go through softplus; it was left raw
        return torch.cat([self.mean_head(h), self.var_head(h)], -1)


FUMAROLE_NAN = 42


@scenario(
    family="fumarole_sulphur_crust_growth_raw_variance_gaussian_nll_net",
    optimizer="SGD",
    cause="nonfinite",
    where=("nll", "var_head"),
    diverges=FUMAROLE_NAN,
    heldout=True,
    note="A hand-written tanh net (fc1, act1, fc2, act2, mean_head, var_head, nll) predicting the "
    "weekly growth of a sulphur crust round a fumarole vent (standardised) and its uncertainty "
    "from ten gas and temperature readings, Gaussian NLL in the model's nll module, plain SGD at "
    "0.02, 200 steps planned. The variance head's output was meant to pass through softplus and "
    "was left raw: as the fit tightens the NLL drives the variance of well-fitted samples towards "
    "their tiny squared residual, a step overshoots below zero, and log of a negative variance "
    "gives NaN.",
)
def h356_fumarole_raw_variance(ctx: Context) -> None:
    gen = seeded(35605)
    model = CrustNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    low: list[float] = []

    def loss_fn(out, y):
        return model.nll(out[:, 0], out[:, 1], y).mean()

    def watch(step, out, x, y):
        low.append(float(out[:, 1].detach().min()))

    _loop(ctx, model, opt, _readings(gen, 64, 10, 35615, noise=0.03), 200, loss_fn, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(
        f"loss NaN at step {FUMAROLE_NAN}", bad == FUMAROLE_NAN and math.isnan(ctx.losses[bad])
    )
    ctx.check("a predicted variance went negative at the NaN", bad is not None and low[bad] < 0)
    ctx.check("every variance positive before", bad is not None and min(low[:bad]) > 0)


# -- sling-stone range: one shard logged in millimetres ------------------------------------------

SLING_ONSET = 120


@scenario(
    family="balearic_sling_stone_range_mm_shard_silu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SLING_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a Balearic slinger's "
    "range (standardised) from eight readings of the cord length, release angle and stone, SGD "
    "with momentum 0.9 at 0.01, MSE, clipping at 1, 240 steps. One field session's shard at step "
    "120 was logged in millimetres where metres were expected and skipped standardisation: its "
    "readings are 1000x, the loss and the gradient on that batch are over 20x, the clip holds "
    "the step and the run recovers.",
)
def h356_sling_stone_mm_shard(ctx: Context) -> None:
    gen = seeded(35606)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def alter(step, x, y):
        return (x * 1000.0, y) if step == SLING_ONSET else (x, y)

    _loop(ctx, model, opt, _readings(gen, 64, 8, 35616), 240, F.mse_loss, alter=alter, clip=1.0)
    o = SLING_ONSET
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at onset over 20x the median before", ls[o] > 20 * _median(ls[o - 20 : o]))
    ctx.check("gradient at onset over 20x the median before", g[o] > 20 * _median(g[o - 20 : o]))
    ctx.check(
        "recovered: last 20 under 2x the 20 before onset",
        _mean(ls[-20:]) < 2 * _mean(ls[o - 20 : o]),
    )
    ctx.check("loss finite", _finite(ls))


# -- sculling catch angle: resume multiplies by the accumulation count ---------------------------

SCULL_ONSET = 140


@scenario(
    family="sculling_catch_angle_accum_resume_gelu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SCULL_ONSET,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a sculler's catch angle "
    "(standardised) from ten oarlock and seat readings, SGD Nesterov (momentum 0.9) at 0.02, MSE, "
    "gradient accumulation over 8 micro-batches of 16, clipping at 1, 240 steps. The resume at "
    "step 140 rebuilds the accumulation loop and multiplies each micro-batch's loss by the "
    "accumulation count where it divides, for that one step: the gradient is 64x on clean data "
    "(the loss is ordinary), the clip holds the step and the run recovers.",
)
def h356_sculling_accum_multiply(ctx: Context) -> None:
    gen = seeded(35607)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 16, 10, 35617),
        240,
        F.mse_loss,
        accumulate=8,
        weight=lambda s: 64.0 if s == SCULL_ONSET else 1.0,
        clip=1.0,
    )
    o = SCULL_ONSET
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient at onset over 30x the median before", g[o] > 30 * _median(g[o - 20 : o]))
    ctx.check(
        "loss at onset ordinary (under 2x the median before)", ls[o] < 2 * _median(ls[o - 20 : o])
    )
    ctx.check(
        "recovered: last 20 under 2x the 20 before onset",
        _mean(ls[-20:]) < 2 * _mean(ls[o - 20 : o]),
    )
    ctx.check("loss finite", _finite(ls))


# -- sea-cave swell boom: deep ReLU Conv1d with the init gain applied twice -----------------------


class BoomNet(nn.Module):
    def __init__(self, depth=14, channels=16, classes=4):
        super().__init__()
        self.stem = nn.Conv1d(1, channels, 3, padding=1)
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, 3, padding=1) for _ in range(depth)
        )
        self.head = nn.Linear(channels, classes)
        self.hidden: list[torch.Tensor] = []
        gain = nn.init.calculate_gain("relu")
        for conv in [self.stem, *self.convs]:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            with torch.no_grad():
                conv.weight.mul_(gain)  # the gain is already in kaiming_normal_
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        h = F.relu(self.stem(x))
        self.hidden = []
        for conv in self.convs:
            h = F.relu(conv(h))
            if h.requires_grad:
                h.retain_grad()
            self.hidden.append(h)
        return self.head(h.mean(-1))


@scenario(
    family="sea_cave_swell_boom_deep_relu_conv1d_classifier",
    optimizer="RAdam",
    cause="exploding_gradients",
    where=("convs.0",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d stack (stem, convs.0 to convs.13, head on the mean over time, "
    "no normalisation) naming which of four swell states a sea cave's boom comes from in a "
    "32-sample pressure trace, RAdam at 1e-3, cross-entropy, clipping at 1, 160 steps. The init "
    "multiplies kaiming_normal_(nonlinearity='relu') weights by calculate_gain('relu') again, so "
    "every layer doubles the signal's variance: the gradient at convs.0's output is over 20x that "
    "at convs.13's at the start and still over 5x at the end, and the loss starts at several "
    "times chance.",
)
def h356_sea_cave_double_gain(ctx: Context) -> None:
    gen = seeded(35608)
    model = BoomNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ratios: list[float] = []

    def after(step):
        hs = model.hidden
        if hs and hs[0].grad is not None and hs[-1].grad is not None:
            ratios.append(float(hs[0].grad.norm() / hs[-1].grad.norm().clamp_min(1e-30)))

    # the ratio needs the activations' gradients, read before zero_grad (after the step)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 4, 35618),
        160,
        F.cross_entropy,
        classifier=True,
        after=after,
        clip=1.0,
    )
    ctx.check("convs.0's output gradient over 20x convs.13's at the start", _mean(ratios[:5]) > 20)
    ctx.check("still over 5x at the end", _mean(ratios[-20:]) > 5)
    ctx.check("loss starts over 3x chance", _mean(ctx.losses[:3]) > 3 * math.log(4))
    ctx.check("loss finite", _finite(ctx.losses))


# -- stone skimming impact energy: speed converted to cm/s inside fp16 autocast ------------------


class ToEnergy(nn.Module):
    """Kinetic energy of a 0.1 kg stone from its speed in m/s, through a unit library that works
    in cm/s: 0.5 m (100 v)^2 / 1e4. Fine in float32; under fp16 autocast (100 v)^2 passes 65504
    once |v| > 2.56."""

    def forward(self, v):
        v_cm = v * 100.0
        return 0.5 * 0.1 * (v_cm * v_cm) / 1e4


class SkimNet(nn.Module):
    def __init__(self, d_in=9, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.speed_head = nn.Linear(hidden, 1)
        self.to_energy = ToEnergy()

    def forward(self, x):
        v = self.speed_head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        return self.to_energy(v)


SKIM_INF = 25


@scenario(
    family="stone_skimming_impact_energy_cm_units_fp16_silu_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("to_energy",),
    diverges=SKIM_INF,
    heldout=True,
    note="A hand-written SiLU net (fc1, act1, fc2, act2, speed_head, to_energy) predicting a "
    "skimming stone's impact energy in joules from nine throw readings by predicting its speed "
    "(m/s) and converting, NAdam at 1e-3, MSE, fp16 autocast with a GradScaler, 200 steps planned. "
    "The conversion goes through a unit library that works in cm/s, 0.5 m (100 v)^2 / 1e4, and "
    "sits inside the autocast region: the speeds the data need reach 4 m/s, (100 v)^2 passes "
    "65504 once v passes 2.56, the energy overflows to inf in fp16 and the loss is inf, while the "
    "same batch in float32 is finite.",
)
def h356_skimming_energy_fp16_units(ctx: Context) -> None:
    gen = seeded(35609)
    model = SkimNet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    g = torch.Generator().manual_seed(35619)
    w = torch.randn(9, generator=g)
    last: list[torch.Tensor] = []

    def throws():
        while True:
            x = torch.randn(64, 9, generator=gen)
            v = 2.0 + 1.6 * torch.tanh(x @ w / 3.0)
            yield x, 0.5 * 0.1 * v * v

    def watch(step, out, x, y):
        last[:] = [x]

    _loop(ctx, model, opt, throws(), 200, F.mse_loss, scaler=scaler, amp=True, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(f"loss inf at step {SKIM_INF}", bad == SKIM_INF and math.isinf(ctx.losses[bad]))
    with torch.no_grad():
        fp32 = model(last[0]) if last else torch.tensor([float("nan")])
    ctx.check("the same batch is finite in float32", bool(torch.isfinite(fp32).all()))


# -- rope-walk lay angle: Adamax lr typed 0.5 for 0.005 ------------------------------------------


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


@scenario(
    family="rope_walk_strand_lay_angle_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the lay angle a "
    "ropemaker gets on a rope walk (standardised) from eleven readings of the strands, the "
    "traveller and the twist, Adamax, MSE, 220 steps. The lr was typed 0.5 for 0.005: the first "
    "steps throw fc2's biases and weights far negative, over half of act2's units are never "
    "positive on a batch for the last 50 steps, and the loss, after a burst in the first "
    "steps, settles above where it started and stops improving.",
)
def h356_rope_walk_adamax_lr_typo(ctx: Context) -> None:
    gen = seeded(35610)
    model = Trunk(11, 64)
    opt = torch.optim.Adamax(model.parameters(), lr=0.5)
    dead: list[float] = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(_dead(model.features(x)))

    _loop(ctx, model, opt, _readings(gen, 64, 11, 35620), 220, F.mse_loss, watch=watch)
    ctx.check("over half of act2's units dead for the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("under 20% dead at the start", dead[0] < 0.2)
    ctx.check("loss of the last 20 steps over its first", _mean(ctx.losses[-20:]) > ctx.losses[0])
    ctx.check("loss finite", _finite(ctx.losses))


# -- controls ------------------------------------------------------------------------------------


class ScaledBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 5, padding=2)
        self.norm = nn.GroupNorm(4, channels)
        self.scale = nn.Parameter(torch.full((channels, 1), 0.1))

    def forward(self, x):
        return x + self.scale * F.gelu(self.norm(self.conv(x)))


class KempulNet(nn.Module):
    def __init__(self, channels=16, classes=5):
        super().__init__()
        self.stem = nn.Conv1d(1, channels, 5, padding=2)
        self.block1 = ScaledBlock(channels)
        self.block2 = ScaledBlock(channels)
        self.head = nn.Linear(4 * channels, classes)

    def forward(self, x):
        h = self.block2(self.block1(self.stem(x)))
        return self.head(F.adaptive_avg_pool1d(h, 4).flatten(1))


@scenario(
    family="gamelan_kempul_stroke_channel_scale_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written residual GELU Conv1d classifier (stem, block1, block2 each conv, "
    "GroupNorm and a learnt per-channel scale initialised at 0.1, head on four time-pooled "
    "segments) naming which of five kempul gongs was struck from a 32-sample trace, AdamW at 2e-3 with "
    "weight decay 0.01 and a second group holding the per-channel scales at 2e-4 with no decay, "
    "linear warm-up over 20 steps then cosine, clipping at 1, cross-entropy, 200 steps: a "
    "healthy control.",
)
def h356_kempul_channel_scales_control(ctx: Context) -> None:
    gen = seeded(35621)
    model = KempulNet()
    scales = [p for n, p in model.named_parameters() if n.endswith("scale")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("scale")]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 2e-3, "weight_decay": 0.01},
            {"params": scales, "lr": 2e-4, "weight_decay": 0.0},
        ]
    )
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))
        ),
    )
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 35622),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell under 0.6x its start", _fell(ctx.losses, 10, 0.6))
    ctx.check("loss finite", _finite(ctx.losses))


class TiedMotifNet(nn.Module):
    """Encoder and decoder share one weight (decoder uses its transpose); a head classifies."""

    def __init__(self, d_in=64, code=32, classes=10):
        super().__init__()
        self.encoder = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.decoder_bias = nn.Parameter(torch.zeros(d_in))
        self.head = nn.Linear(code, classes)
        self.recon: torch.Tensor | None = None

    def forward(self, x):
        z = self.act(self.encoder(x))
        self.recon = F.linear(z, self.encoder.weight.t(), self.decoder_bias)
        return self.head(z)


@scenario(
    family="pargeting_motif_stamp_tied_autoencoder_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tied-weight autoencoder classifier (encoder, act, decoder sharing the "
    "encoder's weight transposed, head) reading a pargeter's stamped motif as an 8x8 digit image "
    "(the digits) and naming it, cross-entropy with label smoothing 0.1 plus half the "
    "reconstruction MSE, SGD Nesterov (momentum 0.9) under OneCycleLR to 0.1, clipping at 2, 200 "
    "steps: a healthy control.",
)
def h356_pargeting_tied_autoencoder_control(ctx: Context) -> None:
    gen = seeded(35623)
    model = TiedMotifNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    batches = digit_batches(gen, 64)
    xs: list[torch.Tensor] = []

    def loss_fn(out, y):
        ce = F.cross_entropy(out, y, label_smoothing=0.1)
        return ce + 0.5 * F.mse_loss(model.recon, xs[-1])

    def alter(step, x, y):
        xs[:] = [x]
        return x, y

    _loop(
        ctx, model, opt, batches, 200, loss_fn, classifier=True, alter=alter, clip=2.0, sched=sched
    )
    ctx.check("loss fell under 0.6x its start", _fell(ctx.losses, 10, 0.6))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="pingo_ice_mound_lift_fp16_adadelta_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a pingo's yearly lift "
    "(standardised) from twelve permafrost and groundwater readings with noisy targets, Huber "
    "loss, Adadelta at lr 1.0, fp16 autocast with a GradScaler, accumulation over 2 micro-batches "
    "of 32, ReduceLROnPlateau on a held-out batch, clipping at 1, 200 steps: a healthy control.",
)
def h356_pingo_fp16_adadelta_control(ctx: Context) -> None:
    gen = seeded(35624)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    data = _readings(gen, 32, 12, 35625, noise=0.3)
    vx, vy = next(_readings(torch.Generator().manual_seed(35626), 256, 12, 35625, noise=0.3))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(vx), vy))

    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.huber_loss,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    ctx.check("loss fell under 0.8x its start", _fell(ctx.losses, 10, 0.8))
    ctx.check("loss finite", _finite(ctx.losses))
