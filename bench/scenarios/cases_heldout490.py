"""Held-out set 490 (``h490_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a xylophone bar-pattern masked language model (BERT-style, 15% masked, loss on masked
positions only) at an AdamW lr typed 1e-2 for 1e-3 (q.k/sqrt(d) logits grow), a tornado
vortex-class classifier whose temperature is typed 0.005 for 5.0 (softmax collapse, Adam), a
waterfall plunge-depth tanh regressor whose warm-up peak lr is typed 4x (past 2/sharpness, SGD),
a parachute descent-rate net taking log(altitude) with no clamp (log 0 at touchdown, Adagrad), a
stalactite drip-rate regressor fed one shard in millimetres (SGD momentum), a snooker cushion
rebound regressor whose remainder batch is reduced with sum (one gradient burst, SGD Nesterov), a
mining-lamp gas-level regressor whose fc1 group lr is typed 1e-9 (RMSprop), a darts checkout
classifier whose fc1 bias is initialised at -6 (dead ReLUs, Adamax), an oboe reed-scrape deep ReLU
MLP initialised with gain 1.4 (exploding gradients, SGD momentum) and a barometer drift regressor
whose cached targets are rescaled in place each step (a slow climb, NAdam).

Controls: a hot-spring mineral masked LM whose masking rate rises from 15% to 40% halfway (AdamW,
warm-up + cosine, clipping); a biathlon breath-rhythm Conv1d classifier (SGD Nesterov, OneCycleLR,
label smoothing, clipping); a monsoon-onset Gaussian-NLL net (ASGD, two param groups,
ReduceLROnPlateau, gradient accumulation 2).
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


def _wnorm(model: nn.Module) -> float:
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """``before(step)`` first, ``alter(step, x, y)`` changes a batch, ``backprop(step, loss)`` is
    the loss actually backpropagated, ``after(step, loss)`` runs after the optimizer step. Stops
    after a non-finite loss once ``ctx.step`` has seen it. ``attach=False``: a reference run."""
    if attach:
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
            if classifier and attach:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
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


# -- masked language model (BERT-style, hand-written) ---------------------------------------------

MASK_ID = 20
VOCAB = 21


class _BiAttention(nn.Module):
    """Bidirectional multi-head self-attention that records its max |q.k/sqrt(d)|."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.last_max_logit = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, self.hd).transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        self.last_max_logit = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _EncBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _BiAttention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _MaskedLM(nn.Module):
    """Token + position embeddings, two pre-LN encoder blocks, an MLM head tied to the
    token embedding (BERT's transform + decoder)."""

    def __init__(self, vocab=VOCAB, dim=32, length=16):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.blocks = nn.ModuleList(_EncBlock(dim) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.transform = nn.Linear(dim, dim)
        self.ln_t = nn.LayerNorm(dim)
        self.decoder = nn.Linear(dim, vocab)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        self.decoder.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        h = self.ln_t(F.gelu(self.transform(self.ln_f(x))))
        return self.decoder(h)


def _motif_sequences(gen, batch=32, length=16, period=4, rate=lambda: 0.15):
    """Sequences of a random motif of ``period`` tokens repeated; a share ``rate()`` of positions
    is masked (80% [MASK], 10% random, 10% kept) and the target is -100 elsewhere."""
    while True:
        motif = torch.randint(0, MASK_ID, (batch, period), generator=gen)
        seq = motif.repeat(1, length // period)
        chosen = torch.rand(batch, length, generator=gen) < rate()
        u = torch.rand(batch, length, generator=gen)
        x = seq.clone()
        x[chosen & (u < 0.8)] = MASK_ID
        rnd = chosen & (u >= 0.8) & (u < 0.9)
        x[rnd] = torch.randint(0, MASK_ID, (int(rnd.sum()),), generator=gen)
        y = torch.where(chosen, seq, torch.full_like(seq, -100))
        yield x, y


def _mlm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=-100)


# -- 1. attention logit growth: MLM at an AdamW lr typed 3e-2 for 3e-4 ------------------------------


@scenario(
    family="xylophone_bar_pattern_masked_encoder",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Xylophone bar-pattern masked language model (hand-written BERT-style encoder: two "
    "pre-LN bidirectional blocks, tied MLM head; generated sequences of a repeated 4-bar motif, "
    "15% of tokens masked 80/10/10, cross-entropy on masked positions only). The AdamW lr is "
    "typed 1e-2 for 1e-3 with weight decay 0 and no QK-norm: copying from the motif's other "
    "repeats sharpens attention and the q.k/sqrt(d) logits grow step after step.",
)
def h490_xylophone_mlm_lr_typo(ctx) -> None:
    seeded(4901)
    model = _MaskedLM()

    def run(net, lr, attach):
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
        mx = []

        def after(step, loss):
            mx.append(max(b.attn.last_max_logit for b in net.blocks))

        g = torch.Generator().manual_seed(49010)
        losses, _ = _train(
            ctx, net, opt, _motif_sequences(g), 300, _mlm_loss, after=after, attach=attach
        )
        return losses, mx

    torch.manual_seed(49011)
    _, ref = run(_MaskedLM(), 1e-3, False)
    losses, mx = run(model, 1e-2, True)
    ctx.check("at the intended lr 1e-3 the logits stay under 15", max(ref) < 15)
    ctx.check("max |q.k/sqrt(d)| over 20x its start", mx[-1] > 20 * mx[0])
    ctx.check("max |q.k/sqrt(d)| over 50 at the end", mx[-1] > 50)
    ctx.check("still growing over the last half", _mean(mx[-20:]) > 1.3 * _mean(mx[140:160]))


# -- 2. softmax collapse: a temperature typed 0.005 for 5.0 ----------------------------------------


class _VortexNet(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.fc1 = nn.Linear(12, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 6)
        self.temperature = temperature

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return self.head(h) / self.temperature


@scenario(
    family="tornado_vortex_class_gelu_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tornado vortex-class classifier (GELU MLP on radar rotation, shear and pressure-drop "
    "features, six Enhanced-Fujita-like classes, cross-entropy, Adam). The softmax temperature "
    "is typed 0.005 for 5.0: logits are multiplied by 200 and the float32 softmax saturates, "
    "the target's probability rounding to exactly 1.0 on most rows.",
)
def h490_tornado_temperature_typo(ctx) -> None:
    gen = seeded(4902)
    model = _VortexNet(0.005)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(ctx, model, opt, _grades(gen, 64, 12, 6, 4902), 150, F.cross_entropy, classifier=True)
    torch.manual_seed(49021)
    ref = _VortexNet(5.0)
    ropt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    g2 = torch.Generator().manual_seed(49022)
    _train(ctx, ref, ropt, _grades(g2, 64, 12, 6, 4902), 150, F.cross_entropy, attach=False)
    x, y = next(_grades(torch.Generator().manual_seed(49023), 256, 12, 6, 4902))
    with torch.no_grad():
        frac, rfrac = collapsed_fraction(model(x), y), collapsed_fraction(ref(x), y)
    ctx.check(f"over half the rows' target probability exactly 1.0 ({frac:.2f})", frac > 0.5)
    ctx.check(f"under 5% at the intended temperature 5.0 ({rfrac:.2f})", rfrac < 0.05)


# -- 3. sharpness above limit: warm-up peak lr typed 10x -------------------------------------------


def _sharpness(model, loss_fn, x, y, iters=30):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((t * t).sum()) for t in v))
        v = [t / n for t in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [t.detach() for t in hv]
    return lam


WATERFALL_WARM = 100


@scenario(
    family="waterfall_plunge_pool_depth_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Waterfall plunge-pool depth regressor (tanh MLP on discharge, drop height and rock "
    "hardness features, MSE, full-batch SGD). A linear warm-up over 100 steps ends at a peak lr "
    "typed 4x the one tuned for 1/sharpness: partway through the ramp lr * sharpness passes 2 "
    "and the loss blows up.",
)
def h490_waterfall_warmup_peak(ctx) -> None:
    gen = seeded(4903)
    model = _Net(8, 32, 1, act=nn.Tanh)
    x, y = next(_readings(gen, 256, 8, 4903))
    sharp0 = _sharpness(model, F.mse_loss, x, y)
    intended = 1.0 / sharp0
    peak = 4 * intended
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def before(step):
        for grp in opt.param_groups:
            grp["lr"] = peak * min(1.0, (step + 1) / WATERFALL_WARM)

    def full():
        while True:
            yield x, y

    torch.manual_seed(49031)
    ref = _Net(8, 32, 1, act=nn.Tanh)
    ref.load_state_dict(model.state_dict())
    ropt = torch.optim.SGD(ref.parameters(), lr=0.0)

    def rbefore(step):
        for grp in ropt.param_groups:
            grp["lr"] = intended * min(1.0, (step + 1) / WATERFALL_WARM)

    rl, _ = _train(ctx, ref, ropt, full(), 160, F.mse_loss, before=rbefore, attach=False)
    losses, _ = _train(ctx, model, opt, full(), 160, F.mse_loss, before=before)
    low = min(losses)
    ctx.check(f"intended peak * sharpness under 2 ({intended * sharp0:.2f})", intended * sharp0 < 2)
    ctx.check(f"typed peak * sharpness over 2 ({peak * sharp0:.1f})", peak * sharp0 > 2)
    ctx.check("the intended run trains and stays finite", _fell(rl))
    blew = (not _finite(losses)) or max(losses) > 100 * low
    ctx.check("the loss blows up (NaN or over 100x its lowest)", blew)


# -- 4. nonfinite: log of the altitude with no clamp -----------------------------------------------

CHUTE_STEP = 100


class _LogAltitude(nn.Module):
    def forward(self, alt):
        return torch.log(alt)


class _ChuteNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logalt = _LogAltitude()
        self.fc1 = nn.Linear(7, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        feats = torch.cat([self.logalt(x[:, :1]), x[:, 1:]], 1)
        return self.head(F.silu(self.fc2(F.silu(self.fc1(feats))))).squeeze(-1)


def _chute_readings(gen, batch=64):
    g = torch.Generator().manual_seed(4904)
    w = torch.randn(6, generator=g)
    while True:
        alt = 50 + 2000 * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, 6, generator=gen)
        y = 0.5 * torch.log(alt[:, 0] / 500) + torch.tanh(rest @ w / 2.5)
        yield torch.cat([alt, rest], 1), y


@scenario(
    family="parachute_canopy_descent_rate_silu_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logalt",),
    diverges=CHUTE_STEP,
    onset=CHUTE_STEP,
    heldout=True,
    note="Parachute canopy descent-rate regressor (SiLU MLP on log altitude above ground and "
    "canopy/wind features, MSE, Adagrad). The log-altitude feature has no clamp: at step 100 a "
    "batch of landed jumps logs altitude 0, log 0 = -inf and the loss is NaN at step 100.",
)
def h490_parachute_log_zero(ctx) -> None:
    gen = seeded(4904)
    model = _ChuteNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)

    def alter(step, x, y):
        if step == CHUTE_STEP:
            x = x.clone()
            x[:8, 0] = 0.0
        return x, y

    losses, _ = _train(ctx, model, opt, _chute_readings(gen), 160, F.mse_loss, alter=alter)
    ctx.check("finite before step 100", _finite(losses[:CHUTE_STEP]))
    ctx.check("trained first", _mean(losses[90:100]) < 0.7 * _mean(losses[:10]))
    ctx.check(
        "the loss is NaN at step 100",
        len(losses) > CHUTE_STEP and not math.isfinite(losses[CHUTE_STEP]),
    )


