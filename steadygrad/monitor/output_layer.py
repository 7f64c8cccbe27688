"""The model's output layer: the module whose weight matrix is nearest the model's output in the
autograd graph. Found once, from the first forward pass that builds a graph, and written to the
run's config (``output_layer``): the diagnosis reads weights that run away there as the logits
running away, not as gradients exploding through the layers before.

Walking the graph, not the module tree, finds the head whatever follows it (a temperature, a
squeeze, a tied embedding) and in functional models; the weight matrix, not a scalar scale or a
norm's gain, is what makes the logits."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

import torch

from steadygrad.core.metrics import OUTPUT_LAYER
from steadygrad.core.signal import Signal

log = logging.getLogger("steadygrad")

# Graph nodes looked at before giving up: a head sits a few nodes from the output.
MOST_NODES = 256


def output_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a model's forward returned: itself, a Hugging Face output's ``logits`` (or
    its first tensor), or the first tensor of a tuple or list.

    Example:
        >>> t = torch.zeros(2)
        >>> output_tensor(t) is t, output_tensor((None, t)) is t, output_tensor({"logits": t}) is t
        (True, True, True)
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return next((x for x in output if isinstance(x, torch.Tensor)), None)
    return None


# Autograd nodes that only reshape, copy or select what flows through them: no steps away.
# (A Linear's weight reaches its matmul through a transpose; an embedding bag's through none.)
SHAPE_ONLY = frozenset(
    {
        "TBackward",
        "TransposeBackward",
        "PermuteBackward",
        "ViewBackward",
        "UnsafeViewBackward",
        "ReshapeAliasBackward",
        "ExpandBackward",
        "SqueezeBackward",
        "UnsqueezeBackward",
        "SliceBackward",
        "SelectBackward",
        "CloneBackward",
        "ToCopyBackward",
        "AsStridedBackward",
    }
)


def nearest_weight(output: torch.Tensor, names: Mapping[int, str]) -> str | None:
    """The name of the weight matrix (a parameter of two or more dimensions, looked up by id in
    ``names``) the fewest computing autograd steps from ``output`` (reshapes, transposes and
    copies are no steps); None when the output has no graph or none is near.

    Example:
        >>> head = torch.nn.Linear(3, 2)
        >>> names = {id(p): n for n, p in head.named_parameters()}
        >>> nearest_weight(head(torch.ones(1, 3)) / 2.0, names)
        'weight'
    """
    start = output.grad_fn
    if start is None:
        return None
    seen, queue = {start}, deque([start])  # 0-1 breadth-first: nearest first
    while queue and len(seen) < MOST_NODES:
        for node, _ in queue.popleft().next_functions:
            if node is None or node in seen:
                continue
            seen.add(node)
            leaf = getattr(node, "variable", None)  # AccumulateGrad: a leaf tensor's gradient
            if leaf is not None:
                if leaf.dim() >= 2 and id(leaf) in names:
                    return names[id(leaf)]
            elif type(node).__name__.rstrip("0123456789") in SHAPE_ONLY:
                queue.appendleft(node)
            else:
                queue.append(node)
    return None


class OutputLayerSignal(Signal):
    """Names the model's output layer once (see the module docstring) and writes it to the
    run's config; records no metric. On by default in the Monitor.

    Example:
        >>> signal = OutputLayerSignal()
    """

    def __init__(self) -> None:
        super().__init__(every=1)
        self._hook: Any = None
        self._found: str | None = None

    def attach(self, monitor: Any) -> None:
        super().attach(monitor)
        self._hook = monitor.model.register_forward_hook(self._look)

    def due(self, step: int) -> bool:
        return self._found is not None  # once found, written at the next record

    def _look(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if torch.compiler.is_compiling():
            return  # traced, the walk and the hook's removal would break the graph
        try:
            tensor = output_tensor(output)
            if tensor is None or tensor.grad_fn is None:
                return  # evaluation, no_grad: the next training forward will tell
            names = {id(p): n for n, p in module.named_parameters()}
            weight = nearest_weight(tensor, names)
        except Exception:  # noqa: BLE001 - a note for the diagnosis, never worth the run
            weight = None
        self.detach()
        if weight is not None:
            self._found = weight.rpartition(".")[0] or weight

    def finish(self, record: Any, raw: Any) -> None:
        found, self._found = self._found, None
        if found is None:
            return
        try:
            self.monitor.store.update_config({OUTPUT_LAYER: found})
        except Exception as exc:  # a note for the diagnosis, never worth the run
            log.warning("steadygrad: could not note the output layer: %r", exc)

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
