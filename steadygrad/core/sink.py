"""Extension point for where a run goes as it is recorded: the run store is one sink;
TensorBoard, Weights & Biases and MLflow are others, fed live from the same Records.

Lifecycle, driven by the Monitor (``Monitor(..., sinks=[...])``): ``open(run)`` once, with the
run's name, directory, config and metric declarations; ``write(record, findings)`` per recorded
step; ``action(step, kind, detail)`` per autopilot action; ``close(status, diagnosis)`` at the
end, with the run's diagnosis as plain data when one was made. A sink that raises is switched
off with a warning: a sink never stops the training it watches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadygrad.core.finding import Finding
from steadygrad.core.metric import Metric
from steadygrad.core.record import Record


@dataclass
class RunInfo:
    """What a sink learns about a run when it opens."""

    name: str
    run_dir: Path
    config: Mapping[str, Any] = field(default_factory=dict)
    metrics: Sequence[Metric] = ()


class Sink:
    """Base class: override what you need.

    Example:
        >>> class PrintLoss(Sink):
        ...     def write(self, record, findings):
        ...         print(record.step, record.get("loss"))
        >>> # Monitor(model, optimizer, sinks=[PrintLoss()])
    """

    def open(self, run: RunInfo) -> None:
        """Called once, before the first record."""

    def write(self, record: Record, findings: Sequence[Finding]) -> None:
        """Called once per recorded step, with the findings raised at that step."""

    def action(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        """Called for each action taken on the run (by the autopilot, or by the user)."""

    def close(self, status: str, diagnosis: Mapping[str, Any] | None = None) -> None:
        """Called once at the end; ``diagnosis`` is the run's diagnosis as plain data."""
