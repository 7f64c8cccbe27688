"""Held-out set 165 (``h165_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before, with hand-written transformers (a hand softmax over q.k
plus an ALiBi bias, ``scaled_dot_product_attention`` and ``nn.MultiheadAttention``), two
Perceiver-style models (a learnt latent array cross-attending to a set), a diagonal linear
state-space recurrence and a selective-scan (Mamba-like) recurrence written by hand, an
angular-loss direction regressor, a Gaussian-likelihood regressor, a 1-D conv net, MLPs, and
one Hugging Face BART built from a tiny config.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
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
    alter=None,
    clip=None,
    clip_value=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    scale_loss=None,
    after=None,
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``scale_loss(step,
    loss)`` changes the loss that is back-propagated, ``after(step)`` runs after the update."""
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
            loss = loss_fn(out.float(), y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            back = loss if scale_loss is None else scale_loss(step, loss)
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
            shown += float(loss.detach())
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(shown)
            else:
                sched.step()
        if after is not None:
            after(step)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


# -- maypole dancing: an ALiBi transformer whose 1/sqrt(d) landed on the bias -------------------


class AlibiAttention(nn.Module):
    """Bidirectional multi-head attention by hand: softmax(scale * q.k + alibi) v, with ALiBi's
    per-head slopes times -|i - j|. ``scale_on_bias`` is the refactoring bug: the scale
    multiplies the ALiBi term instead of the q.k scores. Records the largest content logit the
    softmax saw."""

    def __init__(self, dim, heads, length, scale_on_bias=False):
        super().__init__()
        self.heads = heads
        self.hd = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])
        pos = torch.arange(length)
        dist = (pos[None, :] - pos[:, None]).abs().float()
        self.register_buffer("alibi", -slopes[:, None, None] * dist)
        self.scale_on_bias = scale_on_bias
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, self.hd).transpose(1, 2) for z in (q, k, v))
        scale = 1.0 / math.sqrt(self.hd)
        qk = q @ k.transpose(-1, -2)
        if self.scale_on_bias:
            content = qk
            scores = qk + scale * self.alibi
        else:
            content = scale * qk
            scores = content + self.alibi
        self.last_max = float(content.detach().abs().amax())
        att = torch.softmax(scores, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class MaypoleRibbonNet(nn.Module):
    """Reads 16 dancers' moves (one of 6 step codes each, in circle order from the lead) and
    names which of four ribbon plaits (spider's web, barber's pole, gypsy's tent, single
    plait) they weave; classifies from the lead dancer's position."""

    def __init__(self, moves=6, dim=32, length=16, heads=2, patterns=4, scale_on_bias=False):
        super().__init__()
        self.move = nn.Embedding(moves, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = AlibiAttention(dim, heads, length, scale_on_bias)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, patterns)

    def forward(self, x):
        h = self.move(x)
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h)[:, 0])


def _maypole(gen, batch, moves=6, length=16):
    """The plait is set by how many other dancers repeat the lead dancer's move (0, 1, 2 or
    3 and more)."""
    while True:
        x = torch.randint(0, moves, (batch, length), generator=gen)
        yield x, ((x == x[:, :1]).sum(1) - 1).clamp(max=3)


@scenario(
    family="maypole_ribbon_alibi_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with ALiBi and a hand softmax over q.k. A refactor that moved "
    "the ALiBi bias into the score computation multiplied the 1/sqrt(head_dim) onto the bias "
    "instead of the q.k product, so the content logits go in unscaled (4x too large at "
    "head_dim 16); with AdamW at lr 1.5e-2 and weight decay 0 the q.k logits the softmax "
    "sees grow about 10x, past 40.",
)
def h165_maypole_alibi_scale_on_bias(ctx: Context) -> None:
    gen = seeded(16501)
    model = MaypoleRibbonNet(scale_on_bias=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-2, weight_decay=0.0)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _maypole(gen, 64),
        300,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 8x from the first step", max(seen[-50:]) > 8 * seen[0])
    ctx.check("attention logits above 40", max(seen[-50:]) > 40)


# -- kite fighting: hand label smoothing with a confidence above one ----------------------------


class SdpaBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.ln2(x))


