"""Held-out scenarios, set 55 (``h55_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face Laguna, Mellum, MiniMax-M2, Mistral-4 and ZAYA causal LMs built from tiny
configs (byte-level text), and transformer variants written here in plain PyTorch: a looped
(weight-shared) decoder with a loop-count curriculum, an hourglass decoder (shift, shorten,
upsample), an nGPT-style normalised decoder (unit-norm hidden states and weights, learnt logit
scale), a differential-attention classifier (digits, rows as tokens), a Mixture-of-Depths
decoder (top-k token router per block), a kNN-memory decoder (Memorizing-Transformer-style
retrieval from a non-differentiable memory), a sigmoid-attention classifier on generated
sensor sequences (fp16 autocast with a GradScaler) and a Universal Transformer with adaptive
computation time (a control).

Optimizers: SGD, Nesterov SGD, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop and ASGD
from torch, and steadygrad.optim's Lion, AdaBelief, AdEMAMix and Grams (used, not read).
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
    digits,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

VOCAB = 128


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _climb_step(losses: list[float], nats: float = 1.0) -> int | None:
    """First step whose 5-step median loss is ``nats`` above the best loss so far."""
    best = math.inf
    for i, v in enumerate(losses):
        best = min(best, v)
        if i >= 4 and sorted(losses[i - 4 : i + 1])[2] > best + nats:
            return i
    return None


def _lm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x)


def _hf_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x, use_cache=False).logits


# -- Hugging Face causal LMs from tiny configs ----------------------------------------------------

_HF_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=0,
    eos_token_id=0,
    tie_word_embeddings=False,
)


def hf_laguna():
    from transformers import LagunaConfig, LagunaForCausalLM

    cfg = LagunaConfig(
        **_HF_COMMON,
        intermediate_size=64,
        num_hidden_layers=2,
        head_dim=16,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
    )
    return LagunaForCausalLM(cfg)


def hf_mellum():
    from transformers import MellumConfig, MellumForCausalLM

    cfg = MellumConfig(
        **_HF_COMMON,
        intermediate_size=64,
        num_hidden_layers=2,
        head_dim=16,
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
    )
    return MellumForCausalLM(cfg)


def hf_minimax_m2():
    from transformers import MiniMaxM2Config, MiniMaxM2ForCausalLM

    cfg = MiniMaxM2Config(
        **_HF_COMMON,
        intermediate_size=32,
        num_hidden_layers=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    return MiniMaxM2ForCausalLM(cfg)


def hf_mistral4():
    from transformers import Mistral4Config, Mistral4ForCausalLM

    cfg = Mistral4Config(
        **_HF_COMMON,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        n_shared_experts=1,
        n_routed_experts=4,
        num_experts_per_tok=2,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        qk_nope_head_dim=8,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
    )
    return Mistral4ForCausalLM(cfg)


def hf_zaya():
    from transformers import ZayaConfig, ZayaForCausalLM

    cfg = ZayaConfig(
        **_HF_COMMON,
        num_hidden_layers=2,
        head_dim=16,
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=1,
    )
    return ZayaForCausalLM(cfg)


# -- plain PyTorch pieces -------------------------------------------------------------------------


class LogitAttention(nn.Module):
    """Causal multi-head attention written out by hand, so the logits q.k * scale are at hand
    (``last_max_logit``, ``last_max_prob``). ``scale`` defaults to 1/sqrt(head dim)."""

    def __init__(self, dim: int, heads: int, scale: float | None = None, causal: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = scale if scale is not None else (dim // heads) ** -0.5
        self.causal = causal
        self.last_max_logit = 0.0
        self.last_max_prob = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = (q @ k.transpose(-1, -2)) * self.scale
        if self.causal:
            mask = torch.ones(t, t, dtype=torch.bool).triu(1)
            logits = logits.masked_fill(mask, float("-inf"))
        att = logits.softmax(-1)
        with torch.no_grad():
            self.last_max_logit = float(logits.masked_fill(logits.isinf(), 0).abs().max())
            self.last_max_prob = float(att.max(-1).values.mean())
        y = att @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class FFN(nn.Module):
    def __init__(self, dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = act()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PreNormBlock(nn.Module):
    def __init__(self, dim: int, heads: int, scale: float | None = None, mlp_norm: bool = True):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = LogitAttention(dim, heads, scale)
        self.ln2 = nn.LayerNorm(dim) if mlp_norm else nn.Identity()
        self.mlp = FFN(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def _init_small(model: nn.Module, std: float = 0.02) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


# looped (weight-shared) decoder


class LoopedLM(nn.Module):
    """One pre-norm block applied ``loops`` times (a looped transformer); ``loops`` is set by a
    curriculum from outside."""

    def __init__(self, dim: int = 32, heads: int = 2, use_norm: bool = True) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(32, dim)
        self.block = PreNormBlock(dim, heads, mlp_norm=use_norm)
        self.ln_f = nn.LayerNorm(dim) if use_norm else nn.Identity()
        self.head = nn.Linear(dim, VOCAB, bias=False)
        self.loops = 2
        _init_small(self)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for _ in range(self.loops):
            x = self.block(x)
        return self.head(self.ln_f(x))


# hourglass decoder


class HourglassLM(nn.Module):
    """Hourglass decoder: a full-length block, shift right by one and shorten pairs of tokens
    (linear on the concatenation), a block on the shortened sequence, upsample (linear to two
    tokens) with a residual, a full-length block, head."""

    def __init__(self, dim: int = 32, heads: int = 2, mid_scale: float | None = None) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(32, dim)
        self.pre = PreNormBlock(dim, heads)
        self.down = nn.Linear(2 * dim, dim)
        self.mid = PreNormBlock(dim, heads, scale=mid_scale)
        self.up = nn.Linear(dim, 2 * dim)
        self.post = PreNormBlock(dim, heads)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)
        _init_small(self)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        x = self.pre(self.tok(idx) + self.pos(torch.arange(t)))
        shifted = F.pad(x, (0, 0, 1, 0))[:, :-1]  # shift by k-1 = 1: no peeking ahead
        s = self.mid(self.down(shifted.reshape(b, t // 2, -1)))
        x = x + self.up(s).reshape(b, t, -1)
        return self.head(self.ln_f(self.post(x)))


# nGPT-style normalised decoder


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


class NGPTBlock(nn.Module):
    """nGPT block: q and k unit-normalised per head (scaled by ``sqk``), hidden state kept on
    the unit sphere, each branch an eigen-learning-rate step ``h + alpha (unit(f(h)) - h)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.sqk = nn.Parameter(torch.ones(dim))
        self.alpha_a = nn.Parameter(torch.full((dim,), 0.05))
        self.alpha_m = nn.Parameter(torch.full((dim,), 0.05))
        self.u = nn.Linear(dim, 2 * dim, bias=False)
        self.g = nn.Linear(dim, 2 * dim, bias=False)
        self.mo = nn.Linear(2 * dim, dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        hd = d // self.heads

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(b, t, self.heads, hd).transpose(1, 2)

        sqk = split(self.sqk.expand(b, t, d))
        q = _unit(split(self.q(h))) * sqk
        k = _unit(split(self.k(h))) * sqk
        y = F.scaled_dot_product_attention(q, k, split(self.v(h)), is_causal=True, scale=hd**0.5)
        a = self.o(y.transpose(1, 2).reshape(b, t, d))
        h = _unit(h + self.alpha_a * (_unit(a) - h))
        m = self.mo(self.u(h) * F.silu(self.g(h) * d**0.5))
        return _unit(h + self.alpha_m * (_unit(m) - h))


class NGPTHead(nn.Module):
    """Unit-norm rows times a learnt per-token logit scale ``s_z``."""

    def __init__(self, dim: int, vocab: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab, dim) * 0.02)
        self.s_z = nn.Parameter(torch.ones(vocab))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.s_z * (h @ _unit(self.weight).T)


