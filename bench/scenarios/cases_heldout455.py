"""Held-out set 455 (``h455_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a jump-rope skip-cadence regressor (a deep ReLU MLP) whose orthogonal init gain is typed
3 for sqrt(2) (gradients grow back through depth), a skee-ball lane-score regressor whose resume
reloads the head from the step-0 checkpoint (a one-off loss spike it recovers from), a
spoons-player stroke tagger (a hand-written bidirectional LSTM built from two nn.LSTMCell,
per-token softmax) whose temperature is typed 1e-2 for 1e0 (the softmax saturates), a
henna-cone paste-flow two-group regressor whose trunk lr multiplier is typed 1e-7 for 1e-1
(frozen under Adagrad), an inkstone-grinding ink-density Huber regressor fed one shard with the
grinding time in seconds for minutes (one corrupted batch), a snowball-mass Gaussian-NLL net that
takes sqrt of a raw variance head with no softplus or clamp (sqrt of a negative, a NaN loss), a
tea-ceremony whisk-froth regressor whose auxiliary loss weight is written 100 (a percentage) for 1.0 for
one step at a phase switch (one gradient burst), a tie-dye vat-uptake regressor trained in fp16 autocast
with its target left in raw milligrams (the head's fp16 output overflows), a paper-mache dry-time
regressor whose L2 penalty is subtracted instead of added (a slow climb), and a daf frame-drum
stroke classifier trained with a multi-class hinge loss missing its clamp at 0 (the head's logits
grow without bound).

Controls: a Rubik's-cube solve-time regressor whose Adam state is reset on purpose every 100
steps with a 10-step warm-up after each reset; a sand-painting pigment-grade classifier in fp16
autocast with a GradScaler, AdamW under OneCycleLR, clipping and label smoothing; the
spoons-player bidirectional LSTM tagger trained normally (RMSprop with a warm-up then
ReduceLROnPlateau, accumulation over 2, clipping, label smoothing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


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
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
    flat_targets=False,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
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
                ctx.targets(y.reshape(-1) if flat_targets else y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _stroke_sequences(gen, batch, length, d_in, tags, seed, spread=1.2):
    """Accelerometer-like frames, one tag per frame from a sticky Markov chain; each frame is its
    tag's prototype plus noise, smeared with its neighbours (context helps both ways)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(tags, d_in, generator=g)
    while True:
        y = torch.empty(batch, length, dtype=torch.long)
        y[:, 0] = torch.randint(0, tags, (batch,), generator=gen)
        for t in range(1, length):
            stay = torch.rand(batch, generator=gen) < 0.7
            y[:, t] = torch.where(
                stay, y[:, t - 1], torch.randint(0, tags, (batch,), generator=gen)
            )
        clean = protos[y]
        smeared = clean.clone()
        smeared[:, 1:] += 0.3 * clean[:, :-1]
        smeared[:, :-1] += 0.3 * clean[:, 1:]
        yield smeared + spread * torch.randn(batch, length, d_in, generator=gen), y


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


# -- a hand-written bidirectional LSTM tagger --------------------------------------------------------


class _CosineHead(nn.Module):
    """Cosine similarity of the frame state to one learnt vector per tag, times a fixed scale."""

    def __init__(self, dim, tags, scale=10.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(tags, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class _BiLSTMTagger(nn.Module):
    """Two nn.LSTMCell, one unrolled left to right and one right to left, their states joined per
    frame and a linear head giving per-frame logits (divided by a temperature)."""

    def __init__(self, d_in, hidden, tags, temperature=1.0):
        super().__init__()
        self.hidden = hidden
        self.fwd_cell = nn.LSTMCell(d_in, hidden)
        self.bwd_cell = nn.LSTMCell(d_in, hidden)
        self.head = _CosineHead(2 * hidden, tags)
        self.temperature = temperature
        self.last_logits = None

    def forward(self, x):
        b, t, _ = x.shape
        h = c = x.new_zeros(b, self.hidden)
        fwd = []
        for i in range(t):
            h, c = self.fwd_cell(x[:, i], (h, c))
            fwd.append(h)
        h = c = x.new_zeros(b, self.hidden)
        bwd = [None] * t
        for i in reversed(range(t)):
            h, c = self.bwd_cell(x[:, i], (h, c))
            bwd[i] = h
        states = torch.cat([torch.stack(fwd, 1), torch.stack(bwd, 1)], -1)
        logits = self.head(states) / self.temperature
        self.last_logits = logits.detach()
        return logits


def _tag_loss(smoothing=0.0):
    def loss_fn(logits, y):
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), label_smoothing=smoothing
        )

    return loss_fn


