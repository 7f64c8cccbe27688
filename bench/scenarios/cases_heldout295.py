"""Held-out set 295 (``h295_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a kitesurf boost-airtime two-group regressor whose trunk lr
was typed 3e-8 for 3e-4, a lake-seiche spectrum MLP under fp16 autocast with a sum-reduced loss
on raw decibels, a tea-garden flush-grade cumulative-link (ordinal) net fed the taster's grade as
a feature, a ropewalk lay-angle GELU regressor whose restart step reads the loss weight from the
sample-count field (Adam's second moment poisoned), a maple evaporator draw-off detector taking
the log of a reading that can be 0, a wheelwright felloe dish-depth regressor fed one workshop's
batch in millimetres, a gondolier forcola stroke-power regressor whose validation pass
backpropagated into the next step, a tidal-bore wave-train Elman RNN with recurrent gain 3, a
thatcher's hazel-spar yield regressor with a weight-decay sign bug, a sundial equation-of-time
regressor whose StepLR gamma was typed 10, and three controls (a woodpecker drumming-bout Poisson
net with warm-up, a kintsugi crack-profile tied autoencoder, a tabla bayan glide conv1d classifier
under fp16 autocast with a GradScaler).

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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    weight=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step, ``weight(step)`` multiplies the backpropagated loss (the logged loss is
    the unweighted one); ``amp``: fp16 autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        w = weight(step) if weight is not None else 1.0
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
            total = w * loss / accumulate
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
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _counts(gen, batch, d_in, seed):
    """Poisson counts whose log-rate is a smooth function of standardised readings."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(1.0 + 0.8 * torch.tanh(x @ w / math.sqrt(d_in)))
        yield x, torch.poisson(rate, generator=gen)


# -- kitesurf: the trunk group's lr typed 3e-8 for 3e-4 -----------------------------------------


@scenario(
    family="kitesurf_boost_airtime_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a kitesurfer's airtime on a boost from 12 standardised readings (wind speed, kite size, rider mass, board speed, line length), RMSprop with two param groups: the trunk fc1 at cfg['trunk_lr'], the rest at 3e-3, MSE. The config typed the trunk lr as 3e-8 instead of 3e-4, so fc1 moves by about 1e-8 per weight and step: over the whole run it moves by under 1e-4 of its norm (a per-step update ratio |dW|/|W| around 1e-7) while fc2 and the head train and the loss falls as far as they can take it.",
)
def h295_kitesurf_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(29501)
    model = Stack(12, 64)
    cfg = {"trunk_lr": 3e-8, "lr": 3e-3}
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": cfg["trunk_lr"]},
            {"params": rest, "lr": cfg["lr"]},
        ],
        lr=cfg["lr"],
    )
    fc1_0, fc2_0 = _flat(model.fc1), _flat(model.fc2)
    _train(ctx, model, opt, _readings(gen, 64, 12, seed=2951), 200, F.mse_loss)
    moved1 = float((_flat(model.fc1) - fc1_0).norm()) / float(fc1_0.norm())
    moved2 = float((_flat(model.fc2) - fc2_0).norm()) / float(fc2_0.norm())
    ctx.check("fc1 moved under 1e-4 of its norm over the run", moved1 < 1e-4)
    ctx.check("fc2 moved over 5% of its norm", moved2 > 0.05)
    ctx.check("the loss still fell", _fell(ctx.losses))


# -- lake seiche: sum-reduced loss on raw decibels under fp16 autocast --------------------------


