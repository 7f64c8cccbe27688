"""Held-out scenarios, set 50 (``h50_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face ViTPose backbone (keypoint heatmaps on generated images), Speech2Text
(encoder-decoder on generated filterbank features), HGNetV2 image classifier (digits), UnivNet
vocoder (behind a hand-written log-power front end) and SpeechT5 speech-to-text (raw generated
tones, one token a clip) from configs; GraphSAGE and a graph attention network on a generated
block-model graph, temporal convolutional forecaster, WaveNet (gated dilated causal
convolutions), Performer-style FAVOR+ linear-attention classifier (fp16 autocast), S4D diagonal state-space
classifier (pixel-by-pixel digits), LSTM seq2seq with Bahdanau attention (sequence reversal).

Optimizers: AdamW, Adam, NAdam, RAdam, Adamax, Adagrad, Adadelta, RMSprop, ASGD, Nesterov and
momentum SGD from ``torch.optim``; AdEMAMix, StableSPAM, AdaBelief and Grams from
``steadygrad.optim``.
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
    lm_loss,
    scenario,
    seeded,
)


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def _first_nonfinite(losses: list[float]) -> int | None:
    return next((i for i, v in enumerate(losses) if not _finite(v)), None)


def _quiet_hf() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


# -- generated data -------------------------------------------------------------------------------


def _pose_batches(gen: torch.Generator, batch: int = 32, size: int = 48, grid: int = 6):
    """Noisy 48x48 RGB images with a red and a green blob; targets are Gaussian heatmaps of the
    two keypoints on the backbone's 6x6 token grid, flattened to (batch, 36, 2)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    gy, gx = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    cell = size / grid
    while True:
        pts = 4 + torch.rand(batch, 2, 2, generator=gen) * (size - 8)
        img = 0.1 * torch.randn(batch, 3, size, size, generator=gen)
        heat = torch.zeros(batch, grid * grid, 2)
        for k in range(2):
            py, px = pts[:, k, 0, None, None], pts[:, k, 1, None, None]
            blob = torch.exp(-((ys - py) ** 2 + (xs - px) ** 2) / (2 * 2.5**2))
            img[:, k] += blob
            cy, cx = py / cell - 0.5, px / cell - 0.5
            h = torch.exp(-((gy - cy) ** 2 + (gx - cx) ** 2) / (2 * 0.8**2))
            heat[:, :, k] = h.reshape(batch, -1)
        yield img, heat


def _speech_tokens(gen: torch.Generator, batch: int, length: int, vocab: int):
    return torch.randint(3, vocab, (batch, length), generator=gen)


def _fbank_batches(gen: torch.Generator, batch: int = 16, length: int = 6, vocab: int = 16):
    """Generated "speech": each token is a fixed 16-bin spectral pattern held for 6 frames, plus
    noise; the target is the token sequence (teacher forcing from a start token 1)."""
    patterns = torch.randn(vocab, 16, generator=torch.Generator().manual_seed(500))
    while True:
        tok = _speech_tokens(gen, batch, length, vocab)
        feats = patterns[tok].repeat_interleave(6, dim=1)
        feats = feats + 0.3 * torch.randn(feats.shape, generator=gen)
        yield (feats, tok), tok


def _tone_batches(gen: torch.Generator, batch: int = 16, length: int = 1, vocab: int = 16):
    """Raw generated audio for SpeechT5: each token is a tone of its own frequency for 128
    samples (random phase and level, light noise); the target is the token sequence."""
    freqs = torch.linspace(0.02, 0.4, vocab)
    t = torch.arange(128, dtype=torch.float32)
    while True:
        tok = _speech_tokens(gen, batch, length, vocab)
        phase = 2 * math.pi * torch.rand(batch, length, 1, generator=gen)
        level = 0.5 + 0.5 * torch.rand(batch, length, 1, generator=gen)
        wave = level * torch.sin(2 * math.pi * freqs[tok][..., None] * t + phase)
        wave = wave.reshape(batch, -1) + 0.05 * torch.randn(batch, length * 128, generator=gen)
        yield (wave, tok), tok


def _series(gen: torch.Generator, batch: int, length: int) -> torch.Tensor:
    """Sums of two sines of random frequency / phase plus a little noise."""
    t = torch.arange(length, dtype=torch.float32)
    f = 0.01 + 0.08 * torch.rand(batch, 2, 1, generator=gen)
    ph = 2 * math.pi * torch.rand(batch, 2, 1, generator=gen)
    amp = 0.5 + torch.rand(batch, 2, 1, generator=gen)
    x = (amp * torch.sin(2 * math.pi * f * t + ph)).sum(1)
    return x + 0.05 * torch.randn(batch, length, generator=gen)


def _forecast_batches(gen: torch.Generator, batch: int = 32, window: int = 48, horizon: int = 8):
    while True:
        s = _series(gen, batch, window + horizon)
        yield s[:, None, :window], s[:, window:]


def _mulaw_batches(gen: torch.Generator, batch: int = 16, length: int = 96, levels: int = 32):
    """Generated audio, mu-law quantised to 32 levels: predict each next sample's level."""
    while True:
        s = _series(gen, batch, length + 1) / 3.0
        s = s.clamp(-1, 1)
        mu = levels - 1
        q = torch.sign(s) * torch.log1p(mu * s.abs()) / math.log1p(mu)
        idx = ((q + 1) / 2 * mu).round().long()
        yield (q[:, None, :-1]), idx[:, 1:]


def _reversal_batches(gen: torch.Generator, batch: int = 32, length: int = 8, vocab: int = 12):
    """Sequence reversal: tokens 2..vocab-1; the target is the source reversed."""
    while True:
        src = torch.randint(2, vocab, (batch, length), generator=gen)
        yield src, src.flip(1)


