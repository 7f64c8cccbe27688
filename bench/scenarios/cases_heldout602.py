"""Held-out set 602 (``h602_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: cooper barrel-stave bevel classifier whose inverse temperature is read from a percent key
(softmax_collapse, NAdam); glacier-moulin meltwater Gaussian-NLL net whose in-model sqrt(pressure -
1 atm) lost its clamp (nonfinite, RAdam); hurdy-gurdy wheel-rosin regressor under fp16 autocast fed
rpm and newtons (amp_overflow, AdamW, GradScaler); thatcher reed-bundle moisture Huber regressor
fed one raw shard (data_outlier, Adamax, ReduceLROnPlateau, clipping); kendo valid-strike BCE
classifier whose accumulation scale is 100 for one step (gradient_spike, SGD momentum,
accumulation, clipping); bell-tuning hum-partial tanh regressor whose warm-up peak lr is typed 4.0
(sharpness_above_limit, SGD); dune slip-face grain-flow 12-deep leaky MLP with a doubled relu gain
(exploding_gradients, SGD Nesterov); wheelwright felloe-fit regressor whose fc2 group lr is typed
5e-10 (update_ratio_out_of_range, Adagrad, param groups); concert-harp pitch regressor resumed
without its RMSprop state (loss_spike, RMSprop); ball-lightning persistence regressor with a sign-
flipped hand-written weight decay (loss_divergence, Adam).
Controls: gondolier oar-stroke classifier with clip_grad_value_ at 0.01 (alarming-looking);
beekeeper apiary swarm-risk graph attention network (AdamW, warm-up + cosine); sumo tachiai
force-plate conv1d classifier (SGD Nesterov, param groups, OneCycleLR, label smoothing,
accumulation, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, ramp, scenario, seeded


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
    before=None,
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
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, loss, out, y) if backprop is not None else loss
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
            after(step, out.detach(), y)
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


class _TempNet(_Net):
    def __init__(self, d_in, k, temperature):
        super().__init__(d_in, 48, k, nn.ReLU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) * self.temperature


@scenario(
    "cooper_barrel_stave_bevel_temperature_classifier",
    "NAdam",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="the cooperage's stave-bevel grade classifier stores an inverse temperature 'inv_temp' "
    "of 0.5; a refactor passes the config's 'temp_scale_pct' (500.0) in its place, so the logits "
    "are multiplied by 500: the float32 softmax rounds most rows' target probability to exactly 1",
)
def h602_cooper_barrel_stave_bevel_temperature_classifier(ctx):
    gen = seeded(6021)
    cfg = {"inv_temp": 0.5, "temp_scale_pct": 500.0}
    model = _TempNet(14, 6, cfg["temp_scale_pct"])
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 14, 6, 60211)
    last = {}

    def after(step, out, y):
        last["frac"] = collapsed_fraction(out, y)

    losses, _ = _loop(ctx, model, opt, batches, 140, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows' target probability is exactly 1.0", last.get("frac", 0) > 0.4)
    ctx.check("the loss stays finite", _finite(losses))


class _SqrtStage(nn.Module):
    """Stage height from the gauge's pressure head: sqrt(p - p_atm); the clamp at 0 was dropped."""

    def forward(self, x):
        return torch.cat([torch.sqrt(x[:, :1] - 1.0), x[:, 1:]], 1)


class _MoulinNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.stage = _SqrtStage()
        self.fc1 = nn.Linear(d_in, 40)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(40, 40)
        self.head = nn.Linear(40, 2)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(self.stage(x))))))


def _gauss_nll(out, y):
    mu, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return (0.5 * (log_var + (y - mu) ** 2 / log_var.exp())).mean()


