"""Held-out set 505 (``h505_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a trebuchet throw-range ReLU regressor trained under fp16 autocast with its ranges in the
rangefinder's raw millimetres (fp16 overflow, Adam + GradScaler), a chain-mail rivet-grade GELU
classifier whose loss is nll_loss on raw logits (the head's logits grow without bound, NAdam), a
fog-fence mesh-catch ReLU classifier whose fc2 bias is initialised at -5 (fc2's units dead,
Adamax), a ball-hockey shot-time SiLU regressor fed one shard in milliseconds (SGD momentum), an
ice-stupa meltwater SiLU net taking the log of a flow reading with no clamp (a frozen pipe gives
log 0, RMSprop), a winnowing-basket chaff tanh regressor whose fc1 group lr is typed 1e-9
(Adagrad), a rime-ice tower-load 12-layer ReLU MLP whose He gain is applied twice (SGD), a
tug-of-war rope-tension Huber regressor whose loss weight is read in percent for one resumed step
(SGD Nesterov), a jaw-harp twang GELU classifier whose temperature is typed 0.002 for 2.0 (AdamW)
and a skep-honey flow SiLU regressor whose L2 penalty is subtracted (RAdam).

Controls: a glacial-lake outburst peak-flow quantile regression network (three pinball heads,
crossings penalised, AdamW, warm-up + cosine, clipping); a chain-ferry crossing-time Huber
regressor whose ReduceLROnPlateau cuts the lr tenfold twice (SGD momentum); a bagpipe
chanter-reed GELU classifier under fp16 autocast + GradScaler (Adam, OneCycleLR, label smoothing,
gradient accumulation 2, clipping).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
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
    alter=None,
    weight=None,
    clip=None,
    sched=None,
    attach=True,
):
    """The file's loop. ``before(step)`` first; ``alter(step, x, y)`` changes a batch;
    ``weight(step)`` multiplies the backpropagated loss. Stops after a non-finite loss once
    ``ctx.step`` has seen it. ``attach=False``: a reference run, nothing recorded."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier and attach:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        w = weight(step) if weight is not None else 1.0
        (w * loss).backward()
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        if attach:
            ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


# -- 1. amp overflow: throw ranges in raw millimetres under fp16 autocast --------------------------

TREBUCHET_DIVERGES = 82


@scenario(
    family="trebuchet_counterweight_throw_raw_mm_fp16_relu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=TREBUCHET_DIVERGES,
    heldout=True,
    note="Trebuchet throw-range regressor (ReLU MLP on counterweight mass, arm ratio, sling "
    "length, release-pin angle and projectile mass, MSE, Adam, fp16 autocast with a GradScaler). "
    "The ranges come straight from the laser rangefinder's log in millimetres (150 000 to "
    "300 000, above fp16's 65504) instead of metres: as the head's fp16 output grows to fit "
    "them it overflows to inf, the loss is inf and the scaler skips step after step.",
)
def h505_trebuchet_fp16_raw_mm(ctx) -> None:
    gen = seeded(5051)
    model = _Net(8, 64, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    g = torch.Generator().manual_seed(50510)
    w = torch.randn(8, generator=g)
    losses, scales, peaks = [], [], []
    for _step in range(240):
        x = torch.randn(64, 8, generator=gen)
        y = 2.25e5 + 7.5e4 * torch.tanh(x @ w / math.sqrt(8))  # millimetres
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        peaks.append(float(out.detach().float().abs().max()))
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        scales.append(float(scaler.get_scale()))
        ctx.scales.append(scales[-1])
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if len(losses) > 20 and not any(math.isfinite(v) for v in losses[-20:]):
            break
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the loss became inf", first_bad is not None)
    ctx.check(
        "finite and falling before the overflow",
        first_bad is not None
        and first_bad > 10
        and _mean(losses[first_bad - 5 : first_bad]) < 0.85 * _mean(losses[:5]),
    )
    ctx.check("the head's fp16 output hit inf", any(math.isinf(v) for v in peaks))
    ctx.check("the scaler's scale fell over 1000x", min(scales) < scales[0] / 1000)
    ctx.check(f"the first inf is at step {TREBUCHET_DIVERGES}", first_bad == TREBUCHET_DIVERGES)


# -- 2. output logit divergence: nll_loss on raw logits ---------------------------------------------


@scenario(
    family="chain_mail_ring_rivet_grade_raw_logit_gelu_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Chain-mail rivet-grade classifier (GELU MLP on ring gauge, rivet-head and wedge "
    "measurements, six grades, NAdam). The loss is written F.nll_loss(model(x), y) with the "
    "log_softmax left out of the model: nll_loss on raw logits is -logit[target], unbounded "
    "below, so the head keeps pushing the target logit up and the logits grow without bound.",
)
def h505_chain_mail_raw_logit_nll(ctx) -> None:
    gen = seeded(5052)
    model = _Net(16, 64, 6, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    peaks = []

    def nll_raw(logits, y):
        peaks.append(float(logits.detach().abs().max()))
        return F.nll_loss(logits, y)  # the log_softmax was dropped from the model

    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 16, 6, 5052), 220, nll_raw, classifier=True
    )
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * peaks[0])
    ctx.check("still growing over the last 50 steps", peaks[-1] > 1.3 * peaks[-50])
    ctx.check("the loss heads below zero without floor", losses[-1] < -10)


