"""The size of the batch the model was given, every step: the elements of the tensors passed to
its ``forward`` (token ids and their mask, images, features), at the step's last call that builds
a graph. A sequence-length or batch-size schedule changes it; a summed loss and the gradient's
noise change with it, which :class:`steadygrad.monitor.tasks.TaskRestarts` reads as a new
stage of the objective."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from steadygrad.core.metrics import INPUT_SIZE
from steadygrad.core.signal import Signal, Value


def _elements(args: tuple, kwargs: Mapping[str, Any]) -> int:
    """Elements in the tensors among ``args`` and ``kwargs``' values (not nested)."""
    values = (*args, *kwargs.values())
    return sum(v.numel() for v in values if isinstance(v, torch.Tensor))


class InputSizeSignal(Signal):
    """``input_size``: elements passed to the model's ``forward`` at the step's last training
    call (none at a step with no such call: evaluation under ``no_grad``, a compiled forward).
    On by default in the Monitor; a forward pre-hook on the model, a few microseconds a call.

    Example:
        >>> signal = InputSizeSignal()
    """

    metrics = (INPUT_SIZE,)

    def __init__(self) -> None:
        super().__init__(every=1)
        self._hook: Any = None
        self._size: int | None = None

    def attach(self, monitor: Any) -> None:
        super().attach(monitor)
        if isinstance(monitor.model, torch.nn.Module):
            self._hook = monitor.model.register_forward_pre_hook(self._look, with_kwargs=True)

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _look(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if torch.compiler.is_compiling() or not torch.is_grad_enabled():
            return  # traced, a read would break the graph; evaluation is another batch
        self._size = _elements(args, kwargs)

    def collect(self, step: int) -> Mapping[str, Value]:
        size, self._size = self._size, None
        return {INPUT_SIZE.name: float(size)} if size else {}
