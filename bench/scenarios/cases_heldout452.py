"""Held-out set 452 (``h452_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: an oyster-reef spat-density deep sets regressor (a per-shell encoder, sum pooling, a
reef-level decoder) fed one survey shard in millimetres for metres (one corrupted batch), a
goldbeater leaf-gauge classifier whose softmax temperature is typed 0.001 for 1.0 (softmax
saturates), a glazier lead-came solder regressor under fp16 autocast whose gauge channel arrives
in pascals for megapascals from step 80 (fp16 overflow), a spurrier rowel-temper regressor whose
hand-written weight decay multiplies by (1 + lr * wd) for (1 - lr * wd) (a slow climb), a
quarryman plug-and-feather split regressor that takes sqrt(hole depth - feather length) with no
clamp (a short hole at step 90, sqrt of a negative), a slate-splitter riving two-group regressor
whose trunk lr is typed 1e-9 for 1e-2 (frozen under Adagrad), a canoe-pole setting-stroke Elman
RNN whose recurrent init gain is typed 3 for 1 (gradients grow back through time), a bowls
jack-touch BCE net whose curriculum loss-weight table has step 120 typed 1000 for 1.0 (one
gradient burst), a girdler buckle-tongue regressor whose fc2 biases are initialised -3 (ReLUs
die) and a plumassier plume-grade classifier fed raw logits to nll_loss (the head's logits grow
without bound).

Controls: a chimney-swift roost-entry regressor trained with sharpness-aware minimisation (SGD
momentum base, two forward-backward passes a step); an fp16 swage-block hole-fit Conv1d
classifier (GradScaler, Adam under OneCycleLR, label smoothing, clipping); a bicycle-spoke tension
Gaussian-NLL net (Adamax, linear warm-up then ReduceLROnPlateau, accumulation over 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.0 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


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


# -- 1. data_outlier: a deep sets model over the shells of an oyster-reef quadrat -------------------


class _DeepSets(nn.Module):
    """phi encodes each shell, the encodings are summed over the quadrat, rho decodes the sum."""

    def __init__(self, d_el=4, hidden=32):
        super().__init__()
        self.phi = nn.Sequential(
            nn.Linear(d_el, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x):  # x: (batch, shells, features)
        return self.rho(self.phi(x).sum(1) / 10.0).squeeze(-1)


def _quadrats(gen, batch=32, shells=12, seed=452):
    """Shell length/height/width (metres, about 0.05) and live flag; target: live spat density."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        size = 0.05 + 0.015 * torch.randn(batch, shells, 3, generator=gen)
        live = (torch.rand(batch, shells, 1, generator=gen) < 0.6).float()
        x = torch.cat([size, live], -1)
        z = ((x - torch.tensor([0.05, 0.05, 0.05, 0.6])) / torch.tensor([0.015] * 3 + [0.5])) @ w
        y = torch.tanh(z.mean(1)) + 0.5 * live.mean((1, 2))
        yield x * torch.tensor([20.0, 20.0, 20.0, 1.0]), y


OYSTER_SHARD = 110


@scenario(
    family="oyster_reef_spat_density_deep_sets_regressor",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=OYSTER_SHARD,
    note="Oyster-reef spat-density regressor (a hand-written deep sets model: a per-shell ReLU "
    "encoder phi, sum pooling over the quadrat, a reef-level decoder rho; Huber loss, Adam 3e-3, "
    "clipping at 1). The survey shard read at step 110 came from a team logging shell sizes in "
    "millimetres for metres: every size feature of that one batch is 1000x too large. The loss "
    "and the gradient jump on that batch, clipping bounds the step, and the run recovers.",
)
def h452_oyster_reef_spat_outlier(ctx):
    gen = seeded(4521)
    model = _DeepSets()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == OYSTER_SHARD:
            x = x.clone()
            x[..., :3] *= 1000.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _quadrats(gen), 220, nn.HuberLoss(), alter=alter, clip=1.0
    )
    before_l, before_g = _median(losses[60:OYSTER_SHARD]), _median(norms[60:OYSTER_SHARD])
    ctx.check(
        "loss over 50x the median before on the mm shard", losses[OYSTER_SHARD] > 50 * before_l
    )
    ctx.check("gradient over 20x the median before", norms[OYSTER_SHARD] > 20 * before_g)
    ctx.check("recovers: last 20 under 2x the median before", _mean(losses[-20:]) < 2 * before_l)
    ctx.check("trained before the shard", _fell(losses[:OYSTER_SHARD]))


