"""Gradient spikes and loss spikes: where a spike was, what made it, and whether the loss felt it
(``gradient_spike``, ``loss_spike``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from steadygrad.core import Finding, Severity
from steadygrad.core.metrics import GRAD_NORM, LOSS
from steadygrad.diagnose.detectors.training import (
    GRAD_NORM_SPIKE,
    HARD_BATCH,
    LOSS_SPIKE,
    NEW_STAGE,
    NONFINITE,
    NONFINITE_ORIGIN,
    RECURS_EVERY,
)
from steadygrad.diagnose.detectors.transformer import GRADIENT_SPIKE
from steadygrad.diagnose.detectors.trends import GRADIENT_GROWTH, GROWTH_BEGAN, LOSS_DIVERGENCE
from steadygrad.diagnose.rules.amplification import _bursts_through_time, _overflowing_around
from steadygrad.diagnose.rules.base import Found, _inside, _serious, layer_span
from steadygrad.diagnose.rules.facts import (
    CONFIRMED_SOON,
    REPLACED,
    RunFacts,
    _finite_until,
    _put_back_into_a_climb,
    _raised_before,
    _rate_bursts,
    _replaced_at,
    _replaced_modules,
)
from steadygrad.diagnose.rules.logits import _fell_without_bound
from steadygrad.diagnose.rules.rates import (
    RESTART_JUMP,
    _burst_said,
    _passed_just_before,
    _restart_jolt,
    _restarted_before,
)
from steadygrad.diagnose.rules.series import _batches_behind, _in_a_climb, _jump, _recurring
from steadygrad.diagnose.rules.weights import _overstepped_before


def _gradient_spike(facts: RunFacts) -> Found | None:
    spikes = facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE)
    if not spikes:
        return None
    minor = all(f.severity == Severity.INFO for f in spikes)  # each a small share of its step
    # the global norm's spikes say whether clipping hid them, whatever the tensors' severity
    hidden = [f for f in spikes if f.evidence.get("hidden_by_clipping")]
    spikes = _serious(spikes)
    first = spikes[0]
    ev: dict[str, Any] = {"spikes": len(spikes), "first": first.evidence}
    summary = f"{len(spikes)} gradient spike(s), the first at step {first.step}"
    if first.where:
        summary += f" in {first.where}"
    if hidden:
        ev["hidden_by_clipping"] = len(hidden)
        h = hidden[0].evidence
        summary += (
            f" (hidden by clipping: {len(hidden)} spike(s) reached "
            f"{h.get('grad_norm_preclip', math.nan):.3g} before clipping, "
            f"{h.get('clipped_to', math.nan):.3g} after; the logged grad norm looked normal)"
        )
    summary += _batches_behind(spikes, ev)
    # the spike's update goes on for as long as the optimizer's momentum carries it, and what
    # it did is confirmed up to CONFIRMED_SOON steps after that
    reach = first.step + facts.spike_carried + CONFIRMED_SOON
    felt = [
        f.step
        for f in facts.of(LOSS_SPIKE)
        if f.severity != "info" and first.step < f.step <= reach
    ]
    climbed = [
        f.step
        for f in facts.of(LOSS_DIVERGENCE)
        if f.severity != "info" and first.step < f.step <= reach
    ]
    # a loss that jumped at the spike's own step made it (a batch, weights replaced): the
    # climb after is the jump's, not the spike's update's
    jumped = any(f.step == first.step and f.severity != "info" for f in facts.of(LOSS_SPIKE))
    if minor and felt:
        # the loss did not feel it at once, but spiked within a few steps of its update, with
        # nothing between (an adaptive or momentum step carries a kick over several steps)
        minor = False
        ev["loss_spike_at"] = felt[0]
        summary += f"; the loss spiked {felt[0] - first.step} step(s) after it"
    elif minor and climbed and not jumped:
        # or left its level for good within a few steps: the spike's update threw the weights
        minor = False
        ev["loss_climbed_at"] = climbed[0]
        summary += (
            f"; the loss climbed away from its level {climbed[0] - first.step} step(s) after it"
        )
    staged = {f.step for f in facts.of(LOSS_SPIKE) if f.evidence.get(NEW_STAGE)}
    if not minor and all(f.step in staged for f in spikes):
        # each at a step up of the loss that then held its new level after an ordinary update
        # (see the loss-spike rule): the larger gradients of a new stage's harder batches
        minor = True
        summary += (
            "; each came with the loss's step up to a new level it then held: the gradients "
            "of a new stage of the data, as large as its batches' loss"
        )
    where = _most_spiked(spikes)
    if not where and (where := _spiked_tensors(facts, first.step)):
        summary += f" (furthest above its usual level: {layer_span(where)})"
    found = Found(summary, first.step, where, ev, "info" if minor else None)
    found.consequence_of = _spike_made_by(facts, first.step)
    return found


# Readings before a spike that give a tensor's usual gradient norm.
USUAL_OVER = 20


def _spiked_tensors(facts: RunFacts, step: int) -> list[str]:
    """Where a spike of the whole gradient at ``step`` was, when no tensor's own spike was
    found: the tensors whose gradient stood furthest above its usual level (the median of its
    ``USUAL_OVER`` readings before), half the furthest or more, most first; a tensor whose
    gradient there was a thousandth of the step's largest or less (rounding) left out."""
    rises: dict[str, tuple[float, float]] = {}
    for name in facts.names:
        if not (GRAD_NORM.owns(name) and "/" in name):
            continue
        steps, values = facts.series(name)
        at, before = values[steps == step], values[(steps < step) & (steps >= step - USUAL_OVER)]
        before = before[np.isfinite(before)]
        if len(at) and np.isfinite(at[0]) and len(before) and np.median(before) > 0:
            rises[name.split("/", 1)[1]] = (float(at[0] / np.median(before)), float(at[0]))
    if not rises:
        return []
    largest = max(norm for _, norm in rises.values())
    rises = {k: r for k, (r, norm) in rises.items() if norm > 1e-3 * largest}
    top = max(rises.values(), default=0.0)
    return sorted((k for k, r in rises.items() if r >= top / 2), key=lambda k: -rises[k])


