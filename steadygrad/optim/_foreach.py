"""The multi-tensor eager path: each optimizer's kernel, unchanged, run over *lists* of tensors.

A kernel is written for one tensor (see ``_base``). Here it receives :class:`TensorList` objects
instead: arithmetic on them dispatches to torch's multi-tensor ``torch._foreach_*`` ops (one
call for a whole list instead of one per tensor), and the step-dependent scalars arrive as
Python floats (:class:`Scalars`), so the math is the same code as the reference path.

Three things make it fast without a compiler:

* *many tensors per op*: one ``_foreach_`` call updates a whole list, so the Python and
  dispatch cost per op is paid once per block, not once per tensor;
* *cache blocking*: the tensors are cut into pieces (views) and the pieces packed into blocks of
  about ``BLOCK_NUMEL`` entries; the whole kernel runs on one block before the next, so its
  intermediate results stay in the CPU cache instead of streaming through memory (an eager
  chain of a dozen ops on a 10 MB tensor otherwise reads and writes memory a dozen times).
  Kernels with a whole-tensor reduction (``kernel.reduces = True``) get whole tensors;
* *one pass for Adam's part*: the translations of Adam-like kernels (Grams, DiffGrad,
  Stable-SPAM) run their moment updates and step in one pass of torch's fused Adam kernel
  (:func:`adam_step_`), with their temporaries in scratch buffers kept from step to step.

Example:
    >>> a = TensorList([torch.ones(3), torch.ones(2)])
    >>> [t.tolist() for t in (a * 2.0 + a).items]
    [[3.0, 3.0, 3.0], [3.0, 3.0]]
"""

from __future__ import annotations

import numbers
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

# Entries per block: small enough that a kernel's live intermediates (a few times this many
# float32 values) stay in the CPU caches, large enough that an op's dispatch cost is amortised
# (on the benchmark's 2-core EPYC, 2^17 beat 2^15 by 1.2-1.8x).
BLOCK_NUMEL = 1 << 17


def block_numel(device: torch.device) -> int:
    """Entries per block on ``device``. Cache blocking pays on the CPU only: on an accelerator
    each block costs a dozen kernel launches (microseconds each), far more than streaming the
    intermediates through device memory, so one block there holds every tensor (torch's own
    ``foreach`` optimizers do the same)."""
    return BLOCK_NUMEL if device.type == "cpu" else sys.maxsize


class Scalars:
    """The kernel's ``hp`` in multi-tensor mode: ``hp.unbind(0)`` gives Python floats."""

    def __init__(self, values: Sequence[float]) -> None:
        self.values = tuple(float(v) for v in values)

    def unbind(self, dim: int = 0) -> tuple[float, ...]:
        return self.values


def _is_scalar(x: Any) -> bool:
    return isinstance(x, numbers.Number)


def _items(x: Any, n: int) -> list[Any]:
    return x.items if isinstance(x, TensorList) else [x] * n


