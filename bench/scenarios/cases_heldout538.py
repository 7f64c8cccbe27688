"""Held-out set 538 (``h538_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: snow-groomer piste-firmness regressor with a warm-up peak lr typed 10x
(sharpness_above_limit, plain SGD); alpine-horn bore-resonance regressor with a loss-weight entry
typed 500 for 0.5 for one step (gradient_spike, SGD Nesterov); clog-sole alder-drying regressor
taking the log of a moisture reading that comes in as 0 (nonfinite, Adamax); coppice hazel-rod
yield regressor with one rod weighed in grams (data_outlier, SGD momentum); synchronised-swimming
lift-height hypernetwork whose generator group lr is scaled by a stray 1e-5 (update_ratio_out_of_range,
Adam); mill-race surge ReLU IRNN with recurrent identity init x1.25 (exploding_gradients, RMSprop);
horse-gin gait classifier with its temperature given in ms (softmax_collapse, RAdam); bark-peel tan
yield regressor with hand-written decay sign flipped (loss_divergence, Adagrad); rick-thatch
weathering BCE detector with weight decay lost to a key typo (output_logit_divergence, AdamW);
hay-meadow dew-trace Conv1d regressor fed ppm under fp16 autocast (amp_overflow, Adam).
Controls: limekiln burn-stage classifier with annealed Gaussian gradient noise (SGD momentum),
trials-unicycle hop-height tied-weight autoencoder regressor (NAdam, accumulation,
ReduceLROnPlateau), stilt-walking gait classifier (fp16 + GradScaler, OneCycleLR, label smoothing,
clipping, SGD Nesterov).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    grads=None,
):
    """Attach, then train. ``weight(step)`` multiplies the backpropagated loss (the logged loss
    is the plain one); ``grads(step)`` edits gradients before clipping. Stops after a
    non-finite loss once ``ctx.step`` has seen it."""
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
        total = loss * weight(step) if weight is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if grads is not None:
            grads(step)
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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the batch loss by power iteration (Hessian-vector products)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    g = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(g, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- 1. sharpness above limit: warm-up peak lr typed 10x -----------------------------------------


@scenario(
    family="snow_groomer_piste_firmness_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Snow-groomer piste-firmness regressor (tanh MLP on snow temperature, tiller depth, "
    "blade pressure, track speed, new-snow depth and air humidity, MSE, plain SGD, linear "
    "warm-up over 60 steps). The warm-up's peak lr is typed 2.5 for 0.25: as the lr ramps up "
    "it passes 2/sharpness (lr x top Hessian eigenvalue over 2, measured in the run), the loss "
    "oscillates and then blows up.",
)
def h538_snow_groomer_warmup_peak_typo(ctx):
    gen = seeded(5381)
    model = _Net(6, 48, 1, nn.Tanh)
    peak = 2.5  # meant 0.25
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / 60, 1.0))
    batches = _readings(gen, 64, 6, 53810)
    products = []

    def before(step):
        if step % 10 == 0 and step <= 60:
            x, y = next(batches)
            products.append(opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, x, y))

    losses, _ = _loop(ctx, model, opt, batches, 160, F.mse_loss, before=before, sched=sched)
    finite = [v for v in losses if math.isfinite(v)]
    ctx.check("lr x sharpness passes 2 during the warm-up", max(products) > 2.0)
    ctx.check(
        "loss blows up: non-finite or over 100x its best",
        len(finite) < len(losses) or max(finite) > 100 * min(finite),
    )
    ctx.check("the first 10 steps are finite and ordinary", _finite(losses[:10]))


# -- 2. gradient spike: loss-weight entry typed 500 for 0.5 for one step --------------------------


@scenario(
    family="alpine_horn_bore_resonance_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Alpine-horn bore-resonance regressor (SiLU MLP on bore taper, bell flare, wall "
    "thickness, spruce density, length and mouthpiece depth, MSE, SGD Nesterov, clipping at "
    "norm 5). A per-stage loss-weight table has the entry for the stage starting at step 120 "
    "typed 500 for 0.5; the stage is one step long: the backpropagated gradient bursts over "
    "50x its median while the logged (unweighted) loss is ordinary, clipping bounds the update, "
    "the run goes on.",
)
def h538_alpine_horn_loss_weight_typo(ctx):
    gen = seeded(5382)
    model = _Net(6, 64, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    table = {120: 500.0}  # meant 0.5 for that stage

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 53820),
        220,
        F.mse_loss,
        weight=lambda s: table.get(s, 1.0),
        clip=5.0,
    )
    pre = _median(norms[100:120])
    ctx.check("gradient at step 120 over 50x the median before", norms[120] > 50 * pre)
    ctx.check(
        "logged loss at step 120 ordinary (under 2x the median before)",
        losses[120] < 2 * _median(losses[100:120]),
    )
    ctx.check("gradient back under 5x the median by steps 150-170", max(norms[150:170]) < 5 * pre)
    ctx.check("trained and finite", _fell(losses))


# -- 3. nonfinite: log of a moisture reading that comes in as 0 -----------------------------------


class _LogFeature(nn.Module):
    """Log of the moisture column (no floor), the other columns passed through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _ClogNet(nn.Module):
    def __init__(self, d_in=5, hidden=48):
        super().__init__()
        self.log_feature = _LogFeature()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.log_feature(x)))))
        return self.head(h).squeeze(-1)


