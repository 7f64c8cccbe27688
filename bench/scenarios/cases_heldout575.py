"""Held-out set 575 (``h575_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: nixtamal lime-cook GELU regressor fed lime concentration in raw mg/L under fp16 autocast
(amp_overflow, AdamW); sand-yacht beach-speed tanh regressor whose warm-up lambda lost its
min(1, ...) cap (sharpness_above_limit, plain SGD); Tuvan throat-singing overtone ReLU Elman RNN
with its identity recurrent init scaled 1.1 (exploding_gradients, SGD Nesterov); cornhusk-doll
braid SiLU regressor whose fc1 group lr is typed 3e-9 (update_ratio_out_of_range, RMSprop);
maple-syrup sugarhouse grade GELU classifier fed one shard of raw hydrometer counts
(data_outlier, NAdam); slacklining highline sway BCE classifier whose sample weights are read
in percent for one step (gradient_spike, SGD momentum); mud-volcano gryphon pulse Gaussian NLL
net taking the square root of a pressure below its re-zeroed baseline (nonfinite, RAdam);
tanoura whirling-skirt figure classifier whose temperature is read in seconds as 1e-3
(softmax_collapse, Adagrad); peat-cutting turf dryness tanh regressor whose L2 penalty is
subtracted (loss_divergence, Adamax); roller-derby jam-points regressor resumed with fresh Adam
state (loss_spike, Adam).
Controls: Hardanger fiddle drone-string classifier fine-tuned with zero-initialised LoRA
adapters on a frozen base (alarming-looking, AdamW); spider orb-web thread-tension message
passing GNN on generated random graphs (Huber, Adam, ReduceLROnPlateau); jai-alai cesta throw
ReLU classifier (SGD Nesterov, OneCycleLR, label smoothing, accumulation 2, clipping).
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
    after=None,
    clip=None,
    sched=None,
    forward=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    forward = forward or (lambda m, x: m(x))
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(forward(model, x), y)
        total = backprop(step, loss, x, y) if backprop is not None else loss
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


def _readings(gen, batch, d_in, seed, noise=0.05, offset=0.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + offset + noise * torch.randn(batch, generator=gen)


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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
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


# -- 1. amp overflow: lime concentration in raw mg/L under fp16 autocast -------------------------


@scenario(
    family="nixtamal_lime_cook_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=75,
    onset=75,
    heldout=True,
    note="Nixtamal lime-cook regressor (GELU MLP on maize hardness, lime concentration, water "
    "ratio, kettle temperature, steep time and husk share, predicting pericarp-loosening time; "
    "MSE, AdamW, fp16 autocast + GradScaler). From step 75 a new mill's export gives the lime "
    "concentration in raw mg/L (about 1e5) instead of the standardised column: autocast runs "
    "fc1 in fp16, whose range ends at 65504, fc1's output is non-finite (the same batch is "
    "finite in float32) and the loss is non-finite at step 75.",
)
def h575_nixtamal_raw_mg_per_litre(ctx):
    gen = seeded(5751)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 57510)
    losses, fc1_bad, bad_x = [], [], None
    for step in range(120):
        x, y = next(batches)
        if step >= 75:
            x = x.clone()
            x[:, 1] = 1.0e5 + 8.0e3 * x[:, 1]
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
    ctx.check("finite before the onset", _finite(losses[:75]) and not any(fc1_bad[:75]))
    ctx.check("fitted before the onset", _mean(losses[65:75]) < 0.7 * _mean(losses[:10]))
    ctx.check("fc1's fp16 output non-finite at step 75", len(fc1_bad) > 75 and fc1_bad[75])
    ctx.check("loss non-finite first at step 75", first_bad == 75)
    with torch.no_grad():
        f32 = model.fc1(bad_x) if bad_x is not None else torch.tensor(float("nan"))
    ctx.check("same batch finite in float32", bool(torch.isfinite(f32).all()))


# -- 2. sharpness: warm-up lambda without its cap --------------------------------------------------


@scenario(
    family="sand_yacht_beach_speed_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=20,
    heldout=True,
    note="Sand-yacht beach-speed regressor (tanh MLP on wind speed, gust factor, sand "
    "firmness, sail area, crew mass and heading, predicting boat speed; MSE, plain SGD, LambdaLR "
    "linear warm-up over 20 steps). The warm-up lambda is written step / 20 without its "
    "min(1, ...) cap, so after step 20 the lr keeps climbing linearly; lr x top Hessian "
    "eigenvalue passes 2 and the loss blows up.",
)
def h575_sand_yacht_uncapped_warmup(ctx):
    gen = seeded(5752)
    model = _Net(6, hidden=48, act=nn.Tanh)
    base = 0.2
    opt = torch.optim.SGD(model.parameters(), lr=base)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 20)
    batches = _readings(gen, 64, 6, 57520)
    probe = next(batches)
    products = {}

    def before(step):
        if step % 10 == 0 and step >= 10:
            lr = opt.param_groups[0]["lr"]
            products[step] = lr * _top_eig(model, F.mse_loss, *probe)

    losses, _ = _train(ctx, model, opt, batches, 300, F.mse_loss, before=before, sched=sched)
    finite = [v for v in losses if math.isfinite(v)]
    best = min(finite)
    crossed = next((s for s, p in sorted(products.items()) if p > 2.0), None)
    blow = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * best), None)
    ctx.check("fitted during warm-up", _mean(losses[15:20]) < 0.7 * _mean(losses[:5]))
    ctx.check("lr x sharpness below 2 at step 10", products.get(10, 9.0) < 2.0)
    ctx.check("lr x sharpness passes 2 after the warm-up", crossed is not None and crossed > 20)
    ctx.check("loss blows up (over 100x its best or non-finite)", blow is not None)
    ctx.check(
        "blow-up after the crossing", blow is not None and crossed is not None and blow >= crossed
    )


# -- 3. exploding gradients: IRNN gain typo ---------------------------------------------------------


class _OvertoneRNN(nn.Module):
    def __init__(self, d_in=4, hidden=48, gain=1.1):
        super().__init__()
        self.rnn = nn.RNN(d_in, hidden, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.eye(hidden))
            self.rnn.bias_hh_l0.zero_()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _overtone_batches(gen, batch=32, length=40):
    while True:
        x = torch.randn(batch, length, 4, generator=gen) * 0.5
        y = x[:, :, 0].mean(1) * 2.0 + 0.3 * x[:, -5:, 1].mean(1)
        yield x, y


@scenario(
    family="tuvan_throat_singing_overtone_relu_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="Tuvan throat-singing overtone regressor (ReLU Elman RNN over 40 frames of "
    "formant features, predicting the mean overtone strength; MSE, SGD Nesterov). The IRNN "
    "recipe initialises the recurrent matrix to the identity, but a gain of 1.1 is typed "
    "for 1.0: the backward signal grows ~1.1x per frame, the first frame's input gradient is "
    "over 20x the last's, and the loss blows up.",
)
def h575_throat_singing_irnn_gain(ctx):
    gen = seeded(5753)
    model = _OvertoneRNN()
    opt = torch.optim.SGD(model.parameters(), lr=3e-5, momentum=0.9, nesterov=True)
    batches = _overtone_batches(gen)
    x0, y0 = next(batches)
    xg = x0.clone().requires_grad_(True)
    F.mse_loss(model(xg), y0).backward()
    per_frame = xg.grad.norm(dim=(0, 2))
    ratio = float(per_frame[0] / per_frame[-1].clamp_min(1e-30))
    model.zero_grad(set_to_none=True)
    ref = _OvertoneRNN(gain=1.0)
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref.rnn.weight_hh_l0.copy_(torch.eye(48))
    F.mse_loss(ref(x0), y0).backward()
    ref_norm = grad_norm(ref)
    losses, norms = _train(ctx, model, opt, batches, 150, F.mse_loss)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("first frame's input gradient over 20x the last's", ratio > 20)
    ctx.check("gradient norm at step 0 over 100x the gain-1.0 init's", norms[0] > 100 * ref_norm)
    ctx.check("loss non-finite within 60 steps", first_bad is not None and first_bad < 60)


# -- 4. update ratio: fc1 group lr typed 3e-9 ---------------------------------------------------


@scenario(
    family="cornhusk_doll_braid_two_group_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Cornhusk-doll braid-strength regressor (SiLU MLP on husk moisture, husk width, braid "
    "count, twine tension, drying time and dye load, predicting pull strength; MSE, RMSprop, "
    "two param groups: the input layer and the rest). The input group's lr is typed 3e-9 for "
    "3e-3: fc1's updates are about 1e-9 of its weights, it never moves, while fc2 and head "
    "train and the loss falls only as far as a random first layer allows.",
)
def h575_cornhusk_input_group_lr_typo(ctx):
    gen = seeded(5754)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 3e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 3e-3},
        ]
    )
    w1, w2, wh = _flat(model.fc1), _flat(model.fc2), _flat(model.head)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 57540), 200, F.mse_loss)
    rel = lambda a, m: float((_flat(m) - a).norm() / a.norm())  # noqa: E731
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fc1 moved less than 1e-5 of its norm", rel(w1, model.fc1) < 1e-5)
    ctx.check("fc2 moved over 5% of its norm", rel(w2, model.fc2) > 0.05)
    ctx.check("head moved over 5% of its norm", rel(wh, model.head) > 0.05)
    ctx.check("loss fell (the other layers train)", _fell(losses, ratio=0.9))


# -- 5. data outlier: one shard of raw hydrometer counts ---------------------------------------


@scenario(
    family="maple_syrup_sugarhouse_grade_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Maple-syrup sugarhouse grade classifier (GELU MLP on Brix, light transmittance, "
    "sap sugar, boil time, evaporator temperature, niter and sap flow; five grades; "
    "cross-entropy, NAdam, clipping at 1). The batch at step 110 comes from one sugarhouse's "
    "shard exported in raw hydrometer ADC counts (about 400x the standardised scale): that "
    "batch's loss and gradient jump, clipping bounds the update and the run recovers.",
)
def h575_maple_syrup_raw_counts_shard(ctx):
    gen = seeded(5755)
    model = _Net(8, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == 110:
            return 400.0 * x + 1500.0, y
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 8, 5, 57550),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    before = _median(losses[90:110])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss at step 110 over 20x the median before", losses[110] > 20 * before)
    ctx.check(
        "gradient at step 110 over 10x the median before", norms[110] > 10 * _median(norms[90:110])
    )
    ctx.check("recovers: last 20 steps within 1.5x of before", _mean(losses[-20:]) < 1.5 * before)


# -- 6. gradient spike: sample weights in percent for one step ---------------------------------


@scenario(
    family="slacklining_highline_sway_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Slacklining highline sway classifier (GELU MLP on line tension, span, anchor "
    "height, wind, walker mass and gait cadence, predicting whether the line sways past its "
    "limit; BCE with per-sample weights, SGD momentum, clipping at 1). On step 130, after a "
    "resume, the per-sample weights are reloaded from a config that stores them in percent "
    "(100) instead of fractions (1.0): the backpropagated loss is 100x for that step, the "
    "logged unweighted loss is ordinary, the gradient spikes, clipping bounds the update.",
)
def h575_slackline_percent_weights(ctx):
    gen = seeded(5756)
    model = _Net(6, hidden=48, out=1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def batches():
        inner = _readings(gen, 64, 6, 57560, noise=0.2)
        while True:
            x, y = next(inner)
            yield x, (y > 0.3).float()

    def backprop(step, loss, x, y):
        w = torch.full_like(y, 100.0 if step == 130 else 1.0)
        return F.binary_cross_entropy_with_logits(model(x), y, weight=w)

    losses, norms = _train(
        ctx,
        model,
        opt,
        batches(),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check(
        "gradient at step 130 over 50x the median before", norms[130] > 50 * _median(norms[100:130])
    )
    ctx.check(
        "logged loss at step 130 ordinary (under 2x)", losses[130] < 2 * _median(losses[100:130])
    )
    ctx.check("trained", _fell(losses, ratio=0.8))
    ctx.check("recovers", _mean(losses[-20:]) < 1.5 * _median(losses[100:130]))


# -- 7. nonfinite: sqrt of a pressure below a re-zeroed baseline --------------------------------


class _Amplitude(nn.Module):
    """Pulse amplitude from the gryphon's pressure reading: sqrt(pressure - baseline)."""

    def __init__(self, baseline=0.0):
        super().__init__()
        self.baseline = baseline

    def forward(self, x):
        return torch.sqrt(x[:, :1] - self.baseline)


