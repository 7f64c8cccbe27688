"""Matplotlib figures for the HTML report, returned as inline PNG data (no files, no network)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

from steadygrad.core.finding import Finding
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


def mark_actions(ax, actions) -> None:
    """Dashed lines at the steps where the autopilot (or the user) acted on the run."""
    seen = set()
    for a in actions:
        name = label(f"action: {a.kind}") if a.kind not in seen else None
        seen.add(a.kind)
        ax.axvline(a.step, color="#9c27b0", ls="--", alpha=0.7, lw=1, label=name)


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
            mark_actions(ax, run.actions())
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if log or _spans_decades(runs, name):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(label(title or name))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return to_data_uri(fig)


def limit_plot(runs: Sequence[Run], value: str, limit: str, title: str) -> str | None:
    """A measured value against its stability limit (e.g. sharpness against 2/lr)."""
    plt = _pyplot()
    have = [r for r in runs if value in r.names()]
    if not have:
        return None
    fig, ax = plt.subplots(figsize=(8, 3))
    for run in have:
        prefix = f"{run.name}: " if len(runs) > 1 else ""
        steps, values = run.series(value)
        ax.plot(steps, values, "o-", ms=3, lw=1, label=label(prefix + value))
        if limit in run.names():
            lsteps, lvalues = run.series(limit)
            ax.plot(lsteps, lvalues, "--", lw=1.2, label=label(prefix + limit))
    if len(runs) == 1:
        mark_findings(ax, [f for f in runs[0].findings() if "sharpness" in f.kind])
    ax.set_xlabel("step")
    ax.set_title(label(title))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return to_data_uri(fig)


def family_plot(run: Run, signal: str, title: str, max_lines: int = 24) -> str | None:
    """One line per module of a per-module signal (e.g. the max attention logit per layer)."""
    family = run.family(signal)
    if not family:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3))
    for name, (steps, values) in list(family.items())[:max_lines]:
        ax.plot(steps, values, lw=1, label=label(name))
    mark_findings(ax, [f for f in run.findings() if f.where in family])
    ax.set_xlabel("step")
    ax.set_title(label(title))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best", ncol=2)
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
    # Column edges halfway between recorded steps: irregular cadences keep their true positions.
    mids = (all_steps[1:] + all_steps[:-1]) / 2
    gap = np.diff(all_steps).min() if len(all_steps) > 1 else 1
    edges = np.concatenate([[all_steps[0] - gap / 2], mids, [all_steps[-1] + gap / 2]])
    image = ax.pcolormesh(
        edges, np.arange(len(names) + 1) - 0.5, shown, cmap="viridis", shading="flat"
    )
    ax.set_ylim(len(names) - 0.5, -0.5)
    # Red only where the run had a real non-finite event at that step: a NaN ratio of a
    # zero-initialised bias (0/0) is undefined, not a fault.
    bad = present & ~np.isfinite(grid) & np.isin(all_steps, real_event_steps(run))[None, :]
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


def real_event_steps(run: Run) -> np.ndarray:
    """Steps with a real non-finite event: non-finite gradients or weights counted, or a
    non-finite loss."""
    from steadygrad.report.data import LOSS, NONFINITE_EVENT_METRICS
    from steadygrad.store.query import nonfinite_steps, positive_steps

    names = set(run.names())
    steps = [s for n in NONFINITE_EVENT_METRICS if n in names for s, _ in positive_steps(run, n)]
    if LOSS.name in names:
        steps += [s for s, _ in nonfinite_steps(run, LOSS.name)]
    return np.array(sorted(set(steps)), dtype=np.int64)


def _spans_decades(runs: Sequence[Run], name: str, decades: float = 2.0) -> bool:
    """Whether a positive series covers more than ``decades`` orders of magnitude."""
    values = np.concatenate([r.series(name)[1] for r in runs if name in r.names()])
    values = values[np.isfinite(values)]
    return (
        bool(len(values)) and values.min() > 0 and np.log10(values.max() / values.min()) > decades
    )
