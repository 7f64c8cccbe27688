"""Held-out scenarios, set 77 (``h77_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or its control trained normally).

Families: Hugging Face DINOv2-with-registers, AIMv2, MetaCLIP-2, MLCD and SigLIP-2 vision towers
from configs (tiny; patch 2 on 8x8 digits) behind hand-written heads; a hand-written ViT with
token merging (ToMe), an MLP-Mixer, an anchor-based detector with a focal loss on generated boxes
(a fault and a control), an energy-based model with short-run Langevin sampling, a RealNVP
coupling flow on generated 2-D data, a capsule net with dynamic routing on digits, a spatial
transformer network, a pixel-shuffle super-resolution net, and a Gram-matrix style loss (a fault
and a control, both under fp16 autocast with a GradScaler).

Optimizers: AdamW, NAdam, Adam, SGD, SGD with momentum, Adamax, RAdam,
Adagrad, and steadygrad.optim's AdEMAMix, AdaBelief and Lion.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    digit_batches,
    fit,
    scenario,
    seeded,
)

# -- shared pieces --------------------------------------------------------------------------------


def _images(gen: torch.Generator, batch: int = 64):
    """Digit batches as (B, 1, 8, 8) images."""
    for x, y in digit_batches(gen, batch):
        yield x.reshape(-1, 1, 8, 8), y


class _HFVision(nn.Module):
    """A Hugging Face vision tower on 8x8 digits (patch 2), mean-pooled, with a linear head."""

    def __init__(self, backbone: nn.Module, dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values=x).last_hidden_state.mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _vision_kwargs() -> dict:
    return dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=8,
        patch_size=2,
        num_channels=1,
    )


# -- 1. ViT with token merging: no 1/sqrt(d) in the attention (attention_logit_growth) -----------


class _UnscaledAttention(nn.Module):
    """Multi-head self-attention written by hand; the 1/sqrt(head_dim) scale was left out."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.last_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-1, -2)  # bug: no * head_dim ** -0.5
        self.last_logits = logits.detach()
        y = logits.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d)), k.mean(1)


def _merge_tokens(x: torch.Tensor, metric: torch.Tensor, r: int) -> torch.Tensor:
    """ToMe bipartite soft matching: average the r most similar (even -> odd) token pairs.
    The class token (index 0) is never merged."""
    cls, x, metric = x[:, :1], x[:, 1:], metric[:, 1:]
    a, b = x[:, ::2], x[:, 1::2]
    ma, mb = metric[:, ::2], metric[:, 1::2]
    sim = F.normalize(ma, dim=-1) @ F.normalize(mb, dim=-1).transpose(-1, -2)
    best, dst = sim.max(-1)
    order = best.argsort(-1, descending=True)
    merged_idx, kept_idx = order[:, :r], order[:, r:]
    d = x.shape[-1]
    src = a.gather(1, merged_idx[..., None].expand(-1, -1, d))
    dst_idx = dst.gather(1, merged_idx)
    b = b.scatter_reduce(1, dst_idx[..., None].expand(-1, -1, d), src, "mean", include_self=True)
    kept = a.gather(1, kept_idx[..., None].expand(-1, -1, d))
    return torch.cat([cls, kept, b], 1)


