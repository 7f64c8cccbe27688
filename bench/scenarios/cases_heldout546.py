"""Held-out set 546 (``h546_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: clinker-boat strake-bevel regressor fed steam-box pressure in pascals under fp16 autocast
(amp_overflow, Adam); thole-pin oar-load regressor whose hand-written L2 penalty has its sign
flipped (loss_divergence, SGD momentum); steam-bent planking spring-back regressor whose StepLR
gamma is typed 10 for 0.1 (sharpness_above_limit, plain SGD); kalaripayattu staff-spin regressor
whose encoder group lr scale is typed 1e-6 (update_ratio_out_of_range, Adagrad); gansey yoke
stitch-gauge regressor fed one shard of targets in centimetres-per-100-stitches (data_outlier,
SGD Nesterov); santoor hammer-strike Huber regressor whose resume multiplies one step's loss by the
checkpoint's loss scale (gradient_spike, AdamW); frost-flower density Gaussian-NLL regressor that
normalises its thermistors by their spread with no epsilon (nonfinite, NAdam); scythe-snath
balance deep ReLU regressor with init gain typed 3 (exploding_gradients, RAdam); sgraffito
layer-depth regressor with fc2 bias init parsed as -4 (loss_of_plasticity, ASGD); guqin
string-harmonic classifier with temperature typed 1e-3 (softmax_collapse, Adamax).
Controls: chinlone ball-kick classifier with a focal loss (gamma 2) on overlapping classes (a
small loss with an ordinary gradient, alarming-looking, RMSprop), shibori fold-pattern
RetNet-style retention byte language model (Adam, OneCycleLR, tied weights, label smoothing,
clipping), dory-hull launch-drag Huber regressor (Adadelta, accumulation 2, ReduceLROnPlateau,
noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded, text_batches


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


# -- 1. amp overflow: steam-box pressure in pascals under fp16 autocast ---------------------------


class _GeluNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="clinker_boat_strake_bevel_fp16_gelu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Clinker-boat strake bevel-angle regressor (GELU MLP on steam-box pressure, plank "
    "thickness, moisture, frame spacing, lap width and twist, MSE, Adam, fp16 autocast + "
    "GradScaler). From step 90 a new boatyard logger writes steam-box pressure in pascals "
    "(about 1.1e5) instead of standardised kPa and the pipeline skips that column's scaling: "
    "fc1's fp16 output overflows past 65504 to inf, the loss is non-finite at step 90; the same "
    "batch is finite in float32.",
)
def h546_clinker_strake_pressure_in_pascals(ctx):
    gen = seeded(5461)
    model = _GeluNet(6)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    losses, fc1_inf = [], []
    batches = _readings(gen, 64, 6, 54610)
    bad_x = None
    for step in range(140):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 0] = 1.1e5 + 8.0e3 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_inf.append(seen["fc1"][1])
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
    ctx.check("loss first non-finite at step 90", first_bad == 90)
    ctx.check("fc1's fp16 output non-finite at step 90", len(fc1_inf) > 90 and fc1_inf[90])
    ctx.check("no inf in fc1 before step 90", not any(fc1_inf[:90]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 90", _fell(losses[:90]))


# -- 2. loss divergence: hand-written L2 penalty with its sign flipped ----------------------------


@scenario(
    family="thole_pin_oar_load_l2_sign_relu_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Thole-pin oar-load regressor (ReLU MLP on stroke rate, oar length, blade area, boat "
    "speed, catch angle and swell, MSE, SGD momentum 0.9). The L2 penalty is written into the "
    "loss as loss - wd * sum(w^2) (the sign flipped while refactoring): the weights grow "
    "steadily, the net fits first and then the loss climbs slowly to several times its best, "
    "with no jump.",
)
def h546_thole_pin_l2_sign_flipped(ctx):
    gen = seeded(5462)
    model = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    wd = 0.03
    w0 = float(_flat(model).norm())

    def backprop(step, loss):
        l2 = sum((p * p).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - wd * l2  # the bug: meant + wd * l2

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 54620), 260, F.mse_loss, backprop=backprop
    )
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    ctx.check("weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("fitted first: best 10-step mean under half the first", best < 0.5 * smooth[0])
    ctx.check("loss climbs: last 10 over 3x the best", smooth[-1] > 3 * best)
    ctx.check(
        "slow: no step over 3x the previous 10-step mean",
        all(losses[i] < 3 * _mean(losses[i - 10 : i]) for i in range(10, len(losses))),
    )
    ctx.check("finite", _finite(losses))


# -- 3. sharpness above limit: StepLR gamma typed 10 ----------------------------------------------


@scenario(
    family="planking_steam_bend_springback_steplr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=80,
    heldout=True,
    note="Steam-bent planking spring-back regressor (tanh MLP on steaming time, wood species "
    "density, thickness, bend radius, grain slope and cooling time, MSE, plain SGD lr 0.1). "
    "The step decay is written StepLR(step_size=80, gamma=10) for gamma=0.1: at step 80 the lr "
    "jumps to 1.0, lr x top Hessian eigenvalue passes 2 and the loss blows up.",
)
def h546_planking_steplr_gamma_typo(ctx):
    gen = seeded(5463)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=10.0)  # the bug
    batches = _readings(gen, 64, 6, 54630)
    probe = next(batches)
    products = []

    def before(step):
        if step % 10 == 0:
            lr = opt.param_groups[0]["lr"]
            products.append((step, lr * _top_hessian_eig(model, F.mse_loss, *probe)))

    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    smooth = [_mean(losses[max(0, i - 4) : i + 1]) for i in range(len(losses))]
    best = min(smooth)
    blow = next((i for i, v in enumerate(smooth) if not math.isfinite(v) or v > 100 * best), None)
    ctx.check("5-step mean loss over 100x its best (or non-finite)", blow is not None)
    ctx.check("blow-up after the lr jump at step 80", blow is not None and blow >= 80)
    ctx.check(
        "lr x sharpness over 2 at a probe before the blow-up",
        blow is not None and any(p > 2 for s, p in products if s <= blow),
    )
    ctx.check("lr x sharpness under 2 before step 80", all(p < 2 for s, p in products if s < 80))
    ctx.check("trained before step 80", _fell(losses[:80]))


# -- 4. update ratio: encoder group lr scale typed 1e-6 -------------------------------------------


class _EncHead(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.encoder(x)).squeeze(-1)


@scenario(
    family="kalaripayattu_staff_spin_frozen_encoder_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("encoder",),
    diverges=None,
    heldout=True,
    note="Kalaripayattu staff-spin rate regressor (SiLU encoder + linear head on grip spacing, "
    "staff length, wrist angle, stance width, staff mass and footwork tempo, MSE, Adagrad, "
    "param groups). The layer-wise lr scale for the encoder is typed 1e-6 in the config for "
    "1e-1: the encoder's updates are about 1e-8 of its weights and it never moves, the head "
    "alone fits what it can on random features; the loss falls, nothing blows up.",
)
def h546_kalaripayattu_encoder_lr_scale_typo(ctx):
    gen = seeded(5464)
    model = _EncHead(6)
    cfg = {"lr": 0.05, "encoder_lr_scale": 1e-6}  # the typo: meant 1e-1
    opt = torch.optim.Adagrad(
        [
            {"params": model.encoder.parameters(), "lr": cfg["lr"] * cfg["encoder_lr_scale"]},
            {"params": model.head.parameters(), "lr": cfg["lr"]},
        ]
    )
    enc0, head0 = _flat(model.encoder), _flat(model.head)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 54640), 200, F.mse_loss)
    ctx.check("encoder moved under 1e-5 of its norm", _rel(_flat(model.encoder), enc0) < 1e-5)
    ctx.check("head moved over 5% of its norm", _rel(_flat(model.head), head0) > 0.05)
    ctx.check("loss fell", _fell(losses))


# -- 5. data outlier: one shard of targets in the wrong unit --------------------------------------


@scenario(
    family="gansey_yoke_stitch_gauge_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Gansey yoke stitch-gauge regressor (ReLU MLP on yarn ply, needle size, knitter "
    "tension, pattern repeat, wool crimp and yoke depth, MSE, SGD Nesterov, clipping at 1). "
    "One shard, read at step 100, comes from an old pattern archive whose gauge column is in "
    "stitches per 10 cm, unstandardised (values around 30-60): that batch's loss is hundreds of "
    "times the others and its gradient tens of times; clipping holds and the run recovers.",
)
def h546_gansey_unscaled_gauge_shard(ctx):
    gen = seeded(5465)
    model = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == 100:
            return x, 45.0 + 8.0 * torch.randn(y.shape, generator=gen)
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 54650), 220, F.mse_loss, alter=alter, clip=1.0
    )
    ctx.check(
        "loss at step 100 over 100x the median before", losses[100] > 100 * _median(losses[80:100])
    )
    ctx.check(
        "gradient at step 100 over 10x the median before", norms[100] > 10 * _median(norms[80:100])
    )
    ctx.check(
        "recovered: last 20 under 2x the 20 before the shard",
        _mean(losses[-20:]) < 2 * _mean(losses[80:100]),
    )
    ctx.check("finite", _finite(losses))


# -- 6. gradient spike: resume applies the checkpoint's loss scale to one step --------------------


@scenario(
    family="santoor_hammer_strike_accum_huber_regressor",
    optimizer="AdamW",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Santoor hammer-strike loudness regressor (SiLU MLP on hammer mass, strike height, "
    "felt hardness, string course, bridge position and wrist speed, Huber, AdamW, gradient "
    "accumulation over 2 micro-batches, clipping at 1). After a resume at step 120 the first "
    "accumulation window multiplies the loss by the checkpoint's stored loss scale (4096, left "
    "over from an fp16 run) instead of dividing by the accumulation count: that one step's "
    "gradient is thousands of times the others, the logged loss is ordinary, clipping caps "
    "the update and the run goes on.",
)
def h546_santoor_resume_loss_scale(ctx):
    gen = seeded(5466)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 6, 54660)
    accum, stored_scale = 2, 4096.0
    losses, norms = [], []
    for step in range(220):
        logged = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5)
            factor = stored_scale if step == 120 else 1.0 / accum  # the resume bug
            (loss * factor).backward()
            logged += float(loss.detach()) / accum
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "gradient at step 120 over 1000x the median before",
        norms[120] > 1000 * _median(norms[100:120]),
    )
    ctx.check(
        "logged loss at step 120 ordinary (under 2x the median before)",
        losses[120] < 2 * _median(losses[100:120]),
    )
    ctx.check(
        "no other step's gradient over 10x the median",
        max(norms[121:]) < 10 * _median(norms[100:120]),
    )
    ctx.check("loss fell and stayed finite", _fell(losses))


# -- 7. nonfinite: spread normalisation with no epsilon -------------------------------------------


class _SpreadNorm(nn.Module):
    """Standardises each row's thermistor readings by their own spread (no epsilon)."""

    def forward(self, t):
        mu = t.mean(-1, keepdim=True)
        return (t - mu) / t.std(-1, keepdim=True)


