"""Held-out set 553 (``h553_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: treacle-toffee hard-crack time regressor whose linear warm-up lambda has no min(1, .)
(sharpness_above_limit, plain SGD); geyser silica-sinter rate regressor taking the square root of
a thermocouple reading below its offset (nonfinite, Adamax); anvil forge-weld deep ReLU classifier
with init gain typed 2.2 (exploding_gradients, SGD momentum); gong-bath overtone DenseNet-style
1-D CNN with the stem group lr typed 2e-9 (update_ratio_out_of_range, AdamW); fjord-seiche period
regressor fed one sample in millimetres (data_outlier, RMSprop); velodrome-banking lap-split BCE
classifier whose resume step multiplies by the accumulation count instead of dividing
(gradient_spike, SGD Nesterov); hay-rick core-temperature regressor hit by one step with a manual
loss scale never unscaled (adam_second_moment_poisoned, Adam); tobacco-kiln leaf-grade cosine
classifier with scale typed 3000 (softmax_collapse, Adagrad); bodyboard-fin wave-catch ReLU
regressor at lr typed 5e-2 (loss_of_plasticity, Adam); barrel-roll cask-stave defect classifier
on separable readings with no regularisation (output_logit_divergence, NAdam).
Controls: wassail-chant verse classifier under SGDR warm restarts (the loss jumps at every
restart, alarming-looking, SGD momentum); ox-plough furrow-depth regressor, trunk trained first,
then frozen and fine-tuned with LoRA adapters (RAdam); mbira tine-buzz Huber regressor under fp16
autocast + GradScaler (AdamW, OneCycleLR, accumulation 2, clipping, noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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


# -- 1. sharpness above limit: a warm-up lambda with no min(1, .) ---------------------------------


@scenario(
    family="treacle_toffee_hard_crack_time_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=40,
    heldout=True,
    note="Treacle-toffee hard-crack time regressor (tanh MLP on sugar mass, treacle share, butter "
    "share, pan diameter, burner power and starting temperature, MSE, plain SGD lr 0.2). The LambdaLR "
    "warm-up is written lambda s: s / 40 instead of min(1, s / 40): after step 40 the learning "
    "rate keeps climbing linearly, lr x top Hessian eigenvalue passes 2 and the loss blows up.",
)
def h553_treacle_warmup_missing_clamp(ctx):
    gen = seeded(5531)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 40)  # meant min(1, .)
    batches = _readings(gen, 64, 6, 55310)
    probe = next(batches)
    products = []

    def before(step):
        if step % 5 == 0:
            lr = opt.param_groups[0]["lr"]
            products.append((step, lr * _top_hessian_eig(model, F.mse_loss, *probe)))

    losses, _ = _loop(ctx, model, opt, batches, 240, F.mse_loss, before=before, sched=sched)
    smooth = [_mean(losses[max(0, i - 4) : i + 1]) for i in range(len(losses))]
    best = min(smooth)
    blow = next((i for i, v in enumerate(smooth) if not math.isfinite(v) or v > 100 * best), None)
    cross = next((s for s, p in products if p > 2), None)
    ctx.check("lr x sharpness under 2 up to step 40", all(p < 2 for s, p in products if s <= 40))
    ctx.check("lr x sharpness passes 2 after step 40", cross is not None and cross > 40)
    ctx.check(
        "5-step mean loss over 100x its best (or non-finite) after the crossing",
        blow is not None and cross is not None and blow >= cross,
    )
    ctx.check("trained up to step 40", _fell(losses[:40]))


# -- 2. nonfinite: square root of a thermocouple reading below its offset -------------------------


class _SinterFeatures(nn.Module):
    """Physics feature: sqrt of the vent temperature above the silica-saturation offset."""

    def __init__(self, offset=0.0):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        root = torch.sqrt(x[:, :1] - self.offset)  # no clamp: assumes vent above the offset
        return torch.cat([root, x[:, 1:]], -1)


class _SinterNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.vent = _SinterFeatures()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(self.vent(x)))))
        return self.head(h).squeeze(-1)


@scenario(
    family="geyser_silica_sinter_rate_sqrt_feature_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("vent",),
    diverges=70,
    onset=70,
    heldout=True,
    note="Geyser silica-sinter deposition-rate regressor (GELU MLP on a sqrt-of-excess vent "
    "temperature feature, pool pH, discharge, silica concentration, wind and air temperature, "
    "MSE, Adamax). The feature module takes sqrt(vent - offset) with no clamp; at step 70 a "
    "thermocouple dropout reads below the offset for one sample, sqrt of a negative gives NaN in "
    "the 'vent' module and the loss is NaN at step 70.",
)
def h553_geyser_sqrt_negative_excess(ctx):
    gen = seeded(5532)
    model = _SinterNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}
    model.vent.register_forward_hook(
        lambda m, i, o: seen.__setitem__("bad", bool((~torch.isfinite(o)).any()))
    )
    base = _readings(gen, 64, 6, 55320)

    def batches():
        for x, y in base:
            x = x.clone()
            x[:, 0] = x[:, 0].abs() + 0.5  # excess temperature, positive in every good reading
            yield x, y

    stream = batches()
    bad = []

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[3, 0] = -0.8  # thermocouple dropout
        return x, y

    def after(step, loss):
        bad.append(seen.get("bad", False))

    losses, _ = _loop(ctx, model, opt, stream, 140, F.mse_loss, alter=alter, after=after)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 70", first_bad == 70)
    ctx.check("vent output non-finite at step 70", len(bad) > 70 and bad[70])
    ctx.check("vent finite before step 70", not any(bad[:70]))
    ctx.check("trained before step 70", _fell(losses[:70]))


# -- 3. exploding gradients: init gain typed 2.2 --------------------------------------------------


class _WeldNet(nn.Module):
    def __init__(self, d_in=10, hidden=64, depth=9, classes=4, gain=2.2):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, classes)
        for lin in self.layers:
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            lin.weight.data.mul_(gain / math.sqrt(2.0))  # meant gain sqrt(2): the kaiming default
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x)


@scenario(
    family="anvil_forge_weld_strength_deep_relu_classifier",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Anvil forge-weld strength-grade classifier (9-layer ReLU MLP on heat colour, hammer "
    "blows, flux, scale thickness and six more readings, cross-entropy, SGD momentum 0.9). The "
    "init multiplies kaiming weights by gain 2.2 where sqrt(2) was meant: every layer amplifies "
    "by about 1.55, the gradient grows backwards through depth (layer 0's output gradient is "
    "tens of times the last hidden layer's) and the first SGD steps blow the loss up.",
)
def h553_anvil_init_gain_typo(ctx):
    gen = seeded(5533)
    model = _WeldNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ratios = []
    outs = {}

    def keep(i):
        def hook(m, inp, o):
            o.retain_grad()
            outs[i] = o

        return hook

    for i in (0, len(model.layers) - 1):
        model.layers[i].register_forward_hook(keep(i))
    ctx.attach(model, opt)
    losses = []
    batches = _grades(gen, 64, 10, 4, 55330)
    for _step in range(120):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        g0 = float(outs[0].grad.norm())
        g_last = float(outs[len(model.layers) - 1].grad.norm())
        ratios.append(g0 / max(g_last, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    best = min(v for v in losses if math.isfinite(v))
    ctx.check(
        "layer 0's output gradient over 20x the last hidden layer's at step 0", ratios[0] > 20
    )
    ctx.check(
        "loss over 100x its start or non-finite",
        any(not math.isfinite(v) or v > 100 * losses[0] for v in losses),
    )
    ctx.check("finite loss at step 0", math.isfinite(losses[0]) and best <= losses[0])


# -- 4. update ratio: DenseNet-style 1-D CNN, stem group lr typed 2e-9 ----------------------------


class _DenseLayer(nn.Module):
    def __init__(self, c_in, growth):
        super().__init__()
        self.norm = nn.BatchNorm1d(c_in)
        self.conv = nn.Conv1d(c_in, growth, 3, padding=1)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], 1)


class _GongDenseNet(nn.Module):
    """Stem conv, a dense block of three concatenating layers, a transition, a head."""

    def __init__(self, classes=4, growth=8):
        super().__init__()
        self.stem = nn.Conv1d(1, 8, 5, padding=2)
        self.block = nn.Sequential(*(_DenseLayer(8 + i * growth, growth) for i in range(3)))
        self.transition = nn.Conv1d(8 + 3 * growth, 16, 1)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.block(self.stem(x[:, None, :]))
        h = F.relu(self.transition(F.avg_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _overtones(gen, batch=32, length=64, classes=4):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.1 * y.float()[:, None]
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        decay = torch.exp(-t / (20 + 10 * y.float()[:, None]))
        x = torch.sin(freq * t + phase) * decay + 0.3 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    family="gong_bath_overtone_densenet_conv1d_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("stem",),
    diverges=None,
    heldout=True,
    note="Gong-bath overtone classifier, a DenseNet-style 1-D CNN (stem conv, a dense block whose "
    "layers concatenate their features, a transition, a linear head; cross-entropy, AdamW, param "
    "groups). The stem's group lr is typed 2e-9 for 2e-3: its updates are a millionth of its "
    "weights' scale, it never moves, the rest fits what it can; the loss falls, nothing blows up.",
)
def h553_gong_stem_lr_exponent_typo(ctx):
    gen = seeded(5534)
    model = _GongDenseNet()
    rest = [p for n, p in model.named_parameters() if not n.startswith("stem.")]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 2e-3},
            {"params": model.stem.parameters(), "lr": 2e-9},  # the typo: meant 2e-3
        ],
        weight_decay=0.01,
    )
    stem0, trans0 = _flat(model.stem), _flat(model.transition)
    losses, _ = _loop(ctx, model, opt, _overtones(gen), 150, F.cross_entropy, classifier=True)
    ctx.check("stem moved under 1e-5 of its norm", _rel(_flat(model.stem), stem0) < 1e-5)
    ctx.check("transition moved over 5% of its norm", _rel(_flat(model.transition), trans0) > 0.05)
    ctx.check("loss fell", _fell(losses, ratio=0.85))


# -- 5. data outlier: one sample in millimetres ---------------------------------------------------


@scenario(
    family="fjord_seiche_period_silu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Fjord seiche-period regressor (SiLU MLP on basin length, sill depth, mean depth, wind "
    "setup, pressure jump and tide range, MSE, RMSprop, clipping at 1). The shard served at step "
    "120 holds one sample whose sill depth came from a survey in millimetres (x1000, not "
    "standardised): one batch's loss and gradient burst, the clip bounds the update and the run "
    "recovers.",
)
def h553_fjord_sill_depth_in_mm(ctx):
    gen = seeded(5535)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[5, 1] = 1000.0 * x[5, 1].abs().clamp(min=1.0)
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 55350), 220, F.mse_loss, alter=alter, clip=1.0
    )
    ctx.check(
        "loss at step 120 over 50x the previous 10", losses[120] > 50 * _mean(losses[110:120])
    )
    ctx.check("gradient at step 120 over 50x the median", norms[120] > 50 * _median(norms[100:120]))
    ctx.check(
        "recovers: last 20 under 2x pre-onset", _mean(losses[-20:]) < 2 * _mean(losses[100:120])
    )
    ctx.check("trained before step 120", _fell(losses[:120]))


# -- 6. gradient spike: accumulation multiply for divide on the resume step -----------------------


@scenario(
    family="velodrome_banking_lap_split_bce_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=140,
    heldout=True,
    note="Velodrome lap-split classifier (GELU MLP on banking angle, cadence, gear, power and "
    "six more readings, BCE of 'split under target', SGD Nesterov, 8-way gradient accumulation, "
    "clipping at 2). The resume path after a checkpoint at step 140 scales each micro-batch's "
    "loss by accum (8) instead of 1/accum for that one step: the gradient is 64x, the logged "
    "loss is ordinary, the clip bounds the update.",
)
def h553_velodrome_accum_multiply(ctx):
    gen = seeded(5536)
    model = _Net(10, 48, 1, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(55360)
    w = torch.randn(10, generator=g)
    ctx.attach(model, opt)
    accum = 8
    losses, norms = [], []
    for step in range(200):
        total = 0.0
        for _ in range(accum):
            x = torch.randn(16, 10, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(16, generator=gen)) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            factor = accum if step == 140 else 1.0 / accum  # resume bug: multiply, not divide
            (loss * factor).backward()
            total += float(loss.detach()) / accum
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        logged = torch.tensor(total)
        losses.append(total)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient at step 140 over 30x the median", norms[140] > 30 * _median(norms[120:140]))
    ctx.check("logged loss at 140 ordinary", losses[140] < 2 * _mean(losses[130:140]))
    ctx.check("trained", _fell(losses))


# -- 7. adam second moment poisoned: manual loss scale never unscaled for one step ----------------


@scenario(
    family="hay_rick_core_temperature_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="Hay-rick core-temperature regressor (tanh MLP on bale moisture, stack height, days since "
    "baling, air temperature, humidity and packing density, MSE, Adam beta2 0.999, no clip). A "
    "hand-rolled loss scale of 65536 is applied at step 80 and the unscale is skipped on that "
    "step: one gradient 65536x ordinary fills the second moment, and for tens of steps after "
    "Adam's updates are a fraction of their size before while the loss sits higher.",
)
def h553_hay_rick_unscaled_loss_scale(ctx):
    gen = seeded(5537)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    vmax, steps_norm = [], []
    prev = {}

    def before(step):
        prev["w"] = _flat(model)

    def after(step, loss):
        steps_norm.append(float((_flat(model) - prev["w"]).norm()))
        vmax.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 55370),
        180,
        F.mse_loss,
        before=before,
        after=after,
        backprop=lambda s, loss: loss * 65536.0 if s == 80 else loss,
    )
    ctx.check("gradient at 80 over 1e3x the median", norms[80] > 1e3 * _median(norms[60:80]))
    ctx.check("second moment max over 1e4x after step 80", vmax[80] > 1e4 * vmax[79])
    ctx.check(
        "updates over steps 130-170 under 40% of steps 60-80",
        _mean(steps_norm[130:170]) < 0.4 * _mean(steps_norm[60:80]),
    )
    ctx.check(
        "while the loss over 130-170 is over 2x that of 60-80",
        _mean(losses[130:170]) > 2 * _mean(losses[60:80]),
    )
    ctx.check("finite", _finite(losses))


# -- 8. softmax collapse: cosine classifier scale typed 3000 --------------------------------------


class _CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class _LeafNet(nn.Module):
    def __init__(self, d_in=8, hidden=48, classes=5, scale=3000.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = _CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


@scenario(
    family="tobacco_kiln_leaf_grade_cosine_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tobacco-kiln leaf-grade classifier (ReLU MLP with a cosine-similarity head on leaf "
    "colour, moisture, kiln temperature, humidity, curing hour and three more readings; "
    "cross-entropy, Adagrad). The cosine head's scale is typed 3000 for 30: the logits span "
    "thousands, the float32 softmax rounds most rows' target probability to exactly 1.0 and "
    "those rows give no gradient.",
)
def h553_tobacco_cosine_scale_typo(ctx):
    gen = seeded(5538)
    model = _LeafNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    fracs, spans = [], []
    last = {}

    def alter(step, x, y):
        last["xy"] = (x, y)
        return x, y

    def after(step, loss):
        if step % 10 == 9:
            with torch.no_grad():
                x, y = last["xy"]
                out = model(x)
                fracs.append(collapsed_fraction(out, y))
                spans.append(float((out.max(-1).values - out.min(-1).values).mean()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 8, 5, 55380, spread=0.8),
        150,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        after=after,
    )
    ctx.check("over 40% of rows' target probability exactly 1.0", max(fracs) > 0.4)
    ctx.check("mean logit span over 500", max(spans) > 500)
    ctx.check("finite", _finite(losses))


# -- 9. loss of plasticity: lr typed 5e-2 kills the ReLUs -----------------------------------------


@scenario(
    family="bodyboard_fin_wave_catch_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Bodyboard wave-catch speed regressor (ReLU MLP on swell period, face angle, rider mass, "
    "fin area, kick rate and board length, MSE, Adam). The lr is typed 5e-2 for 5e-4: early "
    "large updates push fc2's pre-activations negative for every input, most ReLUs die and "
    "stay dead, and the loss stalls above what the net can fit.",
)
def h553_bodyboard_lr_kills_relus(ctx):
    gen = seeded(5539)
    model = _Net(6, 64, 1, nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)  # meant 5e-4
    batches = _readings(gen, 128, 6, 55390)
    probe_x, _ = next(batches)
    feats = {}
    model.act2.register_forward_hook(lambda m, i, o: feats.__setitem__("h", o.detach()))
    with torch.no_grad():
        model(probe_x)
    dead0 = dead_fraction(feats["h"])
    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss)
    with torch.no_grad():
        model(probe_x)
    dead1 = dead_fraction(feats["h"])
    ctx.check("under 10% of fc2's units dead at the start", dead0 < 0.1)
    ctx.check("over 50% of fc2's units dead at the end", dead1 > 0.5)
    ctx.check("finite", _finite(losses))


# -- 10. output logit divergence: separable readings, nothing holds the head ----------------------


@scenario(
    family="barrel_roll_cask_stave_defect_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Cask-stave defect classifier for barrel rolling (GELU MLP on stave ring count, tap "
    "resonance, moisture, bend and four more readings, cross-entropy, NAdam lr 3e-3, no weight "
    "decay, no label smoothing). The classes are separable, so cross-entropy keeps rewarding "
    "larger margins: the head's logits grow steadily, over 20x from the start, and are still "
    "growing at the end.",
)
def h553_barrel_cask_logits_unbounded(ctx):
    gen = seeded(55310)
    model = _Net(8, 48, 3, nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    batches = _grades(gen, 64, 8, 3, 553100, spread=0.5)
    probe_x, _ = next(batches)
    mags = []

    def after(step, loss):
        with torch.no_grad():
            mags.append(float(model(probe_x).abs().max()))

    losses, _ = _loop(ctx, model, opt, batches, 300, F.cross_entropy, classifier=True, after=after)
    ctx.check("max |logit| over 20x its first value", mags[-1] > 20 * mags[0])
    ctx.check("over 5x its step-10 value", mags[-1] > 5 * mags[10])
    ctx.check("still growing over the last 100 steps", mags[-1] > 1.05 * mags[-100])
    ctx.check("loss fell", _fell(losses))


# -- 11. control (alarming): SGDR warm restarts ---------------------------------------------------


@scenario(
    family="wassail_chant_verse_warm_restart_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Wassail-chant verse classifier (ReLU MLP on 8x8 syllable-stress grids, cross-entropy, "
    "SGD momentum 0.9, CosineAnnealingWarmRestarts T_0=50). At every restart the lr jumps back "
    "to its peak and the loss jumps up for a few steps: alarming on a plot, the ordinary SGDR "
    "practice, and the run trains.",
)
def h553_wassail_sgdr_restarts(ctx):
    from scenarios.common import digit_batches

    gen = seeded(55311)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=50)
    losses, _ = _loop(
        ctx, model, opt, digit_batches(gen), 200, F.cross_entropy, classifier=True, sched=sched
    )
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
    ctx.check(
        "loss rises after a restart",
        any(_mean(losses[s : s + 5]) > _mean(losses[s - 5 : s]) for s in (50, 100, 150)),
    )


# -- 12. control: LoRA fine-tuning on a frozen trunk trained first --------------------------------


class _LoRALinear(nn.Module):
    def __init__(self, base, rank=4, alpha=8.0):
        super().__init__()
        self.base = base
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.lora_a.weight, std=1.0 / rank)
        nn.init.zeros_(self.lora_b.weight)
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))


@scenario(
    family="ox_plough_furrow_depth_lora_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Ox-plough furrow-depth regressor (GELU MLP on soil moisture, share angle, draught "
    "force, ox pace, stone count and slope, MSE). The trunk is trained first on the home farm's "
    "fields (Adam, not monitored), then frozen; rank-4 LoRA adapters on fc1 and fc2 plus the head "
    "are fine-tuned on a new farm's fields with RAdam, warm-up and clipping. Control.",
)
def h553_ox_plough_lora_finetune(ctx):
    gen = seeded(55312)
    model = _Net(6, 48, 1, nn.GELU)
    pre = torch.optim.Adam(model.parameters(), lr=3e-3)
    home = _readings(gen, 64, 6, 553120)
    for _ in range(150):
        x, y = next(home)
        F.mse_loss(model(x), y).backward()
        pre.step()
        pre.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)
    model.fc1 = _LoRALinear(model.fc1)
    model.fc2 = _LoRALinear(model.fc2)
    for p in model.head.parameters():
        p.requires_grad_(True)
    trunk0 = torch.cat([_flat(model.fc1.base), _flat(model.fc2.base)])
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.RAdam(trainable, lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    g = torch.Generator().manual_seed(553121)
    shift = 0.5 * torch.randn(6, generator=g)
    base_new = _readings(gen, 64, 6, 553120)

    def new_farm():
        for x, y in base_new:
            yield x, y + 0.4 * torch.tanh(x @ shift)

    losses, _ = _loop(ctx, model, opt, new_farm(), 150, F.mse_loss, clip=1.0, sched=sched)
    trunk1 = torch.cat([_flat(model.fc1.base), _flat(model.fc2.base)])
    ctx.check("fine-tune loss fell", _fell(losses, ratio=0.8))
    ctx.check("finite", _finite(losses))
    ctx.check("trunk unchanged", bool(torch.equal(trunk0, trunk1)))


# -- 13. control: fp16 autocast + GradScaler, OneCycleLR, accumulation, clipping ------------------


@scenario(
    family="mbira_tine_buzz_fp16_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Mbira tine-buzz level regressor (SiLU MLP on tine length, thickness, bridge height, "
    "pluck force, resonator gourd volume and bottle-cap rattle count, Huber loss on noisy "
    "targets, AdamW, OneCycleLR, fp16 autocast + GradScaler, accumulation 2, clipping at 1). "
    "Control.",
)
def h553_mbira_fp16_onecycle(ctx):
    gen = seeded(55313)
    model = _Net(6, 64, 1, nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, accum = 150, 2
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 32, 6, 553130, noise=0.2)
    losses = []
    for _step in range(steps):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.huber_loss(out.float(), y, delta=0.5)
            scaler.scale(loss / accum).backward()
            total += float(loss.detach()) / accum
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check("finite", _finite(losses))
