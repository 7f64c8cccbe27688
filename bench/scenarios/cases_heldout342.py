"""Held-out set 342 (``h342_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a cupellation silver-bead yield tanh regressor whose warm-up target had the linear
batch-size scaling rule applied twice (lr past 2/sharpness), a lost-wax casting shrinkage SiLU
regressor whose hand-rolled static loss scale is not divided out on the first step after a
checkpoint resume (one 32768x gradient fills Adam's second moment), an encaustic wax-fusing GELU
regressor whose backbone LambdaLR warm-up uses integer division (backbone lr exactly 0), a
piñata papier-mâché burst-force deep residual ReLU MLP (22 linear layers, a skip every two) whose
branch init std is typed 0.2 for 0.02 (gradients grow through depth), a dakyū ball-toss outcome
classifier whose z-loss coefficient has its sign flipped (the head's logits grow without bound), a
racquets shot-type classifier whose softmax temperature anneals per step instead of per epoch
(softmax saturates), an ice-house block-melt Poisson regressor whose rate is clamped at 0 instead
of passed through softplus (0 * log 0, NaN), an earth-pillar erosion regressor fed one logger shard
with -9999 sentinels (one corrupted batch), a bombo legüero hide-tension Huber regressor whose
epoch-boundary step uses the summed logging criterion (one gradient burst), and a melodeon
bellows-style ReLU classifier whose warm-up has no min(1, .) (the lr keeps climbing, ReLUs die).

Controls: a chueca strike-speed learning-rate range test (stopped by the usual rule), a whitewash
lime-coat tied-weight autoencoder under fp16 autocast with a GradScaler, accumulation and
ReduceLROnPlateau, and a paddle-tennis shot Conv1d classifier with Adagrad, OneCycleLR, clipping,
label smoothing and a no-decay parameter group.
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


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


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
    watch=None,
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    stop=None,
):
    """This file's loop: ``before(step)``, ``alter(step, x, y)``, ``watch(step, out, x, y)``,
    ``backprop(step, loss)`` (the loss actually backpropagated), ``after(step)`` once the optimizer
    has stepped, ``stop(step)`` to end the run early. Stops after a non-finite loss once
    ``ctx.step`` has seen it; returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
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
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
        if stop is not None and stop(step):
            return step + 1
    return steps


def _measurements(gen, batch, d_in, seed, noise=0.05, scales=None):
    """Standardised readings (optionally rescaled per column) and a smooth target of unit size."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    s = torch.ones(d_in) if scales is None else scales
    while True:
        z = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * z @ w / math.sqrt(d_in)) + 0.5 * torch.sin(z @ v / math.sqrt(d_in))
        yield z * s, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Net(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head (squeezed for one output)."""

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


