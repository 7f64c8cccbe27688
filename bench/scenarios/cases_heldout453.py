"""Held-out set 453 (``h453_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a silt-plume turbidity forecaster (a hand-written patch transformer: patches of the
series as tokens, a linear forecast head) whose AdamW lr is typed 3e-2 for 3e-4 with no weight
decay (the attention logits grow), a felt-hat shrinkage regressor whose row counter is reset by a
logging hook before one step's backward (the sum-loss divided by 1 for 256 rows, one gradient
burst), a tea-roast drum regressor whose warm-up lambda has no min(., 1) (the lr keeps climbing
past 2/sharpness), a herring-smokehouse cure regressor whose Adam lr is typed 3e-2 for 3e-4 (its
ReLUs die), a turf-cutter sod-thickness Huber regressor fed one shard in millimetres for metres,
a brinefall-flow regressor whose batch min-max normaliser divides 0 by 0 when a sensor sticks, a
cane-sugar strike-point two-group regressor whose trunk lr is typed 1e-9 for 1e-3 (frozen under
RMSprop), a lime-kiln slaking-heat deep tanh MLP whose init gain is typed 3 for 1 (gradients grow
through depth), a dew-point fog-onset classifier whose logits are divided by a distillation
temperature typed 1e-3 for 1 (softmax saturates) and an axolotl gill-morph classifier whose
hand-written log-softmax subtracts the mean for the logsumexp (the head's logits grow without
bound).

Controls: a lacrosse stick-stringing pocket-depth regressor under a triangular CyclicLR (plain SGD, the
loss rises and falls with the cycle); an fp16 ice-skate sharpening hollow-grind classifier (GradScaler, AdamW
under OneCycleLR, label smoothing, clipping); a petrichor scent-intensity Gaussian-NLL net with a
tied-weight reconstruction branch (RAdam, ReduceLROnPlateau, accumulation over 2).
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
    batch, ``backprop(step, loss, out, y)`` returns the loss actually backpropagated,
    ``after(step)`` runs after the optimizer step. Stops after a non-finite loss (once
    ``ctx.step`` has seen it). With ``attach=False`` it is a reference run outside the monitor."""
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
            total = backprop(step, loss, out, y) if backprop is not None else loss
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
                sched.step(plateau(losses + [shown]))
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


def _series(gen, batch, context, horizon):
    """Windows of a turbidity-like series: two tides of random phase, a trend and noise."""
    t = torch.arange(context + horizon, dtype=torch.float32)
    while True:
        ph = 2 * math.pi * torch.rand(batch, 2, generator=gen)
        amp = 0.5 + torch.rand(batch, 2, generator=gen)
        s = amp[:, :1] * torch.sin(2 * math.pi * t / 12.4 + ph[:, :1])
        s = s + 0.5 * amp[:, 1:] * torch.sin(2 * math.pi * t / 6.2 + ph[:, 1:])
        s = s + 0.05 * torch.randn(batch, context + horizon, generator=gen)
        yield s[:, :context], s[:, context:]


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


# -- a hand-written patch transformer forecaster ---------------------------------------------------


