"""The output logits: a log-partition that drifts (``output_logit_divergence``) and a softmax that
collapses (``softmax_collapse``), and what set them off.
"""

from __future__ import annotations

import math

import numpy as np

from steadygrad.core import Finding, FindingKind
from steadygrad.core.metrics import (
    ACT_RMS,
    INPUT_RMS,
    LOGIT_LSE_MEAN,
    LOSS,
    OUTPUT_LOGIT_MAX,
    OUTPUT_SCALE,
    OUTPUT_SHIFT_GRADIENT,
    OUTPUT_TARGETS_OUTSIDE,
    PARAM_NORM,
    SOFTMAX_COLLAPSE,
)
from steadygrad.diagnose.detectors.base import PREVIOUS_READING
from steadygrad.diagnose.detectors.transformer import (
    COLLAPSED_SHARE,
    FITTED_AT,
    LOSS_OF_PLASTICITY,
    OUTPUT_LOGIT_DIVERGENCE,
    SOFTMAX_COLLAPSE_KIND,
    UPDATE_RATIO_OUT_OF_RANGE,
)
from steadygrad.diagnose.detectors.trends import LOSS_DIVERGENCE
from steadygrad.diagnose.rules.amplification import _exploded_from_the_start
from steadygrad.diagnose.rules.base import Found, _inside
from steadygrad.diagnose.rules.facts import (
    CONFIRMED_SOON,
    ENDED_OVER,
    RUNAWAY_GROWTH,
    THROWN_WITHIN,
    RunFacts,
    _before_explosion,
    _burst_before,
    _pushes,
)
from steadygrad.diagnose.rules.nonfinite import SCALE_SEARCH_STEPS
from steadygrad.diagnose.rules.rates import (
    _burst_said,
    _logits_driven_by_the_head_rate,
    _rates_set_apart,
)
from steadygrad.diagnose.rules.rule import _located
from steadygrad.diagnose.rules.series import (
    FIXED_TEMPERATURE,
    ONE_OFF,
    _grew_in_quarters,
    _quarter_medians,
    _skipped_steps,
    _spikes_between,
    _too_large,
)
from steadygrad.diagnose.rules.weights import (
    _amplifier,
    _doubled_at,
    _grown_everywhere,
    _weight_growth,
)


def _scaled_head(facts: RunFacts, found: Found | None) -> Found | None:
    """``found`` with the output layer named after a parameter it names that scales the
    logits no module produced (CLIP's ``logit_scale`` times a cosine head's output): the
    scale is where the logits' size is set, the layer is where they are made."""
    layer = facts.output_layer
    if found is None or layer is None or layer in found.where:
        return found
    if any(PARAM_NORM.key(w) in facts.names for w in found.where):
        found.where = found.where + [layer]
    return found


