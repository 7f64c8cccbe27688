"""RunStore: the crash-safe writer behind the Monitor.

Rows are buffered in memory and written in one transaction per flush (every ``flush_every``
steps or ``flush_seconds``). The database is in WAL mode, so a process killed at any moment
leaves a database that opens and holds every step up to the last flush; its status stays
"running" with a dead pid, which :func:`steadygrad.load` reports as "crashed".
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.finding import Finding
from steadygrad.core.metric import Metric
from steadygrad.store.schema import DB_NAME, SCHEMA, STATUSES


def _json(value: Any) -> str:
    # NaN/Inf survive as JSON's non-standard tokens, which Python's json reads back.
    return json.dumps(value, default=str)


def resolve_run_dir(run_dir: str | os.PathLike[str]) -> Path:
    if not isinstance(run_dir, str | os.PathLike):
        raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"run_dir must be a directory, but {str(path)!r} is a file")
    return path


class RunStore:
    """Writes one run to ``run_dir/run.db``.

    Example:
        >>> import tempfile
        >>> store = RunStore(tempfile.mkdtemp(), name="demo")
        >>> store.add_scalars(0, {"loss": 2.5})
        >>> store.close("finished")
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        flush_every: int = 100,
        flush_seconds: float = 5.0,
        resume: bool = False,
    ) -> None:
        self.run_dir = resolve_run_dir(run_dir)
        self.flush_every = positive_int("flush_every", flush_every)
        self.flush_seconds = finite_float("flush_seconds", flush_seconds, low=0.0)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / DB_NAME
        self.resumed = self.path.exists()
        if self.resumed and not resume:
            raise FileExistsError(
                f"{self.path} already holds a run; pass resume=True to continue it, "
                "overwrite=True to replace it, or choose a new run_dir"
            )
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes
        self._db.executescript(SCHEMA)
        now = time.time()
        stored = self._db.execute("SELECT name FROM run WHERE id=1").fetchone()
        if stored:
            self._reopen(now)
            self.name = stored[0]
        else:  # a new run (or a database that died before its run was written)
            self._create(name, config, now)
            self.name = name or self.run_dir.name
        self._name_ids: dict[str, int] = {}
        self._rows: list[tuple[int, int, float | None, float]] = []
        self._findings: list[tuple] = []
        self._actions: list[tuple] = []
        self._steps_since_flush = 0
        self._last_flush = time.monotonic()
        self.closed = False

    def _reopen(self, now: float) -> None:
        """Continue the run already stored here: running again, under this process."""
        with self._db:
            self._db.execute(
                "UPDATE run SET status='running', ended=NULL, heartbeat=?, pid=?, host=?"
                " WHERE id=1",
                (now, os.getpid(), socket.gethostname()),
            )

    def _create(self, name: str | None, config: Mapping[str, Any] | None, now: float) -> None:
        self._db.execute(
            "INSERT INTO run (id, name, config, started, heartbeat, status, pid, host, version)"
            " VALUES (1, ?, ?, ?, ?, 'running', ?, ?, ?)",
            (
                name or self.run_dir.name,
                _json(dict(config or {})),
                now,
                now,
                os.getpid(),
                socket.gethostname(),
                _version(),
            ),
        )
        self._db.commit()

    def _name_id(self, name: str) -> int:
        name_id = self._name_ids.get(name)
        if name_id is None:
            cur = self._db.execute("INSERT OR IGNORE INTO names (name) VALUES (?)", (name,))
            if cur.lastrowid and cur.rowcount:
                name_id = cur.lastrowid
            else:
                name_id = self._db.execute("SELECT id FROM names WHERE name=?", (name,)).fetchone()[
                    0
                ]
            self._name_ids[name] = name_id
        return name_id

    def update_config(self, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into the run's stored config (written at once)."""
        self._check_open()
        with self._db:
            row = self._db.execute("SELECT config FROM run WHERE id=1").fetchone()
            config = {**json.loads(row[0]), **dict(changes)}
            self._db.execute("UPDATE run SET config=? WHERE id=1", (_json(config),))

    def declare(self, metrics: Iterable[Metric]) -> None:
        """Keep the declarations of the run's metrics with the run (written at once)."""
        self._check_open()
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO metrics (name, declaration) VALUES (?, ?)",
                [(m.name, _json(m.to_dict())) for m in metrics],
            )

    def add_scalars(
        self, step: int, values: Mapping[str, float], wall: float | None = None
    ) -> None:
        """Buffer one step's values; flushes when the step or time budget is reached."""
        self._check_open()
        wall = time.time() if wall is None else wall
        ids = self._name_ids
        for name in values.keys() - ids.keys():
            self._name_id(name)
        self._rows.extend(
            (step, ids[name], None if v != v else v, wall) for name, v in values.items()
        )  # v != v: NaN, which SQLite would store as NULL anyway
        self._steps_since_flush += 1
        if (
            self._steps_since_flush >= self.flush_every
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def add_findings(self, findings: Iterable[Finding]) -> None:
        self._check_open()
        for f in findings:
            self._findings.append(
                (
                    f.step,
                    f.kind,
                    f.where,
                    f.severity,
                    _json(f.evidence),
                    None if f.batch_ids is None else _json(f.batch_ids),
                )
            )

    def add_action(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        """Record an action taken on the run (e.g. by the autopilot); written at once."""
        self._check_open()
        self._actions.append((step, kind, _json(dict(detail)), time.time()))
        self.flush()

    def flush(self) -> None:
        """Write every buffered row in one transaction."""
        if self.closed:
            return
        with self._db:
            if self._rows:
                self._db.executemany(
                    "INSERT INTO scalars (step, name_id, value, wall) VALUES (?, ?, ?, ?)",
                    self._rows,
                )
            if self._findings:
                self._db.executemany(
                    "INSERT INTO findings (step, kind, location, severity, evidence, batch_ids)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    self._findings,
                )
            if self._actions:
                self._db.executemany(
                    "INSERT INTO actions (step, kind, detail, wall) VALUES (?, ?, ?, ?)",
                    self._actions,
                )
            self._db.execute("UPDATE run SET heartbeat=? WHERE id=1", (time.time(),))
        self._rows.clear()
        self._findings.clear()
        self._actions.clear()
        self._steps_since_flush = 0
        self._last_flush = time.monotonic()

    def last_step(self) -> int | None:
        """The last step stored (flushed or buffered), or None for an empty run."""
        if self._rows:
            return max(row[0] for row in self._rows)
        return self._db.execute("SELECT MAX(step) FROM scalars").fetchone()[0]

    def discard_from(self, step: int) -> None:
        """Forget every value, finding and action from ``step`` on: a run resumed from a
        checkpoint records those steps again."""
        self.flush()
        with self._db:
            for table in ("scalars", "findings", "actions"):
                self._db.execute(f"DELETE FROM {table} WHERE step >= ?", (int(step),))

    def close(self, status: str = "finished") -> None:
        """Flush, mark the run with ``status`` and close the database. Idempotent."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if self.closed:
            return
        self.flush()
        with self._db:
            self._db.execute(
                "UPDATE run SET status=?, ended=?, heartbeat=? WHERE id=1",
                (status, time.time(), time.time()),
            )
        self._db.close()
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"the run store at {self.path} is closed")


def remove_run(run_dir: str | os.PathLike[str]) -> None:
    """Delete the run stored in ``run_dir`` (its database and SQLite's side files), if any."""
    path = resolve_run_dir(run_dir) / DB_NAME
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _version() -> str:
    from steadygrad import __version__

    return __version__
