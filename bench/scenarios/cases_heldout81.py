"""Held-out scenarios, set 81 (``h81_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face Kyutai speech-to-text decoder (text + audio-code streams), CSM depth
decoder (audio codebooks), Qwen2.5-Omni audio encoder and Parakeet TDT (transducer) built from
tiny configs, fed generated tones, codes and feature frames; hand-written Conv-TasNet (SI-SNR, PIT) and SepFormer-style dual-path transformer separators,
Demucs-style waveform U-Net, ECAPA-TDNN speaker embedder with an AAM-softmax head,
SoundStream-style residual-VQ autoencoder, LPCNet-style GRU vocoder, node2vec skip-gram,
ComplEx knowledge-graph embeddings, FiLM-conditioned network, DeepONet and an MMoE multi-task
recommender. Optimizers: AdamW, Adam, NAdam, RAdam, Adamax, Adagrad, RMSprop, SGD (plain and
momentum), ASGD and steadygrad's Lion, StableSPAM, AdEMAMix, Grams and AdaBelief.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import Context, collapsed_fraction, dead_fraction, fit, scenario, seeded

# -- generated audio-ish data ---------------------------------------------------------------------


def band_features(gen: torch.Generator, batch: int, classes: int, mels: int, frames: int):
    """Log-mel-like frames of a tone class: class c lights up two mel bands, with noise and a
    random onset; labels 0..classes-1."""
    y = torch.randint(0, classes, (batch,), generator=gen)
    x = 0.3 * torch.randn(batch, mels, frames, generator=gen)
    t = torch.arange(frames)
    start = torch.randint(0, frames // 3, (batch,), generator=gen)
    on = (t[None, :] >= start[:, None]).float()
    for i in range(batch):
        c = int(y[i])
        b1, b2 = (2 * c) % mels, (2 * c + 5) % mels
        x[i, b1] += 1.5 * on[i]
        x[i, b2] += 1.0 * on[i]
    return x, y


def tone_waves(gen: torch.Generator, batch: int, length: int, classes: int):
    """Sine tones whose frequency band is the class, random phase, amplitude and a little noise."""
    y = torch.randint(0, classes, (batch,), generator=gen)
    f = 0.02 + 0.05 * y.float() + 0.01 * torch.rand(batch, generator=gen)
    ph = 2 * math.pi * torch.rand(batch, 1, generator=gen)
    amp = 0.5 + 0.5 * torch.rand(batch, 1, generator=gen)
    t = torch.arange(length).float()
    x = amp * torch.sin(2 * math.pi * f[:, None] * t + ph)
    return x + 0.05 * torch.randn(batch, length, generator=gen), y


def two_sources(gen: torch.Generator, batch: int, length: int):
    """A harmonic tone and an amplitude-modulated noise burst, and their mixture."""
    t = torch.arange(length).float()
    f = 0.01 + 0.04 * torch.rand(batch, 1, generator=gen)
    ph = 2 * math.pi * torch.rand(batch, 1, generator=gen)
    s1 = torch.sin(2 * math.pi * f * t + ph) + 0.4 * torch.sin(4 * math.pi * f * t + ph)
    env = torch.sigmoid(
        8 * torch.sin(2 * math.pi * 0.01 * t + 6.28 * torch.rand(batch, 1, generator=gen))
    )
    s2 = 0.6 * env * torch.randn(batch, length, generator=gen)
    src = torch.stack([s1, s2], 1)
    return src.sum(1), src


def si_snr(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR (dB) over the last dim."""
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    proj = (est * ref).sum(-1, keepdim=True) * ref / (ref.pow(2).sum(-1, keepdim=True) + eps)
    noise = est - proj
    return 10 * torch.log10((proj.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def pit_si_snr_loss(est: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Negative SI-SNR under the better of the two source orderings (2 speakers)."""
    a = si_snr(est[:, 0], src[:, 0]) + si_snr(est[:, 1], src[:, 1])
    b = si_snr(est[:, 0], src[:, 1]) + si_snr(est[:, 1], src[:, 0])
    return -(torch.maximum(a, b) / 2).mean()


def first_nonfinite_module(model: nn.Module, run) -> str | None:
    """Run ``run()`` with forward hooks; the first module (in execution order) whose output has
    a NaN or Inf."""
    seen: list[str] = []
    hooks = []
    for name, mod in model.named_modules():
        if name == "":
            continue

        def hook(m, i, o, name=name):
            outs = o if isinstance(o, tuple) else (o,)
            for t in outs:
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    if not torch.isfinite(t).all():
                        seen.append(name)
                        break

        hooks.append(mod.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen[0] if seen else None


# -- Hugging Face: Kyutai speech-to-text decoder --------------------------------------------------


class KyutaiSTT(nn.Module):
    """Kyutai's speech-to-text decoder (one text stream + 4 audio-code streams summed into one
    embedding per frame) with a text head: predicts the next text token."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.models.kyutai_speech_to_text.configuration_kyutai_speech_to_text import (
            KyutaiSpeechToTextConfig,
        )
        from transformers.models.kyutai_speech_to_text.modeling_kyutai_speech_to_text import (
            KyutaiSpeechToTextModel,
        )

        config = KyutaiSpeechToTextConfig(
            codebook_vocab_size=33,
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=64,
            sliding_window=32,
            ffn_dim=64,
            num_codebooks=4,
            audio_bos_token_id=32,
            audio_pad_token_id=64 + 4 * 33,
            pad_token_id=3,
            bos_token_id=0,
        )
        self.decoder = KyutaiSpeechToTextModel(config)
        self.text_head = nn.Linear(32, 64)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_head(self.decoder(input_ids=ids).last_hidden_state)


def stt_batches(gen: torch.Generator, batch: int = 16, length: int = 24):
    """Audio codes (4 streams of 32) and a text stream whose next token is (code0 one frame back
    + code1 now) mod 64: the decoder must look one frame back."""
    while True:
        codes = torch.randint(0, 32, (batch, length, 4), generator=gen)
        nxt = (torch.roll(codes[..., 0], 1, dims=1) + codes[..., 1]) % 64
        nxt[:, 0] = codes[:, 0, 1]
        text_in = torch.cat([torch.zeros(batch, 1, dtype=torch.long), nxt[:, :-1]], 1)
        yield torch.cat([text_in[..., None], codes], -1), nxt


def kyutai_qk_max(model: KyutaiSTT, ids: torch.Tensor) -> float:
    """Largest causal |q.k|/sqrt(d) over both layers (q, k taken at the projections)."""
    got: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.decoder.layers):
        for part in ("q_proj", "k_proj"):
            mod = getattr(layer.self_attn, part)
            hooks.append(
                mod.register_forward_hook(lambda m, a, o, k=f"{i}{part}": got.__setitem__(k, o))
            )
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    top = 0.0
    t = ids.shape[1]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(len(model.decoder.layers)):
        q = got[f"{i}q_proj"].reshape(ids.shape[0], t, 2, 16).transpose(1, 2)
        k = got[f"{i}k_proj"].reshape(ids.shape[0], t, 2, 16).transpose(1, 2)
        s = (q @ k.transpose(-1, -2)) / 4.0
        top = max(top, float(s.masked_fill(~mask, 0).abs().amax()))
    return top