def _softmax_collapse(facts: RunFacts) -> Found | None:
    """Collapsed rows, found on a streak of readings, dated from the first of an unbroken run of
    readings with rows collapsed that led into it: logits inflated at initialisation (a
    temperature applied the wrong way) collapse rows from the first step, a few at first, and
    the log-partition drift they make is then the collapse's, not a cause of its own."""
    found = _scaled_head(facts, _located((SOFTMAX_COLLAPSE_KIND,), "softmax collapse")(facts))
    series = facts.series(SOFTMAX_COLLAPSE.name)
    if found is None or series is None or found.first_step is None:
        return found
    steps, values = series
    clear = steps[(steps <= found.first_step) & ~(values > 0)]  # readings with none collapsed
    since = steps[steps > clear.max()] if len(clear) else steps
    if len(since) and since[0] < found.first_step:
        found.evidence["rows_collapsed_since"] = int(since[0])
        found.first_step = int(since[0])
        found.summary += f" (rows collapsed at every reading since step {since[0]})"
    scaled = _scaled_from_the_start(facts, steps, found.first_step)
    if scaled is not None:
        began, scale = scaled
        found.evidence["scaled_from"] = began
        found.first_step = began
        found.summary += (
            f"; the logits are their layer's output times {scale:.3g}, a fixed number from "
            f"step {began} (a temperature applied the wrong way): rows collapsed from the "
            "first reading with it"
        )
        return found
    spike = _thrown_by_a_spike(facts, found.first_step, clear.max() if len(clear) else None)
    burst = _burst_before(facts, found.first_step)
    climb = (
        _transient_around(facts, found.first_step, int(clear.max()), SOFTMAX_COLLAPSE_KIND)
        if len(clear)
        else None
    )
    if climb is not None:
        found.consequence_of = (
            f"no row had collapsed at step {int(clear.max())}, before the climb of step {climb}, "
            "which the run came all the way back from, and rows collapsed from the reading "
            "after: the climb threw the logits"
        )
    elif spike is not None:
        found.consequence_of = (
            f"no row had collapsed until the gradient spike at step {spike}, and rows "
            f"collapsed from the step after: its update threw the logits"
        )
    elif burst is not None and len(clear) and clear.max() <= burst[0] < found.first_step:
        found.consequence_of = (
            f"no row had collapsed until {_burst_said(burst)}, and rows collapsed from step "
            f"{found.first_step}: the burst's updates threw the logits"
        )
    driven = _logits_driven_by_the_head_rate(facts)
    head = driven.where[0] if driven is not None else None
    if head and not found.consequence_of and any(_inside(w, head) for w in found.where):
        found.consequence_of = (
            f"{head} trains {driven.evidence['rate_times']:.3g}x faster than the rest "
            "of the model and its logits grew with that rate: rows collapse as they grow"
        )
    amplified = _amplified_into_the_head(facts, clear)
    if not found.consequence_of and amplified is not None:
        found.consequence_of = (
            f"{amplified.summary}: the head's inputs were as large, so were its logits, and "
            "rows collapsed from the first reading"
        )
    fell = _fell_without_bound(facts) if not found.consequence_of else None
    if fell is not None and fell.first_step <= found.first_step:
        found.consequence_of = (
            f"the loss fell below zero without bound from step {fell.first_step}, the output "
            "layer growing to lower it: rows collapse as its logits grow"
        )
    cut_off = _cut_off_from_its_input(facts, found.first_step) if not found.consequence_of else None
    if cut_off is not None:
        found.consequence_of = (
            f"{cut_off.evidence.get('dead_units', math.nan):.0%} of {cut_off.where}'s units "
            f"were dead by step {cut_off.step} and the loss never went below where it began: "
            "the head's output no longer depends on its input, and the rows that round to "
            "one-hot are those of the class its one answer names"
        )
    pushed, _ = _pushes(facts)
    if not found.consequence_of and len(pushed) and pushed[0] <= found.first_step:
        # no loss of the softmax alone moves the logits' common shift: a term that does (a
        # z-loss of the wrong sign, nll_loss on raw scores) grows the logits the rows round on
        found.consequence_of = (
            f"the loss's own gradient pushed every logit up from step {pushed[0]}, a push no "
            "loss of the softmax alone makes: the logits it grew spread until rows rounded"
        )
    fitted = found.evidence.get("first", {}).get(FITTED_AT)
    if fitted is not None and found.severity == "info":
        found.summary += (
            f"; on a fit: the loss then stood at {fitted:.2g} of its first value, and "
            "cross-entropy drives the rows of a model that fits its data ever surer (if a "
            "held-out loss stalls meanwhile, this is the float32 stall of grokking: StableMax "
            "or ⊥Grad)"
        )
    receded = _collapse_receded(facts, steps, values, found.first_step)
    if receded is not None:
        found.severity = "info"
        found.evidence["receded_from"] = receded
        found.summary += (
            f"; it receded from step {receded} to the end with the logits no longer growing: "
            "a fit that stopped pushing its margins, not a stall"
        )
    return found


# A loss whose median stands at this share of its first value or above has learnt nothing (a
# first loss is often a little above chance, ln(classes), which a constant answer reaches).
UNLEARNT = 0.9


def _cut_off_from_its_input(facts: RunFacts, began: int) -> Finding | None:
    """The first dead-units warning at or before ``began`` (a collapse found then), when the
    loss from ``began`` on stood at ``UNLEARNT`` of its first value or above (the median of what
    followed): a model whose units died answers one thing whatever it is shown, and that
    answer, pushed to one-hot by the same steps that killed them, collapses the rows of its
    class. A softmax collapse proper comes of a fit (rows right and ever more confident): the
    loss falls."""
    dead = [
        f
        for f in facts.of(LOSS_OF_PLASTICITY)
        if f.severity != "info" and f.where and f.step <= began and "dead_units" in f.evidence
    ]
    loss = facts.series(LOSS.name)
    if not dead or loss is None or not len(loss[1]) or not np.isfinite(loss[1][0]):
        return None
    after = loss[1][(loss[0] >= began) & np.isfinite(loss[1])]
    return dead[0] if len(after) and np.median(after) >= UNLEARNT * loss[1][0] else None


def _amplified_into_the_head(facts: RunFacts, clear: np.ndarray) -> Found | None:
    """The signal amplified from the first step (:func:`_exploded_from_the_start`; through
    time only where the recurrent state itself grew large), when no collapse reading before the
    collapse found was clear of collapsed rows: the rows collapsed on logits that were large
    from the start, made by the layers before the head."""
    if len(clear):
        return None
    born = _exploded_from_the_start(facts)
    if born is None or born.first_step is None:
        return None
    through_time = [w for w in born.where if any(_inside(w, m) for m in facts.recurrent_modules)]
    if through_time and not all(_state_amplified(facts, w, born.first_step) for w in through_time):
        return None  # a bounded state (tanh, an LSTM's gates) hands the head no large inputs
    return born


# A recurrent module's output at the first step this many times the RMS of the model's input:
# a state the recurrence amplified (a ReLU recurrence with a gain above 1), not one a bounded
# activation holds within +-1.
STATE_AMPLIFIED = 10.0