# -- 3. loss of plasticity: fc2 bias initialised at -5 ----------------------------------------------


@scenario(
    family="fog_fence_mesh_catch_grade_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Fog-fence mesh catch-grade classifier (ReLU MLP on mesh density, wind speed, fog "
    "liquid-water content and panel angle, five grades, cross-entropy, Adamax). fc2's bias is "
    "initialised with fill_(-5.0), copied from a sparse-gate init that was meant for another "
    "layer: every fc2 pre-activation is negative, all of act2's units are dead from the first "
    "step and never receive a gradient, and the loss stays at chance.",
)
def h505_fog_fence_dead_fc2(ctx) -> None:
    gen = seeded(5053)
    model = _Net(12, 64, 5)
    with torch.no_grad():
        model.fc2.bias.fill_(-5.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 12, 5, 5053), 200, F.cross_entropy, classifier=True
    )
    gen_r = seeded(5053)
    ref = _Net(12, 64, 5)
    ref_opt = torch.optim.Adamax(ref.parameters(), lr=2e-3)
    ref_losses, _ = _train(
        ctx, ref, ref_opt, _grades(gen_r, 64, 12, 5, 5053), 200, F.cross_entropy, attach=False
    )
    x, _ = next(_grades(torch.Generator().manual_seed(1), 256, 12, 5, 5053))
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
        ref_dead = dead_fraction(ref.features(x))
    ctx.check("over 90% of act2's units dead at the end", dead > 0.9)
    ctx.check(
        "the loss stays near chance (over 0.9 log 5)", _mean(losses[-20:]) > 0.9 * math.log(5)
    )
    ctx.check(
        "the intended init learns (under 0.5 log 5)", _mean(ref_losses[-20:]) < 0.5 * math.log(5)
    )
    ctx.check("the intended init keeps its units (under 30% dead)", ref_dead < 0.3)


# -- 4. data outlier: one shard of shot times in milliseconds ---------------------------------------

HOCKEY_ONSET = 120


