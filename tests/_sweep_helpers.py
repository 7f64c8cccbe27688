"""Module-level functions for sweep tests (spawned workers import them by name)."""

import os
import time
from pathlib import Path


def count_and_square(config: dict) -> int:
    """Leave one marker file per execution, so a test can count how often a run was done."""
    marker_dir = Path(config["markers"])
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / f"{config['x']}.{os.getpid()}.{time.time_ns()}").touch()
    time.sleep(config.get("sleep", 0.0))
    return config["x"] ** 2


def fail_on_three(config: dict) -> int:
    if config["x"] == 3:
        raise ValueError("three is not allowed")
    return config["x"] ** 2


def die_on_two(config: dict) -> int:
    """A worker killed outright (as by the OOM killer) rather than raising."""
    if config["x"] == 2:
        os._exit(1)
    return config["x"] ** 2