@scenario(
    family="clog_sole_alder_drying_log_moisture_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("log_feature",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Clog-sole alder-drying regressor (GELU MLP on the log of wood moisture, kiln "
    "temperature, sole thickness, airflow and stacking height, MSE, Adamax). Moisture is "
    "always positive in the workshop's logs, so log_feature takes the log with no floor; at "
    "step 90 a shard from a new meter that writes 0 for 'dry' arrives: log(0) = -inf, fc1's "
    "output mixes +inf and -inf, the loss is NaN at step 90.",
)
def h538_clog_sole_log_of_zero_moisture(ctx):
    gen = seeded(5383)
    model = _ClogNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    base = _readings(gen, 64, 5, 53830)

    def batches():
        for x, y in base:
            x = x.clone()
            x[:, 0] = torch.exp(0.5 * x[:, 0]) * 0.3  # moisture fraction, positive
            yield x, y

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:8, 0] = 0.0  # the new meter's 'dry'
        return x, y

    seen = {}

    def hook(mod, inp, out):
        seen["inf"] = bool(torch.isinf(out).any())

    model.log_feature.register_forward_hook(hook)
    losses, _ = _loop(ctx, model, opt, batches(), 200, F.mse_loss, alter=alter)
    ctx.check("finite before step 90", _finite(losses[:90]))
    ctx.check("loss non-finite at step 90", len(losses) == 91 and not math.isfinite(losses[90]))
    ctx.check("log_feature's output has an infinity at step 90", seen.get("inf", False))


# -- 4. data outlier: one rod weighed in grams ----------------------------------------------------