class _GryphonNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.amplitude = _Amplitude()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        h = torch.cat([x, self.amplitude(x)], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h)))))


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-4)


@scenario(
    family="mud_volcano_gryphon_pulse_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("amplitude",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Mud-volcano gryphon pulse regressor (SiLU MLP predicting the mean and variance of "
    "the mud-pulse height from gas pressure, vent width, water content, temperature and "
    "tremor, plus an amplitude feature sqrt(pressure - baseline); Gaussian NLL, RAdam). At step "
    "90 the field crew re-zeroes the baseline above some readings and no clamp guards the "
    "square root: the amplitude module returns NaN and the loss is NaN at step 90.",
)
def h575_mud_volcano_sqrt_negative(ctx):
    gen = seeded(5757)
    model = _GryphonNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    seen = {}
    model.amplitude.register_forward_hook(
        lambda m, i, o: seen.__setitem__(
            "amp", (float(i[0][:, 0].min()), bool(torch.isnan(o).any()))
        )
    )
    nan_at, neg_at = [], []

    def pressures():
        inner = _readings(gen, 64, 6, 57570, noise=0.1)
        while True:
            x, y = next(inner)
            x = x.clone()
            x[:, 0] = x[:, 0].abs() + 0.2
            yield x, y

    def before(step):
        if step == 90:
            model.amplitude.baseline = 0.8

    def after(step, loss):
        neg_at.append(seen["amp"][0] - model.amplitude.baseline < 0)
        nan_at.append(seen["amp"][1])

    losses, _ = _train(ctx, model, opt, pressures(), 150, _gauss_nll, before=before, after=after)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("finite before the onset", _finite(losses[:90]) and not any(nan_at[:90]))
    ctx.check("fitted before the onset", _mean(losses[80:90]) < _mean(losses[:10]) - 0.3)
    ctx.check("negative argument to sqrt at step 90", len(neg_at) > 90 and neg_at[90])
    ctx.check("amplitude output NaN at step 90", len(nan_at) > 90 and nan_at[90])
    ctx.check("loss non-finite first at step 90", first_bad == 90)


