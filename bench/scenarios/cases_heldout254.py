"""Held-out set 254 (``h254_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a zodiacal-light night-sequence IRNN whose scaled-identity
recurrent init was typed 1.15 for 0.95, a bowling pinsetter cycle two-target regressor whose loss
weights are read in percent for one resumed step, an oast-house hop-drying regressor whose static
fp16 loss scale is not undone on the first step after a reload (Adam), a yabusame arrow-hit ReLU
regressor whose NAdam lr was typed 1e-1 for 1e-3, a mudlark foreshore logbook LSTM language model
with tied weights trained with nll_loss on raw logits, a wheeltapper axle-ring Conv1d net whose
per-row range normalisation divides 0 by 0 on a dead microphone's rows, a stevedore crane lift-time
regressor fed one crane's -9999 missing-value sentinels, a jereed javelin-throw regressor whose fc1
param group lr was typed 2e-7 for 2e-2, a tonnara tuna-trap chamber classifier whose logit scale
is read in percent (100 for 1.0), a knocker-upper wake-time tanh regressor whose exponential
warm-up lost its cap, and three controls (an underwater-rugby pass Conv1d classifier with
OneCycleLR, label smoothing and clipping, a Pooh-sticks drift-time Student-t NLL net with
ReduceLROnPlateau and accumulation, a chess-boxing heart-rate residual MLP under fp16 autocast
with a GradScaler, Huber, warm-up + cosine and clipping).

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
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
    text_batches,
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


class _Quiet:
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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    scale_loss=None,
    alter=None,
    unscale=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``unscale(step)`` runs after the backward passes (a
    hand-rolled loss scale), ``after(step)`` runs after the optimizer step; ``amp``: fp16
    autocast; stops after logging a NaN loss."""
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
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if unscale is not None:
            unscale(step)
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
        if math.isnan(shown):
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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
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


def _moved(model, w0):
    return {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm()) for n, p in model.named_parameters()
    }


# -- zodiacal light: the IRNN's scaled-identity recurrent init typed 1.15 for 0.95 ---------------


