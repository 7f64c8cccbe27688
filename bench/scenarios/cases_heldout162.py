"""Held-out set 162 (``h162_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: three hand-written transformers (a hand softmax over q.k scores,
``nn.MultiheadAttention``, and a small vision transformer with a patch embedding and
``scaled_dot_product_attention`` on 2-D inputs), a wide-and-deep recommender and a
factorisation machine with embedding tables, a 1-D CNN autoencoder for anomaly detection, a
character-level GRU language model with tied weights, a classifier whose forward divides its
head's logits by a temperature, a Gaussian regressor whose forward takes a square root after
its head, a regressor trained under fp16 autocast with a GradScaler, and plain MLP regressors.

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
    text_batches,
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


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


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
    accumulate=1,
    watch=None,
    scale_loss=None,
    after=None,
    report_total=False,
    on_grads=None,
    stop_on_nan=True,
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``scale_loss(step,
    loss, out, y)`` gives the loss that is back-propagated (reported instead of the plain loss
    when ``report_total``), ``on_grads(step)`` sees the gradients before clipping and the
    update, ``after(step)`` runs after the update."""
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
            loss = loss_fn(out, y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            back = loss if scale_loss is None else scale_loss(step, loss, out, y)
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
            shown += float((back if report_total else loss).detach().float())
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if on_grads is not None:
            on_grads(step)
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


def _tabular(gen, batch, dim, fn, noise=0.05):
    """Endless batches of standard-normal features with a target ``fn(x)`` plus noise."""
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = fn(x) + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


# -- harmonium reed chords: a hand softmax whose scale multiplies by sqrt(d) ---------------------


class BellowsAttention(nn.Module):
    """Single-head self-attention written by hand: softmax over q.k scores times ``scale``;
    records the largest score the softmax saw."""

    def __init__(self, dim, scale):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scale = scale
        self.last_max = 0.0

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-1, -2) * self.scale
        self.last_max = float(scores.detach().abs().amax())
        return self.o(torch.softmax(scores, dim=-1) @ self.v(x))


