"""Held-out set 344 (``h344_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a diamond-cutting facet-grade cosine classifier whose CLIP-style
logit scale is initialised to 1/0.07 and then exponentiated (softmax saturates), a strongman
tyre-flip rep-outcome ReLU classifier whose SGD-momentum lr is typed 0.5 for 0.05 (ReLUs die), a
bamboo-flute embouchure-pitch Huber regressor whose epoch-tail batch goes through a criterion
built with reduction='sum' (one gradient burst), a contact-juggling ball-roll fp16 regressor whose
GradScaler growth_interval is typed 1 for 2000 (scaled gradients overflow fp16, steps skipped), a
wattle-fence hurdle-weave two-group regressor whose encoder lr multiplier is typed 1e-4 for 1e-1
(encoder barely moves), a hair-ice filament-length deep ReLU MLP initialised with gain 3 instead
of sqrt(2) (gradients grow through depth), a butter-sculpture slump BCE tagger fed one batch whose
missing-value sentinel -999 was not masked (one corrupted batch), a pumpkin-carving wall
breakthrough classifier with a hand-written BCE that has no clamp (0 * log 0, NaN), a rogue-wave
crest-height tanh regressor whose OneCycleLR max_lr is typed 2.0 for 0.2 (past 2/sharpness), a
sauna-endurance heart-rate regressor whose L2 penalty is subtracted (slow climb), and three
controls (a watch-repair dial-numeral depthwise-separable hard-swish/ReLU6 CNN with SGD momentum,
weight decay 5e-4 and a step schedule; a ferret-legging bout-outcome GRU classifier with Adagrad,
label smoothing, warm-up + cosine and clipping; a sword-swallowing breath-hold Gaussian-NLL
regressor under fp16 autocast with a GradScaler, accumulation and ReduceLROnPlateau).

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
    digit_batches,
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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


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
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, out, y, loss)``
    returns the loss actually backpropagated, ``after(step)`` runs after the optimizer step,
    ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``. Stops after a
    non-finite loss (once ``ctx.step`` has seen it); returns the number of steps run."""
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
            total = backprop(step, out, y, loss) if backprop is not None else loss
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


# -- diamond cutting: the CLIP-style logit scale is initialised to 1/0.07, then exponentiated -----


class CosineHead(nn.Module):
    """Cosine-similarity head with a learnable log logit scale (CLIP's convention)."""

    def __init__(self, dim, classes, log_scale_init):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(log_scale_init)))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.logit_scale.exp() * cos


class FacetGrader(nn.Module):
    """A GELU trunk grading a cut diamond's facet symmetry (five grades) from sixteen
    gauge readings (crown angle, pavilion depth, table ratio, ...), through a cosine head."""

    def __init__(self, log_scale_init):
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 32)
        self.head = CosineHead(32, 5, log_scale_init)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="diamond_cutting_facet_grade_cosine_logit_scale_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2) with a cosine-similarity head (head: normalised features times normalised class weights, times exp(logit_scale)) grading a cut diamond's facet symmetry into five grades from sixteen standardised gauge readings, Adam at 2e-3, cross-entropy, 150 steps. The head keeps CLIP's convention of storing the log of the logit scale, but the init was written nn.Parameter(torch.tensor(1 / 0.07)) instead of log(1 / 0.07): exp(14.29) makes the scale about 1.6e6, so every cosine reaches the softmax a million times too large; as the grader learns, for most rows the target's float32 probability rounds to exactly 1.0 and the rest are confidently wrong, while the loss stays finite.",
)
def h344_diamond_facet_logit_scale_init(ctx: Context) -> None:
    gen = seeded(34401)
    model = FacetGrader(log_scale_init=1 / 0.07)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    collapsed, peaks = [], []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        peaks.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 344, spread=0.9),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 40% of rows collapsed at step 0", collapsed[0] < 0.4)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("the largest logit is over 1e4 late in the run", _mean(peaks[-20:]) > 1e4)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- strongman tyre flip: SGD-momentum lr typed 0.5 for 0.05, the ReLUs die -----------------------