# -- 5. data outlier: one shard in millimetres ------------------------------------------------------

DRIP_STEP = 120


@scenario(
    family="stalactite_drip_rate_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=DRIP_STEP,
    heldout=True,
    note="Stalactite drip-rate regressor (ReLU MLP on cave humidity, calcite and seepage "
    "features, MSE, SGD momentum 0.9, clipping at 5). One shard at step 120 was exported with "
    "its lengths in millimetres for metres: that batch's inputs are 1000x, the loss and "
    "gradient jump once and the run recovers.",
)
def h490_stalactite_mm_shard(ctx) -> None:
    gen = seeded(4905)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def alter(step, x, y):
        return (x * 1000.0, y) if step == DRIP_STEP else (x, y)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4905), 220, F.mse_loss, alter=alter, clip=5.0
    )
    base = _median(losses[100:120])
    ctx.check("loss over 10x at step 120", losses[DRIP_STEP] > 10 * base)
    ctx.check("gradient over 10x the median", norms[DRIP_STEP] > 10 * _median(norms[100:120]))
    ctx.check("recovers (last 10 under 3x the pre-shard level)", _mean(losses[-10:]) < 3 * base)
    ctx.check("finite throughout", _finite(losses))


# -- 6. gradient spike: the remainder batch reduced with sum ---------------------------------------

