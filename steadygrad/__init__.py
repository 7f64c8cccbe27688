"""steadygrad: see training instabilities coming, name their cause, and fix them.

Example:
    >>> import steadygrad
    >>> with steadygrad.watch(model, optimizer, "runs/exp1") as mon:     # doctest: +SKIP
    ...     ...
    >>> run = steadygrad.load("runs/exp1")                                # doctest: +SKIP
    >>> print(steadygrad.diagnose(run).text())                           # doctest: +SKIP
"""

from steadygrad import estimators, nn, optim
from steadygrad.continual import ContinualEvaluation
from steadygrad.core import Finding, FindingKind, Metric, Record, Severity, Signal, Sink
from steadygrad.curvature import (
    SharpnessProbe,
    hessian_frobenius_norm,
    hessian_trace,
    layerwise_curvature,
    preconditioned_sharpness,
    sharpness,
    spectral_density,
    stability_limits,
    stability_margin,
)
from steadygrad.diagnose.autopilot import Autopilot
from steadygrad.diagnose.detectors import (
    AttentionLogitGrowth,
    Detector,
    GradientSpike,
    GradNormSpikeDetector,
    LossSpikeDetector,
    Memorising,
    NonFiniteDetector,
    OutputLogitDivergence,
    PlasticityLoss,
    RankSpikeDetector,
    SharpnessAboveLimit,
    SoftmaxCollapse,
    StabilityGap,
    UpdateRatioOutOfRange,
    default_detectors,
)
from steadygrad.diagnose.diagnosis import DiagnosisReport, diagnose
from steadygrad.dynamics import (
    GradientCoherenceProbe,
    GradientNoiseScaleProbe,
    LossLandscapeProbe,
    SignalPropagationProbe,
    TopSubspaceProbe,
    gradient_coherence,
    gradient_noise_scale,
    loss_landscape,
    signal_propagation,
    top_subspace_overlap,
)
from steadygrad.monitor import (
    AttentionLogitSignal,
    Monitor,
    OutputLogitSignal,
    PlasticitySignal,
    SoftmaxCollapseSignal,
    watch,
)
from steadygrad.monitor.findings_log import SteadygradWarning
from steadygrad.sinks import MLflowSink, TensorBoardSink, WandbSink
from steadygrad.store import (
    Run,
    RunStore,
    StorageWarning,
    UnreadableRunError,
    find_runs,
    load,
    load_runs,
)

__version__ = "0.1.0"

__all__ = [
    "GradientCoherenceProbe",
    "GradientNoiseScaleProbe",
    "LossLandscapeProbe",
    "SignalPropagationProbe",
    "TopSubspaceProbe",
    "gradient_coherence",
    "gradient_noise_scale",
    "loss_landscape",
    "signal_propagation",
    "top_subspace_overlap",
    "stability_margin",
    "stability_limits",
    "spectral_density",
    "sharpness",
    "preconditioned_sharpness",
    "layerwise_curvature",
    "hessian_trace",
    "hessian_frobenius_norm",
    "SharpnessProbe",
    "ContinualEvaluation",
    "StabilityGap",
    "Memorising",
    "SharpnessAboveLimit",
    "AttentionLogitGrowth",
    "AttentionLogitSignal",
    "Autopilot",
    "Detector",
    "DiagnosisReport",
    "Finding",
    "FindingKind",
    "Metric",
    "Severity",
    "Sink",
    "estimators",
    "nn",
    "optim",
    "GradNormSpikeDetector",
    "GradientSpike",
    "LossSpikeDetector",
    "Monitor",
    "NonFiniteDetector",
    "OutputLogitDivergence",
    "OutputLogitSignal",
    "PlasticityLoss",
    "RankSpikeDetector",
    "PlasticitySignal",
    "Record",
    "Run",
    "RunStore",
    "Signal",
    "SoftmaxCollapse",
    "SoftmaxCollapseSignal",
    "SteadygradWarning",
    "StorageWarning",
    "UnreadableRunError",
    "UpdateRatioOutOfRange",
    "__version__",
    "default_detectors",
    "diagnose",
    "load",
    "find_runs",
    "load_runs",
    "TensorBoardSink",
    "WandbSink",
    "MLflowSink",
    "watch",
]
