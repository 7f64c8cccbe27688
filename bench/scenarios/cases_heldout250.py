"""Held-out set 250 (``h250_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a canopy-piloting swoop-landing classifier whose z-loss
term was subtracted instead of added, a sargassum-bloom extent tanh regressor whose warm-up
target lr was typed 2.0 for 0.2, a mochi-pounding dough-elasticity ReLU regressor whose Adamax lr
was typed 2e-1 for 2e-3, a caviar roe-grade tabular net with learnt embeddings for sturgeon
species and farm that is resumed from an fp16 checkpoint with its static loss scale still applied
for one step, a pretzel lye-dip browning net whose hand-written batch standardiser has no eps, a
team-roping catch-time regressor fed one shard in milliseconds, a tortilla-press thickness
regressor whose epoch-tail batch sums its loss, a soba-noodle hydration net whose first layer's
unfreeze callback never fires, an ostrich-egg incubation deep tanh MLP whose init gain was typed
4 for 1, an eel-migration fyke-net count regressor whose counter is never reset, and three
controls (a barrel-racing run-time net with a Gaussian NLL head, OneCycleLR and clipping, a
kimchi fermentation-stage classifier with label smoothing and ReduceLROnPlateau, a natto
stringiness BCE net under fp16 autocast with a GradScaler and accumulation).

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
    amp=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; ``amp`` is the
    autocast dtype (None: float32); stops after logging a NaN loss."""
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
                ctx.targets(y if not isinstance(y, tuple) else y[1])
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
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
        if math.isnan(shown):
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
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


def _update_size(model, before) -> float:
    """Norm of the change of all parameters since ``before`` (a list of detached copies)."""
    return float(
        sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True))
        ** 0.5
    )


# -- canopy piloting: the z-loss subtracted instead of added --------------------------------------


@scenario(
    family="canopy_piloting_swoop_landing_grade_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading a canopy pilot's swoop landing (5 grades, overlapping) from 12 standardised readings of the approach (turn degrees, dive speed, flare height, wing loading, ...), Adam at 1e-3, cross-entropy. The team added a z-loss (1e-2 x logsumexp(logits)^2) to keep the head's logits small and wrote loss - z for loss + z: the term now rewards a large log-partition, and since cross-entropy is blind to a common shift of the logits the head's logits grow without bound (hundreds of times their start, still climbing, against about 15 with the right sign); the logged cross-entropy first falls, then drifts up as the logits spread. Finite, no NaN.",
)
def h250_canopy_swoop_zloss_sign(ctx: Context) -> None:
    def run(c, sign):
        gen = seeded(25001)
        model = Stack(12, hidden=64, out=5)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 12, 5, 11, noise=0.8))
        top = []
        z = {}

        def watch(step, out, x, y):
            z["z"] = torch.logsumexp(out, dim=-1)

        def scale_loss(step, total):
            return total + sign * 1e-2 * (z["z"] ** 2).mean()

        def after(step):
            with torch.no_grad():
                top.append(float(model(probe[0]).abs().max()))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 12, 5, 11, noise=0.8),
            200,
            F.cross_entropy,
            classifier=True,
            watch=watch,
            scale_loss=scale_loss,
            after=after,
        )
        return top

    twin = _Quiet()
    twin_top = run(twin, 1.0)
    top = run(ctx, -1.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the logged cross-entropy fell over the first 50 steps", _fell(ls[:50], ratio=0.8))
    ctx.check("the head's largest logit grew over 20x", top[-1] > 20 * top[0])
    ctx.check("still climbing: up over 20% in the last 50 steps", top[-1] > 1.2 * top[-50])
    ctx.check(
        "with the right sign the largest logit ends under 1/5 of it", twin_top[-1] < top[-1] / 5
    )


# -- sargassum bloom: the warm-up's target lr typed 2.0 for 0.2 -----------------------------------

ONSET_SARG = 60


@scenario(
    family="sargassum_bloom_extent_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_SARG,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the extent of a sargassum bloom from 10 standardised readings (sea-surface temperature, nitrate runoff, current speed, wind, ...), plain SGD, MSE, a LinearLR warm-up over 300 steps to a target rate meant to be 0.2 and typed 2.0. The rate climbs linearly from 0.02; around step 60 (lr 0.42) lr x (top Hessian eigenvalue, measured by power iteration, about 5) passes 2; the loss oscillates at the edge of stability while the rate keeps rising and blows up after step 110.",
)
def h250_sargassum_warmup_target_typo(ctx: Context) -> None:
    gen = seeded(25002)
    model = Stack(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=300)
    probe = next(_readings(torch.Generator().manual_seed(5), 256, 10, 23))
    seen = {}

    def before(step):
        if step in (0, ONSET_SARG - 30, ONSET_SARG, ONSET_SARG + 40):
            seen[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _readings(gen, 64, 10, 23), 150, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SARG], ratio=0.7))
    ctx.check("finite before the onset", _finite(ls[:ONSET_SARG]))
    ctx.check("lr x sharpness under 2 at step 0", seen[0] < 2)
    ctx.check("lr x sharpness under 2 thirty steps before the onset", seen[ONSET_SARG - 30] < 2)
    ctx.check("lr x sharpness over 2 at the onset", seen.get(ONSET_SARG, 0) > 2)
    ctx.check("lr x sharpness over 2 forty steps after", seen.get(ONSET_SARG + 40, 0) > 2)
    ctx.check(
        "the loss blew up after the onset (over 100x, or non-finite)",
        not _finite(ls) or max(ls[ONSET_SARG:]) > 100 * _mean(ls[ONSET_SARG - 10 : ONSET_SARG]),
    )