@scenario(
    "h81_hf_kyutai_stt_decoder",
    "adamw",
    "attention_logit_growth",
    where=("decoder.layers.0.self_attn", "decoder.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="q/k projections in a param group with lr 3e-1 (typo for 3e-3), no weight decay",
    onset=0,
)
def h81_attn_growth_kyutai_qk_lr(ctx: Context) -> None:
    """Fine-tuning recipe puts the attention q/k projections in their own group (meant for a
    lower LR) but the group's lr is typed 3e-1: the query/key weights grow step after step and
    the attention logits blow up."""
    gen = seeded(8101)
    model = KyutaiSTT()
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 3e-3}, {"params": qk, "lr": 3e-1}], weight_decay=0.0
    )
    probe, _ = next(stt_batches(seeded(1)))
    start = kyutai_qk_max(model, probe)
    fit(
        ctx,
        model,
        opt,
        stt_batches(gen),
        260,
        loss_fn=lambda out, y: F.cross_entropy(out.reshape(-1, 64), y.reshape(-1)),
        classifier=False,
    )
    end = kyutai_qk_max(model, probe)
    ctx.check("attention logits grew 50x", end > 50 * start)


# -- Hugging Face: CSM depth decoder --------------------------------------------------------------


def csm_depth_decoder() -> nn.Module:
    from transformers.models.csm.configuration_csm import CsmDepthDecoderConfig
    from transformers.models.csm.modeling_csm import CsmDepthDecoderForCausalLM

    config = CsmDepthDecoderConfig(
        num_codebooks=8,
        backbone_hidden_size=32,
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=9,
    )
    return CsmDepthDecoderForCausalLM(config)


def csm_batches(gen: torch.Generator, batch: int = 32):
    """A backbone state per frame and its 8 codebook tokens (each a fixed function of the
    state): inputs [placeholder, c0..c6] with the state, targets c1..c7."""
    proj = torch.randn(8, 32, 64, generator=torch.Generator().manual_seed(77))
    while True:
        h = torch.randn(batch, 32, generator=gen)
        codes = torch.einsum("bd,kdv->bkv", h, proj).argmax(-1)
        ids = torch.cat([torch.zeros(batch, 1, dtype=torch.long), codes[:, :7]], 1)
        yield (ids, h), codes[:, 1:]


def csm_forward(m: nn.Module, x) -> torch.Tensor:
    ids, h = x
    return m(input_ids=ids, backbone_last_hidden_state=h).logits


def csm_log_z(model: nn.Module, x) -> float:
    with torch.no_grad():
        return float(torch.logsumexp(csm_forward(model, x), -1).mean())


@scenario(
    "h81_hf_csm_depth_decoder",
    "sg_lion",
    "output_logit_divergence",
    where="codebooks_head",
    diverges=None,
    heldout=True,
    note="z-loss added with the wrong sign (rewards a large log Z)",
    onset=0,
)
def h81_zloss_sign_csm_depth_lion(ctx: Context) -> None:
    """A z-loss meant to keep log Z near 0 is added as ``- 5e-2 * logZ**2``: every step pushes
    the codebook logits' log-partition up; with Lion's sign updates the head drifts steadily."""
    gen = seeded(8102)
    model = csm_depth_decoder()
    opt = sgo.Lion(model.parameters(), lr=2e-3, fused=False)
    probe, _ = next(csm_batches(seeded(2)))
    start = csm_log_z(model, probe)
    state: dict[str, torch.Tensor] = {}

    def forward(m, x):
        out = csm_forward(m, x)
        state["logits"] = out
        return out

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        log_z = torch.logsumexp(state["logits"].float(), -1)
        return loss - 5e-2 * log_z.pow(2).mean()  # sign typo: should be +

    fit(
        ctx,
        model,
        opt,
        csm_batches(gen),
        350,
        loss_fn=lambda out, y: F.cross_entropy(out.reshape(-1, 64), y.reshape(-1)),
        forward=forward,
        extra_loss=extra,
        classifier=False,
    )
    end = csm_log_z(model, probe)
    ctx.check("log Z of the codebook logits rose by 8+", end - start > 8)


# -- Hugging Face: Qwen2.5-Omni audio encoder ----------------------------------------------------


class OmniAudioClassifier(nn.Module):
    """Qwen2.5-Omni's audio encoder (two convs, windowed self-attention, avg-pool, projection)
    on packed mel frames, mean-pooled into a tone classifier."""

    def __init__(self, mels: int = 16, classes: int = 6) -> None:
        super().__init__()
        from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import (
            Qwen2_5OmniAudioEncoderConfig,
        )
        from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
            Qwen2_5OmniAudioEncoder,
        )

        config = Qwen2_5OmniAudioEncoderConfig(
            num_mel_bins=mels,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=128,
            d_model=32,
            max_source_positions=64,
            n_window=16,
            output_dim=32,
        )
        self.encoder = Qwen2_5OmniAudioEncoder(config)
        self.classifier = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, mels, t = x.shape
        packed = x.transpose(0, 1).reshape(mels, b * t)
        out = self.encoder(input_features=packed, feature_lens=torch.full((b,), t))
        h = out.last_hidden_state.reshape(b, -1, out.last_hidden_state.shape[-1])
        return self.classifier(h.mean(1))


def band_batches(gen: torch.Generator, batch: int = 16, classes: int = 6, mels=16, frames=64):
    while True:
        yield band_features(gen, batch, classes, mels, frames)


