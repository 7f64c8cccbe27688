"""Held-out scenarios, set 68 (``h68_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face CLIP vision tower with a linear head (digits; a control under fp16
autocast with a GradScaler), Dinov2-with-registers backbone with a hand-written head (digits),
BLIP vision tower with a tempered head (digits), Data2Vec-vision image classifier (digits; a
control too) and MLCD vision tower with a hand-written attention-pooling head (fp16 autocast
with a GradScaler), all from configs; VAE with KL annealing (digits; a control too), denoising
diffusion (DDPM, epsilon prediction on digits; a control too), denoising score matching on
generated 2-D points, VQ-VAE with a codebook (digits), conditional flow matching on generated
two-moons points, PixelCNN-style masked convolutions (binarised digits) and a masked
autoencoder on digit patches.

Optimizers: Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, Adadelta, RMSprop, ASGD, momentum SGD
and Nesterov SGD.
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
    grad_norm,
    scenario,
    seeded,
)

# -- shared helpers -------------------------------------------------------------------------------


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def _loop(ctx: Context, model: nn.Module, opt, steps: int, loss_at, *, before=None, probe=None):
    """A plain loop for the generative models: ``loss_at(step)`` returns the loss to train on."""
    ctx.attach(model, opt, probe=probe)
    for step in range(steps):
        if before is not None:
            before(step)
        loss = loss_at(step)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def _vit_kwargs() -> dict:
    return dict(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )


# -- Hugging Face CLIP vision tower: an attention scale typo --------------------------------------


class ClipDigits(nn.Module):
    """CLIP vision tower (from a config) + a linear head on the pooled CLS token."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        cfg = CLIPVisionConfig(attn_implementation="eager", **_vit_kwargs())
        self.tower = CLIPVisionModel(cfg)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(pixel_values=x.reshape(-1, 1, 8, 8)).pooler_output)


def _clip_attn_logits(attn, h: torch.Tensor) -> torch.Tensor:
    """q.k * scale of one CLIP attention module on its input ``h``: (batch, heads, t, t)."""
    b, t, _ = h.shape
    q = attn.q_proj(h).reshape(b, t, attn.num_heads, -1).transpose(1, 2)
    k = attn.k_proj(h).reshape(b, t, attn.num_heads, -1).transpose(1, 2)
    return (q @ k.transpose(-1, -2)) * attn.scale


@scenario(
    "h68_hf_clip_vision_digits",
    "adam",
    "attention_logit_growth",
    where=(
        "tower.encoder.layers.0.self_attn",
        "tower.encoder.layers.1.self_attn",
    ),
    diverges=None,
    heldout=True,
    note="attention scale written head_dim**0.5 (16x too large); logits grow until saturated",
)
def h68_clip_attn_scale_typo_adam(ctx: Context) -> None:
    """A port of the attention to a "fixed temperature" variant set ``attn.scale =
    head_dim ** 0.5`` instead of ``head_dim ** -0.5``: every q.k logit is 16x too large from
    step 0, and with Adam at 3e-3 the query/key projections keep sharpening them. The logits
    grow more than an order of magnitude further and the attention rows saturate to one-hot;
    the loss keeps falling, slowly and noisily (the run does not diverge)."""
    gen = seeded(6801)
    model = ClipDigits()
    attns = [layer.self_attn for layer in model.tower.encoder.layers]
    for attn in attns:
        attn.scale = attn.head_dim**0.5
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        a.register_forward_pre_hook(
            lambda m, args, kw, i=i: inputs.__setitem__(
                i, kw.get("hidden_states", args[0] if args else None)
            ),
            with_kwargs=True,
        )
        for i, a in enumerate(attns)
    ]
    probe_x, _ = next(digit_batches(torch.Generator().manual_seed(68), 128))

    def max_logit() -> float:
        with torch.no_grad():
            model(probe_x)
            return max(
                float(_clip_attn_logits(a, inputs[i]).abs().max()) for i, a in enumerate(attns)
            )

    start = max_logit()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    fit(ctx, model, opt, digit_batches(gen, 64), 300)
    end = max_logit()
    with torch.no_grad():
        model(probe_x)
        p = torch.softmax(_clip_attn_logits(attns[1], inputs[1]), -1)
    for hk in hooks:
        hk.remove()
    ctx.check(f"attention logits grew 10x ({start:.0f} -> {end:.0f})", end >= 10 * start)
    ctx.check(
        "layer-1 attention rows saturated (max prob > 0.99 on most rows)",
        float((p.max(-1).values > 0.99).float().mean()) > 0.5,
    )