@scenario(
    family="coppice_hazel_rod_yield_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Coppice hazel-rod yield regressor (ReLU MLP on stool age, rod count, canopy gap, soil "
    "depth, deer browsing and rainfall, MSE, SGD momentum, clipping at norm 1). At step 110 one "
    "rod's yield was entered in grams instead of kilograms (x1000) in a single batch: the "
    "loss jumps over 100x and the gradient over 20x for that step, clipping bounds the update, "
    "the run recovers.",
)
def h538_coppice_rod_in_grams(ctx):
    gen = seeded(5384)
    model = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == 110:
            y = y.clone()
            y[3] = y[3] * 1000.0 + 900.0  # grams, not kilograms
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 53840), 200, F.mse_loss, alter=alter, clip=1.0
    )
    pre = _median(losses[90:110])
    ctx.check("loss at step 110 over 100x the median before", losses[110] > 100 * pre)
    ctx.check(
        "gradient at step 110 over 20x the median before", norms[110] > 20 * _median(norms[90:110])
    )
    ctx.check("recovers: last 20 under 2x the pre-outlier median", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 5. update ratio: a hypernetwork's generator frozen by a stray lr factor ----------------------


class _HyperLift(nn.Module):
    """A hypernetwork: the lift context is encoded, ``hyper`` generates the weights of a small
    target net that maps the swimmers' readings to lift height; ``skip`` is a linear shortcut."""

    def __init__(self, d_ctx=4, d_x=6, hidden=16):
        super().__init__()
        self.d_x, self.hidden = d_x, hidden
        n = hidden * d_x + hidden + hidden
        self.encoder = nn.Linear(d_ctx, 16)
        self.hyper = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, n))
        self.skip = nn.Linear(d_x, 1)
        nn.init.normal_(self.hyper[2].weight, std=0.05)

    def forward(self, inp):
        c, x = inp[:, :4], inp[:, 4:]
        w = self.hyper(torch.tanh(self.encoder(c)))
        h, d = self.hidden, self.d_x
        w1 = w[:, : h * d].reshape(-1, h, d)
        b1 = w[:, h * d : h * d + h]
        w2 = w[:, h * d + h :]
        z = torch.relu(torch.einsum("bhd,bd->bh", w1, x) + b1)
        return (z * w2).sum(-1) + self.skip(x).squeeze(-1)


@scenario(
    family="synchronised_swimming_lift_height_hypernetwork",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("hyper", "hyper.0", "hyper.2"),
    diverges=None,
    heldout=True,
    note="Synchronised-swimming lift-height hypernetwork (a context encoder of pool depth, "
    "team size, routine type and tempo feeds 'hyper', which generates the weights of a ReLU "
    "target net over the base swimmers' readings; a linear skip; MSE, Adam, param groups). "
    "The config's 'lr_scale: 1e-5', meant as the warm-up start factor, is read as the "
    "generator group's lr multiplier: hyper trains at 2e-8 while the encoder and skip train "
    "at 2e-3; hyper's weights move under 1e-4 of their norm, the loss stays finite and "
    "plateaus at what the skip can fit.",
)
def h538_synchro_hypernet_generator_frozen(ctx):
    gen = seeded(5385)
    model = _HyperLift()
    opt = torch.optim.Adam(
        [
            {"params": model.hyper.parameters(), "lr": 2e-3 * 1e-5},  # stray lr_scale
            {"params": list(model.encoder.parameters()) + list(model.skip.parameters())},
        ],
        lr=2e-3,
    )
    h0, s0 = _flat(model.hyper), _flat(model.skip)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 53850), 220, F.mse_loss)
    ctx.check("hyper moved under 1e-4 of its norm", _rel(_flat(model.hyper), h0) < 1e-4)
    ctx.check("skip moved over 1e-2 of its norm", _rel(_flat(model.skip), s0) > 1e-2)
    ctx.check("loss finite and not blown up", _finite(losses) and max(losses) < 10 * losses[0])


# -- 6. exploding gradients: IRNN with identity init x1.25 ---------------------------------------


class _SurgeIRNN(nn.Module):
    def __init__(self, d_in=3, hidden=32, gain=1.25):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.inp.weight.mul_(0.3)
            self.inp.bias.zero_()
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _surges(gen, batch=32, length=35):
    while True:
        x = 0.5 * torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh(x[:, -8:, 0].sum(1) - 0.5 * x[:, -8:, 1].sum(1))
        yield x, y


