"""Held-out scenarios, set 74 (``h74_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or its control trained normally).

Families: Hugging Face TIPSv2, X-CLIP, Pixio, SmolVLM, InternVL and Idefics3 vision towers from
configs (each behind a small hand-written head on upsampled digits), CoordConv regressor on
generated blobs, Shake-Shake CNN, dynamic-convolution CNN (attention over kernels), p4
group-equivariant CNN on rotated digits, conditional GAN with a projection discriminator, small
VQ-GAN (codebook + perceptual + adversarial losses), implicit neural representation on hash-grid
embedding tables, flow-matching U-Net on digits, denoising autoencoder with tied weights, Fixup
ResNet (no normalisation).

Optimizers: steadygrad's Lion and AdaBelief, AdamW, Adam (once with a GradScaler), NAdam, RAdam,
SGD with momentum (plain and Nesterov), RMSprop, Adamax, Adagrad, plain SGD.
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

# -- shared helpers -------------------------------------------------------------------------------


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _first_nonfinite(losses: list[float]) -> int | None:
    return next((i for i, v in enumerate(losses) if not _finite(v)), None)


def _digits16(gen: torch.Generator, batch: int = 64):
    """Digit batches upsampled to 1x16x16 images (for the patch-based vision towers)."""
    for x, y in digit_batches(gen, batch):
        img = x.reshape(-1, 1, 8, 8)
        yield F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False), y


class HFVisionClassifier(nn.Module):
    """A Hugging Face vision tower (``backbone``) with a mean-pooled linear ``head``."""

    def __init__(self, backbone: nn.Module, dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values=x).last_hidden_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(1))


_TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_channels=1, image_size=16
)


def _tipsv2() -> nn.Module:
    from transformers import Tipsv2VisionConfig, Tipsv2VisionModel

    cfg = Tipsv2VisionConfig(**_TINY, patch_size=4)
    cfg._attn_implementation = "eager"
    return Tipsv2VisionModel(cfg)


def _xclip() -> nn.Module:
    from transformers import XCLIPVisionConfig, XCLIPVisionModel

    cfg = XCLIPVisionConfig(
        **_TINY,
        patch_size=4,
        intermediate_size=64,
        mit_hidden_size=32,
        mit_intermediate_size=64,
        mit_num_attention_heads=2,
        num_frames=1,
    )
    return XCLIPVisionModel(cfg)


def _pixio() -> nn.Module:
    from transformers import PixioConfig, PixioModel

    return PixioModel(PixioConfig(**_TINY, patch_size=4))


def _smolvlm() -> nn.Module:
    from transformers import SmolVLMVisionConfig, SmolVLMVisionTransformer

    return SmolVLMVisionTransformer(
        SmolVLMVisionConfig(**_TINY, patch_size=4, intermediate_size=64)
    )


def _internvl() -> nn.Module:
    from transformers import InternVLVisionConfig, InternVLVisionModel

    cfg = InternVLVisionConfig(
        **{**_TINY, "image_size": [16, 16]}, patch_size=[4, 4], intermediate_size=64
    )
    return InternVLVisionModel(cfg)


def _idefics3() -> nn.Module:
    from transformers import Idefics3VisionConfig, Idefics3VisionTransformer

    return Idefics3VisionTransformer(
        Idefics3VisionConfig(**_TINY, patch_size=4, intermediate_size=64)
    )


# -- 1. TIPSv2 vision tower: attention logits grow (Lion, q/k excluded from weight decay) --------


@scenario(
    "h74_hf_tipsv2_vision_digits",
    "sg_lion",
    "attention_logit_growth",
    where=("backbone.encoder.layer.0.attention", "backbone.encoder.layer.1.attention"),
    diverges=None,
    heldout=True,
    note="no-decay list copied from a QK-norm model: q/k weights free to grow under Lion",
    onset=0,
)
def h74_tipsv2_lion_qk_no_decay(ctx: Context) -> None:
    """The optimizer config came from a model with QK-norm, where leaving the query/key
    projections out of weight decay is harmless. This TIPSv2 tower has no QK-norm: under Lion's
    sign updates the q/k weights grow step after step and the pre-softmax logits with them."""
    gen = seeded(7401)
    model = HFVisionClassifier(_tipsv2())
    no_decay = ("norm", "bias", "q_proj", "k_proj", "layer_scale")
    decay = [p for n, p in model.named_parameters() if not any(s in n for s in no_decay)]
    free = [p for n, p in model.named_parameters() if any(s in n for s in no_decay)]
    opt = sgo.Lion(
        [{"params": decay, "weight_decay": 1.0}, {"params": free, "weight_decay": 0.0}],
        lr=5e-3,
    )
    qk: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_m, _i, out):
            qk[name] = out.detach()

        return hook

    for i, layer in enumerate(model.backbone.encoder.layer):
        layer.attention.q_proj.register_forward_hook(keep(f"q{i}"))
        layer.attention.k_proj.register_forward_hook(keep(f"k{i}"))
    stats: list[list[tuple[float, float]]] = []

    def logits_now(i: int) -> tuple[float, float]:
        b, t, d = qk[f"q{i}"].shape
        q = qk[f"q{i}"].reshape(b, t, 2, d // 2).transpose(1, 2)
        k = qk[f"k{i}"].reshape(b, t, 2, d // 2).transpose(1, 2)
        s = q @ k.transpose(-1, -2) / math.sqrt(d // 2)
        p = torch.softmax(s, -1)
        ent = float(-(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean())
        return float(s.abs().max()), ent

    def record(step: int, loss: torch.Tensor) -> torch.Tensor:
        stats.append([logits_now(0), logits_now(1)])
        return loss

    fit(ctx, model, opt, _digits16(gen, 32), 300, extra_loss=record)
    for i in (0, 1):
        first, last = stats[0][i], stats[-1][i]
        ctx.check(f"layer {i}: max attention logit grew over 10x", last[0] > 10 * first[0])
        ctx.check(f"layer {i}: attention entropy fell below a quarter", last[1] < 0.25 * first[1])


# -- 2. Pixio vision tower: z-loss with the wrong sign pushes log Z up (AdamW) --------------------


@scenario(
    "h74_hf_pixio_digits",
    "adamw",
    "output_logit_divergence",
    where="head",
    diverges=None,
    heldout=True,
    note="z-loss added with a minus sign: log-partition drifts upward while CE looks fine",
    onset=0,
)
def h74_pixio_zloss_sign(ctx: Context) -> None:
    gen = seeded(7402)
    model = HFVisionClassifier(_pixio())
    opt = torch.optim.AdamW(
        [
            {"params": model.backbone.parameters()},
            {"params": model.head.parameters(), "lr": 2e-2},  # the usual 10x for a fresh head
        ],
        lr=2e-3,
        weight_decay=0.01,
    )
    log_z: list[float] = []
    logits: list[torch.Tensor] = []
    model.head.register_forward_hook(lambda _m, _i, out: logits.__setitem__(slice(None), [out]))

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        z = torch.logsumexp(logits[0].float(), -1)
        log_z.append(float(z.detach().mean()))
        return loss - 1e-3 * (z**2).mean()  # the PaLM z-loss, with the sign flipped

    fit(ctx, model, opt, _digits16(gen), 350, extra_loss=zloss)
    ctx.check("mean log Z over 4x its start", log_z[-1] > 4 * log_z[0])
    ctx.check("and still rising", log_z[-1] > log_z[-100] + 1)
    ctx.check("the classifier still learnt (CE below 1.0)", sum(ctx.losses[-20:]) / 20 < 1.0)


# -- 3. SmolVLM vision tower: hand-written attention pooling overflows in fp16 (Adam + scaler) ----


class ExpAttentionPool(nn.Module):
    """Attention pooling over patch tokens written out by hand (no max subtraction)."""

    def __init__(self, dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.temperature = temperature

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        e = torch.exp(self.score(h) / self.temperature)  # fp16 under autocast: inf above 11.1
        w = e / e.sum(1, keepdim=True)
        return (w * h).sum(1)


class PooledSmolVLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _smolvlm()
        self.pool = ExpAttentionPool(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.backbone(pixel_values=x).last_hidden_state))


@scenario(
    "h74_hf_smolvlm_vision_digits",
    "adam",
    "amp_overflow",
    where="pool",
    diverges="auto",
    heldout=True,
    note="fp16 autocast + GradScaler; exp(score / T) in a hand-written pool overflows as T is "
    "annealed; the scaler keeps skipping steps",
)
def h74_smolvlm_fp16_exp_pool(ctx: Context) -> None:
    gen = seeded(7403)
    model = PooledSmolVLM()
    opt = torch.optim.Adam(
        [
            {"params": model.backbone.parameters()},
            {"params": [*model.pool.parameters(), *model.head.parameters()], "lr": 1e-2},
        ],
        lr=2e-3,
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    overflowed: list[int] = []

    def watch(_m, _i, out):
        if not torch.isfinite(out).all():
            overflowed.append(len(ctx.losses))

    def sharpen(step: int) -> None:  # the pooling temperature is annealed 1.0 -> 0.1
        model.pool.temperature = 1.0 - 0.9 * step / 300

    model.pool.register_forward_hook(watch)
    fit(ctx, model, opt, _digits16(gen, 32), 300, scaler=scaler, amp=True, before=sharpen)
    bad = _first_nonfinite(ctx.losses)
    ctx.check("the pool's output overflowed under fp16", bool(overflowed))
    ctx.check("the loss went non-finite", bad is not None)
    ctx.check(
        "the scale kept dropping (steps skipped)",
        bad is not None and ctx.scales[-1] < ctx.scales[bad - 1] / 16,
    )


# -- 4. Idefics3 vision tower: a leftover manual loss scale poisons NAdam's second moments --------


@scenario(
    "h74_hf_idefics3_vision_digits",
    "nadam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="one step backpropagated with a static fp16 loss scale (2**16) left in after a resume",
    onset=200,
)
def h74_idefics3_nadam_loss_scale(ctx: Context) -> None:
    gen = seeded(7404)
    model = HFVisionClassifier(_idefics3())
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    moves: list[float] = []
    before = {}

    def scaled(step: int, loss: torch.Tensor) -> torch.Tensor:
        before.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return loss * 65536.0 if step == 200 else loss

    def measure(step: int) -> None:
        if before:
            with torch.no_grad():
                moves.append(
                    float(
                        sum((p - before[n]).norm() ** 2 for n, p in model.named_parameters()) ** 0.5
                    )
                )

    fit(ctx, model, opt, _digits16(gen), 450, extra_loss=scaled, before=measure)
    pre = sorted(moves[150:199])[25]
    post = sorted(moves[230:440])[105]
    ctx.check("updates after the spike over 20x smaller", post < pre / 20)
    pre_loss = sum(ctx.losses[180:200]) / 20
    ctx.check(
        "250 steps on, the loss is still over 3x its pre-spike level",
        min(ctx.losses[420:450]) > 3 * pre_loss,
    )


# -- 5./6. X-CLIP and InternVL vision towers: healthy controls ------------------------------------


@scenario("h74_hf_xclip_vision_digits", "radam", "healthy", heldout=True)
def h74_xclip_radam_healthy(ctx: Context) -> None:
    gen = seeded(7405)
    model = HFVisionClassifier(_xclip())
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _digits16(gen), 300)
    ctx.check("trained", sum(ctx.losses[-20:]) / 20 < 0.5 * sum(ctx.losses[:20]) / 20)


@scenario("h74_hf_internvl_vision_digits", "adamw", "healthy", heldout=True)
def h74_internvl_adamw_healthy(ctx: Context) -> None:
    gen = seeded(7406)
    model = HFVisionClassifier(_internvl())
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.05)
    fit(ctx, model, opt, _digits16(gen, 32), 300)
    ctx.check("trained", sum(ctx.losses[-20:]) / 20 < 0.5 * sum(ctx.losses[:20]) / 20)


# -- 7. CoordConv regressor: a warm-up whose peak LR is 10x too high (SGD momentum) --------------


def _blob_batches(gen: torch.Generator, batch: int = 32, size: int = 16):
    """A Gaussian blob at a random centre; the target is the centre in [0, 1]^2."""
    grid = torch.linspace(0, 1, size)
    while True:
        c = torch.rand(batch, 2, generator=gen) * 0.8 + 0.1
        gy = (grid[None, :, None] - c[:, 1, None, None]) ** 2
        gx = (grid[None, None, :] - c[:, 0, None, None]) ** 2
        img = torch.exp(-(gx + gy) / 0.01)[:, None]
        img = img + 0.05 * torch.randn(img.shape, generator=gen)
        yield img, c


class AddCoords(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        yy = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(b, 1, h, w)
        xx = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(b, 1, h, w)
        return torch.cat([x, xx, yy], 1)


class CoordConvRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.coords = AddCoords()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(self.coords(x)))
        h = F.relu(self.conv2(h))
        # soft-argmax-like pooling: features weighted by the blob itself
        w = x.clamp_min(0).flatten(1)
        w = w / (w.sum(1, keepdim=True) + 1e-6)
        pooled = (h.flatten(2) * w[:, None]).sum(-1)
        return self.head(pooled)


_COORD_PEAK = 10.0  # meant 1.0


@scenario(
    "h74_coordconv_blob_regressor",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="linear warm-up to a peak LR typed 10x too high; blows up once past 2/sharpness",
    onset=30,
)
def h74_coordconv_warmup_overshoot(ctx: Context) -> None:
    gen = seeded(7407)
    model = CoordConvRegressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = _COORD_PEAK * min(1.0, (step + 1) / 300)

    fit(
        ctx,
        model,
        opt,
        _blob_batches(gen),
        300,
        loss_fn=F.mse_loss,
        before=warmup,
        classifier=False,
    )
    losses = [v if _finite(v) else float("inf") for v in ctx.losses]
    ctx.check("learnt at first (loss fell 3x by step 30)", min(losses[:30]) < losses[0] / 3)
    ctx.check("then blew up past 100x its best", max(losses[30:]) > 100 * min(losses[:60]))


# -- 8. Shake-Shake CNN: healthy control (SGD, Nesterov) -----------------------------------------


class ShakeBranch(nn.Sequential):
    def __init__(self, c: int) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )


class ShakeShakeBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.branch1 = ShakeBranch(c)
        self.branch2 = ShakeBranch(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.branch1(x), self.branch2(x)
        if not self.training:
            return x + 0.5 * (a + b)
        alpha = torch.rand(x.shape[0], 1, 1, 1)
        beta = torch.rand(x.shape[0], 1, 1, 1)
        # forward with alpha, backward with beta (Gastaldi 2017)
        mix_f = alpha * a + (1 - alpha) * b
        mix_b = beta * a + (1 - beta) * b
        return x + mix_b + (mix_f - mix_b).detach()


class ShakeShakeNet(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.block1 = ShakeShakeBlock(c)
        self.block2 = ShakeShakeBlock(c)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.reshape(-1, 1, 8, 8))
        h = self.block2(self.block1(h))
        return self.head(F.relu(h).mean((2, 3)))


@scenario("h74_shake_shake_cnn_digits", "sgd_mom", "healthy", heldout=True, note="Nesterov")
def h74_shake_shake_healthy(ctx: Context) -> None:
    gen = seeded(7408)
    model = ShakeShakeNet()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    fit(ctx, model, opt, digit_batches(gen), 300)
    ctx.check("trained", sum(ctx.losses[-20:]) / 20 < 0.5 * sum(ctx.losses[:20]) / 20)


# -- 9. Dynamic convolution: a hand-written kernel softmax overflows on one raw image (RMSprop) ---


class KernelAttention(nn.Module):
    """Attention over K candidate kernels from the pooled input, softmax written by hand."""

    def __init__(self, cin: int, k: int, temperature: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cin, 16)
        self.fc2 = nn.Linear(16, k)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc2(F.relu(self.fc1(x.mean((2, 3)))))
        e = torch.exp(z / self.temperature)
        return e / e.sum(1, keepdim=True)


class DynamicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 4, temperature: float = 30.0) -> None:
        super().__init__()
        self.attn = KernelAttention(cin, k, temperature)
        self.weight = nn.Parameter(torch.randn(k, cout, cin, 3, 3) * (2.0 / (9 * cin)) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(k, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, cin, h, w = x.shape
        a = self.attn(x)  # (b, k)
        weight = torch.einsum("bk,koihw->boihw", a, self.weight)
        bias = a @ self.bias
        out = F.conv2d(x.reshape(1, b * cin, h, w), weight.flatten(0, 1), padding=1, groups=b)
        return out.reshape(b, -1, h, w) + bias[:, :, None, None]


class DynConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = DynamicConv2d(1, 16)
        self.conv2 = DynamicConv2d(16, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        h = F.relu(self.conv2(F.max_pool2d(h, 2)))
        return self.head(h.mean((2, 3)))


@scenario(
    "h74_dynamic_conv_digits",
    "rmsprop",
    "nonfinite",
    where="conv1.attn",
    diverges=170,
    heldout=True,
    note="temperature annealed 30 -> 1; one image read as raw 0-255 makes exp() overflow",
    onset=170,
)
def h74_dynconv_exp_overflow(ctx: Context) -> None:
    gen = seeded(7409)
    model = DynConvNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    first_bad: list[str] = []
    for name, mod in model.named_modules():
        if name:

            def hook(m, inp, out, name=name):
                if not first_bad and not torch.isfinite(out).all():
                    first_bad.append(name)

            mod.register_forward_hook(hook)

    def anneal(step: int) -> None:
        t = max(1.0, 30.0 - 29.0 * step / 100)
        model.conv1.attn.temperature = model.conv2.attn.temperature = t

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 170:  # a PNG that skipped the /255 (and /16) normalisation
            x = x.clone()
            x[3] = x[3] * 16.0 * 255.0
        return x, y

    fit(ctx, model, opt, digit_batches(gen), 220, before=anneal, alter=alter)
    bad = _first_nonfinite(ctx.losses)
    ctx.check("finite until 170, non-finite at 170", bad == 170)
    ctx.check("first non-finite output in conv1.attn", first_bad[:1] == ["conv1.attn"])


# -- 10. p4 group-equivariant CNN on rotated digits: softmax collapse on a small set (Adamax) -----


def _rot_stack(w: torch.Tensor) -> torch.Tensor:
    """(out, in, k, k) -> (4*out, in, k, k): the kernel at four rotations (lifting layer)."""
    return torch.cat([torch.rot90(w, r, (2, 3)) for r in range(4)], 0)


class LiftingConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * (2.0 / (9 * cin)) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, _rot_stack(self.weight), padding=1)
        b, _, h, w = out.shape
        return out.reshape(b, 4, -1, h, w).transpose(1, 2) + self.bias[None, :, None, None, None]


class GroupConv(nn.Module):
    """p4 -> p4 convolution: the filter rotates spatially and shifts along the rotation axis."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 4, 3, 3) * (2.0 / (36 * cin)) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, g, h, w = x.shape
        ws = [torch.rot90(torch.roll(self.weight, r, 2), r, (3, 4)).flatten(1, 2) for r in range(4)]
        out = F.conv2d(x.reshape(b, c * g, h, w), torch.cat(ws, 0), padding=1)
        return out.reshape(b, 4, -1, h, w).transpose(1, 2) + self.bias[None, :, None, None, None]