class _FrostNet(nn.Module):
    def __init__(self, hidden=48):
        super().__init__()
        self.spread_norm = _SpreadNorm()
        self.fc1 = nn.Linear(4 + 3, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.logvar_head = nn.Linear(hidden, 1)

    def forward(self, x):
        t, rest = x[:, :4], x[:, 4:]
        h = torch.cat([self.spread_norm(t), t.mean(-1, keepdim=True), rest[:, :2]], -1)
        h = F.gelu(self.fc2(F.gelu(self.fc1(h))))
        return torch.cat([self.mean_head(h), self.logvar_head(h)], -1)


def _gauss_nll(out, y):
    mu, logvar = out[:, 0], out[:, 1]
    return 0.5 * (logvar + (y - mu) ** 2 / logvar.exp()).mean()


def _frost_batches(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        base = torch.randn(batch, 1, generator=gen)
        t = base + 0.5 * torch.randn(batch, 4, generator=gen)
        rest = torch.randn(batch, 2, generator=gen)
        y = torch.tanh((t - t.mean(-1, keepdim=True)) @ w) + 0.3 * base[:, 0] - 0.2 * rest[:, 0]
        yield torch.cat([t, rest], -1), y + 0.1 * torch.randn(batch, generator=gen)


@scenario(
    family="frost_flower_density_gaussian_nll_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("spread_norm",),
    diverges=70,
    onset=70,
    heldout=True,
    note="Frost-flower density regressor on sea ice (GELU MLP predicting mean and log-variance, "
    "Gaussian NLL, NAdam): a spread_norm module standardises each row's four thermistor "
    "readings by their own standard deviation with no epsilon. At step 70 a logger fault "
    "repeats one reading across all four thermistors in one row: (t - mean) / std is 0/0, NaN "
    "flows into the loss at step 70.",
)
def h546_frost_flower_spread_norm_zero_std(ctx):
    gen = seeded(5467)
    model = _FrostNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = []
    model.spread_norm.register_forward_hook(lambda m, i, o: seen.append(bool(torch.isnan(o).any())))

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[5, :4] = x[5, 0]
        return x, y

    losses, _ = _loop(ctx, model, opt, _frost_batches(gen, 64, 54670), 120, _gauss_nll, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 70", first_bad == 70)
    ctx.check("spread_norm output NaN at step 70", len(seen) > 70 and seen[70])
    ctx.check("spread_norm finite before step 70", not any(seen[:70]))
    ctx.check("trained before step 70", _fell(losses[:70]))


# -- 8. exploding gradients: deep ReLU stack with init gain typed 3 -------------------------------


class _DeepStack(nn.Module):
    def __init__(self, d_in, hidden=32, depth=10, gain=1.414):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else hidden, hidden)
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
        self.stack = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, 1)
        self.acts: list[torch.Tensor] = []

    def forward(self, x):
        self.acts = []
        for m in self.stack:
            x = m(x)
            if isinstance(m, nn.Linear) and x.requires_grad:
                x.retain_grad()
                self.acts.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="scythe_snath_balance_deep_init_relu_regressor",
    optimizer="RAdam",
    cause="exploding_gradients",
    where=("stack.0", "stack"),
    diverges=None,
    heldout=True,
    note="Scythe-snath balance-point regressor (10-layer ReLU MLP on snath length, nib "
    "positions, blade mass, blade hang and mower height, MSE, RAdam, clipping at 1). The init "
    "helper's gain is typed 3.0 for 1.414 (He): each layer multiplies the signal by about 2.1, "
    "the gradient with respect to the first layer's output is thousands of times the last "
    "layer's and the loss starts orders of magnitude above the target scale.",
)
def h546_scythe_snath_init_gain_typo(ctx):
    gen = seeded(5468)
    model = _DeepStack(6, gain=3.0)  # the typo: meant 1.414
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ratios = []

    def after(step, loss):
        if model.acts and model.acts[0].grad is not None:
            ratios.append(float(model.acts[0].grad.norm() / model.acts[-1].grad.norm()))

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 54680), 150, F.mse_loss, after=after, clip=1.0
    )
    ctx.check("first layer's output gradient over 100x the last's at step 0", ratios[0] > 100)
    ctx.check("gradient norm at step 0 over 1000", norms[0] > 1000)
    ctx.check("initial loss over 1000 (targets are about unit scale)", losses[0] > 1000)


