"""The CLI on every way a run store can be broken: one or two lines naming the file and what is
wrong, the documented exit code, and never a traceback."""

import math
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
from helpers import as_unprivileged_user, shared_temp_dir

import steadygrad
from steadygrad.cli import main
from steadygrad.store import RunStore
from steadygrad.store.run import Run


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("good") / "run"
    store = RunStore(run_dir, name="good", flush_every=50)
    for step in range(400):  # enough rows for a database of several pages
        values = {"loss": 2.0 / (1 + step), "grad_norm": 1.0 + math.sin(step)}
        values.update({f"grad_norm/layer{i}.weight": float(i + step) for i in range(8)})
        store.add_scalars(step, values)
    store.add_findings([steadygrad.Finding("loss_spike", 9, None, {"z": 7.0}, "warning")])
    store.close()
    return run_dir


def _copy(good_run, tmp_path, name):
    run_dir = tmp_path / name
    shutil.copytree(good_run, run_dir)
    return run_dir, run_dir / "run.db"


def _truncate_half(db):
    os.truncate(db, db.stat().st_size // 2)


def _truncate_header(db):
    os.truncate(db, 60)


def _zero_bytes(db):
    os.truncate(db, 0)


def _garbage(db):
    db.write_bytes(os.urandom(db.stat().st_size))


def _garbage_inside(db):
    data = bytearray(db.read_bytes())
    data[4096:] = bytes(len(data) - 4096)  # keep the first page, zero the rest
    db.write_bytes(bytes(data))


def _text_file(db):
    db.write_text("step,name,value\n0,loss,1.0\n")


def _sql(*statements):
    def corrupt(db):
        conn = sqlite3.connect(db)
        for s in statements:
            conn.execute(s)
        conn.commit()
        conn.close()

    return corrupt


def _other_schema(db):
    db.unlink()
    _sql("CREATE TABLE t (x)", "INSERT INTO t VALUES (1)")(db)


def _directory(db):
    db.unlink()
    db.mkdir()


CORRUPTIONS = {
    "zero bytes": (_zero_bytes, "0 bytes"),
    "truncated in half": (_truncate_half, "malformed"),
    "truncated header": (_truncate_header, "malformed"),
    "random bytes": (_garbage, "not a database"),
    "zeroed pages": (_garbage_inside, "malformed"),
    "a text file": (_text_file, "not a database"),
    "another schema": (_other_schema, "not a steadygrad run"),
    "no scalars table": (_sql("DROP VIEW scalars_named", "DROP TABLE scalars"), "'scalars'"),
    "no run row": (_sql("DELETE FROM run"), "no run record"),
    "config not JSON": (_sql("UPDATE run SET config='{oops'"), "config is not valid JSON"),
    "evidence not JSON": (_sql("UPDATE findings SET evidence='['"), "evidence is not valid JSON"),
    "scalars with other columns": (
        _sql("DROP VIEW scalars_named", "DROP TABLE scalars", "CREATE TABLE scalars (x)"),
        "cannot be read",
    ),
    "a directory": (_directory, "is not a file"),
}


def _check(capsys, argv, code, *expected):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and 1 <= len(err.strip().splitlines()) <= 2, err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_corrupted_store_gives_a_short_error_naming_the_file(
    corruption, good_run, tmp_path, capsys
):
    run_dir, db = _copy(good_run, tmp_path, "broken")
    corrupt, message = CORRUPTIONS[corruption]
    corrupt(db)
    for argv in (
        ["report", str(run_dir), "-o", str(tmp_path / "r.html")],
        ["diagnose", str(run_dir)],
        ["export", str(run_dir), "-o", str(tmp_path / "x.csv")],
    ):
        if corruption == "evidence not JSON" and argv[0] == "export":
            assert main(argv) == 0  # an export of the scalars never reads the findings
            continue
        _check(capsys, argv, 1, str(db), message)


def test_a_locked_store_is_an_unreadable_run(good_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Run, "busy_timeout", 0.05)
    run_dir, db = _copy(good_run, tmp_path, "locked")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")  # another process keeps the file to itself
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE run SET heartbeat=0")
    holder.execute("COMMIT")  # in exclusive locking mode the lock outlives the transaction
    _check(capsys, ["report", str(run_dir), "--no-html"], 1, str(db), "locked")
    holder.close()
    assert main(["report", str(run_dir), "--no-html"]) == 0


def test_missing_runs_and_bad_outputs(good_run, tmp_path, capsys):
    _check(capsys, ["report", str(tmp_path / "nope")], 1, "no steadygrad run", "nope")
    _check(capsys, ["diagnose", str(tmp_path)], 1, "no steadygrad run")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    _check(capsys, ["report", str(good_run), "-o", str(out_dir)], 2, "-o/--out", "directory")
    _check(capsys, ["export", str(good_run), "-o", str(out_dir)], 2, "-o/--out", "directory")
    _check(capsys, ["export", str(good_run), "-o", str(tmp_path / "a.txt")], 2, "--format")
    missing_parent = tmp_path / "no" / "such" / "a.csv"
    _check(capsys, ["export", str(good_run), "-o", str(missing_parent)], 1, str(missing_parent))


def test_a_missing_optional_dependency_has_its_own_exit_code(good_run, tmp_path, capsys):
    for module in ("matplotlib", "matplotlib.pyplot", "pyarrow", "pyarrow.parquet"):
        sys.modules.pop(module, None)
    saved = {m: sys.modules.get(m) for m in ("matplotlib", "pyarrow")}
    try:
        sys.modules["matplotlib"] = None  # what an uninstalled package looks like to import
        sys.modules["pyarrow"] = None
        out = str(tmp_path / "r.html")
        _check(capsys, ["report", str(good_run), "-o", out], 3, "pip install 'steadygrad[plots]'")
        out = str(tmp_path / "x.parquet")
        _check(capsys, ["export", str(good_run), "-o", out], 3, "pip install 'steadygrad[parquet]'")
    finally:
        for module, value in saved.items():
            if value is None:
                sys.modules.pop(module, None)
            else:
                sys.modules[module] = value


def test_a_run_the_user_may_not_read(good_run):
    base = shared_temp_dir()
    try:
        shutil.copytree(good_run, base / "run")
        os.chmod(base / "run" / "run.db", 0o600)  # root's, not readable by others

        def read():
            import contextlib
            import io

            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(["report", str(base / "run"), "--no-html"])
            return f"{code}|{err.getvalue()}"

        code, err = as_unprivileged_user(read).split("|", 1)
        assert code == "1" and "Traceback" not in err and str(base / "run" / "run.db") in err
    finally:
        shutil.rmtree(base)


def test_the_installed_command_prints_no_traceback(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.db").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "steadygrad", "report", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") <= 2 and "Traceback" not in result.stderr
    assert "0 bytes" in result.stderr and str(tmp_path / "run" / "run.db") in result.stderr
