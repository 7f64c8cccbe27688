"""The demo's plumbing on a short run (the full demo is `make demo`)."""

from steadygrad.demo import recommended_peak_lr, run_demo
from steadygrad.diagnose import DiagnosisReport
from steadygrad.diagnose.rules import Diagnosis


def test_short_demo_writes_every_report(tmp_path):
    result = run_demo(tmp_path / "demo", steps=30, progress=False)
    assert set(result.runs) == {"sane", "unstable", "fixed", "autopilot"}
    for path in [*result.reports.values(), result.comparison]:
        assert path.exists() and path.stat().st_size > 10_000
    assert all(run.status == "finished" for run in result.runs.values())
    # Running it again replaces its own earlier runs instead of failing.
    again = run_demo(tmp_path / "demo", steps=5, progress=False)
    assert again.runs["sane"].num_steps == 5


def _report(cause):
    d = Diagnosis(cause, "", "warning", 1, [], {}, [], "")
    return DiagnosisReport("r", [d])


def test_recommended_fix_follows_the_diagnosis():
    assert recommended_peak_lr(_report("sharpness_above_limit"), 2.0) == 1.0
    assert recommended_peak_lr(_report("amp_overflow"), 2.0) == 2.0
    assert recommended_peak_lr(DiagnosisReport("r", []), 2.0) == 2.0
