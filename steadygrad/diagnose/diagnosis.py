"""``steadygrad.diagnose(run)``: the ranked causes behind a run's findings, or a clean bill of
health with the margins that were measured."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from steadygrad.core import Severity
from steadygrad.diagnose.detectors.base import PREVIOUS_READING, STREAK_BEGAN
from steadygrad.diagnose.detectors.trends import GROWTH_BEGAN
from steadygrad.diagnose.rules import (
    BACK_WITHIN,
    CONFIRMED_SOON,
    EVENT,
    MECHANISM,
    PROGRESS_AFTER,
    RULES,
    SYMPTOM,
    UNBOUNDED,
    Diagnosis,
    Rule,
    RunFacts,
    _inside,
    learnt_after,
)
from steadygrad.store.run import Run, load


@dataclass
class DiagnosisReport:
    """The diagnoses of one run, most likely root cause first."""

    run_name: str
    diagnoses: list[Diagnosis]
    margins: dict[str, float | str] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return all(d.severity == "info" for d in self.diagnoses)

    @property
    def top(self) -> Diagnosis | None:
        return self.diagnoses[0] if self.diagnoses else None

    def causes(self) -> list[str]:
        return [d.cause for d in self.diagnoses]

    def as_dict(self) -> dict:
        """The report as plain JSON-ready data (``steadygrad diagnose RUN --json`` prints it).

        Non-finite numbers in evidence and margins become the strings ``"nan"``, ``"inf"`` and
        ``"-inf"``, so the output is strict JSON.

        Example:
            >>> DiagnosisReport("a", []).as_dict()["healthy"]
            True
        """
        worst = max((d.severity for d in self.diagnoses), key=Severity.rank, default=None)
        return {
            "run": self.run_name,
            "healthy": self.healthy,
            "severity": worst,
            "diagnoses": [
                {
                    "cause": d.cause,
                    "summary": d.summary,
                    "severity": d.severity,
                    "first_step": d.first_step,
                    "where": [w for w in d.where if w is not None],  # a global finding has none
                    "evidence": _plain(d.evidence),
                    "fixes": [{"action": f.action, "code": f.code} for f in d.fixes],
                    "reference": d.reference,
                    "confidence": d.confidence,
                    "why": d.why,
                    "score": d.score,
                }
                for d in self.diagnoses
            ],
            "margins": _plain(self.margins),
        }

    def text(self) -> str:
        """A plain-text rendering (the CLI prints a richer one)."""
        if self.healthy and not self.diagnoses:
            lines = [f"{self.run_name}: healthy, no instability found."]
        else:
            lines = [f"{self.run_name}: {len(self.diagnoses)} diagnosis(es), most likely first:"]
        for i, d in enumerate(self.diagnoses, 1):
            lines.append(f"{i}. [{d.severity}] {d.summary}")
            if d.why:
                lines.append(f"   confidence {d.confidence}: {d.why}")
            for fix in d.fixes:
                lines.append(f"   fix: {fix.action}: {fix.code}")
            lines.append(f"   because: {d.reference}")
        if self.margins:
            lines.append(
                "margins: " + "; ".join(f"{k} {_show(v)}" for k, v in self.margins.items())
            )
        return "\n".join(lines)


def _applied(rule: Rule, facts: RunFacts) -> Diagnosis | None:
    """``rule`` applied to a run, or None with a warning when it fails on the run's data: one
    rule's bug costs its own diagnosis, not the whole report."""
    try:
        return rule.apply(facts)
    except Exception as exc:  # noqa: BLE001 - the other rules' diagnoses still stand
        warnings.warn(
            f"steadygrad: the rule for {rule.cause} failed on this run ({exc!r}); its "
            "diagnosis is left out",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def diagnose(run: Run | str | os.PathLike[str], rules: tuple[Rule, ...] = RULES) -> DiagnosisReport:
    """Read a run's findings and signals and return its diagnoses, ranked.

    Example:
        >>> report = steadygrad.diagnose("runs/demo/unstable")   # doctest: +SKIP
        >>> print(report.text())                                  # doctest: +SKIP
    """
    if not isinstance(run, Run):
        run = load(run)
    facts = RunFacts(run)
    found = [d for rule in rules if (d := _applied(rule, facts)) is not None]
    broke = facts.broke_at
    for d in found:
        # a run that did not break learnt past a cause only if its loss fell clearly below
        # where it was then (a flat loss sets a new lowest median now and then by noise alone)
        progress = facts.progress_until if broke is not None else learnt_after(facts, d.first_step)
        # the climb the loss was in when the cause was first seen (one it came back from is
        # over, and says nothing of a cause that begins after it)
        climbing = facts.climbing_at(d.first_step) if d.first_step is not None else None
        judge(
            d,
            broke,
            progress,
            climbing,
            facts.made_at_once,
            facts.replaced_before_break,
            facts.broke_in_one_step,
        )
    for d in found:
        explained(d, found)
    for d in found:
        named_with(d, found)
    found.sort(
        key=lambda d: (
            -d.score,
            d.first_step if d.first_step is not None else np.inf,
            -Severity.rank(d.severity),
        )
    )
    if found and found[0].why == SYMPTOM_WHY:  # first: no cause above it to explain it
        found[0].why = "a symptom: what happened; no cause found explains it"
    return DiagnosisReport(run.name, found, margins(facts))


TIER_SCORE = {MECHANISM: 30.0, EVENT: 20.0, SYMPTOM: 10.0}
SYMPTOM_WHY = "a symptom: what happened, not why; a cause ranked above it explains it"


# Steps into a climb after which a stalling cause first seen is no longer where it began (units
# dying as a penalty bites make the loss climb, and are read within a few readings of it).
LONG_AFTER = 50

# Steps after the run got over a one-off event (its loss back to normal) within which what
# begins may still be its aftermath (an adaptive step carries the kick for a while).
AFTERMATH = 50


def judge(
    d: Diagnosis,
    broke: int | None,
    progress_until: int | None = None,
    climbing_from: int | None = None,
    made_at_once: str | None = None,
    replaced: int | None = None,
    in_one_step: bool = False,
) -> None:
    """Score a diagnosis, say how confident it is and why. A mechanism outranks the symptoms
    only when its evidence came before the run broke (it can explain them); one first seen
    after the break is more likely a consequence and drops below them. ``progress_until``: the
    step of the best loss before the break (of the whole run when it did not break); a cause
    that only stalls learning, seen well before it, did not stop the progress and does not
    explain the climb that followed (it is judged from its finding after which the loss made
    no more progress, if one came later); nor one first seen long after the loss began to
    climb (``climbing_from``); nor a NaN a module's forward pass made from finite inputs in
    the step the run broke (``made_at_once``): dead or frozen units make no non-finite value,
    nor does a contained mechanism (see ``Rule``) in another module. A one-off event the loss
    then learnt past (its best before the break ``PROGRESS_AFTER`` steps or more after the
    event) does not explain the break either; nor one the run got over before the weights were
    put back between steps (``replaced``: a checkpoint reload) just before the break. Where the
    run broke in one step (``in_one_step``), a stalling cause read first after it is no
    candidate: dying units make no loss jump."""
    # Among causes, timing decides (severity only breaks ties); among symptoms, severity does.
    d.score = TIER_SCORE[d.tier] + (2.0 * Severity.rank(d.severity) if d.tier == SYMPTOM else 0)
    if d.severity == "info":  # its own evidence was judged harmless: below any warning
        d.score = min(d.score, TIER_SCORE[SYMPTOM] - 5.0)
        d.confidence = "medium"
        d.why = "every finding behind it was judged harmless (info)"
        return
    first = d.first_step
    previous = _previous_reading(d)
    if (
        d.stalls
        and first is not None
        and climbing_from is not None
        and first - climbing_from >= LONG_AFTER
        and (previous is None or previous >= climbing_from)
    ):
        d.score = TIER_SCORE[SYMPTOM] - 5.0
        d.confidence = "low"
        d.why = (
            f"first seen at step {first}, long after the loss had begun to climb (step "
            f"{climbing_from}): more likely a consequence of what made it climb"
        )
        return
    if broke is not None and made_at_once is not None:
        # a loss with no minimum drives every weight its gradient reaches: no harm stays put
        elsewhere = (
            d.contained
            and d.where
            and not d.evidence.get(UNBOUNDED)
            and not any(_around(w, made_at_once) for w in d.where if w)
        )
        if elsewhere or d.stalls:
            reason = (
                f"its harm stays in {', '.join(d.where)}"
                if elsewhere
                else "it only stalls learning"
            )
            d.score -= 25.0
            d.confidence = "low"
            d.why = (
                f"seen from step {first}, but {reason}: it does not explain the non-finite "
                f"value {made_at_once} made from finite inputs at step {broke}"
            )
            return
    # A run still learning when it broke (its best loss within PROGRESS_AFTER of the break: a
    # sudden NaN, a jump) never stalled: a stalling cause is judged from its first finding.
    learning_to_the_break = (
        broke is not None and progress_until is not None and broke - progress_until < PROGRESS_AFTER
    )
    if d.stalls and first is not None and progress_until is not None and not learning_to_the_break:
        later = _stalled_from(d, progress_until)
        if later != first:  # judged from a later finding, whose previous reading is not kept
            first, previous = later, None
    if d.tier == SYMPTOM:
        d.confidence = "high" if d.severity != "info" else "medium"
        d.why = SYMPTOM_WHY
    elif (
        d.stalls
        and first is not None
        and progress_until is not None
        and progress_until - first >= PROGRESS_AFTER
    ):
        d.confidence = "low"
        d.why = (
            f"seen from step {first}, yet the loss kept improving until step {progress_until}: "
            "it did not stop learning"
        )
        if broke is None:  # below the causes that may have stopped it, above the symptoms
            d.score = TIER_SCORE[SYMPTOM] + 5.0
            if d.fault_alone:  # above an event nothing confirmed, too (see Rule)
                d.score = TIER_SCORE[EVENT] + 1.0
        else:
            d.score -= 25.0
            d.why += f", and does not explain the break at step {broke}"
    elif broke is None:
        d.confidence = "medium"
        d.why = f"seen from step {first}; the run did not break, so nothing confirms it yet"
    elif (over := _over_by(d)) is not None and (over < broke or _over_before(d, replaced)):
        d.score -= 25.0
        d.confidence = "low"
        d.why = (
            f"seen at step {first}, but the run was back to normal soon after and broke only at "
            f"step {broke}"
            + (f", after the weights were put back at step {replaced}" if replaced else "")
            + ": it does not explain the break"
        )
    elif (
        d.tier == EVENT
        and first is not None
        and progress_until is not None
        and progress_until - first >= PROGRESS_AFTER
    ):
        # a one-off event the run then learnt past: what broke it came after
        d.score -= 25.0
        d.confidence = "low"
        d.why = (
            f"seen at step {first}, but the loss went on to its best at step {progress_until} "
            f"before the run broke at step {broke}: it does not explain the break"
        )
    elif first is not None and first <= broke:
        lead = broke - first
        d.score += 10.0 + min(lead, 10)  # of the causes that came first, the earliest
        d.confidence = "high" if lead > 0 else "medium"
        d.why = (
            f"seen at step {first}, {lead} step(s) before the run broke at step {broke}: "
            "it came first and explains what followed"
        )
    elif (
        (began := _growth_began(d)) is not None
        and began < broke
        and first is not None
        and first - broke <= CONFIRMED_SOON
    ):
        # Confirmed just after the break, but the finding says its growth began before it;
        # weaker than a cadenced reading that could not look sooner: this one was watching.
        d.score += 5.0
        d.confidence = "medium"
        d.why = (
            f"confirmed at step {first}, after the run broke at step {broke}, but growing since "
            f"step {began}: it may have come first"
        )
    elif previous is not None and previous < broke and not (d.stalls and in_one_step):
        # Measured on a cadence, and not read between the break and this finding: the cause
        # may have started anywhere since the reading before, the break's own step included.
        # Not a cause that only stalls learning, where the run broke in one step: units dying
        # make no loss jump.
        d.score += 10.0
        d.confidence = "medium"
        d.why = (
            f"found at step {first}, the first reading after the run broke at step {broke} "
            f"(the reading before was at step {previous}): it may have come first"
        )
    else:
        d.score -= 25.0
        d.confidence = "low"
        d.why = (
            f"first seen at step {first}, after the run broke at step {broke}: more likely a "
            "consequence than the cause"
        )


def _stalled_from(d: Diagnosis, progress_until: int) -> int | None:
    """The first of a stalling cause's findings after which the loss made no further progress
    (no new best ``PROGRESS_AFTER`` steps on), or its first finding when there is none: a
    layer that lost half its units while learning went on, then died as learning stopped, is
    judged from the second."""
    steps = d.evidence.get("steps")
    first = d.first_step
    if not isinstance(steps, list) or first is None:
        return first
    late = [s for s in steps if isinstance(s, int) and progress_until - s < PROGRESS_AFTER]
    return min(late) if late and progress_until - first >= PROGRESS_AFTER else first


def _over_by(d: Diagnosis) -> int | None:
    """For a one-off event the run got over (its loss back to normal, ``BACK_WITHIN``), the
    step its aftermath ended; None for anything else."""
    back = d.evidence.get(BACK_WITHIN)
    if not isinstance(back, int) or d.first_step is None:
        return None
    return d.first_step + back + AFTERMATH


def _over_before(d: Diagnosis, replaced: int | None) -> bool:
    """Whether a one-off event's loss was back to normal before the weights were put back
    between steps at ``replaced`` (what broke the run began there)."""
    back = d.evidence.get(BACK_WITHIN)
    return (
        replaced is not None
        and isinstance(back, int)
        and d.first_step is not None
        and d.first_step + back < replaced
    )


def _seen_from(d: Diagnosis) -> float:
    """The step from which a cause's evidence was there: its first finding, or the first
    reading of the streak of readings that confirmed it."""
    began = _first_finding_step(d, STREAK_BEGAN)
    first = d.first_step if d.first_step is not None else math.inf
    return min(first, began) if began is not None else first


def _growth_began(d: Diagnosis) -> int | None:
    """The step a growth cause's finding says the growth began (gradient growth's
    ``started_at_step``), if it says."""
    return _first_finding_step(d, GROWTH_BEGAN)


def _previous_reading(d: Diagnosis) -> int | None:
    """The step of the reading before the one that found a cadenced cause (see
    :data:`~steadygrad.diagnose.detectors.base.PREVIOUS_READING`), if its finding says."""
    return _first_finding_step(d, PREVIOUS_READING)


def _first_finding_step(d: Diagnosis, key: str) -> int | None:
    """A step the diagnosis's first finding records under ``key`` (in its evidence)."""
    first = d.evidence.get("first")
    step = (first if isinstance(first, dict) else d.evidence).get(key)
    return step if isinstance(step, int) else None


def explained(d: Diagnosis, found: list[Diagnosis]) -> None:
    """Drop a cause below the symptoms when another cause, seen at or before it, produces its
    evidence (its rule's ``explained_by``), or when its own check saw what produces it
    (``consequence_of``); not when its harm outlived the event that set it off (``outlived``:
    that event explains its start, and the harm that stayed is what to fix), which then drops
    just below it (``set_off_by``)."""
    if d.consequence_of:
        d.score = min(d.score, TIER_SCORE[SYMPTOM] - 5.0)
        d.confidence = "low"
        d.why = d.consequence_of + ": more likely a consequence than the cause"
        return
    if d.outlived:
        # the harm that stayed takes the event's place, and the event it outlived ranks just
        # below it
        outlived = [o for o in found if o.cause in d.set_off_by and o.score >= d.score]
        if outlived:
            d.score = max(o.score for o in outlived)
            d.why += f"; its harm outlived {', '.join(o.cause for o in outlived)}, ranked below it"
        for other in outlived:
            other.score = d.score - 1.0
            other.why = (
                f"{d.cause} outlived it (from step {d.first_step}): the harm that stayed is "
                "what to fix"
            )
    if d.first_step is None or d.outlived:
        return
    for other in found:
        if other.consequence_of:
            continue  # itself judged a consequence: it explains nothing
        over = _over_by(other)
        if over is not None and d.first_step > over:
            continue  # the run had got over that one-off event before this began
        if other.cause in d.explained_by and (seen := _seen_from(other)) <= d.first_step:
            d.score = min(d.score, TIER_SCORE[SYMPTOM] - 5.0)
            d.confidence = "low"
            d.why = (
                f"{other.cause} was seen from step {seen}, at or before this (step "
                f"{d.first_step}), and produces the same evidence: more likely its consequence"
            )
            return


def named_with(d: Diagnosis, found: list[Diagnosis]) -> None:
    """A cause that drives a mechanism found in its own module (``drives``: a learning rate too
    high for the attention layer whose logits grow, or for the head whose logits drift) ranks
    just below that mechanism: the growth is what threatens the run, and the rate how it got
    going. Not below one judged a consequence (ranked with the symptoms)."""
    if not d.drives:
        return
    for other in found:
        if other.cause == d.drives and other.score > TIER_SCORE[SYMPTOM] and other.score <= d.score:
            d.score = other.score - 1.0
            d.why = (
                f"it drives the {other.cause.replace('_', ' ')} found in {', '.join(other.where)} "
                f"from step {other.first_step}: that growth is what threatens the run"
            )
            return


def margins(facts: RunFacts) -> dict[str, float | str]:
    """How far the run stayed from trouble, from whatever signals it recorded."""
    out: dict[str, float | str] = {}
    loss = facts.series("loss")
    if loss is not None and len(loss[1]):
        values = loss[1]
        finite = values[np.isfinite(values)]
        if len(finite):
            out["loss first -> last"] = f"{finite[0]:.4g} -> {finite[-1]:.4g}"
        out["non-finite loss steps"] = int((~np.isfinite(values)).sum())
    for value, limit, label in (
        ("sharpness", "sharpness_limit", "sharpness / limit"),
        (
            "preconditioned_sharpness",
            "preconditioned_sharpness_limit",
            "preconditioned sharpness / limit",
        ),
    ):
        s, lim = facts.series(value), facts.series(limit)
        if s is not None and lim is not None and len(s[1]) and len(lim[1]):
            out[label] = float(s[1][-1] / lim[1][-1])
    grad = facts.series("grad_norm")
    if grad is not None:
        g = grad[1][np.isfinite(grad[1])]
        if len(g) > 1 and np.median(g) > 0:
            out["max / median grad norm"] = float(g.max() / np.median(g))
    ratios = [facts.series(n)[1][-1] for n in sorted(facts.names) if n.startswith("update_ratio/")]
    ratios = [r for r in ratios if np.isfinite(r)]
    if ratios:
        out["median update ratio (last)"] = float(np.median(ratios))
    attn = [facts.series(n)[1] for n in sorted(facts.names) if n.startswith("attn_logit_max/")]
    if attn:
        out["max attention logit"] = float(max(np.nanmax(a) for a in attn if len(a)))
    return out


def _plain(value):
    """JSON-ready: numpy scalars to Python, non-finite floats to strings, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _show(value: float | str) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _around(module: str, other: str) -> bool:
    """Whether ``module`` is ``other``, inside it, or around it (by ``named_modules`` names)."""
    return _inside(module, other) or _inside(other, module)
