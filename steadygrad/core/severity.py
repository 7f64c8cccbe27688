"""How bad a finding is, with an order: info < warning < critical."""

from __future__ import annotations

from enum import StrEnum


class Severity(StrEnum):
    """A finding's severity. A ``str`` (``Severity.WARNING == "warning"``) with an order.

    Example:
        >>> Severity("critical") > Severity.WARNING
        True
        >>> max(["info", "warning"], key=Severity.rank)
        'warning'
    """

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @staticmethod
    def rank(value: str | Severity) -> int:
        """0 for info, 1 for warning, 2 for critical; a clear error for anything else."""
        try:
            return _ORDER.index(Severity(value))
        except ValueError:
            raise ValueError(
                f"severity must be one of {[s.value for s in _ORDER]}, got {value!r}"
            ) from None

    def __lt__(self, other: object) -> bool:
        return Severity.rank(self) < Severity.rank(other)  # type: ignore[arg-type]

    def __le__(self, other: object) -> bool:
        return Severity.rank(self) <= Severity.rank(other)  # type: ignore[arg-type]

    def __gt__(self, other: object) -> bool:
        return Severity.rank(self) > Severity.rank(other)  # type: ignore[arg-type]

    def __ge__(self, other: object) -> bool:
        return Severity.rank(self) >= Severity.rank(other)  # type: ignore[arg-type]


_ORDER = (Severity.INFO, Severity.WARNING, Severity.CRITICAL)
SEVERITIES = tuple(s.value for s in _ORDER)
