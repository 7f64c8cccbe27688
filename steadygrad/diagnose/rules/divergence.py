"""Loss divergence: a loss that left its best level and kept climbing, and what stepped it up
(``loss_divergence``).
"""

from __future__ import annotations

import math

import numpy as np

from steadygrad.core import Severity
from steadygrad.core.metrics import (
    GRAD_NORM,
    INPUT_RESIZED,
    LOSS,
    OBJECTIVE_CHANGED,
    OBJECTIVE_RAMP,
)
from steadygrad.diagnose.detectors.stages import LEVEL_BEFORE, STAGE_BEFORE, STEPPED_UP
from steadygrad.diagnose.detectors.training import GRAD_NORM_SPIKE, LOSS_SPIKE, NEW_STAGE
from steadygrad.diagnose.detectors.transformer import GRADIENT_SPIKE
from steadygrad.diagnose.detectors.trends import LOSS_DIVERGENCE
from steadygrad.diagnose.rules.base import Found, _running_medians
from steadygrad.diagnose.rules.facts import (
    CONFIRMED_SOON,
    ENDED_OVER,
    ORDINARY,
    RunFacts,
    _burst_before,
    _ended_below,
    _raised_before,
    _replaced_just_before,
)
from steadygrad.diagnose.rules.rates import (
    _burst_said,
    _jolted_by_a_restart,
    _passed_just_before,
    _restarted_before,
)
from steadygrad.diagnose.rules.weights import (
    _multiplied_every_step,
    _multiplied_said,
    _overstepped_before,
    _pushed_outward,
    _pushed_said,
    _ran_away,
)


def _loss_divergence(facts: RunFacts) -> Found | None:
    found = facts.of(LOSS_DIVERGENCE)
    if not found:
        return _climbed_as_the_weights_grew(facts)
    worst = max(found, key=lambda f: Severity.rank(f.severity))
    # an episode the loss came back from and then bettered is over: the climb that counts is
    # the one from the best level the worst finding climbed from
    since = worst.evidence.get("best_level_step")
    later = [f for f in found if isinstance(since, int) and f.step > since]
    first = later[0] if later and found[0].step < since else found[0]
    ev = dict(first.evidence)
    summary = (
        f"the loss climbed away from its best sustained level {ev.get('best_level', math.nan):.4g}"
        f" (step {ev.get('best_level_step')}) from step {first.step}"
    )
    if worst.severity == "critical":
        summary += f", to {worst.evidence.get('ratio', math.nan):.3g}x it by step {worst.step}"
    found = Found(summary, first.step, [], ev, worst.severity)
    if ev.get(OBJECTIVE_RAMP) and worst.severity == "info":
        ramp = ev[OBJECTIVE_RAMP]
        said = f" ({ramp})" if isinstance(ramp, str) else ""
        found.summary += (
            f"; the loop said its objective was ramping then{said}: a climb by design, not a "
            "divergence"
        )
        return found
    replaced = _replaced_just_before(facts, first.step)
    if (burst := _burst_before(facts, first.step)) is not None:
        found.consequence_of = (
            f"{_burst_said(burst)}: the loss climbed from where those steps threw the weights"
        )
    elif replaced is not None:  # the climb is the jump the swapped weights made
        found.consequence_of = (
            f"the weights were replaced between steps at step {replaced} (an EMA swap, a "
            "checkpoint reload), and the loss climbed from there"
        )
    elif (restarted := _jolted_by_a_restart(facts, first.step)) is not None:
        found.consequence_of = (
            f"the optimizer's state started again from nothing at step {restarted}: its first "
            "steps threw the weights, and the loss climbed from there"
        )
    elif passed := _passed_just_before(facts, first.step):
        found.consequence_of = f"{passed}: the climb was that raise's jolt"
    elif (thrown := _thrown_just_before(facts, first.step)) is not None:
        step, moved = thrown
        found.consequence_of = (
            f"the update before step {step} moved the weights {moved:.3g}x their usual step on "
            "an ordinary gradient (a learning-rate glitch, optimizer state lost): the loss "
            "climbed from where the optimizer threw them"
        )
    elif (multiplied := _multiplied_every_step(facts)) is not None:
        # weights grown by one factor a step, the gradient aside: the climb is theirs, however
        # it looks (a step up, a climb it comes back from as the model refits)
        found.summary += f"; {_multiplied_said(multiplied)}"
        found.evidence["weights_multiplied"] = multiplied
    elif (shift := _stepped_up_by_the_data(facts, first.step)) is not None and (
        worst.severity != "critical" or shift[3] <= FELL_FROM_STAGE
    ):
        step, jump, ended, _ = shift
        found.severity = "info"
        found.summary += (
            f"; the loss stepped up {jump:.3g}x at once at step {step}, after an ordinary "
            f"update, and has not climbed since (it ended at {ended:.4g}): what the model is "
            "asked to fit changed there (a curriculum's next stage, a new data source), not a "
            "divergence"
        )
    elif (ended := _ended_below(facts, ev.get("best_level"))) is not None:
        # a climb the run came all the way back from on its own: a transient (a catapult, a
        # critic's targets growing with its values), not a run that diverged
        found.severity = "info"
        found.summary += (
            f"; the run came back below that level on its own, to {ended:.4g} over its last "
            f"{ENDED_OVER} steps: a transient, not a divergence"
        )
    elif (runaway := facts.runaway_weights) is not None and runaway[1] < first.step:
        said, found.evidence["runaway_weights"] = _ran_away(runaway, "the climb")
        found.summary += f"; before it, {said}"
    elif (pushed := _pushed_outward(facts)) is not None:
        found.summary += f"; {_pushed_said(pushed)}"
        found.evidence["pushed_stride"] = pushed
    return found


