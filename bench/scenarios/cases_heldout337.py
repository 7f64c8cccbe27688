"""Held-out set 337 (``h337_``): hand-written models of crafts, trades, foods and natural
phenomena not covered before: a mizuhiki cord-knot grade encoder transformer over tabular rows
(one token per feature) whose attention group's lr is typed 3e-2 for 3e-4 (attention logits
grow), a kokedama water-retention SiLU regressor whose warm-up peak is typed 1.5 for 0.15 (past
2/sharpness), a chasen whisk GELU regressor whose resume step skips the static loss-scale divide
(Adam's second moment poisoned), a katsuobushi smoking-moisture tanh regressor whose scheduled
shrink-and-perturb noise is typed 0.3 for 0.003 (a one-off loss spike), a sake-koji Poisson NLL
net whose rate is relu(head) with no floor (log 0), a tea-withering BCE classifier fed one shard
logged in grams (one corrupted batch), a cacao-ferment Huber regressor whose curriculum loss
weight is typed 200 for 2.0 for one step (one gradient burst), a kanna-plane shaving regressor
whose backbone lr scale is typed 1e-5 for 1e-1 (backbone frozen), a doline sinkhole 12-layer ReLU
MLP initialised with gain 2 for sqrt(2) and clipped (gradients grow through depth), a glowworm display classifier
whose distillation temperature is typed 0.002 for 2.0 (softmax saturates), and three controls
(a bat echolocation Conv1d classifier with AdamW betas (0.9, 0.95), warm-up and cosine decay; a
gannet dive-depth fp16 regressor with a GradScaler, accumulation and ReduceLROnPlateau; a
sphagnum bog water-table GRU with OneCycleLR, clipping and Huber).

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


def _rel_change(model: nn.Module, before: dict[str, torch.Tensor], prefix: str) -> float:
    num, den = 0.0, 0.0
    for n, p in model.named_parameters():
        if n.startswith(prefix + "."):
            num += float((p.detach() - before[n]).norm() ** 2)
            den += float(before[n].norm() ** 2)
    return math.sqrt(num / max(den, 1e-12))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


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
    watch=None,
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss
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
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
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


# -- mizuhiki: a feature-token encoder transformer whose attention group lr is typed 3e-2 ---------


class TokenAttention(nn.Module):
    """Hand-written multi-head self-attention; keeps its largest |q.k/sqrt(d)| logit."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.peak = 0.0

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = (
            m(x).reshape(b, t, self.heads, hd).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        logits = q @ k.transpose(-2, -1) / math.sqrt(hd)
        self.peak = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class FeatureTokenEncoder(nn.Module):
    """One token per tabular feature (value * weight + bias per feature) plus a CLS token,
    one pre-LN encoder block, a head on the CLS token."""

    def __init__(self, n_features=8, dim=32):
        super().__init__()
        self.tok_weight = nn.Parameter(torch.randn(n_features, dim) * 0.5)
        self.tok_bias = nn.Parameter(torch.randn(n_features, dim) * 0.5)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        tokens = x[..., None] * self.tok_weight + self.tok_bias
        h = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        h = h + self.attn(self.ln1(h))
        h = h + self.ff2(F.gelu(self.ff1(self.ln2(h))))
        return self.head(self.ln_f(h[:, 0])).squeeze(-1)


def _cords(gen, batch):
    """Eight cord readings (twist, gauge, gloss, ...); the knot's grade score is set by the
    silk-wrap reading (feature 5) alone, the others are distractors."""
    while True:
        x = torch.randn(batch, 8, generator=gen)
        yield x, 1.5 * x[:, 5] + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="mizuhiki_cord_knot_grade_feature_token_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A hand-written encoder transformer over tabular rows, one token per feature (tok_weight/tok_bias per feature, a CLS token, ln1, attn with q, k, v, proj, ln2, ff1, ff2, ln_f, head), grading a mizuhiki cord knot from eight cord readings where only the silk-wrap reading matters; AdamW with two parameter groups, MSE, 200 steps. The attention group (attn.q, attn.k) is meant to train at 3e-4 with weight decay 0.05 and is typed 3e-2 with weight decay 0: the CLS query keeps being rewarded for sharper attention to the one informative token and q and k grow unchecked, so the largest pre-softmax logit q.k/sqrt(d) grows by well over 20x while the loss stays finite.",
)
def h337_mizuhiki_attention_lr_typo(ctx: Context) -> None:
    gen = seeded(33701)
    model = FeatureTokenEncoder()
    qk = list(model.attn.q.parameters()) + list(model.attn.k.parameters())
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 3e-3, "weight_decay": 0.05},
            {"params": qk, "lr": 3e-2, "weight_decay": 0.0},  # typed 3e-2 for 3e-4
        ]
    )
    peaks = []

    def watch(step, out, x, y):
        peaks.append(model.attn.peak)

    _loop(ctx, model, opt, _cords(gen, 64), 200, F.mse_loss, watch=watch)
    ctx.check("every loss is finite", _finite(ctx.losses))
    ctx.check(
        "the peak attention logit grows over 20x (last 10 steps vs the first step)",
        _mean(peaks[-10:]) > 20 * peaks[0],
    )
    ctx.check("the peak logit is over 30 at the end", _mean(peaks[-10:]) > 30)


