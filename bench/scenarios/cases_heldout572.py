"""Held-out set 572 (``h572_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: thatch ridge reed-bundle regressor fed bundle weight in grams under fp16 autocast
(amp_overflow, AdamW); mangle-roller press-pressure tanh regressor with SGD lr typed 3.0 for 0.03
(sharpness_above_limit, plain SGD); poi-spin trail ReLU Elman RNN whose orthogonal recurrent
init uses gain 1.6 (exploding_gradients, SGD momentum); cricket-chirp cadence tied GRU language
model over generated chirp sequences whose GRU group lr is typed 1e-9 (update_ratio_out_of_range,
Adam, param groups); sumo-ring push-out classifier fed one shard of raw load-cell newtons
(data_outlier, NAdam); skittles pin-topple BCE classifier whose accumulation divisor is applied
as a multiplier for one resumed step (gradient_spike, SGD Nesterov); jokulhlaup flood-peak
regressor taking the sqrt of lake stage minus sill height on a reading below the sill
(nonfinite, RMSprop); lampwork glass-bead colour classifier whose temperature in milli-units is
divided by 1000 twice (softmax_collapse, Adamax); fell-running terrain classifier whose z-loss
is added with its sign flipped (output_logit_divergence, RAdam); sea-smoke fog-depth regressor
whose target thermometer's calibration drifts (loss_divergence, Adagrad).
Controls: hedge-laying pleacher-cut residual regressor with stochastic depth rising linearly to
0.3 (alarming-looking, AdamW, warm-up); charcoal-clamp burn-stage classifier (SGD momentum,
OneCycleLR, label smoothing, clipping); sundog halo-brightness Gaussian-NLL MLP (Adam, fp16
autocast + GradScaler, ReduceLROnPlateau, noisy batches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.4, noise=1.0):
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


# -- 1. amp overflow: reed-bundle weight in grams under fp16 autocast -----------------------------

_THATCH_ONSET = 90


@scenario(
    family="thatch_ridge_reed_bundle_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=_THATCH_ONSET,
    onset=_THATCH_ONSET,
    heldout=True,
    note="Thatch ridge reed-bundle regressor (GELU MLP on bundle weight, reed length, butt "
    "diameter, moisture, roof pitch and wind exposure, predicting ridge life; MSE, AdamW, fp16 "
    "autocast + GradScaler). From step 90 a new weighing scale logs the bundle weight in grams "
    "(about 1.8e5) instead of the standardised column: autocast runs fc1 in fp16, whose range "
    "ends at 65504, fc1's output is non-finite (the same batch is finite in float32) and the "
    "loss is non-finite at step 90.",
)
def h572_thatch_bundle_grams_fp16(ctx):
    gen = seeded(5721)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 57210)
    losses, fc1_bad, bad_x = [], [], None
    for step in range(140):
        x, y = next(batches)
        if step >= _THATCH_ONSET:
            x = x.clone()
            x[:, 0] = 1.8e5 + 2.0e4 * x[:, 0]
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
    ctx.check("inputs beyond fp16's range", bad_x is not None and float(bad_x.abs().max()) > 65504)
    ctx.check(f"loss first non-finite at step {_THATCH_ONSET}", first_bad == _THATCH_ONSET)
    ctx.check(
        "fc1's fp16 output non-finite at onset",
        len(fc1_bad) > _THATCH_ONSET and fc1_bad[_THATCH_ONSET],
    )
    ctx.check("fc1 finite before onset", not any(fc1_bad[:_THATCH_ONSET]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before onset", _mean(losses[80:90]) < 0.7 * _mean(losses[:10]))


# -- 2. sharpness above limit: SGD lr typed 3.0 for 0.03 -----------------------------------------


@scenario(
    family="mangle_roller_press_pressure_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Mangle-roller press-pressure regressor (tanh MLP on roller gap, spring preload, cloth "
    "thickness, dampness, crank speed, roller wear, predicting press pressure; MSE, plain SGD). "
    "The lr is typed 3.0 for 0.03: lr x top Hessian eigenvalue (power iteration, measured in "
    "the run) is past 2 from the first step and the loss blows up.",
)
def h572_mangle_lr_typo(ctx):
    gen = seeded(5722)
    model = _Net(6, hidden=32, act=nn.Tanh)
    lr = 3.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 128, 6, 57220)
    probe = next(batches)
    eig0 = _top_eig(model, F.mse_loss, *probe)
    losses, _ = _train(ctx, model, opt, batches, 120, F.mse_loss)
    ok = [v for v in losses if math.isfinite(v)]
    ctx.check("lr x sharpness past 2 at step 0", lr * eig0 > 2.0)
    ctx.check("loss blows up (over 100x its start)", not _finite(losses) or max(ok) > 100 * ok[0])
    # the intended lr trains: the same init and data at 0.03
    gen = seeded(5722)
    twin = _Net(6, hidden=32, act=nn.Tanh)
    topt = torch.optim.SGD(twin.parameters(), lr=0.03)
    tb = _readings(gen, 128, 6, 57220)
    next(tb)
    tl = []
    for _ in range(120):
        x, y = next(tb)
        loss = F.mse_loss(twin(x), y)
        loss.backward()
        topt.step()
        topt.zero_grad()
        tl.append(float(loss.detach()))
    ctx.check("the intended lr 0.03 trains", _fell(tl, ratio=0.8) and 0.03 * eig0 < 2.0)


# -- 3. exploding gradients: He init with its gain applied twice ---------------------------------


class _PoiDeep(nn.Module):
    """A 10-layer ReLU MLP over poi-spin motion summaries, regresses the spin rate."""

    def __init__(self, d_in=8, width=32, depth=10, gain=1.7):
        super().__init__()
        layers = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            with torch.no_grad():
                # He init, std sqrt(2 / fan_in), with the extra "relu gain" multiplied in again
                lin.weight.normal_(0.0, gain * math.sqrt(2.0 / lin.in_features))
                lin.bias.zero_()
            layers += [lin, nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(-1)


@scenario(
    family="poi_spin_rate_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("body.0", "body"),
    diverges="auto",
    heldout=True,
    note="Poi-spin rate regressor (10-layer ReLU MLP on eight accelerometer summaries of a "
    "spinning poi, MSE, SGD momentum). The He init multiplies its sqrt(2/fan_in) std by a "
    "further gain of 1.7 (the relu gain applied twice): each layer amplifies the signal, the "
    "backward signal at the first layer's output is over 30x that at the last layer's at init, and the run blows up.",
)
def h572_poi_he_gain_twice(ctx):
    gen = seeded(5723)
    model = _PoiDeep()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    batches = _readings(gen, 64, 8, 57230)
    x, y = next(batches)
    acts = []

    def keep(m, i, o):
        o.retain_grad()
        acts.append(o)

    hooks = [model.body[i].register_forward_hook(keep) for i in (0, 18)]
    F.mse_loss(model(x), y).backward()
    for h in hooks:
        h.remove()
    first = float(acts[0].grad.norm())
    last = float(acts[1].grad.norm())
    model.zero_grad(set_to_none=True)
    losses, norms = _train(ctx, model, opt, batches, 120, F.mse_loss)
    ok = [v for v in losses if math.isfinite(v)]
    ctx.check("backward signal at body.0 over 30x that at the last layer", first > 30 * last)
    ctx.check("loss blows up (non-finite)", not _finite(losses) and len(ok) > 1)


# -- 4. update ratio: tied GRU language model, GRU group lr typed 1e-9 ---------------------------


class _ChirpGRU(nn.Module):
    def __init__(self, vocab=24, dim=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, x):
        out, _ = self.gru(self.emb(x))
        return self.head(out)


def _chirps(gen, batch=32, length=24, vocab=24):
    """Generated chirp-pulse sequences: a species motif of pulse codes, repeated with jitter."""
    while True:
        start = torch.randint(0, vocab, (batch, 1), generator=gen)
        step = torch.randint(1, 4, (batch, 1), generator=gen)
        seq = (start + step * torch.arange(length + 1)) % vocab
        flip = torch.rand(batch, length + 1, generator=gen) < 0.05
        seq = torch.where(flip, torch.randint(0, vocab, seq.shape, generator=gen), seq)
        yield seq[:, :-1], seq[:, 1:]


def _lm(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    family="cricket_chirp_cadence_tied_gru_lm",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("gru",),
    diverges=None,
    heldout=True,
    note="Cricket-chirp cadence language model (GRU over generated chirp-pulse code sequences, "
    "embedding tied to the output head, next-token cross-entropy, Adam with two param groups). "
    "The GRU group's lr is typed 1e-9 for 1e-2: the recurrent layer's updates are about 1e-9 "
    "of its weights, it never moves, and only the tied embedding learns (the loss falls a "
    "little and stalls well above what the same model reaches with the intended lr).",
)
def h572_chirp_gru_group_typo(ctx):
    def build(gru_lr):
        gen = seeded(5724)
        model = _ChirpGRU()
        opt = torch.optim.Adam(
            [
                {"params": model.emb.parameters(), "lr": 1e-2},
                {"params": model.gru.parameters(), "lr": gru_lr},
            ]
        )
        return gen, model, opt

    gen, model, opt = build(1e-9)
    gru0, emb0 = _flat(model.gru), _flat(model.emb)
    losses, _ = _train(ctx, model, opt, _chirps(gen), 150, _lm)
    moved = float((_flat(model.gru) - gru0).norm() / gru0.norm())
    emb_moved = float((_flat(model.emb) - emb0).norm() / emb0.norm())
    gen, twin, topt = build(1e-2)
    tb = _chirps(gen)
    tl = []
    for _ in range(150):
        x, y = next(tb)
        loss = _lm(twin(x), y)
        loss.backward()
        topt.step()
        topt.zero_grad()
        tl.append(float(loss.detach()))
    ctx.check("gru moved under 1e-6 of its weights", moved < 1e-6)
    ctx.check("tied embedding moved over 5%", emb_moved > 0.05)
    ctx.check("finite", _finite(losses))
    ctx.check(
        "stalls over 2x above the intended lr's loss", _mean(losses[-10:]) > 2 * _mean(tl[-10:])
    )


# -- 5. data outlier: one shard of raw load-cell newtons -----------------------------------------

_SUMO_ONSET = 110


@scenario(
    family="sumo_dohyo_push_out_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=_SUMO_ONSET,
    heldout=True,
    note="Sumo dohyo push-out classifier (GELU MLP on ten standardised load-cell and footwork "
    "features of a bout, four outcome classes, cross-entropy, NAdam, clipping at 1.0). At step "
    "110 one shard from a rig whose export skipped standardisation arrives in raw newtons "
    "(about 400x the usual scale): that batch's loss is over 20x the median and its gradient "
    "over 10x; clipping keeps the update bounded and the run recovers.",
)
def h572_sumo_raw_newton_shard(ctx):
    gen = seeded(5725)
    model = _Net(10, hidden=48, out=4, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x * 400.0 + 900.0, y) if step == _SUMO_ONSET else (x, y)

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 10, 4, 57250),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    before = losses[_SUMO_ONSET - 20 : _SUMO_ONSET]
    ctx.check("loss at onset over 20x the median", losses[_SUMO_ONSET] > 20 * _median(before))
    ctx.check(
        "gradient at onset over 10x the median",
        norms[_SUMO_ONSET] > 10 * _median(norms[_SUMO_ONSET - 20 : _SUMO_ONSET]),
    )
    ctx.check("recovers", _finite(losses) and _mean(losses[-10:]) < 2 * _mean(before))
    ctx.check("trained", _mean(before) < 0.7 * _mean(losses[:10]))


# -- 6. gradient spike: accumulation divisor applied as a multiplier on a resumed step -----------

_SKITTLES_ONSET = 130


@scenario(
    family="skittles_alley_pin_topple_accum_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=_SKITTLES_ONSET,
    heldout=True,
    note="Skittles-alley pin-topple classifier (ReLU MLP on cheese-throw speed, spin, entry "
    "angle and pin spacing, BCE with logits over nine pins, SGD Nesterov, gradient "
    "accumulation over 4 micro-batches, clipping at 2.0). On the first step after a resume "
    "(step 130) the restored loop multiplies each micro-batch loss by the accumulation count "
    "squared (16, 64x what it should be) instead of dividing it by 4: the gradient spikes over 50x "
    "its median while the logged loss is ordinary; clipping bounds the step and the run goes on.",
)
def h572_skittles_accum_resume_bug(ctx):
    gen = seeded(5726)
    model = _Net(6, hidden=48, out=9)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(57260)
    w = torch.randn(6, 9, generator=g)
    ctx.attach(model, opt)
    losses, norms, accum = [], [], 4
    for step in range(200):
        total = 0.0
        for _ in range(accum):
            x = torch.randn(32, 6, generator=gen)
            y = (x @ w + 0.3 * torch.randn(32, 9, generator=gen) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            factor = accum * accum if step == _SKITTLES_ONSET else 1.0 / accum
            (loss * factor).backward()
            total += float(loss.detach()) / accum
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    med = _median(norms[_SKITTLES_ONSET - 20 : _SKITTLES_ONSET])
    ctx.check("gradient at onset over 50x the median", norms[_SKITTLES_ONSET] > 50 * med)
    ctx.check(
        "logged loss at onset ordinary",
        losses[_SKITTLES_ONSET] < 1.5 * _median(losses[_SKITTLES_ONSET - 20 : _SKITTLES_ONSET]),
    )
    ctx.check("trained and finite", _fell(losses))


# -- 7. nonfinite: sqrt of lake stage minus sill height ------------------------------------------

_JOKUL_ONSET = 85


class _FloodNet(nn.Module):
    """Hydraulic-head feature sqrt(stage - sill) joined to the other readings, SiLU MLP."""

    def __init__(self):
        super().__init__()
        self.head_feature = _SqrtHead()
        self.fc1 = nn.Linear(6, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        h = self.head_feature(x[:, :1])
        z = torch.cat([h, x[:, 1:]], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


class _SqrtHead(nn.Module):
    def forward(self, stage):
        return torch.sqrt(stage - 1.0)  # sill height 1.0 (no clamp)


@scenario(
    family="jokulhlaup_flood_peak_sqrt_head_silu_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("head_feature",),
    diverges=_JOKUL_ONSET,
    onset=_JOKUL_ONSET,
    heldout=True,
    note="Jokulhlaup flood-peak regressor (SiLU MLP on the hydraulic head sqrt(lake stage - "
    "sill height) and five glacier readings, Huber loss, RMSprop). The head feature has no "
    "clamp; at step 85 the lake-stage gauge reads below the sill after a drawdown, sqrt of a "
    "negative gives NaN in head_feature and the loss is NaN at step 85.",
)
def h572_jokulhlaup_sqrt_below_sill(ctx):
    gen = seeded(5727)
    model = _FloodNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    base = _readings(gen, 64, 6, 57270)
    nan_out = []
    model.head_feature.register_forward_hook(
        lambda m, i, o: nan_out.append(bool(torch.isnan(o).any()))
    )

    def stream():
        step = 0
        while True:
            x, y = next(base)
            x = x.clone()
            x[:, 0] = 1.5 + 0.2 * x[:, 0].abs()
            if step == _JOKUL_ONSET:
                x[:5, 0] = 0.8
            step += 1
            yield x, y

    losses, _ = _train(ctx, model, opt, stream(), 150, F.huber_loss)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check(f"loss first NaN at step {_JOKUL_ONSET}", first_bad == _JOKUL_ONSET)
    ctx.check(
        "head_feature NaN at onset, not before",
        len(nan_out) > _JOKUL_ONSET and nan_out[_JOKUL_ONSET] and not any(nan_out[:_JOKUL_ONSET]),
    )
    ctx.check("trained before onset", _mean(losses[75:85]) < 0.7 * _mean(losses[:10]))


# -- 8. softmax collapse: temperature in milli-units divided by 1000 twice ------------------------


class _BeadNet(_Net):
    def __init__(self):
        super().__init__(8, hidden=48, out=6)
        self.temperature_milli = 1000.0  # T = 1.0, stored in milli-units

    def forward(self, x):
        t = self.temperature_milli / 1000.0 / 1000.0  # converted twice: 1e-3
        return self.head(self.features(x)) / t


@scenario(
    family="lampwork_glass_bead_colour_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Lampwork glass-bead colour classifier (ReLU MLP on eight spectrometer bands of a "
    "cooled bead, six colour classes, cross-entropy, Adamax). The softmax temperature is "
    "stored in milli-units and divided by 1000 twice, so the head's logits are multiplied by "
    "1000: float32 softmax rounds the target probability to exactly 1.0 on over 40% of rows.",
)
def h572_bead_temperature_twice(ctx):
    gen = seeded(5728)
    model = _BeadNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 8, 6, 57280)
    frac = []

    def after(step, loss):
        with torch.no_grad():
            x, y = last[0]
            p = torch.softmax(model(x), -1)
            frac.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))

    last = [None]

    def alter(step, x, y):
        last[0] = (x, y)
        return x, y

    losses, _ = _train(
        ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, alter=alter, after=after
    )
    ctx.check("over 40% of rows' target probability exactly 1.0", max(frac[-20:]) > 0.4)
    ctx.check("finite", _finite(losses))


# -- 9. output logit divergence: z-loss added with its sign flipped -------------------------------


@scenario(
    family="fell_running_terrain_zloss_sign_gelu_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Fell-running terrain classifier (GELU MLP on cadence, vertical oscillation, ground "
    "contact time, gradient and foot-strike features, five terrain classes, cross-entropy, "
    "RAdam). The auxiliary z-loss (1e-2 x logsumexp^2, meant to keep logits small) is added "
    "with its sign flipped: the head's logits grow without bound, over 20x their size at "
    "step 20.",
)
def h572_fell_zloss_sign(ctx):
    gen = seeded(5729)
    model = _Net(8, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    batches = _classes(gen, 64, 8, 5, 57290)
    probe = next(batches)[0]
    scale = []

    def backprop(step, loss):
        z = torch.logsumexp(model(last[0]), -1)
        return loss - 1e-2 * (z**2).mean()

    last = [None]

    def alter(step, x, y):
        last[0] = x
        return x, y

    def after(step, loss):
        with torch.no_grad():
            scale.append(float(model(probe).abs().mean()))

    losses, _ = _train(
        ctx,
        model,
        opt,
        batches,
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        backprop=backprop,
        after=after,
    )
    ctx.check("logits over 20x their step-20 size", scale[-1] > 20 * scale[20])
    ctx.check("still growing at the end", scale[-1] > 1.2 * scale[-40])


# -- 10. loss divergence: hand-written decoupled weight decay with its sign flipped ---------------

_SEA_ONSET = 60


@scenario(
    family="sea_smoke_fog_depth_decay_sign_tanh_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    onset=_SEA_ONSET,
    heldout=True,
    note="Sea-smoke fog-depth regressor (tanh MLP on sea-air temperature gap, wind, humidity, "
    "fetch, pressure and hour, MSE, Adagrad). From step 60 (when a hand-written decoupled "
    "weight decay is switched on after warm-up) each weight matrix is multiplied by 1 + 0.01 "
    "instead of 1 - 0.01: the weights grow, Adagrad's shrinking steps cannot pull them back and "
    "the loss climbs slowly to over 3x its best, with no jump.",
)
def h572_sea_smoke_decay_sign(ctx):
    gen = seeded(5730)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    w0 = float(_flat(model).norm())

    def before(step):
        if step >= _SEA_ONSET:
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() > 1:
                        p.mul_(1.0 + 0.01)

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 57300), 240, F.mse_loss, before=before
    )
    best = min(losses[:80])
    win = [_mean(losses[i : i + 10]) for i in range(0, len(losses), 10)]
    jumps = max(abs(a - b) for a, b in zip(win[1:], win[:-1], strict=False))
    ctx.check("weights over 2x their initial norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("no 10-step mean jumps by a third of the final loss", jumps < _mean(losses[-10:]) / 3)
    ctx.check("trained first", best < 0.5 * _mean(losses[:5]))


# -- control 1 (alarming-looking): stochastic depth rising linearly to 0.3 ------------------------


class _PleachNet(nn.Module):
    """Residual SiLU MLP whose blocks are skipped with probability ``drop`` in training."""

    def __init__(self, d_in=8, width=48, depth=6):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU())
            for _ in range(depth)
        )
        self.head = nn.Linear(width, 1)
        self.drop = 0.0
        self.dropped = 0

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            if self.training and torch.rand(()) < self.drop:
                self.dropped += 1
                continue
            scale = 1.0 / (1.0 - self.drop) if self.training else 1.0
            h = h + scale * block(h)
        return self.head(h).squeeze(-1)


@scenario(
    family="hedge_laying_pleacher_cut_stochastic_depth_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hedge-laying pleacher-cut regressor (six-block residual SiLU MLP with LayerNorm on "
    "stem diameter, species, cut angle, lay angle, sap season, stake spacing, predicting "
    "regrowth; Huber, AdamW with 20-step linear warm-up). Stochastic depth: each block is "
    "skipped with a probability that rises linearly from 0 to 0.3 over the run, so the loss "
    "gets noisier and its floor rises late in the run. Healthy: it trains and stays finite.",
)
def h572_hedge_stochastic_depth(ctx):
    gen = seeded(5731)
    model = _PleachNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    steps = 240

    def before(step):
        model.drop = 0.3 * step / (steps - 1)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 57310, noise=0.1),
        steps,
        F.huber_loss,
        before=before,
        sched=sched,
    )
    ctx.check("trained (loss fell)", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
    ctx.check("drop rate reached 0.3", abs(model.drop - 0.3) < 1e-6 and model.dropped > 0)


# -- control 2: OneCycleLR, label smoothing, clipping ---------------------------------------------


@scenario(
    family="charcoal_clamp_burn_stage_onecycle_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Charcoal-clamp burn-stage classifier (ReLU MLP on smoke colour, vent temperatures, "
    "turf moisture and burn hours, five stages, cross-entropy with label smoothing 0.1, SGD "
    "momentum 0.9, OneCycleLR to 0.1, clipping at 1.0). Healthy control.",
)
def h572_charcoal_onecycle(ctx):
    gen = seeded(5732)
    model = _Net(10, hidden=48, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 10, 5, 57320),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained (loss fell)", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))


# -- control 3: Gaussian NLL under fp16 autocast, ReduceLROnPlateau --------------------------------


class _HaloNet(_Net):
    def __init__(self):
        super().__init__(6, hidden=48, out=2, act=nn.GELU)

    def forward(self, x):
        out = self.head(self.features(x))
        return out[:, 0], F.softplus(out[:, 1]) + 1e-3


@scenario(
    family="sundog_parhelion_brightness_fp16_gaussian_nll_mlp",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sundog parhelion-brightness regressor (GELU MLP predicting mean and variance of "
    "brightness from sun elevation, ice-crystal habit, cloud depth, humidity, wind, hour; "
    "Gaussian NLL on noisy observations, Adam, fp16 autocast + GradScaler, ReduceLROnPlateau). "
    "Healthy control.",
)
def h572_sundog_gaussian_nll_fp16(ctx):
    gen = seeded(5733)
    model = _HaloNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 6, 57330, noise=0.2)
    losses = []
    for _ in range(200):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            mu, var = model(x)
        loss = F.gaussian_nll_loss(mu.float(), y, var.float())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        sched.step(losses[-1])
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", _finite(losses))
    ctx.check("trained (loss fell by 0.5 nats)", _mean(losses[-10:]) < _mean(losses[:10]) - 0.5)
