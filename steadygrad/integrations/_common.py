"""What the trainer callbacks share: the Monitor's options, the optimizer they can watch, and
the loss and pre-clip gradient norm of an optimizer step, kept on the device."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from steadygrad.core.checks import positive_int
from steadygrad.core.optimizer import unwrap_optimizer

# The Monitor arguments a callback fills in itself; every other one is the user's to pass.
_FILLED_BY_CALLBACK = ("self", "model", "optimizer", "run_dir")


def monitor_options(callback: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The Monitor's keyword options, checked now so a typo fails when the callback is built,
    not when training starts."""
    from steadygrad.monitor.monitor import Monitor

    accepted = [
        name
        for name in inspect.signature(Monitor.__init__).parameters
        if name not in _FILLED_BY_CALLBACK
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"{callback} got unknown Monitor option(s) {unknown}; accepted: {', '.join(accepted)}"
        )
    return dict(options)


def run_dir_or_default(run_dir: str | os.PathLike[str] | None, trainer_dir: Any) -> Path:
    """The user's run directory, else ``steadygrad/`` inside the trainer's output directory."""
    if run_dir is not None:
        if not isinstance(run_dir, str | os.PathLike):
            raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
        return Path(run_dir)
    return Path(trainer_dir if trainer_dir is not None else ".") / "steadygrad"


def watched_optimizer(callback: str, optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside the trainer's wrapper, or a clear error naming the callback."""
    inner = unwrap_optimizer(optimizer)
    if not isinstance(inner, torch.optim.Optimizer) or not hasattr(
        inner, "_optimizer_step_pre_hooks"
    ):
        raise TypeError(
            f"{callback} can only watch a torch.optim.Optimizer (accelerate's and Lightning's "
            f"wrappers are unwrapped), but the trainer's optimizer is {type(optimizer).__name__}"
            + (f" wrapping {type(inner).__name__}" if inner is not optimizer else "")
        )
    return inner


def global_grad_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """The L2 norm of every gradient together, as a device tensor (no host synchronisation)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads)
    device = grads[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device, torch.float32) for n in norms]))


class StepLoss:
    """The loss of one optimizer step: the micro-batch losses of its accumulation window,
    summed on the device as the trainer sums them."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.parts = 0

    def add(self, loss: Any) -> None:
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float().reshape(())
        elif isinstance(loss, int | float) and not isinstance(loss, bool):
            loss = torch.tensor(float(loss))
        else:
            return  # no loss for this micro-batch (a skipped backward)
        self.total = loss if self.total is None else self.total + loss.to(self.total.device)
        self.parts += 1

    def take(self) -> torch.Tensor | None:
        total, self.total, self.parts = self.total, None, 0
        return total


class CallbackSettings:
    """What both trainer callbacks take, checked when the callback is built (a bad option is a
    clear error at once, not when training starts)."""

    def _settle(
        self,
        callback: str,
        run_dir: str | os.PathLike[str] | None,
        trainer_logger: bool,
        options: dict[str, Any],
    ) -> None:
        if not isinstance(trainer_logger, bool):
            raise TypeError(f"trainer_logger must be a bool, got {type(trainer_logger).__name__}")
        positive_int("every", options["every"])
        self.run_dir = run_dir
        self.trainer_logger = trainer_logger
        self.options = monitor_options(callback, options)
        if run_dir is not None:
            run_dir_or_default(run_dir, None)  # a clear error now for a bad path type
