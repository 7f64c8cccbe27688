"""Held-out set 325 (``h325_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before. Faults: a crosscut-saw stroke-rhythm LSTM with hand-written
gates whose recurrent init gain is typed 6.0 for 0.6 (gradients grow through time), a
knife-sharpening edge-angle regressor fed one shard with the whetstone grit as raw grit numbers
(one corrupted batch), a hog-calling contest spectrogram classifier whose calibration temperature
multiplies instead of divides (softmax saturates), a soap-making trace-time regressor resumed from
a checkpoint picked by a lexicographic sort (one loss spike, recovers), a tree-climbing ascent-time
Gaussian NLL net whose variance lost its softplus (log of a negative, NaN), a slip-casting
wall-thickness regressor whose trunk learning rate is scaled by 10 ** -8 for 10 ** -0.8 (trunk
frozen), a brick-making kiln-shrinkage regressor with unclipped importance weights (Adam's second
moment poisoned), an oar-making blade-flex Huber regressor whose loss weight is read in percent for
one step (one gradient burst), a throat-singing overtone fp16 classifier with a hand-written
softmax that overflows under autocast, and a mosaic-tile crack tagger trained on 0/255 masks (the
head's logits grow without bound). Controls: a silbo whistled-word GRU with hand-written gates
under SGD momentum and OneCycleLR, a cattle-auction bid-call fp16 Conv1d classifier, a
wool-spinning yarn-twist tied autoencoder.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


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
    before=None,
    alter=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
    stop_after_bad=0,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, accumulate)``
    returns the micro-batch loss actually backpropagated, ``after(step)`` runs after the optimizer
    step, ``plateau()`` returns the validation loss for a ReduceLROnPlateau ``sched``. Stops
    ``stop_after_bad`` steps after the first non-finite loss (a GradScaler run may go on)."""
    ctx.attach(model, opt, scaler=scaler)
    bad = None
    for step in range(steps):
        if before is not None:
            before(step)
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
            total = backprop(step, loss, accumulate) if backprop else loss / accumulate
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
        if not math.isfinite(shown) and bad is None:
            bad = step
        if bad is not None and step >= bad + stop_after_bad:
            return step
    return steps


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.5 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _spectrogram(gen, batch, classes, seed, frames=32, bins=24, noise=0.35, jitter=1.5):
    """Speech-like log-spectrogram frames (batch, frames, bins): each class is a call with two
    formants gliding between its own start and end bins, a syllable envelope and pitch jitter."""
    g = torch.Generator().manual_seed(seed)
    start = 3 + (bins - 6) * torch.rand(classes, 2, generator=g)
    end = 3 + (bins - 6) * torch.rand(classes, 2, generator=g)
    rate = 1.0 + 3.0 * torch.rand(classes, generator=g)
    t = torch.linspace(0, 1, frames)
    f = torch.arange(bins, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        shift = jitter * torch.randn(batch, 1, 1, generator=gen)
        track = start[y][:, None, :] + (end[y] - start[y])[:, None, :] * t[None, :, None] + shift
        env = 0.6 + 0.4 * torch.sin(math.pi * rate[y][:, None] * t[None, :]) ** 2
        peaks = torch.exp(-0.5 * ((f[None, None, None, :] - track[..., None]) / 1.2) ** 2)
        x = env[..., None] * peaks.sum(2)
        yield x + noise * torch.randn(batch, frames, bins, generator=gen), y


# -- models ----------------------------------------------------------------------------------------


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


class GatedLSTM(nn.Module):
    """A hand-written LSTM: wx (input to the four gates), wh (recurrent, no bias), head on the
    last hidden state; keeps every hidden state (with its gradient) for inspection."""

    def __init__(self, d_in, hidden=32, rec_gain=1.0):
        super().__init__()
        self.hidden = hidden
        self.wx = nn.Linear(d_in, 4 * hidden)
        self.wh = nn.Linear(hidden, 4 * hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            for k in range(4):
                nn.init.orthogonal_(self.wh.weight[k * hidden : (k + 1) * hidden], gain=rec_gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        b, t, _ = x.shape
        h = torch.zeros(b, self.hidden)
        c = torch.zeros(b, self.hidden)
        self.states = []
        for s in range(t):
            i, f, g, o = (self.wx(x[:, s]) + self.wh(h)).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


class GatedGRU(nn.Module):
    """A hand-written GRU over spectrogram frames: wx (input to reset, update and candidate), wh
    (recurrent), head on the mean of the hidden states."""

    def __init__(self, bins, hidden, classes):
        super().__init__()
        self.hidden = hidden
        self.wx = nn.Linear(bins, 3 * hidden)
        self.wh = nn.Linear(hidden, 3 * hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        b, t, _ = x.shape
        h = torch.zeros(b, self.hidden)
        xs = self.wx(x)
        outs = []
        for s in range(t):
            xr, xz, xn = xs[:, s].chunk(3, -1)
            hr, hz, hn = self.wh(h).chunk(3, -1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            outs.append(h)
        return self.head(torch.stack(outs, 1).mean(1))


class SpecConv(nn.Module):
    """A GELU Conv1d over spectrogram frames (bins as channels): conv1, conv2, mean pooling over
    time, head."""

    def __init__(self, bins, classes, width=32):
        super().__init__()
        self.conv1 = nn.Conv1d(bins, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x.transpose(1, 2)))
        h = F.gelu(self.conv2(h))
        return self.head(h.mean(-1))


# -- crosscut saw: the LSTM's recurrent init gain typed 6.0 for 0.6 --------------------------------

GAIN_CS = 6.0  # meant 0.6


def _strokes(gen, batch, length=40):
    """Two-person crosscut saw: per-stroke push force, pull force and blade speed over 40 strokes;
    the target is the (standardised) time to finish the cut, driven by the rhythm's evenness."""
    while True:
        push = 0.5 * torch.randn(batch, length, generator=gen).cumsum(1) / math.sqrt(length)
        pull = push + 0.3 * torch.randn(batch, length, generator=gen)
        speed = torch.sin(0.4 * torch.arange(length) + 6.28 * torch.rand(batch, 1, generator=gen))
        x = torch.stack([push, pull, speed + 0.2 * torch.randn(batch, length, generator=gen)], -1)
        y = 0.8 * (push - pull).abs().mean(1) - 0.5 * push[:, -10:].mean(1) - 0.3
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="crosscut_saw_stroke_rhythm_gated_lstm",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("wh",),
    diverges=None,
    heldout=True,
    note="A hand-written LSTM (wx input projection to the four gates, wh recurrent projection, head on the last hidden state; the gates i, f, g, o written out with sigmoid and tanh) reading 40 strokes of a two-person crosscut saw's push force, pull force and blade speed and predicting the time to finish the cut, plain SGD at 5e-2, MSE, 120 steps. The recurrent blocks are initialised orthogonal with the config's rec_gain, typed 6.0 for 0.6: backpropagation through the 40 strokes multiplies the gradient at every stroke, so the gradient reaching the first hidden state is tens of times the one at the last or more and the total gradient norm is far above that of the same run at gain 0.6.",
)
def h325_crosscut_saw_recurrent_gain_typo(ctx: Context) -> None:
    gen = seeded(32501)
    model = GatedLSTM(3, 32, rec_gain=GAIN_CS)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ratios = []

    def after(step):
        first, last = model.states[0].grad, model.states[-1].grad
        if first is not None and last is not None:
            ratios.append(float(first.norm() / (last.norm() + 1e-30)))

    _loop(ctx, model, opt, _strokes(gen, 32), 120, F.mse_loss, after=after)
    # the same run's first gradient at the intended gain, for comparison
    torch.manual_seed(32501)
    sane = GatedLSTM(3, 32, rec_gain=0.6)
    x, y = next(_strokes(torch.Generator().manual_seed(32501), 32))
    F.mse_loss(sane(x), y).backward()
    sane_norm = grad_norm(sane)
    ctx.check(
        "the first hidden state's gradient is over 20x the last one's at step 0",
        bool(ratios) and ratios[0] > 20,
    )
    ctx.check(
        "the median first/last gradient ratio over the run stays over 20x",
        _median(ratios) > 20,
    )
    ctx.check(
        "the step-0 gradient norm is over 10x that of the same LSTM at gain 0.6",
        ctx.grad_norms[0] > 10 * sane_norm,
    )


# -- knife sharpening: one shard with the whetstone grit as raw grit numbers ----------------------

ONSET_KS = 110


@scenario(
    family="knife_sharpening_edge_angle_silu_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KS,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the edge angle a knife sharpener reaches from ten standardised readings (whetstone grit, stroke count, pressure, blade steel hardness), SGD with Nesterov momentum 0.9, MSE, gradient clipping at 1.0, 220 steps. The batch at step 110 comes from one workshop's shard whose grit column was exported as the raw grit number (1000-6000) instead of the standardised value: that one batch's inputs are thousands of times their scale, its loss jumps by orders of magnitude, the clipped step disturbs the weights and the run recovers on the ordinary batches that follow.",
)
def h325_knife_sharpening_raw_grit_shard(ctx: Context) -> None:
    gen = seeded(32502)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    scale = []

    def alter(step, x, y):
        if step == ONSET_KS:
            x = x.clone()
            x[:, 0] = 1000.0 * torch.randint(1, 7, (x.shape[0],)).float()  # raw grit numbers
        scale.append(float(x.abs().max()))
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 32502), 220, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    pre = _median(ls[ONSET_KS - 20 : ONSET_KS])
    ctx.check(
        "the shard's inputs are over 100x the usual scale", scale[ONSET_KS] > 100 * _median(scale)
    )
    ctx.check("the bad batch's loss is over 100x the steps before", ls[ONSET_KS] > 100 * pre)
    ctx.check(
        "the run recovers: the last 20 steps' median under 2x the pre-onset median",
        _median(ls[-20:]) < 2 * pre,
    )
    ctx.check("finite throughout", _finite(ls))


# -- hog calling: the calibration temperature multiplies instead of dividing ----------------------

TEMP_HC = 50.0


class HogCallNet(SpecConv):
    """SpecConv with max pooling over time and a zero-initialised head, whose logits are meant to
    be divided by a calibration temperature; the port multiplies."""

    def __init__(self, bins, classes):
        super().__init__(bins, classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        h = F.gelu(self.conv1(x.transpose(1, 2)))
        h = F.gelu(self.conv2(h))
        return self.head(h.amax(-1)) * TEMP_HC  # meant / TEMP_HC


@scenario(
    family="hog_calling_contest_call_spectrogram_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written speech-like GELU Conv1d classifier (conv1, conv2 over time with the 24 spectrogram bins as channels, max pooling over time, zero-initialised head) sorting hog-calling contest calls (six call styles) from 32 generated log-spectrogram frames with gliding formants, NAdam at 3e-3, cross-entropy, 300 steps. The logits are meant to be softened by a calibration temperature of 50 (logits / 50); the port writes logits * 50, so they are 2500x too sharp: from no row at all over the first 20 steps, the share of rows whose float32 softmax gives the target probability exactly 1.0 (and every other class exactly 0) rises to over a tenth of the batch, and the loss sits near zero with sudden jumps when a saturated row is wrong.",
)
def h325_hog_calling_temperature_multiplied(ctx: Context) -> None:
    gen = seeded(32503)
    model = HogCallNet(24, 6)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _spectrogram(gen, 32, 6, 32503, noise=0.2, jitter=0.5),
        300,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("no row is saturated over the first 20 steps", max(collapsed[:20]) == 0.0)
    ctx.check(
        "over a tenth of the rows' target softmax is exactly 1.0 over the last 50 steps",
        _mean(collapsed[-50:]) > 0.1,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- soap making: the resume script picks the "latest" checkpoint by a lexicographic sort ----------

ONSET_SM = 170
SAVE_SM = (50, 100, 150)


@scenario(
    family="soap_making_trace_time_gelu_regressor",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SM,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting how long a cold-process soap batter takes to reach trace from twelve standardised readings (lye concentration, oil blend, temperatures, stick-blender time), AdamW peaking at 3e-3 after a 100-step linear warm-up, MSE, 280 steps, checkpoints every 50 steps named ckpt_<step>. At step 170 the job is preempted and resumed; the resume script picks the latest checkpoint with sorted(names)[-1], which sorts lexicographically and returns ckpt_50 over ckpt_100 and ckpt_150, so the weights are those of step 50 while the optimizer state, schedule and step counter go on: the loss jumps to about 3x its level on ordinary data with no gradient burst, and the run recovers within a few dozen steps.",
)
def h325_soap_making_lexicographic_resume(ctx: Context) -> None:
    gen = seeded(32504)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    saved: dict[str, dict[str, torch.Tensor]] = {}
    picked = []

    def before(step):
        for g in opt.param_groups:
            g["lr"] = 3e-3 * min(1.0, (step + 1) / 100)
        if step in SAVE_SM:
            saved[f"ckpt_{step}"] = {k: v.clone() for k, v in model.state_dict().items()}
        if step == ONSET_SM:
            latest = sorted(saved)[-1]  # lexicographic: 'ckpt_50' > 'ckpt_150'
            picked.append(latest)
            model.load_state_dict(saved[latest])

    _loop(ctx, model, opt, _readings(gen, 64, 12, 32504, noise=0.1), 280, F.mse_loss, before=before)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_SM - 20 : ONSET_SM])
    ctx.check("the resume picked an older checkpoint than step 150", picked != ["ckpt_150"])
    ctx.check("the loss at the resume is over 2x the steps before", ls[ONSET_SM] > 2 * pre)
    ctx.check(
        "the run recovers: the last 30 steps' median under 1.3x the pre-resume median",
        _median(ls[-30:]) < 1.3 * pre,
    )
    ctx.check(
        "no gradient burst: the resume step's gradient under 20x the pre-resume median",
        gn[ONSET_SM] < 20 * _median(gn[ONSET_SM - 20 : ONSET_SM]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- tree climbing: the Gaussian NLL's variance lost its softplus ----------------------------------


class ClimbNet(Trunk):
    """Trunk with two outputs: the mean ascent time and its variance; the variance is meant to be
    softplus(raw) + 1e-6 and is written as the raw output."""

    def __init__(self):
        super().__init__(10, 64, out=2, act=nn.SiLU)
        with torch.no_grad():
            self.head.bias[1] = 1.0

    def forward(self, x):
        out = self.head(self.features(x))
        return torch.stack([out[:, 0], out[:, 1]], -1)  # meant F.softplus(out[:, 1]) + 1e-6


def _gaussian_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()


@scenario(
    family="tree_climbing_ascent_time_gaussian_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("head",),
    diverges=41,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head with two outputs: mean and variance) predicting an arborist's ascent time in a tree-climbing competition from ten standardised readings, RMSprop at 1e-3, a hand-written Gaussian NLL 0.5 log(var) + (y - mu)^2 / (2 var), 200 steps planned. The variance is meant to be softplus(raw) + 1e-6 and is written as the raw output (its bias starts at 1 so every variance is positive at first); as the mean fits, the NLL pushes the variance down, one row's variance crosses below 0, log of a negative is NaN and the loss is NaN at step 41, where the run stops.",
)
def h325_tree_climbing_variance_without_softplus(ctx: Context) -> None:
    gen = seeded(32505)
    model = ClimbNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-4)
    low = []

    def watch(step, out, x, y):
        low.append(float(out[:, 1].detach().min()))

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 32505, noise=0.1), 200, _gaussian_nll, watch=watch
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss becomes NaN", bad is not None and math.isnan(ls[bad]))
    ctx.check("it was finite for the first 20 steps", bad is not None and bad >= 20)
    ctx.check(
        "every variance was positive before and one is negative at the NaN step",
        bad is not None and min(low[:bad]) > 0 and low[bad] < 0,
    )


# -- slip casting: the trunk's discriminative lr factor typed 10 ** -8 for 10 ** -0.8 -------------

DECAY_SC = 8.0  # meant 0.8


@scenario(
    family="slip_casting_wall_thickness_relu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the wall thickness of a slip-cast mould from ten standardised readings (slip density, viscosity, plaster dryness, dwell time), Adagrad with two parameter groups, MSE, 200 steps. The trunk (fc1, fc2) is meant to train at the head's rate 5e-2 times 10 ** -0.8 and the config's decay exponent is typed 8 for 0.8, so the trunk trains at 5e-10: fc1 and fc2 move by well under 1e-6 of their norm over the whole run while the head trains on the random trunk features and the loss falls only part of the way.",
)
def h325_slip_casting_trunk_decay_exponent(ctx: Context) -> None:
    gen = seeded(32506)
    model = Trunk(10, 64)
    base = 5e-2
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [
            {"params": trunk, "lr": base * 10**-DECAY_SC},
            {"params": list(model.head.parameters()), "lr": base},
        ]
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loop(ctx, model, opt, _readings(gen, 64, 10, 32506), 200, F.mse_loss)

    def moved(prefix):
        num = sum(
            float((p.detach() - start[n]).norm() ** 2)
            for n, p in model.named_parameters()
            if n.startswith(prefix)
        )
        den = sum(
            float(start[n].norm() ** 2) for n, p in model.named_parameters() if n.startswith(prefix)
        )
        return math.sqrt(num / den)

    ctx.check("fc1 moved under 1e-6 of its norm", moved("fc1.") < 1e-6)
    ctx.check("fc2 moved under 1e-6 of its norm", moved("fc2.") < 1e-6)
    ctx.check("the head moved over 5% of its norm", moved("head.") > 0.05)
    ctx.check("the loss fell (the head trains)", _fell(ctx.losses, ratio=0.9))


# -- brick making: unclipped importance weights give one row a weight of 1e6 ----------------------

ONSET_BM = 100


@scenario(
    family="brick_making_kiln_shrinkage_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BM,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the firing shrinkage of handmade bricks from ten standardised readings (clay mix, moisture, kiln position, peak temperature), Adam at 1e-3 with betas (0.9, 0.999), MSE weighted by importance weights 1 / p of a stratified sampler, 240 steps. The weights are meant to be clipped at 10; the clip is missing, and at step 100 the sampler draws one brick from a kiln-position stratum with sampling probability 1e-6, so that row's weight is 1e6 and that step's gradient is thousands of times the usual: it fills Adam's second moment, and the momentum of that one gradient first throws the weights off, and then, with beta2 0.999, every update afterwards is far smaller per unit of (ordinary) gradient, so the loss stays well above its pre-onset level instead of coming back down.",
)
def h325_brick_making_unclipped_importance_weight(ctx: Context) -> None:
    gen = seeded(32507)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves = []
    prev = [_flat(model)]

    def weighted(out, y):
        w = torch.ones_like(y)
        if len(moves) == ONSET_BM:
            w[0] = 1.0 / 1e-6  # the rare stratum's importance weight, unclipped
        return (w * (out - y) ** 2).mean()

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    _loop(ctx, model, opt, _readings(gen, 64, 10, 32507), 260, weighted, after=after)
    gn = ctx.grad_norms
    pre_g = _median(gn[ONSET_BM - 30 : ONSET_BM])
    ctx.check("the onset gradient is over 1000x the median before", gn[ONSET_BM] > 1000 * pre_g)
    post_g = _median(gn[ONSET_BM + 60 : ONSET_BM + 140])
    ctx.check(
        "gradients 60-140 steps later have not vanished (over half the median before)",
        post_g > 0.5 * pre_g,
    )
    ctx.check(
        "update per unit of gradient 60-140 steps later is under 1/20 of that before",
        _median(moves[ONSET_BM + 60 : ONSET_BM + 140]) / post_g
        < _median(moves[ONSET_BM - 30 : ONSET_BM]) / pre_g / 20,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- oar making: one step's loss weight read in percent ------------------------------------------

ONSET_OM = 140


@scenario(
    family="oar_making_blade_flex_huber_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_OM,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the flex of a hand-shaped rowing oar's blade under a test load from ten standardised readings (loom diameter, spruce density, blade taper), SGD with momentum 0.9, Huber loss, gradient clipping at 2.0, 240 steps. The loss weight is scheduled from a table; at step 140 the schedule switches to a table written in percent (100 for a weight of 1.0) and one step's loss is multiplied by 100 before the next row is read correctly: one gradient burst of about 100x on an ordinary batch, clipped, and the run recovers.",
)
def h325_oar_making_percent_loss_weight(ctx: Context) -> None:
    gen = seeded(32508)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    step_of = []

    def backprop(step, loss, accumulate):
        step_of.append(step)
        weight = 100.0 if step == ONSET_OM else 1.0  # the percent table's row
        return weight * loss / accumulate

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 32508),
        240,
        F.huber_loss,
        backprop=backprop,
        clip=2.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre_l = _median(ls[ONSET_OM - 20 : ONSET_OM])
    ctx.check(
        "the onset gradient is over 50x the median before",
        gn[ONSET_OM] > 50 * _median(gn[ONSET_OM - 20 : ONSET_OM]),
    )
    ctx.check("the onset batch is ordinary (its loss under 3x before)", ls[ONSET_OM] < 3 * pre_l)
    ctx.check(
        "the run recovers: the last 20 steps' median under 1.5x the pre-onset median",
        _median(ls[-20:]) < 1.5 * pre_l,
    )
    ctx.check("finite throughout", _finite(ls))


# -- throat singing: a hand-written softmax overflows fp16 under autocast -------------------------


class HandSoftmax(nn.Module):
    """exp(z) / sum exp(z) written out, without subtracting the max first."""

    def forward(self, z):
        e = torch.exp(z)
        return e / e.sum(-1, keepdim=True)


class OvertoneNet(SpecConv):
    """SpecConv whose head feeds a hand-written softmax 'prob'; returns probabilities."""

    def __init__(self, bins, classes):
        super().__init__(bins, classes)
        self.prob = HandSoftmax()
        self.logits = torch.zeros(0)

    def forward(self, x):
        z = super().forward(x)
        self.logits = z.detach()
        return self.prob(z)


def _nll_of_probs(p, y):
    return -torch.log(p.gather(1, y[:, None])).mean()


@scenario(
    family="throat_singing_overtone_fp16_conv1d_classifier",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("prob",),
    diverges=142,
    heldout=True,
    note="A hand-written speech-like GELU Conv1d classifier (conv1, conv2, mean pooling, head, then a hand-written softmax 'prob' computing exp(z) / sum exp(z) without subtracting the max) naming which of five throat-singing styles (khoomei, sygyt, kargyraa, borbangnadyr, ezengileer) a generated 32-frame overtone spectrogram is, Adamax at 2e-2, NLL of the probabilities, fp16 autocast on the CPU with a torch.amp.GradScaler, 300 steps planned. As the classifier grows confident the fp16 sum of exponentials grows: its backward (e / sum^2) overflows first, so the scaler keeps skipping steps and its scale falls from 65536 to about 128; then at step 142 the largest logit passes 11.09, where exp itself overflows fp16's 65504: the probabilities are inf / inf = NaN and the loss is NaN (the same batch's float32 forward is finite), and the loop stops on the NaN loss.",
)
def h325_throat_singing_fp16_hand_softmax(ctx: Context) -> None:
    gen = seeded(32509)
    model = OvertoneNet(24, 5)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    scaler = torch.amp.GradScaler("cpu")
    peaks, fp32_ok = [], []

    def watch(step, out, x, y):
        peaks.append(float(model.logits.float().max()))
        if not math.isfinite(float(_nll_of_probs(out.detach(), y))) and not fp32_ok:
            with torch.no_grad():
                fp32_ok.append(math.isfinite(float(_nll_of_probs(model(x), y))))

    _loop(
        ctx,
        model,
        opt,
        _spectrogram(gen, 32, 5, 32509, noise=0.2),
        300,
        _nll_of_probs,
        classifier=True,
        watch=watch,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss becomes non-finite after training a while", bad is not None and bad >= 20)
    ctx.check(
        "the largest logit passed fp16's exp limit 11.09 at that step",
        bad is not None and peaks[bad] > 11.09 and max(peaks[:bad]) < 11.09 + 2,
    )
    ctx.check("the same batch's float32 forward is finite", fp32_ok == [True])
    ctx.check(
        "the scaler skipped overflowing steps before: its scale fell over 100x from 65536",
        bad is not None and min(ctx.scales[:bad]) < 65536 / 100,
    )


# -- mosaic tiles: crack masks stored as 0/255 ---------------------------------------------------


def _tiles(gen, batch, d_in=12, regions=8, seed=32510):
    """Per-tile readings (tap tone, grout moisture, substrate flex ...) and which of 8 regions of
    the tile are cracked; the labels come from mask images stored as 8-bit PNGs (0 or 255)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, regions, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = ((x @ w) / math.sqrt(d_in) + 0.3 * torch.randn(batch, regions, generator=gen)) > 0.4
        yield x, y.float() * 255.0  # meant y.float() (the PNG's 255 not divided out)


@scenario(
    family="mosaic_tile_crack_multilabel_bce_tagger",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head with 8 outputs) tagging which of eight regions of a mosaic tile are cracked from twelve standardised readings (tap tone, grout moisture, substrate flex), RAdam at 3e-3, BCE with logits, 200 steps. The labels come from 8-bit PNG crack masks and are meant to be divided by 255; the division is missing, so the positive targets are 255: the BCE gradient on those logits never vanishes, the head's largest logit grows linearly without bound (over 20x from step 0 and still growing), and the loss goes ever more negative.",
)
def h325_mosaic_tile_mask_not_divided(ctx: Context) -> None:
    gen = seeded(32510)
    model = Trunk(12, 64, out=8, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    peaks = []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))

    _loop(ctx, model, opt, _tiles(gen, 64), 200, F.binary_cross_entropy_with_logits, watch=watch)
    ctx.check(
        "the head's largest logit grows over 20x from step 0", _mean(peaks[-10:]) > 20 * peaks[0]
    )
    ctx.check(
        "it is still growing late (last 10 over 1.2x steps 140-150)",
        _mean(peaks[-10:]) > 1.2 * _mean(peaks[140:150]),
    )
    ctx.check("the loss went negative", ctx.losses[-1] < 0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ------------------------------------------------------------------------------------


@scenario(
    family="silbo_whistled_word_gated_gru",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GRU (wx, wh with the reset, update and candidate gates written out; head on the mean hidden state) recognising which of six Silbo Gomero whistled words a generated 24-frame, 16-bin speech-like spectrogram carries, SGD with momentum 0.9 under a OneCycleLR schedule up to 0.2 (momentum cycled between 0.85 and 0.95), cross-entropy, gradient clipping at 1.0, 200 steps. A healthy control.",
)
def h325_silbo_gru_onecycle(ctx: Context) -> None:
    gen = seeded(32511)
    model = GatedGRU(16, 32, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _spectrogram(gen, 32, 6, 32511, frames=24, bins=16),
        200,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell below 0.6x its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="cattle_auction_bid_call_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written speech-like GELU Conv1d classifier (conv1, conv2 over 32 spectrogram frames with the 24 bins as channels, mean pooling, head) telling which of five auctioneer calls (opening ask, filler chant, bid taken, going once, sold) a generated spectrogram is, AdamW at 3e-3 with weight decay 1e-2, 20-step linear warm-up then cosine decay (LambdaLR), cross-entropy with label smoothing 0.1, fp16 autocast on the CPU with a torch.amp.GradScaler, gradient clipping at 1.0 after unscaling, 200 steps. A healthy control.",
)
def h325_cattle_auction_fp16_warmup_cosine(ctx: Context) -> None:
    gen = seeded(32512)
    model = SpecConv(24, 5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)

    def shape(step):
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / 180))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _spectrogram(gen, 32, 5, 32512),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell below 0.6x its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


class TiedAutoencoder(nn.Module):
    """enc (Linear 32 -> 8), tanh codes; the decoder reuses enc.weight transposed, own bias."""

    def __init__(self, d_in=32, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _twist_profiles(gen, batch, d_in=32, seed=32513):
    """Yarn-twist profiles along 32 cm of hand-spun wool: a few smooth modes plus noise."""
    g = torch.Generator().manual_seed(seed)
    modes = torch.randn(6, d_in, generator=g).cumsum(1) / math.sqrt(d_in)
    while True:
        z = torch.randn(batch, 6, generator=gen)
        x = z @ modes + 0.1 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="wool_spinning_yarn_twist_tied_autoencoder",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tied-weight autoencoder (enc with tanh codes; the decoder reuses enc.weight transposed with its own bias dec_bias) compressing hand-spun wool's yarn-twist profiles (32 points) to 8 codes, Adam with two parameter groups (weights with weight decay 1e-4, the biases without), Huber loss, gradient accumulation over 2 micro-batches, clipping at 1.0, ReduceLROnPlateau (factor 0.5, patience 10) on a held-out batch's loss, 200 steps. A healthy control.",
)
def h325_wool_spinning_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(32513)
    model = TiedAutoencoder()
    opt = torch.optim.Adam(
        [
            {"params": [model.enc.weight], "weight_decay": 1e-4},
            {"params": [model.enc.bias, model.dec_bias], "weight_decay": 0.0},
        ],
        lr=5e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held, _ = next(_twist_profiles(torch.Generator().manual_seed(1), 256))

    def plateau():
        model.eval()
        with torch.no_grad():
            return float(F.huber_loss(model(held), held))

    _loop(
        ctx,
        model,
        opt,
        _twist_profiles(gen, 32),
        200,
        F.huber_loss,
        accumulate=2,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    ctx.check("the loss fell below 0.6x its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
