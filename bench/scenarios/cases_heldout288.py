"""Held-out set 288 (``h288_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a kanun maqam cosine classifier whose learnable logit scale
was initialised at 10 instead of log(10), a yak-wool dehairing grade ReLU classifier whose Adam
learning rate was typed 1e-1 for 1e-3, a sea-kayak roll recovery tanh regressor whose StepLR gamma
was typed 10 for 0.1, a stilton needling vein-score SiLU regressor whose shrink-and-perturb noise
was typed 0.25 for 0.0025, a lacrosse cradle-drop classifier with a hand-rolled BCE that lost its
clamp, a horseshoe-crab spawning tanh recurrent cell initialised with recurrent gain 3, a puffball
spore-release multi-output regressor (shared trunk, per-output heads) whose plume head's lr was
typed 3e-9 for 3e-3, a sirocco dust-load conv1d classifier fed the logger's -9999 sentinel on one
batch, a yak-polo shot-distance GELU regressor whose epoch-remainder path sums instead of averaging
the loss, a razor-clam dig-depth regressor whose hand-written decoupled weight decay has its sign
flipped under a rising decay schedule, and three controls (a cyr-wheel routine grade classifier
trained easy batches first with OneCycleLR and label smoothing, a sprang-braiding tension tied
autoencoder with warm-up, cosine decay and clipping, a noctilucent-cloud ripple Huber regressor on
noisy targets with gradient accumulation and ReduceLROnPlateau).

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


class _Twin:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


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
    accumulate=1,
    total_fn=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step, ``total_fn(step, out, y, loss)`` gives the loss actually backpropagated
    (the logged loss is ``loss_fn``'s); stops after logging a non-finite loss."""
    ctx.attach(model, opt)
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
            out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = total_fn(step, out, y, loss) if total_fn is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
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

    def features(self, x):
        h1 = self.act1(self.fc1(x))
        return h1, self.act2(self.fc2(h1))

    def forward(self, x):
        out = self.head(self.features(x)[1])
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_eig(model, loss_fn, x, y, iters=15):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((h * u).sum()) for h, u in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- kanun: the learnable logit scale was initialised at 10 instead of log(10) -------------------


class CosineHead(nn.Module):
    """Cosine classifier: normalised features against normalised class weights, times
    exp(logit_scale) (CLIP-style: the parameter stores the log of the scale)."""

    def __init__(self, d, classes, log_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d) / math.sqrt(d))
        self.logit_scale = nn.Parameter(torch.tensor(float(log_scale)))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.logit_scale.exp() * cos


LOG_TEN = math.log(10.0)


class KanunNet(nn.Module):
    def __init__(self, d_in=16, hidden=48, classes=6, log_scale=LOG_TEN):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, log_scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="kanun_maqam_cosine_scale_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU classifier (fc1, act1, fc2, act2, head = a cosine head: normalised features against normalised class weights times exp(logit_scale)) naming which of 6 maqams a kanun taqsim is played in from 16 spectral and mandal-lever features, NAdam at 1e-3, cross-entropy. The learnable logit_scale stores the log of the scale (CLIP-style), but it was initialised with the scale itself (10) instead of log(10): the cosines are multiplied by exp(10), about 22000, the float32 softmax rounds most rows' target probability to exactly 1.0 (and the rest's to 0), and those rows' gradients are exactly zero. The twin initialised at log(10) has no such row.",
)
def h288_kanun_logit_scale_not_logged(ctx: Context) -> None:
    def run(c, log_scale):
        gen = seeded(28801)
        model = KanunNet(log_scale=log_scale)
        opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
        _train(c, model, opt, _kinds(gen, 64, 16, 6, 41), 150, F.cross_entropy, classifier=True)
        px, py = next(_kinds(torch.Generator().manual_seed(3), 512, 16, 6, 41))
        with torch.no_grad():
            return collapsed_fraction(model(px), py), float(model.head.logit_scale.exp())

    twin = _Twin()
    twin_frac, _ = run(twin, math.log(10.0))
    frac, scale = run(ctx, 10.0)
    ctx.check("over a third of probe rows give the target exactly 1.0", frac > 1 / 3)
    ctx.check("the scale is still over 5000 at the end", scale > 5000)
    ctx.check("the twin initialised at log(10) has under 1% such rows", twin_frac < 0.01)
    ctx.check("the twin trained", _fell(twin.losses, ratio=0.5))


