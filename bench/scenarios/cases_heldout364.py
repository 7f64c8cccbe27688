"""Held-out set 364 (``h364_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a trapshooting clay-break ReLU classifier trained with
nll_loss on raw logits (log_softmax dropped, the head's logits grow without bound), a petanque
boule-lie classifier whose temperature 1 is read as a percentage (softmax saturates), a farrier
nail-clinch regressor resumed from a stale checkpoint (one loss spike, recovers), a bobsleigh
push-start regressor whose loss is summed over 64 ranks for one step (one gradient burst), an
ice-core dust-layer two-group regressor whose fc1 group lr is typed 4e-9 for 4e-3 (fc1 frozen), a
snow-avalanche runout Gaussian NLL net whose variance head lost its softplus (log of a negative,
NaN), an archery bow-draw 16-layer tanh MLP initialised with the uniform bound as the normal std
(gradients grow through depth), a fencing parry-riposte BCE net fed one shard in milliseconds
(one corrupted batch), a skeleton-sled rocker regressor whose warm-up peak lr is typed 3.0 for 0.3
(past 2/sharpness), a geode crystal-growth regressor whose hand-written weight decay has its sign
flipped (a slow climb), and three controls (a kite-flying line-tension actor-critic with a
PPO-style clipped policy objective and value loss coefficient 0.5, a bocce throw Conv1d
classifier under SGD Nesterov with OneCycleLR and label smoothing, an abseil rope-heat Huber
regressor under fp16 autocast with a GradScaler, RAdam and ReduceLROnPlateau).

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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


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
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the
    gradients before clipping. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
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


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


# -- trapshooting: nll_loss on raw logits -----------------------------------------------------------


@scenario(
    family="trapshooting_clay_break_nll_relu_classifier",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) naming which of five ways a trap clay broke (chip, half, dust, miss, lost) from sixteen readings of the shot and the target's flight, RMSprop at 1e-3, 220 steps. The model returns raw logits and the loss was written F.nll_loss(logits, y), the log_softmax dropped when the model's output layer was changed: the loss is minus the target logit, unbounded below, and the head's logits grow without bound (the peak logit over 20x its start and still rising at the end) while the loss falls past zero and stays finite.",
)
def h364_trapshooting_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(36401)
    model = Trunk(16, out=5)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    peak = []

    def watch(step, out, x, y):
        peak.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 128, 16, 5, 3641),
        220,
        lambda out, y: F.nll_loss(out, y),  # meant: F.cross_entropy (or log_softmax first)
        classifier=True,
        watch=watch,
    )
    ctx.check("peak |logit| at the end is over 20x its start", _mean(peak[-10:]) > 20 * peak[0])
    ctx.check(
        "the logits are still rising over the last 60 steps",
        _mean(peak[-10:]) > 1.2 * _mean(peak[-60:-50]),
    )
    ctx.check("the loss went below zero (unbounded below)", ctx.losses[-1] < 0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- petanque: temperature 1 read as a percentage -----------------------------------------------------


class TemperatureTrunk(Trunk):
    """Trunk whose logits pass through ``temperature`` (divides by a fixed temperature)."""

    def __init__(self, d_in, out, temperature):
        super().__init__(d_in, out=out)
        self.temperature = Temperature(temperature)

    def forward(self, x):
        return self.temperature(self.head(self.features(x)))


class Temperature(nn.Module):
    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, z):
        return z / self.t


@scenario(
    family="petanque_boule_lie_temperature_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("temperature", "head"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head, temperature) naming where a petanque boule came to rest relative to the jack (six zones) from twelve readings of the throw, AdamW at 2e-3, cross-entropy on logits divided by a temperature, 200 steps. The config gives the temperature as 1 in a field documented in percent, and the loader divides by 100: the logits are divided by 0.01, the softmax saturates, and over half the rows' target probability rounds to exactly 1.0 in float32 late in the run.",
)
def h364_petanque_temperature_percent(ctx: Context) -> None:
    gen = seeded(36402)
    model = TemperatureTrunk(12, 6, 1 / 100)  # meant: 1.0 (the field is not in percent)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 128, 12, 6, 3642, spread=0.5),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 10% of rows collapsed at step 0", collapsed[0] < 0.1)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- farrier: a resume restores a stale checkpoint -----------------------------------------------------

FARRIER_ONSET = 130


@scenario(
    family="farrier_nail_clinch_stale_checkpoint_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=FARRIER_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting how tight a farrier's horseshoe nail clinch holds from ten readings of the hoof wall and the hammer blows, Adam at 2e-3, MSE, 220 steps. The checkpoint hook was written `step == 10` for `step % 10 == 0`, so the only checkpoint is from step 10; the job is preempted and resumes at step 130 from it (the optimizer state is rebuilt from the live process): the loss jumps to over 3x its level just before, and the run recovers within a few dozen steps.",
)
def h364_farrier_stale_checkpoint(ctx: Context) -> None:
    gen = seeded(36403)
    model = Trunk(10, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    saved = {}

    def after(step):
        if step == 10:  # meant: step % 10 == 0
            saved.update({k: v.clone() for k, v in model.state_dict().items()})

    def before(step):
        if step == FARRIER_ONSET:
            model.load_state_dict(saved)

    _loop(
        ctx, model, opt, _readings(gen, 128, 10, 3643), 220, F.mse_loss, before=before, after=after
    )
    ls = ctx.losses
    pre = _mean(ls[FARRIER_ONSET - 10 : FARRIER_ONSET])
    ctx.check(
        "the loss at the resume step is over 3x the 10 steps before", ls[FARRIER_ONSET] > 3 * pre
    )
    ctx.check("the loss before the resume had fallen", pre < 0.5 * _mean(ls[:5]))
    ctx.check(
        "the run recovers: the last 20 steps under 1.5x the pre-resume level",
        _mean(ls[-20:]) < 1.5 * pre,
    )
    ctx.check("finite throughout", _finite(ls))


# -- bobsleigh: loss summed over 64 ranks for one step -------------------------------------------------

BOB_ONSET = 150


@scenario(
    family="bobsleigh_push_start_split_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=BOB_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a bobsleigh crew's push-start split from twelve readings of the sprint and the load, SGD with Nesterov momentum 0.9 at 0.02, Huber loss, gradient clipping at 1.0, 220 steps. After a node failure the process group is re-formed at step 150 and that step's loss is all-reduced with SUM over the 64 ranks instead of AVG before backward: on a clean batch the gradient is over 50x the run's while the logged loss is ordinary; clipping holds the step and the run goes on.",
)
def h364_bobsleigh_rank_sum_step(ctx: Context) -> None:
    gen = seeded(36404)
    model = Trunk(12, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    world = 64

    def backprop(step, loss):
        return loss * world if step == BOB_ONSET else loss  # meant: divide the sum by world

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 12, 3644),
        220,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at step 150 is over 50x the median of the 20 steps before",
        g[BOB_ONSET] > 50 * _median(g[BOB_ONSET - 20 : BOB_ONSET]),
    )
    ctx.check(
        "the logged loss at step 150 is under 2x the median before (clean batch)",
        ls[BOB_ONSET] < 2 * _median(ls[BOB_ONSET - 20 : BOB_ONSET]),
    )
    ctx.check(
        "the gradient is back under 3x the median within 10 steps",
        max(g[BOB_ONSET + 10 : BOB_ONSET + 20]) < 3 * _median(g[BOB_ONSET - 20 : BOB_ONSET]),
    )
    ctx.check("the loss fell", _fell(ls))
    ctx.check("finite throughout", _finite(ls))


# -- ice core: the fc1 group's lr typed 4e-9 for 4e-3 ------------------------------------------------


@scenario(
    family="ice_core_dust_layer_two_group_tanh_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the thickness of a dust layer in an ice core from fourteen readings of conductivity, isotopes and depth, Adamax with two param groups (fc1 at its own rate, fc2 and head at 4e-3), MSE, 220 steps. The fc1 group's lr was typed 4e-9 for 4e-3: fc1 moves under 1e-4 of its norm over the run while fc2 and the head move over 2% of theirs, and the loss still falls on the other layers.",
)
def h364_ice_core_fc1_lr_typo(ctx: Context) -> None:
    gen = seeded(36405)
    model = Trunk(14, act=nn.Tanh)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 4e-9},  # meant: 4e-3
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=4e-3,
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    _loop(ctx, model, opt, _readings(gen, 128, 14, 3645), 220, F.mse_loss)
    ctx.check("fc1 moved under 1e-4 of its norm", _rel_change(w1, model.fc1.weight) < 1e-4)
    ctx.check("fc2 moved over 2% of its norm", _rel_change(w2, model.fc2.weight) > 0.02)
    ctx.check("the head moved over 2% of its norm", _rel_change(wh, model.head.weight) > 0.02)
    ctx.check("the loss fell", _fell(ctx.losses))


# -- snow avalanche: the variance head lost its softplus ----------------------------------------------


class RunoutNLL(nn.Module):
    """Gaussian NLL of the runout given mean and variance."""

    def forward(self, mean, var, y):
        return 0.5 * (torch.log(var) + (y - mean) ** 2 / var)


class RunoutNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> (mean_head, var_head); ``nll`` computes the loss."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        self.nll = RunoutNLL()
        with torch.no_grad():
            self.var_head.bias.fill_(1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        var = self.var_head(h).squeeze(-1)  # meant: F.softplus(...) + 1e-6
        return torch.stack([self.mean_head(h).squeeze(-1), var], -1)


AVALANCHE_NAN = 15


@scenario(
    family="snow_avalanche_runout_gaussian_nll_silu_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("nll", "var_head"),
    diverges=AVALANCHE_NAN,
    heldout=True,
    note="A hand-written SiLU net (fc1, act1, fc2, act2, mean_head, var_head, nll) predicting an avalanche's runout distance (standardised) and its variance from ten readings of the slope, snowpack and release, NAdam at 2e-3, Gaussian NLL computed in the model's nll module, 200 steps. The var_head lost its softplus in a refactor and gives the variance raw: as the fit sharpens the variance is pulled towards zero, a step overshoots it below zero and log(var) in nll is NaN at step 15.",
)
def h364_avalanche_raw_variance(ctx: Context) -> None:
    gen = seeded(36406)
    model = RunoutNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    min_var = []

    def loss_fn(out, y):
        return model.nll(out[:, 0], out[:, 1], y).mean()

    def watch(step, out, x, y):
        min_var.append(float(out[:, 1].detach().min()))

    n = _loop(ctx, model, opt, _readings(gen, 128, 10, 3646, noise=0.02), 200, loss_fn, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss became NaN", bad is not None and math.isnan(ctx.losses[bad]))
    ctx.check("the first NaN is at step 15", bad == AVALANCHE_NAN)
    ctx.check("a variance was below zero at the NaN step", bad is not None and min_var[bad] < 0)
    ctx.check("the run stopped at the NaN", n == (bad or -2) + 1)


# -- archery: uniform bound used as the normal std ---------------------------------------------------


class DeepTanh(nn.Module):
    """layers.0 .. layers.{depth-1} (Linear, tanh after each) -> head."""

    def __init__(self, d_in=16, width=48, depth=16):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        self.acts = []

    def forward(self, x):
        self.acts = []
        for layer in self.layers:
            x = torch.tanh(layer(x))
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="archery_bow_draw_weight_deep_tanh_mlp",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A hand-written 16-layer tanh MLP (layers.0 .. layers.15, head) predicting a recurve bow's draw weight at full draw from sixteen readings of the limbs and the string, Adagrad at 1e-2, MSE, gradient clipping at 1.0, 200 steps. The init was ported from a uniform scheme: std = gain * sqrt(6 / fan_in) with gain 5/3, the uniform bound used as the normal std (2.4x too large): the net is in the chaotic regime and the gradient grows through depth, the gradient at layers.0's output over 20x that at layers.15's at the start and over 10x through the first 50 steps, clipping holding the step.",
)
def h364_archery_uniform_bound_as_std(ctx: Context) -> None:
    gen = seeded(36407)
    model = DeepTanh()
    gain = nn.init.calculate_gain("tanh")
    with torch.no_grad():
        for layer in model.layers:
            std = gain * math.sqrt(6.0 / layer.in_features)  # meant: gain * sqrt(1 / fan_in)
            layer.weight.normal_(0.0, std)
            layer.bias.zero_()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ratio = []

    def inspect(step):
        first, last = model.acts[0].grad, model.acts[-1].grad
        ratio.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(
        ctx, model, opt, _readings(gen, 128, 16, 3647), 200, F.mse_loss, clip=1.0, inspect=inspect
    )
    ctx.check("the gradient at layers.0 is over 20x that at layers.15 at step 0", ratio[0] > 20)
    ctx.check("over 10x on average through the first 50 steps", _mean(ratio[:50]) > 10)
    ctx.check(
        "the raw gradient norm is over the clip threshold at the start", ctx.grad_norms[0] > 1.0
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- fencing: one shard of timings in milliseconds ----------------------------------------------------

FENCING_ONSET = 120


def _parries(gen, batch, seed, d_in=12):
    """Standardised bout readings and whether the parry-riposte scored (0/1)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = 1.5 * x @ w / math.sqrt(d_in) + torch.sin(x @ v / math.sqrt(d_in))
        yield x, (torch.rand(batch, generator=gen) < torch.sigmoid(2 * z)).float()