class HarmoniumChordNet(nn.Module):
    """Names which of four chords a harmonium player holds from 12 reed-pitch readings binned to
    32 levels."""

    def __init__(self, levels=32, dim=32, length=12, chords=4, scale=None):
        super().__init__()
        self.level = nn.Embedding(levels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = BellowsAttention(dim, 1.0 / math.sqrt(dim) if scale is None else scale)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, chords)

    def forward(self, x):
        h = self.level(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(h.mean(1))


def _reeds(gen, batch, levels=32, length=12):
    """The chord depends on whether the highest reading is in the first half and whether the
    last reading is high."""
    while True:
        x = torch.randint(0, levels, (batch, length), generator=gen)
        y = (x.argmax(1) < length // 2).long() * 2 + (x[:, -1] > levels // 2).long()
        yield x, y


@scenario(
    family="harmonium_reed_chord_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with attention written by hand (softmax over q.k). The scale "
    "was written as math.sqrt(dim) (multiplying the scores by sqrt(32)) where 1/math.sqrt(dim) "
    "was meant, and AdamW runs at lr 1e-2 with weight decay 0: the q.k scores the softmax sees "
    "grow more than 10x, past 100.",
)
def h162_harmonium_hand_softmax_scale(ctx: Context) -> None:
    gen = seeded(16201)
    model = HarmoniumChordNet(scale=math.sqrt(32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _reeds(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention scores grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention scores above 100", seen[-1] > 100)


# -- shinty pass sequences: a logit 'margin bonus' on raw logits ---------------------------------


class ShintyPlayNet(nn.Module):
    """Classifies how a shinty attack ends (goal, wide, turnover) from its sequence of passes
    (16 pass types), with ``nn.MultiheadAttention``."""

    def __init__(self, kinds=16, dim=32, length=10, outcomes=3):
        super().__init__()
        self.kind = nn.Embedding(kinds, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.mha = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, outcomes)

    def forward(self, x):
        h = self.kind(x) + self.pos
        a = self.ln1(h)
        h = h + self.mha(a, a, a, need_weights=False)[0]
        h = h + self.ff(self.ln2(h))
        return self.head(h.mean(1))


def _passes(gen, batch, kinds=16, length=10):
    """The outcome is the most frequent of three groups of pass types."""
    while True:
        x = torch.randint(0, kinds, (batch, length), generator=gen)
        groups = torch.stack([(x < 5).sum(1), ((x >= 5) & (x < 10)).sum(1), (x >= 10).sum(1)], 1)
        yield x, groups.float().add(0.01 * torch.arange(3)).argmax(1)


@scenario(
    family="shinty_pass_sequence_mha_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A transformer classifier (nn.MultiheadAttention) trained with cross-entropy plus a "
    "'margin bonus' copied from a ranking recipe: 0.1 x the mean raw logit of the true class is "
    "subtracted from the loss. Meant for normalised scores, on raw logits it rewards growing "
    "them without bound: the head's logits grow more than 20x while the cross-entropy itself "
    "stays finite and small.",
)
def h162_shinty_margin_bonus_raw_logits(ctx: Context) -> None:
    gen = seeded(16202)
    model = ShintyPlayNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _passes(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(float(o.detach().abs().amax())),
        scale_loss=lambda s, loss, o, y: loss - 0.1 * o.gather(1, y[:, None]).mean(),
        report_total=True,
    )
    ctx.check("head logits grew 20x", seen[-1] > 20 * _mean(seen[:5]))
    ctx.check("loss finite", _finite(ctx.losses))


# -- fresco plaster scans: a vision transformer whose logits are divided by 0.01 -----------------


class PatchViT(nn.Module):
    """A small vision transformer on 8x8 scans: 2x2 patches embedded by a strided conv, pre-LN
    blocks with ``scaled_dot_product_attention``, a class token, a linear head; the logits are
    divided by ``temperature``."""

    def __init__(self, dim=32, heads=2, depth=2, classes=10, temperature=1.0):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(17, dim))
        self.heads = heads
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "ln1": nn.LayerNorm(dim),
                        "qkv": nn.Linear(dim, 3 * dim),
                        "proj": nn.Linear(dim, dim),
                        "ln2": nn.LayerNorm(dim),
                        "mlp": nn.Sequential(
                            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
                        ),
                    }
                )
            )
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.temperature = temperature

    def forward(self, x):
        b = x.shape[0]
        h = self.patch(x.reshape(b, 1, 8, 8)).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(b, -1, -1), h], 1) + self.pos
        for blk in self.blocks:
            a = blk["ln1"](h)
            q, k, v = blk["qkv"](a).chunk(3, dim=-1)
            q, k, v = (z.reshape(b, 17, self.heads, -1).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v)
            h = h + blk["proj"](y.transpose(1, 2).reshape(b, 17, -1))
            h = h + blk["mlp"](blk["ln2"](h))
        return self.head(self.ln_f(h[:, 0])) / self.temperature


class CrackClassifier(nn.Module):
    """Names one of ten crack patterns in an 8x8 plaster scan of a fresco; the forward divides
    the head's logits by ``temperature``."""

    def __init__(self, temperature=1.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.body(x)) / self.temperature


