"""Held-out set 111 (``h111_``): Hugging Face Mllama and Kosmos-2.5 vision encoders on digits
and a Seamless-M4T-v2 speech encoder on generated tones from tiny configs, and hand-written
models of fields not covered before: a text-to-speech duration predictor, a ConvGRU next-frame predictor, a Sinkhorn set-to-set matcher, an implicit-MLE
discrete latent model, a differentiable sprite renderer, attention-based multiple-instance
learning, a monotonic (positive-weight) network, deep embedded clustering under fp16 autocast,
a hyperspectral unmixing autoencoder, a liquid time-constant RNN and an EEG sleep stager.

Written blind: each scenario induces its fault the way it happens in practice and checks that
it really happened (or, for a control, that the run trained normally).
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
    grad_norm,
    ramp,
    scenario,
    seeded,
)


def _finite(losses: list[float]) -> bool:
    return all(math.isfinite(v) for v in losses)


def _fell(losses: list[float], ratio: float = 0.7, k: int = 10) -> bool:
    head = sum(losses[:k]) / k
    tail = sum(losses[-k:]) / k
    return tail < ratio * head


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


# -- Hugging Face Mllama vision encoder on digits -------------------------------------------------


class MllamaDigits(nn.Module):
    """Mllama's tiled vision encoder (one tile, one image) on 16x16 RGB digits, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import MllamaVisionConfig, MllamaVisionModel

        config = MllamaVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_global_layers=1,
            attention_heads=2,
            image_size=16,
            patch_size=4,
            max_num_tiles=1,
            vision_output_dim=64,
            intermediate_layers_indices=[0],
            supported_aspect_ratios=[[1, 1]],
        )
        self.vision = MllamaVisionModel(config)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        img = F.interpolate(x.reshape(b, 1, 8, 8), size=16, mode="bilinear", align_corners=False)
        pix = img.expand(b, 3, 16, 16).reshape(b, 1, 1, 3, 16, 16)
        out = self.vision(
            pixel_values=pix,
            aspect_ratio_ids=torch.ones(b, 1, dtype=torch.long),
            aspect_ratio_mask=torch.ones(b, 1, 1, dtype=torch.long),
        ).last_hidden_state
        return self.head(out.reshape(b, -1, out.shape[-1]).mean(1))


