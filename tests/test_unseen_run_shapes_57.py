"""Run shapes from the fifty-seventh session: a gradient that leapt as an output neared the edge
of the root the replay then caught making a NaN, and rows that round to one-hot on a fit.

Each change has a trigger (a held-out scenario it was found on) and a control that must not
move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored, held_out_run, induced_or_skip, steadygrad

from steadygrad.core.record import Record
from steadygrad.diagnose.detectors.transformer import FITTED, FITTED_AT, SoftmaxCollapse


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
