"""Held-out set 512 (``h512_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before.

Faults: a stilt-fishing catch encoder with T5-style relative position buckets whose AdamW
weight_decay is typed 0.0 with no QK-norm (attention logits grow); a sumo salt-throw ReLU
classifier whose fc1 bias is filled with -6 (dead units, Adamax); a canyoneering rappel-time
regressor restarted from a stale checkpoint (a one-off loss spike, NAdam); a pulled-sugar gloss
regressor fed one shard in millimetres (RMSprop); a hop-picking bine-yield regressor whose loss
weight is read in per-mille for one step (SGD Nesterov); a singing-dune boom-pitch tanh regressor
whose warm-up peak lr is typed 10x (full-batch SGD); an octopush puck-glide Gaussian-NLL net
taking sqrt of a reading with no clamp (Adam); a floorball blade-curve regressor whose fc1 group
lr is typed 1e-9 (Adagrad); a chessboxing round-fatigue regressor with its decoupled decay sign flipped
(RAdam); a shodo brush-stroke classifier with a temperature typed 0.002 (ASGD).

Controls: a gurning grimace classifier whose accumulation doubles halfway (SGD momentum); a
fairy-circle ring-spacing classifier under fp16 autocast + GradScaler (AdamW, OneCycleLR, label
smoothing, clipping); a sailing-stone trail tied autoencoder (Huber, Adadelta, two param groups,
ReduceLROnPlateau, clipping).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _std(xs):
    m = _mean(xs)
    return math.sqrt(_mean([(v - m) ** 2 for v in xs]))


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    extra=None,
):
    """The file's loop. ``accumulate`` may be a function of the step. ``extra(model)`` is added
    to the backpropagated loss only (penalties). Stops after a non-finite loss once
    ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        acc = accumulate(step) if callable(accumulate) else accumulate
        shown = 0.0
        for _ in range(acc):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            w = weight(step) if weight is not None else 1.0
            total = w * loss
            if extra is not None:
                total = total + extra(model)
            (total / acc).backward()
            shown += float(loss.detach()) / acc
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0, flip=0.0):
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + spread * torch.randn(batch, d_in, generator=gen)
        if flip > 0:
            noisy = torch.rand(batch, generator=gen) < flip
            y = torch.where(noisy, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


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


def _rel_change(after, before):
    return float((after.detach() - before).norm() / before.norm())


# -- 1. attention logit growth: T5-bucket encoder, weight decay typed 0.0 --------------------------


def _t5_buckets(rel, num_buckets=16, max_distance=32):
    """T5's bidirectional relative position buckets: half the buckets per direction, exact for
    small distances, logarithmic beyond."""
    half = num_buckets // 2
    out = (rel > 0).long() * half
    n = rel.abs()
    exact = half // 2
    large = (
        exact
        + (
            torch.log(n.float().clamp(min=1) / exact)
            / math.log(max_distance / exact)
            * (half - exact)
        ).long()
    )
    large = large.clamp(max=half - 1)
    return out + torch.where(n < exact, n, large)


class _RelAttention(nn.Module):
    """Self-attention with a learnt bias per head and relative-position bucket (no QK-norm)."""

    def __init__(self, dim, heads=2, buckets=16):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.rel_bias = nn.Embedding(buckets, heads)
        self.peak = 0.0

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = (f(x).reshape(b, t, h, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        self.peak = float(logits.detach().abs().max())
        pos = torch.arange(t)
        bias = self.rel_bias(_t5_buckets(pos[None, :] - pos[:, None])).permute(2, 0, 1)
        y = torch.softmax(logits + bias, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class _EncLayer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _RelAttention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.relu(self.fc(self.ln2(x))))


class _BucketEncoder(nn.Module):
    def __init__(self, vocab=12, dim=32, layers=2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(_EncLayer(dim) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        x = self.tok(idx)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.ln_f(x))


def _catch_batches(gen, batch=32, length=16, vocab=12):
    """Generated catch logs: ordinary float codes (2..5) and one catch code (6..11) somewhere;
    every position must name the catch (a content lookup that position biases cannot do)."""
    while True:
        x = torch.randint(2, 6, (batch, length), generator=gen)
        p = torch.randint(0, length, (batch,), generator=gen)
        c = torch.randint(6, vocab, (batch,), generator=gen)
        x[torch.arange(batch), p] = c
        yield x, c[:, None].expand(batch, length)


@scenario(
    family="stilt_fishing_catch_relative_bucket_encoder",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("layers.0.attn", "layers.1.attn"),
    diverges=None,
    heldout=True,
    note="Stilt-fishing catch-log encoder, hand-written: two pre-LN layers whose self-attention "
    "adds T5-style relative position buckets (a learnt bias per head and bucket) to q.k/sqrt(d), "
    "no QK-norm; every position must name the one catch code in a generated "
    "log of float codes; cross-entropy, AdamW lr 1e-2. The config's weight_decay is typed 0.0 for 0.1: nothing "
    "holds the q/k projections and the content logits q.k/sqrt(d) keep growing to sharpen the "
    "lookup.",
)
def h512_stilt_fishing_bucket_logits(ctx) -> None:
    gen = seeded(5121)
    model = _BucketEncoder()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)  # typed for 0.1
    attns = [layer.attn for layer in model.layers]
    q0 = [a.q.weight.detach().norm().item() for a in attns]
    peaks = []

    def after(step, loss):
        peaks.append(max(a.peak for a in attns))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _catch_batches(gen),
        240,
        lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
        after=after,
    )
    q1 = [a.q.weight.detach().norm().item() for a in attns]
    ctx.check("the attention logits q.k/sqrt(d) grew over 20x", max(peaks[-10:]) > 20 * peaks[0])
    ctx.check(
        "the query weights grew over 1.5x", max(b / a for a, b in zip(q0, q1, strict=True)) > 1.5
    )
    ctx.check("the loss fell (it learnt the lookup)", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))


# -- 2. loss of plasticity: fc1 bias filled with -6 -------------------------------------------------


@scenario(
    family="sumo_salt_throw_arc_dead_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="Sumo salt-throw arc classifier (ReLU MLP on wrist-angle and release-height features, "
    "5 arc grades, cross-entropy, Adamax lr 2e-3). The init helper meant to give fc1 a small "
    "negative bias (-0.06) fills it with -6: every fc1 unit is negative on every input, its "
    "ReLUs are dead from the first step, no gradient reaches fc1 and the loss stays at chance.",
)
def h512_sumo_salt_dead_bias(ctx) -> None:
    gen = seeded(5122)
    model = _Net(16, 64, 5)
    intended = copy.deepcopy(model)
    with torch.no_grad():
        model.fc1.bias.fill_(-6.0)  # typed for -0.06
        intended.fc1.bias.fill_(-0.06)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 16, 5, 5122)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(x)))
    g2 = torch.Generator().manual_seed(1)
    b2 = _grades(g2, 64, 16, 5, 5122)
    opt2 = torch.optim.Adamax(intended.parameters(), lr=2e-3)
    for _ in range(60):
        xb, yb = next(b2)
        loss2 = F.cross_entropy(intended(xb), yb)
        opt2.zero_grad()
        loss2.backward()
        opt2.step()
    ctx.check("over 90% of act1's units dead", dead > 0.9)
    ctx.check("the loss stays near chance", _mean(losses[-10:]) > 0.9 * math.log(5))
    ctx.check("the intended init learns", loss2.item() < 0.6 * math.log(5))
    ctx.check("finite", _finite(losses))


