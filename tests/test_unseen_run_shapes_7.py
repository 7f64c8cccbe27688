"""Run shapes the eleventh wave's runs showed, each a trigger and a control: one outlier batch
whose gradient inflated Adam's second moment for far longer than the batch itself mattered."""

from __future__ import annotations

import pytest
import torch
from helpers import regression_batch, tiny_mlp
from torch import nn

import steadygrad


def _outlier_under_adam(tmp_path, beta2: float, scale: float):
    """A regression MLP under Adam(betas=(0.9, beta2)); at step 100 one batch arrives in raw
    units (inputs and targets x ``scale``): a loss spike, and a gradient ~``scale`` times the
    usual that fills the second moment, which forgets it over ~1/(1 - beta2) steps."""
    torch.manual_seed(0)
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, beta2))
    mon = steadygrad.Monitor(model, opt, tmp_path / f"b{beta2}", progress=False)
    for step in range(260):
        x, y = regression_batch(step % 16)
        if step == 100:
            x, y = x * scale, y * scale
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    return steadygrad.diagnose(tmp_path / f"b{beta2}")


@pytest.mark.parametrize("beta2, scale", [(0.999, 30.0), (0.9, 300.0)])
def test_an_outlier_whose_harm_outlives_it_in_adams_moments_names_the_poisoning(
    tmp_path, beta2, scale
):
    # Trigger: beta2 = 0.999 remembers the outlier's gradient for ~1000 steps; 100 steps after
    # it the updates are still a third of their size: the batch is gone, the harm it left in
    # the optimizer's state is what holds the run back. Control: beta2 = 0.9 forgets even a
    # gradient 300x the usual within ~100 steps: the outlier batch is the story
    report = _outlier_under_adam(tmp_path, beta2, scale)
    causes = report.causes()
    poisoned = next(d for d in report.diagnoses if d.cause == "adam_second_moment_poisoned")
    assert poisoned.first_step == 100 and "data_outlier" in causes
    assert poisoned.evidence["update_ratio_after_over_before"] < 0.5  # damped at first, both
    later = poisoned.evidence.get("update_ratio_later_over_before")
    if beta2 > 0.99:
        assert report.top is poisoned and later < 0.5
        assert "100 steps on they were still at" in poisoned.summary
    else:
        assert report.top.cause == "data_outlier" and later is None
        assert causes.index("adam_second_moment_poisoned") > causes.index("loss_spike")