@scenario(
    family="fresco_plaster_crack_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="An MLP classifies ten crack patterns in 8x8 plaster scans (cross-entropy, NAdam lr "
    "1e-3). Its forward divides the head's logits by a temperature that was read from the "
    "pseudo-label sharpening section of the config (0.003) instead of the classifier's (1.0): "
    "once the net ranks the classes at all, the float32 softmax gives the target probability "
    "exactly 1.0 (and the others exactly 0) on most rows.",
)
def h162_fresco_temperature_config(ctx: Context) -> None:
    gen = seeded(16203)
    model = CrackClassifier(temperature=0.003)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    seen = []
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("softmax gives exactly 1.0 on over half the rows", _mean(seen[-10:]) > 0.5)
    ctx.check("none collapsed at the start", _mean(seen[:5]) < 0.1)


# -- lahar runout: CosineAnnealingWarmRestarts with eta_min above the base lr --------------------


def _sharpness(model, loss_fn, x, y, iters=15):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
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


@scenario(
    family="lahar_runout_distance_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP regresses lahar runout distance (normalised) from volume, slope, channel "
    "width, water content and more (MSE, plain SGD at lr 0.02). Its CosineAnnealingWarmRestarts "
    "schedule (T_0 100) got eta_min=1.0e-0 from the config, a typo for 1.0e-4: with eta_min "
    "above the base lr the 'annealing' climbs from 0.02 towards 1.0 over the first cycle, "
    "lr x sharpness passes 2 and the loss blows up before the first restart.",
)
def h162_lahar_warm_restart_eta_min(ctx: Context) -> None:
    gen = seeded(16204)
    w = torch.randn(10, 1, generator=gen) / math.sqrt(10)

    def build():
        return nn.Sequential(
            nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
        )

    model = build()
    twin = build()  # the sharpness is measured on a copy, out of the monitor's sight
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=100, eta_min=1.0)
    batches = _tabular(gen, 128, 10, lambda x: torch.tanh(x @ w) + 0.3 * x[:, :1] * x[:, 1:2])
    px, py = next(batches)
    lrs, products = [], []

    def before(step):
        lr = opt.param_groups[0]["lr"]
        lrs.append(lr)
        if step % 10 == 0:
            twin.load_state_dict(model.state_dict())
            products.append(lr * _sharpness(twin, F.mse_loss, px, py))

    _train(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    ctx.check("loss blew up 100x over its minimum", bad is not None or max(ls) > 100 * min(ls))
    ctx.check("lr x sharpness passed 2 before the blow-up", max(products[: end // 10 + 1]) > 2)
    ctx.check("lr climbed 10x above the base", max(lrs[:end]) > 10 * lrs[0])


# -- frost heave: a deep ReLU MLP initialised with std 0.45 --------------------------------------


@scenario(
    family="frost_heave_lift_regressor",
    optimizer="SGD (Nesterov)",
    cause="exploding_gradients",
    where=("net.0", "net.2"),
    diverges="auto",
    heldout=True,
    note="A 10-layer ReLU MLP regresses frost-heave lift of a fence post from soil and weather "
    "features (MSE, SGD with Nesterov momentum 0.9). Its init helper uses "
    "nn.init.normal_(std=0.45) on every weight (a value meant for the narrow input layer of an "
    "older model) instead of Kaiming: each 32-wide layer multiplies the signal by about 1.8, the "
    "gradient grows through depth to the first layers (100x+), and although the lr was already "
    "cut to 1e-5 when the first loss came out huge, the run blows up within a few steps.",
)
def h162_frost_heave_init_std(ctx: Context) -> None:
    gen = seeded(16205)
    sizes = [12] + [32] * 9 + [1]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential()
    model.add_module("net", nn.Sequential(*layers))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.45)
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9, nesterov=True)
    w = torch.randn(12, 1, generator=gen) / math.sqrt(12)
    batches = _tabular(gen, 64, 12, lambda x: F.relu(x @ w))
    # the gradient reaching each hidden layer's output, on the first batch at init
    px, py = next(batches)
    outs, h = [], px
    for layer in model.net:
        h = layer(h)
        if isinstance(layer, nn.Linear):
            h.retain_grad()
            outs.append(h)
    F.mse_loss(h, py).backward()
    depth_ratio = float(outs[0].grad.norm() / outs[-2].grad.norm())
    model.zero_grad(set_to_none=True)
    _train(ctx, model, opt, batches, 150, F.mse_loss)
    ls = ctx.losses
    ctx.check("gradient at the first layer 100x that at the last hidden", depth_ratio > 100)
    ctx.check("loss blew up to inf/NaN", _first_bad(ls) is not None)


# -- lobster boat engine knock: a 1-D conv autoencoder with an uncapped warm-up -------------------


class KnockAutoencoder(nn.Module):
    """A 1-D CNN autoencoder over 64-sample engine vibration windows; the reconstruction error
    flags knocking. Activations are ReLU modules so their outputs can be read."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv1d(1, 16, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv1d(16, 32, 5, stride=2, padding=2),
            nn.ReLU(),
        )
        self.dec = nn.Sequential(
            nn.ConvTranspose1d(32, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose1d(16, 1, 4, stride=2, padding=1),
        )

    def forward(self, x):
        return self.dec(self.enc(x.unsqueeze(1))).squeeze(1)


def _engine(gen, batch, length=64):
    """Healthy engine windows: a firing tone with two harmonics, random phase and amplitude,
    plus sensor noise."""
    t = torch.arange(length).float()
    while True:
        f = 0.15 + 0.05 * torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        a = 0.5 + torch.rand(batch, 1, generator=gen)
        x = a * (
            torch.sin(f * t + ph) + 0.4 * torch.sin(2 * f * t + ph) + 0.2 * torch.sin(3 * f * t)
        )
        x = x + 0.05 * torch.randn(batch, length, generator=gen)
        yield x, x


@scenario(
    family="lobster_boat_engine_knock_conv_ae",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("enc.2", "enc.3"),
    diverges=None,
    heldout=True,
    note="A 1-D CNN autoencoder for engine-knock anomaly detection (MSE reconstruction, RMSprop "
    "at base lr 1e-3). Its 3-step warm-up LambdaLR returns (step + 1) / 3 with the min(1, ...) "
    "cap left out, so the lr keeps climbing (to 0.067 by step 200): the second conv layer's ReLU units die one "
    "after another and the reconstruction stops improving.",
)
def h162_lobster_engine_uncapped_warmup(ctx: Context) -> None:
    gen = seeded(16206)
    model = KnockAutoencoder()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 3)
    dead = []
    # read enc.2's units after their ReLU (enc.3) on each training batch
    model.enc[3].register_forward_hook(
        lambda m, i, o: dead.append(dead_fraction(o.detach().transpose(1, 2)))
    )
    _train(ctx, model, opt, _engine(gen, 64), 200, F.mse_loss, sched=sched)
    ls = ctx.losses
    ctx.check("over half of enc.2's units dead", dead[-1] > 0.5)
    ctx.check("few were dead early", dead[5] < 0.25)
    ctx.check("loss 5x above its low at the end", _mean(ls[-10:]) > 5 * min(ls))
    ctx.check("loss finite", _finite(ls))


# -- parquet flooring: a wide-and-deep recommender whose embedding group has lr 1e-7 --------------


class ParquetWideDeep(nn.Module):
    """Wide-and-deep click model for parquet patterns shown to shoppers: a wide linear part over
    crossed (region x wood) one-hots, a deep MLP over user and pattern embedding tables."""

    def __init__(self, users=300, items=120, crosses=40, dim=16):
        super().__init__()
        self.user_emb = nn.Embedding(users, dim)
        self.item_emb = nn.Embedding(items, dim)
        self.wide = nn.Embedding(crosses, 1)
        self.deep = nn.Sequential(nn.Linear(2 * dim, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        u, i, c = x[:, 0], x[:, 1], x[:, 2]
        d = self.deep(torch.cat([self.user_emb(u), self.item_emb(i)], 1))
        return (d + self.wide(c)).squeeze(1)


def _clicks(gen, batch, users=300, items=120, crosses=40, rank=4):
    pu = torch.randn(users, rank, generator=gen)
    pi = torch.randn(items, rank, generator=gen)
    bc = torch.randn(crosses, generator=gen)
    while True:
        u = torch.randint(0, users, (batch,), generator=gen)
        i = torch.randint(0, items, (batch,), generator=gen)
        c = (u % 8) * 5 + (i % 5)
        logit = (pu[u] * pi[i]).sum(1) + bc[c]
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield torch.stack([u, i, c], 1), y


@scenario(
    family="parquet_pattern_wide_deep_recommender",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("user_emb", "item_emb"),
    diverges=None,
    heldout=True,
    note="A wide-and-deep click model (BCE with logits) trained with Adam in two param groups: "
    "the dense layers at lr 3e-3 and the embedding tables at lr 1e-7, a value kept from a "
    "fine-tuning config meant to freeze them. The tables' updates are about 1e-7 of their "
    "weights, the embeddings never learn, and the model only fits what the wide part and the "
    "deep layers can on random embeddings.",
)
def h162_parquet_embedding_group_lr(ctx: Context) -> None:
    gen = seeded(16207)
    model = ParquetWideDeep()
    emb = [*model.user_emb.parameters(), *model.item_emb.parameters()]
    dense = [*model.wide.parameters(), *model.deep.parameters()]
    opt = torch.optim.Adam([{"params": dense, "lr": 3e-3}, {"params": emb, "lr": 1e-7}])
    e0 = torch.cat([p.detach().reshape(-1).clone() for p in emb])
    d0 = torch.cat([p.detach().reshape(-1).clone() for p in dense])
    _train(ctx, model, opt, _clicks(gen, 128), 200, F.binary_cross_entropy_with_logits)
    e1 = torch.cat([p.detach().reshape(-1) for p in emb])
    d1 = torch.cat([p.detach().reshape(-1) for p in dense])
    ctx.check(
        "embeddings moved under 1e-4 of their norm", float((e1 - e0).norm() / e0.norm()) < 1e-4
    )
    ctx.check("dense layers moved over 1e-2", float((d1 - d0).norm() / d0.norm()) > 1e-2)
    ctx.check("loss finite", _finite(ctx.losses))


# -- mussel raft growth: one step's loss backpropagated still multiplied by a saved loss scale -----


@scenario(
    family="mussel_raft_growth_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="A GELU MLP regresses mussel growth on a rope raft from water temperature, chlorophyll, "
    "salinity, current and depth (MSE, Adam lr 3e-3, beta2 0.999). On resume at step 60 the "
    "restored GradScaler state (scale 65536) was applied to the loss once in an fp32 run with "
    "no unscale: one gradient 65536x too large fills Adam's second moment, and for the rest of "
    "the run the updates are a small fraction of what they were and the loss stalls.",
)
def h162_mussel_restored_loss_scale(ctx: Context) -> None:
    gen = seeded(16208)
    w = torch.randn(8, 1, generator=gen) / math.sqrt(8)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    moves = []
    prev = [_flat(model)]

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    _train(
        ctx,
        model,
        opt,
        _tabular(gen, 64, 8, lambda x: torch.sin(x @ w) + 0.5 * (x[:, :1] ** 2)),
        200,
        F.mse_loss,
        scale_loss=lambda s, loss, o, y: loss * 65536.0 if s == 60 else loss,
        after=after,
    )
    g = ctx.grad_norms
    ctx.check("gradient 1000x at step 60", g[60] > 1000 * _median(g[40:60]))
    ctx.check("updates 5x smaller after it", _mean(moves[100:200]) < 0.2 * _mean(moves[40:60]))
    ctx.check(
        "loss never back to its level before", min(ctx.losses[100:]) > _mean(ctx.losses[50:60])
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- weir discharge: one shard of crest heads logged in millimetres -------------------------------


@scenario(
    family="weir_crest_discharge_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="An MLP regresses a river gauge's discharge over a broad-crested weir from the head over "
    "the crest, crest width, upstream depth and other readings (normalised; Huber loss, plain "
    "SGD lr 0.05). The batch at step 120 comes from one logger's shard that wrote the crest "
    "head in millimetres instead of metres: that column is 1000x, the loss and the gradient "
    "jump at that step.",
)
def h162_weir_head_millimetre_shard(ctx: Context) -> None:
    gen = seeded(16209)
    model = nn.Sequential(
        nn.Linear(6, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def discharge(x):
        return 0.6 * F.softplus(x[:, :1]) ** 1.5 * (1 + 0.2 * x[:, 1:2]) + 0.1 * x[:, 2:3]

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0
        return x, y

    _train(ctx, model, opt, _tabular(gen, 64, 6, discharge), 200, F.huber_loss, alter=alter)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss 20x at step 120", ls[120] > 20 * _median(ls[100:120]))
    ctx.check("gradient 20x at step 120", g[120] > 20 * _median(g[100:120]))


# -- sastrugi ridges: decoupled weight decay written with the wrong sign --------------------------


@scenario(
    family="sastrugi_ridge_height_regressor",
    optimizer="SGD (momentum)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP regresses the height of wind-carved snow ridges from wind speed, fetch, "
    "temperature and snow age (MSE, SGD momentum 0.9 lr 0.01, clip_grad_norm_ at 1.0). The "
    "hand-written decoupled weight decay does p.mul_(1 + lr * wd) where 1 - lr * wd was meant "
    "(wd 0.5): the weights grow a little every step, clipping cannot touch it (it is not in the "
    "gradient), and after an initial fall the loss climbs steadily.",
)
def h162_sastrugi_decay_sign(ctx: Context) -> None:
    gen = seeded(16210)
    w = torch.randn(8, 1, generator=gen) / math.sqrt(8)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 0.01 * 0.5)

    _train(
        ctx,
        model,
        opt,
        _tabular(gen, 64, 8, lambda x: torch.tanh(x @ w) + 0.2 * x[:, :1]),
        300,
        F.mse_loss,
        clip=1.0,
        after=after,
    )
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _mean(ls[i : i + 10]))
    ctx.check("weights grew 3x", float(_flat(model).norm()) > 3 * n0)
    ctx.check("loss climbed 3x from its low", _mean(ls[-10:]) > 3 * _mean(ls[low : low + 10]))
    ctx.check("loss finite", _finite(ls))


# -- ball lightning: a Gaussian regressor taking sqrt of its variance head ------------------------


class LifetimeNet(nn.Module):
    """Predicts the mean and spread of a ball-lightning sighting's log-lifetime from reported
    size, colour temperature, humidity and storm distance; the forward returns mu and the
    standard deviation sqrt(var) with var straight from the head (no softplus, no clamp)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh())
        self.head = nn.Linear(48, 2)
        with torch.no_grad():
            self.head.weight[1].zero_()
            self.head.bias[1] = 1.0
        self.last_var_min = 0.0

    def forward(self, x):
        out = self.head(self.body(x))
        var = out[:, 1]
        self.last_var_min = float(var.detach().min())
        return torch.stack([out[:, 0], torch.sqrt(var)], 1)


def _gauss_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    return (torch.log(sigma) + 0.5 * ((y[:, 0] - mu) / sigma) ** 2).mean()


@scenario(
    family="ball_lightning_lifetime_sigma_net",
    optimizer="AdamW",
    cause="nonfinite",
    where=("head",),
    diverges=17,
    heldout=True,
    note="A Gaussian regressor (negative log-likelihood, AdamW lr 3e-3) whose forward returns "
    "sqrt(var) with var taken straight from the head: the softplus that kept it positive was "
    "dropped in a refactor. As the fit tightens the variance output is pushed towards 0, one "
    "sample's goes negative, sqrt gives NaN and the loss is NaN from then on.",
)
def h162_ball_lightning_sqrt_no_softplus(ctx: Context) -> None:
    gen = seeded(16211)
    w = torch.randn(6, 1, generator=gen) / math.sqrt(6)
    model = LifetimeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    mins = []
    _train(
        ctx,
        model,
        opt,
        _tabular(gen, 64, 6, lambda x: torch.sin(x @ w), noise=0.05),
        300,
        _gauss_nll,
        watch=lambda s, o, x, y: mins.append(model.last_var_min),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss NaN", bad is not None)
    ctx.check("variance output negative at the NaN step", bad is not None and mins[bad] < 0)
    ctx.check("finite before", bad is not None and bad > 10 and _finite(ctx.losses[:bad]))


# -- power hammer blows: raw newtons under fp16 autocast ------------------------------------------


@scenario(
    family="power_hammer_blow_force_regressor",
    optimizer="SGD (momentum)",
    cause="amp_overflow",
    where=("head",),
    diverges=25,
    heldout=True,
    note="An MLP predicts a blacksmith's power-hammer blow force from ram mass, drop height, "
    "air pressure and die size, trained under fp16 autocast with a GradScaler (SGD momentum "
    "0.9, MSE). The targets were left in raw newtons (60 000 to 120 000) instead of kN: as the "
    "head's fp16 output approaches the targets it passes 65504 and becomes inf, every step "
    "after is skipped and the scaler's scale collapses.",
)
def h162_power_hammer_raw_newtons(ctx: Context) -> None:
    gen = seeded(16212)
    w = torch.randn(5, 1, generator=gen) / math.sqrt(5)

    def build():
        net = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        net.add_module("head", nn.Linear(32, 1))
        return net

    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    batches = _tabular(gen, 64, 5, lambda x: 90000.0 + 15000.0 * torch.tanh(x @ w), noise=0.0)
    outs = []
    _train(
        ctx,
        model,
        opt,
        batches,
        200,
        F.mse_loss,
        scaler=scaler,
        watch=lambda s, o, x, y: outs.append(x),
        stop_on_nan=False,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("loss non-finite to the end", bad is not None and not _finite(ctx.losses[bad:][-1:]))
    fp32_finite = False
    if bad is not None:
        twin = build()  # the scaler skipped every step since, so these are the weights then
        twin.load_state_dict(model.state_dict())
        with torch.no_grad():
            fp32_finite = bool(torch.isfinite(twin(outs[bad])).all())
    ctx.check("that batch's fp32 forward is finite", fp32_finite)
    sc = ctx.scales
    ctx.check(
        "scale fell 1000x after the overflow",
        bad is not None and sc[-1] < sc[max(bad - 1, 0)] / 1000,
    )


# -- healthy controls -----------------------------------------------------------------------------


class CharGRULM(nn.Module):
    """A character-level GRU language model over a dowser's logbook bytes, input embedding tied
    to the output head."""

    def __init__(self, vocab=128, dim=64):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.emb.weight, std=0.1)
        self.head.weight = self.emb.weight

    def forward(self, x):
        h, _ = self.gru(self.emb(x))
        return self.head(h)


def _lm_loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    family="dowsing_logbook_char_gru_lm",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: a character-level GRU LM with tied embedding/head weights, Adam lr 3e-3 with "
    "a 20-step linear warm-up then cosine decay, 2 micro-batches accumulated a step, gradient "
    "clipping at 1.0.",
)
def h162_dowsing_char_gru_control(ctx: Context) -> None:
    gen = seeded(16213)
    model = CharGRULM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 200

    def factor(s):
        return (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    _train(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        steps,
        _lm_loss,
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))


@scenario(
    family="sandstorm_dune_ripple_vit",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a small vision transformer (2x2 patch embedding, class token, "
    "scaled_dot_product_attention) names ten ripple patterns in 8x8 wind-tunnel sand scans; "
    "AdamW (weight decay 0.05) under OneCycleLR up to 3e-3, label smoothing 0.1.",
)
def h162_sandstorm_vit_control(ctx: Context) -> None:
    gen = seeded(16214)
    model = PatchViT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))