class IRNN(nn.Module):
    """A hand-written ReLU RNN: h_t = relu(inp(x_t) + rec(h_{t-1})), a head on the last state;
    the recurrent weight starts as a scaled identity (Le et al. 2015's IRNN, np-RNN style)."""

    def __init__(self, d_in=5, hidden=32, gain=0.95):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.rec.bias.zero_()
        self.hidden = hidden
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _night_sequences(gen, batch, length=48):
    """Five standardised readings every 10 minutes of a night at a dark-sky site (sky
    brightness, solar depression, ecliptic angle, airglow, moon altitude) over ``length``
    readings, and the zodiacal light's peak brightness before dawn, standardised."""
    while True:
        x = torch.randn(batch, length, 5, generator=gen)
        decay = 0.9 ** torch.arange(length - 1, -1, -1).float()
        y = torch.tanh((x[:, :, 0] * decay).sum(1) / 3 + 0.4 * x[:, -1, 2])
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="zodiacal_light_dawn_brightness_irnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU IRNN (inp, rec, head) reading 48 ten-minute readings of a night at a dark-sky site (sky brightness, solar depression, ecliptic angle, airglow, moon altitude) and regressing the zodiacal light's peak brightness before dawn, plain SGD at 1e-4, MSE. The recurrent weight starts as a scaled identity meant to be 0.95 * I and typed 1.15 * I: the recurrent map's gain is over 1 per reading, so the hidden state and the gradient grow reading by reading through the 48 steps: at step 0 the gradient with respect to the first hidden state is over 100x that at the last one and the loss is already about 5e5; the first SGD update blows the weights up and the loss is non-finite at step 1.",
)
def h254_zodiacal_light_irnn_gain_typo(ctx: Context) -> None:
    gen = seeded(25401)
    model = IRNN(gain=1.15)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    ratio = {}
    batches = _night_sequences(gen, 32)
    ctx.attach(model, opt)
    for step in range(80):
        x, y = next(batches)
        out = model(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        if step == 0:
            first = model.states[0].grad.norm()
            last = model.states[-1].grad.norm()
            ratio["t"] = float(first / max(float(last), 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at the first reading over 100x that at the last (step 0)",
        ratio.get("t", 0.0) > 100,
    )
    ctx.check(
        "the loss blew up (over 1000x its start, or non-finite)",
        not _finite(ls) or max(ls) > 1000 * ls[0],
    )
    ctx.check(
        "the gradient norm grew over 100x",
        max(v for v in gn if math.isfinite(v)) > 100 * gn[0] or not _finite(gn),
    )


# -- bowling pinsetter: the resumed loss weights read in percent for one step --------------------

ONSET_PIN = 100


@scenario(
    family="pinsetter_cycle_jam_two_target_regressor",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PIN,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) with two outputs regressing a ten-pin bowling alley pinsetter's cycle time and its sweep-bar drop height from 12 standardised readings (deck motor current, turret fill, ball-lift speed, pit cushion travel, ...), SGD with Nesterov momentum 0.9 at 1e-2, MSE on each target weighted 0.6 / 0.4, gradient clipping at 10. At step 100 the job is resumed and the resume path reads the loss weights from the config in percent (60 / 40) instead of fractions for its first step: the gradient is 100x that of the steps around it. The batches are ordinary; the run recovers; finite.",
)
def h254_pinsetter_loss_weight_percent(ctx: Context) -> None:
    gen = seeded(25402)
    model = Stack(12, hidden=48, out=2, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    stream = _readings(gen, 64, 12, 43)
    xs = []

    def two_targets():
        while True:
            x, y1 = next(stream)
            yield x, torch.stack([y1, 0.5 * y1 + 0.5 * torch.tanh(x[:, 3])], 1)

    def loss_fn(out, y):
        return 0.6 * F.mse_loss(out[:, 0], y[:, 0]) + 0.4 * F.mse_loss(out[:, 1], y[:, 1])

    def scale_loss(step, total):
        return total * 100.0 if step == ONSET_PIN else total

    def watch(step, out, x, y):
        if step in (ONSET_PIN - 1, ONSET_PIN):
            xs.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        two_targets(),
        200,
        loss_fn,
        scale_loss=scale_loss,
        watch=watch,
        clip=10.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_PIN - 20 : ONSET_PIN])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_PIN], ratio=0.5))
    ctx.check(
        "the gradient norm at the onset over 50x the median before", gn[ONSET_PIN] > 50 * before
    )
    ctx.check("the gradient norm 30 steps after back under 5x", gn[ONSET_PIN + 30] < 5 * before)
    ctx.check("the batches at the onset are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check(
        "the loss recovered within 60 steps (under 2x its pre-onset level)",
        _mean(ls[ONSET_PIN + 50 : ONSET_PIN + 60]) < 2 * _mean(ls[ONSET_PIN - 10 : ONSET_PIN]),
    )


# -- oast house: a static fp16 loss scale not undone on the first step after a reload ------------

ONSET_OAST = 60


