"""Held-out set 257 (``h257_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a gadulka bow-pressure regressor built of nn.Sequential
blocks whose RMSprop lr was typed 5e-2 for 5e-4, a kemari touch-event BCE tagger whose tag targets
are the event counts instead of presence flags, a lapta bat-hit regressor whose epoch-tail batch
is collated with an extra leading dimension so its hand-written mean divides by 1, a glass
armonica rim-tone regressor whose StepLR gamma was typed 10 for 0.1, a pea-shooting range net
whose log-feature layer meets a disconnected pressure transducer's zeros, an egg-throwing catch
regressor fed one shard in centimetres, a black-pudding-throwing knock-down regressor whose club
embedding group lr was typed 3e-9 for 3e-3, a cryovolcano plume deep ReLU MLP whose init gain was
typed 3 for sqrt(2), a sarrusophone register classifier whose softmax temperature was typed 0.01
for 1.0, a hydraulis wind-pressure regressor whose hand-written weight decay has its sign flipped,
and three controls (a sea-arch overtopping Student-t NLL net, a shin-kicking bout GRU classifier,
a dwile-flonking throw-score MLP under fp16 autocast with a GradScaler).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``after(step)`` after the optimizer step; stops after logging a non-finite loss."""
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
            loss = loss_fn(out.float(), y) / accumulate
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            shown += float(loss.detach())
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