def _state_amplified(facts: RunFacts, module: str, step: int) -> bool:
    """Whether the recurrent ``module``'s output RMS at ``step`` stood ``STATE_AMPLIFIED``
    times the model input's RMS or more."""
    inputs, state = facts.series(INPUT_RMS.name), facts.series(ACT_RMS.key(module))
    if inputs is None or state is None:
        return False
    scale, act = inputs[1][inputs[0] == step], state[1][state[0] == step]
    return bool(len(scale) and len(act) and scale[0] > 0 and act[0] >= STATE_AMPLIFIED * scale[0])


def _scaled_from_the_start(
    facts: RunFacts, steps: np.ndarray, began: int
) -> tuple[int, float] | None:
    """The first reading of the logits' scale (``output_scale``) at ``FIXED_TEMPERATURE`` or
    more, and that scale, when it held within 1% of it at every reading up to ``began`` (a
    collapse found then), and no collapse reading (``steps``) fell between the two; and it was
    there from the first reading, or came at a stroke (:func:`_scaled_at_a_stroke`). The
    collapse began with the number, not where the cadence first read it."""
    scales = facts.series(OUTPUT_SCALE.name)
    if scales is None or not len(scales[0]):
        return None
    if scales[1][0] >= FIXED_TEMPERATURE:
        first, scale = int(scales[0][0]), float(scales[1][0])
    elif (stroke := _scaled_at_a_stroke(facts, began)) is not None:
        _, first, scale = stroke
    else:
        return None
    held = scales[1][(scales[0] >= first) & (scales[0] <= began)]
    if not first <= began or not (np.abs(held - scale) <= 0.01 * scale).all():
        return None
    between = steps[(steps > first) & (steps < began)]
    return (first, scale) if not len(between) else None


def _scaled_at_a_stroke(facts: RunFacts, began: int) -> tuple[int, int, float] | None:
    """A number multiplying the logits that came at a stroke, by ``began``: the logits' scale
    read under ``FIXED_TEMPERATURE`` and under half what it read next, ``FIXED_TEMPERATURE`` or
    more, and held within 1% at every reading since up to ``began`` (a temperature read from a
    config in the wrong unit mid-run; a learnt scale grows, and a schedule's anneals, reading
    by reading). The last reading without it, the first with it, and the number."""
    scales = facts.series(OUTPUT_SCALE.name)
    if scales is None:
        return None
    steps, values = scales
    for i in range(1, len(steps)):
        if steps[i] > began:
            break
        before, scale = values[i - 1], values[i]
        if before < FIXED_TEMPERATURE <= scale and before < scale / 2:
            held = values[i : np.searchsorted(steps, began, side="right")]
            if (np.abs(held - scale) <= 0.01 * scale).all():
                return int(steps[i - 1]), int(steps[i]), float(scale)
    return None


# Readings at the end of a run that must all be under the detector's fraction for a collapse
# to count as over: the detector's own patience.
RECEDED_READINGS = 3


def _collapse_receded(
    facts: RunFacts, steps: np.ndarray, values: np.ndarray, began: int
) -> int | None:
    """The step from which a collapse stayed under its detector's fraction to the end of a run
    that did not break, when its last ``RECEDED_READINGS`` readings were all under it and the
    log-partition ended no higher than where the collapse began. Collapse stalls a run by
    growing its logits without end (naive loss minimisation); a confident fit after a rate
    drop, or a fixed token every caption shares, collapses rows for a while and lets go."""
    bar = _collapse_bar(facts)
    after = steps > began
    tail = values[after][-RECEDED_READINGS:]
    if facts.broke_at is not None or len(tail) < RECEDED_READINGS or not (tail < bar).all():
        return None
    lse = facts.series(LOGIT_LSE_MEAN.name)
    if lse is not None:
        at = lse[1][(lse[0] <= began) & np.isfinite(lse[1])]
        if not len(at) or not np.isfinite(lse[1][-1]) or lse[1][-1] > at[-1]:
            return None
    above = steps[after & (values >= bar)]
    return int(steps[steps > above.max()][0]) if len(above) else int(steps[after][0])


def _collapse_bar(facts: RunFacts) -> float:
    """The share of rows collapsed at which the run's collapse detector fired."""
    found = facts.of(SOFTMAX_COLLAPSE_KIND)
    return found[0].evidence.get("fraction", COLLAPSED_SHARE) if found else COLLAPSED_SHARE


def _transient_around(
    facts: RunFacts,
    step: int,
    clear: int | None = None,
    kind: FindingKind = OUTPUT_LOGIT_DIVERGENCE,
) -> int | None:
    """The step of a critical climb of the loss within ``THROWN_WITHIN`` steps of ``step``, or
    after ``clear`` (the reading before, where nothing was found) and by ``step``, that the run
    came all the way back from (see :meth:`RunFacts.came_back_from`), when every warning of
    ``kind`` came within ``CONFIRMED_SOON`` steps of it: what was read during a transient is
    the transient's."""
    climbs = [
        f.step
        for f in facts.of(LOSS_DIVERGENCE)
        if f.severity == "critical"
        and (abs(f.step - step) <= THROWN_WITHIN or (clear is not None and clear < f.step <= step))
    ]
    if not climbs or not facts.came_back_from(climbs[0]):
        return None
    warned = [f.step for f in facts.of(kind) if f.severity != "info"]
    if any(abs(s - climbs[0]) > CONFIRMED_SOON for s in warned):
        return None
    return climbs[0]


