"""Training-dynamics probes against independent oracles: a loop of single-example backward
passes, the closed-form noise scale of linear regression, a dense Hessian, direct loss
evaluation, the mean-field recursion, and a dense Jacobian."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import steadygrad
from steadygrad.dynamics import (
    GradientCoherenceProbe,
    GradientNoiseScaleProbe,
    LossLandscapeProbe,
    SignalPropagationProbe,
    TopSubspaceProbe,
    filter_normalized_direction,
    gradient_coherence,
    gradient_noise_scale,
    init_mean_field,
    jacobian_singular_values,
    loss_landscape,
    mean_field_variances,
    noise_scale_from_norms,
    per_example_gradients,
    signal_propagation,
    subspace_overlap,
    top_subspace_overlap,
)
from steadygrad.models import MLP


def _ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def _loop_gradients(model, loss_fn, batch):
    """The oracle: one ordinary backward pass per example."""
    rows = []
    for i in range(len(batch[0])):
        model.zero_grad()
        loss_fn(model, (batch[0][i : i + 1], batch[1][i : i + 1])).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def _small_problem(dtype=torch.float32, n=24):
    torch.manual_seed(0)
    model = MLP(5, [7], 3, activation=nn.Tanh).to(dtype)
    x = torch.randn(n, 5, dtype=dtype)
    y = torch.randint(0, 3, (n,))
    return model, (x, y)


def test_per_example_gradients_match_a_loop_of_backward_passes():
    model, batch = _small_problem()
    got = per_example_gradients(model, _ce, batch, chunk_size=5)
    want = _loop_gradients(model, _ce, batch)
    assert got.flat().shape == want.shape
    torch.testing.assert_close(got.flat(), want, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # the model's .grad is untouched
    # a dict batch with a non-tensor leaf
    dict_loss = lambda m, b: F.cross_entropy(m(b["x"]) / b["t"], b["y"])  # noqa: E731
    got = per_example_gradients(model, dict_loss, {"x": batch[0], "y": batch[1], "t": 1.0})
    torch.testing.assert_close(got.flat(), want, rtol=1e-5, atol=1e-6)


def test_per_example_gradients_refuse_batchnorm_in_training_mode():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="BatchNorm"):
        per_example_gradients(model, lambda m, b: m(b).sum(), torch.randn(6, 3))
    with pytest.raises(ValueError, match="leading"):
        per_example_gradients(
            model.eval(), lambda m, b: m(b[0]).sum(), (torch.randn(6, 3), torch.randn(5))
        )


def test_coherence_is_the_ratio_computed_from_looped_gradients():
    model, batch = _small_problem()
    g = _loop_gradients(model, _ce, batch).double()
    want = float(g.sum(0).pow(2).sum() / g.pow(2).sum())
    c = gradient_coherence(model, _ce, batch)
    assert c.value == pytest.approx(want, rel=1e-5)
    assert c.alpha == pytest.approx(want / 24, rel=1e-5)
    # per layer: the first Linear's weight and bias only
    first = g[:, : 7 * 5 + 7]
    assert c.per_module["0"] == pytest.approx(
        float(first.sum(0).pow(2).sum() / first.pow(2).sum()), rel=1e-5
    )
    # the whole-network value is the per-layer values weighted by their share of sum ||g||^2
    shares = {"0": first.pow(2).sum(), "2": g[:, 42:].pow(2).sum()}
    mixed = sum(c.per_module[k] * float(v) for k, v in shares.items()) / float(g.pow(2).sum())
    assert c.value == pytest.approx(mixed, rel=1e-5)


def test_coherence_limits_orthogonal_and_identical():
    m = 6
    model = nn.Linear(m, 1, bias=False)
    square = lambda mod, b: ((mod(b[0]) - b[1]) ** 2).mean()  # noqa: E731
    # one-hot inputs: each example's gradient lives on its own coordinate
    assert gradient_coherence(model, square, (torch.eye(m), torch.randn(m, 1))).value == (
        pytest.approx(1.0)
    )
    same = (torch.randn(1, m).repeat(m, 1), torch.ones(m, 1))
    assert gradient_coherence(model, square, same).value == pytest.approx(m)


def _regression(n, d, delta, noise, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w_star = torch.randn(d, 1, generator=gen, dtype=torch.float64)
    y = x @ w_star + noise * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_star + delta).T)
    return model, (x, y)


def test_noise_scale_matches_the_closed_form_of_linear_regression():
    # L_i = (x_i.w - y_i)^2 / 2, y = x.w* + eps, x ~ N(0, I_d), eps ~ N(0, s^2), delta = w - w*:
    # G = delta, Sigma = (|delta|^2 + s^2) I + delta delta^T, so
    # tr(Sigma) = d (|delta|^2 + s^2) + |delta|^2 and B_simple = tr(Sigma) / |delta|^2.
    d, s = 5, 0.7
    delta = torch.tensor([[0.3], [-0.2], [0.1], [0.4], [0.0]], dtype=torch.float64)
    d2 = float(delta.pow(2).sum())
    trace = d * (d2 + s * s) + d2
    model, batch = _regression(40000, d, delta, s, seed=1)
    half_square = lambda m, b: 0.5 * ((m(b[0]) - b[1]) ** 2).mean()  # noqa: E731
    est = gradient_noise_scale(model, half_square, batch)
    assert est.trace == pytest.approx(trace, rel=0.03)
    assert est.mean_sq_norm == pytest.approx(d2, rel=0.06)
    assert est.value == pytest.approx(trace / d2, rel=0.08)
    two = gradient_noise_scale(model, half_square, batch, method="two_batch", small_batch=40)
    assert two.passes == 1001
    assert two.trace == pytest.approx(trace, rel=0.1)
    assert two.value == pytest.approx(trace / d2, rel=0.15)


def test_two_batch_estimator_recovers_known_norms():
    # E|G_B|^2 = |G|^2 + tr(Sigma)/B with |G|^2 = 2 and tr(Sigma) = 50: exact inputs, exact outputs
    est = noise_scale_from_norms(2 + 50 / 5, 5, 2 + 50 / 500, 500)
    assert (est.mean_sq_norm, est.trace, est.value) == pytest.approx((2.0, 50.0, 25.0))
    with pytest.raises(ValueError, match="big_batch"):
        noise_scale_from_norms(1.0, 8, 1.0, 8)
    model, batch = _small_problem()
    with pytest.raises(ValueError, match="method"):
        gradient_noise_scale(model, _ce, batch, method="three_batch")


def _dense_hessian_and_gradient(model, loss_fn, batch):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat):
        parts, k = {}, 0
        for n, s in zip(names, shapes, strict=True):
            parts[n] = flat[k : k + s.numel()].reshape(s)
            k += s.numel()
        return loss_fn(lambda x: torch.func.functional_call(model, parts, (x,)), batch)

    H = torch.autograd.functional.hessian(f, theta)
    g = torch.autograd.grad(f(theta.requires_grad_(True)), theta)[0]
    return 0.5 * (H + H.T), g.detach()


def test_top_subspace_fraction_and_overlap_match_a_dense_hessian():
    model, batch = _small_problem(torch.float64, n=40)
    k = 3
    ce = lambda m, b: F.cross_entropy(m(b[0]), b[1])  # noqa: E731
    H, g = _dense_hessian_and_gradient(model, ce, batch)
    vals, vecs = torch.linalg.eigh(H)
    top = vecs[:, -k:]
    first = top_subspace_overlap(model, ce, batch, k, tol=1e-8, max_matvecs=H.shape[0])
    torch.testing.assert_close(first.eigenvalues, vals[-k:].flip(0), rtol=1e-6, atol=1e-9)
    want = float((top.T @ g).pow(2).sum() / g.pow(2).sum())
    assert first.gradient_fraction == pytest.approx(want, rel=1e-5)
    assert subspace_overlap(first.eigenvectors, top) == pytest.approx(1.0, abs=1e-6)
    # move the weights by one gradient step; the overlap with the earlier subspace follows the
    # dense eigenvectors at both points
    with torch.no_grad():
        sizes = [p.numel() for p in model.parameters()]
        for p, part in zip(model.parameters(), torch.split(g, sizes), strict=True):
            p -= 2.0 * part.reshape(p.shape)
    H2, _ = _dense_hessian_and_gradient(model, ce, batch)
    top2 = torch.linalg.eigh(H2)[1][:, -k:]
    second = top_subspace_overlap(
        model, ce, batch, k, previous=first, tol=1e-8, max_matvecs=H.shape[0]
    )
    want_overlap = float((top.T @ top2).pow(2).sum() / k)
    assert 0.05 < want_overlap < 0.999  # the subspace did move
    assert second.overlap == pytest.approx(want_overlap, abs=1e-5)


def test_slices_equal_the_loss_at_the_moved_weights():
    model, batch = _small_problem(torch.float64)
    one = loss_landscape(model, _ce, batch, radius=0.8, steps=5, seed=3)
    two = loss_landscape(model, _ce, batch, dims=2, radius=0.8, steps=3, seed=4)

    def direct(coeffs, directions):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in moved.named_parameters():
                for c, d in zip(coeffs, directions, strict=True):
                    p += c * d[name]
        return float(_ce(moved, batch).detach())

    for a, loss in zip(one.coordinates, one.losses, strict=True):
        assert loss == pytest.approx(direct([a], one.directions), rel=1e-12)
    for i, a in enumerate(two.coordinates):
        for j, b in enumerate(two.coordinates):
            assert two.losses[i, j] == pytest.approx(direct([a, b], two.directions), rel=1e-12)
    assert one.losses[2] == one.center_loss == pytest.approx(float(_ce(model, batch)))
    # filter normalisation: every row of a weight's direction has that row's norm; biases none
    d = one.directions[0]
    torch.testing.assert_close(d["0.weight"].norm(dim=1), model[0].weight.norm(dim=1))
    assert float(d["0.bias"].abs().max()) == 0.0
    d = filter_normalized_direction(dict(model.named_parameters()), include_biases=True)
    assert float(d["0.bias"].norm()) == pytest.approx(float(model[0].bias.norm()))


@pytest.mark.parametrize(
    ("activation", "sigma_w2", "sigma_b2"),
    [("tanh", 1.5, 0.05), ("tanh", 3.0, 0.0), ("relu", 2.0, 0.0)],
)
def test_wide_random_net_follows_the_mean_field_recursion(activation, sigma_w2, sigma_b2):
    width, depth = 800, 6
    act = nn.Tanh if activation == "tanh" else nn.ReLU
    model = MLP(width, [width] * depth, width, activation=act).double()
    gen = torch.Generator().manual_seed(0)
    init_mean_field(model, sigma_w2, sigma_b2, gen)
    x = torch.randn(48, width, generator=gen, dtype=torch.float64)
    measured = signal_propagation(model, x)
    mf = mean_field_variances(
        sigma_w2, sigma_b2, [width] * (depth + 2), float(x.pow(2).mean()), activation
    )
    assert len(measured.layers) == depth + 1
    np.testing.assert_allclose(measured.activation_variance, mf.q, rtol=0.08)
    np.testing.assert_allclose(measured.gradient_variance, mf.gradient, rtol=0.12)


def test_jacobian_singular_values_match_a_dense_jacobian():
    model, (x, _) = _small_problem(torch.float64)
    got = jacobian_singular_values(model, x, max_examples=3)
    for i in range(3):
        J = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], x[i])
        torch.testing.assert_close(got[i], torch.linalg.svdvals(J))


def _train_with(tmp_path, signals, steps=6, poison_at=None):
    torch.manual_seed(0)
    model, batch = _small_problem(n=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with steadygrad.watch(model, opt, tmp_path / "run", signals=signals, progress=False) as mon:
        for step in range(steps):
            loss = _ce(model, batch)
            loss.backward()
            opt.step()
            if step == poison_at:
                with torch.no_grad():
                    model[0].weight[0, 0] = math.nan
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.load(tmp_path / "run"), batch


def test_every_probe_records_its_declared_metrics_in_a_monitor(tmp_path):
    model, batch = _small_problem(n=32)
    probes = [
        GradientCoherenceProbe(_ce, batch, every=2),
        GradientNoiseScaleProbe(_ce, batch, every=2, smoothing=0.5),
        TopSubspaceProbe(_ce, batch, every=2, k=3),
        LossLandscapeProbe(_ce, batch, every=2, directions=2),
        SignalPropagationProbe(batch[0], every=2, jacobian=True),
    ]
    run, _ = _train_with(tmp_path, probes)
    names = run.names()
    for probe in probes:
        for metric in probe.metrics:
            if metric.name == "top_subspace_overlap":
                continue  # from the second probe on: checked below
            assert any(metric.owns(n) for n in names), metric.name
    steps, overlap = run.series("top_subspace_overlap")
    assert steps.tolist() == [2, 4] and all(0 <= v <= 1 + 1e-6 for v in overlap)
    steps, coherence = run.series("gradient_coherence")
    assert steps.tolist() == [0, 2, 4] and all(1e-3 < v <= 32 for v in coherence)
    assert "gradient_coherence/0" in names and "activation_variance/2" in names
    # nothing undeclared: every stored name is owned by a Signal's declaration
    declared, todo = [], [steadygrad.Signal]
    while todo:
        for sub in todo.pop().__subclasses__():
            declared.extend(sub.metrics)
            todo.append(sub)
    for name in names:
        assert any(m.owns(name) for m in declared), name


def test_a_probe_never_raises_into_the_training_loop(tmp_path):
    def broken(model, batch):
        raise RuntimeError("boom")

    _, batch = _small_problem(n=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run, _ = _train_with(
            tmp_path,
            [
                GradientCoherenceProbe(broken, batch, every=1),
                steadygrad.SharpnessProbe(_ce, batch, every=1),
                GradientNoiseScaleProbe(_ce, batch, every=1),
                SignalPropagationProbe(batch[0], every=1),
            ],
            steps=4,
            poison_at=2,
        )
    text = [str(w.message) for w in caught]
    assert any("GradientCoherenceProbe: skipped at step 0: RuntimeError: boom" in t for t in text)
    assert any("GradientNoiseScaleProbe: skipped at step 2" in t and "NaN" in t for t in text)
    assert any("SignalPropagationProbe: skipped at step 3" in t for t in text)
    assert any("SharpnessProbe: skipped at step 2: ValueError" in t for t in text)
    steps, _ = run.series("gradient_noise_scale")
    assert steps.tolist() == [0, 1]  # measured while the weights were finite, then skipped
    assert run.series("loss")[0].tolist() == [0, 1, 2, 3]  # training carried on


def test_probe_arguments_are_checked():
    with pytest.raises(TypeError, match="loss_fn"):
        GradientCoherenceProbe("not callable", None)
    with pytest.raises(ValueError, match="every"):
        TopSubspaceProbe(_ce, None, every=0)
    with pytest.raises(ValueError, match="smoothing"):
        GradientNoiseScaleProbe(_ce, None, smoothing=1.0)
    model, batch = _small_problem()
    with pytest.raises(ValueError, match="dims"):
        loss_landscape(model, _ce, batch, dims=3)
    with pytest.raises(ValueError, match="k="):
        top_subspace_overlap(model, _ce, batch, k=10_000)
