"""Held-out scenarios, set 80 (``h80_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each fault's own checks held or
each control trained normally).

Families: Hugging Face Pix2Struct, SigLIP, OWLv2, ALIGN (EfficientNet-like) and GIT vision towers
from configs, each behind a hand-written head on digits or generated images; hand-written
involution network, deformable convolution (learned offsets, ``grid_sample``), MobileOne-style
re-parameterisable blocks, CrossViT (two patch sizes, cross-attention class tokens),
Transformer-in-Transformer, HorNet recursive gated convolution, Visual Attention Network
(large-kernel attention), SSD-style single-shot detector on generated boxes, DDIM-sampled
diffusion training, CutMix training of a small CNN, EfficientViT-style ReLU linear attention.

Optimizers: AdamW, Adam (one under fp16 autocast with a GradScaler), NAdam (decoupled weight
decay), RAdam, Adamax, RMSprop, Adagrad, ASGD, SGD, SGD with momentum, and steadygrad.optim's
Lion, Grams and AdaBelief.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    grad_norm,
    scenario,
    seeded,
)

# -- shared helpers ------------------------------------------------------------------------------


def _up16(x: torch.Tensor) -> torch.Tensor:
    """8x8 digits (flat) to 1x16x16 images (nearest)."""
    return F.interpolate(x.reshape(-1, 1, 8, 8), scale_factor=2, mode="nearest")


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _tiny_vit_kwargs(dim: int = 32) -> dict:
    return dict(
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
        num_channels=1,
    )


class TowerHead(nn.Module):
    """A Hugging Face vision tower, mean-pooled tokens, a linear head."""

    def __init__(self, tower: nn.Module, dim: int, out: int = 10) -> None:
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(dim, out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower(pixel_values=x).last_hidden_state.mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# -- 1. Pix2Struct vision tower: T5-style unscaled attention with a high learning rate -----------


def _flattened_patches(img: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """Pix2Struct's input: per patch (row id, column id, pixels), ids counted from 1."""
    b, c, h, w = img.shape
    rows, cols = h // patch, w // patch
    p = img.unfold(2, patch, patch).unfold(3, patch, patch)  # b, c, rows, cols, patch, patch
    p = p.permute(0, 2, 3, 1, 4, 5).reshape(b, rows * cols, -1)
    r = torch.arange(1, rows + 1).repeat_interleave(cols).float()
    q = torch.arange(1, cols + 1).repeat(rows).float()
    ids = torch.stack([r, q], -1).expand(b, -1, -1)
    return torch.cat([ids, p], -1)


class Pix2StructDigits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import Pix2StructVisionConfig, Pix2StructVisionModel

        config = Pix2StructVisionConfig(
            hidden_size=32,
            d_ff=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_embed_hidden_size=16,
            d_kv=16,
            seq_len=16,
            dropout_rate=0.0,
            attention_dropout=0.0,
        )
        self.tower = Pix2StructVisionModel(config)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fp = _flattened_patches(_up16(x))
        h = self.tower(flattened_patches=fp, attention_mask=torch.ones(fp.shape[:2]))
        return self.head(h.last_hidden_state.mean(1))