@scenario(
    "h81_hf_qwen2_5_omni_audio_encoder",
    "nadam",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one batch of raw power spectra (not log-mel) at step 170",
    onset=170,
)
def h81_outlier_omni_raw_power(ctx: Context) -> None:
    """A feature-extraction cache written by an older script holds linear power spectra instead
    of log-mel: the one batch that comes from it (step 170) has values up to ~1e4."""
    gen = seeded(8103)
    model = OmniAudioClassifier()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 170:
            x = torch.exp(2.3 * x) * 100.0  # power, not log power
        return x, y

    fit(ctx, model, opt, band_batches(gen), 260, alter=alter)
    before = sum(ctx.losses[150:170]) / 20
    ctx.check("loss at the raw batch 5x the steps before", ctx.losses[170] > 5 * before)
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))


# -- Conv-TasNet ----------------------------------------------------------------------------------


class GlobalLayerNorm(nn.Module):
    """Conv-TasNet's gLN over (channels, time), written by hand without an epsilon."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((1, 2), keepdim=True)
        var = (x - mean).pow(2).mean((1, 2), keepdim=True)
        return self.gamma * (x - mean) / var.sqrt() + self.beta


class TCNBlock(nn.Module):
    def __init__(self, ch: int, hidden: int, dilation: int) -> None:
        super().__init__()
        self.inp = nn.Conv1d(ch, hidden, 1)
        self.act1 = nn.PReLU()
        self.norm1 = GlobalLayerNorm(hidden)
        self.dw = nn.Conv1d(hidden, hidden, 3, padding=dilation, dilation=dilation, groups=hidden)
        self.act2 = nn.PReLU()
        self.norm2 = GlobalLayerNorm(hidden)
        self.out = nn.Conv1d(hidden, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(self.act1(self.inp(x)))
        h = self.norm2(self.act2(self.dw(h)))
        return x + self.out(h)


class Separator(nn.Module):
    def __init__(self, n: int, b: int, hidden: int, blocks: int, speakers: int) -> None:
        super().__init__()
        self.speakers = speakers
        self.norm = GlobalLayerNorm(n)
        self.bottleneck = nn.Conv1d(n, b, 1)
        self.tcn = nn.Sequential(*(TCNBlock(b, hidden, 2**i) for i in range(blocks)))
        self.mask = nn.Conv1d(b, speakers * n, 1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        h = self.tcn(self.bottleneck(self.norm(w)))
        return torch.sigmoid(self.mask(h)).reshape(w.shape[0], self.speakers, w.shape[1], -1)


class ConvTasNet(nn.Module):
    """Learned encoder (no bias) + ReLU, TCN mask estimator, transposed-conv decoder."""

    def __init__(self, n: int = 32, kernel: int = 16, speakers: int = 2) -> None:
        super().__init__()
        self.encoder = nn.Conv1d(1, n, kernel, stride=kernel // 2, bias=False)
        self.separator = Separator(n, 24, 48, 4, speakers)
        self.decoder = nn.ConvTranspose1d(n, 1, kernel, stride=kernel // 2, bias=False)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        w = F.relu(self.encoder(mix[:, None]))
        masks = self.separator(w)
        b, s, n, t = masks.shape
        est = self.decoder((masks * w[:, None]).reshape(b * s, n, t))
        return est.reshape(b, s, -1)[..., : mix.shape[-1]]


def mixture_batches(gen: torch.Generator, batch: int = 16, length: int = 256):
    while True:
        yield two_sources(gen, batch, length)


@scenario(
    "h81_conv_tasnet_sisnr",
    "radam",
    "nonfinite",
    where="separator.norm",
    diverges=140,
    heldout=True,
    note="a silent (all-zero padded) mixture reaches a gLN written without eps: 0/0",
    onset=140,
)
def h81_nan_tasnet_silent_mixture(ctx: Context) -> None:
    """The data pipeline pads short files with silence; at step 140 one mixture is all padding.
    The encoder has no bias, so after the ReLU its frames are exactly 0 and the hand-written
    global layer norm divides 0 by sqrt(0)."""
    gen = seeded(8104)
    model = ConvTasNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    state: dict[str, object] = {}

    def alter(step: int, mix: torch.Tensor, src: torch.Tensor):
        if step == 140:
            mix, src = mix.clone(), src.clone()
            mix[3] = 0.0
            src[3] = 0.0
            state["bad"] = mix
        return mix, src

    fit(
        ctx,
        model,
        opt,
        mixture_batches(gen),
        160,
        loss_fn=pit_si_snr_loss,
        alter=alter,
        classifier=False,
    )
    fresh = ConvTasNet()
    first = first_nonfinite_module(fresh, lambda: fresh(state["bad"]))
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite before 140, not at 140", all(finite[:140]) and not finite[140])
    ctx.check("loss fell before the fault", ctx.losses[139] < ctx.losses[0] - 3)
    ctx.check("NaN first from separator.norm", first == "separator.norm")


# -- SepFormer-style dual-path transformer --------------------------------------------------------


class DualPathBlock(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.intra = nn.TransformerEncoderLayer(dim, heads, 2 * dim, 0.0, batch_first=True)
        self.inter = nn.TransformerEncoderLayer(dim, heads, 2 * dim, 0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, k, d = x.shape  # batch, chunks, chunk length, dim
        x = self.intra(x.reshape(b * c, k, d)).reshape(b, c, k, d)
        x = x.transpose(1, 2).reshape(b * k, c, d)
        return self.inter(x).reshape(b, k, c, d).transpose(1, 2)


class SepFormer(nn.Module):
    """Conv encoder, chunking into 16-frame chunks, intra/inter-chunk transformers, masks."""

    def __init__(self, n: int = 32, chunk: int = 16, speakers: int = 2) -> None:
        super().__init__()
        self.chunk, self.speakers = chunk, speakers
        self.encoder = nn.Conv1d(1, n, 8, stride=4, bias=False)
        self.norm = nn.LayerNorm(n)
        self.pos = nn.Parameter(torch.zeros(1, 1, chunk, n))
        self.dual = nn.Sequential(DualPathBlock(n), DualPathBlock(n))
        self.mask = nn.Linear(n, speakers * n)
        self.decoder = nn.ConvTranspose1d(n, 1, 8, stride=4, bias=False)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        w = F.relu(self.encoder(mix[:, None]))  # (b, n, t)
        b, n, t = w.shape
        pad = (-t) % self.chunk
        h = F.pad(self.norm(w.transpose(1, 2)), (0, 0, 0, pad))
        h = h.reshape(b, -1, self.chunk, n) + self.pos
        h = self.dual(h).reshape(b, -1, n)[:, :t]
        m = torch.relu(self.mask(h)).reshape(b, t, self.speakers, n).permute(0, 2, 3, 1)
        est = self.decoder((m * w[:, None]).reshape(b * self.speakers, n, t))
        return est.reshape(b, self.speakers, -1)[..., : mix.shape[-1]]


@scenario(
    "h81_sepformer_dual_path",
    "adam",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="two dual-path blocks, PIT SI-SNR, Adam 1e-3",
)
def h81_healthy_sepformer_adam(ctx: Context) -> None:
    gen = seeded(8105)
    model = SepFormer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, mixture_batches(gen), 260, loss_fn=pit_si_snr_loss, classifier=False)
    mean = lambda a, b: sum(ctx.losses[a:b]) / (b - a)  # noqa: E731
    ctx.check("SI-SNR improved by 8 dB+", mean(240, 260) < mean(0, 20) - 8)
    ctx.check("all finite", all(math.isfinite(v) for v in ctx.losses))


# -- Demucs-style waveform U-Net ------------------------------------------------------------------


class DemucsLite(nn.Module):
    """Two strided conv encoder layers (ReLU, then 1x1 conv + GLU), a BiLSTM-free bottleneck,
    transposed-conv decoder layers with U-Net skips; predicts the tone source from the mix."""

    def __init__(self, ch: int = 16) -> None:
        super().__init__()
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        chin = 1
        for i in range(2):
            c = ch * 2**i
            self.encoder.append(
                nn.Sequential(
                    nn.Conv1d(chin, c, 8, 4, padding=2),
                    nn.ReLU(),
                    nn.Conv1d(c, 2 * c, 1),
                    nn.GLU(1),
                )
            )
            self.decoder.insert(
                0,
                nn.Sequential(
                    nn.Conv1d(c, 2 * c, 1),
                    nn.GLU(1),
                    nn.ConvTranspose1d(c, chin, 8, 4, padding=2),
                    nn.ReLU() if i > 0 else nn.Identity(),
                ),
            )
            chin = c
        self.bottleneck = nn.Conv1d(chin, chin, 3, padding=1)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        x = mix[:, None]
        skips = []
        for enc in self.encoder:
            x = enc(x)
            skips.append(x)
        x = self.bottleneck(x)
        for dec in self.decoder:
            x = dec(x + skips.pop())
        return x[:, 0, : mix.shape[-1]]


def denoise_batches(gen: torch.Generator, batch: int = 16, length: int = 256):
    while True:
        mix, src = two_sources(gen, batch, length)
        yield mix, src[:, 0]


@scenario(
    "h81_demucs_wave_unet",
    "adamax",
    "amp_overflow",
    where="encoder.0.0",
    diverges=160,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 160 a shard stored as int16 sample values",
    onset=160,
)
def h81_amp_demucs_int16_shard(ctx: Context) -> None:
    """Training under fp16 autocast with a GradScaler; at step 160 the loader reaches a shard
    written as raw int16 sample values (not divided by 32768). In float32 the run would only see
    a big loss; in fp16 the first encoder conv's outputs pass 65504 and become inf, so the loss
    is inf and the scaler skips every step after."""
    gen = seeded(8106)
    model = DemucsLite()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    state: dict[str, torch.Tensor] = {}

    def alter(step: int, mix: torch.Tensor, src: torch.Tensor):
        if step >= 160:
            mix, src = (mix * 32767).round(), (src * 32767).round()
            state["bad"] = mix
        return mix, src

    fit(
        ctx,
        model,
        opt,
        denoise_batches(gen),
        200,
        loss_fn=F.l1_loss,
        alter=alter,
        classifier=False,
        scaler=scaler,
        amp=True,
    )

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.float16):
            model(state["bad"])

    first = first_nonfinite_module(model, run)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite before 160, inf from 160", all(finite[:160]) and not any(finite[160:]))
    ctx.check("loss fell before", ctx.losses[150] < 0.7 * ctx.losses[0])
    ctx.check("overflow first in encoder.0.0", first == "encoder.0.0")
    ctx.check("scaler kept skipping (scale fell 2^20x)", ctx.scales[-1] < ctx.scales[150] / 2**20)


# -- ECAPA-TDNN speaker embedder with AAM-softmax ---------------------------------------------------


class SERes2Block(nn.Module):
    def __init__(self, ch: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(ch, ch, 1)
        self.bn1 = nn.BatchNorm1d(ch)
        self.res2 = nn.ModuleList(
            nn.Conv1d(ch // 4, ch // 4, 3, padding=dilation, dilation=dilation) for _ in range(3)
        )
        self.conv2 = nn.Conv1d(ch, ch, 1)
        self.bn2 = nn.BatchNorm1d(ch)
        self.se1 = nn.Linear(ch, ch // 4)
        self.se2 = nn.Linear(ch // 4, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        parts = list(h.chunk(4, 1))
        out = [parts[0]]
        prev = 0
        for i, conv in enumerate(self.res2):
            prev = F.relu(conv(parts[i + 1] + prev))
            out.append(prev)
        h = F.relu(self.bn2(self.conv2(torch.cat(out, 1))))
        s = torch.sigmoid(self.se2(F.relu(self.se1(h.mean(-1)))))
        return x + h * s[..., None]


class AttentiveStatsPool(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.att1 = nn.Conv1d(ch, ch // 2, 1)
        self.att2 = nn.Conv1d(ch // 2, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.att2(torch.tanh(self.att1(x))), -1)
        mu = (w * x).sum(-1)
        sd = ((w * x * x).sum(-1) - mu * mu).clamp(min=1e-5).sqrt()
        return torch.cat([mu, sd], 1)


class AAMSoftmax(nn.Module):
    """Additive angular margin head: s * cos(theta + m) for the target, s * cos(theta) else."""

    def __init__(self, dim: int, classes: int, s: float = 30.0, m: float = 0.2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.s, self.m = s, m
        self.labels: torch.Tensor | None = None

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(emb) @ F.normalize(self.weight).T
        if self.labels is None:
            return self.s * cos
        theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
        target = F.one_hot(self.labels, cos.shape[1]).bool()
        return self.s * torch.where(target, torch.cos(theta + self.m), cos)


class ECAPA(nn.Module):
    def __init__(self, mels: int = 16, ch: int = 32, emb: int = 16, speakers: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv1d(mels, ch, 5, padding=2)
        self.bn = nn.BatchNorm1d(ch)
        self.blocks = nn.Sequential(SERes2Block(ch, 2), SERes2Block(ch, 3))
        self.pool = AttentiveStatsPool(ch)
        self.embed = nn.Linear(2 * ch, emb)
        self.head = AAMSoftmax(emb, speakers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.head(self.embed(self.pool(h)))


def speaker_batches(gen: torch.Generator, batch: int = 32, speakers: int = 8):
    """Each speaker has its own two formant bands and pitch track; features (b, 16, 48)."""
    while True:
        x, y = band_features(gen, batch, speakers, 16, 48)
        yield x, y


@scenario(
    "h81_ecapa_tdnn_aam",
    "sgd_mom",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="AAM margin jumps from 0.2 to 0.6 at step 180 (margin schedule key typo)",
    onset=180,
)
def h81_loss_spike_ecapa_margin_jump(ctx: Context) -> None:
    """The AAM margin was meant to ramp from 0.2 to 0.3 late in training; the config's end value
    is typed 0.6 and the ramp length 0, so at step 180 the margin jumps and the loss with it."""
    gen = seeded(8107)
    model = ECAPA()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        model.head.labels = y
        model.head.m = 0.2 if step < 180 else 0.6
        return x, y

    fit(ctx, model, opt, speaker_batches(gen), 260, alter=alter)
    before = sum(ctx.losses[160:180]) / 20
    ctx.check("loss fell before the jump", before < 0.3 * ctx.losses[0])
    ctx.check("loss at 180 over 3x the steps before", ctx.losses[180] > 3 * before)
    ctx.check("all finite", all(math.isfinite(v) for v in ctx.losses))


# -- SoundStream-style residual-VQ autoencoder ------------------------------------------------------


class VQLayer(nn.Module):
    def __init__(self, codes: int, dim: int) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(codes, dim) * 0.1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = torch.cdist(z, self.codebook)
        q = self.codebook[d.argmin(-1)]
        loss = F.mse_loss(q, z.detach()) + 0.25 * F.mse_loss(z, q.detach())
        return z + (q - z).detach(), loss


class ResidualVQ(nn.Module):
    def __init__(self, layers: int = 3, codes: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VQLayer(codes, dim) for _ in range(layers))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        residual, out, aux = z, torch.zeros_like(z), z.new_zeros(())
        for layer in self.layers:
            q, loss = layer(residual)
            out = out + q
            residual = residual - q.detach()
            aux = aux + loss
        return out, aux


class SoundStreamLite(nn.Module):
    def __init__(self, ch: int = 16, dim: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv1d(1, ch, 7, padding=3),
            nn.ELU(),
            nn.Conv1d(ch, 2 * ch, 8, stride=4, padding=2),
            nn.ELU(),
            nn.Conv1d(2 * ch, dim, 8, stride=4, padding=2),
        )
        self.quantizer = ResidualVQ(dim=dim)
        self.decoder = nn.Sequential(
            nn.ConvTranspose1d(dim, 2 * ch, 8, stride=4, padding=2),
            nn.ELU(),
            nn.ConvTranspose1d(2 * ch, ch, 8, stride=4, padding=2),
            nn.ELU(),
            nn.Conv1d(ch, 1, 7, padding=3),
        )
        self.aux = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x[:, None]).transpose(1, 2)
        q, self.aux = self.quantizer(z)
        return self.decoder(q.transpose(1, 2))[:, 0]


def wave_batches(gen: torch.Generator, batch: int = 16, length: int = 256):
    while True:
        mix, _ = two_sources(gen, batch, length)
        yield mix, mix


@scenario(
    "h81_soundstream_rvq",
    "sg_ademamix",
    "loss_spike",
    where="quantizer",
    diverges=None,
    heldout=True,
    note="dead-code restart resets every codebook to N(0, 2^2) noise at step 200",
    onset=200,
)
def h81_loss_spike_rvq_codebook_reset(ctx: Context) -> None:
    """The dead-code restart meant to re-seed unused codes from encoder outputs resets every code
    of every quantizer, and to noise of the wrong scale (the wrong tensor): at step 200 the
    reconstruction jumps, then recovers."""
    gen = seeded(8108)
    model = SoundStreamLite()
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3, fused=False)

    def restart(step: int) -> None:
        if step == 200:
            with torch.no_grad():
                for layer in model.quantizer.layers:
                    layer.codebook.normal_(0.0, 2.0)

    fit(
        ctx,
        model,
        opt,
        wave_batches(gen),
        300,
        loss_fn=F.l1_loss,
        before=restart,
        extra_loss=lambda step, loss: loss + model.aux,
        classifier=False,
    )
    before = sum(ctx.losses[180:200]) / 20
    ctx.check("loss fell before", before < 0.6 * ctx.losses[0])
    ctx.check("loss at 200 over 2x the steps before", ctx.losses[200] > 2 * before)
    ctx.check("all finite", all(math.isfinite(v) for v in ctx.losses))


# -- LPCNet-style GRU vocoder -------------------------------------------------------------------


def mu_law(x: torch.Tensor, levels: int = 64) -> torch.Tensor:
    mu = levels - 1
    y = torch.sign(x) * torch.log1p(mu * x.abs().clamp(max=1)) / math.log1p(mu)
    return ((y + 1) / 2 * mu).round().long().clamp(0, mu)


class LPCNetLite(nn.Module):
    """Frame-rate conditioning net (convs over 4 'cepstral' features per 16-sample frame) and a
    sample-rate GRU fed the previous mu-law sample's embedding, with a dual-FC-style output."""

    def __init__(self, levels: int = 64, hidden: int = 48) -> None:
        super().__init__()
        self.frame_net = nn.Sequential(
            nn.Conv1d(4, 32, 3, padding=1), nn.Tanh(), nn.Conv1d(32, 16, 3, padding=1), nn.Tanh()
        )
        self.embed = nn.Embedding(levels, 16)
        self.gru = nn.GRU(32, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, levels)

    def forward(self, x) -> torch.Tensor:
        feats, prev = x
        cond = self.frame_net(feats).repeat_interleave(16, dim=2).transpose(1, 2)
        h, _ = self.gru(torch.cat([self.embed(prev), cond], -1))
        return self.fc(h)


