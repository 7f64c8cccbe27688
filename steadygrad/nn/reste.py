"""ReSTE (Wu et al. 2023): a rectified straight-through estimator for binarised weights.

Forward: ``sign(z)`` (with ``sign(0) = +1`` here, so outputs are exactly +-1). Backward: the
derivative of the surrogate ``f(z) = sign(z) |z|^(1/o)``, ``f'(z) = (1/o) |z|^((1-o)/o)``,
with the authors' code's two rules: zero gradient for ``|z| > threshold`` (1.5) and, for
``|z| <= near_zero`` (0.1), the secant slope ``near_zero^(1/o) / near_zero`` instead of the
divergent derivative. ``o = 1`` is the clipped identity STE; larger ``o`` fits sign better but
gives larger, less stable gradients near 0. The authors anneal ``o`` from 1 to 3
(:func:`reste_power_schedule`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad.core.checks import finite_float


def _check(o: float, threshold: float, near_zero: float) -> tuple[float, float, float]:
    o = finite_float("o", o, low=1.0)
    threshold = finite_float("threshold", threshold, low=0.0, low_open=True)
    near_zero = finite_float("near_zero", near_zero, low=0.0, low_open=True, high=threshold)
    return o, threshold, near_zero


class _ReSTESign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, o, threshold, near_zero):  # noqa: ANN001
        ctx.save_for_backward(z)
        ctx.params = (o, threshold, near_zero)
        return torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))

    @staticmethod
    def backward(ctx, grad_output):  # noqa: ANN001
        (z,) = ctx.saved_tensors
        return grad_output * reste_derivative(z, *ctx.params), None, None, None


def reste_derivative(
    z: torch.Tensor, o: float = 3.0, threshold: float = 1.5, near_zero: float = 0.1
) -> torch.Tensor:
    """The slope ReSTE uses in place of sign's derivative, elementwise.

    Example:
        >>> reste_derivative(torch.tensor([0.5, 2.0]), o=3.0)  # (1/3) 0.5^(-2/3), then clipped
        tensor([0.5291, 0.0000])
    """
    o, threshold, near_zero = _check(o, threshold, near_zero)
    a = z.abs()
    power = (1.0 / o) * a.clamp(min=near_zero).pow((1.0 - o) / o)
    secant = near_zero ** (1.0 / o) / near_zero
    slope = torch.where(a <= near_zero, torch.full_like(a, secant), power)
    return torch.where(a > threshold, torch.zeros_like(a), slope)


def reste_sign(
    z: torch.Tensor, o: float = 3.0, threshold: float = 1.5, near_zero: float = 0.1
) -> torch.Tensor:
    """``sign(z)`` (0 maps to +1) whose backward is the ReSTE slope.

    Example:
        >>> z = torch.tensor([-0.5, 0.0, 0.5], requires_grad=True)
        >>> reste_sign(z, o=1.0)
        tensor([-1.,  1.,  1.], grad_fn=<_ReSTESignBackward>)
    """
    o, threshold, near_zero = _check(o, threshold, near_zero)
    return _ReSTESign.apply(z, o, threshold, near_zero)


def reste_power_schedule(epoch: int, epochs: int, o_end: float = 3.0) -> float:
    """The authors' annealing of ``o``: ``1 + (o_end - 1)(1 - cos(pi/2 * epoch/epochs))``.

    Example:
        >>> reste_power_schedule(0, 100), reste_power_schedule(100, 100)
        (1.0, 3.0)
    """
    if epochs < 1 or not 0 <= epoch <= epochs:
        raise ValueError(f"need 0 <= epoch <= epochs and epochs >= 1, got {epoch}, {epochs}")
    o_end = finite_float("o_end", o_end, low=1.0)
    value = 1.0 + (o_end - 1.0) * (1.0 - math.cos(math.pi / 2 * epoch / epochs))
    return round(value, 12)


class BinaryLinear(nn.Linear):
    """A Linear layer whose weights are binarised to ``+-mean|W|`` with ReSTE gradients.

    Set ``layer.o`` during training (e.g. from :func:`reste_power_schedule`).

    Example:
        >>> layer = BinaryLinear(8, 4, o=1.0)
        >>> layer(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        o: float = 1.0,
        threshold: float = 1.5,
        near_zero: float = 0.1,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.o, self.threshold, self.near_zero = _check(o, threshold, near_zero)

    def binary_weight(self) -> torch.Tensor:
        scale = self.weight.abs().mean().detach()
        return scale * reste_sign(self.weight, self.o, self.threshold, self.near_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.binary_weight(), self.bias)
