"""Run shapes the twelfth wave's runs showed, each a trigger and a control: a steady climb of
the output log-partition read on its cadence, with the extra readings the monitor takes after
a finding in between."""

from __future__ import annotations

import math

import pytest

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
