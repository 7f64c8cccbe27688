"""Held-out set 464 (``h464_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a lapta bat-swing-arc tanh regressor whose StepLR gamma is typed 10 for 0.1 (full-batch
SGD; at step 100 the lr jumps past 2 / sharpness and the loss blows up), a buzuq fret-bend
row-token attention classifier whose AdamW lr is typed 3e-2 for 3e-4 with no weight decay (the
attention logits grow), a mate-gourd curing mould-risk regressor whose manual loss scale of 2**16
is not divided back on one resume step (one giant gradient fills Adam's second moment, the
updates stall), a hwarangdo kick-impact regressor whose hand-written weight decay is added with
the wrong sign (SGD momentum; the weights grow and the loss climbs slowly), a scagliola
plaster-set net taking log() of a moisture gauge that reads exactly 0 on one batch with no clamp
(NaN, Adam), a ssireum throw-distance regressor fed one shard whose targets are in centimetres
(one corrupted batch, RAdam), a gorodki two-group regressor whose stem lr is typed 1e-9 for 1e-3
(fc1 frozen, RMSprop), a bandura string-tension ReLU net whose "prior" bias of -2 meant for the
head is applied to every Linear (hidden ReLUs dead from the start, Adagrad), a teqball bounce
Huber regressor whose loss is summed instead of averaged for one step (one 256x gradient, SGD
Nesterov, clipped) and a passementerie tassel-braid classifier with a temperature of 0.004 left
in (softmax saturates, NAdam).

Controls: a kantele pluck-onset conformer classifier (hand-written conformer blocks: two
feed-forward halves, self-attention, a depthwise convolution module, over a generated audio-like
feature sequence; AdamW, OneCycleLR, label smoothing, clipping); a nalbinding stitch-gauge
regressor under AdamW with weight decay 0.5 (weight norms shrink steadily while the loss falls);
a pipa tremolo-rate Huber regressor (Adamax, warm-up and cosine decay, accumulation over 2,
noisy batches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _params_norm(params) -> float:
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in params))


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            out = model(x)
            loss = loss_fn(out, y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


# -- data and a plain net ---------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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


# -- 1. sharpness: a StepLR gamma typed 10 for 0.1 --------------------------------------------------


def _sharpness(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


LAPTA_STEP = 100


@scenario(
    family="lapta_bat_swing_arc_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=LAPTA_STEP,
    note="Lapta bat swing-arc regressor (tanh MLP on grip, stance and run-up features, MSE, "
    "full-batch SGD under StepLR). The decay factor is typed gamma=10 for gamma=0.1: at step "
    "100 the lr is multiplied by 10 instead of divided, lr * sharpness crosses 2 and the loss "
    "oscillates and blows up.",
)
def h464_lapta_steplr_gamma_typo(ctx) -> None:
    gen = seeded(4641)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4641)
    x, y = next(data)
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=LAPTA_STEP, gamma=10.0)
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (10, LAPTA_STEP - 1, LAPTA_STEP):
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 200, F.mse_loss, before=before, sched=sched)
    low = min(losses[:LAPTA_STEP])
    blow = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("lr * sharpness under 2 before the typo bites", lrs[10] * sharp[10] < 2.0)
    ctx.check(
        "lr * sharpness over 2 from the step",
        LAPTA_STEP in sharp and lrs[LAPTA_STEP] * sharp[LAPTA_STEP] > 2.0,
    )
    ctx.check("the loss blows up over 100x after it", blow is not None and blow >= LAPTA_STEP)
    ctx.check("trained before it", low < 0.5 * losses[0])


# -- 2. attention logits: an AdamW lr typed 3e-2 for 3e-4 -------------------------------------------


class _Attention(nn.Module):
    """Multi-head self-attention written out, keeping the largest |q.k/sqrt(d)|."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.max_logit = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            m(x).reshape(b, t, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        self.max_logit = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _FretReader(nn.Module):
    """Eight fret-sensor frames as tokens, a learnt summary token, one pre-LN attention block."""

    def __init__(self, d_in=8, dim=32, heads=2, classes=6):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.summary = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 9, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        h = self.embed(x.reshape(-1, 8, 8))
        h = torch.cat([self.summary.expand(len(h), -1, -1), h], 1) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(h[:, 0])