# -- 3. loss spike: a restart loads a stale checkpoint ----------------------------------------------

RAPPEL_ONSET = 150


@scenario(
    family="canyoneering_rappel_time_stale_ckpt_silu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=RAPPEL_ONSET,
    note="Canyoneering rappel-time regressor (SiLU MLP on drop height, rope diameter, flow and "
    "anchor features, MSE, NAdam lr 3e-3). A pre-emption restart at step 150 picks the "
    "lexically last checkpoint, ckpt_8 instead of ckpt_140: the weights jump back to step 8, the "
    "loss spikes and the run retrains; no gradient burst, no bad batch.",
)
def h512_canyoneering_stale_restart(ctx) -> None:
    gen = seeded(5123)
    model = _Net(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    saved = {}

    def after(step, loss):
        if step == 8:
            saved["model"] = copy.deepcopy(model.state_dict())

    def before(step):
        if step == RAPPEL_ONSET:
            model.load_state_dict(saved["model"])

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5123), 260, F.mse_loss, before=before, after=after
    )
    k = RAPPEL_ONSET
    pre = _mean(losses[k - 10 : k])
    ctx.check("the loss at the restart over 3x the steps before", losses[k] > 3 * pre)
    ctx.check("recovered (last 10 under 1.5x pre)", _mean(losses[-10:]) < 1.5 * pre)
    ctx.check(
        "no gradient burst (under 10x the median)", norms[k] < 10 * _median(norms[k - 40 : k])
    )
    ctx.check("finite", _finite(losses))


# -- 4. data outlier: one shard in millimetres --------------------------------------------------------

SUGAR_ONSET = 120


