"""Attention logits that grow (``attention_logit_growth``), and early warnings that held their level
or stopped short.
"""

from __future__ import annotations

import math

import numpy as np

from steadygrad.core import Finding
from steadygrad.core.metrics import ATTN_LOGIT_MAX
from steadygrad.diagnose.detectors.base import PREVIOUS_READING
from steadygrad.diagnose.detectors.transformer import ATTENTION_LOGIT_GROWTH, AttentionLogitGrowth
from steadygrad.diagnose.rules.base import Found
from steadygrad.diagnose.rules.facts import (
    RunFacts,
    _best_before_trouble,
    _raised_before,
    _rate_bursts,
)
from steadygrad.diagnose.rules.rates import _a_passing_raise
from steadygrad.diagnose.rules.rule import _located
from steadygrad.diagnose.rules.series import PROGRESS_AFTER
from steadygrad.diagnose.rules.weights import _grown_everywhere


def _attention_growth(facts: RunFacts) -> Found | None:
    """Attention logits that grew (see :class:`AttentionLogitGrowth`). When every finding was
    the detector's early warning (growth that looked compounding, still under the threshold)
    and, in a run that did not break, each layer's logits stayed under the threshold to the
    end and had stopped compounding there (the last reading under ``EARLY_RATIO`` times the
    one a cadence before it, a cadence or more after the warning), it is info: a burst of
    learning out of a small start that slowed, which the early test cannot yet tell from
    growth that compounds."""
    found = _located((ATTENTION_LOGIT_GROWTH,), "attention-logit growth")(facts)
    if found is None or found.severity != "warning":
        return found
    if _grown_everywhere(found, facts, found.first_step, "the attention logits"):
        return found
    warned = [f for f in facts.of(ATTENTION_LOGIT_GROWTH) if f.severity != "info"]
    thrown = _thrown_by_a_raise(facts, warned[0]) if warned else ""
    if thrown:
        found.consequence_of = thrown
        return found
    peaks = [_below_an_earlier_peak(facts, f) for f in warned]
    if warned and all(p is not None for p in peaks):
        found.severity = "info"
        step, peak = min(p for p in peaks if p is not None)
        found.evidence["earlier_peak"] = {"step": step, "attn_logit_max": peak}
        found.summary += (
            f": the logits had stood as high at step {step} ({peak:.3g}) and rose no further "
            "until the run was jolted, a level held since, not growth"
        )
        return found
    held = [_held_level(facts, f) for f in warned]
    if warned and all(h is not None for h in held):
        found.severity = "info"
        found.evidence["held_level_until"] = max(h for h in held if h is not None)
        broke, best = facts.broke_at, _best_before_trouble(facts)
        found.summary += (
            ": the logits held level from the warning "
            + (f"to the break at step {broke}" if broke is not None else "to the end")
            + f", while the loss kept improving (to step {best}): a level the model learnt at, "
            + ("not what broke the run" if broke is not None else "not growth")
        )
        return found
    if facts.broke_at is not None:
        return found
    if not all(f.evidence.get("early") and f.where for f in warned):
        return found
    if all(_stopped_short(facts, f) for f in warned):
        found.severity = "info"
        found.summary += (
            ": the growth slowed and stopped short of the threshold by the end, a burst of "
            "learning rather than logits compounding"
        )
        found.evidence["stopped_short"] = True
    return found


def _thrown_by_a_raise(facts: RunFacts, f: Finding) -> str:
    """Why the attention logits of the first warning ``f`` grew, when a raise of the learning
    rate at a stroke that passed (a glitch put back, a warm restart the loss came back from:
    :func:`_a_passing_raise`) came at or after the reading the layer's rise to ``f`` began from
    (each reading since above the one before): the raised steps threw them ('' otherwise)."""
    series = _layer_logits(facts, f)
    if series is None:
        return ""
    steps, values = series
    i = int(np.searchsorted(steps, f.step, side="right")) - 1
    if i < 1 or steps[i] != f.step:
        return ""
    while i > 0 and values[i] > values[i - 1]:
        i -= 1
    before = int(steps[i])
    if before >= f.step:
        return ""
    raised = _raised_before(facts, f.step, within=f.step - before)
    if raised is None:
        return ""
    # most of the rise came after it: at the last reading up to it, half the logit or less
    at = values[: int(np.searchsorted(steps, raised, side="right"))]
    level = float(at[-1]) if len(at) else math.nan
    if not level <= 0.5 * float(values[steps == f.step][0]):
        return ""
    passed = _a_passing_raise(facts, raised, f.step)
    if not passed:
        return ""
    return (
        f"the logits stood at {level:.3g} when the learning rate was raised 4x or more at a "
        f"stroke at step {raised}, and {passed}: its steps threw them"
    )


