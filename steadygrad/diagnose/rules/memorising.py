"""Memorising, from the opt-in gradient-coherence probe (kept self-contained: one check, one rule,
appended to ``RULES``).
"""

from __future__ import annotations

import math

from steadygrad.diagnose.detectors.dynamics import MEMORISING
from steadygrad.diagnose.rules.base import EVENT, Found
from steadygrad.diagnose.rules.facts import RunFacts
from steadygrad.diagnose.rules.rule import Fix, Rule


def _memorising(facts: RunFacts) -> Found | None:
    found = facts.of(MEMORISING)
    if not found:
        return None
    first = min(found, key=lambda f: f.step)
    ev = first.evidence
    summary = (
        f"memorising: from step {ev.get('probe_steps', [first.step])[0]} the training loss fell "
        f"({ev.get('loss_then', math.nan):.3g} -> {ev.get('loss_now', math.nan):.3g}, from "
        f"{ev.get('loss_start', math.nan):.3g} at the start) while the per-example gradients "
        f"stayed near orthogonal (m-coherence {ev.get('coherence')}, below {ev.get('low')}): "
        "the network is fitting examples one by one rather than a pattern they share"
    )
    return Found(summary, first.step, [], {"episodes": len(found), "first": dict(ev)})


MEMORISING_RULE = Rule(
    "memorising",
    EVENT,
    "warning",
    "Chatterjee 2020 (ICLR), 'Coherent gradients'; Chatterjee & Zielinski 2022, 'On the "
    "generalization mystery in deep learning': per-example gradients of learnable data agree "
    "and reinforce each other, those of randomly labelled data are near orthogonal, and each "
    "example is then fitted on its own; coherence falls as a network starts to memorise "
    "(steadygrad study gradient-coherence: real vs random labels on digits).",
    (
        Fix(
            "check the labels and the input pipeline (shuffled or misaligned labels look like "
            "this); compare with a run on a small subset whose labels you have checked",
            "steadygrad.load(run_dir).series('gradient_coherence')",
        ),
        Fix(
            "regularise or stop early: memorised examples do not carry over to held-out data",
            "for group in optimizer.param_groups: group['weight_decay'] = 5e-4",
        ),
    ),
    _memorising,
    (MEMORISING,),
)
