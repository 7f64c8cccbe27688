"""Held-out set 223 (``h223_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a kemenche bow-phrase attention classifier ported without its QK-LayerNorm (attention
logits grow), a barchan-dune migration regressor whose L2 penalty enters the loss with the wrong
sign (slow climb), a logrolling bout-time regressor whose curriculum loss weight falls back to 64
for one step (gradient burst), a ten-layer ReLU ophicleide key-leak MLP initialised with
orthogonal gain 2 (gradients grow through depth), a williwaw gust Gaussian-NLL net whose variance
head has no softplus (log of a negative variance), a ventifact abrasion regressor fed one batch
with an unmasked -9999 sentinel, a currier leather grader whose encoder param group got lr 0
from a misspelt config key, a conker match ReLU net on raw readings with Adamax at 0.05 (ReLUs
die), a rebec string-break classifier trained on 1/2 labels with BCE (head logits grow without
bound), a tallow candle dip regressor whose warm-up applies the linear scaling rule twice (past
2/sharpness). Controls: a sashiko stitch classifier with dropout, weight decay and label
smoothing, a yardang ridge Huber regressor with clipping and ReduceLROnPlateau, a gaida chanter
tied autoencoder under fp16 autocast with a GradScaler, OneCycleLR and accumulation.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, grad_norm, scenario, seeded


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


def _median(xs) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs) -> int | None:
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
    watch=None,
    alter=None,
    weight=None,
    penalty=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    stop_at=None,
):
    """The file's loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` sees the forward pass, ``weight(step)`` multiplies the
    backpropagated loss, ``penalty()`` is added to it; the logged loss is the data loss. Stops
    after logging a NaN loss (or a loss above ``stop_at``)."""
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
            if watch is not None:
                watch(step, out, x, y)
            total = loss * (weight(step) if weight is not None else 1.0)
            if penalty is not None:
                total = total + penalty()
            total = total / accumulate
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
                sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown) or (stop_at is not None and shown > stop_at):
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


def _kinds(gen, batch, d_in, classes, seed, noise=1.0):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

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


# -- kemenche: an attention classifier ported without its QK-LayerNorm ----------------------------


class BowAttention(nn.Module):
    """Single-head self-attention; ``qk_norm`` is what the original model had."""

    def __init__(self, dim, qk_norm=False):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.qn = nn.LayerNorm(dim) if qk_norm else nn.Identity()
        self.kn = nn.LayerNorm(dim) if qk_norm else nn.Identity()
        self.last_logits = None

    def forward(self, x):
        q, k = self.qn(self.q(x)), self.kn(self.k(x))
        logits = q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])
        self.last_logits = logits.detach()
        return torch.softmax(logits, -1) @ self.v(x)


class PhraseNet(nn.Module):
    def __init__(self, vocab=24, length=20, dim=32, classes=8):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.attn = BowAttention(dim)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        x = x + self.attn(x)
        return self.head(self.ln(x[:, 0]))


def _bow_phrases(gen, batch, length=20, classes=8):
    """Bow-stroke tokens of a kemenche phrase; a cadence token (1) marks the stroke that names
    the phrase's makam (the next token, 16..23). Position 0 is a start token (0)."""
    while True:
        x = torch.randint(2, 16, (batch, length), generator=gen)
        x[:, 0] = 0
        where = torch.randint(2, length - 1, (batch,), generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, where] = 1
        x[rows, where + 1] = 16 + y
        yield x, y


