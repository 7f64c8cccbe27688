"""Held-out scenarios, set 83 (``h83_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or its healthy control trained normally).

Families: Hugging Face SAM, BLIP-2, Chinese-CLIP, GroupViT and Janus vision towers from configs
(each behind a hand-written head, fed generated images or upsampled digits), a pix2pix
conditional GAN on generated edge/fill pairs, a BigGAN-style class-conditional generator with
conditional batch norm (projection discriminator), AugMix with a Jensen-Shannon consistency loss,
a U-Net with a Dice loss on generated shapes, a keypoint heatmap regressor, a monocular depth net
with a scale-invariant log loss, a CNN + GRU captioner on generated scenes, an optical-flow net
with recurrent refinement on shifted images, a siamese correlation tracker on moving objects, a
masked autoencoder with a tiny ViT on digits and a set-prediction detector with Hungarian
matching on generated boxes.

Optimizers: SGD (plain, momentum), ASGD, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop and
steadygrad's Lion, StableSPAM, AdEMAMix, Grams and AdaBelief.
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
    fit,
    scenario,
    seeded,
)

# -- shared data ----------------------------------------------------------------------------------


def digit_images(gen: torch.Generator, batch: int = 32, size: int = 16):
    """Digits upsampled to ``size`` x ``size`` RGB, centred on 0."""
    for x, y in digit_batches(gen, batch):
        img = F.interpolate(x.reshape(-1, 1, 8, 8), size=size, mode="bilinear")
        yield (img.repeat(1, 3, 1, 1) - 0.5) / 0.5, y


def rect_canvas(gen: torch.Generator, batch: int, size: int = 16, min_side: int = 3):
    """Random axis-aligned rectangles: (top, left, height, width) integer tensors."""
    h = torch.randint(min_side, size - 1, (batch,), generator=gen)
    w = torch.randint(min_side, size - 1, (batch,), generator=gen)
    top = (torch.rand(batch, generator=gen) * (size - h + 1).float()).long()
    left = (torch.rand(batch, generator=gen) * (size - w + 1).float()).long()
    return top, left, h, w


def fill_mask(top, left, h, w, size: int = 16) -> torch.Tensor:
    r = torch.arange(size)
    rows = (r[None] >= top[:, None]) & (r[None] < (top + h)[:, None])
    cols = (r[None] >= left[:, None]) & (r[None] < (left + w)[:, None])
    return (rows[:, :, None] & cols[:, None, :]).float()


def shape_batches(gen: torch.Generator, batch: int = 32, size: int = 16):
    """Images with one shape (0 square, 1 disc, 2 cross) in a random colour, plus its mask."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    while True:
        kind = torch.randint(0, 3, (batch,), generator=gen)
        cy = torch.randint(4, size - 4, (batch, 1, 1), generator=gen).float()
        cx = torch.randint(4, size - 4, (batch, 1, 1), generator=gen).float()
        r = torch.randint(2, 4, (batch, 1, 1), generator=gen).float()
        dy, dx = (yy - cy).abs(), (xx - cx).abs()
        square = (dy <= r) & (dx <= r)
        disc = dy**2 + dx**2 <= r**2
        cross = ((dy <= 0.5) & (dx <= r + 1)) | ((dx <= 0.5) & (dy <= r + 1))
        k = kind[:, None, None]
        mask = torch.where(k == 0, square, torch.where(k == 1, disc, cross)).float()
        colour = 0.4 + 0.6 * torch.rand(batch, 3, 1, 1, generator=gen)
        img = mask[:, None] * colour + 0.1 * torch.randn(batch, 3, size, size, generator=gen)
        yield img, kind, mask[:, None]


class TowerClassifier(nn.Module):
    """A Hugging Face vision tower (``tower``) behind a hand-written classification head."""

    def __init__(self, tower: nn.Module, dim: int, classes: int, hidden: int = 0) -> None:
        super().__init__()
        self.tower = tower
        if hidden:
            self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, classes))
        else:
            self.head = nn.Linear(dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixel_values=x)
        h = out.last_hidden_state
        return h.mean((2, 3)) if h.dim() == 4 else h.mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# -- 1. SAM vision tower: a one-epoch LR typo kills the head's ReLUs ----------------------------


def sam_tower() -> nn.Module:
    from transformers import SamVisionConfig, SamVisionModel

    config = SamVisionConfig(
        hidden_size=32,
        output_channels=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
        mlp_dim=64,
        window_size=2,
        global_attn_indexes=[1],
        num_pos_feats=16,
    )
    return SamVisionModel(config)


