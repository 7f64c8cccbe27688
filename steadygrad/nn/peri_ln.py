"""Peri-LN (Kim et al. 2025): normalise each sub-layer's input AND its output, never the residual.

``x + Norm_out(F(Norm_in(x)))``: the output norm keeps every residual increment at unit scale
whatever the sub-layer's weights do, so the hidden-state variance grows linearly with depth
instead of exploding as it can with Pre-LN (``x + F(Norm_in(x))``).
"""

from __future__ import annotations

import torch
from torch import nn

from steadygrad.core.checks import module as check_module
from steadygrad.core.checks import positive_int


class PeriLNResidual(nn.Module):
    """One residual branch with Peri-LN placement: ``x + out_norm(sublayer(in_norm(x)))``.

    Example:
        >>> branch = PeriLNResidual(nn.Linear(16, 16), dim=16)
        >>> branch(torch.randn(2, 16)).shape
        torch.Size([2, 16])
    """

    def __init__(self, sublayer: nn.Module, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.in_norm = nn.LayerNorm(positive_int("dim", dim), eps=eps)
        self.sublayer = check_module("sublayer", sublayer)
        self.out_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out_norm(self.sublayer(self.in_norm(x)))


class PeriLNBlock(nn.Module):
    """A transformer block (attention then MLP), each branch with Peri-LN placement.

    ``attention`` and ``mlp`` map ``(batch, time, dim)`` to the same shape, e.g.
    :class:`~steadygrad.nn.QKNormAttention` and any MLP. Keep a final norm before the output head.

    Example:
        >>> from steadygrad.nn import QKNormAttention
        >>> mlp = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 32))
        >>> block = PeriLNBlock(QKNormAttention(32, 4), mlp, dim=32)
        >>> block(torch.randn(2, 8, 32)).shape
        torch.Size([2, 8, 32])
    """

    def __init__(self, attention: nn.Module, mlp: nn.Module, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.attn = PeriLNResidual(attention, dim, eps)
        self.mlp = PeriLNResidual(mlp, dim, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))
