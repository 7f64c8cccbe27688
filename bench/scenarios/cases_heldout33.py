"""Held-out set 33 (``h33_``): twelve induced instabilities and four healthy controls.

Families: Hugging Face SmolLM3 and Bamba (hybrid Mamba-attention) causal LMs, a Pegasus-X
seq2seq model, Swin2SR super-resolution and Depth Anything depth estimation (both regression
heads) from configs, a restricted Boltzmann machine trained by contrastive divergence (autograd
on the free energy), a Reformer-style LSH-attention encoder, a spatial-pyramid-pooling CNN, a deep
ensemble of MLP regressors (diabetes), data2vec-style masked feature prediction with an EMA
teacher (digits), a GATv2 graph attention network on a generated block-model graph and a
segment-recurrent memory LSTM over long generated sequences.
Optimizers: AdamW, NAdam, Adam, Adamax, RAdam, RMSprop, SGD (momentum, Nesterov), Adagrad, and
steadygrad.optim's Lion and AdaBelief.

Written without reading steadygrad's detectors, diagnosis or monitor, nor the other held-out
files, and never run on steadygrad while it was written: each scenario was tuned only with a
stand-in context that attaches nothing, until its own checks held (or, for a healthy control,
until it trained normally).
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
    seeded,
    text_batches,
)
from scenarios.common import scenario as _scenario


def scenario(*args, **kwargs):
    return _scenario(*args, heldout=True, **kwargs)


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# -- Hugging Face models from configs ------------------------------------------------------------


def _smollm3(vocab: int = 64):
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    config = SmolLM3Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    return SmolLM3ForCausalLM(config)


def _bamba(vocab: int = 64):
    from transformers import BambaConfig, BambaForCausalLM

    config = BambaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        attn_layer_indices=[1],
        mamba_n_heads=4,
        mamba_d_head=16,
        mamba_d_state=8,
        mamba_n_groups=1,
        mamba_chunk_size=8,
        mamba_expand=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return BambaForCausalLM(config)


def _pegasus_x(vocab: int = 48):
    from transformers import PegasusXConfig, PegasusXForConditionalGeneration

    config = PegasusXConfig(
        vocab_size=vocab,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        block_size=8,
        num_global_tokens=4,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        decoder_start_token_id=0,
        eos_token_id=1,
    )
    return PegasusXForConditionalGeneration(config)


def _swin2sr():
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution

    config = Swin2SRConfig(
        image_size=16,
        patch_size=1,
        num_channels=1,
        embed_dim=16,
        depths=[1],
        num_heads=[2],
        window_size=4,
        upscale=2,
        upsampler="pixelshuffle",
        mlp_ratio=2.0,
    )
    return Swin2SRForImageSuperResolution(config)


def _depth_anything():
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        out_features=["stage1", "stage2"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=16,
        patch_size=8,
        neck_hidden_sizes=[8, 16],
        fusion_hidden_size=16,
        head_hidden_size=8,
        reassemble_factors=[2, 1],
        use_pretrained_backbone=False,
    )
    return DepthAnythingForDepthEstimation(config)


# -- generated data -------------------------------------------------------------------------------


def _copy_batches(gen: torch.Generator, batch: int = 16, length: int = 16, vocab: int = 48):
    """Seq2seq: the target is the source's first half, then an end token (1)."""
    while True:
        src = torch.randint(2, vocab, (batch, length), generator=gen)
        tgt = torch.cat([src[:, : length // 2], torch.ones(batch, 1, dtype=torch.long)], 1)
        yield src, tgt


def _smooth_images(gen: torch.Generator, batch: int, size: int) -> torch.Tensor:
    """Sums of a few random 2-D sinusoids in [0, 1]: (batch, 1, size, size)."""
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    img = torch.zeros(batch, size, size)
    for _ in range(3):
        fx, fy = (torch.rand(2, batch, 1, 1, generator=gen) * 4 + 1).unbind(0)
        phase = torch.rand(batch, 1, 1, generator=gen) * 6.28
        img = img + torch.sin(6.28 * (fx * xx + fy * yy) + phase)
    return (img / 6 + 0.5)[:, None]


def _sr_batches(gen: torch.Generator, batch: int = 8):
    """(16x16 low-resolution, 32x32 high-resolution) pairs of generated smooth images."""
    while True:
        hr = _smooth_images(gen, batch, 32)
        yield F.avg_pool2d(hr, 2), hr


def _depth_batches(gen: torch.Generator, batch: int = 8):
    """Generated scenes: a tilted floor plane with a box in front; the image is the depth
    shaded (nearer is brighter) with a colour tint and texture; the target is the depth."""
    coords = torch.linspace(0, 1, 32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    while True:
        tilt = torch.rand(batch, 1, 1, generator=gen)
        depth = 1.0 + 2.0 * (1 - yy) * (0.5 + tilt) + 0.3 * xx
        cx, cy = (torch.rand(2, batch, generator=gen) * 20 + 2).long().unbind(0)
        for i in range(batch):
            depth[i, cy[i] : cy[i] + 8, cx[i] : cx[i] + 8] = 0.8
        shade = 1.0 / depth
        tint = torch.rand(batch, 3, 1, 1, generator=gen) * 0.5 + 0.5
        noise = 0.05 * torch.rand(batch, 3, 32, 32, generator=gen)
        yield shade[:, None] * tint + noise, depth


def _diabetes() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()


def _diabetes_batches(gen: torch.Generator, batch: int = 32):
    x, y = _diabetes()
    while True:
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        yield x[idx], y[idx]


def _sbm_graph(gen: torch.Generator, nodes: int = 120, classes: int = 3):
    """A stochastic block model: dense adjacency (with self-loops), noisy features, labels."""
    y = torch.arange(nodes) % classes
    same = y[:, None] == y[None, :]
    prob = torch.where(same, 0.12, 0.02)
    adj = torch.rand(nodes, nodes, generator=gen) < prob
    adj = adj | adj.T | torch.eye(nodes, dtype=torch.bool)
    x = F.one_hot(y, classes).float() * 0.6 + torch.randn(nodes, 16, generator=gen)[:, :classes]
    x = torch.cat([x, torch.randn(nodes, 13, generator=gen)], 1)
    train = torch.rand(nodes, generator=gen) < 0.6
    return x, adj, y, train


def _wave_batches(gen: torch.Generator, batch: int = 8, length: int = 128):
    """Noisy sums of two sinusoids with slow random frequencies: (batch, length + 1, 1)."""
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        f = torch.rand(batch, 2, 1, generator=gen) * 0.15 + 0.02
        p = torch.rand(batch, 2, 1, generator=gen) * 6.28
        s = torch.sin(f * t + p).sum(1) * 0.5 + 0.05 * torch.randn(batch, length + 1, generator=gen)
        yield s[:, :, None]


# -- hand-written families ------------------------------------------------------------------------


class RBM(nn.Module):
    """Bernoulli RBM; ``free_energy`` is what contrastive divergence differentiates."""

    def __init__(self, visible: int = 64, hidden: int = 48) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.01 * torch.randn(hidden, visible))
        self.v_bias = nn.Parameter(torch.zeros(visible))
        self.h_bias = nn.Parameter(torch.zeros(hidden))

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        return -(v @ self.v_bias) - F.softplus(F.linear(v, self.weight, self.h_bias)).sum(1)

    @torch.no_grad()
    def gibbs(self, v: torch.Tensor, gen: torch.Generator, k: int = 1) -> torch.Tensor:
        for _ in range(k):
            h = torch.bernoulli(torch.sigmoid(F.linear(v, self.weight, self.h_bias)), generator=gen)
            v = torch.bernoulli(torch.sigmoid(h @ self.weight + self.v_bias), generator=gen)
        return v

    def reconstruct(self, v: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(F.linear(v, self.weight, self.h_bias))
        return torch.sigmoid(h @ self.weight + self.v_bias)


class LSHAttention(nn.Module):
    """Reformer-style attention: shared query/key projection, keys unit-normalised, positions
    hashed into buckets by a random rotation; a query attends only within its bucket."""

    def __init__(self, dim: int, buckets: int = 4) -> None:
        super().__init__()
        self.qk = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("rotation", torch.randn(dim, buckets // 2))
        self.scale = dim**-0.5

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        qk = self.qk(x)
        rotated = qk.detach() @ self.rotation
        bucket = torch.cat([rotated, -rotated], -1).argmax(-1)
        keys = F.normalize(qk, dim=-1)
        logits = (qk @ keys.transpose(1, 2)) * self.scale
        same = bucket[:, :, None] == bucket[:, None, :]
        eye = torch.eye(x.shape[1], dtype=torch.bool)
        allowed = (same & keep[:, None, :]) | eye  # a token may always see itself
        logits = logits.masked_fill(~allowed, -1e9)
        return self.out(torch.softmax(logits, -1) @ self.v(x))


class MaskedMeanPool(nn.Module):
    """Mean of the kept (non-padding) tokens."""

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        k = keep[..., None].float()
        return (x * k).sum(1) / k.sum(1)


class ReformerEncoder(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 32, layers: int = 2, context: int = 16):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Embedding(context, dim)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(dim),
                    "attn": LSHAttention(dim),
                    "ln2": nn.LayerNorm(dim),
                    "ff": nn.Sequential(
                        nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
                    ),
                }
            )
            for _ in range(layers)
        )
        self.pool = MaskedMeanPool()
        self.head = nn.Linear(dim, 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        keep = idx != 0
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for layer in self.layers:
            x = x + layer["attn"](layer["ln1"](x), keep)
            x = x + layer["ff"](layer["ln2"](x))
        return self.head(self.pool(x, keep))


class SPPNet(nn.Module):
    """Conv features pooled by a spatial pyramid (1x1, 2x2, 4x4 max pools) into one vector."""

    def __init__(self, width: int = 12, levels: tuple[int, ...] = (1, 2, 4)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.levels = levels
        self.head = nn.Linear(2 * width * sum(n * n for n in levels), 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.relu(self.conv2(x))
        pooled = [F.adaptive_max_pool2d(x, n).flatten(1) for n in self.levels]
        return self.head(torch.cat(pooled, 1))


class DeepEnsemble(nn.Module):
    """Independent ReLU MLP regressors; the prediction is their mean."""

    def __init__(self, members: int = 5, inputs: int = 10, hidden: int = 32) -> None:
        super().__init__()
        self.members = nn.ModuleList(
            nn.Sequential(
                nn.Linear(inputs, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, 1),
            )
            for _ in range(members)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x)[:, 0] for m in self.members], 0)


def _ensemble_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member fits the targets on its own (the deep-ensemble objective)."""
    return ((out - y[None]) ** 2).mean()


class Data2VecDigits(nn.Module):
    """Student encoder over masked digit pixels plus a regression head onto the teacher's
    (an EMA copy of the encoder) layer-normalised features of the unmasked image."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(64, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        self.mask_token = nn.Parameter(torch.zeros(64))
        self.regressor = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.where(mask, self.mask_token.expand_as(x), x)
        return self.regressor(self.encoder(x))


class GATv2Layer(nn.Module):
    """GATv2 (Brody et al.): score_ij = a . LeakyReLU(W_l h_i + W_r h_j), over neighbours."""

    def __init__(self, inputs: int, outputs: int, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.per = heads, outputs // heads
        self.left = nn.Linear(inputs, outputs)
        self.right = nn.Linear(inputs, outputs)
        self.att = nn.Parameter(torch.randn(heads, self.per) * 0.3)

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        left = self.left(h).reshape(n, self.heads, self.per)
        right = self.right(h).reshape(n, self.heads, self.per)
        pair = F.leaky_relu(left[:, None] + right[None, :], 0.2)  # (i, j, heads, per)
        score = (pair * self.att).sum(-1).masked_fill(~adj[..., None], float("-inf"))
        alpha = torch.softmax(score, dim=1)
        return torch.einsum("ijh,jhp->ihp", alpha, right).reshape(n, -1)


class GATv2(nn.Module):
    def __init__(self, inputs: int = 16, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.gat1 = GATv2Layer(inputs, hidden)
        self.gat2 = GATv2Layer(hidden, hidden)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.gat1(x, adj))
        h = F.elu(self.gat2(h, adj))
        return self.classifier(h)


class SegmentMemoryLSTM(nn.Module):
    """Reads a long sequence segment by segment with an LSTM; a linear memory carries a
    summary from segment to segment (m <- mem(m) + last hidden state) and is added to every
    output of the next segment. Gradients flow through the memory across all segments."""

    def __init__(self, hidden: int = 16, segment: int = 16) -> None:
        super().__init__()
        self.segment = segment
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.mem = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.mem.weight, gain=0.8)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        memory = x.new_zeros(x.shape[0], self.lstm.hidden_size)
        outs = []
        for s in range(0, x.shape[1], self.segment):
            h, _ = self.lstm(x[:, s : s + self.segment])
            outs.append(self.head(h + memory[:, None]))
            memory = self.mem(memory) + h[:, -1]
        return torch.cat(outs, 1)


def _next_value_loss(model: SegmentMemoryLSTM, seq: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(model(seq[:, :-1]), seq[:, 1:])


# -- attention-logit growth: SmolLM3 --------------------------------------------------------------


def _qk_logit_scale(model, idx: torch.Tensor, layer: int = 0) -> float:
    """Largest |q_i| |k_j| / sqrt(d_head) of one layer (rotary embeddings keep these norms):
    the bound on its attention logits."""
    seen = {}
    attn = model.model.layers[layer].self_attn
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o.detach())),
        attn.k_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("k", o.detach())),
    ]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    d = attn.head_dim
    q = seen["q"].reshape(*idx.shape, -1, d).norm(dim=-1).max()
    k = seen["k"].reshape(*idx.shape, -1, d).norm(dim=-1).max()
    return float(q * k) / d**0.5


@scenario(
    "h33_hf_smollm3_lm",
    "adamw",
    "attention_logit_growth",
    where=(
        "model.layers.0.self_attn",
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
    ),
    diverges=None,
    onset=60,
)
def h33_smollm3_qk_rescale_growth(ctx: Context) -> None:
    """From step 60 (a 'phase 2' of a recipe) a hand-written re-scaling of layer 0's query
    and key projections runs after every optimizer step. It was meant to hold their norms at
    a target by ``w *= target / norm``, but the target was taken as 1% above the current
    norm each time: the q/k weights grow by 1% a step and the attention logits by ~2%,
    sharpening layer 0's attention towards one-hot (the loss itself carries on)."""
    gen = seeded(3301)
    model = _smollm3()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    attn = model.model.layers[0].self_attn
    probe, _ = next(text_batches(gen, 8, 32, 64))
    scale = {}

    def rescale(step: int) -> None:
        if step == 60:
            scale["onset"] = _qk_logit_scale(model, probe)
        if step >= 60:
            with torch.no_grad():
                for w in (attn.q_proj.weight, attn.k_proj.weight):
                    target = 1.01 * w.norm()
                    w.mul_(target / w.norm())

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 8, 32, 64),
        300,
        loss_fn=lm_loss,
        forward=lambda m, x: m(x).logits,
        before=rescale,
        classifier=False,
    )
    scale["end"] = _qk_logit_scale(model, probe)
    ctx.check("layer-0 q.k logit bound grew 20x from step 60", scale["end"] > 20 * scale["onset"])


