"""Held-out set 318 (``h318_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a wire-drawing die pull-force deep tanh regressor initialised with a
fixed std meant for a 4-wide prototype (gradients grow through depth, LayerNorm before the head),
a kambala buffalo-race GELU regressor whose loss is divided by the previous epoch's one-row tail
batch for one step (one gradient burst), a jallikattu bull-hold GELU classifier that applies a
pseudo-label sharpening temperature to the supervised logits (softmax saturates), a fellmonger
pelt wool-yield wide-and-deep regressor whose wide group's learning rate is typed 1e-9 (wide path
frozen), a pillow-lava lobe-count Poisson net whose rate is a ReLU (log 0, NaN), a kegel nine-pin
ReLU regressor fed one lane's batch with ball speed in mm/s (one corrupted batch), a tar-barrel run
SiLU regressor whose evaluation hook leaves the EMA weights in the live model (one loss spike), a
rag-rug hooking tanh regressor whose tension gauge's gain creeps from step 60 (slow climb), a
cave-pearl coating multi-label net whose 'abundant' code 2 reaches BCE as a target (head logits
grow without bound), a camel-wrestling bout-length tanh regressor whose OneCycleLR peak is typed
2.0 for 0.2 (past the 2/sharpness limit), and three controls (a rat-catcher terrier catch-kind
classifier on imbalanced classes with SGD Nesterov, a pumpkin-regatta paddle-stroke fp16 GELU
classifier with a GradScaler, a pillow-fight swing tied-weight autoencoder on Adadelta).

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


def _rel_move(module: nn.Module, before: torch.Tensor) -> float:
    now = torch.cat([p.detach().flatten() for p in module.parameters()])
    return float((now - before).norm() / (before.norm() + 1e-12))


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


def _readings(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised instrument readings and smooth nonlinear targets of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w / math.sqrt(d_in)
        y = torch.tanh(1.4 * z) + 0.5 * torch.sin(1.2 * x @ v / math.sqrt(d_in)) - 0.2
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


def _kinds(gen, batch, d_in, classes, seed, spread=0.9, weights=None):
    """Readings scattered around one prototype per class; ``weights`` makes classes imbalanced."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    probs = torch.ones(classes) if weights is None else torch.tensor(weights, dtype=torch.float)
    while True:
        y = torch.multinomial(probs, batch, replacement=True, generator=gen)
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


# -- wire drawing: a fixed init std meant for a 4-wide prototype ---------------------------------


class DieStack(nn.Module):
    """inp -> 14 tanh layers (layers.0 .. layers.13) -> norm (LayerNorm) -> head."""

    def __init__(self, d_in=12, width=64, depth=14, init_std=None):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)
        if init_std is not None:
            for layer in self.layers:
                nn.init.normal_(layer.weight, std=init_std)
                nn.init.zeros_(layer.bias)
        self.signals: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        self.signals = []
        for layer in self.layers:
            h = layer(h)
            if h.requires_grad:
                h.retain_grad()
            self.signals.append(h)
            h = torch.tanh(h)
        return self.head(self.norm(h)).squeeze(-1)


def _backward_ratio(model: DieStack, x, y) -> tuple[float, float]:
    """Gradient of the loss with respect to layers.0's and layers.13's pre-activations, and of
    their weights: (signal ratio first/last, weight-gradient ratio first/last)."""
    model.zero_grad(set_to_none=True)
    F.mse_loss(model(x), y).backward()
    s = model.signals
    sig = float(s[0].grad.norm() / (s[-1].grad.norm() + 1e-30))
    w = float(model.layers[0].weight.grad.norm() / (model.layers[-1].weight.grad.norm() + 1e-30))
    model.zero_grad(set_to_none=True)
    return sig, w


