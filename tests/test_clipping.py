"""Clipping vs torch.nn.utils.clip_grad_norm_, per-unit hand computations and a planted spike."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from steadygrad.optim.clipping import (
    SpikeClipper,
    adaptive_clip_grad,
    clip_grad_norm,
    clip_spikes,
)


def _model_with_grads(seed: int = 0, scale: float = 1.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale
    return model


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    twin = _model_with_grads()
    twin.load_state_dict(model.state_dict())
    for p, q in zip(twin.parameters(), model.parameters(), strict=True):
        p.grad = None if q.grad is None else q.grad.clone()
    return twin


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])  # clipping and not clipping
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    ours, theirs = _model_with_grads(), _model_with_grads()
    got = clip_grad_norm(ours.parameters(), max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm, norm_type)
    assert isinstance(got, torch.Tensor) and got.dim() == 0
    torch.testing.assert_close(got, expected)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def test_clip_grad_norm_skips_missing_grads_and_touches_no_parameter():
    model = _model_with_grads(scale=10.0)
    model[2].bias.grad = None
    before = [p.detach().clone() for p in model.parameters()]
    twin = _copy(model)
    norm = clip_grad_norm(model.parameters(), 1.0)
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0))
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)
    assert model[2].bias.grad is None


class _NoHostSync(TorchDispatchMode):
    """Raises on the op behind .item(), bool(), float() and Python branching on a tensor."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("host synchronisation: a tensor value was read on the host")
        return func(*args, **(kwargs or {}))


def test_the_no_sync_guard_catches_item():
    with pytest.raises(AssertionError, match="host synchronisation"), _NoHostSync():
        torch.ones(2).sum().item()


def test_clip_grad_norm_reads_no_tensor_value_on_the_host(monkeypatch):
    model = _model_with_grads(scale=10.0)

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation via a Tensor method")

    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with _NoHostSync():
        norm = clip_grad_norm(model.parameters(), 1.0)
    monkeypatch.undo()
    assert float(norm) > 1.0


def test_clip_grad_norm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(_model_with_grads().parameters(), 0.0)
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm(_model_with_grads().parameters(), 1.0, norm_type=-1.0)
    with pytest.raises(TypeError, match="parameters"):
        clip_grad_norm([1.0], 1.0)


def _agc_by_hand(weight: torch.Tensor, grad: torch.Tensor, clipping: float, eps: float):
    """Loop over units one by one: rows of a matrix, filters of a conv, or the whole vector."""
    out = grad.clone()
    units = [slice(None)] if weight.dim() <= 1 else range(weight.shape[0])
    for i in units:
        w_norm = max(math.sqrt(float((weight[i] ** 2).sum())), eps)
        g_norm = math.sqrt(float((grad[i] ** 2).sum()))
        if g_norm / w_norm > clipping:
            out[i] = grad[i] * (clipping * w_norm / g_norm)
    return out


def test_adaptive_clip_grad_matches_per_unit_hand_computation():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(2, 4, 3)
    linear = torch.nn.Linear(6, 5)
    with torch.no_grad():
        linear.weight[3].zero_()  # a dead unit: its norm is floored at eps
    params = [conv.weight, conv.bias, linear.weight, linear.bias]
    scales = [0.01, 1.0, 0.3, 0.001]  # some units under the limit, some over
    for p, s in zip(params, scales, strict=True):
        p.grad = torch.randn_like(p) * s
    weights = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    expected = [_agc_by_hand(p.detach(), p.grad, 0.05, 1e-3) for p in params]
    adaptive_clip_grad(params, clipping=0.05)
    for p, e, w in zip(params, expected, weights, strict=True):
        torch.testing.assert_close(p.grad, e)
        assert torch.equal(p.detach(), w)
    # The check has teeth: some tensors were clipped and some were not.
    changed = [not torch.equal(e, g) for e, g in zip(expected, grads, strict=True)]
    assert any(changed) and not all(changed)
    row_ratio = linear.weight.grad.norm(dim=1) / linear.weight.detach().norm(dim=1).clamp_min(1e-3)
    assert row_ratio.max() == pytest.approx(0.05, rel=1e-5)
    assert linear.weight.grad[3].norm() == pytest.approx(0.05 * 1e-3, rel=1e-5)


