"""The unit of diagnosis: a Finding says what happened, when, where, and how bad it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class Finding:
    """One detected event in a run.

    Example:
        >>> Finding("loss_spike", step=120, where=None, evidence={"z": 9.1}, severity="warning")
        Finding(kind='loss_spike', step=120, where=None, evidence={'z': 9.1}, severity='warning', batch_ids=None)
    """

    kind: str
    step: int
    where: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    severity: str = "warning"
    batch_ids: list[Any] | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def describe(self) -> str:
        """A one-line human description, e.g. for the terminal report."""
        where = f" in {self.where}" if self.where else ""
        details = ", ".join(f"{k}={_short(v)}" for k, v in self.evidence.items())
        return f"step {self.step}: {self.kind}{where}" + (f" ({details})" if details else "")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