def _attn_logit_max(model: MllamaDigits, x: torch.Tensor, layer: int = 1) -> float:
    """Largest |q.k|/sqrt(d) of one local layer on a batch (hooks on q_proj / k_proj)."""
    attn = model.vision.transformer.layers[layer].self_attn
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
        attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o)),
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    q, k = seen["q"], seen["k"]
    b, t, d = q.shape
    q = q.reshape(b, t, 2, d // 2).transpose(1, 2)
    k = k.reshape(b, t, 2, d // 2).transpose(1, 2)
    return float((q @ k.transpose(-1, -2)).abs().max() / math.sqrt(d // 2))


@scenario(
    "hf_mllama_vision_digits",
    "adam",
    "attention_logit_growth",
    where=("vision.transformer.layers.1.self_attn", "vision.transformer.layers.0.self_attn"),
    diverges=None,
    heldout=True,
    note="query/key projections put in a param group with 30x the learning rate, no QK-norm",
    onset=0,
)
def h111_hf_mllama_vision_qk_lr(ctx: Context) -> None:
    gen = seeded(11101)
    model = MllamaDigits()
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.Adam([{"params": rest, "lr": 1e-3}, {"params": qk, "lr": 3e-2}])
    batches = digit_batches(gen, 32)
    probe, _ = next(batches)
    start = _attn_logit_max(model, probe)
    ctx.attach(model, opt)
    for _step in range(120):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    end = _attn_logit_max(model, probe)
    ctx.check("attention logits grew more than 10x", end > 10 * start)
    ctx.check("attention logits above 30", end > 30)


@scenario("hf_mllama_vision_digits", "adamw", "healthy", heldout=True, note="warmup + cosine")
def h111_hf_mllama_vision_healthy(ctx: Context) -> None:
    gen = seeded(11102)
    model = MllamaDigits()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    batches = digit_batches(gen, 32)
    ctx.attach(model, opt)
    for _step in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(ctx.losses, 0.7))
    ctx.check("finite", _finite(ctx.losses))


# -- Hugging Face Kosmos-2.5 vision encoder on digits ---------------------------------------------


class Kosmos25Digits(nn.Module):
    """Kosmos-2.5's Pix2Struct-style vision encoder on flattened 2x2 patches of 8x8 digits (row
    and column ids first, as its processor lays them out), mean-pooled into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import Kosmos2_5VisionConfig
        from transformers.models.kosmos2_5.modeling_kosmos2_5 import Kosmos2_5VisionModel

        config = Kosmos2_5VisionConfig(
            hidden_size=32,
            patch_embed_hidden_size=4,
            intermediate_size=64,
            head_dim=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_num_patches=16,
        )
        self.vision = Kosmos2_5VisionModel(config)
        self.head = nn.Linear(32, 10)
        rows = torch.arange(1, 5).repeat_interleave(4).float()
        cols = torch.arange(1, 5).repeat(4).float()
        self.register_buffer("ids", torch.stack([rows, cols], -1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        patches = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
        flat = torch.cat([self.ids.expand(b, 16, 2), patches], -1)
        out = self.vision(flattened_patches=flat, attention_mask=torch.ones(b, 16))
        return self.head(out.last_hidden_state.mean(1))


@scenario(
    "hf_kosmos2_5_vision_digits",
    "adamax",
    "healthy",
    heldout=True,
    note="Adamax, warmup then step decay, label smoothing",
)
def h111_hf_kosmos2_5_vision_healthy(ctx: Context) -> None:
    gen = seeded(11105)
    model = Kosmos25Digits()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    batches = digit_batches(gen, 32)
    ctx.attach(model, opt)
    for step in range(150):
        for g in opt.param_groups:
            g["lr"] = 4e-3 * min(1.0, (step + 1) / 10) * (0.5 if step >= 100 else 1.0)
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(ctx.losses, 0.6))
    ctx.check("finite", _finite(ctx.losses))


# -- Hugging Face Seamless-M4T-v2 speech encoder on generated tones -------------------------------


def _tone_batches(gen: torch.Generator, batch: int = 16, frames: int = 40, bins: int = 16):
    """Log-mel-like frames of six generated sounds: each a pair of harmonic bands switched on for
    a random stretch of the clip, over a noisy background."""
    while True:
        y = torch.randint(0, 6, (batch,), generator=gen)
        x = 0.5 * torch.randn(batch, frames, bins, generator=gen)
        start = torch.randint(0, frames // 2, (batch,), generator=gen)
        length = torch.randint(frames // 4, frames // 2, (batch,), generator=gen)
        t = torch.arange(frames)[None]
        on = ((t >= start[:, None]) & (t < (start + length)[:, None])).float()
        band = torch.zeros(batch, bins)
        band[torch.arange(batch), y] = 2.0
        band[torch.arange(batch), y + 8] = 1.5
        yield x + on[:, :, None] * band[:, None], y


class SeamlessTones(nn.Module):
    """Seamless-M4T-v2's conformer speech encoder (with its length adaptor), mean-pooled into a
    linear head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import SeamlessM4Tv2Config
        from transformers.models.seamless_m4t_v2.modeling_seamless_m4t_v2 import (
            SeamlessM4Tv2SpeechEncoder,
        )

        config = SeamlessM4Tv2Config(
            hidden_size=32,
            speech_encoder_layers=2,
            speech_encoder_attention_heads=2,
            speech_encoder_intermediate_size=64,
            feature_projection_input_dim=16,
            adaptor_kernel_size=2,
            adaptor_stride=2,
            num_adapter_layers=1,
            add_adapter=True,
            speech_encoder_dropout=0.0,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            speech_encoder_layerdrop=0.0,
            conv_depthwise_kernel_size=5,
            speech_encoder_chunk_size=20000,
            speech_encoder_left_chunk_num=128,
        )
        self.encoder = SeamlessM4Tv2SpeechEncoder(config)
        self.head = nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_features=x).last_hidden_state.mean(1))


def _run_tones(ctx: Context, gen: torch.Generator, lr_at, steps: int) -> SeamlessTones:
    model = SeamlessTones()
    opt = torch.optim.AdamW(model.parameters(), lr=lr_at(0), weight_decay=0.01)
    batches = _tone_batches(gen)
    ctx.attach(model, opt)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    return model


@scenario(
    "hf_seamless_m4t_v2_speech",
    "adamw",
    "loss_spike",
    diverges=None,
    heldout=True,
    note="SGDR warm restart at step 80 configured with a peak of 1.2e-2, 6x the first cycle's: "
    "the loss spikes, then comes back",
    onset=80,
)
def h111_hf_seamless_speech_sgdr_restart(ctx: Context) -> None:
    gen = seeded(11111)

    def lr_at(step: int) -> float:
        if step < 80:
            return 2e-3 * 0.5 * (1 + math.cos(math.pi * step / 80))
        return 1.2e-2 * 0.5 * (1 + math.cos(math.pi * (step - 80) / 80))

    _run_tones(ctx, gen, lr_at, 160)
    pre = sum(ctx.losses[70:80]) / 10
    ctx.check("it learnt in the first cycle", pre < 0.5 * ctx.losses[0])
    ctx.check("loss spiked above 3x after the restart", max(ctx.losses[80:100]) > 3 * pre)
    ctx.check("and came back", sum(ctx.losses[-10:]) / 10 < 1.5 * pre + 0.1)


@scenario(
    "hf_seamless_m4t_v2_speech",
    "adamw",
    "healthy",
    heldout=True,
    note="AdamW, linear warmup then cosine",
)
def h111_hf_seamless_speech_healthy(ctx: Context) -> None:
    gen = seeded(11107)

    def lr_at(step: int) -> float:
        return 2e-3 * min(1.0, (step + 1) / 15) * 0.5 * (1 + math.cos(math.pi * step / 140))

    _run_tones(ctx, gen, lr_at, 140)
    ctx.check("loss fell", _fell(ctx.losses, 0.5))
    ctx.check("finite", _finite(ctx.losses))


# -- text-to-speech duration predictor ------------------------------------------------------------


def _phoneme_batches(gen: torch.Generator, batch: int = 16, length: int = 24, vocab: int = 40):
    """Phoneme ids and their durations in frames: a per-phoneme base (1..12 frames), stretched
    by the neighbours (a stressed vowel after a stop lasts longer), integer frames >= 1."""
    base = 1 + torch.randint(0, 12, (vocab,), generator=gen).float()
    while True:
        ph = torch.randint(0, vocab, (batch, length), generator=gen)
        d = base[ph] * (1 + 0.3 * (ph.roll(1, 1) % 3 == 0).float())
        d = (d + 0.5 * torch.randn(d.shape, generator=gen)).round().clamp(min=1)
        yield ph, d


class DurationPredictor(nn.Module):
    """FastSpeech-style: embedding, two conv layers with LayerNorm, a linear projection."""

    def __init__(self, vocab: int = 40, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.conv1 = nn.Conv1d(dim, dim, 3, padding=1)
        self.ln1 = nn.LayerNorm(dim)
        self.conv2 = nn.Conv1d(dim, dim, 3, padding=1)
        self.ln2 = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, 1)

    def forward(self, ph: torch.Tensor) -> torch.Tensor:
        h = self.embed(ph)
        h = self.ln1(F.relu(self.conv1(h.transpose(1, 2))).transpose(1, 2))
        h = self.ln2(F.relu(self.conv2(h.transpose(1, 2))).transpose(1, 2))
        return self.proj(h).squeeze(-1)


@scenario(
    "tts_duration_predictor",
    "nadam",
    "nonfinite",
    where=("proj",),
    diverges="auto",
    heldout=True,
    note="predicts durations in frames, loss on log(prediction) without a clamp: once the "
    "warmed-up rate makes a prediction overshoot below zero, NaN",
)
def h111_tts_duration_log_of_linear(ctx: Context) -> None:
    gen = seeded(11103)
    model = DurationPredictor()
    with torch.no_grad():
        model.proj.bias.fill_(3.0)
    opt = torch.optim.NAdam(model.parameters(), lr=0.12)
    batches = _phoneme_batches(gen)
    ctx.attach(model, opt)
    for step in range(150):
        for g in opt.param_groups:
            g["lr"] = 0.12 * min(1.0, (step + 1) / 40)
        ph, d = next(batches)
        pred = model(ph)
        loss = F.mse_loss(torch.log(pred), torch.log(d))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    bad = [i for i, v in enumerate(ctx.losses) if not math.isfinite(v)]
    ctx.check("the loss went non-finite", bool(bad))
    ctx.check("it trained finite for a while first", bool(bad) and bad[0] >= 10)


# -- ConvGRU next-frame predictor -----------------------------------------------------------------


def _frame_batches(gen: torch.Generator, batch: int = 16, frames: int = 6, size: int = 10):
    """Clips of a bright blob moving at a constant velocity (with a little sensor noise)."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    while True:
        p0 = torch.rand(batch, 2, generator=gen) * (size - 4) + 2
        v = (torch.rand(batch, 2, generator=gen) - 0.5) * 1.6
        clips = []
        for t in range(frames + 1):
            c = p0 + v * t
            d2 = (yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2
            clips.append(torch.exp(-d2 / 2.0))
        clip = torch.stack(clips, 1)[:, :, None]
        clip = clip + 0.02 * torch.randn(clip.shape, generator=gen)
        yield clip[:, :-1], clip[:, 1:]


class ConvGRUCell(nn.Module):
    def __init__(self, cin: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(cin + hidden, 2 * hidden, 3, padding=1)
        self.cand = nn.Conv2d(cin + hidden, hidden, 3, padding=1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
        n = torch.tanh(self.cand(torch.cat([x, r * h], 1)))
        return (1 - z) * h + z * n


class NextFrame(nn.Module):
    def __init__(self, hidden: int = 12) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = ConvGRUCell(1, hidden)
        self.readout = nn.Conv2d(hidden, 1, 1)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        b, t, _, hgt, wid = clip.shape
        h = clip.new_zeros(b, self.hidden, hgt, wid)
        outs = []
        for i in range(t):
            h = self.cell(clip[:, i], h)
            outs.append(self.readout(h))
        return torch.stack(outs, 1)


@scenario(
    "convgru_next_frame",
    "rmsprop",
    "update_ratio_out_of_range",
    where=("readout",),
    diverges=None,
    heldout=True,
    note="readout zero-ish initialised (std 1e-3), RMSprop at 1e-2 without warmup: the first "
    "updates are ~10x lr per weight, hundreds of times the readout's weights",
)
def h111_convgru_next_frame_rmsprop_small_init(ctx: Context) -> None:
    gen = seeded(11104)
    model = NextFrame()
    nn.init.normal_(model.readout.weight, std=1e-3)
    nn.init.zeros_(model.readout.bias)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2, alpha=0.99)
    batches = _frame_batches(gen)
    ratios = []
    ctx.attach(model, opt)
    for _step in range(60):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        before = model.readout.weight.detach().clone()
        opt.step()
        ratios.append(float((model.readout.weight.detach() - before).norm() / before.norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("readout update/weight ratio above 1", max(ratios[:10]) > 1.0)
    ctx.check("loss jumped above its start", max(ctx.losses[1:20]) > 2 * ctx.losses[0])


# -- Sinkhorn set-to-set matcher ------------------------------------------------------------------


def _set_batches(gen: torch.Generator, batch: int = 16, n: int = 8):
    """Input sets of 2-D points and their targets: the same points rotated by an angle given as
    a ninth token (the matcher must learn the rotation; the order is shuffled)."""
    while True:
        x = torch.randn(batch, n, 2, generator=gen)
        a = (torch.rand(batch, generator=gen) * 2 - 1) * math.pi / 2
        rot = torch.stack([torch.cos(a), -torch.sin(a), torch.sin(a), torch.cos(a)], 1)
        y = torch.einsum("bij,bnj->bni", rot.reshape(batch, 2, 2), x)
        y = y[:, torch.randperm(n, generator=gen)]
        cond = torch.stack([torch.cos(a), torch.sin(a)], 1)
        yield (x, cond), y


class SetMatcher(nn.Module):
    """Per-point encoder with a pooled context (DeepSets style), a decoder to output points."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.decoder = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 2))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.encoder(torch.cat([x, cond[:, None].expand(-1, x.shape[1], -1)], -1))
        ctxv = h.mean(1, keepdim=True).expand_as(h)
        return self.decoder(torch.cat([h, ctxv], -1))


def sinkhorn_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 0.1, iters: int = 20):
    """Entropic OT (squared distances) between two equal-size uniform point sets (log domain)."""
    cost = torch.cdist(a, b).pow(2)
    n = a.shape[1]
    logk = -cost / eps
    u = torch.zeros(a.shape[0], n)
    v = torch.zeros(a.shape[0], n)
    logmu = -math.log(n)
    for _ in range(iters):
        u = logmu - torch.logsumexp(logk + v[:, None, :], 2)
        v = logmu - torch.logsumexp(logk + u[:, :, None], 1)
    plan = torch.exp(logk + u[:, :, None] + v[:, None, :])
    return (plan * cost).sum((1, 2)).mean()


