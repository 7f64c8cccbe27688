"""What a checkpoint carries of a Monitor, and where a run keeps it between processes.

Detectors are streaming objects whose state is their attributes (baselines, episode flags);
they are kept as pickled bytes, one entry per detector with its class name, so the whole state
is plain data (``torch.load(..., weights_only=True)`` reads it). Signals and the autopilot give
their own ``state_dict()``.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "monitor_state.pt"  # in the run directory, written when the Monitor closes
FORMAT = 1


def objects_state(objects: Sequence[Any]) -> list[dict[str, Any]]:
    """Each object's attributes as pickled bytes, with its class name (None when unpicklable)."""
    out = []
    for obj in objects:
        try:
            blob: bytes | None = pickle.dumps(vars(obj))
        except Exception as exc:  # a detector holding something unpicklable starts afresh
            warnings.warn(
                f"steadygrad: the state of {type(obj).__name__} cannot be saved ({exc!r})",
                RuntimeWarning,
                stacklevel=3,
            )
            blob = None
        out.append({"type": type(obj).__name__, "state": blob})
    return out


def load_objects_state(objects: Sequence[Any], states: Sequence[Mapping[str, Any]]) -> int:
    """Restore what :func:`objects_state` saved into objects of the same classes, in order.
    Returns how many were restored; a mismatch raises a clear ValueError."""
    names = [type(o).__name__ for o in objects]
    saved = [s["type"] for s in states]
    if names != saved:
        raise ValueError(
            f"the saved state is for detectors {saved}, but this Monitor has {names}; "
            "build it with the same detectors to resume"
        )
    restored = 0
    for obj, entry in zip(objects, states, strict=True):
        if entry["state"] is not None:
            vars(obj).update(pickle.loads(entry["state"]))
            restored += 1
    return restored


def save_state(run_dir: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` to the run directory atomically (a crash never leaves half a file)."""
    path = Path(run_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(dict(state), tmp)
    tmp.replace(path)
    return path


def load_state(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The state a Monitor left in ``run_dir`` when it closed, or None."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return None
    return torch.load(path, weights_only=True)
