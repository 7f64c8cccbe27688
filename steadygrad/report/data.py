"""What the interactive report draws, read from runs into plain data (then JSON in the page).

Panels come from the run's metric declarations (``Run.metrics()``: panel, scale, limit,
events); a run stored before declarations were kept falls back to the built-in declarations and
then to grouping names by their family. Long series are downsampled to a min/max envelope
(:func:`steadygrad.store.query.envelope`), per-module families to a grid of step ranges
(:func:`steadygrad.store.query.family_grid`), so a 1e6-step run or a model with thousands of
tensors gives a page of bounded size.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from steadygrad.core import metrics as builtin
from steadygrad.core.metric import Metric, declaration_of
from steadygrad.store import query
from steadygrad.store.run import Run

SERIES_BINS = 1500  # per drawn series: at most ~2x this many points
FAMILY_CELLS = 150_000  # per per-module family: members x step ranges
FAMILY_BINS = (16, 300)  # step ranges per family: at least, at most
LINE_FAMILY_MAX = 8  # a small family (lr per group, eigenvalue k) is drawn as lines
LAYER_PER = ("parameter", "module")
LOSS = builtin.LOSS
NONFINITE_EVENT_METRICS = (builtin.NONFINITE_GRADS.name, builtin.NONFINITE_PARAMS.name)
READS = (LOSS, builtin.NONFINITE_GRADS, builtin.NONFINITE_PARAMS)  # by name, beyond declarations


def builtin_declarations() -> dict[str, Metric]:
    return {m.name: m for m in vars(builtin).values() if isinstance(m, Metric)}


def declarations(run: Run) -> dict[str, Metric]:
    """The run's own declarations; the built-in ones for a run stored before they were kept."""
    own = getattr(run, "metrics", None)
    found = own() if callable(own) else {}
    return dict(found) if found else builtin_declarations()


@dataclass
class _Name:
    key: str
    family: str
    decl: Metric | None


def _classify(names: Sequence[str], decls: dict[str, Metric]) -> list[_Name]:
    return [_Name(n, n.partition("/")[0], declaration_of(n, decls)) for n in names]


def run_data(run: Run, index: int) -> dict[str, Any]:
    """One run's panels, layer families, markers and facts, as plain data."""
    decls = declarations(run)
    stats = query.name_stats(run)
    names = _classify(list(stats), decls)
    span = (
        (min(v[1] for v in stats.values()), max(v[2] for v in stats.values())) if stats else (0, 0)
    )
    members: dict[str, list[_Name]] = {}
    for n in names:
        if "/" in n.key:
            members.setdefault(n.family, []).append(n)
    limits = {d.limit for d in decls.values() if d.limit}
    series, layer_families = [], []
    for n in names:
        decl = n.decl
        if decl is not None and decl.events:
            continue  # counts of events: drawn as marks, not lines
        in_family = "/" in n.key
        is_layer = in_family and (
            (decl is not None and decl.per in LAYER_PER)
            or (decl is None and len(members[n.family]) > LINE_FAMILY_MAX)
        )
        if is_layer:
            continue
        steps, values = query.envelope(run, n.key, SERIES_BINS, stats[n.key])
        series.append(
            {
                "run": index,
                "key": n.key,
                "panel": (decl.panel if decl and decl.panel else n.family),
                "scale": _scale(decl, values),
                "limit": n.key in limits,
                "doc": decl.doc if decl else "",
                "unit": decl.unit if decl else "",
                "x": steps.tolist(),
                "y": _numbers(values),
            }
        )
    for family, group in sorted(members.items()):
        decl = group[0].decl
        if decl is not None and decl.events:
            continue
        if (decl is not None and decl.per in LAYER_PER) or (
            decl is None and len(group) > LINE_FAMILY_MAX
        ):
            layer_families.append(_layer_family(run, family, decl, span, len(group)))
    return {
        "name": run.name,
        "status": run.status,
        "first": span[0],
        "last": span[1],
        "series": series,
        "families": layer_families,
        "marks": marks(run, decls, index, set(stats)),
    }


def _layer_family(run: Run, family: str, decl: Metric | None, span: tuple[int, int], count: int):
    first, last = span
    bins = int(np.clip(FAMILY_CELLS // max(count, 1), *FAMILY_BINS))
    bins = min(bins, last - first + 1)
    width = max(1, math.ceil((last - first + 1) / bins))
    bins = math.ceil((last - first + 1) / width)
    names, low, high, bad = query.family_grid(run, family, first, width, bins)
    return {
        "family": family,
        "doc": decl.doc if decl else "",
        "scale": _scale(decl, high[np.isfinite(high)]),
        "members": names,
        "first": first,
        "width": width,
        "bins": bins,
        "low": _f32(low),
        "high": _f32(high),
        "bad": _u8(np.minimum(bad, 255)),
    }


def marks(
    run: Run, decls: dict[str, Metric], index: int, names: set[str] | None = None
) -> list[dict[str, Any]]:
    """Real events only, for the time axis: findings, actions, non-zero event counts (declared
    ``events=True``: non-finite gradients or weights, skipped steps) and a non-finite loss.
    A NaN elsewhere (an update ratio of 0/0 for a zero-initialised bias) is not an event."""
    out: list[dict[str, Any]] = []
    for f in run.findings():
        evidence = ", ".join(f"{k}={_brief(v)}" for k, v in list(f.evidence.items())[:6])
        out.append(
            {
                "run": index,
                "step": f.step,
                "type": "finding",
                "kind": f.kind,
                "severity": f.severity,
                "where": f.where or "",
                "text": evidence,
            }
        )
    for a in run.actions():
        text = ", ".join(f"{k}={_brief(v)}" for k, v in a.detail.items())
        out.append({"run": index, "step": a.step, "type": "action", "kind": a.kind, "text": text})
    present = set(query.name_stats(run)) if names is None else names
    for name in sorted(present):
        decl = declaration_of(name, decls)
        if decl is not None and decl.events:
            for step, value in query.positive_steps(run, name, limit=500):
                out.append(
                    {
                        "run": index,
                        "step": step,
                        "type": "event",
                        "kind": name,
                        "text": f"{name}={_brief(value)}",
                    }
                )
    if LOSS.name in present:
        for step, value in query.nonfinite_steps(run, LOSS.name, limit=500):
            out.append(
                {
                    "run": index,
                    "step": step,
                    "type": "event",
                    "kind": "nonfinite loss",
                    "text": f"loss={value}",
                }
            )
    out.sort(key=lambda m: m["step"])
    return out


def _scale(decl: Metric | None, values: np.ndarray) -> str:
    if decl is not None and decl.scale == "log":
        return "log"
    if decl is None:
        v = values[np.isfinite(values)]
        if len(v) and v.min() > 0 and np.log10(v.max() / v.min()) > 2:
            return "log"
    return "linear"


def _numbers(values: np.ndarray) -> list[float | None]:
    return [float(f"{v:.7g}") if math.isfinite(v) else None for v in values.tolist()]


def _f32(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _u8(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).decode("ascii")


def _brief(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return str(value.get("module") or value.get("parameter") or value)
    return str(value)
