"""Held-out set 280 (``h280_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a dune slip-face avalanche 24-layer tanh regressor without
normalisation whose init gain was applied twice, a glacial-erratic provenance BCE tagger whose
multi-hot targets lost their clamp, a dew-pond fill-level net whose per-sample standardisation
has no eps, a punt-pole push classifier whose resumed checkpoint misses the renamed head, a
star-dune arm-count cosine classifier whose normalisation was switched off, a mudflat ooze-depth
Huber regressor fed one shard in millimetres, a seed-drill spacing regressor whose last
accumulation window multiplies the loss, a gabion fill-grade classifier whose encoder lr lost
its exponent, a pack-ice floe classifier whose RMSprop lr was typed 100x, a sand-ripple
wavelength regressor warmed up to a peak lr typed 10x, and three controls (an ice-stupa icicle
count Poisson net, a cob-oven bake-stage classifier under fp16 autocast with a GradScaler, a
glacier-table melt-stage Conv1d classifier with accumulation and warm-up into cosine).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
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
    scale_loss=None,
):
    """The file's loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` sees the forward pass, ``after(step)`` runs after the optimizer
    step, ``scale_loss(step, accumulate)`` is what each micro-batch's loss is multiplied by
    before backward (1/accumulate when correct); stops after logging a non-finite loss."""
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
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            factor = scale_loss(step, accumulate) if scale_loss else 1.0 / accumulate
            total = loss * factor
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


def _traces(gen, batch, classes, seed, channels=3, length=32, noise=0.5):
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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- dune slip face: the tanh init gain was applied twice over 24 layers -----------------------


class SlipfaceNet(nn.Module):
    """24 Linear + tanh layers of width 32 with no normalisation, then a linear head."""

    def __init__(self, d_in=12, width=32, depth=24, gain=5 / 3):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="dune_slipface_avalanche_deep_tanh_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 24-layer tanh MLP of width 32 with no normalisation layers (layers.0 .. layers.23, head) regressing how far a grain avalanche runs down a dune's slip face from 12 standardised readings (wind speed, grain size, crest height, moisture, ...), plain SGD at 1e-2, MSE, clipping at 1.0. The init helper multiplies the tanh gain 5/3 into the std and the config's init_gain (also set to 5/3, meant as the whole gain) multiplies it again: std (25/9)/sqrt(fan_in), deep in the chaotic phase. The backward pass multiplies the gradient at every layer, so layers.0's weight gradient is over 100x layers.23's from the start and stays so; the clip then leaves the upper layers almost no step and the loss barely moves, while the twin with gain 5/3 has a ratio under 10 and learns. Finite, no blow-up.",
)
def h280_slipface_init_gain_twice(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(28001)
        model = SlipfaceNet(gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        ratios = []
        orig_step = opt.step

        def step_and_record(*a, **k):
            g0 = model.layers[0].weight.grad
            gl = model.layers[-1].weight.grad
            if g0 is not None and gl is not None:
                ratios.append(float(g0.norm() / (gl.norm() + 1e-30)))
            return orig_step(*a, **k)

        opt.step = step_and_record
        _train(c, model, opt, _readings(gen, 64, 12, 81), 200, F.mse_loss, clip=1.0)
        return ratios

    twin = _Twin()
    twin_ratios = run(twin, 5 / 3)
    ratios = run(ctx, (5 / 3) ** 2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("layers.0's gradient over 100x layers.23's at the start", ratios[0] > 100)
    ctx.check("and over 100x in the median over the run", _median(ratios) > 100)
    ctx.check("the twin with gain 5/3 keeps the ratio under 10", _median(twin_ratios) < 10)
    ctx.check(
        "the twin ends with a lower loss",
        _mean(twin.losses[-20:]) < 0.8 * _mean(ls[-20:]),
    )


# -- glacial erratic: the multi-hot provenance targets lost their clamp -------------------------


def _erratics(gen, batch, seed, d_in=16, sources=5, clasts=3):
    """Till samples of three clasts each, drawn from 5 source outcrops; features are the sum of
    the clasts' mineral signatures plus noise. Returns the per-source clast counts."""
    g = torch.Generator().manual_seed(seed)
    sig = torch.randn(sources, d_in, generator=g)
    while True:
        src = torch.randint(0, sources, (batch, clasts), generator=gen)
        counts = F.one_hot(src, sources).sum(1).float()
        x = counts @ sig / math.sqrt(clasts) + torch.randn(batch, d_in, generator=gen)
        yield x, counts


