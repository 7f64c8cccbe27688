"""Loss of plasticity: units that died or a rank that collapsed, and tensors no input reaches any
more (``loss_of_plasticity``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from steadygrad.core import Finding
from steadygrad.core.metrics import (
    ACT_RMS,
    DEAD_UNITS,
    GRAD_NORM,
    LOGIT_LSE_MEAN,
    LOSS,
    OUTPUT_SCALE,
    RELU_ACTIVE,
    SATURATED,
    SOFTMAX_COLLAPSE,
    UPDATE_RATIO,
    ZEROED_UNITS,
)
from steadygrad.diagnose.detectors.base import PREVIOUS_READING
from steadygrad.diagnose.detectors.training import GRAD_NORM_SPIKE, NONFINITE
from steadygrad.diagnose.detectors.transformer import (
    GRADIENT_SPIKE,
    LOSS_OF_PLASTICITY,
    UPDATE_RATIO_OUT_OF_RANGE,
)
from steadygrad.diagnose.rules.base import Found, _natural, _running_medians, layer_span
from steadygrad.diagnose.rules.facts import (
    BURST_READ,
    ENDED_OVER,
    EXPLOSION_LEAD,
    RunFacts,
    _ended_at,
    _ended_below,
    _leading_into,
    _raised_before,
    _rate_bursts,
)
from steadygrad.diagnose.rules.nonfinite import _caught_by_scaler
from steadygrad.diagnose.rules.rates import (
    BACK_AT_LEVEL,
    _jolted_by_a_restart,
    _level_before_raise,
    _passed_just_before,
)
from steadygrad.diagnose.rules.rule import _located
from steadygrad.diagnose.rules.series import FIXED_TEMPERATURE, _within_half
from steadygrad.diagnose.rules.weights import _multiplied_every_step, _multiplied_said


def _plasticity(facts: RunFacts) -> Found | None:
    """Dead units or a collapsing rank (see :func:`_units_lost`), each layer named with the
    activation module whose forward read its units where one did (``fc1`` and ``act1``)."""
    found = _units_lost(facts)
    if found is None:
        return None
    # every other layer found losing units (at any severity) whose units mostly died too and
    # stayed dead: the same harm, in more than one place
    others = {f.where for f in facts.of(LOSS_OF_PLASTICITY) if f.where} - set(found.where)
    dead = sorted(
        (w for w in others if _most_died(facts, w, 0) and _stayed_dead(facts, w, 0)), key=_natural
    )
    if dead:
        found.where = found.where + dead
        found.summary += f"; over half of {layer_span(dead)}'s units died too, and stayed dead"
    applied_in = facts.activation_modules
    seen_at = {layer: applied_in[layer] for layer in found.where if layer in applied_in}
    if seen_at:
        found.where = found.where + sorted(set(seen_at.values()) - set(found.where), key=_natural)
        found.evidence["activation_modules"] = seen_at
    return found


def _units_lost(facts: RunFacts) -> Found | None:
    """Dead units or a collapsing rank; units first found dead in the ``EXPLOSION_LEAD`` steps
    before a break that was a gradient explosion (a spike of the gradient norm leading into
    it), or (in a recurrence) only after a break that gradient spikes led into, are its
    casualties, driven out of range by what exploded, not its cause; so are units of a run
    that went on to a non-finite value (not an fp16 overflow a GradScaler caught)."""
    found = _located((LOSS_OF_PLASTICITY,), "loss of plasticity")(facts)
    if found is not None:
        found = _killed_in_a_burst(facts, found)
        found = _killed_in_a_break_got_over(facts, found)
        first = found.first_step
        if first is not None and not (found.consequence_of or found.outlived):
            passed = _passed_just_before(facts, first)
            came_back = not any(_stayed_dead(facts, layer, first) for layer in found.where)
            most = [layer for layer in found.where if _most_died(facts, layer, first)]
            if passed and not came_back and most:
                # the raise passed, most of a layer's units died in it and stayed dead: the
                # loss may be back, the capacity to learn what comes next is not
                found.outlived = (
                    f"over half of {layer_span(most)}'s units died in the jolt of a raise of the "
                    "learning rate that passed, and stayed dead: the raise is over, the capacity "
                    "it cost is not"
                )
                found.set_off_by = ("sharpness_above_limit",)
                found.summary += f"; {found.outlived}"
            elif passed and (came_back or _ended_at_level_before(facts, first)):
                after = (
                    "the units came back after it"
                    if came_back
                    else "the loss ended back at its level before it, the units dead: they cost "
                    "it nothing"
                )
                found.consequence_of = (
                    f"first found at step {first}, just after {passed}; {after}: the raise's "
                    "jolt, not capacity lost"
                )
    else:
        found = _starved(facts)
    if found is None or found.first_step is None or found.outlived:
        return found
    multiplied = _multiplied_every_step(facts)
    if multiplied is not None and not found.consequence_of:
        # every weight multiplied by one factor a step: every pre-activation grows with them,
        # and a unit's inputs drift out of its working range
        found.consequence_of = f"{_multiplied_said(multiplied)}: units die as the weights grow"
        return found
    restarted = _jolted_by_a_restart(facts, found.first_step)
    if restarted is not None:
        found.consequence_of = (
            f"first found at step {found.first_step}, in the jolt of the optimizer's state "
            f"started again from nothing at step {restarted}"
        )
        return found
    broke = facts.broke_at
    if broke is None:
        return _outlived_in_a_run_that_held(facts, found, _stuck_at_the_start(facts) is not None)
    first = found.first_step
    went_nonfinite = [f.step for f in facts.of(NONFINITE) if f.step >= first]
    if went_nonfinite and not _caught_by_scaler(facts):
        # units that are dead output zeros, saturated ones +-1: neither makes a NaN or an Inf,
        # nor lets the weights grow into one; what grew did
        found.consequence_of = (
            f"first found at step {first}, and the run went on to a non-finite value at step "
            f"{min(went_nonfinite)}: dead or saturated units make none, what grew into it did"
        )
    elif first >= broke - EXPLOSION_LEAD and any(
        step >= first for step in _leading_into(facts, broke, GRAD_NORM_SPIKE)
    ):
        found.consequence_of = (
            f"first found at step {found.first_step}, as the gradients exploded into the break "
            f"at step {broke}: units driven out of range by the explosion"
        )
    elif (
        first > broke
        and set(found.where) <= set(facts.recurrent_modules)
        and any(
            step >= broke - EXPLOSION_LEAD
            for step in _leading_into(facts, first, GRAD_NORM_SPIKE, GRADIENT_SPIKE)
        )
    ):
        # a recurrence's units first seen dead only after it broke, with gradients that spiked
        # into the break or since: a hidden state blown up through time drives them out of range
        found.consequence_of = (
            f"first found at step {first} in a recurrence, after the run broke at step {broke} "
            "and gradients spiked around it: units driven out of range by the blow-up"
        )
    elif _stuck_at_the_start(facts) is not None:
        # broken back to where it started, finite, and sat there: as good as a run that held
        return _outlived_in_a_run_that_held(facts, found, stuck=True)
    return found


# Under this share of the rows collapsed at its last reading, a softmax collapse is the rows a
# run fits most surely, not a run stalled on them; logits whose log-partition ended under this
# share of its largest drift have come back, as has a learning rate that ended under this share
# of its level when the units died: what threw them is over.
PARTIAL_COLLAPSE, RECEDED = 0.5, 0.5


def _outlived_in_a_run_that_held(facts: RunFacts, found: Found, stuck: bool = False) -> Found:
    """Units of which a layer lost over half, and that stayed dead, in a run that never broke
    (or, ``stuck``, that broke back to its first loss and sat there, finite, no step throwing
    it any more): the steps that killed them (a rate typed too high, a peak too high) are
    over, and the capacity they cost is what stayed. They rank above the logits the same steps threw
    when those did not last (under ``PARTIAL_COLLAPSE`` of the rows collapsed at the end, and
    no fixed number of ``FIXED_TEMPERATURE`` or more multiplying the logits at the end, or a
    log-partition back under ``RECEDED`` of its largest drift): a share of rows fitted surely,
    or logits thrown and come back, cost nothing that stays; and above the step size's own
    diagnosis once the rate came down (under ``RECEDED`` of its level then): while it stays
    up, the rate is still what to fix."""
    first = found.first_step
    if first is None or found.consequence_of or found.outlived or found.severity == "info":
        return found
    dead = [w for w in found.where if _most_died(facts, w, first) and _stayed_dead(facts, w, first)]
    if not dead:
        return found
    came_down = _rate_came_down(facts, first)
    causes = []
    if stuck or came_down:
        causes.append("sharpness_above_limit")
    collapsed = _last_finite(facts, SOFTMAX_COLLAPSE.name)
    scaled = _last_finite(facts, OUTPUT_SCALE.name)  # a temperature applied the wrong way
    lasts = scaled is not None and scaled >= FIXED_TEMPERATURE  # is still there to fix
    if collapsed is not None and collapsed < PARTIAL_COLLAPSE and not lasts:
        causes.append("softmax_collapse")
    if _receded(facts.series(LOGIT_LSE_MEAN.name)):
        causes.append("output_logit_divergence")
    if not causes:
        return found
    over = ", the rate that killed them has come down" if came_down else ""
    held = "that sat back at its first loss" if stuck else "that did not break"
    found.outlived = (
        f"over half of {layer_span(dead)}'s units died from step {first} and stayed dead, in a "
        f"run {held}{over}: the capacity they cost is what stayed"
    )
    found.set_off_by = tuple(causes)
    found.summary += f"; {found.outlived}"
    return found


def _receded(series: tuple[np.ndarray, np.ndarray] | None) -> bool:
    """Whether the series' last finite reading drifted from its first under ``RECEDED`` of the
    largest drift it made."""
    if series is None:
        return False
    values = series[1][np.isfinite(series[1])]
    drift = np.abs(values - values[0]) if len(values) else values
    return bool(len(drift) and drift[-1] < RECEDED * drift.max())


def _rate_came_down(facts: RunFacts, step: int) -> bool:
    """Whether every optimizer group's learning rate ended under ``RECEDED`` of its largest up
    to ``step``."""
    rates = [(s, v) for s, v in facts.learning_rates if len(v) and (s <= step).any()]
    return bool(rates) and all(v[-1] < RECEDED * v[s <= step].max() for s, v in rates)


def _last_finite(facts: RunFacts, name: str) -> float | None:
    """The series' last finite reading, if any."""
    series = facts.series(name)
    if series is None:
        return None
    finite = series[1][np.isfinite(series[1])]
    return float(finite[-1]) if len(finite) else None


