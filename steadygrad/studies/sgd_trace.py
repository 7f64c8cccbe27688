"""Study: SGD's Hessian trace settles at or below 2/lr (Wu, Ma, E 2018, "How SGD selects the
global minima in over-parameterized learning"; Wu and Su 2023, "The implicit regularization of
dynamical stability in stochastic gradient descent").

A diagonal linear network f(x) = sum_j u_j v_j x_j (one of the two models Wu and Su analyse) is
fitted to an over-parameterised sparse regression problem (``dimensions`` > ``samples``, so
there is a whole manifold of interpolating minima, of very different curvature) from a large
balanced initialisation, once by SGD with batch size 1 and once by full-batch GD at the same
learning rate, with a :class:`~steadygrad.SharpnessProbe` (``trace=True``) in the Monitor. Linear
stability bounds different things for the two: GD only needs sharpness <= 2/lr, SGD's noise also
has to stay bounded, which requires tr(H) <= 2/lr. The published picture: SGD settles in a
minimum with tr(H) at or below 2/lr; GD stops at a minimum whose trace stays above 2/lr while its
top eigenvalue is below it.

``model="mlp"`` runs the same comparison on a small nonlinear network: a tanh MLP
4-32-32-1 fitted to ``samples`` points of a smooth target ``sin(x . w)`` (square loss), where
no closed form picks the minimum. There GD drifts to the edge of stability (top eigenvalue at
2/lr) with tr(H) well above 2/lr, while SGD with batch 1 settles below 2/lr.

The criterion, exactly: at an interpolating minimum of the half square loss, whose Hessian is
H = mean_i grad f_i grad f_i^T, mean-square linear stability of SGD with batch size 1 needs
tr(H) <= 2/lr (Wu and Su 2023; exact when all per-example gradients have the same norm, in
general a necessary condition in their loss-stability sense). With batch size B (without
replacement, n examples) the noise term is scaled by p = (n - B) / (B (n - 1)) (Mulayoff and
Michaeli 2023), so the bound loosens to about (1 - p) lambda_max + p tr(H) <= 2/lr, that is
tr(H) <~ 2B/lr for small batches; p = 0 for GD leaves lambda_max <= 2/lr.

Example:
    >>> result = run_sgd_trace("out", steps=600, progress=False)  # doctest: +SKIP
    >>> result.trace_ratio  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.metrics import HESSIAN_TRACE, HESSIAN_TRACE_LIMIT, SHARPNESS, SHARPNESS_LIMIT
from steadygrad.curvature.probe import SharpnessProbe
from steadygrad.studies._monitored import train_monitored
from steadygrad.studies._results import save_result
from steadygrad.studies._threads import on_cpu_threads


class DiagonalLinear(nn.Module):
    """f(x) = sum_j u_j v_j x_j, both factors starting at ``scale``."""

    def __init__(self, dimensions: int, scale: float) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.full((dimensions,), float(scale), dtype=torch.float64))
        self.v = nn.Parameter(torch.full((dimensions,), float(scale), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.u * self.v)


def sparse_regression(
    samples: int, dimensions: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs, targets from a 3-sparse linear teacher, no noise (so minima interpolate)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, dimensions, generator=gen, dtype=torch.float64)
    teacher = torch.zeros(dimensions, dtype=torch.float64)
    teacher[:3] = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    return x, x @ teacher


def smooth_regression(
    samples: int, dimensions: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs, targets sin(x . w) for a Gaussian w, shaped ``(samples, 1)``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, dimensions, generator=gen, dtype=torch.float64)
    w = torch.randn(dimensions, generator=gen, dtype=torch.float64)
    return x, torch.sin(x @ w).unsqueeze(1)


def tanh_mlp(dimensions: int, width: int, seed: int) -> nn.Module:
    """A float64 tanh MLP ``dimensions``-``width``-``width``-1 (PyTorch's default init)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(dimensions, width),
        nn.Tanh(),
        nn.Linear(width, width),
        nn.Tanh(),
        nn.Linear(width, 1),
    ).double()


_MODELS = ("diagonal", "mlp")
# per model: lr, steps, samples, dimensions (the diagonal net needs dimensions > samples)
_DEFAULTS = {"diagonal": (0.008, 3000, 40, 200), "mlp": (0.2, 4000, 20, 4)}