# -- kokedama: warm-up peak typed 1.5 for 0.15 takes SGD past 2/sharpness -------------------------


def _top_eigen(model, loss_fn, x, y, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


ONSET_KK = 35


@scenario(
    family="kokedama_moss_ball_water_retention_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_KK,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting how much water a kokedama moss ball retains from ten standardised readings (moss density, clay share, ...); plain SGD, MSE, a linear warm-up over 100 steps planned for a 0.15 peak, then constant, 200 steps planned. The peak is typed 1.5 for 0.15: as the warm-up climbs, lr times the top Hessian eigenvalue (power iteration on Hessian-vector products every 5 steps) passes 2 around step 35, the loss starts oscillating and then blows up.",
)
def h337_kokedama_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(33702)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = _readings(gen, 128, 10, 337)
    probe = next(batches)
    peak = 1.5  # typed for 0.15
    products = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 5 == 0:
            lam = _top_eigen(model, F.mse_loss, *probe)
            products[step] = lr * lam

    _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before)
    crossed = next((s for s in sorted(products) if products[s] > 2.0), None)
    ctx.check("lr x top eigenvalue is under 2 at the start", products[0] < 2.0)
    ctx.check(
        "lr x top eigenvalue passes 2 near the declared onset",
        crossed is not None and abs(crossed - ONSET_KK) <= 15,
    )
    low = min(ctx.losses)
    bad = _first_bad(ctx.losses)
    ctx.check(
        "after the crossing the loss blows up (non-finite or over 100x its low)",
        crossed is not None
        and (bad is not None or max(ctx.losses[crossed:]) > 100 * low)
        and (bad is None or bad > crossed),
    )


# -- chasen: the resume step skips the static loss-scale divide (Adam's v poisoned) ---------------

ONSET_CH = 100


@scenario(
    family="chasen_whisk_tine_spring_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CH,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the spring of a bamboo chasen tea whisk's tines from twelve standardised carving readings; Adam at 1e-3 (betas 0.9, 0.999), MSE, 250 steps, trained with a static loss scale of 65536 that the step divides back out of the gradients. The resume path at step 100 (restarting from a checkpoint) skips the divide for its first step, so one gradient 65536x too large enters Adam: its second moment fills, and for the next 150 steps the updates on ordinary gradients shrink to under a tenth of before and the loss, knocked up by the one oversized step, stalls instead of recovering.",
)
def h337_chasen_resume_skips_unscale(ctx: Context) -> None:
    gen = seeded(33703)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scale = 65536.0
    updates = []
    prev = {}

    def backprop(step, loss):
        return loss * scale

    def before(step):
        prev["w"] = _snapshot(model)

    def unscale_hook(step):
        if step != ONSET_CH:  # the resume path forgets this divide
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(scale)

    # the divide has to happen between backward and the step: wrap opt.step
    orig_step = opt.step
    counter = {"step": 0}

    def step_with_unscale(*a, **k):
        unscale_hook(counter["step"])
        ctx.grad_norms[-1] = grad_norm(model)
        out = orig_step(*a, **k)
        counter["step"] += 1
        return out

    opt.step = step_with_unscale

    def after(step):
        ch = torch.cat(
            [(p.detach() - prev["w"][n]).abs().flatten() for n, p in model.named_parameters()]
        )
        updates.append(float(ch.median()))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 3370),
        250,
        F.mse_loss,
        backprop=backprop,
        before=before,
        after=after,
    )
    g = ctx.grad_norms
    ctx.check("every loss is finite", _finite(ctx.losses))
    ctx.check(
        "the gradient at the resume step is over 1000x the median before it",
        g[ONSET_CH] > 1000 * _median(g[50:ONSET_CH]),
    )
    ctx.check(
        "the median update 50-150 steps later is under a tenth of before",
        _mean(updates[150:250]) < 0.1 * _mean(updates[60:ONSET_CH]),
    )
    ctx.check(
        "the gradients afterwards are ordinary (under 10x the median before)",
        max(g[ONSET_CH + 5 :]) < 10 * _median(g[50:ONSET_CH]),
    )


