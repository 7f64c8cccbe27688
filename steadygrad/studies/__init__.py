"""Studies: reproducible experiments that check steadygrad against published results, and
double as demos."""

from steadygrad.studies.attention_logits import run_attention_logits
from steadygrad.studies.edge_of_stability import run_edge_of_stability
from steadygrad.studies.gradient_coherence import run_gradient_coherence
from steadygrad.studies.grokking import run_grokking
from steadygrad.studies.loss_landscape import run_loss_landscape
from steadygrad.studies.lr_sensitivity import lr_sensitivity, run_lr_sensitivity
from steadygrad.studies.noise_scale import run_noise_scale
from steadygrad.studies.ray_session import RayClusterUnreachable
from steadygrad.studies.sgd_trace import run_sgd_trace
from steadygrad.studies.signal_propagation import run_signal_propagation
from steadygrad.studies.stability_gap import run_stability_gap
from steadygrad.studies.sweep import SweepError, SweepInterrupted, run_sweep
from steadygrad.studies.top_subspace import run_top_subspace

__all__ = [
    "RayClusterUnreachable",
    "SweepError",
    "SweepInterrupted",
    "lr_sensitivity",
    "run_attention_logits",
    "run_edge_of_stability",
    "run_gradient_coherence",
    "run_grokking",
    "run_loss_landscape",
    "run_noise_scale",
    "run_sgd_trace",
    "run_signal_propagation",
    "run_top_subspace",
    "run_lr_sensitivity",
    "run_stability_gap",
    "run_sweep",
]