class _ToMeBlock(nn.Module):
    def __init__(self, dim: int, heads: int, r: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _UnscaledAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, metric = self.attn(self.norm1(x))
        x = x + y
        if self.r > 0:
            x = _merge_tokens(x, metric, self.r)
        return x + self.mlp(self.norm2(x))


class _ToMeViT(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, r: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 17, dim))
        self.blocks = nn.ModuleList([_ToMeBlock(dim, heads, r), _ToMeBlock(dim, heads, r)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


def _entropy(logits: torch.Tensor) -> float:
    p = logits.float().softmax(-1)
    return float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean())


@scenario(
    "h77_vit_token_merging",
    "adamw",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="hand-written attention without the 1/sqrt(d) scale, large LR, no weight decay",
)
def h77_vit_tome_unscaled_qk_adamw(ctx: Context) -> None:
    gen = seeded(7701)
    model = _ToMeViT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen: dict[str, list[float]] = {"max": [], "ent": []}

    def before(step: int) -> None:
        if step > 0:
            lg = model.blocks[0].attn.last_logits
            seen["max"].append(float(lg.abs().max()))
            seen["ent"].append(_entropy(lg))

    fit(ctx, model, opt, _images(gen), 300, before=before)
    ctx.check("attention logits grew 10x", max(seen["max"][-50:]) > 10 * seen["max"][0])
    ctx.check("attention entropy collapsed", min(seen["ent"][-50:]) < 0.2 * seen["ent"][0])


# -- 2. AIMv2 with a z-loss of the wrong sign (output_logit_divergence) ---------------------------


@scenario(
    "h77_hf_aimv2_vision_zloss",
    "nadam",
    "output_logit_divergence",
    where="head",
    diverges="auto",
    heldout=True,
    note="z-loss added with the wrong sign: log Z is rewarded for growing",
)
def h77_hf_aimv2_zloss_sign_nadam(ctx: Context) -> None:
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    gen = seeded(7702)
    model = _HFVision(Aimv2VisionModel(Aimv2VisionConfig(**_vision_kwargs())))
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    lse: list[float] = []
    zterm: list[torch.Tensor] = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = m(x)
        z = torch.logsumexp(logits.float(), -1)
        lse.append(float(z.detach().mean()))
        # intended: + 1e-2 * mean(z**2) (a z-loss); the sign was flipped in a refactor
        zterm[:] = [-1e-2 * (z**2).mean()]
        return logits

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss + zterm[0]

    fit(ctx, model, opt, _images(gen), 400, extra_loss=extra, forward=forward)
    ctx.check("log Z grew past 50", max(v for v in lse if math.isfinite(v)) > 50)


class _TempHead(nn.Module):
    """Linear classifier with a fixed temperature (logits / T)."""

    def __init__(self, dim: int, classes: int, temperature: float) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)
        self.temperature = temperature

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h) / self.temperature


# -- 3. DINOv2 with registers: backbone unfrozen but never given to the optimizer ---------------


# Labelled loss_of_plasticity as written (the set's brief filed a frozen layer there); the
# collection files a layer left out of the optimizer under update_ratio_out_of_range.
@scenario(
    "h77_hf_dinov2_registers_digits",
    "adam",
    "update_ratio_out_of_range",
    where=("backbone", "backbone.encoder.layer.0", "backbone.embeddings.patch_embeddings"),
    diverges=None,
    heldout=True,
    note="linear probe first, then the backbone is 'unfrozen' but the optimizer only ever held "
    "the head's parameters: the backbone never learns",
)
def h77_hf_dinov2reg_unfrozen_not_in_opt_adam(ctx: Context) -> None:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    gen = seeded(7703)
    cfg = Dinov2WithRegistersConfig(**_vision_kwargs(), num_register_tokens=2)
    model = _HFVision(Dinov2WithRegistersModel(cfg))
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=3e-3)  # built once, during the linear-probe phase
    start = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}

    def unfreeze(step: int) -> None:
        if step == 60:
            for p in model.backbone.parameters():
                p.requires_grad_(True)  # bug: the optimizer was not rebuilt

    fit(ctx, model, opt, _images(gen), 300, before=unfreeze)
    moved = max(
        float((p.detach() - start[n]).abs().max()) for n, p in model.backbone.named_parameters()
    )
    ctx.check("backbone weights never changed", moved == 0.0)
    ctx.check("loss plateaued well above a trained model's", min(ctx.losses[-20:]) > 0.3)


# -- 4. pixel-shuffle super-resolution: warm-up overshoots (sharpness_above_limit) ----------------


