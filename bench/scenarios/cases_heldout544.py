"""Held-out set 544 (``h544_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: kayak Eskimo-roll recovery classifier trained with nll_loss on raw logits (no
log_softmax: output_logit_divergence, Adamax); archery fletch vane-wear classifier whose softmax
temperature is read in milli-units (softmax_collapse, NAdam); fly-fishing cast-loop regressor
taking the log of line weight with no clamp (nonfinite, RMSprop); snow-avalanche slab settlement
Elman RNN with recurrent init gain typed 2.5 (exploding_gradients, SGD Nesterov); harp
regulating-disc regressor whose body group lr is scaled twice (update_ratio_out_of_range, RAdam);
ropewalk hemp-twist regressor fed one shard in raw counts (data_outlier, SGD momentum); pelota
cesta throw-speed Huber regressor with a one-step accumulation bug (gradient_spike, AdamW);
bobsleigh push-start regressor whose warm-up peak lr is typed 10x (sharpness_above_limit, SGD);
saddle-tree flocking regressor with Adagrad lr typed 2.0 (loss_of_plasticity, Adagrad); ice-fishing
auger-depth regressor with an un-unscaled manual loss scale for one step
(adam_second_moment_poisoned, Adam).
Controls: mushroom spore-print colour classifier with rare classes weighted 50x (large noisy
loss, alarming-looking, AdamW), lighthouse fog-signal retrieval-augmented classifier (learnt
key-value memory, Adam, OneCycleLR, label smoothing), rickshaw pedal-cadence regressor (fp16
autocast + GradScaler, ASGD, warm-up, accumulation 2, clipping).
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0, probs=None):
    """Readings scattered around one prototype per class (class frequencies ``probs``)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    p = torch.ones(classes) if probs is None else torch.tensor(probs, dtype=torch.float)
    while True:
        y = torch.multinomial(p, batch, replacement=True, generator=gen)
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


def _train_step(ctx, model, opt, loss, clip=None):
    loss.backward()
    n = grad_norm(model)
    ctx.grad_norms.append(n)
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)
    return n


# -- 1. output logit divergence: nll_loss on raw logits --------------------------------------------


@scenario(
    family="kayak_eskimo_roll_recovery_raw_logit_nll_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kayak Eskimo-roll recovery classifier (ReLU MLP on hip-snap timing, paddle sweep angle, "
    "head position, boat lean and water temperature; 5 outcome grades; Adamax lr 3e-3). The "
    "training script calls F.nll_loss on the head's raw logits (the log_softmax was dropped in a "
    "refactor): the loss is minus the target logit, it has no floor, and the head's logits grow "
    "without bound (over 20x their early size) while the loss falls below zero and keeps falling.",
)
def h544_kayak_roll_nll_on_raw_logits(ctx):
    gen = seeded(5441)
    model = _Net(8, 48, 5, nn.ReLU)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _grades(gen, 64, 8, 5, 54410)
    losses, peaks = [], []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        peaks.append(float(logits.detach().abs().max()))
        loss = F.nll_loss(logits, y)  # the bug: meant F.nll_loss(F.log_softmax(logits, -1), y)
        _train_step(ctx, model, opt, loss)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    ctx.check("head logits grew over 20x", _mean(peaks[-10:]) > 20 * _mean(peaks[:5]))
    ctx.check("logits still growing at the end", peaks[-1] > 1.3 * peaks[-50])
    ctx.check("loss unbounded below (under -10)", losses[-1] < -10)
    ctx.check("loss finite", _finite(losses))


# -- 2. softmax collapse: temperature read in milli-units ------------------------------------------


