"""Held-out set 154 (``h154_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: transformers written by hand (a hand softmax over q.k,
``nn.MultiheadAttention`` with a key padding mask, ``scaled_dot_product_attention`` under fp16
autocast), GRUs over packed sequences, 1-D conv nets with LayerNorm and GroupNorm, a
sum-pooling regressor under fp16 autocast with a GradScaler, a deep tanh MLP and plain MLP
classifiers and regressors.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

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


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    forward=None,
    before=None,
    alter=None,
    watch=None,
    backward_loss=None,
    after_backward=None,
    clip_norm=None,
    clip_value=None,
    sched=None,
    scaler=None,
    accumulate=1,
):
    """The training loop: ``accumulate`` micro-batches a step; ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``backward_loss(step,
    loss)`` is what is back-propagated, ``after_backward(step)`` runs before the gradient norm is
    taken. The gradient norm is recorded before any clipping."""
    forward = forward or (lambda m, x: m(x))
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
                out = forward(model, x)
            loss = loss_fn(out.float(), y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            back = loss if backward_loss is None else backward_loss(step, loss)
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
            shown += float(loss.detach())
        if scaler is not None:
            scaler.unscale_(opt)
        if after_backward is not None:
            after_backward(step)
        ctx.grad_norms.append(grad_norm(model))
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
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
        if math.isnan(shown):
            break


# -- castanets: a hand-written attention that lost its 1/sqrt(d) -------------------------------


class PalillosAttention(nn.Module):
    """Multi-head self-attention with a hand softmax over q.k; records the largest logit it fed
    the softmax. The port from a fused kernel dropped the 1/sqrt(head_dim) the kernel applied."""

    def __init__(self, dim, heads, scaled=True):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim // heads) if scaled else 1.0
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            f(x).reshape(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        logits = (q @ k.transpose(-1, -2)) * self.scale
        self.last_max = float(logits.detach().abs().amax())
        w = torch.exp(logits - logits.amax(-1, keepdim=True))
        w = w / w.sum(-1, keepdim=True)
        return self.o((w @ v).transpose(1, 2).reshape(b, t, d))


class CastanetRhythmNet(nn.Module):
    """Reads 16 castanet strokes (ta, ri, pi, pam, ... as 8 stroke codes) and names the dance's
    rhythm (sevillanas, fandango, bolero, jota)."""

    def __init__(self, strokes=8, dim=64, length=16, rhythms=4, heads=2, scaled=True):
        super().__init__()
        self.stroke = nn.Embedding(strokes, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = PalillosAttention(dim, heads, scaled)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, rhythms)

    def forward(self, x):
        h = self.stroke(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1))


def _castanets(gen, batch, strokes=8, length=16):
    """The rhythm: whether the first 'pam' (code 3) comes before the first 'ri' (code 1), and
    whether 'ta' (code 0) is more frequent than 'pi' (code 2)."""
    while True:
        x = torch.randint(0, strokes, (batch, length), generator=gen)
        first3 = torch.where(x == 3, torch.arange(length), length).amin(1)
        first1 = torch.where(x == 1, torch.arange(length), length).amin(1)
        y = (first3 < first1).long() * 2 + ((x == 0).sum(1) > (x == 2).sum(1)).long()
        yield x, y


@scenario(
    family="castanets_palillos_rhythm_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer whose attention is a hand softmax over q.k. It was ported from "
    "a fused attention kernel that applied 1/sqrt(head_dim) itself, and the port multiplies "
    "the scores by 1.0; AdamW runs at lr 1e-2 with weight decay 0 (the 'no decay' list caught "
    "every parameter): the q.k logits the softmax sees grow more than 10x, past 50.",
)
def h154_castanets_unscaled_hand_attention(ctx: Context) -> None:
    gen = seeded(15401)
    model = CastanetRhythmNet(scaled=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _castanets(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 50", seen[-1] > 50)
    ctx.check("finite", _finite(ctx.losses))


# -- ukulele strum: a Crammer-Singer hinge that lost its clamp ----------------------------------


class StrumPatternNet(nn.Module):
    """Names the strum pattern (island, calypso, swing, chunk, roll, split) from 32 wrist-IMU
    features of one bar."""

    def __init__(self, features=32, hidden=64, patterns=6):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, patterns)

    def forward(self, x):
        return self.head(self.body(x))


def _strums(gen, batch, features=32, patterns=6):
    centres = 1.5 * torch.randn(patterns, features, generator=torch.Generator().manual_seed(5))
    while True:
        y = torch.randint(0, patterns, (batch,), generator=gen)
        yield centres[y] + 2.0 * torch.randn(batch, features, generator=gen), y


def _hinge_without_clamp(logits, y):
    target = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return (1.0 - target + others.amax(1)).mean()  # .clamp(min=0) lost in a refactor


@scenario(
    family="ukulele_strum_pattern_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A Crammer-Singer multi-class hinge written by hand: 1 - target logit + best other "
    "logit. A refactor that moved it into a loss module dropped the .clamp(min=0), so the loss "
    "has no floor and keeps paying for a wider margin: with NAdam at lr 2e-3 the head's logits "
    "grow without bound (the logit norm grows more than 20x and is still growing) while the "
    "loss runs far below zero.",
)
def h154_ukulele_hinge_without_clamp(ctx: Context) -> None:
    gen = seeded(15402)
    model = StrumPatternNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    norms = []
    _train(
        ctx,
        model,
        opt,
        _strums(gen, 64),
        200,
        _hinge_without_clamp,
        classifier=True,
        watch=lambda s, o, x, y: norms.append(float(o.detach().norm(dim=-1).mean())),
    )
    ctx.check("logit norm grew 20x", norms[-1] > 20 * _mean(norms[:5]))
    ctx.check("logit norm still growing", norms[-1] > 1.3 * norms[-50])
    ctx.check("loss below -10", ctx.losses[-1] < -10)


# -- bassoon reeds: a prototype classifier without its temperature ------------------------------


class Sharpen(nn.Module):
    """Multiplies the logits by an inverse temperature set by the training loop."""

    def __init__(self):
        super().__init__()
        self.beta = 1.0

    def forward(self, logits):
        return logits * self.beta


class ReedGradeNet(nn.Module):
    """Grades a scraped bassoon reed (five grades, soft to hard) from a 40-point profile of the
    blade thickness."""

    def __init__(self, points=40, hidden=64, grades=5):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(points, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, grades)
        self.sharpen = Sharpen()

    def forward(self, x):
        return self.sharpen(self.head(self.body(x)))


def _reeds(gen, batch, points=40, grades=5):
    t = torch.linspace(0, 1, points)
    bumps = 0.15 * torch.randn(grades, points, generator=torch.Generator().manual_seed(8))
    while True:
        y = torch.randint(0, grades, (batch,), generator=gen)
        prof = 0.2 + 0.7 * t**1.5 + bumps[y]
        yield prof + 0.05 * torch.randn(batch, points, generator=gen), y


@scenario(
    family="bassoon_reed_scrape_grade_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("sharpen", "head"),
    diverges=None,
    heldout=True,
    note="A self-training recipe sharpens the classifier's softmax with an inverse "
    "temperature beta that should ramp from 1 to 4 over the first 50 steps; the ramp was "
    "written as 1 + 3 * step / 50 without its min(..., 4) cap, so beta keeps growing (16 by "
    "the end) and, as RMSprop (lr 1e-3) separates the grades, the float32 softmax rounds most "
    "targets' probabilities to exactly 1.0.",
)
def h154_bassoon_reed_uncapped_sharpening(ctx: Context) -> None:
    gen = seeded(15403)
    model = ReedGradeNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    collapsed = []

    def before(step):
        model.sharpen.beta = 1.0 + 3.0 * step / 50  # min(4.0, ...) lost

    _train(
        ctx,
        model,
        opt,
        _reeds(gen, 64),
        250,
        F.cross_entropy,
        classifier=True,
        before=before,
        watch=lambda s, o, x, y: collapsed.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("most targets' probabilities are exactly 1.0", _mean(collapsed[-20:]) > 0.7)
    ctx.check("none were at step 50 (beta 4)", collapsed[50] < 0.05)


# -- malt kiln: the linear-scaling rule applied to the wrong batch size --------------------------


class KilnMoistureNet(nn.Module):
    """Regresses the green malt's moisture after kilning from ten readings (air-on and air-off
    temperatures, airflow, bed depth, hours at each stage, ...)."""

    def __init__(self, hidden=48):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(10, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.net(x)).squeeze(-1)


def _kiln(gen, batch):
    w = torch.linspace(-0.6, 0.6, 10)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = torch.tanh(x @ w) + 0.4 * x[:, 1] * x[:, 2] + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


def _sharpness(model, loss_fn, batch, iters=15):
    """Largest Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    model.zero_grad(set_to_none=True)
    return lam


