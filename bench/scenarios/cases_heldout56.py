"""Held-out scenarios, set 56 (``h56_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face EoMT (universal segmentation on generated scenes, semantic loss),
FastSpeech2-Conformer (text-to-mel on generated phoneme/mel pairs), RT-DETR (object detection
on generated boxes), Mimi (the codec's encoder and decoder as a continuous autoencoder on
generated tones, fp16 autocast) and the Audio Spectrogram Transformer (generated tones, one run
under fp16 autocast) built from configs; a Conv-TasNet two-source separator (SNR with
permutation-invariant training), a SampleRNN (frame-level recurrent tier + sample-level MLP,
mu-law samples), a SincNet front end (learnt band-pass filters) classifying generated tones, an
x-vector speaker net (TDNN + statistics pooling) with an additive-angular-margin softmax, a
spectrogram U-Net denoiser (mask estimation), a mel-spectrogram VAE, a DDSP harmonic
synthesiser (additive synthesis, multi-scale spectral loss).

Optimizers: SGD, Nesterov SGD, Adam, AdamW, NAdam, RAdam, Adamax, Adadelta, ASGD, RMSprop, and
steadygrad.optim's Lion, Grams, SPAM, AdaBelief and AdEMAMix.
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
    fit,
    scenario,
    seeded,
)

# -- generated audio -----------------------------------------------------------------------------

SR = 4000  # sample rate of every generated signal


def _tone(f0: torch.Tensor, amps: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Harmonic tones: f0 (B,), amps (B, H) harmonic amplitudes, n samples, random phases."""
    t = torch.arange(n, dtype=torch.float32) / SR
    h = torch.arange(1, amps.shape[1] + 1, dtype=torch.float32)
    freqs = f0[:, None] * h[None]  # (B, H)
    amps = amps * (freqs < SR / 2)  # no aliasing
    phase = 2 * math.pi * torch.rand(amps.shape, generator=gen)
    waves = torch.sin(2 * math.pi * freqs[..., None] * t + phase[..., None])  # (B, H, n)
    return (amps[..., None] * waves).sum(1)


def _class_tones(gen: torch.Generator, batch: int, n: int, classes: int, noise: float = 0.05):
    """Tones whose class sets the fundamental (with jitter) and the harmonic tilt."""
    y = torch.randint(0, classes, (batch,), generator=gen)
    f0 = 110.0 * 2 ** (y.float() / 2.5) * (1 + 0.03 * torch.randn(batch, generator=gen))
    tilt = 0.4 + 0.5 * (y % 3).float()
    amps = torch.exp(-tilt[:, None] * torch.arange(6, dtype=torch.float32)[None])
    x = _tone(f0, amps, n, gen)
    x = x / x.abs().amax(1, keepdim=True) * (0.3 + 0.6 * torch.rand(batch, 1, generator=gen))
    return x + noise * torch.randn(x.shape, generator=gen), y


def _stft_mag(x: torch.Tensor, n_fft: int = 128, hop: int = 32) -> torch.Tensor:
    """(B, n) -> (B, n_fft // 2 + 1, frames) magnitudes."""
    win = torch.hann_window(n_fft)
    return torch.stft(x, n_fft, hop, window=win, return_complex=True).abs()


def _mel_fb(n_freqs: int, n_mels: int) -> torch.Tensor:
    """(n_mels, n_freqs) triangular filters evenly spaced on the mel scale."""

    def mel(f):
        return 2595 * math.log10(1 + f / 700)

    pts = torch.linspace(mel(0), mel(SR / 2), n_mels + 2)
    hz = 700 * (10 ** (pts / 2595) - 1)
    bins = torch.linspace(0, SR / 2, n_freqs)
    fb = torch.zeros(n_mels, n_freqs)
    for m in range(n_mels):
        lo, c, hi = hz[m], hz[m + 1], hz[m + 2]
        up = (bins - lo) / (c - lo)
        down = (hi - bins) / (hi - c)
        fb[m] = torch.clamp(torch.minimum(up, down), min=0)
    return fb


def _log_mel(x: torch.Tensor, n_mels: int = 32, n_fft: int = 128, hop: int = 32) -> torch.Tensor:
    """(B, n) -> (B, frames, n_mels) log-mel features (with a floor, as a front end should)."""
    mag = _stft_mag(x, n_fft, hop) ** 2
    fb = _mel_fb(mag.shape[1], n_mels)
    return torch.log(fb @ mag + 1e-5).transpose(1, 2)


def _updates(model: nn.Module):
    """Snapshots of the flat parameters, to measure how far a window of steps moved them."""
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


# -- EoMT (Hugging Face, from a config): attention without its 1/sqrt(d) --------------------------


def _eomt(seed: int):
    from transformers import EomtConfig, EomtForUniversalSegmentation

    seeded(seed)
    config = EomtConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_register_tokens=0,
        num_blocks=1,
        num_queries=6,
        num_labels=3,
    )
    return EomtForUniversalSegmentation(config)


