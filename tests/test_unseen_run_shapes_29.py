"""Run shapes from the thirty-third session (held-out sets 113-117's misses).

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored, held_out_run


def _confident_fit_rows(after: str) -> list[dict]:
    """A classifier fits an easy task to a loss of 1e-3; its rate drops at step 100 and rows
    collapse for a few readings as its margins pass float32's reach (set 116's sign-reading
    STN, set 98's GIT captioner). ``after``: "receded": from step 105 a few rows at most, the
    log-partition easing from 16.7 to 14; "stays": a sixth of the rows to the end, the
    log-partition flat; "grows": a few rows at most, the log-partition climbing to 40 (the
    rows are now wrong, not let go)."""
    rows = []
    for t in range(150):
        row = {"loss": max(1e-3, 1.6 * math.exp(-t / 12))}
        if t % 25 == 0 or 100 <= t <= 105 or 125 <= t <= 128:
            if t < 100:
                share, lse = 0.0, 1.6 + 0.13 * t
            elif t <= 104:
                share, lse = 0.15, 16.0 + 0.2 * (t - 100)
            elif after == "stays":
                share, lse = 0.16, 16.5
            else:
                share = 0.03 + 0.01 * (t % 3)
                lse = 14.0 if after == "receded" else 16.0 + (t - 100) * 0.5
            row |= {"softmax_collapse": share, "logit_lse_mean": lse}
        rows.append(row)
    return rows


@pytest.mark.parametrize("after", ["receded", "stays", "grows"])
def test_a_collapse_that_receded_with_the_logits_easing_is_no_stall(tmp_path, after):
    # Trigger: rows collapsed at three readings, then at most a few to the end with the logits
    # easing: the fit stopped pushing its margins, nothing stalled. Controls: the collapse
    # stays; or its share fell only because the logits kept growing the rows into error.
    collapse = ("softmax_collapse", 102, "head", {"softmax_collapse": 0.15, "fraction": 0.1})
    report = diagnose_stored(tmp_path, after, _confident_fit_rows(after), [(*collapse, "warning")])
    found = next(d for d in report.diagnoses if d.cause == "softmax_collapse")
    assert found.first_step == 100
    if after == "receded":
        assert found.severity == "info"
        assert found.evidence["receded_from"] == 105
    else:
        assert found.severity == "warning"
        assert "receded_from" not in found.evidence


def test_a_real_fit_whose_collapse_receded_is_not_warned_at_the_end(tmp_path):
    # Set 116's healthy STN sign reader: its rate drops 10x at step 100, a few of each batch's
    # 32 rows collapse for five readings, then no more than two to the end.
    _, report = held_out_run(tmp_path, "h116_stn_signnet_control")
    assert report.healthy
    found = next(d for d in report.diagnoses if d.cause == "softmax_collapse")
    assert found.evidence["receded_from"] > 100


def test_gradients_piled_up_by_a_skipped_zero_grad_neither_replaced_weights_nor_met_a_batch(
    tmp_path,
):
    # Set 116's learned index: zero_grad skipped for steps 100-114, so each step applies the sum
    # of the gradients so far; momentum carries them, the weights' norm moves 50x its usual
    # step and the loss spikes 46x at step 113. No gradient of one step was 30x its level, yet
    # for the five records before it the gradient had stood 6-80x: the optimizer moved the
    # weights there; neither something between steps nor one batch did. (The control is
    # test_unseen_run_shapes_13's EMA swap, whose gradients stayed ordinary: still replaced.)
    _, report = held_out_run(tmp_path, "h116_learned_index_stale_accumulation")
    spike = next(d for d in report.diagnoses if d.cause == "loss_spike")
    assert spike.first_step == 113
    assert all("weights_replaced_at" not in d.evidence for d in report.diagnoses)
    assert "data_outlier" not in report.causes()