class NGPT(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(32, dim)
        self.blocks = nn.ModuleList(NGPTBlock(dim, heads) for _ in range(layers))
        self.head = NGPTHead(dim, VOCAB)
        _init_small(self)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = _unit(self.tok(idx) + self.pos(torch.arange(idx.shape[1])))
        for block in self.blocks:
            h = block(h)
        return self.head(h)


# differential-attention classifier (digits, rows as tokens)


class DiffAttention(nn.Module):
    """Differential attention: softmax(q1 k1) - lambda softmax(q2 k2), a per-head RMS norm,
    times (1 - lambda_init)."""

    def __init__(self, dim: int, heads: int, depth: int) -> None:
        super().__init__()
        self.heads = heads
        self.hd = dim // heads
        self.qk = nn.Linear(dim, 2 * dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * depth)
        half = self.hd // 2
        self.lq1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lk1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lq2 = nn.Parameter(torch.randn(half) * 0.1)
        self.lk2 = nn.Parameter(torch.randn(half) * 0.1)
        self.norm = nn.RMSNorm(self.hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        half = self.hd // 2
        qk = self.qk(x).reshape(b, t, 2, self.heads, 2, half).permute(2, 4, 0, 3, 1, 5)
        (q1, q2), (k1, k2) = qk[0], qk[1]
        v = self.v(x).reshape(b, t, self.heads, self.hd).transpose(1, 2)
        a1 = (q1 @ k1.transpose(-1, -2) * half**-0.5).softmax(-1)
        a2 = (q2 @ k2.transpose(-1, -2) * half**-0.5).softmax(-1)
        lam = (
            torch.exp((self.lq1 * self.lk1).sum())
            - torch.exp((self.lq2 * self.lk2).sum())
            + self.lambda_init
        )
        y = self.norm((a1 - lam * a2) @ v) * (1 - self.lambda_init)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class DiffBlock(nn.Module):
    def __init__(self, dim: int, heads: int, depth: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = DiffAttention(dim, heads, depth)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = FFN(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CosineHead(nn.Module):
    """Cosine-similarity classifier head with a fixed inverse temperature ``scale``."""

    def __init__(self, dim: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * (_unit(h) @ _unit(self.weight).T)


class DiffTransformer(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, head: nn.Module | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.randn(8, dim) * 0.02)
        self.blocks = nn.ModuleList(DiffBlock(dim, heads, i) for i in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = head if head is not None else nn.Linear(dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(-1, 8, 8)) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h.mean(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# Mixture-of-Depths decoder


class MoDBlock(nn.Module):
    """Mixture-of-Depths: a router scores the tokens, the top ``capacity`` share of each sequence
    goes through the block (causal attention among them, a ReLU MLP), the rest skip it; the
    block's update is scaled by the sigmoid of the router score."""

    def __init__(self, dim: int, heads: int, capacity: float = 0.5) -> None:
        super().__init__()
        self.router = nn.Linear(dim, 1)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = LogitAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = FFN(dim, act=nn.ReLU)
        self.capacity = capacity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        scores = self.router(x).squeeze(-1)
        idx = scores.topk(int(t * self.capacity), dim=1).indices.sort(dim=1).values
        sel = x.gather(1, idx[..., None].expand(-1, -1, d))
        h = sel + self.attn(self.ln1(sel))
        h = h + self.mlp(self.ln2(h))
        w = torch.sigmoid(scores.gather(1, idx))[..., None]
        return x.scatter_add(1, idx[..., None].expand(-1, -1, d), w * (h - sel))


class MoDLM(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, layers: int = 3) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(32, dim)
        self.blocks = nn.ModuleList(MoDBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)
        _init_small(self)
        for block in self.blocks:
            nn.init.kaiming_uniform_(block.mlp.fc1.weight, a=math.sqrt(5))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# kNN-memory decoder (Memorizing-Transformer-style)


class KNNMemory(nn.Module):
    """Local causal attention plus top-k retrieval from a non-differentiable memory of earlier
    keys and values (cosine similarity), mixed by a learnt gate. The memory is written after each
    training forward pass; ``filled`` counts the valid slots."""

    def __init__(self, dim: int, size: int = 512, topk: int = 8) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(1))
        self.register_buffer("mem_k", torch.zeros(size, dim))
        self.register_buffer("mem_v", torch.zeros(size, dim))
        self.size, self.topk, self.filled, self.ptr = size, topk, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        local = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = local
        if self.filled >= self.topk:
            keys = self.mem_k[: self.filled]
            keys = keys / keys.norm(dim=-1, keepdim=True)  # memory keys are never zero (!)
            sim = _unit(q) @ keys.T
            top = sim.topk(self.topk, dim=-1)
            w = (10.0 * top.values).softmax(-1)
            retrieved = (w[..., None] * self.mem_v[top.indices]).sum(-2)
            g = torch.sigmoid(self.gate)
            out = g * retrieved + (1 - g) * local
        if self.training:
            self.write(k.detach().reshape(-1, d), v.detach().reshape(-1, d))
        return self.o(out)

    @torch.no_grad()
    def write(self, k: torch.Tensor, v: torch.Tensor) -> None:
        slots = (self.ptr + torch.arange(len(k))) % self.size
        self.mem_k[slots] = k
        self.mem_v[slots] = v
        self.ptr = int((self.ptr + len(k)) % self.size)
        self.filled = min(self.size, self.filled + len(k))

    @torch.no_grad()
    def clear(self) -> None:
        self.mem_k.zero_()
        self.mem_v.zero_()
        # the bug: ``self.filled = 0`` is missing, the zeroed slots still count as valid


class KNNBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.mem = KNNMemory(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = FFN(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mem(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class KNNLM(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(32, dim)
        self.blocks = nn.ModuleList([PreNormBlock(dim, heads), KNNBlock(dim)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)
        _init_small(self)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# sigmoid-attention classifier on generated sensor sequences


class SigmoidAttention(nn.Module):
    """Sigmoid attention (no softmax): sigmoid(q.k / sqrt(d) - log n) weights each value."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5 - math.log(t)
        y = torch.sigmoid(logits) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class SigmoidBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SigmoidAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = FFN(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class SigmoidClassifier(nn.Module):
    def __init__(self, channels: int = 6, dim: int = 32, heads: int = 2, classes: int = 4):
        super().__init__()
        self.embed = nn.Linear(channels, dim)
        self.pos = nn.Parameter(torch.randn(24, dim) * 0.02)
        self.blocks = nn.ModuleList(SigmoidBlock(dim, heads) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h.mean(1)))


SEA_LEVEL_PA = 101325.0


def sensor_batches(gen: torch.Generator, batch: int = 32, raw_pressure_from: int | None = None):
    """Generated 6-channel sensor windows (24 steps); the class (4) sets the frequency of the
    motion channels and the sign of the pressure drift. Channel 5 is barometric pressure,
    normalised as (p - 101325) / 200, or left in pascals from ``raw_pressure_from`` on."""
    t = torch.arange(24, dtype=torch.float32)
    i = 0
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        freq = (0.15 + 0.1 * y.float())[:, None, None]
        phase = 6.28 * torch.rand(batch, 1, 5, generator=gen)
        motion = torch.sin(freq * t[None, :, None] + phase)
        motion = motion + 0.3 * torch.randn(batch, 24, 5, generator=gen)
        drift = torch.where(y % 2 == 0, 1.0, -1.0)[:, None] * t[None] * 8.0
        pa = SEA_LEVEL_PA + drift + 40.0 * torch.randn(batch, 24, generator=gen)
        raw = raw_pressure_from is not None and i >= raw_pressure_from
        pressure = pa if raw else (pa - SEA_LEVEL_PA) / 200.0
        yield torch.cat([motion, pressure[..., None]], -1), y
        i += 1


# Universal Transformer with adaptive computation time (digits, rows as tokens)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = FFN(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class UniversalACT(nn.Module):
    """One shared encoder block applied up to ``max_steps`` times per token, with Graves'
    adaptive computation time (halting unit, remainders, ponder cost ``self.ponder``)."""

    def __init__(self, dim: int = 32, heads: int = 2, max_steps: int = 6) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.randn(8, dim) * 0.02)
        self.step_emb = nn.Parameter(torch.randn(max_steps, dim) * 0.02)
        self.block = EncoderBlock(dim, heads)
        self.halt = nn.Linear(dim, 1)
        nn.init.constant_(self.halt.bias, -1.0)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)
        self.max_steps = max_steps
        self.ponder = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.embed(x.reshape(-1, 8, 8)) + self.pos
        b, t, _ = state.shape
        halting = torch.zeros(b, t)
        remainders = torch.zeros(b, t)
        n_updates = torch.zeros(b, t)
        out = torch.zeros_like(state)
        for s in range(self.max_steps):
            p = torch.sigmoid(self.halt(state)).squeeze(-1)
            running = (halting < 1.0).float()
            last = s == self.max_steps - 1
            new_halted = ((halting + p * running) > 0.99).float() * running
            if last:
                new_halted = running
            still = running - new_halted
            halting = halting + p * still
            remainders = remainders + new_halted * (1 - halting)
            halting = halting + new_halted * remainders
            n_updates = n_updates + running
            w = (p * still + new_halted * remainders)[..., None]
            state = self.block(state + self.step_emb[s])
            out = out + w * state
        self.ponder = (n_updates + remainders).mean()
        return self.head(self.ln_f(out.mean(1)))


# the steps the faults strike at (their onsets), shared by the truths and the checks
KNN_AT = 120  # the epoch boundary that clears the kNN memory
SIG_AT = 140  # the first batch of the shard with raw pressure
MM_AT = 150  # the step whose gradients keep the loss scale
ME_AT = 150  # the validation pass that swaps the EMA weights in
ZA_AT = 100  # the target-noise curriculum starts
ZA_DIVERGES = 158  # measured: the 5-step median loss first 1 nat above the best so far


# == the faults ====================================================================================


@scenario(
    "h55_looped_transformer",
    "sgd",
    "exploding_gradients",
    where=("block", "block.mlp"),
    diverges="auto",
    heldout=True,
    onset=0,
    note="looped block with its MLP pre-norm and final norm left off; loop curriculum 2 -> 30",
)
def h55_looped_exploding_sgd(ctx: Context) -> None:
    """A looped transformer (one block applied ``loops`` times) built with ``use_norm=False``,
    a flag meant for an ablation and left on: the MLP branch's pre-norm and the final norm are
    identities (attention keeps its pre-norm). A curriculum raises the loops from 2 to 30. The
    MLP branch now feeds the un-normalised residual stream back into itself on every loop, so
    its Jacobian is multiplied once per loop: the shared block's gradients grow, slowly at first
    and then steadily as the loops and the weights they enlarge grow, until the run breaks."""
    gen = seeded(5501)
    model = LoopedLM(use_norm=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mlp_grads: list[float] = []
    model.block.mlp.fc1.weight.register_hook(lambda g: mlp_grads.append(float(g.norm())))

    def curriculum(step: int) -> None:
        model.loops = min(30, 2 + step // 10)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        260,
        loss_fn=lm_loss,
        before=curriculum,
        classifier=False,
        forward=_lm_forward,
    )
    finite = [g for g in mlp_grads if _finite(g)]
    early = sorted(finite[40:80])[20]
    late = sorted(finite[-20:])[10]
    ctx.check("the looped MLP's gradient grew 5x (steps 40-80 to the end)", late > 5 * early)
    ctx.check("the run broke (non-finite loss)", not all(_finite(v) for v in ctx.losses))


@scenario(
    "h55_hourglass_transformer",
    "adam",
    "attention_logit_growth",
    where="mid.attn",
    diverges=None,
    heldout=True,
    onset=0,
    note="shortened-stage attention scaled by sqrt(d) instead of 1/sqrt(d)",
)
def h55_hourglass_attn_scale_adam(ctx: Context) -> None:
    """An hourglass decoder whose shortened (middle) stage uses its own attention helper, where
    the temperature was written ``head_dim ** 0.5`` instead of ``head_dim ** -0.5``: its
    logits are 16x too large from the start, and with Adam at a brisk rate q and k grow until the
    middle attention saturates to one key per query; the full-length stages keep their logits
    small."""
    gen = seeded(5502)
    model = HourglassLM(mid_scale=16**0.5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    mids: list[float] = []
    probs: list[float] = []
    pres: list[float] = []

    def watch(step: int, loss: torch.Tensor) -> torch.Tensor:
        mids.append(model.mid.attn.last_max_logit)
        probs.append(model.mid.attn.last_max_prob)
        pres.append(max(model.pre.attn.last_max_logit, model.post.attn.last_max_logit))
        return loss

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        300,
        loss_fn=lm_loss,
        extra_loss=watch,
        classifier=False,
        forward=_lm_forward,
    )
    ctx.check("middle attention logits grew 10x from step 10", max(mids[-20:]) > 10 * mids[10])
    ctx.check("middle attention saturated (mean max prob > 0.9)", probs[-1] > 0.9)
    ctx.check("full-length stages' logits stay 5x smaller", max(pres[-20:]) < max(mids[-20:]) / 5)


@scenario(
    "h55_ngpt_normalised",
    "sg_lion",
    "output_logit_divergence",
    where="head",
    diverges="auto",
    heldout=True,
    onset=0,
    note="the logit scale s_z in a param group with weight decay of the wrong sign",
)
def h55_ngpt_logit_scale_decay_sign_lion(ctx: Context) -> None:
    """An nGPT-style decoder (unit-norm hidden states, unit-norm head rows times a learnt
    per-token logit scale ``s_z``) trained with Lion. The param-group builder gives ``s_z`` its
    own group and, meaning to exempt it from decay, writes ``weight_decay=-wd``: the decoupled
    decay ``p *= 1 - lr * wd`` becomes a growth of 3% a step. Everything else stays on the unit
    sphere, but the head's logit scale grows exponentially, log Z runs away and the loss climbs
    from confidently wrong predictions."""
    gen = seeded(5503)
    model = NGPT()
    rest = [p for n, p in model.named_parameters() if n != "head.s_z"]
    opt = sgo.Lion(
        [{"params": rest}, {"params": [model.head.s_z], "weight_decay": -15.0}],
        lr=2e-3,
        weight_decay=0.0,
        fused=False,
    )
    max_logits: list[float] = []

    def watch(step: int, loss: torch.Tensor) -> torch.Tensor:
        max_logits.append(float(model.head.s_z.detach().abs().max()))
        return loss

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        260,
        loss_fn=lm_loss,
        extra_loss=watch,
        classifier=False,
        forward=_lm_forward,
    )
    x, _ = next(text_batches(gen))
    with torch.no_grad():
        logits = model(x)
        lse = torch.logsumexp(logits, -1).mean()
    ctx.check("logit scale grew 20x from step 30", max_logits[-1] > 20 * max_logits[30])
    ctx.check("log Z above 20 at the end", float(lse) > 20)
    ctx.check("the loss climbed 1 nat above its best", ctx.losses[-1] > min(ctx.losses) + 1)


def _digit_subset(gen: torch.Generator, n: int, batch: int):
    """A fixed subset of ``n`` digits (a small training set) and endless shuffled batches of it."""
    x, y = digits()
    keep = torch.randperm(len(y), generator=gen)[:n]
    x, y = x[keep], y[keep]

    def batches():
        while True:
            order = torch.randperm(n, generator=gen)
            for i in range(0, n - batch + 1, batch):
                yield x[order[i : i + batch]], y[order[i : i + batch]]

    return (x, y), batches()


@scenario(
    "h55_diff_attention_digits",
    "nadam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    onset=0,
    note="cosine head's inverse temperature 1/0.002 instead of 1/0.02",
)
def h55_diffattn_cosine_temperature_nadam(ctx: Context) -> None:
    """A differential-attention classifier (digit rows as tokens) with a cosine-similarity head
    whose temperature was typed 0.002 instead of 0.02: the logits are 500 x cos instead of
    50 x cos. A cosine margin of 0.04 already puts the float32 softmax at exactly one-hot, so as
    the small training set (320 digits) is fitted, row after row's probabilities collapse to
    exactly 1.0 and its gradient to exactly zero: the training loss sits near zero while
    learning stops on the collapsed rows."""
    gen = seeded(5504)
    model = DiffTransformer(head=CosineHead(32, 10, scale=1 / 0.002))
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    (x, y), batches = _digit_subset(gen, 320, 64)
    fit(ctx, model, opt, batches, 450)
    with torch.no_grad():
        logits = model(x)
    ctx.check(
        "40% of the training set's rows collapsed to exactly one-hot",
        collapsed_fraction(logits, y) > 0.4,
    )
    ctx.check("training loss below 0.01", sum(ctx.losses[-20:]) / 20 < 0.01)


@scenario(
    "h55_mixture_of_depths",
    "rmsprop",
    "loss_of_plasticity",
    where=(
        "blocks.0.mlp.fc1",
        "blocks.1.mlp.fc1",
        "blocks.2.mlp.fc1",
        "blocks.0.mlp",
        "blocks.1.mlp",
        "blocks.2.mlp",
    ),
    diverges=None,
    heldout=True,
    onset=0,
    note="sparsity bias init typed -2.0 instead of -0.2: most MLP ReLU units dead from the start",
)
def h55_mod_negative_bias_init_rmsprop(ctx: Context) -> None:
    """A Mixture-of-Depths decoder (a router sends half the tokens of each sequence through
    each block) whose ReLU MLPs use a "sparse activation" init: the first MLP layer's bias is
    set to a small negative constant so few units fire at first. The constant was typed -2.0
    instead of -0.2: with pre-activations of standard deviation ~0.6 most units are never
    positive on any token, get no gradient, and stay dead for the whole run (RMSprop): most
    MLP units never learn anything, and the decoder trains on attention and a sliver of its
    MLP width."""
    gen = seeded(5505)
    model = MoDLM()
    for block in model.blocks:
        nn.init.constant_(block.mlp.fc1.bias, -2.0)  # meant -0.2
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    probe, _ = next(text_batches(torch.Generator().manual_seed(55), batch=64))

    def dead() -> list[float]:
        fracs = []
        with torch.no_grad():
            x = model.tok(probe) + model.pos(torch.arange(probe.shape[1]))
            for block in model.blocks:
                fracs.append(dead_fraction(F.relu(block.mlp.fc1(block.ln2(x)))))
                x = block(x)
        return fracs

    start = dead()
    w0 = [b.mlp.fc1.weight.detach().clone() for b in model.blocks]
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        300,
        loss_fn=lm_loss,
        classifier=False,
        forward=_lm_forward,
    )
    end = dead()
    frozen = [
        float(((b.mlp.fc1.weight - w).abs().sum(1) == 0).float().mean())
        for b, w in zip(model.blocks, w0, strict=True)
    ]
    ctx.check("over half of the MLP units dead at the start", sum(start) / 3 > 0.5)
    ctx.check("over half still dead at the end", sum(end) / 3 > 0.5)
    ctx.check("a third of the MLP units' input weights never moved", sum(frozen) / 3 > 0.33)


@scenario(
    "h55_knn_memory_transformer",
    "sg_adabelief",
    "nonfinite",
    where="blocks.1.mem",
    diverges=KNN_AT,
    heldout=True,
    onset=KNN_AT,
    note="memory.clear() zero-fills the keys but keeps them counted: 0/0 in the key normalisation",
)
def h55_knn_memory_clear_nan_adabelief(ctx: Context) -> None:
    """A kNN-memory decoder (Memorizing-Transformer-style: local attention plus top-k
    retrieval, by cosine similarity, from a memory of earlier keys and values) trained with
    AdaBelief. At the first epoch boundary (step 120) the loop calls ``memory.clear()``, which
    zero-fills the key and value buffers but does not reset the count of valid slots. The next
    retrieval normalises the stored keys as ``k / k.norm()`` (memory keys are never zero, so no
    eps): 0/0 is NaN in the memory module, and the NaN runs through the rest of the model into
    the loss."""
    gen = seeded(5506)
    model = KNNLM()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    first_bad: dict[str, int] = {}
    order = ["blocks.0", "blocks.1.ln1", "blocks.1.mem", "blocks.1.mlp", "head"]
    step_now = [0]

    def hook(name: str):
        def record(m: nn.Module, i, o: torch.Tensor) -> None:
            if name not in first_bad and not bool(torch.isfinite(o).all()):
                first_bad[name] = step_now[0]

        return record

    modules = dict(model.named_modules())
    for name in order:
        modules[name].register_forward_hook(hook(name))

    def boundary(step: int) -> None:
        step_now[0] = step
        if step == KNN_AT:
            model.blocks[1].mem.clear()

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        KNN_AT + 12,
        loss_fn=lm_loss,
        before=boundary,
        classifier=False,
        forward=_lm_forward,
    )
    finite = [_finite(v) for v in ctx.losses]
    ctx.check(f"finite until {KNN_AT}, not at it", all(finite[:KNN_AT]) and not finite[KNN_AT])
    ctx.check(
        "the memory module is the first to output a non-finite value",
        first_bad.get("blocks.1.mem") == KNN_AT
        and first_bad.get("blocks.0", KNN_AT + 1) > KNN_AT
        and first_bad.get("blocks.1.ln1", KNN_AT + 1) > KNN_AT,
    )
    ctx.check("the loss fell before the boundary", ctx.losses[KNN_AT - 1] < ctx.losses[0] - 1)


@scenario(
    "h55_sigmoid_attention_sensors",
    "adam",
    "amp_overflow",
    where="embed",
    diverges=SIG_AT,
    heldout=True,
    onset=SIG_AT,
    note="fp16 autocast: a new shard's pressure column in raw pascals overflows the input layer",
)
def h55_sigmoid_attn_raw_pressure_amp_adam(ctx: Context) -> None:
    """A sigmoid-attention classifier of generated 6-channel sensor windows, trained under fp16
    autocast with a GradScaler and Adam. From step 140 the loader reads a new shard whose
    normalisation statistics are missing, and it silently falls back to identity: the pressure
    column arrives in raw pascals (~101325). The input projection ``embed`` runs in fp16, where
    101325 is past the largest finite value (65504): its output is inf, the loss is NaN from then
    on, and the scaler skips every step and halves its scale again and again."""
    gen = seeded(5507)
    model = SigmoidClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    bad: list[int] = []
    step_now = [0]

    def record(m: nn.Module, i, o: torch.Tensor) -> None:
        if not bool(torch.isfinite(o).all()):
            bad.append(step_now[0])

    model.embed.register_forward_hook(record)

    def tick(step: int) -> None:
        step_now[0] = step

    fit(
        ctx,
        model,
        opt,
        sensor_batches(gen, raw_pressure_from=SIG_AT + 1),
        SIG_AT + 30,
        before=tick,
        scaler=scaler,
        amp=True,
    )
    finite = [_finite(v) for v in ctx.losses]
    ctx.check(f"embed output finite before {SIG_AT}, inf from it", bad and bad[0] == SIG_AT)
    ctx.check(
        f"loss finite before {SIG_AT}, not after", all(finite[:SIG_AT]) and not any(finite[SIG_AT:])
    )
    ctx.check("the loss fell before the shard", ctx.losses[SIG_AT - 1] < 0.5 * ctx.losses[0])
    ctx.check(
        "the scaler's scale fell 1000x after it", ctx.scales[-1] < ctx.scales[SIG_AT - 1] / 1000
    )


# -- Hugging Face faults ---------------------------------------------------------------------------


def _params_now(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


@scenario(
    "h55_hf_laguna_lm",
    "adagrad",
    "update_ratio_out_of_range",
    where="model.layers.1.mlp.experts",
    diverges=None,
    heldout=True,
    onset=0,
    note="routed experts frozen for an upcycling warm-up and never unfrozen",
)
def h55_laguna_experts_left_frozen_adagrad(ctx: Context) -> None:
    """A Hugging Face Laguna causal LM (layer 0 dense, layer 1 a routed MoE with a shared
    expert), trained with Adagrad. An upcycling recipe freezes the routed experts for the first
    steps (``requires_grad_(False)``) so the router and attention settle first; the unfreeze
    call was registered on a callback event the training loop never emits. Layer 1's routed
    experts get no gradient and never move: their update/weight ratio is exactly zero for the
    whole run while the rest of the model trains."""
    gen = seeded(5508)
    model = hf_laguna()
    model.model.layers[1].mlp.experts.requires_grad_(False)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    before = model.model.layers[1].mlp.experts.down_proj.detach().clone()
    others = model.model.layers[1].mlp.shared_experts.down_proj.weight.detach().clone()
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        classifier=False,
        forward=_hf_forward,
    )
    experts = model.model.layers[1].mlp.experts
    ctx.check("layer 1's routed experts never moved", torch.equal(before, experts.down_proj))
    ctx.check(
        "the shared expert did move",
        not torch.equal(others, model.model.layers[1].mlp.shared_experts.down_proj.weight),
    )
    ctx.check("the loss still fell", sum(ctx.losses[-10:]) / 10 < ctx.losses[0] - 1)


@scenario(
    "h55_hf_minimax_m2_lm",
    "adamw",
    "adam_second_moment_poisoned",
    where=(),
    diverges="auto",
    heldout=True,
    onset=MM_AT,
    note="one step's gradients left multiplied by the 65536 loss scale (unscale skipped)",
)
def h55_minimax_stale_loss_scale_adamw(ctx: Context) -> None:
    """A Hugging Face MiniMax-M2 causal LM (tiny MoE) trained with AdamW. At step 150 a
    gradient-accumulation boundary takes a code path that backpropagates the loss multiplied by
    the fp16 loss scale (65536) and skips the unscale: every gradient of that one step is 65536x
    too large. Adam normalises that step's update, so nothing overflows, but the first moment
    carries the giant gradient's direction for a few dozen steps (the loss jumps), and the second
    moment of every tensor is inflated ~4e6-fold and decays only as 0.999 per step: for hundreds
    of steps afterwards the updates are a small fraction of what they were, and the loss cannot
    come back down."""
    gen = seeded(5509)
    model = hf_minimax_m2()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    moves: list[float] = []
    last = [_params_now(model)]

    def measure(step: int) -> None:
        now = _params_now(model)
        moves.append(float((now - last[0]).abs().mean()))
        last[0] = now

    def stale_scale(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 65536.0 if step == MM_AT else loss

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        MM_AT + 120,
        loss_fn=lm_loss,
        before=measure,
        extra_loss=stale_scale,
        classifier=False,
        forward=_hf_forward,
    )
    # moves[s] is the update made at step s - 1
    pre = sum(moves[MM_AT - 20 : MM_AT]) / 20
    post = sum(moves[MM_AT + 100 : MM_AT + 120]) / 20
    ctx.check(
        "one step's gradient norm 10000x the one before",
        ctx.grad_norms[MM_AT] > 1e4 * ctx.grad_norms[MM_AT - 1],
    )
    ctx.check("updates 100-120 steps later under a tenth of those before", post < 0.1 * pre)
    ctx.check("the loss stays finite", all(_finite(v) for v in ctx.losses))


@scenario(
    "h55_hf_mistral4_lm",
    "nesterov",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=0,
    note="warm-up to a peak LR typed 3.0 instead of 0.03",
)
def h55_mistral4_warmup_peak_typo_nesterov(ctx: Context) -> None:
    """A Hugging Face Mistral-4 causal LM (MLA attention, layer 1 a routed MoE) trained with
    Nesterov SGD. The linear warm-up goes to a peak LR of 3.0, a typo for 0.03: for the first
    steps the rate is small and the loss falls, then the LR climbs past 2/lambda of the
    (momentum-adjusted) curvature and the loss blows up partway through the warm-up."""
    gen = seeded(5510)
    model = hf_mistral4()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 3.0 * min(1.0, (step + 1) / 200)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        before=warmup,
        classifier=False,
        forward=_hf_forward,
    )
    ctx.check("the loss fell at first", min(ctx.losses[:60]) < ctx.losses[0] - 1)
    bad = [i for i, v in enumerate(ctx.losses) if not _finite(v) or v > ctx.losses[0] + 1]
    ctx.check("then blew up during the warm-up", bool(bad) and bad[0] > 20)


@scenario(
    "h55_hf_mellum_lm",
    "radam",
    "loss_spike",
    where=(),
    diverges=ME_AT,
    heldout=True,
    onset=ME_AT,
    note="EMA weights swapped in for a validation pass and never swapped back",
)
def h55_mellum_ema_swap_radam(ctx: Context) -> None:
    """A Hugging Face Mellum causal LM (tiny MoE) trained with RAdam and an EMA of its weights
    (decay 0.999). At step 150 a validation hook swaps the EMA weights into the model and the
    swap back is skipped on the path that logs the result. With decay 0.999 over 150 steps the
    EMA is still mostly the initialisation, so the loss jumps back up near its starting value;
    nothing else is wrong (the gradients and the optimizer are fine), and training brings the
    loss back down over the next steps."""
    gen = seeded(5511)
    model = hf_mellum()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ema = [p.detach().clone() for p in model.parameters()]

    def ema_and_swap(step: int) -> None:
        with torch.no_grad():
            if step == ME_AT:
                for p, e in zip(model.parameters(), ema, strict=True):
                    p.copy_(e)
            for p, e in zip(model.parameters(), ema, strict=True):
                e.mul_(0.999).add_(p.detach(), alpha=0.001)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        ME_AT + 150,
        loss_fn=lm_loss,
        before=ema_and_swap,
        classifier=False,
        forward=_hf_forward,
    )
    pre = sorted(ctx.losses[ME_AT - 10 : ME_AT])[5]
    late = sorted(ctx.losses[-20:])[10]
    ctx.check(f"loss jumped 1.4x at {ME_AT}", ctx.losses[ME_AT] > 1.4 * pre)
    ctx.check("and came back to within 10% of before", late < 1.1 * pre)


@scenario(
    "h55_hf_zaya_lm",
    "adamax",
    "loss_divergence",
    where=(),
    diverges=ZA_DIVERGES,
    heldout=True,
    onset=ZA_AT,
    note="target-noise curriculum with its sign flipped: corrupted targets grow 0 -> 100%",
)
def h55_zaya_label_noise_ramp_adamax(ctx: Context) -> None:
    """A Hugging Face ZAYA causal LM (tiny MoE, convolutional QK projections) trained with
    Adamax. A target-noise curriculum meant to anneal label noise from 30% down to 0 has its
    sign flipped: from step 100 the share of target tokens replaced by random tokens grows by
    0.6% a step instead. The model, its gradients and the optimizer stay well-behaved; the
    training loss simply climbs back towards log(vocab) as the targets turn to noise."""
    gen = seeded(5512)
    model = hf_zaya()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    noise_gen = torch.Generator().manual_seed(55)

    def corrupt(step: int, x: torch.Tensor, y: torch.Tensor):
        share = min(1.0, max(0.0, (step - ZA_AT) * 0.006))
        if share > 0:
            flip = torch.rand(y.shape, generator=noise_gen) < share
            y = torch.where(flip, torch.randint(0, VOCAB, y.shape, generator=noise_gen), y)
        return x, y

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        ZA_AT + 180,
        loss_fn=lm_loss,
        alter=corrupt,
        classifier=False,
        forward=_hf_forward,
    )
    gn = ctx.grad_norms
    ctx.check("the loss fell before the ramp", min(ctx.losses[:ZA_AT]) < ctx.losses[0] - 1.5)
    ctx.check(
        f"the 5-step median first climbs 1 nat above the best so far at {ZA_DIVERGES}",
        _climb_step(ctx.losses) == ZA_DIVERGES,
    )
    ctx.check(
        "and ends 1.5 nats above its best", sum(ctx.losses[-10:]) / 10 > min(ctx.losses) + 1.5
    )
    ctx.check("gradients stayed bounded (no explosion)", max(gn[ZA_AT:]) < 5 * max(gn[:ZA_AT]))


# == healthy controls ===============================================================================


@scenario(
    "h55_diff_attention_digits",
    "sg_ademamix",
    "healthy",
    heldout=True,
    note="fp16 autocast with a GradScaler",
)
def h55_diffattn_amp_healthy_ademamix(ctx: Context) -> None:
    """The differential-attention digit classifier with a plain linear head, trained under fp16
    autocast with a GradScaler and AdEMAMix on the full digit set: it trains normally."""
    gen = seeded(5513)
    model = DiffTransformer()
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    fit(ctx, model, opt, digit_batches(gen), 180, scaler=scaler, amp=True)
    ctx.check(
        "loss fell below a third of its start", sum(ctx.losses[-20:]) / 20 < ctx.losses[0] / 3
    )
    ctx.check("every loss finite", all(_finite(v) for v in ctx.losses))


@scenario("h55_hf_laguna_lm", "adamw", "healthy", heldout=True)
def h55_laguna_healthy_adamw(ctx: Context) -> None:
    """The Hugging Face Laguna causal LM trained with AdamW and nothing frozen: it trains
    normally."""
    gen = seeded(5514)
    model = hf_laguna()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        classifier=False,
        forward=_hf_forward,
    )
    ctx.check("loss fell 1.5 nats", sum(ctx.losses[-10:]) / 10 < ctx.losses[0] - 1.5)


@scenario("h55_universal_transformer_act", "asgd", "healthy", heldout=True)
def h55_ut_act_healthy_asgd(ctx: Context) -> None:
    """A Universal Transformer encoder with adaptive computation time (one shared block, up to
    six steps per token, ponder cost 0.01) classifying digits (rows as tokens), trained with
    ASGD: it trains normally."""
    gen = seeded(5515)
    model = UniversalACT()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=100.0)
    fit(
        ctx,
        model,
        opt,
        digit_batches(gen),
        250,
        extra_loss=lambda step, loss: loss + 0.01 * model.ponder,
    )
    ctx.check("loss fell below half its start", sum(ctx.losses[-20:]) / 20 < ctx.losses[0] / 2)


@scenario("h55_ngpt_normalised", "sg_grams", "healthy", heldout=True)
def h55_ngpt_healthy_grams(ctx: Context) -> None:
    """The nGPT-style decoder trained with Grams, the logit scale in the ordinary group
    without decay: it trains normally."""
    gen = seeded(5516)
    model = NGPT()
    opt = sgo.Grams(model.parameters(), lr=3e-3)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        250,
        loss_fn=lm_loss,
        classifier=False,
        forward=_lm_forward,
    )
    ctx.check("loss fell 1.5 nats", sum(ctx.losses[-10:]) / 10 < ctx.losses[0] - 1.5)