# -- yak wool: Adam's learning rate typed 1e-1 for 1e-3 ------------------------------------------


@scenario(
    family="yak_wool_dehairing_grade_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (fc1, act1, fc2, act2, head) grading dehaired yak down into 5 grades from 12 fibre readings (micron, length, guard-hair share, colour), Adam, cross-entropy, on noisy, overlapping grades. The config's learning rate was typed 1e-1 instead of 1e-3: the large Adam steps push most of the second hidden layer's ReLU units (fc2, act2) below zero on every input, they stop receiving gradient and never come back, and the loss stays above the 1e-3 twin's. Finite, no blow-up.",
)
def h288_yak_wool_adam_lr_typo(ctx: Context) -> None:
    px, py = next(_kinds(torch.Generator().manual_seed(4), 512, 12, 5, 43, noise=1.0))

    def run(c, lr):
        gen = seeded(28802)
        model = Stack(12, hidden=64, out=5, act=nn.ReLU)
        with torch.no_grad():
            start = [dead_fraction(h) for h in model.features(px)]
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 12, 5, 43, noise=1.0),
            200,
            F.cross_entropy,
            classifier=True,
        )
        with torch.no_grad():
            end = [dead_fraction(h) for h in model.features(px)]
        return start, end

    twin = _Twin()
    _, twin_end = run(twin, 1e-3)
    start, end = run(ctx, 1e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 10% of units dead at init", max(start) < 0.1)
    ctx.check("over half of fc2's units dead at the end", end[1] > 0.5)
    ctx.check("the twin keeps over 75% of its units alive", max(twin_end) < 0.25)
    ctx.check(
        "the loss ends over 1.2x the twin's", _mean(ls[-20:]) > 1.2 * _mean(twin.losses[-20:])
    )


# -- sea kayak: StepLR gamma typed 10 for 0.1 ----------------------------------------------------

STEP_KAYAK = 80


@scenario(
    family="sea_kayak_roll_recovery_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=STEP_KAYAK,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how long a sea kayaker takes to roll back up from 8 standardised readings (hip snap, paddle sweep angle, boat beam, swell), plain SGD at 0.08, MSE, with StepLR(step_size=80). The decay factor was typed gamma=10 instead of 0.1: at step 80 the rate jumps to 0.8 instead of dropping to 0.008, and the measured lr x top Hessian eigenvalue crosses the 2/sharpness stability limit; the loss then blows up. Nothing is wrong with the data or the init.",
)
def h288_sea_kayak_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(28803)
    model = Stack(8, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=STEP_KAYAK, gamma=10.0)
    px, py = next(_readings(torch.Generator().manual_seed(7), 256, 8, 45))
    products: dict[int, float] = {}

    def before(step):
        if step % 5 == 0 and step <= STEP_KAYAK + 40:
            lr = opt.param_groups[0]["lr"]
            products[step] = lr * _top_eig(model, F.mse_loss, px, py)

    _train(ctx, model, opt, _readings(gen, 64, 8, 45), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(ls[:STEP_KAYAK])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    crossed = next((s for s in sorted(products) if products[s] > 2.0), None)
    ctx.check("the loss fell before the step", _fell(ls[:STEP_KAYAK], ratio=0.5))
    ctx.check(
        "lr x sharpness stayed under 2 before the step",
        all(v < 2.0 for s, v in products.items() if s < STEP_KAYAK),
    )
    ctx.check("lr x sharpness crossed 2 at the step", crossed is not None and crossed >= STEP_KAYAK)
    ctx.check(
        "the loss blew up (over 100x its low) after the crossing",
        blow is not None and crossed is not None and blow >= crossed,
    )


# -- stilton: shrink-and-perturb noise typed 0.25 for 0.0025 ---------------------------------------

ONSET_STILTON = 120


@scenario(
    family="stilton_needling_vein_score_silu_regressor",
    optimizer="Adamax",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_STILTON,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the blue-vein score a stilton reaches after needling from 10 standardised readings (needling depth, curd acidity, cave humidity and temperature), Adamax at 5e-3, MSE. The recipe applies shrink-and-perturb once at the first epoch boundary (step 120): weights x 0.9 plus Gaussian noise, whose std was typed 0.25 instead of 0.0025. The loss jumps by an order of magnitude at that step, then the run recovers over a few dozen steps; the data, the rate and the gradients are otherwise ordinary.",
)
def h288_stilton_perturb_noise_typo(ctx: Context) -> None:
    gen = seeded(28804)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    noise_gen = torch.Generator().manual_seed(88)

    def before(step):
        if step == ONSET_STILTON:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.9).add_(0.25 * torch.randn(p.shape, generator=noise_gen))

    _train(ctx, model, opt, _readings(gen, 64, 10, 47), 300, F.mse_loss, before=before)
    ls = ctx.losses
    before_ls = ls[ONSET_STILTON - 20 : ONSET_STILTON]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the perturbation", _fell(ls[:ONSET_STILTON], ratio=0.5))
    ctx.check(
        "the loss at step 120 is over 10x the median before",
        ls[ONSET_STILTON] > 10 * _median(before_ls),
    )
    ctx.check(
        "the loss recovered by the end (under 3x its level before, under a tenth of the spike)",
        _mean(ls[-20:]) < min(3 * _mean(before_ls), ls[ONSET_STILTON] / 10),
    )


# -- lacrosse: a hand-rolled BCE that lost its clamp ---------------------------------------------


class CradleNet(nn.Module):
    def __init__(self, d_in=10, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        self.prob = nn.Sigmoid()

    def forward(self, x):
        return self.prob(self.head(self.act1(self.fc1(x)))).squeeze(-1)


def _bce_no_clamp(p, y):
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def _bce_clamped(p, y):
    return F.binary_cross_entropy(p, y)


def _cradles(gen, batch, d_in=10, seed=49):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, (x @ w > 0).float()


@scenario(
    family="lacrosse_cradle_drop_handrolled_bce_classifier",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("prob",),
    diverges="auto",
    heldout=True,
    note="A ReLU net (fc1, act1, head, prob = a Sigmoid module) predicting whether a lacrosse player drops the ball in the cradle from 10 standardised stick-tracking readings, Adagrad at 0.05. The binary cross-entropy was hand-rolled as -(y log p + (1 - y) log(1 - p)) on the sigmoid's output, without the clamp F.binary_cross_entropy applies to its logs. The task is separable and the logits grow; once one sample's logit passes about 17 the float32 sigmoid returns exactly 1.0, log(1 - p) is -inf and (1 - y) x -inf is NaN for a y = 1 row: the loss is NaN. The twin with F.binary_cross_entropy stays finite.",
)
def h288_lacrosse_bce_without_clamp(ctx: Context) -> None:
    def run(c, loss_fn):
        gen = seeded(28805)
        model = CradleNet()
        opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
        saturated = []

        def watch(step, out, x, y):
            saturated.append(bool(((out == 1.0) | (out == 0.0)).any()))

        _train(c, model, opt, _cradles(gen, 64), 250, loss_fn, watch=watch)
        return saturated

    twin = _Twin()
    run(twin, _bce_clamped)
    saturated = run(ctx, _bce_no_clamp)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss went non-finite after step 10", bad is not None and bad > 10)
    ctx.check("the loss was finite until then", _finite(ctx.losses[: bad or 0]))
    ctx.check(
        "the sigmoid returned exactly 0 or 1 on the step the loss went NaN",
        bad is not None and saturated[bad],
    )
    ctx.check(
        "no sigmoid output saturated before then", bad is not None and not any(saturated[:bad])
    )
    ctx.check("the clamped twin stays finite", _finite(twin.losses) and len(twin.losses) == 250)


# -- horseshoe crab: recurrent weights initialised with gain 3 --------------------------------


class SpawnCell(nn.Module):
    """A hand-written tanh Elman cell: h' = tanh(inp(x) + rec(h))."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.inp(x) + self.rec(h))


class SpawnRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.cell = SpawnCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.rec.weight, gain=gain)

    def forward(self, x, keep=None):
        h = torch.zeros(x.shape[0], self.cell.rec.weight.shape[0])
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if keep is not None:
                h.retain_grad()
                keep.append(h)
        return self.head(h).squeeze(-1)


def _tides(gen, batch, length=40, seed=51):
    """Hourly (tide height, water temperature, moon phase, wind) series; the target is the
    crab count index, driven by the last few hours."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        y = torch.tanh(x[:, -6:] @ w).mean(1)
        yield x, y


@scenario(
    family="horseshoe_crab_spawning_tanh_elman_rnn",
    optimizer="Adam",
    cause="exploding_gradients",
    where=("cell.rec",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman cell (cell.inp, cell.rec) read over 40 hourly readings (tide height, water temperature, moon phase, wind) and a linear head, regressing the horseshoe-crab spawning count index, Adam at 1e-3, MSE. The recurrent weight's orthogonal init was given gain=3 (the config's init_gain meant for the input projection was passed to the recurrent one) instead of 1.0: the cell runs in its chaotic regime, the gradient reaching the hidden state grows by orders of magnitude from the last step back to the first, the gradient norm sits thousands of times above the gain-1 twin's and the loss stays far above the twin's. The tanh keeps the forward pass bounded: finite, no blow-up.",
)
def h288_horseshoe_crab_recurrent_gain(ctx: Context) -> None:
    gen = seeded(28806)
    model = SpawnRNN(gain=3.0)
    px, py = next(_tides(torch.Generator().manual_seed(8), 64))

    def through_time(m):
        keep: list[torch.Tensor] = []
        F.mse_loss(m(px, keep), py).backward()
        first, last = float(keep[0].grad.norm()), float(keep[-1].grad.norm())
        m.zero_grad(set_to_none=True)
        return first / max(last, 1e-30)

    growth = through_time(model)
    twin_model = SpawnRNN(gain=1.0)
    twin_growth = through_time(twin_model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(ctx, model, opt, _tides(gen, 64), 150, F.mse_loss)
    twin = _Twin()
    twin_gen = seeded(28806)
    twin_opt = torch.optim.Adam(twin_model.parameters(), lr=1e-3)
    _train(twin, twin_model, twin_opt, _tides(twin_gen, 64), 150, F.mse_loss)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the gradient at the first hidden state is over 100x the last's", growth > 100)
    ctx.check("with gain 1.0 it is under 10x", twin_growth < 10)
    ctx.check(
        "the median gradient norm is over 100x the twin's",
        _median(gs) > 100 * _median(twin.grad_norms),
    )
    ctx.check("the loss ends over 2x the twin's", _mean(ls[-20:]) > 2 * _mean(twin.losses[-20:]))


# -- puffball: the plume head's lr typed 3e-9 for 3e-3 -------------------------------------------


class PuffballNet(nn.Module):
    """A shared trunk and one head per output: spore count, plume height, puff duration."""

    OUTPUTS = ("count", "plume", "duration")

    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, 1) for k in self.OUTPUTS})

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.heads[k](h) for k in self.OUTPUTS], dim=-1)