def _thrown_by_a_spike(facts: RunFacts, began: int, clear: int | None) -> int | None:
    """The step of a gradient spike (not info) within ``THROWN_WITHIN`` steps before ``began``
    (where a mechanism was first read), when the reading before (``clear``: none found there)
    came before it: the spike's update made what was read next."""
    spikes = _spikes_between(facts, began - THROWN_WITHIN, began)
    if spikes and (clear is None or clear <= min(spikes)):
        return min(spikes)
    return None


# The climb of the logits, per step, from their last reading before a spike to the finding,
# at least this many times its pace over the readings before: it quickened at the spike.
QUICKENED = 5.0


def _quickened_by_a_spike(facts: RunFacts, began: int) -> tuple[int, int] | None:
    """(the spike, the logits' last reading before it) when a gradient spike (not info) came
    within :meth:`RunFacts.spike_carried` steps before the output-logit finding at ``began``,
    and the log-partition climbed from its last reading before the spike to the finding's
    ``QUICKENED`` times faster per step than over the two readings before that: an optimizer
    with momentum goes on moving the weights along a spike's gradient for steps after it, and
    a climb that quickened just then is that spike's throw, not the drift that was going on."""
    lse = facts.series(LOGIT_LSE_MEAN.name)
    spikes = _spikes_between(facts, began - facts.spike_carried, began)
    if lse is None or not spikes:
        return None
    finite = np.isfinite(lse[1])
    steps, values = lse[0][finite], lse[1][finite]
    spike = min(spikes)
    before, at = np.flatnonzero(steps <= spike), np.flatnonzero(steps == began)
    if len(before) < 2 or not len(at):
        return None
    (s0, s1), (v0, v1) = steps[before[-2:]], values[before[-2:]]
    pace = max((v1 - v0) / (s1 - s0), 0.0)
    climb = (values[at[0]] - v1) / (began - s1)
    if not climb > 0 or climb < QUICKENED * pace:
        return None
    return spike, int(s1)


def _risen_at_a_spike(facts: RunFacts, began: int, before: int) -> tuple[int, int] | None:
    """(the spike, the logits' last reading before it) when the reading before the output-logit
    finding at ``began`` (``before``) was the first after a gradient spike (not info) within
    ``THROWN_WITHIN`` steps before ``began``, and the log-partition stood there half or more of
    the way up from its reading before the spike to the finding's: read just after the spike's
    update, under the detector's bar but already up, the logits had been thrown by it."""
    lse = facts.series(LOGIT_LSE_MEAN.name)
    spikes = _spikes_between(facts, began - THROWN_WITHIN, before)
    if lse is None or not spikes:
        return None
    steps, values = lse
    spike = min(spikes)
    earlier = np.flatnonzero((steps <= spike) & np.isfinite(values))
    after = np.flatnonzero((steps > spike) & (steps <= before))
    at_found = values[steps == began]
    if not len(earlier) or len(after) != 1 or steps[after[0]] != before or not len(at_found):
        return None  # not the first reading after the spike, or nothing read before it
    low, mid, high = values[earlier[-1]], values[after[0]], at_found[0]
    if not (high > low and mid - low >= 0.5 * (high - low)):
        return None
    return spike, int(steps[earlier[-1]])


# The largest logit, from a drift's first finding to the end, within this share of its median:
# held at a level, not drifting on (a logit drifting for good grows by multiples of itself).
PINNED = 0.5


def _pinned_by_a_collapse(facts: RunFacts, began: int) -> str | None:
    """Why a drift found at ``began`` is a softmax collapse's, when the logits rose to a level
    they then held to the end of a run that did not break (the largest within ``PINNED`` of its
    median at every reading from ``began``) while rows stayed collapsed: logits bounded by
    construction (a cosine head times its scale, a clamped temperature) that reached their
    bound, saturating the softmax. A divergence has no bound; the collapse is the harm here."""
    series = facts.series(OUTPUT_LOGIT_MAX.name)
    collapse = [f for f in facts.of(SOFTMAX_COLLAPSE_KIND) if f.severity != "info"]
    if series is None or not collapse or facts.broke_at is not None:
        return None
    steps, values = series
    held = values[steps >= began]
    if len(held) < 2 * RECEDED_READINGS or not np.isfinite(held).all():
        return None
    level = float(np.median(held))
    if not level > 0 or (held.max() - held.min()) > PINNED * level:
        return None
    shares = facts.series(SOFTMAX_COLLAPSE.name)
    if shares is None or not (shares[1][-RECEDED_READINGS:] >= _collapse_bar(facts)).any():
        return None  # the collapse receded: it does not explain logits held to the end
    return (
        f"the logits rose to a level they held to the end (the largest within "
        f"{(held.max() - held.min()) / level:.0%} of {level:.3g} from step {began}) while rows "
        f"stayed collapsed (softmax collapse from step {collapse[0].step}): logits at their "
        "bound, saturating the softmax, not drifting without end"
    )


