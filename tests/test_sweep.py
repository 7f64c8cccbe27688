"""The sweep engine: results per run, resume after a real kill, and clear worker errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steadygrad.studies.sweep import RESULTS_FILE, SweepError, load_results, run_sweep

sys.path.insert(0, str(Path(__file__).parent))
import _sweep_helpers  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parent


def _markers(directory: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for path in directory.iterdir() if directory.exists() else []:
        x = int(path.name.split(".")[0])
        counts[x] = counts.get(x, 0) + 1
    return counts


def test_sweep_returns_results_in_config_order_and_writes_one_line_per_run(tmp_path):
    configs = [{"x": x, "markers": str(tmp_path / "m")} for x in (5, 1, 4)]
    records = run_sweep(
        _sweep_helpers.count_and_square, configs, tmp_path, workers=2, progress=False
    )
    assert [r["result"] for r in records] == [25, 1, 16]
    assert [r["config"] for r in records] == configs
    lines = (tmp_path / RESULTS_FILE).read_text().splitlines()
    assert sorted(json.loads(line)["result"] for line in lines) == [1, 16, 25]
    # A second call recomputes nothing.
    again = run_sweep(_sweep_helpers.count_and_square, configs, tmp_path, workers=2, progress=False)
    assert again == records
    assert _markers(tmp_path / "m") == {5: 1, 1: 1, 4: 1}


_SCRIPT = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import _sweep_helpers
from steadygrad.studies.sweep import run_sweep
configs = [{{"x": x, "markers": {markers!r}, "sleep": 0.3}} for x in range(8)]
run_sweep(_sweep_helpers.count_and_square, configs, {out!r}, workers=2, progress=False)
"""


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_redoing_finished_runs(tmp_path):
    out, markers = tmp_path / "out", tmp_path / "markers"
    script = _SCRIPT.format(root=str(ROOT), tests=str(HERE), markers=str(markers), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(load_results(out)) < 3:
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, mid-sweep
        proc.wait()
    finished_before = set(load_results(out))
    assert 3 <= len(finished_before) < 8
    counts_before = _markers(markers)

    configs = [{"x": x, "markers": str(markers), "sleep": 0.3} for x in range(8)]
    records = run_sweep(_sweep_helpers.count_and_square, configs, out, workers=2, progress=False)
    assert [r["result"] for r in records] == [x * x for x in range(8)]
    counts_after = _markers(markers)
    for record in records:
        x = record["config"]["x"]
        if record["id"] in finished_before:
            assert counts_after[x] == 1, f"finished run {x} was recomputed"
        else:
            assert counts_after[x] == counts_before.get(x, 0) + 1
    assert len(load_results(out)) == 8


def test_a_torn_last_line_is_ignored(tmp_path):
    configs = [{"x": x, "markers": str(tmp_path / "m")} for x in (1, 2)]
    run_sweep(_sweep_helpers.count_and_square, configs[:1], tmp_path, workers=1, progress=False)
    with (tmp_path / RESULTS_FILE).open("a") as f:
        f.write('{"id": "abc", "resu')  # killed mid-write
    records = run_sweep(
        _sweep_helpers.count_and_square, configs, tmp_path, workers=1, progress=False
    )
    assert [r["result"] for r in records] == [1, 4]
    assert _markers(tmp_path / "m") == {1: 1, 2: 1}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_run_is_reported_with_its_traceback_and_the_rest_finish(tmp_path, workers):
    configs = [{"x": x} for x in (1, 2, 3, 4)]
    with pytest.raises(SweepError) as info:
        run_sweep(_sweep_helpers.fail_on_three, configs, tmp_path, workers=workers, progress=False)
    message = str(info.value)
    assert "1 run(s) of the sweep failed" in message
    assert '"x": 3' in message
    assert "ValueError: three is not allowed" in message
    assert "fail_on_three" in message  # the worker's traceback, not just the message
    assert sorted(r["result"] for r in load_results(tmp_path).values()) == [1, 4, 16]


def test_progress_bar_runs(tmp_path):
    records = run_sweep(
        _sweep_helpers.fail_on_three, [{"x": 2}], tmp_path, workers=1, progress=True
    )
    assert records[0]["result"] == 4


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        run_sweep(_sweep_helpers.fail_on_three, [{"x": 1}], tmp_path, workers=0)
    with pytest.raises(TypeError, match="configs"):
        run_sweep(_sweep_helpers.fail_on_three, [1], tmp_path)
    with pytest.raises(ValueError, match="duplicates"):
        run_sweep(_sweep_helpers.fail_on_three, [{"x": 1}, {"x": 1}], tmp_path)
    with pytest.raises(TypeError, match="fn"):
        run_sweep(3, [{"x": 1}], tmp_path)


def test_a_worker_that_dies_is_reported_not_hung_on(tmp_path):
    configs = [{"x": 2}, {"x": 5}]
    with pytest.raises(SweepError, match="terminated abruptly|BrokenProcessPool") as info:
        run_sweep(_sweep_helpers.die_on_two, configs, tmp_path, workers=2, progress=False)
    assert '"x": 2' in str(info.value)
