"""Held-out set 299 (``h299_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a gem-facet cut-style GELU classifier whose temperature was read in percent (softmax
collapse), a log-rolling bout-duration GELU regressor whose restored loss normaliser weights one
step 1e5x (Adam's second moment poisoned), a gyotaku fish-print smudge BCE net with an unclamped
log feature layer (a zero densitometer reading, NaN), a canyoneering rappel-anchor SiLU regressor
whose remainder window sums instead of averaging (one gradient spike), a crevasse-rescue
haul-force ReLU regressor fed one team's log in newtons (data outlier), a pointillist
dot-density two-group Gaussian-NLL regressor whose trunk lr was typed 1e-9 (update ratio), a
geoduck dig-depth SiLU regressor with a sign-flipped hand-written weight decay (slow climb), a
seagrass canopy-sway 12-layer tanh MLP with its init gain applied twice over (gradients grow
through depth), a rush-chair seat-weave tanh regressor whose warm-up peak was typed 10x
(past 2/sharpness), a hammered-dulcimer course ReLU classifier with an lr taken from the wrong
sweep column (ReLUs die). Controls: a beach wrack-line debris point-set classifier with max and
mean pooling and 20% flipped labels, a rockhound geode-crystal fp16 GELU classifier with a
GradScaler, OneCycleLR and label smoothing, a bowhunting arrow-drop Huber regressor with RMSprop,
accumulation, clipping and ReduceLROnPlateau.

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
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    scale_of=None,
):
    """The file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``after(step)`` after the optimizer step, ``scale_of(step)`` the factor each micro-batch's
    loss is multiplied by before backward (1/accumulate unless a bug says otherwise). Logs the
    unweighted loss; stops after a non-finite one."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        f = scale_of(step) if scale_of is not None else 1.0 / accumulate
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = f * loss
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


def _readings(gen, batch, d_in, seed, noise=0.05, heavy=False):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        e = torch.randn(batch, generator=gen)
        if heavy:  # Student-t with 3 degrees of freedom
            e = e / torch.sqrt((torch.randn(batch, 3, generator=gen) ** 2).mean(1))
        yield x, y + noise * e


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, with activation modules."""

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


# -- gem facet: the temperature read in percent, the softmax collapses ---------------------------


class TemperedStack(Stack):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="gem_facet_cut_style_tempered_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying which cut a lapidary's faceting machine is grinding (8 styles: brilliant, step, cushion, ...) from 16 standardised readings (dop angle, lap speed, index gear, facet reflectance), the head's logits divided by a temperature, Adamax at 2e-3, cross-entropy, 200 steps. The config gives `temperature: 0.5` and the loader, written for a field given in percent, divides it by 100: the logits are multiplied by 200, the classifier saturates, and over a third of the rows' float32 softmax gives the target exactly 1.0 (their gradient is exactly zero). Finite, no blow-up.",
)
def h299_gem_facet_temperature_percent(ctx: Context) -> None:
    gen = seeded(29901)
    model = TemperedStack(16, 64, 8, temperature=0.5 / 100)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    probe_x, probe_y = next(
        _kinds(torch.Generator().manual_seed(11), 512, 16, 8, seed=901, noise=0.6)
    )
    collapsed: list[float] = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                collapsed.append(collapsed_fraction(model(probe_x), probe_y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 8, seed=901, noise=0.6),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    with torch.no_grad():
        peak = float(model(probe_x).abs().max())
    ctx.check("over a third of the rows' softmax is exactly 1.0", collapsed[-1] > 1 / 3)
    ctx.check("almost none were collapsed at the start", collapsed[0] < 0.05)
    ctx.check("the peak logit is over 50", peak > 50)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- log rolling: a restored normaliser weights one step 1e5x, Adam's second moment poisoned ------

ONSET_LOG = 60


@scenario(
    family="log_rolling_bout_duration_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_LOG,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing how long a birling (log-rolling) bout lasts from 10 standardised readings (log diameter, water temperature, the two rollers' weights and foot speed), Adam at 1e-3, MSE divided by a running target variance, 220 steps. The job is pre-empted and resumed at step 60; the running variance was not in the checkpoint and restarts at its 1e-5 floor for that one step, so the step's loss (on ordinary data) is weighted 1e5 before backward: one gradient 1e5x the usual lands in Adam's second moment, which then dwarfs every ordinary gradient for hundreds of steps: the updates shrink over 10x and the loss stalls well above where the run was heading.",
)
def h299_log_rolling_restored_normaliser(ctx: Context) -> None:
    gen = seeded(29902)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves: list[float] = []
    prev = [_flat(model)]

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=902),
        220,
        F.mse_loss,
        after=after,
        scale_of=lambda s: 1e5 if s == ONSET_LOG else 1.0,
    )
    g, ls = ctx.grad_norms, ctx.losses
    before_moves = _median(moves[ONSET_LOG - 30 : ONSET_LOG])
    ctx.check(
        "the gradient at the restart step is over 1e4x the usual",
        g[ONSET_LOG] > 1e4 * _median(g[ONSET_LOG - 20 : ONSET_LOG]),
    )
    ctx.check(
        "the updates after it are over 10x smaller than before",
        _median(moves[ONSET_LOG + 60 : ONSET_LOG + 120]) < 0.1 * before_moves,
    )
    ctx.check(
        "the loss stalls: the last 40 steps are no better than steps 100-140",
        _mean(ls[-40:]) > 0.9 * _mean(ls[100:140]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- gyotaku: a log feature layer without a clamp meets a zero densitometer reading --------------

ONSET_GYO = 90


class LogFeatures(nn.Module):
    """log of the first ``k`` (positive) readings, the rest passed through."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return torch.cat([torch.log(x[:, : self.k]), x[:, self.k :]], 1)


