"""Held-out set 268 (``h268_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a whelk-potter's soak-time regressor whose resumed step
keeps a static fp16 loss scale it never divides out, a vanilla-orchid pod grader whose z-loss
is subtracted, an ice-wedge crack-width tanh net whose warm-up lambda lost its min(1, .), a
samphire bundle-weight net fed one shard with the scale reading in grams, a tea-plucking shear
vibration Conv1d net whose per-trace normalisation lost its eps, a hop-picking bine-yield ReLU
net whose OneCycleLR max_lr was typed 100x, a dumpling pleat-fold multilabel net whose trunk
lr divisor was typed 1e5 for 10, a birch-sap drip ReLU recurrent forecaster whose recurrent
identity gain got the input gain 1.3 for 0.9, a grape-treading must-yield Huber net whose valid-row count is 1 for one
step, a pasta-die shape cosine classifier whose scale was typed 300 for 30, and three controls
(a yo-yo trick recommender with player and trick embeddings, a speedcubing solve-time Gaussian
NLL net with gradient accumulation and a linear warm-up, a snow-sculpture crack-type fp16 net
with a GradScaler).

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


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


def _traces(gen, batch, classes, seed, channels=3, length=32, noise=0.5):
    """Multi-channel traces: each class a different mix of frequencies, random phase and gain."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.9 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        gain = 0.5 + 2.0 * torch.rand(batch, 1, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase)
        yield gain * (x + noise * torch.randn(batch, channels, length, generator=gen)), y


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


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- whelk potter: the resumed step keeps a static loss scale it never divides out --------------

ONSET_WHELK = 50


@scenario(
    family="whelk_pot_soak_time_scaled_loss_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_WHELK,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how many hours a whelk fisher's baited pots should soak from 12 standardised readings (bait age, water temperature, tide range, depth, seabed type, ...), Adam at 1e-3, MSE. The job was started with an old fp16 recipe that multiplies the loss by a static loss scale of 65536 and divides the gradients by it before the step; it runs in fp32 now with the scaling off, but the resume path at step 50 reads the scale from the checkpoint and multiplies that step's loss by it without the division: Adam receives one gradient about 65536x the others, which fills its second moment (exp_avg_sq); from 50 to 120 steps afterwards every update is over 10x smaller than before (and well under the twin's) and the loss stalls above the twin without the bug. The batches are ordinary; finite, no blow-up.",
)
def h268_whelk_pot_static_loss_scale_on_resume(ctx: Context) -> None:
    def run(c, bug):
        gen = seeded(26801)
        model = Stack(12, hidden=64, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moved, prev, xs = [], {}, []

        def before(step):
            prev["w"] = _flat(model)

        def after(step):
            moved.append(float((_flat(model) - prev["w"]).norm()))

        def watch(step, out, x, y):
            if step in (ONSET_WHELK - 1, ONSET_WHELK):
                xs.append(max(float(x.abs().max()), float(y.abs().max())))

        def scale(step):
            return 65536.0 if bug and step == ONSET_WHELK else 1.0

        _train(
            c,
            model,
            opt,
            _readings(gen, 128, 12, 37),
            200,
            F.mse_loss,
            scale=scale,
            before=before,
            after=after,
            watch=watch,
        )
        return moved, xs

    twin = _Twin()
    twin_moved, _ = run(twin, bug=False)
    moved, xs = run(ctx, bug=True)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(moved[ONSET_WHELK - 20 : ONSET_WHELK])
    late = moved[ONSET_WHELK + 50 : ONSET_WHELK + 120]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_WHELK], ratio=0.7))
    ctx.check(
        "the gradient Adam saw at the onset over 1e4x the median before",
        gn[ONSET_WHELK] > 1e4 * _median(gn[ONSET_WHELK - 20 : ONSET_WHELK]),
    )
    ctx.check("the batches at the onset are ordinary (max |x|, |y| under 7)", max(xs) < 7)
    ctx.check(
        "updates 50-120 steps after the onset over 10x smaller than before",
        _median(late) < pre / 10,
    )
    ctx.check(
        "those updates under a fifth of the twin's over the same steps",
        _median(late) < 0.2 * _median(twin_moved[ONSET_WHELK + 50 : ONSET_WHELK + 120]),
    )
    ctx.check(
        "the loss stalls: the twin ends under 0.8x of it",
        _mean(twin.losses[-10:]) < 0.8 * _mean(ls[-10:]),
    )


