"""Held-out set 313 (``h313_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a sheepdog-trial shedding-call GELU classifier whose
distillation temperature multiplies the logits instead of dividing them (softmax saturates), a
curling-hack release-weight tanh regressor whose MultiStepLR gamma is typed 1e1 for 1e-1
(learning rate past the stability limit), a beehive frame-pooling net whose ReLU weights are
normalised by their sum without an epsilon (0 / 0, NaN), a change-ringing sally-pull GELU
regressor whose curriculum weight is divided by a 1e-5 floor for one step (Adam's second moment
poisoned), an orienteering split-time ReLU regressor fed one club's splits in seconds (one
corrupted batch), a pole-vault plant-angle SiLU regressor whose loss normaliser reads a one-row
micro-batch's count for one step (one gradient burst), a cloud-forest fog-drip two-group GELU
regressor whose trunk lr falls back to a default of 0 (trunk frozen), a hoof-trim bruise-grade
ReLU classifier run at Adamax lr 1e0 (dead ReLUs), a peat-stack drying SiLU regressor whose
target scaler's running std decays (slow climb of the loss), a katabatic gust-front hand-written
tanh Elman RNN whose recurrent matrix gets the input gain 2.0 (gradients grow through time), and
three controls (a sourdough-loaf RankNet pairwise ranker with AdamW and CyclicLR, a glass-gather
fp16 GELU classifier with a GradScaler and OneCycleLR, a geyser-pool Huber regressor with Adagrad,
accumulation and ReduceLROnPlateau).

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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, accumulate)``
    returns the micro-batch loss actually backpropagated (``loss / accumulate`` unless a bug says
    otherwise), ``after(step)`` runs after the optimizer step. Stops after a non-finite loss;
    returns the step it stopped at. ``attach=False`` runs a bug-free twin with no monitor."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = ctx.losses if attach else []
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss, accumulate) if backprop else loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if attach:
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
        if attach:
            ctx.step(torch.tensor(shown))
        else:
            losses.append(shown)
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step if attach else losses
    return steps if attach else losses


def _gauges(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised readings and smooth nonlinear targets of about unit scale."""
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


def _sharpness(model, loss_fn, x, y, iters=12):
    """Top Hessian eigenvalue of the loss on one batch (power iteration on Hessian-vector
    products)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- sheepdog shed: a distillation temperature multiplies instead of divides -----------------------


class ShedClassifier(Trunk):
    def __init__(self, temperature):
        super().__init__(12, 64, out=6, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        # meant: self.head(...) / self.temperature (soften); written as a product
        return self.head(self.features(x)) * self.temperature


@scenario(
    family="sheepdog_shed_gate_call_temperature_gelu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) sorting a sheepdog trial's shedding-ring moments into 6 handler calls (come-bye, away, walk-up, lie-down, that'll-do, shed) from 12 standardised readings of dog and sheep positions, NAdam at 2e-3, cross-entropy, 200 steps. The model was ported from a distillation recipe with temperature T = 50 that softens the logits (logits / T); the port writes logits * T, so the head's logits are 2500x what the recipe meant, and as the classes separate the float32 softmax of most rows rounds to exactly 1.0 on the target (wrong rows give huge losses).",
)
def h313_sheepdog_shed_temperature_product(ctx: Context) -> None:
    gen = seeded(31301)
    model = ShedClassifier(temperature=50.0)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    collapsed, peak = [], []

    def watch(step, out, x, y):
        if step % 10 == 0:
            collapsed.append(collapsed_fraction(out.detach(), y))
            peak.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 12, 6, seed=313),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over a quarter of rows' softmax is exactly 1.0 late in the run", max(collapsed[-5:]) > 0.25
    )
    ctx.check("the peak logit is over 20", max(peak) > 20.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- curling hack: MultiStepLR gamma typed 1e1 for 1e-1 ---------------------------------------------

ONSET_CURL = 80


def _curl(gen, batch):
    """A curling stone's release weight (standardised) from 10 readings of the delivery."""
    g = torch.Generator().manual_seed(3132)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(10)) + 0.3 * torch.sin(2 * x[:, 0])
        yield x, y + 0.03 * torch.randn(batch, generator=gen)


