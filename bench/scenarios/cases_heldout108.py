"""Held-out set 108 (``h108_``): Hugging Face ColPali, Evolla, Depth Pro and RF-DETR from tiny
configs, and hand-written models of fields not covered before: a SegNet with pooling indices, a
source-separation U-Net on spectrograms, a learned (recursive-model) index over a sorted array,
a 3-D pose lifter from 2-D keypoints, a handwriting-synthesis mixture density network with a
soft attention window, a seismic-inversion CNN, an inverse Navier-Stokes PINN, a document layout
transformer, a crowd-counting density network, a radar-nowcasting U-Net and a DCRNN-style
diffusion-convolution traffic forecaster.

All data is generated here (no downloads); every run is seeded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, scenario, seeded

# -- shared helpers --------------------------------------------------------------------------------


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


# -- ColPali: late-interaction retrieval of generated pages ------------------------------------------


def _colpali():
    from transformers import ColPaliConfig, ColPaliForRetrieval

    text = dict(
        model_type="gemma",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=96,
    )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
        projection_dim=32,
    )
    vlm = dict(
        model_type="paligemma",
        text_config=text,
        vision_config=vision,
        image_token_index=95,
        projection_dim=32,
        hidden_size=32,
    )
    return ColPaliForRetrieval(ColPaliConfig(vlm_config=vlm, embedding_dim=16))


def _page_batches(gen: torch.Generator, batch: int = 8, topics: int = 16):
    """Pages (a topic's glyph pattern + noise, 16 image tokens + 4 text tokens) and queries (6
    words drawn from the topic's 5-word vocabulary)."""
    patterns = torch.randn(topics, 3, 16, 16, generator=gen)
    words = 10 + torch.arange(topics * 5).reshape(topics, 5)
    while True:
        t = torch.randperm(topics, generator=gen)[:batch]
        img = patterns[t] + 0.5 * torch.randn(batch, 3, 16, 16, generator=gen)
        pick = torch.randint(0, 5, (batch, 6), generator=gen)
        query = words[t[:, None], pick]
        page_txt = words[t[:, None], torch.randint(0, 5, (batch, 4), generator=gen)]
        page = torch.cat([torch.full((batch, 16), 95), page_txt], 1)
        yield query, page, img


def _colpali_loss(model: nn.Module, b) -> torch.Tensor:
    query, page, img = b
    q = model(input_ids=query, attention_mask=torch.ones_like(query)).embeddings
    d = model(input_ids=page, attention_mask=torch.ones_like(page), pixel_values=img).embeddings
    scores = torch.einsum("qnd,pmd->qpnm", q, d).amax(-1).sum(-1)  # MaxSim
    return F.cross_entropy(scores, torch.arange(len(query)))


def _text_attn_logit_max(model: nn.Module, query: torch.Tensor) -> float:
    """Largest |q.k| / sqrt(head_dim) of the text tower (before RoPE, a rotation) on a batch."""
    got: dict[str, torch.Tensor] = {}
    hooks = []
    for i in range(2):
        attn = model.vlm.language_model.layers[i].self_attn
        for nm in ("q_proj", "k_proj"):
            mod = getattr(attn, nm)
            hooks.append(
                mod.register_forward_hook(lambda m, a, o, k=f"{i}{nm}": got.__setitem__(k, o))
            )
    with torch.no_grad():
        model(input_ids=query, attention_mask=torch.ones_like(query))
    for h in hooks:
        h.remove()
    best = 0.0
    for i in range(2):
        q = got[f"{i}q_proj"].reshape(*query.shape, 2, 16)
        k = got[f"{i}k_proj"].reshape(*query.shape, 1, 16)
        s = torch.einsum("bthd,bsd->bhts", q, k[:, :, 0]) / 4.0
        best = max(best, float(s.abs().max()))
    return best


@scenario(
    "hf_colpali_pages",
    "adamw",
    "attention_logit_growth",
    where=("vlm.language_model.layers.0.self_attn", "vlm.language_model.layers.1.self_attn"),
    diverges="auto",
    heldout=True,
    note="text tower's q/k projections unfrozen at the projection head's LR (1e-1, not 3e-4)",
    onset=0,
)
def h108_hf_colpali_qk_head_lr(ctx: Context) -> None:
    gen = seeded(10801)
    model = _colpali()
    batches = _page_batches(gen)
    qk = [
        p
        for n, p in model.named_parameters()
        if "language_model" in n and ("q_proj" in n or "k_proj" in n)
    ]
    ids = {id(p) for p in qk}
    head = list(model.embedding_proj_layer.parameters())
    ids |= {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    # the bug: the q/k projections were added to the head's group when they were unfrozen
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 3e-4}, {"params": head + qk, "lr": 1e-1}], weight_decay=0.0
    )
    probe = next(batches)
    start = _text_attn_logit_max(model, probe[0])
    ctx.attach(model, opt, probe=(_colpali_loss, probe))
    for _ in range(100):
        loss = _colpali_loss(model, next(batches))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    end = _text_attn_logit_max(model, probe[0])
    ctx.check("text attention logits grew 100x and past 100", end > 100 * start and end > 100)


# -- Evolla: protein-conditioned text generation --------------------------------------------------


