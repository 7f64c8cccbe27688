"""Held-out set 382 (``h382_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before: a pinch-pot wall-thickness Gaussian-NLL net whose variance head lost
its clamp (log of a negative variance, NaN), a cricket seam-swing ReLU BCE net with NAdam's lr
typed 5e-1 for 5e-3 (dead ReLUs), a canicross harness-pull SiLU Huber regressor whose loss weight
is read in percent on one resumed step (one gradient burst), a shot-put glide-release Conv1d
regressor whose stem group's LambdaLR freeze compares steps with a sample count (frozen stem), an
oxbow-lake infill ReLU regressor fed one shard with a -9999 missing-value sentinel (one corrupted
batch), a dog-sled gangline Elman RNN with orthogonal recurrent init at gain 3 (gradients grow
through time), a bellfounder hum-partial cosine classifier whose scale is typed 3000 for 30
(softmax collapse), an ice-core annual-layer regressor whose depth labels accumulate an offset that
is never reset (slow climb), a skijoring tow-rope tanh regressor whose StepLR gamma is typed 10 for
0.1 (past 2/sharpness), a kalimba tine-sustain GELU regressor whose loss-balancing weight divides by
a just-reset buffer on one step (Adam's second moment poisoned), and three controls (a
desiccation-crack U-Net segmenter with BatchNorm, Dice + cross-entropy and AdamW, a hammer-throw
turn-phase Conv1d classifier with SGD momentum, warm-up + cosine, label smoothing and clipping,
and a raku smoke-reduction SiLU Huber regressor under fp16 autocast with a GradScaler, Adam,
accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


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
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``. The gradient norm is recorded
    before clipping. Stops after a non-finite loss (once ``ctx.step`` has seen it)."""
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
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
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
    """Readings labelled by a hidden nonlinear rule with a little label noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = ((x @ w) + 0.5 * (x @ v) ** 2 / d_in > 0.3).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=40, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


def _glides(gen, batch, length=40):
    """Two-channel glide traces (hip and wrist speed); the target is the wrist's frequency,
    standardised."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        f = 0.2 + 0.5 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 2, 1, generator=gen)
        hip = torch.sin(0.5 * f[:, :, None] * t + phase[:, :1])
        wrist = torch.sin(f[:, :, None] * t + phase[:, 1:])
        x = torch.cat([hip, wrist], 1) + 0.2 * torch.randn(batch, 2, length, generator=gen)
        yield x, ((f.squeeze(1) - 0.45) / 0.145)


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


def _sharpness(model, loss_fn, x, y, iters=30) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


# -- faults ----------------------------------------------------------------------------------------