# -- mochi pounding: Adamax lr typed 2e-1 for 2e-3 ------------------------------------------------


@scenario(
    family="mochi_pounding_dough_elasticity_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the elasticity of mochi dough from 12 standardised readings of a mochitsuki session (rice soak hours, steam time, mallet rate, water added, ...), Adamax, MSE. The lr was meant to be 2e-3 and was typed 2e-1: the first large steps push fc2's pre-activations negative and most of act2's ReLU units stop firing on every input (measured on a batch of 2048) and never come back; the loss stays finite and does not blow up.",
)
def h250_mochi_adamax_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(25003)
        model = Stack(12, hidden=64)
        opt = torch.optim.Adamax(model.parameters(), lr=lr)
        probe = torch.randn(2048, 12, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            dead = [dead_fraction(model.features(probe))]

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _train(c, model, opt, _readings(gen, 64, 12, 31), 200, F.mse_loss, after=after)
        return dead

    twin = _Quiet()
    twin_dead = run(twin, 2e-3)
    dead = run(ctx, 2e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("act2 under 20% dead at init", dead[0] < 0.2)
    ctx.check("act2 over 60% dead at the end", dead[-1] > 0.6)
    ctx.check("act2 stays over 60% dead over the last 50 steps", min(dead[-50:]) > 0.6)
    ctx.check("the intended lr keeps act2 under 20% dead", twin_dead[-1] < 0.2)
    ctx.check(
        "no revival: act2's dead fraction never falls by over 0.05 after step 100",
        min(dead[100:]) > dead[100] - 0.05,
    )
    ctx.check("no blow-up: the loss stays under 10x its start", max(ls) < 10 * _mean(ls[:5]))


# -- caviar grading: resumed from an fp16 checkpoint with the static loss scale applied ----------

ONSET_CAVIAR = 60


class RoeGrader(nn.Module):
    """Learnt embeddings for the categorical columns (sturgeon species, farm), concatenated with
    the numeric roe readings, then an MLP (fc1, act1, fc2, act2, head)."""

    def __init__(self, species=6, farms=20, numeric=8, grades=4, hidden=64):
        super().__init__()
        self.species_emb = nn.Embedding(species, 4)
        self.farm_emb = nn.Embedding(farms, 6)
        self.fc1 = nn.Linear(4 + 6 + numeric, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, grades)

    def forward(self, x):
        species, farm, num = x
        h = torch.cat([self.species_emb(species), self.farm_emb(farm), num], dim=-1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h)))))


