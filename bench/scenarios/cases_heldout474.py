"""Held-out set 474 (``h474_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a coppice-rotation regrowth segment-recurrent transformer (memory of the previous
segment, learnt relative position bias) whose config spells ``qk_nrom`` so the QK layer norm is
off at a large learning rate (attention logits grow, AdamW), a maille ring-weld temperature SiLU
regressor under fp16 autocast with a GradScaler fed a shard with the weld current in milliamps
for kiloamps (fc1 overflows fp16, NAdam), a cave-rope stretch GELU regressor whose calibration
gain is applied in place to the cached targets on every batch (the targets drift, the loss climbs
slowly, SGD momentum), a handpan tone-field decay ReLU Elman RNN whose recurrent matrix gets the
ReLU gain sqrt(2) (gradients grow through time, RMSprop), a marimba mallet-rebound tanh regressor
whose MultiStepLR gamma is typed 10 for 0.1 (full-batch SGD past 2 / sharpness), a rime-ice
accretion-grade ReLU classifier fed one shard with raw 65535 ADC codes (SGD, clipped), a fata
morgana mirage-height Huber regressor whose stage loss weight is read in percent for one step
(SGD Nesterov, clipped), a gilli-danda lift net taking sqrt(strike - rest) with no clamp (a stick
resting below its mark gives NaN, Adamax), a speleothem drip-rate two-group regressor whose stem
lr multiplier is typed 1e-6 for 1e-1 (ASGD) and a theremin hand-pitch classifier with a
temperature typed 0.004 for 4.0 (softmax saturates, Adadelta).

Controls: a shakuhachi ri-breath segment-recurrent transformer at a large learning rate kept
stable by a warm-up and QK layer norm (AdamW, cosine, clipping); a musical-saw bow-warble Conv1d
classifier (SGD momentum, OneCycleLR, label smoothing, accumulation over 2, clipping); an ice-halo
arc-brightness SiLU Huber regressor under fp16 autocast with a GradScaler (RAdam,
ReduceLROnPlateau, clipping after unscale).
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
    scaler=None,
    attach=True,
):
    """The file's training loop (fp16 autocast when a GradScaler is passed). ``before(step)``
    runs first, ``alter(step, x, y)`` changes a batch, ``backprop(step, loss)`` returns the loss
    actually backpropagated, ``after(step)`` runs after the optimizer step. Stops after a
    non-finite loss once ``ctx.step`` has seen it. ``attach=False``: a reference run."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            if scaler is not None:
                scaler.scale(total / accumulate).backward()
            else:
                (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


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


# -- the segment-recurrent transformer ----------------------------------------------------------------


class _SegAttention(nn.Module):
    """Attention over [memory of the previous segment; this segment] with a learnt relative
    position bias per head and distance, optional QK layer norm. Records its largest |logit|."""

    def __init__(self, dim, heads, span, qk_norm):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_bias = nn.Parameter(torch.zeros(heads, span))
        self.q_norm = nn.LayerNorm(self.hd) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.hd) if qk_norm else nn.Identity()
        self.max_logit = 0.0

    def forward(self, x, memory):
        b, t, d = x.shape
        full = torch.cat([memory, x], 1)
        m = memory.shape[1]
        q = self.q_norm(self.q(x).reshape(b, t, self.heads, self.hd).transpose(1, 2))
        k, v = self.kv(full).split(d, dim=-1)
        k = self.k_norm(k.reshape(b, m + t, self.heads, self.hd).transpose(1, 2))
        v = v.reshape(b, m + t, self.heads, self.hd).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        self.max_logit = float(logits.detach().abs().max())
        dist = (torch.arange(t)[:, None] + m) - torch.arange(m + t)[None, :]
        bias = self.rel_bias[:, dist.clamp(0, self.rel_bias.shape[1] - 1)]
        logits = (logits + bias).masked_fill(dist < 0, float("-inf"))
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _SegBlock(nn.Module):
    def __init__(self, dim, heads, span, qk_norm):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _SegAttention(dim, heads, span, qk_norm)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x, memory):
        x = x + self.attn(self.ln1(x), self.ln1(memory))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _SegmentTransformer(nn.Module):
    """Transformer-XL style: each layer also attends to the (detached) hidden states the layer
    saw on the previous segment."""

    def __init__(self, vocab=32, dim=32, heads=2, layers=2, seg=16, qk_norm=False):
        super().__init__()
        self.seg = seg
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_SegBlock(dim, heads, 2 * seg, qk_norm) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        """Logits for a long sequence, read segment by segment with a one-segment memory."""
        b = idx.shape[0]
        mems = [torch.zeros(b, 0, self.tok.embedding_dim) for _ in self.blocks]
        outs = []
        for s in range(0, idx.shape[1], self.seg):
            x = self.tok(idx[:, s : s + self.seg])
            new = []
            for block, mem in zip(self.blocks, mems, strict=True):
                new.append(x.detach())
                x = block(x, mem)
            mems = new
            outs.append(self.head(self.ln_f(x)))
        return torch.cat(outs, 1)

    def max_logit(self):
        return max(b.attn.max_logit for b in self.blocks)