def _seiche(gen, batch, d_in=16, bins=64):
    """Readings -> a 64-bin water-level spectrum in raw dB (about 60 to 90)."""
    g = torch.Generator().manual_seed(2952)
    w = torch.randn(d_in, bins, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, 75.0 + 10.0 * torch.tanh(x @ w) + 0.5 * torch.randn(batch, bins, generator=gen)


@scenario(
    family="lake_seiche_spectrum_fp16_sum_loss_mlp",
    optimizer="Adam",
    cause="amp_overflow",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head with 64 outputs) predicting the 64-bin water-level spectrum of a lake seiche from 16 standardised readings (wind stress, pressure jump, fetch, basin depth), Adam at 1e-3, fp16 autocast with a torch.amp.GradScaler (initial scale 65536, growth_interval 20 copied from a tutorial). The targets are left in raw decibels (60 to 90) instead of being standardised, and the loss is MSE with reduction='sum' over the batch and the 64 bins: the gradient reaching the fp16 head is the dB error times the scale, so the fp16 backward overflows to inf at the initial scale and again each time the scaler grows its scale back; steps are skipped over and over and the scale falls over 1000x.",
)
def h295_lake_seiche_fp16_sum_db(ctx: Context) -> None:
    gen = seeded(29502)
    model = Stack(16, 64, out=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0, growth_interval=20)
    _train(
        ctx,
        model,
        opt,
        _seiche(gen, 64),
        160,
        lambda out, y: F.mse_loss(out, y, reduction="sum"),
        scaler=scaler,
        amp=True,
    )
    sc = ctx.scales
    skipped = sum(1 for a, b in zip(sc[:-1], sc[1:], strict=False) if b < a) + (sc[0] < 65536.0)
    ctx.check("the GradScaler's scale fell over 1000x", min(sc) < 65536.0 / 1000)
    ctx.check("over 15 steps skipped for overflow", skipped > 15)
    ctx.check("the logged loss stayed finite", _finite(ctx.losses))


# -- tea garden: a cumulative-link classifier fed the taster's grade ----------------------------

GRADES = 5


class CumulativeLink(nn.Module):
    """An ordinal (cumulative-logit) classifier: a scalar score from fc1, act1, fc2, act2, head;
    P(grade <= k) = sigmoid(cut_k - score) with ordered cut points."""

    def __init__(self, d_in, hidden=64, grades=GRADES):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)
        self.cut0 = nn.Parameter(torch.tensor(-1.5))
        self.gaps = nn.Parameter(torch.zeros(grades - 2))

    def score(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)

    def cuts(self):
        steps = F.softplus(self.gaps) + 1e-3
        return torch.cat([self.cut0[None], self.cut0 + torch.cumsum(steps, 0)])

    def forward(self, x):
        """Log-probabilities of the grades."""
        cdf = torch.sigmoid(self.cuts()[None] - self.score(x)[:, None])
        ones = torch.ones_like(cdf[:, :1])
        probs = torch.cat([cdf, ones], 1) - torch.cat([torch.zeros_like(ones), cdf], 1)
        return torch.log(probs.clamp_min(1e-12))


def _tea(gen, batch, d_in=10, leak=False):
    g = torch.Generator().manual_seed(2953)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        latent = x @ w / math.sqrt(d_in) + 0.6 * torch.randn(batch, generator=gen)
        y = torch.bucketize(latent, torch.tensor([-1.0, -0.35, 0.35, 1.0]))
        if leak:
            x = torch.cat([x[:, :-1], (y.float() - 2.0)[:, None]], 1)
        yield x, y


@scenario(
    family="tea_garden_flush_grade_cumulative_link_net",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="An ordinal cumulative-link classifier (fc1, act1, fc2, act2, head giving one score; P(grade <= k) = sigmoid(cut_k - score) with ordered cut points) grading a tea garden's flush into 5 grades from 10 standardised leaf readings (leaf length, moisture, bud ratio, altitude), Adamax at 3e-2, no weight decay, NLL of the ordinal distribution. A join in the feature pipeline replaced the last reading with the taster's grade itself, so the training grades are perfectly separable along one input: the NLL keeps paying for a larger margin and the head's score (the output logit) grows without bound, over 20x its init and past 15 in magnitude and still growing at the end, while the loss keeps falling towards zero. No blow-up.",
)
def h295_tea_garden_grade_leak(ctx: Context) -> None:
    gen = seeded(29503)
    model = CumulativeLink(10)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-2)
    probe = next(_tea(torch.Generator().manual_seed(5), 256, leak=True))[0]

    def peak():
        with torch.no_grad():
            return float(model.score(probe).abs().max())

    peaks = [peak()]

    def after(step):
        if step % 10 == 9:
            peaks.append(peak())

    _train(
        ctx,
        model,
        opt,
        _tea(gen, 64, leak=True),
        300,
        F.nll_loss,
        classifier=True,
        after=after,
    )
    ctx.check("the head's peak score grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the head's peak score passed 15", peaks[-1] > 15)
    ctx.check("the score still grew over the last 100 steps", peaks[-1] > 1.1 * peaks[-11])
    ctx.check("finite throughout", _finite(ctx.losses))