def test_adaptive_clip_grad_leaves_units_under_the_limit_alone():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
    w.grad = torch.tensor([[0.03, 0.04], [10.0, 0.0]])
    adaptive_clip_grad([w], clipping=0.02, eps=1e-3)
    # row 0: ||g|| = 0.05 < 0.02 * 5 = 0.1 (kept); row 1: ||g|| = 10 > 0.02 (scaled to 0.02)
    torch.testing.assert_close(w.grad, torch.tensor([[0.03, 0.04], [0.02, 0.0]]))


def test_adaptive_clip_grad_rejects_bad_arguments():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="clipping"):
        adaptive_clip_grad([w], clipping=0.0)
    with pytest.raises(ValueError, match="eps"):
        adaptive_clip_grad([w], eps=-1.0)


def test_spike_clipper_clips_a_planted_1000x_spike_to_its_threshold():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(50))
    theta, beta2 = 5000.0, 0.999
    clipper = SpikeClipper([w], theta=theta, beta2=beta2, warmup_steps=20)
    v = torch.zeros(50, dtype=torch.float64)  # the running second moment, kept independently
    for _ in range(60):
        g = torch.randn(50)
        w.grad = g.clone()
        count = clipper.clip()
        assert int(count) == 0  # Gaussian gradients are never 70x their RMS
        assert torch.equal(w.grad, g)
        v = beta2 * v + (1 - beta2) * g.double() ** 2
    g = torch.randn(50)
    g[7] = -1000.0 * g.abs().max()
    w.grad = g.clone()
    count = clipper.clip()
    assert int(count) == 1
    threshold = math.sqrt(theta * float(v[7]))
    assert float(w.grad[7]) == pytest.approx(-threshold, rel=1e-5)
    assert abs(float(g[7])) > 20 * threshold  # the spike was far above the threshold
    others = torch.arange(50) != 7
    assert torch.equal(w.grad[others], g[others])
    assert torch.equal(w.detach(), torch.zeros(50))


def test_spike_clipper_with_bias_correction_uses_the_corrected_moment():
    w = torch.nn.Parameter(torch.zeros(1))
    clipper = SpikeClipper([w], theta=4.0, beta2=0.9, warmup_steps=1, bias_correction=True)
    w.grad = torch.tensor([1.0])
    clipper.clip()
    w.grad = torch.tensor([10.0])
    clipper.clip()
    # v after one step = 0.1 * 1; corrected = 1; threshold sqrt(4 * 1) = 2
    torch.testing.assert_close(w.grad, torch.tensor([2.0]))


def test_spike_clipper_state_dict_round_trip():
    w = torch.nn.Parameter(torch.zeros(3))
    a = SpikeClipper([w], warmup_steps=0)
    for _ in range(3):
        w.grad = torch.ones(3)
        a.clip()
    b = SpikeClipper([w], warmup_steps=0)
    b.load_state_dict(a.state_dict())
    w.grad = torch.full((3,), 1e4)
    a_count = a.clip()
    a_grad = w.grad.clone()
    w.grad = torch.full((3,), 1e4)
    b_count = b.clip()
    assert int(a_count) == int(b_count) == 3
    torch.testing.assert_close(w.grad, a_grad)


def test_clip_spikes_leaves_never_seen_coordinates_alone():
    g = torch.tensor([5.0, 5.0])
    count = clip_spikes(g, torch.tensor([0.0, 1e-4]), theta=100.0)
    assert int(count) == 1
    torch.testing.assert_close(g, torch.tensor([5.0, 0.1]))


def test_spike_clipper_rejects_bad_arguments():
    w = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="theta"):
        SpikeClipper([w], theta=0.0)
    with pytest.raises(ValueError, match="beta2"):
        SpikeClipper([w], beta2=1.0)
    with pytest.raises(ValueError, match="parameters"):
        SpikeClipper([])
    with pytest.raises(ValueError, match="second_moment"):
        clip_spikes(torch.ones(2), torch.ones(3), 1.0)
