"""Held-out set 603 (``h603_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: thatching-reed eave-pitch regressor whose fc1 group lr is typed 1e-9 (update_ratio_out_of_range,
Adagrad, param groups); sheepdog-trial gate-time regressor whose manual loss scale of 65536 is left
in for one step (adam_second_moment_poisoned, Adam); cobblestone-sett rut-depth tanh regressor with
SGD lr typed 4.0 for 0.04 (sharpness_above_limit, plain SGD); glacier-calving 14-deep leaky MLP with
a stray gain of 1.3 after kaiming init (exploding_gradients, SGD momentum); beekeeper-smoker
Gaussian-NLL net whose in-model log(smoke density) has no clamp and meets an empty smoker
(nonfinite, RAdam); blacksmith quench-crack regressor under fp16 autocast fed a raw millikelvin
reading (amp_overflow, AdamW, GradScaler); canal-lock fill-time Huber regressor fed one shard in
millimetres (data_outlier, NAdam, ReduceLROnPlateau, clipping); pottery-kiln cone-bend regressor
whose hand-written weight decay has its sign flipped (loss_divergence, RMSprop); fencing parry-type
classifier whose temperature in ms is read as seconds (softmax_collapse, Adamax); rowing
catch-timing BCE classifier whose loss weight for one step is typed 100 (gradient_spike, SGD
Nesterov, 3-micro-batch accumulation, clipping).
Controls: hang-glider ridge-lift regressor wrapped in Lookahead (k=5, alpha=0.5: weights' norm and
loss wobble with period 5, alarming-looking); lichen-crust growth-pattern Vision Transformer over
generated images (AdamW, warm-up + cosine, clipping, label smoothing); bonsai wiring-style
classifier (Adadelta, ReduceLROnPlateau, 2-step accumulation, label smoothing, noisy labels).
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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    alter=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    after=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _top_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


# -- faults ---------------------------------------------------------------------------------------


@scenario(
    "thatching_reed_eave_pitch_group_lr_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    where=("fc1",),
    heldout=True,
    note="a thatcher's eave-pitch regressor trains with param groups; the fc1 group's lr is typed "
    "1e-9 in the config where 1e-1 was meant, so fc1's updates are about 1e-9 of its weights and "
    "it never moves while the other layers train at 0.05",
)
def h603_thatching_reed_frozen_group(ctx):
    gen = seeded(6031)
    model = _Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=0.05,
    )
    w1, wh = _flat(model.fc1), _flat(model.head)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 31), 150, F.mse_loss)
    d1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    dh = float((_flat(model.head) - wh).norm() / wh.norm())
    ctx.check("fc1 relative change under 1e-6", d1 < 1e-6)
    ctx.check("head relative change over 1e-2", dh > 1e-2)
    ctx.check("loss finite", _finite(losses))


@scenario(
    "sheepdog_trial_gate_time_scaled_loss_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    onset=80,
    heldout=True,
    note="a sheepdog-trial gate-time regressor; a half-finished fp16 port leaves a manual loss "
    "scale of 65536 on the backward pass for one step (80) with no unscale: one gradient 65536x "
    "fills Adam's second moment (beta2 0.999); once the momentum of the burst has decayed the "
    "updates stay a fraction of their size before and the loss stalls well above where it was",
)
def h603_sheepdog_trial_poisoned_v(ctx):
    gen = seeded(6032)
    model = _Net(8, 48, 1, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    onset = 80
    moves, vsum = [], {}
    prev = [_flat(model)]

    def backprop(step, loss):
        return loss * 65536.0 if step == onset else loss

    def after(step):
        if step in (onset - 1, onset + 60):
            vsum[step] = sum(float(st["exp_avg_sq"].sum()) for st in opt.state.values())
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 32), 200, F.mse_loss, backprop=backprop, after=after
    )
    ctx.check("gradient at onset over 1000x median", norms[onset] > 1000 * _median(norms[:onset]))
    before = _mean(moves[onset - 30 : onset])
    later = _mean(moves[onset + 60 : onset + 120])
    ctx.check("updates 60-120 steps after onset under 1/3 of before", later < before / 3)
    ctx.check(
        "second moment still over 1e4x its pre-onset size 60 steps on",
        vsum[onset + 60] > 1e4 * vsum[onset - 1],
    )
    ctx.check("loss stops improving", _mean(losses[-10:]) > 0.8 * _mean(losses[onset - 10 : onset]))
    ctx.check("loss finite", _finite(losses))


@scenario(
    "cobblestone_sett_rut_depth_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="a paviour's rut-depth regressor with plain SGD: lr typed 4.0 for 0.04, so lr times the "
    "loss's top Hessian eigenvalue is past 2 from the first step and the run blows up",
)
def h603_cobblestone_sett_lr_typo(ctx):
    gen = seeded(6033)
    model = _Net(8, 32, 1, nn.Tanh)
    batches = _readings(gen, 64, 8, 33)
    x0, y0 = next(batches)
    lr = 4.0
    eig = _top_eig(model, F.mse_loss, x0, y0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, _ = _loop(ctx, model, opt, batches, 100, F.mse_loss)
    ctx.check("lr x sharpness over 2 at init", lr * eig > 2)
    ctx.check(
        "loss blew up",
        not _finite(losses) or max(losses) > 100 * min(losses[:5]),
    )


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.kaiming_normal_(lin.weight, a=0.1, nonlinearity="leaky_relu")
            with torch.no_grad():
                lin.weight.mul_(gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = F.leaky_relu(lin(x), 0.1)
        return self.head(x).squeeze(-1)


@scenario(
    "glacier_calving_interval_deep_leaky_mlp",
    "SGD momentum",
    "exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="a calving-interval forecaster with 14 leaky-ReLU layers; an init helper multiplies the "
    "kaiming weights by a stray gain of 1.3 (left from a tanh experiment), so the backward signal "
    "grows about 1.3x per layer towards the input and the first layer's gradient blows the run up",
)
def h603_glacier_calving_init_gain(ctx):
    gen = seeded(6034)
    model = _Deep(8, 32, 14, 1.3)
    batches = _readings(gen, 64, 8, 34)
    x0, y0 = next(batches)
    signal = {}
    hooks = [
        lin.register_full_backward_hook(
            lambda m, gi, go, i=i: signal.__setitem__(i, float(go[0].norm()))
        )
        for i, lin in enumerate(model.layers)
    ]
    F.mse_loss(model(x0), y0).backward()
    for h in hooks:
        h.remove()
    g0, g13 = signal[0], signal[13]
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("backward signal at layer 0 over 10x layer 13's at init", g0 > 10 * g13)
    ctx.check("loss blew up", not _finite(losses) or max(losses) > 100 * min(losses[:5]))


class _LogDensity(nn.Module):
    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _SmokerNLL(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.log_density = _LogDensity()
        self.fc1 = nn.Linear(d_in, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 2)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(self.log_density(x)))))
        return self.head(h)


def _nll(out, y):
    mu, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return (0.5 * (log_var + (y - mu) ** 2 / log_var.exp())).mean()


@scenario(
    "beekeeper_smoker_draw_log_density_nll_net",
    "RAdam",
    "nonfinite",
    where=("log_density",),
    diverges=90,
    onset=90,
    heldout=True,
    note="a beekeeper's hive-calm Gaussian-NLL net takes log(smoke density) inside the model with "
    "no clamp; at step 90 a batch from an empty smoker reads density 0.0, log gives -inf and the "
    "loss is NaN",
)
def h603_beekeeper_smoker_log_zero(ctx):
    gen = seeded(6035)
    model = _SmokerNLL(6)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    base = _readings(gen, 64, 6, 35)

    def batches():
        while True:
            x, y = next(base)
            x = x.clone()
            x[:, 0] = torch.exp(0.5 * x[:, 0])
            yield x, y

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:8, 0] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, batches(), 150, _nll, alter=alter)
    ctx.check("finite before step 90", len(losses) > 90 and _finite(losses[:90]))
    ctx.check("loss NaN/Inf at step 90", len(losses) > 90 and not math.isfinite(losses[90]))


@scenario(
    "blacksmith_quench_crack_fp16_gelu_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=70,
    onset=70,
    heldout=True,
    note="fp16 autocast with a GradScaler; from step 70 the forge's new pyrometer sends the quench "
    "temperature as raw millikelvin (about 1.1e6) past the normaliser, so fc1's fp16 output "
    "overflows to inf (finite in float32) and the loss is non-finite",
)
def h603_blacksmith_quench_fp16_overflow(ctx):
    gen = seeded(6036)
    model = _Net(8, 48, 1, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 8, 36)
    losses, fp16_bad, fp32_ok = [], False, False
    for step in range(120):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, 0] = 1.1e6 + 2e4 * x[:, 0]
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        if step == 70:
            fp16_bad = not bool(torch.isfinite(h).all())
            with torch.no_grad():
                fp32_ok = bool(torch.isfinite(model.fc1(x)).all())
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
    ctx.check("finite before step 70", len(losses) > 70 and _finite(losses[:70]))
    ctx.check("loss non-finite at step 70", len(losses) > 70 and not math.isfinite(losses[70]))
    ctx.check("fc1 fp16 output non-finite at 70", fp16_bad)
    ctx.check("fc1 float32 output finite at 70", fp32_ok)


@scenario(
    "canal_lock_fill_time_silu_huber_regressor",
    "NAdam",
    "data_outlier",
    onset=110,
    heldout=True,
    note="a lock-keeper's fill-time Huber regressor; one shard from a gauge logging millimetres "
    "instead of metres (targets and level column x1000) arrives at step 110: the loss jumps, the "
    "gradient spikes (clipped at 1.0) and the run recovers",
)
def h603_canal_lock_mm_shard(ctx):
    gen = seeded(6037)
    model = _Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000
            y = y * 1000
        return x, y

    def huber(out, y):
        return F.huber_loss(out, y, delta=1.0)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 37),
        200,
        huber,
        alter=alter,
        clip=1.0,
        plateau=plateau,
    )
    ctx.check("loss at 110 over 20x median", losses[110] > 20 * _median(losses[80:110]))
    ctx.check("gradient at 110 over 10x median", norms[110] > 10 * _median(norms[80:110]))
    ctx.check("recovers", _mean(losses[-10:]) < 2 * _mean(losses[100:110]))
    ctx.check("loss finite", _finite(losses))


@scenario(
    "pottery_kiln_cone_bend_flipped_decay_regressor",
    "RMSprop",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="a potter's cone-bend regressor with hand-written decoupled weight decay after each "
    "RMSprop step; the sign is flipped (p += lr*wd*p), so the weights grow geometrically and the "
    "loss climbs slowly with no single jump until it blows up",
)
def h603_pottery_kiln_decay_sign(ctx):
    gen = seeded(6038)
    model = _Net(8, 48, 1, nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    w0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=opt.param_groups[0]["lr"] * 30.0)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 38), 250, F.mse_loss, after=after)
    best = min(losses)
    fin = [v for v in losses if math.isfinite(v)]
    climb = fin[-1] - best
    jumps = [b - a for a, b in zip(fin[:-1], fin[1:], strict=True)]
    ctx.check("weights over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs over 10x its best", fin[-1] > 10 * best)
    ctx.check("no single jump over a third of the climb", max(jumps) < climb / 3)


class _TempNet(_Net):
    def __init__(self, d_in, k, temperature):
        super().__init__(d_in, 48, k, nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    "fencing_parry_type_seconds_temperature_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="a fencing parry-type classifier stores its softmax temperature as temp_ms=2.0 and the "
    "model divides by temp_ms/1000, so the logits are divided by 0.002: the float32 softmax rounds "
    "most rows' target probability to exactly 1.0",
)
def h603_fencing_parry_temp_units(ctx):
    gen = seeded(6039)
    model = _TempNet(12, 8, 2.0 / 1000)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 12, 8, 39)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over 40% of rows' target probability exactly 1.0", frac > 0.4)


@scenario(
    "rowing_catch_timing_accum_bce_classifier",
    "SGD Nesterov",
    "gradient_spike",
    onset=140,
    heldout=True,
    note="a rowing coach's catch-timing BCE classifier with 3 micro-batches per step; the loss "
    "weight schedule has 100 typed for 1.00 at step 140, so that step's gradient is 100x (the "
    "logged loss is ordinary); clipping at 5 keeps the run alive",
)
def h603_rowing_catch_loss_weight(ctx):
    gen = seeded(60310)
    model = _Net(10, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    base = _classes(gen, 32, 10, 2, 310, spread=0.3)
    losses, norms = [], []
    for step in range(200):
        weight = 100.0 if step == 140 else 1.0
        logged = 0.0
        for _ in range(3):
            x, y = next(base)
            loss = F.binary_cross_entropy_with_logits(model(x), y.float())
            (weight * loss / 3).backward()
            logged += float(loss.detach()) / 3
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient at 140 over 30x median", norms[140] > 30 * _median(norms[110:140]))
    ctx.check("logged loss at 140 ordinary", losses[140] < 2 * _median(losses[110:140]))
    ctx.check("loss fell and finite", _fell(losses))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    "hang_glider_ridge_lift_lookahead_regressor",
    "Adam",
    "healthy",
    heldout=True,
    note="a hang-glider ridge-lift regressor trained with Lookahead around Adam (k=5, alpha=0.5): "
    "every 5 steps the slow weights are pulled halfway to the fast ones and the fast weights reset "
    "to them, so the weights' norm and the loss wobble with period 5; healthy",
)
def h603_hang_glider_lookahead(ctx):
    gen = seeded(60311)
    model = _Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    slow = [p.detach().clone() for p in model.parameters()]
    wnorm = []

    def after(step):
        if (step + 1) % 5 == 0:
            with torch.no_grad():
                for s, p in zip(slow, model.parameters(), strict=True):
                    s.add_(p - s, alpha=0.5)
                    p.copy_(s)
        wnorm.append(float(_flat(model).norm()))

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 311), 200, F.mse_loss, after=after)
    d = [abs(b - a) for a, b in zip(wnorm[:-1], wnorm[1:], strict=True)]
    sync = [d[i] for i in range(len(d)) if (i + 2) % 5 == 0]
    other = [d[i] for i in range(len(d)) if (i + 2) % 5 != 0]
    ctx.check("loss fell and finite", _fell(losses, ratio=0.5))
    ctx.check("weight-norm moves most at the period-5 syncs", _mean(sync) > 1.5 * _mean(other))


def _lichen_images(gen, batch, size=16):
    """Four generated crust patterns: horizontal bands, vertical bands, diagonal bands, rings."""
    r = torch.arange(size).float()
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        freq = 0.6 + 0.4 * torch.rand(batch, 1, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, 1, generator=gen)
        coord = torch.stack([yy, xx, (xx + yy) / 1.41, ((xx - 7.5) ** 2 + (yy - 7.5) ** 2).sqrt()])[
            y
        ]
        img = torch.sin(freq * coord + phase) + 0.5 * torch.randn(batch, size, size, generator=gen)
        yield img[:, None], y


class _ViTBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _ViT(nn.Module):
    def __init__(self, size=16, patch=4, dim=32, heads=2, depth=2, classes=4):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        n = (size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n + 1, dim))
        self.blocks = nn.ModuleList(_ViTBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1) + self.pos_embed
        for block in self.blocks:
            t = block(t)
        return self.head(self.norm(t[:, 0]))


@scenario(
    "lichen_crust_growth_pattern_vit",
    "AdamW",
    "healthy",
    heldout=True,
    note="a hand-written Vision Transformer (4x4 patch embedding, class token, learnt positions, "
    "2 pre-LN blocks) classifying generated lichen-crust growth patterns; AdamW, linear warm-up "
    "over 20 steps then cosine, clipping at 1.0, label smoothing 0.1; healthy",
)
def h603_lichen_crust_vit(ctx):
    gen = seeded(60312)
    model = _ViT()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps = 150
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))
        ),
    )
    batches = _lichen_images(gen, 32)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _loop(
        ctx, model, opt, batches, steps, loss_fn, classifier=True, clip=1.0, sched=sched
    )
    x, y = next(batches)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell and finite", _fell(losses))
    ctx.check("accuracy over 0.6", acc > 0.6)


@scenario(
    "bonsai_wiring_style_adadelta_classifier",
    "Adadelta",
    "healthy",
    heldout=True,
    note="a bonsai wiring-style classifier (formal upright, slanting, cascade, ...) with Adadelta "
    "lr 1.0, ReduceLROnPlateau, 2-micro-batch accumulation, label smoothing 0.1 and a tenth of the "
    "labels flipped by noisy annotators; healthy",
)
def h603_bonsai_wiring_adadelta(ctx):
    gen = seeded(60313)
    model = _Net(12, 64, 6, nn.ReLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    ctx.attach(model, opt)
    base = _classes(gen, 32, 12, 6, 313)
    losses = []
    for _ in range(150):
        logged = 0.0
        for _ in range(2):
            x, y = next(base)
            flip = torch.rand(len(y), generator=gen) < 0.1
            y = torch.where(flip, torch.randint(0, 6, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        plateau.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell and finite", _fell(losses))
