"""Held-out set 172 (``h172_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a transformer through ``nn.MultiheadAttention``, a
GroupNorm CNN and a BatchNorm CNN, a set model over pairwise Euclidean distances, a 1-D conv
sequence classifier, a GRU character model with tied weights, a two-head Gaussian regressor and
MLP regressors and classifiers.

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
    digit_batches,
    grad_norm,
    scenario,
    seeded,
    text_batches,
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
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    backprop=None,
):
    """The training loop. ``accumulate`` micro-batches a step; ``alter(step, x, y)`` changes a
    batch; ``before(step)`` runs first; ``watch(step, out, x, y)`` records; ``backprop(step,
    loss, out, y)`` returns the loss actually back-propagated (by default the logged loss)."""
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
            back = loss if backprop is None else backprop(step, loss, out, y)
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
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


class Regressor(nn.Module):
    def __init__(self, d_in, hidden=64, act=nn.ReLU, out=1):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _readings(gen, batch, d_in, seed, scale=1.0, offset=0.0, noise=0.05):
    """Standardised sensor readings and a smooth nonlinear target."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, generator=gen)
        yield x, offset + scale * y


def _params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


# -- speed skating: finish times in milliseconds under fp16 ---------------------------------------


@scenario(
    family="speed_skating_finish_time_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=68,
    heldout=True,
    note="A ReLU MLP predicting a 1500 m skater's finish time from 12 lap-split and ice "
    "readings, trained under fp16 autocast with a GradScaler. The timing system's export "
    "switched from seconds to milliseconds (finish times about 100000-125000 instead of "
    "100-125) and nothing rescales the target: as the head's fp16 output climbs towards the "
    "labels it passes float16's 65504, the forward gives inf and the scaler skips nearly every "
    "step while its scale collapses.",
)
def h172_speed_skating_milliseconds_fp16(ctx: Context) -> None:
    gen = seeded(17201)
    model = Regressor(12)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    scaler = torch.amp.GradScaler("cpu")
    outs = []
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=1, scale=8e3, offset=1.12e5),
        160,
        F.mse_loss,
        scaler=scaler,
        watch=lambda s, o, x, y: outs.append(float(o.detach().float().abs().max())),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss first inf under fp16 at step 68", bad == 68)
    ctx.check(
        "loss inf on most steps after that",
        bad is not None and _mean([not math.isfinite(v) for v in ctx.losses[bad:]]) > 0.8,
    )
    ctx.check("head output reached float16's limit", max(outs) > 65504)
    ctx.check("finite for the first 50 steps", _finite(ctx.losses[:50]))
    ctx.check("grad scaler scale fell below 1", min(ctx.scales) < 1.0)


# -- concert harp: nn.MultiheadAttention, optimizer state lost at a resume ------------------------


class HarpEncoder(nn.Module):
    """Reads 24 played pitch classes and names which of 6 pedal settings (scales) is set."""

    def __init__(self, vocab=12, length=24, dim=32, heads=4, classes=6):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.tok(x) + self.pos
        a = self.ln1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1))


def _harp_phrases(gen, batch, length=24, classes=6):
    major = torch.tensor([0, 2, 4, 5, 7, 9, 11])
    scales = torch.stack([(major + 2 * k) % 12 for k in range(classes)])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        idx = torch.randint(0, 7, (batch, length), generator=gen)
        x = scales[y][torch.arange(batch)[:, None], idx]
        slip = torch.rand(batch, length, generator=gen) < 0.02
        x = torch.where(slip, torch.randint(0, 12, (batch, length), generator=gen), x)
        yield x, y


HARP_SAVED = 40
HARP_RESUME = 120


