"""Held-out set 180 (``h180_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a morin khuur bow-notation transformer whose QK norms are
built but never applied, a farrier's horseshoe-fit classifier whose EMA evaluation restores the
wrong weights, an urushi lacquer coat grader with a temperature written in percent, a kelp canopy
Gaussian NLL regressor with a trunk group's learning rate typed 2e-7, a sandcastle collapse
regressor whose batch-size ramp scales the learning rate linearly, a swift-roost Elman RNN with a
recurrent gain of 2, a foehn warming regressor taking log of a calm anemometer's 0.0, a hailstorm
radar net sum-pooling gates in float16, a salmon-run Poisson regressor hit by a counter's 65535
sentinel under Adam, a dovetail-fit ReLU MLP with a sparse autoencoder's bias init, and three
controls (a tenpin lane-oil classifier under OneCycleLR, a tied Gregorian-chant byte transformer
with warm-up + cosine, an fp16 ice-sculpture melt regressor).

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
    collapsed_fraction,
    dead_fraction,
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
    extra=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    after=None,
    stop_on_nan=True,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``alter(step, x, y)`` changes a batch, ``extra(step, out, loss)`` returns what is actually
    back-propagated (the logged loss is ``loss_fn``'s), ``watch(step, out, x, y)`` records,
    ``after(step)`` runs after the optimizer step, ``accumulate`` micro-batches a step; stops
    after logging a NaN loss unless told not to."""
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
            total = extra(step, out, loss) if extra is not None else loss
            total = total / accumulate
            if watch is not None:
                watch(step, out, x, y)
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
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step)
        if stop_on_nan and math.isnan(shown):
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


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, activation modules."""

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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- morin khuur: a learned attention temperature whose clamp was lost -----------------------------


class QKNormAttention(nn.Module):
    """Hand-written attention meant to apply a LayerNorm to q and k (``qk_norm: true`` in the
    recipe); the norms are built, but the forward never calls them."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(dim // heads)
        self.k_norm = nn.LayerNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)
        self.last_logits = None

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        # meant: q, k = self.q_norm(q), self.k_norm(k)
        logits = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        self.last_logits = logits.detach()
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        y = torch.softmax(logits.masked_fill(mask, float("-inf")), dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class PhraseBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = QKNormAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(self.act(self.fc(self.ln2(x))))


MORIN_LR = 2e-2


class BowPhraseLM(nn.Module):
    """A pre-LN causal decoder over a byte transcription of bow-stroke notation."""

    def __init__(self, vocab=128, dim=48, heads=4, layers=2, context=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(PhraseBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                nn.init.zeros_(mod.bias)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _lm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    family="morin_khuur_bow_phrase_attention_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A two-block pre-LN causal transformer (LayerNorm, hand-written attention, GELU MLP, "
    "GPT-style 0.02 init) modelling a byte transcription of morin khuur bow-stroke notation, "
    "AdamW at 2e-2 (betas 0.9, 0.95), cross-entropy. The recipe is a QK-norm transformer "
    "(`qk_norm: true`, the lr tuned for it): the attention builds q_norm and k_norm "
    "LayerNorms, but its forward never applies them. Without them, q and k grow under the "
    "high lr and the attention logits q.k/sqrt(d) rise from about 0.1 to the hundreds (the "
    "first block's first); the loss stays finite and falls slowly",
)
def h180_morin_khuur_qk_norm_skipped(ctx: Context) -> None:
    gen = seeded(18001)
    model = BowPhraseLM()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=MORIN_LR,
        betas=(0.9, 0.95),
    )
    peak = []

    def watch(step, out, x, y):
        peak.append(max(float(b.attn.last_logits.abs().max()) for b in model.blocks))

    _train(ctx, model, opt, text_batches(gen, 16, 32), 240, _lm_loss, watch=watch)
    ctx.check("attention logits grew 20x from step 10", _mean(peak[-10:]) > 20 * peak[10])
    ctx.check("attention logits past 100 at the end", _mean(peak[-10:]) > 100)
    ctx.check("loss fell from its start", _fell(ctx.losses, ratio=0.8))
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- farrier: the eval hook restores the EMA weights instead of the training weights -------------

FARRIER_EVAL = 110
FARRIER_EMA = 0.999


@scenario(
    family="farrier_horseshoe_fit_classifier",
    optimizer="Adamax",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=FARRIER_EVAL,
    note="A ReLU MLP naming which of 7 horseshoe sizes fits a hoof from 20 hoof-gauge readings, "
    "Adamax at 1e-2, cross-entropy, with an exponential moving average of the weights (decay "
    "0.999) kept for evaluation. The evaluation at step 110 swaps the EMA weights in and is "
    "meant to restore the training weights from a backup afterwards, but the restore line "
    "loads the EMA's state_dict again. With decay 0.999 after 110 steps the EMA is still "
    "mostly the initial weights, so training continues from near the init: the loss jumps "
    "back towards its starting level at step 110 and the run relearns it within a few dozen "
    "steps.",
)
def h180_farrier_ema_restore_swapped(ctx: Context) -> None:
    gen = seeded(18002)
    model = Trunk(20, hidden=128, out=7)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    jump = {}

    def before(step):
        if step == FARRIER_EVAL:
            backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(ema)  # evaluate with the EMA weights
            # ... evaluation ...
            model.load_state_dict(ema)  # meant: model.load_state_dict(backup)
            jump["dist"] = math.sqrt(
                sum(float(((model.state_dict()[k] - backup[k]) ** 2).sum()) for k in backup)
            )
            jump["norm"] = math.sqrt(sum(float((v**2).sum()) for v in backup.values()))

    def after(step):
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].mul_(FARRIER_EMA).add_(v, alpha=1 - FARRIER_EMA)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 7, seed=2, noise=0.8),
        220,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
    )
    at = FARRIER_EVAL
    ls, gn = ctx.losses, ctx.grad_norms
    base = _mean(ls[at - 20 : at])
    ctx.check("loss fell before the evaluation", _fell(ls[:at]))
    ctx.check("weights moved 30% of their norm at the swap", jump["dist"] > 0.3 * jump["norm"])
    ctx.check("loss 5x the preceding mean at the swap", ls[at] > 5 * base)
    ctx.check("loss at the swap at least half the first step's", ls[at] > 0.5 * ls[0])
    ctx.check(
        "back under 2x the preceding mean within 40 steps", min(ls[at + 1 : at + 40]) < 2 * base
    )
    ctx.check(
        "gradient at the swap under 3x the preceding median", gn[at] < 3 * _median(gn[at - 20 : at])
    )
    ctx.check("recovered by the end", _mean(ls[-20:]) < 1.5 * base)
    ctx.check("loss finite throughout", _finite(ls))


