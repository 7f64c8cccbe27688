"""Held-out set 506 (``h506_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a chovgan rally read-out decoder (a bank of learnt latents reads the generated hit
sequence, then one cross-attention per output token reads the latents) whose AdamW
weight_decay is typed 0.0 for 0.1 with no QK-norm (attention logits grow); a chaise-maker wheel-dish regressor whose
resumed step sums the loss over the batch instead of averaging it (one gradient burst, SGD
momentum, accumulation); a flint-knapper flake-length tanh regressor whose StepLR gamma is typed
10 for 0.1 (past 2/sharpness, full-batch SGD); a carrom striker-rebound regressor whose
hand-written decoupled weight decay has its sign flipped (a slow climb, RAdam); a mooring-post
frost-jacking Poisson net taking log of a freezing-degree-day count with no clamp (log 0,
Adagrad); a toe-wrestling grip-force GRU regressor fed one shard in newtons instead of
kilonewtons (RMSprop); a scrivener quill-nib wear regressor whose head group lr is typed 2e-9
(Adamax); a conker string-swing hand-written Elman RNN with a recurrent init gain of 3 (SGD
Nesterov); a bossaball spike classifier dividing its logits by a contrastive temperature 0.005
(softmax collapse, NAdam); a salt-flat polygon crack-spacing regressor restarted from a stale
checkpoint after a pre-emption (a one-off loss spike, Adam).

Controls: a tap-dance heel-drop classifier trained with batch 512 for 100 steps, then batch 16
(Adam); a glover seam-stitch classifier under fp16 autocast + GradScaler (AdamW, OneCycleLR,
label smoothing, clipping); a dry-stone wall batter-lean Huber regressor (SGD momentum, two
param groups, ReduceLROnPlateau, accumulation 2, clipping).
"""

from __future__ import annotations

import copy
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


def _std(xs: list[float]) -> float:
    m = _mean(xs)
    return math.sqrt(_mean([(v - m) ** 2 for v in xs]))


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
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
):
    """The file's loop. ``before(step)`` first; ``alter(step, x, y)`` changes a batch;
    ``weight(step)`` multiplies the backpropagated loss (1 by default); ``after(step, loss)`` runs
    after the optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
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
            if classifier:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            w = weight(step) if weight is not None else 1.0
            (w * loss / accumulate).backward()
            shown += float(loss.detach()) / accumulate
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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


def _sharpness(model, loss_fn, iters=12):
    """Top Hessian eigenvalue of the full-batch loss by power iteration on Hessian-vector
    products."""
    params = list(model.parameters())
    loss = loss_fn()
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


# -- 1. attention logit growth: the learnt attention scale lost its clamp ---------------------------


class _CrossAttention(nn.Module):
    """Queries read a context (no QK-norm)."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.peak = 0.0

    def forward(self, query, context):
        b, n, d = query.shape
        m = context.shape[1]
        h = self.heads
        q = self.q(query).reshape(b, n, h, -1).transpose(1, 2)
        k = self.k(context).reshape(b, m, h, -1).transpose(1, 2)
        v = self.v(context).reshape(b, m, h, -1).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        self.peak = float(logits.detach().abs().max())
        y = torch.softmax(logits, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class _LatentReadout(nn.Module):
    """A bank of learnt latents reads the sequence; one cross-attention per output token reads
    the latents (a perceiver-style read-out)."""

    def __init__(self, vocab=8, dim=32, latents=8, outputs=4, length=16):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.latents = nn.Parameter(0.3 * torch.randn(latents, dim))
        self.encode = _CrossAttention(dim)
        self.ln = nn.LayerNorm(dim)
        self.queries = nn.Parameter(0.3 * torch.randn(outputs, dim))
        self.readout = nn.ModuleList(_CrossAttention(dim) for _ in range(outputs))
        self.ln_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        b, t = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(t))
        lat = self.latents.expand(b, -1, -1)
        lat = self.ln(lat + self.encode(lat, x))
        outs = [attn(self.queries[j].expand(b, 1, -1), lat) for j, attn in enumerate(self.readout)]
        return self.head(self.ln_out(torch.cat(outs, 1)))


