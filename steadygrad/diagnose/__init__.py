"""Detectors turn a stream of records into Findings; rules turn Findings into causes and fixes."""

from steadygrad.diagnose.findings import Finding

__all__ = ["Finding"]