# -- urushi lacquer: a temperature written in percent ----------------------------------------------


URUSHI_LR = 1e-3


class UrushiNet(nn.Module):
    def __init__(self, d_in=24, hidden=64, classes=6, temperature_pct=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature_pct = temperature_pct

    def forward(self, x):
        logits = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return logits / (self.temperature_pct / 100.0)


@scenario(
    family="lacquerware_urushi_coat_grade_classifier",
    optimizer="SGD(momentum)",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP grading a urushi lacquer coat into 6 grades from 24 gloss, thickness and "
    "humidity readings, SGD momentum 0.9 at 1e-3, cross-entropy. The calibration temperature "
    "is stored as 1.0, but the forward divides the head's logits by `temperature_pct / 100` "
    "(a field renamed from a percent): the logits are 100x too large, rows span 50-100 "
    "logits, the float32 softmax rounds the top class to exactly 1 and the others to 0 for "
    "most rows, and each misgraded row costs several to tens of nats; finite",
)
def h180_urushi_temperature_in_percent(ctx: Context) -> None:
    gen = seeded(18003)
    model = UrushiNet()
    opt = torch.optim.SGD(model.parameters(), lr=URUSHI_LR, momentum=0.9)
    frac, span, wrong = [], [], []

    def watch(step, out, x, y):
        o = out.detach()
        frac.append(collapsed_fraction(o, y))
        span.append(float((o.max(1).values - o.min(1).values).median()))
        miss = o.argmax(1) != y
        if miss.any():
            wrong.append(float(F.cross_entropy(o[miss], y[miss])))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 24, 6, seed=3, noise=0.6),
        160,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("half the rows' target probability exactly 1.0 over the run", _mean(frac) > 0.5)
    ctx.check("median row's logit span above 50 over the last 20 steps", _mean(span[-20:]) > 50)
    ctx.check("misgraded rows' loss above 5 on average", _mean(wrong) > 5)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- kelp canopy: the trunk group's learning rate typed 2e-7 ---------------------------------------