def _rally_batches(gen, batch=32, length=16, vocab=8, outputs=4):
    """Generated chovgan rally hit codes; output token j is the hit at position 4j + 1."""
    while True:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        yield x, x[:, 1 : 4 * outputs : 4]


@scenario(
    family="chovgan_mallet_rally_latent_readout_decoder",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("readout.0", "readout.1", "readout.2", "readout.3"),
    diverges=None,
    heldout=True,
    note="Chovgan (horseback polo) rally read-out decoder, hand-written: 8 learnt latent vectors "
    "read the generated sequence of mallet-hit codes by cross-attention, then one cross-attention "
    "per output token (a learnt query each) reads the latents; cross-entropy, AdamW at lr 1e-2 with no QK-norm. The config's weight_decay is typed 0.0 for "
    "0.1: nothing holds the read-out's query/key weights, they keep growing to sharpen the "
    "selection and the read-out attention logits q.k/sqrt(d) grow over 20x.",
)
def h506_chovgan_readout_scale(ctx) -> None:
    gen = seeded(5061)
    model = _LatentReadout()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)  # typed for 0.1
    q0 = [a.q.weight.detach().norm().item() for a in model.readout]
    peaks = []

    def after(step, loss):
        peaks.append(max(a.peak for a in model.readout))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _rally_batches(gen),
        260,
        lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
        classifier=False,
        after=after,
    )
    q1 = [a.q.weight.detach().norm().item() for a in model.readout]
    ctx.check("the read-out attention logits grew over 20x", max(peaks[-10:]) > 20 * peaks[0])
    ctx.check(
        "the read-out query weights grew over 1.5x",
        max(b / a for a, b in zip(q0, q1, strict=True)) > 1.5,
    )
    ctx.check("the loss fell (it learnt the selection)", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))


# -- 2. gradient spike: the resumed step sums the loss instead of averaging it -------------------

CHAISE_ONSET = 130


@scenario(
    family="chaisemaker_wheel_dish_accum_relu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CHAISE_ONSET,
    note="Chaise-maker wheel-dish regressor (ReLU MLP on spoke angle, felloe thickness, hub "
    "mortise depth and tyre shrink features, MSE, SGD momentum 0.9, accumulation 4, clipping at "
    "norm 5). The first step after a resume at 130 builds its loss from an older config with "
    "reduction='sum' instead of 'mean': one step's gradient is the batch size (64) times too "
    "large, while the logged (mean) loss is ordinary; clipping holds the update and the run "
    "goes on.",
)
def h506_chaise_sum_reduction(ctx) -> None:
    gen = seeded(5062)
    model = _Net(10, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    batch = 64

    def weight(step):
        return float(batch) if step == CHAISE_ONSET else 1.0  # sum == batch * mean

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, batch, 10, 5062),
        240,
        F.mse_loss,
        weight=weight,
        clip=5.0,
        accumulate=4,
    )
    k = CHAISE_ONSET
    others = norms[k - 40 : k] + norms[k + 1 : k + 40]
    pre = _mean(losses[k - 20 : k])
    ctx.check("the gradient at the resume over 30x the median", norms[k] > 30 * _median(others))
    ctx.check("the logged loss at the resume is ordinary (under 2x)", losses[k] < 2 * pre)
    ctx.check("trained before (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("no divergence afterwards (last 20 under 2x pre)", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 3. sharpness above the limit: StepLR gamma typed 10 for 0.1 ----------------------------------

KNAPPER_ONSET = 100


@scenario(
    family="knapper_platform_flake_length_steplr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=KNAPPER_ONSET,
    note="Flint-knapper flake-length regressor (tanh MLP on platform angle, exterior platform "
    "angle, hammerstone mass and strike-point features, 256 fixed flakes full-batch, MSE, plain "
    "SGD at 0.5/sharpness). Its StepLR at step 100 has gamma typed 10 for 0.1: the lr jumps past "
    "2/sharpness, the full-batch loss oscillates and blows up.",
)
def h506_knapper_steplr_gamma(ctx) -> None:
    gen = seeded(5063)
    model = _Net(8, 32, 1, act=nn.Tanh)
    x, y = next(_readings(gen, 256, 8, 5063, noise=0.0))
    lam0 = _sharpness(model, lambda: F.mse_loss(model(x), y))
    opt = torch.optim.SGD(model.parameters(), lr=0.5 / lam0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=KNAPPER_ONSET, gamma=10.0)  # 0.1
    ctx.attach(model, opt)
    losses, lam_at = [], None
    for step in range(200):
        if step == KNAPPER_ONSET:
            lam_at = _sharpness(model, lambda: F.mse_loss(model(x), y))
            lr_at = opt.param_groups[0]["lr"]
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]) or losses[-1] > 1e6:
            break
    k = KNAPPER_ONSET
    ctx.check("trained before the step (under 0.6x the start)", losses[k - 1] < 0.6 * losses[0])
    ctx.check("lr * sharpness over 2 after the step", lam_at is not None and lr_at * lam_at > 2)
    ctx.check(
        "the loss blew up (over 100x its pre-step level, or non-finite)",
        not _finite(losses) or max(losses[k:]) > 100 * losses[k - 1],
    )


