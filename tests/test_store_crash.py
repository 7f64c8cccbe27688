"""Crash safety under real SIGKILLs at random moments, during the store's creation and while it
writes: every run directory is afterwards either no run (and a new run starts there) or a whole
run (opens, passes SQLite's integrity check, is marked crashed, holds whole steps contiguous from
0 with the values written, and lost at most the flush window being written). Kills while the
autopilot writes snapshots leave every snapshot in place readable, and no temporary file after
the next run starts."""

import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import steadygrad
from steadygrad.store import RunStore

DRIVER = Path(__file__).with_name("_store_crash_driver.py")
sys.path.insert(0, str(DRIVER.parent))
from _store_crash_driver import FLUSH_EVERY, NAMES, value  # noqa: E402

KILLS, CREATION_KILLS, SNAPSHOT_KILLS = 30, 14, 10


def test_sigkill_at_random_moments_leaves_no_run_or_a_whole_one(tmp_path):
    seed = random.SystemRandom().randrange(2**32)
    result = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path)]
        + [str(n) for n in (KILLS, CREATION_KILLS, 0, seed)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr
    kills = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(kills) == KILLS
    whole = none = 0
    for kill in kills:
        where = f"seed {seed}, {kill}"
        run_dir = Path(kill["dir"])
        db = run_dir / "run.db"
        if not db.exists():
            assert not kill["created"], f"the store was created but there is no run.db: {where}"
            with pytest.raises(FileNotFoundError):
                steadygrad.load(run_dir)
            RunStore(run_dir).close()  # the half-made directory is reused ...
            assert os.listdir(run_dir) == ["run.db"], where  # ... and the leftovers cleaned
            none += 1
            continue
        assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",), where
        run = steadygrad.load(run_dir)
        assert run.status == "crashed", where
        steps = np.array(sorted({s for s, *_ in run.rows()}), dtype=np.int64)
        assert steps.tolist() == list(range(len(steps))), where
        assert len(steps) % FLUSH_EVERY == 0, where  # whole flush windows only
        for i, name in enumerate(NAMES):
            got_steps, values = run.series(name) if len(steps) else (steps, steps)
            assert got_steps.tolist() == steps.tolist(), where  # whole steps only
            np.testing.assert_array_equal(values, [value(s, i) for s in steps.tolist()])
        if kill["last_handed_off"] is not None:
            # At most the window just handed over (and the steps since) is lost.
            assert len(steps) >= kill["last_handed_off"] + 1 - FLUSH_EVERY, where
        with pytest.raises(FileExistsError, match="already holds a run"):
            RunStore(run_dir)
        whole += 1
    during_creation = sum(not k["created"] for k in kills)
    while_writing = sum(k["last_handed_off"] is not None for k in kills)
    print(
        f"{KILLS} kills: {during_creation} during creation, {while_writing} while writing; "
        f"{whole} left a whole run, {none} no run"
    )
    assert during_creation >= 5 and while_writing >= 10, (seed, during_creation, while_writing)


def test_sigkill_during_snapshot_writes_leaves_readable_snapshots(tmp_path):
    import torch

    seed = random.SystemRandom().randrange(2**32)
    result = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path), "0", "0", str(SNAPSHOT_KILLS), str(seed)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr
    kills = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(kills) == SNAPSHOT_KILLS
    for kill in kills:
        where = f"seed {seed}, {kill}"
        snapshots = Path(kill["dir"]) / "snapshots"
        if not kill["created"]:
            continue
        files = [snapshots / n for n in ("last_good.pt", "previous_good.pt")]
        present = [f for f in files if f.exists()]
        assert present, where  # the one taken at attach, at least
        for path in present:  # every snapshot in place is whole: it was renamed in complete
            state = torch.load(path, weights_only=True)
            assert {"step", "model", "optimizer"} <= set(state), where
            assert all(torch.isfinite(v).all() for v in state["model"].values()), where
        if (Path(kill["dir"]) / "run.db").exists():
            assert steadygrad.load(kill["dir"]).status == "crashed", where
        # The next run on this snapshot directory clears what the killed write left.
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        pilot = steadygrad.Autopilot(snapshot_dir=snapshots)
        steadygrad.Monitor(
            model, opt, tmp_path / f"next-{Path(kill['dir']).name}", autopilot=pilot, progress=False
        ).close()
        assert not list(snapshots.glob(".*.tmp")), where
    inside = sum(k["snapshot_temp_left"] for k in kills)
    print(f"{SNAPSHOT_KILLS} kills while snapshotting: {inside} inside a snapshot write")
    assert sum(k["created"] for k in kills) >= SNAPSHOT_KILLS // 2, seed
    assert inside >= 1, seed