# Steps before the run ended that a tensor's gradient, and every forward statistic of the module
# around it, were last read while the run went on: no input reaches that module any more.
STARVED_FOR = 50
FORWARD = (ACT_RMS, DEAD_UNITS, ZEROED_UNITS, RELU_ACTIVE, SATURATED)


def _forward_last_read(facts: RunFacts) -> dict[str, int]:
    """For every module and every module around one, the last step any forward statistic of
    it (or of a module inside it) was read."""
    last: dict[str, int] = {}
    for name in facts.names:
        if not any(m.owns(name) for m in FORWARD) or not len(steps := facts.series(name)[0]):
            continue
        module = name.split("/", 1)[1]
        while True:
            last[module] = max(last.get(module, -1), int(steps[-1]))
            if "." not in module:
                break
            module = module.rsplit(".", 1)[0]
    return last


def _starved_module(
    facts: RunFacts, parameter: str, forward: dict[str, int]
) -> tuple[str, int] | None:
    """The module around ``parameter`` whose forward statistics (``forward``: the last step
    each module's were read), and the step after which the parameter's gradient, stopped being
    read ``STARVED_FOR`` steps or more before the run ended (both read before): an expert no
    token is routed to any more, a branch no input takes. Its units learn nothing, whatever the
    optimizer does. None otherwise (a layer frozen by hand still runs forward)."""
    grads, last = facts.series(f"{GRAD_NORM.name}/{parameter}"), facts.run.last_step
    if grads is None or len(grads[0]) < 10 or last is None:
        return None
    ended = int(grads[0][-1])
    module = parameter
    while last - ended >= STARVED_FOR and "." in module:
        module = module.rsplit(".", 1)[0]
        if module in forward:
            return (module, ended) if last - forward[module] >= STARVED_FOR else None
    return None