class KiteManoeuvreNet(nn.Module):
    """Reads 20 line-tension/bearing readings of a fighter kite (Indian patang) and names the
    manoeuvre: dive, loop, pull cut, release cut or hold."""

    def __init__(self, feats=2, dim=32, length=20, heads=4, classes=5):
        super().__init__()
        self.embed = nn.Linear(feats, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.blocks = nn.ModuleList([SdpaBlock(dim, heads), SdpaBlock(dim, heads)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x) + self.pos
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln_f(h).mean(1))


def _kite(gen, batch, length=20, classes=5):
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 1.0 + y.float()[:, None]
        tension = torch.sin(2 * math.pi * freq * t) + 0.5 * torch.randn(
            batch, length, generator=gen
        )
        bearing = (y.float()[:, None] - 2) * t + 0.5 * torch.randn(batch, length, generator=gen)
        yield torch.stack([tension, bearing], -1), y


def _smoothed_ce(confidence):
    def loss(logits, y):
        k = logits.shape[-1]
        q = torch.full_like(logits, (1.0 - confidence) / (k - 1))
        q.scatter_(1, y[:, None], confidence)
        return -(q * F.log_softmax(logits, -1)).sum(-1).mean()

    return loss


@scenario(
    family="kite_fighting_manoeuvre_sdpa_transformer",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A two-block transformer through scaled_dot_product_attention, trained with a "
    "hand-written label-smoothing loss whose 'confidence' was typed 1.1 for 0.9: the "
    "off-class targets are -0.025, negative, so the loss has no floor and keeps rewarding "
    "pushing the wrong classes' log-probabilities to minus infinity. With Adam at lr 3e-3 the "
    "head's logit norm grows more than 20x and is still growing while the loss runs negative.",
)
def h165_kite_smoothing_confidence_typo(ctx: Context) -> None:
    gen = seeded(16502)
    model = KiteManoeuvreNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    norms = []
    _train(
        ctx,
        model,
        opt,
        _kite(gen, 64),
        200,
        _smoothed_ce(1.1),
        classifier=True,
        watch=lambda s, o, x, y: norms.append(float(o.detach().norm(dim=-1).mean())),
    )
    ctx.check("logit norm grew 20x", norms[-1] > 20 * _mean(norms[:5]))
    ctx.check("logit norm still growing", norms[-1] > 1.2 * norms[-50])
    ctx.check("loss ran negative", ctx.losses[-1] < 0)


# -- oud maqam: the distillation temperature left in the student's forward ---------------------


class OudMaqamNet(nn.Module):
    """Names the maqam (rast, bayati, hijaz, saba, nahawand, kurd) of a 24-note oud phrase
    (quarter-tone pitch classes, 24 of them) with an nn.MultiheadAttention encoder."""

    def __init__(self, pitches=24, dim=32, length=24, heads=4, maqams=6, temperature=1.0):
        super().__init__()
        self.note = nn.Embedding(pitches, dim)
        self.pos = nn.Embedding(length, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, maqams)
        self.temperature = temperature

    def forward(self, x):
        h = self.note(x) + self.pos(torch.arange(x.shape[1]))
        a = self.ln1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.ff(self.ln2(h))
        return self.head(h.mean(1)) / self.temperature


def _maqams(gen, batch, pitches=24, length=24, maqams=6):
    scales = torch.stack(
        [
            torch.randperm(pitches, generator=torch.Generator().manual_seed(40 + m))[:7]
            for m in range(maqams)
        ]
    )
    while True:
        y = torch.randint(0, maqams, (batch,), generator=gen)
        pick = torch.randint(0, 7, (batch, length), generator=gen)
        x = scales[y].gather(1, pick)
        stray = torch.rand(batch, length, generator=gen) < 0.2
        x = torch.where(stray, torch.randint(0, pitches, (batch, length), generator=gen), x)
        yield x, y


@scenario(
    family="oud_maqam_mha_transformer",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="An nn.MultiheadAttention encoder classifier. The student was copied from a "
    "distillation script and kept 'logits / self.temperature' in its forward, with the "
    "config's temperature 0.01 (meant for sharpening the teacher's pseudo-labels): every "
    "logit is multiplied by 100, and as NAdam (lr 1e-3) separates the maqams the float32 "
    "softmax rounds most targets' probabilities to exactly 1.0.",
)
def h165_oud_maqam_student_temperature(ctx: Context) -> None:
    gen = seeded(16503)
    model = OudMaqamNet(temperature=0.01)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    collapsed = []
    _train(
        ctx,
        model,
        opt,
        _maqams(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: collapsed.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("half the targets' probabilities are exactly 1.0", _mean(collapsed[-20:]) > 0.5)
    ctx.check("few were at the start", _mean(collapsed[:3]) < 0.2)


# -- clay pigeon trap: MultiStepLR with gamma 10 for 0.1 -----------------------------------------


class TrapAngleNet(nn.Module):
    """Regresses the launch angle a trap machine must be set to (standardised) from six
    readings (wind speed and bearing, spring tension, arm length, target mass, layout code)."""

    def __init__(self, feats=6, hidden=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(feats, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.body(x)).squeeze(-1)


def _trap(gen, batch, feats=6):
    w = torch.randn(feats, generator=torch.Generator().manual_seed(5))
    while True:
        x = torch.randn(batch, feats, generator=gen)
        y = (
            torch.tanh(x @ w / 2) * 1.5
            + 0.3 * torch.sin(3 * x[:, 0])
            + 0.05 * torch.randn(batch, generator=gen)
        )
        yield x, y


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="clay_pigeon_trap_angle_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=80,
    note="A tanh MLP regressor on MSE with plain SGD at lr 0.05 and a MultiStepLR meant to "
    "decay by gamma 0.1 at step 80; gamma was typed 10. At step 80 the learning rate jumps to "
    "0.5, and lr x sharpness (the top Hessian eigenvalue, measured by power iteration at the "
    "milestone) goes from under 2 to over 2: the loss, which had been falling, oscillates "
    "and blows up.",
)
def h165_clay_pigeon_multistep_gamma(ctx: Context) -> None:
    gen = seeded(16504)
    model = TrapAngleNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[80], gamma=10.0)
    probe = next(_trap(torch.Generator().manual_seed(99), 256))
    lam = {}
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step == 80:
            lam[80] = _sharpness(model, F.mse_loss, *probe)

    _train(ctx, model, opt, _trap(gen, 64), 160, F.mse_loss, before=before, sched=sched)
    losses = ctx.losses
    ctx.check("loss fell before the milestone", _mean(losses[70:80]) < 0.5 * _mean(losses[:5]))
    ctx.check("lr x sharpness under 2 before the jump", lrs[79] * lam[80] < 2)
    ctx.check("lr x sharpness over 2 after the jump", lrs[80] * lam[80] > 2)
    after = [v if math.isfinite(v) else 1e30 for v in losses[80:]]
    ctx.check("loss blew up 100x after the jump", max(after) > 100 * _mean(losses[70:80]))


# -- lava lake level: a diagonal SSM whose decays lost their parameterisation ------------------


class DiagonalSSM(nn.Module):
    """A diagonal linear state-space layer: h_t = a * h_{t-1} + B x_t, y_t = C h_t. The
    decays ``a`` are a raw parameter (initialised in [0.9, 0.99]) instead of exp(-exp(.)),
    which would have kept them below 1."""

    def __init__(self, dim, state):
        super().__init__()
        self.a = nn.Parameter(torch.linspace(0.9, 0.99, state))
        self.B = nn.Linear(dim, state, bias=False)
        self.C = nn.Linear(state, dim, bias=False)

    def forward(self, x):
        u = self.B(x)
        h = torch.zeros(x.shape[0], u.shape[-1])
        ys = []
        for t in range(x.shape[1]):
            h = self.a * h + u[:, t]
            ys.append(h)
        return self.C(torch.stack(ys, 1))


class LavaLakeNet(nn.Module):
    """Forecasts a lava lake's level change (standardised) over a 96-sample window of magma
    flux, SO2 and tilt readings: the level integrates the flux."""

    def __init__(self, feats=3, dim=16, state=16):
        super().__init__()
        self.inp = nn.Linear(feats, dim)
        self.ssm = DiagonalSSM(dim, state)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        return self.head(self.ssm(self.inp(x))[:, -1]).squeeze(-1)


def _lava(gen, batch, length=96):
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        yield x, x[:, :, 0].sum(1) / math.sqrt(length) + 0.3 * x[:, -1, 1]


@scenario(
    family="lava_lake_level_diag_ssm",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("ssm",),
    diverges="auto",
    heldout=True,
    onset=64,
    note="A hand-written diagonal state-space layer over 96 readings, MSE, SGD momentum 0.9 at "
    "lr 7e-4. The decays were made a raw parameter initialised in [0.9, 0.99], dropping the "
    "exp(-exp(.)) parameterisation that keeps them below 1 'for simplicity'. The target "
    "integrates the flux, so the decays are pulled to 1 and momentum carries the largest "
    "past it again and again (first at step 5); its excursion from step 64 lasts long "
    "enough for the state and the gradients to grow through time (a^96): the gradient norm "
    "grows over 100x and the loss blows up (NaN at step 75).",
)
def h165_lava_lake_ssm_raw_decay(ctx: Context) -> None:
    gen = seeded(16505)
    model = LavaLakeNet()
    opt = torch.optim.SGD(model.parameters(), lr=7e-4, momentum=0.9)
    amax = []
    _train(
        ctx,
        model,
        opt,
        _lava(gen, 32),
        200,
        F.mse_loss,
        after=lambda s: amax.append(float(model.ssm.a.detach().max())),
    )
    bad = _first_bad(ctx.losses)
    ctx.check(
        "a decay was past 1 in the 12 steps before the blow-up",
        bad is not None and max(amax[bad - 12 : bad]) > 1,
    )
    top = max(v if math.isfinite(v) else 1e30 for v in ctx.losses)
    ctx.check("loss blew up", bad is not None or top > 1e3 * _mean(ctx.losses[:5]))
    gn = [g if math.isfinite(g) else 1e30 for g in ctx.grad_norms]
    ctx.check("gradient norm grew 100x", max(gn) > 100 * _median(gn[:10]))


# -- bandsaw lumber grading: RMSprop at SGD's learning rate -------------------------------------


class LumberGradeNet(nn.Module):
    """Grades a sawn board (FAS, select, No.1, No.2, No.3 common) from 20 scanner features
    (knot counts and sizes, wane, checks, grain slope), all non-negative."""

    def __init__(self, feats=20, hidden=64, grades=5):
        super().__init__()
        self.fc1 = nn.Linear(feats, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(hidden, grades)

    def forward(self, x):
        return self.head(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


def _boards(gen, batch, feats=20, grades=5):
    w = torch.rand(feats, generator=torch.Generator().manual_seed(3))
    while True:
        x = torch.rand(batch, feats, generator=gen) * 2
        s = x @ w
        y = torch.bucketize(s, torch.tensor([8.0, 9.0, 10.0, 11.0])).clamp(max=grades - 1)
        yield x, y


@scenario(
    family="bandsaw_lumber_grade_relu_mlp",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "relu2"),
    diverges=None,
    heldout=True,
    note="A two-hidden-layer ReLU MLP on non-negative scanner features. The optimizer was "
    "switched from SGD to RMSprop and the config's lr 0.1 kept: RMSprop's first steps move "
    "every weight by about 0.1/sqrt(1 - alpha), driving the second layer's pre-activations "
    "negative for every board; most of its units die and never come back, and the loss stalls "
    "well above what the model reaches at a sane rate.",
)
def h165_bandsaw_rmsprop_sgd_lr(ctx: Context) -> None:
    gen = seeded(16506)
    model = LumberGradeNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.1)
    probe = next(_boards(torch.Generator().manual_seed(97), 512))[0]

    def dead():
        with torch.no_grad():
            return dead_fraction(model.fc2(model.relu1(model.fc1(probe))))

    start = dead()
    _train(ctx, model, opt, _boards(gen, 64), 200, F.cross_entropy, classifier=True)
    end = dead()
    ctx.check("few dead units at the start", start < 0.1)
    ctx.check("over half of fc2's units dead at the end", end > 0.5)
    ctx.check("loss finite", _finite(ctx.losses))


# -- thatching: a Perceiver whose cross-attention was never unfrozen ---------------------------


class CrossAttend(nn.Module):
    """Latents attend to the inputs through scaled_dot_product_attention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, lat, x):
        b, n, d = lat.shape
        q = self.q(self.ln_q(lat)).reshape(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(self.ln_kv(x)).split(d, dim=-1)
        k, v = (z.reshape(b, x.shape[1], self.heads, -1).transpose(1, 2) for z in (k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return lat + self.proj(y.transpose(1, 2).reshape(b, n, d))


class ThatchBundleNet(nn.Module):
    """Perceiver-style: a learnt latent array cross-attends to a bundle of 24 water reeds
    (length, butt diameter, moisture, straightness), then latent self-attention; regresses the
    bundle's thatch-life score (standardised)."""

    def __init__(self, feats=4, dim=32, latents=8, heads=2):
        super().__init__()
        self.embed = nn.Linear(feats, dim)
        self.latents = nn.Parameter(0.02 * torch.randn(latents, dim))
        self.cross = CrossAttend(dim, heads)
        self.ln = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        lat = self.cross(self.latents.expand(x.shape[0], -1, -1), self.embed(x))
        a = self.ln(lat)
        lat = lat + self.self_attn(a, a, a, need_weights=False)[0]
        lat = lat + self.ff(self.ln_ff(lat))
        return self.head(lat.mean(1)).squeeze(-1)


def _reeds(gen, batch, reeds=24):
    while True:
        x = torch.randn(batch, reeds, 4, generator=gen)
        good = (x[:, :, 0] > 0) & (x[:, :, 2] < 0.5)
        y = (
            good.float().mean(1) * 4
            - 1
            + 0.5 * x[:, :, 3].amax(1)
            + 0.05 * torch.randn(batch, generator=gen)
        )
        yield x, y


def _decay_groups(model, lr, wd, extra=None):
    """AdamW groups: weight decay on matrices only, none on norms, biases and the latents."""
    extra = extra or {}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "ln" in name or name == "latents" else decay).append(p)
    return [
        {"params": decay, "lr": lr, "weight_decay": wd, **extra},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, **extra},
    ]


