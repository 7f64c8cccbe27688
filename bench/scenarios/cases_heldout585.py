"""Held-out set 585 (``h585_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: goldwork couching-thread tension regressor fed the couching pull in raw millinewtons
under fp16 autocast (amp_overflow, AdamW); pochoir stencil-print grade classifier fed one shard
of raw densitometer counts (data_outlier, NAdam); screen-print squeegee pull-pressure regressor
with its SGD lr typed 5.0 for 0.05 (sharpness_above_limit, plain SGD); baggywrinkle chafe-wear
10-deep tanh MLP initialised with orthogonal gain 4.0 typed for 1.0 (exploding_gradients, SGD
momentum); goffering-iron pleat regressor whose fc2 group lr is typed 3e-9 (update_ratio_out_of_range,
Adamax, param groups); marlinspike splice-slip BCE classifier whose resumed step multiplies the
loss by a stale fp16 loss scale of 512 (gradient_spike, SGD Nesterov, accumulation);
volcano-boarding descent-time Gaussian NLL net whose speed feature divides distance by time
with no guard (nonfinite, RAdam); timple strum-pattern classifier whose temperature is read as
2e-3 (softmax_collapse, Adagrad); trapunto quilt-loft regressor whose hand-written decoupled
weight decay has its sign flipped (loss_divergence, Adam); hat-block felt-shrink classifier
with its RMSprop lr typed 1e-1 for 1e-3 (loss_of_plasticity, RMSprop).
Controls: knot-board knot-kind classifier whose pretrained backbone is frozen and unfrozen at
step 100 (alarming-looking, AdamW, param groups); firn densification neural cellular automaton
(Adam, OneCycleLR, clipping); bowline load-slip Huber regressor (Adadelta, ReduceLROnPlateau,
clipping, heavy-tailed noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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
    alter=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    after=None,
    before=None,
    attach=True,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    if attach:
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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.sin(x @ v / math.sqrt(d_in))
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


# -- 1. amp overflow: couching pull in raw millinewtons under fp16 autocast -----------------------

AMP_ONSET = 70


@scenario(
    family="goldwork_couching_thread_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=AMP_ONSET,
    onset=AMP_ONSET,
    heldout=True,
    note="Goldwork couching-thread regressor (GELU MLP on couching pull, stitch spacing, "
    "passing-thread twist, felt padding depth, needle gauge, frame tension and humidity, "
    "predicting the puckering of the ground fabric; MSE, AdamW, fp16 autocast + GradScaler). "
    "From step 70 a new tensiometer logs the couching pull in raw millinewtons (about 1.5e5) "
    "instead of the standardised column: autocast runs fc1 in fp16, whose range ends at 65504, "
    "fc1's output is non-finite (the same batch is finite in float32) and the loss is "
    "non-finite at step 70.",
)
def h585_goldwork_couching_millinewtons(ctx):
    gen = seeded(5851)
    model = _Net(7, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 7, 58510)
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


# -- 2. data outlier: one shard of raw densitometer counts ----------------------------------------

OUTLIER_STEP = 120


@scenario(
    family="pochoir_stencil_print_grade_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Pochoir stencil-print grade classifier (GELU MLP on ten standardised readings: ink "
    "density per stencil, brush load, registration offsets, paper cockle; six grades; cross-"
    "entropy, NAdam, clipping at 1.0). The batch at step 120 comes from a shard whose "
    "densitometer column was written as raw counts (about 3000) instead of the standardised "
    "density: the loss jumps over 20x, the raw gradient over 10x, then the run recovers.",
)
def h585_pochoir_raw_densitometer_shard(ctx):
    gen = seeded(5852)
    model = _Net(10, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == OUTLIER_STEP:
            x = x.clone()
            x[:, 3] = 3000.0 + 200.0 * x[:, 3]
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 10, 6, 58520),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    before_l = _median(losses[OUTLIER_STEP - 30 : OUTLIER_STEP])
    before_g = _median(norms[OUTLIER_STEP - 30 : OUTLIER_STEP])
    ctx.check("trained before the shard", _fell(losses[:OUTLIER_STEP]))
    ctx.check("loss over 20x at the shard", losses[OUTLIER_STEP] > 20 * before_l)
    ctx.check("gradient over 10x at the shard", norms[OUTLIER_STEP] > 10 * before_g)
    ctx.check(
        "ordinary batches before the shard",
        max(losses[OUTLIER_STEP - 30 : OUTLIER_STEP]) < 5 * before_l,
    )
    ctx.check("recovers", _finite(losses) and _mean(losses[-10:]) < 2.0 * before_l + 0.05)


# -- 3. sharpness above limit: SGD lr typed 5.0 for 0.05 ------------------------------------------


def _squeegee_loss(out, y):
    return F.mse_loss(out, y)


@scenario(
    family="screenprint_squeegee_pull_pressure_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Screen-print squeegee pull regressor (tanh MLP on squeegee angle, durometer, mesh "
    "count, off-contact distance, ink viscosity and stroke speed, predicting the ink deposit; "
    "MSE, plain SGD). The config's lr is typed 5.0 for 0.05: lr times the top Hessian "
    "eigenvalue is past 2 from step 0 and the loss blows up.",
)
def h585_screenprint_lr_typo(ctx):
    gen = seeded(5853)
    model = _Net(6, hidden=48, act=nn.Tanh)
    lr = 5.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 6, 58530)
    x0, y0 = next(batches)
    eig0 = _top_eig(model, _squeegee_loss, x0, y0)
    losses, _ = _train(ctx, model, opt, batches, 100, _squeegee_loss)
    ctx.check("lr x sharpness past 2 at step 0", lr * eig0 > 2.0)
    ctx.check("same model trains at lr 0.05", 0.05 * eig0 < 2.0)
    ctx.check(
        "loss blows up",
        not _finite(losses) or max(losses[-10:]) > 100 * _mean(losses[:3]),
    )


# -- 4. exploding gradients: orthogonal gain 4.0 typed for 1.0 in a 10-deep tanh MLP -------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.layers:
            x = torch.tanh(m(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="baggywrinkle_chafe_wear_deep_tanh_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Baggywrinkle chafe-wear regressor (10-deep tanh MLP on shroud angle, yarn count, "
    "sea state, days at sea, tack count and wind speed, predicting the chafe depth on the "
    "sail; MSE, SGD momentum 0.9). The init helper's orthogonal gain is typed 4.0 for 1.0: "
    "every layer amplifies the backward signal, the gradient at layers.0 is over 20x the last "
    "layer's throughout.",
)
def h585_baggywrinkle_orthogonal_gain(ctx):
    gen = seeded(5854)
    model = _Deep(6, 32, 10, gain=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    first, last = [], []

    ratios = []
    batches = _readings(gen, 64, 6, 58540)
    ctx.attach(model, opt)
    losses = []
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g0 = float(model.layers[0].weight.grad.norm())
        g9 = float(model.layers[-1].weight.grad.norm())
        first.append(g0)
        last.append(g9)
        ratios.append(g0 / max(g9, 1e-12))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ref = _Deep(6, 32, 10, gain=1.0)
    x, y = next(batches)
    F.mse_loss(ref(x), y).backward()
    ref_ratio = float(ref.layers[0].weight.grad.norm()) / float(ref.layers[-1].weight.grad.norm())
    ctx.check("layers.0 gradient over 20x the last layer's at init", ratios[0] > 20)
    ctx.check("still over 20x at the end", _median(ratios[-20:]) > 20)
    ctx.check("a gain-1.0 replica does not amplify", ref_ratio < 0.25 * ratios[0])


# -- 5. update ratio out of range: fc2 group lr typed 3e-9 ----------------------------------------


@scenario(
    family="goffering_iron_pleat_set_silu_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Goffering-iron pleat-set regressor (SiLU MLP on iron temperature, starch strength, "
    "linen weight, dwell time and humidity, predicting how long a ruff's pleats hold; MSE, "
    "Adamax with three param groups). The fc2 group's lr is typed 3e-9 for 3e-3: fc2's "
    "updates are about 1e-9 of its weights, it never moves while the other layers learn.",
)
def h585_goffering_fc2_group_lr(ctx):
    gen = seeded(5855)
    model = _Net(5, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 3e-3},
            {"params": model.fc2.parameters(), "lr": 3e-9},
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )
    w2, w1 = _flat(model.fc2), _flat(model.fc1)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 5, 58550), 200, F.mse_loss)
    moved2 = float((_flat(model.fc2) - w2).norm() / w2.norm())
    moved1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    ctx.check("fc2 moved under 1e-5 of its norm", moved2 < 1e-5)
    ctx.check("fc1 moved over 1e-2 of its norm", moved1 > 1e-2)
    ctx.check("the rest still trains", _fell(losses, ratio=0.8))


# -- 6. gradient spike: resumed step multiplies by a stale fp16 loss scale ------------------------

SPIKE_STEP = 130


@scenario(
    family="marlinspike_splice_slip_gelu_bce_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Marlinspike splice-slip BCE classifier (GELU MLP on tuck count, rope lay, strand "
    "taper, load and soak time, predicting whether an eye splice slips; BCE with logits, SGD "
    "Nesterov, 4-micro-batch accumulation, clipping at 2.0). The run is resumed at step 130 "
    "from a checkpoint written by an fp16 job, and the resume code multiplies that step's "
    "loss by the stored loss scale 512 without unscaling: the raw gradient jumps over 50x "
    "while the logged loss is ordinary; clipping holds and the run goes on.",
)
def h585_marlinspike_stale_loss_scale(ctx):
    gen = seeded(5856)
    model = _Net(5, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(58560)
    w = torch.randn(5, generator=g)
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(200):
        total = 0.0
        for _ in range(4):
            x = torch.randn(32, 5, generator=gen)
            y = ((x @ w + 0.5 * x[:, 0] * x[:, 1]) > 0).float()
            ctx.targets(y.long())
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            scale = 512.0 if step == SPIKE_STEP else 1.0
            (scale * loss / 4).backward()
            total += float(loss.detach()) / 4
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        logged = torch.tensor(total)
        losses.append(total)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    med_g = _median(norms[SPIKE_STEP - 30 : SPIKE_STEP])
    med_l = _median(losses[SPIKE_STEP - 30 : SPIKE_STEP])
    ctx.check("trained before the resume", _fell(losses[:SPIKE_STEP]))
    ctx.check("gradient over 50x at the resume", norms[SPIKE_STEP] > 50 * med_g)
    ctx.check("logged loss ordinary at the resume", losses[SPIKE_STEP] < 2 * med_l + 0.05)
    ctx.check("no other spike", max(norms[:SPIKE_STEP] + norms[SPIKE_STEP + 1 :]) < 10 * med_g)
    ctx.check("finite", _finite(losses))


# -- 7. nonfinite: distance / time with no guard, a batch of stopped runs -> 0/0 ----------------

NAN_STEP = 90


class _Speed(nn.Module):
    """log(distance / time) of columns 0 and 1, appended to the other readings."""

    def forward(self, x):
        speed = x[:, 0] / x[:, 1]
        return torch.cat([torch.log(speed)[:, None], x[:, 2:]], 1)


class _GaussNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.feat = _Speed()
        self.fc1 = nn.Linear(d_in - 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.feat(x)))))
        return self.head(h)


def _gauss_nll(out, y):
    mu, log_sigma = out[:, 0], out[:, 1].clamp(-5, 5)
    return (log_sigma + 0.5 * ((y - mu) / log_sigma.exp()) ** 2).mean()


def _descents(gen, batch):
    while True:
        dist = 200.0 + 400.0 * torch.rand(batch, generator=gen)
        time = 20.0 + 40.0 * torch.rand(batch, generator=gen)
        slope = torch.randn(batch, 3, generator=gen)
        y = (
            0.8 * torch.log(dist / time)
            - 2.0
            + 0.3 * slope[:, 0]
            + 0.1 * torch.randn(batch, generator=gen)
        )
        yield torch.cat([dist[:, None], time[:, None], slope], 1), y


@scenario(
    family="volcano_boarding_descent_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("feat",),
    diverges=NAN_STEP,
    onset=NAN_STEP,
    heldout=True,
    note="Volcano-boarding descent Gaussian NLL net (SiLU MLP on the log of the run's speed, "
    "ash grain size, slope and board wax, predicting the log descent rate with a mean and a "
    "log-std head; Gaussian NLL, RAdam). The feature module computes speed as distance / time "
    "with no guard; the batch at step 90 holds runs that were aborted at the crater rim "
    "(distance 0, time 0): 0/0 is NaN in feat, the loss is NaN at step 90.",
)
def h585_volcano_boarding_zero_over_zero(ctx):
    gen = seeded(5857)
    model = _GaussNet(5)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    feat_bad = []
    model.feat.register_forward_hook(
        lambda m, i, o: feat_bad.append(bool((~torch.isfinite(o)).any()))
    )

    def alter(step, x, y):
        if step == NAN_STEP:
            x = x.clone()
            x[:8, 0] = 0.0
            x[:8, 1] = 0.0
        return x, y

    losses, _ = _train(ctx, model, opt, _descents(gen, 64), 150, _gauss_nll, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("trained before the batch", _fell(losses[:NAN_STEP], ratio=0.9))
    ctx.check("feat finite before the batch", not any(feat_bad[:NAN_STEP]))
    ctx.check("feat non-finite at the batch", len(feat_bad) > NAN_STEP and feat_bad[NAN_STEP])
    ctx.check("loss first non-finite at step 90", first_bad == NAN_STEP)


# -- 8. softmax collapse: temperature read as 2e-3 ------------------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, out, tau):
        super().__init__(d_in, hidden=64, out=out, act=nn.ReLU)
        self.tau = tau

    def forward(self, x):
        return self.head(self.features(x)) / self.tau


@scenario(
    family="timple_strum_pattern_relu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Timple strum-pattern classifier (ReLU MLP on twelve onset and accent features of a "
    "Canarian timple recording, eight rasgueado patterns; cross-entropy, Adagrad). The logit "
    "temperature is taken from a distillation config where it was stored as 2e-3 (a "
    "sharpening value meant for another head) instead of 1.0: the logits are multiplied by "
    "500 and over 40% of rows' target probability rounds to exactly 1.0 in float32.",
)
def h585_timple_temperature(ctx):
    gen = seeded(5858)
    model = _TempNet(12, 8, tau=2e-3)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    fracs = []

    def after(step, out, y):
        fracs.append(collapsed_fraction(out, y))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 12, 8, 58580),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over 40% of rows exactly 1.0 at the end", _mean(fracs[-10:]) > 0.4)
    ctx.check("few rows exactly 1.0 at the start", fracs[0] < 0.4)
    ctx.check("finite", _finite(losses))


# -- 9. loss divergence: hand-written decoupled weight decay with its sign flipped ----------------


@scenario(
    family="trapunto_quilt_loft_tanh_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Trapunto quilt-loft regressor (tanh MLP on cording density, stuffing weight, backing "
    "weave, stitch length and wash count, predicting the raised loft; MSE, Adam with a "
    "hand-written decoupled weight decay). The decay line is written p += lr * wd * p instead "
    "of p -= lr * wd * p: the weights grow steadily (over 2x), the tanh units saturate and "
    "the loss climbs to over 2x its best with no jump.",
)
def h585_trapunto_decay_sign_flip(ctx):
    gen = seeded(5859)
    model = _Net(5, hidden=48, act=nn.Tanh)
    lr, wd = 3e-3, 3.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n0 = float(_flat(model).norm())

    def before(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(lr * wd * p)

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 5, 58590), 250, F.mse_loss, before=before
    )
    best = min(losses)
    jumps = [b / max(a, 1e-12) for a, b in zip(losses[:-1], losses[1:], strict=True)]
    ctx.check("weights over 2x", float(_flat(model).norm()) > 2 * n0)
    ctx.check("loss climbs to over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("no jump over 3x in one step", max(jumps) < 3.0)
    ctx.check("finite", _finite(losses))


# -- 10. loss of plasticity: RMSprop lr typed 1e-1 for 1e-3 ---------------------------------------


@scenario(
    family="hatblock_felt_shrink_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Hat-block felt-shrink classifier (ReLU MLP on fur blend, steam time, block size, "
    "planking passes and water temperature, scaled but not centred, five shrink grades; "
    "cross-entropy, RMSprop). The "
    "lr is typed 1e-1 for 1e-3: the first large updates push fc2's units negative on every "
    "input, over 40% of act2 is dead and stays dead.",
)
def h585_hatblock_rmsprop_lr_typo(ctx):
    gen = seeded(58510)
    model = _Net(8, hidden=64, out=5, act=nn.ReLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-1)
    # the readings are min-max scaled but not centred (all around +2), and widely spread
    probe = next(_classes(torch.Generator().manual_seed(1), 512, 8, 5, 585100, spread=3.0))[0] + 2.0
    dead = []

    def after(step, out, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(probe)))

    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe))
    losses, _ = _train(
        ctx,
        model,
        opt,
        ((x + 2.0, y) for x, y in _classes(gen, 64, 8, 5, 585100, spread=3.0)),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("few dead at init", dead0 < 0.1)
    ctx.check("over 40% of act2 dead at step 50", dead[50] > 0.4)
    ctx.check("still dead at the end", dead[-1] >= 0.4)


# -- 11. control (alarming-looking): frozen backbone unfrozen at step 100 -------------------------

UNFREEZE = 100


@scenario(
    family="knotboard_knot_kind_unfrozen_backbone_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Knot-board knot-kind classifier (ReLU MLP on twelve rope-tracking features, seven "
    "knots; cross-entropy, AdamW with a backbone and a head param group). The backbone is "
    "pretrained on the sailing-school board, frozen while the new head is fitted, and "
    "unfrozen at step 100 at a 10x lower lr, as fine-tuning recipes do: the gradient norm "
    "jumps as many more parameters start to learn, then the loss goes on falling. Healthy.",
)
def h585_knotboard_unfreeze(ctx):
    gen = seeded(58511)
    model = _Net(12, hidden=256, out=7, act=nn.ReLU)
    # pretraining on the related board (a different label head), before this run
    pre_head = nn.Linear(256, 7)
    pre = torch.optim.Adam(
        list(model.fc1.parameters()) + list(model.fc2.parameters()) + list(pre_head.parameters()),
        lr=3e-3,
    )
    pre_batches = _classes(torch.Generator().manual_seed(5), 64, 12, 7, 585119)
    for _ in range(100):
        x, y = next(pre_batches)
        F.cross_entropy(pre_head(model.features(x)), y).backward()
        pre.step()
        pre.zero_grad(set_to_none=True)
    backbone = list(model.fc1.parameters()) + list(model.fc2.parameters())
    for p in backbone:
        p.requires_grad_(False)
    opt = torch.optim.AdamW(
        [
            {"params": backbone, "lr": 1e-3, "weight_decay": 0.01},
            {"params": model.head.parameters(), "lr": 1e-2, "weight_decay": 0.01},
        ]
    )
    w_bb = _flat(model.fc1)
    snap = {}

    def before(step):
        if step == UNFREEZE:
            snap["fc1"] = _flat(model.fc1)
            for p in backbone:
                p.requires_grad_(True)

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 12, 7, 585110, noise=0.6),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ctx.check("backbone still before the unfreeze", bool(torch.equal(snap["fc1"], w_bb)))
    ctx.check("backbone moves after", float((_flat(model.fc1) - snap["fc1"]).norm()) > 0)
    ctx.check(
        "gradient norm at the unfreeze over 2x the 10 steps before",
        norms[UNFREEZE] > 2 * _median(norms[UNFREEZE - 10 : UNFREEZE]),
    )
    ctx.check("loss fell", _fell(losses))
    ctx.check(
        "loss lower after the unfreeze",
        _mean(losses[-10:]) < _mean(losses[UNFREEZE - 10 : UNFREEZE]),
    )


# -- 12. control: a neural cellular automaton growing a firn density profile ----------------------


class _FirnNCA(nn.Module):
    """A perception conv, a 1x1 update rule, residual stochastic updates over many steps."""

    def __init__(self, channels=8, hidden=32):
        super().__init__()
        self.perceive = nn.Conv2d(channels, 3 * channels, 3, padding=1)
        self.rule1 = nn.Conv2d(3 * channels, hidden, 1)
        self.rule2 = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.rule2.weight)
        nn.init.zeros_(self.rule2.bias)
        self.channels = channels

    def forward(self, state, steps=16, gen=None):
        for _ in range(steps):
            dx = self.rule2(F.relu(self.rule1(self.perceive(state))))
            mask = (torch.rand(state.shape[0], 1, *state.shape[2:], generator=gen) < 0.5).float()
            state = state + dx * mask
        return state


def _firn_targets(gen, batch, size=16):
    """Layered density fields: depth-increasing density with a random annual-layer phase."""
    depth = torch.linspace(0, 1, size)[None, :, None]
    while True:
        phase = 2 * math.pi * torch.rand(batch, 1, 1, generator=gen)
        rate = 0.6 + 0.3 * torch.rand(batch, 1, 1, generator=gen)
        field = rate * depth + 0.15 * torch.sin(12 * depth + phase)
        yield field.expand(batch, size, size).contiguous(), rate.flatten()


@scenario(
    family="firn_glacier_densification_nca",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Firn-densification neural cellular automaton (a 3x3 perception conv and a 1x1 update "
    "rule applied for 16 stochastic steps over a 16x16 grid seeded with the surface "
    "accumulation rate, growing the layered density field; MSE, Adam, OneCycleLR, clipping "
    "at 1.0). Healthy control.",
)
def h585_firn_nca(ctx):
    gen = seeded(58512)
    model = _FirnNCA()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps)
    targets = _firn_targets(gen, 8)
    ugen = torch.Generator().manual_seed(585120)

    def batches():
        while True:
            field, rate = next(targets)
            seed = torch.zeros(field.shape[0], 8, 16, 16)
            seed[:, 1, 0, :] = rate[:, None]
            seed[:, 2] = torch.linspace(0, 1, 16)[None, :, None]
            yield seed, field

    def forward_loss(out, y):
        return F.mse_loss(out[:, 0], y)

    losses, norms = _nca_train(ctx, model, opt, batches(), steps, forward_loss, sched, ugen)
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses) and _finite(norms))


def _nca_train(ctx, model, opt, batches, steps, loss_fn, sched, ugen):
    ctx.attach(model, opt)
    losses, norms = [], []
    for _step in range(steps):
        s, y = next(batches)
        loss = loss_fn(model(s, gen=ugen), y)
        loss.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
    return losses, norms


# -- 13. control: bowline load-slip Huber regressor -----------------------------------------------


@scenario(
    family="bowline_load_slip_silu_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bowline load-slip regressor (SiLU MLP on rope diameter, fibre, tail length, "
    "cyclic-load amplitude, wetness and dressing score, predicting the slip per thousand "
    "cycles; Huber loss, Adadelta, ReduceLROnPlateau, clipping at 1.0, heavy-tailed noisy "
    "targets from a rig with occasional gauge jitter). Healthy control.",
)
def h585_bowline_huber(ctx):
    gen = seeded(58513)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    t = torch.distributions.StudentT(2.0)
    clean = _readings(gen, 64, 6, 585130, noise=0.0)

    def noisy():
        while True:
            x, y = next(clean)
            yield x, y + 0.1 * t.sample((64,))

    losses, _ = _train(ctx, model, opt, noisy(), 250, F.huber_loss, clip=1.0, plateau=plateau)
    ctx.check("loss fell", _fell(losses, ratio=0.8))
    ctx.check("finite", _finite(losses))
