"""Exploding gradients: gradient growth placed where it starts, through depth or time, and the
episodes a run got over (``exploding_gradients``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from steadygrad.core import Finding
from steadygrad.core.metrics import GRAD_NORM, LOSS
from steadygrad.diagnose.detectors.training import GRAD_NORM_SPIKE, LOSS_SPIKE, NONFINITE
from steadygrad.diagnose.detectors.transformer import GRADIENT_SPIKE
from steadygrad.diagnose.detectors.trends import (
    AT_INITIALISATION,
    CHAIN_AMPLIFIED,
    GRADIENT_GROWTH,
    GROWTH_BEGAN,
    STEP_GAIN,
    WRECKED_WEIGHTS,
    like_layers,
    stack_chains,
)
from steadygrad.diagnose.rules.amplification import (
    BORN_EXPLODED,
    BURST,
    BURST_GAP,
    CLIPPED_ALWAYS,
    CLIPPED_HARD,
    _bursts_through_time,
    _clipping,
    _exploded_from_the_start,
    _first_burst,
    _overflowing_around,
)
from steadygrad.diagnose.rules.base import Found, _inside, layer_span
from steadygrad.diagnose.rules.divergence import FELL_FROM_STAGE, _stepped_up_by_the_data
from steadygrad.diagnose.rules.facts import (
    CONFIRMED_SOON,
    EXPLOSION_LEAD,
    RUNAWAY_SPAN,
    RunFacts,
    _before_explosion,
    _burst_before,
    _leading_into,
    _replaced_just_before,
)
from steadygrad.diagnose.rules.logits import (
    _fell_without_bound,
    _output_layer_ran_away,
    _scaled_at_a_stroke,
    _scaled_from_the_start,
)
from steadygrad.diagnose.rules.nonfinite import _unscaled_inputs
from steadygrad.diagnose.rules.outliers import _gradient_over_loss
from steadygrad.diagnose.rules.rates import _burst_said, _jolted_by_a_restart
from steadygrad.diagnose.rules.rule import _located
from steadygrad.diagnose.rules.series import (
    BACK_WITHIN,
    ONE_OFF,
    _family_at,
    _spikes_between,
    learnt_after,
)
from steadygrad.diagnose.rules.weights import (
    _amplifier,
    _grown_everywhere,
    _multiplied_every_step,
    _multiplied_said,
    _pushed_outward,
    _pushed_said,
    _ran_away,
    _weight_growth,
)

# Records the growth detector asks of a growth before it finds it (``GradientGrowth``'s
# ``patience``): one found this soon after a reading is one that began by it.
GROWTH_PATIENCE = 3


# A gradient norm at the step after a spike this many times below it: the spike was one step's
# (one batch, a loss scaled once), not a growth passing through (an explosion's gradients go on
# rising after its first spike).
ONE_STEP_FALL = 10.0


def _thrown_by_a_one_step_spike(
    facts: RunFacts, growth: Finding
) -> tuple[int, float, float] | None:
    """(the spike's step, its gradient norm before clipping, the next step's) when gradient
    growth was first found (``growth``) within :meth:`RunFacts.spike_carried` steps after a
    gradient spike (not info) whose next gradient fell ``ONE_STEP_FALL`` times or more below
    it, and the growth's level stood that far below the spike too: the growth read is that
    spike's update, carried on by momentum, not gradients growing."""
    spikes = _spikes_between(facts, growth.step - facts.spike_carried, growth.step)
    grads = facts.grad_norm_made
    if not spikes or grads is None:
        return None
    spike = min(spikes)
    at, after = grads[1][grads[0] == spike], grads[1][grads[0] == spike + 1]
    level = growth.evidence.get("grad_norm_median", math.inf)
    if not len(at) or not len(after) or not np.isfinite(at[0]):
        return None
    size, next_one = float(at[0]), float(after[0])
    fell = next_one * ONE_STEP_FALL <= size and level * ONE_STEP_FALL <= size
    if not (fell or _out_of_a_steady_level(facts, grads, spike, size)):
        return None
    return spike, size, next_one


# A gradient norm this many times the steady level of the readings before it, in one step, in
# a model with no recurrence: nothing grows that much in a step (a loss weight typed 300 for
# one step, one batch); what grew after it is its thrown update's aftermath.
LONE_SPIKE = 100.0


def _out_of_a_steady_level(
    facts: RunFacts, grads: tuple[np.ndarray, np.ndarray], spike: int, size: float
) -> bool:
    """Whether the gradient norm ``size`` at ``spike`` stood ``LONE_SPIKE`` times or more above
    the steady level before it (:func:`_steady_level`), in a model with no recurrent module."""
    level = None if facts.recurrent_modules else _steady_level(grads, spike)
    return level is not None and size >= LONE_SPIKE * level