def _most_spiked(spikes: list[Finding]) -> list[str]:
    """The tensors of ``spikes``, step by step, each step's the most above its own running
    level first (a block whose gradient was scaled up leads the layers it flowed back
    through); a tensor whose gradient there was a thousandth of the step's largest or less
    (a bias before a norm, whose gradient is rounding) last."""
    largest: dict[int, float] = {}
    for f in spikes:
        largest[f.step] = max(largest.get(f.step, 0.0), f.evidence.get("grad_norm", 0.0))

    def order(f: Finding) -> tuple:
        material = f.evidence.get("grad_norm", 0.0) > 1e-3 * largest[f.step]
        # the name last: tensors spiked alike (an RNN's two biases) in one order every time
        return (f.step, not material, -f.evidence.get("spike_factor", 0.0), f.where or "")

    return list(dict.fromkeys(f.where for f in sorted(spikes, key=order) if f.where))


def _edge_reached_after(facts: RunFacts, step: int) -> tuple[int, str] | None:
    """(the step, the module) of a NaN the loss made after ``step`` from a module's output that
    held values at an edge (exact zeros, or negatives among positives: see
    :meth:`ActivationSignal._in_the_loss`), or that an operation with an edge
    (``EDGED_OPERATIONS``: a root, a log, a division) took past it, as the replay of the step
    found: within ``CONFIRMED_SOON`` steps, when the loss at
    ``step`` did not spike (the gradient leapt as that output neared the edge); or within
    ``NEARING_EDGE`` steps, when the gradient spiked in that very module: a log or a root near
    its edge makes the loss and its gradient leap together, on the module that feeds it."""
    spiked = {f.where for f in facts.of(GRADIENT_SPIKE) if f.step == step and f.where}
    jumped = any(f.step == step and f.severity != "info" for f in facts.of(LOSS_SPIKE))
    for f in facts.of(NONFINITE, NONFINITE_ORIGIN):
        origin = f.evidence.get("forward_origin") or {}
        edge = str(origin.get("in_the_loss", "")).startswith("its output held")
        edge = edge or origin.get("operation") in EDGED_OPERATIONS
        module = origin.get("module")
        if not edge or not module or f.step <= step:
            continue
        if not jumped and f.step <= step + CONFIRMED_SOON:
            return f.step, module
        if f.step <= step + NEARING_EDGE and any(_inside(t, module) for t in spiked):
            return f.step, module
    return None


# The operations (named as the replay's FirstNonFinite names them: `a / b` is "div", `1 / x`
# "__rdiv__", `x ** 0.5` "pow") whose slope is unbounded where their input nears an edge
# (zero): a gradient leaps as an output nears it.
EDGED_OPERATIONS = frozenset(
    ("sqrt", "rsqrt", "log", "log2", "log10", "log1p", "reciprocal", "div", "true_divide")
    + ("__rdiv__", "pow", "__rpow__")
)


