"""Block Lanczos (block Krylov with Rayleigh-Ritz) for a few extreme eigenpairs.

Each step multiplies a block of ``b`` orthonormal vectors at once (``matmat``: one batched product
of ``b`` vectors, counted as ``b`` products), orthogonalises the result against the whole basis
(full reorthogonalisation) and takes Ritz pairs from the projected matrix ``T = Q^T A Q``. It pays
where a batched product costs less than ``b`` single ones (an accelerator with room to spare);
where products are compute-bound (one CPU thread) single-vector Lanczos needs fewer products for
the same accuracy. The stopping rule is Lanczos' (see :mod:`steadygrad.curvature.lanczos`): the
residual ``||A y - theta y|| = ||B S_last||`` (B the next block's triangular factor), the error
estimate ``min(r, r^2 / gap)`` and the wanted Ritz values settled between steps.

Example:
    >>> spectrum = torch.cat([torch.tensor([10.0, 9.0]), torch.linspace(-1, 1, 48)])
    >>> a = torch.diag(spectrum.double())
    >>> out = block_lanczos(lambda V: V @ a, 50, k=2, tol=1e-8, dtype=torch.float64)
    >>> [round(float(v), 6) for v in out.eigenvalues], out.converged, out.matvecs % 3
    ([10.0, 9.0], True, 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from steadygrad.curvature.lanczos import (
    WHICH,
    LanczosOutput,
    _error_estimates,
    _order,
    _settled,
)


def _orthonormal_block(
    W: torch.Tensor, basis: torch.Tensor | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``W`` made orthogonal to ``basis`` (Gram-Schmidt twice) and to each other (QR).

    Returns ``(Q, B)`` with ``W_perp = B^T Q`` (rows). A row that vanishes (the Krylov space lost
    a dimension) is replaced by a fresh random direction, with a zero row in ``B``.
    """
    if basis is not None and basis.shape[0]:
        W = W - (W @ basis.T) @ basis
        W = W - (W @ basis.T) @ basis
    q, r = torch.linalg.qr(W.T)  # (n, b), (b, b)
    diag = r.diagonal().abs()
    scale = float(diag.max()) if diag.numel() else 0.0
    lost = [i for i in range(diag.numel()) if not float(diag[i]) > 1e-10 * max(scale, 1e-30)]
    Q = q.T.contiguous()
    if lost:
        for i in lost:
            fresh = torch.randn(W.shape[1], generator=generator, dtype=torch.float64)
            fresh = fresh.to(dtype=W.dtype, device=W.device)
            others = [Q[j] for j in range(Q.shape[0]) if j != i]
            parts = ([basis] if basis is not None and basis.shape[0] else []) + (
                [torch.stack(others)] if others else []
            )
            span = torch.cat(parts) if parts else None
            for _ in range(2):
                if span is not None:
                    fresh = fresh - (span @ fresh) @ span
            Q[i] = fresh / torch.linalg.vector_norm(fresh)
            r[i] = 0
    return Q, r


def block_lanczos(
    matmat: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    k: int = 1,
    block_size: int | None = None,
    which: str = "LA",
    tol: float = 1e-3,
    max_matvecs: int | None = None,
    v0: torch.Tensor | None = None,
    gap_hint: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    want_vectors: bool = True,
) -> LanczosOutput:
    """Extreme eigenpairs of a symmetric operator given as ``matmat(V)`` on rows ``V (b, n)``.

    ``block_size`` defaults to ``k + 1`` (one spare vector keeps the ``k``-th eigenvalue from
    being mistaken for a cluster's edge). ``v0`` (a vector or ``(n, j)`` block) seeds the first
    rows; the rest are random. Stops when every wanted Ritz value has an estimated relative
    error ``<= tol`` and has settled, or when the next block would pass ``max_matvecs``
    products or the dimension ``n`` (then ``converged`` says whether tol was reached);
    ``matvecs`` counts every vector multiplied.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    b = k + 1 if block_size is None else int(block_size)
    if b < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    b = min(b, n)
    limit = min(n, 300 if max_matvecs is None else max_matvecs)
    if limit < b:
        raise ValueError(f"max_matvecs={limit} is smaller than one block of {b} products")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    rows = []
    if v0 is not None:
        seed = v0.detach().reshape(n, -1).T.to(dtype=dtype, device=device)
        if not bool(torch.isfinite(seed).all()) or not bool(seed.abs().sum() > 0):
            raise ValueError("the start vector must be finite and non-zero")
        rows = list(seed[:b])
    while len(rows) < b:
        rows.append(
            torch.randn(n, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
        )
    Q0, _ = _orthonormal_block(torch.stack(rows), None, gen)
    blocks = [Q0]
    T = np.zeros((0, 0))
    scale = 0.0
    matvecs = 0
    converged = False
    previous = older = None
    theta = S = res = idx = errors = gaps = None
    while True:
        Qj = blocks[-1]
        W = matmat(Qj)
        matvecs += b
        if not bool(torch.isfinite(W).all()):
            raise ValueError("a matrix-vector product returned non-finite values")
        basis = torch.cat(blocks)
        C = (W @ basis.T).double().cpu().numpy()  # (b, m): the new column block of T
        m = basis.shape[0]
        grown = np.zeros((m, m))
        grown[: T.shape[0], : T.shape[1]] = T
        grown[:, m - b :] = C.T
        grown[m - b :, :] = C
        T = (grown + grown.T) / 2
        Qn, B = _orthonormal_block(W, basis, gen)
        theta, S = np.linalg.eigh(T)
        scale = max(scale, float(np.max(np.abs(theta))))
        Bn = B.double().cpu().numpy()
        res = np.linalg.norm(Bn @ S[m - b :, :], axis=0)
        idx = _order(theta, which)[: min(k, m)]
        errors, gaps = _error_estimates(theta, res, idx, gap_hint)
        size = np.maximum(np.abs(theta[idx]), np.finfo(np.float64).tiny)
        rel = errors / size
        settled = _settled(theta[idx], previous, older, size, tol)
        previous, older = theta[idx].copy(), previous
        invariant = float(np.abs(Bn).max()) <= 1e-10 * max(scale, 1e-30)
        if m >= k and (invariant or (settled and bool(np.all(rel <= tol)))):
            converged = True
            break
        if matvecs + b > limit or m + b > n:
            converged = m >= k and bool(np.all(rel <= tol)) and settled
            break
        # the next block is orthogonal to the basis by construction; T gets B as off-diagonal
        blocks.append(Qn)
    m = T.shape[0]
    vectors = None
    if want_vectors:
        coeffs = torch.as_tensor(S[:, idx], dtype=dtype, device=device)
        vectors = torch.cat(blocks).T @ coeffs
    lo, hi = int(np.argmin(theta)), int(np.argmax(theta))
    finite = [math.isfinite(g) for g in gaps]
    return LanczosOutput(
        eigenvalues=theta[idx].copy(),
        residuals=res[idx].copy(),
        errors=errors,
        vectors=vectors,
        smallest=float(theta[lo]),
        smallest_residual=float(res[lo]),
        largest=float(theta[hi]),
        largest_residual=float(res[hi]),
        gap=float(gaps[0]) if finite[0] else float("inf"),
        matvecs=matvecs,
        converged=converged,
        alphas=np.zeros(0),
        betas=np.zeros(0),
    )
