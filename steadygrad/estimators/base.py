"""The gradient-estimator protocol, and how an estimate is compared with the true gradient.

An estimator turns a batch into an update direction for every trainable parameter (written to
``p.grad``, as ``loss.backward()`` would, so any torch optimizer applies it). On request it
also computes, on the same batch at the same weights, the true backprop gradient of the
objective it approximates, and the cosine and norm ratio between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad.core.checks import module
from steadygrad.core.metric import Metric

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ESTIMATOR_COSINE = Metric(
    "estimator_cosine",
    "cosine between the estimator's update and the true backprop gradient on the same batch "
    "(bare name: over every parameter)",
    per="parameter",
    total=True,
    panel="estimator_alignment",
)
ESTIMATOR_NORM_RATIO = Metric(
    "estimator_norm_ratio",
    "norm of the estimator's update over the norm of the true gradient (bare name: overall)",
    per="parameter",
    total=True,
    scale="log",
    panel="estimator_norm_ratio",
)


def alignment(
    names: Sequence[str],
    update: Sequence[torch.Tensor],
    reference: Sequence[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Cosine and norm ratio of ``update`` against ``reference``, per parameter and overall.

    Values stay on the device (0-d tensors). A zero reference gives NaN, not a silent 0.

    Example:
        >>> out = alignment(["w"], [torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])])
        >>> round(float(out["estimator_cosine"]), 4), round(float(out["estimator_norm_ratio"]), 4)
        (0.7071, 0.7071)
    """
    dots, un, rn = [], [], []
    out: dict[str, torch.Tensor] = {}
    for name, u, r in zip(names, update, reference, strict=True):
        u, r = u.detach().double().reshape(-1), r.detach().double().reshape(-1)
        dot, nu, nr = u @ r, u @ u, r @ r
        dots.append(dot), un.append(nu), rn.append(nr)
        out[ESTIMATOR_COSINE.key(name)] = _ratio(dot, (nu * nr).sqrt())
        out[ESTIMATOR_NORM_RATIO.key(name)] = _ratio(nu.sqrt(), nr.sqrt())
    dot, nu, nr = torch.stack(dots).sum(), torch.stack(un).sum(), torch.stack(rn).sum()
    out[ESTIMATOR_COSINE.key()] = _ratio(dot, (nu * nr).sqrt())
    out[ESTIMATOR_NORM_RATIO.key()] = _ratio(nu.sqrt(), nr.sqrt())
    return out


def _ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / b.clamp_min(torch.finfo(b.dtype).tiny), torch.nan)


class GradientEstimator:
    """Base class: ``loss = estimator.backward((x, y))`` in place of ``loss.backward()``.

    Subclasses implement :meth:`estimate` (the loss and one update tensor per trainable
    parameter) and, when the objective they approximate is not ``loss_fn(model(x), y)``,
    :meth:`reference_loss`. ``metrics`` declares any extra values they record.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> estimator = Backprop(model)
        >>> loss = estimator.backward((torch.randn(4, 3), torch.tensor([0, 1, 0, 1])))
        >>> model.weight.grad.shape
        torch.Size([2, 3])
    """

    metrics: tuple[Metric, ...] = ()

    def __init__(self, model: nn.Module, loss_fn: LossFn = F.cross_entropy) -> None:
        self.model = module("model", model)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.loss_fn = loss_fn
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no trainable parameters")
        self.compare_next = False
        self.last: dict[str, Any] = {}

    # -- what a subclass provides ---------------------------------------------------------------
    def estimate(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The loss on ``batch`` and the update direction (descend along minus it)."""
        raise NotImplementedError

    def reference_loss(self, batch: Batch) -> torch.Tensor:
        """The objective whose true gradient the estimate is compared with."""
        x, y = batch
        return self.loss_fn(self.model(x), y)

    def prepare(self, batch: Batch) -> None:
        """Draw what the estimate and its reference must share (e.g. negative labels)."""

    # -- shared ---------------------------------------------------------------------------------
    def true_gradient(self, batch: Batch) -> list[torch.Tensor]:
        """The backprop gradient of :meth:`reference_loss` (``.grad`` is left untouched)."""
        with torch.enable_grad():
            loss = self.reference_loss(batch)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return [
            torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)
        ]

    def backward(self, batch: Batch) -> torch.Tensor:
        """Write the estimate into every trainable parameter's ``.grad`` (replacing what was
        there) and return the loss. When a Monitor signal asked for it, also compare the
        estimate with the true gradient at these weights (see :attr:`last`)."""
        _check_batch(batch)
        self.prepare(batch)
        reference = self.true_gradient(batch) if self.compare_next else None
        loss, update = self.estimate(batch)
        for p, u in zip(self.params, update, strict=True):
            p.grad = u.detach().to(p.dtype)
        if reference is not None:
            self.last = {**self.last, **alignment(self.names, update, reference)}
            self.compare_next = False
        return loss.detach()


class Backprop(GradientEstimator):
    """The true gradient, as a baseline estimator (cosine 1, norm ratio 1).

    Example:
        >>> Backprop(torch.nn.Linear(3, 2)).names
        ['weight', 'bias']
    """

    def estimate(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.enable_grad():
            loss = self.reference_loss(batch)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return loss, [
            torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)
        ]


def _check_batch(batch: object) -> None:
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise TypeError(f"batch must be a pair (inputs, targets), got {type(batch).__name__}")
