"""The edge-of-stability study reproduces the published effect (Cohen et al., ICLR 2021)."""

from __future__ import annotations

import json

import pytest
from test_curvature_helpers import one_thread  # noqa: F401

from steadygrad.studies.edge_of_stability import run_edge_of_stability


def test_gd_sharpness_rises_to_two_over_lr_and_hovers(tmp_path):
    result = run_edge_of_stability(
        tmp_path, step_sizes=(0.4,), steps=500, probe_every=20, samples=300, progress=False
    )
    run = result.runs[0.4]
    assert run.limit == pytest.approx(5.0)
    assert run.initial_ratio < 0.8  # starts well below the limit (progressive sharpening)
    assert 0.8 <= result.ratios()[0.4] <= 1.2  # then hovers at 2/lr
    assert run.first_step_at_limit is not None and run.first_step_at_limit < 400
    assert run.loss[-1] < 0.3 * run.loss[0]  # the loss keeps falling ...
    assert run.loss_increases > 0  # ... non-monotonically
    # As a user reads the run: the probe's limit is 2/lr, and the run is not called unstable
    # for hovering at the edge (GD at the edge of stability keeps converging).
    import steadygrad

    stored = steadygrad.load(tmp_path / "runs" / "lr0.4")
    assert stored.series("sharpness_limit")[1][0] == pytest.approx(5.0)
    assert "nonfinite" not in steadygrad.diagnose(stored).causes()
    assert (tmp_path / "edge_of_stability.png").exists()
    saved = json.loads((tmp_path / "edge_of_stability.json").read_text())
    assert saved["ratios"]["0.4"] == pytest.approx(result.ratios()[0.4])


def test_study_arguments():
    with pytest.raises(ValueError, match="step_sizes"):
        run_edge_of_stability("unused", step_sizes=())
    with pytest.raises(ValueError, match="step_sizes"):
        run_edge_of_stability("unused", step_sizes=(-0.1,))