def _never_routed(facts: RunFacts) -> Found | None:
    """Members of a module list (``experts.0``) found unused at the start, none of whose
    gradients was ever read while a sibling's were (``experts.2``), over ``STARVED_FOR`` steps
    or more: an expert no token was ever routed to. Dead code is otherwise harmless (an unused
    pooler); a list whose members learn while one of them never does is not."""
    last = facts.run.last_step
    unused = [
        f
        for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE)
        if f.where and f.evidence.get("direction") == "unused"
    ]
    since = min((f.step for f in unused), default=None)
    if since is None or last is None or last - since < STARVED_FOR:
        return None
    graded = {n.split("/", 1)[1] for n in facts.names if GRAD_NORM.owns(n) and "/" in n}
    members = set()
    for f in unused:
        if f.where in graded:
            continue  # a gradient reached it later
        parts = f.where.split(".")
        at = next((i for i in range(len(parts) - 2, 0, -1) if parts[i].isdigit()), None)
        if at is None:
            continue
        siblings, own = ".".join(parts[:at]) + ".", ".".join(parts[: at + 1])
        if any(n.startswith(own + ".") for n in graded):
            continue  # the member learns, this tensor of it is unused (WaveNet's last residual)
        if any(n.startswith(siblings) for n in graded):
            members.add(own)
    if not members:
        return None
    modules = sorted(members, key=_natural)
    return Found(
        f"no input ever reached {layer_span(modules)}: their gradients were never read, while "
        f"the other members of their lists learnt, to step {last} (an expert no token is "
        "routed to): their units never learnt",
        since,
        modules,
        {"never_reached": len(modules)},
    )