@scenario(
    family="mill_race_flow_surge_relu_irnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Mill-race flow-surge IRNN (ReLU recurrent net over 35 readings of sluice opening, "
    "head level and rainfall, predicting the surge at the wheel, MSE, RMSprop, clipping at "
    "norm 1). The recurrent weight is initialised to 1.25 x identity (the paper's 1.0 "
    "'plus a little to remember longer'): the gradient grows backwards through time, the "
    "first state's gradient is over 50x the last one's.",
)
def h538_mill_race_irnn_gain(ctx):
    gen = seeded(5386)
    model = _SurgeIRNN()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ratios = []

    def grads(step):
        s = model.states
        if s[0].grad is not None and float(s[-1].grad.norm()) > 0:
            ratios.append(float(s[0].grad.norm() / s[-1].grad.norm()))

    losses, norms = _loop(ctx, model, opt, _surges(gen), 150, F.mse_loss, grads=grads, clip=1.0)
    ctx.check(
        "first state's gradient over 50x the last one's in the first 10 steps",
        _median(ratios[:10]) > 50,
    )
    ctx.check("gradient norm over clip (1.0) in most steps", _median(norms) > 1.0)
    ctx.check("loss recorded every step", len(losses) == 150)


# -- 7. softmax collapse: temperature given in milliseconds --------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, 48, classes, nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="horse_gin_gait_class_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Horse-gin gait classifier (GELU MLP on sweep-arm torque, harness tension, hoof-beat "
    "interval, walk-circle radius and load, 5 gait classes, cross-entropy, RAdam). The "
    "logit temperature of 1 s is written into the config as 1 with a 'ms' unit and converted "
    "to 0.001: the logits are divided by 0.001, the softmax saturates and most rows' largest "
    "probability rounds to exactly 1.0.",
)
def h538_horse_gin_temperature_in_ms(ctx):
    gen = seeded(5387)
    model = _TempNet(5, 5, temperature=1.0 / 1000)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    batches = _grades(gen, 64, 5, 5, 53870, spread=1.2)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, _ = next(batches)
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    ctx.check(
        "over half the rows' max probability is exactly 1.0",
        float((p.max(-1).values == 1.0).float().mean()) > 0.5,
    )
    ctx.check("some probabilities are exactly 0", bool((p == 0).any()))
    ctx.check("loss recorded every step", len(losses) == 150)


# -- 8. loss divergence: hand-written decay with its sign flipped --------------------------------


@scenario(
    family="bark_peel_oak_tan_yield_tanh_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Bark-peel oak tan-yield regressor (tanh MLP on sap rise date, trunk girth, peel "
    "thickness, drying days and tannin assay, MSE, Adagrad lr 0.03). The hand-written "
    "decoupled weight decay (wd 1) is applied as p *= 1 + lr * wd instead of 1 - lr * wd: "
    "the weights grow geometrically while Adagrad's steps shrink, the net first fits and "
    "then the loss climbs slowly, with no jump, to several times its best.",
)
def h538_bark_peel_decay_sign(ctx):
    gen = seeded(5388)
    model = _Net(5, 48, 1, nn.Tanh)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    w0 = float(_flat(model).norm())
    decay = [p for n, p in model.named_parameters() if "weight" in n]

    def after(step, loss):
        with torch.no_grad():
            for p in decay:
                p.mul_(1 + 0.03 * 0.25)  # meant 1 - lr * wd

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 5, 53880), 260, F.mse_loss, after=after)
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    ctx.check("last 10 over 3x the best 10-step mean", smooth[-1] > 3 * best)
    ctx.check("the best comes early (fits first)", smooth.index(best) < len(smooth) - 60)
    jumps = [smooth[i + 1] - smooth[i] for i in range(len(smooth) - 1)]
    ctx.check(
        "no jump: no 10-step mean rises over half the climb at once",
        max(jumps) < 0.5 * (smooth[-1] - best),
    )
    ctx.check("weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("finite", _finite(losses))


# -- 9. output logit divergence: separable detector, weight decay lost to a key typo -------------


@scenario(
    family="rick_thatch_weathering_bce_detector",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Rick-thatch weathering detector (ReLU MLP on straw moisture, ridge angle, moss cover, "
    "wind exposure, rick age and rainfall, BCE with logits, AdamW lr 1e-2). The config sets "
    "'weight_decacy: 0.1', the loader falls back to 0: on data separable with a margin "
    "nothing holds the head back, its median |logit| grows over 20x and is still growing at "
    "the end.",
)
def h538_rick_thatch_decay_key_typo(ctx):
    gen = seeded(5389)
    model = _Net(6, 32, 1, nn.ReLU)
    cfg = {"lr": 1e-2, "weight_decacy": 0.1}
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0)
    )
    g = torch.Generator().manual_seed(53890)
    w = torch.randn(6, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 6, generator=gen)
            s = x @ w
            x = x + 0.6 * torch.sign(s)[:, None] * w / w.norm()  # a margin
            yield x, (s > 0).float()

    med = []

    def after(step, loss):
        with torch.no_grad():
            med.append(float(model(probe).abs().median()))

    probe = next(batches())[0]
    losses, _ = _loop(
        ctx, model, opt, batches(), 240, F.binary_cross_entropy_with_logits, after=after
    )
    ctx.check("head's median |logit| over 20x its first value", med[-1] > 20 * med[0])
    ctx.check("still growing: last over the value 60 steps before", med[-1] > med[-61])
    ctx.check("fits: last loss under 0.05", losses[-1] < 0.05)
    ctx.check("finite", _finite(losses))


