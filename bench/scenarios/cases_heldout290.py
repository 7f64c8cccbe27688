"""Held-out set 290 (``h290_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a cheese-cave rind-bloom net with a log-feature layer fed a
humidity probe that reads 0.0 (log 0, NaN), a ropewalk cordage breaking-load GELU regressor whose
resume loads the oldest checkpoint (a one-off loss spike), a kiln-brick firing-shrinkage
two-group regressor whose trunk unfreeze step was given in samples (trunk at lr 0 throughout), a
pomace press-cake grade ReLU classifier trained with nll_loss on raw logits (head logits grow
without bound), a pearl-oyster nacre-thickness regressor fed one shard of water temperatures in
kelvin, a cordwainer last-fit SiLU regressor whose resume multiplies by the accumulation count
instead of dividing (one gradient burst), a sledge-hammer rail-spike drive tanh regressor whose
lr was typed 10x too large (past 2/sharpness), a ball-lightning glow-decay 12-layer tanh MLP
initialised at std 1 (gradients grow through depth), a cajon slap-tone GELU classifier whose
cosine-head temperature is applied to unnormalised features (softmax collapse), a saltern
brine-evaporation SiLU regressor whose hand-rolled weight decay has its sign flipped (slow climb),
and three controls (a river-ice breakup-stage forecaster with a hand-written Mamba-like selective
linear recurrence, AdamW and warm-up + cosine; a morris-side stick-clash Conv1d classifier under
fp16 autocast with a GradScaler, OneCycleLR, label smoothing, SGD Nesterov; a peat-hag erosion
Huber regressor with RAdam, accumulation, clipping and ReduceLROnPlateau).

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
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    weight=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step, ``weight(step)`` multiplies the backpropagated loss (the logged loss is
    the unweighted one); ``amp``: fp16 autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        w = weight(step) if weight is not None else 1.0
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
            total = w * loss / accumulate
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
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
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
    return abs(eig)


# -- cheese cave: a humidity probe reads 0.0, the log-feature layer gives -inf -----------------

ONSET_CAVE = 90


class LogFeatures(nn.Module):
    """log of the positive probe readings (humidity, CO2, ammonia), passed on with the rest."""

    def __init__(self, n_log):
        super().__init__()
        self.n_log = n_log

    def forward(self, x):
        return torch.cat([torch.log(x[:, : self.n_log]), x[:, self.n_log :]], 1)


class RindNet(nn.Module):
    def __init__(self, n_log=3, d_rest=5, hidden=48):
        super().__init__()
        self.logf = LogFeatures(n_log)
        self.fc1 = nn.Linear(n_log + d_rest, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.logf(x)))))
        return self.head(h).squeeze(-1)


def _cave_readings(gen, batch):
    """Three positive probe readings (log-normal around their set points) and five standardised
    ones; the target is the rind-bloom score."""
    g = torch.Generator().manual_seed(2901)
    w = torch.randn(8, generator=g)
    base = torch.tensor([0.92, 0.03, 0.002])
    while True:
        pos = base * torch.exp(0.3 * torch.randn(batch, 3, generator=gen))
        rest = torch.randn(batch, 5, generator=gen)
        z = torch.cat([torch.log(pos / base) / 0.3, rest], 1)
        y = torch.tanh(z @ w / math.sqrt(8)) + 0.05 * torch.randn(batch, generator=gen)
        yield torch.cat([pos, rest], 1), y


@scenario(
    family="cheese_cave_rind_bloom_log_feature_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logf",),
    diverges=ONSET_CAVE,
    heldout=True,
    onset=ONSET_CAVE,
    note="A SiLU net (logf = log of three positive probe readings: relative humidity, CO2, ammonia; fc1, act1, fc2, act2, head) scoring the rind bloom of cheeses in an affinage cave from eight readings, NAdam at 2e-3, MSE. The log feature layer has no clamp (no log(max(x, eps))): at step 90 a humidity probe whose wick dried out reports 0.0 for two wheels, log 0 = -inf in logf, fc1 mixes -inf with finite terms and SiLU(-inf) = -inf * 0 is NaN, so the loss is NaN at step 90.",
)
def h290_cheese_cave_log_zero(ctx: Context) -> None:
    gen = seeded(29001)
    model = RindNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    infs: list[int] = []

    def alter(step, x, y):
        if step == ONSET_CAVE:
            x = x.clone()
            x[:2, 0] = 0.0
        return x, y

    def watch(step, out, x, y):
        with torch.no_grad():
            infs.append(int(torch.isinf(model.logf(x)).sum()))

    _train(ctx, model, opt, _cave_readings(gen, 64), 200, F.mse_loss, alter=alter, watch=watch)
    ls = ctx.losses
    ctx.check("the loss is finite before step 90", _finite(ls[:ONSET_CAVE]))
    ctx.check("the loss is NaN at step 90", len(ls) > ONSET_CAVE and math.isnan(ls[ONSET_CAVE]))
    ctx.check("logf gave -inf at step 90 and never before", infs[-1] > 0 and sum(infs[:-1]) == 0)
    ctx.check("the loss fell before the fault", _fell(ls[:ONSET_CAVE]))


# -- ropewalk: the resume loads the oldest checkpoint --------------------------------------------

ONSET_ROPE = 150


@scenario(
    family="ropewalk_cordage_breaking_load_gelu_regressor",
    optimizer="SGD momentum",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ROPE,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the breaking load of laid cordage from 10 standardised readings (yarn count, twist per metre, fibre grade, tar content), SGD momentum 0.9 at 2e-2, MSE. Checkpoints (model and optimizer) are kept every 10 steps from step 0 in a list, oldest first; the job is preempted and resumes at step 150, and the resume code takes checkpoints[0] instead of checkpoints[-1]: the weights and momentum of step 0 come back, the loss on an ordinary batch jumps to its early level for that step, and the run trains back down. No gradient burst, no bad data.",
)
def h290_ropewalk_oldest_checkpoint(ctx: Context) -> None:
    gen = seeded(29002)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    ckpts: list[tuple[dict, dict]] = []

    def copy(state):
        return {
            k: (v.clone() if torch.is_tensor(v) else copy(v) if isinstance(v, dict) else v)
            for k, v in state.items()
        }

    def before(step):
        if step == ONSET_ROPE:
            m, o = ckpts[0]
            model.load_state_dict(m)
            opt.load_state_dict(o)

    def after(step):
        if step % 10 == 0:
            ckpts.append((copy(model.state_dict()), copy(opt.state_dict())))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=2902),
        300,
        F.mse_loss,
        before=before,
        after=after,
    )
    ls = ctx.losses
    pre = _mean(ls[ONSET_ROPE - 10 : ONSET_ROPE])
    ctx.check("the loss at the resume step is over 3x the steps before", ls[ONSET_ROPE] > 3 * pre)
    ctx.check("the run trained back down", _mean(ls[-20:]) < 1.5 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- kiln bricks: the trunk unfreeze step was given in samples ----------------------------------


@scenario(
    family="kiln_brick_firing_shrinkage_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the firing shrinkage of clamp-kiln bricks from 12 standardised readings (clay mix, moisture, position in the clamp, firing hours), Adagrad at 5e-2 with two param groups: the trunk (fc1, fc2) starts frozen at lr 0 and should be unfrozen after 20 epochs of head-only training. The recipe wrote unfreeze_at = 20 * 64 (epochs times the batch size, in samples: 1280) and the loop compares it with the step counter, so within the 200-step run the trunk never unfreezes: fc1 and fc2 have an update ratio of exactly 0 every step while the head trains and the loss falls only as far as a linear readout of random features allows.",
)
def h290_kiln_brick_unfreeze_in_samples(ctx: Context) -> None:
    gen = seeded(29003)
    model = Stack(12, 64)
    unfreeze_at = 20 * 64
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 0.0}, {"params": model.head.parameters(), "lr": 5e-2}]
    )

    def before(step):
        if step == unfreeze_at:
            opt.param_groups[0]["lr"] = 5e-2

    fc1_0, fc2_0, head_0 = _flat(model.fc1), _flat(model.fc2), _flat(model.head)
    _train(ctx, model, opt, _readings(gen, 64, 12, seed=2903), 200, F.mse_loss, before=before)
    ctx.check(
        "fc1 and fc2 never moved",
        float((_flat(model.fc1) - fc1_0).abs().max()) == 0.0
        and float((_flat(model.fc2) - fc2_0).abs().max()) == 0.0,
    )
    ctx.check(
        "the head moved over 5% of its norm",
        float((_flat(model.head) - head_0).norm()) > 0.05 * float(head_0.norm()),
    )
    ctx.check("the loss still fell", _fell(ctx.losses))


# -- pomace press: nll_loss on raw logits ---------------------------------------------------------


@scenario(
    family="pomace_press_cake_grade_relu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading a cider-press pomace cake into five grades from 16 standardised readings (press pressure, juice run-off, cake thickness, cloth type), Adam at 3e-3, trained with F.nll_loss. The model's forward used to end in log_softmax; a refactor moved it out so that a calibration step could see raw logits, and the training script kept nll_loss: the loss is -logit[target], unbounded below, so the head pushes the target logit up and the rest down without limit. The head's logits grow over 20x and keep growing, the loss goes negative; finite within the run.",
)
def h290_pomace_press_nll_on_logits(ctx: Context) -> None:
    gen = seeded(29004)
    model = Stack(16, 64, out=5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    probe = next(_kinds(torch.Generator().manual_seed(9), 256, 16, 5, seed=2904))[0]
    peaks: list[float] = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                peaks.append(float(model(probe).abs().max()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, seed=2904),
        200,
        F.nll_loss,
        classifier=True,
        after=after,
    )
    ctx.check("the head's peak logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("and was still growing at the end", peaks[-1] > 1.5 * peaks[len(peaks) // 2])
    ctx.check("the loss went negative", ctx.losses[-1] < 0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pearl oyster: one shard of water temperatures in kelvin ------------------------------------

ONSET_PEARL = 120


@scenario(
    family="pearl_oyster_nacre_thickness_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PEARL,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the nacre thickness of cultured pearls from 10 standardised readings (water temperature, plankton index, culture months, depth), SGD momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0. One farm's shard was exported with the water temperature in kelvin and skipped the standardiser: the batch at step 120 carries eight rows whose temperature column reads about 300 instead of a z-score. The loss and gradient jump by orders of magnitude on that batch, clipping bounds the step and the run recovers.",
)
def h290_pearl_oyster_kelvin_shard(ctx: Context) -> None:
    gen = seeded(29005)
    model = Stack(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_PEARL:
            x = x.clone()
            x[:8, 0] = 273.15 + 27.0 + x[:8, 0]
        return x, y

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=2905), 240, F.mse_loss, alter=alter, clip=1.0
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_PEARL - 20 : ONSET_PEARL])
    ctx.check("the loss on the bad batch is over 100x the usual", ls[ONSET_PEARL] > 100 * pre)
    ctx.check(
        "the gradient on the bad batch is over 100x the usual",
        g[ONSET_PEARL] > 100 * _median(g[ONSET_PEARL - 20 : ONSET_PEARL]),
    )
    ctx.check("the run recovered", _mean(ls[-20:]) < 2.0 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- cordwainer: the resume multiplies by the accumulation count instead of dividing -----------

ONSET_LAST = 100


@scenario(
    family="cordwainer_last_fit_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_LAST,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how a shoe last fits from 12 standardised foot measurements, SGD Nesterov (momentum 0.9) at 1e-2, MSE, gradient accumulation over 4 micro-batches, clipping at 5.0. After a restart at step 100 the first accumulation window is rebuilt by a resume helper that multiplies each micro-batch loss by the accumulation count instead of dividing by it: that one step's gradient is 16x the usual on ordinary data. Clipping bounds the step and the run carries on.",
)
def h290_cordwainer_accum_multiplied(ctx: Context) -> None:
    gen = seeded(29006)
    model = Stack(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, seed=2906),
        200,
        F.mse_loss,
        accumulate=4,
        clip=5.0,
        weight=lambda s: 16.0 if s == ONSET_LAST else 1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    base = _median(g[ONSET_LAST - 20 : ONSET_LAST])
    ctx.check("the gradient at step 100 is over 10x the usual", g[ONSET_LAST] > 10 * base)
    ctx.check(
        "the loss on that batch was ordinary",
        ls[ONSET_LAST] < 2.0 * _mean(ls[ONSET_LAST - 10 : ONSET_LAST]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- sledge hammer: the lr was typed 10x too large ----------------------------------------------


@scenario(
    family="sledge_hammer_rail_spike_drive_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how many blows a track gang's spike maul needs to drive a rail spike from 10 standardised readings (tie wood, spike length, maul weight, swing height), plain SGD with a linear warm-up over 40 steps, MSE. The recipe's peak lr 0.1 was typed 1.0: partway through the warm-up lr x sharpness (the top Hessian eigenvalue of the loss, about 5 here) crosses 2, the iterates oscillate with growing amplitude along the sharp direction and the loss blows up.",
)
def h290_sledge_hammer_lr_typo(ctx: Context) -> None:
    gen = seeded(29007)
    model = Stack(10, 64, act=nn.Tanh)
    lr = 1.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 128, 10, seed=2907)
    x0, y0 = next(_readings(torch.Generator().manual_seed(5), 256, 10, seed=2907))
    sharp = _sharpness(model, F.mse_loss, x0, y0)

    def before(step):
        opt.param_groups[0]["lr"] = lr * min(1.0, (step + 1) / 40)

    _train(ctx, model, opt, batches, 150, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("peak lr x initial sharpness is above 2", lr * sharp > 2.0)
    bad = _first_bad(ls)
    ctx.check(
        "the loss blew up (over 100x its start or non-finite)",
        bad is not None or max(ls) > 100 * ls[0],
    )


# -- ball lightning: the deep tanh MLP initialised at std 1 -------------------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in=8, width=64, depth=12):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="ball_lightning_glow_decay_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP (layers.0 .. layers.11, head) regressing the glow-decay time of ball-lightning reports from 8 standardised readings, plain SGD at 1e-3, MSE. The init helper was written as nn.init.normal_(w, std=1.0) where it meant std = 1/sqrt(fan_in): with 64 units each layer multiplies the backward signal by about sqrt(64) times tanh's slope, far above 1 (the chaotic phase), so the gradient grows layer by layer towards the input: layers.0's weight gradient is over 30x layers.11's, and the loss makes no progress.",
)
def h290_ball_lightning_std1_init(ctx: Context) -> None:
    gen = seeded(29008)
    model = DeepTanh()
    for lin in model.layers:
        nn.init.normal_(lin.weight, std=1.0)
        nn.init.zeros_(lin.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios: list[float] = []
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 8, seed=2908)
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        first = float(model.layers[0].weight.grad.norm())
        last = float(model.layers[-1].weight.grad.norm())
        ratios.append(first / max(last, 1e-30))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("layers.0's gradient is over 30x layers.11's", _median(ratios) > 30)
    ctx.check("the loss made no real progress", _mean(ls[-10:]) > 0.7 * _mean(ls[:10]))
    ctx.check("finite throughout", _finite(ls))


# -- cajon: a cosine-head temperature on unnormalised features ----------------------------------


class SlapToneNet(nn.Module):
    def __init__(self, d_in=20, hidden=64, classes=6, tau=0.005):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes, bias=False)
        self.tau = tau

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return self.head(h) / self.tau


@scenario(
    family="cajon_slap_tone_tempered_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) naming which of six cajon strokes (bass, open slap, closed slap, tip, ghost, flam) a 20-band onset spectrum comes from, Adamax at 2e-3, cross-entropy. The head's temperature 0.005 was copied from a cosine-similarity head whose features and weights are L2-normalised (logits in [-200, 200]); here neither is normalised, so logits / 0.005 are 200x the head's raw outputs: the softmax saturates and on over a third of the rows the float32 probability of the target rounds to exactly 1.0. Finite, no blow-up.",
)
def h290_cajon_temperature_unnormalised(ctx: Context) -> None:
    gen = seeded(29009)
    model = SlapToneNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    px, py = next(_kinds(torch.Generator().manual_seed(11), 256, 20, 6, seed=2909))
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 6, seed=2909),
        200,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        frac = collapsed_fraction(model(px), py)
    ctx.check("over a third of the rows' softmax is exactly 1.0", frac > 1 / 3)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- saltern: the hand-rolled weight decay has its sign flipped ----------------------------------


@scenario(
    family="saltern_brine_evaporation_silu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the daily evaporation of a saltern's brine pans from 10 standardised readings (brine density, wind, sun hours, humidity), RMSprop at 1e-3, MSE. Weight decay is hand-rolled after the optimizer step as p.mul_(1 - lr * wd) with wd 5.0, but it was written p.mul_(1 + lr * wd): every step the weights grow by 0.5%. The loss falls at first, then the growing weights win and the loss climbs slowly to over 3x its low. No spike, no NaN.",
)
def h290_saltern_decay_sign(ctx: Context) -> None:
    gen = seeded(29010)
    model = Stack(10, 64, act=nn.SiLU)
    lr, wd = 1e-3, 5.0
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)

    def after(step):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("weight"):
                    p.mul_(1 + lr * wd)

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=2910), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10, 5))
    ctx.check("the loss first fell", low < 0.7 * _mean(ls[:10]))
    ctx.check("then climbed to over 3x its low", _mean(ls[-10:]) > 3 * low)
    ctx.check("finite throughout", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


class SelectiveScan(nn.Module):
    """A Mamba-like selective linear recurrence, hand-written: per channel
    h_t = a_t * h_{t-1} + (1 - a_t) * u_t with a_t = exp(-softplus(dt(x_t)) * exp(A_log)),
    output gated by SiLU(gate(x_t)). Stable by construction (0 < a_t < 1)."""

    def __init__(self, dim):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.dt = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)
        self.A_log = nn.Parameter(torch.log(torch.linspace(0.5, 4.0, dim)))
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        u = self.inp(x)
        a = torch.exp(-F.softplus(self.dt(x)) * torch.exp(self.A_log))
        h = torch.zeros_like(u[:, 0])
        hs = []
        for t in range(x.shape[1]):
            h = a[:, t] * h + (1 - a[:, t]) * u[:, t]
            hs.append(h)
        y = torch.stack(hs, 1) * F.silu(self.gate(x))
        return x + self.out(y)


class BreakupForecaster(nn.Module):
    def __init__(self, d_in=4, dim=32):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ssm1 = SelectiveScan(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ssm2 = SelectiveScan(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.embed(x)
        h = self.ssm1(self.norm1(h))
        h = self.ssm2(self.norm2(h))
        return self.head(h[:, -1]).squeeze(-1)


def _thaw_series(gen, batch, length=24):
    """Daily (air temperature, sun, snow depth, discharge) series; the breakup stage is a
    thresholded accumulation of thawing degree-days with a recent-discharge term."""
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        x[..., 0] = x[..., 0] + 0.3 * torch.randn(batch, 1, generator=gen)
        tdd = F.relu(x[..., 0] + 0.3 * x[..., 1]).cumsum(1)[:, -1] / length
        y = torch.tanh(3 * (tdd - 0.45)) + 0.4 * x[:, -4:, 3].mean(1) - 0.2 * x[:, :, 2].mean(1)
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="river_ice_breakup_stage_selective_ssm_forecaster",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a forecaster of a river's ice-breakup stage from 24 days of (air temperature, sun, snow depth, discharge) readings, built from two hand-written Mamba-like selective linear-recurrence blocks (input-dependent decay a_t = exp(-softplus(dt(x)) exp(A_log)), SiLU gate, pre-LayerNorm residual) and a head on the last state, AdamW at 3e-3 with weight decay 0.05 (norms, biases and A_log excluded), linear warm-up over 15 steps then cosine decay, clipping at 1.0, MSE. Trains normally.",
)
def h290_river_ice_selective_ssm_control(ctx: Context) -> None:
    gen = seeded(29011)
    model = BreakupForecaster()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    rest = [p for n, p in model.named_parameters() if p.dim() != 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 150, 15

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _train(ctx, model, opt, _thaw_series(gen, 32), steps, F.mse_loss, clip=1.0, sched=sched)
    ctx.check("the loss fell by over half", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))


class StickClashNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 7, padding=3)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2, stride=2)
        self.act2 = nn.GELU()
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], 1))


def _clash_traces(gen, batch, length=64, classes=4):
    """Contact-microphone traces of a morris side's stick clashes: the clash pattern (single,
    double, tip, roll) sets the pulse spacing; noisy, with a wrong label on 5% of traces."""
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        period = (6 + 4 * y).float()[:, None]
        phase = torch.rand(batch, 1, generator=gen) * period
        x = torch.exp(-(((t - phase) % period) ** 2) / 2.0)
        x = x + 0.15 * torch.randn(batch, length, generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.05
        y = torch.where(flip, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


@scenario(
    family="morris_side_stick_clash_fp16_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="Control: a GELU Conv1d classifier (conv1, conv2, mean and max pool, head) naming a morris side's stick-clash pattern from 64-sample contact-microphone traces with 5% wrong labels, fp16 autocast with a torch.amp.GradScaler, SGD Nesterov (momentum 0.9) under OneCycleLR (max lr 0.3), label smoothing 0.1, clipping at 1.0 after unscaling. Trains normally.",
)
def h290_morris_clash_fp16_control(ctx: Context) -> None:
    gen = seeded(29012)
    model = StickClashNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _clash_traces(gen, 64),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


def _erosion(gen, batch, d_in=10, seed=2913):
    """Peat-hag erosion depth from standardised readings with Student-t (df 2) noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    student = torch.distributions.StudentT(2.0)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.sin(x @ w / math.sqrt(d_in)) + 0.3 * x[:, 0] * x[:, 1]
        yield x, y + 0.1 * student.sample((batch,))


@scenario(
    family="peat_hag_erosion_depth_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the erosion depth of upland peat hags from 10 standardised readings with heavy-tailed (Student-t) noise, Huber loss (delta 1.0), RAdam at 3e-3, gradient accumulation over 2, clipping at 1.0, ReduceLROnPlateau (factor 0.5, patience 20). Trains normally.",
)
def h290_peat_hag_huber_control(ctx: Context) -> None:
    gen = seeded(29013)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _erosion(gen, 32),
        200,
        F.huber_loss,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
