"""The LR-sensitivity metric against hand computations, and the study end to end (tiny)."""

import inspect
import json
import math

import pytest

from steadygrad import load
from steadygrad.models import TinyGPT
from steadygrad.studies.lr_sensitivity import (
    LRSensitivityResult,
    lr_sensitivity,
    run_lr_sensitivity,
)

needs_mitigations = pytest.mark.skipif(
    "qk_norm" not in inspect.signature(TinyGPT).parameters,
    reason="TinyGPT has no qk_norm / z_loss switches yet",
)


def test_metric_matches_the_worked_example():
    # losses (4.5, 4.0, 9.0), init 7.0 -> capped (4.5, 4.0, 7.0): mean 5.1667 - best 4.0
    assert lr_sensitivity([4.5, 4.0, 9.0], 7.0) == pytest.approx(7 / 6)


def test_metric_maps_diverged_runs_to_the_initial_loss():
    # None, NaN and inf all count as 6.0; mean (2 + 3 + 6 + 6 + 6) / 5 = 4.6, best 2
    losses = [2.0, 3.0, None, math.nan, math.inf]
    assert lr_sensitivity(losses, 6.0) == pytest.approx(2.6)


def test_metric_is_zero_for_a_flat_curve_and_for_a_model_that_never_learns():
    assert lr_sensitivity([3.3, 3.3, 3.3], 5.0) == 0.0
    assert lr_sensitivity([None, 9.0, math.nan], 5.0) == 0.0


def test_metric_rejects_bad_input():
    with pytest.raises(ValueError, match="final_losses"):
        lr_sensitivity([], 1.0)
    with pytest.raises(ValueError, match="initial_loss"):
        lr_sensitivity([1.0], math.nan)


def test_study_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="sizes"):
        run_lr_sensitivity(tmp_path, sizes=["huge"], mitigations=False)
    with pytest.raises(ValueError, match="lrs"):
        run_lr_sensitivity(tmp_path, sizes=["xs"], lrs=[1e-3, -1.0], mitigations=False)
    with pytest.raises(ValueError, match="steps"):
        run_lr_sensitivity(tmp_path, sizes=["xs"], steps=0, mitigations=False)
    with pytest.raises(TypeError, match="sizes"):
        run_lr_sensitivity(tmp_path, sizes="xs", mitigations=False)


def _check_result(result: LRSensitivityResult, labels: list[str], lrs: list[float]) -> None:
    assert list(result.curves) == labels
    assert result.lrs == sorted(lrs)
    for label in labels:
        curve = result.curves[label]
        assert len(curve) == len(lrs)
        l0 = result.initial_loss[label]
        assert l0 == pytest.approx(math.log(256), abs=0.1)  # near-uniform at init
        # The metric in the result is the metric of the reported curve.
        assert result.sensitivity[label] == pytest.approx(lr_sensitivity(curve, l0))
        finite = [x for x in curve if x is not None]
        assert finite and min(finite) < l0  # some LR learned something
    summary = json.loads((result.out_dir / "summary.json").read_text())
    assert summary["sensitivity"] == pytest.approx(result.sensitivity)
    assert (result.out_dir / "table.txt").read_text().count("\n") == len(labels) + 1
    assert result.plot_path is not None and result.plot_path.stat().st_size > 1000


def _check_runs(result: LRSensitivityResult, steps: int) -> None:
    """Every trial is a monitored run: its store holds the loss of every step it trained."""
    run_dirs = {run["run_dir"] for run in result.runs}
    assert len(run_dirs) == len(result.runs)
    for run in result.runs:
        with load(run["run_dir"]) as recorded:
            assert recorded.status == "finished"
            recorded_steps, loss = recorded.series("loss")
            assert list(recorded_steps) == list(range(steps))
            # The Monitor saw the same training: its last losses are the ones the study kept.
            assert loss[-10:].mean() == pytest.approx(run["final_train_loss"], rel=1e-5)


@needs_mitigations
def test_study_a_two_by_two_grid_on_local_ray_each_run_monitored(tmp_path, capsys):
    lrs = [1e-3, 3e-2]
    kwargs = dict(
        sizes={"a": (1, 1, 16)},
        lrs=lrs,
        steps=20,
        batch_size=4,
        block_size=16,
        eval_batches=2,
        workers=2,
        progress=True,
    )
    result = run_lr_sensitivity(tmp_path, **kwargs)
    labels = ["a/baseline", "a/qk-norm + z-loss"]
    _check_result(result, labels, lrs)
    _check_runs(result, steps=20)
    assert "a/qk-norm + z-loss" in capsys.readouterr().out  # the table, as before
    # qk-norm changes the model: the two variants do not train identically.
    assert result.curves["a/baseline"] != result.curves["a/qk-norm + z-loss"]
    # A re-run reads the finished results instead of training again (no Ray needed).
    again = run_lr_sensitivity(tmp_path, **kwargs)
    assert again.curves == result.curves
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4
