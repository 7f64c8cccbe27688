"""Held-out set 574 (``h574_``): 10 faults over 10 causes and 3 healthy controls, all hand-written
but one Hugging Face T5 built from a tiny config.

Faults: bellfounding bronze-pour regressor fed the pour temperature in millikelvin under fp16
autocast (amp_overflow, AdamW); curling-stone curl-distance regressor whose warm-up lambda forgets
to divide by the warm-up length (sharpness_above_limit, plain SGD); hang-glider thermal-lift ReLU
Elman RNN with its recurrent init gain typed 1.7 (exploding_gradients, SGD momentum); bookbinding
spine glue-set regressor whose fc2 group lr is typed 3e-8 for 3e-3 (update_ratio_out_of_range,
Adamax, param groups); maple-syrup brix-grade classifier fed one shard of raw refractometer counts
(data_outlier, SGD Nesterov, clipping); kite line-snap BCE classifier whose hot-reloaded loss
weight reads 100 (percent) for one step (gradient_spike, ASGD, gradient accumulation, clipping);
geyser eruption-interval log-normal NLL net taking the log of a missed (0) previous interval
(nonfinite, Adam); cooper barrel-stave grade ReLU classifier with RAdam lr typed 5e-1 for 5e-4
(loss_of_plasticity, RAdam); handbell change-ringing classifier whose temperature is given in
milliseconds (softmax_collapse, Adagrad); thatch reed-bundle density regressor whose hand-written
weight decay has its sign flipped (loss_divergence, Adam).
Controls: lacrosse stick-pocket classifier with mixup switched on at step 100 (alarming-looking,
NAdam); Morse-key fist transcriber, a tiny Hugging Face T5 (AdamW, linear warm-up, clipping, tied
embeddings); blacksmith quench-hardness classifier (SGD momentum, OneCycleLR, label smoothing,
clipping, noisy batches).
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
    accum=1,
):
    """Attach, then train (``accum`` micro-batches a step); stops after a non-finite loss once
    ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        logged = 0.0
        for _ in range(accum):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accum).backward()
            logged = logged + loss.detach() / accum
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(logged))
        ctx.step(logged)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _top_eig(model, loss_fn, x, y, iters=12):
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


# -- 1. amp overflow: bronze pour temperature in millikelvin under fp16 autocast ------------------


@scenario(
    family="bellfounding_bronze_pour_fp16_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Bellfounding bronze-pour regressor (GELU MLP on pour temperature, mould humidity, "
    "core sand moisture, tin fraction, pour rate and ambient temperature, predicting the bell's "
    "strike-note deviation; MSE, AdamW, fp16 autocast + GradScaler). From step 80 a replaced "
    "pyrometer logger gives the pour temperature in millikelvin (about 1.4e6) instead of the "
    "standardised column: autocast runs fc1 in fp16, whose range ends at 65504, so fc1's output "
    "overflows to inf and the loss is non-finite; the same batch in float32 is finite. The "
    "scaler skips every step from there.",
)
def h574_bellfounding_pour_fp16_overflow(ctx):
    gen = seeded(5741)
    model = _Net(6, 48, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 32, 6, 41)
    seen = {}

    def hook(_m, _i, out):
        seen["fc1"] = out.detach()

    model.fc1.register_forward_hook(hook)
    losses = []
    for step in range(140):
        x, y = next(batches)
        if step >= 80:
            x = x.clone()
            x[:, 0] = 1.4e6 + 2e4 * x[:, 0]
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == 80:
            ctx.check(
                "fc1's fp16 output is non-finite at step 80",
                not bool(torch.isfinite(seen["fc1"]).all()),
            )
            with torch.no_grad():
                ctx.check(
                    "the same batch in float32 gives a finite fc1 output",
                    bool(torch.isfinite(model.fc1(x)).all()),
                )
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
    ctx.check("finite and falling before step 80", _fell(losses[:80]))
    ctx.check("loss non-finite at step 80", len(losses) == 81 and not math.isfinite(losses[80]))


# -- 2. sharpness: a warm-up lambda that forgets to divide by the warm-up length ------------------