def _sbm_graph(seed: int, n: int = 240, classes: int = 4, feat: int = 16):
    """A generated stochastic block model: features are a weak class signal in noise, so a node
    needs its neighbours to be classified. Returns features, labels, row-normalised adjacency
    (with self loops) and a train mask."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    same = y[:, None] == y[None, :]
    p = torch.where(same, torch.tensor(0.08), torch.tensor(0.008))
    a = (torch.rand(n, n, generator=g) < p).float()
    a = torch.triu(a, 1)
    a = a + a.T + torch.eye(n)
    centers = torch.randn(classes, feat, generator=g)
    x = 0.6 * centers[y] + torch.randn(n, feat, generator=g)
    train = torch.rand(n, generator=g) < 0.5
    return x, y, a, train


def _graph_batches(x: torch.Tensor, y: torch.Tensor):
    while True:
        yield x, y


# -- models ---------------------------------------------------------------------------------------


class PoseNet(nn.Module):
    """Hugging Face ViTPose backbone (from a config) and a per-token linear heatmap head."""

    def __init__(self) -> None:
        super().__init__()
        _quiet_hf()
        from transformers import VitPoseBackbone, VitPoseBackboneConfig

        config = VitPoseBackboneConfig(
            image_size=[48, 48],
            patch_size=[8, 8],
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=2,
            out_indices=[-1],
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.backbone = VitPoseBackbone(config)
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).feature_maps[-1])


def _speech2text():
    _quiet_hf()
    from transformers import Speech2TextConfig, Speech2TextForConditionalGeneration

    config = Speech2TextConfig(
        vocab_size=16,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=64,
        max_target_positions=32,
        num_conv_layers=2,
        conv_channels=32,
        input_feat_per_channel=16,
        input_channels=1,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    return Speech2TextForConditionalGeneration(config)


def _speecht5():
    _quiet_hf()
    from transformers import SpeechT5Config, SpeechT5ForSpeechToText

    config = SpeechT5Config(
        vocab_size=16,
        hidden_size=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        speech_decoder_prenet_dropout=0.0,
        positional_dropout=0.0,
        mask_time_prob=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        max_text_positions=64,
        max_speech_positions=256,
    )
    return SpeechT5ForSpeechToText(config)


def _shift_right(tok: torch.Tensor, start: int = 1) -> torch.Tensor:
    return torch.cat([torch.full_like(tok[:, :1], start), tok[:, :-1]], 1)


def _hgnet():
    _quiet_hf()
    from transformers import HGNetV2Config, HGNetV2ForImageClassification

    config = HGNetV2Config(
        stem_channels=[3, 8, 8],
        stage_in_channels=[8, 16],
        stage_mid_channels=[8, 16],
        stage_out_channels=[16, 32],
        stage_num_blocks=[1, 1],
        stage_downsample=[False, True],
        stage_light_block=[False, False],
        stage_kernel_size=[3, 3],
        stage_numb_of_layers=[2, 2],
        hidden_sizes=[16, 32],
        depths=[1, 1],
        num_labels=10,
        embedding_size=8,
    )
    return HGNetV2ForImageClassification(config)


def _digits_rgb16(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    img = F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="bilinear", align_corners=False)
    return m(img.expand(-1, 3, -1, -1)).logits


class LogPower(nn.Module):
    """Hand-written front end: 16 frames of 16 samples, power spectrum, log (no floor)."""

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        frames = wave.reshape(wave.shape[0], -1, 16)
        power = torch.fft.rfft(frames, n=32).abs().square()[..., :16]
        return torch.log(power)


class Vocoder(nn.Module):
    """Log-power front end + Hugging Face UnivNet generator (from a config), fixed noise."""

    def __init__(self) -> None:
        super().__init__()
        _quiet_hf()
        from transformers import UnivNetConfig, UnivNetModel

        self.frontend = LogPower()
        config = UnivNetConfig(
            model_in_channels=8,
            model_hidden_channels=8,
            num_mel_bins=16,
            resblock_kernel_sizes=[3, 3],
            resblock_stride_sizes=[4, 4],
            resblock_dilation_sizes=[[1, 3], [1, 3]],
            kernel_predictor_num_blocks=1,
            kernel_predictor_hidden_channels=8,
        )
        self.univnet = UnivNetModel(config)
        self.register_buffer(
            "noise", torch.randn(64, 16, 8, generator=torch.Generator().manual_seed(3))
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        feats = self.frontend(wave)
        noise = self.noise[: wave.shape[0]]
        return self.univnet(input_features=feats, noise_sequence=noise).waveforms


def _wave_batches(gen: torch.Generator, batch: int = 16):
    while True:
        w = _series(gen, batch, 256) / 2.0
        yield w, w


def _vocoder_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    spec = lambda w: torch.fft.rfft(w.reshape(w.shape[0], -1, 32), dim=-1).abs()  # noqa: E731
    return F.l1_loss(out, target) + F.l1_loss(spec(out), spec(target))


class SAGE(nn.Module):
    """GraphSAGE (mean aggregator) node classifier; the graph is fixed, the output is the
    train nodes' logits."""

    def __init__(self, adj: torch.Tensor, train: torch.Tensor, feat: int, classes: int) -> None:
        super().__init__()
        deg = adj.sum(1, keepdim=True)
        self.register_buffer("mean_adj", adj / deg)
        self.register_buffer("train_mask", train)
        self.sage1_self = nn.Linear(feat, 32)
        self.sage1_neigh = nn.Linear(feat, 32, bias=False)
        self.sage2_self = nn.Linear(32, 32)
        self.sage2_neigh = nn.Linear(32, 32, bias=False)
        self.head = nn.Linear(32, classes)
        self.temperature = 1.0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.sage1_self(x) + self.sage1_neigh(self.mean_adj @ x))
        return F.relu(self.sage2_self(h) + self.sage2_neigh(self.mean_adj @ h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.head(self.embed(x)) / self.temperature)[self.train_mask]


class GATLayer(nn.Module):
    def __init__(self, fin: int, fout: int, heads: int) -> None:
        super().__init__()
        self.heads, self.fout = heads, fout
        self.proj = nn.Linear(fin, heads * fout, bias=False)
        self.att_src = nn.Parameter(0.1 * torch.randn(heads, fout))
        self.att_dst = nn.Parameter(0.1 * torch.randn(heads, fout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.proj(x).reshape(-1, self.heads, self.fout)  # (n, H, F)
        e = (h * self.att_dst).sum(-1)[:, None, :] + (h * self.att_src).sum(-1)[None, :, :]
        e = F.leaky_relu(e, 0.2).masked_fill(~mask[..., None], float("-inf"))
        alpha = torch.softmax(e, dim=1)  # (n_dst, n_src, H)
        return torch.einsum("ijh,jhf->ihf", alpha, h).reshape(x.shape[0], -1)


class GAT(nn.Module):
    def __init__(self, adj: torch.Tensor, train: torch.Tensor, feat: int, classes: int) -> None:
        super().__init__()
        self.register_buffer("mask", adj > 0)
        self.register_buffer("train_mask", train)
        self.gat1 = GATLayer(feat, 8, 4)
        self.gat2 = GATLayer(32, classes, 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.gat1(x, self.mask))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gat2(self.embed(x), self.mask)[self.train_mask]


class CausalConv(nn.Conv1d):
    def __init__(self, cin: int, cout: int, k: int, dilation: int) -> None:
        super().__init__(cin, cout, k, dilation=dilation)
        self.left = (k - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


class TCNBlock(nn.Module):
    def __init__(self, ch: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = CausalConv(ch, ch, 3, dilation)
        self.conv2 = CausalConv(ch, ch, 3, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class TCN(nn.Module):
    """Temporal convolutional forecaster: causal dilated residual blocks, last step -> horizon."""

    def __init__(self, ch: int = 24, horizon: int = 8) -> None:
        super().__init__()
        self.inp = nn.Conv1d(1, ch, 1)
        self.blocks = nn.Sequential(*(TCNBlock(ch, d) for d in (1, 2, 4, 8)))
        self.out = nn.Linear(ch, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.inp(x))[:, :, -1])


class WaveNetLayer(nn.Module):
    def __init__(self, ch: int, skip: int, dilation: int) -> None:
        super().__init__()
        self.filt = CausalConv(ch, ch, 2, dilation)
        self.gate = CausalConv(ch, ch, 2, dilation)
        self.res = nn.Conv1d(ch, ch, 1)
        self.skip = nn.Conv1d(ch, skip, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.tanh(self.filt(x)) * torch.sigmoid(self.gate(x))
        return x + self.res(z), self.skip(z)


class WaveNet(nn.Module):
    """WaveNet: causal input conv, gated dilated layers with residual and skip paths, a
    ReLU -> 1x1 -> ReLU -> 1x1 head over the 32 mu-law levels."""

    def __init__(self, ch: int = 24, skip: int = 32, levels: int = 32) -> None:
        super().__init__()
        self.causal = CausalConv(1, ch, 2, 1)
        self.layers = nn.ModuleList(WaveNetLayer(ch, skip, d) for d in (1, 2, 4, 8, 16, 1, 2, 4))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv1d(skip, 48, 1), nn.ReLU(), nn.Conv1d(48, levels, 1)
        )

    def skips(self, x: torch.Tensor) -> torch.Tensor:
        h, total = self.causal(x), 0
        for layer in self.layers:
            h, s = layer(h)
            total = total + s
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.skips(x))  # (B, levels, T)


class FavorFeatures(nn.Module):
    """FAVOR+ positive random features exp(w.x - |x|^2 / 2) / sqrt(m), as written in many ports:
    without subtracting the running maximum before exp (the numerically stable form)."""

    def __init__(self, dim: int, m: int = 32) -> None:
        super().__init__()
        w = torch.randn(m, dim, generator=torch.Generator().manual_seed(dim + m))
        self.register_buffer("w", w)
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = x @ self.w.T.to(x.dtype)
        return torch.exp(proj - x.square().sum(-1, keepdim=True) / 2) / math.sqrt(self.m)


class PerformerAttention(nn.Module):
    def __init__(self, dim: int, heads: int, fp32_kernel: bool = False) -> None:
        super().__init__()
        self.fp32_kernel = fp32_kernel  # the fix: evaluate the kernel in float32
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.features = FavorFeatures(self.hd)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        if self.fp32_kernel:
            with torch.autocast("cpu", enabled=False):
                return self._mix(q.float(), k.float(), v.float(), b, t, d)
        return self._mix(q, k, v, b, t, d)

    def _mix(self, q, k, v, b: int, t: int, d: int) -> torch.Tensor:
        scale = self.hd**-0.25
        qf, kf = self.features(q * scale), self.features(k * scale)
        kv = kf.transpose(-2, -1) @ v  # (b, H, m, hd)
        norm = qf @ kf.sum(-2, keepdim=True).transpose(-2, -1) + 1e-4  # (b, H, t, 1)
        y = (qf @ kv) / norm
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class PerformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, fp32_kernel: bool = False) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = PerformerAttention(dim, heads, fp32_kernel)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class Performer(nn.Module):
    """Performer encoder over a digit's 16 patches of 2x2 pixels, mean-pooled classifier."""

    def __init__(
        self, dim: int = 32, heads: int = 1, layers: int = 2, fp32_kernel: bool = False
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(16, dim))
        self.blocks = nn.ModuleList(PerformerBlock(dim, heads, fp32_kernel) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        h = self.embed(p) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h).mean(1))


class S4DKernel(nn.Module):
    """Diagonal state-space kernel (S4D-Lin init): K[l] = 2 Re(sum_n C_n B_n e^{dt A_n l})."""

    def __init__(self, h: int, n: int = 16) -> None:
        super().__init__()
        self.log_dt = nn.Parameter(
            torch.rand(h) * (math.log(0.1) - math.log(0.005)) + math.log(0.005)
        )
        self.log_a_real = nn.Parameter(torch.full((h, n), math.log(0.5)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(n).float().expand(h, n).clone())
        self.c = nn.Parameter(torch.randn(h, n, 2) * 0.5**0.5)

    def forward(self, length: int) -> torch.Tensor:
        re = -torch.exp(self.log_a_real)
        a = torch.complex(re, self.a_imag)
        dta = torch.exp(self.log_dt)[:, None] * a
        c = torch.view_as_complex(self.c) * (torch.exp(dta) - 1.0) / a
        k = c[..., None] * torch.exp(dta[..., None] * torch.arange(length))
        return 2 * k.sum(1).real  # (h, L)


class S4DLayer(nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.kernel = S4DKernel(h)
        self.d = nn.Parameter(torch.randn(h))
        self.out = nn.Linear(h, h)

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (B, h, L)
        length = u.shape[-1]
        k = self.kernel(length)
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * length) * torch.fft.rfft(k, n=2 * length))
        y = y[..., :length] + u * self.d[:, None]
        return u + self.out(F.gelu(y).transpose(1, 2)).transpose(1, 2)


class S4DNet(nn.Module):
    """Pixel-by-pixel digits (64 steps): encoder, two S4D layers, mean-pool classifier."""

    def __init__(self, h: int = 32) -> None:
        super().__init__()
        self.enc = nn.Linear(1, h)
        self.layer1 = S4DLayer(h)
        self.layer2 = S4DLayer(h)
        self.head = nn.Linear(h, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.enc(x[..., None]).transpose(1, 2)
        u = self.layer2(self.layer1(u))
        return self.head(u.mean(-1))


class Bahdanau(nn.Module):
    def __init__(self, hid: int) -> None:
        super().__init__()
        self.w_q = nn.Linear(hid, hid, bias=False)
        self.w_k = nn.Linear(hid, hid)
        self.v = nn.Linear(hid, 1, bias=False)

    def forward(self, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        e = self.v(torch.tanh(self.w_q(q)[:, None] + self.w_k(keys))).squeeze(-1)
        alpha = torch.softmax(e, dim=-1)
        return (alpha[..., None] * keys).sum(1)


class Seq2Seq(nn.Module):
    """LSTM encoder, LSTMCell decoder with additive (Bahdanau) attention, teacher forcing."""

    def __init__(self, vocab: int = 12, emb: int = 24, hid: int = 48) -> None:
        super().__init__()
        self.src_emb = nn.Embedding(vocab, emb)
        self.tgt_emb = nn.Embedding(vocab, emb)
        self.encoder = nn.LSTM(emb, hid, batch_first=True)
        self.attn = Bahdanau(hid)
        self.decoder = nn.LSTMCell(emb + hid, hid)
        self.out = nn.Linear(2 * hid, vocab)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        keys, (h, c) = self.encoder(self.src_emb(src))
        h, c = h[0], c[0]
        inp = self.tgt_emb(_shift_right(tgt, 1))
        logits = []
        for t in range(tgt.shape[1]):
            ctxv = self.attn(h, keys)
            h, c = self.decoder(torch.cat([inp[:, t], ctxv], -1), (h, c))
            logits.append(self.out(torch.cat([h, ctxv], -1)))
        return torch.stack(logits, 1)


def _seq2seq_loop(
    ctx: Context, model: nn.Module, opt, steps: int, gen, extra=None, probe=None
) -> None:
    """Own loop (the decoder needs the target for teacher forcing)."""
    ctx.attach(model, opt)
    batches = _reversal_batches(gen)
    for step in range(steps):
        src, tgt = next(batches)
        logits = model(src, tgt)
        loss = lm_loss(logits, tgt)
        total = loss + extra(step) if extra is not None else loss
        total.backward()
        if probe is not None:
            probe(step)
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


# == induced faults ===============================================================================


def _pose_logit_probe(model: PoseNet):
    """Largest |q.k * scaling| over both attention layers on a fixed batch."""
    store: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.backbone.encoder.layer):
        attn = layer.attention.attention
        for part in ("query", "key"):
            hooks.append(
                getattr(attn, part).register_forward_hook(
                    lambda m, a, o, key=f"{i}.{part}": store.__setitem__(key, o)
                )
            )
    x, _ = next(_pose_batches(torch.Generator().manual_seed(99), 16))

    def measure() -> tuple[float, float]:
        with torch.no_grad():
            model(x)
        top, ent = 0.0, []
        for i, layer in enumerate(model.backbone.encoder.layer):
            attn = layer.attention.attention
            q = store[f"{i}.query"].reshape(16, -1, 2, 16).transpose(1, 2)
            k = store[f"{i}.key"].reshape(16, -1, 2, 16).transpose(1, 2)
            logits = (q @ k.transpose(-2, -1)) * attn.scaling
            top = max(top, float(logits.abs().max()))
            p = logits.softmax(-1)
            ent.append(
                float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean() / math.log(p.shape[-1]))
            )
        return top, sum(ent) / len(ent)

    return measure, hooks


@scenario(
    "h50_hf_vitpose_keypoints",
    "adamw",
    "attention_logit_growth",
    where=(
        "backbone.encoder.layer.0.attention.attention",
        "backbone.encoder.layer.1.attention.attention",
    ),
    diverges=None,
    heldout=True,
    note="attention scaling typo: head_dim ** 0.5 instead of ** -0.5",
)
def h50_vitpose_attention_scale_typo_adamw(ctx: Context) -> None:
    """A ViTPose keypoint-heatmap model (Hugging Face backbone from a config). Porting a
    reference implementation, the attention scaling is re-set to ``head_dim ** 0.5`` (the minus
    sign of ``** -0.5`` dropped): the q.k logits are 16x what they should be, and AdamW at a
    fine-tuning rate grows q and k further. The logits climb until both layers' attention
    saturates to near one-hot rows."""
    gen = seeded(5001)
    model = PoseNet()
    for layer in model.backbone.encoder.layer:
        attn = layer.attention.attention
        attn.scaling = attn.attention_head_size**0.5
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    measure, hooks = _pose_logit_probe(model)
    top0, ent0 = measure()
    fit(ctx, model, opt, _pose_batches(gen), 200, loss_fn=F.mse_loss, classifier=False)
    top1, ent1 = measure()
    for h in hooks:
        h.remove()
    ctx.check("max attention logit grew 10x", top1 > 10 * top0)
    ctx.check("attention entropy fell below a third of uniform", ent1 < ent0 / 3)


@scenario(
    "h50_hf_speech2text_fbank",
    "adam",
    "output_logit_divergence",
    where=("lm_head", "model.decoder.embed_tokens"),
    diverges="auto",
    heldout=True,
    onset=60,
    note="z-loss written with the wrong sign",
)
def h50_speech2text_zloss_sign_adam(ctx: Context) -> None:
    """A Speech2Text encoder-decoder (Hugging Face, from a config) transcribing generated
    filterbank "speech". From step 60 a z-loss is switched on to keep log Z near 0, but it is
    written ``loss - 1e-2 * logsumexp(logits) ** 2`` (the sign flipped): it now rewards a large
    log-partition, so the head's logits (its weight tied to the decoder embeddings) are pushed up without bound; the drifting logits
    soon distort the softmax and the cross-entropy climbs."""
    gen = seeded(5002)
    model = _speech2text()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    last: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x) -> torch.Tensor:
        feats, tok = x
        logits = m(input_features=feats, decoder_input_ids=_shift_right(tok)).logits
        last["logits"] = logits
        return logits

    lse: list[float] = []

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        z = torch.logsumexp(last["logits"].float(), -1)
        lse.append(float(z.detach().abs().mean()))
        if step >= 60:
            return loss - 1e-1 * z.square().mean()  # meant: + 1e-4 * z.square().mean()
        return loss

    fit(
        ctx,
        model,
        opt,
        _fbank_batches(gen),
        260,
        loss_fn=lm_loss,
        extra_loss=zloss,
        forward=forward,
        classifier=False,
    )
    ctx.check("log Z grew 10x after the switch", max(lse[60:]) > 10 * max(lse[40:60]))
    ctx.check(
        "cross-entropy climbed above its pre-switch level",
        max(v if _finite(v) else 1e9 for v in ctx.losses[100:]) > 3 * min(ctx.losses[40:60]),
    )


@scenario(
    "h50_graphsage_sbm_nodes",
    "nadam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="a contrastive temperature (0.02) reused on the node head",
)
def h50_graphsage_temperature_nadam(ctx: Context) -> None:
    """GraphSAGE (mean aggregator) on a generated block-model graph, full-batch, NAdam. The
    node head reuses the config's ``temperature: 0.02``,
    written for a contrastive pre-training head, dividing its logits by it: the logits are 50x
    larger than the head's own scale, the train nodes are fitted past zero loss, and the
    float32 softmax of most train nodes rounds to exactly one-hot."""
    x, y, adj, train = _sbm_graph(5003)
    seeded(5003)
    model = SAGE(adj, train, 16, 4)
    model.temperature = 0.02  # the contrastive head's temperature, reused by mistake
    opt = torch.optim.NAdam(model.parameters(), lr=5e-2)
    fit(ctx, model, opt, _graph_batches(x, y[train]), 320)
    with torch.no_grad():
        logits = model(x)
    frac = collapsed_fraction(logits, y[train])
    ctx.check("40% of the train nodes' softmax is exactly one-hot", frac >= 0.4)
    ctx.check("loss fell below 1e-4", min(ctx.losses) < 1e-4)


@scenario(
    "h50_tcn_sine_forecaster",
    "nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=100,
    note="warm-up without min(., 1): the LR keeps rising",
)
def h50_tcn_warmup_never_stops_nesterov(ctx: Context) -> None:
    """A temporal convolutional forecaster (causal dilated residual blocks) on generated sine
    mixtures, Nesterov SGD. The warm-up is written ``lr = base * step / warmup`` without the
    ``min(..., 1)``: after step 100 the rate keeps climbing linearly past base and then past
    the stability limit of the loss surface, where the MSE blows up."""
    gen = seeded(5004)
    model = TCN()
    base, warmup = 0.05, 50
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)
    lrs: list[float] = []

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = base * (step + 1) / warmup  # meant: min(1, ...)
        lrs.append(opt.param_groups[0]["lr"])

    fit(
        ctx,
        model,
        opt,
        _forecast_batches(gen),
        400,
        loss_fn=F.mse_loss,
        classifier=False,
        before=schedule,
    )
    bad = _first_nonfinite(ctx.losses)
    end = bad if bad is not None else len(ctx.losses)
    best = min(ctx.losses[:end])
    blow = next((i for i in range(end) if ctx.losses[i] > 20 * best), bad)
    early, warm = sum(ctx.losses[:5]) / 5, sum(ctx.losses[80:100]) / 20
    ctx.check("trained during the warm-up (loss fell 2x by step 100)", warm < early / 2)
    ctx.check("the loss blew up after the rate passed base", blow is not None and blow > 100)


