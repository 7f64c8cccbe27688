"""Held-out set 381 (``h381_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before: a steelpan tenor-pan WaveNet-style stack of gated dilated causal
Conv1d layers predicting the next mu-law sample whose training forward reuses the generation
temperature 0.001 (softmax collapse), a highline-sway 12-layer ReLU MLP initialised with an extra
gain of 1.5 on top of He init (gradients grow through depth), a scuba-tank fill-pressure SiLU
MSE net whose labels are in pascals instead of bar under fp16 autocast with a GradScaler (the
head's fp16 output overflows), a sheepdog-trial pen-time BCE net fed one shard whose missing
readings carry the logger's 9999 sentinel (one corrupted batch), a geyser eruption-height
Gaussian-NLL net whose variance head lost its softplus (log of a negative variance, NaN), a
hurling-helmet impact SiLU regressor whose layer-wise lr decay is typed 0.05 for 0.95 (bottom
layers frozen), a tide-gauge benchmark tanh regressor whose labels drift with a sinking-benchmark
correction applied with the wrong sign (the loss climbs slowly), a kite-fighting reel-spin
classifier whose warm-restart callback writes its counter into the loss weight for one step (one
gradient burst), a glassblower punty-release ReLU regressor whose OneCycleLR max_lr was copied
from an SGD recipe (dead ReLUs), a snowshoe-hare track-gait classifier whose resumed step sums the
gradient over 4096 virtual workers instead of averaging (Adam's second moment poisoned), and three
controls (a didgeridoo-drone residual and skip dilated Conv1d regressor with 1/sqrt(2) residual
scaling, warm-up and Adam, a quilting block-motif tied-weight autoencoder with SGD momentum and a
cosine schedule, and a kayak paddle-blade force SiLU Huber regressor under fp16 autocast with a
GradScaler, AdamW, accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, digits, grad_norm, scenario, seeded


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


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    forward=None,
    before=None,
    alter=None,
    watch=None,
    after=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    targets=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated (before the division by the accumulation count), ``after(step)``
    runs after the optimizer step, ``plateau()`` gives the validation loss for a
    ReduceLROnPlateau ``sched``. Stops after a non-finite loss (once ``ctx.step`` has seen it);
    returns the number of steps run."""
    forward = forward or (lambda m, x: m(x))
    ctx.attach(model, opt, scaler=scaler)
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
                ctx.targets(targets(y) if targets is not None else y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = forward(model, x)
            if watch is not None:
                watch(step, out, x, y)
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


# -- data -------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Readings labelled by a hidden linear rule with a little label noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w > 0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _mulaw(x: torch.Tensor, levels: int) -> torch.Tensor:
    mu = levels - 1
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return ((y + 1) / 2 * mu + 0.5).long().clamp(0, mu)


def _waves(gen, batch, length, seed, notes=4, jitter=0.3, noise=0.01):
    """A pan or drone tone: a fundamental from a few notes, two partials, random phase, a decay."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.08 + 0.25 * torch.rand(notes, generator=g)
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        k = torch.randint(0, notes, (batch,), generator=gen)
        f = freqs[k][:, None]
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        amp = 0.6 + jitter * torch.rand(batch, 1, generator=gen)
        w = amp * (0.7 * torch.sin(f * t + ph) + 0.3 * torch.sin(2 * f * t + 2 * ph))
        yield w * torch.exp(-t / (4 * length)) + 0.01 * torch.randn(
            batch, length + 1, generator=gen
        )


# -- models -----------------------------------------------------------------------------------------


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


class GatedDilatedLayer(nn.Module):
    """WaveNet layer: causal dilated filter and gate convs, tanh(filter) * sigmoid(gate), a 1x1
    residual conv and a 1x1 skip conv."""

    def __init__(self, ch, skip, dilation, res_scale=1.0):
        super().__init__()
        self.dilation = dilation
        self.res_scale = res_scale
        self.filt = nn.Conv1d(ch, ch, 2, dilation=dilation)
        self.gate = nn.Conv1d(ch, ch, 2, dilation=dilation)
        self.res = nn.Conv1d(ch, ch, 1)
        self.skip = nn.Conv1d(ch, skip, 1)

    def forward(self, x):
        h = F.pad(x, (self.dilation, 0))
        z = torch.tanh(self.filt(h)) * torch.sigmoid(self.gate(h))
        return (x + self.res(z)) * self.res_scale, self.skip(z)


class WaveNet(nn.Module):
    """Input conv, a stack of gated dilated causal layers, summed skips, ReLU, 1x1, ReLU, head.
    ``levels`` > 0: input and output are mu-law classes; 0: a continuous sample in and out."""

    def __init__(self, levels=16, ch=16, skip=32, dilations=(1, 2, 4, 8), res_scale=1.0):
        super().__init__()
        self.levels = levels
        self.embed = nn.Conv1d(max(levels, 1), ch, 1)
        self.layers = nn.ModuleList(GatedDilatedLayer(ch, skip, d, res_scale) for d in dilations)
        self.post = nn.Conv1d(skip, skip, 1)
        self.head = nn.Conv1d(skip, max(levels, 1), 1)

    def forward(self, x, temperature=1.0):
        if self.levels:
            x = F.one_hot(x, self.levels).float().transpose(1, 2)
        else:
            x = x[:, None, :]
        h = self.embed(x)
        total = 0.0
        for layer in self.layers:
            h, s = layer(h)
            total = total + s
        out = self.head(F.relu(self.post(F.relu(total))))
        return out.transpose(1, 2) / temperature  # (batch, time, levels)


# -- WaveNet: softmax collapse from the generation temperature --------------------------------------


def _pan_batches(gen, batch, length, levels, seed):
    for w in _waves(gen, batch, length, seed, notes=2, jitter=0.0, noise=0.0):
        q = _mulaw(w.clamp(-1, 1), levels)
        yield q[:, :-1], q[:, 1:]


@scenario(
    "steelpan_tenor_pan_strike_gated_wavenet",
    "AdamW",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="the model's forward takes the sampling temperature for generation, and the training "
    "script passes the config's near-greedy generation temperature 0.001 instead of 1.0, so the "
    "head's logits are multiplied by 1000 in the loss (4-level mu-law samples of a two-note pan): the next-sample softmax saturates and most rows' "
    "target probability rounds to exactly 1.0 in float32 while the raw logits are moderate",
)
def h381_steelpan_wavenet_generation_temperature(ctx: Context) -> None:
    gen = seeded(38101)
    levels = 4
    model = WaveNet(levels=levels, ch=16, skip=32, dilations=(1, 2, 4, 8, 1, 2, 4, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    temperature = 0.001
    rf = 31
    collapsed, intended = [], []

    def loss_fn(out, y):
        return F.cross_entropy(out[:, rf:].reshape(-1, levels), y[:, rf:].reshape(-1))

    def watch(step, out, x, y):
        o = out.detach().float()[:, rf:].reshape(-1, levels)
        t = y[:, rf:].reshape(-1)
        collapsed.append(float((torch.softmax(o, -1).gather(1, t[:, None]) == 1.0).float().mean()))
        raw = o * temperature
        intended.append(float((torch.softmax(raw, -1).gather(1, t[:, None]) == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _pan_batches(gen, 16, 64, levels, 38102),
        150,
        loss_fn,
        classifier=True,
        forward=lambda m, x: m(x, temperature),
        targets=lambda y: y[:, rf:].reshape(-1),
        watch=watch,
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check(
        "the share at exactly 1.0 rose from the first 5 steps to the last 30",
        _mean(collapsed[-30:]) > _mean(collapsed[:5]) + 0.1,
    )
    ctx.check(
        "over 40% of the rows' target probability exactly 1.0 over the last 30 steps",
        _mean(collapsed[-30:]) > 0.4,
    )
    ctx.check(
        "none of them at exactly 1.0 at temperature 1 (the same logits)",
        _mean(intended[-30:]) < 0.01,
    )


# -- control: residual and skip connections, 1/sqrt(2) scaling, Adam -------------------------------


def _drone_batches(gen, batch, length, seed):
    for w in _waves(gen, batch, length, seed, notes=3):
        yield w[:, :-1], w[:, 1:]


@scenario(
    "didgeridoo_drone_residual_skip_conv_regressor",
    "Adam",
    "healthy",
    heldout=True,
    note="control: gated dilated causal Conv1d stack with residual and skip connections, the "
    "residual sum scaled by 1/sqrt(2), MSE on the next sample of a drone, Adam with a 20-step "
    "linear warm-up and clipping at 1.0",
)
def h381_didgeridoo_residual_skip_control(ctx: Context) -> None:
    gen = seeded(38111)
    model = WaveNet(levels=0, ch=16, skip=16, dilations=(1, 2, 4, 8, 1, 2), res_scale=2**-0.5)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    rf = 20

    def loss_fn(out, y):
        return F.mse_loss(out[:, rf:, 0], y[:, rf:])

    _loop(ctx, model, opt, _drone_batches(gen, 16, 64, 38112), 150, loss_fn, clip=1.0, sched=sched)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell to under a third", _fell(ctx.losses, 10, 0.34))


# -- exploding gradients through depth --------------------------------------------------------------


class DeepMLP(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1)
        self.layers = nn.ModuleList(nn.Linear(a, width) for a in sizes)
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            layer.weight.data.mul_(gain)
            nn.init.zeros_(layer.bias)
        self.outs: list[torch.Tensor] = []

    def forward(self, x):
        self.outs = []
        for layer in self.layers:
            x = layer(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


@scenario(
    "slackline_highline_sway_deep_relu_mlp",
    "NAdam",
    "exploding_gradients",
    "layers.0",
    None,
    heldout=True,
    note="a 12-layer ReLU MLP for highline sway amplitude; the init helper multiplies He init by "
    "an extra gain of 1.5 (left over from the tanh variant of the helper), so every layer amplifies "
    "the backward signal by about 1.5 and the gradient at the first layer's output is about "
    "1.5^11 times that at the last; NAdam with clipping keeps the loss finite",
)
def h381_highline_deep_relu_extra_gain(ctx: Context) -> None:
    gen = seeded(38121)
    model = DeepMLP(10, 48, 12, 1.5)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-4)
    ratios = []

    def after(step):
        g = [float(o.grad.norm()) for o in model.outs if o.grad is not None]
        if len(g) == 12 and g[-1] > 0:
            ratios.append(g[0] / g[-1])

    # the gradients at the layer outputs are read before the optimizer step clears them
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, 38122)
    for step in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        after(step)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check(
        "gradient at layers.0's output over 20x that at layers.11's at step 0",
        bool(ratios) and ratios[0] > 20,
    )
    ctx.check("still over 10x through the run", bool(ratios) and min(ratios) > 10)
    ctx.check("the total gradient norm over 100 at the start", ctx.grad_norms[0] > 100)


# -- fp16 overflow under autocast + GradScaler ------------------------------------------------------


def _fill_batches(gen, batch, seed, unit):
    for x, y in _readings(gen, batch, 8, seed):
        # fill pressure around 200 bar; ``unit`` converts bar to the label column's unit
        yield x, (200.0 + 30.0 * y) * unit


@scenario(
    "scuba_tank_fill_pascal_fp16_mse_net",
    "Adam",
    "amp_overflow",
    "head",
    72,
    heldout=True,
    note="the fill-station export writes the end pressure in pascals while the data card says bar, "
    "so the labels are about 2e7 instead of 200; the SiLU MSE regressor trains under fp16 "
    "autocast with a GradScaler, its output climbs toward the labels and once the head's fp16 "
    "output passes 65504 it is inf: the loss is inf, every step is skipped and the scale "
    "collapses",
)
def h381_scuba_fill_pascal_fp16(ctx: Context) -> None:
    gen = seeded(38131)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    peaks, fp32_peaks = [], []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().float().abs().max()))
        with torch.no_grad():
            fp32_peaks.append(float(model(x).abs().max()))

    n = _loop(
        ctx,
        model,
        opt,
        _fill_batches(gen, 64, 38132, 1e5),
        300,
        F.mse_loss,
        watch=watch,
        scaler=scaler,
        amp=True,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is inf at some step", bad is not None)
    ctx.check("finite for the first 20 steps", bad is not None and bad >= 20)
    ctx.check(
        "at that step the fp16 output is inf while the float32 forward is finite and over 65504",
        bad is not None
        and not math.isfinite(peaks[bad])
        and math.isfinite(fp32_peaks[bad])
        and fp32_peaks[bad] > 65504,
    )
    ctx.check(
        "the step was skipped: the scale halved",
        len(ctx.scales) == n and ctx.scales[-1] < ctx.scales[-2],
    )


# -- one corrupted batch ------------------------------------------------------------------------------


@scenario(
    "sheepdog_trial_pen_time_relu_bce_net",
    "SGD",
    "data_outlier",
    (),
    None,
    heldout=True,
    note="one trial's shard (the batch at step 100) comes from a field logger that writes 9999 for "
    "missing readings; the loader's missing-value filter expects NaN, so a quarter of that "
    "batch has 9999 in three columns: loss and gradient jump for that step, clipping holds the "
    "update and the run recovers (SGD momentum)",
    onset=100,
)
def h381_sheepdog_sentinel_shard(ctx: Context) -> None:
    gen = seeded(38141)
    model = Trunk(12, 48)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def alter(step, x, y):
        if step == 100:
            x = x.clone()
            x[:16, 3:6] = 9999.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 12, 38142),
        200,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss finite", _finite(ls))
    ctx.check(
        "loss at step 100 over 20x the median of the 20 before", ls[100] > 20 * _median(ls[80:100])
    )
    ctx.check(
        "gradient at step 100 over 20x the median of the 20 before",
        gs[100] > 20 * _median(gs[80:100]),
    )
    ctx.check(
        "recovered: last 20 under 2x the 20 before the shard",
        _mean(ls[-20:]) < 2 * _mean(ls[80:100]),
    )
    ctx.check("trained before the shard", _mean(ls[80:100]) < 0.7 * _mean(ls[:10]))


# -- NaN from log of a negative variance ----------------------------------------------------------


class MeanVarNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)
        nn.init.normal_(self.var_head.weight, std=0.01)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        # the softplus on the variance was dropped in a refactor: raw variance
        return torch.cat([self.mean_head(h), self.var_head(h)], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()


@scenario(
    "geyser_eruption_height_raw_variance_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    "var_head",
    118,
    heldout=True,
    note="the Gaussian-NLL head's softplus on the variance was dropped in a refactor; the variance "
    "head's bias is initialised at 1 so the variance starts positive, but as the NLL pulls the "
    "variance of well-fit rows toward zero one row's variance crosses below 0 and log(var) is "
    "NaN (RAdam)",
)
def h381_geyser_raw_variance_log(ctx: Context) -> None:
    gen = seeded(38151)
    model = MeanVarNet(10)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    mins = []

    def watch(step, out, x, y):
        mins.append(float(out.detach()[:, 1].min()))

    _loop(ctx, model, opt, _readings(gen, 64, 10, 38152, noise=0.02), 300, _gauss_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at some step", bad is not None)
    ctx.check("finite for the first 20 steps", bad is not None and bad >= 20)
    ctx.check("every variance positive at step 0", mins[0] > 0)
    ctx.check("a variance at or below 0 at the NaN step", bad is not None and mins[bad] <= 0)


# -- layer-wise lr decay typo: bottom layers frozen -------------------------------------------------


class Stack(nn.Module):
    def __init__(self, d_in, width, depth, out=1, act=nn.SiLU):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(a, width), act()) for a in sizes)
        self.head = nn.Linear(width, out)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        out = self.head(x)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


@scenario(
    "hurling_helmet_impact_llrd_silu_regressor",
    "RMSprop",
    "update_ratio_out_of_range",
    ("blocks.0", "blocks.0.0", "blocks.1", "blocks.1.0"),
    None,
    heldout=True,
    note="layer-wise lr decay over five SiLU blocks and a head, lr_i = 1e-3 * decay**(5 - i), with "
    "decay typed 0.05 for 0.95: blocks.0 trains at 3e-10 and blocks.1 at 6e-9, so they barely "
    "move while the head trains normally; the loss stalls but stays finite (RMSprop)",
)
def h381_hurling_llrd_decay_typo(ctx: Context) -> None:
    gen = seeded(38161)
    model = Stack(10, 48, 5)
    decay, base = 0.05, 1e-3
    groups = [
        {"params": block.parameters(), "lr": base * decay ** (5 - i)}
        for i, block in enumerate(model.blocks)
    ]
    groups.append({"params": model.head.parameters(), "lr": base})
    opt = torch.optim.RMSprop(groups, lr=base)
    w0 = model.blocks[0][0].weight.detach().clone()
    w1 = model.blocks[1][0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    _loop(ctx, model, opt, _readings(gen, 64, 10, 38162), 200, F.mse_loss)
    ctx.check(
        "loss finite and not blown up",
        _finite(ctx.losses) and _mean(ctx.losses[-20:]) < 1.5 * _mean(ctx.losses[:10]),
    )
    ctx.check(
        "blocks.0 moved under 1e-5 of its norm", _rel_change(w0, model.blocks[0][0].weight) < 1e-5
    )
    ctx.check(
        "blocks.1 moved under 1e-4 of its norm", _rel_change(w1, model.blocks[1][0].weight) < 1e-4
    )
    ctx.check("the head moved over 5% of its norm", _rel_change(h0, model.head.weight) > 0.05)


# -- drifting target: the loss climbs slowly ---------------------------------------------------------


@scenario(
    "tide_gauge_benchmark_drift_tanh_regressor",
    "Adagrad",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="the tide-gauge labels are corrected for a sinking benchmark at a rate per reading, but "
    "the correction is applied with the wrong sign and accumulates as the stream advances, so the "
    "labels drift away from what the readings explain; Adagrad's shrinking steps fall behind and "
    "the loss climbs slowly after its low, finite, with no jump",
)
def h381_tide_gauge_benchmark_drift(ctx: Context) -> None:
    gen = seeded(38171)
    model = Trunk(10, 48, act=nn.Tanh)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-3)
    drift = {"offset": 0.0}

    def alter(step, x, y):
        drift["offset"] += 0.035
        return x, y + drift["offset"]

    _loop(ctx, model, opt, _readings(gen, 64, 10, 38172), 300, F.mse_loss, alter=alter)
    ls = ctx.losses
    lows = [_mean(ls[i : i + 20]) for i in range(len(ls) - 19)]
    jumps = [b / max(a, 1e-12) for a, b in zip(ls[20:-1], ls[21:], strict=True)]
    ctx.check("loss finite", _finite(ls))
    ctx.check(
        "last 20 steps' mean over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3 * min(lows)
    )
    ctx.check("no single step jumps over 3x after the warm-up", max(jumps) < 3)
    ctx.check(
        "the climb starts after a low: lowest window before step 150", lows.index(min(lows)) < 150
    )


# -- one gradient burst from a callback bug ---------------------------------------------------------


@scenario(
    "kite_fighting_reel_spin_nesterov_classifier",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    note="the cosine warm-restart callback at step 150 writes its restart counter (150) into the "
    "loss-weight slot for one step, so the loss backpropagated on a clean batch is 150x: one "
    "gradient burst, clipped, and the run recovers (SGD Nesterov, accumulation over 2)",
    onset=150,
)
def h381_kite_reel_restart_weight(ctx: Context) -> None:
    gen = seeded(38181)
    model = Trunk(12, 64, out=6, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (150.0 if step == 150 else 1.0)

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 32, 12, 6, 38182, spread=1.5),
        220,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        clip=2.0,
        accumulate=2,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss finite", _finite(ls))
    ctx.check(
        "gradient at step 150 over 50x the median of the 20 before",
        gs[150] > 50 * _median(gs[130:150]),
    )
    ctx.check(
        "the loss itself at step 150 under 3x the median before", ls[150] < 3 * _median(ls[130:150])
    )
    ctx.check(
        "recovered: last 20 under 1.5x the 20 before",
        _mean(ls[-20:]) < 1.5 * _mean(ls[130:150]) + 0.05,
    )
    ctx.check("trained before the burst", _mean(ls[130:150]) < 0.6 * _mean(ls[:10]))


# -- dead ReLUs from a max_lr copied from an SGD recipe --------------------------------------------


def _punty_run(max_lr, steps, gen, seed, ctx=None):
    model = Trunk(10, 64)
    opt = torch.optim.Adamax(model.parameters(), lr=max_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps)
    test_x, test_y = next(_readings(torch.Generator().manual_seed(seed + 1), 256, 10, seed))
    with torch.no_grad():
        dead, held = [float((model.features(test_x) <= 0).all(0).float().mean())], []

    def after(step):
        with torch.no_grad():
            h = model.features(test_x)
            dead.append(float((h <= 0).all(0).float().mean()))
            held.append(float(F.mse_loss(model(test_x), test_y)))

    if ctx is None:
        batches = _readings(gen, 64, 10, seed)
        for step in range(steps):
            x, y = next(batches)
            F.mse_loss(model(x), y).backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            after(step)
    else:
        _loop(
            ctx,
            model,
            opt,
            _readings(gen, 64, 10, seed),
            steps,
            F.mse_loss,
            sched=sched,
            after=after,
        )
    return dead, held


@scenario(
    "glassblower_punty_release_relu_regressor",
    "Adamax",
    "loss_of_plasticity",
    ("fc2", "act2"),
    None,
    heldout=True,
    note="the OneCycleLR max_lr was copied from the team's SGD recipe (1.0) while the optimizer is "
    "Adamax (meant 2e-3): near the peak the updates push most of act2's ReLUs to never fire, and "
    "they stay dead as the rate anneals, against almost none at the intended max_lr; the remaining units still fit the target",
)
def h381_glassblower_onecycle_sgd_max_lr(ctx: Context) -> None:
    gen = seeded(38191)
    dead, _ = _punty_run(1.0, 200, gen, 38192, ctx)
    ref_dead, _ = _punty_run(2e-3, 200, torch.Generator().manual_seed(38193), 38192)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("under 10% of act2 dead at init", dead[0] < 0.1)
    ctx.check("over 60% of act2 dead over the last 50 steps", min(dead[-50:]) > 0.6)
    ctx.check("under 10% dead at the end of the intended run (max_lr 2e-3)", ref_dead[-1] < 0.1)


# -- Adam's second moment poisoned by a summed all-reduce ------------------------------------------


@scenario(
    "snowshoe_hare_track_gait_adam_classifier",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    note="on the first step after resuming (step 100) the hand-written gradient all-reduce sums "
    "over the 4096 virtual workers of the original job instead of averaging, so one gradient is "
    "4096x on a clean batch; Adam's second moment (beta2 0.999) fills with it and the per-weight "
    "updates stay far smaller for the next hundreds of steps while the gradients are not smaller",
    onset=100,
)
def h381_snowshoe_summed_allreduce(ctx: Context) -> None:
    gen = seeded(38201)
    model = Trunk(12, 64, out=5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves, grads = [], []
    prev = {"w": None}

    def before(step):
        prev["w"] = torch.cat([p.detach().flatten().clone() for p in model.parameters()])

    def backprop(step, loss):
        return loss * (4096.0 if step == 100 else 1.0)

    def after(step):
        w = torch.cat([p.detach().flatten() for p in model.parameters()])
        moves.append(float((w - prev["w"]).abs().median()))
        grads.append(
            float(torch.cat([p.grad.flatten() for p in model.parameters()]).abs().median())
        )

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 32, 12, 5, 38202, spread=2.0),
        250,
        F.cross_entropy,
        classifier=True,
        before=before,
        backprop=backprop,
        after=after,
    )
    gs = ctx.grad_norms
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check(
        "gradient at step 100 over 1000x the median before", gs[100] > 1000 * _median(gs[80:100])
    )
    ctx.check(
        "median per-weight update 20-100 steps later under a tenth of the 20 steps before",
        _mean(moves[120:200]) < 0.1 * _mean(moves[80:100]),
    )
    ctx.check(
        "while the per-weight gradients are not smaller",
        _mean(grads[120:200]) > 0.5 * _mean(grads[80:100]),
    )


# -- controls -----------------------------------------------------------------------------------------


class TiedAutoencoder(nn.Module):
    """Encoder Linear; the decoder reuses the encoder's weight transposed (tied weights)."""

    def __init__(self, d_in=64, code=16):
        super().__init__()
        self.encoder = nn.Linear(d_in, code)
        self.act = nn.Sigmoid()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.encoder(x)), self.encoder.weight.t(), self.dec_bias)