def _steady_level(series: tuple[np.ndarray, np.ndarray], step: int) -> float | None:
    """The median of the ``STEADY_BEFORE`` gradient norms read before ``step``, when each held
    within ``STEADY_WITHIN`` of it (finite, above 0): a steady level; None otherwise."""
    steps, values = series
    before = values[steps < step][-STEADY_BEFORE:]
    if len(before) < STEADY_BEFORE or not np.all(np.isfinite(before) & (before > 0)):
        return None
    level = float(np.median(before))
    steady = np.all(before <= STEADY_WITHIN * level) and np.all(before >= level / STEADY_WITHIN)
    return level if steady else None


# A recurrent module's gradient grew this many times over (the detector's own per-tensor test,
# ``GradientGrowth.local_growth``): the explosion goes through it.
RECURRENT_GROWTH = 3.0


# Steps into a climb from which gradient growth first found followed it (before, the growth
# may have driven it, found late on the detector's patience).
FOLLOWED_AFTER = 50


def _exploding(facts: RunFacts) -> Found | None:
    """Gradient growth, placed where it starts. The gradient grows most in the layers *before*
    weights that grow (backpropagation multiplies by them), so when one weight tensor grew far
    more than all others up to the growth finding, its module is named first. With no growth
    finding, a break that was a gradient explosion after a weight ran away is one too."""
    stacked = _grown_back_through_a_stack(facts)
    if stacked is not None:
        return stacked
    found = _located((GRADIENT_GROWTH,), "gradient norm growing without bound, starting")(facts)
    if found is None:
        # a recurrence's bursts that led to the same break date it from the first of them
        late = [
            f
            for f in (
                _spike_into_explosion(facts),
                _bursts_through_time(facts),
                _growing_bursts(facts),
                _got_over_at_once(facts, _exploded_from_the_start(facts))
                or _held_down_by_clipping(facts),
            )
            if f
        ]
        return _runaway_into_explosion(facts) or min(late, key=lambda f: f.first_step, default=None)
    first = facts.of(GRADIENT_GROWTH)[0]
    scaled = _scaled_from_the_start(facts, np.array([]), first.step)
    came = scaled is not None and first.step == scaled[0]  # found at the number's first reading
    stroke = _scaled_at_a_stroke(facts, first.step)
    grew_from = first.evidence.get(GROWTH_BEGAN, first.step)
    if stroke is not None and (
        stroke[0] < grew_from <= stroke[1] or stroke[0] < first.step <= stroke[1] + GROWTH_PATIENCE
    ):
        scaled, came = stroke[1:], True  # the growth began, or was confirmed, as the number came
    thrown = _thrown_by_a_one_step_spike(facts, first)
    if thrown is not None:
        spike, size, after = thrown
        found.consequence_of = (
            f"the gradient spike at step {spike} ({size:.3g}, and {after:.3g} the step after: one "
            "batch's, not a growth): its update, carried on by the optimizer's momentum, threw "
            "the weights, and the gradients rose with the loss after it"
        )
        return found
    if scaled is not None and came:
        # a number multiplying the logits multiplies every gradient that flows back through them
        found.consequence_of = (
            f"the logits are their layer's output times {scaled[1]:.3g}, a fixed number from "
            f"step {scaled[0]} (a temperature applied the wrong way): every gradient back "
            "through them is as many times larger"
        )
        return found
    born = _exploded_from_the_start(facts)
    if born is not None and first.evidence.get(AT_INITIALISATION):
        # the finding names the tensor with the largest gradient for its norm (a bias at 0);
        # the chain through depth or time says where the signal was amplified
        return born
    fed = [*born.where, facts.output_layer] if born is not None else []
    if born is not None and any(m and _inside(first.where or "", m) for m in fed):
        # the growth found later is in the recurrence or the chain of layers that amplified
        # the very first gradient, or in the output layer they feed: it exploded from the
        # start, and grew on from there
        return born
    if first.evidence.get(WRECKED_WEIGHTS) and first.step == found.first_step:
        found.summary = (
            f"one gradient explosion at step {first.step}, in {first.where}: the gradient norm "
            f"reached {first.evidence.get('grad_norm', math.nan):.3g}, "
            f"{first.evidence.get('ratio', math.nan):.3g}x the next one, and its update "
            "wrecked the weights"
        )
    if facts.broke_at is None:
        # a run that did not break, whose loss kept improving long after: the gradients grew
        # as the model learned (a classifier sharpening its logits), harmless so far
        best = learnt_after(facts, found.first_step)
        if best is not None:
            found.severity = "info"
            found.summary += (
                f"; the loss kept improving until step {best} and the run did not break: the "
                "gradients grew as the model learned"
            )
            return found
    if found.first_step is None:
        return found
    replaced = _replaced_just_before(facts, found.first_step)
    if replaced is not None:
        found.consequence_of = (
            f"the weights were replaced between steps at step {replaced} (an EMA swap, a "
            "checkpoint reload): the gradients grew with the loss of the weights put back"
        )
        return found
    restarted = _jolted_by_a_restart(facts, found.first_step)
    if restarted is not None:
        found.consequence_of = (
            f"the optimizer's state started again from nothing at step {restarted}: its first "
            "steps threw the weights, and the gradients grew with the loss they made"
        )
        return found
    burst = _burst_before(facts, found.first_step)
    if burst is not None:
        found.consequence_of = (
            f"{_burst_said(burst)}: those steps threw the weights, and the gradients grew with "
            "the loss they made"
        )
        return found
    if (skipped := _overflowing_around(facts, found.first_step)) is not None:
        found.consequence_of = (
            f"the GradScaler skipped step {skipped} for a float16 overflow: the gradients were "
            "at float16's edge as they were seen to grow"
        )
        return found
    head = _output_layer_ran_away(facts)
    if head is not None:
        layer, began, factor = head
        found.consequence_of = (
            f"the weights of the output layer {layer} grew {factor:.3g}x from step {began}: "
            "the gradients grew with the logits they make"
        )
        return found
    if _lone_burst(facts, found.first_step):
        found.consequence_of = (
            f"the gradient burst out of a steady level at step {found.first_step}, in a model "
            "with no recurrence to explode through: one spike, whose update wrecked the "
            "weights, not gradients that grew"
        )
        return found
    fading = _fading_since_a_spike(facts, found.first_step)
    if fading is not None:
        spike, peak, now = fading
        found.consequence_of = (
            f"the gradient norm had been falling since the spike at step {spike} ({peak:.3g} "
            f"then, {now:.3g} when the growth was found): the spike's aftermath, read against an "
            "earlier low, not gradients growing"
        )
        return found
    stage = _stepped_up_by_the_data(facts, found.first_step)
    if stage is not None and stage[3] <= FELL_FROM_STAGE and _gradient_fell_after(facts, stage[0]):
        found.consequence_of = (
            f"the gradient stepped up with the loss at step {stage[0]}, after an ordinary "
            "update (what the model is asked to fit changed there), and has fallen since with "
            "the loss: no growth"
        )
        return found
    shock = _shock_got_over(facts, found.first_step)
    if shock is not None:
        found.consequence_of = (
            f"the gradients rose at once with the spike at step {shock} and fell back to their "
            "level before it by the end of the run: one shock's aftermath, not gradients "
            "growing without bound"
        )
        return found
    multiplied = _multiplied_every_step(facts)
    if multiplied is not None:
        # every weight multiplied by one factor a step: every gradient through them grows too
        found.consequence_of = f"{_multiplied_said(multiplied)}: the gradients grew with them"
        found.evidence["weights_multiplied"] = multiplied
        return found
    pushed = _pushed_outward(facts)
    if pushed is not None:
        # an explosion's updates go every way (Adam bounds each): weights pushed one way at
        # that pace were asked to grow, and every gradient through them grew with them
        found.consequence_of = f"{_pushed_said(pushed)}: the gradients grew with them"
        found.evidence["pushed_stride"] = pushed
        return found
    runaway = facts.runaway_weights
    if runaway is not None and runaway[1] < found.first_step:
        name, began, factor, share = runaway
        if share > 0.5:
            # most weight tensors ran away together: what multiplies them multiplies all
            found.consequence_of = (
                f"{share:.0%} of the weight tensors grew geometrically together: the gradients "
                "grew with them; look for what scales every weight (a weight decay of the "
                "wrong sign)"
            )
            found.evidence["runaway_share"] = share
            return found
        module = name.rpartition(".")[0] or name
        climbing = facts.climbing_at(found.first_step)
        if climbing is not None and found.first_step - climbing >= FOLLOWED_AFTER:
            # the loss climbed long before any gradient grew: the weights' growth moved the
            # fit, the gradients followed it late (see _loss_divergence)
            found.consequence_of = (
                f"the loss was already climbing from step {climbing}, before the gradients "
                f"were seen to grow: they grew with it and with the weights of {module}, "
                f"which grew geometrically from step {began}"
            )
            return found
        found.first_step = began
        found.where = [module] + [w for w in found.where if w != module]
        said, found.evidence["runaway_weights"] = _ran_away(runaway, "the trouble")
        found.summary += f"; before it, {said}, and every gradient through them grows with them"
        return found
    climbing = facts.climbing_at(found.first_step)
    if climbing is not None and found.first_step - climbing > CONFIRMED_SOON:
        # nothing grew before the loss did: a loss climbing for its own reasons (a drifting
        # target, a schedule of the wrong sign) makes every gradient grow with its error
        found.consequence_of = (
            f"the loss was already climbing from step {climbing}, before the gradients were "
            "seen to grow: they grew with the loss"
        )
        return found
    grew = _error_grew_the_gradient(facts, first)
    if grew is not None:
        began, times = grew
        found.consequence_of = (
            f"the loss grew {times:.3g}x from step {began} as the gradient norm grew "
            f"{first.evidence['growth']:.3g}x, and its climb was found first: a growing error "
            "makes a growing gradient (a squared error's grows as its square root), where a "
            "network that amplifies its gradient grows it far faster than the loss"
        )
        return found
    until = max(found.first_step, facts.broke_at or 0)
    if facts.climbing_from is not None:
        # the weights as the loss began to climb: the updates of a climb's last steps, made of
        # exploding gradients, grow every weight they touch
        until = min(until, facts.climbing_from)
    if any(f.evidence.get(WRECKED_WEIGHTS) for f in facts.of(GRADIENT_GROWTH)):
        until = found.first_step - 1  # the explosion's own update grew the weights it wrecked
    until = _before_explosion(facts, until)
    burst = _first_burst(facts, until)
    if burst is not None:
        until = burst - 1  # what a gradient burst's update grew is the explosion's own doing
    growth = _weight_growth(facts, until=until)
    if _grown_everywhere(found, facts, until, "the gradients", growth):
        # Every weight grew (a weight decay with its sign flipped, a regulariser rewarding
        # size): gradients grow with the weights they flow through, in every layer at once.
        return found
    grown = _amplifier(growth)
    if grown is not None:
        name, factor = grown
        module = name.rpartition(".")[0] or name
        found.where = [module] + [w for w in found.where if w != module]
        found.summary += (
            f"; the weights of {module} grew {factor:.3g}x, far more than any other, and "
            "multiply the gradients of every layer before them"
        )
        found.evidence["grown_weights"] = {"parameter": name, "factor": factor}
        return found
    through_time = _recurrent_origin(facts, found)
    if through_time is not None:
        module, factor = through_time
        found.where = [module] + [w for w in found.where if w != module]
        found.summary += (
            f"; the gradient of the recurrent {module} grew {factor:.3g}x with it: gradients "
            "explode through time there, and the layers before it inherit the growth"
        )
        found.evidence["through_time"] = {"module": module, "factor": factor}
    return found