class KelpNet(nn.Module):
    def __init__(self, d_in=16, hidden=48):
        super().__init__()
        self.trunk1 = nn.Linear(d_in, hidden)
        self.trunk2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.logvar_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.trunk2(F.silu(self.trunk1(x))))
        return torch.cat([self.mean_head(h), self.logvar_head(h)], -1)


def _gauss_nll(out, y):
    mean, logvar = out[:, 0], out[:, 1].clamp(-8, 8)
    return (0.5 * (logvar + (y - mean) ** 2 / logvar.exp())).mean()


@scenario(
    family="kelp_forest_canopy_growth_nll_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("trunk1", "trunk2"),
    diverges=None,
    heldout=True,
    note="A SiLU MLP with mean and log-variance heads predicting a kelp forest's canopy growth "
    "from 16 swell, temperature and nitrate readings, Gaussian NLL, Adagrad with two param "
    "groups (trunk, heads). The trunk's group lr was typed `2e-7` for `2e-2`: its weights "
    "move about 1e-7 of their size per step while the heads move over 1e-4, so the trunk stays "
    "at its random init and the heads fit what they can on random features.",
)
def h180_kelp_trunk_lr_exponent_typo(ctx: Context) -> None:
    gen = seeded(18004)
    model = KelpNet()
    trunk = [p for n, p in model.named_parameters() if n.startswith("trunk")]
    heads = [p for n, p in model.named_parameters() if not n.startswith("trunk")]
    opt = torch.optim.Adagrad([{"params": trunk, "lr": 2e-7}, {"params": heads, "lr": 2e-2}])
    ratios = {"trunk": [], "heads": []}
    snap = {}

    def before(step):
        snap["t"] = model.trunk2.weight.detach().clone()
        snap["h"] = model.mean_head.weight.detach().clone()

    def after(step):
        t, h = model.trunk2.weight.detach(), model.mean_head.weight.detach()
        ratios["trunk"].append(float((t - snap["t"]).norm() / t.norm()))
        ratios["heads"].append(float((h - snap["h"]).norm() / h.norm()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 16, seed=4, noise=0.2),
        200,
        _gauss_nll,
        before=before,
        after=after,
    )
    ctx.check("trunk2's update ratio under 1e-5 every step", max(ratios["trunk"]) < 1e-5)
    ctx.check("mean head's median update ratio above 1e-4", _median(ratios["heads"]) > 1e-4)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- sandcastle: a batch-size ramp with the linear lr-scaling rule ---------------------------------

SANDCASTLE_RAMP = 80