@scenario(
    "glacier_moulin_meltwater_stage_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    where=("stage",),
    diverges=85,
    onset=85,
    heldout=True,
    note="a moulin meltwater-discharge Gaussian-NLL net converts the gauge's pressure (in atm) "
    "to stage height with sqrt(p - 1) inside the model; the clamp at 0 was dropped, and at step "
    "85 a frozen gauge logs pressures below 1 atm: sqrt of a negative is NaN, the loss is NaN",
)
def h602_glacier_moulin_meltwater_stage_gaussian_nll_net(ctx):
    gen = seeded(6022)
    g = torch.Generator().manual_seed(60221)
    w = torch.randn(6, generator=g)
    model = _MoulinNet(6)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def batches():
        while True:
            x = torch.randn(48, 6, generator=gen)
            x[:, 0] = 1.05 + 3.0 * torch.rand(48, generator=gen)
            y = 0.8 * torch.sqrt(x[:, 0] - 1.0) + torch.tanh(x[:, 1:] @ w[1:] / 2)
            yield x, y + 0.1 * torch.randn(48, generator=gen)

    def alter(step, x, y):
        if step == 85:
            x = x.clone()
            x[:6, 0] = 0.92
        return x, y

    losses, _ = _loop(ctx, model, opt, batches(), 160, _gauss_nll, alter=alter)
    ctx.check("the loss is finite before step 85", _finite(losses[:85]))
    ctx.check("the loss is NaN at step 85", len(losses) == 86 and math.isnan(losses[85]))
    probe = model.stage(torch.full((1, 6), 0.9))
    ctx.check("stage yields NaN for pressure below 1 atm", bool(torch.isnan(probe).any()))


@scenario(
    "hurdy_gurdy_wheel_rosin_fp16_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=75,
    onset=75,
    heldout=True,
    note="fp16 autocast with a GradScaler on a hurdy-gurdy wheel-rosin friction regressor; from "
    "step 75 a new luthier's rig logs wheel speed in rpm where the pipeline expects revolutions "
    "per second, and string tension in newtons instead of kilonewtons (no re-standardisation): "
    "fc1's fp16 output passes 65504 and becomes inf, the loss is inf/NaN",
)
def h602_hurdy_gurdy_wheel_rosin_fp16_regressor(ctx):
    gen = seeded(6023)
    model = _Net(10, 64, 1, nn.SiLU)
    with torch.no_grad():
        model.fc1.weight.mul_(4.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 10, 60231)
    losses, fc1_inf = [], {}

    def units(x):
        x = x.clone()
        x[:, :2] = x[:, :2] * 60.0 * 1000.0
        x[:, 2:5] = x[:, 2:5] * 1000.0
        return x

    for step in range(150):
        x, y = next(batches)
        if step >= 75:
            x = units(x)
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        fc1_inf[step] = bool((~torch.isfinite(h)).any())
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
    ctx.check("the loss is finite and falls before step 75", _fell(losses[:75]))
    ctx.check("fc1's fp16 output is non-finite at step 75", fc1_inf.get(75, False))
    ctx.check("the loss is non-finite at step 75", len(losses) == 76 and not _finite(losses[75:]))
    with torch.no_grad():
        x32 = units(next(batches)[0])
        ctx.check("the same input is finite in float32", bool(torch.isfinite(model(x32)).all()))


@scenario(
    "thatcher_reed_bundle_moisture_huber_regressor",
    "Adamax",
    "data_outlier",
    heldout=True,
    onset=120,
    note="one shard of the thatcher's reed-bundle moisture log at step 120 was exported in raw "
    "grams per kilogram instead of standardised fractions (x1000 on three columns and the "
    "target); clipping and the Huber loss keep the run, which recovers; ReduceLROnPlateau",
)
def h602_thatcher_reed_bundle_moisture_huber_regressor(ctx):
    gen = seeded(6024)
    model = _Net(9, 48, 1, nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)
    batches = _readings(gen, 64, 9, 60241, noise=0.1)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :3] = x[:, :3] * 1000.0
            y = y * 1000.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, batches, 230, F.huber_loss, alter=alter, clip=1.0, plateau=plateau
    )
    before = _median(losses[100:120])
    ctx.check("the loss at step 120 is over 20x the median before", losses[120] > 20 * before)
    ctx.check(
        "the gradient at 120 is over 10x the median before",
        norms[120] > 10 * _median(norms[100:120]),
    )
    ctx.check("the run recovers", _finite(losses) and _mean(losses[-10:]) < 2 * before)