def _signals(gen, batch, d_in, seed, noise=0.05, offset=0.0):
    """Standardised readings and a smooth nonlinear target of about unit scale (plus offset)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(1.3 * x @ v / math.sqrt(d_in))
        yield x, y + offset + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, classes, seed, spread=0.4):
    """Readings scattered around one centre per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Net(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, activations as modules."""

    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_eig(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


def _moved(model, w0):
    return {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm()) for n, p in model.named_parameters()
    }


# -- gadulka: nn.Sequential blocks, RMSprop lr typed 5e-2 for 5e-4 -------------------------------


class BowNet(nn.Module):
    """block1 = (Linear, ReLU), block2 = (Linear, ReLU), head: nn.Sequential blocks."""

    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.block1 = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU())
        self.block2 = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 1)

    def features(self, x):
        return self.block2(self.block1(x))

    def forward(self, x):
        return self.head(self.features(x)).squeeze(-1)


@scenario(
    family="gadulka_bow_pressure_sequential_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("block2.1", "block2.0"),
    diverges=None,
    heldout=True,
    note="A ReLU regressor built of nn.Sequential blocks (block1 = Linear + ReLU, block2 = Linear + ReLU, head) predicting a gadulka (Bulgarian bowed fiddle) player's bow pressure from 12 standardised readings of the bridge pickup and bow-hair strain gauges, RMSprop with momentum 0.9, MSE. The lr was meant to be 2e-4 and typed 2e-2: within the first steps block2's pre-activations are pushed negative and over half of block2's ReLU units (block2.1) stop firing on every input of a 2048-row probe and never come back; the intended lr keeps them alive; finite, no blow-up.",
)
def h257_gadulka_rmsprop_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(25701)
        model = BowNet()
        opt = torch.optim.RMSprop(model.parameters(), lr=lr, momentum=0.9)
        probe = torch.randn(2048, 12, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            dead = [dead_fraction(model.features(probe))]

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _loop(c, model, opt, _signals(gen, 64, 12, 11), 200, F.mse_loss, after=after)
        return dead

    twin = _Twin()
    twin_dead = run(twin, 2e-4)
    dead = run(ctx, 2e-2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("block2 under 20% dead at init", dead[0] < 0.2)
    ctx.check("block2 over half dead at the end", dead[-1] > 0.5)
    ctx.check("block2 stays over half dead over the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("the intended lr keeps block2 under 20% dead", twin_dead[-1] < 0.2)


# -- kemari: BCE tag targets are the event counts, not presence flags ----------------------------


def _kemari_rallies(gen, batch, d_in=16, tags=5, seed=13):
    """Standardised readings of a kemari rally (ball height, touches, players' positions, ...)
    and, per tag (kind of kick), how many times it happened in the rally (Poisson counts)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, tags, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(0.3 + x @ w)
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="kemari_touch_event_count_bce_tagger",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU multi-label tagger (fc1, act1, fc2, act2, head) marking which of 5 kinds of kick occurred in a kemari (Japanese court football) rally from 16 standardised readings, Adam at 3e-3, binary_cross_entropy_with_logits. The targets were meant to be presence flags (counts > 0) and the code passes the raw event counts (0, 1, 2, 3, ...): wherever a kick happens more than once on average the BCE's gradient sigmoid(z) - count never reaches zero, so the head's logits grow steadily without bound and the loss goes negative; the intended flags keep the logits bounded. Finite, no NaN in the run's length.",
)
def h257_kemari_bce_count_targets(ctx: Context) -> None:
    def run(c, counts):
        gen = seeded(25702)
        model = Net(16, hidden=48, out=5, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        probe = next(_kemari_rallies(torch.Generator().manual_seed(3), 512))[0]
        peak = []

        def loss_fn(out, y):
            target = y if counts else (y > 0).float()
            return F.binary_cross_entropy_with_logits(out, target)

        def after(step):
            with torch.no_grad():
                peak.append(float(model(probe).abs().max()))

        _loop(c, model, opt, _kemari_rallies(gen, 64), 250, loss_fn, after=after)
        return peak

    twin = _Twin()
    twin_peak = run(twin, counts=False)
    peak = run(ctx, counts=True)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak |logit| grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("the peak still grows over the last 50 steps", peak[-1] > 1.2 * peak[-50])
    ctx.check("the loss went below zero", ls[-1] < 0)
    ctx.check("the intended flags keep the peak 3x smaller", twin_peak[-1] < peak[-1] / 3)


# -- lapta: the epoch-tail batch with an extra leading dimension, the mean divides by 1 ---------

ONSET_LAPTA = 120


@scenario(
    family="lapta_bat_hit_distance_silu_regressor",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_LAPTA,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how far a lapta (Russian bat-and-ball game) hit carries from 10 standardised readings (bat speed, contact height, toss height, wind, ...), SGD with Nesterov momentum 0.9 at 1e-2, a hand-written mean squared error ((out - y) ** 2).sum() / len(y), gradient clipping at 5. At step 120 the epoch-tail batch of 96 is collated with an extra leading dimension, (1, 96, 10), the forward pass broadcasts through it, and len(y) is 1: the loss backpropagated is 96x the mean and the gradient spikes about 96x for that one step. The batch's values are ordinary; the run recovers; finite.",
)
def h257_lapta_tail_batch_len_bug(ctx: Context) -> None:
    gen = seeded(25703)
    model = Net(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    stream = _signals(gen, 96, 10, 17)
    seen = {}

    def loss_fn(out, y):
        return ((out - y) ** 2).sum() / len(y)

    def alter(step, x, y):
        if step == ONSET_LAPTA:
            seen["x_max"] = float(x.abs().max())
            seen["y_max"] = float(y.abs().max())
            return x[None], y[None]
        return x, y

    _loop(ctx, model, opt, stream, 220, loss_fn, alter=alter, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_LAPTA - 20 : ONSET_LAPTA])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_LAPTA], ratio=0.5))
    ctx.check(
        "the gradient norm at the onset over 50x the median before", gn[ONSET_LAPTA] > 50 * before
    )
    ctx.check("the gradient norm 30 steps after back under 5x", gn[ONSET_LAPTA + 30] < 5 * before)
    ctx.check(
        "the onset batch is ordinary (max |x| under 6, max |y| under 4)",
        seen.get("x_max", 99.0) < 6 and seen.get("y_max", 99.0) < 4,
    )
    ctx.check(
        "the loss recovered (under 2x its pre-onset level 50 steps after)",
        _mean(ls[ONSET_LAPTA + 50 : ONSET_LAPTA + 60])
        < 2 * _mean(ls[ONSET_LAPTA - 10 : ONSET_LAPTA]),
    )