class _ESPCN(nn.Module):
    """Sub-pixel convolution super-resolution: 4x4 -> 8x8."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        h = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return up + self.shuffle(self.conv3(h))


def _sr_batches(gen: torch.Generator, batch: int = 64):
    for x, _ in _images(gen, batch):
        yield F.avg_pool2d(x, 2), x


@scenario(
    "h77_pixel_shuffle_superres",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="linear warm-up to a peak LR typed 10x too high",
)
def h77_espcn_warmup_overshoot_sgd(ctx: Context) -> None:
    gen = seeded(7704)
    model = _ESPCN()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    peak, warm = 5.0, 150  # meant 0.5

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = peak * min(1.0, (step + 1) / warm)

    fit(
        ctx,
        model,
        opt,
        _sr_batches(gen),
        220,
        loss_fn=F.mse_loss,
        before=schedule,
        classifier=False,
    )
    finite = [v for v in ctx.losses if math.isfinite(v)]
    early = min(ctx.losses[:100])
    ctx.check("loss fell during warm-up", early < 0.5 * ctx.losses[0])
    ctx.check(
        "then blew up",
        len(finite) < len(ctx.losses) or max(ctx.losses[100:]) > 20 * early,
    )


# -- 5. MLP-Mixer memorising a small subset (softmax_collapse) ------------------------------------


class _MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token = nn.Sequential(
            nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.channel = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel(self.norm2(x))


class _Mixer(nn.Module):
    def __init__(self, dim: int = 48, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, dim, 2, stride=2)
        self.blocks = nn.Sequential(*[_MixerBlock(16, dim) for _ in range(blocks)])
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x).flatten(2).transpose(1, 2))
        return self.head(x.mean(1))


@scenario(
    "h77_mlp_mixer_digits",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=150,
    note="MultiStepLR milestone at 150 with gamma=10 (meant 0.1): the LR jumps past 2/sharpness",
)
def h77_mixer_step_lr_gamma_typo_sgd(ctx: Context) -> None:
    gen = seeded(7706)
    model = _Mixer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[150, 250], gamma=10.0)
    fit(ctx, model, opt, _images(gen), 300, before=lambda step: sched.step() if step else None)
    L = ctx.losses
    ctx.check("loss fell before 150", sum(L[140:150]) < 0.5 * sum(L[:10]))
    ctx.check(
        "then blew up",
        any(not math.isfinite(v) or v > 5 * max(L[100:150]) for v in L[150:]),
    )


# -- 6. MetaCLIP-2 vision tower: a per-group LR typo (update_ratio_out_of_range) ------------------


@scenario(
    "h77_hf_metaclip2_vision_digits",
    "adamw",
    "update_ratio_out_of_range",
    where="backbone.embeddings.patch_embedding",
    diverges=None,
    heldout=True,
    note="patch-embedding group LR typed 1e0 instead of 1e-3",
)
def h77_hf_metaclip2_patch_lr_typo_adamw(ctx: Context) -> None:
    from transformers import MetaClip2VisionConfig, MetaClip2VisionModel

    gen = seeded(7707)
    model = _HFVision(MetaClip2VisionModel(MetaClip2VisionConfig(**_vision_kwargs())))
    patch = model.backbone.embeddings.patch_embedding
    patch_ids = {id(p) for p in patch.parameters()}
    rest = [p for p in model.parameters() if id(p) not in patch_ids]
    opt = torch.optim.AdamW(
        [{"params": list(patch.parameters()), "lr": 1.0}, {"params": rest, "lr": 1e-3}],
        weight_decay=0.01,
    )
    prev = {"patch": patch.weight.detach().clone(), "fc1": None}
    fc1 = model.backbone.encoder.layers[0].mlp.fc1
    prev["fc1"] = fc1.weight.detach().clone()
    ratios: dict[str, list[float]] = {"patch": [], "fc1": []}

    def before(step: int) -> None:
        for key, w in (("patch", patch.weight), ("fc1", fc1.weight)):
            if step > 0:
                ratios[key].append(float((w.detach() - prev[key]).norm() / prev[key].norm()))
            prev[key] = w.detach().clone()

    fit(ctx, model, opt, _images(gen), 250, before=before)
    med = sorted(ratios["fc1"])[len(ratios["fc1"]) // 2]
    med_patch = sorted(ratios["patch"])[len(ratios["patch"]) // 2]
    ctx.check("patch-embedding update/weight over 8x the MLP's", med_patch > 8 * med)
    ctx.check("patch-embedding update over 2% of its weight per step", med_patch > 0.02)


# -- 7. capsule net: an un-unscaled loss-scaled step after a resume (adam_second_moment_poisoned)


def _squash(s: torch.Tensor) -> torch.Tensor:
    n2 = (s**2).sum(-1, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-9)


class _DigitCaps(nn.Module):
    def __init__(self, n_in: int, d_in: int, n_out: int = 10, d_out: int = 8, iters: int = 3):
        super().__init__()
        self.W = nn.Parameter(0.1 * torch.randn(n_in, n_out, d_out, d_in))
        self.iters = iters

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u_hat = torch.einsum("iodk,bik->biod", self.W, u)
        b = torch.zeros(u_hat.shape[:3])
        for i in range(self.iters):
            c = b.softmax(2)
            v = _squash((c[..., None] * u_hat).sum(1))
            if i < self.iters - 1:
                b = b + (u_hat * v[:, None]).sum(-1)
        return v


class _CapsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.primary = nn.Conv2d(32, 8 * 4, 3, stride=2, padding=1)
        self.digit = _DigitCaps(8 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.primary(F.relu(self.conv1(x)))  # (B, 32, 4, 4)
        u = p.reshape(len(x), 8, 4, 16).permute(0, 1, 3, 2).reshape(len(x), 128, 4)
        return self.digit(_squash(u)).norm(dim=-1)  # capsule lengths


def _margin_loss(lengths: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    t = F.one_hot(y, 10).float()
    pos = t * F.relu(0.9 - lengths) ** 2
    neg = 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2
    return (pos + neg).sum(1).mean()


@scenario(
    "h77_capsnet_dynamic_routing",
    "adamax",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="after a resume at step 150 one backward ran on the loss scaled by 65536 and was never "
    "unscaled: Adamax's infinity-norm state holds that gradient for the rest of the run",
)
def h77_capsnet_unscaled_resume_adamax(ctx: Context) -> None:
    gen = seeded(7708)
    model = _CapsNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 65536.0 if step == 150 else loss

    fit(ctx, model, opt, _images(gen), 360, loss_fn=_margin_loss, extra_loss=extra)
    L = ctx.losses
    before_gain = sum(L[40:50]) / 10 - sum(L[140:150]) / 10
    after_gain = sum(L[160:170]) / 10 - sum(L[350:360]) / 10
    ctx.check(
        "gradient at 150 over 1000x the step before",
        ctx.grad_norms[150] > 1000 * ctx.grad_norms[149],
    )
    ctx.check("still learning before 150", before_gain > 0.05)
    ctx.check("stalled after", after_gain < 0.2 * before_gain)


# -- 8. anchor-based detector with focal loss on generated boxes ----------------------------------

_ANCHOR_SIZES = (3.0, 6.0)


def _box_batches(gen: torch.Generator, batch: int = 32, size: int = 16):
    """Noisy 16x16 images with one bright rectangle; targets are (cx, cy, w, h) in pixels."""
    while True:
        w = torch.randint(3, 8, (batch,), generator=gen).float()
        h = torch.randint(3, 8, (batch,), generator=gen).float()
        x0 = (torch.rand(batch, generator=gen) * (size - w)).floor()
        y0 = (torch.rand(batch, generator=gen) * (size - h)).floor()
        img = 0.2 * torch.randn(batch, 1, size, size, generator=gen)
        cols, rows = torch.arange(size), torch.arange(size)
        inside = (
            (cols[None, None, :] >= x0[:, None, None])
            & (cols[None, None, :] < (x0 + w)[:, None, None])
            & (rows[None, :, None] >= y0[:, None, None])
            & (rows[None, :, None] < (y0 + h)[:, None, None])
        )
        img = img + inside[:, None].float()
        yield img, torch.stack([x0 + w / 2, y0 + h / 2, w, h], 1)


class _AnchorDetector(nn.Module):
    """Stride-4 conv backbone; per cell and anchor: an objectness logit and 4 box deltas."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.cls_head = nn.Conv2d(width, len(_ANCHOR_SIZES), 3, padding=1)
        self.box_head = nn.Conv2d(width, 4 * len(_ANCHOR_SIZES), 3, padding=1)
        nn.init.constant_(self.cls_head.bias, -math.log(99.0))  # RetinaNet prior 0.01

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        b, _, gh, gw = f.shape
        a = len(_ANCHOR_SIZES)
        cls = self.cls_head(f).permute(0, 2, 3, 1).reshape(b, gh * gw * a, 1)
        box = self.box_head(f).reshape(b, a, 4, gh, gw).permute(0, 3, 4, 1, 2)
        return torch.cat([cls, box.reshape(b, gh * gw * a, 4)], -1)