@scenario(
    "h68_hf_clip_vision_digits",
    "adamw",
    "healthy",
    heldout=True,
    note="fp16 autocast with a GradScaler, correct attention scale",
)
def h68_clip_fp16_healthy_adamw(ctx: Context) -> None:
    """The same CLIP tower with its own 1/sqrt(d) scale, trained under fp16 autocast with a
    GradScaler and AdamW: a control."""
    gen = seeded(6802)
    model = ClipDigits()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    fit(ctx, model, opt, digit_batches(gen, 64), 250, amp=True, scaler=scaler)
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check(
        f"loss fell ({first:.2f} -> {last:.2f})",
        all(map(_finite, ctx.losses)) and last < 0.4 * first,
    )


# -- Hugging Face Dinov2-with-registers: a z-loss with the wrong sign -----------------------------


class DinoDigits(nn.Module):
    """Dinov2-with-registers backbone (from a config) + a linear head on the CLS token."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        cfg = Dinov2WithRegistersConfig(
            image_size=8,
            patch_size=2,
            num_channels=1,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=2,
            num_register_tokens=2,
        )
        self.backbone = Dinov2WithRegistersModel(cfg)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixel_values=x.reshape(-1, 1, 8, 8)).pooler_output)


@scenario(
    "h68_hf_dinov2_registers_digits",
    "sgd_nesterov",
    "output_logit_divergence",
    where="head",
    diverges="auto",
    heldout=True,
    note="z-loss added with the wrong sign: log Z is pushed up, not held at 0",
)
def h68_dinov2_zloss_sign_nesterov(ctx: Context) -> None:
    """A z-loss meant to hold the head's log-partition near zero (``+ 1e-2 * lse**2``) was
    written as ``- 1e-2 * lse**2``: it rewards a large log Z. The head's logits drift up
    together (softmax does not see a common shift, so the cross-entropy is blind to it) and the
    drift compounds (the push is proportional to log Z itself) until the logits are so large
    that their differences blow the cross-entropy up."""
    gen = seeded(6803)
    model = DinoDigits()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    seen: dict[str, torch.Tensor] = {}
    lse_trace: list[float] = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = m(x)
        seen["logits"] = out
        return out

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(seen["logits"].float(), -1)
        lse_trace.append(float(lse.mean().detach()))
        return loss - 1e-2 * (lse**2).mean()

    fit(ctx, model, opt, digit_batches(gen, 64), 300, forward=forward, extra_loss=extra)
    ok = [abs(v) for v in lse_trace if _finite(v)]
    ctx.check(
        f"log Z ran away ({lse_trace[0]:.1f} -> {max(ok):.3g})",
        max(ok) > 50 * max(abs(lse_trace[0]), 1.0),
    )
    best = min(v for v in ctx.losses if _finite(v))
    ctx.check(
        "the cross-entropy then blew up",
        not all(map(_finite, ctx.losses)) or max(ctx.losses[-30:]) > 10 * best,
    )


# -- Hugging Face BLIP vision tower: a temperature divided the wrong way --------------------------


class TemperedHead(nn.Module):
    """Linear head with a temperature: the config's 0.02 was meant as a multiplier."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 10)
        self.temperature = temperature

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h) / self.temperature


