"""Gradient estimators beyond backpropagation, each measured against the true gradient.

:class:`ForwardGradient` (Baydin et al. 2022), :class:`DirectFeedbackAlignment` (Nokland
2016), :class:`ForwardForward` (Hinton 2022) and :class:`ReSTE` (Wu et al. 2023) write their
update into ``.grad`` (``loss = estimator.backward((x, y))`` in place of ``loss.backward()``);
:class:`EstimatorAlignment` records, on a cadence, the cosine and norm ratio of that update
against the true backprop gradient on the same batch.
"""

from steadygrad.estimators.base import (
    ESTIMATOR_COSINE,
    ESTIMATOR_NORM_RATIO,
    Backprop,
    GradientEstimator,
    alignment,
)
from steadygrad.estimators.dfa import DirectFeedbackAlignment
from steadygrad.estimators.forward_forward import ForwardForward, ForwardForwardMLP, goodness
from steadygrad.estimators.forward_gradient import ForwardGradient, expected_cosine
from steadygrad.estimators.reste import ReSTE
from steadygrad.estimators.signal import EstimatorAlignment

__all__ = [
    "ESTIMATOR_COSINE",
    "ESTIMATOR_NORM_RATIO",
    "Backprop",
    "DirectFeedbackAlignment",
    "EstimatorAlignment",
    "ForwardForward",
    "ForwardForwardMLP",
    "ForwardGradient",
    "GradientEstimator",
    "ReSTE",
    "alignment",
    "expected_cosine",
    "goodness",
]
