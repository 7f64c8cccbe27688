"""Held-out set 563 (``h563_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: guilloche rose-engine cut-depth regressor resumed at step 120 without its Adam state
(loss_spike, Adam); khomus overtone classifier trained with nll_loss on raw logits, no
log_softmax (output_logit_divergence, RMSprop); copperplate burin-depth regressor fed plate
pressure in Pa instead of kPa under fp16 autocast (amp_overflow, AdamW); cryoseism magnitude
regressor whose lr used the batch size for the linear-scaling ratio (sharpness_above_limit, plain
SGD); ice-shove ridge deep ReLU regressor initialised with gain 2 for sqrt(2) (exploding_gradients,
SGD Nesterov); lagerphone jingle-decay regressor whose fc1 group lr was typed 1e-9
(update_ratio_out_of_range, Adagrad); ikat dye-bleed BCE classifier whose dye-lot reweighting
divides by an empty lot's floored share for one step (gradient_spike, SGD momentum); bandura
pitch-drift regressor with an unclamped log feature and a dropped-out tension sensor (nonfinite,
NAdam); cimbalom hammer-strike 1-D conv classifier fed one batch in raw int16 counts
(data_outlier, ASGD); repousse dent cosine classifier whose log logit scale was initialised with
the raw scale 16 (softmax_collapse, RAdam).
Controls: stained-glass lead-came joint Perceiver classifier (latent array cross-attending to the
inputs, AdamW, warm-up + cosine, clipping); ferrule crimp pull-out regressor pre-trained on
simulated crimps, switched at step 120 to the measured bench data (loss jumps, then falls,
alarming-looking, Adam, ReduceLROnPlateau); gurning face-type ReLU classifier on digits (SGD
momentum, OneCycleLR, label smoothing, accumulation 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import digit_batches, grad_norm, scenario, seeded


def _finite(xs):
    return bool(xs) and all(math.isfinite(v) for v in xs)


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
    clip=None,
    sched=None,
    plateau=None,
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
        if plateau is not None:
            plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05, offset=0.0, bend=1.2):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(bend * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + offset + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, noise=0.3):
    """Readings whose class is the argmax of a fixed random linear score (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, k, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        s = x @ w / math.sqrt(d_in) + noise * torch.randn(batch, k, generator=gen)
        yield x, s.argmax(1)


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


# -- 1. loss spike: resumed at step 120 without the Adam state ---------------------------------


@scenario(
    "guilloche_rose_engine_cut_depth_gelu_regressor",
    "Adam",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Guilloche rose-engine cut-depth GELU regressor (Adam lr 1e-2, MSE). The job is "
    "pre-empted and resumed at step 120 from a checkpoint that saved the model but not the "
    "optimizer: the Adam moments and step count restart from zero, so the first updates after "
    "the resume are full lr-sized sign steps on every weight. The loss jumps for a few steps "
    "and then recovers; no gradient burst, no bad data.",
)
def h563_guilloche_resume_loss_spike(ctx):
    gen = seeded(56301)
    model = _Net(12, hidden=256, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def before(step):
        if step == 120:  # resume: model weights restored, optimizer state not
            opt.state.clear()

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 12, 56311), 300, F.mse_loss, before=before
    )
    pre = _median(losses[100:120])
    ctx.check(
        "loss over 3x its pre-resume median within 10 steps of the resume",
        max(losses[120:130]) > 3 * pre,
    )
    ctx.check(
        "no gradient burst at the resume (grad under 3x its median)",
        norms[120] < 3 * _median(norms[100:120]),
    )
    ctx.check(
        "recovers: last 20 steps under 1.5x the pre-resume median",
        _finite(losses) and _mean(losses[-20:]) < 1.5 * pre,
    )


# -- 2. output logit divergence: nll_loss on raw logits ------------------------------------------