def vocoder_batches(gen: torch.Generator, batch: int = 16, frames: int = 5, shift=lambda: 0):
    """Tones with slowly varying pitch; features = per-frame (pitch, energy, 2 noise-free
    spectral slopes); target = the next mu-law sample (``shift()`` more samples ahead when the
    loader's offset bug is on)."""
    n = 16 * frames
    while True:
        f0 = 0.02 + 0.06 * torch.rand(batch, 1, generator=gen)
        drift = 0.01 * torch.rand(batch, 1, generator=gen)
        t = torch.arange(n + 40).float()
        f = f0 + drift * t / n
        amp = 0.3 + 0.6 * torch.rand(batch, 1, generator=gen)
        wave = amp * torch.sin(2 * math.pi * torch.cumsum(f.expand(-1, n + 40), 1))
        frame_f = f[:, : n + 1 : 16][:, :frames]
        feats = torch.stack(
            [10 * frame_f, amp.expand(-1, frames), 5 * drift.expand(-1, frames), frame_f * amp],
            1,
        )
        q = mu_law(wave)
        k = shift()
        yield (feats, q[:, :n]), q[:, 1 + k : n + 1 + k]


def vocoder_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    "h81_lpcnet_gru_vocoder",
    "nadam",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="streaming loader's sample offset drifts by one sample every 6 steps from step 120",
    onset=120,
)
def h81_slow_climb_lpcnet_offset_drift(ctx: Context) -> None:
    """A streaming loader keeps a running offset for the targets and adds the resampling
    remainder into it every chunk instead of resetting it: from step 120 the target slides one
    more sample ahead every 6 steps, and the loss climbs back slowly."""
    gen = seeded(8109)
    model = LPCNetLite()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    step = [0]

    def shift() -> int:
        step[0] += 1
        return max(0, (step[0] - 121) // 6)

    fit(
        ctx,
        model,
        opt,
        vocoder_batches(gen, shift=shift),
        280,
        loss_fn=vocoder_loss,
        classifier=False,
    )
    mean = lambda a, b: sum(ctx.losses[a:b]) / (b - a)  # noqa: E731
    ctx.check("learning before 120", mean(100, 120) < mean(0, 20) - 1.0)
    ctx.check("loss climbed steadily after", mean(260, 280) > mean(190, 210) > mean(110, 130))


# -- ComplEx knowledge-graph embeddings -----------------------------------------------------------


class ComplEx(nn.Module):
    def __init__(self, entities: int = 80, relations: int = 4, rank: int = 16) -> None:
        super().__init__()
        self.ent = nn.Embedding(entities, 2 * rank)
        self.rel = nn.Embedding(relations, 2 * rank)
        nn.init.normal_(self.ent.weight, std=0.1)
        nn.init.normal_(self.rel.weight, std=0.1)
        self.rank = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of (head, relation, every tail): Re(<h, r, conj(t)>)."""
        r_ = self.rank
        h, r = self.ent(x[:, 0]), self.rel(x[:, 1])
        hr = torch.cat(
            [
                h[:, :r_] * r[:, :r_] - h[:, r_:] * r[:, r_:],
                h[:, :r_] * r[:, r_:] + h[:, r_:] * r[:, :r_],
            ],
            1,
        )
        return hr @ self.ent.weight.T


def kg_batches(gen: torch.Generator, batch: int = 64, entities: int = 80, relations: int = 4):
    """Triples from a latent rule: tail = (a_r * head + b_r) mod entities."""
    a = torch.tensor([1, 3, 7, 11])
    b = torch.tensor([5, 17, 2, 40])
    while True:
        h = torch.randint(0, entities, (batch,), generator=gen)
        r = torch.randint(0, relations, (batch,), generator=gen)
        yield torch.stack([h, r], 1), (a[r] * h + b[r]) % entities


@scenario(
    "h81_complex_kg_embedding",
    "adagrad",
    "update_ratio_out_of_range",
    where="rel",
    diverges=None,
    heldout=True,
    note="relation-embedding param group weight_decay 10.0 (typo for 1e-5)",
    onset=0,
)
def h81_update_ratio_complex_rel_lr(ctx: Context) -> None:
    """The relation table gets its own param group for a tiny L2 (1e-5), typed 10.0: Adagrad's
    L2 term pulls the relation entries toward zero every step while the data pushes them back,
    so each step moves them by a large fraction of their size."""
    gen = seeded(8110)
    model = ComplEx()
    opt = torch.optim.Adagrad(
        [
            {"params": model.ent.parameters()},
            {"params": model.rel.parameters(), "weight_decay": 10.0},
        ],
        lr=0.1,
    )
    prev: dict[str, torch.Tensor] = {}
    upd: dict[str, list[float]] = {"ent": [], "rel": []}

    def before(step: int) -> None:
        for name in upd:
            w = getattr(model, name).weight.detach()
            if name in prev:
                upd[name].append(float((w - prev[name]).norm() / (prev[name].norm() + 1e-12)))
            prev[name] = w.clone()

    fit(ctx, model, opt, kg_batches(gen), 300, before=before)
    rel = sorted(upd["rel"][50:])[len(upd["rel"][50:]) // 2]
    ent = sorted(upd["ent"][50:])[len(upd["ent"][50:]) // 2]
    ctx.check("relation update/weight ratio median over 0.1", rel > 0.1)
    ctx.check("relation ratio 30x the entity ratio", rel > 30 * ent)
    ctx.check("all finite", all(math.isfinite(v) for v in ctx.losses))


# -- FiLM-conditioned network ---------------------------------------------------------------------


class FiLMNet(nn.Module):
    """A question embedding produces (gamma, beta) for two FiLM-ed layers over the 'scene'
    features; the answer comes from a linear head."""

    def __init__(self, feats: int = 24, questions: int = 4, hidden: int = 64, answers=8) -> None:
        super().__init__()
        self.question = nn.Embedding(questions, 32)
        self.film = nn.Linear(32, 4 * hidden)
        self.fc1 = nn.Linear(feats, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, answers)
        self.temperature = 1.0

    def forward(self, x) -> torch.Tensor:
        scene, q = x
        g1, b1, g2, b2 = self.film(self.question(q)).chunk(4, -1)
        h = F.relu((1 + g1) * self.fc1(scene) + b1)
        h = F.relu((1 + g2) * self.fc2(h) + b2)
        return self.head(h) / self.temperature


def film_data(gen: torch.Generator, n: int, feats: int = 24, answers: int = 8):
    scene = torch.randn(n, feats, generator=gen)
    q = torch.randint(0, 4, (n,), generator=gen)
    proj = torch.randn(4, feats, answers, generator=torch.Generator().manual_seed(5))
    y = torch.einsum("nf,nfa->na", scene, proj[q]).argmax(-1)
    return scene, q, y


@scenario(
    "h81_film_conditioned_net",
    "sg_adabelief",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="64 training examples, no weight decay, softmax temperature 0.1 (typo for 1.0)",
    onset=0,
)
def h81_softmax_collapse_film_overfit(ctx: Context) -> None:
    """A FiLM model trained on a tiny split (64 scenes, the rest held back by a wrong split
    fraction) with no weight decay and the answer softmax's temperature typed 0.1: it memorises
    the split and its float32 softmax rounds to an exact one-hot on the training rows; the loss
    sits at ~0 and the gradients vanish."""
    gen = seeded(8111)
    scene, q, y = film_data(gen, 64)
    model = FiLMNet()
    model.temperature = 0.1  # typo for 1.0
    opt = sgo.AdaBelief(model.parameters(), lr=1e-2, rectify=False, fused=False)

    def batches():
        while True:
            idx = torch.randperm(64, generator=gen)[:32]
            yield (scene[idx], q[idx]), y[idx]

    fit(ctx, model, opt, batches(), 600)
    with torch.no_grad():
        frac = collapsed_fraction(model((scene, q)), y)
    ctx.check("over 20% of training rows exactly one-hot in float32", frac > 0.2)
    ctx.check("training loss under 1e-4 over the last 100 steps", max(ctx.losses[-100:]) < 1e-4)


# -- DeepONet -------------------------------------------------------------------------------------


class DeepONet(nn.Module):
    def __init__(self, sensors: int = 16, width: int = 48, basis: int = 24) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Linear(sensors, width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.Tanh(),
            nn.Linear(width, basis),
        )
        self.trunk = nn.Sequential(
            nn.Linear(1, width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.Tanh(),
            nn.Linear(width, basis),
        )
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x) -> torch.Tensor:
        u, y = x
        return (self.branch(u)[:, None, :] * self.trunk(y[..., None])).sum(-1) + self.bias


def antiderivative_batches(gen: torch.Generator, batch: int = 32, sensors: int = 16, pts=20):
    """u(x) = sum_k a_k sin(k pi x) + b_k cos(k pi x), k = 1..3, sampled at ``sensors``
    points; targets are its antiderivative from 0 at random points y."""
    xs = torch.linspace(0, 1, sensors)
    k = torch.arange(1, 4).float()
    while True:
        a = torch.randn(batch, 3, generator=gen)
        b = torch.randn(batch, 3, generator=gen)
        u = (a[:, :, None] * torch.sin(math.pi * k[:, None] * xs)).sum(1) + (
            b[:, :, None] * torch.cos(math.pi * k[:, None] * xs)
        ).sum(1)
        y = torch.rand(batch, pts, generator=gen)
        ky = math.pi * k[None, :, None] * y[:, None, :]
        g = (
            (a[:, :, None] * (1 - torch.cos(ky)) + b[:, :, None] * torch.sin(ky))
            / (math.pi * k[None, :, None])
        ).sum(1)
        yield (u, y), g


@scenario(
    "h81_deeponet_antideriv_op",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="linear warm-up to 0.5 (typo for 0.05) over 150 steps, plain SGD",
    onset=60,
)
def h81_sharpness_deeponet_warmup_typo(ctx: Context) -> None:
    """Plain SGD with a linear warm-up whose peak is typed 0.5 instead of 0.05: the loss falls
    while the lr is small, then (past ~step 60, where the intended peak is passed) the steps
    overshoot the curvature, the loss oscillates and blows up."""
    gen = seeded(8112)
    model = DeepONet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def warmup(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 0.5 * min(1.0, (step + 1) / 150)

    fit(
        ctx,
        model,
        opt,
        antiderivative_batches(gen),
        250,
        loss_fn=F.mse_loss,
        before=warmup,
        classifier=False,
    )
    L = ctx.losses
    finite = [v for v in L if math.isfinite(v)]
    ctx.check("loss fell during the early warm-up", min(L[:60]) < 0.5 * L[0])
    ctx.check(
        "then blew up past 100x its best",
        not all(map(math.isfinite, L)) or max(finite) > 100 * min(finite),
    )


# -- MMoE multi-task recommender ------------------------------------------------------------------


class MMoE(nn.Module):
    """Three shared ReLU experts, one softmax gate and one tower per task (click, watch time)."""

    def __init__(self, feats: int = 20, hidden: int = 32, out: int = 16, experts: int = 3):
        super().__init__()
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(feats, hidden), nn.ReLU(), nn.Linear(hidden, out), nn.ReLU())
            for _ in range(experts)
        )
        self.gates = nn.ModuleList(nn.Linear(feats, experts) for _ in range(2))
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(out, 16), nn.ReLU(), nn.Linear(16, 1)) for _ in range(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.stack([ex(x) for ex in self.experts], 1)  # (b, experts, out)
        outs = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            w = torch.softmax(gate(x), -1)[..., None]
            outs.append(tower((w * e).sum(1)))
        return torch.cat(outs, 1)


def rec_batches(gen: torch.Generator, batch: int = 64, feats: int = 20):
    w1 = torch.randn(feats, generator=torch.Generator().manual_seed(11))
    w2 = torch.randn(feats, generator=torch.Generator().manual_seed(12))
    while True:
        x = torch.randn(batch, feats, generator=gen)
        click = (x @ w1 + 0.5 * torch.randn(batch, generator=gen) > 0).float()
        watch = torch.tanh(x @ w2 / 4) + 0.5 * (x[:, 0] * x[:, 1])
        yield x, torch.stack([click, watch], 1)


def mmoe_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out[:, 0], y[:, 0]) + F.mse_loss(out[:, 1], y[:, 1])


@scenario(
    "h81_mmoe_multitask_rec",
    "rmsprop",
    "loss_of_plasticity",
    where=("experts.0.0", "experts.1.0", "experts.2.0"),
    diverges=None,
    heldout=True,
    note="experts' first-layer biases initialised to -4 (a sparse-init constant misapplied)",
    onset=0,
)
def h81_plasticity_mmoe_dead_expert_init(ctx: Context) -> None:
    """An init helper meant to give the *gates* a sparse start sets every expert's first-layer
    bias to -4: on standardised features the pre-activations are all negative, the experts' ReLU
    units never fire, get no gradient, and only the towers' biases learn."""
    gen = seeded(8113)
    model = MMoE()
    for ex in model.experts:
        nn.init.constant_(ex[0].bias, -4.0)
    start = [ex[0].weight.detach().clone() for ex in model.experts]
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, rec_batches(gen), 300, loss_fn=mmoe_loss, classifier=False)
    x, _ = next(rec_batches(seeded(3), batch=512))
    with torch.no_grad():
        dead = [dead_fraction(ex[1](ex[0](x))) for ex in model.experts]
    moved = max(
        float((ex[0].weight.detach() - w).norm())
        for ex, w in zip(model.experts, start, strict=True)
    )
    ctx.check("over 90% of expert hidden units dead at the end", sum(dead) / len(dead) > 0.9)
    ctx.check("expert first layers barely moved", moved < 0.05)


