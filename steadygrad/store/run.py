"""Reading a recorded run: ``steadygrad.load(run_dir)`` returns a :class:`Run`."""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steadygrad.core.finding import Finding
from steadygrad.core.metric import Metric
from steadygrad.store.background import LostSteps
from steadygrad.store.create import TEMP_SUFFIX
from steadygrad.store.errors import UnreadableRunError, logger
from steadygrad.store.schema import DB_NAME, TABLES


@dataclass(frozen=True)
class Action:
    """Something done to the run while it trained (e.g. an autopilot rollback)."""

    step: int
    kind: str
    detail: dict[str, Any]
    wall: float


def load(run_dir: str | os.PathLike[str]) -> Run:
    """Open a recorded run read-only; a finished run opens from a directory you cannot write.

    Raises ``FileNotFoundError`` if there is no run there and :class:`UnreadableRunError` (a
    ``ValueError``) naming the file if it cannot be read.

    Example:
        >>> run = steadygrad.load("runs/demo")          # doctest: +SKIP
        >>> steps, loss = run.series("loss")            # doctest: +SKIP
    """
    if not isinstance(run_dir, str | os.PathLike):
        raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
    path = Path(run_dir)
    if path.is_file() and path.name == DB_NAME:
        path = path.parent
    db = path / DB_NAME
    if not db.is_file():
        if db.exists():
            raise UnreadableRunError(f"{db} is not a file")
        if path.is_dir() and any(path.glob(f".{DB_NAME}.*{TEMP_SUFFIX}")):
            raise FileNotFoundError(
                f"no steadygrad run at {str(path)!r} yet: its creation is under way or was "
                "interrupted (start the run again there)"
            )
        raise FileNotFoundError(f"no steadygrad run at {str(path)!r} (expected {db})")
    return Run(path)