def _top_hessian_eigenvalue(model, batch, loss_fn, iters=20):
    """Power iteration on Hessian-vector products of the loss on one batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return abs(lam)


# -- cupellation: the linear batch-size scaling rule applied twice to the warm-up target --------

ONSET_CUP = 50


@scenario(
    family="cupellation_silver_bead_yield_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_CUP,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the silver-bead yield of a fire-assay cupellation (standardised) from ten readings of the charge, the cupel and the muffle, plain SGD, MSE, 200 steps planned, linear warm-up over 100 steps. The recipe's lr is 0.05 at batch 32; the config already scales it to the batch of 128 (0.2) and the trainer applies the linear scaling rule a second time, so the warm-up climbs to 0.8: lr times the top Hessian eigenvalue (power iteration) passes 2 during the warm-up, the loss oscillates and grows, and the run blows up.",
)
def h342_cupellation_lr_scaled_twice(ctx: Context) -> None:
    gen = seeded(34201)
    model = Net(10, 64, act=nn.Tanh)
    batch = 128
    config_lr = 0.05 * batch / 32  # the config already applies the linear scaling rule
    peak = config_lr * batch / 32  # ... and the trainer applies it again
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    batches = _measurements(gen, batch, 10, 3421)
    probe = next(batches)
    products = {}

    def before(step):
        if step % 10 == 0 and step <= 100:
            lam = _top_hessian_eigenvalue(model, probe, F.mse_loss)
            products[step] = opt.param_groups[0]["lr"] * lam

    _train(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("lr x top eigenvalue is under 2 at step 10", products[10] < 2.0)
    ctx.check(
        "lr x top eigenvalue passes 2 by the onset",
        max(v for k, v in products.items() if k <= ONSET_CUP) > 2.0,
    )
    ctx.check("the loss fell before the onset", _fell(ls[:ONSET_CUP]))
    ctx.check(
        "the loss blows up after the onset (non-finite or 100x its pre-onset level)",
        not _finite(ls[ONSET_CUP:]) or max(ls[ONSET_CUP:]) > 100 * min(ls[:ONSET_CUP]),
    )


# -- lost-wax casting: the static loss scale is not divided out on the first resumed step -------

ONSET_LW = 40


@scenario(
    family="lost_wax_investment_casting_shrinkage_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_LW,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a lost-wax bronze casting's shrinkage (standardised) from twelve readings of the wax, the investment and the pour, Adam at 1e-3 (beta2 0.999), MSE, 260 steps, with a hand-rolled static loss scale of 2^15 kept for a later fp16 switch (the loss is multiplied by the scale and the gradients divided by it before the step). The checkpoint-resume path at step 40 skips the division for its first step, so that one step's gradient is 32768x: it fills Adam's second moment, and for the rest of the run every update is divided by a square root of v that is hundreds of times too large, so the updates shrink about tenfold and the held-out loss stops improving.",
)
def h342_lost_wax_loss_scale_not_divided(ctx: Context) -> None:
    gen = seeded(34202)
    model = Net(12, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scale = 2.0**15
    weights = [model.fc1.weight, model.fc2.weight, model.head.weight]
    moves = []

    def backprop(step, loss):
        total = loss * scale
        total.backward(retain_graph=True)
        if step != ONSET_LW:  # the resume path forgets to unscale its first step
            for p in model.parameters():
                p.grad.div_(scale)
        return loss * 0.0  # the loop's backward adds nothing more

    snap = {}

    def before(step):
        snap["w"] = [w.detach().clone() for w in weights]

    batches = _measurements(gen, 64, 12, 3422)
    probe = next(batches)
    held = []

    def after(step):
        moves.append(
            sum(float((w.detach() - s).norm()) for w, s in zip(weights, snap["w"], strict=True))
        )
        with torch.no_grad():
            held.append(float(F.mse_loss(model(probe[0]), probe[1])))

    _train(
        ctx,
        model,
        opt,
        batches,
        260,
        F.mse_loss,
        backprop=backprop,
        before=before,
        after=after,
    )
    gn, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at the onset is over 1000x the median of the steps before",
        gn[ONSET_LW] > 1000 * _median(gn[:ONSET_LW]),
    )
    ctx.check(
        "the updates over the last 100 steps are under a tenth of those before the onset",
        _mean(moves[-100:]) < 0.1 * _mean(moves[ONSET_LW - 20 : ONSET_LW]),
    )
    ctx.check("the loss was falling before the onset", _fell(ls[:ONSET_LW]))
    ctx.check(
        "the held-out loss fell over 40% in the 40 steps before the onset",
        held[ONSET_LW - 1] < 0.6 * held[0],
    )
    ctx.check(
        "the held-out loss falls under 10% over the last 150 steps",
        held[-1] > 0.9 * held[-150],
    )
    ctx.check("finite throughout", _finite(ls))


# -- encaustic painting: the backbone's warm-up lambda uses integer division --------------------


@scenario(
    family="encaustic_wax_layer_fusing_gelu_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting how well a new layer of encaustic wax paint fuses to the one below (standardised) from ten readings of the torch pass, wax and damar ratio, AdamW with two parameter groups (backbone fc1+fc2 at 1e-3, head at 3e-3) under a LambdaLR with one lambda per group, MSE, 200 steps. The backbone's warm-up lambda was written min(1, step // warmup) (integer division, meant step / warmup) with a 300-step warm-up, so its factor is exactly 0 for the whole run: fc1 and fc2 never move while the head trains, and the loss falls only as far as a read-out of the random features allows.",
)
def h342_encaustic_warmup_integer_division(ctx: Context) -> None:
    gen = seeded(34203)
    model = Net(10, 64, act=nn.GELU)
    backbone = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": backbone, "lr": 1e-3},
            {"params": model.head.parameters(), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    warm_backbone, warm_head = 300, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [
            lambda s: min(1.0, s // warm_backbone),  # meant s / warm_backbone
            lambda s: min(1.0, (s + 1) / warm_head),
        ],
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    _train(ctx, model, opt, _measurements(gen, 64, 10, 3423), 200, F.mse_loss, sched=sched)
    ctx.check(
        "fc1 and fc2 moved under 1e-6 of their norm over the run",
        max(_rel_change(w1, model.fc1.weight), _rel_change(w2, model.fc2.weight)) < 1e-6,
    )
    ctx.check("the head moved over 10% of its norm", _rel_change(wh, model.head.weight) > 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- piñata making: the residual branches' init std typed 0.25 for 0.025 -------------------------


class TwoLayerSkip(nn.Module):
    """x + fc2(relu(fc1(x))): a skip connection every two layers."""

    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class DeepSkipMLP(nn.Module):
    """stem, eight two-layer skip blocks (16 linear layers), head: 18 linear layers in all."""

    def __init__(self, d_in, dim=64, blocks=8, branch_std=0.025):
        super().__init__()
        self.stem = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(TwoLayerSkip(dim) for _ in range(blocks))
        self.head = nn.Linear(dim, 1)
        for block in self.blocks:
            for fc in (block.fc1, block.fc2):
                nn.init.normal_(fc.weight, std=branch_std)
                nn.init.zeros_(fc.bias)
        self.streams: list[torch.Tensor] = []

    def forward(self, x):
        x = self.stem(x)
        self.streams = []
        for block in self.blocks:
            if x.requires_grad:
                x.retain_grad()
            self.streams.append(x)
            x = block(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="pinata_papier_mache_burst_force_deep_skip_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("stem", "blocks.0.fc1", "blocks.0.fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written deep ReLU MLP (stem, ten blocks of two linear layers each with a skip connection around the pair, head: 22 linear layers) predicting the force (standardised, unit scale) a papier-mache pinata takes to burst from twelve readings of paste, paper layers, drying and shape, SGD with momentum 0.9 at 1e-3, gradient clipping at 1.0, MSE, 150 steps. The residual branches are initialised with normal_(std=0.2), typed for 0.02: each skip block multiplies the signal by about 1.6, so the backward signal grows block after block towards the input (block 0's input gets hundreds of times the gradient of the last block's) and the raw gradient norm is in the 1e4-1e6 range the whole run; clipping keeps the weights finite, but every step is a clipped step along an exploding gradient and the loss stays hundreds of times the target's variance.",
)
def h342_pinata_branch_init_std_typo(ctx: Context) -> None:
    gen = seeded(34204)
    model = DeepSkipMLP(12, blocks=10, branch_std=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios = []

    def backprop(step, loss):
        loss.backward(retain_graph=True)
        first, last = model.streams[0].grad, model.streams[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))
        return loss * 0.0

    _train(
        ctx,
        model,
        opt,
        _measurements(gen, 64, 12, 3424),
        150,
        F.mse_loss,
        backprop=backprop,
        clip=1.0,
    )
    gn, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "block 0's input gets over 100x the gradient of the last block's input at step 0",
        ratios[0] > 100.0,
    )
    ctx.check(
        "... and still over 100x over the last 20 steps",
        _mean(ratios[-20:]) > 100.0,
    )
    ctx.check("the raw gradient norm's median over the run is over 1e4", _median(gn) > 1e4)
    ctx.check(
        "the loss stays over 100x the unit-scale target's variance over the last 20 steps",
        _mean(ls[-20:]) > 100.0,
    )
    ctx.check("finite throughout (clipping holds the weights)", _finite(ls))


# -- dakyu: the z-loss coefficient's sign is flipped ----------------------------------------------


@scenario(
    family="dakyu_horseback_ball_toss_outcome_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) classifying a dakyu (Japanese horseback ball-toss) throw into five outcomes from twelve readings of the rider, horse and scoop, NAdam at 3e-3, cross-entropy plus a z-loss on the logsumexp of the logits, 200 steps. The z-loss coefficient was ported as -1e-3 (meant +1e-3, the sign lost): instead of pinning the logsumexp near 0 it rewards growing it, and since cross-entropy cannot see a shift shared by all logits, the head pushes every logit up without bound: the classifier first trains normally, then its logits run into the thousands, the differences between them grow with them, the rows it gets wrong cost hundreds of nats and the cross-entropy climbs over 100x its minimum.",
)
def h342_dakyu_zloss_sign_flip(ctx: Context) -> None:
    gen = seeded(34205)
    model = Net(12, 64, out=5, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    z_coef = -1e-3  # meant +1e-3
    peaks, lses, accs = [], [], []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))
        lses.append(float(torch.logsumexp(out.detach(), -1).mean()))
        accs.append(float((out.detach().argmax(-1) == y).float().mean()))

    def backprop(step, loss):
        return loss + z_coef * torch.logsumexp(ctx_out["out"], -1).pow(2).mean()

    ctx_out = {}

    def watch_keep(step, out, x, y):
        ctx_out["out"] = out
        watch(step, out, x, y)

    _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 12, 5, 3425),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch_keep,
        backprop=backprop,
    )
    ctx.check("the largest logit grew over 100x from step 0", _mean(peaks[-10:]) > 100 * peaks[0])
    ctx.check("the largest logit is still growing at the end", peaks[-1] > 1.5 * peaks[-50])
    ctx.check("the mean logsumexp is over 100 over the last 10 steps", _mean(lses[-10:]) > 100.0)
    ctx.check(
        "the classifier trained first (accuracy over 0.8 at steps 20-60)", _mean(accs[20:60]) > 0.8
    )
    ctx.check(
        "the cross-entropy then climbs over 100x its minimum as the logits run away",
        max(ctx.losses[-20:]) > 100 * min(ctx.losses),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- racquets: the softmax temperature anneals per step instead of per epoch ----------------------


class ShotTyper(Net):
    """A GELU MLP over a racquets shot's sensor summary; logits divided by a temperature."""

    def __init__(self):
        super().__init__(14, 64, out=6, act=nn.GELU)
        self.temperature = 1.0

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="racquets_court_shot_type_annealed_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) typing a racquets shot (six kinds: drive, boast, lob, ...) from fourteen readings of the bat-mounted sensor, Adamax at 2e-3, cross-entropy, 220 steps. The softmax temperature is annealed as 0.97 ** epoch (floor 0.5), but the call sits inside the batch loop with the step counter and no floor, so it is 0.97 ** step: by step 150 the logits reach the softmax about 100x too large, and the softmax saturates: most rows' target probability rounds to exactly 1.0 in float32 (the rest are confidently wrong), while the loss stays finite.",
)
def h342_racquets_temperature_per_step(ctx: Context) -> None:
    gen = seeded(34206)
    model = ShotTyper()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    collapsed = []

    def before(step):
        model.temperature = 0.97**step  # meant max(0.5, 0.97 ** epoch)

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 14, 6, 3426, spread=0.9),
        220,
        F.cross_entropy,
        classifier=True,
        before=before,
        watch=watch,
    )
    ctx.check(
        "under a tenth of rows collapsed over the first 20 steps", _mean(collapsed[:20]) < 0.1
    )
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- ice house: the Poisson rate is clamped at 0 instead of passed through softplus ---------------


