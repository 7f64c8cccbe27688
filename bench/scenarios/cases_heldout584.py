"""Held-out set 584 (``h584_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: sliotar backspin regressor fed the spin rate in raw millidegrees per second under fp16
autocast (amp_overflow, AdamW); bagpipe chanter-reed classifier fed one shard of raw microphone
counts (data_outlier, NAdam, label smoothing); farrier shoe-fit regressor with its SGD lr typed
5.0 for 0.05 (sharpness_above_limit, plain SGD); stalactite drip-rate 14-deep ReLU MLP whose
kaiming std is multiplied by the relu gain a second time (exploding_gradients, SGD momentum);
cooperage stave-bend regressor whose fc1 group lr is typed 3e-9 (update_ratio_out_of_range,
Adamax, param groups); curling-stone hit BCE classifier whose resumed step multiplies the
micro-batch loss by a stale scale of 64 instead of dividing by 4 (gradient_spike, SGD Nesterov,
accumulation); geyser eruption-interval Gaussian NLL net taking the sqrt of a reservoir head
that goes negative (nonfinite, RAdam); harp pedal-setting classifier whose temperature is read
from a milliseconds key (softmax_collapse, Adagrad); thatching reed-bundle regressor whose
targets are converted in place every step (loss_divergence, Adam); rowing stroke-power
regressor resumed with its RMSprop state dropped (loss_spike, RMSprop).
Controls: fencing parry classifier whose clipping threshold is lowered from 1.0 to 0.05 at step
100 (alarming-looking, SGD momentum); morse-key fist language model, a Hugging Face GPT-NeoX
from a tiny config with tied embeddings (AdamW, warm-up + cosine, clipping); sumo
tachiai-force Huber regressor (ASGD, ReduceLROnPlateau, clipping, heavy-tailed noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded, text_batches


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
            torch.nn.utils.clip_grad_norm_(
                model.parameters(), clip(step) if callable(clip) else clip
            )
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
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


# -- 1. amp overflow: spin rate in raw millidegrees per second under fp16 autocast ---------------

AMP_ONSET = 70


@scenario(
    family="sliotar_hurl_backspin_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=AMP_ONSET,
    onset=AMP_ONSET,
    heldout=True,
    note="Sliotar backspin regressor (GELU MLP on hurley swing speed, strike angle, spin rate, "
    "ball moisture, wind and grass length, predicting the carry distance; MSE, AdamW, fp16 "
    "autocast + GradScaler). From step 70 a new tracking export writes the spin rate in raw "
    "millidegrees per second (about 1e6) instead of the standardised column: autocast runs fc1 "
    "in fp16, whose range ends at 65504, fc1's output is non-finite (the same batch is finite "
    "in float32) and the loss is non-finite at step 70.",
)
def h584_sliotar_spin_millidegrees(ctx):
    gen = seeded(5841)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 58410)
    losses, fc1_bad, fc1_dtypes, f32_finite = [], [], [], None
    for step in range(160):
        x, y = next(batches)
        if step >= AMP_ONSET:
            x = x.clone()
            x[:, 2] = 1.0e6 + 2.0e5 * x[:, 2].abs()
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_dtypes.append(seen["fc1"][0])
        fc1_bad.append(seen["fc1"][1])
        loss = F.mse_loss(out.float(), y)
        if step == AMP_ONSET:
            with torch.no_grad():
                f32_finite = bool(torch.isfinite(model.fc1(x)).all())
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
    ctx.check("fc1 ran in fp16 under autocast", fc1_dtypes[0] == torch.float16)
    ctx.check("fc1 output finite before the onset", not any(fc1_bad[:AMP_ONSET]))
    ctx.check("loss fell before the onset", _fell(losses[:AMP_ONSET]))
    ctx.check("fc1's fp16 output is non-finite at the onset", fc1_bad[AMP_ONSET])
    ctx.check("the same batch is finite through fc1 in float32", f32_finite is True)
    ctx.check("loss non-finite at the onset", not math.isfinite(losses[AMP_ONSET]))
    ctx.check("run stopped at the onset", len(losses) == AMP_ONSET + 1)


# -- 2. data outlier: one shard of raw microphone counts ------------------------------------------

OUTLIER_STEP = 120


@scenario(
    family="bagpipe_chanter_reed_strength_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Bagpipe chanter-reed strength classifier (GELU MLP on 12 standardised acoustic "
    "features of a played reed, 5 strength grades; cross-entropy with label smoothing 0.05, "
    "NAdam, clipping at 1.0). At step 120 one shard comes from a bench whose recorder skipped "
    "the normalisation and wrote raw microphone counts (features about 400x larger): the loss "
    "jumps over 20x and the gradient over 10x for that batch; clipping limits the update and "
    "the run recovers.",
)
def h584_bagpipe_reed_raw_counts(ctx):
    gen = seeded(5842)
    model = _Net(12, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 12, 5, 58420)

    def alter(step, x, y):
        return (x * 400.0 + 50.0, y) if step == OUTLIER_STEP else (x, y)

    losses, norms = _train(
        ctx,
        model,
        opt,
        batches,
        220,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05),
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    before = losses[OUTLIER_STEP - 30 : OUTLIER_STEP]
    ctx.check("loss fell before the shard", _fell(losses[:OUTLIER_STEP]))
    ctx.check("loss over 20x at the shard", losses[OUTLIER_STEP] > 20 * _median(before))
    ctx.check(
        "gradient over 10x at the shard",
        norms[OUTLIER_STEP] > 10 * _median(norms[OUTLIER_STEP - 30 : OUTLIER_STEP]),
    )
    ctx.check("run recovers", _finite(losses) and _mean(losses[-10:]) < 2 * _mean(before))


# -- 3. sharpness above limit: SGD lr typed 5.0 for 0.05 ------------------------------------------


@scenario(
    family="farrier_horseshoe_fit_gap_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Farrier horseshoe-fit regressor (tanh MLP on hoof width, toe length, heel angle, "
    "shoe size, nail count and hot-fit time, predicting the fit gap; MSE, plain SGD). The lr "
    "was typed 5.0 for 0.05: lr x the top Hessian eigenvalue is past 2 from the first step, "
    "the loss grows every step and is non-finite within 10 steps.",
)
def h584_farrier_lr_typo(ctx):
    gen = seeded(5843)
    model = _Net(6, hidden=32, act=nn.Tanh)
    lr = 5.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 6, 58430)
    x0, y0 = next(batches)
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _train(ctx, model, opt, batches, 150, F.mse_loss)
    ctx.check("lr x top Hessian eigenvalue past 2 at step 0", lr * eig > 2.0)
    ctx.check("the intended lr 0.05 was under the limit", 0.05 * eig < 2.0)
    ctx.check(
        "loss blows up (non-finite or over 100x the first)",
        (not _finite(losses)) or max(losses) > 100 * losses[0],
    )


# -- 4. exploding gradients: kaiming std multiplied by a copy-pasted gain ------------------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, out):
        super().__init__()
        mods = []
        for i in range(depth):
            mods += [nn.Linear(d_in if i == 0 else width, width), nn.ReLU()]
        self.layers = nn.Sequential(*mods)
        self.head = nn.Linear(width, out)

    def forward(self, x):
        return self.head(self.layers(x)).squeeze(-1)


@scenario(
    family="stalactite_drip_rate_deep_relu_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Stalactite drip-rate 14-deep ReLU MLP (cave humidity, temperature, CO2, rainfall "
    "lag, rock thickness and tip diameter, predicting drips per minute; MSE, SGD momentum "
    "0.9). The init helper multiplies the kaiming std sqrt(2/fan_in) by calculate_gain('relu') "
    "a second time (std 2/sqrt(fan_in)), so each layer amplifies the backward signal about "
    "sqrt(2)x: layers.0's bias gradient is over 20x the last hidden layer's at step 0.",
)
def h584_stalactite_double_gain(ctx):
    gen = seeded(5844)
    model = _Deep(6, 48, 14, 1)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            std = math.sqrt(2.0 / m.in_features) * nn.init.calculate_gain("relu")
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _readings(gen, 64, 6, 58440)
    x0, y0 = next(batches)
    F.mse_loss(model(x0), y0).backward()
    first = float(model.layers[0].bias.grad.norm())
    last = float(model.layers[26].bias.grad.norm())
    model.zero_grad(set_to_none=True)
    losses, norms = _train(ctx, model, opt, batches, 100, F.mse_loss)
    ctx.check("layers.0 bias gradient over 20x the last hidden layer's", first > 20 * last)
    ctx.check(
        "loss blows up (non-finite or over 100x the first)",
        (not _finite(losses)) or max(losses) > 100 * losses[0],
    )


# -- 5. update ratio out of range: fc1 group lr typed 3e-9 -----------------------------------------


@scenario(
    family="cooperage_stave_bend_silu_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Cooperage stave-bend regressor (SiLU MLP on oak density, stave thickness, steam "
    "time, fire temperature, hoop count and moisture, predicting the bend radius; Huber loss, "
    "Adamax, param groups so the input layer gets its own lr). The fc1 group's lr was typed "
    "3e-9 for 3e-3: fc1's updates are about 1e-9 of its weights, it never moves, while fc2 "
    "and the head train normally.",
)
def h584_cooperage_fc1_lr_typo(ctx):
    gen = seeded(5845)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 3e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=3e-3,
    )
    batches = _readings(gen, 64, 6, 58450)
    w1, w2 = _flat(model.fc1), _flat(model.fc2)
    losses, _ = _train(ctx, model, opt, batches, 200, F.huber_loss)
    d1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    d2 = float((_flat(model.fc2) - w2).norm() / w2.norm())
    ctx.check("fc1 moved less than 1e-5 of its norm", d1 < 1e-5)
    ctx.check("fc2 moved over 1e-2 of its norm", d2 > 1e-2)
    ctx.check("loss finite", _finite(losses))


# -- 6. gradient spike: stale loss scale on one resumed accumulation step -------------------------

SPIKE_STEP = 130


class _Curling(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="curling_stone_takeout_gelu_bce_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Curling-stone takeout classifier (GELU MLP on release speed, rotation, sweeping "
    "effort, ice temperature, pebble age, line offset, stone weight and handle angle; BCE "
    "with logits, SGD Nesterov, 4 micro-batches accumulated per step, clipping at 5). The "
    "step that resumes after a checkpoint at 130 multiplies each micro-batch loss by a stale "
    "fp16 loss scale of 64 instead of dividing by 4: the gradient is over 30x its usual size "
    "for that one step while the logged loss is ordinary.",
)
def h584_curling_stale_scale(ctx):
    gen = seeded(5846)
    model = _Curling()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(58460)
    w = torch.randn(8, generator=g)
    losses, norms = [], []
    for step in range(200):
        total = 0.0
        for _ in range(4):
            x = torch.randn(32, 8, generator=gen)
            y = ((x @ w + 0.5 * torch.randn(32, generator=gen)) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            factor = 64.0 if step == SPIKE_STEP else 0.25
            (loss * factor).backward()
            total += float(loss.detach()) / 4
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        logged = torch.tensor(total)
        losses.append(total)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    before = norms[SPIKE_STEP - 30 : SPIKE_STEP]
    ctx.check("loss fell", _fell(losses[:SPIKE_STEP]))
    ctx.check("gradient over 30x at the resumed step", norms[SPIKE_STEP] > 30 * _median(before))
    ctx.check(
        "logged loss ordinary at the resumed step",
        losses[SPIKE_STEP] < 2 * _median(losses[SPIKE_STEP - 30 : SPIKE_STEP]),
    )
    ctx.check("run finite", _finite(losses))


# -- 7. nonfinite: sqrt of a reservoir head that goes negative ------------------------------------

NAN_STEP = 90


class _HeadRoot(nn.Module):
    """Turns the reservoir head (m above the vent) into a flow-speed feature, sqrt(2 g h)."""

    def forward(self, x):
        return torch.cat([torch.sqrt(2 * 9.81 * x[:, :1]), x[:, 1:]], 1)


class _Geyser(nn.Module):
    def __init__(self):
        super().__init__()
        self.sqrt_feat = _HeadRoot()
        self.fc1 = nn.Linear(5, 48)
        self.fc2 = nn.Linear(48, 48)
        self.mean = nn.Linear(48, 1)
        self.log_var = nn.Linear(48, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(self.sqrt_feat(x)))))
        return torch.cat([self.mean(h), self.log_var(h)], 1)


def _gauss_nll(out, y):
    mu, lv = out[:, 0], out[:, 1]
    return (0.5 * (lv + (y - mu) ** 2 / lv.exp())).mean()


@scenario(
    family="geyser_eruption_interval_sqrt_head_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("sqrt_feat",),
    diverges=NAN_STEP,
    onset=NAN_STEP,
    heldout=True,
    note="Geyser eruption-interval net (SiLU MLP with a Gaussian NLL head, mean and log-"
    "variance, on the reservoir head above the vent, conduit temperature, seismic tremor, "
    "barometric pressure and last interval; RAdam). sqrt_feat turns the head h into a flow "
    "speed sqrt(2 g h) with no clamp at 0; at step 90 a batch holds readings taken while the "
    "reservoir was drained below the vent (negative h): sqrt of a negative is NaN and the "
    "loss is NaN at step 90.",
)
def h584_geyser_sqrt_negative_head(ctx):
    gen = seeded(5847)
    model = _Geyser()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(58470)
    w = torch.randn(4, generator=g)
    nan_at = {}
    model.sqrt_feat.register_forward_hook(
        lambda m, i, o: nan_at.__setitem__("bad", bool(torch.isnan(o).any()))
    )

    def batches():
        while True:
            h = 0.5 + 2.5 * torch.rand(64, 1, generator=gen)
            rest = torch.randn(64, 4, generator=gen)
            y = 0.8 * h.squeeze(1).sqrt() + 0.3 * torch.tanh(rest @ w)
            yield torch.cat([h, rest], 1), y + 0.1 * torch.randn(64, generator=gen)

    flags = []

    def alter(step, x, y):
        if step == NAN_STEP:
            x = x.clone()
            x[:8, 0] = -0.3 - torch.rand(8, generator=gen)
        return x, y

    def backprop(step, loss):
        flags.append(nan_at["bad"])
        return loss

    losses, _ = _train(ctx, model, opt, batches(), 200, _gauss_nll, alter=alter, backprop=backprop)
    ctx.check("loss fell before the drained batch", _fell(losses[:NAN_STEP], ratio=0.9))
    ctx.check("sqrt_feat finite before", not any(flags[:NAN_STEP]))
    ctx.check("sqrt_feat produced NaN at the drained batch", flags[NAN_STEP])
    ctx.check("loss NaN at step 90", math.isnan(losses[NAN_STEP]))
    ctx.check("run stopped at step 90", len(losses) == NAN_STEP + 1)


# -- 8. softmax collapse: temperature read from a milliseconds key --------------------------------


class _Harp(_Net):
    def __init__(self, temperature):
        super().__init__(10, hidden=64, out=7)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="harp_pedal_position_relu_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Concert-harp pedal-position classifier (ReLU MLP on 10 standardised string-pitch "
    "features, 7 pedal settings; cross-entropy on logits divided by a temperature, Adagrad). "
    "The config gives the temperature as temperature_ms=1 and the loader reads it as seconds "
    "(1e-3): logits are 1000x, the softmax saturates and over 40% of rows' target probability "
    "rounds to exactly 1.0 in float32.",
)
def h584_harp_temperature_ms(ctx):
    gen = seeded(5848)
    config = {"temperature_ms": 1.0}
    model = _Harp(config["temperature_ms"] / 1000.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    batches = _classes(gen, 64, 10, 7, 58480, spread=2.0)
    fractions = []
    inner = F.cross_entropy

    def loss_fn(out, y):
        fractions.append(collapsed_fraction(out.detach(), y))
        return inner(out, y)

    losses, _ = _train(ctx, model, opt, batches, 150, loss_fn, classifier=True)
    ctx.check("over 40% of rows collapsed by the end", _mean(fractions[-10:]) > 0.4)
    ctx.check("fewer collapsed at the start", fractions[0] < _mean(fractions[-10:]))


# -- 9. loss divergence: targets converted in place every step ------------------------------------


@scenario(
    family="thatching_reed_bundle_weight_tanh_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    onset=40,
    heldout=True,
    note="Thatching reed-bundle regressor (tanh MLP on bundle girth, reed length, butt "
    "diameter, cutting month, drying days and moisture, predicting the bundle weight; MSE, "
    "Adam). The cached target tensor is 'converted from pounds' with an in-place mul_ that "
    "runs every step from step 40 instead of once, so the targets drift up 1.2% per step: "
    "the model lags ever further behind and the loss climbs slowly to over 3x its best, with "
    "no single jump and nothing wrong inside the model.",
)
def h584_thatching_inplace_conversion(ctx):
    gen = seeded(5849)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(58490)
    xs = torch.randn(512, 6, generator=g)
    w = torch.randn(6, generator=g)
    ys = torch.tanh(xs @ w / 2.45) + 0.1 * torch.randn(512, generator=g)

    def batches():
        while True:
            idx = torch.randint(0, 512, (64,), generator=gen)
            yield xs[idx], ys[idx]

    def before(step):
        if step >= 40:
            ys.mul_(1.012)

    losses, _ = _train(ctx, model, opt, batches(), 200, F.mse_loss, before=before)
    best = min(losses[:40])
    jumps = [losses[i + 1] / max(losses[i], 1e-8) for i in range(40, len(losses) - 1)]
    ctx.check("loss fell first", _fell(losses[:40]))
    ctx.check("loss climbs to over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("no single step jumps over 3x", max(jumps) < 3.0)
    ctx.check("run finite", _finite(losses))


# -- 10. loss spike: resumed with the RMSprop state dropped --------------------------------------

RESUME_STEP = 150


@scenario(
    family="rowing_ergometer_stroke_power_gelu_regressor",
    optimizer="RMSprop",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=RESUME_STEP,
    heldout=True,
    note="Rowing stroke-power regressor (GELU MLP on catch angle, drive length, handle speed, "
    "stroke rate, rower mass and drag factor, predicting the watts; MSE, RMSprop). At step "
    "150 the job resumes from a checkpoint that saved the model but not the optimizer: the "
    "RMSprop square averages restart at zero, the first updates are about 10x too large, the "
    "loss spikes over 3x for a few steps and then recovers.",
)
def h584_rowing_resume_no_state(ctx):
    gen = seeded(5850)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    batches = _readings(gen, 64, 6, 58500)

    def before(step):
        if step == RESUME_STEP:
            opt.state.clear()

    losses, _ = _train(ctx, model, opt, batches, 230, F.mse_loss, before=before)
    base = _median(losses[RESUME_STEP - 20 : RESUME_STEP])
    peak = max(losses[RESUME_STEP : RESUME_STEP + 5])
    ctx.check("loss fell before the resume", _fell(losses[:RESUME_STEP]))
    ctx.check("loss over 3x just after the resume", peak > 3 * base)
    ctx.check("recovers within 60 steps", _mean(losses[-10:]) < 1.5 * base)


# -- 11. control (alarming-looking): clip threshold lowered from 1.0 to 0.05 ---------------------

CLIP_STEP = 100


@scenario(
    family="fencing_epee_parry_riposte_relu_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    onset=CLIP_STEP,
    heldout=True,
    note="Epee parry-riposte classifier (ReLU MLP on 16 standardised blade-contact and "
    "footwork features, 6 parry kinds; cross-entropy, SGD momentum, clipping). The gradient "
    "clipping threshold is lowered from 1.0 to 0.05 at step 100 as a deliberate "
    "stabilisation: nearly every later step is clipped, the update size drops and the loss "
    "falls more slowly, but training goes on normally. Healthy.",
)
def h584_fencing_clip_lowered(ctx):
    gen = seeded(5851)
    model = _Net(16, hidden=64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = _classes(gen, 64, 16, 6, 58510, spread=0.5, noise=0.8)
    losses, norms = _train(
        ctx,
        model,
        opt,
        batches,
        240,
        F.cross_entropy,
        classifier=True,
        clip=lambda s: 1.0 if s < CLIP_STEP else 0.05,
    )
    clipped = _mean([1.0 if n > 0.05 else 0.0 for n in norms[CLIP_STEP:]])
    ctx.check("over 90% of steps after 100 clipped", clipped > 0.9)
    ctx.check("loss fell", _fell(losses))
    ctx.check(
        "loss still falls after the change",
        _mean(losses[-10:]) < _mean(losses[CLIP_STEP : CLIP_STEP + 10]),
    )


# -- 12. control: Hugging Face GPT-NeoX from a tiny config ----------------------------------------


@scenario(
    family="morse_key_fist_hf_gpt_neox_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Morse-key fist language model: a Hugging Face GPT-NeoX causal LM built from a tiny "
    "config (2 layers, width 32, 2 heads, rotary, tied input/output embeddings) on byte text "
    "standing in for keyed transcripts; AdamW with weight decay, linear warm-up then cosine "
    "decay, clipping at 1.0. Healthy.",
)
def h584_morse_gpt_neox(ctx):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    gen = seeded(5852)
    config = GPTNeoXConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        rotary_pct=0.5,
        tie_word_embeddings=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_parallel_residual=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPTNeoXForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    steps, warm = 150, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    batches = text_batches(gen, batch=16, length=32, vocab=128)

    def loss_fn(logits, y):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    losses, _ = _train(
        ctx,
        model,
        opt,
        batches,
        steps,
        lambda out, y: loss_fn(out.logits, y),
        clip=1.0,
        sched=sched,
    )
    ctx.check(
        "input and output embeddings tied",
        model.get_output_embeddings().weight is model.get_input_embeddings().weight,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.8))
    ctx.check("run finite", _finite(losses))


# -- 13. control: ASGD + ReduceLROnPlateau + clipping on heavy-tailed targets ---------------------


@scenario(
    family="sumo_tachiai_impact_force_silu_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sumo tachiai impact-force regressor (SiLU MLP on wrestler mass, crouch depth, "
    "initial foot position, reaction time, stance width and shikiri repetitions, predicting "
    "the peak force; Huber loss, ASGD, ReduceLROnPlateau, clipping at 1.0). The force-plate "
    "targets carry heavy-tailed (Student-t) noise, so single batches bounce. Healthy.",
)
def h584_sumo_tachiai_asgd(ctx):
    gen = seeded(5853)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=100.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    base = _readings(gen, 64, 6, 58530, noise=0.0)
    t = torch.distributions.StudentT(2.0)

    def batches():
        while True:
            x, y = next(base)
            yield x, y + 0.1 * t.sample((64,))

    losses, _ = _train(ctx, model, opt, batches(), 220, F.huber_loss, clip=1.0, plateau=plateau)
    ctx.check("loss fell", _fell(losses))
    ctx.check("run finite", _finite(losses))