# -- ropewalk: the restart step reads the loss weight from the sample-count field ---------------

ONSET_ROPE = 60


@scenario(
    family="ropewalk_cordage_lay_angle_gelu_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ROPE,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the lay angle a ropewalk's cordage settles at from 10 standardised readings (yarn count, strand twist, forming tension, fibre), AdamW at 1e-3 (betas 0.9, 0.999, weight decay 0.01), MSE. The job is restarted at step 60 and the restart code unpacks the checkpoint's metadata tuple in the wrong order, so the loss weight is the dataset's sample count (50,000) for that one step, on an ordinary batch. Adam normalises the step itself, but the one gradient over 10,000x the usual fills the second moment, which decays only as 0.999^t: every later update is over 10x smaller and the loss, still falling before the restart, stalls.",
)
def h295_ropewalk_restart_weight(ctx: Context) -> None:
    gen = seeded(29504)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    moves: list[float] = []
    prev = [_flat(model)]

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=2954),
        200,
        F.mse_loss,
        weight=lambda s: 50000.0 if s == ONSET_ROPE else 1.0,
        after=after,
    )
    g = ctx.grad_norms
    base = _median(g[ONSET_ROPE - 20 : ONSET_ROPE])
    ctx.check("the gradient at the restart is over 10,000x the usual", g[ONSET_ROPE] > 1e4 * base)
    before_moves = _median(moves[ONSET_ROPE - 20 : ONSET_ROPE])
    ctx.check(
        "updates after the restart are over 10x smaller than before",
        _median(moves[ONSET_ROPE + 10 : ONSET_ROPE + 110]) < 0.1 * before_moves,
    )
    ls = ctx.losses
    ctx.check(
        "the loss falls before the restart and stalls after it",
        _mean(ls[ONSET_ROPE - 10 : ONSET_ROPE]) < 0.8 * _mean(ls[:10])
        and _mean(ls[-20:]) > 0.8 * _mean(ls[ONSET_ROPE + 1 : ONSET_ROPE + 21]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- maple evaporator: log of a reading that can be 0 -------------------------------------------

ONSET_MAPLE = 80


class LogFeatures(nn.Module):
    """log of the raw positive readings (sap flow, brix, pan temperature rise), no clamp."""

    def forward(self, x):
        return torch.log(x)


class DrawOffNet(nn.Module):
    def __init__(self, d_in=6, hidden=32):
        super().__init__()
        self.logf = LogFeatures()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.logf(x)))).squeeze(-1)


def _maple(gen, batch, d_in=6):
    g = torch.Generator().manual_seed(2955)
    w = torch.randn(d_in, generator=g)
    while True:
        z = 0.5 * torch.randn(batch, d_in, generator=gen)
        y = ((z @ w + 0.3 * torch.randn(batch, generator=gen)) > 0).float()
        yield torch.exp(z), y


