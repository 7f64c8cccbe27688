"""steadygrad: see training instabilities coming, name their cause, and fix them.

Example:
    >>> import steadygrad
    >>> with steadygrad.watch(model, optimizer, "runs/exp1") as mon:     # doctest: +SKIP
    ...     ...
    >>> run = steadygrad.load("runs/exp1")                                # doctest: +SKIP
"""

from steadygrad.diagnose.autopilot import Autopilot
from steadygrad.diagnose.detectors import Detector
from steadygrad.diagnose.detectors.training import (
    GradNormSpikeDetector,
    LossSpikeDetector,
    NonFiniteDetector,
    default_detectors,
)
from steadygrad.diagnose.diagnosis import DiagnosisReport, diagnose
from steadygrad.diagnose.findings import Finding
from steadygrad.monitor import Monitor, Record, Signal, watch
from steadygrad.store import Run, RunStore, load

__version__ = "0.1.0"

__all__ = [
    "Autopilot",
    "Detector",
    "DiagnosisReport",
    "Finding",
    "GradNormSpikeDetector",
    "LossSpikeDetector",
    "Monitor",
    "NonFiniteDetector",
    "Record",
    "Run",
    "RunStore",
    "Signal",
    "__version__",
    "default_detectors",
    "diagnose",
    "load",
    "watch",
]