@scenario(
    family="glacial_erratic_provenance_bce_tagger",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head with 5 logits) tagging which of 5 source outcrops the clasts of a glacial-erratic till sample came from (multi-label, BCE with logits), from 16 mineral-signature readings, Adamax at 1e-2. The targets are built by summing one-hot source labels over the sample's three clasts and were meant to be clamped to 1 (presence); the clamp was dropped in a refactor, so about a fifth of the sample-source pairs carry a target of 2 or 3. For a target above 1 the BCE gradient sigmoid(z) - y is negative for every z, so the loss is unbounded below and the head's logits for those outcrops are pushed up without limit: the peak |logit| on a probe batch grows over 20x from step 1 and is still growing at the end, the reported loss goes negative; the twin with the clamp keeps its logits bounded. Finite, no blow-up.",
)
def h280_glacial_erratic_target_clamp_dropped(ctx: Context) -> None:
    def run(c, clamp):
        gen = seeded(28002)
        model = Stack(16, hidden=48, out=5, act=nn.Tanh)
        opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
        probe = next(_erratics(torch.Generator().manual_seed(7), 256, 82))[0]
        with torch.no_grad():
            peaks = [float(model(probe).abs().max())]

        def loss_fn(out, counts):
            y = counts.clamp(max=1.0) if clamp else counts
            return F.binary_cross_entropy_with_logits(out, y)

        def after(step):
            with torch.no_grad():
                peaks.append(float(model(probe).abs().max()))

        _train(c, model, opt, _erratics(gen, 64, 82), 300, loss_fn, after=after)
        return peaks

    twin = _Twin()
    twin_peaks = run(twin, True)
    peaks = run(ctx, False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak logit grew over 20x from step 1", peaks[-1] > 20 * peaks[1])
    ctx.check("and was still growing over the last 50 steps", peaks[-1] > 1.1 * peaks[-51])
    ctx.check("the reported loss went negative", ls[-1] < 0)
    ctx.check("the twin's peak logit stays 5x smaller", twin_peaks[-1] < peaks[-1] / 5)


# -- dew pond: the per-sample standardisation has no eps ----------------------------------------

ONSET_DEW = 90


class InstanceScale(nn.Module):
    """Standardises each channel of each day's 24 hourly readings (no eps in the divisor)."""

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        return (x - mean) / x.std(-1, keepdim=True)


class DewPondNet(nn.Module):
    def __init__(self, channels=4, hours=24, hidden=48):
        super().__init__()
        self.scale = InstanceScale()
        self.level = nn.Linear(channels, hidden)
        self.fc1 = nn.Linear(channels * hours, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(2 * hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        shape = self.act1(self.fc1(self.scale(x).flatten(1)))
        h = torch.cat([shape, self.level(x.mean(-1))], -1)
        return self.head(self.act2(self.fc2(h))).squeeze(-1)


def _dew_days(gen, batch, seed):
    """Hourly pond level, rain (mm, drizzle most hours), evaporation and air temperature;
    target: the next day's change of the fill level."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    t = torch.arange(24).float()
    while True:
        base = torch.randn(batch, 4, 1, generator=gen)
        wiggle = torch.sin(2 * math.pi * t / 24 + 6.28 * torch.rand(batch, 4, 1, generator=gen))
        x = base + 0.5 * wiggle + 0.2 * torch.randn(batch, 4, 24, generator=gen)
        rain = 0.05 + torch.rand(batch, 24, generator=gen) * (1 + base[:, 1].exp())
        x[:, 1] = rain
        y = torch.tanh(x.mean(-1) @ w / 2) + 0.3 * x[:, 0].std(-1)
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="dew_pond_fill_level_instance_scaled_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("scale",),
    diverges=ONSET_DEW,
    onset=ONSET_DEW,
    heldout=True,
    note="A SiLU net forecasting the next day's change in a chalk-down dew pond's fill level from a day of hourly readings (level, rain gauge, evaporation pan, air temperature; 4 x 24): scale standardises each channel of each day by its own mean and std, fc1 reads the standardised shape, level reads the daily means, fc2, head; NAdam at 2e-3, MSE. The standardisation was written (x - mean) / std without the eps. Every day so far had some drizzle, but the batch at step 90 holds a completely dry day whose rain gauge reads exactly 0.0 for all 24 hours: its std is 0, scale outputs 0/0 = NaN for that row and the loss is NaN at step 90. Finite and falling before.",
)
def h280_dew_pond_std_without_eps(ctx: Context) -> None:
    gen = seeded(28003)
    model = DewPondNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_DEW:
            x = x.clone()
            x[5, 1] = 0.0  # a dry day
        return x, y

    def watch(step, out, x, y):
        if step == ONSET_DEW:
            with torch.no_grad():
                seen["rain_std"] = float(x[5, 1].std())
                seen["scale_nan"] = bool(torch.isnan(model.scale(x)[5]).any())
                seen["other_rows_finite"] = bool(torch.isfinite(model.scale(x[:5])).all())

    _train(ctx, model, opt, _dew_days(gen, 64, 83), 150, F.mse_loss, alter=alter, watch=watch)
    ls = ctx.losses
    ctx.check("finite before the dry day", _finite(ls[:ONSET_DEW]))
    ctx.check("the loss fell before it", _fell(ls[:ONSET_DEW], ratio=0.7))
    ctx.check("the dry day's rain std is exactly 0", seen.get("rain_std", 1.0) == 0.0)
    ctx.check("scale outputs NaN for that row", seen.get("scale_nan", False))
    ctx.check("and finite values for the other rows", seen.get("other_rows_finite", False))
    ctx.check("the loss is first non-finite at step 90", _first_bad(ls) == ONSET_DEW)


# -- punt pole: the resumed checkpoint misses the renamed head ----------------------------------

ONSET_PUNT = 150


@scenario(
    family="punt_pole_push_style_gelu_classifier",
    optimizer="Adam",
    cause="loss_spike",
    where=("head",),
    diverges=None,
    onset=ONSET_PUNT,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying which of 5 push styles a river punter uses from 20 pole-pressure and hull-motion readings, Adam at 3e-3, cross-entropy. The job is pre-empted and resumed at step 150 from a checkpoint written before a refactor renamed head to classifier in the saved state (classifier.weight, classifier.bias); the resume loads it with strict=False, so the trunk and the optimizer state come back but the head keeps the fresh init of the restarted process (missing_keys lists head.weight and head.bias, and nobody reads it). The loss jumps over 3x on an ordinary batch at step 150 (the same batch gives an ordinary loss with the pre-resume weights), then recovers within about 30 steps because the trunk's features are intact. Finite, no blow-up.",
)
def h280_punt_pole_resume_missing_head(ctx: Context) -> None:
    gen = seeded(28004)
    model = Stack(20, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    seen = {}

    def before(step):
        if step == ONSET_PUNT:
            saved = copy.deepcopy(model.state_dict())
            seen["before"] = copy.deepcopy(model)
            ckpt = {k.replace("head.", "classifier."): v for k, v in saved.items()}
            torch.manual_seed(2804)
            model.head.reset_parameters()  # the restarted process builds a fresh model
            seen["missing"] = model.load_state_dict(ckpt, strict=False).missing_keys

    def watch(step, out, x, y):
        if step == ONSET_PUNT:
            with torch.no_grad():
                seen["old_loss"] = float(F.cross_entropy(seen["before"](x), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 5, 84, noise=1.0),
        230,
        F.cross_entropy,
        classifier=True,
        before=before,
        watch=watch,
    )
    ls = ctx.losses
    pre = _median(ls[ONSET_PUNT - 20 : ONSET_PUNT])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the resume left head.weight missing", "head.weight" in seen.get("missing", []))
    ctx.check("the loss jumps over 3x at step 150", ls[ONSET_PUNT] > 3 * pre)
    ctx.check(
        "the batch is ordinary: the pre-resume weights give it under 2x the median",
        seen.get("old_loss", math.inf) < 2 * pre,
    )
    ctx.check(
        "recovered within 40 steps (under 1.5x the pre-resume median)",
        _mean(ls[ONSET_PUNT + 40 : ONSET_PUNT + 50]) < 1.5 * pre,
    )


# -- star dune: the cosine classifier's temperature is applied twice ----------------------------


class CosineHead(nn.Module):
    """cos(h, w) / temperature logits over L2-normalised features and class weights."""

    def __init__(self, d_in, classes, temperature=0.07):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d_in) / math.sqrt(d_in))
        self.temperature = temperature

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return cos / self.temperature


class StarDuneNet(nn.Module):
    def __init__(self, d_in=24, hidden=64, classes=4, temperature=0.07, rescale=False):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, temperature)
        self.rescale = rescale

    def forward(self, x):
        logits = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        # kept from the version whose head returned plain cosines
        return logits / self.head.temperature if self.rescale else logits


@scenario(
    family="star_dune_arm_count_cosine_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2) with a cosine-softmax head (head: cos(h, w) / temperature, temperature 0.07) classifying how many arms a star dune has (3 to 6) from 24 wind-direction-frequency readings, AdamW at 1e-3, cross-entropy. The head learned to divide by the temperature in a refactor, but the model's forward still divides its output by head.temperature as it did when the head returned plain cosines: the logits are cos / 0.0049, up to about 200, and the float32 softmax rounds the target's probability to exactly 1.0 on over half the training rows (median over the run) while the twin with the single division (logits at most 14.3) has under 5%. Misclassified rows carry losses of tens. Finite, no blow-up.",
)
def h280_star_dune_temperature_twice(ctx: Context) -> None:
    def run(c, rescale):
        gen = seeded(28005)
        model = StarDuneNet(rescale=rescale)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        fractions = []

        def watch(step, out, x, y):
            fractions.append(collapsed_fraction(out.detach(), y))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 24, 4, 85, noise=0.8),
            200,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return fractions

    twin = _Twin()
    twin_fractions = run(twin, False)
    fractions = run(ctx, True)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "over half the rows give the target exactly 1.0 (median over the run)",
        _median(fractions) > 0.5,
    )
    ctx.check("the twin with one division stays under 5%", _median(twin_fractions) < 0.05)


# -- mudflat: one survey shard logged its probe depths in millimetres ---------------------------

ONSET_MUD = 120


@scenario(
    family="mudflat_ooze_depth_huber_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=ONSET_MUD,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how deep a person sinks into estuary mudflat ooze from 10 standardised survey readings (probe penetration depths, grain size, water content, tide state, ...), SGD momentum 0.9 at 1e-2, Huber loss, clipping at 1.0. One survey team's shard logged its four probe-depth columns in millimetres instead of metres, and the batch at step 120 draws eight rows from it: those columns are about 1000x, so the loss and the (pre-clip) gradient norm jump over 100x and 30x for that one step; the clip bounds the update and the run recovers to its previous level within about 30 steps. Finite, no blow-up.",
)
def h280_mudflat_shard_in_millimetres(ctx: Context) -> None:
    gen = seeded(28006)
    model = Stack(10, hidden=64, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_MUD:
            x = x.clone()
            x[:8, :4] = x[:8, :4] * 1000.0
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 86),
        220,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_MUD - 20 : ONSET_MUD])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss jumps over 100x at step 120", ls[ONSET_MUD] > 100 * pre)
    ctx.check(
        "the gradient norm jumps over 30x at step 120",
        gs[ONSET_MUD] > 30 * _median(gs[ONSET_MUD - 20 : ONSET_MUD]),
    )
    ctx.check(
        "recovered within 40 steps (under 1.5x the median before)",
        _mean(ls[ONSET_MUD + 40 : ONSET_MUD + 60]) < 1.5 * pre,
    )


# -- seed drill: the last accumulation window multiplies the loss ------------------------------

ONSET_DRILL = 100


@scenario(
    family="seed_drill_spacing_accumulated_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=ONSET_DRILL,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the in-row seed spacing a tractor seed drill will sow from 14 standardised readings (metering-wheel speed, ground speed, seed size, soil roughness, ...), SGD Nesterov (momentum 0.9) at 1e-2, MSE, gradient accumulation over 8 micro-batches of 16, clipping at 1.0. The branch that handles the epoch's last accumulation window (step 100) was written loss * accum_steps for loss / accum_steps, so that one step's gradient is 64x (the pre-clip norm jumps over 30x) on ordinary batches whose loss is unremarkable; the clip bounds the update and the loss carries on as before. Finite, no blow-up.",
)
def h280_seed_drill_accumulation_multiplied(ctx: Context) -> None:
    gen = seeded(28007)
    model = Stack(14, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def scale_loss(step, accumulate):
        return float(accumulate) if step == ONSET_DRILL else 1.0 / accumulate

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 16, 14, 87, noise=0.2),
        180,
        F.mse_loss,
        accumulate=8,
        scale_loss=scale_loss,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_DRILL - 20 : ONSET_DRILL])
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the gradient norm jumps over 30x at step 100",
        gs[ONSET_DRILL] > 30 * _median(gs[ONSET_DRILL - 20 : ONSET_DRILL]),
    )
    ctx.check("the loss at step 100 is ordinary (under 2x the median)", ls[ONSET_DRILL] < 2 * pre)
    ctx.check(
        "the loss stays at its level after (under 1.5x)",
        _mean(ls[ONSET_DRILL + 10 : ONSET_DRILL + 40]) < 1.5 * pre,
    )


# -- gabion: the encoder group's learning rate lost its exponent --------------------------------


def _update_ratios(model, names):
    prev = {n: getattr(model, n).weight.detach().clone() for n in names}
    ratios = {n: [] for n in names}

    def after(step):
        for n in names:
            w = getattr(model, n).weight.detach()
            ratios[n].append(float((w - prev[n]).norm() / prev[n].norm()))
            prev[n] = w.clone()

    return ratios, after


@scenario(
    family="gabion_wall_fill_grade_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (encoder fc1, act1, fc2, act2; head) grading the stone fill of a gabion basket wall into 6 grades from 18 readings (stone size spread, void ratio, mesh bulge, ...), Adagrad with two param groups, cross-entropy. The encoder group's lr was meant as 5e-2 (as the head's) but the YAML holds 5e-9 (a stray exponent from the weight-decay line above), so fc1 and fc2 get update ratios under 1e-6 a step for the whole run and stay at their init; only the head learns, and the loss ends well above the twin with the encoder at 5e-2. Finite, no blow-up.",
)
def h280_gabion_encoder_lr_exponent(ctx: Context) -> None:
    def run(c, enc_lr):
        gen = seeded(28008)
        model = Stack(18, hidden=64, out=6, act=nn.ReLU)
        encoder = [*model.fc1.parameters(), *model.fc2.parameters()]
        opt = torch.optim.Adagrad(
            [{"params": encoder, "lr": enc_lr}, {"params": model.head.parameters()}], lr=5e-2
        )
        ratios, after = _update_ratios(model, ("fc1", "fc2", "head"))
        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 18, 6, 88, noise=0.6),
            200,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return ratios

    twin = _Twin()
    run(twin, 5e-2)
    ratios = run(ctx, 5e-9)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("fc1's update ratio under 1e-6 (median)", _median(ratios["fc1"]) < 1e-6)
    ctx.check("fc2's update ratio under 1e-6 (median)", _median(ratios["fc2"]) < 1e-6)
    ctx.check("the head's update ratio over 1e-4 (median)", _median(ratios["head"]) > 1e-4)
    ctx.check(
        "the twin ends with a loss under 0.7x",
        _mean(twin.losses[-20:]) < 0.7 * _mean(ls[-20:]),
    )


# -- pack ice: the RMSprop learning rate was typed 100x -----------------------------------------


@scenario(
    family="pack_ice_floe_type_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying sea-ice floes into 5 types (pancake, nilas, first-year, multi-year, brash) from 16 radar-backscatter and thickness readings, RMSprop, cross-entropy. The lr was typed 1e-1 for 1e-3: the first updates are huge, over 30% of act2's units (about 40%) are driven negative on every input of a probe batch and never fire again (still dead at the end); the loss swings and ends over 2x the twin at 1e-3, whose act2 keeps under 10% dead. Finite.",
)
def h280_pack_ice_rmsprop_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(28009)
        model = Stack(16, hidden=64, out=5, act=nn.ReLU)
        opt = torch.optim.RMSprop(model.parameters(), lr=lr)
        px = next(_kinds(torch.Generator().manual_seed(11), 512, 16, 5, 89, noise=1.0))[0]
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(px)))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 5, 89, noise=1.0),
            200,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return dead

    twin = _Twin()
    twin_dead = run(twin, 1e-3)
    dead = run(ctx, 1e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over 30% of act2 is dead at step 100", dead[100] > 0.3)
    ctx.check("and still at the end", dead[-1] > 0.3)
    ctx.check("the twin's act2 keeps under 10% dead", twin_dead[-1] < 0.1)
    ctx.check("the loss ends over 2x the twin's", _mean(ls[-20:]) > 2 * _mean(twin.losses[-20:]))


# -- sand ripple: the warm-up's peak lr was typed 10x -------------------------------------------


def _sharpness(model, loss_fn, x, y, iters=12):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


WARM_RIPPLE = 100


@scenario(
    family="sand_ripple_wavelength_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=20,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the wavelength of wind ripples on a sand sheet from 8 standardised readings (wind speed, grain size, sorting, saltation flux, ...), plain SGD, MSE, linear warm-up over 100 steps to a peak lr that the sweep config typed 2.0 for 0.2. While the lr is small the loss falls; as the warm-up passes 2/sharpness (lr x top Hessian eigenvalue measured on a probe batch crosses 2 around step 20, at an lr of about 0.4) the iterates start to oscillate along the sharpest direction, the loss rises and blows up past 100x its low around step 50, within the warm-up; the twin warming up to 0.2 stays below the limit and keeps falling.",
)
def h280_sand_ripple_warmup_peak_typo(ctx: Context) -> None:
    def run(c, peak, measure):
        gen = seeded(28010)
        model = Stack(8, hidden=32, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        px, py = next(_readings(torch.Generator().manual_seed(13), 256, 8, 90))
        lr_sharp = []

        def before(step):
            lr = peak * min(1.0, (step + 1) / WARM_RIPPLE)
            for group in opt.param_groups:
                group["lr"] = lr
            if measure and step % 5 == 0 and len(lr_sharp) < 40:
                lam = _sharpness(model, F.mse_loss, px, py)
                lr_sharp.append((step, lr * lam))

        _train(c, model, opt, _readings(gen, 64, 8, 90), 160, F.mse_loss, before=before)
        return lr_sharp

    twin = _Twin()
    run(twin, 0.2, False)
    lr_sharp = run(ctx, 2.0, True)
    ls = ctx.losses
    cross = next((s for s, v in lr_sharp if v > 2), None)
    blow = next(
        (i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * min(ls[: i + 1])), None
    )
    ctx.check("the loss fell at first (step 30 under 0.7x step 0)", ls[30] < 0.7 * ls[0])
    ctx.check("lr x sharpness crossed 2", cross is not None)
    ctx.check("the loss blew up (over 100x its low or non-finite)", blow is not None)
    ctx.check(
        "the crossing came before the blow-up",
        cross is not None and blow is not None and cross < blow,
    )
    ctx.check("the twin at 0.2 stays finite and falls", _fell(twin.losses, ratio=0.5))


# -- controls ------------------------------------------------------------------------------------


class IcicleNet(nn.Module):
    """SiLU MLP predicting the log rate of a Poisson count."""

    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.log_rate = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.log_rate(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _icicle_days(gen, batch, seed, d_in=10):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(1.0 + 0.8 * torch.tanh(x @ w / math.sqrt(d_in)))
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="ice_stupa_icicle_count_poisson_net",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, log_rate) predicting how many new icicles form overnight on an artificial ice stupa (a Poisson likelihood: F.poisson_nll_loss with log_input) from 10 standardised readings (air temperature, wind, pipe pressure, humidity, ...), RAdam at 3e-3 with weight decay 1e-4, ReduceLROnPlateau (patience 20), clipping at 5.0. Trains normally: the Poisson NLL falls and stays finite.",
)
def h280_ice_stupa_poisson_control(ctx: Context) -> None:
    gen = seeded(28011)
    model = IcicleNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _icicle_days(gen, 64, 91),
        250,
        lambda out, y: F.poisson_nll_loss(out, y, log_input=True),
        sched=sched,
        clip=5.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the Poisson NLL fell", _fell(ls, k=20, ratio=0.8))


class CobOvenNet(nn.Module):
    def __init__(self, d_in=20, hidden=64, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.drop(self.act1(self.fc1(x))))))


@scenario(
    family="cob_oven_bake_stage_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a GELU MLP with dropout (fc1, act1, drop, fc2, act2, head) classifying which of 5 bake stages a wood-fired cob oven is in from 20 readings (dome and hearth thermocouples, flue draught, door-open time, ...), trained under fp16 autocast with a torch.amp.GradScaler, AdamW with two param groups (weight decay 0.05 on weights, none on biases), OneCycleLR to 3e-3, label smoothing 0.1, clipping at 1.0 after unscaling. Trains normally: the loss falls, finite, the scale never collapses.",
)
def h280_cob_oven_fp16_control(ctx: Context) -> None:
    gen = seeded(28012)
    model = CobOvenNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 5, 92, noise=0.8),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under 0.6x", _fell(ls, ratio=0.6))
    ctx.check("the scale stays at or above 64", min(ctx.scales) >= 64)


class MeltStageConv(nn.Module):
    def __init__(self, channels=3, width=16, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


@scenario(
    family="glacier_table_melt_stage_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="Control: a two-layer ReLU Conv1d classifier (conv1, act1, conv2, act2, pool, head) naming which of 4 melt stages a glacier table (a boulder on its ice pedestal) is in from 32-sample traces of three sensors (pedestal tilt, surface-lowering stake, shortwave radiation), SGD momentum 0.9 at 5e-2 with linear warm-up over 20 steps then cosine decay (LambdaLR), gradient accumulation over 2 micro-batches, 10% of the labels noisy, clipping at 2.0. Trains normally: the loss falls and stays finite.",
)
def h280_glacier_table_conv1d_control(ctx: Context) -> None:
    gen = seeded(28013)
    model = MeltStageConv()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    steps = 180

    def factor(step):
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def noisy(source):
        for x, y in source:
            flip = torch.rand(len(y), generator=gen) < 0.1
            yield x, torch.where(flip, torch.randint(0, 4, y.shape, generator=gen), y)

    _train(
        ctx,
        model,
        opt,
        noisy(_traces(gen, 32, 4, 93)),
        steps,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        accumulate=2,
        clip=2.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under 0.7x", _fell(ls, ratio=0.7))
