"""Held-out set 220 (``h220_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: an abalone shell-grade classifier whose z-loss regulariser
is subtracted, a shehnai reed-breath Elman net whose identity recurrent init got a
1.05 gain, a bloomery slag regressor fed one batch with the bloom mass in grams, a gaida drone
ornament classifier dividing its logits by a distillation temperature of 0.005, a besom-broom
sweep-width regressor taking the log of an unclamped prediction, a sanshin skin-tension
regressor whose body param group got 3e-8 for 3e-3, a wife-carrying course-time ReLU net on raw
readings whose units die, a toe-wrestling bout classifier whose loss-weight table is read with
the wrong index for one step, an ice-circle rotation regressor whose warm-up peaks at 2.5 for
0.25, a sneaker-wave run-up regressor whose tide gauge gain drifts, and three controls (a
nadaswaram pitch-bend regressor on heavy-tailed targets with Huber, clipping and warm-up, a
blood-rain dust-event binary classifier with BCE-with-logits and pos_weight under
ReduceLROnPlateau, a mandola tremolo classifier under fp16 autocast with a GradScaler,
OneCycleLR, accumulation and label smoothing).

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
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` after the optimizer step; stops after
    logging a NaN loss."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
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


# -- abalone: a z-loss regulariser subtracted instead of added -----------------------------------


@scenario(
    family="abalone_shell_grade_zloss_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=96,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) grading abalone shells into 5 grades from 10 standardised readings (nacre lustre, shell length, rim thickness, ...), Adam at 3e-3, cross-entropy plus a PaLM-style z-loss 1e-3 * logsumexp(logits)**2 meant to keep the head's logits near zero, but written `loss = ce - z_loss`: the regulariser rewards large logits. The cross-entropy falls to about 1e-3 first, then the head's logits grow without bound (over 1000x their early size by the end), the logged loss runs to large negative values, and the cross-entropy itself climbs back past its untrained value (ln 5) at step 96 and into the thousands; finite.",
)
def h220_abalone_zloss_sign_flipped(ctx: Context) -> None:
    gen = seeded(22001)
    model = Stack(10, 64, 5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    size, ce = {}, {}

    def loss_fn(out, y):
        z_loss = 1e-3 * torch.logsumexp(out, -1).pow(2).mean()
        return F.cross_entropy(out, y) - z_loss  # meant: + z_loss

    def watch(step, out, x, y):
        size[step] = float(out.detach().abs().max(-1).values.mean())
        ce[step] = float(F.cross_entropy(out.detach().float(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 10, 5, seed=1, noise=0.3),
        250,
        loss_fn,
        classifier=True,
        watch=watch,
    )
    early = _mean([size[s] for s in range(10)])
    crossed = next((s for s in range(20, 250) if ce[s] > ce[0]), None)
    ctx.check("cross-entropy fell below 0.01 first", min(ce[s] for s in range(80)) < 0.01)
    ctx.check("head logits over 1000x their size at steps 0-9 by the end", size[249] > 1000 * early)
    ctx.check("head logits still growing over the last 50 steps", size[249] > 1.3 * size[199])
    ctx.check("cross-entropy back past its untrained value at step 96", crossed == 96)
    ctx.check("cross-entropy over 100 by the end", ce[249] > 100)
    ctx.check("finite", _finite(ctx.losses))


# -- shehnai: an Elman net with identity recurrent init at a 1.05 gain ----------------------------


class ReedRNN(nn.Module):
    def __init__(self, feat=3, hidden=48, gain=1.05):
        super().__init__()
        self.rnn = nn.RNNCell(feat, hidden, nonlinearity="relu")
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rnn.weight_hh.copy_(gain * torch.eye(hidden))  # IRNN init; the gain meant 1.0
            self.rnn.bias_hh.zero_()
            self.rnn.bias_ih.zero_()
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rnn.hidden_size)
        self.states = []
        for t in range(x.shape[1]):
            h = self.rnn(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _breath(gen, batch, length=40):
    """Three standardised breath readings per frame of a shehnai phrase (mouth pressure, reed
    opening, tongue position) and the pitch bend at the end of the phrase."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh(x[:, -8:, 0].mean(1) * 2 + x[:, :4, 1].mean(1))
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="shehnai_reed_breath_irnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="A ReLU Elman net (rnn: nn.RNNCell with relu, unrolled by hand, head) reading 40 frames of 3 breath readings of a shehnai phrase and predicting the pitch bend at its end, plain SGD at 1.5e-3, MSE. The recurrent weight got the IRNN identity init with `rec_gain: 1.05` (meant 1.0): the recurrence amplifies states and gradients through time (the gradient at the first frame is about 3x that at the last at init), the first gradient is in the hundreds, the first update raises the recurrent gain further and the gradient then grows through time by orders of magnitude; the loss goes from about 3 to about 3e7 at step 1 and is NaN at step 5.",
)
def h220_shehnai_irnn_gain(ctx: Context) -> None:
    gen = seeded(22002)
    model = ReedRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1.5e-3)
    probe = next(_breath(torch.Generator().manual_seed(55), 64))
    F.mse_loss(model(probe[0]), probe[1]).backward()
    first, last = model.states[0].grad.norm(), model.states[-1].grad.norm()
    through_time = float(first / last.clamp_min(1e-30))
    model.zero_grad()
    later = {}

    def after(step):
        if step == 0:
            out = model(probe[0])
            first_grad = torch.autograd.grad(F.mse_loss(out, probe[1]), model.states[0])[0]
            later["ratio"] = float(first_grad.norm())

    _train(ctx, model, opt, _breath(gen, 32), 120, F.mse_loss, after=after)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("gradient at the first frame over 2x that at the last at init", through_time > 2)
    ctx.check(
        "after the first update the gradient at the first frame is over 1000x what it was",
        later["ratio"] > 1000 * float(first),
    )
    ctx.check(
        "loss past 1000x its first value",
        max(v if math.isfinite(v) else 1e30 for v in ls) > 1000 * ls[0],
    )
    ctx.check("loss non-finite within 30 steps", bad is not None and bad < 30)


