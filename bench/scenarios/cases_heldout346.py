"""Held-out set 346 (``h346_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena: a sapsucker sap-well flow regressor whose preemption resume loads a checkpoint
with strict=False and a renamed head (one loss spike), a brine-shrimp cyst hatch regressor whose
targets stay in raw counts under fp16 autocast (the head's fp16 output overflows), a tanning-pit
hide-soak regressor whose trunk group's lr is typed 3e-7 for 3e-2 (trunk frozen), a rockfall
talus-bounce net whose sigma is sqrt of an unclamped linear output (NaN), a pysanky motif
classifier whose learnable logit scale has no clamp (the head's logits grow), a sashiko grid
classifier whose temperature is read in milli-units (softmax saturates), a seiche basin-surge
ReLU Elman RNN whose recurrent init gain is 1.4 (gradients grow through time), a kantele pluck
decay Conv1d regressor fed one shard in millimetres (one corrupted batch), a gurning jaw-stretch
regressor whose accumulation denominator resets at the epoch boundary (one gradient burst), a
pearl-diver lung-squeeze regressor whose L2 penalty is subtracted (slow climb), and three
controls (a moonbow spray-field diffusion denoiser with an EMA of the weights and a cosine
schedule; a sepak-takraw roll-spike Conv1d classifier with SGD momentum, OneCycleLR, label
smoothing and clipping; a dew-pond clay-seal Huber regressor under fp16 autocast with a
GradScaler and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


class _Teacher:
    """A fixed random tanh teacher: regression targets or class labels from d inputs."""

    def __init__(self, gen: torch.Generator, d: int, out: int = 1, hidden: int = 24) -> None:
        self.w1 = torch.randn(d, hidden, generator=gen) / math.sqrt(d)
        self.w2 = torch.randn(hidden, out, generator=gen) / math.sqrt(hidden) * 2.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.w1 * 1.5) @ self.w2


def _regress(gen, d, batch, noise=0.05):
    t = _Teacher(gen, d)
    while True:
        x = torch.randn(batch, d, generator=gen)
        yield x, t(x) + noise * torch.randn(batch, 1, generator=gen)


def _classes(gen, d, classes, batch, flip=0.0):
    t = _Teacher(gen, d, classes)
    while True:
        x = torch.randn(batch, d, generator=gen)
        y = t(x).argmax(1)
        if flip:
            r = torch.rand(batch, generator=gen) < flip
            y = torch.where(r, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


def _fixed(stream, gen, batch):
    """A fixed training set (one draw of ``stream``) served in shuffled batches."""
    xs, ys = next(stream)
    while True:
        order = torch.randperm(len(ys), generator=gen)
        for i in range(0, len(ys) - batch + 1, batch):
            idx = order[i : i + batch]
            yield xs[idx], ys[idx]


class _MLP(nn.Module):
    """fc1, act1, fc2, act2, head."""

    def __init__(self, d: int, h: int, out: int = 1, act: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.act1 = act()
        self.fc2 = nn.Linear(h, h)
        self.act2 = act()
        self.head = nn.Linear(h, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _step(ctx, model, opt, loss, total=None, clip=None, scaler=None, norms=None):
    """Backward, (clip), step, ctx.step, zero_grad; records the pre-clip gradient norm."""
    total = loss if total is None else total
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(opt)
    else:
        total.backward()
    g = grad_norm(model)
    ctx.grad_norms.append(g)
    if norms is not None:
        norms.append(g)
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
    else:
        opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


# -- sapsucker: the resume loads a checkpoint whose head was renamed, with strict=False ----------

SAP_ONSET = 120


@scenario(
    family="sapsucker_sap_well_flow_silu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SAP_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the sap flow from a yellow-bellied sapsucker's wells (standardised) from ten readings of bark temperature, tree girth and time of day, NAdam at 3e-3, MSE, 220 steps. The job is preempted and resumed at step 120; the checkpoint was written by a refactored version of the code that called the head 'out', and the resume loads it with load_state_dict(strict=False), so fc1 and fc2 come back but the head silently keeps the fresh process's random init: the loss jumps to many times its level on an ordinary batch, and the run retrains the head and recovers within a few dozen steps.",
)
def h346_sapsucker_resume_renamed_head(ctx: Context) -> None:
    gen = seeded(34601)
    model = _MLP(10, 48)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    batches = _regress(gen, 10, 64)
    ctx.attach(model, opt)
    for step in range(220):
        if step == SAP_ONSET:
            saved = {k.replace("head.", "out."): v.clone() for k, v in model.state_dict().items()}
            fresh = _MLP(10, 48)  # the resumed process builds the model anew
            missing = fresh.load_state_dict(saved, strict=False).missing_keys
            with torch.no_grad():
                for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
                    p.copy_(q)
            ctx.check("the resume left the head's weights unloaded", "head.weight" in missing)
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        _step(ctx, model, opt, loss)
    ls = ctx.losses
    pre = _mean(ls[SAP_ONSET - 10 : SAP_ONSET])
    ctx.check(
        "the loss at the resume is over 5x its mean over the 10 steps before",
        ls[SAP_ONSET] > 5 * pre,
    )
    ctx.check(
        "the last 20 steps' mean loss is under 2x the pre-resume mean", _mean(ls[-20:]) < 2 * pre
    )
    ctx.check("finite throughout", _finite(ls))


# -- brine shrimp: raw hatch counts as targets under fp16 autocast -------------------------------

SHRIMP_SCALE = 2.5e4


@scenario(
    family="brine_shrimp_cyst_hatch_fp16_relu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the nauplii hatched per litre from a batch of brine-shrimp cysts from eight readings of salinity, temperature, light and aeration, Adam at 3e-2, MSE, trained under fp16 autocast with a torch.amp.GradScaler to save time, 300 steps planned. The targets were left in raw counts (mean about 5e4, the largest rows well above that) instead of being standardised: as the head learns the scale its fp16 output passes 65504 for the largest rows and becomes inf while the same forward pass in fp32 is finite, the loss is inf, and the run stops there.",
)
def h346_brine_shrimp_raw_counts_fp16(ctx: Context) -> None:
    gen = seeded(34602)
    model = _MLP(8, 48, act=nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    scaler = torch.amp.GradScaler("cpu")
    teacher = _Teacher(gen, 8)
    ctx.attach(model, opt, scaler=scaler)
    over = []
    for _ in range(300):
        x = torch.randn(64, 8, generator=gen)
        y = SHRIMP_SCALE * (2.0 + teacher(x)).clamp_min(0.1)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if not math.isfinite(float(loss.detach())):
            with torch.no_grad():
                ref = model(x)
            over.append(
                (
                    bool(torch.isinf(out).any()),
                    bool(torch.isfinite(ref).all()),
                    float(ref.abs().max()),
                )
            )
            ctx.step(loss)
            break
        _step(ctx, model, opt, loss, scaler=scaler)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is finite for the first 20 steps", bad is not None and bad >= 20)
    ctx.check(
        "at the first non-finite loss the head's fp16 output holds inf", bool(over) and over[0][0]
    )
    ctx.check(
        "the same forward pass in fp32 is finite and its largest output above 65504",
        bool(over) and over[0][1] and over[0][2] > 65504.0,
    )


# -- tanning pit: the trunk group's lr typed 3e-7 for 3e-2 ---------------------------------------


@scenario(
    family="tanning_pit_hide_soak_two_group_tanh_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting how many days a hide needs in a bark tanning pit (standardised) from ten readings of hide thickness, liquor strength and temperature, Adagrad with two parameter groups (trunk fc1 and fc2, head), MSE, 200 steps. The trunk's lr was meant as 3e-2 and was typed 3e-7: Adagrad moves each trunk weight by at most about 3e-7 a step, so fc1 and fc2 change by well under 1e-3 of their norm over the run while the head (3e-2) moves by over 5%; the loss falls only as far as the head on random features allows.",
)
def h346_tanning_pit_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(34603)
    model = _MLP(10, 48, act=nn.Tanh)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 3e-7}, {"params": model.head.parameters(), "lr": 3e-2}]
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = _regress(gen, 10, 64)
    ctx.attach(model, opt)
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        _step(ctx, model, opt, loss)
    rel = {n: _rel_change(start[n], p) for n, p in model.named_parameters()}
    ctx.check(
        "fc1.weight and fc2.weight moved under 1e-3 of their norm",
        max(rel["fc1.weight"], rel["fc2.weight"]) < 1e-3,
    )
    ctx.check("head.weight moved over 5% of its norm", rel["head.weight"] > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- rockfall: sigma is the square root of an unclamped linear output ----------------------------


class _Sqrt(nn.Module):
    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(v)


class _TalusNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 48)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.GELU()
        self.mu = nn.Linear(48, 1)
        self.var = nn.Linear(48, 1)
        self.sigma = _Sqrt()
        nn.init.constant_(self.var.bias, 1.0)
        self.last_var = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        v = self.var(h)
        self.last_var = v.detach()
        return self.mu(h), self.sigma(v)


@scenario(
    family="rockfall_talus_bounce_sqrt_sigma_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("sigma",),
    diverges="auto",
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2) with a mean head (mu) and a variance head (var, bias initialised to 1) predicting a falling block's bounce height on a talus slope (standardised) from eight readings of block mass, slope angle and scree size, Gaussian NLL log(sigma) + (y - mu)^2 / (2 sigma^2), Adamax at 2e-3, 300 steps planned. The model's sigma module takes torch.sqrt of the variance head's raw output: the softplus (or clamp) that should keep it positive was left out. The targets are nearly noiseless, so the NLL keeps pushing the variance down; once a row's variance output crosses below zero, sqrt returns NaN, the loss is NaN and the run stops there.",
)
def h346_rockfall_sqrt_unclamped_variance(ctx: Context) -> None:
    gen = seeded(34604)
    model = _TalusNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _regress(gen, 8, 64, noise=0.02)
    ctx.attach(model, opt)
    neg = []
    for _ in range(300):
        x, y = next(batches)
        mu, sigma = model(x)
        loss = (torch.log(sigma) + (y - mu) ** 2 / (2 * sigma**2)).mean()
        if not math.isfinite(float(loss.detach())):
            neg.append(float(model.last_var.min()))
            ctx.step(loss)
            break
        _step(ctx, model, opt, loss)
    bad = _first_bad(ctx.losses)
    ctx.check(
        "the loss is NaN at some step after 10",
        bad is not None and bad > 10 and math.isnan(ctx.losses[bad]),
    )
    ctx.check(
        "at that step the variance head's output is negative for some row", bool(neg) and neg[0] < 0
    )
    ctx.check("finite before that step", bad is not None and _finite(ctx.losses[:bad]))


# -- pysanky: a learnable logit scale with no clamp ----------------------------------------------


class _ScaledHead(nn.Module):
    def __init__(self, h: int, classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(h, classes)
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * self.proj(h)


class _MotifNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.head = _ScaledHead(64, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="pysanky_motif_region_logit_scale_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2) and a head with a learnable logit scale (head.proj, head.logit_scale, logits = exp(logit_scale) * proj(h), as in CLIP) naming the region a pysanky egg's motif comes from among six from twelve readings of line width, colour order and symmetry (a fixed training set of 256 eggs), AdamW at 2e-2 with weight decay 0 (no decay on the scale, as usual), cross-entropy, 260 steps. The clamp of the logit scale at log(100) was left out: on separable training batches cross-entropy keeps rewarding larger margins, exp(logit_scale) and the projection grow together, and exp(logit_scale) more than doubles and the head's largest logit grows over 20x and keeps growing while the loss heads to zero.",
)
def h346_pysanky_logit_scale_unclamped(ctx: Context) -> None:
    gen = seeded(34605)
    model = _MotifNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
    batches = _fixed(_classes(gen, 12, 6, 256), gen, 64)
    ctx.attach(model, opt)
    peaks = []
    for _ in range(260):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        peaks.append(float(logits.detach().abs().max()))
        loss = F.cross_entropy(logits, y)
        _step(ctx, model, opt, loss)
    ctx.check(
        "the peak logit over the last 20 steps is over 20x that of the first 5",
        _mean(peaks[-20:]) > 20 * _mean(peaks[:5]),
    )
    scale = float(model.head.logit_scale.detach().exp())
    ctx.check("exp(logit_scale) grew over 1.5x from its start at 1", scale > 1.5)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sashiko: the temperature read in milli-units ------------------------------------------------


class _Temperature(nn.Module):
    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.t


class _GridNet(nn.Module):
    def __init__(self, t: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.act1 = nn.GELU()
        self.head = nn.Linear(64, 8)
        self.temperature = _Temperature(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temperature(self.head(self.act1(self.fc1(x))))


@scenario(
    family="sashiko_hitomezashi_grid_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("temperature", "head"),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, head) followed by a temperature module naming which of eight hitomezashi sashiko patterns a stitched grid follows from sixteen readings of stitch offsets, SGD with Nesterov momentum 0.9 at 1e-4, cross-entropy, a fixed training set of 256 grids, 200 steps. The config gives the softmax temperature as 1 in the unit 'milli' of an older config schema and the loader read it as 1e-3: the logits are divided by 0.001, so float32 softmax probabilities round to exactly 0 and 1 and over half the rows' target probability is exactly 1.0 late in the run.",
)
def h346_sashiko_temperature_milli(ctx: Context) -> None:
    gen = seeded(34606)
    model = _GridNet(0.001)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    batches = _fixed(_classes(gen, 16, 8, 256), gen, 64)
    ctx.attach(model, opt)
    frac = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        frac.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        _step(ctx, model, opt, loss)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(frac[-20:]) > 0.5,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- seiche: an IRNN whose identity init is scaled by 1.4 ----------------------------------------

SEICHE_GAIN = 1.4


class _SurgeRNN(nn.Module):
    """A hand-written Elman RNN with ReLU: h_t = relu(inp(x_t) + rec(h_{t-1}))."""

    def __init__(self, d: int = 4, h: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(d, h)
        self.rec = nn.Linear(h, h, bias=False)
        self.head = nn.Linear(h, 1)
        with torch.no_grad():
            self.rec.weight.copy_(SEICHE_GAIN * torch.eye(h))
        self.states: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            h.retain_grad()
            self.states.append(h)
        return self.head(h)


@scenario(
    family="seiche_basin_surge_relu_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Elman RNN (inp, rec, head) reading 20 hourly readings of wind stress, pressure and lake level and predicting a lake seiche's next surge height (standardised), SGD with momentum 0.9 at 1e-3, clipping at 1.0, MSE, 150 steps. The recurrent weights use the IRNN identity init, and the config's gain was typed 1.4 for 1.0: the backward pass multiplies the gradient by up to 1.4 at each of the 20 steps, so the gradient reaching the first hidden state is over 50x that at the last, and the total gradient norm stays far above the clip all run; the clip keeps the loss finite but the run barely learns.",
)
def h346_seiche_irnn_gain_typo(ctx: Context) -> None:
    gen = seeded(34607)
    model = _SurgeRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    w = torch.randn(4, generator=gen)
    ctx.attach(model, opt)
    ratios, norms = [], []
    for _ in range(150):
        x = torch.randn(32, 20, 4, generator=gen) * 0.5
        y = torch.tanh((x[:, -5:] @ w).mean(1, keepdim=True))
        out = model(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        first, last = model.states[0].grad.norm(), model.states[-1].grad.norm()
        ratios.append(float(first / last.clamp_min(1e-12)))
        g = grad_norm(model)
        ctx.grad_norms.append(g)
        norms.append(g)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "the gradient at the first hidden state is over 50x that at the last (first 10 steps)",
        _mean(ratios[:10]) > 50,
    )
    ctx.check(
        "the gradient norm stays over 10x the clip through the last 50 steps", min(norms[-50:]) > 10
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kantele: one shard's string displacement logged in millimetres -----------------------------

KANTELE_ONSET = 150


class _PluckConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _plucks(gen, batch=32, length=48):
    t = torch.arange(length).float()
    while True:
        tau = 4 + 30 * torch.rand(batch, 1, generator=gen)
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        x = torch.exp(-t / tau) * torch.sin(0.9 * t + phase) + 0.02 * torch.randn(
            batch, length, generator=gen
        )
        yield x, (torch.log(tau) - 2.6) / 0.6


@scenario(
    family="kantele_pluck_decay_conv1d_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=KANTELE_ONSET,
    note="A hand-written Conv1d net (conv1, act1, conv2, act2, mean pool, head) predicting the log decay time of a plucked kantele string (standardised) from 48 samples of its displacement in metres, RMSprop at 1e-3, clipping at 1.0, MSE, 240 steps. One shard, from a second pickup whose export wrote millimetres, was never converted; its batch arrives at step 150 with every displacement 1000x: the loss and the (pre-clip) gradient jump by orders of magnitude on that one batch, the clip bounds the update, and the run recovers on the clean batches after it.",
)
def h346_kantele_shard_millimetres(ctx: Context) -> None:
    gen = seeded(34608)
    model = _PluckConv()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _plucks(gen)
    ctx.attach(model, opt)
    norms = []
    for step in range(240):
        x, y = next(batches)
        if step == KANTELE_ONSET:
            x = x * 1000.0
        loss = F.mse_loss(model(x), y)
        _step(ctx, model, opt, loss, clip=1.0, norms=norms)
    ls, k = ctx.losses, KANTELE_ONSET
    ctx.check(
        "the loss at the bad batch is over 20x its mean over the 10 steps before",
        ls[k] > 20 * _mean(ls[k - 10 : k]),
    )
    ctx.check(
        "the gradient at the bad batch is over 20x its mean over the 10 steps before",
        norms[k] > 20 * _mean(norms[k - 10 : k]),
    )
    ctx.check(
        "the last 20 steps' mean loss is under 2x the mean before the bad batch",
        _mean(ls[-20:]) < 2 * _mean(ls[k - 10 : k]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- gurning: the accumulation window's row counter resets at the epoch boundary -----------------

GURN_ONSET = 100
GURN_ACCUM = 4


@scenario(
    family="gurning_jaw_stretch_accum_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=GURN_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a gurning contestant's jaw stretch (standardised) from ten readings of face measurements and practice hours, plain SGD at 5e-2, MSE summed over rows and divided by the rows seen in the accumulation window (4 micro-batches of 32, 128 rows), 200 steps. The row counter is reset at the epoch boundary, which falls inside the window of step 100 just before its last micro-batch is counted: that step divides by 1 instead of 128, so its gradient is 128x on ordinary batches, the weights take one large jump, the loss spikes on the next steps and the run recovers.",
)
def h346_gurning_accum_counter_reset(ctx: Context) -> None:
    gen = seeded(34609)
    model = _MLP(10, 48)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)
    batches = _regress(gen, 10, 32)
    ctx.attach(model, opt)
    norms, clean = [], []
    for step in range(200):
        parts = [next(batches) for _ in range(GURN_ACCUM)]
        rows = 1 if step == GURN_ONSET else 32 * GURN_ACCUM
        total = sum(((model(x) - y) ** 2).sum() for x, y in parts) / rows
        with torch.no_grad():
            shown = sum(float(((model(x) - y) ** 2).mean()) for x, y in parts) / GURN_ACCUM
        clean.append(shown)
        loss = total.detach() * rows / (32 * GURN_ACCUM)
        total.backward()
        g = grad_norm(model)
        ctx.grad_norms.append(g)
        norms.append(g)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    k = GURN_ONSET
    ctx.check(
        "the gradient at step 100 is over 50x its median over the 20 steps before",
        norms[k] > 50 * sorted(norms[k - 20 : k])[10],
    )
    ctx.check(
        "the batch loss at step 100 is within 3x its mean before (ordinary data)",
        clean[k] < 3 * _mean(clean[k - 10 : k]),
    )
    ctx.check(
        "the loss after the jump is over 3x its mean before",
        max(ctx.losses[k + 1 : k + 5]) > 3 * _mean(ctx.losses[k - 10 : k]),
    )
    ctx.check(
        "the last 20 steps' mean loss is under 2x the mean before",
        _mean(ctx.losses[-20:]) < 2 * _mean(ctx.losses[k - 10 : k]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pearl diver: the hand-written L2 penalty is subtracted --------------------------------------

PEARL_WD = 1.0


@scenario(
    family="pearl_diver_lung_squeeze_l2_sign_tanh_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a breath-hold pearl diver's lung-squeeze risk score (standardised) from ten readings of depth, descent rate and dive count, RAdam at 1e-2, MSE plus a hand-written L2 penalty wd * sum(p^2) with wd 1.0 (from a sweep over strong regularisation), 300 steps. The penalty was written loss - wd * l2 for loss + wd * l2: once the data term is small, the penalty's gradient pushes every weight outward, the weights grow steadily, the tanh units saturate and the head's outputs swell, and the reported MSE climbs slowly to many times its minimum with no single jump and no NaN.",
)
def h346_pearl_diver_l2_sign_flip(ctx: Context) -> None:
    gen = seeded(34610)
    model = _MLP(10, 48, act=nn.Tanh)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    batches = _regress(gen, 10, 64)
    start = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    ctx.attach(model, opt)
    for _ in range(300):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        l2 = sum((p**2).sum() for p in model.parameters())
        _step(ctx, model, opt, loss, total=loss - PEARL_WD * l2)
    ls = ctx.losses
    lowest = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 20))
    end = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    ctx.check(
        "the last 20 steps' mean loss is over 3x its lowest 20-step mean",
        _mean(ls[-20:]) > 3 * lowest,
    )
    ctx.check(
        "no step's loss is over 3x the previous step's (a slow climb)",
        all(b < 3 * a for a, b in zip(ls[50:], ls[51:], strict=False)),
    )
    ctx.check("the weight norm grew over 2x", end > 2 * start)
    ctx.check("finite throughout", _finite(ls))


# -- controls ------------------------------------------------------------------------------------


class _TimeEmbed(nn.Module):
    """Sinusoidal timestep embedding, as in DDPM."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half).float() / half)
        a = t.float()[:, None] * freqs[None]
        return torch.cat([a.sin(), a.cos()], dim=1)