@scenario(
    family="wire_drawing_die_pull_force_deep_layernorm_tanh_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A deep tanh MLP (inp, fourteen 64-wide hidden layers layers.0 .. layers.13, a LayerNorm norm, head) regressing the pull force on a wire-drawing die from 12 standardised readings of wire gauge, reduction, lubricant, die wear and speed, plain SGD at 1e-2, MSE, gradient clipping at 1.0, 150 steps. The init helper was written for a 4-wide prototype and draws every hidden weight with a fixed std of 0.5 (right for fan-in 4, 1/sqrt(4)); on the 64-wide layers that is a gain of 0.5 x sqrt(64) = 4 per layer. The LayerNorm before the head keeps the output in range, but the backward signal is multiplied by about 4 x tanh' at every layer: layers.0's gradient is orders of magnitude above layers.13's, and clipping only rescales the whole vector.",
)
def h318_wire_drawing_fixed_init_std(ctx: Context) -> None:
    gen = seeded(31801)
    model = DieStack(init_std=0.5)
    twin = DieStack(init_std=1.0 / 8.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    batches = _readings(gen, 64, 12, seed=411)
    x0, y0 = next(batches)
    sig, wr = _backward_ratio(model, x0, y0)
    sig_twin, _ = _backward_ratio(twin, x0, y0)
    _loop(ctx, model, opt, batches, 150, F.mse_loss, clip=1.0)
    sig_end, _ = _backward_ratio(model, x0, y0)
    ctx.check("layers.0's backward signal is over 100x layers.13's at init", sig > 100)
    ctx.check("layers.0's weight gradient is over 50x layers.13's at init", wr > 50)
    ctx.check("a correctly scaled twin (std 1/sqrt(64)) has a ratio under 5", sig_twin < 5)
    ctx.check("the ratio is still over 20x at the end of the run", sig_end > 20)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kambala: the loss divided by the previous epoch's one-row tail batch ------------------------

ONSET_KAM = 120


@scenario(
    family="kambala_buffalo_race_time_gelu_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KAM,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a kambala (buffalo race in a flooded paddy) pair's run time from 10 standardised readings of track depth, mud, pair weight and handler, SGD momentum 0.9 at 1e-2, MSE summed over the rows and divided by the batch size, gradient clipping at 2.0, 240 steps. The divisor is taken from len(batch) of the previous loader iteration; at step 120, the first step of a new epoch, that is the last epoch's one-row tail batch, so the loss of an ordinary 64-row batch is divided by 1 instead of 64 for that one step: the gradient is 64x the usual. Clipping bounds the step and the run carries on.",
)
def h318_kambala_tail_batch_divisor(ctx: Context) -> None:
    gen = seeded(31802)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def backprop(step, out, y, loss, accumulate):
        n = 1 if step == ONSET_KAM else len(y)
        return ((out - y) ** 2).sum() / n

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=412),
        240,
        F.mse_loss,
        backprop=backprop,
        clip=2.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 120 is over 30x the median of the 30 steps before",
        g[ONSET_KAM] > 30 * _median(g[ONSET_KAM - 30 : ONSET_KAM]),
    )
    ctx.check(
        "the batch itself is ordinary: its mean loss is under 2x the ten steps before",
        ls[ONSET_KAM] < 2 * _mean(ls[ONSET_KAM - 10 : ONSET_KAM]),
    )
    ctx.check(
        "the gradient is back under 3x the median 5 steps on",
        g[ONSET_KAM + 5] < 3 * _median(g),
    )
    ctx.check("the loss fell before the burst", _fell(ls[:ONSET_KAM]))
    ctx.check("finite throughout", _finite(ls))


# -- jallikattu: a pseudo-label sharpening temperature on the supervised logits -------------------


