"""Run shapes from the forty-eighth session.

Each change has a trigger (a run built to show it, or a held-out scenario it was found on) and a
control that must not move."""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F
from helpers import held_out_run, induced_or_skip, steadygrad
from torch import nn

from steadygrad.core.metrics import INPUT_LAYER


class Backwards(nn.Module):
    """Modules declared in the opposite order to the one the forward runs them in."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(16, 3)
        self.act = nn.ReLU()
        self.body = nn.Linear(16, 16)
        self.stem = nn.Linear(6, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.body(self.act(self.stem(x)))))


def test_the_layer_that_reads_the_batch_is_noted_in_the_order_the_forward_ran(tmp_path):
    # Trigger: stem reads the batch though it is declared last; the oracle is a hook of our own
    # on every module, recording the first module holding weights whose forward received x.
    model = Backwards()
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    fed = []
    handles = [
        m.register_forward_hook(lambda m, a, o, n=n: fed.append(n) if a[0] is x else None)
        for n, m in model.named_modules()
        if n and next(m.parameters(recurse=False), None) is not None
    ]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(3):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    for h in handles:
        h.remove()
    assert fed[0] == "stem"
    assert steadygrad.load(tmp_path / "run").config[INPUT_LAYER] == fed[0]


def test_an_overflow_of_raw_inputs_is_placed_at_the_layer_that_reads_them(tmp_path):
    # Trigger: set 296's fp16 regressor fed pressures in raw kPa (RMS near 50 where standardised
    # features sit near 1): the scaled gradients overflow float16, the head's first in the
    # backward pass, but what made them too large entered at fc1, which reads the inputs.
    # (The control, set 236's standardised images overflowing under a scale that doubles
    # every step, keeps naming the head alone: test_unseen_run_shapes_47.)
    ctx, report = held_out_run(tmp_path, "h296_balloon_raw_kpa_fp16")
    induced_or_skip(ctx)
    found = next(d for d in report.diagnoses if d.cause == "amp_overflow")
    inputs = steadygrad.load(tmp_path / "h296_balloon_raw_kpa_fp16").series("input_rms")[1]
    assert found.where[0] == "fc1"
    assert found.evidence["input_rms"] == pytest.approx(statistics.median(inputs.tolist()))
    assert found.evidence["input_rms"] > 10
    assert "read by fc1" in found.summary
