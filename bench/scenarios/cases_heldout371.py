"""Held-out set 371 (``h371_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a glacier-surge front-velocity tanh regressor with its L2
penalty's sign flipped (a slow climb), a clogger sole-wood grade classifier trained with nll_loss
on raw logits (the head's logits grow without bound), a kubing jaw-harp multi-task net with
uncertainty weighting whose trunk lr key is misspelt and defaults to 0 (frozen trunk), a tingsha
ring-decay SiLU Huber regressor whose resumed step skips the static loss-scale division (one
gradient burst), a lurcher coursing turn-count Poisson net whose rate is a ReLU with no clamp
before the log (log 0), a dan bau pitch-bend GELU regressor fed one shard in cents (one corrupted
batch), a gangsa band-energy Conv1d classifier whose energies overflow fp16 under autocast once a
louder recorder arrives, a bossel roll-distance ReLU regressor whose warm restart multiplies the lr
by 100 (dead ReLUs), a nohkan phrase tanh RNN with its recurrent init gain typed 4 (gradients grow
through time), an orchestrion pin-roll cosine classifier with its scale typed 160 for 16 (softmax
collapse), and three controls (a net-mender multi-task net with the log-variances in their own
group at a small rate, a rindik Conv1d classifier with SGD momentum, warm-up and cosine decay,
label smoothing and clipping, a kinnor string-tension SiLU Huber regressor under fp16 autocast
with a GradScaler, RMSprop, accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


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
    backprop=None,
    unscale=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated (before the division by the accumulation count), ``unscale(step)``
    runs after the backward passes (a hand-written loss scale), ``after(step)`` runs after the
    optimizer step, ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``.
    Stops after a non-finite loss (once ``ctx.step`` has seen it); returns the steps run."""
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
            out = out.float() if isinstance(out, torch.Tensor) else out
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
        if unscale is not None:
            unscale(step)
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
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=48, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


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


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# -- glacier surge: hand-written L2 penalty with its sign flipped (slow climb) ----------------------


@scenario(
    family="glacier_surge_front_velocity_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the front velocity of a surging glacier from ten standardised readings of basal water pressure, slope, melt and till, SGD with momentum 0.9 at 1e-2, MSE on batches of 256, 300 steps. The hand-written L2 penalty is subtracted instead of added (loss - wd * sum of squared weights, wd 0.15): the weights grow over 2x, and the loss falls, then climbs slowly and steadily to over 3x its lowest 20-step mean, with no spike and no NaN.",
)
def h371_glacier_surge_l2_sign(ctx: Context) -> None:
    gen = seeded(37101)
    model = Trunk(10, 64, act=nn.Tanh)
    wd = GLACIER_WD
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    start = float(_flat(model).norm())

    def backprop(step, loss):
        penalty = sum((p**2).sum() for p in model.parameters())
        return loss - wd * penalty  # meant: loss + wd * penalty

    _loop(ctx, model, opt, _readings(gen, 256, 10, 37102), 300, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 20)]
    low = min(means)
    end = float(_flat(model).norm())
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the last 20 steps' loss is over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3.0 * low
    )
    ctx.check("the lowest 20-step mean comes in the first half", means.index(low) < len(means) // 2)
    ctx.check(
        "no step's loss is over 3x the mean of the 10 before it (a slow climb, no spike)",
        all(ls[i] < 3.0 * _mean(ls[i - 10 : i]) for i in range(10, len(ls))),
    )
    ctx.check("the weights' norm grew over 2x", end > 2.0 * start)


GLACIER_WD = 0.15


# -- clogger: nll_loss on raw logits (the head's logits grow without bound) -------------------------


@scenario(
    family="clogger_sole_wood_grade_relu_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) grading the alder or sycamore blanks a clogger carves soles from into six grades from twelve readings of grain, moisture and density, plain SGD at 6e-3, 200 steps. The loss was written F.nll_loss(logits, y) on the raw logits (the log_softmax left out), so it is minus the target logit and has no floor: the head's logits grow without bound, over 20x their starting size, and the logged loss runs far below zero, with no NaN.",
)
def h371_clogger_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(37103)
    model = Trunk(12, 64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=CLOGGER_LR)
    seen = {}

    def watch(step, out, x, y):
        seen.setdefault(step, float(out.detach().abs().max()))

    def loss_fn(out, y):
        return F.nll_loss(out, y)  # meant: F.cross_entropy(out, y)

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 37104),
        200,
        loss_fn,
        classifier=True,
        watch=watch,
    )
    start = _mean([seen[s] for s in range(5)])
    end = _mean([seen[s] for s in range(190, 200)])
    ctx.check("the head's largest logit grew over 20x", end > 20 * start)
    ctx.check(
        "the logits still grow at the end (last 10 steps over 1.2x the 10 steps 30 before)",
        end > 1.2 * _mean([seen[s] for s in range(160, 170)]),
    )
    ctx.check("the logged loss ran below -3", min(ctx.losses) < -3)
    ctx.check("finite throughout", _finite(ctx.losses))


