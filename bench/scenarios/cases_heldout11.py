"""Held-out scenarios (``h11_``): new model families, written without reading the detectors.

Families: Hugging Face Phi-3 and Cohere causal LMs, a DistilBERT classifier, a Whisper
encoder-decoder (on generated log-mel-like features), a Wav2Vec2 audio classifier (on generated
waveforms) and a DeiT image classifier, all built from configs; a small
GAN (generator + discriminator under one optimizer), a VQ-VAE, PointNet on generated point
clouds, a GIN graph net on generated graphs, a TabNet-like attentive tabular net (breast
cancer) and a gMLP language model. Optimizers: SGD, SGD with momentum / Nesterov, Adam, AdamW,
NAdam, Adamax, Adagrad, RMSprop and ``steadygrad.optim.Lion``.

Written without reading ``steadygrad/diagnose/detectors/``, ``steadygrad/diagnose/diagnosis.py``,
``steadygrad/monitor/`` or the other held-out files, and never run on steadygrad while written:
each scenario was adjusted only until its own checks held (a healthy one until it trained
normally), with a stand-in context that attaches nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared loop ----------------------------------------------------------------------------------


def _train(ctx: Context, model: nn.Module, opt, steps: int, step_loss, *, probe=None, before=None):
    """``step_loss(step) -> (loss, total)``: ``loss`` is reported, ``total`` backpropagated."""
    ctx.attach(model, opt, probe=probe)
    for step in range(steps):
        if before is not None:
            before(step)
        loss, total = step_loss(step)
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


# -- Hugging Face causal LMs ----------------------------------------------------------------------


def _phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        attention_dropout=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        tie_word_embeddings=False,
    )
    return Phi3ForCausalLM(config)


def _cohere():
    from transformers import CohereConfig, CohereForCausalLM

    config = CohereConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        logit_scale=1.0,
        tie_word_embeddings=False,
    )
    return CohereForCausalLM(config)


def _max_qk_logit(model, layer: int, x: torch.Tensor) -> float:
    """Largest |q.k|/sqrt(d) of a Phi-3 layer on ``x`` (before rotary: rotation keeps norms)."""
    attn = model.model.layers[layer].self_attn
    seen = {}
    handle = attn.qkv_proj.register_forward_hook(lambda m, i, o: seen.setdefault("qkv", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    d = model.config.hidden_size
    heads = model.config.num_attention_heads
    q, k, _ = seen["qkv"].split(d, dim=-1)
    b, t, _ = q.shape
    q = q.reshape(b, t, heads, -1).transpose(1, 2)
    k = k.reshape(b, t, heads, -1).transpose(1, 2)
    return float((q @ k.transpose(-1, -2)).abs().amax() / math.sqrt(d // heads))


@scenario(
    "hf_phi3",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.1.self_attn", "model.layers.1.self_attn.qkv_proj"),
    diverges=None,
    heldout=True,
    onset=100,
)
def h11_phi3_qk_sharpen_adamw(ctx: Context) -> None:
    """From step 100 a hand-written "attention sharpening" schedule meant to run once at the
    end of warm-up runs every step: it multiplies the query and key rows of layer 1's fused
    qkv projection by 1.02, so that layer's attention logits grow geometrically."""
    gen = seeded(1101)
    model = _phi3()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    batches = text_batches(gen)
    probe_x, _ = next(batches)
    d = model.config.hidden_size

    def sharpen(step: int) -> None:
        if step >= 100:
            with torch.no_grad():
                model.model.layers[1].self_attn.qkv_proj.weight[: 2 * d].mul_(1.02)

    def step_loss(step: int):
        x, y = next(batches)
        loss = lm_loss(model(x).logits, y)
        return loss, loss

    start = _max_qk_logit(model, 1, probe_x)
    _train(ctx, model, opt, 300, step_loss, before=sharpen)
    end = _max_qk_logit(model, 1, probe_x)
    ctx.check(f"layer 1 max attention logit grew 50x ({start:.2f} -> {end:.1f})", end > 50 * start)


