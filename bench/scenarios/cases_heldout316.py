"""Held-out set 316 (``h316_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a soapmaker saponification cure-time Gaussian net whose
standard deviation is the square root of an unclamped head (sqrt of a negative, NaN), a mussel-farm
rope-yield embedding model (a learned table over site, rope kind and season, and an MLP tower) whose
embedding group's learning rate is typed 3e-9 (table frozen), a yak-herd pasture-visit multi-label
net fed visit counts instead of 0/1 presence as BCE targets (head logits grow without bound), a
kicksled glide-speed tanh regressor whose MultiStepLR gamma is typed 10 for 0.1 (learning rate past
the stability limit), a glacial-surge velocity deep tanh forecaster initialised with gain 3
(gradients grow through depth), a cochineal dye-yield regressor fed one shard weighed in milligrams
(one corrupted batch), a jaltarang bowl-pitch regressor whose curriculum loss weight is computed
from the step count for one step (one gradient burst), a salt-pan harvest regressor whose
hand-written decoupled decay has its sign flipped (slow climb of the loss), a pakhavaj stroke
cosine classifier whose scale is applied twice (softmax saturates) and a thang-ta strike ReLU
classifier whose RAdam lr 1e-3 is read as 1.0 (dead ReLUs); and three controls (a nunatak wind-scour
Huber regressor with Adam amsgrad and cosine decay, a chenda drum-stroke fp16 classifier with a
GradScaler, a saluang flute tied-weight autoencoder with accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    forward=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``forward(model, x)`` replaces ``model(x)``, ``watch(step, out, x, y)`` sees the forward
    pass, ``backprop(step, out, y, loss, accumulate)`` returns the micro-batch loss actually
    backpropagated (``loss / accumulate`` unless a bug says otherwise), ``after(step)`` runs after
    the optimizer step. Stops after a non-finite loss; returns the step it stopped at."""
    ctx.attach(model, opt, scaler=scaler)
    forward = forward or (lambda m, x: m(x))
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = forward(model, x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            if backprop is not None:
                total = backprop(step, out, y, loss, accumulate)
            else:
                total = loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step
    return steps


def _gauges(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised gauge readings and smooth nonlinear targets of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w / math.sqrt(d_in)
        y = torch.tanh(1.5 * z) + 0.5 * torch.cos(1.3 * x @ v / math.sqrt(d_in)) - 0.3
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


def _sorts(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class (classes overlap a little)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
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


# -- soapmaker: the std head lost its clamp, sqrt of a negative ------------------------------------

DIV_SOAP = 26  # the step of the first NaN loss


class CureNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> mean_head, var_head (Gaussian NLL of the cure time)."""

    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.var_head(h)], -1)


def _cure_nll(out, y):
    std = torch.sqrt(out[:, 1])  # the clamp(min=1e-4) was dropped when the head was rewritten
    return (torch.log(std) + 0.5 * ((y - out[:, 0]) / std) ** 2).mean()


@scenario(
    family="soapmaker_saponification_cure_gaussian_silu_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("var_head",),
    diverges=DIV_SOAP,
    heldout=True,
    note="A SiLU net (fc1, act1, fc2, act2, mean_head, var_head) predicting a cold-process soap batch's cure time (standardised) and its variance from 9 readings (lye concentration, oil blend, trace time, room humidity, ...), Gaussian NLL, Adam at 2e-3, 200 steps. The variance head's output went through clamp(min=1e-4) before a refactor; the rewrite takes torch.sqrt of the raw head output. As the fit sharpens the head drives a row's variance below 0, sqrt of a negative gives NaN and the loss is NaN from then on.",
)
def h316_soapmaker_sqrt_negative(ctx: Context) -> None:
    gen = seeded(31601)
    model = CureNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    low = []

    def watch(step, out, x, y):
        low.append(float(out.detach()[:, 1].min()))

    stop = _loop(
        ctx, model, opt, _gauges(gen, 64, 9, seed=316, noise=0.02), 200, _cure_nll, watch=watch
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at some step", bad is not None)
    ctx.check("the run stopped at the first NaN", bad == stop)
    ctx.check("the raw variance head went negative on a row", bad is not None and low[bad] < 0)
    ctx.check(
        "the loss was finite before", bad is not None and bad > 5 and _finite(ctx.losses[:bad])
    )


# -- mussel farm: the embedding group's lr is typed 3e-9 ------------------------------------------

CATS = (12, 4, 4)  # farm site, rope kind, season


class RopeYield(nn.Module):
    """emb (one table over all categorical values, offset per field) -> tower -> head."""

    def __init__(self, dim=8, d_num=5, hidden=64):
        super().__init__()
        self.register_buffer("offsets", torch.tensor([0, CATS[0], CATS[0] + CATS[1]]))
        self.emb = nn.Embedding(sum(CATS), dim)
        self.tower = nn.Sequential(
            nn.Linear(len(CATS) * dim + d_num, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        cats, num = x[:, :3].long(), x[:, 3:]
        e = self.emb(cats + self.offsets).flatten(1)
        return self.head(self.tower(torch.cat([e, num], 1))).squeeze(-1)


def _ropes(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    effects = [torch.randn(n, generator=g) for n in CATS]
    w = torch.randn(5, generator=g) / math.sqrt(5)
    while True:
        cats = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in CATS], 1)
        num = torch.randn(batch, 5, generator=gen)
        y = sum(effects[i][cats[:, i]] for i in range(3)) + torch.tanh(num @ w)
        y = y + 0.05 * torch.randn(batch, generator=gen)
        yield torch.cat([cats.float(), num], 1), y


@scenario(
    family="mussel_farm_rope_yield_embedding_tower",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("emb",),
    diverges=None,
    heldout=True,
    note="A hand-written embedding model (emb: one learned table over farm site, rope kind and season, 20 rows of 8; tower: two ReLU layers; head) predicting a mussel long-line's yield per metre (standardised) from the three categorical fields and 5 readings (water temperature, chlorophyll, ...), Adagrad with two param groups, MSE, 200 steps. The embedding group's learning rate is meant to be 3e-2 (the tower's 3e-2 too) and is typed 3e-9: the table barely moves (relative change under 1e-5) while the tower trains, the tower learns to read the frozen random rows instead, so the loss still falls.",
)
def h316_mussel_embedding_lr_typo(ctx: Context) -> None:
    gen = seeded(31602)
    model = RopeYield()
    opt = torch.optim.Adagrad(
        [
            {"params": model.emb.parameters(), "lr": 3e-9},
            {"params": list(model.tower.parameters()) + list(model.head.parameters()), "lr": 3e-2},
        ]
    )
    emb0, tower0 = _flat(model.emb), _flat(model.tower)
    _loop(ctx, model, opt, _ropes(gen, 64, seed=3162), 200, F.mse_loss)
    demb = float((_flat(model.emb) - emb0).norm() / emb0.norm())
    dtower = float((_flat(model.tower) - tower0).norm() / tower0.norm())
    ctx.check("the table moved under 1e-5 of its norm", demb < 1e-5)
    ctx.check("the tower moved over 1e-2 of its norm", dtower > 1e-2)
    ctx.check("the loss still fell (the tower trains)", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- yak herd: BCE targets are visit counts, not presence ------------------------------------------


def _pastures(gen, batch, seed, d_in=14, k=6):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, k, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(1.2 * x @ w)
        counts = torch.poisson(rate, generator=gen).clamp(max=4)
        yield x, counts  # the pipeline should yield (counts > 0).float()


@scenario(
    family="yak_herd_pasture_visit_multilabel_net",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting which of 6 high pastures a yak herd grazes in a week (multi-label) from 14 readings (snow line, forage index, herder's route, ...), BCE with logits, AdamW at 5e-3 with weight decay 1e-4, 250 steps. The label builder should binarise the week's visit counts (counts > 0) and passes the raw counts (0 to 4): for every target above 1 the BCE gradient sigmoid(z) - y never reaches zero, so the head's logits on those rows are pushed up without bound (the loss keeps falling below zero while the logits grow).",
)
def h316_yak_counts_as_bce_targets(ctx: Context) -> None:
    gen = seeded(31603)
    model = Trunk(14, 64, out=6)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-4)
    peak = []

    def watch(step, out, x, y):
        peak.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _pastures(gen, 64, seed=3163),
        250,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ctx.check("the head's peak logit grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("it still grows late (last over 1.5x step 125's)", peak[-1] > 1.5 * peak[125])
    ctx.check("the loss went below zero", min(ctx.losses) < 0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kicksled: MultiStepLR gamma typed 10 for 0.1 --------------------------------------------------

MILE_KICK = 100


@scenario(
    family="kicksled_glide_speed_tanh_regressor",
    optimizer="SGD(momentum)",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=MILE_KICK,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a kicksled's glide speed (standardised) from 10 readings (runner wax, ice temperature, kick cadence, load, ...), SGD momentum 0.9 at 8e-2, MSE, MultiStepLR with a milestone at step 100, 220 steps. The decay factor gamma is typed 10 for 0.1: at step 100 the learning rate becomes 0.8, which with momentum puts lr x sharpness far past the stability limit; the loss oscillates and blows up.",
)
def h316_kicksled_multistep_gamma(ctx: Context) -> None:
    gen = seeded(31604)
    model = Trunk(10, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=8e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[MILE_KICK], gamma=10.0)
    data = _gauges(gen, 64, 10, seed=3164)
    probe = next(data)
    sharp = {}

    def before(step):
        if step == MILE_KICK:
            sharp["lam"] = _top_eig(model, probe, F.mse_loss)
            sharp["lr"] = opt.param_groups[0]["lr"]

    _loop(ctx, model, opt, data, 220, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    lim = 2 * (1 + 0.9) / max(sharp.get("lam", 1e-9), 1e-9)  # heavy-ball limit 2(1+beta)/lambda
    ctx.check("the loss fell before the milestone", _mean(ls[90:100]) < 0.5 * _mean(ls[:5]))
    ctx.check(
        "the lr after the milestone passes the momentum stability limit", sharp.get("lr", 0) > lim
    )
    ctx.check(
        "the loss blows up after the milestone",
        max(ls[MILE_KICK:]) > 100 * _mean(ls[90:100]) or not _finite(ls),
    )


def _top_eig(model, batch, loss_fn, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(batch[0]), batch[1])
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- glacial surge: deep tanh stack initialised with gain 3 ----------------------------------------


class SurgeNet(nn.Module):
    def __init__(self, d_in=12, width=48, depth=14, gain=3.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="glacial_surge_velocity_deep_tanh_forecaster",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 14-layer tanh MLP (layers.0 .. layers.13, head) forecasting a surging glacier's next-month flow velocity (standardised) from 12 readings (basal water pressure, meltwater discharge, ...), plain SGD at 1e-2, MSE, 150 steps. The init helper was written for ReLU-free stacks with a 'gain' argument and is called with gain=3 (meant 1.0, the default): in this chaotic regime each tanh layer multiplies the backward signal, so the gradient of layers.0 is many times that of layers.13 and keeps being so; the loss stalls.",
)
def h316_glacial_surge_init_gain(ctx: Context) -> None:
    gen = seeded(31605)
    model = SurgeNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ratio = []

    def after(step):
        g0 = float(model.layers[0].weight.grad.norm())
        g9 = float(model.layers[13].weight.grad.norm())
        ratio.append(g0 / max(g9, 1e-12))

    stop = _loop(ctx, model, opt, _gauges(gen, 64, 12, seed=3165), 150, F.mse_loss, after=after)
    ctx.check("the run went all 150 steps without a NaN", stop == 150 and _finite(ctx.losses))
    ctx.check("layers.0's gradient is over 20x layers.13's at the start", ratio[0] > 20)
    ctx.check("layers.0's gradient is over 20x layers.13's at the median", _median(ratio) > 20)
    ctx.check(
        "the loss did not fall below half its start",
        _mean(ctx.losses[-10:]) > 0.5 * _mean(ctx.losses[:10]),
    )


# -- cochineal: one shard weighed in milligrams ---------------------------------------------------

ONSET_COCH = 110


@scenario(
    family="cochineal_dye_yield_silu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_COCH,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the carminic-acid yield of a cochineal harvest (standardised grams per kilo of dried insects) from 11 readings (cactus host, harvest month, drying method, ...), RMSprop at 1e-3, MSE, 220 steps. One farm's shard was logged in milligrams: the batch at step 110 has its targets 1000x (a standardised 1.0 becomes 1000). The loss and the gradient jump by orders of magnitude for that one batch; the run then trains back on ordinary data.",
)
def h316_cochineal_milligram_shard(ctx: Context) -> None:
    gen = seeded(31606)
    model = Trunk(11, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == ONSET_COCH else (x, y)

    _loop(ctx, model, opt, _gauges(gen, 64, 11, seed=3166), 220, F.mse_loss, alter=alter)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at the bad batch is over 1000x the median before",
        ls[ONSET_COCH] > 1000 * _median(ls[80:ONSET_COCH]),
    )
    ctx.check(
        "the gradient at the bad batch is over 100x the median before",
        gn[ONSET_COCH] > 100 * _median(gn[80:ONSET_COCH]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- jaltarang: the curriculum weight is the step count for one step ------------------------------

ONSET_JAL = 120


@scenario(
    family="jaltarang_bowl_pitch_gelu_regressor",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_JAL,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the pitch of a jaltarang bowl (standardised cents) from 8 readings (water level, bowl diameter, wall thickness, striker, ...), SGD Nesterov momentum 0.9 at 1e-2, MSE, clipping at 5.0 after the norm is logged, 220 steps. The curriculum multiplies the loss by min(1, step / ramp); on the first step after resuming from a checkpoint (step 120) the resume branch computes the weight as step / ramp with the restored ramp read as 1 and without the min(1, ...) cap, so that one step's loss is multiplied by 120 on ordinary data: a single 120x gradient burst that is not in the data; the weight is right again from the next step.",
)
def h316_jaltarang_curriculum_weight(ctx: Context) -> None:
    gen = seeded(31607)
    model = Trunk(8, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    ramp = 20

    def backprop(step, out, y, loss, acc):
        # the resume branch (step 120) reads the ramp as 1 and drops the cap
        w = float(step) if step == ONSET_JAL else min(1.0, (step + 1) / ramp)
        return w * loss / acc

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 8, seed=3167),
        220,
        F.mse_loss,
        backprop=backprop,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at onset is over 50x the median before",
        gn[ONSET_JAL] > 50 * _median(gn[90:ONSET_JAL]),
    )
    ctx.check(
        "the loss at onset is ordinary (under 3x the median before)",
        ls[ONSET_JAL] < 3 * _median(ls[90:ONSET_JAL]),
    )
    ctx.check(
        "the gradient is ordinary again 5 steps later",
        gn[ONSET_JAL + 5] < 10 * _median(gn[90:ONSET_JAL]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- salt pan: the hand-written decoupled decay's sign is flipped ---------------------------------


@scenario(
    family="salt_harvest_pan_evaporation_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a solar salt pan's daily harvest (standardised) from 10 readings (brine density, wind, sun hours, pan depth, ...), NAdam at 2e-3, MSE, 250 steps, with a hand-written decoupled weight decay applied after each step: p.mul_(1 - lr * wd) was written p.mul_(1 + lr * wd) with wd 4.0. The weights grow by a small factor every step; the loss falls first, then climbs slowly with no event.",
)
def h316_salt_pan_decay_sign(ctx: Context) -> None:
    gen = seeded(31608)
    model = Trunk(10, 64)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    norm0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 2e-3 * 4.0)

    _loop(ctx, model, opt, _gauges(gen, 64, 10, seed=3168), 250, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(ls)
    ctx.check("the loss fell first", low < 0.5 * _mean(ls[:5]))
    ctx.check("the loss ends over 3x its low", _mean(ls[-10:]) > 3 * low)
    ctx.check("the weights grew over 2x", float(_flat(model).norm()) > 2 * norm0)
    ctx.check("finite throughout", _finite(ls))


# -- pakhavaj: the cosine classifier's scale is applied twice -------------------------------------


class CosineHead(nn.Module):
    def __init__(self, hidden, classes):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, hidden) / math.sqrt(hidden))

    def forward(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class StrokeNet(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=8, scale=16.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes)
        self.scale = scale

    def forward(self, x):
        return self.scale * self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="pakhavaj_stroke_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP with a cosine-similarity head (fc1, act1, fc2, act2, head) sorting pakhavaj (barrel drum) strokes into 8 bols from 12 readings of the two heads' vibration, Adamax at 2e-3, cross-entropy, 200 steps. The scale s=16 is applied in the model and the loss wrapper multiplies by s again: the logits are cosines times 256, a cosine margin of 0.4 is already 100 nats, and the float32 softmax of most rows rounds to exactly 1.0 on the target while wrong rows give huge losses.",
)
def h316_pakhavaj_scale_twice(ctx: Context) -> None:
    gen = seeded(31609)
    model = StrokeNet(scale=16.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    collapsed = []

    def forward(m, x):
        return 16.0 * m(x)  # the wrapper applies s again

    def watch(step, out, x, y):
        if step % 10 == 0:
            collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 12, 8, seed=3169),
        200,
        F.cross_entropy,
        classifier=True,
        forward=forward,
        watch=watch,
    )
    ctx.check(
        "over a quarter of rows' softmax is exactly 1.0 late in the run", max(collapsed[-5:]) > 0.25
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- thang-ta: RAdam lr 1e-3 read as 1.0 -------------------------------------------------------


@scenario(
    family="thang_ta_strike_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying a thang-ta (Manipuri sword art) strike into 6 kinds from 16 readings of a wrist sensor, RAdam, cross-entropy, 200 steps. The learning rate 1e-3 lost its exponent in a YAML edit and is read as 1.0: once RAdam's rectification switches the adaptive step on, the huge updates push most of fc2's pre-activations negative for every input and act2's units die and stay dead; the loss stalls far above what the task allows.",
)
def h316_thang_ta_radam_lr(ctx: Context) -> None:
    gen = seeded(31610)
    model = Trunk(16, 64, out=6)
    opt = torch.optim.RAdam(model.parameters(), lr=1.0)
    dead = []

    def watch(step, out, x, y):
        if step % 10 == 0:
            with torch.no_grad():
                dead.append(dead_fraction(model.fc2(model.act1(model.fc1(x)))))

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 16, 6, seed=3170),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over half of act2's units are dead at the end", dead[-1] > 0.5)
    ctx.check("they stay dead (every late probe over half)", min(dead[-8:]) > 0.5)
    ctx.check("few were dead at the start", dead[0] < 0.2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ------------------------------------------------------------------------------------------


@scenario(
    family="nunatak_wind_scour_huber_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the depth of the wind scour around a nunatak (standardised) from 12 readings (wind speed and direction, snow density, rock height, ...), with a few noisy readings, Adam with amsgrad=True at 3e-3, Huber loss (delta 1.0), CosineAnnealingLR over the run, clipping at 1.0, 200 steps.",
)
def h316_nunatak_amsgrad_cosine(ctx: Context) -> None:
    gen = seeded(31611)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, amsgrad=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200, eta_min=1e-5)
    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 12, seed=3171, noise=0.15),
        200,
        F.huber_loss,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))


class DrumConv(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x))
        h = F.gelu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _strokes(gen, batch, seed, classes=5, frames=40):
    g = torch.Generator().manual_seed(seed)
    freq = 0.2 + 0.5 * torch.rand(classes, 2, generator=g)
    decay = 0.02 + 0.1 * torch.rand(classes, 2, generator=g)
    t = torch.arange(frames).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 2, 1, generator=gen)
        sig = torch.sin(freq[y][..., None] * t + phase) * torch.exp(-decay[y][..., None] * t)
        yield sig + 0.3 * torch.randn(batch, 2, frames, generator=gen), y


@scenario(
    family="chenda_stroke_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU Conv1d classifier (conv1, conv2, head) of a chenda (Kerala cylinder drum) stroke into 5 kinds from 40 frames of two stick-vibration channels with noise, fp16 autocast with a torch.amp.GradScaler, AdamW (weight decay 1e-2) under OneCycleLR (max 1e-2), label smoothing 0.1, clipping at 2.0 after unscaling, 160 steps.",
)
def h316_chenda_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(31612)
    model = DrumConv()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=160)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _strokes(gen, 64, seed=3172),
        160,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=2.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


class TiedAE(nn.Module):
    """enc (Linear) -> act -> dec uses enc.weight transposed (tied), own bias."""

    def __init__(self, d_in=24, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.T, self.dec_bias)


def _breaths(gen, batch, seed, d_in=24, rank=5):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d_in, generator=g) / math.sqrt(rank)
    while True:
        z = torch.randn(batch, rank, generator=gen)
        x = torch.tanh(z @ basis) + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="saluang_flute_breath_tied_autoencoder",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tied-weight tanh autoencoder (enc; the decoder reuses enc.weight transposed, with its own bias) compressing 24 breath-pressure and finger-hole readings of a saluang (Minangkabau bamboo flute) phrase to 8 codes, Adadelta at lr 1.0, MSE, gradient accumulation over 2 micro-batches, ReduceLROnPlateau (patience 10), 200 steps.",
)
def h316_saluang_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(31613)
    model = TiedAE()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _loop(ctx, model, opt, _breaths(gen, 32, seed=3173), 200, F.mse_loss, sched=sched, accumulate=2)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