class P4CNN(nn.Module):
    def __init__(self, c: int = 12) -> None:
        super().__init__()
        self.lift = LiftingConv(1, c)
        self.gconv = GroupConv(c, 2 * c)
        self.head = nn.Linear(2 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.lift(x.reshape(-1, 1, 8, 8)))
        h = F.relu(self.gconv(h))
        return self.head(h.amax((2, 3, 4)))  # invariant: max over rotations and positions


def _rotated_subset(gen: torch.Generator, n: int = 96):
    x, y = digits()
    idx = torch.randperm(len(y), generator=gen)[:n]
    xs, ys = x[idx].reshape(-1, 1, 8, 8), y[idx]
    while True:  # the same few images, each at a random multiple of 90 degrees
        r = torch.randint(0, 4, (n,), generator=gen)
        xr = torch.stack([torch.rot90(im, int(k), (1, 2)) for im, k in zip(xs, r, strict=True)])
        yield xr, ys


@scenario(
    "h74_p4_group_cnn_rotated_digits",
    "adamax",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="64 training images, beta2 0.95, no weight decay, trained far past fitting",
    onset=0,
)
def h74_p4cnn_overfit_collapse(ctx: Context) -> None:
    gen = seeded(7410)
    model = P4CNN(c=8)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2, betas=(0.9, 0.95))
    data = _rotated_subset(gen, 64)
    fit(ctx, model, opt, data, 300)
    x, y = next(data)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over half the training rows exactly one-hot", frac > 0.5)
    ctx.check("training loss near float32 zero", min(ctx.losses[-20:]) < 1e-7)


