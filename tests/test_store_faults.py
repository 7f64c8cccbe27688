"""Storage faults injected for real while a run trains: the training goes on, the store warns
once, keeps records in memory, retries, and the run says which steps were lost. Also: reading a
finished run from a directory one cannot write, reading a live run without blocking its writer,
two writers racing for one directory, and half-made databases."""

import logging
import os
import shutil
import sqlite3
import threading
import warnings

import numpy as np
import pytest
import torch
from helpers import as_unprivileged_user, regression_batch, shared_temp_dir, tiny_mlp

import steadygrad
from steadygrad.store import RunStore, StorageWarning, UnreadableRunError


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch):
    # Real faults, shorter clocks: retry after 20 ms, lock waits of 50 ms.
    monkeypatch.setattr(RunStore, "retry_seconds", 0.02)
    monkeypatch.setattr(RunStore, "max_retry_seconds", 0.05)
    monkeypatch.setattr(RunStore, "busy_timeout", 0.05)
    monkeypatch.setattr(RunStore, "close_timeout", 2.0)


def _train(mon, model, opt, steps, losses):
    for _ in range(steps):
        x, y = regression_batch(len(losses))
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
        losses.append(loss.item())


def _lost_steps(run):
    return {s for x in run.data_lost() for s in range(x.first_step, x.last_step + 1)}


def _storage_warnings(caught):
    return [w for w in caught if issubclass(w.category, StorageWarning)]


def test_disk_full_degrades_and_records_the_lost_steps(tmp_path, monkeypatch, caplog):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with steadygrad.watch(model, opt, tmp_path / "count", progress=False) as counter:
        _train(counter, model, opt, 2, [])
        per_step = max(len(counter.last_record.values), 1)
    # room for about 12 steps of this model's values (what the Monitor records per step may grow)
    monkeypatch.setattr(RunStore, "max_buffered_rows", 12 * per_step)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", flush_every=5, progress=False)
    losses: list[float] = []
    _train(mon, model, opt, 10, losses)
    assert mon.store.flush()

    def fill_the_disk(conn):  # SQLite's own limit: the next page it needs is "disk full"
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")

    mon.store._writer.run_on_writer(fill_the_disk)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        _train(mon, model, opt, 60, losses)  # no exception: the training goes on
        assert mon.store.fault is not None and "full" in mon.store.fault
        mon.store._writer.run_on_writer(lambda c: c.execute("PRAGMA max_page_count=1000000"))
        _train(mon, model, opt, 10, losses)
        mon.close()
    assert len(_storage_warnings(caught)) == 1, "warn once, not at every retry"
    assert any("disk is full" in r.getMessage() for r in caplog.records if r.name == "steadygrad")

    run = steadygrad.load(tmp_path / "run")
    assert run.status == "finished"
    steps, loss = run.series("loss")
    lost = _lost_steps(run)
    # Every step is either recorded (with the value the loop saw) or listed as lost, not both.
    assert set(steps.tolist()) | lost == set(range(80)) and not set(steps.tolist()) & lost
    assert 0 < len(lost) <= 60  # the bounded buffer dropped the oldest, kept the newest
    assert set(range(10)) <= set(steps.tolist()) and set(range(70, 80)) <= set(steps.tolist())
    np.testing.assert_allclose(loss, np.array(losses)[steps], rtol=1e-6)
    assert all("full" in x.reason for x in run.data_lost())