@scenario(
    family="curling_hack_release_weight_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_CURL,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a curling stone's release weight from 10 readings of the delivery from the hack, plain SGD at 0.05, MSE, 200 steps, with a MultiStepLR at milestones 80 and 130. The decay factor gamma is typed 1e1 for 1e-1: at step 80 the learning rate goes up tenfold to 0.5 instead of down, and lr x sharpness (the top Hessian eigenvalue, measured by power iteration on a fixed batch) passes the stability limit 2: the loss jumps about 10x and the run hovers at the edge of stability; at step 130 the second milestone takes the rate to 5.0, far past 2/sharpness, and the loss blows up to NaN at step 141.",
)
def h313_curling_gamma_typo(ctx: Context) -> None:
    gen = seeded(31302)
    model = Trunk(10, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[80, 130], gamma=1e1)
    probe = next(_curl(torch.Generator().manual_seed(7), 256))
    edge = {}

    def before(step):
        if step in (ONSET_CURL - 2, ONSET_CURL + 1, ONSET_CURL + 6):
            lr = opt.param_groups[0]["lr"]
            edge[step] = lr * _sharpness(model, F.mse_loss, *probe)

    _loop(ctx, model, opt, _curl(gen, 64), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("lr x sharpness is under 2 before step 80", edge.get(ONSET_CURL - 2, 9.0) < 2.0)
    ctx.check(
        "lr x sharpness passes 2 after step 80",
        max(edge.get(ONSET_CURL + 1, 0.0), edge.get(ONSET_CURL + 6, 0.0)) > 2.0,
    )
    ctx.check("the loss fell before the milestone", _mean(ls[70:80]) < 0.5 * _mean(ls[:10]))
    tail = [v if math.isfinite(v) else 1e30 for v in ls[ONSET_CURL:]]
    ctx.check(
        "the loss later exceeds 100x its pre-milestone level", max(tail) > 100 * _mean(ls[70:80])
    )


# -- beehive: frame weights normalised by their sum without an epsilon -------------------------------


class FramePool(nn.Module):
    """Scores each frame with a ReLU scorer and averages the frame values by those weights."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.scorer = nn.Linear(d_in, 1)
        self.value = nn.Linear(d_in, hidden)
        nn.init.constant_(self.scorer.bias, 1.0)  # every frame starts with some weight
        self.zero_rows = 0

    def forward(self, frames, mask):
        w = F.relu(self.scorer(frames)).squeeze(-1) * mask
        total = w.sum(1, keepdim=True)
        self.zero_rows = int((total == 0).sum())
        # meant: w / (total + 1e-6); a nuc whose frames all score 0 gives 0 / 0
        w = w / total
        return (w.unsqueeze(-1) * torch.tanh(self.value(frames))).sum(1)


class HiveNet(nn.Module):
    def __init__(self, d_in=6, hidden=32):
        super().__init__()
        self.pool = FramePool(d_in, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, inp):
        frames, mask = inp
        return self.head(self.pool(frames, mask)).squeeze(-1)


def _hives(gen, batch, frames=10):
    """Hives of 2 (nucs) to 10 frames, 6 readings per frame; the yield counts capped frames."""
    g = torch.Generator().manual_seed(3133)
    w = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, frames, 6, generator=gen)
        n = torch.where(
            torch.rand(batch, generator=gen) < 0.4,
            torch.full((batch,), 2),
            torch.randint(4, frames + 1, (batch,), generator=gen),
        )
        mask = (torch.arange(frames)[None] < n[:, None]).float()
        capped = (x[..., 0] > 0).float() * mask
        honey = torch.sigmoid(x @ w)
        y = (capped * honey).sum(1) / capped.sum(1).clamp(min=1)
        yield (x, mask), y


DIVERGE_HIVE = 65


@scenario(
    family="beehive_frame_honey_yield_relu_weight_pool_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("pool",),
    diverges=DIVERGE_HIVE,
    heldout=True,
    note="A frame-pooling net (pool.scorer, pool.value, head) estimating a hive's honey yield per capped frame from 6 readings of each of its 2 to 10 frames (40% are two-frame nucs), Adagrad at 0.1, MSE, 250 steps planned. The pooling weights are ReLU scores normalised by their sum, and the epsilon in the denominator was dropped in a refactor: as the scorer learns to give uncapped frames weight exactly 0, a nuc whose two frames are both uncapped gets 0 / 0 and the loss is NaN (step 65).",
)
def h313_beehive_pool_no_epsilon(ctx: Context) -> None:
    gen = seeded(31303)
    model = HiveNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    zero_rows = []

    def watch(step, out, x, y):
        zero_rows.append(model.pool.zero_rows)

    stop = _loop(ctx, model, opt, _hives(gen, 64), 250, F.mse_loss, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss fell before the NaN", _mean(ls[20:30]) < 0.8 * _mean(ls[:5]))
    ctx.check(f"the loss is NaN at step {DIVERGE_HIVE}", bad == DIVERGE_HIVE and stop == bad)
    ctx.check(
        "at that step a row's frame weights sum to exactly 0",
        bad is not None and zero_rows[bad] > 0 and max(zero_rows[:bad], default=0) == 0,
    )


# -- change ringing: a curriculum weight divided by the previous stage's floor -----------------------

ONSET_BELL = 70


@scenario(
    family="change_ringing_sally_pull_force_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BELL,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the pull force and timing of a bell ringer's sally stroke (2 outputs, standardised) from 12 readings of the rope and bell, Adam at 2e-3 (beta2 0.999), MSE, 220 steps. A curriculum rescales the loss at each stage switch by new_weight / old_weight; the first stage's weight is a 1e-5 floor, so at the switch (step 70) the loss is multiplied by 1e5 for one step on ordinary data. The one giant gradient fills Adam's second moment: the spike's first moment drags the weights off for a few dozen steps (the loss doubles), then, from step 120 on, the updates are about 10x smaller than before the spike and the loss stalls over 2x above a bug-free twin's.",
)
def h313_change_ringing_stage_weight(ctx: Context) -> None:
    def build():
        gen = seeded(31304)
        model = Trunk(12, 64, out=2, act=nn.GELU)
        return gen, model, torch.optim.Adam(model.parameters(), lr=2e-3)

    def backprop(step, loss, acc):
        return loss * (1.0 / 1e-5 if step == ONSET_BELL else 1.0)

    gen, twin, topt = build()
    twin_losses = _loop(
        ctx, twin, topt, _gauges(gen, 64, 12, seed=3134, outputs=2), 220, F.mse_loss, attach=False
    )
    gen, model, opt = build()
    moves, last = [], {"w": _flat(model)}

    def after(step):
        w = _flat(model)
        moves.append(float((w - last["w"]).norm()))
        last["w"] = w

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 12, seed=3134, outputs=2),
        220,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 70 is over 1e4x the median before",
        gn[ONSET_BELL] > 1e4 * _median(gn[:ONSET_BELL]),
    )
    ctx.check(
        "updates over steps 120-220 are under 1/8 of those over steps 40-70",
        _mean(moves[120:220]) < _mean(moves[40:70]) / 8,
    )
    ctx.check(
        "the loss over the last 20 steps is over 2x the bug-free twin's",
        _mean(ls[-20:]) > 2 * _mean(twin_losses[-20:]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- orienteering: one club's splits in seconds ----------------------------------------------------

ONSET_ORI = 100


@scenario(
    family="orienteering_leg_split_time_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ORI,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing an orienteering leg's split time (minutes, standardised) from 10 readings of the leg (distance, climb, terrain, visibility), SGD with momentum 0.9 at 0.01, MSE, gradient clipping at 1.0, 220 steps. One club's results file, merged into the shard that batch 100 comes from, gives its splits in seconds instead of minutes: eight rows of that batch have targets 60x the rest. The gradient spikes on that one batch, the clip holds it, and the run recovers.",
)
def h313_orienteering_seconds_shard(ctx: Context) -> None:
    gen = seeded(31305)
    model = Trunk(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    peak = {}

    def alter(step, x, y):
        if step == ONSET_ORI:
            y = y.clone()
            y[:8] = (y[:8] + 2.0) * 60.0
            peak["y"] = float(y.abs().max())
        return x, y

    _loop(ctx, model, opt, _gauges(gen, 64, 10, seed=3135), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _mean(ls[ONSET_ORI - 10 : ONSET_ORI])
    ctx.check("the bad batch's targets reach over 60", peak.get("y", 0.0) > 60.0)
    ctx.check(
        "the gradient at step 100 is over 20x the median before",
        gn[ONSET_ORI] > 20 * _median(gn[:ONSET_ORI]),
    )
    ctx.check("the loss at step 100 is over 100x the steps before", ls[ONSET_ORI] > 100 * before)
    ctx.check("the loss is back under 2x its level by the end", _mean(ls[-10:]) < 2 * before)
    ctx.check("finite throughout", _finite(ls))


# -- pole vault: the sample-weight normaliser reads the epoch's last micro-batch -------------------

ONSET_VAULT = 90


@scenario(
    family="pole_vault_plant_box_angle_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_VAULT,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a vaulter's pole angle at the plant box (standardised) from 10 readings of the run-up, SGD with Nesterov momentum 0.9 at 0.02, MSE with sample weights, gradient clipping at 2.0, 200 steps. The weighted loss is divided by the batch's row count; at the epoch boundary (step 90) the code reads the row count of the epoch's last, one-row micro-batch instead of the batch's 64, so that step's loss, on ordinary data, is multiplied by 64. One gradient burst, clipped; the run recovers.",
)
def h313_pole_vault_epoch_tail_count(ctx: Context) -> None:
    gen = seeded(31306)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss, acc):
        rows = 1 if step == ONSET_VAULT else 64
        return loss * 64 / rows

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 10, seed=3136),
        200,
        F.mse_loss,
        backprop=backprop,
        clip=2.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 90 is over 30x the median before",
        gn[ONSET_VAULT] > 30 * _median(gn[:ONSET_VAULT]),
    )
    ctx.check(
        "the loss at step 90 is ordinary (under 3x the steps before)",
        ls[ONSET_VAULT] < 3 * _mean(ls[ONSET_VAULT - 10 : ONSET_VAULT]),
    )
    ctx.check("the loss fell over the run", _fell(ls))


# -- cloud forest: the trunk group's lr falls back to a default of 0 ---------------------------------


@scenario(
    family="cloud_forest_fog_drip_two_group_gelu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the fog drip collected under a cloud-forest canopy (standardised) from 10 readings of humidity, wind and leaf area, RMSprop at 1e-3 with two param groups (trunk fc1, fc2; head), MSE, 200 steps. The trunk group's rate is read with cfg.get('trunk_lr', 0.0) and the config spells the key 'trunk-lr', so the trunk trains at lr 0: fc1 and fc2 never move, only the head learns and the loss settles high.",
)
def h313_cloud_forest_trunk_lr_default(ctx: Context) -> None:
    gen = seeded(31307)
    model = Trunk(10, 64, act=nn.GELU)
    cfg = {"lr": 1e-3, "trunk-lr": 1e-3}
    opt = torch.optim.RMSprop(
        [
            {
                "params": [*model.fc1.parameters(), *model.fc2.parameters()],
                "lr": cfg.get("trunk_lr", 0.0),
            },
            {"params": model.head.parameters()},
        ],
        lr=cfg["lr"],
    )
    trunk0 = _flat(nn.ModuleList([model.fc1, model.fc2]))
    head0 = _flat(model.head)
    _loop(ctx, model, opt, _gauges(gen, 64, 10, seed=3137), 200, F.mse_loss)
    trunk1 = _flat(nn.ModuleList([model.fc1, model.fc2]))
    head1 = _flat(model.head)
    ctx.check(
        "fc1 and fc2 move under 1e-6 of their norm",
        float((trunk1 - trunk0).norm()) < 1e-6 * float(trunk0.norm()),
    )
    ctx.check(
        "the head moves over 5% of its norm",
        float((head1 - head0).norm()) > 0.05 * float(head0.norm()),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- hoof trimming: Adamax run at the SGD config's learning rate -----------------------------------


@scenario(
    family="hoof_trim_sole_bruise_grade_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading sole bruising found at a hoof trim into 5 grades from 12 non-negative readings of the hoof (wall angle, sole depth, heel height, ...), cross-entropy, 200 steps. Adamax's learning rate is typed 1e0 for 1e-3: the first steps move every weight by about 1, nearly all of act2's units go negative on every input and never come back, and the loss sits near chance (log 5).",
)
def h313_hoof_trim_adamax_lr_typo(ctx: Context) -> None:
    gen = seeded(31308)
    model = Trunk(12, 64, out=5)
    opt = torch.optim.Adamax(model.parameters(), lr=1e0)
    dead = []
    readings = _sorts(gen, 64, 12, 5, seed=3138)

    def hooves():
        while True:
            x, y = next(readings)
            yield x.abs(), y  # depths, angles and heights are non-negative magnitudes

    def watch(step, out, x, y):
        if step % 10 == 0:
            with torch.no_grad():
                dead.append(dead_fraction(model.features(x)))

    _loop(
        ctx,
        model,
        opt,
        hooves(),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under half of act2's units are dead at step 0", dead[0] < 0.5)
    ctx.check("over 90% of act2's units are dead from step 50 on", min(dead[5:]) > 0.9)
    ctx.check("the loss ends near chance (over 1.2)", _mean(ctx.losses[-20:]) > 1.2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- peat stack: the target scaler's running std forgets its new-term weight ------------------------


@scenario(
    family="peat_stack_drying_scaled_target_silu_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how much water a stacked peat sod loses in a day from 10 weather and stack readings, RAdam at 1e-3, MSE on targets standardised by a running std, 250 steps. The running std is updated as 0.99 * std + 0.001 * batch_std (the second coefficient typed 1e-3 for 1e-2), so the std decays towards a tenth of the true value and the standardised targets drift upward in scale every step; the loss climbs slowly from the first steps to the end of the run with no single event to point at.",
)
def h313_peat_stack_running_std_typo(ctx: Context) -> None:
    gen = seeded(31309)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    state = {"std": 1.0}
    stds = []
    data = _gauges(gen, 64, 10, seed=3139)

    def scaled():
        while True:
            x, y = next(data)
            state["std"] = 0.99 * state["std"] + 0.001 * float(y.std())
            stds.append(state["std"])
            yield x, y / state["std"]

    _loop(ctx, model, opt, scaled(), 250, F.mse_loss)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _mean(ls[i : i + 10]) if i + 10 <= len(ls) else 1e9)
    ctx.check("the scaler's std shrinks over 5x", stds[-1] < stds[0] / 5)
    ctx.check("the loss's low comes before step 120", low < 120)
    ctx.check(
        "the last 20 steps' loss is over 3x its 10-step low",
        _mean(ls[-20:]) > 3 * _mean(ls[low : low + 10]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- katabatic gust: the recurrent matrix gets the feed-forward tanh gain ---------------------------


class ElmanRNN(nn.Module):
    """A hand-written tanh Elman RNN: w_ih, w_hh, head on the last state."""

    def __init__(self, d_in=4, hidden=48, gain=1.0):
        super().__init__()
        self.w_ih = nn.Linear(d_in, hidden)
        self.w_hh = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.w_hh.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.w_hh.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.w_ih(x[:, t]) + self.w_hh(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _gusts(gen, batch, steps=40):
    """Katabatic wind readings (speed, temperature, pressure, direction) over 40 ten-minute frames;
    the target is the gust front's peak speed an hour on (depends on the early frames too)."""
    while True:
        x = 0.2 * torch.randn(batch, steps, 4, generator=gen)
        y = torch.tanh(2 * x[:, :5, 0].sum(1) - 2 * x[:, -5:, 1].sum(1) + x[:, :, 2].mean(1))
        yield x, y


@scenario(
    family="katabatic_gust_front_hand_tanh_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("w_hh",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (w_ih, w_hh, head) forecasting a katabatic gust front's peak speed from 40 ten-minute frames of 4 readings, SGD with momentum 0.9 at 0.01, MSE, gradient clipping at 1.0, 120 steps. The config's init_gain 2.0 was meant for the input projection; the init code applies it to the recurrent matrix too (orthogonal, gain 2.0, spectral radius 2): backpropagating through 40 steps, the gradient reaching the first hidden state is many times the one at the last state, and the raw gradient norm dwarfs the clip.",
)
def h313_katabatic_input_gain_on_recurrent(ctx: Context) -> None:
    gen = seeded(31310)
    cfg = {"init_gain": 2.0}  # meant for the input projection w_ih
    model = ElmanRNN(gain=cfg["init_gain"])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ratios = []

    def after(step):
        if step % 10 == 0:
            first, last = model.states[0].grad, model.states[-1].grad
            if first is not None and last is not None:
                ratios.append(float(first.norm() / last.norm().clamp(min=1e-12)))

    _loop(ctx, model, opt, _gusts(gen, 32), 120, F.mse_loss, after=after, clip=1.0)
    ctx.check("the first state's gradient is over 20x the last's at step 0", ratios[0] > 20)
    ctx.check("and over 20x through the run", min(ratios) > 20)
    ctx.check("the raw gradient norm is over 10x the clip", _median(ctx.grad_norms) > 10)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ------------------------------------------------------------------------------------


def _loaves(gen, batch, lists=8):
    """Judging sessions of 8 sourdough loaves each, 10 readings per loaf (oven spring, crumb
    openness, crust colour, ...); the judges' score is a noisy function of the readings."""
    g = torch.Generator().manual_seed(31311)
    w = torch.randn(10, generator=g)
    v = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, lists, 10, generator=gen)
        score = x @ w / math.sqrt(10) + 0.5 * torch.tanh(x @ v / math.sqrt(10))
        yield x, score + 0.2 * torch.randn(batch, lists, generator=gen)