SNOOKER_STEP = 110


@scenario(
    family="snooker_cushion_rebound_tanh_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SNOOKER_STEP,
    heldout=True,
    note="Snooker cushion-rebound angle regressor (tanh MLP on cue speed, spin and cushion "
    "features, Huber loss, SGD Nesterov, clipping at 1). The epoch's remainder step 110 "
    "backpropagates the loss with reduction='sum' over 96 rows instead of the mean: one gradient "
    "burst with an ordinary logged loss; clipping keeps the run and it recovers.",
)
def h490_snooker_sum_remainder(ctx) -> None:
    gen = seeded(4906)
    model = _Net(9, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * 96 if step == SNOOKER_STEP else loss

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 96, 9, 4906),
        200,
        F.smooth_l1_loss,
        backprop=backprop,
        clip=1.0,
    )
    med = _median(norms[90:110])
    ctx.check("gradient over 50x the median at step 110", norms[SNOOKER_STEP] > 50 * med)
    ctx.check(
        "the logged loss at 110 ordinary (under 2x)",
        losses[SNOOKER_STEP] < 2 * _median(losses[90:110]),
    )
    ctx.check("trained and finite", _fell(losses))


# -- 7. update ratio out of range: fc1 group lr typed 1e-9 -----------------------------------------


@scenario(
    family="mining_lamp_firedamp_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Mining safety-lamp firedamp-level regressor (ReLU MLP on flame height, airflow and "
    "wick features, MSE, RMSprop with two param groups). The stem group's lr is typed 1e-9 for "
    "1e-3: fc1 receives gradients but its updates are ~1e-9 of its weights while the rest "
    "trains.",
)
def h490_mining_lamp_group_lr(ctx) -> None:
    gen = seeded(4907)
    model = _Net(10, 48, 1)
    stem = list(model.fc1.parameters())
    rest = list(model.fc2.parameters()) + list(model.head.parameters())
    opt = torch.optim.RMSprop([{"params": stem, "lr": 1e-9}, {"params": rest, "lr": 1e-3}])
    w1 = model.fc1.weight.detach().clone()
    wh = model.head.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4907), 150, F.mse_loss)
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    dh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ctx.check(f"fc1 moves under 1e-5 of its norm ({d1:.1e})", d1 < 1e-5)
    ctx.check(f"the head moves over 5% ({dh:.2f})", dh > 0.05)
    ctx.check("finite", _finite(losses))