def _starved(facts: RunFacts) -> Found | None:
    """Tensors found frozen whose modules no input reached any more (see
    :func:`_starved_module`), or list members no input ever reached (:func:`_never_routed`):
    their units stopped learning, starved, not frozen by a setting."""
    frozen = [
        f
        for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE)
        if f.severity != "info" and f.where and f.evidence.get("direction") == "frozen"
    ]
    forward = _forward_last_read(facts) if frozen else {}
    starved = [m for f in frozen if (m := _starved_module(facts, f.where, forward)) is not None]
    if not starved:
        return _cut_off(facts, frozen) if frozen else _never_routed(facts)
    if len(starved) < len(frozen):
        return None
    modules = sorted({m for m, _ in starved}, key=_natural)
    since = min(step for _, step in starved)
    return Found(
        f"no input reached {layer_span(modules)} after step {since}: neither their gradients "
        f"nor their forward passes were read again, though the run went on to step "
        f"{facts.run.last_step} (an expert no token is routed to, a branch no input takes): "
        "their units stopped learning",
        since,
        modules,
        {"starved_since": since, "frozen_tensors": len(frozen)},
    )


def _cut_off(facts: RunFacts, frozen: list[Finding]) -> Found | None:
    """Tensors found frozen whose gradient was read, and was exactly 0, from their first
    reading still to the end of the run, with no dead units found: no signal reaches them (an
    input masked to zeros, a path the loss never sees). A setting that freezes a layer leaves
    its gradient (a rate of 0, a tensor left out of the optimizer) or removes it
    (``requires_grad=False``); it never makes it exactly 0."""
    if not frozen or facts.of(LOSS_OF_PLASTICITY):
        return None
    for f in frozen:
        grads = facts.series(f"{GRAD_NORM.name}/{f.where}")
        if grads is None or not _no_gradient(facts, f.where, f.step):
            return None
        if np.any(grads[1][grads[0] >= f.step] != 0.0):
            return None  # a gradient came back: it learns again
    modules = sorted({f.where.rsplit(".", 1)[0] for f in frozen}, key=_natural)
    since = min(f.step for f in frozen)
    return Found(
        f"no gradient reaches {layer_span(modules)}: from step {since} to step "
        f"{facts.run.last_step} the gradient of {layer_span([f.where for f in frozen])} was "
        "exactly 0 (its input masked to zeros, a path the loss never sees): its units never "
        "learn",
        since,
        modules,
        {"zero_gradient_since": since, "frozen_tensors": len(frozen)},
    )