# -- glass armonica: StepLR gamma typed 10 for 0.1 -----------------------------------------------

ONSET_ARMONICA = 80


@scenario(
    family="glass_armonica_bowl_rim_tone_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_ARMONICA,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the loudness of a glass armonica bowl's rim tone from 10 standardised readings (finger pressure, rim wetness, spindle speed, bowl diameter, ...), plain SGD at 0.1, MSE, a StepLR(step_size=80) whose decay gamma was meant 0.1 and typed 10.0: at step 80 the rate jumps to 1.0, lr x (top Hessian eigenvalue) passes 2 and the loss oscillates and blows up.",
)
def h257_glass_armonica_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(25704)
    model = Net(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ONSET_ARMONICA, gamma=10.0)
    probe = next(_signals(torch.Generator().manual_seed(5), 256, 10, 19))
    seen = {}

    def before(step):
        if step in (ONSET_ARMONICA - 1, ONSET_ARMONICA):
            seen[step] = opt.param_groups[0]["lr"] * _top_eig(model, F.mse_loss, probe)

    _loop(ctx, model, opt, _signals(gen, 64, 10, 19), 160, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_ARMONICA], ratio=0.7))
    ctx.check("finite before the onset", _finite(ls[:ONSET_ARMONICA]))
    ctx.check(
        "lr x sharpness under 2 just before the onset", seen.get(ONSET_ARMONICA - 1, 99.0) < 2
    )
    ctx.check("lr x sharpness over 2 at the onset", seen.get(ONSET_ARMONICA, 0.0) > 2)
    ctx.check(
        "the loss blew up after the onset (over 100x, or non-finite)",
        not _finite(ls)
        or max(ls[ONSET_ARMONICA:]) > 100 * _mean(ls[ONSET_ARMONICA - 10 : ONSET_ARMONICA]),
    )


# -- pea shooting: a log-feature layer meets a disconnected transducer's zeros -------------------

ONSET_PEA = 90


class LogFeatures(nn.Module):
    """Takes the log of the first ``k`` readings (positive physical quantities), keeps the rest."""

    def __init__(self, k=3):
        super().__init__()
        self.k = k

    def forward(self, x):
        return torch.cat([torch.log(x[:, : self.k]), x[:, self.k :]], 1)


class RangeNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.logf = LogFeatures(3)
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.logf(x)))))
        return self.head(h).squeeze(-1)


def _pea_shots(gen, batch):
    """Blow pressure (kPa), pea mass (g), tube length (cm), then 7 standardised readings; the
    range of the shot (standardised)."""
    while True:
        pos = torch.exp(0.3 * torch.randn(batch, 3, generator=gen)) * torch.tensor([8.0, 0.4, 30.0])
        rest = torch.randn(batch, 7, generator=gen)
        logs = torch.log(pos)
        y = (
            0.8 * (logs[:, 0] - 2.08) / 0.3
            - 0.5 * (logs[:, 1] + 0.92) / 0.3
            + 0.3 * torch.tanh(rest[:, 0])
        )
        yield torch.cat([pos, rest], 1), y / 2 + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="pea_shooting_range_log_feature_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logf",),
    diverges=ONSET_PEA,
    heldout=True,
    onset=ONSET_PEA,
    note="A SiLU MLP regressing the range of a pea-shooting competition shot from the blow pressure, pea mass and tube length (taken through a log-feature layer logf, torch.log with no floor) and 7 standardised readings, Adagrad at 3e-2, MSE. At step 90 the batch holds the shots of a shooter whose pressure transducer came unplugged and logged 0 kPa: log(0) = -inf in logf, fc1 mixes +inf and -inf into NaN and the loss is NaN at step 90.",
)
def h257_pea_shooting_log_zero(ctx: Context) -> None:
    gen = seeded(25705)
    model = RangeNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_PEA:
            x = x.clone()
            x[:6, 0] = 0.0
            with torch.no_grad():
                seen["logf_inf"] = bool(torch.isinf(model.logf(x)).any())
        return x, y

    _loop(ctx, model, opt, _pea_shots(gen, 64), 150, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("finite before the onset", _finite(ls[:ONSET_PEA]))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_PEA], ratio=0.6))
    ctx.check("logf produced an infinity on the onset batch", seen.get("logf_inf", False))
    ctx.check("the loss is NaN at the onset", len(ls) > ONSET_PEA and math.isnan(ls[ONSET_PEA]))


