"""Held-out set 357 (``h357_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a fulgurite glass-wall thickness Gaussian NLL net whose
variance head has no softplus (log of a negative variance, NaN), a tamboril carnival-beat ReLU RNN
whose identity recurrent init gain is typed 1.25 for 0.95 (gradients grow through time), a
polocrosse racquet-scoop classifier whose dropout schedule writes the keep probability into p for
one step (a one-off loss spike), a barrel-racing cloverleaf split regressor whose resumed
accumulation step multiplies by the micro-batch count instead of dividing (one gradient burst), a
sastrugi wind-alignment BCE net fed one station's shard in cm/s (one corrupted batch), a cimbalom
damper regressor whose fc1 group lr is typed 3e-8 for 3e-3 (frozen layer), a knife-grinder
wheel-wear ReLU regressor whose lr is typed 0.3 for 0.03 (ReLUs die), a camogie puck-out cosine
classifier whose scale is typed 3000 for 30 (softmax saturates), a nacreous-cloud altitude
regressor whose warm-up peak comes from the linear batch-scaling rule (past 2/sharpness), a
ploughing-match furrow regressor whose unit conversion is applied in place to the cached targets
every epoch (a slow climb), and three controls (a charango strum conv + GRU CTC transcriber with
zero_infinity and clipping, a bandy shot Conv1d classifier with SGD Nesterov, OneCycleLR and label
smoothing, a canyoning flash-flood stage Huber regressor under fp16 autocast with a GradScaler and
ReduceLROnPlateau).

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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


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
    scale_loss=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``scale_loss(step, loss, k)`` gives
    the micro-batch loss actually backpropagated (default loss / k), ``after(step)`` runs after
    the optimizer step, ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``.
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
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            if scale_loss is not None:
                total = scale_loss(step, loss, accumulate)
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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


# -- fulgurite: the variance head has no softplus, log of a negative variance ---------------------

FULGURITE_NAN = 44


class GaussianNLL(nn.Module):
    """Hand-written Gaussian negative log-likelihood of (mean, variance) columns."""

    def forward(self, out, y):
        mu, var = out[:, 0], out[:, 1]
        return 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()


class WallThicknessNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2, then mean_head and var_head; nll scores them."""

    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        self.nll = GaussianNLL()
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.var_head(h)], 1)  # var: no softplus


@scenario(
    family="fulgurite_glass_wall_thickness_gaussian_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("nll", "var_head"),
    diverges=FULGURITE_NAN,
    heldout=True,
    note="A hand-written GELU net (fc1, act1, fc2, act2, mean_head, var_head, nll: a hand-written Gaussian NLL) predicting a fulgurite's glass-wall thickness (standardised) with its variance from ten readings of the strike and the sand, Adam at 1e-3, 250 steps planned. The variance head's softplus was left out (its bias starts at 1.0, so every variance is positive at first): as the fit sharpens, the NLL pushes the predicted variance down and one row's var_head output crosses 0; nll takes log of a negative number and the loss is NaN at step 44, finite before.",
)
def h357_fulgurite_variance_head_no_softplus(ctx: Context) -> None:
    gen = seeded(35701)
    model = WallThicknessNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    smallest = []

    def watch(step, out, x, y):
        smallest.append(float(out[:, 1].detach().min()))

    _train(ctx, model, opt, _readings(gen, 32, 10, 3571, noise=0.1), 250, model.nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(
        f"the loss is NaN at step {FULGURITE_NAN}",
        bad == FULGURITE_NAN and math.isnan(ctx.losses[bad]),
    )
    ctx.check("finite before", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check(
        "a predicted variance is <= 0 on the step the loss turns NaN",
        bad is not None and smallest[bad] <= 0.0,
    )
    ctx.check("every variance was positive on the first 20 steps", min(smallest[:20]) > 0.0)


# -- tamboril: the identity recurrent init gain is typed 1.25 for 0.95 ---------------------------


class ReluCell(nn.Module):
    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))

    def forward(self, x, h):
        return torch.relu(self.inp(x) + self.rec(h))