@scenario(
    family="fencing_parry_riposte_relu_bce_net",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=FENCING_ONSET,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting whether a fencer's parry-riposte scores from twelve standardised readings of blade timing and distance, SGD with momentum 0.9 at 0.02, BCE with logits, gradient clipping at 1.0, 220 steps. One club's shard logged its four timing columns in milliseconds and was never standardised; it arrives as the batch of step 120: its loss and gradient are over 20x the run's, the clipped step knocks the net back briefly and the run recovers.",
)
def h364_fencing_shard_in_milliseconds(ctx: Context) -> None:
    gen = seeded(36408)
    model = Trunk(12)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == FENCING_ONSET:
            x = x.clone()
            x[:, :4] = 250.0 + 120.0 * x[:, :4].abs()  # raw milliseconds, never standardised
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _parries(gen, 128, 3648),
        220,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    g, ls = ctx.grad_norms, ctx.losses
    pre_l, pre_g = _median(ls[100:FENCING_ONSET]), _median(g[100:FENCING_ONSET])
    ctx.check("the loss at step 120 is over 20x the median before", ls[FENCING_ONSET] > 20 * pre_l)
    ctx.check(
        "the gradient at step 120 is over 20x the median before", g[FENCING_ONSET] > 20 * pre_g
    )
    ctx.check(
        "the run recovers: last 20 steps under 1.3x the level before", _mean(ls[-20:]) < 1.3 * pre_l
    )
    ctx.check("the loss fell before the shard", pre_l < 0.9 * _mean(ls[:10]))
    ctx.check("finite throughout", _finite(ls))