class _Attention(nn.Module):
    """Multi-head self-attention written out, keeping the largest |q.k/sqrt(d)| it computed."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.max_logit = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        self.max_logit = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _PatchBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class _PatchForecaster(nn.Module):
    """A series cut into patches of ``patch`` readings, each a token; a linear forecast head."""

    def __init__(self, context=48, patch=6, horizon=8, dim=32, heads=2, depth=2):
        super().__init__()
        self.patch = patch
        self.patch_embed = nn.Linear(patch, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, context // patch, dim))
        self.blocks = nn.ModuleList(_PatchBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim * (context // patch), horizon)

    def forward(self, x):
        b = x.shape[0]
        z = self.patch_embed(x.reshape(b, -1, self.patch)) + self.pos
        for block in self.blocks:
            z = block(z)
        return self.head(self.norm(z).flatten(1))


def _max_attn(model):
    return max(block.attn.max_logit for block in model.blocks)


# -- faults ----------------------------------------------------------------------------------------


PLUME_LR = 3e-2


@scenario(
    family="silt_plume_turbidity_patch_transformer_forecaster",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Dredge silt-plume turbidity forecaster (a hand-written patch transformer: 48 readings "
    "cut into 8 patches of 6 as tokens, learnt positions, two pre-LN blocks, a linear forecast "
    "head over the flattened tokens for the next 8 readings, MSE). The AdamW lr is typed 3e-2 "
    "for 3e-4 and weight decay is 0, with no qk-norm: the query/key weights grow and the "
    "attention logits q.k/sqrt(d) grow with them.",
)
def h453_silt_plume_attention_growth(ctx):
    def run(lr, attach):
        gen = seeded(4531)
        model = _PatchForecaster()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        trace = []
        _loop(
            ctx,
            model,
            opt,
            _series(gen, 32, 48, 8),
            150,
            F.mse_loss,
            after=lambda s: trace.append(_max_attn(model)),
            attach=attach,
        )
        return trace

    ref = run(3e-4, attach=False)
    trace = run(PLUME_LR, attach=True)
    first = _mean(trace[:5])
    ctx.check("max attention logit over 20x its first steps'", max(trace[-20:]) > 20 * first)
    ctx.check(
        "max attention logit over 5x the 3e-4 run's at the end",
        _mean(trace[-20:]) > 5 * _mean(ref[-20:]),
    )
    ctx.check("the loss stays finite", _finite(ctx.losses))


FELT_STEP = 120


@scenario(
    family="hatmaker_felt_shrinkage_row_count_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=FELT_STEP,
    note="Hatmaker felt-hood shrinkage regressor (tanh MLP on fur blend, steam and planking "
    "features, sum-of-squares over rows divided by the row count, SGD momentum 0.9, clipping at "
    "5). At step 120 a logging hook resets the row counter before the backward pass, so the "
    "sum-loss is divided by 1 instead of 256 for that one step: one gradient burst on an ordinary "
    "logged loss; clipping caps the update and the run goes on.",
)
def h453_hatmaker_felt_row_count_reset(ctx):
    gen = seeded(4532)
    model = _Net(10, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def backprop(step, loss, out, y):
        rows = 1 if step == FELT_STEP else y.shape[0]
        return ((out.float() - y) ** 2).sum() / rows

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 256, 10, 4532), 220, F.mse_loss, backprop=backprop, clip=5.0
    )
    before = _median(norms[FELT_STEP - 30 : FELT_STEP])
    ctx.check("gradient over 50x the median before at onset", norms[FELT_STEP] > 50 * before)
    ctx.check(
        "the logged loss at onset is ordinary",
        losses[FELT_STEP] < 2 * _median(losses[FELT_STEP - 30 : FELT_STEP]),
    )
    ctx.check("the loss stays finite and falls", _fell(losses))


ROAST_WARM = 40


def _top_eig(model, x, y, iters=15):
    """The largest Hessian eigenvalue of the MSE on (x, y), by power iteration."""
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return abs(lam)


@scenario(
    family="tea_roast_drum_charge_temperature_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ROAST_WARM,
    note="Tea-roasting drum charge-temperature regressor (tanh MLP on leaf moisture, drum speed "
    "and batch weight, MSE, plain SGD at 0.3). The LambdaLR warm-up is written step / 40 with "
    "no min(., 1): past step 40 the lr keeps climbing linearly, lr times the top Hessian "
    "eigenvalue passes 2 and the loss blows up.",
)
def h453_tea_roast_warmup_no_cap(ctx):
    gen = seeded(4533)
    model = _Net(8, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / ROAST_WARM)
    probe = next(_readings(torch.Generator().manual_seed(9), 256, 8, 4533))
    edge = {}

    def after(step):
        if step % 5 == 0 and math.isfinite(ctx.losses[-1]) and ctx.losses[-1] < 1e3:
            lr = opt.param_groups[0]["lr"]
            edge[step] = lr * _top_eig(model, *probe)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 128, 8, 4533), 200, F.mse_loss, sched=sched, after=after
    )
    low = min(losses[:ROAST_WARM])
    blow = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 50 * low), None)
    ctx.check(
        "the loss blows up (over 50x its low) after the warm-up",
        blow is not None and blow > ROAST_WARM,
    )
    ctx.check("lr x top eigenvalue under 2 at the end of warm-up", edge.get(ROAST_WARM, 9.0) < 2.0)
    before = [v for s, v in edge.items() if blow is not None and s < blow]
    ctx.check("lr x top eigenvalue over 2 before the blow-up", bool(before) and max(before) > 2.0)


HERRING_LR = 3e-1


@scenario(
    family="herring_smokehouse_cure_time_dead_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Herring-smokehouse cure-time regressor (ReLU MLP on fish fat, brine and smoke "
    "features, MSE). The Adam lr is typed 3e-1 for 3e-4: the first large updates push the "
    "second layer's pre-activations negative and most of its ReLUs die for good; the loss "
    "stalls above what the 3e-4 run reaches.",
)
def h453_herring_smokehouse_dead_relus(ctx):
    probe = next(_readings(torch.Generator().manual_seed(7), 512, 12, 4534))[0]

    def run(lr, attach):
        gen = seeded(4534)
        model = _Net(12, hidden=48)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        with torch.no_grad():
            start = dead_fraction(model.fc2(model.act1(model.fc1(probe))))
        losses, _ = _loop(
            ctx, model, opt, _readings(gen, 64, 12, 4534), 200, F.mse_loss, attach=attach
        )
        with torch.no_grad():
            end = dead_fraction(model.fc2(model.act1(model.fc1(probe))))
        return losses, start, end

    ref, _, ref_end = run(3e-4, attach=False)
    losses, start, end = run(HERRING_LR, attach=True)
    ctx.check("over half of fc2's units dead at the end", end > 0.5)
    ctx.check("under 10% dead at the start", start < 0.1)
    ctx.check("the 3e-4 run keeps under 20% dead", ref_end < 0.2)
    ctx.check("the loss stalls above the 3e-4 run's", _mean(losses[-20:]) > 1.5 * _mean(ref[-20:]))


SOD_STEP = 110


@scenario(
    family="turf_cutter_sod_thickness_huber_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SOD_STEP,
    note="Turf-cutter sod-thickness regressor (ReLU MLP on blade depth, soil and roller "
    "features, Huber, SGD Nesterov momentum 0.9, clipping at 1). One shard at step 110 was "
    "exported with its lengths in millimetres for metres (features x1000): one corrupted "
    "batch; clipping caps the update and the run recovers.",
)
def h453_turf_cutter_millimetre_shard(ctx):
    gen = seeded(4535)
    model = _Net(9)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        return (x * 1000.0, y) if step == SOD_STEP else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 9, 4535), 220, F.huber_loss, alter=alter, clip=1.0
    )
    med = _median(losses[SOD_STEP - 30 : SOD_STEP])
    ctx.check("loss over 50x the median at the shard", losses[SOD_STEP] > 50 * med)
    ctx.check(
        "gradient over 20x the median at the shard",
        norms[SOD_STEP] > 20 * _median(norms[SOD_STEP - 30 : SOD_STEP]),
    )
    ctx.check(
        "recovers: the last 20 steps under 2x the median before", _mean(losses[-20:]) < 2 * med
    )


class _RangeNorm(nn.Module):
    """Per-batch min-max scaling of each sensor, with no floor on the range."""

    def forward(self, x):
        lo = x.min(0, keepdim=True).values
        hi = x.max(0, keepdim=True).values
        return (x - lo) / (hi - lo)


class _BrineNet(nn.Module):
    def __init__(self, d_in=8, hidden=40):
        super().__init__()
        self.norm = _RangeNorm()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(self.norm(x)))))
        return self.head(h).squeeze(-1)


BRINE_STEP = 90


@scenario(
    family="brinefall_outflow_range_norm_silu_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=BRINE_STEP,
    heldout=True,
    onset=BRINE_STEP,
    note="Brinefall outflow regressor (SiLU MLP behind a hand-written per-batch min-max "
    "normaliser of the sensor columns, MSE, NAdam). The normaliser divides by max - min with no "
    "floor; at step 90 the salinity probe freezes and reports one constant value for the whole "
    "batch, 0/0 in the normaliser, the loss is NaN.",
)
def h453_brinefall_stuck_sensor(ctx):
    gen = seeded(4536)
    model = _BrineNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == BRINE_STEP:
            x = x.clone()
            x[:, 3] = 0.7
        return x, y

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 4536), 160, F.mse_loss, alter=alter)
    ctx.check("finite before the stuck sensor", _finite(losses[:BRINE_STEP]))
    ctx.check(
        "the loss is NaN at step 90", len(losses) > BRINE_STEP and math.isnan(losses[BRINE_STEP])
    )
    ctx.check("the loss fell before it", _fell(losses[:BRINE_STEP]))


@scenario(
    family="cane_sugar_strike_point_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Cane-sugar boiling strike-point regressor (ReLU MLP on syrup Brix, pan temperature "
    "and vacuum features, MSE, RMSprop) with two param groups: the trunk's lr is typed 1e-9 for "
    "1e-3, the head's is 1e-3. The trunk is frozen in effect while the head alone learns.",
)
def h453_cane_sugar_trunk_lr_typo(ctx):
    gen = seeded(4537)
    model = _Net(10)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.RMSprop(
        [{"params": trunk, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-3}]
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 4537), 160, F.mse_loss)
    ctx.check("fc1 moves under 1e-5 of its norm", _rel_change(w1, model.fc1.weight) < 1e-5)
    ctx.check("fc2 moves under 1e-5 of its norm", _rel_change(w2, model.fc2.weight) < 1e-5)
    ctx.check("the head moves over 10%", _rel_change(wh, model.head.weight) > 0.1)
    ctx.check("finite", _finite(losses))


class _DeepTanh(nn.Module):
    def __init__(self, d_in=10, hidden=48, depth=16, gain=1.0):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, 1)
        for m in self.layers:
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.layers:
            x = torch.tanh(m(x))
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    return float(model.layers[0].weight.grad.norm() / model.layers[-1].weight.grad.norm())


@scenario(
    family="lime_kiln_slaking_heat_deep_tanh_mlp",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Lime-kiln slaking-heat regressor (sixteen tanh layers on quicklime grain size, burn "
    "temperature and water-ratio features, MSE, Adamax). The orthogonal init gain is typed 3 for 1: "
    "the net sits in the chaotic phase and the gradient grows back through depth, the first "
    "layer's over 20x the last's.",
)
def h453_lime_kiln_init_gain(ctx):
    def run(gain, attach):
        gen = seeded(4538)
        model = _DeepTanh(gain=gain)
        opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
        ratios = []
        orig = opt.step

        def step(*a, **k):
            ratios.append(_depth_ratio(model))
            return orig(*a, **k)

        opt.step = step
        losses, _ = _loop(
            ctx, model, opt, _readings(gen, 64, 10, 4538), 120, F.mse_loss, attach=attach
        )
        return losses, ratios

    _, ref = run(1.0, attach=False)
    losses, ratios = run(3.0, attach=True)
    ctx.check("first layer's gradient over 20x the last's at gain 3", _median(ratios[:20]) > 20)
    ctx.check("under 5x at gain 1", _median(ref[:20]) < 5)
    ctx.check("finite", _finite(losses))


class _TempNet(_Net):
    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, hidden=48, out=classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="dew_point_fog_onset_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Dew-point fog-onset classifier (GELU MLP on humidity, wind and cooling-rate readings, "
    "five onset classes, cross-entropy, Adagrad). The logits are divided by a temperature read "
    "from the distillation config, typed 1e-3 for 1.0: the softmax saturates and most rows' "
    "target probability rounds to exactly 1.0 in float32.",
)
def h453_dew_point_temperature_typo(ctx):
    gen = seeded(4539)
    model = _TempNet(12, 5, 1e-3)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 4539),
        150,
        F.cross_entropy,
        classifier=True,
    )
    x, y = next(_grades(torch.Generator().manual_seed(3), 256, 12, 5, 4539))
    with torch.no_grad():
        raw = model.head(model.features(x))
    ctx.check(
        "over half the rows' target probability exactly 1.0",
        collapsed_fraction(raw / 1e-3, y) > 0.5,
    )
    ctx.check("under 5% at temperature 1 on the same features", collapsed_fraction(raw, y) < 0.05)
    ctx.check("finite", _finite(losses))


class _MeanNormNet(_Net):
    """Its 'log-softmax' subtracts the mean logit instead of the logsumexp."""

    def log_probs(self, logits):
        return logits - logits.mean(-1, keepdim=True)


@scenario(
    family="axolotl_gill_morph_mean_norm_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Axolotl gill-morph classifier (ReLU MLP on gill-filament and water readings, four "
    "morph classes, Adam). The hand-written log-softmax subtracts the mean logit instead of the "
    "logsumexp, so -log p(target) is unbounded below: the head's target logit is pushed up "
    "without bound.",
)
def h453_axolotl_mean_for_logsumexp(ctx):
    gen = seeded(4540)
    model = _MeanNormNet(10, out=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    peak = []

    def loss_fn(out, y):
        return F.nll_loss(model.log_probs(out), y)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 4, 4540),
        200,
        loss_fn,
        classifier=True,
        after=lambda s: peak.append(float(model.head.weight.norm())),
    )
    x, _ = next(_grades(torch.Generator().manual_seed(4), 256, 10, 4, 4540))
    seeded(4540)
    fresh = _MeanNormNet(10, out=4)
    with torch.no_grad():
        start = float(fresh(x).abs().max())
        end = float(model(x).abs().max())
    ctx.check("max |logit| over 20x its start", end > 20 * start)
    ctx.check("the head's weight still growing", peak[-1] > 1.2 * peak[-50])
    ctx.check("the 'loss' below -10", losses[-1] < -10)


# -- healthy controls ------------------------------------------------------------------------------


CYCLE = 20
CYCLE_LO, CYCLE_HI = 0.02, 0.4


@scenario(
    family="lacrosse_stick_stringing_pocket_depth_cyclic_lr_regressor",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lacrosse stick-stringing pocket-depth regressor (tanh MLP on mesh, sidewall and "
    "shooter-string features, MSE, plain SGD) under a triangular CyclicLR between 0.02 and 0.4 "
    "with 20 steps up and 20 down: the loss rises and falls with the cycle while it trends "
    "down (control).",
)
def h453_lacrosse_pocket_cyclic_control(ctx):
    gen = seeded(4541)
    model = _Net(10, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=CYCLE_LO)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt,
        base_lr=CYCLE_LO,
        max_lr=CYCLE_HI,
        step_size_up=CYCLE,
        mode="triangular",
        cycle_momentum=False,
    )
    lrs = []
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4541),
        240,
        F.mse_loss,
        sched=sched,
        before=lambda s: lrs.append(opt.param_groups[0]["lr"]),
    )
    late = range(80, len(losses))
    hi = [losses[i] for i in late if lrs[i] > 0.7 * CYCLE_HI]
    lo = [losses[i] for i in late if lrs[i] < 0.2 * CYCLE_HI]
    ctx.check("the loss fell", _fell(losses))
    ctx.check(
        "the loss is higher at the cycle's high lr than at its low", _mean(hi) > 1.3 * _mean(lo)
    )


@scenario(
    family="ice_skate_sharpening_hollow_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Ice-skate sharpening hollow-grind classifier (GELU MLP on blade-profile readings, six "
    "hollow classes, fp16 autocast with a GradScaler, AdamW under OneCycleLR, label smoothing 0.1, "
    "clipping at 1; control).",
)
def h453_skate_hollow_fp16_control(ctx):
    gen = seeded(4542)
    model = _Net(16, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=160)
    scaler = torch.amp.GradScaler("cpu")
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 4542, spread=1.5),
        160,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell", _fell(losses, ratio=0.6))
    ctx.check("the scale stayed finite", _finite(ctx.scales))


class _TiedPetrichor(nn.Module):
    """An encoder whose transpose decodes the readings back (tied), and a Gaussian head."""

    def __init__(self, d_in=10, hidden=24):
        super().__init__()
        self.enc = nn.Linear(d_in, hidden)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))
        self.fc = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        recon = h @ self.enc.weight + self.dec_bias
        mu, raw = self.head(torch.tanh(self.fc(h))).unbind(-1)
        return torch.cat([mu[:, None], F.softplus(raw)[:, None] + 1e-3, recon, x], 1)


def _petrichor_loss(out, y):
    mu, var, rest = out[:, 0], out[:, 1], out[:, 2:]
    recon, x = rest.chunk(2, 1)
    return F.gaussian_nll_loss(mu, y, var) + 0.1 * F.mse_loss(recon, x)


@scenario(
    family="petrichor_scent_intensity_tied_gaussian_nll_net",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Petrichor scent-intensity net (tanh encoder whose transposed weight decodes the "
    "readings back, a tied reconstruction term, a Gaussian-NLL head with softplus variance, "
    "RAdam with ReduceLROnPlateau, accumulation over 2; control).",
)
def h453_petrichor_tied_control(ctx):
    gen = seeded(4543)
    model = _TiedPetrichor()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 4543, noise=0.1),
        200,
        _petrichor_loss,
        sched=sched,
        plateau=lambda ls: _mean(ls[-10:]),
        accumulate=2,
    )
    ctx.check("finite", _finite(losses))
    ctx.check("the loss fell by over 0.3 nats", _mean(losses[-20:]) < _mean(losses[:10]) - 0.3)