# -- vanilla orchid: the z-loss is subtracted ----------------------------------------------------


def _zloss_ce(coef):
    def loss(logits, y):
        lse = torch.logsumexp(logits, -1)
        return F.cross_entropy(logits, y) + coef * (lse**2).mean()

    return loss


@scenario(
    family="vanilla_orchid_pod_grade_zloss_classifier",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) grading a hand-pollinated vanilla orchid's cured pod (4 grades) from 16 standardised readings (pod length, moisture, vanillin estimate, split, colour, ...), RMSprop at 1e-3, cross-entropy plus a z-loss on the head's log-sum-exp meant to keep the logits small (+1e-2 * lse^2). The loss builder subtracts its regularisers and the z-loss coefficient was entered with the penalty's sign, so the run adds -1e-2 * lse^2: the objective is unbounded below, the head's logits grow on every input step after step (over 20x, still growing at the end) and the loss goes ever more negative; the twin with the intended sign keeps the logits an order smaller. Finite in the run's length, no blow-up.",
)
def h268_vanilla_orchid_zloss_sign(ctx: Context) -> None:
    def run(c, coef):
        gen = seeded(26802)
        model = Stack(16, hidden=48, out=4, act=nn.GELU)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 16, 4, 71))[0]
        with torch.no_grad():
            peak = [float(model(probe).abs().max())]

        def after(step):
            with torch.no_grad():
                peak.append(float(model(probe).abs().max()))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 4, 71),
            200,
            _zloss_ce(coef),
            classifier=True,
            after=after,
        )
        return peak

    twin = _Twin()
    twin_peak = run(twin, 1e-2)
    peak = run(ctx, -1e-2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak |logit| grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("the peak is still growing over the last 50 steps", peak[-1] > 1.2 * peak[-50])
    ctx.check("the loss went below zero", ls[-1] < 0)
    ctx.check("the intended sign keeps the peak 5x smaller", twin_peak[-1] < peak[-1] / 5)


# -- ice wedge: the warm-up lambda lost its min(1, .) --------------------------------------------

WARM_ICE = 20


class WedgeNet(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _top_eig(model, x, y, iters=12):
    """Largest Hessian eigenvalue of the MSE on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        nv = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / nv for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="ice_wedge_polygon_crack_width_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=WARM_ICE,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how wide a permafrost ice-wedge crack opens in a winter from 10 standardised readings (air temperature drop, snow cover, soil moisture, polygon size, ...), plain SGD with a base lr of 0.1 and a LambdaLR linear warm-up over 20 steps, MSE. The warm-up lambda was written step / 20 without its min(1, .): past step 20 the lr keeps climbing linearly, 0.005 more every step; lr x the loss's top Hessian eigenvalue (measured by power iteration on a fixed batch) is under 2 through warm-up and crosses the 2/sharpness stability limit later on, after which the loss oscillates and blows up. The twin with min(1, .) trains and stays finite. The batches are ordinary.",
)
def h268_ice_wedge_warmup_without_cap(ctx: Context) -> None:
    state = {}

    def run(c, capped):
        gen = seeded(26803)
        model = WedgeNet(10)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        if capped:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARM_ICE))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / WARM_ICE)
        probe = next(_readings(torch.Generator().manual_seed(11), 256, 10, 79))
        products = {}

        def before(step):
            if not capped and step % 5 == 0 and "cross" not in state:
                lr = opt.param_groups[0]["lr"]
                products[step] = lr * _top_eig(model, *probe)
                if products[step] > 2:
                    state["cross"] = step

        _train(
            c, model, opt, _readings(gen, 128, 10, 79), 220, F.mse_loss, sched=sched, before=before
        )
        return products

    twin = _Twin()
    run(twin, capped=True)
    products = run(ctx, capped=False)
    ls = ctx.losses
    cross = state.get("cross", 10**6)
    low = min(ls[: min(cross, len(ls))]) if ls else 0.0
    bad = _first_bad(ls)
    blew = bad is not None or max(ls) > 1e4 * max(low, 1e-6)
    blow = bad if bad is not None else next((i for i, v in enumerate(ls) if v > 1e3 * low), None)
    ctx.check(
        "lr x sharpness under 2 through the warm-up",
        all(v < 2 for s, v in products.items() if s <= WARM_ICE),
    )
    ctx.check("lr x sharpness crosses 2 after the warm-up", WARM_ICE < cross < len(ls))
    ctx.check("loss fell before the crossing", _fell(ls[: min(cross, len(ls))], ratio=0.6))
    ctx.check("the loss blows up (non-finite or over 1e4x its low)", blew)
    ctx.check("the blow-up comes after the crossing", blow is not None and blow >= cross)
    ctx.check("the capped twin stays finite and trains", _fell(twin.losses, ratio=0.6))


# -- samphire: one shard's scale reading in grams ------------------------------------------------

ONSET_SAMPHIRE = 90


@scenario(
    family="samphire_harvest_bundle_weight_relu_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SAMPHIRE,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the market weight of a forager's marsh samphire bundle from 10 standardised readings (stem length, tide height at cutting, salt-marsh zone, hours since cutting, the field scale's reading in kg, ...), SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at 2. One shard came from a picker whose field scale logs grams, and the standardisation of the scale column assumes kg: at step 90 sixteen rows of one batch carry that input at about 1000x, thousands of standard deviations; the targets are ordinary. The loss and gradient at that step are hundreds of times the others; clipped, the run recovers; finite.",
)
def h268_samphire_scale_in_grams_shard(ctx: Context) -> None:
    gen = seeded(26804)
    model = Stack(10, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_SAMPHIRE:
            x = x.clone()
            kg = 0.4 + 0.1 * x[:16, 9]
            x[:16, 9] = (1000.0 * kg - 0.4) / 0.1
            seen["x_max"] = float(x.abs().max())
            seen["y_max"] = float(y.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 83), 200, F.mse_loss, alter=alter, clip=2.0)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_SAMPHIRE - 20 : ONSET_SAMPHIRE])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SAMPHIRE], ratio=0.6))
    ctx.check("loss at the onset over 100x the median before", ls[ONSET_SAMPHIRE] > 100 * pre)
    ctx.check(
        "gradient at the onset over 100x the median before",
        gn[ONSET_SAMPHIRE] > 100 * _median(gn[ONSET_SAMPHIRE - 20 : ONSET_SAMPHIRE]),
    )
    ctx.check("the onset inputs hold gram readings (over 1e3)", seen.get("x_max", 0.0) > 1e3)
    ctx.check("the onset targets are ordinary (|y| under 4)", seen.get("y_max", 99.0) < 4)
    ctx.check(
        "the loss is back under 3x its pre-onset level 60 steps later",
        _mean(ls[ONSET_SAMPHIRE + 50 : ONSET_SAMPHIRE + 60]) < 3 * pre,
    )


# -- tea plucking: the per-trace normalisation lost its eps --------------------------------------

ONSET_TEA = 90


class TraceNorm(nn.Module):
    """Divides each channel of a trace by its own energy (meant with an eps)."""

    def __init__(self, eps):
        super().__init__()
        self.eps = eps
        self.last_bad = False

    def forward(self, x):
        out = x / (x.norm(dim=-1, keepdim=True) + self.eps)
        self.last_bad = bool((~torch.isfinite(out)).any())
        return out


class ShearNet(nn.Module):
    """norm -> conv1 -> act1 -> conv2 -> act2 -> mean pool -> head."""

    def __init__(self, channels, classes, eps, width=16):
        super().__init__()
        self.norm = TraceNorm(eps)
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(self.norm(x)))))
        return self.head(h.mean(-1))


@scenario(
    family="tea_plucking_shear_vibration_conv1d_classifier",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=ONSET_TEA,
    heldout=True,
    onset=ONSET_TEA,
    note="A ReLU Conv1d classifier (norm, conv1, act1, conv2, act2, head) telling which of 5 leaf-flush stages a tea plucker's shear is cutting from 32 samples of a 3-axis vibration sensor on the shear, NAdam at 1e-2, cross-entropy. The norm module divides each channel of a trace by its own energy and the + eps in the denominator was left out; at step 90 one trace carries an axis whose lead came loose and reads exactly 0, the division is 0/0 and the norm module's output is NaN, the loss is NaN from that step. The other channels and rows are ordinary; the twin with eps 1e-6 stays finite.",
)
def h268_tea_plucking_trace_norm_no_eps(ctx: Context) -> None:
    seen = {}

    def run(c, eps):
        gen = seeded(26805)
        model = ShearNet(3, 5, eps)
        opt = torch.optim.NAdam(model.parameters(), lr=1e-2)

        def alter(step, x, y):
            if step == ONSET_TEA:
                x = x.clone()
                x[7, 1] = 0.0
                if eps == 0.0:
                    seen["x_max"] = float(x.abs().max())
            return x, y

        def watch(step, out, x, y):
            if eps == 0.0 and model.norm.last_bad and "step" not in seen:
                seen["step"] = step

        _train(
            c,
            model,
            opt,
            _traces(gen, 64, 5, 89, noise=0.3),
            160,
            F.cross_entropy,
            classifier=True,
            alter=alter,
            watch=watch,
        )

    twin = _Twin()
    run(twin, 1e-6)
    run(ctx, 0.0)
    ls = ctx.losses
    ctx.check("the loss is non-finite first at step 90", _first_bad(ls) == ONSET_TEA)
    ctx.check(
        "finite and falling before step 90",
        _finite(ls[:ONSET_TEA]) and _fell(ls[:ONSET_TEA], ratio=0.6),
    )
    ctx.check("the norm module produced NaN first at step 90", seen.get("step") == ONSET_TEA)
    ctx.check("the batch is otherwise ordinary (max |x| under 10)", seen.get("x_max", 99.0) < 10)
    ctx.check("the twin with eps stays finite", _finite(twin.losses) and len(twin.losses) == 160)


# -- hop picking: OneCycleLR's max_lr typed 100x -------------------------------------------------


@scenario(
    family="hop_picking_bine_yield_relu_regressor",
    optimizer="AdamW",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the dried-cone yield of a hop bine from 12 standardised readings (bine height, cone count on a sample, training wire tension, soil moisture, days to picking, ...), AdamW with weight decay 1e-2 under OneCycleLR over 200 steps, MSE. OneCycleLR's max_lr was meant to be 3e-3 and was typed 3e-1: as the rate ramps up, fc2's pre-activations are pushed negative on every input and over half of act2's ReLU units stop firing on a 512-row probe and never fire again while the rate comes back down; the loss stalls far above the twin at the intended max_lr, which keeps its units alive. Finite, no blow-up.",
)
def h268_hop_picking_onecycle_max_lr_typo(ctx: Context) -> None:
    def run(c, max_lr):
        gen = seeded(26806)
        model = Stack(12, hidden=64)
        opt = torch.optim.AdamW(model.parameters(), lr=max_lr / 25, weight_decay=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=200)
        probe = next(_readings(torch.Generator().manual_seed(5), 512, 12, 97))[0]

        def dead():
            with torch.no_grad():
                h1 = model.act1(model.fc1(probe))
                h2 = model.act2(model.fc2(h1))
            return dead_fraction(h1), dead_fraction(h2)

        fr = [dead()]

        def after(step):
            fr.append(dead())

        _train(c, model, opt, _readings(gen, 64, 12, 97), 200, F.mse_loss, sched=sched, after=after)
        return fr

    twin = _Twin()
    twin_fr = run(twin, 3e-3)
    fr = run(ctx, 3e-1)
    ls = ctx.losses
    both = [b for a, b in fr]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("act2 under 20% dead at init", both[0] < 0.2)
    ctx.check("act2 over half dead at the end", both[-1] > 0.5)
    ctx.check("act2 over half dead over the last 50 steps", min(both[-50:]) > 0.5)
    ctx.check("the intended max_lr keeps act2 under 20% dead", twin_fr[-1][1] < 0.2)
    ctx.check(
        "the twin ends under half this run's loss", _mean(twin.losses[-10:]) < 0.5 * _mean(ls[-10:])
    )


# -- dumpling pleats: the trunk lr divisor typed 1e5 for 10 --------------------------------------


def _pleats(gen, batch, d_in=14, labels=5, seed=101):
    """Standardised readings of a dumpling maker's fold (wrapper thickness, filling mass, ...)
    and which of 5 pleat faults are present (multilabel)."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(d_in, 32, generator=g) / math.sqrt(d_in)
    w2 = torch.randn(32, labels, generator=g) / math.sqrt(32)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        logits = 2.5 * torch.tanh(x @ w1) @ w2 * 2
        yield x, (torch.rand(batch, labels, generator=gen) < torch.sigmoid(logits)).float()


@scenario(
    family="dumpling_pleat_fold_multilabel_bce_mlp",
    optimizer="SGD(nesterov=True)",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2 as the trunk, then head) tagging which of 5 pleat faults (torn, unsealed, uneven, too few, overfilled) a dumpling maker's fold shows from 14 standardised readings, SGD with Nesterov momentum 0.9 at 0.2, BCE-with-logits. The recipe gives the trunk a tenth of the head's rate through param groups, {'params': trunk, 'lr': base_lr / cfg.trunk_div}, and trunk_div was typed 1e5 for 10: the trunk's per-step update is under 1e-5 of its weights' norm, over 1e3x smaller in ratio than the head's, and it never learns; the head alone fits a little, the loss falls far less than the twin with trunk_div 10. Finite, no blow-up.",
)
def h268_dumpling_trunk_lr_divisor_typo(ctx: Context) -> None:
    def run(c, div):
        gen = seeded(26807)
        model = Stack(14, hidden=48, out=5, act=nn.Tanh)
        trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
        base = 0.2
        opt = torch.optim.SGD(
            [{"params": trunk, "lr": base / div}, {"params": model.head.parameters()}],
            lr=base,
            momentum=0.9,
            nesterov=True,
        )
        ratios = {"fc1": [], "fc2": [], "head": []}
        prev = {}

        def before(step):
            for k in ratios:
                prev[k] = getattr(model, k).weight.detach().clone()

        def after(step):
            for k in ratios:
                w = getattr(model, k).weight.detach()
                ratios[k].append(float((w - prev[k]).norm() / w.norm()))

        _train(
            c,
            model,
            opt,
            _pleats(gen, 64),
            200,
            F.binary_cross_entropy_with_logits,
            before=before,
            after=after,
        )
        return {k: _median(v[20:]) for k, v in ratios.items()}

    twin = _Twin()
    run(twin, 10.0)
    r = run(ctx, 1e5)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("fc1's update ratio under 1e-5", r["fc1"] < 1e-5)
    ctx.check("fc2's update ratio under 1e-5", r["fc2"] < 1e-5)
    ctx.check(
        "the head's ratio over 1e3x fc1's and fc2's", r["head"] > 1e3 * max(r["fc1"], r["fc2"])
    )
    ctx.check(
        "the twin ends under 0.9x this run's loss",
        _mean(twin.losses[-20:]) < 0.9 * _mean(ls[-20:]),
    )


# -- birch sap: the recurrent identity gain 1.3 for 0.9 ------------------------------------------


class DripCell(nn.Module):
    """h_t = relu(ih(x_t) + hh(h_{t-1})), hh initialised as gain * identity (IRNN style)."""

    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)
        with torch.no_grad():
            self.hh.weight.copy_(gain * torch.eye(hidden))
            nn.init.normal_(self.ih.weight, std=0.3 / math.sqrt(d_in))
            self.ih.bias.fill_(0.05)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hh.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.ih(x[:, t]) + self.hh(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return h


class DripForecaster(nn.Module):
    def __init__(self, gain, d_in=3, hidden=32):
        super().__init__()
        self.cell = DripCell(d_in, hidden, gain)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.cell(x)).squeeze(-1)


