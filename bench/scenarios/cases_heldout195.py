"""Held-out set 195 (``h195_``): a Hugging Face HY-V4-VL vision tower built from a tiny config
and hand-written models of trades, crafts, sports, instruments and natural phenomena not covered
before: a gondola oar-stroke attention net whose weight-decay filter leaves the attention
undecayed, a charango strum-decay SiLU regressor with a hand-written weight decay of the wrong
sign, a quicksand penetration regressor fed one shard's pore pressures in pascals, a celesta
hammer cosine classifier whose scale was typed 3000 for 30, a rime-ice accretion Gaussian-NLL
net with an unclamped decibel feature, a boxing-glove punch-force fp16 net with a hand-written
softplus, a log-rolling (birling) deep ReLU classifier initialised with gain 2 for sqrt(2), a
pipa tremolo classifier whose trunk warm-up lambda uses integer division, a BMX dirt-jump
landing BCE net whose epoch-end evaluation backpropagates into the next step, a green-flash
sighting tanh regressor whose warm-up lost its cap, and three controls (the HY-V4-VL vision
tower pre-trained on half the digits and fine-tuned on all with AdamW and a warm-up, an
axe-throwing target-zone classifier with NAdam and OneCycleLR, a parasail tow-height fp16
regressor with RMSprop and ReduceLROnPlateau).

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
    collapsed_fraction,
    digit_batches,
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


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _moved(params, start) -> float:
    return max(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    stop_on_nan=True,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)`` records after the forward
    pass, ``after(step)`` after the optimizer step; ``accumulate`` micro-batches a step; stops
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
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
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
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- gondola: a weight-decay filter on "attn" leaves the query/key weights undecayed --------------


class StrokeAttention(nn.Module):
    """Single-head self-attention by hand: logits q.k / sqrt(d), softmax over the strokes."""

    def __init__(self, dim=32):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.dim = dim
        self.last_logits = None

    def forward(self, h):
        logits = self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(self.dim)
        self.last_logits = logits.detach()
        return self.o(torch.softmax(logits, -1) @ self.v(h))


class GondolaNet(nn.Module):
    """Stroke embedding (tied to the head) plus a reading projection, attention, mean pooling."""

    def __init__(self, strokes=6, dim=32):
        super().__init__()
        self.stroke = nn.Embedding(strokes, dim)
        self.reading = nn.Linear(3, dim)
        self.act = nn.GELU()
        self.attn = StrokeAttention(dim)
        self.attn_norm = nn.LayerNorm(dim)
        self.pool_norm = nn.LayerNorm(dim)

    def forward(self, x):
        h = self.act(self.stroke(x[..., 0].long()) + self.reading(x[..., 1:]))
        h = h + self.attn(self.attn_norm(h))
        return self.pool_norm(h.mean(1)) @ self.stroke.weight.T


def _gondola(gen, batch, length=16, strokes=6):
    """Sixteen oar strokes of a gondolier (stroke type, blade force, tempo, and the flag of the
    stern call 'premi'); the label is the stroke type taken on the call."""
    while True:
        kind = torch.randint(0, strokes, (batch, length), generator=gen)
        call = torch.randint(0, length, (batch, 1), generator=gen)
        flag = torch.zeros(batch, length).scatter(1, call, 1.0)
        force = torch.rand(batch, length, generator=gen)
        tempo = torch.rand(batch, length, generator=gen)
        x = torch.stack([kind.float(), force, tempo, flag], -1)
        x[..., 1:] += 0.05 * torch.randn(batch, length, 3, generator=gen)
        yield x, kind.gather(1, call).squeeze(1)


@scenario(
    family="gondola_oar_stroke_tied_attention_net",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A gondolier's oar-stroke logger naming the stroke (6 kinds) taken on the stern call "
    "'premi' among 16: a stroke embedding tied to the output head, a reading projection, one "
    "hand-written self-attention module (q/k/v/o Linears, logits q.k/sqrt(d), no query/key "
    "normalisation) behind a LayerNorm, a residual, mean pooling, cross-entropy. AdamW at 3e-2 with two "
    "param groups: the no-decay filter was meant to catch `attn_norm` but tests `'attn' in "
    "name`, so the attention's q/k/v/o weights land in the weight_decay=0 group. To point every "
    "position at the called stroke the q and k weights grow unchecked: the largest attention "
    "logit grows from a few at step 5 past 100 after step 200 (about 200 at the end), the "
    "attention sharp (top weight above 0.9); the loss falls and stays finite.",
)
def h195_gondola_attention_decay_filter(ctx: Context) -> None:
    gen = seeded(19501)
    model = GondolaNet()
    decay = [p for n, p in model.named_parameters() if "attn" not in n and p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if "attn" in n or p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-2,
    )
    top, peak = [], []

    def watch(step, out, x, y):
        lg = model.attn.last_logits
        top.append(float(lg.abs().amax(dim=(1, 2)).mean()))
        peak.append(float(torch.softmax(lg, -1).amax(-1).mean()))

    _train(ctx, model, opt, _gondola(gen, 64), 300, F.cross_entropy, classifier=True, watch=watch)
    ctx.check(
        "q and k weights in the no-decay group",
        all(any(p is q for q in no_decay) for p in model.attn.q.parameters()),
    )
    ctx.check("largest attention logit grew 20x from step 5", _mean(top[-10:]) > 20 * top[5])
    ctx.check("largest attention logit above 100 over the last 50 steps", min(top[-50:]) > 100)
    ctx.check("attention sharp (mean top weight > 0.9) at the end", _mean(peak[-10:]) > 0.9)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))


# -- charango: a hand-written decoupled weight decay with the wrong sign --------------------------


@scenario(
    family="charango_strum_decay_silu_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP predicting a charango strum's standardised decay time from 12 pickup "
    "readings, MSE, SGD with Nesterov momentum 0.9 at 3e-3 and a hand-written decoupled weight "
    "decay applied after each step as `p.add_(p, alpha=lr * wd)` (the minus sign of "
    "`p.mul_(1 - lr * wd)` lost in a refactor), wd 1.5. The loss falls over the first 100 "
    "steps, then every weight is inflated 0.45% a step, faster than the gradient pulls it "
    "back: the weights grow and the loss climbs slowly, finite, to about 3x its lowest level.",
)
def h195_charango_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(19502)
    model = Stack(12, 64, act=nn.SiLU)
    lr, wd = 3e-3, 1.5
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)
            norms.append(float(torch.sqrt(sum((p * p).sum() for p in model.parameters()))))

    _train(ctx, model, opt, _readings(gen, 64, 12, seed=5), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("loss fell over the first 30 steps", _mean(ls[25:35]) < 0.8 * _mean(ls[:5]))
    ctx.check("lowest loss before step 150", low < 150)
    ctx.check(
        "loss at the end 2x its lowest 10-step mean",
        _mean(ls[-10:]) > 2 * min(_mean(ls[i : i + 10]) for i in range(len(ls) - 10)),
    )
    ctx.check("weight norm grew 3x", norms[-1] > 3 * norms[0])
    ctx.check("loss finite throughout", _finite(ls))


# -- quicksand: one shard's pore pressures logged in pascals -------------------------------------


@scenario(
    family="quicksand_penetration_depth_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="A ReLU MLP predicting a penetrometer's standardised sinking depth in liquefied sand "
    "from 12 standardised vibration and pore-pressure readings, Huber loss, SGD momentum 0.9 "
    "at 2e-2 with gradient clipping at 1.0. The batch of step 110 comes from one survey's shard "
    "whose three pore-pressure channels were exported in pascals, not kilopascals: those "
    "readings are 1000x, the loss of that batch is hundreds of times the usual and its "
    "gradient (before clipping) far beyond any other; clipping bounds the update and the run "
    "settles back.",
)
def h195_quicksand_pascal_shard(ctx: Context) -> None:
    gen = seeded(19503)
    model = Stack(12, 64)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    onset = 110
    peak = []

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:, 9:] = x[:, 9:] * 1000.0
        peak.append(float(x.abs().max()))
        return x, y

    _train(
        ctx, model, opt, _readings(gen, 64, 12, seed=7), 220, F.huber_loss, alter=alter, clip=1.0
    )
    ls, g = ctx.losses, ctx.grad_norms
    before = _median(ls[onset - 20 : onset])
    ctx.check("inputs below 10 except at step 110", max(peak[:onset] + peak[onset + 1 :]) < 10)
    ctx.check("inputs past 1000 at step 110", peak[onset] > 1000)
    ctx.check("loss at step 110 is 100x the median before", ls[onset] > 100 * before)
    ctx.check("gradient at step 110 is 50x the median", g[onset] > 50 * _median(g))
    ctx.check("loss back below 2x its earlier level by the end", _mean(ls[-10:]) < 2 * before)
    ctx.check("loss fell before step 110", _fell(ls[:onset]))
    ctx.check("loss finite throughout", _finite(ls))


# -- celesta: a cosine head's scale typed 3000 for 30 --------------------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class CelestaNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=12, scale=30.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="celesta_hammer_note_cosine_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP naming which of a celesta's 12 bars a hammer struck from 16 spectral "
    "readings, a cosine-similarity head (normalised features times normalised class weights, "
    "times a scale), cross-entropy, RAdam at 1e-3. The scale was typed 3000 for the recipe's "
    "30: the logits span thousands, the float32 softmax rounds to exactly 0/1, the rows "
    "predicted right have a loss of exactly 0 and no gradient, the rows predicted wrong a "
    "loss in the hundreds; the loss stays finite and noisy.",
)
def h195_celesta_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(19504)
    model = CelestaNet(scale=3000.0)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    frac, spread = [], []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))
        spread.append(float((out.detach().amax(-1) - out.detach().amin(-1)).mean()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 12, seed=11),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("head's logit spread above 1000 at the end", _mean(spread[-10:]) > 1000)
    ctx.check(
        "half the rows' target probability is exactly 1.0 at the end", _mean(frac[-10:]) > 0.5
    )
    ctx.check("a target probability exactly 1.0 from step 5", min(frac[5:]) > 0)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- rime ice: an unclamped decibel feature meets a dry gauge ------------------------------------


class ToDecibel(nn.Module):
    """Appends 10 log10 of the liquid-water-content channel (column 0), no floor."""

    def forward(self, x):
        return torch.cat([x[:, 1:], 10 * torch.log10(x[:, :1])], -1)


class RimeNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.to_db = ToDecibel()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.to_db(x))))))


def _rime(gen, batch, seed, dry_from=None):
    """Liquid water content in g/m^3 (0.05 to 0.8 in fog) and 9 standardised weather readings;
    the target is the standardised accretion rate. From ``dry_from`` a new mast's gauge reports
    exactly 0 in dry air for some rows."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    step = 0
    while True:
        lwc = 0.05 + 0.75 * torch.rand(batch, 1, generator=gen)
        wx = torch.randn(batch, 9, generator=gen)
        y = torch.tanh(wx @ w / 3) + 0.8 * torch.log(lwc / 0.3).squeeze(1)
        y = y + 0.1 * torch.randn(batch, generator=gen)
        if dry_from is not None and step >= dry_from:
            lwc[:4] = 0.0
            y[:4] = -2.5
        step += 1
        yield torch.cat([lwc, wx], 1), y


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="rime_ice_accretion_decibel_gaussian_nll_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("to_db",),
    diverges=70,
    onset=70,
    heldout=True,
    note="A ReLU MLP with a mean and a softplus variance head (Gaussian NLL) forecasting rime-ice "
    "accretion on a mast from fog liquid water content and 9 weather readings, Adagrad at "
    "5e-2. A `to_db` module converts the liquid water content to decibels as "
    "10 * log10(lwc) with no floor. From step 70 a new mast's gauge reports exactly 0.0 in dry "
    "air: log10(0) is -inf, fc1 turns it into +-inf, fc2 sums +inf and -inf to NaN, the loss is NaN at step 70.",
)
def h195_rime_ice_decibel_log_zero(ctx: Context) -> None:
    gen = seeded(19505)
    model = RimeNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    low = []

    def watch(step, out, x, y):
        low.append(float(x[:, 0].min()))

    _train(ctx, model, opt, _rime(gen, 64, seed=3, dry_from=70), 120, _gauss_nll, watch=watch)
    ls = ctx.losses
    ctx.check("loss finite before step 70", _finite(ls[:70]))
    ctx.check("loss fell before step 70", _fell(ls[:70]))
    ctx.check("first non-finite loss at step 70", _first_bad(ls) == 70)
    ctx.check(
        "water content positive before 70 and exactly 0 at 70", min(low[:70]) > 0 and low[70] == 0.0
    )
    ctx.check(
        "to_db gives -inf on the step-70 batch",
        bool(torch.isneginf(model.to_db(torch.zeros(1, 10))).any()),
    )


