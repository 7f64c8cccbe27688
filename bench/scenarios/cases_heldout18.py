"""Held-out scenarios, eighteenth set (``h18_``): new families, faults a user would cause.

Families: Hugging Face PhiMoE (tiny MoE causal LM), a Longformer classifier, a ResNet image
classifier, an Autoformer forecaster on generated series and a Perceiver classifier, all built
from configs (no download); written here: a Transformer-XL-style decoder with segment memory, a
pointer-generator seq2seq, a VAE-GAN, a neural SDE (Euler-Maruyama), deep kernel learning (MLP
features + RBF GP head), an MC-dropout regressor and a self-supervised rotation-prediction CNN.
Optimizers: AdamW, Adam, SGD, momentum, Nesterov, RMSprop, Adagrad, NAdam, RAdam, Adamax and
steadygrad.optim's AdaBelief and Lion.

Written without reading ``steadygrad/diagnose/detectors/``, ``steadygrad/diagnose/diagnosis.py``,
``steadygrad/monitor/`` or the other held-out files, and never run on steadygrad while written:
each scenario was adjusted only until its own checks held (a healthy one: until it trained
normally) with a stand-in context that attaches nothing.
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
    fit,
    scenario,
    seeded,
    text_batches,
)


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


# -- Hugging Face PhiMoE: attention logits grow -------------------------------------------------


def _phimoe():
    from transformers import PhimoeConfig, PhimoeForCausalLM

    config = PhimoeConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        router_jitter_noise=0.0,
        input_jitter_noise=0.0,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return PhimoeForCausalLM(config)


@scenario(
    "hf_phimoe",
    "adamw",
    "attention_logit_growth",
    where=(
        "model.layers.0.self_attn",
        "model.layers.1.self_attn",
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.k_proj",
    ),
    diverges=None,
    onset=40,
    note="hand-written decoupled decay on q/k with the wrong sign: q/k weights grow 3%/step",
    heldout=True,
)
def h18_phimoe_qk_decay_sign(ctx: Context) -> None:
    gen = seeded(1801)
    model = _phimoe()
    qk = [p for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "k_proj.weight"))]
    rest = [p for n, p in model.named_parameters() if not any(p is q for q in qk)]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.01}, {"params": qk, "weight_decay": 0.0}], lr=2e-3
    )
    norm0 = sum(float(p.norm()) for p in qk)

    def decay_qk(step: int) -> None:
        # meant p *= (1 - wd): "custom decay for attention projections" from step 40 on
        if step >= 40:
            with torch.no_grad():
                for p in qk:
                    p.mul_(1 + 0.03)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=32),
        260,
        before=decay_qk,
        forward=lambda m, x: m(input_ids=x).logits,
        loss_fn=lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
        classifier=False,
    )
    x, _ = next(text_batches(gen, batch=8, length=32))
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        attn = model(input_ids=x, output_attentions=True).attentions[-1]
    entropy = float(-(attn * attn.clamp_min(1e-30).log()).sum(-1).mean())
    ctx.check("q/k weights grew 20x", sum(float(p.norm()) for p in qk) > 20 * norm0)
    ctx.check("attention nearly one-hot (entropy < 0.1)", entropy < 0.1)
    ctx.check("loss rose above its best", _mean(ctx.losses[-10:]) > min(ctx.losses) + 0.2)


# -- Transformer-XL-style decoder with segment memory: NaN from a fully masked row -------------


class MemAttention(nn.Module):
    """Causal attention over [memory; segment] (keys/values also from the cached memory), with
    padded keys masked out; written by hand (masked_fill + softmax)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, key_pad: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        m = mem.shape[1]
        q = self.q(x).reshape(b, t, self.heads, -1).transpose(1, 2)
        k, v = self.kv(torch.cat([mem, x], 1)).split(d, -1)
        k, v = (z.reshape(b, m + t, self.heads, -1).transpose(1, 2) for z in (k, v))
        causal = torch.ones(t, m + t, dtype=torch.bool).tril(diagonal=m)
        allowed = causal[None, None] & ~key_pad[:, None, None, :]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        att = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class XLBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MemAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mem: torch.Tensor, key_pad: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), self.ln1(mem), key_pad)
        return x + self.ff(self.ln2(x))


