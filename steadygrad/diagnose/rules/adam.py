"""Adam's second moment poisoned by a gradient spike: how far, and for how long, the updates it
damped shrank (``adam_second_moment_poisoned``).
"""

from __future__ import annotations

import math

import numpy as np

from steadygrad.core import Finding
from steadygrad.core.metrics import GRAD_NORM, LOSS, UPDATE_RATIO
from steadygrad.diagnose.detectors.training import GRAD_NORM_SPIKE, LOSS_SPIKE
from steadygrad.diagnose.detectors.transformer import GRADIENT_SPIKE
from steadygrad.diagnose.detectors.trends import LOSS_DIVERGENCE
from steadygrad.diagnose.rules.base import Found, layer_span
from steadygrad.diagnose.rules.facts import RunFacts
from steadygrad.diagnose.rules.rates import RESTART_WITHIN, _jolted_by_a_restart
from steadygrad.diagnose.rules.series import _in_a_climb, _skipped_steps

# Steps after a spike during which its first moment still drives large updates (beta1 = 0.9
# keeps 0.9**20 = 12% of it); the second moment's damping is judged after them.
MOMENTUM_MEMORY = 20
POISON_BEYOND_CONTROL = 0.5  # a per-tensor spike's tensors slowed twice as much as the rest
# Optimizers that clip a spike before it reaches their moments (SPAM: entries above
# theta * v become sqrt(theta * v); Stable-SPAM clips and renormalises too). One spike can then
# raise v at most 1 + theta * (1 - beta2) times: 6x at SPAM's defaults (theta 5000, beta2
# 0.999), updates shrinking to 1/sqrt(6) = 0.41 and back as v decays. A shrink that stays
# within three quarters of that is the clipping working as designed, not a poisoned moment.
SPIKE_CLIPPING = {"SPAM": 0.3, "StableSPAM": 0.3}
# Steps after a spike at which updates still damped say its harm outlived it: the batch that
# made the spike is long gone, the second moment it inflated still holds the run back (Adam's
# beta2 = 0.999 remembers ~1000 steps; a beta2 of 0.95 or RMSprop's 0.99 has forgotten by then
# all but a gradient thousands of times the usual).
OUTLIVED_AFTER = 100


def _update_drop(facts: RunFacts, names: list[str], step: int, lag: int = 0) -> float:
    """Median over ``names`` of each tensor's update ratio over the 50 steps after a spike's
    momentum has passed (and ``lag`` more), against the 50 steps before it (NaN when none has
    both), over the learning rate's own change between those spans (a schedule decaying it
    shrinks every update alike). Steps the optimizer skipped (a GradScaler's overflow) are left
    out: they moved nothing, whatever the second moment held. A spike within the optimizer's
    first MOMENTUM_MEMORY steps is compared with those steps, its drop read ``EARLY_SHRINK``
    times milder: as much as they shrink on their own."""
    skipped = np.asarray(sorted(_skipped_steps(facts)), dtype=float)
    drops = [_after_over_before(*_taken(facts.series(name), skipped), step, lag) for name in names]
    drops = [d for d in drops if math.isfinite(d)]
    if not drops:
        return math.nan
    rates = [_after_over_before(steps, values, step, lag) for steps, values in facts.learning_rates]
    rates = [r for r in rates if math.isfinite(r) and r > 0]
    # against the optimizer's first steps, read as much milder as they shrink on their own
    early = EARLY_SHRINK if step <= MOMENTUM_MEMORY else 1.0
    return float(early * np.median(drops) / (np.median(rates) if rates else 1.0))