def _run_matcher(ctx: Context, model, opt, gen, steps, bad_step=None):
    batches = _set_batches(gen)
    ctx.attach(model, opt)
    for step in range(steps):
        (x, cond), y = next(batches)
        if step == bad_step:
            y = y * 10.0  # one shard's targets exported in millimetres instead of centimetres
        loss = sinkhorn_loss(model(x, cond), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    "sinkhorn_set_matcher",
    "nesterov",
    "gradient_spike",
    where=("decoder",),
    diverges=None,
    heldout=True,
    note="one batch's targets in the wrong unit (x10): one gradient spike, then it recovers",
    onset=70,
)
def h111_sinkhorn_set_matcher_unit_batch(ctx: Context) -> None:
    gen = seeded(11106)
    model = SetMatcher()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    _run_matcher(ctx, model, opt, gen, 140, bad_step=70)
    g = ctx.grad_norms
    ctx.check("gradient at the bad batch above 10x the median", g[70] > 10 * _median(g[40:70]))
    before = sum(ctx.losses[60:70]) / 10
    after = sum(ctx.losses[-10:]) / 10
    ctx.check("loss recovered", after < 1.5 * before and _finite(ctx.losses))


# -- implicit-MLE discrete latent model -----------------------------------------------------------


class IMLE(torch.autograd.Function):
    """Perturb-and-MAP one-hot sample; backward by implicit MLE (Niepert et al. 2021): the
    difference of the MAP states at the logits and at logits moved against the gradient."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        z = F.one_hot((logits + noise).argmax(-1), logits.shape[-1]).float()
        ctx.save_for_backward(logits, noise, z)
        return z

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, noise, z = ctx.saved_tensors
        lam = 10.0
        z2 = F.one_hot((logits + noise - lam * grad).argmax(-1), logits.shape[-1]).float()
        return (z - z2) / lam, None


class DiscreteAE(nn.Module):
    def __init__(self, latents: int = 6, cats: int = 8) -> None:
        super().__init__()
        self.latents, self.cats = latents, cats
        self.encoder = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, latents * cats))
        self.decoder = nn.Sequential(nn.Linear(latents * cats, 64), nn.ReLU(), nn.Linear(64, 64))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).reshape(-1, self.latents, self.cats)

    def forward(self, x: torch.Tensor, gen: torch.Generator):
        logits = self.logits(x)
        u = torch.rand(logits.shape, generator=gen).clamp(1e-6, 1 - 1e-6)
        z = IMLE.apply(logits, -torch.log(-torch.log(u)))
        return self.decoder(z.flatten(1)), logits


@scenario(
    "imle_discrete_latent",
    "adam",
    "adam_second_moment_poisoned",
    where=("encoder.2", "encoder"),
    diverges=None,
    heldout=True,
    note="a logit regulariser's weight read as 1e6 instead of 1e-6 for one step: one giant "
    "encoder gradient fills Adam's second moment and the encoder freezes",
    onset=15,
)
def h111_imle_discrete_latent_reg_typo(ctx: Context) -> None:
    gen = seeded(11108)
    model = DiscreteAE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = digit_batches(gen, 64)
    moves = []
    ctx.attach(model, opt)
    for step in range(140):
        x, _ = next(batches)
        recon, logits = model(x, gen)
        loss = F.mse_loss(recon, x, reduction="sum") / x.shape[0]
        weight = 1e6 if step == 15 else 1e-6
        total = loss + weight * logits.pow(2).mean()
        total.backward()
        before = model.encoder[2].weight.detach().clone()
        opt.step()
        moves.append(float((model.encoder[2].weight.detach() - before).norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre = sum(moves[5:15]) / 10
    post = sum(moves[60:100]) / 40
    ctx.check(
        "encoder output layer's updates shrank >20x after the giant gradient", post < pre / 20
    )
    ctx.check("finite", _finite(ctx.losses))


# -- differentiable sprite renderer ---------------------------------------------------------------


class SpriteRenderer(nn.Module):
    """An encoder predicts, per sprite, a translation, a scale and an opacity; learnt 5x5
    sprite textures with alpha masks are placed by an affine grid and composited "over"."""

    def __init__(self, sprites: int = 3, size: int = 16) -> None:
        super().__init__()
        self.sprites, self.size = sprites, size
        self.texture = nn.Parameter(torch.rand(sprites, 1, 5, 5))
        self.alpha = nn.Parameter(torch.zeros(sprites, 1, 5, 5))
        self.encoder = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, sprites * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        p = self.encoder(x).reshape(b, self.sprites, 4)
        canvas = x.new_zeros(b, 1, self.size, self.size)
        for k in range(self.sprites):
            s = 1.0 + F.softplus(p[:, k, 2])
            theta = torch.zeros(b, 2, 3)
            theta[:, 0, 0] = s
            theta[:, 1, 1] = s
            theta[:, 0, 2] = torch.tanh(p[:, k, 0]) * s
            theta[:, 1, 2] = torch.tanh(p[:, k, 1]) * s
            grid = F.affine_grid(theta, (b, 1, self.size, self.size), align_corners=False)
            rgba = torch.cat([self.texture[k], torch.sigmoid(self.alpha[k])], 0)
            placed = F.grid_sample(rgba.expand(b, 2, 5, 5), grid, align_corners=False)
            a = placed[:, 1:] * torch.sigmoid(p[:, k, 3])[:, None, None, None]
            canvas = placed[:, :1] * a + canvas * (1 - a)
        return canvas


def _sprite_target(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="bilinear", align_corners=False)


@scenario(
    "sprite_alpha_renderer",
    "sgd",
    "sharpness_above_limit",
    diverges=91,
    heldout=True,
    note="a learning-rate range test left running: from step 40 the rate ramps 0.05 -> 1000 "
    "(the saturating sprite parameters keep the loss bounded): past 2/sharpness",
    onset=40,
)
def h111_sprite_renderer_lr_ramp(ctx: Context) -> None:
    gen = seeded(11109)
    model = SpriteRenderer()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = digit_batches(gen, 32)
    ctx.attach(model, opt)
    for step in range(120):
        x, _ = next(batches)
        lr = 0.05 if step < 40 else ramp(step - 40, 0.05, 1000.0, 60)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = F.mse_loss(model(x), _sprite_target(x))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    best = min(ctx.losses[:60])
    late = [v if math.isfinite(v) else 1e9 for v in ctx.losses[60:]]
    ctx.check("it learnt before the ramp", ctx.losses[39] < ctx.losses[0])
    ctx.check("loss rose above 2x its best once the rate passed the limit", max(late) > 2 * best)


# -- attention-based multiple-instance learning ---------------------------------------------------


def _bag_batches(gen: torch.Generator, batch: int = 32, bag: int = 12, dim: int = 16):
    """Bags of noisy instances; a bag's class is that of the one key instance planted in it."""
    keys = torch.randn(4, dim, generator=gen) * 1.5
    while True:
        x = torch.randn(batch, bag, dim, generator=gen)
        y = torch.randint(0, 4, (batch,), generator=gen)
        pos = torch.randint(0, bag, (batch,), generator=gen)
        x[torch.arange(batch), pos] += keys[y]
        yield x, y


