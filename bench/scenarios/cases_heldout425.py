"""Held-out set 425 (``h425_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a saddlery stirrup-leather stretch regressor whose trunk group lr is typed 2e-8 for 2e-3
(a frozen trunk), a glassblower gather-cooling fp16 regressor whose GradScaler init_scale is typed
2**60 for 2**16 (every early step overflows and is skipped), a farrier hoof-angle classifier whose
label-smoothing eps has its sign flipped (the head's logits grow without bound), a kayak-polo
shot-speed regressor resumed with Adam's moments reset but its step count kept (a one-off loss
spike), a kitesurf line-pull regressor normalising the wind vector with no eps (0/0 on a calm
reading), a bobbin-lace pricking classifier fed one batch decoded without /255 (one corrupted
batch), a cliff-diving splash regressor whose deep LeakyReLU stack is initialised with gain 2.5x
too large (gradients grow through depth), a mohair shearing clip-weight ReLU regressor with RMSprop
lr typed 3e-2 for 3e-4 (ReLUs die), a geyser eruption-interval tanh regressor whose OneCycleLR
max_lr is typed 10x too large (past 2/sharpness) and a cooperage barrel-leak BCE net whose
remainder batch is reduced with sum instead of mean (one gradient burst).

Controls: a beekeeping forage-link DistMult knowledge-graph model (softplus over sampled
negatives, Adagrad, N3 regularisation, entity norms constrained to 1), a bagpipe drone-reed fp16
Conv1d classifier (GradScaler, SGD Nesterov under OneCycleLR, label smoothing, clipping) and a
dry-stone-wall batter tied-weight autoencoder (RAdam with linear warm-up, Huber, accumulation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import dead_fraction, digit_batches, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.8):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
    pre_clip=None,
):
    """The file's training loop; stops after a non-finite loss once ``ctx.step`` has seen it.
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
    for step in range(steps):
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss, out) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        gn = grad_norm(model)
        if attach:
            ctx.grad_norms.append(gn)
        if pre_clip is not None:
            pre_clip(step, gn)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _binary(gen, batch, d_in, seed, flip=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.5 * torch.sin(2 * x[:, 1]) > 0.0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


class _Net(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss at (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- faults ----------------------------------------------------------------------------------------


class _TwoGroup(nn.Module):
    def __init__(self, d_in=12, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    family="saddlery_stirrup_leather_stretch_two_group_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="Saddlery stirrup-leather stretch regressor (SiLU trunk + linear head, Huber) on AdamW "
    "with two param groups; the trunk group's lr is typed 2e-8 for 2e-3 while the head keeps "
    "2e-3. The trunk receives ordinary gradients but its weights move under 1e-4 of their norm "
    "over the whole run; only the head learns and the loss plateaus high.",
)
def h425_saddlery_stirrup_frozen_trunk(ctx):
    gen = seeded(42501)
    model = _TwoGroup()
    opt = torch.optim.AdamW(
        [
            {"params": model.trunk.parameters(), "lr": 2e-8},
            {"params": model.head.parameters(), "lr": 2e-3},
        ],
        weight_decay=1e-2,
    )
    w0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    grads = []

    def after(step):
        grads.append(float(model.trunk[0].weight.grad.norm()))

    losses = _loop(ctx, model, opt, _readings(gen, 64, 12, 4251), 200, F.huber_loss, after=after)
    trunk_move = float((model.trunk[0].weight.detach() - w0).norm() / w0.norm())
    head_move = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check("trunk.0 moved under 1e-4 of its norm", trunk_move < 1e-4)
    ctx.check("trunk.0 received non-zero gradients", min(grads) > 1e-6)
    ctx.check("the head moved over 10% of its norm", head_move > 0.1)
    ctx.check("the losses are finite", _finite(losses))


class _Gather(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="glassblower_gather_cooling_fp16_gelu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=(),
    diverges=None,
    heldout=True,
    note="Glassblower gather-cooling regressor (GELU MLP, MSE) under fp16 autocast with a "
    "torch.amp.GradScaler whose init_scale is typed 2.0**60 for 2.0**16. The scaled gradients "
    "overflow fp16 in the backward pass, the scaler finds inf and skips step after step while "
    "halving the scale; the weights do not move for the first ~40 steps, then training resumes.",
)
def h425_glassblower_gather_scaler_typo(ctx):
    gen = seeded(42502)
    model = _Gather()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    w0 = model.fc1.weight.detach().clone()
    moved = []

    def after(step):
        moved.append(float((model.fc1.weight.detach() - w0).norm()))

    losses = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4252),
        160,
        F.mse_loss,
        scaler=scaler,
        amp=True,
        after=after,
    )
    scales = ctx.scales
    skipped = sum(1 for a, b in zip(scales[:-1], scales[1:], strict=False) if b < a)
    ctx.check("the scaler skipped over 30 steps for overflow", skipped > 30)
    ctx.check("fc1 did not move over the first 30 steps", moved[29] == 0.0)
    ctx.check("the scale fell over 1e9x", scales[-1] < 2.0**60 / 1e9)
    ctx.check("the losses are finite", _finite(losses))


@scenario(
    family="farrier_hoof_angle_grade_gelu_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Farrier hoof-angle grade classifier (GELU MLP, 5 grades) trained with hand-written "
    "label-smoothed cross-entropy whose eps is typed -0.1 for 0.1: the off-target weights become "
    "negative, so pushing wrong-class log-probabilities to -inf keeps lowering the 'loss'. The "
    "head's logits grow without bound and the loss goes negative.",
)
def h425_farrier_hoof_smoothing_sign(ctx):
    gen = seeded(42503)
    model = _Net(16, 48, 5, nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    eps = -0.1

    def loss_fn(out, y):
        t = (1 - eps) * F.one_hot(y, 5).float() + eps / 5
        return -(t * F.log_softmax(out, -1)).sum(-1).mean()

    peaks = []

    def backprop(step, loss, out):
        peaks.append(float(out.detach().abs().max()))
        return loss

    losses = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 4253),
        220,
        loss_fn,
        classifier=True,
        backprop=backprop,
    )
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * peaks[0])
    ctx.check("the logits still grow over the last 50 steps", peaks[-1] > 1.2 * peaks[-50])
    ctx.check("the loss went below -1", losses[-1] < -1.0)


