"""Held-out set 556 (``h556_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: biathlon rifle-sway attention tagger with the qk scale multiplied by sqrt(d) instead of
divided (attention_logit_growth, AdamW); luge start-push GELU BCE classifier with a stage weight
read in percent for one step (gradient_spike, SGD Nesterov); maple sap sugar-ratio regressor
dividing by a zero bucket volume (nonfinite, RAdam); bell-foundry cooling-crack 12-layer ReLU
regressor with init gain typed 2.2 (exploding_gradients, SGD momentum); ropewalk strand-twist
two-tower regressor with the strand group lr typed 2e-9 (update_ratio_out_of_range, RMSprop);
hot-spring terrace silica regressor fed one shard in millimetres (data_outlier, NAdam); sumo
tachiai outcome classifier with temperature typed 1e-3 (softmax_collapse, Adagrad); kiteboard
pop-height tanh regressor with a warm-up peak lr typed 4.0 (sharpness_above_limit, plain SGD);
ice-road crack-strain regressor under fp16 autocast fed microstrain (amp_overflow, Adamax); tabla
bol-stroke ReLU classifier with Adam lr typed 5e-2 (loss_of_plasticity, Adam).
Controls: petanque boule landing-zone classifier with a focal-loss gamma ramped 0 to 2 in steps
(the reported loss falls in steps, alarming-looking, Adam); sea-shanty verse
Hugging Face Qwen2 decoder from a tiny config (AdamW, warm-up then cosine, clipping); kelp-forest
canopy-drift SiLU Huber regressor (ASGD, ReduceLROnPlateau, accumulation 2, clipping, noisy
targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


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
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, loss)``
    returns the loss actually backpropagated, ``after(step, loss)``. Stops after a non-finite
    loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05, drift=None):
    """Standardised readings and a smooth nonlinear target of about unit scale; ``drift(i)``
    is added to the i-th batch's targets."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    i = 0
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, generator=gen)
        if drift is not None:
            y = y + drift(i)
        i += 1
        yield x, y


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of loss_fn(model(x), y) by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. attention logit growth: qk scale multiplied by sqrt(d) ------------------------------------


class _SwayAttention(nn.Module):
    """Single-head self-attention; ``scale`` multiplies q.k (meant to be 1/sqrt(d))."""

    def __init__(self, dim, scale):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scale = scale
        self.last_max = 0.0
        for m in (self.q, self.k):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        logits = self.q(x) @ self.k(x).transpose(1, 2) * self.scale
        self.last_max = float(logits.detach().abs().max())
        return self.o(torch.softmax(logits, dim=-1) @ self.v(x))


class _SwayTagger(nn.Module):
    """Tags each frame of a rifle-barrel sway trace with the shooter's breathing phase."""

    def __init__(self, d_in=6, dim=32, classes=4):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.attn = _SwayAttention(dim, scale=math.sqrt(dim))  # typo: should be 1/sqrt(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(h)
        return self.head(self.norm(h))