@scenario(
    "hf_cohere",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=80,
)
def h11_cohere_zloss_sign_adam(ctx: Context) -> None:
    """From step 80 an auxiliary z-loss is switched on with the wrong sign (it rewards a large
    log-partition instead of penalising it): the output logits drift up without bound and the
    loss, after a while, climbs with them."""
    gen = seeded(1102)
    model = _cohere()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = text_batches(gen)
    log_z: list[float] = []

    def step_loss(step: int):
        x, y = next(batches)
        logits = model(x).logits.float()
        loss = lm_loss(logits, y)
        z = torch.logsumexp(logits, dim=-1)
        log_z.append(float(z.detach().abs().mean()))
        total = loss - 1e-1 * (z**2).mean() if step >= 80 else loss
        return loss, total

    _train(ctx, model, opt, 320, step_loss)
    ctx.check(
        f"mean |log Z| from {log_z[79]:.1f} to {log_z[-1]:.1f}",
        log_z[79] < 10 and log_z[-1] > 3 * log_z[79],
    )


# -- DistilBERT under fp16 autocast ---------------------------------------------------------------


def _distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=128,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        seq_classif_dropout=0.0,
        num_labels=2,
        pad_token_id=0,
    )
    return DistilBertForSequenceClassification(config)


@scenario("hf_distilbert", "adamw", "amp_overflow", diverges=None, heldout=True)
def h11_distilbert_fp16_scaler_adamw(ctx: Context) -> None:
    """fp16 autocast with a GradScaler started at 2**24: the first steps overflow and are
    skipped while the scale comes down, later a growth step overflows again; training is fine."""
    gen = seeded(1103)
    model = _distilbert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=30)
    fit(
        ctx,
        model,
        opt,
        bert_batches(gen),
        200,
        scaler=scaler,
        amp=True,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    skipped = drops + (ctx.scales[0] < 2.0**24)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check(f"scaler skipped {skipped} steps", skipped >= 2)
    ctx.check(f"loss fell ({first:.3f} -> {last:.3f})", last < 0.8 * first)


# -- Whisper: one giant gradient into Adam's second moment -----------------------------------------


def _whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=24,
        num_mel_bins=16,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=16,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    return WhisperForConditionalGeneration(config)


def speech_batches(gen: torch.Generator, batch: int = 16, words: int = 4, vocab: int = 24):
    """Log-mel-like features (batch, 16 bins, 32 frames): each of ``words`` tokens lights two
    mel bins (fixed per token) over its 8 frames, plus noise; labels are the tokens."""
    bins = torch.randint(0, 16, (vocab, 2), generator=torch.Generator().manual_seed(7))
    while True:
        tokens = torch.randint(3, vocab, (batch, words), generator=gen)
        feats = 0.3 * torch.randn(batch, 16, 8 * words, generator=gen) - 1.0
        for w in range(words):
            rows = bins[tokens[:, w]]
            for j in range(2):
                feats[torch.arange(batch), rows[:, j], 8 * w : 8 * w + 8] += 2.0
        yield feats, tokens


@scenario(
    "hf_whisper",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=150,
)
def h11_whisper_unscaled_loss_adam(ctx: Context) -> None:
    """At step 150 (the first step after resuming) the loss is still multiplied by the fp16
    loss scale 2**16 and never unscaled: one giant gradient enters Adam's second moment, and
    for hundreds of steps after it the updates are tiny; the loss stops improving."""
    gen = seeded(1104)
    model = _whisper()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = speech_batches(gen)
    moved: list[float] = []
    last = [p.detach().clone() for p in model.parameters()]

    def step_loss(step: int):
        if step > 0:
            now = [p.detach() for p in model.parameters()]
            moved.append(float(sum((a - b).abs().sum() for a, b in zip(now, last, strict=True))))
            last[:] = [p.clone() for p in now]
        feats, tokens = next(batches)
        loss = model(input_features=feats, labels=tokens).loss
        return loss, loss * 2.0**16 if step == 150 else loss

    _train(ctx, model, opt, 400, step_loss)
    before = sum(moved[100:149]) / 49
    after = sum(moved[220:300]) / 80
    ctx.check(f"updates shrank ({before:.3g} -> {after:.3g} per step)", after < 0.2 * before)
    fell = sum(ctx.losses[100:120]) / 20 - sum(ctx.losses[130:150]) / 20
    stuck = sum(ctx.losses[250:270]) / 20 - sum(ctx.losses[-20:]) / 20
    ctx.check(f"loss was falling ({fell:.3f}/30 steps), then stalled ({stuck:.3f})", stuck < fell)


# -- Wav2Vec2: a silent clip ----------------------------------------------------------------------


class PerClipNormalize(nn.Module):
    """Zero-mean, unit-variance per clip (hand-written: no epsilon)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)


class AudioClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

        config = Wav2Vec2Config(
            vocab_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(16, 16),
            conv_stride=(5, 4),
            conv_kernel=(10, 4),
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=2,
            num_feat_extract_layers=2,
            feat_extract_norm="group",
            mask_time_prob=0.0,
            mask_feature_prob=0.0,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            feat_proj_dropout=0.0,
            final_dropout=0.0,
            layerdrop=0.0,
            num_labels=3,
            classifier_proj_size=16,
        )
        self.normalize = PerClipNormalize()
        self.w2v = Wav2Vec2ForSequenceClassification(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2v(self.normalize(x)).logits


def audio_batches(gen: torch.Generator, batch: int = 16, length: int = 400):
    """Tones of one of three frequencies, random phase and gain, in noise; label = tone."""
    t = torch.arange(length) / 4000.0
    freqs = torch.tensor([220.0, 550.0, 1100.0])
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        gain = 0.2 + torch.rand(batch, 1, generator=gen)
        x = gain * torch.sin(6.2832 * freqs[y][:, None] * t + phase)
        yield x + 0.05 * torch.randn(batch, length, generator=gen), y


@scenario(
    "hf_wav2vec2",
    "nadam",
    "nonfinite",
    where="normalize",
    diverges=110,
    heldout=True,
    onset=110,
)
def h11_wav2vec2_silent_clip_nadam(ctx: Context) -> None:
    """At step 110 one clip in the batch is digital silence (all zeros): the per-clip
    normaliser divides 0 by a standard deviation of 0 and the NaN flows into everything."""
    gen = seeded(1105)
    model = AudioClassifier()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 110:
            x = x.clone()
            x[3] = 0.0
        return x, y

    fit(ctx, model, opt, audio_batches(gen), 140, alter=alter)
    finite = _finite(ctx.losses)
    ctx.check("finite until 110, not from 110", all(finite[:110]) and not any(finite[110:]))
    ctx.check("loss was falling", sum(ctx.losses[90:110]) < sum(ctx.losses[:20]))


# -- DeiT: one encoder layer frozen by a layer-wise LR table --------------------------------------


def _deit():
    from transformers import DeiTConfig, DeiTForImageClassification

    config = DeiTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=10,
    )
    return DeiTForImageClassification(config)


@scenario(
    "hf_deit",
    "adam",
    "update_ratio_out_of_range",
    where="deit.layers.1",
    diverges=None,
    heldout=True,
)
def h11_deit_layer_decay_typo_adam(ctx: Context) -> None:
    """Layer-wise LR decay from a table keyed by layer name; the key for layer 1 was typed
    'layer.1' and the lookup's default is 0.0: that whole encoder layer never moves."""
    gen = seeded(1106)
    model = _deit()
    scale = {"layers.0": 0.6, "layer.1": 0.75, "layers.2": 0.9}
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        key = next((k for k in scale if f"deit.{k}." in name), None)
        factor = 1.0 if "deit.layers." not in name else scale.get(key, 0.0)
        groups.setdefault(factor, []).append(p)
    opt = torch.optim.Adam([{"params": ps, "lr": 1e-3 * f} for f, ps in groups.items()], lr=1e-3)
    frozen = model.deit.layers[1].mlp.fc1.weight
    before = frozen.detach().clone()
    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 48),
        300,
        forward=lambda m, x: m(pixel_values=2 * x.reshape(-1, 1, 8, 8) - 1).logits,
    )
    ctx.check("encoder layer 1 unchanged", torch.equal(before, frozen))
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check(f"the rest trained ({first:.2f} -> {last:.2f})", last < 0.85 * first)


