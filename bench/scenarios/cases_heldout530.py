"""Held-out set 530 (``h530_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a busking-pitch crowd-size deep tanh MLP initialised with gain 3.5 (gradients growing
through depth, SGD Nesterov); a chimney-sweep rod push-force regressor whose MultiStepLR gamma is
typed 10 for 0.1 (the lr jumps past 2/sharpness, plain SGD); a sheaf-toss fork-grip ReLU
classifier whose RMSprop lr is typed 0.2 for 0.002 (dead ReLUs); a tatting-shuttle knot-count
regressor whose trunk param group lr is typed 1e-8 for 1e-3 (trunk barely moves, Adam); a
moraine-lake calving-volume regressor fed one shard in cubic metres instead of millions of cubic
metres (ASGD, clipped); a kora-harp calabash resonance multi-label BCE net whose resumed step
weights the loss by the accumulation count instead of dividing by it (gradient spike, clipped,
SGD momentum); a fulgurite branch-count Gaussian-NLL net taking sqrt of an unclamped variance head
(NAdam); a log-rolling boom-sway regressor under fp16 autocast + GradScaler fed a shard in
newtons instead of kilonewtons (Adamax); a quoits clay-bed lie classifier whose softmax
temperature is typed 0.01 for 1.0 (plain SGD); a mammatus lobe-sag regressor whose hand-written
decoupled weight decay has its sign flipped (Adagrad).

Controls: a pelota cesta catch-zone classifier trained with sharpness-aware minimisation (SAM,
two forward-backward passes per step around SGD momentum, ReduceLROnPlateau); a crwth
bow-pressure GELU classifier under cosine warm restarts (AdamW, label smoothing, clipping, noisy
batches): its loss jumps up at every restart, which looks alarming and is healthy; a nacreous
cloud sun-angle Kolmogorov-Arnold network with learnable RBF edge functions (Adam, OneCycleLR,
Huber, gradient accumulation 2, clipping).
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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


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
    forward=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, loss)``
    returns the loss actually backpropagated, ``after(step, loss)``. Stops after a non-finite
    loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    forward = forward or (lambda m, x: m(x))
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(forward(model, x), y)
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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- 1. exploding gradients: a deep tanh MLP initialised with gain 3.5 ---------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="busking_pitch_crowd_size_deep_tanh_regressor",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Busking-pitch crowd-size regressor (12-layer tanh MLP on footfall, weather, hour, "
    "instrument loudness and pitch width, MSE, SGD Nesterov). The init helper is called with "
    "gain 3.5 (meant for a ReLU net's sqrt(2), typed from a note): the tanh stack sits in the "
    "chaotic regime, the backward signal grows layer by layer towards the input, the first "
    "layer's gradient is orders of magnitude above the head's; at an lr the same net trains "
    "well at gain 1, the oversized early updates feed back and the loss blows up to NaN.",
)
def h530_busking_deep_tanh_gain_typo(ctx):
    gen = seeded(5301)
    model = _DeepTanh(10, 48, 12, 3.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    ratios = []

    def after(step, loss):
        if step < 5:
            g0 = model.layers[0].weight.grad.norm()
            gl = model.layers[-1].weight.grad.norm()
            ratios.append(float(g0 / gl))

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 53010), 150, F.mse_loss, after=after
    )
    ctx.check("first layer's gradient over 20x the last layer's at init", _mean(ratios) > 20)
    peak = max((v for v in losses if math.isfinite(v)), default=0.0)
    ctx.check(
        "loss blew up: non-finite or over 1e6x the start",
        not _finite(losses) or peak > 1e6 * losses[0],
    )
    ctx.check("gradient norm grew over 1000x before the blow-up", max(norms) > 1000 * norms[0])


# -- 2. sharpness above limit: MultiStepLR gamma typed 10 for 0.1 --------------------------------


def _top_hessian_eig(model, loss_fn, iters=20):
    """Largest Hessian eigenvalue of ``loss_fn(model)`` by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        grads = torch.autograd.grad(loss_fn(model), params, create_graph=True)
        hv = torch.autograd.grad(grads, params, grad_outputs=v)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((u * u).sum() for u in hv))
        v = [u / norm for u in hv]
    model.zero_grad(set_to_none=True)
    return eig