@scenario(
    "h80_hf_pix2struct_vision_digits",
    "adamw",
    "attention_logit_growth",
    where=("tower.encoder.layer.0.attention", "tower.encoder.layer.1.attention"),
    diverges=None,
    heldout=True,
    note="T5-style attention has no 1/sqrt(d) scale; the LR was copied from a scaled model",
    onset=0,
)
def h80_pix2struct_unscaled_attention_adamw(ctx: Context) -> None:
    """Pix2Struct's vision encoder does not scale q.k (T5 style, it relies on its init). The
    fine-tuning recipe was copied from a ViT that does, with its LR of 2e-2 and no weight decay:
    the query/key weights grow and the pre-softmax logits run away, attention goes one-hot."""
    gen = seeded(8001)
    model = Pix2StructDigits()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
    stats: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    qk: dict[str, torch.Tensor] = {}

    def grab(name):
        def hook(_m, _i, out):
            qk[name] = out.detach()

        return hook

    for i, layer in enumerate(model.tower.encoder.layer):
        layer.attention.query.register_forward_hook(grab(f"q{i}"))
        layer.attention.key.register_forward_hook(grab(f"k{i}"))

    def record(step: int) -> None:
        for i in (0, 1):
            if f"q{i}" not in qk:
                continue
            q = qk[f"q{i}"].reshape(*qk[f"q{i}"].shape[:2], 2, 16).transpose(1, 2)
            k = qk[f"k{i}"].reshape(*qk[f"k{i}"].shape[:2], 2, 16).transpose(1, 2)
            s = q @ k.transpose(-1, -2)
            p = torch.softmax(s, -1)
            ent = float(-(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean())
            stats[i].append((float(s.abs().max()), ent))

    fit(ctx, model, opt, digit_batches(gen), 300, before=record)
    grew = [
        stats[i][-1][0] > 20 * stats[i][1][0] and stats[i][-1][1] < 0.3 * stats[i][1][1]
        for i in (0, 1)
    ]
    ctx.check("pre-softmax logits grew 20x and entropy collapsed in a layer", any(grew))


# -- 2. SigLIP vision tower: a Poisson count head exponentiates in fp16 under autocast ----------


def photon_batches(gen: torch.Generator, batch: int = 32):
    """Generated photon-count images: a few Gaussian blobs, a total count between 1e2 and 3e5;
    the input is log1p of the per-pixel counts, the target the total count."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    while True:
        n = 3
        cx = torch.rand(batch, n, 1, 1, generator=gen) * 12 + 2
        cy = torch.rand(batch, n, 1, 1, generator=gen) * 12 + 2
        w = torch.rand(batch, n, 1, 1, generator=gen) + 0.2
        blob = (w * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 6.0)).sum(1)
        blob = blob / blob.sum((1, 2), keepdim=True)
        total = torch.exp(
            torch.rand(batch, generator=gen) * (math.log(3e5) - math.log(1e2)) + math.log(1e2)
        )
        counts = blob * total[:, None, None]
        yield (torch.log1p(counts) / 8.0)[:, None], total


class PoissonRate(nn.Module):
    """rate = exp(linear(features)): the count head."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.proj(h)).squeeze(-1)


class SiglipCounter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        config = SiglipVisionConfig(**_tiny_vit_kwargs(32), vision_use_head=False)
        self.tower = SiglipVisionModel(config)
        self.rate = PoissonRate(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rate(self.tower(pixel_values=x).last_hidden_state.mean(1))


def _poisson_nll(rate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Poisson negative log-likelihood per count (up to a constant), on rates."""
    return (rate - y * torch.log(rate + 1e-8)).mean() / 1e3


@scenario(
    "h80_hf_siglip_vision_photon_counts",
    "adam",
    "amp_overflow",
    where="rate",
    diverges="auto",
    heldout=True,
    note="exp of an fp16 linear output overflows at 11.1; counts reach 3e5",
    onset=0,
)
def h80_siglip_poisson_exp_fp16_adam(ctx: Context) -> None:
    """A SigLIP vision tower regresses photon counts with a Poisson head that returns
    ``exp(linear(h))``. Under fp16 autocast the linear output is fp16 and so is the exp: once
    the predicted log-rate of a bright image passes log(65504) = 11.09 the rate is inf, the loss
    NaN, and the GradScaler skips that step and (almost) every one after it."""
    gen = seeded(8002)
    model = SiglipCounter()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    overflow_steps: list[int] = []
    step_box = [0]

    def hook(_m, _i, out):
        if out.dtype == torch.float16 and not torch.isfinite(out).all():
            overflow_steps.append(step_box[0])

    model.rate.register_forward_hook(hook)

    def before(step: int) -> None:
        step_box[0] = step

    fit(
        ctx,
        model,
        opt,
        photon_batches(gen),
        300,
        loss_fn=_poisson_nll,
        classifier=False,
        scaler=scaler,
        amp=True,
        before=before,
    )
    first = overflow_steps[0] if overflow_steps else None
    ctx.check("the fp16 exp in the rate head overflowed", first is not None)
    ctx.check(
        "finite before the overflow, steps skipped after",
        first is not None
        and all(_finite(v) for v in ctx.losses[:first])
        and ctx.scales[-1] < 1e-3 * max(ctx.scales),
    )
    x, _ = next(photon_batches(torch.Generator().manual_seed(1)))
    with torch.no_grad():
        h = model.tower(pixel_values=x).last_hidden_state.mean(1)
        ctx.check("the same head is finite in fp32", bool(torch.isfinite(model.rate(h)).all()))


# -- 3. OWLv2 vision tower: a z-loss with the wrong sign ---------------------------------------


@scenario(
    "h80_hf_owlv2_vision_digits",
    "sg_lion",
    "output_logit_divergence",
    where="head",
    diverges="auto",
    heldout=True,
    note="z-loss term subtracted instead of added",
    onset=0,
)
def h80_owlv2_zloss_sign_lion(ctx: Context) -> None:
    """An OWLv2 vision tower with a linear digit head, trained with Lion and a z-loss meant to
    keep log Z near 0 (``+ 1e-3 * lse**2``) but written with a minus: log Z is pushed away from
    0 at a steady rate by the sign updates and the head's logits drift up and up."""
    gen = seeded(8003)
    from transformers import Owlv2VisionConfig, Owlv2VisionModel

    model = TowerHead(Owlv2VisionModel(Owlv2VisionConfig(**_tiny_vit_kwargs(32))), 32)
    opt = sgo.Lion(model.parameters(), lr=1e-3)
    lse: list[float] = []
    held: list[torch.Tensor] = []

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = torch.logsumexp(out, -1)
        lse.append(float(z.detach().mean()))
        held[:] = [z]
        return F.cross_entropy(out, y)

    def z_loss(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss - 1e-3 * (held[0] ** 2).mean()  # meant: + 1e-4 * lse**2

    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 32),
        240,
        loss_fn=loss_fn,
        extra_loss=z_loss,
        forward=lambda m, x: m(_up16(x)),
    )
    ctx.check("log Z drifted far up", lse[-1] > 8 * max(abs(lse[1]), 1.0) and lse[-1] > 20)


# -- 4. ALIGN's EfficientNet vision tower: one batch partly read without pixel scaling ----------


@scenario(
    "h80_hf_align_vision_digits",
    "rmsprop",
    "data_outlier",
    where=(),
    diverges=170,
    heldout=True,
    note="12 of 64 images from a shard decoded as raw 0-255 values",
    onset=170,
)
def h80_align_raw_pixels_batch_rmsprop(ctx: Context) -> None:
    """An EfficientNet-style ALIGN vision tower (MBConv, squeeze-excite, BatchNorm) with a digit
    head, RMSprop as in EfficientNet's recipe. At step 170 a dozen images of the batch come from
    a shard whose loader skipped the /255 scaling (and /16 for digits): their pixels are 4080x
    too large, the batch statistics are swamped and the loss jumps."""
    gen = seeded(8004)
    from transformers import AlignVisionConfig, AlignVisionModel

    config = AlignVisionConfig(
        num_channels=1,
        image_size=8,
        kernel_sizes=[3, 3, 3],
        in_channels=[32, 16, 24],
        out_channels=[16, 24, 32],
        strides=[1, 2, 2],
        num_block_repeats=[1, 1, 1],
        expand_ratios=[1, 4, 4],
        depthwise_padding=[],
        hidden_dim=64,
        drop_connect_rate=0.0,
        depth_coefficient=1.0,
        width_coefficient=1.0,
    )
    tower = AlignVisionModel(config)

    class AlignHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = tower
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.tower(pixel_values=x.reshape(-1, 1, 8, 8)).pooler_output)

    model = AlignHead()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 170:
            x = x.clone()
            x[:12] = x[:12] * 16.0 * 255.0
        return x, y

    fit(ctx, model, opt, digit_batches(gen), 240, alter=alter)
    ctx.check(
        "loss spiked at 170", ctx.losses[170] > 4 * max(ctx.losses[160:170]) and ctx.losses[170] > 1
    )


# -- 5. GIT vision tower: a healthy control --------------------------------------------------------


@scenario(
    "h80_hf_git_vision_digits",
    "sg_adabelief",
    "healthy",
    heldout=True,
    note="GIT (CLIP-like) vision tower, AdaBelief",
)
def h80_git_vision_healthy_adabelief(ctx: Context) -> None:
    gen = seeded(8005)
    from transformers import GitVisionConfig, GitVisionModel

    model = TowerHead(GitVisionModel(GitVisionConfig(**_tiny_vit_kwargs(32))), 32)
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3, weight_decay=1e-4)
    fit(ctx, model, opt, digit_batches(gen), 260, forward=lambda m, x: m(_up16(x)))
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check(
        "trained: loss fell by half, finite", last < 0.5 * first and all(map(_finite, ctx.losses))
    )