class AttentionMIL(nn.Module):
    """Ilse et al. 2018: instance embeddings, gated attention pooling, a bag classifier."""

    def __init__(self, dim: int = 16, hidden: int = 32, temperature: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.att_v = nn.Linear(hidden, 16)
        self.att_u = nn.Linear(hidden, 16)
        self.att_w = nn.Linear(16, 1)
        self.classifier = nn.Linear(hidden, 4)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a = self.att_w(torch.tanh(self.att_v(h)) * torch.sigmoid(self.att_u(h)))
        pooled = (torch.softmax(a, 1) * h).sum(1)
        return self.classifier(pooled) / self.temperature


@scenario(
    "attention_mil_bags",
    "adagrad",
    "softmax_collapse",
    where=("classifier",),
    diverges=None,
    heldout=True,
    note="the attention's temperature (0.02) divides the classifier's logits instead",
)
def h111_attention_mil_logit_temperature(ctx: Context) -> None:
    gen = seeded(11110)
    model = AttentionMIL(temperature=0.02)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    batches = _bag_batches(gen)
    ctx.attach(model, opt)
    for _step in range(120):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("float32 softmax gives the target exactly 1 on most bags", frac > 0.5)


# -- monotonic (positive-weight) network ----------------------------------------------------------


class MonotonicNet(nn.Module):
    """Weights are softplus of free parameters, scaled by ~1/fan_in (so the output is monotone
    in every input)."""

    def __init__(self, depth: int = 4, width: int = 16) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(4 if i == 0 else width, 1 if i == depth - 1 else width) for i in range(depth)
        )
        for layer in self.layers:
            nn.init.normal_(layer.weight, -2.0, 0.3)  # softplus(-2) ~ 0.127
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            w = F.softplus(layer.weight) / (layer.weight.shape[1] * 0.127)  # ~1/fan_in
            x = F.linear(x, w, layer.bias)
            if i < len(self.layers) - 1:
                x = F.leaky_relu(x, 0.1)
        return x.squeeze(-1)


