"""Held-out set 571 (``h571_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: raku kiln crackle-depth regressor fed the pyrometer in centikelvin under fp16 autocast
(amp_overflow, RMSprop); curling-stone curl regressor whose warm-up peak lr is typed 5.0 for 0.05
(sharpness_above_limit, plain SGD); avalanche-beacon burial-depth twelve-layer ReLU MLP whose He
init is multiplied by tanh's gain 5/3 (exploding_gradients, SGD momentum); sheepdog-trial
outrun regressor whose fc1 group lr is left at 0.0 (update_ratio_out_of_range, Adagrad);
pearl-diving breath-hold classifier fed one batch of depth in millimetres (data_outlier,
Adamax); tightrope pole-sway fall BCE classifier whose resumed step backpropagates the AMP loss
scale 1024 in fp32 (gradient_spike, SGD Nesterov); geyser eruption-interval net whose per-trace
range normalisation divides 0 by 0 on a stuck sensor (nonfinite, NAdam); hourglass sand-flow
regressor whose target clock drifts (loss_divergence, RAdam); hurling strike-zone classifier
whose z-loss has its sign flipped (output_logit_divergence, AdamW); kayak-slalom split-time
regressor whose loss is weighted 1e5 for one step (adam_second_moment_poisoned, Adam).
Controls: dogsled team-pace mixture-of-experts regressor whose load-balancing weight goes from
0.01 to 0.1 at step 100 (alarming-looking, Adam); taiko drum-stroke classifier (SGD momentum,
OneCycleLR, label smoothing, clipping); abseil rope-glaze Huber regressor (ASGD,
ReduceLROnPlateau, noisy readings).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
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


def _readings(gen, batch, d_in, seed, noise=0.05, offset=0.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + offset + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.5, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = spread * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out, bias=bias)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_eig(model, loss_fn, x, y, iters=15):
    """Largest Hessian eigenvalue of loss_fn(model(x), y), power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. amp overflow: kiln pyrometer in centikelvin under fp16 autocast ---------------------------


@scenario(
    family="raku_kiln_reduction_crackle_depth_fp16_gelu_regressor",
    optimizer="RMSprop",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Raku kiln crackle-depth regressor (GELU MLP on pull temperature, reduction time, "
    "glaze thickness, clay body, sawdust load and quench delay, predicting crackle depth; MSE, "
    "RMSprop, fp16 autocast + GradScaler). From step 90 a replacement pyrometer reports the "
    "pull temperature in centikelvin (about 1.3e5) instead of the standardised column: "
    "autocast runs fc1 in fp16, whose range ends at 65504, fc1's output is non-finite (the "
    "same batch is finite in float32) and the loss is non-finite at step 90.",
)
def h571_raku_pyrometer_centikelvin(ctx):
    gen = seeded(5711)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 57110)
    losses, fc1_bad, bad_x = [], [], None
    for step in range(140):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 0] = 1.3e5 + 4.0e3 * x[:, 0]
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
    ctx.check("inputs beyond fp16's range", bad_x is not None and float(bad_x.abs().max()) > 65504)
    ctx.check("loss first non-finite at step 90", first_bad == 90)
    ctx.check("fc1's fp16 output non-finite at step 90", len(fc1_bad) > 90 and fc1_bad[90])
    ctx.check("fc1 finite before step 90", not any(fc1_bad[:90]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 90", _mean(losses[80:90]) < 0.7 * _mean(losses[:10]))


# -- 2. sharpness above limit: warm-up peak lr typed 5.0 for 0.05 ---------------------------------

_CURL_ONSET = 4


@scenario(
    family="curling_stone_curl_offset_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=_CURL_ONSET,
    heldout=True,
    note="Curling-stone curl-offset regressor (tanh MLP on release speed, handle rotation, "
    "pebble age, ice temperature, sweeping effort and sheet humidity, MSE, plain SGD with a "
    "linear warm-up LambdaLR over 60 steps). The warm-up's peak lr is typed 5.0 for 0.05: "
    "the ramp climbs from 0 towards 5.0, lr x top Hessian eigenvalue (measured in the run by "
    "power iteration) passes 2 on the way and the loss blows up.",
)
def h571_curling_warmup_peak_typo(ctx):
    gen = seeded(5712)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 60))
    batches = _readings(gen, 128, 6, 57120)
    probe = next(batches)
    crossed = []

    def after(step, loss):
        if math.isfinite(loss) and loss < 1e3:
            eig = _top_eig(model, F.mse_loss, *probe)
            # the lr the next step uses
            if opt.param_groups[0]["lr"] * eig > 2.0:
                crossed.append(step + 1)

    losses, _ = _train(ctx, model, opt, batches, 150, F.mse_loss, after=after, sched=sched)
    ok = [v for v in losses if math.isfinite(v)]
    first_big = next(
        (i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * min(ok)), None
    )
    ctx.check("lr x sharpness past 2 in the run", bool(crossed))
    ctx.check("loss blows up", first_big is not None)
    ctx.check(
        "crossed before the blow-up",
        bool(crossed) and first_big is not None and crossed[0] <= first_big,
    )
    ctx.check(f"first crossing at step {_CURL_ONSET}", crossed[:1] == [_CURL_ONSET])
    ctx.check("trained first", min(ok[: _CURL_ONSET + 1]) < 0.9 * ok[0])