@scenario("h33_hf_smollm3_lm", "adamw", "healthy")
def h33_smollm3_healthy(ctx: Context) -> None:
    gen = seeded(3302)
    model = _smollm3()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 8, 32, 64),
        250,
        loss_fn=lm_loss,
        forward=lambda m, x: m(x).logits,
        classifier=False,
    )
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.8 * _mean(ctx.losses[:10]))


# -- a slow divergence with no mechanism: Bamba ---------------------------------------------------


@scenario("h33_hf_bamba_hybrid_lm", "nadam", "loss_divergence", diverges="auto", onset=120)
def h33_bamba_drifting_tokenizer(ctx: Context) -> None:
    """From step 120 a shard of binary files mislabelled as text (bytes with no structure) is
    mixed in by a sampler whose weight for it ramps up over 150 steps: a growing share of the
    windows can only be predicted at chance, and the loss climbs slowly towards log(vocab).
    Nothing in the model misbehaves."""
    gen = seeded(3303)
    model = _bamba()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    stream = text_batches(gen, 8, 32, 64)

    def drifting():
        step = 0
        while True:
            x, y = next(stream)
            share = min(max((step - 120) / 150, 0.0), 1.0)
            pick = torch.rand(x.shape[0], generator=gen) < share
            junk = torch.randint(0, 64, (x.shape[0], 33), generator=gen)
            x = torch.where(pick[:, None], junk[:, :-1], x)
            y = torch.where(pick[:, None], junk[:, 1:], y)
            step += 1
            yield x, y

    batches = drifting()
    fit(
        ctx,
        model,
        opt,
        batches,
        300,
        loss_fn=lm_loss,
        forward=lambda m, x: m(x).logits,
        classifier=False,
    )
    best = min(_mean(ctx.losses[i : i + 10]) for i in range(0, 120, 10))
    ctx.check("loss near its best by 120", _mean(ctx.losses[110:120]) < 1.2 * best)
    ctx.check("loss climbed 1.5 nats above its best", _mean(ctx.losses[-10:]) > best + 1.5)


