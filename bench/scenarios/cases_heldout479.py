"""Held-out set 479 (``h479_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a tabla bayan resonance regressor that sum-pools frames under fp16 autocast (a curriculum
lengthens the clips at step 80 and the pooled sum overflows fp16, GradScaler, Adam), a hurling
sliotar strike-zone classifier whose logit temperature is typed 0.001 for 1.0 (softmax collapse,
Adamax), a beekeeper smoker fuel-burn regressor fed one shard in raw grams (SGD momentum), an ice
auger bore-time regressor whose fc2 bias is initialised from a gating config at -4 (dead ReLUs,
NAdam), a cormorant-fishing catch regressor taking log of a count with no +1 (Adagrad), a glacier
moulin depth deep ReLU MLP initialised with a gain 1.6x Kaiming (exploding gradients, SGD), a
sled-dog team-pace classifier whose embedding group lr is typed 1e-10 (RMSprop), a bellfounder
bronze-pour regressor whose auxiliary loss weight is read in the wrong units for one step (SGD
Nesterov, clipped), a curling stone curl regressor with an L2 penalty added with the wrong sign
(Adam) and a sandcastle wall-slump regressor whose warm-up lambda has no min(1, .) (SGD).

Controls: a sea-fog bank-thickness neural process (set encoder over context points, mean
aggregation, Gaussian decoder over targets, AdamW, warm-up + cosine, clipping); a glassblower
gather-weight residual MLP with stochastic depth (SGD momentum, OneCycleLR); a blacksmith
anvil-ring Conv1d classifier (RMSprop, ReduceLROnPlateau, label smoothing, accumulation 2).
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


def _first_nonfinite(xs: list[float]) -> int:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), -1)


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
    accumulate=1,
):
    """The file's training loop; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
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
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
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


# -- 1. amp overflow: sum pooling under fp16 autocast, clips lengthened at step 80 -------------------


class _SumPool(nn.Module):
    def forward(self, h):
        return h.sum(dim=1)


class _BayanNet(nn.Module):
    def __init__(self, d_in=6, hidden=32):
        super().__init__()
        self.frame = nn.Linear(d_in, hidden)
        self.pool = _SumPool()
        self.fc = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        self.last_pooled_max = 0.0

    def forward(self, x):
        h = F.gelu(self.frame(x))
        p = self.pool(h)
        self.last_pooled_max = float(p.detach().abs().float().max())
        return self.head(F.gelu(self.fc(p / 64.0))).squeeze(-1)


@scenario(
    family="tabla_bayan_resonance_fp16_sumpool_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("pool",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Tabla bayan resonance-decay regressor (per-frame GELU encoder, pooled over frames, "
    "MSE, Adam, fp16 autocast with a GradScaler). The frames are summed (written for 64-frame "
    "clips, normalised by a hard-coded 64) instead of averaged; at step 80 the curriculum "
    "lengthens the clips to 4096 frames of louder strokes and the fp16 sum overflows to inf, the "
    "loss goes non-finite and the scaler skips every step.",
)
def h479_bayan_fp16_sumpool(ctx) -> None:
    gen = seeded(4791)
    model = _BayanNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    w = torch.randn(6, generator=gen)
    losses, pooled, skipped = [], [], []
    for step in range(140):
        frames, gain = (64, 1.0) if step < 80 else (4096, 64.0)
        x = gain * torch.randn(16, frames, 6, generator=gen)
        y = torch.tanh(x.mean(1) @ w * 3.0) + 0.05 * torch.randn(16, generator=gen)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped.append(scaler.get_scale() < before)
        ctx.scales.append(float(scaler.get_scale()))
        pooled.append(model.last_pooled_max)
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("finite and trained before the longer clips", _fell(losses[:80], 10, 0.9))
    ctx.check("pooled fp16 sum finite before step 80", _finite(pooled[:80]))
    ctx.check("pooled fp16 sum overflows to inf at step 80", not math.isfinite(pooled[80]))
    ctx.check("the loss is non-finite at step 80", _first_nonfinite(losses) == 80)
    ctx.check("the scaler skipped the step 80 update", bool(skipped[80]))


