"""Held-out set 271 (``h271_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a farrier's hoof-trim balance regressor fed one shard
with four lengths logged in micrometres, a bookbinder's sewing-fault tagger whose hinge margin
term lost its clamp, a cricket-bat knocking-in grader whose Adam lr was typed 100x and whose
ReLUs die, a sculling hull-glide tanh regressor whose MultiStepLR gamma was typed 10 for 0.1,
a fumarole steam-pulse Gaussian-NLL net whose variance ReLU lost its eps, a chainmail weave
classifier whose trunk lr multiplier was parsed with int(), a cliff-diving splash deep leaky
MLP initialised with std 2/sqrt(fan_in), a pedicab ride-time Huber net whose resume step sums
the loss, a beekeeper's smoker-fuel classifier with a temperature typed 0.01, a fog-harp
hourly water-yield regressor whose resume step sums the loss into Adam, and three controls (an outrigger-canoe
crew regressor with a per-paddler encoder and a crew aggregator, a millinery straw-plait
grader on imbalanced classes with a weighted cross-entropy, a calligraphy-nib stroke tied
autoencoder with fp16 autocast, a GradScaler and gradient accumulation).

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
        self.scales: list[float] = []

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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    scale=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale(step)`` multiplies
    the backpropagated loss (default 1 / ``accumulate``), ``after(step)`` runs after the
    optimizer step; ``amp``: fp16 autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        mult = scale(step) if scale is not None else 1.0 / accumulate
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float() if amp else out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss * mult
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


def _kinds(gen, batch, d_in, classes, seed, noise=0.35, freq=None):
    """Readings around one prototype per class, overlapping; ``freq``: class frequencies."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    probs = torch.ones(classes) if freq is None else torch.tensor(freq, dtype=torch.float32)
    while True:
        y = torch.multinomial(probs, batch, replacement=True, generator=gen)
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


def _flat(params):
    return torch.cat([p.detach().flatten() for p in params]).clone()


def _top_eig(model, x, y, iters=15):
    """Largest Hessian eigenvalue of the MSE on (x, y) by power iteration on Hessian-vector
    products."""
    params = list(model.parameters())
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        nv = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / nv for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- farrier: one shard logs four hoof lengths in micrometres -----------------------------------

ONSET_HOOF = 90


@scenario(
    family="farrier_hoof_trim_balance_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_HOOF,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how many degrees a farrier should take off a hoof's heel to balance it from 14 standardised readings (toe length, heel height, hoof-pastern axis, wall flare, ...), SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at norm 1. One apprentice's shard, read at step 90, logs the four length readings in micrometres instead of millimetres; the standardisation uses the global statistics, so that batch's four length columns are about 1e3 standard deviations out: the loss on it is over 100x the median before and the gradient over 100x. Clipping bounds the step, the following batches are ordinary and the loss comes back to its level before the bad shard. Finite, no blow-up.",
)
def h271_farrier_hoof_lengths_in_micrometres(ctx: Context) -> None:
    gen = seeded(27101)
    model = Stack(14, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = []

    def alter(step, x, y):
        if step == ONSET_HOOF:
            x = x.clone()
            x[:, :4] = x[:, :4] * 1000.0
        seen.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _readings(gen, 128, 14, 41), 200, F.mse_loss, clip=1.0, alter=alter)
    ls, gn = ctx.losses, ctx.grad_norms
    pre_l = _median(ls[ONSET_HOOF - 20 : ONSET_HOOF])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the bad shard", _fell(ls[:ONSET_HOOF]))
    ctx.check("the bad shard's inputs reach over 500 (sd units)", seen[ONSET_HOOF] > 500)
    ctx.check(
        "every other batch is ordinary (max |x| under 8)",
        max(seen[:ONSET_HOOF] + seen[ONSET_HOOF + 1 :]) < 8,
    )
    ctx.check("loss on the bad shard over 100x the median before", ls[ONSET_HOOF] > 100 * pre_l)
    ctx.check(
        "gradient on the bad shard over 100x the median before",
        gn[ONSET_HOOF] > 100 * _median(gn[ONSET_HOOF - 20 : ONSET_HOOF]),
    )
    ctx.check(
        "the loss recovers: last 20 steps within 1.5x of the 20 before the shard",
        _mean(ls[-20:]) < 1.5 * _mean(ls[ONSET_HOOF - 20 : ONSET_HOOF]),
    )