@scenario(
    family="ball_hockey_slapshot_flight_time_ms_shard_silu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=HOCKEY_ONSET,
    note="Ball-hockey slapshot flight-time regressor (SiLU MLP on stick flex, shot distance, "
    "ball temperature and wind-up features, MSE, SGD momentum 0.9, clipping at 1.0). One shard "
    "exported by a new radar gun writes flight times in milliseconds instead of seconds: the "
    "batch at step 120 has its targets 1000x, the loss and gradient burst once, clipping holds "
    "the step and the run recovers.",
)
def h505_ball_hockey_ms_shard(ctx) -> None:
    gen = seeded(5054)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == HOCKEY_ONSET else (x, y)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 8, 5054), 240, F.mse_loss, alter=alter, clip=1.0
    )
    k = HOCKEY_ONSET
    pre = _median(losses[k - 20 : k])
    ctx.check("the loss at the bad shard over 1000x the median before", losses[k] > 1000 * pre)
    ctx.check(
        "the gradient at the shard over 20x the median", norms[k] > 20 * _median(norms[k - 20 : k])
    )
    ctx.check("recovered (last 20 under 3x the pre-shard median)", _mean(losses[-20:]) < 3 * pre)
    ctx.check("finite", _finite(losses))


# -- 5. nonfinite: log of a flow reading with no clamp ----------------------------------------------

STUPA_STEP = 100