# -- 2. softmax collapse: logit temperature typed 0.001 for 1.0 ---------------------------------------


@scenario(
    family="hurling_sliotar_strike_zone_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Hurling sliotar strike-zone classifier (ReLU MLP on hurley swing features, 6 zones, "
    "cross-entropy, Adamax). The logits are divided by a temperature typed 0.001 instead of 1.0: "
    "the softmax saturates and most rows give their target a probability of exactly 1.0.",
)
def h479_sliotar_temperature(ctx) -> None:
    gen = seeded(4792)
    model = _Net(12, 48, 6)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    temperature = 0.001
    batches = _grades(gen, 64, 12, 6, 4792)

    def loss_fn(out, y):
        return F.cross_entropy(out / temperature, y)

    losses, _ = _loop(ctx, model, opt, batches, 150, loss_fn, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x) / temperature, y)
        ref = collapsed_fraction(model(x), y)
    ctx.check("over half the rows give the target exactly 1.0", frac > 0.5)
    ctx.check("none would at temperature 1.0", ref < 0.05)
    ctx.check("finite", _finite(losses))


# -- 3. data outlier: one shard in raw grams -----------------------------------------------------------


@scenario(
    family="beekeeper_smoker_fuel_burn_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Beekeeper smoker fuel-burn regressor (ReLU MLP, MSE, SGD momentum 0.9). One shard at "
    "step 100 was exported with fuel mass in raw grams instead of standardised units: that "
    "batch's inputs are about 20x the rest; the loss and gradient burst at that step and the run "
    "recovers.",
)
def h479_smoker_raw_grams(ctx) -> None:
    gen = seeded(4793)
    model = _Net(8, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def alter(step, x, y):
        if step == 100:
            x = x * 20.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 4793), 200, F.mse_loss, alter=alter
    )
    ctx.check("trained before the shard", _mean(losses[90:100]) < 0.7 * _mean(losses[:10]))
    ctx.check("loss over 10x at step 100", losses[100] > 10 * _median(losses[80:100]))
    ctx.check("gradient over 20x at step 100", norms[100] > 20 * _median(norms[80:100]))
    ctx.check(
        "recovers (finite, last 10 under 0.5x the start)",
        _finite(losses) and _mean(losses[-10:]) < 0.5 * _mean(losses[:10]),
    )


# -- 4. loss of plasticity: fc2 bias initialised from a gating config ----------------------------------


@scenario(
    family="ice_auger_bore_time_relu_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Ice-auger bore-time regressor (ReLU MLP on ice thickness, blade and temperature "
    "features, Huber, NAdam). fc2's bias is initialised at -4 from a config copied off a "
    "sigmoid-gated model: nearly all of fc2's ReLUs are never positive, get no gradient and stay "
    "dead, and the loss stays near its start.",
)
def h479_auger_dead_bias(ctx) -> None:
    gen = seeded(4794)
    model = _Net(10, 48, 1)
    nn.init.constant_(model.fc2.bias, -4.0)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 10, 4794)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.huber_loss)
    x, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.fc2(model.act1(model.fc1(x))))
    ctx.check("over 90% of fc2's units dead", dead > 0.9)
    ctx.check("the loss did not fall below 0.8x its start", not _fell(losses, 10, 0.8))
    ctx.check("finite", _finite(losses))


# -- 5. nonfinite: log of a catch count with no +1 ---------------------------------------------------


class _LogCount(nn.Module):
    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], dim=1)


class _CatchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logfeat = _LogCount()
        self.fc1 = nn.Linear(7, 32)
        self.fc2 = nn.Linear(32, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.logfeat(x)))).squeeze(-1)


