"""Matplotlib figures for the HTML report, returned as inline PNG data (no files, no network)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

from steadygrad.diagnose.findings import Finding
from steadygrad.store.run import Run

_SEVERITY_COLOR = {"info": "#1f77b4", "warning": "#ff7f0e", "critical": "#d62728"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "the HTML report needs matplotlib: pip install 'steadygrad[plots]'"
        ) from exc
    return plt


def label(text: str) -> str:
    """Text for a plot label: a '$' in a run or metric name must not start matplotlib mathtext."""
    return text.replace("$", r"\$")


def to_data_uri(fig) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mark_findings(ax, findings: Sequence[Finding]) -> None:
    """Vertical lines at the findings' steps, coloured by severity."""
    seen = set()
    for f in findings:
        name = label(f.kind) if f.kind not in seen else None
        seen.add(f.kind)
        ax.axvline(
            f.step, color=_SEVERITY_COLOR.get(f.severity, "grey"), alpha=0.5, lw=1, label=name
        )


def series_plot(
    runs: Sequence[Run],
    name: str,
    *,
    log: bool = False,
    findings: bool = True,
    title: str | None = None,
) -> str | None:
    """One metric over steps for every run that has it; findings marked; non-finite steps shown."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3))
    drawn = False
    for run in runs:
        if name not in run.names():
            continue
        steps, values = run.series(name)
        finite = np.isfinite(values)
        ax.plot(
            steps[finite], values[finite], lw=1, label=label(run.name if len(runs) > 1 else name)
        )
        if (~finite).any():
            ax.plot(
                steps[~finite],
                np.full((~finite).sum(), np.nanmax(values[finite], initial=1.0)),
                "x",
                color="#d62728",
                label="non-finite",
            )
        if findings and len(runs) == 1:
            mark_findings(ax, run.findings())
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(label(title or name))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return to_data_uri(fig)


def heatmap(run: Run, signal: str, max_rows: int = 60, max_cols: int = 400) -> str | None:
    """Layers x steps heatmap of one per-module signal (log10 of the values)."""
    family = run.family(signal)
    if not family:
        return None
    plt = _pyplot()
    names = list(family)[:max_rows]
    all_steps = np.unique(np.concatenate([family[n][0] for n in names]))
    if len(all_steps) > max_cols:  # thin the columns evenly; the page stays small
        all_steps = all_steps[np.linspace(0, len(all_steps) - 1, max_cols).astype(int)]
    grid = np.full((len(names), len(all_steps)), np.nan)
    present = np.zeros(grid.shape, dtype=bool)
    for r, n in enumerate(names):
        steps, values = family[n]
        pos = np.searchsorted(steps, all_steps)
        ok = (pos < len(steps)) & (steps[np.minimum(pos, len(steps) - 1)] == all_steps)
        grid[r, ok] = values[pos[ok]]
        present[r, ok] = True
    with np.errstate(divide="ignore", invalid="ignore"):
        shown = np.log10(np.where(np.isfinite(grid) & (grid > 0), grid, np.nan))
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.16 * len(names) + 1)))
    image = ax.imshow(
        shown,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(all_steps[0] - 0.5, all_steps[-1] + 0.5, len(names) - 0.5, -0.5),
    )
    bad = present & ~np.isfinite(grid)
    if bad.any():
        rows, cols = np.nonzero(bad)
        ax.scatter(all_steps[cols], rows, marker="s", s=4, color="#d62728", label="non-finite")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([label(n) for n in names], fontsize=6)
    ax.set_xlabel("step")
    ax.set_title(label(f"log10 {signal} per layer"))
    fig.colorbar(image, ax=ax, fraction=0.03)
    return to_data_uri(fig)
