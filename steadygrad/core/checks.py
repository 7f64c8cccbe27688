"""Argument checks shared by the public API: each raises a clear error naming the argument."""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch


def positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def non_negative_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 0, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def finite_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float if it is finite and inside the given bounds."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int or Fraction beyond float range
        raise ValueError(f"{name} must be finite, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        bound = ">" if low_open else ">="
        raise ValueError(f"{name} must be {bound} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        bound = "<" if high_open else "<="
        raise ValueError(f"{name} must be {bound} {high}, got {value!r}")
    return value


def module(name: str, value: object) -> torch.nn.Module:
    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def lazy_parameters(model: torch.nn.Module) -> list[str]:
    """The names of ``model``'s parameters a lazy module has not initialised yet (``LazyLinear``
    and its kind: their shapes come from the first forward pass)."""
    return [n for n, p in model.named_parameters() if torch.nn.parameter.is_lazy(p)]


def initialised(name: str, value: torch.nn.Module) -> torch.nn.Module:
    """``value``, once every parameter of it has been initialised (see :func:`lazy_parameters`)."""
    lazy = lazy_parameters(value)
    if lazy:
        listed = ", ".join(lazy[:3]) + (f" and {len(lazy) - 3} more" if len(lazy) > 3 else "")
        raise ValueError(
            f"{name} has parameters a lazy module has not initialised yet ({listed}): run one "
            "forward pass with a real batch first (the dry run PyTorch asks of lazy modules), "
            "then attach"
        )
    return value


def optimizer(name: str, value: object) -> torch.optim.Optimizer:
    if not isinstance(value, torch.optim.Optimizer):
        raise TypeError(f"{name} must be a torch.optim.Optimizer, got {type(value).__name__}")
    return value