@scenario(
    family="archery_fletch_vane_wear_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Archery fletch vane-wear classifier (GELU MLP on vane height, stiffness, offset angle, "
    "arrow spin, grouping spread and shot count; 6 wear grades; NAdam lr 2e-3). The config gives "
    "the softmax temperature in milli-units ('temperature_milli: 2000', meaning 2.0) and the "
    "loader divides by 1e6 instead of 1e3: the logits are divided by 0.002, the softmax "
    "saturates: over half the rows at the start and over a tenth at every step (a fifth late) "
    "hold a probability that rounds to exactly 1.0 in float32 (the "
    "loss lives on the few rows where the wrong class wins).",
)
def h544_archery_fletch_temperature_in_milli(ctx):
    gen = seeded(5442)

    class Fletch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 6)

        def forward(self, x):
            return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))

    model = Fletch()
    temperature = 2000 / 1e6  # the bug: meant 2000 / 1e3
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _grades(gen, 64, 6, 6, 54420, spread=1.2)
    losses, saturated = [], []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        with torch.no_grad():
            p = torch.softmax(logits, -1)
            saturated.append(float(((p == 1.0).any(-1)).float().mean()))
        loss = F.cross_entropy(logits, y)
        _train_step(ctx, model, opt, loss)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    with torch.no_grad():
        x, y = next(batches)
        meant = float((torch.softmax(model(x) / 2.0, -1) == 1.0).any(-1).float().mean())
    ctx.check("over 50% of rows with a probability exactly 1.0 at first", saturated[0] > 0.5)
    ctx.check(
        "over 10% of rows exactly 1.0 every step, over 20% late",
        min(saturated) > 0.1 and _mean(saturated[-50:]) > 0.2,
    )
    ctx.check("no row saturated at the meant temperature", meant == 0.0)
    ctx.check("loss finite", _finite(losses))


# -- 3. nonfinite: log of a zero line weight -------------------------------------------------------