def _scene_batches(gen: torch.Generator, batch: int = 8, size: int = 32):
    """Noisy scenes with a bright square (class 1) and a dark disc (class 2) on background 0;
    the label map is at a quarter of the resolution (the mask head's 16x16 grid, halved)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        img = 0.5 + 0.1 * torch.randn(batch, 3, size, size, generator=gen)
        lab = torch.zeros(batch, size, size, dtype=torch.long)
        for b in range(batch):
            r = int(torch.randint(5, 10, (1,), generator=gen))
            cx, cy = (int(v) for v in torch.randint(r, size - r, (2,), generator=gen))
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            s = int(torch.randint(6, 12, (1,), generator=gen))
            sx, sy = (int(v) for v in torch.randint(0, size - s, (2,), generator=gen))
            sq = torch.zeros(size, size, dtype=torch.bool)
            sq[sy : sy + s, sx : sx + s] = True
            lab[b][sq] = 1
            lab[b][disc] = 2
            img[b, :, sq] += 0.4
            img[b, :, disc] -= 0.4
        yield img, lab


def _eomt_semantic(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel class log-probabilities from the query classes and masks (the semantic
    inference of MaskFormer-style models), upsampled to the label size."""
    out = model(pixel_values=x)
    cls = out.class_queries_logits.softmax(-1)[..., :-1]  # drop "no object"
    masks = out.masks_queries_logits.sigmoid()
    seg = torch.einsum("bqc,bqhw->bchw", cls, masks)
    seg = F.interpolate(seg, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return torch.log(seg / seg.sum(1, keepdim=True).clamp_min(1e-6) + 1e-6)


def _attn_logit_max(model: nn.Module, x: torch.Tensor, layer: int) -> float:
    """max |q.k| * scale of one EoMT layer's attention on a batch."""
    att = model.layers[layer].attention
    seen = {}

    def grab(name):
        def hook(_m, _i, out):
            seen[name] = out.detach()

        return hook

    hs = [att.q_proj.register_forward_hook(grab("q")), att.k_proj.register_forward_hook(grab("k"))]
    with torch.no_grad():
        model(pixel_values=x)
    for h in hs:
        h.remove()
    b, t, d = seen["q"].shape
    q = seen["q"].reshape(b, t, att.num_heads, -1).transpose(1, 2)
    k = seen["k"].reshape(b, t, att.num_heads, -1).transpose(1, 2)
    return float((q @ k.transpose(-1, -2) * att.scale).abs().max())


@scenario(
    "h56_hf_eomt_scenes",
    "adamw",
    "attention_logit_growth",
    where=("layers.0.attention", "layers.1.attention"),
    diverges=None,
    heldout=True,
    note="attention scale 1 instead of 1/sqrt(d), no QK-norm, high LR",
)
def h56_eomt_attention_unscaled_adamw(ctx: Context) -> None:
    """EoMT's attention is ported from a codebase whose q_proj folds in the 1/sqrt(d) factor,
    so the port sets ``attention.scale = 1``; with no QK-norm and a high AdamW rate the q and k
    projections grow and the pre-softmax logits q.k grow many times over: attention saturates
    onto a few patches."""
    gen = torch.Generator().manual_seed(101)
    model = _eomt(101)
    for layer in model.layers:
        layer.attention.scale = 1.0  # meant: head_dim ** -0.5 (q was pre-scaled upstream)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-2, weight_decay=0.0)
    probe, _ = next(_scene_batches(torch.Generator().manual_seed(7)))
    start = [_attn_logit_max(model, probe, i) for i in (0, 1)]
    fit(
        ctx,
        model,
        opt,
        _scene_batches(gen),
        300,
        forward=_eomt_semantic,
        loss_fn=lambda logp, y: F.nll_loss(logp, y),
        classifier=False,
    )
    end = [_attn_logit_max(model, probe, i) for i in (0, 1)]
    ctx.extra = {"attn_max_start": start, "attn_max_end": end}
    ctx.check("attention logits grew 10x", max(e / s for s, e in zip(start, end, strict=True)) > 10)


# -- x-vector with an additive-angular-margin softmax ---------------------------------------------


def _speaker_batches(gen: torch.Generator, batch: int = 32, speakers: int = 8, n: int = 1024):
    """Generated "voices": a speaker sets the pitch range and two formant-like resonances that
    shape the harmonic amplitudes; each utterance jitters the pitch. Log-mel frames out."""
    base_f0 = 90.0 + 25.0 * torch.arange(speakers, dtype=torch.float32)
    formants = torch.stack(
        [300 + 90 * (torch.arange(speakers) % 4), 900 + 150 * (torch.arange(speakers) // 4)], 1
    ).float()
    while True:
        y = torch.randint(0, speakers, (batch,), generator=gen)
        f0 = base_f0[y] * (1 + 0.08 * torch.randn(batch, generator=gen))
        freqs = f0[:, None] * torch.arange(1, 13, dtype=torch.float32)
        fm = formants[y]
        amps = torch.exp(-(((freqs[..., None] - fm[:, None]) / 150) ** 2)).sum(-1) + 0.05
        x = _tone(f0, amps, n, gen)
        x = x / x.abs().amax(1, keepdim=True) + 0.05 * torch.randn(batch, n, generator=gen)
        yield _log_mel(x, n_mels=24), y


class AAMHead(nn.Module):
    """Additive angular margin softmax (ArcFace / AAM): s * cos(theta + m) for the target."""

    def __init__(self, dim: int, classes: int, margin: float = 0.2, scale: float = 30.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.margin = margin
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.target: torch.Tensor | None = None

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(emb, dim=-1) @ F.normalize(self.weight, dim=-1).T
        if self.training and self.target is not None:
            theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
            onehot = F.one_hot(self.target, cos.shape[1]).bool()
            cos = torch.where(onehot, torch.cos(theta + self.margin), cos)
        return self.scale * cos


class XVector(nn.Module):
    """TDNN frame layers (dilated 1-D convolutions), mean+std statistics pooling, an embedding
    layer and a speaker head (a margin softmax, or the original plain softmax)."""

    def __init__(self, head: nn.Module, mels: int = 24, width: int = 64, emb: int = 32):
        super().__init__()
        self.tdnn1 = nn.Conv1d(mels, width, 5, padding=2)
        self.tdnn2 = nn.Conv1d(width, width, 3, dilation=2, padding=2)
        self.tdnn3 = nn.Conv1d(width, width, 3, dilation=3, padding=3)
        self.segment = nn.Linear(2 * width, emb)
        self.head = head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h = feats.transpose(1, 2)
        h = F.relu(self.tdnn1(h))
        h = F.relu(self.tdnn2(h))
        h = F.relu(self.tdnn3(h))
        stats = torch.cat([h.mean(-1), h.std(-1)], 1)
        return self.head(self.segment(stats))


def _with_targets(model: XVector, batches):
    for x, y in batches:
        model.head.target = y
        yield x, y


@scenario(
    "h56_xvector_aam_speakers",
    "nadam",
    "output_logit_divergence",
    where="head",
    diverges="auto",
    heldout=True,
    note="z-loss added with the wrong sign",
)
def h56_xvector_zloss_sign_nadam(ctx: Context) -> None:
    """An x-vector trained with the original paper's plain softmax head (before switching to
    AAM) and a z-loss meant to keep log Z near 0: it is subtracted instead of added, so the
    loss rewards a larger log Z; the log-partition and every output logit climb (10x in ~100 steps)
    while the cross-entropy stays low (the softmax is shift-invariant), until the logits are so
    large that the training breaks (~step 140) and they run away."""
    gen = seeded(102)
    model = XVector(nn.Linear(32, 8))
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    probe, _ = next(_speaker_batches(torch.Generator().manual_seed(8), 64))
    with torch.no_grad():
        start = float(model(probe).logsumexp(-1).abs().mean())
        start_max = float(model(probe).abs().max())
    zs = []

    def zloss_bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        z = last["logits"].float().logsumexp(-1)
        zs.append(float(z.detach().mean()))
        return loss - 1e-4 * (z**2).mean()  # meant: loss + 1e-4 * z**2

    last = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        last["logits"] = m(x)
        return last["logits"]

    fit(ctx, model, opt, _speaker_batches(gen), 200, forward=forward, extra_loss=zloss_bug)
    with torch.no_grad():
        end = float(model(probe).logsumexp(-1).abs().mean())
        end_max = float(model(probe).abs().max())
    ctx.extra = {"logZ": (start, end), "logit_max": (start_max, end_max), "z": zs[::20]}
    ctx.check("log Z grew 20x", end > 20 * max(start, 1.0))
    ctx.check("output logits grew 20x", end_max > 20 * start_max)
    broke = next(i for i, v in enumerate(ctx.losses) if not v < 5.0)
    ctx.check("log Z had climbed 10x before the loss broke", zs[broke - 5] > 10 * zs[0])


@scenario(
    "h56_xvector_aam_speakers",
    "sg_adabelief",
    "healthy",
    heldout=True,
    note="fixed AAM scale 30, margin 0.2",
)
def h56_xvector_aam_healthy_adabelief(ctx: Context) -> None:
    gen = seeded(103)
    model = XVector(AAMHead(32, 8))
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3, fused=False)
    fit(ctx, model, opt, _with_targets(model, _speaker_batches(gen)), 250)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.5 * sum(ctx.losses[:20]))


# -- SincNet front end ---------------------------------------------------------------------------


class SincConv(nn.Module):
    """SincNet's first layer: band-pass filters parametrised by learnt low cut-off and band."""

    def __init__(self, filters: int = 16, kernel: int = 63):
        super().__init__()
        low = torch.linspace(40, SR / 2 - 300, filters)
        self.low_hz = nn.Parameter(low / SR)
        self.band_hz = nn.Parameter(torch.full((filters,), 150.0 / SR))
        n = torch.arange(-(kernel // 2), kernel // 2 + 1, dtype=torch.float32)
        self.register_buffer("n", n)
        self.register_buffer("window", torch.hamming_window(kernel, periodic=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low_hz.abs() + 10 / SR
        high = (low + self.band_hz.abs()).clamp(max=0.5)

        def lowpass(f):  # ideal low-pass at normalised frequency f
            return 2 * f[:, None] * torch.sinc(2 * f[:, None] * self.n[None])

        filt = (lowpass(high) - lowpass(low)) * self.window
        filt = filt / filt.abs().amax(1, keepdim=True)
        return F.conv1d(x[:, None], filt[:, None], padding=self.n.numel() // 2)


class SincNet(nn.Module):
    def __init__(self, classes: int = 6, filters: int = 16):
        super().__init__()
        self.sinc = SincConv(filters)
        self.norm = nn.GroupNorm(1, filters)
        self.conv = nn.Conv1d(filters, 32, 5, stride=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool1d(self.sinc(x).abs(), 4)
        h = F.leaky_relu(self.norm(h))
        h = F.leaky_relu(self.conv(h))
        return self.head(h.mean(-1))


@scenario(
    "h56_sincnet_tones",
    "rmsprop",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="temperature 100 applied as its inverse, small fixed set",
)
def h56_sincnet_temperature_inverted_rmsprop(ctx: Context) -> None:
    """A SincNet tone classifier fine-tuned on a small fixed set of 48 clips; the head's
    softening temperature of 100 is applied as ``logits / 0.01`` (the inverse): the logits are
    10^4 times too large, the training rows are fitted at once and their float32 softmax rounds to
    exactly one-hot (zero gradient) for over a third of the set within 250 steps."""
    gen = seeded(104)
    x, y = _class_tones(gen, 48, 512, 6)
    model = SincNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)

    def full():
        while True:
            yield x, y

    def forward(m, inp):
        return m(inp) / 0.01  # meant: m(inp) / 100

    fit(ctx, model, opt, full(), 250, forward=forward)
    with torch.no_grad():
        frac = collapsed_fraction(forward(model, x), y)
    ctx.extra = {"collapsed": frac}
    ctx.check("a third of the rows collapsed to one-hot", frac > 1 / 3)


# -- Conv-TasNet two-source separator ------------------------------------------------------------


def _mixtures(gen: torch.Generator, batch: int = 8, n: int = 1024):
    """Two harmonic sources (a low and a high voice, random pitches and tilts) and their sum."""
    f_lo = 100 + 100 * torch.rand(batch, generator=gen)
    f_hi = 350 + 250 * torch.rand(batch, generator=gen)
    tilt = 0.3 + 0.7 * torch.rand(2, batch, 1, generator=gen)
    h = torch.arange(5, dtype=torch.float32)[None]
    s1 = _tone(f_lo, torch.exp(-tilt[0] * h), n, gen)
    s2 = _tone(f_hi, torch.exp(-tilt[1] * h), n, gen)
    gain = 0.5 + torch.rand(batch, 1, generator=gen)
    src = torch.stack([s1, gain * s2], 1)
    src = src / src.abs().amax((1, 2), keepdim=True)
    yield_x = src.sum(1)
    return yield_x, src


def _mixture_batches(gen: torch.Generator, batch: int = 8, n: int = 1024):
    while True:
        yield _mixtures(gen, batch, n)


def _snr(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    noise = est - ref
    return 10 * torch.log10(ref.pow(2).sum(-1) / (noise.pow(2).sum(-1) + 1e-8) + 1e-8)


def _pit_snr_loss(est: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Negative SNR (dB) under the better of the two source permutations (PIT)."""
    a = _snr(est, src).mean(1)
    b = _snr(est.flip(1), src).mean(1)
    return -torch.maximum(a, b).mean()


class TCNBlock(nn.Module):
    def __init__(self, ch: int, hidden: int, dilation: int):
        super().__init__()
        self.inp = nn.Conv1d(ch, hidden, 1)
        self.act1 = nn.PReLU()
        self.norm1 = nn.GroupNorm(1, hidden)
        self.depthwise = nn.Conv1d(
            hidden, hidden, 3, dilation=dilation, padding=dilation, groups=hidden
        )
        self.act2 = nn.PReLU()
        self.norm2 = nn.GroupNorm(1, hidden)
        self.out = nn.Conv1d(hidden, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(self.act1(self.inp(x)))
        h = self.norm2(self.act2(self.depthwise(h)))
        return x + self.out(h)


class ConvTasNet(nn.Module):
    """Learnt encoder (1-D conv), a TCN separator that estimates a mask per source, and a
    learnt decoder (transposed conv)."""

    def __init__(self, basis: int = 32, ch: int = 32, hidden: int = 64, blocks: int = 4):
        super().__init__()
        self.encoder = nn.Conv1d(1, basis, 16, stride=8, bias=False)
        self.norm = nn.GroupNorm(1, basis)
        self.bottleneck = nn.Conv1d(basis, ch, 1)
        self.tcn = nn.Sequential(*(TCNBlock(ch, hidden, 2**i) for i in range(blocks)))
        self.mask = nn.Conv1d(ch, 2 * basis, 1)
        self.decoder = nn.ConvTranspose1d(basis, 1, 16, stride=8, bias=False)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        w = F.relu(self.encoder(mix[:, None]))
        h = self.tcn(self.bottleneck(self.norm(w)))
        m = torch.sigmoid(self.mask(h)).reshape(mix.shape[0], 2, w.shape[1], -1)
        out = self.decoder((m * w[:, None]).flatten(0, 1))
        return out.reshape(mix.shape[0], 2, -1)[..., : mix.shape[-1]]


@scenario(
    "h56_conv_tasnet_separator",
    "nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="warm-up target 0.5 typed for 0.05",
)
def h56_tasnet_warmup_typo_nesterov(ctx: Context) -> None:
    """Conv-TasNet with Nesterov SGD and a linear warm-up whose target rate was typed 0.5
    instead of 0.05: the separator learns while the rate is small, then, as the rate passes
    the stability limit 2/curvature on its way up, SNR collapses and the loss blows up."""
    gen = seeded(105)
    model = ConvTasNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)
    peak, warm = 0.5, 150  # meant: peak 0.05

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = peak * min(1.0, (step + 1) / warm)

    fit(
        ctx,
        model,
        opt,
        _mixture_batches(gen),
        200,
        loss_fn=_pit_snr_loss,
        before=schedule,
        classifier=False,
    )
    losses = ctx.losses
    best = min(v for v in losses if _finite(v))
    ctx.extra = {"best": best}
    ctx.check("separated first (SNR above 5 dB)", best < -5)
    ctx.check("then broke: loss 10 dB above its best", not all(v < best + 10 for v in losses[-20:]))


@scenario("h56_conv_tasnet_separator", "sg_spam", "healthy", heldout=True)
def h56_tasnet_healthy_spam(ctx: Context) -> None:
    gen = seeded(106)
    model = ConvTasNet()
    opt = sgo.SPAM(model.parameters(), lr=2e-3, fused=False)
    fit(ctx, model, opt, _mixture_batches(gen), 200, loss_fn=_pit_snr_loss, classifier=False)
    ctx.check("SNR improved by 5 dB", sum(ctx.losses[-20:]) / 20 < sum(ctx.losses[:5]) / 5 - 5)


# -- SampleRNN -----------------------------------------------------------------------------------

LEVELS = 64  # mu-law quantisation levels


def _mu_law(x: torch.Tensor) -> torch.Tensor:
    mu = LEVELS - 1
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return ((y + 1) / 2 * mu).round().long().clamp(0, mu)


def _sample_batches(gen: torch.Generator, batch: int = 16, frames: int = 32, frame: int = 8):
    """Mu-law quantised tones; (codes of the whole clip, same codes as targets)."""
    n = (frames + 1) * frame
    while True:
        f0 = 150 + 250 * torch.rand(batch, generator=gen)
        amps = torch.exp(-0.8 * torch.arange(4, dtype=torch.float32))[None].repeat(batch, 1)
        x = _tone(f0, amps, n, gen)
        x = 0.9 * x / x.abs().amax(1, keepdim=True)
        codes = _mu_law(x + 0.01 * torch.randn(x.shape, generator=gen))
        yield codes, codes


class SampleRNN(nn.Module):
    """Two tiers: a frame-level RNN over frames of 8 samples conditions a sample-level MLP
    that predicts each next sample (softmax over 64 mu-law levels) from the previous 8."""

    def __init__(self, frame: int = 8, hidden: int = 64, emb: int = 16):
        super().__init__()
        self.frame = frame
        self.frame_rnn = nn.RNN(frame, hidden, nonlinearity="relu", batch_first=True)
        self.upsample = nn.Linear(hidden, frame * hidden)
        self.embed = nn.Embedding(LEVELS, emb)
        self.sample_in = nn.Linear(frame * emb, hidden)
        self.sample_mlp = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, LEVELS)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        b, n = codes.shape
        f = self.frame
        x = codes[:, : n - f].float() / (LEVELS - 1) * 2 - 1
        cond, _ = self.frame_rnn(x.reshape(b, -1, f))  # frame t sees frames <= t
        cond = self.upsample(cond).reshape(b, -1, cond.shape[-1])  # one vector per sample
        e = self.embed(codes)  # the previous f samples of each predicted sample
        windows = e[:, :-1].unfold(1, f, 1)[:, : cond.shape[1]]  # (b, n-f, emb, f)
        h = self.sample_in(windows.flatten(2)) + cond
        return self.out(self.sample_mlp(h))  # logits for codes[:, f:]


def _sample_loss(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    target = codes[:, -logits.shape[1] :]
    return F.cross_entropy(logits.reshape(-1, LEVELS), target.reshape(-1))


@scenario(
    "h56_samplernn_tiers",
    "sgd",
    "exploding_gradients",
    where="frame_rnn",
    diverges="auto",
    heldout=True,
    note="recurrent weight decayed with the wrong sign, no clipping",
)
def h56_samplernn_recurrent_growth_sgd(ctx: Context) -> None:
    """The frame tier is an IRNN (ReLU recurrence, identity initialisation, a recipe that
    relies on gradient clipping, here dropped). A hand-written decay meant to keep the
    recurrent weight's radius below 1 (``w *= 1 - lr * wd``) has its sign flipped, so the
    recurrent weight grows ~1% a step: once its spectral radius passes 1, back-propagation
    through 32 frames multiplies the gradient by it at every frame, the gradient norm climbs
    step after step (frame_rnn first) and the run breaks."""
    gen = seeded(107)
    model = SampleRNN()
    with torch.no_grad():
        model.frame_rnn.weight_hh_l0.copy_(torch.eye(64))
        model.frame_rnn.bias_hh_l0.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lr, wd = 0.05, 0.2
    radius = []

    def decay(step: int) -> None:
        with torch.no_grad():
            w = model.frame_rnn.weight_hh_l0
            w.mul_(1 + lr * wd)  # meant: 1 - lr * wd
            if step % 10 == 0 and bool(torch.isfinite(w).all()):
                radius.append(round(float(torch.linalg.eigvals(w).abs().max()), 2))

    norms: dict[str, list[float]] = {"frame_rnn": [], "sample_mlp": []}
    model.frame_rnn.weight_hh_l0.register_hook(lambda g: norms["frame_rnn"].append(float(g.norm())))
    model.sample_mlp[1].weight.register_hook(lambda g: norms["sample_mlp"].append(float(g.norm())))
    fit(
        ctx,
        model,
        opt,
        _sample_batches(gen),
        100,
        loss_fn=_sample_loss,
        classifier=False,
        before=decay,
    )

    def first_10x(series: list[float]) -> int:
        base = sorted(series[:20])[10]
        return next((i for i, v in enumerate(series) if not v < 10 * base), len(series))

    ctx.check(
        "frame_rnn's gradient grew 10x before the sample tier's",
        first_10x(norms["frame_rnn"]) < first_10x(norms["sample_mlp"]),
    )
    g = ctx.grad_norms
    ctx.extra = {"radius": radius}
    early = sorted(g[:20])[10]
    first = next(i for i, v in enumerate(g) if not v < 100 * early)
    ctx.check("gradient norm grew 100x over its early level", first < len(g))
    ctx.check(
        "gradient climbed over 20+ steps (not one spike)",
        all(v > 3 * early for v in g[first - 10 : first]) and first >= 20,
    )


# -- spectrogram U-Net denoiser ------------------------------------------------------------------


def _noisy_spec_batches(gen: torch.Generator, batch: int = 16, n: int = 1024):
    """(log-magnitude of tone + noise, ideal ratio mask) pairs, 32 frequency bins x 32 frames."""
    while True:
        clean, _ = _class_tones(gen, batch, n, 6, noise=0.0)
        noise = (0.1 + 0.3 * torch.rand(batch, 1, generator=gen)) * torch.randn(
            batch, n, generator=gen
        )
        c = _stft_mag(clean, 62, 32)[:, :32, :32]
        m = _stft_mag(clean + noise, 62, 32)[:, :32, :32]
        mask = (c / (m + 1e-6)).clamp(0, 1)
        yield torch.log1p(m)[:, None], mask[:, None]


class SpecUNet(nn.Module):
    def __init__(self, ch: int = 16):
        super().__init__()
        self.enc1 = nn.Conv2d(1, ch, 3, padding=1)
        self.enc2 = nn.Conv2d(ch, 2 * ch, 3, padding=1, stride=2)
        self.mid = nn.Conv2d(2 * ch, 2 * ch, 3, padding=1)
        self.up = nn.ConvTranspose2d(2 * ch, ch, 2, stride=2)
        self.dec = nn.Conv2d(2 * ch, ch, 3, padding=1)
        self.out = nn.Conv2d(ch, 1, 1)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output of each ReLU, by the convolution that feeds it."""
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(e1))
        m = F.relu(self.mid(e2))
        d = F.relu(self.dec(torch.cat([self.up(m), e1], 1)))
        return {"enc1": e1, "enc2": e2, "mid": m, "dec": d}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.features(x)["dec"]))


@scenario(
    "h56_spec_unet_denoiser",
    "adamax",
    "loss_of_plasticity",
    where="enc2",
    diverges=None,
    heldout=True,
    onset=100,
    note="checkpoint conversion folds a norm into enc2's bias with the wrong sign",
)
def h56_unet_folded_bias_sign_adamax(ctx: Context) -> None:
    """A spectrogram U-Net denoiser (ideal-ratio-mask target). At step 100 the run resumes
    from a checkpoint converted from another framework, where a normalisation layer was
    folded into enc2: the converter adds the normalisation's mean term to the bias instead of
    subtracting it, so enc2's biases come out several units too low. Its ReLU channels are
    silent on every input from then on, get no gradient to recover, and the denoiser is left
    to learn through the skip connection around them."""
    gen = seeded(108)
    model = SpecUNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    probe, _ = next(_noisy_spec_batches(torch.Generator().manual_seed(9), 64))

    def resume(step: int) -> None:
        if step == 100:
            with torch.no_grad():
                pre = model.enc2(F.relu(model.enc1(probe)))
                folded = pre.amax((0, 2, 3)).abs() + 1.0  # the mean term, applied with + not -
                model.enc2.bias.sub_(2 * folded)

    with torch.no_grad():
        start = {k: dead_fraction(v) for k, v in model.features(probe).items()}
    fit(
        ctx,
        model,
        opt,
        _noisy_spec_batches(gen),
        220,
        loss_fn=F.mse_loss,
        classifier=False,
        before=resume,
    )
    with torch.no_grad():
        dead = {k: dead_fraction(v) for k, v in model.features(probe).items()}
    ctx.extra = {"dead_start": start, "dead_end": dead}
    ctx.check("enc2 alive at the start", start["enc2"] < 0.1)
    ctx.check("three quarters of enc2's channels dead at the end", dead["enc2"] >= 0.75)


# -- FastSpeech2-Conformer (Hugging Face, from a config) -----------------------------------------


def _fs2(seed: int):
    from transformers import FastSpeech2ConformerConfig, FastSpeech2ConformerModel

    seeded(seed)
    zero = {
        k: 0.0
        for k in (
            "encoder_dropout_rate",
            "encoder_positional_dropout_rate",
            "encoder_attention_dropout_rate",
            "decoder_dropout_rate",
            "decoder_positional_dropout_rate",
            "decoder_attention_dropout_rate",
            "duration_predictor_dropout_rate",
            "speech_decoder_postnet_dropout",
            "energy_predictor_dropout",
            "pitch_predictor_dropout",
        )
    }
    config = FastSpeech2ConformerConfig(
        hidden_size=32,
        vocab_size=20,
        num_mel_bins=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_linear_units=64,
        decoder_linear_units=64,
        speech_decoder_postnet_layers=2,
        speech_decoder_postnet_units=32,
        duration_predictor_channels=32,
        energy_predictor_channels=32,
        pitch_predictor_channels=32,
        pitch_predictor_layers=2,
        decoder_kernel_size=7,
        **zero,
    )
    return FastSpeech2ConformerModel(config)


def _phoneme_batches(gen: torch.Generator, batch: int = 8, length: int = 8):
    """Generated "phonemes": each token id fixes its duration (1-3 frames), pitch, energy and
    a mel template; the target mel is the templates repeated for their durations."""
    g = torch.Generator().manual_seed(5)
    templates = torch.randn(20, 16, generator=g)
    pitch = torch.randn(20, generator=g)
    energy = torch.randn(20, generator=g)
    while True:
        ids = torch.randint(1, 20, (batch, length), generator=gen)
        dur = ids % 3 + 1
        frames = int(dur.sum(1).max())
        mel = torch.zeros(batch, frames, 16)
        for b in range(batch):
            rep = templates[ids[b]].repeat_interleave(dur[b], 0)
            mel[b, : len(rep)] = rep
        inputs = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "spectrogram_labels": mel,
            "duration_labels": dur,
            "pitch_labels": pitch[ids][..., None],
            "energy_labels": energy[ids][..., None],
        }
        yield inputs, ids


def _fs2_loss(model: nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs, return_dict=True).loss


@scenario(
    "h56_hf_fastspeech2_conformer_tts",
    "sg_ademamix",
    "update_ratio_out_of_range",
    where="decoder",
    diverges=None,
    heldout=True,
    note="decoder left frozen after a predictor-only warm-up stage",
)
def h56_fs2_decoder_left_frozen_ademamix(ctx: Context) -> None:
    """FastSpeech2-Conformer trained in two stages: first only the variance predictors (the
    conformer decoder frozen), then everything. The unfreezing loop iterates over
    ``model.encoder`` instead of ``model.decoder``: the decoder's parameters keep
    requires_grad=False, get no gradient and never move (update/weight ratio 0) while the rest
    trains around them."""
    gen = seeded(109)
    model = _fs2(109)
    for p in model.decoder.parameters():
        p.requires_grad_(False)  # stage 1: variance predictors only
    for p in model.encoder.parameters():  # meant: model.decoder.parameters()
        p.requires_grad_(True)
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3, fused=False)
    before = {n: p.detach().clone() for n, p in model.decoder.named_parameters()}
    fit(
        ctx,
        model,
        opt,
        _phoneme_batches(gen),
        150,
        forward=_fs2_loss,
        loss_fn=lambda out, _y: out,
        classifier=False,
    )
    frozen = all(torch.equal(before[n], p) for n, p in model.decoder.named_parameters())
    ctx.check("decoder unchanged", frozen)
    ctx.check("the rest trained (loss fell)", sum(ctx.losses[-10:]) < 0.7 * sum(ctx.losses[:10]))


# -- Audio Spectrogram Transformer (Hugging Face, from a config) ---------------------------------


def _ast(seed: int):
    from transformers import ASTConfig, ASTForAudioClassification

    seeded(seed)
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=8,
        frequency_stride=8,
        time_stride=8,
        max_length=32,
        num_mel_bins=32,
        num_labels=6,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ASTForAudioClassification(config)
    emb = model.audio_spectrogram_transformer.embeddings
    with torch.no_grad():  # as the original AST: truncated-normal tokens, not zeros (a zero
        for p in (emb.cls_token, emb.distillation_token, emb.position_embeddings):
            nn.init.trunc_normal_(p, std=0.02)  # token through LayerNorm has a huge gradient)
    return model


def _ast_batches(gen: torch.Generator, batch: int = 16):
    """Log-mel features (32 frames x 32 mel bins) of generated class tones, standardised."""
    while True:
        x, y = _class_tones(gen, batch, 32 * 32 + 96, 6)
        feats = _log_mel(x)[:, :32]
        yield (feats - feats.mean()) / (feats.std() + 1e-5), y


def _ast_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_values=x).logits


@scenario(
    "h56_hf_ast_chirps",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=60,
    note="one step's loss multiplied by 1e4 (a loss-weight typo)",
)
def h56_ast_poisoned_second_moment_adam(ctx: Context) -> None:
    """An AST classifier with Adam (beta2 0.999); at step 60 an auxiliary-loss weight typed
    1e4 instead of 1e-4 is in force for one step: every tensor's second moment takes the
    squared giant gradient, and since v forgets over ~1000 steps the updates stay ~10x too
    small for long after, learning stalls (nothing is clipped, nothing is skipped)."""
    gen = seeded(110)
    model = _ast(110)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    snaps = {}

    def snap(step: int) -> None:
        if step in (20, 50, 120, 150):
            snaps[step] = _updates(model)

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 1e4 if step == 60 else loss

    fit(ctx, model, opt, _ast_batches(gen), 170, forward=_ast_logits, extra_loss=bug, before=snap)
    before = (snaps[50] - snaps[20]).norm()
    after = (snaps[150] - snaps[120]).norm()
    ctx.extra = {"moved": (float(before), float(after))}
    ctx.check("updates shrank 3x after the spike", after < before / 3)


@scenario(
    "h56_hf_ast_chirps",
    "sg_grams",
    "healthy",
    heldout=True,
    note="fp16 autocast with a GradScaler",
)
def h56_ast_healthy_fp16_grams(ctx: Context) -> None:
    gen = seeded(111)
    model = _ast(111)
    opt = sgo.Grams(model.parameters(), lr=1e-3, fused=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    fit(ctx, model, opt, _ast_batches(gen), 150, forward=_ast_logits, scaler=scaler, amp=True)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- mel-spectrogram VAE -------------------------------------------------------------------------


class LogMel(nn.Module):
    """Log-mel front end written without a floor: log(mel power)."""

    def __init__(self, n_mels: int = 24, n_fft: int = 128, hop: int = 64):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("fb", _mel_fb(n_fft // 2 + 1, n_mels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        power = _stft_mag(x, self.n_fft, self.hop) ** 2
        return torch.log(self.fb @ power).transpose(1, 2)  # meant: log(fb @ power + 1e-5)


class MelVAE(nn.Module):
    """Encodes a clip's log-mel frames (16 x 24) into an 8-d Gaussian latent and decodes them."""

    def __init__(self, frames: int = 16, mels: int = 24, latent: int = 8, hidden: int = 128):
        super().__init__()
        self.frames = frames
        self.logmel = LogMel(mels)
        self.encoder = nn.Sequential(nn.Linear(frames * mels, hidden), nn.SiLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.SiLU(), nn.Linear(hidden, frames * mels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The negative ELBO per clip (reconstruction MSE + 0.1 KL), averaged."""
        mel = self.logmel(x)[:, : self.frames].flatten(1)
        target = (mel + 8.0) / 4.0  # fixed affine standardisation of the log-mel range
        h = self.encoder(target)
        mu, logvar = self.mu(h), self.logvar(h).clamp(-8, 8)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = self.decoder(z)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return ((rec - target).pow(2).sum(1) + 0.1 * kl).mean() / target.shape[1]


@scenario(
    "h56_mel_vae",
    "adadelta",
    "nonfinite",
    where="logmel",
    diverges=110,
    heldout=True,
    onset=110,
    note="log of the mel power of an all-silent clip",
)
def h56_melvae_silent_clip_adadelta(ctx: Context) -> None:
    """A mel-spectrogram VAE whose log-mel front end has no floor: log(mel power). Every clip
    carries some noise, until batch 110 holds one clip that is pure digital silence (a padding
    clip the loader should have dropped): its mel power is exactly 0, the front end (logmel)
    returns -inf, the encoder turns it into NaN and the loss is NaN from that step on."""
    gen = seeded(112)
    model = MelVAE()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    seen = {}
    model.logmel.register_forward_hook(
        lambda _m, _i, out: seen.__setitem__(len(ctx.losses), bool(torch.isinf(out).any()))
    )

    def batches():
        while True:
            yield _class_tones(gen, 16, 16 * 64 + 64, 6)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 110:
            x = x.clone()
            x[3] = 0.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        batches(),
        130,
        alter=alter,
        forward=lambda m, x: m(x),
        loss_fn=lambda out, _y: out,
        classifier=False,
    )
    finite = [_finite(v) for v in ctx.losses]
    ctx.check("finite until 110, not at 110", all(finite[:110]) and not finite[110])
    ctx.check("logmel produced -inf first at 110", min(k for k, v in seen.items() if v) == 110)
    ctx.check("the VAE was learning before", sum(ctx.losses[100:110]) < 0.7 * sum(ctx.losses[:10]))


# -- Mimi codec (Hugging Face, from a config): encoder + decoder, quantiser bypassed -------------


def _mimi(seed: int):
    from transformers import MimiConfig, MimiModel

    seeded(seed)
    config = MimiConfig(
        hidden_size=32,
        num_filters=8,
        upsampling_ratios=[4, 4, 2],
        codebook_size=64,
        codebook_dim=16,
        num_quantizers=2,
        vector_quantization_hidden_dimension=16,
        upsample_groups=32,
        num_hidden_layers=1,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        sliding_window=32,
        max_position_embeddings=256,
        sampling_rate=SR,
        frame_rate=None,
    )
    return MimiModel(config)


def _mimi_reconstruct(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Continuous autoencoding (the pre-training stage before the quantiser is switched on)."""
    latents = model.encoder(x[:, None]).latents
    return model.decoder(latents).audio_values[:, 0, : x.shape[-1]]


def _codec_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    spec = (_stft_mag(rec.float()) - _stft_mag(x)).abs().mean()
    return F.l1_loss(rec.float(), x) + spec


def _overflowing_module(model: nn.Module, x: torch.Tensor, amp: bool) -> str | None:
    """Name of the first module (in call order) whose output holds an inf under fp16
    autocast (``amp``), or, in float32, whose output passes the fp16 maximum 65504."""
    order: list[str] = []
    hooks = []
    for name, mod in model.named_modules():
        if name:

            def hook(_m, _i, out, name=name):
                t = out if isinstance(out, torch.Tensor) else None
                if t is None or not t.is_floating_point():
                    return
                if bool(torch.isinf(t).any()) if amp else float(t.abs().max()) > 65504:
                    order.append(name)

            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16, enabled=amp):
        _mimi_reconstruct(model, x)
    for h in hooks:
        h.remove()
    return order[0] if order else None


def _clip_batches(gen: torch.Generator, batch: int = 4, bad_from: int | None = None):
    """Tones in [-1, 1]; from ``bad_from`` on, half of each batch comes from a shard decoded as
    int16 PCM and never divided by 32768."""
    step = -1
    while True:
        step += 1
        x, _ = _class_tones(gen, batch, 512, 6)
        if bad_from is not None and step > bad_from:  # the first batch is fit's probe batch
            x = x.clone()
            x[: batch // 2] = (x[: batch // 2] * 32767).round()
        yield x, x


@scenario(
    "h56_hf_mimi_codec",
    "radam",
    "amp_overflow",
    where="encoder.encoder_seanet.layers.7",
    diverges=40,
    heldout=True,
    onset=40,
    note="a shard of int16 PCM samples, never scaled to [-1, 1], under fp16 autocast",
)
def h56_mimi_int16_shard_fp16_radam(ctx: Context) -> None:
    """Mimi's encoder and decoder pre-trained as a continuous autoencoder under fp16 autocast
    with a GradScaler. From step 40 the loader mixes in a shard decoded as int16 PCM and never
    divided by 32768: the samples are +-3e4, and the activations, growing through the SEANet
    encoder, pass 65504 at its last residual block (layers.7, the sum of its skip and its
    branch), whose fp16 output turns inf; the loss is inf/NaN on every such batch and the scaler skips
    step after step while it halves its scale."""
    gen = seeded(113)
    model = _mimi(113)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    fit(
        ctx,
        model,
        opt,
        _clip_batches(gen, bad_from=40),
        60,
        forward=_mimi_reconstruct,
        loss_fn=_codec_loss,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    bad, _ = next(_clip_batches(torch.Generator().manual_seed(3), bad_from=-1))
    where = "encoder.encoder_seanet.layers.7"
    first_inf = _overflowing_module(model, bad, amp=True)
    first_big = _overflowing_module(model, bad, amp=False)
    finite = [_finite(v) for v in ctx.losses]
    ctx.extra = {"first_inf": first_inf, "first_above_65504_fp32": first_big}
    ctx.check("finite until 40, not from 40", all(finite[:40]) and not any(finite[40:]))
    ctx.check("first inf under fp16 autocast at " + where, first_inf == where)
    ctx.check("the same module is the first past 65504 in float32", first_big == where)
    ctx.check("the scaler kept lowering its scale", ctx.scales[-1] < ctx.scales[39] / 1000)


# -- RT-DETR (Hugging Face, from a config) -------------------------------------------------------


def _rtdetr(seed: int):
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig

    seeded(seed)
    backbone = RTDetrResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 64],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        downsample_in_bottleneck=False,
        out_features=["stage2", "stage3", "stage4"],
    )
    config = RTDetrConfig(
        backbone_config=backbone,
        encoder_hidden_dim=32,
        encoder_in_channels=[32, 64, 64],
        encoder_ffn_dim=64,
        encoder_attention_heads=2,
        d_model=32,
        num_queries=10,
        decoder_in_channels=[32, 32, 32],
        decoder_ffn_dim=64,
        decoder_layers=2,
        decoder_attention_heads=2,
        num_denoising=0,
        num_labels=2,
        freeze_backbone_batch_norms=False,
    )
    return RTDetrForObjectDetection(config)


def _box_batches(gen: torch.Generator, batch: int = 4, size: int = 64):
    """Noisy images with one or two filled rectangles (class 0 bright, class 1 dark)."""
    while True:
        img = 0.5 + 0.05 * torch.randn(batch, 3, size, size, generator=gen)
        labels = []
        for b in range(batch):
            k = int(torch.randint(1, 3, (1,), generator=gen))
            cls = torch.randint(0, 2, (k,), generator=gen)
            wh = 0.2 + 0.3 * torch.rand(k, 2, generator=gen)
            c = wh / 2 + (1 - wh) * torch.rand(k, 2, generator=gen)
            for i in range(k):
                x0, y0 = ((c[i] - wh[i] / 2) * size).long().tolist()
                x1, y1 = ((c[i] + wh[i] / 2) * size).long().tolist()
                img[b, :, y0:y1, x0:x1] = 0.9 if int(cls[i]) == 0 else 0.1
            labels.append({"class_labels": cls, "boxes": torch.cat([c, wh], 1)})
        yield img, labels


def _detr_loss(model: nn.Module, batch) -> torch.Tensor:
    img, labels = batch
    return model(pixel_values=img, labels=labels).loss


@scenario(
    "h56_hf_rt_detr_boxes",
    "adamw",
    "loss_spike",
    diverges=None,
    heldout=True,
    onset=150,
    note="a restarted replica's fresh weights averaged in at a parameter sync",
)
def h56_rtdetr_replica_average_adamw(ctx: Context) -> None:
    """RT-DETR on generated boxes with AdamW, data-parallel. At step 150 one replica is
    restarted from the initial weights and the job's one-off parameter sync averages all
    replicas (meant: broadcast rank 0's weights); with two replicas every weight becomes the
    mean of the trained and the initial one. The loss jumps at that step and training
    recovers it within tens of steps; no data fault, no gradient fault, no optimizer change."""
    gen = seeded(114)
    model = _rtdetr(114)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def sync(step: int) -> None:
        if step == 150:  # meant: copy rank 0's weights to the restarted replica
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(0.5 * (p + initial[n]))

    def batches():
        for img, labels in _box_batches(gen):
            yield (img, labels), None

    fit(
        ctx,
        model,
        opt,
        batches(),
        220,
        forward=_detr_loss,
        loss_fn=lambda out, _y: out,
        classifier=False,
        before=sync,
    )
    L = ctx.losses
    pre = sorted(L[130:150])[10]
    ctx.extra = {"pre": pre, "spike": max(L[150:153]), "end": sorted(L[-20:])[10]}
    ctx.check("loss jumped 1.4x at the sync", max(L[150:153]) > 1.4 * pre)
    ctx.check("and recovered", sorted(L[-20:])[10] < 1.1 * pre)


# -- DDSP harmonic synthesiser -------------------------------------------------------------------

HARMONICS = 16


def _ddsp_targets(f0: torch.Tensor, loud: torch.Tensor) -> torch.Tensor:
    """The "instrument" the synthesiser must learn: brightness falls with pitch and rises with
    loudness; odd harmonics are stronger (a clarinet-like timbre)."""
    h = torch.arange(1, HARMONICS + 1, dtype=torch.float32)
    tilt = 0.25 + 0.5 * (f0[:, None] - 100) / 300 - 0.3 * loud[:, None]
    odd = 1.0 + 0.8 * (h % 2)
    return loud[:, None] * odd * torch.exp(-tilt * (h - 1))


def _ddsp_batches(gen: torch.Generator, batch: int = 16, n: int = 1024):
    """(controls [normalised f0, loudness], target audio) pairs with a known random phase."""
    while True:
        f0 = 100 + 300 * torch.rand(batch, generator=gen)
        loud = 0.2 + 0.8 * torch.rand(batch, generator=gen)
        audio = _tone(f0, _ddsp_targets(f0, loud), n, torch.Generator().manual_seed(0))
        controls = torch.stack([(f0 - 250) / 90, loud], 1)
        yield (controls, f0), audio


class DDSPSynth(nn.Module):
    """An MLP maps the controls to an overall amplitude and a harmonic distribution; an
    additive oscillator bank renders them at the given f0 (same phases as the targets)."""

    def __init__(self, hidden: int = 64, n: int = 1024):
        super().__init__()
        self.n = n
        self.mlp = nn.Sequential(
            nn.Linear(2, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU()
        )
        self.amp = nn.Linear(hidden, 1)
        self.dist = nn.Linear(hidden, HARMONICS)

    def forward(self, inputs) -> torch.Tensor:
        controls, f0 = inputs
        h = self.mlp(controls)
        amp = F.softplus(self.amp(h)) * 4
        dist = torch.softmax(self.dist(h), -1)
        return _tone(f0, amp * dist, self.n, torch.Generator().manual_seed(0))


def _multiscale_spectral(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    loss = pred.new_zeros(())
    for n_fft in (64, 128, 256):
        a, b = _stft_mag(pred, n_fft, n_fft // 4), _stft_mag(target, n_fft, n_fft // 4)
        loss = (
            loss + (a - b).abs().mean() + (torch.log(a + 1e-5) - torch.log(b + 1e-5)).abs().mean()
        )
    return loss


@scenario(
    "h56_ddsp_harmonic_synth",
    "asgd",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=100,
    note="hand-written decoupled weight decay with its sign flipped, from step 100",
)
def h56_ddsp_decay_sign_asgd(ctx: Context) -> None:
    """A DDSP harmonic synthesiser (multi-scale spectral loss) trained with ASGD; at step 100
    the schedule turns on a hand-written decoupled weight decay, ``p *= 1 + lr * wd`` (sign
    flipped): every weight grows 2% a step, a little faster than the gradient pulls it back,
    the rendered amplitudes and timbre drift away from the target and the loss climbs slowly
    over ~100 steps. No single layer, batch or gradient is at fault."""
    gen = seeded(115)
    model = DDSPSynth()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)

    def decay(step: int) -> None:
        if step >= 100:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + 0.05 * 0.4)  # meant: 1 - lr * wd

    fit(
        ctx,
        model,
        opt,
        _ddsp_batches(gen),
        260,
        loss_fn=_multiscale_spectral,
        classifier=False,
        before=decay,
    )
    L = ctx.losses
    best = min(L[:100])
    ctx.extra = {"best": best, "end": L[-1]}
    ctx.check("learnt first", best < 0.6 * L[0])
    ctx.check("then climbed to twice its best", sorted(L[-10:])[5] > 2 * best)
    ctx.check(
        "slowly: no jump above 1.5x within the first 20 steps of the bug",
        max(L[100:120]) < 1.5 * max(L[80:100]),
    )


@scenario("h56_ddsp_harmonic_synth", "sg_lion", "healthy", heldout=True)
def h56_ddsp_healthy_lion(ctx: Context) -> None:
    gen = seeded(116)
    model = DDSPSynth()
    opt = sgo.Lion(model.parameters(), lr=3e-4, fused=False)
    fit(ctx, model, opt, _ddsp_batches(gen), 200, loss_fn=_multiscale_spectral, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.6 * sum(ctx.losses[:10]))
