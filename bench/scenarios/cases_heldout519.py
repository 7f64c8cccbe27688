"""Held-out set 519 (``h519_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a fumarole steam-pulse multi-query-attention transformer whose attention scale is typed
sqrt(d_head) for 1/sqrt(d_head) (attention logits grow, Adam); a salt-pan brine evaporation net
taking log(depth) with no clamp when a dry pan reports depth 0 (NaN, Adamax); a sled-dog team
split-time regressor resumed from a checkpoint without its optimizer state (one-off loss spike,
AdamW); a thatcher's reed-bundle pitch regressor whose StepLR gamma is typed 10 for 0.1 (past
2/sharpness, plain SGD); a pipe-organ reed-voicing deep conv1d classifier with its init gain typed
3 (gradients grow through depth, SGD momentum); an oyster-dredge haul regressor fed one batch with
-9999 missing-value sentinels (RMSprop); a trebuchet counterweight range regressor whose
accumulation divisor is multiplied for one step (SGD Nesterov); a wheelwright felloe-dish
regressor with layer-wise lr decay typed 0.05 for 0.95 (first layer frozen, RAdam); a hurdy-gurdy
buzz-bridge cosine classifier with an unclamped learnable logit scale (softmax saturates, NAdam);
a rope-walk twist-tension ReLU regressor with Adam lr typed 0.1 for 0.001 (ReLUs die, Adam).

Controls: a waterspout funnel conv1d classifier whose signal length doubles at step 100
(progressive resizing, AdamW, OneCycleLR); an aurora-curtain pulse multi-query-attention
transformer (Adamax, warm-up + cosine, label smoothing, clipping, tied weights); a quarry
wire-saw Huber regressor under fp16 autocast + GradScaler (SGD momentum, ReduceLROnPlateau,
accumulation 2, clipping).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


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
    scale=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    accumulate=1,
    attach=True,
):
    """The file's loop: ``before(step)``, ``alter(step, x, y)``, ``scale(step, k)`` multiplies
    micro-batch k's backpropagated loss (default 1/accumulate), ``after(step, loss)`` after the
    optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for k in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            w = scale(step, k) if scale is not None else 1.0 / accumulate
            (w * loss).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(shown)
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
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


# -- multi-query attention transformer over generated pulse sequences ----------------------------


class _MultiQueryAttention(nn.Module):
    """Causal multi-query attention: every query head shares one key and one value head."""

    def __init__(self, dim, heads, scale):
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * self.dh)
        self.out = nn.Linear(dim, dim)
        self.scale = scale
        self.peak = 0.0  # the largest |q.k * scale| of the last forward pass

    def forward(self, x):
        b, t, d = x.shape
        q = self.q(x).reshape(b, t, self.heads, self.dh).transpose(1, 2)  # b h t dh
        k, v = self.kv(x).split(self.dh, dim=-1)  # b t dh, shared by all heads
        logits = torch.einsum("bhtd,bsd->bhts", q, k) * self.scale
        self.peak = float(logits.detach().abs().max())
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        att = logits.masked_fill(mask, float("-inf")).softmax(-1)
        y = torch.einsum("bhts,bsd->bhtd", att, v)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class _MQABlock(nn.Module):
    def __init__(self, dim, heads, scale):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _MultiQueryAttention(dim, heads, scale)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.proj = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class _PulseMQATransformer(nn.Module):
    """Next-token model over quantised pulse sequences; the head is tied to the embedding."""

    def __init__(self, vocab=24, dim=32, heads=4, layers=2, context=48, scale=None):
        super().__init__()
        scale = (dim // heads) ** -0.5 if scale is None else scale
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(_MQABlock(dim, heads, scale) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        self.head.weight = self.tok.weight  # tied

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _pulse_sequences(gen, batch=32, length=48, vocab=24):
    """Quantised pulse trains (a random period, amplitude and phase per sequence, a little
    noise): (tokens, next tokens)."""
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        period = torch.randint(3, 9, (batch, 1), generator=gen).float()
        phase = torch.rand(batch, 1, generator=gen) * period
        amp = 0.5 + 0.5 * torch.rand(batch, 1, generator=gen)
        level = amp * torch.exp(-(((t + phase) % period) ** 2) / 1.5)
        level = level + 0.03 * torch.randn(batch, length + 1, generator=gen)
        tok = (level.clamp(0, 0.999) * vocab).long()
        yield tok[:, :-1], tok[:, 1:]


def _lm_loss(logits, y, smoothing=0.0):
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1), label_smoothing=smoothing
    )


