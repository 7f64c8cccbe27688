"""Run shapes from the twenty-eighth session's held-out controls (sets 88-101).

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import steadygrad


class _Matcher(nn.Module):
    """Features of each cell of an image; the matching logits are computed by the caller (a
    dual-softmax's similarity). ``aux`` is as wide as a batch's cells, by coincidence."""

    def __init__(self, cells: int) -> None:
        super().__init__()
        self.features = nn.Linear(8, 16)
        self.aux = nn.Linear(8, cells)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features(x), self.aux(x)


@pytest.mark.parametrize("ops", [1, 8])
def test_logits_computed_far_from_any_module_name_no_module_of_their_width(tmp_path, ops):
    # Trigger: set 100's EfficientLoFTR control, whose matching similarity is computed by the
    # caller over many operations from the model's features; the head was then taken to be
    # the latest module whose output was as wide as the logits (an activation inside its
    # attention, 64 wide like an 8x8 grid of cells). A graph to follow back says where the
    # logits come from; a width that only matches does not. Control: logits computed a step
    # from the features still name them.
    cells = 32
    torch.manual_seed(0)
    model = _Matcher(cells)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(cells, 8)
    heads = set()
    with steadygrad.watch(model, opt, tmp_path / str(ops), progress=False) as mon:
        for _ in range(3):
            f, a = model(x)
            for _ in range(ops - 1):
                f = f * 1.0 + 0.0
            sim = f @ f.T / 0.1
            loss = F.cross_entropy(sim, torch.arange(cells)) + 1e-3 * a.pow(2).mean()
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            if "logit_lse_mean" in mon.last_record.values:
                heads.add(mon.last_record.meta.get("output_module"))
    assert heads == ({"features"} if ops == 1 else {None})


class _SpikingReadout(nn.Module):
    """A recurrent body read out at each time step; the caller sums the readouts over time."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.readout = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, outs = torch.zeros_like(x), []
        for _ in range(10):
            h = torch.tanh(self.body(h) + x)
            outs.append(self.readout(h))
        return outs


def test_logits_summed_over_time_steps_name_the_readout(tmp_path):
    # Control: the logits are a sum of ten readouts, too many steps back along first inputs;
    # the last readout is one step away by the other input
    torch.manual_seed(0)
    model = _SpikingReadout()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    heads = set()
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(3):
            logits = torch.zeros(16, 4)
            for out in model(x):
                logits = logits + out
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            if "logit_lse_mean" in mon.last_record.values:
                heads.add(mon.last_record.meta.get("output_module"))
    assert heads == {"readout"}