# -- 6. involution network: one un-averaged accumulated gradient kills the kernel generator ------


class Involution(nn.Module):
    """Involution (Li et al. 2021): a per-pixel kernel generated from the pixel's own features
    (reduce -> ReLU -> span), shared across the channels of a group, applied by unfold."""

    def __init__(self, channels: int, kernel: int = 3, groups: int = 2, reduction: int = 2):
        super().__init__()
        self.k, self.g = kernel, groups
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.act = nn.ReLU()
        self.span = nn.Conv2d(channels // reduction, kernel * kernel * groups, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        kern = self.span(self.act(self.reduce(x))).view(b, self.g, 1, self.k * self.k, h, w)
        patches = F.unfold(x, self.k, padding=self.k // 2)
        patches = patches.view(b, self.g, c // self.g, self.k * self.k, h, w)
        return (kern * patches).sum(3).view(b, c, h, w)


class InvolutionNet(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.inv1 = Involution(width)
        self.inv2 = Involution(width)
        self.fc = nn.Linear(width * 16, 64)
        self.fc_act = nn.ReLU()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x.reshape(-1, 1, 8, 8)))
        x = F.relu(x + self.inv1(x))
        x = F.max_pool2d(F.relu(x + self.inv2(x)), 2)
        return self.head(self.fc_act(self.fc(x.flatten(1))))


@scenario(
    "h80_involution_net_digits",
    "sgd",
    "loss_of_plasticity",
    where=("stem", "fc"),
    diverges=None,
    heldout=True,
    note="gradient accumulated over 48 micro-batches, not averaged, applied once",
    onset=150,
)
def h80_involution_dead_relu_sgd(ctx: Context) -> None:
    """An involution network on digits, plain SGD. At step 150 the loop switches to gradient
    accumulation for a larger effective batch, but the first accumulated gradient (48
    micro-batches) is applied without dividing by 48: one giant step pushes the hidden layer's
    pre-activations below zero for every input, its ReLUs die and never come back."""
    gen = seeded(8006)
    model = InvolutionNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = digit_batches(gen, 32)
    ctx.attach(model, opt)
    xs, _ = digits()
    probe = xs[:256]
    dead: dict[int, tuple[float, float]] = {}
    for step in range(260):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if step == 150:  # the accumulation bug: 47 more micro-batches summed in, not averaged
            for _ in range(47):
                xa, ya = next(batches)
                F.cross_entropy(model(xa), ya).backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step in (149, 259):
            with torch.no_grad():
                stem = F.relu(model.stem(probe.reshape(-1, 1, 8, 8)))
                fc = model.fc_act(model.fc(_inv_trunk(model, probe)))
            dead[step] = (dead_fraction(stem), dead_fraction(fc))
    ctx.check("stem ReLUs alive before the step", dead[149][0] < 0.1)
    ctx.check("stem and fc ReLUs mostly dead after", dead[259][0] > 0.7 and dead[259][1] > 0.8)
    ctx.check(
        "loss stuck near chance",
        sum(ctx.losses[-20:]) / 20 > 2.0 and sum(ctx.losses[130:150]) / 20 < 1.2,
    )


def _inv_trunk(model: InvolutionNet, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(model.stem(x.reshape(-1, 1, 8, 8)))
    x = F.relu(x + model.inv1(x))
    return F.max_pool2d(F.relu(x + model.inv2(x)), 2).flatten(1)


# -- 7. deformable convolution: offsets normalised by (W - 1) on a one-pixel-wide map ------------


class DeformConv(nn.Module):
    """Deformable 3x3 convolution: offsets from a conv (zero-initialised), bilinear sampling with
    grid_sample at the 9 shifted positions, then a 1x1 mix over (channels x 9)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.offset = nn.Conv2d(cin, 18, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.mix = nn.Conv2d(cin * 9, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        off = self.offset(x).view(b, 9, 2, h, w)
        ky, kx = torch.meshgrid(torch.arange(-1.0, 2.0), torch.arange(-1.0, 2.0), indexing="ij")
        gy, gx = torch.meshgrid(torch.arange(h * 1.0), torch.arange(w * 1.0), indexing="ij")
        py = gy + ky.reshape(9, 1, 1) + off[:, :, 0]
        px = gx + kx.reshape(9, 1, 1) + off[:, :, 1]
        # pixel coordinates to [-1, 1] (align_corners=True): divides by (size - 1)
        grid = torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], -1)
        grid = grid.reshape(b, 9 * h, w, 2)
        sampled = F.grid_sample(x, grid, align_corners=True, padding_mode="zeros")
        sampled = sampled.view(b, c, 9, h, w).reshape(b, c * 9, h, w)
        return self.mix(sampled)


class DeformNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.deform = DeformConv(24, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.deform(x))
        return self.head(x.mean((2, 3)))


@scenario(
    "h80_deformable_conv_digits",
    "adamax",
    "nonfinite",
    where="deform",
    diverges=205,
    heldout=True,
    note="aspect-ratio crop 4 px wide: a 1-px map, 0/0 in the offset normalisation",
    onset=205,
)
def h80_deform_narrow_crop_adamax(ctx: Context) -> None:
    """A deformable-conv net on 16x16 digits with random aspect-ratio crops (widths 8-16,
    resized per batch). The offset normalisation divides by (W - 1) of the feature map. At step
    205 the jitter draws a 4-pixel-wide crop: after two stride-2 convs the map is one pixel
    wide, W - 1 = 0, the sampling grid is 0/0 and the deformable layer returns NaN."""
    gen = seeded(8007)
    model = DeformNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    bad: list[int] = []
    step_box = [0]

    def hook(m, _i, out):
        if not torch.isfinite(out).all():
            bad.append(step_box[0])

    model.deform.register_forward_hook(hook)
    others = [m for n, m in model.named_children() if n != "deform"]
    first_other: list[int] = []
    for m in others:
        m.register_forward_hook(
            lambda _m, i, o: (
                first_other.append(step_box[0])
                if not torch.isfinite(i[0]).all() and not first_other
                else None
            )
        )

    def crop(step: int, x: torch.Tensor, y: torch.Tensor):
        step_box[0] = step
        img = _up16(x)
        width = 4 if step == 205 else int(torch.randint(8, 17, (1,), generator=gen))
        left = (16 - width) // 2
        return img[..., left : left + width], y

    fit(ctx, model, opt, digit_batches(gen), 240, alter=crop)
    ctx.check("deform output first non-finite at 205", bool(bad) and bad[0] == 205)
    ctx.check("finite before 205", all(_finite(v) for v in ctx.losses[:205]))
    ctx.check("NaN at 205", not _finite(ctx.losses[205]))


# -- 8. MobileOne-style blocks: one parameter group's LR typed 100x too large --------------------


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class MobileOneBlock(nn.Module):
    """Train-time MobileOne block: ``branches`` kxk conv+BN branches, a 1x1 conv+BN scale branch
    and (when shapes allow) a BN identity branch, summed and ReLU'd; re-parameterisable into a
    single conv for inference (not done here)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, branches: int = 2) -> None:
        super().__init__()
        self.branches = nn.ModuleList(ConvBN(cin, cout, 3, stride) for _ in range(branches))
        self.scale = ConvBN(cin, cout, 1, stride)
        self.skip = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scale(x) + sum(b(x) for b in self.branches)
        if self.skip is not None:
            out = out + self.skip(x)
        return F.relu(out)


class MobileOneNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            MobileOneBlock(1, 16), MobileOneBlock(16, 16), MobileOneBlock(16, 32, stride=2)
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x.reshape(-1, 1, 8, 8)).mean((2, 3)))