def _monotone_batches(gen: torch.Generator, batch: int = 64):
    while True:
        x = torch.rand(batch, 4, generator=gen)
        y = x[:, 0] + torch.sqrt(x[:, 1]) + x[:, 2] ** 2 + 0.5 * torch.tanh(3 * x[:, 3])
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario("monotonic_net", "rprop", "healthy", heldout=True, note="full-batch Rprop")
def h111_monotonic_net_healthy(ctx: Context) -> None:
    gen = seeded(11113)
    model = MonotonicNet()
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    x, y = next(_monotone_batches(gen, 512))
    ctx.attach(model, opt)
    for _step in range(100):
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(ctx.losses, 0.5))
    ctx.check("finite", _finite(ctx.losses))


# -- deep embedded clustering under fp16 autocast -------------------------------------------------


class DEC(nn.Module):
    """Autoencoder + Student-t soft assignment to learnt centroids (Xie et al. 2016)."""

    def __init__(self, clusters: int = 10, dim: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, dim))
        self.decoder = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 64))
        self.centroids = nn.Parameter(torch.randn(clusters, dim))

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        q = 1.0 / (1.0 + torch.cdist(z.float(), self.centroids).pow(2))
        return self.decoder(z), q / q.sum(1, keepdim=True)


@scenario(
    "dec_clustering",
    "adamw",
    "amp_overflow",
    where=("encoder.2", "decoder.2"),
    diverges=None,
    heldout=True,
    note="fp16 autocast with a GradScaler; pixels left in 0..255 and a summed reconstruction "
    "loss: every fp16 gradient overflows until the scale is below 1, then encoder.2's weight "
    "gradient keeps overflowing whenever the scaler grows it back",
)
def h111_dec_clustering_fp16_raw_pixels(ctx: Context) -> None:
    gen = seeded(11114)
    model = DEC()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", growth_interval=20)
    batches = digit_batches(gen, 128)
    ctx.attach(model, opt, scaler=scaler)
    for _step in range(80):
        x, _ = next(batches)
        x = x * 255.0
        with torch.autocast("cpu", dtype=torch.float16):
            recon, q = model(x)
        p = q.pow(2) / q.sum(0)
        p = (p / p.sum(1, keepdim=True)).detach()
        loss = F.mse_loss(recon.float(), x, reduction="sum") / 64 + F.kl_div(
            q.log(), p, reduction="batchmean"
        )
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    skipped = sum(b < a for a, b in zip([65536.0] + ctx.scales, ctx.scales, strict=False))
    ctx.check("the scaler skipped more than 17 steps", skipped > 17)
    ctx.check("the scale fell below 1", min(ctx.scales) < 1.0)