# -- egg throwing: one shard's catch distances in centimetres ------------------------------------

ONSET_EGG = 110


@scenario(
    family="egg_throwing_catch_distance_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_EGG,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the distance in metres (about 1 to 4 m) at which an egg-throwing team's catcher catches the egg unbroken from 12 standardised readings (throw angle, release speed, wind, glove kind, ...), SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0. At step 110 the batch comes from a shard whose distances a club logged in centimetres: the targets are 100x, the loss and the gradient spike over 100x for that one step; clipping contains the update and the run recovers; finite.",
)
def h257_egg_throwing_centimetre_shard(ctx: Context) -> None:
    gen = seeded(25706)
    model = Net(12, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_EGG:
            y = y * 100.0
            seen["y_max"] = float(y.max())
            seen["x_max"] = float(x.abs().max())
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _signals(gen, 64, 12, 23, offset=2.5),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_EGG], ratio=0.5))
    ctx.check(
        "loss at the onset over 100x the median before",
        ls[ONSET_EGG] > 100 * _median(ls[ONSET_EGG - 20 : ONSET_EGG]),
    )
    ctx.check(
        "gradient at the onset over 100x the median before",
        gn[ONSET_EGG] > 100 * _median(gn[ONSET_EGG - 20 : ONSET_EGG]),
    )
    ctx.check("the onset targets are in centimetres (over 100)", seen.get("y_max", 0.0) > 100)
    ctx.check("the onset inputs are ordinary (max |x| under 6)", seen.get("x_max", 99.0) < 6)
    ctx.check(
        "the loss recovered (under 2x its pre-onset level 50 steps after)",
        _mean(ls[ONSET_EGG + 50 : ONSET_EGG + 60]) < 2 * _mean(ls[ONSET_EGG - 10 : ONSET_EGG]),
    )


# -- black pudding throwing: the club embedding's param group lr typed 3e-9 for 3e-3 -------------