def _puffs(gen, batch, d_in=10, seed=53):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, 3, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w / math.sqrt(d_in)
        y = torch.stack([torch.tanh(z[:, 0]), torch.sin(z[:, 1]) + 0.5, z[:, 2] ** 2 - 0.5], -1)
        yield x, y + 0.05 * torch.randn(batch, 3, generator=gen)


@scenario(
    family="puffball_spore_release_multi_output_trunk_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("heads.plume",),
    diverges=None,
    heldout=True,
    note="A multi-output regressor with a shared SiLU trunk and one linear head per output (heads.count, heads.plume, heads.duration) predicting a giant puffball's spore count, plume height and puff duration when a raindrop strikes it, from 10 standardised readings, RMSprop, MSE summed over outputs. Each head gets its own param group from a per-head lr table; the plume head's entry was typed 3e-9 instead of 3e-3, so heads.plume is frozen at its random init: its per-step update ratio |dW|/|W| stays under 1e-6 while the other heads' are over 1e-4. The other outputs train through the shared trunk; the plume head itself never moves.",
)
def h288_puffball_plume_head_lr_typo(ctx: Context) -> None:
    gen = seeded(28807)
    model = PuffballNet()
    lrs = {"count": 3e-3, "plume": 3e-9, "duration": 3e-3}
    groups = [{"params": model.trunk.parameters(), "lr": 3e-3}]
    groups += [{"params": model.heads[k].parameters(), "lr": lrs[k]} for k in model.OUTPUTS]
    opt = torch.optim.RMSprop(groups, lr=3e-3)
    ratios: dict[str, list[float]] = {k: [] for k in model.OUTPUTS}
    prev = {k: model.heads[k].weight.detach().clone() for k in model.OUTPUTS}
    per_out: list[torch.Tensor] = []

    def watch(step, out, x, y):
        per_out.append(((out.detach() - y) ** 2).mean(0))

    def after(step):
        for k in model.OUTPUTS:
            w = model.heads[k].weight.detach()
            ratios[k].append(float((w - prev[k]).norm() / w.norm()))
            prev[k] = w.clone()

    def loss_fn(out, y):
        return F.mse_loss(out, y, reduction="none").mean(0).sum()

    _train(ctx, model, opt, _puffs(gen, 64), 200, loss_fn, watch=watch, after=after)
    first = torch.stack(per_out[:10]).mean(0)
    last = torch.stack(per_out[-10:]).mean(0)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("heads.plume's update ratio stays under 1e-6", max(ratios["plume"]) < 1e-6)
    ctx.check(
        "the other heads' median update ratios are over 1e-4",
        min(_median(ratios["count"]), _median(ratios["duration"])) > 1e-4,
    )
    ctx.check(
        "the count and duration errors fell over 2x", bool((last[[0, 2]] < first[[0, 2]] / 2).all())
    )