def _melts(gen, batch, seed):
    """Ten standardised readings of an ice house (straw, door, season); blocks lost per week."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        rate = torch.exp(0.9 * x @ w / math.sqrt(10) - 0.2)
        yield x, torch.poisson(rate, generator=gen)


DIV_IH = 65


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate) + torch.lgamma(y + 1)).mean()


@scenario(
    family="ice_house_block_melt_count_poisson_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("head",),
    diverges=DIV_IH,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting how many stored ice blocks an ice house loses per week (a Poisson count, mean about 1) from ten readings of straw packing, door openings and season, RAdam at 3e-3, Poisson NLL written by hand (rate - y log rate), 300 steps planned. The rate is head(h).clamp(min=0) where the model card says softplus; weeks with no loss push their rate down, and once one reaches exactly 0 its term is 0 * log 0 = NaN, so the loss is NaN at that step (step 65) and the run stops.",
)
def h342_ice_house_rate_clamp_not_softplus(ctx: Context) -> None:
    gen = seeded(34207)
    model = Net(10, 32, act=nn.Tanh)
    nn.init.constant_(model.head.bias, 1.0)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    zeros = []

    def rate_loss(out, y):
        return _poisson_nll(out.clamp(min=0.0), y)  # meant F.softplus(out)

    def watch(step, out, x, y):
        zeros.append(int((out.detach() <= 0).sum()))

    _train(ctx, model, opt, _melts(gen, 64, 3427), 300, rate_loss, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check(f"the loss is first non-finite at step {DIV_IH}", bad == DIV_IH)
    ctx.check("the loss was finite for the first 30 steps", bad is None or bad >= 30)
    ctx.check(
        "at that step a predicted rate is exactly 0 (clamped)",
        bad is not None and zeros[bad] > 0,
    )
    ctx.check(
        "no blow-up before it: the ten losses before are finite and under 2x the first",
        bad is not None and bad >= 10 and max(ls[bad - 10 : bad]) < 2 * ls[0],
    )


# -- earth pillars: one logger shard with -9999 sentinels for missing readings --------------------

ONSET_EP = 110


@scenario(
    family="earth_pillar_cap_stone_erosion_rate_relu_regressor",
    optimizer="Adadelta",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_EP,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the yearly erosion rate (standardised) of an earth pillar under its cap stone from eight standardised field readings (rainfall, freeze-thaw count, slope, clay share, ...), Adadelta at lr 1.0, MSE, 220 steps. The batch at step 110 comes from one field logger's shard whose missing readings were written as the sentinel -9999 and never masked: its inputs are thousands of times the usual size, the loss and gradient jump for that one step, and the run recovers on the next clean batches.",
)
def h342_earth_pillar_sentinel_shard(ctx: Context) -> None:
    gen = seeded(34208)
    model = Net(8, 64)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sizes = []

    def alter(step, x, y):
        if step == ONSET_EP:
            x = x.clone()
            missing = torch.rand(x.shape[0], generator=gen) < 0.3
            x[missing, 0] = -9999.0  # the rain gauge's missing weeks
        sizes.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _measurements(gen, 64, 8, 3428), 220, F.mse_loss, alter=alter)
    gn, ls = ctx.grad_norms, ctx.losses
    before = ls[ONSET_EP - 20 : ONSET_EP]
    ctx.check(
        "the onset batch's inputs are over 1000x the usual", sizes[ONSET_EP] > 1000 * _median(sizes)
    )
    ctx.check(
        "the gradient at the onset is over 50x the median of the 20 steps before",
        gn[ONSET_EP] > 50 * _median(gn[ONSET_EP - 20 : ONSET_EP]),
    )
    ctx.check(
        "the loss at the onset is over 20x the steps before", ls[ONSET_EP] > 20 * _mean(before)
    )
    ctx.check("the loss fell before the onset", _fell(ls[:ONSET_EP]))
    ctx.check(
        "the run recovers: the last 20 losses are under 2x the 20 before the onset",
        _mean(ls[-20:]) < 2 * _mean(before),
    )
    ctx.check("finite throughout", _finite(ls))


# -- bombo leguero: the epoch-boundary step uses the summed logging criterion ---------------------

ONSET_BL = 128


@scenario(
    family="bombo_leguero_hide_tension_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BL,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the head tension (standardised) of a bombo leguero drum from ten readings of the goat hide, the lacing and the humidity, SGD with Nesterov momentum 0.9 at 0.01, Huber loss, batch 128, 260 steps. The trainer keeps a second criterion with reduction='sum' for logging; at the epoch boundary (step 128) the refactored code backpropagates that one instead of the mean criterion, so the gradient of that single ordinary batch is 128x: a one-step burst that does not come from the data, after which the run recovers.",
)
def h342_bombo_epoch_boundary_sum_criterion(ctx: Context) -> None:
    gen = seeded(34209)
    model = Net(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sizes = []
    held = {}

    def alter(step, x, y):
        sizes.append(float(x.abs().max()))
        return x, y

    def watch(step, out, x, y):
        held["pair"] = (out, y)

    def backprop(step, loss):
        if step == ONSET_BL:  # the logging criterion, reduction="sum"
            out, y = held["pair"]
            return F.huber_loss(out, y, reduction="sum")
        return loss

    _train(
        ctx,
        model,
        opt,
        _measurements(gen, 128, 10, 3429),
        260,
        F.huber_loss,
        alter=alter,
        watch=watch,
        backprop=backprop,
    )
    gn, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at the onset is over 50x the median of the 20 steps before",
        gn[ONSET_BL] > 50 * _median(gn[ONSET_BL - 20 : ONSET_BL]),
    )
    ctx.check(
        "the onset batch is ordinary (largest input under 1.5x the run's median largest)",
        sizes[ONSET_BL] < 1.5 * _median(sizes),
    )
    ctx.check("the loss fell before the onset", _fell(ls[:ONSET_BL]))
    ctx.check(
        "the loss jumps over 2x right after the burst",
        max(ls[ONSET_BL + 1 : ONSET_BL + 6]) > 2 * _mean(ls[ONSET_BL - 10 : ONSET_BL]),
    )
    ctx.check(
        "the run recovers: the last 20 losses are under 1.5x the 20 before the onset",
        _mean(ls[-20:]) < 1.5 * _mean(ls[ONSET_BL - 20 : ONSET_BL]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- melodeon: the warm-up has no min(1, .), so the lr keeps climbing -----------------------------


@scenario(
    family="melodeon_bellows_reversal_style_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying a melodeon player's bellows-reversal style (eight styles) from sixteen readings of the bellows pressure and button timing, RMSprop at a peak of 5e-3 with a 5-step linear warm-up, cross-entropy, 240 steps. The warm-up is written peak * (step + 1) / 5 with no min(1, .), so the lr keeps climbing linearly past the peak (48x it by step 240); RMSprop's normalised steps grow with it and push fc2's pre-activations negative unit by unit: over 90% of act2's units die for good, and the loss climbs back to over 1 nat (chance is 2.08) and stays there, finite.",
)
def h342_melodeon_warmup_no_cap(ctx: Context) -> None:
    gen = seeded(34210)
    model = Net(16, 64, out=8)
    peak, warm = 5e-3, 5
    opt = torch.optim.RMSprop(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm)  # no min(1, .)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(x)))

    _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 8, 34210),
        240,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("under a tenth of act2's units dead over the first 10 steps", _mean(dead[:10]) < 0.1)
    ctx.check("over half of act2's units dead over the last 30 steps", _mean(dead[-30:]) > 0.5)
    ctx.check("the loss fell early on", min(ls[:80]) < 0.5 * ls[0])
    ctx.check(
        "the loss stays over 1.0 and over 5x its minimum for the last 30 steps",
        min(ls[-30:]) > max(1.0, 5 * min(ls)),
    )
    ctx.check("finite throughout", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="chueca_strike_speed_lr_range_silu_regressor",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="A learning-rate range test, as practitioners run one before picking a rate: a hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the ball speed (standardised) of a chueca strike from ten readings of the stick swing and the stance, SGD with momentum 0.9, MSE, the lr rising geometrically by 3% a step from 1e-4 for up to 300 steps, and the usual stop rule: the test ends as soon as the smoothed loss (EMA 0.9) passes 1.5x the best smoothed loss, before the loss can blow up. Control.",
)
def h342_chueca_lr_range_test_control(ctx: Context) -> None:
    gen = seeded(34211)
    model = Net(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.03)
    track = {"ema": None, "best": math.inf}

    def stop(step):
        loss = ctx.losses[-1]
        track["ema"] = loss if track["ema"] is None else 0.9 * track["ema"] + 0.1 * loss
        track["best"] = min(track["best"], track["ema"])
        return step > 20 and track["ema"] > 1.5 * track["best"]

    n = _train(
        ctx, model, opt, _measurements(gen, 64, 10, 34211), 300, F.mse_loss, sched=sched, stop=stop
    )
    ls = ctx.losses
    ctx.check("the stop rule ended the test", n < 300)
    ctx.check("the lr rose over 100x before the test stopped", opt.param_groups[0]["lr"] > 1e-2)
    ctx.check("the best loss is under half the first", min(ls) < 0.5 * ls[0])
    ctx.check(
        "the test stopped before a blow-up: the last 20 losses all under half the first 10's mean",
        max(ls[-20:]) < 0.5 * _mean(ls[:10]),
    )
    ctx.check("finite throughout", _finite(ls))


class TiedCoatAutoencoder(nn.Module):
    """Encoder enc -> tanh -> code; the decoder reuses enc's weight transposed (tied)."""

    def __init__(self, d_in=24, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _coat_spectra(gen, batch, seed, d_in=24, rank=5):
    """Reflectance spectra of a lime-wash coat: a few smooth factors plus noise (standardised)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d_in, generator=g)
    while True:
        z = torch.randn(batch, rank, generator=gen)
        x = z @ basis / math.sqrt(rank) + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="whitewash_lime_coat_reflectance_fp16_tied_autoencoder",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="A hand-written tied-weight autoencoder (enc, act; the decoder reuses enc's weight transposed) compressing 24-band reflectance spectra of a lime-wash coat to an 8-number code, Adam at 3e-3, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 batches, ReduceLROnPlateau on a held-out batch, MSE, 150 steps. Control.",
)
def h342_whitewash_tied_autoencoder_fp16_control(ctx: Context) -> None:
    gen = seeded(34212)
    model = TiedCoatAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    batches = _coat_spectra(gen, 64, 34212)
    val = next(batches)

    def plateau():
        with torch.no_grad():
            return float(F.mse_loss(model(val[0]), val[1]))

    _train(
        ctx,
        model,
        opt,
        batches,
        150,
        F.mse_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell over half", _fell(ctx.losses, ratio=0.5))
    ctx.check(
        "the loss scale stayed finite and positive", all(0 < s < math.inf for s in ctx.scales)
    )
    ctx.check("finite throughout", _finite(ctx.losses))


class ShotConv(nn.Module):
    """Conv1d over a paddle's 3-axis gyro trace: conv1 -> relu -> conv2 -> relu -> pool -> head."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


def _paddle_traces(gen, batch, classes, seed, length=40):
    """Gyro traces: each shot kind has its own rotation-rate profile, jittered in time and size."""
    g = torch.Generator().manual_seed(seed)
    profiles = torch.randn(classes, 3, length, generator=g).cumsum(-1) / math.sqrt(length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        shift = int(torch.randint(-3, 4, (1,), generator=gen))
        x = profiles[y].roll(shift, -1) * (1 + 0.2 * torch.randn(batch, 1, 1, generator=gen))
        yield x + 0.4 * torch.randn(batch, 3, length, generator=gen), y


@scenario(
    family="paddle_tennis_shot_gyro_conv1d_classifier",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="A hand-written ReLU Conv1d (conv1, act1, conv2, act2, head) classifying a paddle-tennis shot (five kinds) from a paddle's 3-axis gyro trace, Adagrad with two parameter groups (weights with weight decay 1e-4, biases without), OneCycleLR to a peak of 0.05, gradient clipping at 1.0, cross-entropy with label smoothing 0.1, noisy batches, 200 steps. Control.",
)
def h342_paddle_tennis_conv1d_onecycle_control(ctx: Context) -> None:
    gen = seeded(34213)
    model = ShotConv()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    plain = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.Adagrad(
        [{"params": decay, "weight_decay": 1e-4}, {"params": plain, "weight_decay": 0.0}],
        lr=0.05,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=200, cycle_momentum=False
    )
    _train(
        ctx,
        model,
        opt,
        _paddle_traces(gen, 64, 5, 34213),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell over 40%", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
