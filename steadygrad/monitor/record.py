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

    def get(self, name: str, default: float = math.nan) -> float:
        return self.values.get(name, default)

    def family(self, signal: str) -> dict[str, float]:
        """The per-module values of one signal: ``{module.path: value}``."""
        prefix = signal + "/"
        return {k[len(prefix) :]: v for k, v in self.values.items() if k.startswith(prefix)}
