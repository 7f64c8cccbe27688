"""Held-out set 569 (``h569_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: ice-harvest block-weight regressor fed pond-ice temperature in millikelvin under fp16
autocast (amp_overflow, AdamW); fogbow arc-radius regressor whose CyclicLR max_lr is typed 4.0
for 0.04 (sharpness_above_limit, plain SGD); cormorant-fishing dive ReLU Elman RNN with its
identity recurrent init scaled 1.15 (exploding_gradients, SGD momentum); felt hat-block shrink
regressor whose head group lr is typed 2e-9 (update_ratio_out_of_range, RMSprop); salt-pan brine
crystal classifier fed one shard of raw conductivity counts (data_outlier, NAdam); orrery
gear-mesh slip BCE classifier whose resume step uses reduction='sum' (gradient_spike, SGD
Nesterov); sauna loyly steam net taking the log of a hygrometer that reads 0 (nonfinite, RAdam);
sloyd spoon-carving cut-grade ReLU classifier with Adam lr typed 1e-1 for 1e-3 (loss_of_plasticity, Adam);
shadow-play puppet gesture classifier whose temperature is divided by 1000 twice
(softmax_collapse, Adagrad); birch-bark canoe seam regressor whose hand-written decoupled weight
decay grows the weights (loss_divergence, Adamax).
Controls: astrolabe rete star-altitude 12-deep highway regressor whose gradient accumulation
goes from 1 to 4 micro-batches at step 100 (alarming-looking, Adam); chainsaw-carving cut-kind
classifier (SGD momentum, OneCycleLR, label smoothing, clipping); lutherie tonewood tap-tone
tied-weight autoencoder (Huber, Adadelta, ReduceLROnPlateau, noisy taps).
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


# -- 1. amp overflow: pond-ice temperature in millikelvin under fp16 autocast --------------------


@scenario(
    family="ice_harvest_block_weight_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Ice-harvest block-weight regressor (GELU MLP on pond-ice thickness, ice temperature, "
    "snow cover, saw depth, channel width and air temperature, predicting block weight; MSE, "
    "AdamW, fp16 autocast + GradScaler). From step 80 a new logger gives the ice temperature "
    "in millikelvin (about 2.7e5) instead of the standardised column: autocast runs fc1 in "
    "fp16, whose range ends at 65504, fc1's output is non-finite (the same batch is finite in "
    "float32) and the loss is non-finite at step 80.",
)
def h569_ice_harvest_millikelvin(ctx):
    gen = seeded(5691)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 56910)
    losses, fc1_bad, bad_x = [], [], None
    for step in range(130):
        x, y = next(batches)
        if step >= 80:
            x = x.clone()
            x[:, 1] = 2.7e5 + 5.0e3 * x[:, 1]
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


# -- 2. sharpness above limit: CyclicLR max_lr typed 4.0 for 0.04 ---------------------------------

_FOGBOW_ONSET = 7


@scenario(
    family="fogbow_arc_radius_cyclic_lr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=_FOGBOW_ONSET,
    heldout=True,
    note="Fogbow arc-radius regressor (tanh MLP on droplet size, fog density, sun elevation, "
    "observer height, humidity and wind, MSE, plain SGD with a triangular CyclicLR). max_lr is "
    "typed 4.0 for 0.04: the cycle's up-ramp climbs from 0.01 towards 4.0 over 100 steps, lr x "
    "top Hessian eigenvalue (measured in the run by power iteration) passes 2 on the way and "
    "the loss blows up.",
)
def h569_fogbow_cyclic_max_lr_typo(ctx):
    gen = seeded(5692)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.01, max_lr=4.0, step_size_up=100, cycle_momentum=False
    )
    batches = _readings(gen, 128, 6, 56920)
    probe = next(batches)
    crossed = []

    def after(step, loss):
        if math.isfinite(loss) and loss < 1e3:
            eig = _top_eig(model, F.mse_loss, *probe)
            if opt.param_groups[0]["lr"] * eig > 2.0:
                crossed.append(step)

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
    ctx.check(f"first crossing at step {_FOGBOW_ONSET}", crossed[:1] == [_FOGBOW_ONSET])
    ctx.check("trained first", min(ok[:_FOGBOW_ONSET]) < 0.7 * _mean(ok[:5]))


# -- 3. exploding gradients: identity recurrent init scaled 1.15 ----------------------------------


class _DiveRNN(nn.Module):
    """ReLU Elman RNN over depth-logger samples, regresses the catch from the last state."""

    def __init__(self, d_in=4, hidden=32, gain=1.15):
        super().__init__()
        self.rnn = nn.RNN(d_in, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.eye(hidden))
            self.rnn.bias_hh_l0.zero_()

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _dives(gen, batch=32, length=40):
    while True:
        x = 0.5 * torch.rand(batch, length, 4, generator=gen)
        y = x[:, :, 0].mean(1) * 3 - x[:, -8:, 2].std(1)
        yield x, y


@scenario(
    family="cormorant_fishing_dive_relu_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="Cormorant-fishing catch regressor (ReLU Elman RNN over 40 samples of a bird's depth "
    "logger: depth, tether pull, head angle and light, MSE, SGD momentum). The IRNN init "
    "multiplies the identity recurrent matrix by 1.15 (a gain meant for the input weights): "
    "the backward signal grows by about 1.15 per step through time, the input gradient at the "
    "first sample is over 100x that at the last, and the run blows up at once.",
)
def h569_cormorant_irnn_gain_typo(ctx):
    gen = seeded(5693)
    model = _DiveRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    batches = _dives(gen)
    x, y = next(batches)
    x = x.clone().requires_grad_(True)
    F.mse_loss(model(x), y).backward()
    g = x.grad.norm(dim=(0, 2))
    ratio = float(g[0] / (g[-1] + 1e-30))
    model.zero_grad(set_to_none=True)
    losses, _ = _train(ctx, model, opt, batches, 150, F.mse_loss)
    ok = [v for v in losses if math.isfinite(v)]
    ctx.check("first sample's input gradient over 100x the last's at init", ratio > 100)
    ctx.check("loss blows up", not _finite(losses) or max(ok) > 100 * min(ok))


# -- 4. update ratio: head group lr typed 2e-9 --------------------------------------------------


@scenario(
    family="hat_block_felt_shrink_two_group_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Felt hat-block shrink regressor (SiLU MLP on fur blend, steam time, block size, brim "
    "width, felt weight and drying temperature, MSE, RMSprop with two param groups). The head "
    "group's lr is typed 2e-9 for 2e-3: the head's updates are about 1e-9 of its weights, it "
    "effectively never moves while fc1 and fc2 train.",
)
def h569_hat_block_head_lr_typo(ctx):
    gen = seeded(5694)
    model = _Net(6, hidden=48, act=nn.SiLU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.RMSprop(
        [{"params": body, "lr": 2e-3}, {"params": list(model.head.parameters()), "lr": 2e-9}]
    )
    head_0, fc2_0 = _flat(model.head), _flat(model.fc2)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 56940), 200, F.mse_loss)
    head_move = float((_flat(model.head) - head_0).norm() / head_0.norm())
    fc2_move = float((_flat(model.fc2) - fc2_0).norm() / fc2_0.norm())
    ctx.check("finite throughout", _finite(losses))
    ctx.check("head moved under 1e-5 relative", head_move < 1e-5)
    ctx.check("fc2 moved over 1e-2 relative", fc2_move > 1e-2)
    ctx.check("loss fell somewhat", _fell(losses, ratio=0.95))


# -- 5. data outlier: one shard of raw conductivity counts -------------------------------------


@scenario(
    family="saltpan_brine_crystal_grade_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Salt-pan brine crystal-grade classifier (GELU MLP on brine conductivity, depth, "
    "temperature, wind, evaporation days, raking interval, pan clay and sun hours, "
    "cross-entropy over 4 grades, NAdam, clipping at 1). At step 110 one shard comes from a "
    "pan logger that exports conductivity in raw ADC counts (x4096) for the whole batch: the "
    "loss and gradient jump for that batch, clipping bounds the update and the run recovers.",
)
def h569_saltpan_raw_counts_shard(ctx):
    gen = seeded(5695)
    model = _Net(8, hidden=48, out=4, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step != 110:
            return x, y
        x = x.clone()
        x[:, 0] = x[:, 0] * 4096.0
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 8, 4, 56950),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    base = _median(losses[95:110])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss over 20x at step 110", losses[110] > 20 * base)
    ctx.check("gradient over 10x at step 110", norms[110] > 10 * _median(norms[95:110]))
    ctx.check("recovers", _mean(losses[-20:]) < 1.5 * _mean(losses[95:110]))
    ctx.check("trained before step 110", _mean(losses[100:110]) < 0.7 * _mean(losses[:10]))


# -- 6. gradient spike: resume step built with reduction='sum' ------------------------------------


@scenario(
    family="orrery_gear_mesh_slip_sum_reduction_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Orrery gear-mesh slip classifier (GELU MLP on tooth count, module, backlash, crank "
    "speed, lubricant age and arbor wobble, BCE of 'slips within a turn', SGD Nesterov, "
    "clipping at 1). After a checkpoint resume at step 130 the first step's loss is built "
    "from a stale config with reduction='sum' over the 256-row batch instead of 'mean': "
    "that one backpropagated loss is 256x, the gradient bursts, the logged (mean) loss is "
    "ordinary and clipping bounds the update.",
)
def h569_orrery_resume_sum_reduction(ctx):
    gen = seeded(5696)
    model = _Net(6, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(56960)
    w = torch.randn(6, generator=g)
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(200):
        x = torch.randn(256, 6, generator=gen)
        y = (x @ w + 0.3 * torch.randn(256, generator=gen) > 0).float()
        logits = model(x)
        reduction = "sum" if step == 130 else "mean"
        total = F.binary_cross_entropy_with_logits(logits, y, reduction=reduction)
        loss = F.binary_cross_entropy_with_logits(logits.detach(), y)
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 100x at step 130", norms[130] > 100 * _median(norms[110:130]))
    ctx.check("logged loss ordinary at 130", losses[130] < 2 * _mean(losses[120:130]) + 0.05)
    ctx.check("trained", _fell(losses))


# -- 7. nonfinite: log of a hygrometer reading of 0 -----------------------------------------------


class _LogHumidity(nn.Module):
    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _SteamNet(nn.Module):
    def __init__(self, d_in=5, hidden=32):
        super().__init__()
        self.logfeat = _LogHumidity()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(self.logfeat(x)))))
        return self.head(h).squeeze(-1)


@scenario(
    family="sauna_loyly_steam_log_humidity_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=85,
    onset=85,
    heldout=True,
    note="Sauna loyly steam-burst regressor (SiLU MLP on log relative humidity, stove stone "
    "temperature, ladle volume, bench height and room volume, predicting the felt heat peak; "
    "MSE, RAdam). The feature module takes log(humidity) with no clamp; at step 85 a "
    "hygrometer that lost contact reads exactly 0, log(0) = -inf, fc1 mixes -inf with +inf "
    "and the loss is NaN at step 85.",
)
def h569_sauna_log_zero_humidity(ctx):
    gen = seeded(5697)
    model = _SteamNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    bad = {}

    def batches():
        step = 0
        while True:
            rh = 0.1 + 0.8 * torch.rand(64, 1, generator=gen)
            rest = torch.randn(64, 4, generator=gen)
            x = torch.cat([rh, rest], 1)
            y = 2 * rh[:, 0] + torch.tanh(rest[:, 0]) * 0.5 + 0.3 * rest[:, 1]
            if step == 85:
                x[5, 0] = 0.0
                bad["x"] = x
            step += 1
            yield x, y

    losses, _ = _train(ctx, model, opt, batches(), 140, F.mse_loss)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 85", first_bad == 85)
    if "x" in bad:
        ctx.check("log feature non-finite", not bool(torch.isfinite(model.logfeat(bad["x"])).all()))
    else:
        ctx.check("log feature non-finite", False)
    ctx.check("trained before step 85", _mean(losses[75:85]) < 0.7 * _mean(losses[:10]))


# -- 8. loss of plasticity: Adam lr typed 1e-1 kills the ReLUs ------------------------------------


@scenario(
    family="spoon_carving_sloyd_cut_grade_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Sloyd spoon-carving cut-grade classifier (ReLU MLP on knife angle, grain run-out, "
    "wood moisture, stroke length, bowl depth and thumb push, cross-entropy over 5 grades, "
    "Adam). The lr is typed 1e-1 for 1e-3: the first large steps push fc2's pre-activations "
    "negative for every input, over 40% of act2's units die and never come back, and the "
    "loss stalls without blowing up.",
)
def h569_sloyd_adam_lr_typo(ctx):
    gen = seeded(5698)
    model = _Net(6, hidden=64, out=5, act=nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=0.2)
    batches = _classes(gen, 64, 6, 5, 56980)
    probe = next(batches)[0]

    def dead():
        with torch.no_grad():
            a = model.act2(model.fc2(model.act1(model.fc1(probe))))
        return float((a <= 0).all(0).float().mean())

    d0 = dead()
    fracs = []
    losses, _ = _train(
        ctx,
        model,
        opt,
        batches,
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda s, loss: fracs.append(dead()),
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("act2 under 10% dead at init", d0 < 0.1)
    ctx.check("act2 over 40% dead at the end", fracs[-1] > 0.4)
    ctx.check("dead units stay dead (over 40% from step 80 on)", min(fracs[80:]) > 0.4)
    ctx.check("no blow-up", max(losses) < 20 * losses[0])


# -- 9. softmax collapse: temperature converted from milli-units twice -----------------------------


class _GestureNet(nn.Module):
    def __init__(self, d_in=8, hidden=48, k=6, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, k)
        self.temperature = temperature

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(x))))
        return self.head(h) / self.temperature


@scenario(
    family="shadow_play_puppet_gesture_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Shadow-play puppet gesture classifier (ReLU MLP on rod angles, lamp distance, screen "
    "offset and rod speed, cross-entropy over 6 gestures, Adagrad). The softmax temperature is "
    "stored in the config in milli-units (1000 for 1.0) and the loader divides by 1000 twice, "
    "so the logits are divided by 1e-3: the softmax saturates, over 40% of rows give their "
    "target probability exactly 1.0 in float32 and the wrong rows carry huge losses.",
)
def h569_shadow_play_temperature_units(ctx):
    gen = seeded(5699)
    model = _GestureNet(temperature=1000 / 1000 / 1000)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    batches = _classes(gen, 64, 8, 6, 56990)
    probe_x, probe_y = next(batches)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        p = torch.softmax(model(probe_x).float(), -1)
    exact = float((p.gather(1, probe_y[:, None]) == 1.0).float().mean())
    ctx.check("finite throughout", _finite(losses))
    ctx.check("temperature is 1e-3", abs(model.temperature - 1e-3) < 1e-9)
    ctx.check("over 40% of rows' target probability exactly 1.0", exact > 0.4)


# -- 10. loss divergence: hand-written decoupled weight decay with its sign flipped ---------------


@scenario(
    family="birch_bark_canoe_seam_decay_sign_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Birch-bark canoe seam-leak regressor (tanh MLP on bark thickness, spruce-root "
    "stitch spacing, pitch temperature, gunwale curve, seam length and water temperature, "
    "MSE, Adamax). Decoupled weight decay is applied by hand after the step as "
    "p -= -lr * wd * p (a sign slip): the net fits first, then every weight grows by "
    "(1 + lr * wd) each step, the weights more than double and the loss climbs slowly, with "
    "no jump, to well over twice its best.",
)
def h569_birch_bark_decay_sign_slip(ctx):
    gen = seeded(56910)
    model = _Net(6, hidden=48, act=nn.Tanh)
    lr, wd = 4e-3, 3.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    w0 = float(_flat(model).norm())

    def after(step, loss):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "weight" in n:
                    p -= -lr * wd * p

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 569100), 300, F.mse_loss, after=after)
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    jumps = [smooth[i + 5] / smooth[i] for i in range(len(smooth) - 5)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("weights over 2x their init norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 2x its best", smooth[-1] > 2 * best)
    ctx.check("best reached before the last third", smooth.index(best) < 2 * len(smooth) // 3)
    ctx.check("no jump: 5-step moving mean never doubles", max(jumps) < 2.0)


# -- control 1 (alarming-looking): 12-deep highway net, accumulation 1 -> 4 at step 100 ------------


class _HighwayLayer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.h = nn.Linear(dim, dim)
        self.t = nn.Linear(dim, dim)
        nn.init.constant_(self.t.bias, -2.0)

    def forward(self, x):
        gate = torch.sigmoid(self.t(x))
        return gate * F.relu(self.h(x)) + (1 - gate) * x


class _HighwayNet(nn.Module):
    def __init__(self, d_in=6, dim=32, depth=12):
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.layers = nn.ModuleList(_HighwayLayer(dim) for _ in range(depth))
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h).squeeze(-1)


@scenario(
    family="astrolabe_rete_star_altitude_highway_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Astrolabe rete star-altitude regressor (12-deep highway network: gated residual "
    "layers with carry-gate bias -2, on alidade reading, latitude plate, hour, rete angle, "
    "star declination and sighting noise, MSE, Adam). At step 100 gradient accumulation goes "
    "from 1 to 4 micro-batches of 32 (the planned larger effective batch for the fine phase): "
    "the loss curve suddenly smooths and the gradient norm drops, which looks alarming. "
    "Healthy.",
)
def h569_astrolabe_highway_accum_switch(ctx):
    gen = seeded(56911)
    model = _HighwayNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _readings(gen, 32, 6, 569110, noise=0.2)
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(220):
        accum = 1 if step < 100 else 4
        logged = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            (loss / accum).backward()
            logged = logged + loss.detach() / accum
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        losses.append(float(logged))
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)

    def wiggle(xs):
        return _mean([abs(b - a) for a, b in zip(xs[:-1], xs[1:], strict=True)])

    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check(
        "gradient norm drops over 25% after step 100",
        _median(norms[110:160]) < 0.75 * _median(norms[50:100]),
    )
    ctx.check(
        "loss curve smoother after step 100",
        wiggle(losses[110:160]) < 0.7 * wiggle(losses[50:100]),
    )


# -- control 2: OneCycleLR classifier, SGD momentum, label smoothing, clipping --------------------


@scenario(
    family="chainsaw_carving_cut_kind_onecycle_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Chainsaw-carving cut-kind classifier (ReLU MLP on bar angle, chain speed, plunge "
    "depth, log species, moisture, kerf width, vibration and operator stance, cross-entropy "
    "over 5 cut kinds with label smoothing 0.1, SGD momentum 0.9, OneCycleLR to 0.1, "
    "clipping at 1; noisy labels from a site log). Healthy.",
)
def h569_chainsaw_carving_onecycle(ctx):
    gen = seeded(56912)
    model = _Net(8, hidden=64, out=5, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)

    def loss_fn(logits, y):
        return F.cross_entropy(logits, y, label_smoothing=0.1)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 8, 5, 569120),
        200,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, ratio=0.7))


# -- control 3: tied-weight autoencoder, Huber, Adadelta, ReduceLROnPlateau -----------------------


class _TapTiedAE(nn.Module):
    def __init__(self, d_in=24, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        z = torch.tanh(self.enc(x))
        return F.linear(z, self.enc.weight.t(), self.dec_bias)


def _taps(gen, batch=64, d=24, seed=569130):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, d, generator=g) / 2
    while True:
        c = torch.randn(batch, 4, generator=gen)
        clean = c @ basis
        noisy = clean + 0.1 * torch.randn(batch, d, generator=gen)
        yield noisy, clean


@scenario(
    family="lutherie_tonewood_tap_tone_tied_autoencoder",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lutherie tonewood tap-tone autoencoder (24 spectral bands of a spruce top's tap "
    "tone, tanh encoder with the decoder tied to the encoder's transpose, Huber loss against "
    "the clean tone, Adadelta lr 1.0, ReduceLROnPlateau on a 10-step mean; noisy taps). "
    "Healthy.",
)
def h569_lutherie_tap_tone_tied_ae(ctx):
    gen = seeded(56913)
    model = _TapTiedAE()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=5)
    window = []

    def after(step, loss):
        window.append(loss)
        if len(window) == 10:
            plateau.step(_mean(window))
            window.clear()

    losses, _ = _train(
        ctx, model, opt, _taps(gen), 250, lambda a, b: F.huber_loss(a, b, delta=0.5), after=after
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, ratio=0.6))
