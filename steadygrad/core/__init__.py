"""The ground floor: the names every part of steadygrad shares, declared once.

Imports nothing else from steadygrad. :class:`Record` (one step's values), :class:`Finding`
and :class:`FindingKind` (what a detector saw), :class:`Severity`, :class:`Metric` (the
declaration of a recorded value), :class:`Signal` (the measurement protocol), and the built-in
metric declarations in :mod:`steadygrad.core.metrics`.
"""

from steadygrad.core import metrics
from steadygrad.core.finding import Finding, FindingKind
from steadygrad.core.metric import Metric, declaration_of
from steadygrad.core.optimizer import optimizer_family, unwrap_optimizer
from steadygrad.core.record import Family, Members, Record, Values
from steadygrad.core.severity import SEVERITIES, Severity
from steadygrad.core.signal import Measurements, Signal
from steadygrad.core.sink import RunInfo, Sink

__all__ = [
    "SEVERITIES",
    "Finding",
    "FindingKind",
    "Family",
    "Measurements",
    "Members",
    "Metric",
    "Record",
    "Severity",
    "RunInfo",
    "Signal",
    "Sink",
    "Values",
    "declaration_of",
    "metrics",
    "optimizer_family",
    "unwrap_optimizer",
]
