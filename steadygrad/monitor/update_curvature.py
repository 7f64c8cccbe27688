"""Is the step size above the stability limit? A measurement that needs no probe, no loss
function and no held batch: the loss's slope along the update, after the step against before it.

With ``u = w_{t+1} - w_t`` and the gradients ``g_t``, ``g_{t+1}`` of the two steps,
``r = (g_{t+1} . u) / (g_t . u)``. On a quadratic, ``g_{t+1} = g_t + H u``, so
``r = 1 + u^T H u / (g_t . u)``; for gradient descent (``u = -lr g``) that is ``1 - lr λ_u`` with
``λ_u = u^T H u / |u|^2`` the curvature along the step, and the step is stable along its own
direction while ``lr λ_u < 2``, i.e. ``r > -1``. The recorded ratio ``(1 - r) / 2`` is therefore
``λ_u / (2/lr)`` for GD: 1 at the edge of stability, above 1 beyond it (Cohen et al. 2021). For
any other optimizer it is the same test along the update it actually made (Adam's step is judged
against the curvature it meets, as its preconditioned sharpness would be).

The two gradients come from two batches, so one reading is noisy; the detector looks at several.
Measured on the first ``early`` steps (a learning rate far above the limit blows up in the first
few dozen), at every ``every``-th pair of steps, and at every step for ``every`` steps once the
smoothed loss climbs a fifth above its best (a run leaving its stable regime: the readings that
say whether the step size is why are needed then, not 25 steps later).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from steadygrad.core import Measurements, Record, Signal
from steadygrad.core.checks import non_negative_int, positive_int
from steadygrad.core.metrics import ADAPTIVE_UPDATE, DIRECTIONAL_SHARPNESS_RATIO, LOSS
from steadygrad.core.optimizer import PER_COORDINATE, optimizer_family
from steadygrad.monitor.tensor_groups import Parts


class UpdateCurvatureSignal(Signal):
    """``directional_sharpness_ratio``: the curvature along the last update against its
    stability limit, from two successive gradients (see the module docstring).

    Example:
        >>> signal = UpdateCurvatureSignal(every=25)   # built into the Monitor
    """

    metrics = (DIRECTIONAL_SHARPNESS_RATIO,)

    def __init__(self, every: int = 25, early: int = 12) -> None:
        super().__init__(every=positive_int("every", every))
        self.early = non_negative_int("early", early)
        self._start: tuple[list[int], Parts] | None = None  # w_t, before step t
        self._step: tuple[list[int], Parts, torch.Tensor] | None = None  # u, g_t . u
        self._ratio: torch.Tensor | None = None
        self._smooth = math.nan  # the loss, smoothed over ~10 recorded steps
        self._best = math.inf
        self._alert_until = -1
        self._adaptive = False

    def due(self, step: int) -> bool:
        return True  # cheap: it only hands on what the optimizer hooks measured

    def _grads(self) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
        stats = self.monitor.parameters.stats
        index, grads = stats.gradients(dense=True)  # FSDP2: this rank's shards
        return index, stats.weights(index), grads

    def _dot(self, index: list[int], a: list[torch.Tensor], b: Parts) -> torch.Tensor:
        """sum_i <a_i, b_i> over whole tensors (under FSDP2, summed over the ranks' shards)."""
        stats = self.monitor.parameters.stats
        dots = stats.groups_for(index).dots(a, b)
        return (dots if stats.shards is None else stats.shards.counts(dots, index)).sum()

    def before_update(self) -> None:
        step = self.monitor.step_count
        starting = step < self.early or step % self.every == 0 or step < self._alert_until
        if self._step is None and not starting:
            return  # most steps: nothing to read
        index, weights, grads = self._grads()
        with torch.no_grad():
            if self._step is not None and self._step[0] == index:
                _, update, slope_then = self._step
                slope_now = self._dot(index, grads, update)
                self._ratio = (1 - slope_now / slope_then) / 2
            self._step = None
            if index and starting:
                groups = self.monitor.parameters.stats.groups_for(index)
                self._start = (index, groups.copy(weights))  # a copy of w_t

    def after_update(self) -> None:
        start, self._start = self._start, None
        if start is None:
            return
        index, weights, grads = self._grads()  # w_{t+1}, and still g_t
        if index != start[0]:
            return
        with torch.no_grad():
            groups, update = self.monitor.parameters.stats.groups_for(index), start[1]
            groups.subtract_(update, weights)
            groups.negate_(update)  # u = w_{t+1} - w_t, in the copy's memory
            self._step = (index, update, self._dot(index, grads, update))

    def measure(self, step: int, out: Measurements) -> None:
        if self._ratio is not None:
            out.put(DIRECTIONAL_SHARPNESS_RATIO.name, self._ratio)
            self._ratio = None

    def attach(self, monitor: Any) -> None:
        super().attach(monitor)
        self.optimizer_replaced()

    def optimizer_replaced(self) -> None:
        self._adaptive = optimizer_family(self.monitor.optimizer) in PER_COORDINATE

    def finishes_late(self, step: int, begins_next: bool) -> bool:
        return True  # finish reads the loss alone (an alert a step late starts a step late)

    def finish(self, record: Record, raw: Sequence[float]) -> None:
        """Watch the loss: measure every step for a while once it climbs above its best."""
        if self._adaptive and DIRECTIONAL_SHARPNESS_RATIO.name in record.values:
            record.meta[ADAPTIVE_UPDATE] = True
        loss = record.values.get(LOSS.name)
        if loss is None or not math.isfinite(loss):
            return
        self._smooth = loss if math.isnan(self._smooth) else 0.9 * self._smooth + 0.1 * loss
        self._best = min(self._best, self._smooth)
        if self._smooth - self._best > 0.2 * abs(self._best):
            self._alert_until = record.step + 1 + self.every