# Steps before a NaN made at an edge within which a gradient spike in the module whose output
# crossed it was that output nearing the edge.
NEARING_EDGE = 2 * CONFIRMED_SOON


def _spike_made_by(facts: RunFacts, step: int) -> str:
    """What made a gradient spike at ``step``, when something else did ('' when nothing):
    a climb already under way, a runaway it began, weights thrown by the step before or by an
    optimizer started again, an explosion it rode on, a non-finite loss it came with."""
    loss = facts.series(LOSS.name)
    at = loss[1][loss[0] == step] if loss is not None else []
    if len(at) and not np.isfinite(at[0]):
        return (
            f"the loss of step {step} itself was not finite: the gradient came back through "
            "the values that made it (a log or a root is steep where its input crosses zero), "
            "part of that non-finite value, not a cause before it"
        )
    edge = _edge_reached_after(facts, step)
    if edge is not None:
        broke, module = edge
        return (
            f"the loss made a NaN from {module}'s output {broke - step} step(s) later, where "
            "that output crossed the edge its log or root takes (zero): such a function is "
            "steep near its edge, and a gradient that leaps there is the NaN's approach, not a "
            "cause before it"
        )
    if _in_a_climb(facts, step):
        return (
            f"the loss was already climbing from step {facts.climbing_from}: the spikes came "
            "with the divergence, not before it"
        )
    fell = _fell_without_bound(facts)
    if fell is not None and fell.first_step is not None and fell.first_step < step:
        return (
            f"the loss was already falling below zero without bound from step "
            f"{fell.first_step}: the spikes came with the outputs it drove, not before them"
        )
    if _never_came_back(facts, step):
        return (
            f"the gradient norm never came back after step {step}: it rose on with the loss, "
            "the first step of a runaway, not a spike"
        )
    if (jump := _shifted_with_the_loss(facts, step)) is not None:
        return (
            f"the loss had already jumped {jump:.3g}x at step {step}, before that step's "
            "update, and neither it nor the gradient norm came back: what the model is asked "
            "to fit changed there (the gradient follows the loss), the first step of a "
            "runaway, not a spike"
        )
    if (moved := _overstepped_before(facts, step)) is not None:
        return (
            f"the update before step {step} moved the weights {moved:.3g}x their usual step on "
            "an ordinary gradient: the gradient is that of where they landed"
        )
    if any(f.step == step for f in facts.of(LOSS_SPIKE)) and _replaced_at(facts, step, {step}):
        return (
            f"the weights were replaced between steps at step {step}, further than this "
            "optimizer's step moves them (a checkpoint reloaded, a layer initialised again), "
            "and the loss jumped with them before any update: the gradient is that of the "
            "weights put in their place"
        )
    if (restarted := _restarted_before(facts, step)) is not None:
        return (
            f"the optimizer's state started again from nothing at step {restarted}: the "
            "gradient is that of where its first steps threw the weights"
        )
    if (raised := _raised_before(facts, step)) is not None:
        return (
            f"the learning rate was raised 4x or more at a stroke at step {raised}: the "
            "gradient is that of where the raised steps threw the weights"
        )
    bursts = _bursts_through_time(facts)
    if bursts is not None and step >= bursts.first_step:
        return (
            f"the gradients of the recurrent {bursts.where[0]} burst from step "
            f"{bursts.first_step} until one burst overflowed at step "
            f"{bursts.evidence['nonfinite_step']}: an explosion through time, in bursts"
        )
    if (skipped := _overflowing_around(facts, step)) is not None:
        return (
            f"the GradScaler skipped step {skipped} for a float16 overflow: the gradients "
            "around it were at float16's edge, this one just under it"
        )
    if (grown := _riding_a_growth(facts, step)) is not None:
        return (
            f"the gradient norm had already grown {grown[1]:.3g}x since step {grown[0]} and "
            "went on growing until the run broke: a burst of that explosion, not a spike of "
            "its own"
        )
    return ""


# A gradient norm this many times the best level of a growth that broke the run, just before a
# spike, had already grown: the spike rode on the explosion.
RODE_ON = 10.0