@scenario(
    family="malt_kiln_moisture_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=12,
    note="Plain SGD with the linear-scaling rule lr = 0.05 * batch / 32 and a 60-step linear "
    "warm-up. The rule was fed the global batch of the multi-node config (1024) rather than the "
    "64 this job uses, so the warm-up heads for lr 1.6: around step 12 the rate passes "
    "2/sharpness of the MSE loss (measured in the run by power iteration) and the loss, which "
    "had been falling, oscillates and blows up.",
)
def h154_malt_kiln_linear_scaling_batch(ctx: Context) -> None:
    gen = seeded(15404)
    model = KilnMoistureNet()
    target = 0.05 * 1024 / 32
    opt = torch.optim.SGD(model.parameters(), lr=target)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 60))
    probe = next(_kiln(torch.Generator().manual_seed(99), 256))
    lrs, ratio = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 2 == 0 and step < 60 and not ratio.get("done"):
            lam = _sharpness(model, F.mse_loss, probe)
            ratio[step] = lrs[-1] * lam
            if not math.isfinite(lam) or lrs[-1] * lam > 4:
                ratio["done"] = True

    _train(ctx, model, opt, _kiln(gen, 64), 150, F.mse_loss, sched=sched, before=before)
    ls = ctx.losses
    crossed = next((s for s, r in ratio.items() if s != "done" and r > 2.0), None)
    low = min(ls[:40])
    ctx.check("the loss fell first", low < 0.6 * ls[0])
    ctx.check("then blew up 100x", max(v if math.isfinite(v) else 1e30 for v in ls) > 100 * low)
    ctx.check(
        "lr x sharpness passed 2 during the warm-up, by step 16",
        crossed is not None and crossed <= 16,
    )
    ctx.check("it was below 2 at the start", ratio[0] < 2.0)