def _sap(gen, batch, length=24):
    """Hourly readings from a tapped birch (trunk temperature, air temperature, stem pressure),
    standardised, and the next hour's drip rate, standardised."""
    while True:
        base = torch.randn(batch, 1, 3, generator=gen)
        t = torch.arange(length).float()[None, :, None]
        x = 0.6 * torch.sin(0.26 * t + base) + 0.3 * torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh(x[:, -6:, 0].mean(1) - x[:, -3:, 1].mean(1) + 0.5 * x[:, -1, 2])
        yield x, y


@scenario(
    family="birch_sap_drip_relu_rnn_forecaster",
    optimizer="ASGD",
    cause="exploding_gradients",
    where=("cell", "cell.hh"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU recurrent forecaster (cell with ih and hh, then head) reading 24 hourly readings of a tapped birch (trunk temperature, air temperature, stem pressure) and forecasting the next hour's sap drip rate, ASGD at 1e-3, MSE, gradient clipping at 1. The recurrent weight hh is initialised as gain x identity with the recurrent gain meant as 0.9; the config's input-gain value 1.3 was pasted into the recurrent-gain field: the hidden state and the gradient through time grow step after step backwards through the 24 steps, the gradient on the first hidden state is over 100x the one on the last (under 1x for the twin at 0.9), the gradient norm is thousands of times the twin's and the loss stays orders above it; the clipping keeps the run finite, no NaN.",
)
def h268_birch_sap_recurrent_gain_pasted(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(26808)
        model = DripForecaster(gain)
        opt = torch.optim.ASGD(model.parameters(), lr=1e-3)
        growth = []
        batches = _sap(gen, 64)
        c.attach(model, opt)
        for _ in range(150):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            s = model.cell.states
            growth.append(float(s[0].grad.norm() / (s[-1].grad.norm() + 1e-30)))
            c.grad_norms.append(grad_norm(model))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            c.step(loss.detach())
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss.detach())):
                break
        return growth

    twin = _Twin()
    twin_growth = run(twin, 0.9)
    growth = run(ctx, 1.3)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the first hidden state's gradient over 100x the last one's at step 0", growth[0] > 100
    )
    ctx.check("still over 100x at the end", growth[-1] > 100)
    ctx.check(
        "with gain 0.9 the first state's gradient is under the last one's", twin_growth[0] < 1
    )
    ctx.check(
        "gradient norm over 100x the twin's",
        _median(ctx.grad_norms) > 100 * _median(twin.grad_norms),
    )
    ctx.check(
        "the twin trains to under 0.2x this run's loss",
        _mean(twin.losses[-10:]) < 0.2 * _mean(ls[-10:]),
    )


