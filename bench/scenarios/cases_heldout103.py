"""Held-out set 103 (``h103_``): Hugging Face BLT (byte latent transformer), a vision
encoder-decoder (a Nougat-style page reader) and Xcodec (audio codec) from tiny configs; a
Hyena long-convolution LM, a stochastic-depth ResNet, a differentiable soft rasteriser of 2-D
shapes, a deep equilibrium model with implicit gradients, a kernel point convolution, a graph
autoencoder for link prediction, prototypical networks, a BYOL pair, a collaborative-filtering
autoencoder and a neural process, all written here."""

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
    lm_loss,
    scenario,
    seeded,
    text_batches,
)


def _finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


def _median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2]


def _cosine(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _train_step(ctx: Context, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    ctx.step(loss)


# -- Hugging Face BLT (byte latent transformer) ---------------------------------------------------


def _hf_blt(seed: int):
    from transformers import BltConfig, BltForCausalLM

    torch.manual_seed(seed)
    local = {"vocab_size": 260, "num_attention_heads": 2, "hidden_size_global": 64}
    config = BltConfig(
        vocab_size=260,
        patch_in_forward=False,
        cross_attn_k=2,
        encoder_hash_byte_group_size=[3],
        encoder_hash_byte_group_vocab=97,
        encoder_hash_byte_group_nb_functions=1,
        patcher_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 260,
            "intermediate_size": 32,
        },
        encoder_config={
            **local,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "intermediate_size": 64,
            "cross_attn_k": 2,
        },
        decoder_config={
            **local,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "intermediate_size": 64,
            "cross_attn_k": 2,
        },
        global_config={
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
        },
    )
    return BltForCausalLM(config)


def _blt_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x, use_cache=False).logits


GLOBAL_ATTN = (
    "model.global_transformer.layers.0.self_attn",
    "model.global_transformer.layers.1.self_attn",
)


