"""Sharpness: the top eigenvalues of the loss Hessian (or GGN), by Lanczos, block Lanczos or power
iteration."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.curvature.block_krylov import block_lanczos
from steadygrad.curvature.hvp import CurvatureOperator, as_generator, build_objective, make_operator
from steadygrad.curvature.lanczos import WHICH, LanczosOutput, lanczos, power_iteration

METHODS = ("lanczos", "block", "power")


@dataclass
class SharpnessResult:
    """Top eigenvalues of a curvature matrix and what they cost.

    ``eigenvalues`` are ordered by ``which`` (largest algebraic first by default);
    ``residuals[i] = ||H y_i - eigenvalues[i] y_i||``; ``errors`` the estimated absolute
    eigenvalue errors; ``smallest`` the algebraically smallest Ritz value of the same Krylov space
    (a cheap estimate of lambda_min, accurate to about ``smallest_residual``); ``eigenvectors`` is
    ``(n, k)`` over the probed parameters, flat in ``param_names`` order, or None.
    """

    eigenvalues: torch.Tensor
    residuals: torch.Tensor
    errors: torch.Tensor
    matvecs: int
    converged: bool
    smallest: float
    smallest_residual: float
    gap: float
    method: str
    eigenvectors: torch.Tensor | None = None
    param_names: tuple[str, ...] = field(default_factory=tuple)

    @property
    def value(self) -> float:
        """The first eigenvalue (the sharpness)."""
        return float(self.eigenvalues[0])


def _result(out: LanczosOutput, method: str, names: tuple[str, ...], vectors: bool):
    return SharpnessResult(
        eigenvalues=torch.as_tensor(out.eigenvalues, dtype=torch.float64),
        residuals=torch.as_tensor(out.residuals, dtype=torch.float64),
        errors=torch.as_tensor(out.errors, dtype=torch.float64),
        matvecs=out.matvecs,
        converged=out.converged,
        smallest=out.smallest,
        smallest_residual=out.smallest_residual,
        gap=out.gap,
        method=method,
        eigenvectors=out.vectors if vectors else None,
        param_names=names,
    )


def _warm_vector(
    warm_start: Any, n: int, block: bool = False
) -> tuple[torch.Tensor | None, float | None]:
    """Start vector (or, for block Lanczos, the ``(n, j)`` block of previous vectors) and gap cap
    from a previous result or tensor."""
    if warm_start is None:
        return None, None
    if isinstance(warm_start, SharpnessResult):
        if warm_start.eigenvectors is None:
            raise ValueError("warm_start result has no eigenvectors: compute it with vectors")
        vecs, gap = warm_start.eigenvectors, warm_start.gap
    elif isinstance(warm_start, torch.Tensor):
        vecs, gap = warm_start, None
    else:
        raise TypeError("warm_start must be a SharpnessResult or a tensor")
    # The previous gap caps the gap estimate: with few Krylov vectors the Ritz gap is too
    # optimistic, and along a training run the top two eigenvalues can come close or cross (on
    # the edge-of-stability study, dropping the cap let 7% errors through).
    vecs = vecs.reshape(n, -1) if vecs.numel() % n == 0 else None
    if vecs is None:
        raise ValueError(f"warm_start vectors do not match the {n} probed parameters")
    # Several previous vectors: start from their sum, which has weight on each of them.
    v0 = vecs if block else vecs.sum(dim=1)
    gap = gap if gap is not None and np.isfinite(gap) and gap > 0 else None
    return v0, gap


def _gradient_start(op: Any, gen: torch.Generator) -> torch.Tensor | None:
    """The loss gradient plus a little noise, as a Lanczos start vector.

    Network gradients lie mostly in the top Hessian eigenspace (Gur-Ari et al. 2018), so this
    start converges in fewer products than a random one and is less likely to settle on the
    second eigenvalue; the noise keeps every direction represented.
    """
    g = getattr(op, "gradient", None)
    if g is None:
        return None
    norm = torch.linalg.vector_norm(g)
    if not torch.isfinite(norm) or norm == 0:
        return None
    # drawn in the gradient's dtype (float64 draws cost as much as a tenth of a product)
    noise = torch.randn(g.numel(), generator=gen, dtype=g.dtype).to(g.device)
    return g / norm + 0.3 * noise / torch.linalg.vector_norm(noise)


def run_eigensolver(
    op: CurvatureOperator,
    *,
    k: int,
    which: str,
    method: str,
    tol: float,
    max_matvecs: int | None,
    warm_start: Any,
    seed: int | torch.Generator | None,
    vectors: bool,
    matvec=None,
    names: tuple[str, ...] | None = None,
    start: str = "gradient",
    block_size: int | None = None,
) -> SharpnessResult:
    n = op.numel
    if k > n:
        raise ValueError(f"k={k} is larger than the number of probed parameters ({n})")
    v0, gap_hint = _warm_vector(warm_start, n, block=method == "block")
    gen = as_generator(0 if seed is None else seed)
    if start not in ("gradient", "random"):
        raise ValueError(f"start must be 'gradient' or 'random', got {start!r}")
    if v0 is None and start == "gradient":
        v0 = _gradient_start(op, gen)
    mv = matvec if matvec is not None else op.matvec
    krylov = {  # what the two Krylov methods share
        "k": k,
        "which": which,
        "tol": tol,
        "max_matvecs": max_matvecs if max_matvecs is not None else max(60, 10 * k),
        "v0": v0,
        "gap_hint": gap_hint,
        "dtype": op.dtype,
        "device": op.device,
        "generator": gen,
    }
    if method == "lanczos":
        out = lanczos(mv, n, **krylov)
    elif method == "block":
        if matvec is None:
            mm = op.matmat
        else:  # a custom product has no batched form: one product per row
            mm = lambda V: torch.stack([mv(v) for v in V])  # noqa: E731
        if block_size is not None:
            block_size = positive_int("block_size", block_size)
        out = block_lanczos(mm, n, block_size=block_size, want_vectors=vectors, **krylov)
    elif method == "power":
        if which != "LM":
            # power iteration finds the largest magnitude; say so instead of pretending
            which = "LM"
        out = power_iteration(
            mv,
            n,
            k=k,
            tol=tol,
            max_matvecs=max_matvecs if max_matvecs is not None else 200,
            v0=v0,
            dtype=op.dtype,
            device=op.device,
            generator=gen,
        )
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not out.converged:
        rel = float(out.errors[0] / max(abs(out.eigenvalues[0]), 1e-300))
        warnings.warn(
            f"sharpness: {method} stopped after {out.matvecs} products without reaching "
            f"tol={tol:g} (estimated relative error {rel:.2g})",
            RuntimeWarning,
            stacklevel=3,
        )
    return _result(out, method, names if names is not None else op.objective.names, vectors)


def sharpness(
    model: Any,
    loss_fn: Any,
    batch: Any,
    k: int = 1,
    *,
    which: str = "LA",
    method: str = "lanczos",
    tol: float = 1e-3,
    max_matvecs: int | None = None,
    warm_start: Any = None,
    start: str = "gradient",
    params: Any = None,
    engine: str = "retained",
    curvature: str = "hessian",
    vectors: bool = True,
    dropout: bool = False,
    seed: int | torch.Generator | None = 0,
    block_size: int | None = None,
) -> SharpnessResult:
    """Top-``k`` eigenvalues of the Hessian of ``loss_fn(model, batch)``.

    Largest algebraic first by default (``which="LA"``; ``"SA"`` smallest, ``"LM"`` largest
    magnitude). Lanczos with full reorthogonalisation stops when each wanted eigenvalue's
    estimated relative error is ``<= tol``; ``warm_start`` (a previous result or vector) usually
    cuts that to a few products. Without one, Lanczos starts from the loss gradient plus noise
    (``start="gradient"``, when the engine has the gradient at hand: the default retained
    engine) or from a random vector (``start="random"``). ``curvature="ggn"`` uses the
    Gauss-Newton matrix (``loss_fn`` must be an :class:`OutputLoss`). ``method="block"`` is
    block Lanczos: ``block_size`` (default ``k + 1``) vectors per batched product, each counted in
    ``matvecs``; it pays only where a batched product costs less than that many single ones (on
    one CPU thread it does not: ``bench/curvature.py``). ``method="power"`` is power iteration
    (largest magnitude), for comparison. Functional form:
    ``sharpness(f, params_dict, batch)`` with ``f(params, batch)`` a scalar loss.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> batch = (torch.randn(32, 4), torch.randn(32, 1))
        >>> loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> result = sharpness(model, loss_fn, batch)
        >>> result.value > 0, result.matvecs <= 5
        (True, True)
    """
    k = positive_int("k", k)
    tol = finite_float("tol", tol, low=0.0, low_open=True)
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if max_matvecs is not None:
        max_matvecs = positive_int("max_matvecs", max_matvecs)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    objective = build_objective(model, loss_fn, batch, params, dropout)
    if k > objective.numel:
        raise ValueError(
            f"k={k} is larger than the number of probed parameters ({objective.numel})"
        )
    with make_operator(objective, engine, curvature) as op:
        return run_eigensolver(
            op,
            k=k,
            which=which,
            method=method,
            tol=tol,
            max_matvecs=max_matvecs,
            warm_start=warm_start,
            seed=seed,
            vectors=vectors,
            start=start,
            block_size=block_size,
        )
