"""Where a non-finite gradient is born when the forward pass and the loss were finite: the
derivative of an operation is infinite where its value is not (``acos`` or ``asin`` at +-1,
``sqrt`` or a norm at 0, a fractional power at 0), and the backward pass carries the Inf, or
the NaN it makes, into every gradient before it.

A replay of the step's forward calls, traced by :class:`GradientTrace`, is differentiated from
its outputs back to the weights (``torch.autograd.grad``: no ``.grad`` is touched). The module
whose outputs' gradients all arrived finite while the gradient of an input it took did not made
the first non-finite gradient. The outputs are seeded with ones rather than the loss's own
gradient, which is gone: an infinite derivative is infinite whatever multiplies it.

Example:
    >>> trace = GradientTrace({id(m): n for n, m in model.named_modules()})  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from steadygrad.monitor.intercept import float_tensors


def _differentiable(tree: object) -> list[torch.Tensor]:
    return [t for t in float_tensors(tree) if t.requires_grad]


def _value_of(t: torch.Tensor) -> object:
    """What identifies the value ``t`` holds in the graph: the autograd node that made it and
    its place among that node's outputs, seen through the pass-through nodes a module's full
    backward hook wraps its inputs in (the module took the value its producer returned);
    a leaf (an input that requires grad), by identity."""
    node, place = t.grad_fn, t.output_nr
    if node is None:
        return id(t)
    while type(node).__name__ == "BackwardHookFunctionBackward":
        following, place = node.next_functions[place]
        if following is None:
            break
        node = following
    return (node, place)


class GradientTrace:
    """Records, during a forward pass, which module took and returned which tensor, and, during
    the backward pass after it, the order in which those tensors' gradients arrived and whether
    each was finite."""

    def __init__(self, names: dict[int, str]) -> None:
        self._names = names  # id of a module of the model -> its name
        # a value (see _value_of) -> its tensor, alive while traced: an id stays its own
        self._kept: dict[object, torch.Tensor] = {}
        # each module call, (its name, its count), that took a value, and what it returned: a
        # module called twice (a loop's second forward) answers for each call's outputs apart
        self._taken_by: dict[object, list[tuple[str, int]]] = defaultdict(list)
        self._returned: dict[tuple[str, int], list[object]] = defaultdict(list)
        self._calls = 0
        self._made_by: dict[object, str] = {}  # the innermost module that returned the value
        self._arrived: list[tuple[object, bool]] = []  # (value, gradient finite), in order

    def install(self) -> torch.utils.hooks.RemovableHandle:
        return register_module_forward_hook(self._observe)

    def _observe(self, module: nn.Module, args: object, output: object) -> None:
        name = self._names.get(id(module))
        if name is None:
            return
        call, self._calls = (name, self._calls), self._calls + 1
        for t in _differentiable(args):
            self._taken_by[self._watch(t)].append(call)
        for t in _differentiable(output):
            key = self._watch(t)
            self._returned[call].append(key)
            self._made_by.setdefault(key, name)  # an inner module's hook runs first

    def _watch(self, t: torch.Tensor) -> object:
        key = _value_of(t)
        if key not in self._kept:
            self._kept[key] = t
            t.register_hook(functools.partial(self._reached, key))
        return key

    def _reached(self, key: object, grad: torch.Tensor) -> None:
        self._arrived.append((key, bool(torch.isfinite(grad).all())))

    def differentiate(self, outputs: Iterable[torch.Tensor], weights: list[torch.Tensor]) -> None:
        """The backward pass from ``outputs`` (seeded with ones) to ``weights``, whose
        ``.grad`` it leaves as it was."""
        outs = [t for t in outputs if t.requires_grad]
        if outs and weights:
            torch.autograd.grad(
                outs, weights, [torch.ones_like(t) for t in outs], allow_unused=True
            )

    def producer(self) -> dict[str, str] | None:
        """The module whose backward made the first non-finite gradient: it took the tensor
        that gradient arrived at, and every output it returned had a finite gradient before.
        Failing that, the module that returned that tensor: an operation outside any module,
        between it and the next, made the gradient non-finite. None when every traced gradient
        was finite (a weight's own gradient went bad inside a module that returned it finite)."""
        finite: set[object] = set()
        for key, ok in self._arrived:
            if ok:
                finite.add(key)
                continue
            for call in self._taken_by.get(key, []):  # the innermost first
                if all(k in finite for k in self._returned.get(call, [])):
                    return {
                        "module": call[0],
                        "in_the_backward": "its outputs' gradients were finite, the gradient "
                        "of an input it took was not",
                    }
            if key in self._made_by:
                return {
                    "module": self._made_by[key],
                    "in_the_backward": "the gradient reaching its output was made non-finite "
                    "by an operation outside any module, after it",
                }
            return None
        return None
