"""Held-out set 581 (``h581_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: clarinet-ligature screw-torque 10-deep ReLU MLP initialised with kaiming std times 1.7
(exploding_gradients, SGD Nesterov); sugar-cane machete-stroke SiLU regressor whose fc1 group lr
is typed 2e-9 for 2e-3 (update_ratio_out_of_range, Adamax, param groups); crossbow limb
draw-weight Gaussian NLL net taking the log of a gauge reading with no clamp (nonfinite, RAdam);
whinstone quarry blast-fragment GELU regressor fed charge mass in raw grams under fp16 autocast
(amp_overflow, AdamW); cheddaring curd-slab turn classifier whose temperature is read as 2e-3
(softmax_collapse, Adagrad); glissade snow-descent ReLU classifier with Adam lr typed 8e-2
(loss_of_plasticity, Adam); lute gut-string twist GELU classifier fed one shard in raw
micrometres (data_outlier, RMSprop); cheese-wire cut BCE classifier whose accumulation step
multiplies by the micro-batch count instead of dividing once (gradient_spike, NAdam);
rain-shadow precipitation tanh regressor whose StepLR gamma is typed 10 for 0.1
(sharpness_above_limit, plain SGD); lime-slaking heat tanh regressor whose hand-written
decoupled weight decay multiplies by 1 + lr*wd (loss_divergence, SGD momentum).
Controls: transhumance herder-call LSTM seq2seq with teacher forcing annealed from 1 to 0 (the
logged loss rises, alarming-looking, Adam, clipping); cave-pearl pool drip-rhythm conv1d classifier
(AdamW, OneCycleLR, label smoothing, accumulation 2); niddy-noddy skein yarn tied-weight
autoencoder (Adadelta, ReduceLROnPlateau, noisy batches).
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
    after=None,
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
        if after is not None:
            after(step)
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


# -- 1. exploding gradients: kaiming std multiplied by 1.7 in a 10-deep ReLU MLP ------------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain * math.sqrt(2.0 / m.in_features))
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.layers:
            x = F.relu(m(x))
        return self.head(x).squeeze(-1)


def _layer_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    F.mse_loss(model(x), y).backward()
    g = [float(m.bias.grad.norm()) for m in model.layers]
    model.zero_grad(set_to_none=True)
    return g


@scenario(
    family="clarinet_ligature_screw_torque_deep_relu_mlp",
    optimizer="SGD(momentum=0.9, nesterov=True)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Clarinet ligature screw-torque regressor (10-deep ReLU MLP on reed strength, screw "
    "turns, ligature material, mouthpiece facing, humidity and playing pitch, MSE, SGD "
    "Nesterov). The init helper multiplies the kaiming std by 1.7 (a gain meant for the "
    "input-scaling step pasted into the init): every layer amplifies the backward signal, "
    "layers.0's bias gradient (its backward signal) is over 20x the last hidden layer's and over 100x a gain-1.0 "
    "replica's, and the first updates blow the loss up.",
)
def h581_ligature_kaiming_gain(ctx):
    gen = seeded(5811)
    model = _Deep(6, 32, 10, gain=1.7)
    torch.manual_seed(58110)
    ref = _Deep(6, 32, 10, gain=1.0)
    batches = _readings(gen, 64, 6, 58111)
    x0, y0 = next(batches)
    g_bad = _layer_grads(model, x0, y0)
    g_ref = _layer_grads(ref, x0, y0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    losses, norms = _loop(ctx, model, opt, batches, 100, F.mse_loss)
    ctx.check("layers.0 bias gradient over 20x the last hidden layer's", g_bad[0] > 20 * g_bad[-1])
    ctx.check("layers.0 bias gradient over 100x the gain-1.0 replica's", g_bad[0] > 100 * g_ref[0])
    ctx.check(
        "loss blew up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


# -- 2. update ratio out of range: fc1 group lr typed 2e-9 for 2e-3 ------------------------------


@scenario(
    family="sugar_cane_cutting_machete_stroke_silu_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Sugar-cane cutting machete-stroke energy regressor (SiLU MLP on stalk diameter, "
    "node spacing, blade angle, swing speed, fibre content and moisture, MSE, Adamax with one "
    "param group per layer). The fc1 group's lr is typed 2e-9 for 2e-3 in the config: fc1's "
    "updates are about a millionth of the others', its weights never move, while fc2 and the "
    "head train and the loss still falls.",
)
def h581_machete_group_lr_typo(ctx):
    gen = seeded(5812)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 2e-9},
            {"params": model.fc2.parameters(), "lr": 2e-3},
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    w1, w2 = _flat(model.fc1), _flat(model.fc2)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 58120), 200, F.mse_loss)
    d1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    d2 = float((_flat(model.fc2) - w2).norm() / w2.norm())
    ctx.check("fc1 relative change below 1e-5", d1 < 1e-5)
    ctx.check("fc2 relative change over 1e-2", d2 > 1e-2)
    ctx.check("loss fell", _fell(losses, ratio=0.9))


# -- 3. nonfinite: log of a gauge reading with no clamp ------------------------------------------


class _LogGauge(nn.Module):
    """log of the draw-gauge column (no clamp), other columns passed through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _CrossbowNLL(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.gauge_log = _LogGauge()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(self.gauge_log(x)))))
        return torch.cat([self.mean_head(h), F.softplus(self.var_head(h)) + 1e-4], 1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


NAN_ONSET = 90


@scenario(
    family="crossbow_limb_draw_weight_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("gauge_log",),
    diverges=NAN_ONSET,
    onset=NAN_ONSET,
    heldout=True,
    note="Crossbow limb draw-weight Gaussian NLL net (SiLU MLP with mean and softplus "
    "variance heads on draw-gauge reading, limb thickness, prod length, string material, "
    "temperature and bolt mass, RAdam). The model takes log of the draw-gauge reading with no "
    "clamp; at step 90 a batch holds gauge readings of exactly 0 (a gauge that dropped out "
    "logs zero), log(0) = -inf in gauge_log and the loss is NaN at step 90.",
)
def h581_crossbow_log_gauge(ctx):
    gen = seeded(5813)
    model = _CrossbowNLL(6)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    seen = []
    model.gauge_log.register_forward_hook(
        lambda m, i, o: seen.append(bool((~torch.isfinite(o)).any()))
    )
    base = _readings(gen, 64, 6, 58130)

    def batches():
        for x, y in base:
            x = x.clone()
            x[:, 0] = torch.exp(0.3 * x[:, 0])  # a positive gauge reading
            yield x, y

    def alter(step, x, y):
        if step == NAN_ONSET:
            x = x.clone()
            x[:8, 0] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, batches(), 150, _gauss_nll, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("trained finitely before step 90", _fell(losses[:NAN_ONSET]))
    ctx.check("gauge_log finite before step 90", not any(seen[:NAN_ONSET]))
    ctx.check("gauge_log non-finite at step 90", len(seen) > NAN_ONSET and seen[NAN_ONSET])
    ctx.check("loss first non-finite at step 90", first_bad == NAN_ONSET)


# -- 4. amp overflow: charge mass in raw grams under fp16 autocast -------------------------------

AMP_ONSET = 80


@scenario(
    family="whinstone_quarry_blast_fragment_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=AMP_ONSET,
    onset=AMP_ONSET,
    heldout=True,
    note="Whinstone quarry blast-fragment size regressor (GELU MLP on charge mass, burden, "
    "spacing, stemming, hole depth and rock joint spacing, MSE, AdamW, fp16 autocast + "
    "GradScaler). From step 80 a new blast log gives the charge mass in raw grams (about "
    "2e5) instead of the standardised column; fc1 runs in fp16 under autocast, its output "
    "passes 65504 and is non-finite (the same batch is finite in float32), and the loss is "
    "non-finite at step 80.",
)
def h581_whinstone_raw_grams(ctx):
    gen = seeded(5814)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.setdefault("fc1", []).append(
            (o.dtype, bool((~torch.isfinite(o)).any()))
        )
    )
    batches = _readings(gen, 64, 6, 58140)
    losses, fc1_bad, bad = [], [], None
    for step in range(130):
        x, y = next(batches)
        if step >= AMP_ONSET:
            x = x.clone()
            x[:, 0] = 2.0e5 + 3.0e4 * x[:, 0]
            bad = (x, y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_bad.append(seen["fc1"][-1][1])
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
    ran_fp16 = all(d == torch.float16 for d, _ in seen["fc1"])
    with torch.no_grad():
        fp32 = float(F.mse_loss(model(bad[0]), bad[1])) if bad is not None else math.nan
    ctx.check("fc1 ran in fp16", ran_fp16)
    ctx.check("trained finitely before the bug", _fell(losses[:AMP_ONSET]))
    ctx.check("fc1 output finite before step 80", not any(fc1_bad[:AMP_ONSET]))
    ctx.check("fc1 output non-finite at step 80", len(fc1_bad) > AMP_ONSET and fc1_bad[AMP_ONSET])
    ctx.check("loss first non-finite at step 80", first_bad == AMP_ONSET)
    ctx.check("same batch finite in float32", math.isfinite(fp32))


# -- 5. softmax collapse: temperature read as 2e-3 -----------------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, hidden, out, temperature):
        super().__init__(d_in, hidden, out, act=nn.ReLU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="cheddaring_curd_slab_turn_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Cheddaring curd-slab turn classifier (ReLU MLP on slab height, whey pH, curd "
    "temperature, minutes since milling, stack count and knit firmness; 6 turn classes, "
    "cross-entropy, Adagrad). The softmax temperature is read from a config in seconds-per-"
    "millisecond units, 2e-3 instead of 2.0: the head's logits are divided by 2e-3 and over 40% "
    "of rows give their target a float32 probability of exactly 1.0 (under 5% at init).",
)
def h581_cheddaring_temperature(ctx):
    gen = seeded(5815)
    model = _TempNet(6, 48, 6, temperature=2e-3)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    batches = _classes(gen, 64, 6, 6, 58150)
    xe, ye = next(batches)
    with torch.no_grad():
        c0 = collapsed_fraction(model(xe), ye)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        c1 = collapsed_fraction(model(xe), ye)
    ctx.check("under 5% collapsed at init", c0 < 0.05)
    ctx.check("over 40% of rows' target probability exactly 1.0", c1 > 0.4)
    ctx.check("loss finite", _finite(losses))


# -- 6. loss of plasticity: Adam lr typed 8e-2 ---------------------------------------------------


@scenario(
    family="glissade_snow_descent_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Glissade snow-descent technique classifier (ReLU MLP on slope angle, snow "
    "hardness, boot-heel depth, ice-axe drag, speed and run-out length; 5 classes, "
    "cross-entropy, Adam). The lr is typed 8e-2 for 8e-4: the first large updates push fc2's "
    "pre-activations negative for every input, over 40% of act2's units are dead (never "
    "positive on a 512-sample probe) and stay dead through the last 50 steps.",
)
def h581_glissade_adam_lr_typo(ctx):
    gen = seeded(5816)
    model = _Net(6, hidden=48, out=5)
    nn.init.constant_(model.fc2.bias, 0.0)
    opt = torch.optim.Adam(model.parameters(), lr=8e-2)
    probe = torch.cat([next(_classes(gen, 512, 6, 5, 58160))[0]])
    with torch.no_grad():
        d0 = dead_fraction(model.features(probe))
    dead = []
    base = _classes(gen, 64, 6, 5, 58160)

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(probe)))

    losses, _ = _loop(ctx, model, opt, base, 200, F.cross_entropy, classifier=True, after=after)
    ctx.check("under 10% dead at init", d0 < 0.1)
    ctx.check("over 40% of act2 dead at the end", dead[-1] > 0.4)
    ctx.check("stayed over 40% dead for the last 50 steps", min(dead[-50:]) > 0.4)
    ctx.check("loss finite", _finite(losses))