@scenario(
    family="sugarcraft_pulled_sugar_gloss_unit_shard_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SUGAR_ONSET,
    note="Pulled-sugar gloss regressor (ReLU MLP on pull count, sugar temperature and strand "
    "thickness features, MSE, RMSprop lr 1e-3, clipping at 1). One shard, read at step 120, has "
    "its thickness and length columns in millimetres instead of metres (x1000): one batch's "
    "loss and gradient are enormous, clipping holds the update and the run recovers.",
)
def h512_sugarcraft_mm_shard(ctx) -> None:
    gen = seeded(5124)
    model = _Net(10, 64, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == SUGAR_ONSET:
            x = x.clone()
            x[:, :4] *= 1000.0
        return x, y

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5124), 240, F.mse_loss, alter=alter, clip=1.0
    )
    k = SUGAR_ONSET
    pre = _mean(losses[k - 10 : k])
    ctx.check("the bad shard's loss over 100x", losses[k] > 100 * pre)
    ctx.check("the gradient over 20x the median", norms[k] > 20 * _median(norms[k - 40 : k]))
    ctx.check("recovered (last 20 under 2x pre)", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 5. gradient spike: the loss weight read in per-mille for one step ------------------------------

HOP_ONSET = 110


@scenario(
    family="hop_picking_bine_yield_per_mille_weight_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=HOP_ONSET,
    note="Hop-picking bine-yield regressor (GELU MLP on bine height, cone count and wirework "
    "features, Huber, SGD Nesterov momentum 0.9, clipping at 5). The step after a config reload "
    "at 110 reads the loss weight 0.5 from a per-mille field as 500: one step's gradient is "
    "1000x, the logged (unweighted) loss is ordinary, clipping holds the update.",
)
def h512_hop_picking_per_mille(ctx) -> None:
    gen = seeded(5125)
    model = _Net(12, 64, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)

    def weight(step):
        return 500.0 if step == HOP_ONSET else 0.5

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 5125),
        220,
        F.huber_loss,
        weight=weight,
        clip=5.0,
    )
    k = HOP_ONSET
    others = norms[k - 40 : k] + norms[k + 1 : k + 40]
    pre = _mean(losses[k - 20 : k])
    ctx.check("the gradient at the reload over 50x the median", norms[k] > 50 * _median(others))
    ctx.check("the logged loss at the reload is ordinary (under 2x)", losses[k] < 2 * pre)
    ctx.check("trained before", pre < 0.7 * _mean(losses[:10]))
    ctx.check("no divergence afterwards", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 6. sharpness above the limit: warm-up peak typed 10x --------------------------------------------


def _sharpness(model, loss_fn, iters=12):
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


DUNE_WARMUP = 80
DUNE_PEAK = 0.8  # typed for 0.08


@scenario(
    family="singing_dune_boom_pitch_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Singing-dune boom-pitch regressor (tanh MLP on grain size, slope, humidity and "
    "avalanche-speed features, MSE, full-batch SGD). The linear warm-up's peak lr is typed 0.8 "
    "for 0.08: as the lr ramps up it passes 2/sharpness and the loss blows up.",
)
def h512_singing_dune_warmup_peak(ctx) -> None:
    gen = seeded(5126)
    batches = _readings(gen, 256, 8, 5126, noise=0.02)
    x, y = next(batches)
    model = _Net(8, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    lrs, sharp = [], {}

    def lr_at(step):
        return DUNE_PEAK * min(1.0, (step + 1) / DUNE_WARMUP)

    def before(step):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        lrs.append(lr_at(step))
        if step % 5 == 0:
            sharp[step] = _sharpness(model, lambda: F.mse_loss(model(x), y))

    def fixed():
        while True:
            yield x, y

    losses, _ = _train(ctx, model, opt, fixed(), 160, F.mse_loss, before=before)
    ratios = {s: lrs[s] * lam for s, lam in sharp.items() if math.isfinite(lam)}
    early = [r for s, r in ratios.items() if s <= 10]
    best = min(v for v in losses if math.isfinite(v))
    ctx.check("lr * sharpness under 2 early", max(early) < 2.0)
    ctx.check("lr * sharpness over 2 later", max(ratios.values()) > 2.0)
    cross = min(s for s, r in ratios.items() if r > 2.0) if max(ratios.values()) > 2.0 else 0
    before_cross = [lam for s, lam in sharp.items() if s <= cross and math.isfinite(lam)]
    ctx.check(
        "the intended peak keeps lr * sharpness under 2",
        bool(before_cross) and 0.1 * DUNE_PEAK * max(before_cross) < 2.0,
    )
    ctx.check(
        "the loss blew up (over 10x its best or non-finite)",
        not _finite(losses) or max(losses[-20:]) > 10 * best,
    )


# -- 7. nonfinite: sqrt of a reading with no clamp --------------------------------------------------

OCTOPUSH_ONSET = 100


class _SqrtDepth(nn.Module):
    """sqrt(depth - 0.5) as the glide feature: the clamp the spec asked for is missing."""

    def forward(self, x):
        return torch.cat([torch.sqrt(x[:, :1] - 0.5), x[:, 1:]], 1)


class _GlideNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.sqrt_depth = _SqrtDepth()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.sqrt_depth(x)))))
        return torch.cat([self.mean(h), self.log_var(h)], 1)


