"""Per-example gradients through ``torch.func``: ``vmap`` over the examples of ``grad`` of the loss.

The loss is the user's own ``loss_fn(model, batch)`` evaluated on a batch of one example, so a
mean-reduced loss gives each example's own loss. The model is called through
``functional_call`` on detached copies of its parameters: its weights, ``.grad`` and autograd
state are never touched, and the probe-safe state of :mod:`steadygrad.curvature.objective`
(dropout off, modes and buffers restored) applies while the gradients are taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from steadygrad.core.checks import module as check_module
from steadygrad.core.checks import positive_int
from steadygrad.curvature.objective import (
    _LossModule,
    _probe_state,
    check_finite_batch,
    select_parameters,
)

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass
class PerExampleGradients:
    """``grads[name]`` has shape ``(examples, *parameter.shape)``: one gradient per example."""

    grads: dict[str, torch.Tensor]
    examples: int

    def flat(self) -> torch.Tensor:
        """All gradients as one ``(examples, parameters)`` matrix, in ``grads`` order."""
        return torch.cat([g.reshape(self.examples, -1) for g in self.grads.values()], dim=1)

    def by_module(self) -> dict[str, list[str]]:
        """Parameter names grouped by the module that owns them (``fc.weight`` -> ``fc``)."""
        groups: dict[str, list[str]] = {}
        for name in self.grads:
            groups.setdefault(name.rpartition(".")[0] or name, []).append(name)
        return groups


def batch_size_of(batch: Any) -> int:
    """The common leading dimension of every tensor in ``batch`` (ValueError if they differ)."""
    leaves, _ = tree_flatten(batch)
    sizes = {t.shape[0] for t in leaves if isinstance(t, torch.Tensor) and t.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(
            f"batch must hold tensors sharing one leading (example) dimension, got sizes {sizes}"
        )
    return sizes.pop()


def subset(batch: Any, index: torch.Tensor | slice) -> Any:
    """The examples ``index`` of every tensor in ``batch`` (other leaves unchanged)."""
    leaves, spec = tree_flatten(batch)
    picked = [t[index] if isinstance(t, torch.Tensor) and t.dim() > 0 else t for t in leaves]
    return tree_unflatten(picked, spec)


def _check_no_batch_statistics(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError(
                f"model has BatchNorm {name!r} in training mode: a one-example batch has no "
                "batch statistics, so per-example gradients are undefined (use model.eval())"
            )


def per_example_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    *,
    params: Any = None,
    chunk_size: int | None = None,
) -> PerExampleGradients:
    """The gradient of ``loss_fn(model, one_example)`` for every example of ``batch``.

    ``batch`` is a tensor or a (nested) tuple/list/dict of tensors sharing their first dimension
    (non-tensor leaves are passed as they are). ``params`` selects parameters as in
    :func:`~steadygrad.sharpness` (default: all that require grad). ``chunk_size`` bounds how many
    examples ``vmap`` processes at once (memory).

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> batch = (torch.randn(5, 3), torch.randn(5, 1))
        >>> loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> g = per_example_gradients(model, loss_fn, batch)
        >>> g.grads["weight"].shape
        torch.Size([5, 1, 3])
    """
    check_module("model", model)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if chunk_size is not None:
        chunk_size = positive_int("chunk_size", chunk_size)
    check_finite_batch(batch)
    m = batch_size_of(batch)
    _check_no_batch_statistics(model)
    selected = select_parameters(model, params)
    primals = {k: v.detach() for k, v in selected.items()}
    leaves, spec = tree_flatten(batch)
    where = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.dim() > 0]
    wrapper = _LossModule(model, loss_fn)

    def one_example(p: dict[str, torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        rebuilt = list(leaves)
        for i, t in zip(where, tensors, strict=True):
            rebuilt[i] = t.unsqueeze(0)  # a batch of one
        loss = functional_call(
            wrapper, {"model." + k: v for k, v in p.items()}, (tree_unflatten(rebuilt, spec),)
        )
        if loss.numel() != 1:
            raise TypeError("loss_fn must return a scalar tensor")
        return loss.reshape(())

    in_dims = (None,) + (0,) * len(where)
    per_example = vmap(grad(one_example), in_dims=in_dims, chunk_size=chunk_size)
    with _probe_state(model, dropout=False), torch.enable_grad():
        grads = per_example(primals, *[leaves[i] for i in where])
    return PerExampleGradients({k: grads[k].detach() for k in selected}, m)
