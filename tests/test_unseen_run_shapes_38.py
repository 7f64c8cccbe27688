"""Run shapes from the forty-second session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored, held_out_run, induced_or_skip


def test_one_batch_whose_error_made_the_gradient_is_the_break_even_as_the_loss_climbs_on(tmp_path):
    # Trigger: set 156's rope-strength regressor under SGD with momentum; one shard at step 120
    # has its targets in newtons for kilonewtons: the loss jumps 1e7x, the gradient 7,500x, on
    # a calm run's weights, and the thrown weights keep every later loss higher still (no next
    # batch stood below it to show the data had not changed). Three chance rises of the
    # gradient before the batch were read as steps past 2/sharpness.
    ctx, report = held_out_run(tmp_path, "h156_ropemaking_strength_newton_shard")
    induced_or_skip(ctx)
    assert report.top.cause == "data_outlier" and report.top.first_step == 120
    assert "never came back" in report.top.summary


def test_a_longer_sequence_exposing_a_recurrence_is_still_its_explosion(tmp_path):
    # Control: set 114's IRNN tagger, whose curriculum moves to 256-byte windows at step 100:
    # the loss rises 34x and the gradient 3,000x (amplified through time, not made by an error
    # in the batch), and the run breaks two steps later. It stays an explosion.
    ctx, report = held_out_run(tmp_path, "h114_sentence_boundary_irnn_curriculum_asgd")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients"
    assert "data_outlier" not in report.causes()


@pytest.mark.parametrize("gradient_ratio", [100.0, 1e7])
def test_a_break_at_a_spike_is_the_batchs_only_when_the_loss_rose_more_than_the_gradient(
    tmp_path, gradient_ratio
):
    # A calm SGD run; at step 100 the loss jumps 2.5e6x its baseline and the run climbs on from
    # there to a NaN three steps later, each loss above the last. The batch's error made the
    # gradient when the gradient rose less than the loss did (a squared error grows with the
    # error's square, its gradient with the error); a gradient risen more than the loss was
    # amplified by the network, which no bad batch explains.
    calm = 100
    rows = [{"loss": 0.02 + 0.5 * 0.8**t, "grad_norm": 0.15, "lr/0": 0.1} for t in range(calm)]
    rows += [{"loss": 5e4 * 100**k, "grad_norm": 15.0 * 100**k, "lr/0": 0.1} for k in range(3)]
    rows += [{"loss": math.nan, "grad_norm": math.nan, "lr/0": 0.1} for _ in range(3)]
    spike = {"ratio": 2.5e6, "baseline": 0.02, "loss": 5e4}
    findings = [
        ("loss_spike", calm, None, spike, "warning"),
        ("grad_norm_spike", calm, None, {"ratio": gradient_ratio, "grad_norm": 15.0}, "warning"),
        ("gradient_spike", calm, "fc.weight", {"spike_factor": 100.0}, "warning"),
        ("loss_divergence", calm, None, {"ratio": 2.5e6, "best_level": 0.02}, "critical"),
        ("nonfinite", calm + 3, None, {}, "critical"),
    ]
    name = f"ratio{gradient_ratio:g}"
    report = diagnose_stored(tmp_path, name, rows, findings, config={"optimizer_family": "sgd"})
    if gradient_ratio < spike["ratio"]:
        assert report.top.cause == "data_outlier" and report.top.first_step == calm
    else:
        assert "data_outlier" not in report.causes()
