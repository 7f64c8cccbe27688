"""Held-out set 599 (``h599_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: gyrfalcon hood-stoop quarry classifier whose z-loss coefficient is typed with its sign
flipped (output_logit_divergence, RAdam); woodball fairway roll-distance Huber regressor resumed
from the warm-start checkpoint instead of the last one (loss_spike, Adamax); rain-barrel spigot
drain-level neural ODE (learnt vector field, fixed-step RK4) whose Torricelli outflow sqrt has no
clamp and meets a batch of empty barrels (nonfinite, Adam); harmonium bellows-pressure GELU
regressor under fp16 autocast fed pressures in Pa instead of kPa (amp_overflow, AdamW,
GradScaler); cleft-oak lath riving SiLU regressor fed one shard of sentinel 9999 moisture readings
(data_outlier, NAdam, ReduceLROnPlateau, clipping); spokeshave blade-chatter BCE classifier whose
tail-batch path sums the loss instead of averaging it for one step (gradient_spike, SGD Nesterov,
clipping); ice-halo parhelion-offset tanh regressor whose warm-up target lr is typed 2.0 for 0.02
(sharpness_above_limit, plain SGD); moonbow night-spray IRNN whose recurrent identity init is
scaled by a stray gain 1.1 (exploding_gradients, SGD momentum); damascus billet quench-warp
regressor whose fc1 group lr is typed 3e-8 for 3e-3 (update_ratio_out_of_range, AdamW, param
groups); besom twig-species cosine classifier whose scale is typed 640 for 16 (softmax_collapse,
Adam).
Controls: bioluminescent-bay dinoflagellate classifier with 30% of its labels flipped at random
(loss floor stays high and noisy, alarming-looking, RMSprop); mud-pot burst-rhythm conv1d
classifier (SGD Nesterov, OneCycleLR, label smoothing, 2-micro-batch accumulation, clipping);
flintknap percussion-force Gaussian-NLL regressor (fp16 autocast + GradScaler, AdamW, warm-up +
cosine).
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.sin(x @ w / math.sqrt(d_in)) + 0.4 * torch.tanh(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.2, noise=1.0):
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
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


# -- faults ---------------------------------------------------------------------------------------


@scenario(
    "gyrfalcon_hood_stoop_quarry_zloss_classifier",
    "RAdam",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="z-loss coefficient typed -1e-2 for 1e-4: the auxiliary term rewards a large "
    "logsumexp, the head's logits grow without bound while the cross-entropy stays ordinary",
)
def h599_gyrfalcon_zloss_sign(ctx):
    gen = seeded(5991)
    model = _Net(12, 48, 5, nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    z_coef = -1e-2  # config typo: should be +1e-4
    batches = _classes(gen, 64, 12, 5, seed=5991)
    maxlog = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        lse = torch.logsumexp(logits, dim=-1)
        (loss + z_coef * (lse**2).mean()).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        maxlog.append(float(logits.detach().abs().max()))
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("head logits grew over 20x", maxlog[-1] > 20 * maxlog[0])
    ctx.check("logits still growing at the end", maxlog[-1] > 1.3 * maxlog[-40])
    ctx.check("cross-entropy stays finite", _finite(ctx.losses))


@scenario(
    "woodball_fairway_roll_distance_huber_regressor",
    "Adamax",
    "loss_spike",
    heldout=True,
    onset=120,
    note="the preempted job is resumed at step 120 with resume_from pointing at the warm-start "
    "checkpoint (step 3) instead of the last one: the loss jumps back up, the run re-learns",
)
def h599_woodball_wrong_resume(ctx):
    gen = seeded(5992)
    model = _Net(10, 48, 1, nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, seed=5992)
    warm = None
    for step in range(220):
        if step == 3:
            warm = {k: v.clone() for k, v in model.state_dict().items()}
        if step == 120:
            model.load_state_dict(warm)  # the wrong checkpoint file
        x, y = next(batches)
        loss = F.huber_loss(model(x).squeeze(-1), y, delta=0.5)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre = _median(ctx.losses[105:120])
    ctx.check("loss at the resume over 4x the steps before", ctx.losses[120] > 4 * pre)
    ctx.check(
        "recovers: last 20 steps under 2x the pre-spike level", _mean(ctx.losses[-20:]) < 2 * pre
    )
    ctx.check(
        "gradient at the resume under 20x its median",
        ctx.grad_norms[120] < 20 * _median(ctx.grad_norms[100:120]),
    )
    ctx.check("finite", _finite(ctx.losses))


class _Drain(nn.Module):
    """Torricelli outflow c*sqrt(h) with a learnt coefficient (the clamp on h is missing)."""

    def __init__(self):
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(()))

    def forward(self, h):
        return F.softplus(self.raw) * torch.sqrt(h)  # should be sqrt(h.clamp(min=0))


class _Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.drain = _Drain()
        self.mlp = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2))

    def forward(self, s):
        h, q = s[:, :1], s[:, 1:]
        corr = 0.1 * self.mlp(s)
        return torch.cat([q - self.drain(h) + corr[:, :1], corr[:, 1:] - 0.3 * q], 1)


class _RK4ODE(nn.Module):
    def __init__(self, steps=10, dt=0.1):
        super().__init__()
        self.field = _Field()
        self.steps, self.dt = steps, dt

    def forward(self, s):
        traj = []
        dt = self.dt
        for _ in range(self.steps):
            k1 = self.field(s)
            k2 = self.field(s + 0.5 * dt * k1)
            k3 = self.field(s + 0.5 * dt * k2)
            k4 = self.field(s + dt * k3)
            s = s + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            traj.append(s[:, 0])
        return torch.stack(traj, 1)


def _barrel_truth(s, steps=10, dt=0.1, c=0.8):
    out = []
    for _ in range(steps * 4):
        h, q = s[:, 0], s[:, 1]
        dh = q - c * torch.sqrt(h.clamp(min=0))
        s = torch.stack([(h + dt / 4 * dh).clamp(min=0), q - dt / 4 * 0.3 * q], 1)
        out.append(s[:, 0])
    return torch.stack(out[3::4], 1)


@scenario(
    "rain_barrel_spigot_drain_level_rk4_neural_ode",
    "Adam",
    "nonfinite",
    where=("field.drain",),
    diverges=90,
    heldout=True,
    onset=90,
    note="learnt vector field integrated with fixed-step RK4; the Torricelli outflow takes "
    "sqrt(h) without its clamp, a dry-spell batch of empty barrels at step 90 drives an RK4 "
    "stage below zero and the sqrt returns NaN",
)
def h599_rain_barrel_sqrt_nan(ctx):
    gen = seeded(5993)
    model = _RK4ODE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    nan_in_drain = []

    def watch(_m, _i, out):
        nan_in_drain.append(bool(torch.isnan(out).any()))

    model.field.drain.register_forward_hook(watch)
    for step in range(140):
        if step == 90:  # dry spell: empty barrels, no rain
            s0 = torch.stack([0.01 * torch.rand(64, generator=gen), torch.zeros(64)], 1)
        else:
            s0 = torch.stack(
                [
                    0.5 + 1.5 * torch.rand(64, generator=gen),
                    0.2 + 0.4 * torch.rand(64, generator=gen),
                ],
                1,
            )
        y = _barrel_truth(s0)
        nan_in_drain.clear()
        loss = F.mse_loss(model(s0), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("loss finite before step 90", _finite(ctx.losses[:90]))
    ctx.check("loss NaN at step 90", len(ctx.losses) == 91 and math.isnan(ctx.losses[90]))
    ctx.check("the drain's sqrt produced the NaN", any(nan_in_drain))
    ctx.check("trained before the fault", _mean(ctx.losses[80:90]) < 0.7 * _mean(ctx.losses[:10]))


@scenario(
    "harmonium_bellows_pressure_fp16_gelu_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges="auto",
    heldout=True,
    onset=80,
    note="fp16 autocast + GradScaler; from step 80 a new gauge logger writes bellows pressures "
    "in Pa instead of kPa, the fp16 backward overflows every step, the scaler skips and its "
    "scale collapses",
)
def h599_harmonium_pa_fp16(ctx):
    gen = seeded(5994)
    model = _Net(8, 64, 1, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 8, seed=5994)
    for step in range(160):
        x, y = next(batches)
        if step >= 80:
            x = x * 1000.0  # Pa, not kPa
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float().squeeze(-1), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "trained before the unit bug", _mean(ctx.losses[70:80]) < 0.7 * _mean(ctx.losses[:10])
    )
    ctx.check("scale steady before onset", ctx.scales[79] >= ctx.scales[0])
    ctx.check("scale collapsed over 1000x after onset", ctx.scales[-1] < ctx.scales[79] / 1000)
    ctx.check(
        "non-finite gradients after onset",
        sum(not math.isfinite(g) for g in ctx.grad_norms[80:]) >= 10,
    )


@scenario(
    "cleft_oak_lath_riving_silu_regressor",
    "NAdam",
    "data_outlier",
    heldout=True,
    onset=110,
    note="one shard from a moisture meter that writes its sentinel 9999 on a failed read: the "
    "batch at step 110 carries raw 9999s in two columns; clipped, ReduceLROnPlateau, recovers",
)
def h599_cleft_oak_sentinel_shard(ctx):
    gen = seeded(5995)
    model = _Net(10, 48, 1, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, seed=5995)
    for step in range(200):
        x, y = next(batches)
        if step == 110:
            x = x.clone()
            bad = torch.rand(64, generator=gen) < 0.3
            x[bad, 2:4] = 9999.0
        loss = F.mse_loss(model(x).squeeze(-1), y)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre = _median(ctx.losses[95:110])
    ctx.check("loss at the bad shard over 20x", ctx.losses[110] > 20 * pre)
    ctx.check(
        "gradient at the bad shard over 10x",
        ctx.grad_norms[110] > 10 * _median(ctx.grad_norms[95:110]),
    )
    ctx.check("recovers", _mean(ctx.losses[-15:]) < 3 * pre)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "spokeshave_blade_chatter_bce_classifier",
    "SGD(nesterov)",
    "gradient_spike",
    heldout=True,
    onset=100,
    note="the tail-batch code path builds its criterion with reduction='sum' instead of 'mean': "
    "at step 100 the backpropagated loss is 128x the logged one; clipped, the run goes on",
)
def h599_spokeshave_sum_reduction(ctx):
    gen = seeded(5996)
    model = _Net(14, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _classes(gen, 128, 14, 2, seed=5996, spread=0.8)
    for step in range(180):
        x, y = next(batches)
        logit = model(x).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logit, y.float())
        reduction = "sum" if step == 100 else "mean"  # the tail-batch path's bug
        total = F.binary_cross_entropy_with_logits(logit, y.float(), reduction=reduction)
        total.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 2.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    med = _median(ctx.grad_norms[85:100])
    ctx.check("gradient at step 100 over 50x its median", ctx.grad_norms[100] > 50 * med)
    ctx.check("logged loss at step 100 ordinary", ctx.losses[100] < 2 * _median(ctx.losses[85:100]))
    ctx.check("trained", _fell(ctx.losses))


def _sharpness(model, x, y, iters=20):
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x).squeeze(-1), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    "ice_halo_parhelion_offset_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=20,
    note="linear warm-up towards a target lr typed 2.0 for 0.02: part-way through the warm-up "
    "lr x sharpness passes 2 and the loss blows up",
)
def h599_ice_halo_warmup_typo(ctx):
    gen = seeded(5997)
    model = _Net(8, 48, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    batches = _readings(gen, 128, 8, seed=5997)
    probe = next(batches)
    target_lr = 2.0  # typo for 0.02
    crossed = None
    for step in range(150):
        lr = target_lr * min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 5 == 0 and crossed is None:
            lam = _sharpness(model, *probe)
            if lr * lam > 2:
                crossed = step
        x, y = next(batches)
        loss = F.mse_loss(model(x).squeeze(-1), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    best = min(ctx.losses)
    blow = next((i for i, v in enumerate(ctx.losses) if not (v < 100 * max(best, 1e-3))), None)
    ctx.check("lr x sharpness passed 2", crossed is not None)
    ctx.check(
        "loss blew up after the crossing",
        blow is not None and crossed is not None and blow >= crossed,
    )
    ctx.check(
        "trained before",
        _mean(ctx.losses[5:15]) < _mean(ctx.losses[:3]) or ctx.losses[10] < ctx.losses[0],
    )


class _IRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, classes=4, gain=1.0):
        super().__init__()
        self.cell = nn.RNNCell(d_in, hidden, nonlinearity="relu")
        with torch.no_grad():
            self.cell.weight_hh.copy_(gain * torch.eye(hidden))
            self.cell.bias_hh.zero_()
            self.cell.weight_ih.mul_(0.3)
        self.head = nn.Linear(hidden, classes)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


def _spray_sequences(gen, batch, length=48, classes=4):
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        t = torch.arange(length).float()
        freq = 0.15 + 0.1 * y.float()
        base = torch.sin(freq[:, None] * t[None])
        x = torch.stack(
            [base, torch.cos(freq[:, None] * t[None]), 0.3 * base**2, torch.ones_like(base)], -1
        )
        yield x + 0.3 * torch.randn(batch, length, 4, generator=gen), y


@scenario(
    "moonbow_night_spray_sequence_irnn",
    "SGD(momentum)",
    "exploding_gradients",
    where=("cell",),
    diverges="auto",
    heldout=True,
    note="IRNN over 48 spray-meter readings whose recurrent identity init is scaled by a stray "
    "gain 1.1 (copied from a feed-forward init helper): the backward signal grows through time "
    "and the loss blows up",
)
def h599_moonbow_irnn_gain(ctx):
    gen = seeded(5998)
    model = _IRNN(gain=1.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    ctx.attach(model, opt)
    batches = _spray_sequences(gen, 32)
    ratios = []
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        g0, gt = model.states[0].grad, model.states[-1].grad
        if g0 is not None and gt is not None:
            ratios.append(float(g0.norm() / (gt.norm() + 1e-30)))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("backward signal at t=0 over 10x that at the last step", ratios[0] > 10)
    best = min(v for v in ctx.losses if math.isfinite(v))
    ctx.check(
        "loss blew up",
        any(not (v < 20 * best) for v in ctx.losses),
    )


@scenario(
    "damascus_billet_quench_warp_two_group_regressor",
    "AdamW",
    "update_ratio_out_of_range",
    where=("fc1",),
    heldout=True,
    note="param groups: the fc1 group's lr is typed 3e-8 for 3e-3, fc1 practically never moves "
    "while the rest of the net trains",
)
def h599_damascus_group_typo(ctx):
    gen = seeded(5999)
    model = _Net(12, 48, 1, nn.SiLU)
    opt = torch.optim.AdamW(
        [
            {"params": model.fc1.parameters(), "lr": 3e-8},  # typo for 3e-3
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    w1, w2 = _flat(model.fc1), _flat(model.fc2)
    batches = _readings(gen, 64, 12, seed=5999)
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x).squeeze(-1), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    d1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    d2 = float((_flat(model.fc2) - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-4 of its norm", d1 < 1e-4)
    ctx.check("fc2 moved over 1e-2 of its norm", d2 > 1e-2)
    ctx.check("trained through the other layers", _fell(ctx.losses, ratio=0.9))


class _CosineHead(nn.Module):
    def __init__(self, d, k, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, d) * 0.1)
        self.scale = scale

    def forward(self, f):
        return self.scale * F.normalize(f, dim=-1) @ F.normalize(self.weight, dim=-1).T


class _CosNet(nn.Module):
    def __init__(self, d_in, k, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = _CosineHead(32, k, scale)

    def forward(self, x):
        return self.head(self.fc2(F.relu(self.fc1(x))))


@scenario(
    "besom_twig_species_cosine_classifier",
    "Adam",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="cosine classifier whose scale s is typed 640 for 16: once features align, the float32 "
    "softmax rounds most rows' target probability to exactly 1.0",
)
def h599_besom_cosine_scale(ctx):
    gen = seeded(59910)
    model = _CosNet(16, 6, scale=640.0)  # typo for 16.0
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _classes(gen, 64, 16, 6, seed=59910, spread=1.5)
    frac = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        frac.append(collapsed_fraction(logits.detach(), y))
    ctx.check("under 10% collapsed at the start", frac[0] < 0.1)
    ctx.check(
        "over 40% of rows' target probability exactly 1.0 at the end", _mean(frac[-10:]) > 0.4
    )


# -- controls -------------------------------------------------------------------------------------


@scenario(
    "bioluminescent_bay_dinoflagellate_noisy_label_classifier",
    "RMSprop",
    "healthy",
    heldout=True,
    note="30% of labels flipped at random by hand-counting error: the loss floor stays high and "
    "noisy, yet the classifier learns the clean rule (alarming-looking control)",
)
def h599_bioluminescent_flipped_labels(ctx):
    gen = seeded(59911)
    model = _Net(12, 64, 6, nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _classes(gen, 64, 12, 6, seed=59911, spread=1.0)
    flipped = []
    for _ in range(220):
        x, y = next(batches)
        flip = torch.rand(64, generator=gen) < 0.3
        noisy = torch.where(flip, (y + torch.randint(1, 6, (64,), generator=gen)) % 6, y)
        flipped.append(float((noisy != y).float().mean()))
        ctx.targets(noisy)
        loss = F.cross_entropy(model(x), noisy)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    xc, yc = next(batches)
    with torch.no_grad():
        acc = float((model(xc).argmax(-1) == yc).float().mean())
    ctx.check("about 30% labels flipped", 0.25 < _mean(flipped) < 0.35)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.85))
    ctx.check("clean accuracy over 75%", acc > 0.75)
    ctx.check("loss floor stays high (over 0.8)", _mean(ctx.losses[-20:]) > 0.8)


class _Conv1d(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _bursts(gen, batch, length=64, classes=4):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        period = (4 + 3 * y.float())[:, None]
        phase = torch.rand(batch, 1, generator=gen) * period
        x = (torch.remainder(t[None] + phase, period) < 1.5).float()
        yield x + 0.25 * torch.randn(batch, length, generator=gen), y


@scenario(
    "mud_pot_burst_rhythm_conv1d_classifier",
    "SGD(nesterov)",
    "healthy",
    heldout=True,
    note="OneCycleLR, label smoothing 0.1, 2-micro-batch accumulation, clipping at 1.0: control",
)
def h599_mud_pot_onecycle(ctx):
    gen = seeded(59912)
    model = _Conv1d()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    batches = _bursts(gen, 32)
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss) / 2
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))


class _NLLNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.fc2 = nn.Linear(64, 64)
        self.mean = nn.Linear(64, 1)
        self.log_var = nn.Linear(64, 1)

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


@scenario(
    "flintknap_percussion_force_fp16_gaussian_nll_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="fp16 autocast + GradScaler, Gaussian NLL with a learnt variance, warm-up + cosine: control",
)
def h599_flintknap_fp16_nll(ctx):
    gen = seeded(59913)
    model = _NLLNet(10)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 180
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 10, seed=59913, noise=0.2)
    for _ in range(steps):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        out = out.float()
        loss = F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "loss fell", _finite(ctx.losses) and _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.5
    )
    ctx.check("scale did not collapse", min(ctx.scales) >= 2.0**8)
