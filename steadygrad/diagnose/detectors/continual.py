"""Continual-learning detectors: read the task index and per-task accuracies that
:class:`~steadygrad.continual.ContinualEvaluation` records."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from steadygrad.continual.metrics import TASK, TASK_ACCURACY, GapTracker
from steadygrad.core.finding import Finding, FindingKind
from steadygrad.core.severity import Severity
from steadygrad.diagnose.detectors.base import Detector

if TYPE_CHECKING:
    from steadygrad.core.record import Record

STABILITY_GAP_FOUND = FindingKind(
    "stability_gap",
    "an earlier task's accuracy fell sharply right after a task switch, then partly recovered",
    Severity.WARNING,
)


class StabilityGap(Detector):
    """Fires once per (earlier task, task switch) when that task's accuracy fell by at least
    ``min_drop`` below its level just before the switch and has since won back at least
    ``recovery`` of the drop: the transient forgetting De Lange et al. 2023 call the stability
    gap. Evidence: the task, the switch step, the size of the drop, the steps to its lowest
    point and the length (steps from the switch until half the drop was won back). Silent on
    runs without ``task`` / ``task_accuracy/<task>``.

    Example:
        >>> from steadygrad.core.record import Record
        >>> det = StabilityGap(min_drop=0.2)
        >>> _ = det.update(Record(0, {"task": 0, "task_accuracy/a": 0.9}))
        >>> _ = det.update(Record(5, {"task": 1, "task_accuracy/a": 0.3}))
        >>> det.update(Record(10, {"task": 1, "task_accuracy/a": 0.8}))[0].kind
        'stability_gap'
    """

    kind = STABILITY_GAP_FOUND
    reads = (TASK, TASK_ACCURACY)
    emits = (STABILITY_GAP_FOUND,)

    def __init__(self, min_drop: float = 0.1, recovery: float = 0.5) -> None:
        self.tracker = GapTracker(min_drop=min_drop, recovery=recovery)

    def update(self, record: Record) -> list[Finding]:
        task = record.values.get(TASK.name)
        if task is None or not math.isfinite(task):
            return []
        accuracies = record.family(TASK_ACCURACY.name)
        return [
            Finding(STABILITY_GAP_FOUND, record.step, gap.task, gap.as_evidence())
            for gap in self.tracker.update(record.step, task, accuracies)
        ]