@scenario(
    family="oast_house_hop_drying_moisture_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_OAST,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the final moisture of a hop pocket dried in an oast house from 10 standardised readings (kiln floor temperature, draught, hop depth, green-hop moisture, drying hours, ...), Adam at 1e-3, MSE, a hand-rolled static loss scale of 65536 whose unscale (dividing the gradients by 65536) is registered by the training loop. After a checkpoint reload at step 60 the first step runs before the unscale is re-registered: Adam receives one gradient 65536x too large, which fills its second-moment estimate (exp_avg_sq); for the following tens of steps every update is far smaller than before and the loss stalls where the twin without the bug keeps falling. The batches are ordinary; finite, no blow-up.",
)
def h254_oast_house_loss_scale_not_undone(ctx: Context) -> None:
    scale = 65536.0

    def run(c, bug):
        gen = seeded(25403)
        model = Stack(10, hidden=64, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        steps_moved = []
        prev = {}

        def scale_loss(step, total):
            return total * scale

        def unscale(step):
            if bug and step == ONSET_OAST:
                return  # the reload path has not re-registered the unscale yet
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(scale)

        def before(step):
            prev["w"] = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()

        def after(step):
            w = torch.cat([p.detach().flatten() for p in model.parameters()])
            steps_moved.append(float((w - prev["w"]).norm()))

        _train(
            c,
            model,
            opt,
            _readings(gen, 64, 10, 53, noise=0.05),
            160,
            F.mse_loss,
            scale_loss=scale_loss,
            unscale=unscale,
            before=before,
            after=after,
        )
        return steps_moved

    twin = _Quiet()
    run(twin, bug=False)
    moved = run(ctx, bug=True)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(moved[ONSET_OAST - 20 : ONSET_OAST])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_OAST], ratio=0.7))
    ctx.check(
        "the gradient Adam saw at the onset over 1e4x the median before",
        gn[ONSET_OAST] > 1e4 * _median(gn[ONSET_OAST - 20 : ONSET_OAST]),
    )
    ctx.check(
        "updates 40-100 steps after the onset over 20x smaller than before",
        _median(moved[ONSET_OAST + 40 : ONSET_OAST + 100]) < pre / 20,
    )
    ctx.check(
        "the loss stalls: the twin ends under 0.7x of it",
        _mean(twin.losses[-10:]) < 0.7 * _mean(ls[-10:]),
    )


# -- yabusame: NAdam's lr typed 1e-1 for 1e-3 ----------------------------------------------------