# -- bookbinder: the hinge margin term lost its clamp ---------------------------------------------


def _tags(gen, batch, d_in, tags, seed, flip=0.1):
    """Multi-hot tags: each tag a thresholded linear reading, a few labels flipped."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, tags, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w / math.sqrt(d_in) > 0.3).float()
        noise = torch.rand(batch, tags, generator=gen) < flip
        yield x, torch.where(noise, 1.0 - y, y)


def _bce_margin(clamped):
    def loss(z, y):
        s = 2.0 * y - 1.0
        margin = 1.0 - s * z
        if clamped:
            margin = F.relu(margin)
        return F.binary_cross_entropy_with_logits(z, y) + 0.5 * margin.mean()

    return loss


@scenario(
    family="bookbinder_signature_sewing_fault_bce_tagger",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) tagging which of 6 sewing faults (loose kettle stitch, torn fold, skipped station, ...) a bookbinder's hand-sewn signature has, from 20 standardised readings of the sewing frame's thread-tension trace; Adamax at 2e-3, BCE-with-logits on the 6 tags (10% of labels noisy) plus a 0.5-weighted hinge margin term meant as relu(1 - s*z). The relu was dropped in a refactor, so the term is 0.5 * mean(1 - s*z): linear and unbounded below, it rewards every tag logit for moving further from 0 without limit. The head's peak |logit| on a fixed probe grows over 20x and is still growing at the end; the twin with the relu keeps it several times smaller. Finite, no blow-up.",
)
def h271_bookbinder_hinge_without_clamp(ctx: Context) -> None:
    def run(c, clamped):
        gen = seeded(27102)
        model = Stack(20, hidden=48, out=6, act=nn.GELU)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        probe = next(_tags(torch.Generator().manual_seed(5), 512, 20, 6, 83))[0]
        with torch.no_grad():
            peak = [float(model(probe).abs().max())]

        def after(step):
            with torch.no_grad():
                peak.append(float(model(probe).abs().max()))

        _train(c, model, opt, _tags(gen, 64, 20, 6, 83), 250, _bce_margin(clamped), after=after)
        return peak

    twin = _Twin()
    twin_peak = run(twin, True)
    peak = run(ctx, False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak |logit| grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("the peak still grows over the last 50 steps", peak[-1] > 1.2 * peak[-50])
    ctx.check("the twin with the relu keeps the peak 3x smaller", twin_peak[-1] < peak[-1] / 3)


# -- cricket bat: Adam lr typed 100x, the ReLUs die ----------------------------------------------


@scenario(
    family="cricket_bat_knocking_in_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading how far a new cricket bat's knocking-in has gone (5 stages) from 16 standardised readings of a mallet-tap microphone and the face's surface hardness; Adam, cross-entropy. The config's lr was typed 2e-1 for 2e-3: the first updates drive most of fc2's pre-activations negative on every input and act2's units die for good (over half never positive on a 512-row probe by step 100, over three quarters at the end, from under a fifth at init), so the model stops learning and its loss stays far above the twin's at 2e-3. The batches are ordinary; finite, no blow-up.",
)
def h271_cricket_bat_adam_lr_typo(ctx: Context) -> None:
    probe = next(_kinds(torch.Generator().manual_seed(9), 512, 16, 5, 57, noise=0.9))[0]

    def run(c, lr):
        gen = seeded(27103)
        model = Stack(16, hidden=64, out=5)
        with torch.no_grad():
            dead = [dead_fraction(model.features(probe))]
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def after(step):
            if step % 10 == 9:
                with torch.no_grad():
                    dead.append(dead_fraction(model.features(probe)))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 5, 57, noise=0.9),
            200,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return dead

    twin = _Twin()
    run(twin, 2e-3)
    dead = run(ctx, 2e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under a fifth of act2 dead at init", dead[0] < 0.2)
    ctx.check("over half of act2 dead at step 100", dead[10] > 0.5)
    ctx.check("over three quarters of act2 dead at the end", dead[-1] > 0.75)
    ctx.check(
        "the loss stays high: the twin ends under 0.5x of it",
        _mean(twin.losses[-10:]) < 0.5 * _mean(ls[-10:]),
    )


# -- sculling hull: MultiStepLR gamma typed 10 for 0.1 -------------------------------------------

MILESTONE_SCULL = 80


class GlideNet(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    family="sculling_hull_glide_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=MILESTONE_SCULL,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a single scull's run (glide speed between strokes) from 10 standardised readings (stroke rate, catch angle, boat mass, water temperature, ...), plain SGD at 0.1 with a MultiStepLR meant to divide the lr by 10 at step 80, MSE. The gamma was typed 10 for 0.1, so at step 80 the lr jumps to 1.0: lr x the loss's top Hessian eigenvalue (power iteration on a fixed batch) is under 2 before the milestone and well over 2 at it, and the loss oscillates and blows up. The twin with gamma 0.1 stays finite and keeps falling. The batches are ordinary.",
)
def h271_sculling_multistep_gamma_typo(ctx: Context) -> None:
    probe = next(_readings(torch.Generator().manual_seed(13), 256, 10, 61))
    products = {}

    def run(c, gamma, measure):
        gen = seeded(27104)
        model = GlideNet(10)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [MILESTONE_SCULL], gamma=gamma)

        def before(step):
            if measure and step in (MILESTONE_SCULL - 5, MILESTONE_SCULL):
                products[step] = opt.param_groups[0]["lr"] * _top_eig(model, *probe)

        _train(
            c, model, opt, _readings(gen, 128, 10, 61), 160, F.mse_loss, before=before, sched=sched
        )

    twin = _Twin()
    run(twin, 0.1, False)
    run(ctx, 10.0, True)
    ls = ctx.losses
    pre = ls[:MILESTONE_SCULL]
    post = [v if math.isfinite(v) else float("inf") for v in ls[MILESTONE_SCULL:]]
    ctx.check("finite and falling before the milestone", _fell(pre))
    ctx.check(
        "lr x sharpness under 2 before the milestone", products.get(MILESTONE_SCULL - 5, 9) < 2
    )
    ctx.check("lr x sharpness over 2 at the milestone", products.get(MILESTONE_SCULL, 0) > 2)
    ctx.check(
        "the loss blows up after it (over 100x the loss before)", max(post) > 100 * _mean(pre[-10:])
    )
    ctx.check("the twin with gamma 0.1 stays finite and falls", _fell(twin.losses))


# -- fumarole: the variance ReLU lost its eps ----------------------------------------------------


class PulseNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        self.var_act = nn.ReLU()
        with torch.no_grad():
            self.var_head.bias.fill_(1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.var_act(self.var_head(h))], -1)


def _gauss_nll(eps):
    def loss(out, y):
        mu, var = out[:, 0], out[:, 1] + eps
        return 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()

    return loss


ONSET_FUMAROLE = 39


@scenario(
    family="fumarole_steam_pulse_gaussian_nll_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("var_act", "var_head"),
    diverges=ONSET_FUMAROLE,
    heldout=True,
    note="A SiLU MLP with a mean head and a variance head (fc1, act1, fc2, act2, mean_head, var_head, var_act) forecasting the next steam-pulse interval of a fumarole from 12 standardised readings (vent temperature, SO2 flux, ground tilt, barometric pressure, ...), Adagrad at 3e-3, a hand-written Gaussian NLL 0.5 * (log var + (y - mu)^2 / var). The variance is ReLU(var_head) + eps and the eps was lost in a refactor (typed 0): as the variance head shrinks the variance of well-predicted rows, one row's variance reaches exactly 0 at step 39, log 0 = -inf and r^2 / 0 = inf give a NaN loss there. Finite before; the twin with eps 1e-4 stays finite.",
)
def h271_fumarole_variance_without_eps(ctx: Context) -> None:
    zero_at = []

    def run(c, eps):
        gen = seeded(27105)
        model = PulseNet(12)
        opt = torch.optim.Adagrad(model.parameters(), lr=3e-3)

        def watch(step, out, x, y):
            if eps == 0 and float(out[:, 1].detach().min()) == 0.0 and not zero_at:
                zero_at.append(step)

        _train(
            c, model, opt, _readings(gen, 128, 12, 67, noise=0.2), 150, _gauss_nll(eps), watch=watch
        )

    twin = _Twin()
    run(twin, 1e-4)
    run(ctx, 0.0)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check(f"the loss is first non-finite at step {ONSET_FUMAROLE}", bad == ONSET_FUMAROLE)
    ctx.check("finite and falling before it", bad is not None and _fell(ls[:bad]))
    ctx.check("a variance reaches exactly 0 at that step", zero_at == [ONSET_FUMAROLE])
    ctx.check(
        "the twin with eps 1e-4 stays finite", _finite(twin.losses) and len(twin.losses) == 150
    )


# -- chainmail: the trunk's lr multiplier parsed with int() --------------------------------------


class WeaveNet(nn.Module):
    def __init__(self, d_in, hidden=64, classes=6):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.trunk(x))


@scenario(
    family="chainmail_ring_weave_two_group_classifier",
    optimizer="SGD",
    cause="update_ratio_out_of_range",
    where=("trunk",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP split into a trunk (trunk.0, trunk.2) and a head classifying which of 6 chainmail weaves (European 4-in-1, Japanese 6-in-1, Byzantine, ...) a ring sheet is from 18 standardised readings of ring diameter, wire gauge and drape; SGD with Nesterov momentum 0.9, base lr 5e-2, two param groups with the trunk's lr = base x trunk_lr_mult, cross-entropy. The multiplier comes from a YAML string '0.5' and was parsed with int(float(...)), which gives 0: the trunk's lr is 0, its weights never move (update ratio exactly 0) while the head trains, and the loss ends well above the twin's with the multiplier 0.5. Finite, no blow-up.",
)
def h271_chainmail_trunk_mult_parsed_int(ctx: Context) -> None:
    def run(c, mult):
        gen = seeded(27106)
        model = WeaveNet(18)
        base = 5e-2
        opt = torch.optim.SGD(
            [
                {"params": model.trunk.parameters(), "lr": base * mult},
                {"params": model.head.parameters(), "lr": base},
            ],
            lr=base,
            momentum=0.9,
            nesterov=True,
        )
        t0, h0 = _flat(model.trunk.parameters()), _flat(model.head.parameters())
        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 18, 6, 73, noise=0.8),
            200,
            F.cross_entropy,
            classifier=True,
        )
        return (
            float((_flat(model.trunk.parameters()) - t0).norm() / t0.norm()),
            float((_flat(model.head.parameters()) - h0).norm() / h0.norm()),
        )

    twin = _Twin()
    run(twin, int(float("0.5")) or 0.5)
    trunk_moved, head_moved = run(ctx, int(float("0.5")))
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the trunk's weights moved under 1e-6 of their norm", trunk_moved < 1e-6)
    ctx.check("the head's weights moved over 10% of their norm", head_moved > 0.1)
    ctx.check("the loss fell (the head alone trains)", _fell(ls))
    ctx.check(
        "the twin with the trunk training ends under 0.8x of the loss",
        _mean(twin.losses[-10:]) < 0.8 * _mean(ls[-10:]),
    )


# -- cliff diving: the init std typed 2/sqrt(fan_in) ---------------------------------------------


class DeepLeaky(nn.Module):
    def __init__(self, d_in, width=64, depth=12, std_of_fan_in=None):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.act = nn.LeakyReLU(0.01)
        self.head = nn.Linear(width, 1)
        if std_of_fan_in is not None:
            for lin in self.layers:
                nn.init.normal_(lin.weight, std=std_of_fan_in(lin.in_features))
                nn.init.zeros_(lin.bias)

    def forward(self, x, keep=None):
        for lin in self.layers:
            x = self.act(lin(x))
            if keep is not None:
                x.retain_grad()
                keep.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="cliff_diving_entry_splash_deep_leaky_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="A 12-layer leaky-ReLU MLP (layers.0 ... layers.11, head) scoring a cliff diver's entry by its splash height from 16 standardised readings (take-off height, rotation rate, entry angle, ...), SGD with momentum 0.9 at 1e-3, MSE. A hand-written Kaiming init typed the weight std as 2 / sqrt(fan_in) for sqrt(2 / fan_in): every layer multiplies the signal by about sqrt(2), so the gradient with respect to the activations grows about sqrt(2) per layer going back, the first hidden layer's over 30x the last's, the output starts tens of times too large and the loss blows up within the first steps. The twin with sqrt(2 / fan_in) trains and stays finite. The batches are ordinary.",
)
def h271_cliff_diving_init_std_typo(ctx: Context) -> None:
    ratio = {}

    def run(c, std):
        gen = seeded(27107)
        model = DeepLeaky(16, std_of_fan_in=std)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x, y = next(_readings(torch.Generator().manual_seed(17), 256, 16, 89))
        keep = []
        F.mse_loss(model(x, keep), y).backward()
        ratio[std is _typo] = float(keep[0].grad.norm() / keep[-1].grad.norm())
        model.zero_grad()
        _train(c, model, opt, _readings(gen, 128, 16, 89), 120, F.mse_loss)

    twin = _Twin()
    run(twin, _kaiming)
    run(ctx, _typo)
    ls = ctx.losses
    fin = [v if math.isfinite(v) else float("inf") for v in ls]
    ctx.check("activation gradient at the first hidden layer over 30x the last's", ratio[True] > 30)
    ctx.check("with the intended std that ratio is under 5", ratio[False] < 5)
    ctx.check("the loss blows up (over 1e4x its first value)", max(fin) > 1e4 * ls[0])
    ctx.check("the twin with sqrt(2 / fan_in) stays finite and falls", _fell(twin.losses))


def _typo(fan_in):
    return 2.0 / math.sqrt(fan_in)


def _kaiming(fan_in):
    return math.sqrt(2.0 / fan_in)


# -- pedicab: the resume step sums the Huber loss ------------------------------------------------

ONSET_PEDICAB = 120


@scenario(
    family="pedicab_ride_time_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PEDICAB,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a pedicab ride's time from 12 standardised readings (distance, climb, passengers, traffic index, ...), plain SGD at 5e-2, Huber loss, gradient clipping at norm 5. The job is resumed at step 120 and the resume path builds that step's loss with an old helper whose reduction defaults to 'sum': the 128-row batch gives one gradient 128x the usual while the batch and its mean loss are ordinary. Clipping bounds the step and the run carries on to its level before. Finite, no blow-up.",
)
def h271_pedicab_resume_sums_loss(ctx: Context) -> None:
    gen = seeded(27108)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)
    seen = []

    def watch(step, out, x, y):
        seen.append(float(x.abs().max()))

    def scale(step):
        return 128.0 if step == ONSET_PEDICAB else 1.0

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 128, 12, 97),
        220,
        F.huber_loss,
        clip=5.0,
        scale=scale,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = ls[ONSET_PEDICAB - 20 : ONSET_PEDICAB]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_PEDICAB]))
    ctx.check(
        "gradient at the onset over 50x the median before",
        gn[ONSET_PEDICAB] > 50 * _median(gn[ONSET_PEDICAB - 20 : ONSET_PEDICAB]),
    )
    ctx.check("the batch is ordinary (max |x| under 7)", seen[ONSET_PEDICAB] < 7)
    ctx.check(
        "its mean loss is ordinary (under 3x the median before)",
        ls[ONSET_PEDICAB] < 3 * _median(before),
    )
    ctx.check(
        "the loss returns to its level (last 20 under 1.5x the 20 before)",
        _mean(ls[-20:]) < 1.5 * _mean(before),
    )


# -- beekeeper's smoker: temperature typed 0.01 --------------------------------------------------


class SmokerNet(Stack):
    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, hidden=64, out=classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="beekeeper_smoker_fuel_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying which fuel (burlap, pine needles, wood shavings, cardboard, dried grass) is burning in a beekeeper's smoker from 14 standardised readings of smoke colour, temperature and puff rate; NAdam at 3e-3, cross-entropy on head(h) / T. The softmax temperature T came from a distillation config where 0.01 belongs to a different head, typed here for 1.0: the logits are scaled 100x, so on most training rows the float32 softmax rounds the target's probability to exactly 1.0 (over half the rows by the end) while the twin with T = 1 has almost none. Finite, no blow-up.",
)
def h271_beekeeper_smoker_temperature_typo(ctx: Context) -> None:
    def run(c, temp):
        gen = seeded(27109)
        model = SmokerNet(14, 5, temp)
        opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
        frac = []

        def watch(step, out, x, y):
            frac.append(collapsed_fraction(out.detach(), y))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 14, 5, 101),
            150,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return frac

    twin = _Twin()
    twin_frac = run(twin, 1.0)
    frac = run(ctx, 0.01)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "over half the rows have the target's softmax exactly 1.0 at the end",
        _mean(frac[-10:]) > 0.5,
    )
    ctx.check("the twin with T = 1 has under 5% such rows", max(twin_frac) < 0.05)


# -- fog harp: the resume step sums the loss over rows and hours ---------------------------------

ONSET_FOG = 60


@scenario(
    family="fog_harp_hourly_water_yield_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_FOG,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) forecasting a fog harp's (vertical-wire fog collector) water yield for each of the next 8 hours from 10 standardised readings (fog density, wind speed and direction, wire pitch, temperature, ...), Adam at 1e-3, MSE. The job is resumed at step 60 and the resume path builds that step's loss with reduction='sum' over the 128 rows x 8 hours: Adam receives one gradient about 1024x the others, which fills its second moment (exp_avg_sq); for the next 100 steps the updates are over 5x smaller than before and under half the twin's, and the loss stalls above the twin without the bug. The batches are ordinary; finite, no blow-up.",
)
def h271_fog_harp_resume_sums_loss(ctx: Context) -> None:
    def hourly(gen):
        for x, y in _readings(gen, 128, 10, 103):
            yield x, y[:, None] * torch.linspace(0.6, 1.4, 8) + 0.1 * torch.sin(x[:, :8])

    def run(c, bug):
        gen = seeded(27110)
        model = Stack(10, hidden=64, out=8, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moved, prev, seen = [], {}, []

        def before(step):
            prev["w"] = _flat(model.parameters())

        def after(step):
            moved.append(float((_flat(model.parameters()) - prev["w"]).norm()))

        def watch(step, out, x, y):
            seen.append(max(float(x.abs().max()), float(y.abs().max())))

        def scale(step):
            return 1024.0 if bug and step == ONSET_FOG else 1.0

        _train(
            c,
            model,
            opt,
            hourly(gen),
            220,
            F.mse_loss,
            before=before,
            after=after,
            watch=watch,
            scale=scale,
        )
        return moved, seen

    twin = _Twin()
    twin_moved, _ = run(twin, False)
    moved, seen = run(ctx, True)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(moved[ONSET_FOG - 20 : ONSET_FOG])
    late = moved[ONSET_FOG + 20 : ONSET_FOG + 120]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_FOG], ratio=0.7))
    ctx.check(
        "the gradient at the onset over 500x the median before",
        gn[ONSET_FOG] > 500 * _median(gn[ONSET_FOG - 20 : ONSET_FOG]),
    )
    ctx.check("the batch at the onset is ordinary (max |x|, |y| under 7)", seen[ONSET_FOG] < 7)
    ctx.check(
        "updates 20-120 steps after the onset over 5x smaller than before", _median(late) < pre / 5
    )
    ctx.check(
        "those updates under half the twin's",
        _median(late) < _median(twin_moved[ONSET_FOG + 20 : ONSET_FOG + 120]) / 2,
    )
    ctx.check(
        "the loss stalls: the twin ends under 0.8x of it",
        _mean(twin.losses[-10:]) < 0.8 * _mean(ls[-10:]),
    )


# -- controls -------------------------------------------------------------------------------------


def _crews(gen, batch, paddlers=6, d_item=8, seed=107):
    """Crews of paddlers: the crew's time is the sum of per-paddler terms plus the weakest."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_item, generator=g)
    v = torch.randn(d_item, generator=g)
    while True:
        x = torch.randn(batch, paddlers, d_item, generator=gen)
        each = torch.tanh(x @ w / math.sqrt(d_item))
        weakest = torch.sin(x @ v / math.sqrt(d_item)).min(1).values
        y = each.mean(1) + 0.5 * weakest
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