class TransformerXL(nn.Module):
    """Decoder reading a stream segment by segment; each layer attends to the previous
    segment's (detached) hidden states: the recurrence of Transformer-XL (absolute positions
    for brevity). Token 0 is padding: padded keys are masked."""

    def __init__(self, vocab: int = 128, dim: int = 32, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(64, dim)
        self.blocks = nn.ModuleList(XLBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab)
        self.dim = dim

    def forward(self, idx: torch.Tensor, seg: int = 16) -> torch.Tensor:
        b, t = idx.shape
        mems = [torch.zeros(b, 0, self.dim) for _ in self.blocks]
        mem_pad = torch.zeros(b, 0, dtype=torch.bool)
        outs = []
        for s in range(0, t, seg):
            part = idx[:, s : s + seg]
            key_pad = torch.cat([mem_pad, part == 0], 1)
            x = self.tok(part) + self.pos(torch.arange(s, s + part.shape[1]) % 64)
            new = []
            for block, mem in zip(self.blocks, mems, strict=True):
                new.append(x.detach())
                x = block(x, mem, key_pad)
            mems, mem_pad = new, part == 0
            outs.append(self.lm_head(self.ln_f(x)))
        return torch.cat(outs, 1)


@scenario(
    "transformer_xl",
    "sg_adabelief",
    "nonfinite",
    where=("blocks.0.attn", "blocks.0"),
    diverges=150,
    onset=150,
    note="an empty document padded to full length: every key of its rows is masked, the "
    "hand-written masked softmax gives NaN",
    heldout=True,
)
def h18_txl_empty_document_mask(ctx: Context) -> None:
    gen = seeded(1802)
    model = TransformerXL()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:  # the loader padded an empty document instead of skipping it
            x, y = x.clone(), y.clone()
            x[2], y[2] = 0, 0
        return x, y

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=32),
        180,
        alter=alter,
        loss_fn=lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
        classifier=False,
    )
    finite = _finite(ctx.losses)
    ctx.check("finite until 150, not after", all(finite[:150]) and not finite[150])
    ctx.check("learned before", _mean(ctx.losses[140:150]) < 0.8 * _mean(ctx.losses[:5]))


# -- Hugging Face Longformer classifier: healthy -------------------------------------------------


@scenario("hf_longformer", "adamw", "healthy", heldout=True)
def h18_longformer_healthy(ctx: Context) -> None:
    from transformers import LongformerConfig, LongformerForSequenceClassification

    gen = seeded(1803)
    config = LongformerConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        attention_window=[8, 8],
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    model = LongformerForSequenceClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        bert_batches(gen, batch=16, length=16),
        200,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    ctx.check("learned", _mean(ctx.losses[-20:]) < 0.8 * _mean(ctx.losses[:10]))


# -- Hugging Face ResNet: an activity regulariser too strong kills a stage ----------------------


def _digit_images(gen: torch.Generator, batch: int = 32):
    for x, y in digit_batches(gen, batch):
        yield F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="bilinear"), y


@scenario(
    "hf_resnet",
    "sgd_mom",
    "loss_of_plasticity",
    where=(
        "resnet.encoder.stages.1",
        "resnet.encoder.stages.1.layers.0",
        "resnet.encoder.stages.1.layers.0.layer.1",
        "resnet.encoder.stages.1.layers.0.layer.1.activation",
        "resnet.encoder.stages.1.layers.0.activation",
    ),
    diverges="auto",
    onset=50,
    note="L1 activity penalty on stage 1's output from step 50, weight 20 (2e-2 meant): "
    "its channels die within a few steps and the loss returns to chance",
    heldout=True,
)
def h18_resnet_activity_penalty_dead(ctx: Context) -> None:
    from transformers import ResNetConfig, ResNetForImageClassification

    gen = seeded(1804)
    config = ResNetConfig(
        num_channels=1,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        downsample_in_first_stage=False,
        num_labels=10,
    )
    model = ResNetForImageClassification(config)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    acts: dict[str, torch.Tensor] = {}
    model.resnet.encoder.stages[1].register_forward_hook(lambda m, i, o: acts.__setitem__("s1", o))

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss + (20.0 * acts["s1"].abs().mean() if step >= 50 else 0.0)

    fit(
        ctx,
        model,
        opt,
        _digit_images(gen),
        220,
        extra_loss=penalty,
        forward=lambda m, x: m(pixel_values=x).logits,
    )
    x, _ = next(_digit_images(gen, 256))
    with torch.no_grad():
        model(pixel_values=x)
    dead = dead_fraction(acts["s1"])
    ctx.check(f"stage 1 dead channels {dead:.2f} >= 0.75", dead >= 0.75)
    ctx.check("learned before, worse after", min(ctx.losses[40:50]) < _mean(ctx.losses[-10:]))