def _error_grew_the_gradient(facts: RunFacts, growth: Finding) -> tuple[int, float] | None:
    """(the step the gradient's growth rose from, how many times the loss grew since) when a
    loss climb was found at or before ``growth`` and the loss's level (the median of its five
    finite readings up to a step) grew at least as many times from the growth's best-level
    step to the finding as the gradient norm did: the error grew, and the gradient with it."""
    began, grown = growth.evidence.get("best_level_step"), growth.evidence.get("growth")
    loss = facts.series(LOSS.name)
    if not isinstance(began, int) or not isinstance(grown, (int, float)) or loss is None:
        return None
    if facts.climbing_at(growth.step) is None:
        return None  # the gradient grew before any climb of the loss was seen
    steps, values = loss
    finite = np.isfinite(values)
    then = values[finite & (steps <= began)][-5:]
    now = values[finite & (steps <= growth.step)][-5:]
    if len(then) < 5 or len(now) < 5 or not np.median(then) > 0:
        return None
    times = float(np.median(now) / np.median(then))
    return (began, times) if times >= grown else None


# Gradient norms read before a burst, each within this factor of their median: a steady level.
STEADY_BEFORE, STEADY_WITHIN = 5, 3.0


# A growth found this soon after a spike, the run then going on this many steps, and its gradient
# norm's median over them back within GOT_OVER times its median over as many steps before the
# spike: the run got over that shock.
SHOCK_SPAN, GOT_OVER = 50, 3.0