# -- 8. softmax collapse: temperature read in seconds ------------------------------------------


class _TempNet(_Net):
    def __init__(self, *a, temperature=1.0, **k):
        super().__init__(*a, **k)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="tanoura_whirl_skirt_figure_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tanoura whirling-skirt figure classifier (ReLU MLP on skirt-hem height, spin rate, "
    "lamp flicker, drum tempo, arm angle and lift phase; six figures; cross-entropy, Adagrad). "
    "The logit temperature is meant to be 1 (stored as 1000 ms) but is read as 1e-3: the head's "
    "logits are divided by 0.001, and most rows' target probability rounds to exactly 1.0 "
    "in float32 while the wrong rows carry huge losses.",
)
def h575_tanoura_temperature_units(ctx):
    gen = seeded(5758)
    model = _TempNet(6, hidden=48, out=6, temperature=1e-3)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    batches = _classes(gen, 64, 6, 6, 57580)
    probe = next(batches)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        frac = collapsed_fraction(model(probe[0]), probe[1])
        ok_frac = collapsed_fraction(model(probe[0]) * 1e-3, probe[1])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("over 40% of rows' target probability exactly 1.0", frac > 0.4)
    ctx.check("none at temperature 1", ok_frac < 0.05)


# -- 9. loss divergence: L2 penalty subtracted ---------------------------------------------------