# A number the logits are multiplied by after their layer, grown this many times since its first
# reading: a temperature annealed (or a scale ramped) by a schedule set outside the model.
SCALED = 4.0


def _grown_by_a_fixed_scale(facts: RunFacts, began: int) -> str | None:
    """Why a drift found at ``began`` is a softmax collapse's, when the logits are their
    layer's output times a plain number (``output_scale``: ``logits / T``) that had grown
    ``SCALED`` times or more by then, as much as the largest logit had at least in log terms
    (half of it or more), while rows collapsed: the number (a temperature annealed too fast)
    made them large, and the harm a temperature does is the collapse."""
    scales, logits = facts.series(OUTPUT_SCALE.name), facts.series(OUTPUT_LOGIT_MAX.name)
    collapse = [f for f in facts.of(SOFTMAX_COLLAPSE_KIND) if f.severity != "info"]
    if scales is None or logits is None or not collapse:
        return None
    upto, grew = scales[0] <= began, logits[0] <= began
    if not upto.any() or not grew.any():
        return None
    first, then = float(scales[1][0]), float(scales[1][upto][-1])
    held = scales[1][upto]
    if (
        first >= FIXED_TEMPERATURE
        and (np.abs(held - first) <= 0.01 * first).all()
        and _out_of_range_at_once(facts)
    ):
        # the number was as large from the first reading on, and the logits were never in
        # range: they were born that large, no drift made them
        return (
            f"the logits are their layer's output times a plain number, {first:.3g} from the "
            f"first reading (a temperature applied the wrong way: logits / T with T typed as "
            f"1/T): they were that large from the start, and rows collapsed (softmax collapse "
            f"from step {collapse[0].step}): the temperature is the fault"
        )
    start, top = float(logits[1][0]), float(logits[1][grew][-1])
    if not (first > 0 and then >= SCALED * first and start > 0 and top > start):
        return None
    if math.log(then / first) < 0.5 * math.log(top / start):
        return None  # the layer's own output grew more than the number: its own drift
    return (
        f"the logits are their layer's output times a plain number, {first:.3g} at first and "
        f"{then:.3g} by step {began} (a temperature annealed by a schedule outside the model: "
        f"logits / T): they grew by it, and rows collapsed (softmax collapse from step "
        f"{collapse[0].step}): the temperature is the fault"
    )


def _out_of_range_at_once(facts: RunFacts) -> bool:
    """Whether the log-partition's first reading already stood past the limit the drift
    detector judged it by (its first finding's ``lse_limit``)."""
    drifts, lse = facts.of(OUTPUT_LOGIT_DIVERGENCE), facts.series(LOGIT_LSE_MEAN.name)
    limit = drifts[0].evidence.get("lse_limit") if drifts else None
    if not isinstance(limit, int | float) or lse is None or not len(lse[1]):
        return False
    return bool(abs(lse[1][0]) > limit)