class TensorList:
    """A list of tensors that behaves like one tensor inside a kernel: element-wise ops apply
    to every member (through ``torch._foreach_*`` where torch has one)."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[torch.Tensor]) -> None:
        self.items = list(items)

    # ------------------------------------------------------------------ arithmetic
    def __add__(self, other: Any) -> TensorList:
        return TensorList(torch._foreach_add(self.items, _operand(other)))

    __radd__ = __add__

    def __mul__(self, other: Any) -> TensorList:
        return TensorList(torch._foreach_mul(self.items, _operand(other)))

    __rmul__ = __mul__

    def __sub__(self, other: Any) -> TensorList:
        return TensorList(torch._foreach_sub(self.items, _operand(other)))

    def __rsub__(self, other: Any) -> TensorList:
        out = torch._foreach_neg(self.items)
        torch._foreach_add_(out, _operand(other))
        return TensorList(out)

    def __truediv__(self, other: Any) -> TensorList:
        return TensorList(torch._foreach_div(self.items, _operand(other)))

    def __rtruediv__(self, other: Any) -> TensorList:
        out = torch._foreach_reciprocal(self.items)
        torch._foreach_mul_(out, _operand(other))
        return TensorList(out)

    def __neg__(self) -> TensorList:
        return TensorList(torch._foreach_neg(self.items))

    def __abs__(self) -> TensorList:
        return TensorList(torch._foreach_abs(self.items))

    # comparisons and logic have no multi-tensor op: one op per member
    def _each(self, fn: Callable[..., torch.Tensor], other: Any) -> TensorList:
        others = _items(other, len(self.items))
        return TensorList([fn(a, b) for a, b in zip(self.items, others, strict=True)])

    def __gt__(self, other: Any) -> TensorList:
        return self._each(torch.gt, other)

    def __lt__(self, other: Any) -> TensorList:
        return self._each(torch.lt, other)

    def __ge__(self, other: Any) -> TensorList:
        return self._each(torch.ge, other)

    def __le__(self, other: Any) -> TensorList:
        return self._each(torch.le, other)

    def __and__(self, other: Any) -> TensorList:
        return self._each(torch.logical_and, other)

    def __or__(self, other: Any) -> TensorList:
        return self._each(torch.logical_or, other)

    # ------------------------------------------------------------------ tensor methods
    def float(self) -> TensorList:
        if all(t.dtype == torch.float32 for t in self.items):
            return self  # Tensor.float() is the identity on float32 too
        return TensorList([t.float() for t in self.items])

    def copy_(self, other: Any) -> TensorList:
        if isinstance(other, TensorList):
            torch._foreach_copy_(self.items, other.items)
        else:
            for t in self.items:
                t.copy_(other)
        return self

    # ------------------------------------------------------------------ torch functions
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        unary = _UNARY.get(func)
        if unary is not None and len(args) == 1 and not kwargs:
            return TensorList(unary(args[0].items))
        if func is torch.maximum and not kwargs:
            a, b = args
            if isinstance(a, TensorList) and isinstance(b, TensorList):
                return TensorList(torch._foreach_maximum(a.items, b.items))
        if func is torch.linalg.vector_norm and len(args) == 1 and not kwargs:
            return TensorList(list(torch._foreach_norm(args[0].items)))
        # anything else (where, amax, ...): one call per member
        n = next(len(a.items) for a in (*args, *kwargs.values()) if isinstance(a, TensorList))
        columns = [_items(a, n) for a in args]
        kw_columns = {k: _items(v, n) for k, v in kwargs.items()}
        out = [
            func(*(c[i] for c in columns), **{k: v[i] for k, v in kw_columns.items()})
            for i in range(n)
        ]
        return TensorList(out)


def _operand(x: Any) -> Any:
    if isinstance(x, TensorList):
        return x.items
    if _is_scalar(x):
        return x
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x  # a 0-d tensor scalar
    raise TypeError(f"cannot combine a TensorList with {type(x).__name__}")


_UNARY = {
    torch.sqrt: torch._foreach_sqrt,
    torch.sign: torch._foreach_sign,
    torch.abs: torch._foreach_abs,
    torch.sigmoid: torch._foreach_sigmoid,
    torch.exp: torch._foreach_exp,
    torch.neg: torch._foreach_neg,
    torch.reciprocal: torch._foreach_reciprocal,
}


def blocks(
    items: list[list[torch.Tensor]], split: bool, numel: int | None = None
) -> list[list[list[torch.Tensor]]]:
    """Pack the rows ``[p, grad, *states]`` (contiguous tensors) into blocks of about ``numel``
    entries; with ``split``, a row longer than that is cut into views of at most ``numel``
    entries (entries of one-entry states are shared by all pieces, so only element-wise
    kernels may be split)."""
    if numel is None:
        numel = block_numel(items[0][0].device) if items else BLOCK_NUMEL
    out: list[list[list[torch.Tensor]]] = []
    current: list[list[torch.Tensor]] = []
    size = 0
    for row in items:
        n = row[0].numel()
        if split and n > numel:
            flat = [t.view(-1) if t.numel() == n else t for t in row]
            for start in range(0, n, numel):
                piece = [t[start : start + numel] if t.numel() == n else t for t in flat]
                out.append([piece])
            continue
        if current and size + n > numel:
            out.append(current)
            current, size = [], 0
        current.append(row)
        size += n
    if current:
        out.append(current)
    return out


def run_blocked(kernel: Callable[..., None], rows: list[list[torch.Tensor]], hp, flags) -> None:
    """Apply ``kernel`` to every row ``[p, grad, *states]``, block by block (see module doc):
    through its in-place translation ``kernel.foreach`` when it has one and every tensor of
    the rows has one dtype, else through :class:`TensorList`."""
    inplace = getattr(kernel, "foreach", None)
    split = not getattr(kernel, "reduces", False)
    if inplace is not None and len({t.dtype for row in rows for t in row}) == 1:
        if split:
            run_inplace(inplace, rows, hp, flags)
        else:  # whole tensors: the translation does its own blocking around the reductions
            columns = [list(col) for col in zip(*rows, strict=True)]
            inplace(*columns, tuple(float(v) for v in hp), *flags)
        return
    scalars = Scalars(hp)
    for block in blocks(rows, split):
        columns = [TensorList(list(col)) for col in zip(*block, strict=True)]
        kernel(*columns, scalars, *flags)


# ---------------------------------------------------------------- scratch
# Scratch space for the translations' temporaries, allocated once and kept between steps
# (a fresh block-sized tensor per temporary is paid for again at every step). Blocks repeat
# from step to step, so their views are cached by layout; a cache that grows past this many
# layouts is dropped and rebuilt.
_SCRATCH_LAYOUTS = 256
_scratch_flat: dict[tuple[Any, ...], torch.Tensor] = {}
_scratch_views: dict[tuple[Any, ...], list[torch.Tensor]] = {}


def scratch(like: list[torch.Tensor], slot: int) -> list[torch.Tensor]:
    """Uninitialised tensors shaped as ``like``, in scratch slot ``slot``: valid until the next
    call for the same slot (a translation uses one slot per live temporary)."""
    first = like[0]
    thread = threading.get_ident()  # optimizers stepping in two threads must not share scratch
    key = (thread, slot, first.device, first.dtype, *(t.shape for t in like))
    views = _scratch_views.get(key)
    if views is not None:
        return views
    total = sum(t.numel() for t in like)
    flat_key = (thread, slot, first.device, first.dtype)
    flat = _scratch_flat.get(flat_key)
    if flat is None or flat.numel() < total:
        flat = torch.empty(max(total, BLOCK_NUMEL), dtype=first.dtype, device=first.device)
        _scratch_flat[flat_key] = flat
        _scratch_views.clear()  # views of the old buffer
    if len(_scratch_views) >= _SCRATCH_LAYOUTS:
        _scratch_views.clear()
    views, offset = [], 0
    for t in like:
        views.append(flat[offset : offset + t.numel()].view(t.shape))
        offset += t.numel()
    _scratch_views[key] = views
    return views


def copy_to_scratch(x: list[torch.Tensor], slot: int) -> list[torch.Tensor]:
    """``x`` copied into scratch slot ``slot`` (a temporary to work on in place)."""
    out = scratch(x, slot)
    torch._foreach_copy_(out, x)
    return out


# torch's fused Adam kernel (what ``torch.optim.Adam(fused=True)`` runs, no compiler needed) does
# the two moment updates and the step in one pass. Its bias corrections are ``1 - beta**step``;
# at step = inf they are 1, so the caller's scalars carry their own corrections.
_UNCORRECTED_STEP: dict[torch.device, torch.Tensor] = {}
# (device type, dtype) -> whether torch's fused kernel ran there (absent: not tried yet)
_FUSED_ADAM: dict[tuple[str, torch.dtype], bool] = {}
_ADAM_SLOT = 7  # scratch slot of adam_step_'s fallback, apart from its callers' slots
# A moment held as it is (``b1`` or ``b2`` None in adam_step_): the fused kernel always updates
# both, and beta = 1 would make its bias correction 1 - 1**step = 0. The double just below 1
# weighs the new term (g, or g*g for v) by 2**-53, which moves no float32 entry unless the term
# exceeds it by 2**29 (AdEMAMix holds a nu that already holds (1 - b2) * g*g), and its
# correction 1 - beta**inf is 1. Checked once per device and dtype (_held_beta_works): a kernel
# that rounds beta to float32 first would divide by zero, and takes the op chain instead.
_HELD_BETA = 1.0 - 2.0**-53
_HELD_BETA_WORKS: dict[tuple[str, torch.dtype], bool] = {}


def adam_step_(
    target: list[torch.Tensor],
    g: list[torch.Tensor],
    m: list[torch.Tensor],
    v: list[torch.Tensor],
    lr: float,
    b1: float | None,
    b2: float | None,
    eps: float,
) -> None:
    """In place: ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g*g``, then
    ``target -= lr * m / (sqrt(v) + eps)``, in one pass (torch's fused kernel) where torch has
    it for these tensors, else in five multi-tensor ops. A beta of None holds that moment as it
    is (a caller that built it, or that updated it in an earlier call)."""
    device = g[0].device
    key = (device.type, g[0].dtype)
    step = _UNCORRECTED_STEP.get(device)
    if step is None:
        step = _UNCORRECTED_STEP[device] = torch.tensor(float("inf"), device=device)
    held = b1 is None or b2 is None
    if _FUSED_ADAM.get(key, True) and (not held or _held_beta_works(step, g[0])):
        try:
            torch._fused_adam_(
                target, g, m, v, [], [step] * len(g), lr=lr,
                beta1=_HELD_BETA if b1 is None else b1, beta2=_HELD_BETA if b2 is None else b2,
                weight_decay=0.0, eps=eps, amsgrad=False, maximize=False,
            )  # fmt: skip
            return
        except (AttributeError, RuntimeError, NotImplementedError):
            # no fused kernel for this device or dtype: remember, and take the op chain
            _FUSED_ADAM[key] = False
    if b1 is not None:
        torch._foreach_lerp_(m, g, 1.0 - b1)
    if b2 is not None:
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, g, g, value=1.0 - b2)
    denom = copy_to_scratch(v, _ADAM_SLOT)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(target, m, denom, value=-lr)


def _held_beta_works(step: torch.Tensor, like: torch.Tensor) -> bool:
    """Whether the fused kernel, on ``like``'s device and dtype, holds a moment whose beta is
    _HELD_BETA (one step on one entry, checked against the hand result)."""
    key = (like.device.type, like.dtype)
    works = _HELD_BETA_WORKS.get(key)
    if works is None:
        p, g, m, v = (
            torch.full((1,), x, dtype=like.dtype, device=like.device) for x in (1, 3, 2, 4)
        )
        try:
            torch._fused_adam_(
                [p], [g], [m], [v], [], [step], lr=0.5, beta1=_HELD_BETA, beta2=_HELD_BETA,
                weight_decay=0.0, eps=0.0, amsgrad=False, maximize=False,
            )  # fmt: skip
            works = [x.item() for x in (p, m, v)] == [0.5, 2.0, 4.0]  # 1 - 0.5 * 2 / sqrt(4)
        except (AttributeError, RuntimeError, NotImplementedError):
            works = False
        _HELD_BETA_WORKS[key] = works
    return works


# ---------------------------------------------------------------- in-place building blocks
# Hand-translations of a kernel into in-place multi-tensor ops (``kernel.foreach``) allocate one
# or two temporaries per block instead of one per op (the Adam-like ones keep theirs in
# scratch). SPAM's keeps the kernel's order of operations (it rounds exactly as the kernel
# does); the others use fused ops (``lerp``, ``addcmul``, ``addcdiv``, scalars folded
# together): fewer passes over each block, equal to the kernel up to float32 rounding
# (tests/test_optim_foreach.py holds them to that).


def ema_(state: list[torch.Tensor], decay: float, x: list[torch.Tensor], weight: float) -> None:
    """``state = state * decay + x * weight`` in place."""
    torch._foreach_mul_(state, decay)
    torch._foreach_add_(state, torch._foreach_mul(x, weight))


def ema_sq_(state: list[torch.Tensor], decay: float, x: list[torch.Tensor], weight: float) -> None:
    """``state = state * decay + x * x * weight`` in place."""
    torch._foreach_mul_(state, decay)
    sq = torch._foreach_mul(x, x)
    torch._foreach_mul_(sq, weight)
    torch._foreach_add_(state, sq)


def with_l2(p: list[torch.Tensor], g: list[torch.Tensor], l2: float) -> list[torch.Tensor]:
    """``g + l2 * p`` in scratch slot 0 (``g`` itself when ``l2`` is 0: the gradient is
    read-only)."""
    if l2 == 0.0:
        return g
    out = copy_to_scratch(g, 0)
    torch._foreach_add_(out, p, alpha=l2)
    return out


def run_inplace(fn: Callable[..., None], rows: list[list[torch.Tensor]], hp, flags) -> None:
    """Apply the in-place translation ``fn`` block by block."""
    for block in blocks(rows, True):
        columns = [list(col) for col in zip(*block, strict=True)]
        fn(*columns, tuple(float(v) for v in hp), *flags)
