"""Held-out set 264 (``h264_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a truffle-hunting find-grade transformer encoder with one
token per feature whose q/k lr multiplier was typed 30 for 0.3, a slate-splitting thickness
regressor whose hand-written weight decay has its sign flipped, a birch-tar yield regressor whose
resume path multiplies one step's loss by a leftover loss scale 65536 under Adam, a kin-ball
classifier run with an SGD recipe's lr 1e-1 under Adam, a hichiriki pitch-bend Gaussian-NLL net
whose sigma head lacks its softplus, a stilt-fishing catch regressor fed a shard with depths in
millimetres, a knattleikur classifier whose lr multiplier table misspells the head, a janggu
stroke cosine classifier whose scale was typed 1e3 for 1e1, a tuna-toss regressor whose warm-up
lost its cap, a geomungo pluck Elman RNN whose recurrent gain was typed 3 for 1, and three
controls (a komuz bf16 AdamW Conv1d net, a watermill millstone Nesterov classifier, a rinkball
fp16 GradScaler Huber regressor).

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
    dead_fraction,
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


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


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
    scaler=None,
    amp=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step)`` is a
    factor on the backpropagated loss (1 by default), ``after(step)`` runs after the optimizer
    step; ``amp``: an autocast dtype (or None); stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        factor = scale_loss(step) if scale_loss is not None else 1.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss * factor / accumulate
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
        if not math.isfinite(shown):
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


def _interacting(gen, batch, d_in, classes, seed):
    """Tabular rows whose class depends on products of feature pairs (what attention is for)."""
    g = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, d_in, (classes, 2), generator=g)
    w = torch.randn(classes, generator=g).abs() + 0.5
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        score = w * x[:, pairs[:, 0]] * x[:, pairs[:, 1]] + 0.3 * x[:, :classes]
        yield x, score.argmax(1)


def _traces(gen, batch, classes, seed, channels=2, length=32, noise=0.6):
    """Multi-channel traces: each class a different mix of frequencies, random phase, noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.9 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase)
        yield x + noise * torch.randn(batch, channels, length, generator=gen), y


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


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _moved(model, w0):
    return {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm()) for n, p in model.named_parameters()
    }


# -- truffle hunting: a feature-token transformer, q/k lr multiplier typed 30 for 0.3 -------------