# -- 9. loss of plasticity: fc2 bias init parsed as -4 --------------------------------------------


@scenario(
    family="sgraffito_layer_depth_dead_bias_relu_regressor",
    optimizer="ASGD",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Sgraffito scratch-depth regressor (ReLU MLP on slip thickness, leather-hardness, tool "
    "angle, tool width, stroke speed and clay grog, MSE, ASGD). The init config's fc2 bias "
    "'-4.0e-2' is parsed as -4.0: nearly every unit of act2 is dead from the start and stays "
    "dead, its weights get no gradient, and the loss stalls far above what the net can fit.",
)
def h546_sgraffito_fc2_bias_parsed(ctx):
    gen = seeded(5469)
    model = _Net(6, 48, 1, nn.ReLU)
    with torch.no_grad():
        model.fc2.bias.fill_(-4.0)  # the parse bug: meant -4.0e-2
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    acts = []
    model.act2.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    fc2_0 = _flat(model.fc2)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 54690), 200, F.mse_loss)

    def dead(o):
        return float((o <= 0).all(0).float().mean())

    ctx.check("over 80% of act2 dead at step 0", dead(acts[0]) > 0.8)
    ctx.check("over 80% of act2 dead at the end", dead(acts[-1]) > 0.8)
    ctx.check("fc2 barely moved (under 1%)", _rel(_flat(model.fc2), fc2_0) < 0.01)
    ctx.check("loss stalled: last 10 over 0.7x the first 10", not _fell(losses, ratio=0.7))
    ctx.check("finite", _finite(losses))