class WallNLL(nn.Module):
    """Mean and variance heads on a shared SiLU trunk; the variance head's output is used as
    the variance directly (the clamp_min(1e-4) of the original code was lost in a refactor)."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.var_head.weight, std=0.01)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.stack([self.mean_head(h).squeeze(-1), self.var_head(h).squeeze(-1)], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * torch.log(var) + (y - mu) ** 2 / (2 * var)).mean()


@scenario(
    "pinch_pot_wall_thickness_gaussian_nll_net",
    "Adam",
    "nonfinite",
    "var_head",
    68,
    heldout=True,
    note="the variance head's output is used as the variance directly: the clamp_min(1e-4) "
    "(or softplus) of the original was lost in a refactor; the target is nearly noise-free, so "
    "the predicted variance is driven towards 0 and one sample's goes negative: log of a "
    "negative number is NaN and the loss is NaN",
)
def h382_pinch_pot_unclamped_variance(ctx: Context) -> None:
    gen = seeded(38201)
    model = WallNLL(6)
    opt = torch.optim.Adam(model.parameters(), lr=6e-4)
    min_var: list[float] = []

    def watch(step, out, x, y):
        min_var.append(float(out[:, 1].detach().min()))

    _loop(ctx, model, opt, _readings(gen, 64, 6, 38201, noise=0.01), 300, _gauss_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss is non-finite at some step", bad is not None)
    ctx.check("finite until step 68, non-finite at step 68", bad == 68)
    ctx.check(
        "the batch's smallest predicted variance is <= 0 at the first NaN step",
        bad is not None and min_var[bad] <= 0.0,
    )
    ctx.check(
        "all predicted variances positive on every earlier step",
        bad is not None and all(v > 0 for v in min_var[:bad]),
    )


@scenario(
    "cricket_bowling_seam_swing_relu_bce_net",
    "NAdam",
    "loss_of_plasticity",
    ("fc2", "act2"),
    None,
    heldout=True,
    note="NAdam's lr is typed 5e-1 for 5e-3 (a decimal slip in the sweep config); the first "
    "large steps push fc2's pre-activations negative and most of act2's ReLUs die for good: "
    "their rows of fc2 get exactly zero gradient and the net stops learning",
)
def h382_cricket_swing_dead_relus(ctx: Context) -> None:
    gen = seeded(38202)
    model = Trunk(10, 64, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-1)
    probe_x, probe_y = next(_binary(torch.Generator().manual_seed(1), 512, 10, 38202))
    with torch.no_grad():
        dead0 = float((model.features(probe_x) <= 0).all(0).float().mean())
    dead: list[float] = []

    def after(step):
        with torch.no_grad():
            dead.append(float((model.features(probe_x) <= 0).all(0).float().mean()))

    bce = F.binary_cross_entropy_with_logits
    _loop(ctx, model, opt, _binary(gen, 64, 10, 38202), 200, bce, after=after)
    # the dead units' rows of fc2 get no gradient
    model.zero_grad()
    bce(model(probe_x), probe_y).backward()
    with torch.no_grad():
        mask = (model.features(probe_x) <= 0).all(0)
    rows = model.fc2.weight.grad[mask]
    ctx.check("under 10% of act2's units dead at init", dead0 < 0.1)
    ctx.check("over 50% of act2's units dead on each of the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check(
        "dead units' fc2 rows get exactly zero gradient",
        bool(mask.any()) and float(rows.abs().max()) == 0.0,
    )
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "canicross_harness_pull_silu_huber_regressor",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="SGD Nesterov with accumulation over 4 and clipping; on the first step after a resume "
    "(step 150) the loss weight is read from the run's config in percent (100) instead of as a "
    "fraction (1.0): one step's gradient is 100x on clean data, clipping caps the update and "
    "the run recovers",
)
def h382_canicross_percent_loss_weight(ctx: Context) -> None:
    gen = seeded(38203)
    model = Trunk(8, 64, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (100.0 if step == 150 else 1.0)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 8, 38203),
        260,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
        accumulate=4,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "gradient at step 150 over 30x the median of steps 130-149",
        g[150] > 30 * _median(g[130:150]),
    )
    ctx.check(
        "no other step from 100 on with a gradient over 5x that median",
        max(g[100:150] + g[151:]) < 5 * _median(g[130:150]),
    )
    ctx.check(
        "the loss shown at step 150 is ordinary (clean batch)", ls[150] < 2 * _mean(ls[130:150])
    )
    ctx.check(
        "recovers: last 20 steps' loss under 1.5x steps 130-149",
        _mean(ls[-20:]) < 1.5 * _mean(ls[130:150]),
    )
    ctx.check("loss finite", _finite(ls))


class GlideNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(2, 12, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(12, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.stem(x))))
        return self.head(h.mean(-1)).squeeze(-1)


@scenario(
    "shot_put_glide_release_two_group_conv_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    "stem",
    None,
    heldout=True,
    note="the stem group's LambdaLR freezes it for the first freeze_steps steps, but "
    "freeze_steps comes from the config in samples (10000) and is compared with optimizer steps: "
    "the stem's lr is 0 for the whole run while the rest learns",
)
def h382_shot_put_stem_frozen(ctx: Context) -> None:
    gen = seeded(38204)
    model = GlideNet()
    stem = list(model.stem.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("stem.")]
    opt = torch.optim.Adagrad([{"params": stem}, {"params": rest}], lr=0.05)
    freeze_steps = 10000  # in samples in the config; compared with steps below

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 0.0 if s < freeze_steps else 1.0, lambda s: 1.0]
    )
    w0 = model.stem.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    c0 = model.conv2.weight.detach().clone()
    _loop(ctx, model, opt, _glides(gen, 32), 200, F.mse_loss, sched=sched)
    ctx.check("stem moved under 1e-6 of its norm", _rel_change(w0, model.stem.weight) < 1e-6)
    ctx.check("head moved over 5% of its norm", _rel_change(h0, model.head.weight) > 0.05)
    ctx.check("conv2 moved over 1% of its norm", _rel_change(c0, model.conv2.weight) > 0.01)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "oxbow_lake_infill_sediment_relu_regressor",
    "SGD",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=110,
    note="one core's shard (the batch at step 110) has its missing readings in two columns "
    "filled with the logger's -9999 sentinel instead of being imputed; the loss and gradient "
    "jump, clipping caps the update and the run recovers (SGD momentum)",
)
def h382_oxbow_sentinel_shard(ctx: Context) -> None:
    gen = seeded(38205)
    model = Trunk(6, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[::3, 2] = -9999.0
            x[1::4, 4] = -9999.0
        return x, y

    _loop(ctx, model, opt, _readings(gen, 32, 6, 38205), 220, F.mse_loss, alter=alter, clip=1.0)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "loss at step 110 over 20x the median of steps 90-109", ls[110] > 20 * _median(ls[90:110])
    )
    ctx.check(
        "gradient at step 110 over 20x the median of steps 90-109", g[110] > 20 * _median(g[90:110])
    )
    ctx.check(
        "recovers: last 20 steps' loss under 2x steps 90-109",
        _mean(ls[-20:]) < 2 * _mean(ls[90:110]),
    )
    ctx.check("loss finite", _finite(ls))


class ElmanCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.ih(x) + self.hh(h))


class GanglineRNN(nn.Module):
    def __init__(self, d_in=3, hidden=48, gain=1.0):
        super().__init__()
        self.hidden = hidden
        self.cell = ElmanCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.hh.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _gangline(gen, batch, length=30):
    """Three dogs' pull traces; the target is the mean pull of the lead dog early in the run."""
    while True:
        x = 0.5 * torch.randn(batch, length, 3, generator=gen)
        x = x + torch.sin(torch.arange(length)[None, :, None] / 4.0)
        yield x, x[:, :10, 0].mean(1) * 2