@scenario(
    family="curling_stone_curl_distance_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Curling-stone curl-distance regressor (tanh MLP on release speed, handle rotation, "
    "pebble temperature, sweep effort, ice age and stone weight, predicting lateral curl; MSE, "
    "plain SGD, base lr 0.05 with a LambdaLR linear warm-up over 40 steps). The warm-up lambda "
    "is written `lambda s: min(s + 1, 40)` instead of `min(s + 1, 40) / 40`, so the learning "
    "rate climbs to 2.0: lr x top Hessian eigenvalue (measured by power iteration) passes the "
    "2/sharpness limit during the climb and the loss blows up.",
)
def h574_curling_warmup_no_divide(ctx):
    gen = seeded(5742)
    model = _Net(6, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s + 1, 40))
    batches = _readings(gen, 64, 6, 42)
    probe = next(batches)
    products = []

    def before(step):
        if step % 3 == 0:
            eig = _top_eig(model, F.mse_loss, *probe)
            products.append((step, opt.param_groups[0]["lr"] * eig))

    losses, _ = _train(ctx, model, opt, batches, 120, F.mse_loss, before=before, sched=sched)
    over = [s for s, p in products if p > 2.0]
    ctx.check("lr x sharpness passes 2 during the run", bool(over))
    best = min(v for v in losses if math.isfinite(v))
    ctx.check(
        "loss blows up (over 20x its best or non-finite) after lr x sharpness passes 2",
        bool(over) and any((not math.isfinite(v)) or v > 20 * best for v in losses[over[0] :]),
    )


# -- 3. exploding gradients: recurrent init gain typed 1.7 ---------------------------------------


class _ThermalRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(3, 32, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(32, 1)
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=1.7)
        nn.init.zeros_(self.rnn.bias_hh_l0)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _thermal_batches(gen, batch=32, length=40):
    while True:
        x = 0.5 * torch.randn(batch, length, 3, generator=gen)
        y = x[:, -10:, 0].mean(1) + 0.5 * x[:, :, 1].mean(1)
        yield x, y


@scenario(
    family="hang_glider_thermal_lift_relu_elman_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="Hang-glider thermal-lift forecaster (ReLU Elman RNN over 40 vario samples of climb "
    "rate, bank angle and airspeed, predicting the thermal's mean lift; MSE, SGD momentum 0.9, "
    "lr 1e-3). The recurrent weights are initialised orthogonal with gain 1.7 (typed for the "
    "intended 0.7 in an IRNN-style config): the gradient grows through time (about 1.7 per "
    "step through the active units), the first sample's input gradient is orders of magnitude above the last's, and the "
    "run blows up.",
)
def h574_hang_glider_rnn_gain(ctx):
    gen = seeded(5743)
    model = _ThermalRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _thermal_batches(gen)
    x, y = next(batches)
    x = x.clone().requires_grad_(True)
    F.mse_loss(model(x), y).backward()
    g = x.grad.abs().mean((0, 2))
    ctx.check("first step's input gradient over 100x the last's", float(g[0]) > 100 * float(g[-1]))
    model.zero_grad(set_to_none=True)
    losses, _ = _train(ctx, model, opt, batches, 80, F.mse_loss)
    ctx.check(
        "loss blows up (non-finite or over 100x its first value)",
        any((not math.isfinite(v)) or v > 100 * losses[0] for v in losses),
    )


# -- 4. update ratio: fc2 group lr typed 3e-8 for 3e-3 -------------------------------------------


@scenario(
    family="bookbinding_spine_glue_set_param_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Bookbinding spine glue-set regressor (SiLU MLP on glue temperature, board thickness, "
    "paper grain, humidity, press pressure, spine width and book block weight, predicting "
    "set time; MSE, Adamax with three param groups). The fc2 group's lr is typed 3e-8 for "
    "3e-3: fc2's updates are about 1e-7 of its weights for the whole run while the other "
    "groups move normally; the loss still falls through fc1 and the head, nothing blows up.",
)
def h574_bookbinding_fc2_group_typo(ctx):
    gen = seeded(5744)
    model = _Net(7, 48, act=nn.SiLU)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 3e-3},
            {"params": model.fc2.parameters(), "lr": 3e-8},
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )
    w0, h0 = _flat(model.fc2), _flat(model.fc1)
    losses, _ = _train(ctx, model, opt, _readings(gen, 32, 7, 44), 200, F.mse_loss)
    rel2 = float((_flat(model.fc2) - w0).norm() / w0.norm())
    rel1 = float((_flat(model.fc1) - h0).norm() / h0.norm())
    ctx.check("fc2 moved under 1e-4 of its norm over the run", rel2 < 1e-4)
    ctx.check("fc1 moved over 1e-2 of its norm", rel1 > 1e-2)
    ctx.check("loss fell and stayed finite", _fell(losses))


