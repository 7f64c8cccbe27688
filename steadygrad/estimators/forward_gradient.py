"""Forward gradient (Baydin et al. 2022, "Gradients without backpropagation").

Draw a direction ``v ~ N(0, I)`` over all parameters, get the directional derivative
``d = grad f . v`` with one forward-mode pass (a Jacobian-vector product, no backward pass),
and step along ``g = d v``. Since ``E[v v^T] = I``, ``E[g] = grad f``: unbiased. Its variance
grows with the number of parameters ``n``: the cosine of one draw with the true gradient is
``|u . v| / |v|`` for the unit gradient ``u``, whose mean is
``Gamma(n/2) / (sqrt(pi) Gamma((n+1)/2)) ~ sqrt(2 / (pi n))`` (:func:`expected_cosine`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from steadygrad.core.checks import positive_int
from steadygrad.estimators.base import Batch, GradientEstimator, LossFn


def expected_cosine(n: int) -> float:
    """Mean cosine between one forward-gradient draw and the true gradient in ``n`` dimensions.

    Example:
        >>> round(expected_cosine(2), 4)  # E|cos(theta)| on the circle = 2/pi
        0.6366
    """
    n = positive_int("n", n)
    return math.exp(math.lgamma(n / 2) - math.lgamma((n + 1) / 2)) / math.sqrt(math.pi)


class ForwardGradient(GradientEstimator):
    """``g = (grad f . v) v`` averaged over ``directions`` Gaussian draws, by forward mode.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> est = ForwardGradient(model, directions=2, seed=0)
        >>> loss = est.backward((torch.randn(8, 4), torch.randint(3, (8,))))
        >>> model.weight.grad.shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn = F.cross_entropy,
        *,
        directions: int = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(model, loss_fn)
        self.directions = positive_int("directions", directions)
        self.generator = None
        if seed is not None:
            device = self.params[0].device
            self.generator = torch.Generator(device=device).manual_seed(seed)

    def directional_derivative(
        self, batch: Batch, tangents: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, grad f . v)`` by one Jacobian-vector product."""
        x, y = batch
        buffers = dict(self.model.named_buffers())

        def loss_of(*values: torch.Tensor) -> torch.Tensor:
            params = dict(zip(self.names, values, strict=True))
            return self.loss_fn(functional_call(self.model, {**params, **buffers}, (x,)), y)

        primals = tuple(p.detach() for p in self.params)
        return jvp(loss_of, primals, tuple(tangents))

    def estimate(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        total = [torch.zeros_like(p) for p in self.params]
        loss = torch.zeros(())
        for _ in range(self.directions):
            v = [
                torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype)
                for p in self.params
            ]
            loss, d = self.directional_derivative(batch, v)
            for t, vi in zip(total, v, strict=True):
                t.add_(vi * (d / self.directions))  # stays on the device: no sync
        return loss, total