def _cycles(gen, batch, length, vocab, seed):
    """Token sequences of a repeating motif (length 20 to 28, longer than a segment) with a
    little noise: the memory of the previous segment is needed to predict the repeat."""
    g = torch.Generator().manual_seed(seed)
    motifs = torch.randint(0, vocab, (64, 28), generator=g)
    while True:
        which = torch.randint(0, 64, (batch,), generator=gen)
        period = torch.randint(20, 29, (batch,), generator=gen)
        pos = torch.arange(length + 1)[None, :] % period[:, None]
        seq = motifs[which[:, None], pos]
        noise = torch.rand(batch, length + 1, generator=gen) < 0.0  # clean motifs
        seq = torch.where(noise, torch.randint(0, vocab, (batch, length + 1), generator=gen), seq)
        yield seq[:, :-1], seq[:, 1:]


def _lm(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


# -- 1. attention logits: qk_norm misspelt in the config ----------------------------------------------


@scenario(
    family="coppice_rotation_regrowth_segment_recurrent_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Coppice-rotation regrowth sequence model (a hand-written segment-recurrent "
    "transformer: each layer attends to a cached memory of the previous segment's hidden "
    "states, with a learnt relative position bias; cross-entropy, AdamW at a large lr 6e-2 "
    "with weight decay 0). The run config spells the key 'qk_nrom: true', so the QK layer "
    "norm the large lr relies on stays off: q.k/sqrt(d) grows step after step.",
)
def h474_coppice_qk_norm_misspelt(ctx) -> None:
    gen = seeded(4741)
    config = {"qk_nrom": True}
    model = _SegmentTransformer(qk_norm=config.get("qk_norm", False))
    opt = torch.optim.AdamW(model.parameters(), lr=6e-2, weight_decay=0.0)
    logits = []

    def after(step):
        logits.append(model.max_logit())

    losses, _ = _loop(ctx, model, opt, _cycles(gen, 16, 64, 32, 4741), 160, _lm, after=after)
    ctx.check("max attention logit over 20x its first steps'", logits[-1] > 20 * _mean(logits[:3]))
    ctx.check("max attention logit over 50", max(logits) > 50)
    ctx.check("still climbing over the last 60 steps", _mean(logits[-10:]) > _mean(logits[-70:-60]))
    ctx.check("no QK norm in the model", not isinstance(model.blocks[0].attn.q_norm, nn.LayerNorm))


# -- 2. amp overflow: the weld current in milliamps -------------------------------------------------

MAILLE_STEP = 100


@scenario(
    family="maille_ring_weld_temperature_fp16_silu_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=MAILLE_STEP,
    heldout=True,
    onset=MAILLE_STEP,
    note="Maille ring butt-weld temperature regressor (SiLU MLP on current, dwell and wire "
    "features, MSE, NAdam, fp16 autocast with a GradScaler). From step 100 the loader reads a "
    "new shard whose weld-current column is logged in milliamps where the others use kiloamps "
    "(x1e6): fc1's fp16 output overflows to inf and the loss is non-finite.",
)
def h474_maille_weld_current_milliamps(ctx) -> None:
    gen = seeded(4742)
    model = _Net(8, 48, 1, act=nn.SiLU)
    data = _readings(gen, 64, 8, seed=4742)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    seen = {}

    def alter(step, x, y):
        if step >= MAILLE_STEP:
            x = x.clone()
            x[:, 0] = (x[:, 0] + 3.0) * 1e6
            if "x" not in seen:
                seen["x"] = x
        return x, y

    losses, _ = _loop(ctx, model, opt, data, 160, F.mse_loss, alter=alter, scaler=scaler)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.float16):
            h16 = model.fc1(seen["x"])
        h32 = model.fc1(seen["x"])
    ctx.check("finite before the shard", _finite(losses[:MAILLE_STEP]))
    ctx.check("trained first", _mean(losses[90:100]) < 0.7 * _mean(losses[:10]))
    ctx.check("the loss non-finite at the shard", not math.isfinite(losses[MAILLE_STEP]))
    ctx.check("fc1's fp16 output has inf", bool(torch.isinf(h16).any()))
    ctx.check("fc1's float32 output stays finite", bool(torch.isfinite(h32).all()))