# -- katsuobushi: shrink-and-perturb noise typed 0.3 for 0.003 (a one-off loss spike) -------------

ONSET_KB = 120


@scenario(
    family="katsuobushi_fillet_smoking_moisture_tanh_regressor",
    optimizer="SGD momentum",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KB,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a katsuobushi fillet's moisture after each smoking round from ten standardised kiln readings; SGD with momentum 0.9 at 0.02, MSE, 250 steps. The continual-training recipe shrinks and perturbs the weights once, at step 120 (w <- 0.999 w + noise), and the noise std is typed 0.3 for 0.003: the loss jumps over 5x for that step with nothing wrong in the data, the gradients' computation or the learning rate, and the run recovers to near its earlier loss within about 60 steps.",
)
def h337_katsuobushi_perturb_noise_typo(ctx: Context) -> None:
    gen = seeded(33704)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    noise = torch.Generator().manual_seed(3374)

    def before(step):
        if step == ONSET_KB:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.999).add_(0.3 * torch.randn(p.shape, generator=noise))  # 0.003

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3371), 250, F.mse_loss, before=before)
    ls = ctx.losses
    pre = _mean(ls[ONSET_KB - 20 : ONSET_KB])
    ctx.check("every loss is finite", _finite(ls))
    ctx.check(
        "the loss at the perturbed step is over 5x the 20 steps before", ls[ONSET_KB] > 5 * pre
    )
    ctx.check(
        "no loss before it was over 2x its neighbours' mean",
        max(ls[60:ONSET_KB]) < 2 * max(pre, 1e-9) + 0.05,
    )
    ctx.check(
        "the run recovers: the last 20 steps are under 2x the pre-spike mean",
        _mean(ls[-20:]) < 2 * pre,
    )


# -- sake koji: Poisson NLL with rate = relu(head), no floor (log 0) -----------------------------


class KojiNet(Trunk):
    """Predicts the rate of mould colonies per plate; the rate is relu(head) (softplus was
    swapped for relu 'for speed', and the epsilon floor went with it)."""

    def forward(self, x):
        return F.relu(self.head(self.features(x))).squeeze(-1)