def _anchors(grid: int = 4, stride: int = 4) -> torch.Tensor:
    c = (torch.arange(grid).float() + 0.5) * stride
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    out = []
    for yy, xx in zip(cy.reshape(-1), cx.reshape(-1), strict=True):
        for s in _ANCHOR_SIZES:
            out.append([xx, yy, s, s])
    return torch.tensor(out)


def _iou(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    def corners(z):
        return z[..., :2] - z[..., 2:] / 2, z[..., :2] + z[..., 2:] / 2

    b1, b2 = corners(boxes[:, None])
    a1, a2 = corners(anchors[None])
    wh = (torch.minimum(b2, a2) - torch.maximum(b1, a1)).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    area_b = boxes[:, None, 2] * boxes[:, None, 3]
    area_a = anchors[None, :, 2] * anchors[None, :, 3]
    return inter / (area_b + area_a - inter)


def _detection_loss(out: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Sigmoid focal loss on objectness (IoU >= 0.4 or the best anchor is positive) plus a
    smooth-L1 loss on the encoded box of the positive anchors."""
    anchors = _anchors()
    iou = _iou(boxes, anchors)
    pos = iou >= 0.4
    pos[torch.arange(len(boxes)), iou.argmax(1)] = True
    logits = out[..., 0]
    p = torch.sigmoid(logits)
    t = pos.float()
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    pt = p * t + (1 - p) * (1 - t)
    alpha = 0.25 * t + 0.75 * (1 - t)
    focal = (alpha * (1 - pt) ** 2 * ce).sum() / pos.sum().clamp_min(1)
    target = torch.cat(
        [
            (boxes[:, None, :2] - anchors[None, :, :2]) / anchors[None, :, 2:],
            torch.log(boxes[:, None, 2:] / anchors[None, :, 2:]),
        ],
        -1,
    )
    reg = F.smooth_l1_loss(out[..., 1:][pos], target[pos])
    return focal + reg


@scenario(
    "h77_anchor_focal_detector",
    "sg_ademamix",
    "data_outlier",
    where=(),
    diverges=200,
    heldout=True,
    onset=200,
    note="one shard's annotations were written in a 100x larger canvas: boxes far off the image",
)
def h77_anchor_detector_bad_shard_ademamix(ctx: Context) -> None:
    gen = seeded(7709)
    model = _AnchorDetector()
    opt = sgo.AdEMAMix(model.parameters(), lr=1e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 200:
            y = y.clone()
            y[:12] = y[:12] * 100.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        _box_batches(gen),
        320,
        loss_fn=_detection_loss,
        alter=alter,
        classifier=False,
    )
    L = ctx.losses
    ctx.check("learning before the bad shard", sum(L[190:200]) < 0.7 * sum(L[:10]))
    ctx.check("loss spiked at 200", L[200] > 5 * max(L[180:200]))


@scenario(
    "h77_anchor_focal_detector",
    "sg_adabelief",
    "healthy",
    heldout=True,
    note="the same detector on clean annotations",
)
def h77_anchor_detector_clean_adabelief(ctx: Context) -> None:
    gen = seeded(7710)
    model = _AnchorDetector()
    opt = sgo.AdaBelief(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, _box_batches(gen), 300, loss_fn=_detection_loss, classifier=False)
    L = ctx.losses
    ctx.check("finite", all(math.isfinite(v) for v in L))
    ctx.check("loss fell", sum(L[-20:]) < 0.6 * sum(L[:20]))


# -- 9. spatial transformer: a gradient normaliser's state lost at a resume (gradient_spike) ------


class _STN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(8 * 64, 32), nn.ReLU(), nn.Linear(32, 6),
        )  # fmt: skip
        nn.init.zeros_(self.loc[-1].weight)
        with torch.no_grad():
            self.loc[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.loc(x).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def _shifted_digits(gen: torch.Generator, batch: int = 64):
    """Digits placed at a random offset on a 16x16 canvas."""
    for x, y in _images(gen, batch):
        canvas = torch.zeros(len(x), 1, 16, 16)
        off = torch.randint(0, 9, (len(x), 2), generator=gen)
        for i in range(len(x)):
            r, c = int(off[i, 0]), int(off[i, 1])
            canvas[i, :, r : r + 8, c : c + 8] = x[i]
        yield canvas, y


@scenario(
    "h77_spatial_transformer_digits",
    "sgd_mom",
    "gradient_spike",
    where=("loc", "loc.6", "loc.4"),
    diverges=None,
    heldout=True,
    onset=180,
    note="the localisation net's gradients pass through a running-RMS normaliser hook; its state "
    "is re-initialised to 1e-6 on a resume at step 180 instead of restored",
)
def h77_stn_grad_normaliser_reset_sgd(ctx: Context) -> None:
    gen = seeded(7711)
    model = _STN()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    state = {"rms": 1.0}

    def hook(g: torch.Tensor) -> torch.Tensor:
        return 0.1 * g / state["rms"]  # the localisation net trains at ~0.1x, normalised

    for p in model.loc.parameters():
        p.register_hook(hook)

    def before(step: int) -> None:
        if step == 180:
            state["rms"] = 1e-4  # resume: re-initialised, not loaded from the checkpoint
        elif step > 180 and state["rms"] < 1.0:
            state["rms"] = 1.0

    fit(ctx, model, opt, _shifted_digits(gen), 360, before=before)
    L = ctx.losses
    g = ctx.grad_norms
    med = sorted(g[150:180])[15]
    ctx.check("gradient at 180 over 100x the median before", g[180] > 100 * med)
    ctx.check("loss rose after the spike", sum(L[185:200]) / 15 > sum(L[170:180]) / 10 + 0.2)
    ctx.check("finite", all(math.isfinite(v) for v in L))


# -- 10. RealNVP on generated 2-D data behind a logit transform (nonfinite) -----------------------


class _LogitTransform(nn.Module):
    """Maps data in (0, 1) to R with log x - log(1 - x) and returns its log-determinant.
    RealNVP's version squeezes x into [a, 1 - a] first; this one does not."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.log(x) - torch.log1p(-x)
        logdet = -(torch.log(x) + torch.log1p(-x)).sum(-1)
        return z, logdet


class _Coupling(nn.Module):
    def __init__(self, mask: torch.Tensor, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 4),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(x * self.mask).chunk(2, -1)
        s = torch.tanh(s) * (1 - self.mask)
        t = t * (1 - self.mask)
        return x * torch.exp(s) + t, s.sum(-1)


class _RealNVP(nn.Module):
    def __init__(self, layers: int = 4) -> None:
        super().__init__()
        self.logit = _LogitTransform()
        masks = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
        self.couplings = nn.ModuleList(_Coupling(masks[i % 2]) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self.logit(x)
        for c in self.couplings:
            z, ld = c(z)
            logdet = logdet + ld
        logp = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
        return -(logp + logdet)  # per-sample negative log-likelihood


def _unit_square_batches(gen: torch.Generator, batch: int = 64):
    """Two noisy arcs (moons) rescaled into the unit square; the loader clamps to [0, 1]."""
    while True:
        t = torch.rand(batch, generator=gen) * math.pi
        upper = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
        y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
        pts = torch.stack([x, y], 1) + 0.08 * torch.randn(batch, 2, generator=gen)
        pts = (pts - torch.tensor([-1.3, -0.9])) / torch.tensor([3.6, 2.4])
        yield pts.clamp(0.0, 1.0), torch.zeros(batch)


@scenario(
    "h77_realnvp_coupling_flow_2d",
    "radam",
    "nonfinite",
    where="logit",
    diverges=200,
    heldout=True,
    onset=200,
    note="a point clamped onto the unit-square border reaches the logit transform: log(0)",
)
def h77_realnvp_logit_boundary_radam(ctx: Context) -> None:
    gen = seeded(7712)
    model = _RealNVP()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 200:
            x = x.clone()
            x[5, 0] = 1.0  # an outlying point the loader clamped onto the border
        return x, y

    fit(
        ctx,
        model,
        opt,
        _unit_square_batches(gen),
        240,
        loss_fn=lambda nll, y: nll.mean(),
        alter=alter,
        classifier=False,
    )
    L = ctx.losses
    ctx.check(
        "finite and falling before 200", all(math.isfinite(v) for v in L[:200]) and L[199] < L[0]
    )
    ctx.check("non-finite at 200", not math.isfinite(L[200]))
    bad = next(_unit_square_batches(torch.Generator().manual_seed(0)))[0][:4].clone()
    bad[0, 0] = 1.0
    with torch.no_grad():
        z, _ = _LogitTransform()(bad)
    ctx.check("the logit transform makes the inf from finite input", not bool(z.isfinite().all()))


# -- 11. Gram-matrix style loss under fp16 autocast (amp_overflow, and a control) -----------------


class _Gram(nn.Module):
    """Gram matrix of a feature map; ``early_norm`` divides before the product."""

    def __init__(self, early_norm: bool) -> None:
        super().__init__()
        self.early_norm = early_norm

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, c, h, w = f.shape
        f = f.reshape(b, c, h * w)
        if self.early_norm:
            f = f / math.sqrt(h * w)
            return f @ f.transpose(1, 2)
        return (f @ f.transpose(1, 2)) / (h * w)  # the product itself can pass 65504 in fp16


class _StyleNet(nn.Module):
    """A small image-transform net trained with a content loss and a Gram style loss from a
    frozen random conv feature extractor."""

    def __init__(self, early_norm: bool) -> None:
        super().__init__()
        self.transform = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 1, 3, padding=1),
        )  # fmt: skip
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()
        )
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.gram = _Gram(early_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.transform(x)


def _style_batches(gen: torch.Generator, batch: int = 8):
    yield from _images(gen, batch)


def _run_style(
    ctx: Context,
    early_norm: bool,
    seed: int,
    opt_name: str,
    steps: int,
    style_range: float,
    style_weight: float,
) -> list[float]:
    gen = seeded(seed)
    model = _StyleNet(early_norm)
    params = [p for p in model.parameters() if p.requires_grad]
    if opt_name == "adam":
        opt = torch.optim.Adam(params, lr=2e-3)
    else:
        opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu")
    stripes = (torch.arange(8).float()[None, :] % 4 < 2).float().expand(8, 8)
    style = (style_range * stripes)[None, None]
    with torch.no_grad():
        target = model.gram(model.features(style).float())
    grams: list[float] = []
    ctx.attach(model, opt, scaler=scaler)
    batches = _style_batches(gen)
    for _step in range(steps):
        x, _ = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
            feats = model.features(out)
            g = model.gram(feats)
            content = F.mse_loss(model.features(x).float(), feats.float())
        grams.append(float(g.detach().float().abs().max()))
        style_loss = F.mse_loss(g.float(), target.expand_as(g))
        loss = content + style_weight * style_loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(_grad_norm(params))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    return grams


def _grad_norm(params: list[torch.Tensor]) -> float:
    gs = [p.grad.float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(gs))) if gs else 0.0