# -- 5. data outlier: one shard of raw refractometer counts -------------------------------------


@scenario(
    family="maple_syrup_brix_grade_gelu_classifier",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Maple-syrup grade classifier (GELU MLP on brix, light transmittance, boil time, sap "
    "sugar, pan temperature, pH, conductivity and niter, 5 grades; cross-entropy, SGD Nesterov "
    "0.9, clipping at 1.0). At step 120 one shard from an uncalibrated refractometer gives brix "
    "in raw sensor counts (about 600x the standardised value) for that one batch: the loss and "
    "the gradient jump far above their medians; clipping bounds the step and the run recovers.",
)
def h574_maple_syrup_raw_shard(ctx):
    gen = seeded(5745)
    model = _Net(8, 48, out=5, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 0] = 600.0 * x[:, 0]
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 8, 5, 45),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    ctx.check(
        "loss at step 120 over 20x the median before", losses[120] > 20 * _median(losses[:120])
    )
    ctx.check(
        "gradient at step 120 over 10x the median before", norms[120] > 10 * _median(norms[:120])
    )
    ctx.check(
        "run recovers: last 20 losses under 2x the 20 before step 120",
        _finite(losses) and _mean(losses[-20:]) < 2 * _mean(losses[100:120]),
    )


# -- 6. gradient spike: hot-reloaded loss weight reads 100 (percent) for one step -----------------


