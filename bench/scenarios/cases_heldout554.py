"""Held-out set 554 (``h554_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: salt-pan crystal-harvest regressor fed brine conductivity in microsiemens per metre under
fp16 autocast (amp_overflow, AdamW); longbow arrow-spine two-tower regressor with the shaft tower's
lr typed 2e-9 (update_ratio_out_of_range, Adamax); beehive brood-frame share regressor dividing by
a frame total that is zero for an empty frame (nonfinite, Adam); mangrove root sediment-trap
regressor fed one shard logged in centimetres (data_outlier, RMSprop); bobsleigh runner-frost BCE
classifier with a one-step stage-boundary loss weight (gradient_spike, SGD Nesterov); sand-dune
ripple migration IRNN with the recurrent identity init typed 1.35 (exploding_gradients, SGD
momentum); lacquer-layer cure cosine classifier with the scale typed 1e3 (softmax_collapse, NAdam);
sailmaker seam-stretch regressor with OneCycleLR max_lr typed 8.0 (sharpness_above_limit, plain
SGD); cooperage stave-bend regressor with fc2's bias filled with -3 (loss_of_plasticity, Adagrad);
hurdy-gurdy buzz-bridge classifier whose loss is nll_loss on the raw logits (no log_softmax)
(output_logit_divergence, Adam).
Controls: ceramic glaze-spectrum VAE with the KL weight annealed from 0 to 1 (the total loss
rises while the reconstruction improves, alarming-looking, Adam); fog-harp droplet GELU classifier
(AdamW, OneCycleLR, clipping, label smoothing); tidal-mill wheel-torque Huber regressor (RAdam,
ReduceLROnPlateau, accumulation 2, clipping, noisy targets).
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
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


def _top_hessian_eig(model, loss_fn, x, y, iters=12):
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


# -- 1. amp overflow: brine conductivity in microsiemens per metre under fp16 autocast ----------


@scenario(
    family="salt_pan_crystal_harvest_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=85,
    onset=85,
    heldout=True,
    note="Salt-pan crystal-harvest yield regressor (SiLU MLP on brine conductivity, depth, wind, "
    "sun hours, humidity, rake count; MSE; AdamW; fp16 autocast + GradScaler). From step 85 the "
    "new brine probe's export gives conductivity in microsiemens per metre (about 5e6) and the "
    "column is not standardised: autocast runs fc1 in fp16, whose range ends at 65504, fc1's "
    "output is non-finite (the same batch is finite in float32) and the loss is non-finite.",
)
def h554_salt_pan_conductivity_in_microsiemens(ctx):
    gen = seeded(5541)
    model = _Net(6, 48, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 55410)
    losses, fc1_bad, fc1_dtypes, bad_x = [], [], [], None
    for step in range(130):
        x, y = next(batches)
        if step >= 85:
            x = x.clone()
            x[:, 0] = 5.0e6 + 4.0e5 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_bad.append(seen["fc1"][1])
        fc1_dtypes.append(seen["fc1"][0])
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
        fp32_ok = bad_x is not None and bool(torch.isfinite(model.fc1(bad_x)).all())
    ctx.check("fc1 ran in fp16", all(d == torch.float16 for d in fc1_dtypes))
    ctx.check("inputs beyond fp16's range", bad_x is not None and float(bad_x.abs().max()) > 65504)
    ctx.check("loss first non-finite at step 85", first_bad == 85)
    ctx.check("fc1's fp16 output non-finite at step 85", len(fc1_bad) > 85 and fc1_bad[85])
    ctx.check("fc1 finite before step 85", not any(fc1_bad[:85]))
    ctx.check("same batch finite through fc1 in float32", fp32_ok)
    ctx.check("loss fell before the unit change", _fell(losses[:85]))


# -- 2. update ratio: the shaft tower's lr typed 2e-9 --------------------------------------------


class _SpineNet(nn.Module):
    """Two towers (arrow shaft, fletching) and a joint head predicting the dynamic spine."""

    def __init__(self):
        super().__init__()
        self.shaft = nn.Sequential(nn.Linear(5, 32), nn.GELU(), nn.Linear(32, 16))
        self.fletch = nn.Sequential(nn.Linear(3, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        z = torch.cat([self.shaft(x[:, :5]), self.fletch(x[:, 5:])], -1)
        return self.head(F.gelu(z)).squeeze(-1)


@scenario(
    family="longbow_arrow_spine_two_tower_adamax_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("shaft",),
    heldout=True,
    note="Longbow arrow dynamic-spine regressor (shaft tower on length, diameter, wood density, "
    "grain run-out, taper; fletching tower on vane length, height, offset; MSE; Adamax with "
    "param groups). The config gives the shaft tower lr 2e-9 (typed for 2e-3): the shaft tower's "
    "updates are about 1e-9 of its weights, it never moves, the run trains on the fletching "
    "tower and the head only and settles above what the full model reaches; nothing blows up.",
)
def h554_longbow_shaft_group_lr_typo(ctx):
    gen = seeded(5542)
    model = _SpineNet()
    opt = torch.optim.Adamax(
        [
            {"params": model.shaft.parameters(), "lr": 2e-9},
            {"params": model.fletch.parameters(), "lr": 2e-3},
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    shaft0, fletch0 = _flat(model.shaft), _flat(model.fletch)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 55420), 160, F.mse_loss)
    shaft_rel = float((_flat(model.shaft) - shaft0).norm() / shaft0.norm())
    fletch_rel = float((_flat(model.fletch) - fletch0).norm() / fletch0.norm())
    ctx.check("shaft tower moved under 1e-6 of its weights", shaft_rel < 1e-6)
    ctx.check("fletching tower moved over 1e-2 of its weights", fletch_rel > 1e-2)
    ctx.check("loss finite, no blow-up", _finite(losses) and max(losses) < 10 * losses[0])


# -- 3. nonfinite: 0/0 when a brood frame is empty -------------------------------------------------


class _Share(nn.Module):
    """Turns per-cell counts (eggs, larvae, capped, pollen, honey, empty) into shares of the frame."""

    def forward(self, counts):
        return counts / counts.sum(-1, keepdim=True)


class _BroodNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.share = _Share()
        self.fc1 = nn.Linear(6, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(self.share(x)))))).squeeze(-1)


def _brood_frames(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        counts = torch.rand(batch, 6, generator=gen) * 400
        share = counts / counts.sum(-1, keepdim=True)
        yield counts, torch.tanh(4 * (share - 1 / 6) @ w) + 0.03 * torch.randn(batch, generator=gen)


@scenario(
    family="beehive_brood_frame_share_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("share",),
    diverges=95,
    onset=95,
    heldout=True,
    note="Beehive colony-strength regressor from brood-frame cell counts (a share module divides "
    "each count by the frame total, ReLU MLP, MSE, Adam). At step 95 the batch holds a foundation "
    "frame with no drawn cells: all counts are 0, the share module computes 0/0 with no guard, "
    "its output is NaN and the loss is NaN at step 95.",
)
def h554_beehive_empty_frame_zero_over_zero(ctx):
    gen = seeded(5543)
    model = _BroodNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    seen = {}
    model.share.register_forward_hook(
        lambda m, i, o: seen.__setitem__(len(seen), bool(torch.isnan(o).any()))
    )

    def alter(step, x, y):
        if step == 95:
            x = x.clone()
            x[7] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, _brood_frames(gen, 64, 55430), 140, F.mse_loss, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first NaN at step 95", first_bad == 95 and math.isnan(losses[95]))
    ctx.check("share output NaN at step 95", seen.get(95, False))
    ctx.check("share output finite before", not any(seen[i] for i in range(95)))
    ctx.check("loss fell before", _fell(losses[:95]))


# -- 4. data outlier: one shard in centimetres -----------------------------------------------------


@scenario(
    family="mangrove_root_sediment_trap_rmsprop_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    onset=110,
    heldout=True,
    note="Mangrove prop-root sediment-accretion regressor (ReLU MLP on root density, tidal range, "
    "salinity, distance to channel, turbidity, season; MSE; RMSprop; clipping at 1). The batch "
    "at step 110 comes from a shard whose accretion was logged in centimetres instead of metres "
    "(targets x100): the loss and the gradient jump at that step, the clip bounds the update and "
    "the run recovers; the shard is dropped from then on.",
)
def h554_mangrove_shard_in_centimetres(ctx):
    gen = seeded(5544)
    model = _Net(6, 48)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        return (x, 100.0 * y) if step == 110 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 55440), 170, F.mse_loss, alter=alter, clip=1.0
    )
    before = _median(losses[90:110])
    ctx.check("loss over 100x the median at step 110", losses[110] > 100 * before)
    ctx.check("gradient over 20x the median at step 110", norms[110] > 20 * _median(norms[90:110]))
    ctx.check("recovered within 40 steps", _mean(losses[150:170]) < 2 * before)
    ctx.check("finite throughout", _finite(losses))


# -- 5. gradient spike: stage-boundary loss weight for one step -----------------------------------


@scenario(
    family="bobsleigh_runner_frost_stage_weight_bce_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    onset=120,
    heldout=True,
    note="Bobsleigh runner-frost classifier (GELU MLP on runner temperature, ice temperature, dew "
    "point, polish age, track section, speed; BCE with logits; SGD Nesterov; clipping at 2). A "
    "curriculum reweights the loss by 1/(1 - stage_progress) and the clamp on the progress is "
    "missing: at the stage boundary (step 120) the progress is 0.998 and the backpropagated "
    "loss is x500 for that one step; the logged loss is ordinary, the clip bounds the update.",
)
def h554_bobsleigh_stage_weight_unclamped(ctx):
    gen = seeded(5545)
    model = _Net(6, 48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    base = _readings(gen, 64, 6, 55450, noise=0.0)

    def batches():
        for x, y in base:
            yield x, (y > 0.1).float()

    def backprop(step, loss):
        progress = 0.998 if step == 120 else (step % 120) / 400
        return loss / (1 - progress)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        batches(),
        180,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=2.0,
    )
    ctx.check(
        "gradient over 100x the median at step 120", norms[120] > 100 * _median(norms[100:120])
    )
    ctx.check("logged loss ordinary at step 120", losses[120] < 3 * _median(losses[100:120]))
    ctx.check("finite and trained", _fell(losses))


# -- 6. exploding gradients: IRNN recurrent identity typed 1.35 -----------------------------------


class _RippleIRNN(nn.Module):
    """A ReLU RNN cell unrolled by hand over the readings (the states kept for inspection)."""

    def __init__(self, hidden=32):
        super().__init__()
        self.cell = nn.RNNCell(3, hidden, nonlinearity="relu")
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.cell.weight_hh.copy_(1.35 * torch.eye(hidden))
            self.cell.bias_hh.zero_()
            self.cell.bias_ih.fill_(0.05)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.head.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _ripple_series(gen, batch, length=24):
    while True:
        wind = torch.rand(batch, 1, generator=gen)
        x = torch.stack(
            [
                wind + 0.1 * torch.randn(batch, length, generator=gen),
                torch.rand(batch, length, generator=gen),
                0.3 * torch.randn(batch, length, generator=gen),
            ],
            -1,
        )
        yield x, 2 * wind.squeeze(-1) + 0.5 * x[:, :, 1].mean(1)


@scenario(
    family="sand_dune_ripple_migration_irnn_regressor",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("cell",),
    heldout=True,
    diverges=None,
    note="Sand-dune ripple migration regressor (ReLU RNN over 24 half-hourly readings of wind "
    "speed, grain-size index and wind direction, MSE on the ripple crest displacement, SGD "
    "momentum, clipping at 1). The IRNN init copies 1.35 x identity into the recurrent weights "
    "(meant 1.0): the hidden state and its gradient grow by about 1.35 per step through time, "
    "the gradient at the first time step is orders of magnitude above the last one's and the "
    "clip holds every step; the loss stays high but finite.",
)
def h554_dune_ripple_irnn_gain_typo(ctx):
    gen = seeded(5546)
    model = _RippleIRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios, clipped = [], []
    ctx.attach(model, opt)
    batches = _ripple_series(gen, 32)
    losses = []
    for _step in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first, last = model.states[0].grad.norm(), model.states[-1].grad.norm()
        ratios.append(float(first / last.clamp_min(1e-30)))
        ctx.grad_norms.append(grad_norm(model))
        clipped.append(ctx.grad_norms[-1] > 1.0)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("first-step state gradient over 100x the last step's", _median(ratios) > 100)
    ctx.check("gradient norm over the clip most steps", _mean(clipped) > 0.8)
    ctx.check("loss finite", _finite(losses))


# -- 7. softmax collapse: cosine classifier scale typed 1e3 -----------------------------------------


class _CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, z):
        return self.scale * F.normalize(z, dim=-1) @ F.normalize(self.weight, dim=-1).T


class _CureNet(nn.Module):
    def __init__(self, d_in, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = _CosineHead(32, classes, scale)

    def forward(self, x):
        return self.head(self.fc2(F.gelu(self.fc1(x))))


@scenario(
    family="lacquer_layer_cure_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    onset=0,
    heldout=True,
    note="Urushi lacquer-layer cure-stage classifier (GELU MLP on humidity, temperature, layer "
    "count, film thickness, gloss, hours in the muro; cosine head; cross-entropy; NAdam). The "
    "cosine scale is typed 1e3 (meant 10): the logits span +-1000, float32 softmax gives many "
    "rows' target probability exactly 1.0 and the others exactly 0, the loss is 0 or huge.",
)
def h554_lacquer_cosine_scale_typo(ctx):
    gen = seeded(5547)
    model = _CureNet(6, 5, 1e3)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    fracs, spans = [], []

    def after(step, loss):
        with torch.no_grad():
            x, y = probe
            logits = model(x)
            fracs.append(collapsed_fraction(logits, y))
            spans.append(float(logits.max() - logits.min()))

    batches = _grades(gen, 64, 6, 5, 55470, spread=1.0)
    probe = next(_grades(torch.Generator().manual_seed(1), 256, 6, 5, 55470))
    losses, _ = _loop(ctx, model, opt, batches, 120, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows' target probability exactly 1.0", _mean(fracs[-20:]) > 0.4)
    ctx.check("logit span over 500", _median(spans) > 500)
    ctx.check("loss finite", _finite(losses))


# -- 8. sharpness: OneCycleLR max_lr typed 8.0 ----------------------------------------------------


@scenario(
    family="sailmaker_seam_stretch_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Sailmaker seam-stretch regressor (tanh MLP on cloth weight, stitch count, thread "
    "gauge, seam overlap, bias angle, load; MSE; plain SGD with OneCycleLR). max_lr is typed 8.0 "
    "(meant 0.8): during the warm-up the learning rate times the top Hessian eigenvalue passes "
    "2, the loss oscillates and blows up.",
)
def h554_sailmaker_onecycle_max_lr_typo(ctx):
    gen = seeded(5548)
    model = _Net(6, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=8.0, total_steps=200, pct_start=0.4)
    batches = _readings(gen, 128, 6, 55480, noise=0.02)
    probe = next(_readings(torch.Generator().manual_seed(2), 256, 6, 55480, noise=0.02))
    products = []

    def before(step):
        if step % 5 == 0:
            lr = opt.param_groups[0]["lr"]
            products.append(lr * _top_hessian_eig(model, F.mse_loss, *probe))

    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    finite = [v for v in losses if math.isfinite(v)]
    ctx.check("lr x top eigenvalue passed 2", any(p > 2 for p in products if math.isfinite(p)))
    ctx.check("lr x top eigenvalue under 2 at first", products[0] < 2)
    ctx.check(
        "loss blew up over 100x its best",
        not _finite(losses) or max(finite) > 100 * min(finite[:60]),
    )


# -- 9. loss of plasticity: fc2 bias filled with -3 -----------------------------------------------


@scenario(
    family="cooperage_stave_bend_dead_relu_regressor",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    heldout=True,
    note="Cooperage stave-bend regressor (ReLU MLP on stave width, thickness, steam minutes, "
    "oak moisture, grain angle, truss force; MSE; Adagrad). An init helper meant for a gate "
    "fills fc2's bias with -3.0: nearly all of fc2's ReLU units are never positive, their "
    "weights get exactly zero gradient and stay dead, and the run settles far above a normal fit.",
)
def h554_cooperage_fc2_bias_filled_negative(ctx):
    gen = seeded(5549)
    model = _Net(6, 48)
    with torch.no_grad():
        model.fc2.bias.fill_(-3.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    probe = next(_readings(torch.Generator().manual_seed(3), 512, 6, 55490))
    seen = {}
    model.act2.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o.detach()))

    def dead():
        with torch.no_grad():
            model(probe[0])
        return float((seen["h"] <= 0).all(0).float().mean())

    dead0 = dead()
    w0 = model.fc2.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 55490), 150, F.mse_loss)
    dead1 = dead()
    with torch.no_grad():
        model(probe[0])
    dead_units = (seen["h"] <= 0).all(0)
    unchanged = bool((model.fc2.weight[dead_units] == w0[dead_units]).all())
    ctx.check("over 80% of fc2's units dead at the start", dead0 > 0.8)
    ctx.check("over 80% still dead at the end", dead1 > 0.8)
    ctx.check("dead units' weights never moved", unchanged and bool(dead_units.any()))
    ctx.check("loss finite", _finite(losses))


# -- 10. output logit divergence: nll_loss on raw logits -----------------------------------------


@scenario(
    family="hurdy_gurdy_buzz_bridge_logit_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    heldout=True,
    note="Hurdy-gurdy buzz-bridge (trompette) classifier: buzz off, light or full, from wheel "
    "speed, crank jerk, string tension, dog angle, bridge height and rosin age (ReLU MLP, Adam "
    "lr 3e-3). The loss is F.nll_loss on the head's raw logits (the log_softmax was left out "
    "when the head was swapped): the loss is minus the target logit, unbounded below, and the "
    "head's logits grow without bound (over 20x, still growing at the end); nothing is NaN.",
)
def h554_hurdy_gurdy_nll_on_raw_logits(ctx):
    gen = seeded(55410)
    model = _Net(6, 48, out=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    probe = next(_grades(torch.Generator().manual_seed(4), 256, 6, 3, 554100, spread=0.8))
    sizes = []

    def after(step, loss):
        with torch.no_grad():
            sizes.append(float(model(probe[0]).abs().max()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 6, 3, 554100, spread=0.8),
        200,
        F.nll_loss,
        classifier=True,
        after=after,
    )
    ctx.check("head logits grew over 20x", sizes[-1] > 20 * sizes[0])
    ctx.check("still growing in the last quarter", sizes[-1] > 1.2 * sizes[150])
    ctx.check(
        "loss below 0 (impossible for a true NLL), finite", _finite(losses) and losses[-1] < 0
    )


# -- 11. control: VAE with KL annealing ------------------------------------------------------------


class _GlazeVAE(nn.Module):
    def __init__(self, bins=32, latent=4):
        super().__init__()
        self.enc = nn.Linear(bins, 64)
        self.mu = nn.Linear(64, latent)
        self.logvar = nn.Linear(64, latent)
        self.dec1 = nn.Linear(latent, 64)
        self.dec2 = nn.Linear(64, bins)

    def forward(self, x):
        h = F.silu(self.enc(x))
        mu, logvar = self.mu(h), self.logvar(h).clamp(-8, 8)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.dec2(F.silu(self.dec1(z))), mu, logvar


def _glaze_spectra(gen, batch, bins=32):
    grid = torch.linspace(0, 1, bins)
    while True:
        c = torch.rand(batch, 2, 1, generator=gen)
        a = 0.5 + torch.rand(batch, 2, 1, generator=gen)
        peaks = (a * torch.exp(-((grid - c) ** 2) / 0.01)).sum(1)
        yield peaks + 0.02 * torch.randn(batch, bins, generator=gen)


@scenario(
    family="ceramic_glaze_spectrum_kl_annealed_vae",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Ceramic glaze reflectance-spectrum VAE (SiLU encoder to a 4-d Gaussian bottleneck, "
    "decoder, summed MSE reconstruction plus beta x KL, Adam). The KL weight beta is annealed "
    "linearly from 0 to 1 over the first 150 steps, the standard practice against posterior "
    "collapse: the logged total loss rises after its early low while the reconstruction keeps "
    "improving. Healthy, alarming-looking.",
)
def h554_glaze_vae_kl_annealed(ctx):
    gen = seeded(55411)
    model = _GlazeVAE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _glaze_spectra(gen, 64)
    totals, recons = [], []
    for step in range(220):
        x = next(batches)
        beta = min(step / 150, 1.0)
        out, mu, logvar = model(x)
        recon = ((out - x) ** 2).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
        loss = recon + beta * kl
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        totals.append(float(loss.detach()))
        recons.append(float(recon.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    low = min(range(len(totals)), key=lambda i: totals[i])
    ctx.check("total loss rose over 20% after its low", _mean(totals[-20:]) > 1.2 * totals[low])
    ctx.check("reconstruction improved", _mean(recons[-20:]) < 0.5 * _mean(recons[:10]))
    ctx.check("finite", _finite(totals))


# -- 12. control: AdamW, OneCycleLR, clipping, label smoothing -------------------------------------


@scenario(
    family="fog_harp_droplet_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Fog-harp droplet-yield class classifier (GELU MLP on wind speed, fog liquid-water "
    "content, wire gauge, wire spacing, temperature, hour; cross-entropy with label smoothing "
    "0.1; AdamW weight decay 0.05; OneCycleLR; clipping at 1; noisy overlapping classes). "
    "Healthy control.",
)
def h554_fog_harp_onecycle_control(ctx):
    gen = seeded(55412)
    model = _Net(6, 64, out=4, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=160)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 6, 4, 554120, spread=1.2),
        160,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(losses))


# -- 13. control: RAdam, ReduceLROnPlateau, accumulation 2, Huber ---------------------------------


@scenario(
    family="tidal_mill_wheel_torque_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Tidal-mill wheel-torque regressor (SiLU MLP on head difference, sluice opening, wheel "
    "speed, paddle wear, tide phase, millstone load; Huber loss; RAdam; ReduceLROnPlateau; "
    "gradient accumulation 2; clipping at 1; noisy targets). Healthy control.",
)
def h554_tidal_mill_accumulation_control(ctx):
    gen = seeded(55413)
    model = _Net(6, 48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=25)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 6, 554130, noise=0.2)
    losses = []
    for _step in range(200):
        parts = []
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            parts.append(float(loss.detach()))
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(_mean(parts))
        losses.append(_mean(parts))
        ctx.step(torch.tensor(losses[-1]))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, ratio=0.8))
