"""The operation that made the first non-finite value of a forward pass outside any module (an
``exp`` of a score written in the model's own forward, a division by a sum that underflowed):
module hooks see only that a module was fed it, and which module's output it was computed
from is ambiguous where the operation took several (``w * h``). Replayed under
:class:`FirstNonFinite`, every operation's output is checked, and the first one non-finite
from finite inputs is the producer; the module whose output its inputs came from is named.

Example:
    >>> with FirstNonFinite() as found:  # doctest: +SKIP
    ...     model(x)
    >>> found.operation  # doctest: +SKIP
    'exp'
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from steadygrad.monitor.intercept import float_tensors


def _finite(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class FirstNonFinite(TorchFunctionMode):
    """Runs every operation and keeps the first whose floating-point output holds a NaN or an
    Inf while every floating-point input was finite: ``operation`` (its name) and ``inputs``.
    Each output is read on the host: for replays only, never a training step."""

    def __init__(self) -> None:
        super().__init__()
        self.operation: str | None = None
        self.inputs: tuple[torch.Tensor, ...] = ()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        out = func(*args, **(kwargs or {}))
        if self.operation is None:
            with torch._C.DisableTorchFunction():  # reading the values is no operation to check
                outs, ins = float_tensors(out), float_tensors((args, kwargs))
                if outs and ins and not _finite(outs) and _finite(ins):
                    self.operation = getattr(func, "__name__", str(func))
                    self.inputs = tuple(ins)
        return out
