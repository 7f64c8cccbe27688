"""The gradient norm before clipping, with no user code.

A run that clips at 1.0 shows a gradient norm pinned at 1.0: a spike, or a climb towards an
explosion, that clipping hid never reaches the record. While a :class:`ClipWatch` is open,
``torch.nn.utils.clip_grad_norm_`` (what plain loops, accelerate and Lightning call) and
``torch.nn.utils.get_total_norm`` (torchtitan's and accelerate's DTensor path) are wrapped: the
total norm they return over a watched optimizer's parameters is kept, as the tensor it is (no
host transfer), until the monitor's next ``mon.step`` takes it as ``grad_norm_preclip``.

A name bound before the monitor opened (``from torch.nn.utils import clip_grad_norm_`` at
import time) calls the function itself and is not seen: pass ``grad_norm_preclip`` then.
The wrappers come off when the last watch closes, unless something wrapped them again since.

Example:
    >>> model = torch.nn.Linear(3, 1)
    >>> watch = ClipWatch(model.parameters())
    >>> model(torch.ones(2, 3)).sum().backward()
    >>> norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    >>> bool(watch.take() == norm), watch.take()
    (True, None)
    >>> watch.close()
"""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.utils as nn_utils
from torch.nn.utils import clip_grad as clip_grad_module

# (module, attribute) pairs wrapped while a watch is open: the package's names, which callers
# reach at call time, and clip_grad's own (the deprecated ``clip_grad_norm`` calls it there)
_CLIPS = ((nn_utils, "clip_grad_norm_"), (clip_grad_module, "clip_grad_norm_"))
_TOTALS = ((nn_utils, "get_total_norm"),)

_watches: weakref.WeakSet[ClipWatch] = weakref.WeakSet()
_originals: dict[tuple[int, str], Callable] = {}  # (id(module), name) -> the function wrapped


class ClipWatch:
    """Keeps the pre-clip norms computed over ``params`` since the last :meth:`take`."""

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        params = list(params)
        self._ids = {id(p) for p in params}
        self._refs = [weakref.ref(p) for p in params]
        self._seen: list[tuple[set[int], torch.Tensor, float]] = []  # ids covered, norm, p
        _watches.add(self)
        _install()

    def saw(self, covered: set[int], norm: torch.Tensor, norm_type: float) -> None:
        """A norm computed over the parameters ``covered`` (ids): kept if it covers some of
        ours and none that an earlier norm of this step already did (a second clip of the same
        parameters returns the already clipped norm)."""
        if not (covered & self._ids) or any(covered & done for done, _, _ in self._seen):
            return
        self._seen.append((covered, norm.detach(), float(norm_type)))

    def take(self) -> torch.Tensor | None:
        """The norm before clipping over everything clipped since the last call (norms of
        disjoint groups combined as one vector's), or None if nothing was clipped."""
        seen, self._seen = self._seen, []
        if not seen:
            return None
        norms = [n.float().to(seen[0][1].device) for _, n, _ in seen]
        p = seen[0][2]
        if len(norms) == 1 or any(q != p for _, _, q in seen):
            return norms[0]
        stacked = torch.stack(norms)
        return stacked.max() if p == float("inf") else stacked.pow(p).sum().pow(1.0 / p)

    def tensors(self) -> list[torch.Tensor]:
        """The watched parameters still alive."""
        return [p for p in (r() for r in self._refs) if p is not None]

    def close(self) -> None:
        _watches.discard(self)
        self._seen = []
        if not _watches:
            _uninstall()


def _install() -> None:
    for module, name in _CLIPS:
        _wrap(module, name, _watched_clip)
    for module, name in _TOTALS:
        _wrap(module, name, _watched_total)


def _uninstall() -> None:
    for module, name in _CLIPS + _TOTALS:
        original = _originals.pop((id(module), name), None)
        current = getattr(module, name, None)
        # wrapped again since: ours stays under the newer wrapper, inert without watches
        if original is not None and getattr(current, "__wrapped__", None) is original:
            setattr(module, name, original)


def _wrap(module: types.ModuleType, name: str, make: Callable) -> None:
    key = (id(module), name)
    if key in _originals:
        return
    original = getattr(module, name)
    _originals[key] = original
    setattr(module, name, functools.wraps(original)(make(original)))


def _watched_clip(original: Callable) -> Callable:
    def clip_grad_norm_(parameters: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if parameters is None and "parameters" in kwargs:
            parameters = kwargs.pop("parameters")
        params = _as_list(parameters) if _watches and not torch.compiler.is_compiling() else None
        if params is None:  # nothing watches, or an argument torch itself will reject
            return original(parameters, *args, **kwargs)
        norm = original(
            params if params or not _generator(parameters) else (p for p in ()), *args, **kwargs
        )
        _tell(lambda: {id(p) for p in params}, norm, lambda: _norm_type(args, kwargs, 1))
        return norm

    return clip_grad_norm_


def _watched_total(original: Callable) -> Callable:
    def get_total_norm(tensors: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if tensors is None and "tensors" in kwargs:
            tensors = kwargs.pop("tensors")
        grads = _as_list(tensors) if _watches and not torch.compiler.is_compiling() else None
        if grads is None:
            return original(tensors, *args, **kwargs)
        norm = original(grads, *args, **kwargs)
        _tell(lambda: _owners(grads), norm, lambda: _norm_type(args, kwargs, 0))
        return norm

    return get_total_norm


def _tell(covered: Callable[[], set[int]], norm: Any, norm_type: Callable[[], float]) -> None:
    """Hand ``norm`` to the open watches; a failure here never reaches the training loop."""
    try:
        if not isinstance(norm, torch.Tensor) or norm.numel() != 1:
            return
        ids = covered()
        for watch in list(_watches):
            watch.saw(ids, norm, norm_type())
    except Exception:  # noqa: BLE001 - a measurement never breaks the user's clipping
        pass


def _owners(grads: list[Any]) -> set[int]:
    """The ids of watched parameters whose current gradient is one of ``grads`` (a norm over
    anything else, weights or activations, is not a gradient norm of ours)."""
    wanted = {id(g) for g in grads}
    owners = set()
    for watch in list(_watches):
        for p in watch.tensors():
            if p.grad is not None and id(p.grad) in wanted:
                owners.add(id(p))
    return owners if len(owners) == len(wanted) else set()


def _as_list(parameters: Any) -> list[Any] | None:
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    try:
        return list(parameters)
    except TypeError:
        return None


def _generator(parameters: Any) -> bool:
    return isinstance(parameters, types.GeneratorType)


def _norm_type(args: tuple, kwargs: dict, at: int) -> float:
    """``norm_type`` as the call received it, by name or at position ``at`` after the first
    argument (``clip_grad_norm_(parameters, max_norm, norm_type)``: 1; ``get_total_norm(
    tensors, norm_type)``: 0); 2 by default."""
    value = kwargs.get("norm_type", args[at] if len(args) > at else 2.0)
    return float(value)