def _riding_a_growth(facts: RunFacts, step: int, before: int = 5) -> tuple[int, float] | None:
    """Where a gradient growth that broke the run began, and how many times its best level the
    gradient norm stood (the median of the ``before`` readings) just before ``step``, when that
    growth began before ``step`` and the norm was ``RODE_ON`` times that level or more."""
    growths = [f for f in facts.of(GRADIENT_GROWTH) if f.severity == "critical"]
    grad = _finite_until(facts, GRAD_NORM.name, step - 1)
    if not growths or facts.broke_at is None or grad is None or len(grad[1]) < before:
        return None  # no growth that broke the run
    level = float(np.median(grad[1][-before:]))
    for f in growths:
        began, best = f.evidence.get(GROWTH_BEGAN), f.evidence.get("best_level")
        if not isinstance(began, (int, float)) or began >= step:
            continue
        if isinstance(best, (int, float)) and best > 0 and level >= RODE_ON * best:
            return int(began), level / best
    return None


def _never_came_back(facts: RunFacts, step: int, readings: int = 3) -> bool:
    """Whether the gradient norm at ``step`` was the first of a runaway: at each of the next
    ``readings`` records (or up to the first non-finite one, when it comes sooner, at least one
    before it) the gradient norm stood above it and the loss at or above its own. A spike is a
    step the norm comes back from."""
    grads, loss = facts.series(GRAD_NORM.name), facts.series(LOSS.name)
    if grads is None or loss is None:
        return False
    steps, norms = grads
    at = np.flatnonzero(steps == step)
    l_at = np.flatnonzero(loss[0] == step)
    if not len(at) or not len(l_at):
        return False
    after = norms[at[0] + 1 : at[0] + 1 + readings]
    later_loss = loss[1][l_at[0] + 1 : l_at[0] + 1 + readings]
    finite = np.isfinite(after) & np.isfinite(later_loss[: len(after)])
    cut = int(np.argmin(finite)) if not finite.all() else len(after)
    after, later_loss = after[:cut], later_loss[:cut]
    if not len(after) or (cut == len(finite) and len(after) < readings):
        return False  # the run ended first: nothing to tell
    return bool((after > norms[at[0]]).all() and (later_loss >= loss[1][l_at[0]]).all())


# A loss this many times its recent median, at the very step of a gradient spike, jumped before
# the spike's update could move anything.
JUMPED_FIRST = 4.0


def _shifted_with_the_loss(facts: RunFacts, step: int, readings: int = 5) -> float | None:
    """How many times its recent median the loss stood at ``step`` (before that step's update),
    when it stood ``JUMPED_FIRST`` times or more and, over the next ``readings`` records, both
    the loss and the gradient norm stayed above halfway (in log) from their recent medians to
    their values at ``step``: a level the run moved to with its loss, not a spike of the
    gradient. A spike's update cannot have made the loss of its own step."""
    grads, loss = facts.series(GRAD_NORM.name), facts.series(LOSS.name)
    if grads is None or loss is None:
        return None
    shifted = [_stayed_up(*series, step, readings) for series in (grads, loss)]
    if None in shifted or shifted[1] < JUMPED_FIRST:
        return None
    return shifted[1]


def _stayed_up(steps: np.ndarray, values: np.ndarray, step: int, readings: int) -> float | None:
    """The value at ``step`` over the median of the 10 before it, when each of the next
    ``readings`` values stayed above their geometric mean (None otherwise, or when not all
    are finite and positive)."""
    at = np.flatnonzero(steps == step)
    if not len(at) or at[0] < 3:
        return None
    i = at[0]
    before, now, after = values[max(i - 10, 0) : i], values[i], values[i + 1 : i + 1 + readings]
    window = np.concatenate([before, [now], after])
    if len(after) < readings or not (np.isfinite(window).all() and (window > 0).all()):
        return None
    base = float(np.median(before))
    if now <= base or not (after > math.sqrt(now * base)).all():
        return None
    return float(now / base)


def _burst_jolt(facts: RunFacts, before: int = 20) -> Found | None:
    """The loss rose ``RESTART_JUMP`` times the median of the ``before`` losses before a burst
    of the learning rate (see :func:`_rate_bursts`), during it or ``CONFIRMED_SOON`` steps
    after: a jolt the glitch made, though no loss spike was found (a loss near zero climbs out
    of its floor over a few steps rather than in one)."""
    loss = facts.series(LOSS.name)
    if loss is None:
        return None
    steps, values = loss
    for rose, back, factor in _rate_bursts(facts):
        usual = values[(steps < rose) & (steps >= rose - before) & np.isfinite(values)]
        during = (steps >= rose) & (steps <= back + CONFIRMED_SOON) & np.isfinite(values)
        if len(usual) < before // 2 or not during.any() or not np.median(usual) > 0:
            continue
        i = np.flatnonzero(during)[int(np.argmax(values[during]))]
        jump = float(values[i] / np.median(usual))
        if jump >= RESTART_JUMP or _past_its_spread(float(values[i]), usual):
            return Found(
                f"the loss rose {jump:.3g}x by step {int(steps[i])}, after "
                f"{_burst_said((rose, back, factor))}: a glitch of the schedule, over before the "
                "run could train at it",
                rose,
                [],
                {"learning_rate_raised_at": rose, "put_back_at": back, "jump": jump},
            )
    return None


