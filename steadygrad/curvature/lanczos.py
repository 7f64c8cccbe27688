"""Lanczos with full reorthogonalisation, and power iteration for comparison.

Both work on any symmetric ``matvec`` over flat vectors and stop on an error estimate:
for a Ritz pair (theta, y) with residual r = ||A y - theta y||, the eigenvalue error is at most r,
and at most r^2 / gap when the Ritz value is separated from the rest of the spectrum by ``gap``
(Kahan-Parlett-Jiang). The gap is estimated from the nearest other Ritz value, shrunk by that
Ritz value's own residual (early on it may still be far from the eigenvalue it approximates, and
an optimistic gap would stop too soon), and optionally capped by a gap known from a previous
estimate. The estimate is ``min(r, r^2 / gap)``, or ``r`` when no positive gap is known. As a
second guard against an early, optimistic gap, Lanczos also requires the wanted Ritz values to
have *settled*: moved by at most ``tol`` (relative) in the last step, or (one wanted eigenvalue
only) moved by a step less than a tenth of the step before whose geometric continuation (the
rest of the move, were it to shrink at that rate) is at most ``tol``. The second form estimates
the remaining error independently of the gap; it saves the one product the first form costs
once Lanczos converges fast (the benchmark MLP: 4 products instead of 5, true error 1e-4 at tol
1e-3). With several wanted eigenvalues a newly found one reorders them, which fools a rate;
there only the first form applies (tests/test_curvature_stopping.py compares both on dense
spectra).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

WHICH = ("LA", "SA", "LM")


@dataclass
class LanczosOutput:
    eigenvalues: np.ndarray  # wanted Ritz values, ordered by ``which``
    residuals: np.ndarray  # ||A y - theta y|| for each
    errors: np.ndarray  # estimated absolute eigenvalue errors
    vectors: torch.Tensor | None  # (n, k) Ritz vectors
    smallest: float  # the algebraically smallest Ritz value
    smallest_residual: float
    largest: float
    largest_residual: float
    gap: float  # distance of the first wanted Ritz value to the next Ritz value
    matvecs: int
    converged: bool
    alphas: np.ndarray  # the tridiagonal matrix, for quadrature
    betas: np.ndarray


def _order(theta: np.ndarray, which: str) -> np.ndarray:
    if which == "LA":
        return np.argsort(-theta)
    if which == "SA":
        return np.argsort(theta)
    return np.argsort(-np.abs(theta))


def _tridiagonal(alphas: list[float], betas: list[float]) -> np.ndarray:
    m = len(alphas)
    T = np.diag(np.asarray(alphas, dtype=np.float64))
    if m > 1:
        off = np.asarray(betas[: m - 1], dtype=np.float64)
        T += np.diag(off, 1) + np.diag(off, -1)
    return T


def _error_estimates(
    theta: np.ndarray, res: np.ndarray, idx: np.ndarray, gap_cap: float | None
) -> tuple[np.ndarray, np.ndarray]:
    errors, gaps = [], []
    for i in idx:
        gap = np.inf
        if theta.size > 1:
            dist = np.abs(theta - theta[i])
            dist[i] = np.inf
            j = int(np.argmin(dist))
            gap = dist[j] - res[j]
        if gap_cap is not None:
            gap = min(gap, gap_cap)
        gaps.append(gap)
        r = res[i]
        errors.append(min(r, r * r / gap) if np.isfinite(gap) and gap > 0 else r)
    return np.asarray(errors), np.asarray(gaps)


def _settled(
    now: np.ndarray,
    previous: np.ndarray | None,
    older: np.ndarray | None,
    size: np.ndarray,
    tol: float,
    rate_rule: bool = True,
) -> bool:
    """Whether the wanted Ritz values have stopped moving (see the module docstring)."""
    if previous is None or previous.size != now.size:
        return False
    move = np.abs(now - previous) / size
    if bool(np.all(move <= tol)):
        return True
    if not rate_rule or now.size != 1 or older is None or older.size != 1:
        return False
    before = np.abs(previous - older) / size
    # A converging Ritz value moves by ever smaller steps; at a contraction rate below 1/10 the
    # rest of the way is at most move * rate / (1 - rate) < move / 9.
    if not before[0] > 0:
        return False
    rate = float(move[0] / before[0])
    return rate < 0.1 and move[0] * rate / (1.0 - rate) <= tol


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``w`` minus its projection on the orthonormal rows of ``basis``: classical Gram-Schmidt
    twice (full reorthogonalisation). ``addmv`` on the transposed basis: ``basis.T @ c`` takes
    a generic path that cost a quarter of a Hessian-vector product per call on the benchmark
    MLP (266k parameters), more than the rest of a Lanczos step."""
    w = torch.addmv(w, basis.t(), torch.mv(basis, w), alpha=-1)
    return w.addmv_(basis.t(), torch.mv(basis, w), alpha=-1)


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    k: int = 1,
    which: str = "LA",
    tol: float = 1e-3,
    max_matvecs: int | None = None,
    v0: torch.Tensor | None = None,
    gap_hint: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    want_vectors: bool = True,
    fixed_steps: int | None = None,
) -> LanczosOutput:
    """Extreme eigenpairs of a symmetric operator.

    Stops when every wanted Ritz value has an estimated relative error ``<= tol``, or after
    ``max_matvecs`` products, or after exactly ``fixed_steps`` products when that is given
    (quadrature). ``v0`` warm-starts the Krylov space (e.g. the previous top eigenvector).
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    limit = min(n, 300 if max_matvecs is None else max_matvecs)
    if fixed_steps is not None:
        limit = min(n, fixed_steps)
    limit = max(limit, 1)
    if v0 is None:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        v0 = torch.randn(n, generator=g, dtype=torch.float64)
    q = v0.detach().reshape(-1).to(dtype=dtype, device=device)
    norm = torch.linalg.vector_norm(q)
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("the start vector must be finite and non-zero")
    # The Krylov basis grows by doubling: memory follows the products actually made, not the cap.
    Q = torch.empty(min(limit + 1, 8), n, dtype=dtype, device=device)
    Q[0] = q / norm
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    converged = False
    matvecs = 0
    theta = S = res = idx = errors = gaps = None
    previous = older = None
    j = 0
    for j in range(limit):
        w = matvec(Q[j])
        matvecs += 1
        # A non-finite entry makes the dot product (or the norm below) non-finite: checking
        # these two numbers spares a pass over the vector.
        alpha = float(torch.dot(Q[j], w))
        if not math.isfinite(alpha):
            raise ValueError("a matrix-vector product returned non-finite values")
        alphas.append(alpha)
        basis = Q[: j + 1]
        w = _orthogonalise(w, basis)
        beta = float(torch.linalg.vector_norm(w))
        if not math.isfinite(beta):
            raise ValueError("a matrix-vector product returned non-finite values")
        theta, S = np.linalg.eigh(_tridiagonal(alphas, betas))
        scale = max(scale, float(np.max(np.abs(theta))))
        res = beta * np.abs(S[-1, :])
        idx = _order(theta, which)[: min(k, j + 1)]
        errors, gaps = _error_estimates(theta, res, idx, gap_hint)
        size = np.maximum(np.abs(theta[idx]), np.finfo(np.float64).tiny)
        rel = errors / size
        settled = _settled(theta[idx], previous, older, size, tol)
        previous, older = theta[idx].copy(), previous
        invariant = beta <= 1e-10 * max(scale, 1e-30)
        if fixed_steps is None and j + 1 >= k and settled and bool(np.all(rel <= tol)):
            converged = True
            break
        if j + 1 == limit:
            converged = j + 1 >= k and bool(np.all(rel <= tol)) or (invariant and j + 1 >= k)
            break
        if invariant:
            if j + 1 >= k and fixed_steps is None:
                converged = True
                break
            # Krylov space exhausted: continue from a fresh direction orthogonal to the basis.
            g = generator if generator is not None else torch.Generator().manual_seed(j + 1)
            w = torch.randn(n, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
            w = _orthogonalise(w, basis)
            beta = 0.0
            w = w / torch.linalg.vector_norm(w)
        else:
            w = w / beta
        if j + 1 >= Q.shape[0]:
            grown = torch.empty(min(limit + 1, 2 * Q.shape[0]), n, dtype=dtype, device=device)
            grown[: j + 1] = Q[: j + 1]
            Q = grown
        Q[j + 1] = w
        betas.append(beta)
    m = j + 1
    vectors = None
    if want_vectors:
        coeffs = torch.as_tensor(S[:, idx], dtype=dtype, device=device)
        vectors = Q[:m].T @ coeffs
    lo, hi = int(np.argmin(theta)), int(np.argmax(theta))
    return LanczosOutput(
        eigenvalues=theta[idx].copy(),
        residuals=res[idx].copy(),
        errors=errors,
        vectors=vectors,
        smallest=float(theta[lo]),
        smallest_residual=float(res[lo]),
        largest=float(theta[hi]),
        largest_residual=float(res[hi]),
        gap=float(gaps[0]),
        matvecs=matvecs,
        converged=converged,
        alphas=np.asarray(alphas),
        betas=np.asarray(betas[: m - 1]),
    )


def power_iteration(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    k: int = 1,
    tol: float = 1e-3,
    max_matvecs: int = 200,
    v0: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> LanczosOutput:
    """Largest-magnitude eigenpairs by power iteration with deflation (for comparison).

    Stops a pair when its relative residual ``||A v - theta v|| / |theta|`` is ``<= tol``.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    found_vals, found_vecs, found_res = [], [], []
    matvecs = 0
    converged = True
    budget = max_matvecs
    for i in range(k):
        start = (
            v0 if (v0 is not None and i == 0) else torch.randn(n, generator=g, dtype=torch.float64)
        )
        v = start.detach().reshape(-1).to(dtype=dtype, device=device)
        v = v / torch.linalg.vector_norm(v)
        theta, r, ok = 0.0, float("inf"), False
        while budget > 0:
            w = matvec(v)
            matvecs += 1
            budget -= 1
            for val, vec in zip(found_vals, found_vecs, strict=True):  # deflate found pairs
                w = w - val * torch.dot(vec, v) * vec
            theta = float(torch.dot(v, w))
            r = float(torch.linalg.vector_norm(w - theta * v))
            if r <= tol * abs(theta):
                ok = True
                break
            v = w / torch.linalg.vector_norm(w)
        converged = converged and ok
        found_vals.append(theta)
        found_vecs.append(v)
        found_res.append(r)
    vals = np.asarray(found_vals)
    res = np.asarray(found_res)
    return LanczosOutput(
        eigenvalues=vals,
        residuals=res,
        errors=res.copy(),
        vectors=torch.stack(found_vecs, dim=1),
        smallest=float(vals.min()),
        smallest_residual=float(res[np.argmin(vals)]),
        largest=float(vals.max()),
        largest_residual=float(res[np.argmax(vals)]),
        gap=float("nan"),
        matvecs=matvecs,
        converged=converged,
        alphas=np.zeros(0),
        betas=np.zeros(0),
    )