@scenario(
    family="kemenche_bow_phrase_attention_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-layer self-attention classifier (tok, pos, attn with q/k/v, ln, head) naming the makam of a kemenche bow phrase from 20 bow-stroke tokens (the stroke after a cadence token names it), cross-entropy, Adam at 3e-2. The model was ported from a version with QK-LayerNorm; the port dropped the norms (qk_norm defaults to False) but kept the high learning rate tuned for the normed model: the q and k weights grow and the attention logits q.k/sqrt(d) climb from about 3 to about 300 (over 20x), and the row the head reads collapses to one-hot; the loss stays finite.",
)
def h223_kemenche_no_qk_norm(ctx: Context) -> None:
    gen = seeded(22301)
    model = PhraseNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    top, ent = {}, {}

    def watch(step, out, x, y):
        lg = model.attn.last_logits
        top[step] = float(lg.abs().max())
        p = torch.softmax(lg, -1)
        p0 = p[:, 0]  # the row the head reads
        ent[step] = float(-(p0 * torch.log(p0.clamp_min(1e-30))).sum(-1).mean())

    _loop(
        ctx, model, opt, _bow_phrases(gen, 64), 200, F.cross_entropy, classifier=True, watch=watch
    )
    n = len(ctx.losses)
    ctx.check("max attention logit grew over 20x from step 0", top[n - 1] > 20 * top[0])
    ctx.check("max attention logit above 150 at the end", top[n - 1] > 150)
    ctx.check("read row entropy fell below 0.1 nats", ent[n - 1] < 0.1)
    ctx.check("read row entropy above 1.5 nats at start", ent[0] > 1.5)
    ctx.check("loss finite", _finite(ctx.losses))


# -- barchan dune: an L2 penalty added with the wrong sign -----------------------------------------


@scenario(
    family="barchan_dune_migration_tanh_regressor",
    optimizer="SGD (momentum)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a barchan dune's yearly migration from 10 standardised readings (wind speed, sand supply, dune height, ...), MSE, SGD momentum 0.9 at 0.02. The L2 penalty was copied from a reward-maximisation script and enters the loss as `mse - wd * sum(w**2)`: the weights are pushed outwards every step, the fit is good for a while and then the data loss climbs slowly and steadily (no jump) over the rest of the run while the weight norm grows; finite.",
)
def h223_barchan_l2_sign_flip(ctx: Context) -> None:
    gen = seeded(22302)
    model = Stack(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    wd = 5e-2
    norms = []

    def penalty():
        return -wd * sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)

    def before(step):
        norms.append(float(sum((p.detach() ** 2).sum() for p in model.parameters()) ** 0.5))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=3),
        300,
        F.mse_loss,
        penalty=penalty,
        before=before,
    )
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _mean(ls[max(0, i - 5) : i + 5]))
    ctx.check("loss fell first", _mean(ls[low - 5 : low + 5]) < 0.6 * _mean(ls[:5]))
    ctx.check(
        "loss at the end over 2.5x its lowest", _mean(ls[-10:]) > 2.5 * _mean(ls[low - 5 : low + 5])
    )
    ctx.check("lowest loss reached before step 100", low < 100)
    ctx.check("weight norm over 2x its start", norms[-1] > 2 * norms[0])
    ctx.check(
        "climb is slow: each 20-step mean under 1.5x the previous one",
        all(
            _mean(ls[i + 20 : i + 40]) < 1.5 * _mean(ls[i : i + 20])
            for i in range(low, len(ls) - 40, 20)
        ),
    )
    ctx.check("finite", _finite(ls))


# -- logrolling: a curriculum loss weight falls back to its default for one step --------------------


@scenario(
    family="logrolling_bout_time_gelu_regressor",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a logrolling bout's length from 12 standardised readings (log diameter, water temperature, roller weights, ...), MSE, SGD Nesterov 0.9 at 0.005. The loss weight comes from a curriculum table keyed by epoch; at the epoch boundary of step 120 the lookup misses and `weights.get(epoch, 64.0)` returns the debugging default 64 for one step: the gradient is 64x, the momentum carries the kick over the next steps and the loss climbs over 3x within 15 steps, then the run recovers; finite.",
)
def h223_logrolling_curriculum_weight(ctx: Context) -> None:
    gen = seeded(22303)
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, nesterov=True)
    table = {e: 1.0 for e in range(12)}

    def weight(step):
        epoch = step // 10 if step != 120 else "12"  # the key built as a string at the boundary
        return table.get(epoch, 64.0)

    _loop(ctx, model, opt, _readings(gen, 64, 12, seed=4), 240, F.mse_loss, weight=weight)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 120 over 30x the median of 100-119", gn[120] > 30 * _median(gn[100:120])
    )
    ctx.check(
        "no gradient over 5x its running median before it",
        all(gn[i] < 5 * _median(gn[i - 20 : i]) for i in range(40, 120)),
    )
    ctx.check(
        "loss over 3x the mean of 110-119 within 121-135", max(ls[121:136]) > 3 * _mean(ls[110:120])
    )
    ctx.check(
        "loss back within 1.5x its level by 200-240", _mean(ls[200:]) < 1.5 * _mean(ls[100:120])
    )
    ctx.check("finite", _finite(ls))