# -- silversmith planishing: a loss weight picked up as the init gain -----------------------------


class PlanishingDepthNet(nn.Module):
    """A deep tanh MLP that regresses the dent depth a planishing hammer blow leaves on sterling
    sheet from twelve readings (hammer face radius, blow energy, sheet gauge, anneal count...)."""

    def __init__(self, width=64, depth=12, gain=5 / 3):
        super().__init__()
        layers = [nn.Linear(12, width), nn.Tanh()]
        for _ in range(depth - 2):
            layers += [nn.Linear(width, width), nn.Tanh()]
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight, gain=gain)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _planishing(gen, batch):
    w = torch.linspace(0.2, -0.3, 12)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        yield x, torch.sin(x @ w) + 0.2 * x[:, 0].abs() + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="silversmith_planishing_depth_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("net.0", "net.2"),
    diverges=None,
    heldout=True,
    note="A twelve-layer tanh MLP. The config's 'gain: 4.0' (the loss weight of an auxiliary "
    "hammer-energy head) was also swallowed by the init helper's **kwargs, so every Linear is "
    "xavier_normal_ at gain 4 instead of tanh's 5/3: the net starts in the chaotic regime, "
    "where the backward signal grows layer after layer, and the first layer's gradient is "
    "about 60x the last layer's. SGD with momentum (lr 0.02) is thrown about by these "
    "gradients (norm above 1000 at the start) and the loss stays high and noisy.",
)
def h154_silversmith_loss_weight_as_init_gain(ctx: Context) -> None:
    gen = seeded(15405)
    model = PlanishingDepthNet(gain=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ratios = []

    def after_backward(step):
        first, last = model.net[0].weight.grad, model.net[-1].weight.grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _train(ctx, model, opt, _planishing(gen, 64), 150, F.mse_loss, after_backward=after_backward)
    ctx.check("first layer's gradient 50x the last's at the start", ratios[0] > 50)
    ctx.check("still 5x on average over the first 30 steps", _mean(ratios[:30]) > 5)
    ctx.check("gradient norm above 1000 at the start", ctx.grad_norms[0] > 1000)


# -- pewter casting: Adam's lr typed 5e-2 for 5e-4, dead ReLUs ------------------------------------


class PorosityNet(nn.Module):
    """Regresses the porosity (percent) of a pewter casting from ten readings (melt and mould
    temperatures, pour time, alloy tin fraction, sprue size, ...)."""

    def __init__(self, hidden=96):
        super().__init__()
        self.fc1 = nn.Linear(10, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.relu2(self.fc2(self.relu1(self.fc1(x))))).squeeze(-1)


def _pewter(gen, batch):
    w = torch.linspace(-1.0, 1.0, 10)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = 2.0 + torch.sin(x @ w) + 0.5 * x[:, 3] ** 2 + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="pewter_casting_porosity_mlp",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "relu2"),
    diverges=None,
    heldout=True,
    note="Adam's learning rate typed 5e-2 for 5e-4. The first large steps push most of the "
    "second hidden layer's ReLUs negative on every input; they never fire again (none of the "
    "units dead at step 30 comes back), so the network goes on fitting with the few units "
    "left.",
)
def h154_pewter_adam_lr_typo_dead_relus(ctx: Context) -> None:
    gen = seeded(15406)
    model = PorosityNet()
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    probe = next(_pewter(torch.Generator().manual_seed(77), 512))[0]

    def dead_units():
        with torch.no_grad():
            return (model.relu2(model.fc2(model.relu1(model.fc1(probe)))) <= 0).all(0)

    start = float(dead_units().float().mean())
    early = {}

    def after_backward(step):
        if step == 30:
            early["dead"] = dead_units()

    _train(ctx, model, opt, _pewter(gen, 64), 250, F.mse_loss, after_backward=after_backward)
    end = dead_units()
    ctx.check("most second-layer units are dead", float(end.float().mean()) > 0.6)
    ctx.check("few were dead at the start", start < 0.1)
    ctx.check(
        "the units dead at step 30 are still dead",
        bool(early["dead"].any()) and bool(end[early["dead"]].all()),
    )
    ctx.check("finite", _finite(ctx.losses))


