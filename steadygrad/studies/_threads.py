"""Run a study's small models on a fixed number of CPU threads, restoring the setting after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from steadygrad._checks import positive_int


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