# -- 3. slow divergence: a calibration gain applied in place on every batch ------------------------


@scenario(
    family="cave_rope_stretch_drift_gelu_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Cave-rope stretch regressor (GELU MLP on load, age and wetness features, MSE, SGD "
    "momentum 0.9). The loader's calibration gain 1.01 is applied with an in-place mul_ to "
    "the cached target tensor on every batch instead of once: the targets drift upwards "
    "step after step, and after training the loss climbs slowly with no mechanism to name.",
)
def h474_cave_rope_gain_in_place(ctx) -> None:
    gen = seeded(4743)
    g = torch.Generator().manual_seed(4743)
    w = torch.randn(8, generator=g)
    xs = torch.randn(2048, 8, generator=g)
    ys = torch.tanh(xs @ w / math.sqrt(8)) + 1.0
    scales = []

    def data():
        while True:
            ys.mul_(1.01)
            scales.append(float(ys.abs().mean()))
            idx = torch.randint(0, 2048, (64,), generator=gen)
            yield xs[idx], ys[idx].clone()

    model = _Net(8, 64, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    losses, _ = _loop(ctx, model, opt, data(), 300, F.mse_loss)
    best = min(losses)
    best_at = losses.index(best)
    ctx.check("trained first", best < 0.3 * losses[0])
    ctx.check("the loss climbs over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("climbing over the last 100 steps", _mean(losses[-20:]) > _mean(losses[-100:-80]))
    ctx.check("best before the last third", best_at < 200)
    ctx.check("the targets drifted over 4x", scales[-1] > 4 * scales[0])
    ctx.check("finite, no blow-up", _finite(losses) and max(losses) < 1e4)


# -- 4. exploding gradients: the ReLU gain on a recurrent matrix ------------------------------------


class _ElmanCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.w_ih = nn.Linear(d_in, hidden)
        self.w_hh = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return F.relu(self.w_ih(x) + self.w_hh(h))


class _ToneFieldRNN(nn.Module):
    def __init__(self, d_in=4, hidden=48, gain=1.0):
        super().__init__()
        self.hidden = hidden
        self.cell = _ElmanCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():  # IRNN: identity recurrent init times a gain
            nn.init.eye_(self.cell.w_hh.weight).mul_(gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _envelopes(gen, batch, length=32):
    """Strike envelopes of a tone field (amplitude, two partials, noise); target: decay rate."""
    t = torch.arange(length) / length
    while True:
        rate = 1.0 + 3.0 * torch.rand(batch, generator=gen)
        amp = torch.exp(-rate[:, None] * t[None, :])
        p1 = amp * torch.sin(6.28 * 3 * t)[None, :]
        p2 = amp * torch.sin(6.28 * 5 * t + rate[:, None])
        noise = 0.05 * torch.randn(batch, length, generator=gen)
        x = torch.stack([amp, p1, p2, noise], -1) * 0.5
        yield x, (rate - 2.5) / 1.0


@scenario(
    family="handpan_tone_field_decay_relu_elman_rnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("cell.w_hh", "cell"),
    diverges=0,
    heldout=True,
    note="Handpan tone-field decay regressor (a hand-written ReLU Elman RNN over a 32-step "
    "strike envelope, MSE, RMSprop). The recurrent matrix is initialised with "
    "an identity (IRNN) times calculate_gain('relu') = sqrt(2), the gain copied from the "
    "feed-forward layers' init: each step through time multiplies the state and its gradient "
    "by 1.41; the loss is already over 1e6 at step 0 and never recovers.",
)
def h474_handpan_recurrent_relu_gain(ctx) -> None:
    gen = seeded(4744)
    model = _ToneFieldRNN(gain=nn.init.calculate_gain("relu"))
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    x0, y0 = next(_envelopes(torch.Generator().manual_seed(7), 64))

    def through_time(m):
        m.zero_grad()
        F.mse_loss(m(x0), y0).backward()
        first, last = m.states[0].grad.norm(), m.states[-1].grad.norm()
        m.zero_grad()
        return float(first / last)

    torch.manual_seed(4744)
    ratio = through_time(model)
    ref = _ToneFieldRNN(gain=1.0)
    ref_ratio = through_time(ref)
    losses, norms = _loop(ctx, model, opt, _envelopes(gen, 64), 150, F.mse_loss)
    ctx.check("the gradient at t=0 over 100x that at t=31", ratio > 100)
    ctx.check("under 10x at gain 1", ref_ratio < 10)
    ctx.check(
        "the loss over 1e6 at step 0 and after 100 steps",
        losses[0] > 1e6 and not _mean(losses[100:]) < 1e6,
    )


# -- 5. sharpness: a MultiStepLR gamma typed 10 for 0.1 ----------------------------------------------

MARIMBA_STEP = 100


@scenario(
    family="marimba_mallet_rebound_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=MARIMBA_STEP,
    note="Marimba mallet-rebound regressor (tanh MLP on mallet hardness, bar and strike "
    "features, MSE, full-batch SGD under MultiStepLR). The decay at step 100 has gamma typed "
    "10 for 0.1: the lr jumps tenfold, lr * sharpness crosses 2 and the loss blows up.",
)
def h474_marimba_steplr_gamma_typo(ctx) -> None:
    gen = seeded(4745)
    model = _Net(8, 48, 1, act=nn.Tanh)
    x, y = next(_readings(gen, 256, 8, seed=4745))
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=0.15)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[MARIMBA_STEP], gamma=10.0)
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (MARIMBA_STEP - 1, MARIMBA_STEP):
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 200, F.mse_loss, before=before, sched=sched)
    k = MARIMBA_STEP
    low = min(v for v in losses[:k])
    ctx.check("lr * sharpness under 2 before the decay", lrs[k - 1] * sharp[k - 1] < 2.0)
    ctx.check("lr * sharpness over 2 after it", lrs[k] * sharp[k] > 2.0)
    ctx.check(
        "the loss blows up over 100x its lowest after it",
        any(not math.isfinite(v) or v > 100 * low for v in losses[k:]),
    )
    ctx.check("trained first", low < 0.5 * losses[0])