def _koji(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        rate = torch.exp(0.9 * torch.tanh(x @ w / 3.0) + 0.2)
        yield x, torch.poisson(rate, generator=gen)


DIV_SK = 31


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


@scenario(
    family="sake_koji_mould_colony_poisson_relu_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("head",),
    diverges=DIV_SK,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the rate of koji mould colonies on a sake-brewing rice plate from nine standardised room readings, Poisson NLL written by hand as rate - y log(rate); RAdam at 3e-2, 200 steps planned. The rate is relu(head) (softplus swapped for relu, and the epsilon floor dropped with it): once the head's output for a plate goes to or below zero, its rate is exactly 0, log 0 is -inf and the loss is non-finite (at step 31); the run stops there.",
)
def h337_sake_koji_relu_rate_log_zero(ctx: Context) -> None:
    gen = seeded(33705)
    model = KojiNet(9, 64)
    with torch.no_grad():
        model.head.bias.fill_(1.0)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-2)
    zeros = []

    def watch(step, out, x, y):
        zeros.append(bool((out.detach() == 0).any()))

    n = _loop(ctx, model, opt, _koji(gen, 64, 3372), 200, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss goes non-finite and the run stops there", bad is not None and bad == n - 1)
    ctx.check("a predicted rate is exactly 0 at that step", bad is not None and zeros[bad])
    ctx.check(
        "every loss before it was finite, for over 5 steps",
        bad is not None and bad > 5 and _finite(ctx.losses[:bad]),
    )
    ctx.check("the run stops at the declared step", bad == DIV_SK)


# -- tea withering: one shard's leaf mass logged in grams (one corrupted batch) -------------------

ONSET_TW = 130


@scenario(
    family="tea_withering_trough_over_wither_bce_classifier",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TW,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) flagging an over-withered tea trough from ten standardised readings (leaf mass, trough temperature, air flow, ...), BCE with logits; SGD with Nesterov momentum at 0.05, clipping at 1.0, 250 steps. One shard, served at step 130, logged the leaf mass in grams instead of kilograms, so after the usual standardisation that column is about 1000x its scale for that batch: the loss jumps over 20x for the step, the clip bounds the update, and the run recovers.",
)
def h337_tea_withering_gram_shard(ctx: Context) -> None:
    gen = seeded(33706)
    model = Trunk(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    base = _readings(gen, 64, 10, 3373, noise=0.0)

    def batches():
        for x, y in base:
            yield x, (y > 0.2).float()

    def alter(step, x, y):
        if step == ONSET_TW:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0
        return x, y

    _loop(
        ctx, model, opt, batches(), 250, F.binary_cross_entropy_with_logits, alter=alter, clip=1.0
    )
    ls = ctx.losses
    pre = _mean(ls[ONSET_TW - 20 : ONSET_TW])
    ctx.check("every loss is finite", _finite(ls))
    ctx.check("the loss on the gram shard is over 20x the 20 steps before", ls[ONSET_TW] > 20 * pre)
    ctx.check(
        "the run recovers: the last 20 steps are under 2x the pre-shard mean",
        _mean(ls[-20:]) < 2 * pre,
    )
    ctx.check(
        "the loss fell before the shard", _mean(ls[ONSET_TW - 20 : ONSET_TW]) < 0.8 * _mean(ls[:10])
    )


# -- cacao: the curriculum loss weight typed 200 for 2.0 for one step (one gradient burst) --------

ONSET_CF = 150


@scenario(
    family="cacao_ferment_box_turn_gelu_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CF,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a cacao fermentation box's temperature rise after a turn from ten standardised readings, Huber loss; SGD with Nesterov momentum at 0.02, clipping at 2.0, 250 steps, with a per-step loss-weight table from the curriculum. The table's entry for step 150 is typed 200 for 2.0, so one ordinary batch is backpropagated with 100x the usual weight: the gradient norm jumps over 30x for that step (the data are clean), the clip bounds the update, and the run goes on.",
)
def h337_cacao_loss_weight_typo(ctx: Context) -> None:
    gen = seeded(33707)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    weights = {s: 2.0 for s in range(250)}
    weights[ONSET_CF] = 200.0  # typed for 2.0

    def backprop(step, loss):
        return weights[step] * loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3374),
        250,
        F.huber_loss,
        backprop=backprop,
        clip=2.0,
    )
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check("every loss is finite", _finite(ls))
    ctx.check(
        "the gradient at step 150 is over 30x the median before",
        g[ONSET_CF] > 30 * _median(g[100:ONSET_CF]),
    )
    ctx.check(
        "the batch's own loss was ordinary (under 3x the 20 steps before)",
        ls[ONSET_CF] < 3 * _mean(ls[ONSET_CF - 20 : ONSET_CF]),
    )
    ctx.check(
        "the gradients afterwards are ordinary",
        max(g[ONSET_CF + 3 :]) < 5 * _median(g[100:ONSET_CF]),
    )


# -- kanna plane: backbone lr scale typed 1e-5 for 1e-1 (fc1, fc2 frozen) ------------------------


@scenario(
    family="kanna_plane_shaving_thickness_two_group_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the thickness of a Japanese kanna plane's shaving from ten standardised readings (blade projection, chip-breaker gap, wood density, ...), MSE; RMSprop at 1e-3 with two parameter groups, the backbone (fc1, fc2) at base_lr * backbone_scale. The scale is typed 1e-5 for 1e-1: fc1 and fc2 move under 1e-3 of their norm over the 250 steps while the head moves well over 5% and the loss falls only as far as the head alone can take it.",
)
def h337_kanna_backbone_scale_typo(ctx: Context) -> None:
    gen = seeded(33708)
    model = Trunk(10, 64, act=nn.SiLU)
    backbone = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.RMSprop(
        [
            {"params": backbone, "lr": 1e-3 * 1e-5},  # backbone_scale typed 1e-5 for 1e-1
            {"params": model.head.parameters(), "lr": 1e-3},
        ]
    )
    start = _snapshot(model)
    _loop(ctx, model, opt, _readings(gen, 64, 10, 3375), 250, F.mse_loss)
    ctx.check("every loss is finite", _finite(ctx.losses))
    ctx.check("fc1 moves under 1e-3 of its norm", _rel_change(model, start, "fc1") < 1e-3)
    ctx.check("fc2 moves under 1e-3 of its norm", _rel_change(model, start, "fc2") < 1e-3)
    ctx.check("the head moves over 5% of its norm", _rel_change(model, start, "head") > 0.05)