def _sway_batches(gen, batch=32, length=16, d_in=6, classes=4):
    """Each frame's label is the phase carried by the trace's one marked (trigger) frame,
    shifted by the frame's own coarse position: the tagger must look up the marked frame."""
    while True:
        x = torch.randn(batch, length, d_in, generator=gen)
        mark = torch.randint(0, length, (batch,), generator=gen)
        phase = torch.randint(0, classes, (batch,), generator=gen)
        x[:, :, 0] = 0.0
        x[torch.arange(batch), mark, 0] = 3.0
        x[torch.arange(batch), mark, 1] = phase.float() - 1.5
        pos = torch.arange(length).float()
        x[:, :, 2] = (pos / length)[None, :]
        y = (phase[:, None] + (torch.arange(length)[None, :] >= length // 2).long()) % classes
        yield x, y


@scenario(
    family="biathlon_rifle_sway_attention_tagger",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Biathlon rifle-sway breathing-phase tagger (one-head self-attention over 16 frames of "
    "barrel sway, LayerNorm, cross-entropy per frame, AdamW with weight decay 0). The attention "
    "scale is written 'q @ k.T * math.sqrt(d)' instead of '/ math.sqrt(d)' (32x too large): "
    "as the tagger learns to look up the trigger frame, the q.k logits in attn grow to over 20x "
    "their starting size and keep growing, the attention saturates onto single frames.",
)
def h556_biathlon_sway_qk_scale_typo(ctx):
    gen = seeded(5561)
    model = _SwayTagger()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    maxes = []

    def after(step, loss):
        maxes.append(model.attn.last_max)

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    losses, _ = _loop(
        ctx, model, opt, _sway_batches(gen), 200, loss_fn, classifier=True, after=after
    )
    ctx.check("attention logits over 20x their start", max(maxes[-10:]) > 20 * maxes[0])
    ctx.check("attention logits past 50", max(maxes[-10:]) > 50)
    ctx.check("still growing late", _mean(maxes[-20:]) > 1.2 * _mean(maxes[100:120]))
    ctx.check("loss finite", _finite(losses))


# -- 2. gradient spike: stage weight read in percent for one step ---------------------------------


class _LugeNet(nn.Module):
    """GELU MLP: will this start push put the sled under the split-time target?"""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


def _luge_batches(gen, batch=64, d_in=8, seed=55620):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        score = x @ w / math.sqrt(d_in) + 0.3 * torch.randn(batch, generator=gen)
        yield x, (score > 0).float()


@scenario(
    family="luge_start_push_gelu_bce_classifier",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Luge start-push BCE classifier (GELU MLP on handle pull force, paddle strokes, "
    "ramp angle, ice temperature, sled mass and reaction time; SGD Nesterov, clip 1.0). At step "
    "120 the curriculum switches stage and the stage loss weight is read from a config in percent "
    "(200) instead of as a fraction (2.0) for that one step: the backpropagated loss is 200x "
    "the logged one, the gradient bursts over 50x with ordinary data and an ordinary logged "
    "loss, clipping keeps the update bounded and the run goes on.",
)
def h556_luge_stage_weight_percent(ctx):
    gen = seeded(5562)
    model = _LugeNet(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (200.0 if step == 120 else 1.0)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _luge_batches(gen),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check("gradient over 50x at step 120", norms[120] > 50 * _median(norms[100:120]))
    ctx.check("logged loss ordinary at 120", losses[120] < 2 * _median(losses[100:120]))
    ctx.check("trained", _fell(losses))
    ctx.check("loss finite", _finite(losses))


# -- 3. nonfinite: 0/0 sugar ratio from an empty bucket -------------------------------------------


class _SugarRatio(nn.Module):
    """Sugar mass over sap volume for each bucket on the tap line (no clamp on the volume)."""

    def forward(self, sugar, volume):
        return sugar / volume


class _MapleNet(nn.Module):
    """GELU regressor for the evaporator's syrup yield from the tap line's bucket readings."""

    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.ratio = _SugarRatio()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        self.last_bad = False

    def forward(self, x):
        r = self.ratio(x[:, -2], x[:, -1])
        self.last_bad = bool((~torch.isfinite(r)).any())
        h = torch.cat([x[:, :-2], r[:, None] - 2.0], 1)
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(h))))).squeeze(-1)


def _maple_batches(gen, batch=64, seed=55630):
    base = _readings(gen, batch, 6, seed)
    step = 0
    while True:
        x, y = next(base)
        volume = 1.0 + 0.5 * torch.rand(batch, generator=gen)
        sugar = volume * (2.0 + 0.3 * x[:, 0])
        if step == 80:  # a bucket knocked off its spile: no sap, no sugar
            volume[5] = 0.0
            sugar[5] = 0.0
        step += 1
        yield torch.cat([x, sugar[:, None], volume[:, None]], 1), y


@scenario(
    family="maple_sap_sugar_ratio_gelu_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("ratio",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Maple-sap syrup-yield regressor (GELU MLP on tap-line readings plus a sugar/volume "
    "ratio feature, MSE, RAdam). The ratio module divides sugar by sap volume with no clamp; at "
    "step 80 a bucket knocked off its spile reports 0 sugar in 0 volume, 0/0 gives NaN in ratio "
    "and the loss is NaN at step 80.",
)
def h556_maple_empty_bucket_zero_div(ctx):
    gen = seeded(5563)
    model = _MapleNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    bad = []

    def after(step, loss):
        bad.append(model.last_bad)

    losses, _ = _loop(ctx, model, opt, _maple_batches(gen), 140, F.mse_loss, after=after)
    first = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first NaN at step 80", first == 80)
    ctx.check("ratio non-finite at step 80", len(bad) > 80 and bad[80])
    ctx.check("ratio finite before 80", not any(bad[:80]))
    ctx.check("trained before 80", _mean(losses[70:80]) < 0.7 * _mean(losses[:10]))


# -- 4. exploding gradients: orthogonal init gain typed 2.2 ---------------------------------------


class _FoundryNet(nn.Module):
    """12-layer ReLU regressor for a bell casting's cooling-crack risk."""

    def __init__(self, d_in=8, width=32, depth=12, gain=2.2):
        super().__init__()
        layers = [nn.Linear(d_in, width), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, gain=gain)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(-1)


def _keep(store, name, out):
    if out.requires_grad:
        out.retain_grad()
        store[name] = out


@scenario(
    family="bell_foundry_cooling_crack_deep_relu_regressor",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("body.0",),
    diverges="auto",
    heldout=True,
    note="Bell-foundry cooling-crack risk regressor (12-layer ReLU MLP on bronze tin fraction, "
    "pour temperature, mould moisture, wall thickness, cooling hours and ambient readings, MSE, "
    "SGD momentum 0.9). The orthogonal init gain is typed 2.2 instead of sqrt(2): each layer "
    "amplifies by about 1.55, the first layer's gradient is over 30x the last hidden layer's "
    "at step 0 and the loss blows up within a few steps.",
)
def h556_bell_foundry_init_gain_typo(ctx):
    gen = seeded(5564)
    model = _FoundryNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _readings(gen, 64, 8, 55640)
    outs = {}
    for name in ("body.0", "body.20"):
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: _keep(outs, name, o)
        )
    x0, y0 = next(batches)
    F.mse_loss(model(x0), y0).backward()
    ratio = float(outs["body.0"].grad.norm() / outs["body.20"].grad.norm().clamp_min(1e-30))
    model.zero_grad(set_to_none=True)
    losses, _ = _loop(ctx, model, opt, batches, 100, F.mse_loss)
    peak = max((v for v in losses if math.isfinite(v)), default=0.0)
    ctx.check("body.0 gradient over 30x the last hidden's", ratio > 30)
    ctx.check(
        "loss blows up",
        (not _finite(losses)) or peak > 1e4 * max(losses[0], 1e-6) or peak > 1e8,
    )


