"""Finding runs: a path is one run (it holds ``run.db``) or a folder of runs, searched like
TensorBoard's ``--logdir``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from steadygrad.store.run import Run, load
from steadygrad.store.schema import DB_NAME


def find_runs(path: str | os.PathLike[str]) -> list[Path]:
    """The run directories at ``path``: itself if it is a run, else every run below it (sorted).

    Example:
        >>> find_runs("runs/")   # doctest: +SKIP
        [PosixPath('runs/a'), PosixPath('runs/sweep/lr=0.1')]
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a path, got {type(path).__name__}")
    root = Path(path)
    if root.is_file() and root.name == DB_NAME:
        return [root.parent]
    if (root / DB_NAME).exists() or not root.is_dir():
        return [root]  # one run; load() says what is wrong with it, if anything
    found = sorted(p.parent for p in root.rglob(DB_NAME) if p.is_file())
    if not found:
        load(root)  # its own message (e.g. a run whose creation is under way)
        raise FileNotFoundError(f"no steadygrad run in {str(root)!r} or any folder below it")
    return found


def load_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """Every run at or below each path, opened read-only, in the order given."""
    return [load(run_dir) for path in paths for run_dir in find_runs(path)]