def _evolla():
    from transformers import EvollaConfig, EvollaForProteinText2Text

    protein = dict(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    config = EvollaConfig(
        protein_encoder_config=protein,
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        resampler_depth=1,
        resampler_dim_head=16,
        resampler_heads=2,
        resampler_num_latents=4,
        aligner_num_add_layers=1,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return EvollaForProteinText2Text(config)


def _protein_batches(gen: torch.Generator, batch: int = 8):
    """A protein (residues 4..23) carrying one of 6 motifs; its text: a 2-token prompt naming the
    motif family, then a fixed 8-token description of the motif."""
    motifs = torch.randint(4, 24, (6, 5), generator=gen)
    captions = torch.randint(10, 90, (6, 8), generator=gen)
    while True:
        m = torch.randint(0, 6, (batch,), generator=gen)
        prot = torch.randint(4, 24, (batch, 16), generator=gen)
        at = torch.randint(0, 11, (batch,), generator=gen)
        for i in range(batch):
            prot[i, at[i] : at[i] + 5] = motifs[m[i]]
        text = torch.cat([torch.ones(batch, 1, dtype=torch.long), 3 + m[:, None], captions[m]], 1)
        yield prot, text


def _evolla_logits(model: nn.Module, prot: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return model(
        input_ids=text,
        attention_mask=torch.ones_like(text),
        protein_input_ids=prot,
        protein_attention_mask=torch.ones_like(prot),
    ).logits


def _evolla_loss(model: nn.Module, b) -> torch.Tensor:
    prot, text = b
    logits = _evolla_logits(model, prot, text)
    return F.cross_entropy(logits[:, 1:-1].reshape(-1, 96), text[:, 2:].reshape(-1))


@scenario(
    "hf_evolla_protein_text",
    "adam",
    "loss_spike",
    diverges=None,
    heldout=True,
    note="resumed from a weights-only checkpoint at step 80: Adam's moments are empty and its "
    "first updates are +-lr on every weight at the full LR (no re-warm-up)",
    onset=80,
)
def h108_hf_evolla_resume_without_optimizer_state(ctx: Context) -> None:
    gen = seeded(10802)
    model = _evolla()
    batches = _protein_batches(gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = next(batches)
    ctx.attach(model, opt, probe=(_evolla_loss, probe))
    for step in range(130):
        if step == 80:
            opt.state.clear()  # the checkpoint held the weights only
        loss = _evolla_loss(model, next(batches))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    calm = _mean(ctx.losses[70:80])
    ctx.check("loss jumped 20x within 5 steps of the resume", max(ctx.losses[80:86]) > 20 * calm)
    ctx.check("and came back down", _mean(ctx.losses[-10:]) < 2 * calm)


@scenario(
    "hf_evolla_protein_text",
    "adam",
    "healthy",
    heldout=True,
    note="Adam 3e-3 with linear warm-up and decay; a control",
)
def h108_hf_evolla_control(ctx: Context) -> None:
    gen = seeded(10803)
    model = _evolla()
    batches = _protein_batches(gen)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    probe = next(batches)
    ctx.attach(model, opt, probe=(_evolla_loss, probe))
    for step in range(120):
        opt.param_groups[0]["lr"] = 3e-3 * min(1.0, (step + 1) / 15) * (1 - 0.6 * step / 120)
        loss = _evolla_loss(model, next(batches))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell by 80%", _mean(ctx.losses[-10:]) < 0.2 * _mean(ctx.losses[:5]))


# -- Depth Pro: monocular depth of generated scenes (a control) -------------------------------------


def _depth_pro():
    from transformers import DepthProConfig, DepthProForDepthEstimation

    vit = dict(
        model_type="dinov2",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=4,
        image_size=16,
    )
    config = DepthProConfig(
        patch_size=16,
        fusion_hidden_size=16,
        intermediate_hook_ids=[1, 0],
        intermediate_feature_dims=[16, 16],
        scaled_images_ratios=[0.5, 1.0],
        scaled_images_overlap_ratios=[0.0, 0.25],
        scaled_images_feature_dims=[16, 16],
        image_model_config=vit,
        patch_model_config=vit,
        fov_model_config=vit,
        use_fov_model=False,
    )
    return DepthProForDepthEstimation(config)


def _scene_batches(gen: torch.Generator, batch: int = 4):
    """A floor plane receding to the horizon plus a box at some depth; the image shades with
    depth (and texture noise)."""
    rows = torch.linspace(0, 1, 32)[:, None].expand(32, 32)
    cols = torch.linspace(0, 1, 32)[None, :].expand(32, 32)
    while True:
        depth = torch.empty(batch, 32, 32)
        for i in range(batch):
            horizon = 0.3 + 0.2 * torch.rand((), generator=gen)
            d = 1.0 + 8.0 * (1 - (rows - horizon).clamp(min=0) / (1 - horizon)) ** 2
            x0, y0 = torch.randint(2, 20, (2,), generator=gen).tolist()
            z = 1.5 + 4 * torch.rand((), generator=gen)
            box = (
                (cols * 31 >= x0)
                & (cols * 31 < x0 + 10)
                & (rows * 31 >= y0)
                & (rows * 31 < y0 + 10)
            )
            depth[i] = torch.where(box, z, d)
        shade = 1.0 / depth
        img = torch.stack([shade, shade * 0.8, 1 - shade], 1)
        img = img + 0.05 * torch.randn(img.shape, generator=gen)
        yield img, depth


def _depth_loss(model: nn.Module, b) -> torch.Tensor:
    img, depth = b
    pred = model(pixel_values=img).predicted_depth  # (B, 128, 128)
    pred = F.adaptive_avg_pool2d(pred[:, None], 32)[:, 0]
    return F.l1_loss(torch.log(pred.clamp(min=1e-3) + 1.0), torch.log(depth + 1.0))


@scenario(
    "hf_depth_pro_scenes",
    "adamw",
    "healthy",
    heldout=True,
    note="AdamW 2e-3, warm-up + cosine, log-depth L1; a control",
)
def h108_hf_depth_pro_control(ctx: Context) -> None:
    gen = seeded(10804)
    model = _depth_pro()
    batches = _scene_batches(gen)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    probe = next(batches)
    ctx.attach(model, opt, probe=(_depth_loss, probe))
    steps = 60
    for step in range(steps):
        warm = min(1.0, (step + 1) / 10)
        opt.param_groups[0]["lr"] = 2e-3 * warm * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        loss = _depth_loss(model, next(batches))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell by 30%", _mean(ctx.losses[-8:]) < 0.7 * _mean(ctx.losses[:4]))


# -- RF-DETR: detection of generated squares (a control) --------------------------------------------


def _rf_detr():
    from transformers import RfDetrConfig, RfDetrForObjectDetection

    backbone = dict(
        model_type="rf_detr_dinov2",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=8,
        image_size=32,
        out_features=["stage1", "stage2"],
        num_windows=1,
    )
    config = RfDetrConfig(
        backbone_config=backbone,
        d_model=32,
        decoder_ffn_dim=64,
        decoder_layers=2,
        decoder_self_attention_heads=2,
        decoder_cross_attention_heads=2,
        num_queries=6,
        group_detr=1,
        num_labels=3,
    )
    return RfDetrForObjectDetection(config)


def _box_batches(gen: torch.Generator, batch: int = 4):
    """One or two coloured squares (class = colour) on a noisy background."""
    colours = torch.eye(3)
    while True:
        img = 0.1 * torch.randn(batch, 3, 32, 32, generator=gen)
        labels = []
        for i in range(batch):
            n = int(torch.randint(1, 3, (), generator=gen))
            cls, boxes = [], []
            for _ in range(n):
                c = int(torch.randint(0, 3, (), generator=gen))
                s = int(torch.randint(6, 13, (), generator=gen))
                x, y = torch.randint(0, 32 - s, (2,), generator=gen).tolist()
                img[i, :, y : y + s, x : x + s] += colours[c][:, None, None]
                cls.append(c)
                boxes.append([(x + s / 2) / 32, (y + s / 2) / 32, s / 32, s / 32])
            labels.append({"class_labels": torch.tensor(cls), "boxes": torch.tensor(boxes)})
        yield img, labels


def _detr_loss(model: nn.Module, b) -> torch.Tensor:
    return model(pixel_values=b[0], labels=b[1]).loss


@scenario(
    "hf_rf_detr_boxes",
    "adamw",
    "healthy",
    heldout=True,
    note="AdamW, backbone at 0.1x LR, Hungarian-matched loss with auxiliary terms; a control",
)
def h108_hf_rf_detr_control(ctx: Context) -> None:
    gen = seeded(10805)
    model = _rf_detr()
    batches = _box_batches(gen)
    back = [p for n, p in model.named_parameters() if "backbone" in n]
    ids = {id(p) for p in back}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 1e-3}, {"params": back, "lr": 1e-4}], weight_decay=1e-4
    )
    probe = next(batches)
    ctx.attach(model, opt, probe=(_detr_loss, probe))
    for _ in range(100):
        loss = _detr_loss(model, next(batches))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell by 20%", _mean(ctx.losses[-10:]) < 0.8 * _mean(ctx.losses[:5]))


# -- SegNet with pooling indices: a loss-reduction bug for one step ----------------------------------


class SegNet(nn.Module):
    def __init__(self, classes: int = 3, w: int = 16) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.enc2 = nn.Sequential(
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU()
        )
        self.dec2 = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.dec1 = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.classifier = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, i1 = F.max_pool2d(self.enc1(x), 2, return_indices=True)
        x, i2 = F.max_pool2d(self.enc2(x), 2, return_indices=True)
        x = self.dec2(F.max_unpool2d(x, i2, 2))
        x = self.dec1(F.max_unpool2d(x, i1, 2))
        return self.classifier(x)


def _shape_masks(gen: torch.Generator, batch: int = 8):
    """Discs (class 1) and squares (class 2) on noise, 16x16."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    while True:
        img = 0.3 * torch.randn(batch, 1, 16, 16, generator=gen)
        mask = torch.zeros(batch, 16, 16, dtype=torch.long)
        for i in range(batch):
            cx, cy = (3 + 10 * torch.rand(2, generator=gen)).tolist()
            r = 2 + 2 * float(torch.rand((), generator=gen))
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            sx, sy = torch.randint(0, 11, (2,), generator=gen).tolist()
            sq = (xx >= sx) & (xx < sx + 5) & (yy >= sy) & (yy < sy + 5)
            mask[i][sq] = 2
            mask[i][disc] = 1
            img[i, 0][disc] += 1.0
            img[i, 0][sq] -= 1.0
        yield img, mask


@scenario(
    "segnet_pool_indices",
    "sgd_nesterov",
    "gradient_spike",
    where="classifier",
    diverges=None,
    heldout=True,
    note="one step's loss summed over pixels instead of averaged (the short-batch code path)",
    onset=90,
)
def h108_segnet_sum_reduction_step(ctx: Context) -> None:
    gen = seeded(10806)
    model = SegNet()
    batches = _shape_masks(gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    probe = next(batches)
    ctx.attach(model, opt, probe=(lambda m, b: F.cross_entropy(m(b[0]), b[1]), probe))
    norms = []
    for step in range(150):
        x, y = next(batches)
        out = model(x)
        loss = F.cross_entropy(out, y)
        # the bug: the last-batch path uses reduction="sum" over the 256 pixels of each image
        total = F.cross_entropy(out, y, reduction="sum") / len(y) if step == 90 else loss
        total.backward()
        norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    med = sorted(norms[70:90])[10]
    ctx.check("gradient norm at step 90 is 50x the median before", norms[90] > 50 * med)
    ctx.check(
        "the loss itself did not spike at step 90", ctx.losses[90] < 2 * max(ctx.losses[80:90])
    )


# -- source separation: a U-Net masking a mixture's spectrogram --------------------------------------


class InstanceScale(nn.Module):
    """Normalises each spectrogram by its own mean and std (no epsilon: the bug)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=(2, 3), keepdim=True)
        sd = x.std(dim=(2, 3), keepdim=True)
        return (x - mu) / sd


