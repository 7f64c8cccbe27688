"""Held-out set 407 (``h407_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a sheepdog shed-gate timing SiLU regressor under fp16 autocast whose GradScaler
growth_factor is typed 20.0 for 2.0 (the scale overshoots and the fp16 backward overflows again
and again), a freediving ascent-drift tanh regressor whose target standardiser shrinks its scale
every step (a drifting target: a slow climb), a bell-founding strike-note ReLU regressor resumed
at step 120 with the fp16 run's loss scale 256 left on one backward (one gradient burst), a sepak
takraw roll-spike cosine classifier whose scale is typed 640 for 16 (softmax saturates), a
sculling stroke-set regressor whose masked mean pool dropped its clamp_min(1) (an empty session
gives 0/0), a glacier-moulin surge SiLU regressor fed one logger's shard in millimetres (one
corrupted batch), a clog-dance shuffle classifier whose trunk param group has lr 1e-9 for 1e-3
(frozen), an aurora substorm ReLU RNN whose recurrent identity init is scaled 1.25 for 1.0
(gradients grow through time), a fencing riposte ranker whose margin hinge lost its clamp (the
head's logits grow without bound) and a bolas throw-range tanh regressor whose StepLR gamma is
typed 10 for 0.1 (the rate passes 2/sharpness).

Controls: a ceilidh reel character LM with a hand-written mixture-of-softmaxes output layer on
generated tunes (AdamW, label smoothing, fp32, warm-up then cosine), a handbell change-ringing
ReLU Conv1d classifier (SGD momentum under OneCycleLR, clipping) and a sandcastle turret-height
Huber regressor (ASGD, ReduceLROnPlateau, noisy batches, accumulation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _reg_batches(gen: torch.Generator, d: int, batch: int, noise: float = 0.05):
    """Endless batches of a smooth nonlinear regression on d standard-normal features."""
    w = torch.randn(d, generator=gen) / math.sqrt(d)
    v = torch.randn(d, generator=gen) / math.sqrt(d)
    while True:
        x = torch.randn(batch, d, generator=gen)
        y = torch.sin(x @ w) + 0.5 * torch.tanh(x @ v) + noise * torch.randn(batch, generator=gen)
        yield x, y[:, None]


def _cls_batches(gen: torch.Generator, d: int, classes: int, batch: int, spread: float = 1.0):
    """Endless batches of Gaussian clusters (one centre per class)."""
    centres = torch.randn(classes, d, generator=gen) * 1.5
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = centres[y] + spread * torch.randn(batch, d, generator=gen)
        yield x, y


def _sharpness(model: nn.Module, loss_fn, iters: int = 15) -> float:
    """Top Hessian eigenvalue of loss_fn(model) by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return abs(lam)


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
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. Stops after a non-finite loss (once ``ctx.step`` saw it)."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
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
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau(step)
        if not math.isfinite(shown):
            break