# -- 3. exploding gradients: He init divides by sqrt(fan_in) -----------------------------------


class _DeepBeacon(nn.Module):
    """Twelve-layer ReLU MLP over beacon signal readings, regresses the burial depth."""

    def __init__(self, d_in=8, hidden=64, depth=12):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            for lin in self.layers:
                # He init with tanh's gain 5/3 pasted on top of ReLU's sqrt(2)
                lin.weight.normal_(0.0, 5.0 / 3.0 * math.sqrt(2.0 / lin.in_features))
                lin.bias.zero_()

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="avalanche_transceiver_burial_depth_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Avalanche-transceiver burial-depth regressor (twelve-layer ReLU MLP on signal strength "
    "of three antennas, flux-line angle, distance reading, snow density and two search-strip "
    "offsets, MSE, SGD momentum). The hand-written init multiplies He's std by tanh's gain "
    "5/3 (copied from a tanh model): each layer multiplies the signal by about 1.7, the "
    "gradient grows through the "
    "depth towards the input (the gradient at layers.0's output over 100x that at the last "
    "layer's at init) and the "
    "run blows up within a few steps.",
)
def h571_avalanche_he_init_typo(ctx):
    gen = seeded(5713)
    model = _DeepBeacon()
    opt = torch.optim.SGD(model.parameters(), lr=2e-6, momentum=0.9)
    batches = _readings(gen, 64, 8, 57130)
    x, y = next(batches)
    outs = []
    hooks = [lin.register_forward_hook(lambda m, i, o: outs.append(o)) for lin in model.layers]
    pred = model(x)
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(F.mse_loss(pred, y), [outs[0], outs[-1]])
    ratio = float(grads[0].norm() / (grads[1].norm() + 1e-30))
    model.zero_grad(set_to_none=True)
    losses, _ = _train(ctx, model, opt, batches, 120, F.mse_loss)
    ok = [v for v in losses if math.isfinite(v)]
    ctx.check("layers.0's output gradient over 100x the last layer's at init", ratio > 100)
    ctx.check("loss blows up", not _finite(losses) or max(ok) > 100 * min(ok))


# -- 4. update ratio: fc1 group lr left at 0.0 ----------------------------------------------------