class SpecUNet(nn.Module):
    def __init__(self, w: int = 12) -> None:
        super().__init__()
        self.in_norm = InstanceScale()
        self.down1 = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.LeakyReLU(0.1))
        self.down2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.1))
        self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.fuse = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.LeakyReLU(0.1))
        self.mask = nn.Conv2d(w, 1, 1)

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        h1 = self.down1(self.in_norm(mag))
        h2 = self.down2(h1)
        h = self.fuse(torch.cat([self.up(h2), h1], 1))
        return torch.sigmoid(self.mask(h)) * mag  # the estimated vocal magnitude


def _mixtures(gen: torch.Generator, batch: int = 16, silent_at: int | None = None):
    """Magnitude spectrograms (32 bins x 16 frames): a harmonic 'voice' with a wandering pitch
    plus broadband 'drum' hits; the target is the voice."""
    bins = torch.arange(32.0)[:, None]
    step = 0
    while True:
        voice = torch.zeros(batch, 1, 32, 16)
        drums = torch.zeros(batch, 1, 32, 16)
        for i in range(batch):
            f0 = 2 + 3 * torch.rand((), generator=gen)
            wob = 0.5 * torch.sin(torch.linspace(0, 6, 16) + 6 * torch.rand((), generator=gen))
            for h in (1, 2, 3):
                centre = h * (f0 + wob)[None, :]
                voice[i, 0] += torch.exp(-((bins - centre) ** 2)) / h
            hits = torch.rand(16, generator=gen) < 0.25
            drums[i, 0] += (
                hits[None, :] * torch.exp(-bins / 12) * (0.5 + torch.rand((), generator=gen))
            )
        mix = voice + drums + 0.01 * torch.rand(batch, 1, 32, 16, generator=gen)
        if silent_at is not None and step == silent_at:
            mix[3].zero_()  # a digitally silent excerpt between songs
            voice[3].zero_()
        step += 1
        yield mix, voice