@scenario(
    family="chimney_sweep_rod_push_force_multistep_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=80,
    note="Chimney-sweep rod push-force regressor (ReLU MLP on flue bends, soot depth, rod count, "
    "brush diameter, liner material, MSE, plain SGD lr 0.1). The MultiStepLR milestone at step 80 "
    "has gamma typed 10 for 0.1: the lr jumps to 1.0, lr x top Hessian eigenvalue goes from under "
    "2 to well over 2, the iterates oscillate along the sharp direction with growing amplitude "
    "and the loss jumps over 100x and stays there.",
)
def h530_chimney_sweep_multistep_gamma_typo(ctx):
    gen = seeded(5302)
    model = _Net(8, 32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[80], gamma=10.0)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(3), 256, 8, 53020))
    eig = {}

    def before(step):
        if step == 80:
            eig["lam"] = _top_hessian_eig(model, lambda m: F.mse_loss(m(probe_x), probe_y))
            eig["lr"] = opt.param_groups[0]["lr"]

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 53020), 160, F.mse_loss, before=before, sched=sched
    )
    lam = eig.get("lam", 0.0)
    ctx.check("lr x sharpness under 2 before the milestone", 0.1 * lam < 2)
    ctx.check("lr x sharpness over 2 after it", eig.get("lr", 0.0) * lam > 2)
    ctx.check("loss fell before the milestone", _mean(losses[70:80]) < 0.7 * _mean(losses[:10]))
    peak = max((v for v in losses[80:] if math.isfinite(v)), default=0.0)
    ctx.check(
        "loss blew up after the milestone: non-finite or over 100x its pre-milestone level",
        not _finite(losses) or peak > 100 * _mean(losses[70:80]),
    )


# -- 3. loss of plasticity: RMSprop lr typed 0.2 for 0.002 ---------------------------------------


@scenario(
    family="sheaf_toss_fork_grip_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="Sheaf-toss fork-grip classifier (ReLU MLP on fork angle, sheaf weight, run-up, release "
    "height and wind in raw units (mean about 3), 5 grip styles, cross-entropy, RMSprop). The lr is "
    "typed 0.2 for 0.002: the first normalised updates are huge, the first hidden layer's "
    "pre-activations go negative for every input, its ReLUs die and the classifier stalls.",
)
def h530_sheaf_toss_rmsprop_lr_typo_dead_relus(ctx):
    gen = seeded(5303)
    model = _Net(12, 64, 5)
    opt = torch.optim.RMSprop(model.parameters(), lr=0.2)
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(4), 512, 12, 5, 53030))
    probe_x = probe_x + 3.0
    with torch.no_grad():
        dead0 = dead_fraction(model.act1(model.fc1(probe_x)))
    data = ((x + 3.0, y) for x, y in _grades(gen, 64, 12, 5, 53030))
    losses, _ = _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True)
    with torch.no_grad():
        dead = dead_fraction(model.features(probe_x))
        acc = float((model(probe_x).argmax(1) == probe_y).float().mean())
    ctx.check("under 10% of act1 dead at init", dead0 < 0.1)
    with torch.no_grad():
        dead1 = dead_fraction(model.act1(model.fc1(probe_x)))
    ctx.check("over 80% of act1 units dead at the end", dead1 > 0.8)
    ctx.check("over 30% of act2 units dead at the end", dead > 0.3)
    ctx.check("accuracy stalls under 50% (5 classes)", acc < 0.5)
    ctx.check("finite", _finite(losses))


# -- 4. update ratio out of range: trunk param group lr typed 1e-8 -------------------------------


@scenario(
    family="tatting_shuttle_knot_count_two_group_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Tatting-shuttle knot-count regressor (ReLU MLP on thread gauge, shuttle wind, ring "
    "size, picot length and hand tension, MSE, Adam in two param groups: trunk and head). The "
    "trunk group's lr is typed 1e-8 for 1e-3: the trunk's weights move by under 1e-5 of their "
    "norm over the run, only the head learns, and the loss settles far above what the net fits.",
)
def h530_tatting_trunk_group_lr_typo(ctx):
    gen = seeded(5304)
    model = _Net(10, 48, 1)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adam(
        [{"params": trunk, "lr": 1e-8}, {"params": model.head.parameters(), "lr": 1e-3}]
    )
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 53040), 200, F.mse_loss)
    ctx.check("fc1 moved under 1e-5 of its norm", _rel_change(model.fc1.weight, w1) < 1e-5)
    ctx.check("head moved over 5% of its norm", _rel_change(model.head.weight, wh) > 0.05)
    ctx.check("finite, no blow-up", _finite(losses) and max(losses) < 10 * losses[0])


# -- 5. data outlier: one shard in cubic metres, not millions ------------------------------------


