"""What continual evaluation records, declared once, and the scores computed from it.

De Lange, van de Ven & Tuytelaars 2023 ("Continual evaluation for lifelong learning:
identifying the stability gap", ICLR) evaluate earlier tasks at every iteration rather than at
task boundaries. Their worst-case scores, for the ``k``-th task being trained:

- min-ACC: the mean, over the earlier tasks, of the lowest accuracy each has had since its own
  training ended;
- WC-ACC: ``(1/k) acc(current task) + (1 - 1/k) min-ACC``.

A *stability gap* is the transient part of that drop: an earlier task's accuracy falls sharply
right after a task switch and then partly recovers while the new task is trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from steadygrad.core.checks import finite_float
from steadygrad.core.metric import Metric

TASK = Metric(
    "task",
    "index of the task being trained (its order of first appearance); a change is a task switch",
    unit="index",
    panel="task",
)
TASK_ACCURACY = Metric(
    "task_accuracy",
    "accuracy on a fixed held-out subset of one task",
    unit="fraction",
    per="task",
    panel="continual",
)
TASK_LOSS = Metric(
    "task_loss",
    "mean loss on a fixed held-out subset of one task",
    per="task",
    panel="continual_loss",
)
MIN_ACCURACY = Metric(
    "min_accuracy",
    "min-ACC: mean over earlier tasks of the lowest accuracy since each one's training ended",
    unit="fraction",
    panel="continual",
)
WORST_CASE_ACCURACY = Metric(
    "worst_case_accuracy",
    "WC-ACC: (1/k) acc(current task) + (1 - 1/k) min-ACC",
    unit="fraction",
    panel="continual",
)
STABILITY_GAP = Metric(
    "stability_gap",
    "an earlier task's accuracy at the last task switch minus its accuracy now (> 0: below)",
    unit="fraction",
    per="task",
    panel="stability_gap",
)
CONTINUAL_METRICS = (
    TASK,
    TASK_ACCURACY,
    TASK_LOSS,
    MIN_ACCURACY,
    WORST_CASE_ACCURACY,
    STABILITY_GAP,
)


class WorstCaseScores:
    """Streaming min-ACC and WC-ACC over evaluations (De Lange et al. 2023, section 3).

    Feed every evaluation in order: the task being trained and the accuracy of each task
    evaluated. A task's minimum starts once another task is being trained after it.

    Example:
        >>> scores = WorstCaseScores()
        >>> scores.update("a", {"a": 0.9})
        >>> scores.update("b", {"a": 0.4, "b": 0.5})
        >>> scores.update("b", {"a": 0.7, "b": 0.9})
        >>> scores.min_accuracy(), scores.worst_case_accuracy("b", 0.9)
        (0.4, 0.65)
    """

    def __init__(self) -> None:
        self.minimum: dict[str, float] = {}  # earlier tasks only
        self.trained: list[str] = []  # tasks in the order they were first trained

    def update(self, current: str, accuracies: Mapping[str, float]) -> None:
        if current not in self.trained:
            self.trained.append(current)
        for task, acc in accuracies.items():
            if task != current and task in self.trained and math.isfinite(acc):
                self.minimum[task] = min(self.minimum.get(task, acc), acc)

    def min_accuracy(self) -> float:
        """min-ACC over the earlier tasks (NaN while there are none)."""
        if not self.minimum:
            return math.nan
        return math.fsum(self.minimum.values()) / len(self.minimum)

    def worst_case_accuracy(self, current: str, current_accuracy: float) -> float:
        """WC-ACC with ``k`` the number of tasks trained so far, ``current`` among them."""
        k = len(self.trained)
        if k <= 1 or not self.minimum:
            return current_accuracy
        return current_accuracy / k + (1.0 - 1.0 / k) * self.min_accuracy()


@dataclass
class Gap:
    """One earlier task's accuracy across one task switch.

    ``size``: accuracy just before the switch minus the lowest accuracy after it;
    ``steps_to_minimum``: steps from the switch to that lowest point; ``length``: steps from the
    switch until half of the drop was won back (None while it has not been).
    """

    task: str
    switch_step: int
    before: float
    minimum: float
    minimum_step: int
    last: float
    recovered_step: int | None = None

    @property
    def size(self) -> float:
        return self.before - self.minimum

    @property
    def steps_to_minimum(self) -> int:
        return self.minimum_step - self.switch_step

    @property
    def length(self) -> int | None:
        return None if self.recovered_step is None else self.recovered_step - self.switch_step

    @property
    def recovered(self) -> float:
        """How much of the drop the last evaluation has won back (accuracy points)."""
        return self.last - self.minimum

    def as_evidence(self) -> dict:
        return {
            "task": self.task,
            "switch_step": self.switch_step,
            "accuracy_before": self.before,
            "minimum_accuracy": self.minimum,
            "size": self.size,
            "steps_to_minimum": self.steps_to_minimum,
            "length": self.length,
            "recovered": self.recovered,
        }


class GapTracker:
    """Follows every earlier task's accuracy after each task switch (streaming).

    A switch is a change of the task index; the earlier tasks are those evaluated before it.
    :meth:`update` returns the gaps that became *stability gaps* at this evaluation: a drop of at
    least ``min_drop`` that has since won back at least ``recovery`` of itself.

    Example:
        >>> tracker = GapTracker(min_drop=0.2)
        >>> tracker.update(0, 0, {"a": 0.9})
        []
        >>> tracker.update(1, 1, {"a": 0.3, "b": 0.2})
        []
        >>> [round(g.size, 2) for g in tracker.update(2, 1, {"a": 0.7, "b": 0.8})]
        [0.6]
    """

    def __init__(self, min_drop: float = 0.1, recovery: float = 0.5) -> None:
        self.min_drop = finite_float("min_drop", min_drop, low=0.0, low_open=True)
        self.recovery = finite_float("recovery", recovery, low=0.0, high=1.0, low_open=True)
        self.gaps: list[Gap] = []
        self._open: dict[str, Gap] = {}
        self._task: float | None = None
        self._last: dict[str, float] = {}

    def update(self, step: int, task: float, accuracies: Mapping[str, float]) -> list[Gap]:
        if self._task is not None and task != self._task:
            self._open = {}
            for name, before in self._last.items():
                gap = Gap(name, step, before, math.inf, step, math.nan)
                self._open[name] = gap
                self.gaps.append(gap)
        closed = []
        for name, gap in self._open.items():
            acc = accuracies.get(name, math.nan)
            if not math.isfinite(acc):
                continue
            gap.last = acc
            if acc < gap.minimum:
                gap.minimum, gap.minimum_step = acc, step
            drop = gap.before - gap.minimum
            if (
                gap.recovered_step is None
                and drop >= self.min_drop
                and acc - gap.minimum >= self.recovery * drop
                and acc > gap.minimum
            ):
                gap.recovered_step = step
                closed.append(gap)
        self._task = task
        self._last = {k: v for k, v in accuracies.items() if math.isfinite(v)}
        return closed