@scenario(
    family="cormorant_fishing_catch_log_count_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logfeat",),
    diverges=110,
    onset=110,
    heldout=True,
    note="Cormorant-fishing catch regressor (ReLU MLP, MSE, Adagrad). The previous dive count is "
    "log-transformed with torch.log(count) and no +1 or clamp; at step 110 a boat with zero "
    "previous dives appears, log(0) = -inf and the loss is NaN.",
)
def h479_cormorant_log_zero(ctx) -> None:
    gen = seeded(4795)
    model = _CatchNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    w = torch.randn(6, generator=gen)

    def batches():
        step = 0
        while True:
            count = torch.randint(1, 20, (32, 1), generator=gen).float()
            if step == 110:
                count[5] = 0.0
            rest = torch.randn(32, 6, generator=gen)
            y = 0.3 * torch.log(count[:, 0] + 1) + torch.tanh(rest @ w / 2)
            step += 1
            yield torch.cat([count, rest], 1), y

    losses, _ = _loop(ctx, model, opt, batches(), 160, F.mse_loss)
    ctx.check("trained before step 110", _mean(losses[100:110]) < 0.7 * _mean(losses[:10]))
    ctx.check("first non-finite loss at step 110", _first_nonfinite(losses) == 110)
    with torch.no_grad():
        probe = torch.zeros(1, 7)
        ctx.check(
            "log feature of a zero count is -inf", math.isinf(float(model.logfeat(probe)[0, 0]))
        )


# -- 6. exploding gradients: Kaiming gain typed 1.6x ----------------------------------------------------


class _DeepNet(nn.Module):
    def __init__(self, d_in=8, width=32, depth=10, gain=1.0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=gain * math.sqrt(2.0 / layer.in_features))
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="glacier_moulin_depth_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Glacier moulin depth regressor (10-layer ReLU MLP, MSE, plain SGD). The init std is "
    "written gain * sqrt(2 / fan_in) with gain 1.6 from a config meant for a tanh net: each "
    "layer amplifies by about 1.6x, the gradient reaching the first layer is hundreds of times "
    "the head's and the loss blows up.",
)
def h479_moulin_init_gain(ctx) -> None:
    gen = seeded(4796)
    model = _DeepNet(gain=1.6)
    ref = _DeepNet(gain=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 8, 4796)
    x, y = next(batches)
    F.mse_loss(model(x), y).backward()
    F.mse_loss(ref(x), y).backward()
    g_bad = float(model.layers[0].weight.grad.norm())
    g_ref = float(ref.layers[0].weight.grad.norm())
    model.zero_grad(set_to_none=True)
    losses, _ = _loop(ctx, model, opt, batches, 100, F.mse_loss)
    ctx.check("layers.0 gradient over 10x the gain-1.0 init's", g_bad > 10 * g_ref)
    ctx.check(
        "the loss blows up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


# -- 7. update ratio: embedding group lr typed 1e-10 ----------------------------------------------------


class _SledNet(nn.Module):
    def __init__(self, dogs=40, dim=16, classes=4):
        super().__init__()
        self.dog_emb = nn.EmbeddingBag(dogs, dim, mode="mean")
        self.fc1 = nn.Linear(dim + 4, 48)
        self.head = nn.Linear(48, classes)

    def forward(self, x):
        ids, weather = x
        return self.head(F.relu(self.fc1(torch.cat([self.dog_emb(ids), weather], 1))))


@scenario(
    family="sled_dog_team_pace_two_group_classifier",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("dog_emb",),
    diverges=None,
    heldout=True,
    note="Sled-dog team pace-band classifier (mean-pooled dog embeddings plus weather, ReLU "
    "head, cross-entropy, RMSprop with two param groups). The embedding group's lr is typed "
    "1e-10 instead of 1e-3: the dog embeddings are effectively frozen while the MLP trains.",
)
def h479_sled_dog_frozen_emb(ctx) -> None:
    gen = seeded(4797)
    model = _SledNet()
    opt = torch.optim.RMSprop(
        [
            {"params": model.dog_emb.parameters(), "lr": 1e-10},
            {"params": list(model.fc1.parameters()) + list(model.head.parameters()), "lr": 1e-3},
        ]
    )
    speed = torch.randn(40, generator=gen)

    def batches():
        while True:
            ids = torch.randint(0, 40, (64, 6), generator=gen)
            weather = torch.randn(64, 4, generator=gen)
            pace = speed[ids].mean(1) * 2 + 0.5 * weather[:, 0]
            yield (ids, weather), torch.bucketize(pace, torch.tensor([-0.8, 0.0, 0.8]))

    e0 = model.dog_emb.weight.detach().clone()
    f0 = model.fc1.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, batches(), 150, F.cross_entropy, classifier=True)
    de = float((model.dog_emb.weight.detach() - e0).norm() / e0.norm())
    df = float((model.fc1.weight.detach() - f0).norm() / f0.norm())
    ctx.check("dog_emb moved under 1e-6 of its norm", de < 1e-6)
    ctx.check("fc1 moved over 5% of its norm", df > 0.05)
    ctx.check("finite", _finite(losses))