@scenario(
    family="thatching_reed_bundle_perceiver",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("cross", "cross.q", "cross.kv", "cross.proj"),
    diverges=None,
    heldout=True,
    note="A Perceiver-style regressor (learnt latents cross-attending to the reeds through "
    "scaled_dot_product_attention, then latent self-attention), AdamW at lr 2e-3 with param "
    "groups: weight decay 0.05 on matrices, none on norms, biases and latents. The recipe "
    "freezes the cross-attention (its own groups at lr 0) for a 20-step warm-up and a callback "
    "unfreezes it 'on_step == 20', but the callback was wired to the epoch counter, so the "
    "cross-attention stays at lr 0 for the whole run: its weights never move while the rest "
    "trains.",
)
def h165_thatching_perceiver_never_unfrozen(ctx: Context) -> None:
    gen = seeded(16507)
    model = ThatchBundleNet()
    cross = {id(p) for p in model.cross.parameters()}
    groups = []
    for g in _decay_groups(model, 2e-3, 0.05):
        groups.append({**g, "params": [p for p in g["params"] if id(p) not in cross]})
        groups.append({**g, "params": [p for p in g["params"] if id(p) in cross], "lr": 0.0})
    opt = torch.optim.AdamW(groups)
    w0 = model.cross.kv.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    epoch = {"n": 0}

    def before(step):
        if epoch["n"] == 20:  # the bug: meant to be 'step == 20'
            for g in opt.param_groups:
                g["lr"] = 2e-3
        epoch["n"] = step // 1000

    _train(ctx, model, opt, _reeds(gen, 32), 200, F.mse_loss, before=before)
    moved_cross = float((model.cross.kv.weight.detach() - w0).norm() / w0.norm())
    moved_head = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check("cross-attention weights never moved", moved_cross < 1e-7)
    ctx.check("the head moved over 10%", moved_head > 0.1)
    ctx.check("loss finite", _finite(ctx.losses))