@scenario(
    family="kayak_polo_shot_speed_relu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Kayak-polo shot-speed regressor (ReLU MLP, MSE, Adam lr 3e-3). At step 120 the job is "
    "resumed from a checkpoint that restored the weights, Adam's step count and exp_avg, but a loader bug "
    "reads exp_avg_sq 1000x too small (saved in other units), so the "
    "next updates are several times too large: the loss spikes once and the run recovers.",
)
def h425_kayak_polo_resume_moments(ctx):
    gen = seeded(42504)
    model = _Net(12, 64, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def after(step):
        if step == 119:
            for st in opt.state.values():
                st["exp_avg_sq"].mul_(1e-3)

    losses = _loop(
        ctx, model, opt, _readings(gen, 64, 12, 4254, scale=2.0), 260, F.mse_loss, after=after
    )
    pre = _median(losses[90:120])
    peak = max(losses[120:140])
    ctx.check("the loss spiked over 3x after the resume", peak > 3 * pre)
    ctx.check("the batch at the resume was ordinary", losses[120] < 2 * pre)
    ctx.check("the run recovered to under 1.5x", _median(losses[-20:]) < 1.5 * pre)
    ctx.check("the losses are finite", _finite(losses))


class _Wind(nn.Module):
    """Unit wind direction from the (u, v) components."""

    def forward(self, uv):
        return uv / uv.norm(dim=-1, keepdim=True)


class _Kite(nn.Module):
    def __init__(self, hidden=48):
        super().__init__()
        self.wind = _Wind()
        self.fc1 = nn.Linear(2 + 8, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        d = self.wind(x[:, :2])
        h = F.silu(self.fc1(torch.cat([d, x[:, 2:]], -1)))
        return self.head(F.silu(self.fc2(h))).squeeze(-1)


@scenario(
    family="kitesurf_kite_line_pull_direction_silu_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("wind",),
    diverges=90,
    heldout=True,
    onset=90,
    note="Kitesurf kite line-pull regressor (SiLU MLP, MSE, NAdam) that turns the anemometer's "
    "(u, v) into a unit direction with uv / uv.norm() and no eps. The first calm reading "
    "(u = v = 0) arrives at step 90: 0/0 gives NaN in the wind module and the loss is NaN.",
)
def h425_kitesurf_calm_wind_norm(ctx):
    gen = seeded(42505)
    model = _Kite()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    nan_out = []

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[3, :2] = 0.0
        with torch.no_grad():
            nan_out.append(bool(torch.isnan(model.wind(x[:, :2])).any()))
        return x, y

    losses = _loop(ctx, model, opt, _readings(gen, 64, 10, 4255), 150, F.mse_loss, alter=alter)
    ctx.check("the wind module output NaN at step 90", len(nan_out) > 90 and nan_out[90])
    ctx.check("no NaN before step 90", not any(nan_out[:90]))
    ctx.check("the loss is NaN at step 90", len(losses) == 91 and math.isnan(losses[90]))
    ctx.check("the losses before are finite", _finite(losses[:90]))


class _Lace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16 * 16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


@scenario(
    family="bobbin_lace_pricking_pattern_conv_classifier",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Bobbin-lace pricking-pattern classifier (ReLU CNN over 8x8 prickings, cross-entropy, "
    "SGD momentum 0.9, clipping at 2). One shard of scans was decoded as raw 0-255 intensities "
    "without the /255: its single batch at step 100 gives a loss and gradient far above the "
    "rest; clipping keeps the step bounded and the run recovers.",
)
def h425_bobbin_lace_raw_intensity_batch(ctx):
    gen = seeded(42506)
    model = _Lace()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def alter(step, x, y):
        return (x * 255.0, y) if step == 100 else (x, y)

    losses = _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=2.0,
    )
    g = ctx.grad_norms
    ctx.check(
        "loss at step 100 over 10x the median before", losses[100] > 10 * _median(losses[80:100])
    )
    ctx.check("gradient at step 100 over 10x the median before", g[100] > 10 * _median(g[80:100]))
    ctx.check("the run recovered", _median(losses[-20:]) < 2 * _median(losses[80:100]))
    ctx.check("the losses are finite", _finite(losses))


class _Deep(nn.Module):
    def __init__(self, d_in=12, width=48, depth=8, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain * math.sqrt(2.0 / m.in_features))
            nn.init.zeros_(m.bias)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        self.hs = []
        for m in self.layers:
            x = F.leaky_relu(m(x), 0.1)
            if x.requires_grad:
                x.retain_grad()
            self.hs.append(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    return float(model.hs[0].grad.norm() / model.hs[-1].grad.norm())


@scenario(
    family="cliff_diving_entry_splash_deep_leaky_regressor",
    optimizer="ASGD",
    cause="exploding_gradients",
    where=(
        "layers.0",
        "layers.1",
        "layers.2",
        "layers.3",
        "layers.4",
        "layers.5",
        "layers.6",
        "layers.7",
    ),
    diverges=None,
    heldout=True,
    note="Cliff-diving entry-splash regressor: an 8-layer LeakyReLU stack (Huber, ASGD, clipping "
    "at 1) initialised with std = 2.5 * sqrt(2 / fan_in), a gain typed 2.5 for 1.0. Each layer "
    "multiplies the backward signal by ~2.5, so dL/dh after layers.0 is hundreds of times "
    "that after layers.7 throughout; clipping keeps the loss from blowing up.",
)
def h425_cliff_diving_init_gain(ctx):
    gen = seeded(42507)
    ref = _Deep(gain=1.0)
    x, y = next(_readings(torch.Generator().manual_seed(1), 128, 12, 4257))
    F.huber_loss(ref(x), y).backward()
    ref_ratio = _depth_ratio(ref)
    seeded(42507)
    model = _Deep(gain=2.5)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-3)
    ratios = []

    def pre_clip(step, gn):
        ratios.append(_depth_ratio(model))

    losses = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 4257),
        150,
        F.huber_loss,
        clip=1.0,
        pre_clip=pre_clip,
    )
    ctx.check("dL/dh after layers.0 over 100x that after layers.7 at the start", ratios[0] > 100)
    ctx.check("still over 50x over the last 20 steps", min(ratios[-20:]) > 50)
    ctx.check("under 5x at gain 1.0", ref_ratio < 5)
    ctx.check("the losses are finite", _finite(losses))