class RowAttention(nn.Module):
    """Multi-head self-attention over feature tokens with q, k, v, o; keeps its last logits."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.heads = heads
        self.logits = None

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = (
            z.reshape(b, t, h, d // h).transpose(1, 2) for z in (self.q(x), self.k(x), self.v(x))
        )
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        self.logits = logits.detach()
        y = torch.softmax(logits, -1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class EncoderBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RowAttention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class FeatureTokenEncoder(nn.Module):
    """One token per feature (value * feature weight + feature bias), a [CLS] token, two pre-LN
    encoder blocks, a final norm and a head on [CLS]."""

    def __init__(self, n_features, classes, dim=32, layers=2):
        super().__init__()
        self.feat_weight = nn.Parameter(torch.randn(n_features, dim) / math.sqrt(dim))
        self.feat_bias = nn.Parameter(torch.zeros(n_features, dim))
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        tokens = x[:, :, None] * self.feat_weight + self.feat_bias
        h = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, 0]))


@scenario(
    family="truffle_hunting_dog_find_grade_feature_token_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A hand-written transformer encoder for tabular rows (one token per feature: value * feature weight + feature bias, a [CLS] token, two pre-LN blocks with q/k/v/o attention, norm, head) grading a truffle-hunting dog's find (4 grades) from 10 standardised readings (soil moisture, oak root depth, scent-marking time, dig depth, ...), AdamW at 2e-3 with weight decay 0.01 and cross-entropy. The query/key projections go in their own param group whose lr multiplier was meant as 0.3 and typed 30: q and k take steps 100x the intended ones and the pre-softmax attention logits q.k/sqrt(d) on a fixed probe grow over 20x to the hundreds, attention goes one-hot; the intended multiplier keeps them an order smaller. Finite, no blow-up.",
)
def h264_truffle_hunting_qk_lr_multiplier_typo(ctx: Context) -> None:
    def run(c, mult):
        gen = seeded(26401)
        model = FeatureTokenEncoder(10, 4)
        qk = [p for n, p in model.named_parameters() if ".attn.q." in n or ".attn.k." in n]
        ids = {id(p) for p in qk}
        rest = [p for p in model.parameters() if id(p) not in ids]
        base = 2e-3
        opt = torch.optim.AdamW(
            [{"params": rest}, {"params": qk, "lr": base * mult}], lr=base, weight_decay=0.01
        )
        probe = next(_interacting(torch.Generator().manual_seed(7), 256, 10, 4, 71))[0]
        peak = []

        def measure():
            with torch.no_grad():
                model(probe)
                peak.append(max(float(b.attn.logits.abs().max()) for b in model.blocks))

        measure()
        _train(
            c,
            model,
            opt,
            _interacting(gen, 64, 10, 4, 71),
            150,
            F.cross_entropy,
            classifier=True,
            after=lambda s: measure(),
        )
        return peak

    twin = _Quiet()
    twin_peak = run(twin, 0.3)
    peak = run(ctx, 30.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the peak attention logit grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("the peak attention logit is over 50 at the end", peak[-1] > 50)
    ctx.check("the intended multiplier keeps the peak 5x smaller", twin_peak[-1] < peak[-1] / 5)
    ctx.check("the twin learns (loss fell)", _fell(twin.losses, ratio=0.9))


# -- slate splitting: the hand-written decoupled weight decay has its sign flipped -----------------


@scenario(
    family="slate_splitting_roof_slate_thickness_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the thickness a quarry slate-splitter's chisel leaves on a roofing slate from 12 standardised readings (block grain angle, cleavage spacing, moisture, chisel width, strike force, ...), Adam at 3e-3 with a hand-written decoupled weight decay applied after each step. The decay line was written p.mul_(1 + lr * wd) instead of p.mul_(1 - lr * wd) with wd 2.5: every step inflates the weights a little, the loss first falls and then climbs slowly and steadily for the rest of the run with no single jump, while the twin with the right sign keeps falling. Finite, no NaN.",
)
def h264_slate_splitting_decay_sign(ctx: Context) -> None:
    def run(c, sign):
        gen = seeded(26402)
        model = Stack(12, hidden=64, act=nn.GELU)
        lr, wd = 3e-3, 2.5
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def after(step):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 - sign * lr * wd)

        _train(c, model, opt, _readings(gen, 64, 12, 73), 300, F.mse_loss, after=after)

    twin = _Quiet()
    run(twin, 1.0)
    run(ctx, -1.0)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10))
    jumps = max(ls[i + 1] / max(ls[i], 1e-9) for i in range(len(ls) - 1))
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell first (10-step low under 0.5x the start)", low < 0.5 * _mean(ls[:10]))
    ctx.check("the loss ends over 3x its 10-step low", _mean(ls[-10:]) > 3 * low)
    ctx.check(
        "the climb is steady: each 50-step mean of the last 150 steps above the one before",
        all(_mean(ls[i : i + 50]) > _mean(ls[i - 50 : i]) for i in (200, 250)),
    )
    ctx.check("no single step jumps the loss over 5x", jumps < 5)
    ctx.check(
        "the twin ends under 0.3x of this run", _mean(twin.losses[-10:]) < 0.3 * _mean(ls[-10:])
    )


# -- birch tar: a manual loss scale left in the resume path ---------------------------------------

ONSET_TAR = 60


@scenario(
    family="birch_tar_pit_yield_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TAR,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the tar yield of a double-pot birch-bark tar pit from 12 standardised readings (bark mass, bark moisture, fire duration, pot seal, soil temperature, ...), Adam at 1e-3, MSE. The resume path copied from an fp16 script multiplies the first step's loss by the loss scale 65536 and there is no GradScaler to unscale it: at step 60 Adam receives one gradient about 65536x the others, which fills its second moment (exp_avg_sq); for the next hundred steps every update is over 10x smaller than before (and than the twin's) and the loss stalls above the twin. The batches are ordinary; finite, no blow-up.",
)
def h264_birch_tar_leftover_loss_scale(ctx: Context) -> None:
    def run(c, bug):
        gen = seeded(26403)
        model = Stack(12, hidden=64, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moved, prev, xs = [], {}, []

        def before(step):
            prev["w"] = _flat(model)

        def after(step):
            moved.append(float((_flat(model) - prev["w"]).norm()))

        def watch(step, out, x, y):
            if step == ONSET_TAR:
                xs.append(float(x.abs().max()))
                xs.append(float(y.abs().max()))

        _train(
            c,
            model,
            opt,
            _readings(gen, 128, 12, 79),
            200,
            F.mse_loss,
            scale_loss=lambda s: 65536.0 if bug and s == ONSET_TAR else 1.0,
            before=before,
            after=after,
            watch=watch,
        )
        return moved, xs

    twin = _Quiet()
    twin_moved, _ = run(twin, bug=False)
    moved, xs = run(ctx, bug=True)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(moved[ONSET_TAR - 20 : ONSET_TAR])
    after = _median(moved[ONSET_TAR + 20 : ONSET_TAR + 100])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_TAR], ratio=0.7))
    ctx.check(
        "the gradient Adam saw at the onset over 1e4x the median before",
        gn[ONSET_TAR] > 1e4 * _median(gn[ONSET_TAR - 20 : ONSET_TAR]),
    )
    ctx.check("updates 20-100 steps after the onset over 10x smaller than before", after < pre / 10)
    ctx.check(
        "those updates under 0.2x the twin's",
        after < 0.2 * _median(twin_moved[ONSET_TAR + 20 : ONSET_TAR + 100]),
    )
    ctx.check(
        "the loss stalls: the twin ends under 0.8x of it",
        _mean(twin.losses[-10:]) < 0.8 * _mean(ls[-10:]),
    )
    ctx.check("the onset batch is ordinary (|x| under 6, |y| under 4)", xs[0] < 6 and xs[1] < 4)


# -- kin-ball: an SGD recipe's lr 1e-1 under Adam -------------------------------------------------


@scenario(
    family="kinball_omnikin_call_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) telling which of 5 plays a kin-ball team's 'Omnikin' call leads to from 24 standardised readings (player positions, ball height, hit angle, team colours called, ...), Adam, cross-entropy. The lr 1e-1 came with a config copied from the team's SGD recipe; Adam was meant to run at 1e-3: within tens of steps fc2's pre-activations are pushed negative and over half of act2's ReLU units stop firing on every input of a 512-row probe and never come back, while the intended lr keeps them alive. The loss stays finite, no blow-up.",
)
def h264_kinball_sgd_lr_in_adam_config(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(26404)
        model = Stack(24, hidden=64, out=5)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        probe = next(_kinds(torch.Generator().manual_seed(5), 512, 24, 5, 83, noise=0.9))[0]
        with torch.no_grad():
            dead = [dead_fraction(model.features(probe))]

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 24, 5, 83, noise=0.9),
            150,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return dead

    twin = _Quiet()
    twin_dead = run(twin, 1e-3)
    dead = run(ctx, 1e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("act2 under 20% dead at init", dead[0] < 0.2)
    ctx.check("act2 over half dead at the end", dead[-1] > 0.5)
    ctx.check("act2 stays over half dead over the last 30 steps", min(dead[-30:]) > 0.5)
    ctx.check("the intended lr keeps act2 under 20% dead", twin_dead[-1] < 0.2)


# -- hichiriki: the Gaussian NLL's scale head lacks its softplus ----------------------------------


class ReedNet(nn.Module):
    """A tanh trunk (fc1, act1, fc2, act2) with a mean head (mu) and a scale head (sigma)."""

    def __init__(self, d_in, softplus, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mu = nn.Linear(hidden, 1)
        self.sigma = nn.Linear(hidden, 1)
        self.softplus = softplus
        with torch.no_grad():
            self.sigma.weight.mul_(0.1)
            self.sigma.bias.fill_(1.0 if not softplus else 0.55)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        s = self.sigma(h)
        if self.softplus:
            s = F.softplus(s) + 1e-4
        return torch.cat([self.mu(h), s], -1)


def _gauss_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


ONSET_REED = 107


@scenario(
    family="hichiriki_reed_pitch_bend_gaussian_nll_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("sigma",),
    diverges=ONSET_REED,
    heldout=True,
    onset=ONSET_REED,
    note="A tanh trunk (fc1, act1, fc2, act2) with a mean head (mu) and a scale head (sigma) regressing how far a hichiriki player bends the pitch of the double reed from 10 standardised readings (breath pressure, reed wetness, lip position, room humidity, ...), Gaussian negative log-likelihood log(sigma) + (y - mu)^2 / (2 sigma^2), Adamax at 1e-2, sigma's bias started at 1. The softplus that should keep sigma positive was left out of the scale head: as the model grows confident, sigma is pushed towards the small residuals and at step 107 one row's raw sigma overshoots to <= 0, log(sigma) is NaN in the scale head, the loss is non-finite. The batch is ordinary; the twin with the softplus stays finite.",
)
def h264_hichiriki_sigma_without_softplus(ctx: Context) -> None:
    seen = {}

    def run(c, softplus):
        gen = seeded(26405)
        model = ReedNet(10, softplus)
        opt = torch.optim.Adamax(model.parameters(), lr=1e-2)

        def watch(step, out, x, y):
            if not softplus and "step" not in seen and bool((out[:, 1] <= 0).any()):
                seen["step"] = step
                seen["x_max"] = float(x.abs().max())
                seen["y_max"] = float(y.abs().max())

        _train(c, model, opt, _readings(gen, 64, 10, 89, noise=0.05), 200, _gauss_nll, watch=watch)

    twin = _Quiet()
    run(twin, softplus=True)
    run(ctx, softplus=False)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss is non-finite first at the onset", bad == ONSET_REED)
    ctx.check(
        "finite and falling before the onset",
        _finite(ls[:ONSET_REED]) and ls[ONSET_REED - 1] < ls[0] - 0.3,
    )
    ctx.check("the scale head gave sigma <= 0 first at the onset", seen.get("step") == ONSET_REED)
    ctx.check(
        "the batch is ordinary (|x| under 6, |y| under 4)",
        seen.get("x_max", 99.0) < 6 and seen.get("y_max", 99.0) < 4,
    )
    ctx.check("the softplus twin stays finite", _finite(twin.losses) and len(twin.losses) == 200)


# -- stilt fishing: a logger that records depth in millimetres -------------------------------------

ONSET_STILT = 100


@scenario(
    family="stilt_fishing_catch_weight_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_STILT,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a Sri Lankan stilt fisher's morning catch weight from 10 standardised readings (water depth, swell, tide phase, turbidity, wind, water temperature, ...), plain SGD at 2e-2, MSE, gradient clipping at 1. The readings are standardised with metre statistics; one village's logger records water depth in millimetres, and at step 100 one batch comes from its shard: eight rows carry a depth feature about 1000x its usual scale. The loss and the gradient at that step are hundreds of times the others; the targets are ordinary. Clipped, the run recovers; finite.",
)
def h264_stilt_fishing_millimetre_shard(ctx: Context) -> None:
    gen = seeded(26406)
    model = Stack(10, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_STILT:
            x = x.clone()
            x[:8, 0] = (1000.0 * (2.0 + 0.5 * x[:8, 0]) - 2.0) / 0.5
            seen["x_max"] = float(x.abs().max())
            seen["y_max"] = float(y.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 97), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_STILT - 20 : ONSET_STILT])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_STILT], ratio=0.6))
    ctx.check("loss at the onset over 100x the median before", ls[ONSET_STILT] > 100 * pre)
    ctx.check(
        "gradient at the onset over 100x the median before",
        gn[ONSET_STILT] > 100 * _median(gn[ONSET_STILT - 20 : ONSET_STILT]),
    )
    ctx.check("the onset inputs hold millimetre depths (over 1e3)", seen.get("x_max", 0.0) > 1e3)
    ctx.check("the onset targets are ordinary (under 4)", seen.get("y_max", 99.0) < 4)
    ctx.check(
        "the loss is back under 3x its pre-onset level 80 steps later",
        _mean(ls[ONSET_STILT + 70 : ONSET_STILT + 80]) < 3 * pre,
    )


# -- knattleikur: the per-module lr multiplier table misspells the head ----------------------------


@scenario(
    family="knattleikur_bout_winner_gelu_classifier",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) predicting which side wins a knattleikur (Icelandic stick-and-ball game) bout out of 3 outcomes from 18 standardised readings (player weights, stick lengths, ice hardness, earlier bouts, ...), NAdam at 2e-3, cross-entropy. Param groups are built per module from a table of lr multipliers {'fc1': 1, 'fc2': 1, 'haed': 1} read with .get(name, 0.0), the default meant for frozen modules: the head's key is misspelt, its group gets lr 0 for the whole run and its weights never move; the backbone learns around a fixed random head, so the loss still falls. Finite, no blow-up.",
)
def h264_knattleikur_multiplier_key_typo(ctx: Context) -> None:
    gen = seeded(26407)
    model = Stack(18, hidden=48, out=3, act=nn.GELU)
    mult = {"fc1": 1.0, "fc2": 1.0, "haed": 1.0}
    base = 2e-3
    groups = [
        {"params": list(getattr(model, n).parameters()), "lr": base * mult.get(n, 0.0)}
        for n in ("fc1", "fc2", "head")
    ]
    opt = torch.optim.NAdam(groups, lr=base)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 18, 3, 101, noise=0.8),
        200,
        F.cross_entropy,
        classifier=True,
    )
    moved = _moved(model, w0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.9))
    ctx.check("the head's weight never moved", moved["head.weight"] == 0.0)
    ctx.check("fc1's weight moved over 1e-2 of its norm", moved["fc1.weight"] > 1e-2)
    ctx.check("fc2's weight moved over 1e-2 of its norm", moved["fc2.weight"] > 1e-2)


# -- janggu: the cosine classifier's scale typed 1e3 for 1e1 ---------------------------------------


class CosineHead(nn.Module):
    """logits = scale * cos(features, class weights)."""

    def __init__(self, hidden, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, hidden) / math.sqrt(hidden))
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class StrokeNet(nn.Module):
    def __init__(self, d_in, classes, scale, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="janggu_hourglass_drum_stroke_cosine_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2) with a cosine-similarity head (head: scale * cos(features, class weights)) telling which of 6 strokes a janggu (Korean hourglass drum) player struck from 20 standardised readings of two drumhead contact mics (onset sharpness, band energies, decay, ...), Adagrad at 5e-2, cross-entropy. The head's scale was meant as 1e1 and typed 1e3: the logits span hundreds, and as the features line up with their class weights the float32 softmax rounds most targets' probabilities to exactly 1 (the others to exactly 0) and the loss reads exactly 0; the twin at scale 10 keeps probabilities soft. Finite, no blow-up.",
)
def h264_janggu_cosine_scale_typo(ctx: Context) -> None:
    def run(c, scale):
        gen = seeded(26408)
        model = StrokeNet(20, 6, scale)
        opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 20, 6, 103))
        with torch.no_grad():
            fr = [collapsed_fraction(model(probe[0]), probe[1])]

        def after(step):
            with torch.no_grad():
                fr.append(collapsed_fraction(model(probe[0]), probe[1]))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 20, 6, 103),
            150,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return fr

    twin = _Quiet()
    twin_fr = run(twin, 10.0)
    fr = run(ctx, 1000.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 30% of probe rows saturated at init", fr[0] < 0.3)
    ctx.check("over half the probe rows saturate to exactly 1 at the end", fr[-1] > 0.5)
    ctx.check("the intended scale saturates under 10%", twin_fr[-1] < 0.1)
    ctx.check("the twin learns (loss fell)", _fell(twin.losses, ratio=0.7))


# -- tuna toss: a warm-up that never stops ---------------------------------------------------------


def _top_eig(model, loss_fn, x, y, iters=20):
    """The Hessian's largest eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters()]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


