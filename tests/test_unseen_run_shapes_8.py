"""Run shapes the twelfth wave's runs showed, each a trigger and a control: a steady climb of
the output log-partition read on its cadence, with the extra readings the monitor takes after
a finding in between; units killed by a burst of the learning rate that was over at once."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import steadygrad
from steadygrad.core import Record
from steadygrad.diagnose.detectors.base import Cadence
from steadygrad.diagnose.detectors.transformer import OutputLogitDivergence


def _climb(closer_looks: bool) -> list[int]:
    """log Z read every 25 steps, rising one nat a reading from log(10) while the loss stays
    where it began (unearned); with ``closer_looks``, three extra readings after step 100, the
    first a little lower (another batch): the steps it warned at."""
    detector, found = OutputLogitDivergence(), []
    readings = [(25 * k, math.log(10) + k) for k in range(12)]
    if closer_looks:
        at_100 = readings[4][1]
        readings += [(101, at_100 - 0.2), (102, at_100 - 0.1), (103, at_100 + 0.05)]
    for step, lse in sorted(readings):
        record = Record(step, {"logit_lse_mean": lse, "loss": math.log(10)})
        found += [f.step for f in detector.update(record)]
    return found


@pytest.mark.parametrize("closer_looks", [False, True])
def test_a_steady_climb_of_log_z_is_judged_on_its_cadence(closer_looks):
    # Trigger: closer looks after a finding read the next steps' batches, whose scatter is not
    # the drift; one a little lower used to restart the count of rises, and the warning came
    # two readings later. Control: the same climb with no closer looks: the warning comes at
    # the sixth rise on the cadence, five nats up, in both
    assert _climb(closer_looks)[:1] == [150]


def test_the_cadence_is_the_first_gap_and_extra_readings_fall_inside_half_of_it():
    cadence = Cadence()
    steps = (0, 25, 26, 27, 28, 50, 51, 75)
    assert [cadence.on(s) for s in steps] == [True, True, False, False, False, True, False, True]


def _rate_burst(tmp_path, burst: int):
    """A ReLU MLP learning a teacher under RMSprop at 1e-3; from step 80 its rate is 30x for
    ``burst`` steps, then back: the step kills most of the second layer's units."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2))
    model = nn.Sequential(
        nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    mon = steadygrad.Monitor(model, opt, tmp_path / str(burst), progress=False)
    data = torch.Generator().manual_seed(1)
    for step in range(220):
        opt.param_groups[0]["lr"] = 3e-2 if 80 <= step < 80 + burst else 1e-3
        x = torch.randn(64, 8, generator=data)
        with torch.no_grad():
            y = teacher(x)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss)
    mon.close()
    return steadygrad.diagnose(tmp_path / str(burst))


@pytest.mark.parametrize("burst", [3, 1000])
def test_units_killed_by_a_burst_of_the_rate_are_the_harm_that_stayed(tmp_path, burst):
    # Trigger: three steps at 30x the rate, then back: the burst is over, the units it killed
    # stay dead (the dead-unit signal reads 84% of the layer to the end): what to fix is the
    # dead layer, dated to the burst. Control: the rate raised and kept there: the step size
    # is the cause, and the units it killed come after it
    report = _rate_burst(tmp_path, burst)
    causes = report.causes()
    assert {"loss_of_plasticity", "sharpness_above_limit"} <= set(causes)
    plasticity = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
    assert plasticity.where[0] == "2"
    if burst < 30:
        assert report.top is plasticity and plasticity.first_step == 80
        assert "killed in a burst of the learning rate (30x at step 80, back at step 83)" in (
            plasticity.summary
        )
        assert causes.index("sharpness_above_limit") == 1
    else:
        assert report.top.cause == "sharpness_above_limit"
        assert "burst" not in plasticity.summary