@scenario(
    "h50_tcn_sine_forecaster",
    "adagrad",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=80,
    note="decoupled weight decay with the sign flipped",
)
def h50_tcn_decay_sign_adagrad(ctx: Context) -> None:
    """The temporal convolutional forecaster, Adagrad. A hand-written decoupled weight decay is
    applied after each step from step 80, written ``p.mul_(1 + lr * wd)`` (meant ``1 - lr *
    wd``): every weight inflates by 1.5% a step while Adagrad's own steps keep shrinking, so
    nothing pulls back; the forecasts drift and the MSE creeps up over ~100 steps."""
    gen = seeded(5006)
    model = TCN()
    lr, wd = 0.03, 0.5
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    norms: list[float] = []

    def decay(step: int) -> None:
        with torch.no_grad():
            if step >= 80:
                for p in model.parameters():
                    p.mul_(1 + lr * wd)  # meant: 1 - lr * wd
            norms.append(float(torch.stack([p.norm() for p in model.parameters()]).norm()))

    fit(
        ctx,
        model,
        opt,
        _forecast_batches(gen),
        220,
        loss_fn=F.mse_loss,
        classifier=False,
        before=decay,
    )
    before = min(sum(ctx.losses[i : i + 10]) / 10 for i in range(40, 80))
    after = [v if _finite(v) else 1e9 for v in ctx.losses[-10:]]
    ctx.check("weights grew 3x after the switch", norms[-1] > 3 * norms[79])
    ctx.check("the loss climbed 10x above its pre-switch level", sum(after) / 10 > 10 * before)