# -- skeleton sled: warm-up peak lr typed 3.0 for 0.3 -----------------------------------------------


@scenario(
    family="skeleton_sled_runner_rocker_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a skeleton sled's split time from the runners' rocker and bow readings (ten, standardised), full-batch plain SGD with a linear warm-up over 40 steps to a peak lr typed 3.0 for 0.3, MSE, 120 steps. As the warm-up climbs, lr x the top Hessian eigenvalue (power iteration on Hessian-vector products) passes 2, the iterates oscillate with growing amplitude along the sharp direction and the loss blows up to inf.",
)
def h364_skeleton_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(36409)
    model = Trunk(10, act=nn.Tanh)
    peak = 3.0  # meant: 0.3
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    full = next(_readings(gen, 512, 10, 3649))
    edge = []

    def batches():
        while True:
            yield full

    def before(step):
        for group in opt.param_groups:
            group["lr"] = peak * min(1.0, (step + 1) / 40)
        if step % 5 == 0 and step < 60:
            eig = _sharpness(model, F.mse_loss, *full)
            edge.append((step, opt.param_groups[0]["lr"] * eig))

    _loop(ctx, model, opt, batches(), 120, F.mse_loss, before=before)
    ls = ctx.losses
    bad = _first_bad(ls)
    low = min(v for v in ls if math.isfinite(v))
    ctx.check("lr x sharpness is under 2 at step 0", edge[0][1] < 2)
    ctx.check("lr x sharpness passes 2 during the warm-up", max(e for _, e in edge) > 2)
    ctx.check(
        "the loss blows up (non-finite or over 1000x its lowest)",
        bad is not None or ls[-1] > 1000 * low,
    )


