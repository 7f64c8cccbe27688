"""Held-out set 276 (``h276_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a wayang shadow-puppet silhouette classifier whose
auxiliary hinge term lost its clamp, a champagne riddling-rack settle-time regressor fed one
logger row of -9999 sentinels, an earth-tide gravimeter ReLU RNN whose identity recurrent init
was typed with gain 1.15, a tsuba sword-guard school classifier whose trunk param group has an
exponent typo in its lr, a barrel-organ (organ grinder) crank-tempo Conv1d classifier whose
per-trace normaliser has no eps, a lighthouse Fresnel-lens flash regressor whose Gram pooling
overflows fp16 under autocast, a hairspring beat-error cosine classifier whose temperature was
typed 0.000625 for 0.0625, a creel catch-species BCE tagger whose loss is summed for one step,
an oakum seam-leak regressor whose hand-written decoupled weight decay has its sign flipped, a
limnic-eruption CO2 regressor whose warm-up lambda lost its ``min(1, .)``, and three controls (a
bowstring serving-wear cosine classifier with a fixed scale of 16, OneCycleLR and label
smoothing; a chainmaker link-weld Huber regressor with AdamW param groups, warm-up + cosine,
clipping and gradient accumulation; a blue-hole halocline GRU with a Gaussian NLL, Adagrad and
ReduceLROnPlateau).

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


class _Twin:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


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
):
    """The file's training loop. ``loss_fn(step, out, y)``; ``before(step)`` runs first,
    ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)`` records after the forward
    pass, ``after(step)`` after the optimizer step; ``amp``: fp16 autocast; stops after logging
    a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
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
            loss = loss_fn(step, out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
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


def _plain(fn):
    return lambda step, out, y: fn(out, y)


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


def _traces(gen, batch, classes, seed, channels=2, length=48, noise=0.4):
    """Multi-channel traces: each class a different mix of frequencies, random phase and gain."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.9 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        gain = 0.5 + 2.0 * torch.rand(batch, 1, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase)
        yield gain * (x + noise * torch.randn(batch, channels, length, generator=gen)), y


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


# -- wayang: the auxiliary hinge term lost its clamp ---------------------------------------------


class _CEPlusHinge:
    """Cross-entropy plus 0.5 x a multiclass hinge on the margin z_y - max_{k != y} z_k."""

    def __init__(self, clamp):
        self.clamp = clamp

    def __call__(self, step, out, y):
        ce = F.cross_entropy(out, y)
        zy = out.gather(1, y[:, None]).squeeze(1)
        other = out.masked_fill(F.one_hot(y, out.shape[1]).bool(), -math.inf).amax(1)
        slack = 1.0 - (zy - other)
        hinge = slack.clamp(min=0) if self.clamp else slack
        return ce + 0.5 * hinge.mean()


@scenario(
    family="wayang_shadow_puppet_silhouette_hinge_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) naming which of 8 wayang kulit puppet characters casts a silhouette from 16 contour descriptors, Adam at 3e-3, loss = cross-entropy + 0.5 x a multiclass hinge on the margin z_y - max_other. The hinge's clamp(min=0) was dropped when the term was refactored into a 'slack' variable, so the auxiliary term rewards the margin linearly and without bound: the head's logits keep growing for the whole run (over 20x from step 10, to a peak over 100) and the logged loss goes ever more negative; the twin with the clamp keeps its logits over 5x smaller. Finite, no blow-up in the run's length.",
)
def h276_wayang_hinge_clamp_dropped(ctx: Context) -> None:
    def run(c, clamp):
        gen = seeded(27601)
        model = Stack(16, hidden=64, out=8)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        probe = next(_kinds(torch.Generator().manual_seed(7), 256, 16, 8, 61))[0]
        peaks = []

        def after(step):
            with torch.no_grad():
                peaks.append(float(model(probe).abs().max()))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 8, 61),
            250,
            _CEPlusHinge(clamp),
            classifier=True,
            after=after,
        )
        return peaks

    twin = _Twin()
    twin_peaks = run(twin, True)
    peaks = run(ctx, False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's logit peak grew over 20x from step 10", peaks[-1] > 20 * peaks[10])
    ctx.check("the logit peak ends over 100", peaks[-1] > 100)
    ctx.check("the peak still grows in the last 50 steps", peaks[-1] > 1.3 * peaks[-50])
    ctx.check("the twin with the clamp keeps the peak 5x smaller", twin_peaks[-1] < peaks[-1] / 5)
    ctx.check("the logged loss went negative", ls[-1] < 0)


# -- champagne riddling: one logger row of -9999 sentinels ---------------------------------------

ONSET_RIDDLE = 120


@scenario(
    family="champagne_riddling_rack_settle_time_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_RIDDLE,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how long the lees take to settle into the neck of a champagne bottle on a riddling rack (pupitre) from 10 standardised readings (turn angle, tilt, cellar temperature, yeast strain, ...), SGD momentum 0.9 at 1e-2, MSE, gradient clipping at norm 1. The cellar logger writes -9999 when a sensor drops out; the cleaning step filtered those rows in every shard but one, and the batch at step 120 carries one bottle whose tilt, temperature and humidity are -9999. That one sample gives a loss over 100x the median and a gradient over 100x the median at step 120; clipping keeps the step bounded and the run recovers to its earlier loss level. Finite, no blow-up.",
)
def h276_riddling_sentinel_row(ctx: Context) -> None:
    gen = seeded(27602)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_RIDDLE:
            x = x.clone()
            x[5, [2, 3, 6]] = -9999.0
            seen["peak"] = float(x.abs().max())
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 62),
        240,
        _plain(F.mse_loss),
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = ls[ONSET_RIDDLE - 30 : ONSET_RIDDLE]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the bad row", _fell(ls[:ONSET_RIDDLE], ratio=0.6))
    ctx.check("the batch carries the -9999 sentinel", seen.get("peak", 0) > 9000)
    ctx.check("loss at step 120 over 100x the median", ls[ONSET_RIDDLE] > 100 * _median(before))
    ctx.check(
        "gradient at step 120 over 100x the median",
        gn[ONSET_RIDDLE] > 100 * _median(gn[ONSET_RIDDLE - 30 : ONSET_RIDDLE]),
    )
    ctx.check(
        "the run recovers (last 20 under 2x the earlier median)",
        _mean(ls[-20:]) < 2 * _median(before),
    )


# -- earth tide: the identity recurrent init was typed with gain 1.15 ----------------------------


class TideCell(nn.Module):
    """h_t = relu(ih(x_t) + hh(h_{t-1})), an IRNN cell (identity-initialised recurrence)."""

    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)
        with torch.no_grad():
            self.hh.weight.copy_(gain * torch.eye(hidden))
            self.ih.weight.normal_(0, 0.1)
            self.ih.bias.zero_()

    def forward(self, x, keep=None):
        h = x.new_zeros(x.shape[0], self.hh.weight.shape[0])
        for t in range(x.shape[1]):
            h = F.relu(self.ih(x[:, t]) + self.hh(h))
            if keep is not None:
                h.retain_grad()
                keep.append(h)
        return h


class GravimeterRNN(nn.Module):
    def __init__(self, gain, hidden=32):
        super().__init__()
        self.rec = TideCell(2, hidden, gain)
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)  # the recipe zero-initialises the readout
        nn.init.zeros_(self.head.bias)

    def forward(self, x, keep=None):
        return self.head(self.rec(x, keep)).squeeze(-1)


def _gravity(gen, batch, length=40):
    """Gravimeter residuals (microgal, standardised): semidiurnal + diurnal tides of random
    amplitude and phase; predict the next reading."""
    t = torch.arange(length + 1).float()
    while True:
        a = 0.5 + torch.rand(batch, 2, generator=gen)
        ph = 6.28 * torch.rand(batch, 2, generator=gen)
        sig = a[:, :1] * torch.sin(0.52 * t + ph[:, :1]) + a[:, 1:] * torch.sin(
            0.26 * t + ph[:, 1:]
        )
        sig = sig + 0.05 * torch.randn(batch, length + 1, generator=gen)
        x = torch.stack([sig[:, :-1], torch.ones(batch, length)], -1)
        yield x, sig[:, -1]


@scenario(
    family="earth_tide_gravimeter_relu_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rec.hh", "rec"),
    diverges="auto",
    heldout=True,
    note="A hand-written IRNN (rec: ih, hh with h = relu(ih(x) + hh(h)); head) reading 40 hourly earth-tide gravimeter residuals (plus a constant channel) and forecasting the next one (zero-initialised readout, so the first loss is ordinary, about 0.9), SGD momentum 0.9 at 1e-2, MSE, no clipping. The recipe initialises the recurrence to the identity (gain 1.0); the config's gain was typed 1.1, so the recurrent Jacobian's spectral radius is 1.1 and gradients grow through the 40 time steps: at step 0 the gradient of the last state with respect to the first hidden state is over 20x that at the last (the gain-1.0 twin's ratio is about 0.5), and the total gradient is over 8x the twin's. A 100-step linear warm-up keeps the first updates small, but the loss swings up to hundreds within 10 steps, passes 1e5 and is non-finite at about step 25; the twin with gain 1.0 trains normally.",
)
def h276_earth_tide_irnn_gain(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(27603)
        model = GravimeterRNN(gain)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        seen = {}
        x0, y0 = next(_gravity(torch.Generator().manual_seed(3), 64))
        keep = []
        model.rec(x0, keep).sum().backward()  # d(sum h_T)/dh_t through time
        seen["ratio"] = float(keep[0].grad.norm() / keep[-1].grad.norm())
        model.zero_grad(set_to_none=True)
        F.mse_loss(model(x0), y0).backward()
        seen["g0"] = grad_norm(model)
        model.zero_grad(set_to_none=True)
        warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
        _train(c, model, opt, _gravity(gen, 64), 200, _plain(F.mse_loss), sched=warm)
        return seen

    twin = _Twin()
    tseen = run(twin, 1.0)
    seen = run(ctx, 1.1)
    ls = ctx.losses
    ctx.check("gradient at h_0 over 20x that at h_T at step 0", seen["ratio"] > 20)
    ctx.check("and over 30x the twin's ratio", seen["ratio"] > 30 * tseen["ratio"])
    ctx.check("total gradient over 8x the gain-1 twin's", seen["g0"] > 8 * tseen["g0"])
    ctx.check("the first loss is ordinary (under 2)", ls[0] < 2)
    ctx.check(
        "the loss passed 1e5 and then went non-finite", max(ls[:-1]) > 1e5 and not _finite(ls)
    )
    ctx.check("the twin trains normally", _fell(twin.losses, ratio=0.5) and len(twin.losses) == 200)


# -- tsuba: the trunk param group's lr has an exponent typo --------------------------------------


@scenario(
    family="tsuba_sword_guard_school_gelu_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) attributing a Japanese sword guard (tsuba) to one of 12 metalworking schools from 20 standardised measurements (rim profile, seppa-dai ratio, patina colour, inlay density, ...), AdamW with two param groups: the trunk (fc1, fc2) and the head. The config meant trunk_lr 3e-4 but its exponent was typed 3e-9, so fc1 and fc2 get per-step updates under 1e-6 of their weights' norm for the whole run (the head's are over 1e-4) and the trunk stays at its random init (relative change under 1e-4 over 250 steps) while only the head learns. Finite, no blow-up.",
)
def h276_tsuba_trunk_lr_exponent(ctx: Context) -> None:
    gen = seeded(27604)
    model = Stack(20, hidden=64, out=12, act=nn.GELU)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.AdamW(
        [
            {"params": trunk, "lr": 3e-9},
            {"params": model.head.parameters(), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    start = _flat(model.fc1)
    ratios = {"fc1": [], "fc2": [], "head": []}
    prev = {}

    def before(step):
        for name in ratios:
            prev[name] = model.get_submodule(name).weight.detach().clone()

    def after(step):
        for name in ratios:
            w = model.get_submodule(name).weight.detach()
            ratios[name].append(float((w - prev[name]).norm() / w.norm()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 12, 64),
        250,
        _plain(F.cross_entropy),
        classifier=True,
        before=before,
        after=after,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("fc1's update ratio median under 1e-6", _median(ratios["fc1"]) < 1e-6)
    ctx.check("fc2's update ratio median under 1e-6", _median(ratios["fc2"]) < 1e-6)
    ctx.check("the head's update ratio median over 1e-4", _median(ratios["head"]) > 1e-4)
    rel = float((_flat(model.fc1) - start).norm() / start.norm())
    ctx.check("fc1 moved under 1e-4 of its norm over the run", rel < 1e-4)


# -- organ grinder: the per-trace normaliser has no eps ------------------------------------------

ONSET_ORGAN = 90


class TraceNorm(nn.Module):
    """Standardises each trace and channel: (x - mean) / std, written without an eps."""

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        sd = x.std(-1, keepdim=True)
        return (x - mu) / sd


class CrankNet(nn.Module):
    def __init__(self, channels=2, classes=5, width=16):
        super().__init__()
        self.norm = TraceNorm()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(self.norm(x)))))
        return self.head(h.mean(-1))


@scenario(
    family="organ_grinder_crank_tempo_trace_norm_classifier",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=ONSET_ORGAN,
    heldout=True,
    onset=ONSET_ORGAN,
    note="A Conv1d classifier (norm, conv1, act1, conv2, act2, head) naming which of 5 crank tempos a street barrel-organ grinder plays from 2-channel, 48-sample bellows-pressure and pipe-microphone traces, NAdam at 2e-3, cross-entropy. norm standardises each trace as (x - mean) / std with no eps. At step 90 the batch holds one recording whose microphone had dropped out (both channels exactly zero): its std is 0, norm computes 0/0 = NaN, the NaN runs through the convolutions and the loss is NaN at step 90.",
)
def h276_organ_grinder_norm_no_eps(ctx: Context) -> None:
    gen = seeded(27605)
    model = CrankNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_ORGAN:
            x = x.clone()
            x[3] = 0.0
            seen["std0"] = float(x[3].std(-1).max())
            with torch.no_grad():
                seen["nan"] = bool(torch.isnan(model.norm(x)).any())
        return x, y

    _train(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 65),
        200,
        _plain(F.cross_entropy),
        classifier=True,
        alter=alter,
    )
    ls = ctx.losses
    ctx.check("finite before step 90", _finite(ls[:ONSET_ORGAN]))
    ctx.check("the loss fell before it", _fell(ls[:ONSET_ORGAN], ratio=0.7))
    ctx.check("the silent trace's std is exactly 0", seen.get("std0", 1.0) == 0.0)
    ctx.check("norm outputs NaN on that batch", seen.get("nan", False))
    ctx.check("the loss is NaN at step 90", _first_bad(ls) == ONSET_ORGAN)


# -- lighthouse: the Gram pooling overflows fp16 under autocast ----------------------------------

ONSET_LIGHT = 150


class GramPool(nn.Module):
    """Second-order pooling over time: h^T h / T, signed-log compressed."""

    def forward(self, h):
        g = h.transpose(1, 2) @ h / h.shape[1]
        return torch.sign(g) * torch.log1p(g.abs())


class FresnelNet(nn.Module):
    def __init__(self, d_in=4, width=12):
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.gram = GramPool()
        self.fc2 = nn.Linear(width * width, 32)
        self.act = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.gram(self.fc1(x)).flatten(1)))).squeeze(-1)


def _flashes(gen, batch, seed, length=96):
    """Photometer readings (4 channels, raw lux) of a lighthouse's flash character; the target
    is the log peak intensity."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(4, generator=g).abs() + 0.5
    t = torch.arange(length).float()
    while True:
        amp = 2.0 + 6.0 * torch.rand(batch, 1, generator=gen)
        period = 6 + 10 * torch.rand(batch, 1, generator=gen)
        pulse = (torch.sin(6.28 * t / period) > 0.6).float() * amp
        x = pulse[:, :, None] * mix + torch.randn(batch, length, 4, generator=gen)
        yield x, torch.log(amp.squeeze(1)) + 0.02 * torch.randn(batch, generator=gen)


@scenario(
    family="lighthouse_fresnel_flash_fp16_gram_net",
    optimizer="SGD Nesterov",
    cause="amp_overflow",
    where=("gram",),
    diverges=ONSET_LIGHT,
    heldout=True,
    onset=ONSET_LIGHT,
    note="A regressor of a lighthouse Fresnel lens's peak flash intensity (log) from 96 samples of 4 photometer channels kept in raw lux (up to about 10): fc1 projects them, gram pools h^T h / T over time (second-order pooling, signed-log compressed), fc2, act, head; SGD Nesterov momentum 0.9 at 1e-3, MSE, trained under fp16 autocast with a torch.amp.GradScaler. The matmul in gram runs in fp16 and the division by T comes after it; on ordinary nights its sums stay far below 65504, but at step 150 a batch from a clear night with readings 15x the usual (physically valid; the same batch gives a finite loss in fp32) pushes the sums past 65504, gram outputs inf, the loss is non-finite at step 150. The fp32 twin stays finite.",
)
def h276_lighthouse_fp16_gram(ctx: Context) -> None:
    def run(c, amp):
        gen = seeded(27606)
        model = FresnelNet()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
        scaler = torch.amp.GradScaler("cpu") if amp else None
        seen = {}

        def alter(step, x, y):
            if step == ONSET_LIGHT:
                x = 15.0 * x
                y = y + math.log(15.0)
            return x, y

        def watch(step, out, x, y):
            with torch.no_grad():
                if step == ONSET_LIGHT - 1:
                    seen["usual"] = float((model.fc1(x) ** 2).sum(1).max())
                if step == ONSET_LIGHT and amp:
                    with torch.autocast("cpu", dtype=torch.float16):
                        h = model.fc1(x)
                        seen["inf"] = bool(torch.isinf(h.transpose(1, 2) @ h).any())
                    seen["fp32_loss"] = float(F.mse_loss(model(x), y))

        _train(
            c,
            model,
            opt,
            _flashes(gen, 32, 66),
            220,
            _plain(F.mse_loss),
            alter=alter,
            watch=watch,
            scaler=scaler,
            amp=amp,
        )
        return seen

    twin = _Twin()
    run(twin, False)
    seen = run(ctx, True)
    ls = ctx.losses
    ctx.check("finite before the clear-night batch", _finite(ls[:ONSET_LIGHT]))
    ctx.check("the loss fell before it", _fell(ls[:ONSET_LIGHT], ratio=0.7))
    ctx.check("ordinary sums stay 4x below 65504", seen.get("usual", math.inf) < 65504 / 4)
    ctx.check("the fp16 Gram matmul overflowed to inf", seen.get("inf", False))
    ctx.check("the loss is non-finite at step 150", _first_bad(ls) == ONSET_LIGHT)
    ctx.check(
        "in fp32 the same batch gives a finite loss", math.isfinite(seen.get("fp32_loss", math.inf))
    )
    ctx.check("the fp32 twin stays finite", _finite(twin.losses) and len(twin.losses) == 220)


# -- hairspring: the cosine classifier's temperature was typed 0.000625 for 0.0625 ---------------


class CosineHead(nn.Module):
    """logits = cos(feature, class weight) / tau."""

    def __init__(self, d, classes, tau):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d) * 0.1)
        self.tau = tau

    def forward(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T / self.tau


class CosineNet(nn.Module):
    def __init__(self, d_in, classes, tau, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = CosineHead(hidden, classes, tau)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="hairspring_beat_error_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A cosine-similarity classifier (fc1, act1, fc2, act2, head = cos(feature, class weight) / tau) sorting a watchmaker's hairspring into one of 10 beat-error bands from 18 timing-machine readings, Adamax at 2e-3, cross-entropy. The recipe's temperature is tau = 0.0625 (a scale of 16); it was typed 0.000625, a scale of 1600, so cosine gaps of a few hundredths already give logit gaps over 30 and the float32 softmax rounds the top class to exactly 1.0: from early on over half the rows of a batch have p(target) == 1.0 exactly, where the tau-0.0625 twin has none. Finite, no blow-up.",
)
def h276_hairspring_temperature_typo(ctx: Context) -> None:
    def run(c, tau):
        gen = seeded(27607)
        model = CosineNet(18, 10, tau)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        probe = next(_kinds(torch.Generator().manual_seed(8), 256, 18, 10, 67))
        fracs = []

        def after(step):
            if step % 10 == 9:
                with torch.no_grad():
                    fracs.append(collapsed_fraction(model(probe[0]), probe[1]))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 18, 10, 67),
            200,
            _plain(F.cross_entropy),
            classifier=True,
            after=after,
        )
        return fracs

    twin = _Twin()
    twin_fracs = run(twin, 0.0625)
    fracs = run(ctx, 0.000625)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half the probe rows collapsed to p == 1.0 by the end", fracs[-1] > 0.5)
    ctx.check("collapsed on most checkpoints", _median(fracs) > 0.3)
    ctx.check("the tau-0.0625 twin has no collapsed row", max(twin_fracs) == 0.0)


