"""The Ray Tune side of a sweep: one Tune experiment over the runs still to do.

Each configuration is one trial of a grid over run ids. The trial reports its JSON result; a
callback in the driver appends it to the sweep's ledger at once, so the ledger (not Tune's own
periodically saved state) says what is finished.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune

from steadygrad.studies.sweep import RESULTS_FILE, RUNS_DIR, append_result


def run_trials(
    fn: Callable[..., Any],
    todo: dict[str, dict[str, Any]],
    out: Path,
    workers: int,
    done: dict[str, dict[str, Any]],
    advance: Callable[[], None],
) -> dict[str, tuple[dict[str, Any], str]]:
    """Run ``todo`` (run id -> config) as Tune trials, ``workers`` at once; add each finished
    record to ``done`` and the ledger; return the failures (run id -> (config, traceback))."""
    wants_run_dir = "run_dir" in inspect.signature(fn).parameters
    trial = _Trial(fn, todo, out / RUNS_DIR if wants_run_dir else None, os.getcwd())
    ledger = _Ledger(out, todo, wants_run_dir, done, advance)
    with tempfile.TemporaryDirectory(prefix="steadygrad-tune-") as storage, _quiet_tune():
        tuner = tune.Tuner(
            trial,
            param_space={"sweep_id": tune.grid_search(list(todo))},
            # Reusing a trial's worker for the next saves a process start and the imports.
            tune_config=tune.TuneConfig(max_concurrent_trials=workers, reuse_actors=True),
            run_config=tune.RunConfig(
                name="sweep",
                storage_path=storage,
                verbose=0,
                callbacks=[ledger],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        tuner.fit()
        # Read while Tune's storage (where it keeps the tracebacks) still exists.
        return {
            rid: (todo[rid], _error_text(trial))
            for rid, trial in ledger.failed.items()
            if rid not in done
        }


def _error_text(trial: Any) -> str:
    """The failed trial's error with the worker's traceback, as Tune stored it."""
    error = trial.get_pickled_error() or trial.get_error()
    return str(error) if error is not None else f"trial {trial} failed (no error recorded)"


class _Ledger(tune.Callback):
    """Appends each run's record to the ledger the moment its trial reports (in the driver, so
    one process writes the file)."""

    def __init__(
        self,
        out: Path,
        todo: dict[str, dict[str, Any]],
        wants_run_dir: bool,
        done: dict[str, dict[str, Any]],
        advance: Callable[[], None],
    ) -> None:
        self.out, self.todo, self.wants_run_dir = out, todo, wants_run_dir
        self.done, self.advance = done, advance
        self.failed: dict[str, Any] = {}  # run id -> Tune's trial

    def __getstate__(self) -> dict:
        return {}  # Tune pickles its callbacks with the experiment; this one holds live state

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "sweep_result" not in result:
            return
        rid = trial.config["sweep_id"]
        record = {
            "id": rid,
            "config": self.todo[rid],
            "result": json.loads(result["sweep_result"]),
            "seconds": result["sweep_seconds"],
        }
        if self.wants_run_dir:
            record["run_dir"] = str(self.out / RUNS_DIR / rid)
        append_result(self.out / RESULTS_FILE, record)
        self.done[rid] = record
        self.advance()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.failed[trial.config["sweep_id"]] = trial
        self.advance()


class _Trial:
    """The Tune function trainable: runs one configuration and reports its JSON result."""

    def __init__(
        self,
        fn: Callable[..., Any],
        configs: dict[str, dict[str, Any]],
        runs_dir: Path | None,
        driver_cwd: str,
    ) -> None:
        self.fn, self.configs, self.runs_dir, self.driver_cwd = fn, configs, runs_dir, driver_cwd
        self.__name__ = getattr(fn, "__name__", "trial")  # Tune names trials after it

    def __call__(self, tune_config: dict[str, Any]) -> None:
        rid = tune_config["sweep_id"]
        config = self.configs[rid]
        kwargs = {}
        if self.runs_dir is not None:
            run_dir = self.runs_dir / rid
            shutil.rmtree(run_dir, ignore_errors=True)  # left by an interrupted attempt
            kwargs["run_dir"] = run_dir
        # Tune moves trials into its own folder; relative paths in a config mean the caller's.
        previous = os.getcwd()
        if os.path.isdir(self.driver_cwd):
            os.chdir(self.driver_cwd)
        try:
            start = time.perf_counter()
            result = self.fn(config, **kwargs)
            seconds = time.perf_counter() - start
        finally:
            os.chdir(previous)
        tune.report({"sweep_result": json.dumps(result), "sweep_seconds": seconds})


@contextmanager
def _quiet_tune() -> Iterator[None]:
    """The sweep shows its own progress bar and table. Tune's console output would interleave
    with them: its newer reporter prints an experiment header even at ``verbose=0`` (the older
    one, chosen by RAY_AIR_NEW_OUTPUT=0, stays silent), and it logs each failed trial's
    traceback as it happens (SweepError reports them at the end)."""
    loggers = [logging.getLogger(name) for name in ("ray.tune", "ray.train", "ray.air")]
    levels = [lg.level for lg in loggers]
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if before is None:
            del os.environ["RAY_AIR_NEW_OUTPUT"]
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before