# -- output-logit divergence: Pegasus-X -----------------------------------------------------------


@scenario(
    "h33_hf_pegasus_x_seq2seq",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=80,
)
def h33_pegasus_x_zloss_sign(ctx: Context) -> None:
    """From step 80 a z-loss is added to keep the softmax normaliser near 0, written with the
    wrong sign (``loss - 1e-2 * logsumexp(logits)**2``): it rewards ever larger output logits,
    which grow step after step until the cross-entropy gives way."""
    gen = seeded(3304)
    model = _pegasus_x()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    last = {}

    def forward(m, pair):  # the batch carries source and target side by side
        return m(input_ids=pair[:, :16], labels=pair[:, 16:].contiguous()).logits

    def batches():
        for src, tgt in _copy_batches(gen):
            yield torch.cat([src, tgt], 1), tgt

    def seq_loss(logits, tgt):
        last["logits"] = logits
        return lm_loss(logits, tgt)

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 80:
            return loss
        return loss - 1e-2 * torch.logsumexp(last["logits"], -1).pow(2).mean()

    peaks = []

    def record(step: int) -> None:
        if "logits" in last:
            peaks.append(float(last["logits"].detach().abs().max()))

    fit(
        ctx,
        model,
        opt,
        batches(),
        320,
        loss_fn=seq_loss,
        forward=forward,
        extra_loss=zloss,
        before=record,
        classifier=False,
    )
    ctx.check("max |logit| grew 10x after 80", max(peaks[-20:]) > 10 * max(peaks[60:79]))
    ctx.check("loss fell before 80", _mean(ctx.losses[70:80]) < _mean(ctx.losses[:10]) - 0.3)