class FivesFM(nn.Module):
    """A factorisation machine over (player, court, time slot) for fives-court booking
    recommendations: a global bias, first-order weights and pairwise factor interactions."""

    def __init__(self, fields=(100, 40, 40), dim=8):
        super().__init__()
        self.offsets = torch.tensor([0, fields[0], fields[0] + fields[1]])
        n = sum(fields)
        self.linear = nn.Embedding(n, 1)
        self.factors = nn.Embedding(n, dim)
        nn.init.normal_(self.factors.weight, std=0.1)
        nn.init.zeros_(self.linear.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        idx = x + self.offsets
        v = self.factors(idx)
        pair = 0.5 * (v.sum(1) ** 2 - (v * v).sum(1)).sum(1)
        return self.bias + self.linear(idx).sum((1, 2)) + pair


@scenario(
    family="fives_court_booking_fm_recommender",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="Control: a factorisation machine with embedding tables predicts whether a player books "
    "a fives court slot (BCE with logits), Adagrad lr 0.2.",
)
def h162_fives_fm_control(ctx: Context) -> None:
    gen = seeded(16215)
    model = FivesFM()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.2)
    batches = _clicks(gen, 128, users=100, items=40)
    _train(ctx, model, opt, batches, 300, F.binary_cross_entropy_with_logits)
    ctx.check("loss fell", _fell(ctx.losses, k=20, ratio=0.9))


@scenario(
    family="jokulhlaup_flood_peak_regressor",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="Control: an MLP regresses the peak discharge of a glacial outburst flood from lake "
    "level, ice-dam thickness, melt rate and more, on noisy batches; Huber loss, Adamax lr 2e-3 "
    "with ReduceLROnPlateau (factor 0.5, patience 10).",
)
def h162_jokulhlaup_adamax_control(ctx: Context) -> None:
    gen = seeded(16216)
    w = torch.randn(9, 1, generator=gen) / 3.0
    model = nn.Sequential(
        nn.Linear(9, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _tabular(gen, 32, 9, lambda x: torch.exp(0.5 * (x @ w)) + 0.3 * x[:, 1:2], noise=0.2)
    _train(ctx, model, opt, batches, 250, F.huber_loss, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses, k=20, ratio=0.8))