# -- bloomery: one batch with the bloom mass logged in grams --------------------------------------


def _smelts(gen, batch, seed=3):
    """Seven standardised readings of a bloomery smelt (charcoal:ore ratio, bellows rate, bloom
    mass in kg standardised, furnace height, ...) and the slag's iron fraction (standardised)."""
    yield from _readings(gen, batch, 7, seed, noise=0.05)


@scenario(
    family="bloomery_slag_iron_regressor",
    optimizer="SGD (momentum)",
    cause="data_outlier",
    where=(),
    diverges=142,
    onset=140,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting the iron fraction left in a bloomery smelt's slag from 7 standardised readings, SGD with momentum 0.9 at 0.01, MSE. One shard came from a site whose logger wrote the bloom mass in grams instead of kilograms and was never standardised: the batch at step 140 has that column around 1000x its usual range. The loss on that batch is thousands of times its level and the gradient hundreds of times its median; the kick sends the weights so far that, carried on by the momentum, the loss is inf at step 142 and NaN at step 143.",
)
def h220_bloomery_grams_shard(ctx: Context) -> None:
    gen = seeded(22003)
    model = Stack(7, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    span = {}

    def alter(step, x, y):
        if step == 140:
            x = x.clone()
            x[:, 2] = 1000.0 * (x[:, 2] * 0.4 + 3.2)  # bloom mass in grams, not standardised
        span[step] = float(x.abs().max())
        return x, y

    _train(ctx, model, opt, _smelts(gen, 64), 300, F.mse_loss, alter=alter)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "input at step 140 over 100x the usual range",
        span[140] > 100 * _median([span[s] for s in range(140)]),
    )
    ctx.check(
        "loss at step 140 over 100x the mean of steps 120-139", ls[140] > 100 * _mean(ls[120:140])
    )
    ctx.check("gradient at step 140 over 100x the median before", gn[140] > 100 * _median(gn[:140]))
    ctx.check("loss fell before the onset", _fell(ls[:140], ratio=0.5))
    ctx.check("loss finite up to the onset", _finite(ls[:141]))
    ctx.check("loss first non-finite at step 142", _first_bad(ls) == 142)
    ctx.check("loss NaN at step 143", len(ls) == 144 and math.isnan(ls[143]))