def _ranknet(scores, rel):
    """RankNet: a logistic loss on every pair whose judged scores differ, per session."""
    ds = scores[:, :, None] - scores[:, None, :]
    better = (rel[:, :, None] > rel[:, None, :]).float()
    return (F.softplus(-ds) * better).sum() / better.sum()


class LoafScorer(Trunk):
    def __init__(self):
        super().__init__(10, 64, out=1, act=nn.GELU)


@scenario(
    family="sourdough_loaf_crumb_pairwise_ranker",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU scoring MLP (fc1, act1, fc2, act2, head) ranking the 8 sourdough loaves of each judging session from 10 readings per loaf, RankNet pairwise logistic loss over every pair the judges scored differently, AdamW at weight decay 1e-2 with a triangular CyclicLR between 1e-4 and 3e-3 (half-cycle 25 steps, momentum cycling off), clipping at 1.0, 200 steps. An ordinary run: the loss falls and the pairwise order agrees with the judges on most pairs.",
)
def h313_sourdough_ranknet_cyclic(ctx: Context) -> None:
    gen = seeded(31311)
    model = LoafScorer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=1e-4, max_lr=3e-3, step_size_up=25, cycle_momentum=False
    )
    _loop(ctx, model, opt, _loaves(gen, 16), 200, _ranknet, clip=1.0, sched=sched)
    x, rel = next(_loaves(torch.Generator().manual_seed(5), 64))
    with torch.no_grad():
        s = model(x)
    ds = s[:, :, None] - s[:, None, :]
    better = rel[:, :, None] > rel[:, None, :]
    agree = float(((ds > 0) & better).sum() / better.sum())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("held-out pairwise agreement is over 75%", agree > 0.75)


