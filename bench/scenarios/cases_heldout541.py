"""Held-out set 541 (``h541_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: maple-sugarhouse evaporator Brix regressor fed sap volume in millilitres under fp16
autocast (amp_overflow, Adamax); stone-skipping bounce regressor with its hand-written weight decay
sign flipped (loss_divergence, Adam); gliding thermal climb-rate regressor whose warm-up
lambda has no cap (sharpness_above_limit, plain SGD); luthier bridge-carving FiLM regressor whose
FiLM param group lr is 0 from a config key typo (update_ratio_out_of_range, RAdam); cross-stitch
chart numeral squeeze-and-excitation CNN fed one unscaled shard (data_outlier, SGD Nesterov); ox-yoke
draft-load Huber regressor with a one-step accumulation/reduction bug on resume (gradient_spike,
AdamW); sailmaker luff-tension net dividing a zero wind vector by its norm (nonfinite, Adam);
tabla bayan glide Elman RNN with recurrent init gain typed 1.8 (exploding_gradients, RMSprop);
bonsai wiring-style cosine classifier with scale typed 1000 (softmax_collapse, NAdam); hedge-laying
pleacher-cut ReLU regressor with fc1 bias init parsed as -3 (loss_of_plasticity, Adagrad).
Controls: tally-stick notch parity classifier under bfloat16 autocast with weight decay (a long
plateau at ln 2 before a late drop, AdamW), coracle paddle-drift Huber regressor (ASGD, warm-up,
ReduceLROnPlateau, accumulation 2, clipping, noisy targets), town-crier proclamation tied-weight
GRU language model (SGD momentum, OneCycleLR, label smoothing, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded, text_batches


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, loss)``
    returns the loss actually backpropagated, ``after(step, loss)``. Stops after a non-finite
    loss once ``ctx.step`` has seen it."""
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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
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


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
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


# -- 1. amp overflow: sap volume in millilitres under fp16 autocast -------------------------------


