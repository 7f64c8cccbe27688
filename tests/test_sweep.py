"""The sweep on Ray Tune: results per run, resume after a real kill, clear errors.

One local Ray session is shared by the module (Ray takes seconds to start); the interrupted
sweep runs in a second process that joins that session by its address, as a driver on an
existing cluster would.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from steadygrad.cli import main  # noqa: E402
from steadygrad.studies.ray_session import (  # noqa: E402
    RayClusterUnreachable,
    parse_address,
    ray_session,
)
from steadygrad.studies.sweep import (  # noqa: E402
    RESULTS_FILE,
    SweepError,
    load_results,
    run_id,
    run_sweep,
)

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # before Ray starts: its workers get this process's sys.path
import _sweep_helpers  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    with ray_session(workers=2):
        yield ray.get_runtime_context().gcs_address


def _markers(directory: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for path in directory.iterdir() if directory.exists() else []:
        x = int(path.name.split(".")[0])
        counts[x] = counts.get(x, 0) + 1
    return counts


def _check_run_dirs(records: list[dict], out: Path) -> None:
    for record in records:
        run_dir = Path(record["run_dir"])
        assert run_dir == out.resolve() / "runs" / record["id"]
        assert (run_dir / "x.txt").read_text() == str(record["config"]["x"])


def test_results_come_in_config_order_one_line_per_run_each_in_its_own_run_dir(local_ray, tmp_path):
    markers = str(tmp_path / "m")
    configs = [{"x": x, "markers": markers} for x in (5, 1, 4)]
    records = run_sweep(_sweep_helpers.count_and_square, configs, tmp_path, progress=True)
    assert [r["result"] for r in records] == [25, 1, 16]
    assert [r["config"] for r in records] == configs
    assert [r["id"] for r in records] == [run_id(c) for c in configs]
    _check_run_dirs(records, tmp_path)
    lines = (tmp_path / RESULTS_FILE).read_text().splitlines()
    assert sorted(json.loads(line)["result"] for line in lines) == [1, 16, 25]
    # Everything finished: a second call runs no trial, the records come from the file.
    assert run_sweep(_sweep_helpers.count_and_square, configs, tmp_path) == records
    assert _markers(tmp_path / "m") == {5: 1, 1: 1, 4: 1}


def test_a_run_that_raises_or_whose_worker_dies_is_reported_and_the_rest_finish(
    local_ray, tmp_path
):
    configs = [{"x": x} for x in (1, 2, 3, 4)]
    with pytest.raises(SweepError) as info:
        run_sweep(_sweep_helpers.fail_on_three_die_on_two, configs, tmp_path, progress=False)
    message = str(info.value)
    assert "2 run(s) of the sweep failed" in message
    assert '"x": 3' in message and '"x": 2' in message
    assert "ValueError: three is not allowed" in message
    assert "fail_on_three_die_on_two" in message  # the worker's traceback, not just the message
    assert "died" in message  # the worker killed outright (as by the OOM killer)
    finished = load_results(tmp_path).values()
    assert sorted(r["result"] for r in finished) == [1, 16]
    assert all("run_dir" not in r for r in finished)  # this function asked for none


_SCRIPT = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import _sweep_helpers
from steadygrad.studies.sweep import run_sweep
configs = [{{"x": x, "markers": {markers!r}, "sleep": 1.0}} for x in range(6)]
run_sweep(_sweep_helpers.count_and_square, configs, {out!r}, workers=1, address={address!r},
          progress=False)
"""


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_redoing_finished_runs(local_ray, tmp_path):
    out, markers = tmp_path / "out", tmp_path / "markers"
    script = _SCRIPT.format(
        root=str(ROOT), tests=str(HERE), markers=str(markers), out=str(out), address=local_ray
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(load_results(out)) < 2:
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, mid-sweep
        proc.wait()
    finished_before = set(load_results(out))
    assert 2 <= len(finished_before) < 6
    counts_before = _markers(markers)
    with (out / RESULTS_FILE).open("a") as f:
        f.write('{"id": "abc", "resu')  # as a kill mid-write would leave it: ignored

    configs = [{"x": x, "markers": str(markers), "sleep": 1.0} for x in range(6)]  # as killed
    records = run_sweep(_sweep_helpers.count_and_square, configs, out, progress=False)
    assert [r["result"] for r in records] == [x * x for x in range(6)]
    counts_after = _markers(markers)
    for record in records:
        x = record["config"]["x"]
        if record["id"] in finished_before:
            assert counts_after[x] == 1, f"finished run {x} was recomputed"
        else:
            assert counts_after[x] == counts_before.get(x, 0) + 1
    assert len(load_results(out)) == 6
    _check_run_dirs(records, out)  # a run cut off mid-way was redone in a clean directory
    # Everything finished: the records come from the file.
    assert run_sweep(_sweep_helpers.count_and_square, configs, out) == records


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        run_sweep(_sweep_helpers.fail_on_three_die_on_two, [{"x": 1}], tmp_path, workers=0)
    with pytest.raises(TypeError, match="configs"):
        run_sweep(_sweep_helpers.fail_on_three_die_on_two, [1], tmp_path)
    with pytest.raises(ValueError, match="duplicates"):
        run_sweep(_sweep_helpers.fail_on_three_die_on_two, [{"x": 1}, {"x": 1}], tmp_path)
    with pytest.raises(TypeError, match="fn"):
        run_sweep(3, [{"x": 1}], tmp_path)
    for bad in ("nowhere", "host:", ":6379", "ray://host:99999", "host:port"):
        with pytest.raises(ValueError, match="address"):
            parse_address(bad)
    assert parse_address("[::1]:6379") == ("::1", 6379)
    assert parse_address("127.0.0.1:6379") == ("127.0.0.1", 6379)


def _closed_loopback_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_that_points_nowhere_fails_fast_with_a_clear_error(tmp_path, capsys):
    address = f"127.0.0.1:{_closed_loopback_port()}"
    start = time.monotonic()
    with pytest.raises(RayClusterUnreachable, match="no Ray cluster answers") as info:
        run_sweep(_sweep_helpers.count_and_square, [{"x": 1}], tmp_path, address=address)
    assert address in str(info.value)
    assert time.monotonic() - start < 30  # Ray's own retries would take minutes
    assert not load_results(tmp_path)
    # The same through the command line: a message, not a traceback, and exit status 1.
    code = main(["study", "lr-sensitivity", "-o", str(tmp_path / "cli"), "--address", address])
    assert code == 1
    err = capsys.readouterr().err
    assert "no Ray cluster answers" in err and address in err