def _shock_got_over(facts: RunFacts, step: int) -> int | None:
    """The step of the spike (of the loss or the gradient) that the growth finding at ``step``
    came within ``CONFIRMED_SOON`` steps of, when the run went on ``SHOCK_SPAN`` steps or more
    and its gradient norm's median over its last ``SHOCK_SPAN`` steps stood within
    ``GOT_OVER`` times that over the ``SHOCK_SPAN`` steps before the spike, either way (a
    gradient collapsed far below is wrecked weights, not a recovery), all finite: the
    gradients rose with the shock and fell back, where gradients that explode keep growing or
    break the run. The growth detector measures against the lowest level a tensor's gradient
    ever held (often its first steps'), so one shock can carry it over its bar."""
    kinds = (LOSS_SPIKE, GRAD_NORM_SPIKE, GRADIENT_SPIKE)
    spikes = [f.step for f in facts.of(*kinds) if step - CONFIRMED_SOON <= f.step <= step]
    series = facts.series(GRAD_NORM.name)
    if not spikes or series is None or facts.broke_at is not None:
        return None
    steps, values = series
    shock = min(spikes)
    before = values[(steps < shock) & (steps >= shock - SHOCK_SPAN)]
    last = values[steps > steps[-1] - SHOCK_SPAN]
    if steps[-1] - step < SHOCK_SPAN or len(before) < SHOCK_SPAN // 2 or not len(last):
        return None
    if not (np.all(np.isfinite(before)) and np.all(np.isfinite(last))):
        return None
    ratio = float(np.median(last)) / max(float(np.median(before)), np.finfo(float).tiny)
    return shock if 1.0 / GOT_OVER <= ratio <= GOT_OVER else None


def _gradient_fell_after(facts: RunFacts, step: int, over: int = 10) -> bool:
    """Whether the gradient norm's median over its last ``over`` finite readings stood below
    that over the ``over`` readings from ``step`` on."""
    series = facts.series(GRAD_NORM.name)
    if series is None:
        return False
    steps, values = series
    after = values[(steps >= step) & np.isfinite(values)]
    return len(after) >= 2 * over and np.median(after[-over:]) < np.median(after[:over])