@scenario(
    "spec_unet_source_sep",
    "rmsprop",
    "nonfinite",
    where="in_norm",
    diverges=70,
    heldout=True,
    note="a digitally silent clip reaches a per-clip std normalisation without epsilon: 0/0",
    onset=70,
)
def h108_source_sep_silent_clip(ctx: Context) -> None:
    gen = seeded(10807)
    model = SpecUNet()
    batches = _mixtures(gen, silent_at=71)  # the probe batch takes the first one
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    probe = next(batches)
    ctx.attach(model, opt, probe=(lambda m, b: F.l1_loss(m(b[0]), b[1]), probe))
    for _ in range(85):
        mix, voice = next(batches)
        loss = F.l1_loss(model(mix), voice)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "finite and falling before the silent clip",
        _finite(ctx.losses[:70]) and ctx.losses[69] < 0.7 * ctx.losses[0],
    )
    ctx.check("loss is NaN from step 70", all(math.isnan(v) for v in ctx.losses[70:]))


# -- a learned index: a recursive model mapping sorted keys to positions -----------------------------


class LearnedIndex(nn.Module):
    """A root model routes a key to one of 8 leaf linear models (RMI), smooth routing."""

    def __init__(self, leaves: int = 8) -> None:
        super().__init__()
        self.root = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, leaves))
        self.leaves = nn.Linear(1, leaves)

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.root(k), -1)
        return (w * self.leaves(k)).sum(-1, keepdim=True)


def _key_batches(gen: torch.Generator, batch: int = 128):
    keys = torch.sort(torch.exp(0.8 * torch.randn(20000, generator=gen)))[0]
    keys = (keys - keys.mean()) / keys.std()
    pos = torch.linspace(-1, 1, len(keys))
    while True:
        i = torch.randint(0, len(keys), (batch,), generator=gen)
        yield keys[i, None], pos[i, None]


@scenario(
    "learned_index_rmi",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="warm-up to a peak LR (2.0) above 2(1+beta)/sharpness; fine at the start of warm-up",
    onset=40,
)
def h108_learned_index_peak_lr(ctx: Context) -> None:
    gen = seeded(10808)
    model = LearnedIndex()
    batches = _key_batches(gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    probe = next(batches)
    ctx.attach(model, opt, probe=(lambda m, b: F.mse_loss(m(b[0]), b[1]), probe))
    for step in range(120):
        opt.param_groups[0]["lr"] = 0.01 + (2.0 - 0.01) * min(1.0, step / 40)
        k, p = next(batches)
        loss = F.mse_loss(model(k), p)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]) or ctx.losses[-1] > 1e6:
            break
    best = min(ctx.losses[:40])
    ctx.check("trained during warm-up", best < 0.3 * ctx.losses[0])
    ctx.check("then blew up 100x", max(ctx.losses[40:]) > 100 * best or not _finite(ctx.losses))


# -- 3-D pose lifting from 2-D keypoints: ReLUs killed by an LR burst --------------------------------


_BONES = torch.tensor([0, 0, 1, 2, 0, 4, 5, 0, 7, 8, 8, 10, 11, 8, 13, 14])  # parent of joint j+1


def _pose_batches(gen: torch.Generator, batch: int = 64):
    """Random skeletons (17 joints) from random bone directions, rotated about the vertical and
    projected orthographically; input the 2-D keypoints, target the root-relative 3-D joints."""
    lengths = torch.tensor(
        [1.0, 1.2, 1.1, 1.0, 1.2, 1.1, 0.8, 0.6, 0.4, 0.6, 0.8, 0.7, 0.6, 0.8, 0.7, 0.4]
    )
    base = torch.randn(16, 3, generator=gen)
    while True:
        d = base + 0.35 * torch.randn(batch, 16, 3, generator=gen)
        d = d / d.norm(dim=-1, keepdim=True) * lengths[:, None]
        joints = torch.zeros(batch, 17, 3)
        for j in range(16):
            joints[:, j + 1] = joints[:, int(_BONES[j])] + d[:, j]
        a = 2 * math.pi * torch.rand(batch, generator=gen)
        c, s = torch.cos(a)[:, None], torch.sin(a)[:, None]
        x, y, z = joints[..., 0], joints[..., 1], joints[..., 2]
        joints = torch.stack([c * x + s * z, y, -s * x + c * z], -1)
        yield joints[..., :2].flatten(1), joints.flatten(1)


def _lifter() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(34, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 51)
    )


@scenario(
    "pose_lifter_3d",
    "adamax",
    "loss_of_plasticity",
    where=("2", "3"),
    diverges=None,
    heldout=True,
    note="a warm restart at SGD's LR (1.0) for 8 steps kills the ReLUs; the lifter stops learning",
    onset=60,
)
def h108_pose_lifter_restart_kills_relus(ctx: Context) -> None:
    gen = seeded(10809)
    model = _lifter()
    batches = _pose_batches(gen)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    probe = next(batches)
    ctx.attach(model, opt, probe=(lambda m, b: F.mse_loss(m(b[0]), b[1]), probe))
    for step in range(200):
        opt.param_groups[0]["lr"] = 1.0 if 60 <= step < 68 else 2e-3
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        h = model[3](model[2](model[1](model[0](probe[0]))))
    ctx.check("over 60% of the second layer's ReLUs dead", dead_fraction(h) > 0.6)
    ctx.check(
        "the loss stays over 5x its pre-burst level to the end",
        min(ctx.losses[100:]) > 5 * _mean(ctx.losses[50:60]),
    )


