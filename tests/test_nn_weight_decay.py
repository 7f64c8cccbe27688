import pytest
import torch

from steadygrad.nn import IndependentWeightDecay, decay_weights_


def test_step_with_zero_direction_shrinks_by_one_minus_decay_whatever_the_lr():
    for lr in (1e-4, 1.0):
        w = torch.nn.Parameter(torch.full((3, 2), 2.0))
        opt = IndependentWeightDecay(torch.optim.SGD([w], lr=lr), weight_decay=0.1)
        w.grad = torch.zeros_like(w)
        opt.step()
        torch.testing.assert_close(w.detach(), torch.full((3, 2), 2.0 * 0.9))


def test_schedule_factor_scales_the_decay_and_vectors_are_skipped():
    w = torch.nn.Parameter(torch.ones(2, 2))
    b = torch.nn.Parameter(torch.ones(2))
    opt = IndependentWeightDecay(torch.optim.SGD([w, b], lr=0.5), weight_decay=0.2)
    opt.param_groups[0]["lr"] = 0.25  # schedule factor 1/2
    w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), 0.9))
    torch.testing.assert_close(b.detach(), torch.ones(2))


def test_rejects_coupled_decay_and_bad_values():
    w = torch.nn.Parameter(torch.ones(2, 2))
    with pytest.raises(ValueError, match="weight_decay=0"):
        IndependentWeightDecay(torch.optim.AdamW([w], lr=1e-3))
    with pytest.raises(ValueError, match="weight_decay"):
        decay_weights_([w], weight_decay=-0.1)
