import math

import pytest
import torch

from steadygrad.nn import BinaryLinear, reste_derivative, reste_power_schedule, reste_sign


def slope_by_hand(z, o, t=1.5, c=0.1):
    a = abs(z)
    if a > t:
        return 0.0
    if a <= c:
        return c ** (1 / o) / c
    return (1 / o) * a ** ((1 - o) / o)


@pytest.mark.parametrize("o", [1.0, 2.0, 3.0])
def test_backward_matches_formula(o):
    zs = [-2.0, -1.5, -0.7, -0.1, -0.05, 0.0, 0.03, 0.1, 0.5, 1.2, 1.5, 1.6]
    z = torch.tensor(zs, dtype=torch.float64, requires_grad=True)
    upstream = torch.linspace(0.5, 2.0, len(zs), dtype=torch.float64)
    out = reste_sign(z, o=o)
    out.backward(upstream)
    expected = [u * slope_by_hand(v, o) for u, v in zip(upstream.tolist(), zs, strict=True)]
    assert z.grad.tolist() == pytest.approx(expected, rel=1e-12)
    assert out.tolist() == [-1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1]


def test_paper_example_and_identity_ste_at_o_one():
    assert float(reste_derivative(torch.tensor(0.5), o=3.0)) == pytest.approx(
        (1 / 3) * 0.5 ** (-2 / 3), rel=1e-6
    )
    assert float(reste_derivative(torch.tensor(0.5), o=3.0)) == pytest.approx(0.529, abs=1e-3)
    ones = reste_derivative(torch.tensor([-1.4, -0.05, 0.3, 1.0]), o=1.0)
    torch.testing.assert_close(ones, torch.ones(4))


def test_schedule_anneals_from_one_to_o_end():
    assert reste_power_schedule(0, 10) == 1.0
    assert reste_power_schedule(10, 10) == 3.0
    assert reste_power_schedule(5, 10) == pytest.approx(1 + 2 * (1 - math.cos(math.pi / 4)))


def test_binary_linear_uses_scaled_signs_and_reste_gradient():
    layer = BinaryLinear(3, 2, bias=False, o=2.0)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.2, 2.0], [-0.05, 1.0, -0.4]]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    scale = layer.weight.abs().mean().item()
    signs = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])
    torch.testing.assert_close(layer(x), x @ (scale * signs).T)
    layer(x).sum().backward()
    w = layer.weight.detach()
    slopes = torch.tensor([[slope_by_hand(v, 2.0) for v in row] for row in w.tolist()])
    torch.testing.assert_close(layer.weight.grad, scale * x.expand(2, 3) * slopes)


def test_bad_arguments():
    with pytest.raises(ValueError, match="o"):
        reste_sign(torch.zeros(2), o=0.5)
    with pytest.raises(ValueError, match="epoch"):
        reste_power_schedule(11, 10)