class _Denoiser(nn.Module):
    """Predicts the noise added to x_t from (x_t, t)."""

    def __init__(self, d: int = 8, h: int = 64) -> None:
        super().__init__()
        self.temb = _TimeEmbed(32)
        self.temb_proj = nn.Linear(32, h)
        self.fc_in = nn.Linear(d, h)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(h, h)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(h, d)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.fc_in(x) + self.temb_proj(self.temb(t)))
        return self.head(self.act2(self.fc2(h)))


@scenario(
    family="moonbow_spray_field_diffusion_denoiser",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written DDPM-style noise-prediction MLP (temb: a sinusoidal timestep embedding, temb_proj, fc_in, act1, fc2, act2, head) on generated 8-d spray-droplet readings of a waterfall's moonbow (a mixture of four Gaussian clusters), 100 noise levels with a linear beta schedule from 1e-4 to 0.05, MSE on the noise, AdamW at 2e-3 with weight decay 0.01, 20 warm-up steps then a cosine decay, clipping at 1.0, an exponential moving average of the weights (decay 0.98) kept for evaluation, 250 steps.",
)
def h346_moonbow_diffusion_ema_cosine(ctx: Context) -> None:
    gen = seeded(34611)
    model = _Denoiser()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps, warm = 250, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    betas = torch.linspace(1e-4, 0.05, 100)
    abar = torch.cumprod(1 - betas, 0)
    centres = 2.0 * torch.randn(4, 8, generator=gen)

    def batch(n=128):
        x0 = centres[torch.randint(0, 4, (n,), generator=gen)] + 0.3 * torch.randn(
            n, 8, generator=gen
        )
        t = torch.randint(0, 100, (n,), generator=gen)
        eps = torch.randn(n, 8, generator=gen)
        a = abar[t][:, None]
        return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps

    held = batch(512)
    with torch.no_grad():
        first = float(F.mse_loss(ema(held[0], held[1]), held[2]))
    ctx.attach(model, opt)
    for _ in range(steps):
        xt, t, eps = batch()
        loss = F.mse_loss(model(xt, t), eps)
        _step(ctx, model, opt, loss, clip=1.0)
        sched.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 0.02)
    with torch.no_grad():
        last = float(F.mse_loss(ema(held[0], held[1]), held[2]))
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("the EMA weights' held-out loss is under 0.8x that at the start", last < 0.8 * first)
    ctx.check("finite throughout", _finite(ctx.losses))


