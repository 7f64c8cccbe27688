"""The shared frame of the dynamics probes: a held batch, and never harming the run.

A probe runs every ``every`` steps on a held batch inside a Monitor. Whatever goes wrong in it
(non-finite weights, a model torch.func cannot trace, a loss that is not finite) becomes a
``RuntimeWarning`` and an empty measurement for that step: the training loop carries on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from steadygrad.core.signal import Signal


def check_loss_fn(loss_fn: Any) -> Callable[[nn.Module, Any], torch.Tensor]:
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    return loss_fn


def finite_weights(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p.detach()).all()) for p in model.parameters())


class DynamicsProbe(Signal):
    """Base of the probes: ``measure_model(model, batch)`` returns the step's values.

    ``batch`` is the held batch, or a zero-argument callable returning one (a fresh batch each
    time it is due).
    """

    def __init__(self, loss_fn: Any, batch: Any, every: int) -> None:
        super().__init__(every)
        self.loss_fn = check_loss_fn(loss_fn)
        self.batch = batch

    def held_batch(self) -> Any:
        return self.batch() if callable(self.batch) else self.batch

    def measure_model(self, model: nn.Module, batch: Any) -> Mapping[str, float]:
        raise NotImplementedError

    def collect(self, step: int) -> Mapping[str, float]:
        if self.monitor is None:
            raise RuntimeError(f"{type(self).__name__}.collect called before attach(monitor)")
        model = self.monitor.model
        name = type(self).__name__
        if not finite_weights(model):
            warnings.warn(
                f"{name}: skipped at step {step}: the weights hold NaN or Inf",
                RuntimeWarning,
                stacklevel=2,
            )
            return {}
        try:
            return dict(self.measure_model(model, self.held_batch()))
        except Exception as exc:  # a probe never raises into the training loop
            warnings.warn(
                f"{name}: skipped at step {step}: {type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
            return {}