def _roe_lots(gen, batch, seed=43):
    """A sturgeon roe lot: species and farm ids and eight standardised readings (bead diameter,
    firmness, colour, salt, ...); the grade (4 grades) depends on all three."""
    g = torch.Generator().manual_seed(seed)
    sp_eff = torch.randn(6, 4, generator=g)
    farm_eff = 0.7 * torch.randn(20, 4, generator=g)
    w = torch.randn(8, 4, generator=g)
    while True:
        sp = torch.randint(0, 6, (batch,), generator=gen)
        farm = torch.randint(0, 20, (batch,), generator=gen)
        num = torch.randn(batch, 8, generator=gen)
        score = sp_eff[sp] + farm_eff[farm] + num @ w / math.sqrt(8)
        score = score + 0.5 * torch.randn(batch, 4, generator=gen)
        yield (sp, farm, num), score.argmax(1)


@scenario(
    family="caviar_roe_grade_categorical_embedding_net",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CAVIAR,
    note="A tabular classifier grading sturgeon roe lots (4 grades) from learnt embeddings of two categorical columns (species_emb, farm_emb) and 8 standardised readings, then an MLP (fc1, act1, fc2, act2, head), AdamW at 1e-3, cross-entropy. The run is resumed at step 60 in float32 from a checkpoint trained under fp16 with a static loss scale of 65536; the resume path multiplies the first loss by the stored scale and skips the unscale, so one gradient 65536x too large lands in AdamW's second moment. With beta2 0.999 the poisoned second moment divides every later update of the coordinates it hit by thousands: the whole step size falls about 6x (the twin's barely moves) and the loss stalls near 0.95 where an unpoisoned twin keeps falling to about 0.6. Finite, no blow-up.",
)
def h250_caviar_resume_loss_scale(ctx: Context) -> None:
    steps = 200

    def run(c, poison):
        gen = seeded(25004)
        model = RoeGrader()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        sizes = []
        prev = {}

        def before(step):
            prev["p"] = [p.detach().clone() for p in model.parameters()]

        def scale_loss(step, total):
            return total * 65536.0 if poison and step == ONSET_CAVIAR else total

        def after(step):
            sizes.append(_update_size(model, prev["p"]))

        _train(
            c,
            model,
            opt,
            _roe_lots(gen, 64),
            steps,
            F.cross_entropy,
            classifier=True,
            before=before,
            scale_loss=scale_loss,
            after=after,
        )
        return sizes

    twin = _Quiet()
    twin_sizes = run(twin, False)
    sizes = run(ctx, True)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(gn[ONSET_CAVIAR - 20 : ONSET_CAVIAR])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_CAVIAR], ratio=0.8))
    ctx.check(
        "the gradient at the onset is over 1e4x the median before", gn[ONSET_CAVIAR] > 1e4 * pre
    )
    ctx.check(
        "the logged loss at the onset is ordinary (under 2x before)",
        ls[ONSET_CAVIAR] < 2 * _mean(ls[ONSET_CAVIAR - 10 : ONSET_CAVIAR]),
    )

    def drop(sz):
        return _median(sz[ONSET_CAVIAR - 20 : ONSET_CAVIAR]) / _median(
            sz[ONSET_CAVIAR + 30 : ONSET_CAVIAR + 100]
        )

    ctx.check("the update size 30-100 steps after the onset fell over 4x", drop(sizes) > 4)
    ctx.check("the twin's update size over the same steps fell under 2x", drop(twin_sizes) < 2)
    ctx.check(
        "the loss stalls: the last 20 steps within 10% of the 20 after the onset + 20",
        _mean(ls[-20:]) > 0.9 * _mean(ls[ONSET_CAVIAR + 20 : ONSET_CAVIAR + 40]),
    )
    ctx.check(
        "the unpoisoned twin ends lower (under 0.85x)",
        _mean(twin.losses[-20:]) < 0.85 * _mean(ls[-20:]),
    )


# -- pretzel lye dip: a hand-written batch standardiser with no eps -------------------------------

ONSET_PRETZEL = 90


class BatchStandardize(nn.Module):
    """Standardises each column by the batch's own mean and std (no eps)."""

    def forward(self, x):
        mu = x.mean(0, keepdim=True)
        sd = ((x - mu) ** 2).mean(0, keepdim=True).sqrt()
        return (x - mu) / sd


class LyeNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.norm = BatchStandardize()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.norm(x)))))
        return self.head(h).squeeze(-1)