class _KickConv(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(12, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.amax(-1))


@scenario(
    family="sepak_takraw_roll_spike_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written Conv1d classifier (conv1, act1, conv2, act2, max pool, head) naming which of four sepak-takraw roll-spike kicks a 40-sample ankle accelerometer trace shows (each kick a burst at its own frequency, noisy, 10% of labels flipped), SGD with momentum 0.9 under OneCycleLR (peak 0.05), label smoothing 0.1, clipping at 1.0, 200 steps.",
)
def h346_sepak_takraw_onecycle_control(ctx: Context) -> None:
    gen = seeded(34612)
    model = _KickConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
    t = torch.arange(40).float()
    freqs = torch.tensor([0.3, 0.6, 0.9, 1.2])
    ctx.attach(model, opt)
    for _ in range(200):
        y = torch.randint(0, 4, (64,), generator=gen)
        start = torch.randint(0, 20, (64, 1), generator=gen)
        burst = ((t >= start) & (t < start + 15)).float()
        x = burst * torch.sin(freqs[y][:, None] * t) + 0.3 * torch.randn(64, 40, generator=gen)
        flip = torch.rand(64, generator=gen) < 0.1
        y = torch.where(flip, torch.randint(0, 4, (64,), generator=gen), y)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        _step(ctx, model, opt, loss, clip=1.0)
        sched.step()
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="dew_pond_clay_seal_fp16_huber_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the seepage of a dew pond's puddled-clay seal (standardised) from ten readings of clay depth, straw layer and rainfall, Huber loss, Adam at 3e-3 under fp16 autocast with a torch.amp.GradScaler, ReduceLROnPlateau on a held-out batch's loss every 20 steps, noisy targets, 200 steps.",
)
def h346_dew_pond_fp16_plateau_control(ctx: Context) -> None:
    gen = seeded(34613)
    model = _MLP(10, 48, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    batches = _regress(gen, 10, 64, noise=0.2)
    hx, hy = next(batches)
    ctx.attach(model, opt, scaler=scaler)
    for step in range(200):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y)
        _step(ctx, model, opt, loss, scaler=scaler)
        if step % 20 == 19:
            with torch.no_grad():
                plateau.step(float(F.huber_loss(model(hx), hy)))
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("finite throughout", _finite(ctx.losses))