@scenario(
    family="tyre_flip_strongman_rep_outcome_relu_classifier",
    optimizer="SGD momentum",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying a strongman tyre-flip rep into four outcomes (clean, lap-stall, push-stall, drop) from twelve standardised grip and hip sensor readings, SGD with momentum 0.9, cross-entropy, 200 steps. The config's lr was typed 0.5 for 0.05: the oversized momentum steps throw fc2's pre-activations negative for every input, act2's units die one after another over the first hundred steps (about half by step 20, nearly all by step 100), they never fire again, and the loss sits at chance (ln 4) while the run stays finite.",
)
def h344_tyre_flip_sgd_lr_typo(ctx: Context) -> None:
    gen = seeded(34402)
    model = Trunk(12, 64, out=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(x)))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 4, 3442, spread=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 20% of act2's units dead at step 0", dead[0] < 0.2)
    ctx.check("over half of act2's units dead over the last 50 steps", _mean(dead[-50:]) > 0.5)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check(
        "the loss over the last 20 steps is above 0.8 x ln 4",
        _mean(ctx.losses[-20:]) > 0.8 * math.log(4),
    )


# -- bamboo flute: the epoch-tail batch goes through a criterion built with reduction='sum' -------

EPOCH_BF = 140  # batches per epoch of the embouchure recordings


