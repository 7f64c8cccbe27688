"""Studies: reproducible experiments that check steadygrad against published results, and
double as demos."""

from steadygrad.studies.attention_logits import run_attention_logits
from steadygrad.studies.edge_of_stability import run_edge_of_stability
from steadygrad.studies.grokking import run_grokking
from steadygrad.studies.lr_sensitivity import lr_sensitivity, run_lr_sensitivity
from steadygrad.studies.ray_session import RayClusterUnreachable
from steadygrad.studies.stability_gap import run_stability_gap
from steadygrad.studies.sweep import SweepError, SweepInterrupted, run_sweep

__all__ = [
    "RayClusterUnreachable",
    "SweepError",
    "SweepInterrupted",
    "lr_sensitivity",
    "run_attention_logits",
    "run_edge_of_stability",
    "run_grokking",
    "run_lr_sensitivity",
    "run_stability_gap",
    "run_sweep",
]