@scenario(
    family="moraine_lake_calving_volume_asgd_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Moraine-lake calving-volume regressor (ReLU MLP on lake level, water temperature, "
    "ice-cliff height, melt degree-days and seismic counts, MSE, ASGD, clipped at norm 5). The "
    "batch at step 120 comes from a shard whose calving volume was exported in cubic metres "
    "instead of millions of cubic metres: the targets are 1e6x too large, the loss and the "
    "gradient spike at that one step, clipping bounds the update and the run recovers.",
)
def h530_moraine_lake_bad_shard_units(ctx):
    gen = seeded(5305)
    model = _Net(8, 48, 1)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)

    def alter(step, x, y):
        return (x, y * 1e6) if step == 120 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 53050), 220, F.mse_loss, alter=alter, clip=5.0
    )
    base_l, base_g = _median(losses[100:120]), _median(norms[100:120])
    ctx.check("loss at step 120 over 1e6x the median before", losses[120] > 1e6 * base_l)
    ctx.check("gradient at step 120 over 1000x the median before", norms[120] > 1000 * base_g)
    ctx.check(
        "recovered: last 20 steps under 3x the pre-onset level", _mean(losses[-20:]) < 3 * base_l
    )
    ctx.check("finite", _finite(losses))


# -- 6. gradient spike: accumulation divisor applied as a multiplier on resume -------------------


class _HarpNet(nn.Module):
    def __init__(self, d_in, hidden, labels):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, labels)

    def forward(self, x):
        return self.head(self.act(self.body(x)))


def _resonances(gen, batch, d_in, labels, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, labels, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        logits = 1.5 * x @ w / math.sqrt(d_in)
        yield x, (torch.rand(batch, labels, generator=gen) < torch.sigmoid(logits)).float()


@scenario(
    family="kora_harp_calabash_resonance_multilabel_bce_net",
    optimizer="SGD(momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="Kora-harp calabash resonance tagger (SiLU MLP on calabash diameter, cowhide thickness, "
    "sound-hole size and bridge height, 6 resonance tags, BCE with logits, SGD momentum, "
    "gradient accumulation over 8 micro-batches, clipped at norm 2). The step after a resume "
    "(step 90) multiplies each micro-batch loss by the accumulation count instead of dividing "
    "by it: one 64x gradient burst that has nothing to do with the data; clipping bounds it.",
)
def h530_kora_harp_accum_resume_bug(ctx):
    gen = seeded(5306)
    model = _HarpNet(10, 48, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = _resonances(gen, 16, 10, 6, 53060)
    ctx.attach(model, opt)
    losses, norms, accum = [], [], 8
    for step in range(160):
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            scale = accum if step == 90 else 1.0 / accum
            (loss * scale).backward()
            total += float(loss.detach()) / accum
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    base = _median(norms[70:90])
    ctx.check("gradient at step 90 over 30x the median before", norms[90] > 30 * base)
    ctx.check("gradient back under 3x the median 5 steps later", norms[95] < 3 * base)
    ctx.check(
        "loss at step 90 no spike (the data is normal)", losses[90] < 1.5 * _mean(losses[80:90])
    )
    ctx.check("trained and finite", _fell(losses, ratio=0.95))


# -- 7. nonfinite: sqrt of an unclamped variance head --------------------------------------------


class _SigmaNet(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act1(self.fc1(x))
        return self.mean_head(h).squeeze(-1), self.var_head(h).squeeze(-1)


def _sqrt_var_nll(out, y):
    mu, var = out
    sigma = torch.sqrt(var)  # the bug: no softplus/clamp on the variance head
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


@scenario(
    family="fulgurite_branch_count_sqrt_variance_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=31,
    heldout=True,
    note="Fulgurite branch-length regressor with an uncertainty head (tanh MLP on sand grain "
    "size, moisture, strike current and silica fraction, Gaussian NLL, NAdam). The std is "
    "taken as sqrt of the raw variance head, with no softplus or clamp: as the NLL pulls the "
    "variance towards the small residual noise, the head goes negative for some sample, "
    "sqrt returns NaN and the loss is NaN from that step.",
)
def h530_fulgurite_sqrt_negative_variance(ctx):
    gen = seeded(5307)
    model = _SigmaNet(8, 32)
    opt = torch.optim.NAdam(model.parameters(), lr=0.002)
    seen = {}

    def after(step, loss):
        if not math.isfinite(loss) and "step" not in seen:
            seen["step"] = step

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 53070, noise=0.1), 300, _sqrt_var_nll, after=after
    )
    k = seen.get("step", -1)
    ctx.check("loss finite for the first 20 steps", _finite(losses[:20]))
    ctx.check("loss NaN at step 31", k == 31 and math.isnan(losses[k]))


# -- 8. amp overflow: a shard in newtons instead of kilonewtons under fp16 autocast --------------


@scenario(
    family="log_rolling_boom_sway_fp16_relu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=70,
    heldout=True,
    onset=70,
    note="Log-rolling boom-sway regressor (ReLU MLP on log diameter, water current, roller "
    "weights and boom anchor tension, MSE, fp16 autocast + GradScaler, Adamax). The tension "
    "is fed raw in kilonewtons (about 120); from step 70 a new shard logs it in newtons (about "
    "120000): under fp16 autocast the input and fc1's output overflow 65504 to inf and the "
    "loss is non-finite.",
)
def h530_log_rolling_newtons_shard_fp16(ctx):
    gen = seeded(5308)
    model = _Net(8, 48, 1)
    opt = torch.optim.Adamax(model.parameters(), lr=0.005)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    data = _readings(gen, 64, 8, 53080)
    ctx.attach(model, opt, scaler=scaler)
    losses, fc1_inf = [], {}
    for step in range(150):
        x, y = next(data)
        x = x.clone()
        x[:, 0] = 120.0 + 10.0 * x[:, 0]
        if step >= 70:
            x[:, 0] *= 1000.0
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        fc1_inf[step] = bool(torch.isinf(h).any())
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
    ctx.check("trained before the shard", _fell(losses[:70], ratio=0.8))
    ctx.check("fc1 output finite before step 70", not any(fc1_inf[s] for s in range(70)))
    ctx.check("fc1 fp16 output inf at step 70", fc1_inf.get(70, False))
    ctx.check("loss non-finite at step 70", len(losses) == 71 and not math.isfinite(losses[70]))


# -- 9. softmax collapse: temperature typed 0.01 for 1.0 -----------------------------------------


class _QuoitsNet(nn.Module):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))) / self.temperature