def _glide_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _glide_batches(gen, batch=64):
    while True:
        x = torch.randn(batch, 8, generator=gen)
        x[:, 0] = 0.5 + 2.0 * torch.rand(batch, generator=gen)
        y = torch.sqrt(x[:, 0] - 0.5) + 0.3 * torch.tanh(x[:, 1:4].sum(1))
        yield x, y + 0.1 * torch.randn(batch, generator=gen)


@scenario(
    family="octopush_puck_glide_sqrt_gaussian_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("sqrt_depth",),
    diverges=OCTOPUSH_ONSET,
    heldout=True,
    onset=OCTOPUSH_ONSET,
    note="Octopush (underwater hockey) puck-glide net: a sqrt(depth - 0.5 m) feature with no "
    "clamp, SiLU trunk, mean and log-variance heads, Gaussian NLL, Adam lr 2e-3. At step 100 a "
    "pool-floor depth gauge reads below the 0.5 m offset (a shallow end), sqrt of a negative "
    "gives NaN and the loss is NaN at step 100.",
)
def h512_octopush_sqrt_negative(ctx) -> None:
    gen = seeded(5127)
    model = _GlideNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == OCTOPUSH_ONSET:
            x = x.clone()
            x[:8, 0] = 0.3
        return x, y

    losses, _ = _train(ctx, model, opt, _glide_batches(gen), 160, _glide_nll, alter=alter)
    k = OCTOPUSH_ONSET
    ctx.check("finite before the shallow gauge", _finite(losses[:k]))
    ctx.check("the loss is NaN at step 100", len(losses) == k + 1 and math.isnan(losses[k]))
    ctx.check("it trained before", _mean(losses[k - 10 : k]) < _mean(losses[:10]) - 0.3)


# -- 8. update ratio out of range: fc1's group lr typed 1e-9 ----------------------------------------


@scenario(
    family="floorball_blade_curve_frozen_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Floorball blade-curve regressor (ReLU MLP on heat-gun time, blade angle and shaft flex "
    "features, MSE, Adagrad with two param groups). fc1's group lr is typed 1e-9 for 1e-2: fc1 "
    "practically never moves while fc2 and the head train at 1e-2.",
)
def h512_floorball_fc1_group(ctx) -> None:
    gen = seeded(5128)
    model = _Net(10, 64, 1)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adagrad(
        [{"params": model.fc1.parameters(), "lr": 1e-9}, {"params": rest, "lr": 1e-2}]
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5128), 200, F.mse_loss)
    ctx.check("fc1 moved under 1e-6 of its norm", _rel_change(model.fc1.weight, w1) < 1e-6)
    ctx.check("fc2 moved over 5%", _rel_change(model.fc2.weight, w2) > 0.05)
    ctx.check("finite", _finite(losses))


# -- 9. loss divergence: the L2 penalty subtracted --------------------------------------------------


