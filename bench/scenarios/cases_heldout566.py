"""Held-out set 566 (``h566_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: raku kiln reduction-time regressor fed kiln temperature in millikelvin under fp16 autocast
(amp_overflow, AdamW); beekeeping smoker fuel-burn regressor given one shard of targets in seconds
instead of minutes (data_outlier, NAdam); stilt-walker stride regressor whose StepLR gamma is typed
10 for 0.1 (sharpness_above_limit, plain SGD); hang-drum tone-field ReLU Elman RNN whose identity
recurrent init is scaled 1.15 (exploding_gradients, SGD momentum); millstone dressing furrow-depth
regressor whose head group lr is typed 3e-10 (update_ratio_out_of_range, RMSprop); canal-lock gate
leak BCE classifier whose loss weight is read in per-mille for one step (gradient_spike, SGD
Nesterov); sextant star-sight Gaussian NLL regressor taking log of a zero range reading
(nonfinite, Adagrad); quilting-frame stitch ReLU classifier whose fc2 bias a gate-init helper
fills with -5 (loss_of_plasticity, Adam); tightrope balance-pole sway regressor with its L2
penalty subtracted (loss_divergence, Adamax); handbell-choir chime classifier with its softmax
temperature typed 1e-3 (softmax_collapse, Adam).
Controls: sheepdog-trial whistle-command classifier whose dropout is switched off at step 150
(the training loss drops at once, alarming-looking, ASGD); frost-flower crystal-habit
MobileNet-style depthwise-separable CNN over generated images (RAdam, warm-up, label smoothing,
clipping); peat-turf dry-time Huber regressor (AdamW, ReduceLROnPlateau, accumulation 2,
clipping, noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


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


def _classes(gen, batch, d_in, classes, seed, noise=0.3):
    """Gaussian class clusters around fixed centres: a learnable classification task."""
    g = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = centres[y] + noise * 3 * torch.randn(batch, d_in, generator=gen)
        yield x, y


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


# -- 1. amp overflow: kiln temperature logged in millikelvin under fp16 autocast -------------------


@scenario(
    family="raku_kiln_reduction_time_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Raku kiln reduction-time regressor (GELU MLP on kiln temperature, glaze thickness, "
    "sawdust load, pull time, ambient humidity and pot mass, predicting minutes in the reduction "
    "can; MSE, AdamW, fp16 autocast + GradScaler). From step 80 a new pyrometer logger writes "
    "the kiln temperature in millikelvin (about 1.2e6) instead of the standardised column: "
    "autocast runs fc1 in fp16, whose range ends at 65504, fc1's output is non-finite (the same "
    "batch is finite in float32) and the loss is non-finite at step 80.",
)
def h566_raku_kiln_temperature_in_millikelvin(ctx):
    gen = seeded(5661)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 56610)
    losses, fc1_bad, bad_x = [], [], None
    for step in range(130):
        x, y = next(batches)
        if step >= 80:
            x = x.clone()
            x[:, 0] = 1.2e6 + 5.0e4 * x[:, 0]
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


# -- 2. data outlier: one shard of burn times in seconds instead of minutes -----------------------


@scenario(
    family="beekeeping_smoker_fuel_burn_silu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Beekeeping smoker fuel-burn regressor (SiLU MLP on fuel type, packing density, bellows "
    "rate, wind, humidity, cartridge age, chamber size and ember depth, predicting burn minutes; "
    "MSE, NAdam, gradient clipping at 1.0). At step 110 one shard from a second apiary's logger "
    "arrives with burn time in seconds (targets x60): the loss that step is over 100x, the "
    "gradient over 10x, clipping keeps the update bounded and the run recovers on clean data.",
)
def h566_smoker_burn_shard_in_seconds(ctx):
    gen = seeded(5662)
    model = _Net(8, hidden=48, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == 110:
            return x, y * 60.0
        return x, y

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 8, 56620), 220, F.mse_loss, alter=alter, clip=1.0
    )
    before = _median(losses[90:110])
    ctx.check("trained before the shard", _mean(losses[100:110]) < 0.7 * _mean(losses[:10]))
    ctx.check("loss over 100x at step 110", losses[110] > 100 * before)
    ctx.check("gradient over 10x at step 110", norms[110] > 10 * _median(norms[90:110]))
    ctx.check("recovers after", _mean(losses[-20:]) < 2.0 * _mean(losses[90:110]))
    ctx.check("finite throughout", _finite(losses))


# -- 3. sharpness above limit: StepLR gamma typed 10 for 0.1 ---------------------------------------


@scenario(
    family="stilt_walker_stride_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=60,
    heldout=True,
    note="Stilt-walker stride regressor (tanh MLP on stilt height, pace, load, slope, surface "
    "and walker mass, predicting stride length; MSE, plain SGD lr 0.1 with StepLR every 60 "
    "steps). The decay factor is typed gamma=10 instead of 0.1, so at step 60 the learning rate "
    "goes to 1.0: lr x top Hessian eigenvalue passes 2 and the loss blows up.",
)
def h566_stilt_stride_steplr_gamma_typo(ctx):
    gen = seeded(5663)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=10.0)
    batches = _readings(gen, 64, 6, 56630)
    probe = next(batches)
    record = {}

    def before(step):
        if step == 60:
            record["lr"] = opt.param_groups[0]["lr"]
            record["eig"] = _top_eig(model, F.mse_loss, *probe)

    losses, _ = _train(ctx, model, opt, batches, 160, F.mse_loss, before=before, sched=sched)
    early = _mean(losses[50:60])
    later = [v if math.isfinite(v) else float("inf") for v in losses[60:]]
    ctx.check("trained before step 60", early < 0.7 * _mean(losses[:10]))
    ctx.check("lr went to 1.0 at step 60", abs(record.get("lr", 0.0) - 1.0) < 1e-9)
    ctx.check("lr x sharpness past 2", record.get("lr", 0.0) * record.get("eig", 0.0) > 2.0)
    ctx.check("loss over 100x its pre-jump level", max(later) > 100 * early)


# -- 4. exploding gradients: IRNN identity init scaled 1.2 ----------------------------------------


class _ToneRNN(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.rnn = nn.RNN(2, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _tones(gen, batch=32, length=40):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        f = 0.1 + 0.3 * torch.rand(batch, 1, generator=gen)
        d = 0.02 + 0.08 * torch.rand(batch, 1, generator=gen)
        sig = torch.exp(-d * t) * torch.sin(f * t)
        x = torch.stack([sig, 0.1 * torch.randn(batch, length, generator=gen)], -1)
        yield x, 5 * d[:, 0]


@scenario(
    family="hang_drum_tone_field_relu_elman_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="Hang-drum tone-field decay regressor (ReLU Elman RNN over a strike envelope, "
    "predicting the decay rate; MSE, SGD momentum 0.9, small input weights, a sequence-length "
    "curriculum growing the window from 8 to 80 samples). The IRNN init helper is called with "
    "scale=1.15 instead of 1.0, so the recurrent weight is 1.15 x identity: backpropagation "
    "through time multiplies the gradient by about 1.15 per sample, the first sample's "
    "gradient is over 50x the last's at 40 samples, and as the curriculum lengthens the "
    "windows the gradient grows over 100x and the loss goes non-finite.",
)
def h566_hang_drum_irnn_gain_typo(ctx):
    gen = seeded(5664)
    model = _ToneRNN(32)
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(1.15 * torch.eye(32))
        model.rnn.bias_hh_l0.zero_()
        model.rnn.weight_ih_l0.mul_(0.05)
        model.rnn.bias_ih_l0.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _tones(gen, length=80)
    x0, y0 = next(batches)
    x0 = x0[:, :40].clone().requires_grad_(True)
    F.mse_loss(model(x0), y0).backward()
    g = x0.grad.norm(dim=(0, 2))
    first_last = float(g[0] / g[-1].clamp_min(1e-30))
    model.zero_grad(set_to_none=True)

    def alter(step, x, y):
        return x[:, : min(80, 8 + step // 2)], y

    losses, norms = _train(ctx, model, opt, batches, 150, F.mse_loss, alter=alter)
    fin = [v if math.isfinite(v) else float("inf") for v in losses]
    late = [v for v in norms[-10:] if math.isfinite(v)]
    ctx.check("first sample's gradient over 50x the last's", first_last > 50)
    ctx.check("trained at first", _mean(fin[20:30]) < 0.5 * fin[0])
    ctx.check("gradient grows over 100x", max(late, default=0.0) > 100 * _median(norms[:20]))
    ctx.check("loss goes non-finite", not math.isfinite(losses[-1]))


# -- 5. update ratio out of range: head group lr typed 3e-10 ---------------------------------------


@scenario(
    family="millstone_dressing_furrow_depth_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Millstone dressing furrow-depth regressor (ReLU MLP on stone diameter, harp count, "
    "land width, grain type, run hours and pick weight, predicting furrow depth; MSE, RMSprop "
    "with two param groups). The head group's lr is typed 3e-10 instead of 3e-4: the head's "
    "weights barely move (update/weight ratio below 1e-6) while the trunk learns.",
)
def h566_millstone_head_lr_typo(ctx):
    gen = seeded(5665)
    model = _Net(6, hidden=48)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.RMSprop(
        [{"params": trunk, "lr": 3e-4}, {"params": model.head.parameters(), "lr": 3e-10}]
    )
    head0, trunk0 = _flat(model.head), _flat(model.fc2)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 56650, offset=1.0), 200, F.mse_loss)
    head_move = float((_flat(model.head) - head0).norm() / head0.norm())
    trunk_move = float((_flat(model.fc2) - trunk0).norm() / trunk0.norm())
    ctx.check("head moved under 1e-6 relative", head_move < 1e-6)
    ctx.check("trunk moved over 1e-2 relative", trunk_move > 1e-2)
    ctx.check("finite throughout", _finite(losses))


# -- 6. gradient spike: loss weight read in per-mille for one step ---------------------------------


@scenario(
    family="canal_lock_gate_leak_gelu_bce_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Canal-lock gate-leak classifier (GELU MLP on gauge readings either side of the gate, "
    "paddle position, seal age and water temperature, predicting a leak; BCE with logits, SGD "
    "Nesterov, clipping at 1.0). At step 130 the stage weight is read from a config in "
    "per-mille (1000 instead of 1.0) for that one step: the backpropagated gradient is over "
    "100x while the logged loss is ordinary; clipping bounds the step and training continues.",
)
def h566_canal_gate_loss_weight_permille(ctx):
    gen = seeded(5666)
    model = _Net(8, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def batches():
        g = torch.Generator().manual_seed(56660)
        w = torch.randn(8, generator=g)
        while True:
            x = torch.randn(64, 8, generator=gen)
            yield x, ((x @ w + 0.3 * torch.randn(64, generator=gen)) > 0).float()

    def backprop(step, loss):
        return loss * (1000.0 if step == 130 else 1.0)

    losses, norms = _train(
        ctx,
        model,
        opt,
        batches(),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check("gradient over 100x at step 130", norms[130] > 100 * _median(norms[110:130]))
    ctx.check("logged loss ordinary at 130", losses[130] < 3 * _median(losses[110:130]))
    ctx.check("trained", _fell(losses))


# -- 7. nonfinite: log of a zero range reading ------------------------------------------------------


class _LogFeature(nn.Module):
    def forward(self, x):
        return torch.cat([x[:, :1], torch.log(x[:, 1:2]), x[:, 2:]], 1)


class _SightNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.logf = _LogFeature()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.logf(x))))))


def _gauss_nll(out, y):
    mu, logvar = out[:, 0], out[:, 1].clamp(-6, 6)
    return 0.5 * (logvar + (y - mu) ** 2 / logvar.exp()).mean()


@scenario(
    family="sextant_star_sight_log_feature_nll_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logf",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Sextant star-sight altitude-error regressor (SiLU MLP with a log-range feature module "
    "over horizon distance, dip, refraction, index error, temperature and pressure, predicting "
    "the altitude error's mean and log-variance; Gaussian NLL, Adagrad). The log feature has no "
    "clamp; at step 90 a sight with the horizon range logged as 0 arrives: log(0) = -inf, "
    "fc1 sums +inf and -inf into NaN and the loss is NaN at step 90.",
)
def h566_sextant_log_zero_range(ctx):
    gen = seeded(5667)
    model = _SightNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    seen = []
    model.logf.register_forward_hook(lambda m, i, o: seen.append(bool(torch.isfinite(o).all())))

    def batches():
        g = torch.Generator().manual_seed(56670)
        w = torch.randn(6, generator=g)
        while True:
            x = torch.randn(64, 6, generator=gen)
            x[:, 1] = 0.5 + 4 * torch.rand(64, generator=gen)
            f = torch.cat([x[:, :1], x[:, 1:2].log(), x[:, 2:]], 1)
            yield x, torch.tanh(f @ w / 2) + 0.1 * torch.randn(64, generator=gen)

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[5, 1] = 0.0
        return x, y

    losses, _ = _train(ctx, model, opt, batches(), 140, _gauss_nll, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first NaN at step 90", first_bad == 90 and math.isnan(losses[90]))
    ctx.check("log feature finite before 90", all(seen[:90]))
    ctx.check("log feature non-finite at 90", len(seen) > 90 and not seen[90])
    ctx.check("trained before step 90", _mean(losses[80:90]) < _mean(losses[:10]) - 0.3)


# -- 8. loss of plasticity: fc2 bias filled with -5 by a gate-init helper ---------------------------


@scenario(
    family="quilting_frame_stitch_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Quilting-frame stitch-quality classifier (ReLU MLP on stitch length, thread tension, "
    "batting loft, needle size, hoop position and fabric count, 6 stitch classes; cross-entropy, "
    "Adam). A helper meant to initialise a gate's bias to -5 is applied to fc2 too: every act2 "
    "unit is dead from the start, no gradient reaches fc1 or fc2 and the loss stays near chance.",
)
def h566_quilting_fc2_bias_gate_init(ctx):
    gen = seeded(5668)
    model = _Net(8, hidden=48, out=6)
    with torch.no_grad():
        model.fc2.bias.fill_(-5.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _classes(gen, 64, 8, 6, 56680)
    probe_x, _ = next(batches)
    losses, _ = _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    with torch.no_grad():
        h = model.act2(model.fc2(model.act1(model.fc1(probe_x))))
    dead = float((h <= 0).all(0).float().mean())
    ctx.check("over 90% of act2 dead at the end", dead > 0.9)
    ctx.check("loss stays near chance", _mean(losses[-20:]) > 0.8 * math.log(6))
    ctx.check("finite throughout", _finite(losses))


# -- 9. loss divergence: L2 penalty subtracted ------------------------------------------------------


@scenario(
    family="tightrope_balance_pole_sway_relu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Tightrope balance-pole sway regressor (ReLU MLP on pole length, pole mass, rope "
    "tension, wind, walker speed and rope sag, predicting sway amplitude; MSE, Adamax). The "
    "hand-written L2 penalty is subtracted from the loss instead of added: the weights grow "
    "steadily and the loss climbs slowly to several times its best with no single jump.",
)
def h566_tightrope_l2_sign_bug(ctx):
    gen = seeded(5669)
    model = _Net(6, hidden=48)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    w0 = float(_flat(model).norm())

    def backprop(step, loss):
        return loss - 0.15 * sum((p**2).sum() for p in model.parameters())

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 56690), 300, F.mse_loss, backprop=backprop
    )
    best = min(_mean(losses[i : i + 10]) for i in range(0, len(losses) - 10))
    jumps = max(losses[i + 1] / max(losses[i], 1e-9) for i in range(len(losses) - 1))
    ctx.check("weights over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs over 2.5x its best", _mean(losses[-10:]) > 2.5 * best)
    ctx.check("no single jump over 3x", jumps < 3.0)
    ctx.check("finite throughout", _finite(losses))


# -- 10. softmax collapse: temperature typed 1e-3 -------------------------------------------------


class _ChimeNet(_Net):
    def __init__(self, temperature):
        super().__init__(10, hidden=48, out=8, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="handbell_choir_chime_temperature_gelu_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Handbell-choir chime classifier (GELU MLP on ten partial amplitudes of a recorded "
    "strike, 8 bell classes; cross-entropy, Adam). The softmax temperature is typed 1e-3 "
    "instead of 1.0: logits are multiplied by 1000, and over 40% of rows' float32 target "
    "probability rounds to exactly 1.0 while the wrong rows carry huge losses.",
)
def h566_handbell_temperature_typo(ctx):
    gen = seeded(56610)
    model = _ChimeNet(1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _classes(gen, 64, 10, 8, 566100, noise=0.4)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
    frac = collapsed_fraction(logits, y)
    ctx.check("over 40% of rows' target probability exactly 1.0", frac > 0.4)
    ctx.check("logit spread over 100", float(logits.std(1).mean()) > 100)
    ctx.check("finite throughout", _finite(losses))


# -- 11. control: dropout switched off at step 150 ------------------------------------------------


class _WhistleNet(nn.Module):
    def __init__(self, d_in=12, hidden=96, classes=7, p=0.5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.drop2(F.relu(self.fc2(self.drop1(F.relu(self.fc1(x)))))))


@scenario(
    family="sheepdog_trial_whistle_dropout_classifier",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sheepdog-trial whistle-command classifier (ReLU MLP with dropout 0.5 on twelve pitch "
    "and duration features of a whistle, 7 commands; cross-entropy, ASGD). Healthy, "
    "alarming-looking: the schedule switches dropout off at step 150 for the fine-tuning phase, "
    "so the training loss drops at once by a large step; nothing is wrong.",
)
def h566_sheepdog_dropout_off_at_150(ctx):
    gen = seeded(56611)
    model = _WhistleNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=1e9)

    def before(step):
        if step == 150:
            model.drop1.p = 0.0
            model.drop2.p = 0.0

    batches = _classes(gen, 64, 12, 7, 566110, noise=0.5)
    losses, _ = _train(
        ctx, model, opt, batches, 260, F.cross_entropy, classifier=True, before=before
    )
    ctx.check("trained", _fell(losses, ratio=0.5))
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss drops at step 150", _mean(losses[150:160]) < 0.8 * _mean(losses[140:150]))


# -- 12. control: MobileNet-style depthwise-separable CNN over generated images -------------------


class _DSBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return F.relu6(self.bn2(self.pw(F.relu6(self.bn1(self.dw(x))))))


class _MobileNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.block1 = _DSBlock(8, 16, 2)
        self.block2 = _DSBlock(16, 32, 2)
        self.block3 = _DSBlock(32, 32, 1)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu6(self.bn0(self.stem(x)))
        x = self.block3(self.block2(self.block1(x)))
        return self.head(x.mean((2, 3)))


def _crystals(gen, batch=32, size=16):
    """Generated frost-flower images: four habits (stripe orientations / rings) in noise."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    r = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt()
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        f = 0.6 + 0.4 * torch.rand(batch, 1, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 1, 1, generator=gen)
        pats = torch.stack(
            [
                torch.sin(f * xx + ph),
                torch.sin(f * yy + ph),
                torch.sin(f * (xx + yy) / 1.4 + ph),
                torch.sin(f * r + ph),
            ],
            1,
        )
        img = pats[torch.arange(batch), y] + 0.5 * torch.randn(batch, size, size, generator=gen)
        yield img[:, None], y