# -- a data outlier: Swin2SR ----------------------------------------------------------------------


def _sr_forward(m, x):
    return m(x).reconstruction


@scenario("h33_hf_swin2sr_superres", "adamax", "data_outlier", diverges=150, onset=150)
def h33_swin2sr_unscaled_batch(ctx: Context) -> None:
    """At step 150 one batch comes from a loader that skipped the /255 scaling: inputs and
    targets in 0..255 instead of 0..1. The loss jumps by orders of magnitude for that step;
    Adamax's bounded step lets the run get over it."""
    gen = seeded(3305)
    model = _swin2sr()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            return x * 255.0, y * 255.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        _sr_batches(gen),
        240,
        loss_fn=F.mse_loss,
        forward=_sr_forward,
        alter=alter,
        classifier=False,
    )
    ctx.check("loss spiked at 150", ctx.losses[150] > 100 * max(ctx.losses[140:150]))
    ctx.check("run got over it", _mean(ctx.losses[-10:]) < 3 * _mean(ctx.losses[140:150]))


# -- a frozen layer: Depth Anything ---------------------------------------------------------------


def _depth_forward(m, x):
    return m(pixel_values=x).predicted_depth


@scenario("h33_hf_depth_anything", "radam", "update_ratio_out_of_range", where="head")
def h33_depth_anything_head_lr0(ctx: Context) -> None:
    """Layer-wise learning rates: the backbone at 0.5x, the neck at 1x, and the depth head's
    group at ``base * head_warmup`` where the warm-up factor starts at 0 and the scheduler
    meant to raise it was never stepped: the head never moves."""
    gen = seeded(3307)
    model = _depth_anything()
    head_warmup = 0.0
    opt = torch.optim.RAdam(
        [
            {"params": model.backbone.parameters(), "lr": 1e-3},
            {"params": model.neck.parameters()},
            {"params": model.head.parameters(), "lr": 2e-3 * head_warmup},
        ],
        lr=2e-3,
    )
    before = [p.detach().clone() for p in model.head.parameters()]
    fit(
        ctx,
        model,
        opt,
        _depth_batches(gen),
        160,
        loss_fn=F.mse_loss,
        forward=_depth_forward,
        classifier=False,
    )
    ctx.check(
        "head unchanged",
        all(torch.equal(a, b) for a, b in zip(before, model.head.parameters(), strict=True)),
    )
    ctx.check("the rest learnt", _mean(ctx.losses[-10:]) < 0.8 * _mean(ctx.losses[:10]))