# -- 8. gradient spike: an auxiliary loss weight read in the wrong units for one step ---------------------


@scenario(
    family="bellfounder_bronze_pour_temp_nesterov_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Bellfounder bronze-pour temperature regressor (SiLU MLP, MSE, SGD Nesterov, clipping "
    "at 1.0). At step 100 a config reload reads the loss weight as 1000 (per-mille) instead of "
    "1.0: that step's backpropagated loss is 1000x, the gradient bursts (clipped) and the run "
    "recovers.",
)
def h479_bellfounder_loss_weight(ctx) -> None:
    gen = seeded(4798)
    model = _Net(9, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (1000.0 if step == 100 else 1.0)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 9, 4798), 180, F.mse_loss, backprop=backprop, clip=1.0
    )
    ctx.check("gradient over 50x the median at step 100", norms[100] > 50 * _median(norms[80:100]))
    ctx.check(
        "the loss itself was not an outlier at step 100",
        losses[100] < 3 * _mean(losses[90:100]) + 0.05,
    )
    ctx.check("trained and finite", _fell(losses, 10, 0.7))


# -- 9. loss divergence: L2 penalty added with the wrong sign ------------------------------------------


@scenario(
    family="curling_stone_curl_negative_l2_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Curling stone curl-distance regressor (GELU MLP, MSE, Adam). The hand-written L2 "
    "penalty is added as loss - wd * ||w||^2 (a sign flipped in a refactor): the weights grow "
    "steadily and the data loss climbs slowly after an initial fit, with no other mechanism.",
)
def h479_curling_l2_sign(ctx) -> None:
    gen = seeded(4799)
    model = _Net(8, 48, 1, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    wd = 0.3

    def backprop(step, loss):
        return loss - wd * sum((p**2).sum() for p in model.parameters())

    w0 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 4799), 250, F.mse_loss, backprop=backprop
    )
    w1 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    best = min(_mean(losses[i : i + 10]) for i in range(0, 120, 5))
    ctx.check("trained first (best under 0.7x the start)", best < 0.7 * _mean(losses[:10]))
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("weights grew over 2x", w1 > 2 * w0)
    ctx.check("no NaN", _finite(losses))


# -- 10. sharpness: warm-up lambda without min(1, .) -------------------------------------------------


@scenario(
    family="sandcastle_wall_slump_warmup_bug_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=20,
    heldout=True,
    note="Sandcastle wall-slump regressor (tanh MLP, MSE, plain SGD, LambdaLR warm-up). The "
    "warm-up lambda is written step / 20 with no min(1, .): after step 20 the lr keeps climbing "
    "linearly past 2/sharpness and the loss blows up.",
)
def h479_sandcastle_warmup(ctx) -> None:
    gen = seeded(4800)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 20)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 4800), 200, F.mse_loss, sched=sched)
    ctx.check("trained during warm-up", _mean(losses[15:25]) < 0.8 * _mean(losses[:5]))
    ctx.check(
        "lr ended over 5x the intended peak",
        opt.param_groups[0]["lr"] > 5 * 0.2 or len(losses) < 200,
    )
    ctx.check(
        "the loss blows up (non-finite or over 100x its warm-up end)",
        not _finite(losses) or max(losses[25:]) > 100 * _mean(losses[15:25]),
    )


# -- controls ---------------------------------------------------------------------------------------