# -- faults ----------------------------------------------------------------------------------------


ROPE_GAIN = 3.0  # typed for math.sqrt(2)


class _DeepReLU(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in [*self.layers, self.head]:
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)
        self.pre = []

    def forward(self, x):
        self.pre = []
        for layer in self.layers:
            z = layer(x)
            if z.requires_grad:
                z.retain_grad()
            self.pre.append(z)
            x = F.relu(z)
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    """How much larger the loss gradient is at the first layer's pre-activations than the last's."""
    first = model.pre[0].grad.norm()
    last = model.pre[-1].grad.norm().clamp_min(1e-30)
    return float(first / last)


@scenario(
    family="jump_rope_skip_cadence_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="Jump-rope skip-cadence regressor (an 8-layer ReLU MLP on wrist-accelerometer features, "
    "MSE, SGD momentum 0.9, clipping at 1). The orthogonal init gain is typed 3 for sqrt(2): every "
    "layer multiplies the backward signal by about 2, so the gradient at the first layers' "
    "pre-activations is hundreds of times the last layer's (checked against a gain-sqrt(2) net).",
)
def h455_jump_rope_init_gain(ctx):
    gen = seeded(45501)
    model = _DeepReLU(12, 48, 8, ROPE_GAIN)
    reference = _DeepReLU(12, 48, 8, math.sqrt(2))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _readings(gen, 64, 12, seed=45501)
    ratios = {}

    def after(step):
        if step in (0, 60):
            ratios[step] = _depth_ratio(model)

    losses, norms = _loop(ctx, model, opt, batches, 150, F.mse_loss, clip=1.0, after=after)
    x, y = next(batches)
    F.mse_loss(reference(x), y).backward()
    ref_ratio = _depth_ratio(reference)
    ctx.check("first/last pre-activation gradient over 100x at step 0", ratios.get(0, 0) > 100)
    ctx.check("still over 30x at step 60", ratios.get(60, 0) > 30)
    ctx.check("the gain-sqrt(2) net's ratio under 5x", ref_ratio < 5)
    ctx.check("the first loss over 100x the target's scale", losses[0] > 100.0)


SKEE_RESUME = 130


@scenario(
    family="skee_ball_lane_score_stale_head_regressor",
    optimizer="RAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SKEE_RESUME,
    note="Skee-ball lane-score regressor (GELU MLP on roll speed, angle and lane features, MSE, "
    "RAdam). A preemption resume at step 130 loads the trunk from the latest checkpoint but the "
    "head from the step-0 checkpoint (the head's path is built from a start-step variable): the "
    "loss jumps once and the run recovers as the head relearns.",
)
def h455_skee_ball_stale_head(ctx):
    gen = seeded(45502)
    model = _Net(10, 48, act=nn.GELU)
    initial_head = {k: v.clone() for k, v in model.head.state_dict().items()}
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    raw = _readings(gen, 64, 10, seed=45502)
    batches = ((x, y + 2.5) for x, y in raw)  # scores around 2.5 points per roll

    def before(step):
        if step == SKEE_RESUME:
            model.head.load_state_dict(initial_head)

    losses, _ = _loop(ctx, model, opt, batches, 220, F.mse_loss, before=before)
    pre = _median(losses[SKEE_RESUME - 20 : SKEE_RESUME])
    ctx.check("finite", _finite(losses))
    ctx.check("loss at the resume over 4x the median before", losses[SKEE_RESUME] > 4 * pre)
    ctx.check(
        "back under 2x within 60 steps",
        _mean(losses[SKEE_RESUME + 50 : SKEE_RESUME + 60]) < 2 * pre,
    )


SPOONS_TEMPERATURE = 1e-2  # typed for 1e0


@scenario(
    family="spoons_player_stroke_bilstm_tagger",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Spoons-player stroke tagger (a hand-written bidirectional LSTM: two nn.LSTMCell unrolled "
    "by hand left to right and right to left, joined per frame, per-frame softmax over 4 strokes, "
    "cross-entropy, Adam). The softmax temperature is typed 1e-2 for 1e0: the logits are scaled "
    "100x and most frames' probabilities round to exactly 0 and 1.",
)
def h455_spoons_tagger_temperature(ctx):
    gen = seeded(45503)
    model = _BiLSTMTagger(6, 24, 4, temperature=SPOONS_TEMPERATURE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _stroke_sequences(gen, 16, 16, 6, 4, seed=45503)
    seen = {}
    saturated = []

    def alter(step, x, y):
        seen["y"] = y
        return x, y

    def after(step):
        top = torch.softmax(model.last_logits.float(), -1).max(-1).values
        saturated.append(float((top == 1.0).float().mean()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        batches,
        120,
        _tag_loss(),
        classifier=True,
        alter=alter,
        after=after,
        flat_targets=True,
    )
    logits = model.last_logits.reshape(-1, 4)
    targets = seen["y"].reshape(-1)
    top = torch.softmax(logits.float(), -1).max(-1).values
    ctx.check(
        "over half the frames' target probability exactly 1.0",
        collapsed_fraction(logits, targets) > 0.5,
    )
    ctx.check(
        "over 80% of frames with a top probability exactly 1.0",
        float((top == 1.0).float().mean()) > 0.8,
    )
    ctx.check("max |logit| over 50", float(logits.abs().max()) > 50)
    ctx.check("over half the frames saturated on average over the run", _mean(saturated) > 0.5)


HENNA_TRUNK_MULT = 1e-7  # typed for 1e-1


@scenario(
    family="henna_cone_paste_flow_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Henna-cone paste-flow regressor (ReLU MLP on paste, cone-tip and temperature features, "
    "MSE, Adagrad with two param groups). The trunk group's lr multiplier is typed 1e-7 for 1e-1: "
    "fc1 and fc2 barely move and only the head learns, so the loss stalls well above a run with "
    "the intended multiplier.",
)
def h455_henna_trunk_lr_typo(ctx):
    def build(mult, attach):
        gen = seeded(45504)
        model = _Net(10, 48)
        opt = torch.optim.Adagrad(
            [
                {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": 5e-2 * mult},
                {"params": model.head.parameters(), "lr": 5e-2},
            ]
        )
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        batches = _readings(gen, 64, 10, seed=45504)
        losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss, attach=attach)
        return model, start, losses

    ref_model, _, ref_losses = build(1e-1, attach=False)
    model, start, losses = build(HENNA_TRUNK_MULT, attach=True)
    trunk = max(_rel_change(start[n], p) for n, p in model.named_parameters() if "fc" in n)
    head = _rel_change(start["head.weight"], model.head.weight)
    ctx.check("fc1 and fc2 moved under 1e-5 of their norm", trunk < 1e-5)
    ctx.check("the head moved over 10% of its norm", head > 0.1)
    ctx.check(
        "final loss over 1.5x the intended multiplier's",
        _mean(losses[-10:]) > 1.5 * _mean(ref_losses[-10:]),
    )


INK_STEP = 100


@scenario(
    family="inkstone_grinding_ink_density_huber_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=INK_STEP,
    note="Inkstone-grinding ink-density regressor (ReLU MLP on grinding time, water and stone "
    "features, Huber loss, ASGD, clipping at 5). One shard, read at step 100, has the grinding "
    "time in seconds for minutes (that column 60x, as raw values, not standardised): one batch "
    "with a huge loss and gradient, then the run goes on.",
)
def h455_inkstone_seconds_shard(ctx):
    gen = seeded(45505)
    model = _Net(10, 48)
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2, t0=50)
    batches = _readings(gen, 64, 10, seed=45505)

    def alter(step, x, y):
        if step == INK_STEP:
            x = x.clone()
            x[:, 0] = 60 * (x[:, 0] * 3 + 12)  # minutes around 12, recorded in seconds
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        alter=alter,
        clip=5.0,
    )
    pre_l = _median(losses[INK_STEP - 30 : INK_STEP])
    pre_g = _median(norms[INK_STEP - 30 : INK_STEP])
    ctx.check("finite", _finite(losses))
    ctx.check("loss at the shard over 30x the median before", losses[INK_STEP] > 30 * pre_l)
    ctx.check("gradient at the shard over 20x the median before", norms[INK_STEP] > 20 * pre_g)
    ctx.check(
        "back under 2x within 60 steps", _mean(losses[INK_STEP + 50 : INK_STEP + 60]) < 2 * pre_l
    )


SNOW_STEP = 92


class _Sqrt(nn.Module):
    def forward(self, v):
        return torch.sqrt(v)


class _SnowballNLL(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        self.std = _Sqrt()
        nn.init.constant_(self.var_head.bias, 2.0)
        self.last_var = None

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        var = self.var_head(h).squeeze(-1)
        self.last_var = var.detach()
        return torch.stack([self.mean_head(h).squeeze(-1), self.std(var)], -1)


def _gauss_nll(out, y):
    mu, std = out[..., 0], out[..., 1]
    return (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()


@scenario(
    family="snowman_building_snowball_mass_sqrt_std_net",
    optimizer="AdamW",
    cause="nonfinite",
    where=("std",),
    diverges=SNOW_STEP,
    heldout=True,
    onset=SNOW_STEP,
    note="Snowman-building snowball-mass regressor (tanh MLP with a mean head and a variance "
    "head, Gaussian NLL, AdamW). The std is torch.sqrt of the raw variance head, with no softplus "
    "and no clamp: as the NLL drives the variance towards the small noise level, one frame's "
    "variance crosses below 0 and sqrt of a negative makes the loss NaN.",
)
def h455_snowball_sqrt_negative_var(ctx):
    gen = seeded(45506)
    model = _SnowballNLL(8)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-2)
    batches = _readings(gen, 64, 8, seed=45506, noise=0.05)
    seen = {}

    def after(step):
        seen[step] = float(model.last_var.min())

    losses, _ = _loop(ctx, model, opt, batches, 200, _gauss_nll, after=after)
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the loss is NaN at step 92", bad == SNOW_STEP and math.isnan(losses[SNOW_STEP]))
    ctx.check("a variance below 0 at that step", seen.get(SNOW_STEP, 1.0) < 0)
    ctx.check("every variance positive at step 0", seen.get(0, -1.0) > 0)


TEA_STEP = 110
TEA_AUX_WEIGHT = 100.0  # a percentage typed for the fraction 1.0


@scenario(
    family="tea_ceremony_whisk_froth_aux_weight_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=TEA_STEP,
    note="Tea-ceremony whisk-froth regressor (SiLU MLP on whisk speed, water temperature and "
    "matcha features, MSE plus an auxiliary foam-height MSE on a second output, SGD Nesterov). The "
    "auxiliary weight comes from a per-phase table; at the phase switch at step 110 it is written "
    "100 (a percentage) for 1.0 for one step before the next phase overwrites it: one gradient "
    "burst on an ordinary batch.",
)
def h455_tea_whisk_aux_weight(ctx):
    gen = seeded(45507)
    model = _Net(10, 48, out=2, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    raw = _readings(gen, 64, 10, seed=45507)

    def batches_fn():
        while True:
            x, y = next(raw)
            yield x, torch.stack([y, 0.5 * y + 0.3 * torch.tanh(x[:, 1])], -1)

    def loss_fn(out, y):
        return F.mse_loss(out[:, 0], y[:, 0])

    aux = {}

    def model_aux_loss(step, loss):
        w = TEA_AUX_WEIGHT if step == TEA_STEP else 1.0
        return loss + w * aux["aux"]

    # the auxiliary term needs the output: compute both in the loss, keep the logged loss main-only
    def loss_both(out, y):
        aux["aux"] = F.mse_loss(out[:, 1], y[:, 1])
        return loss_fn(out, y)

    losses, norms = _loop(ctx, model, opt, batches_fn(), 200, loss_both, backprop=model_aux_loss)
    pre_g = _median(norms[TEA_STEP - 30 : TEA_STEP])
    pre_l = _median(losses[TEA_STEP - 30 : TEA_STEP])
    ctx.check("finite", _finite(losses))
    ctx.check("gradient at the switch over 30x the median before", norms[TEA_STEP] > 30 * pre_g)
    ctx.check(
        "the logged loss at the switch under 2x the median (an ordinary batch)",
        losses[TEA_STEP] < 2 * pre_l,
    )
    ctx.check(
        "back under 2x within 60 steps", _mean(losses[TEA_STEP + 50 : TEA_STEP + 60]) < 2 * pre_l
    )


TIE_DYE_STEP = 73


class _VatNet(nn.Module):
    def __init__(self, d_in, hidden=64, bias=40000.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.constant_(self.head.bias, bias)
        self.last_out = None

    def forward(self, x):
        out = self.head(F.silu(self.fc2(F.silu(self.fc1(x))))).squeeze(-1)
        self.last_out = out.detach()
        return out


@scenario(
    family="tie_dye_vat_uptake_fp16_raw_grams_regressor",
    optimizer="SGD",
    cause="amp_overflow",
    where=("head",),
    diverges=TIE_DYE_STEP,
    heldout=True,
    onset=TIE_DYE_STEP,
    note="Tie-dye vat dye-uptake regressor (SiLU MLP on bath temperature, soda ash, salt, soak "
    "time and volume, MSE, SGD momentum, clipping at 1e4) trained in fp16 autocast with a "
    "GradScaler. The target is left in raw milligrams (25000-64000, the head's bias set to the "
    "mean 40000) instead of being standardised: as the head's fp16 output swings towards the "
    "largest targets it passes 65504 and becomes inf, and the loss is inf at step 73 (the same "
    "forward in fp32 is finite).",
)
def h455_tie_dye_fp16_raw_grams(ctx):
    gen = seeded(45508)
    model = _VatNet(8)
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    raw = _readings(gen, 64, 8, seed=45508)
    batches = ((x, 40000.0 + 15000.0 * y) for x, y in raw)
    seen = {}

    def alter(step, x, y):
        seen["x"] = x
        return x, y

    losses, _ = _loop(
        ctx, model, opt, batches, 200, F.mse_loss, alter=alter, clip=1e4, scaler=scaler, amp=True
    )
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    amp_out = model.last_out
    with torch.no_grad():
        fp32_out = model(seen["x"])
    ctx.check(
        "the loss is inf at step 73, finite before", bad == TIE_DYE_STEP and _finite(losses[:bad])
    )
    ctx.check(
        "the head's fp16 output inf at the break",
        amp_out.dtype == torch.float16 and bool(torch.isinf(amp_out).any()),
    )
    ctx.check("the same forward in fp32 finite", bool(torch.isfinite(fp32_out).all()))


PAPIER_L2 = 1.5e-1


@scenario(
    family="paper_mache_layer_dry_time_l2_sign_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Paper-mache layer dry-time regressor (ReLU MLP on paste, humidity and layer-count "
    "features, MSE, Adamax). The hand-written L2 penalty is subtracted instead of added "
    "(loss - wd * sum of squared weights): nothing breaks at once, the weights grow steadily and "
    "the loss, after falling, climbs slowly for the rest of the run.",
)
def h455_paper_mache_l2_sign(ctx):
    gen = seeded(45509)
    model = _Net(10, 48)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    batches = _readings(gen, 64, 10, seed=45509)
    start_norm = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def backprop(step, loss):
        penalty = sum((p**2).sum() for p in model.parameters())
        return loss - PAPIER_L2 * penalty

    losses, _ = _loop(ctx, model, opt, batches, 300, F.mse_loss, backprop=backprop)
    end_norm = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    low = min(_mean(losses[i : i + 10]) for i in range(0, len(losses) - 10))
    ctx.check("finite", _finite(losses))
    ctx.check("the last 20 steps' loss over 3x its lowest", _mean(losses[-20:]) > 3 * low)
    ctx.check(
        "climbing through the second half",
        _mean(losses[-30:]) > _mean(losses[150:180]) > _mean(losses[100:130]),
    )
    ctx.check("the weight norm over 2x", end_norm > 2 * start_norm)


@scenario(
    family="daf_frame_drum_stroke_hinge_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Daf frame-drum stroke classifier (ReLU MLP on onset-envelope features, 6 strokes, plain "
    "SGD). Its multi-class hinge loss, 1 - (target logit - best other logit), is missing its "
    "clamp at 0: correctly classified frames keep pushing the margin, and the head's logits "
    "grow without bound while the 'loss' sinks below 0.",
)
def h455_daf_hinge_no_clamp(ctx):
    gen = seeded(45510)
    model = _Net(12, 48, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2)
    batches = _grades(gen, 64, 12, 6, seed=45510)
    peaks = []

    def hinge(logits, y):
        peaks.append(float(logits.detach().abs().max()))
        target = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
        return (1 - (target - other.max(1).values)).mean()

    losses, _ = _loop(ctx, model, opt, batches, 200, hinge, classifier=True)
    ctx.check("finite", _finite(losses))
    ctx.check("max |logit| over 20x its start", _mean(peaks[-10:]) > 20 * _mean(peaks[:5]))
    ctx.check("still growing in the last quarter", _mean(peaks[-10:]) > 1.2 * _mean(peaks[140:150]))
    ctx.check("the 'loss' below -10", losses[-1] < -10)


# -- controls --------------------------------------------------------------------------------------


RUBIK_RESET = 100
RUBIK_WARMUP = 10


@scenario(
    family="rubik_cube_solve_time_adam_reset_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Rubik's-cube solve-time regressor (GELU MLP on scramble and cuber features, Huber). "
    "Adam's state is cleared on purpose every 100 steps (a recipe that resets the moments when "
    "a new scramble pool is loaded), with a 10-step linear warm-up of the lr after each reset.",
)
def h455_rubik_adam_reset(ctx):
    gen = seeded(45511)
    model = _Net(10, 48, act=nn.GELU)
    base_lr = 3e-3
    opt = torch.optim.Adam(model.parameters(), lr=base_lr)
    batches = _readings(gen, 64, 10, seed=45511)
    resets = []

    def before(step):
        if step > 0 and step % RUBIK_RESET == 0:
            opt.state.clear()
            resets.append(step)
        since = step % RUBIK_RESET
        for group in opt.param_groups:
            group["lr"] = base_lr * min(1.0, (since + 1) / RUBIK_WARMUP)

    losses, _ = _loop(
        ctx, model, opt, batches, 300, lambda o, y: F.huber_loss(o, y, delta=1.0), before=before
    )
    steps_in_state = max(int(s["step"]) for s in opt.state.values())
    ctx.check("loss fell and stayed finite", _fell(losses, ratio=0.6))
    ctx.check("the state was reset at 100 and 200", resets == [100, 200])
    ctx.check("Adam's step count restarted (100 or fewer)", steps_in_state <= RUBIK_RESET)
    ctx.check(
        "the loss after each reset stays under 2x the loss before",
        all(_mean(losses[r : r + 10]) < 2 * _mean(losses[r - 10 : r]) for r in resets),
    )


@scenario(
    family="sand_painting_pigment_grade_fp16_onecycle_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sand-painting pigment-grade classifier (GELU MLP on grain-size and colour features, "
    "8 grades, cross-entropy with label smoothing 0.1) in fp16 autocast with a GradScaler, AdamW "
    "under OneCycleLR, clipping at 1.",
)
def h455_sand_painting_fp16(ctx):
    gen = seeded(45512)
    model = _Net(16, 64, out=8, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-2)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    batches = _grades(gen, 64, 16, 8, seed=45512, spread=1.3)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        batches,
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    x, y = next(batches)
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("loss fell and stayed finite", _fell(losses, ratio=0.6))
    ctx.check("accuracy over 70%", acc > 0.7)


@scenario(
    family="spoons_player_stroke_bilstm_tagger",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Spoons-player stroke tagger (the hand-written bidirectional LSTM from two nn.LSTMCell, "
    "cosine head, per-frame softmax, temperature 1) trained normally: RMSprop with a 15-step "
    "linear warm-up then ReduceLROnPlateau, accumulation over 2, clipping at 1, label smoothing "
    "0.05.",
)
def h455_spoons_tagger_healthy(ctx):
    gen = seeded(45513)
    model = _BiLSTMTagger(6, 24, 4, temperature=1.0)
    base_lr = 3e-3
    opt = torch.optim.RMSprop(model.parameters(), lr=base_lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _stroke_sequences(gen, 16, 16, 6, 4, seed=45503)
    losses = []

    def before(step):
        if step < 15:
            for group in opt.param_groups:
                group["lr"] = base_lr * (step + 1) / 15

    def after(step):
        losses.append(ctx.losses[-1])
        if step >= 15:
            plateau.step(_mean(losses[-5:]))

    _loop(
        ctx,
        model,
        opt,
        batches,
        100,
        _tag_loss(0.05),
        classifier=True,
        before=before,
        after=after,
        clip=1.0,
        accumulate=2,
        flat_targets=True,
    )
    logits = model.last_logits.reshape(-1, 4)
    top = torch.softmax(logits.float(), -1).max(-1).values
    ctx.check("loss fell and stayed finite", _fell(ctx.losses, ratio=0.7))
    ctx.check("under 5% of frames saturated at the end", float((top == 1.0).float().mean()) < 0.05)