# -- gaida: a classifier dividing its logits by a distillation temperature ------------------------


@scenario(
    family="gaida_drone_ornament_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) naming one of 6 gaida (Balkan bagpipe) ornaments from 12 standardised chanter readings, RMSprop at 1e-3, cross-entropy on logits / temperature. The config's `temperature: 0.005` belonged to a distillation run and was picked up by the classifier: the logits are multiplied by 200, and by the end over 90% of rows' float32 softmax gives the target exactly 1.0 (no gradient from them at all) while the loss sits near 1e-4; finite.",
)
def h220_gaida_distill_temperature(ctx: Context) -> None:
    gen = seeded(22004)
    model = Stack(12, 64, 6, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    temperature = 0.005  # from the distillation config
    probe = next(_kinds(torch.Generator().manual_seed(56), 512, 12, 6, seed=4))
    with torch.no_grad():
        c0 = collapsed_fraction(model(probe[0]) / temperature, probe[1])

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 6, seed=4),
        200,
        lambda out, y: F.cross_entropy(out / temperature, y),
        classifier=True,
    )
    with torch.no_grad():
        c1 = collapsed_fraction(model(probe[0]) / temperature, probe[1])
    ls = ctx.losses
    ctx.check("under 10% of rows collapsed at init", c0 < 0.1)
    ctx.check("over 90% of rows give the target exactly 1.0 at the end", c1 > 0.9)
    ctx.check("loss under 1e-3 at the end", _mean(ls[-10:]) < 1e-3)
    ctx.check("finite", _finite(ls))


# -- besom broom: a log-space loss on an unclamped prediction ---------------------------------------