# -- doline: a 12-layer ReLU MLP initialised with gain 2 for sqrt(2) and clipped (gradients grow through depth) ---------


class DeepReLU(nn.Module):
    def __init__(self, d_in, width=48, depth=12, gain=1.4142135623730951):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.layers:
            x = F.relu(m(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="doline_sinkhole_collapse_depth_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A hand-written 12-layer ReLU MLP (layers.0-11, head) predicting the collapse depth of a doline sinkhole from ten standardised karst readings; plain SGD at 3e-3, gradient clipping at 1.0, MSE, 150 steps. The init config's gain is written 2.0 (He's variance factor) where the std gain sqrt(2) is meant, so every layer multiplies the signal's and the backpropagated gradient's scale by about sqrt(2): at the start the gradient reaching layers.0 (its bias gradient, the backpropagated signal) is over 20x that reaching layers.11 and stays several times larger through the run, the loss starts in the thousands, and the clip keeps every step at the same small length so the run crawls and ends still over 10x the target's variance.",
)
def h337_doline_init_gain_typo(ctx: Context) -> None:
    gen = seeded(33709)
    model = DeepReLU(10, gain=2.0)  # He gain sqrt(2) written as its variance, 2
    opt = torch.optim.SGD(model.parameters(), lr=3e-3)
    layer_grads = []
    orig_step = opt.step

    def step_and_record(*a, **k):
        g0 = model.layers[0].bias.grad
        g11 = model.layers[-1].bias.grad
        if g0 is not None and g11 is not None:
            layer_grads.append((float(g0.norm()), float(g11.norm())))
        return orig_step(*a, **k)

    opt.step = step_and_record
    batches = _readings(gen, 64, 10, 3376)
    var = float(next(_readings(torch.Generator().manual_seed(4), 512, 10, 3376))[1].var())
    _loop(ctx, model, opt, batches, 150, F.mse_loss, clip=1.0)
    # the clip scales every layer alike, so the ratio read after it is the ratio before it
    ratio = [a / max(b, 1e-30) for a, b in layer_grads]
    ls = ctx.losses
    ctx.check("every loss is finite", _finite(ls))
    ctx.check(
        "at the start the gradient reaching layers.0 (its bias) is over 20x that at layers.11",
        ratio[0] > 20,
    )
    ctx.check("over the run it stays over 5x (median)", _median(ratio) > 5)
    ctx.check("the loss starts over 1000x the target's variance", ls[0] > 1000 * var)
    ctx.check(
        "the last 20 steps are still over 10x the target's variance", _mean(ls[-20:]) > 10 * var
    )


# -- glowworm: the distillation temperature typed 0.002 for 2.0 (softmax saturates) --------------


class GlowwormNet(Trunk):
    """Grades a cave's glowworm display; logits are divided by the distillation temperature."""

    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, 64, classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="glowworm_cave_display_grade_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) grading a cave's glowworm display into six classes from twelve standardised readings (humidity, ceiling height, thread length, ...), cross-entropy; Adamax at 2e-3, 200 steps. The student's softmax temperature from the distillation config is typed 0.002 for 2.0, so the logits are divided by 0.002: over the last 50 steps the float32 softmax gives over a quarter of the rows' targets exactly 1.0 (and the wrong rows exactly 0), and it stays saturated while the loss swings on the misclassified rows.",
)
def h337_glowworm_temperature_typo(ctx: Context) -> None:
    gen = seeded(33710)
    model = GlowwormNet(12, 6, temperature=0.002)  # typed for 2.0
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fractions = []

    def watch(step, out, x, y):
        fractions.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 3377),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("every loss is finite", _finite(ctx.losses))
    ctx.check(
        "over a quarter of rows' softmax is exactly 1.0 over the last 50 steps",
        _mean(fractions[-50:]) > 0.25,
    )
    with torch.no_grad():
        x, y = next(_grades(torch.Generator().manual_seed(1), 256, 12, 6, 3377))
        ok = collapsed_fraction(model.head(model.features(x)) / 2.0, y)
    ctx.check("the same weights at temperature 2.0 saturate no row", ok < 0.05)


# -- controls ------------------------------------------------------------------------------------