class BlipDigits(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        from transformers import BlipVisionConfig, BlipVisionModel

        # BLIP's default initializer_range (1e-10) leaves the position embeddings at ~0
        self.tower = BlipVisionModel(BlipVisionConfig(initializer_range=0.02, **_vit_kwargs()))
        self.head = TemperedHead(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BLIP's patch embedding is built for RGB: the grey digit is repeated on 3 channels
        rgb = x.reshape(-1, 1, 8, 8).expand(-1, 3, -1, -1)
        return self.head(self.tower(pixel_values=rgb).pooler_output)


@scenario(
    "h68_hf_blip_vision_digits",
    "adamw",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="logits / 0.02 on a 128-image fine-tune set: probabilities reach exactly 1.0",
)
def h68_blip_temperature_inverted_adamw(ctx: Context) -> None:
    """A BLIP vision tower fine-tuned on a small 128-image set. The head's temperature (0.02,
    meant as ``logits * 0.02``) is applied as ``logits / 0.02``: every logit gap is 50x too
    large, the training loss is driven towards zero, the softmax saturates (the median image's
    target probability is within 1e-4 of 1) and on a growing share of the images the float32
    softmax gives the target exactly 1.0 (the gradient through them is gone)."""
    gen = seeded(6804)
    x_all, y_all = digits()
    pick = torch.randperm(len(y_all), generator=gen)[:128]
    xs, ys = x_all[pick], y_all[pick]

    def batches():
        while True:
            order = torch.randperm(128, generator=gen)
            for i in range(0, 128, 64):
                yield xs[order[i : i + 64]], ys[order[i : i + 64]]

    model = BlipDigits(0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    fit(ctx, model, opt, batches(), 400)
    with torch.no_grad():
        logits = model(xs)
        frac = collapsed_fraction(logits, ys)
        gap = 1 - torch.softmax(logits.float(), -1).gather(1, ys[:, None])
    ctx.check(f"float32 softmax gives the target exactly 1.0 on {frac:.0%} of the set", frac >= 0.1)
    ctx.check(
        f"the median row is saturated (1 - p = {float(gap.median()):.1e})",
        float(gap.median()) < 1e-4,
    )


# -- Hugging Face Data2Vec-vision: patch embeddings left frozen -----------------------------------


def _data2vec():
    from transformers import Data2VecVisionConfig, Data2VecVisionForImageClassification

    kwargs = _vit_kwargs() | {"patch_size": 4}
    cfg = Data2VecVisionConfig(num_labels=10, use_mean_pooling=True, **kwargs)
    return Data2VecVisionForImageClassification(cfg)


def _pixels(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(pixel_values=x.reshape(-1, 1, 8, 8)).logits


@scenario(
    "h68_hf_data2vec_vision_digits",
    "rmsprop",
    "update_ratio_out_of_range",
    where=("data2vec_vision.embeddings", "data2vec_vision.embeddings.patch_embeddings.projection"),
    diverges=None,
    heldout=True,
    note="linear-probe freeze undone for encoder and pooler only; embeddings never update",
)
def h68_data2vec_embeddings_left_frozen_rmsprop(ctx: Context) -> None:
    """A linear-probe stage froze the whole backbone; the fine-tune stage meant to unfreeze it
    called ``requires_grad_(True)`` on the encoder and the pooler only. The patch projection,
    the CLS token and the position embeddings stay frozen for the whole run (their update is
    exactly 0) while the rest of the model fine-tunes normally."""
    gen = seeded(6805)
    model = _data2vec()
    model.data2vec_vision.requires_grad_(False)  # the linear probe's freeze
    model.data2vec_vision.encoder.requires_grad_(True)
    model.data2vec_vision.pooler.requires_grad_(True)
    emb = model.data2vec_vision.embeddings
    before = [p.detach().clone() for p in emb.parameters()]
    enc_before = (
        model.data2vec_vision.encoder.layer[0].attention.attention.query.weight.detach().clone()
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, digit_batches(gen, 64), 200, forward=_pixels)
    ctx.check(
        "embeddings unchanged",
        all(torch.equal(b, p) for b, p in zip(before, emb.parameters(), strict=True)),
    )
    moved = not torch.equal(
        enc_before, model.data2vec_vision.encoder.layer[0].attention.attention.query.weight
    )
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check("the encoder trained and the loss fell", moved and last < 0.6 * first)


@scenario("h68_hf_data2vec_vision_digits", "adam", "healthy", heldout=True)
def h68_data2vec_healthy_adam(ctx: Context) -> None:
    """The Data2Vec-vision classifier fine-tuned end to end with Adam: a control."""
    gen = seeded(6806)
    model = _data2vec()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, digit_batches(gen, 64), 200, forward=_pixels)
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check(
        f"loss fell ({first:.2f} -> {last:.2f})",
        all(map(_finite, ctx.losses)) and last < 0.4 * first,
    )


# -- Hugging Face MLCD vision tower: a hand-written softmax overflows in fp16 ---------------------


class ExpPool(nn.Module):
    """Attention pooling with a learned query, softmax written by hand (no max subtraction)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * 0.5)
        self.last_weights: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = torch.exp(h @ self.query)  # fp16 under autocast: inf once a score passes 11.09
        self.last_weights = w.detach()
        return (w[..., None] * h).sum(1) / w.sum(1, keepdim=True)


class MlcdDigits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import MLCDVisionConfig, MLCDVisionModel

        self.tower = MLCDVisionModel(MLCDVisionConfig(num_key_value_groups=1, **_vit_kwargs()))
        self.pool = ExpPool(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tower(pixel_values=x.reshape(-1, 1, 8, 8)).last_hidden_state
        return self.head(self.pool(h))


@scenario(
    "h68_hf_mlcd_vision_digits",
    "adamax",
    "amp_overflow",
    where="pool",
    diverges=46,
    heldout=True,
    note="fp16 autocast + GradScaler; exp of a pooling score > 11.09 is inf in fp16",
)
def h68_mlcd_exp_pool_fp16_adamax(ctx: Context) -> None:
    """The attention-pooling head's softmax was written by hand as ``exp(s) / sum(exp(s))``
    without subtracting the max. In float32 that is harmless; under fp16 autocast the scores
    come out of the matmul in fp16 and ``exp`` of a score above 11.09 exceeds 65504. As the
    learned query sharpens the pooling, the scores grow; the first one past the limit turns
    the pooled features into inf/inf = NaN and every loss from then on is NaN (the GradScaler
    skips the steps, but the forward pass itself keeps overflowing)."""
    gen = seeded(6807)
    model = MlcdDigits()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    infs: list[bool] = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = m(x)
        infs.append(bool(torch.isinf(m.pool.last_weights).any()))
        return out

    fit(ctx, model, opt, digit_batches(gen, 64), 120, amp=True, scaler=scaler, forward=forward)
    first_inf = infs.index(True) if True in infs else None
    finite = [_finite(v) for v in ctx.losses]
    first_bad = finite.index(False) if False in finite else None
    ctx.check(
        f"pool's fp16 exp overflowed first at step {first_inf}, the loss went NaN there",
        first_inf == first_bad == 46,
    )


# -- VAE with KL annealing: the optimizer state lost on resume ------------------------------------


class VAE(nn.Module):
    def __init__(self, latent: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(64, 128), nn.ReLU())
        self.mu = nn.Linear(128, latent)
        self.logvar = nn.Linear(128, latent)
        self.dec = nn.Sequential(nn.Linear(latent, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        return self.dec(mu + eps * torch.exp(0.5 * logvar)), mu, logvar


def _vae_step(model: VAE, gen: torch.Generator, batches, beta: float) -> torch.Tensor:
    x, _ = next(batches)
    eps = torch.randn(len(x), 8, generator=gen)
    logits, mu, logvar = model(x, eps)
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum() / len(x)
    return rec + beta * kl


def _anneal(step: int) -> float:
    return min(1.0, step / 100)


@scenario(
    "h68_vae_kl_anneal_digits",
    "nadam",
    "loss_spike",
    where="dec.2",
    diverges=250,
    heldout=True,
    onset=250,
    note="resume at 250 with strict=False skips the renamed output layer: it restarts from init",
)
def h68_vae_resume_skipped_layer_nadam(ctx: Context) -> None:
    """The job is pre-empted and resumed at step 250 from a checkpoint written before a
    refactor renamed the decoder's output layer. ``load_state_dict(strict=False)`` silently
    skips it, so ``dec.2`` restarts from a fresh initialisation while everything else (and the
    optimizer state) is restored: the reconstruction loss jumps at once and recovers within a
    few dozen steps as the layer is relearnt (no data, gradient or schedule change)."""
    gen = seeded(6808)
    model = VAE()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    batches = digit_batches(gen, 64)

    def resume(step: int) -> None:
        if step == 250:
            fresh = VAE()  # the resumed process's model, before the (partial) load
            with torch.no_grad():
                model.dec[2].weight.copy_(fresh.dec[2].weight)
                model.dec[2].bias.copy_(fresh.dec[2].bias)

    _loop(ctx, model, opt, 400, lambda s: _vae_step(model, gen, batches, _anneal(s)), before=resume)
    base = sum(ctx.losses[230:250]) / 20
    peak = ctx.losses[250]
    ctx.check(
        f"loss jumped at the resume ({base:.1f} -> {peak:.1f})",
        peak > 1.5 * base and peak == max(ctx.losses[200:]),
    )
    ctx.check("and recovered", sum(ctx.losses[-20:]) / 20 < 1.05 * base)


@scenario("h68_vae_kl_anneal_digits", "nadam", "healthy", heldout=True)
def h68_vae_healthy_nadam(ctx: Context) -> None:
    """The VAE with its KL weight annealed 0 -> 1 over 100 steps, trained with NAdam: a
    control (the loss rises a little while the KL weight ramps, then falls)."""
    gen = seeded(6809)
    model = VAE()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = digit_batches(gen, 64)
    _loop(ctx, model, opt, 300, lambda s: _vae_step(model, gen, batches, _anneal(s)))
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check(
        f"loss fell ({first:.1f} -> {last:.1f})",
        all(map(_finite, ctx.losses)) and last < 0.7 * first,
    )


# -- denoising diffusion (DDPM): a warm-up written with max instead of min ------------------------


class EpsNet(nn.Module):
    """Epsilon predictor for 64-pixel digits, conditioned on a sinusoidal step embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64 + 16, 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(), nn.Linear(256, 64)
        )

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(1000.0) * torch.arange(8) / 8)
        ang = t[:, None].float() * freqs
        return self.net(torch.cat([xt, ang.sin(), ang.cos()], 1))


_BETAS = torch.linspace(1e-4, 0.02, 100)
_ABAR = torch.cumprod(1 - _BETAS, 0)


def _ddpm_batch(gen: torch.Generator, batches):
    x, _ = next(batches)
    x0 = 2 * x - 1
    t = torch.randint(0, 100, (len(x0),), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    a = _ABAR[t][:, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps


def _ddpm_loss(m: nn.Module, b) -> torch.Tensor:
    return F.mse_loss(m(b[0], b[1]), b[2])


def _ddpm_run(ctx: Context | None, seed: int, steps: int, lr_at) -> list[float]:
    gen = seeded(seed)
    model = EpsNet()
    opt = torch.optim.SGD(model.parameters(), lr=lr_at(0), momentum=0.9)
    batches = digit_batches(gen, 64)
    probe = _ddpm_batch(
        torch.Generator().manual_seed(seed), digit_batches(torch.Generator().manual_seed(1), 64)
    )

    def before(step: int) -> None:
        opt.param_groups[0]["lr"] = lr_at(step)

    if ctx is None:  # the same run without a context (the check's reference)
        losses = []
        for step in range(steps):
            before(step)
            loss = _ddpm_loss(model, _ddpm_batch(gen, batches))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        return losses
    _loop(
        ctx,
        model,
        opt,
        steps,
        lambda s: _ddpm_loss(model, _ddpm_batch(gen, batches)),
        before=before,
        probe=(_ddpm_loss, probe),
    )
    return ctx.losses


_DDPM_LR = 0.1


def _step_decay(gamma: float):
    """``MultiStepLR(milestones=[200], gamma=gamma)`` as a function of the step."""
    return lambda s: _DDPM_LR * (gamma if s >= 200 else 1.0)


@scenario(
    "h68_ddpm_digits",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=200,
    note="step decay at 200 with gamma=10 (meant 0.1): the LR jumps 10x past 2/curvature",
)
def h68_ddpm_decay_gamma_typo_sgd_mom(ctx: Context) -> None:
    """The step-decay schedule was configured ``gamma=10`` where ``0.1`` was meant: at the
    milestone (step 200) the rate of momentum SGD jumps from 0.1 to 1.0 instead of falling to
    0.01. That is far above the stability limit 2/curvature of the epsilon-MSE at that point:
    the loss blows up within a few steps. The same seed with the rate held at its base value
    trains fine."""
    losses = _ddpm_run(ctx, 6810, 260, _step_decay(10.0))
    ref = _ddpm_run(None, 6810, 260, lambda s: _DDPM_LR)
    best = min(v for v in losses if _finite(v))
    bad = [i for i, v in enumerate(losses) if not _finite(v) or v > 10 * best]
    ctx.check(
        f"the loss blew up at step {bad[0] if bad else None}, after the 10x jump at 200",
        bool(bad) and 200 <= bad[0] < 230 and all(map(_finite, losses[:200])),
    )
    ctx.check(
        "the base rate alone trains fine", all(map(_finite, ref)) and max(ref[-50:]) < 2 * min(ref)
    )


@scenario("h68_ddpm_digits", "sgd_mom", "healthy", heldout=True)
def h68_ddpm_healthy_sgd_mom(ctx: Context) -> None:
    """The DDPM epsilon predictor with the step decay configured correctly (``gamma=0.1``):
    a control."""
    losses = _ddpm_run(ctx, 6811, 400, _step_decay(0.1))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    ctx.check(
        f"loss fell ({first:.3f} -> {last:.3f})", all(map(_finite, losses)) and last < 0.6 * first
    )


# -- denoising score matching on generated 2-D points: one corrupt noise level --------------------


def _ring(gen: torch.Generator, n: int) -> torch.Tensor:
    """A mixture of eight Gaussians on a circle (generated)."""
    k = torch.randint(0, 8, (n,), generator=gen).float() * (2 * math.pi / 8)
    centres = torch.stack([k.cos(), k.sin()], 1) * 2.0
    return centres + 0.1 * torch.randn(n, 2, generator=gen)


class ScoreNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2)
        )

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, sigma.log()[:, None]], 1))