def _peak(model):
    return max(b.attn.peak for b in model.blocks)


# -- 1. attention logit growth: the attention scale typed sqrt(d_head) ---------------------------


@scenario(
    family="fumarole_steam_pulse_mqa_transformer",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Fumarole steam-pulse next-token model: a hand-written 2-block pre-LN transformer whose "
    "attention is multi-query (4 query heads sharing one key and one value head) over generated "
    "quantised pulse trains, tied embedding/head, cross-entropy, Adam lr 1e-2, no weight decay. "
    "The attention scale is typed d_head ** 0.5 for d_head ** -0.5 (16x too large, no QK norm): "
    "the q.k logits grow through training until the softmax attends to single frames.",
)
def h519_fumarole_mqa_scale_typo(ctx):
    gen = seeded(5191)
    model = _PulseMQATransformer(scale=8**0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    peaks = []
    probe = next(_pulse_sequences(torch.Generator().manual_seed(7), 64))[0]

    def after(step, loss):
        with torch.no_grad():
            model(probe)
        peaks.append(_peak(model))

    with torch.no_grad():
        model(probe)
    first = _peak(model)
    losses, _ = _loop(ctx, model, opt, _pulse_sequences(gen), 200, _lm_loss, after=after)
    ctx.check("attention logits grew over 20x", peaks[-1] > 20 * first)
    ctx.check("attention logits over 100", peaks[-1] > 100)
    ctx.check("still growing over the last 80 steps", peaks[-1] > 1.15 * peaks[120])
    ctx.check("finite", _finite(losses))


# -- 2. nonfinite: log(depth) with no clamp, a dry pan reports 0 ----------------------------------

SALT_ONSET = 120


class _LogDepth(nn.Module):
    """Takes the log of the brine-depth column (the rest pass through)."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _BrineNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_depth = _LogDepth()
        self.net = _Net(6, 48, 1, act=nn.SiLU)

    def forward(self, x):
        return self.net(self.log_depth(x))


def _salt_pans(gen, batch=64):
    """Brine depth (cm, log-normal), sun hours, wind, humidity, air and brine temperature;
    target: evaporation (standardised) from the log depth and the weather."""
    while True:
        depth = torch.exp(1.0 + 0.5 * torch.randn(batch, 1, generator=gen))
        w = torch.randn(batch, 5, generator=gen)
        y = -0.6 * torch.log(depth[:, 0]) + 0.5 * w[:, 0] + 0.3 * torch.tanh(w[:, 1] - w[:, 2])
        y = y + 0.2 * w[:, 3] * w[:, 4] + 0.05 * torch.randn(batch, generator=gen)
        yield torch.cat([depth, w], 1), y


@scenario(
    family="salt_pan_brine_evaporation_log_depth_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("log_depth",),
    diverges=SALT_ONSET,
    heldout=True,
    onset=SALT_ONSET,
    note="Solar salt-pan brine evaporation SiLU regressor (brine depth in cm, sun hours, wind, "
    "humidity, air and brine temperature; MSE, Adamax lr 2e-3). Its first module takes log of "
    "the depth column with no clamp or epsilon; at step 120 the batch includes a pan that has "
    "gone dry and reports depth 0, log(0) = -inf, and the loss is NaN.",
)
def h519_salt_pan_dry_log_zero(ctx):
    gen = seeded(5192)
    model = _BrineNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    produced = []

    def alter(step, x, y):
        if step == SALT_ONSET:
            x = x.clone()
            x[:5, 0] = 0.0  # the dry pans
            with torch.no_grad():
                produced.append(not bool(torch.isfinite(model.log_depth(x)).all()))
        return x, y

    losses, _ = _loop(ctx, model, opt, _salt_pans(gen), 200, F.mse_loss, alter=alter)
    ctx.check("trained before the dry pan", _fell(losses[:SALT_ONSET]))
    ctx.check("finite before the dry pan", _finite(losses[:SALT_ONSET]))
    ctx.check("log_depth produced -inf at onset", bool(produced) and produced[0])
    ctx.check("loss non-finite at onset", len(losses) == SALT_ONSET + 1)
    ctx.check("the loss is NaN", math.isnan(losses[-1]))


# -- 3. loss spike: resumed from a checkpoint without the optimizer state -------------------------

SLED_ONSET = 150


@scenario(
    family="sled_dog_team_split_time_resume_regressor",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SLED_ONSET,
    note="Sled-dog team split-time ReLU regressor (team size, dog weights, trail snow depth, "
    "temperature, grade and musher features; MSE, AdamW lr 1e-2, weight decay 1e-4). At step "
    "150 the job is preempted and resumed from a checkpoint that saved the model but not the "
    "optimizer: a fresh AdamW starts with zero moments, its first updates move every weight by "
    "about the full lr at once, the loss spikes and the run recovers within tens of steps. The "
    "batch and the gradient at the restart are ordinary.",
)
def h519_sled_dog_resume_no_optimizer_state(ctx):
    gen = seeded(5193)
    model = _Net(12, 64, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)

    def before(step):
        if step == SLED_ONSET:  # resume: the weights come back, the optimizer state does not
            opt.state.clear()

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 12, 51930), 260, F.mse_loss, before=before
    )
    pre = _median(losses[SLED_ONSET - 30 : SLED_ONSET])
    spike = max(losses[SLED_ONSET : SLED_ONSET + 10])
    ctx.check("loss spiked over 3x after the restart", spike > 3 * pre)
    ctx.check("recovered to under 1.5x", _mean(losses[-10:]) < 1.5 * pre)
    ctx.check(
        "gradient at the restart is ordinary",
        norms[SLED_ONSET] < 3 * _median(norms[SLED_ONSET - 30 : SLED_ONSET]),
    )
    ctx.check("finite", _finite(losses))


# -- 4. sharpness above limit: StepLR gamma typed 10 for 0.1 --------------------------------------

THATCH_ONSET = 100


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
    """The largest Hessian eigenvalue of the loss on one batch, by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    family="thatcher_reed_bundle_pitch_steplr_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=THATCH_ONSET,
    note="Thatcher's reed-bundle roof-pitch tanh regressor (bundle length, butt diameter, "
    "reed moisture, coat thickness, batten spacing; MSE, plain SGD lr 0.1). The StepLR meant to "
    "cut the lr tenfold at step 100 has gamma typed 10 for 0.1: the lr jumps to 1.0, past "
    "2/sharpness of the loss at that point, and the loss oscillates and blows up.",
)
def h519_thatcher_steplr_gamma_typo(ctx):
    gen = seeded(5194)
    model = _Net(5, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=THATCH_ONSET, gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(3), 512, 5, 51940))
    sharp = []

    def before(step):
        if step == THATCH_ONSET:
            sharp.append(_top_hessian_eig(model, F.mse_loss, *probe))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 51940),
        200,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    limit = 2 / sharp[0] if sharp and sharp[0] > 0 else float("inf")
    ctx.check("trained before the jump", _fell(losses[:THATCH_ONSET]))
    ctx.check("lr 0.1 was under 2/sharpness", 0.1 < limit)
    ctx.check("lr 1.0 is over 2/sharpness", 1.0 > limit)
    after = [v for v in losses[THATCH_ONSET:] if math.isfinite(v)]
    ctx.check(
        "loss blew up over 100x after the jump",
        not _finite(losses) or max(after) > 100 * _median(losses[THATCH_ONSET - 20 : THATCH_ONSET]),
    )