class BeatReader(nn.Module):
    """A hand-written ReLU RNN (cell.inp, cell.rec) reading a 32-frame drum trace; head names
    the carnival rhythm from the last state. ``keep`` retains the states' gradients."""

    def __init__(self, d_in=4, hidden=32, classes=4, gain=1.25):
        super().__init__()
        self.cell = ReluCell(d_in, hidden, gain)
        self.head = nn.Linear(hidden, classes)
        self.keep = False
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if self.keep:
                h.retain_grad()
                self.states.append(h)
        return self.head(h)


def _beats(gen, batch, seed, frames=32, classes=4):
    """Drum traces: a class-specific pulse pattern (period and phase) plus noise, 4 channels."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, frames, 4, generator=g).clamp_min(0)
    t = torch.arange(frames).float()
    periods = torch.tensor([3.0, 4.0, 5.0, 6.0])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        pulse = (torch.cos(2 * math.pi * t[None] / periods[y][:, None]) > 0.5).float()
        x = (
            0.3 * protos[y]
            + 0.5 * pulse[:, :, None]
            + 0.2 * torch.randn(batch, frames, 4, generator=gen)
        )
        yield x, y


@scenario(
    family="tamboril_carnival_beat_relu_rnn",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("cell.rec", "cell"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU RNN (cell.inp, cell.rec, head) naming a tamboril carnival rhythm (four) from a 32-frame four-channel drum trace, Adagrad at 1e-2, cross-entropy, gradient clipping at 1.0, 200 steps. The identity recurrent init (IRNN) gain was typed 1.25 for 0.95: states and gradients grow through the 32 steps, the gradient at h_0 is over 20x that at h_31 on the first step and stays over 10x through the run, and the raw gradient norm is over 10x the clip threshold early; clipping and Adagrad keep the loss finite.",
)
def h357_tamboril_identity_gain_typo(ctx: Context) -> None:
    gen = seeded(35702)
    model = BeatReader(gain=1.25)  # meant 0.95
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ratios = []

    def before(step):
        model.keep = step % 20 == 0

    def after_grad(step):
        if model.keep and model.states[0].grad is not None:
            first = float(model.states[0].grad.norm())
            last = float(model.states[-1].grad.norm())
            ratios.append(first / max(last, 1e-30))

    def after(step):
        after_grad(step)

    _train(
        ctx,
        model,
        opt,
        _beats(gen, 32, 3572),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
        clip=1.0,
    )
    ctx.check(
        "the gradient at h_0 is over 20x that at h_31 on the first step",
        bool(ratios) and ratios[0] > 20.0,
    )
    ctx.check("it stays over 10x through the run", bool(ratios) and min(ratios) > 10.0)
    ctx.check(
        "the raw gradient norm in the first 20 steps is over 10x the clip threshold",
        _median(ctx.grad_norms[:20]) > 10.0,
    )


# -- polocrosse: the dropout schedule writes the keep probability into p for one step ------------

POLO_ONSET = 130


@scenario(
    family="polocrosse_racquet_scoop_dropout_classifier",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=POLO_ONSET,
    note="A hand-written GELU MLP (fc1, act1, drop, fc2, act2, drop2, head) naming a polocrosse racquet-scoop outcome (five) from sixteen readings, AdamW at 2e-3 with weight decay 0.01 under CosineAnnealingLR, cross-entropy with label smoothing 0.05, dropout 0.1, 220 steps. At step 130 the epoch-boundary resume sets both dropouts' p from the config key that holds the keep probability (0.9); the per-step schedule sets p back to 0.1 the next step: the loss at step 130 is over 3x the median of the 20 steps before and is back under 1.5x within 10-20 steps, finite throughout.",
)
def h357_polocrosse_dropout_keep_prob_for_one_step(ctx: Context) -> None:
    gen = seeded(35703)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(16, 96))
    model.add_module("act1", nn.GELU())
    model.add_module("drop", nn.Dropout(0.1))
    model.add_module("fc2", nn.Linear(96, 96))
    model.add_module("act2", nn.GELU())
    model.add_module("drop2", nn.Dropout(0.1))
    model.add_module("head", nn.Linear(96, 5))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=220, eta_min=2e-4)
    keep_prob = 0.9

    def before(step):
        # the epoch-boundary resume sets p from the config key that holds the keep probability
        for drop in (model.drop, model.drop2):
            drop.p = keep_prob if step == POLO_ONSET else 0.1

    _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 3573, spread=1.4),
        220,
        nn.CrossEntropyLoss(label_smoothing=0.05),
        classifier=True,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    pre = _median(ls[POLO_ONSET - 20 : POLO_ONSET])
    ctx.check(
        "the loss at onset is over 3x the median of the 20 steps before", ls[POLO_ONSET] > 3 * pre
    )
    ctx.check(
        "10-20 steps later the loss is back under 1.5x that median",
        _mean(ls[POLO_ONSET + 10 : POLO_ONSET + 20]) < 1.5 * pre,
    )
    ctx.check("finite throughout", _finite(ls))


# -- barrel racing: the resumed accumulation step multiplies by the micro-batch count ------------

BARREL_ONSET = 110
BARREL_ACCUM = 8


@scenario(
    family="barrel_racing_cloverleaf_split_accum_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=BARREL_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a barrel-racing cloverleaf split time (standardised) from twelve readings, SGD momentum 0.9 at 0.02, MSE, gradient accumulation over 8 micro-batches, clipping at 5.0, 220 steps. The resume path at step 110 was written for a summed loss and multiplies each micro-batch loss by the accumulation count where it should divide: that step's gradient is 64x (over 50x the median before and over 5x that of any other step) on ordinary batches; clipping bounds the update, the loss stays finite and recovers.",
)
def h357_barrel_racing_accumulation_multiplies(ctx: Context) -> None:
    gen = seeded(35704)
    model = Trunk(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def scale_loss(step, loss, k):
        # the resume path was written for a summed loss: loss * k where loss / k is meant
        return loss * k if step == BARREL_ONSET else loss / k

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 16, 12, 3574),
        220,
        F.mse_loss,
        scale_loss=scale_loss,
        accumulate=BARREL_ACCUM,
        clip=5.0,
    )
    g = ctx.grad_norms
    pre = _median(g[BARREL_ONSET - 20 : BARREL_ONSET])
    ctx.check(
        "the gradient at onset is over 50x the median of the 20 steps before",
        g[BARREL_ONSET] > 50 * pre,
    )
    ctx.check(
        "the onset gradient is over 5x that of any other step",
        g[BARREL_ONSET] > 5 * max(g[:BARREL_ONSET] + g[BARREL_ONSET + 1 :]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sastrugi: one station's shard logged in cm/s and not standardised ---------------------------

SASTRUGI_ONSET = 140


def _alignment(gen, batch, seed):
    """Eight standardised readings (wind speed and direction, snow, temperature, ...); label:
    are the sastrugi ridges aligned with the prevailing wind."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        logit = 2.0 * x @ w / math.sqrt(8) + 0.8 * x[:, 0] * x[:, 1]
        yield x, (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()


@scenario(
    family="sastrugi_wind_alignment_bce_net",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SASTRUGI_ONSET,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) telling whether sastrugi ridges align with the prevailing wind from eight standardised station readings, RMSprop at 1e-3, BCE with logits, clipping at 1.0, 240 steps. At step 140 one station's shard arrives with its wind speed logged in raw cm/s and never standardised (values in the thousands): the loss on that batch is over 10x the median before, its raw gradient over 20x; clipping bounds the step and the loss is back under 1.5x its earlier level by the end.",
)
def h357_sastrugi_shard_in_cm_per_s(ctx: Context) -> None:
    gen = seeded(35705)
    model = Trunk(8, hidden=48)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)

    def alter(step, x, y):
        if step == SASTRUGI_ONSET:
            x = x.clone()
            x[:, 0] = (x[:, 0] * 4.0 + 12.0) * 100.0  # raw cm/s, never standardised
        return x, y

    _train(
        ctx,
        model,
        opt,
        _alignment(gen, 64, 3575),
        240,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre_l = _median(ls[SASTRUGI_ONSET - 20 : SASTRUGI_ONSET])
    pre_g = _median(g[SASTRUGI_ONSET - 20 : SASTRUGI_ONSET])
    ctx.check(
        "the loss on the bad batch is over 10x the median before", ls[SASTRUGI_ONSET] > 10 * pre_l
    )
    ctx.check("its raw gradient is over 20x the median before", g[SASTRUGI_ONSET] > 20 * pre_g)
    ctx.check(
        "the loss over the last 20 steps is back under 1.5x the median before",
        _mean(ls[-20:]) < 1.5 * pre_l,
    )
    ctx.check("finite throughout", _finite(ls))


# -- cimbalom: the fc1 group's lr is typed 3e-8 for 3e-3 -----------------------------------------


@scenario(
    family="cimbalom_damper_pedal_sustain_two_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a cimbalom damper pedal's sustain time (standardised) from fourteen readings, Adamax with two parameter groups under CosineAnnealingLR, MSE, 200 steps. The fc1 group's lr was typed 3e-8 for 3e-3: fc1 moves less than 0.01% in the run while fc2 and head, at 3e-3, move over 5% and the loss falls; fc1's updates are some five orders of magnitude too small for its weights.",
)
def h357_cimbalom_fc1_group_lr_typo(ctx: Context) -> None:
    gen = seeded(35706)
    model = Trunk(14, hidden=64, act=nn.Tanh)
    fc1 = list(model.fc1.parameters())
    ids = {id(p) for p in fc1}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adamax(
        [{"params": fc1, "lr": 3e-8}, {"params": rest, "lr": 3e-3}]  # fc1 meant 3e-3
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    wh = model.head.weight.detach().clone()
    _train(ctx, model, opt, _readings(gen, 32, 14, 3576), 200, F.mse_loss, sched=sched)
    ctx.check("fc1 moved less than 0.01% in 200 steps", _rel_change(w1, model.fc1.weight) < 1e-4)
    ctx.check(
        "fc2 and head moved over 5%",
        _rel_change(w2, model.fc2.weight) > 0.05 and _rel_change(wh, model.head.weight) > 0.05,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- knife grinder: lr typed 0.3 for 0.03 ---------------------------------------------------------


@scenario(
    family="knife_grinder_wheel_wear_relu_regressor",
    optimizer="SGD momentum",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting a knife-grinder wheel's wear (standardised) from ten readings, SGD momentum 0.9, MSE, 200 steps. The lr was typed 0.3 for 0.03: the first large steps push fc2's units negative on every input; over half of them are dead (never positive on the batch) in every one of the last 50 steps (under a tenth at the start), and the loss stays around 0.6, far above the 0.02 a working run reaches; finite throughout.",
)
def h357_knife_grinder_lr_typo_kills_relus(ctx: Context) -> None:
    gen = seeded(35707)
    model = Trunk(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)  # meant 0.03
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(_dead(model.features(x)))

    _train(ctx, model, opt, _readings(gen, 32, 10, 3577), 200, F.mse_loss, watch=watch, clip=None)
    ctx.check(
        "over half of fc2's units are dead in every one of the last 50 steps", min(dead[-50:]) > 0.5
    )
    ctx.check("under a tenth were dead at the first step", dead[0] < 0.1)
    ctx.check(
        "the loss over the last 50 steps stays over 20x the 0.02 a working run reaches",
        _mean(ctx.losses[-50:]) > 0.4,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- camogie: the cosine classifier's scale is typed 3000 for 30 ---------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class PuckOutNamer(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=6, scale=30.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="camogie_puck_out_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU net (fc1, act1, fc2, act2, head: a cosine classifier, scale x normalised features . normalised class weights) naming a camogie puck-out's target zone (six) from twelve readings, NAdam at 1e-3, cross-entropy, 200 steps. The cosine scale was typed 3000 for 30: logits span thousands, the float32 softmax saturates and over half the rows' target probability is exactly 1.0 over the last 20 steps (while wrong rows cost hundreds); finite.",
)
def h357_camogie_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(35708)
    model = PuckOutNamer(scale=3000.0)  # meant 30
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 3578, spread=1.3),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- nacreous cloud: the warm-up peak comes from the linear batch-scaling rule -------------------

NACREOUS_WARMUP = 40
NACREOUS_ONSET = 16  # the first probed step past 2 / sharpness


@scenario(
    family="nacreous_cloud_altitude_warmup_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=NACREOUS_ONSET,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a nacreous cloud's altitude (standardised) from ten readings, plain SGD, MSE, batch 512, a 40-step linear warm-up, 120 steps planned. The warm-up's peak lr came from the linear batch-scaling rule (0.05 x 512 / 32 = 0.8) where MSE here tolerates about a third of that: lr x top Hessian eigenvalue (power iteration, probed every 4 steps) is 0.1 at the start and first passes 2 at step 16, hovers over 2 while the loss oscillates, and the loss then blows up to inf (step 64).",
)
def h357_nacreous_linear_scaling_peak(ctx: Context) -> None:
    gen = seeded(35709)
    model = Trunk(10, hidden=64, act=nn.Tanh)
    base_lr, base_batch, batch = 0.05, 32, 512
    peak = base_lr * batch / base_batch  # linear scaling rule, far past what MSE here allows
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    data = _readings(gen, batch, 10, 3579)
    probe = next(data)
    products = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / NACREOUS_WARMUP)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 4 == 0 and step <= NACREOUS_WARMUP:
            products[step] = lr * _sharpness(model, F.mse_loss, *probe)

    _train(ctx, model, opt, data, 120, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("lr x sharpness is under 2 at the first step", products.get(0, 9.0) < 2.0)
    past = [s for s in sorted(products) if products[s] > 2.0]
    ctx.check(
        f"lr x sharpness (probed every 4 steps) first passes 2 at step {NACREOUS_ONSET}",
        bool(past) and past[0] == NACREOUS_ONSET,
    )
    ctx.check(
        "the loss blows up to over 100x its lowest value",
        (not _finite(ls)) or max(ls) > 100 * min(ls),
    )


# -- ploughing match: the cm conversion is applied in place to the cached targets every epoch ----


@scenario(
    family="ploughing_match_furrow_offset_cached_target_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a ploughing-match furrow's offset from nine readings on a cached 320-row data set, RAdam at 3e-3, MSE, 300 steps (10 batches an epoch). The loader's to_cm() scales the cached target tensor in place (mul_ by 1.08) at the start of every epoch instead of returning a copy: the targets drift ever further, the loss falls to its lowest around step 120 and then climbs slowly to over 5x its lowest 20-step mean, with no 10-step mean over 3x the one before and no non-finite value.",
)
def h357_ploughing_inplace_unit_conversion(ctx: Context) -> None:
    gen = seeded(35710)
    model = Trunk(9, hidden=48, act=nn.Tanh)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(3580)
    xs = torch.randn(320, 9, generator=g)
    w = torch.randn(9, generator=g)
    ys = torch.tanh(xs @ w / 3) + 0.05 * torch.randn(320, generator=g)
    epoch = 10  # batches of 32

    def batches():
        while True:
            order = torch.randperm(320, generator=gen)
            # the loader's to_cm() scales the cached target tensor in place, every epoch
            ys.mul_(1.08)
            for i in range(epoch):
                idx = order[32 * i : 32 * (i + 1)]
                yield xs[idx], ys[idx].clone()

    _train(ctx, model, opt, batches(), 300, F.mse_loss)
    ls = ctx.losses
    lows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    ctx.check(
        "the last 20 steps' loss is over 5x the lowest 20-step mean",
        _mean(ls[-20:]) > 5 * min(lows),
    )
    tens = [_mean(ls[i : i + 10]) for i in range(0, len(ls), 10)]
    ctx.check(
        "no 10-step mean is over 3x the one before (a climb, not a spike)",
        all(b < 3 * a for a, b in zip(tens[:-1], tens[1:], strict=True)),
    )
    ctx.check("finite throughout", _finite(ls))


# -- charango (control): conv + GRU CTC transcriber, zero_infinity and clipping -------------------

STRUMS = 5  # strum kinds; CTC blank is 0, kinds are 1..5


class StrumTranscriber(nn.Module):
    """conv (Conv1d over 8 pickup channels) -> act -> gru -> head, log-probs (T, B, 6)."""

    def __init__(self, d_in=8, width=32, hidden=48):
        super().__init__()
        self.conv = nn.Conv1d(d_in, width, 3, padding=1)
        self.act = nn.ReLU()
        self.gru = nn.GRU(width, hidden, batch_first=True)
        self.head = nn.Linear(hidden, STRUMS + 1)

    def forward(self, x):
        h = self.act(self.conv(x.transpose(1, 2))).transpose(1, 2)
        out, _ = self.gru(h)
        return self.head(out).log_softmax(-1).transpose(0, 1)


def _strums(gen, batch, seed, frames=40):
    """Pickup traces: 3-6 strums, each 4-6 frames of its kind's pattern, gaps of noise; targets
    padded with 0, lengths alongside."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(STRUMS + 1, 8, generator=g)
    while True:
        x = 0.3 * torch.randn(batch, frames, 8, generator=gen)
        targets = torch.zeros(batch, 6, dtype=torch.long)
        lengths = torch.zeros(batch, dtype=torch.long)
        for b in range(batch):
            n = int(torch.randint(3, 7, (1,), generator=gen))
            t = int(torch.randint(0, 3, (1,), generator=gen))
            for i in range(n):
                k = int(torch.randint(1, STRUMS + 1, (1,), generator=gen))
                dur = int(torch.randint(4, 7, (1,), generator=gen))
                x[b, t : t + dur] += protos[k]
                targets[b, i] = k
                t += dur + 1
            lengths[b] = n
        yield x, (targets, lengths)


@scenario(
    family="charango_strum_ctc_conv_gru_transcriber",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written conv + GRU transcriber (conv: Conv1d over 8 pickup channels, act, gru, head; log-softmax) labelling a charango's strum kinds (five, blank 0) in 40-frame generated pickup traces holding 3-6 strums, CTC loss with zero_infinity=True, AdamW at 3e-3 with weight decay, 20-step warm-up then cosine, gradient clipping at 1.0, 200 steps: the loss falls by over 60%, finite.",
)
def h357_charango_ctc_control(ctx: Context) -> None:
    gen = seeded(35711)
    model = StrumTranscriber()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)

    def loss_fn(logp, y):
        targets, lengths = y
        frames = torch.full((logp.shape[1],), logp.shape[0], dtype=torch.long)
        return ctc(logp, targets, frames, lengths)

    _train(ctx, model, opt, _strums(gen, 16, 3581), steps, loss_fn, sched=sched, clip=1.0)
    ctx.check("the loss fell by over 60%", _fell(ctx.losses, ratio=0.4))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- bandy (control): Conv1d shot classifier, SGD Nesterov, OneCycleLR, label smoothing ----------


class ShotConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _shots(gen, batch, classes=4, length=64):
    """Stick-and-ball acoustic traces: a decaying ring at a class-specific pitch plus noise."""
    t = torch.arange(length).float()
    freqs = torch.tensor([0.06, 0.11, 0.17, 0.24])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        ring = torch.sin(2 * math.pi * freqs[y][:, None] * t + phase) * torch.exp(-t / 30)
        yield ring + 0.4 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="bandy_ball_shot_ring_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, head on the mean over time) naming a bandy shot (four) from a 64-sample stick-and-ball ring trace, SGD Nesterov under OneCycleLR (max 0.1), cross-entropy with label smoothing 0.1, clipping at 2.0, 180 steps: the loss falls by over 40%, finite.",
)
def h357_bandy_onecycle_control(ctx: Context) -> None:
    gen = seeded(35712)
    model = ShotConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=180)
    _train(
        ctx,
        model,
        opt,
        _shots(gen, 48),
        180,
        nn.CrossEntropyLoss(label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=2.0,
    )
    ctx.check("the loss fell by over 40%", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- canyoning (control): fp16 autocast, GradScaler, ReduceLROnPlateau, Huber ---------------------


@scenario(
    family="canyoning_flash_flood_stage_fp16_huber_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a canyon's flash-flood stage (standardised) from twelve readings, Adam at 2e-3 under fp16 autocast with a torch.amp.GradScaler (init scale 1024), ReduceLROnPlateau on a held-out batch, Huber loss (delta 0.5), clipping at 1.0, 200 steps: the loss falls by over half, finite, the scale never backs off.",
)
def h357_canyoning_fp16_plateau_control(ctx: Context) -> None:
    gen = seeded(35713)
    model = Trunk(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    data = _readings(gen, 32, 12, 3583)
    held = next(data)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _train(
        ctx,
        model,
        opt,
        data,
        200,
        nn.HuberLoss(delta=0.5),
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell by over half", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the scale never fell below its start", min(ctx.scales) >= 1024.0)