def _lye_dips(gen, batch, tray_from, seed=47):
    """Ten raw readings of a pretzel's lye dip (lye strength, dip seconds, dough temperature, tray
    size in column 3, ...) and the browning score; at ``tray_from`` the loader serves one batch
    from a single bakery tray, so the tray-size column is the same 1.5 for every row."""
    stream = _readings(gen, batch, 10, seed, noise=0.05)
    step = 0
    while True:
        x, y = next(stream)
        x = 2.0 + 0.5 * x
        if step == tray_from:
            x[:, 3] = 1.5
        step += 1
        yield x, y


@scenario(
    family="pretzel_lye_dip_browning_batchstd_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=ONSET_PRETZEL,
    heldout=True,
    onset=ONSET_PRETZEL,
    note="A SiLU MLP behind a hand-written batch standardiser (norm, fc1, act1, fc2, act2, head) regressing a pretzel's browning from 10 raw readings of its lye dip (lye strength, dip seconds, dough temperature, tray size, ...), RAdam at 2e-3, MSE. The standardiser divides by the batch std with no eps; at step 90 the loader serves a batch from a single tray whose tray-size column is the same value on every row: its std is exactly 0, norm computes 0/0 and the loss is NaN at step 90.",
)
def h250_pretzel_batchstd_no_eps(ctx: Context) -> None:
    gen = seeded(25005)
    model = LyeNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_PRETZEL:
            with torch.no_grad():
                seen["x_finite"] = bool(torch.isfinite(x).all())
                seen["col_std"] = float(x[:, 3].std())
                seen["norm_nan"] = bool(torch.isnan(model.norm(x)).any())

    _train(ctx, model, opt, _lye_dips(gen, 64, ONSET_PRETZEL), 120, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_PRETZEL], ratio=0.7))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_PRETZEL)
    ctx.check("the onset batch is finite", seen.get("x_finite") is True)
    ctx.check("the tray-size column's std is exactly 0 at the onset", seen.get("col_std") == 0.0)
    ctx.check("norm produces NaN at the onset", seen.get("norm_nan") is True)


# -- team roping: one shard's catch times in milliseconds ----------------------------------------

ONSET_ROPE = 120


def _roping_runs(gen, batch, ms_at, seed=53):
    """Ten standardised readings of a team-roping run (steer speed, header's loop size, heeler's
    angle, barrier lag, ...) and the catch time in seconds (about 7 s); at ``ms_at`` one shard
    from an arena whose timer exports milliseconds arrives unconverted."""
    stream = _readings(gen, batch, 10, seed, noise=0.05)
    step = 0
    while True:
        x, y = next(stream)
        y = 7.0 + 1.5 * y
        if step == ms_at:
            y = 1000.0 * y
        step += 1
        yield x, y


@scenario(
    family="team_roping_catch_time_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ROPE,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a team-roping run's catch time in seconds from 10 standardised readings of the run (steer speed, loop size, heeler's angle, barrier lag, ...), SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0. At step 120 one shard from an arena whose timer exports milliseconds arrives unconverted: its targets are about 7000 for 7. The loss at that step is millions of times the usual, the clipped step knocks the fit off, and the run recovers within a few dozen steps. The inputs of that batch are ordinary.",
)
def h250_team_roping_millisecond_shard(ctx: Context) -> None:
    gen = seeded(25006)
    model = Stack(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_ROPE:
            seen["y_max"] = float(y.abs().max())
            seen["x_max"] = float(x.abs().max())

    _train(
        ctx, model, opt, _roping_runs(gen, 64, ONSET_ROPE), 200, F.mse_loss, watch=watch, clip=1.0
    )
    ls = ctx.losses
    pre = _mean(ls[ONSET_ROPE - 10 : ONSET_ROPE])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_ROPE], ratio=0.5))
    ctx.check("the loss at the onset is over 1000x the steps before", ls[ONSET_ROPE] > 1000 * pre)
    ctx.check("the onset targets are in milliseconds (over 1000)", seen.get("y_max", 0.0) > 1000)
    ctx.check("the onset inputs are ordinary (max |x| under 6)", seen.get("x_max", 99.0) < 6)
    ctx.check("the run recovers: the last 20 steps under 3x before", _mean(ls[-20:]) < 3 * pre)


# -- tortilla press: the epoch-tail batch sums its loss ------------------------------------------

ONSET_TORTILLA = 100