CLOGGER_LR = 6e-3


# -- tingsha: the resumed step skips the static loss-scale division (one gradient burst) ------------

TINGSHA_ONSET = 150
TINGSHA_SCALE = 1024.0


@scenario(
    family="tingsha_cymbal_ring_decay_silu_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting how long a pair of Tibetan tingsha cymbals ring from eight readings of alloy, rim thickness and strike, SGD with Nesterov momentum 0.9 at 2e-2, Huber loss, a hand-written static loss scale of 1024 (loss multiplied before backward, gradients divided after), clipping at 5.0, 260 steps. The run resumes from a checkpoint at step 150 and the restored 'already unscaled' flag is True for that one step, so the division is skipped: the gradient of a clean, ordinary batch is 1024x, the clip absorbs most of it and the loss recovers.",
    onset=TINGSHA_ONSET,
)
def h371_tingsha_resume_skips_unscale(ctx: Context) -> None:
    gen = seeded(37105)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)

    def unscale(step):
        already_unscaled = step == TINGSHA_ONSET  # restored from the checkpoint's state
        if not already_unscaled:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(TINGSHA_SCALE)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 37106),
        260,
        F.huber_loss,
        backprop=lambda step, loss: loss * TINGSHA_SCALE,
        unscale=unscale,
        clip=5.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    k = TINGSHA_ONSET
    ctx.check(
        "the gradient at step 150 is over 50x the median of the 20 before",
        gs[k] > 50 * _median(gs[k - 20 : k]),
    )
    ctx.check(
        "the gradient at step 151 is back under 3x that median",
        gs[k + 1] < 3 * _median(gs[k - 20 : k]),
    )
    ctx.check(
        "the loss at step 150 is ordinary (under 2x the mean of the 20 before)",
        ls[k] < 2 * _mean(ls[k - 20 : k]),
    )
    ctx.check("the loss fell over the run", _fell(ls, ratio=0.6))
    ctx.check("finite throughout", _finite(ls))


# -- dan bau: one shard's pitch bend in cents, not semitones (one corrupted batch) ------------------

DANBAU_ONSET = 120


