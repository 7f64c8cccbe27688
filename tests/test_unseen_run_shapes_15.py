"""Run shapes from the nineteenth session's held-out sets (70-72) and what they showed.

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored, held_out_run


def test_losses_summed_over_micro_batches_raise_the_step_past_the_limit(tmp_path):
    # set 67's decoder: at step 150 gradient accumulation goes from 1 to 8 micro-batches whose
    # losses are summed, not averaged. The learning rate never changed, yet the step did: 8x.
    ctx, report = held_out_run(tmp_path, "h67_grad_accum_summed_microbatches")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    top = report.top
    assert top.cause == "sharpness_above_limit" and top.first_step == 150, top
    assert top.evidence["gradient_scaled_at"] == 150


def _accumulation_run(tmp_path, stroke: bool):
    """200 steps at one learning rate; the gradient norm (0.5, noisy) rises 8x from step 120,
    at a stroke or over four steps, the loss unchanged until it climbs at 122 and breaks at
    124; the directional sharpness ratio, read every 10 steps and at 121, is 1.7 there."""
    rows = []
    for t in range(130):
        wobble = 1.0 + 0.2 * math.sin(1.7 * t)
        grad = 0.5 * wobble
        if t >= 120 or (not stroke and t >= 116):
            grad = 4.0 * wobble if stroke or t >= 120 else 0.5 * wobble * 1.7 ** (t - 115)
        if t >= 122:
            grad *= 10.0 ** (t - 121)
        loss = 1.0 * wobble if t < 122 else 1.0 * 3.0 ** (t - 121)
        row = {"loss": loss, "grad_norm": grad, "lr/0": 0.1}
        if t % 10 == 1 or t == 121:
            row["directional_sharpness_ratio"] = 1.7 if t == 121 else 0.3
        rows.append(row)
    climb = ("loss_divergence", 124, None, {"ratio": 27.0, "best_level_step": 119}, "critical")
    return diagnose_stored(tmp_path, str(stroke), rows, [climb])


@pytest.mark.parametrize("stroke", [True, False])
def test_a_gradient_scaled_at_a_stroke_is_a_step_raised(tmp_path, stroke):
    # Trigger: the gradient jumps 8x from one step to the next and stays, the loss unchanged (a
    # loss summed where it was averaged): the step grew with it, and it overshot. Control: the
    # gradient grows over four steps into the same break (a curvature that grew under a step
    # the run had trained at for 120 steps): no step-size cause.
    report = _accumulation_run(tmp_path, stroke)
    sharp = [d for d in report.diagnoses if d.cause == "sharpness_above_limit"]
    if stroke:
        assert sharp and sharp[0].first_step == 120
        assert sharp[0].evidence["gradient_scale_factor"] > 6
    else:
        assert not sharp