# A loss that ended this many times its best sustained level, its weights multiplied by one
# factor a step, is off its floor and climbing on (of the kept runs, 119 whose weights were so
# multiplied were decays of the wrong sign, 4 other faults, no healthy run: the multiplication
# is the fault; the loss only has to have left its best). The same holds of weights pushed
# outward at an Adam-type step's stride (see PUSHED_STRIDE), whose norm grows by a step, not a
# factor.
STEADY_CLIMB = 1.25


def _climbed_as_the_weights_grew(facts: RunFacts) -> Found | None:
    """No climb found, but the loss ended ``STEADY_CLIMB`` times its best sustained level (its
    lowest running median of ``ENDED_OVER``) or more, every loss finite, while the weights were
    multiplied every step (:func:`_multiplied_every_step`) or pushed outward step after step
    (:func:`_pushed_outward`): a slow climb the loss-spike and divergence detectors, following
    their baselines up, did not call, with its cause in the weights."""
    loss = facts.series(LOSS.name)
    if loss is None or not np.isfinite(loss[1]).all():
        return None
    steps, values = loss
    since = steps >= _stage_began(facts)  # a best level of an earlier objective is not this one's
    steps, values = steps[since], values[since]
    if len(values) < 3 * ENDED_OVER:
        return None
    medians = _running_medians(values, ENDED_OVER)
    best = int(np.argmin(medians))
    ended = float(medians[-1])
    if not medians[best] > 0 or ended < STEADY_CLIMB * medians[best]:
        return None
    if (multiplied := _multiplied_every_step(facts)) is not None:
        said, evidence = _multiplied_said(multiplied), {"weights_multiplied": multiplied}
    elif (pushed := _pushed_outward(facts, all_along=True)) is not None:
        said, evidence = _pushed_said(pushed, all_along=True), {"pushed_stride": pushed}
    else:
        return None
    began = int(steps[best + ENDED_OVER - 1])
    return Found(
        f"the loss climbed from its best sustained level {medians[best]:.4g} (step {began}) to "
        f"{ended:.4g} over its last {ENDED_OVER} steps; {said}",
        began,
        [],
        {"best_level": float(medians[best]), "ended": ended, **evidence},
        "warning",
    )


