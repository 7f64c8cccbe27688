"""Signals on the output logits: log-partition drift, logit scale, and softmax collapse.

- Output-logit divergence (Wortsman et al. 2023): the log-partition ``log Z = logsumexp(y)``
  drifts far from 0 (logits become very negative) late in training without weight decay; the
  z-loss pulls it back.
- Softmax collapse (Prieto et al. 2025): in float32 the softmax of a confidently right row
  rounds the correct class to exactly 1, so its gradient is exactly 0 and learning stalls.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from steadygrad.core.metrics import (
    LOGIT_LSE_MEAN,
    OUTPUT_LOGIT_MAX,
    OUTPUT_LOGIT_RMS,
    OUTPUT_MODULE,
    SOFTMAX_COLLAPSE,
)
from steadygrad.core.signal import Signal, Value

if TYPE_CHECKING:
    from steadygrad.monitor.monitor import Monitor


def find_output_module(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """The module named ``name``, or the last ``nn.Linear`` of ``model`` when ``name`` is None.

    Example:
        >>> find_output_module(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4)))[0]
        '2'
    """
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            raise ValueError(f"output module {name!r} not found in the model")
        return name, modules[name]
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no nn.Linear; name the output module explicitly")
    return linears[-1]


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


# A logit at a constant this low, shared by several entries (-1e4, -1e9, finfo.min, -inf), is
# a mask fill: a candidate ruled out by the code (padding, a causal or antecedent mask), not one
# the model learnt to rule out. At or below FILL_ALONE_BELOW one entry alone is one too (a
# batch where a single action is masked): no learnt logit sits 1e8 below the others.
MASK_FILL_BELOW = -1e3
FILL_ALONE_BELOW = -1e8


@torch.no_grad()
def live_logits(logits: torch.Tensor) -> torch.Tensor:
    """Which entries of ``logits`` are candidates: not a mask fill (entries within half of the
    tensor's minimum, when it is ``<= MASK_FILL_BELOW`` and held by several entries or
    ``<= FILL_ALONE_BELOW``: a fill that went through ``log_softmax`` differs by row in its
    last bits; or ``-inf``). On the device: no host read.

    Example:
        >>> live_logits(torch.tensor([[2.0, -1e4], [3.0, -1e4]])).tolist()
        [[True, False], [True, False]]
        >>> live_logits(torch.tensor([[2.0, -1e9], [3.0, 1.0]])).tolist()
        [[True, False], [True, True]]
    """
    low = logits.amin()
    near_low = logits <= low * 0.5
    held = (near_low.sum() >= 2) | (low <= FILL_ALONE_BELOW)
    fill = near_low & (low <= MASK_FILL_BELOW) & held
    return ~(fill | torch.isneginf(logits))


@torch.no_grad()
def choice_rows(logits: torch.Tensor) -> torch.Tensor:
    """Per row of ``logits`` (``(..., C)``, flattened): does it hold two candidates or more? A
    row whose every other class is masked out (a first mention with no antecedent, left with
    "none") is one-hot by construction: it cannot collapse.

    Example:
        >>> choice_rows(torch.tensor([[0.0, -1e4], [1.0, -1e4], [1.0, 2.0]])).tolist()
        [False, False, True]
    """
    z = logits.detach().reshape(-1, logits.shape[-1])
    return live_logits(z).sum(dim=-1) >= 2


@torch.no_grad()
def softmax_collapse_mask(
    logits: torch.Tensor, targets: torch.Tensor | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Per row: is the softmax (computed in ``dtype``) exactly one-hot on the target class?

    A row is collapsed when ``sum_k exp(z_k - max z)`` evaluates to exactly 1 in ``dtype`` (the
    authors' test), the target holds the largest logit, and the row had a choice (see
    :func:`choice_rows`); with ``targets=None``, the largest logit's class stands in for the
    target. ``logits`` is ``(..., C)``; the result is flattened.

    Example:
        >>> softmax_collapse_mask(torch.tensor([[30.0, 0.0], [10.0, 0.0]]))
        tensor([ True, False])
    """
    z = logits.detach().reshape(-1, logits.shape[-1]).to(dtype)
    top = z.amax(dim=-1, keepdim=True)
    collapsed = (torch.exp(z - top).sum(dim=-1) == 1) & choice_rows(z)
    if targets is not None:
        targets = targets.reshape(-1)
        if targets.shape[0] != z.shape[0]:
            raise ValueError(f"targets has {targets.shape[0]} entries for {z.shape[0]} logit rows")
        collapsed &= z.gather(1, targets[:, None].to(z.device)).squeeze(1) == top.squeeze(1)
    return collapsed