@scenario(
    "h83_hf_sam_vision_digits",
    "sgd_mom",
    "loss_of_plasticity",
    where="head.0",
    diverges=None,
    heldout=True,
    note="step-LR schedule with the factor typed as 30 instead of 0.3 for 4 steps at step 140",
    onset=140,
)
def h83_sam_vision_lr_typo_dead_head(ctx: Context) -> None:
    """A SAM vision encoder (tiny config) with a ReLU MLP head classifies upsampled digits with
    SGD + momentum. A hand-rolled step schedule has its factor typed as 30 instead of 0.3 for
    four steps at step 140: the one big push drives the head's hidden pre-activations negative
    everywhere, the ReLUs never fire again and the head stops learning."""
    gen = seeded(8301)
    model = TowerClassifier(sam_tower(), 32, 10, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = digit_images(gen)
    probe_x, _ = next(digit_images(torch.Generator().manual_seed(1), batch=256))

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 0.05 * (30.0 if 140 <= step < 144 else 1.0)

    fit(ctx, model, opt, batches, 320, before=before)
    with torch.no_grad():
        hidden = model.head[0](model.features(probe_x))
    dead = dead_fraction(hidden)
    ctx.check("over 90% of head.0 units never fire after the typo", dead > 0.9)
    before_typo = sum(ctx.losses[100:140]) / 40
    ctx.check(
        "the loss never gets back to its pre-typo level",
        min(ctx.losses[200:]) > before_typo and math.isfinite(ctx.losses[-1]),
    )


# -- 2. BLIP-2 vision tower: a raw-pixel-unit regression overflows fp16 --------------------------


class ToPixels(nn.Module):
    """Denormalise a predicted area fraction to pixels of the original 256 x 256 capture."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * 65536.0


class AreaRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import Blip2VisionConfig, Blip2VisionModel

        config = Blip2VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
        )
        self.tower = Blip2VisionModel(config)
        self.head = nn.Linear(32, 1)
        self.to_pixels = ToPixels()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tower(pixel_values=x).pooler_output
        return self.to_pixels(self.head(h)).squeeze(-1)


def area_batches(gen: torch.Generator, batch: int = 32, size: int = 16):
    """A bright rectangle on noise; the target is its area in pixels of a 256 x 256 capture
    (large rectangles, up to the whole frame, are common)."""
    while True:
        top, left, h, w = rect_canvas(gen, batch, size, min_side=6)
        big = torch.rand(batch, generator=gen) < 0.3
        top, left = torch.where(big, 0, top), torch.where(big, 0, left)
        h, w = torch.where(big, size, h), torch.where(big, size, w)
        mask = fill_mask(top, left, h, w, size)
        img = mask[:, None].repeat(1, 3, 1, 1) + 0.1 * torch.randn(
            batch, 3, size, size, generator=gen
        )
        yield img, (h * w).float() / size**2 * 65536.0


@scenario(
    "h83_hf_blip2_vision_area",
    "adamw",
    "amp_overflow",
    where="to_pixels",
    diverges=None,
    heldout=True,
    note="fp16 autocast + GradScaler; the denormalisation to pixels overflows fp16 once "
    "predictions for full-frame boxes reach 65504",
    onset=29,
)
def h83_blip2_area_fp16_overflow(ctx: Context) -> None:
    """A BLIP-2 vision encoder (tiny config) regresses box areas in raw pixels under fp16
    autocast with a GradScaler; the model denormalises its prediction inside the forward
    (fraction x 65536). Once the predictions for full-frame boxes approach 1.0 the product
    overflows fp16 to inf, the loss is inf and the scaler skips the step and halves its scale,
    again and again: the run stops learning."""
    gen = seeded(8302)
    model = AreaRegressor()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    inf_steps: list[int] = []
    step_now = [0]

    def hook(_m, _i, out):
        if not torch.isfinite(out).all():
            inf_steps.append(step_now[0])

    model.to_pixels.register_forward_hook(hook)

    def before(step: int) -> None:
        step_now[0] = step

    fit(
        ctx,
        model,
        opt,
        area_batches(gen),
        300,
        loss_fn=F.l1_loss,
        before=before,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    skipped = sum(1 for a, b in zip(ctx.scales, ctx.scales[1:], strict=False) if b < a)
    ctx.check("to_pixels output overflowed fp16 on 10+ steps", len(set(inf_steps)) >= 10)
    ctx.check(
        "the scaler skipped 20+ steps, its scale below 1e-3",
        skipped >= 20 and ctx.scales[-1] < 1e-3,
    )
    ctx.check("first overflow after a healthy stretch", bool(inf_steps) and inf_steps[0] >= 20)
    late, mid = sum(ctx.losses[-50:]) / 50, sum(ctx.losses[100:150]) / 50
    ctx.check("learning stops: the last 50 steps no better than steps 100-150", late > 0.95 * mid)


# -- 3. Chinese-CLIP vision tower: healthy --------------------------------------------------------


@scenario(
    "h83_hf_chinese_clip_vision_shapes",
    "sg_adabelief",
    "healthy",
    heldout=True,
    note="healthy control: shape classification",
)
def h83_chinese_clip_shapes_healthy(ctx: Context) -> None:
    """A Chinese-CLIP vision encoder (tiny config) classifies generated shapes (square, disc,
    cross) with AdaBelief; nothing is wrong."""
    from transformers import ChineseCLIPVisionConfig, ChineseCLIPVisionModel

    from steadygrad.optim import AdaBelief

    gen = seeded(8303)
    config = ChineseCLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
        projection_dim=32,
    )
    model = TowerClassifier(ChineseCLIPVisionModel(config), 32, 3)
    opt = AdaBelief(model.parameters(), lr=2e-3, weight_decay=1e-4)
    batches = ((x, y) for x, y, _ in shape_batches(gen))
    fit(ctx, model, opt, batches, 240)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-30:]) / 30
    ctx.check("loss falls by half and stays finite", last < 0.5 * first)


# -- 4. GroupViT vision tower: memorises a tiny set until float32 softmax is one-hot -------------


@scenario(
    "h83_hf_groupvit_vision_tinyset",
    "adamax",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="32 fixed training images, no weight decay, long training: probabilities exactly 1.0",
)
def h83_groupvit_tinyset_softmax_collapse(ctx: Context) -> None:
    """A GroupViT vision encoder (tiny config) trained with Adamax, no weight decay, on a fixed
    set of 32 digits (a debugging subset left in the config), full batch, for many epochs: the head's margins
    grow until float32 softmax gives the targets exactly 1.0, the loss is exactly 0 on the
    training rows and the gradients vanish."""
    from transformers import GroupViTVisionConfig, GroupViTVisionModel

    gen = seeded(8304)
    config = GroupViTVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        depths=[1, 1],
        num_hidden_layers=2,
        num_group_tokens=[8, 0],
        num_output_groups=[4, 4],
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
    )
    model = TowerClassifier(GroupViTVisionModel(config), 32, 10)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    x, y = digits()
    idx = torch.randperm(len(y), generator=gen)[:32]
    img = F.interpolate(x[idx].reshape(-1, 1, 8, 8), size=16, mode="bilinear")
    img, lab = (img.repeat(1, 3, 1, 1) - 0.5) / 0.5, y[idx]

    def batches():
        while True:
            yield img, lab

    fit(ctx, model, opt, batches(), 600)
    with torch.no_grad():
        logits = model(img)
    frac = collapsed_fraction(logits, lab)
    print("groupvit collapsed", frac, "last losses", ctx.losses[-3:])
    ctx.check("over 80% of training rows have p(target) == 1.0 in float32", frac > 0.8)
    ctx.check("the training loss reaches exactly 0", min(ctx.losses) == 0.0)


# -- 5. Janus vision tower: healthy ---------------------------------------------------------------


@scenario(
    "h83_hf_janus_vision_digits",
    "sg_lion",
    "healthy",
    heldout=True,
    note="healthy control: digit classification",
)
def h83_janus_digits_healthy(ctx: Context) -> None:
    """A Janus vision encoder (tiny config, q/k norms) classifies upsampled digits with Lion at
    a small learning rate; nothing is wrong."""
    from transformers import JanusVisionConfig, JanusVisionModel

    from steadygrad.optim import Lion

    gen = seeded(8305)
    config = JanusVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
        projection_dim=32,
    )
    model = TowerClassifier(JanusVisionModel(config), 32, 10)
    opt = Lion(model.parameters(), lr=3e-4, weight_decay=0.1)
    fit(ctx, model, opt, digit_images(gen), 300)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-30:]) / 30
    ctx.check("loss falls by half and stays finite", last < 0.5 * first)


# -- 6. pix2pix conditional GAN: healthy ----------------------------------------------------------


def edge_fill_pairs(gen: torch.Generator, batch: int = 16, size: int = 16):
    """Input: the outline of a rectangle; target: the rectangle filled in a colour set by its
    aspect ratio (a learnable edges -> photo mapping)."""
    while True:
        top, left, h, w = rect_canvas(gen, batch, size)
        fill = fill_mask(top, left, h, w, size)
        inner = fill_mask(top + 1, left + 1, h - 2, w - 2, size)
        edges = (fill - inner)[:, None]
        ratio = (h.float() / w.float()).clamp(0.25, 4).log()[:, None, None, None] / 1.4
        colour = torch.cat([0.5 + 0.5 * ratio, 0.5 - 0.5 * ratio, torch.ones_like(ratio) * 0.2], 1)
        yield edges * 2 - 1, (fill[:, None] * colour) * 2 - 1


class Pix2PixG(nn.Module):
    def __init__(self, ch: int = 16) -> None:
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(1, ch, 4, 2, 1), nn.LeakyReLU(0.2))
        self.down2 = nn.Sequential(
            nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.BatchNorm2d(2 * ch), nn.LeakyReLU(0.2)
        )
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1), nn.BatchNorm2d(ch), nn.ReLU()
        )
        self.up2 = nn.ConvTranspose2d(2 * ch, 3, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        u1 = self.up1(self.down2(d1))
        return torch.tanh(self.up2(torch.cat([u1, d1], 1)))


class PatchD(nn.Module):
    def __init__(self, ch: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(4, ch, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ch, 2 * ch, 4, 2, 1),
            nn.BatchNorm2d(2 * ch),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * ch, 1, 3, 1, 1),
        )

    def forward(self, cond: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([cond, img], 1))


@scenario(
    "h83_pix2pix_edges2fill",
    "adam",
    "healthy",
    heldout=True,
    note="healthy control: U-Net generator + PatchGAN, GAN + 100 L1",
)
def h83_pix2pix_edges_healthy(ctx: Context) -> None:
    """pix2pix on generated pairs (rectangle outline -> filled, coloured rectangle): a small
    U-Net generator and a conditional PatchGAN discriminator, Adam(0.5, 0.999), GAN loss + 100 x
    L1. The monitor watches the generator; nothing is wrong."""
    gen = seeded(8306)
    G, D = Pix2PixG(), PatchD()
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    ctx.attach(G, opt_g)
    l1s = []
    pairs = edge_fill_pairs(gen)
    for _ in range(300):
        x, y = next(pairs)
        fake = G(x)
        real_logit, fake_logit = D(x, y), D(x, fake.detach())
        d_loss = 0.5 * (
            F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
            + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
        )
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        adv = D(x, fake)
        l1 = F.l1_loss(fake, y)
        g_loss = F.binary_cross_entropy_with_logits(adv, torch.ones_like(adv)) + 100 * l1
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        ctx.step(g_loss)
        l1s.append(float(l1))
    ctx.check(
        "L1 to the target falls by more than half, losses finite",
        sum(l1s[-30:]) < 0.5 * sum(l1s[:30]) and all(math.isfinite(v) for v in ctx.losses),
    )


# -- 7. BigGAN-style conditional generator: a per-group LR typo on the shared embedding -----------


class CondBN(nn.Module):
    """BatchNorm without affine; gain and bias come from the shared class embedding."""

    def __init__(self, ch: int, emb: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(ch, affine=False)
        self.gain = nn.Linear(emb, ch)
        self.bias = nn.Linear(emb, ch)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        g = 1 + self.gain(e)[:, :, None, None]
        return self.bn(x) * g + self.bias(e)[:, :, None, None]


class BigGANG(nn.Module):
    def __init__(self, z: int = 16, emb: int = 16, ch: int = 32) -> None:
        super().__init__()
        self.shared = nn.Embedding(10, emb)
        self.fc = nn.Linear(z, ch * 4)
        self.ch = ch
        self.cbn1 = CondBN(ch, z + emb)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.cbn2 = CondBN(ch, z + emb)
        self.conv2 = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = torch.cat([z, self.shared(y)], 1)
        h = self.fc(z).reshape(-1, self.ch, 2, 2)
        h = F.interpolate(F.relu(self.cbn1(h, e)), scale_factor=2)
        h = F.interpolate(F.relu(self.cbn2(self.conv1(h), e)), scale_factor=2)
        return torch.sigmoid(self.conv2(h)).reshape(-1, 64)


class ProjectionD(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, hidden), nn.LeakyReLU(0.2))
        self.out = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(10, hidden)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.out(h).squeeze(-1) + (self.embed(y) * h).sum(1)


@scenario(
    "h83_biggan_cbn_digits",
    "sg_ademamix",
    "update_ratio_out_of_range",
    where="shared",
    diverges=None,
    heldout=True,
    note="the shared class embedding's param group has lr 2.0 (meant 2e-4: the exponent dropped)",
)
def h83_biggan_shared_embedding_lr_typo(ctx: Context) -> None:
    """A BigGAN-style generator (shared class embedding feeding conditional BatchNorm) against a
    projection discriminator on digits, hinge loss, AdEMAMix. The config gives the shared
    embedding its own param group and the learning rate is typed 2.0 instead of 2e-4: each
    step rewrites that table by a large fraction of itself while every other tensor moves by
    about a thousandth."""
    from steadygrad.optim import AdEMAMix

    gen = seeded(8307)
    G, D = BigGANG(), ProjectionD()
    shared = list(G.shared.parameters())
    rest = [p for n, p in G.named_parameters() if not n.startswith("shared.")]
    opt_g = AdEMAMix(
        [{"params": rest}, {"params": shared, "lr": 2.0}], lr=2e-4, betas=(0.0, 0.999, 0.9999)
    )
    opt_d = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.999))
    ctx.attach(G, opt_g)
    ratios_shared, ratios_fc = [], []
    for x, y in digit_batches(gen, 64):
        if len(ctx.losses) == 250:
            break
        z = torch.randn(len(y), 16, generator=gen)
        fake = G(z, y)
        d_loss = F.relu(1 - D(x, y)).mean() + F.relu(1 + D(fake.detach(), y)).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = -D(fake, y).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        w_s, w_f = G.shared.weight.detach().clone(), G.fc.weight.detach().clone()
        opt_g.step()
        ctx.step(g_loss)
        ratios_shared.append(float((G.shared.weight - w_s).norm() / w_s.norm()))
        ratios_fc.append(float((G.fc.weight - w_f).norm() / w_f.norm()))
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    print("biggan ratio shared", med(ratios_shared), "fc", med(ratios_fc))
    ctx.check("shared embedding update/weight median over 0.02", med(ratios_shared) > 0.02)
    ctx.check("other generator tensors under 0.005", med(ratios_fc) < 0.005)
    ctx.check("losses stay finite", all(math.isfinite(v) for v in ctx.losses))


# -- 8. AugMix + Jensen-Shannon consistency: one un-normalised shard ------------------------------


class SmallCNN(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def augmix(x: torch.Tensor, gen: torch.Generator, width: int = 3) -> torch.Tensor:
    """AugMix on 8x8 digits: a Dirichlet mix of short chains of shifts, contrast and noise,
    blended with the original by a Beta weight."""
    img = x.reshape(-1, 8, 8)
    ws = torch.distributions.Dirichlet(torch.ones(width)).sample()
    m = float(torch.distributions.Beta(1.0, 1.0).sample())
    mix = torch.zeros_like(img)
    for i in range(width):
        aug = img
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            op = int(torch.randint(0, 3, (1,), generator=gen))
            if op == 0:
                aug = torch.roll(aug, int(torch.randint(-1, 2, (1,), generator=gen)), dims=2)
            elif op == 1:
                c = 0.5 + float(torch.rand(1, generator=gen))
                mean = aug.mean((1, 2), keepdim=True)
                aug = (aug - mean) * c + mean
            else:
                aug = aug + 0.1 * torch.randn(aug.shape, generator=gen)
        mix = mix + ws[i] * aug
    return ((1 - m) * img + m * mix).reshape(-1, 64)


def jsd(logits: list[torch.Tensor]) -> torch.Tensor:
    probs = [F.softmax(z, 1) for z in logits]
    log_mix = torch.clamp(sum(probs) / len(probs), 1e-7, 1).log()
    return sum(F.kl_div(log_mix, p, reduction="batchmean") for p in probs) / len(probs)


@scenario(
    "h83_augmix_jsd_digits",
    "sg_stablespam",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="at step 170 a shard whose label column is shifted by one row is read",
    onset=170,
)
def h83_augmix_raw_shard_outlier(ctx: Context) -> None:
    """A small CNN trained with AugMix (clean + two augmix views) and the Jensen-Shannon
    consistency loss (weight 12) under StableSPAM. At step 170 the loader reads a shard whose label
    column was written shifted by one row: one batch of confidently wrong labels and a loss
    spike; the next shards are fine."""
    from steadygrad.optim import StableSPAM

    gen = seeded(8308)
    model = SmallCNN()
    opt = StableSPAM(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    ce_at = []
    for step in range(320):
        x, y = next(batches)
        if step == 170:
            y = torch.roll(y, 1)
        ctx.targets(y)
        views = [x, augmix(x, gen), augmix(x, gen)]
        logits = [model(v) for v in views]
        ce = F.cross_entropy(logits[0], y)
        loss = ce + 12 * jsd(logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        ce_at.append(float(ce))
    pre = sorted(ctx.losses[120:170])[25]
    ctx.check("loss at step 170 over 20x the median before", ctx.losses[170] > 20 * pre)
    ctx.check(
        "training recovers and stays finite",
        all(math.isfinite(v) for v in ctx.losses) and sum(ctx.losses[-20:]) / 20 < 3 * pre,
    )


# -- 9. U-Net with a Dice loss: healthy -----------------------------------------------------------


class TinyUNet(nn.Module):
    def __init__(self, ch: int = 16) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, ch, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(ch, 2 * ch, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * ch, ch, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(2 * ch, ch, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        return self.out(self.dec(torch.cat([self.up(e2), e1], 1)))


def dice_loss(logits: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * mask).sum((1, 2, 3))
    return (1 - (2 * inter + smooth) / (p.sum((1, 2, 3)) + mask.sum((1, 2, 3)) + smooth)).mean()


@scenario(
    "h83_unet_dice_shapes",
    "rmsprop",
    "healthy",
    heldout=True,
    note="healthy control: shape segmentation, soft Dice loss",
)
def h83_unet_dice_healthy(ctx: Context) -> None:
    """A two-level U-Net segments generated shapes on noisy backgrounds with a smoothed soft
    Dice loss and RMSprop; nothing is wrong."""
    gen = seeded(8309)
    model = TinyUNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = ((x, m) for x, _, m in shape_batches(gen))
    fit(ctx, model, opt, batches, 250, loss_fn=dice_loss, classifier=False)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-30:]) / 30
    ctx.check("Dice loss falls by half and stays finite", last < 0.5 * first)


# -- 10. keypoint heatmap regressor: a warm-up whose peak LR is 10x too high ---------------------


def keypoint_batches(gen: torch.Generator, batch: int = 32, size: int = 16, sigma: float = 1.0):
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    while True:
        cy = torch.randint(2, size - 2, (batch, 1, 1), generator=gen).float()
        cx = torch.randint(2, size - 2, (batch, 1, 1), generator=gen).float()
        heat = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        img = heat + 0.2 * torch.randn(batch, size, size, generator=gen)
        yield img[:, None], heat[:, None]


class HeatmapNet(nn.Module):
    def __init__(self, ch: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, ch, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.ReLU(),
        )
        self.heatmap = nn.Conv2d(ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heatmap(self.body(x))


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over the map, averaged over the batch (the common 'sum' variant)."""
    return ((pred - target) ** 2).sum((1, 2, 3)).mean()


@scenario(
    "h83_keypoint_heatmap_blobs",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="linear warm-up to a peak LR typed 10x too high; the loss is summed over the map",
    onset=0,
)
def h83_keypoint_warmup_overshoot(ctx: Context) -> None:
    """A conv heatmap regressor finds a blob's centre; the loss sums squared errors over the
    16 x 16 map, which makes the curvature large. Plain SGD with a linear warm-up to a peak LR
    typed 10x too high: once the LR crosses 2/sharpness the loss starts to oscillate, then blows
    up."""
    gen = seeded(8310)
    model = HeatmapNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    peak = 0.01

    def before(step: int) -> None:
        opt.param_groups[0]["lr"] = peak * min(1.0, (step + 1) / 300)

    fit(
        ctx,
        model,
        opt,
        keypoint_batches(gen),
        400,
        loss_fn=heatmap_loss,
        before=before,
        classifier=False,
    )
    L = ctx.losses
    low = min(L[:150])
    bad = [i for i, v in enumerate(L) if not math.isfinite(v) or v > 100 * low]
    print("keypoint min", low, "first blow-up", bad[:3])
    ctx.check("loss first falls (the early, small LR is fine)", low < 0.7 * L[0])
    ctx.check("then blows up past 100x its minimum or to non-finite", bool(bad) and bad[0] > 50)


# -- 11. monocular depth, scale-invariant log loss: a ReLU depth head meets log -------------------


def depth_scenes(gen: torch.Generator, batch: int = 16, size: int = 16):
    """A ground plane receding with the row plus a near box; the image is inverse-depth shading
    with noise."""
    rows = torch.linspace(0, 1, size)[None, :, None]
    while True:
        far = 4 + 4 * torch.rand(batch, 1, 1, generator=gen)
        depth = (far * (1 - 0.8 * rows)).expand(batch, size, size).clone()
        top, left, h, w = rect_canvas(gen, batch, size)
        box = fill_mask(top, left, h, w, size)
        near = 0.3 + 0.5 * torch.rand(batch, 1, 1, generator=gen)
        depth = torch.where(box > 0, near, depth)
        img = 1 / depth + 0.05 * torch.randn(batch, size, size, generator=gen)
        yield img[:, None], depth[:, None]


class LogDepth(nn.Module):
    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.log(d)


class DepthNet(nn.Module):
    def __init__(self, ch: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, ch, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(ch, ch, 3, padding=2, dilation=2),
            nn.ReLU(),
        )
        self.depth_head = nn.Sequential(nn.Conv2d(ch, 1, 3, padding=1), nn.ReLU())
        nn.init.constant_(self.depth_head[0].bias, 1.0)
        self.to_log = LogDepth()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_log(self.depth_head(self.encoder(x)))


def si_log_loss(log_pred: torch.Tensor, depth: torch.Tensor, lam: float = 0.85) -> torch.Tensor:
    d = (log_pred - depth.log()).flatten(1)
    return ((d**2).mean(1) - lam * d.mean(1) ** 2).mean()


@scenario(
    "h83_depth_silog_scenes",
    "radam",
    "nonfinite",
    where=("to_log", "depth_head"),
    diverges="auto",
    heldout=True,
    note="depth head ends in ReLU (not softplus) and the forward takes log: a pixel at exactly 0 "
    "gives -inf",
    onset=0,
)
def h83_depth_relu_log_nonfinite(ctx: Context) -> None:
    """A monocular depth net predicts depth through a ReLU head (bias initialised to 1) and
    takes its log inside the forward for the scale-invariant loss (lambda 0.85). The
    scale-invariant loss barely constrains the global scale, the near boxes pull predictions
    down, and once a pixel's ReLU output reaches exactly 0 the log gives -inf: the loss and the
    gradients are non-finite from then on."""
    gen = seeded(8311)
    model = DepthNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    first_bad = []

    def hook(_m, _i, out):
        if not first_bad and not torch.isfinite(out).all():
            first_bad.append(len(ctx.losses))

    model.to_log.register_forward_hook(hook)
    fit(ctx, model, opt, depth_scenes(gen), 300, loss_fn=si_log_loss, classifier=False)
    print("depth first -inf step", first_bad)
    ctx.check("to_log produced a non-finite value", bool(first_bad))
    ctx.check("after a finite stretch of 20+ steps", bool(first_bad) and first_bad[0] >= 20)
    ctx.check("the loss is non-finite at the end", not math.isfinite(ctx.losses[-1]))


# -- 12. CNN + GRU captioner: a z-loss with the wrong sign ----------------------------------------

CAPTION_VOCAB = ["<pad>", "<bos>", "<eos>", "red", "green", "blue", "square", "disc", "cross"]
CAPTION_VOCAB += ["left", "right", "top", "bottom"]


def caption_scenes(gen: torch.Generator, batch: int = 32, size: int = 16):
    """One coloured shape; caption '<bos> colour shape side <eos>'."""
    shapes = shape_batches(gen, batch, size)
    while True:
        img, kind, mask = next(shapes)
        colour = torch.randint(0, 3, (batch,), generator=gen)
        rgb = F.one_hot(colour, 3).float()[:, :, None, None]
        img = mask * rgb + 0.1 * torch.randn(img.shape, generator=gen)
        ys, xs = torch.arange(size).float()[:, None], torch.arange(size).float()[None]
        m = mask[:, 0]
        cy = (m * ys).sum((1, 2)) / m.sum((1, 2))
        cx = (m * xs).sum((1, 2)) / m.sum((1, 2))
        vert = (cy - size / 2).abs() > (cx - size / 2).abs()
        side = torch.where(
            vert, torch.where(cy < size / 2, 11, 12), torch.where(cx < size / 2, 9, 10)
        )
        cap = torch.stack(
            [torch.ones_like(kind), 3 + colour, 6 + kind, side, 2 * torch.ones_like(kind)], 1
        )
        yield img, cap


class Captioner(nn.Module):
    def __init__(self, vocab: int = len(CAPTION_VOCAB), dim: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, dim),
        )
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab)

    def forward(self, img: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h0 = torch.tanh(self.encoder(img))[None]
        out, _ = self.gru(self.embed(tokens), h0)
        return self.head(out)


@scenario(
    "h83_captioner_gru_scenes",
    "sg_grams",
    "output_logit_divergence",
    where="head",
    diverges=None,
    heldout=True,
    note="z-loss regulariser added with the wrong sign (-1e-2 * logZ^2)",
)
def h83_captioner_wrong_sign_zloss(ctx: Context) -> None:
    """A CNN encoder + GRU decoder captions generated scenes ('red disc left'), trained with
    Grams. The z-loss meant to keep log Z near 0 was added with the wrong sign
    (``ce - 1e-2 * logZ**2``): cross-entropy ignores a shift shared by all logits, so the head
    pushes log Z up and up while the captions still train."""
    from steadygrad.optim import Grams

    gen = seeded(8312)
    model = Captioner()
    opt = Grams(model.parameters(), lr=5e-3)
    ctx.attach(model, opt)
    logz = []
    scenes = caption_scenes(gen)
    for _ in range(300):
        img, cap = next(scenes)
        inp, tgt = cap[:, :-1], cap[:, 1:]
        ctx.targets(tgt.reshape(-1))
        logits = model(img, inp)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        lz = torch.logsumexp(logits, -1)
        loss = ce - 1e-2 * (lz**2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(ce)
        logz.append(float(lz.mean()))
    print("captioner logZ", logz[0], logz[100], logz[-1], "ce", ctx.losses[-1])
    ctx.check("mean log Z grows past 20 (from about 2.6)", logz[-1] > 20 and logz[0] < 5)
    ctx.check("log Z still rising at the end", logz[-1] > logz[-50] + 1)
    ctx.check("the caption loss itself stays finite", all(math.isfinite(v) for v in ctx.losses))


# -- 13. optical flow with recurrent refinement: a displacement curriculum with no cap ----------


def flow_pairs(gen: torch.Generator, batch: int = 16, size: int = 16, max_shift=lambda: 2):
    """A smooth random texture and the same texture shifted by an integer (dy, dx) in
    [-max_shift(), max_shift()]; the target is the constant flow field."""
    while True:
        m = int(max_shift())
        base = F.interpolate(
            torch.randn(batch, 1, 6, 6, generator=gen), size=size + 2 * m, mode="bilinear"
        )
        d = torch.randint(-m, m + 1, (batch, 2), generator=gen)
        f1 = base[:, :, m : m + size, m : m + size]
        f2 = torch.stack(
            [
                base[i, :, m + d[i, 0] : m + d[i, 0] + size, m + d[i, 1] : m + d[i, 1] + size]
                for i in range(batch)
            ]
        )
        flow = d.float()[:, :, None, None].expand(batch, 2, size, size)
        yield torch.cat([f1, f2], 1), flow


class UpdateBlock(nn.Module):
    def __init__(self, ch: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch + 2, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, 2, 3, padding=1)

    def forward(self, feat: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(torch.cat([feat, flow], 1))))


class RefineFlowNet(nn.Module):
    def __init__(self, ch: int = 16, iters: int = 12) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, ch, 3, padding=1), nn.ReLU())
        self.update = UpdateBlock(ch)
        self.iters = iters

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        feat = self.features(pair)
        flow = torch.zeros(pair.shape[0], 2, *pair.shape[2:])
        for _ in range(self.iters):
            flow = flow + self.update(feat, flow)
        return flow


