"""The built-in signals of the step itself: the loss, the learning rates, the GradScaler's scale.

What the training loop passes to ``mon.step`` reaches these signals as :class:`StepInputs`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steadygrad.core import Measurements, Record, Signal
from steadygrad.core.metrics import (
    AMP_SCALE,
    GRAD_NORM_PRECLIP,
    LEARNING_RATE,
    LOSS,
    OPTIMIZER_RESTARTED,
    OPTIMIZER_SKIPPED,
    STEP_TIME,
)


@dataclass
class StepInputs:
    """What ``mon.step`` was given, and whether the optimizer stepped since the last call."""

    loss: torch.Tensor
    grad_norm_preclip: torch.Tensor | None = None
    stepped: bool = True


# Steps at whose end the step signal looks for a parameter with optimizer state.
LOOKS = 3


class StepSignal(Signal):
    """The loss, the pre-clip gradient norm (when the user passes it), the time since the
    previous ``mon.step``, whether the optimizer skipped the step, and whether its state started
    again from nothing (its step count fell: ``optimizer.state`` cleared or replaced, as by a
    resume that never called ``optimizer.load_state_dict``)."""

    metrics = (LOSS, GRAD_NORM_PRECLIP, STEP_TIME, OPTIMIZER_SKIPPED, OPTIMIZER_RESTARTED)

    def __init__(self) -> None:
        super().__init__(every=1)
        self._last_wall = time.perf_counter()
        self._sentinel: torch.Tensor | None = None  # the parameter whose step count is read
        self._looks = 0
        self._held: torch.Tensor | float | None = None  # the count object last seen

    def measure(self, step: int, out: Measurements) -> None:
        inputs: StepInputs = self.monitor.inputs
        out.put(LOSS.name, inputs.loss)
        if inputs.grad_norm_preclip is not None:
            out.put(GRAD_NORM_PRECLIP.name, inputs.grad_norm_preclip)
        if not inputs.stepped:
            out.put(OPTIMIZER_SKIPPED.name, 1.0)
        now = time.perf_counter()
        out.put(STEP_TIME.name, now - self._last_wall)
        self._last_wall = now
        restarted = self._restarted()
        if restarted is not None:
            out.put(OPTIMIZER_RESTARTED.name, restarted)

    def _restarted(self) -> float | None:
        """The step count the state had, when the optimizer's state started again since the
        last call (a new count object, at its first step); else None. A count held in a tensor
        is updated in place: only a new object (a state cleared, or loaded) is read, so a
        healthy step reads no value at all."""
        count = self._state_count()
        if count is None:
            return None
        before, self._held = self._held, count
        if count is before or before is None:
            return None
        old = float(before)
        return old if float(count) <= 1.0 < old else None

    def _state_count(self) -> torch.Tensor | float | None:
        """The step count the optimizer keeps for one parameter (``state["step"]``), None where
        it keeps none, or keeps it on a device (reading it would synchronise), or where an
        optimizer restarts its state on purpose (Stable-SPAM's momentum resets)."""
        optimizer = self.monitor.optimizer
        if getattr(optimizer, "restarts_state", False):
            return None
        try:
            if self._sentinel is None and self._looks < LOOKS:
                # the first parameter with state; an SGD without momentum keeps none: after a
                # few looks, stop scanning every parameter at every step
                self._looks += 1
                self._sentinel = next(
                    (
                        p
                        for g in optimizer.param_groups
                        for p in g["params"]
                        if optimizer.state.get(p)
                    ),
                    None,
                )
            state = optimizer.state.get(self._sentinel) if self._sentinel is not None else None
        except (AttributeError, KeyError, TypeError):
            return None  # a wrapper whose state is not torch.optim's: nothing to read
        count = state.get("step") if state else None
        if isinstance(count, torch.Tensor):
            return count if count.device.type == "cpu" and count.numel() == 1 else None
        return count if isinstance(count, int | float) else None

    def finish(self, record: Record, raw: Sequence[float]) -> None:
        if not self.monitor.inputs.stepped:  # a late finish runs before the next inputs
            record.meta["skipped"] = True

    def finishes_late(self, step: int, begins_next: bool) -> bool:
        return True


class LearningRateSignal(Signal):
    """Each optimizer group's learning rate, as the update used it: read in the optimizer's
    pre-step path, so a scheduler stepped before ``mon.step`` does not shift it by a step."""

    metrics = (LEARNING_RATE,)

    def __init__(self) -> None:
        super().__init__(every=1)
        self._used: list[float] | None = None
        self._keys: list[str] = []

    def attach(self, monitor: Any) -> None:
        super().attach(monitor)
        groups = monitor.optimizer.param_groups
        self._keys = [_rate_key(g, i) for i, g in enumerate(groups)]

    def before_update(self) -> None:
        self._used = self._rates()

    def _rates(self) -> list[float]:
        # float() of a tensor LR synchronises; only users who keep the LR on the device pay it.
        return [float(g["lr"]) for g in self.monitor.optimizer.param_groups]

    def measure(self, step: int, out: Measurements) -> None:
        rates, self._used = self._used or self._rates(), None
        if len(rates) != len(self._keys):  # a group was added since: name them again
            self.attach(self.monitor)
        for key, lr in zip(self._keys, rates, strict=True):
            out.put(key, lr)


def _rate_key(group: dict, index: int) -> str:
    """The stored name of a parameter group's learning rate: ``lr/<its name or index>``."""
    return LEARNING_RATE.key(group.get("name", index))


def group_members(
    optimizer: torch.optim.Optimizer, named: list[tuple[str, torch.Tensor]]
) -> dict[str, list[str]] | None:
    """The names of the monitored parameters (``named``) in each of the optimizer's groups,
    keyed as the group's learning rate is stored, when it has two groups or more (None for one):
    where each group's own rate acts.

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> opt = torch.optim.SGD([{"params": [net.weight]}, {"params": [net.bias]}], lr=0.1)
        >>> group_members(opt, list(net.named_parameters()))
        {'lr/0': ['weight'], 'lr/1': ['bias']}
    """
    groups = optimizer.param_groups
    if len(groups) < 2:
        return None
    name_of = {id(p): n for n, p in named}
    return {
        _rate_key(g, i): [name_of[id(p)] for p in g["params"] if id(p) in name_of]
        for i, g in enumerate(groups)
    }


class AmpScaleSignal(Signal):
    """The GradScaler's loss scale (mixed precision)."""

    metrics = (AMP_SCALE,)

    def __init__(self, scaler: Any) -> None:
        super().__init__(every=1)
        self.scaler = scaler

    def applies(self) -> bool | str:
        return True if hasattr(self.scaler, "get_scale") else "no torch.amp.GradScaler given"

    def measure(self, step: int, out: Measurements) -> None:
        scale = getattr(self.scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):
            out.put(AMP_SCALE.name, scale)
        elif isinstance(scale, int | float) and math.isfinite(scale):
            out.put(AMP_SCALE.name, scale)
