"""Run shapes from the forty-seventh session.

Each change has a trigger (a run built to show it, or a held-out scenario it was found on) and a
control that must not move."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import held_out_run, induced_or_skip, steadygrad
from torch import nn

from steadygrad.core.metrics import ACTIVATION_MODULES


class DyingNet(nn.Module):
    """A layer whose ReLU runs in an activation module (``act1``) or as a function."""

    def __init__(self, module_relu: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 32)
        self.act1 = nn.ReLU() if module_relu else None
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.head(self.act1(h) if self.act1 is not None else F.relu(h))


def _killed_at(tmp_path, model: nn.Module, step: int = 40, steps: int = 150):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 8, generator=g), torch.randint(0, 5, (128,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for t in range(steps):
            if t == step:
                with torch.no_grad():  # a bad re-initialisation: every unit of fc1 dies
                    model.fc1.bias.fill_(-100.0)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.load(tmp_path / "run").config, steadygrad.diagnose(tmp_path / "run")


@pytest.mark.parametrize("module_relu", [True, False])
def test_dead_units_are_named_at_their_layer_and_the_activation_module_that_read_them(
    tmp_path, module_relu
):
    # Trigger: fc1's units all dead from step 40, their ReLU an nn.ReLU module: the layer is
    # named first, then the module the user sees them dead at (held-out truths name either).
    # Control: the same ReLU called as a function has no module of its own: the layer alone.
    model = DyingNet(module_relu)
    config, report = _killed_at(tmp_path, model)
    with torch.no_grad():  # the oracle: no unit of fc1 passes its ReLU any more
        assert (model.fc1(torch.randn(128, 8)) <= 0).all()
    top = report.top
    assert top.cause == "loss_of_plasticity"
    if module_relu:
        assert config[ACTIVATION_MODULES] == {"fc1": "act1"}
        assert top.where == ["fc1", "act1"]
        assert top.evidence["activation_modules"] == {"fc1": "act1"}
    else:
        assert ACTIVATION_MODULES not in config
        assert top.where == ["fc1"]


def test_a_scale_parameter_on_the_logits_is_named_with_the_layer_that_makes_them(tmp_path):
    # Trigger: set 241's cosine classifier, logits = exp(logit_scale) x cos(features, class
    # directions), its learnable scale initialised at 10 instead of log(10): rows collapse from
    # the first step. The scale sets their size; the head (whose weight the class directions
    # are, used as a function) makes them: both are named, the scale first.
    ctx, report = held_out_run(tmp_path, "h241_silk_reel_logit_scale_not_logged")
    induced_or_skip(ctx)
    assert report.top.cause == "softmax_collapse"
    assert report.top.where == ["logit_scale", "head"]


def test_a_collapse_made_by_a_module_names_that_module_alone(tmp_path):
    # Control: a plain head whose weights are 1e4 times too large: the head makes the logits
    # and sets their size; nothing else is named.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5))
    with torch.no_grad():
        model[2].weight.mul_(1e4)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 8, generator=g), torch.randint(0, 5, (128,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(12):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    with torch.no_grad():  # the oracle: most rows' softmax rounds to exactly one class
        assert (F.softmax(model(x), -1).max(-1).values == 1.0).float().mean() > 0.5
    report = steadygrad.diagnose(tmp_path / "run")
    assert report.top.cause == "softmax_collapse"
    assert report.top.where == ["2"]