@scenario(
    family="sheepdog_trial_outrun_arc_two_group_relu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Sheepdog-trial outrun regressor (ReLU MLP on field length, flock size, wind, slope, "
    "handler whistle count, dog age and previous outrun, predicting the outrun arc width; MSE, "
    "Adagrad with two param groups). The fc1 group's lr is left at 0.0 from a fine-tuning "
    "config that froze the input layer: fc1's updates are exactly zero while fc2 and the head "
    "train.",
)
def h571_sheepdog_fc1_lr_zero(ctx):
    gen = seeded(5714)
    model = _Net(7, hidden=48)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adagrad(
        [{"params": list(model.fc1.parameters()), "lr": 0.0}, {"params": rest, "lr": 2e-2}]
    )
    fc1_0, fc2_0 = _flat(model.fc1), _flat(model.fc2)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 7, 57140), 200, F.mse_loss)
    fc1_move = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    fc2_move = float((_flat(model.fc2) - fc2_0).norm() / fc2_0.norm())
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fc1 moved under 1e-7 relative", fc1_move < 1e-7)
    ctx.check("fc2 moved over 1e-2 relative", fc2_move > 1e-2)
    ctx.check("loss fell somewhat", _fell(losses, ratio=0.95))


# -- 5. data outlier: one batch of depth in millimetres -----------------------------------------


@scenario(
    family="pearl_diving_descent_breath_hold_grade_gelu_classifier",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Pearl-diving breath-hold grade classifier (GELU MLP on dive depth, descent rate, "
    "bottom time, water temperature, heart rate, surface interval, lung volume and age, "
    "cross-entropy over 5 grades, Adamax). At step 120 one batch comes from a dive computer "
    "that exports depth in millimetres (x1000): the loss and gradient jump for that batch, "
    "Adamax's bounded step keeps the damage small and the run recovers.",
)
def h571_pearl_diving_millimetre_batch(ctx):
    gen = seeded(5715)
    model = _Net(8, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step != 120:
            return x, y
        x = x.clone()
        x[:, 0] = x[:, 0] * 1000.0
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 8, 5, 57150),
        240,
        F.cross_entropy,
        classifier=True,
        alter=alter,
    )
    base = _median(losses[105:120])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss over 20x at step 120", losses[120] > 20 * base)
    ctx.check("gradient over 10x at step 120", norms[120] > 10 * _median(norms[105:120]))
    ctx.check("recovers", _mean(losses[-20:]) < 1.5 * _mean(losses[105:120]))
    ctx.check("trained before step 120", _mean(losses[110:120]) < 0.7 * _mean(losses[:10]))


# -- 6. gradient spike: resumed step backpropagates the AMP loss scale in fp32 ---------------


@scenario(
    family="tightrope_balance_pole_sway_fall_gelu_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Tightrope fall classifier (GELU MLP on pole sway, rope tension, wind, foot angle, "
    "hip tilt and step timing, BCE with logits, SGD Nesterov, clipping at 2). The resume code "
    "restores the fp16 loss scale (1024) and multiplies the first resumed step's loss by it "
    "while that step runs in fp32 with no unscale: at step 130 the gradient is over 100x its "
    "usual size while the logged loss is ordinary; clipping bounds the update and the run "
    "carries on.",
)
def h571_tightrope_resume_loss_scale(ctx):
    gen = seeded(5716)
    model = _Net(6, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    base = _classes(gen, 64, 6, 2, 57160, spread=1.0)

    def batches():
        for x, y in base:
            yield x, y.float()

    losses, norms = _train(
        ctx,
        model,
        opt,
        batches(),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=lambda s, loss: loss * 1024.0 if s == 130 else loss,
        clip=2.0,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 100x at step 130", norms[130] > 100 * _median(norms[115:130]))
    ctx.check("logged loss ordinary at step 130", losses[130] < 2 * _median(losses[115:130]))
    ctx.check("trained", _fell(losses))


# -- 7. nonfinite: per-trace range normalisation divides 0 by 0 -----------------------------------


class _RangeNorm(nn.Module):
    """Scales each pressure trace to [0, 1] by its own min and max (no epsilon)."""

    def forward(self, x):
        lo = x.min(-1, keepdim=True).values
        hi = x.max(-1, keepdim=True).values
        return (x - lo) / (hi - lo)


class _GeyserNet(nn.Module):
    def __init__(self, length=16, hidden=48):
        super().__init__()
        self.norm = _RangeNorm()
        self.fc1 = nn.Linear(length, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(self.norm(x)))))
        return self.head(h).squeeze(-1)