@scenario(
    family="mohair_goat_shearing_clip_weight_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="Mohair goat-shearing clip-weight regressor (ReLU MLP, MSE) on RMSprop with lr typed "
    "3e-2 for 1e-4: the first large updates push fc2's pre-activations negative for most inputs "
    "and many of act2's units die and never come back; at 1e-4 few units die.",
)
def h425_mohair_shearing_relu_death(ctx):
    def run(lr, attach):
        gen = seeded(42508)
        model = _Net(12, 64, 1)
        opt = torch.optim.RMSprop(model.parameters(), lr=lr)
        probe = next(_readings(torch.Generator().manual_seed(7), 512, 12, 4258))[0]
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        losses = _loop(
            ctx if attach else None,
            model,
            opt,
            _readings(gen, 64, 12, 4258),
            200,
            F.mse_loss,
            after=after,
            attach=attach,
        )
        return losses, dead

    _, ref_dead = run(1e-4, False)
    losses, dead = run(3e-2, True)
    ctx.check("over 30% of act2 dead over the last 50 steps", min(dead[-50:]) > 0.3)
    ctx.check("under 20% dead at lr 1e-4", max(ref_dead[-50:]) < 0.2)
    ctx.check("the losses are finite", _finite(losses))


@scenario(
    family="geyser_eruption_interval_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Geyser eruption-interval regressor (tanh MLP, MSE, full 256-row batches) on plain SGD "
    "under OneCycleLR whose max_lr is typed 20.0 for 2.0. As the warm-up raises the lr, lr x "
    "sharpness passes 2 and the loss blows up.",
)
def h425_geyser_onecycle_max_lr(ctx):
    gen = seeded(42509)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=20.0, total_steps=300, div_factor=250.0)
    x0, y0 = next(_readings(torch.Generator().manual_seed(3), 256, 8, 4259))
    lam0 = _sharpness(model, F.mse_loss, x0, y0)
    lrs = []

    def after(step):
        lrs.append(opt.param_groups[0]["lr"])

    losses = _loop(
        ctx, model, opt, _readings(gen, 256, 8, 4259), 300, F.mse_loss, sched=sched, after=after
    )
    blow = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100), None)
    ctx.check("lr x sharpness under 2 at step 0", lrs[0] * lam0 < 2)
    ctx.check("the loss blew up", blow is not None)
    ctx.check(
        "lr x sharpness(step 0) past 2 before the blow-up",
        blow is not None and lrs[blow - 1] * lam0 > 2,
    )


