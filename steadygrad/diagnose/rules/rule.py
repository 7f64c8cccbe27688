"""A rule: its cause, the result behind it, its fixes (:class:`Fix`) and its check, which it applies
to a run's facts to make a :class:`Diagnosis`; and the check of a per-module finding family.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from steadygrad.core import FindingKind, Severity
from steadygrad.diagnose.rules.base import SYMPTOM, Found, _first, _natural, _serious, layer_span
from steadygrad.diagnose.rules.facts import RunFacts


@dataclass(frozen=True)
class Fix:
    """One remedy: what to do, and the call that does it, runnable as printed after
    ``import steadygrad`` (and ``import torch``) on the model in question. ``applies`` says
    whether it fits the run (None: always)."""

    action: str
    code: str
    applies: Callable[[RunFacts], bool] | None = field(default=None, compare=False)


@dataclass
class Diagnosis:
    """A cause found in a run, with its evidence, fixes, and the published result behind it."""

    cause: str
    summary: str
    severity: str
    first_step: int | None
    where: list[str]
    evidence: dict[str, Any]
    fixes: list[Fix]
    reference: str
    tier: int = SYMPTOM
    score: float = 0.0
    confidence: str = ""
    why: str = ""
    explained_by: tuple[str, ...] = ()
    stalls: bool = False
    consequence_of: str = ""
    fault_alone: bool = False
    outlived: str = ""
    set_off_by: tuple[str, ...] = ()
    contained: bool = False
    drives: str = ""

    @property
    def rank_key(self) -> tuple:
        first = self.first_step if self.first_step is not None else math.inf
        return (-self.tier, -Severity.rank(self.severity), first)


@dataclass(frozen=True)
class Rule:
    """A cause: the finding kinds its check reads (each emitted by a detector), the published
    result behind it, its fixes, and the check. ``explained_by``: causes that, seen at or
    before this one, produce its evidence themselves (a step that overshoots makes the next
    gradient large), so this one is then their consequence. ``stalls``: the cause slows or
    stops learning but does not by itself make a loss climb (dead units), so it explains a
    break only if the loss made no progress after it was seen. ``fault_alone``: a stalling
    cause that is a fault even while the rest of the model learns around it (a layer whose
    updates are ~0 does not train at all; dead units, a normal sight in a ReLU network that
    goes on learning, are not), so in a run that did not break it ranks above an event
    nothing confirmed. ``contained``: the mechanism's harm stays in its own module (attention's
    output is a weighted mean of its values, however large its logits): it does not explain a
    non-finite value another module's forward made from finite inputs."""

    cause: str
    tier: int
    severity: str
    reference: str
    fixes: tuple[Fix, ...]
    check: Callable[[RunFacts], Found | None]
    kinds: tuple[FindingKind, ...] = ()
    explained_by: tuple[str, ...] = ()
    stalls: bool = False
    fault_alone: bool = False
    contained: bool = False

    def apply(self, facts: RunFacts) -> Diagnosis | None:
        facts.allowed = frozenset(self.kinds)
        try:
            found = self.check(facts)
        finally:
            facts.allowed = None
        if found is None:
            return None
        return Diagnosis(
            cause=self.cause,
            summary=found.summary,
            severity=found.severity or self.severity,
            first_step=found.first_step,
            where=found.where,
            evidence=found.evidence,
            fixes=[f for f in self.fixes if f.applies is None or f.applies(facts)],
            reference=self.reference,
            tier=self.tier,
            explained_by=self.explained_by,
            stalls=self.stalls or found.stalls,
            consequence_of=found.consequence_of,
            fault_alone=self.fault_alone,
            contained=self.contained,
            outlived=found.outlived,
            set_off_by=found.set_off_by,
            drives=found.drives,
        )


def _located(kinds: tuple[FindingKind, ...], what: str) -> Callable[[RunFacts], Found | None]:
    """A check for a per-module finding family: where it happens and from which step."""

    def check(facts: RunFacts) -> Found | None:
        found = _serious(facts.of(*kinds))
        if not found:
            return None
        where = [f.where for f in found if f.where]
        first = _first(found)
        strongest = max(found, key=lambda f: Severity.rank(f.severity))
        places = f" in {layer_span(where)}" if where else ""
        return Found(
            f"{what}{places} from step {first}",
            first,
            sorted(set(where), key=_natural),
            {
                "findings": len(found),
                "first": found[0].evidence,
                "steps": [f.step for f in found[:20]],
            },
            strongest.severity,
        )

    return check