def _fixed(x, y):
    while True:
        yield x, y


WARM_TUNA = 20


@scenario(
    family="tuna_toss_distance_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=WARM_TUNA,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how far a competitor throws a frozen tuna at a fishing-town festival from 8 standardised readings (fish mass, run-up speed, release angle, grip, wind, ...), full-batch plain SGD on 256 throws, MSE. The linear warm-up lr = 0.1 * (step + 1) / 20 lost its min(1, .) in a refactor, so after step 20 the lr keeps climbing instead of holding at 0.1: lr x sharpness (the Hessian's top eigenvalue, by power iteration) is under 2 at the end of the warm-up, crosses 2 as the lr keeps growing, and the loss blows up.",
)
def h264_tuna_toss_warmup_without_cap(ctx: Context) -> None:
    gen = seeded(26409)
    x, y = next(_readings(gen, 256, 8, 107))
    model = Stack(8, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sharp = {}

    def before(step):
        for g in opt.param_groups:
            g["lr"] = 0.1 * (step + 1) / WARM_TUNA  # meant min(1, (step + 1) / WARM_TUNA)
        if step % 10 == 0 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            sharp[step] = opt.param_groups[0]["lr"] * _top_eig(model, F.mse_loss, x, y)

    _train(ctx, model, opt, _fixed(x, y), 200, F.mse_loss, before=before)
    ls = ctx.losses
    low = min(v for v in ls if math.isfinite(v))
    ctx.check("loss fell during the warm-up", ls[WARM_TUNA] < 0.7 * ls[0])
    ctx.check("lr x sharpness under 2 at the end of the warm-up", sharp[WARM_TUNA] < 2)
    ctx.check("lr x sharpness over 2 later", max(sharp.values()) > 2)
    bad = _first_bad(ls)
    ctx.check("the loss blows up to non-finite", bad is not None)
    ctx.check(
        "lr x sharpness crossed 2 before the blow-up",
        bad is not None and any(v > 2 for s, v in sharp.items() if s < bad),
    )
    ctx.check(
        "finite and near its low 40 steps before the blow-up",
        bad is not None and ls[bad - 40] < 3 * low,
    )


# -- geomungo: the recurrent weights' orthogonal gain typed 3 for 1 --------------------------------


class ElmanCell(nn.Module):
    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.hh.weight, gain=gain)

    def forward(self, x, h):
        return torch.tanh(self.ih(x) + self.hh(h))