@scenario(
    "h68_dsm_ring_points",
    "radam",
    "adam_second_moment_poisoned",
    where="net.4",
    diverges=150,
    heldout=True,
    onset=150,
    note="one sample's noise level reads 1e-6 at step 150: a 1/sigma^2 gradient poisons v",
)
def h68_dsm_corrupt_sigma_radam(ctx: Context) -> None:
    """Denoising score matching in its raw form ``|s(x + sigma n, sigma) + n / sigma|^2``
    (per-sample noise levels from a precomputed table between 0.05 and 1, fine for those).
    At step 150 one entry of the table is corrupt and reads 1e-6: that one sample's target is
    1e6 in size and the gradient is some 1e4 times the usual one. RAdam's second moment
    absorbs its square; with beta2 = 0.999 it takes thousands of steps to decay. The spike is
    spread evenly only over the output layer ``net.4`` (the hidden layers see it on the few
    units that sample activates): from then on every update of ``net.4`` is damped to a few
    percent of its former size and the output layer all but stops learning."""
    gen = seeded(6812)
    model = ScoreNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    flat: list[torch.Tensor] = []

    def loss_at(step: int) -> torch.Tensor:
        flat.append(torch.cat([p.detach().flatten() for p in model.net[4].parameters()]))
        x = _ring(gen, 128)
        sigma = torch.exp(torch.empty(128).uniform_(math.log(0.05), 0.0, generator=gen))
        if step == 150:
            sigma[7] = 1e-6  # the corrupt table entry
        n = torch.randn(128, 2, generator=gen)
        s = model(x + sigma[:, None] * n, sigma)
        return ((s + n / sigma[:, None]) ** 2).sum(1).mean()

    _loop(ctx, model, opt, 400, loss_at)
    upd = [float((b - a).norm()) for a, b in zip(flat[:-1], flat[1:], strict=False)]
    before_, after_ = sum(upd[100:150]) / 50, sum(upd[200:399]) / 199
    ctx.check(
        f"net.4's updates shrank after the spike ({before_:.2e} -> {after_:.2e})",
        after_ < 0.1 * before_,
    )
    ctx.check("the loss spiked at 150", ctx.losses[150] > 100 * max(ctx.losses[130:150]))