# -- ophicleide: a ten-layer ReLU MLP initialised with orthogonal gain 2 ---------------------------


class KeyNet(nn.Module):
    """Ten Linear layers with ReLUs between them, in one Sequential ``net``."""

    def __init__(self, d_in=16, width=64, depth=10, gain=2.0):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1) + [1]
        layers = []
        for i in range(depth):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < depth - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, gain=gain)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x).squeeze(-1)


@scenario(
    family="ophicleide_key_leak_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("net.0", "net.2"),
    diverges="auto",
    heldout=True,
    note="A plain ten-layer ReLU MLP (net.0 ... net.18, width 64, no normalisation) regressing the air leak of an ophicleide's keys from 16 standardised pad-seal readings, MSE, plain SGD at 1e-3. The init was written as `orthogonal_(w, gain=2.0)`, the 2 of He's variance passed as a standard-deviation gain (sqrt 2 was meant): each layer multiplies the signal by about sqrt 2, so the backward gradients grow through depth, about 20x larger at the input layer than at the last hidden one; the first updates overshoot and the loss blows up within a few steps.",
)
def h223_ophicleide_gain_two(ctx: Context) -> None:
    gen = seeded(22304)
    model = KeyNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    delta = {}  # gradient norm reaching each hidden activation, per step

    def keep(i):
        def hook(module, inp, out):
            if out.requires_grad:
                out.register_hook(
                    lambda g: delta.setdefault(len(ctx.losses), {}).update({i: float(g.norm())})
                )

        return hook

    for i in (1, 17):
        model.net[i].register_forward_hook(keep(i))
    _loop(ctx, model, opt, _readings(gen, 64, 16, seed=5), 80, F.mse_loss, stop_at=1e12)
    # the same batch through the intended init (gain sqrt 2) for scale
    ref = KeyNet(gain=math.sqrt(2.0))
    bad = KeyNet()
    x, y = next(_readings(torch.Generator().manual_seed(7), 64, 16, seed=5))
    F.mse_loss(ref(x), y).backward()
    F.mse_loss(bad(x), y).backward()
    ls = ctx.losses
    ctx.check(
        "gradient at the first activation over 10x the last one's at step 0",
        delta[0][1] > 10 * delta[0][17],
    )
    ctx.check(
        "gradient norm at init over 100x the intended init's", grad_norm(bad) > 100 * grad_norm(ref)
    )
    ctx.check("loss blew up over 1e6x its start", max(ls) > 1e6 * ls[0] or not _finite(ls))
    ctx.check("blew up within 10 steps", len(ls) <= 10)
    # the intended init trains at the same learning rate
    ref = KeyNet(gain=math.sqrt(2.0))
    ropt = torch.optim.SGD(ref.parameters(), lr=1e-3)
    batches = _readings(torch.Generator().manual_seed(8), 64, 16, seed=5)
    rl = []
    for _ in range(60):
        x, y = next(batches)
        loss = F.mse_loss(ref(x), y)
        ropt.zero_grad()
        loss.backward()
        ropt.step()
        rl.append(float(loss.detach()))
    ctx.check("the intended init (gain sqrt 2) trains at the same lr", _fell(rl, ratio=0.9))


# -- williwaw: a Gaussian-NLL net whose variance head lost its softplus ----------------------------


class GustNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.var_head.bias.fill_(1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        # the variance head's softplus was dropped in a refactor: nothing keeps it positive
        return torch.cat([self.mean_head(h), self.var_head(h)], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * (torch.log(var) + (y - mu) ** 2 / var)).mean()


@scenario(
    family="williwaw_gust_peak_gaussian_nll_mlp",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var_head",),
    diverges=206,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, mean_head, var_head) forecasting the peak gust of a williwaw (a katabatic fall wind) from 8 standardised readings, Gaussian NLL written out as 0.5*(log var + (y-mu)^2/var), RMSprop at 1e-4. A refactor dropped the softplus on var_head's output: the variance starts at about 1 and shrinks as the fit improves, until for some gust in a batch it crosses zero, torch.log of the negative variance gives NaN and the loss is NaN from then on.",
)
def h223_williwaw_variance_no_softplus(ctx: Context) -> None:
    gen = seeded(22305)
    model = GustNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    low = {}

    def watch(step, out, x, y):
        low[step] = float(out[:, 1].detach().min())

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=6, noise=0.1), 300, _gauss_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss first NaN at the declared step 206", bad == 206 and math.isnan(ls[bad]))
    ctx.check(
        "variance positive on every batch before it",
        bad is not None and min(low[s] for s in range(bad)) > 0,
    )
    ctx.check("variance negative on the NaN batch", bad is not None and low[bad] < 0)
    ctx.check("loss finite and falling before it", bad is not None and _fell(ls[:bad], k=5))


# -- ventifact: one batch with an unmasked -9999 missing-value sentinel ----------------------------


@scenario(
    family="ventifact_facet_abrasion_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the abrasion rate of a ventifact facet from 10 standardised field readings (sand flux, wind speed, rock hardness, ...), MSE, NAdam at 2e-3. One field station's shard writes a missing wind reading as -9999, and the loader's mask for it only checks NaN: the batch at step 150 carries four rows with -9999 in one column; the loss jumps over 100x on that batch and the large update damages the fit (the loss is about 2x for the next ten steps) before it recovers; finite.",
)
def h223_ventifact_sentinel_batch(ctx: Context) -> None:
    gen = seeded(22306)
    model = Stack(10, hidden=64)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    lows = []

    def alter(step, x, y):
        if step == 150:
            x = x.clone()
            x[:4, 3] = -9999.0
        lows.append(float(x.min()))
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=7), 260, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("batch 150 holds the -9999 sentinel", lows[150] == -9999.0)
    ctx.check("no other batch below -10", all(v > -10 for i, v in enumerate(lows) if i != 150))
    ctx.check("loss at 150 over 100x the median of 130-149", ls[150] > 100 * _median(ls[130:150]))
    ctx.check(
        "loss over 151-160 above 1.3x the mean of 130-149",
        _mean(ls[151:161]) > 1.3 * _mean(ls[130:150]),
    )
    ctx.check("loss fell before it", _fell(ls[:150]))
    ctx.check("finite", _finite(ls))


# -- currier: an encoder param group at lr 0 from a misspelt config key ----------------------------


def _currier_groups(model, cfg):
    return [
        {
            "params": [*model.fc1.parameters(), *model.fc2.parameters()],
            "lr": cfg.get("encoder_lr", 0.0),
        },
        {"params": model.head.parameters(), "lr": cfg["lr"]},
    ]