# -- 8. loss of plasticity: fc1 bias initialised at -6 ---------------------------------------------


@scenario(
    family="darts_checkout_route_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Darts checkout-route classifier (ReLU MLP on remaining score and throw-position "
    "features, eight route classes, cross-entropy, Adamax). A sparse-activation init recipe sets "
    "fc1's bias to -6 for -0.06: almost all of fc1's ReLU units are never positive, get no "
    "gradient and stay dead; the loss sits at chance.",
)
def h490_darts_dead_bias(ctx) -> None:
    gen = seeded(4908)
    model = _Net(12, 64, 8)
    with torch.no_grad():
        model.fc1.bias.fill_(-6.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 12, 8, 4908), 150, F.cross_entropy, classifier=True
    )
    x, _ = next(_grades(torch.Generator().manual_seed(49081), 512, 12, 8, 4908))
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(x)))
    ctx.check(f"over 90% of fc1's units dead ({dead:.2f})", dead > 0.9)
    ctx.check("the loss stays near chance (over 0.8 ln 8)", _mean(losses[-10:]) > 0.8 * math.log(8))


# -- 9. exploding gradients: deep ReLU MLP initialised with gain 1.4 -------------------------------


class _DeepNet(nn.Module):
    def __init__(self, gain, depth=10, width=48, d_in=10):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain * math.sqrt(2.0 / m.in_features))
            nn.init.zeros_(m.bias)
        self.zs = []

    def forward(self, x):
        self.zs = []
        for m in self.layers:
            z = m(x)
            if z.requires_grad:
                z.retain_grad()
            self.zs.append(z)
            x = F.relu(z)
        return self.head(x).squeeze(-1)