def _brooms(gen, batch, seed=5):
    """Nine standardised readings of a besom broom (birch twig count, binding tightness, handle
    length, ...) and its sweep width in m (0.05 to about 1)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        yield x, 0.05 + 0.9 * torch.sigmoid(1.5 * x @ w / 3.0)


@scenario(
    family="besom_broom_sweep_width_msle_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("head",),
    diverges=24,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) predicting a besom broom's sweep width in m (0.05 to about 1) from 9 standardised readings, Adamax at 2e-3, mean squared log error (log(pred) - log(y))**2 taken straight on the head's output: the softplus (or clamp) meant to keep predictions positive was never added. The head starts near 0.5 and learns; at step 24 one prediction for a narrow broom crosses zero, log of a negative gives NaN and the loss is NaN.",
)
def h220_besom_msle_unclamped_log(ctx: Context) -> None:
    gen = seeded(22005)
    model = Stack(9, 48, 1, act=nn.Tanh)
    with torch.no_grad():
        model.head.weight.mul_(0.1)
        model.head.bias.fill_(0.5)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    low = {}

    def watch(step, out, x, y):
        low[step] = float(out.detach().min())

    _train(
        ctx,
        model,
        opt,
        _brooms(gen, 64),
        200,
        lambda out, y: (torch.log(out) - torch.log(y)).pow(2).mean(),
        watch=watch,
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss first non-finite at the declared step", bad == 24)
    ctx.check("predictions positive before it", all(low[s] > 0 for s in range(24)))
    ctx.check("a prediction at or below zero at that step", bad is not None and low[bad] <= 0)
    ctx.check(
        "loss finite and falling before it", _finite(ls[:24]) and _mean(ls[14:24]) < _mean(ls[:5])
    )


# -- sanshin: a body param group at 3e-8 for 3e-3 --------------------------------------------------


@scenario(
    family="sanshin_snakeskin_tension_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) predicting a sanshin's snakeskin head tension from 10 standardised tapping readings, NAdam with two param groups: the body (fc1, fc2) at `3e-8` (a typo for 3e-3) and the head at 3e-3, MSE. The body's updates are about 1e-7 of its weights, it stays at its random init for the whole run, and only the head learns on random features: the loss falls a little and plateaus well above what the net can reach; finite.",
)
def h220_sanshin_body_group_typo(ctx: Context) -> None:
    gen = seeded(22006)
    model = Stack(10, 64, 1, act=nn.GELU)
    body = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.NAdam(
        [{"params": body, "lr": 3e-8}, {"params": model.head.parameters(), "lr": 3e-3}]
    )
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=6), 250, F.mse_loss)
    moved1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    movedh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ls = ctx.losses
    ctx.check("fc1 moved under 1e-4 of its norm", moved1 < 1e-4)
    ctx.check("head moved over 10% of its norm", movedh > 0.1)
    ctx.check("loss fell a little", _fell(ls, ratio=0.95))
    ctx.check("finite", _finite(ls))


# -- wife carrying: raw readings into a ReLU net, units die ---------------------------------------


def _courses(gen, batch, seed=7):
    """Eight raw readings of a wife-carrying heat (carrier mass in kg, partner mass in kg, water
    obstacle depth in cm, ...) and the course time, standardised."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor([85.0, 52.0, 100.0, 253.5, 30.0, 12.0, 60.0, 3.0])
    scale = torch.tensor([12.0, 6.0, 20.0, 1.0, 8.0, 4.0, 15.0, 1.0])
    w = torch.randn(8, generator=g)
    while True:
        z = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(z @ w / 3) + 0.3 * torch.sin(z[:, 0] * z[:, 1])
        yield mean + scale * z, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="wife_carrying_course_time_relu_mlp",
    optimizer="AdamW",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting a wife-carrying heat's course time from 8 raw readings (masses in kg, obstacle depths in cm, ...), AdamW at 3e-2, MSE. The standardisation step was skipped: inputs of order 100 into fc1 leave about half of act1's units off on every input already at init, and the first updates, swinging the pre-activations by tens, push nearly all the rest negative on every input; they never come back (over 90% of act1 dead), the loss plateaus around 0.4 where the same net on standardised inputs reaches about 0.015; finite.",
)
def h220_wife_carrying_raw_units_dead_relus(ctx: Context) -> None:
    gen = seeded(22007)
    model = Stack(8, 64, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    probe = next(_courses(torch.Generator().manual_seed(57), 512))
    with torch.no_grad():
        d0 = float((model.act1(model.fc1(probe[0])) <= 0).all(0).float().mean())
    _train(ctx, model, opt, _courses(gen, 64), 250, F.mse_loss)
    with torch.no_grad():
        d1 = float((model.act1(model.fc1(probe[0])) <= 0).all(0).float().mean())
    ls = ctx.losses
    ctx.check("under 50% of act1's units dead at init", d0 < 0.5)
    ctx.check("over 90% of act1's units dead at the end", d1 > 0.9)
    ctx.check("loss over 0.2 late (the net reaches about 0.015)", _mean(ls[-50:]) > 0.2)
    ctx.check(
        "loss plateaus (last 50 steps within 20% of steps 100-150)",
        abs(_mean(ls[-50:]) - _mean(ls[100:150])) < 0.2 * _mean(ls[100:150]),
    )
    ctx.check("finite", _finite(ls))


# -- toe wrestling: a loss-weight table read with the wrong index for one step --------------------


@scenario(
    family="toe_wrestling_bout_classifier",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) calling a toe-wrestling bout (4 outcomes) from 10 standardised readings (toe grip pressure, foot length, ...), SGD Nesterov at 0.02, cross-entropy times a per-stage loss weight from a table [1.0, 1.0, 60.0] whose last entry belongs to a different head. At step 150 the stage counter is off by one for a single step and the classifier's loss is weighted 60: one gradient burst about 60x the median that does not come from the data. The loss rises for a few steps and the run recovers; finite.",
)
def h220_toe_wrestling_loss_weight_index(ctx: Context) -> None:
    gen = seeded(22008)
    model = Stack(10, 64, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    weights = [1.0, 1.0, 60.0]

    def scale_loss(step, total):
        stage = 2 if step == 150 else 1  # the counter runs one ahead for one step
        return weights[stage] * total

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 10, 4, seed=8, noise=1.0),
        280,
        F.cross_entropy,
        classifier=True,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 150 over 30x the median before", gn[150] > 30 * _median(gn[:150]))
    ctx.check(
        "loss on the batch itself not unusual (under 2x the mean of 130-149)",
        ls[150] < 2 * _mean(ls[130:150]),
    )
    ctx.check(
        "loss rose after the burst (max of 151-160 over 2x before)",
        max(ls[151:161]) > 2 * _mean(ls[130:150]),
    )
    ctx.check(
        "loss back within 1.5x its pre-burst level (steps 230-280)",
        _mean(ls[230:]) < 1.5 * _mean(ls[130:150]),
    )
    ctx.check("finite", _finite(ls))