# -- letterpress ink density: one shard in raw scanner counts -----------------------------------


class ImpressionNet(nn.Module):
    """Regresses a letterpress impression's depth (standardised) from 32 ink-density readings
    along the printed line with a small 1-D conv net."""

    def __init__(self, ch=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, ch, 5, padding=2)
        self.conv2 = nn.Conv1d(ch, ch, 5, padding=2)
        self.head = nn.Linear(ch, 1)

    def forward(self, x):
        h = F.gelu(self.conv1(x[:, None]))
        h = F.gelu(self.conv2(h))
        return self.head(h.mean(-1)).squeeze(-1)


def _ink(gen, batch, n=32):
    while True:
        x = torch.rand(batch, n, generator=gen)
        y = (
            4 * (x.mean(1) - 0.5)
            + 2 * (x[:, :16].mean(1) - x[:, 16:].mean(1))
            + 0.1 * torch.randn(batch, generator=gen)
        )
        yield x, y


@scenario(
    family="letterpress_ink_density_conv1d",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A 1-D conv regressor of impression depth on Huber loss, SGD Nesterov (lr 0.05, "
    "momentum 0.9) with clip_grad_value_(1.0). Densities are meant to be scaled to [0, 1], "
    "but one shard, from a second scanner, was exported in raw 16-bit counts: the batch at "
    "step 120 has inputs about 65535x the others: its loss jumps and its gradient norm "
    "(before clipping) is over 20x the usual; clipping each element at 1 bounds the update, "
    "and the run recovers.",
)
def h165_letterpress_raw_count_shard(ctx: Context) -> None:
    gen = seeded(16508)
    model = ImpressionNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    scale = {}

    def alter(step, x, y):
        if step == 120:
            x = x * 65535.0
        scale[step] = float(x.abs().mean())
        return x, y

    _train(ctx, model, opt, _ink(gen, 64), 200, F.huber_loss, alter=alter, clip_value=1.0)
    gn = ctx.grad_norms
    ctx.check(
        "loss fell before the bad shard", _mean(ctx.losses[110:120]) < 0.7 * _mean(ctx.losses[:5])
    )
    ctx.check(
        "bad batch 1000x the usual inputs",
        scale[120] > 1000 * _median([scale[s] for s in range(100, 120)]),
    )
    ctx.check("gradient norm 20x the usual at step 120", gn[120] > 20 * _median(gn[100:120]))
    ctx.check("loss jumped at step 120", ctx.losses[120] > 20 * _median(ctx.losses[100:120]))


# -- skittles: a one-step sum-reduced loss on the epoch's first step ----------------------------


class SkittlesNet(nn.Module):
    """Predicts which of the nine skittles fall (multi-label) from ten readings of the throw
    (cheese weight, speed, spin, release point, alley lane, ...)."""

    def __init__(self, feats=10, hidden=64, pins=9):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(feats, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, pins)

    def forward(self, x):
        return self.head(self.body(x))


def _throws(gen, batch, feats=10, pins=9):
    w = torch.randn(feats, pins, generator=torch.Generator().manual_seed(8))
    while True:
        x = torch.randn(batch, feats, generator=gen)
        p = torch.sigmoid(x @ w)
        yield x, (torch.rand(batch, pins, generator=gen) < p).float()


@scenario(
    family="skittles_pin_fall_multilabel_mlp",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="A multi-label SiLU MLP on BCE with gradient accumulation over 4 micro-batches, SGD "
    "momentum 0.9 at lr 0.05. On the first step of epoch 2 (step 100) the loop takes its "
    "'resume' branch, which builds the loss with reduction='sum' (copied from the evaluation "
    "code) instead of 'mean': for one step the gradient is 576x (64 throws x 9 pins) what it "
    "should be, with nothing wrong in the data. The loss shown is the usual mean.",
)
def h165_skittles_resume_sum_reduction(ctx: Context) -> None:
    gen = seeded(16509)
    model = SkittlesNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def scale_loss(step, loss):
        return loss * 64 * 9 if step == 100 else loss

    _train(
        ctx,
        model,
        opt,
        _throws(gen, 64),
        180,
        F.binary_cross_entropy_with_logits,
        accumulate=4,
        scale_loss=scale_loss,
    )
    gn = ctx.grad_norms
    ctx.check("gradient norm 50x the usual at step 100", gn[100] > 50 * _median(gn[80:100]))
    ctx.check(
        "the batch's own loss was ordinary", ctx.losses[100] < 1.5 * _median(ctx.losses[80:100])
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- sirocco direction: an angular loss with acos and no clamp ----------------------------------


class SiroccoDirectionNet(nn.Module):
    """Predicts the direction the sirocco will blow from in an hour (as a 2-D vector) from
    eight readings (pressure gradient over the Mediterranean, dust load, humidity, hour, ...)."""

    def __init__(self, feats=8, hidden=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(feats, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.body(x))


def _direction_loss(phase):
    """'1 - cos' in the first phase; then the angle itself, acos of the cosine, computed by
    hand with no clamp to [-1, 1]. Records the batch's largest |cosine|."""

    def loss(p, y):
        cos = (p * y).sum(-1) / (p.norm(dim=-1) * y.norm(dim=-1))
        loss.last_max = float(cos.detach().abs().max())
        return torch.acos(cos).mean() if phase["angle"] else (1 - cos).mean()

    loss.last_max = 0.0
    return loss


def _winds(gen, batch, feats=8):
    w = torch.randn(feats, generator=torch.Generator().manual_seed(6))
    while True:
        x = torch.randn(batch, feats, generator=gen)
        theta = 2.5 + 0.5 * (x @ w) / math.sqrt(feats)
        yield x, torch.stack([torch.cos(theta), torch.sin(theta)], -1)


@scenario(
    family="sirocco_wind_direction_angular_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=(),
    diverges=84,
    heldout=True,
    onset=80,
    note="A tanh MLP predicting the wind direction as a 2-D vector, RAdam at lr 1e-2. The "
    "recipe trains on 1 - cos for 80 steps, then switches to the angular error itself, "
    "acos(p.y / (|p||y|)), written by hand without a clamp to [-1, 1]. Within a few steps "
    "one sample's cosine rounds to exactly 1.0 in float32, where acos has an infinite "
    "derivative: the gradient is NaN, the update writes NaN into the weights and the next "
    "loss is NaN.",
)
def h165_sirocco_acos_no_clamp(ctx: Context) -> None:
    gen = seeded(16510)
    model = SiroccoDirectionNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    phase = {"angle": False}
    loss_fn = _direction_loss(phase)
    cmax = []

    def before(step):
        phase["angle"] = step >= 80

    _train(
        ctx,
        model,
        opt,
        _winds(gen, 32),
        300,
        loss_fn,
        before=before,
        watch=lambda s, o, x, y: cmax.append(loss_fn.last_max),
    )
    bad = _first_bad(ctx.losses)
    gbad = _first_bad(ctx.grad_norms)
    ctx.check("loss went NaN", bad is not None)
    ctx.check(
        "the gradient went NaN first, on a step whose loss was finite",
        gbad is not None and bad is not None and gbad < bad and math.isfinite(ctx.losses[gbad]),
    )
    ctx.check("a |cosine| reached 1.0 on that step", gbad is not None and cmax[gbad] >= 1.0)
    ctx.check(
        "finite through the first phase", _finite(ctx.losses[:80]) and _finite(ctx.grad_norms[:80])
    )


# -- horology: a weight penalty added with the wrong sign --------------------------------------


class BalanceWheelNet(nn.Module):
    """Regresses a mechanical watch's daily rate error (standardised) from eight timegrapher
    readings (amplitude in six positions, beat error, temperature)."""

    def __init__(self, feats=8, hidden=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(feats, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(-1)


def _timegrapher(gen, batch, feats=8):
    w = torch.randn(feats, generator=torch.Generator().manual_seed(9))
    while True:
        x = torch.randn(batch, feats, generator=gen)
        y = torch.sin(x @ w / 3) + 0.3 * x[:, 1] * x[:, 2] + 0.1 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="horologist_balance_wheel_rate_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP on MSE with Adamax at lr 1e-2 and a hand-written L2 penalty, ported from "
    "a MAP formulation where it is written as log-prior 'loss = nll + log_prior' with "
    "log_prior = -wd * ||w||^2: the sign ended up as 'loss = mse - wd * ||w||^2' (wd 3e-2). "
    "The loss falls for a while, then the penalty rewards ever larger weights: the weight "
    "norm grows and the MSE climbs slowly, with no spike and nothing non-finite.",
)
def h165_horology_l2_sign(ctx: Context) -> None:
    gen = seeded(16511)
    model = BalanceWheelNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    norms = []

    def scale_loss(step, loss):
        sq = sum((p * p).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - 3e-2 * sq

    def after(step):
        with torch.no_grad():
            norms.append(float(torch.sqrt(sum((p * p).sum() for p in model.parameters()))))

    _train(
        ctx, model, opt, _timegrapher(gen, 64), 300, F.mse_loss, scale_loss=scale_loss, after=after
    )
    ls = ctx.losses
    best = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10, 10))
    ctx.check("loss finite", _finite(ls))
    ctx.check("loss climbed 3x above its best", _mean(ls[-10:]) > 3 * best)
    ctx.check("weight norm grew 3x", norms[-1] > 3 * norms[0])


# -- steam locomotive boiler: a log-sum-exp pooling without its max subtraction, in float16 ------


class LogSumExpPool(nn.Module):
    """Soft maximum over time written by hand: log(sum_t exp(h_t)), without subtracting the
    maximum first; under autocast the exp runs in float16. Records whether it overflowed."""

    def __init__(self):
        super().__init__()
        self.overflowed = False
        self.last_max = 0.0

    def forward(self, h):
        total = torch.exp(h).sum(1)
        self.overflowed = bool(torch.isinf(total.detach()).any())
        self.last_max = float(h.detach().abs().amax())
        return torch.log(total)


class BoilerPeakNet(nn.Module):
    """Predicts the peak boiler pressure (bar, as logged: about 10 to 17) over the next climb
    from 24 readings of a steam locomotive's footplate (boiler pressure in bar, water level,
    regulator, cut-off, all per minute): per-minute projection, soft-max pooling, head."""

    def __init__(self, feats=4, hidden=16):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(feats, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.pool = LogSumExpPool()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.pool(self.proj(x))).squeeze(-1)


def _footplate(gen, batch, length=24):
    while True:
        base = 9 + 3 * torch.rand(batch, 1, generator=gen)
        climb = torch.rand(batch, 1, generator=gen)
        pressure = (
            base
            + climb * torch.linspace(0, 4, length)
            + 0.2 * torch.randn(batch, length, generator=gen)
        )
        other = torch.randn(batch, length, 3, generator=gen)
        y = pressure.amax(1) + 0.5 * climb[:, 0] + 0.5 * other[:, -1, 0]
        yield torch.cat([pressure[..., None], other], -1), y


@scenario(
    family="steam_locomotive_boiler_peak_lse_fp16",
    optimizer="Adam",
    cause="amp_overflow",
    where=("pool",),
    diverges=27,
    heldout=True,
    onset=27,
    note="A per-minute MLP with a hand-written log-sum-exp pooling over time, trained under "
    "fp16 autocast with a GradScaler, Adam at lr 1e-2, on targets in bar. The pooling "
    "computes log(sum(exp(h))) without subtracting the maximum first ('the features are "
    "small'); as the projection grows to reach pressures of 10 to 17 bar, h passes about 8 "
    "and the sum of exp(h) over 24 minutes overflows float16 (65504) to inf at step 27: the "
    "loss is inf on every step from there on, the scaler skips every step and its scale "
    "collapses, though the same batch in float32 gives a finite loss.",
)
def h165_locomotive_lse_pool_fp16(ctx: Context) -> None:
    gen = seeded(16512)
    model = BoilerPeakNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    over, batches = [], {}

    def alter(step, x, y):
        batches[step] = (x, y)
        return x, y

    def watch(s, o, x, y):
        over.append(model.pool.overflowed)

    _train(
        ctx,
        model,
        opt,
        _footplate(gen, 32),
        200,
        F.mse_loss,
        scaler=scaler,
        alter=alter,
        watch=watch,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss went non-finite", bad is not None)
    ctx.check("the sum of exp overflowed float16 there", bad is not None and over[bad])
    ctx.check("and on 90% of the steps after", bad is not None and _mean(over[bad:]) > 0.9)
    ctx.check("loss finite before", bad is not None and bad > 10 and _finite(ctx.losses[:bad]))
    ctx.check(
        "scale collapsed after", bad is not None and ctx.scales[-1] < 1e-3 * max(ctx.scales[:bad])
    )
    if bad is not None:
        x, y = batches[bad]
        with torch.no_grad():
            ctx.check("same batch finite in float32", math.isfinite(float(F.mse_loss(model(x), y))))


# == healthy controls ==========================================================================

# -- macrame: a Hugging Face BART that writes a knot row as run-length instructions -------------

_KNOTS = 4  # square, half hitch, lark's head, overhand: tokens 3..6
_COUNTS = 6  # counts 1..6: tokens 7..12
_PAD, _BOS, _EOS = 0, 1, 2


def _macrame(gen, batch, length=12):
    """Input: a row of 12 knots (runs of 1-6 of the same knot); target: (knot, count) pairs."""
    while True:
        xs, ys = [], []
        for _ in range(batch):
            row, pairs = [], []
            while len(row) < length:
                knot = int(torch.randint(0, _KNOTS, (1,), generator=gen))
                if pairs and pairs[-1][0] == knot:
                    continue
                n = min(int(torch.randint(1, _COUNTS + 1, (1,), generator=gen)), length - len(row))
                row += [3 + knot] * n
                pairs.append((knot, n))
            xs.append(row)
            ys.append([t for k, n in pairs for t in (3 + k, 6 + n)] + [_EOS])
        width = max(len(y) for y in ys)
        y = torch.full((batch, width), -100)
        for i, seq in enumerate(ys):
            y[i, : len(seq)] = torch.tensor(seq)
        yield torch.tensor(xs), y


@scenario(
    family="hf_bart_macrame_knot_rle",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A Hugging Face BART built from a tiny config (d_model 64, one encoder and one decoder "
    "layer) that rewrites a row of macrame knots as run-length instructions (knot, count). "
    "AdamW at lr 3e-3 with param groups (weight decay 0.01 on matrices, none on norms and "
    "biases), linear warm-up then cosine, clip_grad_norm_ 1.0.",
)
def h165_macrame_bart_control(ctx: Context) -> None:
    from transformers import BartConfig, BartForConditionalGeneration

    gen = seeded(16513)
    config = BartConfig(
        vocab_size=16,
        d_model=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=_PAD,
        bos_token_id=_BOS,
        eos_token_id=_EOS,
        decoder_start_token_id=_BOS,
        forced_eos_token_id=_EOS,
    )
    model = BartForConditionalGeneration(config)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "norm" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = _macrame(gen, 32)
    for _ in range(steps):
        x, y = next(batches)
        out = model(input_ids=x, attention_mask=torch.ones_like(x), labels=y)
        out.loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(out.loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(out.loss)):
            break
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))


# -- beachcombing: a Perceiver over a set of shells, with an EMA of the weights ----------------


class ShellSetNet(nn.Module):
    """Perceiver-style: learnt latents cross-attend (nn.MultiheadAttention) to a set of 20 shells
    (length, width, thickness, ribbing, hue) picked up on a beach, and name the beach type
    (sand, shingle, rock pool, estuary mud)."""

    def __init__(self, feats=5, dim=32, latents=6, heads=2, beaches=4):
        super().__init__()
        self.embed = nn.Linear(feats, dim)
        self.latents = nn.Parameter(0.02 * torch.randn(latents, dim))
        self.ln_in = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, beaches)

    def forward(self, x):
        kv = self.ln_in(self.embed(x))
        lat = self.latents.expand(x.shape[0], -1, -1)
        lat = lat + self.cross(lat, kv, kv, need_weights=False)[0]
        lat = lat + self.ff(self.ln(lat))
        return self.head(lat.mean(1))


def _shells(gen, batch, n=20, beaches=4):
    centres = torch.randn(beaches, 5, generator=torch.Generator().manual_seed(12))
    while True:
        y = torch.randint(0, beaches, (batch,), generator=gen)
        x = centres[y][:, None] + 1.5 * torch.randn(batch, n, 5, generator=gen)
        yield x, y


@scenario(
    family="beachcombing_shell_set_perceiver",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A Perceiver-style set classifier (latents cross-attending through "
    "nn.MultiheadAttention), cross-entropy with label smoothing 0.1, Adam with OneCycleLR "
    "(max_lr 5e-3), and an exponential moving average of the weights (decay 0.98) kept for "
    "evaluation.",
)
def h165_beachcombing_perceiver_ema_control(ctx: Context) -> None:
    gen = seeded(16514)
    model = ShellSetNet()
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    steps = 200
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    xv, yv = next(_shells(torch.Generator().manual_seed(96), 256))
    with torch.no_grad():
        before = float(F.cross_entropy(ema(xv), yv))

    def after(step):
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(p, 1 - 0.98)

    _train(
        ctx,
        model,
        opt,
        _shells(gen, 32),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        after=after,
    )
    with torch.no_grad():
        late = float(F.cross_entropy(ema(xv), yv))
        acc = float((ema(xv).argmax(-1) == yv).float().mean())
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("EMA weights' held-out loss fell by half", late < 0.5 * before)
    ctx.check("EMA weights over 80% accurate", acc > 0.8)


# -- hot-air balloon ascent: a selective-scan (Mamba-like) recurrence ---------------------------


class SelectiveScan(nn.Module):
    """A Mamba-like selective scan by hand: per-step dt = softplus(W_dt x), B = W_B x,
    C = W_C x; h_t = exp(dt A) h_{t-1} + dt B x_t, y_t = C . h_t + D x_t, A = -exp(A_log)."""

    def __init__(self, dim, state):
        super().__init__()
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1).float()).repeat(dim, 1))
        self.dt = nn.Linear(dim, dim)
        self.B = nn.Linear(dim, state, bias=False)
        self.C = nn.Linear(dim, state, bias=False)
        self.D = nn.Parameter(torch.ones(dim))
        nn.init.constant_(self.dt.bias, math.log(math.expm1(0.1)))

    def forward(self, x):
        b, t, d = x.shape
        A = -self.A_log.exp()
        dt = F.softplus(self.dt(x))
        Bx, Cx = self.B(x), self.C(x)
        h = torch.zeros(b, d, A.shape[1])
        ys = []
        for i in range(t):
            h = (
                torch.exp(dt[:, i, :, None] * A) * h
                + dt[:, i, :, None] * Bx[:, i, None, :] * x[:, i, :, None]
            )
            ys.append((h * Cx[:, i, None, :]).sum(-1))
        return torch.stack(ys, 1) + self.D * x