@scenario(
    family="chessboxing_round_fatigue_decay_sign_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Chessboxing round-fatigue regressor (SiLU MLP on heart rate, clock time and punch "
    "count features, MSE, RAdam lr 3e-3, hand-written decoupled weight decay 3.0). The decay "
    "is written p.mul_(1 + lr * wd) (a sign typo): the weights grow steadily and the data loss climbs slowly, no jump.",
)
def h512_chessboxing_decay_sign(ctx) -> None:
    gen = seeded(5129)
    model = _Net(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    n0 = math.sqrt(sum(float((p * p).sum()) for p in model.parameters()))

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 3e-3 * 3.0)  # decoupled decay written with its sign flipped

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5129), 200, F.mse_loss, after=after)
    n1 = math.sqrt(sum(float((p * p).sum()) for p in model.parameters()))
    best = min(_mean(losses[i : i + 10]) for i in range(len(losses) - 10))
    jumps = max(b / a for a, b in zip(losses[:-1], losses[1:], strict=True) if a > 0)
    ctx.check("the weights grew over 1.5x", n1 > 1.5 * n0)
    ctx.check("the loss climbed over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("no single jump over 3x", jumps < 3.0)
    ctx.check("finite", _finite(losses))


# -- 10. softmax collapse: temperature typed 0.002 ---------------------------------------------------


class _TempNet(_Net):
    def __init__(self, *a, temperature=2.0, **k):
        super().__init__(*a, **k)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="shodo_brush_stroke_temperature_classifier",
    optimizer="ASGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Shodo brush-stroke classifier (GELU MLP on pressure, speed and ink-load features, 6 "
    "stroke types, cross-entropy, ASGD lr 1e-2, clipping at 1). The logit temperature is typed 0.002 for 2.0: "
    "the logits are multiplied by 500, the float32 softmax rounds most target probabilities to "
    "exactly 1.0.",
)
def h512_shodo_temperature(ctx) -> None:
    gen = seeded(5130)
    model = _TempNet(16, 64, 6, act=nn.GELU, temperature=0.002)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
    batches = _grades(gen, 64, 16, 6, 5130, spread=0.6)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, clip=1.0)
    x, y = next(batches)
    with torch.no_grad():
        raw = model.head(model.features(x))
        bad = collapsed_fraction(raw / 0.002, y)
        good = collapsed_fraction(raw / 2.0, y)
    ctx.check("over half the rows' target probability exactly 1.0", bad > 0.5)
    ctx.check("under 5% at the intended temperature", good < 0.05)
    ctx.check("finite", _finite(losses))


# -- controls -------------------------------------------------------------------------------------

GURN_SWITCH = 100


@scenario(
    family="gurning_frame_grimace_accum_double_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Gurning (horse-collar face-pulling) grimace classifier (ReLU MLP on landmark "
    "features, 5 grimace grades, noisy labels, cross-entropy, SGD momentum 0.9 lr 2e-2, "
    "micro-batch 16). Gradient accumulation is 2 for the first 100 steps, then 4: the gradient "
    "norm and the loss noise drop at the switch. Control.",
)
def h512_gurning_accum_doubles(ctx) -> None:
    gen = seeded(5131)
    model = _Net(16, 64, 5)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    losses, norms = _train(
        ctx,
        model,
        opt,
        _grades(gen, 16, 16, 5, 5131, spread=1.6, flip=0.2),
        200,
        F.cross_entropy,
        classifier=True,
        accumulate=lambda s: 2 if s < GURN_SWITCH else 4,
    )
    k = GURN_SWITCH
    ctx.check("the loss fell", _fell(losses, ratio=0.8))
    ctx.check(
        "the gradient norm dropped at the switch",
        _mean(norms[k : k + 60]) < 0.85 * _mean(norms[k - 60 : k]),
    )
    ctx.check(
        "the loss noise dropped at the switch",
        _std(losses[k + 20 : k + 100]) < 0.9 * _std(losses[k - 80 : k]),
    )
    ctx.check("finite", _finite(losses))


@scenario(
    family="fairy_circle_ring_spacing_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fairy-circle ring-spacing classifier (GELU MLP on rainfall, termite-mound density and "
    "grass-cover features, 6 spacing classes, fp16 autocast + GradScaler, AdamW, OneCycleLR, "
    "label smoothing 0.1, clipping at 1). Control.",
)
def h512_fairy_circle_fp16(ctx) -> None:
    gen = seeded(5132)
    model = _Net(16, 64, 6, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 180
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _grades(gen, 64, 16, 6, 5132, spread=1.2)
    losses = []
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))


class _TiedAE(nn.Module):
    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _trail_batches(gen, batch=64, d_in=16, seed=5133):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, d_in, generator=g) / 2
    while True:
        z = torch.randn(batch, 4, generator=gen)
        x = z @ basis + 0.1 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="sailing_stone_trail_tied_autoencoder",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sailing-stone (Racetrack Playa) trail autoencoder, hand-written with the decoder tied "
    "to the encoder's transpose, Huber reconstruction of noisy trail-shape features, Adadelta "
    "with two param groups (the decoder bias at half the rate), ReduceLROnPlateau, clipping at "
    "2. Control.",
)
def h512_sailing_stone_tied_ae(ctx) -> None:
    gen = seeded(5133)
    model = _TiedAE()
    opt = torch.optim.Adadelta(
        [{"params": model.enc.parameters(), "lr": 1.0}, {"params": [model.dec_bias], "lr": 0.5}]
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)

    def after(step, loss):
        plateau.step(loss)

    losses, _ = _train(
        ctx, model, opt, _trail_batches(gen), 220, F.huber_loss, after=after, clip=2.0
    )
    ctx.check("the loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