def _geyser_traces(gen, batch=32, length=16):
    t = torch.linspace(0, 1, length)
    while True:
        phase = torch.rand(batch, 1, generator=gen)
        rate = 1 + 3 * torch.rand(batch, 1, generator=gen)
        x = 2.0 + torch.sin(2 * math.pi * (rate * t + phase))
        x = x + 0.05 * torch.randn(batch, length, generator=gen)
        yield x, rate.squeeze(-1) / 4 + 0.3 * phase.squeeze(-1)


@scenario(
    family="geyser_cone_pressure_trace_range_norm_silu_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=95,
    onset=95,
    heldout=True,
    note="Geyser eruption-interval regressor (SiLU MLP on a 16-sample cone pressure trace, "
    "scaled per trace to [0, 1] by its own min and max, MSE, NAdam). At step 95 one pressure "
    "sensor is stuck and its trace is flat: the range normalisation has no epsilon and "
    "computes 0/0, the norm module's output is NaN and the loss is NaN at step 95.",
)
def h571_geyser_flat_trace_zero_range(ctx):
    gen = seeded(5717)
    model = _GeyserNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = []
    model.norm.register_forward_hook(lambda m, i, o: seen.append(bool(torch.isnan(o).any())))

    def alter(step, x, y):
        if step != 95:
            return x, y
        x = x.clone()
        x[7] = 2.0
        return x, y

    losses, _ = _train(ctx, model, opt, _geyser_traces(gen), 160, F.mse_loss, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 95", first_bad == 95)
    ctx.check("norm output NaN at step 95", len(seen) > 95 and seen[95])
    ctx.check("norm output finite before", not any(seen[:95]))
    ctx.check("trained before step 95", _mean(losses[85:95]) < 0.7 * _mean(losses[:10]))


# -- 8. loss divergence: the target clock drifts ---------------------------------------------------


@scenario(
    family="hourglass_neck_sand_flow_time_drift_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Hourglass sand-flow-time regressor (SiLU MLP on neck diameter, grain size, sand "
    "moisture, bulb volume, tilt and temperature, MSE, RAdam). From step 100 the reference "
    "stopwatch that labels the runs drifts: its oscillator warms up and its offset grows "
    "with the square of the elapsed steps, the targets move away faster than the model "
    "follows and the loss climbs slowly to over 2x its best with no single jump.",
)
def h571_hourglass_stopwatch_drift(ctx):
    gen = seeded(5718)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step < 100:
            return x, y
        k = step - 100
        return x, y + 0.002 * k * k

    batches = _readings(gen, 64, 6, 57180, offset=1.0)
    losses, _ = _train(ctx, model, opt, batches, 280, F.mse_loss, alter=alter)
    best = min(losses[:100])
    jumps = [losses[i + 1] / losses[i] for i in range(100, len(losses) - 1)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("trained before step 100", _mean(losses[90:100]) < 0.7 * _mean(losses[:10]))
    ctx.check("climbs steadily", _mean(losses[-30:]) > 1.2 * _mean(losses[-90:-60]))
    ctx.check("loss climbs to over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("no single jump over 2x", max(jumps) < 2.0)


# -- 9. output logit divergence: z-loss sign flipped -----------------------------------------------


@scenario(
    family="hurling_sliotar_strike_zone_zloss_gelu_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="Hurling strike-zone classifier (GELU MLP on hurley swing speed, sliotar spin, "
    "contact height, stance, wind and distance to goal, cross-entropy over 6 zones plus a "
    "z-loss on the head's log-partition, AdamW without decay on the head). The z-loss term "
    "is written -1e-3 * logsumexp^2 instead of +1e-3 * logsumexp^2: it rewards a large "
    "log-partition, the head's logits grow without bound (over 20x their early size), the "
    "cross-entropy first falls, then climbs as the spread logits overshoot, and blows up "
    "to over 20x its best.",
)
def h571_hurling_zloss_sign_flip(ctx):
    gen = seeded(5719)
    model = _Net(6, hidden=48, out=6, act=nn.GELU, bias=False)
    head = list(model.head.parameters())
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.AdamW(
        [{"params": body, "weight_decay": 0.01}, {"params": head, "weight_decay": 0.0}], lr=3e-3
    )
    sizes = []
    model.head.register_forward_hook(lambda m, i, o: sizes.append(float(o.detach().abs().mean())))

    def backprop(step, loss):
        return loss - 1e-3 * torch.logsumexp(last["out"], -1).pow(2).mean()

    last = {}
    model.head.register_forward_hook(lambda m, i, o: last.__setitem__("out", o))
    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 6, 57190),
        250,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("head logits grew over 20x", _mean(sizes[-10:]) > 20 * _mean(sizes[5:15]))
    ctx.check("still growing at the end", _mean(sizes[-10:]) > 1.2 * _mean(sizes[-60:-50]))
    ctx.check("trained first", min(losses[:100]) < 0.3 * _mean(losses[:5]))
    ctx.check("cross-entropy blows up", max(losses[100:]) > 20 * min(losses[:100]))


# -- 10. adam second moment poisoned: loss weighted 1e4 for one step ---------------------------


@scenario(
    family="kayak_slalom_gate_split_time_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Kayak-slalom split-time regressor (SiLU MLP on gate count, upstream gates, water "
    "speed, paddler power, boat length and wave height, MSE, Adam beta2 0.999). At step 100 "
    "a config hot-reload reads the loss weight from the neighbouring field (1e5, a scale "
    "meant for a logging unit) for one step before the next reload fixes it: that one "
    "gradient is 1e5x its usual size and fills Adam's second moment; once the step's "
    "momentum has decayed (from step 150 on) the updates are over 20x smaller than before "
    "and the loss stalls above where it was heading.",
)
def h571_kayak_loss_weight_reload(ctx):
    gen = seeded(57110)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves = []
    prev = {}

    def before(step):
        prev["w"] = _flat(model)

    def after(step, loss):
        moves.append(float((_flat(model) - prev["w"]).norm()))

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 57111, noise=0.02),
        250,
        F.mse_loss,
        before=before,
        after=after,
        backprop=lambda s, loss: loss * 1e5 if s == 100 else loss,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 1000x at step 100", norms[100] > 1000 * _median(norms[85:100]))
    ctx.check(
        "updates over 20x smaller from step 150", _mean(moves[150:250]) < _mean(moves[80:100]) / 20
    )
    ctx.check("loss stalls after", _mean(losses[-10:]) > 0.8 * _mean(losses[95:100]))
    ctx.check("was still learning before", _mean(losses[90:100]) < 0.9 * _mean(losses[60:70]))


# -- 11. control (alarming-looking): MoE load-balancing weight 0.01 -> 0.1 at step 100 -------------


class _Experts(nn.Module):
    """Top-1 router over 4 expert MLPs with a Switch-style load-balancing loss."""

    def __init__(self, dim, hidden, n=4):
        super().__init__()
        self.router = nn.Linear(dim, n)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            for _ in range(n)
        )
        self.aux = torch.zeros(())
        self.load = torch.zeros(n)

    def forward(self, x):
        probs = torch.softmax(self.router(x), -1)
        top = probs.argmax(-1)
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            mask = top == i
            if mask.any():
                out[mask] = probs[mask, i : i + 1] * expert(x[mask])
        n = len(self.experts)
        frac = F.one_hot(top, n).float().mean(0)
        self.aux = n * (frac * probs.mean(0)).sum()
        self.load = frac.detach()
        return x + out


class _SledMoE(nn.Module):
    def __init__(self, d_in=8, dim=32):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.moe = _Experts(dim, 64)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        return self.head(self.moe(F.gelu(self.embed(x)))).squeeze(-1)


@scenario(
    family="dogsled_team_trail_pace_moe_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Dogsled team-pace regressor (a mixture-of-experts layer: a router over 4 GELU expert "
    "MLPs, top-1 routing, Switch load-balancing loss; MSE, Adam). Following the usual recipe "
    "the load-balancing weight is 0.01 for the first 100 steps and 0.1 after: the logged "
    "total loss steps up at step 100, which looks alarming, but the task loss keeps falling, "
    "all experts stay in use and nothing is wrong.",
)
def h571_dogsled_moe_aux_weight_step(ctx):
    gen = seeded(57120)
    model = _SledMoE()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _readings(gen, 128, 8, 57121, noise=0.02)
    totals, tasks, loads = [], [], []
    for step in range(220):
        x, y = next(batches)
        task = F.mse_loss(model(x), y)
        weight = 0.01 if step < 100 else 0.1
        total = task + weight * model.moe.aux
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        totals.append(float(total.detach()))
        tasks.append(float(task.detach()))
        loads.append(model.moe.load)
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(totals))
    ctx.check("task loss fell", _mean(tasks[-10:]) < 0.5 * _mean(tasks[:10]))
    ctx.check(
        "total loss steps up at step 100", _mean(totals[100:105]) > _mean(totals[95:100]) + 0.05
    )
    ctx.check("task loss not worse after", _mean(tasks[-10:]) <= _mean(tasks[90:100]) * 1.1)
    ctx.check(
        "every expert in use at the end", float(torch.stack(loads[-10:]).mean(0).min()) > 0.05
    )