@scenario(
    family="bamboo_flute_embouchure_pitch_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=EPOCH_BF - 1,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a bamboo flute's pitch deviation in cents (standardised) from fourteen embouchure readings (lip aperture, jet angle, breath pressure, ...), SGD with Nesterov momentum 0.9 at 0.02, Huber loss, batches of 96, 220 steps (one epoch is 140 batches). The loop handles the last batch of an epoch in a separate branch written for a drop_last=False remainder, and that branch builds its criterion as nn.HuberLoss(reduction='sum'): at step 139, an ordinary batch, the backpropagated loss is the sum over 96 rows instead of the mean, one gradient 96x too large; the next epoch is back on the mean and the run recovers.",
)
def h344_bamboo_flute_epoch_tail_sum_reduction(ctx: Context) -> None:
    gen = seeded(34403)
    model = Trunk(14, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    mean_loss = nn.HuberLoss()
    tail_loss = nn.HuberLoss(reduction="sum")

    def backprop(step, out, y, loss):
        if (step + 1) % EPOCH_BF == 0:
            return tail_loss(out, y)
        return mean_loss(out, y)

    _loop(ctx, model, opt, _readings(gen, 96, 14, 3443), 220, F.huber_loss, backprop=backprop)
    g = ctx.grad_norms
    base = _median(g[EPOCH_BF - 40 : EPOCH_BF - 1])
    ctx.check(
        "the gradient at step 139 is over 50x the median of the 39 before", g[139] > 50 * base
    )
    ctx.check(
        "no other step's gradient is over 10x that median",
        max(g[:139] + g[140:]) < 10 * base,
    )
    before = _mean(ctx.losses[EPOCH_BF - 20 : EPOCH_BF - 1])
    ctx.check(
        "the loss over the last 20 steps is under 1.5x its level before the burst",
        _mean(ctx.losses[-20:]) < 1.5 * before,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- contact juggling: GradScaler growth_interval typed 1 for 2000 --------------------------------


def _rolls(gen, batch, seed):
    """Twelve standardised readings of a crystal-ball roll; the roll's dwell time, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="contact_juggling_ball_roll_fp16_scaler_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=(),
    diverges=None,
    heldout=True,
    onset=3,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting how long a contact juggler's crystal ball dwells on the back of the hand (standardised) from twelve readings of the roll, AdamW at 2e-3, fp16 autocast with a torch.amp.GradScaler, MSE, 200 steps. The config's scaler section was typed growth_interval=1 (meant 2000): the loss scale doubles after every clean step, so by step 3 (scale 2^19) the scaled fp16 gradients overflow to inf; from then on the scaler keeps halving and doubling, every overflowing step is skipped and about half the run's optimizer steps are thrown away, while the forward and the loss stay finite.",
)
def h344_contact_juggling_scaler_growth_interval(ctx: Context) -> None:
    gen = seeded(34404)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1)
    _loop(ctx, model, opt, _rolls(gen, 64, 3444), 200, F.mse_loss, scaler=scaler, amp=True)
    sc = ctx.scales
    backoffs = sum(1 for a, b in zip(sc[:-1], sc[1:], strict=False) if b < a)
    ctx.check("the scaler backed off (an inf gradient, step skipped) over 60 times", backoffs > 60)
    first = next(
        (i + 1 for i, (a, b) in enumerate(zip(sc[:-1], sc[1:], strict=False)) if b < a), None
    )
    ctx.check("the first overflow (back-off) is at step 3", first == 3)
    ctx.check("the scale passed 2^20 at some step", max(sc) > 2.0**20)
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- wattle fence: the encoder's lr multiplier is typed 1e-4 for 1e-1 -----------------------------


@scenario(
    family="wattle_fence_hurdle_weave_two_group_silu_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a woven hazel hurdle's panel stiffness (standardised) from ten readings of the rods and weave, NAdam with two parameter groups, MSE, 200 steps. The encoder group (fc1, fc2) is meant to train at lr x 0.1 (a layer-wise decay), but the multiplier was typed 1e-4: the encoder trains at 2e-7 while the head trains at 2e-3, so fc1 and fc2 barely move (their update ratio is four orders below the head's) and the loss falls only as far as a linear read-out of the near-random features allows; nothing blows up.",
)
def h344_wattle_fence_encoder_lr_mult_typo(ctx: Context) -> None:
    gen = seeded(34405)
    model = Trunk(10, 64, act=nn.SiLU)
    cfg = {"lr": 2e-3, "encoder_lr_mult": 1e-4}
    encoder = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.NAdam(
        [
            {"params": encoder, "lr": cfg["lr"] * cfg["encoder_lr_mult"]},
            {"params": model.head.parameters(), "lr": cfg["lr"]},
        ]
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    _loop(ctx, model, opt, _readings(gen, 64, 10, 3445), 200, F.mse_loss)
    ctx.check(
        "fc1 and fc2 moved under 1e-3 of their norm over the run",
        max(_rel_change(w1, model.fc1.weight), _rel_change(w2, model.fc2.weight)) < 1e-3,
    )
    ctx.check("the head moved over 10% of its norm", _rel_change(wh, model.head.weight) > 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- hair ice: a deep ReLU stack initialised with gain 3 instead of sqrt(2) -----------------------


RELU_GAIN = math.sqrt(2.0)


class FilamentNet(nn.Module):
    """Ten Linear/ReLU layers (layers.0, layers.2, ...) and a linear read-out."""

    def __init__(self, d_in=8, width=48, depth=10, gain=RELU_GAIN):
        super().__init__()
        mods = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
            mods += [lin, nn.ReLU()]
        self.layers = nn.Sequential(*mods)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.layers(x)).squeeze(-1)


@scenario(
    family="hair_ice_filament_length_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="A hand-written ten-layer ReLU MLP (layers.0 ... layers.18 Linear, head) predicting the filament length of hair ice on a rotting branch (standardised) from eight readings (air temperature, humidity, wood moisture, fungal cover, ...), plain SGD at 1e-3, MSE, 150 steps planned. The init loop draws every hidden weight from N(0, gain^2 / fan_in) with the gain typed 3.0 (meant sqrt(2) for ReLU): each layer multiplies the signal by about 2.1 in the forward and the gradient by about 2.1 in the backward, so the gradient reaching layers.0's output is hundreds of times the one at the last hidden layer; the output is hundreds of times the target's scale (loss about 5e5 at init), the first SGD step overshoots and the loss is inf at step 1.",
)
def h344_hair_ice_init_gain_typo(ctx: Context) -> None:
    gen = seeded(34406)
    model = FilamentNet(gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 8, 3446)
    x0, y0 = next(batches)
    acts = {}

    def keep(name):
        def hook(mod, inp, out):
            out.retain_grad()
            acts[name] = out

        return hook

    h1 = model.layers[0].register_forward_hook(keep("first"))
    h2 = model.layers[18].register_forward_hook(keep("last"))
    F.mse_loss(model(x0), y0).backward()
    h1.remove()
    h2.remove()
    ratio = float(acts["first"].grad.norm() / acts["last"].grad.norm().clamp_min(1e-30))
    model.zero_grad(set_to_none=True)
    _loop(ctx, model, opt, batches, 150, F.mse_loss)
    ctx.check(
        "at init the gradient at layers.0's output is over 100x that at the last hidden layer's",
        ratio > 100.0,
    )
    bad = _first_bad(ctx.losses)
    ctx.check(
        "the loss turns non-finite or grows over 1e6x its first value",
        bad is not None or max(ctx.losses) > 1e6 * ctx.losses[0],
    )


# -- butter sculpture: one batch whose missing-value sentinel -999 was not masked -----------------

ONSET_BS = 110


def _slump_tags(gen, batch, seed):
    """Sixteen standardised chiller/room readings; four slump tags (multi-label, 0/1)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 4, generator=g)
    while True:
        x = torch.randn(batch, 16, generator=gen)
        logits = 1.5 * x @ w / math.sqrt(16) + 0.3 * torch.randn(batch, 4, generator=gen)
        yield x, (logits > 0).float()


@scenario(
    family="butter_sculpture_slump_sentinel_bce_tagger",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BS,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) tagging a butter sculpture at a show with four slump risks (sagging limbs, sweating surface, cracking base, detail loss) from sixteen standardised chiller and room readings, plain SGD at 0.3, BCE with logits, 200 steps. The chiller logger writes -999 when a probe drops out and the loader's mask for that code was dropped in a refactor: in one shard (step 110) six of the 64 rows carry -999 in two probe columns, inputs hundreds of times their scale, and that batch's gradient is far over 50x the usual; the next shards are clean and the run recovers.",
)
def h344_butter_sculpture_unmasked_sentinel(ctx: Context) -> None:
    gen = seeded(34407)
    model = Trunk(16, 64, out=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)

    def alter(step, x, y):
        if step == ONSET_BS:
            x = x.clone()
            x[:6, 3] = -999.0
            x[:6, 7] = -999.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _slump_tags(gen, 64, 3447),
        200,
        F.binary_cross_entropy_with_logits,
        alter=alter,
    )
    g = ctx.grad_norms
    base = _median(g[ONSET_BS - 40 : ONSET_BS])
    ctx.check(
        "the gradient at step 110 is over 50x the median of the 40 before", g[110] > 50 * base
    )
    before = _mean(ctx.losses[ONSET_BS - 20 : ONSET_BS])
    ctx.check(
        "the loss over the last 20 steps is under 1.5x its level before the bad shard",
        _mean(ctx.losses[-20:]) < 1.5 * before,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pumpkin carving: a hand-written BCE with no clamp, 0 * log 0 ---------------------------------


class Breakthrough(nn.Module):
    """A ReLU MLP (fc1, act1, fc2, act2, head) and a sigmoid (prob): the chance a carving
    tool breaks through the pumpkin wall."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 48)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(48, 1)
        self.prob = nn.Sigmoid()

    def forward(self, x):
        return self.prob(self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1))


def _walls(gen, batch, seed):
    """Ten standardised readings (wall thickness, gouge angle, rind firmness, ...); a clean
    separable break-through label."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        yield x, (x @ w > 0).float()


def _handwritten_bce(p, y):
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


DIV_PC = 127


@scenario(
    family="pumpkin_carving_wall_breakthrough_unclamped_bce_classifier",
    optimizer="Adamax",
    cause="nonfinite",
    where=("prob",),
    diverges=DIV_PC,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) with a sigmoid module (prob) giving the chance that a carving gouge breaks through a pumpkin's wall from ten standardised readings, Adamax at 3e-3, 300 steps planned. The loss is a hand-written BCE, -(y log p + (1 - y) log(1 - p)), ported without the clamp of p to [eps, 1 - eps]: the task is cleanly separable, the logits grow as the classifier grows confident, and once a positive row's logit passes about 17 its float32 sigmoid rounds to exactly 1.0, so (1 - y) * log(1 - p) is 0 * (-inf) = NaN and the loss is NaN at that step (step 127); the run stops there.",
)
def h344_pumpkin_carving_unclamped_bce(ctx: Context) -> None:
    gen = seeded(34408)
    model = Breakthrough()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    saturated = []

    def watch(step, out, x, y):
        saturated.append(bool(((out.detach() == 1.0) | (out.detach() == 0.0)).any()))

    n = _loop(ctx, model, opt, _walls(gen, 64, 3448), 300, _handwritten_bce, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(
        "the loss is NaN at the step the run stops, and finite before",
        bad == n - 1 and math.isnan(ctx.losses[-1]),
    )
    ctx.check("a probability is exactly 0 or 1 at that step", saturated[-1])
    ctx.check("no probability was exactly 0 or 1 in the first 20 steps", not any(saturated[:20]))


# -- rogue wave: OneCycleLR max_lr typed 2.0 for 0.2 ----------------------------------------------


def _top_eig(model, batch, iters=12):
    """Top Hessian eigenvalue of the MSE on ``batch`` by power iteration (Hessian-vector products)."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return lam


ONSET_RW = 22  # the first probed step where lr x top eigenvalue is over 2


@scenario(
    family="rogue_wave_crest_height_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_RW,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) forecasting a rogue wave's crest height (standardised) from eight buoy readings (significant wave height, steepness, spectral width, ...), plain SGD, MSE, batches of 128, 300 steps planned under OneCycleLR (30% warm-up, no momentum cycling). The schedule's max_lr was typed 2.0 for 0.2: the loss falls while the warm-up is low, but the top Hessian eigenvalue of the loss stays near 5.5-6, so lr x sharpness passes 2 at about step 22 (lr 0.36); from there SGD oscillates along the sharpest direction, the loss starts climbing at step 35 and the run is inf by step 55, long before the peak lr.",
)
def h344_rogue_wave_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(34409)
    model = Trunk(8, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    total = 300
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2.0, total_steps=total, pct_start=0.3, cycle_momentum=False
    )
    batches = _readings(gen, 128, 8, 3449)
    probe = next(batches)
    sharp = []

    def before(step):
        if step % 2 == 0:
            lam = _top_eig(model, probe)
            sharp.append((step, lam, opt.param_groups[0]["lr"]))

    _loop(ctx, model, opt, batches, total, F.mse_loss, before=before, sched=sched)
    ctx.sharp = sharp
    cross = next((s for s, lam, lr in sharp if lr * lam > 2.0), None)
    ctx.check("lr x top Hessian eigenvalue passes 2 during the warm-up", cross is not None)
    bad = _first_bad(ctx.losses)
    lo = min(v for v in ctx.losses if math.isfinite(v))
    ctx.check(
        "after the crossing the loss turns non-finite or climbs over 100x its minimum",
        cross is not None and (bad is not None or max(ctx.losses[cross:]) > 100 * lo),
    )


# -- sauna endurance: the L2 penalty is subtracted instead of added -------------------------------


@scenario(
    family="sauna_endurance_heart_rate_l2_sign_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a sauna-endurance competitor's heart rate after each round (standardised) from twelve readings (room temperature, humidity, round, resting rate, ...), RMSprop at 1e-3, MSE, 300 steps. The L2 penalty was ported from a reward-maximising codebase where the objective is maximised, and the total loss is written mse - wd * sum(w^2) with that codebase's coefficient 0.3: the penalty pushes every weight outwards, the weights inflate steadily, and after the fit bottoms out near step 30 the loss climbs slowly and steadily to several times its minimum; nothing turns non-finite within the run.",
)
def h344_sauna_endurance_l2_sign_flip(ctx: Context) -> None:
    gen = seeded(34410)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    wd = 0.3
    w0 = float(sum(p.detach().pow(2).sum() for p in model.parameters()).sqrt())

    def backprop(step, out, y, loss):
        l2 = sum(p.pow(2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - wd * l2

    _loop(ctx, model, opt, _readings(gen, 64, 12, 34410), 300, F.mse_loss, backprop=backprop)
    w1 = float(sum(p.detach().pow(2).sum() for p in model.parameters()).sqrt())
    windows = [_mean(ctx.losses[i : i + 20]) for i in range(0, len(ctx.losses) - 19, 10)]
    low = min(range(len(windows)), key=windows.__getitem__)
    ctx.check("the weight norm grew over 2x", w1 > 2 * w0)
    ctx.check(
        "the last 20 steps' mean loss is over 3x the lowest 20-step mean",
        windows[-1] > 3 * windows[low],
    )
    ctx.check(
        "the 20-step means rise over most windows after the lowest one",
        sum(b > a for a, b in zip(windows[low:-1], windows[low + 1 :], strict=False))
        > 0.6 * (len(windows) - 1 - low),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- watch repair (control): depthwise-separable hard-swish / ReLU6 CNN, SGD momentum, step lr ----


class DialReader(nn.Module):
    """A MobileNet-style CNN reading a dial numeral (8x8 digits): a 3x3 stem, two depthwise
    separable blocks (depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + hard-swish), pooled head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.stem_act = nn.Hardswish()
        self.dw1 = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.dw1_bn = nn.BatchNorm2d(16)
        self.dw1_act = nn.ReLU6()
        self.pw1 = nn.Conv2d(16, 32, 1, bias=False)
        self.pw1_bn = nn.BatchNorm2d(32)
        self.pw1_act = nn.Hardswish()
        self.dw2 = nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=False)
        self.dw2_bn = nn.BatchNorm2d(32)
        self.dw2_act = nn.ReLU6()
        self.pw2 = nn.Conv2d(32, 64, 1, bias=False)
        self.pw2_bn = nn.BatchNorm2d(64)
        self.pw2_act = nn.Hardswish()
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = x.reshape(-1, 1, 8, 8)
        x = self.stem_act(self.stem_bn(self.stem(x)))
        x = self.dw1_act(self.dw1_bn(self.dw1(x)))
        x = self.pw1_act(self.pw1_bn(self.pw1(x)))
        x = self.dw2_act(self.dw2_bn(self.dw2(x)))
        x = self.pw2_act(self.pw2_bn(self.pw2(x)))
        return self.head(x.mean((2, 3)))