def _depth_ratio(net, x, y):
    net.zero_grad()
    F.mse_loss(net(x), y).backward()
    r = float(net.zs[0].grad.norm() / net.zs[-1].grad.norm())
    net.zero_grad()
    return r


@scenario(
    family="oboe_reed_scrape_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Oboe reed-scrape depth regressor (ten ReLU layers on cane hardness, gouge and tip "
    "measurements, MSE, SGD momentum 0.9). The init is written std = 1.4 * sqrt(2/fan_in) (a "
    "gain from another recipe pasted onto He init): the backpropagated gradient grows ~1.4x per "
    "layer toward the input, the gradient reaching layers.0 ~18x the last layer's.",
)
def h490_oboe_reed_init_gain(ctx) -> None:
    gen = seeded(4909)
    model = _DeepNet(1.4)
    torch.manual_seed(49091)
    ref = _DeepNet(1.0)
    x0, y0 = next(_readings(torch.Generator().manual_seed(49092), 128, 10, 4909))
    ratio, rratio = _depth_ratio(model, x0, y0), _depth_ratio(ref, x0, y0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4909), 150, F.mse_loss)
    ctx.check(f"dL/dz at layers.0 over 10x layers.9 ({ratio:.1f})", ratio > 10)
    ctx.check(f"under 3x with He init ({rratio:.1f})", rratio < 3)
    ctx.check("finite (the loss does not blow up at this lr)", _finite(losses))


# -- 10. loss divergence: cached targets rescaled in place every step -------------------------------

BARO_STEP = 60


