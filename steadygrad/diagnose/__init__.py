"""Detectors turn a stream of records into Findings; rules turn Findings into causes and fixes."""

from steadygrad.core.finding import Finding
from steadygrad.diagnose.autopilot import Autopilot
from steadygrad.diagnose.diagnosis import DiagnosisReport, diagnose
from steadygrad.diagnose.rules import RULES, Diagnosis, Fix, Rule

__all__ = [
    "RULES",
    "Autopilot",
    "Diagnosis",
    "DiagnosisReport",
    "Finding",
    "Fix",
    "Rule",
    "diagnose",
]
