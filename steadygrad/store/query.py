"""Summaries of a run's scalars computed inside SQLite, so a reader of a long run or a large
model (a report, a live view) never pulls every row into Python.

All read-only, on the run's own read-only connection; the writer is never blocked (WAL mode).
"""

from __future__ import annotations

import math

import numpy as np

from steadygrad.store.run import Run

_INF = 1e308 * 10  # SQLite compares IEEE infinities like any other REAL


def name_counts(run: Run) -> dict[str, int]:
    """How many rows each metric has: ``{name: count}``."""
    rows = run._db.execute(
        "SELECT n.name, c.k FROM (SELECT name_id, COUNT(*) AS k FROM scalars GROUP BY name_id) c"
        " JOIN names n ON n.id = c.name_id ORDER BY n.name"
    )
    return dict(rows.fetchall())


def step_range(run: Run) -> tuple[int, int] | None:
    first, last = run._db.execute("SELECT MIN(step), MAX(step) FROM scalars").fetchone()
    return None if first is None else (int(first), int(last))


def envelope(run: Run, name: str, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one metric with at most about ``2 * bins`` points: each of
    ``bins`` equal step ranges keeps its lowest and its highest value at their own steps, so a
    spike is never averaged away. A series short enough is returned whole. NaN/Inf are left out
    (see :func:`nonfinite_steps`)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    (count, first, last) = run._db.execute(
        "SELECT COUNT(*), MIN(step), MAX(step) FROM scalars s JOIN names n ON n.id = s.name_id"
        " WHERE n.name = ?",
        (name,),
    ).fetchone()
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    finite = "s.value IS NOT NULL AND s.value < ? AND s.value > ?"
    if count <= 2 * bins:
        rows = run._db.execute(
            "SELECT s.step, s.value FROM scalars s JOIN names n ON n.id = s.name_id"
            f" WHERE n.name = ? AND {finite} ORDER BY s.step",
            (name, _INF, -_INF),
        ).fetchall()
    else:
        width = max(1, math.ceil((last - first + 1) / bins))
        rows = []
        for pick in ("MIN", "MAX"):  # SQLite: with one MIN/MAX, the bare column is its row's
            rows += run._db.execute(
                f"SELECT s.step, {pick}(s.value) FROM scalars s JOIN names n ON n.id = s.name_id"
                f" WHERE n.name = ? AND {finite} GROUP BY (s.step - ?) / ?",
                (name, _INF, -_INF, first, width),
            ).fetchall()
        rows = sorted(set(rows))
    steps = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    values = np.fromiter((r[1] for r in rows), np.float64, len(rows))
    return steps, values


def nonfinite_steps(run: Run, name: str, limit: int = 1000) -> list[tuple[int, float]]:
    """The first ``limit`` steps where ``name`` was NaN or +/-Inf, with the value."""
    rows = run._db.execute(
        "SELECT s.step, s.value FROM scalars s JOIN names n ON n.id = s.name_id"
        " WHERE n.name = ? AND (s.value IS NULL OR s.value >= ? OR s.value <= ?)"
        " ORDER BY s.step LIMIT ?",
        (name, _INF, -_INF, limit),
    ).fetchall()
    return [(int(s), math.nan if v is None else float(v)) for s, v in rows]


def positive_steps(run: Run, name: str, limit: int = 1000) -> list[tuple[int, float]]:
    """The first ``limit`` steps where a count (e.g. ``nonfinite_grads``) was above zero."""
    rows = run._db.execute(
        "SELECT s.step, s.value FROM scalars s JOIN names n ON n.id = s.name_id"
        " WHERE n.name = ? AND s.value > 0 ORDER BY s.step LIMIT ?",
        (name, limit),
    ).fetchall()
    return [(int(s), float(v)) for s, v in rows]


def family_grid(
    run: Run, family: str, first: int, width: int, bins: int
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Every member of a per-module family on a grid of ``bins`` step ranges of ``width`` steps
    from ``first``: ``(members, low, high, nonfinite)``, each array members x bins. ``low`` and
    ``high`` are the finite extremes in each cell (NaN where none); ``nonfinite`` counts the
    NaN/Inf values in each cell."""
    lo_name, hi_name = family + "/", family + "0"  # '0' sorts right after '/'
    ids = run._db.execute(
        "SELECT id, name FROM names WHERE name >= ? AND name < ? ORDER BY name",
        (lo_name, hi_name),
    ).fetchall()
    row_of = {i: r for r, (i, _) in enumerate(ids)}
    members = [name[len(lo_name) :] for _, name in ids]
    low = np.full((len(ids), bins), np.nan)
    high = np.full((len(ids), bins), np.nan)
    bad = np.zeros((len(ids), bins), np.int32)
    if not ids:
        return members, low, high, bad
    query = (
        "SELECT s.name_id, (s.step - ?) / ?, MIN(s.value), MAX(s.value) FROM scalars s JOIN names n ON n.id = s.name_id"
        " WHERE n.name >= ? AND n.name < ? AND s.value IS NOT NULL AND s.value < ? AND s.value > ?"
        " GROUP BY s.name_id, 2"
    )
    for name_id, col, mn, mx in run._db.execute(
        query, (first, width, lo_name, hi_name, _INF, -_INF)
    ):
        if 0 <= col < bins and name_id in row_of:
            low[row_of[name_id], col], high[row_of[name_id], col] = mn, mx
    for name_id, col, count in run._db.execute(
        "SELECT s.name_id, (s.step - ?) / ?, COUNT(*) FROM scalars s"
        " JOIN names n ON n.id = s.name_id WHERE n.name >= ? AND n.name < ?"
        " AND (s.value IS NULL OR s.value >= ? OR s.value <= ?) GROUP BY s.name_id, 2",
        (first, width, lo_name, hi_name, _INF, -_INF),
    ):
        if 0 <= col < bins and name_id in row_of:
            bad[row_of[name_id], col] = count
    return members, low, high, bad