class PluckRNN(nn.Module):
    """A hand-written Elman RNN (cell: ih, hh) over a plucked-string envelope, head on the last
    state; keeps its hidden states for inspection."""

    def __init__(self, gain, d_in=2, hidden=48):
        super().__init__()
        self.cell = ElmanCell(d_in, hidden, gain)
        self.head = nn.Linear(hidden, 1)
        self.hidden = hidden
        self.states = []

    def forward(self, x):
        h = x.new_zeros(len(x), self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _plucks(gen, batch, length=40):
    """Envelope and pitch-deviation traces of a plucked geomungo string; target: the decay rate."""
    t = torch.arange(length).float() / length
    while True:
        rate = 1.0 + 3.0 * torch.rand(batch, 1, generator=gen)
        env = torch.exp(-rate * t) + 0.05 * torch.randn(batch, length, generator=gen)
        bend = 0.3 * torch.sin(6.0 * t + 6.28 * torch.rand(batch, 1, generator=gen))
        yield torch.stack([env, bend], -1), (rate.squeeze(-1) - 2.5) / 0.9


@scenario(
    family="geomungo_pluck_decay_elman_rnn",
    optimizer="SGD(nesterov=True)",
    cause="exploding_gradients",
    where=("cell", "cell.hh"),
    diverges=None,
    heldout=True,
    note="A hand-written Elman RNN (cell with ih and hh, head on the last state) reading 40 steps of a plucked geomungo (Korean zither) string's envelope and pitch bend and regressing its decay rate, SGD with Nesterov momentum 0.9 at 1e-2, MSE, clipping at 1. The recurrent weights are initialised orthogonal with gain meant 1.0 and typed 3.0: the recurrence is chaotic and the gradient grows step after step back through time, the loss's gradient at the first hidden state is over 100x that at the last, and the clipped updates thrash while the twin with gain 1 trains; tanh keeps the loss finite, no blow-up.",
)
def h264_geomungo_recurrent_gain_typo(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(26410)
        model = PluckRNN(gain)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
        ratio = []
        batches = _plucks(gen, 32)
        c.attach(model, opt)
        for _ in range(120):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            first, last = model.states[0].grad.norm(), model.states[-1].grad.norm()
            ratio.append(float(first / last.clamp_min(1e-12)))
            c.grad_norms.append(grad_norm(model))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            c.step(loss.detach())
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss.detach())):
                break
        return ratio

    twin = _Quiet()
    twin_ratio = run(twin, 1.0)
    ratio = run(ctx, 3.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the first state's gradient over 100x the last state's at step 0", ratio[0] > 100)
    ctx.check("the median ratio over the run over 100x", _median(ratio) > 100)
    ctx.check("with gain 1 the ratio stays under 10", max(twin_ratio) < 10)
    ctx.check(
        "the twin trains to under 0.7x of this run's final loss",
        _mean(twin.losses[-10:]) < 0.7 * _mean(ls[-10:]),
    )


# -- healthy controls ------------------------------------------------------------------------------


class FretNet(nn.Module):
    """conv1 -> norm1 -> act1 -> conv2 -> norm2 -> act2 -> mean pool -> drop -> head."""

    def __init__(self, channels, classes, width=24):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.norm1 = nn.GroupNorm(4, width)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.norm2 = nn.GroupNorm(4, width)
        self.act2 = nn.GELU()
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act1(self.norm1(self.conv1(x)))
        h = self.act2(self.norm2(self.conv2(h)))
        return self.head(self.drop(h.mean(-1)))


@scenario(
    family="komuz_fret_buzz_bf16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU Conv1d classifier with GroupNorm and dropout (conv1, norm1, act1, conv2, norm2, act2, drop, head) telling which of 5 playing techniques a komuz (Kyrgyz fretless lute) player used from 32 samples of 2 body-pickup channels, mixed bfloat16 autocast, AdamW at a OneCycleLR peak of 3e-3 with weight decay 0.05, cross-entropy with label smoothing 0.05, gradient clipping at 1. Trains normally.",
)
def h264_komuz_bf16_adamw_onecycle(ctx: Context) -> None:
    gen = seeded(26411)
    model = FretNet(2, 5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 109),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.05),
        classifier=True,
        amp=torch.bfloat16,
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell to under 0.6x its start", _fell(ls, ratio=0.6))