@scenario(
    "h50_hf_hgnet_v2_digits",
    "radam",
    "update_ratio_out_of_range",
    where="embedder",
    diverges=None,
    heldout=True,
    note="stem unfrozen after the optimizer was built without it",
)
def h50_hgnet_stem_never_unfrozen_radam(ctx: Context) -> None:
    """An HGNetV2 image classifier (Hugging Face, from a config) on digits upsampled to 16x16.
    The stem is frozen for a linear-probe warm-up and the optimizer is built from the
    parameters that require grad at that moment; at step 40 the stem is "unfrozen"
    (``requires_grad_(True)``) but never added to the optimizer: from then on it receives
    gradients every step and is never updated (an update/weight ratio of exactly 0)."""
    gen = seeded(5007)
    model = _hgnet()
    model.embedder.requires_grad_(False)
    opt = torch.optim.RAdam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    stem = model.embedder.stem1.convolution.weight
    before = stem.detach().clone()
    grads: list[float] = []

    def unfreeze(step: int) -> None:
        if step == 40:
            model.embedder.requires_grad_(True)  # the optimizer never learns of it
        if stem.grad is not None:
            grads.append(float(stem.grad.norm()))

    fit(ctx, model, opt, digit_batches(gen, 48), 200, before=unfreeze, forward=_digits_rgb16)
    ctx.check("stem got gradients after step 40", len(grads) > 100 and min(grads) > 0)
    ctx.check("stem weights never changed", torch.equal(before, stem.detach()))
    ctx.check(
        "the rest trained (loss fell by 30%)", sum(ctx.losses[-10:]) < 0.7 * sum(ctx.losses[:10])
    )


