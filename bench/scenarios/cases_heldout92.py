"""Held-out scenarios, set 92 (``h92_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face Chameleon (text-only causal LM), Moshi depth decoder and SAM2 Hiera vision
backbone (with a small mask head) from configs; hand-written DDPM U-Net denoiser, VQ-VAE with a
codebook and straight-through estimator, RealNVP affine-coupling flow, WGAN-GP, StyleGAN-like
mapping network + modulated-conv generator, NeRF-style MLP with positional encoding on generated
rays, noise-conditional score-matching model, PixelCNN with masked convolutions, HiFi-GAN-like
vocoder with a multi-period discriminator.

Optimizers: AdamW, Adam, NAdam, RAdam, Adamax, Adagrad, RMSprop, SGD, SGD with momentum, and
steadygrad.optim's Lion, AdEMAMix, Grams and StableSPAM.
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
    digits,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared helpers -------------------------------------------------------------------------------


def train(ctx: Context, model: nn.Module, opt, steps: int, step_fn, *, targets=None) -> None:
    """``step_fn(step)`` runs the forward and backward passes and returns the loss to log."""
    ctx.attach(model, opt)
    for step in range(steps):
        if targets is not None:
            ctx.targets(targets(step))
        loss = step_fn(step)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def mean(values) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)


def median(values) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def digit_images(n: int | None = None) -> torch.Tensor:
    x, _ = digits()
    x = x if n is None else x[:n]
    return x.reshape(-1, 1, 8, 8)


def module_grad_norm(module: nn.Module) -> float:
    grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


# -- Hugging Face models from configs -------------------------------------------------------------


def hf_chameleon(vocab: int = 128, dim: int = 32):
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    config = ChameleonConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        vq_config=dict(
            embed_dim=32,
            num_embeddings=16,
            base_channels=32,
            channel_multiplier=[1],
            num_res_blocks=1,
            attn_resolutions=[],
            latent_channels=32,
            resolution=16,
            in_channels=3,
            out_channels=3,
            double_latent=False,
        ),
        vocabulary_map={"<image>": vocab - 1},
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return ChameleonForConditionalGeneration(config)


def hf_moshi_depth(codebooks: int = 8, vocab: int = 32, dim: int = 32):
    from transformers import MoshiDepthConfig
    from transformers.models.moshi.modeling_moshi import MoshiDepthDecoder

    config = MoshiDepthConfig(
        vocab_size=vocab,
        hidden_size=dim,
        input_size=dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        audio_vocab_size=vocab,
        num_codebooks=codebooks,
        max_position_embeddings=codebooks,
        ffn_dim=2 * dim,
        sliding_window=codebooks,
    )
    config._attn_implementation = "eager"
    model = MoshiDepthDecoder(config)
    with torch.no_grad():  # the per-codebook (flexible) linears come out of the build at randn
        for _name, p in model.named_parameters():
            if p.dim() == 3:
                p.normal_(0.0, config.initializer_range)
    return model


def codec_batches(gen: torch.Generator, batch: int = 32, codebooks: int = 8, vocab: int = 32):
    """Generated residual-codec frames: a text token and codebooks that each depend on the one
    before and on a frame context vector (the temporal transformer's state, here generated)."""
    mix = torch.randint(0, vocab, (vocab, vocab), generator=gen)
    proj = torch.randn(8, 32, generator=gen)
    while True:
        text = torch.randint(0, vocab, (batch,), generator=gen)
        ctx_code = torch.randint(0, 8, (batch,), generator=gen)
        codes = [(text * 7 + ctx_code * 3) % vocab]
        for _ in range(codebooks - 1):
            codes.append(mix[codes[-1], ctx_code % vocab])
        codes = torch.stack(codes, 1)
        hidden = (proj[ctx_code] + 0.1 * torch.randn(batch, 32, generator=gen))[:, None]
        inputs = torch.cat([text[:, None], codes[:, :-1]], 1)
        yield inputs, hidden, codes


class Sam2Segmenter(nn.Module):
    """SAM2's Hiera vision backbone + FPN neck from a config, and a 1x1 conv mask head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import Sam2HieraDetConfig, Sam2VisionConfig, Sam2VisionModel

        backbone = Sam2HieraDetConfig(
            hidden_size=16,
            num_attention_heads=1,
            image_size=[32, 32],
            patch_kernel_size=[3, 3],
            patch_stride=[2, 2],
            patch_padding=[1, 1],
            query_stride=[2, 2],
            window_positional_embedding_background_size=[4, 4],
            num_query_pool_stages=1,
            blocks_per_stage=[1, 2],
            embed_dim_per_stage=[16, 32],
            num_attention_heads_per_stage=[1, 2],
            window_size_per_stage=[4, 4],
            global_attention_blocks=[2],
        )
        config = Sam2VisionConfig(
            backbone_config=backbone,
            backbone_channel_list=[32, 16],
            backbone_feature_sizes=[[16, 16], [8, 8]],
            fpn_hidden_size=32,
            num_feature_levels=2,
            fpn_top_down_levels=[0, 1],
        )
        self.vision = Sam2VisionModel(config)
        self.mask_head = nn.Conv2d(32, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.vision(pixel_values=x).fpn_hidden_states[0]
        return self.mask_head(feats)


def blob_batches(gen: torch.Generator, batch: int = 16, size: int = 32):
    """Generated images of a bright ellipse on textured noise, and its 16x16 mask."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        c = torch.rand(batch, 2, generator=gen) * 20 + 6
        r = torch.rand(batch, 2, generator=gen) * 6 + 3
        inside = ((xx - c[:, 0, None, None]) / r[:, 0, None, None]) ** 2 + (
            (yy - c[:, 1, None, None]) / r[:, 1, None, None]
        ) ** 2 < 1
        img = 0.3 * torch.randn(batch, 3, size, size, generator=gen) + inside[:, None].float()
        mask = F.avg_pool2d(inside[:, None].float(), 2)
        yield img, (mask > 0.5).float()


@scenario(
    "h92_hf_chameleon_text_lm",
    "adamw",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=0,
    note="z-loss added with the wrong sign: it rewards a growing log-partition of the LM head",
)
def h92_chameleon_zloss_wrong_sign(ctx: Context) -> None:
    gen = seeded(9201)
    model = hf_chameleon()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    batches = text_batches(gen, batch=16, length=32, vocab=128)
    log_z: list[float] = []

    def step_fn(step: int):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = lm_loss(logits, y)
        lz = torch.logsumexp(logits.float(), -1)
        log_z.append(float(lz.detach().mean()))
        (loss - 1e-2 * lz.pow(2).mean()).backward()  # intended: loss + 1e-2 * lz**2
        return loss

    train(ctx, model, opt, 300, step_fn)
    ctx.check("log Z of the head grew past 5x its start", log_z[-1] > 5 * abs(log_z[0]))
    ctx.check("log Z climbed steadily", log_z[-1] > log_z[250] > log_z[150] > log_z[75])


@scenario(
    "h92_hf_moshi_depth_decoder",
    "sg_lion",
    "attention_logit_growth",
    where="layers.0.self_attn",
    diverges=None,
    heldout=True,
    onset=0,
    note="first layer's q/k projections re-initialised with std 0.2 (typo for 0.02) after a "
    "codebook-count change; Lion's sign updates keep growing the q.k logits",
)
def h92_moshi_depth_qk_reinit(ctx: Context) -> None:
    gen = seeded(9202)
    model = hf_moshi_depth()
    attn = model.layers[0].self_attn
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj):
            proj.linear.weight.normal_(0.0, 0.2)  # meant 0.02, the config's initializer_range
    opt = sgo.Lion(model.parameters(), lr=3e-3)
    batches = codec_batches(gen)
    entropy: list[float] = []
    qk: list[float] = []
    seen: dict[str, torch.Tensor] = {}
    attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o.detach()))
    attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o.detach()))

    def step_fn(step: int):
        inputs, hidden, codes = next(batches)
        out = model(
            input_ids=inputs, last_hidden_state=hidden, labels=codes, output_attentions=True
        )
        probs = out.attentions[0].detach().clamp_min(1e-30)
        entropy.append(float(-(probs * probs.log()).sum(-1).mean()))
        q, k = seen["q"], seen["k"]
        b, t, _ = q.shape
        q = q.reshape(b, t, 2, -1).transpose(1, 2)
        k = k.reshape(b, t, 2, -1).transpose(1, 2)
        qk.append(float((q @ k.transpose(-1, -2)).abs().amax() * attn.scaling))
        out.loss.backward()
        return out.loss

    train(ctx, model, opt, 300, step_fn)
    ctx.check("max q.k logit grew over 8x", max(qk[-20:]) > 8 * max(qk[:5]))
    ctx.check("q.k logit climbed steadily", qk[299] > qk[200] > qk[100] > qk[0])
    ctx.check(
        "layer-0 attention entropy fell under 1/4 of its start",
        mean(entropy[-20:]) < mean(entropy[:5]) / 4,
    )