# -- VQ-VAE: a warm-restart LR burst kills the encoder's ReLUs ------------------------------------


class VQVAE(nn.Module):
    def __init__(self, codes: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, dim))
        self.codebook = nn.Embedding(codes, dim)
        self.dec = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, x: torch.Tensor):
        z = self.enc(x)
        idx = torch.cdist(z, self.codebook.weight).argmin(1)
        q = self.codebook(idx)
        vq = F.mse_loss(q, z.detach()) + 0.25 * F.mse_loss(z, q.detach())
        return self.dec(z + (q - z).detach()), vq


def _vq_loss(m: VQVAE, x: torch.Tensor) -> torch.Tensor:
    rec, vq = m(x)
    return F.mse_loss(rec, x) + vq


@scenario(
    "h68_vqvae_codebook_digits",
    "adagrad",
    "loss_of_plasticity",
    where=("enc.0", "enc.1"),
    diverges=None,
    heldout=True,
    onset=150,
    note="the encoder group's warm restart at 150 runs at 50x for 5 steps; enc.1's ReLUs die",
)
def h68_vqvae_restart_burst_adagrad(ctx: Context) -> None:
    """The encoder has its own parameter group and schedule; its warm restart at step 150
    restarts at ``base * 50`` (a restart multiplier of 1.0 typed as 50) for five steps before a
    guard resets it. The burst throws the encoder's first layer so far that the ReLU after it
    (``enc.1``) is never positive again on almost any digit: those units get no gradient and
    cannot come back. The loss recovers (the decoder and codebook adapt), but the encoder has
    lost nearly all its units."""
    gen = seeded(6813)
    model = VQVAE()
    lr = 0.01
    rest = list(model.codebook.parameters()) + list(model.dec.parameters())
    opt = torch.optim.Adagrad([{"params": model.enc.parameters()}, {"params": rest}], lr=lr)
    batches = digit_batches(gen, 64)
    probe_x, _ = next(digit_batches(torch.Generator().manual_seed(6), 512))
    dead: dict[int, float] = {}

    def before(step: int) -> None:
        opt.param_groups[0]["lr"] = lr * 50 if 150 <= step < 155 else lr
        if step in (149, 299):
            with torch.no_grad():
                dead[step] = dead_fraction(model.enc[1](model.enc[0](probe_x)))

    _loop(ctx, model, opt, 300, lambda s: _vq_loss(model, next(batches)[0]), before=before)
    ctx.check(
        f"enc.1 dead units {dead[149]:.0%} before the burst, {dead[299]:.0%} after",
        dead[149] < 0.2 and dead[299] > 0.9,
    )


