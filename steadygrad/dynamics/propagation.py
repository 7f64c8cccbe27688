"""Signal propagation at initialisation: how the forward and backward signals change with depth.

In a wide random network (weights N(0, sigma_w^2 / fan_in), biases N(0, sigma_b^2)) the
pre-activation second moment of layer l follows the mean-field recursion (Poole et al. 2016;
Schoenholz et al. 2017)

    q^1 = sigma_w^2 mean(x^2) + sigma_b^2,    q^{l+1} = sigma_w^2 E[phi(sqrt(q^l) z)^2] + sigma_b^2,

and the back-propagated signal delta^l = dL/dh^l shrinks or grows by
chi = sigma_w^2 E[phi'(sqrt(q) z)^2] per layer (times the width ratio). At the fixed point q*,
chi_1 < 1 is the ordered phase (gradients vanish, inputs' correlations go to 1), chi_1 > 1 the
chaotic phase (gradients explode, correlations decay); chi_1 = 1 is the critical line, the edge
of chaos: for tanh without biases at sigma_w^2 = 1. ReLU networks have chi = sigma_w^2 / 2
(critical at He's sigma_w^2 = 2).

Measured on a model: the mean square of every Linear/Conv layer's output (the pre-activation)
on a batch, of the back-propagated gradient at that output for a random Gaussian read-out of the
network's output, and the singular values of the input-output Jacobian on a few examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.metric import Metric
from steadygrad.core.signal import Signal
from steadygrad.dynamics._probe import finite_weights

ACTIVATIONS = ("tanh", "relu", "linear")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

ACTIVATION_VARIANCE = Metric(
    "activation_variance",
    "mean square of a layer's output (pre-activation) on the held batch",
    per="module",
    scale="log",
    panel="signal_propagation",
)
BACKPROP_VARIANCE = Metric(
    "backprop_variance",
    "mean square of the gradient at a layer's output, for a random Gaussian read-out",
    per="module",
    scale="log",
    panel="signal_propagation",
)
JACOBIAN_SINGULAR_MAX = Metric(
    "jacobian_singular_max",
    "largest singular value of the input-output Jacobian",
    scale="log",
    panel="signal_propagation",
)
JACOBIAN_SINGULAR_MEAN_SQ = Metric(
    "jacobian_singular_mean_sq",
    "mean squared singular value of the input-output Jacobian",
    scale="log",
    panel="signal_propagation",
)


# -- the mean-field theory ---------------------------------------------------------------------
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(121)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()  # E[f(z)] for z ~ N(0, 1)


def _phi(activation: str, x: np.ndarray) -> np.ndarray:
    if activation == "tanh":
        return np.tanh(x)
    if activation == "relu":
        return np.maximum(x, 0.0)
    return x


def _dphi(activation: str, x: np.ndarray) -> np.ndarray:
    if activation == "tanh":
        return 1.0 - np.tanh(x) ** 2
    if activation == "relu":
        return (x > 0).astype(np.float64)
    return np.ones_like(x)


def _check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def _gauss(f: np.ndarray) -> float:
    return float(np.dot(_WEIGHTS, f))


def _second_moment(activation: str, q: float) -> float:
    """E[phi(sqrt(q) z)^2] for z ~ N(0, 1) (Gauss-Hermite for tanh; exact for relu, linear)."""
    if activation == "relu":
        return q / 2
    if activation == "linear":
        return q
    return _gauss(_phi(activation, math.sqrt(q) * _NODES) ** 2)


def _slope_moment(activation: str, q: float) -> float:
    """E[phi'(sqrt(q) z)^2] for z ~ N(0, 1)."""
    if activation == "relu":
        return 0.5
    if activation == "linear":
        return 1.0
    return _gauss(_dphi(activation, math.sqrt(q) * _NODES) ** 2)


@dataclass
class MeanField:
    """Predictions per layer (Linear 1..L): ``q[l]`` the output second moment, ``gradient[l]``
    the second moment of the back-propagated gradient at that output (1 at the last layer)."""

    q: list[float]
    gradient: list[float]


def mean_field_variances(
    sigma_w2: float,
    sigma_b2: float,
    widths: list[int],
    input_second_moment: float = 1.0,
    activation: str = "tanh",
) -> MeanField:
    """The mean-field recursion for an MLP with layer widths ``[n_in, n_1, ..., n_out]``.

    Example:
        >>> mf = mean_field_variances(1.0, 0.0, [100, 100, 100, 10], activation="linear")
        >>> mf.q, mf.gradient
        ([1.0, 1.0, 1.0], [0.1, 0.1, 1.0])
    """
    _check_activation(activation)
    sigma_w2 = finite_float("sigma_w2", sigma_w2, low=0.0, low_open=True)
    sigma_b2 = finite_float("sigma_b2", sigma_b2, low=0.0)
    if len(widths) < 2:
        raise ValueError("widths must hold the input width and at least one layer's width")
    q = [sigma_w2 * input_second_moment + sigma_b2]
    for _ in widths[2:]:
        q.append(sigma_w2 * _second_moment(activation, q[-1]) + sigma_b2)
    gradient = [1.0]
    for l in range(len(q) - 2, -1, -1):  # back through the hidden layers
        slope = _slope_moment(activation, q[l])
        gradient.insert(0, gradient[0] * sigma_w2 * widths[l + 2] / widths[l + 1] * slope)
    return MeanField(q, gradient)


def fixed_point(sigma_w2: float, sigma_b2: float, activation: str = "tanh") -> float:
    """q*: the pre-activation second moment a deep network settles at (by iteration)."""
    _check_activation(activation)
    if sigma_b2 == 0 and (activation != "tanh" or sigma_w2 <= 1):
        # phi(0) = 0: q = 0 is a fixed point, the attracting one for tanh when sigma_w^2 <= 1
        # (reached only as a power law, too slowly to iterate); relu and linear maps are
        # linear in q, so q* is 0 or undefined and only E[phi'^2] matters.
        return 0.0
    q = 1.0
    for _ in range(5000):
        new = sigma_w2 * _second_moment(activation, q) + sigma_b2
        if abs(new - q) <= 1e-13 * max(1.0, q):
            return new
        q = new
    return q


def chi(sigma_w2: float, sigma_b2: float, activation: str = "tanh") -> float:
    """chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]: per-layer gradient growth at the fixed point.

    Example:
        >>> round(chi(2.0, 0.0, "relu"), 6)
        1.0
    """
    q = fixed_point(sigma_w2, sigma_b2, activation)
    return sigma_w2 * _slope_moment(activation, q)


def critical_weight_variance(sigma_b2: float = 0.0, activation: str = "tanh") -> float:
    """The sigma_w^2 where chi_1 = 1 (the order-to-chaos transition), by bisection.

    Example:
        >>> round(critical_weight_variance(0.05, "tanh"), 2)  # Schoenholz et al. 2017: 1.76
        1.76
    """
    lo, hi = 0.05, 20.0
    if chi(lo, sigma_b2, activation) > 1 or chi(hi, sigma_b2, activation) < 1:
        raise ValueError(f"no order-to-chaos transition in [{lo}, {hi}] for {activation}")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if chi(mid, sigma_b2, activation) < 1 else (lo, mid)
    return 0.5 * (lo + hi)


def init_mean_field(
    model: nn.Module, sigma_w2: float, sigma_b2: float, generator: torch.Generator | None = None
) -> nn.Module:
    """Re-draw every Linear layer: weights N(0, sigma_w2 / fan_in), biases N(0, sigma_b2)."""
    sigma_w2 = finite_float("sigma_w2", sigma_w2, low=0.0, low_open=True)
    sigma_b2 = finite_float("sigma_b2", sigma_b2, low=0.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                w = torch.randn(m.weight.shape, generator=generator, dtype=torch.float64)
                m.weight.copy_(w * math.sqrt(sigma_w2 / m.in_features))
                if m.bias is not None:
                    b = torch.randn(m.bias.shape, generator=generator, dtype=torch.float64)
                    m.bias.copy_(b * math.sqrt(sigma_b2))
    return model


# -- measured on a model -----------------------------------------------------------------------
@dataclass
class Propagation:
    """Per layer (Linear/Conv modules in forward order): output and gradient second moments;
    ``jacobian_singular_values`` (examples, min(out, in)) when asked for."""

    layers: list[str]
    activation_variance: list[float]
    gradient_variance: list[float]
    jacobian_singular_values: torch.Tensor | None = None


def jacobian_singular_values(
    model: nn.Module, inputs: torch.Tensor, max_examples: int = 8
) -> torch.Tensor:
    """Singular values of d output / d input for the first ``max_examples`` inputs.

    Meant for small networks: the Jacobian is formed (outputs x inputs per example).
    """
    max_examples = positive_int("max_examples", max_examples)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = inputs[:max_examples].detach()

    def one(xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, params, (xi.unsqueeze(0),)).reshape(-1)

    with torch.enable_grad():
        jac = vmap(jacrev(one))(x)  # (examples, outputs, *input shape)
    return torch.linalg.svdvals(jac.reshape(jac.shape[0], jac.shape[1], -1).double())


def signal_propagation(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    jacobian: bool = False,
    max_examples: int = 8,
    seed: int = 0,
) -> Propagation:
    """Forward and backward second moments at each Linear/Conv layer's output on ``inputs``.

    The backward pass starts from a random N(0, 1) read-out of the output (so the last layer's
    gradient second moment is about 1). The model's ``.grad`` is left as it was.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        >>> p = signal_propagation(model, torch.randn(32, 8))
        >>> p.layers
        ['0', '2']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise TypeError("inputs must be a floating-point tensor")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _LAYERS)]
    if not layers:
        raise ValueError("model has no Linear or Conv layers to measure")
    outputs: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def keep(name: str):
        def hook(_module, _args, out):
            if name not in outputs:
                order.append(name)
            out.retain_grad()
            outputs[name] = out

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in layers]
    saved = {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}
    try:
        with torch.enable_grad():
            out = model(inputs.detach())
            gen = torch.Generator().manual_seed(int(seed))
            readout = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
            (out * readout).sum().backward()
    finally:
        for h in handles:
            h.remove()
        for k, p in model.named_parameters():
            p.grad = saved[k]
    act = [float(outputs[n].detach().double().pow(2).mean()) for n in order]
    grads = [
        float(outputs[n].grad.double().pow(2).mean()) if outputs[n].grad is not None else math.nan
        for n in order
    ]
    result = Propagation(order, act, grads)
    if jacobian:
        result.jacobian_singular_values = jacobian_singular_values(model, inputs, max_examples)
    return result


class SignalPropagationProbe(Signal):
    """Per-layer forward and backward second moments on held inputs, every ``every`` steps.

    Records ``activation_variance/<layer>``, ``backprop_variance/<layer>`` and, with
    ``jacobian=True`` (small networks), ``jacobian_singular_max`` and
    ``jacobian_singular_mean_sq``. ``inputs`` is a tensor or a zero-argument callable.

    Example:
        >>> probe = SignalPropagationProbe(torch.randn(64, 8), every=100, jacobian=True)
        >>> # Monitor(model, optimizer, run_dir, signals=[probe])
    """

    metrics = (
        ACTIVATION_VARIANCE,
        BACKPROP_VARIANCE,
        JACOBIAN_SINGULAR_MAX,
        JACOBIAN_SINGULAR_MEAN_SQ,
    )

    def __init__(
        self,
        inputs: Any,
        every: int = 100,
        *,
        jacobian: bool = False,
        max_examples: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__(every)
        self.inputs = inputs
        self.jacobian = bool(jacobian)
        self.max_examples = positive_int("max_examples", max_examples)
        self.seed = int(seed)

    def collect(self, step: int) -> dict[str, float]:
        import warnings

        model = self.monitor.model
        try:
            if not finite_weights(model):
                raise ValueError("the weights hold NaN or Inf")
            inputs = self.inputs() if callable(self.inputs) else self.inputs
            p = signal_propagation(
                model,
                inputs,
                jacobian=self.jacobian,
                max_examples=self.max_examples,
                seed=self.seed,
            )
        except Exception as exc:  # a probe never raises into the training loop
            warnings.warn(
                f"SignalPropagationProbe: skipped at step {step}: {type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
            return {}
        values = {
            ACTIVATION_VARIANCE.key(n): v
            for n, v in zip(p.layers, p.activation_variance, strict=True)
        }
        values.update(
            {
                BACKPROP_VARIANCE.key(n): v
                for n, v in zip(p.layers, p.gradient_variance, strict=True)
            }
        )
        if p.jacobian_singular_values is not None:
            s = p.jacobian_singular_values
            values[JACOBIAN_SINGULAR_MAX.key()] = float(s.max())
            values[JACOBIAN_SINGULAR_MEAN_SQ.key()] = float(s.pow(2).mean())
        return values