def _bends(gen, batch, classes=6):
    """Eight noisy sensor frames; one frame carries the bend (a marker channel) and its
    shape, which is the label: the reader has to find that frame."""
    g = torch.Generator().manual_seed(4642)
    shapes = 1.5 * torch.randn(classes, 7, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = 0.8 * torch.randn(batch, 8, 8, generator=gen)
        at = torch.randint(0, 8, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, at, 0] = 3.0
        x[rows, at, 1:] += shapes[y]
        yield x.reshape(batch, 64), y


@scenario(
    family="buzuq_fret_bend_row_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Buzuq fret-bend classifier (eight frames of fret-pressure sensors as tokens, a "
    "summary token, one hand-written attention block, cross-entropy, AdamW). The lr is typed "
    "3e-2 for 3e-4 and weight decay is 0: q and k grow, the attention logits q.k/sqrt(d) grow "
    "many-fold and the attention saturates.",
)
def h464_buzuq_attention_lr_typo(ctx) -> None:
    def run(lr, attach):
        gen = seeded(4642)
        model = _FretReader()
        data = _bends(gen, 64)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        seen = []
        losses, _ = _loop(
            ctx,
            model,
            opt,
            data,
            200,
            F.cross_entropy,
            classifier=True,
            after=lambda s: seen.append(model.attn.max_logit),
            attach=attach,
        )
        return losses, seen

    ref_losses, ref = run(3e-4, False)
    losses, seen = run(3e-2, True)
    ctx.check(
        "max attention logit over 20x its first steps'", max(seen[-20:]) > 20 * _mean(seen[:5])
    )
    ctx.check("max attention logit over 5x the 3e-4 run's", max(seen[-20:]) > 5 * max(ref[-20:]))
    ctx.check("the 3e-4 run trains", _fell(ref_losses))


# -- 3. Adam's second moment: a manual loss scale not divided back ----------------------------------

MATE_STEP = 80


@scenario(
    family="mate_gourd_curing_mould_risk_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=MATE_STEP,
    note="Mate-gourd curing mould-risk regressor (GELU MLP on humidity, yerba and days, MSE, "
    "Adam). A hand-rolled loss scale of 2**16 is multiplied in and, on the step the run is "
    "resumed (step 80), the divide-back is skipped: one gradient 65536x too large fills Adam's "
    "second moment and the updates stall for hundreds of steps.",
)
def h464_mate_gourd_loss_scale_resume(ctx) -> None:
    def run(bug, attach):
        gen = seeded(4643)
        model = _Net(10, 48, 1, act=nn.GELU)
        data = _readings(gen, 64, 10, seed=4643)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moves, prev = [], [p.detach().clone() for p in model.parameters()]

        def after(step):
            now = [p.detach().clone() for p in model.parameters()]
            moves.append(
                math.sqrt(sum(float((a - b).norm() ** 2) for a, b in zip(now, prev, strict=True)))
            )
            prev[:] = now

        losses, norms = _loop(
            ctx,
            model,
            opt,
            data,
            260,
            F.mse_loss,
            backprop=lambda s, loss: loss * 2.0**16 if bug and s == MATE_STEP else loss,
            after=after,
            attach=attach,
        )
        return losses, norms, moves

    ref_losses, _, _ = run(False, False)
    losses, norms, moves = run(True, True)
    k = MATE_STEP
    ctx.check("gradient over 1e4x the median at the step", norms[k] > 1e4 * _median(norms[:k]))
    ctx.check(
        "updates 40-140 steps later under 1/20 of those before",
        _mean(moves[k + 40 : k + 140]) < _mean(moves[k - 40 : k]) / 20,
    )
    ctx.check(
        "loss at the end over 1.5x the clean run's",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )


# -- 4. slow divergence: a weight-decay sign bug ---------------------------------------------------


@scenario(
    family="hwarangdo_kick_impact_gelu_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Hwarangdo kick-impact regressor (GELU MLP on pad-sensor and stance features, MSE, SGD "
    "momentum 0.9). Weight decay is applied by hand after the step as p += lr * wd * p (the "
    "sign flipped from -=): the weights grow a little every step and after training the "
    "loss climbs, unevenly, with no single mechanism to point at.",
)
def h464_hwarangdo_decay_sign_flip(ctx) -> None:
    gen = seeded(4644)
    model = _Net(8, 64, 1, act=nn.GELU)
    data = _readings(gen, 64, 8, seed=4644)
    lr, wd = 0.02, 0.4
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)
        norms.append(_params_norm(model.parameters()))

    losses, _ = _loop(ctx, model, opt, data, 300, F.mse_loss, after=after)
    low = min(losses)
    low_at = losses.index(low)
    ctx.check("trained first", _mean(losses[20:40]) < 0.7 * _mean(losses[:10]))
    ctx.check(
        "loss climbs: last 20 over 3x the best 20",
        _mean(losses[-20:]) > 3 * min(_mean(losses[i : i + 20]) for i in range(0, 280, 10)),
    )
    ctx.check("weights grew over 2x", norms[-1] > 2 * norms[0])
    ctx.check("best before the last third", low_at < 200)
    ctx.check("finite", _finite(losses))