def _taken(
    series: tuple[np.ndarray, np.ndarray], skipped: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A series without its readings at the ``skipped`` steps."""
    steps, values = series
    keep = ~np.isin(steps, skipped)
    return steps[keep], values[keep]


def _after_over_before(steps: np.ndarray, values: np.ndarray, step: int, lag: int = 0) -> float:
    """A series' median over the 50 steps after ``step + MOMENTUM_MEMORY + lag`` over its
    median in the 50 steps before ``step`` (NaN when either span is empty or the one before is
    not positive). The span before leaves out the optimizer's first MOMENTUM_MEMORY steps:
    while its first moment has not yet averaged out the gradient's noise, Adam's steps are
    larger (its first is the gradient's sign) and shrink on their own, spike or none. For a
    spike within those steps, the span before is theirs, but for the first step."""
    start = step + MOMENTUM_MEMORY + lag
    since = max(step - 50, MOMENTUM_MEMORY)
    early = since >= step
    if early:
        since = 1
    before = values[(steps < step) & (steps >= since) & np.isfinite(values)]
    after = values[(steps > start) & (steps <= start + 50) & np.isfinite(values)]
    if not len(before) or not len(after) or not np.median(before) > 0:
        return math.nan
    return float(np.median(after) / np.median(before))


# How many times an adaptive optimizer's updates shrink on their own over its first
# MOMENTUM_MEMORY steps, as its moments average out the gradient's noise (2-3x on the bench's
# healthy Adam runs).
EARLY_SHRINK = 3.0


def _strongest_damping(facts: RunFacts, spike: Finding, lag: int = 0, grown: float = 1.0) -> float:
    """The smallest share of their size that updates can keep, in the middle of the span
    :func:`_update_drop` reads, when a spike ``ratio`` times the usual gradient entered the
    optimizer's running square at step ``t``: the square's weight ``w`` then holds
    ``1 + w (ratio**2 - 1)`` times its usual value (``w = (1 - d) d**k / (1 - d**(t + k))``
    for an average that keeps ``d`` per step, with or without Adam's bias correction, which
    cancels; ``1 / (t + k)`` for Adagrad's sum), and steps shrink by its square root. Spread
    evenly over the coordinates the spike damps most (the update's norm is convex in each
    coordinate's inflation), so no spike of that size can damp more. The spike is measured
    against the gradients of that span: where they stood ``grown`` times their usual size (an
    explosion's, which kept coming), it stands that much less above them, and the running
    square holds them too. 0 when not known."""
    decay = facts.second_moment_decay
    ev = spike.evidence
    ratio = ev.get("ratio", ev.get("spike_factor"))
    if decay is None or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        return 0.0
    ratio /= grown
    t, k = spike.step + 1, MOMENTUM_MEMORY + 25 + lag  # t: as if the optimizer began with the run
    if decay == 1.0:
        weight = 1.0 / (t + k)
    else:
        weight = (1 - decay) * decay**k / (1 - decay ** (t + k))
    return 1.0 / math.sqrt(1.0 + weight * max(ratio * ratio - 1.0, 0.0))


# A spike whose square holds this many times the usual second moment dominates it: the
# coordinates it hit then step by about (1 - beta1) / sqrt(1 - beta2) times the rate, whatever
# the gradient says, until the first moment forgets it.
DOMINATES_THE_MOMENT = 100.0


def _thrown_by_the_moments(facts: RunFacts, spike: Finding) -> Found | None:
    """A whole-gradient spike so large that its square dominated the optimizer's second moment,
    on a batch whose loss was ordinary (no loss spike at its step: a loss scaled once, not bad
    data), after which the loss climbed away within ``MOMENTUM_MEMORY`` steps, before any
    damping could be read: the spike's moments stepped every coordinate it touched by about
    ``(1 - beta1) / sqrt(1 - beta2)`` times the rate, in its direction, for the ~1/(1 - beta1)
    steps the first moment takes to forget it (Adam's defaults: 3x the rate, 30x summed)."""
    decay, ratio = facts.second_moment_decay, spike.evidence.get("ratio")
    if spike.kind != GRAD_NORM_SPIKE or decay is None or decay >= 1.0:
        return None  # a running sum (Adagrad) keeps a spike without stepping by it
    if facts.optimizer in SPIKE_CLIPPING or not isinstance(ratio, (int, float)):
        return None  # the optimizer clips a spike before its moments take it
    if not (1.0 - decay) * ratio * ratio >= DOMINATES_THE_MOMENT:
        return None
    if any(spike.step - 1 <= f.step <= spike.step for f in facts.of(LOSS_SPIKE)):
        return None  # the batch's own loss was out of line: bad data, judged elsewhere
    climbed = _climb_after(facts, spike.step)
    if climbed is None:
        return None
    hit = sorted({f.where for f in facts.of(GRADIENT_SPIKE) if f.step == spike.step and f.where})
    return Found(
        f"a gradient {ratio:.3g}x its usual size at step {spike.step}, on a batch whose loss was "
        f"ordinary (a loss scaled once, not bad data), dominated {facts.optimizer}'s moments: "
        f"for the steps after it, its first moment stepped every weight it touched by about "
        f"{(1 - 0.9) / math.sqrt(1.0 - decay):.2g}x the learning rate (at beta1 0.9) in one direction, and "
        f"the loss climbed away from step {climbed}",
        spike.step,
        [spike.where] if spike.where else hit,
        {"spike": spike.evidence, "climbed_at": climbed, "thrown_by_the_moments": True},
    )


def _adam_poisoned(facts: RunFacts) -> Found | None:
    """A gradient spike under an optimizer that divides by a running square of the gradient,
    after which the updates shrank: the spike's square inflated the second moment, which then
    damps updates for ~1/(1-beta2) steps. Each tensor's median update ratio over the 50 steps
    before the spike is compared with the 50 after its momentum has passed (the median of the
    drops of the tensors found spiking at that step, else of every tensor). When a spike hit
    some tensors only, they must have slowed beyond the tensors it missed. A spike that came
    once the loss was already climbing is part of that divergence, not what set it off."""
    # a spike on a tensor that carries a small share of the gradient (info) poisons nothing;
    # a global spike the loss did not feel (info) still can, when its damping lasted
    spikes = [
        f
        for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE)
        if f.kind == GRAD_NORM_SPIKE or f.severity != "info"
    ]
    if not spikes or not facts.adaptive:
        return None
    ratios = [n for n in facts.names if UPDATE_RATIO.owns(n)]
    for spike in spikes:
        if _in_a_climb(facts, spike.step):
            continue  # the loss was already climbing: a spike of the divergence, not its cause
        thrown = _thrown_by_the_moments(facts, spike)
        if thrown is not None:
            return thrown
        if facts.averages_iterates:
            # the weights are an average of the iterates (schedule-free): their steps shrink
            # as the average grows, a drop no spike needs to have made
            continue
        # a spike poisons the moments of the tensors it hit: those found spiking at its step
        # (a global spike, or one whose tensors have no updates recorded: every tensor)
        at_step = [f for f in spikes if f.step == spike.step]
        hit = {f.where for f in at_step if f.kind == GRADIENT_SPIKE}
        mine = [n for n in ratios if n.split("/", 1)[1] in hit]
        limit = SPIKE_CLIPPING.get(facts.optimizer, 0.5)
        # Read once the spike's momentum has passed; where the loss climbed meanwhile, its
        # grown gradients hide the damping until the loss is back down: read again
        # OUTLIVED_AFTER steps on (what a spike that size can still damp there, and no more)
        drop = _damping(facts, mine, ratios, spike, limit, at_step, 0)
        when = "after it"
        if not drop < limit and _climb_after(facts, spike.step) is not None:
            drop = _damping(facts, mine, ratios, spike, limit, at_step, OUTLIVED_AFTER)
            when = f"once the loss it threw up had come down ({OUTLIVED_AFTER} steps on)"
        where = [spike.where] if spike.where else sorted(hit)  # the tensors it hit
        if not drop < limit:
            # most tensors it hit kept their pace; a few may still have been all but stopped
            deep = _deeply_damped(facts, mine, ratios, spike.step, at_step)
            if not deep:
                continue
            drop, where = min(deep.values()), sorted(deep)
            mine = [f"{UPDATE_RATIO.name}/{name}" for name in where]
            when = f"after it in {layer_span(where)} (the others it hit kept their pace)"
        found = Found(
            f"a gradient spike at step {spike.step} poisoned {facts.optimizer}'s second "
            f"moment: the updates {when} shrank to {_share(drop)} of their size before",
            spike.step,
            where,
            {"spike": spike.evidence, "update_ratio_after_over_before": drop},
        )
        lasting = _update_drop(facts, mine or ratios, spike.step, OUTLIVED_AFTER)
        if spike.severity == "info" and not lasting < 0.5:
            # a spike the loss did not feel, whose damping had passed within OUTLIVED_AFTER
            # steps: early in training Adam's steps shrink as much on their own
            continue
        if not lasting < 0.5 and not _held_back(facts, spike.step):
            continue  # the loss went on at its pace: the smaller steps held nothing back
        if lasting < 0.5:
            found.evidence["update_ratio_later_over_before"] = lasting
            found.outlived = (
                f"{OUTLIVED_AFTER} steps on they were still at {_share(lasting)}: the spike's "
                "harm outlived it"
            )
            found.set_off_by = ("data_outlier",)  # the batch behind the spike, when there was one
            if lasting != drop:  # not already read that late
                found.summary += f"; {found.outlived}"
        restarted = _jolted_by_a_restart(facts, spike.step)
        if restarted is not None and spike.step - restarted <= RESTART_WITHIN:
            found.consequence_of = (
                f"the optimizer's state started again from nothing at step {restarted}: its "
                "moments began again from the gradients of the jolt that restart made"
            )
        return found
    return None


# The loss's level and pace are read over spans of PACE_SPAN records: the two before a spike,
# and the two after its momentum has passed (MOMENTUM_MEMORY).
PACE_SPAN = 25


def _held_back(facts: RunFacts, step: int) -> bool:
    """Whether the loss, once the spike at ``step`` had passed through the first moment, was
    held back: it stood above its level before the spike, or fell at under half the pace it
    fell before it (each pace the log of one span's median loss over the next one's). A
    poisoned second moment damps every step after: the run stalls, or fails to win back what
    the spike's update cost; one that goes on at its pace took the smaller steps in its stride.
    True where the spans are not all there, finite and positive (the run ended, or broke, too
    soon; a loss below zero has no pace as a ratio)."""
    series = facts.series(LOSS.name)
    if series is None:
        return True
    steps, values = series
    after = step + MOMENTUM_MEMORY
    levels = []
    for start in (step - 2 * PACE_SPAN, step - PACE_SPAN, after, after + PACE_SPAN):
        span = values[(steps >= start) & (steps < start + PACE_SPAN)]
        if not len(span) or not np.isfinite(span).all() or not np.median(span) > 0:
            return True
        levels.append(float(np.median(span)))
    earlier, before, first_after, later = levels
    pace_before, pace_after = math.log(earlier / before), math.log(first_after / later)
    return later > before or pace_after < pace_before / 2


def _share(x: float) -> str:
    """A share as a percentage, two significant figures below 1% (0.01%, not 0%)."""
    return f"{x:.0%}" if x >= 0.01 else f"{100 * x:.2g}%"


def _damping(
    facts: RunFacts,
    mine: list[str],
    ratios: list[str],
    spike: Finding,
    limit: float,
    at_step: list[Finding],
    lag: int,
) -> float:
    """How far the updates shrank after ``spike`` (``lag`` steps past its momentum), or NaN
    where no shrink the spike could have made is seen: none, one beyond what a spike of its
    size can damp, or (a spike on some tensors only) one no larger than those it missed show.
    Adam's steps also shrink on their own early in training (the gradient's noise grows
    against its mean); the spike's poisoning is the part beyond what the others show."""
    drop = _update_drop(facts, mine or ratios, spike.step, lag)
    grown = _grown_since(facts, spike.step, lag)
    if not drop < limit or _strongest_damping(facts, spike, lag, grown) >= limit:
        return math.nan
    if mine and not any(f.kind == GRAD_NORM_SPIKE for f in at_step):
        missed = _update_drop(facts, [n for n in ratios if n not in mine], spike.step, lag)
        if drop >= POISON_BEYOND_CONTROL * missed:  # NaN: no control to compare with
            return math.nan
    return drop


# A tensor whose updates fell to this share of their size after a spike hit it, and to
# POISON_BEYOND_CONTROL of what the tensors it missed kept, was all but stopped by it: its
# running square took the spike's square, whatever the other tensors it hit did (one whose own
# gradient is tiny next to the spike's share of it: an embedding of a scalar input).
DEEP_DAMPING = 0.1


def _deeply_damped(
    facts: RunFacts, mine: list[str], ratios: list[str], spike: int, at_step: list[Finding]
) -> dict[str, float]:
    """The tensors the spike at step ``spike`` hit (``mine``, their update-ratio series) whose
    updates it all but stopped: ``DEEP_DAMPING`` of their size before or less, and
    ``POISON_BEYOND_CONTROL`` of the drop of the tensors it missed (when it hit every tensor,
    of the others it hit: a spike fills the running square of the tensors whose own gradient
    it dwarfs, and leaves the rest at their pace), and within what a spike of their own size
    can damp; by tensor name. Empty when no tensor was."""
    missed = [n for n in ratios if n not in mine]
    own = {f.where: f for f in at_step if f.kind == GRADIENT_SPIKE}
    drops = {name: _update_drop(facts, [name], spike) for name in mine}
    kept = _update_drop(facts, missed, spike) if missed else math.nan
    grown = _grown_since(facts, spike, 0)
    deep = {}
    for name, drop in drops.items():
        tensor = name.split("/", 1)[1]
        hit = own.get(tensor)
        if hit is None or not drop < DEEP_DAMPING:
            continue
        control = kept
        if not missed:  # the median of the others it hit (each drop over the same rate change)
            others = [d for n, d in drops.items() if n != name and math.isfinite(d)]
            control = float(np.median(others)) if others else math.nan
        if not drop < POISON_BEYOND_CONTROL * control:
            continue
        if _strongest_damping(facts, hit, 0, grown) < DEEP_DAMPING:
            deep[tensor] = drop
    return deep


def _grown_since(facts: RunFacts, step: int, lag: int) -> float:
    """How many times the usual norm (the median of the 50 steps before ``step``) the whole
    gradient's median stood over the span :func:`_update_drop` reads (``lag`` steps past the
    spike's momentum); 1 where it did not stand above it or is not known."""
    series = facts.series(GRAD_NORM.name)
    if series is None:
        return 1.0
    steps, norms = series
    usual = norms[(steps < step) & (steps >= step - 50) & np.isfinite(norms)]
    start = step + MOMENTUM_MEMORY + lag
    after = norms[(steps > start) & (steps <= start + 50) & np.isfinite(norms)]
    if not len(usual) or not len(after) or not np.median(usual) > 0:
        return 1.0
    return max(1.0, float(np.median(after) / np.median(usual)))


def _climb_after(facts: RunFacts, step: int) -> int | None:
    """The first step within MOMENTUM_MEMORY steps after ``step`` at which the loss climbed
    away (a loss divergence, not info), or None."""
    climbs = [
        f.step
        for f in facts.of(LOSS_DIVERGENCE)
        if f.severity != "info" and step < f.step <= step + MOMENTUM_MEMORY
    ]
    return min(climbs, default=None)