# -- glockenspiel bars: a (weight_decay, lr) tuple unpacked in the wrong order -----------------


class BarToneNet(nn.Module):
    """Names how far a glockenspiel bar is off its note (five classes from very flat to very
    sharp) from 128 samples of its strike, with a 1-D conv net normalised by LayerNorm."""

    def __init__(self, length=128, channels=16, classes=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 7, padding=3),
            nn.LayerNorm([channels, length]),
            nn.GELU(),
            nn.Conv1d(channels, channels, 5, padding=2, stride=2),
            nn.LayerNorm([channels, length // 2]),
            nn.GELU(),
        )
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        return self.head(self.features(x[:, None]).mean(-1))


def _bars(gen, batch, length=128, classes=5):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = 0.12 + 0.012 * (y.float() - 2)[:, None]
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.exp(-t / 60) * torch.sin(6.28 * f * t + ph)
        yield x + 0.05 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="glockenspiel_bar_tuning_conv1d_layernorm",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("features", "features.0", "features.1", "features.3", "features.4"),
    diverges=None,
    heldout=True,
    note="A 1-D conv net with LayerNorm, trained with Adagrad in two param groups. The "
    "feature extractor's settings come from a helper returning (weight_decay, lr) = (0.0, "
    "0.05) that the training script unpacks as lr, weight_decay: the conv and LayerNorm "
    "parameters train at lr 0.0 (with decay 0.05, which Adagrad never applies since it moves "
    "nothing at lr 0) while the head learns at 0.05 on frozen random features.",
)
def h154_glockenspiel_lr_wd_swapped(ctx: Context) -> None:
    gen = seeded(15407)
    model = BarToneNet()

    def backbone_settings():
        return 0.0, 0.05  # (weight_decay, lr)

    lr, wd = backbone_settings()  # the bug: unpacked the other way round
    opt = torch.optim.Adagrad(
        [
            {"params": model.features.parameters(), "lr": lr, "weight_decay": wd},
            {"params": model.head.parameters(), "lr": 0.05},
        ]
    )
    w0 = [p.detach().clone() for p in model.features.parameters()]
    h0 = model.head.weight.detach().clone()
    _train(ctx, model, opt, _bars(gen, 64), 200, F.cross_entropy, classifier=True)
    moved = max(
        float((p.detach() - q).norm() / q.norm())
        for p, q in zip(model.features.parameters(), w0, strict=True)
    )
    ctx.check("the feature extractor did not move", moved < 1e-7)
    ctx.check("the head did", float((model.head.weight.detach() - h0).norm() / h0.norm()) > 0.1)
    ctx.check("finite", _finite(ctx.losses))


# -- watchmaker: one shard of beat errors in microseconds ---------------------------------------


