"""Held-out set 565 (``h565_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: glass-lampwork bead regressor fed torch temperature in millikelvin under fp16 autocast
(amp_overflow, AdamW); camogie puck-out distance regressor fed one shard of targets in cm
(data_outlier, NAdam); thatch-spar hazel split regressor with its decoupled weight decay sign
flipped (loss_divergence, Adamax); shinty caman-swing regressor whose lr was typed 3.0 for 0.03
(sharpness_above_limit, plain SGD); Highland-bagpipe chanter-gracenote ReLU Elman RNN with its
orthogonal recurrent init gain typed 1.4 (exploding_gradients, SGD momentum); oak-barrel
cooperage charring regressor whose head lr multiplier was typed 1e-7 (update_ratio_out_of_range,
RMSprop); paraglider-brake toggle BCE classifier whose warm-up loss weight divides by an integer
fraction floored to 1e-3 for one step (gradient_spike, SGD Nesterov); fumarole steam-vent
regressor whose log-discharge feature has no clamp and meets a stalled gauge reading 0 (nonfinite,
RAdam); kendo strike-target classifier whose temperature was typed 1e-3 for 1.0 (softmax_collapse,
Adam); raku-kiln glaze craze ReLU classifier whose fc2 bias init helper got 2.5 for -0.0
(loss_of_plasticity, ASGD).
Controls: sandpiper flock landing-point tiny DDPM (noise-prediction MLP over 2-D points with a
timestep embedding; AdamW, warm-up + cosine, clipping); Morris-dance stick-clash classifier with
progressive unfreezing of one more layer every 50 steps (gradient norm jumps at each unfreeze,
alarming-looking, Adam); coracle river-crossing time Huber regressor (Adagrad,
ReduceLROnPlateau, accumulation 2, clipping, noisy gauges).
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


# -- 1. amp overflow: torch temperature logged in millikelvin under fp16 autocast ---------------


@scenario(
    family="lampwork_bead_annealing_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Glass-lampwork bead annealing regressor (GELU MLP on torch flame temperature, mandrel "
    "diameter, glass COE, bead mass, kiln ramp and room humidity, predicting minutes to anneal; "
    "MSE, AdamW, fp16 autocast + GradScaler). From step 80 a new pyrometer logs the flame "
    "temperature in millikelvin (about 1.4e6) instead of the standardised column: autocast runs "
    "fc1 in fp16, whose range ends at 65504, fc1's output is non-finite (the same batch is "
    "finite in float32) and the loss is non-finite at step 80.",
)
def h565_lampwork_pyrometer_millikelvin(ctx):
    gen = seeded(5651)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 56510)
    losses, fc1_bad, bad_x = [], [], None
    for step in range(130):
        x, y = next(batches)
        if step >= 80:
            x = x.clone()
            x[:, 0] = 1.4e6 + 5.0e4 * x[:, 0]
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
    ctx.check("loss first non-finite at step 80", first_bad == 80)
    ctx.check("fc1's fp16 output non-finite at step 80", len(fc1_bad) > 80 and fc1_bad[80])
    ctx.check("fc1 finite before step 80", not any(fc1_bad[:80]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 80", _mean(losses[70:80]) < 0.7 * _mean(losses[:10]))


# -- 2. data outlier: one shard of puck-out distances in centimetres ----------------------------


@scenario(
    family="camogie_puck_out_distance_silu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Camogie puck-out distance regressor (SiLU MLP on swing speed, sliotar wetness, wind, "
    "pitch slope, stance and hurl weight, predicting carry in standardised metres; MSE, NAdam, "
    "clipping at 1.0). The shard loaded at step 110 comes from a club whose GPS tool writes the "
    "carry in centimetres: that one batch's targets are 100x, its loss is over 100x the steps "
    "before and its gradient over 10x; the shard is gone the next step and the run recovers.",
)
def h565_camogie_shard_in_centimetres(ctx):
    gen = seeded(5652)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    batches = _readings(gen, 64, 6, 56520)

    def alter(step, x, y):
        return (x, y * 100.0) if step == 110 else (x, y)

    losses, norms = _train(ctx, model, opt, batches, 200, F.mse_loss, alter=alter, clip=1.0)
    before = _median(losses[95:110])
    ctx.check("loss at step 110 over 100x the steps before", losses[110] > 100 * before)
    ctx.check(
        "gradient at step 110 over 10x the steps before", norms[110] > 10 * _median(norms[95:110])
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("recovers within 3x of before", _median(losses[170:]) < 3 * before)
    ctx.check("trained before the shard", _mean(losses[100:110]) < 0.7 * _mean(losses[:10]))


# -- 3. loss divergence: decoupled weight decay with its sign flipped ---------------------------


@scenario(
    family="thatching_spar_hazel_split_silu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Thatching-spar hazel split regressor (SiLU MLP on rod diameter, moisture, age, knot "
    "count, twist and splitting-hook angle, predicting spar yield; MSE, Adamax). A hand-written "
    "decoupled weight decay step multiplies each weight by (1 + lr * wd) instead of (1 - lr * "
    "wd): the weights grow steadily, over 2x, and the loss, after falling, climbs slowly to "
    "over 3x its best with no single jump.",
)
def h565_spar_decay_sign_flip(ctx):
    gen = seeded(5653)
    model = _Net(6, hidden=48, act=nn.SiLU)
    lr, wd = 3e-3, 2.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 6, 56530)
    w0 = float(_flat(model).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(1 + lr * wd)

    losses, _ = _train(ctx, model, opt, batches, 260, F.mse_loss, after=after)
    best = min(losses)
    ibest = losses.index(best)
    jumps = [b / a for a, b in zip(losses[ibest:], losses[ibest + 1 :], strict=False)]
    ctx.check("weights over 2x their init norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss ends over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("loss fell first", ibest > 10 and best < 0.7 * _mean(losses[:5]))
    ctx.check("no single-step jump over 3x", max(jumps, default=0) < 3.0)
    ctx.check("finite throughout", _finite(losses))


# -- 4. sharpness above limit: SGD lr typed 3.0 for 0.03 ---------------------------------------


@scenario(
    family="shinty_caman_swing_carry_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Shinty caman-swing carry regressor (tanh MLP on swing arc, caman face angle, ball "
    "wetness, grip height, stride and turf length; MSE, plain SGD, linear warm-up over 40 "
    "steps). The peak lr was typed 3.0 for 0.03: as the warm-up climbs, lr x the top Hessian "
    "eigenvalue passes 2 and the loss blows up.",
)
def h565_shinty_lr_typo(ctx):
    gen = seeded(5654)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 40))
    batches = _readings(gen, 128, 6, 56540)
    probe = next(batches)
    crossed = []

    def after(step, loss):
        if math.isfinite(loss) and loss < 1e3:
            eig = _top_eig(model, F.mse_loss, *probe)
            if opt.param_groups[0]["lr"] * eig > 2.0:
                crossed.append(step)

    losses, _ = _train(ctx, model, opt, batches, 100, F.mse_loss, after=after, sched=sched)
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
    ctx.check("trained first", min(ok[:30]) < 0.7 * _mean(ok[:3]))


# -- 5. exploding gradients: orthogonal recurrent init gain typed 1.4 ---------------------------


class _ChanterRNN(nn.Module):
    """ReLU Elman RNN over gracenote frames, regresses the phrase's evenness from the last state."""

    def __init__(self, d_in=5, hidden=32, gain=1.4):
        super().__init__()
        self.rnn = nn.RNN(d_in, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
            self.rnn.bias_hh_l0.zero_()

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _gracenotes(gen, batch=32, length=40):
    while True:
        x = 0.5 * torch.rand(batch, length, 5, generator=gen)
        y = x[:, :, 0].std(1) * 4 - x[:, -6:, 2].mean(1)
        yield x, y


@scenario(
    family="highland_chanter_gracenote_relu_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="Highland-bagpipe chanter gracenote evenness regressor (ReLU Elman RNN over 40 frames "
    "of finger lift, bag pressure, pitch, duration and reed drift, MSE, SGD momentum). The "
    "orthogonal recurrent init takes gain=1.4 (a value meant for the input projection): the "
    "backward signal grows through time, the input gradient at the first frame is over 20x "
    "that at the last, and the run blows up.",
)
def h565_chanter_recurrent_gain_typo(ctx):
    gen = seeded(5655)
    model = _ChanterRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    batches = _gracenotes(gen)
    x, y = next(batches)
    x = x.clone().requires_grad_(True)
    F.mse_loss(model(x), y).backward()
    g = x.grad.norm(dim=(0, 2))
    ratio = float(g[0] / (g[-1] + 1e-30))
    model.zero_grad(set_to_none=True)
    losses, _ = _train(ctx, model, opt, batches, 150, F.mse_loss)
    ctx.check("first frame's input gradient over 20x the last's at init", ratio > 20)
    ctx.check("loss goes non-finite", not _finite(losses))
    ctx.check(
        "loss over 10x its first value on the way", max(losses[1:-1], default=0) > 10 * losses[0]
    )


# -- 6. update ratio: head lr multiplier typed 1e-7 ---------------------------------------------


@scenario(
    family="cooperage_barrel_char_level_two_group_gelu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Oak-barrel cooperage char-level regressor (GELU MLP on stave thickness, toasting time, "
    "flame height, oak origin, moisture and hoop tightness, predicting char depth; MSE, "
    "RMSprop, two param groups). The head's lr multiplier was meant as 0.1 and typed 1e-7: the "
    "head's updates are about 1e-9 of its weights, it never moves while fc1 and fc2 train.",
)
def h565_cooperage_head_lr_mult_typo(ctx):
    gen = seeded(5656)
    model = _Net(6, hidden=48, act=nn.GELU)
    base, head_mult = 2e-3, 1e-7
    rest = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.RMSprop(
        [
            {"params": rest, "lr": base},
            {"params": list(model.head.parameters()), "lr": base * head_mult},
        ]
    )
    head0, body0 = _flat(model.head), _flat(model.fc2)
    batches = _readings(gen, 64, 6, 56560)
    losses, _ = _train(ctx, model, opt, batches, 200, F.mse_loss)
    head_move = float((_flat(model.head) - head0).norm() / head0.norm())
    body_move = float((_flat(model.fc2) - body0).norm() / body0.norm())
    ctx.check("head moved under 1e-5 of its norm", head_move < 1e-5)
    ctx.check("fc2 moved over 5% of its norm", body_move > 0.05)
    ctx.check("head group lr under 1e-8", opt.param_groups[1]["lr"] < 1e-8)
    ctx.check("finite throughout", _finite(losses))


# -- 7. gradient spike: warm-up loss weight divides by an integer fraction floored to 1e-3 -------


@scenario(
    family="paraglider_brake_toggle_stall_gelu_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Paraglider brake-toggle stall classifier (GELU MLP on toggle travel, airspeed, "
    "sink rate, wing loading, turbulence and pitch, BCE on stall / no stall; SGD Nesterov, "
    "clipping at 1.0). The auxiliary re-weighting divides the loss by max(done // total, 1e-3) "
    "written with integer division: at step 130, when the logger restarts its counter, the "
    "fraction floors to 0 and the backpropagated loss is 1000x for one step. The logged loss "
    "is ordinary; the gradient spikes over 100x and clipping bounds the update.",
)
def h565_paraglider_integer_fraction(ctx):
    gen = seeded(5657)
    model = _Net(6, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    raw = _readings(gen, 64, 6, 56570)

    def batches():
        for x, y in raw:
            yield x, (y > 0.3).float()

    def backprop(step, loss):
        frac = 0 if step == 130 else 1
        return loss / max(frac, 1e-3)

    losses, norms = _train(
        ctx,
        model,
        opt,
        batches(),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check(
        "gradient at step 130 over 100x the steps before",
        norms[130] > 100 * _median(norms[115:130]),
    )
    ctx.check("logged loss at step 130 ordinary", losses[130] < 2 * _median(losses[115:130]))
    ctx.check("finite throughout", _finite(losses))
    ctx.check("trained", _fell(losses))


# -- 8. nonfinite: log-discharge feature with no clamp meets a stalled gauge ---------------------


class _LogDischarge(nn.Module):
    """log of the vent's steam discharge (column 0); the rest pass through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _VentNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logfeat = _LogDischarge()
        self.body = _Net(6, hidden=48, act=nn.SiLU)

    def forward(self, x):
        return self.body(self.logfeat(x))


@scenario(
    family="fumarole_steam_vent_sulfur_log_feature_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Fumarole steam-vent sulfur regressor (SiLU MLP after a log-discharge feature module, "
    "on vent discharge, gas temperature, wind, rain, crust thickness and tremor, predicting "
    "sulfur flux; MSE, RAdam). The log feature has no clamp; at step 90 a stalled gauge logs a "
    "discharge of exactly 0, log(0) = -inf in logfeat, and the loss is NaN at step 90.",
)
def h565_fumarole_log_zero_discharge(ctx):
    gen = seeded(5658)
    model = _VentNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    raw = _readings(gen, 64, 6, 56580)
    seen = []
    model.logfeat.register_forward_hook(
        lambda m, i, o: seen.append(bool((~torch.isfinite(o)).any()))
    )

    def batches():
        for x, y in raw:
            x = x.clone()
            x[:, 0] = torch.exp(0.5 * x[:, 0])
            yield x, y

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[7, 0] = 0.0
        return x, y

    losses, _ = _train(ctx, model, opt, batches(), 140, F.mse_loss, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 90", first_bad == 90)
    ctx.check("logfeat output non-finite at step 90", len(seen) > 90 and seen[90])
    ctx.check("logfeat finite before step 90", not any(seen[:90]))
    ctx.check("trained before step 90", _mean(losses[80:90]) < 0.7 * _mean(losses[:10]))


# -- 9. softmax collapse: temperature typed 1e-3 for 1.0 ----------------------------------------


class _TempNet(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.body = _Net(d_in, hidden=48, out=48, act=nn.ReLU)
        self.head = nn.Linear(48, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(F.relu(self.body(x))) / self.temperature


def _classes(gen, batch, d_in, classes, seed, spread=1.2):
    g = torch.Generator().manual_seed(seed)
    centres = spread * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + torch.randn(batch, d_in, generator=gen), y


@scenario(
    family="kendo_shinai_strike_target_temperature_relu_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kendo shinai strike-target classifier (ReLU MLP on shinai tip speed, footwork, "
    "kiai loudness, distance and angle, cross-entropy over men / kote / do / tsuki; Adam). The "
    "softmax temperature was typed 1e-3 for 1.0: the logits are 1000x, the softmax saturates, "
    "over 40% of rows give their target probability exactly 1.0 in float32.",
)
def h565_kendo_temperature_typo(ctx):
    gen = seeded(5659)
    model = _TempNet(8, 4, temperature=1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _classes(gen, 64, 8, 4, 56590)
    probe_x, probe_y = next(batches)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        logits = model(probe_x).float()
    p = torch.softmax(logits, -1)
    collapsed = float((p.gather(1, probe_y[:, None]) == 1.0).float().mean())
    ctx.check("over 40% of rows' target probability exactly 1.0", collapsed > 0.4)
    ctx.check("max |logit| over 100", float(logits.abs().max()) > 100)


# -- 10. loss of plasticity: fc2 bias init helper gets 2.5 with the sign dropped ----------------


@scenario(
    family="raku_kiln_glaze_craze_dead_relu_classifier",
    optimizer="ASGD",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Raku-kiln glaze craze classifier (ReLU MLP on kiln pull temperature, reduction time, "
    "combustible, glaze thickness, clay body and quench, cross-entropy over 5 craze grades; "
    "ASGD). An init helper meant to set fc2's bias to +0.1 is called with the offset of the "
    "input normalisation, -2.5: over 90% of act2 is never positive, those units get no "
    "gradient and stay dead, and the loss stays near chance.",
)
def h565_raku_fc2_bias_init(ctx):
    gen = seeded(5660)
    model = _Net(8, hidden=48, out=5, act=nn.ReLU)
    with torch.no_grad():
        model.fc2.bias.fill_(-2.5)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    batches = _classes(gen, 64, 8, 5, 56600)
    probe_x, _ = next(batches)
    acts = {}
    model.act2.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    losses, _ = _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    with torch.no_grad():
        model(probe_x)
    dead = float((acts["a"] <= 0).all(0).float().mean())
    ctx.check("over 90% of act2 dead at the end", dead > 0.9)
    ctx.check("loss stays above 0.8x chance", _mean(losses[-10:]) > 0.8 * math.log(5))
    ctx.check("finite throughout", _finite(losses))


# -- 11. control: tiny DDPM over 2-D landing points --------------------------------------------


class _EpsNet(nn.Module):
    """Noise-prediction MLP over 2-D points with a sinusoidal timestep embedding."""

    def __init__(self, hidden=64, emb=16):
        super().__init__()
        self.emb = emb
        self.t_proj = nn.Linear(emb, hidden)
        self.fc1 = nn.Linear(2, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2)

    def forward(self, x, t):
        freqs = torch.exp(-math.log(1000.0) * torch.arange(self.emb // 2) / (self.emb // 2))
        ang = t[:, None].float() * freqs[None]
        e = torch.cat([ang.sin(), ang.cos()], 1)
        h = F.silu(self.fc1(x) + self.t_proj(e))
        return self.out(F.silu(self.fc2(h)))


@scenario(
    family="sandpiper_flock_landing_point_ddpm_mlp",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Sandpiper flock landing-point denoising diffusion model (noise-prediction SiLU MLP "
    "over 2-D landing points on a curved tide line, sinusoidal timestep embedding, 100 "
    "diffusion steps with a linear beta schedule, MSE on the noise; AdamW, linear warm-up then "
    "cosine decay, clipping at 1.0). A healthy control: the noise loss is noisy from the "
    "random timesteps but falls.",
)
def h565_sandpiper_ddpm(ctx):
    gen = seeded(5661)
    model = _EpsNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 300
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 30 if s < 30 else 0.5 * (1 + math.cos(math.pi * (s - 30) / (steps - 30)))
        ),
    )
    betas = torch.linspace(1e-4, 0.05, 100)
    abar = torch.cumprod(1 - betas, 0)
    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        u = torch.rand(128, generator=gen) * 2 * math.pi
        x0 = torch.stack([torch.cos(u), 0.5 * torch.sin(2 * u)], 1)
        x0 = x0 + 0.03 * torch.randn(128, 2, generator=gen)
        t = torch.randint(0, 100, (128,), generator=gen)
        eps = torch.randn(128, 2, generator=gen)
        a = abar[t][:, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = F.mse_loss(model(xt, t), eps)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("noise loss fell", _fell(losses, k=30, ratio=0.8))
    ctx.check("finite throughout", _finite(losses))


# -- 12. control (alarming-looking): progressive unfreezing every 50 steps ----------------------


@scenario(
    family="morris_dance_stick_clash_progressive_unfreeze_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Morris-dance stick-clash classifier (ReLU MLP fc1-fc2-fc3-head on 32 readings of stick "
    "speed, dancer spacing, bell jingle, hop height and tune tempo, cross-entropy over 6 figures; "
    "Adam). Progressive unfreezing: only the head trains at first and one more layer, from "
    "the top down, is unfrozen every 50 steps; the gradient norm jumps at each unfreeze. A "
    "healthy, alarming-looking control: the loss keeps falling.",
)
def h565_morris_progressive_unfreeze(ctx):
    gen = seeded(5662)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(32, 48))
    model.add_module("act1", nn.ReLU())
    model.add_module("fc2", nn.Linear(48, 48))
    model.add_module("act2", nn.ReLU())
    model.add_module("fc3", nn.Linear(48, 48))
    model.add_module("act3", nn.ReLU())
    model.add_module("head", nn.Linear(48, 6))
    order = ["head", "fc3", "fc2", "fc1"]
    for name in order[1:]:
        getattr(model, name).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 32, 6, 56620, spread=0.6)

    def before(step):
        if step > 0 and step % 50 == 0 and step // 50 < len(order):
            getattr(model, order[step // 50]).requires_grad_(True)

    losses, norms = _train(
        ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, before=before
    )
    jumps = [norms[s] / _median(norms[s - 5 : s]) for s in (50, 100, 150)]
    ctx.check("gradient norm jumps over 1.25x at each unfreeze", min(jumps) > 1.25)
    ctx.check("all layers trainable at the end", all(p.requires_grad for p in model.parameters()))
    ctx.check("loss fell", _fell(losses))
    ctx.check("finite throughout", _finite(losses))


# -- 13. control: Huber regressor with Adagrad, plateau schedule, accumulation, clipping ---------


@scenario(
    family="coracle_river_crossing_time_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="Coracle river-crossing time regressor (tanh MLP on current speed, hide-and-willow "
    "hull weight, paddler reach, river width, wind and load, Huber loss; Adagrad, "
    "ReduceLROnPlateau, gradient accumulation over 2 micro-batches, clipping at 1.0, noisy "
    "gauges). A healthy control.",
)
def h565_coracle_huber_adagrad(ctx):
    gen = seeded(5663)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _readings(gen, 32, 6, 56630, noise=0.3)
    ctx.attach(model, opt)
    losses = []
    for _ in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=1.0) / 2
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        plateau.step(float(total))
        losses.append(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, ratio=0.8))
    ctx.check("finite throughout", _finite(losses))