def _output_logits(facts: RunFacts) -> Found | None:
    """Output-logit divergence, unless every weight had grown by then (the logits then grow
    because the weights do). The output layer's weights running away (a decay or penalty of
    the wrong sign on the head) is one too, from when they began, logits read or not: the
    logits are those weights times features that held still; in a run whose outputs were never
    read as logits, only beside a finding of the detector."""
    found = _scaled_head(
        facts, _located((OUTPUT_LOGIT_DIVERGENCE,), "output-logit divergence")(facts)
    )
    # no finding and no logits ever read (no cross-entropy, nll_loss or log_softmax): a
    # regressor's head, whose weights grow with whatever drives the loss, makes no logits
    logits = found is not None or facts.series(LOGIT_LSE_MEAN.name) is not None
    head = _output_layer_ran_away(facts) if logits else None
    if head is not None:
        layer, began, factor = head
        ran_away = (
            f"the weights of the output layer {layer} grew {factor:.3g}x from step {began}, far "
            "more than any other, while the loss set no new best: the logits grow with them "
            "(look for a decay or penalty of the wrong sign on the head)"
        )
        evidence = {"runaway_weights": {"module": layer, "began": began, "factor": factor}}
        if found is None:
            found = Found(ran_away, began, [layer], evidence, "warning")
        elif found.first_step is None or began < found.first_step:
            found.first_step = began
            found.where = [layer] + [w for w in found.where if w != layer]
            found.summary += f"; {ran_away}"
            found.evidence.update(evidence)
        if _fell_without_bound(facts) is not None:
            found.evidence[UNBOUNDED] = True  # a loss with no minimum drove them
        skipped = _overflowing_from_the_start(facts, began)
        if skipped is not None:
            found.consequence_of = (
                f"the GradScaler skipped every one of the {skipped} steps before the weights "
                "grew (more than its search for a scale: the gradients overflow float16 "
                "unscaled), and the few steps it took after threw them"
            )
        return found
    if found is None:
        return (
            _logits_driven_by_the_head_rate(facts)
            or _fell_without_bound(facts)
            or _grew_on_a_fit(facts)
        )
    if found.first_step is None:
        return found
    first = found.evidence.get("first")
    clear = first.get(PREVIOUS_READING) if isinstance(first, dict) else None
    spike = _thrown_by_a_spike(facts, found.first_step, clear if isinstance(clear, int) else None)
    if spike is None and isinstance(clear, int):
        spike, clear = (
            _risen_at_a_spike(facts, found.first_step, clear)
            or _quickened_by_a_spike(facts, found.first_step)
            or (None, clear)
        )
    if spike is not None and clear is not None:
        found.consequence_of = (
            f"the logits were in range at step {clear}, before the gradient spike at step "
            f"{spike}, and drifted from the step after: its update threw them"
        )
        return found
    burst = _burst_before(facts, found.first_step)
    if burst is not None and clear is not None and clear <= burst[0] < found.first_step:
        found.consequence_of = (
            f"the logits were in range at step {clear}, before {_burst_said(burst)}, and "
            f"drifted from step {found.first_step}: the burst's updates threw them"
        )
        return found
    # what a climb between two readings threw, unless one group's own rate may have made the
    # climb through the very logits read (a head trained far faster than the rest)
    before = clear if isinstance(clear, int) and not _rates_set_apart(facts) else None
    climb = _transient_around(facts, found.first_step, before)
    if climb is not None and clear is not None:
        found.consequence_of = (
            f"the logits were in range at step {clear} and drifted only during the climb of "
            f"step {climb}, which the run came all the way back from: the climb threw them"
        )
        return found
    pinned = _pinned_by_a_collapse(facts, found.first_step)
    tempered = _grown_by_a_fixed_scale(facts, found.first_step)
    if pinned is not None or tempered is not None:
        found.consequence_of = pinned or tempered
        return found
    steps, _ = _pushes(facts)
    if len(steps) and steps[0] <= found.first_step:
        # the loss raises the logits itself, from its first such reading on (their drift
        # confirms it later): the weights grew to serve it, not the other way round
        began, push = int(steps[0]), _logits_pushed_up(facts, found.first_step)
        found.summary += (
            f"; the loss's own gradient pushes every logit up from step {began} ({push:.2g} "
            "of it along their common shift, which no loss of the softmax alone moves): a "
            "term rewards larger logits (a z-loss or logit penalty of the wrong sign, or "
            "nll_loss given raw scores with no log_softmax before it)"
        )
        found.evidence[OUTPUT_SHIFT_GRADIENT.name] = push
        found.evidence["pushed_from"] = began
        found.first_step = min(found.first_step, began)
        return found
    outside = facts.series(OUTPUT_TARGETS_OUTSIDE.name)
    read = np.flatnonzero(outside[1] > 0) if outside is not None else []
    if len(read):
        # targets the loss has no minimum on, from their first reading: the logits ran off
        # to serve them
        began, share = int(outside[0][read[0]]), float(outside[1][read[0]])
        found.summary += (
            f"; {share:.2%} of the loss's targets lie outside what a probability can be from "
            f"step {began} (a binary target outside [0, 1], multi-hot counts; a label smoothing "
            "typed below 0 in a cross-entropy written by hand, a class weight that lost its "
            "minus sign, a teacher's raw logits): no finite logit minimises the loss on them, "
            "and it pushes those logits on for good"
        )
        found.evidence[OUTPUT_TARGETS_OUTSIDE.name] = share
        found.evidence["targets_outside_from"] = began
        found.first_step = min(found.first_step, began)
        return found
    below = _below_zero_by(facts, found.first_step)
    if below is not None:
        # a loss below zero rewards the logits' growth itself: the weights grew to serve it
        found.summary += (
            f"; the loss went below zero from step {below}, which no cross-entropy of "
            "probabilities against targets in [0, 1] does: the targets (label smoothing "
            "typed with the wrong sign or past 1) or a term of the wrong sign reward ever "
            "larger logits"
        )
        found.evidence.update(negative_loss_from=below, **{UNBOUNDED: True})
        return found
    fell = _fell_without_bound(facts)
    if fell is not None:
        # a loss with no minimum, the output growing to lower it: every weight grew to serve it
        found.summary += f"; {fell.summary}"
        found.evidence.update(fell.evidence, fell_from=fell.first_step)
        found.first_step = min(found.first_step, fell.first_step)
        return found
    _grown_everywhere(found, facts, found.first_step, "the logits")
    rate = _output_updates_too_large(facts, found)
    if rate is not None:
        step, ratio = rate
        found.summary += (
            f"; the output layer's updates were too large for its weights from step {step} "
            f"(update ratio {ratio:.3g}): its learning rate drives the drift"
        )
        found.evidence["output_update_ratio"] = ratio
    return found