# -- geode: hand-written weight decay with its sign flipped -------------------------------------------


@scenario(
    family="geode_crystal_growth_decay_sign_silu_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the crystal growth rate inside a geode cavity from ten readings of silica, temperature and pressure, ASGD at 1e-2, MSE, with a hand-written decoupled weight decay 0.4 applied after each step, 300 steps. The decay was written p.add_(p, alpha=lr * wd) for alpha=-lr * wd: every step multiplies the weights by 1.004, the weights grow over 3x, and after its early fall the loss climbs slowly, with no jump, to over 3x its lowest 20-step mean, finite.",
)
def h364_geode_decay_sign(ctx: Context) -> None:
    gen = seeded(36410)
    model = Trunk(10, act=nn.SiLU)
    lr, wd = 1e-2, 0.4
    opt = torch.optim.ASGD(model.parameters(), lr=lr)
    w0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # meant: alpha=-lr * wd

    _loop(ctx, model, opt, _readings(gen, 128, 10, 36410), 300, F.mse_loss, after=after)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    ctx.check("the weights grew over 3x", float(_flat(model).norm()) > 3 * w0)
    ctx.check(
        "the last 20 steps are over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3 * min(means)
    )
    ctx.check(
        "no jump: no 20-step mean is over 2x the one 10 steps before",
        all(means[i + 10] < 2 * means[i] for i in range(len(means) - 10)),
    )
    ctx.check("finite throughout", _finite(ls))


