"""EstimatorAlignment: a Monitor signal for how far a gradient estimator is from backprop."""

from __future__ import annotations

from collections.abc import Mapping

from steadygrad.core.signal import Signal, Value
from steadygrad.estimators.base import ESTIMATOR_COSINE, ESTIMATOR_NORM_RATIO, GradientEstimator


class EstimatorAlignment(Signal):
    """Every ``every`` steps, the cosine and norm ratio of the estimator's update against the
    true gradient on the same batch at the same weights, per parameter and overall
    (``estimator_cosine``, ``estimator_norm_ratio``), plus what the estimator itself declares
    (Forward-Forward's per-layer goodness).

    On a due step the estimator also computes the true gradient (one backward pass): the cost
    of the comparison is paid only on the signal's cadence.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> estimator = steadygrad.estimators.DirectFeedbackAlignment(model)  # doctest: +SKIP
        >>> signal = EstimatorAlignment(estimator, every=10)                 # doctest: +SKIP
        >>> # Monitor(model, optimizer, signals=[signal]); loss = estimator.backward((x, y))
    """

    metrics = (ESTIMATOR_COSINE, ESTIMATOR_NORM_RATIO)  # and, per instance, the estimator's

    def __init__(self, estimator: GradientEstimator, every: int = 10) -> None:
        super().__init__(every)
        if not isinstance(estimator, GradientEstimator):
            raise TypeError(
                f"estimator must be a GradientEstimator, got {type(estimator).__name__}"
            )
        self.estimator = estimator
        self.metrics = (ESTIMATOR_COSINE, ESTIMATOR_NORM_RATIO, *estimator.metrics)

    def begin(self, step: int) -> None:
        self.estimator.compare_next = True

    def collect(self, step: int) -> Mapping[str, Value]:
        values, self.estimator.last = dict(self.estimator.last), {}
        self.estimator.compare_next = False
        return values
