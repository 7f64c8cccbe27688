"""Making a run database all at once, and opening it for writing.

The database is built under a temporary name in the run directory (schema, run row, WAL mode),
closed, and renamed to ``run.db``: a process killed at any moment leaves either no ``run.db`` or
a whole one. Creators of one directory take turns under a lock on the directory, so two Monitors
racing for it get one run and one clear ``FileExistsError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from steadygrad.store.errors import logger
from steadygrad.store.schema import SCHEMA, TABLES

TEMP_SUFFIX = ".creating"
SIDE_FILES = ("-wal", "-shm", "-journal")


def temp_name(db: Path) -> Path:
    """The name a database is built under before it becomes ``db``."""
    return db.with_name(f".{db.name}.{socket.gethostname()}.{os.getpid()}{TEMP_SUFFIX}")


def create_run_db(db: Path, run_row: tuple, busy_timeout: float) -> sqlite3.Connection:
    """Create ``db`` holding ``run_row`` (the values of the ``run`` table's insert) and return a
    connection for writing it.

    Raises ``FileExistsError`` if ``db`` already holds a run or a file that is not one; a
    half-made database (0 bytes, or no run recorded yet) is replaced, with a log message.
    """
    run_dir = db.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    with _directory_lock(run_dir):
        if _half_made(db):
            logger.warning("replacing %s: a half-made run database with nothing recorded", db)
            _remove(db)
        _remove_stale_temps(db)
        for suffix in SIDE_FILES:  # a log left by a deleted database must not replay into ours
            _remove(Path(f"{db}{suffix}"))
        temp = temp_name(db)
        _remove(temp)
        building = sqlite3.connect(temp, isolation_level=None)
        try:
            building.execute("PRAGMA journal_mode=WAL")
            building.execute("PRAGMA synchronous=NORMAL")
            building.execute("BEGIN")  # one transaction: one sync instead of one per table
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    building.execute(statement)
            building.execute(
                "INSERT INTO run (id, name, config, started, heartbeat, status, pid, host,"
                " version) VALUES (1, ?, ?, ?, ?, 'running', ?, ?, ?)",
                run_row,
            )
            building.execute("COMMIT")
        finally:
            building.close()  # checkpoints the WAL into the file and removes it
        os.replace(temp, db)
        _sync_directory(run_dir)
    return connect_writer(db, busy_timeout)


def connect_writer(db: Path, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(
        db, timeout=busy_timeout, check_same_thread=False, isolation_level=None
    )  # used by the background writer only; transactions are explicit
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes
    return conn


def reopen_run_db(db: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open the run stored in ``db`` for writing again (a resumed run): running, under this
    process."""
    conn = connect_writer(db, busy_timeout)
    now = time.time()
    conn.execute(
        "UPDATE run SET status='running', ended=NULL, heartbeat=?, pid=?, host=? WHERE id=1",
        (now, os.getpid(), socket.gethostname()),
    )
    return conn


def read_run(db: Path) -> tuple[str, dict] | None:
    """The name and config of the run stored in ``db``, or None when it holds none."""
    if not db.is_file() or db.stat().st_size == 0:
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            row = conn.execute("SELECT name, config FROM run WHERE id=1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None  # not a run: creating one there raises the clear error
    return None if row is None else (row[0], json.loads(row[1]))


def last_stored_step(db: Path) -> int | None:
    """The last step with a stored value in ``db``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    try:
        return conn.execute("SELECT MAX(step) FROM scalars").fetchone()[0]
    finally:
        conn.close()


def _half_made(db: Path) -> bool:
    """True for a database with nothing in it; raises FileExistsError for anything else."""
    if not db.exists():
        return False
    if db.is_dir():
        raise FileExistsError(f"{db} is a directory; choose another run_dir")
    if db.stat().st_size == 0:
        return True
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "run" in tables and conn.execute("SELECT COUNT(*) FROM run").fetchone()[0]:
                raise FileExistsError(
                    f"{db} already holds a run; choose a new run_dir or delete the old one"
                )
            foreign = tables - set(TABLES) - {"data_lost", "metrics"}
            recorded = any(
                conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()
                for t in ("scalars", "findings", "actions")
                if t in tables
            )
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise FileExistsError(
            f"{db} exists but is not a readable steadygrad run ({exc}); delete it or choose "
            "another run_dir"
        ) from None
    if foreign or recorded:
        raise FileExistsError(
            f"{db} holds a database that is not a steadygrad run; delete it or choose another "
            "run_dir"
        )
    return True


def _remove_stale_temps(db: Path) -> None:
    """Remove databases left half-built by creators that died (on this host)."""
    from steadygrad.store.run import _writer_alive

    host = socket.gethostname()
    for temp in db.parent.glob(f".{db.name}.*{TEMP_SUFFIX}*"):
        owner = temp.name[len(db.name) + 2 :].split(TEMP_SUFFIX)[0]
        owner_host, _, pid = owner.rpartition(".")
        if owner_host == host and pid.isdigit() and not _writer_alive(int(pid), host):
            _remove(temp)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def _directory_lock(run_dir: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks on directories
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _sync_directory(run_dir: Path) -> None:
    # The rename is durable once the directory is synced (matters on power loss, not on a kill).
    with contextlib.suppress(OSError):
        fd = os.open(run_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