class _GeluNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="maple_sugarhouse_evaporator_brix_fp16_gelu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=100,
    onset=100,
    heldout=True,
    note="Maple-sugarhouse evaporator Brix regressor (GELU MLP on sap volume, sap sugar, flue "
    "temperature, pan depth, draw-off rate and ambient humidity, MSE, Adamax, fp16 autocast + "
    "GradScaler). At step 100 a new sap-meter export reports volume in millilitres (about 1.2e5) "
    "and the pipeline skips the standardisation of that column: autocast casts fc1's input to "
    "fp16, whose range ends at 65504, and fc1's fp16 output is non-finite (the same batch is "
    "finite in float32); the loss is non-finite at step 100.",
)
def h541_sugarhouse_fp16_sap_in_millilitres(ctx):
    gen = seeded(5411)
    model = _GeluNet(6)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    for name in ("fc1", "fc2"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(
                name, (o.dtype, bool((~torch.isfinite(o)).any()))
            )
        )
    losses, fc2_inf, fc1_inf = [], [], []
    batches = _readings(gen, 64, 6, 54110)
    bad_x = None
    for step in range(150):
        x, y = next(batches)
        if step >= 100:
            x = x.clone()
            x[:, 0] = 1.2e5 + 1.0e4 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_inf.append(seen["fc1"][1])
        fc2_inf.append(seen["fc2"][1])
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
    ctx.check("loss first non-finite at step 100", first_bad == 100)
    ctx.check("fc1's fp16 output non-finite at step 100", len(fc1_inf) > 100 and fc1_inf[100])
    ctx.check("no inf before step 100", not any(fc2_inf[:100]) and not any(fc1_inf[:100]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 100", _fell(losses[:100]))


# -- 2. loss divergence: weight decay with its sign flipped ---------------------------------------


@scenario(
    family="stone_skipping_bounce_count_decay_sign_tanh_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Stone-skipping bounce-count regressor (ReLU MLP on stone mass, flatness, spin rate, "
    "entry angle, throw speed and water chop, MSE, Adam lr 3e-3). The hand-written "
    "decoupled weight decay (wd 3) is applied after each step as p *= 1 + lr * wd instead of "
    "1 - lr * wd: the weights grow geometrically, the net fits first and then the loss climbs "
    "slowly, with no jump, to several times its best.",
)
def h541_stone_skipping_decay_sign_flipped(ctx):
    gen = seeded(5412)
    model = _Net(6, 48, 1, nn.ReLU)
    lr, wd = 0.003, 3.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    w0 = float(_flat(model).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # the bug: meant 1 - lr * wd

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 54120), 260, F.mse_loss, after=after)
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    ctx.check("weights grew over 3x", float(_flat(model).norm()) > 3 * w0)
    ctx.check("fitted first: best 10-step mean under half the first", best < 0.5 * smooth[0])
    ctx.check("loss climbs: last 10 over 3x the best", smooth[-1] > 3 * best)
    ctx.check(
        "slow: no step over 3x the previous 10-step mean",
        all(losses[i] < 3 * _mean(losses[i - 10 : i]) for i in range(10, len(losses))),
    )
    ctx.check("finite", _finite(losses))


# -- 3. sharpness above limit: warm-up lambda with no cap -----------------------------------------


@scenario(
    family="gliding_thermal_climb_rate_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Gliding thermal climb-rate regressor (tanh MLP on ground temperature, lapse rate, wind "
    "shear, cloud base, glider wing loading and bank angle, MSE, plain SGD lr 0.1). The linear "
    "warm-up is written LambdaLR(lambda s: s / 10) without min(1, .): the learning rate keeps "
    "growing past its peak, lr x top Hessian eigenvalue passes 2 and the loss blows up.",
)
def h541_gliding_uncapped_warmup(ctx):
    gen = seeded(5413)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 10)  # the bug: no cap
    batches = _readings(gen, 64, 6, 54130)
    probe = next(batches)
    products = []

    def before(step):
        if step % 10 == 0:
            lr = opt.param_groups[0]["lr"]
            products.append((step, lr * _top_hessian_eig(model, F.mse_loss, *probe)))

    losses, _ = _loop(ctx, model, opt, batches, 260, F.mse_loss, before=before, sched=sched)
    smooth = [_mean(losses[max(0, i - 4) : i + 1]) for i in range(len(losses))]
    best = min(smooth)
    blow = next((i for i, v in enumerate(smooth) if not math.isfinite(v) or v > 100 * best), None)
    ctx.check("5-step mean loss over 100x its best (or non-finite)", blow is not None)
    ctx.check(
        "lr x sharpness over 2 at a probe before the blow-up",
        blow is not None and any(p > 2 for s, p in products if s <= blow),
    )
    ctx.check("lr x sharpness under 2 at the first probes", all(p < 2 for _, p in products[:2]))
    ctx.check("trained during the warm-up", _mean(losses[20:30]) < _mean(losses[:10]))


# -- 4. update ratio: FiLM group lr 0 from a config key typo --------------------------------------