@scenario(
    "h80_mobileone_reparam_digits",
    "nadam",
    "update_ratio_out_of_range",
    where=("blocks.0.scale.conv", "blocks.1.scale.conv", "blocks.2.scale.conv"),
    diverges=None,
    heldout=True,
    note="param group of the 1x1 scale branches: weight decay 3e1 typed for 3e-5",
    onset=0,
)
def h80_mobileone_group_wd_typo_nadam(ctx: Context) -> None:
    """MobileOne-style re-parameterisable blocks on digits with NAdam (decoupled weight decay)
    and per-branch parameter groups (the recipe regularises the 1x1 scale branches separately).
    That group's weight decay was typed 3e1 for 3e-5: the decay shrinks those kernels every
    step, BatchNorm after them hides it from the loss, and their update/weight ratio settles an
    order of magnitude above the rest of the network's."""
    gen = seeded(8008)
    model = MobileOneNet()
    scale_w = [m.scale.conv.weight for m in model.blocks]
    ids = {id(p) for p in scale_w}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.NAdam(
        [{"params": rest}, {"params": scale_w, "weight_decay": 3e1}],
        lr=3e-3,
        weight_decay=1e-5,
        decoupled_weight_decay=True,
    )
    ratios: dict[str, list[float]] = {"scale": [], "rest": []}
    named = [(n, p) for n, p in model.named_parameters() if p.dim() > 1]
    prev: list[torch.Tensor] = []

    def before(step: int) -> None:
        if prev:
            for (n, p), q in zip(named, prev, strict=True):
                r = float((p.detach() - q).norm() / (q.norm() + 1e-12))
                ratios["scale" if n.endswith("scale.conv.weight") else "rest"].append(r)
        prev[:] = [p.detach().clone() for _, p in named]

    fit(ctx, model, opt, digit_batches(gen, 32), 220, before=before)
    late_scale = ratios["scale"][-300:]
    late_rest = ratios["rest"][-1000:]
    scale = sorted(late_scale)[len(late_scale) // 2]
    rest_med = sorted(late_rest)[len(late_rest) // 2]
    ctx.check("scale-branch update/weight ratio 10x the rest's", scale > 10 * rest_med)
    ctx.check("scale-branch ratio above 0.1", scale > 0.1)


# -- 9. CrossViT: grokking-style overfit of a small training set ----------------------------------


class CrossAttnCLS(nn.Module):
    """CrossViT fusion: one branch's class token attends to the other branch's patch tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        q = self.norm(cls)
        kv = self.norm(torch.cat([cls, tokens], 1))
        return cls + self.attn(q, kv, kv, need_weights=False)[0]


class CrossViT(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.embed_s = nn.Conv2d(1, dim, 2, 2)  # 16 small patches
        self.embed_l = nn.Conv2d(1, dim, 4, 4)  # 4 large patches
        self.cls_s = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_l = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_s = nn.Parameter(0.02 * torch.randn(1, 17, dim))
        self.pos_l = nn.Parameter(0.02 * torch.randn(1, 5, dim))

        def enc() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(
                dim, 2, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
            )

        self.enc_s, self.enc_l = enc(), enc()
        self.cross_s, self.cross_l = CrossAttnCLS(dim), CrossAttnCLS(dim)
        self.head = nn.Linear(2 * dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = x.reshape(-1, 1, 8, 8)
        b = img.shape[0]
        s = self.embed_s(img).flatten(2).transpose(1, 2)
        lg = self.embed_l(img).flatten(2).transpose(1, 2)
        s = self.enc_s(torch.cat([self.cls_s.expand(b, -1, -1), s], 1) + self.pos_s)
        lg = self.enc_l(torch.cat([self.cls_l.expand(b, -1, -1), lg], 1) + self.pos_l)
        cs = self.cross_s(s[:, :1], lg[:, 1:])
        cl = self.cross_l(lg[:, :1], s[:, 1:])
        return self.head(torch.cat([cs, cl], -1)[:, 0])


@scenario(
    "h80_crossvit_two_scale_digits",
    "sg_grams",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="64 training digits, 400 full-batch steps, no weight decay or label smoothing",
    onset=0,
)
def h80_crossvit_overfit_grams(ctx: Context) -> None:
    """A CrossViT (patch sizes 2 and 4, class tokens fused by cross-attention) trained with Grams
    on only 64 digits for 400 full-batch steps, without weight decay or label smoothing: it
    fits them, then keeps growing the margin until the float32 softmax of the training rows is
    exactly one-hot and their loss and gradients are zero."""
    seeded(8009)
    x, y = digits()
    xs, ys = x[:64], y[:64]

    def batches():
        while True:
            yield xs, ys

    model = CrossViT()
    opt = sgo.Grams(model.parameters(), lr=2e-2, betas=(0.9, 0.95))
    fit(ctx, model, opt, batches(), 400)
    with torch.no_grad():
        logits = model(xs)
    frac = collapsed_fraction(logits, ys)
    ctx.check("most training rows exactly one-hot in float32", frac > 0.5)
    ctx.check("training loss at (or near) zero", ctx.losses[-1] < 1e-6)


# -- 10. Transformer-in-Transformer: a resume that restarts the optimizer and the schedule ------


class TNTBlock(nn.Module):
    """Inner transformer over the pixels ("words") of each patch, folded into the patch
    ("sentence") embedding, then an outer transformer over patches."""

    def __init__(self, word: int = 8, dim: int = 32, words: int = 16) -> None:
        super().__init__()
        self.inner = nn.TransformerEncoderLayer(
            word, 2, 2 * word, dropout=0.0, batch_first=True, norm_first=True
        )
        self.fold = nn.Linear(words * word, dim)
        self.outer = nn.TransformerEncoderLayer(
            dim, 2, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )

    def forward(self, words: torch.Tensor, patches: torch.Tensor):
        b, n, w, d = words.shape
        words = self.inner(words.reshape(b * n, w, d)).reshape(b, n, w, d)
        patches = torch.cat([patches[:, :1], patches[:, 1:] + self.fold(words.flatten(2))], 1)
        return words, self.outer(patches)


class TNT(nn.Module):
    def __init__(self, word: int = 8, dim: int = 32) -> None:
        super().__init__()
        self.word_embed = nn.Linear(1, word)
        self.word_pos = nn.Parameter(0.02 * torch.randn(1, 1, 16, word))
        self.patch_embed = nn.Linear(16, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_pos = nn.Parameter(0.02 * torch.randn(1, 5, dim))
        self.blocks = nn.ModuleList(TNTBlock(word, dim) for _ in range(2))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = _up16(x)  # 16x16: four 8x8 patches, each pixel-pair pooled to a 4x4 "word" grid
        p = F.avg_pool2d(img, 2).unfold(2, 4, 4).unfold(3, 4, 4)  # b, 1, 2, 2, 4, 4
        p = p.reshape(-1, 4, 16)
        words = self.word_embed(p[..., None]) + self.word_pos
        patches = torch.cat([self.cls.expand(len(p), -1, -1), self.patch_embed(p)], 1)
        patches = patches + self.patch_pos
        for blk in self.blocks:
            words, patches = blk(words, patches)
        return self.head(self.norm(patches[:, 0]))


@scenario(
    "h80_tnt_pixel_words_digits",
    "adamw",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="resumed at 200 without optimizer or scheduler state: fresh AdamW at the peak LR",
    onset=200,
)
def h80_tnt_resume_fresh_state_adamw(ctx: Context) -> None:
    """A Transformer-in-Transformer on digits with AdamW and a cosine schedule (3e-3 down to
    3e-4 by step 200). The job is pre-empted and resumed at step 200 from a checkpoint that held
    only the model: the optimizer is rebuilt with empty moments and the schedule starts over at
    its peak. The first steps of a fresh Adam move every weight by about the full learning rate
    at ten times the current one, and the loss jumps before it settles again."""
    gen = seeded(8010)
    model = TNT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt)
    for step in range(320):
        if step == 200:  # the resume: the optimizer comes back with empty moments
            opt.state.clear()
        t = step if step < 200 else step - 200  # and the schedule starts over
        for g in opt.param_groups:
            g["lr"] = 1e-5 + 0.5 * (3e-3 - 1e-5) * (1 + math.cos(math.pi * min(t / 200, 1.0)))
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = sum(ctx.losses[180:200]) / 20
    ctx.check("loss jumped after the resume", max(ctx.losses[200:210]) > 4 * before)
    ctx.check("finite throughout", all(map(_finite, ctx.losses)))


# -- 11. HorNet: recursive gated convolution without its norms -----------------------------------


class GnConv(nn.Module):
    """HorNet's g^n convolution (order 3): a depthwise 7x7 conv gates a projection recursively,
    p_{k+1} = pw_k(p_k) * dw_k, so the block is a cubic polynomial in its input."""

    def __init__(self, dim: int, order: int = 3, scale: float = 1.0 / 3) -> None:
        super().__init__()
        self.dims = [dim // 2**i for i in range(order)][::-1]
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        self.dw = nn.Conv2d(sum(self.dims), sum(self.dims), 7, padding=3, groups=sum(self.dims))
        self.pws = nn.ModuleList(
            nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1)
        )
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pwa, abc = self.proj_in(x).split((self.dims[0], sum(self.dims)), 1)
        dws = (self.dw(abc) * self.scale).split(self.dims, 1)
        y = pwa * dws[0]
        for i, pw in enumerate(self.pws):
            y = pw(y) * dws[i + 1]
        return self.proj_out(y)


class HorBlock(nn.Module):
    def __init__(self, dim: int, norm: bool) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim) if norm else nn.Identity()
        self.gnconv = GnConv(dim)
        self.norm2 = nn.GroupNorm(1, dim) if norm else nn.Identity()
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gnconv(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HorNet(nn.Module):
    def __init__(self, dim: int = 16, depth: int = 3, norm: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, dim, 3, padding=1)
        self.blocks = nn.Sequential(*(HorBlock(dim, norm) for _ in range(depth)))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x.reshape(-1, 1, 8, 8))).mean((2, 3)))


@scenario(
    "h80_hornet_gnconv_digits",
    "sgd_mom",
    "exploding_gradients",
    where=("stem", "blocks.0", "blocks.0.gnconv"),
    diverges="auto",
    heldout=True,
    note="norm layers switched off (norm=False) in a cubic gated-conv stack, no clipping",
    onset=0,
)
def h80_hornet_no_norm_sgd_momentum(ctx: Context) -> None:
    """A three-block HorNet (order-3 recursive gated convolutions) built with ``norm=False`` (a
    flag meant for the re-parameterised export), its convs LeCun-initialised by a generic init
    helper, trained with SGD + momentum and no clipping. Each block multiplies three projections
    of its input: as the weights grow, the blocks' outputs and gradients grow polynomially, which
    grows the weights faster, until the gradient overflows."""
    gen = seeded(8011)
    model = HorNet(norm=False)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
    opt = torch.optim.SGD(model.parameters(), lr=0.035, momentum=0.9)
    fit(ctx, model, opt, digit_batches(gen, 32), 315)
    g = [v if _finite(v) else float("inf") for v in ctx.grad_norms]
    early = sorted(g[20:120])[50]
    ctx.check("gradient norm rose over steps 120-300", sorted(g[200:300])[50] > 3 * early)
    ctx.check("then overflowed", max(g) > 1e5 * early and not _finite(ctx.losses[-1]))


# -- 12. Visual Attention Network: a step schedule with gamma 10 instead of 0.1 -----------------


class LKA(nn.Module):
    """Large-kernel attention: 5x5 depthwise, 7x7 depthwise dilated 3, 1x1; multiplies input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.dw_dil = nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim)
        self.pw = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.pw(self.dw_dil(self.dw(x)))


class VANBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.proj1 = nn.Conv2d(dim, dim, 1)
        self.lka = LKA(dim)
        self.proj2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.proj2(self.lka(F.gelu(self.proj1(self.norm1(x)))))
        return x + self.mlp(self.norm2(x))


class VAN(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, dim, 3, padding=1)
        self.blocks = nn.Sequential(VANBlock(dim), VANBlock(dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x.reshape(-1, 1, 8, 8))).mean((2, 3)))


