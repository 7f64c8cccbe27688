"""Backing the learning rate off in a way a scheduler does not undo.

Most schedulers recompute each group's rate from their ``base_lrs`` at every step (``LambdaLR``,
which the Hugging Face Trainer uses for all its schedules, the cosine and linear families, warm
restarts), so lowering ``param_group["lr"]`` alone lasts one step. Scaling the scheduler's base
rates as well (and the group keys some schedulers start from) makes the back-off a lasting
multiplicative factor; chained schedulers, which multiply the current rate, keep it too.

Example:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(1))
    >>> opt = torch.optim.SGD([p], lr=1.0)
    >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    >>> back_off_learning_rate(opt, [sched], 0.5)
    [0.5]
    >>> opt.step(); sched.step()
    >>> opt.param_groups[0]["lr"]   # 1/(1+1), halved
    0.25
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

# Group keys some schedulers compute the rate from (OneCycleLR, CyclicLR, a resumed scheduler).
_GROUP_RATE_KEYS = ("initial_lr", "max_lr", "min_lr", "base_lr")


def back_off_learning_rate(
    optimizer: torch.optim.Optimizer, schedulers: Iterable[Any], factor: float
) -> list[float]:
    """Multiply every group's learning rate by ``factor``, now and in every scheduler's future
    (``SequentialLR`` and ``ChainedScheduler`` are followed into their parts). Returns the
    groups' new rates."""
    for group in optimizer.param_groups:
        group["lr"] = _scaled(group["lr"], factor)
        for key in _GROUP_RATE_KEYS:
            if isinstance(group.get(key), int | float | torch.Tensor):
                group[key] = _scaled(group[key], factor)
    seen: set[int] = set()
    for scheduler in schedulers:
        _scale_scheduler(scheduler, factor, seen)
    return [float(g["lr"]) for g in optimizer.param_groups]


def keep_rates(optimizer: torch.optim.Optimizer, schedulers: Iterable[Any]) -> Callable[[], None]:
    """Remember every rate :func:`back_off_learning_rate` touches; the returned function puts
    them back (a rollback restores older optimizer and scheduler state, but lowers the rate
    from the one that diverged)."""
    # Groups by position: optimizer.load_state_dict replaces the group dicts themselves.
    groups = [
        {k: _copied(g[k]) for k in ("lr", *_GROUP_RATE_KEYS) if k in g}
        for g in optimizer.param_groups
    ]
    kept: list[tuple[Any, str, Any]] = []
    for scheduler in _all_schedulers(schedulers):
        for attr in ("base_lrs", "min_lrs"):
            if isinstance(getattr(scheduler, attr, None), list):
                kept.append((scheduler, attr, [_copied(v) for v in getattr(scheduler, attr)]))

    def restore() -> None:
        for group, rates in zip(optimizer.param_groups, groups, strict=False):
            group.update(rates)
        for owner, attr, value in kept:
            setattr(owner, attr, value)

    return restore


def _all_schedulers(schedulers: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [s for s in schedulers if s is not None]
    while stack:
        s = stack.pop(0)
        if any(s is o for o in out):
            continue
        out.append(s)
        stack.extend(getattr(s, "_schedulers", None) or ())
    return out


def _copied(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _scale_scheduler(scheduler: Any, factor: float, seen: set[int]) -> None:
    if scheduler is None or id(scheduler) in seen:
        return
    seen.add(id(scheduler))
    base = getattr(scheduler, "base_lrs", None)
    if isinstance(base, list):
        scheduler.base_lrs = [_scaled(lr, factor) for lr in base]
    min_lrs = getattr(scheduler, "min_lrs", None)  # ReduceLROnPlateau's floor
    if isinstance(min_lrs, list):
        scheduler.min_lrs = [_scaled(lr, factor) for lr in min_lrs]
    for part in getattr(scheduler, "_schedulers", None) or ():
        _scale_scheduler(part, factor, seen)


def _scaled(value: Any, factor: float) -> Any:
    if isinstance(value, torch.Tensor):
        return value.mul_(factor) if not value.requires_grad else value * factor
    return value * factor