# A head's largest logit this many times its first reading, where the loss fell to FIT times
# its value before any update: logits grown far past any confidence the loss still asks for (the
# nine blind separable fits with no weight decay or label smoothing of sets 489-533 named
# otherwise before grew 33-660x to losses 6e-5 to 9e-4 of their first; none of the 147 healthy
# controls of sets 486-534 came under both bars, the nearest two ending at 1.9e-3 and 2.1e-3).
FIT_GROWTH, FIT = 20.0, 1e-3


def _grew_on_a_fit(facts: RunFacts) -> Found | None:
    """Logits growing without bound on data the model already fits, told at info: the loss
    fell to ``FIT`` times its first value (the median of its last ``ENDED_OVER`` values against
    the loss before any update) while the head's largest logit grew ``FIT_GROWTH`` times its
    first reading and was still growing over the last quarter of the run's steps (its median
    there above the quarter before's: read by steps, not readings, which a closer look crowds).
    On separable data with nothing holding their scale (no weight decay or label smoothing on
    the head), the weights' norm grows for as long as training runs (Soudry et al. 2018: like
    log t under gradient descent; an adaptive step, which keeps its size as the gradient
    shrinks, grows it faster). Harmless to the training loss, which is why it is no warning; it
    costs calibration, and float16's range. Dated to the reading that first stood
    ``FIT_GROWTH`` times the first."""
    head, logits = facts.output_layer, facts.series(OUTPUT_LOGIT_MAX.name)
    loss = facts.series(LOSS.name)
    if head is None or logits is None or loss is None:
        return None
    read = np.isfinite(logits[1])
    steps, values = logits[0][read], logits[1][read]
    losses = loss[1][np.isfinite(loss[1])]
    if len(values) < 4 or len(losses) < 2 * ENDED_OVER or values[0] <= 0:
        return None
    # by steps, not readings (unlike _grew_in_quarters): a closer look crowds the last readings
    quarter = (steps[-1] - steps[0]) / 4
    late = values[steps > steps[-1] - quarter]
    before = values[(steps > steps[-1] - 2 * quarter) & (steps <= steps[-1] - quarter)]
    if not (len(late) and len(before)):
        return None
    first, last = float(losses[0]), float(np.median(losses[-ENDED_OVER:]))
    late_level = float(np.median(late))
    grew = late_level / values[0]
    if not (0 <= last <= FIT * first and grew >= FIT_GROWTH and late_level > np.median(before)):
        return None
    began = int(steps[np.flatnonzero(values >= FIT_GROWTH * values[0])[0]])
    return Found(
        f"the largest logit of {head} grew {grew:.3g}x from its first reading and was still "
        f"growing at the end, while the loss fell to {last:.3g} ({last / first:.2g} of where "
        "it began): the model fits its data and nothing bounds its logits (no weight decay or "
        "label smoothing on the head?); harmless to this loss, but confidence without limit "
        "costs calibration and float16's range",
        began,
        [head],
        {"logit_growth": grew, "loss_share": last / first, OUTPUT_LOGIT_MAX.name: late_level},
        "info",
    )


def _fell_without_bound(facts: RunFacts) -> Found | None:
    """The loss fell below zero at a rate that did not slow, to ``ONE_OFF`` times its first
    value's size below it where it ended (its last ``ENDED_OVER`` losses), and at least
    ``ONE_OFF`` nats (a log-likelihood fitting its noise goes a few below zero: a loss that
    starts near 0 says nothing of its scale), and was still falling there (in a run that
    broke, read up to the break, at its lowest into it), while the
    output layer's weights grew ``RUNAWAY_GROWTH`` times and were still growing: an objective
    with no minimum (a margin or a log-likelihood that lost its softplus or its normaliser, a
    term of the wrong sign), which the output runs off to infinity to reach. Read from the
    loss and the weights alone, for a loss no interception reads (one written by hand). A loss
    with a floor (a Gaussian likelihood fitting its noise) slows as it nears it."""
    layer, loss = facts.output_layer, facts.series(LOSS.name)
    weight = facts.series(f"{PARAM_NORM.name}/{layer}.weight")
    if layer is None or loss is None or weight is None:
        return None
    steps, values = loss
    broke = facts.broke_at
    if broke is not None:
        # a run that broke as it fell (to -inf) is read up to the break, falling into it
        steps, values = steps[steps < broke], values[steps < broke]
        weight = (weight[0][weight[0] < broke], weight[1][weight[0] < broke])
        if not len(values) or values[-1] > values.min():
            return None
    if len(values) < 40 or not np.isfinite(values).all():
        return None
    q = _quarter_medians(values)
    falls = -np.diff(q)  # how far each quarter's median fell below the one before
    if not (falls > 0).all() or falls[-1] < 0.5 * falls[-2] or q[-1] >= 0:
        return None
    ended = float(np.median(values[-ENDED_OVER:]))
    # still falling at the end: below the losses a few of those spans before (a batch's loss
    # swings by a share of its size; a fall that did not slow clears that over 30 steps)
    if ended > -ONE_OFF * max(abs(values[0]), 1.0) or ended >= np.median(
        values[-4 * ENDED_OVER : -2 * ENDED_OVER]
    ):
        return None  # not far below where it began by the end, or no longer falling there
    # the output layer's weights, or failing them its outputs (every layer before it may
    # carry the growth a little each: ONE_OFF times, as the loss is asked; a variance head
    # shrinking to its floor moves its outputs a few times over), grown and still growing
    grown, what = _grew_in_quarters(weight[1], RUNAWAY_GROWTH), "weight"
    outputs = facts.series(f"{ACT_RMS.name}/{layer}")
    if grown is None and outputs is not None:
        grown, what = _grew_in_quarters(outputs[1], ONE_OFF, fewest=4), "output"
    if grown is None:
        return None
    below = steps[values < 0]
    began = int(below[0]) if len(below) else int(steps[0])
    return Found(
        f"the loss fell below zero from step {began} without slowing, to {values[-1]:.4g} "
        f"(from {values[0]:.4g}), while the {what}s of the output layer {layer} grew "
        f"{grown:.3g}x and kept growing: a loss with no minimum (a margin or "
        "log-likelihood that lost its softplus or normaliser, a term of the wrong sign), "
        "which the outputs grow without end to lower",
        began,
        [layer],
        {"loss_end": float(values[-1]), f"output_{what}_growth": grown, UNBOUNDED: True},
        "warning",
    )


