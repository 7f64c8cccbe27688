"""What the autopilot (or the user) did during the run (``autopilot_actions``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from steadygrad.core.metrics import LOSS
from steadygrad.diagnose.rules.base import Found
from steadygrad.diagnose.rules.facts import RunFacts, _autopilot_actions


def _autopilot(facts: RunFacts) -> Found | None:
    actions = _autopilot_actions(facts)
    if not actions:
        return None
    counts: dict[str, int] = {}
    for a in actions:
        counts[a.kind] = counts.get(a.kind, 0) + 1
    done = ", ".join(f"{kind} x{n}" for kind, n in counts.items())
    loss = facts.series(LOSS.name)
    ended = ""
    if loss is not None and len(loss[1]):
        last = loss[1][-1]
        ended = (
            f"; the run ended with loss {last:.4g}"
            if np.isfinite(last)
            else ("; the run still ended non-finite")
        )
    rollbacks = [a for a in actions if a.kind == "rollback"]
    evidence: dict[str, Any] = {"actions": counts}
    if rollbacks:
        evidence["rollbacks"] = [
            {
                "step": a.step,
                "to_step": a.detail.get("to_step"),
                "lr_after": a.detail.get("lr_after"),
            }
            for a in rollbacks
        ]
    return Found(
        f"the autopilot acted: {done} (first at step {actions[0].step}){ended}",
        actions[0].step,
        [],
        evidence,
    )
