"""The thing whose curvature is probed: a scalar loss as a function of a dict of parameters.

Both public forms reduce to an :class:`Objective`:

* module form: ``loss_fn(model, batch)`` with the model's own parameters (all that require grad,
  or a subset), evaluated through ``torch.func.functional_call`` so the model's parameters,
  ``.grad`` and autograd state are never touched;
* functional form: ``f(params, batch)`` with an explicit ``{name: tensor}`` dict, for torch.func
  users.

While an objective is open (``with objective:``) the model is put in a probe-safe state: dropout
off unless asked for, BatchNorm in training mode stops updating its running statistics, and on
exit every module's train/eval flag and every buffer is restored exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from steadygrad.core.checks import module as check_module

LossFn = Callable[[nn.Module, Any], torch.Tensor]
FunctionalLoss = Callable[[dict[str, torch.Tensor], Any], torch.Tensor]


@dataclass(frozen=True)
class OutputLoss:
    """A loss split into the model's outputs and a loss on those outputs (needed for the GGN).

    Calling it as ``loss(model, batch)`` gives ``output_loss_fn(forward_fn(model, batch), batch)``,
    so the same object serves as ``loss_fn`` for the Hessian and for the Gauss-Newton matrix.

    Example:
        >>> import torch.nn.functional as F
        >>> loss = OutputLoss(lambda m, b: m(b[0]), lambda out, b: F.cross_entropy(out, b[1]))
    """

    forward_fn: Callable[[nn.Module, Any], torch.Tensor]
    output_loss_fn: Callable[[torch.Tensor, Any], torch.Tensor]

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.output_loss_fn(self.forward_fn(model, batch), batch)


class _LossModule(nn.Module):
    """Wraps ``loss_fn(model, batch)`` as a module so functional_call can swap its parameters."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> Any:
        return self.fn(self.model, batch)


def check_finite_batch(batch: Any) -> None:
    """Raise ValueError if any floating-point tensor inside ``batch`` holds NaN or Inf."""
    for tensor in _tensors(batch):
        if tensor.is_floating_point() or tensor.is_complex():
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError("batch contains non-finite values (NaN or Inf)")


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