class _Reg(nn.Module):
    def __init__(self, d: int, h: int, act: type[nn.Module], out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.act1 = act()
        self.fc2 = nn.Linear(h, h)
        self.act2 = act()
        self.head = nn.Linear(h, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


# -- faults ---------------------------------------------------------------------------------------


@scenario(
    "sheepdog_shed_gate_fp16_silu_regressor",
    "Adam",
    "amp_overflow",
    where=(),
    diverges=None,
    heldout=True,
    note="fp16 autocast with a GradScaler whose growth_factor is typed 20.0 for 2.0 (and "
    "growth_interval 5): the scale overshoots fp16's range, the backward overflows, the step is "
    "skipped and the scale halves, then jumps 20x again; a large share of steps are skipped.",
)
def h407_sheepdog_shed_gate_scaler_growth_typo(ctx) -> None:
    gen = seeded(40701)
    model = _Reg(12, 64, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_factor=20.0, growth_interval=5)
    _loop(ctx, model, opt, _reg_batches(gen, 12, 64), 200, F.mse_loss, scaler=scaler, amp=True)
    sc = ctx.scales
    backoffs = sum(1 for a, b in zip(sc[:-1], sc[1:], strict=False) if b < a)
    ctx.check("over 20 scale back-offs (fp16 overflows)", backoffs > 20)
    ctx.check("over 15% of steps skipped", backoffs / max(len(sc), 1) > 0.15)
    ctx.check("the scale passed 2**20 at some step", max(sc) > 2.0**20)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "freediving_ascent_drift_tanh_regressor",
    "SGD",
    "loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="The target standardiser's scale is updated as sd *= 0.993 each step (a running "
    "estimate whose update was typed as a decay), so the standardised targets drift larger "
    "and larger; the loss climbs slowly with no jump and stays finite.",
)
def h407_freediving_ascent_drifting_target(ctx) -> None:
    gen = seeded(40702)
    model = _Reg(10, 48, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state = {"sd": 1.0}

    def alter(step, x, y):
        return x, y / state["sd"]

    def after(step):
        state["sd"] *= 0.993

    _loop(ctx, model, opt, _reg_batches(gen, 10, 64), 260, F.mse_loss, alter=alter, after=after)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 20]) for i in range(0, 80))
    m10 = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    jumps = max(b / max(a, 1e-12) for a, b in zip(m10[:-1], m10[1:], strict=False))
    ctx.check("last 20-step mean over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3 * low)
    ctx.check("no 10-step mean over 2x the one before", jumps < 2.0)
    ctx.check("losses finite", _finite(ls))


@scenario(
    "bell_founding_strike_note_relu_regressor",
    "SGD (Nesterov)",
    "gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Resumed at step 120 from a checkpoint of the fp16 run: the restored loss scale 256 is "
    "applied to the first backward of the fp32 run with no unscale; one gradient 256x on a "
    "clean batch with an ordinary logged loss, clipped, the run recovers.",
)
def h407_bell_founding_resume_loss_scale(ctx) -> None:
    gen = seeded(40703)
    model = _Reg(16, 64, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * 256.0 if step == 120 else loss

    _loop(ctx, model, opt, _reg_batches(gen, 16, 64), 220, F.mse_loss, backprop=backprop, clip=1.0)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient at step 120 over 50x the median before", g[120] > 50 * _median(g[60:120]))
    ctx.check("logged loss at 120 under 2x the mean before", ls[120] < 2 * _mean(ls[100:120]))
    ctx.check(
        "recovers: last 20 under 1.5x the 20 before onset",
        _mean(ls[-20:]) < 1.5 * _mean(ls[100:120]),
    )
    ctx.check("losses finite", _finite(ls))


class _CosineClassifier(nn.Module):
    def __init__(self, d: int, h: int, classes: int, scale: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, h)
        self.head = nn.Linear(h, classes, bias=False)
        self.scale = scale

    def features(self, x):
        return F.gelu(self.fc2(F.gelu(self.fc1(x))))

    def cosine(self, x):
        return F.normalize(self.features(x), dim=-1) @ F.normalize(self.head.weight, dim=-1).T

    def forward(self, x):
        return self.scale * self.cosine(x)


@scenario(
    "sepak_takraw_roll_spike_cosine_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A cosine classifier whose scale s is typed 640 for 16: the logits span +-640, the "
    "float32 softmax rounds the target probability to exactly 1.0 on most rows.",
)
def h407_sepak_takraw_cosine_scale_typo(ctx) -> None:
    gen = seeded(40704)
    model = _CosineClassifier(20, 64, 6, scale=640.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _cls_batches(gen, 20, 6, 64, spread=1.0)
    _loop(ctx, model, opt, batches, 160, F.cross_entropy, classifier=True)
    xs, ys = next(batches)
    with torch.no_grad():
        cos = model.cosine(xs)
    ctx.check("over half the rows collapsed at s=640", collapsed_fraction(640 * cos, ys) > 0.5)
    ctx.check(
        "under 5% collapsed at s=16 on the same cosines", collapsed_fraction(16 * cos, ys) < 0.05
    )
    ctx.check("losses finite", _finite(ctx.losses))


class _StrokeSetRegressor(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.embed = nn.Linear(d, h)
        self.pool = _MaskedMeanPool()
        self.head = nn.Linear(h, 1)

    def forward(self, batch):
        x, mask = batch
        return self.head(self.pool(F.relu(self.embed(x)), mask))


class _MaskedMeanPool(nn.Module):
    def forward(self, h, mask):
        # the clamp_min(1) on the count was dropped
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


@scenario(
    "sculling_stroke_masked_pool_regressor",
    "Adagrad",
    "nonfinite",
    where=("pool",),
    diverges=90,
    heldout=True,
    onset=90,
    note="A masked mean pool over a session's strokes divides by the count of valid strokes "
    "with its clamp_min(1) dropped; at step 90 a batch holds a session with no recorded "
    "strokes, 0/0 gives NaN and the loss is NaN.",
)
def h407_sculling_stroke_pool_zero_count(ctx) -> None:
    gen = seeded(40705)
    model = _StrokeSetRegressor(6, 32)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    w = torch.randn(6, generator=gen)

    def batches():
        step = 0
        while True:
            x = torch.randn(32, 12, 6, generator=gen)
            n = torch.randint(3, 13, (32,), generator=gen)
            if step == 90:
                n[5] = 0
            mask = (torch.arange(12)[None] < n[:, None]).float()
            y = ((x @ w).tanh() * mask).sum(1) / n.clamp_min(1)
            step += 1
            yield (x, mask), y[:, None]

    pool_out = {}
    model.pool.register_forward_hook(lambda m, i, o: pool_out.__setitem__("o", o.detach()))
    _loop(ctx, model, opt, batches(), 150, F.mse_loss)
    ls = ctx.losses
    first = next((i for i, v in enumerate(ls) if not math.isfinite(v)), None)
    ctx.check("loss non-finite first at step 90", first == 90)
    ctx.check("losses finite before 90", _finite(ls[:90]))
    ctx.check(
        "the pool's output is NaN at the empty session", bool(torch.isnan(pool_out["o"]).any())
    )


@scenario(
    "glacier_moulin_surge_silu_regressor",
    "SGD (momentum)",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="One logger's shard reaches step 120 with its water-level features and targets in "
    "millimetres instead of metres (x1000): loss and gradient jump, clipped, the run recovers.",
)
def h407_glacier_moulin_millimetre_shard(ctx) -> None:
    gen = seeded(40706)
    model = _Reg(8, 48, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :3] *= 1000.0
            return x, y * 1000.0
        return x, y

    _loop(ctx, model, opt, _reg_batches(gen, 8, 64), 220, F.mse_loss, alter=alter, clip=1.0)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("loss at 120 over 100x the mean before", ls[120] > 100 * _mean(ls[100:120]))
    ctx.check("gradient at 120 over 20x the median before", g[120] > 20 * _median(g[60:120]))
    ctx.check(
        "recovers: last 20 under 2x the 20 before onset", _mean(ls[-20:]) < 2 * _mean(ls[100:120])
    )
    ctx.check("losses finite", _finite(ls))


@scenario(
    "clog_dance_shuffle_two_group_classifier",
    "RMSprop",
    "update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Two param groups, trunk (fc1, fc2) and head; the trunk's lr is typed 1e-9 for 1e-3, "
    "so the trunk barely moves while it receives gradients; the head alone learns.",
)
def h407_clog_dance_trunk_lr_typo(ctx) -> None:
    gen = seeded(40707)
    model = _Reg(24, 64, nn.ReLU, out=8)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.RMSprop(
        [{"params": trunk, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-3}]
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    batches = _cls_batches(gen, 24, 8, 64, spread=1.5)
    _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    ctx.check("fc1 moved under 1e-5 of its norm", _rel_change(w1, model.fc1.weight) < 1e-5)
    ctx.check("fc2 moved under 1e-5 of its norm", _rel_change(w2, model.fc2.weight) < 1e-5)
    ctx.check("head moved over 5%", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("trunk received gradients", _median(ctx.grad_norms) > 1e-4)
    ctx.check("losses finite", _finite(ctx.losses))


class _ReluRNN(nn.Module):
    def __init__(self, d: int, h: int, gain: float) -> None:
        super().__init__()
        self.rnn = nn.RNN(d, h, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.eye(h))
            self.rnn.bias_hh_l0.zero_()
        self.head = nn.Linear(h, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _substorm_batches(gen, batch=32, t=30):
    while True:
        x = torch.randn(batch, t, 4, generator=gen) * 0.3
        y = x[:, :5, 0].sum(1, keepdim=True) + x[:, -5:, 1].sum(1, keepdim=True)
        yield x, y


@scenario(
    "aurora_substorm_relu_rnn",
    "NAdam",
    "exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="An IRNN whose recurrent identity init is scaled 1.25 (typed for 1.0) on 30 steps of "
    "magnetometer input: the gradient grows backwards through time, dL/dx at t=0 over 100x "
    "dL/dx at the last step; clipped.",
)
def h407_aurora_substorm_irnn_gain(ctx) -> None:
    gen = seeded(40708)
    model = _ReluRNN(4, 32, gain=1.25)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    batches = _substorm_batches(gen)
    x, y = next(batches)

    def through_time(m):
        xg = x.clone().requires_grad_(True)
        F.mse_loss(m(xg), y).backward()
        m.zero_grad(set_to_none=True)
        g = xg.grad
        return float(g[:, 0].norm() / g[:, -1].norm().clamp_min(1e-12))

    ratio = through_time(model)
    ref_ratio = through_time(_ReluRNN(4, 32, gain=1.0))
    _loop(ctx, model, opt, batches, 120, F.mse_loss, clip=1.0)
    ctx.check("dL/dx(t=0) over 100x dL/dx(t=29) at the start", ratio > 100)
    ctx.check("under 5x at the intended gain 1.0", ref_ratio < 5)
    ctx.check("median gradient over 10x the clip", _median(ctx.grad_norms) > 10)


class _Ranker(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, h)
        self.head = nn.Linear(h, 1)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x))))).squeeze(-1)


@scenario(
    "fencing_riposte_margin_ranker",
    "RAdam",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A pairwise ranker of ripostes trained with a margin hinge whose clamp was dropped: "
    "loss = (1 - (s_pos - s_neg)).mean() instead of relu(...); the head's scores grow without "
    "bound and the 'loss' goes far below zero.",
)
def h407_fencing_riposte_hinge_no_clamp(ctx) -> None:
    gen = seeded(40709)
    model = _Ranker(14, 48)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    w = torch.randn(14, generator=gen)

    def batches():
        while True:
            a = torch.randn(64, 14, generator=gen)
            b = torch.randn(64, 14, generator=gen)
            better = (a @ w > b @ w)[:, None]
            pos, neg = torch.where(better, a, b), torch.where(better, b, a)
            yield torch.cat([pos, neg]), torch.zeros(1)

    def loss_fn(s, _):
        pos, neg = s.chunk(2)
        return (1.0 - (pos - neg)).mean()

    probe = torch.randn(128, 14, generator=gen)
    with torch.no_grad():
        start = float(model(probe).abs().max())
    mids = []

    def after(step):
        if step in (150, 299):
            with torch.no_grad():
                mids.append(float(model(probe).abs().max()))

    _loop(ctx, model, opt, batches(), 300, loss_fn, after=after)
    ctx.check("max |score| over 20x its start", mids[-1] > 20 * start)
    ctx.check("still growing: step 299 over 1.3x step 150", mids[-1] > 1.3 * mids[0])
    ctx.check("'loss' below -10", ctx.losses[-1] < -10)


@scenario(
    "bolas_throw_range_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=100,
    note="StepLR(step_size=100) with gamma typed 10 for 0.1: at step 100 the rate goes from "
    "0.1 to 1.0, lr x top Hessian eigenvalue passes 2 and the loss blows up.",
)
def h407_bolas_steplr_gamma_typo(ctx) -> None:
    gen = seeded(40710)
    model = _Reg(8, 32, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=10.0)
    batches = _reg_batches(gen, 8, 128)
    px, py = next(batches)
    sharp = {}

    def before(step):
        if step in (90, 100):
            sharp[step] = opt.param_groups[0]["lr"] * _sharpness(
                model, lambda m: F.mse_loss(m(px), py)
            )

    _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at step 90", sharp.get(90, 9) < 2)
    ctx.check("lr x sharpness over 2 at step 100", sharp.get(100, 0) > 2)
    blown = (not _finite(ls)) or max(ls[100:]) > 100 * _mean(ls[80:100])
    ctx.check("loss blows up after 100", blown)


# -- healthy controls -----------------------------------------------------------------------------

_REEL = "abcdefgABCDEFG|:2/ "


def _reel_batches(gen: torch.Generator, batch: int = 16, length: int = 48):
    """Generated reel tunes: bars of eight notes drawn from a few motifs, transposed, with
    repeats and bar lines; characters index ``_REEL``."""
    notes = "abcdefgABCDEFG"
    motifs = [[0, 2, 4, 2], [4, 3, 2, 1], [0, 0, 4, 4], [5, 4, 2, 0], [2, 4, 6, 4]]

    def tune(n: int) -> str:
        out = "|:"
        while len(out) < n + 1:
            base = int(torch.randint(0, 7, (1,), generator=gen))
            for _ in range(2):
                m = motifs[int(torch.randint(0, len(motifs), (1,), generator=gen))]
                out += "".join(notes[(base + k) % 14] for k in m)
            out += "|" if torch.rand(1, generator=gen) < 0.8 else ":|"
        return out[: n + 1]

    while True:
        rows = [[_REEL.index(c) for c in tune(length)] for _ in range(batch)]
        win = torch.tensor(rows)
        yield win[:, :-1], win[:, 1:].reshape(-1)


class _MixtureOfSoftmaxes(nn.Module):
    """Yang et al. 2018: K softmaxes over a shared decoder, mixed by a learned prior; returns
    log-probabilities."""

    def __init__(self, dim: int, vocab: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.prior = nn.Linear(dim, k)
        self.latent = nn.Linear(dim, k * dim)
        self.decoder = nn.Linear(dim, vocab)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, d = h.shape
        prior = F.log_softmax(self.prior(h), dim=-1)
        z = torch.tanh(self.latent(h)).reshape(n, self.k, d)
        comp = F.log_softmax(self.decoder(z), dim=-1)
        return torch.logsumexp(prior[..., None] + comp, dim=1)


class _ReelLM(nn.Module):
    def __init__(self, vocab: int, dim: int = 48, k: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.mos = _MixtureOfSoftmaxes(dim, vocab, k)

    def forward(self, idx):
        h, _ = self.gru(self.embed(idx))
        return self.mos(h.reshape(-1, h.shape[-1]))


def _smoothed_nll(logp: torch.Tensor, y: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    nll = F.nll_loss(logp, y)
    return (1 - eps) * nll + eps * (-logp.mean(-1)).mean()


@scenario(
    "ceilidh_reel_mixture_softmax_lm",
    "AdamW",
    "healthy",
    heldout=True,
    note="A GRU character LM of generated reel tunes with a hand-written mixture-of-softmaxes "
    "output (K=3), label smoothing 0.1, AdamW with a no-decay group for biases and "
    "embeddings, linear warm-up then cosine, fp32, clipping.",
)
def h407_ceilidh_reel_mos_lm(ctx) -> None:
    gen = seeded(40711)
    model = _ReelLM(len(_REEL))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm)
            * (0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)) * 0.9 + 0.1)
        ),
    )
    _loop(
        ctx,
        model,
        opt,
        _reel_batches(gen),
        steps,
        _smoothed_nll,
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell below 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("losses finite", _finite(ctx.losses))


class _BellConv(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 5, padding=2)
        self.conv2 = nn.Conv1d(12, 24, 5, padding=2)
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.max_pool1d(h, 2)
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _bell_batches(gen: torch.Generator, classes: int = 6, batch: int = 48, t: int = 64):
    """Strike envelopes of a ring of bells: class = which bell leads (its partial sets the tone)."""
    tt = torch.arange(t).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.07 * y.float()
        decay = torch.exp(-tt / 30.0)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freq[:, None] * tt + phase) * decay + 0.3 * torch.randn(
            batch, t, generator=gen
        )
        yield x, y