class _FiLMNet(nn.Module):
    """Trunk on wood readings, modulated per layer by a FiLM generator on the wood species."""

    def __init__(self, d_in, d_cond, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.film = nn.Linear(d_cond, 4 * hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, xc):
        x, c = xc
        g1, b1, g2, b2 = self.film(c).chunk(4, dim=-1)
        h = F.relu((1 + g1) * self.fc1(x) + b1)
        h = F.relu((1 + g2) * self.fc2(h) + b2)
        return self.head(h).squeeze(-1)


def _luthier_batches(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 5, generator=g)
    while True:
        x = torch.randn(batch, 5, generator=gen)
        s = torch.randint(0, 5, (batch,), generator=gen)
        c = F.one_hot(s, 5).float()
        y = torch.tanh((x * w[s]).sum(1) / 2) + 0.2 * s.float() - 0.4
        yield (x, c), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="luthier_bridge_carving_film_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("film",),
    diverges=None,
    heldout=True,
    note="Luthier bridge-carving stiffness regressor, a FiLM-conditioned ReLU MLP: the wood "
    "species (one-hot) drives a FiLM generator that scales and shifts both hidden layers "
    "(MSE, RAdam, param groups). The config spells the key 'flim_lr', the code reads "
    "cfg.get('film_lr', 0.0): the FiLM generator's group trains at lr 0, never moves, and "
    "the trunk alone fits what it can; the loss falls, nothing blows up.",
)
def h541_luthier_film_group_lr_zero(ctx):
    gen = seeded(5414)
    model = _FiLMNet(5, 5)
    cfg = {"trunk_lr": 3e-3, "flim_lr": 3e-3}  # the typo
    opt = torch.optim.RAdam(
        [
            {
                "params": [
                    *model.fc1.parameters(),
                    *model.fc2.parameters(),
                    *model.head.parameters(),
                ],
                "lr": cfg["trunk_lr"],
            },
            {"params": model.film.parameters(), "lr": cfg.get("film_lr", 0.0)},
        ]
    )
    film0, trunk0 = _flat(model.film), _flat(model.fc1)
    losses, _ = _loop(ctx, model, opt, _luthier_batches(gen, 64, 54140), 200, F.mse_loss)
    ctx.check("film group lr is 0", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("film moved under 1e-7 of its norm", _rel(_flat(model.film), film0) < 1e-7)
    ctx.check("fc1 moved over 5% of its norm", _rel(_flat(model.fc1), trunk0) > 0.05)
    ctx.check("loss fell", _fell(losses))


# -- 5. data outlier: one unscaled shard into a squeeze-and-excitation CNN ------------------------


class _SE(nn.Module):
    def __init__(self, channels, reduction=4):
        super().__init__()
        self.squeeze = nn.Linear(channels, channels // reduction)
        self.excite = nn.Linear(channels // reduction, channels)

    def forward(self, x):
        w = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean((2, 3))))))
        return x * w[:, :, None, None]


class _SECNN(nn.Module):
    def __init__(self, width=12, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.se1 = _SE(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.se2 = _SE(2 * width)
        self.head = nn.Linear(2 * width * 16, classes)

    def forward(self, x):
        x = self.se1(F.relu(self.conv1(x.reshape(-1, 1, 8, 8))))
        x = F.max_pool2d(self.se2(F.relu(self.conv2(x))), 2)
        return self.head(x.flatten(1))


@scenario(
    family="cross_stitch_chart_numeral_se_cnn",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Cross-stitch chart numeral reader, a squeeze-and-excitation CNN on 8x8 stitch charts "
    "(scikit-learn digits, cross-entropy, SGD Nesterov lr 0.05, clipping at 5). The shard served "
    "at step 100 comes from an older export that stored thread-density counts 0..255 instead "
    "of fractions in [0, 1]: one batch with inputs about 16x too large, the loss and gradient "
    "burst at that step and the run recovers.",
)
def h541_cross_stitch_unscaled_shard(ctx):
    from scenarios.common import digit_batches

    gen = seeded(5415)
    model = _SECNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        return (x * 255.0 if step == 100 else x), y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=5.0,
    )
    pre_l, pre_g = _median(losses[80:100]), _median(norms[80:100])
    ctx.check("loss at step 100 over 20x the median before", losses[100] > 20 * pre_l)
    ctx.check("gradient at step 100 over 10x the median before", norms[100] > 10 * pre_g)
    ctx.check("recovers: last 20 under 2x the pre-shard median", _mean(losses[-20:]) < 2 * pre_l)
    ctx.check("trained before the shard", _fell(losses[:100]))
    ctx.check("finite", _finite(losses))


# -- 6. gradient spike: accumulation and reduction bug on the resumed step ------------------------


@scenario(
    family="ox_yoke_draft_load_silu_huber_regressor",
    optimizer="AdamW",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Ox-yoke draft-load regressor (SiLU MLP on yoke width, bow angle, pair weight, furrow "
    "depth, soil moisture and pace, Huber loss, AdamW, clipping at 1). On the first step after a "
    "resume at step 120 the restored config reads reduction 'sum' and the accumulation factor is "
    "multiplied instead of divided (x 64 samples x 8 micro-batches): that one step's gradient is "
    "hundreds of times the usual, the logged (mean) loss is ordinary, the clip keeps the run "
    "alive.",
)
def h541_ox_yoke_resume_accumulation_bug(ctx):
    gen = seeded(5416)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)

    def backprop(step, loss):
        return loss * 64 * 8 if step == 120 else loss

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 54160),
        220,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check(
        "gradient at step 120 over 100x the median before",
        norms[120] > 100 * _median(norms[100:120]),
    )
    ctx.check(
        "logged loss at step 120 under 2x the median before",
        losses[120] < 2 * _median(losses[100:120]),
    )
    ctx.check("loss fell", _fell(losses))
    ctx.check("finite", _finite(losses))