def _killed_in_a_burst(facts: RunFacts, found: Found) -> Found:
    """Units first found dead during a burst of the learning rate that was over soon after (a
    restart without warm-up, a rate set by hand for a few steps): the burst is what killed
    them, and they stayed dead after it: the harm that stayed is what to fix, dated to the
    burst."""
    burst = _rate_burst(facts)
    first = found.first_step
    if burst is None or first is None or not burst[0] <= first <= burst[1] + BURST_READ:
        return found
    start, end, jump = burst
    if not any(_stayed_dead(facts, layer, first) for layer in found.where):
        found.consequence_of = (
            f"first found in a burst of the learning rate ({jump:.3g}x at step {start}, back "
            f"at step {end}), and they came back after it: the burst's jolt was the harm"
        )
        return found
    found.first_step = start
    found.outlived = (
        f"killed in a burst of the learning rate ({jump:.3g}x at step {start}, back at step "
        f"{end}): the burst is over, the dead units stayed"
    )
    found.set_off_by = ("sharpness_above_limit",)
    found.summary += f"; {found.outlived}"
    return found


# Losses before a break within this many times the run's first: the break was its first trouble.
CALM_BEFORE = 2.0


def _killed_in_a_break_got_over(facts: RunFacts, found: Found) -> Found:
    """Units first found dead at the first reading after the run broke (an update far too
    large, one gradient explosion), the run's first trouble (every loss before it within
    ``CALM_BEFORE`` times its first), in a run that came back from the break on its own (every
    loss finite, ending below its best sustained level before it) while the units stayed dead:
    the break is over, the dead units stayed: the harm that stayed is what to fix, dated to the
    break. A run thrown about before it broke was at a step size it could not train at."""
    broke, first = facts.broke_at, found.first_step
    if broke is None or first is None or found.consequence_of or found.outlived:
        return found
    seen = found.evidence.get("first")
    before = seen.get(PREVIOUS_READING) if isinstance(seen, dict) else None
    loss = facts.series(LOSS.name)
    if first < broke or not isinstance(before, int) or before > broke or loss is None:
        return found  # not found at the first reading after the break
    steps, values = loss
    calm = values[steps < broke]
    if not len(calm) or not np.isfinite(values).all() or calm.max() > CALM_BEFORE * calm[0]:
        return found
    # the level it broke from: its best sustained loss before the break
    level = float(np.min(_running_medians(calm, min(5, len(calm)))))
    ended = _ended_below(facts, level)
    if ended is None or not any(_stayed_dead(facts, layer, first) for layer in found.where):
        return found
    found.first_step = broke
    found.outlived = (
        f"killed as the run broke at step {broke}, which it came back from on its own (to "
        f"{ended:.4g}, below its {level:.4g} before the break): the break is over, the dead "
        "units stayed"
    )
    found.set_off_by = ("exploding_gradients", "sharpness_above_limit")
    found.summary += f"; {found.outlived}"
    return found


def _dead_readings(facts: RunFacts, layer: str, since: int) -> Iterator[np.ndarray]:
    """The layer's finite dead (then saturated) fractions read from ``since`` on, one array per
    family the run recorded for it."""
    for family in (DEAD_UNITS, SATURATED):
        series = facts.series(f"{family.name}/{layer}")
        if series is not None:
            steps, values = series
            yield values[(steps >= since) & np.isfinite(values)]