# -- 4. loss divergence: the hand-written weight decay has its sign flipped ------------------------


@scenario(
    family="carrom_striker_rebound_decay_sign_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=0,
    note="Carrom striker-rebound regressor (ReLU MLP on flick speed, striker mass, board powder "
    "and cushion angle features, MSE, RAdam with weight_decay=0 and a hand-written decoupled "
    "weight decay applied after each step). The decay line reads p.mul_(1 + lr * wd) instead of "
    "p.mul_(1 - lr * wd): the weights inflate a little every step and, once the fit is made, the "
    "loss climbs slowly and keeps climbing. No NaN, no spike.",
)
def h506_carrom_decay_sign(ctx) -> None:
    gen = seeded(5064)
    model = _Net(10, 64, 1)
    lr, wd = 3e-3, 1.5
    opt = torch.optim.RAdam(model.parameters(), lr=lr)
    norms0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # the sign bug: meant 1 - lr * wd

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5064), 300, F.mse_loss, after=after)
    norms1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    best = min(range(len(losses)), key=lambda i: _mean(losses[i : i + 10]))
    low = _mean(losses[best : best + 10])
    ctx.check("it first trained (best 10 under 0.5x the start)", low < 0.5 * _mean(losses[:10]))
    ctx.check("then climbed (last 20 over 3x the best 10)", _mean(losses[-20:]) > 3 * low)
    ctx.check("the weights inflated over 2x", norms1 > 2 * norms0)
    ctx.check("no NaN", _finite(losses))


# -- 5. nonfinite: log of a freezing-degree-day count with no clamp -------------------------------

MOORING_NAN = 90


class _LogFeature(nn.Module):
    def forward(self, x):
        return torch.log(x)  # meant: torch.log(x.clamp_min(1.0))


class _FrostJackNet(nn.Module):
    def __init__(self, d_in=6, hidden=32):
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.logfeat(x)))).squeeze(-1)


def _frost_batches(gen, batch=64, d_in=6, seed=5065):
    """Freezing-degree-day counts per station (always well above 0 in these winters) and the
    number of mooring posts jacked out of the ground, Poisson."""
    g = torch.Generator().manual_seed(seed)
    w = 0.5 * torch.randn(d_in, generator=g)
    while True:
        counts = torch.poisson(30.0 * torch.rand(batch, d_in, generator=gen) + 10.0, gen)
        counts = counts.clamp_min(1.0)
        rate = torch.exp(0.8 + torch.tanh(torch.log(counts / 20.0) @ w))
        yield counts, torch.poisson(rate, gen)