def half_square(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return 0.5 * ((model(batch[0]) - batch[1]) ** 2).mean()


@dataclass
class SgdTraceResult:
    """Per variant (``"sgd"``: batch 1, ``"gd"``: full batch): probed steps, Hessian trace,
    sharpness and final loss;
    ``trace_ratio`` and ``sharpness_ratio`` are the means of value / (2/lr) over the last
    ``tail`` of the probes."""

    config: dict
    limit: float = 0.0
    steps: dict[str, list[int]] = field(default_factory=dict)
    trace: dict[str, list[float]] = field(default_factory=dict)
    sharpness: dict[str, list[float]] = field(default_factory=dict)
    trace_ratio: dict[str, float] = field(default_factory=dict)
    sharpness_ratio: dict[str, float] = field(default_factory=dict)
    final_loss: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    plot_path: Path | None = None

    def summary(self) -> str:
        lines = [f"SGD-trace study (lr {self.config['lr']}, 2/lr = {self.limit:.3g}):"]
        for v in self.steps:
            lines.append(
                f"  {v:3s} (batch {self.config['batch_sizes'][v]:3d}): tr(H)/(2/lr) = "
                f"{self.trace_ratio[v]:.2f}, sharpness/(2/lr) = {self.sharpness_ratio[v]:.2f}, "
                f"final loss {self.final_loss[v]:.4f}"
            )
        return "\n".join(lines)


@on_cpu_threads
def run_sgd_trace(
    out_dir: str | Path,
    lr: float | None = None,
    steps: int | None = None,
    *,
    model: str = "diagonal",
    samples: int | None = None,
    dimensions: int | None = None,
    width: int = 32,
    scale: float = 1.0,
    probe_every: int = 250,
    trace_matvecs: int = 60,
    tail: float = 0.3,
    seed: int = 0,
    progress: bool = True,
    plot: bool = True,
    num_threads: int | None = 1,
) -> SgdTraceResult:
    """Train by SGD (batch 1) and by GD at ``lr``; write ``sgd_trace.json`` (+ png) and the run
    stores under ``out_dir/runs``. ``model``: ``"diagonal"`` (diagonal linear network on sparse
    regression) or ``"mlp"`` (tanh MLP on a smooth regression); ``lr``, ``steps``, ``samples``
    and ``dimensions`` default per model."""
    if model not in _MODELS:
        raise ValueError(f"model must be one of {_MODELS}, got {model!r}")
    d_lr, d_steps, d_samples, d_dims = _DEFAULTS[model]
    lr = finite_float("lr", d_lr if lr is None else lr, low=0.0, low_open=True)
    steps = d_steps if steps is None else steps
    samples = d_samples if samples is None else samples
    dimensions = d_dims if dimensions is None else dimensions
    width = positive_int("width", width)
    steps, samples = positive_int("steps", steps), positive_int("samples", samples)
    dimensions = positive_int("dimensions", dimensions)
    scale = finite_float("scale", scale, low=0.0, low_open=True)
    tail = finite_float("tail", tail, low=0.0, high=1.0, low_open=True)
    sizes = {"sgd": 1, "gd": samples}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if model == "mlp":
        train = smooth_regression(samples, dimensions, seed)
        described = f"tanh MLP {dimensions}-{width}-{width}-1 on sin(x . w)"
    else:
        train = sparse_regression(samples, dimensions, seed)
        described = "diagonal linear network x -> x.(u*v)"
    result = SgdTraceResult(
        config=dict(
            lr=lr,
            steps=steps,
            batch_sizes=sizes,
            samples=samples,
            dimensions=dimensions,
            scale=scale,
            probe_every=probe_every,
            trace_matvecs=trace_matvecs,
            tail=tail,
            seed=seed,
            model=described,
            loss="half square",
        )
    )
    for variant, batch_size in sizes.items():
        net = (
            tanh_mlp(dimensions, width, seed)
            if model == "mlp"
            else DiagonalLinear(dimensions, scale)
        )
        optimizer = torch.optim.SGD(net.parameters(), lr=lr)
        probe = SharpnessProbe(
            half_square,
            train,
            every=positive_int("probe_every", probe_every),
            trace=True,
            trace_matvecs=positive_int("trace_matvecs", trace_matvecs),
        )
        run = train_monitored(
            out / "runs" / variant,
            net,
            optimizer,
            train,
            steps=steps,
            batch_size=batch_size,
            signals=[probe],
            loss_fn=half_square,
            seed=seed,
        )
        probed, trace = run.series(HESSIAN_TRACE.key())
        _, limit = run.series(HESSIAN_TRACE_LIMIT.key())
        _, sharp = run.series(SHARPNESS.key())
        _, sharp_limit = run.series(SHARPNESS_LIMIT.key())
        last = slice(int(len(trace) * (1 - tail)), None)
        result.limit = float(limit[-1])
        result.steps[variant] = probed.astype(int).tolist()
        result.trace[variant] = trace.tolist()
        result.sharpness[variant] = sharp.tolist()
        result.trace_ratio[variant] = float(np.mean(trace[last] / limit[last]))
        result.sharpness_ratio[variant] = float(np.mean(sharp[last] / sharp_limit[last]))
        result.final_loss[variant] = float(half_square(net, train).detach())
        if progress:
            print(
                f"[sgd-trace] {variant}: tr(H)/(2/lr) {result.trace_ratio[variant]:.2f}",
                flush=True,
            )
    result.seconds = time.perf_counter() - started
    return save_result(result, out, "sgd_trace", _plot, plot, progress)


def _plot(result: SgdTraceResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, v in enumerate(result.steps):
        b = result.config["batch_sizes"][v]
        ax.plot(
            result.steps[v],
            result.trace[v],
            "o-",
            color=f"C{i}",
            ms=3,
            label=f"{v.upper()} (batch {b}): tr(H)",
        )
        ax.plot(
            result.steps[v],
            result.sharpness[v],
            "s:",
            color=f"C{i}",
            ms=3,
            label=f"{v.upper()} (batch {b}): top eigenvalue",
        )
    ax.axhline(result.limit, color="grey", ls="--", lw=1, label="2/lr")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    name = "Tanh MLP" if result.config["model"].startswith("tanh") else "Diagonal linear network"
    ax.set_title(f"{name} at lr {result.config['lr']}: SGD keeps tr(H) <= 2/lr")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