@scenario(
    family="quoits_clay_bed_lie_temperature_relu_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Quoits clay-bed lie classifier (ReLU MLP on throw angle, spin, clay moisture and "
    "hob distance, 6 lies of the quoit, cross-entropy, plain SGD). The softmax temperature is "
    "typed 0.01 for 1.0 (logits divided by it): the logits are 100x too large, the float32 "
    "softmax rounds the winning class to exactly 1.0 on most rows and the losing rows give "
    "huge, saturated gradients.",
)
def h530_quoits_temperature_typo(ctx):
    gen = seeded(5309)
    model = _QuoitsNet(10, 48, 6, temperature=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(5), 512, 10, 6, 53090, 0.8))
    with torch.no_grad():
        c0 = collapsed_fraction(model(probe_x), probe_y)
    losses, _ = _loop(
        ctx, model, opt, _grades(gen, 64, 10, 6, 53090, 0.8), 150, F.cross_entropy, classifier=True
    )
    with torch.no_grad():
        c1 = collapsed_fraction(model(probe_x), probe_y)
    ctx.check("under 30% of rows collapsed at init", c0 < 0.3)
    ctx.check("over 60% of rows at probability exactly 1.0 at the end", c1 > 0.6)
    ctx.check("finite", _finite(losses))


# -- 10. loss divergence: decoupled weight decay with its sign flipped ---------------------------


@scenario(
    family="mammatus_lobe_sag_depth_decay_sign_adagrad_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Mammatus lobe-sag depth regressor (tanh MLP on cloud-base height, lapse rate, "
    "humidity and updraft shear, MSE, Adagrad with a hand-written decoupled weight decay). "
    "The decay line reads p.mul_(1 + lr * wd) instead of 1 - lr * wd: the weights grow by a "
    "small factor every step, Adagrad's shrinking steps cannot hold them and the loss, after "
    "falling, climbs slowly for the rest of the run.",
)
def h530_mammatus_decay_sign_bug(ctx):
    gen = seeded(5310)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    n0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 0.05 * 0.2)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 53100), 250, F.mse_loss, after=after)
    n1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    low = min(_mean(losses[i : i + 10]) for i in range(0, 100, 10))
    ctx.check("loss fell first", low < 0.7 * _mean(losses[:10]))
    ctx.check("last 20 steps over 3x the lowest level", _mean(losses[-20:]) > 3 * low)
    ctx.check("weight norm grew over 3x", n1 > 3 * n0)
    ctx.check("finite", _finite(losses))


# -- control 1: sharpness-aware minimisation (two forward-backward passes per step) --------------