# -- ice circle: a warm-up whose peak was typed 2.5 for 0.25 ---------------------------------------


def _top_eigen(model, x, y, iters=20):
    """Largest Hessian eigenvalue of the MSE on (x, y) by power iteration."""
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((h * u).sum() for h, u in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="ice_circle_rotation_rate_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=15,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) predicting the rotation rate of a river ice circle from 6 standardised readings (current speed, disc diameter, water temperature, ...), plain SGD, MSE, a linear warm-up over 100 steps to a peak typed `2.5` for 0.25. The loss falls while the rate is small; lr passes 2/sharpness (measured every 5 steps by power iteration on a fixed batch) by step 15, at lr of about 0.4; the loss oscillates and climbs, is over 100x its minimum by step 35 and non-finite at step 49.",
)
def h220_ice_circle_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(22009)
    model = Stack(6, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    peak = 2.5  # meant 0.25
    probe = next(_readings(torch.Generator().manual_seed(59), 512, 6, seed=9))
    lrs, sharp = {}, {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / 100)
        for group in opt.param_groups:
            group["lr"] = lr
        lrs[step] = lr
        if step % 5 == 0 and step < 100:
            sharp[step] = _top_eigen(model, *probe)

    _train(ctx, model, opt, _readings(gen, 128, 6, seed=9), 160, F.mse_loss, before=before)
    ls = ctx.losses
    blown = next(
        (i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * min(ls[: i + 1])), None
    )
    crossed = next((s for s in sorted(sharp) if lrs[s] * sharp[s] > 2), None)
    ctx.check("loss blew up (100x its minimum or non-finite)", blown is not None)
    ctx.check(
        "lr passed 2/sharpness before the blow-up",
        crossed is not None and blown is not None and crossed < blown,
    )
    ctx.check(
        "loss fell while lr was below 2/sharpness",
        crossed is not None
        and crossed > 10
        and _mean(ls[crossed - 5 : crossed]) < 0.8 * _mean(ls[:5]),
    )
    ctx.check("lr first measured past 2/sharpness at step 15", crossed == 15)


# -- sneaker wave: a run-up gauge whose gain drifts -------------------------------------------------


def _runups(gen, batch, steps_total, seed=10):
    """Eight standardised readings of an incoming set (offshore swell period, beach slope, tide,
    ...) and the run-up the beach gauge reports; the gauge's gain drifts up over the run."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    v = torch.randn(8, generator=g)
    step = 0
    while True:
        gain = 1.0 + 4.0 * step / steps_total  # the uncorrected drift of the gauge
        x = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(x @ w / 3) + 0.5 * torch.sin(x @ v / 2)
        y = y + 0.3 * torch.randn(batch, generator=gen)
        yield x, gain * y
        step += 1


@scenario(
    family="sneaker_wave_runup_gelu_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) predicting a sneaker wave's run-up from 8 standardised readings of the incoming set, RAdam at 1e-3, MSE, trained on a stream from a beach gauge whose gain drifts uncorrected from 1x to 5x over the run: the targets grow, the noise in them with it, and the loss climbs slowly and steadily from about 0.6 to over 3 (each 60-step mean above the one before), with no single jump; finite.",
)
def h220_sneaker_wave_gauge_drift(ctx: Context) -> None:
    gen = seeded(22010)
    model = Stack(8, 64, 1, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    _train(ctx, model, opt, _runups(gen, 64, 300), 300, F.mse_loss)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, 290, 10))
    windows = [_mean(ls[i : i + 60]) for i in range(0, 300, 60)]
    ctx.check("loss over 5x its lowest 10-step mean by the end", _mean(ls[-10:]) > 5 * low)
    ctx.check(
        "each 60-step mean above the one before",
        all(b > a for a, b in zip(windows, windows[1:], strict=False)),
    )
    ctx.check(
        "no single jump over 3x the previous 10-step mean",
        all(ls[i] < 3 * _mean(ls[i - 10 : i]) for i in range(60, 300)),
    )
    ctx.check("finite", _finite(ls))


# -- controls ---------------------------------------------------------------------------------------


def _bends(gen, batch, seed=11):
    """Ten standardised readings of a nadaswaram phrase (breath pressure, reed wetness, finger
    shading, ...) and the pitch bend in semitones, with Student-t (df 1.5) errors: glitches from
    the pitch tracker give heavy tails."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    t = torch.distributions.StudentT(1.5)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = torch.tanh(x @ w / 3) * 2 + 0.2 * t.sample((batch,))
        yield x, y


@scenario(
    family="nadaswaram_pitch_bend_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) predicting a nadaswaram's pitch bend from 10 standardised readings, with heavy-tailed Student-t (df 1.5) errors in the targets (pitch-tracker glitches), Huber loss (delta 1), Adagrad at 0.05 with a 20-step linear warm-up (LambdaLR) and gradient clipping at 1.0. Trains normally.",
)
def h220_nadaswaram_huber_heavy_tails(ctx: Context) -> None:
    gen = seeded(22011)
    model = Stack(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    biggest = {}

    def watch(step, out, x, y):
        biggest[step] = float(y.abs().max())

    _train(
        ctx,
        model,
        opt,
        _bends(gen, 64),
        250,
        nn.HuberLoss(delta=1.0),
        watch=watch,
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check(
        "targets heavy-tailed (some batch holds a target over 20)", max(biggest.values()) > 20
    )
    ctx.check("loss fell to under half", _fell(ls, k=20, ratio=0.5))
    ctx.check("finite", _finite(ls))


def _dust(gen, batch, seed=12):
    """Nine standardised readings of a day (Saharan dust index, rain rate, wind, ...) and
    whether blood rain (red dust-laden rain) fell; about 10% positives."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        score = x @ w / 3 + 0.3 * torch.randn(batch, generator=gen)
        yield x, (score > 1.3).float()


@scenario(
    family="blood_rain_dust_event_bce_classifier",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a ReLU MLP (fc1, act1, fc2, act2, head) deciding whether blood rain fell from 9 standardised daily readings, about 10% positives, nn.BCEWithLogitsLoss with pos_weight 9, SGD with momentum 0.9 at 0.02, ReduceLROnPlateau (factor 0.5, patience 20). Trains normally and recalls most positives.",
)
def h220_blood_rain_bce_pos_weight(ctx: Context) -> None:
    gen = seeded(22012)
    model = Stack(9, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(9.0))
    _train(ctx, model, opt, _dust(gen, 128), 250, loss_fn, sched=sched)
    probe = next(_dust(torch.Generator().manual_seed(62), 2000))
    with torch.no_grad():
        pred = model(probe[0]) > 0
    pos = probe[1] > 0.5
    recall = float((pred & pos).sum() / pos.sum())
    ls = ctx.losses
    ctx.check("positives about 10% of the probe", 0.05 < float(pos.float().mean()) < 0.2)
    ctx.check("recall of positives over 0.8", recall > 0.8)
    ctx.check("loss fell to under half", _fell(ls, k=20, ratio=0.5))
    ctx.check("finite", _finite(ls))


@scenario(
    family="mandola_tremolo_fp16_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) naming one of 7 mandola tremolo patterns from 16 standardised pick-sensor readings, fp16 autocast with a torch.amp.GradScaler, AdamW with two param groups (weight decay 0.05 on weights, none on biases), OneCycleLR to 3e-3, gradient accumulation over 2 batches, cross-entropy with label smoothing 0.1. Trains normally; the scale stays finite.",
)
def h220_mandola_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(22013)
    model = Stack(16, 64, 7, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 32, 16, 7, seed=13, noise=0.6),
        steps,
        nn.CrossEntropyLoss(label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("loss fell to under 60%", _fell(ls, k=20, ratio=0.6))
    ctx.check("finite", _finite(ls))
    ctx.check(
        "gradient scale finite and above 1 at the end",
        math.isfinite(ctx.scales[-1]) and ctx.scales[-1] >= 1.0,
    )
