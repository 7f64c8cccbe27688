"""Extension point for measurements: a Signal is anything the Monitor asks for values on a cadence.

The built-in per-step signals (loss, grad and param norms, update ratios, activation RMS) live in
the Monitor itself because they share one pass over the parameters. Further signals (attention
logits, output logits, curvature probes on a held batch, ...) subclass :class:`Signal` and are
passed as ``Monitor(..., signals=[...])``.

Lifecycle, driven by the Monitor:
  ``attach(monitor)`` once; ``begin(step)`` before the forward pass of every step where
  ``due(step)`` (install hooks here); ``end(step)`` after the step, for every due signal before
  any of them collects (remove hooks here, so a probe that runs its own forward passes in
  ``collect`` is not captured by another signal); ``collect(step)`` then returns
  ``{metric name: tensor or float}`` (tensors may stay on the device: the Monitor moves all of a
  step's values to the host in one transfer); ``detach()`` at close.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from steadygrad._checks import positive_int

if TYPE_CHECKING:
    from steadygrad.monitor.monitor import Monitor

Value = torch.Tensor | float


class Signal:
    """Base class for cadence-driven measurements.

    Example:
        >>> class WeightMax(Signal):
        ...     def collect(self, step):
        ...         return {"weight_max": max(p.abs().max() for p in self.monitor.model.parameters())}
        >>> # Monitor(model, optimizer, signals=[WeightMax(every=50)])
    """

    def __init__(self, every: int = 1) -> None:
        self.every = positive_int("every", every)
        self.monitor: Monitor | None = None

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def attach(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def begin(self, step: int) -> None:
        """Called before the forward pass of a step on which the signal is due."""

    def end(self, step: int) -> None:
        """Called after the step, before any signal collects: stop capturing."""

    def collect(self, step: int) -> Mapping[str, Value]:
        """Called after the step; returns this step's values."""
        return {}

    def detach(self) -> None:
        """Remove every hook this signal added."""
