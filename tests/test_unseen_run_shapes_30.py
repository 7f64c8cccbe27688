"""Run shapes from the thirty-fourth session (held-out sets 119-122's misses and false alarms).

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored, held_out_run


def _stream_rows(bumps: tuple[int, ...]) -> list[dict]:
    """A regressor's loss easing from 1.0 with a little jitter; at each step of ``bumps`` one
    batch of a harder kind lifts it 3x for that step alone."""
    rows = []
    for t in range(200):
        base = 0.2 + 0.8 * math.exp(-t / 60) + 0.01 * ((t * 7) % 5)
        rows.append({"loss": base * (3.0 if t in bumps else 1.0)})
    return rows


@pytest.mark.parametrize("bumps", [(40, 80, 120, 160), (160,), (80, 160)])
def test_a_spike_of_a_kind_of_batch_that_recurs_is_no_warning(tmp_path, bumps):
    # Trigger: the loss stood out alike every 40 steps before the spike the detector flagged
    # (a stream that mixes in a harder kind of batch at a fixed rate). Controls: the spike came
    # once; or once before it, which is no rhythm yet.
    loss = _stream_rows(bumps)[160]["loss"]
    baseline = loss / 3.0
    spike = {"loss": loss, "baseline": baseline, "ratio": 3.0, "z": 20.0}
    name = "-".join(map(str, bumps))
    report = diagnose_stored(
        tmp_path, name, _stream_rows(bumps), [("loss_spike", 160, None, spike, "warning")]
    )
    outlier = next(d for d in report.diagnoses if d.cause == "data_outlier")
    symptom = next(d for d in report.diagnoses if d.cause == "loss_spike")
    assert outlier.first_step == 160
    if len(bumps) == 4:
        assert outlier.severity == symptom.severity == "info"
        assert outlier.evidence["recurs_every"] == symptom.evidence["recurs_every"] == 40
        assert report.healthy
    else:
        assert outlier.severity == symptom.severity == "warning"
        assert "recurs_every" not in outlier.evidence


@pytest.mark.parametrize(
    "name", ["h119_soil_moisture_control", "h120_llava_onevision15_text_mixed_stream"]
)
def test_real_streams_with_a_recurring_harder_batch_end_healthy(tmp_path, name):
    # Set 119's soil-moisture regressor (storm-week batches every 25 steps) and set 120's
    # LLaVA-OneVision text tower (a batch of denser text every 60): the detector flags the
    # latest of them once the baseline is low; the report names the recurring batch at info.
    _, report = held_out_run(tmp_path, name)
    assert report.healthy
    found = next(d for d in report.diagnoses if d.cause == "data_outlier")
    assert found.severity == "info" and found.evidence["recurs_every"] in (25, 50, 60)