def _qk_bound(model: nn.Module, x: torch.Tensor) -> float:
    """The largest |q| |k| / sqrt(d) over the global transformer's heads: a bound on its
    attention logits that the rotary embedding (a rotation) leaves unchanged."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name in GLOBAL_ATTN:
        attn = model.get_submodule(name)
        for part in ("q_proj", "k_proj"):
            mod = getattr(attn, part)
            hooks.append(
                mod.register_forward_hook(
                    lambda m, i, o, key=f"{name}.{part}": seen.__setitem__(key, o.detach())
                )
            )
    with torch.no_grad():
        _blt_logits(model, x)
    for h in hooks:
        h.remove()
    top = 0.0
    for name in GLOBAL_ATTN:
        q, k = seen[f"{name}.q_proj"], seen[f"{name}.k_proj"]
        heads = 2
        q = q.reshape(*q.shape[:-1], heads, -1)
        k = k.reshape(*k.shape[:-1], k.shape[-1] // (q.shape[-1]), -1)
        d = q.shape[-1]
        top = max(top, float(q.norm(dim=-1).amax() * k.norm(dim=-1).amax() / math.sqrt(d)))
    return top


@scenario(
    "h103_hf_blt_bytes",
    "adamw",
    "attention_logit_growth",
    where=GLOBAL_ATTN,
    diverges=None,
    heldout=True,
    onset=0,
    note="BLT byte LM whose global-transformer q/k projections sit in a parameter group at a "
    "30x learning rate without weight decay (a per-module multiplier applied to the wrong "
    "names): the query-key products grow without bound",
)
def h103_blt_qk_lr_multiplier(ctx: Context) -> None:
    gen = seeded(1031)
    model = _hf_blt(1031)
    qk = [
        p
        for n, p in model.named_parameters()
        if "global_transformer" in n and ("q_proj" in n or "k_proj" in n)
    ]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 1e-3}, {"params": qk, "lr": 3e-2, "weight_decay": 0.0}],
        weight_decay=0.01,
    )
    batches = text_batches(gen, batch=8, length=32, vocab=256)
    probe, _ = next(batches)
    start = _qk_bound(model, probe)
    ctx.attach(model, opt)
    for _ in range(160):
        x, y = next(batches)
        _train_step(ctx, opt, lm_loss(_blt_logits(model, x), y))
    end = _qk_bound(model, probe)
    ctx.check("q.k logit bound grew more than 10x", end > 10 * start)
    ctx.check("q.k logit bound above 30", end > 30)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "h103_hf_blt_bytes_control",
    "adamax",
    "healthy",
    heldout=True,
    note="BLT byte LM on standard-library source with Adamax, warmup and cosine decay",
)
def h103_blt_healthy(ctx: Context) -> None:
    gen = seeded(1032)
    model = _hf_blt(1032)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    batches = text_batches(gen, batch=8, length=32, vocab=256)
    ctx.attach(model, opt)
    steps = 160
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _cosine(step, steps, 4e-3, 15)
        x, y = next(batches)
        _train_step(ctx, opt, lm_loss(_blt_logits(model, x), y))
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell by a quarter", _mean(ctx.losses[-20:]) < 0.75 * _mean(ctx.losses[:10]))


# -- Hyena long-convolution LM ---------------------------------------------------------------------


class HyenaOperator(nn.Module):
    """Order-2 Hyena: projections, a short depthwise conv, and a long implicit filter (a small
    MLP over positional features, decayed) applied by FFT, with multiplicative gates."""

    def __init__(self, dim: int, length: int) -> None:
        super().__init__()
        self.length = length
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.short = nn.Conv1d(3 * dim, 3 * dim, 3, padding=2, groups=3 * dim)
        self.filter = nn.Sequential(nn.Linear(5, 32), nn.SiLU(), nn.Linear(32, dim))
        self.out_proj = nn.Linear(dim, dim)
        t = torch.linspace(0, 1, length)[:, None]
        feats = torch.cat([t, torch.sin(2 * math.pi * t), torch.cos(2 * math.pi * t)], 1)
        feats = torch.cat([feats, torch.sin(6 * math.pi * t), torch.cos(6 * math.pi * t)], 1)
        self.register_buffer("pos", feats)
        self.register_buffer("decay", torch.exp(-3.0 * t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        u = self.in_proj(x).transpose(1, 2)
        u = self.short(u)[..., :t]
        v, g1, g2 = u.split(d, dim=1)
        h = (self.filter(self.pos[:t]) * self.decay[:t]).T  # (d, t)
        n = 2 * t
        y = torch.fft.irfft(torch.fft.rfft(v * g1, n=n) * torch.fft.rfft(h, n=n), n=n)[..., :t]
        return self.out_proj((y * g2).transpose(1, 2))


class HyenaLM(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 32, layers: int = 2, length: int = 32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.mixers = nn.ModuleList(HyenaOperator(dim, length) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        for norm, mixer in zip(self.norms, self.mixers, strict=True):
            x = x + mixer(norm(x))
        return self.head(x)  # no final norm: the head reads the raw residual stream


@scenario(
    "h103_hyena_long_conv_lm",
    "adam",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=0,
    note="Hyena LM with no final norm before its head, fine-tuned on a small fixed set of "
    "byte windows with the head in a 60x learning-rate group: the output logits grow without "
    "bound as it memorises",
)
def h103_hyena_head_logits(ctx: Context) -> None:
    gen = seeded(1033)
    model = HyenaLM()
    stream = text_batches(gen, batch=16, length=32, vocab=128)
    fixed = [next(stream) for _ in range(4)]
    head = list(model.head.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adam([{"params": rest, "lr": 1e-3}, {"params": head, "lr": 6e-2}])
    with torch.no_grad():
        start = float(model(fixed[0][0]).abs().amax(-1).mean())
    ctx.attach(model, opt)
    for step in range(400):
        x, y = fixed[step % len(fixed)]
        _train_step(ctx, opt, lm_loss(model(x), y))
    with torch.no_grad():
        end = float(model(fixed[0][0]).abs().amax(-1).mean())
    ctx.check("max logit grew more than 10x", end > 10 * start)
    ctx.check("max logit above 25", end > 25)
    ctx.check("losses finite", _finite(ctx.losses))


# -- stochastic-depth ResNet -----------------------------------------------------------------------


class SDBlock(nn.Module):
    def __init__(self, ch: int, survive: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.survive = survive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.rand(()) > self.survive:
            return x
        r = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if not self.training:
            r = r * self.survive
        return F.relu(x + r)


class StochasticDepthResNet(nn.Module):
    def __init__(self, ch: int = 12, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, ch, 3, padding=1)
        self.blocks = nn.Sequential(
            *[SDBlock(ch, 1.0 - 0.2 * (i + 1) / blocks) for i in range(blocks)]
        )
        self.head = nn.Linear(ch, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(F.relu(self.stem(x.reshape(-1, 1, 8, 8))))
        return self.head(h.mean((2, 3)))


@scenario(
    "h103_stochastic_depth_resnet",
    "sgd_mom",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=0,
    note="stochastic-depth ResNet trained long on a 128-digit subset with no weight decay and "
    "a head at 8x the learning rate: once it fits, the logits keep scaling until the float32 "
    "softmax gives the target exactly 1.0",
)
def h103_sd_resnet_collapse(ctx: Context) -> None:
    gen = seeded(1034)
    model = StochasticDepthResNet()
    x_all, y_all = digits()
    x_sub, y_sub = x_all[:128], y_all[:128]
    head = list(model.head.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.SGD([{"params": rest, "lr": 0.1}, {"params": head, "lr": 0.8}], momentum=0.9)
    ctx.attach(model, opt)
    for _ in range(1000):
        idx = torch.randint(0, 128, (64,), generator=gen)
        x, y = x_sub[idx], y_sub[idx]
        ctx.targets(y)
        _train_step(ctx, opt, F.cross_entropy(model(x), y))
    with torch.no_grad():
        frac = collapsed_fraction(model(x_sub[:128]), y_sub[:128])
    ctx.check("over half the rows collapsed (p = 1.0 in float32)", frac > 0.5)
    ctx.check("losses finite", _finite(ctx.losses))


# -- differentiable soft rasteriser of 2-D shapes --------------------------------------------------


class SoftRasteriser(nn.Module):
    """K soft discs (centre, log radius, colour) rendered with a sigmoid edge and summed."""

    def __init__(self, discs: int = 6, size: int = 16, tau: float = 0.05) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.rand(discs, 2) * 0.6 + 0.2)
        self.log_radius = nn.Parameter(torch.full((discs,), math.log(0.12)))
        self.colours = nn.Parameter(torch.full((discs,), 0.5))
        g = torch.linspace(0, 1, size)
        yy, xx = torch.meshgrid(g, g, indexing="ij")
        self.register_buffer("grid", torch.stack([xx, yy], -1).reshape(-1, 2))
        self.tau = tau

    def forward(self) -> torch.Tensor:
        d = torch.cdist(self.grid, self.centres)  # (pixels, discs)
        cover = torch.sigmoid((self.log_radius.exp() - d) / self.tau)
        return cover @ self.colours


def _shape_target(gen: torch.Generator, size: int = 16) -> torch.Tensor:
    g = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    img = torch.zeros(size, size)
    for _ in range(3):
        c = torch.rand(2, generator=gen) * 0.6 + 0.2
        r = float(torch.rand((), generator=gen)) * 0.1 + 0.1
        img += ((xx - c[0]) ** 2 + (yy - c[1]) ** 2 < r * r).float()
    return img.clamp(max=1).reshape(-1)


def _top_eigenvalue(loss_fn, params: list[torch.Tensor], iters: int = 20) -> float:
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        hv = torch.autograd.grad(grads, params, grad_outputs=v)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    "h103_soft_raster_shapes",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="inverse rendering of a generated disc scene with a soft rasteriser; plain SGD whose "
    "warmup ends at a peak above 2 / the top Hessian eigenvalue: the loss oscillates and climbs",
)
def h103_raster_lr_above_sharpness(ctx: Context) -> None:
    gen = seeded(1035)
    model = SoftRasteriser()
    target = _shape_target(gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.002)

    def loss_fn() -> torch.Tensor:
        return F.mse_loss(model(), target) * 16

    ctx.attach(model, opt)
    lam = 0.0
    peak = 0.0
    for step in range(140):
        if step == 60:
            lam = _top_eigenvalue(loss_fn, list(model.parameters()))
            peak = 8.0 / lam
        if step >= 60:
            lr = 0.002 + (peak - 0.002) * min((step - 60) / 10, 1.0)
            for g in opt.param_groups:
                g["lr"] = lr
        _train_step(ctx, opt, loss_fn())
    pre = ctx.losses[50:60]
    ctx.check("peak learning rate above 2 / lambda_max", peak * lam > 2.0)
    ctx.check("loss fell before the peak", _mean(pre) < 0.8 * ctx.losses[0])
    later = [v if math.isfinite(v) else 1e9 for v in ctx.losses[100:]]
    ctx.check("loss after the peak stays above 2.5x before it", _mean(later) > 2.5 * _mean(pre))


# -- deep equilibrium model with implicit gradients ------------------------------------------------


class DEQ(nn.Module):
    """z* = tanh(cell(z*) + inject(x)), solved by iteration without a graph; the backward pass
    solves g = J^T g + dL/dz* by the same iteration (the implicit-function-theorem gradient)."""

    def __init__(self, hidden: int = 48, iters: int = 30) -> None:
        super().__init__()
        self.inject = nn.Linear(64, hidden)
        self.cell = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 10)
        self.iters = iters
        with torch.no_grad():
            self.cell.weight.mul_(0.5)

    def f(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return F.relu(self.cell(z) + u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.inject(x)
        with torch.no_grad():
            z = torch.zeros_like(u)
            for _ in range(self.iters):
                z = self.f(z, u)
        z = self.f(z.requires_grad_(), u)
        if z.requires_grad:
            z0 = z.detach().requires_grad_()
            f0 = self.f(z0, u.detach())

            def implicit(grad: torch.Tensor) -> torch.Tensor:
                g = grad
                for _ in range(self.iters):
                    g = torch.autograd.grad(f0, z0, g, retain_graph=True)[0] + grad
                return g

            z.register_hook(implicit)
        return self.head(z)


@scenario(
    "h103_deq_implicit_digits",
    "sgd_nesterov",
    "exploding_gradients",
    where=("cell",),
    diverges="auto",
    heldout=True,
    onset=100,
    note="ReLU deep equilibrium classifier trained with implicit gradients and no Jacobian "
    "regularisation; a warm restart at step 100 lifts the Nesterov rate 10x: the cell's gain "
    "passes 1, the fixed-point iterations stop contracting and the gradients grow geometrically",
)
def h103_deq_gain_past_one(ctx: Context) -> None:
    gen = seeded(1036)
    model = DEQ()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt)
    norms: list[float] = []
    gains: list[float] = []
    for step in range(200):
        for g in opt.param_groups:
            g["lr"] = 0.05 if step < 100 else 0.5
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        with torch.no_grad():
            gains.append(float(model.cell.weight.norm()))
    ctx.check(
        "grad norm finite and calm before the restart",
        _finite(norms[:100]) and max(norms[80:100]) < 20,
    )
    ctx.check(
        "gradient norm grew over 100x its pre-restart median",
        any(not math.isfinite(n) or n > 100 * _median(norms[80:100]) for n in norms[100:]),
    )


# -- kernel point convolution on generated point clouds --------------------------------------------


def _point_clouds(gen: torch.Generator, batch: int, n: int = 48):
    """2-D outlines of circles, squares and triangles, rotated, scaled and jittered."""
    y = torch.randint(0, 3, (batch,), generator=gen)
    t = torch.rand(batch, n, generator=gen)
    circle = torch.stack([torch.cos(2 * math.pi * t), torch.sin(2 * math.pi * t)], -1)
    side = (t * 4).floor()
    s = t * 4 - side
    sq = torch.stack(
        [
            torch.where(
                side == 0,
                2 * s - 1,
                torch.where(
                    side == 1,
                    torch.ones_like(s),
                    torch.where(side == 2, 1 - 2 * s, -torch.ones_like(s)),
                ),
            ),
            torch.where(
                side == 0,
                -torch.ones_like(s),
                torch.where(
                    side == 1, 2 * s - 1, torch.where(side == 2, torch.ones_like(s), 1 - 2 * s)
                ),
            ),
        ],
        -1,
    )
    corners = torch.tensor([[0.0, 1.0], [-0.87, -0.5], [0.87, -0.5]])
    side3 = (t * 3).floor().long().clamp(max=2)
    s3 = (t * 3 - side3)[..., None]
    tri = corners[side3] * (1 - s3) + corners[(side3 + 1) % 3] * s3
    pts = torch.where(
        (y == 0)[:, None, None], circle, torch.where((y == 1)[:, None, None], sq, tri)
    )
    a = torch.rand(batch, generator=gen) * 2 * math.pi
    rot = torch.stack([torch.cos(a), -torch.sin(a), torch.sin(a), torch.cos(a)], -1).reshape(
        -1, 2, 2
    )
    scale = 0.5 + torch.rand(batch, 1, 1, generator=gen)
    pts = pts @ rot * scale + 0.03 * torch.randn(batch, n, 2, generator=gen)
    return pts, y


class KPConv(nn.Module):
    """Kernel point convolution: each neighbour's features are weighted by its linear
    correlation to K fixed kernel points around the centre, one weight matrix per kernel point."""

    def __init__(self, cin: int, cout: int, kernel: int = 7, radius: float = 0.6) -> None:
        super().__init__()
        a = torch.arange(kernel - 1) * 2 * math.pi / (kernel - 1)
        kp = torch.cat([torch.zeros(1, 2), 0.5 * radius * torch.stack([a.cos(), a.sin()], -1)])
        self.register_buffer("kernel_points", kp)
        self.weight = nn.Parameter(torch.randn(kernel, cin, cout) / math.sqrt(cin * kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.radius = radius

    def forward(self, pts: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        rel = pts[:, None, :, :] - pts[:, :, None, :]  # (b, centre, neighbour, 2)
        near = (rel.norm(dim=-1) < self.radius).float()
        dist = (rel[..., None, :] - self.kernel_points).norm(dim=-1)  # (b, c, n, K)
        infl = (1 - dist / (0.5 * self.radius)).clamp(min=0) * near[..., None]
        agg = torch.einsum("bcnk,bni->bcki", infl, feats)
        return (
            torch.einsum("bcki,kio->bco", agg, self.weight) / near.sum(-1, keepdim=True) + self.bias
        )


class KPNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.kp1 = KPConv(1, 24)
        self.kp2 = KPConv(24, 32)
        self.head = nn.Linear(32, 3)

    def features(self, pts: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.kp1(pts, torch.ones(*pts.shape[:2], 1)))
        return self.kp2(pts, h)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(pts)).amax(1))


@scenario(
    "h103_kpconv_outlines",
    "adagrad",
    "loss_of_plasticity",
    where=("kp2",),
    diverges=None,
    heldout=True,
    onset=80,
    note="KPConv shape classifier; a schedule bug sets Adagrad's rate 60x for 8 steps at step "
    "80: the second KPConv's units are driven negative and stay dead, the loss stalls",
)
def h103_kpconv_dead_after_burst(ctx: Context) -> None:
    gen = seeded(1037)
    model = KPNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    ctx.attach(model, opt)
    probe, _ = _point_clouds(gen, 64)
    dead = []
    for step in range(200):
        for g in opt.param_groups:
            g["lr"] = 1.8 if 80 <= step < 88 else 0.03
        if step in (79, 199):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))
        x, y = _point_clouds(gen, 32)
        ctx.targets(y)
        _train_step(ctx, opt, F.cross_entropy(model(x), y))
    ctx.check("few dead units before the burst", dead[0] < 0.2)
    ctx.check("most units dead after it", dead[1] > 0.6)
    ctx.check(
        "loss stalled above its pre-burst level",
        _mean(ctx.losses[-30:]) > 1.2 * _mean(ctx.losses[60:80]),
    )


# -- graph autoencoder for link prediction ---------------------------------------------------------


def _sbm_graph(gen: torch.Generator, n: int = 120, blocks: int = 4):
    z = torch.arange(n) % blocks
    p = torch.where(z[:, None] == z[None, :], 0.15, 0.01)
    a = (torch.rand(n, n, generator=gen) < p).float().triu(1)
    a = a + a.T
    x = F.one_hot(z, blocks).float() + 0.5 * torch.randn(n, blocks, generator=gen)
    x = torch.cat([x, torch.randn(n, 12, generator=gen)], 1)
    edges = a.nonzero()
    edges = edges[edges[:, 0] < edges[:, 1]]
    order = torch.randperm(len(edges), generator=gen)
    test = edges[order[: len(edges) // 10]]
    train_a = a.clone()
    train_a[test[:, 0], test[:, 1]] = 0
    train_a[test[:, 1], test[:, 0]] = 0
    a_hat = train_a + torch.eye(n)
    d = a_hat.sum(1).rsqrt()
    return x, d[:, None] * a_hat * d[None, :], train_a


class GAE(nn.Module):
    def __init__(self, cin: int = 16, hidden: int = 32, latent: int = 16) -> None:
        super().__init__()
        self.enc1 = nn.Linear(cin, hidden)
        self.enc2 = nn.Linear(hidden, latent)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return adj @ self.enc2(F.relu(adj @ self.enc1(x)))


def _gae_loss(z: torch.Tensor, a: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    pos = a.nonzero()
    neg = torch.randint(0, len(a), pos.shape, generator=gen)
    score_p = (z[pos[:, 0]] * z[pos[:, 1]]).sum(-1)
    score_n = (z[neg[:, 0]] * z[neg[:, 1]]).sum(-1)
    return F.binary_cross_entropy_with_logits(
        torch.cat([score_p, score_n]),
        torch.cat([torch.ones_like(score_p), torch.zeros_like(score_n)]),
    )


@scenario(
    "h103_graph_autoencoder_links",
    "nadam",
    "adam_second_moment_poisoned",
    where=("enc1",),
    diverges=None,
    heldout=True,
    onset=15,
    note="GCN graph autoencoder for link prediction; at step 15 one node's feature row arrives "
    "in raw units (x 3e3, a unit mix-up in the feature pipeline): one giant gradient fills "
    "NAdam's second moment of the first layer, whose updates then stall for hundreds of steps",
)
def h103_gae_poisoned_moment(ctx: Context) -> None:
    gen = seeded(1038)
    x, adj, a = _sbm_graph(gen)
    model = GAE()
    opt = torch.optim.NAdam(model.parameters(), lr=0.01)
    ctx.attach(model, opt)
    v_before = v_after = 0.0
    for step in range(220):
        xs = x
        if step == 15:
            xs = x.clone()
            xs[7] = xs[7] * 3e3
        _train_step(ctx, opt, _gae_loss(model(xs, adj), a, gen))
        if step == 14:
            v_before = float(opt.state[model.enc1.weight]["exp_avg_sq"].max())
        if step == 15:
            v_after = float(opt.state[model.enc1.weight]["exp_avg_sq"].max())
    ctx.check("first layer's second moment jumped over 1e6x", v_after > 1e6 * v_before)
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check(
        "loss barely moved in the 200 steps after",
        ctx.losses[14] - _mean(ctx.losses[-20:]) < 0.5 * (ctx.losses[0] - ctx.losses[14]),
    )


@scenario(
    "h103_graph_autoencoder_links_control",
    "rprop",
    "healthy",
    heldout=True,
    note="the same GCN graph autoencoder trained full-batch with Rprop (sign-based steps)",
)
def h103_gae_rprop_healthy(ctx: Context) -> None:
    gen = seeded(1039)
    x, adj, a = _sbm_graph(gen)
    model = GAE()
    opt = torch.optim.Rprop(model.parameters(), lr=0.002)
    ctx.attach(model, opt)
    for _ in range(200):
        _train_step(ctx, opt, _gae_loss(model(x, adj), a, gen))
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell by a fifth", _mean(ctx.losses[-20:]) < 0.8 * _mean(ctx.losses[:5]))


# -- Hugging Face vision encoder-decoder (a Nougat-style page reader) ------------------------------


def _hf_ved(seed: int):
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    torch.manual_seed(seed)
    enc = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    dec = GPT2Config(
        vocab_size=16,
        n_positions=8,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=12,
        eos_token_id=13,
        is_decoder=True,
        add_cross_attention=True,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id = 12
    config.pad_token_id = 14
    return VisionEncoderDecoderModel(config=config)


def _digit_pages(gen: torch.Generator, batch: int = 32):
    """Two digits side by side on a 16x16 'page' (scaled to [0, 1]); the text to read is the
    two digits, then end-of-sequence."""
    x, y = digits()
    while True:
        i = torch.randint(0, len(y), (batch, 2), generator=gen)
        page = torch.zeros(batch, 1, 16, 16)
        page[:, 0, 4:12, :8] = x[i[:, 0]].reshape(-1, 8, 8)
        page[:, 0, 4:12, 8:] = x[i[:, 1]].reshape(-1, 8, 8)
        text = torch.stack([y[i[:, 0]], y[i[:, 1]], torch.full((batch,), 13)], 1)
        yield page, text


def _ved_loss(model: nn.Module, page: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=page, labels=text).loss


@scenario(
    "h103_hf_ved_page_reader",
    "adamw",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=240,
    note="ViT-encoder / GPT-2-decoder page reader (VisionEncoderDecoder from tiny configs); at "
    "step 240 one batch arrives with its transcripts encoded by another tokenizer (every id an "
    "unused one), the loss jumps, the run recovers",
)
def h103_ved_misencoded_batch(ctx: Context) -> None:
    gen = seeded(1040)
    model = _hf_ved(1040)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    pages = _digit_pages(gen)
    ctx.attach(model, opt)
    for step in range(320):
        page, text = next(pages)
        if step == 240:
            text = torch.full_like(text, 15)
        _train_step(ctx, opt, _ved_loss(model, page, text))
    pre = _median(ctx.losses[220:240])
    ctx.check("it learned to read before (loss under 1.2)", pre < 1.2)
    ctx.check("loss at the bad batch over 3x the median before it", ctx.losses[240] > 3 * pre)
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("run recovered", _mean(ctx.losses[-10:]) < 1.5 * pre)


@scenario(
    "h103_hf_ved_page_reader_control",
    "adamw",
    "healthy",
    heldout=True,
    note="the same ViT / GPT-2 page reader trained with AdamW, warmup and cosine decay",
)
def h103_ved_healthy(ctx: Context) -> None:
    gen = seeded(1041)
    model = _hf_ved(1041)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-3, weight_decay=0.01)
    pages = _digit_pages(gen)
    ctx.attach(model, opt)
    steps = 320
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _cosine(step, steps, 1.5e-3, 20)
        page, text = next(pages)
        _train_step(ctx, opt, _ved_loss(model, page, text))
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell by half", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:5]))


# -- prototypical networks (Siamese few-shot) ------------------------------------------------------


class ProtoEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, 32),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.reshape(-1, 1, 8, 8))


def _episodes(gen: torch.Generator, way: int = 5, shot: int = 5, query: int = 5):
    x, y = digits()
    by_class = [torch.nonzero(y == c).squeeze(1) for c in range(10)]
    while True:
        classes = torch.randperm(10, generator=gen)[:way]
        sup, qry = [], []
        for c in classes:
            idx = by_class[int(c)][
                torch.randperm(len(by_class[int(c)]), generator=gen)[: shot + query]
            ]
            sup.append(x[idx[:shot]])
            qry.append(x[idx[shot:]])
        yield torch.stack(sup), torch.cat(qry), torch.arange(way).repeat_interleave(query)


def _proto_loss(model: nn.Module, sup: torch.Tensor, qry: torch.Tensor, target: torch.Tensor):
    way, shot = sup.shape[:2]
    protos = model(sup.reshape(way * shot, -1)).reshape(way, shot, -1).mean(1)
    logits = -(torch.cdist(model(qry), protos) ** 2)
    return F.cross_entropy(logits, target)


@scenario(
    "h103_protonet_digit_episodes",
    "adadelta",
    "gradient_spike",
    where=("encoder.0",),
    diverges=None,
    heldout=True,
    onset=120,
    note="prototypical network on 5-way 5-shot digit episodes; at step 120 one support image "
    "comes from a sensor with its gain stuck high (x 12): its pixels drive one huge "
    "gradient through the first convolution, Adadelta's step stays bounded and the run "
    "carries on",
)
def h103_protonet_high_gain_support(ctx: Context) -> None:
    gen = seeded(1042)
    model = ProtoEncoder()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    eps = _episodes(gen)
    ctx.attach(model, opt)
    norms: list[float] = []
    for step in range(200):
        sup, qry, target = next(eps)
        if step == 120:
            sup = sup.clone()
            sup[2, 0] = sup[2, 0] * 12.0
        loss = _proto_loss(model, sup, qry, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(float(model.encoder[0].weight.grad.norm()))
        opt.step()
        ctx.step(loss)
    med = _median(norms[100:120])
    ctx.check("first-conv gradient at step 120 over 30x its median", norms[120] > 30 * med)
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check(
        "loss back to its level within 80 steps",
        _mean(ctx.losses[-20:]) < 1.3 * _mean(ctx.losses[100:120]),
    )


# -- BYOL self-supervised pair ---------------------------------------------------------------------


class L2Normalise(nn.Module):
    """x / ||x|| with no epsilon (the bug: a zero vector gives 0 / 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)


