"""Detectors of a torch.distributed job: a spike on one rank, named with the rank.

They read the per-rank series the Monitor's Reducer records (``loss/<rank>``,
``grad_norm_local/<rank>``) and stay silent in a single-process run, where there are none.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from steadygrad.core import Finding, FindingKind
from steadygrad.core.checks import positive_int
from steadygrad.core.metrics import GRAD_NORM_LOCAL, LOSS
from steadygrad.diagnose.detectors.base import Detector
from steadygrad.diagnose.detectors.training import SpikeDetector

if TYPE_CHECKING:
    from steadygrad.core import Record

RANK_SPIKE = FindingKind(
    "rank_spike",
    "one rank's own loss or gradient norm jumped far above its recent robust baseline",
)


class _RankLoss(SpikeDetector):
    kind = RANK_SPIKE


class _RankGradNorm(SpikeDetector):
    """Log space and at least ``min_ratio`` times the median, as for the global norm."""

    kind = RANK_SPIKE

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("rel_floor", 0.0)
        kwargs.setdefault("min_ratio", 3.0)
        super().__init__(**kwargs)

    def transform(self, value: float) -> float:
        return math.log(value) if value > 0 else -math.inf

    def untransform(self, x: float) -> float:
        return math.exp(x)


class RankSpikeDetector(Detector):
    """A spike in one rank's own loss or gradient norm, named with the rank and, under DDP, the
    parameter with that rank's largest gradient at that step.

    Each rank's series has its own robust baseline (median/MAD of its recent values), so a rank
    whose data went bad is found even when averaging over ranks hides it in the global series.

    Example:
        >>> detector = RankSpikeDetector(warmup=20)
        >>> # in default_detectors(): silent unless the run is distributed
    """

    kind = RANK_SPIKE
    reads, emits = (LOSS, GRAD_NORM_LOCAL), (RANK_SPIKE,)
    per_task = True  # each rank's baselines are the current task's

    def __init__(self, threshold: float = 6.0, warmup: int = 20, window: int = 64) -> None:
        self.options = {
            "threshold": threshold,
            "warmup": positive_int("warmup", warmup),
            "window": positive_int("window", window),
        }
        SpikeDetector(**self.options)  # checks the options now, not at the first rank's value
        self._series: dict[str, SpikeDetector] = {}

    def update(self, record: Record) -> list[Finding]:
        findings = []
        per_rank = [
            (family.name, rank)
            for family in (LOSS, GRAD_NORM_LOCAL)
            for rank in record.family(family.name)  # no walk over every per-tensor key
        ]
        for family, rank in per_rank:
            key = f"{family}/{rank}"
            detector = self._series.get(key)
            if detector is None:
                kind = _RankLoss if family == LOSS.name else _RankGradNorm
                detector = self._series[key] = kind(**self.options)
                detector.signal = key
            for finding in detector.update(record):
                where = record.meta.get("largest_local_grad", {}).get(int(rank))
                evidence = {"rank": int(rank), "series": key, **finding.evidence}
                findings.append(replace(finding, where=where, evidence=evidence))
        return findings
