"""Continual learning: the stability gap after a task switch (kept self-contained: one check, one
rule, appended to ``RULES``).
"""

from __future__ import annotations

import math

from steadygrad.diagnose.detectors.continual import STABILITY_GAP_FOUND
from steadygrad.diagnose.rules.base import EVENT, Found
from steadygrad.diagnose.rules.facts import RunFacts
from steadygrad.diagnose.rules.rule import Fix, Rule


def _stability_gap(facts: RunFacts) -> Found | None:
    gaps = facts.of(STABILITY_GAP_FOUND)
    if not gaps:
        return None
    worst = max(gaps, key=lambda f: f.evidence.get("size", 0.0))
    ev = worst.evidence
    tasks = sorted({f.where for f in gaps if f.where})
    summary = (
        f"stability gap: after the task switch at step {ev.get('switch_step')}, accuracy on "
        f"earlier task {worst.where} fell by {ev.get('size', math.nan):.2f} within "
        f"{ev.get('steps_to_minimum')} steps and won half of it back only after "
        f"{ev.get('length')} steps ({len(gaps)} gap(s) in all)"
    )
    evidence = {"gaps": len(gaps), "worst": dict(ev)}
    return Found(summary, min(f.step for f in gaps), tasks, evidence)


STABILITY_GAP_RULE = Rule(
    "stability_gap",
    EVENT,
    "warning",
    "De Lange, van de Ven & Tuytelaars 2023 (ICLR), 'Continual evaluation for lifelong "
    "learning: identifying the stability gap': evaluated every iteration, earlier tasks lose "
    "much of their accuracy in the first steps on a new task and then partly recover, even with "
    "experience replay (Chaudhry et al. 2019); they trace it to the new task's large gradients "
    "outweighing the replayed ones at the switch. More replay makes the drop shallower "
    "(steadygrad study stability-gap).",
    (
        Fix(
            "replay (more of) a buffer of earlier tasks' examples in every batch",
            "buffer = steadygrad.continual.ReplayBuffer(capacity=2000)  # once; then each step: "
            "buffer.add(x, y); x, y = buffer.mix(x, y, k=32)",
        ),
        Fix(
            "start each new task gently: a lower learning rate, warmed up again at each switch",
            "scheduler = steadygrad.optim.WarmupCosine(optimizer, warmup_steps=100, "
            "total_steps=total_steps)  # a new one at each task switch, over that task's steps",
        ),
    ),
    _stability_gap,
    (STABILITY_GAP_FOUND,),
)