@scenario(
    family="sandcastle_tower_collapse_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=SANDCASTLE_RAMP,
    note="A tanh MLP (nn.Tanh modules) regressing how long a sandcastle tower stands from 12 "
    "moisture, grain and tide readings, plain SGD, MSE. The recipe grows the batch from 32 "
    "to 256 at step 80 and applies the linear scaling rule to the learning rate (0.15 -> "
    "1.2); the MSE's sharpness does not fall with the batch, lr x sharpness goes from under 2 "
    "to far above it and the loss blows up.",
)
def h180_sandcastle_linear_lr_scaling(ctx: Context) -> None:
    gen = seeded(18005)
    model = Trunk(12, hidden=64, act=nn.Tanh)
    base_lr, small, large = 0.15, 32, 256
    opt = torch.optim.SGD(model.parameters(), lr=base_lr)
    small_b = _readings(gen, small, 12, seed=5)
    large_b = _readings(gen, large, 12, seed=5)
    probe = next(large_b)
    edge = {}

    def batches():
        step = 0
        while True:
            yield next(large_b if step >= SANDCASTLE_RAMP else small_b)
            step += 1

    def before(step):
        if step == SANDCASTLE_RAMP:
            edge["lam"] = _sharpness(model, F.mse_loss, *probe)
            for g in opt.param_groups:
                g["lr"] = base_lr * large / small

    _train(ctx, model, opt, batches(), 150, F.mse_loss, before=before)
    at = SANDCASTLE_RAMP
    lam = edge.get("lam", 0.0)
    ctx.check("lr x sharpness under 2 before the ramp", 0 < base_lr * lam < 2)
    ctx.check("lr x sharpness past 4 after the ramp", base_lr * large / small * lam > 4)
    ctx.check("loss fell before the ramp", _fell(ctx.losses[:at]))
    ctx.check(
        "loss 100x its pre-ramp level after, or non-finite",
        not _finite(ctx.losses[at:])
        or max(ctx.losses[at:]) > 100 * _mean(ctx.losses[at - 10 : at]),
    )


# -- swift roost: a feed-forward tanh gain on the recurrent matrix ---------------------------------


SWIFT_GAIN = 2.0


class RoostCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.inp(x) + self.rec(h))


class SwiftRoostRNN(nn.Module):
    """A hand-written Elman RNN over a dusk flight track, classifying from the last state."""

    def __init__(self, d_in=4, hidden=64, classes=3, gain=1.0):
        super().__init__()
        self.hidden = hidden
        self.cell = RoostCell(d_in, hidden)
        self.head = nn.Linear(hidden, classes)
        nn.init.orthogonal_(self.cell.rec.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


def _flight_tracks(gen, batch, length=40):
    """Altitude, speed, climb and light along a swift's dusk flight; the label (ascend to
    roost aloft, roost in a chimney, keep feeding) is set by the first few steps' climb."""
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        climb = torch.tensor([1.0, -1.0, 0.0])[y]
        x = 0.5 * torch.randn(batch, length, 4, generator=gen)
        x[:, :, 2] += 0.5 * climb[:, None]
        x[:, :, 3] = torch.linspace(1, -1, length)
        yield x, y


@scenario(
    family="swift_roost_dive_elman_rnn",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("cell", "cell.rec"),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (cell.inp, cell.rec) reading a common swift's 40-step "
    "dusk flight track and naming where it will roost, SGD Nesterov 0.9 at 3e-3, "
    "cross-entropy, no clipping. The recurrent matrix was initialised with "
    "`orthogonal_(w, gain=2.0)`, a 'long-memory' gain copied from a snippet meant to fight "
    "vanishing gradients: the recurrence is chaotic at init, the state gradient grows about "
    "160x backwards through the 40 steps and the first step's gradient is about 90x that of "
    "a gain-1 init; SGD's first updates are large and the gradient spikes again later, but "
    "the run survives and learns slowly",
)
def h180_swift_roost_recurrent_gain(ctx: Context) -> None:
    gen = seeded(18006)
    model = SwiftRoostRNN(gain=SWIFT_GAIN)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9, nesterov=True)
    batches = _flight_tracks(gen, 32)
    x0, y0 = next(batches)
    twin = copy.deepcopy(model)
    nn.init.orthogonal_(twin.cell.rec.weight, gain=1.0)
    F.cross_entropy(twin(x0), y0).backward()
    twin_norm = grad_norm(twin)
    ratios = []
    ctx.attach(model, opt)
    for step in range(100):
        x, y = (x0, y0) if step == 0 else next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        first = float(model.states[0].grad.norm())
        last = float(model.states[-1].grad.norm())
        ratios.append(first / max(last, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss.detach())):
            break
    gn = ctx.grad_norms
    ctx.check("state gradient at t=0 100x that at the last step, at init", ratios[0] > 100)
    ctx.check(
        "first step's gradient 30x that of a gain-1 copy on the same batch", gn[0] > 30 * twin_norm
    )
    ctx.check("gradient norm past 50 at the first step", gn[0] > 50)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- foehn: log of a calm anemometer's 0.0 ---------------------------------------------------------


