"""The declaration of a metric: its name, what it means, its unit, how it is drawn, its limit.

Every value a Monitor records is named by a declared :class:`Metric`: a global one (``loss``)
or a family keyed by where it was measured (``grad_norm/h.0.attn.qkv.weight``: the family
``grad_norm`` per parameter). Signals declare the metrics they write; detectors the metrics they
read; the store keeps the declarations with the run, so a reader draws what the run declares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PER = (None, "parameter", "module", "group", "rank", "task", "index")
SCALES = ("linear", "log")


@dataclass(frozen=True)
class Metric:
    """One declared metric (or per-module family of metrics).

    Args:
        name: the metric's name (for a family, the part before the ``/``).
        doc: one line saying what it measures.
        unit: its unit, if it has one (``"s"``, ``"nats"``, ``"count"``, ``"fraction"``).
        per: ``None`` for one global value, else what follows the ``/`` in a family's keys:
            ``"parameter"``, ``"module"``, ``"group"`` (an optimizer group), ``"rank"``,
            ``"task"`` or ``"index"``.
        scale: how it is plotted, ``"linear"`` or ``"log"``.
        panel: the report panel it belongs to (metrics that share a panel are drawn together).
        limit: the name of the metric that is this one's stability limit, if any.
        events: True for a count whose non-zero values are events to mark on the time axis.
        total: for a family, True when the bare name holds the value over the whole family
            (``grad_norm`` is the global norm of every ``grad_norm/<parameter>``).

    Example:
        >>> GRAD_NORM = Metric("grad_norm", "L2 norm of the gradient", per="parameter")
        >>> GRAD_NORM.key("fc.weight")
        'grad_norm/fc.weight'
        >>> GRAD_NORM.owns("grad_norm/fc.weight"), GRAD_NORM.owns("grad_norm")
        (True, False)
    """

    name: str
    doc: str
    unit: str = ""
    per: str | None = None
    scale: str = "linear"
    panel: str | None = None
    limit: str | None = None
    events: bool = False
    total: bool = False

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"a metric's name must be non-empty and without '/': {self.name!r}")
        if self.per not in PER:
            raise ValueError(f"per must be one of {PER}, got {self.per!r}")
        if self.total and self.per is None:
            raise ValueError(f"{self.name}: only a family (per=...) can have a total")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")

    @property
    def family(self) -> bool:
        return self.per is not None

    def key(self, where: str | int | None = None) -> str:
        """The stored name: ``name`` for a global metric, ``name/where`` for a family."""
        if where is None and self.total:
            return self.name
        if self.per is None:
            if where is not None:
                raise ValueError(f"{self.name} is a global metric: it has no {where!r}")
            return self.name
        if where is None:
            raise ValueError(f"{self.name} is declared per {self.per}: say which one")
        return f"{self.name}/{where}"

    def owns(self, key: str) -> bool:
        """Whether the stored name ``key`` belongs to this declaration."""
        if key == self.name:
            return self.per is None or self.total
        return self.per is not None and key.startswith(self.name + "/")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metric:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def __str__(self) -> str:
        return self.name


def declaration_of(key: str, metrics: dict[str, Metric]) -> Metric | None:
    """The declaration, among ``metrics`` (by name), that owns the stored name ``key``."""
    metric = metrics.get(key.partition("/")[0])
    return metric if metric is not None and metric.owns(key) else None
