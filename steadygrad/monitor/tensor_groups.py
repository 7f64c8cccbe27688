"""Per-tensor reductions over many tensors with a few kernels and a few Python objects.

``torch._foreach_norm`` on a CPU runs one kernel per tensor and returns one Python tensor per
result: a model with thousands of small parameter tensors pays microseconds per tensor, and
thousands of tensor objects alive at once wake Python's garbage collector, which then walks the
whole model. :class:`TensorGroups` stacks the small tensors that share a shape, a dtype and a
device into one tensor per chunk and reduces each chunk over its own dimensions; the large ones
(whose reduction is memory-bound anyway) and the lone shapes go through the ``_foreach_`` ops.
Results come back as one vector in the order of the tensors given.

A snapshot (:meth:`TensorGroups.copy`) is held the same way: one stacked copy per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Tensors of at most this many elements are stacked with the others of their shape: below it a
# kernel per tensor costs more than the copy (TinyGPT's 16k-65k-element matrices run faster alone).
STACK_MAX_NUMEL = 1 << 12
# Elements per stacked chunk: bounds the temporary memory of a pass (a few such chunks).
CHUNK_NUMEL = 1 << 22
# Layouts of at most this many tensors are not stacked: one ``_foreach_`` call takes them all,
# in their own order, and the copies, the concatenation and the reordering stacking needs cost
# more than the kernels they save (TinyGPT's 53 tensors: 0.49 ms a norm pass, 0.57 stacked).
STACK_MIN_TENSORS = 128
LOW_PRECISION = (torch.float16, torch.bfloat16)

Parts = tuple[list[torch.Tensor], list[torch.Tensor]]  # stacked chunks, single tensors


class TensorGroups:
    """How to reduce a fixed layout of tensors (shapes, dtypes, devices) in few kernels.

    Build it once for a layout; every call then takes tensors of that same layout, in the same
    order (the gradients of the parameters it was built from, say).

    Example:
        >>> ts = [torch.ones(2, 2), torch.ones(2, 2) * 2, torch.ones(3)]
        >>> TensorGroups(ts).norms(ts)
        tensor([2.0000, 4.0000, 1.7321])
    """

    def __init__(self, tensors: Sequence[torch.Tensor], device: torch.device | None = None) -> None:
        kinds: dict[tuple, list[int]] = {}
        singles: list[int] = []
        stacking = len(tensors) > STACK_MIN_TENSORS
        for i, t in enumerate(tensors):
            n = t.numel()
            if stacking and 0 < n <= STACK_MAX_NUMEL and not t.is_sparse and not t.is_complex():
                kinds.setdefault((t.device, t.dtype, tuple(t.shape)), []).append(i)
            else:
                singles.append(i)
        self.chunks: list[list[int]] = []
        for (_, _, shape), members in kinds.items():
            if len(members) == 1:
                singles += members
                continue
            per_chunk = max(1, CHUNK_NUMEL // max(1, _numel(shape)))
            self.chunks += [members[k : k + per_chunk] for k in range(0, len(members), per_chunk)]
        self.singles = sorted(singles)
        kinds_of_singles = {(tensors[i].device, tensors[i].dtype) for i in self.singles}
        self._uniform = len(kinds_of_singles) <= 1  # one _foreach_norm takes them all
        self.size = len(tensors)
        # where results are gathered: the first tensor's device (``device`` for no tensors)
        self.device = tensors[0].device if len(tensors) else (device or torch.device("cpu"))
        order = [i for chunk in self.chunks for i in chunk] + self.singles
        inverse = [0] * len(order)
        for position, i in enumerate(order):
            inverse[i] = position
        # None: the results come out in the tensors' own order (nothing stacked)
        self._inverse = (
            None
            if order == list(range(self.size))
            else torch.tensor(inverse, dtype=torch.long, device=self.device)
        )

    # -- reductions -------------------------------------------------------------------------
    def norms(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The L2 norm of each tensor as one float32 vector (fp16/bf16 reduced in float32)."""
        return self.norms_of(self.gather(tensors))

    def norms_of(self, parts: Parts) -> torch.Tensor:
        """The L2 norm of each tensor held in ``parts`` (from :meth:`gather` or :meth:`copy`)."""
        stacked, singles = parts
        values = [torch.linalg.vector_norm(_rows(s), dim=1, dtype=wide_dtype(s)) for s in stacked]
        if singles:
            values.append(_single_norms(singles, self._uniform))
        return self._in_order(values, torch.float32)

    def dots(self, tensors: Sequence[torch.Tensor], parts: Parts) -> torch.Tensor:
        """``<tensors[i], held[i]>`` for each i as one float64 vector (half precision
        accumulated in float32); ``parts`` holds tensors of the same layout."""
        stacked, singles = parts
        mine, my_singles = self.gather(tensors)
        values = [_row_dots(a, b) for a, b in zip(mine, stacked, strict=True)]
        if singles:
            values.append(
                torch.stack(
                    [
                        torch.vdot(_flat_wide(x), _flat_wide(y)).double().to(self.device)
                        for x, y in zip(my_singles, singles, strict=True)
                    ]
                )
            )
        return self._in_order(values, torch.float64)

    # -- copies ------------------------------------------------------------------------------
    def gather(self, tensors: Sequence[torch.Tensor]) -> Parts:
        """The chunks stacked (new tensors) and the single tensors themselves."""
        if len(tensors) != self.size:
            raise ValueError(f"expected {self.size} tensors of the layout, got {len(tensors)}")
        stacked = [torch.stack([tensors[i] for i in chunk]) for chunk in self.chunks]
        return stacked, [tensors[i] for i in self.singles]

    def copy(self, tensors: Sequence[torch.Tensor]) -> Parts:
        """A copy of ``tensors`` (one stacked tensor per chunk)."""
        stacked, singles = self.gather(tensors)
        return stacked, (torch._foreach_mul(singles, 1.0) if singles else [])

    def subtract_(self, parts: Parts, tensors: Sequence[torch.Tensor]) -> None:
        """``parts -= tensors``, in the memory of ``parts``."""
        stacked, singles = parts
        now, now_singles = self.gather(tensors)
        for held, current in zip(stacked, now, strict=True):
            held.sub_(current)
        if singles:
            torch._foreach_sub_(singles, now_singles)

    @staticmethod
    def negate_(parts: Parts) -> None:
        stacked, singles = parts
        for held in stacked:
            held.neg_()
        if singles:
            torch._foreach_neg_(singles)

    def _in_order(self, values: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        if not values:
            return torch.zeros(0, dtype=dtype, device=self.device)
        values = [v.to(self.device, dtype) for v in values]
        flat = values[0] if len(values) == 1 else torch.cat(values)
        return flat if self._inverse is None else flat[self._inverse]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _rows(stacked: torch.Tensor) -> torch.Tensor:
    """A stacked chunk as one row per tensor."""
    return stacked.reshape(stacked.shape[0], -1)


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two stacked chunks, in float64 (half precision via float32)."""
    x, y = _rows(a), _rows(b)
    if y.dtype in LOW_PRECISION:
        x, y = x.float(), y.float()
    return (x.to(y.dtype) * y).sum(dim=1).double()


def wide_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The dtype to reduce ``t`` in: float32 for half precision, whose sums of squares pass
    float16's 65504 long before its values do; None (its own) otherwise."""
    return torch.float32 if t.dtype in LOW_PRECISION else None


def _flat_wide(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1)
    return t.float() if t.element_size() < 4 else t


def _single_norms(tensors: list[torch.Tensor], uniform: bool) -> torch.Tensor:
    """Norms of tensors that are not stacked: one ``_foreach_norm`` when they share a device
    and a dtype, else one norm each."""
    first = tensors[0]
    if uniform:
        low = first.dtype in LOW_PRECISION
        norms = torch._foreach_norm(tensors, dtype=torch.float32) if low else None
        return torch.stack(norms or torch._foreach_norm(tensors)).float()
    return torch.stack(
        [
            torch.linalg.vector_norm(t, dtype=torch.float32 if t.dtype in LOW_PRECISION else None)
            .float()
            .to(first.device)
            for t in tensors
        ]
    )