@scenario(
    family="currier_leather_stuffing_grade_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) grading curried leather into 6 stuffing grades from 14 standardised readings (grease uptake, thickness, tensile, ...), cross-entropy, AdamW with two param groups (encoder fc1+fc2, head) and weight decay 0.01. The config spells the key `enocder_lr`, and the group reads `cfg.get('encoder_lr', 0.0)`: fc1 and fc2 train at lr 0 (their weights never move, weight decay included), only the head learns; the loss falls, but to a plateau well above what the same run reaches with the encoder learning.",
)
def h223_currier_encoder_lr_zero(ctx: Context) -> None:
    gen = seeded(22307)
    cfg = {"lr": 3e-3, "enocder_lr": 3e-3}
    model = Stack(14, hidden=48, out=6, act=nn.GELU)
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    wh = model.head.weight.detach().clone()
    opt = torch.optim.AdamW(_currier_groups(model, cfg), weight_decay=0.01)
    data = _kinds(gen, 64, 14, 6, seed=8, noise=1.6)
    _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True)
    ls = ctx.losses
    # the same run with the key spelt right
    gen2 = seeded(22307)
    fixed = Stack(14, hidden=48, out=6, act=nn.GELU)
    fopt = torch.optim.AdamW(
        _currier_groups(fixed, {"lr": 3e-3, "encoder_lr": 3e-3}), weight_decay=0.01
    )
    fdata = _kinds(gen2, 64, 14, 6, seed=8, noise=1.6)
    fl = []
    for _ in range(200):
        x, y = next(fdata)
        loss = F.cross_entropy(fixed(x), y)
        fopt.zero_grad()
        loss.backward()
        fopt.step()
        fl.append(float(loss.detach()))
    ctx.check(
        "fc1 and fc2 weights never moved",
        torch.equal(model.fc1.weight, w1) and torch.equal(model.fc2.weight, w2),
    )
    ctx.check(
        "head weights moved",
        float((model.head.weight.detach() - wh).norm()) > 0.1 * float(wh.norm()),
    )
    ctx.check("final loss over 1.3x the fixed run's", _mean(ls[-20:]) > 1.3 * _mean(fl[-20:]))
    ctx.check("finite", _finite(ls))


# -- conker: a ReLU net on raw readings with Adamax at a high rate ---------------------------------