@scenario(
    family="maple_evaporator_draw_off_log_feature_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logf",),
    diverges=ONSET_MAPLE,
    heldout=True,
    onset=ONSET_MAPLE,
    note="A hand-written detector (logf = log of the raw readings, fc1, act1, head) deciding whether a maple-syrup evaporator pan is ready to draw off from 6 positive readings (sap flow, brix, pan temperature rise, flue draught), NAdam at 3e-3, BCE with logits. The log feature layer has no clamp; the readings were always positive until, at step 80, a refractometer with an empty sample cup reported brix exactly 0.0 for one sample: log(0) = -inf, fc1 turns it into inf - inf = NaN, and the loss is NaN from step 80.",
)
def h295_maple_log_zero_reading(ctx: Context) -> None:
    gen = seeded(29505)
    model = DrawOffNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == ONSET_MAPLE:
            x = x.clone()
            x[7, 1] = 0.0
        return x, y

    _train(ctx, model, opt, _maple(gen, 64), 140, F.binary_cross_entropy_with_logits, alter=alter)
    ls = ctx.losses
    ctx.check("finite before the empty cup", _finite(ls[:ONSET_MAPLE]))
    ctx.check("the loss is NaN at step 80", len(ls) > ONSET_MAPLE and math.isnan(ls[ONSET_MAPLE]))
    ctx.check(
        "the loss fell before", _mean(ls[ONSET_MAPLE - 10 : ONSET_MAPLE]) < 0.9 * _mean(ls[:10])
    )


# -- wheelwright: one workshop's batch in millimetres -------------------------------------------

ONSET_WHEEL = 120