# -- conditional flow matching on generated two-moons points: decay with the wrong sign -----------


def _moons(gen: torch.Generator, n: int) -> torch.Tensor:
    """Two interleaved half circles (generated here, as scikit-learn's make_moons draws them)."""
    t = torch.rand(n, generator=gen) * math.pi
    upper = torch.rand(n, generator=gen) < 0.5
    x = torch.where(upper, t.cos(), 1 - t.cos())
    y = torch.where(upper, t.sin(), 0.5 - t.sin())
    return torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=gen)


class VelocityNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], 1))


def _fm_loss(m: VelocityNet, gen: torch.Generator) -> torch.Tensor:
    x1 = _moons(gen, 128)
    x0 = torch.randn(128, 2, generator=gen)
    t = torch.rand(128, generator=gen)
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    return F.mse_loss(m(xt, t), x1 - x0)


@scenario(
    "h68_flow_matching_moons",
    "asgd",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="hand-written decoupled weight decay p *= (1 + lr * wd): the weights inflate",
)
def h68_flow_matching_decay_sign_asgd(ctx: Context) -> None:
    """ASGD has no decoupled weight decay, so one was written by hand after each step: ``p.mul_(1
    + lr * wd)`` where ``1 - lr * wd`` was meant. Each step inflates every weight by 1%; the
    gradient pulls back, but less and less successfully: the velocity field's outputs grow,
    the flow-matching MSE bottoms out early and then climbs slowly and steadily."""
    gen = seeded(6814)
    model = VelocityNet()
    lr, wd = 0.05, 0.2
    opt = torch.optim.ASGD(model.parameters(), lr=lr)
    norms: list[float] = []

    def decay(step: int) -> None:  # the previous step's decay, applied before this one
        with torch.no_grad():
            if step > 0:
                for p in model.parameters():
                    p.mul_(1 + lr * wd)
            norms.append(float(torch.cat([p.flatten() for p in model.parameters()]).norm()))

    _loop(ctx, model, opt, 400, lambda s: _fm_loss(model, gen), before=decay)
    ok = [v for v in ctx.losses if _finite(v)]
    best = min(ok)
    top = max(v for v in norms if _finite(v))
    ctx.check(f"weights inflated ({norms[0]:.1f} -> {top:.3g})", top > 5 * norms[0])
    ctx.check(
        "the loss climbed 5x above its best",
        not all(map(_finite, ctx.losses)) or max(ctx.losses[-20:]) > 5 * best,
    )