@scenario(
    family="cooperage_barrel_leak_relu_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=125,
    note="Cooperage barrel-leak ReLU BCE net (SGD momentum 0.9, clipping at 1). The epoch's "
    "remainder batch at step 125 goes through a separate code path that reduces the loss with "
    "sum instead of mean: a single gradient 256x too large on an ordinary logged loss; clipping "
    "bounds the step and the run recovers.",
)
def h425_cooperage_remainder_sum(ctx):
    gen = seeded(42510)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def backprop(step, loss, out):
        return loss * 256 if step == 125 else loss

    losses = _loop(
        ctx,
        model,
        opt,
        _binary(gen, 256, 10, 42510),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    g = ctx.grad_norms
    ctx.check("gradient at step 125 over 50x the median before", g[125] > 50 * _median(g[100:125]))
    ctx.check("the loss at step 125 was ordinary", losses[125] < 1.5 * _median(losses[100:125]))
    ctx.check("the loss fell and stayed finite", _fell(losses))


# -- controls --------------------------------------------------------------------------------------


class _DistMult(nn.Module):
    def __init__(self, entities=200, relations=6, dim=32):
        super().__init__()
        self.ent = nn.Embedding(entities, dim)
        self.rel = nn.Embedding(relations, dim)
        nn.init.normal_(self.ent.weight, std=0.3)
        nn.init.normal_(self.rel.weight, std=0.3)

    def forward(self, triples):
        h, r, t = self.ent(triples[:, 0]), self.rel(triples[:, 1]), self.ent(triples[:, 2])
        return (h * r * t).sum(-1)


def _kg_triples(seed, entities=200, relations=6, n=3000):
    g = torch.Generator().manual_seed(seed)
    cluster = torch.randint(0, 8, (entities,), generator=g)
    shift = torch.randint(0, 8, (relations,), generator=g)
    h = torch.randint(0, entities, (n,), generator=g)
    r = torch.randint(0, relations, (n,), generator=g)
    want = (cluster[h] + shift[r]) % 8
    pool = [torch.nonzero(cluster == c).flatten() for c in range(8)]
    t = torch.stack(
        [p[torch.randint(0, len(p), (1,), generator=g)][0] for p in (pool[int(w)] for w in want)]
    )
    return torch.stack([h, r, t], 1)


@scenario(
    family="beekeeping_forage_link_distmult_kg",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="Beekeeping forage-link knowledge graph (hive, relation, flower patch) with hand-written "
    "DistMult scores over generated triples, softplus loss over 4 sampled tail corruptions per "
    "positive, N3 regularisation, Adagrad lr 0.1, entity embeddings renormed to norm <= 1 after "
    "each step. Control.",
)
def h425_beekeeping_distmult_control(ctx):
    gen = seeded(42511)
    triples = _kg_triples(42511)
    model = _DistMult()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)

    def batches():
        while True:
            idx = torch.randint(0, len(triples), (128,), generator=gen)
            pos = triples[idx]
            neg = pos.repeat(4, 1)
            neg[:, 2] = torch.randint(0, 200, (len(neg),), generator=gen)
            x = torch.cat([pos, neg])
            yield x, torch.cat([torch.ones(len(pos)), -torch.ones(len(neg))])

    def loss_fn(score, sign):
        return F.softplus(-sign * score).mean()

    def backprop(step, loss, out):
        n3 = sum((p.abs() ** 3).sum() for p in (model.ent.weight, model.rel.weight))
        return loss + 1e-4 * n3

    def after(step):
        with torch.no_grad():
            model.ent.weight.data = torch.renorm(model.ent.weight.data, 2, 0, 1.0)

    losses = _loop(ctx, model, opt, batches(), 200, loss_fn, backprop=backprop, after=after)
    norms = model.ent.weight.detach().norm(dim=1)
    ctx.check("the loss fell", _fell(losses))
    ctx.check("entity norms within 1", float(norms.max()) <= 1.0 + 1e-4)