@scenario(
    family="concert_harp_pedal_mha_transformer",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=HARP_RESUME,
    note="A one-block transformer through nn.MultiheadAttention naming the pedal setting from a "
    "played phrase, AdamW after a LambdaLR warm-up. Checkpoints are written as ckpt_<step>.pt at steps 40 and 100; "
    "at step 120 the job is pre-empted and resumed from max(os.listdir(dir)), a string sort "
    "that ranks 'ckpt_40.pt' above 'ckpt_120.pt': model, optimizer and scheduler come back as "
    "they were at step 40, the loss jumps back to that level at once and the run recovers.",
)
def h172_harp_resume_string_sorted_checkpoint(ctx: Context) -> None:
    gen = seeded(17202)
    model = HarpEncoder()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / 20, 1.0))
    ckpts = {}

    def before(step):
        if step in (HARP_SAVED, 100):
            ckpts[f"ckpt_{step}.pt"] = copy.deepcopy(
                (model.state_dict(), opt.state_dict(), sched.state_dict())
            )
        if step == HARP_RESUME:
            m, o, sc = ckpts[max(ckpts)]
            model.load_state_dict(m)
            opt.load_state_dict(o)
            sched.load_state_dict(sc)

    _loop(
        ctx,
        model,
        opt,
        _harp_phrases(gen, 64),
        220,
        F.cross_entropy,
        classifier=True,
        before=before,
        sched=sched,
    )
    ls, k = ctx.losses, HARP_RESUME
    base = _median(ls[k - 30 : k])
    ctx.check("the resume picked the step-40 checkpoint", max(ckpts) == "ckpt_40.pt")
    ctx.check("loss at the resume 5x the median before", ls[k] > 5 * base)
    ctx.check(
        "recovered: steps 60-100 after the resume under 2x the median before",
        _mean(ls[k + 60 :]) < 2 * base,
    )
    ctx.check("losses finite", _finite(ls))


# -- volcanic ash plume: a deep MLP with the init gain applied twice -----------------------------


class PlumeMLP(nn.Module):
    """Predicts an ash plume's top height from 10 eruption and wind readings; 8 ReLU layers."""

    def __init__(self, d_in=10, width=64, depth=8, gain=1.0):
        super().__init__()
        layers, a = [], d_in
        for _ in range(depth):
            lin = nn.Linear(a, width)
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            with torch.no_grad():
                lin.weight.mul_(gain)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
            a = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(-1)


@scenario(
    family="volcanic_ash_plume_height_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("body.0",),
    diverges="auto",
    heldout=True,
    note="An 8-layer ReLU MLP with a hand init: kaiming_normal_ (already the ReLU gain sqrt 2) "
    "followed by a multiply by the config's 'init_gain: 2.0' meant for a plain normal init. "
    "Each layer doubles the signal, the gradient reaching the first layer is about 2^8 times "
    "the head's, and plain SGD with the Huber loss blows up within a few steps.",
)
def h172_ash_plume_init_gain_twice(ctx: Context) -> None:
    gen = seeded(17203)
    model = PlumeMLP(gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3)
    data = _readings(gen, 64, 10, seed=3, scale=2.0)
    # before training: the gradient at each ReLU's output on a held-aside batch
    x, y = next(_readings(torch.Generator().manual_seed(3), 64, 10, seed=3, scale=2.0))
    h, hs = x, []
    for m in model.body:
        h = m(h)
        if isinstance(m, nn.ReLU):
            hs.append(h)
    gs = torch.autograd.grad(F.huber_loss(model.head(h).squeeze(-1), y), hs)
    grad_first, grad_last = float(gs[0].norm()), float(gs[-1].norm())

    _loop(ctx, model, opt, data, 80, F.huber_loss)
    ls = ctx.losses
    ctx.check(
        "gradient at the first layer's output 50x the last's",
        grad_first > 50 * grad_last,
    )
    ctx.check(
        "loss blew up (non-finite or 1e4x the first)",
        _first_bad(ls) is not None or max(ls) > 1e4 * ls[0],
    )


# -- water polo: pairwise Euclidean distances with no epsilon in the sqrt -------------------------


class PairSpacing(nn.Module):
    """Euclidean distances between every pair of players in a learnt 2-D projection of their
    (x, y, speed, heading) tracks, written with torch.sqrt and no epsilon."""

    def __init__(self, d_in=4, d=6, players=7):
        super().__init__()
        self.proj = nn.Linear(d_in, d)
        i, j = torch.triu_indices(players, players, 1)
        self.register_buffer("i", i)
        self.register_buffer("j", j)

    def forward(self, x):  # (b, players, d_in)
        z = self.proj(x)
        diff = z[:, self.i] - z[:, self.j]
        return torch.sqrt((diff**2).sum(-1))  # (b, pairs)