def _fading_since_a_spike(facts: RunFacts, step: int) -> tuple[int, float, float] | None:
    """(the spike's step, the gradient norm there, the norm at ``step``) when a gradient spike
    (not info) came within ``CONFIRMED_SOON`` steps before the growth finding at ``step``, was
    the largest norm since, and the norm at ``step`` had fallen to half of it or less."""
    spikes = [
        f.step
        for f in facts.of(GRAD_NORM_SPIKE)
        if f.severity != "info" and step - CONFIRMED_SOON <= f.step < step
    ]
    series = facts.series(GRAD_NORM.name)
    if not spikes or series is None:
        return None
    steps, values = series
    since = values[(steps >= min(spikes)) & (steps <= step)]
    if len(since) < 2 or not np.isfinite(since).all():
        return None
    peak, now = float(since[0]), float(since[-1])
    if since.max() > peak or not now <= 0.5 * peak:
        return None
    return min(spikes), peak, now


def _lone_burst(facts: RunFacts, step: int) -> bool:
    """The growth finding at ``step`` is one burst that wrecked the weights (the detector's
    explosion-then-collapse), in a model with no recurrent module, out of a gradient norm
    that held steady over the ``STEADY_BEFORE`` readings before it: nothing grew into it, so
    it is a spike (a module's gradient scaled at a stroke), not an explosion."""
    burst = [f for f in facts.of(GRADIENT_GROWTH) if f.step == step]
    if not burst or not burst[0].evidence.get(WRECKED_WEIGHTS) or facts.recurrent_modules:
        return False
    series = facts.series(GRAD_NORM.name)
    return series is not None and _steady_level(series, step) is not None


def _runaway_into_explosion(facts: RunFacts) -> Found | None:
    """No gradient grew for long before the break, but the break was a gradient explosion (a
    spike of the gradient norm just before it) and one weight tensor had run away before it
    (see :func:`_runaway_weights`): what multiplied it compounded until the gradients through
    it exploded at once (a recurrence's feedback weight passing 1)."""
    broke, runaway = facts.broke_at, facts.runaway_weights
    if broke is None or runaway is None or runaway[3] > 0.5:
        return None
    if _output_layer_ran_away(facts) is not None:
        return None  # the logits ran away with the output layer (see _output_logits)
    if not _leading_into(facts, broke, GRAD_NORM_SPIKE):
        return None
    name, began, factor, _ = runaway
    module = name.rpartition(".")[0] or name
    return Found(
        f"the gradients exploded at step {broke}, after the weights of {module} grew "
        f"geometrically from step {began} ({factor:.3g}x over the last {RUNAWAY_SPAN} steps) "
        "while the loss set no new best: something multiplies them (a decay or penalty of the "
        "wrong sign, a feedback gain), and every gradient through them grew with them until "
        "they exploded",
        began,
        [module],
        {"runaway_weights": {"parameter": name, "began": began, "factor": factor}},
        "critical",
    )


def _spike_into_explosion(facts: RunFacts) -> Found | None:
    """No gradient grew for long before the break, but the gradient norm (or one tensor's
    gradient first) spiked and the run never came back: the loss rose at every step after the
    spike, ``ONE_OFF`` times or more, until it went non-finite within ``EXPLOSION_LEAD``
    steps. One step's gradient that compounds into NaN is an explosion, not a spike the run
    absorbed; it starts in the tensors that spiked most, a recurrence's first."""
    nonfinite = facts.of(NONFINITE)
    loss = facts.series(LOSS.name)
    if not nonfinite or loss is None:
        return None
    nan_at = nonfinite[0].step
    # the whole gradient's spike, or one tensor's first (the global norm's baseline may
    # already hold the start of the climb)
    spikes = [
        s for s in _leading_into(facts, nan_at, GRAD_NORM_SPIKE, GRADIENT_SPIKE) if s < nan_at
    ]
    if not spikes:
        return None
    start = min(spikes)
    steps, values = loss
    between = values[(steps >= start) & (steps < nan_at)]
    # non-finite the step after a gradient the network amplified: no step to compound
    at_once = _amplified_at(facts, start) if len(between) == 1 else None
    if at_once is None and (len(between) < 2 or not np.all(np.diff(between) > 0)):
        return None  # the loss came down after the spike: the run absorbed it
    if at_once is None and not between[-1] >= ONE_OFF * between[0]:
        return None  # a loss creeping up as before: nothing compounded
    # the tensors that spiked first, most first; before them, a recurrence's tensors that
    # spiked on the way to the NaN: the repeated product there is what compounds
    recurrent = facts.recurrent_modules

    def in_recurrence(f: Finding) -> bool:
        return any(_inside(f.where or "", m) for m in recurrent)

    # the tensors spiking first: at the spike, else at the first step after it that any did
    # (the whole gradient's baseline may see a spike a step before its tensors' own do)
    serious = [f for f in facts.of(GRADIENT_SPIKE) if f.severity != "info"]
    first = min((f.step for f in serious if start <= f.step < nan_at), default=start)
    tensors = [
        f for f in serious if f.step == first or start < f.step < nan_at and in_recurrence(f)
    ]
    tensors.sort(key=lambda f: (not in_recurrence(f), -f.evidence.get("spike_factor", 0.0)))
    where = [f.where for f in tensors if f.where][:3]
    how = (
        f"the gradient norm spiked {at_once:.3g} times as many times over its level as the "
        f"loss did (the network multiplied it on its way back) and the run was non-finite at "
        f"step {nan_at}"
        if at_once is not None
        else "the gradient norm spiked and the loss rose at every step after it until it went "
        f"non-finite at step {nan_at}"
    )
    return Found(
        f"the gradients exploded at step {start}: {how}"
        + (f", starting in {', '.join(where)}" if where else ""),
        start,
        where,
        {"spike_step": start, "nonfinite_step": nan_at},
        "critical",
    )


