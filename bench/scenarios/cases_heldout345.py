"""Held-out set 345 (``h345_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a sheepdog-trial shedding-call multi-head attention
classifier whose heads are computed with einsum and whose q/k group's lr is typed 3e-2 for 3e-4
(attention logits grow), a spinning-wheel flyer yarn-twist regressor whose hand-written decoupled
weight decay has its sign flipped (slow climb), a trebuchet counterweight-range regressor whose
linear-scaling rule is fed the dataset size for the batch size (lr past 2/sharpness during
warm-up), a hive-scale nectar-flow regressor whose curriculum loss weight for one step is pasted
as 1e4 for 1.0 (Adam's second moment poisoned), a swallow migration-heading net whose angular
error has no clamp before acos (NaN), a sandcastle tower-stands BCE net fed one shard logged in
pascals (one corrupted batch), a bobsled push-split Huber regressor whose resumed step multiplies
the loss by the old GradScaler scale (one gradient burst), a taxidermy hide-shrink regressor whose
trunk warm-up length is given in samples (trunk frozen), a sumo kimarite classifier whose
temperature annealing rate is typed 0.05 for 0.005 (softmax saturates), a waterspout funnel-width
16-layer tanh MLP whose init gain is 4 (sigmoid's old Glorot factor) for 5/3 (gradients grow
through depth), and three controls (a dry-stone batter-angle GELU regressor with warm-up, AdamW
and accumulation over 8; a didgeridoo overtone Conv1d classifier with SGD momentum, OneCycleLR,
label smoothing and clipping; an aurora-corona brightness Gaussian NLL net under fp16 autocast
with a GradScaler, Adamax and ReduceLROnPlateau).

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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


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
    after=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the
    gradients before clipping. Stops after a non-finite loss
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
        if inspect is not None:
            inspect(step)
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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


# -- sheepdog trial: the q/k group's lr is typed 3e-2 for 3e-4 ------------------------------------


class EinsumAttention(nn.Module):
    """Multi-head self-attention written by hand: heads split by reshape, scores and mixing by
    einsum. Keeps the last peak |q.k/sqrt(d)| it computed."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.peak = 0.0

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, t, h, d // h)
        k = self.k(x).reshape(b, t, h, d // h)
        v = self.v(x).reshape(b, t, h, d // h)
        scores = torch.einsum("bthe,bshe->bhts", q, k) / math.sqrt(d // h)
        self.peak = float(scores.detach().abs().max())
        mixed = torch.einsum("bhts,bshe->bthe", scores.softmax(-1), v)
        return self.o(mixed.reshape(b, t, d))


class ShedCaller(nn.Module):
    """Reads twelve sheep (six trait readings and a 'marked by the judge' flag each) after a
    learned handler token, and names the marked sheep's shedding call (five calls)."""

    def __init__(self, d_in=7, dim=32, heads=4, classes=5):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.handler = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.attn = EinsumAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        h = torch.cat([self.handler.expand(len(x), -1, -1), h], 1)
        h = self.norm(h + self.attn(h))
        return self.head(h[:, 0])


def _flock(gen, batch, seed, sheep=12, classes=5):
    """Twelve sheep of random breed-prototype traits; one is flagged and its prototype is the
    call."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, 6, generator=g)
    while True:
        kinds = torch.randint(0, classes, (batch, sheep), generator=gen)
        traits = protos[kinds] + 0.5 * torch.randn(batch, sheep, 6, generator=gen)
        marked = torch.randint(0, sheep, (batch,), generator=gen)
        flag = F.one_hot(marked, sheep).float()[..., None]
        y = kinds[torch.arange(batch), marked]
        yield torch.cat([traits, flag], -1), y


@scenario(
    family="sheepdog_shed_call_einsum_mha_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A hand-written one-block attention classifier (embed, a learned handler token, attn: four-head self-attention whose scores q.k/sqrt(d) and mixing are computed with torch.einsum, a residual LayerNorm, head) naming the shedding call for the sheep the judge marked among twelve (six trait readings and a flag each), AdamW with two parameter groups, cross-entropy, 200 steps. The config's q/k group (attn.q, attn.k, no weight decay) was meant at 3e-4 and was typed 3e-2, 10x the rest of the model's 3e-3: Adam moves the query and key weights by about 3e-2 per entry per step, so the attention scores sharpen far past what the task needs: the peak |q.k/sqrt(d)| logit grows from about 1 to over a hundred within 70 steps and stays over 20x its start for the rest of the run, while the loss stays finite.",
)
def h345_sheepdog_qk_lr_typo(ctx: Context) -> None:
    gen = seeded(34501)
    model = ShedCaller()
    qk = list(model.attn.q.parameters()) + list(model.attn.k.parameters())
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [
            {"params": qk, "lr": 3e-2, "weight_decay": 0.0},
            {"params": rest, "lr": 3e-3, "weight_decay": 0.01},
        ]
    )
    peaks = []

    def watch(step, out, x, y):
        peaks.append(model.attn.peak)

    _loop(ctx, model, opt, _flock(gen, 32, 345), 200, F.cross_entropy, classifier=True, watch=watch)
    ctx.check(
        "the peak q.k/sqrt(d) logit over the last 20 steps is over 20x that of the first 5",
        _mean(peaks[-20:]) > 20.0 * _mean(peaks[:5]),
    )
    ctx.check(
        "the peak logit stays over 20x that of the first 5 through the last 100 steps",
        min(peaks[-100:]) > 20.0 * _mean(peaks[:5]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- spinning wheel: the hand-written L2 penalty is subtracted ------------------------------------


@scenario(
    family="spinning_wheel_flyer_twist_decay_sign_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the twist per inch a spinning-wheel flyer puts into a yarn (standardised) from ten readings of the whorl ratio, treadle rate and fibre, Adamax at 1e-2, MSE, 260 steps. Weight decay is applied by hand after each optimizer step, decoupled as in AdamW, with wd 1.0 (1% a step), and the sign was flipped: p.mul_(1 + lr * wd) for p.mul_(1 - lr * wd). Adamax's steps can only pull each weight back by about lr a step, so once the weights pass about 1/wd the decay wins, the weights inflate about 1% a step, the tanh units saturate and the head's outputs swell: after a short descent the loss climbs slowly and steadily to many times its minimum, with no single jump and no NaN.",
)
def h345_spinning_wheel_decay_sign_flip(ctx: Context) -> None:
    gen = seeded(34502)
    model = Trunk(10, 64, act=nn.Tanh)
    lr, wd = 1e-2, 1.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    norm0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant: 1 - lr * wd

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3452), 260, F.mse_loss, after=after)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 20)]
    low = min(means)
    norm1 = float(_flat(model).norm())
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the last 20 steps' loss is over 5x the lowest 20-step mean",
        _mean(ls[-20:]) > 5.0 * low,
    )
    ctx.check("the lowest 20-step mean comes in the first half", means.index(low) < len(means) // 2)
    ctx.check(
        "no step's loss is over 3x the mean of the 10 before it (a slow climb, no spike)",
        all(ls[i] < 3.0 * _mean(ls[i - 10 : i]) for i in range(10, len(ls))),
    )
    ctx.check("the weights' norm grew over 3x", norm1 > 3.0 * norm0)


# -- trebuchet: the linear-scaling rule is fed the dataset size -----------------------------------


TREB_BATCH = 64
TREB_DATASET = 4096


@scenario(
    family="trebuchet_counterweight_range_lr_scaling_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a trebuchet's range (standardised) from ten readings of counterweight, arm ratio, sling length and release pin angle, plain SGD, MSE, a linear warm-up over 200 steps, 300 steps planned. The peak lr follows the linear-scaling rule base_lr * batch_size / 256 with base 0.2, and the call passed len(dataset) (4096) where the batch size (64) was meant: the warm-up climbs towards 3.2 instead of 0.05. The top Hessian eigenvalue by power iteration on a fixed batch shows lr * sharpness passing 2 during the warm-up; the loss then oscillates and overflows to inf (step 40), where the run stops.",
)
def h345_trebuchet_linear_scaling_dataset_size(ctx: Context) -> None:
    gen = seeded(34503)
    model = Trunk(10, 64, act=nn.Tanh)
    peak = 0.2 * TREB_DATASET / 256  # meant: 0.2 * TREB_BATCH / 256
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200))
    batches = _readings(gen, TREB_BATCH, 10, 3453)
    px, py = next(batches)
    crossed = []

    def before(step):
        if step % 5 == 0:
            lam = _sharpness(model, F.mse_loss, px, py)
            lr = opt.param_groups[0]["lr"]
            if math.isfinite(lam) and lr * lam > 2.0:
                crossed.append(step)

    n = _loop(ctx, model, opt, batches, 300, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("lr * sharpness passed 2 during the run", bool(crossed))
    ctx.check(
        "the loss went non-finite or over 1000x its minimum",
        bad is not None or max(ls) > 1000.0 * min(ls),
    )
    ctx.check(
        "lr * sharpness passed 2 before the loss broke",
        bool(crossed) and crossed[0] < (bad if bad is not None else n),
    )
    ctx.check("the loss fell first (the model was learning)", min(ls[:40]) < 0.8 * ls[0])


# -- hive scale: one curriculum loss weight typed 1e4 for 1.0 -------------------------------------

HIVE_ONSET = 100


@scenario(
    family="hive_scale_nectar_flow_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=HIVE_ONSET,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a hive's daily weight gain during the nectar flow (standardised) from twelve readings of temperature, forage bloom and colony size, Adam at 1e-3 (betas 0.9, 0.999), MSE, 260 steps. The loss is multiplied by a per-step weight from a curriculum table, and the entry for step 100 was pasted as 1e4 (an exponent from the neighbouring column) for 1.0: that one ordinary batch's gradient is 1e4x, Adam's second moment takes 0.1% of its square and keeps it for thousands of steps, and once the first moment has forgotten the burst the per-weight updates stay under a tenth of their size before the burst on ordinary gradients; the loss stays finite, rises a little after the burst and then barely moves.",
)
def h345_hive_scale_loss_weight_paste(ctx: Context) -> None:
    gen = seeded(34504)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = [1.0] * 260
    weights[HIVE_ONSET] = 1e4
    updates = []
    prev = {}

    def before(step):
        prev["w"] = _flat(model)

    def after(step):
        updates.append(float((_flat(model) - prev["w"]).abs().median()))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 3454),
        260,
        F.mse_loss,
        before=before,
        after=after,
        backprop=lambda step, loss: weights[step] * loss,
    )
    g = ctx.grad_norms
    ctx.check(
        "the gradient at step 100 is over 1000x the median of steps 80-99",
        g[HIVE_ONSET] > 1000.0 * _median(g[80:HIVE_ONSET]),
    )
    ctx.check(
        "the median per-weight update over steps 180-259 is under 1/10 of steps 60-99",
        _median(updates[180:260]) < 0.1 * _median(updates[60:HIVE_ONSET]),
    )
    ctx.check(
        "the gradients over steps 180-259 are ordinary (within 0.3-3x of steps 60-99)",
        0.3 < _median(g[180:260]) / _median(g[60:HIVE_ONSET]) < 3.0,
    )
    ctx.check(
        "the loss at step 100 is ordinary (the batch is clean)",
        ctx.losses[HIVE_ONSET] < 3.0 * _median(ctx.losses[80:HIVE_ONSET]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- swallow migration: acos of a hand-written cosine with no clamp -------------------------------


class HeadingError(nn.Module):
    """Angle between predicted and true heading: acos(p.t / (|p| |t|)), with no clamp."""

    def __init__(self):
        super().__init__()
        self.max_cos = -1.0

    def forward(self, pred, target):
        cos = (pred * target).sum(-1) / (pred.norm(dim=-1) * target.norm(dim=-1))
        self.max_cos = float(cos.detach().max())
        return torch.acos(cos).mean()


class HeadingNet(Trunk):
    """A SiLU trunk predicting a heading vector; holds its angular criterion."""

    def __init__(self):
        super().__init__(8, 64, out=2, act=nn.SiLU)
        self.heading_error = HeadingError()


def _flyways(gen, batch, seed):
    """Eight readings (wind, day length, magnetic field, ...); the heading is a smooth function
    of them, as a unit vector."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        ang = 2.0 * torch.tanh(x @ w / math.sqrt(8))
        yield x, torch.stack([torch.cos(ang), torch.sin(ang)], -1)


@scenario(
    family="swallow_migration_heading_acos_silu_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("heading_error",),
    diverges="auto",
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a barn swallow's migration heading as a 2-d vector from eight readings (wind, day length, geomagnetic field, ...), trained on the mean angular error computed by the model's own heading_error module as acos(p.t / (|p| |t|)), RAdam at 3e-3, batches of 16, 300 steps planned. The usual clamp of the cosine to [-1 + eps, 1 - eps] was left out: as the net learns the headings, a row's float32 cosine rounds to 1 (or a hair above), acos's gradient -1/sqrt(1 - c^2) is infinite there (or its value NaN), and the loss is NaN from that step or the next; the run stops there.",
)
def h345_swallow_heading_acos_unclamped(ctx: Context) -> None:
    gen = seeded(34505)
    model = HeadingNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    cosines = []

    def watch(step, out, x, y):
        cosines.append(model.heading_error.max_cos)

    n = _loop(
        ctx,
        model,
        opt,
        _flyways(gen, 16, 3455),
        300,
        lambda out, y: model.heading_error(out, y),
        watch=watch,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite at the step the run stops", bad is not None and bad == n - 1)
    ctx.check(
        "a row's cosine reached 1.0 within two steps before the first non-finite loss",
        bad is not None and any(c >= 1.0 for c in cosines[max(0, bad - 2) : bad + 1]),
    )
    ctx.check(
        "the loss fell before it broke (the net was learning)",
        bad is not None and bad > 20 and _mean(ctx.losses[bad - 10 : bad]) < 0.7 * ctx.losses[0],
    )


# -- sandcastle: one beach's shard logged in pascals (BCE) ----------------------------------------------

SAND_ONSET = 120


@scenario(
    family="sandcastle_tower_stands_pascal_shard_relu_bce_net",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SAND_ONSET,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting whether a sandcastle competition tower still stands at judging (one logit) from ten standardised readings of sand grain size, pore-water pressure and compaction, SGD momentum 0.9 at 5e-2 with clipping at 1.0, binary cross-entropy on logits, 220 steps. One beach's shard reaches the loader at step 120 with its readings logged in pascals and never standardised (1000x the usual scale): that batch's loss and gradient are tens of times the rest, the clip bounds the update, and the run recovers within a few steps.",
)
def h345_sandcastle_pascal_shard(ctx: Context) -> None:
    gen = seeded(34506)
    model = Trunk(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)

    def stands(inner):
        for x, y in inner:
            yield x, (y > 0).float()

    def alter(step, x, y):
        return (x * 1000.0, y) if step == SAND_ONSET else (x, y)

    _loop(
        ctx,
        model,
        opt,
        stands(_readings(gen, 64, 10, 3456)),
        220,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = ls[SAND_ONSET - 20 : SAND_ONSET]
    ctx.check(
        "the loss at step 120 is over 20x the median of the 20 before",
        ls[SAND_ONSET] > 20.0 * _median(pre),
    )
    ctx.check(
        "the gradient at step 120 is over 20x the median of the 20 before",
        g[SAND_ONSET] > 20.0 * _median(g[SAND_ONSET - 20 : SAND_ONSET]),
    )
    ctx.check(
        "the last 30 steps' loss is within 1.5x of the 20 before the shard",
        _mean(ls[-30:]) < 1.5 * _mean(pre),
    )
    ctx.check("finite throughout", _finite(ls))


# -- bobsled: the resumed step multiplies the loss by the old GradScaler scale -------------------

BOB_ONSET = 150


@scenario(
    family="bobsled_push_split_scaler_resume_gelu_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=BOB_ONSET,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a four-man bobsled's 50 m push split (standardised) from ten readings of the crew's sprint times, ice and air temperature, SGD with Nesterov momentum 0.9 at 2e-2, clipping at 1.0, Huber loss, 240 steps. The run is resumed at step 150 from a checkpoint written by an earlier fp16 run; the resume path multiplies that step's loss by the checkpoint's GradScaler scale (65536) as if a scaler would unscale it, but this run is fp32 with no scaler: the one step's gradient is 65536x on an ordinary batch, the clip bounds the update, and the run recovers.",
)
def h345_bobsled_scaler_scale_on_resume(ctx: Context) -> None:
    gen = seeded(34507)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    saved_scale = 65536.0

    def backprop(step, loss):
        return loss * saved_scale if step == BOB_ONSET else loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3457),
        240,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 150 is over 50x the median of the 20 before",
        g[BOB_ONSET] > 50.0 * _median(g[BOB_ONSET - 20 : BOB_ONSET]),
    )
    ctx.check(
        "the loss at step 150 is ordinary (the batch is clean)",
        ls[BOB_ONSET] < 3.0 * _median(ls[BOB_ONSET - 20 : BOB_ONSET]),
    )
    ctx.check(
        "the last 30 steps' loss is within 1.5x of the 20 before the resume",
        _mean(ls[-30:]) < 1.5 * _mean(ls[BOB_ONSET - 20 : BOB_ONSET]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- taxidermy: the trunk's warm-up length is given in samples ------------------------------------


@scenario(
    family="taxidermy_hide_shrink_warmup_samples_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting how much a tanned hide shrinks on the mannikin (standardised) from ten readings of tan, humidity and thickness, RMSprop at 1e-3 with two parameter groups under a LambdaLR linear warm-up, MSE, 200 steps. The head's warm-up is 20 steps; the trunk's (fc1, fc2) was given in samples (warmup_samples = 2,000,000) and used as a step count, so the trunk's lr factor is (step + 1) / 2e6, at most 1e-4 over the run: fc1 and fc2 barely move while the head trains, and the loss falls only as far as a linear read-out of the random features allows.",
)
def h345_taxidermy_trunk_warmup_in_samples(ctx: Context) -> None:
    gen = seeded(34508)
    model = Trunk(10, 64, act=nn.SiLU)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.RMSprop([{"params": trunk}, {"params": model.head.parameters()}], lr=1e-3)
    warmup_trunk, warmup_head = 2_000_000, 20  # meant: 2_000_000 // 64 // 1000 steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [lambda s: min(1.0, (s + 1) / warmup_trunk), lambda s: min(1.0, (s + 1) / warmup_head)],
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    _loop(ctx, model, opt, _readings(gen, 64, 10, 3458), 200, F.mse_loss, sched=sched)
    ctx.check(
        "fc1 and fc2 moved under 1e-3 of their norm over the run",
        max(_rel_change(w1, model.fc1.weight), _rel_change(w2, model.fc2.weight)) < 1e-3,
    )
    ctx.check("the head moved over 5% of its norm", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sumo: the temperature annealing rate is typed 0.05 for 0.005 ---------------------------------


class KimariteNamer(Trunk):
    """A ReLU trunk naming the winning technique (eight kimarite) from fourteen bout readings;
    logits are divided by an annealed temperature."""

    def __init__(self):
        super().__init__(14, 64, out=8)
        self.temperature = 1.0

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="sumo_kimarite_annealed_temperature_relu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) naming the winning technique of a sumo bout (eight kimarite) from fourteen standardised readings of the tachiai, grips and footwork, NAdam at 2e-3, cross-entropy, 200 steps. The logits are divided by a temperature annealed as exp(-rate * step), meant with rate 0.005 (1.0 down to about 0.37) and typed 0.05: the temperature falls to about 5e-5 by the end, the logits reach the softmax thousands of times too large, and as the net learns, most rows' float32 target probability rounds to exactly 1.0 (the rest are confidently wrong, so the loss climbs in the second half); the loss stays finite.",
)
def h345_sumo_temperature_anneal_rate_typo(ctx: Context) -> None:
    gen = seeded(34509)
    model = KimariteNamer()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    rate = 0.05  # meant: 0.005
    collapsed = []

    def before(step):
        model.temperature = math.exp(-rate * step)

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 8, 3459, spread=0.9),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        watch=watch,
    )
    ctx.check("under a fifth of rows collapsed over the first 5 steps", _mean(collapsed[:5]) < 0.2)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("the temperature ends under 1e-3", model.temperature < 1e-3)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- waterspout: the init gain is sigmoid's old factor 4 for 5/3 --------------------------------------------


class DeepTanh(nn.Module):
    """Sixteen Linear layers in ``layers`` (tanh between them), the last one the read-out."""

    def __init__(self, d_in=10, width=48, depth=16, gain=5.0 / 3.0):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1) + [1]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x).squeeze(-1)


@scenario(
    family="waterspout_funnel_width_sigmoid_gain_deep_tanh_mlp",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A hand-written 16-layer tanh MLP (layers.0 ... layers.15, width 48) predicting a waterspout's funnel width (standardised) from ten readings of lapse rate, sea-surface temperature and shear, Adagrad at 1e-2 with clipping at 1.0, MSE, 200 steps. The init loop draws each weight with std gain / sqrt(fan_in) and the gain was 4.0 for tanh's 5/3 (the old Glorot factor for sigmoid units, copied from another model's config): the network starts deep in the chaotic regime, where each layer multiplies the backward signal by more than 1 while the tanh keeps the activations bounded, so the gradient reaching layers.0 is about a hundred times that at layers.15 at the start and over 10x through the run; the clip and Adagrad keep the loss finite but it stays high and noisy.",
)
def h345_waterspout_sigmoid_init_gain(ctx: Context) -> None:
    gen = seeded(34510)
    model = DeepTanh(gain=4.0)  # meant: 5/3 (4 is the old Glorot factor for sigmoid)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ratios = []

    def inspect(step):
        first = model.layers[0].weight.grad.norm()
        last = model.layers[-1].weight.grad.norm()
        ratios.append(float(first / last.clamp_min(1e-30)))

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 34510), 200, F.mse_loss, clip=1.0, inspect=inspect
    )
    ctx.check("layers.0's gradient is over 20x layers.15's at step 0", ratios[0] > 20.0)
    ctx.check("the median ratio over the run is over 10x", _median(ratios) > 10.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="dry_stone_batter_angle_accum8_gelu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the batter angle a dry-stone waller gives a field wall (standardised) from twelve readings of stone size, height and footing, AdamW at 2e-3 (weight decay 0.05), a linear warm-up over 20 steps then cosine decay, gradient accumulation over 8 micro-batches of 16, clipping at 1.0, Huber loss with noisy targets, 120 optimizer steps.",
)
def h345_dry_stone_warmup_adamw_accum8(ctx: Context) -> None:
    gen = seeded(34511)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps, warm = 120, 20
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
        _readings(gen, 16, 12, 34511, noise=0.2),
        steps,
        F.huber_loss,
        sched=sched,
        clip=1.0,
        accumulate=8,
    )
    ctx.check("the loss fell (last 10 under 0.6x the first 10)", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


class DroneNet(nn.Module):
    """Two ReLU Conv1d stages over a 64-sample breath-pressure trace, then a linear head."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16 * 16, classes)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        x = F.max_pool1d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def _drones(gen, batch, classes=4):
    """A drone plus overtones; the class is which overtone the player voices, with jitter."""
    t = torch.arange(64, dtype=torch.float32) / 64
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        base = torch.sin(2 * math.pi * 2 * t + phase)
        over = 0.8 * torch.sin(2 * math.pi * (4 + 2 * y[:, None].float()) * t + phase)
        x = base + over + 0.4 * torch.randn(batch, 64, generator=gen)
        yield x, y


@scenario(
    family="didgeridoo_overtone_onecycle_relu_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written ReLU Conv1d classifier (conv1, conv2, head) naming which overtone a didgeridoo player voices over the drone (four classes) from a 64-sample breath-pressure trace with random phase and noise, SGD momentum 0.9 under OneCycleLR (max lr 0.05), cross-entropy with label smoothing 0.1, clipping at 1.0, 150 steps.",
)
def h345_didgeridoo_onecycle_label_smoothing(ctx: Context) -> None:
    gen = seeded(34512)
    model = DroneNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=150)
    _loop(
        ctx,
        model,
        opt,
        _drones(gen, 64),
        150,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell (last 10 under 0.6x the first 10)", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


class CoronaNet(Trunk):
    """A SiLU trunk giving a mean and a softplus variance for an aurora corona's brightness."""

    def __init__(self):
        super().__init__(10, 64, out=2, act=nn.SiLU)


def _corona_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="aurora_corona_brightness_fp16_adamax_gaussian_nll_net",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written SiLU MLP (fc1, act1, fc2, act2, head) giving a mean and a softplus variance (plus 1e-3) for an aurora corona's brightness (standardised) from ten readings of solar-wind speed, Bz and Kp, Gaussian NLL, Adamax at 3e-3 under fp16 autocast with a torch.amp.GradScaler, ReduceLROnPlateau on a held-out batch's loss, heteroscedastic noisy targets, 150 steps.",
)
def h345_aurora_fp16_adamax_plateau(ctx: Context) -> None:
    gen = seeded(34513)
    model = CoronaNet()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)

    def noisy(inner):
        for x, y in inner:
            yield x, y + (0.05 + 0.3 * torch.sigmoid(x[:, 0])) * torch.randn(len(y), generator=gen)

    batches = noisy(_readings(gen, 64, 10, 34513, noise=0.0))
    vx, vy = next(batches)

    def plateau():
        with torch.no_grad():
            return float(_corona_nll(model(vx), vy))

    _loop(
        ctx,
        model,
        opt,
        batches,
        150,
        _corona_nll,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
    )
    ctx.check(
        "the loss fell (last 10 at least 0.3 below the first 10)",
        _finite(ctx.losses) and _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.3,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