# -- a one-off NaN from one module on one bad sample: Reformer-style LSH encoder -------------------


@scenario("h33_reformer_lsh_encoder", "rmsprop", "nonfinite", where="pool", diverges=173, onset=173)
def h33_reformer_empty_document(ctx: Context) -> None:
    """At step 173 one document in the batch is empty after cleaning: all padding. The masked
    mean pool divides its zero sum by a zero count, NaN goes into the head and the loss."""
    gen = seeded(3308)
    model = ReformerEncoder()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 173:
            x = x.clone()
            x[3] = 0
        return x, y

    fit(ctx, model, opt, _bert_like(gen), 220, alter=alter)
    finite = _finite(ctx.losses)
    ctx.check("finite until 173, not after", all(finite[:173]) and not finite[173])
    ctx.check("learnt before 173", _mean(ctx.losses[160:173]) < 0.8 * _mean(ctx.losses[:10]))


def _bert_like(gen: torch.Generator):
    from scenarios.common import bert_batches

    return bert_batches(gen, batch=32, length=16, vocab=128)


# -- a learning rate above the stability limit: SPP CNN (warm-up overshoots) ----------------------


@scenario("h33_spp_cnn", "sgd_nesterov", "sharpness_above_limit", diverges="auto", onset=0)
def h33_spp_warmup_overshoot(ctx: Context) -> None:
    """A linear warm-up to a peak learning rate copied from a recipe with 16x the batch size
    (scaled linearly): it passes the stability limit partway through and the loss blows up
    before the warm-up ends."""
    gen = seeded(3309)
    model = SPPNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)
    peak, warmup = 0.5, 400

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = peak * min(step / warmup, 1.0)

    fit(ctx, model, opt, digit_batches(gen, 32), 400, before=schedule)
    finite = _finite(ctx.losses)
    first = _mean(ctx.losses[:5])
    worst = max(range(400), key=lambda t: ctx.losses[t] if finite[t] else math.inf)
    ctx.check("learnt first", min(ctx.losses[:worst]) < 0.5 * first)
    ctx.check("blew up during the warm-up", not finite[worst] or ctx.losses[worst] > 2 * first)