@scenario(
    "khomus_jaw_harp_overtone_raw_nll_classifier",
    "RMSprop",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Khomus jaw-harp overtone ReLU classifier (5 overtone classes, RMSprop lr 1e-2). The "
    "training loss is F.nll_loss(model(x), y) but the head returns raw logits: the "
    "log_softmax was dropped when the model was refactored. nll_loss is then -logit[target], "
    "unbounded below, so the head's logits grow without bound and the loss goes negative.",
)
def h563_khomus_raw_nll_logits(ctx):
    gen = seeded(56302)
    model = _Net(16, hidden=48, out=5)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    batches = _classes(gen, 64, 16, 5, 56312)
    probe, _ = next(_classes(torch.Generator().manual_seed(5), 256, 16, 5, 56312))
    with torch.no_grad():
        start = float(model(probe).abs().mean())
    losses, _ = _loop(ctx, model, opt, batches, 200, F.nll_loss, classifier=True)
    with torch.no_grad():
        end = float(model(probe).abs().mean())
    ctx.check("head's mean |logit| grew over 20x", end > 20 * start)
    ctx.check("loss is unbounded below: under -20 at the end", _mean(losses[-10:]) < -20)
    ctx.check("loss finite throughout", _finite(losses))


# -- 3. amp overflow: plate pressure in Pa under fp16 autocast ----------------------------------


@scenario(
    "copperplate_engraving_burin_depth_fp16_gelu_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=70,
    heldout=True,
    onset=70,
    note="Copperplate engraving burin-depth GELU regressor (AdamW, fp16 autocast + "
    "GradScaler). From step 70 a new press log gives the plate pressure column in Pa (about "
    "2e5) instead of the standardised kPa column: autocast runs fc1 in fp16, its output "
    "overflows past 65504 to inf and the loss turns non-finite; the same batch in float32 is "
    "finite.",
)
def h563_copperplate_pa_fp16_overflow(ctx):
    gen = seeded(56303)
    model = _Net(10, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 10, 56313)
    losses, scales, seen = [], [], {}
    for step in range(150):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, 3] = 2.0e5 + 5.0e3 * x[:, 3]  # Pa, not the standardised kPa reading
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        if step == 70:
            seen["fp16"] = bool(torch.isfinite(h).all())
            with torch.no_grad():
                seen["fp32"] = bool(torch.isfinite(model.fc1(x.float())).all())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        scales.append(float(scaler.get_scale()))
        ctx.scales.append(scales[-1])
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("finite and falling before step 70", _finite(losses[:70]) and losses[69] < losses[0])
    ctx.check("fc1's fp16 output non-finite at step 70", seen.get("fp16") is False)
    ctx.check("same batch finite in float32", seen.get("fp32") is True)
    ctx.check("loss non-finite at step 70", len(losses) == 71 and not math.isfinite(losses[70]))
    ctx.check("GradScaler backed off at step 70", scales[-1] < scales[-2])


# -- 4. sharpness above limit: linear lr scaling with the batch size, not the ratio -------------