# A gradient norm (before any clipping) under this share of its first value, from some step
# to the break, with the loss under its first value: an explosion from the start the run got
# over within a few steps (a training through a bad start the gradient never leaves stays near
# its first value, or above it).
SETTLED_SHARE = 0.1


def _got_over_at_once(facts: RunFacts, found: Found | None) -> Found | None:
    """An explosion from the start (``found``) after which the gradient norm came down under
    ``SETTLED_SHARE`` of its first value and the loss under its first, and stayed so until the
    run broke: an episode the run got over (evidence ``BACK_WITHIN``), which does not explain
    a break long after it."""
    broke = facts.broke_at
    if found is None or found.first_step is None or broke is None:
        return found
    grads = facts.grad_norm_made
    loss = facts.series(LOSS.name)
    if grads is None or loss is None:
        return found
    first = found.first_step
    start_grad, start_loss = grads[1][grads[0] == first], loss[1][loss[0] == first]
    if not len(start_grad) or not len(start_loss) or not np.isfinite(start_grad[0]):
        return found
    g_keep = (grads[0] > first) & (grads[0] < broke)
    l_keep = (loss[0] > first) & (loss[0] < broke)
    above = np.flatnonzero(~(grads[1][g_keep] < SETTLED_SHARE * start_grad[0]))
    settled = grads[0][g_keep][above[-1] + 1 :] if len(above) else grads[0][g_keep]
    if not len(settled):
        return found
    since = int(settled[0])
    after = loss[1][l_keep & (loss[0] >= since)]
    if len(after) and np.all(after < start_loss[0]):
        found.evidence[BACK_WITHIN] = since - first
    return found


# A gradient that explodes through depth or time stands tens to thousands of times the loss it
# is the slope of (the network multiplies it on its way back); one made large by a loss on a
# huge scale (targets in raw units: pascals, milligrams) stands at the loss or under it. The
# medians over the run, this many times apart, tell them apart.
OVER_ITS_LOSS = 3.0
# In a known recurrence, a gradient clipped as hard at as many steps that stands this many times
# its loss has exploded through time, however it compares with the weights' norm (a GRU's
# first-step gradient 20x its last, clipped 50-200x at every step, at 0.7 of the weights).
RECURRENT_OVER_LOSS = 10.0


def _held_down_by_clipping(facts: RunFacts) -> Found | None:
    """Clipping that shrank the gradient ``CLIPPED_HARD`` times or more at ``CLIPPED_ALWAYS``
    of the run's steps, the gradient before it standing ``BORN_EXPLODED`` times the norm of all
    the weights (the median over the run): a gradient exploded through time or depth (a
    recurrent gain above 1, an initialisation's gain too large) that clipping hid from the
    loss, which falls on steps of the clip's length, the gradient ``OVER_ITS_LOSS`` times the
    loss or more. A clip threshold set far below a healthy gradient shrinks it as often, at a
    gradient under the weights' norm; inputs fed unscaled (see :func:`_unscaled_inputs`) or
    targets on a huge scale make gradients as large through no amplification."""
    clipped = _clipping(facts)
    if clipped is None or _unscaled_inputs(facts):
        return None
    steps, pre, shrunk, norm = clipped
    share = float(np.mean(shrunk >= CLIPPED_HARD))
    of_weights = float(np.median(pre / norm))
    loss = facts.series(LOSS.name)
    losses = loss[1][np.isin(loss[0], steps) & np.isfinite(loss[1])] if loss else []
    over_loss = float(np.median(pre)) / float(np.median(losses)) if len(losses) else 0.0
    through_time = bool(facts.recurrent_modules) and over_loss >= RECURRENT_OVER_LOSS
    if share < CLIPPED_ALWAYS or (of_weights < BORN_EXPLODED and not through_time):
        return None
    if not over_loss >= OVER_ITS_LOSS:
        return None  # a loss on a huge scale (targets in raw units) makes a gradient as large
    first = int(steps[0])
    where, how = _carried_most(facts)
    return Found(
        f"the gradients exploded {how} and clipping held them down: before clipping the "
        f"gradient norm stood {of_weights:.3g}x the norm of all the weights and "
        f"{over_loss:.3g}x the loss (the run's medians), "
        f"and clipping shrank it {float(np.median(shrunk)):.3g}x at {share:.0%} of the steps: "
        "the run trains on steps of the clip's length, whatever its gradient says",
        first,
        where,
        {
            "of_weights": of_weights,
            "over_loss": over_loss,
            "clipped_share": share,
            "shrunk": float(np.median(shrunk)),
        },
        "critical" if facts.broke_at is not None else "warning",
    )


