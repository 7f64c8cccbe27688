"""Run shapes from the fifty-third session.

Each change has a trigger (a held-out scenario it was found on, or a loop written here) and a
control that must not move."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import induced_report, steadygrad


def _stride_by_hand(run_dir) -> float:
    """The norm of all the weights' growth a step over the second half of its record, over
    ``lr * sqrt(count)``: the most an Adam-type step moves ``count`` weights."""
    run = steadygrad.load(run_dir)
    steps, norms = run.series("param_norm")
    ok = np.isfinite(norms)
    steps, norms = steps[ok].astype(float), norms[ok]
    half = len(norms) // 2
    at, lr = run.series("lr/0")
    rate = float(np.median(lr[at >= steps[half]]))
    slope = np.polyfit(steps[half:], norms[half:], 1)[0]
    return slope / (rate * math.sqrt(run.config["parameters"]))


@pytest.mark.parametrize("name", ["h483_gobelin_l2_sign", "h173_beehive_tare_drift"])
def test_gradients_that_grew_with_weights_pushed_at_adams_full_stride_follow_them(tmp_path, name):
    # Set 483's L2 penalty subtracted under AdamW, set 173's targets drifting a little further
    # every step under Adam: every weight moves its learning rate one way every step, the norm
    # of all of them growing by about lr * sqrt(count) a step; the gradients grow with the
    # weights and the loss climbs. Named the climb, the gradient growth its consequence, not
    # exploding gradients
    report = induced_report(tmp_path, name)
    assert report.top.cause == "loss_divergence"
    grown = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert "full stride" in grown.consequence_of
    share = _stride_by_hand(tmp_path / name)
    assert share > 0.5  # the oracle: over half the full stride, from the stored series
    assert grown.evidence["pushed_stride"] == pytest.approx(share, rel=1e-6)


def test_gradients_exploding_through_depth_under_adam_are_not_a_push(tmp_path):
    # Control: a controller trained through a mass-spring simulator whose explicit-Euler time
    # step is past its stability limit, under RAdam: the gradients explode through time, and
    # the weights' norm moves at a hundredth of the full stride (an explosion's bounded updates
    # go every way): still exploding gradients
    name = "h370_hammock_euler_dt_typo"
    report = induced_report(tmp_path, name)
    assert report.top.cause == "exploding_gradients"
    assert abs(_stride_by_hand(tmp_path / name)) < 0.1