@scenario(
    family="watch_repair_dial_numeral_dwsep_hardswish_cnn",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written MobileNet-style CNN (stem conv + BN + hard-swish, two depthwise-separable blocks of depthwise 3x3 + BN + ReLU6 and pointwise 1x1 + BN + hard-swish, global pooling, linear head) reading the numeral on a watch dial under repair (scikit-learn's 8x8 digits), SGD with momentum 0.9 at 0.05 and weight decay 5e-4, StepLR dividing the lr by 10 every 60 steps, cross-entropy, batches of 64, 150 steps: the classic ImageNet recipe, scaled down.",
)
def h344_watch_repair_dwsep_cnn_control(ctx: Context) -> None:
    gen = seeded(34411)
    model = DialReader()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.1)
    correct = []

    def watch(step, out, x, y):
        correct.append(float((out.argmax(1) == y).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        sched=sched,
    )
    ctx.check("the loss fell to under 40% of its start", _fell(ctx.losses, ratio=0.4))
    ctx.check("training accuracy over the last 20 steps is over 85%", _mean(correct[-20:]) > 0.85)


# -- ferret legging (control): GRU classifier, Adagrad, label smoothing, warm-up + cosine, clip ---


class BoutReader(nn.Module):
    """A GRU over per-minute vitals of a ferret-legging bout, classifying its outcome."""

    def __init__(self, d_in=5, hidden=32, classes=3):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def _bouts(gen, batch, seed, length=20):
    """Per-minute vitals (five standardised channels); outcome from each class's drift pattern."""
    g = torch.Generator().manual_seed(seed)
    drift = 0.04 * torch.randn(3, 5, generator=g)
    t = torch.arange(length, dtype=torch.float32)[None, :, None]
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        x = drift[y][:, None, :] * t + torch.randn(batch, length, 5, generator=gen)
        yield x, y


@scenario(
    family="ferret_legging_bout_outcome_gru_classifier",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written GRU (gru, head) reading twenty minutes of five standardised vitals from a ferret-legging endurance bout and classifying its outcome (three classes), Adagrad at 0.05 with a 20-step linear warm-up and cosine decay (LambdaLR), cross-entropy with label smoothing 0.1, gradient clipping at 1.0, batches of 48, 200 steps.",
)
def h344_ferret_legging_gru_control(ctx: Context) -> None:
    gen = seeded(34412)
    model = BoutReader()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    total, warm = 200, 20

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _bouts(gen, 48, 3412),
        total,
        loss_fn,
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell to under 70% of its start", _fell(ctx.losses, ratio=0.7))


# -- sword swallowing (control): Gaussian NLL, RAdam, fp16 autocast + GradScaler, accumulation ----


class BreathHold(Trunk):
    """A GELU trunk predicting the mean and variance (softplus) of a breath-hold time."""

    def __init__(self):
        super().__init__(10, 64, out=2, act=nn.GELU)

    def forward(self, x):
        out = self.head(self.features(x))
        return torch.stack([out[:, 0], F.softplus(out[:, 1]) + 1e-3], 1)


def _holds(gen, batch, seed):
    """Ten standardised readings; a breath-hold time (standardised) with input-dependent noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    v = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        mu = torch.tanh(x @ w / math.sqrt(10)) * 1.2
        sd = 0.1 + 0.3 * torch.sigmoid(x @ v / math.sqrt(10))
        yield x, mu + sd * torch.randn(batch, generator=gen)


def _nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


@scenario(
    family="sword_swallowing_breath_hold_fp16_gaussian_nll_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the mean and variance (softplus) of a sword swallower's breath-hold time (standardised) from ten readings, Gaussian NLL, RAdam at 2e-3, fp16 autocast with a torch.amp.GradScaler (default settings), gradient accumulation over 2 micro-batches, ReduceLROnPlateau (factor 0.5, patience 10) on a fixed validation batch, 150 steps.",
)
def h344_sword_swallowing_fp16_nll_control(ctx: Context) -> None:
    gen = seeded(34413)
    model = BreathHold()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _holds(gen, 64, 3413)
    val = next(batches)

    def plateau():
        model.eval()
        with torch.no_grad():
            return float(_nll(model(val[0]), val[1]))

    _loop(
        ctx,
        model,
        opt,
        batches,
        150,
        _nll,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check(
        "the loss fell by over 0.5 nats",
        _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.5,
    )