class BalloonAscentNet(nn.Module):
    """Predicts a hot-air balloon's climb rate (standardised) at each of 32 seconds from the
    burner and parachute-vent actions and the outside temperature."""

    def __init__(self, feats=3, dim=16, state=8):
        super().__init__()
        self.inp = nn.Linear(feats, dim)
        self.scan = SelectiveScan(dim, state)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.scan(self.norm(h))
        return self.out(h).squeeze(-1)


def _balloon(gen, batch, length=32):
    while True:
        burner = (torch.rand(batch, length, generator=gen) < 0.3).float()
        vent = (torch.rand(batch, length, generator=gen) < 0.1).float()
        temp = torch.randn(batch, 1, generator=gen).expand(-1, length)
        heat = torch.zeros(batch)
        ys = []
        for i in range(length):
            heat = 0.85 * heat + burner[:, i] - 1.5 * vent[:, i]
            ys.append(0.5 * heat - 0.3 * temp[:, i])
        yield torch.stack([burner, vent, temp], -1), torch.stack(ys, 1)


@scenario(
    family="hot_air_balloon_climb_selective_scan",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written selective-scan (Mamba-like) recurrence with input-dependent step "
    "sizes and a decaying A = -exp(A_log), pre-norm residual, per-step MSE, RAdam at lr 5e-3 "
    "with ReduceLROnPlateau.",
)
def h165_balloon_selective_scan_control(ctx: Context) -> None:
    gen = seeded(16515)
    model = BalloonAscentNet()
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(ctx, model, opt, _balloon(gen, 16), 150, F.mse_loss, sched=sched)
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))


