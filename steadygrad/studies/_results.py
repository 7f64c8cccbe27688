"""The common ending of a study: its result as JSON, its plot, and its summary printed."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any


def save_result(
    result: Any,
    out_dir: Path,
    stem: str,
    plot_fn: Callable[[Any, Path], Path],
    plot: bool,
    progress: bool,
) -> Any:
    """Write ``out_dir/stem.json`` (findings as one-line descriptions) and ``stem.png``."""
    data = asdict(result)
    if hasattr(result, "findings"):
        data["findings"] = {v: [f.describe() for f in fs] for v, fs in result.findings.items()}
    data.pop("plot_path", None)
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=2))
    if plot:
        result.plot_path = plot_fn(result, out_dir / f"{stem}.png")
    if progress:
        print(result.summary(), flush=True)
    return result