def _byol_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 64, 32, bias=False),
        nn.ReLU(),
        nn.Linear(32, 16, bias=False),
    )


class BYOL(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.online = _byol_net()
        self.predictor = nn.Sequential(
            nn.Linear(16, 32, bias=False), nn.ReLU(), nn.Linear(32, 16, bias=False)
        )
        self.target = _byol_net()
        self.target.load_state_dict(self.online.state_dict())
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.normalise = L2Normalise()

    def loss(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        p1 = self.normalise(self.predictor(self.online(v1)))
        p2 = self.normalise(self.predictor(self.online(v2)))
        with torch.no_grad():
            t1, t2 = self.normalise(self.target(v1)), self.normalise(self.target(v2))
        return (4 - 2 * (p1 * t2).sum(-1) - 2 * (p2 * t1).sum(-1)).mean()

    @torch.no_grad()
    def update_target(self, tau: float = 0.99) -> None:
        for t, o in zip(self.target.parameters(), self.online.parameters(), strict=True):
            t.mul_(tau).add_(o, alpha=1 - tau)


def _views(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    img = x.reshape(-1, 1, 8, 8)
    shift = torch.randint(-1, 2, (2,), generator=gen)
    img = torch.roll(img, (int(shift[0]), int(shift[1])), (2, 3))
    gain = 0.7 + 0.6 * torch.rand(len(img), 1, 1, 1, generator=gen)
    return (img * gain + 0.05 * torch.randn(img.shape, generator=gen)).clamp(min=0)


@scenario(
    "h103_byol_digit_views",
    "adam",
    "nonfinite",
    where=("normalise",),
    diverges=150,
    heldout=True,
    onset=150,
    note="BYOL on augmented digits with bias-free networks; at step 150 the loader pads a "
    "short batch with blank images whose views are exact zeros: the embeddings are zero and "
    "the epsilon-free L2 normalisation makes 0 / 0",
)
def h103_byol_blank_padding(ctx: Context) -> None:
    gen = seeded(1043)
    model = BYOL()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batches = digit_batches(gen, 48)
    ctx.attach(model, opt)
    for step in range(170):
        x, _ = next(batches)
        v1, v2 = _views(x, gen), _views(x, gen)
        if step == 150:
            v1[-8:] = 0.0
            v2[-8:] = 0.0
        _train_step(ctx, opt, model.loss(v1, v2))
        model.update_target()
    ctx.check("losses finite before the padded batch", _finite(ctx.losses[:150]))
    ctx.check("loss fell before it", _mean(ctx.losses[140:150]) < 0.8 * _mean(ctx.losses[:5]))
    ctx.check("loss non-finite from the padded batch", not math.isfinite(ctx.losses[150]))


# -- collaborative-filtering autoencoder (AutoRec) -------------------------------------------------


def _ratings(gen: torch.Generator, users: int = 400, items: int = 120, rank: int = 4):
    u = torch.randn(users, rank, generator=gen)
    v = torch.randn(items, rank, generator=gen)
    r = (u @ v.T / math.sqrt(rank)).tanh() * 2 + 3  # ratings in 1..5
    seen = torch.rand(users, items, generator=gen) < 0.25
    return r, seen


class AutoRec(nn.Module):
    def __init__(self, items: int = 120, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Linear(items, hidden)
        self.decoder = nn.Linear(hidden, items)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.sigmoid(self.encoder(r)))


def _autorec_run(ctx: Context | None, encoder_lr: float) -> tuple[list[float], float, float]:
    gen = seeded(1044)
    r, seen = _ratings(gen)
    model = AutoRec()
    opt = torch.optim.Adam(
        [
            {"params": model.encoder.parameters(), "lr": encoder_lr},
            {"params": model.decoder.parameters(), "lr": 3e-3},
        ]
    )
    if ctx is not None:
        ctx.attach(model, opt)
    losses: list[float] = []
    ratios: dict[str, list[float]] = {"encoder": [], "decoder": []}
    for _ in range(700):
        idx = torch.randint(0, len(r), (64,), generator=gen)
        mask = seen[idx]
        loss = ((model(r[idx] * mask) - r[idx]) ** 2 * mask).sum() / mask.sum()
        before = {k: getattr(model, k).weight.detach().clone() for k in ratios}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ctx is not None:
            ctx.step(loss)
        losses.append(float(loss.detach()))
        for k, w in before.items():
            ratios[k].append(float((getattr(model, k).weight.detach() - w).norm() / w.norm()))
    return losses, _median(ratios["encoder"]), _median(ratios["decoder"])


@scenario(
    "h103_autorec_item_ratings",
    "adam",
    "update_ratio_out_of_range",
    where=("encoder",),
    diverges=None,
    heldout=True,
    onset=0,
    note="item-based AutoRec whose encoder sits in a parameter group at 3e-7 (meant 3e-3, an "
    "exponent typo in a config): its updates are a millionth of its weights, only the decoder "
    "learns and the reconstruction error stays far above a correctly set run's",
)
def h103_autorec_encoder_rate_typo(ctx: Context) -> None:
    losses, enc, dec = _autorec_run(ctx, 3e-7)
    right, _, _ = _autorec_run(None, 3e-3)
    ctx.check("encoder update ratio under 1e-5 a step", enc < 1e-5)
    ctx.check("decoder update ratio over 1e-3", dec > 1e-3)
    ctx.check("losses finite", _finite(losses))
    ctx.check(
        "final loss over 1.5x a correctly set run's", _mean(losses[-30:]) > 1.5 * _mean(right[-30:])
    )


# -- neural process --------------------------------------------------------------------------------


def _sine_tasks(gen: torch.Generator, batch: int, context: int, targets: int = 32):
    amp = 0.5 + 1.5 * torch.rand(batch, 1, 1, generator=gen)
    phase = math.pi * torch.rand(batch, 1, 1, generator=gen)
    xc = 10 * torch.rand(batch, context, 1, generator=gen) - 5
    xt = 10 * torch.rand(batch, targets, 1, generator=gen) - 5
    yc = amp * torch.sin(xc + phase) + 0.05 * torch.randn(xc.shape, generator=gen)
    yt = amp * torch.sin(xt + phase) + 0.05 * torch.randn(xt.shape, generator=gen)
    return xc, yc, xt, yt


class SumAggregate(nn.Module):
    """Sums the context representations (a mean written as a sum, 'normalised later')."""

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r.sum(1)


class ConditionalNP(nn.Module):
    def __init__(self, aggregate: nn.Module, dim: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(2, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.aggregate = aggregate
        self.decoder = nn.Sequential(
            nn.Linear(dim + 1, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 2)
        )

    def forward(self, xc: torch.Tensor, yc: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        r = self.aggregate(self.encoder(torch.cat([xc, yc], -1)))
        scale = 1.0 / xc.shape[1]
        r = (r * scale)[:, None].expand(-1, xt.shape[1], -1)
        return self.decoder(torch.cat([r, xt], -1))


def _np_nll(out: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
    mu, raw = out.float().chunk(2, -1)
    sigma = 0.05 + F.softplus(raw)
    return (0.5 * ((yt - mu) / sigma) ** 2 + sigma.log() + 0.5 * math.log(2 * math.pi)).mean()


@scenario(
    "h103_neural_process_sines",
    "rmsprop",
    "amp_overflow",
    where=("aggregate",),
    diverges="auto",
    heldout=True,
    onset=120,
    note="conditional neural process under fp16 autocast with a GradScaler whose aggregator "
    "sums the context representations in half precision before dividing; at step 120 a "
    "curriculum lifts the context sets from 16 to 100000 points: the sum overflows fp16, every "
    "step is skipped and the scale collapses",
)
def h103_np_fp16_sum_overflow(ctx: Context) -> None:
    gen = seeded(1045)
    model = ConditionalNP(SumAggregate())
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    scales: list[float] = []
    for step in range(136):
        long = step >= 120
        xc, yc, xt, yt = _sine_tasks(gen, 4 if long else 8, 100_000 if long else 16)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(xc, yc, xt)
        loss = _np_nll(out, yt)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(float(scaler.get_scale()))
        ctx.step(loss)
    ctx.check("losses finite before the long contexts", _finite(ctx.losses[:120]))
    ctx.check("loss fell before them", _mean(ctx.losses[110:120]) < _mean(ctx.losses[:5]))
    ctx.check("non-finite from the long contexts", not _finite(ctx.losses[120:]))
    ctx.check("scale collapsed over 1000x", scales[-1] < scales[119] / 1000)


# -- Hugging Face Xcodec (audio codec): fine-tuning its decoder on tones ---------------------------


def _hf_xcodec(seed: int):
    from transformers import XcodecConfig, XcodecModel

    torch.manual_seed(seed)
    config = XcodecConfig(
        target_bandwidths=[0.5, 1.0],
        codebook_size=64,
        acoustic_model_config={
            "encoder_hidden_size": 4,
            "decoder_hidden_size": 16,
            "hidden_size": 16,
            "codebook_size": 64,
            "codebook_dim": 8,
            "n_codebooks": 2,
        },
        semantic_model_config={
            "model_type": "hubert",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "conv_dim": (8,) * 7,
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 4,
        },
    )
    return XcodecModel(config)


def _tones(gen: torch.Generator, batch: int = 4, length: int = 3200, rate: int = 16000):
    t = torch.arange(length) / rate
    freq = 200 + 1800 * torch.rand(batch, 2, 1, generator=gen)
    amp = 0.1 + 0.4 * torch.rand(batch, 2, 1, generator=gen)
    env = torch.exp(-t * 20 * torch.rand(batch, 1, 1, generator=gen))
    wave = (amp * torch.sin(2 * math.pi * freq * t)).sum(1, keepdim=True) * env
    return wave + 0.005 * torch.randn(wave.shape, generator=gen)


def _codec_loss(out: torch.Tensor, wave: torch.Tensor) -> torch.Tensor:
    out = out[..., : wave.shape[-1]]
    spec = [
        torch.stft(w.squeeze(1), 256, 64, window=torch.hann_window(256), return_complex=True).abs()
        for w in (out, wave)
    ]
    return F.l1_loss(out, wave) + F.l1_loss(torch.log1p(spec[0]), torch.log1p(spec[1]))


@scenario(
    "h103_hf_xcodec_tones",
    "radam",
    "healthy",
    heldout=True,
    note="Xcodec (tiny config) with its tokenizer frozen, its acoustic decoder fine-tuned on "
    "generated decaying two-tone clips with RAdam, an L1 plus log-spectrogram loss and warmup",
)
def h103_xcodec_decoder_finetune(ctx: Context) -> None:
    gen = seeded(1046)
    model = _hf_xcodec(1046)
    train = [p for n, p in model.named_parameters() if n.startswith(("acoustic_decoder", "fc2"))]
    ids = {id(p) for p in train}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    opt = torch.optim.RAdam(train, lr=6e-3)
    ctx.attach(model, opt)
    steps = 150
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _cosine(step, steps, 6e-3, 10)
        wave = _tones(gen)
        _train_step(ctx, opt, _codec_loss(model(wave).audio_values, wave))
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell by a tenth", _mean(ctx.losses[-20:]) < 0.9 * _mean(ctx.losses[:10]))
