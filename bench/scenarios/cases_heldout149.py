"""Held-out set 149 (``h149_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before, with hand-written transformers (``scaled_dot_product_attention``,
``nn.MultiheadAttention`` and a hand softmax over q.k scores), a vanilla RNN, 1-D conv nets with
GroupNorm (one under fp16 autocast with a GradScaler), a classifier with a learnt temperature and
plain MLP regressors.

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
                loss = loss_fn(out, y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            back = loss if scale_loss is None else scale_loss(step, loss)
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
            shown += float(loss.detach().float())
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
        if after is not None:
            after(step)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


# -- uilleann pipe regulators: a transformer whose SDPA scale was set to 1.0 --------------------


class ReedAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``; records the largest
    q.k logit (times the scale) it used."""

    def __init__(self, dim, heads, scale):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = scale
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        with torch.no_grad():
            self.last_max = float((q @ k.transpose(-1, -2)).abs().amax() * self.scale)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class RegulatorChordNet(nn.Module):
    """Reads 12 drone/chanter pitch readings (binned to 32 levels) and names which of the four
    regulator chords the piper is keying."""

    def __init__(self, levels=32, dim=32, length=12, chords=4, heads=2, scale=None):
        super().__init__()
        self.level = nn.Embedding(levels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        hd = dim // heads
        self.attn = ReedAttention(dim, heads, 1.0 / math.sqrt(hd) if scale is None else scale)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, chords)

    def forward(self, x):
        h = self.level(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1))


def _regulators(gen, batch, levels=32, length=12):
    """The chord depends on whether the highest reading comes before the lowest and on the
    level of the first three readings."""
    while True:
        x = torch.randint(0, levels, (batch, length), generator=gen)
        y = (x.argmax(1) < x.argmin(1)).long() * 2 + (x[:, :3].float().mean(1) > levels / 2).long()
        yield x, y


@scenario(
    family="uilleann_pipe_regulator_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer through scaled_dot_product_attention. The port from a "
    "reference implementation passed scale=1.0 (the reference's 'scale_mult') instead of "
    "1/sqrt(head_dim), and AdamW runs at lr 1e-2 with weight decay 0 on every parameter: the "
    "q.k logits the softmax sees grow more than 10x, past 40.",
)
def h149_uilleann_regulator_sdpa_scale(ctx: Context) -> None:
    gen = seeded(14901)
    model = RegulatorChordNet(scale=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _regulators(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 40", seen[-1] > 40)


# -- queen bee piping: a confidence penalty added with the wrong sign ---------------------------


class QueenPipingNet(nn.Module):
    """Names the call (tooting, quacking, worker piping, silence, swarm hum) from a 24-bin hive
    microphone spectrum."""

    def __init__(self, bins=24, hidden=48, calls=5):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(bins, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, calls)

    def forward(self, x):
        return self.head(self.body(x))


def _hive_calls(gen, batch, bins=24, calls=5):
    centres = torch.randn(calls, bins, generator=torch.Generator().manual_seed(7))
    while True:
        y = torch.randint(0, calls, (batch,), generator=gen)
        x = centres[y] + 3.0 * torch.randn(batch, bins, generator=gen)
        yield x, y


@scenario(
    family="queen_bee_piping_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="The model outputs raw logits, but the loss was written as F.nll_loss(logits, y) "
    "(the log_softmax left in the old model's forward): the loss is minus the target logit, "
    "which has no floor, so with Adamax at lr 2e-3 the head's logits grow without bound (the "
    "logit norm grows more than 20x and is still growing at the end) while the loss runs "
    "negative.",
)
def h149_queen_piping_nll_on_logits(ctx: Context) -> None:
    gen = seeded(14902)
    model = QueenPipingNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    norms = []

    _train(
        ctx,
        model,
        opt,
        _hive_calls(gen, 64),
        200,
        F.nll_loss,
        classifier=True,
        watch=lambda s, o, x, y: norms.append(float(o.detach().norm(dim=-1).mean())),
    )
    ctx.check("logit norm grew 20x", norms[-1] > 20 * _mean(norms[:5]))
    ctx.check("logit norm still growing", norms[-1] > 1.3 * norms[-50])