@scenario(
    family="yabusame_arrow_target_offset_relu_mlp",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how far a yabusame (mounted archery) arrow lands from the target's centre from 12 standardised readings (gallop speed, draw length, release timing, distance to the target, ...), NAdam, MSE. The lr was meant to be 1e-3 and was typed 1e-1: within the first steps fc2's pre-activations are pushed negative and over half of act2's ReLU units stop firing on every input (measured on a batch of 2048) and never come back; the loss stays finite on the few live units, no blow-up.",
)
def h254_yabusame_nadam_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(25404)
        model = Stack(12, hidden=64)
        opt = torch.optim.NAdam(model.parameters(), lr=lr)
        probe = torch.randn(2048, 12, generator=torch.Generator().manual_seed(9))
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _train(c, model, opt, _readings(gen, 64, 12, 59), 200, F.mse_loss, after=after)
        return dead

    twin = _Quiet()
    twin_dead = run(twin, 1e-3)
    dead = run(ctx, 1e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("act2 under 20% dead at step 0", dead[0] < 0.2)
    ctx.check("act2 over half dead at the end", dead[-1] > 0.5)
    ctx.check("act2 stays over half dead over the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("the intended lr keeps act2 under 20% dead", twin_dead[-1] < 0.2)
    ctx.check(
        "no revival: act2's dead fraction never falls by over 0.05 after step 100",
        min(dead[100:]) > dead[100] - 0.05,
    )


# -- mudlark logbook: a tied LSTM language model trained with nll_loss on raw logits -------------


class TiedLSTMLM(nn.Module):
    """A hand-written LSTM language model: embed -> lstm -> head, head.weight tied to embed."""

    def __init__(self, vocab=128, dim=48):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.embed.weight, std=0.05)
        self.head.weight = self.embed.weight  # tied

    def forward(self, idx):
        out, _ = self.lstm(self.embed(idx))
        return self.head(out)


@scenario(
    family="mudlark_foreshore_logbook_tied_lstm_lm",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written byte-level LSTM language model (embed, lstm, head with head.weight tied to embed.weight) trained on the text of a mudlark's foreshore logbooks (here the bytes of standard-library sources), AdamW at 3e-3, weight decay 1e-2. The loss was written F.nll_loss(logits, targets) on the raw logits, the log_softmax forgotten: the objective is -logit[target], unbounded below, so the head's logits (and the tied embedding) grow steadily without bound; the loss goes negative and keeps falling; finite, no NaN in the run's length.",
)
def h254_mudlark_lstm_nll_raw_logits(ctx: Context) -> None:
    def run(c, raw):
        gen = seeded(25405)
        model = TiedLSTMLM()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
        probe = next(text_batches(torch.Generator().manual_seed(3), 32, 32))
        peak = []

        def loss_fn(logits, y):
            flat = logits.reshape(-1, logits.shape[-1])
            if raw:
                return F.nll_loss(flat, y.reshape(-1))
            return F.cross_entropy(flat, y.reshape(-1))

        def after(step):
            with torch.no_grad():
                peak.append(float(model(probe[0]).abs().max()))

        _train(c, model, opt, text_batches(gen, 16, 32), 200, loss_fn, classifier=True, after=after)
        return peak

    twin = _Quiet()
    twin_peak = run(twin, raw=False)
    peak = run(ctx, raw=True)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak |logit| grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("the peak is still growing over the last 50 steps", peak[-1] > 1.2 * peak[-50])
    ctx.check("the loss went below zero", ls[-1] < 0)
    ctx.check("the intended cross-entropy keeps the peak 3x smaller", twin_peak[-1] < peak[-1] / 3)


# -- wheeltapper: per-row range normalisation divides 0 by 0 on a dead microphone's rows ---------

ONSET_TAP = 90


class RangeNorm(nn.Module):
    """Scales each ring trace to [0, 1] by its own range: (x - min) / (max - min), no epsilon."""

    def forward(self, x):
        lo = x.min(-1, keepdim=True).values
        hi = x.max(-1, keepdim=True).values
        return (x - lo) / (hi - lo)


class RingNet(nn.Module):
    """norm -> conv (Conv1d) -> act -> pool -> head on a 32-sample ring trace."""

    def __init__(self, length=32, channels=8):
        super().__init__()
        self.norm = RangeNorm()
        self.conv = nn.Conv1d(1, channels, 5, padding=2)
        self.act = nn.SiLU()
        self.head = nn.Linear(channels * length // 4, 1)

    def forward(self, x):
        z = self.act(self.conv(self.norm(x)[:, None, :]))
        return self.head(F.avg_pool1d(z, 4).flatten(1)).squeeze(-1)


def _ring_traces(gen, batch, dead_from, length=32):
    """A railway wheeltapper's hammer ring on a carriage wheel, 32 envelope samples from a
    microphone on the hammer, and the wheel's crack depth, standardised (a cracked wheel rings
    dull: a faster decay). From ``dead_from`` a quarter of the rows come from a hammer whose
    microphone is dead and logs a flat trace."""
    t = torch.arange(length).float()
    step = 0
    while True:
        decay = 0.05 + 0.25 * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        x = amp * torch.exp(-decay * t) * (1 + 0.3 * torch.cos(0.9 * t))
        x = x + 0.01 * torch.randn(batch, length, generator=gen)
        y = (decay.squeeze(1) - 0.175) / 0.07
        if step >= dead_from:
            x[: batch // 4] = 0.02
        step += 1
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="wheeltapper_axle_ring_crack_conv1d_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("norm",),
    diverges=ONSET_TAP,
    heldout=True,
    onset=ONSET_TAP,
    note="A Conv1d net (norm, conv, act, head) regressing the crack depth of a carriage wheel from the 32-sample envelope of a railway wheeltapper's hammer ring, RMSprop at 1e-3, MSE. The `norm` module scales each trace to [0, 1] by its own range, (x - min) / (max - min), with no epsilon. From step 90 a quarter of each batch comes from a hammer whose microphone is dead and logs a flat trace: max - min is exactly 0, `norm` divides 0 by 0 and produces NaN, and the loss is NaN at step 90.",
)
def h254_wheeltapper_range_norm_zero_division(ctx: Context) -> None:
    gen = seeded(25406)
    model = RingNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_TAP:
            with torch.no_grad():
                seen["x_finite"] = bool(torch.isfinite(x).all())
                seen["flat_rows"] = int((x.max(1).values == x.min(1).values).sum())
                seen["norm_nan"] = bool(torch.isnan(model.norm(x)).any())

    _train(ctx, model, opt, _ring_traces(gen, 64, ONSET_TAP), 120, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_TAP], ratio=0.7))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_TAP)
    ctx.check("the onset batch is finite", seen.get("x_finite") is True)
    ctx.check("the onset batch has flat traces", seen.get("flat_rows", 0) > 0)
    ctx.check("norm produces NaN at the onset", seen.get("norm_nan") is True)