def _layer_logits(facts: RunFacts, f: Finding) -> tuple[np.ndarray, np.ndarray] | None:
    """The largest attention logit's series of the layer of the finding ``f``, if recorded."""
    return facts.series(f"{ATTN_LOGIT_MAX.name}/{f.where}") if f.where else None


def _below_an_earlier_peak(facts: RunFacts, f: Finding) -> tuple[int, float] | None:
    """(step, value) of an earlier reading of the layer of the warning ``f``, before the
    reading ``f`` compared with, as high as the logit ``f`` fired at (within ``EARLY_RATIO``,
    the rise the detector itself counts as growth), when the layer
    never rose past ``EARLY_RATIO`` times that peak from then until a burst of the learning
    rate jolted the run (or to its end): the detector saw a rise within a level the layer
    had reached and held (a dip and a recovery), not growth."""
    series = _layer_logits(facts, f)
    before, value = f.evidence.get(PREVIOUS_READING), f.evidence.get(ATTN_LOGIT_MAX.name)
    if series is None or not isinstance(before, int) or not isinstance(value, (int, float)):
        return None
    steps, values = series
    earlier = (steps < before) & np.isfinite(values)
    # as high by the detector's own measure: a rise under EARLY_RATIO is none
    if not earlier.any() or values[earlier].max() * AttentionLogitGrowth.EARLY_RATIO < value:
        return None
    k = int(np.argmax(np.where(earlier, values, -np.inf)))
    peak = float(values[k])
    jolts = [b[0] for b in _rate_bursts(facts) if b[0] > f.step]
    until = min(jolts) if jolts else math.inf
    after = (steps > steps[k]) & (steps < until)
    if not np.isfinite(values[after]).all():
        return None
    if values[after].max(initial=0.0) > AttentionLogitGrowth.EARLY_RATIO * peak:
        return None
    return int(steps[k]), peak


# Readings, a cadence apart or more, over which attention logits held level before a break.
HELD_READINGS = 3


def _held_level(facts: RunFacts, f: Finding) -> int | None:
    """The step of the last reading before the break (or the run's end) when the layer of the
    warning ``f`` reached its level by its second reading and held it from there on
    (``HELD_READINGS`` readings or more, over a cadence or more past ``f``, each within
    ``EARLY_RATIO`` of the others) while the loss set new bests ``PROGRESS_AFTER`` steps or
    more after ``f``: the logits' scale settling in the first steps (an architecture's own),
    then the model learning at that level, is no growth, and explains no break that came
    later. Logits that grew over many readings and only slowed near the end do not hold."""
    series = _layer_logits(facts, f)
    before, best = f.evidence.get(PREVIOUS_READING), _best_before_trouble(facts)
    if series is None or best is None or best - f.step < PROGRESS_AFTER:
        return None
    steps, values = series
    end = facts.broke_at if facts.broke_at is not None else math.inf
    span = (steps >= steps[min(1, len(steps) - 1)]) & (steps < end)
    level = values[span]
    if len(level) < HELD_READINGS or not np.isfinite(level).all() or level.min() <= 0:
        return None
    cadence = f.step - before if isinstance(before, int) and before < f.step else 1
    if steps[span][-1] - f.step < cadence:
        return None
    if level.max() > AttentionLogitGrowth.EARLY_RATIO * level.min():
        return None
    return int(steps[span][-1])


def _stopped_short(facts: RunFacts, f: Finding) -> bool:
    """Whether the layer of an early warning ``f`` kept its largest logit under the
    detector's threshold to the end, with its last reading, a cadence or more after ``f``,
    under ``EARLY_RATIO`` times the reading a cadence before it."""
    series = _layer_logits(facts, f)
    before, threshold = f.evidence.get(PREVIOUS_READING), f.evidence.get("threshold")
    if series is None or not isinstance(before, int) or not threshold or before >= f.step:
        return False
    cadence = f.step - before
    steps, values = series
    after = (steps > f.step) & np.isfinite(values)
    if not after.any() or values[after].max() >= threshold or steps[-1] < f.step + cadence:
        return False
    earlier = values[(steps <= steps[-1] - cadence) & np.isfinite(values)]
    return bool(len(earlier)) and values[-1] < AttentionLogitGrowth.EARLY_RATIO * earlier[-1]