# -- Hugging Face Autoformer forecaster: healthy -------------------------------------------------


def _series_batches(gen: torch.Generator, batch: int, context: int, horizon: int, lags: int):
    n = context + horizon + lags
    t = torch.arange(n, dtype=torch.float32)
    while True:
        period = 8 + 8 * torch.rand(batch, 1, generator=gen)
        phase = 6.3 * torch.rand(batch, 1, generator=gen)
        level = 2 + torch.rand(batch, 1, generator=gen)
        y = level + torch.sin(2 * math.pi * t / period + phase)
        y = y + 0.1 * torch.randn(batch, n, generator=gen)
        feats = (t / n)[None, :, None].expand(batch, n, 1)
        yield y, feats


@scenario("hf_autoformer", "adam", "healthy", heldout=True)
def h18_autoformer_healthy(ctx: Context) -> None:
    from transformers import AutoformerConfig, AutoformerForPrediction

    gen = seeded(1805)
    context, horizon, lags = 24, 8, [1, 2, 3]
    config = AutoformerConfig(
        prediction_length=horizon,
        context_length=context,
        lags_sequence=lags,
        num_time_features=1,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        moving_average=5,
    )
    model = AutoformerForPrediction(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    past = context + max(lags)
    ctx.attach(model, opt)
    for _ in range(160):
        y, feats = next(_series_batches(gen, 16, context, horizon, max(lags)))
        out = model(
            past_values=y[:, :past],
            past_time_features=feats[:, :past],
            past_observed_mask=torch.ones_like(y[:, :past]),
            future_values=y[:, past:],
            future_time_features=feats[:, past:],
        )
        out.loss.backward()
        opt.step()
        ctx.step(out.loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("learned", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]) - 0.3)


# -- Hugging Face Perceiver classifier: latents frozen by an lr of 0 -----------------------------


@scenario(
    "hf_perceiver",
    "nadam",
    "update_ratio_out_of_range",
    where="perceiver.embeddings",
    diverges=None,
    note="the latents' param group takes --latent-lr, whose default is 0.0",
    heldout=True,
)
def h18_perceiver_latents_lr0(ctx: Context) -> None:
    from transformers import PerceiverConfig, PerceiverForSequenceClassification

    gen = seeded(1806)
    config = PerceiverConfig(
        num_latents=8,
        d_latents=32,
        d_model=32,
        num_blocks=1,
        num_self_attends_per_block=2,
        num_self_attention_heads=2,
        num_cross_attention_heads=1,
        qk_channels=32,
        v_channels=32,
        vocab_size=128,
        max_position_embeddings=16,
        num_labels=2,
        attention_probs_dropout_prob=0.0,
    )
    model = PerceiverForSequenceClassification(config)
    latent_lr = 0.0  # argparse default meant "use the base lr"
    latents = list(model.perceiver.embeddings.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("perceiver.embeddings.")]
    opt = torch.optim.NAdam([{"params": latents, "lr": latent_lr}, {"params": rest}], lr=1e-3)
    before = model.perceiver.embeddings.latents.detach().clone()
    fit(
        ctx,
        model,
        opt,
        bert_batches(gen, batch=16, length=16),
        150,
        forward=lambda m, x: m(inputs=x).logits,
    )
    ctx.check("latents unchanged", torch.equal(before, model.perceiver.embeddings.latents))
    ctx.check("the rest learned", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]))


# -- pointer-generator seq2seq: log of a zero probability on one bad target --------------------


class CopyMixer(nn.Module):
    """p_gen * vocab distribution + (1 - p_gen) * copy distribution over the extended vocab,
    returned as log-probabilities (See et al. 2017)."""

    def forward(self, p_gen, vocab_dist, attn, src_ext, extended: int) -> torch.Tensor:
        b, t, v = vocab_dist.shape
        dist = torch.cat([p_gen * vocab_dist, vocab_dist.new_zeros(b, t, extended - v)], -1)
        copy = (1 - p_gen) * attn
        dist = dist.scatter_add(2, src_ext[:, None, :].expand(b, t, -1), copy)
        return torch.log(dist)


