"""Stabilizing layers, losses and optimizer wrappers (definitions: docs/transformers.md)."""

from steadygrad.nn.losses import (
    log_stablemax,
    stablemax,
    stablemax_cross_entropy,
    stablemax_s,
    z_loss,
)
from steadygrad.nn.orthograd import OrthoGrad, orthogonal_gradient
from steadygrad.nn.peri_ln import PeriLNBlock, PeriLNResidual
from steadygrad.nn.qk_norm import QKNorm, QKNormAttention, add_qk_norm, qk_norm_targets
from steadygrad.nn.reste import BinaryLinear, reste_derivative, reste_power_schedule, reste_sign
from steadygrad.nn.weight_decay import IndependentWeightDecay, decay_weights_

__all__ = [
    "BinaryLinear",
    "IndependentWeightDecay",
    "OrthoGrad",
    "PeriLNBlock",
    "PeriLNResidual",
    "QKNorm",
    "QKNormAttention",
    "add_qk_norm",
    "decay_weights_",
    "log_stablemax",
    "orthogonal_gradient",
    "qk_norm_targets",
    "reste_derivative",
    "reste_power_schedule",
    "reste_sign",
    "stablemax",
    "stablemax_cross_entropy",
    "stablemax_s",
    "z_loss",
]