# -- 7. data outlier: one shard in raw micrometres -----------------------------------------------

OUTLIER_STEP = 120


@scenario(
    family="lute_gut_string_twist_gelu_classifier",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Lute gut-string twist-grade classifier (GELU MLP on gauge, twist count, gut "
    "moisture, polish passes, tension at pitch and breaking load; 4 grades, cross-entropy, "
    "RMSprop, clipping at 1.0). The shard served at step 120 was exported with the gauge in "
    "raw micrometres (about 800) instead of standardised: the loss is over 20x its running "
    "median and the gradient over 10x for that one step, clipping holds the update, and the "
    "run recovers.",
)
def h581_lute_raw_micrometres(ctx):
    gen = seeded(5817)
    model = _Net(6, hidden=48, out=4, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == OUTLIER_STEP:
            x = x.clone()
            x[:, 0] = 800.0 + 50.0 * x[:, 0]
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 4, 58170),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    before_l = _median(losses[OUTLIER_STEP - 20 : OUTLIER_STEP])
    before_g = _median(norms[OUTLIER_STEP - 20 : OUTLIER_STEP])
    ctx.check("loss over 20x its median at the shard", losses[OUTLIER_STEP] > 20 * before_l)
    ctx.check("gradient over 10x its median at the shard", norms[OUTLIER_STEP] > 10 * before_g)
    ctx.check(
        "recovered: last 20 steps under 1.5x the pre-shard median",
        _mean(losses[-20:]) < 1.5 * before_l,
    )
    ctx.check("trained and finite", _fell(losses))


# -- 8. gradient spike: accumulation multiplies by the micro-batch count -------------------------

SPIKE_STEP = 140


@scenario(
    family="cheese_wire_cut_clean_bce_classifier",
    optimizer="NAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Cheese-wire cut-cleanliness BCE classifier (GELU MLP on wheel age, paste "
    "temperature, wire gauge, pull speed, rind hardness and moisture, binary clean/smeared, "
    "NAdam, 8 micro-batches accumulated per step). The step resumed at 140 after a config "
    "reload scales each micro-batch's loss by 8 instead of 1/8: the accumulated gradient is "
    "64x, over 30x its running median for that one step, while the logged loss is ordinary; "
    "training goes on normally after.",
)
def h581_cheese_wire_accumulation(ctx):
    gen = seeded(5818)
    model = _Net(6, hidden=32, out=1, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(58180)
    w = torch.randn(6, generator=g)
    ctx.attach(model, opt)
    losses, norms = [], []
    accum = 8
    for step in range(200):
        total = 0.0
        for _ in range(accum):
            x = torch.randn(16, 6, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(16, generator=gen)) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            scale = accum if step == SPIKE_STEP else 1.0 / accum
            (loss * scale).backward()
            total += float(loss.detach()) / accum
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        logged = torch.tensor(total)
        losses.append(total)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    med_g = _median(norms[SPIKE_STEP - 20 : SPIKE_STEP])
    med_l = _median(losses[SPIKE_STEP - 20 : SPIKE_STEP])
    ctx.check("gradient over 30x its median at step 140", norms[SPIKE_STEP] > 30 * med_g)
    ctx.check("logged loss ordinary at step 140", losses[SPIKE_STEP] < 2 * med_l)
    ctx.check("trained and finite", _fell(losses))


# -- 9. sharpness above limit: StepLR gamma typed 10 for 0.1 -------------------------------------

SHARP_MILESTONE = 60


@scenario(
    family="rain_shadow_precipitation_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=SHARP_MILESTONE,
    heldout=True,
    note="Rain-shadow leeward precipitation regressor (tanh MLP on ridge height, wind speed "
    "and direction, upwind humidity, lapse rate and distance behind the crest, MSE, plain SGD "
    "with StepLR(step_size=60)). gamma is typed 10 for 0.1, so at step 60 the lr jumps from "
    "0.1 to 1.0: lr x the loss's top Hessian eigenvalue goes from under 2 to over 2 and the "
    "loss blows up.",
)
def h581_rain_shadow_steplr_gamma(ctx):
    gen = seeded(5819)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=SHARP_MILESTONE, gamma=10.0)
    batches = _readings(gen, 128, 6, 58190)
    probe = next(batches)
    eig = {}

    def before(step):
        if step in (SHARP_MILESTONE - 1, SHARP_MILESTONE):
            eig[step] = (opt.param_groups[0]["lr"], _top_eig(model, F.mse_loss, *probe))

    losses, _ = _loop(ctx, model, opt, batches, 140, F.mse_loss, before=before, sched=sched)
    lr0, e0 = eig[SHARP_MILESTONE - 1]
    lr1, e1 = eig[SHARP_MILESTONE]
    ctx.check("lr x sharpness under 2 before the milestone", lr0 * e0 < 2)
    ctx.check("lr x sharpness over 2 at the milestone", lr1 * e1 > 2)
    ctx.check("trained before the milestone", _fell(losses[:SHARP_MILESTONE]))
    ctx.check(
        "loss blew up after (non-finite or over 100x its pre-milestone level)",
        not _finite(losses) or max(losses[SHARP_MILESTONE:]) > 100 * losses[SHARP_MILESTONE - 1],
    )


# -- 10. loss divergence: decoupled weight decay with the wrong sign ------------------------------


@scenario(
    family="lime_slaking_heat_release_tanh_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Lime-slaking heat-release regressor (tanh MLP on quicklime mass, water ratio, "
    "lump size, starting water temperature, stirring rate and kiln batch age, MSE, SGD "
    "momentum 0.9). A hand-written decoupled weight decay after each step does "
    "p.mul_(1 + lr * wd) instead of 1 - lr * wd: the net fits first, then every weight grows, "
    "the weights more than double and the loss climbs slowly, with no jump, to over twice its "
    "best.",
)
def h581_lime_decay_sign(ctx):
    gen = seeded(58110)
    model = _Net(6, hidden=48, act=nn.Tanh)
    lr, wd = 0.02, 0.5
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    w0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "weight" in n:
                    p.mul_(1 + lr * wd)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 58200), 300, F.mse_loss, after=after)
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    jumps = [smooth[i + 5] / smooth[i] for i in range(len(smooth) - 5)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("weights over 2x their init norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 2x its best", smooth[-1] > 2 * best)
    ctx.check("best reached before the last third", smooth.index(best) < 2 * len(smooth) // 3)
    ctx.check("no jump: 5-step moving mean never doubles", max(jumps) < 2.0)


# -- 11. healthy, alarming-looking: LSTM seq2seq with teacher forcing annealed 1 -> 0 ------------


class _Seq2Seq(nn.Module):
    """LSTM encoder-decoder; the decoder reads the previous answer note and the aligned
    encoder state (no attention)."""

    def __init__(self, vocab=5, hidden=64):
        super().__init__()
        self.src_emb = nn.Embedding(vocab + 1, 16)  # index vocab: a note lost to the wind
        self.tgt_emb = nn.Embedding(vocab + 1, 16)  # index vocab is the start token
        self.encoder = nn.LSTM(16, hidden, batch_first=True)
        self.decoder = nn.LSTM(16 + hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        self.vocab = vocab
        self.tf = 1.0

    def forward(self, src, tgt=None):
        enc, state = self.encoder(self.src_emb(src))
        b, t = src.shape
        tok = torch.full((b, 1), self.vocab, dtype=torch.long)
        logits = []
        for i in range(t):
            inp = torch.cat([self.tgt_emb(tok), enc[:, i : i + 1]], -1)
            h, state = self.decoder(inp, state)
            step_logits = self.out(h)
            logits.append(step_logits)
            pred = step_logits.argmax(-1)
            if tgt is not None and self.training:
                use = (torch.rand(b, 1) < self.tf).long()
                tok = use * tgt[:, i : i + 1] + (1 - use) * pred
            else:
                tok = pred
        return torch.cat(logits, 1)


def _call_pairs(gen, batch, length=8, vocab=5):
    """Herding-call phrase -> its answer: the running sum of the notes (mod vocab); 15% of the
    heard notes are lost to the wind (token vocab), so only the previous answer note tells."""
    while True:
        notes = torch.randint(0, vocab, (batch, length), generator=gen)
        lost = torch.rand(batch, length, generator=gen) < 0.15
        yield torch.where(lost, vocab, notes), torch.cumsum(notes, 1) % vocab


@scenario(
    family="transhumance_herder_call_lstm_seq2seq",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Transhumance herder-call answer model (LSTM encoder-decoder over 6-note phrases, "
    "cross-entropy, Adam, clipping at 1.0; each answer note is the running sum of the phrase's notes so far and 15% of the heard notes are lost, so the decoder leans on the previous answer note). Teacher forcing is annealed linearly from 1 to 0 "
    "over steps 60-240, the standard scheduled-sampling recipe: the logged training loss "
    "rises as the decoder feeds on its own predictions (alarming-looking), while the "
    "free-running loss on a fixed evaluation batch falls to under 0.7x its start.",
)
def h581_transhumance_scheduled_sampling(ctx):
    gen = seeded(58111)
    model = _Seq2Seq()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    batches = _call_pairs(gen, 64)
    xe, ye = next(_call_pairs(torch.Generator().manual_seed(58112), 256))

    def eval_loss():
        model.eval()
        with torch.no_grad():
            out = model(xe)
        model.train()
        return float(F.cross_entropy(out.reshape(-1, 5), ye.reshape(-1)))

    e0 = eval_loss()
    ctx.attach(model, opt)
    losses, tfs = [], []
    for step in range(260):
        model.tf = min(1.0, max(0.0, 1.0 - (step - 60) / 180))
        tfs.append(model.tf)
        src, tgt = next(batches)
        ctx.targets(tgt.reshape(-1))
        loss = F.cross_entropy(model(src, tgt).reshape(-1, 5), tgt.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    e1 = eval_loss()
    ctx.check("teacher forcing went from 1 to 0", tfs[0] == 1.0 and tfs[-1] == 0.0)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("free-running eval loss under 0.7x its start", e1 < 0.7 * e0)
    tf_best = min(_mean(losses[i : i + 20]) for i in range(0, 60))
    ctx.check(
        "logged loss rose: last 20 steps over 2x its teacher-forced best",
        _mean(losses[-20:]) > 2 * tf_best,
    )
    ctx.check("teacher-forced loss fell in the first 60 steps", _fell(losses[:60]))


# -- 12. healthy: conv1d classifier, AdamW + OneCycleLR + label smoothing + accumulation ---------


class _DripConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 7, padding=3)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _drips(gen, batch, length=64, classes=4):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        period = (4 + 3 * y).float()[:, None]
        phase = torch.rand(batch, 1, generator=gen) * period
        x = (torch.remainder(t[None] + phase, period) < 1.0).float()
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="cave_pearl_pool_drip_rhythm_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cave-pearl pool drip-rhythm classifier (1-d conv net over 64-sample noisy drip traces, "
    "4 drip-period classes, cross-entropy with label smoothing 0.1, AdamW, OneCycleLR, "
    "2 micro-batches accumulated per step). Healthy: the loss falls to well below its start.",
)
def h581_cave_pearl_onecycle(ctx):
    gen = seeded(58112)
    model = _DripConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    batches = _drips(gen, 32)
    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check("trained: loss fell to under 0.6x its start", _fell(losses, ratio=0.6))


# -- 13. healthy: tied-weight autoencoder, Adadelta + ReduceLROnPlateau ---------------------------


class _TiedAE(nn.Module):
    def __init__(self, d=16, k=4):
        super().__init__()
        self.encoder = nn.Linear(d, k)
        self.decoder_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.linear(torch.tanh(self.encoder(x)), self.encoder.weight.t(), self.decoder_bias)


def _yarn(gen, batch, d=16, k=4, seed=58130):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(k, d, generator=g) / math.sqrt(k)
    while True:
        z = torch.randn(batch, k, generator=gen)
        x = z @ basis + 0.1 * torch.randn(batch, d, generator=gen)
        yield x, x


@scenario(
    family="niddy_noddy_skein_yarn_tied_autoencoder",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Niddy-noddy skein yarn-profile autoencoder (tied weights: the decoder is the "
    "encoder's transpose, tanh code of 4, MSE on 16 noisy thickness readings per metre, "
    "Adadelta, ReduceLROnPlateau, clipping at 5.0). Healthy: the reconstruction loss falls.",
)
def h581_niddy_noddy_tied_autoencoder(ctx):
    gen = seeded(58113)
    model = _TiedAE()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    losses, _ = _loop(ctx, model, opt, _yarn(gen, 64), 200, F.mse_loss, clip=5.0, plateau=plateau)
    ctx.check("trained: loss fell to under 0.7x its start", _fell(losses))