# -- hyperspectral unmixing autoencoder -----------------------------------------------------------


def _pixel_batches(gen: torch.Generator, batch: int = 64, bands: int = 32, ends: int = 4):
    """Pixels mixed linearly from four smooth endmember spectra, with abundances on a simplex."""
    wl = torch.linspace(0, 1, bands)
    centres = torch.tensor([0.15, 0.4, 0.65, 0.9])
    endm = 0.2 + torch.exp(-((wl[None] - centres[:, None]) ** 2) / 0.02)
    while True:
        a = torch.distributions.Dirichlet(torch.ones(ends)).sample((batch,))
        x = a @ endm + 0.01 * torch.randn(batch, bands, generator=gen)
        yield x


class Unmixer(nn.Module):
    def __init__(self, bands: int = 32, ends: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(bands, 32), nn.ReLU(), nn.Linear(32, ends))
        self.endmembers = nn.Linear(ends, bands, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.endmembers(torch.softmax(self.encoder(x), -1))


@scenario(
    "hyperspectral_unmixing_ae",
    "asgd",
    "data_outlier",
    diverges=None,
    heldout=True,
    note="a batch of saturated detector readings (x300) at step 60",
    onset=60,
)
def h111_unmixing_saturated_batch(ctx: Context) -> None:
    gen = seeded(11115)
    model = Unmixer()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    batches = _pixel_batches(gen)
    ctx.attach(model, opt)
    peak = 0.0
    for step in range(120):
        x = next(batches)
        if step == 60:
            x = x * 300.0
        peak = max(peak, float(x.abs().max()))
        loss = F.mse_loss(model(x), x)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    med = _median(ctx.losses[40:60])
    ctx.check("the bad batch is far outside the data", peak > 100)
    ctx.check("loss at the bad batch above 100x the median", ctx.losses[60] > 100 * med)


# -- liquid time-constant RNN ---------------------------------------------------------------------


class LTCCell(nn.Module):
    """Hasani et al. 2021: dx/dt = -(1/tau + f) x + f A, f = sigmoid(W [u, x] + b), integrated
    over each (irregular) gap dt by the fused semi-implicit step."""

    def __init__(self, inp: int = 2, hidden: int = 16) -> None:
        super().__init__()
        self.f = nn.Linear(inp + hidden, hidden)
        self.log_tau = nn.Parameter(torch.zeros(hidden))
        self.A = nn.Parameter(torch.randn(hidden) * 0.5)

    def forward(self, u: torch.Tensor, x: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        f = torch.sigmoid(self.f(torch.cat([u, x], -1)))
        dt = dt[:, None]
        return (x + dt * f * self.A) / (1 + dt * (1 / self.log_tau.exp() + f))


class LTCNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = LTCCell()
        self.head = nn.Linear(16, 1)

    def forward(self, u: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        x = u.new_zeros(u.shape[0], 16)
        for t in range(u.shape[1]):
            x = self.cell(u[:, t], x, dt[:, t])
        return self.head(x).squeeze(-1)


def _series_batches(gen: torch.Generator, batch: int = 32, length: int = 16):
    """Irregularly sampled two-channel series (gaps of 0.1..0.6 time units); the target is a recency-weighted sum of the first channel plus the last value of
    the second."""
    while True:
        u = torch.randn(batch, length, 2, generator=gen)
        dt = 0.1 + 0.5 * torch.rand(batch, length, generator=gen)
        age = dt.flip(1).cumsum(1).flip(1) - dt
        y = (u[:, :, 0] * torch.exp(-age)).sum(1) + 0.5 * u[:, -1, 1]
        yield u, dt, y


@scenario(
    "ltc_ode_rnn",
    "adadelta",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="an L2 penalty (0.02) added with the wrong sign: it learns, then the weights grow and "
    "the loss climbs back over ~200 steps",
)
def h111_ltc_negative_l2(ctx: Context) -> None:
    gen = seeded(11116)
    model = LTCNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    batches = _series_batches(gen)
    ctx.attach(model, opt)
    for _step in range(430):
        u, dt, y = next(batches)
        loss = F.mse_loss(model(u, dt), y)
        l2 = sum(p.pow(2).sum() for p in model.parameters())
        (loss - 0.02 * l2).backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    avg = [sum(ctx.losses[i : i + 25]) / 25 for i in range(0, len(ctx.losses) - 24, 25)]
    ctx.check("25-step mean loss climbed to more than 1.6x its best", avg[-1] > 1.6 * min(avg))
    ctx.check("finite", _finite(ctx.losses))
    jumps = [b / a for a, b in zip(ctx.losses, ctx.losses[1:], strict=False) if a > 0]
    ctx.check("no single step jumped 5x (a slow climb)", max(jumps) < 5)


# -- EEG sleep stager -----------------------------------------------------------------------------


def _eeg_batches(gen: torch.Generator, batch: int = 32, length: int = 128):
    """Generated EEG-like epochs: five stages, each a mix of its own rhythms plus pink-ish noise."""
    freqs = torch.tensor([[10.0, 20.0], [6.0, 12.0], [4.0, 14.0], [1.5, 3.0], [8.0, 25.0]])
    t = torch.arange(length) / 64.0
    while True:
        y = torch.randint(0, 5, (batch,), generator=gen)
        ph = torch.rand(batch, 2, generator=gen) * 2 * math.pi
        f = freqs[y] * (1 + 0.05 * torch.randn(batch, 2, generator=gen))
        sig = torch.sin(2 * math.pi * f[:, :, None] * t + ph[:, :, None]).sum(1)
        noise = torch.randn(batch, length, generator=gen).cumsum(1) * 0.05
        yield (sig + noise + 0.3 * torch.randn(batch, length, generator=gen))[:, None], y


class SleepStager(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 7, padding=3)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2, stride=2)
        self.head = nn.Linear(32, 5)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(-1))


@scenario(
    "eeg_sleep_stager",
    "radam",
    "loss_of_plasticity",
    where=("conv2",),
    diverges=None,
    heldout=True,
    note="a schedule misread as 3.0 for ten steps from step 60: conv2's ReLUs die, it never "
    "gets back to where it was",
    onset=60,
)
def h111_eeg_sleep_stager_lr_burst(ctx: Context) -> None:
    gen = seeded(11117)
    model = SleepStager()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-2)
    batches = _eeg_batches(gen)
    ctx.attach(model, opt)
    for step in range(160):
        for g in opt.param_groups:
            g["lr"] = 3.0 if 60 <= step < 70 else 2e-2
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.features(x).transpose(1, 2))
    pre = sum(ctx.losses[55:60]) / 5
    ctx.check("it was learning before the burst", pre < 0.8 * ctx.losses[0])
    ctx.check("most conv2 units dead", dead > 0.6)
    ctx.check("loss stayed above its pre-burst level", sum(ctx.losses[-20:]) / 20 > pre)