@torch.no_grad()
def softmax_collapse_fraction(
    logits: torch.Tensor, targets: torch.Tensor | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The fraction of the rows with a choice (see :func:`choice_rows`) in softmax collapse
    (see :func:`softmax_collapse_mask`), 0-d tensor; 0 when no row had a choice.

    Example:
        >>> float(softmax_collapse_fraction(torch.tensor([[30.0, 0.0], [10.0, 0.0]])))
        0.5
    """
    collapsed = softmax_collapse_mask(logits, targets, dtype).float().sum()
    return collapsed / choice_rows(logits).float().sum().clamp(min=1.0)


class OutputHook(Signal):
    """Shared plumbing: a forward hook on the output module while the signal is due.

    Without a ``module`` the head is a guess (the last ``nn.Linear``); the Monitor then lets its
    cross-entropy signal, which sees the logits the loss takes, speak for the model once it has
    seen a call (:meth:`defer_to`). An output one unit wide is a regression head, not logits.
    """

    def __init__(self, every: int, module: str | None) -> None:
        super().__init__(every)
        self.module_name = module
        self.guesses_module = module is None
        self._module: nn.Module | None = None
        self._handle = None
        self._better: Any = None
        self._aside = False

    def defer_to(self, signal: Any) -> None:
        """Stand aside once ``signal`` (anything with a ``seen`` flag) has seen the output."""
        self._better = signal

    def due(self, step: int) -> bool:
        return not self._aside and super().due(step)

    def finish(self, record: Any, raw: Any) -> None:
        record.meta.setdefault(OUTPUT_MODULE, self.module_name)

    def finishes_late(self, step: int, begins_next: bool) -> bool:
        return True  # the module's name alone

    def attach(self, monitor: Monitor) -> None:
        super().attach(monitor)
        try:
            self.module_name, self._module = find_output_module(monitor.model, self.module_name)
        except ValueError:
            if not self.guesses_module:
                raise  # a module the user named and the model lacks: their mistake to hear of
            self._aside = True  # nothing to guess the head from (no nn.Linear): stays off

    def applies(self) -> bool | str:
        if self._module is None:
            return "no nn.Linear to take for the head: pass module='<the head>'"
        return True

    def begin(self, step: int) -> None:
        self._remove()
        self._reset()
        if self._module is not None:
            hook = torch.compiler.disable(self._hook)  # see monitor.intercept
            self._handle = self._module.register_forward_hook(hook)

    def end(self, step: int) -> None:
        self._remove()
        if self._better is not None and self._better.seen:
            self._aside = True  # decided between steps, so a begun step is always ended

    def detach(self) -> None:
        self._remove()

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: object, output: object) -> None:
        logits = _first_tensor(output)
        if logits is not None and logits.dim() >= 1 and logits.shape[-1] > 1:
            self._observe(logits.detach())

    def _reset(self) -> None:
        raise NotImplementedError

    def _observe(self, logits: torch.Tensor) -> None:
        raise NotImplementedError


class OutputLogitSignal(OutputHook):
    """``logit_lse_mean``, ``output_logit_max``, ``output_logit_rms`` of the output module.

    ``logit_lse_mean`` is the mean over rows of ``logsumexp`` of the logits (the log-partition;
    z-loss drives it to 0); ``output_logit_max`` the largest ``|logit|``; ``output_logit_rms``
    the root mean square logit. ``module`` names the output module (default: the last
    ``nn.Linear``). All forward calls of the module in a due step are pooled.

    Example:
        >>> signal = OutputLogitSignal(module="lm_head", every=10)
    """

    metrics = (LOGIT_LSE_MEAN, OUTPUT_LOGIT_MAX, OUTPUT_LOGIT_RMS)

    def __init__(self, module: str | None = None, every: int = 1) -> None:
        super().__init__(every, module)
        self._reset()

    def _reset(self) -> None:
        self._lse_sum = self._sq_sum = self._max = None
        self._rows = self._count = 0

    def _observe(self, logits: torch.Tensor) -> None:
        z = logits.float().reshape(-1, logits.shape[-1])
        lse_sum = torch.logsumexp(z, dim=-1).sum()
        sq_sum, top = z.pow(2).sum(), z.abs().amax()
        if self._lse_sum is None:
            self._lse_sum, self._sq_sum, self._max = lse_sum, sq_sum, top
        else:
            self._lse_sum = self._lse_sum + lse_sum
            self._sq_sum = self._sq_sum + sq_sum
            self._max = torch.maximum(self._max, top)
        self._rows += z.shape[0]
        self._count += z.numel()

    def collect(self, step: int) -> Mapping[str, Value]:
        self._remove()
        if self._lse_sum is None:
            return {}
        values = {
            LOGIT_LSE_MEAN.name: self._lse_sum / self._rows,
            OUTPUT_LOGIT_MAX.name: self._max,
            OUTPUT_LOGIT_RMS.name: (self._sq_sum / self._count).sqrt(),
        }
        self._reset()
        return values


class SoftmaxCollapseSignal(OutputHook):
    """``softmax_collapse``: the fraction of output rows whose float32 softmax is one-hot on
    the correct class (so the correct class gets exactly zero gradient).

    Give the step's targets with :meth:`set_targets` (any time before the step's values are
    collected; they are matched to the output rows in order and cleared after each collection).
    Without targets the largest logit's class stands in for the correct one, which counts
    confidently wrong rows too.

    Example:
        >>> signal = SoftmaxCollapseSignal(every=10)
        >>> # in the loop, before or after the forward pass: signal.set_targets(y)
    """

    metrics = (SOFTMAX_COLLAPSE,)

    def __init__(
        self, module: str | None = None, every: int = 1, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(every, module)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self._targets: torch.Tensor | None = None
        self._warned = False
        self._soft: bool | None = None  # float targets are class probabilities (soft labels)
        self._reset()

    def set_targets(self, targets: torch.Tensor) -> None:
        """The correct classes for this step's output rows: class indices (any shape;
        flattened), or class probabilities (soft labels, mixup: ``(..., classes)``, whose
        largest entry is taken). Called in the training loop, so a wrong argument warns once
        and is ignored rather than stopping the run; float targets that are not class
        probabilities (a regression) turn the signal off: there is no softmax to collapse."""
        if not isinstance(targets, torch.Tensor):
            self._warn(f"set_targets takes a tensor, got {type(targets).__name__}: ignored")
            return
        self._targets = targets.detach()

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"steadygrad: SoftmaxCollapseSignal: {message}", RuntimeWarning, 2)

    def _classes(self, targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """Class indices, one per logit row, from what :meth:`set_targets` was given; None
        (and the signal turned off) for float targets that are not distributions over the
        classes: a regression's."""
        if not targets.dtype.is_floating_point:
            return targets.reshape(-1)
        classes = logits.shape[-1]
        if self._soft is None:  # decided once, on the first float targets (one host read)
            rows = targets.reshape(-1, classes) if targets.shape[-1:] == (classes,) else None
            self._soft = rows is not None and bool(
                (rows >= 0).all() and torch.allclose(rows.sum(-1), rows.new_ones(()), atol=1e-3)
            )
        if self._soft:
            return targets.reshape(-1, classes).argmax(-1)
        self._aside = True
        self._warn(
            f"targets of shape {tuple(targets.shape)} are floats, not class indices or "
            f"probabilities over {classes} classes: a regression has no softmax to collapse, "
            "so this signal stays off"
        )
        return None

    def _reset(self) -> None:
        self._logits: list[torch.Tensor] = []

    def _observe(self, logits: torch.Tensor) -> None:
        self._logits.append(logits.reshape(-1, logits.shape[-1]))

    def collect(self, step: int) -> Mapping[str, Value]:
        self._remove()
        targets, self._targets = self._targets, None
        if not self._logits:
            return {}
        logits = torch.cat(self._logits)
        self._reset()
        if targets is not None and (targets := self._classes(targets, logits)) is None:
            return {}
        if targets is not None and targets.shape[0] != logits.shape[0]:
            # e.g. the output module also ran on an evaluation batch: keep the training rows
            logits = logits[: targets.shape[0]]
        return {SOFTMAX_COLLAPSE.name: softmax_collapse_fraction(logits, targets, self.dtype)}
