"""Held-out set 199 (``h199_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a bagpipe bag-pressure GELU regressor whose phase callback
re-initialises the head mid-run, a trebuchet release-speed regressor taking an unclamped square
root, a bell-founding partial-tone classifier with its temperature typed 1e-3, a hide-tanning
20-layer tanh MLP initialised with gain 3, a bobsled runner-temperature regressor whose StepLR
gamma was typed 10, a tanpura residual LayerNorm MLP whose backbone multiplier was typed 1e-5, a
caving-rope stretch regressor fed one shard in millimetres, a clog-dance tap-timing regressor
whose restored loss scale is applied once without its unscale, a sundog tanh regressor with a
sign-flipped hand-written L2, a cooperage stave-defect ReLU classifier fed raw readings after
its normaliser's stats were reset to defaults, and three controls (a tabla stroke classifier on
noisy labels with label smoothing, a waterspout fp16 Huber MLP, a banjo roll tied autoencoder).

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
    accumulate=1,
    scale_loss=None,
    grad_hook=None,
):
    """The file's training loop. ``before(step)`` runs first, ``watch(step, out, x, y)`` after
    the forward pass, ``after(step)`` after the optimizer step; ``scale_loss(step, loss)``
    returns what is backpropagated, ``grad_hook(step)`` edits the gradients before the step;
    stops after logging a NaN loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
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
        if scaler is not None:
            scaler.unscale_(opt)
        if grad_hook is not None:
            grad_hook(step)
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


def _kinds(gen, batch, d_in, classes, seed, noise=0.35, flip=0.0):
    """Readings around one prototype per class, overlapping; ``flip`` of the labels redrawn."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        if flip:
            redraw = torch.rand(batch, generator=gen) < flip
            y = torch.where(redraw, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


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


# -- bagpipe: a phase callback re-initialises the head in the middle of the run -----------------


@scenario(
    family="bagpipe_bag_pressure_gelu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) regressing a Highland bagpipe's bag pressure "
    "(standardised) from 12 readings (blowpipe flow, drone reed set, arm squeeze, ...), Adam "
    "at 3e-3, MSE. The trainer was copied from a transfer-learning recipe whose phase callback "
    "calls `head.reset_parameters()` when the 'fine-tune' phase starts; the config's phase "
    "boundary (step 120) was kept although this run has no pre-training: at step 120 the "
    "trained head is re-initialised, the loss jumps over fivefold in one step and the run "
    "recovers to its earlier level within a few dozen steps.",
)
def h199_bagpipe_head_reinit_on_phase(ctx: Context) -> None:
    gen = seeded(19901)
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    moved = {}

    def before(step):
        if step == 120:  # the phase callback: "fine-tune" starts with a fresh head
            old = model.head.weight.detach().clone()
            model.head.reset_parameters()
            moved["head"] = float((model.head.weight.detach() - old).abs().max())

    g = torch.Generator().manual_seed(1)
    w, v = torch.randn(12, generator=g), torch.randn(12, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 12, generator=gen)
            z = x @ w / math.sqrt(12)
            y = z + 0.4 * torch.tanh(x @ v / math.sqrt(12)) * z
            yield x, y + 0.03 * torch.randn(64, generator=gen)

    _train(ctx, model, opt, batches(), 220, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("head re-initialised at step 120", moved.get("head", 0.0) > 1e-3)
    ctx.check("loss fell before step 120", _fell(ls[:120], ratio=0.5))
    ctx.check("loss at step 120 over 5x its steps 100-119", ls[120] > 5 * _mean(ls[100:120]))
    ctx.check(
        "recovered: last 20 steps below 1.5x steps 100-119",
        _mean(ls[-20:]) < 1.5 * _mean(ls[100:120]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- trebuchet: a square root of the counterweight's energy with no clamp ------------------------


class Ballistics(nn.Module):
    """Release speed from the counterweight's drop: v = sqrt(2 g (m_c / m_p) h - k), with the
    raw drop h (m) in column 0 and the mass ratio in column 1; no clamp."""

    def forward(self, x):
        h, ratio = x[:, 0], x[:, 1]
        return torch.sqrt(2 * 9.81 * ratio * h - 4.0)[:, None]


class Trebuchet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.ballistics = Ballistics()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        self.last_speed = None

    def forward(self, x):
        v = self.ballistics(x)
        self.last_speed = v.detach()
        z = torch.cat([x[:, 2:], x[:, :2] / 5, v / 10], -1)
        return self.head(F.silu(self.fc2(F.silu(self.fc1(z))))).squeeze(-1)


def _throws(gen, batch, bad_step=None):
    """A trebuchet throw: drop height 2-6 m, mass ratio 20-60, six standardised readings
    (arm length, sling length, release pin angle, wind, ...); the range, standardised. At
    ``bad_step`` one throw's drop was logged from an encoder whose zero was not reset (-0.4 m)."""
    step = 0
    while True:
        h = 2 + 4 * torch.rand(batch, generator=gen)
        ratio = 20 + 40 * torch.rand(batch, generator=gen)
        rest = torch.randn(batch, 6, generator=gen)
        v = torch.sqrt(2 * 9.81 * ratio * h - 4.0)
        y = (v - 30) / 10 * (1 + 0.2 * torch.tanh(rest[:, 0])) + 0.3 * rest[:, 1]
        if step == bad_step:
            h = h.clone()
            h[5] = -0.4
        step += 1
        yield torch.cat([h[:, None], ratio[:, None], rest], -1), y


