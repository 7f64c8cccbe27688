"""Sharpness, trace and Frobenius norm against a dense Hessian on small models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_curvature_helpers import (  # noqa: F401
    cnn_problem,
    dense_for,
    dense_hessian,
    gpt_problem,
    mlp_problem,
    one_thread,
)

from steadygrad.curvature import (
    OutputLoss,
    hessian_frobenius_norm,
    hessian_operator,
    hessian_trace,
    sharpness,
)
from steadygrad.curvature.hvp import as_generator
from steadygrad.curvature.trace import trace_from_operator


def rel(a, b):
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("engine", ["retained", "func", "double_backward"])
def test_top_eigenvalues_match_dense_mlp(engine):
    model, loss_fn, batch = mlp_problem()
    ev = torch.linalg.eigvalsh(dense_for("mlp"))
    result = sharpness(model, loss_fn, batch, k=3, tol=1e-9, engine=engine)
    for got, want in zip(result.eigenvalues.tolist(), ev[-3:].flip(0).tolist(), strict=True):
        assert rel(got, want) < 1e-4
    # the smallest Ritz value of the same Krylov space estimates lambda_min
    assert abs(result.smallest - ev[0].item()) <= result.smallest_residual + 1e-9
    assert result.matvecs < ev.numel()
    assert result.converged


def test_cnn_with_batchnorm_eval_matches_dense():
    model, loss_fn, batch = cnn_problem(train_bn=False)
    ev = torch.linalg.eigvalsh(dense_for("cnn"))
    result = sharpness(model, loss_fn, batch, k=2, tol=1e-9)
    assert rel(result.eigenvalues[0].item(), ev[-1].item()) < 1e-4
    assert rel(result.eigenvalues[1].item(), ev[-2].item()) < 1e-4


def test_cnn_with_batchnorm_train_uses_batch_stats_and_keeps_buffers():
    model, loss_fn, batch = cnn_problem(train_bn=True)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    result = sharpness(model, loss_fn, batch, tol=1e-9)
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    H = dense_hessian(model, loss_fn, batch, plain_autograd=True)
    assert rel(result.value, torch.linalg.eigvalsh(H)[-1].item()) < 1e-4


def test_tiny_transformer_matches_dense():
    model, loss_fn, batch = gpt_problem()
    ev = torch.linalg.eigvalsh(dense_for("gpt"))
    result = sharpness(model, loss_fn, batch, k=2, tol=1e-9)
    assert rel(result.eigenvalues[0].item(), ev[-1].item()) < 1e-4
    assert rel(result.eigenvalues[1].item(), ev[-2].item()) < 1e-4
    low = sharpness(model, loss_fn, batch, which="SA", tol=1e-9)
    assert rel(low.value, ev[0].item()) < 1e-4


def test_float32_model_is_accurate_to_1e4():
    model, loss_fn, batch = mlp_problem(dtype=torch.float32)
    H = dense_hessian(model.double(), loss_fn, (batch[0].double(), batch[1]))
    model.float()
    result = sharpness(model, loss_fn, batch, tol=1e-7)
    assert rel(result.value, torch.linalg.eigvalsh(H)[-1].item()) < 1e-4


def test_largest_algebraic_not_magnitude():
    # A Hessian whose most negative eigenvalue is larger in magnitude than the top one:
    # loss = sum_i c_i (x_i . w)^2 with mixed-sign c, so H = 2 sum_i c_i x_i x_i^T.
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(12, 1, bias=False).double()
    x = torch.randn(40, 12, generator=g, dtype=torch.float64)
    c = torch.cat([torch.ones(20), -3 * torch.ones(20)]).double()
    batch = (x, c)

    def loss_fn(m, b):
        return (b[1] * m(b[0]).squeeze(1) ** 2).sum()

    ev = torch.linalg.eigvalsh(2 * (x.T * c) @ x)
    assert -ev[0] > ev[-1] > 0
    assert rel(sharpness(model, loss_fn, batch, tol=1e-8).value, ev[-1].item()) < 1e-4
    assert rel(sharpness(model, loss_fn, batch, which="LM", tol=1e-8).value, ev[0].item()) < 1e-4


def test_power_iteration_for_comparison():
    model, loss_fn, batch = mlp_problem()
    ev = torch.linalg.eigvalsh(dense_for("mlp"))
    power = sharpness(model, loss_fn, batch, method="power", tol=1e-5, max_matvecs=2000)
    lanczos = sharpness(model, loss_fn, batch, tol=1e-5)
    assert rel(power.value, ev[-1].item()) < 1e-4
    assert lanczos.matvecs < power.matvecs


def test_warm_start_is_cheaper_and_accurate():
    model, loss_fn, batch = mlp_problem()
    cold = sharpness(model, loss_fn, batch, tol=1e-6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model, batch).backward()
        opt.step()
    ev = torch.linalg.eigvalsh(dense_hessian(model, loss_fn, batch))
    again_cold = sharpness(model, loss_fn, batch, tol=1e-6)
    warm = sharpness(model, loss_fn, batch, tol=1e-6, warm_start=cold)
    assert rel(warm.value, ev[-1].item()) < 1e-5
    assert warm.matvecs < again_cold.matvecs


@pytest.mark.parametrize("start", ["gradient", "random"])
def test_start_vectors_reach_the_same_eigenvalue(start):
    model, loss_fn, batch = cnn_problem()
    ev = torch.linalg.eigvalsh(dense_for("cnn"))
    result = sharpness(model, loss_fn, batch, tol=1e-8, start=start)
    assert rel(result.value, ev[-1].item()) < 1e-4
    with pytest.raises(ValueError, match="start"):
        sharpness(model, loss_fn, batch, start="ones")


def test_parameter_subset_is_the_diagonal_block():
    model, loss_fn, batch = mlp_problem()
    names = ["2.weight", "2.bias"]
    H = dense_hessian(model, loss_fn, batch, names)
    by_name = sharpness(model, loss_fn, batch, params=["2"], tol=1e-9)
    by_module = sharpness(model, loss_fn, batch, params=model[2], tol=1e-9)
    want = torch.linalg.eigvalsh(H)[-1].item()
    assert rel(by_name.value, want) < 1e-4 and rel(by_module.value, want) < 1e-4
    assert by_name.param_names == tuple(names)


def test_functional_form_matches_module_form():
    model, loss_fn, batch = mlp_problem()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def f(p, b):
        return F.cross_entropy(torch.func.functional_call(model, p, (b[0],)), b[1])

    ev = torch.linalg.eigvalsh(dense_for("mlp"))
    for engine in ("retained", "func"):
        result = sharpness(f, params, batch, k=2, tol=1e-9, engine=engine)
        assert rel(result.value, ev[-1].item()) < 1e-4
    trace = hessian_trace(f, params, batch, "hutch++", matvecs=225)  # sketch spans all 75 dims
    assert rel(trace.value, torch.trace(dense_for("mlp")).item()) < 1e-6


def _trace_estimates(model, loss_fn, batch, matvecs, seeds):
    estimates = {"hutchinson": [], "hutch++": []}
    with hessian_operator(model, loss_fn, batch) as op:
        for seed in range(seeds):
            for method in estimates:
                est = trace_from_operator(op, method, matvecs, as_generator(seed), chunk=matvecs)
                estimates[method].append(est.value)
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in estimates.items()}


def test_hutchinson_and_hutchpp_are_unbiased():
    model, loss_fn, batch = mlp_problem()
    true = torch.trace(dense_for("mlp")).item()
    for method, values in _trace_estimates(model, loss_fn, batch, 12, 150).items():
        stderr = values.std() / math.sqrt(values.numel())
        assert abs(values.mean().item() - true) < 3 * stderr, method


def test_hutchpp_has_lower_variance_than_hutchinson_at_equal_products():
    # Least squares on rotated features with decaying scales: a PSD Hessian with a decaying
    # spectrum and no diagonal structure, the regime Hutch++ is built for (on flat, indefinite
    # spectra the two are close).
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(40, 1).double()
    R, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    x = (torch.randn(200, 40, generator=g, dtype=torch.float64) / torch.arange(1, 41)) @ R
    batch = (x, torch.randn(200, 1, generator=g, dtype=torch.float64))

    def loss_fn(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    true = torch.trace(dense_hessian(model, loss_fn, batch)).item()
    estimates = _trace_estimates(model, loss_fn, batch, 15, 100)
    for values in estimates.values():
        assert abs(values.mean().item() - true) < 3 * values.std() / math.sqrt(values.numel())
    assert estimates["hutch++"].var() < 0.1 * estimates["hutchinson"].var()


def test_hutchpp_exact_when_rank_is_small():
    # the Hessian of a 3-output linear least-squares model in 4 inputs has rank <= 15 < m/3
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    batch = (torch.randn(50, 4, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64))

    def loss_fn(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    true = torch.trace(dense_hessian(model, loss_fn, batch)).item()
    assert rel(hessian_trace(model, loss_fn, batch, "hutch++", matvecs=45).value, true) < 1e-9


def test_hutchinson_stderr_is_calibrated():
    model, loss_fn, batch = mlp_problem()
    true = torch.trace(dense_for("mlp")).item()
    est = hessian_trace(model, loss_fn, batch, "hutchinson", matvecs=200, vectors_per_product=8)
    assert est.matvecs == 200
    assert abs(est.value - true) < 4 * est.stderr


def test_frobenius_norm_matches_dense():
    model, loss_fn, batch = mlp_problem()
    H = dense_for("mlp")
    est = hessian_frobenius_norm(model, loss_fn, batch, matvecs=300)
    true = torch.linalg.matrix_norm(H).item()
    assert abs(est.value - true) < 4 * est.stderr
    assert rel(est.value, true) < 0.1


def test_batched_products_equal_single_products():
    model, loss_fn, batch = mlp_problem()
    V = torch.randn(5, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    H = dense_for("mlp")
    for engine in ("retained", "func"):
        with hessian_operator(model, loss_fn, batch, engine=engine) as op:
            HV = op.matmat(V)
            assert op.matvecs == 5
        torch.testing.assert_close(HV, V @ H, rtol=1e-9, atol=1e-10)


def test_ggn_equals_dense_jt_h_j():
    model, _, batch = mlp_problem()
    loss = OutputLoss(lambda m, b: m(b[0]), lambda out, b: F.cross_entropy(out, b[1]))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def outputs(t):
        parts = torch.split(t, sizes)
        p = {n: x.reshape(s) for n, x, s in zip(names, parts, shapes, strict=True)}
        return torch.func.functional_call(model, p, (batch[0],))

    out = outputs(theta)
    J = torch.autograd.functional.jacobian(outputs, theta).reshape(out.numel(), -1)
    H_out = torch.autograd.functional.hessian(
        lambda o: F.cross_entropy(o.reshape(out.shape), batch[1]), out.detach().reshape(-1)
    )
    G = J.T @ H_out @ J
    V = torch.randn(4, theta.numel(), dtype=torch.float64)
    with hessian_operator(model, loss, batch, curvature="ggn") as op:
        GV = torch.stack([op.matvec(v) for v in V])
    torch.testing.assert_close(GV, V @ G, rtol=1e-8, atol=1e-10)
    result = sharpness(model, loss, batch, curvature="ggn", tol=1e-9)
    assert rel(result.value, torch.linalg.eigvalsh(G)[-1].item()) < 1e-4
    # the same OutputLoss serves the Hessian too
    ev = torch.linalg.eigvalsh(dense_for("mlp"))
    assert rel(sharpness(model, loss, batch, tol=1e-9).value, ev[-1].item()) < 1e-4


# ---------------------------------------------------------------- errors


def test_loss_independent_of_parameters_is_an_error():
    model, _, batch = mlp_problem()
    with pytest.raises(ValueError, match="does not depend"):
        sharpness(model, lambda m, b: (b[0] ** 2).mean(), batch)
    with pytest.raises(ValueError, match="does not depend"):
        hessian_trace(model, lambda m, b: (b[0] ** 2).mean(), batch, engine="func")


def test_k_larger_than_parameter_count_is_an_error():
    model = torch.nn.Linear(2, 1)
    batch = (torch.randn(4, 2), torch.randn(4, 1))
    with pytest.raises(ValueError, match="k=4 is larger"):
        sharpness(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), batch, k=4)


def test_non_finite_batch_is_an_error():
    model, loss_fn, (x, y) = mlp_problem()
    x = x.clone()
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        sharpness(model, loss_fn, (x, y))
    with pytest.raises(ValueError, match="non-finite"):
        hessian_trace(model, loss_fn, {"x": x.clone().fill_(float("inf")), "y": y})


def test_bad_arguments_are_named():
    model, loss_fn, batch = mlp_problem()
    with pytest.raises(ValueError, match="engine"):
        sharpness(model, loss_fn, batch, engine="magic")
    with pytest.raises(ValueError, match="which"):
        sharpness(model, loss_fn, batch, which="XX")
    with pytest.raises(TypeError, match="k"):
        sharpness(model, loss_fn, batch, k=1.5)
    with pytest.raises(ValueError, match="method"):
        hessian_trace(model, loss_fn, batch, method="exact")
    with pytest.raises(ValueError, match="matches no parameter"):
        sharpness(model, loss_fn, batch, params=["nope"])
    with pytest.raises(TypeError, match="OutputLoss"):
        sharpness(model, loss_fn, batch, curvature="ggn")
