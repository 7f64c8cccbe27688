"""Gradient estimators against independent computations: the forward gradient's expectation,
DFA's formula, Forward-Forward's layer-local losses, ReSTE's rescaling, and the Monitor signal."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import steadygrad
from steadygrad.estimators import (
    ESTIMATOR_COSINE,
    ESTIMATOR_NORM_RATIO,
    Backprop,
    DirectFeedbackAlignment,
    EstimatorAlignment,
    ForwardForward,
    ForwardForwardMLP,
    ForwardGradient,
    ReSTE,
    expected_cosine,
)
from steadygrad.nn import BinaryLinear


def _batch(n=16, d=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(classes, (n,), generator=g)


def _true_grad(model, batch):
    x, y = batch
    return torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))


def test_forward_gradient_is_unbiased_within_its_standard_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    batch = _batch()
    true = torch.cat([g.reshape(-1) for g in _true_grad(model, batch)]).double()
    est = ForwardGradient(model, seed=1)
    draws = torch.stack(
        [torch.cat([u.reshape(-1) for u in est.estimate(batch)[1]]).double() for _ in range(1500)]
    )
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    z = (mean - true) / se
    assert z.abs().max() < 4.5  # 39 coordinates: |z| > 4.5 has probability ~3e-4
    assert (z.abs() < 2).float().mean() > 0.85  # about 95% expected within 2 SE
    # and the estimate is not the gradient itself: one draw is far from it
    assert torch.nn.functional.cosine_similarity(draws[0], true, dim=0) < 0.9


def test_forward_gradient_cosine_expectation_matches_known_values():
    assert expected_cosine(2) == pytest.approx(2 / math.pi)  # mean |cos| on the circle
    assert expected_cosine(3) == pytest.approx(0.5)  # on the sphere: |cos| is uniform on [0, 1]
    n = 10_000
    assert expected_cosine(n) == pytest.approx(math.sqrt(2 / (math.pi * n)), rel=1e-3)


def test_dfa_update_matches_its_formula_on_a_two_layer_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    x, y = _batch()
    est = DirectFeedbackAlignment(model, seed=3)
    est.backward((x, y))
    with torch.no_grad():  # by hand: e = (softmax - onehot) / N, delta = (e B^T) * relu'(a)
        a1 = x @ model[0].weight.t() + model[0].bias
        h1 = a1.clamp_min(0)
        logits = h1 @ model[2].weight.t() + model[2].bias
        e = (logits.softmax(1) - F.one_hot(y, 3).float()) / len(x)
        delta = (e @ est.feedback[0].t()) * (a1 > 0).float()
    torch.testing.assert_close(model[0].weight.grad, delta.t() @ x)
    torch.testing.assert_close(model[0].bias.grad, delta.sum(0))
    torch.testing.assert_close(model[2].weight.grad, e.t() @ h1)  # output layer: exact
    torch.testing.assert_close(model[2].bias.grad, e.sum(0))
    with pytest.raises(TypeError, match="Sequential"):
        DirectFeedbackAlignment(ForwardForwardMLP(5, [4], 3))


def test_forward_forward_updates_are_layer_local():
    torch.manual_seed(0)
    model = ForwardForwardMLP(5, [6, 4], 3)
    x, y = _batch()
    est = ForwardForward(model, threshold=0.5, seed=0)
    est.compare_next = True
    est.backward((x, y))
    neg = est._negative
    assert (neg != y).all()
    # Layer 0's update is the gradient of its own loss alone, written out by hand.
    w, b = model.layers[0].weight, model.layers[0].bias

    def layer0_loss(labels):
        z = torch.cat([x, F.one_hot(labels, 3).float()], 1)
        z = z / z.pow(2).mean(1, keepdim=True).add(1e-8).sqrt()
        return torch.relu(z @ w.t() + b).pow(2).mean(1)

    loss0 = (F.softplus(0.5 - layer0_loss(y)) + F.softplus(layer0_loss(neg) - 0.5)).mean()
    gw, gb = torch.autograd.grad(loss0, [w, b])
    torch.testing.assert_close(w.grad, gw)
    torch.testing.assert_close(b.grad, gb)
    # The last layer's update is the true gradient of the summed loss; the first one's is not.
    assert float(est.last[ESTIMATOR_COSINE.key("layers.1.weight")]) == pytest.approx(1, abs=1e-5)
    assert float(est.last[ESTIMATOR_COSINE.key("layers.0.weight")]) < 0.9999
    assert model(x).shape == (16, 3)


def test_reste_at_o_one_is_a_rescaled_binary_weight_gradient():
    torch.manual_seed(0)
    layer = BinaryLinear(5, 4, o=1.0)
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(4, 3))
    x, y = _batch()
    est = ReSTE(model)
    est.compare_next = True
    est.backward((x, y))
    # By hand: dL/dW_b through the binarised weights, then the identity STE times mean|W|.
    scale = layer.weight.abs().mean().detach()
    wb = (scale * torch.where(layer.weight >= 0, 1.0, -1.0)).detach().requires_grad_(True)
    loss = F.cross_entropy(model[2](torch.relu(F.linear(x, wb, layer.bias))), y)
    (g_wb,) = torch.autograd.grad(loss, [wb])
    assert layer.weight.abs().max() < 1.5  # inside the threshold: no clipping
    torch.testing.assert_close(layer.weight.grad, scale * g_wb)
    assert float(est.last[ESTIMATOR_COSINE.key("0.weight")]) == pytest.approx(1, abs=1e-6)
    assert float(est.last[ESTIMATOR_NORM_RATIO.key("0.weight")]) == pytest.approx(float(scale))


def test_alignment_signal_records_the_cosine_against_backprop(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    est = DirectFeedbackAlignment(model, seed=0)
    signal = EstimatorAlignment(est, every=3)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", signals=[signal], progress=False)
    for step in range(7):
        batch = _batch(seed=step)
        true = torch.cat([g.reshape(-1) for g in _true_grad(model, batch)])
        loss = est.backward(batch)
        update = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        opt.step()
        record = mon.step(loss)
        opt.zero_grad()
        if step % 3 == 0:
            expected = F.cosine_similarity(update, true, dim=0).item()
            assert record.values[ESTIMATOR_COSINE.key()] == pytest.approx(expected, abs=1e-5)
            ratio = (update.norm() / true.norm()).item()
            assert record.values[ESTIMATOR_NORM_RATIO.key()] == pytest.approx(ratio, rel=1e-5)
            assert record.values[ESTIMATOR_COSINE.key("2.weight")] == pytest.approx(1, abs=1e-5)
        else:
            assert ESTIMATOR_COSINE.key() not in record.values
    mon.close()
    with pytest.raises(TypeError, match="estimator"):
        EstimatorAlignment(model)
    with pytest.raises(TypeError, match="batch"):
        Backprop(model).backward(torch.zeros(2, 5))


def test_gradient_estimators_study_claims_on_a_reduced_run(tmp_path):
    from steadygrad.studies.gradient_estimators import run_gradient_estimators

    result = run_gradient_estimators(
        tmp_path,
        steps=200,
        hidden=64,
        compare_every=20,
        estimators=("backprop", "forward_gradient", "dfa", "forward_forward"),
        widths=(8, 64, 512),
        draws=150,
        progress=False,
        plot=False,
    )
    claims = result.claims()
    assert all(claims.values()), claims
    assert result.accuracy["backprop"] > result.accuracy["forward_gradient"]