class KnockNet(nn.Module):
    """club (embedding of the thrower's club) + readings -> fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, clubs=12, d_emb=8, d_in=10, hidden=48):
        super().__init__()
        self.club = nn.Embedding(clubs, d_emb)
        self.fc1 = nn.Linear(d_emb + d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        club, readings = x
        h = torch.cat([self.club(club), readings], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


def _throws(gen, batch, clubs=12, d_in=10, seed=29):
    """The thrower's club, 10 standardised readings of the throw, and how many Yorkshire
    puddings it knocks off the ledge (standardised)."""
    g = torch.Generator().manual_seed(seed)
    club_effect = torch.randn(clubs, generator=g)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        club = torch.randint(0, clubs, (batch,), generator=gen)
        x = torch.randn(batch, d_in, generator=gen)
        y = 0.7 * club_effect[club] + torch.tanh(x @ w)
        yield (club, x), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="black_pudding_throwing_knockdown_embedding_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("club",),
    diverges=None,
    heldout=True,
    note="A ReLU regressor with a learnt embedding of the thrower's club (club, fc1, act1, fc2, act2, head) predicting how many Yorkshire puddings a black-pudding throw knocks off the ledge from the club and 10 standardised readings, AdamW with param groups (the embedding in its own group without weight decay): the embedding group's lr meant 3e-3 and typed 3e-9, the rest at 3e-3. The club embedding moves by under 1e-5 of its norm over the run while fc1, fc2 and the head move by percents; the loss still falls (the readings part is learnt) and stays finite, no blow-up.",
)
def h257_black_pudding_embedding_group_lr_typo(ctx: Context) -> None:
    def run(c, emb_lr):
        gen = seeded(25707)
        model = KnockNet()
        rest = [p for n, p in model.named_parameters() if not n.startswith("club")]
        opt = torch.optim.AdamW(
            [
                {"params": model.club.parameters(), "lr": emb_lr, "weight_decay": 0.0},
                {"params": rest, "lr": 3e-3, "weight_decay": 1e-2},
            ]
        )
        w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        _loop(c, model, opt, _throws(gen, 64), 200, F.mse_loss)
        return _moved(model, w0)

    twin = _Twin()
    twin_moved = run(twin, 3e-3)
    moved = run(ctx, 3e-9)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.9))
    ctx.check("the club embedding moved under 1e-4 of its norm", moved["club.weight"] < 1e-4)
    ctx.check("fc2's weight moved over 1e-2 of its norm", moved["fc2.weight"] > 1e-2)
    ctx.check("the head's weight moved over 1e-2 of its norm", moved["head.weight"] > 1e-2)
    ctx.check(
        "the embedding moved under 1e-3 of what the intended config moves it",
        moved["club.weight"] < 1e-3 * twin_moved["club.weight"],
    )
    ctx.check(
        "the intended config ends with a lower loss", _mean(twin.losses[-10:]) < _mean(ls[-10:])
    )


# -- cryovolcano: init gain typed 3 for sqrt(2) through ten ReLU layers --------------------------


class PlumeMLP(nn.Module):
    """Ten Linear + ReLU layers in a ModuleList ``layers``, then ``head``."""

    def __init__(self, d_in=12, hidden=48, depth=10, gain=None):
        super().__init__()
        gain = math.sqrt(2.0) if gain is None else gain
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        self.states = []

    def forward(self, x):
        self.states = []
        for lin in self.layers:
            x = torch.relu(lin(x))
            if x.requires_grad:
                x.retain_grad()
            self.states.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="cryovolcano_plume_height_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="A ten-layer ReLU MLP (layers.0 .. layers.9 in a ModuleList, head) regressing the plume height of a cryovolcano on an icy moon from 12 standardised readings of a simulated flyby (surface temperature, tidal phase, vent width, ...), plain SGD at 1e-3, MSE. The He-normal init's gain was meant sqrt(2) and typed 3: each layer amplifies by about 3/sqrt(2), so the backward signal grows layer by layer towards the input (the gradient at layers.0's output is over 100x that at layers.9's at step 0) and the first update blows the weights up; the loss is non-finite within a few steps.",
)
def h257_cryovolcano_init_gain_typo(ctx: Context) -> None:
    gen = seeded(25708)
    model = PlumeMLP(gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    stream = _signals(gen, 64, 12, 31)
    ratio = {}
    ctx.attach(model, opt)
    for step in range(80):
        x, y = next(stream)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if step == 0:
            first = float(model.states[0].grad.norm())
            last = float(model.states[-1].grad.norm())
            ratio["r"] = first / max(last, 1e-30)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls, gn = ctx.losses, ctx.grad_norms
    twin = PlumeMLP()
    x, y = next(_signals(torch.Generator().manual_seed(1), 64, 12, 31))
    F.mse_loss(twin(x), y).backward()
    twin_ratio = float(twin.states[0].grad.norm()) / float(twin.states[-1].grad.norm())
    ctx.check(
        "the gradient at layers.0's output over 100x that at layers.9's (step 0)",
        ratio.get("r", 0.0) > 100,
    )
    ctx.check("the intended gain keeps that ratio under 10", twin_ratio < 10)
    ctx.check(
        "the loss blew up (over 1000x its start, or non-finite)",
        not _finite(ls) or max(ls) > 1000 * ls[0],
    )
    ctx.check(
        "the gradient norm grew over 100x (or went non-finite)",
        not _finite(gn) or max(gn) > 100 * gn[0],
    )


# -- sarrusophone: softmax temperature typed 0.01 for 1.0 -----------------------------------------


class RegisterNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, logits divided by a temperature."""

    def __init__(self, d_in, classes, temperature, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="sarrusophone_register_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (fc1, act1, fc2, act2, head, logits divided by a temperature) telling which of 5 registers a sarrusophone note is played in from 14 standardised readings of a bell microphone and the reed's pressure, NAdam at 3e-3, cross-entropy. The temperature was meant 1.0 and the config's 0.01 (the sampling temperature of another job sharing the file) is read instead: the logits are 100x, within tens of steps the float32 softmax rounds most targets' probabilities to exactly 1; the intended temperature keeps them soft. Finite, no blow-up.",
)
def h257_sarrusophone_temperature_typo(ctx: Context) -> None:
    def run(c, temp):
        gen = seeded(25709)
        model = RegisterNet(14, 5, temp)
        opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
        probe = next(_classes(torch.Generator().manual_seed(3), 512, 14, 5, 37))
        with torch.no_grad():
            fr = [collapsed_fraction(model(probe[0]), probe[1])]

        def after(step):
            with torch.no_grad():
                fr.append(collapsed_fraction(model(probe[0]), probe[1]))

        _loop(
            c,
            model,
            opt,
            _classes(gen, 64, 14, 5, 37),
            150,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return fr

    twin = _Twin()
    twin_fr = run(twin, 1.0)
    fr = run(ctx, 0.01)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 10% of probe rows saturated at init", fr[0] < 0.1)
    ctx.check("over half the probe rows saturate to exactly 1 by step 50", fr[50] > 0.5)
    ctx.check("over half saturate at the end", fr[-1] > 0.5)
    ctx.check("the intended temperature saturates under 10%", twin_fr[-1] < 0.1)


# -- hydraulis: a hand-written weight decay with its sign flipped --------------------------------


@scenario(
    family="hydraulis_water_organ_wind_pressure_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the wind pressure in a hydraulis (ancient water organ) from 10 standardised readings (water level in the pnigeus, pump stroke rate, stops open, ...), RAdam at 2e-3, MSE, with a hand-written decoupled weight decay applied after each step meant as p *= 1 - lr * wd and written p *= 1 + lr * wd (wd 2.5): the weights grow a little every step, and once the fit is made the loss climbs slowly and steadily to several times its low, no single jump; finite, no blow-up within the run.",
)
def h257_hydraulis_weight_decay_sign(ctx: Context) -> None:
    def run(c, sign):
        gen = seeded(25710)
        model = Net(10, hidden=48)
        lr, wd = 2e-3, 2.5
        opt = torch.optim.RAdam(model.parameters(), lr=lr)

        def after(step):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + sign * lr * wd)

        _loop(c, model, opt, _signals(gen, 64, 10, 41), 300, F.mse_loss, after=after)

    twin = _Twin()
    run(twin, -1.0)
    run(ctx, +1.0)
    ls = ctx.losses
    low = min(ls)
    at = ls.index(low)
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss climbed to over 3x its low by the end", _mean(ls[-10:]) > 3 * low)
    ctx.check(
        "the climb is slow: no step over 3x the one before",
        all(b < 3 * a for a, b in zip(ls, ls[1:], strict=False)),
    )
    ctx.check("the low came before the last 100 steps", at < len(ls) - 100)
    ctx.check("the intended decay ends lower", _mean(twin.losses[-10:]) < _mean(ls[-10:]) / 3)