@scenario("h92_hf_sam2_hiera_mask_head", "radam", "healthy", heldout=True)
def h92_sam2_hiera_blob_masks_healthy(ctx: Context) -> None:
    gen = seeded(9203)
    model = Sam2Segmenter()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    batches = blob_batches(gen)

    def step_fn(step: int):
        x, m = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(x), m)
        loss.backward()
        return loss

    train(ctx, model, opt, 200, step_fn)
    ctx.check("finite", finite(ctx.losses))
    ctx.check("mask loss halved", mean(ctx.losses[-20:]) < 0.5 * mean(ctx.losses[:10]))


# -- DDPM U-Net denoiser --------------------------------------------------------------------------


class TimeEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half) / half)
        ang = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([ang.sin(), ang.cos()], -1))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(4, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(4, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(t)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class X0FromEps(nn.Module):
    """x0 = (x_t - sqrt(1 - abar) * eps) / sqrt(abar): the x0-parametrised loss of the model."""

    def forward(self, xt: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        abar = abar[:, None, None, None]
        return (xt - (1 - abar).sqrt() * eps) / abar.sqrt()


class UNet(nn.Module):
    def __init__(self, ch: int = 16, tdim: int = 32) -> None:
        super().__init__()
        self.time = TimeEmbedding(tdim)
        self.inc = nn.Conv2d(1, ch, 3, padding=1)
        self.down1 = ResBlock(ch, ch, tdim)
        self.pool = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * ch, 2 * ch, tdim)
        self.up = nn.ConvTranspose2d(2 * ch, ch, 2, stride=2)
        self.up1 = ResBlock(2 * ch, ch, tdim)
        self.out = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        te = self.time(t)
        h1 = self.down1(self.inc(x), te)
        h = self.mid(self.pool(h1), te)
        h = self.up1(torch.cat([self.up(h), h1], 1), te)
        return self.out(h)


class Denoiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unet = UNet()
        self.to_x0 = X0FromEps()


def cosine_abar(steps: int, clip: bool) -> torch.Tensor:
    s = 0.008
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - f[1:] / f[:-1]
    if clip:
        betas = betas.clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


def ddpm_data(gen: torch.Generator, batch: int, steps: int):
    x = digit_images() * 2 - 1
    while True:
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        t = torch.randint(0, steps, (batch,), generator=gen)
        yield x[idx], t, torch.randn(batch, 1, 8, 8, generator=gen)


@scenario(
    "h92_ddpm_unet_denoiser_digits",
    "adamax",
    "nonfinite",
    where="to_x0",
    diverges=101,
    heldout=True,
    onset=101,
    note="cosine schedule without the usual beta clip at 0.999: the last beta is exactly 1, "
    "abar[T-1] = 0, and the x0 loss divides by sqrt(0) the first time t = T-1 is drawn",
)
def h92_ddpm_cosine_unclipped_x0_loss(ctx: Context) -> None:
    gen = seeded(9221)
    T = 1000
    abar = cosine_abar(T, clip=False)
    model = Denoiser()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    data = ddpm_data(gen, 8, T)
    first_bad: list[tuple[int, str]] = []
    names = {m: n for n, m in model.named_modules()}
    step_now = [0]

    def hook(m, i, o):
        if not first_bad and not torch.isfinite(o).all():
            first_bad.append((step_now[0], names[m]))

    for m in model.modules():
        if m is not model:
            m.register_forward_hook(hook)
    first_last_t: list[int] = []

    def step_fn(step: int):
        step_now[0] = step
        x0, t, noise = next(data)
        if (t == T - 1).any() and not first_last_t:
            first_last_t.append(step)
        ab = abar[t]
        xt = ab.sqrt()[:, None, None, None] * x0 + (1 - ab).sqrt()[:, None, None, None] * noise
        eps = model.unet(xt, t)
        loss = F.mse_loss(model.to_x0(xt, eps, ab), x0)
        loss.backward()
        return loss

    train(ctx, model, opt, 130, step_fn)
    first = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check("abar at the last step is exactly 0", float(abar[-1]) == 0.0)
    ctx.check("first non-finite loss at 101, when t = T-1 is first drawn", first == 101)
    ctx.check("t = T-1 first drawn at 101", first_last_t[:1] == [101])
    ctx.check("first non-finite output in to_x0", first_bad[:1] == [(101, "to_x0")])


@scenario("h92_ddpm_unet_denoiser_digits", "adamw", "healthy", heldout=True)
def h92_ddpm_eps_prediction_healthy(ctx: Context) -> None:
    gen = seeded(9205)
    T = 400
    abar = cosine_abar(T, clip=True)
    model = Denoiser()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    data = ddpm_data(gen, 32, T)

    def step_fn(step: int):
        x0, t, noise = next(data)
        ab = abar[t][:, None, None, None]
        eps = model.unet(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t)
        loss = F.mse_loss(eps, noise)
        loss.backward()
        return loss

    train(ctx, model, opt, 250, step_fn)
    ctx.check("finite", finite(ctx.losses))
    ctx.check("eps loss went down", mean(ctx.losses[-25:]) < 0.7 * mean(ctx.losses[:10]))


# -- VQ-VAE ---------------------------------------------------------------------------------------


class Quantizer(nn.Module):
    def __init__(self, codes: int, dim: int) -> None:
        super().__init__()
        self.codebook = nn.Embedding(codes, dim)
        nn.init.uniform_(self.codebook.weight, -1 / codes, 1 / codes)

    def forward(self, z: torch.Tensor):
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        idx = torch.cdist(flat, self.codebook.weight).argmin(1)
        q = self.codebook(idx).reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        return q, idx


class VQVAE(nn.Module):
    def __init__(self, codes: int = 64, dim: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, dim, 1),
        )
        self.quantizer = Quantizer(codes, dim)
        self.decoder = nn.Sequential(
            nn.Conv2d(dim, 32, 3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        q, idx = self.quantizer(z)
        st = z + (q - z).detach()  # straight-through estimator
        return self.decoder(st), z, q, idx


def vq_losses(model: VQVAE, x: torch.Tensor, beta: float = 0.25):
    recon, z, q, idx = model(x)
    rec = F.mse_loss(recon, x)
    codebook = F.mse_loss(q, z.detach())
    commit = F.mse_loss(z, q.detach())
    return rec, codebook, commit, idx


def image_batches(gen: torch.Generator, x: torch.Tensor, batch: int):
    while True:
        yield x[torch.randint(0, len(x), (batch,), generator=gen)]


@scenario(
    "h92_vqvae_straight_through_codebook",
    "rmsprop",
    "loss_of_plasticity",
    where="quantizer.codebook",
    diverges=None,
    heldout=True,
    onset=0,
    note="codebook re-initialised with std 3 (copied from a model with unnormalised latents): "
    "encoder outputs reach only a handful of codes, the rest never get a gradient",
)
def h92_vqvae_dead_codebook_rmsprop(ctx: Context) -> None:
    gen = seeded(9206)
    model = VQVAE()
    with torch.no_grad():
        model.quantizer.codebook.weight.normal_(0.0, 3.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = image_batches(gen, digit_images(), 32)
    used: list[set[int]] = []
    start = model.quantizer.codebook.weight.detach().clone()

    def step_fn(step: int):
        rec, cb, commit, idx = vq_losses(model, next(batches))
        used.append(set(idx.tolist()))
        (rec + cb + 0.25 * commit).backward()
        return rec + cb + 0.25 * commit

    train(ctx, model, opt, 300, step_fn)
    recent = set().union(*used[-50:])
    ever = set().union(*used)
    moved = (model.quantizer.codebook.weight.detach() - start).abs().sum(1) > 0
    ctx.check("finite", finite(ctx.losses))
    ctx.check("under 10% of the 64 codes used in the last 50 steps", len(recent) < 7)
    ctx.check("codes never chosen never moved", int(moved.sum()) == len(ever))


@scenario(
    "h92_vqvae_straight_through_codebook",
    "sgd_mom",
    "gradient_spike",
    where="encoder",
    diverges=None,
    heldout=True,
    onset=200,
    note="a codebook-usage logging hook at step 200 calls .backward() on the summed commitment "
    "loss of 512 validation images (no no_grad, no zero_grad): a one-off spike in the encoder",
)
def h92_vqvae_logging_hook_backward(ctx: Context) -> None:
    gen = seeded(9207)
    model = VQVAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images = digit_images()
    batches = image_batches(gen, images[:1200], 32)
    val = images[1200:1712]
    enc_norms: list[float] = []
    dec_norms: list[float] = []

    def step_fn(step: int):
        if step == 200:  # the logging hook
            _, z, q, _ = model(val)
            ((z - q.detach()) ** 2).sum().backward()
        rec, cb, commit, _ = vq_losses(model, next(batches))
        loss = rec + cb + 0.25 * commit
        loss.backward()
        enc_norms.append(module_grad_norm(model.encoder))
        dec_norms.append(module_grad_norm(model.decoder))
        return loss

    train(ctx, model, opt, 320, step_fn)
    ctx.check("finite", finite(ctx.losses))
    ctx.check("encoder grad at 200 over 50x its median", enc_norms[200] > 50 * median(enc_norms))
    ctx.check("decoder grad at 200 ordinary", dec_norms[200] < 5 * median(dec_norms))
    ctx.check(
        "loss back under 2x its pre-spike level by the end",
        mean(ctx.losses[-20:]) < 2 * mean(ctx.losses[180:200]),
    )


# -- score matching ------------------------------------------------------------------------------


class ScoreNet(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.inp = nn.Linear(3, hidden)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h = self.body(self.inp(torch.cat([x, sigma.log()[:, None]], 1)))
        return self.out(h) / sigma[:, None]


def spiral_points(gen: torch.Generator, n: int) -> torch.Tensor:
    t = torch.rand(n, generator=gen) * 3 * math.pi + 1
    pts = torch.stack([t * t.cos(), t * t.sin()], 1) / 5
    return pts + 0.05 * torch.randn(n, 2, generator=gen)


@scenario(
    "h92_score_matching_ncsn_spiral",
    "adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="a manual loss scale of 2**24 (a GradScaler's grown scale) left on one step after "
    "switching from fp16 to fp32: "
    "Adam's second moments fill with the giant gradient and later steps barely move",
)
def h92_score_leftover_loss_scale(ctx: Context) -> None:
    gen = seeded(9208)
    model = ScoreNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sigmas = torch.exp(torch.linspace(math.log(0.02), math.log(2.0), 10))
    moves: list[float] = []

    def step_fn(step: int):
        x = spiral_points(gen, 128)
        sigma = sigmas[torch.randint(0, 10, (128,), generator=gen)]
        noise = torch.randn(128, 2, generator=gen)
        score = model(x + sigma[:, None] * noise, sigma)
        loss = ((sigma[:, None] * score + noise) ** 2).sum(1).mean() / 2
        scale = 2.0**24 if step == 150 else 1.0
        (loss * scale).backward()
        return loss

    ctx.attach(model, opt)
    for step in range(450):
        loss = step_fn(step)
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moves.append(
            float(
                sum(
                    (p.detach() - b).norm() ** 2
                    for p, b in zip(model.parameters(), before, strict=False)
                )
            )
            ** 0.5
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", finite(ctx.losses))
    ctx.check(
        "updates after the spike under 1/10 of before",
        mean(moves[200:450]) < mean(moves[100:150]) / 10,
    )
    ctx.check(
        "loss stopped improving after the spike",
        mean(ctx.losses[400:450]) > 0.9 * mean(ctx.losses[155:175]),
    )


# -- StyleGAN-like generator (mapping network + modulated convolutions), trained GLO-style -------


class EqualLinear(nn.Module):
    def __init__(self, cin: int, cout: int, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = lr_mul / math.sqrt(cin)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class MappingNetwork(nn.Module):
    def __init__(self, zdim: int = 16, wdim: int = 32, layers: int = 4) -> None:
        super().__init__()
        dims = [zdim] + [wdim] * layers
        self.layers = nn.ModuleList(
            EqualLinear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=False)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)  # pixel norm
        for layer in self.layers:
            z = F.leaky_relu(layer(z), 0.2) * math.sqrt(2)
        return z


class ModulatedConv(nn.Module):
    def __init__(self, cin: int, cout: int, wdim: int, k: int = 3, demod: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.style = EqualLinear(wdim, cin)
        nn.init.ones_(self.style.bias)
        self.demod = demod
        self.k = k

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b, cin, h, wd = x.shape
        s = self.style(w)
        weight = self.weight[None] * s[:, None, :, None, None] / math.sqrt(cin * self.k**2)
        if self.demod:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        weight = weight.reshape(-1, cin, self.k, self.k)
        out = F.conv2d(x.reshape(1, -1, h, wd), weight, padding=self.k // 2, groups=b)
        return out.reshape(b, -1, h, wd)


class StyleGenerator(nn.Module):
    def __init__(self, n_images: int, zdim: int = 16, wdim: int = 32, ch: int = 32) -> None:
        super().__init__()
        self.latents = nn.Embedding(n_images, zdim)
        self.mapping = MappingNetwork(zdim, wdim)
        self.const = nn.Parameter(torch.randn(1, ch, 4, 4))
        self.conv1 = ModulatedConv(ch, ch, wdim)
        self.conv2 = ModulatedConv(ch, ch, wdim)
        self.to_rgb = ModulatedConv(ch, 1, wdim, k=1, demod=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        w = self.mapping(self.latents(idx))
        x = F.leaky_relu(self.conv1(self.const.expand(len(idx), -1, -1, -1), w), 0.2)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.leaky_relu(self.conv2(x, w), 0.2)
        return self.to_rgb(x, w)


@scenario(
    "h92_stylegan_mapping_modconv_glo",
    "sg_ademamix",
    "update_ratio_out_of_range",
    where="mapping",
    diverges=None,
    heldout=True,
    onset=0,
    note="the mapping network's lr multiplier is applied through its optimizer param group; it "
    "was typed as lr * 100 instead of lr * 0.01 (StyleGAN's multiplier as its inverse)",
)
def h92_stylegan_mapping_lr_mul_inverted(ctx: Context) -> None:
    gen = seeded(9209)
    images = digit_images(512) * 2 - 1
    model = StyleGenerator(len(images))
    base = 2e-3
    mapping = list(model.mapping.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("mapping.")]
    opt = sgo.AdEMAMix([{"params": rest}, {"params": mapping, "lr": base * 100}], lr=base)
    ratios: dict[str, list[float]] = {"mapping": [], "synthesis": []}

    def step_fn(step: int):
        idx = torch.randint(0, len(images), (32,), generator=gen)
        loss = F.mse_loss(model(idx), images[idx])
        loss.backward()
        return loss

    ctx.attach(model, opt)
    for step in range(250):
        loss = step_fn(step)
        ctx.grad_norms.append(grad_norm(model))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        for key, prefix in (("mapping", "mapping.layers.1.weight"), ("synthesis", "conv2.weight")):
            p = dict(model.named_parameters())[prefix].detach()
            ratios[key].append(float((p - before[prefix]).norm() / before[prefix].norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", finite(ctx.losses))
    m, syn = median(ratios["mapping"][20:]), median(ratios["synthesis"][20:])
    ctx.check("mapping update/weight ratio over 0.01 per step", m > 0.01)
    ctx.check("mapping ratio over 30x the synthesis convs'", m > 30 * syn)


# -- NeRF-style MLP with positional encoding on generated rays ------------------------------------


class NeRFMLP(nn.Module):
    def __init__(self, bands: int = 6, hidden: int = 64) -> None:
        super().__init__()
        self.bands = bands
        d = 3 + 6 * bands
        self.trunk = nn.Sequential(
            nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.density = nn.Linear(hidden, 1)
        self.color = nn.Linear(hidden, 3)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        freqs = 2.0 ** torch.arange(self.bands) * math.pi
        ang = x[..., None] * freqs
        return torch.cat([x, ang.sin().flatten(-2), ang.cos().flatten(-2)], -1)

    def forward(self, pts: torch.Tensor):
        h = self.trunk(self.encode(pts))
        return F.softplus(self.density(h)).squeeze(-1), self.color(h)  # linear (HDR) radiance


def render(sigma: torch.Tensor, rgb: torch.Tensor, delta: float) -> torch.Tensor:
    alpha = 1 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
    return ((trans * alpha)[..., None] * rgb).sum(1)


def scene(pts: torch.Tensor):
    """A generated scene: two soft coloured spheres."""
    d1 = (pts - torch.tensor([0.3, 0.0, 0.0])).norm(dim=-1)
    d2 = (pts - torch.tensor([-0.35, 0.2, 0.1])).norm(dim=-1)
    sigma = 20 * torch.sigmoid((0.35 - d1) * 30) + 20 * torch.sigmoid((0.25 - d2) * 30)
    w = torch.sigmoid((d2 - d1) * 20)[..., None]
    rgb = w * torch.tensor([0.9, 0.2, 0.1]) + (1 - w) * torch.tensor([0.1, 0.4, 0.9])
    return sigma, rgb


def ray_batches(gen: torch.Generator, batch: int = 128, samples: int = 24):
    t = torch.linspace(0.0, 2.0, samples)
    delta = float(t[1] - t[0])
    while True:
        theta = torch.rand(batch, generator=gen) * 2 * math.pi
        origin = torch.stack([1.2 * theta.cos(), 1.2 * theta.sin(), torch.zeros(batch)], 1)
        target = 0.3 * torch.randn(batch, 3, generator=gen)
        d = target - origin
        d = d / d.norm(dim=1, keepdim=True)
        pts = origin[:, None] + t[None, :, None] * d[:, None]
        with torch.no_grad():
            colour = render(*scene(pts), delta)
        yield pts, colour, delta


@scenario("h92_nerf_posenc_mlp_rays", "sgd_mom", "healthy", heldout=True)
def h92_nerf_two_spheres_healthy(ctx: Context) -> None:
    gen = seeded(9210)
    model = NeRFMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    batches = ray_batches(gen)

    def step_fn(step: int):
        for g in opt.param_groups:
            g["lr"] = 1.0 * min(1.0, (step + 1) / 200)
        pts, colour, delta = next(batches)
        sigma, rgb = model(pts)
        loss = F.mse_loss(render(sigma, rgb, delta), colour)
        loss.backward()
        return loss

    train(ctx, model, opt, 260, step_fn)
    ctx.check("finite", finite(ctx.losses))
    ctx.check("render loss fell tenfold", mean(ctx.losses[-20:]) < 0.1 * mean(ctx.losses[:5]))


# -- PixelCNN with masked convolutions ------------------------------------------------------------


class MaskedConv2d(nn.Conv2d):
    def __init__(self, kind: str, cin: int, cout: int, k: int) -> None:
        super().__init__(cin, cout, k, padding=k // 2)
        mask = torch.ones_like(self.weight)
        c = k // 2
        mask[:, :, c, c + (kind == "B") :] = 0
        mask[:, :, c + 1 :] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNN(nn.Module):
    """Class-conditional, with a location-dependent conditioning map (van den Oord et al.'s
    conditional PixelCNN): a label embedding reshaped to a (ch, 8, 8) bias for the first layer
    and per-channel label biases after the others."""

    def __init__(self, ch: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.ch = ch
        self.label_map = nn.Embedding(classes, ch * 64)
        self.label = nn.Embedding(classes, 3 * ch)
        self.conv_a = MaskedConv2d("A", 1, ch, 5)
        self.convs = nn.ModuleList(MaskedConv2d("B", ch, ch, 3) for _ in range(3))
        self.head = nn.Conv2d(ch, 2, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        bias = self.label(y)[:, :, None, None].chunk(3, 1)
        h = F.relu(self.conv_a(x) + self.label_map(y).reshape(-1, self.ch, 8, 8))
        for conv, b in zip(self.convs, bias, strict=False):
            h = h + F.relu(conv(h) + b)
        return self.head(h)


@scenario(
    "h92_pixelcnn_masked_conv_binarised",
    "nadam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    onset=0,
    note="class-conditional PixelCNN trained for many epochs on a 10-image debugging subset (one "
    "digit per class) left in the config, no regularisation: the per-pixel softmax becomes "
    "exactly one-hot in float32",
)
def h92_pixelcnn_tiny_subset_overfit(ctx: Context) -> None:
    gen = seeded(9211)
    x_all, y_all = digits()
    pick = torch.stack([torch.nonzero(y_all == c)[0, 0] for c in range(10)])
    images = (x_all[pick].reshape(-1, 1, 8, 8) > 0.4).float()
    labels = y_all[pick]
    model = PixelCNN()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    last: dict[str, torch.Tensor] = {}

    def targets(step: int) -> torch.Tensor:
        last["idx"] = torch.randint(0, len(images), (16,), generator=gen)
        return images[last["idx"]].long().reshape(-1)

    def step_fn(step: int):
        x, c = images[last["idx"]], labels[last["idx"]]
        logits = model(x, c).permute(0, 2, 3, 1).reshape(-1, 2)
        y = x.long().reshape(-1)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        last["logits"], last["y"] = logits.detach(), y
        return loss

    train(ctx, model, opt, 600, step_fn, targets=targets)
    ctx.check("finite", finite(ctx.losses))
    with torch.no_grad():
        logits = model(images, labels).permute(0, 2, 3, 1).reshape(-1, 2)
    ctx.check("training loss under 1e-4", mean(ctx.losses[-20:]) < 1e-4)
    ctx.check(
        "over 40% of training pixels have p(target) == 1.0 in float32",
        collapsed_fraction(logits, images.long().reshape(-1)) > 0.4,
    )


# -- HiFi-GAN-like vocoder with a multi-period discriminator --------------------------------------


def tone_batches(gen: torch.Generator, batch: int = 16, length: int = 256):
    t = torch.arange(length) / 4000.0
    while True:
        f0 = 100 + 500 * torch.rand(batch, 1, generator=gen)
        amp = 0.3 + 0.5 * torch.rand(batch, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        wave = amp * torch.sin(2 * math.pi * f0 * t + phase)
        wave = wave + 0.3 * amp * torch.sin(4 * math.pi * f0 * t + phase)
        yield wave[:, None]


def spectrum(wave: torch.Tensor) -> torch.Tensor:
    spec = torch.stft(
        wave[:, 0], 32, hop_length=8, window=torch.hann_window(32), return_complex=True
    )
    return spec.abs()[..., :-1]  # (batch, 17, length / 8)


class HiFiResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(ch, ch, 3, dilation=d, padding=d) for d in (1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, 0.1))
        return x


class HiFiGenerator(nn.Module):
    def __init__(self, bins: int = 17, ch: int = 32) -> None:
        super().__init__()
        self.conv_pre = nn.Conv1d(bins, ch, 7, padding=3)
        self.up1 = nn.ConvTranspose1d(ch, ch // 2, 8, stride=4, padding=2)
        self.res1 = HiFiResBlock(ch // 2)
        self.up2 = nn.ConvTranspose1d(ch // 2, ch // 4, 4, stride=2, padding=1)
        self.res2 = HiFiResBlock(ch // 4)
        self.conv_post = nn.Conv1d(ch // 4, 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(torch.log(mel + 1e-3))
        x = self.res1(self.up1(F.leaky_relu(x, 0.1)))
        x = self.res2(self.up2(F.leaky_relu(x, 0.1)))
        return torch.tanh(self.conv_post(F.leaky_relu(x, 0.1)))


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int) -> None:
        super().__init__()
        self.period = period
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(1, 16, (5, 1), (3, 1), padding=(2, 0)),
                nn.Conv2d(16, 32, (5, 1), (3, 1), padding=(2, 0)),
            ]
        )
        self.post = nn.Conv2d(32, 1, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor):
        b, c, t = x.shape
        pad = (-t) % self.period
        x = F.pad(x, (0, pad), mode="reflect").reshape(b, c, -1, self.period)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            feats.append(x)
        return self.post(x).flatten(1), feats


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, periods=(2, 3, 5)) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p) for p in periods)

    def forward(self, x: torch.Tensor):
        return [d(x) for d in self.discriminators]


class Vocoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator = HiFiGenerator()
        self.mpd = MultiPeriodDiscriminator()


def vocoder_step(model: Vocoder, wave: torch.Tensor) -> torch.Tensor:
    """One HiFi-GAN step under one optimizer: the discriminator's and the generator's gradients
    are taken separately and written to .grad; returns the spectral (mel-like) L1 loss."""
    g_params = list(model.generator.parameters())
    d_params = list(model.mpd.parameters())
    mel = spectrum(wave)
    fake = model.generator(mel)
    d_loss = 0.0
    for (real_out, _), (fake_out, _) in zip(
        model.mpd(wave), model.mpd(fake.detach()), strict=False
    ):
        d_loss = d_loss + ((1 - real_out) ** 2).mean() + (fake_out**2).mean()
    d_grads = torch.autograd.grad(d_loss, d_params)
    spec_l1 = F.l1_loss(spectrum(fake), mel)
    adv, fm = 0.0, 0.0
    for (_, real_feats), (fake_out, fake_feats) in zip(
        model.mpd(wave), model.mpd(fake), strict=False
    ):
        adv = adv + ((1 - fake_out) ** 2).mean()
        fm = fm + sum(
            F.l1_loss(f, r.detach()) for f, r in zip(fake_feats, real_feats, strict=False)
        )
    g_loss = adv + 2 * fm + 45 * spec_l1
    g_grads = torch.autograd.grad(g_loss, g_params)
    for p, g in zip(d_params + g_params, list(d_grads) + list(g_grads), strict=False):
        p.grad = g
    return spec_l1.detach()


@scenario(
    "h92_hifigan_mpd_vocoder_tones",
    "sg_grams",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=180,
    note="one batch at step 180 read as raw int16 PCM (not divided by 32768)",
)
def h92_hifigan_int16_batch(ctx: Context) -> None:
    gen = seeded(9212)
    model = Vocoder()
    opt = sgo.Grams(model.parameters(), lr=2e-3)
    batches = tone_batches(gen)

    def step_fn(step: int):
        wave = next(batches)
        if step == 180:
            wave = torch.round(wave * 32767)
        return vocoder_step(model, wave)

    train(ctx, model, opt, 260, step_fn)
    L = ctx.losses
    ctx.check("finite", finite(L))
    ctx.check("loss at 180 over 20x the median before", L[180] > 20 * median(L[130:180]))
    ctx.check("back under 2x the pre-outlier level", mean(L[-20:]) < 2 * mean(L[160:180]))


@scenario("h92_hifigan_mpd_vocoder_tones", "sg_stablespam", "healthy", heldout=True)
def h92_hifigan_vocoder_healthy(ctx: Context) -> None:
    gen = seeded(9213)
    model = Vocoder()
    opt = sgo.StableSPAM(model.parameters(), lr=2e-3)
    batches = tone_batches(gen)
    train(ctx, model, opt, 250, lambda step: vocoder_step(model, next(batches)))
    ctx.check("finite", finite(ctx.losses))
    ctx.check("spectral loss went down", mean(ctx.losses[-20:]) < 0.6 * mean(ctx.losses[:10]))


# -- WGAN-GP --------------------------------------------------------------------------------------


class WGAN(nn.Module):
    def __init__(self, zdim: int = 16) -> None:
        super().__init__()
        self.zdim = zdim
        self.generator = nn.Sequential(
            nn.Linear(zdim, 128), nn.ReLU(), nn.Linear(128, 64), nn.Sigmoid()
        )
        self.critic = nn.Sequential(
            nn.Linear(64, 128),
            nn.LeakyReLU(0.2),
            nn.Linear(128, 128),
            nn.LeakyReLU(0.2),
            nn.Linear(128, 1),
        )


@scenario(
    "h92_wgan_gp_mlp_digits",
    "sgd_mom",
    "exploding_gradients",
    where="critic.0",
    diverges="auto",
    heldout=True,
    onset=0,
    note="the gradient-penalty weight is read with a misspelt config key and defaults to 0: an "
    "unconstrained critic under SGD with momentum, its weights and gradients grow step by step "
    "to overflow",
)
def h92_wgan_gp_penalty_weight_missing(ctx: Context) -> None:
    gen = seeded(9214)
    model = WGAN()
    x_all, _ = digits()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    c_params = list(model.critic.parameters())
    g_params = list(model.generator.parameters())
    layer_norms: dict[str, list[float]] = {"critic.0": [], "critic.2": [], "critic.4": []}
    config = {"gp_weight": 10.0}
    gp_weight = config.get("gp_wieght", 0.0)  # misspelt key: the penalty is silently off

    def step_fn(step: int):
        real = x_all[torch.randint(0, len(x_all), (64,), generator=gen)]
        fake = model.generator(torch.randn(64, model.zdim, generator=gen))
        eps = torch.rand(64, 1, generator=gen)
        mix = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
        (gx,) = torch.autograd.grad(model.critic(mix).sum(), mix, create_graph=True)
        gp = ((gx.norm(dim=1) - 1) ** 2).mean()
        c_loss = model.critic(fake.detach()).mean() - model.critic(real).mean() + gp_weight * gp
        c_grads = torch.autograd.grad(c_loss, c_params)
        g_loss = -model.critic(fake).mean()
        g_grads = torch.autograd.grad(g_loss, g_params)
        for p, g in zip(c_params + g_params, list(c_grads) + list(g_grads), strict=False):
            p.grad = g
        for name in layer_norms:
            layer_norms[name].append(float(model.get_submodule(name).weight.grad.norm()))
        return c_loss.detach()

    train(ctx, model, opt, 300, step_fn)
    first_over = {}
    for name, norms in layer_norms.items():
        first_over[name] = next(
            (i for i, v in enumerate(norms) if not math.isfinite(v) or v > 100 * norms[0]), 10**9
        )
    ctx.check(
        "critic gradient norm over 1000x its start",
        max((v if math.isfinite(v) else float("inf")) for v in ctx.grad_norms)
        > 1000 * ctx.grad_norms[0],
    )
    ctx.check("critic.0 crossed 100x first", min(first_over, key=first_over.get) == "critic.0")
    ctx.check("growth took over 20 steps", first_over["critic.0"] > 20)


# -- RealNVP affine-coupling flow -----------------------------------------------------------------


class Coupling(nn.Module):
    def __init__(self, flip: bool, hidden: int = 64) -> None:
        super().__init__()
        self.flip = flip
        self.net = nn.Sequential(
            nn.Linear(1, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor):
        a, b = (x[:, 1:], x[:, :1]) if self.flip else (x[:, :1], x[:, 1:])
        s, t = self.net(a).chunk(2, 1)
        s = torch.tanh(s)
        b = b * s.exp() + t
        out = torch.cat([b, a], 1) if self.flip else torch.cat([a, b], 1)
        return out, s.sum(1)


class RealNVP(nn.Module):
    def __init__(self, layers: int = 6) -> None:
        super().__init__()
        self.couplings = nn.ModuleList(Coupling(i % 2 == 1) for i in range(layers))

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        logdet = torch.zeros(len(x))
        for c in self.couplings:
            x, ld = c(x)
            logdet = logdet + ld
        logp = -0.5 * (x**2).sum(1) - math.log(2 * math.pi)
        return -(logp + logdet).mean()


def moons(gen: torch.Generator, n: int) -> torch.Tensor:
    t = torch.rand(n, generator=gen) * math.pi
    upper = torch.rand(n, generator=gen) < 0.5
    x = torch.where(upper, t.cos(), 1 - t.cos())
    y = torch.where(upper, t.sin(), 0.5 - t.sin())
    return torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=gen)


@scenario(
    "h92_realnvp_affine_coupling_moons",
    "adagrad",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=250,
    note="resumed at step 250 from a checkpoint that saved the weights but not the optimizer: "
    "Adagrad's accumulators restart from zero and the first steps are far too large",
)
def h92_realnvp_resume_without_optimizer_state(ctx: Context) -> None:
    gen = seeded(9215)
    model = RealNVP()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)

    def step_fn(step: int):
        if step == 250:
            opt.state.clear()
        loss = model.nll(moons(gen, 256))
        loss.backward()
        return loss

    train(ctx, model, opt, 400, step_fn)
    L = ctx.losses
    ctx.check("finite", finite(L))
    ctx.check("loss jumps after 250", max(L[250:256]) > mean(L[230:250]) + 1.0)
    ctx.check("recovers by the end", mean(L[-20:]) < mean(L[230:250]) + 0.3)


@scenario(
    "h92_realnvp_affine_coupling_moons",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=30,
    note="linear warm-up to a peak learning rate of 3.0 (typo for 0.3) over 300 steps: past the "
    "intended peak the step outgrows the curvature, the NLL oscillates and then blows up",
)
def h92_realnvp_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(9216)
    model = RealNVP()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def step_fn(step: int):
        for g in opt.param_groups:
            g["lr"] = 3.0 * min(1.0, (step + 1) / 300)
        loss = model.nll(moons(gen, 256))
        loss.backward()
        return loss

    train(ctx, model, opt, 300, step_fn)
    L = ctx.losses
    best = min(v for v in L if math.isfinite(v))
    late = [v if math.isfinite(v) else float("inf") for v in L[-60:]]
    ctx.check("nll went down first", min(L[:60]) < L[0] - 0.3)
    ctx.check("nll blew up past 10x its best (or non-finite)", max(late) > 10 * best)