# -- 6. data outlier: raw ADC codes in one shard ------------------------------------------------------

RIME_STEP = 120


@scenario(
    family="rime_ice_accretion_grade_relu_classifier",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=RIME_STEP,
    note="Rime-ice accretion grade classifier (ReLU MLP on wind, droplet and temperature "
    "features, cross-entropy, SGD with clipping at 1). One shard at step 120 comes from a "
    "station whose anemometer column holds the raw ADC code 65535 (not converted): one batch "
    "with a huge loss and gradient, which the run recovers from.",
)
def h474_rime_ice_raw_adc_shard(ctx) -> None:
    gen = seeded(4746)
    model = _Net(10, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == RIME_STEP:
            x = x.clone()
            x[:, 2] = 65535.0
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, seed=4746),
        240,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    k = RIME_STEP
    ctx.check("loss over 20x the median at the shard", losses[k] > 20 * _median(losses[k - 30 : k]))
    ctx.check("gradient over 10x the median there", norms[k] > 10 * _median(norms[k - 30 : k]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[k - 20 : k]))
    ctx.check("trained first", _mean(losses[k - 10 : k]) < 0.5 * losses[0])
    ctx.check("finite", _finite(losses))


# -- 7. gradient spike: a stage loss weight read in percent ------------------------------------------

FATA_STEP = 110


