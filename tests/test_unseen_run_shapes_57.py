"""Run shapes from the fifty-seventh session: a gradient that leapt as an output neared the edge
of the root the replay then caught making a NaN, rows that round to one-hot on a fit, a loss
that climbed at every plain step from the first, and updates that stopped with a loss at 0.

Each change has a trigger (a held-out scenario it was found on) and a control that must not
move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored, held_out_run, induced_or_skip, steadygrad

from steadygrad.core.record import Record
from steadygrad.diagnose.detectors.transformer import (
    FITTED,
    FITTED_AT,
    SoftmaxCollapse,
    UpdateRatioOutOfRange,
)


def _rooted_run(tmp_path, name: str, operation: str, broke: int):
    """A stored run: an ordinary loss, a gradient-norm spike at step 40 the loss did not feel,
    then at step ``broke`` a NaN the replay of the step found made by ``operation`` from var's
    finite output, outside any module."""
    rows = [{"loss": 0.3 + 0.01 * (t % 3), "grad_norm": 0.6 + 0.05 * (t % 4)} for t in range(broke)]
    rows += [{"loss": math.nan, "grad_norm": math.nan}]
    rows[40] = {"loss": 0.31, "grad_norm": 22.0}
    spike = {"grad_norm": 22.0, "baseline": 0.62, "z": 9.5, "ratio": 35.0}
    origin = {
        "module": "var",
        "between": "the model's output",
        "made_in": "<root>",
        "operation": operation,
        "note": f"{operation} made it from var's finite output, outside any module",
        "replayed": True,
        "weights": "before the update",
    }
    findings = [("grad_norm_spike", 40, None, spike, "warning")]
    findings += [
        ("nonfinite", broke, "var", {"loss": math.nan, "forward_origin": origin}, "critical")
    ]
    return diagnose_stored(tmp_path, name, rows, findings)


@pytest.mark.parametrize("operation", ["sqrt", "log", "__rdiv__", "pow"])
def test_a_spike_before_a_nan_an_edged_operation_made_is_the_nans_approach(tmp_path, operation):
    # Trigger: set 587's Gaussian NLL with sigma = sqrt(var) unguarded: as var's output neared
    # zero the gradient leapt 36x (the root's slope is unbounded there; the loss did not jump),
    # and 2 steps later sqrt of a negative was NaN. The replay names the operation, not an
    # output that held a negative: the spike is still the NaN's approach, and the NaN is named.
    report = _rooted_run(tmp_path, operation, operation, broke=42)
    assert report.top.cause == "nonfinite"
    spike = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert "the NaN's approach" in spike.why


@pytest.mark.parametrize(("operation", "broke"), [("exp", 42), ("sqrt", 60)])
def test_a_spike_before_a_nan_with_no_edge_or_long_before_it_is_its_own(tmp_path, operation, broke):
    # Control: an exp that overflowed (no edge its input neared), or a root's NaN 20 steps
    # after the spike (past the steps within which a spike is its approach): the spike is
    # named first, as before this change.
    report = _rooted_run(tmp_path, f"{operation}{broke}", operation, broke)
    assert report.top.cause == "gradient_spike"
    assert "approach" not in report.top.why


def test_the_roots_approach_is_found_on_the_live_run(tmp_path):
    ctx, report = held_out_run(tmp_path, "h587_vent_plume_sqrt_sigma")
    induced_or_skip(ctx)
    assert report.top.cause == "nonfinite"
    assert "var" in report.top.where


def _collapse(losses, scale=None):
    """SoftmaxCollapse over a run whose rows collapse (a third) from step 30, with ``losses``."""
    detector, found = SoftmaxCollapse(), []
    for step, loss in enumerate(losses):
        values = {"loss": loss}
        if step >= 30 and step % 2 == 0:
            values["softmax_collapse"] = 0.3
        if scale is not None:
            values["output_scale"] = scale
        found += detector.update(Record(step, values))
    return found


FITTING = [2.0 * 0.8**t for t in range(60)]  # a loss that falls to 3e-6 of where it began


def test_rows_collapsed_on_a_fit_are_found_at_info():
    # Trigger: set 585's control unfreezing its backbone on separable classes: the loss fell
    # to 1e-3 of where it began and 14% of rows rounded to one-hot: a fit, nothing left to
    # learn on them, found at info with the loss's share of its first value.
    (found,) = _collapse(FITTING)
    assert found.severity == "info"
    level = sorted(FITTING[found.step - 4 : found.step + 1])[2]  # the running median of five
    assert found.evidence[FITTED_AT] == pytest.approx(level / FITTING[0])
    assert found.evidence[FITTED_AT] <= FITTED


@pytest.mark.parametrize(
    ("losses", "scale"),
    [
        (FITTING, 10.0),  # a temperature of 0.1 made the fit round: the number's collapse
        ([2.0 * 0.97**t for t in range(60)], None),  # rows collapsed with the loss at 0.3x
    ],
)
def test_rows_collapsed_under_a_fixed_scale_or_before_a_fit_are_a_warning(losses, scale):
    # Control: the same collapse with the logits multiplied by 10 (the team's digits fine-tune
    # with a temperature typo), or with the loss still at a third of where it began (a
    # temperature typo's rows, wrong and sure): a warning, as before this change.
    (found,) = _collapse(losses, scale)
    assert found.severity == "warning"
    assert FITTED_AT not in found.evidence


def test_a_healthy_fit_that_rounds_rows_is_no_warning_on_the_live_run(tmp_path):
    ctx, report = held_out_run(tmp_path, "h585_knotboard_unfreeze")
    induced_or_skip(ctx)
    run = steadygrad.load(tmp_path / "h585_knotboard_unfreeze")
    collapse = [f for f in run.findings() if f.kind == "softmax_collapse"]
    assert collapse and all(f.severity == "info" for f in collapse)
    assert all(d.severity == "info" for d in report.diagnoses)


def _climbing_run(tmp_path, name: str, losses: list[float], config: dict):
    """A stored run whose loss takes ``losses`` and then is non-finite, from a first gradient
    of ordinary size and weights that grew 1.5x on the first update (not thrown at once), with
    the findings the live run had: a far-out loss at step 2, gradient growth in fc1.bias."""
    rows = [
        {"loss": x, "grad_norm": 3.8 * (x / losses[0]) ** 0.5, "param_norm": 10.0 * 1.5**t}
        for t, x in enumerate(losses)
    ]
    rows += [{"loss": math.inf, "grad_norm": math.inf, "param_norm": math.inf}]
    growth = {"grad_norm_median": 5383.0, "best_level": 10.7, "growth": 502.0}
    growth |= {"best_level_step": 2, "started_at_step": 1}
    findings = [("loss_divergence", 2, None, {"loss": losses[2], "best_level": 3.27}, "critical")]
    findings += [("gradient_growth", 5, "fc1.bias", growth, "critical")]
    return diagnose_stored(tmp_path, name, rows, findings, config=config)


CLIMB = [2.49, 3.27, 42.3, 8.9e3, 2.1e6, 4.5e8, 2.6e11, 4.3e14, 3.9e17, 3.6e20, 3.1e23, 3.2e26]


def test_a_loss_that_climbed_at_every_step_from_the_first_plain_update_is_past_the_limit(
    tmp_path,
):
    # Trigger: set 591's plain SGD at lr 0.9 typed for 0.09 (lr x sharpness 7.7): the first
    # update raised the loss only 1.3x and moved the weights 1.5x, then each step multiplied
    # the loss 13-1000x until it was infinite at step 15. No update threw the weights at once,
    # and the break came after the opening's ten steps; every step overshot further along the
    # sharpest direction: the step size, named over the gradient growth it drove.
    report = _climbing_run(tmp_path, "sgd", CLIMB, {"optimizer_family": "sgd"})
    assert report.top.cause == "sharpness_above_limit"
    assert "at every step" in report.top.summary


@pytest.mark.parametrize(
    ("losses", "config"),
    [
        (CLIMB, {"optimizer_family": "adam"}),  # a per-coordinate step: no 2/sharpness to pass
        (CLIMB, {"optimizer_family": "sgd", "recurrent_modules": ["cell"]}),  # through time
        (CLIMB[:5] + [1.0e6] + CLIMB[6:], {"optimizer_family": "sgd"}),  # fell back once
    ],
)
def test_a_climb_under_adam_through_a_recurrence_or_with_a_fall_is_not_read_so(
    tmp_path, losses, config
):
    # Control: the same climb under Adam, in a model with a recurrence (a product of
    # Jacobians through time climbs too), or with one step down on the way: the gradient
    # growth stays the cause, as before this change.
    report = _climbing_run(tmp_path, "other", losses, config)
    assert report.top.cause == "exploding_gradients"


def test_the_climb_past_the_limit_is_found_on_the_live_run(tmp_path):
    ctx, report = held_out_run(tmp_path, "h591_spinning_wheel_flyer_twist_lr_typo_regressor")
    induced_or_skip(ctx)
    assert report.top.cause == "sharpness_above_limit"


def _stopped(loss: float) -> list:
    """UpdateRatioOutOfRange over a run whose every tensor's update falls under 1e-8 of its
    weights from step 20, its loss at ``loss`` from step 10."""
    detector, found = UpdateRatioOutOfRange(), []
    for step in range(40):
        ratio = 1e-3 if step < 20 else 3e-9
        values = {"loss": 1.5 if step < 10 else loss}
        values |= {f"update_ratio/{t}.weight": ratio for t in ("fc1", "fc2", "head")}
        found += detector.update(Record(step, values))
    return found


def test_updates_that_stopped_with_the_loss_at_zero_are_found_at_info():
    # Trigger: set 596's unclamped logit scale on separable classes: the cross-entropy
    # rounded to exactly 0 in float32 by step 31, the gradients vanished with it, and Adam's
    # updates fell under 1e-8 of every tensor: nothing left to learn, no frozen layer.
    found = _stopped(0.0)
    assert {f.where for f in found} == {"fc1.weight", "fc2.weight", "head.weight"}
    assert all(f.severity == "info" and "exactly 0" in f.evidence["note"] for f in found)


def test_updates_that_stopped_with_a_loss_left_to_learn_are_a_warning():
    # Control: the same updates stopped with the loss at 0.3 (a rate typed 1e-9 everywhere):
    # frozen layers, a warning, as before this change.
    found = _stopped(0.3)
    assert len(found) == 3 and all(f.severity == "warning" for f in found)


def test_a_logit_scale_grown_until_the_loss_is_zero_is_named_on_the_live_run(tmp_path):
    ctx, report = held_out_run(tmp_path, "h596_moon_halo_arc_type_logit_scale_classifier")
    induced_or_skip(ctx)
    run = steadygrad.load(tmp_path / "h596_moon_halo_arc_type_logit_scale_classifier")
    assert not [f for f in run.findings() if f.severity != "info"]
    assert report.top.cause == "output_logit_divergence"