# -- 2. softmax_collapse: goldbeater leaf-gauge classifier with a temperature typo -----------------


class _TempNet(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.GELU()
        self.head = nn.Linear(64, classes)
        self.temperature = temperature

    def raw(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def forward(self, x):
        return self.raw(x) / self.temperature


@scenario(
    family="goldbeater_leaf_gauge_temperature_gelu_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Goldbeater leaf-gauge classifier (GELU MLP on hammering-pass and skin-mould readings, "
    "7 gauge grades, cross-entropy, RMSprop 1e-3). The config's softmax temperature is typed "
    "0.001 for 1.0, so the head's logits are multiplied by 1000 and the softmax saturates: most "
    "rows' target probability rounds to exactly 1.0 in float32.",
)
def h452_goldbeater_leaf_temperature(ctx):
    gen = seeded(4522)
    model = _TempNet(12, 7, temperature=0.001)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    data = _grades(gen, 64, 12, 7, seed=4522, spread=0.9)
    fracs, fracs_ref = [], []

    def after(step):
        if step >= 170:
            x, y = next(probe)
            with torch.no_grad():
                raw = model.raw(x)
            fracs.append(collapsed_fraction(raw / model.temperature, y))
            fracs_ref.append(collapsed_fraction(raw, y))

    probe = _grades(torch.Generator().manual_seed(99), 128, 12, 7, seed=4522, spread=0.9)
    losses, _ = _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True, after=after)
    ctx.check("over half the rows' target probability exactly 1.0 (last 30)", _mean(fracs) > 0.5)
    ctx.check("under 5% at temperature 1 on the same logits", _mean(fracs_ref) < 0.05)
    ctx.check("finite", _finite(losses))


# -- 3. amp_overflow: glazier lead-came solder regressor, a unit change under fp16 autocast -------

GLAZIER_STEP = 80


@scenario(
    family="glazier_lead_came_solder_fp16_relu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=GLAZIER_STEP,
    heldout=True,
    onset=GLAZIER_STEP,
    note="Glazier lead-came solder-joint strength regressor (ReLU MLP, MSE, fp16 autocast with a "
    "GradScaler, AdamW 2e-3). From step 80 the came-press gauge channel arrives in pascals for "
    "megapascals (1e6x): in float32 the batch is finite, but under autocast fc1's fp16 input and "
    "output overflow past 65504 to inf, and the loss is non-finite at step 80.",
)
def h452_glazier_lead_came_fp16(ctx):
    gen = seeded(4523)
    model = _Net(10, 48)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    seen = {}

    def alter(step, x, y):
        if step >= GLAZIER_STEP:
            x = x.clone()
            x[:, 3] = x[:, 3].abs() * 1e6 + 1e5
            if "x" not in seen:
                seen["x"] = x
        return x, y

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=4523),
        160,
        F.mse_loss,
        alter=alter,
        scaler=scaler,
        amp=True,
    )
    x = seen.get("x", torch.zeros(1, 10))
    with torch.no_grad():
        f32 = model.fc1(x)
        with torch.autocast("cpu", dtype=torch.float16):
            f16 = model.fc1(x)
    ctx.check("batch finite in float32 through fc1", bool(torch.isfinite(f32).all()))
    ctx.check("fc1's fp16 output non-finite under autocast", not bool(torch.isfinite(f16).all()))
    ctx.check("finite before step 80", _finite(losses[:GLAZIER_STEP]))
    ctx.check(
        "loss non-finite at step 80",
        len(losses) > GLAZIER_STEP and not math.isfinite(losses[GLAZIER_STEP]),
    )
    ctx.check("trained before", _fell(losses[:GLAZIER_STEP]))


