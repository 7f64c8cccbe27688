"""A small decoder-only transformer in one readable file (after nanoGPT's shape)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad.core.checks import finite_float, non_negative_int, positive_int
from steadygrad.nn.losses import z_loss as z_loss_fn
from steadygrad.nn.qk_norm import QKNorm


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, qk_norm: bool = False) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        # A slot that steadygrad.nn.add_qk_norm can fill on an existing model.
        self.qk_norm = QKNorm(n_embd // n_head) if qk_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MLPBlock(nn.Module):
    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """Pre-LN block; with ``peri_ln`` each sub-layer's output is normalised too (Peri-LN)."""

    def __init__(
        self, n_embd: int, n_head: int, qk_norm: bool = False, peri_ln: bool = False
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, qk_norm=qk_norm)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLPBlock(n_embd)
        self.ln_1_out = nn.LayerNorm(n_embd) if peri_ln else None
        self.ln_2_out = nn.LayerNorm(n_embd) if peri_ln else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.ln_1(x))
        x = x + (a if self.ln_1_out is None else self.ln_1_out(a))
        m = self.mlp(self.ln_2(x))
        return x + (m if self.ln_2_out is None else self.ln_2_out(m))


class TinyGPT(nn.Module):
    """A pre-LN GPT using ``F.scaled_dot_product_attention``.

    ``forward(idx)`` returns logits of shape ``(batch, time, vocab_size)``;
    ``loss(idx, targets)`` the mean next-token cross-entropy, plus ``z_loss * mean(lse^2)``
    (lse = logsumexp of the logits) when ``z_loss > 0``.

    Stabilizing switches (all off by default, which leaves the model unchanged): ``qk_norm``
    layer-normalises queries and keys per head (:class:`steadygrad.nn.QKNorm`), ``peri_ln``
    adds a LayerNorm on each sub-layer's output (Peri-LN), ``z_loss`` is the z-loss coefficient
    (1e-4 in Wortsman et al.). The extra norms have no matrix weights, so the initial weights
    for a given seed are the same with or without them.

    Example:
        >>> model = TinyGPT(vocab_size=256, n_layer=2, n_head=2, n_embd=32, block_size=16)
        >>> model(torch.zeros(3, 16, dtype=torch.long)).shape
        torch.Size([3, 16, 256])
    """

    def __init__(
        self,
        vocab_size: int = 256,
        n_layer: int = 2,
        n_head: int = 4,
        n_embd: int = 64,
        block_size: int = 64,
        seed: int | None = 0,
        qk_norm: bool = False,
        peri_ln: bool = False,
        z_loss: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size = positive_int("vocab_size", vocab_size)
        self.block_size = positive_int("block_size", block_size)
        n_layer = positive_int("n_layer", n_layer)
        n_head = positive_int("n_head", n_head)
        n_embd = positive_int("n_embd", n_embd)
        for flag_name, flag in (("qk_norm", qk_norm), ("peri_ln", peri_ln)):
            if not isinstance(flag, bool):
                raise TypeError(f"{flag_name} must be a bool, got {type(flag).__name__}")
        self.z_loss = finite_float("z_loss", z_loss, low=0.0)
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(non_negative_int("seed", seed))
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(
            Block(n_embd, n_head, qk_norm=qk_norm, peri_ln=peri_ln) for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self._init_weights(n_layer, generator)

    @torch.no_grad()
    def _init_weights(self, n_layer: int, generator: torch.Generator | None) -> None:
        for name, p in self.named_parameters():
            if p.dim() < 2:
                p.zero_() if name.endswith("bias") else p.fill_(1.0)
                continue
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
            p.normal_(0.0, std, generator=generator)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx).reshape(-1, self.vocab_size)
        loss = F.cross_entropy(logits, targets.reshape(-1))
        if self.z_loss > 0:
            loss = loss + z_loss_fn(logits, coef=self.z_loss)
        return loss
