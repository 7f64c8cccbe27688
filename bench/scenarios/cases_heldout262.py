"""Held-out set 262 (``h262_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a cidermaker's two-loss must net whose hot-reloaded config gives a
loss weight in percent for one step, a gristmill flour-fineness regressor fed a shard logged in
microns, a moguls turn-score regressor resumed with a stale optimizer state, a shot-put Gaussian
NLL net whose variance head lost its softplus, a hop-kiln drying regressor whose OneCycleLR
max_lr was typed 10x, a collier's firedamp Elman RNN with recurrent init gain 2, a peat cutter's
turf-moisture net with fc1's group lr typed 5e-7, a reed cutter's bundle grader whose Adamax lr
killed its ReLUs, a coxswain call classifier with a cosine scale but no normalisation, a salt
boiler's brine regressor with a weight-decay sign bug, and three controls (a serac-collapse
regressor with a recurring harder batch, a junk-sail reefing fp16 BCE net, a cob-wall cure
Conv1d classifier with label smoothing and accumulation).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
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


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss.detach()))


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step; ``amp``: fp16 autocast; stops after logging a non-finite loss."""
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
            loss = loss_fn(step, out, y)
            if watch is not None:
                watch(step, out, x, y)
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


def _sequences(gen, batch, length, d_in, seed):
    """Sequences of readings; the target is a decaying sum of a projection of the inputs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, length, d_in, generator=gen)
        s = x @ w
        decay = 0.8 ** torch.arange(length - 1, -1, -1).float()
        yield x, torch.tanh((s * decay).sum(1) / 2)


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


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moved(model, w0):
    return {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm()) for n, p in model.named_parameters()
    }


# -- cidermaker: two losses weighted from a config; the reloaded config reads a weight in % -------

ONSET_CIDER = 90


class CiderNet(nn.Module):
    """A shared SiLU trunk (fc1, act1, fc2, act2) with a gravity head and an apple-variety head."""

    def __init__(self, d_in, hidden=48, varieties=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.gravity = nn.Linear(hidden, 1)
        self.variety = nn.Linear(hidden, varieties)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.gravity(h), self.variety(h)], 1)


def _must(gen, batch, seed):
    """Twelve must readings; the final gravity (standardised) and the apple variety (5 kinds)."""
    reads = _readings(gen, batch, 12, seed, noise=0.05)
    g = torch.Generator().manual_seed(seed + 1)
    protos = torch.randn(5, 12, generator=g)
    while True:
        x, grav = next(reads)
        kind = (x @ protos.T).argmax(1)
        yield x, torch.cat([grav[:, None], kind[:, None].float()], 1)


@scenario(
    family="cidermaker_must_gravity_two_loss_net",
    optimizer="SGD(momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CIDER,
    note="A SiLU trunk (fc1, act1, fc2, act2) with two heads predicting a cidermaker's final must gravity (MSE) and the apple variety (cross-entropy) from 12 standardised readings (brix, acidity, tannin, press yield, ...), trained with two losses whose weights come from a config {'gravity': 1.0, 'variety': 0.5}, SGD with momentum 0.9 at 2e-2, clipping at 5. At step 90 the trainer hot-reloads its config and the new file writes the gravity weight as a percentage ('gravity: 100'); the parser takes it as the raw weight for that one step before the next reload fixes it, so that step's loss and gradient are about 100x the steps around it. The batches are ordinary; clipped, the run recovers; finite.",
)
def h262_cidermaker_config_weight_percent(ctx: Context) -> None:
    gen = seeded(26201)
    model = CiderNet(12)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    config = {"gravity": 1.0, "variety": 0.5}

    def before(step):
        config["gravity"] = 100.0 if step == ONSET_CIDER else 1.0

    def loss_fn(step, out, y):
        grav = F.mse_loss(out[:, 0], y[:, 0])
        kind = F.cross_entropy(out[:, 1:], y[:, 1].long())
        return config["gravity"] * grav + config["variety"] * kind

    _train(ctx, model, opt, _must(gen, 64, 61), 200, loss_fn, before=before, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    around = gn[ONSET_CIDER - 20 : ONSET_CIDER] + gn[ONSET_CIDER + 5 : ONSET_CIDER + 25]
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "gradient at onset over 20x the steps around it", gn[ONSET_CIDER] > 20 * _median(around)
    )
    ctx.check("loss at onset over 10x the step before", ls[ONSET_CIDER] > 10 * ls[ONSET_CIDER - 1])
    ctx.check(
        "only the onset step spiked",
        max(gn[ONSET_CIDER + 1 : ONSET_CIDER + 10]) < 0.5 * gn[ONSET_CIDER],
    )
    ctx.check("the run recovered", _mean(ls[-10:]) < 2 * _mean(ls[ONSET_CIDER - 10 : ONSET_CIDER]))
    ctx.check("loss fell", _fell(ls))


# -- gristmill: a shard whose sieve readings were logged in microns -------------------------------

ONSET_MILL = 100


@scenario(
    family="gristmill_flour_fineness_huber_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_MILL,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the fineness of a water-powered gristmill's flour from 10 standardised readings (stone gap, runner speed, grain moisture, feed rate, three sieve fractions, ...), plain SGD at 5e-2, Huber loss, clipping at 1. The shard read at step 100 came from the mill's second logger, which wrote the three sieve-fraction columns in microns instead of millimetres (x1000): one batch whose inputs are about 1000x the usual. Its gradient is hundreds of times the usual; clipped, the run recovers; finite.",
)
def h262_gristmill_micron_shard(ctx: Context) -> None:
    gen = seeded(26202)
    model = Stack(10, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)
    norms = []

    def alter(step, x, y):
        if step == ONSET_MILL:
            x = x.clone()
            x[:, 4:7] = x[:, 4:7] * 1000.0
        norms.append(float(x.abs().max()))
        return x, y

    def loss_fn(step, out, y):
        return F.huber_loss(out, y, delta=1.0)

    _train(ctx, model, opt, _readings(gen, 64, 10, 62), 220, loss_fn, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the shard's inputs over 100x the usual", norms[ONSET_MILL] > 100 * _median(norms))
    ctx.check("gradient at onset over 20x the median", gn[ONSET_MILL] > 20 * _median(gn))
    ctx.check("the run recovered", _mean(ls[-10:]) < 1.5 * _mean(ls[ONSET_MILL - 10 : ONSET_MILL]))
    ctx.check("loss fell", _fell(ls))


# -- moguls: resumed without the optimizer state --------------------------------------------------

ONSET_MOGUL = 150


@scenario(
    family="moguls_skier_turn_score_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_MOGUL,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a freestyle moguls judge's turn score from 16 standardised readings of a run (knee angle, upper-body stillness, line, pace, ...), Adam at 1e-2, MSE. At step 150 the job is pre-empted and resumed: the weights come from the latest checkpoint but the resume path globs the optimizer file from the first checkpoint (step 5), so Adam continues with stale moments from early training whose directions no longer fit the converged weights; the loss jumps several-fold for about ten steps, then the run settles back. The batches, the gradients and the learning rate are ordinary; finite.",
)
def h262_moguls_resume_stale_optimizer_state(ctx: Context) -> None:
    gen = seeded(26203)
    model = Stack(16, hidden=64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    stream = _readings(gen, 64, 16, 63, noise=0.02)
    stale = None
    for step in range(260):
        if step == 5:  # the early checkpoint the resume path will wrongly read from
            stale = copy.deepcopy(opt.state_dict())
        if step == ONSET_MOGUL:
            opt.load_state_dict(stale)
        x, y = next(stream)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _mean(ls[ONSET_MOGUL - 20 : ONSET_MOGUL])
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "loss within 10 steps of onset over 3x before",
        max(ls[ONSET_MOGUL : ONSET_MOGUL + 10]) > 3 * before,
    )
    ctx.check(
        "no gradient burst at onset",
        gn[ONSET_MOGUL] < 3 * _median(gn[ONSET_MOGUL - 20 : ONSET_MOGUL]),
    )
    ctx.check("the run recovered", _mean(ls[-10:]) < 1.5 * before)


# -- shotput: the variance head lost its softplus -------------------------------------------------

ONSET_SHOT = 82


class ThrowNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2, then a mean head and a variance head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        # the variance should be softplus(var_head(h)) + 1e-4; the refactor dropped both
        return torch.cat([self.mean(h), self.var_head(h)], 1)


def _throw_nll(step, out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()


@scenario(
    family="shotput_release_distance_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=ONSET_SHOT,
    heldout=True,
    onset=ONSET_SHOT,
    note="A tanh MLP (fc1, act1, fc2, act2) with a mean head and a variance head predicting a Gaussian over a shot-putter's throw distance from 12 standardised readings of the glide or spin (release angle, release speed, release height, hip-shoulder separation, ...), Gaussian negative log-likelihood, NAdam at 1e-3. A refactor dropped the softplus and the floor on var_head's output, so the variance is the raw linear output: as the network sharpens its confidence some rows' variance crosses zero and log(var) of a negative number is NaN at step 82; the loss is NaN there.",
)
def h262_shotput_variance_without_softplus(ctx: Context) -> None:
    gen = seeded(26204)
    model = ThrowNet(12)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    low = []

    def watch(step, out, x, y):
        low.append(float(out[:, 1].detach().min()))

    stream = _readings(gen, 64, 12, 64, noise=0.05)
    _train(ctx, model, opt, stream, 300, _throw_nll, watch=watch)
    ls = ctx.losses
    k = _first_bad(ls)
    ctx.check("the loss is first NaN at step 82", k == ONSET_SHOT)
    ctx.check("finite before it", k is not None and _finite(ls[:k]))
    ctx.check("some variance non-positive at that step", k is not None and low[k] <= 0)
    ctx.check("all variances positive at the start", low[0] > 0)


# -- hop kiln: OneCycleLR's max_lr typed 10x ------------------------------------------------------


def _kiln_run(ctx, max_lr):
    gen = seeded(26205)
    model = Stack(14, hidden=64, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=max_lr / 25, momentum=0.9, nesterov=True)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps)

    def loss_fn(step, out, y):
        return F.mse_loss(out, y)

    _train(ctx, model, opt, _readings(gen, 64, 14, 65), steps, loss_fn, sched=sched)


@scenario(
    family="hop_kiln_cone_drying_time_regressor",
    optimizer="SGD(nesterov=True)",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how long a hop kiln (oast) needs to dry a load of cones from 14 standardised readings (green weight, bed depth, burner heat, air flow, humidity, ...), SGD with Nesterov momentum 0.9, MSE, under a OneCycleLR whose max_lr was typed 0.5 for 0.05: as the one-cycle warm-up raises the rate it passes 2/sharpness, the loss oscillates and blows up. The same run at max_lr 0.05 trains normally.",
)
def h262_hop_kiln_onecycle_max_lr_typo(ctx: Context) -> None:
    twin = _Quiet()
    _kiln_run(twin, 0.05)
    _kiln_run(ctx, 0.5)
    ls = ctx.losses
    low = min(v for v in ls if math.isfinite(v))
    ctx.check("the loss blew up over 100x its low", not _finite(ls) or max(ls) > 100 * low)
    ctx.check("the loss was falling early on", _mean(ls[10:20]) < _mean(ls[:10]))
    ctx.check("the twin at max_lr 0.05 trained", _fell(twin.losses, ratio=0.5))


# -- collier: the firedamp RNN's recurrent init gain typed 3 ---------------------------------------


class Elman(nn.Module):
    """A hand-written Elman RNN: inp and rec Linear maps, tanh, a head on the last state."""

    def __init__(self, d_in, hidden=32, rec_gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.act = nn.Tanh()
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=rec_gain)

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        for t in range(x.shape[1]):
            h = self.act(self.inp(x[:, t]) + self.rec(h))
        return self.head(h).squeeze(-1)


def _collier_run(ctx, gain):
    gen = seeded(26206)
    model = Elman(6, rec_gain=gain)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2)
    firsts = []

    def loss_fn(step, out, y):
        return F.mse_loss(out, y)

    ctx.attach(model, opt)
    stream = _sequences(gen, 32, 40, 6, 66)
    for _ in range(120):
        x, y = next(stream)
        loss = loss_fn(0, model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        firsts.append(float(model.inp.weight.grad.norm() / model.head.weight.grad.norm()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    return firsts


@scenario(
    family="collier_firedamp_methane_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (inp, rec, act, head) reading 40 steps of 6 standardised sensor channels in a coal mine (methane, air speed, barometric pressure, ...) to predict the coming firedamp level a collier's deputy would log, plain SGD at 2e-2, MSE. The recurrent weights' orthogonal init was given gain=2.0 (meant for 1.0, copied from a deep-net recipe), so the recurrence is expansive and the gradient grows backwards through time: the gradient norm is over 10x the gain-1 twin's, the input map's gradient (summed over time) grows against the head's and the loss jumps about instead of falling.",
)
def h262_collier_rnn_recurrent_gain_typo(ctx: Context) -> None:
    twin = _Quiet()
    twin_through = _collier_run(twin, 1.0)
    through = _collier_run(ctx, 2.0)
    gn, tg = ctx.grad_norms, twin.grad_norms
    ctx.check("gradient norm over 10x the gain-1 twin's", _median(gn) > 10 * _median(tg))
    ctx.check("largest gradient over 20x the twin's largest", max(gn) > 20 * max(tg))
    ctx.check(
        "inp's gradient (through time) relative to head's over 4x the twin's",
        _median(through) > 4 * _median(twin_through),
    )
    ctx.check("the twin's loss fell", _fell(twin.losses, ratio=0.8))
    ctx.check(
        "this loss did not fall like the twin's",
        _mean(ctx.losses[-20:]) > 1.5 * _mean(twin.losses[-20:]),
    )


# -- peat cutter: the first layer's group lr typed 5e-7 --------------------------------------------


@scenario(
    family="peat_cutter_turf_moisture_param_group_net",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the moisture of a cut sod of turf from 12 standardised readings a peat cutter's slane and the bank give (depth, bank face, drainage, weather of the last days, ...), Adagrad with two param groups from a config: the input layer fc1 was meant to train at 5e-2 like the rest but its entry was typed 5e-7, so fc1's updates are about 1e-5 of its weights per step and it stays at its init while the other layers fit around it. The loss still falls, slower; finite.",
)
def h262_peat_cutter_group_lr_typo(ctx: Context) -> None:
    gen = seeded(26207)
    model = Stack(12, hidden=48, act=nn.SiLU)
    cfg = {"fc1": 5e-7, "rest": 5e-2}
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adagrad(
        [{"params": model.fc1.parameters(), "lr": cfg["fc1"]}, {"params": rest, "lr": cfg["rest"]}]
    )
    w0 = _snapshot(model)

    def loss_fn(step, out, y):
        return F.mse_loss(out, y)

    _train(ctx, model, opt, _readings(gen, 64, 12, 67), 200, loss_fn)
    moved = _moved(model, w0)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("fc1 moved under 1e-3 of its weights", moved["fc1.weight"] < 1e-3)
    ctx.check("fc2 moved over 5% of its weights", moved["fc2.weight"] > 0.05)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.9))


# -- reed cutter: an Adamax lr typed 0.3 kills the ReLUs -------------------------------------------


@scenario(
    family="reed_cutter_thatching_bundle_grade_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading bundles of cut water reed for thatching into 6 grades from 16 standardised readings (stem length, butt diameter, straightness, moisture, leaf, ...), Adamax at an lr typed 3e-1 for 3e-3, cross-entropy: the first large updates push act2's pre-activations negative for most units, which never fire again; the network is left with a few live units and the loss stalls well above where it should be. Finite.",
)
def h262_reed_cutter_dead_relus(ctx: Context) -> None:
    gen = seeded(26208)
    model = Stack(16, hidden=64, out=6)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-1)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(x)))

    def loss_fn(step, out, y):
        return F.cross_entropy(out, y)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, 68, noise=1.5),
        200,
        loss_fn,
        classifier=True,
        watch=watch,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("under 20% of act2 dead at the start", dead[0] < 0.2)
    ctx.check("over half of act2 dead over the last 50 steps", min(dead[-50:]) > 0.5)


# -- coxswain: a cosine-classifier scale applied to un-normalised features -------------------------


class CallNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head; the head's logits are multiplied by ``scale``."""

    def __init__(self, d_in, classes, hidden=64, scale=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.scale = scale

    def forward(self, x):
        return self.scale * self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="coxswain_stroke_call_scaled_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) choosing which of 8 calls a rowing coxswain makes (power ten, ratio up, hold, ...) from 20 standardised readings of the crew (stroke rate, boat speed, check, split, ...), RAdam at 1e-2, cross-entropy. The head was copied from a cosine classifier with its scale s=100 but without the L2 normalisation of features and weights, so the logits are 100x their natural size: the float32 softmax rounds most rows' target probability to exactly 1.0 (and the wrong rows' to 0) within a few dozen steps. Finite.",
)
def h262_coxswain_cosine_scale_without_norm(ctx: Context) -> None:
    gen = seeded(26209)
    model = CallNet(20, 8, scale=100.0)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    frac = []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))

    def loss_fn(step, out, y):
        return F.cross_entropy(out, y)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 8, 69, noise=0.5),
        200,
        loss_fn,
        classifier=True,
        watch=watch,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("few rows saturated at the start", frac[0] < 0.2)
    ctx.check("over half the rows saturated at exactly 1.0 at the end", _mean(frac[-10:]) > 0.5)