@scenario(
    family="fata_morgana_mirage_height_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=FATA_STEP,
    note="Fata morgana mirage-height regressor (tanh MLP on lapse-rate and sightline "
    "features, Huber, SGD Nesterov, clipping at 5). At the curriculum stage switch (step 110) "
    "the new stage's loss weight is read from a table kept in percent (100 for 1.0) for that "
    "one step: a 100x gradient on an ordinary logged loss; clipped, the run recovers.",
)
def h474_fata_morgana_weight_percent(ctx) -> None:
    gen = seeded(4747)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (100.0 if step == FATA_STEP else 1.0)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 8, seed=4747),
        220,
        F.huber_loss,
        backprop=backprop,
        clip=5.0,
    )
    k = FATA_STEP
    ctx.check("gradient over 50x the median there", norms[k] > 50 * _median(norms[k - 30 : k]))
    ctx.check("the logged loss is ordinary there", losses[k] < 2 * _median(losses[k - 30 : k]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[k - 20 : k]))
    ctx.check("finite", _finite(losses))


# -- 8. nonfinite: sqrt of a negative with no clamp ---------------------------------------------------


class _LiftFeature(nn.Module):
    """sqrt(strike height - rest height) * learnt scale: the launch speed feature."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return torch.cat([x[:, 2:], self.scale * torch.sqrt(x[:, :1] - x[:, 1:2])], 1)


class _LiftNet(nn.Module):
    def __init__(self, d_in=8):
        super().__init__()
        self.feat = _LiftFeature()
        self.net = _Net(d_in - 1, 48, 1, act=nn.SiLU)

    def forward(self, x):
        return self.net(self.feat(x))


GILLI_STEP = 90


@scenario(
    family="gilli_danda_lift_sqrt_feature_silu_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("feat",),
    diverges=GILLI_STEP,
    heldout=True,
    onset=GILLI_STEP,
    note="Gilli-danda lift-height net (SiLU MLP on a launch-speed feature sqrt(strike height "
    "- rest height) and swing features, MSE, Adamax). The feature has no clamp: at step 90 a "
    "batch holds a gilli resting below its mark (strike < rest), sqrt of a negative gives "
    "NaN and the loss is NaN.",
)
def h474_gilli_danda_sqrt_no_clamp(ctx) -> None:
    gen = seeded(4748)
    base = _readings(gen, 64, 6, seed=4748)

    def data():
        step = 0
        while True:
            x, y = next(base)
            rest = 0.2 * torch.rand(64, generator=gen)
            strike = rest + 0.1 + torch.rand(64, generator=gen)
            if step == GILLI_STEP:
                strike[5] = rest[5] - 0.05
            step += 1
            yield torch.cat([strike[:, None], rest[:, None], x], 1), y + 0.3 * (strike - rest)

    model = _LiftNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == GILLI_STEP:
            seen["x"] = x
        return x, y

    losses, _ = _loop(ctx, model, opt, data(), 140, F.mse_loss, alter=alter)
    with torch.no_grad():
        bad = model.feat(seen["x"])
    ctx.check("finite before", _finite(losses[:GILLI_STEP]))
    ctx.check("trained first", _mean(losses[80:90]) < 0.7 * _mean(losses[:10]))
    ctx.check("the loss NaN at step 90", math.isnan(losses[GILLI_STEP]))
    ctx.check("feat produces the NaN", bool(torch.isnan(bad).any()))


# -- 9. update ratio: a stem lr multiplier typed 1e-6 --------------------------------------------------


@scenario(
    family="speleothem_drip_rate_two_group_relu_regressor",
    optimizer="ASGD",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Speleothem drip-rate regressor (ReLU MLP on rainfall, soil and cave-air features, "
    "MSE, ASGD with two param groups). The stem's lr multiplier is typed 1e-6 for 1e-1: fc1 "
    "receives gradients but its updates are far below its weights' scale; the rest trains.",
)
def h474_speleothem_stem_lr_mult(ctx) -> None:
    gen = seeded(4749)
    model = _Net(8, 48, 1)
    base = 0.02
    opt = torch.optim.ASGD(
        [
            {"params": model.fc1.parameters(), "lr": base * 1e-6},
            {"params": [*model.fc2.parameters(), *model.head.parameters()], "lr": base},
        ],
        lr=base,
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    g1 = []
    model.fc1.weight.register_hook(lambda g: g1.append(float(g.norm())))
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, seed=4749), 200, F.mse_loss)
    moved1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    moved2 = float((model.head.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moves under 1e-5 of its norm", moved1 < 1e-5)
    ctx.check("the head moves over 5%", moved2 > 0.05)
    ctx.check("fc1 does receive gradients", len(g1) == len(losses) and _median(g1) > 1e-3)
    ctx.check("finite", _finite(losses))


# -- 10. softmax collapse: a temperature typed 0.004 for 4.0 ------------------------------------------


@scenario(
    family="theremin_hand_pitch_temperature_gelu_classifier",
    optimizer="Adadelta",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Theremin hand-pitch classifier (GELU MLP on antenna capacitance features, twelve "
    "pitch classes, cross-entropy on logits / T, Adadelta). The temperature is typed 0.004 "
    "for 4.0: the softmax saturates, most rows' target probability rounds to exactly 1.0.",
)
def h474_theremin_temperature_typo(ctx) -> None:
    gen = seeded(4750)
    model = _Net(10, 48, 12, act=nn.GELU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    temp = 0.004

    def loss_fn(out, y):
        return F.cross_entropy(out / temp, y)

    data = _grades(gen, 64, 10, 12, seed=4750, spread=0.5)
    losses, _ = _loop(ctx, model, opt, data, 150, loss_fn, classifier=True)
    x, y = next(data)
    with torch.no_grad():
        out = model(x)
    ctx.check("over half the rows' target p exactly 1.0", collapsed_fraction(out / temp, y) > 0.5)
    ctx.check("under 5% at T = 4 with the same weights", collapsed_fraction(out / 4.0, y) < 0.05)
    ctx.check("finite", _finite(losses))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="shakuhachi_ri_breath_qknorm_segment_recurrent_transformer",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Shakuhachi ri-breath phrase model (the hand-written segment-recurrent transformer: "
    "memory of the previous segment, learnt relative position bias), with QK layer norm, at a "
    "large lr 6e-2 reached by a 30-step linear warm-up and a cosine decay, AdamW weight decay "
    "0.01, clipping at 1. Healthy control.",
)
def h474_shakuhachi_qk_norm_control(ctx) -> None:
    gen = seeded(4751)
    model = _SegmentTransformer(qk_norm=True)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-2, weight_decay=0.01)
    steps = 160
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    logits = []

    def after(step):
        logits.append(model.max_logit())

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _cycles(gen, 16, 64, 32, 4751),
        steps,
        _lm,
        after=after,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
    ctx.check("attention logits stay under 30", max(logits) < 30)


class _WarbleConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _warbles(gen, batch, length=64):
    """A bowed saw's tone: class = vibrato rate band, plus amplitude and noise."""
    t = torch.arange(length) / length
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        rate = 2.0 + 3.0 * y + torch.rand(batch, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        x = amp * torch.sin(6.28 * rate[:, None] * t[None, :])
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="musical_saw_bow_warble_relu_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Musical-saw bow-warble classifier (ReLU Conv1d on the tone trace, four vibrato "
    "bands, cross-entropy with label smoothing 0.1, SGD momentum under OneCycleLR, gradient "
    "accumulation over 2 batches, clipping at 1). Healthy control.",
)
def h474_musical_saw_onecycle_control(ctx) -> None:
    gen = seeded(4752)
    model = _WarbleConv()
    steps = 160
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    data = _warbles(gen, 32)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        data,
        steps,
        loss_fn,
        classifier=True,
        sched=sched,
        accumulate=2,
        clip=1.0,
    )
    x, y = next(data)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check("accuracy over 60%", acc > 0.6)
    ctx.check("finite", _finite(losses))


@scenario(
    family="ice_halo_arc_brightness_fp16_silu_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Ice-halo arc-brightness regressor (SiLU MLP on sun elevation and crystal features, "
    "Huber, RAdam, fp16 autocast with a GradScaler, ReduceLROnPlateau, clipping at 1 after "
    "unscale_). Healthy control.",
)
def h474_ice_halo_fp16_control(ctx) -> None:
    gen = seeded(4753)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    last = []

    def after(step):
        if step % 20 == 19:  # an evaluation every 20 steps on the window's mean loss
            plateau.step(_mean(last[-20:]))

    def loss_fn(out, y):
        loss = F.huber_loss(out, y)
        last.append(float(loss.detach()))
        return loss

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=4753),
        200,
        loss_fn,
        after=after,
        scaler=scaler,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
    ctx.check("the scale stayed finite and positive", all(0 < s < math.inf for s in ctx.scales))