@scenario(
    family="mooring_post_frost_jack_log_count_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logfeat",),
    diverges=MOORING_NAN,
    heldout=True,
    onset=MOORING_NAN,
    note="Mooring-post frost-jacking net (tanh MLP on the log of six stations' freezing-degree-day "
    "counts, Poisson NLL on the number of posts jacked, Adagrad). The log feature has no clamp "
    "(meant log(max(x, 1))): at step 90 two stations that had a thaw week report 0, log 0 = -inf, "
    "fc1 sums -inf terms of both signs into NaN and the loss is NaN at step 90.",
)
def h506_mooring_log_zero(ctx) -> None:
    gen = seeded(5065)
    model = _FrostJackNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)

    def alter(step, x, y):
        if step == MOORING_NAN:
            x = x.clone()
            x[7, 2] = 0.0  # thaw weeks at two stations: no freezing degree-days
            x[7, 4] = 0.0
        return x, y

    losses, _ = _train(
        ctx,
        model,
        opt,
        _frost_batches(gen),
        200,
        lambda out, y: F.poisson_nll_loss(out, y, log_input=True),
        alter=alter,
    )
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    with torch.no_grad():
        probe = model.logfeat(torch.tensor([[0.0, 5.0]]))
    ctx.check(f"the loss is NaN at step {MOORING_NAN}", first_bad == MOORING_NAN)
    ctx.check("log of a zero count is -inf", bool(torch.isinf(probe[0, 0])))
    ctx.check("trained before (under 0.8x the start)", _mean(losses[80:90]) < 0.8 * losses[0])


# -- 6. data outlier: one shard of grip forces in newtons, not kilonewtons ------------------------

TOE_ONSET = 130


class _GripGRU(nn.Module):
    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _grip_batches(gen, batch=32, t=12, d_in=4, seed=5066):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, t, d_in, generator=gen)
        y = 0.6 * torch.tanh(x[:, -4:].mean(1) @ w) + 0.3 * x[:, :, 0].mean(1)  # kilonewtons
        yield x, y


@scenario(
    family="toe_wrestling_grip_force_gru_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=TOE_ONSET,
    note="Toe-wrestling grip-force regressor (GRU over 12 frames of four toe-pad pressure sensors, "
    "peak force in kilonewtons, MSE, RMSprop, clipping at 1). One shard, logged by a different rig, holds its "
    "forces in newtons (1000x): its batch at step 130 gives a loss over 1000x and a gradient "
    "burst; the run recovers afterwards.",
)
def h506_toe_grip_newtons(ctx) -> None:
    gen = seeded(5066)
    model = _GripGRU()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x, 1000.0 * y) if step == TOE_ONSET else (x, y)

    losses, norms = _train(
        ctx, model, opt, _grip_batches(gen), 260, F.mse_loss, alter=alter, clip=1.0
    )
    k = TOE_ONSET
    pre = _mean(losses[k - 20 : k])
    ctx.check("trained before (under 0.6x the start)", pre < 0.6 * _mean(losses[:10]))
    ctx.check("the loss at the bad shard over 1000x", losses[k] > 1000 * pre)
    ctx.check("the gradient there over 20x the median", norms[k] > 20 * _median(norms[k - 40 : k]))
    ctx.check("recovered (last 20 under 2x pre)", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 7. update ratio out of range: the head's group lr typed 2e-9 ---------------------------------


@scenario(
    family="scrivener_quill_nib_wear_two_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Scrivener quill-nib wear regressor (GELU MLP on slit length, shoulder cut, ink "
    "viscosity, parchment grain and words-written features, MSE, Adamax with two param groups: "
    "body and head). The head's lr is typed 2e-9 for 2e-3: the head barely moves (relative "
    "change under 1e-5) while the body trains at the usual rate; the loss still falls, slowly.",
)
def h506_scrivener_head_lr(ctx) -> None:
    gen = seeded(5067)
    model = _Net(10, 48, 1, act=nn.GELU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adamax(
        [
            {"params": body, "lr": 2e-3},
            {"params": model.head.parameters(), "lr": 2e-9},  # typed for 2e-3
        ]
    )
    head0 = model.head.weight.detach().clone()
    fc10 = model.fc1.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5067), 240, F.mse_loss)
    ctx.check("the head moved under 1e-5 (relative)", _rel_change(model.head.weight, head0) < 1e-5)
    ctx.check("fc1 moved over 3%", _rel_change(model.fc1.weight, fc10) > 0.03)
    ctx.check("the loss still fell (under 0.8x)", _fell(losses, ratio=0.8))
    ctx.check("finite", _finite(losses))


# -- 8. exploding gradients: recurrent init gain 3 -------------------------------------------------