class _Drone(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x.unsqueeze(1)))
        x = F.relu(self.conv2(x))
        return self.head(x.mean(-1))


def _drones(gen, batch=64, length=64, classes=4):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.1 + 0.12 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freq[:, None] * t + phase) + 0.3 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    family="bagpipe_drone_reed_fp16_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Bagpipe drone-reed pitch classifier (ReLU Conv1d over noisy drone traces) under fp16 "
    "autocast with a torch.amp.GradScaler, SGD Nesterov under OneCycleLR, label smoothing 0.1, "
    "clipping at 1. Control.",
)
def h425_bagpipe_drone_fp16_control(ctx):
    gen = seeded(42512)
    model = _Drone()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=160)
    scaler = torch.amp.GradScaler("cpu")
    losses = _loop(
        ctx,
        model,
        opt,
        _drones(gen),
        160,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(losses))


class _TiedAE(nn.Module):
    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _walls(gen, batch=64, d_in=16, seed=42513):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, d_in, generator=g) / 2
    while True:
        z = torch.randn(batch, 4, generator=gen)
        x = z @ basis + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="dry_stone_wall_batter_tied_autoencoder",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Dry-stone-wall batter-profile autoencoder with tied encoder/decoder weights (tanh code, "
    "Huber reconstruction), RAdam under a linear warm-up, accumulation over 2. Control.",
)
def h425_dry_stone_tied_ae_control(ctx):
    gen = seeded(42513)
    model = _TiedAE()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    losses = _loop(ctx, model, opt, _walls(gen), 200, F.huber_loss, sched=sched, accumulate=2)
    ctx.check("the loss fell", _fell(losses, ratio=0.5))