# -- a small GAN: a warm-up to a mistyped peak ----------------------------------------------------


class GAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.Sequential(
            nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
        )
        self.discriminator = nn.Sequential(
            nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2),
            nn.Linear(64, 1),
        )  # fmt: skip


def ring(gen: torch.Generator, n: int) -> torch.Tensor:
    """Eight Gaussians on a circle of radius 2."""
    angle = torch.randint(0, 8, (n,), generator=gen) * (math.pi / 4)
    centre = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * 2.0
    return centre + 0.05 * torch.randn(n, 2, generator=gen)


def _gan_losses(model: GAN, real: torch.Tensor, z: torch.Tensor):
    """(discriminator loss, generator loss): the non-saturating GAN losses."""
    fake = model.generator(z)
    d_real = model.discriminator(real)
    d_fake = model.discriminator(fake.detach())
    d_loss = F.binary_cross_entropy_with_logits(
        d_real, torch.ones_like(d_real)
    ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    g_out = model.discriminator(fake)
    g_loss = F.binary_cross_entropy_with_logits(g_out, torch.ones_like(g_out))
    return d_loss, g_loss


@scenario(
    "gan",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=25,
    note="warm-up to a peak LR typed 10x too large",
)
def h11_gan_warmup_overshoot_sgd(ctx: Context) -> None:
    """A linear warm-up over 250 steps to a peak learning rate typed 1.0 instead of 0.1:
    the GAN trains, the LR passes the intended peak at step 25 and keeps rising, and once it
    passes what the losses' curvature allows the updates overshoot and the losses blow up."""
    gen = seeded(1107)
    model = GAN()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    g_params = list(model.generator.parameters())

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 1.0 * min(1.0, (step + 1) / 250)

    def step_loss(step: int):
        real = ring(gen, 64)
        z = torch.randn(64, 8, generator=gen)
        d_loss, g_loss = _gan_losses(model, real, z)
        g_grads = torch.autograd.grad(g_loss, g_params, retain_graph=True)
        return _GanTotal(d_loss + g_loss, d_loss, g_params, g_grads)

    ctx.attach(model, opt)
    for step in range(260):
        warmup(step)
        pack = step_loss(step)
        pack.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(pack.loss)
        opt.zero_grad(set_to_none=True)
    losses = ctx.losses
    early = sum(losses[20:60]) / 40
    bad = [v for v in losses if not math.isfinite(v) or v > 10 * early]
    ctx.check(f"losses blew up (early mean {early:.2f}, {len(bad)} steps > 10x)", len(bad) >= 5)


class _GanTotal:
    """The reported loss (D + G) and its backward: D's gradient from D's loss only, G's from
    G's loss only."""

    def __init__(self, loss, d_loss, g_params, g_grads) -> None:
        self.loss = loss.detach()
        self.d_loss = d_loss
        self.g_params = g_params
        self.g_grads = g_grads

    def backward(self) -> None:
        self.d_loss.backward()
        for p, g in zip(self.g_params, self.g_grads, strict=True):
            p.grad = g.clone()


# -- VQ-VAE: an activation-sparsity penalty 10^4 too strong -----------------------------------------


class VQVAE(nn.Module):
    def __init__(self, codes: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, dim))
        self.codebook = nn.Embedding(codes, dim)
        self.dec = nn.Sequential(nn.Linear(dim, 96), nn.ReLU(), nn.Linear(96, 64))

    def forward(self, x: torch.Tensor):
        h = self.enc[1](self.enc[0](x))
        z = self.enc[2](h)
        idx = torch.cdist(z, self.codebook.weight).argmin(1)
        q = self.codebook(idx)
        vq = F.mse_loss(q, z.detach()) + 0.25 * F.mse_loss(z, q.detach())
        recon = self.dec(z + (q - z).detach())
        return recon, vq, h