# -- salt boiler: a hand-rolled weight decay with its sign flipped ---------------------------------


@scenario(
    family="salt_boiler_brine_strength_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the strength of brine in an inland salt-boiler's pan from 10 standardised readings (well depth, pan temperature, fuel, evaporation time, ...), RMSprop at 1e-3, MSE, with a hand-rolled decoupled weight decay after each step written p.mul_(1 + lr * wd) instead of 1 - lr * wd (wd 5): the weights grow about 0.5% a step, the network's outputs swell and the loss, after its first fall, climbs slowly for the rest of the run. No single batch, gradient or layer to point at; finite.",
)
def h262_salt_boiler_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(26210)
    model = Stack(10, hidden=48, act=nn.Tanh)
    lr, wd = 1e-3, 5.0
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant: 1 - lr * wd
            norms.append(float(torch.cat([p.flatten() for p in model.parameters()]).norm()))

    def loss_fn(step, out, y):
        return F.mse_loss(out, y)

    _train(ctx, model, opt, _readings(gen, 64, 10, 70), 300, loss_fn, after=after)
    ls = ctx.losses
    low_at = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell first", min(ls[:100]) < 0.6 * _mean(ls[:5]))
    ctx.check(
        "the last 20 steps' loss over 3x the best 20",
        _mean(ls[-20:]) > 3 * min(_mean(ls[i : i + 20]) for i in range(len(ls) - 20)),
    )
    ctx.check("the weights grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check("the low came in the first half", low_at < 150)


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="serac_collapse_interval_burst_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the (standardised, log) time to the next serac collapse on a glacier icefall from 12 standardised readings (ice velocity, temperature, crevasse opening, seismic count, ...), Adam at 3e-3 with ReduceLROnPlateau, Huber loss, clipping at 1. Every 40th batch comes from the melt-season station, whose readings are noisier (targets with 10x the noise): a recurring harder batch, valid data, which the run absorbs. Trains normally.",
)
def h262_serac_recurring_hard_batch_control(ctx: Context) -> None:
    gen = seeded(26211)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=25)
    calm = _readings(gen, 64, 12, 71, noise=0.05)
    melt = _readings(gen, 64, 12, 71, noise=0.5)

    def alter(step, x, y):
        return next(melt) if step % 40 == 39 else (x, y)

    def loss_fn(step, out, y):
        return F.huber_loss(out, y, delta=1.0)

    _train(ctx, model, opt, calm, 240, loss_fn, alter=alter, clip=1.0, sched=sched)
    ls = ctx.losses
    hard = [ls[i] for i in range(79, 240, 40)]
    near = [ls[i - 1] for i in range(79, 240, 40)]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.5))
    ctx.check("the melt-season batches are harder", _mean(hard) > 1.5 * _mean(near))