# -- 11. conditional GAN with a projection discriminator: healthy control (Adam, hinge) ----------


class CondGenerator(nn.Module):
    def __init__(self, z: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(classes, z)
        self.net = nn.Sequential(
            nn.Linear(2 * z, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat([z, self.embed(y)], 1)))


class ProjectionDiscriminator(nn.Module):
    """D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.phi = nn.Sequential(
            nn.Linear(64, 128), nn.LeakyReLU(0.2), nn.Linear(128, 128), nn.LeakyReLU(0.2)
        )
        self.psi = nn.Linear(128, 1)
        self.embed = nn.Embedding(classes, 128)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f = self.phi(x)
        return self.psi(f).squeeze(1) + (self.embed(y) * f).sum(1)


class CondGAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gen = CondGenerator()
        self.disc = ProjectionDiscriminator()


@scenario(
    "h74_cgan_projection_digits",
    "adam",
    "healthy",
    heldout=True,
    note="hinge loss, simultaneous G/D updates under one Adam; the D loss is what is logged",
)
def h74_cgan_projection_healthy(ctx: Context) -> None:
    gen = seeded(7411)
    model = CondGAN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    g_params, d_params = list(model.gen.parameters()), list(model.disc.parameters())
    for _ in range(400):
        x, y = next(batches)
        z = torch.randn(len(y), 16, generator=gen)
        fake = model.gen(z, y)
        d_loss = (
            F.relu(1 - model.disc(x, y)).mean() + F.relu(1 + model.disc(fake.detach(), y)).mean()
        )
        g_loss = -model.disc(fake, y).mean()
        gd = torch.autograd.grad(d_loss, d_params)
        gg = torch.autograd.grad(g_loss, g_params)
        for p, g in zip([*d_params, *g_params], [*gd, *gg], strict=True):
            p.grad = g
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(d_loss)
        opt.zero_grad(set_to_none=True)
    L = ctx.losses
    ctx.check("finite", all(_finite(v) for v in L))
    ctx.check("D loss fell from its start", sum(L[-50:]) / 50 < 0.9 * sum(L[:10]) / 10)


# -- 12. small VQ-GAN: a batch of corrupted images (AdaBelief) -----------------------------------


class VectorQuantizer(nn.Module):
    def __init__(self, codes: int = 32, dim: int = 8) -> None:
        super().__init__()
        self.codebook = nn.Embedding(codes, dim)
        nn.init.uniform_(self.codebook.weight, -0.5, 0.5)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        idx = torch.cdist(flat, self.codebook.weight).argmin(1)
        q = self.codebook(idx).reshape(b, h, w, d).permute(0, 3, 1, 2)
        vq = F.mse_loss(q, z.detach()) + 0.25 * F.mse_loss(z, q.detach())
        return z + (q - z).detach(), vq


class VQAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 4, stride=2, padding=1)
        )
        self.quant = VectorQuantizer()
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(8, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, vq = self.quant(self.encoder(x))
        return torch.sigmoid(self.decoder(q)), vq


class PatchDiscriminator(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 16, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(16, 1, 3, padding=1),
        )


@scenario(
    "h74_vqgan_perceptual_digits",
    "sg_adabelief",
    "data_outlier",
    where=(),
    diverges=180,
    heldout=True,
    note="perceptual features from a frozen random conv net; 6 of 32 images in one batch are noise",
    onset=180,
)
def h74_vqgan_corrupt_batch(ctx: Context) -> None:
    gen = seeded(7412)
    model = VQAutoencoder()
    disc = PatchDiscriminator()
    perceptual = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3))
    for p in perceptual.parameters():
        p.requires_grad_(False)
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ctx.attach(model, opt)
    batches = digit_batches(gen, 32)
    for step in range(220):
        x, _ = next(batches)
        x = x.reshape(-1, 1, 8, 8)
        if step == 180:  # a shard decoded with the wrong codec: six images of loud noise
            x = x.clone()
            x[:6] = 20.0 * torch.rand(x[:6].shape, generator=gen)
        rec, vq = model(x)
        adv_w = 0.1 if step >= 60 else 0.0  # the discriminator joins later, as in VQ-GAN
        loss = (
            F.l1_loss(rec, x)
            + F.l1_loss(perceptual(rec), perceptual(x))
            + vq
            + adv_w * F.relu(1 - disc(rec)).mean()
        )
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    L = ctx.losses
    ctx.check("loss spiked at 180", L[180] > 5 * max(L[170:180]))
    ctx.check("finite throughout", all(_finite(v) for v in L))


# -- 13. hash-grid INR: Adagrad state lost on a resume (loss spike) -------------------------------


class HashGrid(nn.Module):
    """Multi-resolution hashed embedding tables with bilinear interpolation (Instant-NGP-like)."""

    def __init__(self, levels: int = 4, table: int = 512, dim: int = 2, base: int = 4) -> None:
        super().__init__()
        self.res = [base * 2**i for i in range(levels)]
        self.tables = nn.ModuleList(nn.Embedding(table, dim) for _ in range(levels))
        for t in self.tables:
            nn.init.uniform_(t.weight, -1e-4, 1e-4)
        self.size = table

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        feats = []
        for r, t in zip(self.res, self.tables, strict=True):
            g = p * r
            g0 = g.floor().long()
            f = g - g0
            out = 0.0
            for dx in (0, 1):
                for dy in (0, 1):
                    c = g0 + torch.tensor([dx, dy])
                    h = (c[:, 0] * 1 ^ c[:, 1] * 2654435761) % self.size
                    wx = f[:, 0] if dx else 1 - f[:, 0]
                    wy = f[:, 1] if dy else 1 - f[:, 1]
                    out = out + (wx * wy)[:, None] * t(h)
            feats.append(out)
        return torch.cat(feats, 1)


class HashINR(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.grid = HashGrid()
        self.mlp = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.grid(p)).squeeze(1)


def _target_image(p: torch.Tensor) -> torch.Tensor:
    x, y = p[:, 0], p[:, 1]
    return torch.sin(6 * x) * torch.cos(5 * y) + 0.5 * ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.05)


def _coord_batches(gen: torch.Generator, batch: int = 512):
    while True:
        p = torch.rand(batch, 2, generator=gen)
        yield p, _target_image(p)


@scenario(
    "h74_hash_grid_inr",
    "adagrad",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="resumed at 300 from weights only: Adagrad's accumulators restart at zero",
    onset=300,
)
def h74_hash_inr_adagrad_state_lost(ctx: Context) -> None:
    gen = seeded(7413)
    model = HashINR()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.3)

    def resume(step: int) -> None:
        if step == 300:  # the checkpoint held the weights, the optimizer was built afresh
            opt.state.clear()

    fit(
        ctx,
        model,
        opt,
        _coord_batches(gen),
        450,
        loss_fn=F.mse_loss,
        before=resume,
        classifier=False,
    )
    L = ctx.losses
    ctx.check("loss fell before the resume", sum(L[280:300]) / 20 < 0.3 * sum(L[:10]) / 10)
    ctx.check("loss jumped after the resume", max(L[300:306]) > 5 * max(L[290:300]))
    ctx.check("finite throughout", all(_finite(v) for v in L))


# -- 14. flow-matching U-Net: the time-embedding MLP's LR typed 100x too high (SGD momentum) ----


class TimeEmbedding(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.SiLU(), nn.Linear(64, 64))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half) / half)
        ang = t[:, None] * 1000.0 * freqs[None]
        return self.mlp(torch.cat([ang.sin(), ang.cos()], 1))


class TinyUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.time = TimeEmbedding()
        self.down1 = nn.Conv2d(1, 16, 3, padding=1)
        self.down2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.t_proj = nn.Linear(64, 32)
        self.mid = nn.Conv2d(32, 32, 3, padding=1)
        self.up = nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)
        self.out = nn.Conv2d(32, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h1 = F.silu(self.down1(x))
        h2 = F.silu(self.down2(h1)) + self.t_proj(self.time(t))[:, :, None, None]
        h2 = F.silu(self.mid(h2))
        u = F.silu(self.up(h2))
        return self.out(torch.cat([u, h1], 1))


@scenario(
    "h74_flow_matching_unet_digits",
    "sgd_mom",
    "update_ratio_out_of_range",
    where=("time.mlp", "time.mlp.0", "time.mlp.2"),
    diverges=None,
    heldout=True,
    note="param group for the time embedding at lr 5.0 (meant 5e-2): 100x the rest",
    onset=0,
)
def h74_flow_unet_time_lr_typo(ctx: Context) -> None:
    gen = seeded(7414)
    model = TinyUNet()
    time_params = list(model.time.parameters())
    ids = {id(p) for p in time_params}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.SGD(
        [{"params": rest}, {"params": time_params, "lr": 5.0}], lr=5e-2, momentum=0.9
    )
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    ratios: dict[str, list[float]] = {"time.mlp.0": [], "down2": []}
    for _ in range(300):
        x1, _ = next(batches)
        x1 = x1.reshape(-1, 1, 8, 8) * 2 - 1
        x0 = torch.randn(x1.shape, generator=gen)
        t = torch.rand(len(x1), generator=gen)
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * x1
        loss = F.mse_loss(model(xt, t), x1 - x0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        w_before = {
            "time.mlp.0": model.time.mlp[0].weight.detach().clone(),
            "down2": model.down2.weight.detach().clone(),
        }
        opt.step()
        for k, w0 in w_before.items():
            w = model.time.mlp[0].weight if k == "time.mlp.0" else model.down2.weight
            ratios[k].append(float((w.detach() - w0).norm() / w0.norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    r_time = sorted(ratios["time.mlp.0"])[150]
    r_rest = sorted(ratios["down2"])[150]
    ctx.check("time-MLP update/weight ratio over 30x the rest", r_time > 30 * r_rest)
    ctx.check("finite throughout", all(_finite(v) for v in ctx.losses))
    ctx.check("still trained", sum(ctx.losses[-20:]) / 20 < 0.7 * sum(ctx.losses[:5]) / 5)


# -- 15. denoising autoencoder with tied weights: encoder units dead from a bias init (SGD) -------


class TiedDAE(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.enc = nn.Linear(64, hidden)
        self.dec_bias = nn.Parameter(torch.zeros(64))
        # copied from a sparse-coding recipe meant for zero-mean whitened inputs
        nn.init.constant_(self.enc.bias, -1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.enc(x))
        return torch.sigmoid(F.linear(h, self.enc.weight.t(), self.dec_bias))


@scenario(
    "h74_tied_weight_denoising_ae",
    "sgd",
    "loss_of_plasticity",
    where="enc",
    diverges=None,
    heldout=True,
    note="encoder bias initialised at -1.5 for inputs in [0, 1]: most ReLUs never fire",
    onset=0,
)
def h74_tied_dae_dead_encoder(ctx: Context) -> None:
    gen = seeded(7415)
    model = TiedDAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def noisy(gen_batches):
        for x, _ in gen_batches:
            keep = (torch.rand(x.shape, generator=gen) > 0.3).float()
            yield torch.cat([x * keep, x], 1), x

    def forward(m: nn.Module, xx: torch.Tensor) -> torch.Tensor:
        return m(xx[:, :64])

    fit(
        ctx,
        model,
        opt,
        noisy(digit_batches(gen)),
        300,
        loss_fn=F.mse_loss,
        forward=forward,
        classifier=False,
    )
    x, _ = next(digit_batches(gen))
    with torch.no_grad():
        dead = dead_fraction(model.enc(x))
    ctx.check("over 80% of encoder units dead at the end", dead > 0.8)
    ctx.check("finite throughout", all(_finite(v) for v in ctx.losses))


# -- 16. Fixup ResNet (no normalisation): labels scrambled by a growing share (SGD momentum) ------


class FixupBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bias1 = nn.Parameter(torch.zeros(1))
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bias2 = nn.Parameter(torch.zeros(1))
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.scale = nn.Parameter(torch.ones(1))
        self.bias3 = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x + self.bias1))
        h = self.conv2(h + self.bias2) * self.scale + self.bias3
        return F.relu(x + h)


class FixupResNet(nn.Module):
    """Fixup (Zhang et al. 2019): conv1 He-init scaled by L^-1/2, conv2 and the head at zero."""

    def __init__(self, c: int = 16, blocks: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.blocks = nn.Sequential(*(FixupBlock(c) for _ in range(blocks)))
        self.head = nn.Linear(c * 16, 10)
        for b in self.blocks:
            nn.init.kaiming_normal_(b.conv1.weight, nonlinearity="relu")
            b.conv1.weight.data.mul_(blocks**-0.5)
            nn.init.zeros_(b.conv2.weight)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x.reshape(-1, 1, 8, 8)))
        return self.head(F.avg_pool2d(self.blocks(h), 2).flatten(1))


@scenario(
    "h74_fixup_resnet_no_norm",
    "sgd_mom",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="from step 120 a relabelling job scrambles a growing share of the labels being read",
    onset=120,
)
def h74_fixup_label_scramble_creep(ctx: Context) -> None:
    gen = seeded(7416)
    model = FixupResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    noise = torch.Generator().manual_seed(74160)

    def scramble(step: int, x: torch.Tensor, y: torch.Tensor):
        share = min(1.0, max(0.0, (step - 120) / 200))
        if share > 0:
            hit = torch.rand(len(y), generator=noise) < share
            y = torch.where(hit, torch.randint(0, 10, y.shape, generator=noise), y)
        return x, y

    fit(ctx, model, opt, digit_batches(gen), 320, alter=scramble)
    L = ctx.losses
    before = sum(L[100:120]) / 20
    ctx.check("trained well before 120", before < 0.5 * sum(L[:10]) / 10)
    ctx.check("loss climbed to over 3x its level at 120", sum(L[-20:]) / 20 > 3 * before)
    ctx.check("finite throughout", all(_finite(v) for v in L))
