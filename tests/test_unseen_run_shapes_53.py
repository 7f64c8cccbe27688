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


def _moved_over_reach(run_dir, step: int, reach: float) -> float:
    """How far the norm of all the weights moved into ``step``, over ``reach * lr * sqrt(count)``:
    the most ``count`` weights move in one step of an optimizer that moves each by ``reach``
    learning rates at most."""
    run = steadygrad.load(run_dir)
    steps, norms = run.series("param_norm")
    at, lr = run.series("lr/0")
    moved = abs(float(norms[steps == step][0] - norms[steps == step - 1][0]))
    return moved / (reach * float(lr[at == step][0]) * math.sqrt(run.config["parameters"]))


@pytest.mark.parametrize(
    "name, step, cause",
    [
        ("h488_camogie_weight_noise_resume", 150, "loss_spike"),
        ("h487_bog_oak_raw_counts", 100, "data_outlier"),
    ],
)
def test_weights_moved_further_than_any_step_reaches_were_put_there(tmp_path, name, step, cause):
    # RMSprop moves a weight by at most lr / sqrt(1 - alpha) in one step (10 rates at alpha
    # 0.99; twice that, the margin): the norm of N weights by 20 * lr * sqrt(N). Trigger: set
    # 488's weight noise typed 0.1 for 0.001 on resume moved the norm from 6.2 to 8.2 in one
    # step, with a gradient 4x its usual: further than any step reaches, so the weights were
    # put there, and the loss spike is named (not one batch's outlier). Control: set 487's
    # shard in raw counts, whose gradient was far larger, moved them within reach: the batch
    reach = 2 / math.sqrt(1 - 0.99)
    report = induced_report(tmp_path, name)
    assert report.top.cause == cause
    moved = _moved_over_reach(tmp_path / name, step, reach)
    if cause == "loss_spike":
        assert moved > 1
        assert "replaced" in report.top.summary
    else:
        assert moved < 1