def _most_died(facts: RunFacts, layer: str, since: int) -> bool:
    """Whether half or more of the layer's units read dead (or saturated) at some reading from
    ``since`` on."""
    return any(len(after) and after.max() >= 0.5 for after in _dead_readings(facts, layer, since))


def _stayed_dead(facts: RunFacts, layer: str, since: int) -> bool:
    """The layer's dead (or saturated) fraction at its last reading is still at least half its
    largest since ``since``; or, with no unit dead on every example, the share of its outputs
    its ReLU passes is still at most half its first reading (dying units that stayed so)."""
    for after in _dead_readings(facts, layer, since):
        if len(after) and after.max() > 0:
            return bool(after[-1] >= 0.5 * after.max())
    series = facts.series(f"{RELU_ACTIVE.name}/{layer}")
    if series is None:
        return False
    steps, values = series
    finite = np.isfinite(values)
    after = values[(steps >= since) & finite]
    return len(after) > 0 and bool(after[-1] <= 0.5 * values[finite][0])


def _rate_burst(facts: RunFacts, jump: float = 4.0) -> tuple[int, int, float] | None:
    """The first burst of the learning rate (see :func:`_rate_bursts`), if any."""
    return next(_rate_bursts(facts, jump), None)


def _ended_at_level_before(facts: RunFacts, step: int) -> bool:
    """Whether the median of the run's last ``ENDED_OVER`` losses (all finite) is within
    ``BACK_AT_LEVEL`` of the level the run stood at before the raise of the learning rate just
    before ``step`` (see :func:`_level_before_raise`)."""
    raised, loss = _raised_before(facts, step), facts.series(LOSS.name)
    if raised is None or loss is None or not np.isfinite(loss[1][-ENDED_OVER:]).all():
        return False
    level = _level_before_raise(facts, raised)
    return level is not None and bool(np.median(loss[1][-ENDED_OVER:]) <= BACK_AT_LEVEL * level)


def _no_gradient(facts: RunFacts, parameter: str | None, step: int, records: int = 3) -> bool:
    """The gradient norm of ``parameter`` was exactly 0 at each of the last ``records`` readings
    of its update ratio up to ``step`` (those its frozen finding was made of: ``patience``): no
    gradient reached it (a rate of 0 leaves the gradient as it was); units flickering alive
    between readings do not count against it. With no ratio stored, its last gradients."""
    grads = facts.series(f"{GRAD_NORM.name}/{parameter}") if parameter else None
    if grads is None:
        return False
    steps, values = grads
    ratios = facts.series(f"{UPDATE_RATIO.name}/{parameter}")
    readings = steps if ratios is None else ratios[0]  # with no ratio stored, the gradient's
    read = readings[readings <= step][-records:]
    at = values[np.isin(steps, read)]
    return len(read) == records and len(at) == records and bool(np.all(at == 0.0))


def _stuck_at_the_start(facts: RunFacts) -> float | None:
    """Where the run ended, when back at its first loss with units dead (see
    :func:`_stuck_with_dead_units`)."""
    loss = facts.series(LOSS.name)
    if loss is None or not len(loss[1]):
        return None
    return _stuck_with_dead_units(facts, float(loss[1][0]))


def _stuck_with_dead_units(facts: RunFacts, level: object) -> float | None:
    """Where the run ended (:func:`_ended_at`) when that stood within half of ``level``'s size of
    it (back where the run started, not below) and units were found dead in a layer; None
    otherwise. A step size the run cannot train at keeps throwing it; a run whose first updates
    killed its units sits still at the level it started from, unable to learn."""
    dead = [f for f in facts.of(LOSS_OF_PLASTICITY) if f.severity != "info" and f.where]
    if not dead or not isinstance(level, int | float) or not level > 0:
        return None
    ended = _ended_at(facts)
    if ended is None or not level <= ended:
        return None
    return ended if _within_half(np.array([ended]), level)[0] else None
