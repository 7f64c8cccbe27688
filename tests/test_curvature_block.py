"""Block Lanczos (``sharpness(method="block")``) against dense eigenvalues: the Hessian of a small
MLP from torch.autograd.functional.hessian, and synthetic spectra with clustered outliers like a
network Hessian's; a run that says it converged is within ``tol``, and one that ran out of
products says it did not."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from test_curvature_helpers import dense_hessian, mlp_problem, one_thread  # noqa: F401
from test_curvature_stopping import spectrum_matrix

from steadygrad.curvature import hessian_operator, sharpness
from steadygrad.curvature.block_krylov import block_lanczos
from steadygrad.curvature.eigensolver import run_eigensolver

spectrum = functools.cache(spectrum_matrix)  # one dense QR per seed for every case below


@pytest.fixture(scope="module")
def mlp_dense():
    model, loss_fn, batch = mlp_problem()
    H = dense_hessian(model, loss_fn, batch, plain_autograd=True)
    values, vectors = torch.linalg.eigh(H)
    return (model, loss_fn, batch), H, values.flip(0)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("engine", ["retained", "func"])
def test_top_k_matches_dense_hessian(mlp_dense, k, engine):
    (model, loss_fn, batch), H, want = mlp_dense
    for seed in range(3):
        result = sharpness(
            model, loss_fn, batch, k=k, tol=1e-3, method="block", engine=engine, seed=seed
        )
        assert result.converged and result.method == "block"
        err = (result.eigenvalues - want[:k]).abs() / want[:k].abs()
        assert float(err.max()) <= 1e-3, (seed, err)
        # the reported residuals are those of the returned eigenvectors on the dense matrix
        Y = result.eigenvectors.to(H.dtype)
        assert torch.allclose(Y.T @ Y, torch.eye(k, dtype=H.dtype), atol=1e-8)
        res = torch.linalg.vector_norm(H @ Y - Y * result.eigenvalues, dim=0)
        assert torch.allclose(res, result.residuals, rtol=1e-3, atol=1e-9)


def test_warm_start_from_the_previous_block(mlp_dense):
    """Every previous eigenvector seeds a row of the first block: the re-estimate on the same
    batch stops after two blocks and stays within tol."""
    (model, loss_fn, batch), _, want = mlp_dense
    cold = sharpness(model, loss_fn, batch, k=3, tol=1e-3, method="block")
    warm = sharpness(model, loss_fn, batch, k=3, tol=1e-3, method="block", warm_start=cold)
    # converged eigenvectors as the first block: two blocks of k + 1 (the fewest the settled
    # check allows); their sum as one start vector, as Lanczos takes it, needed 20 products here
    assert warm.converged and warm.matvecs <= 2 * 4 < cold.matvecs
    assert float(((warm.eigenvalues - want[:3]).abs() / want[:3].abs()).max()) <= 1e-3


def test_products_are_counted_per_vector(mlp_dense):
    (model, loss_fn, batch), _, _ = mlp_dense
    with hessian_operator(model, loss_fn, batch) as op:
        result = run_eigensolver(
            op, k=2, which="LA", method="block", tol=1e-3, max_matvecs=None, warm_start=None,
            seed=0, vectors=False, block_size=3,
        )  # fmt: skip
        assert op.matvecs == result.matvecs
    assert result.matvecs % 3 == 0 and result.converged


@pytest.mark.parametrize(("k", "block"), [(1, 2), (5, 6), (5, 3)])
def test_clustered_outliers_match_dense_spectrum(k, block):
    """Six outliers with l2/l1 in [0.85, 0.97] above a bulk with negative values: every converged
    run is within tol, and (with the products allowed) every run converges."""
    tol = 1e-3
    for seed in range(10):
        a, want, top = spectrum(seed)
        rng = np.random.default_rng(100 + seed)
        v0 = torch.from_numpy(top @ rng.standard_normal(6) + 0.02 * rng.standard_normal(200))
        out = block_lanczos(
            lambda V, a=a: V @ a, 200, k=k, block_size=block, tol=tol, v0=v0,
            dtype=torch.float64, max_matvecs=200,
        )  # fmt: skip
        err = np.abs(out.eigenvalues - want[:k]) / np.abs(want[:k])
        assert out.converged, seed
        assert float(err.max()) <= tol, (seed, err)


def test_smallest_and_largest_magnitude():
    a, want, _ = spectrum(3)
    ev = np.linalg.eigvalsh(a.numpy())
    sa = block_lanczos(lambda V: V @ a, 200, k=2, which="SA", tol=1e-8, dtype=torch.float64)
    assert np.allclose(sa.eigenvalues, ev[:2], rtol=1e-6)
    lm = block_lanczos(lambda V: V @ a, 200, k=1, which="LM", tol=1e-8, dtype=torch.float64)
    assert np.isclose(lm.eigenvalues[0], want[0], rtol=1e-6)


def test_out_of_products_is_not_converged(mlp_dense):
    (model, loss_fn, batch), _, want = mlp_dense
    with pytest.warns(RuntimeWarning, match="without reaching"):
        result = sharpness(model, loss_fn, batch, k=5, tol=1e-10, method="block", max_matvecs=12)
    assert not result.converged
    assert result.matvecs <= 12
    # what it reports still holds: each Ritz value is within its residual of some eigenvalue
    nearest = (result.eigenvalues[:, None] - want[None, :]).abs().min(dim=1).values
    assert bool((nearest <= result.residuals + 1e-12).all())


def test_low_rank_operator_exhausts_the_krylov_space():
    """Rank 3 in dimension 40, block of 4: a lost direction is replaced, the run stops as an
    invariant subspace with the exact eigenvalues (zero included)."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((40, 3)))
    a = torch.from_numpy((u * np.array([3.0, 2.0, -1.0])) @ u.T)
    out = block_lanczos(lambda V: V @ a, 40, k=4, block_size=4, tol=1e-6, dtype=torch.float64)
    assert out.converged
    assert np.allclose(out.eigenvalues, [3.0, 2.0, 0.0, 0.0], atol=1e-8)


def test_bad_arguments_are_named(mlp_dense):
    (model, loss_fn, batch), _, _ = mlp_dense
    with pytest.raises(ValueError, match="block_size"):
        sharpness(model, loss_fn, batch, method="block", block_size=0)
    with pytest.raises(ValueError, match="max_matvecs"):
        sharpness(model, loss_fn, batch, k=3, method="block", max_matvecs=2)
    with pytest.raises(ValueError, match="method"):
        sharpness(model, loss_fn, batch, method="blocks")
