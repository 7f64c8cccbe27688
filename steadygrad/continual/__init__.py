"""Continual learning: evaluate earlier tasks as training goes, and measure the stability gap.

:class:`ContinualEvaluation` is a Monitor signal; :mod:`steadygrad.continual.metrics` declares
what it records and computes min-ACC, WC-ACC and the stability gaps; :class:`ReplayBuffer`
is the fix the diagnosis offers.
"""

from steadygrad.continual.evaluation import ContinualEvaluation
from steadygrad.continual.metrics import (
    CONTINUAL_METRICS,
    Gap,
    GapTracker,
    WorstCaseScores,
)
from steadygrad.continual.replay import ReplayBuffer

__all__ = [
    "CONTINUAL_METRICS",
    "ContinualEvaluation",
    "Gap",
    "GapTracker",
    "ReplayBuffer",
    "WorstCaseScores",
]
