"""The detector protocol."""

from __future__ import annotations

from steadygrad.diagnose.findings import Finding
from steadygrad.monitor.record import Record


class Detector:
    """Reads one Record per recorded step and returns the Findings it raises at that step.

    Detectors are streaming: memory per tracked series is O(1) in the length of the run.
    A detector raises one Finding per episode (not one per step while a condition lasts).

    Example:
        >>> class LossAbove(Detector):
        ...     kind = "loss_above"
        ...     def update(self, record):
        ...         if record.get("loss") > 10:
        ...             return [Finding(self.kind, record.step, evidence={"loss": record.get("loss")})]
        ...         return []
    """

    kind: str = "finding"

    def update(self, record: Record) -> list[Finding]:
        raise NotImplementedError
