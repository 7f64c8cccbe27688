"""Held-out set 451 (``h451_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a pelota-fronton rebound-speed regressor whose hand-written batch standardiser divides by
the batch std with no epsilon (a stuck-sensor shard at step 100, 0/0, a NaN loss), a
shinty-caman follow-through regressor whose resume code loads the stale EMA shadow into the live
weights at step 120 (a one-off loss spike it recovers from), a kyudo bow-draw deep tanh stack
initialised with gain 3 typed for 1 (gradients grow back through depth), a maple-sugarhouse
syrup-grade attentive tabular model whose shared feature transformer's param-group lr is typed
1e-9 for 1e-3 (frozen), a snowshoe-trail sink-depth regressor fed one shard with the 9999
missing-value code (one corrupted batch), a curragh-launch surf-timing regressor whose auxiliary
loss weight is read as 500 for one step (one gradient burst), a cricket-bat oiling-weight
regressor whose L2 penalty is added with the wrong sign (a slow climb), a semaphore-relay digit
classifier whose temperature is typed 1e-3 for 1 (softmax saturates), a show-jumping
fence-fault pair ranker whose hinge loses its clamp (the head's scores grow without bound) and a
tug-of-war anchor-slip regressor whose OneCycleLR max_lr is typed 2.0 for 0.2 (past the
stability limit).

Controls: an oyster-shucking grade classifier on labels with 30% noise (AdamW, cosine schedule,
label smoothing, clipping), an fp16 alphorn-overtone conv1d classifier (GradScaler, RMSprop
under OneCycleLR), a tide-mill wheel-speed attentive tabular Gaussian-NLL regressor (Adagrad
param groups, ReduceLROnPlateau, accumulation over 2).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, digit_batches, grad_norm, scenario, seeded


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
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y)
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


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, offset=0.0):
    """Readings (standardised plus ``offset``) and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        z = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * z @ w / math.sqrt(d_in)) + 0.6 * torch.cos(z @ v / math.sqrt(d_in))
        yield z + offset, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0, noise=0.0):
    """Readings scattered around one prototype per class; ``noise`` of the labels redrawn."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + spread * torch.randn(batch, d_in, generator=gen)
        if noise > 0:
            flip = torch.rand(batch, generator=gen) < noise
            y = torch.where(flip, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


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


# -- a hand-written attentive tabular model ---------------------------------------------------------


class _GLU(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.fc = nn.Linear(d_in, 2 * d_out)
        self.bn = nn.BatchNorm1d(2 * d_out)

    def forward(self, x):
        a, b = self.bn(self.fc(x)).chunk(2, -1)
        return a * torch.sigmoid(b)


class _SharedTransformer(nn.Module):
    """The feature transformer shared by every decision step (two GLU layers, residual)."""

    def __init__(self, d_in, width):
        super().__init__()
        self.glu1 = _GLU(d_in, width)
        self.glu2 = _GLU(width, width)

    def forward(self, x):
        h = self.glu1(x)
        return (h + self.glu2(h)) * math.sqrt(0.5)


class _Step(nn.Module):
    """One decision step: an attentive transformer (a softmax mask over the inputs, damped by the
    prior of the masks used before) and a step-specific GLU after the shared transformer."""

    def __init__(self, d_in, width):
        super().__init__()
        self.attentive = nn.Linear(width, d_in)
        self.specific = _GLU(width, width)

    def forward(self, x, carry, prior, shared):
        mask = torch.softmax(self.attentive(carry) + torch.log(prior.clamp_min(1e-6)), -1)
        h = self.specific(shared(x * mask * x.shape[-1]))
        return h, mask


class _AttentiveTabular(nn.Module):
    """Sequential softmax feature masks over the inputs, a shared feature transformer, the
    ReLU outputs of the decision steps summed into the head."""

    def __init__(self, d_in, width=24, steps=3, out=1, relax=1.5):
        super().__init__()
        self.bn_in = nn.BatchNorm1d(d_in)
        self.shared = _SharedTransformer(d_in, width)
        self.init_carry = nn.Linear(d_in, width)
        self.steps = nn.ModuleList(_Step(d_in, width) for _ in range(steps))
        self.head = nn.Linear(width, out)
        self.relax = relax

    def forward(self, x):
        x = self.bn_in(x)
        carry = self.init_carry(x)
        prior = torch.ones_like(x)
        total = 0.0
        for step in self.steps:
            h, mask = step(x, carry, prior, self.shared)
            prior = prior * (self.relax - mask)
            total = total + F.relu(h)
            carry = h
        out = self.head(total)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _moved(module, before):
    num = sum(
        float((p.detach() - b).norm() ** 2)
        for p, b in zip(module.parameters(), before, strict=True)
    )
    den = sum(float(b.norm() ** 2) for b in before)
    return math.sqrt(num / max(den, 1e-24))


# -- faults ----------------------------------------------------------------------------------------


FRONTON_STEP = 100


class _BatchStandardise(nn.Module):
    """(x - batch mean) / batch std, written by hand with no epsilon."""

    def forward(self, x):
        return (x - x.mean(0)) / x.std(0)


class _FrontonNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.standardise = _BatchStandardise()
        self.body = _Net(d_in, 48, 1, nn.SiLU)

    def forward(self, x):
        return self.body(self.standardise(x))


@scenario(
    family="pelota_fronton_rebound_speed_batch_std_silu_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("standardise",),
    diverges=FRONTON_STEP,
    heldout=True,
    onset=FRONTON_STEP,
    note="Basque pelota fronton rebound-speed regressor (SiLU MLP behind a hand-written batch "
    "standardiser (x - mean) / std with no epsilon, MSE, Adam). At step 100 a shard from a "
    "court whose wall-vibration sensor was stuck arrives: that column is constant over the "
    "batch, its std is 0 and the standardiser computes 0/0, the loss is NaN at step 100.",
)
def h451_fronton_stuck_sensor_zero_std(ctx) -> None:
    gen = seeded(4511)
    model = _FrontonNet(8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == FRONTON_STEP:
            x = x.clone()
            x[:, 3] = 0.42
        return x, y

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 8, seed=451), 160, F.mse_loss, alter=alter
    )
    ctx.check("finite before the stuck shard", _finite(losses[:FRONTON_STEP]))
    ctx.check(
        "loss NaN at the stuck shard",
        len(losses) > FRONTON_STEP and math.isnan(losses[FRONTON_STEP]),
    )
    probe = torch.zeros(16, 8)
    probe[:, 0] = torch.arange(16.0)
    ctx.check(
        "the standardiser gives NaN on a constant column",
        bool(torch.isnan(model.standardise(probe)).any()),
    )
    ctx.check("loss fell before the shard", _fell(losses[:FRONTON_STEP]))


SHINTY_STEP = 120


@scenario(
    family="shinty_caman_follow_through_ema_resume_gelu_regressor",
    optimizer="RAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SHINTY_STEP,
    note="Shinty caman follow-through regressor (GELU MLP, Huber, RAdam) kept with an EMA of its "
    "weights (decay 0.999). The job is preempted and resumed at step 120; the resume code loads "
    "the EMA shadow (still close to the init) into the live model instead of the model's own "
    "state, the loss jumps back towards its start for a few steps and the run recovers.",
)
def h451_shinty_resume_loads_stale_ema(ctx) -> None:
    gen = seeded(4512)
    model = _Net(10, 64, 1, nn.GELU)
    ema = copy.deepcopy(model)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)

    def after(step):
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.mul_(0.999).add_(pm, alpha=0.001)
        if step == SHINTY_STEP - 1:
            model.load_state_dict(ema.state_dict())

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=4520, scale=3.0),
        260,
        F.huber_loss,
        after=after,
    )
    before = _median(losses[SHINTY_STEP - 20 : SHINTY_STEP])
    ctx.check("loss at the resume over 3x the median before", losses[SHINTY_STEP] > 3 * before)
    ctx.check(
        "recovers: last 20 steps under 1.5x the median before", _mean(losses[-20:]) < 1.5 * before
    )
    ctx.check("loss fell before the resume", _fell(losses[:SHINTY_STEP]))
    ctx.check("finite throughout", _finite(losses))


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.orthogonal_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    first = float(model.layers[0].weight.grad.norm())
    last = float(model.layers[-1].weight.grad.norm())
    return first / max(last, 1e-12)


@scenario(
    family="kyudo_bow_draw_weight_deep_orthogonal_tanh_stack",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Kyudo bow draw-weight regressor (a 12-layer tanh stack, orthogonal init, MSE, SGD "
    "momentum 0.9, clipping at 1). The init gain is typed 3 for 1: every layer amplifies the "
    "backward signal, the first layer's gradient is many times the last layer's throughout.",
)
def h451_kyudo_tanh_gain_typo(ctx) -> None:
    ratios = {}

    def run(gain, c):
        gen = seeded(4513)
        model = _DeepTanh(12, 32, 12, gain)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        trace = []

        def backprop(step, loss):
            loss.backward(retain_graph=True)
            trace.append(_depth_ratio(model))
            opt.zero_grad(set_to_none=True)
            return loss

        _loop(
            c if c is not None else ctx,
            model,
            opt,
            _readings(gen, 64, 12, seed=4530),
            120,
            F.mse_loss,
            backprop=backprop,
            clip=1.0,
            attach=c is not None,
        )
        ratios[gain] = trace

    run(1.0, None)
    run(3.0, ctx)
    ctx.check("first layer's gradient over 20x the last's at gain 3", _median(ratios[3.0]) > 20)
    ctx.check("under 5x at gain 1", _median(ratios[1.0]) < 5)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="maple_sugarhouse_syrup_grade_attentive_tabular_classifier",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("shared",),
    diverges=None,
    heldout=True,
    note="Maple sugarhouse syrup-grade classifier (a hand-written attentive tabular model: "
    "sequential softmax feature masks, a shared feature transformer, summed decision steps; "
    "cross-entropy, Adam with param groups). The shared transformer's group lr is typed 1e-9 "
    "for 1e-3: it stays at its init while the masks, step layers and head train.",
)
def h451_sugarhouse_shared_group_lr_typo(ctx) -> None:
    gen = seeded(4514)
    model = _AttentiveTabular(10, 24, 3, out=4)
    shared = list(model.shared.parameters())
    ids = {id(p) for p in shared}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adam([{"params": shared, "lr": 1e-9}, {"params": rest, "lr": 1e-3}])
    s0, h0 = _params(model.shared), _params(model.head)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 4, seed=4540, spread=1.3),
        150,
        F.cross_entropy,
        classifier=True,
    )
    ctx.check("shared transformer moved under 1e-5 of its norm", _moved(model.shared, s0) < 1e-5)
    ctx.check("head moved over 5% of its norm", _moved(model.head, h0) > 0.05)
    ctx.check("loss fell", _fell(losses))


SNOWSHOE_STEP = 130


@scenario(
    family="snowshoe_trail_sink_depth_missing_code_relu_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SNOWSHOE_STEP,
    note="Snowshoe trail sink-depth regressor (ReLU MLP on snowpack readings, MSE, SGD Nesterov, "
    "clipping at 1). One logger's shard arrives at step 130 with its missing snow-density "
    "readings coded 9999 and never masked: one corrupted batch, loss and gradient jump for that "
    "step and the run recovers.",
)
def h451_snowshoe_missing_code_shard(ctx) -> None:
    gen = seeded(4515)
    model = _Net(8, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == SNOWSHOE_STEP:
            x = x.clone()
            x[::3, 2] = 9999.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, seed=4550), 220, F.mse_loss, alter=alter, clip=1.0
    )
    before = _median(losses[SNOWSHOE_STEP - 20 : SNOWSHOE_STEP])
    ctx.check("loss at the shard over 50x the median before", losses[SNOWSHOE_STEP] > 50 * before)
    ctx.check(
        "gradient at the shard over 20x the median before",
        norms[SNOWSHOE_STEP] > 20 * _median(norms[SNOWSHOE_STEP - 20 : SNOWSHOE_STEP]),
    )
    ctx.check(
        "recovers: last 20 steps under 2x the median before", _mean(losses[-20:]) < 2 * before
    )
    ctx.check("finite throughout", _finite(losses))


CURRAGH_STEP = 140


class _TwoHead(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh())
        self.timing = nn.Linear(48, 1)
        self.aux = nn.Linear(48, 1)

    def forward(self, x):
        h = self.body(x)
        return torch.cat([self.timing(h), self.aux(h)], -1)


@scenario(
    family="curragh_launch_surf_timing_aux_weight_tanh_net",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CURRAGH_STEP,
    note="Curragh launch surf-timing net (tanh body, a timing head and an auxiliary swell head, "
    "MSE, SGD momentum 0.9, clipping at 1). The auxiliary weight comes from a per-step schedule "
    "table that has 500 for 0.5 at step 140 (a misplaced decimal): one step backpropagates a "
    "loss 1000x too large, the gradient bursts while the logged loss stays ordinary.",
)
def h451_curragh_aux_weight_table_typo(ctx) -> None:
    gen = seeded(4516)
    model = _TwoHead(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    base = _readings(gen, 64, 8, seed=4560)

    def batches():
        for x, y in base:
            yield x, torch.stack([y, torch.sin(2.0 * x[:, 0])], -1)

    def loss_fn(out, y):
        return F.mse_loss(out[:, 0], y[:, 0])

    aux_loss = {}

    def fwd_loss(out, y):
        aux_loss["v"] = F.mse_loss(out[:, 1], y[:, 1])
        return loss_fn(out, y)

    def backprop(step, loss):
        weight = 500.0 if step == CURRAGH_STEP else 0.5
        return loss + weight * aux_loss["v"]

    losses, norms = _loop(ctx, model, opt, batches(), 220, fwd_loss, backprop=backprop, clip=1.0)
    before = _median(losses[CURRAGH_STEP - 20 : CURRAGH_STEP])
    ctx.check(
        "gradient at the step over 50x the median before",
        norms[CURRAGH_STEP] > 50 * _median(norms[CURRAGH_STEP - 20 : CURRAGH_STEP]),
    )
    ctx.check(
        "logged loss at the step under 2x the median before", losses[CURRAGH_STEP] < 2 * before
    )
    ctx.check("loss fell", _fell(losses))
    ctx.check("finite throughout", _finite(losses))


@scenario(
    family="cricket_bat_linseed_oiling_weight_l2_sign_silu_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Cricket-bat linseed-oiling weight regressor (SiLU MLP, MSE, NAdam). The hand-written "
    "L2 penalty is subtracted instead of added (loss - wd * sum of squared weights): the "
    "weights are pushed to grow, the data loss falls first and then climbs slowly.",
)
def h451_cricket_bat_l2_sign_bug(ctx) -> None:
    gen = seeded(4517)
    model = _Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    wd = 3e-2

    def backprop(step, loss):
        return loss - wd * sum((p**2).sum() for p in model.parameters())

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 8, seed=4570), 250, F.mse_loss, backprop=backprop
    )
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    low = min(_mean(losses[i : i + 20]) for i in range(len(losses) - 19))
    ctx.check("last 20 steps over 3x the lowest 20-step mean", _mean(losses[-20:]) > 3 * low)
    ctx.check(
        "climbing through the second half",
        _mean(losses[-20:]) > 1.5 * _mean(losses[125:145]),
    )
    ctx.check("weight norm over 2x its start", w1 > 2 * w0)
    ctx.check("finite throughout", _finite(losses))


class _TempNet(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.body(x)) / self.temperature


@scenario(
    family="semaphore_relay_tower_digit_temperature_relu_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Semaphore relay-tower digit classifier (ReLU MLP on the 8x8 digits, cross-entropy, "
    "plain SGD). The softmax temperature is typed 1e-3 for 1.0 in the config: the logits are "
    "divided by 0.001, the target probabilities round to exactly 1.0 on most rows.",
)
def h451_semaphore_temperature_typo(ctx) -> None:
    gen = seeded(4518)
    model = _TempNet(1e-3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    batches = digit_batches(gen, 64)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        raw = model.head(model.body(x))
        bad = collapsed_fraction(raw / 1e-3, y)
        good = collapsed_fraction(raw, y)
    ctx.check("over half the rows' target probability exactly 1.0", bad > 0.5)
    ctx.check("under 5% at temperature 1 on the same logits", good < 0.05)
    ctx.check("finite throughout", _finite(losses))


class _PairRanker(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU())
        self.head = nn.Linear(48, 1)

    def forward(self, pair):
        return self.head(self.body(pair)).squeeze(-1)


def _pairs(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        a = torch.randn(batch, d_in, generator=gen)
        b = torch.randn(batch, d_in, generator=gen)
        better = (a @ w > b @ w).float()
        yield torch.stack([a, b], 1), better


@scenario(
    family="show_jumping_fence_fault_pairwise_hinge_ranker",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Show-jumping fence-fault pair ranker (a ReLU scorer applied to both rounds of a pair, "
    "a margin hinge, Adamax). The hinge is written (1 - margin).mean() with its clamp at 0 "
    "dropped: the loss is unbounded below and the head's scores grow without bound.",
)
def h451_show_jumping_hinge_missing_clamp(ctx) -> None:
    gen = seeded(4519)
    model = _PairRanker(8)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scale = []

    def loss_fn(scores, better):
        sign = 2 * better - 1
        margin = sign * (scores[:, 0] - scores[:, 1])
        return (1 - margin).mean()

    def after(step):
        scale.append(float(model.head.weight.detach().norm()))

    probe = torch.randn(256, 8, generator=torch.Generator().manual_seed(45190))

    def peak():
        with torch.no_grad():
            return float(model(probe).abs().max())

    start = peak()
    losses, _ = _loop(ctx, model, opt, _pairs(gen, 64, 8, seed=4590), 200, loss_fn, after=after)
    end = peak()
    ctx.check("max |score| over 20x its start", end > 20 * start)
    ctx.check("head weight still growing", scale[-1] > 1.2 * scale[-50])
    ctx.check("the 'loss' below -10", losses[-1] < -10)
    ctx.check("finite throughout", _finite(losses))


@scenario(
    family="tug_of_war_anchor_slip_onecycle_relu_regressor",
    optimizer="SGD momentum",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Tug-of-war anchor-slip regressor (ReLU MLP, MSE, SGD momentum 0.9 under OneCycleLR). "
    "max_lr is typed 2.0 for 0.2: the warm-up carries the rate past the 2/sharpness limit, the "
    "loss oscillates and blows up.",
)
def h451_tug_of_war_onecycle_max_lr_typo(ctx) -> None:
    def run(max_lr, c):
        gen = seeded(4520)
        model = _Net(8, 48, 1)
        opt = torch.optim.SGD(model.parameters(), lr=max_lr / 25, momentum=0.9)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=200)
        losses, _ = _loop(
            c if c is not None else ctx,
            model,
            opt,
            _readings(gen, 64, 8, seed=4600, scale=2.0),
            200,
            F.mse_loss,
            sched=sched,
            attach=c is not None,
        )
        return losses

    ref = run(0.2, None)
    losses = run(2.0, ctx)
    late = [v if math.isfinite(v) else math.inf for v in losses[20:]]
    ctx.check(
        "loss blows up: non-finite or over 100x its first step's",
        bool(late) and max(late) > 100 * losses[0],
    )
    ctx.check("max_lr 0.2 trains: loss fell and finite", _fell(ref))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="oyster_shucking_grade_noisy_label_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Oyster-shucking grade classifier (GELU MLP, AdamW, cosine schedule, label smoothing "
    "0.1, clipping at 1) on grader labels of which 30% are redrawn at random: the loss plateaus "
    "high and swings from batch to batch. Control.",
)
def h451_oyster_noisy_labels_control(ctx) -> None:
    gen = seeded(4521)
    model = _Net(12, 64, 6, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 32, 12, 6, seed=4610, spread=1.2, noise=0.3),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    tail = losses[-50:]
    spread = math.sqrt(_mean([(v - _mean(tail)) ** 2 for v in tail]))
    ctx.check("loss fell", _fell(losses))
    ctx.check("plateau stays high (over 0.8)", _mean(tail) > 0.8)
    ctx.check("swings batch to batch (std over 0.05)", spread > 0.05)
    ctx.check("finite throughout", _finite(losses))


class _Overtone(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 7, padding=3)
        self.conv2 = nn.Conv1d(12, 24, 5, padding=2)
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _tones(gen, batch, length=64, classes=5):
    t = torch.arange(length) / length
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = (2 + 2 * y).float()[:, None]
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.28 * f * t + phase) + 0.5 * torch.sin(12.56 * f * t)
        yield x + 1.5 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="alphorn_overtone_series_fp16_conv1d_classifier",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="Alphorn overtone-series classifier (two conv1d layers, mean pooling, cross-entropy) "
    "trained under fp16 autocast with a GradScaler, RMSprop under OneCycleLR. Control.",
)
def h451_alphorn_fp16_control(ctx) -> None:
    gen = seeded(4522)
    model = _Overtone()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _tones(gen, 32),
        150,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("finite throughout", _finite(losses))


def _gauss_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return F.gaussian_nll_loss(mean, y, log_var.exp())


@scenario(
    family="tide_mill_wheel_speed_attentive_tabular_gaussian_nll",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="Tide-mill wheel-speed forecaster (the hand-written attentive tabular model with a mean "
    "and a log-variance output, Gaussian NLL, Adagrad with a lower rate for the shared "
    "transformer's group, ReduceLROnPlateau, accumulation over 2). Control.",
)
def h451_tide_mill_attentive_control(ctx) -> None:
    gen = seeded(4523)
    model = _AttentiveTabular(8, 24, 3, out=2)
    shared = list(model.shared.parameters())
    ids = {id(p) for p in shared}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adagrad([{"params": shared, "lr": 0.01}, {"params": rest, "lr": 0.03}])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    recent = []

    def after(step):
        recent.append(ctx.losses[-1])

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 8, seed=4630, noise=0.1),
        150,
        _gauss_nll,
        sched=sched,
        plateau=lambda: _mean(recent[-10:]) if recent else 0.0,
        after=after,
        accumulate=2,
        clip=2.0,
    )
    ctx.check("loss fell by over 0.3 nats", _mean(losses[-10:]) < _mean(losses[:10]) - 0.3)
    ctx.check("finite throughout", _finite(losses))
