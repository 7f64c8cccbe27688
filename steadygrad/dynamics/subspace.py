"""Gradient descent happens in a tiny subspace (Gur-Ari, Roberts, Dyer 2018).

After a short transient the loss gradient lies mostly in the span of the top-k Hessian
eigenvectors (k about the number of classes), and that span changes slowly. Measured here with
the curvature package's Lanczos engine on one retained gradient graph:

* ``gradient_fraction`` = ||P_k g||^2 / ||g||^2, P_k the projector on the top-k eigenvectors;
* ``overlap`` with an earlier probe's subspace = ||V_prev^T V||_F^2 / k = tr(P_prev P) / k
  (1: the same subspace, about k / n for unrelated random ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.metric import Metric
from steadygrad.curvature.eigensolver import run_eigensolver
from steadygrad.curvature.hvp import build_objective, make_operator
from steadygrad.dynamics._probe import DynamicsProbe

GRADIENT_TOP_SUBSPACE_FRACTION = Metric(
    "gradient_top_subspace_fraction",
    "||P_k g||^2 / ||g||^2: share of the gradient in the top-k Hessian eigenspace",
    unit="fraction",
    panel="top_subspace",
)
TOP_SUBSPACE_OVERLAP = Metric(
    "top_subspace_overlap",
    "tr(P_prev P) / k: overlap of the top-k Hessian eigenspace with the previous probe's",
    unit="fraction",
    panel="top_subspace",
)
TOP_SUBSPACE_MATVECS = Metric(
    "top_subspace_matvecs",
    "Hessian-vector products the top-subspace probe used",
    unit="count",
    panel="cost",
)


@dataclass
class TopSubspace:
    """The top-k eigenpairs, the gradient's share in their span, and the overlap with
    ``previous`` (None without one). ``eigenvectors`` is ``(n, k)`` with orthonormal columns."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    gradient_fraction: float
    overlap: float | None
    matvecs: int
    converged: bool
    param_names: tuple[str, ...] = field(default_factory=tuple)

    @property
    def k(self) -> int:
        return self.eigenvectors.shape[1]


def subspace_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """||A^T B||_F^2 / k for two ``(n, k)`` orthonormal bases (1 when they span the same space).

    Example:
        >>> e = torch.eye(4)
        >>> subspace_overlap(e[:, :2], e[:, 1:3])
        0.5
    """
    if a.shape != b.shape:
        raise ValueError(
            f"subspaces must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return float((a.double().T @ b.double()).pow(2).sum() / a.shape[1])


def gradient_fraction(basis: torch.Tensor, gradient: torch.Tensor) -> float:
    """||V^T g||^2 / ||g||^2 for an orthonormal ``basis`` V (0 for a zero gradient)."""
    g = gradient.double()
    norm2 = float(g.pow(2).sum())
    return float((basis.double().T @ g).pow(2).sum()) / norm2 if norm2 > 0 else 0.0


def top_subspace_overlap(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    k: int = 10,
    *,
    previous: TopSubspace | torch.Tensor | None = None,
    tol: float = 1e-3,
    max_matvecs: int | None = None,
    params: Any = None,
    engine: str = "retained",
    seed: int = 0,
) -> TopSubspace:
    """The share of the gradient of ``loss_fn`` on ``batch`` in the top-``k`` Hessian eigenspace,
    and that eigenspace's overlap with ``previous`` (an earlier result or ``(n, k)`` basis).

    Lanczos warm-starts from ``previous`` (usually fewer products when the subspace is slow).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> batch = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> loss_fn = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])
        >>> first = top_subspace_overlap(model, loss_fn, batch, k=3)
        >>> again = top_subspace_overlap(model, loss_fn, batch, k=3, previous=first)
        >>> 0 <= first.gradient_fraction <= 1, round(again.overlap, 3)
        (True, 1.0)
    """
    k = positive_int("k", k)
    tol = finite_float("tol", tol, low=0.0, low_open=True)
    prev = previous.eigenvectors if isinstance(previous, TopSubspace) else previous
    if prev is not None and not isinstance(prev, torch.Tensor):
        raise TypeError("previous must be a TopSubspace or an (n, k) tensor")
    objective = build_objective(model, loss_fn, batch, params)
    if k > objective.numel:
        raise ValueError(
            f"k={k} is larger than the number of probed parameters ({objective.numel})"
        )
    if prev is not None and prev.shape != (objective.numel, k):
        raise ValueError(
            f"previous holds a basis of shape {tuple(prev.shape)}, expected "
            f"({objective.numel}, {k})"
        )
    with make_operator(objective, engine) as op:
        result = run_eigensolver(
            op,
            k=k,
            which="LA",
            method="lanczos",
            tol=tol,
            max_matvecs=max_matvecs if max_matvecs is not None else max(80, 12 * k),
            warm_start=prev,
            seed=seed,
            vectors=True,
        )
        gradient = op.gradient
        matvecs = op.matvecs
    # Ritz vectors from a fully reorthogonalised basis are orthonormal up to rounding; QR makes
    # the projector exact.
    basis, _ = torch.linalg.qr(result.eigenvectors.double())
    return TopSubspace(
        eigenvalues=result.eigenvalues,
        eigenvectors=basis.to(result.eigenvectors.dtype),
        gradient_fraction=gradient_fraction(basis, gradient),
        overlap=None if prev is None else subspace_overlap(prev, basis),
        matvecs=matvecs,
        converged=result.converged,
        param_names=objective.names,
    )


class TopSubspaceProbe(DynamicsProbe):
    """Gradient share in the top-k Hessian eigenspace, every ``every`` steps, in a Monitor.

    Records ``gradient_top_subspace_fraction``, ``top_subspace_overlap`` (with the previous
    probe's subspace, from the second probe on) and ``top_subspace_matvecs``.

    Example:
        >>> loss_fn = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])
        >>> probe = TopSubspaceProbe(loss_fn, (torch.randn(64, 8), torch.randint(0, 3, (64,))), k=3)
        >>> # Monitor(model, optimizer, run_dir, signals=[probe])
    """

    metrics = (GRADIENT_TOP_SUBSPACE_FRACTION, TOP_SUBSPACE_OVERLAP, TOP_SUBSPACE_MATVECS)

    def __init__(
        self,
        loss_fn: Any,
        batch: Any,
        every: int = 50,
        *,
        k: int = 10,
        tol: float = 1e-3,
        max_matvecs: int | None = None,
    ) -> None:
        super().__init__(loss_fn, batch, every)
        self.k = positive_int("k", k)
        self.tol = finite_float("tol", tol, low=0.0, low_open=True)
        self.max_matvecs = max_matvecs
        self.previous: TopSubspace | None = None

    def measure_model(self, model: nn.Module, batch: Any) -> dict[str, float]:
        import warnings

        with warnings.catch_warnings():
            # an unconverged trailing eigenvalue still gives a good subspace for this purpose
            warnings.simplefilter("ignore", RuntimeWarning)
            result = top_subspace_overlap(
                model,
                self.loss_fn,
                batch,
                self.k,
                previous=self.previous,
                tol=self.tol,
                max_matvecs=self.max_matvecs,
            )
        self.previous = result
        values = {
            GRADIENT_TOP_SUBSPACE_FRACTION.key(): result.gradient_fraction,
            TOP_SUBSPACE_MATVECS.key(): float(result.matvecs),
        }
        if result.overlap is not None:
            values[TOP_SUBSPACE_OVERLAP.key()] = result.overlap
        return values