# -- AMP overflow (benign): SPP CNN under fp16 autocast -------------------------------------------


@scenario("h33_spp_cnn", "sg_adabelief", "amp_overflow")
def h33_spp_fp16_scaler_overflow(ctx: Context) -> None:
    """float16 autocast with a GradScaler started at 2**26 that grows every 25 steps: the first
    steps overflow and are skipped while the scale halves, and later growths overflow again
    now and then; the scaler handles every one and training goes on normally."""
    gen = seeded(3310)
    model = SPPNet()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**26, growth_interval=25)
    fit(ctx, model, opt, digit_batches(gen, 32), 200, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales[:-1], ctx.scales[1:], strict=False))
    ctx.check("scaler backed off >= 5 times", drops + (ctx.scales[0] < 2.0**26) >= 5)
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))


# -- dead units: deep ensemble --------------------------------------------------------------------


@scenario(
    "h33_deep_ensemble_mlp",
    "adagrad",
    "loss_of_plasticity",
    where=tuple(f"members.{k}.0" for k in range(5)),
    diverges=None,
    onset=100,
)
def h33_ensemble_sparsity_penalty(ctx: Context) -> None:
    """From step 100 an activation-sparsity penalty on each member's first layer is switched on
    (to prune the ensemble later) with a weight 1000x the one intended: it pushes the
    pre-activations below zero until the first layer's ReLUs are dead, and the members' fit
    degrades."""
    gen = seeded(3311)
    model = DeepEnsemble()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    pre = []
    for member in model.members:
        member[0].register_forward_hook(lambda m, a, o: pre.append(o))

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        acts = list(pre)
        pre.clear()
        if step < 100:
            return loss
        return loss + 50.0 * sum(F.relu(a).mean() for a in acts)

    fit(
        ctx,
        model,
        opt,
        _diabetes_batches(gen),
        320,
        loss_fn=_ensemble_loss,
        extra_loss=penalty,
        classifier=False,
    )
    x, _ = _diabetes()
    with torch.no_grad():
        dead = _mean([dead_fraction(F.relu(m[0](x))) for m in model.members])
    pre.clear()
    ctx.check("first-layer units >= 70% dead", dead >= 0.7)
    ctx.check("fit degraded", _mean(ctx.losses[-20:]) > 1.5 * _mean(ctx.losses[80:100]))