@scenario(
    "h80_van_large_kernel_attention_digits",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="MultiStepLR gamma=10 (meant 0.1): LR 0.2 -> 2 at step 150",
    onset=150,
)
def h80_van_step_schedule_gamma_typo_sgd(ctx: Context) -> None:
    """A Visual Attention Network (large-kernel attention) on digits with plain SGD and a step
    schedule whose gamma was typed 10 for 0.1: the LR goes from 0.2 to 2 at step 150, past
    what the curvature allows; within a few steps the loss jumps and then blows up."""
    gen = seeded(8012)
    model = VAN()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[150, 200], gamma=10.0)
    fit(ctx, model, opt, digit_batches(gen, 32), 180, before=lambda s: sched.step() if s else None)
    pre = sum(ctx.losses[130:150]) / 20
    late = [v if _finite(v) else float("inf") for v in ctx.losses[150:]]
    ctx.check("loss fell before the milestone", pre < 0.85 * sum(ctx.losses[:20]) / 20)
    ctx.check("blew up after the LR went up", max(late) > 10 * pre)


# -- 13. SSD-style detector: one step backpropagates the fp16 loss scale -------------------------


def box_batches(gen: torch.Generator, batch: int = 32):
    """16x16 noise images with one bright rectangle; target = (cx, cy, w, h) in [0, 1]."""
    while True:
        img = 0.1 * torch.randn(batch, 1, 16, 16, generator=gen)
        wh = torch.randint(3, 9, (batch, 2), generator=gen)
        x0 = (torch.rand(batch, generator=gen) * (16 - wh[:, 0])).long()
        y0 = (torch.rand(batch, generator=gen) * (16 - wh[:, 1])).long()
        for i in range(batch):
            img[i, 0, y0[i] : y0[i] + wh[i, 1], x0[i] : x0[i] + wh[i, 0]] += 1.0
        box = torch.stack([x0 + wh[:, 0] / 2, y0 + wh[:, 1] / 2, wh[:, 0], wh[:, 1]], 1) / 16
        yield img, box.float()


