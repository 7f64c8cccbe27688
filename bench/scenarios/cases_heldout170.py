"""Held-out set 170 (``h170_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: three small transformers (a hand softmax over q.k,
``nn.MultiheadAttention`` and ``scaled_dot_product_attention``), a ConvS2S-style gated
convolutional encoder-decoder for a string transduction, a binary MADE with its log-likelihood
written by hand, a deep ensemble averaged at the output, a two-tower embedding model trained
with in-batch negatives and a learnt temperature, a ReLU RNN, 1-D conv nets and MLP regressors.

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
    digit_batches,
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
    alter=None,
    clip=None,
    clip_value=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    scale_loss=None,
    forward=None,
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``scale_loss(step,
    loss)`` changes the loss that is back-propagated."""
    forward = forward or (lambda m, x: m(x))
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
                out = forward(model, x)
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
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


# -- small transformers: three ways to attend -----------------------------------------------------


class HandQKAttention(nn.Module):
    """Multi-head self-attention with the softmax over q.k written by hand; records the largest
    logit the softmax saw."""

    def __init__(self, dim, heads, scale):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scale = scale
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            f(x).reshape(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        scores = (q @ k.transpose(-1, -2)) * self.scale
        self.last_max = float(scores.detach().abs().amax())
        w = torch.exp(scores - scores.amax(-1, keepdim=True))
        w = w / w.sum(-1, keepdim=True)
        return self.o((w @ v).transpose(1, 2).reshape(b, t, d))


class MHAAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class SDPAAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class TokenEncoder(nn.Module):
    """Token + learnt position embeddings, one pre-LN block around ``attn``, mean pool, head."""

    def __init__(self, attn, vocab, length, dim, classes):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = attn
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.tok(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1))


def _clog_steps(gen, batch, vocab=16, length=12):
    """Clog-dance bars: 12 step codes; the figure is which third of the bar holds the loudest
    (highest) code, plus one class for a tie-break on the first step."""
    while True:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        y = x.argmax(1) // 4
        yield x, y


