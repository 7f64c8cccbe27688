"""Held-out set 304 (``h304_``): hand-written models of trades, crafts, instruments and natural
phenomena not covered before: a rope-walk hemp-twist deep residual MLP without normalisation
whose residual branches were He-initialised with no depth scaling (gradients grow through depth
under clipping), a kelp-burning ash-grade ReLU classifier whose RMSprop lr was typed 1e-1 for
1e-3 (ReLUs die), a ghatam stroke classifier whose nll_loss reads raw logits after the
LogSoftmax was dropped (head logits grow without bound), a coracle hide-stretch regressor whose
logging hook converts the loss to square centimetres in place before backward on one step (one
gradient spike), a tapan-drum rim-hit net with a hand-written BCE on sigmoid probabilities (log 0,
NaN), a glass-bead weight fp16 regressor trained on targets in raw milligrams (fp16 gradient
overflow), a clog-making sole-blank regressor whose trunk keeps a fine-tuning recipe's lr scale
1e-4 (trunk barely moves), a mill-pond head-level regressor fed one batch from a saturated
logger (data outlier), a pitch-boiling kettle regressor whose StepLR gamma was typed 10 for 0.1
(learning rate past the stability limit), a bendir buzz cosine classifier whose scale was typed
300 for 30 (softmax saturates), and three controls (a spindle-whorl spin-time regressor on
noisy batches of 8 with ReduceLROnPlateau cutting the lr many times, a lucet cord-braid fp16
classifier with a GradScaler, OneCycleLR and label smoothing, a loom-heddle tied autoencoder
with Adadelta and accumulation).

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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``after(step)`` runs after the
    optimizer step; ``backprop(step, out, y, loss)`` returns the loss actually backpropagated
    (the logged loss unless a bug says otherwise); stops after a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
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
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            shown += float(loss.detach()) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, out, y, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
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


def _readings(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised readings and smooth nonlinear targets of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- rope walk: a deep residual MLP, no normalisation, branches He-initialised, no depth scale ---


class TwistBlock(nn.Module):
    """x + fc2(relu(fc1(x))), no normalisation."""

    def __init__(self, width, scaled):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(self.fc2.weight, nonlinearity="relu")
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)
        if scaled:
            self.fc2.weight.data.mul_(scaled)

    def forward(self, x):
        return x + self.fc2(F.relu(self.fc1(x)))


class TwistResNet(nn.Module):
    def __init__(self, d_in=10, width=48, depth=12, scaled=None):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(TwistBlock(width, scaled) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        self.outs: list[torch.Tensor] = []

    def forward(self, x):
        x = self.stem(x)
        self.outs = []
        for block in self.blocks:
            x = block(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="rope_walk_hemp_twist_deep_residual_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("blocks.0", "blocks.1"),
    diverges=None,
    heldout=True,
    note="A hand-written deep residual MLP with no normalisation layers (stem, blocks.0 ... blocks.11, each x + fc2(relu(fc1(x))), head) regressing the twist a rope-walk's top cart must put into a hemp strand (standardised) from 10 standardised readings (fibre length, moisture, walk length, hook speed), SGD momentum 0.9 at 1e-3, Huber loss, gradient clipping at 1.0, 150 steps. Both Linears of every residual branch were initialised with kaiming_normal_ (ReLU gain) and the residual scale 1/sqrt(2*depth) of the recipe was never applied (the `residual_scale` key was dropped when the config was flattened): every block roughly triples the variance it passes on, so the gradient reaching blocks.0's output is over 30x the one at the last block's, and the raw gradient norm is over 100x the clip threshold on every step: clipping throws away almost all of every step (the loss falls only slowly from its huge start), where the depth-scaled twin's gradient is under 10.",
)
def h304_rope_walk_unscaled_residuals(ctx: Context) -> None:
    gen = seeded(30401)
    model = TwistResNet()
    ref = TwistResNet(scaled=1.0 / math.sqrt(2 * 12))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x0, y0 = next(_readings(torch.Generator().manual_seed(3), 64, 10, seed=401))
    F.huber_loss(model(x0), y0).backward()
    depth_ratio = float(model.outs[0].grad.norm() / model.outs[-1].grad.norm())
    model.zero_grad()
    F.huber_loss(ref(x0), y0).backward()
    g_ref = grad_norm(ref)
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=401), 150, F.huber_loss, clip=1.0)
    ctx.check("blocks.0's output gradient is over 30x the last block's", depth_ratio > 30)
    ctx.check(
        "the raw gradient norm is over 100x the clip threshold on every step",
        min(ctx.grad_norms) > 100.0,
    )
    ctx.check("the depth-scaled twin's gradient is under 10", g_ref < 10.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kelp burning: RMSprop lr typed 1e-1 for 1e-3, the ReLUs die -------------------------------


@scenario(
    family="kelp_burn_ash_grade_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading the soda ash from a kelp-burning kiln (6 grades) from 16 standardised readings (kelp species, drying days, kiln temperature, burn time, ash colour), heavily overlapping grades, cross-entropy, 250 steps, RMSprop with lr typed 1e-1 for 1e-3 in the sweep file. RMSprop's steps move every weight by about lr of a normalised gradient whatever the gradient's size; on the noisy batches those large moves keep pushing fc2's units negative on every input, and a unit that stops firing gets no gradient and never comes back: the share of fc2's units dead (never positive on a fixed probe of 512 readings) climbs from 0 at init to over half from step 150 on and keeps growing, and the classifier is stuck near chance, over 1.3x the loss of the same net at lr 1e-3.",
)
def h304_kelp_burn_rmsprop_lr_typo(ctx: Context) -> None:
    gen = seeded(30402)
    model = Stack(16, 64, out=6)
    state_0 = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-1)
    probe = next(_kinds(torch.Generator().manual_seed(9), 512, 16, 6, seed=402, noise=2.0))[0]
    dead: list[float] = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(probe)))

    with torch.no_grad():
        dead_0 = dead_fraction(model.features(probe))
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=402, noise=2.0),
        250,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    twin = Stack(16, 64, out=6)
    twin.load_state_dict(state_0)
    topt = torch.optim.RMSprop(twin.parameters(), lr=1e-3)
    tb = _kinds(torch.Generator().manual_seed(30402), 64, 16, 6, seed=402, noise=2.0)
    twin_ls = []
    for _ in range(250):
        x, y = next(tb)
        loss = F.cross_entropy(twin(x), y)
        loss.backward()
        topt.step()
        topt.zero_grad()
        twin_ls.append(float(loss.detach()))
    ctx.check("under a tenth of fc2's units dead at init", dead_0 < 0.1)
    ctx.check("over half of fc2's units dead from step 150 to the end", min(dead[150:]) > 0.5)
    ctx.check("the dead share grew over 2x after step 20", dead[-1] > 2 * dead[20])
    ctx.check(
        "the loss ends over 1.3x that of the same net at lr 1e-3",
        _mean(ctx.losses[-20:]) > 1.3 * _mean(twin_ls[-20:]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- ghatam: nll_loss on raw logits after the LogSoftmax was dropped --------------------------


@scenario(
    family="ghatam_stroke_kind_raw_logit_nll_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head: 8 logits) classifying which stroke a ghatam (South Indian clay-pot drum) player made (8 kinds: finger, thumb, palm, mouth-of-pot, ...) from 20 standardised readings of the pot's contact microphone, Adam at 1e-3, 200 steps. The model used to end in nn.LogSoftmax and was trained with F.nll_loss; the LogSoftmax was removed when the model was shared with an evaluation script that wants logits, and the training script still calls F.nll_loss(model(x), y), which is then -mean(logit of the target): it has no lower bound, so the head drives the target logits up without limit. The peak head logit on a fixed probe grows over 20x and past 100 and the loss goes far below 0, which no log-probability allows. Finite, no blow-up within the run.",
)
def h304_ghatam_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(30403)
    model = Stack(20, 64, out=8, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = next(_kinds(torch.Generator().manual_seed(7), 256, 20, 8, seed=403))[0]
    peaks: list[float] = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                peaks.append(float(model(probe).abs().max()))

    with torch.no_grad():
        peak_0 = float(model(probe).abs().max())
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 8, seed=403),
        200,
        F.nll_loss,
        classifier=True,
        after=after,
    )
    ctx.check("the peak head logit grew over 20x", peaks[-1] > 20 * peak_0)
    ctx.check("the peak head logit passed 100", peaks[-1] > 100)
    ctx.check("the loss went below -50", _mean(ctx.losses[-10:]) < -50)
    ctx.check("the peak logit was still growing at the end", peaks[-1] > 1.2 * peaks[-5])
    ctx.check("finite throughout", _finite(ctx.losses))


# -- coracle: the logging hook converts the loss in place before backward on one step ---------

ONSET_CORACLE = 100
STD_CORACLE_CM = 12.0


@scenario(
    family="coracle_build_hide_stretch_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CORACLE,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how far a coracle builder's hide will stretch over the willow frame (standardised) from 12 standardised readings (hide thickness, soak time, frame diameter, lath spacing), SGD Nesterov momentum 0.9 at 1e-2, MSE, clipping at 1.0, 160 steps. The logging hook, which runs every 100 steps, converts the loss to square centimetres for the dashboard with `loss *= target_std ** 2` (std 12 cm) on the loss tensor itself, before loss.backward(): step 100 backpropagates 144x the loss, on ordinary data (the recorded loss is the standardised value taken before the hook). Clipping bounds the step and the run goes on training.",
)
def h304_coracle_inplace_log_units(ctx: Context) -> None:
    gen = seeded(30404)
    model = Stack(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def backprop(step, out, y, loss):
        if step and step % ONSET_CORACLE == 0:
            loss *= STD_CORACLE_CM**2
        return loss

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=404),
        160,
        F.mse_loss,
        clip=1.0,
        backprop=backprop,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_CORACLE - 20 : ONSET_CORACLE])
    ctx.check("the gradient at step 100 is over 50x the usual", g[ONSET_CORACLE] > 50 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_CORACLE + 1 : ONSET_CORACLE + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on step 100's batch is ordinary",
        ls[ONSET_CORACLE] < 2.0 * _mean(ls[ONSET_CORACLE - 10 : ONSET_CORACLE]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- tapan drum: a hand-written BCE on sigmoid probabilities ----------------------------------


class RimHitNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head -> prob (sigmoid)."""

    def __init__(self, d_in=12, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        self.prob = nn.Sigmoid()

    def forward(self, x):
        return self.prob(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _bce_by_hand(p, y):
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def _rim_hits(gen, batch, seed):
    """12 standardised readings of a tapan (Balkan double-headed drum) stroke; is it a rim hit?
    Cleanly separable: the rim's ring shows in several readings."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        yield x, (x @ w > 0).float()


@scenario(
    family="tapan_drum_rim_hit_sigmoid_bce_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("prob",),
    diverges=24,
    heldout=True,
    note="A ReLU net (fc1, act1, fc2, act2, head, prob = nn.Sigmoid) telling rim hits from head strokes on a tapan (Balkan double-headed drum) from 12 standardised readings of the stroke, NAdam at 1e-2, 200 steps. The model returns probabilities and the loss is a hand-written binary cross-entropy -(y log p + (1 - y) log(1 - p)) with no clamp (meant: BCEWithLogits on the head's logits). The strokes are cleanly separable, the logits grow, and once one row's logit passes about 17 the float32 sigmoid rounds to exactly 1.0 (or to 0.0 at the other end): log(1 - p) is -inf and 0 * -inf is NaN, so the loss is NaN from that step.",
)
def h304_tapan_bce_without_clamp(ctx: Context) -> None:
    gen = seeded(30405)
    model = RimHitNet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    saturated: list[int] = []

    def watch(step, out, x, y):
        saturated.append(int(((out == 1.0) | (out == 0.0)).sum()))

    _train(ctx, model, opt, _rim_hits(gen, 64, seed=405), 200, _bce_by_hand, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss went NaN", bad is not None)
    ctx.check(
        "a row's probability was exactly 0 or 1 on that step",
        bad is not None and saturated[bad] > 0,
    )
    ctx.check(
        "no probability was exactly 0 or 1 before it",
        bad is not None and bad >= 1 and max(saturated[:bad]) == 0,
    )
    ctx.check("the loss was finite before it", bad is not None and _finite(ctx.losses[:bad]))


# -- glass beads: bead weights in raw milligrams under fp16 autocast ------------------------------


def _beads(gen, batch, seed):
    """10 standardised readings of a lampworker's bead (rod diameter, gather turns, mandrel
    size, flame setting); target: the bead's weight in milligrams (about 800-2400), raw."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        yield x, 1600.0 + 800.0 * torch.tanh(x @ w / math.sqrt(10))


@scenario(
    family="glass_bead_mandrel_weight_fp16_gelu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the weight of a lampwork glass bead from 10 standardised readings (rod diameter, gather turns, mandrel size, flame setting), fp16 autocast with a torch.amp.GradScaler (init scale 65536), Adamax at 2e-3, MSE, clipping at 1.0 after unscale_, 150 steps. The weights were exported in raw milligrams (800-2400) where the pipeline expects standardised targets and the normaliser was never fitted: the MSE's gradient at the head's output, about 2*1600/64 per row times the loss scale, overflows fp16 in the backward pass; the scaler skips the step and halves its scale again and again, over 30x down, with over 5 steps skipped.",
)
def h304_glass_bead_raw_milligrams(ctx: Context) -> None:
    gen = seeded(30406)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    _train(
        ctx,
        model,
        opt,
        _beads(gen, 64, seed=406),
        150,
        F.mse_loss,
        amp=True,
        scaler=scaler,
        clip=1.0,
    )
    s = ctx.scales
    skipped = sum(1 for a, b in zip([65536.0] + s[:-1], s, strict=True) if b < a)
    ctx.check("the loss scale fell over 30x", min(s) < 65536.0 / 30)
    ctx.check("over 5 steps skipped for inf/NaN gradients", skipped > 5)
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- clog making: a fine-tuning recipe's trunk lr scale in a from-scratch run ----------------------


@scenario(
    family="clog_making_sole_blank_two_group_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how much a clog maker must carve off a willow sole blank (standardised) from 14 standardised readings (log moisture, grain angle, foot length, last shape), AdamW at 3e-3 with two param groups, MSE, 200 steps. The training script was copied from a fine-tuning recipe whose `backbone_lr_scale: 1e-4` protects a pretrained backbone; here the trunk (fc1, fc2) is randomly initialised and trains at 3e-7: its updates are about 1e-7 of its weights per step and over the run fc1 and fc2 move under 1e-3 of their norm while the head moves over 10% of its own; the loss falls only as far as the head on random features allows.",
)
def h304_clog_making_backbone_lr_scale(ctx: Context) -> None:
    gen = seeded(30407)
    model = Stack(14, 64, act=nn.ReLU)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.AdamW(
        [
            {"params": trunk, "lr": 3e-3 * 1e-4},
            {"params": model.head.parameters(), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    fc1_0, fc2_0, head_0 = _flat(model.fc1), _flat(model.fc2), _flat(model.head)
    _train(ctx, model, opt, _readings(gen, 64, 14, seed=407), 200, F.mse_loss)
    rel = [
        float((_flat(m) - w0).norm() / w0.norm())
        for m, w0 in ((model.fc1, fc1_0), (model.fc2, fc2_0), (model.head, head_0))
    ]
    ctx.check("fc1 moved under 1e-3 of its norm", rel[0] < 1e-3)
    ctx.check("fc2 moved under 1e-3 of its norm", rel[1] < 1e-3)
    ctx.check("the head moved over 10% of its norm", rel[2] > 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- mill pond: one batch from a saturated water-level logger -----------------------------------

ONSET_MILL = 110


@scenario(
    family="mill_pond_head_level_relu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_MILL,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) forecasting a watermill pond's head level an hour ahead (standardised) from 10 standardised readings (level now, leat inflow, sluice setting, wheel load, rain), Adagrad at 3e-2, MSE, clipping at 1.0, 200 steps. One logger's shard was exported while its ADC was saturated: at step 110 twelve rows of the batch carry the raw count 65535 in the level and inflow columns instead of standardised values. That batch's loss and gradient are over 100x the usual; clipping bounds the step and the run recovers on the next, ordinary batches.",
)
def h304_mill_pond_saturated_logger(ctx: Context) -> None:
    gen = seeded(30408)
    model = Stack(10, 64)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)

    def alter(step, x, y):
        if step == ONSET_MILL:
            x = x.clone()
            x[:12, :2] = 65535.0
        return x, y

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=408), 200, F.mse_loss, clip=1.0, alter=alter
    )
    g, ls = ctx.grad_norms, ctx.losses
    base_l = _median(ls[ONSET_MILL - 20 : ONSET_MILL])
    ctx.check("the loss at step 110 is over 100x the usual", ls[ONSET_MILL] > 100 * base_l)
    ctx.check(
        "the gradient at step 110 is over 100x the usual",
        g[ONSET_MILL] > 100 * _median(g[ONSET_MILL - 20 : ONSET_MILL]),
    )
    ctx.check(
        "the loss is back under 2x the usual within 20 steps",
        _median(ls[ONSET_MILL + 10 : ONSET_MILL + 20]) < 2 * base_l,
    )
    ctx.check("finite throughout", _finite(ls))


# -- pitch boiling: StepLR gamma typed 10 for 0.1 ----------------------------------------------


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y), by power iteration on Hessian-vector
    products."""
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((a * a).sum()) for a in v))
        v = [a / norm for a in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [a.detach() for a in hv]
    return lam


STEP_PITCH, ONSET_PITCH = 40, 80


@scenario(
    family="pitch_boiling_kettle_temperature_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_PITCH,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the temperature a boat-builder's pine-pitch kettle will reach (standardised) from 8 standardised readings (fire load, pitch volume, tallow share, air temperature), plain SGD at 0.03, MSE, up to 200 steps, StepLR(step_size=40, gamma=10) where the recipe meant gamma=0.1: the learning rate is multiplied by 10 at step 40 (0.3) and again at step 80 (3.0). The loss falls at first; after the first step-up the learning rate times the top Hessian eigenvalue (measured on a fixed batch by power iteration every 10 steps) sits just under 2 (about 1.9, the loss stalls); after the second, at step 80, it is over 10, the iterates oscillate along the sharpest direction and the loss blows up (inf/NaN by about step 93).",
)
def h304_pitch_boiling_steplr_gamma(ctx: Context) -> None:
    gen = seeded(30409)
    model = Stack(8, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.03)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=STEP_PITCH, gamma=10.0)
    xs, ys = next(_readings(torch.Generator().manual_seed(2), 256, 8, seed=409))
    products: list[tuple[int, float]] = []

    def before(step):
        if step % 10 == 0 and not any(p > 2.0 for _, p in products):
            lam = _sharpness(model, F.mse_loss, xs, ys)
            products.append((step, opt.param_groups[0]["lr"] * lam))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=409),
        200,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    fin = [v for v in ls if math.isfinite(v)]
    best = min(fin)
    crossed = [s for s, p in products if p > 2.0]
    ctx.check("lr x sharpness under 2 at the start", products[0][1] < 2.0)
    ctx.check(
        "lr x sharpness passed 2 at the second step-up", bool(crossed) and crossed[0] >= ONSET_PITCH
    )
    ctx.check(
        "the loss blew up to over 100x its best",
        _first_bad(ls) is not None or max(fin) > 100 * best,
    )
    ctx.check("the loss fell before the first step-up", _fell(ls[:STEP_PITCH], k=5))


# -- bendir: a cosine classifier's scale typed 300 for 30 ---------------------------------------


class CosineHead(nn.Module):
    """scale * cos(features, class weight)."""

    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class BuzzNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=8, scale=300.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="bendir_snare_buzz_cosine_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU net (fc1, act1, fc2, head = a cosine classifier scale * cos(h, w_c)) classifying which of 8 buzz timbres a bendir (North African frame drum with snares across the skin) gives from 16 standardised readings of the skin and snares, RAdam at 2e-3, cross-entropy, 200 steps. The cosine classifier's scale was typed 300 where the recipe says 30: the logits span +-300, a cosine gap of 0.06 between the target and the runner-up already puts the float32 softmax at exactly 1.0, and over a quarter of the rows of a late batch have the target's probability rounded to exactly 1.0 (their gradient exactly 0).",
)
def h304_bendir_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(30410)
    model = BuzzNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    probe_x, probe_y = next(_kinds(torch.Generator().manual_seed(11), 512, 16, 8, seed=410))
    with torch.no_grad():
        frac_30 = collapsed_fraction(BuzzNet(scale=30.0)(probe_x), probe_y)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 8, seed=410),
        200,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        frac = collapsed_fraction(model(probe_x), probe_y)
    ctx.check("with the intended scale 30 under 5% of rows collapse at init", frac_30 < 0.05)
    ctx.check("over a quarter of the rows' softmax is exactly 1.0 at the end", frac > 0.25)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ------------------------------------------------------------------------------------


def _spins(gen, batch, seed):
    """Spin time of a drop spindle in seconds over 10 (about -3 to 3 around the mean), with
    the scatter of hand-flicked spins (noise 0.6)."""
    for x, y in _readings(gen, batch, 10, seed=seed, noise=0.0):
        yield x, 2.0 * y + 0.6 * torch.randn(batch, generator=gen)


@scenario(
    family="spindle_whorl_spin_time_noisy_relu_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP (fc1, act1, fc2, act2, head) regressing how long a drop-spindle spins (standardised) from 10 standardised readings (whorl mass, whorl diameter, shaft length, flick strength, fibre), targets of about unit scale x 2 with the scatter of hand-flicked spins (noise 0.6), batches of 8, ASGD at 0.1, Huber loss, clipping at 2.0, ReduceLROnPlateau (factor 0.5, patience 20) stepped on each noisy batch loss, 300 steps. The noisy batch loss rarely beats its luckiest batch, so the scheduler cuts the learning rate many times (about 10 halvings); the loss falls to the noise floor and the run trains normally.",
)
def h304_spindle_whorl_plateau_control(ctx: Context) -> None:
    gen = seeded(30411)
    model = Stack(10, 32)
    opt = torch.optim.ASGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _spins(gen, 8, seed=411),
        300,
        F.huber_loss,
        clip=2.0,
        sched=sched,
    )
    cuts = round(math.log2(0.1 / opt.param_groups[0]["lr"]))
    ctx.check("the learning rate was cut over 5 times", cuts > 5)
    ctx.check("the loss fell", _fell(ctx.losses, k=40))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="lucet_cord_braid_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying which of 6 braids a lucet (cord-making fork) maker worked from 16 standardised readings of the cord, fp16 autocast with a torch.amp.GradScaler, AdamW with two param groups (weight decay 0.05 on the Linear weights, none on the biases), OneCycleLR up to 3e-3, cross-entropy with label smoothing 0.1, clipping at 1.0 after unscale_, 200 steps.",
)
def h304_lucet_fp16_onecycle_control(ctx: Context) -> None:
    gen = seeded(30412)
    model = Stack(16, 64, out=6, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=412),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


class TiedHeddleAE(nn.Module):
    """enc (16 -> 6, tanh) and a decoder tied to enc's weight."""

    def __init__(self, d=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d, code)
        self.dec_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.T, self.dec_bias)


def _sheds(gen, batch, seed):
    """16 heddle-frame sensor readings of a loom's shed, driven by 4 hidden factors."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(4, 16, generator=g) / 2
    while True:
        z = torch.randn(batch, 4, generator=gen)
        x = torch.tanh(z) @ mix + 0.05 * torch.randn(batch, 16, generator=gen)
        yield x, x


@scenario(
    family="loom_heddle_shed_tied_autoencoder",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tied-weight autoencoder (enc: 16 -> 6 with tanh, the decoder uses enc.weight transposed and its own bias) compressing 16 heddle-frame sensor readings of a handloom's shed, Adadelta at lr 1.0, MSE, gradient accumulation over 2 micro-batches of 32, 250 steps.",
)
def h304_loom_heddle_tied_ae_control(ctx: Context) -> None:
    gen = seeded(30413)
    model = TiedHeddleAE()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    _train(ctx, model, opt, _sheds(gen, 32, seed=413), 250, F.mse_loss, accumulate=2)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
