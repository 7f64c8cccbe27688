"""The run store: values kept exactly (NaN and Inf too), statuses, exports, and crash safety
under a real SIGKILL."""

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import steadygrad
from steadygrad.store import RunStore


def test_values_round_trip_with_nan_and_inf(tmp_path):
    store = RunStore(tmp_path / "run", name="r", flush_every=2)
    written = [1.5, math.nan, math.inf, -math.inf, 0.0, -2.25]
    for step, v in enumerate(written):
        store.add_scalars(step, {"loss": v, "grad_norm/a.b": 2 * v})
    store.close()
    run = steadygrad.load(tmp_path / "run")
    steps, values = run.series("loss")
    assert steps.tolist() == list(range(6))
    np.testing.assert_array_equal(values, np.array(written))  # NaN == NaN here
    assert run.names() == ["grad_norm/a.b", "loss"]
    assert set(run.family("grad_norm")) == {"a.b"}
    assert run.status == "finished"
    with pytest.raises(KeyError, match="no metric named 'nope'"):
        run.series("nope")


def test_findings_and_actions_round_trip(tmp_path):
    store = RunStore(tmp_path / "run")
    f = steadygrad.Finding(
        "loss_spike", 7, "h.0.attn", {"z": 9.5, "ratio": math.inf}, "warning", [3, 4]
    )
    store.add_findings([f])
    store.add_action(7, "rollback", {"to_step": 5})
    store.close()
    run = steadygrad.load(tmp_path / "run")
    assert run.findings() == [f]
    (action,) = run.actions()
    assert (action.step, action.kind, action.detail) == (7, "rollback", {"to_step": 5})


def test_exports(tmp_path):
    store = RunStore(tmp_path / "run")
    store.add_scalars(0, {"loss": math.nan, "x": 1.0})
    store.add_scalars(1, {"loss": 2.0, "x": 3.0})
    store.close()
    run = steadygrad.load(tmp_path / "run")
    csv_text = run.to_csv(tmp_path / "out.csv").read_text().splitlines()
    assert csv_text[0] == "step,name,value,wall"
    assert csv_text[1].startswith("0,loss,nan,")
    frame = run.to_pandas(wide=True)
    assert frame.loc[1, "x"] == 3.0 and math.isnan(frame.loc[0, "loss"])
    import pyarrow.parquet as pq

    table = pq.read_table(run.to_parquet(tmp_path / "out.parquet"))
    assert table.num_rows == 4 and table.column_names == ["step", "name", "value", "wall"]


def test_context_manager_marks_crashed_and_interrupted(tmp_path):
    import torch
    from helpers import tiny_mlp

    for exc, status in ((RuntimeError, "crashed"), (KeyboardInterrupt, "interrupted")):
        model = tiny_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with pytest.raises(exc), steadygrad.watch(model, opt, tmp_path / status, progress=False):
            raise exc()
        assert steadygrad.load(tmp_path / status).status == status


def test_existing_run_is_not_overwritten(tmp_path):
    RunStore(tmp_path / "run").close()
    with pytest.raises(FileExistsError, match="already holds a run"):
        RunStore(tmp_path / "run")


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no steadygrad run"):
        steadygrad.load(tmp_path)
    with pytest.raises(TypeError, match="run_dir must be a path"):
        steadygrad.load(3)


TRAINER = textwrap.dedent(
    """
    import sys, time, torch
    import steadygrad
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = steadygrad.Monitor(model, opt, sys.argv[1], flush_every=5, flush_seconds=1e9,
                             progress=False)
    step = 0
    while True:
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward(); opt.step(); mon.step(loss); opt.zero_grad()
        step += 1
        if step % 5 == 0:
            print(step, flush=True)  # a flush was handed to the writer just before this line
        time.sleep(0.002)
    """
)


def test_sigkill_leaves_a_readable_database_marked_crashed(tmp_path):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        flushed = 0
        deadline = time.monotonic() + 120
        while flushed < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            flushed = int(line)
        assert flushed >= 40, "the trainer did not get going"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    db = run_dir / "run.db"
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    run = steadygrad.load(run_dir)
    assert run.status == "crashed"
    steps, loss = run.series("loss")
    # Contiguous from 0, nothing half-written, and at most the flush window being written when
    # the kill came (the one handed over after the last line we read, or that one) is lost.
    assert steps[0] == 0 and np.all(np.diff(steps) == 1)
    assert len(steps) >= flushed - 5 and len(steps) % 5 == 0
    assert np.all(np.isfinite(loss))
    # Whole steps only: every step that has a loss has all of its per-parameter values too.
    for name in ("grad_norm/weight", "grad_norm/bias", "param_norm/weight", "lr/0"):
        assert run.series(name)[0].tolist() == steps.tolist()


def test_a_stored_run_resumes_and_discards_the_steps_it_records_again(tmp_path):
    import sqlite3

    from steadygrad.store.writer import RunStore, remove_run

    store = RunStore(tmp_path, name="r")
    for step in range(5):
        store.add_scalars(step, {"loss": float(step)})
    store.add_action(3, "rollback", {})
    store.close("crashed")
    with pytest.raises(FileExistsError, match="resume=True"):
        RunStore(tmp_path)
    again = RunStore(tmp_path, resume=True)
    assert again.resumed and again.last_step() == 4
    again.discard_from(3)  # resumed from a checkpoint taken before step 3
    for step in range(3, 6):
        again.add_scalars(step, {"loss": 10.0 + step})
    again.close("finished")
    db = sqlite3.connect(tmp_path / "run.db")
    rows = db.execute("SELECT step, value FROM scalars ORDER BY step").fetchall()
    assert rows == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]
    assert db.execute("SELECT COUNT(*) FROM actions").fetchone()[0] == 0
    assert db.execute("SELECT status, name FROM run").fetchone() == ("finished", "r")
    db.close()
    remove_run(tmp_path)
    assert not (tmp_path / "run.db").exists()
    RunStore(tmp_path).close()  # a fresh run in the same place


def test_metric_declarations_are_kept_with_the_run(tmp_path):
    from steadygrad.core.metric import Metric
    from steadygrad.core.metrics import LOSS

    norm = Metric("grad_norm", "L2 norm of the gradient", per="parameter", scale="log", total=True)
    store = RunStore(tmp_path / "run")
    store.declare([LOSS, Metric("grad_norm", "a first draft", per="parameter")])
    store.declare([norm])  # a later declaration of a name replaces the earlier one
    with pytest.raises(TypeError, match="Metric objects"):
        store.declare(["loss"])
    store.close()
    run = steadygrad.load(tmp_path / "run")
    assert run.metrics() == {"loss": LOSS, "grad_norm": norm}