# -- healthy controls -----------------------------------------------------------------------------


def parakeet_tdt() -> nn.Module:
    from transformers.models.parakeet.configuration_parakeet import ParakeetTDTConfig
    from transformers.models.parakeet.modeling_parakeet import ParakeetForTDT

    encoder = dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_kernel_size=5,
        subsampling_factor=4,
        subsampling_conv_channels=8,
        num_mel_bins=16,
        dropout=0.0,
        layerdrop=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    config = ParakeetTDTConfig(
        vocab_size=17,
        decoder_hidden_size=32,
        num_decoder_layers=1,
        encoder_config=encoder,
        blank_token_id=16,
        pad_token_id=15,
        durations=[0, 1, 2],
    )
    return ParakeetForTDT(config)


def utterance_batches(gen: torch.Generator, batch: int = 8, tokens: int = 4, frames: int = 16):
    """Each token (0..14) is 16 frames of its own two lit mel bands; features (b, 64, 16)."""
    while True:
        labels = torch.randint(0, 15, (batch, tokens), generator=gen)
        x = 0.3 * torch.randn(batch, tokens * frames, 16, generator=gen)
        for i in range(tokens):
            rows = torch.arange(batch)
            x[rows, i * frames : (i + 1) * frames, labels[:, i]] += 1.5
            x[rows, i * frames : (i + 1) * frames, (labels[:, i] + 7) % 16] += 1.0
        yield x, labels