# -- 5. nonfinite: log() of a gauge that reads 0 ---------------------------------------------------


class _LogFeatures(nn.Module):
    """log of the positive gauge readings (moisture %, set time) with no clamp."""

    def forward(self, x):
        return torch.log(x)


class _PlasterNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logfeat = _LogFeatures()
        self.fc1 = nn.Linear(6, 32)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(32, 32)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.logfeat(x)))))).squeeze(-1)


SCAG_STEP = 130


@scenario(
    family="scagliola_plaster_set_log_feature_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=SCAG_STEP,
    heldout=True,
    onset=SCAG_STEP,
    note="Scagliola plaster set-hardness net (log of gauge readings, SiLU MLP, MSE, Adam). The "
    "log features have no clamp; at step 130 a moisture gauge dropped out reads exactly 0, "
    "log(0) = -inf goes through fc1 and the loss is NaN; the weights are NaN after the step.",
)
def h464_scagliola_log_zero_gauge(ctx) -> None:
    gen = seeded(4645)
    g = torch.Generator().manual_seed(4645)
    w = torch.randn(6, generator=g)

    def data():
        while True:
            x = torch.exp(0.5 * torch.randn(64, 6, generator=gen))
            yield x, torch.tanh(torch.log(x) @ w / 2.4)

    model = _PlasterNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == SCAG_STEP:
            x = x.clone()
            x[5, 2] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, data(), 220, F.mse_loss, alter=alter)
    ctx.check("finite before the step", _finite(losses[:SCAG_STEP]))
    ctx.check("loss NaN at the step", len(losses) > SCAG_STEP and math.isnan(losses[SCAG_STEP]))
    ctx.check("trained before it", _mean(losses[SCAG_STEP - 10 : SCAG_STEP]) < 0.5 * losses[0])


# -- 6. data outlier: one shard in centimetres ------------------------------------------------------

SSIREUM_STEP = 120


@scenario(
    family="ssireum_sand_ring_throw_distance_regressor",
    optimizer="RAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SSIREUM_STEP,
    note="Ssireum throw-distance regressor (ReLU MLP on grip, hip and footwork features, MSE, "
    "RAdam). One shard exported by another venue has its targets in centimetres instead of "
    "metres: the batch at step 120 is 100x off, the loss and gradient jump, the run recovers.",
)
def h464_ssireum_centimetre_shard(ctx) -> None:
    gen = seeded(4646)
    model = _Net(9, 48, 1)
    data = _readings(gen, 64, 9, seed=4646)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x, 100.0 * y) if step == SSIREUM_STEP else (x, y)

    losses, norms = _loop(ctx, model, opt, data, 240, F.mse_loss, alter=alter)
    k = SSIREUM_STEP
    ctx.check("loss over 20x the median at the step", losses[k] > 20 * _median(losses[k - 20 : k]))
    ctx.check(
        "gradient over 10x the median at the step", norms[k] > 10 * _median(norms[k - 20 : k])
    )
    ctx.check(
        "recovers: last 20 under 3x the 20 before the step",
        _mean(losses[-20:]) < 3 * _mean(losses[k - 20 : k]),
    )
    ctx.check("finite", _finite(losses))


# -- 7. update ratio: a stem lr typed 1e-9 for 1e-3 -------------------------------------------------


@scenario(
    family="gorodki_bat_throw_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Gorodki bat-throw figure-clearance regressor (two param groups: stem fc1 and the rest, "
    "ReLU MLP, Huber, RMSprop). The stem group's lr is typed 1e-9 for 1e-3: fc1 barely moves "
    "(relative change under 1e-5) while fc2 and the head train normally.",
)
def h464_gorodki_stem_lr_typo(ctx) -> None:
    gen = seeded(4647)
    model = _Net(10, 48, 1)
    data = _readings(gen, 64, 10, seed=4647)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": [*model.fc2.parameters(), *model.head.parameters()], "lr": 1e-3},
        ],
        alpha=0.99,
    )
    start = {n: m.weight.detach().clone() for n, m in (("fc1", model.fc1), ("fc2", model.fc2))}
    losses, _ = _loop(ctx, model, opt, data, 200, F.huber_loss)

    def rel(name, m):
        return float((m.weight.detach() - start[name]).norm() / start[name].norm())

    ctx.check("fc1 moves under 1e-5 of its norm", rel("fc1", model.fc1) < 1e-5)
    ctx.check("fc2 moves over 5% of its norm", rel("fc2", model.fc2) > 0.05)
    ctx.check("finite", _finite(losses))