# -- stevedore: one crane's -9999 missing-value sentinel passed through --------------------------

ONSET_CRANE = 120


@scenario(
    family="stevedore_crane_lift_cycle_gelu_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CRANE,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a dockside crane's lift cycle time from 10 standardised readings (container mass, hoist height, wind speed, spreader twist-lock time, ...), ASGD at 2e-2, MSE, gradient clipping at 1.0. The batch at step 120 holds eight rows from one crane whose logger writes -9999 for a missing wind reading, and the loader standardises the column without masking the sentinel: those inputs are about -9999. The loss and the gradient spike at that step; the targets are ordinary; clipped, finite, no divergence.",
)
def h254_stevedore_missing_sentinel(ctx: Context) -> None:
    gen = seeded(25407)
    model = Stack(10, hidden=48, act=nn.GELU)
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_CRANE:
            x = x.clone()
            x[:8, 2] = -9999.0
            seen["x_min"] = float(x.min())
            seen["y_max"] = float(y.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 61), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_CRANE], ratio=0.6))
    ctx.check(
        "loss at the onset over 100x the median before",
        ls[ONSET_CRANE] > 100 * _median(ls[ONSET_CRANE - 20 : ONSET_CRANE]),
    )
    ctx.check(
        "gradient at the onset over 100x the median before",
        gn[ONSET_CRANE] > 100 * _median(gn[ONSET_CRANE - 20 : ONSET_CRANE]),
    )
    ctx.check("the onset inputs hold the sentinel", seen.get("x_min", 0.0) < -9000)
    ctx.check("the onset targets are ordinary (max |y| under 4)", seen.get("y_max", 99.0) < 4)


# -- jereed: fc1's param group lr typed 2e-7 for 2e-2 --------------------------------------------


@scenario(
    family="jereed_javelin_throw_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how close a jereed (mounted blunt-javelin) throw comes to the opposing rider from 14 standardised readings (horse speed, closing angle, release height, javelin mass, ...), Adagrad with param groups: fc1 (the input layer, given its own group for a different rate) meant at 2e-2 and typed 2e-7, the rest at 2e-2. fc1's weights move by under 1e-5 of their norm over the run while fc2 and the head move by percents; the rest of the net learns around a frozen random input layer, so the loss still falls and stays finite, no blow-up.",
)
def h254_jereed_fc1_group_lr_typo(ctx: Context) -> None:
    def run(c, fc1_lr):
        gen = seeded(25408)
        model = Stack(14, hidden=48, act=nn.Tanh)
        rest = [p for n, p in model.named_parameters() if not n.startswith("fc1")]
        opt = torch.optim.Adagrad(
            [{"params": model.fc1.parameters(), "lr": fc1_lr}, {"params": rest, "lr": 2e-2}]
        )
        w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        _train(c, model, opt, _readings(gen, 64, 14, 67), 200, F.mse_loss)
        return _moved(model, w0)

    twin = _Quiet()
    twin_moved = run(twin, 2e-2)
    moved = run(ctx, 2e-7)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.9))
    ctx.check("fc1's weight moved under 1e-4 of its norm", moved["fc1.weight"] < 1e-4)
    ctx.check("fc2's weight moved over 1e-2 of its norm", moved["fc2.weight"] > 1e-2)
    ctx.check("the head's weight moved over 1e-2 of its norm", moved["head.weight"] > 1e-2)
    ctx.check(
        "fc1 moved under 1e-3 of what the intended config moves it",
        moved["fc1.weight"] < 1e-3 * twin_moved["fc1.weight"],
    )


# -- tonnara: the logit scale read in percent (100 for 1.0) --------------------------------------


class ChamberNet(nn.Module):
    """fc1 -> act1 (ReLU) -> head, logits multiplied by a configured scale."""

    def __init__(self, d_in, classes, scale, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.scale = scale

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))) * self.scale