@scenario(
    "h50_wavenet_mulaw",
    "sgd_mom",
    "loss_of_plasticity",
    where="head.1",
    diverges=None,
    heldout=True,
    onset=150,
    note="warm-restart typo: 100x LR for 5 steps",
)
def h50_wavenet_restart_burst_sgd_mom(ctx: Context) -> None:
    """A WaveNet (gated dilated causal convolutions) predicting the next mu-law level of
    generated audio, momentum SGD. A cosine-with-warm-restarts schedule restarts at step 150
    with ``base * 100`` (a units typo) for five steps: the burst throws the head's first 1x1
    convolution so far that the ReLU after it is dead for every input, so no gradient reaches
    it again; the loss is stuck at the level of predicting the marginal."""
    gen = seeded(5008)
    model = WaveNet()
    base = 0.02
    opt = torch.optim.SGD(model.parameters(), lr=base, momentum=0.9)

    def restart(step: int) -> None:
        opt.param_groups[0]["lr"] = base * 100 if 150 <= step < 155 else base

    fit(ctx, model, opt, _mulaw_batches(gen), 260, before=restart)
    x, _ = next(_mulaw_batches(torch.Generator().manual_seed(77), 64))
    with torch.no_grad():
        h = model.head[2](model.head[1](model.head[0](model.skips(x))))
    dead = dead_fraction(h.transpose(1, 2))
    ctx.check("the head's hidden ReLU units are (nearly) all dead", dead >= 0.9)
    before = sum(ctx.losses[140:150]) / 10
    ctx.check(
        "the loss stayed above its pre-burst level", sum(ctx.losses[-20:]) / 20 > 1.2 * before
    )


