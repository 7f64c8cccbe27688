"""Summaries of a run's scalars computed inside SQLite, so a reader of a long run or a large
model (a report, a live view) never pulls every row into Python.

All read-only, on the run's own read-only connection; the writer is never blocked (WAL mode).
"""

from __future__ import annotations

import math

import numpy as np

from steadygrad.store.run import Run

_INF = 1e308 * 10  # SQLite compares IEEE infinities like any other REAL


def name_stats(run: Run) -> dict[str, tuple[int, int, int]]:
    """Each metric's ``(rows, first step, last step)``, from one pass over the name index."""
    rows = run._db.execute(
        "SELECT n.name, c.k, c.first, c.last FROM (SELECT name_id, COUNT(*) AS k,"
        " MIN(step) AS first, MAX(step) AS last FROM scalars GROUP BY name_id) c"
        " JOIN names n ON n.id = c.name_id ORDER BY n.name"
    )
    return {name: (k, first, last) for name, k, first, last in rows}


def name_counts(run: Run) -> dict[str, int]:
    """How many rows each metric has: ``{name: count}``."""
    return {name: k for name, (k, _, _) in name_stats(run).items()}


def envelope(
    run: Run, name: str, bins: int, stats: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one metric with at most about ``2 * bins`` points: each of
    ``bins`` equal step ranges keeps its lowest and its highest value at their own steps, so a
    spike is never averaged away. A series short enough is returned whole. NaN/Inf are left out
    (see :func:`nonfinite_steps`). ``stats``: the name's entry of :func:`name_stats`, if known."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if stats is None:
        stats = run._db.execute(
            "SELECT COUNT(*), MIN(step), MAX(step) FROM scalars s JOIN names n ON n.id = s.name_id"
            " WHERE n.name = ?",
            (name,),
        ).fetchone()
    count, first, last = stats
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
    members = [name[len(lo_name) :] for _, name in ids]
    low = np.full((len(ids), bins), np.nan)
    high = np.full((len(ids), bins), np.nan)
    bad = np.zeros((len(ids), bins), np.int32)
    if not ids:
        return members, low, high, bad
    row_of = np.full(max(i for i, _ in ids) + 1, -1)
    row_of[[i for i, _ in ids]] = np.arange(len(ids))
    finite = "s.value IS NOT NULL AND s.value < ? AND s.value > ?"
    for start in range(0, len(ids), 500):  # by id, through the (name_id, step) index
        chunk = [i for i, _ in ids[start : start + 500]]
        marks = ",".join("?" * len(chunk))
        rows = run._db.execute(
            "SELECT s.name_id, (s.step - ?) / ?, MIN(CASE WHEN " + finite + " THEN s.value END),"
            " MAX(CASE WHEN " + finite + " THEN s.value END), SUM(NOT (" + finite + "))"
            f" FROM scalars s WHERE s.name_id IN ({marks}) GROUP BY s.name_id, 2",
            (first, width, _INF, -_INF, _INF, -_INF, _INF, -_INF, *chunk),
        ).fetchall()
        if not rows:
            continue
        r = row_of[np.fromiter((x[0] for x in rows), np.int64, len(rows))]
        c = np.fromiter((x[1] for x in rows), np.int64, len(rows))
        keep = (c >= 0) & (c < bins)
        r, c = r[keep], c[keep]
        low[r, c] = np.array([x[2] for x in rows], dtype=float)[keep]  # None (no finite): NaN
        high[r, c] = np.array([x[3] for x in rows], dtype=float)[keep]
        bad[r, c] = np.array([x[4] or 0 for x in rows], dtype=np.int32)[keep]
    return members, low, high, bad