@scenario(
    "cryoseism_frost_quake_magnitude_relu_regressor",
    "SGD",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Cryoseism frost-quake magnitude ReLU regressor (plain SGD, MSE). The config applies "
    "the linear scaling rule as lr = base_lr * batch_size (0.02 * 64 = 1.28) instead of "
    "base_lr * batch_size / 256: lr times the loss's top Hessian eigenvalue is past 2 from the "
    "start and the loss blows up. The intended lr (0.005) is inside the limit.",
)
def h563_cryoseism_lr_batch_scaling(ctx):
    gen = seeded(56304)
    model = _Net(8, hidden=64)
    base_lr, batch = 0.02, 64
    lr = base_lr * batch  # should be base_lr * batch / 256
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, batch, 8, 56314, offset=0.5)
    x0, y0 = next(_readings(torch.Generator().manual_seed(9), 256, 8, 56314, offset=0.5))
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _loop(ctx, model, opt, batches, 100, F.mse_loss)
    ctx.check("lr x top Hessian eigenvalue past 2 at step 0", lr * eig > 2)
    ctx.check("intended lr inside the limit", base_lr * batch / 256 * eig < 2)
    ctx.check(
        "loss blows up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


# -- 5. exploding gradients: deep ReLU net initialised with gain 2 for sqrt(2) ------------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        self.acts = []

    def forward(self, x):
        self.acts = []
        for lin in self.layers:
            x = F.relu(lin(x))
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    "ice_shove_ridge_height_deep_relu_regressor",
    "SGD (Nesterov)",
    "exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Ice-shove ridge-height deep ReLU regressor (12 hidden layers, SGD Nesterov momentum "
    "0.9, lr 1e-3). The init helper writes std = gain / sqrt(fan_in) with gain 2 where He init "
    "needs sqrt(2): each layer doubles the signal's variance, so the backward gradient grows "
    "about 1.4x per layer towards the input (layers.0 gets the largest) and the run blows up.",
)
def h563_ice_shove_gain_typo(ctx):
    gen = seeded(56305)
    model = _Deep(10, 48, 12, gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    batches = _readings(gen, 64, 10, 56315)
    x0, y0 = next(_readings(torch.Generator().manual_seed(3), 128, 10, 56315))
    F.mse_loss(model(x0), y0).backward()
    ratio = float(model.acts[0].grad.norm() / model.acts[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("gradient at layers.0's output over 20x the last hidden layer's", ratio > 20)
    ctx.check(
        "loss blows up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


# -- 6. update ratio out of range: fc1 group lr typed 1e-9 --------------------------------------


@scenario(
    "lagerphone_jingle_decay_two_group_silu_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Lagerphone jingle-decay SiLU regressor (Adagrad, two param groups, MSE). The "
    "feature layer's group lr was meant as 1e-1 but typed 1e-9: fc1 never moves (its update "
    "ratio is about 1e-9) while fc2 and the head train on random features.",
)
def h563_lagerphone_group_lr_typo(ctx):
    gen = seeded(56306)
    model = _Net(12, hidden=48, act=nn.SiLU)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adagrad(
        [{"params": model.fc1.parameters(), "lr": 1e-9}, {"params": rest, "lr": 1e-1}]
    )
    w1, w2 = _flat(model.fc1), _flat(model.fc2)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 12, 56316), 150, F.mse_loss)
    d1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    d2 = float((_flat(model.fc2) - w2).norm() / w2.norm())
    ctx.check("fc1 relative change under 1e-6", d1 < 1e-6)
    ctx.check("fc2 relative change over 1e-2", d2 > 1e-2)
    ctx.check("loss finite, no blow-up", _finite(losses) and max(losses) < 10 * losses[0])


# -- 7. gradient spike: dye-lot reweighting divides by an empty lot's floored share -------------


@scenario(
    "ikat_resist_dye_bleed_gelu_bce_classifier",
    "SGD (momentum)",
    "gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=130,
    note="Ikat resist-dye bleed GELU BCE classifier (SGD momentum 0.9, lr 0.05, clipping 1.0). "
    "Each step's loss is reweighted by 1 / (the batch's dye-lot share), floored at 1e-3; at step "
    "130 the lot table is rolled over and the share reads 0, so the backpropagated loss is 1000x "
    "for one step. The logged loss is ordinary; the gradient spikes once and clipping holds it.",
)
def h563_ikat_lot_weight_spike(ctx):
    gen = seeded(56307)
    model = _Net(14, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    raw = _classes(gen, 64, 14, 2, 56317)
    batches = ((x, y.float()) for x, y in raw)

    def backprop(step, loss):
        share = 0.0 if step == 130 else 1.0
        return loss / max(share, 1e-3)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    before = _median(norms[110:130])
    ctx.check("gradient at step 130 over 100x its median before", norms[130] > 100 * before)
    ctx.check(
        "logged loss at step 130 ordinary (under 2x its median before)",
        losses[130] < 2 * _median(losses[110:130]),
    )
    ctx.check("trained and finite", _fell(losses))


# -- 8. nonfinite: unclamped log of a tension reading that dropped out --------------------------


class _LogFeature(nn.Module):
    def forward(self, x):
        return torch.log(x)  # no clamp: the sensor is assumed strictly positive


class _BanduraNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.logfeat(x)))).squeeze(-1)


@scenario(
    "bandura_string_pitch_drift_log_feature_regressor",
    "NAdam",
    "nonfinite",
    where=("logfeat",),
    diverges=80,
    heldout=True,
    onset=80,
    note="Bandura string pitch-drift regressor on log tension readings (NAdam, Huber). The "
    "log feature has no clamp; at step 80 the logger drops out for one sample and writes 0 for "
    "every string's tension, log(0) = -inf inside logfeat and fc1 sums mixed-sign infinities "
    "to NaN: the loss is NaN at step 80.",
)
def h563_bandura_log_zero(ctx):
    gen = seeded(56308)
    model = _BanduraNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    base = _readings(gen, 64, 8, 56318)
    batches = ((torch.exp(0.5 * x) * 40.0, y) for x, y in base)  # tensions in newtons
    seen = {}

    def alter(step, x, y):
        if step == 80:
            x = x.clone()
            x[5] = 0.0  # logger dropout: the whole sample row reads 0
            with torch.no_grad():
                seen["inf"] = bool(torch.isinf(model.logfeat(x)).any())
        return x, y

    losses, _ = _loop(ctx, model, opt, batches, 160, F.huber_loss, alter=alter)
    ctx.check("finite for the first 80 steps", _finite(losses[:80]))
    ctx.check("logfeat output has -inf at step 80", seen.get("inf") is True)
    ctx.check("loss NaN at step 80", len(losses) == 81 and math.isnan(losses[80]))