class _LogFlow(nn.Module):
    """Takes the log of column 0 (the meltwater flow reading), passes the rest through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], dim=1)  # no clamp


class _StupaNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_flow = _LogFlow()
        self.body = _Net(8, 48, 1, act=nn.SiLU)

    def forward(self, x):
        return self.body(self.log_flow(x))


@scenario(
    family="ice_stupa_meltwater_log_flow_silu_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("log_flow",),
    diverges=STUPA_STEP,
    heldout=True,
    onset=STUPA_STEP,
    note="Ice-stupa meltwater regressor (SiLU MLP on log feed-pipe flow, air temperature, "
    "sun hours and height features, MSE, RMSprop). The log of the flow reading is taken with "
    "no clamp; at step 100 a frozen feed pipe reads exactly 0 for some rows: log 0 = -inf, "
    "fc1 gives +-inf, SiLU(-inf) is NaN and the loss is NaN at step 100.",
)
def h505_ice_stupa_log_zero(ctx) -> None:
    gen = seeded(5055)
    model = _StupaNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    base = _readings(gen, 64, 8, 5055)
    seen = []

    def batches():
        for step, (x, y) in enumerate(base):
            x = x.clone()
            flow = torch.exp(0.5 * x[:, 0])
            if step == STUPA_STEP:
                flow[:8] = 0.0  # the frozen pipe
            x[:, 0] = flow
            with torch.no_grad():
                seen.append(bool(torch.isinf(model.log_flow(x)).any()))
            yield x, y

    losses, _ = _train(ctx, model, opt, batches(), 200, F.mse_loss)
    k = STUPA_STEP
    ctx.check("finite before the frozen pipe", _finite(losses[:k]))
    ctx.check("log_flow gives -inf at the frozen pipe", len(seen) > k and seen[k])
    ctx.check("the loss is NaN at step 100", len(losses) > k and math.isnan(losses[k]))
    ctx.check("it trained before the fault", _mean(losses[k - 10 : k]) < 0.7 * _mean(losses[:10]))


# -- 6. update ratio out of range: fc1 group lr typed 1e-9 -----------------------------------------


@scenario(
    family="winnowing_basket_toss_chaff_two_group_tanh_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Winnowing-basket chaff-fraction regressor (tanh MLP on toss height, basket tilt, "
    "breeze speed and grain moisture, MSE, Adagrad with two param groups). The config's lr for "
    "the input group is typed 1e-9 for 1e-2: fc1 practically never moves while fc2 and the head "
    "train at 3e-2; the loss falls only as far as the random fc1 features allow.",
)
def h505_winnowing_fc1_lr_typo(ctx) -> None:
    gen = seeded(5056)
    model = _Net(10, 48, 1, act=nn.Tanh)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1")]
    opt = torch.optim.Adagrad(
        [{"params": model.fc1.parameters(), "lr": 1e-9}, {"params": rest, "lr": 3e-2}]
    )
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5056), 220, F.mse_loss)
    ctx.check("fc1 moves under 1e-6 of its norm", _rel_change(model.fc1.weight, w1) < 1e-6)
    ctx.check("fc2 moves over 5% of its norm", _rel_change(model.fc2.weight, w2) > 0.05)
    ctx.check("finite", _finite(losses))


# -- 7. exploding gradients: He gain applied twice in a 12-layer ReLU MLP ---------------------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            m.weight.data.mul_(gain)
            nn.init.zeros_(m.bias)

    def forward(self, x, keep=None):
        for layer in self.layers:
            x = layer(x)
            if keep is not None:
                x.retain_grad()
                keep.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model, x, y):
    keep = []
    F.mse_loss(model(x, keep), y).backward()
    ratio = float(keep[0].grad.norm() / keep[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    return ratio


@scenario(
    family="rime_ice_tower_load_twelve_layer_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Rime-ice tower-load regressor (12-layer ReLU MLP on wind, droplet size, temperature "
    "and mast-height features, MSE, SGD at lr 3e-5). The init helper applies kaiming_normal_(nonlinearity="
    "'relu') and then multiplies by the ReLU gain sqrt(2) again: the variance doubles at every "
    "layer, the gradient grows through depth toward layers.0 and the loss blows up.",
)
def h505_rime_ice_double_gain(ctx) -> None:
    gen = seeded(5057)
    model = _Deep(10, 48, 12, math.sqrt(2.0))
    torch.manual_seed(5057)
    ref = _Deep(10, 48, 12, 1.0)
    x0, y0 = next(_readings(torch.Generator().manual_seed(2), 128, 10, 5057))
    ratio = _depth_ratio(model, x0, y0)
    ref_ratio = _depth_ratio(ref, x0, y0)
    opt = torch.optim.SGD(model.parameters(), lr=3e-5)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5057), 200, F.mse_loss)
    ctx.check("dL/dz at layers.0 over 10x the last layer's", ratio > 10)
    ctx.check("under 3x with the gain applied once", ref_ratio < 3)
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check(
        "the loss blows up (non-finite or over 1000x its start)",
        bad is not None or max(losses) > 1000 * losses[0],
    )


# -- 8. gradient spike: the loss weight read in percent for one resumed step ------------------------

TUG_ONSET = 110


@scenario(
    family="tug_of_war_rope_tension_percent_weight_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=TUG_ONSET,
    note="Tug-of-war rope-tension regressor (ReLU MLP on team mass, foot angle, lean and "
    "ground-grip features, Huber, SGD Nesterov, clipping at 1.0). The run is resumed at step 110 "
    "and the restart script reads a loss weight of 500 from an old config that stored weights in "
    "per-mille (500 for 0.5, applied as 500): the backpropagated loss is 500x for that one step, the "
    "gradient bursts with an ordinary logged loss and ordinary data, clipping holds it.",
)
def h505_tug_of_war_percent_weight(ctx) -> None:
    gen = seeded(5058)
    model = _Net(8, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 5058),
        220,
        F.huber_loss,
        weight=lambda s: 500.0 if s == TUG_ONSET else 1.0,
        clip=1.0,
    )
    k = TUG_ONSET
    ctx.check(
        "gradient at 110 over 50x the median of the 20 before",
        norms[k] > 50 * _median(norms[k - 20 : k]),
    )
    ctx.check(
        "the logged loss at 110 ordinary (under 3x)", losses[k] < 3 * _median(losses[k - 20 : k])
    )
    ctx.check("trained and finite", _fell(losses))


# -- 9. softmax collapse: temperature typed 0.002 for 2.0 -------------------------------------------


class _TempNet(_Net):
    def __init__(self, temperature):
        super().__init__(14, 64, 7, act=nn.GELU)
        self.temperature = temperature

    def raw(self, x):
        return self.head(self.features(x))

    def forward(self, x):
        return self.raw(x) / self.temperature


@scenario(
    family="jaw_harp_twang_register_temperature_gelu_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Jaw-harp twang-register classifier (GELU MLP on spectral-centroid, decay and "
    "mouth-cavity formant features, seven registers, cross-entropy, AdamW). The softmax "
    "temperature is typed 0.002 for 2.0 in the config: logits are divided by 0.002, the "
    "softmax saturates and most rows' target probabilities round to exactly 1.0 in float32.",
)
def h505_jaw_harp_temperature(ctx) -> None:
    gen = seeded(5059)
    model = _TempNet(0.002)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 14, 7, 5059), 200, F.cross_entropy, classifier=True
    )
    x, y = next(_grades(torch.Generator().manual_seed(3), 256, 14, 7, 5059))
    with torch.no_grad():
        raw = model.raw(x)
        frac = collapsed_fraction(raw / 0.002, y)
        intended = collapsed_fraction(raw / 2.0, y)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("under 5% at the intended temperature 2.0", intended < 0.05)
    ctx.check("finite", _finite(losses))


# -- 10. loss divergence: the L2 penalty subtracted --------------------------------------------------


@scenario(
    family="skep_honey_flow_l2_sign_silu_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Skep honey-flow regressor (SiLU MLP on forage bloom, colony weight, temperature and "
    "rainfall features, MSE, RAdam). A hand-written L2 penalty is subtracted instead of added "
    "(loss - wd * sum(w^2), wd 0.1): the weights grow steadily, and after the loss's early fall it "
    "climbs slowly with no jump and no bad batch.",
)
def h505_skep_l2_sign(ctx) -> None:
    gen = seeded(5060)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    w0 = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.parameters()))

    def loss_fn(out, y):
        return F.mse_loss(out, y)

    wd = 1e-1
    ctx.attach(model, opt)
    losses = []
    batches = _readings(gen, 64, 8, 5060)
    for _step in range(300):
        x, y = next(batches)
        loss = loss_fn(model(x), y)
        l2 = sum(p.pow(2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        (loss - wd * l2).backward()  # the sign bug: the penalty rewards growth
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.parameters()))
    best = min(_mean(losses[i : i + 10]) for i in range(0, len(losses) - 10))
    jumps = max(losses[i + 1] / max(losses[i], 1e-12) for i in range(len(losses) - 1))
    ctx.check("weights over 1.5x their start", w1 > 1.5 * w0)
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("no single jump (step ratio under 3x)", jumps < 3)
    ctx.check("finite", _finite(losses))


# -- 11. healthy: a quantile regression network with three pinball heads ---------------------------

QUANTILES = (0.1, 0.5, 0.9)


class _QuantileNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.q10 = nn.Linear(hidden, 1)
        self.q50 = nn.Linear(hidden, 1)
        self.q90 = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.q10(h), self.q50(h), self.q90(h)], dim=1)


def _pinball(pred, y):
    losses = []
    for i, q in enumerate(QUANTILES):
        err = y - pred[:, i]
        losses.append(torch.maximum(q * err, (q - 1) * err).mean())
    crossing = F.relu(pred[:, 0] - pred[:, 1]).mean() + F.relu(pred[:, 1] - pred[:, 2]).mean()
    return sum(losses) + 1.0 * crossing


def _flood(gen, batch, seed):
    """Peak flow with noise whose spread grows with the lake level feature."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        spread = 0.2 + 0.4 * torch.sigmoid(2 * x[:, 0])
        y = torch.tanh(x @ w / math.sqrt(8)) + spread * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="glacial_lake_outburst_peak_flow_quantile_pinball_net",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Glacial-lake outburst peak-flow quantile regression network (a GELU trunk and three "
    "heads q10, q50, q90 trained with the pinball loss, crossings q10 > q50 > q90 penalised, "
    "heteroscedastic generated floods, AdamW, 20-step linear warm-up then cosine, clipping at "
    "1.0). A control.",
)
def h505_outburst_quantile_control(ctx) -> None:
    gen = seeded(5061)
    model = _QuantileNet(8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = 240

    def lam(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    losses, _ = _train(
        ctx, model, opt, _flood(gen, 128, 5061), steps, _pinball, clip=1.0, sched=sched
    )
    x, y = next(_flood(torch.Generator().manual_seed(4), 2000, 5061))
    with torch.no_grad():
        pred = model(x)
    inside = float(((y >= pred[:, 0]) & (y <= pred[:, 2])).float().mean())
    crossed = float((pred[:, 0] > pred[:, 2]).float().mean())
    ctx.check("trained (loss under 0.7x its start) and finite", _fell(losses))
    ctx.check("the 10-90 band covers 70-90% of new floods", 0.7 < inside < 0.9)
    ctx.check("q10 above q90 on under 1% of rows", crossed < 0.01)


# -- 12. healthy: ReduceLROnPlateau cuts the lr tenfold twice ---------------------------------------


@scenario(
    family="chain_ferry_crossing_time_plateau_huber_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="Chain-ferry crossing-time regressor (ReLU MLP on river current, chain slack, load and "
    "wind features, Huber, SGD momentum 0.9, noisy readings). ReduceLROnPlateau(factor 0.1, "
    "patience 2) on a held-out loss every 10 steps, min_lr at 1/100 of the start: the lr is "
    "cut tenfold twice and the update sizes drop sharply at those two steps. A control.",
)
def h505_chain_ferry_plateau_control(ctx) -> None:
    gen = seeded(5062)
    model = _Net(8, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.1, patience=2, threshold=2e-2, min_lr=5e-4 * 0.999
    )
    xv, yv = next(_readings(torch.Generator().manual_seed(5), 512, 8, 5062, noise=0.3))
    lrs, moves = [], []
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 8, 5062, noise=0.3)
    losses = []
    for step in range(300):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moves.append(
            math.sqrt(
                sum(
                    float((p.detach() - b).pow(2).sum())
                    for p, b in zip(model.parameters(), before, strict=True)
                )
            )
        )
        lrs.append(opt.param_groups[0]["lr"])
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 10 == 9:
            with torch.no_grad():
                plateau.step(float(F.huber_loss(model(xv), yv)))
    cuts = [i for i in range(1, len(lrs)) if lrs[i] < 0.5 * lrs[i - 1]]
    ctx.check("the lr was cut exactly twice", len(cuts) == 2)
    drops = [_mean(moves[c - 10 : c]) / max(_mean(moves[c + 10 : c + 20]), 1e-12) for c in cuts]
    ctx.check("the update size drops over 4x at each cut", len(drops) == 2 and min(drops) > 4)
    ctx.check("trained (loss under 0.7x its start) and finite", _fell(losses))


# -- 13. healthy: fp16 autocast + GradScaler classifier -------------------------------------------


@scenario(
    family="bagpipe_chanter_reed_fp16_onecycle_gelu_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Bagpipe chanter-reed grade classifier (GELU MLP on reed-opening, scrape and pressure "
    "features, six grades, noisy labels, cross-entropy with label smoothing 0.1, Adam, fp16 "
    "autocast with a GradScaler, OneCycleLR, gradient accumulation 2, clipping at 1.0). A "
    "control.",
)
def h505_bagpipe_reed_fp16_control(ctx) -> None:
    gen = seeded(5063)
    model = _Net(12, 64, 6, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _grades(gen, 32, 12, 6, 5063, spread=1.3)
    losses = []
    for _step in range(steps):
        shown = 0.0
        for _ in range(2):
            x, y = next(batches)
            flip = torch.rand(len(y), generator=gen) < 0.05
            y = torch.where(flip, torch.randint(0, 6, y.shape, generator=gen), y)
            ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
            scaler.scale(loss / 2).backward()
            shown += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
    ctx.check("trained (loss under 0.7x its start) and finite", _fell(losses))
    ctx.check("the scaler never fell below its start", min(ctx.scales) >= 2.0**12)