def _stage_began(facts: RunFacts) -> int:
    """The step the loss's current stage began: the last step up read as a new stage of the
    data (a loss spike with ``NEW_STAGE``), a new objective the loop announced (where a ramp
    it said ended), or a batch whose new shape held (the monitor's ``input_resized``); 0 if
    none."""
    staged = [f.step for f in facts.of(LOSS_SPIKE) if f.evidence.get(NEW_STAGE)]
    said = [
        a.step + int(a.detail.get("over", 0))
        for a in facts.run.actions()
        if a.kind in (OBJECTIVE_CHANGED, INPUT_RESIZED)
    ]
    return max(staged + said, default=0)


# Steps before a climb was found within which the loss may have stepped up to its new level (by
# STEPPED_UP times the median of the STAGE_BEFORE losses before it, as StageWatch reads it live).
STEP_UP_WITHIN = 15
# A step that large (a critical climb), or a gradient that stepped up with it, is the data's
# only when the loss then fell to this share of the new level's first ten losses: learnt.
FELL_FROM_STAGE = 0.5


def _stepped_up_by_the_data(facts: RunFacts, step: int) -> tuple[int, float, float, float] | None:
    """The loss stood ``STEPPED_UP`` times the median of the ``STAGE_BEFORE`` losses before it at
    one step (``STEP_UP_WITHIN`` or fewer before ``step``), the loss just before that still at
    that median's level (under ``LEVEL_BEFORE`` times it): a step up made by the batches, not
    by the updates, since the update before it was ordinary (no gradient spike, no step that
    threw the weights, no raised rate, no restart, no gradient ``ORDINARY`` times its usual
    size); and the loss did not climb on from there (the median of its last ``ENDED_OVER``
    finite losses, before any NaN, at most that of its first ten at the new level). (the step,
    how far, where the loss ended, that over the new level's first ten); None otherwise. An
    update that wrecks the weights leaves its mark before the loss it makes, a harder stage of
    the data none."""
    loss = facts.series(LOSS.name)
    if loss is None:
        return None
    # read up to the first non-finite loss: a stage of the data is judged by what came before
    finite = np.isfinite(loss[1])
    end = len(finite) if finite.all() else int(np.argmin(finite))
    steps, values = loss[0][:end], loss[1][:end]
    spiked = {f.step for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE) if f.severity != "info"}
    for i in np.flatnonzero((steps >= step - STEP_UP_WITHIN) & (steps <= step)):
        if i < STAGE_BEFORE or len(values) - i < 2 * ENDED_OVER:
            continue
        level = float(np.median(values[i - STAGE_BEFORE : i]))
        at = int(steps[i])
        stepped = values[i] >= STEPPED_UP * level and values[i - 1] < LEVEL_BEFORE * level
        if not (level > 0 and stepped):
            continue
        if spiked & set(range(at - 3, at)) or _overstepped_before(facts, at) is not None:
            return None
        if _gradient_stood_out(facts, at):
            return None
        if _raised_before(facts, at) is not None or _restarted_before(facts, at) is not None:
            return None
        ended, stage = float(np.median(values[-ENDED_OVER:])), float(np.median(values[i : i + 10]))
        if ended > stage:
            return None
        return at, float(values[i] / level), ended, ended / stage
    return None


def _gradient_stood_out(facts: RunFacts, step: int, before: int = 20) -> bool:
    """Whether the gradient norm of one of the 3 records before ``step`` stood ``ORDINARY``
    times the median of the ``before`` records before them or more (a spike too small for the
    spike test on a noisy norm, whose update still threw the weights)."""
    grads = facts.series(GRAD_NORM.name)
    if grads is None:
        return False
    steps, values = grads
    usual = values[(steps < step - 3) & (steps >= step - 3 - before) & np.isfinite(values)]
    near = values[(steps >= step - 3) & (steps < step)]
    return len(usual) >= before // 2 and bool(np.any(near >= ORDINARY * np.median(usual)))


def _thrown_just_before(facts: RunFacts, step: int) -> tuple[int, float] | None:
    """The loss spike ``CONFIRMED_SOON`` steps or fewer before ``step`` (or at it) that met
    weights the optimizer had thrown (see :func:`_overstepped_before`), and how far, if any."""
    for spike in facts.of(LOSS_SPIKE):
        if step - CONFIRMED_SOON <= spike.step <= step:
            moved = _overstepped_before(facts, spike.step)
            if moved is not None:
                return spike.step, moved
    return None