# -- boxing: a hand-written softplus exp() overflowing float16 -----------------------------------


class LogOnePlusExp(nn.Module):
    """softplus written out as log(1 + exp(h)), in the dtype h comes in."""

    def __init__(self):
        super().__init__()
        self.last_peak = 0.0

    def forward(self, h):
        self.last_peak = float(h.detach().float().max())
        return torch.log(1 + torch.exp(h))


class PunchNet(nn.Module):
    def __init__(self, d_in=9, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.softplus = LogOnePlusExp()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.softplus(self.fc1(x))))).squeeze(-1)


def _punches(gen, batch, seed, heavy_from=None):
    """Nine glove accelerometer readings in g (about 0 to 3 in a sparring session); the target
    the standardised punch force. From ``heavy_from`` a few rows per batch are heavyweight bag
    sessions, readings 8x."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    step = 0
    while True:
        x = 3 * torch.rand(batch, 9, generator=gen)
        if heavy_from is not None and step >= heavy_from:
            x[:6] *= 8
        y = torch.tanh((x - 1.5) @ w / 4) + 0.2 * x.mean(-1) - 0.3
        step += 1
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="boxing_glove_punch_force_fp16_softplus_net",
    optimizer="Adam",
    cause="amp_overflow",
    where=("softplus",),
    diverges=90,
    onset=90,
    heldout=True,
    note="An MLP estimating punch force from 9 glove accelerometer readings, Adam at 1e-3, "
    "Huber loss, fp16 autocast with a torch.amp.GradScaler. The activation after fc1 is a "
    "hand-written softplus, log(1 + exp(h)), computed in float16 under autocast. In sparring "
    "sessions h stays below 11; from step 90 heavyweight bag sessions (a few rows per batch, "
    "readings 8x) put h past 11.1 and exp(h) overflows 65504 to inf: the loss is inf/NaN "
    "from step 90, every step is skipped, the scaler halves its scale each step; the fp32 "
    "weights stay finite.",
)
def h195_boxing_fp16_softplus_overflow(ctx: Context) -> None:
    gen = seeded(19506)
    model = PunchNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    peak = []
    _train(
        ctx,
        model,
        opt,
        _punches(gen, 64, seed=4, heavy_from=90),
        140,
        F.huber_loss,
        scaler=scaler,
        watch=lambda s, o, x, y: peak.append(model.softplus.last_peak),
        stop_on_nan=False,
    )
    onset = 90
    ctx.check("loss finite before step 90", _finite(ctx.losses[:onset]))
    ctx.check("loss fell before step 90", _fell(ctx.losses[:onset]))
    ctx.check("first non-finite loss at step 90", _first_bad(ctx.losses) == onset)
    ctx.check("fc1 output below 11 before step 90", max(peak[:onset]) < 11)
    ctx.check("fc1 output past 11.1 (exp past 65504) from step 90", min(peak[onset:]) > 11.1)
    ctx.check(
        "scaler scale fell 2**30-fold after step 90",
        ctx.scales[-1] < ctx.scales[onset - 1] / 2**30,
    )
    ctx.check(
        "weights still finite", all(bool(torch.isfinite(p).all()) for p in model.parameters())
    )


# -- log rolling: orthogonal init with gain 2 for sqrt(2) through ten ReLU layers ----------------


class BirlingNet(nn.Module):
    def __init__(self, d_in=10, width=64, depth=10, classes=3, gain=None):
        super().__init__()
        sizes = [d_in] + [width] * depth
        for i in range(depth):
            setattr(self, f"fc{i}", nn.Linear(sizes[i], sizes[i + 1]))
        self.depth = depth
        self.head = nn.Linear(width, classes)
        gain = math.sqrt(2) if gain is None else gain
        for i in range(depth):
            nn.init.orthogonal_(getattr(self, f"fc{i}").weight, gain=gain)
            nn.init.zeros_(getattr(self, f"fc{i}").bias)

    def forward(self, x):
        for i in range(self.depth):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return self.head(x)


@scenario(
    family="birling_log_roll_fall_deep_relu_classifier",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("fc0", "fc1"),
    diverges="auto",
    heldout=True,
    note="A 16-layer ReLU MLP (fc0..fc15, no normalisation) calling a log-rolling (birling) "
    "bout from 10 standardised foot and log-spin readings (stays up / falls left / falls "
    "right), cross-entropy, plain SGD at 2e-2 (the recipe's rate, which trains this net with "
    "gain sqrt(2)). The init helper takes the orthogonal gain from a table of variance "
    "factors: 2 instead of sqrt(2), so every ReLU layer grows the signal about 1.4x forward "
    "and the gradient about 1.4x backward: the gradient at fc0's output is about 200x that at "
    "fc15's. The first updates to the early layers are huge and the loss is NaN within a "
    "few steps.",
)
def h195_birling_init_gain_squared(ctx: Context) -> None:
    gen = seeded(19507)
    model = BirlingNet(depth=16, gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2)
    sig: dict[str, list[float]] = {"fc0": [], "fc15": []}

    def record(name):
        def hook(module, inputs, out):
            out.register_hook(lambda g: sig[name].append(float(g.norm())))

        return hook

    model.fc0.register_forward_hook(record("fc0"))
    model.fc15.register_forward_hook(record("fc15"))
    _train(ctx, model, opt, _kinds(gen, 64, 10, 3, seed=13), 150, F.cross_entropy, classifier=True)
    ls = ctx.losses
    ctx.check(
        "gradient at fc0's output 100x that at fc15's at step 0",
        sig["fc0"][0] > 100 * sig["fc15"][0],
    )
    ctx.check("loss at step 0 above 10 (outputs ~180x)", ls[0] > 10)
    ctx.check("loss non-finite within 20 steps", _first_bad(ls) is not None and _first_bad(ls) < 20)


# -- pipa: the trunk's warm-up lambda uses integer division ---------------------------------------


@scenario(
    family="pipa_lunzhi_tremolo_technique_classifier",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP naming which of 7 pipa right-hand techniques (lunzhi tremolo, tan, tiao, "
    "...) a passage uses from 20 nail-contact readings, cross-entropy, Adamax at 2e-3 with two "
    "param groups (trunk fc1/fc2, head) and a LambdaLR with one lambda per group. The trunk's "
    "warm-up lambda was written `min(1, step // 400)` (integer division for `/`): it is 0 for "
    "the whole 180-step run, so fc1 and fc2 never move while the head trains on random "
    "features; the loss falls a little and stays finite.",
)
def h195_pipa_trunk_warmup_floor_division(ctx: Context) -> None:
    gen = seeded(19508)
    model = Stack(20, 64, out=7)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adamax([{"params": trunk}, {"params": model.head.parameters()}], lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: min(1, s // 400), lambda s: min(1.0, (s + 1) / 20)]
    )
    trunk0 = _snapshot(trunk)
    head0 = _snapshot(model.head.parameters())
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 7, seed=17),
        180,
        F.cross_entropy,
        classifier=True,
        sched=sched,
    )
    ctx.check("trunk learning rate is exactly 0", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("fc1 and fc2 never moved", _moved(trunk, trunk0) == 0.0)
    ctx.check("head moved", _moved(list(model.head.parameters()), head0) > 1e-2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- BMX: the epoch-end evaluation backpropagates into the next step -----------------------------


def _landings(gen, batch, d_in=14, seed=19):
    """Fourteen standardised take-off readings of a BMX dirt jump; label 1 for a clean landing."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        s = x @ w / math.sqrt(d_in) + 0.5 * torch.sin(x @ v / math.sqrt(d_in) * 2)
        y = (s + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield x, y


@scenario(
    family="bmx_dirt_jump_landing_bce_mlp",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A ReLU MLP predicting whether a BMX rider lands a dirt jump cleanly from 14 take-off "
    "readings, BCE with logits, plain SGD at 0.2. At the epoch boundary (step 100) the "
    "evaluation loop reuses the trainer's `training_step`, which calls loss.backward(), on 100 "
    "held-out batches; the gradients are not zeroed before the next training step, so step "
    "100 applies about 100 batches' worth of summed gradient at once (its norm about 30x the usual). The loss jumps for a few "
    "steps and recovers.",
)
def h195_bmx_eval_backward_leak(ctx: Context) -> None:
    gen = seeded(19509)
    model = Stack(14, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    held = _landings(torch.Generator().manual_seed(9), 64)
    onset = 100

    def training_step(x, y):
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        return loss

    def before(step):
        if step == onset:
            for _ in range(100):
                x, y = next(held)
                training_step(x, y)

    _train(
        ctx, model, opt, _landings(gen, 64), 200, F.binary_cross_entropy_with_logits, before=before
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 100 is 20x the median", g[onset] > 20 * _median(g))
    ctx.check(
        "no other gradient above 5x the median", max(g[:onset] + g[onset + 1 :]) < 5 * _median(g)
    )
    ctx.check("loss after step 100 jumped 2x", max(ls[onset + 1 : onset + 4]) > 2 * ls[onset])
    ctx.check("loss recovered by the end", _mean(ls[-10:]) < 1.2 * _mean(ls[onset - 10 : onset]))
    ctx.check("loss finite throughout", _finite(ls))


# -- green flash: a linear warm-up that lost its cap ----------------------------------------------


@scenario(
    family="green_flash_sighting_duration_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=20,
    heldout=True,
    note="A tanh MLP predicting how long a sunset green flash lasts (standardised) from 10 "
    "standardised refraction-profile readings, MSE, plain SGD with a hand-written linear "
    "warm-up to 0.1 over 20 steps written `lr = 0.1 * (step + 1) / 20` with the `min(1, ...)` "
    "cap lost: after step 20 the rate keeps climbing by 0.005 a step. lr x sharpness, about "
    "0.6 at the end of the warm-up, crosses 2 some 40 steps later and the loss blows up.",
)
def h195_green_flash_uncapped_warmup(ctx: Context) -> None:
    gen = seeded(19510)
    model = Stack(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    px, py = next(_readings(torch.Generator().manual_seed(1), 256, 10, seed=23))
    lrs, sharp = {}, {}

    def before(step):
        lr = 0.1 * (step + 1) / 20
        for group in opt.param_groups:
            group["lr"] = lr
        lrs[step] = lr
        if step % 10 == 0 and step <= 200:
            sharp[step] = _sharpness(model, F.mse_loss, px, py)

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=23), 220, F.mse_loss, before=before)
    ls = ctx.losses
    ok = [s for s in sharp if all(math.isfinite(v) for v in ls[: s + 1])]
    cross = next((s for s in ok if lrs[s] * sharp[s] > 2), None)
    ctx.check("lr x sharpness below 1 at step 20", lrs[20] * sharp[20] < 1)
    ctx.check("lr x sharpness past 2 later", cross is not None)
    ctx.check("loss fell over the warm-up", _fell(ls[:30]))
    ctx.check(
        "loss past 20x its step-20..30 level afterwards",
        max(ls[30:]) > 20 * _mean(ls[20:30]) or not _finite(ls),
    )


# -- controls --------------------------------------------------------------------------------------


def _hy_tower():
    from transformers.models.hy_v4_vl.configuration_hy_v4_vl import HYV4VLVisionConfig
    from transformers.models.hy_v4_vl.modeling_hy_v4_vl import HYV4VLVisionModel

    config = HYV4VLVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=2,
        num_channels=1,
        patch_size=2,
        spatial_merge_size=2,
        max_image_size=8,
        out_hidden_size=32,
    )
    return HYV4VLVisionModel(config)


class ScoreboardReader(nn.Module):
    """The HY-V4-VL vision tower over 8x8 digits cut into 2x2 patches (a 4x4 grid each), its
    merged image tokens mean-pooled, and a linear head."""

    def __init__(self, classes):
        super().__init__()
        self.tower = _hy_tower()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        b = x.shape[0]
        patches = x.reshape(b, 1, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(b * 16, 4)
        grid = torch.tensor([[1, 4, 4]] * b)
        tokens = self.tower(pixel_values=patches, grid_thw=grid).pooler_output
        return self.head(tokens.reshape(b, -1, 32).mean(1))


@scenario(
    family="hf_hy_v4_vl_vision_scoreboard_digits",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a Hugging Face HY-V4-VL vision tower (model type hy_v4_vl_vision, 2 layers, "
    "width 32) built from a tiny config, reading 8x8 scoreboard digits as 2x2 patches. "
    "Pre-trained in the scenario (unmonitored) for 80 steps on digits 0-4 with AdamW, then "
    "fine-tuned with a new 10-way head on all digits for 120 steps: AdamW at 1e-3, weight "
    "decay 0.05, a 15-step linear warm-up then cosine decay (LambdaLR), gradient clipping at 1.0, "
    "cross-entropy.",
)
def h195_hf_hy_v4_vision_finetune(ctx: Context) -> None:
    gen = seeded(19511)
    model = ScoreboardReader(10)
    pre = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    half = digit_batches(torch.Generator().manual_seed(5), 48)
    for _ in range(80):
        x, y = next(half)
        keep = y < 5
        loss = F.cross_entropy(model(x[keep]), y[keep])
        loss.backward()
        pre.step()
        pre.zero_grad(set_to_none=True)
    pre_loss = float(loss.detach())
    model.head = nn.Linear(32, 10)
    steps, warm = 120, 15
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(-1) == y).float().mean()))

    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 32),
        steps,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        clip=1.0,
        sched=sched,
    )
    ctx.check("pre-training loss below 1", pre_loss < 1.0)
    ctx.check("fine-tuning loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("accuracy above 0.6 at the end", _mean(acc[-10:]) > 0.6)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="axe_throwing_target_zone_gelu_classifier",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="Control: a GELU MLP naming which of 5 target zones an axe lands in from 12 "
    "standardised throw readings (release angle, spin, distance, ...), cross-entropy with "
    "label smoothing 0.1, NAdam with OneCycleLR to 3e-3, gradient clipping at 1.0.",
)
def h195_axe_throwing_onecycle(ctx: Context) -> None:
    gen = seeded(19512)
    model = Stack(12, 64, out=5, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=29),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell by a third", _fell(ctx.losses, ratio=0.67))
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="parasail_tow_height_fp16_silu_regressor",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP predicting a parasail's standardised tow height from 10 "
    "standardised boat-speed, line-length and wind readings, Huber loss, RMSprop at 1e-3, fp16 "
    "autocast with a torch.amp.GradScaler, accumulation over 2 micro-batches, clipping at 1.0, "
    "ReduceLROnPlateau.",
)
def h195_parasail_fp16_plateau(ctx: Context) -> None:
    gen = seeded(19513)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=31),
        200,
        F.huber_loss,
        scaler=scaler,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss at the end below half its first", _mean(ctx.losses[-10:]) < 0.5 * ctx.losses[0])
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("no step skipped after step 10", min(ctx.scales[10:]) >= ctx.scales[10])