@scenario(
    family="tortilla_press_thickness_regressor",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TORTILLA,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a pressed tortilla's thickness from 8 standardised readings of the press (masa hydration, plate temperature, press force, dwell, ...), SGD with Nesterov momentum at 5e-3, MSE on batches of 256, gradient clipping at 5.0. The loop's epoch-tail branch (taken once, at step 100) builds its loss with reduction='sum' instead of 'mean': that step's gradient is 256x too large for an ordinary batch with an ordinary (logged, mean) loss; clipping bounds the step and the run carries on.",
)
def h250_tortilla_press_sum_reduction(ctx: Context) -> None:
    gen = seeded(25007)
    model = Stack(8, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_TORTILLA:
            seen["x_max"] = float(x.abs().max())
            seen["y_max"] = float(y.abs().max())

    def scale_loss(step, total):
        return total * 256 if step == ONSET_TORTILLA else total

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 256, 8, 59),
        200,
        F.mse_loss,
        watch=watch,
        scale_loss=scale_loss,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(gn[ONSET_TORTILLA - 20 : ONSET_TORTILLA])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_TORTILLA], ratio=0.7))
    ctx.check(
        "the gradient at the onset is over 50x the median before", gn[ONSET_TORTILLA] > 50 * pre
    )
    ctx.check("the gradient 10 steps later is back under 5x", gn[ONSET_TORTILLA + 10] < 5 * pre)
    ctx.check(
        "the logged loss at the onset is ordinary (under 2x before)",
        ls[ONSET_TORTILLA] < 2 * _mean(ls[ONSET_TORTILLA - 10 : ONSET_TORTILLA]),
    )
    ctx.check(
        "the onset batch is ordinary (max |x| under 6, |y| under 3)",
        seen.get("x_max", 99.0) < 6 and seen.get("y_max", 99.0) < 3,
    )


# -- soba noodle: the first layer's unfreeze callback never fires ---------------------------------


@scenario(
    family="soba_noodle_hydration_two_stage_net",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the breakage rate of hand-cut soba from 12 standardised readings (buckwheat ratio, water added, kneading minutes, room humidity, ...), NAdam at 2e-3 with fc1 in its own param group. fc1 was to start frozen (lr 0) and be unfrozen at step 40 by a callback, but the callback compares step == 40 against the epoch counter, so it never fires: fc1's lr stays 0 for the whole run and its weights never move while fc2 and head train. The loss falls (more slowly than the unfrozen twin); nothing blows up.",
)
def h250_soba_unfreeze_never_fires(ctx: Context) -> None:
    def run(c, fires):
        gen = seeded(25008)
        model = Stack(12, hidden=64, act=nn.GELU)
        opt = torch.optim.NAdam(
            [
                {"params": model.fc1.parameters(), "lr": 0.0},
                {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
            ],
            lr=2e-3,
        )
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        batches_per_epoch = 25

        def before(step):
            counter = step if fires else step // batches_per_epoch
            if counter == 40:
                opt.param_groups[0]["lr"] = 2e-3

        _train(c, model, opt, _readings(gen, 64, 12, 61), 200, F.mse_loss, before=before)
        return {
            n: float((p.detach() - start[n]).norm() / start[n].norm())
            for n, p in model.named_parameters()
        }

    twin = _Quiet()
    run(twin, True)
    moved = run(ctx, False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.8))
    ctx.check("fc1's weight never moved", moved["fc1.weight"] == 0.0)
    ctx.check("fc2's weight moved over 1e-2 of its norm", moved["fc2.weight"] > 1e-2)
    ctx.check("head's weight moved over 1e-2 of its norm", moved["head.weight"] > 1e-2)
    ctx.check(
        "the unfrozen twin ends lower (under 0.9x)",
        _mean(twin.losses[-20:]) < 0.9 * _mean(ls[-20:]),
    )


# -- ostrich egg incubation: the init gain typed 4 for 1 -----------------------------------------