@scenario(
    "h77_gram_style_transfer",
    "adam",
    "amp_overflow",
    where="gram",
    diverges="auto",
    heldout=True,
    note="style image loaded in [0, 255] instead of [0, 1], Gram matrix normalised after the fp16 "
    "product: as the outputs brighten, the product overflows and every step is skipped",
)
def h77_gram_style_fp16_late_norm_adam(ctx: Context) -> None:
    grams = _run_style(ctx, False, 7713, "adam", 200, style_range=255.0, style_weight=10.0)
    first = next((i for i, v in enumerate(grams) if not math.isfinite(v)), None)
    ctx.check("the fp16 Gram product overflowed", first is not None)
    ctx.check("steps kept being skipped", ctx.scales[-1] < 1.0)


@scenario(
    "h77_gram_style_transfer",
    "adamw",
    "healthy",
    heldout=True,
    note="the same style loss under fp16 autocast, features scaled before the Gram product",
)
def h77_gram_style_fp16_early_norm_adamw(ctx: Context) -> None:
    grams = _run_style(ctx, True, 7714, "adamw", 200, style_range=1.0, style_weight=1e4)
    L = ctx.losses
    ctx.check("finite", all(math.isfinite(v) for v in L + grams))
    ctx.check("loss fell", sum(L[-20:]) < 0.85 * sum(L[:20]))


