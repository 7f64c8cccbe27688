"""Run a grid of configurations in worker processes, resumably.

Each finished run is appended as one JSON line to ``<out_dir>/results.jsonl`` (flushed and
synced) by the parent process as soon as it completes. On a re-run, configurations already in
that file are skipped, so an interrupted sweep (Ctrl-C, a killed job, a crash) resumes where it
stopped. A run that raises is not written: it is reported at the end and retried next time.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from steadygrad.core.checks import positive_int

RESULTS_FILE = "results.jsonl"


class SweepError(RuntimeError):
    """One or more runs of a sweep raised; ``failures`` maps run id to (config, traceback)."""

    def __init__(self, failures: dict[str, tuple[dict[str, Any], str]]) -> None:
        self.failures = failures
        parts = [f"{len(failures)} run(s) of the sweep failed:"]
        for run_id, (config, trace) in failures.items():
            parts.append(f"\n--- run {run_id} config {json.dumps(config, sort_keys=True)}\n{trace}")
        super().__init__("".join(parts))


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


def _call(fn: Callable[[dict[str, Any]], Any], config: dict[str, Any]) -> tuple[bool, Any, float]:
    """Run one configuration in a worker; never raises, so every failure reaches the parent
    with its traceback."""
    start = time.perf_counter()
    try:
        return True, fn(config), time.perf_counter() - start
    except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
        return False, traceback.format_exc(), time.perf_counter() - start


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_sweep(
    fn: Callable[[dict[str, Any]], Any],
    configs: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    progress: bool = True,
    description: str = "sweep",
) -> list[dict[str, Any]]:
    """Run ``fn(config)`` for every configuration; return one record per configuration, in order.

    ``fn`` must be a module-level function (workers are started with the ``spawn`` method, so it
    is imported by name) and both configs and results must be JSON-serialisable. A record is
    ``{"id", "config", "result", "seconds"}``. ``workers`` defaults to the CPU count; with
    ``workers=1`` runs happen in this process, one after another. Raises :class:`SweepError`
    after all other runs finished if any run raised. A worker that dies outright (killed, out of
    memory) breaks the pool: the runs not yet finished are reported failed, and a re-run retries
    them.

    Example:
        >>> import tempfile
        >>> configs = [{"x": 2}, {"x": 3}]
        >>> records = run_sweep(lambda c: c["x"] ** 2, configs, tempfile.mkdtemp(), workers=1,
        ...                     progress=False)
        >>> [r["result"] for r in records]
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    done = load_results(out)
    todo = [(i, c) for i, c in zip(ids, configs, strict=True) if i not in done]
    failures: dict[str, tuple[dict[str, Any], str]] = {}

    def finish(rid: str, config: dict[str, Any], outcome: tuple[bool, Any, float]) -> None:
        ok, value, seconds = outcome
        if ok:
            record = {"id": rid, "config": config, "result": value, "seconds": seconds}
            _append(path, record)
            done[rid] = record
        else:
            failures[rid] = (config, value)

    with _Progress(progress, description, len(configs), len(configs) - len(todo)) as advance:
        if workers == 1 or len(todo) <= 1:
            for rid, config in todo:
                finish(rid, config, _call(fn, config))
                advance()
        else:
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context)
            try:
                pending = {pool.submit(_call, fn, c): (rid, c) for rid, c in todo}
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        rid, config = pending.pop(future)
                        try:
                            outcome = future.result()
                        except BaseException:  # noqa: BLE001 - e.g. a worker killed by the OS
                            outcome = (False, traceback.format_exc(), 0.0)
                        finish(rid, config, outcome)
                        advance()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    if failures:
        raise SweepError(failures)
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
