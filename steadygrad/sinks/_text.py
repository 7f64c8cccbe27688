"""Plain-text renderings shared by the sinks: a finding, an action, a diagnosis, one line each."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from steadygrad.core.finding import Finding


def finding_line(finding: Finding) -> str:
    """``[warning] loss_spike in fc.weight (z=9.1)``."""
    where = f" in {finding.where}" if finding.where else ""
    evidence = ", ".join(f"{k}={_short(v)}" for k, v in finding.evidence.items())
    return f"[{finding.severity}] {finding.kind}{where}" + (f" ({evidence})" if evidence else "")


def action_line(step: int, kind: str, detail: Mapping[str, Any]) -> str:
    """``step 40: rollback (to_step=30)``."""
    text = ", ".join(f"{k}={_short(v)}" for k, v in detail.items())
    return f"step {step}: {kind}" + (f" ({text})" if text else "")


def diagnosis_text(diagnosis: Mapping[str, Any] | None, status: str) -> str:
    """The run's end: its status, then each diagnosis with its fixes, most likely first."""
    lines = [f"status: {status}"]
    if not diagnosis:
        return lines[0]
    found = diagnosis.get("diagnoses") or []
    if not found:
        lines.append("healthy: no instability found")
    for i, d in enumerate(found, 1):
        lines.append(f"{i}. [{d.get('severity')}] {d.get('summary')}")
        lines += [f"   fix: {f.get('action')}: {f.get('code')}" for f in d.get("fixes", [])]
    margins = diagnosis.get("margins") or {}
    if margins:
        lines.append("margins: " + "; ".join(f"{k} {_short(v)}" for k, v in margins.items()))
    return "\n".join(lines)


def as_json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, dict | list):
        return as_json(value)
    return str(value)


def require(module: str, sink: str, extra: str):
    """Import an optional package, or say which pip extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{sink} needs {module.split('.')[0]}: pip install 'steadygrad[{extra}]'"
        ) from exc
