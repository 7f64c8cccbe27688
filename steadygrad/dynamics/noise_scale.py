"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish, Kaplan, Amodei et al. 2018).

G is the expected gradient and Sigma the covariance of per-example gradients; B_simple estimates
the critical batch size, beyond which a larger batch stops buying proportionally fewer steps. It
grows as training goes on and |G| shrinks. Two estimators:

* ``"per_example"``: from per-example gradients of the held batch, with the unbiased
  tr(Sigma) = sum_i ||g_i - g_mean||^2 / (m - 1) and |G|^2 = ||g_mean||^2 - tr(Sigma) / m;
* ``"two_batch"`` (the paper's App. A): since E||G_B||^2 = |G|^2 + tr(Sigma) / B, squared norms
  of gradients at a small batch B_s (here: disjoint chunks of the held batch) and at a big batch
  B_b (the whole held batch) give
  |G|^2 = (B_b ||G_b||^2 - B_s ||G_s||^2) / (B_b - B_s) and
  tr(Sigma) = (||G_s||^2 - ||G_b||^2) / (1/B_s - 1/B_b); only ordinary backward passes.

Each estimate is unbiased but their ratio is not, so the probe smooths numerator and denominator
separately (exponential moving averages) and reports the ratio of the averages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.metric import Metric
from steadygrad.curvature.objective import (
    _LossModule,
    _probe_state,
    check_finite_batch,
    select_parameters,
)
from steadygrad.dynamics._probe import DynamicsProbe
from steadygrad.dynamics.per_example import batch_size_of, per_example_gradients, subset

METHODS = ("per_example", "two_batch")

GRADIENT_NOISE_SCALE = Metric(
    "gradient_noise_scale",
    "B_simple = tr(Sigma) / |G|^2: the critical batch size estimate",
    unit="examples",
    scale="log",
    panel="gradient_noise_scale",
)
GRADIENT_NOISE_TRACE = Metric(
    "gradient_noise_trace",
    "tr(Sigma): total variance of the per-example gradients",
    scale="log",
    panel="gradient_noise_scale",
)
GRADIENT_MEAN_SQ_NORM = Metric(
    "gradient_mean_sq_norm",
    "|G|^2: squared norm of the expected gradient (unbiased estimate)",
    scale="log",
    panel="gradient_noise_scale",
)


@dataclass
class NoiseScale:
    """``value`` = ``trace / mean_sq_norm`` (inf when the |G|^2 estimate is not positive)."""

    value: float
    trace: float
    mean_sq_norm: float
    method: str
    passes: int  # per-example gradients, or backward passes for "two_batch"


def _ratio(trace: float, mean_sq_norm: float) -> float:
    return trace / mean_sq_norm if mean_sq_norm > 0 else math.inf


def noise_scale_from_norms(
    small_sq_norm: float, small_batch: int, big_sq_norm: float, big_batch: int
) -> NoiseScale:
    """The two-batch-size estimator from ||G_small||^2 at ``small_batch`` and ||G_big||^2 at
    ``big_batch`` examples (McCandlish et al. 2018, App. A).

    Example:
        >>> round(noise_scale_from_norms(3.0, 10, 1.2, 100).value, 3)
        20.0
    """
    b_s, b_b = positive_int("small_batch", small_batch), positive_int("big_batch", big_batch)
    if b_b <= b_s:
        raise ValueError(f"big_batch must exceed small_batch, got {b_b} <= {b_s}")
    g2 = (b_b * big_sq_norm - b_s * small_sq_norm) / (b_b - b_s)
    trace = (small_sq_norm - big_sq_norm) / (1 / b_s - 1 / b_b)
    return NoiseScale(_ratio(trace, g2), trace, g2, "two_batch", 0)


def noise_scale_from_gradients(grads: torch.Tensor | Mapping[str, torch.Tensor]) -> NoiseScale:
    """From per-example gradients: a ``(m, n)`` matrix or ``{name: (m, *shape)}`` (m >= 2),
    with the unbiased tr(Sigma) and |G|^2."""
    parts = [grads] if isinstance(grads, torch.Tensor) else list(grads.values())
    m = parts[0].shape[0]
    if m < 2:
        raise ValueError(f"the noise scale needs at least 2 examples, got {m}")
    trace = mean_sq = 0.0
    for g in parts:
        mean = g.mean(0)
        trace += float((g - mean).pow(2).sum().double()) / (m - 1)
        mean_sq += float(mean.double().pow(2).sum())
    g2 = mean_sq - trace / m
    return NoiseScale(_ratio(trace, g2), trace, g2, "per_example", m)


def _sq_norm_of_gradient(model: nn.Module, loss_fn: Any, batch: Any, params: dict) -> float:
    wrapper = _LossModule(model, loss_fn)
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = functional_call(wrapper, {"model." + k: v for k, v in leaves.items()}, (batch,))
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return float(sum(g.double().pow(2).sum() for g in grads if g is not None))


def gradient_noise_scale(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    *,
    method: str = "per_example",
    small_batch: int = 8,
    params: Any = None,
    chunk_size: int | None = None,
) -> NoiseScale:
    """B_simple = tr(Sigma) / |G|^2 on ``batch`` (``loss_fn`` must average over examples).

    ``method="per_example"`` uses one per-example gradient pass; ``"two_batch"`` compares the
    whole batch's gradient with those of disjoint chunks of ``small_batch`` examples.

    Example:
        >>> model = torch.nn.Linear(4, 1, bias=False)
        >>> batch = (torch.randn(256, 4), torch.randn(256, 1))
        >>> loss_fn = lambda m, b: 0.5 * ((m(b[0]) - b[1]) ** 2).mean()
        >>> b = gradient_noise_scale(model, loss_fn, batch)
        >>> b.trace > 0, b.method
        (True, 'per_example')
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "per_example":
        g = per_example_gradients(model, loss_fn, batch, params=params, chunk_size=chunk_size)
        return noise_scale_from_gradients(g.grads)
    small_batch = positive_int("small_batch", small_batch)
    check_finite_batch(batch)
    m = batch_size_of(batch)
    chunks = m // small_batch
    if chunks < 2:
        raise ValueError(
            f"small_batch={small_batch} leaves fewer than 2 chunks in a batch of {m} examples"
        )
    selected = select_parameters(model, params)
    with _probe_state(model, dropout=False), torch.enable_grad():
        big = _sq_norm_of_gradient(
            model, loss_fn, subset(batch, slice(0, chunks * small_batch)), selected
        )
        small = [
            _sq_norm_of_gradient(
                model,
                loss_fn,
                subset(batch, slice(i * small_batch, (i + 1) * small_batch)),
                selected,
            )
            for i in range(chunks)
        ]
    result = noise_scale_from_norms(sum(small) / chunks, small_batch, big, chunks * small_batch)
    result.passes = chunks + 1
    return result


class GradientNoiseScaleProbe(DynamicsProbe):
    """The gradient noise scale on a held batch every ``every`` steps, in a Monitor.

    ``smoothing`` is the weight of the past in the moving averages of tr(Sigma) and |G|^2 (0:
    report each probe's own ratio). A callable ``batch`` gives a fresh batch each time, which
    the averages then pool.

    Example:
        >>> loss_fn = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])
        >>> probe = GradientNoiseScaleProbe(loss_fn, (torch.randn(64, 8), torch.randint(0, 3, (64,))))
        >>> # Monitor(model, optimizer, run_dir, signals=[probe])
    """

    metrics = (GRADIENT_NOISE_SCALE, GRADIENT_NOISE_TRACE, GRADIENT_MEAN_SQ_NORM)

    def __init__(
        self,
        loss_fn: Any,
        batch: Any,
        every: int = 50,
        *,
        method: str = "per_example",
        small_batch: int = 8,
        smoothing: float = 0.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(loss_fn, batch, every)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.small_batch = positive_int("small_batch", small_batch)
        self.smoothing = finite_float("smoothing", smoothing, low=0.0, high=1.0, high_open=True)
        self.chunk_size = chunk_size
        self._trace: float | None = None
        self._g2: float | None = None

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else self.smoothing * old + (1 - self.smoothing) * new

    def measure_model(self, model: nn.Module, batch: Any) -> dict[str, float]:
        est = gradient_noise_scale(
            model,
            self.loss_fn,
            batch,
            method=self.method,
            small_batch=self.small_batch,
            chunk_size=self.chunk_size,
        )
        self._trace = self._average(self._trace, est.trace)
        self._g2 = self._average(self._g2, est.mean_sq_norm)
        return {
            GRADIENT_NOISE_SCALE.key(): _ratio(self._trace, self._g2),
            GRADIENT_NOISE_TRACE.key(): self._trace,
            GRADIENT_MEAN_SQ_NORM.key(): self._g2,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"trace": self._trace, "mean_sq_norm": self._g2}

    def load_state_dict(self, state: Any) -> None:
        self._trace, self._g2 = state.get("trace"), state.get("mean_sq_norm")