@scenario(
    family="peat_cutting_turf_dryness_decay_sign_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Peat-cutting turf dryness regressor (tanh MLP on cut depth, bank height, wind, sun "
    "hours, turf density and stacking pattern, predicting days to dry; MSE, Adamax). The L2 "
    "penalty is added to the loss with its sign flipped (loss - wd * |w|^2): the weights "
    "grow steadily, and after fitting the loss climbs slowly with no single jump.",
)
def h575_peat_turf_l2_sign(ctx):
    gen = seeded(5759)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    wd = 0.05
    w0 = float(_flat(model).norm())

    def backprop(step, loss, x, y):
        l2 = sum((p * p).sum() for n, p in model.named_parameters() if "weight" in n)
        return loss - wd * l2

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 575900), 300, F.mse_loss, backprop=backprop
    )
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    jumps = [smooth[i + 5] / smooth[i] for i in range(len(smooth) - 5)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("weights over 2x their init norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 2x its best", smooth[-1] > 2 * best)
    ctx.check("best reached before the last third", smooth.index(best) < 2 * len(smooth) // 3)
    ctx.check("no jump: 5-step moving mean never doubles", max(jumps) < 2.0)


# -- 10. loss spike: resumed with fresh Adam state -----------------------------------------------


@scenario(
    family="roller_derby_jam_points_adam_reset_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="Roller-derby jam-points regressor (GELU MLP on jammer speed, pack density, lead "
    "status, penalties, track position and lap count, predicting points per jam; MSE, Adam). "
    "At step 150 the job is resumed from a checkpoint that saved the model but not the "
    "optimizer: Adam starts again with empty moments, its first bias-corrected updates are "
    "a full lr per coordinate in the direction of one noisy batch, the loss spikes once and "
    "the run recovers.",
)
def h575_roller_derby_fresh_adam(ctx):
    gen = seeded(57510)
    model = _Net(6, hidden=96, act=nn.GELU)
    lr = 1e-2
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def before(step):
        if step == 150:
            opt.state.clear()

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 6, 575100, noise=0.1), 260, F.mse_loss, before=before
    )
    pre = _median(losses[130:150])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted before the resume", pre < 0.5 * _mean(losses[:10]))
    ctx.check("loss spikes over 3x within 5 steps of the resume", max(losses[150:156]) > 3 * pre)
    ctx.check("no such spike in the 50 steps before", max(losses[100:150]) < 2.5 * pre)
    ctx.check("recovers: last 20 steps within 1.5x of before", _mean(losses[-20:]) < 1.5 * pre)


# -- control 1 (alarming-looking): LoRA adapters on a frozen base -------------------------------


class _LoRALinear(nn.Module):
    def __init__(self, base, rank=4, alpha=8.0):
        super().__init__()
        self.base = base
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))