class CrewNet(nn.Module):
    """A per-paddler encoder shared over the crew, mean and max pooled, then a crew aggregator."""

    def __init__(self, d_item=8, hidden=32):
        super().__init__()
        self.paddler_encoder = nn.Sequential(
            nn.Linear(d_item, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.crew_aggregator = nn.Sequential(
            nn.LayerNorm(2 * hidden), nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    def forward(self, x):
        h = self.paddler_encoder(x)
        pooled = torch.cat([h.mean(1), h.max(1).values], -1)
        return self.crew_aggregator(pooled).squeeze(-1)


@scenario(
    family="outrigger_canoe_crew_set_pool_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A hierarchical model predicting an outrigger canoe crew's 500 m time from its six paddlers' 8 standardised readings each (stroke rate, reach, power, timing offset, ...): a per-paddler encoder (paddler_encoder) shared over the crew, mean and max pooling, then a crew aggregator (crew_aggregator, LayerNorm + MLP); AdamW at a OneCycleLR peak of 3e-3 with two param groups (weight decay 1e-2 on the weights, none on biases and LayerNorm), gradient clipping at norm 1, Huber loss. An ordinary run.",
)
def h271_outrigger_crew_hierarchical_control(ctx: Context) -> None:
    gen = seeded(27111)
    model = CrewNet()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    _train(ctx, model, opt, _crews(gen, 64), steps, F.huber_loss, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under half its start", _fell(ls, ratio=0.5))


@scenario(
    family="millinery_straw_plait_grade_weighted_ce_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading a milliner's straw plait (fine, medium, coarse, seconds, reject) from 16 standardised readings (plait width, straw colour, split count, ...), with imbalanced grades (60%, 22%, 10%, 5%, 3% of rows) and a cross-entropy weighted by inverse class frequency (normalised to mean 1) with label smoothing 0.05; SGD with Nesterov momentum 0.9 at 3e-2 and ReduceLROnPlateau (patience 20, factor 0.5). An ordinary run.",
)
def h271_millinery_imbalanced_weighted_ce_control(ctx: Context) -> None:
    gen = seeded(27112)
    freq = [0.6, 0.22, 0.10, 0.05, 0.03]
    weight = 1.0 / torch.tensor(freq)
    weight = weight / weight.mean()
    model = Stack(16, hidden=64, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=3e-2, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=20, factor=0.5)
    seen = []

    def watch(step, out, x, y):
        seen.append(y)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, weight=weight, label_smoothing=0.05)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, 109, noise=0.6, freq=freq),
        200,
        loss_fn,
        classifier=True,
        sched=sched,
        watch=watch,
    )
    ls = ctx.losses
    counts = torch.bincount(torch.cat(seen), minlength=5).float()
    x, y = next(_kinds(torch.Generator().manual_seed(1), 2000, 16, 5, 109, noise=0.6, freq=freq))
    with torch.no_grad():
        pred = model(x).argmax(-1)
    rare = y >= 3
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under half its start", _fell(ls, ratio=0.5))
    ctx.check(
        "the data really are imbalanced (commonest grade over 10x the rarest)",
        counts[0] > 10 * counts[4],
    )
    ctx.check(
        "the rare grades are recognised (accuracy on them over 0.7)",
        float((pred[rare] == y[rare]).float().mean()) > 0.7,
    )


class TiedStrokeAE(nn.Module):
    """A tied-weight autoencoder: the decoder uses the encoder's weight transposed."""

    def __init__(self, d_in=32, code=8):
        super().__init__()
        self.encoder = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.decoder_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.encoder(x)), self.encoder.weight.t(), self.decoder_bias)