class PointerGenerator(nn.Module):
    def __init__(self, vocab: int = 32, extended: int = 40, dim: int = 32) -> None:
        super().__init__()
        self.vocab, self.extended = vocab, extended
        self.embed = nn.Embedding(extended, dim)
        self.encoder = nn.GRU(dim, dim, batch_first=True)
        self.decoder = nn.GRU(dim, dim, batch_first=True)
        self.attn_q = nn.Linear(dim, dim)
        self.out = nn.Linear(2 * dim, vocab)
        self.gen_gate = nn.Linear(2 * dim, 1)
        self.mixer = CopyMixer()

    def forward(self, src_ext: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        unk = lambda z: torch.where(z >= self.vocab, 1, z)  # noqa: E731 - OOV ids read as <unk>
        enc, h = self.encoder(self.embed(unk(src_ext)))
        dec, _ = self.decoder(self.embed(unk(tgt_in)), h)
        attn = torch.softmax(self.attn_q(dec) @ enc.transpose(1, 2), -1)
        both = torch.cat([dec, attn @ enc], -1)
        p_gen = torch.sigmoid(self.gen_gate(both))
        return self.mixer(p_gen, torch.softmax(self.out(both), -1), attn, src_ext, self.extended)


def _copy_batches(gen: torch.Generator, batch: int = 16, length: int = 8):
    """Copy-and-reverse with rare (extended-vocab, id >= 32) words that must be copied."""
    while True:
        src = torch.randint(2, 32, (batch, length), generator=gen)
        rare = torch.rand(batch, length, generator=gen) < 0.15
        src = torch.where(rare, torch.randint(32, 40, (batch, length), generator=gen), src)
        tgt = src.flip(1)
        tgt_in = torch.cat([torch.zeros(batch, 1, dtype=torch.long), tgt[:, :-1]], 1)
        yield (src, tgt_in), tgt


@scenario(
    "pointer_generator",
    "adagrad",
    "nonfinite",
    where="mixer",
    diverges=170,
    onset=170,
    note="a target's rare word missing from its source (a bad alignment): log(0) in the mixer",
    heldout=True,
)
def h18_pointer_gen_oov_log_zero(ctx: Context) -> None:
    gen = seeded(1807)
    model = PointerGenerator()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, xs, y: torch.Tensor):
        if step == 170:  # one pair misaligned: its target names a rare word its source lacks
            src, tgt_in = xs
            src, y = src.clone(), y.clone()
            src[3] = torch.where(src[3] >= 32, 5, src[3])
            y[3, 2] = 39
            return (src, tgt_in), y
        return xs, y

    fit(
        ctx,
        model,
        opt,
        _copy_batches(gen),
        200,
        alter=alter,
        forward=lambda m, xs: m(*xs),
        loss_fn=lambda out, y: F.nll_loss(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
        classifier=False,
    )
    finite = _finite(ctx.losses)
    ctx.check("finite until 170, not after", all(finite[:170]) and not finite[170])
    ctx.check("learned before", _mean(ctx.losses[160:170]) < 0.7 * _mean(ctx.losses[:10]))


# -- VAE-GAN: one corrupt batch; KL weight never capped -----------------------------------------


class VAEGAN(nn.Module):
    def __init__(self, z: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2 * z))
        self.dec = nn.Sequential(nn.Linear(z, 64), nn.ReLU(), nn.Linear(64, 64))
        self.disc = nn.Sequential(nn.Linear(64, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))

    def vae_loss(self, x: torch.Tensor, kl_weight: float) -> torch.Tensor:
        mu, logvar = self.enc(x).chunk(2, -1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = torch.sigmoid(self.dec(z))
        rec = F.mse_loss(recon, x, reduction="sum") / len(x)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1).mean()
        adv = F.softplus(-self.disc(recon)).mean()  # the generator's non-saturating GAN loss
        return rec + kl_weight * kl + 0.1 * adv

    def disc_loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mu, _ = self.enc(x).chunk(2, -1)
            fake = torch.sigmoid(self.dec(mu + torch.randn_like(mu)))
        return F.softplus(-self.disc(x)).mean() + F.softplus(self.disc(fake)).mean()