@scenario(
    "h81_hf_parakeet_tdt",
    "sg_stablespam",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="token-and-duration transducer on generated band sequences",
)
def h81_healthy_parakeet_tdt_stablespam(ctx: Context) -> None:
    gen = seeded(8114)
    model = parakeet_tdt()
    opt = sgo.StableSPAM(model.parameters(), lr=2e-3, fused=False)

    batches = utterance_batches(gen)
    ctx.attach(model, opt)
    for _ in range(220):
        x, labels = next(batches)
        dec = torch.cat([torch.full((x.shape[0], 1), 16), labels], 1)
        out = model(
            input_features=x,
            attention_mask=torch.ones(x.shape[:2], dtype=torch.long),
            labels=labels,
            decoder_input_ids=dec,
        )
        out.loss.backward()
        opt.step()
        ctx.step(out.loss)
        opt.zero_grad(set_to_none=True)
    mean = lambda a, b: sum(ctx.losses[a:b]) / (b - a)  # noqa: E731
    ctx.check("TDT loss halved", mean(200, 220) < 0.5 * mean(0, 20))
    ctx.check("all finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "h81_hf_qwen2_5_omni_audio_encoder",
    "sg_grams",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="the same tone classifier as the outlier scenario, clean features throughout",
)
def h81_healthy_omni_audio_grams(ctx: Context) -> None:
    gen = seeded(8115)
    model = OmniAudioClassifier()
    opt = sgo.Grams(model.parameters(), lr=2e-3, fused=False)
    fit(ctx, model, opt, band_batches(gen), 200)
    mean = lambda a, b: sum(ctx.losses[a:b]) / (b - a)  # noqa: E731
    ctx.check("loss halved", mean(180, 200) < 0.5 * mean(0, 20))
    ctx.check("all finite", all(math.isfinite(v) for v in ctx.losses))