@scenario(
    family="watermill_millstone_dressing_gelu_classifier",
    optimizer="SGD(nesterov=True)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) telling which of 4 dressing patterns a watermill's millstone needs from 16 standardised readings (flour fineness, furrow depth, stone speed, grain moisture, meal temperature, ...), SGD with Nesterov momentum 0.9 at 5e-2, cross-entropy with label smoothing 0.1, 5% of labels noisy (the miller's log), ReduceLROnPlateau on the training loss. Trains normally.",
)
def h264_watermill_nesterov_plateau(ctx: Context) -> None:
    gen = seeded(26412)
    model = Stack(16, hidden=48, out=4, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)

    def alter(step, x, y):
        flip = torch.rand(len(y), generator=gen) < 0.05
        return x, torch.where(flip, torch.randint(0, 4, y.shape, generator=gen), y)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 4, 113, noise=0.8),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        alter=alter,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell to under 0.7x its start", _fell(ls, ratio=0.7))


@scenario(
    family="rinkball_pass_speed_fp16_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the speed of a rinkball pass from 12 standardised readings (stick flex, ball wear, ice temperature, skating speed, ...), fp16 autocast with a torch.amp.GradScaler, Huber loss, gradient accumulation over 2 micro-batches, RAdam at 2e-3 with a warm-up + cosine LambdaLR, clipping at 1 after unscaling. Trains normally.",
)
def h264_rinkball_fp16_scaler_huber(ctx: Context) -> None:
    gen = seeded(26413)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    steps = 160

    def shape(s):
        if s < 15:
            return (s + 1) / 15
        return 0.5 * (1 + math.cos(math.pi * (s - 15) / (steps - 15)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 127, noise=0.1),
        steps,
        F.huber_loss,
        amp=torch.float16,
        scaler=scaler,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell to under 0.6x its start", _fell(ls, ratio=0.6))
    ctx.check("the loss scale stayed finite", all(math.isfinite(v) and v > 0 for v in ctx.scales))
