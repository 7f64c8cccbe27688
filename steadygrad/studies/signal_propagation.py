"""Study: the order-to-chaos transition of deep tanh networks at initialisation (Poole et al.
2016; Schoenholz, Gilmer, Ganguli, Sohl-Dickstein 2017, "Deep information propagation").

Deep, wide tanh MLPs are drawn with weights N(0, sigma_w^2 / fan_in) and biases N(0, sigma_b^2)
over a range of sigma_w^2. For each, the back-propagated gradient's second moment is measured
at every layer (:func:`~steadygrad.dynamics.signal_propagation`) and its per-layer growth factor
compared with the mean-field chi_1 = sigma_w^2 E[tanh'(sqrt(q*) z)^2]. The published picture:
gradients vanish with depth in the ordered phase (chi_1 < 1) and explode in the chaotic phase
(chi_1 > 1); the transition sits at the critical sigma_w^2 where chi_1 = 1 (about 1.76 for
sigma_b^2 = 0.05). The input-output Jacobian's mean squared singular value of a narrower net
follows chi_1 to the power of the depth.

Example:
    >>> result = run_signal_propagation("out", progress=False)  # doctest: +SKIP
    >>> result.measured_critical, result.critical  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.dynamics.propagation import (
    chi,
    critical_weight_variance,
    fixed_point,
    init_mean_field,
    mean_field_variances,
    signal_propagation,
)
from steadygrad.models import MLP
from steadygrad.studies._results import save_result
from steadygrad.studies._threads import on_cpu_threads

DEFAULT_WEIGHT_VARIANCES = tuple(float(v) for v in np.round(np.linspace(0.8, 3.0, 12), 3))


@dataclass
class PropagationStudyResult:
    """Per sigma_w^2: the measured per-layer gradient growth (geometric mean over the hidden
    layers), the same growth predicted by the mean-field recursion for this depth and input
    (``predicted_growth``), chi_1 at the fixed point, the last hidden layer's activation second
    moment and q*;
    ``gradient_profiles`` the per-layer gradient second moments (index: layer);
    ``measured_critical`` / ``predicted_critical`` where the measured / predicted growth crosses
    1 (log-linear interpolation); ``critical`` where chi_1 = 1 (infinite depth)."""

    config: dict
    weight_variances: list[float]
    measured_growth: list[float]
    predicted_growth: list[float]
    mean_field_chi: list[float]
    last_activation: list[float]
    fixed_point: list[float]
    jacobian_mean_sq: list[float]
    gradient_profiles: list[list[float]]
    critical: float
    measured_critical: float | None
    predicted_critical: float | None
    seconds: float
    plot_path: Path | None = None

    def summary(self) -> str:
        measured = (
            "none in range" if self.measured_critical is None else (f"{self.measured_critical:.3f}")
        )
        return (
            f"signal-propagation study (tanh, sigma_b^2 = {self.config['sigma_b2']}, depth "
            f"{self.config['depth']}, width {self.config['width']}): gradients stop vanishing "
            f"and start exploding at sigma_w^2 = {measured}; mean-field critical value "
            f"{self.critical:.3f}; {self.seconds:.0f} s"
        )


def _crossing(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Where log(y) crosses 0, interpolating linearly in x between the bracketing points."""
    logs = np.log(np.asarray(y))
    for i in range(len(x) - 1):
        if logs[i] < 0 <= logs[i + 1]:
            t = -logs[i] / (logs[i + 1] - logs[i])
            return float(x[i] + t * (x[i + 1] - x[i]))
    return None