@scenario(
    "kendo_strike_valid_accum_bce_classifier",
    "SGD momentum",
    "gradient_spike",
    heldout=True,
    onset=110,
    note="a BCE valid-strike (ippon) classifier trained with 4-micro-batch gradient accumulation; "
    "at step 110 a resumed dataloader reports accum_steps=1/100 for one step, so each micro-batch "
    "loss is multiplied by 100 instead of divided by 4 before backward; the logged loss is the "
    "plain BCE; clipping keeps the update in check",
)
def h602_kendo_strike_valid_accum_bce_classifier(ctx):
    gen = seeded(6025)
    g = torch.Generator().manual_seed(60251)
    w = torch.randn(12, generator=g)
    model = _Net(12, 40, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(200):
        scale = 100.0 if step == 110 else 0.25
        logged = 0.0
        for _ in range(4):
            x = torch.randn(32, 12, generator=gen)
            y = ((x @ w + 0.6 * torch.randn(32, generator=gen)) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            (loss * scale).backward()
            logged += float(loss.detach()) / 4
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(logged):
            break
    before = _median(norms[90:110])
    ctx.check("the gradient at step 110 is over 50x the median before", norms[110] > 50 * before)
    ctx.check("the logged loss at 110 is ordinary", losses[110] < 2 * _mean(losses[100:110]))
    ctx.check("the run trains and stays finite", _fell(losses))


@scenario(
    "bellfounder_tuning_hum_partial_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    onset=70,
    heldout=True,
    note="a bell-tuning hum-partial regressor with a geometric lr warm-up over 100 steps to a "
    "peak typed 4.0 for 0.04: the run trains while the lr is small, then around step 70 lr x "
    "top Hessian eigenvalue passes 2 and the loss blows up",
)
def h602_bellfounder_tuning_hum_partial_tanh_regressor(ctx):
    gen = seeded(6026)
    model = _Net(8, 48, 1, nn.Tanh)
    peak = 4.0
    opt = torch.optim.SGD(model.parameters(), lr=peak / 1000)
    batches = _readings(gen, 64, 8, 60261)
    edge = {}

    def before(step):
        lr = ramp(step, peak / 1000, peak, 100)
        for group in opt.param_groups:
            group["lr"] = lr
        if step in (60, 70):
            x, y = next(batches)
            edge[step] = lr * _top_eig(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before)
    ctx.check("the loss falls before step 60", _fell(losses[:60]))
    ctx.check("lr x top Hessian eigenvalue is under 2 at step 60", edge.get(60, 9.0) < 2.0)
    ctx.check("lr x top Hessian eigenvalue is over 2 at step 70", edge.get(70, 0.0) > 2.0)
    ctx.check(
        "the loss blows up after step 70 (over 100x its start or non-finite)",
        not _finite(losses[70:]) or max(losses[70:]) > 100 * losses[0],
    )


class _DeepLeaky(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.act = nn.LeakyReLU(0.2)
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.kaiming_normal_(lin.weight, a=0.2, nonlinearity="leaky_relu")
            nn.init.zeros_(lin.bias)
            with torch.no_grad():
                lin.weight.mul_(gain)
        self.hidden = []

    def forward(self, x):
        self.hidden = []
        for lin in self.layers:
            x = self.act(lin(x))
            if x.requires_grad:
                x.retain_grad()
            self.hidden.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    "dune_slipface_grainflow_runout_deep_leaky_mlp",
    "SGD Nesterov",
    "exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="a 12-deep leaky-ReLU grain-flow runout regressor; the init helper applies "
    "gain=calculate_gain('relu') (sqrt 2) on top of kaiming init, which already includes it, "
    "so the backward signal grows ~1.4x per layer towards the input and the run blows up "
    "under SGD Nesterov",
)
def h602_dune_slipface_grainflow_runout_deep_leaky_mlp(ctx):
    gen = seeded(6027)
    model = _DeepLeaky(8, 32, 12, math.sqrt(2.0))
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9, nesterov=True)
    batches = _readings(gen, 64, 8, 60271)
    ratio = {}

    def backprop(step, loss, out, y):
        if step == 0:
            loss.backward(retain_graph=True)
            g0 = float(model.hidden[0].grad.norm())
            gl = float(model.hidden[-1].grad.norm())
            ratio["r"] = g0 / max(gl, 1e-30)
            for p in model.parameters():
                p.grad = None
        return loss

    losses, _ = _loop(ctx, model, opt, batches, 150, F.mse_loss, backprop=backprop)
    ctx.check("the backward signal at layer 0 is over 10x the last layer's", ratio.get("r", 0) > 10)
    ctx.check(
        "the loss blows up (over 100x its start or non-finite)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


@scenario(
    "wheelwright_felloe_fit_group_typo_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    where=("fc2",),
    heldout=True,
    note="three param groups (fc1, fc2, head) for a wheel felloe-fit regressor; fc2's lr was "
    "typed 5e-10 for 5e-2, so fc2 never moves while the loss still falls through fc1 and head",
)
def h602_wheelwright_felloe_fit_group_typo_regressor(ctx):
    gen = seeded(6028)
    model = _Net(10, 48, 1, nn.ReLU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 5e-2},
            {"params": model.fc2.parameters(), "lr": 5e-10},
            {"params": model.head.parameters(), "lr": 5e-2},
        ]
    )
    batches = _readings(gen, 64, 10, 60281)
    w0 = _flat(model.fc2)
    r0 = _flat(model.fc1)
    losses, _ = _loop(ctx, model, opt, batches, 160, F.mse_loss)
    moved = float((_flat(model.fc2) - w0).norm() / w0.norm())
    moved_rest = float((_flat(model.fc1) - r0).norm() / r0.norm())
    ctx.check("fc2 moved less than 1e-6 of its norm", moved < 1e-6)
    ctx.check("fc1 moved over 1% of its norm", moved_rest > 0.01)
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "concert_harp_string_pitch_resume_regressor",
    "RMSprop",
    "loss_spike",
    heldout=True,
    onset=130,
    note="a harp string pitch-drift regressor is resumed at step 130 from a checkpoint whose "
    "optimizer state dict was silently skipped (strict=False on a renamed key), so RMSprop's "
    "square averages restart from zero: the first updates are far too big, the loss spikes "
    "once and the run recovers with no data or gradient anomaly",
)
def h602_concert_harp_string_pitch_resume_regressor(ctx):
    gen = seeded(6029)
    model = _Net(8, 64, 1, nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3, alpha=0.99)
    batches = _readings(gen, 64, 8, 60291)

    def before(step):
        if step == 130:
            opt.state.clear()

    losses, norms = _loop(ctx, model, opt, batches, 250, F.mse_loss, before=before)
    base = _median(losses[110:130])
    peak = max(losses[131:136])
    ctx.check("the loss spikes to over 4x the median before", peak > 4 * base)
    ctx.check("the gradient at 130 is ordinary", norms[130] < 2 * _median(norms[110:130]))
    ctx.check("the run recovers", _finite(losses) and _mean(losses[-10:]) < 1.5 * base)