# -- PixelCNN-style masked convolutions: an init gain that ignores the channel count -------------


class MaskedConv(nn.Conv2d):
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
    def __init__(self, width: int = 24, layers: int = 6) -> None:
        super().__init__()
        self.inp = MaskedConv("A", 1, width, 5)
        self.layers = nn.ModuleList(MaskedConv("B", width, width, 3) for _ in range(layers))
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(x))
        for layer in self.layers:
            h = F.relu(layer(h))
        return self.out(h)


# -- masked autoencoder on digit patches: per-image standardisation without an epsilon -----------


class Standardize(nn.Module):
    """Per-image standardisation of the input (written without an epsilon)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)


class MAE(nn.Module):
    """16 patches of 2x2 pixels; 12 masked; a one-layer encoder and decoder."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.standardize = Standardize()
        self.embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(16, dim) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.decoder = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True)
        self.pred = nn.Linear(dim, 4)

    @staticmethod
    def patches(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.patches(self.standardize(x))
        tok = self.embed(p) + self.pos
        b = len(x)
        vis = torch.gather(tok, 1, keep[..., None].expand(-1, -1, tok.shape[-1]))
        enc = self.encoder(vis)
        full = (self.mask_token + self.pos).expand(b, -1, -1).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, enc.shape[-1]), enc + self.pos[keep])
        return self.pred(self.decoder(full)), p


