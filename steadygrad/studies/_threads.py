"""Run a study's small models on a fixed number of CPU threads, restoring the setting after."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

from steadygrad.core.checks import positive_int

F = TypeVar("F", bound=Callable)


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Use ``count`` intra-op threads inside the block (None: leave torch's setting alone).

    Tiny models gain nothing from more threads, and on a busy machine extra threads spin and
    wait: one thread was 15x faster than two for the grokking MLP on a shared 2-core box.

    Example:
        >>> with cpu_threads(1):
        ...     torch.get_num_threads()
        1
    """
    if count is None:
        yield
        return
    count = positive_int("num_threads", count)
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def on_cpu_threads(fn: F) -> F:
    """Run ``fn`` inside :func:`cpu_threads` with its own ``num_threads`` argument."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with cpu_threads(bound.arguments["num_threads"]):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