@scenario(
    family="trebuchet_release_speed_sqrt_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("ballistics",),
    diverges=70,
    onset=70,
    heldout=True,
    note="A SiLU MLP predicting a trebuchet throw's range from a physics feature and six "
    "readings, Adamax at 2e-3, MSE. A `ballistics` module computes the release speed "
    "sqrt(2 g ratio h - k) from the raw counterweight drop h with no clamp. At step 70 one "
    "throw's drop comes from an encoder whose zero was not reset (-0.4 m): the argument of "
    "the square root is negative, the module returns NaN, and the loss is NaN at step 70.",
)
def h199_trebuchet_sqrt_negative_drop(ctx: Context) -> None:
    gen = seeded(19902)
    model = Trebuchet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    nan_speed = {}

    def watch(step, out, x, y):
        nan_speed[step] = bool(torch.isnan(model.last_speed).any())

    _train(ctx, model, opt, _throws(gen, 64, bad_step=70), 120, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("loss finite before step 70", _finite(ls[:70]))
    ctx.check("loss NaN at step 70", len(ls) > 70 and math.isnan(ls[70]))
    ctx.check("the ballistics module produced the NaN at step 70", nan_speed.get(70, False))
    ctx.check("no NaN speed before step 70", not any(nan_speed.get(s, True) for s in range(70)))
    ctx.check("loss fell before step 70", _fell(ls[:70], ratio=0.7))


# -- bell founding: a softmax temperature typed 1e-3 ---------------------------------------------


class PartialNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=6, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return self.head(h) / self.temperature


@scenario(
    family="bell_founding_partial_tone_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) naming which of 6 tuning faults a cast church bell has "
    "(flat tierce, sharp hum, ...) from 16 strike-tone partial readings, RAdam at 1e-3, "
    "cross-entropy. The head's logits are divided by a calibration temperature whose config "
    "value was typed 1e-3 for 1e-1: the logits reach the thousands, the float32 softmax "
    "rounds the target probability to exactly 1.0 on most rows within the first steps while "
    "the misclassified rows give a loss above 100 at the start.",
)
def h199_bell_founding_temperature_typo(ctx: Context) -> None:
    gen = seeded(19903)
    model = PartialNet(temperature=1e-3)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    coll = []

    def watch(step, out, x, y):
        coll.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=3),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "target probability exactly 1.0 on over half the rows at the end", _mean(coll[-10:]) > 0.5
    )
    ctx.check("collapse from the start (over 30% of rows by step 10)", _mean(coll[:10]) > 0.3)
    ctx.check("loss finite", _finite(ctx.losses))


# -- hide tanning: a 20-layer tanh MLP initialised with gain 3 -----------------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in=10, width=64, depth=20, classes=4, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, classes)
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return self.head(h)


@scenario(
    family="hide_tanning_grade_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 20-layer tanh MLP (inp, layers.0-19, head) grading a tanned hide (4 grades) from "
    "10 readings (vat pH, days in bark liquor, thickness, ...), plain SGD at 1e-3, "
    "cross-entropy. The init helper draws N(0, gain^2 / fan_in) and the config's gain was "
    "typed 3.0 (meant 5/3 for tanh written as 'tanh'): the stack is in the chaotic phase and "
    "the gradient grows backwards through depth, layers.0's gradient over 30x layers.19's "
    "from the first step.",
)
def h199_hide_tanning_init_gain_three(ctx: Context) -> None:
    gen = seeded(19904)
    model = DeepTanh(gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios = []

    def after_grad(step):
        g0 = float(model.layers[0].weight.grad.norm())
        g19 = float(model.layers[19].weight.grad.norm())
        ratios.append(g0 / max(g19, 1e-30))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 10, 4, seed=4),
        100,
        F.cross_entropy,
        classifier=True,
        grad_hook=after_grad,
    )
    ctx.check("layers.0's gradient over 30x layers.19's at step 0", ratios[0] > 30)
    ctx.check("ratio over 30x on average over the run", _mean(ratios) > 30)