# -- 9. data outlier: one batch of strikes in raw int16 counts ----------------------------------


def _strikes(gen, batch, length=32):
    """Hammer strikes: decaying tones, class = (pitch band, decay) combination, 4 classes."""
    t = torch.arange(length) / length
    freqs = torch.tensor([3.0, 3.0, 7.0, 7.0])
    decays = torch.tensor([1.0, 5.0, 1.0, 5.0])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        f = freqs[y][:, None] * (1 + 0.1 * torch.randn(batch, 1, generator=gen))
        d = decays[y][:, None]
        x = torch.sin(2 * math.pi * f * t) * torch.exp(-d * t)
        x = x + 0.3 * torch.randn(batch, length, generator=gen)
        yield x[:, None, :], y


class _StrikeConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(F.max_pool1d(x, 2)))
        return self.head(x.mean(-1))


@scenario(
    "cimbalom_hammer_strike_conv1d_classifier",
    "ASGD",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=140,
    note="Cimbalom hammer-strike 1-D conv classifier (ASGD lr 0.3, cross-entropy, clipping "
    "1.0). At step 140 one batch comes from a recorder whose export skipped the int16 to float "
    "conversion: the waveforms are in raw counts (x32767). The loss and gradient spike on that "
    "batch; clipping bounds the update and the run recovers.",
)
def h563_cimbalom_int16_batch(ctx):
    gen = seeded(56309)
    model = _StrikeConv()
    opt = torch.optim.ASGD(model.parameters(), lr=0.3)

    def alter(step, x, y):
        return (x * 32767.0, y) if step == 140 else (x, y)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _strikes(gen, 64),
        260,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    pre = _median(losses[120:140])
    ctx.check("loss at step 140 over 20x its median before", losses[140] > 20 * pre)
    ctx.check(
        "gradient at step 140 over 10x its median before", norms[140] > 10 * _median(norms[120:140])
    )
    ctx.check(
        "recovers: last 20 steps under 2x the pre-outlier median",
        _finite(losses) and _mean(losses[-20:]) < 2 * pre,
    )
    ctx.check("trained before the outlier", pre < 0.7 * _mean(losses[:10]))


# -- 10. softmax collapse: log logit scale initialised with the raw scale -----------------------


class _CosineHead(nn.Module):
    def __init__(self, dim, classes, log_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.register_buffer("log_scale", torch.tensor(log_scale))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return torch.exp(self.log_scale) * cos


class _DentNet(nn.Module):
    def __init__(self, d_in, classes, log_scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 32)
        self.head = _CosineHead(32, classes, log_scale)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    "repousse_chasing_dent_cosine_classifier",
    "RAdam",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Repousse chasing dent-type cosine classifier (RAdam, cross-entropy). The head keeps "
    "its fixed logit scale as a log buffer and multiplies the cosines by exp(log_scale); the init passes the "
    "scale itself, 16.0, instead of log(16): the logits are cosines times 8.9e6, the float32 "
    "softmax rounds to exact 0/1, every row's softmax is exactly one-hot and the"
    "rows it gets right have target probability exactly 1.0.",
)
def h563_repousse_log_scale_init(ctx):
    gen = seeded(56310)
    model = _DentNet(20, 6, log_scale=16.0)  # meant math.log(16.0)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 20, 6, 56320, noise=0.1)
    probe = next(_classes(torch.Generator().manual_seed(7), 512, 20, 6, 56320, noise=0.1))
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        p = torch.softmax(model(probe[0]), -1)
    exact = float((p.gather(1, probe[1][:, None]) == 1.0).float().mean())
    onehot = float((p.max(1).values == 1.0).float().mean())
    ctx.check("over 10% of rows' target probability exactly 1.0", exact > 0.1)
    ctx.check("over 90% of rows' softmax exactly one-hot", onehot > 0.9)
    ctx.check("loss finite", _finite(losses))


