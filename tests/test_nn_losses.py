import math

import pytest
import torch
import torch.nn.functional as F

from steadygrad.nn import log_stablemax, stablemax, stablemax_cross_entropy, stablemax_s, z_loss


def test_z_loss_is_coef_times_mean_squared_logsumexp():
    logits = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    by_hand = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / 5
    assert float(z_loss(logits, coef=1e-4)) == pytest.approx(1e-4 * by_hand, rel=1e-12)


def test_z_loss_gradient_matches_derivation_and_vanishes_at_zero_partition():
    logits = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    z_loss(logits, coef=0.5).backward()
    lse = torch.logsumexp(logits.detach(), -1, keepdim=True)
    expected = 2 * 0.5 * lse * torch.softmax(logits.detach(), -1) / 3  # mean over 3 rows
    torch.testing.assert_close(logits.grad, expected)
    shifted = logits.detach() - lse
    assert float(z_loss(shifted, coef=1.0)) == pytest.approx(0.0, abs=1e-20)


def test_z_loss_rejects_bad_coef():
    with pytest.raises(ValueError, match="coef"):
        z_loss(torch.zeros(2, 3), coef=-1.0)
    with pytest.raises(TypeError, match="coef"):
        z_loss(torch.zeros(2, 3), coef="big")


def s_by_hand(x: float) -> float:
    # The paper's s(x): x + 1 for x >= 0, 1 / (1 - x) for x < 0.
    return x + 1 if x >= 0 else 1 / (1 - x)


def test_stablemax_s_matches_paper_values():
    xs = [-9.0, -1.0, -0.25, 0.0, 0.5, 1.0, 40.0]
    got = stablemax_s(torch.tensor(xs, dtype=torch.float64)).tolist()
    assert got == pytest.approx([s_by_hand(x) for x in xs], rel=1e-15)
    assert got[0] == pytest.approx(0.1) and got[1] == 0.5 and got[3] == 1.0 and got[5] == 2.0


def test_stablemax_probabilities_and_cross_entropy_against_hand_formula():
    x = torch.randn(4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 5
    targets = torch.tensor([0, 3, 8, 2])
    probs = []
    for row in x.tolist():
        s = [s_by_hand(v) for v in row]
        probs.append([v / sum(s) for v in s])
    torch.testing.assert_close(stablemax(x), torch.tensor(probs, dtype=torch.float64))
    torch.testing.assert_close(log_stablemax(x), torch.tensor(probs, dtype=torch.float64).log())
    expected = -sum(math.log(probs[i][t]) for i, t in enumerate(targets.tolist())) / 4
    assert float(stablemax_cross_entropy(x, targets)) == pytest.approx(expected, rel=1e-12)
    # Proposition 1: StableMax is a softmax of log s(x).
    torch.testing.assert_close(stablemax(x), torch.softmax(stablemax_s(x).log(), -1))


def test_stablemax_cross_entropy_uniform_is_log_classes_and_finite_gradients():
    assert float(
        stablemax_cross_entropy(torch.zeros(3, 113), torch.zeros(3, dtype=torch.long))
    ) == (pytest.approx(math.log(113), rel=1e-6))
    # float32 logits far in both branches: the discarded branch must not poison the gradient.
    x = torch.tensor([[50.0, -1e6, 3.0, 1e6]], requires_grad=True)
    stablemax_cross_entropy(x, torch.tensor([0]), dtype=None).backward()
    assert torch.isfinite(x.grad).all()


def test_stablemax_cross_entropy_gradient_by_finite_differences():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1, 4, 0])
    assert torch.autograd.gradcheck(lambda z: stablemax_cross_entropy(z, t), (x,))


def test_stablemax_cross_entropy_checks_shapes_and_reduction():
    with pytest.raises(ValueError, match="targets"):
        stablemax_cross_entropy(torch.zeros(3, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        stablemax_cross_entropy(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), "avg")
    per_row = stablemax_cross_entropy(
        torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), reduction="none"
    )
    assert per_row.shape == (2, 3)


def test_softmax_cross_entropy_reference_differs_from_stablemax():
    # Guard against StableMax silently being softmax: for a logit gap of 3 they must differ.
    x = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([0])
    assert float(stablemax_cross_entropy(x, t)) == pytest.approx(-math.log(4 / 5))
    assert float(F.cross_entropy(x, t)) != pytest.approx(-math.log(4 / 5))