# -- 5. exploding gradients: a deep conv1d stack with init gain typed 3 ---------------------------


class _ReedVoicingConv(nn.Module):
    """Ten plain conv1d + tanh layers (no norm, no residual) over a reed pipe's onset
    recording, pooled to 4 voicing classes."""

    def __init__(self, width=16, depth=10, gain=5 / 3):
        super().__init__()
        chans = [1] + [width] * depth
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, 5, padding=2) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        for c in self.convs:
            nn.init.normal_(c.weight, std=gain / math.sqrt(c.in_channels * 5))
            nn.init.zeros_(c.bias)
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        h = x[:, None]
        for c in self.convs:
            h = torch.relu(c(h))
        return self.head(h.mean(-1))


def _reed_onsets(gen, batch=32, length=64):
    """Onset recordings of four voicing faults: clean, a slow speech, a chiff and a rattle."""
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        f = 6 + 4 * torch.rand(batch, 1, generator=gen)
        attack = torch.where(y[:, None] == 1, 0.5, 0.1)
        env = 1 - torch.exp(-t / attack)
        x = env * torch.sin(2 * math.pi * f * t)
        x = x + (y[:, None] == 2) * torch.exp(-t / 0.05) * torch.sin(2 * math.pi * 3 * f * t)
        x = x + (y[:, None] == 3) * 0.3 * torch.sign(torch.sin(2 * math.pi * 1.5 * f * t))
        yield x + 0.05 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="pipe_organ_reed_voicing_deep_conv1d_classifier",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("convs.0",),
    diverges="auto",
    heldout=True,
    note="Pipe-organ reed-voicing fault classifier: ten plain conv1d + ReLU layers (no norm, no "
    "residual) over a pipe's onset recording, mean-pooled into 4 voicing classes; "
    "cross-entropy, SGD momentum 0.9 lr 5e-3. The init helper was given gain 3 (meant for a "
    "He-style sqrt(2)): each layer multiplies the signal and the backward gradient by about 2, "
    "the gradient reaching the first conv is hundreds of times the last one's and the run "
    "blows up.",
)
def h519_organ_reed_conv_gain_typo(ctx):
    gen = seeded(5195)
    model = _ReedVoicingConv(gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    data = _reed_onsets(gen)
    x0, y0 = next(_reed_onsets(torch.Generator().manual_seed(5)))
    hidden = []
    h = x0[:, None]
    for c in model.convs:
        h = torch.relu(c(h))
        h.retain_grad()
        hidden.append(h)
    F.cross_entropy(model.head(h.mean(-1)), y0).backward()
    ratio = float(hidden[0].grad.norm() / hidden[-1].grad.norm().clamp_min(1e-30))
    model.zero_grad(set_to_none=True)
    losses, _ = _loop(ctx, model, opt, data, 120, F.cross_entropy, classifier=True)
    ctx.check("dL/dh at the first conv over 100x the last", ratio > 100)
    ctx.check("loss blew up", not _finite(losses) or max(losses) > 100 * losses[0])


# -- 6. data outlier: one batch with -9999 missing-value sentinels --------------------------------

OYSTER_ONSET = 110


@scenario(
    family="oyster_dredge_haul_sentinel_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=OYSTER_ONSET,
    note="Oyster-dredge haul-weight ReLU regressor (tow length, bed depth, dredge tooth spacing, "
    "tide, water temperature, salinity, boat speed, warp length; MSE, RMSprop lr 1e-3, clipping "
    "at 1). At step 110 one shard from a logger that writes -9999 for missing salinity and "
    "water temperature goes in unfiltered: that batch's loss is hundreds of times the usual, "
    "its gradient is clipped, and the run recovers.",
)
def h519_oyster_dredge_sentinel_batch(ctx):
    gen = seeded(5196)
    model = _Net(8, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == OYSTER_ONSET:
            x = x.clone()
            x[::3, 4:6] = -9999.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 51960), 220, F.mse_loss, alter=alter, clip=1.0
    )
    pre = _median(losses[OYSTER_ONSET - 30 : OYSTER_ONSET])
    ctx.check("trained before the shard", _fell(losses[:OYSTER_ONSET]))
    ctx.check("loss at onset over 100x", losses[OYSTER_ONSET] > 100 * pre)
    ctx.check(
        "gradient at onset over 20x",
        norms[OYSTER_ONSET] > 20 * _median(norms[OYSTER_ONSET - 30 : OYSTER_ONSET]),
    )
    ctx.check("recovered to under 2x", _mean(losses[-10:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 7. gradient spike: the accumulation divisor multiplied for one step --------------------------

TREB_ONSET = 130
TREB_ACCUM = 8


@scenario(
    family="trebuchet_counterweight_range_accum_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=TREB_ONSET,
    note="Trebuchet counterweight shot-range SiLU regressor (counterweight mass, arm ratio, sling "
    "length, release pin angle, projectile mass, wind; MSE, SGD Nesterov momentum 0.9 lr 0.02, "
    "gradient accumulation over 8 micro-batches, clipping at 5). At step 130, the first step "
    "after an epoch boundary, a refactored branch scales the micro-batch losses by the "
    "accumulation count instead of dividing by it: that one step's gradient is 64x the usual "
    "while the logged loss is ordinary.",
)
def h519_trebuchet_accum_multiplied(ctx):
    gen = seeded(5197)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def scale(step, k):
        return float(TREB_ACCUM) if step == TREB_ONSET else 1.0 / TREB_ACCUM

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 16, 6, 51970),
        200,
        F.mse_loss,
        scale=scale,
        accumulate=TREB_ACCUM,
        clip=5.0,
    )
    pre_n = _median(norms[TREB_ONSET - 30 : TREB_ONSET])
    pre_l = _median(losses[TREB_ONSET - 30 : TREB_ONSET])
    ctx.check("trained", _fell(losses[:TREB_ONSET]))
    ctx.check("gradient at onset over 30x the median", norms[TREB_ONSET] > 30 * pre_n)
    ctx.check("logged loss at onset ordinary (under 2x)", losses[TREB_ONSET] < 2 * pre_l)
    ctx.check("finite", _finite(losses))


# -- 8. update ratio: layer-wise lr decay typed 0.05 for 0.95 -------------------------------------


class _FelloeNet(nn.Module):
    def __init__(self, d_in=7, hidden=48):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(d_in, hidden)] + [nn.Linear(hidden, hidden) for _ in range(3)]
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        for layer in self.layers:
            x = F.gelu(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="wheelwright_felloe_dish_llrd_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Wheelwright's wheel-dish GELU regressor (felloe depth, spoke count, spoke stagger, "
    "tyre shrink, hub mortise angle, timber moisture, wheel diameter; Huber, RAdam lr 3e-3). "
    "Param groups use layer-wise lr decay lr * decay ** (depth - i) with decay typed 0.05 for "
    "0.95: the first layer's lr is 3e-3 * 0.05 ** 4, about 2e-8, its updates are a millionth "
    "of its weights and it stays at its init while the rest trains.",
)
def h519_wheelwright_llrd_decay_typo(ctx):
    gen = seeded(5198)
    model = _FelloeNet()
    depth = len(model.layers)
    groups = [
        {"params": layer.parameters(), "lr": 3e-3 * 0.05 ** (depth - i)}
        for i, layer in enumerate(model.layers)
    ]
    groups.append({"params": model.head.parameters(), "lr": 3e-3})
    opt = torch.optim.RAdam(groups)
    first = model.layers[0].weight.detach().clone()
    last = model.layers[-1].weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 7, 51980), 220, F.huber_loss)
    ctx.check("first layer moved under 1e-5", _rel_change(model.layers[0].weight, first) < 1e-5)
    ctx.check(
        "last hidden layer moved over 1e-3", _rel_change(model.layers[-1].weight, last) > 1e-3
    )
    ctx.check("the rest trained", _fell(losses, ratio=0.9))