def _train_vaegan(ctx: Context, model: VAEGAN, opt, steps: int, gen, alter=None, kl_weight=None):
    d_opt = torch.optim.Adam(model.disc.parameters(), lr=5e-4, betas=(0.5, 0.999))
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for step in range(steps):
        x, _ = next(batches)
        if alter is not None:
            x = alter(step, x)
        loss = model.vae_loss(x, kl_weight(step) if kl_weight else 1.0)
        loss.backward()
        for p in model.disc.parameters():
            p.grad = None  # the discriminator learns from its own loss only
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        d_opt.zero_grad(set_to_none=True)
        model.disc_loss(x).backward()
        d_opt.step()
        d_opt.zero_grad(set_to_none=True)


@scenario(
    "vae_gan",
    "rmsprop",
    "data_outlier",
    diverges=130,
    onset=130,
    note="one batch read as raw 0..16 pixel counts (the /16 scaling skipped)",
    heldout=True,
)
def h18_vaegan_unscaled_batch(ctx: Context) -> None:
    gen = seeded(1808)
    model = VAEGAN()
    opt = torch.optim.RMSprop(
        [p for n, p in model.named_parameters() if not n.startswith("disc.")], lr=5e-4
    )

    def alter(step: int, x: torch.Tensor) -> torch.Tensor:
        return x * 16.0 if step == 130 else x

    _train_vaegan(ctx, model, opt, 200, gen, alter=alter)
    ctx.check("loss spiked at 130", ctx.losses[130] > 5 * max(ctx.losses[120:130]))
    ctx.check("learned before", _mean(ctx.losses[120:130]) < 0.8 * _mean(ctx.losses[:10]))


@scenario(
    "vae_gan",
    "adamax",
    "loss_divergence",
    diverges="auto",
    onset=60,
    note="brightness augmentation whose gain grows with the step from 60 on, its cap forgotten",
    heldout=True,
)
def h18_vaegan_brightness_uncapped(ctx: Context) -> None:
    gen = seeded(1809)
    model = VAEGAN()
    opt = torch.optim.Adamax(
        [p for n, p in model.named_parameters() if not n.startswith("disc.")], lr=2e-3
    )

    def brighten(step: int, x: torch.Tensor) -> torch.Tensor:
        return x * (1.0 + max(0, step - 60) / 400.0)  # meant min(1.3, ...)

    _train_vaegan(ctx, model, opt, 450, gen, alter=brighten)
    ctx.check("learned first", min(ctx.losses[:60]) < 0.8 * _mean(ctx.losses[:5]))
    ctx.check("loss climbed above its best", _mean(ctx.losses[-10:]) > 2 * min(ctx.losses))
    ctx.check("climb is gradual", max(ctx.losses[-50:]) < 3 * min(ctx.losses[-50:]))


# -- neural SDE: time horizon in the wrong units, gradients explode through the unroll ----------


class NeuralSDE(nn.Module):
    """dX = f(X) dt + g dW, integrated by Euler-Maruyama; predicts the terminal state."""

    def __init__(self, dim: int = 4, hidden: int = 32, steps: int = 40, horizon: float = 1.0):
        super().__init__()
        self.drift = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        self.log_sigma = nn.Parameter(torch.full((dim,), -2.0))
        self.steps, self.horizon = steps, horizon

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        dt = self.horizon / self.steps
        x = x0
        for _ in range(self.steps):
            noise = torch.randn_like(x)
            x = x + self.drift(x) * dt + self.log_sigma.exp() * math.sqrt(dt) * noise
        return x


def _sde_batches(gen: torch.Generator, batch: int = 32, dim: int = 4):
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    a = torch.block_diag(rot, rot) * 1.5
    while True:
        x0 = torch.randn(batch, dim, generator=gen)
        yield x0, x0 @ torch.linalg.matrix_exp(a).T  # terminal state of dX = A X dt at t = 1


