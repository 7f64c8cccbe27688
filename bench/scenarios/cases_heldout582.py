"""Held-out set 582 (``h582_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: capstan bar-heave turn-rate regressor whose lr gets the linear scaling rule twice
(sharpness_above_limit, plain SGD); spinning-jenny spindle-twist regressor whose hand-written
decoupled weight decay multiplies by (1 + lr * wd) (loss_divergence, SGD momentum); lace-bobbin
pillow thread-tension regressor fed raw pascals under fp16 autocast (amp_overflow, AdamW);
treadle-lathe spindle-chatter Elman RNN with recurrent weights initialised at gain 3
(exploding_gradients, Adadelta); swage-block bending-force regressor whose backbone group lr
multiplier is 1 // 10 (update_ratio_out_of_range, Adamax, param groups); bat-and-trap ball-flight
classifier fed one shard with a stuck radar column (data_outlier, Adam, label smoothing);
knur-and-spell pot-release BCE classifier whose resumed step multiplies the loss by a stale
loss scale (gradient_spike, SGD Nesterov, accumulation); kubb baton spin-landing Gaussian NLL net
whose std head is a bare ReLU with no clamp (nonfinite, NAdam); stoolball delivery-kind
classifier with the teacher's distillation temperature applied to the student (softmax_collapse,
RAdam); oast-cowl vane-stall ReLU classifier whose warm restart peak lr is typed 100x
(loss_of_plasticity, SGD momentum).
Controls: blackwork embroidery motif VAE whose KL weight is annealed from 0 to 1 (the total loss
rises through the anneal; alarming-looking, RMSprop); sickle-peening rhythm ALBERT encoder built
from a tiny config (AdamW, warm-up + linear decay, clipping); flail swingle-wear Huber regressor
(Adagrad, ReduceLROnPlateau, heavy-tailed noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    grad_norm,
    scenario,
    seeded,
)


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
    after=None,
    alter=None,
    clip=None,
    sched=None,
    plateau=None,
    forward=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    forward = forward or (lambda m, x: m(x))
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(forward(model, x), y)
        loss.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if after is not None:
            after(step)
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
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
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.5, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = spread * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


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


# -- 1. sharpness above limit: linear scaling rule applied twice ---------------------------------

SHARP_ONSET = 6


@scenario(
    family="capstan_bar_heave_turn_rate_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=SHARP_ONSET,
    heldout=True,
    note="Capstan bar-heave turn-rate regressor (tanh MLP on crew count, bar length, cable "
    "load, drum diameter, deck slope and pawl friction; MSE, plain SGD with a 60-step linear "
    "warm-up). The base lr 0.05 tuned for batch 32 is scaled for batch 256 by the linear "
    "scaling rule twice (once in the config loader, once in the trainer), peak 3.2 for 0.4: "
    "during the warm-up lr x (top Hessian eigenvalue) passes 2 and the loss blows up.",
)
def h582_capstan_lr_scaled_twice(ctx):
    gen = seeded(5821)
    model = _Net(6, hidden=32, act=nn.Tanh)
    peak = 0.05 * (256 / 32) * (256 / 32)
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 60))
    batches = _readings(gen, 256, 6, 58210)
    probe = next(batches)
    products = {}

    def before(step):
        if step < 30:
            products[step] = opt.param_groups[0]["lr"] * _top_eig(model, F.mse_loss, *probe)

    losses, _ = _train(ctx, model, opt, batches, 100, F.mse_loss, before=before, sched=sched)
    crossed = [s for s, v in sorted(products.items()) if v > 2.0]
    first_cross = crossed[0] if crossed else None
    blown = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * min(losses)]
    ctx.check("lr x sharpness below 2 at step 0", products.get(0, 9.0) < 2.0)
    ctx.check("lr x sharpness passes 2 during warm-up", first_cross is not None)
    ctx.check(
        "loss blows up (over 20x its best) after the crossing",
        bool(blown) and first_cross is not None and blown[0] >= first_cross,
    )
    ctx.check(
        "crossing near the declared onset",
        first_cross is not None and abs(first_cross - SHARP_ONSET) <= 2,
    )


# -- 2. loss divergence: decoupled weight decay with the wrong sign ------------------------------


@scenario(
    family="spinning_jenny_spindle_twist_silu_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Spinning-jenny spindle-twist regressor (SiLU MLP on wheel speed, spindle count, "
    "carriage draw, roving thickness, humidity and band tension; MSE, SGD momentum 0.9). A "
    "hand-written decoupled weight decay after each step does p *= (1 + lr * wd) where "
    "(1 - lr * wd) was meant: every weight is inflated a little each step, the net fits "
    "first, then the weights grow and the loss climbs slowly, with no jump, to over twice "
    "its best.",
)
def h582_spinning_jenny_decay_sign(ctx):
    gen = seeded(5822)
    model = _Net(6, hidden=48, act=nn.SiLU)
    lr, wd = 0.01, 0.5
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    w0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "weight" in n:
                    p.mul_(1 + lr * wd)

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 58220), 300, F.mse_loss, after=after)
    smooth = [_mean(losses[i : i + 20]) for i in range(0, len(losses) - 19)]
    best = min(smooth)
    jumps = [smooth[i + 10] / smooth[i] for i in range(len(smooth) - 10)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("weights over 2x their init norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 2x its best", smooth[-1] > 2 * best)
    ctx.check("best reached before the last third", smooth.index(best) < 2 * len(smooth) // 3)
    ctx.check("no jump: 20-step moving mean never doubles in 10 steps", max(jumps) < 2.0)


# -- 3. amp overflow: thread tension in raw pascals under fp16 autocast --------------------------

AMP_ONSET = 60


@scenario(
    family="lace_bobbin_pillow_thread_tension_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=AMP_ONSET,
    onset=AMP_ONSET,
    heldout=True,
    note="Lace-bobbin pillow thread-tension regressor (GELU MLP on bobbin weight, pin spacing, "
    "thread count, pillow firmness, twist rate and pinning pressure; MSE, AdamW, fp16 autocast "
    "+ GradScaler). From step 60 a new logging script writes the pinning pressure in raw "
    "pascals (about 2e5) instead of the standardised column: fc1 runs in fp16 under autocast, "
    "its output passes 65504 and is non-finite (the same batch is finite in float32), and the "
    "loss is non-finite at step 60.",
)
def h582_lace_bobbin_raw_pascals(ctx):
    gen = seeded(5823)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 58230)
    losses, fc1_bad, bad_x, bad_y = [], [], None, None
    for step in range(110):
        x, y = next(batches)
        if step >= AMP_ONSET:
            x = x.clone()
            x[:, 5] = 2.0e5 + 6.0e3 * x[:, 5]
            bad_x, bad_y = x, y
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
    with torch.no_grad():
        fp32_loss = float(F.mse_loss(model(bad_x), bad_y)) if bad_x is not None else math.nan
    ctx.check("trained finitely before the bug", _fell(losses[:AMP_ONSET]))
    ctx.check("fc1 output finite before the onset", not any(fc1_bad[:AMP_ONSET]))
    ctx.check("fc1 output non-finite at the onset", len(fc1_bad) > AMP_ONSET and fc1_bad[AMP_ONSET])
    ctx.check("loss first non-finite at the onset", first_bad == AMP_ONSET)
    ctx.check("same batch finite in float32", math.isfinite(fp32_loss))


# -- 4. exploding gradients: recurrent weights initialised at gain 3 -----------------------------


class _LatheRNN(nn.Module):
    def __init__(self, gain, hidden=32):
        super().__init__()
        self.rnn = nn.RNN(3, hidden, batch_first=True, nonlinearity="tanh")
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _lathe_batches(gen, batch=32, length=40):
    """Accelerometer traces (3 axes); the target is the chatter amplitude of the trace."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        freq = 0.2 + 0.6 * torch.rand(batch, 1, generator=gen)
        amp = torch.rand(batch, 1, generator=gen)
        base = amp * torch.sin(freq * t)
        x = torch.stack([base, 0.5 * base, torch.zeros_like(base)], -1)
        x = x + 0.1 * torch.randn(batch, length, 3, generator=gen)
        yield x, amp.squeeze(-1)


