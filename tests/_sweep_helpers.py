"""Module-level functions for sweep tests (Ray's workers import them by name)."""

import os
import time
from pathlib import Path


def count_and_square(config: dict, run_dir: Path) -> int:
    """Leave one marker file per execution, so a test can count how often a run was done, and
    the input in the run's own directory."""
    marker_dir = Path(config["markers"])
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / f"{config['x']}.{os.getpid()}.{time.time_ns()}").touch()
    run_dir.mkdir(parents=True)  # the sweep reserves the path (emptied); the run creates it
    (run_dir / "x.txt").write_text(str(config["x"]))
    time.sleep(config.get("sleep", 0.0))
    return config["x"] ** 2


def fail_on_three_die_on_two(config: dict) -> int:
    """Raise on 3; on 2 end the worker outright (as the OOM killer would) instead of raising."""
    if config["x"] == 3:
        raise ValueError("three is not allowed")
    if config["x"] == 2:
        os._exit(1)
    return config["x"] ** 2