def _carried_most(facts: RunFacts) -> tuple[list[str], str]:
    """Where a gradient exploded over the whole run: the recurrent module whose tensors carry
    the most of it (their median squared norms together), or, with no recurrence, the module
    of the tensor with the largest median gradient outside the output layer (backpropagation
    multiplies the gradient on its way back, largest where it arrives); with how it exploded."""
    medians = {}
    for name in facts.names:
        if GRAD_NORM.owns(name) and "/" in name:
            values = facts.series(name)[1]
            values = values[np.isfinite(values)]
            if len(values):
                medians[name.split("/", 1)[1]] = float(np.median(values))
    recurrent: dict[str, float] = {}
    for tensor, norm in medians.items():
        module = next((m for m in facts.recurrent_modules if _inside(tensor, m)), None)
        if module is not None:
            recurrent[module] = recurrent.get(module, 0.0) + norm * norm
    if recurrent:
        module = max(recurrent, key=recurrent.get)
        return [module], f"through time in the recurrent {module}"
    head = facts.output_layer
    body = {t: n for t, n in medians.items() if not (head and _inside(t, head))}
    if not body:
        return [], "through depth"
    module = max(body, key=body.get).rpartition(".")[0]
    return ([module] if module else []), "through depth"


def _grown_back_through_a_stack(facts: RunFacts) -> Found | None:
    """At the first record, the weights' gradients in a stack of like layers growing from the
    stack's last layer back to its first (:func:`stack_chains`): a backward pass that multiplies
    the gradient at every layer (weights initialised past the edge of chaos, Poole et al.
    2016), whatever the gradient's overall size."""
    total = facts.series(GRAD_NORM.name)
    if total is None or not len(total[0]):
        return None
    first = int(total[0][0])
    norms = _family_at(facts, GRAD_NORM, first)
    chains = stack_chains(norms)
    if not chains:
        return None
    chain = max(chains, key=lambda c: c[-1][1] / c[0][1])
    where = [tensor.rsplit(".", 1)[0] for tensor, _ in reversed(chain)]
    rise = _rising_into(norms, chain[-1][0])
    rise = _input_layer_exploded(norms, rise[0] if rise else where[0], chain[0][1]) + rise
    grads = [norm for _, norm in chain]
    stepwise = all(b >= STEP_GAIN * a for a, b in zip(grads, grads[1:], strict=False))
    how = (
        f"each layer's weight gradient in {layer_span(where)} stood at least {STEP_GAIN:g}x "
        "the one after it"
        if stepwise
        else f"the weight gradients of {layer_span(where)} rose back through the stack almost "
        "layer by layer"
    )
    return Found(
        f"the gradients exploded through depth from the first step: at step {first} {how}, "
        f"{where[0]}'s {chain[-1][1] / chain[0][1]:.3g}x {where[-1]}'s (weights "
        "initialised with too large a gain: each layer multiplies the gradient on its way back)"
        + (f", and rising still into {layer_span(rise)} before it" if rise else ""),
        first,
        rise + where,
        {"grad_norm": chain[-1][1], "last_layer_grad_norm": chain[0][1], "layers": len(chain)},
        "critical" if facts.broke_at is not None else "warning",
    )


def _input_layer_exploded(norms: dict[str, float], top: str, last: float) -> list[str]:
    """The stack's first layer, when the rise reached the layer just after it (``top``, a
    module) and its weight gradient stands ``CHAIN_AMPLIFIED`` times the stack's last
    (``last``) or more: it takes the model's input, of another width, so its gradient's norm
    does not compare with the next layer's, but it carries the gradient exploded as much."""
    stack = next(
        (s for s in like_layers(norms).values() if f"{top}.weight" in dict(s).values()), []
    )
    # the stack's layers in order (a Sequential's, with activations between, go 0, 2, 4 ...)
    ordered = [t for _, t in sorted(stack)]
    if len(ordered) < 2 or ordered[1] != f"{top}.weight" or min(stack)[0] != 0:
        return []
    first = ordered[0]
    return [first.rsplit(".", 1)[0]] if norms[first] >= CHAIN_AMPLIFIED * last else []