# -- 4. loss_divergence: spurrier rowel-temper regressor, a weight-decay sign bug ----------------


@scenario(
    family="spurrier_rowel_temper_silu_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Spurrier rowel-temper hardness regressor (SiLU MLP on forge and quench readings, MSE, "
    "plain SGD 0.005). The hand-written decoupled weight decay after each step multiplies "
    "the weights by (1 + lr * wd) for (1 - lr * wd), wd 1.2: the weights grow a little every step, "
    "the loss falls first, then climbs slowly through the second half of the run.",
)
def h452_spurrier_rowel_decay_sign(ctx):
    gen = seeded(4524)
    model = _Net(8, 32, act=nn.SiLU)
    lr, wd = 0.005, 1.2
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 8, seed=4524), 260, F.mse_loss, after=after
    )
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    blocks = [_mean(losses[i : i + 20]) for i in range(0, len(losses) - 19, 20)]
    ctx.check("last 20 over 3x the lowest 20-step mean", _mean(losses[-20:]) > 3 * min(blocks))
    ctx.check(
        "climbing through the last 140 steps",
        _mean(losses[-20:]) > _mean(losses[-80:-60]) > _mean(losses[-140:-120]),
    )
    ctx.check("weight norm over 2x", w1 > 2 * w0)
    ctx.check("finite", _finite(losses))


# -- 5. nonfinite: quarryman plug-and-feather split regressor, sqrt with no clamp ----------------


class _FeatherGap(nn.Module):
    """sqrt(hole depth - feather length): the wedge's free travel, written with no clamp."""

    def forward(self, depth, feather):
        return torch.sqrt(depth - feather)


class _SplitNet(nn.Module):
    def __init__(self, d_in=7, hidden=40):
        super().__init__()
        self.gap = _FeatherGap()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        g = self.gap(x[:, 0:1], x[:, 1:2])
        h = torch.cat([g, x[:, 2:]], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


def _holes(gen, batch=64, seed=4525):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, generator=g)
    while True:
        depth = 1.2 + 0.2 * torch.rand(batch, 1, generator=gen)
        feather = 0.6 + 0.3 * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, 7, generator=gen)
        y = torch.sqrt(depth - feather).squeeze(1) + 0.4 * torch.tanh(rest @ w / 2.6)
        yield torch.cat([depth, feather, rest], 1), y


QUARRY_STEP = 90


@scenario(
    family="quarryman_plug_feather_split_sqrt_gelu_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("gap",),
    diverges=QUARRY_STEP,
    heldout=True,
    onset=QUARRY_STEP,
    note="Quarryman plug-and-feather split-force regressor (GELU MLP, Huber, RAdam 2e-3). The "
    "model's first feature is sqrt(hole depth - feather length), written with no clamp. At step "
    "90 a batch holds a hole logged short (depth 0.3 for 1.3 m): depth - feather is negative, "
    "sqrt gives NaN, and the loss is NaN at step 90.",
)
def h452_quarryman_plug_sqrt(ctx):
    gen = seeded(4525)
    model = _SplitNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == QUARRY_STEP:
            x = x.clone()
            x[5, 0] = 0.3
            seen["x"] = x
        return x, y

    losses, _ = _loop(ctx, model, opt, _holes(gen), 200, nn.HuberLoss(), alter=alter)
    with torch.no_grad():
        x = seen.get("x", torch.ones(1, 9))
        g = model.gap(x[:, 0:1], x[:, 1:2])
    ctx.check("gap output has NaN on the short hole", bool(torch.isnan(g).any()))
    ctx.check("finite before step 90", _finite(losses[:QUARRY_STEP]))
    ctx.check("loss NaN at step 90", len(losses) > QUARRY_STEP and math.isnan(losses[QUARRY_STEP]))
    ctx.check("trained before", _fell(losses[:QUARRY_STEP]))