@scenario(
    family="tonnara_tuna_trap_chamber_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (fc1, act1, head) telling which of the 6 chambers of a tonnara (a fixed tuna trap of nets) a school is in from 16 standardised sonar and net-tension readings, RAdam at 1e-3, cross-entropy. The logits are multiplied by a logit scale the config gives in percent (`logit_scale_pct: 100`, meaning 1.0, no rescaling) and the code uses the number as it is: 100x too large, within the first tens of steps the float32 softmax rounds most targets' probabilities to exactly 1, the gradients of those rows vanish and the wrong rows carry huge losses; the intended scale keeps probabilities soft. Finite, no blow-up.",
)
def h254_tonnara_logit_scale_percent(ctx: Context) -> None:
    def run(c, scale):
        gen = seeded(25409)
        model = ChamberNet(16, 6, scale)
        opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 16, 6, 71))
        fr = []

        def after(step):
            with torch.no_grad():
                fr.append(collapsed_fraction(model(probe[0]), probe[1]))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 6, 71),
            150,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return fr

    twin = _Quiet()
    twin_fr = run(twin, 1.0)
    fr = run(ctx, 100.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half the probe rows saturate to exactly 1 by step 40", fr[40] > 0.5)
    ctx.check("over half saturate at the end", fr[-1] > 0.5)
    ctx.check("the intended scale saturates under 10%", twin_fr[-1] < 0.1)


# -- knocker-upper: the exponential warm-up lost its cap -----------------------------------------

ONSET_KNOCK = 60


@scenario(
    family="knocker_upper_wake_round_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_KNOCK,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how long a knocker-upper's morning round of window-tapping takes from 10 standardised readings (clients, street length, weather, pole length, ...), plain SGD at a base rate of 0.1, MSE, an exponential warm-up in a LambdaLR meant as min(1, 1.04 ** (step - 60)) and written 1.04 ** (step - 60), the cap dropped: the rate reaches 0.1 at step 60 and keeps growing 4% a step, lr x (top Hessian eigenvalue) passes 2 and the loss oscillates and blows up.",
)
def h254_knocker_upper_warmup_uncapped(ctx: Context) -> None:
    gen = seeded(25410)
    model = Stack(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.04 ** (s - ONSET_KNOCK))
    probe = next(_readings(torch.Generator().manual_seed(5), 256, 10, 73))
    seen = {"crossed": None}

    def before(step):
        if step == ONSET_KNOCK or (
            step > ONSET_KNOCK and step % 5 == 0 and seen["crossed"] is None
        ):
            lr = opt.param_groups[0]["lr"]
            s = _sharpness(model, F.mse_loss, probe)
            if step == ONSET_KNOCK:
                seen["at_onset"] = lr * s
            if lr * s > 2 and seen["crossed"] is None:
                seen["crossed"] = step

    _train(ctx, model, opt, _readings(gen, 64, 10, 73), 160, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_KNOCK], ratio=0.7))
    ctx.check("finite before the onset", _finite(ls[:ONSET_KNOCK]))
    ctx.check("lr x sharpness under 2 at the onset", seen.get("at_onset", 99.0) < 2)
    ctx.check("lr x sharpness passed 2 after the onset", seen["crossed"] is not None)
    ctx.check(
        "the loss blew up after the crossing (over 100x, or non-finite)",
        not _finite(ls) or max(ls[ONSET_KNOCK:]) > 100 * _mean(ls[ONSET_KNOCK - 10 : ONSET_KNOCK]),
    )


# -- healthy controls -----------------------------------------------------------------------------