def _rising_into(norms: dict[str, float], top: str) -> list[str]:
    """The layers of ``top``'s stack before it (toward the input) whose weight gradients went
    on rising into it, each no smaller than the one after it: where the rise began, when one
    layer's gain under ``STEP_GAIN`` broke the chain there (a rise, not a chain). Modules,
    input first."""
    stack = next((s for s in like_layers(norms).values() if top in dict(s).values()), [])
    index = next(i for i, t in stack if t == top)
    rise, after = [], norms[top]
    for _, tensor in sorted(((i, t) for i, t in stack if i < index), reverse=True):
        if not norms[tensor] >= after:
            break
        rise.append(tensor.rsplit(".", 1)[0])
        after = norms[tensor]
    return rise[::-1]


GROWING_BURSTS = 3  # bursts, each larger than the one before, that make a series


def _growing_bursts(facts: RunFacts) -> Found | None:
    """The gradient norm burst (``BURST`` times the median of the 20 readings before) at least
    ``GROWING_BURSTS`` times, each burst larger than the one before and within ``BURST_GAP``
    steps of it, the last leading into the first NaN (within ``EXPLOSION_LEAD`` steps), the loss
    coming back between them: gradients exploding in bursts (a message-passing net summing
    without a mean, a layer whose gain passed one), whatever the architecture. Dated to the
    first burst of the series, placed at the tensors that spiked there, most first."""
    nonfinite = facts.of(NONFINITE)
    grad = facts.series(GRAD_NORM.name)
    if not nonfinite or grad is None:
        return None
    nan_at = nonfinite[0].step
    steps, norms = grad
    keep = (steps < nan_at) & np.isfinite(norms)
    steps, norms = steps[keep], norms[keep]
    if len(norms) <= 20:
        return None
    before = np.median(sliding_window_view(norms[:-1], 20), axis=1)  # the 20 before each
    at = np.flatnonzero(norms[20:] >= BURST * before) + 20
    bursts = [(int(steps[i]), float(norms[i])) for i in at]
    if not bursts or nan_at - bursts[-1][0] > EXPLOSION_LEAD:
        return None
    series = [bursts[-1]]  # back from the last, while each one before was smaller and near
    for step, norm in reversed(bursts[:-1]):
        if series[0][0] - step > BURST_GAP or not norm < series[0][1]:
            break
        series.insert(0, (step, norm))
    if len(series) < GROWING_BURSTS:
        return None
    start = series[0][0]
    spiked = [f for f in facts.of(GRADIENT_SPIKE) if f.step == start and f.where]
    spiked.sort(key=lambda f: -f.evidence.get("spike_factor", 0.0))
    where = [f.where for f in spiked][:3]
    found = Found(
        f"the gradients exploded in {len(series)} bursts, each larger than the last (from "
        f"{series[0][1]:.3g} at step {start} to {series[-1][1]:.3g} at step {series[-1][0]}), "
        f"until they went non-finite at step {nan_at}"
        + (f", starting in {', '.join(where)}" if where else ""),
        start,
        where,
        {"bursts": [list(b) for b in series], "nonfinite_step": nan_at},
        "critical",
    )
    fell = _fell_without_bound(facts)
    if fell is not None and fell.first_step is not None and fell.first_step <= start:
        # a loss with no minimum (nll_loss on raw scores) drives its logits without end, and
        # every gradient through them grows with them
        found.consequence_of = (
            f"the loss fell below zero without bound from step {fell.first_step}: the "
            "gradients grew with the logits it drove"
        )
    return found


def _recurrent_origin(facts: RunFacts, found: Found) -> tuple[str, float] | None:
    """The recurrent module (``nn.RNN``/``LSTM``/``GRU``, a cell, or a module the forward applied
    in a recurrence, listed by the Monitor in the run's config) whose own gradient grew
    ``RECURRENT_GROWTH`` times by the growth finding, when the finding named a tensor outside
    every recurrent module. Gradients explode through time inside a recurrence (Pascanu et al.
    2013); the embedding or convolution before it gets the largest gradient only because every
    step of the recurrence adds to it."""
    modules = facts.recurrent_modules
    named = found.where[0] if found.where else ""
    if not modules or any(_inside(named, m) for m in modules):
        return None
    best = None
    for module in modules:
        prefix = GRAD_NORM.key(module + ".")
        factors = [
            _grew_by(facts, name, found.first_step)
            for name in facts.names
            if name.startswith(prefix)
        ]
        factor = max(factors, default=0.0)
        if factor >= RECURRENT_GROWTH and (best is None or factor > best[1]):
            best = (module, factor)
    return best


def _grew_by(facts: RunFacts, name: str, until: int) -> float:
    """How many times a series' largest value over the last 3 readings up to ``until`` stands
    above its median over the first half of the span (0 when there is too little to say)."""
    steps, values = facts.series(name)
    values = values[np.isfinite(values) & (steps <= until)]
    if len(values) < 6:
        return 0.0
    early = float(np.median(values[: len(values) // 2]))
    return float(values[-3:].max() / early) if early > 0 else 0.0


def _amplified_at(facts: RunFacts, step: int) -> float | None:
    """:func:`_gradient_over_loss` at ``step`` when ``ONE_OFF`` or more: the network multiplied
    the gradient on its way back (None otherwise)."""
    times = _gradient_over_loss(facts, step)
    return times if times is not None and times >= ONE_OFF else None