@scenario(
    family="clog_dance_rhythm_transformer",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with a hand softmax over q.k. The q.k scale was read from a "
    "config key 'attn_temperature' that defaults to 1.0 instead of head_dim ** -0.5, and Adam "
    "runs at lr 1e-2 with no weight decay: to point at the loudest step the q.k logits the "
    "softmax sees grow more than 10x, past 40.",
)
def h170_clog_dance_qk_unscaled(ctx: Context) -> None:
    gen = seeded(17001)
    model = TokenEncoder(HandQKAttention(32, 2, 1.0), 16, 12, 32, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _clog_steps(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 40", seen[-1] > 40)


def _sheepdog_runs(gen, batch, vocab=10, length=16):
    """A sheepdog trial run as 16 commands (come-bye, away, walk-up, lie-down, ...): the course
    phase is the most frequent of commands 1, 2 and 3."""
    while True:
        x = torch.randint(4, vocab, (batch, length), generator=gen)
        mask = torch.rand(batch, length, generator=gen) < 0.5
        cmd = torch.randint(1, 4, (batch, length), generator=gen)
        x = torch.where(mask, cmd, x)
        counts = torch.stack([(x == c).sum(1) for c in (1, 2, 3)], 1).float()
        y = (counts + 0.01 * torch.arange(3)).argmax(1)
        yield x, y


@scenario(
    family="sheepdog_trial_course_transformer",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A one-block transformer through nn.MultiheadAttention, NAdam with param groups (body "
    "and head) and ReduceLROnPlateau. The head's group takes lr = base_lr * head_lr_mult with "
    "head_lr_mult read from a fine-tuning config where 0 meant 'inherit': the randomly "
    "initialised head never moves while the body trains around it.",
)
def h170_sheepdog_head_lr_mult_zero(ctx: Context) -> None:
    gen = seeded(17002)
    model = TokenEncoder(MHAAttention(32, 4), 10, 16, 32, 3)
    head_lr_mult = 0.0
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.NAdam(
        [
            {"params": body, "lr": 3e-3},
            {"params": model.head.parameters(), "lr": 3e-3 * head_lr_mult},
        ]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    head0 = model.head.weight.detach().clone()
    body0 = model.ff[0].weight.detach().clone()
    _train(
        ctx, model, opt, _sheepdog_runs(gen, 64), 160, F.cross_entropy, classifier=True, sched=sched
    )
    head_moved = float((model.head.weight.detach() - head0).norm() / head0.norm())
    body_moved = float((model.ff[0].weight.detach() - body0).norm() / body0.norm())
    ctx.check("head weight moved less than 1e-6 relative", head_moved < 1e-6)
    ctx.check("body weight moved more than 5% relative", body_moved > 0.05)
    ctx.check("losses finite", _finite(ctx.losses))


def _kendo_bouts(gen, batch, vocab=12, length=10):
    """Kendo bouts as 10 strike codes (men, kote, do, tsuki, feints ...): the referee's call is
    which valid strike (1, 2, 3) comes first after a feint (code 4), else 0."""
    while True:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        y = torch.zeros(batch, dtype=torch.long)
        for i in range(batch):
            seen_feint = False
            for t in range(length):
                v = int(x[i, t])
                if seen_feint and v in (1, 2, 3):
                    y[i] = v
                    break
                if v == 4:
                    seen_feint = True
        yield x, y


@scenario(
    family="kendo_strike_sequence_transformer",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a one-block transformer through scaled_dot_product_attention, AdamW param "
    "groups (no decay on norms, biases and positions), linear warm-up then cosine decay, and "
    "clip_grad_value_ at 0.5.",
)
def h170_kendo_sdpa_control(ctx: Context) -> None:
    gen = seeded(17003)
    model = TokenEncoder(SDPAAttention(32, 4), 12, 10, 32, 4)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "pos"]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "pos")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
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
    _train(
        ctx,
        model,
        opt,
        _kendo_bouts(gen, 64),
        steps,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        clip_value=0.5,
    )
    ctx.check("loss fell by a fifth", _fell(ctx.losses))
    ctx.check("losses finite", _finite(ctx.losses))


# -- mountain hut trail log: in-batch negatives with an unclamped learnt temperature -------------


CLIP_LOG_INIT = math.log(1 / 0.07)


class LearntTemperature(nn.Module):
    """CLIP-style learnt logit scale, stored as a log; ``ceiling`` is the clamp CLIP applies."""

    def __init__(self, log_init=CLIP_LOG_INIT, ceiling=None):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(log_init)))
        self.ceiling = ceiling

    def forward(self, sim):
        s = self.log_scale.exp()
        if self.ceiling is not None:
            s = s.clamp(max=self.ceiling)
        return s * sim


class TrailTwoTower(nn.Module):
    """Matches a hut logbook entry (16 weather/route features) to the GPS track summary (12
    features) of the same party."""

    def __init__(self, dim=32):
        super().__init__()
        self.log_tower = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, dim))
        self.track_tower = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, dim))
        # the bug: the config's 'init_logit_scale: 14.29' (1 / 0.07) passed where the log is
        # expected, and no clamp at 100 in forward
        self.temp = LearntTemperature(log_init=1 / 0.07, ceiling=None)

    def forward(self, pair):
        a = F.normalize(self.log_tower(pair[0]), dim=-1)
        b = F.normalize(self.track_tower(pair[1]), dim=-1)
        return self.temp(a @ b.T)


def _trail_pairs(gen, batch):
    mix_a = torch.randn(8, 16, generator=gen)
    mix_b = torch.randn(8, 12, generator=gen)
    while True:
        z = torch.randn(batch, 8, generator=gen)
        a = z @ mix_a + 0.1 * torch.randn(batch, 16, generator=gen)
        b = z @ mix_b + 0.1 * torch.randn(batch, 12, generator=gen)
        yield (a, b), torch.arange(batch)