def test_locked_database_holds_records_until_the_lock_is_released(tmp_path):
    store = RunStore(tmp_path / "run", flush_every=4)
    for step in range(8):
        store.add_scalars(step, {"loss": step / 8})
    assert store.flush()
    other = sqlite3.connect(tmp_path / "run" / "run.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    with pytest.warns(StorageWarning, match="locked"):
        for step in range(8, 40):
            store.add_scalars(step, {"loss": step / 8})
        assert not store.flush(timeout=1.0)
    assert store.fault is not None and "locked" in store.fault
    other.execute("ROLLBACK")
    other.close()
    store.close()
    run = steadygrad.load(tmp_path / "run")
    steps, loss = run.series("loss")
    assert steps.tolist() == list(range(40)) and run.data_lost() == []
    np.testing.assert_array_equal(loss, np.arange(40) / 8)


def test_deleted_run_directory_is_recreated_and_the_gap_recorded(tmp_path):
    store = RunStore(tmp_path / "run", flush_every=5)
    for step in range(10):
        store.add_scalars(step, {"loss": float(step)})
    assert store.flush()
    shutil.rmtree(tmp_path / "run")  # the open database now writes into a deleted file
    with pytest.warns(StorageWarning, match="deleted"):
        for step in range(10, 30):
            store.add_scalars(step, {"loss": float(step)})
        store.close()
    run = steadygrad.load(tmp_path / "run")
    assert run.status == "finished"
    assert run.series("loss")[0].tolist() == list(range(10, 30))
    (gap,) = run.data_lost()
    assert (gap.first_step, gap.last_step) == (0, 9) and "deleted" in gap.reason


def test_storage_that_stays_broken_is_given_up_at_close(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(RunStore, "close_timeout", 0.2)
    store = RunStore(tmp_path / "run", flush_every=5)
    other = sqlite3.connect(tmp_path / "run" / "run.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.warns(StorageWarning), caplog.at_level(logging.WARNING):
        for step in range(12):
            store.add_scalars(step, {"loss": 1.0})
        store.close()  # returns: a run must be able to end
    assert not store._writer.is_alive()
    assert [(x.first_step, x.last_step) for x in store.lost] == [(0, 4), (5, 9), (10, 11)]
    assert any("steps 0-4, 5-9, 10-11 were not recorded" in r.getMessage() for r in caplog.records)
    other.execute("ROLLBACK")
    assert steadygrad.load(tmp_path / "run").num_steps == 0


def test_unwritable_directory_degrades_for_an_unprivileged_user():
    # As root every directory is writable, so the writer runs as an unprivileged user in a
    # directory it owns but has made read-only; then it makes it writable again.
    base = shared_temp_dir()
    os.chown(base, 65534, 65534)
    os.chmod(base, 0o555)

    def writer():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store = RunStore(base / "run", flush_every=5)  # cannot even make the directory
            for step in range(10):
                store.add_scalars(step, {"loss": float(step)})
            assert store.fault is not None and "Permission denied" in store.fault
            os.chmod(base, 0o755)
            for step in range(10, 20):
                store.add_scalars(step, {"loss": float(step)})
            store.close()
        return len(_storage_warnings(caught))

    try:
        assert as_unprivileged_user(writer) == "1"
        run = steadygrad.load(base / "run")
        assert run.series("loss")[0].tolist() == list(range(20)) and run.status == "finished"
    finally:
        shutil.rmtree(base)


def test_finished_run_reads_from_a_directory_the_reader_cannot_write():
    base = shared_temp_dir()
    store = RunStore(base / "run", name="ro")
    for step in range(5):
        store.add_scalars(step, {"loss": step + 0.5})
    store.close()
    os.chmod(base / "run" / "run.db", 0o444)
    os.chmod(base / "run", 0o555)

    def reader():
        assert not os.access(base / "run", os.W_OK)
        # Without care, SQLite wants to create run.db-shm next to a WAL database here:
        plain = sqlite3.connect(f"file:{base / 'run' / 'run.db'}?mode=ro", uri=True)
        with pytest.raises(sqlite3.OperationalError):
            plain.execute("SELECT COUNT(*) FROM scalars").fetchone()
        run = steadygrad.load(base / "run")
        steps, loss = run.series("loss")
        assert loss.tolist() == [0.5, 1.5, 2.5, 3.5, 4.5] and run.status == "finished"
        return run.name

    try:
        assert as_unprivileged_user(reader) == "ro"
        assert sorted(os.listdir(base / "run")) == ["run.db"]  # nothing was created there
    finally:
        shutil.rmtree(base)


def test_live_run_is_read_without_blocking_the_writer(tmp_path):
    store = RunStore(tmp_path / "run", flush_every=1000)
    store.add_scalars(0, {"loss": 1.0})
    assert store.flush()
    reader = sqlite3.connect(f"file:{tmp_path / 'run' / 'run.db'}?mode=ro", uri=True)
    reader.isolation_level = None
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM scalars").fetchone() == (1,)  # holds a snapshot
    for step in range(1, 50):
        store.add_scalars(step, {"loss": 1.0})
    assert store.flush(timeout=5.0) and store.fault is None  # committed despite the reader
    assert steadygrad.load(tmp_path / "run").num_steps == 50
    assert reader.execute("SELECT COUNT(*) FROM scalars").fetchone() == (1,)
    reader.execute("COMMIT")
    store.close()


def test_two_writers_racing_for_one_directory_get_one_run_and_one_clear_error(tmp_path):
    for attempt in range(5):
        run_dir = tmp_path / f"run{attempt}"
        barrier = threading.Barrier(2)
        outcomes: list[object] = []

        def create(name, run_dir=run_dir, barrier=barrier, outcomes=outcomes):
            barrier.wait()
            try:
                store = RunStore(run_dir, name=name)
                store.add_scalars(0, {"who": float(name == "b")})
                store.close()
                outcomes.append(name)
            except FileExistsError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=create, args=(n,)) for n in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (winner,) = [o for o in outcomes if isinstance(o, str)]
        (error,) = [o for o in outcomes if isinstance(o, FileExistsError)]
        assert "already holds a run" in str(error) and str(run_dir) in str(error)
        run = steadygrad.load(run_dir)
        assert run.name == winner and run.series("who")[1].tolist() == [float(winner == "b")]


def test_half_made_databases_are_reused_and_foreign_files_refused(tmp_path, caplog):
    zero = tmp_path / "zero"
    zero.mkdir()
    (zero / "run.db").touch()  # what a kill during creation left before creation was atomic
    with pytest.raises(UnreadableRunError, match="empty .0 bytes."):
        steadygrad.load(zero)
    with caplog.at_level(logging.WARNING):
        RunStore(zero).close()
    assert any("half-made" in r.getMessage() for r in caplog.records)
    assert steadygrad.load(zero).status == "finished"

    schema_only = tmp_path / "schema_only"
    schema_only.mkdir()
    from steadygrad.store.schema import SCHEMA

    sqlite3.connect(schema_only / "run.db").executescript(SCHEMA)  # no run row, nothing else
    RunStore(schema_only).close()
    assert steadygrad.load(schema_only).status == "finished"

    stale = tmp_path / "stale"
    stale.mkdir()
    leftover = stale / f".run.db.{os.uname().nodename}.999999999.creating"
    leftover.write_bytes(b"half a database")  # its creator (pid 999999999) is gone
    with pytest.raises(FileNotFoundError, match="creation is under way or was interrupted"):
        steadygrad.load(stale)
    RunStore(stale).close()
    assert sorted(os.listdir(stale)) == ["run.db"]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "run.db").write_bytes(b"not a database at all, but somebody's file" * 100)
    with pytest.raises(FileExistsError, match="not a readable steadygrad run"):
        RunStore(foreign)
    assert (foreign / "run.db").read_bytes().startswith(b"not a database")  # left untouched


@pytest.mark.parametrize("with_shm", [True, False])
def test_crashed_run_with_its_log_reads_from_a_directory_the_reader_cannot_write(with_shm):
    base = shared_temp_dir()
    store = RunStore(base / "src", flush_every=1000)
    for step in range(5):
        store.add_scalars(step, {"loss": float(step)})
    assert store.flush()
    shutil.copytree(base / "src", base / "run")  # as a kill leaves it: the log not yet merged
    store.close()
    if not with_shm:
        os.unlink(base / "run" / "run.db-shm")
    assert os.path.exists(base / "run" / "run.db-wal")
    for name in os.listdir(base / "run"):
        os.chmod(base / "run" / name, 0o444)
    os.chmod(base / "run", 0o555)

    def reader():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            steps = steadygrad.load(base / "run").num_steps
        return f"{steps} {sum('write-ahead log' in str(w.message) for w in caught)}"

    try:
        # With its -shm file SQLite reads the log read-only: every step. Without it, only the
        # database file can be read (nothing was merged into it yet), and the reader is told.
        assert as_unprivileged_user(reader) == ("5 0" if with_shm else "0 1")
    finally:
        shutil.rmtree(base)