# -- bobsled: a StepLR gamma typed 10 for 0.1 -----------------------------------------------------


@scenario(
    family="bobsled_runner_temperature_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=100,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing a bobsled's run-time gain (standardised) from "
    "10 readings (runner steel temperature, ice temperature, push speed, ...), plain SGD at "
    "0.05, MSE, with StepLR(step_size=100, gamma=10): the decay factor was typed 10 for 0.1, "
    "so at step 100 the rate becomes 0.5 instead of 0.005. lr x sharpness goes from below 1 "
    "to past 2, the stability limit, and the loss blows up soon after step 100.",
)
def h199_bobsled_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(19905)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(55), 256, 10, seed=5))
    sharp, lrs = {}, {}

    def before(step):
        if step in (99, 100):
            sharp[step] = _sharpness(model, F.mse_loss, *probe)
            lrs[step] = opt.param_groups[0]["lr"]

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=5),
        180,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("lr x sharpness below 1 before step 100", lrs[99] * sharp[99] < 1)
    ctx.check("lr x sharpness past 2 at step 100", lrs[100] * sharp[100] > 2)
    ctx.check("loss fell before step 100", _fell(ls[:100], ratio=0.5))
    late = [v if math.isfinite(v) else 1e30 for v in ls[100:]]
    ctx.check("loss past 20x its pre-step-100 level", max(late) > 20 * _mean(ls[80:100]))


# -- tanpura: a residual LayerNorm MLP whose backbone multiplier was typed 1e-5 -----------------


class ResBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, h):
        return h + self.fc2(F.gelu(self.fc1(self.ln(h))))


class ResMLP(nn.Module):
    def __init__(self, d_in=14, dim=48, blocks=4, classes=5):
        super().__init__()
        self.stem = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(ResBlock(dim) for _ in range(blocks))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln_f(h))


@scenario(
    family="tanpura_tuning_residual_layernorm_mlp",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("stem", "blocks.0", "blocks.1"),
    diverges=None,
    heldout=True,
    note="A residual MLP (stem, four pre-LayerNorm GELU blocks, ln_f, head) naming a "
    "tanpura's tuning (5 classes: Pa, Ma, Ni, ...) from 14 spectral readings of the jawari "
    "buzz, AdamW at 2e-3 with two param groups: the 'backbone' (stem, blocks.0, blocks.1) at "
    "base x backbone_lr_mult and the rest at base. The multiplier was typed 1e-5 for 1e-1: "
    "the backbone trains at 2e-8, its update/weight ratio about 1e-5 of the upper layers'; "
    "the loss still falls through blocks.2-3 and the head.",
)
def h199_tanpura_backbone_mult_typo(ctx: Context) -> None:
    gen = seeded(19906)
    model = ResMLP()
    base, mult = 2e-3, 1e-5
    backbone = [model.stem, model.blocks[0], model.blocks[1]]
    bb_ids = {id(p) for m in backbone for p in m.parameters()}
    opt = torch.optim.AdamW(
        [
            {"params": [p for m in backbone for p in m.parameters()], "lr": base * mult},
            {"params": [p for p in model.parameters() if id(p) not in bb_ids], "lr": base},
        ],
        weight_decay=0.01,
    )
    start_stem = model.stem.weight.detach().clone()
    start_head = model.head.weight.detach().clone()
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 5, seed=6),
        150,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
    )
    d_stem = float((model.stem.weight.detach() - start_stem).norm() / start_stem.norm())
    d_head = float((model.head.weight.detach() - start_head).norm() / start_head.norm())
    ctx.check("stem moved under 1e-4 of its norm", d_stem < 1e-4)
    ctx.check("head moved over 1000x more (relative) than the stem", d_head > 1000 * d_stem)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))


# -- caving rope: one shard exported in millimetres ----------------------------------------------


