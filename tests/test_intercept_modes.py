"""Signals that intercept functional calls stop watching once the gradients are final (the
optimizer's pre-step path), so the optimizer's calls do not pass through their mode; a mode
the user entered after theirs stays on."""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import steadygrad
from steadygrad.core.metrics import DEAD_UNITS


class Counting(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def test_interception_ends_before_the_update_and_leaves_the_users_mode_on(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    x = torch.randn(16, 4)
    before = torch._C._len_torch_function_stack()
    assert before > 0  # step 0 is due: the mechanism signals watch this forward pass
    loss = model(x).square().mean()
    loss.backward()
    user = Counting()
    with user:
        opt.step()  # the pre-step hook takes the Monitor's modes off, not the user's
        assert torch._C._len_torch_function_stack() == 1
        calls = user.calls
        torch.zeros(1).add_(1)
        assert user.calls == calls + 2  # still the user's mode that sees calls
    record = mon.step(loss)
    mon.close()
    assert torch._C._len_torch_function_stack() == 0
    assert record is not None and DEAD_UNITS.key("0") in record.values  # measured all the same