class Run:
    """A recorded run. Every query reads the database afresh, so a live run can be watched."""

    busy_timeout = 5.0  # seconds a query waits for a lock another process holds

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        if self.path.stat().st_size == 0:
            raise UnreadableRunError(
                f"{self.path} is empty (0 bytes): the run was stopped while it was being "
                "created; delete it, or start a new run in that directory"
            )
        self._db = self._connect()
        try:
            tables = self._tables()
            missing = [t for t in TABLES if t not in tables]
            if missing:
                raise UnreadableRunError(
                    f"{self.path} is not a steadygrad run: it has no table "
                    + ", ".join(repr(t) for t in missing)
                )
            self._has_lost = "data_lost" in tables
            self._has_metrics = "metrics" in tables
            row = self._one("SELECT name, config, started FROM run")
            self.name: str = str(row[0])
            self.config: dict[str, Any] = self._json(row[1], "the run's config")
            self.started: float = row[2]
        except BaseException:
            self._db.close()
            raise

    def _tables(self) -> set[str]:
        query = "SELECT name FROM sqlite_master WHERE type='table'"
        try:
            return {r[0] for r in self._all(query)}
        except UnreadableRunError:
            if os.access(self.run_dir, os.W_OK):
                raise
        # A write-ahead log without its -shm file, in a directory we cannot write: read the
        # database file alone (what was checkpointed into it), and say so.
        self._db.close()
        self._db = self._connect(mode="immutable=1")
        message = (
            f"{self.path}: its write-ahead log cannot be used from here (the directory is not "
            "writable); reading the database without it, so the last steps may be missing"
        )
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        return {r[0] for r in self._all(query)}

    def _connect(self, mode: str | None = None) -> sqlite3.Connection:
        """Read-only. A WAL database normally needs its ``-shm`` file created next to it; where
        the directory cannot be written (another user's run, a read-only mount), a run without a
        write-ahead log (finished, or checkpointed) is opened as immutable instead."""
        uri = self.path.absolute().as_uri()
        wal = Path(f"{self.path}-wal")
        if mode is None:
            mode = "mode=ro"
            if not os.access(self.run_dir, os.W_OK) and not wal.exists():
                mode = "immutable=1"
        try:
            return sqlite3.connect(
                f"{uri}?{mode}", uri=True, timeout=self.busy_timeout, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise UnreadableRunError(f"{self.path} cannot be opened: {exc}") from None

    def _all(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Every row of a query; a database error becomes an UnreadableRunError naming the file."""
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise UnreadableRunError(f"{self.path} cannot be read: {exc}") from None

    def _one(self, sql: str, params: tuple = ()) -> tuple:
        rows = self._all(sql, params)
        if not rows:
            raise UnreadableRunError(f"{self.path} has no run record")
        return rows[0]

    def _json(self, text: str | None, what: str) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError) as exc:
            raise UnreadableRunError(f"{self.path}: {what} is not valid JSON ({exc})") from None

    def __repr__(self) -> str:
        return f"Run({self.name!r}, status={self.status!r}, steps={self.num_steps})"

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- status ---------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """ "running", "finished", "crashed" (the writer died without closing) or "interrupted"."""
        status, pid, host = self._one("SELECT status, pid, host FROM run")
        if status == "running" and not _writer_alive(pid, host):
            return "crashed"
        return status

    @property
    def ended(self) -> float | None:
        ended, heartbeat = self._one("SELECT ended, heartbeat FROM run")
        return ended if ended is not None else heartbeat

    # -- scalars --------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every metric name recorded, sorted."""
        rows = self._all(
            "SELECT name FROM names WHERE id IN (SELECT DISTINCT name_id FROM scalars) ORDER BY name"
        )
        return [r[0] for r in rows]

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one metric as numpy arrays (NaN and Inf kept)."""
        rows = self._all(
            "SELECT s.step, s.value FROM scalars s JOIN names n ON n.id = s.name_id"
            " WHERE n.name = ? ORDER BY s.step",
            (name,),
        )
        if not rows and name not in self.names():
            raise KeyError(f"no metric named {name!r} in this run")
        steps = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        values = np.fromiter(
            (math.nan if r[1] is None else r[1] for r in rows), dtype=np.float64, count=len(rows)
        )
        return steps, values

    def family(self, signal: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every per-module series of one signal: ``{module.path: (steps, values)}``."""
        prefix = signal + "/"
        return {n[len(prefix) :]: self.series(n) for n in self.names() if n.startswith(prefix)}

    @property
    def num_steps(self) -> int:
        row = self._one("SELECT COUNT(DISTINCT step) FROM scalars")
        return int(row[0])

    @property
    def last_step(self) -> int | None:
        return self._one("SELECT MAX(step) FROM scalars")[0]

    def rows(self) -> list[tuple[int, str, float, float]]:
        """All scalars in long form: ``(step, name, value, wall)``."""
        rows = self._all("SELECT step, name, value, wall FROM scalars_named ORDER BY step, name")
        return [(s, n, math.nan if v is None else v, w) for s, n, v, w in rows]

    # -- findings and actions ----------------------------------------------------------------
    def findings(self) -> list[Finding]:
        rows = self._all(
            "SELECT kind, step, location, evidence, severity, batch_ids FROM findings"
            " ORDER BY step, id"
        )
        return [
            Finding(
                kind=kind,
                step=step,
                where=where,
                evidence=self._json(evidence, "a finding's evidence"),
                severity=severity,
                batch_ids=None if batch_ids is None else self._json(batch_ids, "batch ids"),
            )
            for kind, step, where, evidence, severity, batch_ids in rows
        ]

    def actions(self) -> list[Action]:
        rows = self._all("SELECT step, kind, detail, wall FROM actions ORDER BY step, id")
        return [
            Action(step, kind, self._json(detail, "an action's detail"), wall)
            for step, kind, detail, wall in rows
        ]

    def metrics(self) -> dict[str, Metric]:
        """The declarations of the metrics this run recorded, by name (empty for a run made
        before declarations were kept)."""
        if not self._has_metrics:
            return {}
        rows = self._all("SELECT name, declaration FROM metrics ORDER BY name")
        out = {}
        for name, text in rows:
            try:
                out[name] = Metric.from_dict(self._json(text, f"the declaration of {name!r}"))
            except (TypeError, ValueError) as exc:
                if isinstance(exc, UnreadableRunError):
                    raise
                raise UnreadableRunError(
                    f"{self.path}: the declaration of {name!r} is not a Metric ({exc})"
                ) from None
        return out

    def data_lost(self) -> list[LostSteps]:
        """The spans of steps whose records never reached the database (storage faults while
        the run trained), with the reason; empty for a run that lost nothing."""
        if not self._has_lost:
            return []
        rows = self._all("SELECT first_step, last_step, reason FROM data_lost ORDER BY id")
        return [LostSteps(*row) for row in rows]

    # -- export ------------------------------------------------------------------------------
    def to_pandas(self, wide: bool = False):
        """The scalars as a pandas DataFrame: long (step, name, value, wall) or wide (step x name)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("to_pandas needs pandas: pip install pandas") from exc
        frame = pd.DataFrame(self.rows(), columns=["step", "name", "value", "wall"])
        if wide:
            return frame.pivot_table(index="step", columns="name", values="value", dropna=False)
        return frame

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the scalars in long form to a CSV file (NaN written as ``nan``)."""
        import csv

        path = Path(path)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["step", "name", "value", "wall"])
            writer.writerows((s, n, repr(v), w) for s, n, v, w in self.rows())
        return path

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Write the scalars in long form to a Parquet file (needs pyarrow)."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(
                "to_parquet needs pyarrow: pip install 'steadygrad[parquet]'"
            ) from exc
        rows = self.rows()
        table = pa.table(
            {
                "step": pa.array([r[0] for r in rows], pa.int64()),
                "name": pa.array([r[1] for r in rows], pa.string()),
                "value": pa.array([r[2] for r in rows], pa.float64()),
                "wall": pa.array([r[3] for r in rows], pa.float64()),
            }
        )
        path = Path(path)
        pq.write_table(table, path)
        return path


def _writer_alive(pid: int | None, host: str | None) -> bool:
    if pid is None or host != socket.gethostname():
        return True  # cannot tell from here: trust the recorded status
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