# -- Adam's second moment poisoned: data2vec with an EMA teacher ---------------------------------


@scenario("h33_data2vec_ema_digits", "adam", "adam_second_moment_poisoned", onset=150)
def h33_data2vec_unscaled_resume_step(ctx: Context) -> None:
    """The run is resumed at step 150 from a checkpoint of an fp16 recipe whose hand-written
    loss scaling (x 2**16) is applied on the first step after the resume without being undone
    before ``optimizer.step()``: one gradient 65536 times the usual. Its direction is normal,
    so Adam's normalised step barely moves the weights, but its square sits in the second
    moment (beta2 = 0.999) for ~1000 steps: every later update is a small fraction of what it
    was and the student all but stops learning."""
    gen = seeded(3312)
    model = Data2VecDigits()
    teacher = Data2VecDigits().encoder
    teacher.load_state_dict(model.encoder.state_dict())
    teacher.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    masks = torch.Generator().manual_seed(3313)

    def forward(m, x):
        mask = torch.rand(x.shape, generator=masks) < 0.5
        forward.target = F.layer_norm(teacher(x), (64,))
        return m(x, mask)

    def loss_fn(pred, _):
        return F.mse_loss(pred, forward.target)

    def scaled_once(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 2.0**16 if step == 150 else loss

    moves = []
    snap = {}

    def ema_and_track(step: int) -> None:
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        if "last" in snap:
            moves.append(float((params - snap["last"]).norm()))
        snap["last"] = params
        with torch.no_grad():
            for t, s in zip(teacher.parameters(), model.encoder.parameters(), strict=True):
                t.mul_(0.99).add_(s, alpha=0.01)

    fit(
        ctx,
        model,
        opt,
        digit_batches(gen),
        300,
        loss_fn=loss_fn,
        forward=forward,
        extra_loss=scaled_once,
        before=ema_and_track,
        classifier=False,
    )
    # moves[i] is the update of step i (measured before step i + 1); the spike's momentum
    # (beta1 = 0.9) has faded by step ~190, its square in the second moment has not
    step_per_grad = [m / g for m, g in zip(moves, ctx.grad_norms, strict=False)]
    ctx.check(
        "update per unit gradient after 200 shrank 10x",
        _mean(step_per_grad[200:298]) < 0.1 * _mean(step_per_grad[100:150]),
    )
    ctx.check(
        "loss stayed above its pre-150 level", min(ctx.losses[250:]) > max(ctx.losses[140:150])
    )
    ctx.check(
        "gradient at 150 was 1000x", ctx.grad_norms[150] > 1000 * max(ctx.grad_norms[130:150])
    )


# -- softmax collapse: GATv2 ----------------------------------------------------------------------


def _graph_batches(x, adj, y, train):
    while True:
        yield x, y


@scenario("h33_gatv2_graph", "sg_lion", "softmax_collapse", where="classifier", onset=0)
def h33_gatv2_temperature_bug(ctx: Context) -> None:
    """The logits are divided by a 'temperature' of 0.02 meant for a contrastive loss elsewhere
    in the code base: cross-entropy drives the margins up until the float32 softmax of most
    training nodes is exactly 1 at their label (no gradient left to learn from)."""
    gen = seeded(3314)
    x, adj, y, train = _sbm_graph(gen)
    model = GATv2()
    opt = sgo.Lion(model.parameters(), lr=1e-3, fused=False)

    def forward(m, feats):
        return m(feats, adj)[train] / 0.02

    def loss_fn(logits, labels):
        return F.cross_entropy(logits, labels[train])

    fit(
        ctx,
        model,
        opt,
        _graph_batches(x, adj, y, train),
        260,
        loss_fn=loss_fn,
        forward=forward,
        classifier=False,
    )
    with torch.no_grad():
        logits = forward(model, x)
    ctx.check("half the training nodes collapsed", collapsed_fraction(logits, y[train]) >= 0.5)


@scenario("h33_gatv2_graph", "adagrad", "healthy")
def h33_gatv2_healthy(ctx: Context) -> None:
    gen = seeded(3315)
    x, adj, y, train = _sbm_graph(gen)
    model = GATv2()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)

    def forward(m, feats):
        return m(feats, adj)[train]

    def loss_fn(logits, labels):
        return F.cross_entropy(logits, labels[train])

    fit(
        ctx,
        model,
        opt,
        _graph_batches(x, adj, y, train),
        200,
        loss_fn=loss_fn,
        forward=forward,
        classifier=False,
    )
    with torch.no_grad():
        acc = float((model(x, adj).argmax(1)[~train] == y[~train]).float().mean())
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.6 * _mean(ctx.losses[:5]))
    ctx.check("held-out nodes above chance", acc > 0.5)