@scenario(
    family="barometer_aneroid_drift_gelu_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    onset=BARO_STEP,
    heldout=True,
    note="Aneroid barometer drift regressor (GELU MLP on capsule deflection, temperature and "
    "altitude features, MSE, NAdam). From step 60 a unit-conversion helper applies its hPa "
    "correction factor 1.015 in place to the cached target tensor every time it is read: the "
    "targets drift away step after step and the loss climbs slowly with no other mechanism.",
)
def h490_barometer_target_drift(ctx) -> None:
    gen = seeded(4910)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    src = _readings(gen, 64, 10, 4910)
    factor = [1.0]

    def alter(step, x, y):
        if step >= BARO_STEP:
            factor[0] *= 1.015
        return x, y * factor[0]

    losses, _ = _train(ctx, model, opt, src, 240, F.mse_loss, alter=alter)
    best = min(_mean(losses[i : i + 10]) for i in range(0, BARO_STEP, 5))
    ctx.check("trained first", best < 0.7 * _mean(losses[:10]))
    ctx.check(f"targets over 4x ({factor[0]:.1f})", factor[0] > 4)
    ctx.check("the loss climbs over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("no NaN", _finite(losses))


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="hotspring_mineral_band_masked_encoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hot-spring mineral-band masked language model (hand-written BERT-style encoder, tied "
    "MLM head, generated sequences of repeated 4-band motifs, loss on masked positions only, "
    "AdamW, warm-up + cosine, clipping at 1). The masking rate rises from 15% to 40% at step "
    "150 (a curriculum): the loss rises at the switch and falls again.",
)
def h490_hotspring_mask_rise(ctx) -> None:
    seeded(4911)
    model = _MaskedLM()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    steps, switch = 300, 150
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    state = {"step": 0}

    def before(step):
        state["step"] = step

    g = torch.Generator().manual_seed(49110)
    batches = _motif_sequences(g, rate=lambda: 0.15 if state["step"] < switch else 0.40)
    losses, _ = _train(
        ctx, model, opt, batches, steps, _mlm_loss, before=before, clip=1.0, sched=sched
    )
    ctx.check("trained and finite", _fell(losses))
    ctx.check(
        "the loss rises at the switch",
        _mean(losses[switch : switch + 10]) > 1.1 * _mean(losses[switch - 10 : switch]),
    )
    ctx.check(
        "then falls again (a later 10-step mean under 0.9x the switch's)",
        min(_mean(losses[i : i + 10]) for i in range(switch + 20, steps - 9, 5))
        < 0.9 * _mean(losses[switch : switch + 10]),
    )


class _BreathConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _breath_traces(gen, batch=48, length=64):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        freq = 0.08 + 0.06 * y.float()[:, None]
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freq * t + phase) + 0.5 * torch.randn(batch, length, generator=gen)
        noisy = torch.rand(batch, generator=gen) < 0.05
        y = torch.where(noisy, torch.randint(0, 4, (batch,), generator=gen), y)
        yield x, y


@scenario(
    family="biathlon_range_breath_rhythm_conv1d",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Biathlon range breath-rhythm classifier (ReLU Conv1d on chest-strap traces, four "
    "rhythm classes, 5% noisy labels, cross-entropy with label smoothing 0.1, SGD Nesterov "
    "under OneCycleLR, clipping at 1). A healthy control.",
)
def h490_biathlon_breath_control(ctx) -> None:
    gen = seeded(4912)
    model = _BreathConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _breath_traces(gen),
        200,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained and finite", _fell(losses))


class _MonsoonNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 48)
        self.fc2 = nn.Linear(48, 48)
        self.mean_head = nn.Linear(48, 1)
        self.logvar_head = nn.Linear(48, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.logvar_head(h)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="monsoon_onset_date_gaussian_nll_net",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Monsoon onset-date regressor with a Gaussian NLL (SiLU MLP on sea-surface temperature "
    "and pressure-gradient features, mean and log-variance heads, ASGD with two param groups, "
    "ReduceLROnPlateau, gradient accumulation over 2). A healthy control.",
)
def h490_monsoon_gauss_control(ctx) -> None:
    gen = seeded(4913)
    model = _MonsoonNet()
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    heads = list(model.mean_head.parameters()) + list(model.logvar_head.parameters())
    opt = torch.optim.ASGD([{"params": trunk, "lr": 0.03}, {"params": heads, "lr": 0.015}])
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)

    def after(step, loss):
        plateau.step(loss)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 4913, noise=0.2),
        200,
        _gauss_nll,
        after=after,
        accumulate=2,
    )
    ctx.check(
        "trained and finite", _finite(losses) and _mean(losses[-10:]) < _mean(losses[:10]) - 0.3
    )