@scenario(
    family="kite_line_snap_accum_bce_classifier",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Kite line-snap classifier (ReLU MLP on line tension, gust speed, line age, knot count, "
    "bridle angle and kite area, predicting a snap within the flight; BCE-with-logits, ASGD, "
    "two accumulated micro-batches a step, clipping at 1.0). At step 130 a hot-reloaded config "
    "gives the loss weight as 100 (a percentage) instead of 1.0 for that one step: the "
    "backpropagated loss, and the gradient, are 100x for one step while the logged loss is "
    "ordinary; clipping bounds the update and the run carries on.",
)
def h574_kite_loss_weight_percent(ctx):
    gen = seeded(5746)
    model = _Net(6, 48, act=nn.ReLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(46)
    w = torch.randn(6, generator=g)

    def batches():
        while True:
            x = torch.randn(32, 6, generator=gen)
            yield x, (x @ w + 0.5 * torch.randn(32, generator=gen) > 0).float()

    def backprop(step, loss):
        return loss * (100.0 if step == 130 else 1.0)

    losses, norms = _train(
        ctx,
        model,
        opt,
        batches(),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
        accum=2,
    )
    ctx.check(
        "gradient at step 130 over 50x the median before", norms[130] > 50 * _median(norms[:130])
    )
    ctx.check(
        "logged loss at step 130 under 2x the median before",
        losses[130] < 2 * _median(losses[100:130]),
    )
    ctx.check("loss fell and stayed finite", _fell(losses))


# -- 7. nonfinite: log of a missed (0) previous eruption interval ---------------------------------


class _LogPrev(nn.Module):
    """Log of the previous eruption interval (column 0), the other columns passed through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _GeyserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_prev = _LogPrev()
        self.fc1 = nn.Linear(5, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(48, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.log_prev(x))))))


def _lognormal_nll(out, y):
    mu, log_sigma = out[:, 0], out[:, 1].clamp(-5, 5)
    z = (torch.log(y) - mu) / log_sigma.exp()
    return (log_sigma + 0.5 * z**2).mean()


@scenario(
    family="geyser_eruption_interval_lognormal_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("log_prev",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Geyser eruption-interval forecaster (SiLU MLP on the log of the previous interval, "
    "pool temperature, discharge, barometric pressure and ground tilt, predicting a log-normal "
    "over the next interval; log-normal NLL, Adam). At step 90 the logger misses an eruption "
    "and writes the previous interval as 0: log_prev takes log(0) = -inf, fc1's output is "
    "non-finite and the loss is NaN at step 90.",
)
def h574_geyser_log_zero_interval(ctx):
    gen = seeded(5747)
    model = _GeyserNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def batches():
        while True:
            prev = 60 + 30 * torch.rand(32, 1, generator=gen)
            rest = torch.randn(32, 4, generator=gen)
            nxt = prev[:, 0] * torch.exp(0.1 * rest[:, 0] + 0.05 * torch.randn(32, generator=gen))
            yield torch.cat([prev, rest], 1), nxt

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:5, 0] = 0.0
        return x, y

    seen = {}
    model.log_prev.register_forward_hook(lambda _m, _i, out: seen.__setitem__("out", out.detach()))
    losses, _ = _train(ctx, model, opt, batches(), 150, _lognormal_nll, alter=alter)
    ctx.check("log_prev output has -inf at step 90", bool(torch.isneginf(seen["out"]).any()))
    ctx.check("finite and falling before step 90", _fell(losses[:90]))
    ctx.check("loss non-finite at step 90", len(losses) == 91 and not math.isfinite(losses[90]))


# -- 8. loss of plasticity: RAdam lr typed 5e-1 for 5e-4 -----------------------------------------


@scenario(
    family="cooper_barrel_stave_grade_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="Cooper barrel-stave grade classifier (ReLU MLP on grain count, ray fleck, moisture, "
    "stave width, bend radius, knot area, sapwood share and toasting, 6 grades; cross-entropy, "
    "RAdam). The lr is typed 5e-1 for 5e-4: the first large updates push most of act2's "
    "units negative on every input and they never come back, while the loss does not blow up.",
)
def h574_cooper_stave_radam_lr_typo(ctx):
    gen = seeded(5748)
    model = _Net(8, 64, out=6, act=nn.ReLU)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-1)
    batches = _classes(gen, 64, 8, 6, 48)
    probe, _ = next(batches)
    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe))
    mid = {}

    def after(step, _loss):
        if step == 100:
            with torch.no_grad():
                mid["dead"] = dead_fraction(model.features(probe))

    losses, _ = _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, after=after)
    with torch.no_grad():
        dead1 = dead_fraction(model.features(probe))
    ctx.check("under 10% of act2 dead at init", dead0 < 0.1)
    ctx.check(
        "over 40% of act2 dead at step 100 and at the end", mid.get("dead", 0) > 0.4 and dead1 > 0.4
    )
    ctx.check("loss stays finite, no blow-up", _finite(losses) and max(losses) < 20 * losses[0])


# -- 9. softmax collapse: temperature given in milliseconds --------------------------------------


class _TempNet(_Net):
    def __init__(self, *a, temperature=1.0, **k):
        super().__init__(*a, **k)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="handbell_change_ringing_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Handbell change-ringing method classifier (ReLU MLP on the striking intervals of a "
    "row of 8 bells, 6 methods; cross-entropy on logits / temperature, Adagrad). The "
    "temperature is read from a config that stores it in milliseconds of a 1 s reference, "
    "then divided by 1000 once more: it is 1e-3, the logits are 1000x, and most rows' "
    "float32 softmax gives the target probability exactly 1.0.",
)
def h574_handbell_temperature_ms(ctx):
    gen = seeded(5749)
    model = _TempNet(8, 48, out=6, act=nn.ReLU, temperature=1e-3)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    batches = _classes(gen, 64, 8, 6, 49, spread=2.0)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over 40% of rows' target probability exactly 1.0", frac > 0.4)
    ctx.check("loss finite", _finite(losses))


# -- 10. loss divergence: hand-written weight decay with its sign flipped -------------------------


@scenario(
    family="thatch_reed_bundle_density_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Thatch reed-bundle density regressor (tanh MLP on reed length, butt diameter, "
    "moisture, harvest week, bundle girth and tie tension, predicting packed density; MSE, "
    "Adam lr 1e-3 with a hand-written decoupled weight decay after each step). The decay is "
    "written `p.mul_(1 + lr * wd)` instead of `1 - lr * wd` with wd 10: the weights grow by "
    "1% a step, and the loss climbs slowly to several times its best with no single jump.",
)
def h574_thatch_decay_sign(ctx):
    gen = seeded(5750)
    model = _Net(6, 48, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n0 = float(_flat(model).norm())

    def after(step, _loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 1e-3 * 10.0)

    losses, _ = _train(ctx, model, opt, _readings(gen, 32, 6, 50), 250, F.mse_loss, after=after)
    best = min(losses)
    ctx.check("weight norm over 2x its start", float(_flat(model).norm()) > 2 * n0)
    ctx.check("loss climbs to over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check(
        "no single jump: no step-to-step loss ratio over 3",
        _finite(losses) and all(b < 3 * a for a, b in zip(losses[50:], losses[51:], strict=False)),
    )


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="lacrosse_stick_pocket_mixup_classifier",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Lacrosse stick-pocket grade classifier (GELU MLP on pocket depth, mesh tension, "
    "shooting-string spacing, sidewall stringing, whip and hold, 5 grades; cross-entropy, "
    "NAdam). Mixup (alpha 0.4) is switched on at step 100 as the schedule says: the training "
    "loss jumps up and stays higher, because the mixed targets are harder, while accuracy on "
    "clean batches keeps improving. Healthy.",
)
def h574_lacrosse_mixup_on(ctx):
    gen = seeded(5751)
    model = _Net(6, 48, out=5, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 6, 5, 51, spread=1.2)
    beta = torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4))
    ctx.attach(model, opt)
    losses = []
    acc = []
    for step in range(220):
        x, y = next(batches)
        ctx.targets(y)
        if step >= 100:
            lam = float(beta.sample())
            perm = torch.randperm(len(y), generator=gen)
            out = model(lam * x + (1 - lam) * x[perm])
            loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
        else:
            out = model(x)
            loss = F.cross_entropy(out, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step in (99, 219):
            xe, ye = next(batches)
            with torch.no_grad():
                acc.append(float((model(xe).argmax(1) == ye).float().mean()))
    ctx.check("loss fell before mixup", _fell(losses[:100]))
    ctx.check(
        "training loss after mixup over 1.3x the loss just before",
        _mean(losses[110:220]) > 1.3 * _mean(losses[90:100]),
    )
    ctx.check("clean accuracy at the end not below before mixup", acc[1] >= acc[0] - 0.02)
    ctx.check("finite", _finite(losses))


_MORSE = {c: i for i, c in enumerate("ETIANMSURWDKGOHVFLPJBXCYZQ")}


@scenario(
    family="morse_key_fist_t5_transcriber",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Morse-key fist transcriber: a tiny Hugging Face T5 (built from a config: d_model 32, "
    "one encoder and one decoder layer, tied input/output embeddings) reading a keyed "
    "sequence of symbol tokens and writing the letters in order; seq2seq cross-entropy, AdamW "
    "with a linear warm-up over 20 steps, clipping at 1.0. Healthy.",
)
def h574_morse_t5(ctx):
    from transformers import T5Config, T5ForConditionalGeneration

    gen = seeded(5752)
    config = T5Config(
        vocab_size=40,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=True,
    )
    model = T5ForConditionalGeneration(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    ctx.attach(model, opt)
    losses = []
    for _ in range(120):
        letters = torch.randint(0, 26, (16, 8), generator=gen)
        src = letters + 2
        tgt = (letters * 7 + 3) % 26 + 2
        ctx.targets(tgt)
        loss = model(input_ids=src, labels=tgt).loss
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell and stayed finite", _fell(losses))


@scenario(
    family="blacksmith_quench_hardness_onecycle_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Blacksmith quench-hardness class classifier (ReLU MLP on steel carbon, forge "
    "temperature, soak time, quench medium temperature, section thickness, agitation and "
    "temper colour, 4 hardness classes; cross-entropy with label smoothing 0.1, SGD momentum "
    "0.9, OneCycleLR to 0.1, clipping at 2.0, noisy batches). Healthy.",
)
def h574_blacksmith_onecycle(ctx):
    gen = seeded(5753)
    model = _Net(7, 48, out=4, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 48, 7, 4, 53, noise=1.3),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ctx.check("loss fell and stayed finite", _fell(losses))