# -- grape treading: the valid-row count is 1 for one step ---------------------------------------

ONSET_GRAPE = 130


@scenario(
    family="grape_treading_must_yield_huber_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_GRAPE,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the must yield of a lagar foot-treading session from 12 standardised readings (grape variety sugar, berry size, treaders, minutes trodden, lagar depth, ...), SGD with momentum 0.9 at 1e-2, Huber loss (delta 1) summed over the rows and divided by the number of valid rows, clipping at 5. At step 130 the de-duplication pass rebuilt the mask and the count was taken from the wrong column, giving 1 instead of 64: that one step's loss and gradient are 64x the steps around it. The batch is ordinary; clipped, the run recovers; finite.",
)
def h268_grape_treading_valid_count_bug(ctx: Context) -> None:
    gen = seeded(26809)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}

    def loss_fn(out, y):
        n_valid = 1 if len(ctx.grad_norms) == ONSET_GRAPE else y.shape[0]
        return F.huber_loss(out, y, reduction="sum", delta=1.0) / n_valid

    def watch(step, out, x, y):
        if step == ONSET_GRAPE:
            seen["x_max"] = float(x.abs().max())
            seen["y_max"] = float(y.abs().max())

    _train(ctx, model, opt, _readings(gen, 64, 12, 103), 220, loss_fn, clip=5.0, watch=watch)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_GRAPE - 10 : ONSET_GRAPE])
    before = _median(gn[ONSET_GRAPE - 20 : ONSET_GRAPE])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_GRAPE], ratio=0.5))
    ctx.check(
        "the gradient norm at the onset over 30x the median before", gn[ONSET_GRAPE] > 30 * before
    )
    ctx.check("the gradient norm 20 steps after back under 3x", gn[ONSET_GRAPE + 20] < 3 * before)
    ctx.check(
        "the batch at the onset is ordinary (|x| under 6, |y| under 4)",
        seen.get("x_max", 99.0) < 6 and seen.get("y_max", 99.0) < 4,
    )
    ctx.check(
        "the loss is back under 2x its pre-onset level 60 steps later",
        _mean(ls[ONSET_GRAPE + 50 : ONSET_GRAPE + 60]) < 2 * max(pre, 1e-3),
    )