def _mae_loss(m: MAE, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    order = torch.rand(len(x), 16, generator=gen).argsort(1)
    keep, masked = order[:, :4], order[:, 4:]
    pred, target = m(x, keep)
    idx = masked[..., None].expand(-1, -1, 4)
    return F.mse_loss(torch.gather(pred, 1, idx), torch.gather(target, 1, idx))


def _binary_digits(gen: torch.Generator):
    """Binarised digits; the model sees them and predicts them (targets = inputs)."""
    for x, _ in digit_batches(gen, 32):
        xb = (x > 0.5).float().reshape(-1, 1, 8, 8)
        yield xb, xb


def _bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out, y)


@scenario(
    "h68_pixelcnn_binary_digits",
    "adam",
    "data_outlier",
    diverges=120,
    heldout=True,
    onset=120,
    note="one batch at 120 fed raw 0..16 intensities instead of binarised pixels",
)
def h68_pixelcnn_raw_intensity_batch_adam(ctx: Context) -> None:
    """At step 120 one shard's input batch skipped the binarisation and arrived as raw 0..16
    intensities (the targets, read from a separate cache, are fine). The masked convolutions see
    inputs 16x too loud: the logits and the loss spike at that one step, Adam takes one
    off-course step, and the following clean batches pull the model back: the loss returns to where it
    was within a few dozen steps."""
    gen = seeded(6815)
    model = PixelCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 120:
            raw, _ = next(digit_batches(torch.Generator().manual_seed(120), 32))
            x = (16 * raw).reshape(-1, 1, 8, 8)
        return x, y

    fit(ctx, model, opt, _binary_digits(gen), 260, loss_fn=_bce, classifier=False, alter=alter)
    base = sum(ctx.losses[100:120]) / 20
    ctx.check(
        f"loss spiked at 120 ({base:.3f} -> {ctx.losses[120]:.3g})",
        ctx.losses[120] > 3 * max(ctx.losses[100:120]),
    )
    ctx.check(
        "and recovered", all(map(_finite, ctx.losses)) and sum(ctx.losses[-20:]) / 20 < 1.1 * base
    )


@scenario(
    "h68_mae_digit_patches",
    "adadelta",
    "nonfinite",
    where="standardize",
    diverges=170,
    heldout=True,
    onset=170,
    note="a blank image at step 170: per-image std is 0, (x - mean) / 0 = NaN",
)
def h68_mae_blank_image_std_adadelta(ctx: Context) -> None:
    """The masked autoencoder standardises each image by its own mean and std, written without
    an epsilon. At step 170 a corrupt, all-blank image (every pixel 0) is in the batch: its std
    is 0 and ``standardize`` produces 0/0 = NaN for it; the loss is NaN, the NaN gradients reach
    every weight through Adadelta's update, and every later loss is NaN too."""
    gen = seeded(6816)
    model = MAE()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    batches = digit_batches(gen, 64)
    nan_out: list[bool] = []
    hook = model.standardize.register_forward_hook(
        lambda m, i, o: nan_out.append(bool(torch.isnan(o).any()))
    )

    def loss_at(step: int) -> torch.Tensor:
        x, _ = next(batches)
        if step == 170:
            x = x.clone()
            x[11] = 0.0  # the corrupt (blank) image
        return _mae_loss(model, x, gen)

    _loop(ctx, model, opt, 200, loss_at)
    hook.remove()
    finite = [_finite(v) for v in ctx.losses]
    ctx.check(
        "standardize's output first NaN at 170, the loss finite before and NaN from then on",
        nan_out.index(True) == 170 and all(finite[:170]) and not any(finite[170:]),
    )
    ctx.check(
        "the MAE was learning before",
        sum(ctx.losses[150:170]) / 20 < 0.8 * sum(ctx.losses[:10]) / 10,
    )