def _strokes(gen, batch, d_in=32, code=6, seed=113):
    """Pen-pressure profiles of calligraphy strokes: a few smooth shapes mixed, plus noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, d_in)
    freqs = 0.5 + 3 * torch.rand(code, generator=g)
    basis = torch.sin(math.pi * freqs[:, None] * t + 6.28 * torch.rand(code, 1, generator=g))
    while True:
        mix = torch.randn(batch, code, generator=gen)
        x = mix @ basis / math.sqrt(code) + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="calligraphy_nib_stroke_tied_autoencoder",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="A tied-weight autoencoder (encoder, act, decoder = encoder.weight transposed plus decoder_bias) compressing a broad-nib calligraphy stroke's 32-sample pen-pressure profile to an 8-number code, RMSprop at 2e-3, MSE reconstruction, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, clipping at norm 1 after unscaling. An ordinary run.",
)
def h271_calligraphy_tied_ae_fp16_control(ctx: Context) -> None:
    gen = seeded(27113)
    model = TiedStrokeAE()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _strokes(gen, 64),
        150,
        F.mse_loss,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the reconstruction loss fell to under half its start", _fell(ls, ratio=0.5))
    ctx.check(
        "the loss scale stayed positive and finite", all(0 < s < float("inf") for s in ctx.scales)
    )