class CallNet(nn.Module):
    """Conv1d over a bat's echolocation call envelope: conv1, conv2, pooled, head."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x))
        h = F.max_pool1d(h, 2)
        h = F.gelu(self.conv2(h))
        return self.head(h.mean(-1))


def _calls(gen, batch, classes, seed, length=48):
    """Two-channel call envelopes: each species sweeps its own frequency band at its own rate."""
    g = torch.Generator().manual_seed(seed)
    f0 = 0.2 + 0.6 * torch.rand(classes, generator=g)
    sweep = 0.004 + 0.01 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        f = f0[y][:, None] - sweep[y][:, None] * t
        s = torch.sin(f * t + phase)
        x = torch.stack([s, torch.cos(f * t + phase)], 1) * torch.exp(-t / 30.0)
        yield x + 0.3 * torch.randn(batch, 2, length, generator=gen), y


@scenario(
    family="bat_echolocation_call_species_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written GELU Conv1d classifier (conv1, conv2, head on the mean-pooled map) naming a bat's species from a noisy two-channel echolocation call; AdamW at 6e-3 with betas (0.9, 0.95) and weight decay 0.05, a linear warm-up over 20 steps then cosine decay to 10% over 200 steps, label smoothing 0.1, gradient clipping at 1.0.",
)
def h337_bat_echolocation_adamw_cosine(ctx: Context) -> None:
    gen = seeded(33711)
    model = CallNet()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-3, betas=(0.9, 0.95), weight_decay=0.05)

    def lam(step):
        if step < 20:
            return (step + 1) / 20
        t = (step - 20) / 180
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _calls(gen, 64, 5, 3378),
        200,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell by over 40% and stayed finite", _fell(ctx.losses, ratio=0.6))
    with torch.no_grad():
        x, y = next(_calls(torch.Generator().manual_seed(2), 256, 5, 3378))
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("held-out accuracy is over 60%", acc > 0.6)


class DiveNet(Trunk):
    pass


@scenario(
    family="gannet_plunge_dive_depth_fp16_gelu_regressor",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a gannet's plunge-dive depth from ten standardised readings (height, entry angle, wind, ...), under fp16 autocast with a torch.amp.GradScaler; NAdam at 2e-3, gradient accumulation over 2 micro-batches, ReduceLROnPlateau on a held-out loss (patience 10, factor 0.5), MSE, 150 steps.",
)
def h337_gannet_fp16_nadam_plateau(ctx: Context) -> None:
    gen = seeded(33712)
    model = DiveNet(10, 64, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10, factor=0.5)
    val = next(_readings(torch.Generator().manual_seed(3), 256, 10, 3379))

    def plateau():
        with torch.no_grad():
            return float(F.mse_loss(model(val[0]), val[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 3379, noise=0.1),
        150,
        F.mse_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell by over half and stayed finite", _fell(ctx.losses, ratio=0.5))
    ctx.check("the scaler's scale never collapsed below 1", min(ctx.scales) >= 1.0)


class BogGRU(nn.Module):
    """A GRU over a fortnight of daily rain and evaporation readings; predicts the water table."""

    def __init__(self, hidden=32):
        super().__init__()
        self.gru = nn.GRU(3, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _bog(gen, batch, days=14):
    """The water table integrates rain minus evaporation with a slow drain; noisy gauge."""
    while True:
        rain = torch.relu(torch.randn(batch, days, generator=gen))
        evap = 0.5 + 0.2 * torch.randn(batch, days, generator=gen)
        temp = torch.randn(batch, days, generator=gen)
        level = torch.zeros(batch)
        for d in range(days):
            level = 0.85 * level + 0.4 * rain[:, d] - 0.3 * evap[:, d] * (1 + 0.2 * temp[:, d])
        x = torch.stack([rain, evap, temp], -1)
        yield x, level + 0.1 * torch.randn(batch, generator=gen)


@scenario(
    family="sphagnum_bog_water_table_gru_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written GRU regressor (gru, head) predicting a sphagnum bog's water table from a fortnight of noisy daily rain, evaporation and temperature readings, Huber loss; SGD with momentum 0.9 under OneCycleLR (max_lr 0.1), gradient clipping at 1.0, noisy gauge targets, 200 steps.",
)
def h337_sphagnum_gru_onecycle(ctx: Context) -> None:
    gen = seeded(33713)
    model = BogGRU()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    _loop(ctx, model, opt, _bog(gen, 64), 200, F.huber_loss, clip=1.0, sched=sched)
    ctx.check("the loss fell by over half and stayed finite", _fell(ctx.losses, ratio=0.5))