@scenario(
    family="frost_flower_crystal_habit_mobilenet_cnn",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Frost-flower crystal-habit classifier (MobileNet-style depthwise-separable CNN: stem "
    "conv, three depthwise 3x3 + pointwise 1x1 blocks with BatchNorm and ReLU6, global average "
    "pool; generated 16x16 images of four habits in heavy noise; cross-entropy with label "
    "smoothing 0.1, RAdam, linear warm-up over 20 steps, clipping at 1.0). Healthy control.",
)
def h566_frost_flower_mobilenet(ctx):
    gen = seeded(56612)
    model = _MobileNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _train(
        ctx, model, opt, _crystals(gen), 160, loss_fn, classifier=True, clip=1.0, sched=sched
    )
    ctx.check("trained", _fell(losses, ratio=0.6))
    ctx.check("finite throughout", _finite(losses))


# -- 13. control: Huber regressor with plateau schedule and accumulation --------------------------


@scenario(
    family="peat_turf_dry_time_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Peat-turf dry-time regressor (GELU MLP on sod thickness, bank depth, wind, sun hours, "
    "rain, footing height and bog type, predicting days to dry; Huber, AdamW, "
    "ReduceLROnPlateau, accumulation over 2 micro-batches, clipping at 1.0, noisy hand-logged "
    "targets). Healthy control.",
)
def h566_peat_turf_huber_plateau(ctx):
    gen = seeded(56613)
    model = _Net(7, hidden=48, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 7, 566130, noise=0.3, offset=2.0)
    losses = []
    for _step in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=1.0) / 2
            loss.backward()
            total = total + loss
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(total.detach()))
        ctx.step(total)
        plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
    ctx.check("trained", _fell(losses, ratio=0.5))
    ctx.check("finite throughout", _finite(losses))
