"""Held-out scenarios, set 63 (``h63_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face Cohere-ASR (Parakeet conformer encoder + transformer decoder) on generated
log-mel-like features, OmniASR-CTC on raw generated tone sequences (fp16 autocast with a
GradScaler, fault and control), the VibeVoice acoustic tokenizer as a waveform autoencoder, a
SpeechEncoderDecoder (Wav2Vec2 encoder + BERT decoder with cross-attention) on raw generated tones
and WavTokenizer's Vocos decoder (ConvNeXt backbone + iSTFT head) as a vocoder from frame features,
all from configs; a complex-valued diagonal linear recurrence (LRU-style, digits row by row; fault
and control), a quaternion (Hamilton-product) MLP, a Monarch-matrix MLP (block-diagonal factors and
a stride permutation; fault and control), a hashing-trick embedding-bag text classifier on generated
documents (fault and control), a top-k sparse mixture of experts written from scratch, a NeuralSort
learning-to-rank model on generated lists and a fixed-point (Q3.5, straight-through estimator)
regressor (diabetes).

Optimizers: AdamW, Adam, NAdam, RAdam, Adamax, Adagrad, Adadelta, RMSprop, ASGD, SGD (plain,
momentum, Nesterov) and steadygrad.optim's Lion, AdaBelief and AdEMAMix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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
    grad_norm,
    scenario,
    seeded,
)

# -- shared: a training loop for models whose batches are not (x, y) pairs -----------------------


def _loop(
    ctx: Context,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    batch: Callable[[int], Any],
    loss_of: Callable[[nn.Module, Any], torch.Tensor],
    *,
    before: Callable[[int], None] | None = None,
    after: Callable[[int], None] | None = None,
    amp: bool = False,
    scaler: Any = None,
) -> None:
    """Plain loop: ``ctx.attach`` first, ``ctx.step(loss)`` after ``opt.step()``."""
    probe = batch(-1)
    ctx.attach(model, opt, probe=(loss_of, probe), scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        b = batch(step)
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            loss = loss_of(model, b)
        loss = loss.float()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            ctx.grad_norms.append(grad_norm(model))
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            loss.backward()
            ctx.grad_norms.append(grad_norm(model))
            opt.step()
        ctx.step(loss)
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _tones(gen: torch.Generator, batch: int, n_tok: int, seg: int, vocab: int = 10):
    """Generated "speech": each token is a tone segment of its own pitch (random phase)."""
    toks = torch.randint(0, vocab, (batch, n_tok), generator=gen)
    freq = 0.012 + 0.018 * toks.float()  # cycles per sample
    phase = 2 * math.pi * torch.rand(batch, n_tok, 1, generator=gen)
    t = torch.arange(seg, dtype=torch.float32)
    wave = 0.5 * torch.sin(2 * math.pi * freq[..., None] * t + phase).reshape(batch, n_tok * seg)
    wave = wave + 0.03 * torch.randn(wave.shape, generator=gen)
    return wave, toks


def _mel_like(gen: torch.Generator, toks: torch.Tensor, frames: int, bins: int) -> torch.Tensor:
    """Log-mel-like features: each token lights a band of bins for ``frames`` frames."""
    b, n = toks.shape
    centre = 1.0 + (bins - 3) * toks.float() / 9.0
    grid = torch.arange(bins, dtype=torch.float32)
    bump = torch.exp(-0.5 * (grid - centre[..., None]) ** 2)  # (b, n, bins)
    feats = bump[:, :, None, :].expand(b, n, frames, bins).reshape(b, n * frames, bins)
    return 2.0 * feats + 0.1 * torch.randn(feats.shape, generator=gen) - 1.0


# -- Hugging Face Cohere-ASR: cross-attention logits grow ----------------------------------------


def _cohere_asr():
    from transformers import CohereAsrConfig, CohereAsrForConditionalGeneration

    encoder = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        subsampling_factor=4,
        subsampling_conv_channels=8,
        num_mel_bins=16,
        conv_kernel_size=3,
    )
    config = CohereAsrConfig(
        encoder_config=encoder,
        vocab_size=16,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=2,
        eos_token_id=3,
        bos_token_id=4,
        decoder_start_token_id=4,
    )
    model = CohereAsrForConditionalGeneration(config)
    # the subsampling front end at PyTorch's default init (std 0.02 on a 3x3 conv of one input
    # channel leaves the tiny model's encoder a signal of ~1e-5 that it never recovers from)
    for m in model.model.encoder.subsampling.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    return model


def _asr_batches(gen: torch.Generator, batch: int = 16, n_tok: int = 3, frames: int = 8):
    def make(step: int):
        toks = torch.randint(0, 10, (batch, n_tok), generator=gen)
        return _mel_like(gen, toks, frames, 16), toks + 5

    return make


def _asr_loss(model: nn.Module, b) -> torch.Tensor:
    return model(input_features=b[0], labels=b[1]).loss


def _cross_logits(model: nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """q.k * scaling of the decoder's cross-attention, as the model computes it."""
    attn = model.model.decoder.layers[0].encoder_attn
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o.detach())),
        attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o.detach())),
    ]
    with torch.no_grad():
        model(input_features=feats, labels=labels)
    for h in hooks:
        h.remove()
    q, k = seen["q"], seen["k"]
    d = attn.head_dim
    q = q.reshape(q.shape[0], q.shape[1], -1, d).transpose(1, 2)
    k = k.reshape(k.shape[0], k.shape[1], -1, d).transpose(1, 2)
    return (q @ k.transpose(-1, -2)) * attn.scaling


