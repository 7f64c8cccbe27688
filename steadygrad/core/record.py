"""The Record: everything the Monitor measured at one step, as plain host values."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Record:
    """One step's measurements.

    ``values`` maps metric names (DESIGN.md: ``signal`` or ``signal/module.path``) to floats;
    NaN and Inf are kept as they are. ``meta`` carries non-scalar facts detectors may need:
    ``skipped`` (the optimizer did not step, e.g. a GradScaler overflow), ``nonfinite_origin``
    (where a NaN/Inf was first seen), ``batch_ids`` (the ids the user passed), and so on.
    """

    step: int
    values: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0
    _families: dict[str, dict[str, float]] | None = field(default=None, repr=False, compare=False)

    @property
    def nonfinite(self) -> bool:
        """Whether NaN/Inf reached the loss, the gradients or the weights at this step: the
        step's other values are then NaN-driven and no evidence of any other mechanism."""
        return bool(self.meta.get("nonfinite"))

    def get(self, name: str, default: float = math.nan) -> float:
        return self.values.get(name, default)

    def family(self, signal: str) -> dict[str, float]:
        """The per-module values of one signal: ``{module.path: value}``."""
        return self.families().get(signal, {})

    def families(self) -> dict[str, dict[str, float]]:
        """Every per-module signal, grouped once per record (detectors ask for several)."""
        if self._families is None:
            grouped: dict[str, dict[str, float]] = {}
            for key, value in self.values.items():
                signal, sep, module = key.partition("/")
                if sep:
                    grouped.setdefault(signal, {})[module] = value
            self._families = grouped
        return self._families
