"""Run a grid of configurations as Ray Tune trials, resumably.

Each trial runs ``fn(config)`` on Ray: local Ray by default (started for the sweep, no cluster
needed), or an existing cluster given by ``address``. As each trial reports, this process
appends one JSON line to ``<out_dir>/results.jsonl`` (flushed and synced). On a re-run,
configurations already in that file are skipped, so an interrupted sweep (Ctrl-C, a killed job,
a crash) resumes where it stopped, whatever state Ray Tune had saved. A trial that raises is not
written: it is reported at the end and retried next time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from steadygrad.core.checks import positive_int
from steadygrad.studies.ray_session import ray_session

RESULTS_FILE = "results.jsonl"
RUNS_DIR = "runs"  # <out_dir>/runs/<run id>: a run's own directory


class SweepError(RuntimeError):
    """One or more runs of a sweep raised; ``failures`` maps run id to (config, traceback)."""

    def __init__(self, failures: dict[str, tuple[dict[str, Any], str]]) -> None:
        self.failures = failures
        parts = [f"{len(failures)} run(s) of the sweep failed:"]
        for run_id, (config, trace) in failures.items():
            parts.append(f"\n--- run {run_id} config {json.dumps(config, sort_keys=True)}\n{trace}")
        super().__init__("".join(parts))


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped before every run finished (Ctrl-C); run it again to resume."""


def run_id(config: dict[str, Any]) -> str:
    """A stable id for a configuration: a hash of its canonical JSON.

    Example:
        >>> run_id({"lr": 0.1, "size": "s"}) == run_id({"size": "s", "lr": 0.1})
        True
    """
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode()).hexdigest()[:16]


def load_results(out_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The finished runs in ``out_dir`` by run id; a torn last line (a kill mid-write) is
    ignored."""
    path = Path(out_dir) / RESULTS_FILE
    results: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return results
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "id" in record and "result" in record:
            results[record["id"]] = record
    return results


def append_result(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a JSON line, synced to disk; a torn line left by a kill mid-write
    is closed first, so it cannot swallow this record."""
    with path.open("a+b") as f:
        f.seek(0, os.SEEK_END)
        torn = False
        if f.tell():
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        f.write((("\n" if torn else "") + json.dumps(record, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def run_sweep(
    fn: Callable[..., Any],
    configs: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    description: str = "sweep",
) -> list[dict[str, Any]]:
    """Run ``fn(config)`` for every configuration on Ray Tune; return one record per
    configuration, in order.

    Configs and results must be JSON-serialisable; ``fn`` must be importable by Ray's workers
    (a module-level function; on local Ray this process's ``sys.path`` is passed on). If ``fn``
    takes a ``run_dir`` argument, each run gets its own directory ``<out_dir>/runs/<run id>``
    for its run store (emptied first when an interrupted run is retried). A record is
    ``{"id", "config", "result", "seconds"}`` (plus ``"run_dir"`` when given).

    ``workers``: trials at once (default: the CPU count); local Ray is started with that many
    CPUs. ``address``: an existing Ray cluster (``host:port``, ``ray://host:port`` or
    ``"auto"``) instead of local Ray; :class:`~steadygrad.studies.ray_session.
    RayClusterUnreachable` within seconds when nothing answers there. A Ray session this
    process already holds is used as it is. Raises :class:`SweepError` after all other runs
    finished if any run raised (or its worker died), :class:`SweepInterrupted` if the sweep was
    stopped first. Ray starts only when some configuration is still to run.

    Example:
        >>> def square(config):  # at module level, so Ray's workers can import it
        ...     return config["x"] ** 2
        >>> records = run_sweep(square, [{"x": 2}, {"x": 3}], "runs/squares")  # doctest: +SKIP
        >>> [r["result"] for r in records]  # doctest: +SKIP
        [4, 9]
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    configs = list(configs)
    for config in configs:
        if not isinstance(config, dict):
            raise TypeError(f"configs must hold dicts, got {type(config).__name__}")
    workers = positive_int("workers", (os.cpu_count() or 1) if workers is None else workers)
    ids = [run_id(config) for config in configs]
    if len(set(ids)) != len(ids):
        raise ValueError("configs must not contain duplicates")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    done = load_results(out)
    todo = {rid: c for rid, c in zip(ids, configs, strict=True) if rid not in done}
    if todo:
        with _Progress(progress, description, len(configs), len(configs) - len(todo)) as advance:
            with ray_session(address, min(workers, len(todo))):
                from steadygrad.studies._tune import run_trials  # Ray is imported only here

                failures = run_trials(fn, todo, out, workers, done, advance)
        if failures:
            raise SweepError(failures)
        missing = [rid for rid in todo if rid not in done]
        if missing:
            raise SweepInterrupted(
                f"{description} stopped with {len(missing)} of {len(configs)} run(s) unfinished; "
                f"run it again with the same out_dir to finish them"
            )
    return [done[rid] for rid in ids]


class _Progress:
    """A rich progress bar (or nothing) yielding an ``advance()`` callable."""

    def __init__(self, enabled: bool, description: str, total: int, completed: int) -> None:
        self.enabled, self.description = enabled, description
        self.total, self.completed = total, completed
        self.bar = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.bar.__enter__()
        task = self.bar.add_task(self.description, total=self.total, completed=self.completed)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