# -- 12. energy-based model with short-run Langevin sampling (healthy) ----------------------------


def _ring_batches(gen: torch.Generator, batch: int = 128):
    """Eight Gaussians on a ring of radius 2."""
    while True:
        k = torch.randint(0, 8, (batch,), generator=gen).float()
        centre = 2.0 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
        yield centre + 0.15 * torch.randn(batch, 2, generator=gen), torch.zeros(batch)


class _Energy(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def _langevin(energy: nn.Module, x: torch.Tensor, steps: int = 20, step_size: float = 0.05):
    x = x.clone().requires_grad_(True)
    for _ in range(steps):
        (g,) = torch.autograd.grad(energy(x).sum(), x)
        x = (x - 0.5 * step_size * g + math.sqrt(step_size) * 0.1 * torch.randn_like(x)).detach()
        x.requires_grad_(True)
    return x.detach()


@scenario(
    "h77_ebm_short_run_langevin",
    "adam",
    "healthy",
    heldout=True,
    note="contrastive divergence with 20 short-run Langevin steps from uniform noise, with the "
    "energy-magnitude regulariser",
)
def h77_ebm_langevin_ring_adam(ctx: Context) -> None:
    gen = seeded(7715)
    model = _Energy()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.999))
    ctx.attach(model, opt)
    batches = _ring_batches(gen)
    radius: list[float] = []
    for _step in range(300):
        pos, _ = next(batches)
        neg = _langevin(model, 6.0 * torch.rand(len(pos), 2, generator=gen) - 3.0)
        radius.append(float((neg.norm(dim=-1) - 2.0).abs().mean()))
        e_pos, e_neg = model(pos), model(neg)
        loss = e_pos.mean() - e_neg.mean() + 0.1 * (e_pos**2 + e_neg**2).mean()
        loss.backward()
        ctx.grad_norms.append(_grad_norm(list(model.parameters())))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("samples moved onto the ring", sum(radius[-20:]) < 0.6 * sum(radius[:20]))


