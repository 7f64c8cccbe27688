"""Held-out set 589 (``h589_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: spokeshave chair-leg taper GELU regressor fed the shave angle in raw arc-seconds under
fp16 autocast (amp_overflow, AdamW); camogie sliotar-strike GELU classifier fed one shard of raw
accelerometer counts (data_outlier, NAdam); barrel-hoop driving tanh regressor with its SGD lr
typed 6.0 for 0.06 (sharpness_above_limit, plain SGD); firn-densification 10-deep ReLU MLP whose
kaiming std is multiplied by a stray 1.8 (exploding_gradients, SGD momentum); oboe-reed gouge
SiLU regressor whose fc1 group lr is typed 3e-9 (update_ratio_out_of_range, Adamax, param
groups); kayak-roll recovery BCE classifier whose resumed accumulation step multiplies the loss
by the micro-batch count instead of dividing (gradient_spike, SGD Nesterov); haboob dust-front
Gaussian-NLL net whose wind bearing is acos(u / |w|) with no epsilon (nonfinite, RAdam);
steelpan note-zone classifier whose temperature is read as 1e-3 (softmax_collapse, Adagrad);
sundog halo-brightness tanh regressor whose hand-written weight decay has its sign flipped
(loss_divergence, SGD momentum); marquetry veneer-grain classifier whose auxiliary loss weight is
read as 1e5 for one step (adam_second_moment_poisoned, Adam).
Controls: handbell strike-partial conv1d classifier whose sample rate doubles at step 100
(progressive resizing, alarming-looking, RMSprop); woodpecker drumming-species Hugging Face
Wav2Vec2 classifier from a tiny config on generated waveforms (AdamW, warm-up + linear decay,
clipping); fencing-lunge reach tanh Huber regressor (Adadelta, ReduceLROnPlateau, clipping,
heavy-tailed noisy targets).
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
    clip=None,
    sched=None,
    plateau=None,
    after=None,
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
        out = forward(model, x)
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
            after(step, out.detach() if torch.is_tensor(out) else out, y)
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


def _top_eig(model, loss_fn, x, y, iters=20):
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


# -- 1. amp overflow: shave angle in raw arc-seconds under fp16 autocast -------------------------

AMP_ONSET = 70


@scenario(
    family="spokeshave_chair_leg_taper_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=AMP_ONSET,
    onset=AMP_ONSET,
    heldout=True,
    note="Spokeshave chair-leg taper regressor (GELU MLP on shave angle, blade projection, "
    "stroke length, green-wood moisture, ring spacing and stroke count, predicting the taper "
    "error; MSE, AdamW, fp16 autocast + GradScaler). From step 70 a new jig logs the shave "
    "angle in raw arc-seconds (about 1.5e5) instead of the standardised column: autocast runs "
    "fc1 in fp16, whose range ends at 65504, fc1's output is non-finite (the same batch is "
    "finite in float32) and the loss is non-finite at step 70.",
)
def h589_spokeshave_angle_arcseconds(ctx):
    gen = seeded(5891)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 58910)
    losses, fc1_bad, fc1_dtypes, bad_x, bad_y = [], [], [], None, None
    for step in range(120):
        x, y = next(batches)
        if step >= AMP_ONSET:
            x = x.clone()
            x[:, 0] = 1.5e5 + 4.0e3 * x[:, 0]
            bad_x, bad_y = x, y
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_dtypes.append(seen["fc1"][0])
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
    with torch.no_grad():
        fp32_loss = float(F.mse_loss(model(bad_x), bad_y)) if bad_x is not None else math.nan
    ctx.check("fc1 ran in fp16", all(d == torch.float16 for d in fc1_dtypes))
    ctx.check("trained finitely before the bug", _fell(losses[:AMP_ONSET]))
    ctx.check("fc1 output finite before the onset", not any(fc1_bad[:AMP_ONSET]))
    ctx.check("fc1 output non-finite at the onset", len(fc1_bad) > AMP_ONSET and fc1_bad[-1])
    ctx.check("loss first non-finite at the onset", first_bad == AMP_ONSET)
    ctx.check("same batch finite in float32", math.isfinite(fp32_loss))


# -- 2. data outlier: one shard of raw accelerometer counts --------------------------------------

OUTLIER_STEP = 110


@scenario(
    family="camogie_sliotar_strike_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Camogie sliotar-strike classifier (GELU MLP on hurl-face acceleration, swing speed, "
    "wrist angle, contact height, ball spin and grip pressure, 5 strike kinds; cross-entropy, "
    "NAdam, clipping at 1.0). One shard written by an unconverted wearable logger holds the "
    "acceleration as raw accelerometer counts (x500): the batch at step 110 has a loss over 20x "
    "and a gradient over 10x the usual; clipping bounds the update and the run recovers.",
)
def h589_camogie_raw_accel_counts_shard(ctx):
    gen = seeded(5892)
    model = _Net(6, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == OUTLIER_STEP:
            x = x.clone()
            x[:, 0] = 500.0 * x[:, 0]
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 5, 58920),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    before = losses[OUTLIER_STEP - 20 : OUTLIER_STEP]
    ctx.check("loss at the bad shard over 20x the usual", losses[OUTLIER_STEP] > 20 * _mean(before))
    ctx.check(
        "gradient at the bad shard over 10x the usual",
        norms[OUTLIER_STEP] > 10 * _mean(norms[OUTLIER_STEP - 20 : OUTLIER_STEP]),
    )
    ctx.check("run recovers", _finite(losses) and _mean(losses[-10:]) < 1.5 * _mean(before))
    ctx.check("trained before the shard", _fell(losses[:OUTLIER_STEP]))


# -- 3. sharpness above limit: SGD lr typed 6.0 for 0.06 -----------------------------------------


@scenario(
    family="barrel_hoop_driving_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Barrel-hoop driving regressor (tanh MLP on stave count, bilge diameter, hoop width, "
    "driver angle, oak moisture and hammer blows, predicting the hoop seat depth; MSE, plain "
    "SGD). The config's lr is typed 6.0 for 0.06: lr x top Hessian eigenvalue is past 2 at "
    "step 0 and the loss blows up.",
)
def h589_barrel_hoop_lr_typo(ctx):
    gen = seeded(5893)
    model = _Net(6, hidden=48, act=nn.Tanh)
    batches = _readings(gen, 64, 6, 58930)
    x0, y0 = next(batches)
    lr = 6.0
    eig = _top_eig(model, F.mse_loss, x0, y0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, _ = _train(ctx, model, opt, batches, 100, F.mse_loss)
    ctx.check("lr x sharpness past 2 at step 0", lr * eig > 2.0)
    ctx.check("the intended lr would be stable", 0.06 * eig < 2.0)
    ctx.check(
        "loss blows up",
        (not _finite(losses)) or max(losses) > 100 * _mean(losses[:3]),
    )


# -- 4. exploding gradients: kaiming std times a stray 1.8 in a 10-deep ReLU MLP -----------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain * math.sqrt(2.0 / lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="firn_densification_depth_deep_relu_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Firn densification regressor (10-deep ReLU MLP on accumulation rate, surface "
    "temperature, depth, grain size, wind packing and melt layers, predicting density; MSE, "
    "SGD momentum 0.9). A helper multiplies the kaiming std by a stray 1.8 (a gain meant for "
    "another activation): the forward signal and the backward signal grow about 1.8x per "
    "layer, the gradient at layers.0 is over 20x the last layer's and the run blows up.",
)
def h589_firn_kaiming_stray_gain(ctx):
    gen = seeded(5894)
    model = _Deep(6, 48, 10, 1.8)
    batches = _readings(gen, 64, 6, 58940)
    x0, y0 = next(batches)
    F.mse_loss(model(x0), y0).backward()
    first = float(model.layers[0].bias.grad.norm())
    last = float(model.layers[-1].bias.grad.norm())
    model.zero_grad(set_to_none=True)
    ref = _Deep(6, 48, 10, 1.0)
    F.mse_loss(ref(x0), y0).backward()
    ref_first = float(ref.layers[0].bias.grad.norm())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    losses, _ = _train(ctx, model, opt, batches, 80, F.mse_loss)
    ctx.check("layers.0 bias gradient over 20x the last layer's", first > 20 * last)
    ctx.check("layers.0 bias gradient over 100x a gain-1 replica's", first > 100 * ref_first)
    ctx.check("loss blows up", (not _finite(losses)) or max(losses) > 100 * losses[0])


# -- 5. update ratio: fc1 group lr typed 3e-9 -----------------------------------------------------


@scenario(
    family="oboe_reed_gouge_thickness_silu_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Oboe-reed gouge regressor (SiLU MLP on cane diameter, gouge depth, soak time, "
    "scrape passes, tip length and humidity, predicting the reed's resistance; MSE, Adamax with "
    "param groups). The fc1 group's lr is typed 3e-9 for 3e-3: fc1 never moves (relative "
    "change under 1e-5) while the rest trains.",
)
def h589_oboe_reed_fc1_lr_typo(ctx):
    gen = seeded(5895)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 3e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 3e-3},
        ]
    )
    w1, w2 = _flat(model.fc1), _flat(model.fc2)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 58950), 200, F.mse_loss)
    d1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    d2 = float((_flat(model.fc2) - w2).norm() / w2.norm())
    ctx.check("fc1 relative change under 1e-5", d1 < 1e-5)
    ctx.check("fc2 moved over 1000x more than fc1", d2 > 1000 * d1)
    ctx.check("finite", _finite(losses))


# -- 6. gradient spike: resumed accumulation step multiplies instead of dividing -----------------

SPIKE_STEP = 130


@scenario(
    family="kayak_roll_recovery_gelu_bce_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Kayak-roll recovery classifier (GELU MLP on hip-snap timing, paddle angle, head "
    "position, boat heel, sweep speed and current; BCE with logits, SGD Nesterov, 4-micro-batch "
    "gradient accumulation, clipping at 5). The first step after a resume multiplies each "
    "micro-batch loss by 4 instead of dividing by it (a stale accumulation factor): the "
    "gradient at step 130 is 16x the usual size with an ordinary logged loss; clipping bounds "
    "it and the run carries on.",
)
def h589_kayak_roll_accum_resume(ctx):
    gen = seeded(5896)
    model = _Net(6, hidden=48, out=1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(58960)
    w = torch.randn(6, generator=g)
    losses, norms = [], []
    for step in range(200):
        factor = 4.0 if step == SPIKE_STEP else 0.25
        logged = 0.0
        for _ in range(4):
            x = torch.randn(32, 6, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(32, generator=gen)) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            (loss * factor).backward()
            logged += float(loss.detach()) / 4
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    usual = _mean(norms[SPIKE_STEP - 20 : SPIKE_STEP])
    ctx.check("gradient at the resume step over 10x the usual", norms[SPIKE_STEP] > 10 * usual)
    ctx.check(
        "logged loss ordinary at the resume step",
        losses[SPIKE_STEP] < 2 * _mean(losses[SPIKE_STEP - 20 : SPIKE_STEP]),
    )
    ctx.check("trained and finite", _fell(losses))


# -- 7. nonfinite: acos(u / |w|) with no epsilon on a calm batch --------------------------------

CALM_STEP = 90


class _Bearing(nn.Module):
    """Wind bearing from (u, v) components: acos(u / sqrt(u^2 + v^2)), no epsilon."""

    def forward(self, uv):
        u, v = uv[:, 0], uv[:, 1]
        speed = torch.sqrt(u * u + v * v)
        theta = torch.acos(u / speed)
        return torch.stack([torch.cos(theta), torch.sin(theta), speed], 1)


class _DustNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bearing = _Bearing()
        self.fc1 = nn.Linear(7, 48)
        self.fc2 = nn.Linear(48, 48)
        self.mean_head = nn.Linear(48, 1)
        self.logvar_head = nn.Linear(48, 1)

    def forward(self, x):
        h = torch.cat([self.bearing(x[:, :2]), x[:, 2:]], 1)
        h = F.silu(self.fc2(F.silu(self.fc1(h))))
        return torch.cat([self.mean_head(h), self.logvar_head(h)], 1)


def _gauss_nll(out, y):
    mean, logvar = out[:, 0], out[:, 1].clamp(-6, 6)
    return (0.5 * (logvar + (y - mean) ** 2 / logvar.exp())).mean()


@scenario(
    family="haboob_dust_front_arrival_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("bearing",),
    diverges=CALM_STEP,
    onset=CALM_STEP,
    heldout=True,
    note="Haboob dust-front arrival net (SiLU MLP predicting the mean and log-variance of "
    "the visibility drop, Gaussian NLL, RAdam) whose in-model 'bearing' module turns wind "
    "components into a direction with acos(u / sqrt(u^2 + v^2)) and no epsilon. The batch at "
    "step 90 holds calm readings (u = v = 0): 0/0 gives NaN in bearing and the loss is NaN "
    "at step 90.",
)
def h589_haboob_bearing_no_eps(ctx):
    gen = seeded(5897)
    model = _DustNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    bad = {}
    model.bearing.register_forward_hook(
        lambda m, i, o: bad.__setitem__(len(bad), bool((~torch.isfinite(o)).any()))
    )
    base = _readings(gen, 64, 6, 58970)

    def batches():
        while True:
            x, y = next(base)
            yield x + torch.tensor([2.0, 0.5, 0, 0, 0, 0]), y

    def alter(step, x, y):
        if step == CALM_STEP:
            x = x.clone()
            x[:8, :2] = 0.0
        return x, y

    losses, _ = _train(ctx, model, opt, batches(), 150, _gauss_nll, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    flags = [bad[i] for i in sorted(bad)]
    ctx.check("trained before the calm batch", _fell(losses[:CALM_STEP], ratio=0.9))
    ctx.check("bearing finite before the calm batch", not any(flags[:CALM_STEP]))
    ctx.check("bearing non-finite at the calm batch", len(flags) > CALM_STEP and flags[CALM_STEP])
    ctx.check("loss first non-finite at step 90", first_bad == CALM_STEP)


# -- 8. softmax collapse: temperature read as 1e-3 ------------------------------------------------


@scenario(
    family="steelpan_note_zone_temperature_relu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Steelpan note-zone classifier (ReLU MLP on strike position, stick hardness, rebound "
    "time, partial ratios and dome height, 8 note zones; cross-entropy, Adagrad). The softmax "
    "temperature is read as 1e-3 (a millisecond field taken for seconds) and divides the "
    "logits: over 40% of rows' target probability is exactly 1.0 in float32.",
)
def h589_steelpan_temperature_ms(ctx):
    gen = seeded(5898)
    model = _Net(8, hidden=48, out=8)
    temperature = 1e-3
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    collapsed = []

    def after(step, out, y):
        collapsed.append(collapsed_fraction(out, y))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 8, 8, 58980),
        150,
        F.cross_entropy,
        classifier=True,
        forward=lambda m, x: m(x) / temperature,
        after=after,
    )
    ctx.check("over 40% of rows collapsed by the end", _mean(collapsed[-10:]) > 0.4)
    ctx.check("finite", _finite(losses))


# -- 9. loss divergence: hand-written weight decay with its sign flipped --------------------------


@scenario(
    family="sundog_halo_brightness_tanh_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Sundog halo-brightness regressor (tanh MLP on sun elevation, ice-crystal size, "
    "plate tilt, cirrus cover, humidity and azimuth, predicting brightness; MSE, SGD momentum). "
    "The hand-written decoupled weight decay multiplies weights by (1 + lr x wd) instead of "
    "(1 - lr x wd): the weights grow over 2x and the loss climbs steadily to over 2x its best "
    "with no jump.",
)
def h589_sundog_decay_sign(ctx):
    gen = seeded(5899)
    model = _Net(6, hidden=48, act=nn.Tanh)
    lr, wd = 0.02, 0.6
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    w0 = float(_flat(model).norm())

    def before(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 58990), 250, F.mse_loss, before=before
    )
    best = min(_mean(losses[i : i + 5]) for i in range(len(losses) - 5))
    jumps = max(losses[i + 1] / max(losses[i], 1e-8) for i in range(len(losses) - 1))
    ctx.check("weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss ends over 2x its best", _mean(losses[-5:]) > 2 * best)
    ctx.check("finite", _finite(losses))
    ctx.check("no single jump over 3x", jumps < 3.0)


# -- 10. adam second moment poisoned: auxiliary loss weight read as 1e5 for one step --------------

POISON_STEP = 60


@scenario(
    family="marquetry_veneer_grain_direction_gelu_classifier",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=POISON_STEP,
    heldout=True,
    note="Marquetry veneer-grain classifier (GELU MLP on figure contrast, ray fleck, pore "
    "size, colour channels and sheen, 6 grain directions; cross-entropy, Adam beta2 0.999). At "
    "step 60 a config reload reads the auxiliary loss weight as 1e5 for one step: one gradient "
    "over 1000x the usual fills Adam's second moment (beta2 0.999 keeps it for hundreds of "
    "steps); once the spike's momentum has decayed, updates from step 100 on are under 5% of "
    "their earlier size and the loss stalls.",
)
def h589_marquetry_aux_weight_reload(ctx):
    gen = seeded(58910)
    model = _Net(10, hidden=48, out=6, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    moves = []
    prev = {"w": _flat(model)}

    def backprop(step, loss):
        return loss * (1e5 if step == POISON_STEP else 1.0)

    def after(step, out, y):
        w = _flat(model)
        moves.append(float((w - prev["w"]).norm()))
        prev["w"] = w

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 10, 6, 589100, spread=0.6),
        200,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        after=after,
    )
    usual = _mean(norms[POISON_STEP - 20 : POISON_STEP])
    pre = _mean(moves[POISON_STEP - 20 : POISON_STEP])
    post = _mean(moves[POISON_STEP + 40 : POISON_STEP + 90])
    ctx.check("gradient at step 60 over 1000x the usual", norms[POISON_STEP] > 1000 * usual)
    ctx.check("updates after under 5% of before", post < 0.05 * pre)
    ctx.check(
        "loss stalls after the spike",
        _mean(losses[POISON_STEP + 50 : POISON_STEP + 60])
        > 0.9 * _mean(losses[POISON_STEP + 5 : POISON_STEP + 15]),
    )
    ctx.check("finite", _finite(losses))


# -- control 1: progressive resizing, sample rate doubles at step 100 ----------------------------

RESIZE_STEP = 100


def _partials(gen, batch, rate_hz):
    """Struck-bell partial classes: a decaying tone in one of 4 frequency bands (Hz)."""
    bands = torch.tensor([40.0, 75.0, 130.0, 220.0])
    n = int(rate_hz * 0.128)
    t = torch.arange(n) / rate_hz
    y = torch.randint(0, 4, (batch,), generator=gen)
    f = bands[y] * (1 + 0.08 * torch.randn(batch, generator=gen))
    ph = 6.28 * torch.rand(batch, generator=gen)
    onset = 0.03 * torch.rand(batch, generator=gen)
    tt = (t[None] - onset[:, None]).clamp(min=0)
    x = torch.sin(6.2832 * f[:, None] * tt + ph[:, None]) * torch.exp(-tt / 0.05)
    x = x * (t[None] >= onset[:, None]) + 0.2 * torch.randn(batch, n, generator=gen)
    return x[:, None], y


class _BellConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 9, padding=4)
        self.conv2 = nn.Conv1d(16, 24, 9, padding=4)
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


@scenario(
    family="handbell_strike_partial_conv1d_classifier",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Handbell strike-partial classifier (two-layer conv1d net with global average "
    "pooling over generated decaying bell tones, 4 partial bands; cross-entropy with label "
    "smoothing 0.05, RMSprop, clipping). Progressive resizing: the waveform's sample rate "
    "doubles from 1 kHz to 2 kHz at step 100 with no other change; the filters see every "
    "partial at half its old digital frequency, the loss steps up, then falls again. "
    "Alarming-looking healthy control.",
)
def h589_handbell_sample_rate_doubling(ctx):
    gen = seeded(58911)
    model = _BellConv()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)

    def batches():
        step = 0
        while True:
            yield _partials(gen, 32, 1000 if step < RESIZE_STEP else 2000)
            step += 1

    losses, _ = _train(
        ctx,
        model,
        opt,
        batches(),
        240,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05),
        classifier=True,
        clip=2.0,
    )
    pre = _mean(losses[RESIZE_STEP - 10 : RESIZE_STEP])
    ctx.check("loss fell before the resize", _fell(losses[:RESIZE_STEP]))
    ctx.check(
        "loss steps up at the resize", _mean(losses[RESIZE_STEP : RESIZE_STEP + 3]) > 1.3 * pre
    )
    ctx.check(
        "loss falls again after the resize",
        _mean(losses[-10:]) < 0.7 * _mean(losses[RESIZE_STEP : RESIZE_STEP + 3]),
    )
    ctx.check("finite", _finite(losses))


# -- control 2: Hugging Face Wav2Vec2 from a tiny config on generated drumming -------------------


def _drumming(gen, batch, n=1600, rate=4000.0):
    """Woodpecker drumming: 3 species differ in strike rate (Hz) and resonance."""
    rates = torch.tensor([12.0, 20.0, 32.0])
    res = torch.tensor([600.0, 900.0, 1300.0])
    t = torch.arange(n) / rate
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        r = rates[y] * (1 + 0.05 * torch.randn(batch, generator=gen))
        ph = torch.rand(batch, generator=gen)
        pulse = torch.exp(-(((t[None] * r[:, None] + ph[:, None]) % 1.0) / 0.08))
        x = pulse * torch.sin(6.2832 * res[y][:, None] * t[None])
        yield x + 0.1 * torch.randn(batch, n, generator=gen), y


@scenario(
    family="woodpecker_drumming_species_hf_wav2vec2_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Woodpecker drumming-species classifier: a Hugging Face Wav2Vec2ForSequenceClassification "
    "built from a tiny config (2 conv feature layers, 2 transformer layers, hidden 32, no "
    "masking) over generated drumming waveforms, 3 species; cross-entropy, AdamW, linear "
    "warm-up then linear decay, clipping at 1.0. Healthy control.",
)
def h589_woodpecker_wav2vec2(ctx):
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    gen = seeded(58912)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_labels=3,
        mask_time_prob=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        classifier_proj_size=16,
    )
    model = Wav2Vec2ForSequenceClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps, warm = 120, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.05, (steps - s) / (steps - warm))
    )
    losses, _ = _train(
        ctx,
        model,
        opt,
        _drumming(gen, 16),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
        forward=lambda m, x: m(input_values=x).logits,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))


# -- control 3: Adadelta Huber regressor, ReduceLROnPlateau, heavy-tailed targets -----------------


@scenario(
    family="fencing_lunge_reach_tanh_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fencing-lunge reach regressor (tanh MLP on back-leg drive, arm extension, blade "
    "angle, stance width, piste grip and fatigue; Huber loss, Adadelta, ReduceLROnPlateau, "
    "clipping at 1.0) with heavy-tailed (Student-t) label noise from a hand-timed piste. "
    "Healthy control.",
)
def h589_fencing_lunge_adadelta(ctx):
    gen = seeded(58913)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    base = _readings(gen, 64, 6, 589130, noise=0.0)
    t = torch.distributions.StudentT(2.0)

    def batches():
        while True:
            x, y = next(base)
            yield x, y + 0.1 * t.sample((64,))

    losses, _ = _train(ctx, model, opt, batches(), 250, F.huber_loss, clip=1.0, plateau=plateau)
    ctx.check("loss fell", _fell(losses))
    ctx.check("finite", _finite(losses))