@scenario(
    "vqvae",
    "adam",
    "loss_of_plasticity",
    where=("enc.0", "enc.1"),
    diverges=None,
    heldout=True,
    onset=60,
)
def h11_vqvae_sparsity_penalty_adam(ctx: Context) -> None:
    """From step 60 an L1 sparsity penalty on the encoder's hidden ReLU is switched on with
    weight 0.5 (meant 5e-5): it pushes the pre-activations below zero, the units die and do
    not come back."""
    gen = seeded(1108)
    model = VQVAE()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = digit_batches(gen)

    def step_loss(step: int):
        x, _ = next(batches)
        recon, vq, h = model(x)
        loss = F.mse_loss(recon, x) + vq
        total = loss + 0.5 * h.abs().mean() * (step >= 60)
        return loss, total

    x_all, _ = digits()
    with torch.no_grad():
        alive_before = 1 - dead_fraction(model(x_all[:512])[2])
    _train(ctx, model, opt, 260, step_loss)
    with torch.no_grad():
        dead = dead_fraction(model(x_all[:512])[2])
    ctx.check(
        f"encoder hidden units dead: {1 - alive_before:.2f} at start, {dead:.2f} at the end",
        dead >= 0.6 + (1 - alive_before),
    )


# -- PointNet on generated point clouds -----------------------------------------------------------