# -- 9. softmax collapse: a learnable logit scale with no clamp -----------------------------------


class _CosineHead(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        # meant torch.tensor(math.log(1 / 0.07)): the raw 1/0.07 goes through exp() below
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.logit_scale.exp() * cos  # CLIP clamps logit_scale at log(100): not here


class _GurdyNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = _CosineHead(hidden, classes)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    family="hurdy_gurdy_buzz_bridge_logit_scale_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Hurdy-gurdy buzzing-bridge (chien) setting classifier: GELU MLP on wheel speed, "
    "string tension, rosin and coup strength features into a cosine head with a CLIP-style "
    "learnable logit scale, 5 settings, cross-entropy, NAdam lr 2e-2. The scale parameter is "
    "initialised to 1/0.07 instead of log(1/0.07) and the clamp of logit_scale at log(100) was "
    "left out: exp() makes the scale about 1.6e6, and the softmax of most rows rounds to exactly "
    "1.0 for the target.",
)
def h519_hurdy_gurdy_logit_scale_no_clamp(ctx):
    gen = seeded(5199)
    model = _GurdyNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-2)
    probe = next(_grades(torch.Generator().manual_seed(9), 256, 12, 5, 51990, spread=0.5))
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 51990, spread=0.5),
        250,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        frac = collapsed_fraction(model(probe[0]), probe[1])
    ctx.check("over half the rows' target probability is exactly 1.0", frac > 0.5)
    ctx.check("logit scale over 100", float(model.head.logit_scale.detach().exp()) > 100)
    ctx.check("finite", _finite(losses))