# -- canoe slalom: a noisy residual MLP regressor with Adagrad ---------------------------------


class SlalomNet(nn.Module):
    """Predicts a canoe slalom run's split (standardised) and its spread from twelve course
    readings (gate offsets, water speed, drop heights, upstream gates): mean and variance
    heads (softplus) on a pre-LN residual MLP."""

    def __init__(self, feats=12, hidden=64):
        super().__init__()
        self.inp = nn.Linear(feats, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU())
            for _ in range(2)
        )
        self.out = nn.Linear(hidden, 2)

    def forward(self, x):
        h = self.inp(x)
        for blk in self.blocks:
            h = h + blk(h)
        return self.out(h)


def _gaussian_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-4)


def _slalom(gen, batch, feats=12):
    w = torch.randn(feats, generator=torch.Generator().manual_seed(13))
    while True:
        x = torch.randn(batch, feats, generator=gen)
        noise = torch.distributions.StudentT(3.0).sample((batch,)) * (0.1 + 0.2 * x[:, 1].abs())
        yield x, torch.tanh(x @ w / 3) + 0.2 * x[:, 0] ** 2 + noise


@scenario(
    family="canoe_slalom_split_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A pre-LN residual MLP with mean and softplus-variance heads on heavy-tailed "
    "(Student-t, heteroscedastic) noisy targets, Gaussian negative log-likelihood, gradient "
    "accumulation over 2 micro-batches, clip_grad_norm_ 1.0, Adagrad at lr 2e-2 with a "
    "StepLR halving every 80 steps.",
)
def h165_slalom_adagrad_control(ctx: Context) -> None:
    gen = seeded(16516)
    model = SlalomNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    _train(
        ctx,
        model,
        opt,
        _slalom(gen, 32),
        200,
        _gaussian_nll,
        sched=sched,
        clip=1.0,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("loss finite", _finite(ls))
    ctx.check("NLL fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