# -- 5. update ratio: strand group lr typed 2e-9 --------------------------------------------------


class _RopewalkNet(nn.Module):
    """Two towers (strand readings, walk readings) regressing the laid rope's twist."""

    def __init__(self, d_strand=4, d_walk=4, hidden=32):
        super().__init__()
        self.strand = nn.Sequential(nn.Linear(d_strand, hidden), nn.GELU())
        self.walk = nn.Sequential(nn.Linear(d_walk, hidden), nn.GELU())
        self.head = nn.Linear(2 * hidden, 1)

    def forward(self, x):
        h = torch.cat([self.strand(x[:, :4]), self.walk(x[:, 4:])], 1)
        return self.head(h).squeeze(-1)


@scenario(
    family="ropewalk_strand_twist_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("strand",),
    diverges=None,
    heldout=True,
    note="Ropewalk strand-twist regressor (two GELU towers: strand readings and walk-carriage "
    "readings, MSE, RMSprop with one param group per tower). The strand group's lr is typed "
    "2e-9 instead of 2e-3: the strand tower's weights never move (relative change under 1e-5) "
    "while the walk tower and head train normally and the loss falls only part of the way.",
)
def h556_ropewalk_strand_group_lr_typo(ctx):
    gen = seeded(5565)
    model = _RopewalkNet()
    opt = torch.optim.RMSprop(
        [
            {"params": model.strand.parameters(), "lr": 2e-9},
            {"params": list(model.walk.parameters()) + list(model.head.parameters())},
        ],
        lr=2e-3,
    )
    s0, w0 = _flat(model.strand), _flat(model.walk)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 55650), 200, F.mse_loss)
    ctx.check("strand tower never moves", _rel(_flat(model.strand), s0) < 1e-5)
    ctx.check("walk tower moves", _rel(_flat(model.walk), w0) > 1e-2)
    ctx.check("loss finite", _finite(losses))


# -- 6. data outlier: one shard of deposition in millimetres --------------------------------------


@scenario(
    family="hot_spring_terrace_silica_silu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Hot-spring terrace silica-deposition regressor (SiLU MLP on vent temperature, flow, "
    "pH, silica concentration, wind and pool depth, MSE, NAdam, clip 1.0). One shard, read at "
    "step 110, was exported by a different logger that writes the deposition target in "
    "millimetres instead of metres-scaled units (x1000): the loss at that step is over 100x its "
    "neighbours and the gradient over 10x; clipping bounds the update and the run recovers.",
)
def h556_hot_spring_shard_millimetres(ctx):
    gen = seeded(5566)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 110 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 55660), 200, F.mse_loss, alter=alter, clip=1.0
    )
    before = _median(losses[90:110])
    ctx.check("loss over 100x at step 110", losses[110] > 100 * before)
    ctx.check("gradient over 10x at step 110", norms[110] > 10 * _median(norms[90:110]))
    ctx.check("recovers", _mean(losses[-10:]) < 3 * _mean(losses[100:110]))
    ctx.check("loss finite", _finite(losses))


