"""Held-out set 166 (``h166_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: an FT-Transformer-style tabular model (per-feature numeric
embeddings, a CLS token, a hand softmax over q.k), a sequence transformer through
``nn.MultiheadAttention``, a masked-autoencoder over patches through
``scaled_dot_product_attention`` (bf16 autocast), a Siamese change-detection CNN over image
pairs, a conditional VAE with KL annealing, a multi-label classifier with
``BCEWithLogitsLoss(pos_weight=...)``, a quantile (pinball-loss) forecaster and MLP / 1-D conv
regressors and classifiers.

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
    return s[len(s) // 2]


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


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
    clip=None,
    sched=None,
    scaler=None,
    amp=None,
    accumulate=1,
    watch=None,
    scale_loss=None,
    after=None,
    stop_on_nan=True,
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``scale_loss(step,
    loss)`` changes the loss that is back-propagated, ``after(step)`` runs after the update.
    ``amp`` is the autocast dtype (None: float32)."""
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
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            back = loss if scale_loss is None else scale_loss(step, loss)
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
            shown += float(loss.detach().float())
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
        if after is not None:
            after(step)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if stop_on_nan and math.isnan(shown):
            break


def _snapshot(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


# -- whisky casks: an FT-Transformer whose attention scale lost its minus sign ------------------


class HandAttention(nn.Module):
    """Multi-head self-attention with a hand softmax over q.k scores; records the largest
    |q.k| logit (times the scale) it used."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.hd = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        # the port wrote head_dim ** 0.5 for head_dim ** -0.5
        self.scale = self.hd**0.5
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            f(x).reshape(b, t, self.heads, self.hd).transpose(1, 2)
            for f in (self.q, self.k, self.v)
        )
        scores = (q @ k.transpose(-1, -2)) * self.scale
        self.last_max = float(scores.detach().abs().amax())
        scores = scores - scores.amax(-1, keepdim=True)
        w = scores.exp()
        w = w / w.sum(-1, keepdim=True)
        return self.out((w @ v).transpose(1, 2).reshape(b, t, d))


class FTBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = HandAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class CaskFTTransformer(nn.Module):
    """Grades a cask (four grades) from eight numbers: age, ABV, angel's share, char level,
    warehouse height, temperature swing, humidity, fill number. Each number gets its own
    embedding (x_f * w_f + b_f), a CLS token is prepended, two pre-LN blocks follow."""

    def __init__(self, features=8, dim=32, heads=4, blocks=2, grades=4):
        super().__init__()
        self.num_w = nn.Parameter(torch.randn(features, dim) / math.sqrt(dim))
        self.num_b = nn.Parameter(torch.zeros(features, dim))
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(FTBlock(dim, heads) for _ in range(blocks))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, grades)

    def forward(self, x):
        tokens = x[..., None] * self.num_w + self.num_b
        h = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h[:, 0]))


def _casks(gen, batch):
    while True:
        x = torch.randn(batch, 8, generator=gen)
        score = x[:, 0] + 0.7 * x[:, 3] * x[:, 1] - 0.5 * x[:, 2] + 0.4 * torch.sin(2 * x[:, 5])
        y = torch.bucketize(score, torch.tensor([-0.8, 0.0, 0.8]))
        yield x, y


@scenario(
    family="whisky_cask_grade_ft_transformer",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="An FT-Transformer (per-feature numeric embeddings, CLS token, hand softmax over q.k). "
    "The attention scale was written head_dim ** 0.5 instead of head_dim ** -0.5, so the q.k "
    "scores are multiplied by sqrt(8) rather than divided; with Adam at lr 1e-2 and no weight "
    "decay the logits the softmax sees grow more than 10x, past 100.",
)
def h166_whisky_cask_scale_sign(ctx: Context) -> None:
    gen = seeded(16601)
    model = CaskFTTransformer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = []

    def watch(s, o, x, y):
        seen.append(max(b.attn.last_max for b in model.blocks))

    _train(ctx, model, opt, _casks(gen, 64), 300, F.cross_entropy, classifier=True, watch=watch)
    ctx.check("attention logits grew 10x", _mean(seen[-5:]) > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 100", _mean(seen[-5:]) > 100)
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- tonewood grading: a multi-class hinge loss that lost its clamp ------------------------------


class TapToneGrader(nn.Module):
    """Grades a spruce or maple billet (master, AAA, AA, A, reject) from a 16-bin tap-tone
    spectrum."""

    def __init__(self, bins=16, hidden=64, grades=5):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(bins, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, grades)

    def forward(self, x):
        return self.head(self.body(x))


def _tap_tones(gen, batch, bins=16, grades=5):
    centres = torch.randn(grades, bins, generator=torch.Generator().manual_seed(166))
    while True:
        y = torch.randint(0, grades, (batch,), generator=gen)
        yield centres[y] + 1.5 * torch.randn(batch, bins, generator=gen), y


def _hinge_without_clamp(logits, y):
    """Crammer-Singer hinge: relu(1 - (s_y - max_other)). The relu was dropped when the loss was
    'vectorised', so the loss is linear in the margin and has no floor."""
    target = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (1.0 - (target - other)).mean()


@scenario(
    family="tonewood_grade_hinge_classifier",
    optimizer="SGD Nesterov",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A multi-class (Crammer-Singer) hinge loss re-written in vectorised form lost its "
    "relu: the loss 1 - (s_y - max_other) keeps rewarding a larger margin without limit, so "
    "with SGD Nesterov (lr 2e-3, momentum 0.9) the head's logits grow without bound (the "
    "logit norm grows more than 20x and is still growing at the end) while the loss runs "
    "far negative.",
)
def h166_tonewood_hinge_no_clamp(ctx: Context) -> None:
    gen = seeded(16602)
    model = TapToneGrader()
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9, nesterov=True)
    norms = []
    _train(
        ctx,
        model,
        opt,
        _tap_tones(gen, 64),
        200,
        _hinge_without_clamp,
        classifier=True,
        watch=lambda s, o, x, y: norms.append(float(o.detach().norm(dim=-1).mean())),
    )
    ctx.check("logit norm grew 20x", norms[-1] > 20 * _mean(norms[:5]))
    ctx.check("logit norm still growing", norms[-1] > 1.3 * norms[-50])
    ctx.check("the loss ran below -10", ctx.losses[-1] < -10)


# -- oud maqam phrases: a cosine head with CLIP's logit-scale ceiling as its fixed scale ---------


class MaqamBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class MaqamTransformer(nn.Module):
    """Names the maqam (rast, bayati, hijaz, saba) of a 16-note oud phrase given as 24
    quarter-tone pitch classes."""

    def __init__(self, pitches=24, dim=32, heads=4, length=16, maqams=4, scale=100.0):
        super().__init__()
        self.pitch = nn.Embedding(pitches, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.blocks = nn.ModuleList(MaqamBlock(dim, heads) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = CosineHead(dim, maqams, scale)

    def forward(self, x):
        h = self.pitch(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h).mean(1))


def _maqam_phrases(gen, batch, pitches=24, length=16, maqams=4):
    """Each maqam draws its notes from its own weighting of the 24 pitch classes."""
    weights = torch.rand(maqams, pitches, generator=torch.Generator().manual_seed(1660)) ** 6
    while True:
        y = torch.randint(0, maqams, (batch,), generator=gen)
        x = torch.multinomial(weights[y], length, replacement=True, generator=gen)
        yield x, y


@scenario(
    family="oud_maqam_phrase_transformer",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A two-block transformer (nn.MultiheadAttention) with a cosine head. The config's "
    "'logit_scale: 100' was taken from a CLIP checkpoint (exp of its learnt scale at the clamp) "
    "and used as the fixed scale of a four-class head, where about 10 is usual; as RAdam (lr "
    "1e-3) separates the maqams, the float32 softmax rounds most targets' probabilities to "
    "exactly 1.0.",
)
def h166_oud_maqam_clip_scale(ctx: Context) -> None:
    gen = seeded(16603)
    model = MaqamTransformer(scale=100.0)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    collapsed = []
    _train(
        ctx,
        model,
        opt,
        _maqam_phrases(gen, 64),
        250,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: collapsed.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("half the targets' probabilities are exactly 1.0", _mean(collapsed[-20:]) > 0.5)
    ctx.check("few were at the start", _mean(collapsed[:5]) < 0.25)


# -- kiteboarding: an LR-finder sweep left running into training --------------------------------


class JumpHeightNet(nn.Module):
    """Regresses a kiteboard jump's height from ten readings (wind speed, gust factor, kite
    size, line length, board speed, edge angle, rider mass, ...)."""

    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(10, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.net(x)).squeeze(-1)


def _jumps(gen, batch):
    w = torch.linspace(-1, 1, 10)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = (
            torch.tanh(x @ w / 2)
            + 0.4 * x[:, 0] * x[:, 1]
            + 0.05 * torch.randn(batch, generator=gen)
        )
        yield x, y


@scenario(
    family="kiteboard_jump_height_regressor",
    optimizer="SGD momentum",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=100,
    note="An LR-finder sweep (ExponentialLR, gamma 1.06 a step from lr 1e-4) was meant to run "
    "for 100 steps and then hand over to the chosen lr, but the hand-over was commented out "
    "while debugging: the sweep keeps multiplying the lr past step 100, SGD (momentum 0.9) "
    "passes the 2/sharpness stability limit of the MSE loss and the loss blows up.",
)
def h166_kiteboard_lr_finder_left_running(ctx: Context) -> None:
    gen = seeded(16604)
    model = JumpHeightNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.06)
    lrs = []
    _train(
        ctx,
        model,
        opt,
        _jumps(gen, 64),
        250,
        F.mse_loss,
        sched=sched,
        before=lambda s: lrs.append(opt.param_groups[0]["lr"]),
    )
    ls = ctx.losses
    low = min(ls[:100])
    bad = _first_bad(ls)
    ctx.check("the loss fell during the sweep", low < 0.5 * ls[0])
    ctx.check("then blew up 100x", max(v if math.isfinite(v) else 1e30 for v in ls) > 100 * low)
    blow = next(i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low)
    ctx.check("after the sweep should have stopped", blow > 100)
    ctx.check("lr at the blow-up 10x the lr at step 100", lrs[blow] > 10 * lrs[100])
    ctx.check("the run broke (non-finite or 1e3x)", bad is not None or max(ls) > 1e3 * low)


# -- petroglyph weathering: a Siamese change detector with a fan-in that forgot the kernel -------


class PetroglyphSiamese(nn.Module):
    """Two 12x12 photographs of the same rock panel, years apart, go through one shared conv
    encoder; the absolute difference of their features says whether the carving weathered."""

    def __init__(self, width=8, depth=10):
        super().__init__()
        layers = []
        c = 1
        for _ in range(depth):
            conv = nn.Conv2d(c, width, 3, padding=1)
            # hand-written He init: fan_in taken as in_channels, the 3x3 kernel area forgotten
            nn.init.normal_(conv.weight, std=math.sqrt(2.0 / c))
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU()]
            c = width
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        self.probe = None  # a list: the back-propagated gradient norm at each conv's output

    def embed(self, img):
        h = img
        k = 0
        for layer in self.encoder:
            h = layer(h)
            if isinstance(layer, nn.Conv2d):
                if self.probe is not None and h.requires_grad:
                    h.register_hook(lambda g, k=k: self.probe.append((k, float(g.norm()))))
                k += 1
        return h.mean((2, 3))

    def forward(self, pair):
        a, b = pair[:, :1], pair[:, 1:]
        return self.head((self.embed(a) - self.embed(b)).abs()).squeeze(-1)


def _panels(gen, batch, size=12):
    while True:
        base = torch.rand(batch, 1, size // 3, size // 3, generator=gen)
        base = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
        later = base + 0.05 * torch.randn(base.shape, generator=gen)
        changed = torch.rand(batch, generator=gen) < 0.5
        r = torch.randint(0, size - 4, (batch, 2), generator=gen)
        for i in torch.nonzero(changed).flatten().tolist():
            later[i, 0, r[i, 0] : r[i, 0] + 4, r[i, 1] : r[i, 1] + 4] -= 0.6
        yield torch.cat([base, later], 1), changed.float()


@scenario(
    family="petroglyph_weathering_siamese_cnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("encoder.0", "encoder"),
    diverges="auto",
    heldout=True,
    note="A Siamese change-detection CNN (ten 3x3 convs, no normalisation, shared between the "
    "two images). Its hand-written He init used fan_in = in_channels and forgot the 3x3 kernel "
    "area, so every conv is 3x too large: the back-propagated gradient grows about 3x a layer "
    "(over 1000x from the last conv to the first), the gradient norm grows step after step "
    "under plain SGD (lr 0.01, BCE with logits) and the loss goes non-finite within a few "
    "steps.",
)
def h166_petroglyph_fan_in_kernel(ctx: Context) -> None:
    gen = seeded(16605)
    model = PetroglyphSiamese()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.probe = []
    first = {}

    def after(step):
        if step == 0:
            # per conv (index along depth), summed over the two branches
            for k, g in model.probe:
                first[k] = first.get(k, 0.0) + g
            model.probe = None

    _train(ctx, model, opt, _panels(gen, 32), 150, F.binary_cross_entropy_with_logits, after=after)
    ls, gs = ctx.losses, ctx.grad_norms
    depth_grads = [first[k] for k in sorted(first)]
    ctx.check(
        "back-propagated gradient 1000x larger at the first conv than at the last",
        depth_grads[0] > 1000 * depth_grads[-1],
    )
    ctx.check(
        "gradient norm grew 1000x", max(g if math.isfinite(g) else 1e30 for g in gs) > 1e3 * gs[0]
    )
    ctx.check("the loss went non-finite within 20 steps", (_first_bad(ls) or 10**9) < 20)


# -- paving setts: raw kerbside units straight into a ReLU MLP, dead ReLUs ----------------------


class SettWearNet(nn.Module):
    """Regresses the wear (mm) of a granite sett from six readings: vehicles a day, share of
    heavy goods vehicles, sett width (mm), joint width (mm), years laid, gradient (%)."""

    def __init__(self, hidden=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.body(x)).squeeze(-1)


_SETT_MEAN = torch.tensor([8000.0, 12.0, 100.0, 10.0, 40.0, 4.0])
_SETT_STD = torch.tensor([4000.0, 5.0, 15.0, 3.0, 20.0, 2.0])


def _setts(gen, batch, scaled):
    while True:
        z = torch.randn(batch, 6, generator=gen)
        y = 0.6 * z[:, 0] + 0.4 * z[:, 1] * z[:, 4] - 0.3 * z[:, 2] + 0.2 * z[:, 5] ** 2
        y = y + 0.1 * torch.randn(batch, generator=gen)
        x = z if scaled else _SETT_MEAN + _SETT_STD * z
        yield x, y


@scenario(
    family="paving_sett_wear_mlp",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("body.2", "body.3"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP regressor. The StandardScaler was fit but its transform never applied, so "
    "the readings arrive in raw units (thousands of vehicles a day, millimetres, years): the "
    "first layer's outputs are in the thousands, and with Adamax at lr 5e-2 (the rate tuned "
    "on scaled features) the early updates push most of the second hidden layer's ReLUs "
    "negative on every input, where they never come back; the loss stalls far above what the "
    "network reaches on scaled inputs.",
)
def h166_paving_setts_raw_units(ctx: Context) -> None:
    gen = seeded(16606)
    model = SettWearNet()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-2)
    dead = []

    def watch(s, o, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.body[2](model.body[1](model.body[0](x)))))

    _train(ctx, model, opt, _setts(gen, 64, scaled=False), 250, F.mse_loss, watch=watch)
    ctx.check("under half the units dead at the start", dead[0] < 0.5)
    ctx.check("over 85% of the second layer's ReLUs dead at the end", _mean(dead[-10:]) > 0.85)
    ctx.check("the loss stalled above 0.3", _mean(ctx.losses[-20:]) > 0.3)


# -- bandsaw kerf: the body's param group is never unfrozen -------------------------------------


class KerfDriftNet(nn.Module):
    """Regresses how far a bandsaw blade drifts from the line (mm) from blade tension, tooth
    pitch, feed rate, log moisture, wood density, blade temperature, set width and speed."""

    def __init__(self, hidden=48):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(-1)


def _kerf(gen, batch):
    w = torch.tensor([0.9, -0.6, 0.5, 0.3, -0.4, 0.2, 0.7, -0.3])
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = torch.sin(x @ w) + 0.5 * x[:, 0] * x[:, 2] + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="bandsaw_kerf_drift_regressor",
    optimizer="ASGD",
    cause="update_ratio_out_of_range",
    where=("body", "body.0", "body.2"),
    diverges=None,
    heldout=True,
    onset=40,
    note="Two-stage fine-tuning: for the first 40 steps only the head trains (the body's param "
    "group at lr 0), then the body is to be unfrozen with opt.param_groups[0]['lr'] = lr. The "
    "groups had been built as [head, body], so the line sets the head's lr again and the body "
    "stays at lr 0 for the rest of the run: its weights never move and the loss settles at "
    "what the head alone can reach (ASGD, lr 0.05, MSE).",
)
def h166_bandsaw_kerf_group_order(ctx: Context) -> None:
    gen = seeded(16607)
    model = KerfDriftNet()
    lr = 0.05
    opt = torch.optim.ASGD(
        [
            {"params": model.head.parameters(), "lr": lr},
            {"params": model.body.parameters(), "lr": 0.0},
        ],
        lr=lr,
    )
    start = _snapshot(model.body)
    head_start = _snapshot(model.head)

    def before(step):
        if step == 40:
            opt.param_groups[0]["lr"] = lr  # meant for the body: group 1

    _train(ctx, model, opt, _kerf(gen, 64), 250, F.mse_loss, before=before)
    ctx.check("the body's weights never moved", bool(torch.equal(_snapshot(model.body), start)))
    ctx.check("the head's did", float((_snapshot(model.head) - head_start).abs().max()) > 1e-2)
    ctx.check("the body's group still at lr 0", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("the loss is finite", _finite(ctx.losses))


# -- velodrome sprints: a frame count reset before it is read, for one step ---------------------


class SprintCadenceNet(nn.Module):
    """Predicts a track sprinter's cadence over the next 8 half-second frames from 8 frames of
    power, speed and gear readings."""

    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(24, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.out = nn.Linear(hidden, 8)

    def forward(self, x):
        return self.out(self.net(x))


def _sprints(gen, batch):
    w = torch.randn(24, 8, generator=torch.Generator().manual_seed(16608)) / 5
    while True:
        x = torch.randn(batch, 24, generator=gen)
        y = (
            torch.tanh(x @ w)
            + 0.3 * x[:, :8] * x[:, 8:16]
            + 0.05 * torch.randn(batch, 8, generator=gen)
        )
        yield x, y


@scenario(
    family="velodrome_sprint_cadence_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="The loss is a sum of squared errors over frames divided by the count of frames in "
    "the batch, clamped at 1e-4 'to avoid division by zero'. At step 80 (a new epoch) the "
    "frame counter is reset before it is read, so that one step's loss is divided by 1e-4 "
    "instead of 512: one gradient about 5e6 times the usual. Adam (lr 1e-3, beta2 0.999) "
    "folds it into its second moment, and for the rest of the run its updates are hundreds "
    "of times smaller: the loss, still falling before, stalls.",
)
def h166_velodrome_frame_count_reset(ctx: Context) -> None:
    gen = seeded(16608)
    model = SprintCadenceNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves = []
    prev = [_snapshot(model)]

    frames = 64 * 8

    def sse_per_frame(out, y):
        return ((out - y) ** 2).sum() / max(y.numel(), 1e-4)

    def scale_loss(step, loss):
        if step == 80:
            # the frame count read after its reset: 0, clamped to 1e-4, instead of 512
            return loss * frames / 1e-4
        return loss

    def after(step):
        now = _snapshot(model)
        moves.append(float((now - prev[0]).abs().mean()))
        prev[0] = now

    _train(
        ctx, model, opt, _sprints(gen, 64), 250, sse_per_frame, scale_loss=scale_loss, after=after
    )
    gs, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient at step 80 over 1e5x the median before", gs[80] > 1e5 * _median(gs[:80]))
    ctx.check(
        "updates afterwards 20x smaller than before",
        _mean(moves[120:200]) < _mean(moves[40:80]) / 20,
    )
    ctx.check("the loss was still falling before", _mean(ls[60:80]) < 0.8 * _mean(ls[20:40]))
    ctx.check("the loss stalled after", _mean(ls[-20:]) > 0.7 * _mean(ls[85:105]))


# -- ice roads: a quantile forecaster fed one shard with an unmasked -9999 sentinel -------------


QUANTILES = (0.1, 0.5, 0.9)


class IceRoadQuantileNet(nn.Module):
    """Forecasts the 10th, 50th and 90th percentile of tomorrow's ice thickness on a winter road
    from 14 days of air temperature, snow depth and measured thickness (42 numbers)."""

    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(42, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.out = nn.Linear(hidden, len(QUANTILES))

    def forward(self, x):
        return self.out(self.net(x))


def _pinball(pred, y):
    q = torch.tensor(QUANTILES)
    err = y[:, None] - pred
    return torch.maximum(q * err, (q - 1) * err).mean()


def _ice_roads(gen, batch):
    while True:
        temp = torch.randn(batch, 14, generator=gen).cumsum(1) / 4
        snow = torch.rand(batch, 14, generator=gen)
        thick = -temp.cumsum(1) / 14 - 0.3 * snow
        x = torch.cat([temp, snow, thick], 1)
        noise = (0.1 + 0.2 * snow[:, -1]) * torch.randn(batch, generator=gen)
        yield x, thick[:, -1] - 0.1 * temp[:, -1] + noise


@scenario(
    family="ice_road_thickness_quantile_forecaster",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A quantile (pinball-loss) forecaster trained with SGD (lr 0.02, momentum 0.9) and "
    "clip_grad_norm_(1.0). The batch at step 120 comes from a station whose logger writes "
    "-9999 for a missing snow-depth reading, and that shard skipped the masking step: one "
    "batch with inputs of -9999. The loss and the gradient jump by orders of magnitude on "
    "that batch; clipping bounds the update and the run recovers.",
)
def h166_ice_road_sentinel_shard(ctx: Context) -> None:
    gen = seeded(16609)
    model = IceRoadQuantileNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 14:28] = -9999.0
        return x, y

    _train(ctx, model, opt, _ice_roads(gen, 64), 250, _pinball, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 120 over 100x the median before", ls[120] > 100 * _median(ls[90:120]))
    ctx.check(
        "gradient at step 120 over 100x the median before", gs[120] > 100 * _median(gs[90:120])
    )
    ctx.check("the run recovered", _mean(ls[-20:]) < 1.5 * _mean(ls[100:120]))
    ctx.check("the loss is finite", _finite(ls))


# -- nordic skiing: the epoch-end step summed instead of averaging ------------------------------


class GlideNet(nn.Module):
    """Regresses a cross-country ski's glide time over a 50 m test run from snow temperature,
    grain size, humidity, wax hardness, structure depth and skier mass (12 numbers with their
    pairwise products taken by the network)."""

    def __init__(self, hidden=48):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(12, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.net(x)).squeeze(-1)


def _glides(gen, batch):
    w = torch.linspace(0.8, -0.8, 12)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        y = (
            torch.sin(x @ w / 2)
            + 0.3 * x[:, 2] * x[:, 5]
            + 0.05 * torch.randn(batch, generator=gen)
        )
        yield x, y


@scenario(
    family="nordic_ski_glide_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="The loss is F.mse_loss(reduction='mean'), but the epoch-end step (step 90) goes "
    "through a separate 'flush the last batch' path written with reduction='sum': that one "
    "gradient is 128 times (the batch size) the usual, from no change in the data. SGD "
    "(lr 0.01, momentum 0.9) takes one large step, the loss jumps and then recovers.",
)
def h166_nordic_ski_epoch_end_sum(ctx: Context) -> None:
    gen = seeded(16610)
    model = GlideNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def scale_loss(step, loss):
        return loss * 128 if step == 90 else loss  # reduction='sum' over the 128 samples

    _train(ctx, model, opt, _glides(gen, 128), 250, F.mse_loss, scale_loss=scale_loss)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 90 over 50x the median before", gs[90] > 50 * _median(gs[60:90]))
    ctx.check("the batch at step 90 was ordinary", ls[90] < 3 * _median(ls[60:90]))
    ctx.check("the loss jumped after it", max(ls[91:96]) > 3 * _median(ls[60:90]))
    ctx.check("and recovered", _mean(ls[-20:]) < 1.5 * _mean(ls[70:90]))


# -- radiosondes: a ground station switching to pascals under fp16 autocast ----------------------


class BurstAltitudeNet(nn.Module):
    """Regresses a weather balloon's burst altitude (km) from 17 ascent readings: pressure at
    eight levels (scaled by 1/1000), temperature at eight levels (scaled by 1/10) and the raw
    surface pressure in hPa, a column a later feature request appended unscaled."""

    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(17, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.net(x)).squeeze(-1)


def _soundings(gen, batch, pascals_from=None):
    levels = torch.tensor([1000.0, 850, 700, 500, 400, 300, 250, 200])
    step = 0
    while True:
        p = levels * (1 + 0.02 * torch.randn(batch, 8, generator=gen))
        t = torch.linspace(15, -55, 8) + 5 * torch.randn(batch, 8, generator=gen)
        y = 30 + 0.02 * (p[:, 0] - 1000) - 0.05 * t[:, 3] + 0.3 * torch.randn(batch, generator=gen)
        if pascals_from is not None and step >= pascals_from:
            p = 100 * p  # the second station reports pascals
        x = torch.cat([p / 1000, t / 10, p[:, :1]], 1)
        step += 1
        yield x, (y - 30) / 2


@scenario(
    family="radiosonde_burst_altitude_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("net.0",),
    diverges=80,
    heldout=True,
    onset=80,
    note="A ReLU MLP under fp16 autocast with a GradScaler (AdamW, lr 1e-3); one input column is "
    "the raw surface pressure in hPa (about 1000, harmless in float16). From step 80 a second "
    "ground station's decoder reports pressure in pascals: about 100000 in that column, past "
    "float16's 65504, so the first layer's float16 matmul overflows, the loss is non-finite on "
    "every step, and the scaler skips every step and halves its scale towards zero.",
)
def h166_radiosonde_pascals_fp16(ctx: Context) -> None:
    gen = seeded(16611)
    model = BurstAltitudeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _soundings(gen, 64, pascals_from=80),
        140,
        F.mse_loss,
        scaler=scaler,
        amp=torch.float16,
        stop_on_nan=False,
    )
    ls, sc = ctx.losses, ctx.scales
    ctx.check("finite before step 80", _finite(ls[:80]))
    ctx.check("the loss fell before", _mean(ls[70:80]) < 0.7 * _mean(ls[:10]))
    ctx.check(
        "non-finite from step 80 on", _first_bad(ls) == 80 and not any(map(math.isfinite, ls[80:]))
    )
    ctx.check("the scale fell over 1e6x after", sc[-1] < sc[79] / 1e6)


# -- slackline wobble: a hand-written frame norm without its eps ---------------------------------


class FrameNorm(nn.Module):
    """Normalises each IMU frame over its six channels: (x - mean) / std, written by hand (the
    eps left out)."""

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / var.sqrt()


class WobbleNet(nn.Module):
    """Classifies 20 frames of a slackliner's waist IMU (3 accelerometer, 3 gyro channels) as
    steady, wobbling or about to fall."""

    def __init__(self, hidden=32, classes=3):
        super().__init__()
        self.norm = FrameNorm()
        self.proj = nn.Linear(6, hidden)
        self.conv = nn.Conv1d(hidden, hidden, 3, padding=1)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = F.gelu(self.proj(self.norm(x)))
        h = F.relu(self.conv(h.transpose(1, 2)))
        return self.head(h.mean(-1))


def _wobbles(gen, batch, frames=20):
    t = torch.arange(frames).float()
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        amp = (0.3 + 0.8 * y.float())[:, None, None]
        freq = (0.3 + 0.25 * y.float())[:, None, None]
        phase = 6.28 * torch.rand(batch, 1, 6, generator=gen)
        x = amp * torch.sin(freq * t[None, :, None] + phase) + 0.3 * torch.randn(
            batch, frames, 6, generator=gen
        )
        yield x + torch.tensor([0.0, 0.0, 9.81, 0.0, 0.0, 0.0]), y


@scenario(
    family="slackline_wobble_imu_classifier",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("norm",),
    diverges=90,
    heldout=True,
    onset=90,
    note="A per-frame normalisation written by hand as (x - mean) / sqrt(var), the eps left "
    "out. The batch at step 90 is the first from the new strap logger, which writes an "
    "all-zero frame when its Bluetooth link drops: that frame's variance is 0, the norm "
    "computes 0/0, and the NaN runs through the network into the loss (Adagrad, lr 0.05, "
    "cross-entropy).",
)
def h166_slackline_frame_norm_no_eps(ctx: Context) -> None:
    gen = seeded(16612)
    model = WobbleNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen = {}

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[5, 7] = 0.0  # the dropped Bluetooth frame
        return x, y

    def watch(step, o, x, y):
        if step == 90:
            with torch.no_grad():
                seen["in_finite"] = bool(torch.isfinite(x).all())
                seen["out_nan"] = bool(torch.isnan(model.norm(x)).any())

    _train(
        ctx,
        model,
        opt,
        _wobbles(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("the loss fell before step 90", _mean(ls[80:90]) < 0.8 * _mean(ls[:10]))
    ctx.check("first non-finite loss at step 90", _first_bad(ls) == 90)
    ctx.check("the norm's input was finite", seen.get("in_finite", False))
    ctx.check("the norm's output had NaN", seen.get("out_nan", False))


# -- controls ------------------------------------------------------------------------------------


class MosaicBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.ln2(x))


class TesseraMAE(nn.Module):
    """A masked autoencoder over a mosaic panel: the 8x8 panel is cut into 16 tesserae of 2x2,
    three quarters are hidden, the encoder sees the rest and a small decoder repaints the hidden
    ones. Returns (prediction, target, mask) for the loss."""

    def __init__(self, dim=32, heads=4, keep=4):
        super().__init__()
        self.keep = keep
        self.embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(16, dim))
        self.encoder = nn.ModuleList(MosaicBlock(dim, heads) for _ in range(2))
        self.enc_norm = nn.LayerNorm(dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.dec_pos = nn.Parameter(0.02 * torch.randn(16, dim))
        self.decoder = MosaicBlock(dim, heads)
        self.paint = nn.Linear(dim, 4)

    def forward(self, img):
        b = len(img)
        patches = img.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
        order = torch.rand(b, 16).argsort(1)
        vis = order[:, : self.keep]
        h = self.embed(patches) + self.pos
        h = h.gather(1, vis[..., None].expand(-1, -1, h.shape[-1]))
        for block in self.encoder:
            h = block(h)
        h = self.enc_norm(h)
        full = self.mask_token.expand(b, 16, -1).clone().to(h.dtype)
        full = full.scatter(1, vis[..., None].expand(-1, -1, h.shape[-1]), h)
        pred = self.paint(self.decoder(full + self.dec_pos))
        mask = torch.ones(b, 16)
        mask.scatter_(1, vis, 0.0)
        return pred, patches, mask


def _mae_loss(out, _y):
    pred, target, mask = out
    err = ((pred.float() - target) ** 2).mean(-1)
    return (err * mask).sum() / mask.sum()


@scenario(
    family="tessera_mosaic_patch_mae",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A masked autoencoder (MAE-style: 75% of 2x2 patches hidden, encoder on the visible "
    "ones through scaled_dot_product_attention, a one-block decoder with mask tokens) on "
    "8x8 digit panels, under bfloat16 autocast; AdamW param groups (no decay on norms, "
    "biases, positions and the mask token), warm-up then cosine, clipping at 1.0. Healthy.",
)
def h166_tessera_mae_bf16_control(ctx: Context) -> None:
    gen = seeded(16613)
    model = TesseraMAE()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "pos" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.95),
    )
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    batches = ((x, y) for x, y in digit_batches(gen, 64))
    _train(ctx, model, opt, batches, steps, _mae_loss, sched=sched, clip=1.0, amp=torch.bfloat16)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))


class RockPoolNet(nn.Module):
    """Which of six species (anemone, limpet, periwinkle, shore crab, blenny, sea slater) a
    rock pool holds, from 20 readings (temperature, salinity, pH, oxygen, height on the shore,
    exposure, ...)."""

    def __init__(self, hidden=64, species=6):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(20, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, species)

    def forward(self, x):
        return self.head(self.body(x))


def _rock_pools(gen, batch):
    w = torch.randn(20, 6, generator=torch.Generator().manual_seed(16614)) / 3
    offset = torch.tensor([-0.5, -1.0, -1.5, -2.0, -2.5, -3.0])
    while True:
        x = torch.randn(batch, 20, generator=gen)
        logits = 2 * (x @ w) + offset
        yield x, (torch.rand(batch, 6, generator=gen) < torch.sigmoid(logits)).float()


@scenario(
    family="rock_pool_species_multilabel",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="A multi-label classifier (six species, prevalences from about 40% down to 10%) "
    "trained with BCEWithLogitsLoss(pos_weight=negatives/positives per species, counted on a "
    "held-back sample), NAdam with OneCycleLR (max lr 1e-2). Healthy.",
)
def h166_rock_pool_pos_weight_control(ctx: Context) -> None:
    gen = seeded(16614)
    model = RockPoolNet()
    batches = _rock_pools(gen, 128)
    sample = torch.cat([next(batches)[1] for _ in range(8)])
    pos = sample.sum(0).clamp(min=1.0)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=(len(sample) - pos) / pos)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    _train(ctx, model, opt, batches, steps, loss_fn, sched=sched)
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("finite", _finite(ctx.losses))


class NumeralCVAE(nn.Module):
    """A conditional VAE over 8x8 letterpress numerals: the digit is given to the encoder and
    the decoder as a one-hot, the latent carries the typeface's style."""

    def __init__(self, latent=8, hidden=128):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(64 + 10, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec = nn.Sequential(nn.Linear(latent + 10, hidden), nn.ReLU(), nn.Linear(hidden, 64))

    def forward(self, batch):
        x, label = batch
        c = F.one_hot(label, 10).float()
        h = self.enc(torch.cat([x, c], 1))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.dec(torch.cat([z, c], 1)), mu, logvar


@scenario(
    family="letterpress_numeral_cvae",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="A conditional VAE (Bernoulli decoder through BCE with logits, Gaussian latent) on 8x8 "
    "digit glyphs, the KL weight annealed linearly from 0 to a beta of 1 over the first 100 "
    "steps; Adam at lr 2e-3. Healthy.",
)
def h166_letterpress_cvae_kl_anneal_control(ctx: Context) -> None:
    gen = seeded(16615)
    model = NumeralCVAE()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    beta = [0.0]
    recon, kls = [], []

    def loss_fn(out, x):
        logits, mu, logvar = out
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum() / len(x)
        recon.append(float(rec.detach()))
        kls.append(float(kl.detach()))
        return rec + beta[0] * kl

    def before(step):
        beta[0] = min(1.0, step / 100)

    batches = (((x, y), x) for x, y in digit_batches(gen, 64))
    _train(ctx, model, opt, batches, 250, loss_fn, before=before)
    ctx.check("the reconstruction loss fell", _mean(recon[-10:]) < 0.8 * _mean(recon[:10]))
    ctx.check("the KL is positive and finite", 0 < _mean(kls[-10:]) < 1e3)
    ctx.check("finite", _finite(ctx.losses))


class SeineCatchNet(nn.Module):
    """Forecasts the log catch of a beach-seine haul from the 24-hour tide curve (a 1-D conv)
    and four readings (water temperature, wind, moon phase, hour)."""

    def __init__(self, ch=16, hidden=32):
        super().__init__()
        self.tide = nn.Sequential(
            nn.Conv1d(1, ch, 5, padding=2), nn.ReLU(), nn.Conv1d(ch, ch, 5, padding=2), nn.ReLU()
        )
        self.mix = nn.Sequential(nn.Linear(ch + 4, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        tide, extra = x[:, None, :24], x[:, 24:]
        h = self.tide(tide).mean(-1)
        return self.out(self.mix(torch.cat([h, extra], 1))).squeeze(-1)


def _hauls(gen, batch):
    t = torch.linspace(0, 6.28, 24)
    student = torch.distributions.StudentT(2.5)
    while True:
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        tide = amp * torch.sin(2 * t + phase)
        extra = torch.randn(batch, 4, generator=gen)
        y = amp.squeeze(1) * torch.cos(phase.squeeze(1)) + 0.4 * extra[:, 0] - 0.3 * extra[:, 1]
        y = y + 0.2 * student.sample((batch,))
        yield torch.cat([tide, extra], 1), y


@scenario(
    family="beach_seine_catch_regressor",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="A 1-D conv over the tide curve plus four readings, heavy-tailed (Student-t) noise in "
    "the catches, Huber loss, two micro-batches accumulated a step, clipping at 1.0, "
    "Adadelta (lr 1.0) with ReduceLROnPlateau. Healthy.",
)
def h166_beach_seine_adadelta_control(ctx: Context) -> None:
    gen = seeded(16616)
    model = SeineCatchNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(ctx, model, opt, _hauls(gen, 64), 250, F.huber_loss, sched=sched, clip=1.0, accumulate=2)
    ctx.check("the loss fell", _fell(ctx.losses, k=20))
    ctx.check("finite", _finite(ctx.losses))