class _ElmanCell(nn.Module):
    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.w_ih = nn.Linear(d_in, hidden)
        self.w_hh = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.w_hh.weight, gain=gain)

    def forward(self, x_t, h):
        return torch.tanh(self.w_ih(x_t) + self.w_hh(h))


class _SwingRNN(nn.Module):
    def __init__(self, d_in=3, hidden=48, gain=3.0):
        super().__init__()
        self.rec = _ElmanCell(d_in, hidden, gain)
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.w_hh.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = self.rec(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _swing_batches(gen, batch=32, t=30, seed=5068):
    """Accelerometer frames of a conker on its string; target: the first frames' swing energy."""
    while True:
        x = torch.randn(batch, t, 3, generator=gen)
        yield x, (x[:, :5] ** 2).mean((1, 2)) - 1.0


@scenario(
    family="conker_string_strike_swing_hand_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec.w_hh", "rec"),
    diverges=None,
    heldout=True,
    note="Conker string-swing regressor: a hand-written Elman RNN (tanh) over 30 accelerometer "
    "frames, MSE, SGD with Nesterov momentum. The recurrent matrix is initialised orthogonal "
    "with gain 3 (a copied config meant gain 1): the backward pass through time multiplies the "
    "gradient at every step, so dL/dh at the first frame is orders of magnitude larger than at "
    "the last, the first gradient is thousands of times the usual, its update wrecks the recurrent weights and the run never learns much beyond predicting the mean.",
)
def h506_conker_recurrent_gain(ctx) -> None:
    gen = seeded(5068)
    model = _SwingRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ratios, targets = [], []

    def alter(step, x, y):
        targets.append(y)
        return x, y

    def after(step, loss):
        first = float(model.states[0].grad.norm())
        last = float(model.states[-1].grad.norm())
        ratios.append(first / max(last, 1e-30))

    losses, norms = _train(
        ctx, model, opt, _swing_batches(gen), 150, F.mse_loss, alter=alter, after=after
    )
    var = float(torch.cat(targets).var())
    ctx.check("dL/dh at the first frame over 1000x the last at step 0", ratios[0] > 1000)
    ctx.check("the first gradient norm over 100x the median", norms[0] > 100 * _median(norms))
    ctx.check(
        "never beat the constant predictor well (last 20 over 0.7x var(y))",
        _mean(losses[-20:]) > 0.7 * var,
    )


# -- 9. softmax collapse: logits divided by a contrastive temperature -----------------------------