# -- 6. update_ratio_out_of_range: slate-splitter two-group regressor, trunk lr typo -------------


@scenario(
    family="slate_splitter_riving_two_group_relu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Slate-splitter riving-thickness regressor (ReLU MLP, MSE, Adagrad with two param groups: "
    "trunk fc1+fc2 and head). The trunk group's lr is typed 1e-9 for 1e-2; the head group's is "
    "1e-2. The trunk receives gradients but its weights practically never move.",
)
def h452_slate_splitter_two_group(ctx):
    gen = seeded(4526)
    model = _Net(10, 48)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-2}]
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    gnorms = []

    def after(step):
        gnorms.append(float(model.fc1.weight.grad.norm()))

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, seed=4526), 200, F.mse_loss, after=after
    )
    ctx.check("fc1 moves under 1e-5 of its norm", _rel_change(w1, model.fc1.weight) < 1e-5)
    ctx.check("fc2 moves under 1e-5 of its norm", _rel_change(w2, model.fc2.weight) < 1e-5)
    ctx.check("fc1 receives gradients", _median(gnorms) > 1e-4)
    ctx.check("the head moves over 5%", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("finite", _finite(losses))


# -- 7. exploding_gradients: canoe-pole setting-stroke Elman RNN, recurrent gain typo ------------


class _Elman(nn.Module):
    def __init__(self, d_in=3, hidden=32, gain=1.0):
        super().__init__()
        self.cell = nn.Module()
        self.cell.wx = nn.Linear(d_in, hidden)
        self.cell.wh = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.cell.wh.weight, gain=gain)
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):  # (batch, time, d_in)
        h = torch.zeros(x.shape[0], self.cell.wh.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.cell.wx(x[:, t]) + self.cell.wh(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _strokes(gen, batch=32, steps=30):
    while True:
        x = 0.5 * torch.randn(batch, steps, 3, generator=gen)
        y = 0.5 * torch.tanh(x[:, -8:, 0].sum(1)) + 0.3 * x[:, -3:, 1].mean(1)
        yield x, y


def _grad_ratio(model, gen):
    x, y = next(_strokes(gen))
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    first = float(model.states[0].grad.norm())
    last = float(model.states[-1].grad.norm())
    model.zero_grad()
    return first / max(last, 1e-12)


@scenario(
    family="canoe_pole_setting_stroke_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.wh", "cell"),
    diverges=None,
    heldout=True,
    note="Canoe-poling setting-stroke regressor (a hand-written tanh Elman RNN over 30 pole-force "
    "readings, MSE, SGD Nesterov 0.01 momentum 0.9, clipping at 1). The recurrent weight's "
    "orthogonal init gain is typed 3.0 for 1.0: gradients grow back through time, the first "
    "state's gradient far above the last state's.",
)
def h452_canoe_pole_elman(ctx):
    gen = seeded(4527)
    model = _Elman(gain=3.0)
    ref = _Elman(gain=1.0)
    r_bad = _grad_ratio(model, torch.Generator().manual_seed(7))
    r_ref = _grad_ratio(ref, torch.Generator().manual_seed(7))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    ratios = []

    def after(step):
        if step % 20 == 0:
            ratios.append(_grad_ratio(model, torch.Generator().manual_seed(step)))

    losses, _ = _loop(ctx, model, opt, _strokes(gen), 120, F.mse_loss, clip=1.0, after=after)
    ctx.check("dL/dh_0 over 20x dL/dh_29 at the start", r_bad > 20)
    ctx.check("under 5x at gain 1", r_ref < 5)
    ctx.check("over 10x in median during training", _median(ratios) > 10)
    ctx.check("finite", _finite(losses))


# -- 8. gradient_spike: bowls jack-touch BCE net, a curriculum loss-weight typo -------------------

BOWLS_STEP = 120


def _touches(gen, batch=64, d_in=8, seed=4528):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        p = torch.sigmoid(2.0 * torch.tanh(x @ w / math.sqrt(d_in)) * 2)
        yield x, (torch.rand(batch, generator=gen) < p).float()


@scenario(
    family="bowls_jack_touch_tanh_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=BOWLS_STEP,
    note="Lawn-bowls jack-touch classifier (tanh MLP on delivery readings, one logit, BCE with "
    "logits, plain SGD 0.1, clipping at 1). The curriculum's per-step loss-weight table has step "
    "120 typed 1000 for 1.0: the logged loss is ordinary, the backpropagated loss is 1000x for "
    "that one step, the gradient bursts, clipping bounds the step and the run recovers.",
)
def h452_bowls_jack_spike(ctx):
    gen = seeded(4528)
    model = _Net(8, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weights = {BOWLS_STEP: 1000.0}

    def backprop(step, loss):
        return loss * weights.get(step, 1.0)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _touches(gen),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    before_g, before_l = _median(norms[60:BOWLS_STEP]), _median(losses[60:BOWLS_STEP])
    ctx.check("gradient over 100x the median before", norms[BOWLS_STEP] > 100 * before_g)
    ctx.check("logged loss ordinary at the spike", losses[BOWLS_STEP] < 1.5 * before_l)
    ctx.check("recovers: last 20 under 1.3x before", _mean(losses[-20:]) < 1.3 * before_l)
    ctx.check("trained", _fell(losses[:BOWLS_STEP], ratio=0.9))


# -- 9. loss_of_plasticity: girdler buckle-tongue regressor, fc2 biases initialised -3 -------------


def _girdler_run(ctx, bias, attach):
    gen = seeded(4529)
    model = _Net(10, 48)
    if bias is not None:
        nn.init.constant_(model.fc2.bias, bias)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, seed=4529), 200, F.mse_loss, attach=attach
    )
    x, _ = next(_readings(torch.Generator().manual_seed(5), 256, 10, seed=4529))
    with torch.no_grad():
        dead = dead_fraction(model.fc2(model.act1(model.fc1(x))))
    return losses, dead