class WaterPoloSpacingNet(nn.Module):
    """Predicts whether a possession ends in a goal from the attackers' spacing."""

    def __init__(self, players=7):
        super().__init__()
        self.spacing = PairSpacing(players=players)
        self.phi = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        d = self.spacing(x)
        return self.head(self.phi(d[..., None]).mean(1)).squeeze(-1)


WATER_POLO_GLITCH = 90


def _water_polo_tracks(gen, batch, players=7):
    while True:
        x = torch.randn(batch, players, 4, generator=gen)
        spread = x[:, :, :2].std(1).mean(-1)
        y = (spread + 0.2 * torch.randn(batch, generator=gen) > 0.95).float()
        yield x, y


@scenario(
    family="water_polo_spacing_set_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("spacing",),
    diverges=WATER_POLO_GLITCH + 1,
    heldout=True,
    onset=WATER_POLO_GLITCH,
    note="A set model over the pairwise distances of 7 attackers, written as "
    "torch.sqrt(((z_i - z_j) ** 2).sum(-1)) with no epsilon, BCE with logits, NAdam. At step 90 "
    "the tracking system's glitch duplicates one player's row (two players at the very same "
    "coordinates): the distance is exactly 0, sqrt's backward is 0/0, the gradient of the "
    "projection is NaN, and after the update every following loss is NaN.",
)
def h172_water_polo_sqrt_no_eps(ctx: Context) -> None:
    gen = seeded(17204)
    model = WaterPoloSpacingNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == WATER_POLO_GLITCH:
            x = x.clone()
            x[5, 3] = x[5, 2]
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _water_polo_tracks(gen, 64),
        160,
        F.binary_cross_entropy_with_logits,
        alter=alter,
    )
    ls = ctx.losses
    ctx.check("loss finite before the glitch", _finite(ls[: WATER_POLO_GLITCH + 1]))
    ctx.check(
        f"loss first NaN at step {WATER_POLO_GLITCH + 1}", _first_bad(ls) == WATER_POLO_GLITCH + 1
    )
    ctx.check("gradient norm NaN at the glitch", math.isnan(ctx.grad_norms[WATER_POLO_GLITCH]))
    ctx.check("loss fell before the glitch", _fell(ls[:WATER_POLO_GLITCH], ratio=0.9))


# -- raku glaze: a GroupNorm CNN whose backbone was never given to the optimizer -------------------