# -- 10. softmax collapse: temperature typed 1e-3 -------------------------------------------------


class _Tempered(nn.Module):
    def __init__(self, d_in, classes, temperature, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return self.head(h) / self.temperature


@scenario(
    family="guqin_string_harmonic_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Guqin harmonic-position classifier (GELU MLP on string number, hui position, finger "
    "pressure, pluck point and spectral features, 7 classes, cross-entropy, Adamax). The "
    "logit temperature is typed 1e-3 for 1.0: the head's logits are divided by 0.001 and the "
    "float32 softmax saturates, most rows' target probability rounds to exactly 1.0 and wrong "
    "rows to exactly 0.",
)
def h546_guqin_temperature_typo(ctx):
    gen = seeded(54610)
    model = _Tempered(8, 7, temperature=1e-3)  # the typo: meant 1.0
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 8, 7, 546100)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
    p = torch.softmax(logits, -1)
    ctx.check(
        "over 40% of rows' target probability exactly 1.0", collapsed_fraction(logits, y) > 0.4
    )
    ctx.check(
        "over 40% of rows have a probability exactly 0", float((p == 0).any(1).float().mean()) > 0.4
    )
    ctx.check("logit range over 200", float(logits.max() - logits.min()) > 200)


# -- 11. control: focal loss (gamma 2) on overlapping classes -------------------------------------