@scenario(
    family="hardanger_fiddle_drone_lora_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hardanger fiddle drone-string classifier (ReLU MLP on sympathetic-string spectra, "
    "eight tunings; cross-entropy, AdamW). A base network pre-trained on one fiddle maker's "
    "instruments is frozen and fine-tuned on another's with rank-4 LoRA adapters on fc1 and "
    "fc2 (B initialised to zero) and a fresh head: most parameters get no gradient at all and "
    "the adapters' B matrices start at exactly zero, which looks alarming but is the recipe. "
    "Healthy control.",
)
def h575_hardanger_lora_finetune(ctx):
    gen = seeded(57511)
    base = _Net(16, hidden=128, out=8)
    pre = torch.optim.Adam(base.parameters(), lr=3e-3)
    src = _classes(gen, 64, 16, 8, 575110)
    for _ in range(60):
        x, y = next(src)
        F.cross_entropy(base(x), y).backward()
        pre.step()
        pre.zero_grad(set_to_none=True)
    for p in base.parameters():
        p.requires_grad_(False)
    base.fc1 = _LoRALinear(base.fc1)
    base.fc2 = _LoRALinear(base.fc2)
    base.head = nn.Linear(128, 8)
    model = base
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = _flat(model.fc1.base)
    opt = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=0.01)
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in trainable)
    losses, _ = _train(
        ctx, model, opt, _classes(gen, 64, 16, 8, 575111), 200, F.cross_entropy, classifier=True
    )
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("under 25% of parameters trainable", n_train < 0.25 * n_all)
    ctx.check("frozen base unchanged", bool(torch.equal(frozen, _flat(model.fc1.base))))
    ctx.check("adapters moved off zero", float(model.fc1.lora_b.weight.detach().norm()) > 0)