# -- handwriting synthesis: a GRU with a Gaussian attention window and an MDN output ----------------


class HandwritingSynth(nn.Module):
    """Graves-style: a GRU reads pen offsets and a soft window over the character sequence; the
    mixture-density head gives 4 diagonal Gaussians over the next offset."""

    def __init__(self, chars: int = 12, hidden: int = 48, mixtures: int = 4) -> None:
        super().__init__()
        self.char_emb = nn.Embedding(chars, 16)
        self.rnn = nn.GRUCell(2 + 16, hidden)
        self.window = nn.Linear(hidden, 3)
        self.mdn = nn.Linear(hidden + 16, mixtures * 5)
        self.k = mixtures

    def forward(self, strokes: torch.Tensor, text: torch.Tensor):
        b, t, _ = strokes.shape
        c = self.char_emb(text)  # (b, u, 16)
        u = torch.arange(text.shape[1], dtype=torch.float32)
        h = strokes.new_zeros(b, self.rnn.hidden_size)
        w = c[:, 0]
        kappa = strokes.new_zeros(b, 1)
        outs = []
        for i in range(t):
            h = self.rnn(torch.cat([strokes[:, i], w], -1), h)
            a, beta, dk = self.window(h).exp().split(1, -1)
            kappa = kappa + 0.1 * dk
            phi = (a * torch.exp(-beta * (kappa - u) ** 2))[:, :, None]
            w = (phi * c).sum(1)
            outs.append(self.mdn(torch.cat([h, w], -1)))
        return torch.stack(outs, 1)


def _mdn_nll(params: torch.Tensor, target: torch.Tensor, k: int = 4) -> torch.Tensor:
    logit_pi, mu, log_sd = params.split([k, 2 * k, 2 * k], -1)
    mu = mu.reshape(*mu.shape[:-1], k, 2)
    log_sd = log_sd.reshape(*log_sd.shape[:-1], k, 2).clamp(min=-5.0)
    z = (target[..., None, :] - mu) / log_sd.exp()
    comp = -0.5 * (z**2).sum(-1) - log_sd.sum(-1) - math.log(2 * math.pi)
    return -torch.logsumexp(torch.log_softmax(logit_pi, -1) + comp, -1).mean()


def _stroke_batches(gen: torch.Generator, batch: int = 16, chars: int = 12, length: int = 5):
    """Each character is a 4-offset stroke template (plus jitter); a line is 5 characters."""
    templates = 0.5 * torch.randn(chars, 4, 2, generator=gen)
    while True:
        text = torch.randint(0, chars, (batch, length), generator=gen)
        offsets = templates[text].reshape(batch, 4 * length, 2)
        offsets = offsets + 0.05 * torch.randn(offsets.shape, generator=gen)
        yield text, offsets


@scenario(
    "handwriting_mdn_attention",
    "nadam",
    "adam_second_moment_poisoned",
    where="mdn",
    diverges=None,
    heldout=True,
    note="one line with an unnormalised pen jump (offset 2000, raw tablet units); NAdam's second "
    "moment of the MDN head absorbs the gradient and its updates stay tiny afterwards",
    onset=60,
)
def h108_handwriting_unnormalised_pen_jump(ctx: Context) -> None:
    gen = seeded(10810)
    model = HandwritingSynth()
    batches = _stroke_batches(gen)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def loss_of(m: nn.Module, b) -> torch.Tensor:
        text, off = b
        inp = torch.cat([torch.zeros(len(off), 1, 2), off[:, :-1]], 1)
        return _mdn_nll(m(inp, text), off)

    probe = next(batches)
    ctx.attach(model, opt, probe=(loss_of, probe))
    snaps = []
    hit = None
    for step in range(150):
        if step in (40, 55, 90, 105):
            snaps.append(model.mdn.weight.detach().clone())
        text, off = next(batches)
        if step == 60:
            off = off.clone()
            off[5, 10] = torch.tensor([2000.0, -1500.0])
        loss = loss_of(model, (text, off))
        loss.backward()
        if step == 60:
            hit = model.mdn.weight.grad.norm(dim=1) > 1e3  # the rows the jump reached
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = (snaps[1] - snaps[0])[hit].norm()
    after = (snaps[3] - snaps[2])[hit].norm()
    ctx.check("the jump reached some of the MDN head's rows", bool(hit.any()))
    ctx.check("those rows' updates shrank 5x after the jump", after < before / 5)
    ctx.check("it was learning before", ctx.losses[59] < ctx.losses[0] - 0.5)


# -- seismic inversion: a CNN from shot gathers to a layered velocity profile -----------------------


class SeismicInverter(nn.Module):
    def __init__(self, layers: int = 16) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, (5, 3), padding=(2, 1)),
            nn.ReLU(),
            nn.MaxPool2d((2, 1)),
            nn.Conv2d(8, 16, (5, 3), padding=(2, 1)),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((8, 4)),
        )
        self.head = nn.Sequential(nn.Linear(16 * 32, 64), nn.ReLU(), nn.Linear(64, layers))

    def forward(self, gather: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(gather).flatten(1))