class Objective:
    """A scalar loss of a parameter dict, with the model kept in a probe-safe state while open.

    Use :meth:`from_module` or :meth:`from_function`; estimators accept either public form and
    build this for you.
    """

    def __init__(
        self,
        fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        params: dict[str, torch.Tensor],
        model: nn.Module | None = None,
        dropout: bool = False,
        forward_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
        output_loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if not params:
            raise ValueError("params is empty: there is nothing to differentiate")
        self.fn = fn
        self.params = params
        self.model = model
        self.dropout = dropout
        self.forward_fn = forward_fn
        self.output_loss_fn = output_loss_fn
        self.names = tuple(params)
        self.shapes = tuple(p.shape for p in params.values())
        self.sizes = tuple(p.numel() for p in params.values())
        self.numel = sum(self.sizes)
        first = next(iter(params.values()))
        self.dtype = first.dtype
        self.device = first.device
        self._stack = contextlib.ExitStack()
        self._depth = 0

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        loss_fn: LossFn,
        batch: Any,
        params: Any = None,
        dropout: bool = False,
    ) -> Objective:
        check_module("model", model)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        check_finite_batch(batch)
        selected = select_parameters(model, params)
        wrapper = _LossModule(model, loss_fn)

        def fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(wrapper, {"model." + k: v for k, v in p.items()}, (batch,))

        forward_fn = output_loss_fn = None
        if isinstance(loss_fn, OutputLoss):
            fwd = _LossModule(model, loss_fn.forward_fn)

            def forward_fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
                return functional_call(fwd, {"model." + k: v for k, v in p.items()}, (batch,))

            def output_loss_fn(out: torch.Tensor) -> torch.Tensor:
                return loss_fn.output_loss_fn(out, batch)

        return cls(fn, selected, model, dropout, forward_fn, output_loss_fn)

    @classmethod
    def from_function(
        cls, f: FunctionalLoss, params: Mapping[str, torch.Tensor], batch: Any, subset: Any = None
    ) -> Objective:
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        if not isinstance(params, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in params.values()
        ):
            raise TypeError("params must be a mapping of names to tensors")
        check_finite_batch(batch)
        names = list(params) if subset is None else [_name_check(params, n) for n in subset]
        fixed = {k: v.detach() for k, v in params.items() if k not in names}
        selected = {k: params[k].detach() for k in names}

        def fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return f({**fixed, **p}, batch)

        return cls(fn, selected)

    # ----------------------------------------------------------------- state guard
    def __enter__(self) -> Objective:
        if self._depth == 0 and self.model is not None:
            self._stack.enter_context(_probe_state(self.model, self.dropout))
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._stack.close()

    # ----------------------------------------------------------------- vectors
    def flatten(self, tensors: Iterable[torch.Tensor | None]) -> torch.Tensor:
        parts = [
            torch.zeros(n, dtype=self.dtype, device=self.device) if t is None else t.reshape(-1)
            for t, n in zip(tensors, self.sizes, strict=True)
        ]
        return torch.cat(parts)

    def unflatten(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split a flat vector (or a batch of them, shape ``(m, n)``) into parameter shapes."""
        lead = flat.shape[:-1]
        chunks = torch.split(flat, self.sizes, dim=-1)
        return tuple(c.reshape(*lead, *s) for c, s in zip(chunks, self.shapes, strict=True))

    def block_slices(self, blocks: Mapping[str, list[str]]) -> dict[str, list[slice]]:
        offsets, start = {}, 0
        for name, size in zip(self.names, self.sizes, strict=True):
            offsets[name] = slice(start, start + size)
            start += size
        return {b: [offsets[n] for n in names] for b, names in blocks.items()}

    def leaves(self) -> dict[str, torch.Tensor]:
        """Fresh autograd leaves sharing storage with the parameters (their .grad is untouched)."""
        return {k: v.detach().requires_grad_(True) for k, v in self.params.items()}

    def primals(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.params.items()}


def _name_check(params: Mapping[str, torch.Tensor], name: str) -> str:
    if name not in params:
        raise ValueError(f"params subset names {name!r}, which is not in params")
    return name


def select_parameters(model: nn.Module, params: Any = None) -> dict[str, torch.Tensor]:
    """The probed parameters as ``{name: tensor}``.

    ``params`` may be None (every parameter that requires grad), a submodule of ``model``, an
    iterable of parameter names (prefixes select whole modules) or of parameter tensors.
    """
    named = dict(model.named_parameters())
    if params is None:
        selected = {k: p for k, p in named.items() if p.requires_grad}
    elif isinstance(params, nn.Module):
        ids = {id(p) for p in params.parameters()}
        selected = {k: p for k, p in named.items() if id(p) in ids}
        if not selected:
            raise ValueError("params is a module that holds none of model's parameters")
    else:
        items = list(params)
        selected = {}
        for item in items:
            if isinstance(item, str):
                hits = {k: p for k, p in named.items() if k == item or k.startswith(item + ".")}
                if not hits:
                    raise ValueError(f"params names {item!r}, which matches no parameter of model")
                selected.update(hits)
            elif isinstance(item, torch.Tensor):
                hit = [k for k, p in named.items() if p is item]
                if not hit:
                    raise ValueError("params holds a tensor that is not a parameter of model")
                selected[hit[0]] = item
            else:
                raise TypeError(
                    f"params must hold parameter names or tensors, got {type(item).__name__}"
                )
        selected = {k: selected[k] for k in named if k in selected}
    if not selected:
        raise ValueError("model has no parameters that require grad")
    return selected


_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_NORM = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def _probe_state(model: nn.Module, dropout: bool):
    """Dropout off (unless asked), BatchNorm stats frozen; modes and buffers restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    tracking = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, _NORM)]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    stack = contextlib.ExitStack()
    try:
        # Fused attention kernels have no second derivative (nor forward AD) on some backends;
        # the math kernel is made of differentiable ops.
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        for m in model.modules():
            if isinstance(m, _DROPOUT) and not dropout:
                m.eval()
            if isinstance(m, _NORM) and m.training:
                # In training mode BatchNorm normalises with batch statistics; passing no running
                # buffers keeps that and stops the in-place running-stat update.
                m.track_running_stats = False
        yield
    finally:
        stack.close()
        for m, flag in modes:
            m.training = flag
        for m, flag in tracking:
            m.track_running_stats = flag
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