# -- controls ---------------------------------------------------------------------------------------


class KiteActorCritic(nn.Module):
    """trunk (fc1, act1, fc2, act2) -> policy_head (action logits) and value_head."""

    def __init__(self, d_in=8, hidden=64, actions=4):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.policy_head = nn.Linear(hidden, actions)
        self.value_head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.policy_head.weight.mul_(0.01)

    def forward(self, s):
        h = self.trunk(s)
        return self.policy_head(h), self.value_head(h).squeeze(-1)


def _kite_rewards(seed, d_in=8, actions=4):
    """Reward of each action (pay out, reel in, hold, steer) given the wind and line state."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, actions, generator=g) / math.sqrt(d_in)

    def reward(s, a, gen):
        mean = 1.5 * torch.tanh(2 * s @ w)
        return mean.gather(1, a[:, None]).squeeze(1) + 0.3 * torch.randn(len(a), generator=gen)

    return reward


@scenario(
    family="kite_flying_line_tension_ppo_actor_critic",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written actor-critic (trunk: fc, tanh, fc, tanh; policy_head and value_head on the shared trunk) choosing among four line actions (pay out, reel in, hold, steer) for a kite from eight readings of the wind and the line, on a generated contextual bandit whose reward depends on the state and action plus noise. PPO-style: each rollout of 256 states is sampled with the old policy, then 4 epochs of updates on it with the clipped ratio objective (eps 0.2), value loss coefficient 0.5, entropy bonus 0.01, advantages normalised, Adam at 3e-3, gradient clipping at 0.5, 60 rollouts (240 steps). A control.",
)
def h364_kite_ppo_actor_critic(ctx: Context) -> None:
    gen = seeded(36411)
    model = KiteActorCritic()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    reward_fn = _kite_rewards(3641)
    ctx.attach(model, opt)
    mean_reward, value_loss = [], []
    for _ in range(60):
        s = torch.randn(256, 8, generator=gen)
        with torch.no_grad():
            logits, _ = model(s)
            dist = torch.distributions.Categorical(logits=logits)
            a = dist.sample()
            old_logp = dist.log_prob(a)
            r = reward_fn(s, a, gen)
        mean_reward.append(float(r.mean()))
        for _ in range(4):
            logits, v = model(s)
            dist = torch.distributions.Categorical(logits=logits)
            adv = r - v.detach()
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            ratio = torch.exp(dist.log_prob(a) - old_logp)
            policy = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
            vloss = F.mse_loss(v, r)
            loss = policy + 0.5 * vloss - 0.01 * dist.entropy().mean()
            loss.backward()
            ctx.grad_norms.append(grad_norm(model))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            ctx.step(loss)
            opt.zero_grad(set_to_none=True)
            value_loss.append(float(vloss.detach()))
    ctx.check(
        "the mean reward rose by over 0.5", _mean(mean_reward[-10:]) > _mean(mean_reward[:10]) + 0.5
    )
    ctx.check("the value loss fell", _mean(value_loss[-20:]) < 0.7 * _mean(value_loss[:20]))
    ctx.check("finite throughout", _finite(ctx.losses))


class ThrowConv(nn.Module):
    """Conv1d classifier over a 3-channel 32-sample trace: conv1, act1, conv2, act2, pool, head."""

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


def _traces(gen, batch, seed, classes=4, channels=3, length=32):
    """Traces: one frequency and phase per class and channel plus noise."""
    g = torch.Generator().manual_seed(seed)
    freq = 1.0 + 3.0 * torch.rand(classes, channels, generator=g)
    phase = 6.28 * torch.rand(classes, channels, generator=g)
    t = torch.linspace(0, 6.28, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase[y][:, :, None])
        yield x + 0.6 * torch.randn(batch, channels, length, generator=gen), y


@scenario(
    family="bocce_throw_style_relu_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, pool, head) naming which of four throws a bocce player made (punto, raffa, volo, rolling) from a three-channel 32-sample trace of the arm's inertial sensor, SGD with Nesterov momentum 0.9 under OneCycleLR (peak 0.1), cross-entropy with label smoothing 0.1, gradient clipping at 2.0, 220 steps. A control.",
)
def h364_bocce_onecycle_control(ctx: Context) -> None:
    gen = seeded(36412)
    model = ThrowConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=220)
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(1) == y).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 3642),
        220,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        watch=watch,
        clip=2.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("accuracy over the last 20 steps is over 80%", _mean(acc[-20:]) > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="abseil_rope_friction_heat_fp16_silu_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting how hot an abseil rope gets through the descender (standardised) from twelve readings of the descent speed, load and rope, fp16 autocast with a torch.amp.GradScaler, RAdam at 3e-3 with a no-decay bias group, Huber loss on noisy targets, gradient accumulation over 2 micro-batches, ReduceLROnPlateau on a held-out batch, clipping at 1.0, 220 steps. A control.",
)
def h364_abseil_fp16_control(ctx: Context) -> None:
    gen = seeded(36413)
    model = Trunk(12, act=nn.SiLU)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RAdam(
        [{"params": weights, "weight_decay": 1e-4}, {"params": biases, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    data = _readings(gen, 64, 12, 3643, noise=0.2)
    held = next(_readings(torch.Generator().manual_seed(9), 256, 12, 3643, noise=0.2))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        data,
        220,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check(
        "the held-out loss ends under 0.6x the start", plateau() < 0.6 * _mean(ctx.losses[:5])
    )
    ctx.check("finite throughout", _finite(ctx.losses))