@scenario(
    "handbell_change_ringing_relu_conv1d_classifier",
    "SGD (momentum)",
    "healthy",
    heldout=True,
    note="A ReLU Conv1d classifier of handbell strike envelopes: SGD momentum 0.9 with weight "
    "decay under OneCycleLR (max_lr 0.1), clipping at 1.0, noisy signals.",
)
def h407_handbell_change_ringing_onecycle(ctx) -> None:
    gen = seeded(40712)
    model = _BellConv(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _bell_batches(gen),
        steps,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell below 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "sandcastle_turret_height_huber_regressor",
    "ASGD",
    "healthy",
    heldout=True,
    note="A SiLU regressor of turret height from sand moisture and grain features with noisy "
    "targets (heavy-tailed noise), Huber loss, ASGD, accumulation over 2 and ReduceLROnPlateau "
    "on a held-out batch.",
)
def h407_sandcastle_turret_asgd_plateau(ctx) -> None:
    gen = seeded(40713)
    model = _Reg(10, 48, nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=100)
    batches = _reg_batches(gen, 10, 32, noise=0.2)
    hx, hy = next(batches)
    plateau_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=5)

    def plateau(step):
        if step % 10 == 9:
            with torch.no_grad():
                plateau_sched.step(float(F.huber_loss(model(hx), hy)))

    _loop(ctx, model, opt, batches, 200, F.huber_loss, plateau=plateau, accumulate=2)
    ctx.check("loss fell below 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("losses finite", _finite(ctx.losses))