@scenario(
    family="mountain_hut_trail_embedding",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("temp",),
    diverges=None,
    heldout=True,
    note="A two-tower embedding model trained with in-batch negatives (InfoNCE) and a CLIP-style "
    "learnt logit scale stored as a log. The config's init_logit_scale 14.29 (that is 1/0.07) "
    "was passed where the log is expected, so the scale starts at exp(14.29), about 1.6e6, and "
    "the port dropped CLIP's clamp of the scale at 100 in forward: the in-batch softmax rounds "
    "to exactly 0/1, and once the towers rank the pairs most rows give the match exactly 1.0.",
)
def h170_mountain_hut_unclamped_scale(ctx: Context) -> None:
    gen = seeded(17004)
    model = TrailTwoTower()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    collapsed, scales = [], []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        scales.append(float(model.temp.log_scale.detach().exp()))

    _train(
        ctx,
        model,
        opt,
        _trail_pairs(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("logit scale above 1e5 throughout", min(scales) > 1e5)
    ctx.check("few rows collapsed at the start", collapsed[0] < 0.2)
    ctx.check(
        "over half the rows collapsed to exactly 1.0 at the end", _mean(collapsed[-10:]) > 0.5
    )


# -- quilt blocks: a binary MADE with log(1 - p) left unclamped ----------------------------------


class MaskedLinear(nn.Linear):
    def __init__(self, a, b, mask):
        super().__init__(a, b)
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class QuiltMADE(nn.Module):
    """MADE over the 16 cells of a 4x4 quilt block (dark/light), natural ordering."""

    def __init__(self, d=16, hidden=64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        m_in = torch.arange(1, d + 1)
        m_h = torch.randint(1, d, (hidden,), generator=g)
        self.fc1 = MaskedLinear(d, hidden, (m_h[:, None] >= m_in[None, :]).float())
        self.fc2 = MaskedLinear(hidden, hidden, (m_h[:, None] >= m_h[None, :]).float())
        self.out = MaskedLinear(hidden, d, (m_in[:, None] > m_h[None, :]).float())

    def forward(self, x):
        return torch.sigmoid(self.out(F.relu(self.fc2(F.relu(self.fc1(x))))))


def _quilt_blocks(gen, batch):
    """A bookmatched block: the first column random, the other three set by it (light, light,
    dark mirrored)."""
    while True:
        col = (torch.rand(batch, 4, 1, generator=gen) < 0.5).float()
        block = torch.cat([col, 1 - col, 1 - col, col], -1)
        yield block.reshape(batch, 16), block.reshape(batch, 16)


def _bernoulli_nll(p, x):
    # the hand-written log-likelihood, no clamp on p
    return -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(1).mean()


QUILT_NAN_STEP = 51


@scenario(
    family="quilt_block_made",
    optimizer="Adam",
    cause="nonfinite",
    where=("out",),
    diverges=QUILT_NAN_STEP,
    heldout=True,
    note="A binary MADE with its Bernoulli log-likelihood written by hand as x*log(p) + "
    "(1-x)*log(1-p), no clamp of p. The other three columns of each block are set by the first "
    "column, so the output logits of those cells grow until the float32 sigmoid rounds p to "
    "exactly 1.0: log(1 - p) is -inf, 0 * -inf is NaN.",
)
def h170_quilt_made_log_unclamped(ctx: Context) -> None:
    gen = seeded(17005)
    model = QuiltMADE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    _train(ctx, model, opt, _quilt_blocks(gen, 64), 300, _bernoulli_nll)
    ctx.check(f"loss first NaN at step {QUILT_NAN_STEP}", _first_bad(ctx.losses) == QUILT_NAN_STEP)
    ctx.check("loss fell before it broke", _fell(ctx.losses[: max(QUILT_NAN_STEP, 20)], k=5))


# -- regressors and sequence models ---------------------------------------------------------------


class RegressorMLP(nn.Module):
    def __init__(self, d_in, hidden=64, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, 1)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        return self.head(self.features(x)).squeeze(-1)


def _tabular(gen, batch, d_in, scale=1.0, offset=0.0, seed=0):
    w = torch.randn(d_in, generator=torch.Generator().manual_seed(seed))
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.3 * torch.sin(2 * x[:, 0])
        y = y + 0.05 * torch.randn(batch, generator=gen)
        yield x, offset + scale * y


@scenario(
    family="ship_mooring_line_tension_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=76,
    heldout=True,
    note="A ReLU MLP predicting mooring-line tension from 10 sea-state features under fp16 "
    "autocast with a GradScaler. The label column was exported in newtons where the recipe "
    "expects kilonewtons (about 30000-100000 instead of 30-100): as the head's output grows "
    "towards the labels it passes float16's 65504, the forward gives inf, and the scaler "
    "skips step after step while its scale collapses.",
)
def h170_mooring_line_newtons_fp16(ctx: Context) -> None:
    gen = seeded(17006)
    model = RegressorMLP(10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _tabular(gen, 64, 10, scale=3.5e4, offset=6.5e4, seed=6),
        250,
        F.mse_loss,
        scaler=scaler,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss first inf under fp16 at step 76", bad == 76)
    ctx.check("grad scaler scale fell below 1", min(ctx.scales) < 1.0)
    ctx.check("finite before the overflow", bad is not None and bad > 10)


class StrokeRNN(nn.Module):
    """Reads 40 samples of a sculling blade's depth sensor and predicts the stroke rate."""

    def __init__(self, hidden=48, gain=1.0):
        super().__init__()
        self.rnn = nn.RNN(2, hidden, batch_first=True, nonlinearity="relu")
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.eye(hidden))
            self.rnn.bias_hh_l0.zero_()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _blade_depth(gen, batch, length=40):
    while True:
        rate = 0.5 + torch.rand(batch, 1, generator=gen)
        t = torch.arange(length).float()[None, :]
        depth = torch.sin(rate * t * 0.5) + 0.1 * torch.randn(batch, length, generator=gen)
        x = torch.stack([depth, torch.ones_like(depth) * 0.1], -1)
        yield x, rate.squeeze(-1)


@scenario(
    family="sculling_blade_depth_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="An IRNN (ReLU RNN with identity recurrent init) over 40 steps. The identity init was "
    "written as gain * eye with gain taken from the tanh recipe's 'recurrent_gain: 1.05': "
    "activations and gradients grow through time by about 1.05^40 (7x) and plain SGD blows up.",
)
def h170_sculling_irnn_gain(ctx: Context) -> None:
    gen = seeded(17007)
    model = StrokeRNN(gain=1.05)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    _train(ctx, model, opt, _blade_depth(gen, 32), 120, F.mse_loss)
    ctx.check(
        "loss blew up (non-finite or 1e4x)",
        _first_bad(ctx.losses) is not None or max(ctx.losses) > 1e4 * ctx.losses[0],
    )
    ctx.check("first gradient norm above 100", ctx.grad_norms[0] > 100)


@scenario(
    family="maple_syrup_brix_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    onset=40,
    note="A ReLU MLP predicting the sugar (Brix) of boiled sap from 12 evaporator readings, "
    "RMSprop with a LambdaLR warm-up written as step / warmup without the min(., 1): after the "
    "40 warm-up steps the lr keeps climbing linearly (5x by step 200) and the second layer's "
    "ReLUs are pushed negative and die one after another.",
)
def h170_maple_warmup_no_cap(ctx: Context) -> None:
    gen = seeded(17008)
    model = RegressorMLP(12)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    warm = 40
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm)
    data = _tabular(gen, 64, 12, seed=8)
    probe = next(data)[0]
    dead0 = dead_fraction(model.features(probe).detach())
    _train(ctx, model, opt, data, 200, F.mse_loss, sched=sched)
    dead1 = dead_fraction(model.features(probe).detach())
    ctx.check("under a fifth of fc2's units dead at the start", dead0 < 0.2)
    ctx.check("over half of fc2's units dead at the end", dead1 > 0.5)
    ctx.check("losses finite", _finite(ctx.losses))


# -- heraldry: a ConvS2S-style gated conv encoder-decoder for a string transduction ---------------


class GatedConv(nn.Module):
    def __init__(self, dim, k, causal):
        super().__init__()
        self.conv = nn.Conv1d(dim, 2 * dim, k, padding=0)
        self.k = k
        self.causal = causal

    def forward(self, x):  # (b, t, d)
        h = x.transpose(1, 2)
        pad = (self.k - 1, 0) if self.causal else ((self.k - 1) // 2, (self.k - 1) // 2)
        h = F.glu(self.conv(F.pad(h, pad)), dim=1).transpose(1, 2)
        return (x + h) * math.sqrt(0.5)


class BlazonConvS2S(nn.Module):
    """Transduces a shield's tincture codes into its blazon order (reversed, each tincture mapped
    to its heraldic term): gated conv encoder, causal gated conv decoder, dot-product attention."""

    def __init__(self, vocab=12, dim=48, length=10):
        super().__init__()
        self.src_emb = nn.Embedding(vocab, dim)
        self.tgt_emb = nn.Embedding(vocab + 1, dim)
        self.pos = nn.Parameter(0.1 * torch.randn(length, dim))
        self.encoder = nn.Sequential(GatedConv(dim, 3, False), GatedConv(dim, 3, False))
        self.decoder = nn.ModuleList([GatedConv(dim, 3, True), GatedConv(dim, 3, True)])
        self.out = nn.Linear(dim, vocab)

    def forward(self, pair):
        src, tgt_in = pair
        e = self.encoder(self.src_emb(src) + self.pos)
        h = self.tgt_emb(tgt_in) + self.pos
        for layer in self.decoder:
            h = layer(h)
            a = torch.softmax(h @ e.transpose(1, 2) / math.sqrt(h.shape[-1]), -1)
            h = (h + a @ e) * math.sqrt(0.5)
        return self.out(h)


def _blazons(gen, batch, vocab=12, length=10):
    perm = torch.randperm(vocab, generator=torch.Generator().manual_seed(3))
    while True:
        src = torch.randint(0, vocab, (batch, length), generator=gen)
        tgt = perm[src.flip(1)]
        tgt_in = torch.cat([torch.full((batch, 1), vocab), tgt[:, :-1]], 1)
        yield (src, tgt_in), tgt


def _seq_ce(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    family="heraldry_blazon_convs2s",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="A ConvS2S-style encoder-decoder (GLU convs, causal decoder, dot-product attention), SGD "
    "with Nesterov momentum and gradient accumulation over 2. At step 90 a job resumed from a "
    "checkpoint re-reads the loss weight from a config where 'aux_weight: 1e2' lands on the "
    "main loss for one step: one gradient 100x the usual, which the run then recovers from.",
)
def h170_heraldry_loss_weight_resume(ctx: Context) -> None:
    gen = seeded(17009)
    model = BlazonConvS2S()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    _train(
        ctx,
        model,
        opt,
        _blazons(gen, 32),
        180,
        _seq_ce,
        accumulate=2,
        scale_loss=lambda s, loss: loss * (100.0 if s == 90 else 1.0),
    )
    g = ctx.grad_norms
    ctx.check("gradient at step 90 above 30x the median before", g[90] > 30 * _median(g[40:90]))
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell overall", _fell(ctx.losses))


# -- ski wax: a deep ensemble averaged at the output ----------------------------------------------


class WaxEnsemble(nn.Module):
    """Four small MLPs predicting glide time from 8 snow readings, averaged at the output."""

    def __init__(self, members=4, d_in=8):
        super().__init__()
        self.members = nn.ModuleList(
            nn.Sequential(nn.Linear(d_in, 32), nn.Tanh(), nn.Linear(32, 1)) for _ in range(members)
        )

    def forward(self, x):
        return torch.stack([m(x).squeeze(-1) for m in self.members], 0).mean(0)


@scenario(
    family="ski_wax_glide_ensemble",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="A deep ensemble of four tanh MLPs averaged at the output, Adagrad, MSE. The batch at "
    "step 70 comes from a snow-sensor shard logged in millikelvin and grams instead of kelvin "
    "offsets and kilograms: inputs 1000x, one huge gradient.",
)
def h170_ski_wax_millikelvin_shard(ctx: Context) -> None:
    gen = seeded(17010)
    model = WaxEnsemble()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen = []

    def alter(step, x, y):
        if step == 70:
            x = x * 1000.0
        seen.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _tabular(gen, 64, 8, seed=10), 160, F.mse_loss, alter=alter)
    g = ctx.grad_norms
    ctx.check("shard inputs 100x the usual", seen[70] > 100 * _median(seen[:70]))
    ctx.check("gradient at step 70 above 10x the median before", g[70] > 10 * _median(g[30:70]))
    ctx.check("losses finite", _finite(ctx.losses))


# -- church organ stops: hand decoupled weight decay with the wrong sign --------------------------


class OrganStopConv(nn.Module):
    """Names which of 6 organ stops is drawn from a 64-sample pipe waveform."""

    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _organ_pipes(gen, batch, classes=6, length=64):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = 0.15 + 0.02 * torch.rand(batch, 1, generator=gen)
        harm = (y[:, None].float() + 1) / classes
        x = torch.sin(f * t) + harm * torch.sin(2 * f * t) + (1 - harm) * torch.sin(3 * f * t)
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="church_organ_stop_conv1d",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A 1-D conv classifier of organ-stop waveforms, Adamax with decoupled weight decay "
    "written by hand after the step as p.mul_(1 + lr * wd) instead of 1 - lr * wd: the weights "
    "grow every step and the loss, after falling, climbs slowly back up.",
)
def h170_organ_decay_sign(ctx: Context) -> None:
    gen = seeded(17011)
    model = OrganStopConv()
    lr, wd = 1e-2, 0.6
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    norms = []

    def before(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)
        norms.append(float(model.head.weight.norm()))

    _train(
        ctx, model, opt, _organ_pipes(gen, 64), 300, F.cross_entropy, classifier=True, before=before
    )
    lo = min(range(len(ctx.losses)), key=lambda i: _mean(ctx.losses[i : i + 10]))
    ctx.check("head weight norm grew 3x", norms[-1] > 3 * norms[0])
    ctx.check(
        "loss at the end 2x its lowest 10-step mean",
        _mean(ctx.losses[-10:]) > 2 * _mean(ctx.losses[lo : lo + 10]),
    )
    ctx.check("losses finite", _finite(ctx.losses))


# -- controls -------------------------------------------------------------------------------------


class CrossStitchCNN(nn.Module):
    """Reads an 8x8 cross-stitch chart glyph (scikit-learn's digits as the charts)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32 * 16, 10)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.head(h.flatten(1))


@scenario(
    family="cross_stitch_glyph_cnn",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Control: a small BatchNorm CNN, SGD with momentum 0.9 and weight decay, OneCycleLR "
    "(max lr 0.1), cross-entropy with label smoothing 0.1.",
)
def h170_cross_stitch_onecycle_control(ctx: Context) -> None:
    gen = seeded(17012)
    model = CrossStitchCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _train(
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


@scenario(
    family="hay_bale_moisture_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP predicting bale moisture from 10 baler readings under fp16 "
    "autocast with a GradScaler, gradient accumulation over 2, clip_grad_norm_ at 1 after "
    "unscaling, Huber loss on noisy labels, RAdam with StepLR.",
)
def h170_hay_bale_fp16_control(ctx: Context) -> None:
    gen = seeded(17013)
    model = RegressorMLP(10, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _tabular(gen, 32, 10, seed=13),
        180,
        F.huber_loss,
        accumulate=2,
        clip=1.0,
        scaler=scaler,
        sched=sched,
    )
    ctx.check("loss fell by a fifth", _fell(ctx.losses))
    ctx.check("losses finite", _finite(ctx.losses))
