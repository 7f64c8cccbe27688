"""Held-out scenarios, set 72 (``h72_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face speech and audio encoders built from configs, each behind a hand-written
mean-pool head and fed generated tones (Voxtral-Realtime encoder on log-power frames,
FunASR-Nano SAN-M encoder, Gemma-4 audio conformer, Granite-Speech-5 conformer encoder on
stacked frames under fp16 autocast with a GradScaler, Moonshine-Streaming encoder on raw
waveforms: a fault, and a control under fp16 autocast with a GradScaler), and, written by hand
in plain PyTorch: a Perceiver with latent cross-attention (digits; a fault and a control), a
DeltaNet-style delta-rule byte language model (a fault and a control), a 3-D CNN on generated
voxel shapes (a fault and a control), a Set Transformer with induced set attention (ISAB) on
generated point sets, a DeepSDF auto-decoder on generated spheres, a point-cloud autoencoder
with a Chamfer loss, and a Mamba-style selective state-space scan forecasting generated series.

Optimizers: Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop, Adadelta, ASGD, momentum and
Nesterov SGD, and steadygrad.optim's Lion, StableSPAM, AdEMAMix and Grams.
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
    fit,
    scenario,
    seeded,
    text_batches,
)

# -- generated audio: tones of six pitches -------------------------------------------------------

_HOP = 32
_NFFT = 64


def _tones(
    gen: torch.Generator, batch: int, frames: int = 64, classes: int = 6, noise: float = 0.1
):
    """Noisy two-harmonic tones, one pitch per class; ``frames`` hops of 32 samples."""
    length = (frames - 1) * _HOP + _NFFT
    y = torch.randint(0, classes, (batch,), generator=gen)
    t = torch.arange(length, dtype=torch.float32)
    f = 0.04 * 1.4 ** y.float()[:, None] * (1 + 0.02 * torch.randn(batch, 1, generator=gen))
    phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
    amp = 0.3 + 0.5 * torch.rand(batch, 1, generator=gen)
    wave = amp * torch.sin(2 * math.pi * f * t + phase)
    wave = wave + 0.5 * amp * torch.sin(4 * math.pi * f * t + 2 * phase)
    return wave + noise * torch.randn(batch, length, generator=gen), y


def _power(wave: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """(batch, bins, frames) power spectrogram, frequency bins pooled in pairs."""
    spec = torch.stft(
        wave, _NFFT, _HOP, window=torch.hann_window(_NFFT), center=False, return_complex=True
    )
    p = spec.abs().pow(2)[:, 1 : 1 + 2 * bins]
    return p.reshape(p.shape[0], bins, 2, -1).sum(2)


def _logpower(wave: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """Log power, roughly standardised: (batch, bins, frames)."""
    return (torch.log(_power(wave, bins) + 1e-4) + 2.0) / 4.0


def _spectra(
    gen: torch.Generator, batch: int = 32, frames: int = 64, layout: str = "bft", noise: float = 0.1
):
    """Endless (features, pitch class) batches of log-power frames ("bft" or "btf")."""
    while True:
        wave, y = _tones(gen, batch, frames, noise=noise)
        x = _logpower(wave)
        yield (x if layout == "bft" else x.transpose(1, 2).contiguous()), y


class _Pooled(nn.Module):
    """A Hugging Face audio encoder, a mean pool over time and a linear head."""

    def __init__(self, encoder: nn.Module, dim: int, classes: int, call) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, classes)
        self._call = call

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(self.encoder, x).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _quiet_hf() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()


# -- Voxtral-Realtime encoder: a z-loss with its sign flipped ---------------------------------------


def _voxtral(seed: int) -> _Pooled:
    from transformers import VoxtralRealtimeEncoder, VoxtralRealtimeEncoderConfig

    _quiet_hf()
    torch.manual_seed(seed)
    config = VoxtralRealtimeEncoderConfig(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=16,
        num_mel_bins=16,
        sliding_window=32,
        max_position_embeddings=128,
    )
    enc = VoxtralRealtimeEncoder(config)
    return _Pooled(enc, 32, 6, lambda e, x: e(input_features=x).last_hidden_state)


@scenario(
    "h72_hf_voxtral_realtime_encoder",
    "adamw",
    "output_logit_divergence",
    where="head",
    diverges=None,
    heldout=True,
    note="z-loss added with the wrong sign: log Z of the head's logits is rewarded, not penalised",
)
def h72_voxtral_zloss_sign_adamw(ctx: Context) -> None:
    """The head's z-loss (PaLM's 1e-3 * log Z^2, meant to keep the softmax normaliser near 0)
    was moved into a helper that returns a penalty to subtract, and the call site subtracts it
    again: the run maximises log Z^2. Cross-entropy (label-smoothed, as ASR recipes do) is
    blind to a shift shared by all logits, so the classifier still learns, but the head's bias and weights push every logit up
    together and log Z runs away without bound (no cap, no normalisation after the head)."""
    gen = seeded(7201)
    model = _voxtral(7201)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    logz: list[float] = []

    batches = _spectra(gen, 32, noise=0.4)

    last: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        last["logits"] = m(x)
        return last["logits"]

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        z = torch.logsumexp(last["logits"].float(), -1)
        logz.append(float(z.detach().mean()))
        return loss - 1e-2 * (z**2).mean()  # the helper already negated it

    def smoothed(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y, label_smoothing=0.1)

    fit(ctx, model, opt, batches, 300, loss_fn=smoothed, forward=forward, extra_loss=extra)
    ctx.check("log Z grew past 30 from below 3", abs(logz[0]) < 3 and logz[-1] > 30)
    ctx.check("log Z rose all through the run", logz[-1] > logz[200] > logz[100])
    ctx.check("cross-entropy stayed finite", all(math.isfinite(v) for v in ctx.losses))
    x, y = next(batches)
    with torch.no_grad():
        out = model(x)
    ctx.check("logits moved together, no softmax collapse", collapsed_fraction(out, y) == 0.0)


# -- FunASR-Nano encoder: a temperature divided the wrong way ---------------------------------------


class _TemperedHead(nn.Module):
    """A linear head whose logits are divided by a temperature."""

    def __init__(self, dim: int, classes: int, temperature: float) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, classes)
        self.temperature = temperature

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h) / self.temperature


def _funasr(seed: int) -> _Pooled:
    from transformers import FunAsrNanoEncoder, FunAsrNanoEncoderConfig

    _quiet_hf()
    torch.manual_seed(seed)
    config = FunAsrNanoEncoderConfig(
        num_mel_bins=16,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_hidden_layers=2,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        num_stacked_frames=1,
        num_timestamp_prediction_layers=1,
        fsmn_kernel_size=5,
        max_position_embeddings=128,
    )
    enc = FunAsrNanoEncoder(config)

    def call(e: nn.Module, x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(x.shape[:2], dtype=torch.long)
        return e(input_features=x, input_features_mask=mask).last_hidden_state

    return _Pooled(enc, 32, 6, call)


@scenario(
    "h72_hf_fun_asr_nano_encoder",
    "rmsprop",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="distillation temperature 0.02 left in the classifier head: logits x50, rows one-hot",
)
def h72_funasr_temperature_rmsprop(ctx: Context) -> None:
    """The pitch classifier reuses the head class of a distillation run whose student logits
    were divided by T = 0.02 (meant to sharpen a teacher's targets); nobody reset it to 1. The
    logits are 50x what the weights say, the cross-entropy is driven past zero training loss
    within a few dozen steps and the float32 softmax of most training rows is exactly one-hot
    on the target: those rows stop giving any gradient."""
    gen = seeded(7202)
    model = _funasr(7202)
    model.head = _TemperedHead(32, 6, temperature=0.02)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _spectra(gen, 32, layout="btf"), 150)
    x, y = next(_spectra(gen, 256, layout="btf"))
    with torch.no_grad():
        logits = model(x)
    ctx.check("over half the rows collapse to one-hot", collapsed_fraction(logits, y) > 0.5)
    ctx.check("training loss near zero", sum(ctx.losses[-20:]) / 20 < 0.05)


# -- Gemma-4 audio conformer: the subsampling front end left out of the optimizer -------------------


def _gemma4(seed: int) -> _Pooled:
    from transformers import Gemma4AudioConfig, Gemma4AudioModel

    _quiet_hf()
    torch.manual_seed(seed)
    config = Gemma4AudioConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        subsampling_conv_channels=(16, 8),
        output_proj_dims=32,
    )
    enc = Gemma4AudioModel(config)
    return _Pooled(enc, 32, 6, lambda e, x: e(input_features=x).last_hidden_state)


@scenario(
    "h72_hf_gemma4_audio",
    "adamax",
    "update_ratio_out_of_range",
    where=(
        "encoder.subsample_conv_projection",
        "encoder.subsample_conv_projection.layer0.conv",
        "encoder.subsample_conv_projection.layer1.conv",
        "encoder.subsample_conv_projection.input_proj_linear",
    ),
    diverges=None,
    heldout=True,
    note="optimizer built from the conformer blocks and heads only: the front end never moves",
)
def h72_gemma4_frontend_left_out_adamax(ctx: Context) -> None:
    """A fine-tuning script builds its optimizer from ``encoder.layers``, ``encoder.output_proj``
    and the head (the front end was meant to be frozen for the first epoch and added back by a
    callback that was never registered). The subsampling convolutions and their input
    projection get gradients every step, but their weights stay at initialisation: an update
    ratio of exactly zero for the whole run, while the rest trains normally."""
    gen = seeded(7203)
    model = _gemma4(7203)
    trained = [
        *model.encoder.layers.parameters(),
        *model.encoder.output_proj.parameters(),
        *model.head.parameters(),
    ]
    opt = torch.optim.Adamax(trained, lr=2e-3)
    front = model.encoder.subsample_conv_projection
    before = [p.detach().clone() for p in front.parameters()]
    grads: list[float] = []

    def watch(step: int) -> None:
        if step > 0:
            g = [p.grad for p in front.parameters() if p.grad is not None]
            grads.append(float(sum(x.norm() for x in g)) if g else 0.0)

    fit(ctx, model, opt, _spectra(gen, 32, layout="btf", noise=0.4), 160, before=watch)
    ctx.check(
        "front end unchanged",
        all(torch.equal(b, p) for b, p in zip(before, front.parameters(), strict=True)),
    )
    ctx.check("front end had gradients", len(grads) > 0 and min(grads) > 0)
    ctx.check("the rest trained: loss fell", sum(ctx.losses[-20:]) < 0.7 * sum(ctx.losses[:20]))


# -- Granite-Speech-5 conformer under fp16 autocast: a shard read as raw int16 PCM ----------------


def _granite5(seed: int) -> _Pooled:
    from transformers import GraniteSpeech5Encoder, GraniteSpeech5EncoderConfig

    _quiet_hf()
    torch.manual_seed(seed)
    config = GraniteSpeech5EncoderConfig(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_mel_bins=16,
        context_size=16,
        max_position_embeddings=64,
    )
    enc = GraniteSpeech5Encoder(config)
    return _Pooled(enc, 32, 6, lambda e, x: e(input_features=x).last_hidden_state)


def _granite_frames(wave: torch.Tensor) -> torch.Tensor:
    """(batch, frames / 4, 64): four stacked frames of 15 log-power bins and a frame energy."""
    logp = _logpower(wave, bins=15)  # (b, 15, t)
    frames = wave.unfold(1, _NFFT, _HOP)  # (b, t, 64)
    energy = frames.pow(2).sum(-1)[:, None]  # linear units, as the recipe's "energy" feature
    x = torch.cat([logp, energy], 1).transpose(1, 2)  # (b, t, 16)
    return x.reshape(x.shape[0], x.shape[1] // 4, 64)


@scenario(
    "h72_hf_granite_speech5_encoder",
    "adam",
    "amp_overflow",
    where="encoder.input_linear",
    diverges=130,
    onset=130,
    heldout=True,
    note="from step 130 a shard of raw int16 PCM: the linear energy column overflows float16",
)
def h72_granite5_int16_shard_amp_adam(ctx: Context) -> None:
    """fp16 autocast with a GradScaler. The frame features carry a frame-energy column in
    linear units (about 20 for audio in [-1, 1]). From step 130 the loader reaches a second
    shard stored as int16 PCM whose reader lacks the ``/ 32768``: the energy column jumps to
    about 1e10. In float32 the conformer's LayerNorms would absorb that scale; under autocast
    ``encoder.input_linear`` casts its input to float16, which overflows (> 65504) to inf, the
    loss is NaN and the scaler skips every step from there while halving its scale."""
    gen = seeded(7204)
    model = _granite5(7204)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def batches():
        step = -1  # fit draws one probe batch first
        while True:
            wave, y = _tones(gen, 32, 64, noise=0.3)
            if step >= 130:
                wave = torch.round(wave * 32767.0)  # int16 samples, never rescaled
            x = _granite_frames(wave)
            if step == 130:
                seen[step] = (x, y)
            step += 1
            yield x, y

    fit(ctx, model, opt, batches(), 170, scaler=scaler, amp=True)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check(
        "loss finite before 130, NaN/inf from 130 on", all(finite[:130]) and not any(finite[130:])
    )
    ctx.check(
        "loss fell before the bad shard", sum(ctx.losses[110:130]) < 0.8 * sum(ctx.losses[:20])
    )
    x, y = seen[130]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        h16 = model.encoder.input_linear(x)
    ctx.check("input_linear overflows in float16", not bool(torch.isfinite(h16).all()))
    with torch.no_grad():
        out32 = model(x)  # the scaler skipped the bad steps: the weights are still finite
    ctx.check("the same batch is finite in float32", bool(torch.isfinite(out32).all()))
    ctx.check("the scaler kept cutting its scale", ctx.scales[-1] < ctx.scales[129] / 1000)


# -- Moonshine-Streaming encoder on raw waveforms ---------------------------------------------------


def _moonshine(seed: int) -> _Pooled:
    from transformers import MoonshineStreamingEncoderConfig
    from transformers.models.moonshine_streaming.modeling_moonshine_streaming import (
        MoonshineStreamingEncoder,
    )

    _quiet_hf()
    torch.manual_seed(seed)
    config = MoonshineStreamingEncoderConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        sliding_windows=((8, 2), (8, 2)),
    )
    enc = MoonshineStreamingEncoder(config)
    return _Pooled(enc, 32, 6, lambda e, x: e(input_values=x).last_hidden_state)


def _waves(gen: torch.Generator, batch: int = 32, noise: float = 0.3):
    """Endless (waveform, pitch class) batches: 2048 samples = 25 frames of 5 ms at 16 kHz,
    cut to 24 frames."""
    while True:
        wave, y = _tones(gen, batch, 63, noise=noise)
        yield wave[:, : 24 * 80].contiguous(), y


@scenario(
    "h72_hf_moonshine_streaming_encoder",
    "sg_ademamix",
    "loss_spike",
    diverges=None,
    onset=150,
    heldout=True,
    note="checkpoint callback loads the step-30 weights at step 150 instead of saving",
)
def h72_moonshine_stale_reload_ademamix(ctx: Context) -> None:
    """A checkpoint callback with its ``save`` and ``load`` branches swapped: at step 150, when
    it should save, it loads the weights saved at step 30 into the model (the optimizer state
    is kept). The loss jumps back to the step-30 level in one step, with no gradient, data or
    optimizer mechanism behind the jump, and the run re-learns from there."""
    gen = seeded(7205)
    model = _moonshine(7205)
    opt = sgo.AdEMAMix(model.parameters(), lr=1e-3, fused=False)
    saved: dict[str, torch.Tensor] = {}

    def callback(step: int) -> None:
        if step == 30:
            saved.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        if step == 150:
            model.load_state_dict(saved)

    fit(ctx, model, opt, _waves(gen), 260, before=callback)
    L = ctx.losses
    ctx.check("loss jumped at 150", L[150] > 2.5 * max(L[140:150]))
    ctx.check("loss back below its pre-jump level", sum(L[240:]) / 20 < 1.2 * sum(L[140:150]) / 10)


@scenario(
    "h72_hf_moonshine_streaming_encoder",
    "sg_lion",
    "healthy",
    heldout=True,
    note="control: fp16 autocast with a GradScaler, waveforms in [-1, 1]",
)
def h72_moonshine_amp_lion_control(ctx: Context) -> None:
    """The same encoder and pitch task under fp16 autocast with a GradScaler and Lion at a
    modest rate: the scaler settles, the loss falls and stays finite."""
    gen = seeded(7206)
    model = _moonshine(7206)
    opt = sgo.Lion(model.parameters(), lr=4e-4, fused=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    fit(ctx, model, opt, _waves(gen), 140, scaler=scaler, amp=True)
    L = ctx.losses
    ctx.check("loss finite", all(math.isfinite(v) for v in L))
    ctx.check("loss fell", sum(L[-20:]) < 0.6 * sum(L[:20]))


# -- Perceiver: latent cross-attention with the scale inverted --------------------------------------


class _LatentCrossAttention(nn.Module):
    """Latents (queries) attend to the input tokens (keys and values), by hand."""

    def __init__(self, dim: int, heads: int, scale: float) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.heads = heads
        self.scale = scale
        self.max_logit = 0.0
        self.entropy = 0.0

    def forward(self, lat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        m, h = lat.shape[1], self.heads
        q = self.q(lat).reshape(b, m, h, -1).transpose(1, 2)
        k = self.k(x).reshape(b, n, h, -1).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) * self.scale
        att = logits.softmax(-1)
        with torch.no_grad():
            self.max_logit = float(logits.abs().max())
            self.entropy = float(-(att * att.clamp_min(1e-30).log()).sum(-1).mean())
        return self.out((att @ v).transpose(1, 2).reshape(b, m, d))


class _Perceiver(nn.Module):
    """Pixels of a digit as 64 tokens, 8 learnt latents, one cross-attention, one latent MLP."""

    def __init__(self, dim: int = 32, latents: int = 8, heads: int = 2, unscaled: bool = False):
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.pos = nn.Parameter(0.5 * torch.randn(64, dim))
        self.latents = nn.Parameter(0.5 * torch.randn(latents, dim))
        self.ln_x = nn.LayerNorm(dim)
        self.ln_lat = nn.LayerNorm(dim)
        d_head = dim // heads
        self.cross_attn = _LatentCrossAttention(dim, heads, 1.0 if unscaled else d_head**-0.5)
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tok = self.ln_x(self.embed(x.reshape(-1, 64, 1)) + self.pos)
        lat = self.latents.expand(x.shape[0], -1, -1)
        lat = lat + self.cross_attn(self.ln_lat(lat), tok)
        lat = lat + self.mlp(self.ln_mlp(lat))
        return self.head(lat.mean(1))


@scenario(
    "h72_perceiver_latent_xattn",
    "adam",
    "attention_logit_growth",
    where="cross_attn",
    diverges=None,
    heldout=True,
    note="the 1/sqrt(d_head) scale left out of a hand-written cross-attention: logits grow 7x",
)
def h72_perceiver_unscaled_xattn_adam(ctx: Context) -> None:
    """The hand-written cross-attention (replacing ``F.scaled_dot_product_attention`` to read
    the attention map) leaves out the 1/sqrt(d_head) factor: with 16-dim heads the logits start
    4x too large, and Adam at a rate tuned for the scaled version grows the query and key
    weights until the logits are about 7x their start and every latent's attention over the
    64 pixel tokens is nearly one-hot."""
    gen = seeded(7207)
    model = _Perceiver(unscaled=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    logits: list[float] = []
    entropy: list[float] = []

    def read(step: int) -> None:
        logits.append(model.cross_attn.max_logit)
        entropy.append(model.cross_attn.entropy)

    fit(ctx, model, opt, digit_batches(gen, 64), 300, before=read)
    ctx.check("cross-attention logits grew 5x", max(logits[-20:]) > 5 * logits[1])
    ctx.check("attention nearly one-hot (entropy < 0.5 nats of 4.16)", max(entropy[-20:]) < 0.5)


@scenario(
    "h72_perceiver_latent_xattn",
    "sg_stablespam",
    "healthy",
    heldout=True,
    note="control: the same Perceiver with 1/sqrt(d_head)",
)
def h72_perceiver_control_stablespam(ctx: Context) -> None:
    """The same Perceiver with the correct 1/sqrt(d_head) scale, trained with StableSPAM at a
    modest rate: the loss falls steadily."""
    gen = seeded(7208)
    model = _Perceiver(unscaled=False)
    opt = sgo.StableSPAM(model.parameters(), lr=2e-3, fused=False)
    fit(ctx, model, opt, digit_batches(gen, 64), 300)
    L = ctx.losses
    ctx.check("loss fell", sum(L[-20:]) < 0.5 * sum(L[:20]))
    ctx.check("loss finite", all(math.isfinite(v) for v in L))


# -- delta-rule (DeltaNet-style) recurrent layer: keys left unnormalised -----------------------------


class _DeltaRule(nn.Module):
    """Fast-weight state S (d_k x d_k) updated by the delta rule, by hand:
    S_t = S_{t-1} + beta_t (v_t - S_{t-1} k_t) k_t^T, y_t = S_t q_t. The transition
    (I - beta k k^T) is contractive only while beta |k|^2 < 2, which L2-normalised keys
    (and beta in (0, 1)) guarantee."""

    def __init__(self, dim: int, d_k: int, normalise: bool) -> None:
        super().__init__()
        self.q = nn.Linear(dim, d_k, bias=False)
        self.k = nn.Linear(dim, d_k, bias=False)
        self.v = nn.Linear(dim, d_k, bias=False)
        self.beta = nn.Linear(dim, 1)
        self.out = nn.Linear(d_k, dim)
        for lin in (self.q, self.k, self.v):
            nn.init.normal_(lin.weight, std=0.05)
        self.normalise = normalise
        self.max_gain = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.normalise:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = torch.sigmoid(self.beta(x))
        with torch.no_grad():  # |1 - beta |k|^2|: the transition's largest gain
            self.max_gain = float((1 - beta[..., 0] * k.pow(2).sum(-1)).abs().max())
        s = x.new_zeros(b, k.shape[-1], k.shape[-1])
        ys = []
        for i in range(t):
            ki, vi = k[:, i, :, None], v[:, i, :, None]
            s = s + beta[:, i, :, None] * (vi - s @ ki) @ ki.transpose(1, 2)
            ys.append((s @ q[:, i, :, None])[..., 0])
        return self.out(torch.stack(ys, 1))


class _DeltaLM(nn.Module):
    """Byte language model: embedding, one delta-rule layer with a residual, an MLP, a head."""

    def __init__(self, vocab: int = 128, dim: int = 32, normalise: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        nn.init.normal_(self.embed.weight, std=0.3)
        self.ln1 = nn.LayerNorm(dim)
        self.delta = _DeltaRule(dim, 16, normalise)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        x = x + self.delta(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return self.head(x)


def _lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    "h72_delta_rule_rnn",
    "sgd_mom",
    "exploding_gradients",
    where=("delta", "delta.k"),
    diverges="auto",
    heldout=True,
    note="keys not L2-normalised: once beta |k|^2 > 2 the recurrence amplifies, gradients grow",
)
def h72_delta_rule_unnormalised_keys_sgd(ctx: Context) -> None:
    """The delta-rule layer's ``F.normalize`` on the keys was dropped in a refactor (the
    queries' too). The transition I - beta k k^T is a contraction only while beta |k|^2 < 2;
    at initialisation the keys are small enough, but momentum SGD without gradient clipping
    grows the key projection, some tokens' gain |1 - beta |k|^2| passes 1 and the fast-weight
    state is amplified along the sequence: once enough such tokens meet in one window the
    gradients grow over consecutive steps (x300, then x4e11) and the loss breaks (step 77)."""
    gen = seeded(7209)
    model = _DeltaLM(normalise=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    gains: list[float] = []

    def read(step: int) -> None:
        gains.append(model.delta.max_gain)

    fit(ctx, model, opt, text_batches(gen, 16, 32), 300, loss_fn=_lm_loss, before=read)
    L = ctx.losses
    bad = next((i for i, v in enumerate(L) if not math.isfinite(v) or v > 20), len(L))
    ctx.check("the transition gain passed 1", max(gains[:bad]) > 1.0)
    ctx.check("the loss broke", bad < len(L))
    g = ctx.grad_norms
    calm = sorted(g[: max(bad - 20, 1)])[len(g[: max(bad - 20, 1)]) // 2]
    ctx.check(
        "gradients grew over consecutive steps into the break",
        bad >= 1 and g[bad - 1] > 100 * calm and not g[bad] < 10 * g[bad - 1],
    )


@scenario(
    "h72_delta_rule_rnn",
    "adadelta",
    "healthy",
    heldout=True,
    note="control: L2-normalised keys and queries",
)
def h72_delta_rule_control_adadelta(ctx: Context) -> None:
    """The same delta-rule byte LM with its keys and queries L2-normalised (beta |k|^2 < 1),
    trained with Adadelta: the recurrence stays contractive and the loss falls."""
    gen = seeded(7210)
    model = _DeltaLM(normalise=True)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, text_batches(gen, 16, 32), 250, loss_fn=_lm_loss)
    L = ctx.losses
    ctx.check("loss finite", all(math.isfinite(v) for v in L))
    ctx.check("loss fell", sum(L[-20:]) < 0.75 * sum(L[:20]))


# -- 3-D CNN on generated voxel shapes -------------------------------------------------------------


def _voxels(gen: torch.Generator, batch: int = 32, size: int = 10):
    """Endless (voxel grid, class) batches: ball, box, z-cylinder or hollow shell, each at a
    random centre and size, with 3% of the voxels flipped."""
    ax = torch.linspace(-1, 1, size)
    p = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1)  # (s, s, s, 3)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        c = 0.3 * (2 * torch.rand(batch, 1, 1, 1, 3, generator=gen) - 1)
        r = 0.45 + 0.35 * torch.rand(batch, 1, 1, 1, generator=gen)
        d = p[None] - c
        ball = d.norm(dim=-1) < r
        box = d.abs().amax(-1) < 0.8 * r
        cyl = (d[..., :2].norm(dim=-1) < 0.6 * r) & (d[..., 2].abs() < r)
        shell = (d.norm(dim=-1) < r) & (d.norm(dim=-1) > 0.6 * r)
        shapes = torch.stack([ball, box, cyl, shell], 1).float()  # (b, 4, s, s, s)
        x = shapes[torch.arange(batch), y]
        flip = torch.rand(x.shape, generator=gen) < 0.03
        x = torch.where(flip, 1 - x, x)
        yield x[:, None], y


class _VoxelCNN(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, 2 * width, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm3d(2 * width)
        self.conv3 = nn.Conv3d(2 * width, 2 * width, 3, padding=1)
        self.bn3 = nn.BatchNorm3d(2 * width)
        self.head = nn.Linear(2 * width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.head(x.mean((2, 3, 4)))


@scenario(
    "h72_voxel_cnn3d",
    "nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="step decay gamma typed 1.25 for 0.8: the rate grows x1.25 every 10 steps",
)
def h72_voxel_step_decay_typo_nesterov(ctx: Context) -> None:
    """A step schedule meant to multiply the rate by 0.8 every 10 steps was given
    ``gamma=1.25`` (the reciprocal, from a config that stored "1 / decay"): the rate grows
    geometrically instead. The BatchNorm CNN shrugs off the first increases, trains well, then
    runs at the edge of stability and finally breaks once the rate is far above 2/curvature
    of the unnormalised parameters (the head, BatchNorm's affine weights)."""
    gen = seeded(7211)
    model = _VoxelCNN()
    base = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=base, momentum=0.9, nesterov=True)
    rates: list[float] = []

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = base * 1.25 ** (step // 10)
        rates.append(opt.param_groups[0]["lr"])

    fit(ctx, model, opt, _voxels(gen), 300, before=schedule)
    L = ctx.losses
    bad = next((i for i, v in enumerate(L) if not math.isfinite(v) or v > 20), len(L))
    ctx.check("the loss fell first", min(L[:bad]) < 0.3 * sum(L[:10]) / 10)
    ctx.check(
        "then broke for good as the rate rose",
        bad < len(L) - 10 and min((v if math.isfinite(v) else 1e30) for v in L[bad:]) > 1.0,
    )


@scenario(
    "h72_voxel_cnn3d",
    "asgd",
    "healthy",
    heldout=True,
    note="control: the same CNN at a constant rate",
)
def h72_voxel_control_asgd(ctx: Context) -> None:
    """The same 3-D CNN on the same shapes with averaged SGD at a constant rate: it trains."""
    gen = seeded(7212)
    model = _VoxelCNN()
    opt = torch.optim.ASGD(model.parameters(), lr=0.1, t0=150)
    fit(ctx, model, opt, _voxels(gen), 250)
    L = ctx.losses
    ctx.check("loss finite", all(math.isfinite(v) for v in L))
    ctx.check("loss fell", sum(L[-20:]) < 0.6 * sum(L[:20]))


# -- Set Transformer (induced set attention) on generated point sets --------------------------------


def _point_sets(gen: torch.Generator, batch: int = 32, n: int = 24):
    """Endless (set of 2-D points, class) batches: ring, segment, two blobs or a filled square,
    randomly rotated, scaled and shifted."""
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        t = 2 * math.pi * torch.rand(batch, n, generator=gen)
        u = 2 * torch.rand(batch, n, 2, generator=gen) - 1
        ring = torch.stack([t.cos(), t.sin()], -1)
        seg = torch.stack([u[..., 0], 0.05 * u[..., 1]], -1)
        side = torch.where(torch.rand(batch, n, 1, generator=gen) < 0.5, -0.7, 0.7)
        blobs = torch.cat([side, torch.zeros(batch, n, 1)], -1) + 0.15 * u
        square = u
        pts = torch.stack([ring, seg, blobs, square], 1)[torch.arange(batch), y]
        a = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        rot = torch.stack(
            [torch.cat([a.cos(), -a.sin()], -1), torch.cat([a.sin(), a.cos()], -1)], 1
        )
        scale = 0.5 + torch.rand(batch, 1, 1, generator=gen)
        shift = 0.5 * torch.randn(batch, 1, 2, generator=gen)
        pts = pts @ rot.transpose(1, 2) * scale + shift
        yield pts + 0.02 * torch.randn(pts.shape, generator=gen), y


class _MAB(nn.Module):
    """Multihead attention block (Lee et al. 2019): H = LN(X + MHA(X, Y)), LN(H + rFF(H))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln1 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)
        self.ln2 = nn.LayerNorm(dim)

    def hidden(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x + self.attn(x, y, y, need_weights=False)[0])
        return h, F.relu(self.ff1(h))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, a = self.hidden(x, y)
        return self.ln2(h + self.ff2(a))


class _ISAB(nn.Module):
    def __init__(self, dim: int, heads: int, inducing: int) -> None:
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(inducing, dim) / math.sqrt(dim))
        self.mab0 = _MAB(dim, heads)
        self.mab1 = _MAB(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mab0(self.inducing.expand(x.shape[0], -1, -1), x)
        return self.mab1(x, h)


class _SetTransformer(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, inducing: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(2, dim)
        self.isab1 = _ISAB(dim, heads, inducing)
        self.isab2 = _ISAB(dim, heads, inducing)
        self.seed = nn.Parameter(torch.randn(1, dim) / math.sqrt(dim))
        self.pma = _MAB(dim, heads)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.isab2(self.isab1(self.embed(x)))
        return self.head(self.pma(self.seed.expand(x.shape[0], -1, -1), z)[:, 0])


def _set_dead(model: _SetTransformer, x: torch.Tensor) -> dict[str, float]:
    """Dead fraction of each rFF's ReLU units on a batch."""
    out: dict[str, float] = {}
    with torch.no_grad():
        z = model.embed(x)
        for name in ("isab1", "isab2"):
            isab = getattr(model, name)
            ind = isab.inducing.expand(x.shape[0], -1, -1)
            _, a0 = isab.mab0.hidden(ind, z)
            h = isab.mab0(ind, z)
            _, a1 = isab.mab1.hidden(z, h)
            out[f"{name}.mab0.ff1"] = dead_fraction(a0)
            out[f"{name}.mab1.ff1"] = dead_fraction(a1)
            z = isab(z)
        _, a = model.pma.hidden(model.seed.expand(x.shape[0], -1, -1), z)
        out["pma.ff1"] = dead_fraction(a)
    return out


@scenario(
    "h72_set_transformer_isab",
    "radam",
    "loss_of_plasticity",
    where=("isab2.mab1.ff1",),
    diverges=None,
    heldout=True,
    note="gate-style bias init (-3) applied to an rFF layer: its ReLUs are dead from step 0",
)
def h72_set_transformer_gate_bias_init_radam(ctx: Context) -> None:
    """An init helper meant for gating units (bias -3, so gates start closed) is applied by
    module-name pattern and also matches ``isab2.mab1.ff1``, a ReLU feed-forward layer. Its
    inputs come out of a LayerNorm (pre-activations of spread about 0.6), so every unit is
    negative for every input from the first step: the layer passes nothing, its weights get
    no gradient and never recover, while the rest of the network learns around it."""
    gen = seeded(7213)
    model = _SetTransformer()
    nn.init.constant_(model.isab2.mab1.ff1.bias, -3.0)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    probe = next(_point_sets(seeded(1), 256))[0]
    w0 = model.isab2.mab1.ff1.weight.detach().clone()
    fit(ctx, model, opt, _point_sets(gen), 250)
    dead = _set_dead(model, probe)
    ctx.check("every unit of isab2.mab1.ff1 dead at the end", dead["isab2.mab1.ff1"] == 1.0)
    ctx.check("its weights never moved", torch.equal(w0, model.isab2.mab1.ff1.weight))
    ctx.check("other rFF layers alive", dead["isab1.mab1.ff1"] < 0.5)
    ctx.check("the rest learnt: loss fell", sum(ctx.losses[-20:]) < 0.7 * sum(ctx.losses[:20]))


# -- DeepSDF auto-decoder on generated spheres -----------------------------------------------------


class _AutoDecoder(nn.Module):
    """DeepSDF: a latent code per shape (an embedding) and an MLP from (code, xyz) to the SDF."""

    def __init__(self, shapes: int = 48, code: int = 8, width: int = 64) -> None:
        super().__init__()
        self.codes = nn.Embedding(shapes, code)
        nn.init.normal_(self.codes.weight, std=0.01)
        self.decoder = nn.Sequential(
            nn.Linear(code + 3, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 1),
        )

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        idx, xyz = batch
        code = self.codes(idx)[:, None].expand(-1, xyz.shape[1], -1)
        return self.decoder(torch.cat([code, xyz], -1))[..., 0]


def _sdf_batches(gen: torch.Generator, shapes: int = 48, per_batch: int = 8, points: int = 96):
    """Endless ((shape ids, sample points), SDF targets) batches of spheres."""
    centres = 0.3 * (2 * torch.rand(shapes, 3, generator=gen) - 1)
    radii = 0.3 + 0.3 * torch.rand(shapes, generator=gen)
    while True:
        idx = torch.randint(0, shapes, (per_batch,), generator=gen)
        near = centres[idx, None] + radii[idx, None, None] * F.normalize(
            torch.randn(per_batch, points // 2, 3, generator=gen), dim=-1
        )
        near = near + 0.05 * torch.randn(near.shape, generator=gen)
        far = 2 * torch.rand(per_batch, points - points // 2, 3, generator=gen) - 1
        xyz = torch.cat([near, far], 1)
        sdf = (xyz - centres[idx, None]).norm(dim=-1) - radii[idx, None]
        yield (idx, xyz), sdf


def _clamped_l1(pred: torch.Tensor, sdf: torch.Tensor) -> torch.Tensor:
    return (pred - sdf.clamp(-0.1, 0.1)).abs().mean()


@scenario(
    "h72_deepsdf_autodecoder",
    "nadam",
    "data_outlier",
    diverges=200,
    onset=200,
    heldout=True,
    note="one batch of shapes exported in millimetres at step 200: a loss spike, then recovery",
)
def h72_deepsdf_millimetre_batch_nadam(ctx: Context) -> None:
    """At step 200 the batch comes from a shard of sample files exported in millimetres: its
    points are 1000x too far out (and its SDF values 1000x, clamped to +-0.1 by the loss).
    The ReLU decoder extrapolates linearly to those points, so the clamped L1 loss jumps
    ~400x and the weight gradients ~500x for that one step; NAdam's normalised step keeps the
    damage small and the next, correct batches bring the loss back within a few steps."""
    gen = seeded(7214)
    model = _AutoDecoder()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)

    def alter(step: int, batch, sdf: torch.Tensor):
        if step == 200:
            idx, xyz = batch
            return (idx, xyz * 1000.0), sdf * 1000.0  # the same files, in millimetres
        return batch, sdf

    fit(
        ctx,
        model,
        opt,
        _sdf_batches(gen),
        400,
        loss_fn=_clamped_l1,
        alter=alter,
        classifier=False,
    )
    L = ctx.losses
    pre = sum(L[180:200]) / 20
    ctx.check("loss spiked 50x at 200", L[200] > 50 * max(L[180:200]))
    ctx.check("recovered: 230-260 within 1.5x of before", sum(L[230:260]) / 30 < 1.5 * pre)
    ctx.check("and kept improving", sum(L[-30:]) / 30 < pre)


# -- point-cloud autoencoder with a Chamfer loss ---------------------------------------------------


def _clouds(gen: torch.Generator, batch: int = 16, n: int = 64):
    """Endless (cloud, shape id) batches: sphere, cube surface, torus or cylinder surface,
    randomly scaled and shifted."""
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        u = torch.rand(batch, n, 2, generator=gen)
        th, ph = 2 * math.pi * u[..., 0], torch.acos(1 - 2 * u[..., 1])
        sphere = torch.stack([ph.sin() * th.cos(), ph.sin() * th.sin(), ph.cos()], -1)
        cube = 2 * torch.rand(batch, n, 3, generator=gen) - 1
        face = torch.randint(0, 3, (batch, n), generator=gen)
        sign = torch.where(torch.rand(batch, n, generator=gen) < 0.5, -1.0, 1.0)
        cube = cube.scatter(2, face[..., None], sign[..., None])
        ring = 2 * math.pi * u[..., 1]
        torus = torch.stack(
            [
                (1 + 0.35 * ring.cos()) * th.cos(),
                (1 + 0.35 * ring.cos()) * th.sin(),
                0.35 * ring.sin(),
            ],
            -1,
        )
        cyl = torch.stack([th.cos(), th.sin(), 2 * u[..., 1] - 1], -1)
        pts = torch.stack([sphere, cube, torus, cyl], 1)[torch.arange(batch), y]
        scale = 0.5 + torch.rand(batch, 1, 1, generator=gen)
        yield pts * scale + torch.randn(batch, 1, 3, generator=gen), y


class _UnitSphere(nn.Module):
    """Centre each cloud and scale it into the unit sphere (divide by its largest radius)."""

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        c = p - p.mean(1, keepdim=True)
        return c / c.norm(dim=-1).amax(1)[:, None, None]


class _PointAE(nn.Module):
    """PointNet-style encoder (shared MLP, max pool) and an MLP decoder to 64 points."""

    def __init__(self, n: int = 64, code: int = 64) -> None:
        super().__init__()
        self.normalize = _UnitSphere()
        self.encoder = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, code))
        self.decoder = nn.Sequential(nn.Linear(code, 128), nn.ReLU(), nn.Linear(128, n * 3))
        self.n = n

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        p = self.normalize(p)
        z = self.encoder(p).amax(1)
        recon = self.decoder(z).reshape(-1, self.n, 3)
        return torch.cat([recon, p], 1)  # the reconstruction and its (normalised) target


def _chamfer(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    recon, target = out.chunk(2, dim=1)
    d = torch.cdist(recon, target).pow(2)
    return d.amin(2).mean() + d.amin(1).mean()


@scenario(
    "h72_pointcloud_chamfer_ae",
    "adagrad",
    "nonfinite",
    where="normalize",
    diverges=160,
    onset=160,
    heldout=True,
    note="a failed scan (every point at the sensor origin) at step 160: 0 / 0 in the unit-sphere scaling",
)
def h72_pointcloud_degenerate_scan_adagrad(ctx: Context) -> None:
    """The model's first module centres each cloud and divides by its largest radius. At
    step 160 one cloud of the batch is a failed capture: the scanner returned its origin for
    every point, so the centred cloud is all zeros and the division is 0 / 0: ``normalize``
    emits NaN for that cloud, the Chamfer loss is NaN, Adagrad writes NaN into every weight and
    the run never comes back."""
    gen = seeded(7215)
    model = _PointAE()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    seen: dict[str, bool] = {}

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 160:
            x = x.clone()
            x[3] = 0.0  # the failed capture
            with torch.no_grad():
                z = model.normalize(x)
            seen["nan only in the bad cloud"] = bool(
                torch.isnan(z[3]).all() and torch.isfinite(torch.cat([z[:3], z[4:]])).all()
            )
        return x, y

    fit(ctx, model, opt, _clouds(gen), 200, loss_fn=_chamfer, alter=alter, classifier=False)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("loss finite before 160, NaN from 160", all(finite[:160]) and not any(finite[160:]))
    ctx.check(
        "normalize made the NaN, in the bad cloud only",
        seen.get("nan only in the bad cloud", False),
    )
    ctx.check("loss fell before it", sum(ctx.losses[140:160]) < 0.6 * sum(ctx.losses[:20]))


# -- Mamba-style selective state-space scan forecasting generated series ----------------------------


class _SelectiveScan(nn.Module):
    """A Mamba block by hand: input-dependent step dt, B and C; diagonal A = -exp(A_log);
    h_t = exp(dt A) h_{t-1} + dt B x_t, y_t = C h_t + D x_t, gated by silu(z)."""

    def __init__(self, dim: int = 16, state: int = 8) -> None:
        super().__init__()
        self.in_proj = nn.Linear(dim, 2 * dim)
        self.x_proj = nn.Linear(dim, 1 + 2 * state)
        self.dt_proj = nn.Linear(1, dim)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1.0)).repeat(dim, 1))
        self.D = nn.Parameter(torch.ones(dim))
        self.out_proj = nn.Linear(dim, dim)
        self.state = state

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(u).chunk(2, -1)
        dt, b, c = self.x_proj(x).split([1, self.state, self.state], -1)
        dt = F.softplus(self.dt_proj(dt))  # (batch, t, dim)
        da = torch.exp(dt[..., None] * -torch.exp(self.A_log))  # (batch, t, dim, state)
        dbx = dt[..., None] * b[:, :, None] * x[..., None]
        h = u.new_zeros(u.shape[0], u.shape[2], self.state)
        ys = []
        for t in range(u.shape[1]):
            h = da[:, t] * h + dbx[:, t]
            ys.append((h * c[:, t, None]).sum(-1))
        y = torch.stack(ys, 1) + self.D * x
        return self.out_proj(y * F.silu(z))