def _focal(logits, y, gamma=2.0):
    logp = F.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


@scenario(
    family="chinlone_ball_kick_focal_classifier",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Chinlone kick-type classifier (ReLU MLP on foot surface, ball spin, contact height, "
    "rebound angle and rattan-ball sound features, 6 heavily overlapping classes, focal loss "
    "gamma 2, RMSprop, cosine schedule). Healthy but alarming: the focal loss is small (well "
    "under the cross-entropy of the same predictions) while the gradient stays ordinary, "
    "because the (1 - p)^2 factor shrinks the loss of every fairly-confident row.",
)
def h546_chinlone_focal_loss_control(ctx):
    gen = seeded(54611)
    model = _Net(10, 64, 6, nn.ReLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200, eta_min=1e-4)
    batches = _grades(gen, 64, 10, 6, 546110, spread=1.6)
    losses, norms = _loop(ctx, model, opt, batches, 200, _focal, classifier=True, sched=sched)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
    ce = float(F.cross_entropy(logits, y))
    acc = float((logits.argmax(-1) == y).float().mean())
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("focal loss under half the cross-entropy", _mean(losses[-10:]) < 0.5 * ce)
    ctx.check("hard task: accuracy under 90%", acc < 0.9)
    ctx.check("learned: accuracy over 40% (chance 17%)", acc > 0.4)
    ctx.check(
        "gradient ordinary: last 10 over 0.2x the first 10",
        _mean(norms[-10:]) > 0.2 * _mean(norms[:10]),
    )


# -- 12. control: RetNet-style retention byte language model --------------------------------------


class _Retention(nn.Module):
    """Multi-scale retention (parallel form): (Q K^T * D) V with a per-head decay D."""

    def __init__(self, dim, heads, context):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.gate = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm = nn.GroupNorm(heads, dim)
        gammas = 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float32))
        i = torch.arange(context)
        diff = (i[:, None] - i[None, :]).float()
        decay = gammas[:, None, None] ** diff.clamp(min=0) * (diff >= 0)
        self.register_buffer("decay", decay)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        y = (scores * self.decay[:, :t, :t]) @ v
        y = y.transpose(1, 2).reshape(b * t, d)
        y = self.norm(y).reshape(b, t, d)
        return self.proj(F.silu(self.gate(x)) * y)


class _RetBlock(nn.Module):
    def __init__(self, dim, heads, context):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.retention = _Retention(dim, heads, context)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.retention(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _RetLM(nn.Module):
    def __init__(self, vocab=128, dim=48, heads=4, layers=2, context=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_RetBlock(dim, heads, context) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.lm_head.weight = self.tok.weight  # tied

    def forward(self, idx):
        x = self.tok(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@scenario(
    family="shibori_fold_pattern_retention_byte_lm",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Shibori fold-pattern notation byte language model with RetNet-style multi-scale "
    "retention layers (per-head decay, SiLU gate, GroupNorm) and tied embedding/head weights "
    "(Adam, OneCycleLR, label smoothing 0.1, clipping at 1). An ordinary run: the loss falls "
    "from ln 128.",
)
def h546_shibori_retention_lm_control(ctx):
    gen = seeded(54612)
    model = _RetLM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)

    def lm(logits, y):
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), label_smoothing=0.1
        )

    losses, _ = _loop(
        ctx, model, opt, text_batches(gen, 16, 32, 128), steps, lm, clip=1.0, sched=sched
    )
    ctx.check("tied weights", model.lm_head.weight is model.tok.weight)
    ctx.check("loss fell under 0.75x the first 10", _fell(losses, ratio=0.75))
    ctx.check("finite", _finite(losses))


# -- 13. control: Adadelta Huber regressor with accumulation and ReduceLROnPlateau ---------------


@scenario(
    family="dory_hull_launch_drag_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Dory-hull beach-launch drag regressor (SiLU MLP on hull weight, rocker, chine angle, "
    "sand grain, slope and wave set, Huber, Adadelta lr 1.0, accumulation over 2 micro-batches, "
    "ReduceLROnPlateau on the step loss, noisy targets). An ordinary run.",
)
def h546_dory_launch_adadelta_control(ctx):
    gen = seeded(54613)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 6, 546130, noise=0.2)
    losses = []
    for _ in range(200):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=1.0)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        sched.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check("finite", _finite(losses))