# -- creel: the loss is summed instead of averaged for one step ----------------------------------

ONSET_CREEL = 100


class _CreelLoss:
    def __call__(self, step, out, y):
        # the resume path rebuilt the criterion with reduction="sum" for its first step
        reduction = "sum" if step == ONSET_CREEL else "mean"
        return F.binary_cross_entropy_with_logits(out, y, reduction=reduction)


def _catches(gen, batch, seed, d_in=12, species=6):
    """Which of 6 species a creel holds, from 12 standardised readings (depth, bait, ...)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, species, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        p = torch.sigmoid(x @ w / math.sqrt(d_in) * 2.5 - 0.5)
        yield x, (torch.rand(batch, species, generator=gen) < p).float()


@scenario(
    family="creel_catch_species_bce_tagger",
    optimizer="RMSprop",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CREEL,
    note="A ReLU MLP multi-label tagger (fc1, act1, fc2, act2, head) saying which of 6 species a lobster-and-crab creel holds from 12 standardised readings (depth, bait age, soak time, sea temperature, ...), RMSprop at 1e-3, BCE with logits, gradient clipping at norm 1. At step 100 the job resumes from a checkpoint and the resume path rebuilds the criterion with reduction='sum' for that first step (64 rows x 6 labels), so the loss and the gradient are about 384x their usual size for exactly one step (the data are ordinary: the same batch's mean loss is within 2x the median). Clipping bounds the update, the run continues and recovers. Finite, no blow-up.",
)
def h276_creel_sum_reduction_one_step(ctx: Context) -> None:
    gen = seeded(27608)
    model = Stack(12, hidden=64, out=6)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_CREEL:
            seen["mean"] = float(F.binary_cross_entropy_with_logits(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _catches(gen, 64, 68),
        220,
        _CreelLoss(),
        watch=watch,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = ls[ONSET_CREEL - 30 : ONSET_CREEL]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the resume", _fell(ls[:ONSET_CREEL], ratio=0.8))
    ctx.check(
        "gradient at step 100 over 100x the median",
        gn[ONSET_CREEL] > 100 * _median(gn[ONSET_CREEL - 30 : ONSET_CREEL]),
    )
    ctx.check(
        "the batch is ordinary (mean loss within 2x)", seen.get("mean", 1e9) < 2 * _median(before)
    )
    ctx.check(
        "the gradient is back to normal after it",
        _median(gn[-30:]) < 5 * _median(gn[ONSET_CREEL - 30 : ONSET_CREEL]),
    )
    ctx.check(
        "the run recovers (last 20 under 1.2x the earlier median)",
        _mean(ls[-20:]) < 1.2 * _median(before),
    )


# -- oakum: the hand-written decoupled weight decay has its sign flipped -------------------------


@scenario(
    family="oakum_caulking_seam_leak_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how fast a caulked hull seam weeps (standardised log leak rate) from 12 readings (oakum twist, seam width, pitch temperature, plank moisture, ...), RAdam at 3e-3, MSE. Decoupled weight decay is applied by hand after each step (p *= 1 - lr * wd on the weights, wd = 2.0), but the line was written p *= 1 + lr * wd: every step inflates the weights by 0.6%. The loss first falls, then climbs slowly and steadily to over 3x its minimum with no spike as the weight norm keeps growing; the twin with the right sign keeps falling. Finite, no blow-up in the run's length.",
)
def h276_oakum_decay_sign(ctx: Context) -> None:
    def run(c, sign):
        gen = seeded(27609)
        model = Stack(12, hidden=64, act=nn.SiLU)
        opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
        weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
        norms = [float(_flat(model).norm())]

        def after(step):
            with torch.no_grad():
                for p in weights:
                    p.mul_(1 + sign * 3e-3 * 2.0)
            norms.append(float(_flat(model).norm()))

        _train(c, model, opt, _readings(gen, 128, 12, 69), 300, _plain(F.mse_loss), after=after)
        return norms

    twin = _Twin()
    run(twin, -1.0)
    norms = run(ctx, 1.0)
    ls = ctx.losses
    smooth = [_mean(ls[i : i + 10]) for i in range(len(ls) - 9)]
    low = min(range(len(smooth)), key=lambda i: smooth[i])
    spikes = [ls[i] / _mean(ls[i - 10 : i]) for i in range(10, len(ls))]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss first fell to under half its start", smooth[low] < 0.5 * smooth[0])
    ctx.check("the lowest point is in the first half", low < len(ls) // 2)
    ctx.check("then climbed to over 3x its minimum by the end", smooth[-1] > 3 * smooth[low])
    ctx.check("no spike: no step over 2x the mean of the 10 before", max(spikes) < 2)
    ctx.check("the weight norm grew over 1.5x", norms[-1] > 1.5 * norms[0])
    ctx.check("the twin ends 2x lower", _mean(twin.losses[-10:]) < 0.5 * _mean(ls[-10:]))


# -- limnic eruption: the warm-up lambda lost its min(1, .) --------------------------------------

WARM_LIMNIC = 10


def _top_eig(model, x, y, iters=12):
    """The loss Hessian's top eigenvalue on one batch (power iteration on Hessian-vector
    products)."""
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


@scenario(
    family="limnic_eruption_co2_release_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=WARM_LIMNIC,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the CO2 a stratified crater lake would release in a limnic eruption (standardised log volume) from 10 readings (depth profile, dissolved-gas saturation, temperature gradient, ...), plain SGD at a base lr of 0.1, MSE, with a LambdaLR warm-up over 10 steps. The warm-up lambda was written s / 10 where the recipe has min(1, s / 10), so after step 10 the lr keeps growing linearly (0.1 at step 10, 0.8 at step 80): the product lr x top Hessian eigenvalue (on a fixed batch), under 2 at the start, crosses the 2/sharpness stability limit at about step 40, hovers there while the lr keeps rising, and the loss, after falling, blows up after step 80 (over 100x its minimum, non-finite at about step 97); the twin with min(1, .) trains normally.",
)
def h276_limnic_warmup_no_min(ctx: Context) -> None:
    def run(c, capped):
        gen = seeded(27610)
        model = Stack(10, hidden=48, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        if capped:
            lam = lambda s: min(1.0, (s + 1) / WARM_LIMNIC)  # noqa: E731
        else:
            lam = lambda s: (s + 1) / WARM_LIMNIC  # noqa: E731
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
        px, py = next(_readings(torch.Generator().manual_seed(9), 256, 10, 70))
        products = []

        def before(step):
            if step % 10 == 0:
                products.append((step, opt.param_groups[0]["lr"] * _top_eig(model, px, py)))

        _train(
            c,
            model,
            opt,
            _readings(gen, 128, 10, 70),
            250,
            _plain(F.mse_loss),
            before=before,
            sched=sched,
        )
        return products

    twin = _Twin()
    run(twin, True)
    products = run(ctx, False)
    ls = ctx.losses
    lo = min(range(len(ls)), key=lambda i: ls[i] if math.isfinite(ls[i]) else math.inf)
    broke = next(
        (i for i in range(lo, len(ls)) if not math.isfinite(ls[i]) or ls[i] > 100 * ls[lo]), None
    )
    ctx.check("the loss first fell", ls[lo] < 0.5 * ls[0])
    ctx.check("then blew up (over 100x its minimum or non-finite)", broke is not None)
    ctx.check("lr x sharpness under 2 at the start", products[0][1] < 2)
    ctx.check(
        "lr x sharpness over 2 before the blow-up",
        broke is not None and any(p > 2 for s, p in products if s <= broke),
    )
    ctx.check("the twin trains normally", _fell(twin.losses, ratio=0.5) and len(twin.losses) == 250)


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="bowstring_serving_wear_cosine_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a cosine-similarity classifier (fc1, act1, fc2, act2, head = 16 x cos(feature, class weight), a fixed scale of 16) grading the wear of an archery bowstring's centre serving into 8 classes from 14 readings (strand count, serving thread, shot count, nocking-point shift, ...), SGD Nesterov momentum 0.9 under OneCycleLR (max lr 0.1), cross-entropy with label smoothing 0.1, noisy overlapping classes. Trains normally.",
)
def h276_bowstring_cosine_scale16(ctx: Context) -> None:
    gen = seeded(27611)
    model = CosineNet(14, 8, tau=1 / 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    probe = next(_kinds(torch.Generator().manual_seed(11), 512, 14, 8, 71))
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 8, 71),
        200,
        lambda step, out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    ls = ctx.losses
    with torch.no_grad():
        acc = float((model(probe[0]).argmax(1) == probe[1]).float().mean())
        frac = collapsed_fraction(model(probe[0]), probe[1])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.7))
    ctx.check("held-out accuracy over 0.7", acc > 0.7)
    ctx.check("no row collapsed to p == 1.0", frac == 0.0)


class LinkNet(nn.Module):
    """inp -> two LayerNorm residual GELU blocks -> head."""

    def __init__(self, d_in=10, dim=48):
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc2 = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.fc1(F.gelu(self.norm1(h)))
        h = h + self.fc2(F.gelu(self.norm2(h)))
        return self.head(h).squeeze(-1)


@scenario(
    family="chainmaker_link_weld_strength_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a LayerNorm residual GELU MLP (inp, norm1, fc1, norm2, fc2, head) regressing the breaking strength of a forge-welded chain link (standardised) from 10 readings (bar diameter, welding heat, scarf length, hammer blows, ...), AdamW at 2e-3 with two param groups (weight decay 0.05 on the weight matrices, none on biases and LayerNorm), linear warm-up over 20 steps then cosine decay, gradient clipping at norm 1, gradient accumulation over 2 micro-batches, Huber loss on noisy targets (a few per cent of rows with a large error). Trains normally.",
)
def h276_chainmaker_adamw_groups_accum(ctx: Context) -> None:
    gen = seeded(27612)
    model = LinkNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() == 2)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=2e-3
    )
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))
        ),
    )

    def noisy(batches):
        for x, y in batches:
            bad = torch.rand(len(y), generator=gen) < 0.04
            yield x, torch.where(bad, y + 3 * torch.randn(len(y), generator=gen), y)

    _train(
        ctx,
        model,
        opt,
        noisy(_readings(gen, 64, 10, 72)),
        steps,
        _plain(F.huber_loss),
        sched=sched,
        clip=1.0,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under half", _fell(ls, ratio=0.5))


class HaloclineGRU(nn.Module):
    def __init__(self, d_in=3, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        h = out[:, -1]
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _gauss_nll(step, out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _casts(gen, batch, length=16):
    """A diver's descent into a blue hole: 16 readings of (depth, salinity, temperature);
    predict the halocline depth, with noise that grows with the depth."""
    while True:
        depth0 = torch.rand(batch, 1, generator=gen)
        halo = 0.5 + 1.5 * torch.rand(batch, 1, generator=gen)
        z = depth0 + torch.linspace(0, 2.5, length)
        sal = torch.sigmoid(4 * (z - halo)) + 0.05 * torch.randn(batch, length, generator=gen)
        temp = 1 - 0.3 * z + 0.05 * torch.randn(batch, length, generator=gen)
        x = torch.stack([z, sal, temp], -1)
        y = halo.squeeze(1) + 0.05 * halo.squeeze(1) * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="blue_hole_halocline_depth_gaussian_nll_gru",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GRU (gru, mean and log_var heads) reading a diver's 16-step cast into a marine blue hole (depth, salinity, temperature) and predicting the halocline depth with its uncertainty, Gaussian NLL (variance = exp(log_var)), Adagrad at 3e-2, ReduceLROnPlateau (patience 10, factor 0.5) on the training loss, gradient clipping at norm 1. Trains normally.",
)
def h276_blue_hole_gru_adagrad_plateau(ctx: Context) -> None:
    gen = seeded(27613)
    model = HaloclineGRU()
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10, factor=0.5)
    _train(ctx, model, opt, _casts(gen, 64), 200, _gauss_nll, sched=sched, clip=1.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the NLL fell by over 1 nat", _mean(ls[-10:]) < _mean(ls[:10]) - 1.0)