# How many of its median absolute deviations a loss must rise above its median, and above every
# loss before, for a rate burst's jolt: a ratio fits a loss near zero; a language model's
# loss in nats has a floor far from zero, and a glitch that lifts it from 2.7 to 3.6 (set 119's
# GLM restart at 40x the rate) is as plain as a 3x jump elsewhere.
JOLT_SPREADS = 6.0


def _past_its_spread(value: float, usual: np.ndarray) -> bool:
    """Whether ``value`` stands above every loss of ``usual`` and ``JOLT_SPREADS`` of their
    median absolute deviations above their median."""
    middle = float(np.median(usual))
    spread = float(np.median(np.abs(usual - middle)))
    return value > float(usual.max()) and spread > 0 and value - middle >= JOLT_SPREADS * spread


def _loss_spike(facts: RunFacts) -> Found | None:
    spikes = facts.of(LOSS_SPIKE)
    if not spikes:
        return _put_back_into_a_climb(facts) or _restart_jolt(facts) or _burst_jolt(facts)
    first = spikes[0]
    ev: dict[str, Any] = {"spikes": len(spikes), "first": first.evidence}
    summary = (
        f"{len(spikes)} loss spike(s), the first at step {first.step} ({_jump(first.evidence)})"
    )
    restarted = _restarted_before(facts, first.step)
    if restarted is not None:
        ev["optimizer_restarted_at"] = restarted
        summary += (
            f"; the optimizer's state started again from nothing at step {restarted}: a resume "
            "that loaded the model's weights but not the optimizer's state"
        )
    passed = _passed_just_before(facts, first.step)
    if passed:
        ev["learning_rate_raised_at"] = _raised_before(facts, first.step)
        summary += f"; {passed}"
    summary += _batches_behind(spikes, ev)
    grads = {f.step for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE)}
    replaced = [f.step for f in spikes if _replaced_at(facts, f.step, grads)]
    where: list[str] = []
    if replaced:
        ev["weights_replaced_at"] = replaced
        where = _replaced_modules(facts, replaced[0])
        summary += (
            f"; at step {replaced[0]} the weights' norm moved {REPLACED:g}x or more its usual "
            "step: they were replaced between steps (an EMA swap, a checkpoint reload, a "
            "replica sync), not moved by a batch's gradient"
        )
    elif (moved := _overstepped_before(facts, first.step)) is not None:
        ev["overstepped_before"] = moved
        summary += (
            f"; the update just before it moved the weights {moved:.3g}x their usual step on an "
            "ordinary gradient: the optimizer threw them (its state lost on a resume, a "
            "learning-rate glitch), not the batch"
        )
    thrown = restarted is not None or passed or replaced or "overstepped_before" in ev
    # the stage's first batch has its larger gradient too: only one before it threw the weights
    after_spikes = all(grads.isdisjoint(range(f.step - 3, f.step)) for f in spikes)
    if all(f.evidence.get(NEW_STAGE) for f in spikes) and after_spikes and not thrown:
        summary += (
            "; after an ordinary update the loss held each new level, or fell from it, over the "
            "next records: what the model is asked to fit stepped up there (a curriculum's "
            "next stage, hard negatives, a new task's loss joining the sum), not a spike"
        )
        return Found(summary, first.step, where, ev, severity="info")
    if all(f.evidence.get(HARD_BATCH) for f in spikes):
        summary += (
            "; each came with a gradient of the usual size and the loss back inside its band "
            "at the next step: hard batches the updates did not feel"
        )
        return Found(summary, first.step, where, ev, severity="info")
    periods = [_recurring(facts, f) for f in spikes]
    # each a batch of a kind the stream recurs with, or one the update did not feel
    absorbed = all(p or f.evidence.get(HARD_BATCH) for p, f in zip(periods, spikes, strict=True))
    if absorbed and any(periods):
        ev[RECURS_EVERY] = next(p for p in periods if p)
        summary += (
            f"; the loss stood out alike every {ev[RECURS_EVERY]} records around each (or the "
            "update did not feel it): a kind of batch that recurs in the stream, absorbed each "
            "time"
        )
        return Found(summary, first.step, where, ev, severity="info")
    return Found(summary, first.step, where, ev)