@scenario(
    family="caving_rope_stretch_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) regressing a caving rope's stretch under a fall "
    "(standardised) from 10 standardised readings (diameter, sheath share, age, load, ...), "
    "SGD with momentum 0.9 at 0.01, MSE, clip_grad_norm_ at 1.0. One shard of the logs was "
    "exported in millimetres instead of metres before standardisation: the batch of step 100 "
    "has three columns 1000x the others, its loss is thousands of times the usual and its "
    "gradient hundreds of times; the clip bounds the step and the run recovers.",
)
def h199_caving_rope_shard_in_mm(ctx: Context) -> None:
    gen = seeded(19907)
    model = Stack(10, hidden=64, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    peak = []

    def batches():
        step = 0
        for x, y in _readings(gen, 64, 10, seed=7):
            if step == 100:
                x = x.clone()
                x[:, :3] *= 1000.0
            peak.append(float(x.abs().max()))
            step += 1
            yield x, y

    _train(ctx, model, opt, batches(), 200, F.mse_loss, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("batch 100's inputs over 100x the usual peak", peak[100] > 100 * _median(peak[:100]))
    ctx.check("gradient at step 100 over 50x the median", gn[100] > 50 * _median(gn[50:100]))
    ctx.check("loss at step 100 over 20x the median", ls[100] > 20 * _median(ls[50:100]))
    ctx.check(
        "recovered: last 20 steps below 3x steps 80-99", _mean(ls[-20:]) < 3 * _mean(ls[80:100])
    )
    ctx.check("loss finite", _finite(ls))


# -- clog dance: a restored loss scale applied once without its unscale --------------------------


@scenario(
    family="clog_dance_tap_timing_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing a clog dancer's tap timing offset "
    "(standardised) from 12 readings of a shoe-mounted sensor, SGD with Nesterov momentum "
    "0.9 at 5e-3, MSE. At step 100 the job resumes in-process from an fp16 checkpoint into an "
    "fp32 config: the restored static loss scale (256) multiplies the first backward, but the "
    "unscale is gated on `amp_enabled`, which the fp32 config sets False, so one ordinary batch "
    "gives a gradient 256x the usual; later steps read the flag and do not scale. The loss "
    "jumps and the run recovers.",
)
def h199_clog_dance_restored_loss_scale(ctx: Context) -> None:
    gen = seeded(19908)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    state = {"scale": 1.0}

    def before(step):
        if step == 100:  # resume: the checkpoint's loss scale is restored
            state["scale"] = 256.0

    def scale_loss(step, loss):
        out = loss * state["scale"]
        state["scale"] = 1.0  # the loop re-reads `amp_enabled` (False) from here on
        return out

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=8),
        200,
        F.mse_loss,
        before=before,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 100 over 100x the median", gn[100] > 100 * _median(gn[60:100]))
    ctx.check(
        "no gradient over 10x the median elsewhere before",
        max(gn[20:100]) < 10 * _median(gn[60:100]),
    )
    ctx.check("loss fell before step 100", _fell(ls[:100], ratio=0.7))
    ctx.check("loss finite", _finite(ls))


# -- sundog: a hand-written L2 penalty with its sign flipped --------------------------------------


@scenario(
    family="sundog_parhelion_brightness_tanh_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing a sundog's brightness (standardised) from 10 "
    "readings (sun elevation, ice-crystal plate fraction, humidity, ...), ASGD at 0.03, MSE. "
    "L2 is added by hand to the gradients with `p.grad.add_(p, alpha=coeff)`, the coefficient "
    "taken from a helper written for a maximised log-likelihood that returns -0.2 for the config's 0.2: every step "
    "scales the weights up; the loss falls, then climbs slowly for the rest of the run as "
    "the weights grow.",
)
def h199_sundog_l2_sign_flipped(ctx: Context) -> None:
    gen = seeded(19909)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.03)
    coeff = -0.2
    norms = []

    def grad_hook(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim > 1:
                    p.grad.add_(p, alpha=coeff)
        norms.append(float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5))

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=9), 300, F.mse_loss, grad_hook=grad_hook)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, 100, 10))
    ctx.check("weights' norm grew over 2x", norms[-1] > 2 * norms[0])
    ctx.check("loss at the end over 3x its early minimum", _mean(ls[-10:]) > 3 * low)
    ctx.check("still climbing (last 20 above steps 200-220)", _mean(ls[-20:]) > _mean(ls[200:220]))


# -- cooperage: an normaliser stats left at their defaults----------------------------------------------


