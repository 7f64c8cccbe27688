"""ReSTE (Wu et al. 2023) as a gradient estimator, measured against the gradient it rectifies.

A network with :class:`~steadygrad.nn.BinaryLinear` layers computes with binarised weights
``W_b = mean|W| sign(W)``; its backward is ordinary autograd, where ReSTE replaces sign's zero
derivative with the surrogate slope. Every straight-through estimator starts from the same
true quantity, the gradient of the loss with respect to the binarised weights ``dL/dW_b``, and
maps it to the latent weights; ReSTE's map is the elementwise ``mean|W| f'(W)`` (0 beyond the
threshold). This estimator reports how far that map turns and scales ``dL/dW_b``: cosine 1
means a pure rescaling (the identity STE inside the threshold), lower means the rectification
reweights the coordinates. Other parameters get their true gradient (cosine 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad.estimators.base import Batch, GradientEstimator, LossFn, _check_batch, alignment
from steadygrad.nn.reste import BinaryLinear


class ReSTE(GradientEstimator):
    """Autograd through ReSTE's surrogate, compared with ``dL/dW_b`` for each binarised weight.

    Example:
        >>> from steadygrad.nn import BinaryLinear
        >>> model = torch.nn.Sequential(BinaryLinear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> est = ReSTE(model)
        >>> loss = est.backward((torch.randn(5, 4), torch.randint(3, (5,))))
        >>> model[0].weight.grad.shape
        torch.Size([8, 4])
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn = F.cross_entropy) -> None:
        super().__init__(model, loss_fn)
        self.binary = [m for m in model.modules() if isinstance(m, BinaryLinear)]
        if not self.binary:
            raise ValueError("model has no BinaryLinear layer: nothing for ReSTE to estimate")

    def _forward(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The loss, and each binarised weight as used in the forward pass (its grad kept)."""
        x, y = batch
        captured: list[torch.Tensor] = []
        for m in self.binary:
            original = type(m).binary_weight.__get__(m)

            def capture(original=original) -> torch.Tensor:
                w = original()
                captured.append(w)
                return w

            m.binary_weight = capture  # instance attribute: shadows the method for this pass
        try:
            loss = self.loss_fn(self.model(x), y)
        finally:
            for m in self.binary:
                del m.binary_weight
        return loss, captured

    def backward(self, batch: Batch) -> torch.Tensor:
        """As :meth:`GradientEstimator.backward`; the reference comes from the same pass."""
        _check_batch(batch)
        loss, update, reference = self._estimate_and_reference(batch)
        for p, u in zip(self.params, update, strict=True):
            p.grad = u.detach()
        if self.compare_next:
            self.last = {**self.last, **alignment(self.names, update, reference)}
            self.compare_next = False
        return loss

    def estimate(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        loss, update, _ = self._estimate_and_reference(batch)
        return loss, update

    def _estimate_and_reference(
        self, batch: Batch
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        with torch.enable_grad():
            loss, captured = self._forward(batch)
            grads = torch.autograd.grad(loss, self.params + captured, allow_unused=True)
        n = len(self.params)
        update = [
            torch.zeros_like(p) if g is None else g
            for p, g in zip(self.params, grads[:n], strict=True)
        ]
        reference = list(update)
        index = {id(p): i for i, p in enumerate(self.params)}
        for m, g in zip(self.binary, grads[n:], strict=True):
            if id(m.weight) in index and g is not None:
                reference[index[id(m.weight)]] = g
        return loss.detach(), update, reference