# -- 7. nonfinite: 0/0 normalising a calm wind vector ---------------------------------------------


class _UnitVector(nn.Module):
    def forward(self, v):
        return v / v.norm(dim=-1, keepdim=True)  # the missing clamp


class _SailNet(nn.Module):
    def __init__(self, hidden=48):
        super().__init__()
        self.unit = _UnitVector()
        self.fc1 = nn.Linear(3 + 1 + 4, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        wind, rest = x[:, :3], x[:, 3:]
        h = torch.cat([self.unit(wind), wind.norm(dim=-1, keepdim=True), rest], -1)
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(h))))).squeeze(-1)


@scenario(
    family="sailmaker_luff_tension_direction_norm_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("unit",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Sailmaker luff-tension regressor (GELU MLP on the apparent-wind vector, normalised to "
    "a direction by a hand-written unit-vector module, plus wind speed, sail area, cloth weight "
    "and halyard tension, MSE, Adam). The unit-vector module divides by the norm with no "
    "epsilon; the shard at step 80 holds a becalmed reading with wind (0, 0, 0): 0/0 is NaN in "
    "'unit' and the loss is NaN at step 80.",
)
def h541_sailmaker_calm_wind_zero_over_zero(ctx):
    gen = seeded(5417)
    model = _SailNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    seen = {}
    model.unit.register_forward_hook(
        lambda m, i, o: seen.__setitem__("nan", bool(torch.isnan(o).any()))
    )
    flags = []

    def alter(step, x, y):
        if step == 80:
            x = x.clone()
            x[5, :3] = 0.0
            ctx.check("inputs finite at step 80", bool(torch.isfinite(x).all()))
        return x, y

    def after(step, loss):
        flags.append(seen["nan"])

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 7, 54170), 160, F.mse_loss, alter=alter, after=after
    )
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 80", first_bad == 80)
    ctx.check("unit's output has NaN at step 80", len(flags) > 80 and flags[80])
    ctx.check("unit finite before step 80", not any(flags[:80]))
    ctx.check("trained before step 80", _fell(losses[:80]))


# -- 8. exploding gradients: recurrent init gain typed 1.8 ----------------------------------------


class _Elman(nn.Module):
    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.rnn = nn.RNN(d_in, hidden, batch_first=True, nonlinearity="tanh")
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out).squeeze(-1)


def _bayan_batches(gen, batch, steps=40):
    while True:
        t = torch.linspace(0, 1, steps)
        f0 = torch.rand(batch, 1, generator=gen) * 2 + 1
        glide = torch.rand(batch, 1, generator=gen) - 0.5
        pressure = glide * t + 0.1 * torch.randn(batch, steps, generator=gen)
        x = torch.stack(
            [pressure, torch.sin(6 * f0 * t), torch.cos(6 * f0 * t), t.expand(batch, -1)], -1
        )
        y = torch.tanh(torch.cumsum(pressure, 1) / 8) * f0 / 3
        yield x, y