# -- 10. loss of plasticity: Adam lr typed 0.1 for 0.001 ------------------------------------------


@scenario(
    family="rope_walk_twist_tension_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Rope-walk laying-twist tension ReLU regressor (yarn count, hemp moisture, strand "
    "twist, top speed, walk length, sledge weight; MSE, Adam). The config's lr is typed 0.1 "
    "for 0.001: the first large updates push most of the second layer's pre-activations "
    "negative on every input, those ReLUs never fire again for the rest of the run.",
)
def h519_rope_walk_adam_lr_typo(ctx):
    gen = seeded(51910)
    model = _Net(6, 48, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    probe = next(_readings(torch.Generator().manual_seed(4), 512, 6, 519100))
    with torch.no_grad():
        dead0 = dead_fraction(model.fc2(model.act1(model.fc1(probe[0]))))
    dead_at = []

    def after(step, loss):
        if step % 20 == 19:
            with torch.no_grad():
                dead_at.append(dead_fraction(model.fc2(model.act1(model.fc1(probe[0])))))

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 519100), 200, F.mse_loss, after=after)
    ctx.check("over 60% of fc2's ReLUs dead at the end", dead_at[-1] > 0.6)
    ctx.check("few were dead at init", dead0 < 0.2)
    ctx.check("over half dead by step 40 and never revived", min(dead_at[1:]) > 0.5)
    ctx.check("finite", _finite(losses))