# -- control 2: message-passing GNN on random graphs -------------------------------------------


class _MessagePass(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.lin_self = nn.Linear(dim, dim)
        self.lin_msg = nn.Linear(dim, dim)

    def forward(self, h, adj):
        deg = adj.sum(-1, keepdim=True).clamp_min(1.0)
        return F.relu(self.lin_self(h) + self.lin_msg(adj @ h / deg))


class _WebGNN(nn.Module):
    def __init__(self, d_in=4, dim=32, layers=3):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.mp = nn.ModuleList(_MessagePass(dim) for _ in range(layers))
        self.readout = nn.Linear(dim, 1)

    def forward(self, batch):
        feats, adj = batch
        h = self.embed(feats)
        for layer in self.mp:
            h = h + layer(h, adj)
        return self.readout(h).squeeze(-1)


def _web_batches(gen, batch=16, nodes=14, p=0.25):
    """Random orb webs: node features (thread thickness, stickiness, anchor flag, radius);
    target: each junction's tension, driven by its own features and its neighbours'."""
    while True:
        upper = (torch.rand(batch, nodes, nodes, generator=gen) < p).float().triu(1)
        adj = upper + upper.transpose(1, 2)
        feats = torch.randn(batch, nodes, 4, generator=gen)
        deg = adj.sum(-1).clamp_min(1.0)
        neigh = (adj @ feats) / deg[..., None]
        two = (adj @ neigh) / deg[..., None]
        y = torch.tanh(feats[..., 0] + neigh[..., 1]) + 0.5 * two[..., 2] + 0.1 * deg
        y = y + 0.1 * torch.randn(batch, nodes, generator=gen)
        yield (feats, adj), y


@scenario(
    family="spider_orb_web_thread_tension_message_passing_gnn",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Spider orb-web thread-tension GNN (three residual message-passing layers in plain "
    "PyTorch over generated random webs, junction features thread thickness, stickiness, "
    "anchor flag and radius; per-junction tension; Huber, Adam, ReduceLROnPlateau on the "
    "running loss, noisy targets). Healthy control.",
)
def h575_orb_web_gnn(ctx):
    gen = seeded(57512)
    model = _WebGNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    window = []

    def after(step, loss):
        window.append(loss)
        if step % 10 == 9:
            plateau.step(_mean(window[-10:]))

    losses, _ = _train(ctx, model, opt, _web_batches(gen), 200, F.huber_loss, after=after)
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("finite throughout", _finite(losses))


# -- control 3: OneCycleLR, label smoothing, accumulation, clipping ----------------------------


@scenario(
    family="jai_alai_cesta_throw_onecycle_relu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Jai-alai cesta throw classifier (ReLU MLP on wrist speed, cesta angle, release "
    "height, pelota spin and wall distance; seven throw kinds; cross-entropy with label "
    "smoothing 0.1, SGD Nesterov, OneCycleLR, gradient accumulation over 2 micro-batches, "
    "clipping at 1, noisy batches). Healthy control.",
)
def h575_jai_alai_onecycle(ctx):
    gen = seeded(57513)
    model = _Net(10, hidden=64, out=7)
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    batches = _classes(gen, 32, 10, 7, 575130, noise=1.2)
    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total = total + loss.detach() / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite throughout", _finite(losses))
