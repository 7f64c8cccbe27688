"""Held-out set 173 (``h173_``): a Hugging Face BridgeTower text tower (model type
``bridgetower_text_model``) from a tiny config, and hand-written models of trades, crafts,
sports, instruments and natural phenomena not covered before: a juggling siteswap causal LM
through ``F.scaled_dot_product_attention`` with a tied head, an attention-pooled set model, an
x-vector-style 1-D conv embedder with an L2-normalised embedding, a residual MLP, a highway
network, a GRU tagger, a 1-D conv classifier and MLP classifiers and regressors.

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
    bert_batches,
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
    after=None,
    stop_on_nan=True,
):
    """The training loop. ``accumulate`` micro-batches a step; ``alter(step, x, y)`` changes a
    batch; ``before(step)`` runs first; ``watch(step, out, x, y)`` records; ``after(step)`` runs
    after the optimizer step."""
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
                ctx.targets(y.reshape(-1))
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
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
                sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step)
        if stop_on_nan and math.isnan(shown):
            break


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


class Regressor(nn.Module):
    def __init__(self, d_in, hidden=64, act=nn.ReLU, out=1):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _rel_move(now: torch.Tensor, before: torch.Tensor) -> float:
    return float((now - before).norm() / (before.norm() + 1e-12))


# -- juggling siteswaps: SDPA causal LM, QK-LayerNorm dropped in a port ---------------------------

SITESWAPS = [
    "3",
    "441",
    "531",
    "51",
    "423",
    "5551",
    "7531",
    "744",
    "633",
    "52512",
    "6316131",
    "7441",
    "55514",
    "5241",
    "534",
    "642",
    "71",
    "4",
    "5",
    "6424",
]


def _siteswap_batches(gen, batch, length=33):
    pats = [torch.tensor([int(c) for c in p]) for p in SITESWAPS]
    while True:
        rows = []
        for _ in range(batch):
            p = pats[int(torch.randint(0, len(pats), (1,), generator=gen))]
            phase = int(torch.randint(0, len(p), (1,), generator=gen))
            reps = p.repeat(length // len(p) + 2)[phase : phase + length]
            rows.append(reps)
        win = torch.stack(rows)
        yield win[:, :-1], win[:, 1:]


class SiteswapAttention(nn.Module):
    """Causal self-attention through F.scaled_dot_product_attention; ``qk_norm`` is the
    recipe's LayerNorm on queries and keys (the ported block ignores it)."""

    def __init__(self, dim, heads, qk_norm=False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.qk_norm = qk_norm
        self.last_logit = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        with torch.no_grad():
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            mask = torch.ones(t, t, dtype=torch.bool).tril()
            self.last_logit = float(logits.masked_fill(~mask, 0).abs().max())
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class SiteswapBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SiteswapAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class SiteswapLM(nn.Module):
    """Predicts the next throw of a juggling pattern; the head is tied to the embedding."""

    def __init__(self, vocab=10, dim=32, heads=2, layers=2, context=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(SiteswapBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _lm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    family="juggling_siteswap_sdpa_lm",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A two-block causal LM over juggling siteswap throws (periodic patterns such as 531, "
    "7441), attention through F.scaled_dot_product_attention, head tied to the embedding, "
    "Adam at lr 2e-2 and no weight decay, a recipe tuned with LayerNorm on queries and keys. "
    "The block was ported to SDPA and the config's 'qk_norm: true' is accepted and ignored: "
    "without it the q.k/sqrt(d) logits grow step after step until the attention is one-hot.",
)
def h173_siteswap_qk_norm_dropped(ctx: Context) -> None:
    gen = seeded(17301)
    model = SiteswapLM()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    peaks = []

    def watch(step, out, x, y):
        peaks.append(max(b.attn.last_logit for b in model.blocks))

    _loop(ctx, model, opt, _siteswap_batches(gen, 32), 250, _lm_loss, classifier=True, watch=watch)
    ctx.check("attention logits grew 20x from step 0", max(peaks[-10:]) > 20 * peaks[0])
    ctx.check("max attention logit passed 60", max(peaks) > 60)
    ctx.check(
        "still growing: last 20 steps above steps 60-80", _mean(peaks[-20:]) > _mean(peaks[60:80])
    )


# -- semaphore flags: a contrastive stage's temperature reused on the classifier's logits ----------


def _semaphore(gen, batch, noise=0.08):
    """Two arm angles (8 positions, unordered pairs: 28 letters and signs) read from a noisy pose
    tracker as (cos, sin) per arm plus 4 distractor channels."""
    pairs = torch.combinations(torch.arange(8), 2)
    while True:
        y = torch.randint(0, len(pairs), (batch,), generator=gen)
        ang = pairs[y].float() * (math.pi / 4) + noise * torch.randn(batch, 2, generator=gen)
        x = torch.cat([ang.cos(), ang.sin(), 0.5 * torch.randn(batch, 4, generator=gen)], 1)
        yield x, y


class SemaphoreNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 28)
        self.temperature = 4.0

    def forward(self, x):
        return self.head(self.body(x)) / self.temperature


SEMAPHORE_FLOOR = 34  # the step the annealed temperature passes the recipe's floor of 1.0


@scenario(
    family="semaphore_flag_letter_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=SEMAPHORE_FLOOR,
    note="A ReLU MLP reading the flag semaphore letter (28 arm-position pairs) from a pose "
    "tracker, Adagrad, cross-entropy on logits divided by a temperature the recipe anneals "
    "from 4 down to 1 (soft targets early, sharp later). The schedule was coded "
    "tau = 4 * 0.96 ** step without its max(1.0, ...): from step 34 tau keeps falling towards "
    "0.01, the logits are multiplied faster than the weights can shrink, and most rows' "
    "softmax rounds to exactly 1.0 on the target and 0 elsewhere, their gradient exactly zero.",
)
def h173_semaphore_temperature_no_floor(ctx: Context) -> None:
    gen = seeded(17302)
    model = SemaphoreNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    collapsed, taus = [], []

    def before(step):
        model.temperature = 4.0 * 0.96**step
        taus.append(model.temperature)

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _semaphore(gen, 64),
        160,
        F.cross_entropy,
        classifier=True,
        before=before,
        watch=watch,
    )
    ctx.check("no row collapsed over the first 20 steps", max(collapsed[:20]) == 0.0)
    ctx.check(
        "over 80% of rows' softmax exactly 1.0 over the last 30 steps",
        _mean(collapsed[-30:]) > 0.8,
    )
    ctx.check("temperature under 0.01 by the end", taus[-1] < 0.01)
    ctx.check(
        "temperature passed 1.0 at step 34", min(i for i, t in enumerate(taus) if t < 1.0) == 34
    )
    ctx.check("losses finite", _finite(ctx.losses))


# -- bookbinding: a checkpoint flush that skips the unscale of accumulated gradients --------------

BOOK_FLUSH = 90
BOOK_SCALE = 1024.0


class GlueNet(nn.Module):
    """Predicts the set time of a spine's glue from 10 readings (glue mix, humidity, board)."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.ln1 = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.gelu(self.ln1(self.fc1(x)))
        h = F.gelu(self.ln2(self.fc2(h)))
        return self.head(h).squeeze(-1)


@scenario(
    family="bookbinder_spine_glue_set_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=BOOK_FLUSH,
    note="A LayerNorm GELU MLP predicting a glued spine's set time, SGD with Nesterov momentum, "
    "Huber loss, gradient accumulation over 4 micro-batches with a static loss scale of 1024 "
    "kept from an fp16 recipe: finish_accumulation() divides the gradients by 1024 and clips "
    "them at 1.0 before optimizer.step(). At step 90 the checkpoint hook flushes the pending "
    "accumulation with its own clip_grad_norm_ and optimizer.step(), bypassing "
    "finish_accumulation(): the gradient is 1024x for one step, the clip at 1.0 turns it into an "
    "update far larger than the usual ones, and the run carries on.",
)
def h173_bookbinder_flush_skips_unscale(ctx: Context) -> None:
    gen = seeded(17303)
    model = GlueNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    data = _readings(gen, 16, 10, seed=3, noise=0.1)
    accum = 4
    ctx.attach(model, opt)
    for step in range(200):
        shown = 0.0
        for _ in range(accum):
            x, y = next(data)
            loss = F.huber_loss(model(x), y) / accum
            (loss * BOOK_SCALE).backward()
            shown += float(loss.detach())
        if step != BOOK_FLUSH:  # finish_accumulation(): unscale, then clip
            for p in model.parameters():
                p.grad.div_(BOOK_SCALE)
        # the checkpoint hook's flush clips too, but never unscales
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break
    g, ls, k = ctx.grad_norms, ctx.losses, BOOK_FLUSH
    ctx.check("gradient at the flush 100x the median before", g[k] > 100 * _median(g[k - 30 : k]))
    ctx.check(
        "one step: gradient back under 3x the median from 20 steps on",
        _median(g[k + 20 : k + 60]) < 3 * _median(g[k - 30 : k]),
    )
    ctx.check("loss fell before the flush", _mean(ls[k - 10 : k]) < 0.8 * _mean(ls[:10]))
    ctx.check("losses finite", _finite(ls))


# -- beehive scale: a tare that the firmware adds to every reading again --------------------------

HIVE_FIRMWARE = 40


@scenario(
    family="beehive_scale_weight_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    onset=HIVE_FIRMWARE,
    note="A SiLU MLP predicting a hive's weight from 12 standardised weather and flight-count "
    "readings, NAdam, MSE, trained online on the scales' stream. A firmware update at step 40 "
    "adds the stored tare to each reading and stores the result as the new tare: the targets "
    "drift upward a little more every step, faster than the model follows, and the loss "
    "creeps up for the rest of the run.",
)
def h173_beehive_tare_drift(ctx: Context) -> None:
    gen = seeded(17304)
    model = Regressor(12, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    stream = _readings(gen, 64, 12, seed=4, noise=0.1)
    tare = [0.0]

    def drifting():
        step = 0
        while True:
            x, y = next(stream)
            if step >= HIVE_FIRMWARE:
                tare[0] += 0.01 * (step - HIVE_FIRMWARE + 1)
            step += 1
            yield x, y + tare[0]

    _loop(ctx, model, opt, drifting(), 200, F.mse_loss)
    ls, k = ctx.losses, HIVE_FIRMWARE
    ctx.check("loss fell before the firmware update", _mean(ls[k - 10 : k]) < 0.8 * _mean(ls[:10]))
    ctx.check(
        "loss over the last 10 steps 20x the 10 before the update",
        _mean(ls[-10:]) > 20 * _mean(ls[k - 10 : k]),
    )
    ctx.check("climbing: last 40 steps above the 40 before", _mean(ls[-40:]) > _mean(ls[-80:-40]))
    ctx.check("losses finite", _finite(ls))


# -- bullroarer: an L2-normalised embedding with no epsilon meets digital silence -----------------

ROARER_SILENCE = 70


def _roarer_clips(gen, batch, frames=24, bands=12, classes=4):
    """Band energies of a whirled bullroarer: the class is the whirl speed, which sets the
    wobble rate of the energy across frames."""
    t = torch.arange(frames).float()
    bands_idx = torch.arange(bands).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = 0.3 + 0.25 * y.float()
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        wob = torch.sin(rate[:, None] * t[None] + phase)  # (b, frames)
        x = wob[:, None, :] * torch.cos(bands_idx[None, :, None] * 0.4)  # (b, bands, frames)
        x = x + 0.3 * torch.randn(batch, bands, frames, generator=gen)
        yield x, y


class L2Norm(nn.Module):
    def forward(self, x):
        return x / x.norm(dim=-1, keepdim=True)


class RoarerEmbedder(nn.Module):
    """x-vector-style: bias-free 1-D convs, mean and max pooling over frames, an embedding
    normalised to the unit sphere, a cosine-style linear head."""

    def __init__(self, bands=12, width=32, dim=16, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(bands, width, 3, bias=False)
        self.conv2 = nn.Conv1d(width, width, 3, dilation=2, bias=False)
        self.embed = nn.Linear(2 * width, dim, bias=False)
        self.norm = L2Norm()
        self.head = nn.Linear(dim, classes, bias=False)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        pooled = torch.cat([h.mean(-1), h.amax(-1)], 1)
        return 8.0 * self.head(self.norm(self.embed(pooled)))


@scenario(
    family="bullroarer_whirl_xvector_embedder",
    optimizer="Adam",
    cause="nonfinite",
    where=("norm",),
    diverges=ROARER_SILENCE,
    heldout=True,
    onset=ROARER_SILENCE,
    note="A bias-free 1-D conv x-vector embedder naming a bullroarer's whirl speed from band "
    "energies, the embedding normalised as x / x.norm() with no epsilon, Adam, cross-entropy. "
    "The batch at step 70 holds one clip from a recorder that dropped out (digital silence, all "
    "zeros): with no biases the embedding is exactly the zero vector, the normalisation is "
    "0/0, the loss is NaN and so is every gradient.",
)
def h173_bullroarer_silence_zero_norm(ctx: Context) -> None:
    gen = seeded(17305)
    model = RoarerEmbedder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == ROARER_SILENCE:
            x = x.clone()
            x[7] = 0.0
        return x, y

    _loop(
        ctx, model, opt, _roarer_clips(gen, 64), 120, F.cross_entropy, classifier=True, alter=alter
    )
    ls, k = ctx.losses, ROARER_SILENCE
    ctx.check("loss finite before the silent clip", _finite(ls[:k]))
    ctx.check("loss fell before it", _mean(ls[k - 10 : k]) < 0.8 * _mean(ls[:10]))
    ctx.check(f"loss first NaN at step {k}", _first_bad(ls) == k)
    ctx.check("gradient norm NaN at that step", math.isnan(ctx.grad_norms[k]))


# -- pyrocumulus: a hand softmax over levels, exp in fp16 under autocast --------------------------


def _sonde_profiles(gen, batch, levels=16, d_in=6):
    """Radiosonde levels over a wildfire (temperature, dew point, wind ...); the label is whether
    the smoke column's cloud top reaches the tropopause, set by the most unstable level."""
    w = torch.randn(d_in, generator=torch.Generator().manual_seed(6))
    while True:
        x = torch.randn(batch, levels, d_in, generator=gen)
        instab = (x @ w) / math.sqrt(d_in)
        y = (instab.amax(1) + 0.2 * torch.randn(batch, generator=gen) > 1.9).float()
        yield x, y


PYRO_FIRST = 38


class LevelPool(nn.Module):
    """Attention pooling over levels, the softmax written by hand (no max subtracted)."""

    def __init__(self, dim):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.last_score = 0.0

    def forward(self, h):
        s = self.score(h)  # (b, levels, 1)
        self.last_score = float(s.detach().float().max())
        w = torch.exp(s)
        w = w / w.sum(1, keepdim=True)
        return (w * h).sum(1)


class PyroNet(nn.Module):
    def __init__(self, d_in=6, dim=32):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d_in, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU())
        self.pool = LevelPool(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        return self.head(self.pool(self.enc(x))).squeeze(-1)


@scenario(
    family="pyrocumulus_cloud_top_attnpool_fp16",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("pool",),
    diverges=None,
    heldout=True,
    onset=PYRO_FIRST,
    note="A set model over 16 radiosonde levels above a wildfire saying whether the pyrocumulus "
    "top reaches the tropopause, BCE with logits, AdamW, fp16 autocast with a GradScaler. The "
    "attention pooling writes its softmax by hand as exp(s) / exp(s).sum() with no max "
    "subtracted; under autocast the scores come out of the Linear in float16, and once the "
    "pooling sharpens on the most unstable level a score passes 11.09 on the batches with "
    "the most unstable soundings, exp overflows float16's 65504 and inf/inf is NaN: from step "
    "38 the scaler skips such steps again and again and its scale collapses from 65536 to "
    "about 1e-4.",
)
def h173_pyrocumulus_hand_softmax_fp16(ctx: Context) -> None:
    gen = seeded(17306)
    model = PyroNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    scores = []
    _loop(
        ctx,
        model,
        opt,
        _sonde_profiles(gen, 64),
        200,
        F.binary_cross_entropy_with_logits,
        scaler=scaler,
        watch=lambda s, o, x, y: scores.append(model.pool.last_score),
        stop_on_nan=False,
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check(f"loss first non-finite at step {PYRO_FIRST}", bad == PYRO_FIRST)
    ctx.check("finite for the first 30 steps", _finite(ls[:30]))
    ctx.check("a pooling score passed 11.09 (exp past 65504)", max(scores) > 11.09)
    ctx.check("at least 15 steps non-finite (skipped)", sum(not math.isfinite(v) for v in ls) >= 15)
    ctx.check("grad scaler scale fell below 1e-2", min(ctx.scales) < 1e-2)


# -- tally sticks: Hugging Face BridgeTower text tower, a ratio read as an absolute lr -------------


class TallyClassifier(nn.Module):
    """Reads a tally stick's notches as tokens: are there more notches of kind 1 than kind 2?
    A BridgeTower text tower from a tiny config, mean-pooled, a linear head."""

    def __init__(self, vocab=128, dim=32):
        from transformers import AutoConfig
        from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerTextModel

        super().__init__()
        cfg = AutoConfig.for_model(
            "bridgetower_text_model",
            vocab_size=vocab,
            hidden_size=dim,
            num_attention_heads=2,
            num_hidden_layers=2,
            intermediate_size=4 * dim,
            max_position_embeddings=40,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.encoder = BridgeTowerTextModel(cfg)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        h = self.encoder(input_ids=x).last_hidden_state
        return self.head(h.mean(1))


@scenario(
    family="hf_bridgetower_text_tally_stick_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("encoder",),
    diverges=None,
    heldout=True,
    note="A Hugging Face BridgeTower text tower (model type bridgetower_text_model) from a tiny "
    "config, mean-pooled under a linear head, comparing two kinds of notches on a tally stick; "
    "AdamW with two param groups: the head at lr 3e-3 and the encoder at "
    "lr * cfg.backbone_lr. The config gives backbone_lr: 1e-5, an absolute learning rate, but "
    "the code reads it as a multiplier: the encoder trains at 3e-8, its updates about 1e-8 of "
    "its weights per step, frozen in effect while the head learns.",
)
def h173_tally_bridgetower_backbone_ratio(ctx: Context) -> None:
    gen = seeded(17307)
    model = TallyClassifier()
    lr, backbone_lr = 3e-3, 1e-5
    opt = torch.optim.AdamW(
        [
            {"params": model.encoder.parameters(), "lr": lr * backbone_lr},
            {"params": model.head.parameters(), "lr": lr},
        ],
        weight_decay=0.01,
    )
    q = model.encoder.encoder.layer[0].attention.self.query.weight
    q0, h0 = q.detach().clone(), model.head.weight.detach().clone()
    _loop(ctx, model, opt, bert_batches(gen, 32), 120, F.cross_entropy, classifier=True)
    enc_move = _rel_move(q.detach(), q0)
    head_move = _rel_move(model.head.weight.detach(), h0)
    ctx.check("encoder query weights moved under 1e-4 of their norm", enc_move < 1e-4)
    ctx.check("head weights moved over 10% of their norm", head_move > 0.1)
    ctx.check(
        "encoder lr 1e-5 of the head's",
        opt.param_groups[0]["lr"] < 1e-4 * opt.param_groups[1]["lr"],
    )
    ctx.check("losses finite", _finite(ctx.losses))


# -- fulgurite: a residual MLP whose branches all get the ReLU kaiming init, no normalisation -----


class ResBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc2(F.relu(self.fc1(x)))


class FulguriteResMLP(nn.Module):
    """Predicts a fulgurite's length from 9 strike and soil readings (peak current, moisture,
    sand grain size ...), a residual MLP with 8 blocks and no normalisation."""

    def __init__(self, d_in=9, width=48, depth=8):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        h = self.inp(x)
        self.stream = [h]
        for block in self.blocks:
            h = block(h)
            self.stream.append(h)
        return self.head(h).squeeze(-1)


@scenario(
    family="fulgurite_length_resmlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("inp", "blocks.0"),
    diverges="auto",
    heldout=True,
    note="A residual MLP of 8 blocks with no normalisation (the recipe's Fixup-style init "
    "zero-initialises each block's second layer), plain SGD, MSE. The init helper was rewritten "
    "as one loop applying kaiming_normal_(nonlinearity='relu') to every Linear, the residual "
    "branches' output layers included: each block triples the stream's variance, the gradient "
    "reaching the first block is about 80 times the last's, and the loss blows up.",
)
def h173_fulgurite_residual_init_loop(ctx: Context) -> None:
    gen = seeded(17308)
    model = FulguriteResMLP()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    data = _readings(gen, 64, 9, seed=8)
    x, y = next(_readings(torch.Generator().manual_seed(8), 64, 9, seed=8))
    loss = F.mse_loss(model(x), y)
    gs = torch.autograd.grad(loss, model.stream)
    grad_first, grad_last = float(gs[0].norm()), float(gs[-1].norm())
    _loop(ctx, model, opt, data, 80, F.mse_loss)
    ls = ctx.losses
    ctx.check("gradient at the first block's input 50x the last's", grad_first > 50 * grad_last)
    ctx.check(
        "loss blew up (non-finite or 1e4x the first)",
        _first_bad(ls) is not None or max(ls) > 1e4 * ls[0],
    )


# -- hot-spring sinter: one record's label taken from the cumulative column -----------------------

SINTER_BAD = 70


@scenario(
    family="hot_spring_sinter_growth_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SINTER_BAD,
    note="A tanh MLP predicting a hot spring's yearly silica-sinter growth from 10 standardised "
    "water readings (temperature, silica, pH, flow ...), SGD with momentum 0.9, MSE. One "
    "terrace survey sheet in the batch at step 70 was exported with its columns shifted: that "
    "record's label is the cumulative sinter thickness since the terrace formed, about 300 "
    "times the yearly growth. One loss thousands of times the usual and a gradient burst; the "
    "run recovers.",
)
def h173_sinter_cumulative_label(ctx: Context) -> None:
    gen = seeded(17309)
    model = Regressor(10, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seen = []

    def alter(step, x, y):
        if step == SINTER_BAD:
            y = y.clone()
            y[11] = 300.0 * y.abs().mean()
        seen.append(float(y.abs().max()))
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=9, noise=0.1),
        180,
        F.mse_loss,
        alter=alter,
        clip=5.0,
    )
    ls, g, k = ctx.losses, ctx.grad_norms, SINTER_BAD
    base = _median(ls[k - 30 : k])
    ctx.check("one label 50x the largest before", seen[k] > 50 * max(seen[:k]))
    ctx.check("loss at the bad batch 1000x the median before", ls[k] > 1000 * base)
    ctx.check("gradient at the bad batch 50x the median before", g[k] > 50 * _median(g[k - 30 : k]))
    ctx.check("recovered: last 40 steps under 2x the median before", _mean(ls[-40:]) < 2 * base)
    ctx.check("losses finite", _finite(ls))


# -- tinsmith: a highway net whose gate-bias init reached every Linear ---------------------------


class HighwayLayer(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.h = nn.Linear(width, width)
        self.t = nn.Linear(width, width)

    def forward(self, x):
        self.hidden = F.relu(self.h(x))
        gate = torch.sigmoid(self.t(x))
        return gate * self.hidden + (1 - gate) * x


class SeamHighway(nn.Module):
    """Grades a soldered tin seam (5 classes) from 16 iron-temperature, flux and joint-gap
    readings: an input layer, 4 highway layers, a linear head."""

    def __init__(self, d_in=16, width=64, depth=4, classes=5):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.layers = nn.ModuleList(HighwayLayer(width) for _ in range(depth))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


def _seams(gen, batch, d_in=16, classes=5):
    g = torch.Generator().manual_seed(10)
    w = torch.randn(d_in, classes, generator=g)
    v = torch.randn(d_in, classes, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        score = x @ w / math.sqrt(d_in) + torch.sin(x @ v / math.sqrt(d_in))
        yield x, (score + 0.3 * torch.randn(batch, classes, generator=gen)).argmax(1)


@scenario(
    family="tinsmith_seam_highway_net",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("layers.0.h", "layers.1.h", "layers.2.h", "layers.3.h"),
    diverges=None,
    heldout=True,
    note="A highway network (4 layers, ReLU transform, sigmoid gate) grading soldered tin seams, "
    "Adamax, cross-entropy. The recipe sets the gates' bias to -2 (carry by default); the init "
    "was written as model.apply(init) with 'if isinstance(m, nn.Linear): "
    "nn.init.constant_(m.bias, -2.0)', which also reaches the ReLU transform layers: their "
    "pre-activations sit far below zero, nearly every unit is silent on every input, gets no "
    "gradient and never comes back; the net learns only through the carry path.",
)
def h173_tinsmith_gate_bias_everywhere(ctx: Context) -> None:
    gen = seeded(17310)
    model = SeamHighway()

    def init(m):
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, -2.0)

    model.apply(init)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    w0 = [layer.h.weight.detach().clone() for layer in model.layers]
    dead = []

    def watch(step, out, x, y):
        dead.append(_mean([_dead(layer.hidden) for layer in model.layers]))

    _loop(ctx, model, opt, _seams(gen, 64), 150, F.cross_entropy, classifier=True, watch=watch)
    frozen = _mean(
        [
            float(((layer.h.weight.detach() - w).abs().amax(1) == 0).float().mean())
            for layer, w in zip(model.layers, w0, strict=True)
        ]
    )
    ctx.check("over 80% of transform units dead on every step", min(dead) > 0.8)
    ctx.check("over 70% of transform units' weights never moved", frozen > 0.7)
    ctx.check("losses finite", _finite(ctx.losses))


def _dead(h: torch.Tensor) -> float:
    return float((h <= 0).all(0).float().mean())


# -- controls -------------------------------------------------------------------------------------


def _paddle_strokes(gen, batch, length=24, d_in=6):
    """Kayak paddle IMU readings per stroke; the tag says whether the boat touched the gate on
    that stroke (a sharp yaw and a roll together)."""
    while True:
        x = torch.randn(batch, length, d_in, generator=gen)
        x[:, :, 0] = x[:, :, 0].cumsum(1) / 3.0
        touch = (x[:, :, 1] * x[:, :, 2] > 0.6) | (x[:, :, 0].abs() > 2.5)
        yield x, touch.long()


class GateTagger(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.gru(x)[0])


@scenario(
    family="kayak_slalom_gate_touch_gru_tagger",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a GRU tagging each paddle stroke of a slalom run as a gate touch or clean, "
    "AdamW with weight decay 0.05, 15 warm-up steps then cosine decay, clip_grad_norm_ at 1.",
)
def h173_kayak_gru_control(ctx: Context) -> None:
    gen = seeded(17311)
    model = GateTagger()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.05)
    steps, warm = 150, 15
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
        _paddle_strokes(gen, 32),
        steps,
        _lm_loss,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell by a third", _fell(ctx.losses, ratio=0.67))
    ctx.check("losses finite", _finite(ctx.losses))


def _cajon_hits(gen, batch, n=64, classes=4):
    """Short contact-mic waveforms of a cajon stroke: bass, slap, tip or ghost note, told apart
    by decay and brightness."""
    t = torch.arange(n).float() / n
    decay = torch.tensor([3.0, 9.0, 14.0, 20.0])
    freq = torch.tensor([4.0, 17.0, 11.0, 23.0])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        wave = (
            amp * torch.exp(-decay[y][:, None] * t) * torch.sin(2 * math.pi * freq[y][:, None] * t)
        )
        yield (wave + 0.15 * torch.randn(batch, n, generator=gen))[:, None], y


class CajonConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2, stride=2)
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        h = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], 1))