@scenario(
    "h63_hf_cohere_asr",
    "adamw",
    "attention_logit_growth",
    where="model.decoder.layers.0.encoder_attn",
    diverges=None,
    heldout=True,
    note="cross-attention scale written head_dim**0.5 (not **-0.5): 16x logits, high LR",
)
def h63_cohere_asr_cross_attn_scale_typo(ctx: Context) -> None:
    """A re-implementation of the decoder's cross-attention set ``scaling = head_dim ** 0.5``
    (the exponent's sign lost): the q.k logits are 16x too large from the start and a learning
    rate tuned for the reference grows the query/key weights further. The alignment logits run
    away, the cross-attention saturates to one encoder frame per row and learning crawls (the loss
    still near 2.0 after 200 steps)."""
    gen = seeded(6301)
    model = _cohere_asr()
    attn = model.model.decoder.layers[0].encoder_attn
    attn.scaling = attn.head_dim**0.5
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.0)
    batches = _asr_batches(gen)
    probe = batches(-1)
    _loop(ctx, model, opt, 200, batches, _asr_loss)
    end = _cross_logits(model, *probe)
    p = torch.softmax(end.float(), -1)
    rows = float((p.amax(-1) > 0.99).float().mean())
    ctx.check("cross-attention logits above 50 (from 0.03 at init)", float(end.abs().amax()) > 50)
    ctx.check("a third of the attention rows saturated (max prob > 0.99)", rows > 0.3)


# -- Hugging Face OmniASR-CTC under fp16 autocast ------------------------------------------------


def _omniasr_ctc():
    from transformers import OmniASRCTCConfig, OmniASRForCTC

    audio = dict(
        model_type="omniasr_audio",
        hidden_size=32,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 3, 3),
        conv_stride=(5, 2, 2),
        num_attention_heads=2,
        num_hidden_layers=2,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        intermediate_size=64,
        hidden_dropout=0.0,
        layerdrop=0.0,
        activation_dropout=0.0,
    )
    model = OmniASRForCTC(OmniASRCTCConfig(vocab_size=12, audio_config=audio, pad_token_id=1))
    for m in model.model.audio_tower.subsampling.modules():  # front end at PyTorch's default init
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            m.reset_parameters()
    return model


def _ctc_batches(gen: torch.Generator, pcm_from: int | None = None, batch: int = 8):
    """Tone sequences as float waveforms in [-1, 1]; from step ``pcm_from`` on, a shard of
    24-bit recordings read as integers whose loader forgot the / 2**23."""

    def make(step: int):
        wave, toks = _tones(gen, batch, 4, 300)
        if pcm_from is not None and step >= pcm_from:
            wave = torch.round(wave * 2.0**23)
        return wave[:, None, :], toks + 2  # ids 0 (blank) and 1 (pad) are reserved

    return make


def _ctc_loss(model: nn.Module, b) -> torch.Tensor:
    wave, labels = b
    mask = torch.ones(wave.shape[0], wave.shape[-1], dtype=torch.bool)
    return model(input_values=wave, padding_mask=mask, labels=labels).loss


