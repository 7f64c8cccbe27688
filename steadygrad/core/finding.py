"""The unit of diagnosis: a Finding says what happened, when, where, and how bad it is.

Every kind of finding is declared once, as a :class:`FindingKind`, next to the detector that
emits it; rules and the report name kinds through those declarations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steadygrad.core.severity import Severity


class FindingKind(str):
    """The declaration of one kind of finding: a ``str`` (its name, what a :class:`Finding`
    carries and the store keeps) with a one-line ``doc`` and its usual ``severity``.

    Example:
        >>> LOSS_SPIKE = FindingKind("loss_spike", "the loss jumped far above its baseline")
        >>> LOSS_SPIKE == "loss_spike", LOSS_SPIKE.doc
        (True, 'the loss jumped far above its baseline')
    """

    doc: str
    severity: Severity

    def __new__(cls, name: str, doc: str, severity: str = "warning") -> FindingKind:
        if not name or not doc:
            raise ValueError("a finding kind needs a name and a one-line doc")
        kind = super().__new__(cls, name)
        kind.doc = doc
        kind.severity = Severity(severity)
        return kind

    @property
    def name(self) -> str:
        return str.__str__(self)

    def __reduce__(self):  # pickles (and deep-copies) as a declaration, not a bare str
        return (FindingKind, (self.name, self.doc, self.severity.value))


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
        if isinstance(self.kind, FindingKind):
            object.__setattr__(self, "kind", self.kind.name)  # the store keeps plain names
        Severity.rank(self.severity)  # a clear error for an unknown severity
        object.__setattr__(self, "severity", Severity(self.severity).value)

    def describe(self) -> str:
        """A one-line human description, e.g. for the terminal report."""
        where = f" in {self.where}" if self.where else ""
        details = ", ".join(f"{k}={_short(v)}" for k, v in self.evidence.items())
        return f"step {self.step}: {self.kind}{where}" + (f" ({details})" if details else "")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