@scenario(
    family="cooperage_stave_defect_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) naming a barrel stave's defect (5 classes: "
    "check, shake, knot, ...) from 12 readings (moisture, density, ring count, ...), Adam at "
    "3e-2 from a recipe tuned on standardised inputs, cross-entropy. The normaliser's stats "
    "file was regenerated with its defaults (mean 0, std 1) after the stats job failed "
    "silently, so the readings arrive raw, all positive around 6-12: the large early updates "
    "push fc1's units negative on every input and over 85% of its ReLUs end dead (about 40% "
    "at step 0), never to recover.",
)
def h199_cooperage_raw_units_adam(ctx: Context) -> None:
    gen = seeded(19910)
    model = Stack(12, hidden=64, out=5, act=nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    mean, std = torch.zeros(12), torch.ones(12)  # the regenerated stats file's defaults
    dead, low = [], []

    def batches():
        for x, y in _kinds(gen, 128, 12, 5, seed=10, noise=0.6):
            raw = 2 * x.abs() + 6.0  # the readings in their own units
            x = (raw - mean) / std
            low.append(float(x.min()))
            yield x, y

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.act1(model.fc1(x))))

    _train(
        ctx,
        model,
        opt,
        batches(),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("fc1 under 50% dead at step 0", dead[0] < 0.5)
    ctx.check("fc1 over 85% dead at the end", _mean(dead[-10:]) > 0.85)
    ctx.check("inputs all positive, above 5 (not standardised)", min(low) > 5.0)
    ctx.check("loss finite", _finite(ctx.losses))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="tabla_bol_noisy_label_gelu_classifier",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="A GELU MLP naming a tabla bol (8 strokes: na, tin, ge, ke, ...) from 16 readings, "
    "with 20% of the labels redrawn at random (annotators disagree), cross-entropy with "
    "label smoothing 0.1, NAdam with OneCycleLR (max_lr 3e-3), clip_grad_norm_ at 1.0. "
    "An ordinary run.",
)
def h199_tabla_noisy_labels_smoothing(ctx: Context) -> None:
    gen = seeded(19911)
    model = Stack(16, hidden=64, out=8, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 8, seed=11, flip=0.2),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    clean = _kinds(torch.Generator().manual_seed(5), 512, 16, 8, seed=11)
    x, y = next(clean)
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.8))
    ctx.check("clean accuracy over 0.7", acc > 0.7)


@scenario(
    family="waterspout_funnel_width_fp16_huber_mlp",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP regressing a waterspout's funnel width (standardised) from 12 radar and "
    "sounding readings with Student-t noise on the labels, Huber loss, fp16 autocast with a "
    "torch.amp.GradScaler, accumulation over 2 micro-batches, clip_grad_norm_ at 1.0, "
    "RMSprop at 1e-3 with ReduceLROnPlateau. An ordinary run.",
)
def h199_waterspout_fp16_huber_plateau(ctx: Context) -> None:
    gen = seeded(19912)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu")
    student = torch.distributions.StudentT(3.0)

    def batches():
        for x, y in _readings(gen, 32, 12, seed=12):
            yield x, y + 0.1 * student.sample((32,))

    _train(
        ctx,
        model,
        opt,
        batches(),
        150,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite", _finite(ctx.losses))


class TiedAutoencoder(nn.Module):
    """Encoder Linear; the decoder reuses the encoder's weight transposed (tied)."""

    def __init__(self, d_in=24, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        z = torch.tanh(self.enc(x))
        return F.linear(z, self.enc.weight.t(), self.dec_bias)


@scenario(
    family="banjo_roll_pattern_tied_autoencoder",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A denoising tied-weight autoencoder (the decoder is the encoder's weight "
    "transposed) compressing 24 readings of a banjo's three-finger roll (onset times, "
    "velocities) to an 8-d code, MSE, AdamW at 5e-3 with a 20-step linear warm-up then "
    "cosine (LambdaLR), clip_grad_norm_ at 1.0. An ordinary run.",
)
def h199_banjo_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(19913)
    model = TiedAutoencoder()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    g = torch.Generator().manual_seed(13)
    basis = torch.randn(6, 24, generator=g)

    def batches():
        while True:
            clean = torch.randn(64, 6, generator=gen) @ basis / 2
            yield clean + 0.1 * torch.randn(64, 24, generator=gen), clean

    _train(ctx, model, opt, batches(), steps, F.mse_loss, clip=1.0, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite", _finite(ctx.losses))
