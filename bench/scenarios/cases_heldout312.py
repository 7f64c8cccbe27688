"""Held-out set 312 (``h312_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a colliery winding-engine bell-signal character language model
(a tied-weight Elman RNN over generated signal strings) whose recurrent matrix is initialised
with a gain meant for a feed-forward stem (gradients grow through time), a sea-salt
crystal-grade GELU classifier whose z-loss is subtracted (the head's logits grow without bound), an
eel-weir catch-weight ReLU regressor fed one weir's log in grams (one corrupted batch), a
reindeer-lasso throw two-group regressor whose trunk is frozen by an unfreeze that never fires
(update ratio zero), a butter-churn granule-count Poisson net whose rate head lost its softplus
(log of a negative, NaN), a sandglass neck-grade classifier whose inverse temperature is multiplied
in as a sharpening factor (softmax saturates), a clinker-brick kiln-shrinkage tanh regressor whose hand-written decay
has its sign flipped (slow climb of the loss), a soap-boiling saponification SiLU regressor whose
loss is summed instead of averaged for one step (one gradient burst), an ice-saw block cut-time
tanh regressor whose step decay is typed gamma 10 for 0.1 (past the stability limit), an
arrowsmith arrowhead-defect ReLU multilabel net whose warm restart peak is typed 100x (dead
ReLUs), and three controls (a cormorant-fishing catch classifier with dropout, label smoothing
and a step schedule; a wax-chandler candle-burn fp16 regressor with a GradScaler and OneCycleLR;
a peat-stack drying Huber regressor with accumulation and ReduceLROnPlateau).

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
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, out, y, loss,
    accumulate)`` returns the micro-batch loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss; returns the step it stopped at."""
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
    """Standardised readings and smooth nonlinear targets of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w / math.sqrt(d_in)
        y = torch.tanh(1.5 * z) + 0.5 * torch.sin(1.1 * x @ v / math.sqrt(d_in)) + 0.2
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


def _grades(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class (classes overlap a little)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Net(nn.Module):
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


def _top_eigen(make, state, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss at ``state`` (power iteration on a fresh copy)."""
    m = make()
    m.load_state_dict(state)
    params = list(m.parameters())
    loss = loss_fn(m(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((t * t).sum() for t in v))
        v = [t / n for t in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [t.detach() for t in hv]
    return lam


# -- colliery winding bell signals: recurrent matrix initialised with the tanh gain ------------

SIGNALS = "-.|123456789rsbx"  # raps, pauses, bars and the banksman's shorthand


def _bell_strings(gen, batch, length=48, seed=3120):
    """Generated bell-signal strings: a sparse Markov chain over 16 characters, with a signal
    repeated after a pause (so the next character depends on one several steps back)."""
    g = torch.Generator().manual_seed(seed)
    vocab = len(SIGNALS)
    logits = 3.0 * torch.randn(vocab, vocab, generator=g)
    probs = torch.softmax(logits, -1)
    while True:
        seq = torch.zeros(batch, length + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, vocab, (batch,), generator=gen)
        for t in range(1, length + 1):
            nxt = torch.multinomial(probs[seq[:, t - 1]], 1, generator=gen).squeeze(1)
            if t >= 6 and t % 8 < 3:
                nxt = seq[:, t - 6]
            seq[:, t] = nxt
        yield seq[:, :-1], seq[:, 1:]


class ElmanCell(nn.Module):
    def __init__(self, dim, gain):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.rec = nn.Linear(dim, dim, bias=False)
        nn.init.orthogonal_(self.rec.weight, gain=gain)

    def forward(self, x, h):
        return torch.tanh(self.inp(x) + self.rec(h))


class BellLM(nn.Module):
    """embed -> cell (inp, rec) -> head, the head tied to the embedding."""

    def __init__(self, vocab=16, dim=32, gain=1.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.cell = ElmanCell(dim, gain)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=0.1)
        self.dim = dim
        self.states: list[torch.Tensor] = []

    def forward(self, idx):
        e = self.embed(idx)
        h = torch.zeros(idx.shape[0], self.dim)
        outs, self.states = [], []
        for t in range(idx.shape[1]):
            h = self.cell(e[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
            outs.append(h)
        return self.head(torch.stack(outs, 1))


def _lm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _state_ratio(model, idx, y):
    """How much larger the first state's gradient is than the last's on one batch."""
    model.zero_grad(set_to_none=True)
    _lm_loss(model(idx), y).backward()
    s = model.states
    r = float(s[0].grad.norm() / (s[-1].grad.norm() + 1e-30))
    model.zero_grad(set_to_none=True)
    return r


GAIN_COLL = 2.5


@scenario(
    family="colliery_winding_bell_signal_tied_elman_char_lm",
    optimizer="Adam",
    cause="exploding_gradients",
    where=("cell.rec", "cell"),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman character language model (embed, cell.inp, cell.rec, head tied to embed) over generated colliery winding-engine bell-signal strings (16 characters, a sparse Markov chain with signals repeated after a pause), 48 characters a sequence, Adam at 3e-3, next-character cross-entropy, clipping at 1.0, 100 steps. The init helper scales every square matrix by a gain taken from a config field meant for the deep feed-forward stem (2.5); it is applied to the recurrent matrix too (orthogonal, gain 2.5 instead of 1.0): backpropagated through 48 steps the state gradient at the first character is orders of magnitude larger than at the last, where a gain-1.0 copy shows no such growth. Clipping keeps the steps bounded so the loss does not blow up.",
)
def h312_colliery_recurrent_gain(ctx: Context) -> None:
    gen = seeded(31201)
    batches = _bell_strings(gen, 16)
    probe = next(batches)
    healthy = BellLM(gain=1.0)
    base = _state_ratio(healthy, *probe)
    model = BellLM(gain=GAIN_COLL)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ratios = []

    def after(step):
        s = model.states
        if s[0].grad is not None and s[-1].grad is not None:
            ratios.append(float(s[0].grad.norm() / (s[-1].grad.norm() + 1e-30)))

    _loop(ctx, model, opt, batches, 100, _lm_loss, classifier=False, clip=1.0, after=after)
    ctx.check("the first state's gradient is over 100x the last's at step 0", ratios[0] > 100)
    ctx.check("and over 20x the gain-1.0 copy's ratio", ratios[0] > 20 * base)
    ctx.check("the ratio stays over 100x on most steps", _median(ratios) > 100)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sea salt: the z-loss is subtracted -----------------------------------------------------------

ZLOSS_SALT = 1e-3


@scenario(
    family="sea_salt_crystal_grade_zloss_sign_gelu_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) grading hand-raked sea-salt crystals into 5 grades from 9 readings of the pan's brine, sun and wind, Adamax at 5e-3, cross-entropy plus a z-loss (1e-3 x logsumexp(logits)^2, meant to keep the head's logits near zero), 250 steps. The auxiliary term is added through a 'regularisers' list whose entries are all subtracted (the list was written for reward terms): the z-loss is maximised, so the head's log-partition and its logits grow without bound, over 20x their starting size, while the cross-entropy itself stays low.",
)
def h312_sea_salt_zloss_sign(ctx: Context) -> None:
    gen = seeded(31202)
    model = Net(9, 48, out=5, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    peak = []

    def watch(step, out, x, y):
        peak.append(float(out.detach().abs().max()))

    def backprop(step, out, y, loss, accumulate):
        z = torch.logsumexp(out, -1)
        return loss - ZLOSS_SALT * (z**2).mean()  # the sign bug: subtracted like a reward

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 9, 5, seed=3121, spread=0.6),
        250,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        backprop=backprop,
    )
    ctx.check("the head's peak logit grew over 20x", _mean(peak[-10:]) > 20 * _mean(peak[:5]))
    ctx.check("and is still growing at the end", _mean(peak[-10:]) > 1.2 * _mean(peak[-60:-50]))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- eel weir: one weir's log in grams -----------------------------------------------------------

ONSET_EEL = 120


@scenario(
    family="eel_weir_night_catch_weight_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_EEL,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing an eel weir's night catch weight (kg, standardised) from 11 readings of river flow, moon phase, water temperature and rain, plain SGD at 5e-2, MSE, clipping at 1.0, 240 steps. The shard that feeds step 120 is one weir's log whose keeper wrote grams: the whole batch's targets are 1000x (before standardisation) and the loss and gradient of that one step are huge; clipping bounds the step and the run trains back.",
)
def h312_eel_weir_grams_shard(ctx: Context) -> None:
    gen = seeded(31203)
    model = Net(11, 64)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)

    def alter(step, x, y):
        if step == ONSET_EEL:
            y = y * 1000.0
        return x, y

    _loop(
        ctx, model, opt, _readings(gen, 64, 11, seed=3122), 240, F.mse_loss, alter=alter, clip=1.0
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_EEL - 10 : ONSET_EEL])
    ctx.check(
        "the loss at the bad batch is over 1000x the steps before", ls[ONSET_EEL] > 1000 * pre
    )
    ctx.check(
        "its gradient is over 100x the median",
        gn[ONSET_EEL] > 100 * _median(gn[ONSET_EEL - 50 : ONSET_EEL]),
    )
    ctx.check("the loss is back under 2x its pre-batch level", _mean(ls[-10:]) < 2 * pre)
    ctx.check("the loss fell before it", pre < 0.8 * _mean(ls[:10]))


# -- reindeer lasso: the trunk's unfreeze never fires --------------------------------------------


@scenario(
    family="reindeer_lasso_throw_reach_two_group_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) in two param groups (trunk fc1+fc2, head) regressing a reindeer herder's lasso throw (reach and loop closure, 2 outputs, standardised) from 10 readings of rope, wind and the animal's gait, NAdam at 3e-3, MSE, 200 steps. The recipe freezes the trunk (group lr 0) for the first epoch and unfreezes it when epoch >= 1, but the epoch counter is only advanced by the DataLoader's StopIteration, which an endless sampler never raises: the trunk's lr stays 0 all run while the head trains; the loss falls only as far as the random features allow.",
)
def h312_reindeer_lasso_never_unfrozen(ctx: Context) -> None:
    gen = seeded(31204)
    model = Net(10, 64, out=2, act=nn.SiLU)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.NAdam(
        [{"params": trunk, "lr": 0.0}, {"params": model.head.parameters()}], lr=3e-3
    )
    epoch = {"n": 0}
    w1, w2, wh = _flat(model.fc1), _flat(model.fc2), _flat(model.head)

    def before(step):
        if epoch["n"] >= 1:  # never true: the endless sampler never ends an epoch
            opt.param_groups[0]["lr"] = 3e-3

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=3123, outputs=2),
        200,
        F.mse_loss,
        before=before,
    )
    moved = lambda a, m: float((_flat(m) - a).norm() / a.norm())  # noqa: E731
    ctx.check("fc1 moved under 1e-6 of its norm", moved(w1, model.fc1) < 1e-6)
    ctx.check("fc2 moved under 1e-6 of its norm", moved(w2, model.fc2) < 1e-6)
    ctx.check("the head moved over 5% of its norm", moved(wh, model.head) > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- butter churn: the rate head lost its softplus ----------------------------------------------


class GranuleNet(nn.Module):
    def __init__(self, d_in=7, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.rate_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.rate_head.bias, 2.0)

    def forward(self, x):
        # rate = softplus(...) was dropped when the head was ported from a regression model
        return self.rate_head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


def _granules(gen, batch, seed):
    """Butter granules counted in a churn sample from 7 readings (cream temperature, churn
    speed, time): most samples hold few granules, some many."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, generator=g)
    while True:
        x = torch.randn(batch, 7, generator=gen)
        rate = torch.exp(1.2 * x @ w / math.sqrt(7) - 0.5)
        yield x, torch.poisson(rate, generator=gen)


DIVERGE_BUT = 39


@scenario(
    family="butter_churn_granule_count_poisson_tanh_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("rate_head",),
    diverges=DIVERGE_BUT,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, rate_head) counting butter granules in a churn sample from 7 readings of cream temperature, churn speed and time, Adagrad at 3e-3, Poisson NLL written by hand as rate - y log rate, 200 steps planned. The rate head's softplus was dropped when the head was ported from a regression model (its bias initialised at 2): on the many samples with no granules the loss only pushes the rate down, until one row's rate crosses zero and log of a negative gives NaN.",
)
def h312_butter_churn_raw_rate(ctx: Context) -> None:
    gen = seeded(31205)
    model = GranuleNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-3)
    low = []

    def watch(step, out, x, y):
        low.append(float(out.detach().min()))

    stop = _loop(ctx, model, opt, _granules(gen, 64, seed=3124), 200, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at the recorded step", bad == DIVERGE_BUT and stop == DIVERGE_BUT)
    ctx.check("a row's rate is not positive at that step", bad is not None and low[bad] <= 0.0)
    ctx.check("every rate was positive at step 0", low[0] > 0.0)
    ctx.check("finite before it", bad is not None and _finite(ctx.losses[:bad]))


# -- sandglass: the inverse temperature is divided by --------------------------------------------


class NeckGrader(Net):
    def __init__(self, inv_temperature):
        super().__init__(8, 64, out=6, act=nn.GELU)
        self.inv_temperature = inv_temperature

    def forward(self, x):
        # the config field is the inverse temperature (1/T = 100); the code treats it as T
        return self.head(self.features(x)) * self.inv_temperature


@scenario(
    family="sandglass_neck_bore_grade_gelu_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) grading a blown sandglass's neck bore into 6 grades from 8 readings of glass thickness, bore and sand flow, AdamW at 2e-3, cross-entropy, 200 steps. The calibration config stores the inverse temperature (100, for T = 0.01 meant to soften a sharpened teacher); the training code multiplies the logits by it as if it were the sharpening factor and applies it to the student: the head's logits are 100x what they should be and the float32 softmax of a large share of rows (over a quarter late in the run) rounds to exactly 1.0 on the target.",
)
def h312_sandglass_inverse_temperature(ctx: Context) -> None:
    gen = seeded(31206)
    model = NeckGrader(inv_temperature=100.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    collapsed, scaled = [], []

    def watch(step, out, x, y):
        if step % 10 == 0:
            collapsed.append(collapsed_fraction(out.detach(), y))
            scaled.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 8, 6, seed=3125),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over a quarter of rows' softmax is exactly 1.0 late", max(collapsed[-5:]) > 0.25)
    ctx.check("none was at step 0", collapsed[0] == 0.0)
    ctx.check("the peak scaled logit is over 30", max(scaled) > 30.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- clinker brick: the hand-written decay's sign is flipped -------------------------------------


@scenario(
    family="clinker_brick_kiln_shrinkage_tanh_regressor",
    optimizer="SGD nesterov",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a clinker brick's firing shrinkage (standardised) from 10 readings of clay, kiln position and firing curve, SGD with Nesterov momentum 0.9 at 1e-2, MSE, 300 steps. Decoupled weight decay is applied by hand after each step as p.mul_(1 + lr * wd) (the sign of the AdamW-style decay flipped) with wd 1.5: every weight grows a little each step faster than the gradient can hold it, the tanh units saturate and the loss falls, then climbs slowly to several times its low without blowing up.",
)
def h312_clinker_brick_decay_sign(ctx: Context) -> None:
    gen = seeded(31207)
    model = Net(10, 48, act=nn.Tanh)
    lr, wd = 1e-2, 1.5
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)
        norms.append(float(_flat(model).norm()))

    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=3126), 300, F.mse_loss, after=after)
    ls = ctx.losses
    smooth = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9)]
    low = min(smooth)
    ctx.check("the weight norm grew over 2x", norms[-1] > 2 * norms[0])
    ctx.check("the loss climbs to over 3x its low", _mean(ls[-10:]) > 3 * low)
    ctx.check("the low came after the start", smooth.index(low) > 5)
    ctx.check("finite throughout", _finite(ls))


# -- soap boiling: the loss is summed for one step -----------------------------------------------

ONSET_SOAP = 110


@scenario(
    family="soap_boiling_saponification_accum_silu_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SOAP,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a soap boiler's saponification end-point (lye taken, standardised) from 12 readings of fat blend, lye strength and kettle temperature, SGD momentum 0.9 at 1e-2, Huber loss, accumulation over 4 micro-batches of 32, clipping at 1.0, 220 steps. At step 110 the run saves a checkpoint and rebuilds its loss from the config, picking up the evaluation default reduction='sum' for that one step (the next step rebuilds it again correctly): the micro-batch losses are summed over 32 rows instead of averaged, a 32x gradient on ordinary data. Clipping bounds the step.",
)
def h312_soap_boiling_sum_reduction(ctx: Context) -> None:
    gen = seeded(31208)
    model = Net(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def backprop(step, out, y, loss, accumulate):
        if step == ONSET_SOAP:
            return F.huber_loss(out, y, reduction="sum") / accumulate
        return loss / accumulate

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, seed=3127),
        220,
        F.huber_loss,
        accumulate=4,
        clip=1.0,
        backprop=backprop,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 110 is over 20x the median before",
        gn[ONSET_SOAP] > 20 * _median(gn[ONSET_SOAP - 50 : ONSET_SOAP]),
    )
    ctx.check(
        "the batch's own loss was ordinary (under 2x the steps before)",
        ls[ONSET_SOAP] < 2 * _mean(ls[ONSET_SOAP - 10 : ONSET_SOAP]),
    )
    ctx.check(
        "the gradient is back under 3x the median after", gn[ONSET_SOAP + 3] < 3 * _median(gn)
    )
    ctx.check("the loss fell", _fell(ls))


# -- ice saw: the step decay's gamma is typed 10 -----------------------------------------------

STEP_ICE, ONSET_ICE = 60, 120


@scenario(
    family="ice_saw_block_cut_time_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_ICE,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the time to hand-saw an ice block from a frozen lake (standardised) from 8 readings of ice thickness, air temperature and snow cover, plain SGD at 2e-2, MSE, StepLR with step_size 60 and gamma typed 10 instead of 0.1, 200 steps planned. At step 60 the learning rate goes up tenfold to 0.2 and the run still trains (lr x sharpness stays under 2); at step 120 it goes up again to 2.0: lr x the loss's top Hessian eigenvalue passes 2 by far, the iterates oscillate with growing amplitude along the sharpest direction and the loss blows up within a few steps.",
)
def h312_ice_saw_step_gamma(ctx: Context) -> None:
    gen = seeded(31209)
    make = lambda: Net(8, 32, act=nn.Tanh)  # noqa: E731
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=2e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=STEP_ICE, gamma=10.0)
    batches = _readings(gen, 64, 8, seed=3128)
    px, py = next(batches)
    sharp = {}

    def before(step):
        if step % STEP_ICE == 0 and step <= ONSET_ICE:
            lr = opt.param_groups[0]["lr"]
            sharp[step] = lr * _top_eigen(make, model.state_dict(), F.mse_loss, px, py)

    _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    pre = _mean(ls[ONSET_ICE - 10 : ONSET_ICE])
    ctx.check("lr x sharpness was under 1 at the start", sharp[0] < 1.0)
    ctx.check("and under 2 after the first jump", sharp[STEP_ICE] < 2.0)
    ctx.check("lr x sharpness passed 2 at the step-120 jump", sharp[ONSET_ICE] > 2.0)
    ctx.check("the loss fell before it", pre < 0.5 * _mean(ls[:10]))
    peak = max((v if math.isfinite(v) else float("inf")) for v in ls[ONSET_ICE:])
    ctx.check("then blew up to over 1000x its level", peak > 1000 * pre)


# -- arrowsmith: the warm restart's peak is typed 100x ---------------------------------------

ONSET_ARR = 100


@scenario(
    family="arrowsmith_arrowhead_defect_multilabel_relu_net",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    onset=ONSET_ARR,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) flagging 6 defects of a forged arrowhead (cold shut, bent tang, uneven barbs, ...) from 14 readings of the forging, Adam at 1e-3, BCE with logits, 240 steps. A second cosine cycle (a warm restart) starts at step 100 with its peak read from the config as 1e-1 (the '1e-3' was edited to '1e-1' when a shared value was changed): Adam's large steps push most ReLU units' pre-activations negative for every input; over three quarters of the second layer's units (act2) die within a few steps and never come back; the loss jumps, and the rest of the run learns with the units that are left.",
)
def h312_arrowsmith_restart_peak(ctx: Context) -> None:
    gen = seeded(31210)
    model = Net(14, 64, out=6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dead1, dead2 = [], []

    def before(step):
        peak, start = (1e-3, 0) if step < ONSET_ARR else (1e-1, ONSET_ARR)
        t = (step - start) / 140
        opt.param_groups[0]["lr"] = 0.5 * peak * (1 + math.cos(math.pi * min(t, 1.0)))

    def watch(step, out, x, y):
        if step % 10 == 0:
            with torch.no_grad():
                h1 = model.act1(model.fc1(x))
                dead1.append(dead_fraction(h1))
                dead2.append(dead_fraction(model.act2(model.fc2(h1))))

    _loop(
        ctx,
        model,
        opt,
        _defects(gen, 64, seed=3129),
        240,
        F.binary_cross_entropy_with_logits,
        before=before,
        watch=watch,
    )
    ls = ctx.losses
    k = ONSET_ARR // 10
    worst = dead2
    ctx.check("under 10% of act2's units dead before the restart", max(worst[:k]) < 0.1)
    ctx.check("over half of act2's units dead at the end", min(worst[-5:]) > 0.5)
    ctx.check("the first layer stays alive", max(dead1) < 0.1)
    ctx.check("the dead units stay dead", min(worst[-5:]) >= 0.9 * max(worst[k + 3 : k + 6]))
    ctx.check("finite throughout", _finite(ls))


def _defects(gen, batch, seed):
    """6 defect flags, each set by a different nonlinear mix of 14 forging readings."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(14, 6, generator=g)
    v = torch.randn(14, 6, generator=g)
    while True:
        x = torch.randn(batch, 14, generator=gen)
        z = x @ w / math.sqrt(14) + 0.7 * torch.tanh(x @ v / math.sqrt(14)) ** 2 - 0.4
        yield x, (z > 0).float()


# -- controls -----------------------------------------------------------------------------------


class CatchNet(nn.Module):
    def __init__(self, d_in=10, hidden=64, classes=5, p=0.2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.drop2(self.act2(self.fc2(self.drop1(self.act1(self.fc1(x)))))))


@scenario(
    family="fishing_cormorant_catch_kind_dropout_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP with dropout 0.2 (fc1, act1, drop1, fc2, act2, drop2, head) sorting a cormorant fisher's catch into 5 kinds from 10 readings of river, light and the bird's dive pattern, SGD momentum 0.9 at 5e-2 with StepLR (step 80, gamma 0.3), cross-entropy with label smoothing 0.1, weight decay 5e-4, 240 steps.",
)
def h312_fishing_cormorant_control(ctx: Context) -> None:
    gen = seeded(31211)
    model = CatchNet()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.3)
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, seed=3130),
        240,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    model.eval()
    x, y = next(_grades(torch.Generator().manual_seed(7), 512, 10, 5, seed=3130))
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("held-out accuracy over 80%", acc > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="wax_chandler_candle_burn_rate_fp16_silu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing a dipped candle's burn rate and drip (2 outputs, standardised) from 10 readings of wax blend, wick and dip count, fp16 autocast with a torch.amp.GradScaler, AdamW at OneCycleLR (max 5e-3) with weight decay 1e-2, MSE, clipping at 1.0 after unscaling, 200 steps.",
)
def h312_wax_chandler_control(ctx: Context) -> None:
    gen = seeded(31212)
    model = Net(10, 64, out=2, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=3131, outputs=2),
        200,
        F.mse_loss,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("the scale stayed finite and positive", all(0 < s < 1e9 for s in ctx.scales))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="peat_stack_drying_days_accum_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) regressing how many days a cut peat stack needs to dry (standardised, with noisy rain-gauge rows) from 9 readings of weather and stack build, RMSprop at 1e-3 in two param groups (no weight decay on biases, 1e-4 on weights), Huber loss, accumulation over 2 micro-batches, ReduceLROnPlateau (patience 20), clipping at 2.0, 220 steps.",
)
def h312_peat_stack_control(ctx: Context) -> None:
    gen = seeded(31213)
    model = Net(9, 64, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    plain = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RMSprop(
        [{"params": decay, "weight_decay": 1e-4}, {"params": plain, "weight_decay": 0.0}], lr=1e-3
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 9, seed=3132, noise=0.3),
        220,
        F.huber_loss,
        accumulate=2,
        clip=2.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
