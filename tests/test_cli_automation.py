"""The CLI for automation: diagnose --json against its schema, --fail-on exit statuses, plain
columns when piped, folders of runs, export --to, and the live view of a run being written."""

import json
import math
import os
import subprocess
import sys
import threading
import time
from importlib.resources import files
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from helpers import tiny_mlp, train

import steadygrad
from steadygrad.cli import main
from steadygrad.store import RunStore, find_runs

LONG = "layer." + "x" * 120 + ".weight"  # wider than any terminal


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder of two runs: healthy, and one whose gradients go NaN at step 30."""
    root = tmp_path_factory.mktemp("cli_runs")
    for sub, nan_step in (("healthy", None), ("nested/unstable", 30)):
        model = tiny_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        mon = steadygrad.Monitor(model, opt, root / sub, name=sub, progress=False)

        def poison(i, model=model, nan_step=nan_step):
            if i == nan_step:
                model[0].weight.grad.fill_(math.nan)

        train(model, opt, mon, 40, before_step=poison)
        mon.close()
    return root


def _cli(*args, cwd=None):
    """A real process, its stdout a pipe."""
    env = {**os.environ, "PYTHONPATH": str(Path(steadygrad.__file__).parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "steadygrad", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=cwd,
    )


def test_diagnose_json_is_valid_against_its_schema(runs, capsys):
    schema = json.loads(files("steadygrad.diagnose").joinpath("diagnosis.schema.json").read_text())
    assert main(["diagnose", str(runs), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # one JSON object per run found in the folder
    objects = [json.loads(line) for line in lines]
    for obj in objects:
        jsonschema.validate(obj, schema)
    healthy, unstable = objects
    assert healthy["run"] == "healthy" and healthy["healthy"] and healthy["severity"] is None
    assert unstable["severity"] == "critical" and not unstable["healthy"]
    top = unstable["diagnoses"][0]
    assert top["cause"] == "nonfinite" and top["first_step"] == 30 and top["fixes"]
    assert top["evidence"]["backward_origin"]["grad_norm"] == "nan"  # strict JSON, no NaN
    assert "loss first -> last" in unstable["margins"]


@pytest.mark.parametrize(
    ("which", "level", "status"),
    [
        ("healthy", "warning", 0),
        ("healthy", "critical", 0),
        ("nested/unstable", "warning", 4),
        ("nested/unstable", "critical", 4),
        ("", "critical", 4),  # the folder: one unstable run is enough
    ],
)
def test_fail_on_exits_as_documented(runs, capsys, which, level, status):
    assert main(["diagnose", str(runs / which), "--fail-on", level]) == status
    assert main(["diagnose", str(runs / which)]) == 0  # without --fail-on: always 0


def test_piped_tables_are_plain_columns_that_do_not_wrap(tmp_path, capsys):
    store = RunStore(tmp_path / "run", name="piped")
    for step in range(3):
        store.add_scalars(step, {"loss": 1.0 / (step + 1)})
    evidence = {"z": 9.5, "module": LONG}
    store.add_findings([steadygrad.Finding("loss_spike", 2, LONG, evidence, "warning")])
    store.close("finished")
    result = _cli("report", tmp_path / "run", "--no-html")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["run piped", "status finished", "steps 3"]
    header = lines.index("step\tfinding\twhere\tseverity\tevidence")
    assert lines[header + 1].split("\t")[:4] == ["2", "loss_spike", LONG, "warning"]
    assert main(["diagnose", str(tmp_path / "run")]) == 0  # pytest captures: not a terminal
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "piped: 1 diagnosis" in out  # plain text, no colour codes
    assert any(line.startswith("1. [warning]") for line in out.splitlines())


def test_report_of_a_folder_compares_every_run_inside(runs):
    assert [p.relative_to(runs).as_posix() for p in find_runs(runs)] == [
        "healthy",
        "nested/unstable",
    ]
    assert main(["report", str(runs)]) == 0
    page = (runs / "report.html").read_text()
    assert page.count("class=card") == 2 and "<h2>Comparison</h2>" in page
    assert main(["report", str(runs / "nowhere")]) == 1


def test_export_to_tensorboard_replays_a_folder_one_folder_per_run(runs, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    assert main(["export", str(runs), "--to", "tensorboard", str(tmp_path)]) == 0
    for sub in ("healthy", "nested/unstable"):
        acc = ea.EventAccumulator(str(tmp_path / sub), size_guidance={ea.TENSORS: 0})
        acc.Reload()
        steps, loss = steadygrad.load(runs / sub).series("loss")
        got = [tensor_util.make_ndarray(e.tensor_proto).item() for e in acc.Tensors("loss")]
        np.testing.assert_array_equal(got, loss)  # NaN from step 31 in the unstable run
        assert [e.step for e in acc.Tensors("loss")] == steps.tolist()
    assert main(["export", str(runs), "--to", "nowhere", str(tmp_path)]) == 2
    assert main(["export", str(runs / "healthy"), "-o", str(tmp_path / "a.csv")]) == 0
    assert main(["export", str(runs), "-o", str(tmp_path / "b.csv")]) == 2  # two runs, one file


def test_watch_rewrites_the_page_while_the_run_is_written(tmp_path):
    """A writer records steps while `report --watch` reads: the page grows, reloads itself
    while the run is running, and the last page (run finished) no longer reloads."""
    store = RunStore(tmp_path / "live", name="live", flush_every=1)
    store.add_scalars(0, {"loss": 1.0})
    store.flush()
    out = tmp_path / "live.html"
    seen_steps = []

    def writer():
        for step in range(1, 40):
            store.add_scalars(step, {"loss": 1.0 / (step + 1)})
            time.sleep(0.05)
            if out.exists() and len(seen_steps) < 3:
                seen_steps.append(step)
        while len(seen_steps) < 1:  # the watcher wrote at least once while we ran
            time.sleep(0.05)
        store.close("finished")

    thread = threading.Thread(target=writer)
    thread.start()
    status = main(["report", str(tmp_path / "live"), "--watch", "0.2", "-o", str(out)])
    thread.join()
    assert status == 0
    page = out.read_text()
    assert '"refresh":null' in page  # the final page: run finished, no more reloads
    data = json.loads(page.split("id=sg-data>")[1].split("</script>")[0])
    (loss,) = [s for s in data["runs"][0]["series"] if s["key"] == "loss"]
    assert loss["x"] == list(range(40)) and data["runs"][0]["status"] == "finished"
    assert seen_steps  # the writer kept writing while the page was being rewritten