# Evidence key of a loss with no minimum (see :func:`_fell_without_bound`): its gradient drives
# every weight it reaches without end, not its output layer's alone.
UNBOUNDED = "unbounded"


def _output_updates_too_large(facts: RunFacts, found: Found) -> tuple[int, float] | None:
    """The first too-large update ratio (step, ratio) found on a parameter of the module the
    logits come from, by the time they were found drifting: a learning rate set too high for
    the head moves its weights, and with them the logits."""
    heads = [w for w in found.where if w]
    if found.first_step is None or not heads:
        return None
    for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE):
        on_head = f.where and any(_inside(f.where, head) for head in heads)
        if on_head and _too_large(f) and f.severity != "info" and f.step <= found.first_step:
            return f.step, float(f.evidence.get("update_ratio", math.nan))
    return None


def _logits_pushed_up(facts: RunFacts, until: float) -> float | None:
    """The strongest push by step ``until`` (see :func:`_pushes`), if there was one."""
    steps, values = _pushes(facts)
    values = values[steps <= until]
    return float(values.min()) if len(values) else None


def _below_zero_by(facts: RunFacts, until: int) -> int | None:
    """The step from which the loss stayed below zero, when it did by ``until`` (its last
    ``RECEDED_READINGS`` readings then all negative), in a run whose logits were read from no
    cross-entropy against class targets (those record softmax collapse, and are never negative:
    a negative total there is another term's, a learnt log-variance weighting tasks)."""
    loss = facts.series(LOSS.name)
    if loss is None or facts.series(SOFTMAX_COLLAPSE.name) is not None:
        return None
    steps, values = loss[0][loss[0] <= until], loss[1][loss[0] <= until]
    if len(values) < RECEDED_READINGS or not (values[-RECEDED_READINGS:] < 0).all():
        return None
    above = np.flatnonzero(~(values < 0))
    return int(steps[above[-1] + 1]) if len(above) else int(steps[0])


def _output_layer_ran_away(facts: RunFacts) -> tuple[str, int, float] | None:
    """(the output layer, the step its weights began to grow, how much) when the weights
    that ran away before the trouble (:func:`_runaway_weights`), or else those that grew far
    more than any other by then (:func:`_amplifier`: up to a burst of the learning rate that
    came first, whose steps throw every weight), are the output layer's, and it is not
    applied in a recurrence."""
    layer = facts.output_layer
    trouble = [s for s in (facts.climbing_from, facts.broke_at) if s is not None]
    if layer is None or not trouble:
        return None
    if layer in facts.recurrent_modules:
        return None  # applied step after step (an ODE's last layer): it explodes through time
    runaway = facts.runaway_weights
    if runaway is not None:
        name, began, factor, share = runaway
        return (layer, began, factor) if share <= 0.5 and _inside(name, layer) else None
    until = _before_explosion(facts, min(trouble))
    burst = _burst_before(facts, until)
    if burst is not None:
        until = min(until, burst[0] - 1)  # what the burst's steps threw is the burst's doing
    grown = _amplifier(_weight_growth(facts, until))
    if grown is None or not _inside(grown[0], layer):
        return None
    return layer, _doubled_at(facts, grown[0]), grown[1]


def _overflowing_from_the_start(facts: RunFacts, step: int) -> int | None:
    """How many steps the optimizer skipped from the run's first record up to ``step``, when it
    skipped every one of them and they were more than ``SCALE_SEARCH_STEPS`` (a GradScaler's
    search for its scale ends by then: past it, the gradients overflow float16 unscaled); None
    otherwise."""
    loss = facts.series(LOSS.name)
    if loss is None:
        return None
    before = loss[0][loss[0] < step]
    skipped = _skipped_steps(facts)
    if len(before) <= SCALE_SEARCH_STEPS or any(int(s) not in skipped for s in before):
        return None
    return len(before)