def _reef(gen, batch, seed):
    """Sixteen wind and boat readings; whether the junk's sail should be reefed (0/1)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, generator=g)
    while True:
        x = torch.randn(batch, 16, generator=gen)
        logit = 2.0 * torch.sin(x @ w / 4) + x[:, 0] * x[:, 1]
        yield x, (logit + 0.3 * torch.randn(batch, generator=gen) > 0).float()


@scenario(
    family="junk_sail_batten_reef_fp16_bce_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a ReLU MLP (fc1, act1, fc2, act2, head) deciding whether to take in a reef on a junk-rigged sail (battened panels) from 16 standardised readings (apparent wind, gust factor, heel, batten load, ...), binary cross-entropy on logits, AdamW at 3e-3 with weight decay 1e-2 under a OneCycleLR, fp16 autocast with a torch.amp.GradScaler, clipping at 1. Trains normally.",
)
def h262_junk_sail_fp16_onecycle_control(ctx: Context) -> None:
    gen = seeded(26212)
    steps = 200
    model = Stack(16, hidden=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def loss_fn(step, out, y):
        return F.binary_cross_entropy_with_logits(out.float(), y)

    _train(
        ctx,
        model,
        opt,
        _reef(gen, 64, 72),
        steps,
        loss_fn,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("the loss scale stayed finite", all(math.isfinite(s) and s > 0 for s in ctx.scales))


class CobNet(nn.Module):
    """A Conv1d net over a wall-moisture trace: conv1, act1, conv2, act2, mean pool, head."""

    def __init__(self, classes, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(2, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(-1))


def _cure_traces(gen, batch, classes, seed, length=32, noise=0.6):
    """Two-channel moisture traces: each cure stage a mix of frequencies, random phase, noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.9 * torch.rand(classes, 2, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 2, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase)
        yield x + noise * torch.randn(batch, 2, length, generator=gen), y


@scenario(
    family="cob_wall_cure_stage_conv1d_classifier",
    optimizer="SGD(nesterov=True)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a ReLU Conv1d net (conv1, act1, conv2, act2, mean pool, head) telling which of 5 curing stages a new cob wall (earth, straw and water) is in from a 32-sample two-channel moisture and temperature trace, SGD with Nesterov momentum 0.9 at 5e-2 with a linear warm-up then cosine (LambdaLR), cross-entropy with label smoothing 0.1, gradient accumulation over 2, clipping at 2. Trains normally.",
)
def h262_cob_wall_label_smoothing_control(ctx: Context) -> None:
    gen = seeded(26213)
    steps = 200
    model = CobNet(5)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)

    def lam(step):
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)

    def loss_fn(step, out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    stream = _cure_traces(gen, 32, 5, 73)
    _train(
        ctx,
        model,
        opt,
        stream,
        steps,
        loss_fn,
        classifier=True,
        clip=2.0,
        sched=sched,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