@scenario(
    family="tabla_bayan_pressure_glide_elman_rnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="Tabla bayan pitch-glide tracker, a tanh Elman RNN over 40 frames of palm pressure and "
    "stroke phase predicting the pitch bend per frame (MSE, RMSprop lr 1e-3, clipping at 1). "
    "The recurrent weights are initialised orthogonal with gain typed 1.8 (meant 0.8): the "
    "gradient through time grows by the recurrence at every frame backwards, the first frame's "
    "hidden-state gradient is orders of magnitude above the last's.",
)
def h541_bayan_recurrent_gain_typo(ctx):
    gen = seeded(5418)
    model = _Elman()
    nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=1.8)  # the typo: meant 0.8
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _bayan_batches(gen, 32)
    probe_x, probe_y = next(batches)

    def state_grad_ratio():
        h0 = torch.zeros(1, probe_x.shape[0], 32)
        states, h = [], h0
        for t in range(probe_x.shape[1]):
            _, h = model.rnn(probe_x[:, t : t + 1], h)
            h.retain_grad()
            states.append(h)
        out = torch.cat([model.head(s.transpose(0, 1)) for s in states], 1).squeeze(-1)
        F.mse_loss(out, probe_y).backward()
        r = float(states[0].grad.norm() / states[-1].grad.norm())
        model.zero_grad(set_to_none=True)
        return r

    ratio0 = state_grad_ratio()
    losses, norms = _loop(ctx, model, opt, batches, 150, F.mse_loss, clip=1.0)
    ctx.check("first state's gradient over 100x the last's at init", ratio0 > 100)
    ratio_end = state_grad_ratio()
    ctx.check("still over 10x after training", ratio_end > 10)
    ctx.check("gradient clipped at some step (raw norm over 1)", max(norms) > 1)


# -- 9. softmax collapse: cosine-classifier scale typed 1000 --------------------------------------


class _CosineHead(nn.Module):
    def __init__(self, d, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class _CosNet(nn.Module):
    def __init__(self, d_in, classes, scale, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = _CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


@scenario(
    family="bonsai_wiring_style_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bonsai wiring-style classifier (ReLU MLP with a cosine-similarity head on trunk "
    "taper, branch angles, wire gauge and bark readings, 6 styles, cross-entropy, NAdam). The "
    "head's scale s is typed 1000 for 10: logits span +-1000, float32 softmax rounds most "
    "rows' probabilities to exactly 0 and 1, and the loss is dominated by the few wrong rows.",
)
def h541_bonsai_cosine_scale_typo(ctx):
    gen = seeded(5419)
    model = _CosNet(10, 6, scale=1000.0)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 10, 6, 54190, spread=1.0)
    probe_x, probe_y = next(batches)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        p = torch.softmax(model(probe_x).float(), -1)
    exact = float((p.max(-1).values == 1.0).float().mean())
    ctx.check("over half the rows' max probability exactly 1.0", exact > 0.5)
    collapsed = float((p.gather(1, probe_y[:, None]) == 1.0).float().mean())
    ctx.check("over 40% of rows' target probability exactly 1.0", collapsed > 0.4)
    ctx.check("finite", _finite(losses))


# -- 10. loss of plasticity: Adagrad lr typed 3.0 -------------------------------------------------


def _reference_fit() -> float:
    """The same net, data and optimizer with fc1's default bias init (not attached)."""
    gen = torch.Generator().manual_seed(54111)
    torch.manual_seed(54111)
    ref = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.Adagrad(ref.parameters(), lr=0.05)
    batches, losses = _readings(gen, 128, 6, 541100), []
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(ref(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return _mean(losses[-20:])


@scenario(
    family="hedge_laying_pleacher_cut_relu_regressor",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="Hedge-laying pleacher-cut depth regressor (ReLU MLP on stem diameter, species "
    "hardness, lean angle, bark thickness, sap season and billhook weight, MSE, Adagrad lr "
    "0.05). The config's bias_init '-3.0e-2' is parsed by a helper that drops the exponent: "
    "fc1's biases start at -3, five standard deviations below its pre-activations, act1's "
    "ReLUs are dead from the first step (a few fire on rare inputs), pass almost no gradient to fc1 and never recover; the loss "
    "stalls at about the variance of the target.",
)
def h541_hedge_laying_bias_init_parse_bug(ctx):
    gen = seeded(54110)
    model = _Net(6, 48, 1, nn.ReLU)
    cfg = {"bias_init": "-3.0e-2"}
    nn.init.constant_(model.fc1.bias, float(cfg["bias_init"].split("e")[0]))  # the parse bug
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    fc1_0 = _flat(model.fc1)
    batches = _readings(gen, 128, 6, 541100)
    probe_x, _ = next(batches)
    seen = {}
    model.act1.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o.detach()))
    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss)
    with torch.no_grad():
        model(probe_x)
    dead = float((seen["a"] <= 0).all(0).float().mean())
    ctx.check("fc1 biases start at -3", float(fc1_0[-48:].mean()) == -3.0)
    ctx.check("over 60% of act1 units dead on a batch", dead > 0.6)
    ctx.check(
        "stalls: last 20 over 3x what the same net with its default bias init reaches",
        _mean(losses[-20:]) > 3 * _reference_fit(),
    )
    ctx.check("finite", _finite(losses))