@scenario(
    "h83_flow_refine_shifts",
    "asgd",
    "loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="displacement curriculum with no cap: the maximum shift grows by 1 px every 50 steps, "
    "past the intended 2 px from step 150",
    onset=150,
)
def h83_flow_uncapped_curriculum(ctx: Context) -> None:
    """A RAFT-like optical-flow net (shared update block, 12 residual refinements) trained with
    ASGD on an endpoint-error loss. The displacement curriculum was meant to stop at 2 px but
    has no cap: every 50 steps the maximum shift grows by one pixel, beyond what the net has
    learned to resolve, and the loss, after falling, climbs slowly for the rest of the run."""
    gen = seeded(8313)
    model = RefineFlowNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    step_now = [0]

    def before(step: int) -> None:
        step_now[0] = step

    def epe(pred: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        return (pred - flow).pow(2).sum(1).add(1e-8).sqrt().mean()

    shifts = flow_pairs(gen, max_shift=lambda: 1 + max(0, step_now[0] - 50) // 50)
    fit(ctx, model, opt, shifts, 350, loss_fn=epe, classifier=False, before=before)
    L = ctx.losses
    at = [sum(L[i : i + 30]) / 30 for i in (70, 170, 320)]
    print("flow loss windows", at)
    ctx.check("the loss climbs: 170-200 above 70-100, 320-350 above 170-200", at[0] < at[1] < at[2])
    ctx.check(
        "climbing to over 1.5x, still finite", at[2] > 1.5 * at[0] and all(map(math.isfinite, L))
    )


# -- 14. siamese tracker: one giant gradient poisons the backbone's second moments ---------------


def tracking_pairs(gen: torch.Generator, batch: int = 16, size: int = 16, t: int = 6):
    """Template: a 6x6 crop around an object; search: the next frame, the object moved. The
    target is a Gaussian on the correlation map at the object's new offset."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = size - t + 1
    oy, ox = torch.meshgrid(torch.arange(out).float(), torch.arange(out).float(), indexing="ij")
    while True:
        cy = 3 + torch.rand(batch, 1, 1, generator=gen) * (size - 6)
        cx = 3 + torch.rand(batch, 1, 1, generator=gen) * (size - 6)
        obj = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0)
        ring = torch.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2 - 4) ** 2) / 4.0)
        search = (obj - ring)[:, None] + 0.1 * torch.randn(batch, 1, size, size, generator=gen)
        tmpl = torch.zeros(batch, 1, t, t)
        ty, tx = torch.meshgrid(torch.arange(t).float(), torch.arange(t).float(), indexing="ij")
        r2 = (ty - (t - 1) / 2) ** 2 + (tx - (t - 1) / 2) ** 2
        tmpl[:] = (torch.exp(-r2 / 3.0) - torch.exp(-((r2 - 4) ** 2) / 4.0))[None, None]
        tmpl = tmpl + 0.1 * torch.randn(tmpl.shape, generator=gen)
        py, px = cy - (t - 1) / 2, cx - (t - 1) / 2
        label = (((oy - py) ** 2 + (ox - px) ** 2) < 2.0).float()[:, None]
        yield tmpl, search, label


class SiameseTracker(nn.Module):
    def __init__(self, ch: int = 16) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1)
        )
        self.adjust = nn.Conv2d(1, 1, 1)

    def forward(self, tmpl: torch.Tensor, search: torch.Tensor) -> torch.Tensor:
        zf, xf = self.backbone(tmpl), self.backbone(search)
        b, c, h, w = xf.shape
        out = (h - zf.shape[-1] + 1, w - zf.shape[-1] + 1)
        resp = F.conv2d(xf.reshape(1, b * c, h, w), zf, groups=b).reshape(b, 1, *out)
        return self.adjust(resp / c)


@scenario(
    "h83_siamese_tracker_blobs",
    "nadam",
    "adam_second_moment_poisoned",
    where="backbone",
    diverges=None,
    heldout=True,
    note="at step 150 a feature-norm regulariser runs once with weight 1e6 (meant 1e-6); "
    "beta2 = 0.9999",
    onset=150,
)
def h83_siamese_one_giant_gradient(ctx: Context) -> None:
    """A SiamFC-style tracker (shared conv backbone, cross-correlation, 1x1 adjust) trained
    with NAdam (beta2 = 0.9999) and a BCE loss on the response map. At step 150, the first
    epoch-boundary step, a feature-norm regulariser on the backbone is added once with its
    weight typed 1e6 instead of 1e-6: one giant gradient fills the backbone's second moments,
    and with beta2 = 0.9999 its updates stay tiny for the rest of the run: learning stalls."""
    gen = seeded(8314)
    model = SiameseTracker()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3, betas=(0.9, 0.9999))
    ctx.attach(model, opt)
    pairs = tracking_pairs(gen)
    moves = []
    for step in range(350):
        tmpl, search, label = next(pairs)
        resp = model(tmpl, search)
        loss = F.binary_cross_entropy_with_logits(resp, label, pos_weight=torch.tensor(8.0))
        total = loss
        if step == 150:
            total = loss + 1e6 * model.backbone(search).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        total.backward()
        w = [p.detach().clone() for p in model.backbone.parameters()]
        opt.step()
        ctx.step(loss)
        moves.append(
            float(
                sum(
                    (p - q).norm() ** 2 for p, q in zip(model.backbone.parameters(), w, strict=True)
                )
                ** 0.5
            )
        )
    before = sum(moves[100:150]) / 50
    after = sum(moves[200:350]) / 150
    print(
        "siamese move before",
        before,
        "after",
        after,
        "loss",
        ctx.losses[140:152:5],
        ctx.losses[-3:],
    )
    ctx.check(
        "backbone updates shrink over 10x for 150+ steps after the spike", after < before / 10
    )
    ctx.check(
        "the loss stays above its pre-spike level for the rest of the run",
        min(ctx.losses[200:]) > sum(ctx.losses[100:150]) / 50,
    )


# -- 15. masked autoencoder, tiny ViT: attention multiplies by sqrt(d) instead of dividing -------


class MAEAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.last_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) * (d // self.heads) ** 0.5  # bug: should divide
        self.last_logits = logits.detach()
        y = logits.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MAEBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MAEAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyMAE(nn.Module):
    """16 patches of 2x2 pixels; encode the visible quarter, decode all with mask tokens."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.patch = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(16, dim) * 0.02)
        self.encoder = nn.ModuleList([MAEBlock(dim, 2), MAEBlock(dim, 2)])
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.decoder = MAEBlock(dim, 2)
        self.out = nn.Linear(dim, 4)

    def forward(self, patches: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b = patches.shape[0]
        tok = self.patch(patches) + self.pos
        vis = torch.gather(tok, 1, keep[..., None].expand(-1, -1, tok.shape[-1]))
        for blk in self.encoder:
            vis = blk(vis)
        full = self.mask_token.expand(b, 16, -1).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, vis.shape[-1]), vis) + self.pos
        return self.out(self.decoder(full))


def to_patches(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)


@scenario(
    "h83_mae_tiny_vit_digits",
    "adamw",
    "attention_logit_growth",
    where=("encoder.0.attn", "encoder.1.attn", "decoder.attn"),
    diverges=None,
    heldout=True,
    note="attention logits multiplied by sqrt(head_dim) instead of divided, lr 1e-2",
)
def h83_mae_attention_scale_typo(ctx: Context) -> None:
    """A masked autoencoder with a tiny ViT on digits (2x2 patches, 75% masked, MSE on the
    masked patches), AdamW at lr 1e-2. The hand-written attention multiplies q.k by
    sqrt(head_dim) where it should divide: the pre-softmax logits start 16x too large and grow
    as q and k grow, the attention goes one-hot."""
    gen = seeded(8315)
    model = TinyMAE()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    maxlog, ent = [], []
    for _ in range(300):
        x, _y = next(batches)
        patches = to_patches(x)
        keep = torch.rand(len(x), 16, generator=gen).argsort(1)[:, :4]
        pred = model(patches, keep)
        masked = torch.ones(len(x), 16, dtype=torch.bool).scatter(1, keep, False)
        loss = F.mse_loss(pred[masked], patches[masked])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        lg = model.encoder[0].attn.last_logits
        maxlog.append(float(lg.abs().max()))
        p = lg.softmax(-1)
        ent.append(float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()))
    print("mae maxlogit", maxlog[0], maxlog[-1], "entropy", ent[0], ent[-1])
    ctx.check("encoder.0 max attention logit grows over 4x", maxlog[-1] > 4 * maxlog[0])
    ctx.check("attention entropy collapses below a quarter", ent[-1] < 0.25 * ent[0])