@scenario(
    "ball_lightning_persistence_decay_sign_regressor",
    "Adam",
    "loss_divergence",
    heldout=True,
    note="hand-written decoupled weight decay applied as p.add_(lr * wd * p) instead of "
    "p.sub_(...), wd 1.5: the weights inflate a little every step and the loss climbs slowly "
    "with no jump",
)
def h602_ball_lightning_persistence_decay_sign_regressor(ctx):
    gen = seeded(6030)
    model = _Net(8, 48, 1, nn.GELU)
    lr, wd = 1e-2, 1.5
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 8, 60301)
    n0 = float(_flat(model).norm())

    def before(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(lr * wd * p)

    losses, _ = _loop(ctx, model, opt, batches, 260, F.mse_loss, before=before)
    best = min(losses)
    windows = [_mean(losses[i : i + 20]) for i in range(120, 260, 20)]
    rises = sum(b > a for a, b in zip(windows[:-1], windows[1:], strict=True))
    ctx.check("the weights grew over 2x", float(_flat(model).norm()) > 2 * n0)
    ctx.check("the loss climbs to over 5x its best", _mean(losses[-10:]) > 5 * best)
    ctx.check("the 20-step mean loss rises in most windows after 120", rises >= 4)
    ctx.check("the loss stays finite", _finite(losses))


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "gondolier_oar_stroke_clip_value_classifier",
    "Adam",
    "healthy",
    heldout=True,
    note="alarming-looking: gradients clipped by value with clip_grad_value_ at 0.01, so most "
    "gradient coordinates are clipped at every step (the update direction is nearly a sign "
    "vector); small noisy batches (16 oar-stroke force traces at raw sensor scale) with Adam: "
    "an ordinary, stable if blunt practice, and the run trains",
)
def h602_gondolier_oar_stroke_clip_value_classifier(ctx):
    gen = seeded(6031)
    model = _Net(20, 32, 7, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _classes(gen, 16, 20, 7, 60311, spread=1.8, noise=6.0)
    ctx.attach(model, opt)
    losses, clipped = [], []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        g = torch.cat([p.grad.flatten() for p in model.parameters()])
        clipped.append(float((g.abs() > 0.01).float().mean()))
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.01)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over half the gradient coordinates are clipped at every step", min(clipped) > 0.5)
    ctx.check("the loss falls and stays finite", _fell(losses, ratio=0.8))