@scenario(
    family="wheelwright_felloe_dish_depth_relu_regressor",
    optimizer="RAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_WHEEL,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how deep a wheelwright's wheel dishes after tyring from 10 standardised readings (spoke angle, felloe section, tyre shrink, hub size), RAdam at 3e-3, MSE, clipping at 1.0. The targets are standardised dish depths, but one workshop's CSV recorded the depth in millimetres and its rows skipped the standardisation: the batch at step 120 carries 8 rows whose targets are about 1000x the rest. The loss and gradient jump by orders of magnitude on that batch, clipping bounds the step and the run recovers.",
)
def h295_wheelwright_mm_batch(ctx: Context) -> None:
    gen = seeded(29506)
    model = Stack(10, 64)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == ONSET_WHEEL:
            y = y.clone()
            y[:8] = 1000.0 * (y[:8].abs() + 0.5)
        return x, y

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=2956), 220, F.mse_loss, alter=alter, clip=1.0
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_WHEEL - 20 : ONSET_WHEEL])
    ctx.check("the loss on the bad batch is over 1000x the usual", ls[ONSET_WHEEL] > 1000 * pre)
    ctx.check(
        "the gradient on the bad batch is over 100x the usual",
        g[ONSET_WHEEL] > 100 * _median(g[ONSET_WHEEL - 20 : ONSET_WHEEL]),
    )
    ctx.check("the run recovered", _mean(ls[-20:]) < 2.0 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- gondolier: the validation pass backpropagated into the next training step ------------------

ONSET_GOND = 100


@scenario(
    family="gondolier_forcola_stroke_power_silu_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_GOND,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the power of a gondolier's stroke against the forcola from 10 standardised readings (oar angle, stroke rate, boat speed, load), SGD momentum 0.9 at 1e-2, Huber loss, clipping at 1.0. At step 100 the mid-run validation pass, written without torch.no_grad, calls loss.backward() on each of its 60 validation batches to log a gradient norm, and the training loop only zeroes the gradient after optimizer.step(): the gradients of 60 batches pile into step 100's, one gradient burst over 10x the usual from ordinary data. Clipping bounds the step and the run goes on.",
)
def h295_gondolier_validation_backward(ctx: Context) -> None:
    gen = seeded(29507)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    val = _readings(torch.Generator().manual_seed(77), 64, 10, seed=2957)

    def before(step):
        if step == ONSET_GOND:
            for _ in range(60):
                x, y = next(val)
                F.huber_loss(model(x), y).backward()

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=2957),
        200,
        F.huber_loss,
        before=before,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    base = _median(g[ONSET_GOND - 20 : ONSET_GOND])
    ctx.check("the gradient at step 100 is over 10x the usual", g[ONSET_GOND] > 10 * base)
    ctx.check(
        "the batch at step 100 is ordinary",
        ls[ONSET_GOND] < 2.0 * _mean(ls[ONSET_GOND - 10 : ONSET_GOND]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- tidal bore: an Elman RNN with recurrent gain 3 ---------------------------------------------


class BoreRNN(nn.Module):
    """A hand-written Elman RNN over 40 gauge readings: h = tanh(inp(x_t) + rec(h)), head."""

    def __init__(self, d_in=3, hidden=32, gain=3.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _bore(gen, batch, length=40):
    """Gauge readings (level, flow, wind) and the height of the bore's wave train."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh(x[:, -5:, 0].mean(1) + 0.5 * x[:, -3:, 1].mean(1))
        yield x, y


@scenario(
    family="tidal_bore_wave_train_elman_rnn",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written Elman RNN (inp, rec, head; h = tanh(inp(x_t) + rec(h))) reading 40 river-gauge readings (level, flow, wind) to regress the height of a tidal bore's wave train, Adagrad at 0.05, MSE, clipping at 1.0. The recurrent weight was initialised with nn.init.orthogonal_(gain=3.0), a gain copied from the input layer's init, instead of 1.0: the recurrence is in the chaotic regime and the gradient grows back through time, the gradient at the first hidden state over 100x the one at the last. Clipping keeps the run finite but it barely learns.",
)
def h295_tidal_bore_rnn_gain(ctx: Context) -> None:
    gen = seeded(29508)
    model = BoreRNN()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ratios: list[float] = []
    batches = _bore(gen, 32)
    ctx.attach(model, opt)
    for _step in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        first = float(model.states[0].grad.norm())
        last = float(model.states[-1].grad.norm())
        ratios.append(first / max(last, 1e-12))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the gradient at the first state is over 100x the last's", _median(ratios) > 100)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- thatcher: the weight-decay sign flipped -----------------------------------------------------


@scenario(
    family="thatcher_hazel_spar_yield_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how many usable spars a thatcher splits from a hazel rod from 10 standardised readings (rod length, diameter, straightness, seasoning), plain SGD at 2e-2, MSE, with a hand-written decoupled weight decay (wd 0.5) applied after each step. The decay line reads p.add_(p, alpha=lr * wd) instead of alpha=-lr * wd: every weight is multiplied by 1.01 each step. The loss falls at first, then the growing weights saturate the tanh units and the loss climbs slowly for the rest of the run.",
)
def h295_thatcher_decay_sign(ctx: Context) -> None:
    gen = seeded(29509)
    model = Stack(10, 64, act=nn.Tanh)
    lr, wd = 2e-2, 0.5
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    norm0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # meant: alpha=-lr * wd

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=2959), 250, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, 100, 10))
    ctx.check("the loss at the end is over 2x its early low", _mean(ls[-20:]) > 2.0 * low)
    ctx.check("the weight norm grew over 3x", float(_flat(model).norm()) > 3.0 * norm0)
    ctx.check("finite throughout", _finite(ls))


# -- sundial: StepLR gamma typed 10 --------------------------------------------------------------

ONSET_SUN = 100


def _top_hessian_eig(model, x, y, iters=20):
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=False))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    family="sundial_equation_of_time_gelu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_SUN,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the correction a sundial maker engraves for the equation of time from 10 standardised readings (day of year features, latitude, gnomon angle), plain SGD at 0.1, MSE, StepLR(step_size=100). gamma was typed 10 instead of 0.1, so at step 100 the lr becomes 1.0 instead of 0.01: the top Hessian eigenvalue measured at that point puts 2/sharpness above 0.1 but below half of 1.0, and the run, converging before, oscillates and blows up within steps.",
)
def h295_sundial_steplr_gamma(ctx: Context) -> None:
    gen = seeded(29510)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ONSET_SUN, gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(9), 256, 10, seed=2960))
    sharp: list[float] = []

    def before(step):
        if step == ONSET_SUN:
            sharp.append(_top_hessian_eig(model, *probe))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=2960),
        160,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    lam = sharp[0] if sharp else 0.0
    ctx.check("lr 0.1 was below 2/sharpness at step 100", 0.1 * lam < 2.0)
    ctx.check("lr 1.0 is over twice 2/sharpness at step 100", 1.0 * lam > 4.0)
    ctx.check("the loss fell before step 100", _fell(ls[:ONSET_SUN]))
    pre = _mean(ls[ONSET_SUN - 10 : ONSET_SUN])
    ctx.check(
        "the loss blew up over 100x after step 100",
        any((not math.isfinite(v)) or v > 100 * pre for v in ls[ONSET_SUN:]),
    )


# -- controls -----------------------------------------------------------------------------------


@scenario(
    family="woodpecker_drumming_bout_count_poisson_net",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head giving a log-rate) predicting how many drumming bouts a woodpecker makes in an hour from 10 standardised readings (temperature, daylight, territory density, snag hardness), Adam at 3e-3 with a 25-step linear warm-up then cosine decay (SequentialLR of LinearLR and CosineAnnealingLR), Poisson NLL (log_input=True) on the observed counts, clipping at 1.0. An ordinary run.",
)
def h295_woodpecker_poisson_warmup(ctx: Context) -> None:
    gen = seeded(29511)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps, warm = 250, 25
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.04, total_iters=warm),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - warm),
        ],
        milestones=[warm],
    )
    _train(
        ctx,
        model,
        opt,
        _counts(gen, 64, 10, seed=2961),
        steps,
        lambda out, y: F.poisson_nll_loss(out, y, log_input=True),
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, k=20, ratio=0.8))
    ctx.check("finite throughout", _finite(ctx.losses))


class TiedAutoencoder(nn.Module):
    """enc (32 -> 8), act, and a decoder that reuses enc.weight transposed plus its own bias."""

    def __init__(self, d_in=32, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _crack_profiles(gen, batch, d_in=32, rank=4):
    g = torch.Generator().manual_seed(2962)
    basis = torch.linalg.qr(torch.randn(d_in, rank, generator=g))[0].T * 3.0
    while True:
        z = torch.randn(batch, rank, generator=gen)
        x = z @ basis + 0.1 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="kintsugi_lacquer_crack_profile_tied_autoencoder",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="Control: a tied-weight autoencoder (enc 32 -> 8, tanh, decoder = enc.weight transposed plus its own bias) compressing the 32-point depth profile of a crack a kintsugi restorer fills with lacquer, SGD Nesterov momentum 0.9 with OneCycleLR (max lr 0.02), MSE, gradient accumulation over 2 micro-batches, clipping at 1.0, noisy profiles. An ordinary run.",
)
def h295_kintsugi_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(29512)
    model = TiedAutoencoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        _crack_profiles(gen, 32),
        steps,
        F.mse_loss,
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))


class GlideConv(nn.Module):
    """Conv1d over a 48-step pitch track: conv1, act1, conv2, act2, mean pool, head."""

    def __init__(self, channels=16, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, padding=2)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(channels, channels, 5, padding=2)
        self.act2 = nn.GELU()
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _glides(gen, batch, length=48, classes=4):
    """Pitch tracks: flat, rising, falling, or rise-and-fall, with jitter and noise."""
    t = torch.linspace(0, 1, length)
    shapes = torch.stack([0 * t, t - 0.5, 0.5 - t, torch.sin(math.pi * t) - 0.6])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        amp = 1.0 + 0.5 * torch.rand(batch, 1, generator=gen)
        yield amp * shapes[y] * 2 + 0.4 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="tabla_bayan_glide_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a Conv1d classifier (conv1, act1, conv2, act2, mean pool, head) naming which of 4 pitch glides (flat, rising, falling, rise-and-fall) a tabla player's bayan stroke follows from a 48-step pitch track, AdamW at 2e-3 with weight decay 0.05 on weights only (two param groups), ReduceLROnPlateau, label smoothing 0.1, clipping at 1.0, fp16 autocast with a torch.amp.GradScaler (initial scale 1024). An ordinary run.",
)
def h295_tabla_glide_fp16(ctx: Context) -> None:
    gen = seeded(29513)
    model = GlideConv()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _glides(gen, 32),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
