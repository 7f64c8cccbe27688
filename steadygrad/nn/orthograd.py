"""⊥Grad (Prieto et al. 2025): the optimizer sees only the gradient orthogonal to the weights.

The component of the gradient along the weights is the "naive loss minimisation" direction: it
scales the logits up without changing predictions, and drives Softmax Collapse. Removing it lets
modular arithmetic generalise without weight decay and without a long overfitting phase.
"""

from __future__ import annotations

import torch

from steadygrad.nn._wrapped import WrappedOptimizer

_GUARD = 1e-30  # the authors' code guards both divisions with this constant


@torch.no_grad()
def orthogonal_gradient(
    weight: torch.Tensor, grad: torch.Tensor, rescale: bool = True
) -> torch.Tensor:
    """``g - (w.g / w.w) w`` for one tensor, optionally rescaled to the norm of ``g``.

    ``rescale=True`` follows the authors' code (the projected gradient keeps the original
    gradient's norm); ``rescale=False`` is the paper's plain projection.

    Example:
        >>> w, g = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
        >>> orthogonal_gradient(w, g, rescale=False)
        tensor([0., 1.])
    """
    if weight.shape != grad.shape:
        raise ValueError(f"grad shape {tuple(grad.shape)} must match weight {tuple(weight.shape)}")
    w = weight.reshape(-1).to(grad.dtype)
    g = grad.reshape(-1)
    coef = torch.dot(w, g) / (torch.dot(w, w) + _GUARD)
    projected = g - coef * w
    if rescale:
        projected = projected * (g.norm() / (projected.norm() + _GUARD))
    return projected.reshape(grad.shape)


class OrthoGrad(WrappedOptimizer):
    """Wrap an optimizer so that each step sees ⊥Grad gradients (per parameter tensor).

    The wrapper shares ``param_groups`` and ``state`` with the wrapped optimizer, so learning-rate
    schedulers and checkpoints work on either object. Projection is per tensor, as in the
    authors' code; ``rescale=True`` (default, authors' code) keeps each gradient's norm,
    ``rescale=False`` is the paper's plain projection.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = OrthoGrad(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0))
        >>> model(torch.ones(1, 4)).sum().backward()
        >>> opt.step()
    """

    def __init__(self, optimizer: torch.optim.Optimizer, rescale: bool = True) -> None:
        if not isinstance(rescale, bool):
            raise TypeError(f"rescale must be a bool, got {type(rescale).__name__}")
        self.rescale = rescale
        super().__init__(optimizer)

    @torch.no_grad()
    def project_gradients(self) -> None:
        """Replace every ``p.grad`` of the wrapped optimizer by its ⊥Grad version, in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.copy_(orthogonal_gradient(p, p.grad, self.rescale))

    def before_step(self) -> None:
        self.project_gradients()

    def __repr__(self) -> str:
        return f"OrthoGrad({self.base!r}, rescale={self.rescale})"