class SSD(nn.Module):
    """A 4x4 grid of cells with two anchors each (sizes 0.25, 0.5): objectness logits and box
    offsets (dx, dy, log dw, log dh) from a shared conv."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.cls = nn.Conv2d(32, 2, 3, padding=1)
        self.loc = nn.Conv2d(32, 8, 3, padding=1)
        c = (torch.arange(4.0) + 0.5) / 4
        cy, cx = torch.meshgrid(c, c, indexing="ij")
        anchors = [
            torch.stack([cx, cy, torch.full_like(cx, s), torch.full_like(cx, s)], -1)
            for s in (0.25, 0.5)
        ]
        self.register_buffer("anchors", torch.stack(anchors, 2).reshape(-1, 4))  # 32 x 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        cls = self.cls(f).permute(0, 2, 3, 1).reshape(len(x), -1, 1)
        loc = self.loc(f).permute(0, 2, 3, 1).reshape(len(x), -1, 4)
        return torch.cat([cls, loc], -1)  # b x 32 x 5


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of (cx, cy, w, h) boxes: a (n, 4) against b (m, 4)."""
    a0, a1 = a[:, None, :2] - a[:, None, 2:] / 2, a[:, None, :2] + a[:, None, 2:] / 2
    b0, b1 = b[None, :, :2] - b[None, :, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2
    inter = (torch.min(a1, b1) - torch.max(a0, b0)).clamp_min(0).prod(-1)
    return inter / (a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter)


def ssd_loss(anchors: torch.Tensor):
    def loss(out: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        iou = _iou(box, anchors)  # b x 32
        pos = iou > 0.35
        pos[torch.arange(len(box)), iou.argmax(1)] = True  # every box gets its best anchor
        cls = F.binary_cross_entropy_with_logits(out[..., 0], pos.float())
        t = torch.cat(
            [
                (box[:, None, :2] - anchors[None, :, :2]) / anchors[None, :, 2:],
                torch.log(box[:, None, 2:] / anchors[None, :, 2:]),
            ],
            -1,
        )
        reg = F.smooth_l1_loss(out[..., 1:][pos], t.expand(len(box), -1, -1)[pos])
        return cls + reg

    return loss


@scenario(
    "h80_ssd_single_shot_boxes",
    "adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="step 160 backprops loss * 65536 (fp16 loss scale left in, no unscale)",
    onset=160,
)
def h80_ssd_unscaled_loss_once_adam(ctx: Context) -> None:
    """An SSD-style single-shot detector on generated boxes, Adam. At step 160 a code path
    kept from fp16 training multiplies the loss by the static loss scale 65536 before backward
    and never unscales: one gradient 65536x the usual size lands in every parameter's second
    moment. Adam normalises that one step, but for hundreds of steps after it every update is
    divided by the poisoned sqrt(v): the detector stops improving."""
    gen = seeded(8013)
    model = SSD()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    params = list(model.parameters())
    moves: list[float] = []
    prev: list[torch.Tensor] = []

    def before(step: int) -> None:
        if prev:
            moves.append(
                float(sum((p.detach() - q).norm() ** 2 for p, q in zip(params, prev, strict=True)))
            )
        prev[:] = [p.detach().clone() for p in params]

    fit(
        ctx,
        model,
        opt,
        box_batches(gen),
        320,
        loss_fn=ssd_loss(model.anchors),
        classifier=False,
        before=before,
        extra_loss=lambda s, loss: loss * 65536.0 if s == 160 else loss,
    )
    before_upd = sorted(moves[100:158])[29] ** 0.5
    after_upd = sorted(moves[-60:])[30] ** 0.5
    ctx.check("late updates 5x smaller than before the step", after_upd < before_upd / 5)
    ctx.check(
        "loss stalled at 3x its level before the step",
        sum(ctx.losses[-20:]) > 3 * sum(ctx.losses[140:160]),
    )


# -- 14. DDIM-sampled diffusion: a healthy control -----------------------------------------------


class EpsNet(nn.Module):
    """A small conv noise predictor for 8x8 digits with a sinusoidal time embedding."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.t_proj = nn.Linear(16, width)
        self.conv_in = nn.Conv2d(1, width, 3, padding=1)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.norm1 = nn.GroupNorm(4, width)
        self.norm2 = nn.GroupNorm(4, width)
        self.conv_out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(1000.0) * torch.arange(8.0) / 8)
        emb = t[:, None].float() * freqs[None]
        emb = self.t_proj(torch.cat([emb.sin(), emb.cos()], -1))[:, :, None, None]
        h = self.conv_in(x) + emb
        h = h + self.conv1(F.silu(self.norm1(h)))
        h = h + self.conv2(F.silu(self.norm2(h)))
        return self.conv_out(h)


@scenario(
    "h80_ddim_diffusion_digits",
    "radam",
    "healthy",
    heldout=True,
    note="epsilon-prediction DDPM training, DDIM sampling (10 steps, eta 0) at the end",
)
def h80_ddim_diffusion_healthy_radam(ctx: Context) -> None:
    gen = seeded(8014)
    T = 200
    betas = torch.linspace(1e-4, 0.05, T)
    abar = torch.cumprod(1 - betas, 0)
    model = EpsNet(width=16)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    batches = digit_batches(gen, 32)
    ctx.attach(model, opt)
    for _ in range(250):
        x0 = next(batches)[0].reshape(-1, 1, 8, 8) * 2 - 1
        t = torch.randint(0, T, (len(x0),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t), eps)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():  # DDIM, eta = 0, 10 steps
        x = torch.randn(16, 1, 8, 8, generator=gen)
        ts = torch.linspace(T - 1, 0, 10).long()
        for i, t in enumerate(ts):
            a = abar[t]
            a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
            eps = model(x, t.repeat(16))
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check("trained: noise-prediction loss fell by half", last < 0.5 * first)
    ctx.check("DDIM samples finite", bool(torch.isfinite(x).all()))


# -- 15. CutMix training of a small CNN: a healthy control -----------------------------------------


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.head = nn.Linear(32 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


@scenario(
    "h80_cutmix_small_cnn_digits",
    "asgd",
    "healthy",
    heldout=True,
    note="CutMix (Beta(1,1) box, p=0.5), averaged SGD",
)
def h80_cutmix_cnn_healthy_asgd(ctx: Context) -> None:
    gen = seeded(8015)
    model = SmallCNN()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=100)
    batches = digit_batches(gen, 64)
    beta = torch.distributions.Beta(1.0, 1.0)
    ctx.attach(model, opt)
    for _ in range(250):
        x, y = next(batches)
        img = x.reshape(-1, 1, 8, 8)
        lam = 1.0
        perm = torch.randperm(len(y), generator=gen)
        if float(torch.rand(1, generator=gen)) < 0.5:
            lam = float(beta.sample())
            cut = int(round(8 * math.sqrt(1 - lam)))
            cx, cy = (int(v) for v in torch.randint(0, 8, (2,), generator=gen))
            x0, x1 = max(cx - cut // 2, 0), min(cx + cut - cut // 2, 8)
            y0, y1 = max(cy - cut // 2, 0), min(cy + cut - cut // 2, 8)
            img = img.clone()
            img[:, :, y0:y1, x0:x1] = img[perm][:, :, y0:y1, x0:x1]
            lam = 1 - (x1 - x0) * (y1 - y0) / 64
        ctx.targets(y if lam >= 0.5 else y[perm])
        out = model(img)
        loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    xs, ys = digits()
    model.eval()
    with torch.no_grad():
        acc = float((model(xs[:512]).argmax(1) == ys[:512]).float().mean())
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check(
        "trained: loss fell by half, clean accuracy > 0.85", last < 0.5 * first and acc > 0.85
    )


# -- 16. EfficientViT-style ReLU linear attention: a healthy control -------------------------------


class LiteMLA(nn.Module):
    """EfficientViT's multi-scale linear attention, single scale: ReLU kernels,
    out = relu(q) (relu(k)^T v) / (relu(q) sum relu(k) + eps)."""

    def __init__(self, dim: int, heads: int = 2, eps: float = 1e-6) -> None:
        super().__init__()
        self.heads, self.eps = heads, eps
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        q, k = F.relu(q), F.relu(k)
        kv = k @ v.transpose(-1, -2)  # b, heads, d, d
        num = (kv.transpose(-1, -2) @ q).reshape(b, c, h, w)
        den = (k.sum(-1, keepdim=True).transpose(-1, -2) @ q).reshape(b, self.heads, 1, h * w)
        den = den.expand(-1, -1, c // self.heads, -1).reshape(b, c, h, w)
        return self.norm(self.proj(num / (den + self.eps)))


class MBConv(nn.Module):
    def __init__(self, dim: int, expand: int = 4) -> None:
        super().__init__()
        self.expand = nn.Conv2d(dim, dim * expand, 1)
        self.dw = nn.Conv2d(dim * expand, dim * expand, 3, padding=1, groups=dim * expand)
        self.project = nn.Conv2d(dim * expand, dim, 1)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.project(F.hardswish(self.dw(F.hardswish(self.expand(x))))))


class EfficientViT(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, dim, 3, padding=1), nn.BatchNorm2d(dim))
        self.local1 = MBConv(dim)
        self.attn = LiteMLA(dim)
        self.local2 = MBConv(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardswish(self.stem(x.reshape(-1, 1, 8, 8)))
        x = x + self.local1(x)
        x = x + self.attn(x)
        x = x + self.local2(x)
        return self.head(x.mean((2, 3)))


@scenario(
    "h80_efficientvit_linear_attention_digits",
    "adagrad",
    "healthy",
    heldout=True,
    note="ReLU linear attention with its eps, MBConv, Adagrad",
)
def h80_efficientvit_healthy_adagrad(ctx: Context) -> None:
    gen = seeded(8016)
    model = EfficientViT(dim=16)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    fit(ctx, model, opt, digit_batches(gen, 32), 220)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check(
        "trained: loss fell by half, finite", last < 0.5 * first and all(map(_finite, ctx.losses))
    )