class _GraphAttention(nn.Module):
    def __init__(self, d_in, d_out, heads):
        super().__init__()
        self.heads = heads
        self.lin = nn.Linear(d_in, d_out * heads, bias=False)
        self.att_src = nn.Parameter(torch.randn(heads, d_out) * 0.1)
        self.att_dst = nn.Parameter(torch.randn(heads, d_out) * 0.1)

    def forward(self, x, adj):
        n = x.shape[0]
        h = self.lin(x).reshape(n, self.heads, -1)
        src = (h * self.att_src).sum(-1)
        dst = (h * self.att_dst).sum(-1)
        e = F.leaky_relu(dst[:, None, :] + src[None, :, :], 0.2)
        e = e.masked_fill(~adj[:, :, None], float("-inf"))
        a = torch.softmax(e, dim=1)
        return torch.einsum("ijh,jhd->ihd", a, h).reshape(n, -1)


class _ApiaryGAT(nn.Module):
    def __init__(self, d_in, classes):
        super().__init__()
        self.gat1 = _GraphAttention(d_in, 16, 4)
        self.gat2 = _GraphAttention(64, 16, 2)
        self.head = nn.Linear(32, classes)

    def forward(self, x, adj):
        h = F.elu(self.gat1(x, adj))
        h = F.elu(self.gat2(h, adj))
        return self.head(h)


@scenario(
    "beekeeper_apiary_swarm_risk_graph_attention_net",
    "AdamW",
    "healthy",
    heldout=True,
    note="a two-layer graph attention network over generated apiary graphs (hives linked to "
    "their neighbours within foraging range, self-loops), classifying each hive's swarm risk "
    "from its own and its neighbours' readings; AdamW, warm-up then cosine, clipping at 1.0",
)
def h602_beekeeper_apiary_swarm_risk_graph_attention_net(ctx):
    gen = seeded(6032)
    g = torch.Generator().manual_seed(60321)
    w = torch.randn(10, 3, generator=g)
    model = _ApiaryGAT(10, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 160
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 15) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )

    def graph(n=40):
        pos = torch.rand(n, 2, generator=gen)
        adj = torch.cdist(pos, pos) < 0.25
        adj |= torch.eye(n, dtype=torch.bool)
        x = torch.randn(n, 10, generator=gen)
        deg = adj.float().sum(1, keepdim=True)
        agg = (adj.float() @ x) / deg
        y = (0.5 * x + agg) @ w
        return x, adj, y.argmax(1)

    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        x, adj, y = graph()
        ctx.targets(y)
        loss = F.cross_entropy(model(x, adj), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss falls and stays finite", _fell(losses, ratio=0.7))


class _TachiaiNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 12, 5, padding=2)
        self.conv2 = nn.Conv1d(12, 24, 5, padding=2)
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x))
        h = F.avg_pool1d(h, 2)
        return self.head(F.gelu(self.conv2(h)).mean(-1))


@scenario(
    "sumo_tachiai_force_plate_onecycle_conv1d_classifier",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="sumo tachiai force-plate traces (two channels) classified into four charge styles: "
    "SGD Nesterov in two param groups (no weight decay on biases) with OneCycleLR, label "
    "smoothing 0.1, two-micro-batch gradient accumulation, clipping at 1.0",
)
def h602_sumo_tachiai_force_plate_onecycle_conv1d_classifier(ctx):
    gen = seeded(6033)
    model = _TachiaiNet()
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.05,
        momentum=0.9,
        nesterov=True,
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    t = torch.linspace(0, 1, 40)
    onsets = torch.tensor([0.2, 0.35, 0.5, 0.65])
    widths = torch.tensor([0.05, 0.12, 0.05, 0.12])

    def batch(n):
        y = torch.randint(0, 4, (n,), generator=gen)
        jitter = 0.03 * torch.randn(n, 1, generator=gen)
        peak = torch.exp(-(((t - onsets[y][:, None] - jitter) / widths[y][:, None]) ** 2))
        x = torch.stack([peak, torch.cumsum(peak, 1) / 10], 1)
        return x + 0.3 * torch.randn(n, 2, 40, generator=gen), y

    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = batch(32)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss falls and stays finite", _fell(losses, ratio=0.6))
