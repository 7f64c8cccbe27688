"""Curvature detectors: read the probes' ``sharpness`` / ``*_limit`` values from the Records."""

from __future__ import annotations

import math
from dataclasses import dataclass

from steadygrad.core import Finding, FindingKind, Record
from steadygrad.core.checks import finite_float, non_negative_int, positive_int
from steadygrad.core.metrics import (
    PRECONDITIONED_SHARPNESS,
    PRECONDITIONED_SHARPNESS_LIMIT,
    SHARPNESS,
    SHARPNESS_LIMIT,
)
from steadygrad.diagnose.detectors.base import Detector

SHARPNESS_ABOVE_LIMIT = FindingKind(
    "sharpness_above_limit", "sharpness (or Adam's preconditioned sharpness) above its limit"
)

# (value, limit) pairs written by SharpnessProbe / stability_margin
PAIRS = (
    (SHARPNESS.name, SHARPNESS_LIMIT.name),
    (PRECONDITIONED_SHARPNESS.name, PRECONDITIONED_SHARPNESS_LIMIT.name),
)


@dataclass
class _Episode:
    above: int = 0
    since: int | None = None
    max_ratio: float = 0.0
    reported: bool = False


class SharpnessAboveLimit(Detector):
    """Sharpness (or Adam's preconditioned sharpness) above its stability limit for
    ``patience`` consecutive probes.

    The limit is 2/lr for GD, (2 + 2 beta)/lr for heavy-ball momentum, (2 + 2 beta1)/((1 - beta1)
    lr) for Adam (Cohen et al. 2021, 2022). Full-batch GD typically hovers at the limit (the edge
    of stability) with a non-monotone loss; far above it the iterates diverge. One Finding per
    episode; an episode ends when the ratio falls back to ``threshold`` or below. Records without
    a probe value are skipped (probes run every N steps).

    Example:
        >>> det = SharpnessAboveLimit(patience=2)
        >>> for step, s in enumerate([1.5, 2.1, 2.2]):
        ...     found = det.update(Record(step, {"sharpness": s, "sharpness_limit": 2.0}))
        >>> found[0].kind
        'sharpness_above_limit'
    """

    kind = SHARPNESS_ABOVE_LIMIT
    reads = (SHARPNESS, SHARPNESS_LIMIT, PRECONDITIONED_SHARPNESS, PRECONDITIONED_SHARPNESS_LIMIT)
    emits = (SHARPNESS_ABOVE_LIMIT,)

    def __init__(self, patience: int = 3, threshold: float = 1.0, adam_warmup: int = 100) -> None:
        self.patience = positive_int("patience", patience)
        self.adam_warmup = non_negative_int("adam_warmup", adam_warmup)
        self.threshold = finite_float("threshold", threshold, low=0.0, low_open=True)
        self._episodes = {value: _Episode() for value, _ in PAIRS}

    def update(self, record: Record) -> list[Finding]:
        if record.nonfinite:
            return []  # NaN-driven values are no evidence of this mechanism
        findings = []
        for value_name, limit_name in PAIRS:
            if value_name == PRECONDITIONED_SHARPNESS.name and record.step < self.adam_warmup:
                continue  # Adam's second moment is still a few squared gradients: P^-1 H is huge
            value, limit = record.get(value_name), record.get(limit_name)
            if not (math.isfinite(value) and math.isfinite(limit)) or limit <= 0:
                continue
            ratio = value / limit
            episode = self._episodes[value_name]
            if ratio <= self.threshold:
                self._episodes[value_name] = _Episode()
                continue
            episode.above += 1
            episode.since = record.step if episode.since is None else episode.since
            episode.max_ratio = max(episode.max_ratio, ratio)
            if episode.above >= self.patience and not episode.reported:
                episode.reported = True
                findings.append(
                    Finding(
                        self.kind,
                        record.step,
                        where=None,
                        evidence={
                            "signal": value_name,
                            "value": value,
                            "limit": limit,
                            "ratio": ratio,
                            "max_ratio": episode.max_ratio,
                            "above_since_step": episode.since,
                            "probes_above": episode.above,
                        },
                        severity="warning",
                    )
                )
        return findings