class LogFeatures(nn.Module):
    """Log-transforms the skewed columns (wind speed, gust, precipitation) in place of log1p."""

    def __init__(self, columns):
        super().__init__()
        self.columns = columns
        self.last_min = 0.0

    def forward(self, x):
        x = x.clone()
        x[:, self.columns] = torch.log(x[:, self.columns])
        self.last_min = float(x[:, self.columns].min())
        return x


class FoehnNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.log_in = LogFeatures([0, 1, 2])
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.log_in(x)))))).squeeze(-1)


FOEHN_CALM = 75


def _valley_weather(gen, batch):
    """Wind speed, gust, precipitation (positive) and 7 pressure / humidity readings; the
    label is the foehn warming (standardised). At step 75 one station reports a calm hour:
    wind and gust exactly 0.0."""
    step = 0
    while True:
        skew = torch.exp(0.6 * torch.randn(batch, 3, generator=gen))
        rest = torch.randn(batch, 7, generator=gen)
        y = 0.8 * torch.log(skew[:, 0]) - 0.5 * rest[:, 0] + 0.3 * rest[:, 1] * rest[:, 2]
        x = torch.cat([skew, rest], 1)
        if step == FOEHN_CALM:
            x[3, 0] = 0.0
            x[3, 1] = 0.0
        step += 1
        yield x, y


@scenario(
    family="foehn_wind_warming_regressor",
    optimizer="Adadelta",
    cause="nonfinite",
    where=("log_in",),
    diverges=FOEHN_CALM,
    heldout=True,
    onset=FOEHN_CALM,
    note="A ReLU MLP predicting a valley's foehn warming from a station's wind speed, gust, "
    "precipitation and pressure / humidity readings, Adadelta (lr 1.0), MSE. A hand-written "
    "module log-transforms the skewed columns with torch.log where log1p (or a clamp) was "
    "meant; wind readings are positive until a calm hour at step 75 reports exactly 0.0, "
    "log(0) = -inf, and -inf times weights of both signs gives NaN in fc1: the loss is NaN "
    "at that step.",
)
def h180_foehn_log_of_calm(ctx: Context) -> None:
    gen = seeded(18007)
    model = FoehnNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    lows = []
    _train(
        ctx,
        model,
        opt,
        _valley_weather(gen, 64),
        140,
        F.mse_loss,
        watch=lambda s, o, x, y: lows.append(model.log_in.last_min),
    )
    at = FOEHN_CALM
    ctx.check("loss NaN first at the calm hour's step", _first_bad(ctx.losses) == at)
    ctx.check("log_in's output -inf at that step", len(lows) > at and lows[at] == -math.inf)
    ctx.check("log_in's output finite before", _finite(lows[:at]))
    ctx.check("loss fell before the calm hour", _fell(ctx.losses[:at]))


# -- hailstorm: radar gates sum-pooled in float16 --------------------------------------------------


class GateSumPool(nn.Module):
    """Sums per-gate features over the sweep's gates (a gate with no echo contributes 0)."""

    def __init__(self):
        super().__init__()
        self.last_max = 0.0

    def forward(self, h):
        pooled = h.sum(1)
        self.last_max = float(pooled.detach().float().abs().max())
        return pooled