class SkipGram(nn.Module):
    def __init__(self, nodes: int = 60, dim: int = 16) -> None:
        super().__init__()
        self.center = nn.Embedding(nodes, dim)
        self.context = nn.Embedding(nodes, dim)
        nn.init.normal_(self.center.weight, std=0.1)
        nn.init.zeros_(self.context.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(center, context, 5 negatives) -> 6 logits, the first the positive pair's."""
        c = self.center(x[:, 0])[:, None]
        return (c * self.context(x[:, 1:])).sum(-1)


def sbm_graph(gen: torch.Generator, nodes: int = 60, blocks: int = 3):
    block = torch.arange(nodes) % blocks
    same = block[:, None] == block[None, :]
    prob = torch.where(same, 0.3, 0.02)
    adj = torch.rand(nodes, nodes, generator=gen) < prob
    adj = (adj | adj.T) & ~torch.eye(nodes, dtype=torch.bool)
    return adj


def node2vec_batches(gen: torch.Generator, batch: int = 128, p: float = 1.0, q: float = 0.5):
    """Second-order biased walks (return 1/p, in-out 1/q) of length 8, window 2, 5 uniform
    negatives per pair."""
    adj = sbm_graph(gen)
    n = adj.shape[0]
    while True:
        pairs = []
        while len(pairs) < batch:
            walk = [int(torch.randint(0, n, (1,), generator=gen))]
            for _ in range(7):
                cur = walk[-1]
                nbrs = adj[cur].nonzero().flatten()
                if len(nbrs) == 0:
                    break
                if len(walk) == 1:
                    w = torch.ones(len(nbrs))
                else:
                    prev = walk[-2]
                    w = torch.where(
                        nbrs == prev, 1 / p, torch.where(adj[prev][nbrs], 1.0, 1 / q)
                    ).float()
                walk.append(int(nbrs[torch.multinomial(w, 1, generator=gen)]))
            for i, u in enumerate(walk):
                for v in walk[max(0, i - 2) : i] + walk[i + 1 : i + 3]:
                    pairs.append((u, v))
        pairs_t = torch.tensor(pairs[:batch])
        neg = torch.randint(0, n, (batch, 5), generator=gen)
        yield torch.cat([pairs_t, neg], 1), torch.zeros(batch)


def sgns_loss(logits: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    return -(F.logsigmoid(logits[:, 0]) + F.logsigmoid(-logits[:, 1:]).sum(1)).mean()


@scenario(
    "h81_node2vec_skipgram",
    "asgd",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="skip-gram with negative sampling on biased walks over a 3-block SBM graph",
)
def h81_healthy_node2vec_asgd(ctx: Context) -> None:
    gen = seeded(8116)
    model = SkipGram()
    opt = torch.optim.ASGD(model.parameters(), lr=0.5)
    fit(ctx, model, opt, node2vec_batches(gen), 300, loss_fn=sgns_loss, classifier=False)
    mean = lambda a, b: sum(ctx.losses[a:b]) / (b - a)  # noqa: E731
    ctx.check("loss fell by a third", mean(280, 300) < 0.67 * mean(0, 20))
    ctx.check("all finite", all(math.isfinite(v) for v in ctx.losses))
