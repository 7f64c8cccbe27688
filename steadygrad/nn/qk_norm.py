"""QK-LayerNorm attention (Dehghani et al. 2023; Wortsman et al. 2023).

Queries and keys are layer-normalised over the head dimension before their dot product, so the
attention logits ``q.k / sqrt(d_h)`` cannot grow with the weight norms (attention-logit growth,
the first instability to appear at high learning rates). As in Wortsman et al.: one LayerNorm for
q and one for k, each with ``d_h`` learnable scales shared by every head, no bias, eps 1e-6, and
the ``1/sqrt(d_h)`` scaling kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad.core.checks import finite_float, positive_int


class QKNorm(nn.Module):
    """LayerNorm of queries and keys over the head dimension (the last one).

    Example:
        >>> norm = QKNorm(head_dim=8)
        >>> q, k = norm(torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8))
        >>> q.shape
        torch.Size([2, 4, 5, 8])
    """

    def __init__(self, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        head_dim = positive_int("head_dim", head_dim)
        eps = finite_float("eps", eps, low=0.0, low_open=True)
        self.q_norm = nn.LayerNorm(head_dim, eps=eps, bias=False)
        self.k_norm = nn.LayerNorm(head_dim, eps=eps, bias=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)


class QKNormAttention(nn.Module):
    """Multi-head self-attention with QK-LayerNorm, a drop-in for a nanoGPT-style attention.

    ``forward(x)`` takes ``(batch, time, embed_dim)`` and returns the same shape; ``causal``
    selects a causal mask. Parameter names follow TinyGPT (``qkv``, ``proj``, ``qk_norm``).

    Example:
        >>> attn = QKNormAttention(embed_dim=32, num_heads=4)
        >>> attn(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        causal: bool = True,
        bias: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        embed_dim = positive_int("embed_dim", embed_dim)
        self.n_head = positive_int("num_heads", num_heads)
        if embed_dim % self.n_head:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.causal = bool(causal)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.qk_norm = QKNorm(embed_dim // self.n_head, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        q, k = self.qk_norm(q, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


def add_qk_norm(model: nn.Module, eps: float = 1e-6) -> list[str]:
    """Switch QK-norm on inside every TinyGPT-style attention of ``model``, in place.

    A TinyGPT-style attention is a module with a ``qkv`` Linear, an ``n_head`` count and a
    ``qk_norm`` slot that is ``None`` (TinyGPT's ``CausalSelfAttention``); the slot receives a
    fresh :class:`QKNorm` (unit scales) on the same device and dtype as ``qkv``. Returns the names
    of the modules changed. Build the optimizer after calling this, so it sees the new scales.

    Example:
        >>> from steadygrad.models import TinyGPT
        >>> add_qk_norm(TinyGPT(n_layer=2, n_embd=32, n_head=4))
        ['h.0.attn', 'h.1.attn']
    """
    changed = []
    for name in qk_norm_targets(model):
        mod = model.get_submodule(name)
        head_dim = mod.qkv.in_features // mod.n_head
        mod.qk_norm = QKNorm(head_dim, eps=eps).to(mod.qkv.weight.device, mod.qkv.weight.dtype)
        changed.append(name)
    if not changed and not any(isinstance(m, QKNorm) for m in model.modules()):
        raise ValueError(
            "model has no TinyGPT-style attention (a module with qkv, n_head and a qk_norm slot)"
        )
    return changed


def qk_norm_targets(model: nn.Module) -> list[str]:
    """The attention modules :func:`add_qk_norm` would change (TinyGPT-style, QK-norm off).

    Example:
        >>> from steadygrad.models import TinyGPT
        >>> qk_norm_targets(TinyGPT(n_layer=1, n_embd=32, n_head=4, qk_norm=True))
        []
    """
    return [
        name
        for name, mod in model.named_modules()
        if isinstance(getattr(mod, "qkv", None), nn.Linear)
        and hasattr(mod, "n_head")
        and getattr(mod, "qk_norm", False) is None
    ]
