"""Streaming detectors: each reads Records one at a time and emits Findings.

``base.py`` holds the protocol and the robust running statistics detectors share; each other
module holds the detectors of one family (training dynamics, curvature, transformers, ...).
"""

from steadygrad.diagnose.detectors.base import Detector

__all__ = ["Detector"]
