"""Task switches: the detectors whose baselines are one task's start again at each switch.

A run trained on a sequence of tasks (continual learning) changes its objective at each switch:
the loss and the gradient norm step to the new task's level there, which a detector reading
them against the run's past takes for a spike, a climb or a gradient growing without bound.
The record's ``task`` (:class:`steadygrad.continual.ContinualEvaluation` records it) says when
the task changed, or the loop says so itself (:meth:`steadygrad.Monitor.objective_changed`: a
curriculum stage, a new loss term); detectors that declare ``per_task`` are put back to their
first state then, so that what they judge is within one objective. The stability-gap
detector, which compares tasks, is not one of them. An objective that changes gradually (a
loss term's weight ramped in, a KL warm-up, a curriculum that lengthens its sequences) moves the
loss's and the gradient's levels all along its ramp: the loop says so with ``over=``, and the
detectors start again where the ramp ends, their findings on those levels told at info until
then. A batch whose shape changes and holds (a sequence-length or batch-size schedule, read from
``input_size``: :class:`steadygrad.monitor.input_size.InputSizeSignal`) moves a summed loss and
the gradient's noise to new levels at a stroke: the detectors start again there too (see
:class:`InputShape`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import replace

from steadygrad.continual.metrics import TASK
from steadygrad.core import Finding, Record, Severity
from steadygrad.core.metrics import INPUT_SIZE, OBJECTIVE_RAMP
from steadygrad.diagnose.detectors import Detector
from steadygrad.diagnose.detectors.trends import GRADIENT_GROWTH, LOSS_DIVERGENCE, WRECKED_WEIGHTS

# The findings on a level that a ramped objective moves on its own: a loss above its best, a
# gradient above its best. A blow-up is no ramp's doing: one loss far beyond the run's scatter,
# then higher still (evidence "loss", where a running median's climb has "loss_median"), or a
# gradient that wrecked the weights.
LEVELS = (LOSS_DIVERGENCE, GRADIENT_GROWTH)
BLOW_UPS = ("loss", WRECKED_WEIGHTS)


# A batch of one size this many records in a row (a fixed shape: no bucketing or dynamic padding,
# whose sizes vary from batch to batch), then of another this many: the batch changed for good.
# An epoch's last, partial batch is one record of another size, and changes nothing.
SHAPE_SETTLED, SHAPE_HELD = 20, 3


class InputShape:
    """Follows the size of the batch (``input_size``) and tells when a settled size changed to
    another that held (``SHAPE_SETTLED``, ``SHAPE_HELD``).

    Example:
        >>> shape = InputShape()
        >>> [shape.changed(512.0) for _ in range(20)][-1] is None
        True
        >>> [shape.changed(1024.0) for _ in range(3)]
        [None, None, (512.0, 1024.0)]
    """

    def __init__(self) -> None:
        self.size: float | None = None  # the size held, and for how many records
        self.held = 0
        self._new: float | None = None  # another size read since, and how many times in a row
        self._new_held = 0

    def changed(self, size: float) -> tuple[float, float] | None:
        """Read one record's size; (the settled size, the new one) when the change held."""
        if size == self.size or self.size is None:
            self.size, self.held, self._new = size, self.held + 1, None
            return None
        self._new_held = self._new_held + 1 if size == self._new else 1
        self._new = size
        if self._new_held < SHAPE_HELD:
            return None
        before, settled = self.size, self.held >= SHAPE_SETTLED
        self.size, self.held, self._new = size, self._new_held, None
        return (before, size) if settled else None


class TaskRestarts:
    """Keeps a first-state copy of each ``per_task`` detector and puts it back at a task switch.

    Example:
        >>> from steadygrad.diagnose.detectors import default_detectors
        >>> detectors = default_detectors()
        >>> restarts = TaskRestarts(detectors)
        >>> restarts.follow(detectors, Record(0, {"task": 0.0}))
        False
        >>> restarts.follow(detectors, Record(150, {"task": 1.0}))
        True
    """

    def __init__(self, detectors: Sequence[Detector]) -> None:
        self._first = [self._copy(d) if d.per_task else None for d in detectors]
        self._task: float | None = None
        self._due: int | None = None  # the step a new objective was said to start at
        self._ramp: tuple[int, int, str] | None = None  # (from, to, why) of a gradual change
        self._shape = InputShape()
        self.resized: tuple[float, float] | None = None  # the batch's change at this record

    def restart_at(self, step: int, over: int = 0, why: str = "") -> None:
        """Start the per-task detectors again at the first record of ``step + over`` or later
        (a new objective the loop announced: :meth:`steadygrad.Monitor.objective_changed`; a
        record finished late, on the GPU, may still be the old objective's). With ``over``, the
        objective changes gradually from ``step`` on: the findings on the loss's and the
        gradient's levels at records before ``step + over`` are told at info (see
        :meth:`soften`)."""
        self._due = step + over
        self._ramp = (step, step + over, why) if over else None

    def soften(self, findings: list[Finding], step: int) -> list[Finding]:
        """``findings`` of a record at ``step``, those on a level told at info while a ramp the
        loop announced covers ``step`` (evidence ``objective_ramp``: its reason); a blow-up
        stays as it was."""
        ramp = self._ramp
        if ramp is None or not ramp[0] <= step < ramp[1]:
            return findings
        return [
            replace(
                f,
                severity=Severity.INFO,
                evidence={**f.evidence, OBJECTIVE_RAMP: ramp[2] or True},
            )
            if f.kind in LEVELS
            and not any(key in f.evidence for key in BLOW_UPS)
            and f.severity != Severity.INFO
            else f
            for f in findings
        ]

    def follow(self, detectors: list[Detector], record: Record) -> bool:
        """Put the per-task ``detectors`` back to their first state when ``record`` starts a new
        task, a restart is due, or the batch's new shape held (``resized``: its sizes); whether
        it did."""
        task = record.values.get(TASK.name)
        switched = self._due is not None and record.step >= self._due
        if switched:
            self._due = self._ramp = None
        size = record.values.get(INPUT_SIZE.name)
        self.resized = None if size is None else self._shape.changed(size)
        switched = switched or self.resized is not None
        if task is not None and math.isfinite(task):
            switched = switched or (self._task is not None and task != self._task)
            self._task = task
        if switched:
            for i, first in enumerate(self._first):
                if first is not None:
                    detectors[i] = copy.deepcopy(first)
        return switched

    @staticmethod
    def _copy(detector: Detector) -> Detector | None:
        try:
            return copy.deepcopy(detector)
        except Exception as exc:  # noqa: BLE001 - a user's detector: it keeps its state instead
            warnings.warn(
                f"steadygrad: {type(detector).__name__} cannot be copied ({exc!r}): it will not "
                "start again at task switches",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