@on_cpu_threads
def run_signal_propagation(
    out_dir: str | Path,
    weight_variances: Sequence[float] = DEFAULT_WEIGHT_VARIANCES,
    *,
    sigma_b2: float = 0.05,
    width: int = 512,
    depth: int = 30,
    examples: int = 64,
    jacobian_width: int = 48,
    jacobian_depth: int = 10,
    seed: int = 0,
    progress: bool = True,
    plot: bool = True,
    num_threads: int | None = 1,
) -> PropagationStudyResult:
    """Measure gradient growth against sigma_w^2; write ``signal_propagation.json`` (+ png)."""
    if not weight_variances:
        raise ValueError("weight_variances must hold at least one value")
    variances = [
        finite_float("weight_variances", v, low=0.0, low_open=True) for v in weight_variances
    ]
    sigma_b2 = finite_float("sigma_b2", sigma_b2, low=0.0)
    width, depth = positive_int("width", width), positive_int("depth", depth)
    if depth < 3:
        raise ValueError(f"depth must be >= 3 to measure a per-layer growth, got {depth}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(positive_int("examples", examples), width, generator=gen)
    x_small = torch.randn(8, jacobian_width, generator=gen)
    growth, predicted, chis, last, qstar, jac, profiles = [], [], [], [], [], [], []
    second_moment = float(x.double().pow(2).mean())
    for s2 in variances:
        model = init_mean_field(
            MLP(width, [width] * depth, width, activation=torch.nn.Tanh), s2, sigma_b2, gen
        )
        p = signal_propagation(model, x)
        g = np.asarray(p.gradient_variance)
        # hidden layers only: the first sees the input's variance, the last the read-out's
        growth.append(float((g[1] / g[depth - 1]) ** (1 / (depth - 2))))
        mf = mean_field_variances(s2, sigma_b2, [width] * (depth + 2), second_moment, "tanh")
        predicted.append(float((mf.gradient[1] / mf.gradient[depth - 1]) ** (1 / (depth - 2))))
        chis.append(chi(s2, sigma_b2, "tanh"))
        last.append(p.activation_variance[depth - 1])
        qstar.append(fixed_point(s2, sigma_b2, "tanh"))
        profiles.append(g.tolist())
        small = init_mean_field(
            MLP(
                jacobian_width,
                [jacobian_width] * jacobian_depth,
                jacobian_width,
                activation=torch.nn.Tanh,
            ),
            s2,
            sigma_b2,
            gen,
        )
        p_small = signal_propagation(small, x_small, jacobian=True)
        jac.append(float(p_small.jacobian_singular_values.pow(2).mean()))
        if progress:
            print(
                f"[signal-propagation] sigma_w^2 {s2:.3f}: growth per layer {growth[-1]:.3f}, "
                f"mean field {chis[-1]:.3f}",
                flush=True,
            )
    result = PropagationStudyResult(
        config=dict(
            sigma_b2=sigma_b2,
            width=width,
            depth=depth,
            examples=examples,
            jacobian_width=jacobian_width,
            jacobian_depth=jacobian_depth,
            seed=seed,
        ),
        weight_variances=variances,
        measured_growth=growth,
        predicted_growth=predicted,
        mean_field_chi=chis,
        last_activation=last,
        fixed_point=qstar,
        jacobian_mean_sq=jac,
        gradient_profiles=profiles,
        critical=critical_weight_variance(sigma_b2, "tanh"),
        measured_critical=_crossing(variances, growth),
        predicted_critical=_crossing(variances, predicted),
        seconds=time.perf_counter() - started,
    )
    return save_result(result, out, "signal_propagation", _plot, plot, progress)


def _plot(result: PropagationStudyResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    v = result.weight_variances
    left.plot(v, result.measured_growth, "o", label="measured gradient growth per layer")
    left.plot(v, result.predicted_growth, "x", label="mean-field recursion, this depth")
    left.plot(v, result.mean_field_chi, "-", label="mean-field chi_1 (fixed point)")
    depth = result.config["jacobian_depth"]
    left.plot(
        v,
        [j ** (1 / (depth + 1)) for j in result.jacobian_mean_sq],
        "^",
        ms=4,
        label=f"Jacobian mean sq. singular value^(1/{depth + 1}) (width "
        f"{result.config['jacobian_width']})",
    )
    left.axhline(1.0, color="grey", ls="--", lw=0.8)
    left.axvline(result.critical, color="grey", ls=":", lw=1)
    left.set_yscale("log")
    left.set_xlabel("sigma_w^2")
    left.legend(fontsize=7)
    left.set_title("order (< 1) to chaos (> 1)")
    for i in (0, len(v) // 2, len(v) - 1):
        right.semilogy(result.gradient_profiles[i], label=f"sigma_w^2 = {v[i]:g}")
    right.set_xlabel("layer")
    right.set_ylabel("back-propagated gradient second moment")
    right.legend(fontsize=8)
    fig.suptitle(
        f"tanh MLP at initialisation, sigma_b^2 = {result.config['sigma_b2']}, "
        f"critical sigma_w^2 = {result.critical:.2f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