# -- 7. softmax collapse: temperature typed 1e-3 --------------------------------------------------


class _TachiaiNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, classes=5, temperature=1e-3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))) / self.temperature


@scenario(
    family="sumo_tachiai_outcome_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sumo tachiai outcome classifier (GELU MLP on charge speed, hand placement, stance "
    "width, rikishi masses and heights; 5 outcomes; cross-entropy, Adagrad). The softmax "
    "temperature meant to be 1.0 is typed 1e-3 (a calibration constant pasted into the wrong "
    "field): logits are divided by 1e-3, over 40% of rows' target probability is exactly 1.0 "
    "in float32 and those rows give no gradient.",
)
def h556_sumo_tachiai_temperature_typo(ctx):
    gen = seeded(5567)
    model = _TachiaiNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    batches = _grades(gen, 64, 10, 5, 55670)
    probe_x, probe_y = next(batches)
    fracs = []

    def after(step, loss):
        if step % 10 == 9:
            with torch.no_grad():
                fracs.append(collapsed_fraction(model(probe_x), probe_y))

    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows collapsed", max(fracs[-3:]) > 0.4)
    ctx.check("loss finite", _finite(losses))


# -- 8. sharpness: warm-up peak lr typed 4.0 ------------------------------------------------------


@scenario(
    family="kiteboard_pop_height_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Kiteboard pop-height regressor (tanh MLP on kite angle, line tension, board speed, "
    "edge angle, wind speed and chop, MSE, plain SGD, linear warm-up over 40 steps). The "
    "warm-up's peak lr is typed 4.0 instead of 0.04: partway through the warm-up lr x the "
    "top Hessian eigenvalue passes 2, the loss oscillates with growing amplitude and blows up.",
)
def h556_kiteboard_warmup_peak_typo(ctx):
    gen = seeded(5568)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=4.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 40))
    batches = _readings(gen, 64, 6, 55680)
    px, py = next(batches)
    eig0 = _top_hessian_eig(model, F.mse_loss, px, py)
    lrs = []

    def after(step, loss):
        lrs.append(opt.param_groups[0]["lr"])

    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss, sched=sched, after=after)
    crossing = next((i for i, lr in enumerate(lrs) if lr * eig0 > 2), None)
    ctx.check("lr x sharpness passes 2 during warm-up", crossing is not None and crossing < 40)
    peak = max((v for v in losses if math.isfinite(v)), default=0.0)
    ctx.check("loss blows up", (not _finite(losses)) or peak > 100 * losses[0])


# -- 9. amp overflow: strain gauge in microstrain under fp16 autocast -----------------------------