@scenario(
    family="girdler_buckle_tongue_relu_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Girdler buckle-tongue bend-load regressor (ReLU MLP, MSE, NAdam 2e-3). fc2's biases are "
    "initialised to -3.0 (copied from a gate's bias_init in the config): almost every ReLU after "
    "fc2 is negative on every input from the start, gets no gradient and never recovers; the "
    "loss stalls above a correctly initialised run's.",
)
def h452_girdler_buckle_dead(ctx):
    losses, dead = _girdler_run(ctx, -3.0, True)
    ref_losses, ref_dead = _girdler_run(ctx, None, False)
    ctx.check("over 80% of act2's units dead at the end", dead > 0.8)
    ctx.check("under 20% at the default init", ref_dead < 0.2)
    ctx.check("loss over 1.3x the reference's", _mean(losses[-20:]) > 1.3 * _mean(ref_losses[-20:]))
    ctx.check("finite", _finite(losses))


# -- 10. output_logit_divergence: plumassier plume-grade classifier, nll_loss on raw logits -------


@scenario(
    family="plumassier_plume_grade_raw_logit_nll_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Plumassier plume-grade classifier (ReLU MLP on barb and rachis readings, 6 grades, "
    "AdamW 1e-3). The loss is F.nll_loss on the head's raw logits with no log_softmax: the "
    "'loss' is -logit[target], which has no minimum, so the target logits grow without bound "
    "and the loss goes ever more negative.",
)
def h452_plumassier_plume_nll(ctx):
    gen = seeded(4530)
    model = _Net(12, 48, out=6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    probe = next(_grades(torch.Generator().manual_seed(3), 256, 12, 6, seed=4530))[0]
    peaks = []

    def after(step):
        with torch.no_grad():
            peaks.append(float(model(probe).abs().max()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, seed=4530),
        200,
        F.nll_loss,
        classifier=True,
        after=after,
    )
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * peaks[0])
    ctx.check("still growing", peaks[-1] > 1.2 * peaks[150])
    ctx.check("the 'loss' below -10", losses[-1] < -10)


