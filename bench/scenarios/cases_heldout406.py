"""Held-out set 406 (``h406_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a cuica friction-drum pitch classifier whose temperature anneal lost its clamp
max(T, 0.5) (T falls towards 0.005, softmax saturates), a pole-vault plant-angle 12-layer tanh MLP whose
init gain is typed 3.0 for 1.0 (gradients grow through depth), a curling handle-spin regressor
resumed at step 190 from the lexicographically 'latest' checkpoint (ckpt_75: a one-off loss
spike), a lacrosse pocket-sag classifier whose unfreeze callback writes opt.defaults instead of
the param group (fc1 stays at lr 0), a geyser sinter-crust Gaussian net whose scale module
takes sqrt of a raw linear output (sqrt of a negative), a glass-kiln anneal-sag regressor fed
one kiln's shard in unstandardised Fahrenheit (one corrupted batch), a bobsleigh runner-grip
regressor whose resumed step multiplies the loss by the accumulation count (one gradient burst),
a sourdough levain-rise regressor whose hand-written decoupled decay has its sign flipped (a
slow climb), a fencing parry-line classifier trained with nll_loss on raw logits (the head's
logits grow without bound) and a ball-lightning hiss-duration regressor that backpropagates a
leftover static fp16 loss scale 2**16 for one step (Adam's second moment poisoned).

Controls: a honeybee forage-patch contextual-bandit policy-gradient agent (value baseline,
advantage normalisation, entropy coefficient 0.01, Adam), a bodhran rim-shot Conv1d classifier
(SGD momentum under OneCycleLR, label smoothing, clipping) and a pyrometric-cone slump
regressor (fp16 autocast with a GradScaler, AdamW with a no-decay group, accumulation,
ReduceLROnPlateau, Huber loss).
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


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _flat(model) -> torch.Tensor:
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
    backprop=None,
    after=None,
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step. Stops
    after a non-finite loss (once ``ctx.step`` has seen it)."""
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
        if inspect is not None:
            inspect(step)
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


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _drones(gen, batch, classes, seed, length=48, channels=2):
    """Drone traces: each class a buzzing partial at its own frequency, plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.12 + 0.7 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.04 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * (1 + 0.3 * torch.sign(torch.sin(3 * f * t)))
        yield x + 0.4 * torch.randn(batch, channels, length, generator=gen), y


class _MLP(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- softmax_collapse: a temperature anneal without its clamp -------------------------------------


class _Temper(nn.Module):
    """Divides the logits by the calibration temperature."""

    def __init__(self, temperature):
        super().__init__()
        self.temperature = temperature

    def forward(self, z):
        return z / self.temperature


class _CuicaNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=6, temperature=2.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temper = _Temper(temperature)

    def raw(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def forward(self, x):
        return self.temper(self.raw(x))


@scenario(
    family="cuica_friction_drum_pitch_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("temper", "head"),
    diverges=None,
    heldout=True,
    onset=69,
    note="Cuica friction-drum pitch classifier whose logits are divided by a temperature "
    "annealed as 2.0 * 0.98 ** step; the clamp max(T, 0.5) was dropped in a refactor, so from "
    "step 69 the temperature falls below its floor towards 0.005, the softmax saturates and "
    "most rows' target probability rounds to exactly 1.0 in float32.",
)
def h406_cuica_pitch_temperature_no_clamp(ctx) -> None:
    gen = seeded(4061)
    model = _CuicaNet(temperature=2.0)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 12, 6, 4061, spread=0.5)
    probe = next(_grades(torch.Generator().manual_seed(5), 256, 12, 6, 4061, spread=0.5))
    collapsed, intended = [], []

    def before(step):
        model.temper.temperature = 2.0 * 0.98**step  # meant: max(2.0 * 0.98**step, 0.5)

    def after(step):
        if step >= 270:
            with torch.no_grad():
                raw = model.raw(probe[0])
                collapsed.append(collapsed_fraction(raw / model.temper.temperature, probe[1]))
                intended.append(collapsed_fraction(raw / 0.5, probe[1]))

    _loop(
        ctx, model, opt, batches, 300, F.cross_entropy, classifier=True, before=before, after=after
    )
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 30 steps",
        _mean(collapsed) > 0.5,
    )
    ctx.check("under 5% at the intended floor 0.5 on the same logits", _mean(intended) < 0.05)
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- exploding_gradients: init gain typed 3.0 for 1.0 -------------------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in=10, hidden=32, depth=12, gain=1.0):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)

    def outputs(self, x):
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
            x = torch.tanh(x)
        return outs, self.head(x).squeeze(-1)

    def forward(self, x):
        return self.outputs(x)[1]


def _depth_ratio(model, x, y) -> float:
    """|dL/d(layers.0 output)| over |dL/d(last layer output)| on a probe batch."""
    outs, pred = model.outputs(x)
    grads = torch.autograd.grad(F.mse_loss(pred, y), [outs[0], outs[-1]])
    return float(grads[0].norm() / grads[1].norm().clamp_min(1e-12))


@scenario(
    family="pole_vault_plant_angle_deep_tanh_mlp",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Pole-vault plant-angle 12-layer tanh MLP whose init helper is called with gain 3.0 "
    "(typed for 1.0): std 3 / sqrt(fan_in) puts the stack in the chaotic regime and the "
    "gradient grows layer by layer towards the input. Clipped at 1.0, RMSprop.",
)
def h406_pole_vault_init_gain(ctx) -> None:
    gen = seeded(4062)
    model = _DeepTanh(gain=3.0)
    ref = _DeepTanh(gain=1.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    batches = _readings(gen, 64, 10, 4062)
    probe = next(_readings(torch.Generator().manual_seed(6), 256, 10, 4062))
    ratios = []

    def inspect(step):
        if step % 10 == 0:
            ratios.append(_depth_ratio(model, *probe))

    ref_ratio = _depth_ratio(ref, *probe)
    _loop(ctx, model, opt, batches, 150, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check("dL/d(layers.0) over 20x dL/d(layers.11) at the start", ratios[0] > 20)
    ctx.check("median ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at the intended gain 1.0", ref_ratio < 5)
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- loss_spike: resumed from the lexicographically 'latest' checkpoint --------------------------


@scenario(
    family="curling_stone_handle_spin_silu_regressor",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=190,
    note="Curling stone handle-spin SiLU regressor checkpointed every 25 steps as 'ckpt_{step}'. "
    "Preempted and resumed at step 190, the resume picks max(names), which sorts as text: "
    "'ckpt_75' beats 'ckpt_175', so the weights of step 75 come back (optimizer state kept). "
    "The loss jumps once and the run recovers; no gradient or rate mechanism behind it.",
)
def h406_curling_spin_stale_resume(ctx) -> None:
    gen = seeded(4063)
    model = _MLP(12, 64, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-2)
    batches = _readings(gen, 64, 12, 4063, noise=0.02)
    ckpts = {}
    loaded = {}

    def before(step):
        if step == 190:
            name = max(ckpts)
            loaded["name"] = name
            model.load_state_dict(ckpts[name])
            loaded["same"] = all(
                torch.equal(p, ckpts[name][n]) for n, p in model.state_dict().items()
            )

    def after(step):
        if step % 25 == 0:
            ckpts[f"ckpt_{step}"] = {k: v.clone() for k, v in model.state_dict().items()}

    _loop(ctx, model, opt, batches, 260, F.mse_loss, before=before, after=after)
    ls = ctx.losses
    pre = _median(ls[170:190])
    ctx.check("the resume loaded ckpt_75 (text sort)", loaded.get("name") == "ckpt_75")
    ctx.check("the weights are the stale ones", bool(loaded.get("same")))
    ctx.check(
        "the loss at step 190 is over 3x the median of the 20 steps before", ls[190] > 3 * pre
    )
    ctx.check("the run recovers to under 1.5x by steps 250-259", _mean(ls[-10:]) < 1.5 * pre)
    ctx.check("the loss stays finite", _finite(ls))


# -- update_ratio_out_of_range: the unfreeze callback writes opt.defaults -------------------------


@scenario(
    family="lacrosse_pocket_sag_two_group_relu_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Lacrosse pocket-sag ReLU classifier with fc1 (pretrained) in its own param group at "
    "lr 0 for a 20-step warm-up; the unfreeze callback sets opt.defaults['lr'] = 1e-2 instead "
    "of the group's lr, so fc1 stays at lr 0 for the whole run while it receives gradients.",
)
def h406_lacrosse_pocket_unfreeze_defaults(ctx) -> None:
    gen = seeded(4064)
    model = _MLP(16, 64, out=5)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 0.0},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=1e-2,
    )
    batches = _grades(gen, 64, 16, 5, 4064, spread=1.4)
    snap = {}
    fc1_grads = []

    def before(step):
        if step == 20:
            opt.defaults["lr"] = 1e-2  # meant: opt.param_groups[0]["lr"] = 1e-2
            snap["fc1"] = model.fc1.weight.detach().clone()
            snap["head"] = model.head.weight.detach().clone()

    def inspect(step):
        if step >= 20:
            fc1_grads.append(float(model.fc1.weight.grad.norm()))

    _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        inspect=inspect,
    )
    ctx.check(
        "fc1 moves under 1e-6 of its norm after the unfreeze",
        _rel_change(snap["fc1"], model.fc1.weight) < 1e-6,
    )
    ctx.check("fc1 receives gradients", _median(fc1_grads) > 1e-3)
    ctx.check("the head moves over 5%", _rel_change(snap["head"], model.head.weight) > 0.05)
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- nonfinite: sqrt of a raw linear output ------------------------------------------------------


_GEYSER_STEP = 113  # the measured first non-finite step


class _Scale(nn.Module):
    """sigma = sqrt(z): the softplus in front of it was removed as 'redundant'."""

    def forward(self, z):
        return torch.sqrt(z)


class _SinterNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)
        self.scale = _Scale()
        nn.init.constant_(self.var.bias, 3.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.scale(self.var(h))], -1)


def _gauss_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


@scenario(
    family="geyser_sinter_crust_growth_sqrt_scale_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("scale",),
    diverges=113,
    heldout=True,
    note="Geyser sinter-crust growth Gaussian net: sigma = sqrt(var(h)) after the softplus in "
    "front of the sqrt was removed as redundant. As the net fits the low-noise readings the "
    "raw variance of a row crosses zero, sqrt of a negative is NaN and so is the NLL.",
)
def h406_geyser_sinter_sqrt_negative(ctx) -> None:
    gen = seeded(4065)
    model = _SinterNet()
    opt = torch.optim.NAdam(model.parameters(), lr=4e-4)
    batches = _readings(gen, 64, 8, 4065, noise=0.03)
    negative = {}

    def alter(step, x, y):
        with torch.no_grad():
            h = model.act2(model.fc2(model.act1(model.fc1(x))))
            if bool((model.var(h) < 0).any()) and "step" not in negative:
                negative["step"] = step
        return x, y

    ran = _loop(ctx, model, opt, batches, 250, _gauss_nll, alter=alter)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite within the run", bad is not None and ran == bad + 1)
    ctx.check(
        "a raw variance is negative in the batch of the first non-finite loss",
        negative.get("step") == bad,
    )
    ctx.check("the losses before it are finite", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check(f"the loss is first non-finite at step {_GEYSER_STEP}", bad == _GEYSER_STEP)


# -- data_outlier: one kiln's shard in unstandardised Fahrenheit ---------------------------------


@scenario(
    family="glass_kiln_anneal_sag_silu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Glass-kiln anneal-sag SiLU regressor on SGD momentum, clipped at 5.0. The shard read "
    "at step 120 comes from one kiln whose logger writes the three temperature columns in "
    "Fahrenheit and skipped the standardisation (values near 1000): the loss and gradient jump "
    "for that batch, clipping bounds the step and the run recovers.",
)
def h406_glass_kiln_fahrenheit_shard(ctx) -> None:
    gen = seeded(4066)
    model = _MLP(10, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    batches = _readings(gen, 64, 10, 4066)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :3] = x[:, :3] * 90 + 1050  # degrees F, not standardised
        return x, y

    _loop(ctx, model, opt, batches, 220, F.mse_loss, alter=alter, clip=5.0)
    ls, gs = ctx.losses, ctx.grad_norms
    pre_l, pre_g = _median(ls[100:120]), _median(gs[100:120])
    ctx.check("the loss at step 120 is over 100x the median before", ls[120] > 100 * pre_l)
    ctx.check("the gradient at step 120 is over 20x the median before", gs[120] > 20 * pre_g)
    ctx.check("the run recovers", _mean(ls[-20:]) < 2 * _mean(ls[100:120]))
    ctx.check("the loss stays finite", _finite(ls))


# -- gradient_spike: the resumed step multiplies by the accumulation count ------------------------


@scenario(
    family="bobsleigh_runner_ice_grip_accum_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="Bobsleigh runner ice-grip SiLU regressor with accumulation over 8 micro-batches on SGD "
    "Nesterov, clipped at 5.0. On the step resumed at 150 the recovery path scales each "
    "micro-batch loss by `*= accumulate` instead of `/= accumulate`: the gradient is 64x on "
    "ordinary data with an ordinary logged loss; clipping bounds the step and the run recovers.",
)
def h406_bobsleigh_grip_accum_multiply(ctx) -> None:
    gen = seeded(4067)
    model = _MLP(10, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    batches = _readings(gen, 16, 10, 4067)
    accumulate = 8

    def backprop(step, loss):
        # _loop divides by accumulate; on the resumed step the bug multiplies instead
        return loss * accumulate * accumulate if step == 150 else loss

    _loop(
        ctx,
        model,
        opt,
        batches,
        240,
        F.mse_loss,
        backprop=backprop,
        clip=5.0,
        accumulate=accumulate,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    pre_l, pre_g = _median(ls[130:150]), _median(gs[130:150])
    ctx.check("the gradient at step 150 is over 30x the median before", gs[150] > 30 * pre_g)
    ctx.check("the logged loss at step 150 is ordinary (under 2x)", ls[150] < 2 * pre_l)
    ctx.check("the run recovers", _mean(ls[-20:]) < 2 * _mean(ls[130:150]))
    ctx.check("the loss stays finite", _finite(ls))


# -- loss_divergence: decoupled decay with its sign flipped --------------------------------------


@scenario(
    family="sourdough_levain_rise_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Sourdough levain-rise tanh regressor on Adamax with a hand-written decoupled weight "
    "decay applied after each step as p.add_(lr * wd * p) (the minus sign lost): the weights "
    "grow geometrically, the tanh units saturate and the loss climbs slowly with no jump.",
)
def h406_sourdough_levain_decay_sign(ctx) -> None:
    gen = seeded(4068)
    model = _MLP(10, 48, act=nn.Tanh)
    lr, wd = 2e-3, 2.5
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 10, 4068)
    w0 = _flat(model).norm()

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # meant: alpha=-lr * wd

    _loop(ctx, model, opt, batches, 300, F.mse_loss, after=after)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    jumps = max(means[i] / means[i - 20] for i in range(20, len(means)))
    ctx.check("the weights grow over 2x", float(_flat(model).norm() / w0) > 2)
    ctx.check(
        "the loss climbs to over 3x its lowest 20-step mean", _mean(ls[-20:]) > 3 * min(means)
    )
    ctx.check("no 20-step mean over 2x the one before it", jumps < 2)
    ctx.check("the loss stays finite", _finite(ls))


# -- output_logit_divergence: nll_loss on raw logits ---------------------------------------------


@scenario(
    family="fencing_parry_line_relu_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Fencing parry-line ReLU classifier trained with F.nll_loss on the head's raw logits "
    "(the log_softmax lives in the inference wrapper only): the 'loss' is minus the target "
    "logit, so the head's logits grow without bound on plain SGD.",
)
def h406_fencing_parry_nll_raw(ctx) -> None:
    gen = seeded(4069)
    model = _MLP(14, 48, out=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = _grades(gen, 64, 14, 8, 4069)
    probe = next(_grades(torch.Generator().manual_seed(8), 256, 14, 8, 4069))
    tops = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                tops.append(float(model(probe[0]).abs().max()))

    _loop(ctx, model, opt, batches, 180, F.nll_loss, classifier=True, after=after)
    ctx.check("the largest logit grows over 20x its start", tops[-1] > 20 * tops[0])
    ctx.check("and is still growing", tops[-1] > 1.2 * tops[-5])
    ctx.check("the 'loss' is below -10", ctx.losses[-1] < -10)


# -- adam_second_moment_poisoned: a leftover static loss scale for one step ------------------------


@scenario(
    family="ball_lightning_hiss_duration_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Ball-lightning hiss-duration GELU regressor on Adam. Resumed at step 100 from an fp16 "
    "config, the first step backpropagates loss * 2**16 (a static loss scale whose unscale was "
    "not ported to the fp32 path): one gradient 65536x fills Adam's second moment and the "
    "updates stall for the rest of the run while gradients are not smaller.",
)
def h406_ball_lightning_static_scale(ctx) -> None:
    gen = seeded(40610)
    model = _MLP(10, 48, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 10, 40610)
    updates = []
    prev = {}

    def backprop(step, loss):
        return loss * 2.0**16 if step == 100 else loss

    def before(step):
        prev["w"] = _flat(model)

    def after(step):
        updates.append(float((_flat(model) - prev["w"]).abs().median()))

    _loop(ctx, model, opt, batches, 200, F.mse_loss, backprop=backprop, before=before, after=after)
    gs = ctx.grad_norms
    ctx.check(
        "the gradient at step 100 is over 1000x the median before",
        gs[100] > 1000 * _median(gs[80:100]),
    )
    ctx.check(
        "median update over steps 120-200 under a tenth of steps 60-100",
        _median(updates[120:]) < 0.1 * _median(updates[60:100]),
    )
    ctx.check("gradients afterwards are not smaller", _median(gs[120:]) > 0.5 * _median(gs[60:100]))
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- healthy: a policy-gradient agent with a value baseline on a contextual bandit -------------


class _ForageAgent(nn.Module):
    def __init__(self, d_in=6, hidden=32, arms=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.policy = nn.Linear(hidden, arms)
        self.vfc = nn.Linear(d_in, hidden)
        self.vact = nn.Tanh()
        self.value = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.policy(self.act1(self.fc1(x))), self.value(self.vact(self.vfc(x))).squeeze(-1)


@scenario(
    family="honeybee_forage_patch_bandit_policy_gradient",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Honeybee forage-patch contextual bandit (generated: five patches whose nectar reward "
    "depends linearly on weather readings, plus noise): REINFORCE with a value-network "
    "baseline, advantages normalised per batch, entropy coefficient 0.01, value loss 0.5 MSE, "
    "Adam. Control.",
)
def h406_honeybee_forage_bandit(ctx) -> None:
    gen = seeded(40611)
    model = _ForageAgent()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(40611)
    payoff = torch.randn(6, 5, generator=g)
    ctx.attach(model, opt)
    rewards, entropies = [], []
    for _ in range(250):
        x = torch.randn(64, 6, generator=gen)
        logits, v = model(x)
        dist = torch.distributions.Categorical(logits=logits)
        a = dist.sample()
        r = (x @ payoff).gather(1, a[:, None]).squeeze(1) + 0.3 * torch.randn(64, generator=gen)
        adv = (r - v).detach()
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        entropy = dist.entropy().mean()
        loss = -(dist.log_prob(a) * adv).mean() - 0.01 * entropy + 0.5 * F.mse_loss(v, r)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        rewards.append(float(r.mean()))
        entropies.append(float(entropy.detach()))
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("the mean reward rose by over 0.5", _mean(rewards[-30:]) > _mean(rewards[:30]) + 0.5)
    ctx.check("the policy keeps some entropy", entropies[-1] > 0.05)
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- healthy: Conv1d classifier under OneCycleLR -------------------------------------------------


class _RimShotNet(nn.Module):
    def __init__(self, channels=2, classes=5, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    family="bodhran_rim_shot_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bodhran rim-shot ReLU Conv1d classifier: SGD momentum with weight decay under "
    "OneCycleLR, label smoothing 0.1, clipping at 1.0. Control.",
)
def h406_bodhran_rim_shot_onecycle(ctx) -> None:
    gen = seeded(40612)
    model = _RimShotNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
    batches = _drones(gen, 32, 5, 40612)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, batches, 200, loss_fn, classifier=True, clip=1.0, sched=sched)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- healthy: fp16 autocast with a GradScaler ----------------------------------------------------


@scenario(
    family="pyrometric_cone_slump_fp16_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Pyrometric-cone slump SiLU regressor: fp16 autocast with a torch.amp.GradScaler, "
    "AdamW with biases in a no-decay group, accumulation over 2, ReduceLROnPlateau on a "
    "held-out batch, clipping at 1.0, Huber loss. Control.",
)
def h406_pyrometric_cone_fp16(ctx) -> None:
    gen = seeded(40613)
    model = _MLP(12, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    batches = _readings(gen, 32, 12, 40613)
    held = next(_readings(torch.Generator().manual_seed(11), 256, 12, 40613))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("the loss stays finite", _finite(ctx.losses))
