"""Held-out set 167 (``h167_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before (three hand-written transformers: a hand softmax over q.k,
``nn.MultiheadAttention`` with a tied head, ``scaled_dot_product_attention``), a Fixup-style
pre-activation residual 1-D conv net without normalisation, a ``nn.GRUCell`` unrolled by hand, a
mixup classifier, an SWA control and one Hugging Face model (Inkling2Loop) built from a tiny
config.

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
    digits,
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
    forward=None,
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``scale_loss(step,
    loss)`` changes the loss that is back-propagated, ``after(step)`` runs after the update."""
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
                loss = loss_fn(out, y) / accumulate
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
        if math.isnan(shown):
            break


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


# -- 1. millstone dressing: a hand softmax over q.k with the 1/sqrt(d) dropped -------------------


class FurrowAttention(nn.Module):
    """Self-attention with a hand softmax over q.k; ``scaled`` decides whether q.k is divided
    by sqrt(head_dim). Records the largest logit the softmax saw."""

    def __init__(self, dim, heads, scaled=True):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scaled = scaled
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            f(x).reshape(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        scores = q @ k.transpose(-1, -2)
        if self.scaled:
            scores = scores / math.sqrt(q.shape[-1])
        self.last_max = float(scores.detach().abs().amax())
        w = torch.exp(scores - scores.amax(-1, keepdim=True))
        w = w / w.sum(-1, keepdim=True)
        return self.o((w @ v).transpose(1, 2).reshape(b, t, d))


class MillstoneDressNet(nn.Module):
    """Reads 16 furrow-depth levels around a millstone's harp and names which quarter of the
    stone needs re-dressing."""

    def __init__(self, levels=16, dim=32, length=16, heads=2, scaled=True):
        super().__init__()
        self.depth = nn.Embedding(levels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = FurrowAttention(dim, heads, scaled)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        h = self.depth(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(h.mean(1))


def _furrows(gen, batch, levels=16, length=16):
    while True:
        x = torch.randint(0, levels, (batch, length), generator=gen)
        y = x.argmin(1) // (length // 4)
        yield x, y


@scenario(
    family="millstone_dressing_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with a hand-written softmax over q.k. A refactor that split "
    "the fused qkv projection into q, k and v dropped the division by sqrt(head_dim), and AdamW "
    "runs at lr 1e-2 without weight decay: the q.k logits the softmax sees grow more than 10x, "
    "past 40.",
)
def h167_millstone_attention_unscaled(ctx: Context) -> None:
    gen = seeded(16701)
    model = MillstoneDressNet(scaled=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _furrows(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 40", seen[-1] > 40)


# -- 2. wicker weave: hand label smoothing with the smoothing's sign flipped, tied head -------


class TiedHead(nn.Module):
    """The output head, its weight tied to the input embedding."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.weight = embedding.weight

    def forward(self, h):
        return h @ self.weight.T


class WickerWeaveLM(nn.Module):
    """A decoder-only model over a wicker weaver's stroke sequence (over, under, skip, ...),
    attention through nn.MultiheadAttention with a causal mask, the head tied to the input
    embedding."""

    def __init__(self, vocab=12, dim=32, heads=2, length=24):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = TiedHead(self.tok)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.register_buffer("mask", torch.triu(torch.ones(length, length, dtype=torch.bool), 1))

    def forward(self, x):
        t = x.shape[1]
        h = self.tok(x) + self.pos[:t]
        a = self.ln1(h)
        h = h + self.attn(a, a, a, attn_mask=self.mask[:t, :t], need_weights=False)[0]
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h))


def _weaves(gen, batch, vocab=12, length=24):
    """Each row repeats a random pattern of period 2-4: after one period, fully predictable."""
    while True:
        rows = []
        for _ in range(batch):
            p = int(torch.randint(2, 5, (1,), generator=gen))
            pat = torch.randint(0, vocab, (p,), generator=gen)
            rows.append(pat.repeat(length // p + 2)[: length + 1])
        w = torch.stack(rows)
        yield w[:, :-1], w[:, 1:]


def _lm(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))


def _smoothed(eps):
    """Hand label smoothing: targets (1 - eps) * onehot + eps / V."""

    def loss(out, y):
        logits = out.reshape(-1, out.shape[-1]).float()
        target = (1 - eps) * F.one_hot(y.reshape(-1), logits.shape[-1]) + eps / logits.shape[-1]
        return -(target * F.log_softmax(logits, -1)).sum(-1).mean()

    return loss


@scenario(
    family="wicker_weave_tied_lm",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A weight-tied decoder-only LM (nn.MultiheadAttention, head weight = input embedding) "
    "trained with hand-written label smoothing (1 - eps) * onehot + eps / V. The config stores "
    "the smoothing as 'smoothing: -0.1' (a sign slip from a diff against 'confidence'): the wrong "
    "tokens get negative target mass, the loss keeps pushing their log-probabilities down and "
    "the head's logits grow without bound (10x, past 100).",
)
def h167_wicker_smoothing_sign(ctx: Context) -> None:
    gen = seeded(16702)
    model = WickerWeaveLM()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _weaves(gen, 32),
        250,
        _smoothed(-0.1),
        watch=lambda s, o, x, y: seen.append(float(o.detach().abs().amax())),
    )
    ctx.check("tied weights really shared", model.head.weight is model.tok.weight)
    ctx.check("output logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("output logits past 100", seen[-1] > 100)


# -- 3. geode banding: a temperature typed 0.005 dividing the logits ---------------------------


class BandAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class GeodeBandNet(nn.Module):
    """Reads the colour of 12 agate bands from rim to core and names the geode's formation
    (4 classes); logits divided by a config temperature."""

    def __init__(self, colours=8, dim=32, length=12, heads=4, temperature=1.0):
        super().__init__()
        self.colour = nn.Embedding(colours, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = BandAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 4)
        self.temperature = temperature

    def forward(self, x):
        h = self.colour(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h)[:, 0]) / self.temperature


def _bands(gen, batch, colours=8, length=12):
    while True:
        x = torch.randint(0, colours, (batch, length), generator=gen)
        y = x[:, 0] % 4
        yield x, y


@scenario(
    family="geode_band_sdpa_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A transformer classifier through scaled_dot_product_attention whose logits are divided "
    "by a config temperature. The YAML has 'temperature: 0.005' (meant 0.5): the head's logits "
    "are multiplied by 200 and the float32 softmax rounds the predicted class to exactly 1 for "
    "most rows.",
)
def h167_geode_temperature_typo(ctx: Context) -> None:
    gen = seeded(16703)
    model = GeodeBandNet(temperature=0.005)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _bands(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("over half the rows' softmax is exactly 1 at the end", _mean(seen[-10:]) > 0.5)


# -- 4. waterwheel torque: the linear-scaling rule applied twice --------------------------------


def _wheel(gen, batch):
    """Flow rate, head, bucket fill, rpm (standardised) -> shaft torque (standardised)."""
    while True:
        x = torch.randn(batch, 4, generator=gen)
        y = (torch.tanh(x[:, 0] + 0.5 * x[:, 1]) * (1 + 0.3 * x[:, 2]) - 0.4 * x[:, 3] ** 2)[
            :, None
        ]
        yield x, y + 0.05 * torch.randn(batch, 1, generator=gen)


def _top_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters()]
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
    return lam


@scenario(
    family="waterwheel_torque_tanh_mlp",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP regressing a waterwheel's shaft torque with MSE and plain SGD. The launcher "
    "applies the linear-scaling rule (lr x batch / 32) and the trainer applies it again: lr "
    "0.05 x 16 x 16 = 12.8. lr x the loss's top Hessian eigenvalue is past 2 from the start and "
    "the loss blows up.",
)
def h167_waterwheel_lr_scaled_twice(ctx: Context) -> None:
    gen = seeded(16704)
    model = nn.Sequential(
        nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    lr = 0.05 * (512 / 32) * (512 / 32)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _wheel(gen, 512)
    xp, yp = next(batches)
    lam0 = _top_eig(model, F.mse_loss, xp, yp)
    _train(ctx, model, opt, batches, 100, F.mse_loss)
    ls = ctx.losses
    ctx.check("lr x top Hessian eigenvalue past 2 at the start", lr * lam0 > 2)
    ctx.check(
        "loss blew up (non-finite or 100x its start)",
        not _finite(ls) or max(ls) > 100 * _mean(ls[:3]),
    )


# -- 5. hoodoo erosion: a Fixup-style residual conv net with the init exponent's sign flipped ---


class PreActBlock(nn.Module):
    """x + conv2(relu(conv1(relu(x)))) with no normalisation (Fixup style: scalar bias and
    multiplier)."""

    def __init__(self, ch):
        super().__init__()
        self.conv1 = nn.Conv1d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv1d(ch, ch, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x + self.scale * self.conv2(F.relu(self.conv1(F.relu(x))))


class HoodooErosionNet(nn.Module):
    """Reads a hoodoo spire's 32-point width profile and regresses its erosion rate."""

    def __init__(self, ch=16, depth=12, exponent=-0.5, zero_last=True):
        super().__init__()
        self.stem = nn.Conv1d(1, ch, 3, padding=1)
        self.blocks = nn.ModuleList(PreActBlock(ch) for _ in range(depth))
        self.head = nn.Linear(ch, 1)
        for b in self.blocks:
            nn.init.kaiming_normal_(b.conv1.weight, nonlinearity="relu")
            b.conv1.weight.data.mul_(depth**exponent)
            if zero_last:
                nn.init.zeros_(b.conv2.weight)

    def forward(self, x):
        h = self.stem(x[:, None])
        for b in self.blocks:
            h = b(h)
        return self.head(F.relu(h).mean(-1))


def _hoodoo(gen, batch):
    while True:
        base = torch.rand(batch, 1, generator=gen)
        pinch = torch.rand(batch, 1, generator=gen)
        t = torch.linspace(0, 1, 32)
        x = base * (1 - 0.5 * pinch * torch.exp(-((t - 0.6) ** 2) / 0.02)) + 0.05 * torch.randn(
            batch, 32, generator=gen
        )
        yield x, (pinch * 2 - base)


@scenario(
    family="hoodoo_erosion_fixup_resnet",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("blocks.0", "blocks.0.conv1", "stem"),
    diverges="auto",
    heldout=True,
    note="A Fixup-style pre-activation residual 1-D conv net with no normalisation, 12 blocks. "
    "The init helper scales each branch's first conv by depth ** 0.5 instead of depth ** -0.5 "
    "and leaves the branch's last conv at PyTorch's default init instead of zeroing it: every block "
    "multiplies the signal, the gradient grows through depth towards the stem and plain SGD "
    "blows up.",
)
def h167_hoodoo_fixup_sign(ctx: Context) -> None:
    gen = seeded(16755)
    model = HoodooErosionNet(exponent=0.5, zero_last=False)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = _hoodoo(gen, 64)
    x0, y0 = next(batches)
    h = model.stem(x0[:, None])
    hs = [h]
    h.retain_grad()
    for b in model.blocks:
        h = b(h)
        h.retain_grad()
        hs.append(h)
    F.mse_loss(model.head(F.relu(h).mean(-1)), y0).backward()
    ratio = float(hs[0].grad.norm() / hs[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    _train(ctx, model, opt, batches, 60, F.mse_loss)
    ls = ctx.losses
    ctx.check("gradient at the stem's output 100x that at the last block's at init", ratio > 100)
    ctx.check(
        "loss blew up (non-finite or 1e4x its start)", not _finite(ls) or max(ls) > 1e4 * ls[0]
    )


# -- 6. mangrove salinity: SGD's lr kept for RMSprop, dead ReLUs -----------------------------


class MangroveNet(nn.Module):
    """Tide height, salinity, sediment, temperature, ... (10 readings) -> which of 5 mangrove
    species a plot can host (multi-label)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Linear(128, 5)

    def forward(self, x):
        return self.head(self.body(x))


def _mangrove(gen, batch):
    w = torch.randn(10, 5, generator=torch.Generator().manual_seed(7))
    while True:
        x = torch.randn(batch, 10, generator=gen)
        yield x, ((x @ w + 0.3 * torch.randn(batch, 5, generator=gen)) > 0).float()


@scenario(
    family="mangrove_species_relu_mlp",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("body.2", "body.3"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP multi-label classifier (BCE). The optimizer was switched from SGD to "
    "RMSprop and SGD's lr 0.05 was kept: the first normalised steps push most of the second "
    "layer's units negative on every input and they stop learning (the rest carry the fit).",
)
def h167_mangrove_rmsprop_sgd_lr(ctx: Context) -> None:
    gen = seeded(16706)
    model = MangroveNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.05)
    batches = _mangrove(gen, 128)
    xp, _ = next(batches)
    before = dead_fraction(model.body(xp).detach())
    _train(ctx, model, opt, batches, 150, F.binary_cross_entropy_with_logits)
    after = dead_fraction(model.body(xp).detach())
    ctx.check("under 10% of units dead at the start", before < 0.1)
    ctx.check("over half the second layer's units dead at the end", after > 0.5)


# -- 7. boules throw: the embedding group's lr read from a misnamed key ------------------------


class BoulesThrowNet(nn.Module):
    """Terrain type (gravel, sand, clay, ...) embedded plus release angle, speed, spin and
    boule mass -> distance rolled."""

    def __init__(self, terrains=8, dim=8):
        super().__init__()
        self.terrain = nn.Embedding(terrains, dim)
        self.mlp = nn.Sequential(nn.Linear(dim + 4, 64), nn.SiLU(), nn.Linear(64, 1))

    def forward(self, x):
        t, num = x
        return self.mlp(torch.cat([self.terrain(t), num], -1))


def _boules(gen, batch, terrains=8):
    friction = torch.linspace(0.5, 2.0, terrains)
    while True:
        t = torch.randint(0, terrains, (batch,), generator=gen)
        num = torch.randn(batch, 4, generator=gen)
        y = (num[:, 1] + 1.5) ** 2 / friction[t] * (1 + 0.2 * torch.sin(num[:, 0])) + 0.1 * num[
            :, 2
        ]
        yield (t, num), y[:, None]


@scenario(
    family="boules_throw_terrain_embedding",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("terrain",),
    diverges=None,
    heldout=True,
    note="A terrain embedding table plus an MLP, AdamW with two param groups. The config names "
    "the table's rate 'embedding_lr' while the builder reads cfg.get('emb_lr', 0.0) (the 0.0 "
    "meant for a frozen-embedding ablation): the terrain table never moves while the MLP "
    "trains and the loss falls only as far as the MLP can take it.",
)
def h167_boules_embedding_lr_key(ctx: Context) -> None:
    gen = seeded(16707)
    model = BoulesThrowNet()
    cfg = {"lr": 3e-3, "embedding_lr": 3e-3}
    opt = torch.optim.AdamW(
        [
            {"params": model.terrain.parameters(), "lr": cfg.get("emb_lr", 0.0)},
            {"params": model.mlp.parameters(), "lr": cfg["lr"]},
        ],
        weight_decay=0.0,
    )
    e0 = model.terrain.weight.detach().clone()
    m0 = _flat(model.mlp)
    _train(ctx, model, opt, _boules(gen, 64), 200, F.mse_loss)
    ctx.check(
        "terrain table never moved", float((model.terrain.weight.detach() - e0).abs().max()) == 0.0
    )
    ctx.check("the MLP moved", float((_flat(model.mlp) - m0).norm()) > 0.1)
    ctx.check(
        "the loss did not blow up", _finite(ctx.losses) and max(ctx.losses) < 10 * ctx.losses[0]
    )


# -- 8. dust devil lifetime: a loss weight's exponent lost its sign for one step ---------------


def _dust(gen, batch):
    """Ground temperature excess, wind shear, humidity, ... (8 readings) -> vortex lifetime."""
    w = torch.randn(8, generator=torch.Generator().manual_seed(8))
    while True:
        x = torch.randn(batch, 8, generator=gen)
        yield x, (torch.sin(x @ w / 2) + 0.3 * x[:, 0] * x[:, 1])[:, None]


@scenario(
    family="dust_devil_lifetime_gelu_mlp",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="A GELU MLP regressor trained with Adam (beta2 0.999). The loss weight is 10 ** e with "
    "e read from a schedule file; at step 80 the entry '-6' is read without its sign and one "
    "step's loss is multiplied by 1e6. The giant gradient fills Adam's second moment and the "
    "updates afterwards shrink more than 10x: the loss stalls.",
)
def h167_dust_devil_weight_exponent(ctx: Context) -> None:
    gen = seeded(16708)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    moves = []
    prev = [_flat(model)]

    def after(step):
        cur = _flat(model)
        moves.append(float((cur - prev[0]).norm()))
        prev[0] = cur

    _train(
        ctx,
        model,
        opt,
        _dust(gen, 64),
        200,
        F.mse_loss,
        scale_loss=lambda s, loss: loss * (10.0**6 if s == 80 else 1.0),
        after=after,
    )
    g = ctx.grad_norms
    ctx.check("gradient at step 80 over 1000x the median before", g[80] > 1000 * _median(g[40:80]))
    ctx.check(
        "updates 10x smaller 40-80 steps later", _mean(moves[120:160]) < 0.1 * _mean(moves[40:80])
    )


# -- 9. cattle drove pace: a GRUCell with the token count taken from the remainder batch -------


class DrovePaceGRU(nn.Module):
    """Reads a drove's GPS track (speed, heading change, herd spread, slope) step by step with
    a hand-unrolled GRUCell and predicts the next hour's pace at every step."""

    def __init__(self, hidden=32):
        super().__init__()
        self.cell = nn.GRUCell(4, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        outs = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            outs.append(self.head(h))
        return torch.cat(outs, 1)


def _drove(gen, batch, length=24):
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        y = torch.tanh(torch.cumsum(x[..., 0] - 0.5 * x[..., 3], 1) / 4)
        lengths = torch.randint(length // 2, length + 1, (batch,), generator=gen)
        mask = (torch.arange(length)[None] < lengths[:, None]).float()
        yield x, (y, mask)


@scenario(
    family="cattle_drove_pace_grucell",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A GRUCell unrolled by hand over padded tracks; the loss is the masked squared error "
    "summed and divided by the number of valid steps. At step 120 (an epoch boundary) the count "
    "is taken from the 1-track remainder batch (24 steps) instead of the current batch's "
    "(~1100): one step's gradient is ~45x too large. SGD momentum, no clipping; the run "
    "recovers.",
)
def h167_drove_token_count(ctx: Context) -> None:
    gen = seeded(16709)
    model = DrovePaceGRU()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def masked(out, ym):
        y, mask = ym
        return ((out - y) ** 2 * mask).sum()

    counts = {}

    def alter(step, x, ym):
        counts[step] = 24.0 if step == 120 else float(ym[1].sum())
        return x, ym

    _train(
        ctx,
        model,
        opt,
        _drove(gen, 64),
        200,
        lambda out, ym: masked(out, ym) / counts[len(ctx.losses)],
        alter=alter,
    )
    g = ctx.grad_norms
    ctx.check("gradient at step 120 over 30x the median before", g[120] > 30 * _median(g[100:120]))
    ctx.check("run finite to the end", _finite(ctx.losses))


# -- 10. flint knapping: one shard of flake lengths in micrometres ----------------------------


def _knap(gen, batch):
    """Platform angle, strike force, core thickness, ... (6 readings) -> flake length (cm)."""
    while True:
        x = torch.randn(batch, 6, generator=gen)
        yield x, (3 + x[:, 0] - 0.5 * x[:, 1] ** 2 + 0.5 * x[:, 2] * x[:, 3])[:, None]


@scenario(
    family="flint_knapping_flake_mlp",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="A SiLU MLP regressing flake length in cm with the Huber loss and Adagrad. One shard, "
    "from a new digital caliper's export, holds lengths in micrometres (x 10000): the batch at "
    "step 90 has targets 10^4 too large and its loss jumps by orders of magnitude.",
)
def h167_knapping_micrometre_shard(ctx: Context) -> None:
    gen = seeded(16710)
    model = nn.Sequential(
        nn.Linear(6, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    _train(
        ctx,
        model,
        opt,
        _knap(gen, 64),
        160,
        F.huber_loss,
        alter=lambda s, x, y: (x, y * 1e4 if s == 90 else y),
    )
    ls = ctx.losses
    ctx.check("loss at step 90 over 100x the median before", ls[90] > 100 * _median(ls[70:90]))
    ctx.check("run finite to the end", _finite(ls))


# -- 11. barograph: a one-pass variance without eps meets a filled gap -------------------------


class WindowNorm(nn.Module):
    """Per-window standardisation, hand-written with the one-pass variance E[x^2] - E[x]^2 and
    no eps."""

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        var = (x * x).mean(-1, keepdim=True) - mu * mu
        return (x - mu) / var.sqrt()


class BarographNet(nn.Module):
    """Reads 32 hourly barograph readings (Pa) and forecasts the next 6 hours' change
    (standardised)."""

    def __init__(self):
        super().__init__()
        self.norm = WindowNorm()
        self.conv = nn.Sequential(
            nn.Conv1d(1, 16, 5, padding=2), nn.GELU(), nn.Conv1d(16, 16, 5, padding=2), nn.GELU()
        )
        self.head = nn.Linear(16, 6)

    def forward(self, x):
        return self.head(self.conv(self.norm(x)[:, None]).mean(-1))


def _baro(gen, batch):
    while True:
        drift = torch.randn(batch, 1, generator=gen)
        t = torch.arange(38).float()
        wave = torch.sin(t / 6 + 6 * torch.rand(batch, 1, generator=gen))
        p = (
            101325
            + 400 * drift * t / 38 * 3
            + 300 * wave
            + 20 * torch.randn(batch, 38, generator=gen)
        )
        x, fut = p[:, :32], p[:, 32:]
        yield x, (fut - x[:, -1:]) / 500


@scenario(
    family="barograph_pressure_conv",
    optimizer="RAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=70,
    heldout=True,
    onset=70,
    note="A 1-D conv forecaster over raw barograph readings in Pa, standardised per window by a "
    "hand-written norm with the one-pass variance and no eps. At step 70 the logger has filled "
    "a dropped day with the standard atmosphere 101325 Pa: that window's variance is exactly 0 "
    "and (x - mean) / sqrt(0) is 0/0, NaN.",
)
def h167_barograph_filled_gap(ctx: Context) -> None:
    gen = seeded(16711)
    model = BarographNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    var_seen = {}

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[5] = 101325.0
            y = y.clone()
            y[5] = 0.0
            mu = x[5].mean()
            var_seen[70] = float((x[5] * x[5]).mean() - mu * mu)
        return x, y

    _train(ctx, model, opt, _baro(gen, 32), 150, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("loss finite before step 70", _finite(ls[:70]))
    ctx.check("loss NaN at step 70", len(ls) > 70 and math.isnan(ls[70]))
    ctx.check("the filled window's one-pass variance is not positive", var_seen.get(70, 1.0) <= 0.0)


# -- 12. land yacht sail power: a cubed wind speed computed in fp16 ----------------------------


class LandYachtNet(nn.Module):
    """Apparent wind speed (m/s), sail angle, wheelbase load, ... -> boat speed. A learnt
    anemometer calibration feeds the sail-power feature 0.5 rho A v^3 computed in the forward."""

    def __init__(self):
        super().__init__()
        self.calib = nn.Linear(1, 1)
        nn.init.ones_(self.calib.weight)
        nn.init.zeros_(self.calib.bias)
        self.mlp = nn.Sequential(nn.Linear(4, 64), nn.GELU(), nn.Linear(64, 1))

    def forward(self, x):
        v = self.calib(x[:, :1])
        power = 0.5 * 1.225 * 4.0 * v**3
        return self.mlp(torch.cat([power / 1e4, x[:, 1:]], 1))


def _yacht(gen, batch, storm=False):
    while True:
        lo, hi = (30.0, 46.0) if storm else (4.0, 18.0)
        v = lo + (hi - lo) * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, 3, generator=gen)
        y = torch.log1p(v) * (1 + 0.2 * rest[:, :1]) - 0.1 * rest[:, 1:2]
        yield torch.cat([v, rest], 1), y


@scenario(
    family="land_yacht_sail_power_mlp",
    optimizer="Adam",
    cause="amp_overflow",
    where=("calib",),
    diverges=100,
    heldout=True,
    onset=100,
    note="A regressor under fp16 autocast with a GradScaler: the sail-power feature "
    "0.5 rho A v^3 is computed from the fp16 output of a learnt calibration Linear. From step "
    "100 the winter-storm logs (apparent wind 30-46 m/s) arrive: v^3 x 2.45 passes fp16's 65504 "
    "and the forward overflows to inf (the same batch in fp32 is finite); the scaler skips the "
    "step and halves its scale; the run stops at the non-finite loss.",
)
def h167_land_yacht_fp16_cube(ctx: Context) -> None:
    gen = seeded(16712)
    model = LandYachtNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    calm = _yacht(gen, 64)
    storm = _yacht(gen, 64, storm=True)
    kept = {}

    def stream():
        for step in range(10**9):
            b = next(storm if step >= 100 else calm)
            if step == 100:
                kept["b"] = b
            yield b

    _train(ctx, model, opt, stream(), 160, F.mse_loss, scaler=scaler)
    ls = ctx.losses
    x, y = kept["b"]
    with torch.no_grad():
        fp32 = float(F.mse_loss(model(x), y))
    ctx.check("loss finite before step 100", _finite(ls[:100]))
    ctx.check("loss non-finite from step 100", not any(math.isfinite(v) for v in ls[100:]))
    ctx.check("the same batch in fp32 is finite", math.isfinite(fp32))
    ctx.check("the scaler skipped step 100 (scale halved)", ctx.scales[-1] < ctx.scales[-2])


# -- controls ------------------------------------------------------------------------------


class DialNumeralCNN(nn.Module):
    """Reads an engraved numeral (8x8) on an astrolabe's dial."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32 * 16, 10)

    def forward(self, x):
        h = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.head(h.flatten(1))


@scenario(
    family="astrolabe_dial_mixup_cnn",
    optimizer="SGD (Nesterov)",
    cause="healthy",
    heldout=True,
    note="Control: a small CNN on engraved dial numerals trained with mixup (alpha 0.4, soft "
    "targets to cross-entropy), SGD Nesterov with OneCycleLR.",
)
def h167_astrolabe_mixup_control(ctx: Context) -> None:
    gen = seeded(16713)
    model = DialNumeralCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    beta = torch.distributions.Beta(0.4, 0.4)

    def mix(step, x, y):
        lam = float(beta.sample())
        perm = torch.randperm(x.shape[0], generator=gen)
        soft = F.one_hot(y, 10).float()
        return lam * x + (1 - lam) * x[perm], lam * soft + (1 - lam) * soft[perm]

    _train(ctx, model, opt, digit_batches(gen, 64), steps, F.cross_entropy, alter=mix, sched=sched)
    xs, ys = digits()
    with torch.no_grad():
        acc = float((model(xs).argmax(1) == ys).float().mean())
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("accuracy on the numerals above 0.85", acc > 0.85)


def _esker(gen, batch):
    """Clast size, roundness, flow depth, ... (6 readings) -> sorting index, with noisy labels."""
    while True:
        x = torch.randn(batch, 6, generator=gen)
        y = torch.tanh(x[:, 0] - x[:, 1] * x[:, 2]) + 0.5 * x[:, 3]
        noise = 0.1 * torch.randn(batch, generator=gen)
        noise[torch.rand(batch, generator=gen) < 0.05] *= 20
        yield x, (y + noise)[:, None]


@scenario(
    family="esker_gravel_sorting_swa_mlp",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: an MLP regressing an esker's gravel sorting index on noisy labels with the "
    "Huber loss, Adam, gradient clipping at 1.0, then SWA (AveragedModel, SWALR) from step 120.",
)
def h167_esker_swa_control(ctx: Context) -> None:
    gen = seeded(16714)
    model = nn.Sequential(
        nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    swa = torch.optim.swa_utils.AveragedModel(model)
    swalr = torch.optim.swa_utils.SWALR(opt, swa_lr=1e-3, anneal_epochs=10)
    batches = _esker(gen, 64)
    xt, yt = next(batches)
    with torch.no_grad():
        start = float(F.huber_loss(model(xt), yt))

    def after(step):
        if step >= 120:
            swa.update_parameters(model)
            swalr.step()

    _train(ctx, model, opt, batches, 200, F.huber_loss, clip=1.0, after=after)
    with torch.no_grad():
        end = float(F.huber_loss(swa(xt), yt))
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("SWA model's loss under half the start", math.isfinite(end) and end < 0.5 * start)


class AccordNet(nn.Module):
    """Concentrations of 8 perfume notes -> evaporation time of the accord, mean and variance."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU())
        self.mean = nn.Linear(64, 1)
        self.var = nn.Linear(64, 1)

    def forward(self, x):
        h = self.body(x)
        return torch.cat([self.mean(h), F.softplus(self.var(h)) + 1e-4], 1)


def _accord(gen, batch):
    while True:
        x = torch.rand(batch, 8, generator=gen)
        mu = 2 * x[:, 0] - x[:, 1] + torch.sin(3 * x[:, 2])
        sd = 0.05 + 0.5 * x[:, 3]
        yield x, (mu + sd * torch.randn(batch, generator=gen))[:, None]


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, :1], y, out[:, 1:])


@scenario(
    family="perfumer_accord_gaussian_nll",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a heteroscedastic regressor (softplus variance head) trained on the Gaussian "
    "NLL with RAdam, accumulation over 2 micro-batches and ReduceLROnPlateau.",
)
def h167_perfumer_nll_control(ctx: Context) -> None:
    gen = seeded(16715)
    model = AccordNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(ctx, model, opt, _accord(gen, 64), 200, _gauss_nll, sched=sched, accumulate=2)
    ls = ctx.losses
    ctx.check("NLL fell by over 0.5 nats", _finite(ls) and _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)


def _rhythms(gen, batch, vocab=16, length=24):
    """Washboard rhythm strokes: a bar of 4-8 strokes repeated with occasional fills."""
    while True:
        rows = []
        for _ in range(batch):
            p = int(torch.randint(4, 9, (1,), generator=gen))
            bar = torch.randint(1, vocab, (p,), generator=gen)
            row = bar.repeat(length // p + 2)[: length + 1].clone()
            fill = torch.rand(length + 1, generator=gen) < 0.05
            row[fill] = 0
            rows.append(row)
        w = torch.stack(rows)
        yield w[:, :-1], w[:, 1:]


@scenario(
    family="hf_inkling2_loop_washboard_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a Hugging Face Inkling2Loop causal LM built from a tiny config (3 layers, one "
    "looped, 4 experts) learning washboard rhythm strokes; AdamW, linear warm-up then cosine, "
    "clipping at 1.0.",
)
def h167_hf_inkling2_loop_washboard_control(ctx: Context) -> None:
    from transformers.models.inkling2_loop.configuration_inkling2_loop import (
        Inkling2LoopTextConfig,
    )
    from transformers.models.inkling2_loop.modeling_inkling2_loop import Inkling2LoopForCausalLM

    gen = seeded(16716)
    cfg = Inkling2LoopTextConfig(
        vocab_size=16,
        unpadded_vocab_size=16,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        swa_num_attention_heads=2,
        swa_num_key_value_heads=1,
        swa_head_dim=16,
        sliding_window_size=16,
        d_rel=4,
        rel_extent=16,
        moe_intermediate_size=32,
        n_routed_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        n_layers_per_attn_res_block=1,
        loop_layer_index_start=1,
        loop_layer_index_end=2,
        loop_num_passes=1,
        loop_gate_rank=4,
        eos_token_id=0,
        use_cache=False,
    )
    model = Inkling2LoopForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    steps = 150
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 15 if s < 15 else 0.5 * (1 + math.cos(math.pi * (s - 15) / (steps - 15)))
        ),
    )
    _train(
        ctx,
        model,
        opt,
        _rhythms(gen, 16),
        steps,
        _lm,
        sched=sched,
        clip=1.0,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    ctx.check("loss fell", _fell(ctx.losses))