class RakuCNN(nn.Module):
    """Names the crackle pattern of a raku glaze from an 8x8 patch (digits as the patches)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.GroupNorm(4, 16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.GroupNorm(8, 32),
            nn.ReLU(),
        )
        self.head = nn.Linear(32 * 16, 10)

    def forward(self, x):
        h = self.backbone(x.reshape(-1, 1, 8, 8))
        return self.head(F.max_pool2d(h, 2).flatten(1))


RAKU_UNFREEZE = 30


@scenario(
    family="raku_glaze_crackle_gn_cnn",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("backbone.0", "backbone.1", "backbone.3", "backbone.4"),
    diverges=None,
    heldout=True,
    onset=RAKU_UNFREEZE,
    note="A GroupNorm CNN with a linear-probe warm-up: the backbone is frozen for 30 steps, "
    "then unfrozen with requires_grad_(True). The optimizer was built once, at the start, from "
    "filter(lambda p: p.requires_grad, model.parameters()), so it holds the head alone: after "
    "the unfreeze the backbone gets gradients every step and never moves. RMSprop, "
    "cross-entropy with label smoothing 0.1.",
)
def h172_raku_unfrozen_not_in_optimizer(ctx: Context) -> None:
    gen = seeded(17205)
    model = RakuCNN()
    model.backbone.requires_grad_(False)
    opt = torch.optim.RMSprop(filter(lambda p: p.requires_grad, model.parameters()), lr=1e-3)
    w0 = model.backbone[3].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    bb_grads = []

    def before(step):
        if step == RAKU_UNFREEZE:
            model.backbone.requires_grad_(True)
            model.backbone[3].weight.register_hook(lambda g: bb_grads.append(float(g.norm())))

    _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        before=before,
    )
    moved = float((model.backbone[3].weight.detach() - w0).norm() / w0.norm())
    head_moved = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check(
        "backbone conv got a gradient on every step after the unfreeze",
        len(bb_grads) == 150 - RAKU_UNFREEZE and min(bb_grads) > 1e-4,
    )
    ctx.check("backbone conv moved less than 1e-6 relative", moved < 1e-6)
    ctx.check("head moved more than 20% relative", head_moved > 0.2)
    ctx.check("losses finite", _finite(ctx.losses))


# -- tornado tracks: a missing-value sentinel in one record ---------------------------------------


TORNADO_SHARD = 100


@scenario(
    family="tornado_track_length_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=TORNADO_SHARD,
    note="A ReLU MLP predicting a tornado's track length from 10 standardised storm-environment "
    "readings (CAPE, shear, lifted index ...), ASGD, MSE, clip_grad_norm_ at 5. One record in "
    "the batch at step 100 comes from a station that writes a missing reading as -9999 and the "
    "loader does not mask it: one input 5000x the usual, a loss and a gradient hundreds of "
    "times the usual for one step.",
)
def h172_tornado_missing_sentinel(ctx: Context) -> None:
    gen = seeded(17206)
    model = Regressor(10)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    seen = []

    def alter(step, x, y):
        if step == TORNADO_SHARD:
            x = x.clone()
            x[17, 4] = -9999.0
        seen.append(float(x.abs().max()))
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=6), 180, F.mse_loss, alter=alter, clip=5.0)
    ls, g, k = ctx.losses, ctx.grad_norms, TORNADO_SHARD
    ctx.check("sentinel input 1000x the usual", seen[k] > 1000 * _median(seen[:k]))
    ctx.check("loss at the record 20x the median before", ls[k] > 20 * _median(ls[k - 30 : k]))
    ctx.check("gradient at the record 10x the median before", g[k] > 10 * _median(g[k - 30 : k]))
    ctx.check("losses finite", _finite(ls))


# -- lacrosse: a shared criterion left at reduction='sum' by an evaluation hook ------------------


class PossessionConv(nn.Module):
    """Reads 24 events of a lacrosse possession and names its outcome (goal, save, turnover)."""

    def __init__(self, vocab=10, dim=32, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.conv1 = nn.Conv1d(dim, 48, 3, padding=1)
        self.conv2 = nn.Conv1d(48, 48, 3, padding=2, dilation=2)
        self.head = nn.Linear(48, classes)

    def forward(self, x):
        h = self.emb(x).transpose(1, 2)
        h = F.relu(self.conv1(h))
        h = F.relu(self.conv2(h))
        return self.head(h.amax(-1))


def _possessions(gen, batch, vocab=10, length=24):
    while True:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        shots = (x == 1).sum(1)
        drops = (x == 2).sum(1)
        y = torch.where(shots > drops + 1, 0, torch.where(shots > drops - 1, 1, 2))
        yield x, y


LACROSSE_EVAL = 80


@scenario(
    family="lacrosse_possession_conv1d",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=LACROSSE_EVAL,
    note="A dilated 1-D conv classifier of lacrosse possessions, SGD with Nesterov momentum. "
    "One nn.CrossEntropyLoss object is shared by training and evaluation; the evaluation hook "
    "at step 80 sets criterion.reduction = 'sum' to total the validation loss and restores it "
    "only after the next training step: that step's loss and gradient are 64x (the batch "
    "size), the logged loss included, and the run carries on.",
)
def h172_lacrosse_criterion_left_summed(ctx: Context) -> None:
    gen = seeded(17207)
    model = PossessionConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    criterion = nn.CrossEntropyLoss()

    def before(step):
        criterion.reduction = "sum" if step == LACROSSE_EVAL else "mean"

    _loop(
        ctx,
        model,
        opt,
        _possessions(gen, 64),
        180,
        criterion,
        classifier=True,
        before=before,
    )
    ls, g, k = ctx.losses, ctx.grad_norms, LACROSSE_EVAL
    ctx.check("gradient at step 80 above 30x the median before", g[k] > 30 * _median(g[k - 30 : k]))
    ctx.check("losses finite", _finite(ls))
    ctx.check("loss fell overall", _fell(ls))


# -- typesetter: a tied GRU character model with the z-loss sign flipped -------------------------


class CompositorLM(nn.Module):
    """Predicts the next character a compositor sets (standard-library source as the copy)."""

    def __init__(self, vocab=128, dim=64):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0])


def _seq_ce(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    family="typesetter_compositor_tied_gru_lm",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="A GRU character model with the output head tied to the embedding, Adamax. The "
    "PaLM-style z-loss was added as loss - 1e-2 * logsumexp(logits) ** 2 (the sign flipped "
    "when the auxiliary losses were summed into one expression): it rewards a large log "
    "partition, and the head's logits grow step after step while the logged cross-entropy, "
    "after falling, climbs back.",
)
def h172_typesetter_zloss_sign(ctx: Context) -> None:
    gen = seeded(17208)
    model = CompositorLM()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    peaks = []

    def backprop(step, loss, out, y):
        lse = torch.logsumexp(out.float(), -1)
        return loss - 1e-2 * (lse**2).mean()

    _loop(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        200,
        _seq_ce,
        watch=lambda s, o, x, y: peaks.append(float(o.detach().abs().max())),
        backprop=backprop,
    )
    ls = ctx.losses
    lo = min(range(len(ls) - 10), key=lambda i: _mean(ls[i : i + 10]))
    ctx.check("largest logit grew 8x from the first step", peaks[-1] > 8 * peaks[0])
    ctx.check("largest logit above 100", peaks[-1] > 100)
    ctx.check(
        "loss at the end above its lowest 10-step mean",
        _mean(ls[-10:]) > 1.5 * _mean(ls[lo : lo + 10]),
    )


# -- blacksmith quench: a static loss scale left on after a resume --------------------------------


class QuenchNet(nn.Module):
    """Predicts the mean and log-variance of a blade's hardness (HRC) after quenching."""

    def __init__(self, d_in=8, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _quench(gen, batch, d_in=8):
    w = torch.randn(d_in, generator=torch.Generator().manual_seed(9))
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        mean = torch.tanh(x @ w / math.sqrt(d_in)) + 0.3 * x[:, 0] * x[:, 1]
        sd = 0.05 + 0.2 * torch.sigmoid(x[:, 2])
        yield x, mean + sd * torch.randn(batch, generator=gen)


QUENCH_RESUME = 80


@scenario(
    family="blacksmith_quench_hardness_nll_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=QUENCH_RESUME,
    note="A two-head SiLU MLP (mean and log-variance of hardness) trained with the Gaussian NLL "
    "under Adam (beta2 0.999). The run is resumed at step 80 from a checkpoint of an fp16 "
    "recipe whose hand loss scaling multiplies the first loss after loading by the saved "
    "static scale 65536; the resumed job runs in fp32 and nothing unscales it: one gradient "
    "65536x the usual fills Adam's second moment and the updates stall for the rest of the run.",
)
def h172_quench_static_loss_scale_resume(ctx: Context) -> None:
    gen = seeded(17209)
    model = QuenchNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves = []
    last = [_params(model)]

    def before(step):
        now = _params(model)
        moves.append(float((now - last[0]).norm()))
        last[0] = now

    _loop(
        ctx,
        model,
        opt,
        _quench(gen, 64),
        220,
        _gauss_nll,
        before=before,
        backprop=lambda s, loss, o, y: loss * (65536.0 if s == QUENCH_RESUME else 1.0),
    )
    g, k = ctx.grad_norms, QUENCH_RESUME
    # moves[s] is the update made at step s - 1
    ctx.check(
        "gradient at the resume 1000x the median before", g[k] > 1000 * _median(g[k - 30 : k])
    )
    ctx.check(
        "updates from 60 steps after the resume on under a tenth of those before",
        _mean(moves[k + 60 :]) < 0.1 * _mean(moves[k - 30 : k]),
    )
    ctx.check(
        "stalled: loss over the last 20 steps no lower than over the 20 before the resume",
        _mean(ctx.losses[-20:]) >= _mean(ctx.losses[k - 20 : k]),
    )
    ctx.check("losses finite", _finite(ctx.losses))


# -- oboe reed: a warm-up to a peak learning rate 10x the recipe's -------------------------------


@scenario(
    family="oboe_reed_scrape_pitch_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=5,
    note="A ReLU MLP predicting a reed's crow pitch from 14 scrape-profile thicknesses, plain "
    "SGD, MSE, a linear warm-up over 60 steps to a peak lr read as 'peak_lr: 4.0' (the "
    "recipe's 0.04 with the exponent dropped from 4.0e-2): the lr passes 2/sharpness (about "
    "0.36 at init) at step 5, and a few steps later the loss climbs exponentially to inf.",
)
def h172_oboe_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(17210)
    model = Regressor(14)
    peak, warm = 4.0, 60
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 1.0))
    lrs = []
    data = _readings(gen, 64, 14, seed=10)
    probe = next(data)

    params = list(model.parameters())
    grads = torch.autograd.grad(F.mse_loss(model(probe[0]), probe[1]), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    sharp = 0.0
    for _ in range(50):
        n = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        sharp = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    limit = 2 / sharp

    _loop(
        ctx,
        model,
        opt,
        data,
        warm,
        F.mse_loss,
        before=lambda s: lrs.append(opt.param_groups[0]["lr"]),
        sched=sched,
    )
    ls = ctx.losses
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 1e3 * ls[0]), None)
    cross = next((i for i, lr in enumerate(lrs) if lr > limit), None)
    ctx.check("loss blew up (non-finite or 1e3x the first)", blow is not None)
    ctx.check("loss fell first", _mean(ls[5:10]) < 0.8 * _mean(ls[:5]))
    ctx.check("lr passed 2/sharpness at step 5", cross == 5)
    ctx.check("peak lr 0.04 would sit below that limit", 0.04 < limit)


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="pole_vault_takeoff_fp16_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP predicting a vaulter's take-off speed from 12 run-up readings "
    "under fp16 autocast with a GradScaler, clip_grad_norm_ at 1 after unscaling, Huber loss on "
    "noisy labels, AdamW with OneCycleLR.",
)
def h172_pole_vault_fp16_control(ctx: Context) -> None:
    gen = seeded(17211)
    model = Regressor(12, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=11, noise=0.2),
        steps,
        F.huber_loss,
        clip=1.0,
        scaler=scaler,
        sched=sched,
    )
    ctx.check("loss fell by a fifth", _fell(ctx.losses))
    ctx.check("losses finite", _finite(ctx.losses))