# -- pasta die: the cosine classifier's scale typed 300 for 30 -----------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class DieNet(nn.Module):
    def __init__(self, d_in, classes, scale, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="pasta_die_shape_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2) with a cosine classifier head telling which of 6 bronze extrusion dies a pasta maker's piece came from by 24 standardised readings (surface roughness, wall thickness, ridge count, curl, ...), Adamax at 2e-3, cross-entropy. The cosine head multiplies the normalised similarities by a scale meant to be 30 and typed 300: once features separate, the float32 softmax rounds the target's probability to exactly 1 on most rows of a probe while the mistaken rows carry huge losses; the twin at scale 30 keeps its probabilities below 1. Finite, no blow-up.",
)
def h268_pasta_die_cosine_scale_typo(ctx: Context) -> None:
    def run(c, scale):
        gen = seeded(26810)
        model = DieNet(24, 6, scale)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 24, 6, 107))
        with torch.no_grad():
            fr = [collapsed_fraction(model(probe[0]), probe[1])]

        def after(step):
            with torch.no_grad():
                fr.append(collapsed_fraction(model(probe[0]), probe[1]))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 24, 6, 107),
            200,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return fr

    twin = _Twin()
    twin_fr = run(twin, 30.0)
    fr = run(ctx, 300.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 25% of probe rows saturated at init", fr[0] < 0.25)
    ctx.check("over 60% of probe rows saturate to exactly 1 at the end", fr[-1] > 0.6)
    ctx.check("the intended scale saturates under 5%", twin_fr[-1] < 0.05)


# -- healthy controls -----------------------------------------------------------------------------


class TrickRecommender(nn.Module):
    """Player and trick embeddings with biases; the logit that a player lands a trick."""

    def __init__(self, players, tricks, dim=16):
        super().__init__()
        self.player = nn.Embedding(players, dim)
        self.trick = nn.Embedding(tricks, dim)
        self.player_bias = nn.Embedding(players, 1)
        self.trick_bias = nn.Embedding(tricks, 1)
        nn.init.normal_(self.player.weight, std=0.1)
        nn.init.normal_(self.trick.weight, std=0.1)
        nn.init.zeros_(self.player_bias.weight)
        nn.init.zeros_(self.trick_bias.weight)

    def forward(self, pairs):
        p, t = pairs[:, 0], pairs[:, 1]
        dot = (self.player(p) * self.trick(t)).sum(-1)
        return dot + self.player_bias(p).squeeze(-1) + self.trick_bias(t).squeeze(-1)


def _landings(gen, batch, players=300, tricks=80, seed=109):
    """Which yo-yo player lands which trick: latent skill and style factors, trick difficulty."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(players, 6, generator=g)
    v = torch.randn(tricks, 6, generator=g)
    skill = torch.randn(players, generator=g)
    difficulty = torch.randn(tricks, generator=g)
    while True:
        p = torch.randint(0, players, (batch,), generator=gen)
        t = torch.randint(0, tricks, (batch,), generator=gen)
        logit = (u[p] * v[t]).sum(-1) / 1.5 + skill[p] - difficulty[t]
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield torch.stack([p, t], 1), y


@scenario(
    family="yo_yo_trick_player_landing_recommender",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a recommender with player and trick embeddings (player, trick, player_bias, trick_bias) predicting whether a yo-yo player lands a trick (latent style factors, player skill, trick difficulty), Adagrad at 0.1 with weight decay 1e-5, BCE-with-logits on batches of 256 pairs, StepLR halving every 100 steps. Trains normally.",
)
def h268_yo_yo_trick_recommender_control(ctx: Context) -> None:
    gen = seeded(26811)
    model = TrickRecommender(300, 80)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    _train(
        ctx,
        model,
        opt,
        _landings(gen, 256),
        250,
        F.binary_cross_entropy_with_logits,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.85))
    ctx.check(
        "the gradient stays bounded (max under 20x the median)",
        max(ctx.grad_norms) < 20 * _median(ctx.grad_norms),
    )


class SolveNet(nn.Module):
    """A GELU trunk with mean and log-variance heads for a speedcuber's solve time."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].clamp(-6, 6).exp())


def _solves(gen, batch, d_in=10, seed=113):
    """Standardised readings (scramble length, cross colour, lookahead score, cube model, ...)
    and a solve time whose noise grows with one reading."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        mu = torch.tanh(x @ w / math.sqrt(d_in)) + 0.3 * x[:, 1]
        sd = 0.1 + 0.3 * torch.sigmoid(2 * x[:, 0])
        yield x, mu + sd * torch.randn(batch, generator=gen)


@scenario(
    family="speedcubing_solve_time_gaussian_nll_accum_net",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2) with mean and log_var heads predicting a speedcuber's solve time and its spread from 10 standardised readings, Gaussian NLL, RAdam at 2e-3 with weight decay 1e-4, gradient accumulation over 4 micro-batches of 32 (each loss divided by 4), a linear warm-up over the first 30 steps (LambdaLR) then constant, clipping at 1. Trains normally.",
)
def h268_speedcubing_accum_warmup_control(ctx: Context) -> None:
    gen = seeded(26812)
    model = SolveNet(10)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    _train(ctx, model, opt, _solves(gen, 32), 200, _gauss_nll, accumulate=4, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell by over 0.3 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.3)
    ctx.check(
        "the gradient stays bounded (max under 20x the median)",
        max(ctx.grad_norms) < 20 * _median(ctx.grad_norms),
    )


@scenario(
    family="snow_sculpture_crack_type_fp16_gelu_classifier",
    optimizer="SGD(nesterov=True)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) telling which of 5 crack types a snow-sculpture festival block develops from 20 standardised readings (snow density, air temperature swing, sun exposure, carving depth, ...), fp16 autocast with a torch.amp.GradScaler, SGD with Nesterov momentum 0.9 at 5e-2, cross-entropy with label smoothing 0.1, clipping at 2 (after unscale_), ReduceLROnPlateau. Trains normally; the scale stays finite.",
)
def h268_snow_sculpture_fp16_control(ctx: Context) -> None:
    gen = seeded(26813)
    model = Stack(20, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 5, 127),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check(
        "the loss scale stays finite and over 1",
        all(math.isfinite(s) and s > 1 for s in ctx.scales),
    )