# -- exploding gradients: segment-recurrent memory LSTM -------------------------------------------


@scenario(
    "h33_segment_memory_lstm",
    "sgd_mom",
    "exploding_gradients",
    where="mem",
    diverges="auto",
    onset=60,
)
def h33_segment_memory_decay_sign(ctx: Context) -> None:
    """From step 60 a hand-written decoupled weight decay on the memory matrix runs after each
    step, with its sign flipped (``w += lr * wd * w``): the memory map grows 1% a step, and
    the gradient through eight segments of memory grows with its eighth power until it
    explodes and the predictions with it."""
    gen = seeded(3316)
    model = SegmentMemoryLSTM()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def decay(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                model.mem.weight.add_(model.mem.weight, alpha=0.05 * 0.2)

    def batches():
        for seq in _wave_batches(gen):
            yield seq, None

    fit(
        ctx,
        model,
        opt,
        batches(),
        260,
        loss_fn=lambda out, _: out,
        forward=_next_value_loss,
        before=decay,
        classifier=False,
    )
    finite = [g for g in ctx.grad_norms if math.isfinite(g)]
    ctx.check("gradient grew 100x after 60", max(finite[60:]) > 100 * _mean(finite[40:60]))


@scenario("h33_segment_memory_lstm", "rmsprop", "healthy")
def h33_segment_memory_healthy(ctx: Context) -> None:
    gen = seeded(3317)
    model = SegmentMemoryLSTM()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)

    def batches():
        for seq in _wave_batches(gen):
            yield seq, None

    fit(
        ctx,
        model,
        opt,
        batches(),
        200,
        loss_fn=lambda out, _: out,
        forward=_next_value_loss,
        classifier=False,
    )
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))


# -- healthy control: RBM by contrastive divergence -----------------------------------------------


@scenario("h33_rbm_contrastive_divergence", "sgd_mom", "healthy")
def h33_rbm_cd1_healthy(ctx: Context) -> None:
    """CD-1 on binarised digits: autograd on F(data) - F(one Gibbs step from the data); the
    logged loss is the reconstruction error (what an RBM user watches)."""
    gen = seeded(3318)
    model = RBM()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    sampler = torch.Generator().manual_seed(3319)

    def binarised():
        for x, y in digit_batches(gen):
            yield (x > 0.4).float(), y

    def forward(m, v):
        negative = m.gibbs(v, sampler)
        forward.cd = m.free_energy(v).mean() - m.free_energy(negative).mean()
        return m.reconstruct(v)

    def loss_fn(recon, _):
        return F.mse_loss(recon, forward.v)

    def keep(step: int, x: torch.Tensor, y: torch.Tensor):
        forward.v = x
        return x, y

    fit(
        ctx,
        model,
        opt,
        binarised(),
        250,
        loss_fn=loss_fn,
        forward=forward,
        alter=keep,
        extra_loss=lambda step, loss: forward.cd,
        classifier=False,
    )
    ctx.check("reconstruction error fell", _mean(ctx.losses[-20:]) < 0.6 * _mean(ctx.losses[:5]))