class HoldClassifier(Trunk):
    def __init__(self, temperature):
        super().__init__(14, 64, out=5, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="jallikattu_bull_hold_outcome_gelu_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP classifier (fc1, act1, fc2, act2, head; 14 readings, 5 outcome classes of a jallikattu bull-hold: released, held to the line, thrown, hump slipped, no contact), Adam at 1e-3, cross-entropy, 200 steps. The forward divides the logits by cfg.temperature, which the semi-supervised recipe this was copied from sets to 0.02 to sharpen pseudo-labels; here there are no pseudo-labels and the supervised logits are multiplied by 50. The classes overlap a little, yet within a few dozen steps the float32 softmax of most rows rounds the target's probability to exactly 1.0 and the gradient of those rows is exactly zero.",
)
def h318_jallikattu_sharpening_temperature(ctx: Context) -> None:
    gen = seeded(31803)
    model = HoldClassifier(temperature=0.02)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    frac: list[float] = []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 5, seed=413, spread=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 5% of rows collapsed at step 0", frac[0] < 0.05)
    ctx.check(
        "over a quarter of rows' target softmax is exactly 1.0 over the last 20 steps",
        _mean(frac[-20:]) > 0.25,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- fellmonger: wide-and-deep, the wide group's learning rate typed 1e-9 -------------------------


class PeltWideDeep(nn.Module):
    """Wide path: one linear layer over one-hot crossed categories (breed x season x yard);
    deep path: an MLP over the continuous readings (deep.0, deep.1, deep.2, deep.3, deep.4)."""

    def __init__(self, n_cross, d_cont):
        super().__init__()
        self.wide = nn.Linear(n_cross, 1)
        self.deep = nn.Sequential(
            nn.Linear(d_cont, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 1)
        )

    def forward(self, x):
        cross, cont = x
        return (self.wide(cross) + self.deep(cont)).squeeze(-1)


def _pelts(gen, batch, seed, n_cross=40, d_cont=8):
    g = torch.Generator().manual_seed(seed)
    effect = 0.8 * torch.randn(n_cross, generator=g)
    w = torch.randn(d_cont, generator=g) / math.sqrt(d_cont)
    while True:
        c = torch.randint(0, n_cross, (batch,), generator=gen)
        cont = torch.randn(batch, d_cont, generator=gen)
        y = effect[c] + torch.tanh(cont @ w) + 0.05 * torch.randn(batch, generator=gen)
        yield (F.one_hot(c, n_cross).float(), cont), y


@scenario(
    family="fellmonger_pelt_wool_yield_wide_and_deep_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("wide",),
    diverges=None,
    heldout=True,
    note="A hand-written wide-and-deep regressor of the wool a fellmonger pulls from a sheepskin (wide: one linear layer over 40 one-hot crossed categories of breed, season and yard; deep: a ReLU MLP deep.0 .. deep.4 over 8 standardised pelt readings; their outputs are summed), Adagrad with two parameter groups, MSE, 220 steps. The wide group's learning rate, meant to be 1e-1 (the sparse one-hot path wants a larger rate than the deep path's 1e-2), is typed 1e-9: the wide layer moves by under 1e-6 of its norm over the run and the category effects, which carry most of the target's variance, are never learned; the deep path trains normally and the loss stalls high.",
)
def h318_fellmonger_wide_lr_typo(ctx: Context) -> None:
    gen = seeded(31804)
    model = PeltWideDeep(40, 8)
    opt = torch.optim.Adagrad(
        [
            {"params": model.wide.parameters(), "lr": 1e-9},
            {"params": model.deep.parameters(), "lr": 1e-2},
        ]
    )
    wide0, deep0 = _flat(model.wide), _flat(model.deep[0])
    _loop(ctx, model, opt, _pelts(gen, 64, seed=414), 220, F.mse_loss)
    ctx.check("the wide layer moves under 1e-6 of its norm", _rel_move(model.wide, wide0) < 1e-6)
    ctx.check("deep.0 moves over 1e-2 of its norm", _rel_move(model.deep[0], deep0) > 1e-2)
    ctx.check(
        "the loss stays over 0.3 (the category effects are unlearned)",
        _mean(ctx.losses[-20:]) > 0.3,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pillow lava: the Poisson rate is a ReLU ------------------------------------------------------

DIVERGE_LAV = 31


class LobeCounter(Trunk):
    """A ReLU trunk whose head's output goes through rate = nn.ReLU() to give a Poisson rate."""

    def __init__(self):
        super().__init__(9, 48, out=1, act=nn.ReLU)
        self.rate = nn.ReLU()
        nn.init.constant_(self.head.bias, 1.5)

    def forward(self, x):
        return self.rate(self.head(self.features(x))).squeeze(-1)


def _lobes(gen, batch, seed, d_in=9):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        lam = torch.exp(1.4 * (x @ w) - 0.6)
        yield x, torch.poisson(lam, generator=gen)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


@scenario(
    family="pillow_lava_lobe_count_poisson_relu_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("rate",),
    diverges=DIVERGE_LAV,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head, rate) predicting how many pillow-lava lobes a submersible transect crosses, from 9 standardised readings of effusion rate, slope, depth and sediment, a hand-written Poisson NLL mean(rate - y log rate), RMSprop at 3e-4, 200 steps planned. The rate was made non-negative with rate = nn.ReLU() instead of a softplus or an exp (the head's bias starts at the mean count 1.5). Most transects with few lobes push their rate down; as soon as one row's head output crosses zero the ReLU returns exactly 0, log(0) = -inf, and 0 x -inf (a zero count) or y x -inf makes the loss non-finite.",
)
def h318_pillow_lava_relu_rate(ctx: Context) -> None:
    gen = seeded(31805)
    model = LobeCounter()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    low: list[float] = []

    def watch(step, out, x, y):
        low.append(float(out.detach().min()))

    stop = _loop(ctx, model, opt, _lobes(gen, 64, seed=415), 200, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(f"the loss is first non-finite at step {DIVERGE_LAV}", bad == DIVERGE_LAV)
    ctx.check("the run stopped there", stop == bad)
    ctx.check("every rate was positive at step 0", low[0] > 0)
    ctx.check("a row's rate is exactly 0.0 at that step", bad is not None and low[bad] == 0.0)
    ctx.check("the loss was finite before", bad is not None and _finite(ctx.losses[:bad]))


# -- kegel: one lane's ball speed in mm/s --------------------------------------------------------

ONSET_KEG = 110


@scenario(
    family="kegel_nine_pin_knockdown_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KEG,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the standardised number of pins knocked down in nine-pin kegel bowling from 8 standardised lane-sensor readings (ball speed, entry angle, spin, lane oil), plain SGD at 5e-2, MSE, gradient clipping at 1.0, 240 steps. The batch at step 110 comes from one lane whose sensor box exports ball speed in mm/s and whose file skipped the standardiser: that batch's speed column reads about 7000 instead of about 0. The loss on that one batch is far above the rest and its gradient bursts; clipping bounds the step and the run recovers on the clean batches after it.",
)
def h318_kegel_speed_in_mm(ctx: Context) -> None:
    gen = seeded(31806)
    model = Trunk(8, 48)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)
    peak: list[float] = []

    def alter(step, x, y):
        if step == ONSET_KEG:
            x = x.clone()
            x[:, 0] = 1000.0 * (7.0 + 0.5 * x[:, 0])
        peak.append(float(x.abs().max()))
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=416), 240, F.mse_loss, alter=alter, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "the bad batch's inputs are over 100x the usual", peak[ONSET_KEG] > 100 * _median(peak)
    )
    ctx.check(
        "the loss at step 110 is over 20x the ten steps before",
        ls[ONSET_KEG] > 20 * _mean(ls[ONSET_KEG - 10 : ONSET_KEG]),
    )
    ctx.check(
        "the gradient at step 110 is over 20x the median before",
        g[ONSET_KEG] > 20 * _median(g[ONSET_KEG - 30 : ONSET_KEG]),
    )
    ctx.check(
        "the run recovers to under 2x its pre-outlier loss",
        _mean(ls[-10:]) < 2 * _mean(ls[ONSET_KEG - 10 : ONSET_KEG]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- tar barrel: the evaluation hook leaves the EMA weights in the live model ---------------------

ONSET_TAR = 130


@scenario(
    family="tar_barrel_run_carry_distance_silu_regressor",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TAR,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how far a runner carries a burning tar barrel through the streets (Ottery St Mary) from 9 standardised readings of barrel weight, tar load, crowd density and runner, AdamW at 3e-3 (weight decay 1e-2), MSE, 260 steps, with an exponential moving average of the weights (decay 0.999) kept for evaluation. The evaluation hook after step 129 copies the EMA weights into the live model to validate, and its restore call sits behind a branch that only runs on the first evaluation: from step 130 the run trains on from the EMA weights, which after 130 steps at decay 0.999 are still close to the init. The loss jumps several-fold on ordinary data at step 130 and the run trains back down within a few dozen steps.",
)
def h318_tar_barrel_ema_not_restored(ctx: Context) -> None:
    gen = seeded(31807)
    model = Trunk(9, 64, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    ema = [p.detach().clone() for p in model.parameters()]
    moved: list[float] = []

    def after(step):
        with torch.no_grad():
            for e, p in zip(ema, model.parameters(), strict=True):
                e.mul_(0.999).add_(p.detach(), alpha=0.001)
            if step == ONSET_TAR - 1:
                live = _flat(model)
                for e, p in zip(ema, model.parameters(), strict=True):
                    p.copy_(e)
                moved.append(float((_flat(model) - live).norm() / live.norm()))

    _loop(ctx, model, opt, _readings(gen, 64, 9, seed=417), 260, F.mse_loss, after=after)
    ls = ctx.losses
    pre = _mean(ls[ONSET_TAR - 10 : ONSET_TAR])
    ctx.check("the swap changed the live weights by over 20%", bool(moved) and moved[0] > 0.2)
    ctx.check("the loss at step 130 is over 4x the ten steps before", ls[ONSET_TAR] > 4 * pre)
    ctx.check("the run recovers to under 1.5x its pre-spike loss", _mean(ls[-20:]) < 1.5 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- rag rug: the frame's tension gauge gain creeps as its amplifier warms ----------------------

DRIFT_RUG = 60


@scenario(
    family="rag_rug_hooking_loop_tension_tanh_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=DRIFT_RUG,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the loop tension a rag-rug hooker pulls through hessian backing from 8 standardised readings of strip width, fabric, hook gauge and backing weave, RAdam at 1e-3, MSE, 300 steps, batches in logging order. The logged target comes off a strain-gauge amplifier on the rug frame that was never given its warm-up time: from about step 60 its gain creeps up by 3% of scale per logged minute (one step), so the target keeps stretching faster than the model can follow. After an early fall the loss climbs slowly and steadily to several times its low for the rest of the run, with no single jump and no NaN.",
)
def h318_rag_rug_gauge_gain_drift(ctx: Context) -> None:
    gen = seeded(31808)
    model = Trunk(8, 48, act=nn.Tanh)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    gains: list[float] = []

    def alter(step, x, y):
        gain = 1.0 + 0.03 * max(0, step - DRIFT_RUG)
        gains.append(gain)
        return x, gain * y

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=418), 300, F.mse_loss, alter=alter)
    ls = ctx.losses
    low = min(ls)
    means = [_mean(ls[i : i + 10]) for i in range(0, len(ls), 10)]
    jumps = max(b / a for a, b in zip(means[:-1], means[1:], strict=True))
    ctx.check("the target's gain really drifted over 5x", gains[-1] > 5 * gains[0])
    ctx.check("the loss fell first (its low is after step 10)", ls.index(low) > 10)
    ctx.check("the loss climbs to over 3x its low", _mean(ls[-20:]) > 3 * low)
    ctx.check(
        "the climb goes on: the last 50 steps average above steps 100-150",
        _mean(ls[-50:]) > _mean(ls[100:150]),
    )
    ctx.check("no 10-step mean is over 2x the one before", jumps < 2.0)
    ctx.check("finite throughout", _finite(ls))


# -- cave pearl: the 'abundant' code 2 reaches BCE as a target -------------------------------------


def _pearls(gen, batch, seed, d_in=10, coats=5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, coats, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w
        yield x, (z > 0).float() + (z > 0.9).float()


@scenario(
    family="cave_pearl_coating_multilabel_bce_net",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU multi-label net (fc1, act1, fc2, act2, head with 5 outputs) deciding which of five coatings (calcite, aragonite, iron oxide, manganese, clay film) a cave pearl shows from 10 standardised readings of drip rate, pool chemistry and cave climate, NAdam at 2e-3, BCE with logits, 200 steps. The survey sheet codes each coating 0 (absent), 1 (present) or 2 (abundant) and the labels are passed to the loss as they are: for a target of 2 the BCE gradient sigmoid(z) - 2 is never zero, so those logits are pushed up at every step without bound and the head's output grows step after step (the loss goes negative and keeps falling).",
)
def h318_cave_pearl_abundant_code(ctx: Context) -> None:
    gen = seeded(31809)
    model = Trunk(10, 64, out=5)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    peak: list[float] = []
    top: list[float] = []

    def watch(step, out, x, y):
        peak.append(float(out.detach().abs().max()))
        top.append(float(y.max()))

    _loop(
        ctx,
        model,
        opt,
        _pearls(gen, 64, seed=419),
        200,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ctx.check("the targets really contain 2", max(top) == 2.0)
    ctx.check("the head's largest logit grows over 20x from step 0", peak[-1] > 20 * peak[0])
    ctx.check(
        "it is still growing: over 1.3x its value 50 steps before", peak[-1] > 1.3 * peak[-51]
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- camel wrestling: OneCycleLR's peak typed 2.0 for 0.2 ------------------------------------------


def _top_eigenvalue(model: nn.Module, x, y, iters: int = 20) -> float:
    """Largest Hessian eigenvalue of the MSE on one batch, by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="camel_wrestling_bout_length_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the length of a camel-wrestling bout (Selçuk) from 8 standardised readings of the two bulls' weight, age, season form and the ground, plain SGD under OneCycleLR, MSE, 200 steps planned. The schedule's max_lr is meant to be 0.2 and is typed 2.0: the cycle starts at max_lr / 25 = 0.08 and climbs; once lr x the top Hessian eigenvalue passes 2 the iterates oscillate along the sharpest direction with growing amplitude and the loss blows up.",
)
def h318_camel_wrestling_onecycle_peak(ctx: Context) -> None:
    gen = seeded(31810)
    model = Trunk(8, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2.0, total_steps=200, pct_start=0.3)
    batches = _readings(gen, 64, 8, seed=420)
    probe = next(batches)
    edge: list[tuple[int, float, float]] = []

    def before(step):
        if step % 5 == 0 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            lr = opt.param_groups[0]["lr"]
            edge.append((step, lr, lr * _top_eigenvalue(model, *probe)))

    _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(v for v in ls if math.isfinite(v))
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("the loss blows up (over 100x its low, or non-finite)", blow is not None)
    ctx.check("lr x sharpness is under 2 at step 0", edge[0][2] < 2)
    ctx.check(
        "lr x sharpness passes 2 before the blow-up",
        blow is not None and any(s < blow and e > 2 for s, _, e in edge),
    )
    ctx.check("the loss fell first", blow is not None and low < 0.8 * _mean(ls[:5]))


# -- controls ------------------------------------------------------------------------------------

CATCH_FREQ = [0.72, 0.18, 0.07, 0.03]


@scenario(
    family="rat_catcher_terrier_catch_kind_imbalanced_relu_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A ReLU MLP classifier (fc1, act1, fc2, act2, head) of what a rat-catcher's terrier turns up on a farm sweep (rat, mouse, vole, stoat: 72/18/7/3% of the rows) from 12 standardised readings of the barn, season, bait take and the dog's signals, SGD with Nesterov momentum 0.9 at 5e-2 and weight decay 5e-4, cross-entropy weighted by inverse square-root class frequency, linear warm-up over 20 steps then cosine decay, gradient clipping at 1.0, 260 steps. It trains normally and the rarest class is recalled on a balanced evaluation batch.",
)
def h318_rat_catcher_imbalanced_nesterov(ctx: Context) -> None:
    gen = seeded(31811)
    model = Trunk(12, 64, out=4)
    opt = torch.optim.SGD(
        model.parameters(), lr=5e-2, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps, warm = 260, 20

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    weight = torch.tensor(CATCH_FREQ) ** -0.5
    weight = weight / weight.mean()
    _loop(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 4, seed=421, spread=1.1, weights=CATCH_FREQ),
        steps,
        lambda out, y: F.cross_entropy(out, y, weight=weight),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    xe, ye = next(_kinds(torch.Generator().manual_seed(7), 400, 12, 4, seed=421, spread=1.1))
    with torch.no_grad():
        pred = model(xe).argmax(1)
    rare = ye == 3
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check(
        "the rarest class's recall is over 0.6", float((pred[rare] == 3).float().mean()) > 0.6
    )
    ctx.check("finite throughout", _finite(ctx.losses))


class StrokeNet(nn.Module):
    """fc1 -> norm (LayerNorm) -> GELU -> fc2 -> GELU -> head."""

    def __init__(self, d_in=16, hidden=64, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = F.gelu(self.norm(self.fc1(x)))
        return self.head(F.gelu(self.fc2(h)))


@scenario(
    family="pumpkin_regatta_paddle_stroke_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GELU classifier with a LayerNorm (fc1, norm, fc2, head) of a pumpkin-regatta paddler's stroke kind (6 kinds: forward, sweep, draw, J, pry, stern rudder) from 16 standardised readings of a paddle-shaft IMU, fp16 autocast with a torch.amp.GradScaler (unscale before clipping at 1.0), AdamW with two parameter groups (weight decay 1e-2 on the weight matrices, none on biases and the LayerNorm), OneCycleLR up to 3e-3, cross-entropy with label smoothing 0.1, 200 steps. It trains normally.",
)
def h318_pumpkin_regatta_fp16_control(ctx: Context) -> None:
    gen = seeded(31812)
    model = StrokeNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and "norm" not in n]
    rest = [
        p for n, p in model.named_parameters() if not (n.endswith("weight") and "norm" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=422, spread=1.2),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("the scale never fell below 1", min(ctx.scales) >= 1.0)
    ctx.check("finite throughout", _finite(ctx.losses))


class TiedSwingCoder(nn.Module):
    """A tanh autoencoder whose decoder is the encoder's weight transposed (tied)."""

    def __init__(self, d_in=18, code=5):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _swings(gen, batch, seed, d_in=18, latent=4):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(latent, d_in, generator=g) / math.sqrt(latent)
    while True:
        z = torch.randn(batch, latent, generator=gen)
        x = torch.tanh(z) @ mix + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="pillow_fight_swing_tied_autoencoder",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A tied-weight tanh autoencoder (enc, decoder = enc.weight transposed plus its own bias) compressing 18 wrist-IMU readings of a competition pillow fighter's swing to a 5-number code, Adadelta at lr 1.0, Huber loss (delta 1.0), gradient accumulation over 2 micro-batches, ReduceLROnPlateau (factor 0.5, patience 10), 220 steps. It trains normally.",
)
def h318_pillow_fight_tied_control(ctx: Context) -> None:
    gen = seeded(31813)
    model = TiedSwingCoder()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _loop(
        ctx,
        model,
        opt,
        _swings(gen, 32, seed=423),
        220,
        lambda out, y: F.huber_loss(out, y, delta=1.0),
        sched=sched,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
