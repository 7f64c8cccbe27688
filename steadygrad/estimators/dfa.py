"""Direct feedback alignment (Nokland 2016) for MLPs.

The output error ``e = dL/d(logits)`` is sent straight to every hidden layer through a fixed
random matrix ``B_l`` instead of back through the transposed forward weights:
``delta_l = (e B_l^T) * f'(a_l)``, ``dW_l = delta_l^T h_{l-1}``, ``db_l = sum delta_l``, with
``a_l`` the layer's pre-activation and ``h_{l-1}`` its input. The output layer gets its true
gradient ``e^T h_{L-1}``. Learning makes the forward weights come to align with the feedback,
so the hidden updates' cosine with the true gradient rises from about 0 during training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad.core.checks import finite_float
from steadygrad.estimators.base import Batch, GradientEstimator, LossFn


def mlp_blocks(model: nn.Module) -> list[tuple[nn.Linear, list[nn.Module]]]:
    """An ``nn.Sequential`` MLP as ``[(linear, [parameter-free modules after it]), ...]``.

    The modules between two Linear layers must be elementwise activations (ReLU, Tanh, ...).
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential MLP, got {type(model).__name__}")
    blocks: list[tuple[nn.Linear, list[nn.Module]]] = []
    for m in model:
        if isinstance(m, nn.Linear):
            blocks.append((m, []))
        elif any(True for _ in m.parameters()) or not blocks:
            raise TypeError(
                "model must be Linear layers with parameter-free activations between them, "
                f"got {type(m).__name__}"
            )
        else:
            blocks[-1][1].append(m)
    if len(blocks) < 2:
        raise ValueError("model needs at least one hidden layer (two Linear layers)")
    if blocks[-1][1]:
        raise ValueError("the last Linear layer must produce the logits (nothing after it)")
    return blocks


class DirectFeedbackAlignment(GradientEstimator):
    """DFA updates for an ``nn.Sequential`` MLP (e.g. :class:`steadygrad.models.MLP`).

    ``feedback[l]`` is the fixed ``(hidden_l, outputs)`` matrix ``B_l``, drawn once from
    ``N(0, feedback_scale^2 / outputs)``.

    Example:
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> est = DirectFeedbackAlignment(model, seed=0)
        >>> loss = est.backward((torch.randn(5, 4), torch.randint(3, (5,))))
        >>> [tuple(b.shape) for b in est.feedback]
        [(8, 3)]
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn = F.cross_entropy,
        *,
        feedback_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(model, loss_fn)
        self.blocks = mlp_blocks(model)
        scale = finite_float("feedback_scale", feedback_scale, low=0.0, low_open=True)
        generator = torch.Generator().manual_seed(seed)
        outputs = self.blocks[-1][0].out_features
        weight = self.blocks[0][0].weight
        self.feedback = [
            (
                torch.randn(lin.out_features, outputs, generator=generator)
                * scale
                / math.sqrt(outputs)
            ).to(device=weight.device, dtype=weight.dtype)
            for lin, _ in self.blocks[:-1]
        ]
        index = {id(p): i for i, p in enumerate(self.params)}
        for lin, _ in self.blocks:
            if id(lin.weight) not in index or (lin.bias is not None and id(lin.bias) not in index):
                raise ValueError("DFA trains every Linear layer: none may be frozen")
        self._index = index

    def estimate(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, y = batch
        inputs, slopes = [], []
        h = x
        with torch.no_grad():
            for lin, after in self.blocks:
                inputs.append(h)
                a = lin(h)
                if after:
                    slopes.append(_elementwise_slope(after, a))
                    for m in after:
                        a = m(a)
                h = a
        logits = h.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self.loss_fn(logits, y)
            (error,) = torch.autograd.grad(loss, logits)
        update = [torch.zeros_like(p) for p in self.params]
        for i, (lin, _) in enumerate(self.blocks):
            if i == len(self.blocks) - 1:
                delta = error
            else:
                delta = (error @ self.feedback[i].t()) * slopes[i]
            update[self._index[id(lin.weight)]] = _flat(delta).t() @ _flat(inputs[i])
            if lin.bias is not None:
                update[self._index[id(lin.bias)]] = _flat(delta).sum(0)
        return loss.detach(), update


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _elementwise_slope(modules: list[nn.Module], a: torch.Tensor) -> torch.Tensor:
    """``f'(a)`` of elementwise activations, by autograd on their sum."""
    with torch.enable_grad():
        a = a.detach().requires_grad_(True)
        out = a
        for m in modules:
            out = m(out)
        (slope,) = torch.autograd.grad(out.sum(), a)
    return slope