def _gather_batches(gen: torch.Generator, batch: int = 16, bad_at: int | None = None):
    """A 3-interface layered earth (velocity per 16 depth cells); the gather (64 time samples x 8
    receivers) holds Ricker wavelets at each interface's hyperbolic travel time, amplitude the
    reflection coefficient; traces are gained (AGC) to unit scale."""
    t = torch.arange(64.0)[:, None]
    offsets = torch.linspace(0, 1.5, 8)[None, :]
    step = 0
    while True:
        vel = torch.empty(batch, 16)
        gathers = torch.zeros(batch, 1, 64, 8)
        for i in range(batch):
            cuts = torch.sort(torch.randint(2, 15, (3,), generator=gen))[0]
            v = 1.5 + torch.cumsum(0.3 + 0.5 * torch.rand(4, generator=gen), 0)
            prof = torch.full((16,), float(v[0]))
            for j, c in enumerate(cuts.tolist()):
                prof[c:] = v[j + 1]
            vel[i] = prof
            depth_time = torch.cumsum(2 * 0.1 / prof, 0)  # two-way time per cell
            for c in cuts.tolist():
                t0 = float(depth_time[c - 1]) * 30
                tt = torch.sqrt(t0**2 + (offsets * 20 / float(prof[c - 1])) ** 2)
                r = (prof[c] - prof[c - 1]) / (prof[c] + prof[c - 1])
                arg = (math.pi * 0.15 * (t - tt)) ** 2
                gathers[i, 0] += r * (1 - 2 * arg) * torch.exp(-arg)
        gathers = gathers / gathers.abs().amax(dim=2, keepdim=True).clamp(min=1e-6)
        gathers = gathers + 0.02 * torch.randn(gathers.shape, generator=gen)
        if bad_at is not None and step == bad_at:
            gathers[:4] *= 3000.0  # four raw, un-gained gathers from a new survey
        step += 1
        yield gathers, vel


@scenario(
    "seismic_inversion_cnn",
    "adadelta",
    "data_outlier",
    diverges=80,
    heldout=True,
    note="four gathers of one batch arrive without AGC gain (raw amplitudes, x3000)",
    onset=80,
)
def h108_seismic_ungained_gathers(ctx: Context) -> None:
    gen = seeded(10811)
    model = SeismicInverter()
    batches = _gather_batches(gen, bad_at=81)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    probe = next(batches)
    ctx.attach(model, opt, probe=(lambda m, b: F.mse_loss(m(b[0]), b[1]), probe))
    for _ in range(130):
        g, v = next(batches)
        loss = F.mse_loss(model(g), v)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("learning before the outlier", _mean(ctx.losses[70:80]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("loss at step 80 is 20x the ten before", ctx.losses[80] > 20 * max(ctx.losses[70:80]))
    ctx.check(
        "no recovery: every later loss 5x the best before",
        min(ctx.losses[85:]) > 5 * min(ctx.losses[:80]),
    )


# -- inverse Navier-Stokes PINN: the PDE coefficients' group never warms up --------------------------


class PDECoefficients(nn.Module):
    """The unknown convection and viscosity coefficients (true: 1.0 and 0.05)."""

    def __init__(self) -> None:
        super().__init__()
        self.lam1 = nn.Parameter(torch.tensor(0.5))
        self.lam2 = nn.Parameter(torch.tensor(0.2))


class NavierStokesPINN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 2)
        )
        self.pde = PDECoefficients()

    def forward(self, xyt: torch.Tensor) -> torch.Tensor:
        return self.net(xyt)


def _taylor_green(xyt: torch.Tensor, nu: float = 0.05):
    x, y, t = xyt.unbind(-1)
    decay = torch.exp(-2 * nu * t)
    u = torch.cos(x) * torch.sin(y) * decay
    v = -torch.sin(x) * torch.cos(y) * decay
    return u, v


def _ns_loss(model: NavierStokesPINN, xyt: torch.Tensor) -> torch.Tensor:
    """Stream function psi and pressure p; u = psi_y, v = -psi_x; data misfit on u, v plus the
    momentum residuals with the learnt coefficients (Raissi et al.'s inverse problem)."""
    xyt = xyt.clone().requires_grad_(True)
    psi, p = model(xyt).unbind(-1)

    def d(f):
        return torch.autograd.grad(f.sum(), xyt, create_graph=True)[0].unbind(-1)

    psi_x, psi_y, _ = d(psi)
    u, v = psi_y, -psi_x
    u_x, u_y, u_t = d(u)
    v_x, v_y, v_t = d(v)
    p_x, p_y, _ = d(p)
    u_xx, u_yy = d(u_x)[0], d(u_y)[1]
    v_xx, v_yy = d(v_x)[0], d(v_y)[1]
    lam1, lam2 = model.pde.lam1, model.pde.lam2
    f_u = u_t + lam1 * (u * u_x + v * u_y) + p_x - lam2 * (u_xx + u_yy)
    f_v = v_t + lam1 * (u * v_x + v * v_y) + p_y - lam2 * (v_xx + v_yy)
    u0, v0 = _taylor_green(xyt.detach())
    return F.mse_loss(u, u0) + F.mse_loss(v, v0) + (f_u**2).mean() + (f_v**2).mean()


def _ns_points(gen: torch.Generator, batch: int = 128):
    while True:
        xy = 2 * math.pi * torch.rand(batch, 2, generator=gen)
        t = 2 * torch.rand(batch, 1, generator=gen)
        yield torch.cat([xy, t], 1)