class _IceRoadNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="ice_road_crack_strain_fp16_silu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=85,
    onset=85,
    heldout=True,
    note="Ice-road crack-risk regressor (SiLU MLP on ice thickness, truck load, speed, air "
    "temperature, snow cover and strain, MSE, Adamax, fp16 autocast + GradScaler). From step 85 "
    "a replaced strain gauge logger reports raw microstrain (about 3e5) and the column is not "
    "standardised: fc1 runs in fp16 under autocast, its output overflows past 65504 to inf "
    "(the same batch is finite in float32) and the loss is non-finite at step 85.",
)
def h556_ice_road_strain_microstrain(ctx):
    gen = seeded(5569)
    model = _IceRoadNet(6)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    losses, fc1_bad = [], []
    batches = _readings(gen, 64, 6, 55690)
    bad_x = None
    for step in range(130):
        x, y = next(batches)
        if step >= 85:
            x = x.clone()
            x[:, 5] = 3.0e5 + 3.0e4 * x[:, 5]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_bad.append(seen["fc1"][1])
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    ctx.check("loss first non-finite at step 85", first_bad == 85)
    ctx.check("fc1's fp16 output non-finite at step 85", len(fc1_bad) > 85 and fc1_bad[85])
    ctx.check("fc1 finite before step 85", not any(fc1_bad[:85]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 85", _mean(losses[75:85]) < 0.7 * _mean(losses[:10]))


# -- 10. loss of plasticity: Adam lr typed 5e-2 ---------------------------------------------------


@scenario(
    family="tabla_bol_stroke_dead_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Tabla bol-stroke classifier (ReLU MLP on 12 spectral band energies of the dayan and "
    "bayan strike, 6 bols, cross-entropy, Adam). The lr is typed 5e-2 instead of 5e-4: the "
    "first large Adam steps push fc2's pre-activations negative for every input, over half of "
    "act2's ReLUs die and never come back, and the loss stalls and wanders well above its best.",
)
def h556_tabla_adam_lr_typo(ctx):
    gen = seeded(55610)
    model = _Net(12, hidden=48, out=6)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    batches = _grades(gen, 64, 12, 6, 556100, spread=1.5)
    probe_x, _ = next(batches)
    feats = {}
    model.act2.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o.detach()))
    with torch.no_grad():
        model(probe_x)
    dead0 = dead_fraction(feats["a"])
    losses, _ = _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    with torch.no_grad():
        model(probe_x)
    dead1 = dead_fraction(feats["a"])
    ctx.check("under 10% dead at start", dead0 < 0.1)
    ctx.check("over half of act2 dead at the end", dead1 > 0.5)
    ctx.check("loss finite", _finite(losses))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="petanque_boule_landing_zone_focal_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Petanque boule landing-zone classifier (GELU MLP on throw height, backspin, release "
    "speed, terrain hardness and gravel size; 5 zones; Adam). The loss is a focal loss whose "
    "gamma is ramped 0 -> 0.5 -> 1 -> 1.5 -> 2 at steps 50, 80, 110 and 140 (a curriculum "
    "towards hard throws): each step down-weights the easy rows, so the reported loss drops "
    "in steps while nothing is wrong; the plain cross-entropy keeps falling. Healthy "
    "(alarming-looking).",
)
def h556_petanque_focal_gamma_ramp(ctx):
    gen = seeded(55611)
    model = _Net(10, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ces = []

    def gamma(step):
        return 0.5 * sum(step >= s for s in (50, 80, 110, 140))

    state = {"step": 0}

    def before(step):
        state["step"] = step

    def focal(out, y):
        logp = F.log_softmax(out, dim=-1).gather(1, y[:, None]).squeeze(1)
        ces.append(float(-logp.detach().mean()))
        return (-((1 - logp.exp()) ** gamma(state["step"])) * logp).mean()

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, 556110, spread=1.3),
        200,
        focal,
        classifier=True,
        before=before,
    )
    ctx.check("reported loss drops at the gamma steps", losses[50] < 0.9 * _mean(losses[45:50]))
    ctx.check("plain cross-entropy fell", _mean(ces[-10:]) < 0.7 * _mean(ces[:10]))
    ctx.check("cross-entropy no worse after the ramp", _mean(ces[-10:]) <= _mean(ces[40:50]))
    ctx.check("loss finite", _finite(losses))


@scenario(
    family="sea_shanty_verse_qwen2_decoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sea-shanty verse byte-level language model: a Hugging Face Qwen2 causal LM built "
    "from a tiny config (2 layers, width 32, grouped-query attention with 1 KV head), AdamW, "
    "linear warm-up over 20 steps then cosine decay, clip 1.0. Healthy.",
)
def h556_shanty_qwen2_decoder(ctx):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    gen = seeded(55612)
    config = Qwen2Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    model = Qwen2ForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 120

    def lr_at(s):
        if s < 20:
            return (s + 1) / 20
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    def loss_fn(logits, y):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    losses = []
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        loss = loss_fn(model(input_ids=x).logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses))
    ctx.check("loss finite", _finite(losses))


@scenario(
    family="kelp_forest_canopy_drift_silu_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kelp-forest canopy drift regressor (SiLU MLP on swell height, current, wind, tide "
    "phase, holdfast density and water temperature, Huber loss on noisy diver-survey targets, "
    "ASGD, ReduceLROnPlateau on a running loss, gradient accumulation 2, clip 1.0). Healthy.",
)
def h556_kelp_canopy_drift_asgd(ctx):
    gen = seeded(55613)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 6, 556130, noise=0.3)
    losses, accum, window = [], 2, []
    for step in range(200):
        for _ in range(accum):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / accum).backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        window.append(losses[-1])
        if step % 10 == 9:
            sched.step(_mean(window))
            window = []
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses))
    ctx.check("loss finite", _finite(losses))