# -- 8. plasticity: a prior bias applied to every Linear ---------------------------------------------


@scenario(
    family="bandura_string_tension_bias_init_relu_net",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Bandura string-tension regressor (ReLU MLP on string gauge, length and pitch "
    "features, MSE, Adagrad). An init loop meant to set the head's bias prior to -2 runs "
    "over every nn.Linear: fc1 and fc2 start with biases of -2, nearly all their ReLUs are dead "
    "from the start and stay dead, and the loss hardly falls.",
)
def h464_bandura_prior_bias_everywhere(ctx) -> None:
    def run(bug, attach):
        gen = seeded(4648)
        model = _Net(8, 48, 1)
        if bug:
            for m in model.modules():
                if isinstance(m, nn.Linear):
                    nn.init.constant_(m.bias, -2.0)
        data = _readings(gen, 64, 8, seed=4648)
        opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
        losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss, attach=attach)
        x, _ = next(data)
        with torch.no_grad():
            dead = dead_fraction(model.features(x))
        return losses, dead

    ref_losses, ref_dead = run(False, False)
    losses, dead = run(True, True)
    ctx.check("over 90% of fc2's units dead at the end", dead > 0.9)
    ctx.check("under 10% dead in the run without the bug", ref_dead < 0.1)
    ctx.check(
        "loss at the end over 2x the clean run's", _mean(losses[-20:]) > 2 * _mean(ref_losses[-20:])
    )


# -- 9. gradient spike: a summed loss for one step --------------------------------------------------

TEQ_STEP = 150


@scenario(
    family="teqball_curved_table_bounce_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=TEQ_STEP,
    note="Teqball curved-table bounce regressor (tanh MLP on spin and contact features, Huber, "
    "SGD Nesterov, clipping at 5). On the step an eval hook ran (step 150) the loss is built "
    "with reduction='sum' instead of 'mean': a 256x gradient on an ordinary loss; the clip "
    "bounds the step and the run recovers.",
)
def h464_teqball_sum_reduction_once(ctx) -> None:
    gen = seeded(4649)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4649)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * 256 if step == TEQ_STEP else loss

    losses, norms = _loop(ctx, model, opt, data, 260, F.huber_loss, backprop=backprop, clip=5.0)
    k = TEQ_STEP
    ctx.check(
        "gradient over 50x the median at the step", norms[k] > 50 * _median(norms[k - 30 : k])
    )
    ctx.check("the logged loss is ordinary there", losses[k] < 2 * _median(losses[k - 30 : k]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[k - 20 : k]))
    ctx.check("finite", _finite(losses))


# -- 10. softmax collapse: a temperature of 0.004 left in ------------------------------------------


class _TasselNet(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.temperature = temperature
        self.fc1 = nn.Linear(16, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.GELU()
        self.head = nn.Linear(64, 8)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="passementerie_tassel_braid_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Passementerie tassel-braid pattern classifier (GELU MLP on thread-tension features, "
    "cross-entropy, NAdam). A sharpening temperature of 0.004 from a calibration experiment is "
    "left in forward: the logits are 250x too large, most rows' softmax rounds the target to "
    "exactly 1.0 in float32.",
)
def h464_passementerie_temperature_left_in(ctx) -> None:
    def run(temp, attach):
        gen = seeded(4650)
        model = _TasselNet(temp)
        data = _grades(gen, 64, 16, 8, seed=4650, spread=0.9)
        opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
        losses, _ = _loop(
            ctx, model, opt, data, 150, F.cross_entropy, classifier=True, attach=attach
        )
        x, y = next(data)
        with torch.no_grad():
            return losses, collapsed_fraction(model(x), y)

    _, ref = run(1.0, False)
    losses, frac = run(0.004, True)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("under 5% at temperature 1", ref < 0.05)


# -- controls ---------------------------------------------------------------------------------------


class _ConvModule(nn.Module):
    """Conformer convolution module: pointwise conv + GLU, depthwise conv, BatchNorm, SiLU,
    pointwise conv."""

    def __init__(self, dim, kernel=7):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.pw1 = nn.Conv1d(dim, 2 * dim, 1)
        self.dw = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.bn = nn.BatchNorm1d(dim)
        self.pw2 = nn.Conv1d(dim, dim, 1)

    def forward(self, x):
        h = self.ln(x).transpose(1, 2)
        h = F.glu(self.pw1(h), dim=1)
        h = self.pw2(F.silu(self.bn(self.dw(h))))
        return h.transpose(1, 2)


class _FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(self.ln(x))))