class _MambaForecaster(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.mixer1 = _SelectiveScan(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mixer2 = _SelectiveScan(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x[..., None])
        h = h + self.mixer1(self.norm1(h))
        h = h + self.mixer2(self.norm2(h))
        return self.head(h)[..., 0]


def _series(gen: torch.Generator, batch: int = 32, length: int = 40):
    """Endless (series, next values) batches: two random sines plus noise."""
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        f = 0.05 + 0.25 * torch.rand(batch, 2, 1, generator=gen)
        ph = 2 * math.pi * torch.rand(batch, 2, 1, generator=gen)
        a = torch.rand(batch, 2, 1, generator=gen)
        s = (a * torch.sin(f * t + ph)).sum(1) + 0.05 * torch.randn(
            batch, length + 1, generator=gen
        )
        yield s[:, :-1], s[:, 1:]


@scenario(
    "h72_mamba_selective_scan",
    "sg_grams",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="input-noise annealing written exp(+step / 50): the augmentation noise grows 100x",
)
def h72_mamba_noise_anneal_sign_grams(ctx: Context) -> None:
    """Input-noise augmentation meant to anneal as ``0.05 * exp(-step / 50)`` was written
    with ``+``: the noise added to the input series grows geometrically (x100 by step 230).
    Nothing inside the model misbehaves; the forecaster fits well at first, then its training
    error climbs slowly and steadily as its inputs drown, with no event to point at."""
    gen = seeded(7216)
    model = _MambaForecaster()
    opt = sgo.Grams(model.parameters(), lr=3e-3, fused=False)
    noise = torch.Generator().manual_seed(7216)

    def augment(step: int, x: torch.Tensor, y: torch.Tensor):
        sigma = 0.05 * math.exp(step / 50)  # meant: exp(-step / 50)
        return x + sigma * torch.randn(x.shape, generator=noise), y

    fit(ctx, model, opt, _series(gen), 240, loss_fn=F.mse_loss, alter=augment, classifier=False)
    L = ctx.losses
    low = min(range(len(L) - 20), key=lambda i: sum(L[i : i + 20]))
    avg = [sum(L[i : i + 20]) / 20 for i in range(low, len(L) - 19, 20)]
    ctx.check("the error climbed 5x from its low", avg[-1] > 5 * avg[0])
    ctx.check(
        "steadily: each 20-step mean above the one 40 steps before",
        all(avg[k] > avg[k - 2] for k in range(2, len(avg))),
    )
    ctx.check("loss finite", all(math.isfinite(v) for v in L))
