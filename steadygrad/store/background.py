"""The thread that writes a run's records, so the training loop never waits on the disk.

The training thread hands over batches (one per flush window); this thread writes each in one
transaction. A storage fault (disk full, read-only, locked, the database deleted) never reaches
the training loop: the thread warns once, keeps the batches in memory up to a bound (dropping
the oldest whole batches beyond it), retries with a growing delay, and on recovery writes which
steps were lost to the ``data_lost`` table.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from steadygrad.store.create import create_run_db, read_run, reopen_run_db
from steadygrad.store.errors import StorageWarning, logger


@dataclass
class Batch:
    """One flush window: scalars as ``(step, name, value, wall)``, findings, actions and metric
    declarations ``(name, json)``."""

    rows: list[tuple] = field(default_factory=list)
    findings: list[tuple] = field(default_factory=list)
    actions: list[tuple] = field(default_factory=list)
    metrics: list[tuple] = field(default_factory=list)
    config: str | None = None  # the run's whole config as JSON, when it changed
    discard_from: int | None = None  # forget what is stored from this step on (a resume)
    seq: int = 0

    def __len__(self) -> int:
        n = len(self.rows) + len(self.findings) + len(self.actions) + len(self.metrics)
        return n + (self.config is not None) + (self.discard_from is not None)

    def steps(self) -> tuple[int, int] | None:
        steps = [r[0] for r in self.rows] + [f[0] for f in self.findings]
        return (min(steps), max(steps)) if steps else None


@dataclass(frozen=True)
class LostSteps:
    """Steps whose records never reached the database, and why."""

    first_step: int
    last_step: int
    reason: str


class BackgroundWriter(threading.Thread):
    """Writes batches to ``db`` off the training thread; see the module docstring."""

    def __init__(
        self,
        db: Path,
        run_row: tuple,
        *,
        busy_timeout: float,
        max_buffered_rows: int,
        retry_seconds: float,
        max_retry_seconds: float,
        resume: bool = False,
    ) -> None:
        super().__init__(name=f"steadygrad-writer:{db.parent.name}", daemon=True)
        self.db_path = db
        self.run_row = run_row
        self.busy_timeout = busy_timeout
        self.max_buffered_rows = max_buffered_rows
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.resume = resume  # continue the run in db (made anew if the file goes away)
        self.cond = threading.Condition()
        self.fault: str | None = None  # the storage error now in effect, if any
        self.lost: list[LostSteps] = []  # every loss so far (also written, once possible)
        self.submitted = 0  # sequence number of the last batch handed over
        self.written = 0  # ... and of the last one committed
        self._backlog: deque[Batch] = deque()
        self._backlog_rows = 0
        self._unrecorded: list[LostSteps] = []  # losses not yet in the database
        self._conn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None
        self._name_ids: dict[str, int] = {}
        self._committed: tuple[int, int] | None = None  # steps in the current database file
        self._closing: str | None = None
        self._close_deadline = 0.0
        self._retry_at = 0.0
        self._retry_delay = retry_seconds
        self._warned = False
        self._io = threading.Lock()  # one user of the connection at a time

    # -- the training thread's side ---------------------------------------------------------------
    def create(self) -> None:
        """Create the database now (on the caller's thread), so a clash raises at once; a storage
        fault instead becomes a retried fault like any other."""
        try:
            self._open()
        except FileExistsError:
            raise
        except (OSError, sqlite3.Error) as exc:
            self._failed(exc)

    def submit(self, batch: Batch, wait_previous: float = 0.0) -> None:
        """Hand over a batch. With ``wait_previous``, first wait (at most that long) for the
        previous batch to be committed, so a kill loses at most the window just handed over."""
        with self.cond:
            if wait_previous and self.fault is None and self.is_alive():
                self.cond.wait_for(self._caught_up_or_faulty, timeout=wait_previous)
            self.submitted += 1
            batch.seq = self.submitted
            self._backlog.append(batch)
            self._backlog_rows += len(batch)
            if self.fault is not None or not self.is_alive():
                self._trim()
            self.cond.notify_all()

    def wait_written(self, timeout: float) -> bool:
        """Wait until everything handed over is committed (False on a fault or timeout)."""
        with self.cond:
            self.cond.wait_for(self._caught_up_or_faulty, timeout=timeout)
            return self.written >= self.submitted

    def request_close(self, status: str, timeout: float) -> None:
        with self.cond:
            self._closing = status
            self._close_deadline = time.monotonic() + timeout
            self.cond.notify_all()

    def run_on_writer(self, fn) -> None:
        """Run ``fn(connection)`` between two writes (tests use it to inject SQLite faults)."""
        with self._io:
            fn(self._conn)

    def _caught_up_or_faulty(self) -> bool:
        return self.written >= self.submitted or self.fault is not None or not self.is_alive()

    # -- the writer thread ----------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug here must be seen, and must not reach training
            logger.exception("the steadygrad writer thread for %s stopped", self.db_path)
            with self.cond:
                self.fault = f"the writer thread stopped: {exc!r}"
                self._trim()
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"steadygrad stopped writing {self.db_path}: {exc!r}; training goes on",
                    StorageWarning,
                    stacklevel=1,
                )
        finally:
            with self.cond:
                self.cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self._due():
                    self.cond.wait(self._wait_time())
                batches = list(self._backlog)
                self._backlog.clear()
                self._backlog_rows = 0
                closing = self._closing
            ok = self._write(batches)
            with self.cond:
                if ok:
                    if batches:
                        self.written = max(self.written, batches[-1].seq)
                    if self.fault is not None:
                        logger.warning("steadygrad writes to %s again", self.db_path)
                    self.fault = None
                    self._retry_delay = self.retry_seconds
                else:
                    self._backlog.extendleft(reversed(batches))
                    self._backlog_rows += sum(len(b) for b in batches)
                    self._trim()
                    self._retry_at = time.monotonic() + self._retry_delay
                    self._retry_delay = min(2 * self._retry_delay, self.max_retry_seconds)
                self.cond.notify_all()
                if closing is not None and (
                    ok or time.monotonic() >= self._close_deadline
                ):  # everything written, or out of time
                    break
        self._finish(closing, ok)

    def _due(self) -> bool:
        now = time.monotonic()
        if self.fault is not None or self._conn is None:
            if self._closing is not None and now >= self._close_deadline:
                return True
            return now >= self._retry_at
        return bool(self._backlog) or self._closing is not None

    def _wait_time(self) -> float | None:
        if self.fault is None and self._conn is not None:
            return None
        until = self._retry_at
        if self._closing is not None:
            until = min(until, self._close_deadline)
        return max(0.0, until - time.monotonic())

    def _write(self, batches: list[Batch]) -> bool:
        with self._io:
            return self._write_now(batches)

    def _write_now(self, batches: list[Batch]) -> bool:
        try:
            self._check_file()
            if self._conn is None:
                self._open()
            self._commit(batches)
        except (OSError, sqlite3.Error) as exc:
            self._failed(exc)
            return False
        return True

    def _commit(self, batches: list[Batch]) -> None:
        conn = self._conn
        new_ids: dict[str, int] = {}
        conn.execute("BEGIN IMMEDIATE")
        try:
            batches = self._discard(batches)
            ids = dict(self._name_ids)
            for b in batches:
                for name in {r[1] for r in b.rows}.difference(ids):
                    ids[name] = new_ids[name] = self._name_id(name)
            rows = [(step, ids[name], v, wall) for b in batches for step, name, v, wall in b.rows]
            if rows:
                conn.executemany(
                    "INSERT INTO scalars (step, name_id, value, wall) VALUES (?, ?, ?, ?)", rows
                )
            findings = [f for b in batches for f in b.findings]
            if findings:
                conn.executemany(
                    "INSERT INTO findings (step, kind, location, severity, evidence, batch_ids)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    findings,
                )
            actions = [a for b in batches for a in b.actions]
            if actions:
                conn.executemany(
                    "INSERT INTO actions (step, kind, detail, wall) VALUES (?, ?, ?, ?)", actions
                )
            configs = [b.config for b in batches if b.config is not None]
            if configs:
                conn.execute("UPDATE run SET config=? WHERE id=1", (configs[-1],))
            metrics = [m for b in batches for m in b.metrics]
            if metrics:
                conn.executemany(
                    "INSERT OR REPLACE INTO metrics (name, declaration) VALUES (?, ?)", metrics
                )
            if self._unrecorded:
                now = time.time()
                conn.executemany(
                    "INSERT INTO data_lost (first_step, last_step, reason, wall) VALUES (?,?,?,?)",
                    [(x.first_step, x.last_step, x.reason, now) for x in self._unrecorded],
                )
            conn.execute("UPDATE run SET heartbeat=? WHERE id=1", (time.time(),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self._name_ids.update(new_ids)
        self._unrecorded.clear()
        if configs:  # a database made anew (after a deletion) starts from the latest config
            self.run_row = (self.run_row[0], configs[-1], *self.run_row[2:])
        for b in batches:
            span = b.steps()
            if span is not None:
                old = self._committed or span
                self._committed = (min(old[0], span[0]), max(old[1], span[1]))

    def _discard(self, batches: list[Batch]) -> list[Batch]:
        """Run the discards some batches carry (in the open transaction); what batches before a
        discard hold from its step on is void too."""
        marks = [(i, b.discard_from) for i, b in enumerate(batches) if b.discard_from is not None]
        if not marks:
            return batches
        for _, step in marks:
            for table in ("scalars", "findings", "actions"):
                self._conn.execute(f"DELETE FROM {table} WHERE step >= ?", (step,))

        def kept(i: int, step: int) -> bool:
            return all(i >= j or step < d for j, d in marks)

        return [
            Batch(
                rows=[r for r in b.rows if kept(i, r[0])],
                findings=[f for f in b.findings if kept(i, f[0])],
                actions=[a for a in b.actions if kept(i, a[0])],
                metrics=b.metrics,
                config=b.config,
                seq=b.seq,
            )
            for i, b in enumerate(batches)
        ]

    def _name_id(self, name: str) -> int:
        conn = self._conn
        conn.execute("INSERT OR IGNORE INTO names (name) VALUES (?)", (name,))
        return conn.execute("SELECT id FROM names WHERE name=?", (name,)).fetchone()[0]

    def _open(self) -> None:
        if self.resume and read_run(self.db_path) is not None:
            self._conn = reopen_run_db(self.db_path, self.busy_timeout)
        else:
            self._conn = create_run_db(self.db_path, self.run_row, self.busy_timeout)
        stat = os.stat(self.db_path)
        self._file_id = (stat.st_dev, stat.st_ino)
        self._name_ids.clear()

    def _check_file(self) -> None:
        """An open database whose file was deleted or replaced swallows writes silently: notice
        it, count what it held as lost, and make a new one."""
        if self._conn is None:
            return
        try:
            stat = os.stat(self.db_path)
            same = (stat.st_dev, stat.st_ino) == self._file_id
        except OSError:
            same = False
        if same:
            return
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._conn = None
        reason = f"{self.db_path} was deleted or replaced while the run trained"
        if self._committed is not None:
            self._lose(LostSteps(*self._committed, reason))
        self._committed = None
        self._failed(OSError(reason))

    def _failed(self, exc: BaseException) -> None:
        message = (
            f"steadygrad cannot write {self.db_path}: {exc}. Training goes on; records are kept "
            f"in memory (up to {self.max_buffered_rows} values) and written when it works again."
        )
        if self.fault is None:
            logger.warning(message)
        if not self._warned:
            self._warned = True
            warnings.warn(message, StorageWarning, stacklevel=2)
        self.fault = str(exc)
        if self._conn is None:
            self._retry_at = time.monotonic() + self._retry_delay

    def _trim(self) -> None:
        """Drop the oldest whole batches beyond the memory bound. Their actions and metric
        declarations are kept (they are few, and say what was done to the run and what it
        records)."""
        while self._backlog_rows > self.max_buffered_rows:
            i = next((i for i, b in enumerate(self._backlog) if b.rows or b.findings), None)
            if i is None:
                return
            dropped = self._backlog[i]
            self._backlog[i] = Batch(
                actions=dropped.actions,
                metrics=dropped.metrics,
                config=dropped.config,
                seq=dropped.seq,
            )
            self._backlog_rows -= len(dropped.rows) + len(dropped.findings)
            span = dropped.steps()
            if span is not None:
                self._lose(LostSteps(*span, f"not written: {self.fault}"))

    def _lose(self, lost: LostSteps) -> None:
        self.lost.append(lost)
        self._unrecorded.append(lost)

    def _finish(self, status: str, ok: bool) -> None:
        if not ok:
            with self.cond:
                for b in self._backlog:
                    span = b.steps()
                    if span is not None:
                        self.lost.append(LostSteps(*span, f"not written: {self.fault}"))
                self._backlog.clear()
        conn = self._conn
        if ok and conn is not None:
            try:
                now = time.time()
                conn.execute(
                    "UPDATE run SET status=?, ended=?, heartbeat=? WHERE id=1", (status, now, now)
                )
            except sqlite3.Error as exc:
                self._failed(exc)
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._conn = None
        if self.lost:
            spans = ", ".join(
                f"{x.first_step}"
                if x.first_step == x.last_step
                else f"{x.first_step}-{x.last_step}"
                for x in self.lost
            )
            logger.warning("steadygrad run %s: steps %s were not recorded", self.db_path, spans)
