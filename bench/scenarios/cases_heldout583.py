"""Held-out set 583 (``h583_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: glassblower punty-gather weight regressor fed the gather weight in raw milligrams under
fp16 autocast (amp_overflow, AdamW); bobsleigh runner-frost classifier fed one shard of raw
infrared-thermometer counts (data_outlier, NAdam); sailmaker grommet-pull regressor with its SGD
lr typed 4.0 for 0.04 (sharpness_above_limit, plain SGD); mammatus lobe-sag 8-deep ReLU MLP
whose xavier init gain is doubled by a copy-pasted "relu gain" (exploding_gradients, SGD
momentum); fly-tying hackle-wrap regressor whose fc2 group lr is typed 1e-9
(update_ratio_out_of_range, Adamax, param groups); canyoneering anchor-slip BCE classifier
whose resumed step sums the loss over the batch instead of averaging it (gradient_spike, SGD
Nesterov, accumulation); ball-lightning glow-lifetime Gaussian NLL net whose in-model batch
standardiser has no epsilon (nonfinite, RAdam); hammered-dulcimer course classifier whose
temperature is read in seconds from a milliseconds key (softmax_collapse, Adagrad);
cheddaring curd-slab regressor whose hand-written decoupled weight decay has its sign flipped
(loss_divergence, Adam); ice-climbing screw-bite classifier whose learnable logit scale has
lost its clamp (output_logit_divergence, RMSprop, param groups).
Controls: shepherd-crook carving grain classifier whose weight decay is switched from 0 to 0.1
at step 100 (alarming-looking, AdamW); wind-chime overtone VQ-VAE (codebook with a
straight-through estimator, Adam, OneCycleLR); pole-vault pole-bend Huber regressor (Adadelta,
ReduceLROnPlateau, clipping, heavy-tailed noisy targets).
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
            after(step, out.detach(), y)
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


# -- 1. amp overflow: gather weight in raw milligrams under fp16 autocast -------------------------

AMP_ONSET = 80


@scenario(
    family="glassblower_punty_gather_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=AMP_ONSET,
    onset=AMP_ONSET,
    heldout=True,
    note="Glassblower punty-gather regressor (GELU MLP on gather weight, furnace temperature, "
    "marver time, pipe rotation rate, glory-hole reheat count and ambient humidity, predicting "
    "the wall thickness; MSE, AdamW, fp16 autocast + GradScaler). From step 80 a new scale "
    "logs the gather weight in raw milligrams (about 2e5) instead of the standardised column: "
    "autocast runs fc1 in fp16, whose range ends at 65504, fc1's output is non-finite (the "
    "same batch is finite in float32) and the loss is non-finite at step 80.",
)
def h583_glassblower_gather_milligrams(ctx):
    gen = seeded(5831)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 58310)
    losses, fc1_bad, fc1_dtypes, bad_x, bad_y = [], [], [], None, None
    for step in range(130):
        x, y = next(batches)
        if step >= AMP_ONSET:
            x = x.clone()
            x[:, 0] = 2.0e5 + 5.0e3 * x[:, 0]
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


# -- 2. data outlier: one shard of raw infrared-thermometer counts --------------------------------

OUTLIER_STEP = 120


@scenario(
    family="bobsleigh_runner_frost_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Bobsleigh runner-frost classifier (GELU MLP on runner temperature, ice temperature, "
    "air humidity, dew point, track section and sled weight, 5 frost grades; cross-entropy, "
    "NAdam, clipping at 1.0). One shard written by an unconverted logger holds the runner "
    "temperature as raw infrared-thermometer counts (x400): the batch at step 120 has a loss "
    "over 20x and a gradient over 10x the usual; clipping bounds the update and the run recovers.",
)
def h583_bobsleigh_raw_ir_counts_shard(ctx):
    gen = seeded(5832)
    model = _Net(6, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == OUTLIER_STEP:
            x = x.clone()
            x[:, 0] = 400.0 * x[:, 0]
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 5, 58320),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    pre_l = _median(losses[OUTLIER_STEP - 20 : OUTLIER_STEP])
    pre_g = _median(norms[OUTLIER_STEP - 20 : OUTLIER_STEP])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("trained before the shard", _fell(losses[:OUTLIER_STEP]))
    ctx.check("loss over 20x at the shard", losses[OUTLIER_STEP] > 20 * pre_l)
    ctx.check("gradient over 10x at the shard", norms[OUTLIER_STEP] > 10 * pre_g)
    ctx.check("recovers: last 20 steps under 2x pre-shard", _mean(losses[-20:]) < 2 * pre_l)


# -- 3. sharpness above limit: SGD lr typed 4.0 for 0.04 -----------------------------------------


@scenario(
    family="sailmaker_grommet_pull_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Sailmaker grommet pull-out regressor (tanh MLP on cloth weight, grommet size, "
    "patch layers, stitch count, seam angle and resin content, predicting the pull-out load; "
    "MSE, plain SGD). The lr is typed 4.0 for 0.04: lr x (top Hessian eigenvalue) is past 2 "
    "from the first step and the loss blows up.",
)
def h583_sailmaker_lr_typo(ctx):
    gen = seeded(5833)
    model = _Net(6, hidden=32, act=nn.Tanh)
    lr = 4.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 6, 58330)
    probe = next(batches)
    eig0 = _top_eig(model, F.mse_loss, *probe)
    losses, _ = _train(ctx, model, opt, batches, 100, F.mse_loss)
    blown = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * min(losses)]
    ctx.check("lr x sharpness past 2 at step 0", lr * eig0 > 2.0)
    ctx.check("the intended lr 0.04 is below the limit", 0.04 * eig0 < 2.0)
    ctx.check("loss blows up (over 20x its best)", bool(blown))


# -- 4. exploding gradients: xavier gain doubled by a copy-pasted relu gain -----------------------


class _DeepReLU(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        for lin in self.layers:
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="mammatus_lobe_sag_deep_relu_mlp",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Mammatus cloud lobe-sag regressor (8-deep ReLU MLP of width 48 on cloud-base height, "
    "anvil temperature, lapse rate, humidity, shear and updraft speed, predicting lobe depth; "
    "MSE, SGD momentum 0.9). The init applies xavier_normal_ with gain 2 x sqrt(2) (relu's gain "
    "multiplied in twice by a copy-pasted helper): each layer doubles the signal, the backward "
    "signal grows through depth to layers.0 (over 20x the last layer's) and the loss blows up.",
)
def h583_mammatus_double_relu_gain(ctx):
    gen = seeded(5834)
    gain = 2.0 * nn.init.calculate_gain("relu")
    model = _DeepReLU(6, 48, 8, gain)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    back = {}

    def hook(i):
        def record(m, grad_in, grad_out):
            if i not in back:
                back[i] = float(grad_out[0].norm())

        return record

    for i in (0, 7):
        model.layers[i].register_full_backward_hook(hook(i))
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 58340), 80, F.mse_loss)
    ratio = back.get(0, 0.0) / max(back.get(7, 1e-30), 1e-30)
    blown = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * losses[0]]
    ctx.check("backward signal at layers.0 over 20x the last layer's at step 0", ratio > 20)
    ctx.check("loss blows up (over 20x its first value or non-finite)", bool(blown))


# -- 5. update ratio: fc2 group lr typed 1e-9 ----------------------------------------------------


@scenario(
    family="fly_tying_hackle_wrap_silu_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Fly-tying hackle-wrap regressor (SiLU MLP on feather barb length, stem thickness, "
    "hook size, thread tension, wrap count and tail length, predicting the hackle flare; MSE, "
    "Adamax with param groups). The fc2 group's lr is typed 1e-9 for 1e-3: fc2's update-to-"
    "weight ratio is about 1e-9, fc2 never moves while fc1 and the head train.",
)
def h583_fly_tying_fc2_group_lr(ctx):
    gen = seeded(5835)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 2e-3},
            {"params": model.fc2.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    w2, w1 = _flat(model.fc2), _flat(model.fc1)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 58350), 200, F.mse_loss)
    moved2 = float((_flat(model.fc2) - w2).norm() / w2.norm())
    moved1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fc2 moved under 1e-5 of its norm", moved2 < 1e-5)
    ctx.check("fc1 moved over 5% of its norm", moved1 > 0.05)


# -- 6. gradient spike: resumed step sums the loss instead of averaging it ------------------------

SPIKE_STEP = 130


@scenario(
    family="canyoneering_anchor_slip_bce_classifier",
    optimizer="SGD(momentum=0.9, nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Canyoneering anchor-slip classifier (GELU MLP on webbing age, rock type, anchor "
    "angle, load, wetness and knot type, will the anchor slip; BCE with logits, SGD Nesterov, "
    "2 micro-batches accumulated, clipping at 5). The step resumed from a checkpoint at 130 "
    "rebuilds the loss with reduction='sum' (a config default) instead of 'mean': the "
    "backpropagated loss is 64x, the gradient over 30x the usual, the logged loss is ordinary.",
)
def h583_canyoneering_resume_sum_reduction(ctx):
    gen = seeded(5836)
    model = _Net(6, hidden=48, out=1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(58360)
    w = torch.randn(6, generator=g)

    def micro():
        x = torch.randn(64, 6, generator=gen)
        y = ((x @ w + 0.5 * x[:, 0] * x[:, 1]) > 0).float()
        return x, y

    losses, norms = [], []
    for step in range(200):
        logged = 0.0
        for _ in range(2):
            x, y = micro()
            out = model(x)
            reduction = "sum" if step == SPIKE_STEP else "mean"
            loss = F.binary_cross_entropy_with_logits(out, y, reduction=reduction)
            logged_part = float(F.binary_cross_entropy_with_logits(out.detach(), y))
            (loss / 2).backward()
            logged += logged_part / 2
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    pre_g = _median(norms[SPIKE_STEP - 20 : SPIKE_STEP])
    pre_l = _median(losses[SPIKE_STEP - 20 : SPIKE_STEP])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("trained", _fell(losses))
    ctx.check("gradient over 30x at the resumed step", norms[SPIKE_STEP] > 30 * pre_g)
    ctx.check("logged loss ordinary at the resumed step", losses[SPIKE_STEP] < 2 * pre_l)


# -- 7. nonfinite: in-model batch standardiser without epsilon ------------------------------------

NAN_STEP = 90


class _BatchStandardise(nn.Module):
    def forward(self, x):
        return (x - x.mean(0)) / x.std(0)


class _GlowNLL(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.norm = _BatchStandardise()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(self.norm(x)))))
        return self.head(h)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="ball_lightning_glow_lifetime_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=NAN_STEP,
    onset=NAN_STEP,
    heldout=True,
    note="Ball-lightning glow-lifetime regressor (SiLU MLP with a mean and variance head on "
    "camera brightness, colour temperature, size, height, air pressure and humidity; Gaussian "
    "NLL, RAdam). The model standardises its inputs per batch as (x - mean) / std with no "
    "epsilon; at step 90 the camera saturates for a whole batch, the brightness column is "
    "constant, norm computes 0/0 and the loss is NaN at step 90.",
)
def h583_ball_lightning_saturated_camera(ctx):
    gen = seeded(5837)
    model = _GlowNLL(6)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    seen = []
    model.norm.register_forward_hook(lambda m, i, o: seen.append(bool(torch.isnan(o).any())))

    def alter(step, x, y):
        if step == NAN_STEP:
            x = x.clone()
            x[:, 0] = 255.0
        return x, y

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 58370, noise=0.2), 140, _gauss_nll, alter=alter
    )
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("trained finitely before the batch", _fell(losses[:NAN_STEP]))
    ctx.check("norm output NaN at the saturated batch", len(seen) > NAN_STEP and seen[NAN_STEP])
    ctx.check("norm output finite before", not any(seen[:NAN_STEP]))
    ctx.check("loss first non-finite at step 90", first_bad == NAN_STEP)


# -- 8. softmax collapse: temperature read in seconds from a milliseconds key ---------------------


class _TempNet(_Net):
    def __init__(self, d_in, out, tau):
        super().__init__(d_in, hidden=48, out=out, act=nn.ReLU)
        self.tau = tau

    def forward(self, x):
        return self.head(self.features(x)) / self.tau


@scenario(
    family="hammered_dulcimer_course_relu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Hammered-dulcimer course classifier (ReLU MLP on hammer velocity, strike point, "
    "bridge side, decay time, spectral centroid and sympathetic ring, 8 courses; cross-"
    "entropy, Adagrad). The softmax temperature key 'tau_ms: 1' is read as seconds and "
    "divided by 1000 again, tau = 1e-3: logits are 1000x, over 40% of rows' target probability "
    "rounds to exactly 1.0 in float32.",
)
def h583_dulcimer_tau_units(ctx):
    gen = seeded(5838)
    model = _TempNet(6, 8, tau=1e-3)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    fracs = []

    def after(step, out, y):
        fracs.append(collapsed_fraction(out, y))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 8, 58380, spread=2.0),
        160,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("over 40% of rows exactly one-hot (last 20 steps)", _mean(fracs[-20:]) > 0.4)


# -- 9. loss divergence: decoupled weight decay with its sign flipped ----------------------------


@scenario(
    family="cheddaring_curd_slab_tanh_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Cheddaring curd-slab regressor (tanh MLP on slab thickness, whey acidity, turn count, "
    "vat temperature, rennet dose and milling time, predicting the curd moisture; MSE, Adam). "
    "A hand-written decoupled weight decay applies p += lr * wd * p (the sign flipped): the net "
    "fits first, then the weights grow past 2x and the loss climbs slowly, with no jump, to "
    "over twice its best.",
)
def h583_cheddaring_decay_sign_flip(ctx):
    gen = seeded(5839)
    model = _Net(6, hidden=48, act=nn.Tanh)
    lr, wd = 3e-3, 1.5
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    w0 = float(_flat(model).norm())

    def before(step):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "weight" in n:
                    p.add_(p, alpha=lr * wd)

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 58390), 300, F.mse_loss, before=before
    )
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    jumps = [smooth[i + 5] / smooth[i] for i in range(len(smooth) - 5)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("weights over 2x their init norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 2x its best", smooth[-1] > 2 * best)
    ctx.check("no jump: 5-step moving mean never doubles", max(jumps) < 2.0)


# -- 10. output logit divergence: learnable logit scale without its clamp -------------------------


class _ScaledHead(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, d) / math.sqrt(d))
        self.log_scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos


class _ScrewNet(nn.Module):
    def __init__(self, d_in, k, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = _ScaledHead(hidden, k)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    family="ice_climbing_screw_bite_cosine_gelu_classifier",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Ice-climbing screw-bite classifier (GELU MLP with a cosine head and a learnable logit "
    "scale, on ice temperature, ice colour, screw length, placement angle, air pocket depth "
    "and sun exposure, 4 bite grades; cross-entropy, RMSprop with the scale in its own group "
    "at lr 0.05). The clamp of log_scale at log(100) was dropped in a refactor: on near-"
    "separable data the scale keeps climbing and the head's logits grow over 20x.",
)
def h583_ice_screw_unclamped_logit_scale(ctx):
    gen = seeded(58310)
    model = _ScrewNet(6, 4)
    body = [p for n, p in model.named_parameters() if n != "head.log_scale"]
    opt = torch.optim.RMSprop(
        [{"params": body, "lr": 1e-3}, {"params": [model.head.log_scale], "lr": 5e-2}]
    )
    peaks = []

    def after(step, out, y):
        peaks.append(float(out.abs().max()))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 4, 58311, spread=2.5, noise=0.3),
        250,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("head logits over 20x their step-0 size", _mean(peaks[-10:]) > 20 * peaks[0])
    ctx.check("logits still growing at the end", _mean(peaks[-10:]) > _mean(peaks[-60:-50]))


# -- 11. control (alarming-looking): weight decay switched from 0 to 0.1 at step 100 --------------

WD_STEP = 100


@scenario(
    family="shepherd_crook_carving_grain_relu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Shepherd-crook carving grain classifier (ReLU MLP on horn density, grain angle, "
    "steam time, bend radius, moisture and ring count, 6 grain classes; cross-entropy with "
    "label smoothing 0.05, AdamW). Trained without weight decay for 100 steps, then the "
    "planned regularisation phase sets weight_decay from 0 to 0.1: the weights' norm shrinks, "
    "the loss rises a little, then falls again. Healthy.",
)
def h583_crook_weight_decay_switch(ctx):
    gen = seeded(58312)
    model = _Net(6, hidden=64, out=6, act=nn.ReLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.0)
    norms_w = []

    def before(step):
        if step == WD_STEP:
            for g in opt.param_groups:
                g["weight_decay"] = 0.1
        norms_w.append(float(_flat(model).norm()))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 6, 58313, spread=2.0),
        260,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05),
        classifier=True,
        before=before,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("trained", _fell(losses))
    ctx.check("weights' norm shrinks after the switch", norms_w[-1] < 0.9 * norms_w[WD_STEP])
    ctx.check(
        "ends no worse than just before the switch",
        _mean(losses[-20:]) < 1.1 * _mean(losses[WD_STEP - 20 : WD_STEP]),
    )


# -- 12. control: wind-chime overtone VQ-VAE -----------------------------------------------------


class _VQVAE(nn.Module):
    def __init__(self, d_in=32, hidden=64, d_code=8, codes=32):
        super().__init__()
        self.enc1 = nn.Linear(d_in, hidden)
        self.enc2 = nn.Linear(hidden, d_code)
        self.codebook = nn.Embedding(codes, d_code)
        self.dec1 = nn.Linear(d_code, hidden)
        self.dec2 = nn.Linear(hidden, d_in)
        self.last_codes = None

    def encode(self, x):
        return self.enc2(F.gelu(self.enc1(x)))

    def forward(self, x):
        z = self.encode(x)
        d = torch.cdist(z, self.codebook.weight)
        idx = d.argmin(1)
        self.last_codes = idx
        q = self.codebook(idx)
        commit = F.mse_loss(z, q.detach())
        book = F.mse_loss(q, z.detach())
        st = z + (q - z).detach()
        return self.dec2(F.gelu(self.dec1(st))), book + 0.25 * commit


def _chime_spectra(gen, batch, d=32):
    freqs = torch.arange(d, dtype=torch.float32)
    while True:
        f0 = 2.0 + 6.0 * torch.rand(batch, 1, generator=gen)
        ratios = torch.tensor([1.0, 2.76, 5.40])
        amps = torch.rand(batch, 3, generator=gen)
        spec = sum(
            amps[:, i : i + 1] * torch.exp(-((freqs - f0 * ratios[i]) ** 2) / 2.0) for i in range(3)
        )
        yield spec + 0.02 * torch.randn(batch, d, generator=gen), None


@scenario(
    family="wind_chime_overtone_vqvae",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Wind-chime overtone VQ-VAE (GELU encoder to 8-d latents, a 32-code codebook with "
    "nearest-code lookup and a straight-through estimator, codebook + 0.25 commitment loss, "
    "GELU decoder) over generated tube-chime spectra (three inharmonic partials); MSE "
    "reconstruction, Adam with OneCycleLR, codebook initialised from the first batch's "
    "encodings. Healthy.",
)
def h583_wind_chime_vqvae(ctx):
    gen = seeded(58314)
    model = _VQVAE()
    batches = _chime_spectra(gen, 64)
    with torch.no_grad():
        model.codebook.weight.copy_(model.encode(next(batches)[0])[:32])
    steps = 220
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    ctx.attach(model, opt)
    losses, used = [], set()
    for step in range(steps):
        x, _ = next(batches)
        recon, vq = model(x)
        loss = F.mse_loss(recon, x)
        (loss + vq).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step >= steps - 20:
            used.update(model.last_codes.tolist())
    ctx.check("finite throughout", _finite(losses))
    ctx.check("reconstruction fell", _fell(losses, ratio=0.5))
    ctx.check("at least 8 codes in use at the end", len(used) >= 8)


# -- 13. control: pole-vault pole-bend Huber regressor --------------------------------------------


def _noisy_readings(gen, batch, d_in, seed):
    base = _readings(gen, batch, d_in, seed, noise=0.1)
    while True:
        x, y = next(base)
        t = torch.distributions.StudentT(2.0).sample((batch,))
        yield x, y + 0.1 * t


@scenario(
    family="pole_vault_pole_bend_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Pole-vault pole-bend regressor (SiLU MLP on run-up speed, grip height, pole "
    "stiffness, take-off angle, plant timing and athlete mass, predicting peak chord "
    "compression) with heavy-tailed noisy targets (Student-t, 2 d.o.f.); Huber loss, Adadelta "
    "lr 1.0, ReduceLROnPlateau, clipping at 1.0. Healthy.",
)
def h583_pole_vault_huber(ctx):
    gen = seeded(58315)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _noisy_readings(gen, 64, 6, 58316),
        240,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        clip=1.0,
        plateau=plateau,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("trained", _fell(losses, k=20))