# -- controls -------------------------------------------------------------------------------------


class _FunnelConv(nn.Module):
    """Conv1d stack with global pooling: any signal length goes in."""

    def __init__(self, width=16, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _funnel_signals(gen, batch, length):
    """Pressure traces of four waterspout stages: forming, mature, decaying, none."""
    t = torch.linspace(0, 1, length)
    y = torch.randint(0, 4, (batch,), generator=gen)
    f = 3 + 3 * torch.rand(batch, 1, generator=gen)
    dip = torch.exp(-((t - 0.5) ** 2) / torch.where(y[:, None] == 1, 0.01, 0.05))
    x = torch.where(y[:, None] == 3, 0.0, 1.0) * dip
    x = x + torch.where(y[:, None] == 0, 0.5, 0.1) * torch.sin(2 * math.pi * f * t)
    x = x * torch.where(y[:, None] == 2, torch.exp(-3 * t), torch.ones_like(t))
    return x + 0.1 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="waterspout_funnel_progressive_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Waterspout funnel-stage conv1d classifier (pressure traces, 4 stages, cross-entropy, "
    "AdamW lr 1e-2 with OneCycleLR, weight decay 1e-2). Progressive resizing: the traces are "
    "64 samples long for 100 steps, then 128 (the globally pooled net takes either). Control.",
)
def h519_waterspout_progressive_resize(ctx):
    gen = seeded(51911)
    model = _FunnelConv()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    lengths = []

    def batches():
        step = 0
        while True:
            length = 64 if step < 100 else 128
            lengths.append(length)
            step += 1
            yield _funnel_signals(gen, 64, length)

    losses, _ = _loop(
        ctx, model, opt, batches(), 200, F.cross_entropy, classifier=True, sched=sched
    )
    ctx.check("trained", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
    ctx.check("length doubled at step 100", lengths[99] == 64 and lengths[100] == 128)


@scenario(
    family="aurora_curtain_pulse_mqa_transformer",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="Aurora-curtain pulsation next-token model: the hand-written multi-query-attention "
    "transformer (4 query heads, one shared key/value head, correct 1/sqrt(d_head) scale, tied "
    "embedding/head) over generated quantised pulse trains; Adamax lr 4e-3 with linear warm-up "
    "(20 steps) and cosine decay, label smoothing 0.1, clipping at 1. Control.",
)
def h519_aurora_mqa_warmup_cosine(ctx):
    gen = seeded(51912)
    model = _PulseMQATransformer()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / 180)),
    )
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _pulse_sequences(gen),
        200,
        lambda out, y: _lm_loss(out, y, smoothing=0.1),
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained", _fell(losses, ratio=0.7))
    ctx.check("finite", _finite(losses))


@scenario(
    family="quarry_wire_saw_cut_rate_fp16_huber_regressor",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Quarry diamond wire-saw cut-rate SiLU regressor (wire speed, tension, bead wear, "
    "coolant flow, stone hardness, cut area; Huber) under fp16 autocast + GradScaler, SGD "
    "momentum 0.9 lr 0.05, two param groups (head without weight decay), ReduceLROnPlateau, "
    "accumulation over 2 micro-batches, clipping at 1 after unscaling. Control.",
)
def h519_quarry_wire_saw_fp16(ctx):
    gen = seeded(51913)
    model = _Net(6, 48, 1, act=nn.SiLU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.SGD(
        [
            {"params": body, "weight_decay": 1e-4},
            {"params": model.head.parameters(), "weight_decay": 0.0},
        ],
        lr=0.05,
        momentum=0.9,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 32, 6, 519130)
    losses = []
    for _step in range(200):
        shown = 0.0
        for _ in range(2):
            x, y = next(data)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.huber_loss(out.float(), y)
            scaler.scale(loss / 2).backward()
            shown += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        plateau.step(shown)
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    ctx.check("trained", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