def _first_overflow(model: nn.Module, inputs: Callable[[], Any]) -> list[str]:
    """Modules whose float16 output is non-finite while their inputs are finite."""
    bad: list[str] = []
    hooks = []

    def hook(name):
        def fn(m, i, o):
            ins = [t for t in i if torch.is_tensor(t) and t.is_floating_point()]
            outs = o if isinstance(o, tuple) else (o,)
            outs = [t for t in outs if torch.is_tensor(t) and t.is_floating_point()]
            if all(bool(torch.isfinite(t).all()) for t in ins) and any(
                t.dtype == torch.float16 and not bool(torch.isfinite(t).all()) for t in outs
            ):
                bad.append(name)

        return fn

    for name, m in model.named_modules():
        if name:
            hooks.append(m.register_forward_hook(hook(name)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        inputs()
    for h in hooks:
        h.remove()
    return bad


@scenario(
    "h63_hf_omniasr_ctc",
    "adam",
    "amp_overflow",
    where="model.audio_tower.subsampling.conv_layers.0.conv",
    diverges=120,
    heldout=True,
    onset=120,
    note="24-bit PCM shard read unscaled (no / 2**23) under fp16 autocast from step 120",
)
def h63_omniasr_ctc_int16_shard_fp16(ctx: Context) -> None:
    """CTC training of OmniASR under fp16 autocast with a GradScaler. From step 150 the loader
    reads a new shard of 24-bit recordings as integers and forgets to divide by 2**23: the
    waveform reaches ~4e6 and the first feature-encoder convolution, run in float16 by autocast,
    overflows 65504 (inf, then NaN through its LayerNorm); every later batch overflows there, the
    scaler skips every step and the loss stays non-finite."""
    gen = seeded(6302)
    model = _omniasr_ctc()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    batches = _ctc_batches(gen, pcm_from=120)
    _loop(ctx, model, opt, 160, batches, _ctc_loss, amp=True, scaler=scaler)
    finite = _finite(ctx.losses)
    ctx.check("loss finite before 120, not from 120", all(finite[:120]) and not any(finite[120:]))
    wave, labels = batches(999)
    over = _first_overflow(model, lambda: _ctc_loss(model, (wave, labels)))
    ctx.check(
        "the first conv's float16 output overflows first",
        over[:1] == ["model.audio_tower.subsampling.conv_layers.0.conv"],
    )
    with torch.no_grad():
        conv = model.model.audio_tower.subsampling.conv_layers[0].conv
        ctx.check(
            "in float32 that conv's output is finite but above 65504",
            bool(torch.isfinite(conv(wave)).all()) and float(conv(wave).abs().amax()) > 65504,
        )


@scenario(
    "h63_hf_omniasr_ctc", "adamax", "healthy", heldout=True, note="fp16 autocast + GradScaler"
)
def h63_omniasr_ctc_fp16_healthy(ctx: Context) -> None:
    """The same CTC run on float waveforms throughout, fp16 autocast with a GradScaler."""
    gen = seeded(6303)
    model = _omniasr_ctc()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    _loop(ctx, model, opt, 160, _ctc_batches(gen), _ctc_loss, amp=True, scaler=scaler)
    ctx.check("loss finite throughout", all(_finite(ctx.losses)))
    ctx.check("loss fell by a third", sum(ctx.losses[-20:]) < (2 / 3) * sum(ctx.losses[:20]))


# -- Hugging Face VibeVoice acoustic tokenizer: a warm-up without its cap ------------------------


def _vibevoice():
    from transformers import VibeVoiceAcousticTokenizerConfig, VibeVoiceAcousticTokenizerModel

    config = VibeVoiceAcousticTokenizerConfig(
        hidden_size=16,
        num_filters=8,
        downsampling_ratios=(2, 4),
        depths=(1, 1, 1),
        ffn_expansion=2,
        initializer_range=0.1,  # the default 0.01 and layer scale 1e-6 leave a tiny model inert
        layer_scale_init_value=1.0,
    )
    return VibeVoiceAcousticTokenizerModel(config)


def _wave_batches(gen: torch.Generator, batch: int = 8):
    def make(step: int):
        wave, _ = _tones(gen, batch, 4, 128)
        return wave[:, None, :]

    return make


def _recon_loss(model: nn.Module, wave: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(model(wave).audio.float(), wave)


@scenario(
    "h63_hf_vibevoice_acoustic_tokenizer",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="warm-up lr = base * step / 20 with the min(1, .) cap left out: LR grows without end",
)
def h63_vibevoice_uncapped_warmup(ctx: Context) -> None:
    """The waveform autoencoder's warm-up is written ``lr = base * step / warmup`` without the
    ``min(1, ...)``: the learning rate keeps climbing linearly after step 20. The reconstruction
    loss falls while the rate is small, then the rate passes the stability limit of the loss
    surface and the run blows up."""
    gen = seeded(6304)
    model = _vibevoice()
    base = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=base, momentum=0.9, nesterov=True)
    lrs: list[float] = []

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = base * (step + 1) / 20
        lrs.append(opt.param_groups[0]["lr"])

    _loop(ctx, model, opt, 180, _wave_batches(gen), _recon_loss, before=warmup)
    losses = [v if math.isfinite(v) else float("inf") for v in ctx.losses]
    low = min(range(len(losses)), key=losses.__getitem__)
    ctx.check("the loss first fell by half", losses[low] < 0.5 * losses[0])
    ctx.check("then blew up past 10x its low", max(losses[low:]) > 10 * losses[low])
    blow = next(i for i in range(low, len(losses)) if losses[i] > 10 * losses[low])
    ctx.check("blew up only once the LR had grown 5x past base", lrs[blow] > 5 * base)


# -- Hugging Face SpeechEncoderDecoder: the bridge left out of the optimizer ---------------------


def _speech_enc_dec():
    from transformers import (
        BertConfig,
        SpeechEncoderDecoderConfig,
        SpeechEncoderDecoderModel,
        Wav2Vec2Config,
    )

    encoder = Wav2Vec2Config(
        hidden_size=48,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 3, 3),
        conv_stride=(5, 2, 2),
        num_attention_heads=2,
        num_hidden_layers=2,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        intermediate_size=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
    )
    decoder = BertConfig(
        vocab_size=16,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        is_decoder=True,
        add_cross_attention=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config = SpeechEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = 1
    config.pad_token_id = 0
    return SpeechEncoderDecoderModel(config)


def _s2s_batches(gen: torch.Generator, batch: int = 8):
    def make(step: int):
        wave, toks = _tones(gen, batch, 3, 400)
        return wave, toks + 2

    return make


def _s2s_loss(model: nn.Module, b) -> torch.Tensor:
    return model(inputs=b[0], labels=b[1]).loss


@scenario(
    "h63_hf_speech_encoder_decoder",
    "rmsprop",
    "update_ratio_out_of_range",
    where="enc_to_dec_proj",
    diverges=None,
    heldout=True,
    note="optimizer built from encoder + decoder parameters: the bridge projection is left out",
)
def h63_speech_enc_dec_bridge_left_out(ctx: Context) -> None:
    """The optimizer is built as ``[*model.encoder.parameters(), *model.decoder.parameters()]``
    (two learning-rate groups meant for later): the ``enc_to_dec_proj`` Linear that the wrapper
    adds between a 48-wide Wav2Vec2 encoder and a 32-wide BERT decoder belongs to neither and is
    never updated. It gets gradients every step and stays at its random init, every encoder
    feature the decoder sees passing through a fixed random projection."""
    gen = seeded(6305)
    model = _speech_enc_dec()
    opt = torch.optim.RMSprop(
        [{"params": model.encoder.parameters()}, {"params": model.decoder.parameters()}], lr=1e-3
    )
    bridge = model.enc_to_dec_proj.weight.detach().clone()
    other = model.decoder.bert.encoder.layer[0].crossattention.self.key.weight.detach().clone()
    grads: list[float] = []

    def record(step: int) -> None:
        grads.append(float(model.enc_to_dec_proj.weight.grad.norm()))

    _loop(ctx, model, opt, 150, _s2s_batches(gen), _s2s_loss, after=record)
    ctx.check(
        "the bridge projection is unchanged", torch.equal(bridge, model.enc_to_dec_proj.weight)
    )
    ctx.check("though it got gradients every step", all(g > 0 for g in grads))
    moved = model.decoder.bert.encoder.layer[0].crossattention.self.key.weight
    ctx.check("the cross-attention next to it moved", not torch.equal(other, moved))
    ctx.check("loss fell", sum(ctx.losses[-15:]) < 0.9 * sum(ctx.losses[:15]))


# -- Hugging Face WavTokenizer's Vocos decoder as a vocoder: one clipped, loud batch -------------


class _VocosVocoder(nn.Module):
    """WavTokenizer's decoder half (ConvNeXt backbone with adaptive LayerNorm + iSTFT head),
    trained as a vocoder from frame features."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import WavTokenizerConfig, WavTokenizerModel

        config = WavTokenizerConfig(
            num_filters=4,
            upsampling_ratios=(2, 4),
            num_lstm_layers=1,
            hidden_size=16,
            codebook_size=32,
            codebook_dim=16,
            decoder_hidden_size=32,
            decoder_intermediate_size=64,
            decoder_num_layers=2,
            decoder_attention_num_groups=4,
        )
        codec = WavTokenizerModel(config)
        self.backbone = codec.backbone
        self.head = codec.head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(feats, torch.zeros(1, dtype=torch.long)))[:, 0]


def _vocoder_batches(gen: torch.Generator, loud_at: int | None = None, batch: int = 8):
    """Frame features (a one-hot of the tone's pitch and its level, 8 frames per tone, hop 8)
    and the waveform; at ``loud_at`` four clips come from a recording with 30x gain."""

    def make(step: int):
        wave, toks = _tones(gen, batch, 4, 64)
        feats = torch.zeros(batch, 16, 32)
        feats[:, :10] = F.one_hot(toks, 10).float().repeat_interleave(8, 1).transpose(1, 2)
        feats[:, 10] = 0.5
        if step == loud_at:
            wave = wave.clone()
            wave[:4] = (30.0 * wave[:4]).clamp(-8.0, 8.0)
        return feats, wave[:, : 32 * 8]

    return make


def _spectral_loss(model: nn.Module, b) -> torch.Tensor:
    feats, wave = b
    out = model(feats)[:, : wave.shape[-1]].float()
    win = torch.hann_window(64)
    spec = lambda w: torch.stft(w, 64, 16, window=win, return_complex=True).abs()  # noqa: E731
    return (
        F.l1_loss(torch.log1p(spec(out)), torch.log1p(spec(wave)))
        + F.mse_loss(spec(out), spec(wave)) / 100
    )


@scenario(
    "h63_hf_wavtokenizer_vocos",
    "radam",
    "data_outlier",
    diverges=110,
    heldout=True,
    onset=110,
    note="one batch with four clipped 30x-gain recordings at step 110",
)
def h63_wavtokenizer_vocos_loud_batch(ctx: Context) -> None:
    """A vocoder trained from frame features; at step 110 one batch carries four recordings
    made with 30x input gain (clipped at 8): their spectra are far above anything the level
    feature says, the loss spikes for that batch and the run goes back to where it was."""
    gen = seeded(6306)
    model = _VocosVocoder()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    _loop(ctx, model, opt, 170, _vocoder_batches(gen, loud_at=110), _spectral_loss)
    L = ctx.losses
    ctx.check("loss fell before the batch", sum(L[90:110]) < 0.8 * sum(L[:20]))
    ctx.check("loss spiked 5x at 110", L[110] > 5 * max(L[100:110]))
    ctx.check("and was back within 1.3x of before by 130", max(L[130:150]) < 1.3 * max(L[100:110]))


# -- a complex-valued diagonal linear recurrence (LRU-style) -------------------------------------


class ComplexDiagRecurrence(nn.Module):
    """h_t = lambda * h_{t-1} + B x_t with complex diagonal lambda = r * exp(i theta); real
    parameters, complex arithmetic. ``stable``: r = exp(-exp(nu)) (always < 1); otherwise the
    buggy r = exp(nu), which nothing keeps below 1."""

    def __init__(self, d_in: int, n: int, stable: bool, r0: float = 0.9) -> None:
        super().__init__()
        self.stable = stable
        nu0 = math.log(-math.log(r0)) if stable else math.log(r0)
        self.nu = nn.Parameter(torch.full((n,), nu0) + 0.01 * torch.randn(n))
        self.theta = nn.Parameter(torch.rand(n) * math.pi / 4)
        self.b_re = nn.Parameter(torch.randn(n, d_in) / math.sqrt(2 * d_in))
        self.b_im = nn.Parameter(torch.randn(n, d_in) / math.sqrt(2 * d_in))

    def modulus(self) -> torch.Tensor:
        return torch.exp(-torch.exp(self.nu)) if self.stable else torch.exp(self.nu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = torch.polar(self.modulus(), self.theta)
        bx = x.to(torch.complex64) @ torch.complex(self.b_re, self.b_im).T  # (batch, T, n)
        h = torch.zeros(x.shape[0], lam.shape[0], dtype=torch.complex64)
        for t in range(x.shape[1]):
            h = lam * h + bx[:, t]
        return torch.cat([h.real, h.imag], -1)


class ComplexRNNClassifier(nn.Module):
    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.rec = ComplexDiagRecurrence(8, 32, stable=True)
        self.head = nn.Linear(64, 10)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rec(x.reshape(-1, 8, 8) - 0.3)) / self.temperature


def _digit_loop(ctx, model, opt, steps, gen, *, batch=64, before=None, after=None, alter=None):
    data = digit_batches(gen, batch)

    def make(step: int):
        x, y = next(data)
        return alter(step, x, y) if alter is not None else (x, y)

    def loss_of(m: nn.Module, b) -> torch.Tensor:
        ctx.targets(b[1])
        return F.cross_entropy(m(b[0]), b[1])

    _loop(ctx, model, opt, steps, make, loss_of, before=before, after=after)


@scenario(
    "h63_complex_diag_rnn",
    "nadam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="readout divided by a distillation temperature 0.05 meant for the teacher",
)
def h63_complex_rnn_readout_temperature(ctx: Context) -> None:
    """Digits read row by row through a complex diagonal recurrence (LRU-style). The readout's
    logits are divided by ``T = 0.05``, the sharpening temperature of a distillation teacher
    copied into the student: 20x logits push the softmax past one-hot on the training batches,
    the target probability of a growing share of rows rounds to exactly 1.0 in float32 and those
    rows stop giving gradient (a small labelled set trained for many epochs)."""
    gen = seeded(6307)
    model = ComplexRNNClassifier(temperature=0.05)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-2)
    xs, ys = digits()
    keep = torch.randperm(len(ys), generator=gen)[:256]  # a small labelled set, many epochs
    xs, ys = xs[keep], ys[keep]

    def small_set(step: int, x: torch.Tensor, y: torch.Tensor):
        idx = torch.arange(64) + 64 * (step % 4)
        return xs[idx], ys[idx]

    _digit_loop(ctx, model, opt, 400, gen, alter=small_set)
    with torch.no_grad():
        logits = model(xs)
    ctx.check("training loss pushed below 0.002", max(ctx.losses[-8:]) < 2e-3)
    ctx.check(
        "over 15% of the training rows' target probability is exactly 1.0",
        collapsed_fraction(logits, ys) > 0.15,
    )


@scenario("h63_complex_diag_rnn", "sg_lion", "healthy", heldout=True)
def h63_complex_rnn_healthy(ctx: Context) -> None:
    """The same recurrence with the readout at temperature 1."""
    gen = seeded(6308)
    model = ComplexRNNClassifier()
    opt = sgo.Lion(model.parameters(), lr=1e-3, fused=False)
    _digit_loop(ctx, model, opt, 200, gen)
    ctx.check("loss fell by half", sum(ctx.losses[-20:]) < 0.5 * sum(ctx.losses[:20]))
    ctx.check("loss finite throughout", all(_finite(ctx.losses)))


# -- a quaternion (Hamilton-product) MLP: a learning-rate burst kills its ReLUs ------------------


class QuaternionLinear(nn.Module):
    """A linear map between quaternion vectors: four real weight blocks (r, i, j, k) shared
    through the Hamilton product, a quarter of a real Linear's parameters."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        a, b = n_in // 4, n_out // 4
        std = 1.0 / math.sqrt(n_in)
        self.r, self.i, self.j, self.k = (nn.Parameter(torch.randn(b, a) * std) for _ in range(4))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, i, j, k = self.r, self.i, self.j, self.k
        w = torch.cat(
            [
                torch.cat([r, -i, -j, -k], 1),
                torch.cat([i, r, -k, j], 1),
                torch.cat([j, k, r, -i], 1),
                torch.cat([k, -j, i, r], 1),
            ],
            0,
        )
        return F.linear(x, w, self.bias)


class QuaternionMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q1 = QuaternionLinear(64, 96)
        self.q2 = QuaternionLinear(96, 96)
        self.head = nn.Linear(96, 10)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.q1(x))
        return h1, F.relu(self.q2(h1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[1])


@scenario(
    "h63_quaternion_mlp",
    "sgd",
    "loss_of_plasticity",
    where=("q2", "q1"),
    diverges=None,
    heldout=True,
    onset=120,
    note="warm restart at 120 sets lr = base * 20 for three steps (restart factor typo)",
)
def h63_quaternion_restart_lr_burst(ctx: Context) -> None:
    """A warm-restart schedule multiplies instead of resetting: for three steps from 120 the
    rate is 20x the base. The burst drives the quaternion layers' pre-activations negative
    for every input on over half of q2's units and over 40% of q1's: those ReLUs die, get no
    gradient back, and the net learns on through what is left, its loss well above where it was."""
    gen = seeded(6309)
    model = QuaternionMLP()
    base = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=base)
    probe, _ = next(digit_batches(seeded(63090), 512))
    dead_before: list[float] = []

    def schedule(step: int) -> None:
        if step == 120:
            with torch.no_grad():
                dead_before.append(dead_fraction(model.features(probe)[1]))
        opt.param_groups[0]["lr"] = base * (20.0 if 120 <= step < 123 else 1.0)

    _digit_loop(ctx, model, opt, 260, gen, before=schedule)
    with torch.no_grad():
        dead_after = dead_fraction(model.features(probe)[1])
        dead_q1 = dead_fraction(model.features(probe)[0])
    ctx.check("q2's ReLUs mostly alive before the burst", dead_before[0] < 0.2)
    ctx.check("over half of q2's ReLUs dead after it", dead_after > 0.5)
    ctx.check("and over 40% of q1's", dead_q1 > 0.4)
    ctx.check(
        "loss stays 2x above its pre-burst level",
        sum(ctx.losses[-20:]) > 2 * sum(ctx.losses[100:120]),
    )
    ctx.check("loss finite throughout", all(_finite(ctx.losses)))


# -- a Monarch-matrix MLP: one unscaled loss poisons Adam's second moment ------------------------


class Monarch(nn.Module):
    """A 64x64 Monarch matrix: block-diagonal R (8 blocks of 8x8), a stride permutation,
    block-diagonal L, the permutation back."""

    def __init__(self, n: int = 64, b: int = 8) -> None:
        super().__init__()
        self.b = b
        self.left = nn.Parameter(torch.randn(n // b, b, b) / math.sqrt(b))
        self.right = nn.Parameter(torch.randn(n // b, b, b) / math.sqrt(b))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.reshape(x.shape[0], -1, self.b)
        z = torch.einsum("nkb,kcb->nkc", z, self.right).transpose(1, 2)
        z = torch.einsum("nkb,kcb->nkc", z, self.left).transpose(1, 2)
        return z.reshape(x.shape[0], -1) + self.bias


class MonarchMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.m1 = Monarch()
        self.m2 = Monarch()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.m2(F.gelu(self.m1(x)))))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@scenario(
    "h63_monarch_mlp",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=100,
    note="one step's loss backpropagated with a 2**16 loss scale and never unscaled",
)
def h63_monarch_unscaled_loss_step(ctx: Context) -> None:
    """A hand-rolled loss scaling (left from an fp16 experiment) scales the loss by 2**16 on
    step 100 only, where a config reload re-enabled it, and the unscale is skipped: every
    gradient of that step is 65536x. Adam's update for the step stays bounded (its first moment
    carries that one direction for a few dozen steps and the loss rises), but its second moment
    takes 0.001 * 65536**2 of the squared gradient and, at beta2 = 0.999, keeps it for thousands
    of steps: every later update is damped and the run cannot get back."""
    gen = seeded(6310)
    model = MonarchMLP()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    moves: list[float] = []
    last = [_flat(model)]
    second: list[float] = []

    def moved(step: int) -> None:
        now = _flat(model)
        moves.append(float((now - last[0]).norm()))
        last[0] = now

    data = digit_batches(gen, 64)

    def loss_of(m: nn.Module, b) -> torch.Tensor:
        return F.cross_entropy(m(b[0]), b[1])

    def make(step: int):
        return next(data)

    ctx.attach(model, opt, probe=(loss_of, make(-1)))
    for step in range(260):
        x, y = make(step)
        ctx.targets(y)
        loss = loss_of(model, (x, y))
        (loss * (2.0**16 if step == 100 else 1.0)).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        moved(step)
        second.append(max(float(opt.state[p]["exp_avg_sq"].max()) for p in model.parameters()))
        opt.zero_grad(set_to_none=True)
    before = sum(moves[60:100]) / 40
    after = sum(moves[130:260]) / 130
    ctx.check(
        "the gradient was 1000x the usual on step 100",
        ctx.grad_norms[100] > 1000 * max(ctx.grad_norms[80:100]),
    )
    ctx.check("Adam's second moment grew 1e6x on that step", second[100] > 1e6 * second[99])
    ctx.check("updates from step 130 on 5x smaller than before", after < 0.2 * before)
    ctx.check(
        "loss never gets back to its level before step 100",
        min(ctx.losses[120:]) > min(ctx.losses[80:100]),
    )


@scenario("h63_monarch_mlp", "adadelta", "healthy", heldout=True)
def h63_monarch_healthy(ctx: Context) -> None:
    """The Monarch MLP trained normally."""
    gen = seeded(6311)
    model = MonarchMLP()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    _digit_loop(ctx, model, opt, 260, gen)
    ctx.check("loss fell by two thirds", sum(ctx.losses[-20:]) < sum(ctx.losses[:20]) / 3)
    ctx.check("loss finite throughout", all(_finite(ctx.losses)))


# -- a hashing-trick embedding-bag text classifier -----------------------------------------------


class HashedBagClassifier(nn.Module):
    """Unigrams and bigrams hashed into 2048 buckets, an EmbeddingBag (mean), a linear head."""

    def __init__(self, buckets: int = 2048, dim: int = 32, classes: int = 5) -> None:
        super().__init__()
        self.buckets = buckets
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.head = nn.Linear(dim, classes)

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        bigrams = words[:, :-1] * 1000003 + words[:, 1:] * 7919 + 17
        ids = torch.cat([words * 2654435761, bigrams], 1) % self.buckets
        return self.head(self.bag(ids))


def _doc_batches(gen: torch.Generator, batch: int = 32, length: int = 24):
    """Generated documents: 5 topics, each with 40 keywords mixed into uniform filler words."""
    keywords = torch.randperm(3000, generator=gen)[:200].reshape(5, 40)
    while True:
        y = torch.randint(0, 5, (batch,), generator=gen)
        filler = torch.randint(0, 3000, (batch, length), generator=gen)
        pick = keywords[y][
            torch.arange(batch)[:, None], torch.randint(0, 40, (batch, length), generator=gen)
        ]
        words = torch.where(torch.rand(batch, length, generator=gen) < 0.25, pick, filler)
        yield words, y


def _doc_loop(ctx, model, opt, steps, gen, extra=None, after=None):
    data = _doc_batches(gen)

    def loss_of(m: nn.Module, b) -> torch.Tensor:
        ctx.targets(b[1])
        return F.cross_entropy(m(b[0]), b[1])

    def total(m: nn.Module, b) -> torch.Tensor:
        loss = loss_of(m, b)
        return loss if extra is None else loss + extra() - extra().detach()

    _loop(ctx, model, opt, steps, lambda s: next(data), total, after=after)


@scenario(
    "h63_hashing_trick_text",
    "sgd_mom",
    "output_logit_divergence",
    where="head",
    diverges="auto",
    heldout=True,
    note="hand-written L2 on the head added with the wrong sign: the head grows without bound",
)
def h63_hashing_head_negative_decay(ctx: Context) -> None:
    """A hand-written L2 penalty on the classifier head is added as ``- wd * ||W||^2`` (the sign
    of a "log-prior" term kept). The penalty rewards a larger head: its weights, and with them
    the logits, grow geometrically step after step; log Z runs away, the misclassified documents
    cost ever more and the loss climbs without end."""
    gen = seeded(6312)
    model = HashedBagClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    logits: list[float] = []
    probe, _ = next(_doc_batches(seeded(63120), 256))

    def watch(step: int) -> None:
        with torch.no_grad():
            logits.append(float(model(probe).abs().amax()))

    _doc_loop(
        ctx, model, opt, 250, gen, extra=lambda: -1e-2 * model.head.weight.pow(2).sum(), after=watch
    )
    low = min(
        range(len(ctx.losses)),
        key=lambda i: ctx.losses[i] if math.isfinite(ctx.losses[i]) else 1e30,
    )
    ctx.check("the logits grew 100x from step 50", max(logits[-20:]) > 100 * logits[50])
    ctx.check("the loss climbed 5x past its low", max(ctx.losses[low:]) > 5 * ctx.losses[low])


@scenario("h63_hashing_trick_text", "sg_ademamix", "healthy", heldout=True)
def h63_hashing_healthy(ctx: Context) -> None:
    """The same classifier with the L2 penalty on the head of the right sign."""
    gen = seeded(6313)
    model = HashedBagClassifier()
    opt = sgo.AdEMAMix(model.parameters(), lr=1e-2)
    _doc_loop(ctx, model, opt, 250, gen, extra=lambda: 1e-4 * model.head.weight.pow(2).sum())
    ctx.check("loss fell by half", sum(ctx.losses[-20:]) < 0.5 * sum(ctx.losses[:20]))
    ctx.check("loss finite throughout", all(_finite(ctx.losses)))


# -- a top-k sparse mixture of experts written from scratch --------------------------------------


class TopKMoE(nn.Module):
    """Token-choice top-2 routing over 4 two-layer experts, gates renormalised over the top 2."""

    def __init__(self, dim: int = 32, experts: int = 4, k: int = 2) -> None:
        super().__init__()
        self.k = k
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim)) for _ in range(experts)
        )
        self.usage = torch.zeros(experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, idx = self.router(x).topk(self.k, -1)
        gates = torch.softmax(top, -1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            if len(rows):
                out = out.index_add(0, rows, gates[rows, slot, None] * expert(x[rows]))
            self.usage[e] += len(rows)
        return x + out


class MoEClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(64, 32)
        self.moe = TopKMoE()
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.moe(F.relu(self.embed(x))))


@scenario(
    "h63_topk_moe_scratch",
    "sg_adabelief",
    "loss_spike",
    where="moe.experts.0",
    diverges=150,
    heldout=True,
    onset=150,
    note="dead-expert reset at 150 re-initialises the MOST used expert (argmax for argmin)",
)
def h63_topk_moe_reset_busiest_expert(ctx: Context) -> None:
    """A dead-expert reset at step 150 is meant to re-initialise the least-used expert; it
    takes ``usage.argmax()``: the busiest expert is re-drawn with ``normal_(std=0.5)`` while the
    router still sends it most tokens. The loss jumps at 150 and comes back down as the fresh
    expert relearns; nothing in the gradients or the data caused it."""
    gen = seeded(6314)
    model = MoEClassifier()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    reset: list[int] = []

    def dead_expert_reset(step: int) -> None:
        if step == 150:
            e = int(model.moe.usage.argmax())  # the bug: argmin meant
            reset.append(e)
            with torch.no_grad():
                for p in model.moe.experts[e].parameters():
                    p.normal_(0.0, 0.5)

    _digit_loop(ctx, model, opt, 260, gen, before=dead_expert_reset)
    L = ctx.losses
    ctx.check("the busiest expert was moe.experts.0", reset == [0])
    ctx.check("loss jumped 3x at 150", L[150] > 3 * max(L[140:150]))
    ctx.check("and came back within 1.5x of before by 220", max(L[220:240]) < 1.5 * max(L[130:150]))
    ctx.check("loss finite throughout", all(_finite(L)))


# -- NeuralSort learning to rank -----------------------------------------------------------------


class NeuralSort(nn.Module):
    """Grover et al.'s relaxed sort: row i of the soft permutation matrix is
    softmax(((n + 1 - 2i) s - A_s 1) / tau). Returns its log, taken naively."""

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        n = s.shape[-1]
        a = (s[:, :, None] - s[:, None, :]).abs().sum(-1)  # (batch, n)
        scale = (n + 1 - 2 * (torch.arange(n) + 1)).to(s.dtype)
        p_max = s[:, None, :] * scale[None, :, None] - a[:, None, :]
        return torch.log(torch.softmax(p_max / self.tau, -1))  # the bug: not log_softmax


class Ranker(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scorer = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 1))
        self.sorter = NeuralSort(tau=8.0)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.sorter(self.scorer(items).squeeze(-1))


@scenario(
    "h63_neuralsort_ranker",
    "adagrad",
    "nonfinite",
    where="sorter",
    diverges=80,
    heldout=True,
    onset=80,
    note="log(softmax) in NeuralSort underflows to log(0) on a list with a glitched feature",
)
def h63_neuralsort_log_of_zero(ctx: Context) -> None:
    """NeuralSort's soft permutation is taken to log-space as ``log(softmax(.))``. At step 80 one
    list carries an item whose sensor reading is 1000 (mm logged as m) and whose true relevance
    is the lowest: its score dwarfs the rest, the softmax of the first row underflows to exactly
    0 at the true top item, the sorter returns -inf, the permutation loss is inf and the backward
    pass fills every weight with NaN."""
    gen = seeded(6315)
    model = Ranker()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    w_true = torch.tensor([1.0, -0.5, 0.8, 0.0, 0.3])
    seen: dict[int, bool] = {}

    def make(step: int):
        items = torch.randn(32, 6, 5, generator=gen)
        rel = items @ w_true
        if step == 80:
            items[7, 2, 0] = 1000.0
            rel[7, 2] = rel.min() - 1.0
        return items, rel.argsort(-1, descending=True)

    def loss_of(m: nn.Module, b) -> torch.Tensor:
        log_p = m(b[0])
        return -log_p.gather(2, b[1][..., None]).mean()

    def hook(mod, inputs, out) -> None:
        seen[len(ctx.losses)] = bool(torch.isfinite(inputs[0]).all()) and not bool(
            torch.isfinite(out).all()
        )

    model.sorter.register_forward_hook(hook)
    _loop(ctx, model, opt, 110, make, loss_of)
    finite = _finite(ctx.losses)
    ctx.check("loss finite before 80, not from 80", all(finite[:80]) and not any(finite[80:]))
    ctx.check("the sorter turned finite scores into -inf at 80", seen.get(80, False))
    ctx.check("the loss fell before", sum(ctx.losses[100:80]) < 0.8 * sum(ctx.losses[:20]))


# -- a fixed-point (Q-format) regressor with a straight-through estimator ------------------------


class FixedPointLinear(nn.Linear):
    """Weights rounded to Q3.5 fixed point (step 1/32, range [-4, 4)); gradients pass straight
    through the rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.round(self.weight * 32) / 32, -4.0, 4.0 - 1 / 32)
        return F.linear(x, self.weight + (q - self.weight).detach(), self.bias)


class FixedPointRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = FixedPointLinear(10, 32)
        self.fc2 = FixedPointLinear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x))).squeeze(-1)


@scenario(
    "h63_fixedpoint_ste_regressor",
    "asgd",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="target-noise augmentation schedule sigma = 0.05 * 1.02**step (meant 0.98**step)",
)
def h63_fixedpoint_target_noise_schedule(ctx: Context) -> None:
    """Diabetes regression through fixed-point layers with a target-noise augmentation whose
    schedule is written ``0.05 * 1.02 ** step`` where ``0.98 ** step`` was meant: the noise on
    the standardised targets grows without bound, the model cannot fit it and the loss climbs
    slowly and steadily, with no layer, gradient or optimizer fault behind the climb."""
    from sklearn.datasets import load_diabetes

    gen = seeded(6316)
    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    model = FixedPointRegressor()
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)

    def make(step: int):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        sigma = 0.05 * 1.02 ** max(step, 0)
        return x[idx], y[idx] + sigma * torch.randn(64, generator=gen)

    def loss_of(m: nn.Module, b) -> torch.Tensor:
        return F.mse_loss(m(b[0]), b[1])

    _loop(ctx, model, opt, 300, make, loss_of)
    L = ctx.losses
    low = min(range(len(L)), key=L.__getitem__)
    ctx.check("the loss first fell", L[low] < 0.8 * sum(L[:10]) / 10)
    ctx.check("then climbed 20x past its low", sum(L[-10:]) / 10 > 20 * L[low])
    ctx.check("loss finite throughout", all(_finite(L)))
    with torch.no_grad():
        clean = F.mse_loss(model(x), y)
    ctx.check("the model still fits the clean targets (MSE < 1)", float(clean) < 1.0)