@scenario(
    "dog_sled_gangline_tension_elman_rnn",
    "SGD",
    "exploding_gradients",
    ("cell.hh", "cell"),
    None,
    heldout=True,
    note="the recurrent weights are initialised orthogonal with gain 3.0 (copied from a "
    "feed-forward init recipe) instead of 1.0: the tanh RNN is in its chaotic regime and the "
    "gradient grows backwards through the 30 time steps; clipping keeps the run finite but it "
    "barely learns (plain SGD)",
)
def h382_dog_sled_recurrent_gain(ctx: Context) -> None:
    gen = seeded(38206)
    model = GanglineRNN(gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ratios: list[float] = []
    ctx.attach(model, opt)
    batches = _gangline(gen, 32)
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first = float(model.states[0].grad.norm())
        last = float(model.states[-1].grad.norm())
        ratios.append(first / max(last, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient at h_0 over 20x that at h_29 at the start", ratios[0] > 20)
    ctx.check("median ratio over the run over 10x", _median(ratios) > 10)
    ctx.check(
        "pre-clip gradient norm over 1 (clipping active) on most steps",
        _median(ctx.grad_norms) > 1.0,
    )
    ctx.check("loss finite", _finite(ctx.losses))


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def cosines(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T

    def forward(self, h):
        return self.scale * self.cosines(h)


class HumNet(nn.Module):
    def __init__(self, d_in, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 32)
        self.head = CosineHead(32, classes, scale)

    def features(self, x):
        return self.fc2(self.act1(self.fc1(x)))

    def forward(self, x):
        return self.head(self.features(x))


@scenario(
    "bellfounder_hum_partial_cosine_classifier",
    "RAdam",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="the cosine classifier's scale s is typed 3000 for 30 in the config: the logits span "
    "thousands, float32 softmax rounds most rows' target probability to exactly 1.0 and those "
    "rows give no gradient",
)
def h382_bellfounder_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(38207)
    model = HumNet(12, 6, 3000.0)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    collapsed: list[float] = []
    intended: list[float] = []

    def watch(step, out, x, y):
        with torch.no_grad():
            p = torch.softmax(out, -1).gather(1, y[:, None])
            collapsed.append(float((p == 1.0).float().mean()))
            q = torch.softmax(out / 100.0, -1).gather(1, y[:, None])
            intended.append(float((q == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 38207),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' target probability exactly 1.0 over the last 50 steps",
        _mean(collapsed[-50:]) > 0.5,
    )
    ctx.check(
        "under a tenth as many such rows at the intended scale 30 on the same cosines",
        _mean(intended[-50:]) < 0.1 * _mean(collapsed[-50:]),
    )
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "ice_core_annual_layer_drift_regressor",
    "Adamax",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="the layer-count labels are built by a loader that adds each core's last count as an "
    "offset and never resets it between cores: the targets drift slowly upward batch after "
    "batch and the loss climbs slowly with no jump (Adamax)",
)
def h382_ice_core_drifting_labels(ctx: Context) -> None:
    gen = seeded(38208)
    model = Trunk(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-4)
    base = _readings(gen, 32, 8, 38208)
    offset = [0.0]

    def drifting():
        for x, y in base:
            offset[0] += 0.02
            yield x, y + offset[0]

    _loop(ctx, model, opt, drifting(), 250, F.mse_loss)
    ls = ctx.losses
    lows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    jumps = [ls[i + 1] / max(ls[i], 1e-12) for i in range(len(ls) - 1) if i > 20]
    ctx.check(
        "last 20 steps' loss over 3x its lowest 20-step mean", _mean(ls[-20:]) > 3 * min(lows)
    )
    ctx.check("no single-step jump over 3x after step 20", max(jumps) < 3)
    ctx.check("loss finite", _finite(ls))


@scenario(
    "skijoring_tow_rope_stretch_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=100,
    note="the StepLR decay's gamma is typed 10 for 0.1: at step 100 the rate goes up tenfold "
    "instead of down, lr x top Hessian eigenvalue passes 2 and the loss blows up (plain SGD)",
)
def h382_skijoring_steplr_gamma(ctx: Context) -> None:
    gen = seeded(38209)
    model = Trunk(6, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=10.0)
    px, py = next(_readings(torch.Generator().manual_seed(2), 256, 6, 38209))
    sharp: dict[int, float] = {}
    lrs: dict[int, float] = {}

    def before(step):
        if step in (99, 100):
            sharp[step] = _sharpness(model, F.mse_loss, px, py)
            lrs[step] = opt.param_groups[0]["lr"]

    _loop(
        ctx, model, opt, _readings(gen, 64, 6, 38209), 200, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at step 99", lrs[99] * sharp[99] < 2)
    ctx.check("lr x sharpness over 2 at step 100", lrs[100] * sharp[100] > 2)
    ctx.check(
        "the loss blows up: over 1000x steps 80-99 within 20 steps, then non-finite",
        max(v for v in ls[100:120] if math.isfinite(v)) > 1000 * _mean(ls[80:100])
        and _first_bad(ls) is not None,
    )
    ctx.check("loss fell before onset", _mean(ls[80:100]) < 0.8 * _mean(ls[:10]))


@scenario(
    "kalimba_tine_sustain_gelu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=80,
    note="a loss-balancing weight divides by the running mean of an auxiliary loss whose buffer "
    "is reset on resume at step 80, so that step's weight is 1/1e-4: one clean step's gradient is "
    "10000x, Adam's second moment (beta2 0.999) fills with it and the updates stay tiny for "
    "hundreds of steps while the gradients are ordinary",
)
def h382_kalimba_reset_balancer(ctx: Context) -> None:
    gen = seeded(38210)
    model = Trunk(8, 64, 1, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    updates: list[float] = []
    prev = [torch.cat([p.detach().flatten() for p in model.parameters()])]

    def backprop(step, loss):
        running = 1e-4 if step == 80 else 1.0
        return loss / running

    def after(step):
        now = torch.cat([p.detach().flatten() for p in model.parameters()])
        updates.append(float((now - prev[0]).abs().median()))
        prev[0] = now

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 8, 38210),
        220,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    g = ctx.grad_norms
    ctx.check(
        "gradient at step 80 over 1000x the median of steps 60-79", g[80] > 1000 * _median(g[60:80])
    )
    ctx.check(
        "median update over steps 100-180 under a tenth of steps 40-79",
        _median(updates[100:180]) < 0.1 * _median(updates[40:80]),
    )
    ctx.check(
        "gradients not smaller after (median 100-180 over half of 40-79)",
        _median(g[100:180]) > 0.5 * _median(g[40:80]),
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- healthy controls --------------------------------------------------------------------------------


def _cracks(gen, batch, size=16):
    """Generated mud-crack images: a few random straight cracks (dark lines, 1-2 px wide) on a
    shaded noisy background; the mask marks crack pixels."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    yy, xx = yy.float(), xx.float()
    while True:
        masks = torch.zeros(batch, size, size)
        for _ in range(3):
            ang = math.pi * torch.rand(batch, 1, 1, generator=gen)
            c = size * torch.rand(batch, 2, 1, 1, generator=gen)
            dist = ((xx - c[:, 0]) * torch.sin(ang) - (yy - c[:, 1]) * torch.cos(ang)).abs()
            masks = torch.maximum(masks, (dist < 0.8).float())
        shade = torch.rand(batch, 1, 1, generator=gen) * xx / size
        img = 1.0 + 0.3 * shade - 0.8 * masks + 0.25 * torch.randn(batch, size, size, generator=gen)
        yield img[:, None], masks.long()


def _conv_bn(a, b):
    return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, width=8, classes=2):
        super().__init__()
        self.enc1 = _conv_bn(1, width)
        self.enc2 = _conv_bn(width, 2 * width)
        self.bottleneck = _conv_bn(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = _conv_bn(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = _conv_bn(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottleneck(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def _dice_ce(out, mask):
    ce = F.cross_entropy(out, mask)
    p = torch.softmax(out, 1)[:, 1]
    t = (mask == 1).float()
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return ce + dice


@scenario(
    "desiccation_crack_polygon_unet_segmenter",
    "AdamW",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: a small U-Net (two down-sampling and two up-sampling stages with skip "
    "concatenations, BatchNorm) segmenting generated mud-crack images, Dice + cross-entropy, "
    "AdamW with a no-decay group for biases and norms, cosine schedule",
)
def h382_desiccation_unet_control(ctx: Context) -> None:
    gen = seeded(38211)
    model = UNet()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150)
    _loop(ctx, model, opt, _cracks(gen, 16), 150, _dice_ce, sched=sched)
    model.eval()
    with torch.no_grad():
        x, m = next(_cracks(torch.Generator().manual_seed(5), 64))
        pred = model(x).argmax(1)
        inter = float(((pred == 1) & (m == 1)).sum())
        union = float(((pred == 1) | (m == 1)).sum())
    ctx.check("loss fell under 60% of the start", _fell(ctx.losses, ratio=0.6))
    ctx.check("held-out crack IoU over 0.5", inter / max(union, 1.0) > 0.5)


class TurnNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 12, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(12, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.act2(self.conv2(F.max_pool1d(self.act1(self.conv1(x)), 2)))
        return self.head(h.mean(-1))


@scenario(
    "hammer_throw_wire_turn_phase_conv1d_classifier",
    "SGD",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: ReLU Conv1d classifier of turn phases from wire-tension traces, SGD momentum "
    "with weight decay, linear warm-up then cosine (SequentialLR), label smoothing 0.1, clipping",
)
def h382_hammer_throw_control(ctx: Context) -> None:
    gen = seeded(38212)
    model = TurnNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=15)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=185)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[15])

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 4, 38212),
        200,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell under 60% of the start", _fell(ctx.losses, ratio=0.6))


@scenario(
    "raku_smoke_reduction_fp16_silu_regressor",
    "Adam",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: SiLU Huber regressor of smoke-reduction crackle density under fp16 autocast "
    "with a GradScaler, Adam, accumulation over 2, ReduceLROnPlateau on a held-out batch, "
    "clipping",
)
def h382_raku_fp16_control(ctx: Context) -> None:
    gen = seeded(38213)
    model = Trunk(8, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    vx, vy = next(_readings(torch.Generator().manual_seed(3), 256, 8, 38213))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(vx), vy))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 8, 38213),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell under 60% of the start", _fell(ctx.losses, ratio=0.6))
    ctx.check(
        "the scaler's scale stayed finite and positive", all(0 < s < math.inf for s in ctx.scales)
    )