# -- 10. amp overflow: a dew sensor reporting ppm under fp16 autocast -----------------------------


class _DewConv(nn.Module):
    def __init__(self, channels=2, width=16):
        super().__init__()
        self.conv = nn.Conv1d(channels, width, 5, padding=2)
        self.act = nn.GELU()
        self.fc = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        h = self.act(self.conv(x)).mean(-1)
        return self.head(self.act(self.fc(h))).squeeze(-1)


@scenario(
    family="hay_meadow_cut_timing_fp16_dew_conv1d_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("conv",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Hay-meadow cut-timing regressor (Conv1d over 24 hourly readings of dew and grass "
    "moisture, GELU, mean over time, MSE, Adam, fp16 autocast + GradScaler). At step 80 the "
    "field station's firmware starts sending grass moisture in ppm instead of a fraction "
    "(x1e6): conv's fp16 output passes 65504 and overflows to inf (finite in float32), the "
    "loss is non-finite at step 80.",
)
def h538_hay_meadow_moisture_in_ppm(ctx):
    gen = seeded(53810)
    model = _DewConv()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    losses, over = [], {}

    def batches():
        while True:
            x = torch.rand(32, 2, 24, generator=gen)
            y = 2 * x[:, 0].mean(-1) - x[:, 1, -6:].mean(-1)
            yield x, y

    stream = batches()
    for step in range(160):
        x, y = next(stream)
        if step >= 80:
            x = x.clone()
            x[:, 1] = x[:, 1] * 1e6  # ppm
        with torch.autocast("cpu", dtype=torch.float16):
            conv_out = model.conv(x)
            pred = model(x)
        loss = F.mse_loss(pred.float(), y)
        if step == 80:
            over["fp16_inf"] = bool(torch.isinf(conv_out).any())
            with torch.no_grad():
                over["fp32_finite"] = bool(torch.isfinite(model.conv(x)).all())
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
    ctx.check("finite before step 80", _finite(losses[:80]))
    ctx.check("loss non-finite at step 80", len(losses) == 81 and not math.isfinite(losses[80]))
    ctx.check("conv's fp16 output has an infinity at step 80", over.get("fp16_inf", False))
    ctx.check("the same batch is finite in float32", over.get("fp32_finite", False))


# -- 11. control: annealed Gaussian noise on every gradient --------------------------------------