@scenario(
    family="pelota_cesta_catch_zone_sam_classifier",
    optimizer="SGD(momentum)+SAM",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Pelota cesta catch-zone classifier (ReLU MLP on ball speed, wall angle, spin and "
    "player position, 7 zones, cross-entropy, SGD momentum wrapped in SAM with rho 0.05: a "
    "first backward at the weights, a step up the normalised gradient, a second "
    "forward-backward there, then the base step from the restored weights; ReduceLROnPlateau "
    "on the loss). Healthy.",
)
def h530_pelota_cesta_sam_control(ctx):
    gen = seeded(5311)
    model = _Net(10, 64, 7)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    data = _grades(gen, 64, 10, 7, 53110, spread=1.2)
    rho = 0.05
    ctx.attach(model, opt)
    losses, sharp = [], []
    for _ in range(200):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        gnorm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        eps = []
        with torch.no_grad():
            for p in params:
                e = rho * p.grad / (gnorm + 1e-12)
                p.add_(e)
                eps.append(e)
        opt.zero_grad(set_to_none=True)
        loss_up = F.cross_entropy(model(x), y)
        loss_up.backward()
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.sub_(e)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step(float(loss.detach()))
        losses.append(float(loss.detach()))
        sharp.append(float(loss_up.detach()) - losses[-1])
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("the perturbed loss sat above the clean one on average", _mean(sharp) > 0)
    ctx.check("finite", _finite(losses))


# -- control 2 (looks alarming): cosine warm restarts ---------------------------------------------


@scenario(
    family="crwth_bow_pressure_warm_restart_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Crwth bow-pressure classifier (GELU MLP on bow speed, contact point, string gauge "
    "and bridge flatness, 5 pressure grades, noisy readings and 10% mislabelled rows, "
    "cross-entropy with label smoothing 0.1, AdamW, clipping at 1, CosineAnnealingWarmRestarts "
    "with a 60-step period). At every restart the lr jumps from near 0 back to its peak and the "
    "loss jumps up for a few steps: the saw-tooth looks like instability and is the schedule "
    "working as designed. Healthy.",
)
def h530_crwth_warm_restarts_control(ctx):
    gen = seeded(5312)
    model = _Net(12, 64, 5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=0.03, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=60)

    def alter(step, x, y):
        flip = torch.rand(len(y), generator=gen) < 0.1
        return x, torch.where(flip, torch.randint(0, 5, y.shape, generator=gen), y)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 53120, spread=1.6),
        240,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        alter=alter,
        clip=1.0,
        sched=sched,
    )
    jumps = [_mean(losses[r : r + 5]) / _mean(losses[r - 5 : r]) for r in (60, 120, 180)]
    ctx.check("loss jumped over 1.1x after a restart", max(jumps) > 1.1)
    ctx.check("loss fell overall", _fell(losses, ratio=0.8))
    ctx.check("finite", _finite(losses))


# -- control 3: a Kolmogorov-Arnold network with learnable RBF edge functions --------------------


class _RBFKANLayer(nn.Module):
    """Each edge i->j carries phi_ij(x) = sum_k c_ijk exp(-((x - g_k) / h)^2) plus a SiLU base."""

    def __init__(self, d_in, d_out, grid=8, lo=-2.5, hi=2.5):
        super().__init__()
        self.register_buffer("centres", torch.linspace(lo, hi, grid))
        self.width = (hi - lo) / (grid - 1)
        self.coef = nn.Parameter(0.1 * torch.randn(d_out, d_in, grid))
        self.base = nn.Linear(d_in, d_out)
        self.norm = nn.LayerNorm(d_in)

    def forward(self, x):
        x = self.norm(x)
        phi = torch.exp(-(((x[..., None] - self.centres) / self.width) ** 2))
        return torch.einsum("bik,oik->bo", phi, self.coef) + self.base(F.silu(x))


class _KAN(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.layer1 = _RBFKANLayer(d_in, hidden)
        self.layer2 = _RBFKANLayer(hidden, 1)

    def forward(self, x):
        return self.layer2(self.layer1(x)).squeeze(-1)


@scenario(
    family="nacreous_cloud_sun_angle_rbf_kan_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Nacreous-cloud brightness regressor from sun depression angle, stratospheric "
    "temperature and wave activity: a two-layer Kolmogorov-Arnold network whose edges are "
    "learnable Gaussian-RBF expansions plus a SiLU base (Huber, Adam, OneCycleLR, gradient "
    "accumulation 2, clipping at 1). Healthy.",
)
def h530_nacreous_rbf_kan_control(ctx):
    gen = seeded(5313)
    model = _KAN(6, 12)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    steps, accum = 150, 2
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=steps)
    data = _readings(gen, 32, 6, 53130)
    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / accum).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
