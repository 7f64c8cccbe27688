"""Held-out set 218 (``h218_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: an ektara drone-phrase GRU language model with tied
embeddings whose z-loss was added with the wrong sign, a lithophone stone-strike classifier with
a hand-written attention layer whose `qk_norm` config key was misspelt, a gansey stitch-motif
classifier fine-tuned with a layer-wise rate decay typed 0.05 for 0.85, a microburst gust
regressor fed one reading of 65535 (the anemometer's no-data code), a moonquake count Poisson
net taking the log of a ReLU, a bossaball rally tanh RNN whose recurrent init used the input
size, a pargeting plaster-cure tanh regressor whose ExponentialLR gamma was typed 1.02 for 0.98,
a shibori dye-resist classifier whose loss normaliser was reset to 1 by a validation hook for
one step, a fogbow brightness regressor with a hand-written weight decay of the wrong sign, a
zorbing roll-outcome cosine classifier whose CLIP-style logit scale was initialised without its
log, and three controls (an udu strike 1-D CNN under bfloat16 autocast, a sgraffito
scratch-depth regressor under Adadelta, a rebab bowing-phrase tied GRU language model).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


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
    accumulate=1,
    objective=None,
    amp_dtype=None,
):
    """The file's training loop. ``before(step)`` runs first, ``watch(step, out, x, y)`` after
    the forward pass, ``after(step)`` after the optimizer step; ``objective(step, out, loss)``
    returns what is backpropagated (the logged loss is ``loss_fn``'s); ``amp_dtype`` turns on
    CPU autocast. Stops after logging a NaN loss."""
    ctx.attach(model, opt)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16, enabled=bool(amp_dtype)):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = objective(step, out.float(), loss) if objective is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
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


def _phrases(gen, batch, length, vocab, seed):
    """Token phrases from a fixed sparse Markov chain (each note has three likely successors)."""
    g = torch.Generator().manual_seed(seed)
    nxt = torch.randint(0, vocab, (vocab, 3), generator=g)
    while True:
        seq = torch.empty(batch, length + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, vocab, (batch,), generator=gen)
        for t in range(length):
            pick = torch.randint(0, 3, (batch,), generator=gen)
            jump = torch.rand(batch, generator=gen) < 0.1
            rnd = torch.randint(0, vocab, (batch,), generator=gen)
            seq[:, t + 1] = torch.where(jump, rnd, nxt[seq[:, t], pick])
        yield seq[:, :-1], seq[:, 1:]


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


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


# -- ektara / rebab: a GRU language model with tied input and output embeddings --------------------


class TiedGRULM(nn.Module):
    """embed -> GRU -> LayerNorm -> lm_head, lm_head.weight is embed.weight."""

    def __init__(self, vocab=32, dim=48):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.ln = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.lm_head.weight = self.embed.weight

    def forward(self, idx):
        h, _ = self.rnn(self.embed(idx))
        return self.lm_head(self.ln(h))


def _lm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _z(out):
    return torch.logsumexp(out, dim=-1).pow(2).mean()


@scenario(
    family="ektara_drone_phrase_tied_gru_lm",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("lm_head", "embed"),
    diverges=None,
    heldout=True,
    note="A GRU language model (embed, rnn, ln, lm_head) over phrases of ektara drone notes "
    "(32 note tokens from a sparse Markov chain), input and output embeddings tied "
    "(lm_head.weight is embed.weight), AdamW at 3e-3, cross-entropy plus a z-loss "
    "with `z_loss: 1e-2` times logsumexp(logits)^2. The z-loss was added as `loss - z_weight * z` (the sign "
    "flipped when it was moved into a helper): the objective now rewards a large log-partition "
    "and the tied embedding table grows without bound; the largest head logit grows from "
    "about 0.3 to over 30 within 200 steps and is still climbing; the logged cross-entropy "
    "falls first and then creeps back up; finite.",
)
def h218_ektara_tied_lm_zloss_sign(ctx: Context) -> None:
    gen = seeded(21801)
    model = TiedGRULM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    size = {}

    def watch(step, out, x, y):
        size[step] = float(out.detach().abs().amax(-1).mean())

    def objective(step, out, loss):
        return loss - 1e-2 * _z(out)  # meant: loss + 1e-2 * z

    _train(
        ctx,
        model,
        opt,
        _phrases(gen, 32, 24, 32, seed=1),
        200,
        _lm_loss,
        classifier=True,
        watch=watch,
        objective=objective,
    )
    ls = ctx.losses
    early = _mean([size[s] for s in range(5)])
    mid = _mean([size[s] for s in range(90, 100)])
    late = _mean([size[s] for s in range(190, 200)])
    ctx.check("largest head logit grew over 20-fold", late > 20 * early)
    ctx.check("still growing in the second half (last 10 over 1.3x steps 90-99)", late > 1.3 * mid)
    table = float(model.embed.weight.detach().norm())
    ctx.check("embedding table norm grew over 5-fold", table > 5 * 0.02 * math.sqrt(32 * 48))
    ctx.check("finite", _finite(ls))


@scenario(
    family="rebab_bowing_phrase_tied_gru_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="The same tied-embedding GRU language model (embed, rnn, ln, lm_head with lm_head.weight "
    "the embedding table) over phrases of rebab bowing figures (32 tokens from a sparse Markov "
    "chain), AdamW at 3e-3 with weight decay 0.01, a 20-step warm-up then cosine decay, "
    "clipping at 1.0, cross-entropy plus the z-loss 1e-4 * logsumexp^2 with the right sign. "
    "A healthy run.",
)
def h218_rebab_tied_lm_control(ctx: Context) -> None:
    gen = seeded(21813)
    model = TiedGRULM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def shape(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / 180))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    _train(
        ctx,
        model,
        opt,
        _phrases(gen, 32, 24, 32, seed=13),
        200,
        _lm_loss,
        classifier=True,
        sched=sched,
        clip=1.0,
        objective=lambda step, out, loss: loss + 1e-4 * _z(out),
    )
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.7))


# -- lithophone: a config key misspelt, so the recipe's QK-LayerNorm is off ------------------------


class DotAttention(nn.Module):
    """Multi-head self-attention, logits q . k / sqrt(d_head), optional LayerNorm on q and k."""

    def __init__(self, dim, heads=2, qk_norm=False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.last_logits = None

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        q, k = self.q_norm(q), self.k_norm(k)
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        self.last_logits = logits.detach()
        y = torch.softmax(logits, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class StrikeNet(nn.Module):
    def __init__(self, feat=6, dim=32, classes=4, config=None):
        super().__init__()
        config = config or {}
        self.embed = nn.Linear(feat, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = DotAttention(dim, qk_norm=config.get("qk_norm", False))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], 1)
        h = h + self.attn(h)
        return self.head(self.ln(h[:, 0]))


def _strikes(gen, batch, length=24, feat=6, classes=4):
    """Sequences of stone strikes; one is flagged (feature 0) and its loudest of features 1..4
    is the label."""
    while True:
        x = torch.randn(batch, length, feat, generator=gen)
        x[..., 0] = 0.0
        lead = torch.randint(0, length, (batch,), generator=gen)
        x[torch.arange(batch), lead, 0] = 3.0
        y = x[torch.arange(batch), lead, 1 : 1 + classes].argmax(-1)
        yield x, y


@scenario(
    family="lithophone_stone_strike_attention_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A CLS token and one hand-written multi-head self-attention layer (qkv, proj, logits "
    "q . k / sqrt(d_head)) over 24 strikes of a lithophone recording, classifying the stone "
    "of the flagged strike (4 kinds), Adam at 1e-2 without weight decay, cross-entropy. The "
    "recipe sets `qk_norm: true` (LayerNorm on queries and keys); the config file spells it "
    "`qknorm`, the loader ignores unknown keys and the default is off. Sharper attention to "
    "the flagged strike always lowers the loss, so the q and k projections grow unchecked: "
    "the attention logits go from about 0.25 to over 20-fold that within 40 steps and stay "
    "there; the loss is finite.",
)
def h218_lithophone_qk_norm_key_typo(ctx: Context) -> None:
    gen = seeded(21802)
    model = StrikeNet(config={"qknorm": True})  # meant: {"qk_norm": True}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    size = {}

    def watch(step, out, x, y):
        size[step] = float(model.attn.last_logits.abs().amax(-1).mean())

    _train(ctx, model, opt, _strikes(gen, 64), 200, F.cross_entropy, classifier=True, watch=watch)
    ls = ctx.losses
    early = _mean([size[s] for s in range(5)])
    late = _mean([size[s] for s in range(190, 200)])
    ctx.check("attention logits grew more than 20-fold", late > 20 * early)
    ctx.check("mean largest attention logit past 10 at the end", late > 10)
    ctx.check("loss fell and is finite", _fell(ls, ratio=0.5))


# -- gansey: layer-wise rate decay typed 0.05 for 0.85 -----------------------------------------------


class KnitBlock(nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.fc = nn.Linear(a, b)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.fc(x))


class MotifNet(nn.Module):
    def __init__(self, d_in=20, hidden=64, classes=6, depth=4):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.blocks = nn.ModuleList(
            KnitBlock(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


@scenario(
    family="gansey_knit_stitch_motif_llrd_classifier",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("blocks.0", "blocks.0.fc", "blocks.1", "blocks.1.fc"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (blocks.0-3 each fc + act, then head) classifying the motif of a gansey "
    "jumper panel (6 motifs: cable, moss, ladder, ...) from 20 standardised stitch-chart "
    "readings, fine-tuned with NAdam at 2e-3 and layer-wise rate decay: the group of block i "
    "gets base * decay ** (4 - i). The config reads `llrd: 0.05` for 0.85, so blocks.0 trains "
    "at about 1e-8 and blocks.1 at 2.5e-7: their updates are under 1e-6 of their weights per "
    "step while the head's are over 1e-4; the loss falls slowly on the upper layers alone; finite.",
)
def h218_gansey_llrd_typo(ctx: Context) -> None:
    gen = seeded(21803)
    model = MotifNet()
    base, decay = 2e-3, 0.05  # meant: decay 0.85
    groups = [
        {"params": b.parameters(), "lr": base * decay ** (4 - i)}
        for i, b in enumerate(model.blocks)
    ]
    groups.append({"params": model.head.parameters(), "lr": base})
    opt = torch.optim.NAdam(groups)
    watched = {"blocks.0": model.blocks[0].fc.weight, "blocks.1": model.blocks[1].fc.weight}
    watched["head"] = model.head.weight
    ratio = {k: [] for k in watched}
    prev = {}

    def before(step):
        for k, p in watched.items():
            prev[k] = p.detach().clone()

    def after(step):
        for k, p in watched.items():
            ratio[k].append(float((p.detach() - prev[k]).norm() / prev[k].norm()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 6, seed=3, noise=0.6),
        150,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
    )
    ls = ctx.losses
    ctx.check("blocks.0 update ratio under 1e-6 (median)", _median(ratio["blocks.0"]) < 1e-6)
    ctx.check("blocks.1 update ratio under 1e-5 (median)", _median(ratio["blocks.1"]) < 1e-5)
    ctx.check("head update ratio over 1e-4 (median)", _median(ratio["head"]) > 1e-4)
    ctx.check("loss finite", _finite(ls))


# -- microburst: one anemometer reading of 65535, the logger's no-data code ------------------------


@scenario(
    family="microburst_outflow_gust_relu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting the peak outflow gust of a microburst "
    "(standardised) from 16 readings of a surface anemometer network standardised with the "
    "training set's mean and spread, RMSprop at 1e-3, MSE. At step 110 one logger's record "
    "in the batch carries 65535 (the uint16 no-data code) in its radial-wind channel, which "
    "the loader does not filter: that one sample standardises to several thousand; the loss "
    "and the gradient of that step are thousands of times their usual size. The other batches "
    "are clean.",
)
def h218_microburst_nodata_code(ctx: Context) -> None:
    gen = seeded(21804)
    model = Stack(16, hidden=64)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    mean, spread = 8.0, 6.0  # m/s, the radial-wind channel's training statistics
    clean = _readings(gen, 64, 16, seed=4, noise=0.1)
    seen = {}

    def batches():
        step = 0
        while True:
            x, y = next(clean)
            if step == 110:
                x = x.clone()
                x[17, 5] = (65535.0 - mean) / spread
            seen[step] = float(x.abs().max())
            step += 1
            yield x, y

    _train(ctx, model, opt, batches(), 220, F.mse_loss)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("one input past 1000 at step 110", seen[110] > 1000)
    ctx.check("every other batch under 10", max(v for s, v in seen.items() if s != 110) < 10)
    ctx.check(
        "loss at step 110 over 100x the median of steps 90-109", ls[110] > 100 * _median(ls[90:110])
    )
    ctx.check(
        "gradient at step 110 over 100x the median of steps 90-109",
        gn[110] > 100 * _median(gn[90:110]),
    )
    ctx.check("loss fell before the onset", _fell(ls[:110], ratio=0.7))


# -- moonquake: the log of a ReLU rate --------------------------------------------------------------


class LogRelu(nn.Module):
    def forward(self, x):
        return torch.log(F.relu(x))  # meant: F.softplus(x).log() or the raw log-rate


class QuakeNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)
        self.log_rate = LogRelu()
        with torch.no_grad():
            self.head.bias.fill_(2.0)

    def forward(self, x):
        return self.log_rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _quakes(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        rate = torch.exp(0.9 * (x @ w) / math.sqrt(10) - 0.5)
        yield x, torch.poisson(rate, generator=gen)


def _poisson(log_rate, y):
    return F.poisson_nll_loss(log_rate, y, log_input=True)


@scenario(
    family="moonquake_event_count_poisson_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("log_rate",),
    diverges=4,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head, log_rate) predicting the number of shallow moonquakes a "
    "seismometer records per lunar day from 10 standardised readings (tidal stress, "
    "terminator crossing, ...), Adamax at 1e-2, Poisson NLL on the log-rate. The port wrote "
    "the log-rate as `log(relu(head))` (the head bias set to 2 so the rates start positive): "
    "on quiet days the rate is pushed down, within a few steps one sample's head output "
    "crosses 0, log(0) is -inf and the loss is NaN at step 4.",
)
def h218_moonquake_log_relu(ctx: Context) -> None:
    gen = seeded(21805)
    model = QuakeNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    zero_out = {}

    def watch(step, out, x, y):
        zero_out[step] = bool(torch.isinf(out).any())

    _train(ctx, model, opt, _quakes(gen, 64, seed=5), 200, _poisson, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss NaN at step 4", bad == 4)
    ctx.check("log_rate gave -inf at the NaN step", bad is not None and zero_out.get(bad, False))
    ctx.check("finite before", bad is not None and _finite(ls[:bad]))


# -- bossaball: the recurrent init used the input size -----------------------------------------------


class TanhCell(nn.Module):
    def __init__(self, inp, hidden, std):
        super().__init__()
        self.w_ih = nn.Parameter(torch.randn(hidden, inp) / math.sqrt(inp))
        self.w_hh = nn.Parameter(torch.randn(hidden, hidden) * std)
        self.b = nn.Parameter(torch.zeros(hidden))

    def forward(self, x, h):
        return torch.tanh(x @ self.w_ih.T + h @ self.w_hh.T + self.b)


class RallyRNN(nn.Module):
    def __init__(self, inp=4, hidden=64, classes=3, std=None):
        super().__init__()
        self.cell = TanhCell(inp, hidden, std if std is not None else 1 / math.sqrt(inp))
        self.head = nn.Linear(hidden, classes)
        self.states = []

    def forward(self, x):
        h = torch.zeros(len(x), self.head.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


def _rallies(gen, batch, length=30, classes=3):
    """Touch sequences (4 readings per touch); the label is which of three readings summed over
    the rally is largest."""
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        yield x, x[..., :classes].sum(1).argmax(-1)


@scenario(
    family="bossaball_rally_touch_tanh_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh RNN cell (w_ih, w_hh) reading the 30 touches of a bossaball "
    "rally (4 readings each) and a head naming the winning side's scoring zone (3 kinds), "
    "plain SGD at 1e-2, cross-entropy. The recurrent weight was initialised with "
    "`std = 1 / sqrt(inp)` (inp = 4) for `1 / sqrt(hidden)` (hidden = 64): w_hh's spectral "
    "radius is about 4, the cell is chaotic, and the gradient grows through time: the "
    "gradient reaching the first hidden state is over 100x the one at the last, and the total "
    "gradient at step 0 is over 20x that of the same net with the intended init. SGD's "
    "steps are thrown around by the oversized gradients and the loss stays near chance "
    "(ln 3); finite.",
)
def h218_bossaball_rnn_init_input_size(ctx: Context) -> None:
    gen = seeded(21806)
    ref = RallyRNN(std=1 / math.sqrt(64))
    model = RallyRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    probe = next(_rallies(torch.Generator().manual_seed(56), 128))
    F.cross_entropy(ref(probe[0]), probe[1]).backward()
    ref_norm = grad_norm(ref)
    through = {}

    def after(step):
        if step == 0:
            through["first"] = float(model.states[0].grad.norm())
            through["last"] = float(model.states[-1].grad.norm())

    _train(ctx, model, opt, _rallies(gen, 64), 150, F.cross_entropy, classifier=True, after=after)
    gn = ctx.grad_norms
    ctx.check(
        "gradient at the first hidden state over 100x the last at step 0",
        through["first"] > 100 * through["last"],
    )
    ctx.check("total gradient at step 0 over 20x the intended init's", gn[0] > 20 * ref_norm)
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("loss stays near chance (last 20 above 0.9)", _mean(ls[-20:]) > 0.9)


# -- pargeting: an exponential decay typed 1.02 for 0.98 --------------------------------------------


@scenario(
    family="pargeting_plaster_relief_cure_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=130,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting the cure hardness of a pargeted lime-plaster "
    "relief (standardised) from 10 standardised readings (lime putty share, hair, humidity, "
    "days, ...), plain SGD at 0.03, MSE, with an ExponentialLR whose gamma was typed `1.02` "
    "for `0.98`: the rate grows 2% a step; lr x sharpness passes 2, the stability limit, "
    "near step 130 and the loss blows up near step 170.",
)
def h218_pargeting_exponential_gamma_typo(ctx: Context) -> None:
    gen = seeded(21807)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.03)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.02)  # meant: 0.98
    probe = next(_readings(torch.Generator().manual_seed(57), 256, 10, seed=7))
    prod = {}

    def before(step):
        if step % 5 == 0:
            prod[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=7), 200, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    cross = min((s for s, v in prod.items() if v > 2 and math.isfinite(v)), default=None)
    ctx.check("lr x sharpness below 1 at step 20", prod[20] < 1)
    ctx.check(
        "lr x sharpness first past 2 within 15 steps of the onset",
        cross is not None and abs(cross - 130) <= 15,
    )
    ctx.check("loss fell before the onset", _fell(ls[:120], ratio=0.6))
    late = [v if math.isfinite(v) else 1e30 for v in ls[130:]]
    ctx.check("loss past 20x its pre-onset level after the onset", max(late) > 20 * min(ls[:130]))


# -- shibori: a validation hook resets the loss normaliser to 1 for one step ------------------------


@scenario(
    family="shibori_dye_resist_pattern_relu_classifier",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) naming the shibori resist technique of an indigo-dyed "
    "cloth (5 kinds: arashi, itajime, kumo, ...) from 16 standardised readings of the dye "
    "pattern, SGD with Nesterov momentum 0.9 at 5e-3, cross-entropy summed per sample and "
    "divided by a `seen` counter the trainer keeps. The validation hook at step 100 resets "
    "the counter to 1 instead of the batch size before the next training step, so that one "
    "step's loss is divided by 1 instead of 64: a single gradient 64x too large. The data are "
    "normal and the logged (mean) loss is not; the run goes on; finite.",
)
def h218_shibori_normaliser_reset(ctx: Context) -> None:
    gen = seeded(21808)
    model = Stack(16, hidden=64, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)

    def objective(step, out, loss):
        seen = 1 if step == 100 else 64  # the validation hook's reset leaks into one step
        return loss * 64 / seen

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, seed=8),
        200,
        F.cross_entropy,
        classifier=True,
        objective=objective,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 100 over 30x the median of steps 80-99",
        gn[100] > 30 * _median(gn[80:100]),
    )
    ctx.check(
        "loss at step 100 within 1.5x of steps 90-99 (the data are normal)",
        ls[100] < 1.5 * _mean(ls[90:100]),
    )
    ctx.check("loss fell over the run and is finite", _fell(ls, ratio=0.7))


# -- fogbow: a hand-written weight decay with the wrong sign ----------------------------------------


@scenario(
    family="fogbow_arc_brightness_silu_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting the brightness of a fogbow arc "
    "(standardised) from 10 standardised readings (droplet size, sun elevation, fog depth, "
    "...), Adagrad at 5e-2, MSE, with a hand-written decoupled weight decay after each step "
    "written `p.mul_(1 + lr * wd)` for `1 - lr * wd` (wd 0.2): every weight is pushed outward "
    "by 1% a step while Adagrad's effective rate shrinks, so after an early fall the loss "
    "climbs slowly and steadily for the rest of the run; finite.",
)
def h218_fogbow_decay_sign(ctx: Context) -> None:
    gen = seeded(21809)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    wd = 0.2
    norm0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 5e-2 * wd)  # meant: 1 - lr * wd

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=9, noise=0.1), 300, F.mse_loss, after=after)
    ls = ctx.losses
    norm1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    low = min(_mean(ls[i : i + 10]) for i in range(0, 290, 10))
    ctx.check("loss at the end over 3x its lowest 10-step mean", _mean(ls[-10:]) > 3 * low)
    ctx.check("loss climbs over the second half", _mean(ls[-20:]) > 1.5 * _mean(ls[150:170]))
    ctx.check("weight norm grew over 2x", norm1 > 2 * norm0)
    ctx.check("finite", _finite(ls))


# -- zorbing: a CLIP-style logit scale initialised without its log ----------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.protos = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07))  # meant: math.log(1 / 0.07)

    def forward(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.protos, dim=-1).T * self.logit_scale.exp()


class RollNet(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="zorbing_hill_roll_outcome_cosine_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2) with a CLIP-style cosine head (class prototypes, logits "
    "cos * exp(logit_scale)) naming how a zorb's hill roll ends (4 kinds) from 12 "
    "standardised readings (slope, ball pressure, water fill, ...), Adam at 1e-3, "
    "cross-entropy. logit_scale was initialised to `1 / 0.07` instead of `log(1 / 0.07)` "
    "and then exponentiated: logits are scaled by about 1.6e6, and the float32 softmax "
    "rounds nearly every row to exactly 0 and 1 from the first step; the loss swings with "
    "the rows that are far wrong; finite.",
)
def h218_zorbing_logit_scale_no_log(ctx: Context) -> None:
    gen = seeded(21810)
    model = RollNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    frac = {}

    def watch(step, out, x, y):
        frac[step] = collapsed_fraction(out.detach(), y)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 4, seed=10, noise=0.8),
        120,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    p = torch.softmax(
        model(next(_kinds(torch.Generator().manual_seed(60), 256, 12, 4, seed=10))[0]), -1
    )
    ctx.check(
        "over a third of the rows collapsed to probability exactly 1 (steps 100-119)",
        _mean([frac[s] for s in range(100, 120)]) > 1 / 3,
    )
    ctx.check(
        "over 90% of rows have a probability exactly 1 at the end",
        float((p == 1.0).any(-1).float().mean()) > 0.9,
    )
    ctx.check("loss finite", _finite(ls))


# -- controls ------------------------------------------------------------------------------------


class StrikeCNN(nn.Module):
    def __init__(self, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _udu(gen, batch, n=64, classes=4):
    """Damped tones of an udu strike: the class sets the pitch; noise on top."""
    t = torch.arange(n) / n
    freqs = torch.tensor([3.0, 5.0, 8.0, 12.0])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        decay = 2 + 3 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(2 * math.pi * freqs[y][:, None] * t + phase) * torch.exp(-decay * t)
        yield x + 0.3 * torch.randn(batch, n, generator=gen), y


@scenario(
    family="udu_clay_drum_strike_bf16_conv1d",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A 1-D CNN (conv1, conv2, head over the mean of the feature map) naming the stroke of "
    "an udu clay drum (4 kinds by pitch) from 64-sample noisy damped tones, under bfloat16 "
    "autocast, AdamW at 3e-3 with weight decay 1e-2 under OneCycleLR, cross-entropy with "
    "label smoothing 0.05. A healthy run.",
)
def h218_udu_bf16_control(ctx: Context) -> None:
    gen = seeded(21811)
    model = StrikeCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=150)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.05)

    _train(
        ctx,
        model,
        opt,
        _udu(gen, 64),
        150,
        loss_fn,
        classifier=True,
        sched=sched,
        amp_dtype=torch.bfloat16,
    )
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.7))


@scenario(
    family="sgraffito_scratch_depth_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting the scratch depth of a sgraffito plaster "
    "panel (standardised) from 12 standardised readings (coat thickness, set time, tool "
    "angle, ...), Adadelta at 1.0, Huber loss, accumulation over 2 micro-batches of 32, "
    "clipping at 1.0 and ReduceLROnPlateau. A healthy run.",
)
def h218_sgraffito_adadelta_control(ctx: Context) -> None:
    gen = seeded(21812)
    model = Stack(12, hidden=64, act=nn.Tanh)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, seed=12, noise=0.1),
        200,
        F.huber_loss,
        sched=sched,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.6))