@scenario(
    "navier_stokes_pinn",
    "radam",
    "update_ratio_out_of_range",
    where="pde",
    diverges=None,
    heldout=True,
    note="the PDE coefficients' group warms up as min(1, step // 500): integer division, LR 0",
)
def h108_ns_pinn_coefficients_never_warm(ctx: Context) -> None:
    gen = seeded(10812)
    model = NavierStokesPINN()
    points = _ns_points(gen)
    opt = torch.optim.RAdam(
        [
            {"params": model.net.parameters(), "lr": 1e-2},
            {"params": model.pde.parameters(), "lr": 1e-2},
        ]
    )
    warm = 500
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [lambda s: min(1.0, (s + 1) / 50), lambda s: min(1, s // warm)],  # the bug: //
    )
    probe = next(points)
    lam0 = _flat(model.pde)
    net0 = _flat(model.net)
    ctx.attach(model, opt, probe=(lambda m, b: _ns_loss(m, b), probe))
    for _ in range(300):
        loss = _ns_loss(model, next(points))
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the coefficients never moved", torch.equal(lam0, _flat(model.pde)))
    ctx.check("the network did", (net0 - _flat(model.net)).norm() > 0.1)
    ctx.check("loss fell by half", _mean(ctx.losses[-10:]) < 0.5 * _mean(ctx.losses[:5]))


# -- a document layout transformer with an unbounded cosine-classifier scale -----------------------


class CosineHead(nn.Module):
    """A cosine classifier with ArcFace's scale s=64, copied from a face-recognition recipe into
    a 5-class problem: once the classes separate the float32 softmax saturates."""

    def __init__(self, dim: int, classes: int, scale: float = 64.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.scale * cos


class LayoutTransformer(nn.Module):
    """Words of a page: word-id embedding + 2-D box embedding (x0, y0, x1, y1 each bucketed),
    a small encoder, one region label per word (title, body, caption, table, footer)."""

    def __init__(self, vocab: int = 64, dim: int = 32, classes: int = 5) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, dim)
        self.box = nn.ModuleList(nn.Embedding(32, dim) for _ in range(4))
        layer = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = CosineHead(dim, classes)

    def forward(self, words: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        x = self.word(words) + sum(e(boxes[..., i]) for i, e in enumerate(self.box))
        return self.head(self.encoder(x)).reshape(-1, self.head.weight.shape[0])


def _page_layouts(gen: torch.Generator, batch: int = 16, words: int = 24):
    """Region by vertical band and word kind: titles in the top band, footers in the bottom one,
    table cells hold numeric tokens (ids 0-15), captions start with figure words (ids 16-23),
    body otherwise."""
    while True:
        y0 = torch.randint(0, 30, (batch, words), generator=gen)
        x0 = torch.randint(0, 24, (batch, words), generator=gen)
        w = torch.randint(2, 8, (batch, words), generator=gen)
        ids = torch.randint(0, 64, (batch, words), generator=gen)
        label = torch.ones(batch, words, dtype=torch.long)  # body
        label[ids < 16] = 3
        label[(ids >= 16) & (ids < 24)] = 2
        label[y0 < 4] = 0
        label[y0 > 27] = 4
        h = torch.where(label == 0, 3, 1)
        boxes = torch.stack([x0, y0, (x0 + w).clamp(max=31), (y0 + h).clamp(max=31)], -1)
        yield (ids, boxes), label.reshape(-1)


@scenario(
    "doc_layout_transformer",
    "adam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="cosine classifier with ArcFace's s=64 on 5 classes: float32 softmax gives the "
    "target exactly 1 once the classes separate",
)
def h108_layout_arcface_scale_five_classes(ctx: Context) -> None:
    gen = seeded(10813)
    model = LayoutTransformer()
    batches = _page_layouts(gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = next(batches)
    ctx.attach(model, opt, probe=(lambda m, b: F.cross_entropy(m(*b[0]), b[1]), probe))
    for _ in range(240):
        (ids, boxes), y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(ids, boxes), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits = model(*probe[0])
    ctx.check("it fitted", _mean(ctx.losses[-10:]) < 0.01 * _mean(ctx.losses[:5]))
    ctx.check(
        "float32 softmax gives the target exactly 1 on over 10% of the words",
        collapsed_fraction(logits, probe[1]) > 0.1,
    )


# -- crowd counting: a density-map network whose target normaliser drifts --------------------------


class CrowdDensityNet(nn.Module):
    """CSRNet-style: a small front end, a dilated back end, a 1x1 density head."""

    def __init__(self) -> None:
        super().__init__()
        self.front = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        )
        self.back = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=2, dilation=2),
            nn.ReLU(),
        )
        self.density = nn.Conv2d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.density(self.back(self.front(x)))


def _crowd_batches(gen: torch.Generator, batch: int = 8):
    """Heads as small bright blobs on a textured background; the density map puts a unit-mass
    Gaussian on each head."""
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    while True:
        img = 0.2 * torch.randn(batch, 1, 24, 24, generator=gen)
        dens = torch.zeros(batch, 1, 24, 24)
        for i in range(batch):
            n = int(torch.randint(3, 30, (), generator=gen))
            pts = 24 * torch.rand(n, 2, generator=gen)
            for px, py in pts.tolist():
                g = torch.exp(-((xx - px) ** 2 + (yy - py) ** 2) / 2.0)
                img[i, 0] += g
                dens[i, 0] += g / (2 * math.pi)
        yield img, dens


@scenario(
    "crowd_density_counting",
    "asgd",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="density maps are scaled by a running mean count whose update lacks the (1 - beta) "
    "factor: the target scale creeps up every step and the loss climbs slowly",
    onset=0,
)
def h108_crowd_count_ema_bug(ctx: Context) -> None:
    gen = seeded(10814)
    model = CrowdDensityNet()
    batches = _crowd_batches(gen)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02, t0=50)
    probe = next(batches)
    ctx.attach(model, opt, probe=(lambda m, b: F.mse_loss(m(b[0]), 16 * b[1]), probe))
    mean_count = None
    for _ in range(200):
        img, dens = next(batches)
        count = float(dens.sum((1, 2, 3)).mean())
        # the bug: should be 0.99 * mean_count + 0.01 * count
        mean_count = count if mean_count is None else 0.99 * mean_count + count
        loss = F.mse_loss(model(img), mean_count * dens)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    smooth = [_mean(ctx.losses[i : i + 10]) for i in range(0, 200, 10)]
    jumps = [ctx.losses[i] / sorted(ctx.losses[i - 10 : i])[5] for i in range(10, 200)]
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("the loss climbed to 10x its start", smooth[-1] > 10 * smooth[0])
    ctx.check("slowly: no step 5x the median of the ten before", max(jumps) < 5.0)


# -- radar nowcasting: a U-Net predicting the next frame, fp16 autocast with a GradScaler -----------


class NowcastUNet(nn.Module):
    def __init__(self, past: int = 4, w: int = 16) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(past, w, 3, padding=1), nn.GroupNorm(4, w), nn.SiLU())
        self.enc2 = nn.Sequential(
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(4, 2 * w), nn.SiLU()
        )
        self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.GroupNorm(4, w), nn.SiLU())
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        h1 = self.enc1(frames)
        h = self.dec(torch.cat([self.up(self.enc2(h1)), h1], 1))
        return frames[:, -1:] + self.out(h)  # predict the change from the last frame


