"""Learning-rate schedules as torch LR schedulers: Warmup-Stable-Decay and warmup + cosine.

Both are closed-form in the step count (``last_epoch``), so ``state_dict`` / ``load_state_dict``
and resuming with ``last_epoch`` behave like any torch scheduler. Step ``s`` is 0-based: the
multiplier of the first ``optimizer.step()`` is the value at ``s = 0``.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

from steadygrad.core.checks import finite_float, non_negative_int, positive_int
from steadygrad.core.checks import optimizer as check_optimizer

DECAY_SHAPES = ("linear", "cosine", "1-sqrt", "1-square")


def _check_last_epoch(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ValueError(f"last_epoch must be an int >= -1, got {value!r}")
    return value


def _decay_value(shape: str, progress: float) -> float:
    """The cooldown curve on ``progress`` in [0, 1]: 1 at the start, 0 at the end."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    return 1.0 - progress * progress  # "1-square"


def wsd_multiplier(
    step: int,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    decay_shape: str = "1-sqrt",
    min_lr_ratio: float = 0.0,
) -> float:
    """The Warmup-Stable-Decay LR multiplier at 0-based ``step`` (no argument checks).

    Warmup ``step / warmup_steps``; 1 while stable; then ``min_lr_ratio + (1 - min_lr_ratio) *
    shape(q)`` with ``q`` the cooldown progress; ``min_lr_ratio`` afterwards. Continuous at the
    end of the cooldown for every shape.

    Example:
        >>> round(wsd_multiplier(12, 10, 0, 4, "linear", 0.2), 6)
        0.6
    """
    if step < warmup_steps:
        return step / warmup_steps
    if step < warmup_steps + stable_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps - stable_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * _decay_value(decay_shape, progress)


def warmup_cosine_multiplier(
    step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> float:
    """The warmup + cosine LR multiplier at 0-based ``step`` (no argument checks).

    Example:
        >>> warmup_cosine_multiplier(5, 0, 10)
        0.5
    """
    return wsd_multiplier(step, warmup_steps, 0, total_steps - warmup_steps, "cosine", min_lr_ratio)


class _ClosedFormScheduler(LRScheduler):
    """An LR scheduler whose multiplier is a function of the step count only."""

    def multiplier(self, step: int) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        factor = self.multiplier(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class WarmupStableDecay(_ClosedFormScheduler):
    """Warmup-Stable-Decay (MiniCPM, arXiv 2404.06395; Hägele et al. 2024, arXiv 2405.18392).

    LR multiplier at 0-based step ``s``: ``s / warmup_steps`` during warmup, 1 for
    ``stable_steps`` steps, then a cooldown of ``decay_steps`` steps with progress ``q`` in
    [0, 1]: ``min_lr_ratio + (1 - min_lr_ratio) * shape(q)`` with shape ``linear`` ``1 - q``,
    ``cosine`` ``(1 + cos(pi q)) / 2``, ``1-sqrt`` ``1 - sqrt(q)`` (the recommended default) or
    ``1-square`` ``1 - q**2``; ``min_lr_ratio`` after the cooldown.

    Unlike pytorch-optimizer's ``get_wsd_schedule`` (whose non-cosine shapes decay to 0 and then
    jump to ``min_lr_ratio``), every shape here ends the cooldown exactly at ``min_lr_ratio``:
    the schedule is continuous. With ``min_lr_ratio=0`` the two agree.

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> sched = WarmupStableDecay(opt, warmup_steps=10, stable_steps=70, decay_steps=20)
        >>> for _ in range(10):
        ...     opt.step(); sched.step()
        >>> sched.get_last_lr()
        [0.1]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int,
        stable_steps: int,
        decay_steps: int,
        decay_shape: str = "1-sqrt",
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        check_optimizer("optimizer", optimizer)
        self.warmup_steps = non_negative_int("warmup_steps", warmup_steps)
        self.stable_steps = non_negative_int("stable_steps", stable_steps)
        self.decay_steps = positive_int("decay_steps", decay_steps)
        if decay_shape not in DECAY_SHAPES:
            raise ValueError(f"decay_shape must be one of {DECAY_SHAPES}, got {decay_shape!r}")
        self.decay_shape = decay_shape
        self.min_lr_ratio = finite_float("min_lr_ratio", min_lr_ratio, low=0.0, high=1.0)
        super().__init__(optimizer, _check_last_epoch(last_epoch))

    def multiplier(self, step: int) -> float:
        return wsd_multiplier(
            step,
            self.warmup_steps,
            self.stable_steps,
            self.decay_steps,
            self.decay_shape,
            self.min_lr_ratio,
        )


class WarmupCosine(_ClosedFormScheduler):
    """Linear warmup to the peak LR, then a cosine decay to ``min_lr_ratio`` * peak.

    Multiplier at 0-based step ``s``: ``s / warmup_steps`` for ``s < warmup_steps``, then
    ``min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi q)) / 2`` with
    ``q = (s - warmup_steps) / (total_steps - warmup_steps)``, and ``min_lr_ratio`` from
    ``total_steps`` on. This is the schedule of Wortsman et al. 2023 (arXiv 2309.14322).

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = WarmupCosine(opt, warmup_steps=2, total_steps=6)
        >>> lrs = []
        >>> for _ in range(6):
        ...     lrs.append(round(sched.get_last_lr()[0], 3)); opt.step(); sched.step()
        >>> lrs
        [0.0, 0.5, 1.0, 0.854, 0.5, 0.146]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int,
        total_steps: int,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        check_optimizer("optimizer", optimizer)
        self.warmup_steps = non_negative_int("warmup_steps", warmup_steps)
        self.total_steps = positive_int("total_steps", total_steps)
        if self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must be greater than warmup_steps ({warmup_steps})"
            )
        self.min_lr_ratio = finite_float("min_lr_ratio", min_lr_ratio, low=0.0, high=1.0)
        super().__init__(optimizer, _check_last_epoch(last_epoch))

    def multiplier(self, step: int) -> float:
        return warmup_cosine_multiplier(
            step, self.warmup_steps, self.total_steps, self.min_lr_ratio
        )