class TimegrapherGRU(nn.Module):
    """Reads a variable-length run of timegrapher ticks (interval, amplitude, lift angle, dial
    position) through a GRU over packed sequences and regresses the movement's beat error in
    milliseconds."""

    def __init__(self, features=4, hidden=32):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, xs):
        x, lengths = xs
        _, h = self.gru(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        return self.head(h[-1]).squeeze(-1)


def _ticks(gen, batch, features=4, longest=40):
    while True:
        lengths = torch.randint(10, longest + 1, (batch,), generator=gen)
        err = 0.2 + 0.8 * torch.rand(batch, generator=gen)
        x = 0.3 * torch.randn(batch, longest, features, generator=gen)
        alt = torch.where(torch.arange(longest) % 2 == 0, 1.0, -1.0)
        x[:, :, 0] += err[:, None] * alt
        x = x * (torch.arange(longest)[None, :] < lengths[:, None])[:, :, None]
        yield (x, lengths), err


@scenario(
    family="watchmaker_timegrapher_packed_gru",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A GRU over packed variable-length tick sequences regressing beat error in ms with "
    "MSE, SGD with momentum (lr 0.05) and clip_grad_norm_(1.0). One shard came from a workshop "
    "whose timegrapher exports beat error in microseconds: the batch at step 120 has targets "
    "1000x too large, so its loss is millions of times the others' and its gradient "
    "thousands of times larger; clipping bounds the update and the run goes on.",
)
def h154_watchmaker_microsecond_shard(ctx: Context) -> None:
    gen = seeded(15408)
    model = TimegrapherGRU()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 120 else (x, y)

    _train(ctx, model, opt, _ticks(gen, 32), 250, F.mse_loss, alter=alter, clip_norm=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("the shard's loss is 1e5x the median", ls[120] > 1e5 * _median(ls[100:120]))
    ctx.check("its gradient is 1000x the median", gs[120] > 1000 * _median(gs[100:120]))
    ctx.check("the run went on", _mean(ls[125:140]) < 2 * _mean(ls[105:120]))
    ctx.check("the loss fell before the shard", _mean(ls[110:120]) < 0.5 * _mean(ls[:10]))
    ctx.check("finite", _finite(ls))


# -- rowing ergometer: a static loss scale not undone on one step -------------------------------


class ErgSplitNet(nn.Module):
    """Regresses a rower's 500 m split (seconds, standardised) from 16 stroke-curve features
    (drive length, peak force, ratio, drag factor, ...)."""

    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(16, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.net(x)).squeeze(-1)


def _strokes(gen, batch):
    w = torch.randn(16, generator=torch.Generator().manual_seed(3)) / 4
    while True:
        x = torch.randn(batch, 16, generator=gen)
        yield (
            x,
            torch.tanh(x @ w) + 0.3 * x[:, 5] * x[:, 6] + 0.1 * torch.randn(batch, generator=gen),
        )


@scenario(
    family="rowing_ergometer_split_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="The training script kept the static loss scaling of its fp16 ancestor in fp32: the "
    "loss is multiplied by 1024 before backward and the gradients divided by 1024 before "
    "clip_grad_value_(1.0) and the ASGD step (lr 0.02). The step that also writes a gradient "
    "histogram (step 90) returns from the unscale helper before dividing, so that one step's "
    "gradient is 1024x too large; clipping by value bounds each element and the run recovers.",
)
def h154_rowing_erg_static_scale_not_undone(ctx: Context) -> None:
    gen = seeded(15409)
    model = ErgSplitNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)

    def unscale(step):
        if step == 90:  # the histogram-logging path returns early
            return
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(1024.0)

    _train(
        ctx,
        model,
        opt,
        _strokes(gen, 64),
        200,
        F.mse_loss,
        backward_loss=lambda s, loss: loss * 1024.0,
        after_backward=unscale,
        clip_value=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("the gradient spiked 300x at step 90", gs[90] > 300 * _median(gs[70:90]))
    ctx.check("the batch's loss was ordinary", ls[90] < 2 * _mean(ls[80:90]))
    ctx.check("the run recovered", _mean(ls[-10:]) < 1.5 * _mean(ls[80:90]))
    ctx.check("finite", _finite(ls))


# -- cymbal crashes: a hand instance norm without eps meets digital silence ----------------------


class EnvelopeNorm(nn.Module):
    """Standardises each envelope over time: (x - mean) / std, written by hand without eps."""

    def forward(self, x):
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)


class CrashSustainNet(nn.Module):
    """Regresses a crash cymbal's sustain (seconds, standardised) from the 64-frame loudness
    envelope of its strike, read through a small 1-D conv net."""

    def __init__(self, frames=64, channels=12):
        super().__init__()
        self.norm = EnvelopeNorm()
        self.conv = nn.Conv1d(1, channels, 5, padding=2)
        self.head = nn.Linear(channels * 2, 1)

    def forward(self, x):
        h = F.relu(self.conv(self.norm(x)[:, None]))
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], 1)).squeeze(-1)


def _crashes(gen, batch, frames=64):
    t = torch.arange(frames).float()
    while True:
        tau = 8 + 30 * torch.rand(batch, 1, generator=gen)
        x = torch.exp(-t / tau) + 0.02 * torch.randn(batch, frames, generator=gen)
        yield x, (tau.squeeze(1) - 23) / 9