class PrintNet(nn.Module):
    def __init__(self, d_in=10, k=4, hidden=48):
        super().__init__()
        self.logf = LogFeatures(k)
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.logf(x)))).squeeze(-1)


def _prints(gen, batch, seed):
    """Ink densities (positive, log-normal) and paper/press readings; label: the print smudged."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        dens = torch.exp(0.5 * torch.randn(batch, 4, generator=gen))
        rest = torch.randn(batch, 6, generator=gen)
        feats = torch.cat([torch.log(dens), rest], 1)
        p = torch.sigmoid(4.0 * feats @ w / math.sqrt(10))
        y = (torch.rand(batch, generator=gen) < p).float()
        yield torch.cat([dens, rest], 1), y


@scenario(
    family="gyotaku_fish_print_smudge_log_feature_bce_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("logf",),
    diverges=ONSET_GYO,
    heldout=True,
    onset=ONSET_GYO,
    note="A SiLU net predicting whether a gyotaku fish print (ink pressed onto washi from the fish) will smudge, from 4 ink-densitometer readings (taken through a log feature layer, logf) and 6 standardised paper and press readings; RAdam at 1e-2, BCE with logits, 200 steps planned. The log has no clamp or epsilon; at step 90 one print's densitometer, lifted off the paper, reads 0.0: log 0 = -inf in logf, -inf times fc1's mixed-sign weights gives inf - inf, the output and the loss are NaN at step 90.",
)
def h299_gyotaku_log_zero_density(ctx: Context) -> None:
    gen = seeded(29903)
    model = PrintNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)

    def alter(step, x, y):
        if step == ONSET_GYO:
            x = x.clone()
            x[5, 2] = 0.0
        return x, y

    stopped = _train(
        ctx,
        model,
        opt,
        _prints(gen, 64, seed=903),
        200,
        F.binary_cross_entropy_with_logits,
        alter=alter,
    )
    ls = ctx.losses
    ctx.check("finite before the zero reading", _finite(ls[:ONSET_GYO]))
    ctx.check("the loss is NaN at step 90", len(ls) > ONSET_GYO and math.isnan(ls[ONSET_GYO]))
    ctx.check("the run stopped there", stopped == ONSET_GYO)
    ctx.check("it was learning before", _mean(ls[70:90]) < _mean(ls[:10]))


# -- canyoneering: the remainder window sums instead of averaging ------------------------------

ONSET_CAN, ACC_CAN, BATCH_CAN = 80, 4, 32


@scenario(
    family="canyoneering_rappel_anchor_load_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CAN,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the peak load on a canyoneering rappel anchor from 10 standardised readings (rope stretch, descent speed, waterfall flow, body weight, rope angle), SGD Nesterov momentum 0.9 at 5e-3, MSE, accumulation over 4 micro-batches of 32, clipping at 1.0, 170 steps. Step 80 is the epoch's remainder window, handled by a separate branch that computes the loss with reduction='sum' and forgets the /4: that one step backpropagates 128x the usual gradient on ordinary data. Clipping bounds the step and the run goes on training.",
)
def h299_canyoneering_remainder_sum(ctx: Context) -> None:
    gen = seeded(29904)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, BATCH_CAN, 10, seed=904),
        170,
        F.mse_loss,
        accumulate=ACC_CAN,
        clip=1.0,
        scale_of=lambda s: float(BATCH_CAN) if s == ONSET_CAN else 1.0 / ACC_CAN,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_CAN - 20 : ONSET_CAN])
    ctx.check("the gradient at the remainder step is over 50x the usual", g[ONSET_CAN] > 50 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_CAN + 1 : ONSET_CAN + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on that step's batch is ordinary",
        ls[ONSET_CAN] < 2.0 * _mean(ls[ONSET_CAN - 10 : ONSET_CAN]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- crevasse rescue: one team's haul log in newtons --------------------------------------------

ONSET_CRE = 100


@scenario(
    family="crevasse_rescue_haul_force_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CRE,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the force on a crevasse-rescue haul line (a Z-pulley) from 8 standardised readings (victim weight, lip friction, pulley count, rope angle, team size), SGD momentum 0.9 at 1e-2, MSE, clipping at 5.0, 200 steps. One guiding school's logs record the haul force in newtons where every other school writes kN (after standardisation about 1000x); the shuffle puts six of its rows in the batch at step 100: the loss there is over 100x the usual, clipping bounds the update, and the run recovers.",
)
def h299_crevasse_rescue_newton_shard(ctx: Context) -> None:
    gen = seeded(29905)
    model = Stack(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_CRE:
            y = y.clone()
            y[:6] = y[:6] * 1000.0 + 500.0
        return x, y

    _train(ctx, model, opt, _readings(gen, 32, 8, seed=905), 200, F.mse_loss, alter=alter, clip=5.0)
    ls = ctx.losses
    before = _mean(ls[ONSET_CRE - 20 : ONSET_CRE])
    ctx.check("the loss at the bad batch is over 100x the usual", ls[ONSET_CRE] > 100 * before)
    ctx.check("the run recovers", _mean(ls[-20:]) < 2.0 * before)
    ctx.check("the loss fell before it", _fell(ls[:ONSET_CRE]))
    ctx.check("finite throughout", _finite(ls))


# -- pointillist: the trunk's lr typed 1e-9, the trunk never moves -------------------------------


class DotNet(Stack):
    """Gaussian output: mean and log-variance of the dot density."""

    def __init__(self):
        super().__init__(12, 64, out=2, act=nn.ReLU)

    def forward(self, x):
        return self.head(self.features(x))


def _gauss_nll(out, y):
    mu, s = out[:, 0], out[:, 1]
    return F.gaussian_nll_loss(mu, y, F.softplus(s) + 1e-3)


@scenario(
    family="pointillist_dot_density_two_group_gaussian_nll_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) giving the mean and variance of the dot density a pointillist painter lays in a patch (Gaussian NLL) from 12 standardised readings (brush size, paint viscosity, hue distance, viewing distance), Adagrad in two param groups, the trunk (fc1, fc2) and the head. The trunk's lr was meant as 1e-2 and typed 1e-9 (the exponent of the head's warm-up line pasted): the trunk's updates are about 1e-9 of its weights, it never moves (under 1e-5 of its norm over 250 steps) while the head trains on random features. Finite, no blow-up.",
)
def h299_pointillist_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(29906)
    model = DotNet()
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-2}]
    )
    t0, h0 = _flat(nn.ModuleList([model.fc1, model.fc2])), _flat(model.head)
    _train(ctx, model, opt, _readings(gen, 64, 12, seed=906), 250, _gauss_nll)
    t1, h1 = _flat(nn.ModuleList([model.fc1, model.fc2])), _flat(model.head)
    ctx.check("the trunk moved under 1e-5 of its norm", (t1 - t0).norm() < 1e-5 * t0.norm())
    ctx.check("the head moved over 5% of its norm", (h1 - h0).norm() > 0.05 * h0.norm())
    ctx.check("finite throughout", _finite(ctx.losses))


# -- geoduck: the hand-written weight decay with its sign flipped --------------------------------


@scenario(
    family="geoduck_dig_depth_silu_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how deep a geoduck clam digger must go from 10 standardised readings (siphon show size, sand grain, tide height, substrate firmness), ASGD at 1e-2, MSE, 300 steps, decoupled weight decay written by hand after the step as `p.mul_(1 + lr * wd)` with wd 0.4 (the sign of the decay flipped): every weight grows 0.4% a step, the loss falls for about 150 steps, then climbs slowly to over 2x its best while the weights' norm grows. Finite, no blow-up.",
)
def h299_geoduck_decay_sign(ctx: Context) -> None:
    gen = seeded(29907)
    model = Stack(10, 64, act=nn.SiLU)
    lr, wd = 1e-2, 0.4
    opt = torch.optim.ASGD(model.parameters(), lr=lr)
    n0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    _train(ctx, model, opt, _readings(gen, 32, 10, seed=907), 300, F.mse_loss, after=after)
    ls = ctx.losses
    best = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10, 5))
    ctx.check("the loss fell first", best < 0.5 * _mean(ls[:10]))
    ctx.check("then climbed to over 2x its best", _mean(ls[-10:]) > 2 * best)
    ctx.check("the weights' norm grew over 2x", float(_flat(model).norm()) > 2 * n0)
    ctx.check("finite throughout", _finite(ls))


# -- seagrass: a 12-layer tanh MLP with its init gain applied twice over --------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in=8, width=48, depth=12, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1)
        self.layers = nn.ModuleList(nn.Linear(a, width) for a in sizes)
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


GAIN_SEA = 5.0


@scenario(
    family="seagrass_meadow_canopy_sway_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP (layers.0 .. layers.11, head) regressing how far an eelgrass meadow's canopy sways from 8 standardised readings (current speed, wave period, shoot density, blade length), plain SGD at 1e-3, MSE, 150 steps. The init helper multiplies the std by the tanh gain 5/3 and the model builder, also meaning to apply it, multiplies by the config's `gain: 3.0` (5.0 in all, for 1/sqrt(fan_in) x 5/3): the net starts in the chaotic regime and the backpropagated gradient grows through depth, layers.0's weight gradient over 20x layers.11's, all run. Finite, no blow-up at this lr.",
)
def h299_seagrass_double_gain(ctx: Context) -> None:
    gen = seeded(29908)
    model = DeepTanh(gain=GAIN_SEA)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios: list[float] = []
    orig = opt.step

    def step_with_ratio(*a, **k):
        first = float(model.layers[0].weight.grad.norm())
        last = float(model.layers[-1].weight.grad.norm())
        ratios.append(first / max(last, 1e-30))
        return orig(*a, **k)

    opt.step = step_with_ratio
    _train(ctx, model, opt, _readings(gen, 32, 8, seed=908), 150, F.mse_loss)
    ctx.check("layers.0's gradient is over 20x layers.11's at the start", ratios[0] > 20)
    ctx.check("and over 20x at the median step", _median(ratios) > 20)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- rush chair: the warm-up peak lr typed 10x, past 2/sharpness -------------------------------


def _sharpness(model, x, y, iters=12):
    """Top Hessian eigenvalue of the MSE loss on (x, y) by power iteration."""
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


PEAK_RUSH, WARM_RUSH = 0.8, 40


@scenario(
    family="rush_chair_seat_weave_tension_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=16,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the tension a chair-seat rusher must keep in a twisted-rush weave from 8 standardised readings (rush moisture, seat width, corner count, twist rate), plain SGD, MSE, a linear warm-up over 40 steps to a peak lr typed 0.8 for 0.08. As the warm-up passes 2/sharpness, lr x the top Hessian eigenvalue (measured every 4 steps) crosses 2 at about step 16, the iterates oscillate along the sharpest direction with growing amplitude and the loss blows up.",
)
def h299_rush_chair_warmup_peak(ctx: Context) -> None:
    gen = seeded(29909)
    model = Stack(8, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    px, py = next(_readings(torch.Generator().manual_seed(13), 256, 8, seed=909))
    products: list[tuple[int, float]] = []

    def before(step):
        lr = PEAK_RUSH * min(1.0, (step + 1) / WARM_RUSH)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 4 == 0 and step < 60:
            products.append((step, lr * _sharpness(model, px, py)))

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=909), 150, F.mse_loss, before=before)
    ls = ctx.losses
    low = min(ls)
    cross = next((s for s, p in products if p > 2.0), None)
    ctx.check("lr x sharpness crosses 2", cross is not None)
    ctx.check("it was under 2 at the start", products[0][1] < 2.0)
    ctx.check(
        "the loss blows up (over 100x its low, or non-finite)",
        not _finite(ls) or max(ls) > 100 * low,
    )


# -- hammered dulcimer: an lr from the wrong sweep column, the ReLUs die -------------------------


@scenario(
    family="hammered_dulcimer_course_strike_relu_classifier",
    optimizer="AdamW",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying which course of a hammered dulcimer was struck (10 courses) from 16 standardised readings of a bridge pickup's spectrum, AdamW, cross-entropy, 200 steps. The launcher swapped two columns of the sweep table, lr 0.3 and weight decay 3e-4 for lr 3e-4 and weight decay 0.3: the big normalised steps push most of fc2's units negative on every input, their gradient is exactly zero and they never come back: over half of fc2 is dead by step 50 and over 3/4 at the end, and the loss stays near chance.",
)
def h299_hammered_dulcimer_lr_column(ctx: Context) -> None:
    gen = seeded(29910)
    model = Stack(16, 64, out=10)
    opt = torch.optim.AdamW(model.parameters(), lr=0.3, weight_decay=3e-4)
    probe = next(_kinds(torch.Generator().manual_seed(17), 512, 16, 10, seed=910, noise=0.8))[0]
    dead: list[float] = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe))))))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 10, seed=910, noise=0.8),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ls = ctx.losses
    ctx.check("under 30% of fc2 was dead after the first step", dead[0] < 0.3)
    ctx.check("over half of fc2 is dead at step 50", dead[50] > 0.5)
    ctx.check("over 3/4 of fc2 is dead at the end", dead[-1] > 0.75)
    ctx.check(
        "the loss stays high: the last 20 steps over 60% of the first",
        _mean(ls[-20:]) > 0.6 * _mean(ls[:1]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ------------------------------------------------------------------------------------


class PointSetNet(nn.Module):
    """A per-point MLP (point1, point_act1, point2, point_act2), max and mean pooled over the
    set, then a head (fc, act, out)."""

    def __init__(self, d_point=3, width=48, classes=4):
        super().__init__()
        self.point1 = nn.Linear(d_point, width)
        self.point_act1 = nn.ReLU()
        self.point2 = nn.Linear(width, width)
        self.point_act2 = nn.ReLU()
        self.fc = nn.Linear(2 * width, width)
        self.act = nn.ReLU()
        self.out = nn.Linear(width, classes)

    def forward(self, pts):
        h = self.point_act2(self.point2(self.point_act1(self.point1(pts))))
        pooled = torch.cat([h.max(1).values, h.mean(1)], -1)
        return self.out(self.act(self.fc(pooled)))


def _wrack(gen, batch, n=32, flip=0.2, classes=4):
    """Sets of n debris points (x, y, height) on a beach: a straight strandline, an arc, a
    cluster, or a scatter, randomly placed and rotated; a share ``flip`` of labels replaced."""
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        t = torch.rand(batch, n, generator=gen) * 2 - 1
        jitter = 0.08 * torch.randn(batch, n, 2, generator=gen)
        line = torch.stack([t, torch.zeros_like(t)], -1)
        arc = torch.stack([torch.sin(1.5 * t), torch.cos(1.5 * t) - 0.8], -1)
        cluster = 0.25 * torch.randn(batch, n, 2, generator=gen)
        scatter = torch.rand(batch, n, 2, generator=gen) * 2 - 1
        shapes = torch.stack([line, arc, cluster, scatter], 1)
        xy = shapes[torch.arange(batch), y] + jitter
        ang = torch.rand(batch, generator=gen) * 2 * math.pi
        c, s = torch.cos(ang)[:, None], torch.sin(ang)[:, None]
        xy = torch.stack([c * xy[..., 0] - s * xy[..., 1], s * xy[..., 0] + c * xy[..., 1]], -1)
        xy = xy + 0.3 * torch.randn(batch, 1, 2, generator=gen)
        z = 0.1 * torch.randn(batch, n, 1, generator=gen)
        noisy = y.clone()
        swap = torch.rand(batch, generator=gen) < flip
        noisy[swap] = torch.randint(0, classes, (int(swap.sum()),), generator=gen)
        # a replaced label may land on the true class; flip those to a different class
        same = swap & (noisy == y)
        noisy[same] = (y[same] + 1) % classes
        yield torch.cat([xy, z], -1), noisy, y


@scenario(
    family="wrack_line_debris_point_set_classifier",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written point-set network (a shared per-point MLP point1, point_act1, point2, point_act2; max and mean pooling over the set; head fc, act, out) classifying the pattern of a beach's wrack line (strandline, arc, cluster, scatter) from 32 surveyed debris points (x, y, height), randomly placed and rotated; 20% of the labels flipped to another class (surveyors disagree), NAdam at 2e-3, a linear warm-up over 20 steps then cosine decay, clipping at 1.0, cross-entropy, 220 steps.",
)
def h299_wrack_line_point_set_noisy(ctx: Context) -> None:
    gen = seeded(29911)
    model = PointSetNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    steps = 220
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))
        ),
    )
    stream = _wrack(gen, 64)
    flipped: list[float] = []

    def batches():
        while True:
            x, noisy, clean = next(stream)
            flipped.append(float((noisy != clean).float().mean()))
            yield x, noisy

    _train(
        ctx, model, opt, batches(), steps, F.cross_entropy, classifier=True, clip=1.0, sched=sched
    )
    px, _, py = next(_wrack(torch.Generator().manual_seed(19), 512, flip=0.0))
    with torch.no_grad():
        acc = float((model(px).argmax(-1) == py).float().mean())
    ctx.check("about 20% of the labels were flipped", 0.15 < _mean(flipped) < 0.25)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.85))
    ctx.check("over 80% accuracy on clean labels", acc > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="rockhound_geode_crystal_habit_fp16_gelu_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying the crystal habit inside a cracked geode (6 habits: quartz, amethyst, calcite, celestine, ...) from 14 standardised readings (shell density, rind thickness, tap resonance, cavity size), fp16 autocast with a torch.amp.GradScaler, SGD momentum 0.9 in two param groups (weights with decay 5e-4, biases without), OneCycleLR to 0.1, label smoothing 0.1, clipping at 1.0 after unscale_, 200 steps.",
)
def h299_rockhound_geode_fp16(ctx: Context) -> None:
    gen = seeded(29912)
    model = Stack(14, 64, out=6, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    nodecay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": nodecay, "weight_decay": 0.0}],
        lr=0.01,
        momentum=0.9,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 6, seed=912),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the scale never fell below 1024", min(ctx.scales) >= 1024)


@scenario(
    family="bowhunting_arrow_drop_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing an arrow's drop at the target from 10 standardised readings (draw weight, arrow mass, fletching, range, crosswind), heavy-tailed (Student-t) rangefinder noise in the targets, Huber loss, RMSprop at 1e-3, accumulation over 2 micro-batches, clipping at 1.0, ReduceLROnPlateau (factor 0.5, patience 10), 200 steps.",
)
def h299_bowhunting_arrow_drop(ctx: Context) -> None:
    gen = seeded(29913)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=913, noise=0.1, heavy=True),
        200,
        F.huber_loss,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