class PointNet(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.point_mlp = nn.Sequential(
            nn.Conv1d(3, 32, 1), nn.ReLU(), nn.Conv1d(32, 64, 1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        return self.head(self.point_mlp(pts.transpose(1, 2)).amax(-1))


def cloud_batches(gen: torch.Generator, batch: int = 32, points: int = 64):
    """Sphere, cube surface or cylinder (label 0, 1, 2), random size 0.7-1.3, in metres."""
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        v = torch.randn(batch, points, 3, generator=gen)
        sphere = v / v.norm(dim=-1, keepdim=True)
        cube = v / v.abs().amax(-1, keepdim=True)
        ang = 6.2832 * torch.rand(batch, points, generator=gen)
        height = 2 * torch.rand(batch, points, generator=gen) - 1
        cyl = torch.stack([torch.cos(ang), torch.sin(ang), height], -1)
        pts = torch.where(
            y[:, None, None] == 0, sphere, torch.where(y[:, None, None] == 1, cube, cyl)
        )
        size = 0.7 + 0.6 * torch.rand(batch, 1, 1, generator=gen)
        yield pts * size + 0.02 * torch.randn(batch, points, 3, generator=gen), y


@scenario(
    "pointnet",
    "sgd_mom",
    "data_outlier",
    diverges=130,
    heldout=True,
    onset=130,
)
def h11_pointnet_millimetre_scan_momentum(ctx: Context) -> None:
    """At step 130 four scans in the batch come from a sensor that writes millimetres: their
    coordinates are 1000x the others'."""
    gen = seeded(1109)
    model = PointNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 130:
            x = x.clone()
            x[:4] *= 1000.0
        return x, y

    fit(ctx, model, opt, cloud_batches(gen), 220, alter=alter)
    ctx.check("loss spiked at 130", ctx.losses[130] > 5 * max(ctx.losses[120:130]))


@scenario("pointnet", "adam", "healthy", heldout=True)
def h11_pointnet_healthy_adam(ctx: Context) -> None:
    gen = seeded(1110)
    model = PointNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, cloud_batches(gen), 220)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check(f"loss fell ({first:.3f} -> {last:.3f})", last < 0.5 * first)


# -- GIN on generated graphs ----------------------------------------------------------------------


class GINLayer(nn.Module):
    def __init__(self, dim_in: int, dim: int) -> None:
        super().__init__()
        self.eps = nn.Parameter(torch.zeros(()))
        self.mlp = nn.Sequential(nn.Linear(dim_in, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return F.relu(self.mlp((1 + self.eps) * h + adj @ h))


class GIN(nn.Module):
    def __init__(self, dim: int = 32, layers: int = 3, classes: int = 2) -> None:
        super().__init__()
        self.convs = nn.ModuleList(GINLayer(1 if i == 0 else dim, dim) for i in range(layers))
        self.head = nn.Linear(dim * layers, classes)

    def forward(self, adj: torch.Tensor) -> torch.Tensor:
        h = torch.ones(adj.shape[0], adj.shape[1], 1)
        pooled = []
        for conv in self.convs:
            h = conv(h, adj)
            pooled.append(h.mean(1))  # mean readout per layer (sum would scale with size)
        return self.head(torch.cat(pooled, -1))


def graph_batches(gen: torch.Generator, batch: int = 32, nodes: int = 12):
    """Random graphs: label 1 if the graph has a triangle through node 0's neighbourhood
    density above the median, via edge probability 0.15 vs 0.3 (label = denser)."""
    while True:
        y = torch.randint(0, 2, (batch,), generator=gen)
        p = torch.where(y == 1, 0.3, 0.15)[:, None, None]
        upper = (torch.rand(batch, nodes, nodes, generator=gen) < p).float().triu(1)
        yield upper + upper.transpose(1, 2), y


@scenario(
    "gin",
    "adagrad",
    "exploding_gradients",
    where=("convs.1.mlp.0", "convs.1.mlp", "convs.1"),
    diverges="auto",
    heldout=True,
    onset=50,
)
def h11_gin_weightnorm_bug_adagrad(ctx: Context) -> None:
    """From step 50 a hand-written weight-norm re-parametrisation of layer 1's first Linear
    multiplies where it should divide: the weight grows 10% a step, the gradients of
    everything before it grow with it, the loss swings wider and wider (from about step 100),
    and at step 170 an explosion wrecks the weights (the net is left at chance)."""
    gen = seeded(1111)
    model = GIN()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)

    def bug(step: int) -> None:
        if step >= 50:
            with torch.no_grad():
                model.convs[1].mlp[0].weight.mul_(1.1)

    fit(ctx, model, opt, graph_batches(gen), 220, before=bug)
    g = ctx.grad_norms
    ctx.check(
        f"gradient norm grew 100x by 170 (steps 40-50: {max(g[40:50]):.3g}, {g[170]:.3g})",
        g[170] > 100 * max(g[40:50]),
    )
    early, end = sum(ctx.losses[30:50]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check(f"loss {ctx.losses[170]:.1f} at 170", ctx.losses[170] > 50 * early)
    ctx.check(f"left at chance after ({early:.2f} -> {end:.2f})", abs(end - math.log(2)) < 0.1)


@scenario("gin", "sgd_nesterov", "healthy", heldout=True)
def h11_gin_healthy_nesterov(ctx: Context) -> None:
    gen = seeded(1112)
    model = GIN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    fit(ctx, model, opt, graph_batches(gen), 300)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check(f"loss fell ({first:.3f} -> {last:.3f})", last < 0.6 * first)


# -- a TabNet-like attentive tabular net (breast cancer) ------------------------------------------


def cancer() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), torch.tensor(d.target)


def cancer_batches(gen: torch.Generator, batch: int = 64):
    x, y = cancer()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


class GLUBlock(nn.Module):
    def __init__(self, dim_in: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim_in, 2 * dim)
        self.bn = nn.BatchNorm1d(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(self.bn(self.fc(x)), dim=-1)


class TabNetLike(nn.Module):
    """Decision steps: an attentive transformer picks features (softmax mask, damped by a prior
    of what earlier steps used), a GLU feature transformer processes them."""

    def __init__(self, features: int = 30, dim: int = 16, steps: int = 3, classes: int = 2):
        super().__init__()
        self.attentive = nn.ModuleList(nn.Linear(dim, features) for _ in range(steps))
        self.transform = nn.ModuleList(GLUBlock(features, 2 * dim) for _ in range(steps))
        self.head = nn.Linear(dim, classes)
        self.dim = dim
        self.temperature = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prior = torch.ones_like(x)
        a = torch.zeros(x.shape[0], self.dim)
        out = 0
        for attn, block in zip(self.attentive, self.transform, strict=True):
            mask = torch.softmax(attn(a) + torch.log(prior + 1e-6), -1)
            prior = prior * (1.5 - mask).clamp(min=0.0)
            h = block(x * mask * x.shape[1])
            d, a = h.split(self.dim, -1)
            out = out + F.relu(d)
        return self.head(out) / self.temperature


@scenario(
    "tabnet",
    "adamax",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
)
def h11_tabnet_temperature_adamax(ctx: Context) -> None:
    """The logits are divided by a temperature of 0.01 copied from a contrastive setup: on
    this separable task the float32 softmax soon gives most training rows exactly 1.0."""
    gen = seeded(1113)
    model = TabNetLike()
    model.temperature = 0.01
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, cancer_batches(gen), 300)
    x, y = cancer()
    model.eval()
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check(f"{frac:.2f} of rows collapsed to exactly 1.0", frac >= 0.5)


@scenario("tabnet", "rmsprop", "healthy", heldout=True)
def h11_tabnet_healthy_rmsprop(ctx: Context) -> None:
    gen = seeded(1114)
    model = TabNetLike()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, cancer_batches(gen), 250)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check(f"loss fell ({first:.3f} -> {last:.3f})", last < 0.5 * first)


# -- gMLP language model ----------------------------------------------------------------------------


class SpatialGatingUnit(nn.Module):
    def __init__(self, dim: int, length: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.spatial = nn.Linear(length, length)
        nn.init.zeros_(self.spatial.weight)
        nn.init.ones_(self.spatial.bias)
        self.register_buffer("causal", torch.ones(length, length).tril())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x.chunk(2, dim=-1)
        t = x.shape[1]
        w = (self.spatial.weight * self.causal)[:t, :t]
        v = torch.einsum("ts,bsd->btd", w, self.norm(v)) + self.spatial.bias[:t, None]
        return u * v


class GMLPBlock(nn.Module):
    def __init__(self, dim: int, length: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, 4 * dim)
        self.sgu = SpatialGatingUnit(2 * dim, length)
        self.proj_out = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_out(self.sgu(F.gelu(self.proj_in(self.norm(x)))))


class GMLP(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 32, length: int = 32, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(GMLPBlock(dim, length) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


@scenario(
    "gmlp",
    "sg_lion",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=120,
)
def h11_gmlp_decay_sign_lion(ctx: Context) -> None:
    """From step 120 (when a fine-tuning phase starts) a hand-written weight decay copied from
    an SGD recipe (lr 0.09 times wd 0.1) is applied with the wrong sign, p *= 1 + 0.009: every
    weight matrix inflates a little each step and the loss climbs slowly."""
    gen = seeded(1115)
    model = GMLP()
    opt = sgo.Lion(model.parameters(), lr=3e-4, fused=False)

    def decay(step: int) -> None:
        if step >= 120:
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() > 1:
                        p.mul_(1 + 0.09 * 0.1)

    fit(ctx, model, opt, text_batches(gen), 500, loss_fn=lm_loss, before=decay)
    best = min(sum(ctx.losses[i : i + 10]) / 10 for i in range(0, 130, 10))
    end = sum(ctx.losses[-10:]) / 10
    ctx.check(f"loss climbed from {best:.2f} to {end:.2f}", end > 1.5 * best)


@scenario("gmlp", "sg_lion", "healthy", heldout=True)
def h11_gmlp_healthy_lion(ctx: Context) -> None:
    gen = seeded(1116)
    model = GMLP()
    opt = sgo.Lion(model.parameters(), lr=3e-4, weight_decay=0.1, fused=False)
    fit(ctx, model, opt, text_batches(gen), 300, loss_fn=lm_loss)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check(f"loss fell ({first:.3f} -> {last:.3f})", last < 0.75 * first)