@scenario(
    family="cymbal_crash_sustain_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("norm",),
    diverges=70,
    heldout=True,
    onset=70,
    note="The envelope is standardised per recording by a hand-written (x - mean) / std with no "
    "eps. The batch at step 70 holds a take where the recorder's noise gate stayed closed: an "
    "envelope of exact zeros, whose std is 0, so the norm computes 0/0 and the loss is NaN "
    "(Adam, lr 3e-3).",
)
def h154_cymbal_norm_without_eps(ctx: Context) -> None:
    gen = seeded(15410)
    model = CrashSustainNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    produced = []

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[5] = 0.0
            with torch.no_grad():
                produced.append(bool(torch.isnan(model.norm(x)).any()))
        return x, y

    _train(ctx, model, opt, _crashes(gen, 32), 150, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("the norm produced NaN at step 70", bool(produced) and produced[0])
    ctx.check("the loss is NaN at step 70", len(ls) == 71 and math.isnan(ls[70]))
    ctx.check("finite before", _finite(ls[:70]))
    ctx.check("the loss fell before", _mean(ls[60:70]) < 0.7 * _mean(ls[:10]))


# -- timpani rolls: sum-pooling written as a matmul under fp16 autocast --------------------------


class FrameSumPool(nn.Module):
    """Pools frames with a (batch, 1, frames) @ (batch, frames, hidden) matmul: a sum, the
    division by the number of frames left for later (in float32). Records its largest output in
    float32 arithmetic."""

    def __init__(self):
        super().__init__()
        self.last_true_max = 0.0

    def forward(self, h):
        ones = torch.ones(h.shape[0], 1, h.shape[1], dtype=h.dtype)
        with torch.no_grad():
            self.last_true_max = float(h.float().sum(1).abs().amax())
        return torch.bmm(ones, h).squeeze(1)


class RollLoudnessNet(nn.Module):
    """Regresses the loudness of a timpani roll (phon, standardised) from frames of 12 band
    levels in dB."""

    def __init__(self, bands=12, hidden=32):
        super().__init__()
        self.frame = nn.Linear(bands, hidden)
        self.pool = FrameSumPool()
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.relu(self.frame(x))
        return self.out(self.pool(h).float() / x.shape[1]).squeeze(-1)


def _rolls(gen, batch, frames, bands=12):
    level = 40 + 50 * torch.rand(batch, 1, 1, generator=gen)
    tilt = torch.linspace(1.0, 0.6, bands)
    x = level * tilt + 3 * torch.randn(batch, frames, bands, generator=gen)
    return x, (level.flatten() - 65) / 15


@scenario(
    family="timpani_roll_loudness_pooler",
    optimizer="SGD momentum",
    cause="amp_overflow",
    where=("pool",),
    diverges=80,
    heldout=True,
    onset=80,
    note="Under fp16 autocast with a GradScaler, per-frame features of unnormalised dB band "
    "levels go through a Linear and ReLU and are pooled by a sum written as a bmm with a row of "
    "ones, the division by the frame count done afterwards in float32. A length curriculum "
    "trains on 256-frame excerpts, then on whole 2048-frame rolls from step 80: the fp16 sum "
    "over 2048 frames passes 65504 and overflows to inf: the loss is inf on almost every step "
    "from then on and the scaler skips them, halving its scale each time (SGD with momentum, lr 1e-5).",
)
def h154_timpani_fp16_sum_pool(ctx: Context) -> None:
    gen = seeded(15411)
    model = RollLoudnessNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    true_max = []
    ctx.attach(model, opt, scaler=scaler)
    for step in range(150):
        x, y = _rolls(gen, 16, 256 if step < 80 else 2048)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        true_max.append(model.pool.last_true_max)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss.detach())):
            break
    ls = ctx.losses
    bad = [not math.isfinite(v) for v in ls[80:]]
    ctx.check("the loss is non-finite at step 80 and most steps after", bad[0] and _mean(bad) > 0.8)
    ctx.check("the scaler kept cutting its scale", ctx.scales[-1] < 1e-6 * ctx.scales[79])
    ctx.check("finite before, and fell", _finite(ls[:80]) and _mean(ls[70:80]) < _mean(ls[:10]))
    ctx.check("the float32 sum passed fp16's max at step 80", true_max[80] > 65504)
    ctx.check("it stayed below before", max(true_max[:80]) < 65504)


# -- indigo vat: an L2 'log prior' subtracted instead of added -----------------------------------


class VatReductionNet(nn.Module):
    """Regresses an indigo vat's redox potential (standardised) from eight readings (pH, bran
    added, temperature, days since feeding, ...)."""

    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.net(x)).squeeze(-1)


WD = 1e-1


