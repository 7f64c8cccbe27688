"""Training-dynamics probes: gradient coherence, gradient noise scale, the gradient's share in
the top Hessian eigenspace, loss-landscape slices and signal propagation.

Each is a function (measure once) and a Signal (``Monitor(..., signals=[...])``, on a cadence
with a held batch). A probe that fails warns and records nothing for that step.
"""

from steadygrad.dynamics.coherence import (
    Coherence,
    GradientCoherenceProbe,
    coherence_from_gradients,
    gradient_coherence,
)
from steadygrad.dynamics.landscape import (
    LandscapeSlice,
    LossLandscapeProbe,
    filter_normalized_direction,
    landscape_rise,
    loss_landscape,
    plot_loss_landscape,
)
from steadygrad.dynamics.noise_scale import (
    GradientNoiseScaleProbe,
    NoiseScale,
    gradient_noise_scale,
    noise_scale_from_norms,
)
from steadygrad.dynamics.per_example import PerExampleGradients, per_example_gradients
from steadygrad.dynamics.propagation import (
    MeanField,
    Propagation,
    SignalPropagationProbe,
    chi,
    critical_weight_variance,
    init_mean_field,
    jacobian_singular_values,
    mean_field_variances,
    signal_propagation,
)
from steadygrad.dynamics.subspace import (
    TopSubspace,
    TopSubspaceProbe,
    subspace_overlap,
    top_subspace_overlap,
)

__all__ = [
    "Coherence",
    "GradientCoherenceProbe",
    "GradientNoiseScaleProbe",
    "LandscapeSlice",
    "LossLandscapeProbe",
    "MeanField",
    "NoiseScale",
    "PerExampleGradients",
    "Propagation",
    "SignalPropagationProbe",
    "TopSubspace",
    "TopSubspaceProbe",
    "chi",
    "coherence_from_gradients",
    "critical_weight_variance",
    "filter_normalized_direction",
    "gradient_coherence",
    "gradient_noise_scale",
    "init_mean_field",
    "jacobian_singular_values",
    "landscape_rise",
    "loss_landscape",
    "mean_field_variances",
    "noise_scale_from_norms",
    "per_example_gradients",
    "plot_loss_landscape",
    "signal_propagation",
    "subspace_overlap",
    "top_subspace_overlap",
]