def _conker_bouts(gen, batch, seed=9):
    """Raw readings of a conker bout (string length mm, nut mass g, strike speed m/s, nut
    hardness N, age in seasons, ...) and which of 5 outcome classes it ends in."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor([250.0, 12.0, 9.0, 300.0, 1.5, 35.0, 20.0, 4.0])
    scale = torch.tensor([40.0, 3.0, 2.0, 80.0, 1.0, 6.0, 5.0, 1.5])
    protos = torch.randn(5, 8, generator=g)
    while True:
        y = torch.randint(0, 5, (batch,), generator=gen)
        z = protos[y] + 0.8 * torch.randn(batch, 8, generator=gen)
        yield mean + scale * z, y


@scenario(
    family="conker_match_outcome_relu_mlp",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act1", "fc1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting a conker bout's outcome (5 classes) from 8 raw readings (string length in mm, nut mass in g, strike speed, hardness in N, ...) that were never standardised, cross-entropy, Adamax at 0.1 with no warm-up. The first large updates on the raw-scale inputs push fc1's pre-activations negative on every input: act1's dead share goes from about 30% to over 85% within the first 20 steps and never comes back, the network loses most of its capacity and the loss stalls far above what the same net reaches on standardised inputs (about 0.1).",
)
def h223_conker_relus_die(ctx: Context) -> None:
    gen = seeded(22308)
    model = Stack(8, hidden=64, out=5)
    opt = torch.optim.Adamax(model.parameters(), lr=0.1)
    dead = {}

    def watch(step, out, x, y):
        with torch.no_grad():
            dead[step] = dead_fraction(model.act1(model.fc1(x)))

    _loop(
        ctx, model, opt, _conker_bouts(gen, 64), 200, F.cross_entropy, classifier=True, watch=watch
    )
    ls = ctx.losses
    ctx.check("under 40% of act1 units dead at step 0", dead[0] < 0.4)
    ctx.check("over 85% of act1 units dead by step 20", dead[20] > 0.85)
    ctx.check(
        "over 85% dead on every step of the last 100",
        min(dead[s] for s in range(100, len(ls))) > 0.85,
    )
    ctx.check("loss at the end above 0.5x chance (ln 5)", _mean(ls[-20:]) > 0.5 * math.log(5))
    ctx.check("finite", _finite(ls))


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- tallow candle: a warm-up that applies the linear scaling rule twice ---------------------------


@scenario(
    family="tallow_candle_dip_thickness_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=35,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the wall thickness a tallow candle gains per dip from 10 standardised readings (tallow temperature, dwell time, room temperature, ...), MSE, plain SGD with a 100-step linear warm-up (LambdaLR). The peak rate follows the linear scaling rule, base 0.2 x batch 64/32 = 0.4, but the config applies the rule a second time in the launcher: the warm-up climbs towards 0.8. At step 35 lr x sharpness (the top Hessian eigenvalue, measured by power iteration) passes 2, the loss starts to oscillate and grow, and it blows up near step 88; the same run peaking at 0.4 stays finite.",
)
def h223_tallow_warmup_scaled_twice(ctx: Context) -> None:
    gen = seeded(22310)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.2 * (64 / 32) * (64 / 32))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    edge = {}

    def watch(step, out, x, y):
        if step % 5 == 0:
            edge[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, x, y)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=11),
        160,
        F.mse_loss,
        watch=watch,
        sched=sched,
        stop_at=1e6,
    )
    ls = ctx.losses
    first = min((s for s, v in edge.items() if v > 2), default=None)
    ctx.check("lr x sharpness first above 2 at step 35", first == 35)
    ctx.check(
        "lr x sharpness above 2 on most measured steps after it",
        sum(v > 2 for s, v in edge.items() if s >= 35) > 0.6 * sum(1 for s in edge if s >= 35),
    )
    ctx.check("loss fell before it", _fell(ls[:35], k=5))
    ctx.check("loss blew up over 1e4x its lowest", max(ls) > 1e4 * min(ls) or not _finite(ls))
    # the same run at the intended peak
    gen2 = seeded(22310)
    ref = Stack(10, hidden=64, act=nn.Tanh)
    ropt = torch.optim.SGD(ref.parameters(), lr=0.2 * (64 / 32))
    rsched = torch.optim.lr_scheduler.LambdaLR(ropt, lambda s: min(1.0, (s + 1) / 100))
    rdata = _readings(gen2, 64, 10, seed=11)
    rl = []
    for _ in range(len(ls)):
        x, y = next(rdata)
        loss = F.mse_loss(ref(x), y)
        ropt.zero_grad()
        loss.backward()
        ropt.step()
        rsched.step()
        rl.append(float(loss.detach()))
    ctx.check(
        "the intended peak 0.4 stays finite and below its start",
        _finite(rl) and max(rl[20:]) < rl[0],
    )


# -- rebec: string-break labels stored as 1/2 fed to BCE ------------------------------------------


def _rebec_strings(gen, batch, seed=12):
    """Twelve standardised readings of a rebec gut string (tension, humidity, age, ...) and
    whether it broke within the week, stored 1-indexed (1 = held, 2 = broke) in the log."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        broke = (x @ w / math.sqrt(12) + 0.5 * torch.randn(batch, generator=gen) > 0).float()
        yield x, broke + 1.0