class _NeuralProcess(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(2, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.decoder = nn.Sequential(nn.Linear(dim + 1, dim), nn.ReLU(), nn.Linear(dim, 2))

    def forward(self, batch):
        xc, yc, xt = batch
        r = self.encoder(torch.cat([xc, yc], -1)).mean(1, keepdim=True)
        h = self.decoder(torch.cat([r.expand(-1, xt.shape[1], -1), xt], -1))
        return h[..., 0], 0.01 + F.softplus(h[..., 1])


@scenario(
    family="sea_fog_bank_thickness_neural_process",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Sea-fog bank-thickness neural process (set encoder over context points, "
    "mean-aggregated representation, Gaussian decoder over target points, Gaussian NLL, AdamW, "
    "linear warm-up then cosine, clipping at 1.0). Control.",
)
def h479_seafog_neural_process(ctx) -> None:
    gen = seeded(4801)
    model = _NeuralProcess()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )

    def batches():
        while True:
            amp = 0.5 + torch.rand(16, 1, 1, generator=gen)
            phase = 3 * torch.rand(16, 1, 1, generator=gen)
            x = 4 * torch.rand(16, 30, 1, generator=gen) - 2
            y = amp * torch.sin(2 * x + phase) + 0.05 * torch.randn(16, 30, 1, generator=gen)
            yield (x[:, :10], y[:, :10], x[:, 10:]), y[:, 10:, 0]

    def nll(out, y):
        mu, sigma = out
        return -torch.distributions.Normal(mu, sigma).log_prob(y).mean()

    losses, _ = _loop(ctx, model, opt, batches(), steps, nll, sched=sched, clip=1.0)
    ctx.check("finite", _finite(losses))
    ctx.check("NLL fell by over 0.3 nats", _mean(losses[-10:]) < _mean(losses[:10]) - 0.3)


class _StochasticDepthNet(nn.Module):
    def __init__(self, d_in=10, width=48, blocks=6, survive=0.7):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
            for _ in range(blocks)
        )
        self.head = nn.Linear(width, 1)
        self.survive = survive

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            if self.training:
                if torch.rand(()) < self.survive:
                    h = h + block(h) / self.survive
            else:
                h = h + block(h)
        return self.head(h).squeeze(-1)


@scenario(
    family="glassblower_gather_weight_stochastic_depth_resnet",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="Glassblower gather-weight regressor (residual MLP with stochastic depth: each block "
    "is dropped with probability 0.3 per step, so dropped blocks get no gradient that step; "
    "Huber, SGD momentum 0.9, OneCycleLR). Control.",
)
def h479_glassblower_stochastic_depth(ctx) -> None:
    gen = seeded(4802)
    model = _StochasticDepthNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
    skipped = []

    def after(step):
        skipped.append(sum(b[1].weight.grad is None for b in model.blocks))

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 4802), 200, F.huber_loss, sched=sched, after=after
    )
    ctx.check("finite and the loss fell under 0.5x", _fell(losses, 10, 0.5))
    ctx.check("blocks were dropped (no gradient) at many steps", sum(s > 0 for s in skipped) > 50)


class _AnvilConv(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


@scenario(
    family="blacksmith_anvil_ring_conv1d_classifier",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="Blacksmith anvil-ring classifier (ReLU Conv1d on hammer-strike ring traces, 5 anvil "
    "grades, cross-entropy with label smoothing 0.1, RMSprop, ReduceLROnPlateau, gradient "
    "accumulation 2, noisy batches). Control.",
)
def h479_anvil_ring_conv1d(ctx) -> None:
    gen = seeded(4803)
    model = _AnvilConv()
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    t = torch.linspace(0, 1, 64)

    def batches():
        while True:
            y = torch.randint(0, 5, (32,), generator=gen)
            freq = 4 + 3 * y.float()[:, None]
            x = torch.sin(2 * math.pi * freq * t) * torch.exp(-3 * t)
            yield x + 0.3 * torch.randn(32, 64, generator=gen), y

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    def after(step):
        plateau.step(ctx.losses[-1] if ctx.losses else 0.0)

    losses, _ = _loop(
        ctx, model, opt, batches(), 200, loss_fn, classifier=True, accumulate=2, after=after
    )
    ctx.check("finite and the loss fell under 0.6x", _fell(losses, 10, 0.6))