@scenario(
    family="glass_gather_punty_fp16_gelu_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) sorting a glassblower's gather on the punty into 6 working states (too cold, ready, sagging, ...) from 14 readings of colour temperature and rotation, fp16 autocast with a torch.amp.GradScaler, Adam with OneCycleLR (peak 5e-3), cross-entropy with label smoothing 0.1, clipping at 1.0 after unscaling, 200 steps. An ordinary run.",
)
def h313_glass_gather_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(31312)
    model = Trunk(14, 64, out=6, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 14, 6, seed=31312),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("the loss scale stayed over 1", min(ctx.scales) > 1.0)


def _geyser(gen, batch, seed):
    """A geyser pool's siltation rate from 8 readings, with heavy-tailed (Student-t) noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    t = torch.distributions.StudentT(2.5)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(8)) + 0.5 * torch.sin(x[:, 1])
        yield x, y + 0.1 * t.sample((batch,))


@scenario(
    family="geyser_pool_siltation_huber_silu_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a hot-spring geyser pool's siltation rate from 8 readings (flow, temperature, silica, wind), Student-t label noise, Huber loss (delta 1), Adagrad at 0.05, gradient accumulation over 2 micro-batches, clipping at 1.0, ReduceLROnPlateau (factor 0.5, patience 20), 200 steps. An ordinary run.",
)
def h313_geyser_pool_huber_plateau(ctx: Context) -> None:
    gen = seeded(31313)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _loop(
        ctx,
        model,
        opt,
        _geyser(gen, 32, seed=31313),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