@scenario(
    family="rebec_gut_string_break_bce_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting whether a rebec's gut string breaks within the week from 12 standardised readings, BCE with logits, RAdam at 3e-3. The log stores the label 1-indexed (1 = held, 2 = broke) and nobody subtracted 1: with a target of 2 the BCE is softplus(z) - 2z, unbounded below, so the head is pushed to raise its logit without end; the logits grow steadily over 20x and the loss goes negative (impossible for a real BCE) and keeps falling; finite.",
)
def h223_rebec_one_indexed_labels(ctx: Context) -> None:
    gen = seeded(22312)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    mean_logit, ys = {}, {}

    def watch(step, out, x, y):
        mean_logit[step] = float(out.detach().abs().mean())
        ys[step] = float(y.max())

    _loop(
        ctx,
        model,
        opt,
        _rebec_strings(gen, 64),
        240,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ls = ctx.losses
    n = len(ls)
    ctx.check("targets reach 2", max(ys.values()) == 2.0)
    ctx.check("mean |logit| grew over 20x from step 10", mean_logit[n - 1] > 20 * mean_logit[10])
    ctx.check(
        "mean |logit| still growing over the last 40 steps",
        mean_logit[n - 1] > 1.2 * mean_logit[n - 41],
    )
    ctx.check("loss went below 0", min(ls) < 0)
    ctx.check("finite", _finite(ls))


# -- controls ---------------------------------------------------------------------------------------


class StitchNet(nn.Module):
    def __init__(self, d_in=16, hidden=96, classes=7, p=0.2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.drop2(self.act2(self.fc2(self.drop1(self.act1(self.fc1(x)))))))


@scenario(
    family="sashiko_stitch_pattern_dropout_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP with dropout 0.2 (fc1, drop1, fc2, drop2, head) naming one of 7 sashiko stitch patterns from 16 standardised stitch-length and spacing readings, cross-entropy with label smoothing 0.1, AdamW at 2e-3 with weight decay 0.05 (biases excluded in a second param group), 20-step warm-up then cosine decay; trains normally.",
)
def h223_sashiko_dropout_weight_decay(ctx: Context) -> None:
    gen = seeded(22313)
    model = StitchNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=2e-3
    )
    steps = 220
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))
        ),
    )
    _loop(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 7, seed=13, noise=1.4),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    model.eval()
    x, y = next(_kinds(torch.Generator().manual_seed(99), 512, 16, 7, seed=13, noise=1.4))
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("held-out accuracy over 0.7", acc > 0.7)
    ctx.check("finite", _finite(ctx.losses))


def _yardang_ridges(gen, batch, seed=14):
    """Ten standardised readings of a yardang field (wind speed, sediment hardness, ...) and
    the ridge height, with Student-t noise from the surveying."""
    base = _readings(gen, batch, 10, seed=seed, noise=0.0)
    t = torch.distributions.StudentT(2.5)
    while True:
        x, y = next(base)
        yield x, y + 0.1 * t.sample((batch,))


@scenario(
    family="yardang_ridge_height_huber_regressor",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP (fc1, fc2, head) regressing the ridge height of a yardang from 10 standardised readings with heavy-tailed Student-t survey noise, Huber loss (delta 0.5), SGD momentum 0.9 at 0.02, gradient clipping at norm 1, ReduceLROnPlateau (factor 0.5, patience 15); trains normally.",
)
def h223_yardang_huber_plateau(ctx: Context) -> None:
    gen = seeded(22314)
    model = Stack(10, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _loop(
        ctx,
        model,
        opt,
        _yardang_ridges(gen, 64),
        240,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, k=20, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))


class ChanterAE(nn.Module):
    """A tied-weight autoencoder: the decoder uses the encoder weights transposed."""

    def __init__(self, d_in=24, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _chanter_tones(gen, batch, seed=15):
    """24-bin spectra of a gaida chanter's notes: a few latent factors (pitch, reed wetness,
    bag pressure) mixed into the bins, plus noise."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(5, 24, generator=g) / math.sqrt(5)
    while True:
        z = torch.randn(batch, 5, generator=gen)
        x = torch.tanh(z @ mix) + 0.05 * torch.randn(batch, 24, generator=gen)
        yield x, x


@scenario(
    family="gaida_chanter_tone_tied_autoencoder",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tied-weight tanh autoencoder (enc, its transpose as decoder, dec_bias) compressing 24-bin spectra of gaida chanter notes to 8 codes, MSE, Adagrad under OneCycleLR (max 0.1, no momentum cycling), accumulation over 2 micro-batches, fp16 autocast with a torch.amp.GradScaler; trains normally.",
)
def h223_gaida_tied_ae_fp16(ctx: Context) -> None:
    gen = seeded(22315)
    model = ChanterAE()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=steps, cycle_momentum=False
    )
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _chanter_tones(gen, 32),
        steps,
        F.mse_loss,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))
    ctx.check(
        "loss scale stayed finite and positive", all(math.isfinite(s) and s > 0 for s in ctx.scales)
    )