class _SpikeClassifier(_Net):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, classes, act=nn.ReLU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="bossaball_trampoline_spike_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bossaball trampoline-spike classifier (ReLU MLP on take-off, jump height, arm swing and "
    "ball-contact features, 6 spike types, cross-entropy, NAdam). The config's temperature, "
    "0.005, was copied from a contrastive loss: the logits are divided by it, and the softmax "
    "saturates: most rows' target probability rounds to exactly 1.0 in float32.",
)
def h506_bossaball_temperature(ctx) -> None:
    gen = seeded(5069)
    model = _SpikeClassifier(12, 48, 6, temperature=0.005)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    batches = _grades(gen, 64, 12, 6, 5069, spread=1.0)
    losses, _ = _train(ctx, model, opt, batches, 160, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
    ctx.check(
        "over half the rows' target probability is exactly 1.0", collapsed_fraction(logits, y) > 0.5
    )
    spread = float((logits.max(1).values - logits.min(1).values).median())
    ctx.check("median logit spread over 40", spread > 40)
    ctx.check("finite", _finite(losses))


# -- 10. loss spike: restarted from a stale checkpoint after a pre-emption --------------------------

SALT_ONSET = 150


@scenario(
    family="salt_flat_polygon_crack_spacing_checkpoint_reload_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SALT_ONSET,
    note="Salt-flat polygon crack-spacing regressor (SiLU MLP on brine depth, evaporation rate, "
    "crust thickness and temperature-swing features, MSE, Adam). The job is pre-empted at step "
    "150 and the restart loads the 'latest' checkpoint, a stale link to the step-15 save: the "
    "weights jump back to an early state, the loss jumps once and the run recovers. No gradient "
    "burst, no bad data.",
)
def h506_salt_flat_stale_checkpoint(ctx) -> None:
    gen = seeded(5070)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    saved = {}

    def before(step):
        if step == SALT_ONSET:
            model.load_state_dict(saved[15])  # 'latest' still points at the step-15 save

    def after(step, loss):
        if step == 15:
            saved[15] = copy.deepcopy(model.state_dict())

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5070), 280, F.mse_loss, before=before, after=after
    )
    k = SALT_ONSET
    pre = _mean(losses[k - 20 : k])
    others = norms[k - 40 : k] + norms[k + 30 :]
    ctx.check("trained before (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("the loss at the restart over 3x the 20 steps before", losses[k] > 3 * pre)
    ctx.check("recovered (last 20 under 1.5x pre)", _mean(losses[-20:]) < 1.5 * pre)
    ctx.check("no gradient burst (under 10x the median elsewhere)", norms[k] < 10 * _median(others))
    ctx.check("finite", _finite(losses))


# -- controls -------------------------------------------------------------------------------------

TAP_SWITCH = 100


@scenario(
    family="tap_dance_heel_drop_batch_switch_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Tap-dance heel-drop classifier (ReLU MLP on shoe-plate microphone features, 5 step "
    "types, cross-entropy, Adam). Trained with batch 512 for the first 100 steps (a warm-up "
    "phase on a big machine), then batch 16: the gradient noise and the loss noise jump at the "
    "switch, as they should. Control.",
)
def h506_tap_heel_batch_switch(ctx) -> None:
    gen = seeded(5071)
    model = _Net(12, 48, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    big = _grades(gen, 512, 12, 5, 5071, spread=1.6)
    small = _grades(gen, 16, 12, 5, 5071, spread=1.6)

    class _Switch:
        step = 0

        def __next__(self):
            return next(big) if self.step < TAP_SWITCH else next(small)

    feed = _Switch()

    def before(step):
        feed.step = step

    losses, norms = _train(
        ctx, model, opt, feed, 220, F.cross_entropy, classifier=True, before=before
    )
    k = TAP_SWITCH
    ctx.check("the loss fell (under 0.5x)", _fell(losses, ratio=0.5))
    ctx.check(
        "loss noise jumped at the switch (std over 2x)",
        _std(losses[k + 10 : k + 60]) > 2 * _std(losses[k - 40 : k]),
    )
    ctx.check(
        "gradient noise jumped at the switch (median over 2x)",
        _median(norms[k + 10 : k + 60]) > 2 * _median(norms[k - 40 : k]),
    )
    ctx.check("finite", _finite(losses))


@scenario(
    family="glover_seam_stitch_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Glover seam-stitch classifier (GELU MLP on stitch pitch, thread tension, leather "
    "stretch and needle-heat features, 7 seam types, fp16 autocast + GradScaler, AdamW, "
    "OneCycleLR, label smoothing 0.1, clipping at 1). Control.",
)
def h506_glover_fp16_onecycle(ctx) -> None:
    gen = seeded(5072)
    model = _Net(14, 64, 7, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _grades(gen, 64, 14, 7, 5072, spread=1.3)
    losses = []
    for _step in range(steps):
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
        ctx.scales.append(float(scaler.get_scale()))
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell (under 0.5x)", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))


@scenario(
    family="stonewall_batter_lean_huber_regressor",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Dry-stone wall batter-lean regressor (ReLU MLP on course height, through-stone spacing, "
    "hearting fill and footing width, Huber loss, SGD momentum with two param groups (head at "
    "half the lr), ReduceLROnPlateau, gradient accumulation 2, clipping at 2). Control.",
)
def h506_stonewall_huber(ctx) -> None:
    gen = seeded(5073)
    model = _Net(10, 48, 1)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.SGD(
        [{"params": body, "lr": 2e-2}, {"params": model.head.parameters(), "lr": 1e-2}],
        momentum=0.9,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)

    def after(step, loss):
        plateau.step(loss)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 5073, noise=0.1),
        240,
        lambda out, y: F.huber_loss(out, y, delta=0.5),
        after=after,
        clip=2.0,
        accumulate=2,
    )
    ctx.check("the loss fell (under 0.5x)", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