class _LogFeatures(nn.Module):
    """log of the line weight and the rod length, concatenated to the rest (no clamp)."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :2]), x[:, 2:]], 1)


class _CastLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.logf = _LogFeatures()
        self.fc1 = nn.Linear(6, 40)
        self.fc2 = nn.Linear(40, 40)
        self.head = nn.Linear(40, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(self.logf(x)))))).squeeze(-1)


@scenario(
    family="fly_fishing_cast_loop_log_line_weight_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("logf",),
    diverges=91,
    onset=90,
    heldout=True,
    note="Fly-fishing cast-loop width regressor (log-feature module, tanh MLP; line weight, rod "
    "length, haul speed, wind, casting arc, tippet length; MSE; RMSprop lr 1e-3). The log-feature "
    "module takes log of the line weight with no clamp; at step 90 the shard of a tenkara session "
    "(no fly line: weight logged as 0) arrives, log 0 = -inf; tanh keeps that batch's loss finite "
    "but its gradient is NaN (inf * 0), RMSprop writes NaN into the weights and the loss is NaN "
    "from step 91.",
)
def h544_fly_cast_log_zero_line_weight(ctx):
    gen = seeded(5443)
    model = _CastLoop()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    seen = {}
    model.logf.register_forward_hook(
        lambda m, i, o: seen.__setitem__("logf", bool((~torch.isfinite(o)).any()))
    )
    batches = _readings(gen, 64, 6, 54430)
    losses, bad, gnan = [], [], []
    for step in range(140):
        x, y = next(batches)
        x = x.clone()
        x[:, :2] = torch.exp(0.5 * x[:, :2])  # positive weights and lengths
        if step >= 90:
            x[:8, 0] = 0.0
        loss = F.mse_loss(model(x), y)
        bad.append(seen["logf"])
        gnan.append(not math.isfinite(_train_step(ctx, model, opt, loss)))
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 91", first_bad == 91)
    ctx.check(
        "gradient first non-finite at step 90", gnan.index(True) == 90 if any(gnan) else False
    )
    ctx.check("logf output non-finite at step 90", len(bad) > 90 and bad[90])
    ctx.check("logf finite before step 90", not any(bad[:90]))
    ctx.check("trained before step 90", _fell(losses[:90]))


# -- 4. exploding gradients: recurrent init gain typed 2.5 -----------------------------------------


class _SlabRNN(nn.Module):
    def __init__(self, gain):
        super().__init__()
        self.cell = nn.RNNCell(4, 32, nonlinearity="tanh")
        nn.init.orthogonal_(self.cell.weight_hh, gain=gain)
        self.head = nn.Linear(32, 1)

    def forward(self, x, keep=None):
        h = torch.zeros(x.shape[0], 32)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if keep is not None:
                h.retain_grad()
                keep.append(h)
        return self.head(h).squeeze(-1)


@scenario(
    family="snow_avalanche_slab_settlement_elman_rnn",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="Snow-avalanche slab settlement Elman RNN (tanh, 32 units, 40 hourly frames of snowfall, "
    "wind loading, air temperature and solar input; MSE on the settlement; SGD Nesterov lr 0.01, "
    "clipped at 1). The recurrent weights are orthogonally initialised with gain typed 2.5 for "
    "0.25: the gradient grows back through time (the first frame's state gradient is over 100x "
    "the last frame's), total gradient norms are huge and clipping keeps the run from NaN "
    "but it learns little.",
)
def h544_avalanche_slab_rnn_gain_typo(ctx):
    gen = seeded(5444)
    model = _SlabRNN(2.5)  # the bug: meant 0.25
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(54440)
    w = torch.randn(4, generator=g)
    losses, norms, ratios = [], [], []
    for _ in range(120):
        x = torch.randn(32, 40, 4, generator=gen) * 0.5
        y = torch.tanh((x @ w).mean(1) * 2.0) + 0.05 * torch.randn(32, generator=gen)
        keep = []
        loss = F.mse_loss(model(x, keep), y)
        loss.backward()
        ratios.append(float(keep[0].grad.norm() / keep[-1].grad.norm().clamp_min(1e-12)))
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    ctx.check("first frame's state gradient over 100x the last's", _median(ratios[:20]) > 100)
    ctx.check("gradient norm over 20 (clip at 1)", _median(norms) > 20)
    ctx.check("loss finite", _finite(losses))


# -- 5. update ratio out of range: body group lr scaled twice --------------------------------------


@scenario(
    family="harp_regulating_disc_two_group_gelu_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Harp regulating-disc buzz regressor (GELU MLP on disc position, string gauge, pedal "
    "setting, soundboard humidity, pluck force, string age, room temperature; MSE; RAdam with two "
    "param groups). The layer-wise lr multiplier for the first layer ('fc1_lr_mult: 1e-2') is "
    "applied twice, once in the config loader and once in the group builder, and the base lr "
    "is given in 'x1e-3' units: fc1's lr is 3e-3 * 1e-2 * 1e-2 * 1e-3 = 3e-10, its weights do not "
    "move (relative change under 1e-5) while the head group trains normally.",
)
def h544_harp_disc_fc1_lr_scaled_twice(ctx):
    gen = seeded(5445)

    class Harp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(7, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 1)

        def forward(self, x):
            return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)

    model = Harp()
    base = 3e-3
    mult = 1e-2
    opt = torch.optim.RAdam(
        [
            {"params": model.fc1.parameters(), "lr": base * mult * mult * 1e-3},  # the bug
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": base},
        ]
    )
    ctx.attach(model, opt)
    w1, w2 = _flat(model.fc1), _flat(model.fc2)
    batches = _readings(gen, 64, 7, 54450)
    losses = []
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        _train_step(ctx, model, opt, loss)
        losses.append(float(loss.detach()))
    ctx.check("fc1 relative change under 1e-5", _rel(_flat(model.fc1), w1) < 1e-5)
    ctx.check("fc2 relative change over 1e-2", _rel(_flat(model.fc2), w2) > 1e-2)
    ctx.check("fc1 group lr under 1e-8", opt.param_groups[0]["lr"] < 1e-8)
    ctx.check("loss finite", _finite(losses))


# -- 6. data outlier: one shard in raw counts ------------------------------------------------------


@scenario(
    family="ropewalk_hemp_twist_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Ropewalk hemp-twist regressor (ReLU MLP on strand count, fibre length, hook speed, "
    "walk length, tar content, humidity; MSE; SGD momentum 0.9 lr 0.01, clipped at 5). At step 100 "
    "one shard arrives from an old ropewalk log that stored raw counter readings, not the "
    "standardised features (values about 400x larger): the loss at that batch is over 50x the "
    "median and its gradient over 20x; clipping bounds the step and the run recovers.",
)
def h544_ropewalk_raw_count_shard(ctx):
    gen = seeded(5446)
    model = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 6, 54460)
    losses, norms = [], []
    for step in range(200):
        x, y = next(batches)
        if step == 100:
            x = 400.0 * x.abs() + 200.0
        loss = F.mse_loss(model(x), y)
        norms.append(_train_step(ctx, model, opt, loss, clip=5.0))
        losses.append(float(loss.detach()))
    ctx.check("loss at step 100 over 50x the median", losses[100] > 50 * _median(losses[80:100]))
    ctx.check("gradient at step 100 over 20x the median", norms[100] > 20 * _median(norms[80:100]))
    ctx.check("recovered by the end", _mean(losses[-10:]) < 2 * _mean(losses[90:100]))
    ctx.check("loss finite", _finite(losses))


# -- 7. gradient spike: accumulation bug for one step ----------------------------------------------


@scenario(
    family="pelota_cesta_throw_speed_silu_huber_regressor",
    optimizer="AdamW",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Pelota cesta throw-speed regressor (SiLU MLP on arm length, cesta curve, wrist snap, "
    "run-up speed, release height, ball hardness; Huber; AdamW lr 2e-3 wd 1e-2, clipped at 1). "
    "After a restart at step 110 the accumulation divisor (2) is read as 1/128 (1/accum of the restart config) for "
    "that first step: the backpropagated loss is 256x the logged one, the gradient at step 110 is "
    "over 100x the median while the logged loss is ordinary; clipping bounds it.",
)
def h544_pelota_accumulation_divisor_inverted(ctx):
    gen = seeded(5447)

    class Cesta(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 1)

        def forward(self, x):
            return self.head(F.silu(self.fc2(F.silu(self.fc1(x))))).squeeze(-1)

    model = Cesta()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 6, 54470)
    accum = 128
    losses, norms = [], []
    for step in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            part = F.huber_loss(model(x), y, delta=0.5)
            divisor = 1.0 / accum if step == 110 else 2.0  # the bug on restart
            (part / divisor).backward()
            total += float(part.detach()) / 2
        n = grad_norm(model)
        norms.append(n)
        ctx.grad_norms.append(n)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = torch.tensor(total)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    ctx.check(
        "gradient at step 110 over 100x the median", norms[110] > 100 * _median(norms[90:110])
    )
    ctx.check("logged loss at step 110 ordinary", losses[110] < 3 * _median(losses[90:110]))
    ctx.check("trained", _fell(losses))


# -- 8. sharpness above limit: warm-up peak lr typed 10x -------------------------------------------


def _top_hessian_eig(model, loss_fn, x, y, iters=15):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    family="bobsleigh_push_start_split_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=20,
    heldout=True,
    note="Bobsleigh push-start split regressor (tanh MLP on push-athlete sprint times, sled mass, "
    "ice temperature, track gradient, spike grip, crew count; MSE; plain SGD with linear warm-up "
    "over 80 steps). The warm-up's peak lr is typed 1.5 for 0.15: once lr passes 2/sharpness "
    "(by step 20, lr 0.39) the loss oscillates, then climbs and blows up to NaN.",
)
def h544_bobsleigh_warmup_peak_typo(ctx):
    gen = seeded(5448)
    model = _Net(6, 48, 1, nn.Tanh)
    peak = 1.5  # the bug: meant 0.15
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 6, 54480)
    probe_x, probe_y = next(batches)
    losses, products = [], []
    for step in range(150):
        lr = peak * min(1.0, (step + 1) / 80)
        for grp in opt.param_groups:
            grp["lr"] = lr
        if step % 10 == 0 and (not losses or losses[-1] < 10):
            products.append((step, lr * _top_hessian_eig(model, F.mse_loss, probe_x, probe_y)))
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        _train_step(ctx, model, opt, loss)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    best = min(losses[:40])
    ctx.check("lr x sharpness under 2 at the start", products[0][1] < 2)
    ctx.check("lr x sharpness over 2 by step 20", dict(products).get(20, 0.0) > 2)
    ctx.check("loss blew up over 100x its best", max(losses) > 100 * best or not _finite(losses))
    ctx.check("trained at first", _mean(losses[15:25]) < _mean(losses[:5]))


# -- 9. loss of plasticity: Adagrad lr typed 2.0 ---------------------------------------------------


@scenario(
    family="saddle_tree_flocking_firmness_relu_regressor",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="Saddle-tree flocking firmness regressor (ReLU MLP on wool flock density, tree width, "
    "panel angle, rider weight, gullet height, stitching count, humidity, all positive raw "
    "readings; MSE; Adagrad). The lr is typed 2.0 for 0.02: the first steps (Adagrad moves every "
    "parameter by about lr at once) throw most of fc1's ReLUs negative on every input, over 70% "
    "of act1's units are dead from then on and the loss stalls near the target variance, over "
    "twice what the same net reaches at lr 0.02.",
)
def h544_saddle_tree_adagrad_lr_typo(ctx):
    def train(lr, attach):
        gen = seeded(5449)
        model = _Net(7, 64, 1, nn.ReLU)
        opt = torch.optim.Adagrad(model.parameters(), lr=lr)
        if attach:
            ctx.attach(model, opt)
        acts = {}
        model.act1.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
        batches = _readings(gen, 128, 7, 54490)
        losses, dead = [], []
        for _ in range(150):
            x, y = next(batches)
            x = torch.exp(0.5 * x)
            loss = F.mse_loss(model(x), y)
            dead.append(float(((acts["a"] > 0).sum(0) == 0).float().mean()))
            if attach:
                _train_step(ctx, model, opt, loss)
            else:
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                break
        return losses, dead

    meant, _ = train(0.02, False)
    losses, dead = train(2.0, True)  # the bug: meant 0.02
    ctx.check("under 25% of act1 dead at step 0", dead[0] < 0.25)
    ctx.check("over 70% of act1 dead at the end", _mean(dead[-10:]) > 0.7)
    ctx.check("loss stalls over 2x the meant run's", _mean(losses[-20:]) > 2 * _mean(meant[-20:]))
    ctx.check("loss finite", _finite(losses))


# -- 10. adam second moment poisoned: manual loss scale not unscaled for one step ------------------


@scenario(
    family="ice_fishing_auger_depth_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="Ice-fishing auger depth regressor (SiLU MLP on ice thickness, snow cover, air "
    "temperature, auger rpm, blade wear, hole count; MSE; Adam lr 2e-3, beta2 0.999, no clipping). "
    "A manual loss scale of 65536 (left from an fp16 experiment) is applied at step 80 and the "
    "unscale is skipped for that one step: one gradient 65536x the usual fills Adam's second "
    "moment, Adam's denominator stays over 100x its old size, the updates afterwards are over 5x smaller than before and the loss stops falling.",
)
def h544_ice_auger_unscaled_loss_step(ctx):
    gen = seeded(54411)

    class Auger(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 1)

        def forward(self, x):
            return self.head(F.silu(self.fc2(F.silu(self.fc1(x))))).squeeze(-1)

    model = Auger()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 6, 544110, noise=0.02)
    losses, norms, moves, vmax, denom = [], [], [], [], []
    for step in range(220):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        before = _flat(model)
        scaled = loss * 65536.0 if step == 80 else loss  # the bug: no unscale on that step
        scaled.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        moves.append(float((_flat(model) - before).norm()))
        vmax.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))
        v_hat = torch.cat([s["exp_avg_sq"].flatten() for s in opt.state.values()])
        denom.append(float(v_hat.sqrt().median()) / math.sqrt(1 - 0.999 ** (step + 1)))
        losses.append(float(loss.detach()))
    ctx.check("gradient at step 80 over 1e4x the median", norms[80] > 1e4 * _median(norms[60:80]))
    ctx.check("second moment grew over 1e6x", vmax[80] > 1e6 * vmax[79])
    ctx.check("updates over 5x smaller after", _median(moves[150:220]) * 5 < _median(moves[60:80]))
    ctx.check("Adam denominator over 100x at step 150", denom[150] > 100 * denom[79])
    ctx.check("loss stopped falling", _mean(losses[-20:]) > 0.8 * _mean(losses[85:105]))
    ctx.check("loss finite", _finite(losses))


# -- 11. control: rare classes weighted 50x (alarming-looking) --------------------------------------


@scenario(
    family="mushroom_spore_print_colour_class_weighted_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Mushroom spore-print colour classifier (ReLU MLP on cap diameter, gill spacing, stipe "
    "length, print hue readings, habitat codes; 8 colours, 3 of them rare at about 0.4% each; "
    "AdamW lr 2e-3 wd 1e-2, cosine schedule, clipping at 5). The rare classes are weighted 50x "
    "in the cross-entropy (class-balanced reweighting): the loss is large and jumps whenever a "
    "batch holds a rare print, which looks alarming, but the run is healthy: the loss falls and "
    "rare-class recall rises.",
)
def h544_spore_print_rare_class_weighted(ctx):
    gen = seeded(54412)
    probs = [0.2, 0.2, 0.2, 0.2, 0.188, 0.004, 0.004, 0.004]
    model = _Net(10, 64, 8, nn.ReLU)
    weight = torch.tensor([1.0] * 5 + [50.0] * 3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=250)
    ctx.attach(model, opt)
    batches = _grades(gen, 64, 10, 8, 544120, spread=1.3, probs=probs)
    losses = []
    for _ in range(250):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, weight=weight)
        _train_step(ctx, model, opt, loss, clip=5.0)
        sched.step()
        losses.append(float(loss.detach()))
    ev = _grades(seeded(544121), 2000, 10, 8, 544120, spread=1.3, probs=[0] * 5 + [1] * 3)
    xe, ye = next(ev)
    with torch.no_grad():
        recall = float((model(xe).argmax(-1) == ye).float().mean())
    ctx.check("loss fell", _fell(losses, 30, 0.7))
    ctx.check("rare-class recall over 0.7", recall > 0.7)
    ctx.check(
        "loss noisy (max over 3x median in last 100)",
        max(losses[-100:]) > 3 * _median(losses[-100:]),
    )
    ctx.check("loss finite", _finite(losses))


# -- 12. control: retrieval-augmented classifier ---------------------------------------------------


class _KVMemory(nn.Module):
    """A learnt key-value memory read by softmax attention."""

    def __init__(self, dim, slots):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.keys = nn.Parameter(torch.randn(slots, dim) / math.sqrt(dim))
        self.values = nn.Parameter(torch.randn(slots, dim) * 0.1)

    def forward(self, h):
        att = torch.softmax(self.query(h) @ self.keys.t() / math.sqrt(h.shape[-1]), -1)
        return att @ self.values


class _FogSignal(nn.Module):
    def __init__(self, d_in, dim=32, slots=24, classes=6):
        super().__init__()
        self.encoder = nn.Linear(d_in, dim)
        self.memory = _KVMemory(dim, slots)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = F.gelu(self.encoder(x))
        return self.head(self.norm(h + self.memory(h)))


@scenario(
    family="lighthouse_fog_signal_retrieval_memory_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lighthouse fog-signal classifier (which station's horn: blast length, gap, pitch, "
    "echo delay, visibility...; encoder, a learnt 24-slot key-value memory read by softmax "
    "attention, LayerNorm, head; 6 stations; Adam with OneCycleLR, label smoothing 0.1, "
    "clipping at 1). A healthy control: the loss falls and it classifies well.",
)
def h544_lighthouse_fog_signal_memory(ctx):
    gen = seeded(54413)
    model = _FogSignal(9)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=200)
    ctx.attach(model, opt)
    batches = _grades(gen, 64, 9, 6, 544130, spread=1.0)
    losses, accs = [], []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        accs.append(float((logits.argmax(-1) == y).float().mean()))
        _train_step(ctx, model, opt, loss, clip=1.0)
        sched.step()
        losses.append(float(loss.detach()))
    ctx.check("loss fell", _fell(losses, 10, 0.6))
    ctx.check("accuracy over 0.8 at the end", _mean(accs[-20:]) > 0.8)


# -- 13. control: fp16 autocast + GradScaler, ASGD, warm-up, accumulation ------------------------


@scenario(
    family="rickshaw_pedal_cadence_fp16_silu_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Rickshaw pedal-cadence regressor (SiLU MLP on load, gradient, gear, headwind, road "
    "surface, rider heart rate, tyre pressure; MSE; fp16 autocast + GradScaler; ASGD lr 0.05 with "
    "a 20-step warm-up, accumulation 2, clipping at 1; noisy targets). A healthy control.",
)
def h544_rickshaw_cadence_fp16_asgd(ctx):
    gen = seeded(54414)

    class Rickshaw(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(7, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 1)

        def forward(self, x):
            return self.head(F.silu(self.fc2(F.silu(self.fc1(x))))).squeeze(-1)

    model = Rickshaw()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 32, 7, 544140, noise=0.15)
    losses = []
    for _ in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            part = F.mse_loss(out.float(), y)
            scaler.scale(part / 2).backward()
            total += float(part.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step()
        loss = torch.tensor(total)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    ctx.check("loss fell", _fell(losses, 10, 0.6))
    ctx.check("loss finite", _finite(losses))