# -- 13./14. MLCD and SigLIP-2 vision towers ------------------------------------------------------


@scenario(
    "h77_hf_mlcd_vision_digits",
    "sg_lion",
    "healthy",
    heldout=True,
    note="Lion at a tenth of Adam's usual LR, decoupled weight decay",
)
def h77_hf_mlcd_digits_lion(ctx: Context) -> None:
    from transformers import MLCDVisionConfig, MLCDVisionModel

    gen = seeded(7716)
    model = _HFVision(MLCDVisionModel(MLCDVisionConfig(**_vision_kwargs())))
    opt = sgo.Lion(model.parameters(), lr=3e-4, weight_decay=0.1)
    fit(ctx, model, opt, _images(gen), 300)
    L = ctx.losses
    ctx.check("finite", all(math.isfinite(v) for v in L))
    ctx.check("loss fell", sum(L[-20:]) < 0.6 * sum(L[:20]))


class _SigLIP2Digits(nn.Module):
    """SigLIP-2's vision tower takes flattened patches, a patch mask and the patch grid."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import Siglip2VisionConfig, Siglip2VisionModel

        cfg = Siglip2VisionConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            patch_size=2,
            num_channels=1,
            num_patches=16,
            vision_use_head=False,
        )
        self.backbone = Siglip2VisionModel(cfg)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = len(x)
        patches = x.reshape(b, 1, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, 16, 4)
        out = self.backbone(
            pixel_values=patches,
            pixel_attention_mask=torch.ones(b, 16, dtype=torch.long),
            spatial_shapes=torch.tensor([[4, 4]] * b),
        )
        return self.head(out.last_hidden_state.mean(1))


@scenario(
    "h77_hf_siglip2_vision_digits",
    "adagrad",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=200,
    note="at step 200 a checkpoint reload restores the backbone but re-initialises the head "
    "(a renamed key), the optimizer state kept: the loss jumps, then relearns",
)
def h77_hf_siglip2_head_reinit_adagrad(ctx: Context) -> None:
    gen = seeded(7717)
    model = _SigLIP2Digits()
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)

    def before(step: int) -> None:
        if step == 200:
            model.head.reset_parameters()

    fit(ctx, model, opt, _images(gen), 320, before=before)
    L = ctx.losses
    ctx.check("trained before 200", sum(L[190:200]) < 0.5 * sum(L[:10]))
    ctx.check("loss jumped at 200", L[200] > 3 * max(L[190:200]))