class TapestryCNN(nn.Module):
    """Names the weft motif of an 8x8 tapestry swatch (digits as the swatches)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.head = nn.Linear(32 * 16, 10)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        return self.head(h.flatten(1))


@scenario(
    family="tapestry_weft_motif_bn_cnn",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Control: a BatchNorm CNN, SGD with Nesterov momentum, param groups (weight decay on "
    "conv and linear weights only), 10 warm-up steps then cosine annealing, label smoothing 0.1.",
)
def h172_tapestry_cosine_control(ctx: Context) -> None:
    gen = seeded(17212)
    model = TapestryCNN()
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
        lr=0.05,
        momentum=0.9,
        nesterov=True,
    )
    steps, warm = 140, 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("losses finite", _finite(ctx.losses))


def _marimba_bars(gen, batch, d_in=16):
    w = torch.randn(d_in, generator=torch.Generator().manual_seed(13))
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        p = torch.sigmoid(4.0 * (x @ w) / math.sqrt(d_in) + x[:, 0] * x[:, 1])
        yield x, (torch.rand(batch, generator=gen) < p).float()


@scenario(
    family="marimba_bar_tuning_bce_classifier",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="Control: a GELU MLP saying whether a marimba bar is in tune from 16 spectral-peak "
    "readings, BCE with logits on noisy labels, Adagrad, gradient accumulation over 2 and "
    "ReduceLROnPlateau.",
)
def h172_marimba_adagrad_control(ctx: Context) -> None:
    gen = seeded(17213)
    model = Regressor(16, act=nn.GELU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _loop(
        ctx,
        model,
        opt,
        _marimba_bars(gen, 32),
        150,
        F.binary_cross_entropy_with_logits,
        accumulate=2,
        sched=sched,
    )
    ctx.check("loss fell by a fifth", _fell(ctx.losses))
    ctx.check("losses finite", _finite(ctx.losses))
