"""Held-out set 552 (``h552_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: wool-classer fleece-micron classifier whose learnable logit scale lost its clamp
(output_logit_divergence, Adam); skipping-rope double-under classifier whose epoch-end micro-batch
is summed, not averaged, for one step (gradient_spike, SGD momentum, accumulation, clipping);
rime-ice feather growth regressor whose masked sensor pooling divides by a zero count
(nonfinite, RMSprop); Nordic ski-wax glide regressor fed air pressure in pascals under fp16
autocast (amp_overflow, AdamW + GradScaler); hydrospeed eddy-line speed regressor fed one
target in mm/s (data_outlier, Adagrad, clipping); juggling-club cascade ReLU RNN with the IRNN
identity gain typed 1.25 (exploding_gradients, SGD Nesterov); lastmaker toe-spring two-tower
regressor with the foot-scan group lr typed 3e-9 (update_ratio_out_of_range, RAdam, param
groups); steelpan tuner note-pitch regressor with OneCycleLR max_lr typed 10x
(sharpness_above_limit, plain SGD); cricket reverse-swing wobble classifier whose second layer's
biases were initialised at -3 (loss_of_plasticity, Adamax); sheep-shearing blade-stroke regressor
hit by one batch of targets in wrong units with no clip (adam_second_moment_poisoned, NAdam).
Controls: cheese-wheel-rolling descent classifier with a 1,000-step linear warm-up cut off at
step 150 (the rate is still rising at the end, alarming-looking, Adam); organ-voicer flue-pipe
classifier with a top-2 softmax-routed mixture of experts and a load-balancing loss (AdamW,
cosine, clipping); gansey pattern tension Huber regressor (ASGD, ReduceLROnPlateau,
accumulation 2, clipping, noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import dead_fraction, grad_norm, scenario, seeded


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


def _rel(after, before):
    return float((after - before).norm() / before.norm())


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
    clip=None,
    sched=None,
    after=None,
):
    """Attach, then train one batch a step; stops after a non-finite loss once ctx.step saw it."""
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
        loss.backward()
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
            after(step)
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of loss_fn(model(x), y) by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. output logit divergence: a learnable logit scale with its clamp dropped -------------------


class _CosineHead(nn.Module):
    """Cosine-similarity head with a learnable log logit scale (CLIP-style)."""

    def __init__(self, d_in, classes):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d_in) * 0.1)
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        # meant: self.logit_scale.clamp(max=math.log(100)).exp()
        return self.logit_scale.exp() * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


class _FleeceNet(nn.Module):
    def __init__(self, d_in, classes, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = _CosineHead(hidden, classes)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    family="wool_classer_fleece_micron_logit_scale_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Wool-classer fleece-line classifier (GELU MLP on fibre micron, staple length, crimp "
    "frequency, yield, vegetable matter and tip weathering, 6 lines, cross-entropy, Adam lr "
    "2e-2, betas (0.9, 0.98)) with a CLIP-style cosine head and a learnable log logit scale. The clamp at log(100) "
    "was dropped in a refactor (the scale starts at 1): the lines are separable, the loss keeps rewarding a larger "
    "scale, and the head's logits grow without bound (over 20x, the scale over 5x and still rising) while the loss goes to ~0.",
)
def h552_wool_classer_logit_scale_unclamped(ctx):
    gen = seeded(5521)
    model = _FleeceNet(6, 6)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2, betas=(0.9, 0.98))
    batches = _grades(gen, 64, 6, 6, 55210, spread=0.35)
    probe = next(batches)[0]
    sizes = []

    def after(step):
        if step % 10 == 0 or step == 299:
            with torch.no_grad():
                sizes.append(float(model(probe).abs().max()))

    with torch.no_grad():
        start = float(model(probe).abs().max())
    losses, _ = _loop(ctx, model, opt, batches, 300, F.cross_entropy, classifier=True, after=after)
    scale = float(model.head.logit_scale.detach().exp())
    ctx.check("head logits grew over 20x", sizes[-1] > 20 * start)
    ctx.check("logit scale grew over 5x from its init of 1", scale > 5)
    ctx.check("logits still growing over the last 100 steps", sizes[-1] > 1.1 * sizes[-11])
    ctx.check("finite", _finite(losses))
    ctx.check("loss fell", _fell(losses))


# -- 2. gradient spike: epoch-end micro-batch summed instead of averaged --------------------------


@scenario(
    family="skipping_rope_double_under_accum_gelu_classifier",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Skipping-rope double-under classifier (GELU MLP on wrist speed, jump height, rope "
    "length, handle angle, cadence and ground contact time, 5 outcome classes, cross-entropy, "
    "SGD momentum 0.9 lr 0.05, 4 micro-batches of 16 accumulated, clip 1.0). The epoch-end path "
    "builds its loss with reduction='sum' and no /accum, so at step 120 the backpropagated loss "
    "is 64x the mean over the 4 micro-batches: the gradient spikes over 30x for one step "
    "while the logged (mean) loss is ordinary; the clip holds the update and the run goes on.",
)
def h552_skipping_rope_epoch_end_sum(ctx):
    gen = seeded(5522)
    model = _Net(6, 48, 5, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _grades(gen, 16, 6, 5, 55220, spread=1.0)
    losses, norms = [], []
    for step in range(200):
        total_logged = 0.0
        for micro in range(4):
            x, y = next(batches)
            if micro == 0:
                ctx.targets(y)
            out = model(x)
            if step == 120:  # the epoch-end path: summed, not averaged, and no /accum
                loss = F.cross_entropy(out, y, reduction="sum")
            else:
                loss = F.cross_entropy(out, y) / 4
            loss.backward()
            total_logged += float(F.cross_entropy(out.detach(), y)) / 4
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        logged = torch.tensor(total_logged)
        losses.append(total_logged)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "gradient over 30x the median of the 20 steps before at 120",
        norms[120] > 30 * _median(norms[100:120]),
    )
    ctx.check(
        "no other step over 10x its previous median",
        all(norms[i] < 10 * _median(norms[i - 20 : i]) for i in range(20, 200) if i != 120),
    )
    ctx.check("logged loss at 120 ordinary", losses[120] < 2 * _mean(losses[110:120]))
    ctx.check("trained and finite", _fell(losses))


# -- 3. nonfinite: masked sensor pooling divides by a zero count ----------------------------------


class _MaskedMean(nn.Module):
    def forward(self, x, mask):
        # no clamp on the count: a row with every sensor masked gives 0/0
        return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


class _RimeNet(nn.Module):
    def __init__(self, d_in=4, hidden=48):
        super().__init__()
        self.embed = nn.Linear(d_in, hidden)
        self.pool = _MaskedMean()
        self.fc = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, xm):
        x, mask = xm
        h = self.pool(F.relu(self.embed(x)), mask)
        return self.head(F.relu(self.fc(h))).squeeze(-1)


def _rime_batches(gen, seed, batch=48, sensors=8):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        x = torch.randn(batch, sensors, 4, generator=gen)
        mask = (torch.rand(batch, sensors, generator=gen) < 0.7).float()
        mask[:, 0] = 1.0
        y = torch.tanh((x @ w * mask).sum(1) / mask.sum(1)) + 0.05 * torch.randn(
            batch, generator=gen
        )
        yield (x, mask), y


@scenario(
    family="rime_ice_feather_growth_masked_pool_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("pool",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Rime-ice feather growth regressor on a mast of 8 sensor stations (wind speed, "
    "supercooled droplet size, liquid water content, air temperature per station), a masked "
    "mean over the stations that report, MSE, RMSprop lr 1e-3. At step 80 every station of one "
    "mast iced over and reported nothing: its mask is all zero, the pooling module divides 0 "
    "by 0 (the count has no clamp), its output is NaN and the loss is NaN at step 80.",
)
def h552_rime_ice_all_stations_masked(ctx):
    gen = seeded(5523)
    model = _RimeNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    seen = {}
    model.pool.register_forward_hook(
        lambda m, i, o: seen.__setitem__("bad", bool((~torch.isfinite(o)).any()))
    )
    pool_bad, counts = [], []

    def alter(step, xm, y):
        x, mask = xm
        if step == 80:
            mask = mask.clone()
            mask[5] = 0.0
        counts.append(float(mask.sum(1).min()))
        return (x, mask), y

    def after(step):
        pool_bad.append(seen["bad"])

    losses, _ = _loop(
        ctx, model, opt, _rime_batches(gen, 55230), 150, F.mse_loss, alter=alter, after=after
    )
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 80", first_bad == 80)
    ctx.check("a row with zero reporting stations at 80", len(counts) > 80 and counts[80] == 0)
    ctx.check("pool output non-finite at 80", len(pool_bad) > 80 and pool_bad[80])
    ctx.check("pool finite before 80", not any(pool_bad[:80]))
    ctx.check("trained before 80", _mean(losses[70:80]) < 0.7 * _mean(losses[:10]))


# -- 4. amp overflow: air pressure in pascals under fp16 autocast ---------------------------------


@scenario(
    family="nordic_ski_wax_technician_glide_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=100,
    onset=100,
    heldout=True,
    note="Nordic ski-wax technician's glide-time regressor (SiLU MLP on snow temperature, air "
    "temperature, humidity, crystal age, air pressure, wax hardness and structure depth, MSE, "
    "AdamW lr 2e-3, fp16 autocast + GradScaler). From step 100 the new weather station feed "
    "gives air pressure in pascals (about 9e4) instead of standardised hPa: fc1 runs in fp16, "
    "its output passes 65504 and is inf (finite in float32), the loss is non-finite at 100.",
)
def h552_ski_wax_pressure_in_pascals(ctx):
    gen = seeded(5524)
    model = _Net(7, 64, 1, nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 7, 55240)
    losses, fc1_bad, bad_x = [], [], None
    for step in range(150):
        x, y = next(batches)
        if step >= 100:
            x = x.clone()
            x[:, 4] = 9.0e4 + 2.0e3 * x[:, 4]
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
    ctx.check("loss first non-finite at step 100", first_bad == 100)
    ctx.check("fc1 fp16 output non-finite at 100", len(fc1_bad) > 100 and fc1_bad[100])
    ctx.check("fc1 finite before 100", not any(fc1_bad[:100]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before 100", _mean(losses[90:100]) < 0.7 * _mean(losses[:10]))


# -- 5. data outlier: one target in mm/s ----------------------------------------------------------


@scenario(
    family="hydrospeed_eddy_line_crossing_speed_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Hydrospeed (riverboarding) eddy-line crossing-speed regressor (ReLU MLP on current "
    "speed, eddy shear, fin kick rate, board angle, rider mass and water temperature, MSE, "
    "Adagrad lr 0.05, clip 5). At step 110 one sample of one batch comes from a GPS log that "
    "records speed in mm/s (x1000): the batch loss jumps over 100x and its gradient over 50x; "
    "the clip bounds the step and the run recovers.",
)
def h552_hydrospeed_speed_in_mm_per_s(ctx):
    gen = seeded(5525)
    model = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == 110:
            y = y.clone()
            y[7] = 1000.0 * (y[7].abs() + 1.0)
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 55250), 200, F.mse_loss, alter=alter, clip=5.0
    )
    ctx.check(
        "loss at 110 over 100x the median before", losses[110] > 100 * _median(losses[90:110])
    )
    ctx.check(
        "gradient at 110 over 50x the median before", norms[110] > 50 * _median(norms[90:110])
    )
    ctx.check(
        "recovered: last 20 under 3x the 20 before onset",
        _mean(losses[-20:]) < 3 * _mean(losses[90:110]),
    )
    ctx.check(
        "trained and finite", _finite(losses) and _mean(losses[90:110]) < 0.7 * _mean(losses[:10])
    )


# -- 6. exploding gradients: IRNN identity gain typed 1.25 ----------------------------------------


class _CascadeRNN(nn.Module):
    def __init__(self, d_in=6, hidden=32, classes=4, gain=1.25):
        super().__init__()
        self.cell = nn.RNNCell(d_in, hidden, nonlinearity="relu")
        self.head = nn.Linear(hidden, classes)
        with torch.no_grad():
            self.cell.weight_hh.copy_(gain * torch.eye(hidden))  # IRNN: meant gain 1.0
            self.cell.bias_hh.zero_()
            self.cell.bias_ih.zero_()
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


def _cascade_batches(gen, seed, batch=32, steps=30, classes=4):
    g = torch.Generator().manual_seed(seed)
    freqs = 0.3 + 0.3 * torch.rand(classes, 6, generator=g)
    t = torch.arange(steps).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, 6, generator=gen)
        x = torch.sin(freqs[y][:, None, :] * t[None, :, None] + phase)
        yield x + 0.1 * torch.randn(batch, steps, 6, generator=gen), y


@scenario(
    family="juggling_club_cascade_pattern_irnn_classifier",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("cell",),
    diverges="auto",
    heldout=True,
    note="Juggling-club cascade pattern classifier (ReLU RNNCell over 30 frames of club spin "
    "rate, height, hand positions, catch timing, 4 patterns, cross-entropy, SGD Nesterov "
    "momentum 0.9 lr 1e-3, no clip). The IRNN init writes the recurrent weights as 1.25 x "
    "identity instead of identity: the backward pass through 30 frames multiplies the gradient "
    "by up to 1.25 per frame, the gradient at the first frame's state is over 30x the last's, "
    "and the loss blows up.",
)
def h552_juggling_irnn_gain_typo(ctx):
    gen = seeded(5526)
    model = _CascadeRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    growth = []

    def after(step):
        s = model.states
        if s and s[0].grad is not None and step < 5:
            growth.append(float(s[0].grad.norm() / (s[-1].grad.norm() + 1e-30)))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _cascade_batches(gen, 55260),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    smooth = [_mean(losses[max(0, i - 4) : i + 1]) for i in range(len(losses))]
    best = min(smooth[:20])
    blow = next((i for i, v in enumerate(smooth) if not math.isfinite(v) or v > 100 * best), None)
    ctx.check(
        "first-frame state gradient over 30x the last frame's", bool(growth) and growth[0] > 30
    )
    ctx.check("loss over 100x its early best (or non-finite)", blow is not None)
    ctx.check(
        "gradient norm grew over 100x", max(v for v in norms if math.isfinite(v)) > 100 * norms[0]
    )


# -- 7. update ratio: foot-scan group lr typed 3e-9 -----------------------------------------------


class _LastNet(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.foot = nn.Sequential(nn.Linear(4, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.style = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(2 * hidden, 1)

    def forward(self, x):
        h = torch.cat([self.foot(x[:, :4]), self.style(x[:, 4:])], -1)
        return self.head(F.gelu(h)).squeeze(-1)


@scenario(
    family="lastmaker_toe_spring_two_tower_gelu_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("foot",),
    diverges=None,
    heldout=True,
    note="Lastmaker's toe-spring regressor: a foot-scan tower (ball girth, instep, heel width, "
    "arch height) and a style tower (heel height, toe shape, leather stiffness), a shared head, "
    "MSE, RAdam with two param groups. The foot group's lr is typed 3e-9 instead of 3e-3: the "
    "foot tower's updates are about 1e-8 of its weights, it never moves, and the loss plateaus "
    "at what the style tower and head can fit (no blow-up).",
)
def h552_lastmaker_foot_group_lr_typo(ctx):
    gen = seeded(5527)
    model = _LastNet()
    opt = torch.optim.RAdam(
        [
            {"params": model.foot.parameters(), "lr": 3e-9},  # meant 3e-3
            {"params": list(model.style.parameters()) + list(model.head.parameters()), "lr": 3e-3},
        ]
    )
    foot0, style0 = _flat(model.foot), _flat(model.style)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 7, 55270), 250, F.mse_loss)
    ctx.check("foot tower moved under 1e-5 relative", _rel(_flat(model.foot), foot0) < 1e-5)
    ctx.check("style tower moved over 1e-2 relative", _rel(_flat(model.style), style0) > 1e-2)
    ctx.check(
        "finite and fell somewhat", _finite(losses) and _mean(losses[-10:]) < _mean(losses[:10])
    )


# -- 8. sharpness above limit: OneCycleLR max_lr typed 10x ----------------------------------------


@scenario(
    family="steelpan_tuner_note_pitch_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=15,
    heldout=True,
    note="Steelpan tuner's note-pitch regressor (tanh MLP on note-area dome height, hammer "
    "count, metal thickness, groove depth, temper and note size, MSE, plain SGD under "
    "OneCycleLR). max_lr is typed 1.5 for 0.15: while the cycle ramps up, lr x top Hessian "
    "eigenvalue passes 2 near step 15 and the loss blows up.",
)
def h552_steelpan_onecycle_max_lr_typo(ctx):
    gen = seeded(5528)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.5, total_steps=200, pct_start=0.4)
    batches = _readings(gen, 64, 6, 55280)
    probe = next(batches)
    products = []

    def before(step):
        if step % 5 == 0:
            lr = opt.param_groups[0]["lr"]
            products.append((step, lr * _top_hessian_eig(model, F.mse_loss, *probe)))

    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    smooth = [_mean(losses[max(0, i - 4) : i + 1]) for i in range(len(losses))]
    best = min(smooth)
    blow = next((i for i, v in enumerate(smooth) if not math.isfinite(v) or v > 100 * best), None)
    cross = next((s for s, p in products if p > 2), None)
    ctx.check("loss over 100x its best (or non-finite)", blow is not None)
    ctx.check("lr x sharpness under 2 at the start", products[0][1] < 2)
    ctx.check(
        "lr x sharpness past 2 before the blow-up",
        cross is not None and blow is not None and cross <= blow,
    )
    ctx.check(
        "trained before crossing", cross is not None and min(smooth[: cross + 1]) < 0.7 * smooth[0]
    )


# -- 9. loss of plasticity: second layer biases initialised at -3 ---------------------------------


@scenario(
    family="cricket_reverse_swing_seam_wobble_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Cricket reverse-swing classifier (ReLU MLP on ball age, rough-side wear, seam angle, "
    "release speed, wrist position, humidity, 4 swing classes, cross-entropy, Adamax lr 2e-3). "
    "fc2's biases are initialised with the constant -3 copied from a gating layer's init: "
    "nearly every fc2 ReLU is negative on every input, gets no gradient and never comes back, "
    "and the classifier learns far less than it should.",
)
def h552_reverse_swing_negative_bias_init(ctx):
    gen = seeded(5529)
    model = _Net(6, 64, 4, nn.ReLU)
    nn.init.constant_(model.fc2.bias, -3.0)  # meant 0.0
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 6, 4, 55290, spread=1.0)
    probe = next(batches)[0]
    feats = {}
    model.act2.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o.detach()))
    fractions = []

    def after(step):
        if step % 20 == 0 or step == 199:
            with torch.no_grad():
                model(probe)
            fractions.append(dead_fraction(feats["a"]))

    w0 = model.fc2.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, after=after)
    with torch.no_grad():
        model(probe)
    dead = (feats["a"] <= 0).all(0)
    moved = (model.fc2.weight.detach() - w0).abs().sum(1)
    ctx.check("over 85% of fc2 units dead at the end", fractions[-1] > 0.85)
    ctx.check("dead all run (never over 15% alive)", min(fractions) > 0.85)
    ctx.check("dead units' incoming weights never moved", bool(moved[dead].max() == 0))
    ctx.check("finite", _finite(losses))
    ctx.check("loss still high: last 10 over 0.3", _mean(losses[-10:]) > 0.3)


# -- 10. adam second moment poisoned: one batch in wrong units, no clip ---------------------------


@scenario(
    family="sheep_shearing_blade_stroke_count_silu_regressor",
    optimizer="NAdam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Sheep-shearing (blade shears) stroke-count regressor (SiLU MLP on fleece weight, "
    "staple length, lanolin, ewe size, blade sharpness and shed temperature, MSE, NAdam lr 3e-3, "
    "no clip). At step 100 one batch's stroke-count targets come from a tally logged per thousand "
    "(targets x1000): one giant gradient fills NAdam's second moment (beta2 0.999) over 1e4x, and for "
    "steps 130-180 (once the momentum of that step has decayed) the updates are under 30% of what they were and the loss stays over 5x its level.",
)
def h552_shearing_tally_units_batch(ctx):
    gen = seeded(55210)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    vmax, steps_norm = [], []
    prev = {}

    def before(step):
        prev["w"] = _flat(model)

    def alter(step, x, y):
        if step == 100:
            x = x.clone()
            y = 1000.0 * y
        return x, y

    def after(step):
        steps_norm.append(float((_flat(model) - prev["w"]).norm()))
        vmax.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 552100),
        200,
        F.mse_loss,
        before=before,
        alter=alter,
        after=after,
    )
    ctx.check(
        "gradient at 100 over 1000x the median before", norms[100] > 1000 * _median(norms[80:100])
    )
    ctx.check("second moment over 1e4x after 100", vmax[100] > 1e4 * vmax[99])
    ctx.check(
        "updates after under 30% of before",
        _mean(steps_norm[130:180]) < 0.3 * _mean(steps_norm[80:100]),
    )
    ctx.check(
        "no recovery: loss 150-200 over 5x its level before 100",
        _mean(losses[150:200]) > 5 * _mean(losses[80:100]),
    )
    ctx.check("finite", _finite(losses))


# -- control 1: a 1,000-step warm-up cut off at step 150 (alarming-looking) ----------------------


@scenario(
    family="cheese_wheel_rolling_descent_time_warmup_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cheese-wheel-rolling descent classifier (GELU MLP on slope angle, wheel mass, rind "
    "hardness, turf wetness, launch spin and bounce count, 5 finish bands, cross-entropy, Adam "
    "lr 1e-2 with a 1,000-step linear warm-up). The run is a 150-step smoke test, so the rate "
    "is still rising (15% of its peak) when training stops: updates look tiny and the loss is "
    "still falling at the end, which looks alarming, but nothing is wrong.",
)
def h552_cheese_rolling_warmup_cut_short(ctx):
    gen = seeded(55211)
    model = _Net(6, 48, 5, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 1000))
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 6, 5, 552110, spread=1.0),
        150,
        F.cross_entropy,
        classifier=True,
        before=before,
        sched=sched,
    )
    ctx.check(
        "lr still rising at the end, under 20% of peak", lrs[-1] > lrs[-50] and lrs[-1] < 0.2 * 1e-2
    )
    ctx.check("trained: loss fell", _fell(losses))


# -- control 2: top-2 mixture of experts with a load-balancing loss -------------------------------


class _MoE(nn.Module):
    def __init__(self, dim, experts=4, hidden=32):
        super().__init__()
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            for _ in range(experts)
        )
        self.aux = torch.tensor(0.0)
        self.load = torch.zeros(experts)

    def forward(self, x):
        probs = torch.softmax(self.router(x), -1)
        top, idx = probs.topk(2, dim=-1)
        top = top / top.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            weight = (top * (idx == e)).sum(-1, keepdim=True)
            chosen = weight.squeeze(-1) > 0
            if chosen.any():
                out[chosen] = out[chosen] + weight[chosen] * expert(x[chosen])
        n = len(self.experts)
        frac = F.one_hot(idx, n).float().sum(1).mean(0) / 2
        self.load = frac.detach()
        self.aux = n * (frac * probs.mean(0)).sum()
        return x + out


class _VoicerNet(nn.Module):
    def __init__(self, d_in, classes, dim=32):
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.ln = nn.LayerNorm(dim)
        self.moe = _MoE(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.moe(self.ln(self.inp(x))))


@scenario(
    family="organ_voicer_flue_pipe_speech_moe_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Organ voicer's flue-pipe speech classifier (mouth cut-up, languid height, flue width, "
    "toe bore, wind pressure, nicking depth and foot length to 6 speech classes) with a "
    "4-expert mixture-of-experts layer, a top-2 softmax router and a Switch-style "
    "load-balancing loss (weight 0.01), cross-entropy, AdamW with warm-up then cosine, clip "
    "1.0. A healthy control: the experts share the load and the loss falls.",
)
def h552_organ_voicer_moe(ctx):
    gen = seeded(55212)
    model = _VoicerNet(7, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, 200) / 200))
    )
    ctx.attach(model, opt)
    batches = _grades(gen, 64, 7, 6, 552120, spread=1.0)
    losses, loads = [], []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        (loss + 0.01 * model.moe.aux).backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        loads.append(model.moe.load)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    last = torch.stack(loads[-20:]).mean(0)
    ctx.check("every expert gets over 10% of the routing", bool(last.min() > 0.10))
    ctx.check("trained: loss fell", _fell(losses, ratio=0.5))


# -- control 3: ASGD, ReduceLROnPlateau, accumulation 2, clipping, noisy Huber targets -----------


@scenario(
    family="gansey_knitting_pattern_tension_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Gansey knitter's pattern-tension regressor (SiLU MLP on yarn ply, needle size, "
    "stitch count, pattern band, moss-stitch share and knitter's hand, Huber loss on noisy "
    "targets, ASGD lr 0.05, ReduceLROnPlateau on the loss, gradient accumulation 2, clip 1.0). "
    "A healthy control.",
)
def h552_gansey_asgd_plateau(ctx):
    gen = seeded(55213)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 6, 552130, noise=0.3)
    losses = []
    for _ in range(200):
        total = 0.0
        for _micro in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(total)
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("trained: loss fell", _fell(losses, ratio=0.8))