@scenario(
    family="limekiln_burn_stage_gelu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Limekiln burn-stage classifier (GELU MLP on draw-hole temperature, flue colour, "
    "stone size, fuel ratio, hours and wind, 4 stages, cross-entropy, SGD momentum, cosine "
    "schedule). Annealed Gaussian gradient noise (Neelakantan et al.): every gradient gets "
    "noise of variance 0.3 / (1 + t)^0.55, so early on the gradient norm is dominated by "
    "noise and jumps about; alarming to look at, healthy: the loss falls.",
)
def h538_limekiln_annealed_grad_noise(ctx):
    gen = seeded(53811)
    model = _Net(6, 48, 4, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 200)
    noise_gen = torch.Generator().manual_seed(538110)
    ratio = []

    def grads(step):
        std = math.sqrt(0.3 / (1 + step) ** 0.55)
        clean = grad_norm(model)
        noise_sq = 0.0
        for p in model.parameters():
            n = std * torch.randn(p.shape, generator=noise_gen)
            noise_sq += float((n * n).sum())
            p.grad.add_(n)
        ratio.append(math.sqrt(noise_sq) / max(clean, 1e-12))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 6, 4, 538111, spread=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        grads=grads,
        sched=sched,
    )
    ctx.check(
        "noise norm over the clean gradient's in the first 20 steps", _median(ratio[:20]) > 1.0
    )
    ctx.check("loss fell (last 10 under 0.5x the first 10)", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))


# -- 12. control: tied-weight autoencoder regressor, accumulation, ReduceLROnPlateau -------------


class _TiedLift(nn.Module):
    def __init__(self, d_in=8, code=4):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))
        self.head = nn.Linear(code, 1)

    def forward(self, x):
        z = torch.tanh(self.enc(x))
        recon = F.linear(z, self.enc.weight.t(), self.dec_bias)  # tied decoder
        return recon, self.head(z).squeeze(-1)


@scenario(
    family="trials_unicycle_hop_height_tied_autoencoder",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Trials-unicycle hop-height regressor on a tied-weight autoencoder's code (crank "
    "angle, pedal force, tyre pressure, rider mass, seat height, takeoff speed, lean and "
    "wheel size; reconstruction MSE + hop-height Huber, NAdam, accumulation over 2 "
    "micro-batches, ReduceLROnPlateau, clipping at 2). Control: trains normally.",
)
def h538_trials_unicycle_tied_autoencoder(ctx):
    gen = seeded(53812)
    model = _TiedLift()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(538120)
    mix = torch.randn(3, 8, generator=g)
    losses = []
    for _step in range(180):
        total = 0.0
        for _ in range(2):
            z = torch.randn(32, 3, generator=gen)
            x = z @ mix + 0.05 * torch.randn(32, 8, generator=gen)
            y = torch.tanh(z[:, 0] - 0.5 * z[:, 1])
            recon, pred = model(x)
            loss = F.mse_loss(recon, x) + F.huber_loss(pred, y)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        plateau.step(total)
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell (last 10 under 0.6x the first 10)", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))


# -- 13. control: fp16 + GradScaler, OneCycleLR, label smoothing, clipping -----------------------


@scenario(
    family="stilt_walking_gait_phase_fp16_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Stilt-walking gait-phase classifier (ReLU MLP on stilt tilt, foot-strap load, knee "
    "angle, cadence, step length and hip sway, 5 phases, cross-entropy with label smoothing "
    "0.1, SGD Nesterov, OneCycleLR, fp16 autocast + GradScaler, clipping at 1 after "
    "unscaling, noisy readings). Control: trains normally.",
)
def h538_stilt_walking_fp16_onecycle(ctx):
    gen = seeded(53813)
    model = _Net(6, 64, 5, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _grades(gen, 64, 6, 5, 538130, spread=0.8)
    losses = []
    for _step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell (last 10 under 0.6x the first 10)", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