def _vats(gen, batch):
    w = torch.tensor([0.9, -0.4, 0.3, -0.6, 0.2, 0.5, -0.1, 0.3])
    while True:
        x = torch.randn(batch, 8, generator=gen)
        yield x, torch.tanh(x @ w) + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="indigo_vat_reduction_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="The objective was written as a MAP estimate: data loss minus a Gaussian log prior. "
    "The log prior was coded as +wd * sum(w^2) instead of -wd * sum(w^2), so the "
    "'regulariser' rewards large weights: with RAdam (lr 3e-3, wd 0.1) the loss first falls, "
    "then climbs steadily as the weights grow.",
)
def h154_indigo_vat_log_prior_sign(ctx: Context) -> None:
    gen = seeded(15412)
    model = VatReductionNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    wnorm = []

    def objective(step, loss):
        log_prior = WD * sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)
        wnorm.append(float(log_prior.detach()) / WD)
        return loss - log_prior

    _train(ctx, model, opt, _vats(gen, 64), 300, F.mse_loss, backward_loss=objective)
    ls = ctx.losses
    low = min(ls)
    ctx.check("the loss fell first", low < 0.5 * ls[0])
    ctx.check("then climbed 2.5x from its low", _mean(ls[-10:]) > 2.5 * low)
    ctx.check("and is still climbing", _mean(ls[-20:]) > 1.2 * _mean(ls[-80:-60]))
    ctx.check("the weights grew 4x", wnorm[-1] > 4 * wnorm[0])
    ctx.check("finite", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


class TremoloBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, h, pad):
        a = self.ln1(h)
        h = h + self.attn(a, a, a, key_padding_mask=pad, need_weights=False)[0]
        return h + self.ff(self.ln2(h))


class TremoloNet(nn.Module):
    """Names a mandolin tremolo's style (even, accelerating, decaying, duo-style) from a
    variable-length run of plectrum-stroke intervals binned to 24 codes."""

    def __init__(self, codes=24, dim=32, heads=4, longest=24, styles=4, layers=2):
        super().__init__()
        self.code = nn.Embedding(codes + 1, dim, padding_idx=codes)
        self.pos = nn.Embedding(longest, dim)
        self.blocks = nn.ModuleList(TremoloBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, styles)

    def forward(self, xs):
        x, pad = xs
        h = self.code(x) + self.pos(torch.arange(x.shape[1]))
        for block in self.blocks:
            h = block(h, pad)
        keep = (~pad).float()[:, :, None]
        return self.head((self.ln_f(h) * keep).sum(1) / keep.sum(1))


def _tremolos(gen, batch, codes=24, longest=24):
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        lengths = torch.randint(8, longest + 1, (batch,), generator=gen)
        t = torch.arange(longest).float()[None] / longest
        base = 12 + torch.zeros(batch, 1)
        slope = torch.tensor([0.0, -8.0, 8.0, 0.0])[y][:, None]
        alt = torch.where(y[:, None] == 3, 4.0 * (torch.arange(longest) % 2 - 0.5), 0.0)
        v = base + slope * t + alt + 2.0 * torch.randn(batch, longest, generator=gen)
        x = v.round().clamp(0, codes - 1).long()
        pad = torch.arange(longest)[None] >= lengths[:, None]
        yield (x.masked_fill(pad, codes), pad), y


@scenario(
    family="mandolin_tremolo_mha_transformer",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A two-block transformer over padded variable-length stroke sequences, "
    "nn.MultiheadAttention with a key padding mask and masked mean pooling; AdamW param groups "
    "(decay 0.05 on matrices, none on biases, norms and embeddings), 20-step warm-up then "
    "cosine decay, clip_grad_norm_(1.0), label smoothing 0.1.",
)
def h154_mandolin_tremolo_control(ctx: Context) -> None:
    gen = seeded(15413)
    model = TremoloNet()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "code" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "code" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 200

    def lam(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(-1) == y).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _tremolos(gen, 48),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip_norm=1.0,
        watch=watch,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("accuracy above 0.8 at the end", _mean(acc[-20:]) > 0.8)


class BreathNet(nn.Module):
    """Tags a shakuhachi phrase's breath techniques (muraiki, meri, komibuki, tamane: several at
    once) from 96 frames of 4 features with a 1-D conv net normalised by GroupNorm."""

    def __init__(self, features=4, channels=24, techniques=4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(features, channels, 5, padding=2),
            nn.GroupNorm(4, channels),
            nn.GELU(),
            nn.Conv1d(channels, channels, 5, padding=2, stride=2),
            nn.GroupNorm(4, channels),
            nn.GELU(),
            nn.Conv1d(channels, channels, 3, padding=1),
            nn.GroupNorm(4, channels),
            nn.GELU(),
        )
        self.head = nn.Linear(channels, techniques)

    def forward(self, x):
        return self.head(self.features(x).mean(-1))


def _breaths(gen, batch, features=4, frames=96):
    t = torch.arange(frames).float()
    while True:
        y = (torch.rand(batch, 4, generator=gen) < 0.4).float()
        x = 0.5 * torch.randn(batch, features, frames, generator=gen)
        x[:, 0] += y[:, 0:1] * torch.sin(t / 2)  # muraiki: breath noise bursts
        x[:, 1] -= 1.0 * y[:, 1:2]  # meri: pitch bent down
        x[:, 2] += y[:, 2:3] * torch.sin(t * 1.3)  # komibuki: pulsed breath
        x[:, 3] += y[:, 3:4] * torch.sign(torch.sin(t / 5))  # tamane: flutter
        yield x, y