# -- 11. control: Perceiver-style lead-came joint classifier ------------------------------------


class _Perceiver(nn.Module):
    """A small latent array cross-attends to the input tokens, then self-attends, then pools."""

    def __init__(self, d_tok, dim=32, latents=8, classes=4):
        super().__init__()
        self.embed = nn.Linear(d_tok, dim)
        self.latents = nn.Parameter(torch.randn(latents, dim) * 0.1)
        self.cross_ln = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.self_ln = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        kv = self.embed(x)
        lat = self.latents.expand(x.shape[0], -1, -1)
        q = self.cross_ln(lat)
        lat = lat + self.cross(q, kv, kv, need_weights=False)[0]
        h = self.self_ln(lat)
        lat = lat + self.self_attn(h, h, h, need_weights=False)[0]
        lat = lat + self.mlp(lat)
        return self.head(lat.mean(1))


def _joints(gen, batch, tokens, d_tok, k, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_tok, k, generator=g)
    while True:
        x = torch.randn(batch, tokens, d_tok, generator=gen)
        s = x.mean(1) @ w + 0.1 * torch.randn(batch, k, generator=gen)
        yield x, s.argmax(1)


@scenario(
    "stained_glass_lead_came_joint_perceiver_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="Stained-glass lead-came joint classifier, Perceiver-style: 8 learnt latents "
    "cross-attend to 16 solder-joint tokens, one latent self-attention block, mean-pooled head "
    "(AdamW, linear warm-up 15 steps + cosine decay, clipping 1.0). Healthy control.",
)
def h563_lead_came_perceiver_control(ctx):
    gen = seeded(56321)
    model = _Perceiver(6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 160

    def lam(s):
        return (s + 1) / 15 if s < 15 else 0.5 * (1 + math.cos(math.pi * (s - 15) / (steps - 15)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _joints(gen, 32, 16, 6, 4, 56331),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained: loss fell under 0.6x its start", _fell(losses, ratio=0.6))


# -- 12. control (alarming): simulated crimps, then the measured bench data from step 120 -------


@scenario(
    "ferrule_crimp_pull_out_force_silu_regressor",
    "Adam",
    "healthy",
    heldout=True,
    note="Ferrule crimp pull-out-force SiLU regressor (Adam lr 3e-3, ReduceLROnPlateau, MSE). "
    "Pre-trained for 120 steps on crimps from a simulator, then switched to the measured "
    "bench pulls, which follow a different, noisier curve with an offset: the loss jumps up "
    "at step 120 and then falls again. Alarming-looking, healthy control.",
)
def h563_ferrule_sim_to_real_control(ctx):
    gen = seeded(56322)
    model = _Net(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)
    sim = _readings(gen, 64, 10, 56332, noise=0.02)
    real = _readings(gen, 64, 10, 56342, noise=0.1, offset=0.8, bend=2.0)
    state = {"step": 0}

    def stream():
        while True:
            yield next(sim) if state["step"] < 120 else next(real)

    def before(step):
        state["step"] = step

    losses, _ = _loop(ctx, model, opt, stream(), 260, F.mse_loss, before=before, plateau=plateau)
    jump = _mean(losses[120:125])
    ctx.check("loss jumps over 2x at the switch", jump > 2 * _mean(losses[110:120]))
    ctx.check("then falls under 0.5x the jump", _mean(losses[-10:]) < 0.5 * jump)
    ctx.check("trained on the simulator first", _fell(losses[:120]))
    ctx.check("finite throughout", _finite(losses))


# -- 13. control: gurning face-type classifier on digits ----------------------------------------


@scenario(
    "gurning_contest_face_type_relu_classifier",
    "SGD (momentum)",
    "healthy",
    heldout=True,
    note="Gurning-contest face-type ReLU classifier on the 8x8 digits (SGD momentum 0.9, "
    "OneCycleLR to 0.1, label smoothing 0.1, gradient accumulation over 2 micro-batches, "
    "clipping 1.0). Healthy control.",
)
def h563_gurning_onecycle_control(ctx):
    gen = seeded(56323)
    model = _Net(64, hidden=64, out=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 32)
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1) / 2
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained: loss fell under 0.5x its start", _fell(losses, ratio=0.5))