@scenario(
    family="cajon_stroke_fp16_conv1d",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a 1-D conv classifier of cajon strokes from contact-mic waveforms under fp16 "
    "autocast with a GradScaler, RAdam with OneCycleLR, label smoothing 0.1, clip_grad_norm_ "
    "at 2 after unscaling.",
)
def h173_cajon_fp16_control(ctx: Context) -> None:
    gen = seeded(17312)
    model = CajonConv()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _cajon_hits(gen, 64),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        scaler=torch.amp.GradScaler("cpu"),
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("losses finite", _finite(ctx.losses))


class PressNet(nn.Module):
    """Predicts the mean and log-variance of a cider press's juice yield from 8 readings."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def _press_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _pressings(gen, batch, d_in=8):
    w = torch.randn(d_in, generator=torch.Generator().manual_seed(13))
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        mean = torch.tanh(x @ w / math.sqrt(d_in)) + 0.2 * x[:, 3]
        sd = 0.1 + 0.2 * torch.sigmoid(2 * x[:, 5])
        yield x, mean + sd * torch.randn(batch, generator=gen)


@scenario(
    family="cider_press_juice_yield_nll_regressor",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="Control: a two-head tanh MLP (mean and log-variance of a cider pressing's juice "
    "yield) trained with the Gaussian NLL, RMSprop with param groups (weight decay on the "
    "weight matrices only), gradient accumulation over 2 and ReduceLROnPlateau.",
)
def h173_cider_press_nll_control(ctx: Context) -> None:
    gen = seeded(17313)
    model = PressNet()
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.RMSprop(
        [{"params": decay, "weight_decay": 1e-4}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _loop(ctx, model, opt, _pressings(gen, 32), 150, _press_nll, accumulate=2, sched=sched)
    ctx.check("loss fell by 0.5 nats", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.5)
    ctx.check("losses finite", _finite(ctx.losses))
