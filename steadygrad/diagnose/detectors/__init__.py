"""Streaming detectors: each reads Records one at a time and emits Findings.

``base.py`` holds the protocol and the robust running statistics detectors share; each other
module holds the detectors of one family (training dynamics, transformers, curvature).
"""

from steadygrad.diagnose.detectors.base import Detector, RobustBaseline
from steadygrad.diagnose.detectors.continual import StabilityGap
from steadygrad.diagnose.detectors.curvature import SharpnessAboveLimit
from steadygrad.diagnose.detectors.distributed import RankSpikeDetector
from steadygrad.diagnose.detectors.dynamics import Memorising
from steadygrad.diagnose.detectors.training import (
    GradNormSpikeDetector,
    LossSpikeDetector,
    NonFiniteDetector,
    default_detectors,
)
from steadygrad.diagnose.detectors.transformer import (
    AttentionLogitGrowth,
    GradientSpike,
    OutputLogitDivergence,
    PlasticityLoss,
    SoftmaxCollapse,
    UpdateRatioOutOfRange,
)
from steadygrad.diagnose.detectors.trends import GradientGrowth, LossDivergence, UnstableSteps

__all__ = [
    "AttentionLogitGrowth",
    "Detector",
    "GradNormSpikeDetector",
    "GradientGrowth",
    "LossDivergence",
    "UnstableSteps",
    "GradientSpike",
    "LossSpikeDetector",
    "Memorising",
    "NonFiniteDetector",
    "OutputLogitDivergence",
    "PlasticityLoss",
    "RankSpikeDetector",
    "RobustBaseline",
    "SharpnessAboveLimit",
    "SoftmaxCollapse",
    "StabilityGap",
    "UpdateRatioOutOfRange",
    "default_detectors",
]
