"""Held-out set 420 (``h420_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a sugar-cane crusher Brix attention classifier whose QK-LayerNorm was dropped at a high
AdamW lr (attention logits grow), a maple-evaporator syrup-density Gaussian NLL net whose
variance clamp was dropped before a sqrt (sqrt of a negative), a quoits ringer-distance ReLU
regressor whose plasticity re-init hook was left enabled (a one-off loss spike), a tapestry-loom
warp-tension two-group regressor whose stem lr is typed 2e-9 for 2e-3 (a frozen stem), a
lamplighter wick-flicker tanh RNN whose recurrent init gain is typed 2.5 for 1.0 (gradients grow
through time), a peat-cutting turf-moisture SiLU regressor fed one shard in percent for fractions
(one corrupted batch), a tightrope balance-loss ReLU BCE net whose pos_weight is reloaded as raw
counts for one step (a gradient burst), a perfumer's accord temperature classifier whose
temperature is read in hundredths (softmax saturates), a sheep-shearing comb-drag ReLU regressor
on NAdam with lr typed 5e-2 for 5e-4 (ReLUs die) and a vineyard grape-ripeness BCE net whose soft
labels divide three tasters' votes by two (the head's logits grow without bound).

Controls: a stained-glass came-joint capsule network (dynamic routing, three iterations, margin
loss, reconstruction regularizer, Adam with a cosine schedule), a ropewalk hemp-twist GELU
classifier (AdamW with a no-decay group, OneCycleLR, label smoothing, clipping) and a lacrosse
cradle-rhythm tied autoencoder (SGD Nesterov, ReduceLROnPlateau, accumulation, Huber loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    digit_batches,
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
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step. Stops
    after a non-finite loss (once ``ctx.step`` has seen it)."""
    ctx.attach(model, opt)
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
            out = model(x)
            loss = loss_fn(out, y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = ((x @ w + 0.5 * x[:, 0] * x[:, 1]) > 0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


class _MLP(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, activations as modules."""

    def __init__(self, d_in, hidden, d_out, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, d_out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- faults ----------------------------------------------------------------------------------------


class _CrusherAttention(nn.Module):
    """One-head attention of a learned query over the crusher's roller readings."""

    def __init__(self, dim, qk_norm):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.qn = nn.LayerNorm(dim) if qk_norm else nn.Identity()
        self.kn = nn.LayerNorm(dim) if qk_norm else nn.Identity()
        self.scale = 1.0 / math.sqrt(dim)
        self.last_max = 0.0

    def forward(self, query, tokens):
        q = self.qn(self.q(query))  # (b, 1, d)
        k = self.kn(self.k(tokens))
        logits = q @ k.transpose(1, 2) * self.scale
        self.last_max = float(logits.detach().abs().max())
        return torch.softmax(logits, -1) @ self.v(tokens)


class _BrixNet(nn.Module):
    def __init__(self, d_in=6, dim=32, classes=5, qk_norm=False):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.attn = _CrusherAttention(dim, qk_norm)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        z = self.attn(self.query.expand(len(x), -1, -1), h)
        return self.head(z[:, 0])


def _brix_batches(gen, batch=64, tokens=12, classes=5):
    """Each roller reading has a pressure (feature 0) and a cane-variety one-hot; the label is the
    variety at the roller with the highest pressure."""
    while True:
        p = torch.randn(batch, tokens, 1, generator=gen)
        var = torch.randint(0, classes, (batch, tokens), generator=gen)
        x = torch.cat([p, F.one_hot(var, classes).float()], -1)
        y = var.gather(1, p[..., 0].argmax(1, keepdim=True))[:, 0]
        yield x, y


@scenario(
    family="sugar_cane_crusher_brix_sdpa_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Sugar-cane crusher Brix-class attention classifier (a learned query attends over 12 "
    "roller readings, label = cane variety at the highest-pressure roller) trained with AdamW at "
    "lr 1e-2 and weight decay 0; the QK-LayerNorm the recipe relies on at that lr was dropped in "
    "a refactor, so the query/key weights grow and the attention logits q.k/sqrt(d) grow "
    "many-fold (the ViT-22B failure).",
)
def h420_sugarcane_attention_no_qknorm(ctx) -> None:
    gen = seeded(4201)
    model = _BrixNet(qk_norm=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    maxes: list[float] = []
    _loop(
        ctx,
        model,
        opt,
        _brix_batches(gen),
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda s: maxes.append(model.attn.last_max),
    )
    ctx.check("attention logits grew over 10x their start", maxes[-1] > 10 * maxes[0])
    ctx.check("max attention logit over 30 at the end", maxes[-1] > 30)
    ctx.check("still growing over the last 50 steps", _mean(maxes[-10:]) > _mean(maxes[-60:-50]))
    ctx.check("loss finite", _finite(ctx.losses))


class _SyrupNet(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)
        nn.init.constant_(self.head.bias, 1.0)
        self.last_var_min = 0.0

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        out = self.head(h)
        self.last_var_min = float(out[:, 1].detach().min())
        return out


def _syrup_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    std = torch.sqrt(var)  # was torch.sqrt(var.clamp_min(1e-6)) before the clamp was dropped
    return (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()


@scenario(
    family="maple_evaporator_syrup_density_gaussian_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("head",),
    diverges=65,
    heldout=True,
    note="Maple-syrup evaporator density regressor with a Gaussian NLL whose variance output is "
    "a raw linear unit (bias 1.0) fed to torch.sqrt; the clamp_min(1e-6) was dropped in a "
    "cleanup. As the fit tightens the variance pre-activation of one row crosses zero, sqrt of a "
    "negative is NaN and the loss is NaN.",
)
def h420_maple_sqrt_negative_variance(ctx) -> None:
    gen = seeded(4202)
    model = _SyrupNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    var_mins: list[float] = []
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 4202, noise=0.02),
        250,
        _syrup_nll,
        before=None,
        inspect=lambda s: var_mins.append(model.last_var_min),
    )
    bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check("the loss is NaN at some step", bad is not None)
    ctx.check(
        "a variance pre-activation was negative at that step",
        bad is not None and var_mins[bad] < 0,
    )
    ctx.check("variances were all positive before it", bad is not None and min(var_mins[:bad]) > 0)


@scenario(
    family="quoits_pitch_ringer_distance_relu_regressor",
    optimizer="SGD",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="Quoits ringer-distance regressor (ReLU MLP, SGD Nesterov) with a plasticity-injection "
    "callback copied from another experiment and left enabled: at step 150 it re-initialises "
    "the head once. The loss spikes and the run recovers within tens of steps.",
)
def h420_quoits_head_reinit_hook(ctx) -> None:
    gen = seeded(4203)
    model = _MLP(10, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def before(step):
        if step == 150:
            model.head.reset_parameters()

    _loop(ctx, model, opt, _readings(gen, 64, 10, 4203), 300, F.mse_loss, before=before)
    ls = ctx.losses
    pre = _median(ls[130:150])
    ctx.check("loss at step 150 over 5x the 20 before", ls[150] > 5 * pre)
    ctx.check("recovered: last 20 under 2x the pre-spike median", _mean(ls[-20:]) < 2 * pre)
    ctx.check("trained before the spike", _mean(ls[140:150]) < 0.8 * _mean(ls[:10]))
    ctx.check("finite", _finite(ls))


class _LoomNet(nn.Module):
    def __init__(self, d_in=12, hidden=48):
        super().__init__()
        self.stem = nn.Linear(d_in, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.mid(F.gelu(self.stem(x))))).squeeze(-1)


@scenario(
    family="tapestry_loom_warp_tension_two_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("stem",),
    diverges=None,
    heldout=True,
    note="Tapestry-loom warp-tension regressor with two param groups (stem; mid + head) on "
    "Adamax; the stem group's lr is typed 2e-9 for 2e-3 in the config, so the stem's updates "
    "are about a million times too small for its weights (it never moves) while the rest trains.",
)
def h420_loom_stem_lr_typo(ctx) -> None:
    gen = seeded(4204)
    model = _LoomNet()
    opt = torch.optim.Adamax(
        [
            {"params": model.stem.parameters(), "lr": 2e-9},
            {"params": list(model.mid.parameters()) + list(model.head.parameters()), "lr": 2e-3},
        ]
    )
    stem0 = model.stem.weight.detach().clone()
    head0 = model.head.weight.detach().clone()
    stem_grads: list[float] = []

    def inspect(step):
        stem_grads.append(float(model.stem.weight.grad.norm()))

    _loop(ctx, model, opt, _readings(gen, 64, 12, 4204), 200, F.mse_loss, inspect=inspect)
    ctx.check("stem moved under 1e-5 of its norm", _rel_change(stem0, model.stem.weight) < 1e-5)
    ctx.check("stem received gradients", min(stem_grads) > 1e-4)
    ctx.check("head moved over 5%", _rel_change(head0, model.head.weight) > 0.05)
    ctx.check("finite", _finite(ctx.losses))


class _WickRNN(nn.Module):
    """Hand-written Elman tanh RNN: inp -> rec (recurrent) -> head."""

    def __init__(self, d_in=3, hidden=48, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _flicker_batches(gen, batch=32, length=40):
    """Wick-flicker traces; the target is a weighted mean of the early draught readings."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh(x[:, :5, 0].mean(1) + 0.5 * x[:, -5:, 1].mean(1))
        yield x, y


@scenario(
    family="lamplighter_wick_flicker_tanh_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Lamplighter wick-flicker tanh RNN (hand-written Elman cell over 40 steps, plain SGD, "
    "clipped at 1.0) whose recurrent weight is initialised orthogonal with gain typed 2.5 for "
    "1.0: the recurrent Jacobian amplifies the gradient at every step back through time, so the "
    "gradient at the first state is orders of magnitude larger than at the last.",
)
def h420_lamplighter_recurrent_gain(ctx) -> None:
    gen = seeded(4205)
    model = _WickRNN(gain=2.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ratios: list[float] = []

    def inspect(step):
        first = float(model.states[0].grad.norm())
        last = float(model.states[-1].grad.norm())
        ratios.append(first / max(last, 1e-12))

    _loop(ctx, model, opt, _flicker_batches(gen), 120, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check("dL/dh_0 over 100x dL/dh_T at the start", ratios[0] > 100)
    ctx.check("median ratio over 100x through the run", _median(ratios) > 100)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="peat_cutting_turf_moisture_silu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Peat-cutting turf-moisture regressor (SiLU MLP, RMSprop, clipped at 1.0); one bog's "
    "shard, drawn at step 100, logs moisture in percent where every other shard uses fractions "
    "(x100). One corrupted batch: the loss and gradient spike, the run recovers.",
)
def h420_peat_moisture_percent_shard(ctx) -> None:
    gen = seeded(4206)
    model = _MLP(9, 48, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        return (x, y * 100.0) if step == 100 else (x, y)

    _loop(ctx, model, opt, _readings(gen, 64, 9, 4206), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at 100 over 100x the median before", ls[100] > 100 * _median(ls[80:100]))
    ctx.check("gradient at 100 over 20x the median before", gs[100] > 20 * _median(gs[80:100]))
    ctx.check("recovered", _mean(ls[-20:]) < 2 * _median(ls[80:100]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="tightrope_walk_balance_loss_relu_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Tightrope-walk balance-loss predictor (ReLU MLP, BCE with logits, SGD momentum 0.9, "
    "clipped at 10); at step 120 the class-balance hook reloads pos_weight from the label file "
    "as raw counts (about 500) instead of the ratio: one gradient burst on an ordinary batch, "
    "the logged (unweighted) loss stays ordinary, the run recovers.",
)
def h420_tightrope_pos_weight_counts(ctx) -> None:
    gen = seeded(4207)
    model = _MLP(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def backprop(step, loss):
        if step != 120:
            return loss
        x, y = last["batch"]
        return F.binary_cross_entropy_with_logits(model(x), y, pos_weight=torch.tensor(500.0))

    last: dict = {}
    batches = _binary(gen, 64, 10, 4207)

    def tap():
        for x, y in batches:
            last["batch"] = (x, y)
            yield x, y

    _loop(
        ctx,
        model,
        opt,
        tap(),
        240,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=10.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at 120 over 30x the median before", gs[120] > 30 * _median(gs[100:120]))
    ctx.check("logged loss at 120 ordinary", ls[120] < 2 * _median(ls[100:120]))
    ctx.check("recovered", _mean(ls[-20:]) < 1.5 * _median(ls[100:120]))
    ctx.check("finite", _finite(ls))


class _AccordNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=8, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature
        self.last_logits = torch.zeros(1)

    def forward(self, x):
        z = self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))
        self.last_logits = z.detach()
        return z / self.temperature


@scenario(
    family="perfume_nose_accord_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Perfumer's accord-family classifier (ReLU MLP, 8 families, Adagrad) whose softmax "
    "temperature is read from a config written in hundredths: 1 becomes 0.01, the logits are "
    "multiplied by 100 and the float32 softmax saturates to exactly 0/1 on most rows.",
)
def h420_perfume_temperature_hundredths(ctx) -> None:
    gen = seeded(4208)
    model = _AccordNet(temperature=0.01)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    fractions: list[float] = []
    plain: list[float] = []
    ys: dict = {}

    def alter(step, x, y):
        ys["y"] = y
        return x, y

    def after(step):
        z = model.last_logits
        fractions.append(collapsed_fraction(z / 0.01, ys["y"]))
        plain.append(collapsed_fraction(z, ys["y"]))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 8, 4208, spread=0.7),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        after=after,
    )
    ctx.check("over half the rows collapsed over the last 30", _mean(fractions[-30:]) > 0.5)
    ctx.check("under 5% at temperature 1 on the same logits", _mean(plain[-30:]) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


def _shearing_dead(model, probe_x) -> float:
    with torch.no_grad():
        return dead_fraction(model.features(probe_x))


@scenario(
    family="sheep_shearing_comb_drag_relu_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Sheep-shearing comb-drag regressor (ReLU MLP) on NAdam with lr typed 5e-2 for 5e-4: "
    "the first large updates push most of fc2's units negative on every input, act2's ReLUs "
    "die and stop learning.",
)
def h420_shearing_nadam_lr_typo(ctx) -> None:
    probe_x = torch.randn(512, 8, generator=torch.Generator().manual_seed(42090))
    # the intended lr, same seed, for reference (not monitored)
    gen = seeded(4209)
    ref = _MLP(8, 64, 1)
    ref_opt = torch.optim.NAdam(ref.parameters(), lr=5e-4)
    batches = _readings(gen, 64, 8, 4209)
    ref_dead: list[float] = []
    for _ in range(200):
        x, y = next(batches)
        ref_opt.zero_grad()
        F.mse_loss(ref(x), y).backward()
        ref_opt.step()
        ref_dead.append(_shearing_dead(ref, probe_x))

    gen = seeded(4209)
    model = _MLP(8, 64, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-2)
    dead: list[float] = []
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 4209),
        200,
        F.mse_loss,
        after=lambda s: dead.append(_shearing_dead(model, probe_x)),
    )
    ctx.check("over 50% of act2 dead over the last 50 steps", _mean(dead[-50:]) > 0.5)
    ctx.check("dead share over twice its value after step 0", _mean(dead[-50:]) > 2 * dead[0])
    ctx.check("under 10% dead at the intended 5e-4", _mean(ref_dead[-50:]) < 0.1)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="vineyard_grape_ripeness_soft_label_bce_net",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Vineyard grape-ripeness soft-label BCE net (GELU MLP, RAdam); the soft label is the "
    "tasters' 'ripe' votes divided by 2 after a third taster joined the panel, so unanimous rows "
    "get target 1.5. BCE with a target above 1 is unbounded below, so the head's logits on "
    "those rows grow without bound and the loss goes negative.",
)
def h420_vineyard_votes_over_two(ctx) -> None:
    gen = seeded(4210)
    model = _MLP(10, 48, 1, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(42100)
    w = torch.randn(3, 10, generator=g)

    def votes():
        while True:
            x = torch.randn(64, 10, generator=gen)
            v = ((x @ w.T) > 0).float().sum(1)
            yield x, v / 2.0  # three tasters since the 2024 harvest; the divisor stayed 2

    maxes: list[float] = []
    probe_x = torch.randn(256, 10, generator=torch.Generator().manual_seed(42101))
    unanimous = ((probe_x @ w.T) > 0).all(1)
    top_loss: list[float] = []

    def after(step):
        with torch.no_grad():
            z = model(probe_x)
            maxes.append(float(z.abs().max()))
            t = torch.full_like(z[unanimous], 1.5)
            top_loss.append(float(F.binary_cross_entropy_with_logits(z[unanimous], t)))

    _loop(ctx, model, opt, votes(), 200, F.binary_cross_entropy_with_logits, after=after)
    ctx.check("max |logit| over 20x its start", maxes[-1] > 20 * maxes[0])
    ctx.check("still growing over the last 50 steps", maxes[-1] > 1.2 * maxes[-50])
    ctx.check("loss on the unanimous (1.5) rows below -2 at the end", top_loss[-1] < -2)
    ctx.check("finite", _finite(ctx.losses))


# -- controls --------------------------------------------------------------------------------------


def _squash(s, dim=-1):
    n2 = (s * s).sum(dim, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)


class _CapsNet(nn.Module):
    """Conv -> primary capsules -> class capsules by routing-by-agreement -> decoder."""

    def __init__(self, classes=10, routing=3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)  # 8x8 -> 6x6
        self.primary = nn.Conv2d(32, 8 * 4, 3, stride=2)  # -> 2x2, 8 capsules of dim 4 each
        self.W = nn.Parameter(0.1 * torch.randn(32, classes, 8, 4))
        self.decoder = nn.Sequential(
            nn.Linear(classes * 8, 64), nn.ReLU(), nn.Linear(64, 64), nn.Sigmoid()
        )
        self.routing = routing
        self.classes = classes

    def capsules(self, x):
        b = x.shape[0]
        h = F.relu(self.conv1(x.reshape(b, 1, 8, 8)))
        u = self.primary(h).reshape(b, 8, 4, 4).permute(0, 1, 3, 2).reshape(b, 32, 4)
        u = _squash(u)
        u_hat = torch.einsum("ncdk,bnk->bncd", self.W, u)  # (b, 32, classes, 8)
        logits = torch.zeros(b, 32, self.classes)
        for it in range(self.routing):
            c = torch.softmax(logits, dim=2)
            v = _squash((c[..., None] * u_hat).sum(1))  # (b, classes, 8)
            if it < self.routing - 1:
                logits = logits + (u_hat * v[:, None]).sum(-1)
        return v

    def forward(self, x):
        return self.capsules(x)


def _margin_loss(v, y):
    lengths = v.norm(dim=-1)
    t = F.one_hot(y, lengths.shape[1]).float()
    loss = t * F.relu(0.9 - lengths) ** 2 + 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2
    return loss.sum(1).mean()


@scenario(
    family="stained_glass_came_joint_capsule_net",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Stained-glass came-joint pattern classifier on 8x8 glyph tiles (scikit-learn digits): "
    "a capsule network with squash, routing by agreement over three iterations, a margin loss "
    "and a masked reconstruction decoder as regularizer (weight 0.5 on pixel MSE), Adam under "
    "a cosine schedule. Control.",
)
def h420_stained_glass_capsules(ctx) -> None:
    gen = seeded(4211)
    model = _CapsNet()
    steps = 150
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    ctx.attach(model, opt)
    accs: list[float] = []
    batches = digit_batches(gen)
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        v = model(x)
        masked = (v * F.one_hot(y, 10).float()[..., None]).flatten(1)
        recon = F.mse_loss(model.decoder(masked), x)
        loss = _margin_loss(v, y) + 0.5 * recon
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        accs.append(float((v.norm(dim=-1).argmax(1) == y).float().mean()))
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("accuracy over 70% over the last 20", _mean(accs[-20:]) > 0.7)


@scenario(
    family="ropewalk_hemp_twist_grade_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Ropewalk hemp-twist grade classifier (GELU MLP, 6 grades, noisy readings): AdamW with "
    "weight decay on weights and a no-decay group for biases, OneCycleLR, label smoothing 0.1, "
    "gradient clipping at 1.0. Control.",
)
def h420_ropewalk_onecycle(ctx) -> None:
    gen = seeded(4212)
    model = _MLP(14, 64, 6, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 4212, spread=1.5),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))


class _TiedAutoencoder(nn.Module):
    def __init__(self, d_in=24, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _cradle_batches(gen, batch=32, d_in=24, seed=42130):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(6, d_in, generator=g) / math.sqrt(6)
    while True:
        z = torch.randn(batch, 6, generator=gen)
        x = z @ basis + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="lacrosse_cradle_rhythm_tied_autoencoder",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Lacrosse cradle-rhythm tied autoencoder (decoder uses the encoder's weight transposed, "
    "noisy stick-sensor windows, Huber loss), SGD Nesterov with accumulation over 2 "
    "micro-batches and ReduceLROnPlateau on a held-out batch. Control.",
)
def h420_lacrosse_tied_autoencoder(ctx) -> None:
    gen = seeded(4213)
    model = _TiedAutoencoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held, _ = next(_cradle_batches(torch.Generator().manual_seed(42131), batch=128))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held), held))

    _loop(
        ctx,
        model,
        opt,
        _cradle_batches(gen),
        200,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