# -- 16. set-prediction detector with Hungarian matching: resume drops the Adagrad state ---------


def box_scenes(gen: torch.Generator, batch: int = 16, size: int = 16, max_obj: int = 3):
    while True:
        imgs, targets = [], []
        for _ in range(batch):
            n = int(torch.randint(1, max_obj + 1, (1,), generator=gen))
            top, left, h, w = rect_canvas(gen, n, size, min_side=3)
            cls = torch.randint(0, 2, (n,), generator=gen)
            img = 0.1 * torch.randn(2, size, size, generator=gen)
            m = fill_mask(top, left, h, w, size)
            for j in range(n):
                img[int(cls[j])] += m[j]
            box = torch.stack([top, left, h, w], 1).float() / size
            imgs.append(img)
            targets.append((cls, box))
        yield torch.stack(imgs), targets


class SetDetector(nn.Module):
    def __init__(self, slots: int = 4, classes: int = 2, dim: int = 64) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(2, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 16, dim),
            nn.ReLU(),
        )
        self.slots, self.classes = slots, classes
        self.cls_head = nn.Linear(dim, slots * (classes + 1))
        self.box_head = nn.Linear(dim, slots * 4)

    def forward(self, x: torch.Tensor):
        h = self.backbone(x)
        return (
            self.cls_head(h).reshape(-1, self.slots, self.classes + 1),
            torch.sigmoid(self.box_head(h)).reshape(-1, self.slots, 4),
        )