class PassNet(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> pool -> head over a multi-channel trace."""

    def __init__(self, channels=3, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.GELU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        z = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(z.mean(-1))


def _pass_traces(gen, batch, classes=4, length=32):
    """Three channels (depth, ball-pressure, swimmer speed) of an underwater-rugby pass, 32
    samples, and the pass type: each type a different mix of frequencies, with noise."""
    t = torch.arange(length).float()
    freqs = torch.tensor([[0.2, 0.5, 0.9], [0.4, 0.3, 0.7], [0.6, 0.8, 0.2], [0.9, 0.4, 0.5]])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 3, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase)
        yield x + 0.6 * torch.randn(batch, 3, length, generator=gen), y


@scenario(
    family="underwater_rugby_pass_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU Conv1d classifier (conv1, act1, conv2, act2, head) telling the type of an underwater-rugby pass (4 kinds) from 32 samples of three channels (depth, ball pressure, swimmer speed), AdamW at a OneCycleLR schedule (max_lr 5e-3), cross-entropy with label smoothing 0.1 on 10% mislabelled passes, gradient clipping at 1.0. Trains normally.",
)
def h254_underwater_rugby_onecycle_control(ctx: Context) -> None:
    gen = seeded(25411)
    steps = 200
    model = PassNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps, pct_start=0.25)
    stream = _pass_traces(gen, 64)

    def noisy():
        while True:
            x, y = next(stream)
            flip = torch.rand(len(y), generator=gen) < 0.1
            yield x, torch.where(flip, torch.randint(0, 4, y.shape, generator=gen), y)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(ctx, model, opt, noisy(), steps, loss_fn, classifier=True, clip=1.0, sched=sched)
    ls = ctx.losses
    x, y = next(_pass_traces(torch.Generator().manual_seed(4), 1024))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("held-out accuracy over 0.7", acc > 0.7)


class StudentTNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2, then loc and log_scale heads; a Student-t likelihood."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.loc = nn.Linear(hidden, 1)
        self.log_scale = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.loc(h), self.log_scale(h)], 1)


def _student_t_nll(out, y, df=4.0):
    return -torch.distributions.StudentT(df, out[:, 0], out[:, 1].exp()).log_prob(y).mean()


@scenario(
    family="pooh_sticks_drift_time_student_t_net",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2) with loc and log_scale heads predicting a Student-t (4 degrees of freedom) over the time a Pooh stick takes to drift under a bridge from 10 standardised readings (stream speed, stick length, drop point, eddies, ...) with heavy-tailed noise, Student-t negative log-likelihood, Adamax at 3e-3 with ReduceLROnPlateau, gradient accumulation over 2. Trains normally.",
)
def h254_pooh_sticks_student_t_control(ctx: Context) -> None:
    gen = seeded(25412)
    model = StudentTNet(10)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    stream = _readings(gen, 64, 10, 79, noise=0.0)
    t = torch.distributions.StudentT(3.0)

    def heavy():
        while True:
            x, y = next(stream)
            yield x, y + 0.15 * t.sample(y.shape)

    _train(ctx, model, opt, heavy(), 200, _student_t_nll, sched=sched, accumulate=2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)


class ResidualMLP(nn.Module):
    """inp -> two pre-LN residual blocks (norm1/fc1, norm2/fc2) -> head."""

    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.fc1(F.silu(self.norm1(h)))
        h = h + self.fc2(F.silu(self.norm2(h)))
        return self.head(h).squeeze(-1)


@scenario(
    family="chess_boxing_round_heart_rate_fp16_residual_mlp",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a pre-LN residual MLP (inp, norm1, fc1, norm2, fc2, head) regressing a chess-boxer's heart rate at the start of a chess round from 12 standardised readings of the previous boxing round (punches thrown, clinch time, recovery breathing, ...) with Laplace noise, SGD with momentum 0.9 at 2e-2, warm-up then cosine (LambdaLR), Huber loss, gradient clipping at 1.0, fp16 autocast with a torch.amp.GradScaler. Trains normally.",
)
def h254_chess_boxing_fp16_huber_control(ctx: Context) -> None:
    gen = seeded(25413)
    steps = 200
    model = ResidualMLP(12)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def lam(step):
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    stream = _readings(gen, 64, 12, 83, noise=0.0)
    lap = torch.distributions.Laplace(0.0, 0.1)

    def noisy():
        while True:
            x, y = next(stream)
            yield x, y + lap.sample(y.shape)

    def loss_fn(out, y):
        return F.huber_loss(out.float(), y, delta=1.0)

    _train(ctx, model, opt, noisy(), steps, loss_fn, clip=1.0, sched=sched, scaler=scaler, amp=True)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check("the loss scale stayed finite", all(math.isfinite(s) and s > 0 for s in ctx.scales))
