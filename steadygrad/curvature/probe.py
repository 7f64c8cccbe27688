"""SharpnessProbe: curvature against the optimizer's stability limit, every N steps, in a Monitor.

Each due step it measures, on a held batch, the sharpness (warm-started from the previous
eigenvector, so a re-estimate usually costs a handful of products), the limit for the Monitor's
optimizer, optionally the Hessian trace, per-layer sharpness, and for Adam-family optimizers the
preconditioned sharpness against (2 + 2 beta1) / ((1 - beta1) lr).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.metrics import (
    CURVATURE_MATVECS,
    HESSIAN_EIGENVALUE,
    HESSIAN_MIN_EIGENVALUE,
    HESSIAN_TRACE,
    HESSIAN_TRACE_LIMIT,
    HESSIAN_TRACE_RATIO,
    PRECONDITIONED_SHARPNESS,
    PRECONDITIONED_SHARPNESS_LIMIT,
    PRECONDITIONED_SHARPNESS_RATIO,
    SHARPNESS,
    SHARPNESS_LIMIT,
    SHARPNESS_RATIO,
)
from steadygrad.core.signal import Signal, random_state_kept
from steadygrad.curvature.eigensolver import SharpnessResult, sharpness
from steadygrad.curvature.layerwise import layerwise_curvature
from steadygrad.curvature.margin import optimizer_parameters, stability_limits, stability_margin


class SharpnessProbe(Signal):
    """Curvature probe for ``Monitor(..., signals=[SharpnessProbe(loss_fn, batch, every=100)])``.

    ``batch`` is the held batch (or a zero-argument callable returning it); ``loss_fn(model,
    batch)`` returns the scalar loss. Metrics: ``sharpness``, ``sharpness_limit``,
    ``sharpness_ratio``, ``hessian_min_eigenvalue``, ``curvature_matvecs``, and as applicable
    ``hessian_trace`` (+ ``hessian_trace_limit`` and ``hessian_trace_ratio``, SGD's criterion
    tr(H) <= 2/lr), ``preconditioned_sharpness``,
    ``preconditioned_sharpness_limit``, ``preconditioned_sharpness_ratio``,
    ``hessian_eigenvalue/2..k`` and ``sharpness/<module>`` (``layerwise=True``).

    Example:
        >>> loss_fn = lambda m, b: m(b[0]).pow(2).mean()
        >>> probe = SharpnessProbe(loss_fn, (torch.randn(8, 3),), every=50)
        >>> # Monitor(model, optimizer, run_dir, signals=[probe])
    """

    metrics = (
        SHARPNESS,
        SHARPNESS_LIMIT,
        SHARPNESS_RATIO,
        HESSIAN_MIN_EIGENVALUE,
        HESSIAN_EIGENVALUE,
        HESSIAN_TRACE,
        HESSIAN_TRACE_LIMIT,
        HESSIAN_TRACE_RATIO,
        PRECONDITIONED_SHARPNESS,
        PRECONDITIONED_SHARPNESS_LIMIT,
        PRECONDITIONED_SHARPNESS_RATIO,
        CURVATURE_MATVECS,
    )

    def __init__(
        self,
        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
        batch: Any,
        every: int = 100,
        *,
        k: int = 1,
        trace: bool = False,
        trace_matvecs: int = 30,
        layerwise: bool = False,
        preconditioned: bool = True,
        tol: float = 1e-3,
        max_matvecs: int | None = None,
        engine: str = "retained",
    ) -> None:
        super().__init__(every)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.loss_fn = loss_fn
        self.batch = batch
        self.k = positive_int("k", k)
        self.trace = bool(trace)
        self.trace_matvecs = positive_int("trace_matvecs", trace_matvecs)
        self.layerwise = bool(layerwise)
        self.preconditioned = bool(preconditioned)
        self.tol = finite_float("tol", tol, low=0.0, low_open=True)
        self.max_matvecs = max_matvecs
        self.engine = engine
        self.previous: SharpnessResult | None = None
        self.previous_preconditioned: SharpnessResult | None = None

    def _batch(self) -> Any:
        return self.batch() if callable(self.batch) else self.batch

    def collect(self, step: int) -> Mapping[str, float]:
        if self.monitor is None:
            raise RuntimeError("SharpnessProbe.collect called before attach(monitor)")
        try:
            with random_state_kept(self.monitor.model):  # the loss may draw (dropout)
                return self._measure(step)
        except Exception as exc:  # a probe never raises into the training loop
            warnings.warn(
                f"SharpnessProbe: skipped at step {step}: {type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
            return {}

    def _measure(self, step: int) -> dict[str, float]:
        model = self.monitor.model
        optimizer = getattr(self.monitor, "optimizer", None)
        batch = self._batch()
        limits = None
        if optimizer is not None:
            try:
                limits = stability_limits(optimizer)
            except (TypeError, ValueError):
                limits = None  # unknown optimizer or mixed groups: measure without a limit
        if limits is not None:
            names = set(optimizer_parameters(model, optimizer))
            # Adam's preconditioner exists only after its first step.
            adam_ready = all(
                "exp_avg_sq" in optimizer.state.get(p, {})
                for n, p in model.named_parameters()
                if n in names
            )
            margin = stability_margin(
                model,
                self.loss_fn,
                batch,
                optimizer,
                k=self.k,
                preconditioned=self.preconditioned and adam_ready,
                trace=self.trace,
                trace_matvecs=self.trace_matvecs,
                tol=self.tol,
                max_matvecs=self.max_matvecs,
                warm_start=self.previous,
                preconditioned_warm_start=self.previous_preconditioned,
                engine=self.engine,
            )
            self.previous = margin.sharpness_result
            self.previous_preconditioned = margin.preconditioned_result
            metrics = margin.as_metrics()
        else:
            result = sharpness(
                model,
                self.loss_fn,
                batch,
                k=self.k,
                tol=self.tol,
                max_matvecs=self.max_matvecs,
                warm_start=self.previous,
                engine=self.engine,
            )
            self.previous = result
            metrics = {
                SHARPNESS.name: result.value,
                HESSIAN_MIN_EIGENVALUE.name: result.smallest,
                CURVATURE_MATVECS.name: float(result.matvecs),
            }
            for i, ev in enumerate(result.eigenvalues.tolist()[1:], start=2):
                metrics[HESSIAN_EIGENVALUE.key(i)] = ev
        if self.layerwise:
            per = layerwise_curvature(model, self.loss_fn, batch, tol=self.tol, trace_matvecs=0)
            for block, value in per.sharpness.items():
                metrics[SHARPNESS.key(block)] = value
            metrics[CURVATURE_MATVECS.name] += per.matvecs
        return metrics