# -- 11. healthy: chimney-swift roost-entry regressor trained with SAM ---------------------------


@scenario(
    family="chimney_swift_roost_entry_sam_regressor",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Chimney-swift roost-entry rate regressor (tanh MLP on dusk light, temperature and wind "
    "readings, MSE) trained with sharpness-aware minimisation: an ascent step of radius 0.05 to "
    "the worst nearby weights, a second forward-backward there, then the SGD momentum 0.9 "
    "descent step (lr 0.05) from the original weights. Healthy control.",
)
def h452_chimney_swift_sam(ctx):
    gen = seeded(4531)
    model = _Net(8, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rho = 0.05
    data = _readings(gen, 64, 8, seed=4531, noise=0.1)
    ctx.attach(model, opt)
    params = list(model.parameters())
    losses = []
    for _ in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        with torch.no_grad():
            gn = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
            eps = [rho * p.grad / (gn + 1e-12) for p in params]
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x), y).backward()
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.sub_(e)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained: last 10 under 0.5x first 10", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))


# -- 12. healthy: fp16 swage-block hole-fit Conv1d classifier -----------------------------------


class _ConvNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _ring_tones(gen, batch=32, length=64, classes=5):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = (0.08 + 0.05 * y.float())[:, None]
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(f * t * 2 + phase) + 0.4 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    family="swage_block_hole_fit_fp16_conv1d_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Blacksmith's swage-block hole-fit classifier (ReLU Conv1d over the ring tone of a bar "
    "struck in the hole, 5 fit classes): fp16 autocast with a GradScaler, Adam under OneCycleLR "
    "(peak 5e-3), label smoothing 0.1, clipping at 1. Healthy control.",
)
def h452_swage_block_fp16(ctx):
    gen = seeded(4532)
    model = _ConvNet()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _ring_tones(gen),
        steps,
        nn.CrossEntropyLoss(label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("trained: last 10 under 0.6x first 10", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))


# -- 13. healthy: bicycle-spoke tension Gaussian-NLL net ----------------------------------------


class _GaussNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h).clamp(-6, 4)], 1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _spokes(gen, batch=32, d_in=8, seed=4533):
    base = _readings(gen, batch, d_in, seed, noise=0.0)
    while True:
        x, y = next(base)
        sd = 0.05 + 0.2 * torch.sigmoid(2 * x[:, 0])
        yield x, y + sd * torch.randn(batch, generator=gen)


@scenario(
    family="bicycle_spoke_tension_gaussian_nll_net",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Wheel-builder's bicycle-spoke tension regressor (SiLU MLP with a mean and a clamped "
    "log-variance head, Gaussian NLL on heteroscedastic pluck-tone readings): Adamax 4e-3 with a "
    "20-step linear warm-up, then ReduceLROnPlateau on a held-out batch, accumulation over 2, "
    "clipping at 1. Healthy control.",
)
def h452_bicycle_spoke_nll(ctx):
    gen = seeded(4533)
    model = _GaussNet()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    plateau_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_spokes(torch.Generator().manual_seed(11), batch=256))

    def held_loss():
        with torch.no_grad():
            return float(_gauss_nll(model(held[0]), held[1]))

    def before(step):
        if step < 20:
            for g in opt.param_groups:
                g["lr"] = 4e-3 * (step + 1) / 20

    def after(step):
        if step >= 20:
            plateau_sched.step(held_loss())

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _spokes(gen),
        200,
        _gauss_nll,
        before=before,
        after=after,
        clip=1.0,
        accumulate=2,
    )
    ctx.check(
        "trained: last 10 below first 10 by 0.5", _mean(losses[-10:]) < _mean(losses[:10]) - 0.5
    )
    ctx.check("finite", _finite(losses))