class DeepTanh(nn.Module):
    """``depth`` tanh layers (layers.0 ... with acts.0 ...) and a linear head."""

    def __init__(self, d_in, hidden, depth, gain):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.acts = nn.ModuleList(nn.Tanh() for _ in range(depth))
        self.head = nn.Linear(hidden, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin, act in zip(self.layers, self.acts, strict=True):
            x = act(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="ostrich_egg_incubation_hatch_day_deep_tanh_mlp",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP (layers.0 ... layers.11, head) regressing the hatch day of an ostrich egg from 10 standardised incubator readings (temperature, humidity, turning rate, egg mass loss, ...), SGD with momentum 0.9 at 2e-2, MSE. The hand-written init draws each weight with std gain / sqrt(fan_in) with the gain typed 4 for 1: the network sits deep in tanh's chaotic phase, where each layer multiplies the backward signal, so the gradient grows through depth towards the input (layers.0's is over 10x the last layer's at step 0, against under 3x with gain 1); the first layers' oversized updates keep knocking the fit about, so the loss (finite, bounded by the tanh features) bounces around 0.3-0.5 for the whole run while the gain-1 twin falls to about 0.02. No NaN, no blow-up.",
)
def h250_ostrich_egg_init_gain_typo(ctx: Context) -> None:
    def ratio(model, batch):
        model.zero_grad()
        F.mse_loss(model(batch[0]), batch[1]).backward()
        r = float(model.layers[0].weight.grad.norm() / model.layers[-1].weight.grad.norm())
        model.zero_grad()
        return r

    def run(c, gain):
        gen = seeded(25009)
        model = DeepTanh(10, 64, 12, gain)
        opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
        r0 = ratio(model, next(_readings(torch.Generator().manual_seed(7), 256, 10, 67)))
        _train(c, model, opt, _readings(gen, 64, 10, 67), 150, F.mse_loss)
        return r0

    twin = _Quiet()
    twin_r0 = run(twin, 1.0)
    r0 = run(ctx, 4.0)
    ls = ctx.losses
    ctx.check("layers.0's gradient over 10x the last layer's at step 0", r0 > 10)
    ctx.check("with gain 1 it is under 3x", twin_r0 < 3)
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the gain-1 twin trains (finite, fell over 5x)", _fell(twin.losses, ratio=0.2))
    ctx.check(
        "the run stays stuck: its last 20 steps over 5x the twin's",
        _mean(ls[-20:]) > 5 * _mean(twin.losses[-20:]),
    )


# -- eel migration: the fyke-net counter is never reset -------------------------------------------

ONSET_EEL = 60


def _eel_nights(gen, batch, cumulative_from, seed=71):
    """Eight standardised readings of a night at a fyke net (moon phase, river flow, water
    temperature, turbidity, ...) and the night's glass-eel count, standardised; from
    ``cumulative_from`` the effort correction reads an hours-fished counter that is no longer
    reset at dawn, so every batch's targets are scaled by a factor growing 2% a step."""
    stream = _readings(gen, batch, 8, seed, noise=0.05)
    step = 0
    while True:
        x, y = next(stream)
        if step >= cumulative_from:
            y = y * (1.0 + 0.02 * (step - cumulative_from))
        step += 1
        yield x, y


@scenario(
    family="eel_migration_fyke_net_count_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_EEL,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the standardised glass-eel count of a night at a fyke net from 8 standardised readings (moon phase, river flow, water temperature, turbidity, ...), Adagrad at 1e-2, MSE. The counts are corrected for fishing effort by an hours-fished counter; from step 60 a station's counter is no longer reset at dawn, so every batch's targets are scaled by a factor that grows 2% a step (1 + 0.02 (t - 60)); the inputs say nothing of it and Adagrad's shrinking rate falls further behind. The loss, after falling, climbs slowly and steadily to several times its low: no spike, no bad batch, no NaN.",
)
def h250_eel_fyke_counter_not_reset(ctx: Context) -> None:
    steps = 240

    def run(c, drift_from):
        gen = seeded(25010)
        model = Stack(8, hidden=48)
        opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
        _train(c, model, opt, _eel_nights(gen, 64, drift_from), steps, F.mse_loss)

    twin = _Quiet()
    run(twin, 10**9)
    run(ctx, ONSET_EEL)
    ls = ctx.losses
    lo = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9))
    at = min(range(0, len(ls) - 9), key=lambda i: _mean(ls[i : i + 10]))
    means = [_mean(ls[i : i + 10]) for i in range(at, len(ls) - 9, 10)]
    jumps = max(
        (b / max(a, 1e-8) for a, b in zip(means[:-1], means[1:], strict=True)), default=99.0
    )
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss first fell (low under 0.6x the start)", lo < 0.6 * _mean(ls[:10]))
    ctx.check("the loss ends over 3x its low", _mean(ls[-10:]) > 3 * lo)
    ctx.check("the climb is gradual (no 10-step mean over 2x the one before)", jumps < 2.0)
    ctx.check(
        "the twin with a reset counter ends under 1/3 of it",
        _mean(twin.losses[-10:]) < _mean(ls[-10:]) / 3,
    )


