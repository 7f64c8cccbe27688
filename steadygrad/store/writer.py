"""RunStore: the crash-safe writer behind the Monitor; it never stops the training it records.

Rows are buffered in memory and handed, one batch per flush (every ``flush_every`` steps or
``flush_seconds``), to a background thread that writes each batch in one transaction, so a flush
never stalls a training step. The database is in WAL mode and is created all at once, so a
process killed at any moment leaves either no run or a database that opens and holds every step
up to the flush before the last one (a kill loses at most the window being written and the steps
since); its status stays "running" with a dead pid, which :func:`steadygrad.load` reports as
"crashed".

Storage faults (disk full, read-only, locked, the database deleted) are not raised: the store
warns once (a :class:`StorageWarning` and the ``steadygrad`` logger), keeps records in memory up
to ``max_buffered_rows``, retries, and records in the run which steps were lost.
"""

from __future__ import annotations

import atexit
import json
import operator
import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.finding import Finding
from steadygrad.core.metric import Metric
from steadygrad.store.background import BackgroundWriter, Batch, LostSteps
from steadygrad.store.create import last_stored_step, read_run
from steadygrad.store.schema import DB_NAME, STATUSES


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
    """Writes one run to ``run_dir/run.db`` from a background thread.

    Example:
        >>> import tempfile
        >>> store = RunStore(tempfile.mkdtemp(), name="demo")
        >>> store.add_scalars(0, {"loss": 2.5})
        >>> store.close("finished")
    """

    busy_timeout = 5.0  # seconds a write waits for a lock held by another connection
    retry_seconds = 1.0  # first delay before retrying after a storage fault (then doubling)
    max_retry_seconds = 30.0
    handoff_wait = 0.25  # at most this long, a flush waits for the previous one to be committed
    close_timeout = 10.0  # at most this long, close() keeps retrying a failing storage
    max_buffered_rows = 2_000_000  # values kept in memory while the storage fails (~300 MB)

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        flush_every: int = 100,
        flush_seconds: float = 5.0,
        max_buffered_rows: int | None = None,
        resume: bool = False,
    ) -> None:
        self.run_dir = resolve_run_dir(run_dir)
        self.flush_every = positive_int("flush_every", flush_every)
        self.flush_seconds = finite_float("flush_seconds", flush_seconds, low=0.0)
        if max_buffered_rows is not None:
            self.max_buffered_rows = positive_int("max_buffered_rows", max_buffered_rows)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self.path = self.run_dir / DB_NAME
        stored = read_run(self.path) if resume else None
        self.resumed = stored is not None  # continuing the run stored here
        self.name = stored[0] if stored else name or self.run_dir.name
        now = time.time()
        self._config = stored[1] if stored else dict(config or {})
        run_row = (
            _text("name", self.name),
            _text("config", _json(self._config)),
            now,
            now,
            os.getpid(),
            socket.gethostname(),
            _version(),
        )
        self._writer = BackgroundWriter(
            self.path,
            run_row,
            busy_timeout=self.busy_timeout,
            max_buffered_rows=self.max_buffered_rows,
            retry_seconds=self.retry_seconds,
            max_retry_seconds=self.max_retry_seconds,
            resume=self.resumed,
        )
        try:
            self._writer.create()  # an existing run raises here; a storage fault only warns
        except FileExistsError as exc:
            raise FileExistsError(
                f"{exc} (Monitor(..., resume=True) continues it, overwrite=True replaces it)"
            ) from None
        self._writer.start()
        self._names: set[str] = set()
        self._batch = Batch()
        self._steps_since_flush = 0
        self._last_flush = time.monotonic()
        self.closed = False
        atexit.register(self._drain_at_exit)

    @property
    def fault(self) -> str | None:
        """The storage error now in effect (records are being kept in memory), or None."""
        return self._writer.fault

    @property
    def lost(self) -> list[LostSteps]:
        """Every span of steps whose records could not be written so far."""
        return list(self._writer.lost)

    def update_config(self, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into the run's stored config (handed over at once)."""
        self._check_open()
        self._config = {**self._config, **dict(changes)}
        self._batch.config = _text("config", _json(self._config))
        self._hand_off()

    def add_scalars(
        self, step: int, values: Mapping[str, float], wall: float | None = None
    ) -> None:
        """Buffer one step's values; hands them to the writer when the step or time budget is
        reached."""
        self._check_open()
        step = _step(step)  # checked here: a value SQLite cannot bind would fail every retry
        wall = time.time() if wall is None else float(wall)
        for name in values.keys() - self._names:
            self._names.add(_text("metric name", name))
        try:
            self._batch.rows.extend(
                (step, name, None if v != v else float(v), wall) for name, v in values.items()
            )  # v != v: NaN, which SQLite would store as NULL anyway
        except (TypeError, ValueError):
            bad = {k: v for k, v in values.items() if not _is_real(v)}
            raise TypeError(f"values must be real numbers; not: {bad!r}") from None
        self._steps_since_flush += 1
        if (
            self._steps_since_flush >= self.flush_every
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self._hand_off(wait_previous=self.handoff_wait)

    def add_findings(self, findings: Iterable[Finding]) -> None:
        self._check_open()
        for f in findings:
            self._batch.findings.append(
                (
                    _step(f.step),
                    f.kind,
                    f.where,
                    f.severity,
                    _json(f.evidence),
                    None if f.batch_ids is None else _json(f.batch_ids),
                )
            )

    def declare(self, metrics: Iterable[Metric]) -> None:
        """Keep the declarations of the metrics this run records with the run (a later
        declaration of the same name replaces the earlier one); handed over at once.

        Example:
            >>> from steadygrad.core.metrics import LOSS                   # doctest: +SKIP
            >>> store.declare([LOSS])                                      # doctest: +SKIP
        """
        self._check_open()
        for metric in metrics:
            if not isinstance(metric, Metric):
                raise TypeError(f"metrics must hold Metric objects, got {type(metric).__name__}")
            self._batch.metrics.append((_text("metric name", metric.name), _json(metric.to_dict())))
        self._hand_off()

    def add_action(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        """Record an action taken on the run (e.g. by the autopilot); handed over at once."""
        self._check_open()
        self._batch.actions.append(
            (_step(step), _text("kind", kind), _json(dict(detail)), time.time())
        )
        self._hand_off()

    def flush(self, timeout: float | None = None) -> bool:
        """Hand every buffered row to the writer and wait (at most ``timeout`` seconds, default
        ``busy_timeout`` + 1) until it is committed. Returns False if it is not (a storage fault:
        the rows stay in memory and are retried)."""
        if self.closed:
            return True
        self._hand_off()
        return self._writer.wait_written(self.busy_timeout + 1 if timeout is None else timeout)

    def _hand_off(self, wait_previous: float = 0.0) -> None:
        batch, self._batch = self._batch, Batch()
        self._steps_since_flush = 0
        self._last_flush = time.monotonic()
        if len(batch):
            self._writer.submit(batch, wait_previous)

    def last_step(self) -> int | None:
        """The last step stored, or None for an empty run (what is buffered is written first)."""
        self.flush()
        steps = [r[0] for r in self._batch.rows]
        stored = last_stored_step(self.path)
        return max([*steps, *([] if stored is None else [stored])], default=None)

    def discard_from(self, step: int) -> None:
        """Forget every value, finding and action from ``step`` on: a run resumed from a
        checkpoint records those steps again."""
        self._check_open()
        step = _step(step)
        batch = self._batch
        batch.rows = [r for r in batch.rows if r[0] < step]
        batch.findings = [f for f in batch.findings if f[0] < step]
        batch.actions = [a for a in batch.actions if a[0] < step]
        batch.discard_from = step
        self._hand_off()
        self.flush()

    def close(self, status: str = "finished") -> None:
        """Write what is left, mark the run with ``status`` and close the database. Idempotent.
        A failing storage is retried for up to ``close_timeout`` seconds, then given up with a
        warning naming the steps lost."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self._drain_at_exit)
        self._hand_off()
        self._writer.request_close(status, self.close_timeout)
        # A healthy writer is waited for however long its backlog takes; a failing one gives up
        # by itself after close_timeout (each attempt bounded by busy_timeout).
        deadline = time.monotonic() + self.close_timeout + self.busy_timeout + 1.0
        while self._writer.is_alive():
            self._writer.join(0.5)
            if self._writer.fault is not None and time.monotonic() > deadline:
                break

    def _drain_at_exit(self) -> None:
        # The interpreter is exiting with the store open: write what was recorded (the writer
        # is a daemon thread and would die with the records), keeping the status as it is.
        if not self.closed:
            self.flush(timeout=self.close_timeout)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"the run store at {self.path} is closed")


def remove_run(run_dir: str | os.PathLike[str]) -> None:
    """Delete the run stored in ``run_dir`` (its database and SQLite's side files), if any."""
    path = resolve_run_dir(run_dir) / DB_NAME
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _text(what: str, value: str) -> str:
    """``value`` if SQLite can store it as text (lone surrogates cannot be UTF-8)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__} {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value!r} is not valid Unicode text (a lone surrogate)") from None
    return value


def _step(step: Any) -> int:
    try:
        return operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int, got {type(step).__name__} {step!r}") from None


def _is_real(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, complex)


def _version() -> str:
    from steadygrad import __version__

    return __version__