@scenario(
    "h50_gat_sbm_nodes",
    "adam",
    "adam_second_moment_poisoned",
    where="gat1",
    diverges=None,
    heldout=True,
    onset=60,
    note="aux-loss weight 1e4 (meant 1e-4) for one step",
)
def h50_gat_aux_weight_typo_adam(ctx: Context) -> None:
    """A two-layer graph attention network on a generated block-model graph, full-batch, Adam.
    An auxiliary link-reconstruction loss is weighted from a per-epoch table; at step 60 the
    lookup falls back to the raw config value ``1e4`` (meant ``1e-4``) for that one step. The
    link loss reads the first layer's embeddings, so the gradients of ``gat1``'s tensors are
    ~100x normal once: their Adam second moments jump by ~1e4 and stay there (beta2 = 0.999),
    so for hundreds of steps gat1's updates are ~10-100x smaller while gat2 trains on."""
    x, y, adj, train = _sbm_graph(5009)
    seeded(5009)
    model = GAT(adj, train, 16, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    src, dst = adj.nonzero().T
    neg = torch.randint(0, len(y), (2, len(src)), generator=torch.Generator().manual_seed(1))

    def aux(step: int, loss: torch.Tensor) -> torch.Tensor:
        h = model.embed(x)
        pos = (h[src] * h[dst]).sum(-1)
        negs = (h[neg[0]] * h[neg[1]]).sum(-1)
        link = F.softplus(-pos).mean() + F.softplus(negs).mean()
        weight = 1e4 if step == 60 else 1e-4  # the table missed epoch 3: raw config "1e4"
        return loss + weight * link

    moves: list[float] = []
    prev = [p.detach().clone() for p in model.gat1.parameters()]

    def track(step: int) -> None:
        now = [p.detach().clone() for p in model.gat1.parameters()]
        moves.append(float(sum((a - b).norm() for a, b in zip(now, prev, strict=True))))
        prev[:] = now

    fit(ctx, model, opt, _graph_batches(x, y[train]), 220, extra_loss=aux, before=track)
    # moves[i] is the update made at step i - 1
    pre = sum(moves[40:60]) / 20
    post = sum(moves[70:120]) / 50
    ctx.check(
        "the gradient norm at step 60 was 20x its median before",
        ctx.grad_norms[60] > 20 * sorted(ctx.grad_norms[40:60])[10],
    )
    ctx.check("gat1's updates after step 60 are 10x smaller than before", post < pre / 10)
    ctx.check("loss did not blow up", all(_finite(v) for v in ctx.losses))


@scenario(
    "h50_hf_speecht5_tones",
    "sg_ademamix",
    "data_outlier",
    diverges=200,
    heldout=True,
    onset=200,
    note="one shard with shifted transcripts and clipped noise",
)
def h50_speecht5_bad_shard_ademamix(ctx: Context) -> None:
    """SpeechT5 speech-to-text (Hugging Face, from a config) on raw generated tones, AdEMAMix.
    At step 200 one batch comes from a corrupted shard: the audio is clipped full-scale noise
    and the transcripts are those of other clips. The loss spikes on that batch alone; the
    next batches are clean and the run goes on from where it was."""
    gen = seeded(5010)
    model = _speecht5()
    opt = sgo.AdEMAMix(model.parameters(), lr=3e-3, fused=False)

    def forward(m: nn.Module, x) -> torch.Tensor:
        wave, tok = x
        return m(input_values=wave, decoder_input_ids=_shift_right(tok)).logits

    def alter(step: int, x, y):
        if step == 200:
            wave, tok = x
            g = torch.Generator().manual_seed(200)
            wave = (20 * torch.randn(wave.shape, generator=g)).clamp(-1, 1)
            y = torch.randint(3, 16, tok.shape, generator=g)
            x = (wave, tok)
        return x, y

    fit(
        ctx,
        model,
        opt,
        _tone_batches(gen),
        260,
        loss_fn=lm_loss,
        forward=forward,
        alter=alter,
        classifier=False,
    )
    pre = sum(ctx.losses[190:200]) / 10
    med = sorted(ctx.losses[180:200])[10]
    ctx.check("loss spiked 5x its median at step 200", ctx.losses[200] > 5 * med)
    ctx.check("recovered (last 10 below the pre-spike level)", sum(ctx.losses[-10:]) / 10 < pre)


@scenario(
    "h50_lstm_bahdanau_reversal",
    "sg_stablespam",
    "gradient_spike",
    where="attn.v",
    diverges=None,
    heldout=True,
    onset=150,
    note="penalty coefficient divided by an epoch fraction of ~0",
)
def h50_seq2seq_penalty_spike_stablespam(ctx: Context) -> None:
    """An LSTM encoder-decoder with Bahdanau attention learning to reverse token sequences,
    StableSPAM. A small norm penalty on the attention scoring vector ``v`` is scaled by
    ``1 / max(epoch_fraction, 1e-4)`` (meant to fade in over an epoch); at step 150, an epoch
    boundary, the fraction is 0 and the penalty is 10^4x for that step. ``attn.v``'s gradient
    spikes ~100x once; the optimizer's spike-aware moments absorb it and training goes on."""
    gen = seeded(5011)
    model = Seq2Seq()
    opt = sgo.StableSPAM(model.parameters(), lr=3e-3, fused=False)
    vg: list[float] = []

    def penalty(step: int) -> torch.Tensor:
        frac = ((step - 150) % 150) / 150 if step >= 150 else 1.0
        return 1e-3 * model.attn.v.weight.square().sum() / max(frac, 1e-4)

    def probe(step: int) -> None:
        vg.append(float(model.attn.v.weight.grad.norm()))

    _seq2seq_loop(ctx, model, opt, 260, gen, extra=penalty, probe=probe)
    med = sorted(vg[130:150])[10]
    ctx.check("attn.v's gradient spiked 50x at step 150", vg[150] > 50 * med)
    before = sum(ctx.losses[140:150]) / 10
    ctx.check(
        "no lasting damage (loss 10 steps on below 1.2x before)",
        sum(ctx.losses[160:170]) / 10 < 1.2 * before,
    )


@scenario(
    "h50_hf_univnet_vocoder",
    "adamax",
    "nonfinite",
    where="frontend",
    diverges=170,
    heldout=True,
    onset=170,
    note="log of a silent clip's power, no floor",
)
def h50_univnet_silent_clip_adamax(ctx: Context) -> None:
    """A UnivNet vocoder (Hugging Face, from a config) behind a hand-written log-power front
    end, re-synthesising generated audio, Adamax. The front end takes ``log(power)`` with no
    floor; at step 170 the batch contains one all-zero (silent) clip: its power is exactly 0,
    the front end emits -inf, UnivNet's kernel predictor turns it into NaN and the NaN
    gradients poison every weight."""
    gen = seeded(5012)
    model = Vocoder()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen: dict[int, bool] = {}
    model.frontend.register_forward_hook(
        lambda m, a, o: seen.__setitem__(len(seen), bool(torch.isfinite(o).all()))
    )

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 170:
            x, y = x.clone(), y.clone()
            x[3], y[3] = 0.0, 0.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        _wave_batches(gen),
        200,
        loss_fn=_vocoder_loss,
        alter=alter,
        classifier=False,
    )
    steps = [seen[i] for i in range(len(ctx.losses))]
    ctx.check("front end finite until 170, not at 170", all(steps[:170]) and not steps[170])
    ctx.check("loss finite until 170, NaN from 170", _first_nonfinite(ctx.losses) == 170)
    ctx.check(
        "trained before (loss fell 10%)", sum(ctx.losses[160:170]) < 0.9 * sum(ctx.losses[:10])
    )