# -- 11. control: bfloat16 parity classifier, a long plateau then a late drop ---------------------


def _notch_batches(gen, batch, bits=24, k=3):
    while True:
        x = torch.randint(0, 2, (batch, bits), generator=gen).float() * 2 - 1
        yield x, ((x[:, :k] < 0).sum(1) % 2)


@scenario(
    family="tally_stick_notch_parity_bf16_relu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Tally-stick notch parity classifier (ReLU MLP on 24 notch/no-notch marks, the label "
    "is the parity of three of them, cross-entropy, AdamW lr 5e-4 with weight decay 0.1, "
    "bfloat16 autocast). Alarming-looking but healthy: the loss sits at ln 2 (chance) for over "
    "a hundred steps while the net slowly finds the three relevant notches, then drops late and "
    "fast; nothing is wrong.",
)
def h541_tally_stick_bf16_parity_plateau(ctx):
    gen = seeded(54112)
    model = _Net(24, 256, 2, nn.ReLU)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1)
    ctx.attach(model, opt)
    batches, losses = _notch_batches(gen, 128), []
    for _ in range(300):
        x, y = next(batches)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "plateau: steps 0-120 mean within 0.05 of ln 2",
        abs(_mean(losses[:120]) - math.log(2)) < 0.05,
    )
    ctx.check("late drop: last 20 under 0.15", _mean(losses[-20:]) < 0.15)
    ctx.check("finite", _finite(losses))


# -- 12. control: coracle paddle-drift Huber regressor, ASGD ---------------------------------------


@scenario(
    family="coracle_paddle_stroke_drift_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Coracle paddle-stroke drift regressor (SiLU MLP on stroke angle, stroke rate, hide "
    "stiffness, load, current and wind, Huber loss, ASGD lr 0.05, linear warm-up 20 steps then "
    "ReduceLROnPlateau, gradient accumulation over 2 micro-batches, clipping at 1, noisy "
    "targets). A healthy control.",
)
def h541_coracle_asgd_plateau_schedule(ctx):
    gen = seeded(54113)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=100)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches, losses = _readings(gen, 32, 6, 541130, noise=0.2), []
    for step in range(220):
        if step < 20:
            opt.param_groups[0]["lr"] = 0.05 * (step + 1) / 20
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y) / 2
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(total))
        ctx.step(total)
        if step >= 20:
            plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, 20, 0.6))
    ctx.check("finite", _finite(losses))


# -- 13. control: town-crier tied-weight GRU language model --------------------------------------


class _TiedGRULM(nn.Module):
    def __init__(self, vocab=128, dim=48):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, idx):
        out, _ = self.gru(self.embed(idx))
        return self.head(out)


@scenario(
    family="town_crier_proclamation_tied_gru_lm",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Town-crier proclamation byte-level language model (GRU with its output head tied to "
    "the embedding, cross-entropy with label smoothing 0.1, SGD momentum 0.9, OneCycleLR to "
    "1.0, clipping at 0.5). A healthy control.",
)
def h541_town_crier_tied_gru_onecycle(ctx):
    gen = seeded(54114)
    model = _TiedGRULM()
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=steps)
    batches = text_batches(gen, 16, 32)

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=0.1)

    losses, _ = _loop(ctx, model, opt, batches, steps, loss_fn, clip=0.5, sched=sched)
    ctx.check("loss fell", _fell(losses, 10, 0.75))
    ctx.check("head tied to the embedding", model.head.weight is model.embed.weight)
    ctx.check("finite", _finite(losses))