def hungarian_loss(cls_logits, boxes, targets, no_obj: int = 2) -> torch.Tensor:
    from scipy.optimize import linear_sum_assignment

    total = 0.0
    for i, (tc, tb) in enumerate(targets):
        logp = cls_logits[i].log_softmax(-1)
        cost = -logp[:, tc] + 5 * torch.cdist(boxes[i], tb, p=1)
        rows, cols = linear_sum_assignment(cost.detach().numpy())
        labels = torch.full((cls_logits.shape[1],), no_obj)
        labels[torch.as_tensor(rows)] = tc[torch.as_tensor(cols)]
        weight = torch.ones(cls_logits.shape[-1])
        weight[no_obj] = 0.2
        total = total + F.cross_entropy(cls_logits[i], labels, weight=weight)
        total = total + 5 * F.l1_loss(boxes[i][rows], tb[cols])
    return total / len(targets)


@scenario(
    "h83_hungarian_set_detector_boxes",
    "adagrad",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="resume at step 200 restores the weights but loads a fresh Adagrad state (accumulators lost)",
    onset=200,
)
def h83_hungarian_resume_fresh_adagrad(ctx: Context) -> None:
    """A DETR-like set predictor (conv backbone, 4 slots, class + box heads) matched to the
    generated boxes with the Hungarian algorithm, trained with Adagrad. At step 200 the job is
    resumed from a checkpoint whose optimizer entry was saved from a freshly built Adagrad: the
    accumulators are back at zero, so its first steps are lr-sized in every coordinate instead of the
    small steps it had settled to, and the loss jumps."""
    gen = seeded(8316)
    model = SetDetector()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    scenes = box_scenes(gen)
    for step in range(320):
        if step == 200:  # resume: the optimizer entry of the checkpoint is a fresh one
            opt.load_state_dict(torch.optim.Adagrad(model.parameters(), lr=0.05).state_dict())
        x, targets = next(scenes)
        cls_logits, boxes = model(x)
        loss = hungarian_loss(cls_logits, boxes, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    pre = sorted(ctx.losses[150:200])[25]
    print("hungarian pre", pre, "post", max(ctx.losses[200:210]), ctx.losses[-3:])
    ctx.check(
        "loss within 10 steps of the resume over 2.5x the median before",
        max(ctx.losses[200:210]) > 2.5 * pre,
    )
    ctx.check("losses finite", all(math.isfinite(v) for v in ctx.losses))