def _radar_batches(gen: torch.Generator, batch: int = 8, size: int = 16):
    """Rain cells (Gaussian blobs) advected by a per-sample wind and slowly growing or decaying;
    4 past frames in, the next frame out."""
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    while True:
        frames = torch.zeros(batch, 5, size, size)
        for i in range(batch):
            wind = torch.randn(2, generator=gen)
            for _ in range(int(torch.randint(1, 4, (), generator=gen))):
                p = size * torch.rand(2, generator=gen)
                amp = 0.5 + torch.rand((), generator=gen)
                grow = 1 + 0.1 * torch.randn((), generator=gen)
                r = 1.5 + 1.5 * torch.rand((), generator=gen)
                for t in range(5):
                    c = p + t * wind
                    frames[i, t] += (
                        amp
                        * grow**t
                        * torch.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * r * r))
                    )
        yield frames[:, :4], frames[:, 4:]


@scenario(
    "radar_nowcast_unet",
    "adamw",
    "amp_overflow",
    diverges=None,
    heldout=True,
    note="fp16 autocast with GradScaler(init_scale=2**24): the first steps overflow and are "
    "skipped while the scale backs off; benign, training proceeds",
)
def h108_radar_nowcast_fp16_scaler(ctx: Context) -> None:
    gen = seeded(10815)
    model = NowcastUNet()
    batches = _radar_batches(gen)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=50)
    probe = next(batches)
    ctx.attach(model, opt, probe=(lambda m, b: F.mse_loss(m(b[0]), b[1]), probe), scaler=scaler)
    skipped = 0
    for _ in range(60):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        before = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        skipped += scaler.get_scale() < before
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the scaler skipped steps on overflow", skipped >= 2)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell by 30%", _mean(ctx.losses[-10:]) < 0.7 * _mean(ctx.losses[:5]))


# -- DCRNN-style traffic forecaster: diffusion convolution in a GRU (a control) ---------------------


def _road_graph(gen: torch.Generator, n: int = 12):
    """A ring road with a few random shortcuts; forward and backward random-walk matrices."""
    a = torch.zeros(n, n)
    for i in range(n):
        a[i, (i + 1) % n] = 1.0
    for _ in range(4):
        i, j = torch.randint(0, n, (2,), generator=gen).tolist()
        if i != j:
            a[i, j] = 1.0
    fwd = a / a.sum(1, keepdim=True)
    bwd = a.T / a.T.sum(1, keepdim=True).clamp(min=1)
    return a, fwd, bwd


class DiffusionConv(nn.Module):
    """sum_k (P_f^k X W_fk + P_b^k X W_bk), K = 2 hops each way, plus the identity term."""

    def __init__(self, fwd: torch.Tensor, bwd: torch.Tensor, cin: int, cout: int, hops: int = 2):
        super().__init__()
        self.register_buffer("fwd", fwd)
        self.register_buffer("bwd", bwd)
        self.hops = hops
        self.lin = nn.Linear(cin * (1 + 2 * hops), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, n, c)
        feats = [x]
        for p in (self.fwd, self.bwd):
            h = x
            for _ in range(self.hops):
                h = p @ h
                feats.append(h)
        return self.lin(torch.cat(feats, -1))


class DCRNNForecaster(nn.Module):
    def __init__(self, fwd: torch.Tensor, bwd: torch.Tensor, hidden: int = 16, horizon: int = 3):
        super().__init__()
        self.gates = DiffusionConv(fwd, bwd, 1 + hidden, 2 * hidden)
        self.cand = DiffusionConv(fwd, bwd, 1 + hidden, hidden)
        self.readout = nn.Linear(hidden, horizon)
        self.hidden = hidden

    def forward(self, seq: torch.Tensor) -> torch.Tensor:  # (b, t, n) -> (b, n, horizon)
        b, t, n = seq.shape
        h = seq.new_zeros(b, n, self.hidden)
        for i in range(t):
            x = seq[:, i, :, None]
            r, u = torch.sigmoid(self.gates(torch.cat([x, h], -1))).chunk(2, -1)
            c = torch.tanh(self.cand(torch.cat([x, r * h], -1)))
            h = u * h + (1 - u) * c
        return self.readout(h)


def _traffic_batches(gen: torch.Generator, fwd: torch.Tensor, batch: int = 16, past: int = 8):
    """Speeds: a daily cycle per sensor plus congestion waves that diffuse along the road graph,
    plus sensor noise; predict the next 3 readings of every sensor."""
    n = fwd.shape[0]
    phase = 2 * math.pi * torch.rand(n, generator=gen)
    while True:
        t0 = 100 * torch.rand(batch, 1, generator=gen)
        speeds = []
        jam = torch.zeros(batch, n)
        jam[torch.arange(batch), torch.randint(0, n, (batch,), generator=gen)] = 1.0
        for t in range(past + 3):
            cycle = torch.sin(2 * math.pi * (t0 + t) / 24 + phase)
            speeds.append(0.5 * cycle - jam + 0.05 * torch.randn(batch, n, generator=gen))
            jam = 0.9 * (jam @ fwd.T)
        s = torch.stack(speeds, 1)
        yield s[:, :past], s[:, past:].transpose(1, 2)


@scenario(
    "dcrnn_diffusion_forecaster",
    "adagrad",
    "healthy",
    heldout=True,
    note="Adagrad 0.05, gradient clipping at 5 as in DCRNN's recipe; a control",
)
def h108_dcrnn_traffic_control(ctx: Context) -> None:
    gen = seeded(10816)
    _, fwd, bwd = _road_graph(gen)
    model = DCRNNForecaster(fwd, bwd)
    batches = _traffic_batches(gen, fwd)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    probe = next(batches)
    ctx.attach(model, opt, probe=(lambda m, b: F.l1_loss(m(b[0]), b[1]), probe))
    for _ in range(150):
        x, y = next(batches)
        loss = F.l1_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell by 40%", _mean(ctx.losses[-10:]) < 0.6 * _mean(ctx.losses[:5]))
