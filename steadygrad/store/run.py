"""Reading a recorded run: ``steadygrad.load(run_dir)`` returns a :class:`Run`."""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steadygrad.core.finding import Finding
from steadygrad.core.metric import Metric
from steadygrad.store.schema import DB_NAME


@dataclass(frozen=True)
class Action:
    """Something done to the run while it trained (e.g. an autopilot rollback)."""

    step: int
    kind: str
    detail: dict[str, Any]
    wall: float


def load(run_dir: str | os.PathLike[str]) -> Run:
    """Open a recorded run read-only.

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
        raise FileNotFoundError(f"no steadygrad run at {str(path)!r} (expected {db})")
    return Run(path)


class Run:
    """A recorded run. Every query reads the database afresh, so a live run can be watched."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        row = self._db.execute(
            "SELECT name, config, started, ended, heartbeat, status, pid, host FROM run"
        ).fetchone()
        if row is None:
            raise ValueError(f"{self.path} has no run record")
        self.name: str = row[0]
        self.config: dict[str, Any] = json.loads(row[1])
        self.started: float = row[2]

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
        status, pid, host = self._db.execute("SELECT status, pid, host FROM run").fetchone()
        if status == "running" and not _writer_alive(pid, host):
            return "crashed"
        return status

    @property
    def ended(self) -> float | None:
        ended, heartbeat = self._db.execute("SELECT ended, heartbeat FROM run").fetchone()
        return ended if ended is not None else heartbeat

    # -- scalars --------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every metric name recorded, sorted."""
        rows = self._db.execute(
            "SELECT name FROM names WHERE id IN (SELECT DISTINCT name_id FROM scalars) ORDER BY name"
        )
        return [r[0] for r in rows]

    def metrics(self) -> dict[str, Metric]:
        """The run's metric declarations, ``{name: Metric}`` (empty for a run recorded before
        runs kept them)."""
        try:
            rows = self._db.execute("SELECT declaration FROM metrics").fetchall()
        except sqlite3.OperationalError:  # an older run: no such table
            return {}
        found = (Metric.from_dict(json.loads(r[0])) for r in rows)
        return {m.name: m for m in found}

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one metric as numpy arrays (NaN and Inf kept)."""
        rows = self._db.execute(
            "SELECT s.step, s.value FROM scalars s JOIN names n ON n.id = s.name_id"
            " WHERE n.name = ? ORDER BY s.step",
            (name,),
        ).fetchall()
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
        row = self._db.execute("SELECT COUNT(DISTINCT step) FROM scalars").fetchone()
        return int(row[0])

    @property
    def last_step(self) -> int | None:
        return self._db.execute("SELECT MAX(step) FROM scalars").fetchone()[0]

    def rows(self) -> list[tuple[int, str, float, float]]:
        """All scalars in long form: ``(step, name, value, wall)``."""
        rows = self._db.execute(
            "SELECT step, name, value, wall FROM scalars_named ORDER BY step, name"
        ).fetchall()
        return [(s, n, math.nan if v is None else v, w) for s, n, v, w in rows]

    # -- findings and actions ----------------------------------------------------------------
    def findings(self) -> list[Finding]:
        rows = self._db.execute(
            "SELECT kind, step, location, evidence, severity, batch_ids FROM findings"
            " ORDER BY step, id"
        )
        return [
            Finding(
                kind=kind,
                step=step,
                where=where,
                evidence=json.loads(evidence),
                severity=severity,
                batch_ids=None if batch_ids is None else json.loads(batch_ids),
            )
            for kind, step, where, evidence, severity, batch_ids in rows
        ]

    def actions(self) -> list[Action]:
        rows = self._db.execute("SELECT step, kind, detail, wall FROM actions ORDER BY step, id")
        return [Action(step, kind, json.loads(detail), wall) for step, kind, detail, wall in rows]

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