class HailRadarNet(nn.Module):
    def __init__(self, d_gate=4, hidden=32, labels=3):
        super().__init__()
        self.gate = nn.Linear(d_gate, hidden)
        self.act = nn.ReLU()
        self.pool = GateSumPool()
        self.fc = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, labels)

    def forward(self, x):
        h = self.act(self.gate(x)) * (x[..., :1] > 0)
        return self.head(self.act2(self.fc(self.pool(h) / 256.0)))


HAIL_SQUALL = 70


def _radar_sweeps(gen, batch, gates=2048):
    """Per gate: reflectivity (dBZ), differential reflectivity (dB), correlation and range (km);
    gates with no echo are all 0. Labels (hail, graupel, heavy rain) follow the core's
    reflectivity. Scattered cells light up 2-6% of the gates; from step 70 the season's squall
    lines light up 60-90%."""
    rng = torch.linspace(1.0, 230.0, gates)
    step = 0
    while True:
        frac = 0.02 + 0.04 * torch.rand(batch, 1, generator=gen)
        if step >= HAIL_SQUALL:
            frac = 0.6 + 0.3 * torch.rand(batch, 1, generator=gen)
        echo = torch.rand(batch, gates, generator=gen) < frac
        core = 20.0 + 45.0 * torch.rand(batch, 1, generator=gen)
        dbz = (core - 15.0 * torch.rand(batch, gates, generator=gen)).clamp(min=1.0)
        zdr = 0.5 + 2.0 * torch.rand(batch, gates, generator=gen)
        rho = 0.9 + 0.1 * torch.rand(batch, gates, generator=gen)
        x = torch.stack([dbz, zdr, rho, rng.expand(batch, gates)], -1) * echo[..., None]
        c = core[:, 0]
        y = torch.stack([(c > 52).float(), ((c > 40) & (c < 56)).float(), (c > 35).float()], -1)
        step += 1
        yield x, y


@scenario(
    family="hailstorm_radar_gate_sumpool_fp16_mlp",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("pool",),
    diverges=HAIL_SQUALL,
    heldout=True,
    onset=HAIL_SQUALL,
    note="A net flagging hail, graupel and heavy rain from a 2048-gate radar sweep (per gate: "
    "dBZ, ZDR, correlation, range in km): a per-gate Linear + ReLU, a hand-written module "
    "summing the gate features over the sweep (then divided by 256), two layers; NAdam, BCE "
    "with logits, fp16 autocast with a torch.amp.GradScaler. The sum is taken on the float16 "
    "features autocast produced: scattered convective cells light a few percent of the "
    "gates and the sums stay in the thousands, but from step 70 the loader reaches the "
    "season's squall lines, which light most of the gates, the sums pass 65504 and are inf; "
    "inf times weights of both signs is NaN, every step from then has a NaN loss and the "
    "scaler skips it and halves its scale again and again. In float32 the same batches give "
    "a finite loss",
)
def h180_hailstorm_fp16_gate_sum(ctx: Context) -> None:
    gen = seeded(18008)
    model = HailRadarNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    peak, fp32_ok = [], []

    def watch(step, out, x, y):
        peak.append(model.pool.last_max)
        if step in (HAIL_SQUALL, HAIL_SQUALL + 5):
            with torch.no_grad():
                fp32_ok.append(
                    math.isfinite(float(F.binary_cross_entropy_with_logits(model(x), y)))
                )

    _train(
        ctx,
        model,
        opt,
        _radar_sweeps(gen, 16),
        100,
        F.binary_cross_entropy_with_logits,
        scaler=scaler,
        watch=watch,
        stop_on_nan=False,
    )
    at = HAIL_SQUALL
    ctx.check("loss finite before the squall lines", _finite(ctx.losses[:at]))
    ctx.check("loss non-finite first at step 70", _first_bad(ctx.losses) == at)
    ctx.check(
        "float16 gate sum inf from step 70 only",
        max(peak[:at]) < 65504 and all(not math.isfinite(p) for p in peak[at:]),
    )
    ctx.check("same batches finite in float32", len(fp32_ok) == 2 and all(fp32_ok))
    ctx.check(
        "scaler's scale fell 1000x after the onset", ctx.scales[-1] < ctx.scales[at - 1] / 1000
    )
    ctx.check("loss fell before the onset", _fell(ctx.losses[:at]))


