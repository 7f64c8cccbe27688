"""The detector protocol."""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from steadygrad.core import Finding, FindingKind, Metric
from steadygrad.core.metrics import GRAD_NORM_PRECLIP

if TYPE_CHECKING:
    from steadygrad.core import Record


# Evidence key of a finding on a series measured on a cadence: the step of the reading before
# the one that found it, or before the streak of readings that confirmed it (the cause may have
# started anywhere since).
PREVIOUS_READING = "previous_reading"


# Evidence key of a finding confirmed over a streak of cadenced readings: the step of the
# streak's first reading, where the evidence was first there.
STREAK_BEGAN = "streak_began"


class Readings:
    """The steps at which a detector last read its (cadenced) series: ``previous`` is the one
    before the latest, what a finding at the latest reports as ``PREVIOUS_READING``; a finding
    confirmed over a streak of readings reports the one before the streak began
    (:meth:`before`): the cause may have started anywhere after it.

    Example:
        >>> readings = Readings()
        >>> for step in (0, 12, 24, 30, 31):
        ...     readings.read(step)
        >>> readings.previous, readings.before(2), readings.began(2), readings.preceding(24)
        (30, 24, 30, 12)
    """

    __slots__ = ("_steps",)

    def __init__(self, keep: int = 16) -> None:
        self._steps: deque[int] = deque(maxlen=keep)

    def read(self, step: int) -> None:
        self._steps.append(step)

    @property
    def latest(self) -> int | None:
        return self._steps[-1] if self._steps else None

    @property
    def previous(self) -> int | None:
        return self.before(1)

    def began(self, streak: int) -> int | None:
        """The first of the last ``streak`` readings (None if not kept)."""
        return self._steps[-streak] if 0 < streak <= len(self._steps) else None

    def preceding(self, step: int) -> int | None:
        """The last kept reading before ``step`` (None if not kept)."""
        return next((s for s in reversed(self._steps) if s < step), None)

    def before(self, streak: int) -> int | None:
        """The reading before the last ``streak`` readings (None if not kept)."""
        return self._steps[-streak - 1] if 0 < streak < len(self._steps) else None


class Cadence:
    """Tells the readings on a series' cadence from the extra ones the monitor takes for a few
    steps after a finding (a closer look): a reading less than half the first gap after the
    last one on the cadence is extra. Trends are judged on the cadence: from one step to the
    next, a series moves with its batch more than with its drift.

    Example:
        >>> cadence = Cadence()
        >>> [cadence.on(step) for step in (0, 25, 26, 27, 50)]
        [True, True, False, False, True]
    """

    __slots__ = ("_gap", "_last")

    def __init__(self) -> None:
        self._gap: int | None = None
        self._last: int | None = None

    def on(self, step: int) -> bool:
        """Whether the reading at ``step`` is on the cadence (call once per reading)."""
        if self._last is not None:
            gap = step - self._last
            if self._gap is None:
                self._gap = gap
            if gap < self._gap / 2:
                return False
        self._last = step
        return True


class Detector:
    """Reads one Record per recorded step and returns the Findings it raises at that step.

    Detectors are streaming: memory per tracked series is O(1) in the length of the run.
    A detector raises one Finding per episode (not one per step while a condition lasts).
    It declares the metrics it ``reads`` and the finding kinds it ``emits`` (declared once, as
    :class:`~steadygrad.core.FindingKind`, next to it); ``kind`` is its main one.

    Example:
        >>> from steadygrad.core.metrics import LOSS
        >>> LOSS_ABOVE = FindingKind("loss_above", "the loss is above 10")
        >>> class LossAbove(Detector):
        ...     kind, reads, emits = LOSS_ABOVE, (LOSS,), (LOSS_ABOVE,)
        ...     def update(self, record):
        ...         if record.get("loss") > 10:
        ...             return [Finding(self.kind, record.step, evidence={"loss": record.get("loss")})]
        ...         return []
    """

    kind: str = "finding"
    reads: tuple[Metric, ...] = ()
    emits: tuple[FindingKind, ...] = ()
    # Whether its baselines are the current task's: the loss and gradient levels of a run
    # trained on a sequence of tasks step at each switch (a new objective, not a divergence),
    # so the Monitor starts such a detector again from its first state when the record's
    # ``task`` changes (steadygrad.continual.ContinualEvaluation records it) or the loop calls
    # Monitor.objective_changed.
    per_task: bool = False

    def update(self, record: Record) -> list[Finding]:
        raise NotImplementedError


class RobustBaseline:
    """Median and MAD of the last ``window`` values: a baseline that one outlier cannot move.

    Memory is O(window), constant in the length of the run.

    Example:
        >>> base = RobustBaseline(window=8)
        >>> for x in [1.0, 1.1, 0.9, 1.0, 1.05, 0.95]:
        ...     base.add(x)
        >>> round(base.score(2.0, rel_floor=0.0), 1) > 6
        True
    """

    def __init__(self, window: int = 64) -> None:
        from collections import deque

        self.values: deque[float] = deque(maxlen=window)

    def __len__(self) -> int:
        return len(self.values)

    def add(self, value: float) -> None:
        self.values.append(value)

    def median(self) -> float:
        import statistics

        return statistics.median(self.values)

    def score(self, value: float, rel_floor: float = 0.0) -> float:
        """Robust z-score of ``value``: (value - median) / (1.4826 MAD), with the scale floored
        at ``rel_floor * |median|`` so a flat series does not make noise look like a spike."""
        import statistics

        med = statistics.median(self.values)
        mad = statistics.median(abs(v - med) for v in self.values)
        scale = max(1.4826 * mad, rel_floor * abs(med), 1e-12)
        return (value - med) / scale


def shrunk_by_clipping(record: Record, norm: float) -> float:
    """How many times the gradient was shrunk by clipping (1 when not clipped, or not known):
    the norm before clipping over the one after. ``clip_grad_norm_`` scales every tensor by the
    same factor, so each tensor's own norm before clipping is its recorded one times this."""
    before = record.values.get(GRAD_NORM_PRECLIP.name, math.nan)
    return before / norm if math.isfinite(before) and before > norm > 0 else 1.0