# -- sirocco: the logger's -9999 sentinel in one batch -------------------------------------------


class DustConv(nn.Module):
    def __init__(self, channels=3, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


def _dust(gen, batch, length=48, classes=4):
    """Three sensor traces (PM10, visibility, wind speed); the class sets the trace's
    frequency and the PM10 level."""
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        f = (1 + y[:, None]).float() * 3
        pm = torch.sin(f * 6.28 * t + phase) + 0.3 * y[:, None]
        vis = -pm + 0.3 * torch.randn(batch, length, generator=gen)
        wind = torch.cos(f * 3.14 * t + phase)
        x = torch.stack([pm, vis, wind], 1) + 0.3 * torch.randn(batch, 3, length, generator=gen)
        yield x, y


ONSET_SIROCCO = 90


@scenario(
    family="sirocco_dust_load_sentinel_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SIROCCO,
    note="A 1-d CNN (conv1, act1, conv2, act2, head) grading a sirocco's dust load into 4 classes from 48-sample traces of PM10, visibility and wind speed, SGD Nesterov momentum 0.9 at 2e-2, cross-entropy, gradient clipping at 1.0. One station's logger writes -9999 for missing readings and its shard was not masked: the batch at step 90 carries six traces whose visibility channel is -9999 over half its length. The loss and the gradient jump by orders of magnitude on that one batch, clipping bounds the step and the run recovers.",
)
def h288_sirocco_missing_value_sentinel(ctx: Context) -> None:
    gen = seeded(28808)
    model = DustConv()
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == ONSET_SIROCCO:
            x = x.clone()
            x[:6, 1, 20:] = -9999.0
        return x, y

    _train(
        ctx,
        model,
        opt,
        _dust(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    before = ls[ONSET_SIROCCO - 20 : ONSET_SIROCCO]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the shard", _fell(ls[:ONSET_SIROCCO], ratio=0.6))
    ctx.check(
        "the loss at step 90 is over 20x the median before",
        ls[ONSET_SIROCCO] > 20 * _median(before),
    )
    ctx.check(
        "the gradient at step 90 is over 20x the median before",
        gs[ONSET_SIROCCO] > 20 * _median(gs[ONSET_SIROCCO - 20 : ONSET_SIROCCO]),
    )
    ctx.check(
        "the loss recovered by the end (under 2x its level before)",
        _mean(ls[-20:]) < 2 * _mean(before),
    )


# -- yak polo: the epoch-remainder path sums the loss instead of averaging it --------------------

EPOCH_POLO = 12
ONSET_POLO = 3 * EPOCH_POLO - 1


@scenario(
    family="yak_polo_shot_distance_gelu_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_POLO,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing how far a yak-polo shot carries from 8 standardised readings (mallet speed, swing angle, yak pace, ball wear), ASGD at 1e-2, MSE, gradient clipping at 5. The loader's end-of-epoch remainder path builds its loss with reduction='sum' instead of 'mean' (the main path averages); the remainder only fills a whole batch at the end of the third epoch (step 35), so on that one step the backpropagated loss is 64x the logged one. The gradient norm spikes over 30x while the batch itself is ordinary (its logged loss is at the usual level); clipping bounds the step, the run goes on.",
)
def h288_yak_polo_remainder_sum_loss(ctx: Context) -> None:
    gen = seeded(28809)
    model = Stack(8, hidden=48, act=nn.GELU)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)

    def total_fn(step, out, y, loss):
        if step == ONSET_POLO:  # the remainder path
            return F.mse_loss(out, y, reduction="sum")
        return loss

    _train(ctx, model, opt, _readings(gen, 64, 8, 55), 150, F.mse_loss, total_fn=total_fn, clip=5.0)
    ls, gs = ctx.losses, ctx.grad_norms
    med_g = _median(gs[ONSET_POLO - 15 : ONSET_POLO])
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the gradient at the remainder step is over 30x the median before",
        gs[ONSET_POLO] > 30 * med_g,
    )
    ctx.check(
        "the batch itself is ordinary (logged loss under 2x the median before)",
        ls[ONSET_POLO] < 2 * _median(ls[ONSET_POLO - 10 : ONSET_POLO]),
    )
    ctx.check(
        "no other step's gradient is over 5x that median",
        all(g < 5 * med_g for i, g in enumerate(gs) if i > ONSET_POLO),
    )
    ctx.check("the loss fell overall", _fell(ls, ratio=0.7))


# -- razor clam: a hand-written decoupled weight decay with its sign flipped ---------------------


@scenario(
    family="razor_clam_dig_depth_decay_sign_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how deep a razor clam digs before the salt is poured from 8 standardised beach readings (sand grain, water table, tide stage, temperature), SGD momentum 0.9 at 1e-2, MSE. The recipe uses a rising weight-decay schedule (wd from 0.2 to 6 over the run, strong decay for a small noisy survey) applied by hand after each step as p *= (1 + lr x wd), the sign flipped from (1 - lr x wd): every weight is inflated a little more each step. The loss falls at first, then climbs slowly as the inflation outgrows what the gradient pulls back, its 20-step mean to over 2x its low; no single step jumps.",
)
def h288_razor_clam_decay_sign_flip(ctx: Context) -> None:
    gen = seeded(28810)
    model = Stack(8, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    start_norm = float(model.fc1.weight.detach().norm())

    def after(step):
        wd = 0.2 + (6.0 - 0.2) * step / 300
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 1e-2 * wd)

    _train(ctx, model, opt, _readings(gen, 64, 8, 57), 300, F.mse_loss, after=after)
    ls = ctx.losses
    windows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    low_at = min(range(len(windows)), key=lambda i: windows[i])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell first", _fell(ls[:40], k=5, ratio=0.7))
    ctx.check(
        "fc1's weight norm grew over 2x", float(model.fc1.weight.detach().norm()) > 2 * start_norm
    )
    ctx.check("the 20-step mean loss ends over 2x its low", windows[-1] > 2 * windows[low_at])
    ctx.check("the low is in the first half", low_at < len(ls) // 2)
    ctx.check(
        "the climb is slow (no step over 3x the mean of the 10 before)",
        all(ls[i] < 3 * _mean(ls[i - 10 : i]) for i in range(low_at + 10, len(ls))),
    )


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="cyr_wheel_routine_grade_curriculum_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU classifier (fc1, act1, fc2, act2, head) grading a cyr-wheel routine into 5 grades from 14 motion-capture features, AdamW at max lr 3e-3 with OneCycleLR, weight decay 0.01, cross-entropy with label smoothing 0.1, under a curriculum: the first 60 steps draw low-noise (easy) performances, the noise then ramps up to the full level by step 120. Trains normally.",
)
def h288_cyr_wheel_curriculum(ctx: Context) -> None:
    gen = seeded(28811)
    g = torch.Generator().manual_seed(59)
    protos = torch.randn(5, 14, generator=g)
    steps = 200

    def curriculum():
        step = 0
        while True:
            level = 0.3 + 0.7 * min(max(step - 60, 0) / 60, 1.0)
            y = torch.randint(0, 5, (64,), generator=gen)
            x = protos[y] + level * 1.2 * torch.randn(64, 14, generator=gen)
            step += 1
            yield x, y

    model = Stack(14, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        curriculum(),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    full = torch.Generator().manual_seed(6)
    ty = torch.randint(0, 5, (512,), generator=full)
    tx = protos[ty] + 1.2 * torch.randn(512, 14, generator=full)
    with torch.no_grad():
        acc = float((model(tx).argmax(-1) == ty).float().mean())
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell over the easy phase", _fell(ctx.losses[:60], ratio=0.7))
    ctx.check("accuracy on full-noise routines over 60%", acc > 0.6)


class BobbinAE(nn.Module):
    """A tied autoencoder: the decoder uses the encoder's weight transposed."""

    def __init__(self, d_in=24, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.T, self.dec_bias)


def _prickings(gen, batch, d_in=24, rank=6, seed=61):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d_in, generator=g) / math.sqrt(rank)
    while True:
        z = torch.randn(batch, rank, generator=gen)
        x = z @ basis + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="sprang_braiding_tension_tied_autoencoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a tied autoencoder (enc, act; the decoder is enc's weight transposed plus dec_bias) compressing 24-point sprang-braiding warp tension profiles to an 8-number code, AdamW at 3e-3 with a 20-step linear warm-up then cosine decay (LambdaLR), weight decay 1e-4, gradient clipping at 1.0, MSE. Trains normally.",
)
def h288_sprang_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(28812)
    model = BobbinAE()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps, warm = 200, 20

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    _train(ctx, model, opt, _prickings(gen, 64), steps, F.mse_loss, sched=sched, clip=1.0)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the reconstruction loss fell over 2x", _fell(ctx.losses, ratio=0.5))


@scenario(
    family="noctilucent_cloud_ripple_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the ripple wavelength of noctilucent clouds from 10 standardised mesosphere readings, on noisy targets (Student-t noise, 3 degrees of freedom, as from hand-measured photographs), RAdam at 3e-3, Huber loss, gradient accumulation over 2 micro-batches of 32, ReduceLROnPlateau (factor 0.5, patience 2) stepped on the mean loss of each 20-step epoch. Trains normally.",
)
def h288_noctilucent_ripple_huber(ctx: Context) -> None:
    gen = seeded(28813)
    t = torch.distributions.StudentT(3.0)

    def noisy():
        for x, y in _readings(gen, 32, 10, 63):
            yield x, 2.0 * y + 1.0 + 0.2 * t.sample(y.shape)

    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)

    def after(step):  # the plateau scheduler reads the mean loss of each 20-step epoch
        if (step + 1) % 20 == 0:
            sched.step(_mean(ctx.losses[-20:]))

    _train(ctx, model, opt, noisy(), 200, F.huber_loss, after=after, accumulate=2)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the Huber loss fell", _fell(ctx.losses, k=20, ratio=0.6))