@scenario(
    family="shakuhachi_breath_conv1d_groupnorm",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A 1-D conv net with GroupNorm tagging several techniques at once (BCE with logits), "
    "SGD with Nesterov momentum and weight decay 5e-4 under a OneCycleLR schedule (max lr "
    "0.1).",
)
def h154_shakuhachi_breath_control(ctx: Context) -> None:
    gen = seeded(15414)
    model = BreathNet()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        _breaths(gen, 32),
        steps,
        F.binary_cross_entropy_with_logits,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))


class SeicheGRU(nn.Module):
    """Reads a variable-length record of harbour water levels through a GRU over packed
    sequences and forecasts the next level as a Gaussian (mean and variance)."""

    def __init__(self, hidden=32):
        super().__init__()
        self.gru = nn.GRU(2, hidden, batch_first=True)
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)

    def forward(self, xs):
        x, lengths = xs
        _, h = self.gru(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        h = h[-1]
        return torch.cat([self.mean(h), F.softplus(self.var(h)) + 1e-3], -1)


def _seiches(gen, batch, longest=48):
    t = torch.arange(longest + 1).float()
    while True:
        lengths = torch.randint(16, longest + 1, (batch,), generator=gen)
        period = 6 + 10 * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        noise = 0.05 + 0.2 * torch.rand(batch, 1, generator=gen)
        lv = amp * torch.sin(6.28 * t / period) + noise * torch.randn(
            batch, longest + 1, generator=gen
        )
        target = lv.gather(1, lengths[:, None]).squeeze(1)
        x = torch.stack([lv[:, :-1], noise.expand(-1, longest)], -1)
        x = x * (torch.arange(longest)[None] < lengths[:, None])[:, :, None]
        yield (x, lengths), target


def _gaussian_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


@scenario(
    family="seiche_oscillation_packed_gru",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A GRU over packed variable-length water-level records with a Gaussian NLL head "
    "(softplus variance with a floor), RMSprop (lr 3e-3) with clip_grad_value_(0.5) and a "
    "StepLR halving every 80 steps.",
)
def h154_seiche_gru_control(ctx: Context) -> None:
    gen = seeded(15415)
    model = SeicheGRU()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 80, gamma=0.5)
    _train(
        ctx,
        model,
        opt,
        _seiches(gen, 32),
        200,
        _gaussian_nll,
        sched=sched,
        clip_value=0.5,
    )
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("loss fell by 0.5 nats", _mean(ls[-20:]) < _mean(ls[:10]) - 0.5)


class DewBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h):
        b, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return h + self.ff(self.ln2(h))


class DewOnsetNet(nn.Module):
    """Forecasts the hour after dusk at which dew forms on a meadow from 24 half-hourly readings
    (air and grass temperature, humidity, wind, cloud), a transformer over the readings."""

    def __init__(self, features=5, dim=32, heads=4, length=24, layers=2):
        super().__init__()
        self.inp = nn.Linear(features, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.blocks = nn.ModuleList(DewBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.inp(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h).mean(1)).squeeze(-1)


def _dew(gen, batch, length=24):
    t = torch.arange(length).float()[None]
    while True:
        spread = 2 + 6 * torch.rand(batch, 1, generator=gen)
        cool = 0.2 + 0.4 * torch.rand(batch, 1, generator=gen)
        wind = torch.rand(batch, 1, generator=gen)
        air = -cool * t / 4
        grass = air - 0.5 * (1 - wind)
        x = torch.stack(
            [
                air,
                grass,
                (spread - cool * t / 4).expand(-1, length) / 4,
                wind.expand(-1, length),
                torch.rand(batch, length, generator=gen),
            ],
            -1,
        )
        x = x + 0.05 * torch.randn(x.shape, generator=gen)
        onset = spread / cool / (1 + 0.5 * (1 - wind))
        yield x, (onset.squeeze(1) - 12) / 6


@scenario(
    family="dew_formation_sdpa_transformer",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A two-block transformer through scaled_dot_product_attention regressing the dew onset "
    "with a Huber loss, under fp16 autocast with a GradScaler, two micro-batches accumulated "
    "per step, Adamax (lr 2e-3) and ReduceLROnPlateau.",
)
def h154_dew_formation_control(ctx: Context) -> None:
    gen = seeded(15416)
    model = DewOnsetNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _dew(gen, 32),
        150,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))
