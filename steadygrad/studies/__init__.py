"""Studies: reproducible experiments that check steadygrad against published results, and
double as demos."""

from steadygrad.studies.lr_sensitivity import lr_sensitivity, run_lr_sensitivity
from steadygrad.studies.sweep import SweepError, run_sweep

__all__ = ["SweepError", "lr_sensitivity", "run_lr_sensitivity", "run_sweep"]