# -- healthy controls -----------------------------------------------------------------------------


class StudentTNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2, then loc and log_scale heads; a Student-t likelihood."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.loc = nn.Linear(hidden, 1)
        self.log_scale = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.loc(h), self.log_scale(h)], 1)


@scenario(
    family="sea_arch_wave_overtopping_student_t_net",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a tanh MLP (fc1, act1, fc2, act2) with loc and log_scale heads predicting a Student-t (5 degrees of freedom) over the height waves overtop a sea arch from 10 standardised readings (swell height, period, tide, wind, ...) with heavy-tailed noise, Student-t negative log-likelihood, Adadelta at lr 1.0 with a linear warm-up (LambdaLR) and gradient clipping at 2.0, gradient accumulation over 2. Trains normally.",
)
def h257_sea_arch_student_t_control(ctx: Context) -> None:
    gen = seeded(25711)
    model = StudentTNet(10)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    stream = _signals(gen, 64, 10, 43, noise=0.0)
    t = torch.distributions.StudentT(3.0)

    def heavy():
        while True:
            x, y = next(stream)
            yield x, y + 0.2 * t.sample(y.shape)

    def nll(out, y):
        return -torch.distributions.StudentT(5.0, out[:, 0], out[:, 1].exp()).log_prob(y).mean()

    _loop(ctx, model, opt, heavy(), 200, nll, sched=sched, clip=2.0, accumulate=2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell by over 0.3 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.3)