# -- salmon run: a fish counter's 65535 sentinel under Adam ----------------------------------------

SALMON_GLITCH = 30
SALMON_LR = 1e-3


def _weir_counts(gen, batch, d_in=12, seed=9):
    """River flow, temperature, tide and lunar readings; the label is the hourly salmon count at
    the weir's counter (Poisson). At step 30 one record holds the counter's error sentinel
    65535 (uint16 max) where a count of a few fish belongs."""
    g = torch.Generator().manual_seed(seed)
    w = 0.5 * torch.randn(d_in, generator=g)
    step = 0
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(1.0 + torch.tanh(x @ w / 2))
        y = torch.poisson(rate, generator=gen)
        if step == SALMON_GLITCH:
            y[7] = 65535.0
        step += 1
        yield x, y


@scenario(
    family="salmon_run_weir_count_poisson_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=SALMON_GLITCH,
    note="A SiLU MLP predicting the hourly salmon count at a river weir's counter from 12 flow, "
    "temperature, tide and moon readings, Poisson NLL on a log rate, Adam (betas 0.9, 0.999) "
    "at 1e-3, batches of 32. At step 30 one record holds the counter's error sentinel 65535 "
    "where a count of a few fish belongs; the gradient of that step is over a thousand times "
    "the usual and fills Adam's second moment: for the rest of the run the updates are about "
    "a tenth of what they were, and the held-out loss, falling fast before, creeps down at a "
    "small fraction of that rate",
)
def h180_salmon_counter_sentinel(ctx: Context) -> None:
    gen = seeded(18009)
    model = Trunk(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=SALMON_LR)
    probe_x, probe_y = next(_weir_counts(torch.Generator().manual_seed(99), 512))
    moved, probe = [], []
    snap = {}

    def before(step):
        snap["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        moved.append(
            math.sqrt(
                sum(
                    float(((p.detach() - w) ** 2).sum())
                    for p, w in zip(model.parameters(), snap["w"], strict=True)
                )
            )
        )
        with torch.no_grad():
            probe.append(float(F.poisson_nll_loss(model(probe_x), probe_y, log_input=True)))

    _train(
        ctx,
        model,
        opt,
        _weir_counts(gen, 32),
        250,
        lambda o, y: F.poisson_nll_loss(o, y, log_input=True),
        before=before,
        after=after,
    )
    at = SALMON_GLITCH
    gn = ctx.grad_norms
    ctx.check(
        "gradient 1000x the preceding median at the onset",
        gn[at] > 1000 * _median(gn[at - 20 : at]),
    )
    ctx.check(
        "updates 10x smaller than just before the onset over the rest of the run",
        _median(moved[at + 30 :]) < _median(moved[at - 10 : at]) / 10,
    )
    ctx.check("held-out probe loss fell before the onset", probe[at - 1] < probe[0] - 0.3)
    ctx.check(
        "probe loss fell less over the 200 steps after the onset than over the 30 before",
        probe[at + 10] - min(probe[at + 10 :]) < 0.5 * (probe[0] - probe[at - 1]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- dovetail: a sparse autoencoder's bias init on a ReLU regressor -------------------------------

DOVETAIL_BIAS = -1.0


@scenario(
    family="cabinetmaker_dovetail_fit_huber_mlp",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) predicting how tight a cabinetmaker's dovetail joint "
    "fits from 14 saw-kerf, chisel and timber-moisture readings (standardised), RMSprop at "
    "1e-2, Huber loss. The init helper was ported from a sparse autoencoder, where a negative "
    "bias sets a sparsity threshold, and sets every hidden bias to -1.0: fc1's units fire on "
    "a few percent of inputs, and fc2's pre-activations are below zero for every input from "
    "the first step. Its ReLUs never fire, no gradient reaches fc1 or fc2, and the net is stuck "
    "predicting a constant through the head's bias.",
)
def h180_dovetail_sparse_bias_init(ctx: Context) -> None:
    gen = seeded(18010)
    model = Trunk(14, hidden=64)
    for lin in (model.fc1, model.fc2):
        nn.init.constant_(lin.bias, DOVETAIL_BIAS)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    acts = {}
    fire1, dead2 = [], []
    model.act1.register_forward_hook(lambda m, i, o: acts.__setitem__("a1", o))
    model.act2.register_forward_hook(lambda m, i, o: acts.__setitem__("a2", o))

    def watch(step, out, x, y):
        fire1.append(float((acts["a1"].detach() > 0).float().mean()))
        dead2.append(dead_fraction(acts["a2"].detach()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 14, seed=10),
        200,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        watch=watch,
    )
    ctx.check("every fc2 unit dead on every batch", min(dead2) == 1.0)
    ctx.check("fc1's units fire on under 10% of inputs", max(fire1) < 0.1)
    ctx.check(
        "loss at the end no lower than 80% of the first steps'", not _fell(ctx.losses, ratio=0.8)
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="tenpin_lane_oil_pattern_classifier",
    optimizer="SGD(momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP naming a tenpin bowling lane's oil pattern from an 8x8 oil-depth map "
    "(the digits), SGD momentum under OneCycleLR (max lr 0.1, momentum cycled), clip_grad_norm_ "
    "at 2, cross-entropy.",
)
def h180_control_tenpin_onecycle(ctx: Context) -> None:
    gen = seeded(18011)
    model = Trunk(64, hidden=96, out=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class ChantAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        y = torch.softmax(logits.masked_fill(mask, float("-inf")), -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class ChantBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = ChantAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(self.act(self.fc(self.ln2(x))))


class ChantLM(nn.Module):
    def __init__(self, vocab=128, dim=48, heads=4, layers=2, context=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(ChantBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok.weight
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@scenario(
    family="gregorian_chant_neume_tied_transformer",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A two-block pre-LN causal transformer (hand-written attention, LayerNorm, GELU MLP, "
    "lm_head tied to the token embedding) modelling a byte transcription of neume sequences, "
    "AdamW with decay only on matrices, 20 warm-up steps then cosine decay by LambdaLR, "
    "clip_grad_norm_ at 1.0, cross-entropy with label smoothing 0.05.",
)
def h180_control_chant_tied_transformer(ctx: Context) -> None:
    gen = seeded(18012)
    model = ChantLM()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.95),
    )
    steps, warm = 160, 20

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _train(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        steps,
        lambda o, y: F.cross_entropy(
            o.reshape(-1, o.shape[-1]), y.reshape(-1), label_smoothing=0.05
        ),
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell by 30%", _fell(ctx.losses, ratio=0.7))
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="ice_sculpture_melt_rate_fp16_silu_mlp",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) predicting an ice sculpture's melt rate (standardised) "
    "from 16 sun, wind and carving-depth readings with noisy labels, fp16 autocast with a "
    "torch.amp.GradScaler, RAdam, Huber loss, gradient accumulation over 2 micro-batches, "
    "clip_grad_norm_ at 5 after unscaling, ReduceLROnPlateau.",
)
def h180_control_ice_sculpture_fp16(ctx: Context) -> None:
    gen = seeded(18013)
    model = Trunk(16, hidden=64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 16, seed=13, noise=0.2),
        160,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        clip=5.0,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("loss finite throughout", _finite(ctx.losses))