class _ConformerBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ff1 = _FeedForward(dim)
        self.ln_att = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.conv = _ConvModule(dim)
        self.ff2 = _FeedForward(dim)
        self.ln_out = nn.LayerNorm(dim)

    def forward(self, x):
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn(self.ln_att(x))
        x = x + self.conv(x)
        x = x + 0.5 * self.ff2(x)
        return self.ln_out(x)


class _Conformer(nn.Module):
    def __init__(self, n_mels=16, dim=32, heads=2, layers=2, classes=5):
        super().__init__()
        self.subsample = nn.Conv1d(n_mels, dim, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(_ConformerBlock(dim, heads) for _ in range(layers))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.subsample(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(1))


def _plucks(gen, batch, classes=5, frames=40, n_mels=16):
    """Audio-like log-mel frames: a pluck onset at a random frame whose partials (mel bands)
    and decay depend on the class, over a noise floor."""
    g = torch.Generator().manual_seed(4651)
    partials = torch.rand(classes, n_mels, generator=g) ** 3
    decay = 0.05 + 0.25 * torch.rand(classes, generator=g)
    t = torch.arange(frames).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        onset = torch.randint(0, frames // 2, (batch,), generator=gen).float()
        dt = (t[None] - onset[:, None]).clamp_min(0)
        env = torch.exp(-decay[y][:, None] * dt) * (t[None] >= onset[:, None])
        spec = env[:, :, None] * partials[y][:, None, :]
        noise = 0.05 * torch.rand(batch, frames, n_mels, generator=gen)
        yield torch.log(spec + noise + 1e-3), y


@scenario(
    family="kantele_pluck_onset_conformer_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kantele pluck classifier: a hand-written two-block conformer (half-step feed-forward, "
    "self-attention, a depthwise convolution module with GLU and BatchNorm, half-step "
    "feed-forward) over generated log-mel pluck frames; cross-entropy with label smoothing "
    "0.1, AdamW under OneCycleLR, clipping at 1. A healthy control.",
)
def h464_kantele_conformer_control(ctx) -> None:
    gen = seeded(4651)
    model = _Conformer()
    data = _plucks(gen, 32)
    steps = 150
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        data,
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell under 60% of its start", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))


@scenario(
    family="nalbinding_stitch_loop_gauge_adamw_decay_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Nalbinding stitch-gauge regressor (wide SiLU MLP on yarn, needle and stitch-type "
    "features, MSE, AdamW with a large decoupled weight decay of 0.5, lr 1e-2): the weight "
    "norms shrink steadily while the loss falls. A healthy control.",
)
def h464_nalbinding_large_decay_control(ctx) -> None:
    gen = seeded(4652)
    model = _Net(10, 128, 1, act=nn.SiLU)
    data = _readings(gen, 64, 10, seed=4652)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    norms = []

    def after(step):
        if step % 25 == 0:
            norms.append(_params_norm(w for n, w in model.named_parameters() if "weight" in n))

    losses, _ = _loop(ctx, model, opt, data, 250, F.mse_loss, after=after)
    ctx.check("loss fell under 50% of its start", _fell(losses, ratio=0.5))
    ctx.check(
        "weight norm shrinks at every checkpoint from step 25",
        all(b < a for a, b in zip(norms[1:], norms[2:], strict=False)),
    )
    ctx.check("weight norm at the end under 80% of its start", norms[-1] < 0.8 * norms[0])
    ctx.check("finite", _finite(losses))


@scenario(
    family="pipa_tremolo_rate_adamax_huber_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Pipa tremolo-rate regressor (GELU MLP on fingernail-sensor features, Huber, Adamax "
    "under a LambdaLR warm-up of 20 steps and cosine decay, accumulation over 2, noisy batches "
    "with label noise). A healthy control.",
)
def h464_pipa_adamax_control(ctx) -> None:
    gen = seeded(4653)
    model = _Net(12, 64, 1, act=nn.GELU)
    data = _readings(gen, 32, 12, seed=4653, noise=0.3)
    steps = 200
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    losses, _ = _loop(ctx, model, opt, data, steps, F.huber_loss, sched=sched, accumulate=2)
    ctx.check("loss fell under 70% of its start", _fell(losses, ratio=0.7))
    ctx.check("finite", _finite(losses))