# -- 12. control: drum-stroke classifier with OneCycleLR, label smoothing, clipping -------------


@scenario(
    family="taiko_drum_stroke_kind_onecycle_relu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Taiko drum-stroke classifier (ReLU MLP on bachi impact force, rim share, contact "
    "time, arm angle, rebound height, skin tension and two microphone levels, cross-entropy "
    "with label smoothing 0.1 over 6 stroke kinds, SGD momentum, OneCycleLR, clipping at "
    "1). An ordinary healthy run.",
)
def h571_taiko_stroke_onecycle(ctx):
    gen = seeded(57130)
    model = _Net(8, hidden=64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 8, 6, 57131),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, ratio=0.6))


# -- 13. control: rope-glaze Huber regressor with ASGD and ReduceLROnPlateau ---------------------


@scenario(
    family="abseil_rope_sheath_glaze_asgd_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Abseil rope sheath-glaze regressor (tanh MLP on descent speed, rope diameter, "
    "descender type, rope age, load and air temperature, Huber loss, ASGD, ReduceLROnPlateau "
    "on a running mean of the loss). Readings are noisy and one in twenty targets is off by "
    "a few units (a mis-read gauge), which Huber tolerates. An ordinary healthy run.",
)
def h571_abseil_glaze_asgd_plateau(ctx):
    gen = seeded(57140)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    base = _readings(gen, 64, 6, 57141, noise=0.2)

    def batches():
        for x, y in base:
            bad = torch.rand(len(y), generator=gen) < 0.05
            yield x, torch.where(bad, y + 4.0 * torch.randn(len(y), generator=gen), y)

    run = []

    def after(step, loss):
        run.append(loss)
        if step % 10 == 9:
            plateau.step(_mean(run[-10:]))

    losses, _ = _train(ctx, model, opt, batches(), 240, F.huber_loss, after=after)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, ratio=0.8))