def _time_ratio(model, x, y):
    """|dL/dx_0| / |dL/dx_T|: how much the gradient grows back through time."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.mse_loss(model(x), y), [x])
    per_t = g.norm(dim=(0, 2))
    return float(per_t[0] / (per_t[-1] + 1e-12))


@scenario(
    family="treadle_lathe_spindle_chatter_elman_rnn",
    optimizer="Adadelta",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="Treadle-lathe spindle-chatter regressor (tanh Elman RNN over 40 steps of a 3-axis "
    "tool-rest accelerometer, predicting the chatter amplitude; MSE, Adadelta). The recurrent "
    "weights are initialised orthogonal with gain 3.0 (the init helper's gain argument was "
    "meant for the input weights): the recurrence is chaotic and the gradient grows back "
    "through time, over 20x larger at the first step than at the last, and stays so.",
)
def h582_treadle_lathe_recurrent_gain(ctx):
    gen = seeded(5824)
    model = _LatheRNN(3.0)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    batches = _lathe_batches(gen)
    probe = next(batches)
    ratios = {}

    def before(step):
        if step in (0, 20, 40, 60, 79):
            ratios[step] = _time_ratio(model, *probe)

    losses, norms = _train(ctx, model, opt, batches, 80, F.mse_loss, before=before)
    twin = _LatheRNN(1.0)
    twin_ratio = _time_ratio(twin, *probe)
    ctx.check("gradient over 20x larger at t=0 than at t=T at init", ratios.get(0, 0) > 20)
    ctx.check("still over 20x at the end", ratios.get(79, 0) > 20)
    ctx.check("over 10x a gain-1 twin's growth", ratios.get(0, 0) > 10 * twin_ratio)
    ctx.check("finite throughout", _finite(losses))


# -- 5. update ratio out of range: backbone lr multiplier 1 // 10 --------------------------------


@scenario(
    family="swage_block_bending_force_two_group_silu_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Swage-block bending-force regressor (SiLU MLP on bar section, stock temperature, "
    "hole profile, sledge weight, blow count and alloy hardness; MSE, Adamax with two param "
    "groups). The backbone group's lr is base_lr * (1 // 10), an integer division where "
    "1 / 10 was meant: its lr is exactly 0, fc1 and fc2 never move while the head trains.",
)
def h582_swage_block_int_division(ctx):
    gen = seeded(5825)
    model = _Net(6, hidden=48, act=nn.SiLU)
    base_lr = 2e-3
    body = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adamax(
        [{"params": body, "lr": base_lr * (1 // 10)}, {"params": model.head.parameters()}],
        lr=base_lr,
    )
    b0, h0 = _flat(nn.ModuleList([model.fc1, model.fc2])), _flat(model.head)
    losses, norms = _train(ctx, model, opt, _readings(gen, 64, 6, 58250), 200, F.mse_loss)
    body_move = float((_flat(nn.ModuleList([model.fc1, model.fc2])) - b0).norm() / b0.norm())
    head_move = float((_flat(model.head) - h0).norm() / h0.norm())
    ctx.check("backbone group lr is 0", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("fc1 and fc2 moved under 1e-6 of their norm", body_move < 1e-6)
    ctx.check("backbone receives gradient", _median(norms) > 1e-4)
    ctx.check("head moved over 5% of its norm", head_move > 0.05)
    ctx.check("finite throughout", _finite(losses))


# -- 6. data outlier: one shard with a stuck radar column ----------------------------------------

OUTLIER_STEP = 100


@scenario(
    family="bat_and_trap_ball_flight_zone_gelu_classifier",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Bat-and-trap ball-flight zone classifier (GELU MLP on trap-lever strike speed, bat "
    "angle, launch height, spin and four radar readings; 5 landing zones, cross-entropy with "
    "label smoothing 0.1, Adam). At step 100 one shard comes from a radar whose range column "
    "is stuck at its raw sentinel 4000 for every row: the loss jumps over 20x and the "
    "gradient over 10x for that batch; the run recovers afterwards.",
)
def h582_bat_and_trap_stuck_radar(ctx):
    gen = seeded(5826)
    model = _Net(8, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == OUTLIER_STEP:
            x = x.clone()
            x[:, 3] = 4000.0
        return x, y

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, norms = _train(
        ctx, model, opt, _classes(gen, 64, 8, 5, 58260), 200, loss_fn, classifier=True, alter=alter
    )
    pre_l = _median(losses[OUTLIER_STEP - 20 : OUTLIER_STEP])
    pre_g = _median(norms[OUTLIER_STEP - 20 : OUTLIER_STEP])
    ctx.check("loss over 20x at the shard", losses[OUTLIER_STEP] > 20 * pre_l)
    ctx.check("gradient over 10x at the shard", norms[OUTLIER_STEP] > 10 * pre_g)
    ctx.check(
        "recovers: last 20 steps within 1.5x the pre-shard level", _mean(losses[-20:]) < 1.5 * pre_l
    )
    ctx.check("finite throughout", _finite(losses))


# -- 7. gradient spike: a stale loss scale multiplies one resumed step ---------------------------

SPIKE_STEP = 90


@scenario(
    family="knur_and_spell_pot_release_accum_bce_classifier",
    optimizer="SGD(nesterov=True, momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Knur-and-spell pot-release classifier (GELU MLP on spring tension, pin height, knur "
    "weight, pummel speed and wind; BCE on 'clean release', SGD Nesterov, 4-micro-batch "
    "gradient accumulation). The run is resumed at step 90 from a checkpoint of an fp16 "
    "experiment; for that first resumed step the stored loss scale 64 multiplies the loss "
    "with no unscale: the gradient is over 30x its median for one step while the logged "
    "loss is ordinary.",
)
def h582_knur_spell_stale_loss_scale(ctx):
    gen = seeded(5827)
    model = _Net(5, hidden=40, out=1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(58270)
    w = torch.randn(5, generator=g)
    losses, norms, accum = [], [], 4
    for step in range(160):
        scale = 64.0 if step == SPIKE_STEP else 1.0
        total = 0.0
        for _ in range(accum):
            x = torch.randn(32, 5, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(32, generator=gen)) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            (scale * loss / accum).backward()
            total += float(loss.detach()) / accum
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        logged = torch.tensor(total)
        losses.append(total)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    pre_g = _median(norms[SPIKE_STEP - 30 : SPIKE_STEP])
    pre_l = _median(losses[SPIKE_STEP - 30 : SPIKE_STEP])
    ctx.check("gradient over 30x its median at the resumed step", norms[SPIKE_STEP] > 30 * pre_g)
    ctx.check("logged loss ordinary at that step", losses[SPIKE_STEP] < 2 * pre_l)
    ctx.check(
        "one step only: next gradient under a fifth of the spike",
        norms[SPIKE_STEP + 1] < norms[SPIKE_STEP] / 5,
    )
    ctx.check("trained before the resume", _fell(losses[:SPIKE_STEP]))
    ctx.check("finite throughout", _finite(losses))


# -- 8. nonfinite: a std head that is a bare ReLU, no clamp --------------------------------------


class _SpinNLL(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 48)
        self.fc2 = nn.Linear(48, 48)
        self.mean_head = nn.Linear(48, 1)
        self.std_head = nn.Linear(48, 1)
        nn.init.constant_(self.std_head.bias, 1.0)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return self.mean_head(h).squeeze(-1), F.relu(self.std_head(h)).squeeze(-1)


@scenario(
    family="kubb_baton_spin_landing_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("std_head",),
    diverges=13,
    heldout=True,
    note="Kubb baton spin-landing regressor (SiLU net with a mean and a std head on throw "
    "height, release spin, baton length, wind, lawn slope and distance, predicting the "
    "landing offset; Gaussian NLL, NAdam). The std head is a bare ReLU with no clamp or eps: "
    "as the net sharpens its predictions the std of a sample reaches exactly 0, log(0) and "
    "0/0 make the loss NaN at step 13 and training stops.",
)
def h582_kubb_std_unclamped(ctx):
    gen = seeded(5828)
    model = _SpinNLL()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    stds = []

    def loss_fn(out, y):
        mu, std = out
        stds.append(float(std.detach().min()))
        return (torch.log(std) + (y - mu) ** 2 / (2 * std**2)).mean()

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 58280, noise=0.02), 300, loss_fn)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss becomes non-finite", first_bad is not None)
    ctx.check("finite for the first 10 steps", first_bad is not None and first_bad >= 10)
    ctx.check("a std is exactly 0 at that step", first_bad is not None and stds[first_bad] == 0.0)
    ctx.check("all stds positive before", first_bad is not None and min(stds[:first_bad]) > 0)


# -- 9. softmax collapse: the teacher's temperature applied to the student -----------------------


@scenario(
    family="stoolball_delivery_kind_temperature_relu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Stoolball delivery-kind classifier (ReLU MLP on ball speed, bounce point, swerve, "
    "release height, wicket-board hit point and bowler stride; 6 delivery kinds, "
    "cross-entropy, RAdam). The sharpening temperature 0.01 meant for the distillation "
    "teacher is applied to the student's logits (logits / 0.01; the head is zero-initialised): the student's softmax "
    "saturates and over 40% of rows give their target probability exactly 1.0 in float32.",
)
def h582_stoolball_teacher_temperature(ctx):
    gen = seeded(5829)
    model = _Net(6, hidden=48, out=6)
    nn.init.zeros_(model.head.weight)
    tau = 0.01
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 6, 6, 58290, spread=2.0, noise=0.3)
    seen = []

    def forward(m, x):
        logits = m(x) / tau
        seen.append(logits.detach())
        return logits

    ys = []

    def alter(step, x, y):
        ys.append(y)
        return x, y

    losses, _ = _train(
        ctx,
        model,
        opt,
        batches,
        150,
        F.cross_entropy,
        classifier=True,
        forward=forward,
        alter=alter,
    )
    first = collapsed_fraction(seen[0], ys[0])
    last = _mean([collapsed_fraction(s, y) for s, y in zip(seen[-10:], ys[-10:], strict=True)])
    ctx.check("few rows collapsed at step 0", first < 0.1)
    ctx.check("over 40% of rows' target probability exactly 1.0 at the end", last > 0.4)
    ctx.check("finite throughout", _finite(losses))


# -- 10. loss of plasticity: warm restart peak lr typed 100x -------------------------------------

RESTART = 80


@scenario(
    family="oast_cowl_vane_stall_restart_relu_classifier",
    optimizer="SGD(momentum=0.9)",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    onset=RESTART,
    heldout=True,
    note="Oast-cowl vane-stall classifier (ReLU MLP on 8x8 wind-vane pressure maps, 10 stall "
    "patterns; cross-entropy, SGD momentum 0.9, cosine schedule with a warm restart at step "
    "80). The restart's peak lr is typed 5.0 for 0.05: the few large steps drive fc2's "
    "pre-activations negative, over 40% of act2's units die and stay dead, and the loss "
    "never returns to its level before the restart.",
)
def h582_oast_cowl_restart_typo(ctx):
    gen = seeded(58210)
    model = _Net(64, hidden=64, out=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = digit_batches(gen, 64)
    probe = next(batches)[0]
    dead = {}

    def before(step):
        if step < RESTART:
            peak, t, span = 0.05, step, RESTART
        else:
            peak, t, span = 5.0, step - RESTART, 120
        opt.param_groups[0]["lr"] = 0.5 * peak * (1 + math.cos(math.pi * t / span))
        if step in (RESTART - 1, RESTART + 30, 199):
            with torch.no_grad():
                dead[step] = dead_fraction(model.features(probe))

    losses, _ = _train(
        ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, before=before
    )
    with torch.no_grad():
        dead["end"] = dead_fraction(model.features(probe))
    pre = _mean(losses[RESTART - 10 : RESTART])
    ctx.check("under 20% of act2 dead before the restart", dead.get(RESTART - 1, 1) < 0.2)
    ctx.check("over 40% of act2 dead 30 steps after", dead.get(RESTART + 30, 0) > 0.4)
    ctx.check("still over 40% dead at the end", dead["end"] > 0.4)
    ctx.check("loss never back to its pre-restart level", min(losses[RESTART + 5 :]) > pre)
    ctx.check("finite throughout", _finite(losses))


# -- 11. control (alarming-looking): KL weight annealed from 0 to 1 ------------------------------

HOLD, ANNEAL = 60, 160


class _MotifVAE(nn.Module):
    def __init__(self, d=64, hidden=128, z=32):
        super().__init__()
        self.enc = nn.Linear(d, hidden)
        self.mu = nn.Linear(hidden, z)
        self.logvar = nn.Linear(hidden, z)
        nn.init.constant_(self.logvar.bias, -4.0)
        self.dec1 = nn.Linear(z, hidden)
        self.dec2 = nn.Linear(hidden, d)

    def forward(self, x):
        h = F.relu(self.enc(x))
        mu, logvar = self.mu(h), self.logvar(h)
        zs = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.dec2(F.relu(self.dec1(zs))), mu, logvar


@scenario(
    family="blackwork_embroidery_motif_kl_anneal_vae",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Blackwork embroidery motif VAE (MLP encoder/decoder over 8x8 stitch grids, 8 latent "
    "dimensions; Bernoulli reconstruction + beta * KL, RMSprop). The KL weight beta is "
    "held at 0 for 60 steps, then annealed linearly to 1 by step 160, the standard remedy for posterior "
    "collapse: the reconstruction falls while the total loss rises through the anneal as the "
    "KL term is phased in, then settles. Healthy; it only looks alarming.",
)
def h582_blackwork_vae_kl_anneal(ctx):
    gen = seeded(58211)
    model = _MotifVAE()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    losses, recons, norms, kls = [], [], [], []
    for step in range(240):
        x, _ = next(batches)
        beta = min(1.0, max(0.0, (step - HOLD) / (ANNEAL - HOLD)))
        logits, mu, logvar = model(x)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum() / len(x)
        loss = recon + beta * kl
        loss.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        losses.append(float(loss.detach()))
        recons.append(float(recon.detach()))
        kls.append(float(kl.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    early_min = min(_mean(losses[i : i + 5]) for i in range(0, HOLD - 5))
    at_anneal_end = _mean(losses[ANNEAL - 5 : ANNEAL + 5])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("reconstruction fell", _mean(recons[-10:]) < 0.8 * _mean(recons[:10]))
    peak = max(_mean(losses[i : i + 5]) for i in range(HOLD, ANNEAL))
    ctx.check("total loss rises through the anneal", peak > 1.1 * early_min)
    ctx.check("full ELBO at the end below the start", _mean(losses[-10:]) < _mean(losses[:5]))
    ctx.check("loss settles after the anneal", _mean(losses[-10:]) <= 1.05 * at_anneal_end)
    ctx.check("loss falls again after its peak", _mean(losses[-10:]) < peak)


# -- 12. control: a Hugging Face ALBERT encoder from a tiny config -------------------------------


def _albert(vocab=128, dim=32, layers=2, heads=2):
    from transformers import AlbertConfig, AlbertForSequenceClassification

    config = AlbertConfig(
        vocab_size=vocab,
        embedding_size=16,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * dim,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
    )
    return AlbertForSequenceClassification(config)


@scenario(
    family="sickle_peening_rhythm_albert_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sickle-peening rhythm classifier (Hugging Face ALBERT encoder built from a tiny "
    "config: 2 shared layers, hidden 32, embedding 16; reads a token stream of hammer blows "
    "and says whether the light blows outnumber the heavy ones; cross-entropy, AdamW with "
    "weight decay, linear warm-up over 20 steps then linear decay, clipping at 1.0). Healthy.",
)
def h582_sickle_peening_albert(ctx):
    gen = seeded(58212)
    model = _albert()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / 20, max(0.05, (steps - s) / (steps - 20)))
    )
    accs = []

    def forward(m, x):
        return m(input_ids=x).logits

    def loss_fn(out, y):
        accs.append(float((out.argmax(-1) == y).float().mean()))
        return F.cross_entropy(out, y)

    losses, _ = _train(
        ctx,
        model,
        opt,
        bert_batches(gen, 32, 16),
        steps,
        loss_fn,
        classifier=True,
        forward=forward,
        clip=1.0,
        sched=sched,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, k=20, ratio=0.8))
    ctx.check("accuracy over 75% on the last 20 batches", _mean(accs[-20:]) > 0.75)


# -- 13. control: Huber regressor with Adagrad, ReduceLROnPlateau, heavy-tailed targets ----------


def _swingle_batches(gen, batch=64, seed=58213):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    t = torch.distributions.StudentT(torch.tensor(2.0))
    while True:
        x = torch.randn(batch, 6, generator=gen)
        noise = t.sample((batch,)) * 0.1
        yield x, torch.tanh(x @ w / 2) + 0.3 * (x[:, 0] * x[:, 1]) + noise


@scenario(
    family="flail_swingle_wear_tanh_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Flail swingle-wear regressor (tanh MLP on swingle length, hand-staff weight, "
    "capping thong tension, grain moisture, beating rate and floor hardness, predicting the "
    "wear depth; Huber loss on heavy-tailed noisy targets, Adagrad, ReduceLROnPlateau, "
    "clipping at 5). The per-batch loss is noisy with occasional outlier targets; healthy.",
)
def h582_flail_swingle_huber(ctx):
    gen = seeded(58213)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def loss_fn(out, y):
        return F.huber_loss(out, y, delta=0.5)

    losses, _ = _train(
        ctx, model, opt, _swingle_batches(gen), 250, loss_fn, clip=5.0, plateau=plateau
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, k=20, ratio=0.6))