# -- healthy controls -----------------------------------------------------------------------------


class RunTimeNet(nn.Module):
    """A GELU trunk (fc1, act1, fc2, act2) with a mean head and a log-variance head."""

    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.mean_head = nn.Linear(hidden, 1)
        self.logvar_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.logvar_head(h)], dim=-1)


def _barrel_runs(gen, batch, seed=73):
    """Twelve standardised readings of a barrel-racing run (horse, ground firmness, first-barrel
    pocket, turn speed, ...) and the run time, standardised, with noise that grows with
    ground looseness (column 1)."""
    stream = _readings(gen, batch, 12, seed, noise=0.0)
    while True:
        x, y = next(stream)
        sd = 0.1 + 0.3 * torch.sigmoid(2 * x[:, 1])
        yield x, y + sd * torch.randn(y.shape, generator=gen)


@scenario(
    family="barrel_racing_run_time_gaussian_nll_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU trunk (fc1, act1, fc2, act2) with a mean head and a log-variance head predicting a barrel-racing run's time and its spread from 12 standardised readings with heteroscedastic noise, Gaussian negative log-likelihood (F.gaussian_nll_loss), AdamW under OneCycleLR (max_lr 3e-3), gradient clipping at 1.0. Trains normally.",
)
def h250_barrel_racing_gaussian_nll_control(ctx: Context) -> None:
    gen = seeded(25011)
    steps = 200
    model = RunTimeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.3)

    def loss_fn(out, y):
        return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())

    _train(ctx, model, opt, _barrel_runs(gen, 64), steps, loss_fn, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell by over 0.3 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.3)


@scenario(
    family="kimchi_fermentation_stage_classifier",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) classifying a kimchi crock's fermentation stage (5 stages) from 14 standardised readings (pH, salinity, crock temperature, days, CO2, ...), RMSprop at 1e-3 with ReduceLROnPlateau, cross-entropy with label smoothing 0.1 on 10% mislabelled crocks. Trains normally.",
)
def h250_kimchi_stage_control(ctx: Context) -> None:
    gen = seeded(25012)
    model = Stack(14, hidden=64, out=5, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    stream = _kinds(gen, 64, 14, 5, 79, noise=0.6)

    def noisy():
        while True:
            x, y = next(stream)
            flip = torch.rand(len(y), generator=gen) < 0.1
            yield x, torch.where(flip, torch.randint(0, 5, y.shape, generator=gen), y)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(ctx, model, opt, noisy(), 200, loss_fn, classifier=True, sched=sched)
    ls = ctx.losses
    x, y = next(_kinds(torch.Generator().manual_seed(4), 1024, 14, 5, 79, noise=0.6))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("held-out accuracy over 0.6", acc > 0.6)


def _natto_batches(gen, batch, seed=83):
    """Ten standardised readings of a natto batch (soybean size, spore dose, incubation hours,
    humidity, ...) and whether its strings pass the stretch test."""
    stream = _readings(gen, batch, 10, seed, noise=0.2)
    while True:
        x, y = next(stream)
        yield x, (y > 0).float()


@scenario(
    family="natto_stringiness_fp16_bce_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a ReLU MLP (fc1, act1, fc2, act2, head) predicting whether a natto batch passes the stretch test from 10 standardised readings with 20% label noise on the underlying score, BCE with logits, Adam at 2e-3, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2, clipping at 1.0. Trains normally.",
)
def h250_natto_fp16_bce_control(ctx: Context) -> None:
    gen = seeded(25013)
    model = Stack(10, hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def loss_fn(out, y):
        return F.binary_cross_entropy_with_logits(out.float(), y)

    _train(
        ctx,
        model,
        opt,
        _natto_batches(gen, 64),
        150,
        loss_fn,
        clip=1.0,
        scaler=scaler,
        amp=torch.float16,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("the loss scale stayed finite", all(math.isfinite(s) and s > 0 for s in ctx.scales))