@scenario(
    "h50_performer_favor_digits",
    "sg_adabelief",
    "amp_overflow",
    where=("blocks.1.attn", "blocks.0.attn"),
    diverges=53,
    heldout=True,
    note="FAVOR+ attention without the max-subtraction, fp16 autocast",
)
def h50_performer_favor_fp16_adabelief(ctx: Context) -> None:
    """A Performer-style encoder (FAVOR+ positive random features) on digit patches under fp16
    autocast with a GradScaler, AdaBelief. The attention computes exp(w.x - |x|^2/2) features
    and the ratio (phi(q) @ phi(k)^T v) / (phi(q) . sum phi(k)) in fp16 without subtracting the
    maximum first: as q and k grow in training the features span more than fp16's range, the
    normaliser of some queries collapses and the ratio leaves fp16's range. At step 53 the
    second layer's attention output turns non-finite (the same input in float32 is finite),
    two steps later the first layer's too; the loss is NaN at 53 and, from 57, at nearly every
    step."""
    gen = seeded(5013)
    model = Performer()
    opt = sgo.AdaBelief(model.parameters(), lr=1e-2, fused=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    over: list[tuple[int, int, bool]] = []
    busy = [False]

    def hook(i: int):
        def check(m: nn.Module, a, o) -> None:
            if busy[0] or o.dtype != torch.float16 or bool(torch.isfinite(o).all()):
                return
            busy[0] = True
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                fine = bool(torch.isfinite(m.float()(a[0].float())).all())
            busy[0] = False
            over.append((len(ctx.losses), i, fine))

        return check

    for i, block in enumerate(model.blocks):
        block.attn.register_forward_hook(hook(i))
    fit(ctx, model, opt, digit_batches(gen), 120, scaler=scaler, amp=True)
    bad = _first_nonfinite(ctx.losses)
    ctx.check("blocks.1.attn overflowed first, at step 53", bool(over) and over[0][:2] == (53, 1))
    ctx.check("blocks.0.attn overflowed too", any(i == 0 for _, i, _ in over))
    ctx.check("the same input is finite in float32", bool(over) and over[0][2])
    ctx.check("the loss went non-finite at step 53", bad == 53)


# == healthy controls =============================================================================


@scenario("h50_s4d_pixel_digits", "rmsprop", "healthy", heldout=True)
def h50_healthy_s4d_rmsprop(ctx: Context) -> None:
    """S4D classifier on pixel-by-pixel digits, RMSprop."""
    gen = seeded(5020)
    model = S4DNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-3)
    fit(ctx, model, opt, digit_batches(gen, 32), 240)
    ctx.check("loss fell by half", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


@scenario("h50_performer_favor_digits", "asgd", "healthy", heldout=True)
def h50_healthy_performer_fp16_asgd(ctx: Context) -> None:
    """The Performer classifier under fp16 autocast with a GradScaler, its FAVOR+ kernel
    evaluated in float32 (the fix for the overflow case), ASGD."""
    gen = seeded(5021)
    model = Performer(fp32_kernel=True)
    opt = torch.optim.ASGD(model.parameters(), lr=0.3, t0=1e9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    fit(ctx, model, opt, digit_batches(gen), 240, scaler=scaler, amp=True)
    ctx.check("finite throughout", all(_finite(v) for v in ctx.losses))
    ctx.check("loss fell by 35%", sum(ctx.losses[-10:]) < 0.65 * sum(ctx.losses[:10]))


@scenario("h50_hf_univnet_vocoder", "sg_grams", "healthy", heldout=True)
def h50_healthy_univnet_grams(ctx: Context) -> None:
    """UnivNet vocoder behind the log-power front end (no silent clips), Grams."""
    gen = seeded(5022)
    model = Vocoder()
    opt = sgo.Grams(model.parameters(), lr=2e-3, fused=False)
    fit(ctx, model, opt, _wave_batches(gen), 160, loss_fn=_vocoder_loss, classifier=False)
    ctx.check("finite throughout", all(_finite(v) for v in ctx.losses))
    ctx.check("loss fell by 10%", sum(ctx.losses[-10:]) < 0.9 * sum(ctx.losses[:10]))


@scenario("h50_lstm_bahdanau_reversal", "adadelta", "healthy", heldout=True)
def h50_healthy_seq2seq_adadelta(ctx: Context) -> None:
    """LSTM encoder-decoder with Bahdanau attention on sequence reversal, Adadelta."""
    gen = seeded(5023)
    model = Seq2Seq()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    _seq2seq_loop(ctx, model, opt, 240, gen)
    ctx.check("loss fell by half", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))
