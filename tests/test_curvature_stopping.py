"""Lanczos' stopping rule against dense eigenvalues: a run that says it converged at ``tol`` is
within ``tol`` of the true eigenvalues, on spectra shaped like network Hessians (a few outliers
with small relative gaps above a bulk, negative eigenvalues included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_curvature_helpers import dense_for, mlp_problem, one_thread  # noqa: F401

from steadygrad.curvature import sharpness
from steadygrad.curvature.lanczos import _settled, lanczos


def spectrum_matrix(seed: int, n: int = 200) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A random orthogonal basis and a spectrum: 6 outliers 1 > l2 > ... with l2/l1 in
    [0.85, 0.97], a bulk in [-0.05, 0.1]. Returns the matrix, its eigenvalues in descending
    order and the eigenvectors of the 6 outliers."""
    rng = np.random.default_rng(seed)
    ratio = rng.uniform(0.85, 0.97)
    top = np.cumprod([1.0, ratio, *rng.uniform(0.8, 0.95, 4)])
    bulk = rng.uniform(-0.05, 0.1, n - top.size)
    values = np.concatenate([top, bulk])
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * values) @ q.T
    return torch.from_numpy(a), np.sort(values)[::-1], q[:, : top.size]


def _run(a, v0, k, rate_rule, monkeypatch):
    from steadygrad.curvature import lanczos as module

    monkeypatch.setattr(module, "_settled", lambda *args: _settled(*args, rate_rule=rate_rule))
    return lanczos(lambda v: a @ v, a.shape[0], k=k, tol=1e-3, v0=v0, dtype=torch.float64,
                   max_matvecs=200)  # fmt: skip


@pytest.mark.parametrize("k", [1, 5])
def test_rate_rule_is_as_accurate_as_the_strict_rule(k, monkeypatch):
    """Wherever the strict rule (moved <= tol) ends within tol of the dense eigenvalues, so does
    the default rule; it never costs more products."""
    tol, saved = 1e-3, 0
    for seed in range(20):
        a, want, top = spectrum_matrix(seed)
        rng = np.random.default_rng(100 + seed)
        # a start mostly in the top eigenspace, as a network gradient is
        v0 = top @ rng.standard_normal(6) + 0.02 * rng.standard_normal(a.shape[0])
        v0 = torch.from_numpy(v0)
        strict = _run(a, v0, k, False, monkeypatch)
        default = _run(a, v0, k, True, monkeypatch)
        assert default.matvecs <= strict.matvecs
        saved += strict.matvecs - default.matvecs
        err_strict = np.max(np.abs(strict.eigenvalues - want[:k]) / want[:k])
        err_default = np.max(np.abs(default.eigenvalues - want[:k]) / want[:k])
        if err_strict <= tol:
            assert err_default <= tol, (seed, err_strict, err_default)
    if k > 1:
        assert saved == 0  # the rate rule is for one eigenvalue only


def test_mlp_sharpness_at_tol_1e3_matches_dense():
    model, loss_fn, batch = mlp_problem()
    ev = torch.linalg.eigvalsh(dense_for("mlp")).flip(0)
    for seed in range(4):
        for k in (1, 5):
            result = sharpness(model, loss_fn, batch, k=k, tol=1e-3, seed=seed)
            assert result.converged
            err = (result.eigenvalues - ev[:k]).abs() / ev[:k].abs()
            assert float(err.max()) <= 1e-3


def test_settled_rule():
    size = np.ones(1)
    # moved by less than tol: settled
    assert _settled(np.array([1.0]), np.array([1.0005]), None, size, 1e-3)
    # moved by more than tol, no history: not settled
    assert not _settled(np.array([1.0]), np.array([1.002]), None, size, 1e-3)
    # moves shrinking 20-fold (0.02 then 0.001): the rest is about 5e-5, settled
    assert _settled(np.array([1.0]), np.array([0.999]), np.array([0.979]), size, 1e-3)
    # moves not shrinking: not settled
    assert not _settled(np.array([1.0]), np.array([0.998]), np.array([0.9965]), size, 1e-3)
    # shrinking by only 0.6 per step: the geometric rest 1.5 * move is not trusted
    assert not _settled(np.array([1.0]), np.array([0.9988]), np.array([0.9968]), size, 1e-3)


def test_lanczos_orthogonalisation_removes_the_basis_components():
    # w lies almost entirely in the span of the basis (the hard case for Gram-Schmidt): what is
    # left must be orthogonal to every basis row to float32 precision, and the removed part
    # must be the projection computed in float64
    from steadygrad.curvature.lanczos import _orthogonalise

    gen = torch.Generator().manual_seed(0)
    basis64, _ = torch.linalg.qr(torch.randn(5000, 6, generator=gen, dtype=torch.float64))
    basis64 = basis64.T.contiguous()
    noise = torch.randn(5000, generator=gen, dtype=torch.float64)
    w64 = basis64.T @ torch.tensor([3.0, -2.0, 1.0, 0.5, 4.0, -1.0], dtype=torch.float64)
    w64 = w64 + 1e-4 * noise
    out = _orthogonalise(w64.float(), basis64.float()).double()
    expected = w64 - basis64.T @ (basis64 @ w64)
    assert float((basis64 @ out).abs().max()) < 1e-6 * float(out.norm())
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
