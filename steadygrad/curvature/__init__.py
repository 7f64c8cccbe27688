"""Curvature probes: sharpness, Hessian trace and spectrum, and the stability margin vs 2/lr."""

from steadygrad.curvature.density import SpectralDensity, spectral_density
from steadygrad.curvature.eigensolver import SharpnessResult, sharpness
from steadygrad.curvature.hvp import hessian_operator
from steadygrad.curvature.layerwise import LayerwiseCurvature, layerwise_curvature
from steadygrad.curvature.margin import (
    StabilityLimits,
    StabilityMargin,
    preconditioned_sharpness,
    stability_limits,
    stability_margin,
)
from steadygrad.curvature.objective import OutputLoss
from steadygrad.curvature.preconditioned import adam_limit, adam_preconditioner
from steadygrad.curvature.probe import SharpnessProbe
from steadygrad.curvature.trace import Estimate, hessian_frobenius_norm, hessian_trace

__all__ = [
    "Estimate",
    "LayerwiseCurvature",
    "OutputLoss",
    "SharpnessProbe",
    "SharpnessResult",
    "SpectralDensity",
    "StabilityLimits",
    "StabilityMargin",
    "adam_limit",
    "adam_preconditioner",
    "hessian_frobenius_norm",
    "hessian_operator",
    "hessian_trace",
    "layerwise_curvature",
    "preconditioned_sharpness",
    "spectral_density",
    "stability_limits",
    "stability_margin",
    "sharpness",
]