class BoutGRU(nn.Module):
    """gru over a 3-channel IMU trace, head on the last state."""

    def __init__(self, channels=3, hidden=32, classes=3):
        super().__init__()
        self.gru = nn.GRU(channels, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def _kicks(gen, batch, classes=3, length=24):
    """Three IMU channels of a shin-kicking bout's last 24 samples and the outcome (3 kinds):
    each outcome a different mix of frequencies, with noise."""
    t = torch.arange(length).float()
    freqs = torch.tensor([[0.3, 0.6, 0.9], [0.7, 0.2, 0.5], [0.5, 0.9, 0.3]])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 3, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase).transpose(1, 2)
        yield x + 0.5 * torch.randn(batch, length, 3, generator=gen), y


@scenario(
    family="shin_kicking_bout_outcome_gru_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GRU classifier (gru, head) telling the outcome of a shin-kicking bout (3 kinds) from 24 samples of a 3-channel shin-guard IMU, AdamW at a OneCycleLR schedule (max_lr 1e-2), cross-entropy with label smoothing 0.1 on 10% mislabelled bouts, gradient clipping at 1.0. Trains normally.",
)
def h257_shin_kicking_onecycle_control(ctx: Context) -> None:
    gen = seeded(25712)
    steps = 200
    model = BoutGRU()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps, pct_start=0.25)
    stream = _kicks(gen, 64)

    def noisy():
        while True:
            x, y = next(stream)
            flip = torch.rand(len(y), generator=gen) < 0.1
            yield x, torch.where(flip, torch.randint(0, 3, y.shape, generator=gen), y)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, noisy(), steps, loss_fn, classifier=True, clip=1.0, sched=sched)
    ls = ctx.losses
    x, y = next(_kicks(torch.Generator().manual_seed(4), 1024))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("held-out accuracy over 0.7", acc > 0.7)


@scenario(
    family="dwile_flonking_throw_score_fp16_huber_mlp",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing a dwile-flonking throw's score from 12 standardised readings (driveller swing, dwile wetness, distance to the girter, ...) with Laplace noise, SGD with momentum 0.9 at 2e-2, warm-up then cosine (LambdaLR), Huber loss, gradient clipping at 1.0, fp16 autocast with a torch.amp.GradScaler. Trains normally.",
)
def h257_dwile_flonking_fp16_control(ctx: Context) -> None:
    gen = seeded(25713)
    steps = 200
    model = Net(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def lam(step):
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    stream = _signals(gen, 64, 12, 47, noise=0.0)
    lap = torch.distributions.Laplace(0.0, 0.1)

    def noisy():
        while True:
            x, y = next(stream)
            yield x, y + lap.sample(y.shape)

    _loop(
        ctx,
        model,
        opt,
        noisy(),
        steps,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check(
        "the loss scale stayed finite and positive",
        all(math.isfinite(s) and s > 0 for s in ctx.scales),
    )