def _motif_batches(gen, batch):
    x, _ = digits()
    while True:
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch + 1, batch):
            xb = x[order[i : i + batch]]
            yield xb + 0.05 * torch.randn(xb.shape, generator=gen), xb


@scenario(
    "quilting_block_motif_tied_autoencoder",
    "SGD",
    "healthy",
    heldout=True,
    note="control: tied-weight sigmoid autoencoder on noisy 8x8 block motifs, SGD momentum 0.9 "
    "with a 10-step warm-up into cosine annealing, weight decay 1e-5, MSE",
)
def h381_quilting_tied_autoencoder_control(ctx: Context) -> None:
    gen = seeded(38211)
    model = TiedAutoencoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, 0.1, 1.0, total_iters=10),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, 190),
        ],
        milestones=[10],
    )
    _loop(ctx, model, opt, _motif_batches(gen, 64), 200, F.mse_loss, sched=sched)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell to under half", _fell(ctx.losses, 10, 0.5))


@scenario(
    "kayak_paddle_blade_force_fp16_huber_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: SiLU Huber regressor of paddle-blade force (standardised labels) under fp16 "
    "autocast with a GradScaler, AdamW with a no-decay bias group, accumulation over 2, "
    "ReduceLROnPlateau on a held-out batch, clipping at 1.0",
)
def h381_kayak_fp16_control(ctx: Context) -> None:
    gen = seeded(38221)
    model = Trunk(10, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    val_x, val_y = next(_readings(torch.Generator().manual_seed(38223), 256, 10, 38222))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(val_x), val_y))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 38222),
        200,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell to under half", _fell(ctx.losses, 10, 0.5))
    ctx.check("the scale stayed above 1", min(ctx.scales) > 1)