@scenario(
    family="dan_bau_monochord_pitch_bend_gelu_regressor",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the pitch bend (in semitones) a dan bau player draws from the monochord's flexible rod, from ten readings of rod angle, pluck point and string tension, Adam at 1e-3, MSE, gradients clipped at 1.0, 240 steps. At step 120 one recording session's shard arrives with its targets in cents (100x): the loss is over 20x the steps before and the gradient over 10x, the clipped step recovers and the loss is back within 2x by step 160.",
    onset=DANBAU_ONSET,
)
def h371_dan_bau_cents_shard(ctx: Context) -> None:
    gen = seeded(37107)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == DANBAU_ONSET:
            y = 100.0 * y  # this session's bends were exported in cents
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 37108), 240, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    k = DANBAU_ONSET
    ctx.check(
        "the loss at step 120 is over 20x the mean of the 20 before",
        ls[k] > 20 * _mean(ls[k - 20 : k]),
    )
    ctx.check(
        "the gradient at step 120 is over 10x the median of the 20 before",
        gs[k] > 10 * _median(gs[k - 20 : k]),
    )
    ctx.check(
        "the loss is back within 2x of before by steps 160-180",
        _mean(ls[160:180]) < 2 * _mean(ls[k - 20 : k]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- multi-task nets with uncertainty weighting (learnt log-variances) ------------------------------


class Shared(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()

    def forward(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))


class UncertaintyMultiTask(nn.Module):
    """A shared trunk, a regression head, a 4-way classification head and a binary head; the
    three task losses weighted by learnt log-variances (Kendall et al. 2018):
    sum_i exp(-s_i) L_i + s_i."""

    def __init__(self, d_in=10, hidden=64, classes=4):
        super().__init__()
        self.trunk = Shared(d_in, hidden)
        self.reg_head = nn.Linear(hidden, 1)
        self.cls_head = nn.Linear(hidden, classes)
        self.bin_head = nn.Linear(hidden, 1)
        self.log_vars = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        h = self.trunk(x)
        return self.reg_head(h).squeeze(-1), self.cls_head(h), self.bin_head(h).squeeze(-1)

    def task_losses(self, out, y):
        return (
            F.mse_loss(out[0], y[0]),
            F.cross_entropy(out[1], y[1]),
            F.binary_cross_entropy_with_logits(out[2], y[2]),
        )

    def weighted(self, out, y):
        losses = self.task_losses(out, y)
        return sum(torch.exp(-s) * loss + s for s, loss in zip(self.log_vars, losses, strict=True))


def _three_tasks(gen, batch, d_in, seed, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    protos = torch.randn(4, d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        reg = torch.tanh(x @ w / math.sqrt(d_in)) + noise * torch.randn(batch, generator=gen)
        cls = (x @ protos.T).argmax(-1)
        binary = (x @ v / math.sqrt(d_in) + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield x, (reg, cls, binary)


@scenario(
    family="kubing_jaw_harp_pluck_uncertainty_weighted_multitask_net",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("trunk", "trunk.fc1", "trunk.fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written multi-task net (trunk: fc1, act1, fc2, act2; reg_head for the kubing bamboo jaw harp's drone pitch, cls_head for the player's mouth shape in four classes, bin_head for whether the reed buzzes against the frame) from ten readings of reed, pluck and breath, the task losses (MSE, cross-entropy, BCE) weighted by learnt log-variances (exp(-s) L + s), Adamax with three param groups, 240 steps. The fine-tuning config reads cfg.get('trunk_lr', 0.0) (0 freezes a pretrained trunk) and the run's config spells the key 'trunk_Lr': the trunk's lr is 0, fc1 and fc2 move under 1e-6 of their norm while the heads move over 5% and the log-variances adapt; the loss falls only as far as the heads on a random trunk allow.",
)
def h371_kubing_trunk_lr_key_typo(ctx: Context) -> None:
    gen = seeded(37109)
    model = UncertaintyMultiTask()
    cfg = {"trunk_Lr": 3e-3, "head_lr": 3e-3, "log_var_lr": 1e-3}  # meant: "trunk_lr"
    heads = [p for n, p in model.named_parameters() if n.split(".")[0].endswith("_head")]
    opt = torch.optim.Adamax(
        [
            {"params": model.trunk.parameters(), "lr": cfg.get("trunk_lr", 0.0)},
            {"params": heads, "lr": cfg["head_lr"]},
            {"params": [model.log_vars], "lr": cfg["log_var_lr"]},
        ]
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loop(ctx, model, opt, _three_tasks(gen, 64, 10, 37110), 240, model.weighted)
    now = dict(model.named_parameters())
    for layer in ("trunk.fc1", "trunk.fc2"):
        ctx.check(
            f"{layer} moved under 1e-6 of its norm",
            _rel_change(start[f"{layer}.weight"], now[f"{layer}.weight"]) < 1e-6,
        )
    ctx.check(
        "every head moved over 5% of its norm",
        all(
            _rel_change(start[f"{h}.weight"], now[f"{h}.weight"]) > 0.05
            for h in ("reg_head", "cls_head", "bin_head")
        ),
    )
    ctx.check(
        "the log-variances moved",
        float((now["log_vars"].detach() - start["log_vars"]).abs().max()) > 0.05,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="net_mender_mesh_repair_uncertainty_weighted_multitask_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written multi-task net (trunk: fc1, act1, fc2, act2; reg_head for the minutes a net mender needs per torn mesh, cls_head for the knot in four classes, bin_head for whether the twine must be replaced) from ten readings, the task losses (MSE, cross-entropy, BCE) weighted by learnt log-variances (exp(-s) L + s), AdamW with the trunk and heads at 3e-3 with weight decay 1e-2 and the log-variances in their own group at a small rate 3e-4 without decay, OneCycleLR, clipping at 1.0, 240 steps. A control.",
)
def h371_net_mender_multitask_control(ctx: Context) -> None:
    gen = seeded(37111)
    model = UncertaintyMultiTask()
    rest = [p for n, p in model.named_parameters() if n != "log_vars"]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 3e-3, "weight_decay": 1e-2},
            {"params": [model.log_vars], "lr": 3e-4, "weight_decay": 0.0},
        ]
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[3e-3, 3e-4], total_steps=240)
    tasks = {}

    def watch(step, out, x, y):
        tasks[step] = [float(v.detach()) for v in model.task_losses(out, y)]

    _loop(
        ctx,
        model,
        opt,
        _three_tasks(gen, 64, 10, 37112),
        240,
        model.weighted,
        watch=watch,
        sched=sched,
        clip=1.0,
    )
    for i, name in enumerate(("regression", "classification", "binary")):
        first = _mean([tasks[s][i] for s in range(10)])
        last = _mean([tasks[s][i] for s in range(230, 240)])
        ctx.check(f"the {name} loss fell", last < 0.8 * first)
    ctx.check("the log-variances are finite", bool(model.log_vars.detach().isfinite().all()))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- lurcher: a ReLU rate with no clamp before the log (log 0) --------------------------------------


class CountNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head -> rate: a Poisson rate whose positivity is a ReLU."""

    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        self.rate = nn.ReLU()  # meant: softplus, or a clamp before the log
        nn.init.constant_(self.head.bias, 3.0)

    def forward(self, x):
        return self.rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _counts(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(LURCHER_MU + LURCHER_SPAN * torch.tanh(x @ w / math.sqrt(d_in)))
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()  # no clamp: log 0 when a rate reaches 0


LURCHER_DIV = 86


@scenario(
    family="lurcher_coursing_turn_count_relu_poisson_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("rate", "head"),
    diverges=LURCHER_DIV,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head, rate) predicting how many turns a lurcher forces on a hare in a coursing run from eight readings of ground, wind and the dog's form, trained as a Poisson count model with a hand-written NLL (rate - y log rate), RMSprop at 2e-4, 200 steps planned. The rate's positivity is a ReLU (meant softplus, or a clamp before the log) and the head's bias starts at 3 so every rate starts above 1; as the low-count runs pull their rates down, one rate reaches exactly 0 for a run with turns, log 0 makes the loss non-finite at step 86.",
)
def h371_lurcher_relu_rate_log_zero(ctx: Context) -> None:
    gen = seeded(37113)
    model = CountNet(8)
    opt = torch.optim.RMSprop(model.parameters(), lr=LURCHER_LR)
    seen = {}

    def watch(step, out, x, y):
        seen["zero_with_count"] = bool(((out.detach() == 0) & (y > 0)).any())
        seen.setdefault("first_min", float(out.detach().min()))

    _loop(ctx, model, opt, _counts(gen, 64, 8, 37114), 200, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(f"the loss is first non-finite at step {LURCHER_DIV}", bad == LURCHER_DIV)
    ctx.check(
        "at that step a rate is exactly 0 for a sample with a count above 0",
        bad is not None and seen["zero_with_count"],
    )
    ctx.check(
        "every rate is above 1 at step 0 (the bias init holds them off 0)", seen["first_min"] > 1.0
    )


LURCHER_LR = 2e-4
LURCHER_MU = 0.0
LURCHER_SPAN = 2.5


# -- gangsa: band energies overflow fp16 under autocast once a louder recorder arrives --------------


class BandEnergy(nn.Module):
    """Sum of squares over time of each band (computed in the dtype of the filter bank)."""

    def forward(self, h):
        return h.pow(2).sum(-1)


class EnergyNet(nn.Module):
    def __init__(self, classes, bands=8):
        super().__init__()
        self.filt = nn.Conv1d(1, bands, 15, padding=7)
        self.energy = BandEnergy()
        self.fc1 = nn.Linear(bands, 32)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.act1(self.fc1(torch.log1p(self.energy(self.filt(x))))))


GANGSA_ONSET = 120
GANGSA_GAIN = 31.6  # +30 dB


@scenario(
    family="gangsa_metallophone_key_band_energy_fp16_classifier",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("energy",),
    diverges=GANGSA_ONSET,
    heldout=True,
    note="A hand-written band-energy classifier (filt: a Conv1d filter bank of 16 bands, energy: sum of squares over 512 samples, log1p, fc1, act1, head) telling which of five keys of a Balinese gangsa metallophone was struck, AdamW at 1e-2, cross-entropy, fp16 autocast with a torch.amp.GradScaler, 200 steps planned. From step 120 the recordings come from a new recorder set 30 dB hotter: in float32 the log energies would only shift, but the filter bank's output is fp16 under autocast and the band energies pass 65504, overflow to inf in energy, and the loss is non-finite at step 120.",
    onset=GANGSA_ONSET,
)
def h371_gangsa_fp16_band_energy(ctx: Context) -> None:
    gen = seeded(37115)
    model = EnergyNet(5, bands=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    seen = {}

    def alter(step, x, y):
        if step >= GANGSA_ONSET:
            x = GANGSA_GAIN * x
        seen["x"], seen["y"] = x, y
        return x, y

    def watch(step, out, x, y):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
            e = model.energy(model.filt(x))
        seen[step] = (e.dtype, float(e.float().max()), bool(torch.isinf(e).any()))

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 37116, length=512, channels=1),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        watch=watch,
        scaler=scaler,
        amp=True,
    )
    bad = _first_bad(ctx.losses)
    k = GANGSA_ONSET
    ctx.check(f"the loss is first non-finite at step {k}", bad == k)
    ctx.check("the band energies are fp16 under autocast", seen[0][0] == torch.float16)
    ctx.check(
        "before the onset the largest band energy is under 65504/100",
        max(seen[s][1] for s in range(k)) < 655.04,
    )
    ctx.check("at the onset a band energy is inf", bad is not None and seen[bad][2])
    with torch.no_grad():
        ref = F.cross_entropy(model(seen["x"]), seen["y"])  # no autocast: float32
    ctx.check("the same batch in float32 gives a finite loss", bool(torch.isfinite(ref)))
    ctx.check("the loss fell before the onset", _fell(ctx.losses[:k], ratio=0.7))


# -- bossel: a warm restart with its multiplier typed 100 (dead ReLUs) ------------------------------

BOSSEL_ONSET = 120
BOSSEL_RESTART = 100.0  # meant: 1.0


@scenario(
    family="bossel_road_bowling_roll_distance_relu_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting how far a Frisian bossel ball rolls along a country road from ten readings of throw, camber and surface, NAdam at 2e-3, MSE, 260 steps. At step 120 a warm restart sets the lr to base x restart_mult, typed 100 for 1.0, decaying (cosine) back to base over 40 steps: over 60% of act2's units go dead and stay dead to the end, and the loss stays well above its level before the restart.",
    onset=BOSSEL_ONSET,
)
def h371_bossel_restart_multiplier(ctx: Context) -> None:
    gen = seeded(37117)
    model = Trunk(10, 64)
    base = 2e-3
    opt = torch.optim.NAdam(model.parameters(), lr=base)
    dead = {}

    def before(step):
        if BOSSEL_ONSET <= step < BOSSEL_ONSET + 40:
            t = (step - BOSSEL_ONSET) / 40
            peak = base * BOSSEL_RESTART
            lr = base + (peak - base) * 0.5 * (1 + math.cos(math.pi * t))
        else:
            lr = base
        for g in opt.param_groups:
            g["lr"] = lr

    def watch(step, out, x, y):
        with torch.no_grad():
            dead[step] = _dead(model.features(x))

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 37118), 260, F.mse_loss, before=before, watch=watch
    )
    k = BOSSEL_ONSET
    ls = ctx.losses
    ctx.check("under 20% of act2's units are dead before the restart", dead[k - 1] < 0.2)
    ctx.check(
        "over 60% of act2's units are dead through the last 50 steps",
        min(dead[s] for s in range(210, 260)) > 0.6,
    )
    ctx.check(
        "the last 40 steps' loss is over 2x the 20 steps before the restart",
        _mean(ls[-40:]) > 2 * _mean(ls[k - 20 : k]),
    )
    ctx.check("the loss fell before the restart", _fell(ls[:k], ratio=0.5))
    ctx.check("finite throughout", _finite(ls))


# -- nohkan: recurrent init gain typed 4 (gradients grow through time) ------------------------------


class PhraseRNN(nn.Module):
    """A hand-written Elman RNN: h_t = tanh(inp(x_t) + rec(h_{t-1})), head on the last state."""

    def __init__(self, d_in=2, hidden=48, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)

    def states(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        hs = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            hs.append(h)
        return hs

    def forward(self, x):
        return self.head(self.states(x)[-1]).squeeze(-1)


def _breaths(gen, batch, seed, length=30):
    """Breath-pressure traces (pressure, embouchure); the target is set by the phrase's opening."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, generator=g)
    while True:
        x = 0.5 * torch.randn(batch, length, 2, generator=gen)
        y = torch.tanh(x[:, :5] @ w).mean(1) + 0.3 * x[:, -5:, 0].mean(1)
        yield x, y


def _through_time(model, x, y) -> float:
    """||dL/dh_0|| / ||dL/dh_{T-1}||: how much the gradient grows back through time."""
    hs = model.states(x)
    for h in hs:
        h.retain_grad()
    F.mse_loss(model.head(hs[-1]).squeeze(-1), y).backward()
    ratio = float(hs[0].grad.norm() / hs[-1].grad.norm().clamp_min(1e-30))
    model.zero_grad(set_to_none=True)
    return ratio


@scenario(
    family="nohkan_flute_phrase_breath_tanh_rnn",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (inp, rec, head) reading 30 steps of breath pressure and embouchure from a Noh theatre's nohkan flute and predicting a phrase quality set by the phrase's opening, Adagrad at 1e-2, MSE, 160 steps. The recurrent weight's orthogonal init gain is typed 4.0 for 1.0: the gradient at the first hidden state is over 20x that at the last at the start, and stays over 10x through the run.",
)
def h371_nohkan_recurrent_gain(ctx: Context) -> None:
    gen = seeded(37119)
    model = PhraseRNN(gain=NOHKAN_GAIN)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    probe = next(_breaths(torch.Generator().manual_seed(5), 128, 37120))
    ratios = {}

    def before(step):
        if step % 20 == 0:
            ratios[step] = _through_time(model, *probe)

    _loop(ctx, model, opt, _breaths(gen, 64, 37120), 160, F.mse_loss, before=before)
    ctx.check("at the start the gradient at h_0 is over 20x that at h_29", ratios[0] > 20)
    ctx.check(
        "the median of that ratio through the run is over 10x", _median(list(ratios.values())) > 10
    )
    ctx.check("finite throughout", _finite(ctx.losses))


NOHKAN_GAIN = 4.0


# -- orchestrion: a cosine classifier's scale typed 160 for 16 (softmax collapse) -------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, f):
        return self.scale * F.normalize(f, dim=-1) @ F.normalize(self.weight, dim=-1).T


ORCHESTRION_SCALE = 160.0  # meant: 16.0


@scenario(
    family="orchestrion_pin_roll_tune_cosine_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2) with a cosine classifier head (head: scale x cos(feature, class weight)) telling which of eight tunes an orchestrion's pinned barrel plays from twelve readings of the pin pattern, RAdam at 2e-3, cross-entropy, 200 steps. The cosine scale is typed 160 for 16: as the features align with their class weights, over half the rows' target probability rounds to exactly 1.0 in float32 late in the run, against under a fifth at the start.",
)
def h371_orchestrion_cosine_scale(ctx: Context) -> None:
    gen = seeded(37121)
    model = Trunk(12, 64, act=nn.GELU)
    model.head = CosineHead(64, 8, ORCHESTRION_SCALE)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    collapsed = {}

    def watch(step, out, x, y):
        collapsed[step] = collapsed_fraction(out.detach(), y)

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 8, 37122, spread=0.6),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under a fifth of the rows are collapsed at step 0", collapsed[0] < 0.2)
    ctx.check(
        "over half the rows are collapsed over the last 20 steps",
        _mean([collapsed[s] for s in range(180, 200)]) > 0.5,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


class StrikeConv(nn.Module):
    def __init__(self, channels=2, width=32, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 9, padding=4)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


@scenario(
    family="rindik_bamboo_key_strike_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, pool, head) telling which of six bamboo keys of a Balinese rindik was struck from two-channel contact-microphone traces, SGD with momentum 0.9 at 0.1 under linear warm-up over 20 steps then cosine decay, cross-entropy with label smoothing 0.1, clipping at 1.0, 200 steps. A control.",
)
def h371_rindik_conv1d_control(ctx: Context) -> None:
    gen = seeded(37123)
    model = StrikeConv()
    opt = torch.optim.SGD(model.parameters(), lr=RINDIK_LR, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / 180)),
    )
    acc = {}

    def watch(step, out, x, y):
        acc[step] = float((out.argmax(-1) == y).float().mean())

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 6, 37124),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        watch=watch,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check(
        "the last 20 batches' accuracy is over 0.8", _mean([acc[s] for s in range(180, 200)]) > 0.8
    )
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="kinnor_lyre_string_tension_fp16_silu_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the string tension of a kinnor (a biblical lyre reconstruction) from ten readings of gauge, length and pitch, noisy targets, RMSprop at 1e-3, Huber loss, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, clipping at 1.0, ReduceLROnPlateau on a held-out batch, 200 steps. A control.",
)
def h371_kinnor_fp16_control(ctx: Context) -> None:
    gen = seeded(37125)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    held = next(_readings(torch.Generator().manual_seed(7), 256, 10, 37126, noise=0.2))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 37126, noise=0.2),
        200,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check(
        "the loss scale stayed finite and above 1",
        all(math.isfinite(s) and s > 1 for s in ctx.scales),
    )


RINDIK_LR = 0.1