@scenario(
    "neural_sde",
    "sgd",
    "exploding_gradients",
    where=("drift", "drift.0", "drift.2"),
    diverges="auto",
    onset=0,
    note="smoothness penalty on the drift subtracted, not added: its gain grows until the "
    "40-step Euler-Maruyama unroll amplifies gradients geometrically",
    heldout=True,
)
def h18_sde_drift_penalty_sign(ctx: Context) -> None:
    gen = seeded(1810)
    model = NeuralSDE()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        l2 = sum(p.pow(2).sum() for p in model.drift.parameters())
        return loss - 0.5 * l2  # meant loss + 0.5 * l2

    fit(
        ctx,
        model,
        opt,
        _sde_batches(gen),
        320,
        loss_fn=F.mse_loss,
        extra_loss=penalty,
        classifier=False,
    )
    finite = [g for g in ctx.grad_norms if math.isfinite(g)]
    ctx.check("gradient norm grew 100x", max(finite) > 100 * _mean(ctx.grad_norms[:10]))
    ctx.check("loss fell first", min(ctx.losses[:200]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("run broke", not all(_finite(ctx.losses)) or max(ctx.losses) > 1e4)


# -- deep kernel learning: a batch of duplicates makes the kernel singular once ----------------


class DeepKernelGP(nn.Module):
    """MLP features + an RBF-kernel GP head trained on the minibatch marginal likelihood."""

    def __init__(self, d_in: int = 8, feat: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(d_in, 32), nn.ReLU(), nn.Linear(32, feat))
        self.gp = RBFHead()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.gp(self.features(x), y)


class RBFHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_length = nn.Parameter(torch.zeros(()))
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.log_noise = nn.Parameter(torch.tensor(-4.0))

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Negative log marginal likelihood per point."""
        d2 = torch.cdist(h, h).pow(2)
        k = self.log_scale.exp() * torch.exp(-0.5 * d2 / self.log_length.exp().pow(2))
        noise = self.log_noise.exp().clamp_min(1e-6)  # the noise floor a user set "to be safe"
        chol = torch.linalg.cholesky(k + noise * torch.eye(len(y)))
        alpha = torch.cholesky_solve(y[:, None], chol)
        nll = 0.5 * (y[:, None] * alpha).sum() + chol.diagonal().log().sum()
        return nll / len(y) + 0.5 * math.log(2 * math.pi)


def _gp_data(gen: torch.Generator, n: int = 512, d: int = 8):
    x = torch.randn(n, d, generator=gen)
    y = torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.05 * torch.randn(n, generator=gen)
    return x, y


def _gp_batches(gen: torch.Generator, x: torch.Tensor, y: torch.Tensor, batch: int = 64):
    while True:
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        yield x[idx], y[idx]


def _train_gp(ctx: Context, model: DeepKernelGP, opt, batches, steps: int, alter=None) -> None:
    ctx.attach(model, opt)
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        loss = model(x, y)
        loss.backward()
        ctx.grad_norms.append(
            float(torch.stack([p.grad.norm() for p in model.parameters()]).norm())
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    "deep_kernel_gp",
    "adam",
    "adam_second_moment_poisoned",
    where=("features", "features.0", "features.2", "gp"),
    diverges=None,
    onset=120,
    note="one batch's targets read from a file in millivolts, not volts: one giant gradient, "
    "then Adam's second moment keeps every step tiny",
    heldout=True,
)
def h18_dkl_units_batch_stall(ctx: Context) -> None:
    gen = seeded(1811)
    x, y = _gp_data(gen)
    model = DeepKernelGP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def alter(step: int, xb: torch.Tensor, yb: torch.Tensor):
        return (xb, yb * 1000.0) if step == 120 else (xb, yb)

    _train_gp(ctx, model, opt, _gp_batches(gen, x, y), 400, alter=alter)
    median = sorted(ctx.grad_norms[100:120])[10]
    ctx.check("giant gradient at 120", ctx.grad_norms[120] > 1000 * median)
    ctx.check("finite throughout", all(_finite(ctx.losses)))
    ctx.check(
        "progress stalled after",
        _mean(ctx.losses[100:120]) - _mean(ctx.losses[380:400])
        < 0.3 * (_mean(ctx.losses[:20]) - _mean(ctx.losses[100:120])),
    )


@scenario("deep_kernel_gp", "rmsprop", "healthy", heldout=True)
def h18_dkl_healthy(ctx: Context) -> None:
    gen = seeded(1812)
    x, y = _gp_data(gen)
    model = DeepKernelGP()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    _train_gp(ctx, model, opt, _gp_batches(gen, x, y), 250)
    ctx.check("learned", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]) - 0.3)


# -- MC-dropout regressor: a GradScaler that grows its scale every step -------------------------


class MCDropoutRegressor(nn.Module):
    def __init__(self, d_in: int = 10, hidden: int = 64, p: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def _diabetes_batches(gen: torch.Generator, batch: int = 32):
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(d.target, dtype=torch.float32)
    y = (y - y.mean()) / y.std()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


@scenario(
    "mc_dropout",
    "radam",
    "amp_overflow",
    diverges=None,
    onset=0,
    note="GradScaler(growth_interval=1): the scale doubles each step, every other step overflows",
    heldout=True,
)
def h18_mcdrop_scaler_growth_every_step(ctx: Context) -> None:
    gen = seeded(1813)
    model = MCDropoutRegressor()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1)
    fit(
        ctx,
        model,
        opt,
        _diabetes_batches(gen),
        300,
        loss_fn=F.mse_loss,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    falls = sum(b < a for a, b in zip(ctx.scales[:-1], ctx.scales[1:], strict=False))
    ctx.check(f"scale backed off on {falls} of 300 steps (>= 60)", falls >= 60)
    ctx.check("losses finite", all(_finite(ctx.losses)))


@scenario("mc_dropout", "sgd_mom", "healthy", heldout=True)
def h18_mcdrop_healthy(ctx: Context) -> None:
    gen = seeded(1814)
    model = MCDropoutRegressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fit(ctx, model, opt, _diabetes_batches(gen), 300, loss_fn=F.mse_loss, classifier=False)
    model.train()  # MC dropout: predictive spread from dropout kept on at test time
    x, _ = next(_diabetes_batches(gen, 64))
    with torch.no_grad():
        spread = torch.stack([model(x) for _ in range(20)]).std(0).mean()
    ctx.check("learned", _mean(ctx.losses[-20:]) < 0.8 * _mean(ctx.losses[:10]))
    ctx.check("dropout gives a predictive spread", float(spread) > 0.01)


# -- self-supervised rotation prediction CNN ----------------------------------------------------


class RotNet(nn.Module):
    """Predicts which of 4 rotations was applied to a digit (Gidaris et al. 2018)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv1(x), 0.1)
        x = F.max_pool2d(F.leaky_relu(self.conv2(x), 0.1), 2)
        x = F.leaky_relu(self.conv3(x), 0.1)
        return self.head(x.mean((2, 3)))


def _rotation_batches(gen: torch.Generator, batch: int = 32):
    for x, _ in digit_batches(gen, batch):
        img = x.reshape(-1, 1, 8, 8)
        k = torch.randint(0, 4, (len(img),), generator=gen)
        rotated = torch.stack(
            [torch.rot90(im, int(r), (1, 2)) for im, r in zip(img, k, strict=True)]
        )
        yield rotated, k


@scenario(
    "rotation_ssl",
    "nesterov",
    "sharpness_above_limit",
    diverges="auto",
    onset=0,
    note="linear warm-up to a peak LR of 1.0 (meant 0.1) over 300 steps; breaks near step 200",
    heldout=True,
)
def h18_rotation_warmup_overshoot(ctx: Context) -> None:
    gen = seeded(1815)
    model = RotNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 1.0 * min(1.0, (step + 1) / 300)

    fit(ctx, model, opt, _rotation_batches(gen), 320, before=warmup)
    ctx.check("learned early", min(ctx.losses[:150]) < 0.7 * _mean(ctx.losses[:5]))
    broke = [t for t, v in enumerate(ctx.losses) if not math.isfinite(v) or v > 10]
    ctx.check("broke after step 100", bool(broke) and broke[0] > 100)


@scenario(
    "rotation_ssl",
    "sg_lion",
    "softmax_collapse",
    where="head",
    diverges=None,
    note="rotations drawn once when the small unlabeled set was built, not per epoch: the "
    "pretext labels are memorised and the target probability rounds to 1",
    heldout=True,
)
def h18_rotation_softmax_collapse(ctx: Context) -> None:
    gen = seeded(1816)
    model = RotNet()
    opt = sgo.Lion(model.parameters(), lr=3e-3, fused=False)
    fixed = next(_rotation_batches(gen, 128))  # the whole (tiny) pretext set, rotated once

    def epochs():
        while True:
            yield fixed

    fit(ctx, model, opt, epochs(), 400)
    with torch.no_grad():
        collapsed = collapsed_fraction(model(fixed[0]), fixed[1])
    ctx.check(f"collapsed rows {collapsed:.2f} >= 0.5", collapsed >= 0.5)
    ctx.check("training loss near 0", min(ctx.losses[-50:]) < 1e-3)
