"""Steps beyond the stability limit: sharpness above 2/lr, steps that overshot, a rate raised or
rising into a break, a group set far above the rest (``sharpness_above_limit``).
"""

from __future__ import annotations

import math

import numpy as np

from steadygrad.core import Finding
from steadygrad.core.metrics import (
    DIRECTIONAL_SHARPNESS_RATIO,
    GRAD_NORM,
    LOSS,
    OPTIMIZER_FAMILY,
    PARAM_NORM,
    SHARPNESS,
    SHARPNESS_LIMIT,
)
from steadygrad.core.optimizer import GRADIENT_SCALED
from steadygrad.diagnose.detectors.curvature import SHARPNESS_ABOVE_LIMIT
from steadygrad.diagnose.detectors.training import GRAD_NORM_SPIKE, LOSS_SPIKE, NONFINITE
from steadygrad.diagnose.detectors.trends import (
    BROKE_AT_ONCE,
    GRADIENT_GROWTH,
    GROWTH_BEGAN,
    LOSS_DIVERGENCE,
    UNSTABLE_STEPS,
    WRECKED_WEIGHTS,
)
from steadygrad.diagnose.rules.amplification import (
    BORN_EXPLODED,
    _exploded_from_the_start,
    _first_burst,
)
from steadygrad.diagnose.rules.base import (
    Found,
    _breaks,
    _inside,
    _lowest_median,
    _positive,
    layer_span,
)
from steadygrad.diagnose.rules.facts import (
    ENDED_OVER,
    EXPLOSION_LEAD,
    RunFacts,
    _ended_below,
    _finite_until,
    _raised_at_a_stroke,
    _raised_before,
    _replaced_just_before,
)
from steadygrad.diagnose.rules.outliers import _data_outlier
from steadygrad.diagnose.rules.plasticity import _stuck_with_dead_units
from steadygrad.diagnose.rules.rates import (
    JOLTS,
    RESTART_WITHIN,
    _a_passing_raise,
    _jolted_by_a_restart,
    _passed_just_before,
    _rate_set_apart,
)
from steadygrad.diagnose.rules.series import ONE_OFF
from steadygrad.diagnose.rules.weights import _multiplied_every_step, _multiplied_said


def _sharpness(facts: RunFacts) -> Found | None:
    """The earliest evidence of steps beyond the stability limit: a probe, steps that kept
    overshooting, an overshoot just before the run broke, a run broken by its first updates,
    a learning rate still rising when the loss blew up, or one raised at a stroke just before
    the run was jolted."""
    checks = (
        _measured_sharpness,
        _unstable_steps,
        _overshoot_before_break,
        _broke_at_once,
        _lr_rising_into_break,
        _lr_raised_into_a_jolt,
        _trained_into_a_blowup,
    )
    found = [(check, f) for check in checks if (f := check(facts)) is not None]
    how, first = min(
        found,
        key=lambda found: math.inf if found[1].first_step is None else found[1].first_step,
        default=(None, None),
    )
    if first is not None and first.first_step is not None:
        restarted = _restarted_with(facts, first.first_step)
        exploded = _exploded_through_time(facts, first.first_step)
        if restarted is not None:
            first.consequence_of = (
                f"the optimizer's state started again from nothing at step {restarted}, its "
                "learning rate with it: a resume that restored neither the optimizer nor its "
                "schedule, whose first steps crossed 2/sharpness"
            )
        elif how in (_unstable_steps, _overshoot_before_break, _trained_into_a_blowup) and (
            passed := _passed_just_before(facts, first.first_step)
        ):
            first.consequence_of = (
                f"{passed}: the steps that overshot were that raise's jolt, and the run "
                "trained on at the rates that followed"
            )
        elif (fast := _fast_group(facts)) is not None:
            first.consequence_of = (
                f"the optimizer group {fast.evidence['group']} ({layer_span(fast.where)}) trains "
                f"at learning rate {fast.evidence['lr']:.3g}, "
                f"{fast.evidence['lr'] / fast.evidence['rest_lr']:.3g}x the rest: its steps are "
                "the ones past the limit, not the rate the rest trains at"
            )
        elif exploded is not None and how in (_unstable_steps, _overshoot_before_break):
            first.consequence_of = (
                f"the gradient of the recurrent {exploded.where} exploded at step "
                f"{exploded.step}, {exploded.evidence.get('ratio', math.nan):.3g}x the next one, "
                "and its update wrecked the weights: a product of Jacobians through time, which "
                "overshoots along any direction, not a step size above 2/curvature"
            )
    return first


def _fast_group(facts: RunFacts) -> Found | None:
    """An optimizer group set far above the rest (:func:`_rate_set_apart`) and judged to harm
    the run (a rate no Adam-like group runs at, or the break's gradients growing in that group
    alone): the group whose steps overshoot, when steps do."""
    apart = _rate_set_apart(facts)
    if apart is None or apart.severity == "info":
        return None
    return apart if apart.evidence["lr"] > apart.evidence["rest_lr"] else None


def _exploded_through_time(facts: RunFacts, step: int) -> Finding | None:
    """The one gradient explosion (evidence ``WRECKED_WEIGHTS``) in a module a recurrence
    applies, at ``step`` or the step before, if any."""
    return next(
        (
            f
            for f in facts.of(GRADIENT_GROWTH)
            if f.evidence.get(WRECKED_WEIGHTS)
            and step - 1 <= f.step <= step
            and any(_inside(f.where or "", m) for m in facts.recurrent_modules)
        ),
        None,
    )


def _restarted_with(facts: RunFacts, step: int) -> int | None:
    """The step the optimizer's state started again from nothing, ``RESTART_WITHIN`` steps or
    fewer either side of ``step``, when that restart jolted the loss."""
    restarted = _jolted_by_a_restart(facts, step + RESTART_WITHIN)
    return restarted if restarted is not None and restarted >= step - RESTART_WITHIN else None


# Steps a run trained at a learning rate (or a larger one) before it broke that prove that
# rate was within the stability limit of the model as it was.
RATE_PROVEN = 50


def _trained_at_that_rate(facts: RunFacts, step: int) -> int:
    """Steps the run had trained, up to ``step``, at a learning rate at least 0.95 of every
    group's rate at ``step``: since its start, or since the last step any group's rate was
    lower (a warm-up, a raise on resume). 0 without learning rates."""
    rates = facts.learning_rates
    if not rates:
        return 0
    since = 0
    for steps, values in rates:
        keep = (steps <= step) & np.isfinite(values)
        steps, values = steps[keep], values[keep]
        if not len(values):
            return 0
        lower = np.flatnonzero(np.abs(values[:-1]) < 0.95 * abs(values[-1]))
        began = int(steps[lower[-1] + 1]) if len(lower) else int(steps[0])
        since = max(since, began)
    return step - since


# A learning rate this many times the reading before, from one reading to the next: a new step
# size, not the one the readings before it measured (no warm-up ramps that fast).
RAISED = 4.0


def _overshoot_before_break(facts: RunFacts, within: int = 10) -> Found | None:
    """The steps just before the run broke overshot along their own direction (a directional
    sharpness ratio at or above 1 before the climb began, or most of those read near the break:
    the step size had passed 2/curvature), at a learning rate the run had not trained at for
    ``RATE_PROVEN`` steps before."""
    broke = facts.broke_at
    series = facts.series(DIRECTIONAL_SHARPNESS_RATIO.name)
    climbed = [f.step for f in facts.of(LOSS_DIVERGENCE, GRADIENT_GROWTH) if f.severity != "info"]
    if broke is None or series is None or not climbed or min(climbed) > broke:
        return None  # a NaN out of the blue (bad data, say) is not a step-size problem
    scaled = _gradient_scaled_at_a_stroke(facts, broke, within)
    if scaled is None and _trained_at_that_rate(facts, broke) >= RATE_PROVEN:
        # the same step size served the run long before it broke: what crossed 2/curvature
        # was the curvature, grown by something else (a decay of the wrong sign, a poisoned
        # step, a longer unroll), and every explosion's last update overshoots
        return None
    steps, ratios = series
    since = broke - within if scaled is None else scaled[0]
    # a reading measures the step at the rate it was taken at: one from before a rate raised at
    # a stroke says nothing of the steps the raise made (those are the raise's to explain)
    raised = [int(s[i]) for s, _, i in _raised_at_a_stroke(facts, RAISED) if since < s[i] <= broke]
    since = max([since, *raised])
    near = (steps <= broke) & (steps >= since) & np.isfinite(ratios)
    near &= ~np.isin(steps, _across_one_step_spikes(facts))
    if not near.any():
        return None
    i = np.flatnonzero(near)[int(np.argmax(ratios[near]))]
    ratio, step = float(ratios[i]), int(steps[i])
    # One reading above 1 counts when it came by the climb's start (once the run is wrecked,
    # readings mean little); after it, most readings must be: a noisy pair of batches can read
    # above 1 on its own.
    if ratio < 1.0 or (step > min(climbed) and np.median(ratios[near]) < 1.0):
        return None
    if _grown_within_the_limit(facts, series, since, step) or _a_burst_read(facts, series, step):
        return None  # the overshoot came once the gradients had exploded, not before
    if _learnt_on_from(facts, step, broke):
        return None  # the run survived that overshoot
    summary = (
        f"the update before step {step} overshot along its own direction ({ratio:.2g}x its "
        f"stability limit), just before the run broke at step {broke}: the learning rate was "
        "above 2/curvature"
    )
    evidence = {"directional_sharpness_ratio": ratio, "broke_at": broke}
    if scaled is not None:
        step, factor = scaled
        summary += (
            f"; the gradient's scale rose {factor:.3g}x at step {step} with the loss unchanged "
            "(a loss summed where it was averaged, a loss weight raised), and the step size "
            "with it"
        )
        evidence["gradient_scaled_at"], evidence["gradient_scale_factor"] = step, factor
    return Found(summary, step, [], evidence)


def _learnt_on_from(facts: RunFacts, step: int, broke: int) -> bool:
    """Whether the run's best sustained loss before it broke (its lowest 5-step running median
    before ``broke``) came wholly after ``step``: it learnt on past what happened there."""
    loss = facts.series(LOSS.name)
    if loss is None:
        return False
    steps, values = loss
    before = np.isfinite(values) & (steps < broke)
    best = _lowest_median(steps[before], values[before])
    return best is not None and best - 4 > step


def _across_one_step_spikes(facts: RunFacts) -> list[int]:
    """The steps whose directional sharpness reading spans a gradient-norm spike that fell
    back by 10x at the next record (a loss scaled once, one bad batch): the reading compares
    the gradients on either side of an update, and across such a spike it measures the spike,
    not the curvature."""
    grad = facts.series(GRAD_NORM.name)
    if grad is None:
        return []
    g_steps, g = grad
    spanned = []
    for spike in facts.of(GRAD_NORM_SPIKE):
        after = g[(g_steps > spike.step) & np.isfinite(g)][:1]
        if len(after) and after[0] * 10 < spike.evidence.get("grad_norm", 0.0):
            spanned += [spike.step, spike.step + 1]
    return spanned


# The gradient norm grew this many times from its lowest in the span before an overshoot while
# the updates stayed within their limit: the growth was not the step size's doing.
GROWN_WITHIN_LIMIT = 8.0


def _grown_within_the_limit(
    facts: RunFacts, ratios: tuple[np.ndarray, np.ndarray], since: int, step: int
) -> bool:
    """Whether the gradient norm grew ``GROWN_WITHIN_LIMIT`` times from its lowest between
    ``since`` and ``step`` while most of the directional sharpness readings taken as it grew (3
    at least) stood below 1: updates within their stability limit descend along their own
    direction, so what grew the gradient was something else (weights multiplying one another,
    a recurrence), and the overshoot read at ``step`` is what the grown gradients did."""
    grad = _finite_until(facts, GRAD_NORM.name, step - 1)
    if grad is None:
        return False
    g_steps, g = grad
    span = g_steps >= since
    if span.sum() < 3:
        return False
    lowest = int(np.argmin(np.where(span, g, np.inf)))
    if not g[-1] >= GROWN_WITHIN_LIMIT * g[lowest]:
        return False
    r_steps, r = ratios
    while_growing = r[(r_steps > g_steps[lowest]) & (r_steps < step) & np.isfinite(r)]
    return len(while_growing) >= 3 and float(np.median(while_growing)) < 1.0


# Directional sharpness readings all under this share of the limit: updates well within it.
WELL_WITHIN = 0.5


def _a_burst_read(facts: RunFacts, ratios: tuple[np.ndarray, np.ndarray], step: int) -> bool:
    """Whether the reading at ``step`` spans the run's first burst of the gradient (see
    :func:`_first_burst`), after updates all well within their limit (three readings or more,
    each under ``WELL_WITHIN``): the reading compares the gradients on either side of the last
    update, so it measures the burst, which no step size past 2/curvature made (that overshoot
    shows in the readings before: a recurrence crossing into explosion, weights multiplying
    one another)."""
    if _first_burst(facts, step) != step:
        return False
    r_steps, r = ratios
    earlier = r[(r_steps < step) & np.isfinite(r)]
    return len(earlier) >= 3 and bool((earlier < WELL_WITHIN).all())


# A gradient norm this many times its recent median, with the loss at its usual level, and held
# at half that or more until the break: the loss itself was rescaled, not a batch gone bad.
SCALED_AT_A_STROKE, SCALE_WINDOW = 4.0, 20


def _gradient_scaled_at_a_stroke(
    facts: RunFacts, broke: int, within: int
) -> tuple[int, float] | None:
    """The step, within ``within`` before the break, at which the gradient norm rose to
    ``SCALED_AT_A_STROKE`` times its median over the readings before and stayed up while the
    loss did not rise with it, and that factor: the gradient, and with it the step of an SGD-
    like optimizer, was scaled at a stroke (accumulated micro-batch losses summed, a loss
    weight raised), so the learning rate the run had trained at no longer set the step. Not
    where the gradient per unit of loss was back at its usual level at the next record: the
    scale was one step's (a loss weight typed wrong once), and the gradient stayed up only
    because the loss it threw did: a gradient spike, whose update broke the run."""
    grads, loss = facts.series(GRAD_NORM.name), facts.series(LOSS.name)
    if grads is None or loss is None:
        return None
    steps, norms = grads
    # a jump on the step before the break is the explosion's own last step: a rescaled loss
    # shows at its first step, before the instability it starts has compounded
    for i in np.flatnonzero((steps >= broke - within) & (steps < broke - 1)):
        before = norms[max(0, i - SCALE_WINDOW) : i]
        before = before[np.isfinite(before)]
        if len(before) < SCALE_WINDOW // 2:
            continue
        usual = float(np.median(before))
        up = SCALED_AT_A_STROKE / 2 * usual
        held = norms[i : np.searchsorted(steps, broke, side="right")]
        if not usual > 0 or not norms[i] >= SCALED_AT_A_STROKE * usual or not np.all(held >= up):
            continue
        if not norms[i - 1] < up:
            continue  # already up the reading before: a growth, not a jump from the usual level
        at = int(steps[i])
        losses = loss[1][(loss[0] < at) & (loss[0] >= at - SCALE_WINDOW) & np.isfinite(loss[1])]
        now = loss[1][loss[0] == at]
        if len(losses) and len(now) and now[0] <= 1.5 * float(np.median(losses)):
            if _scaled_once(steps, norms, loss, i):
                continue
            return at, float(norms[i] / usual)
    return None


def _scaled_once(
    steps: np.ndarray, norms: np.ndarray, loss: tuple[np.ndarray, np.ndarray], i: int
) -> bool:
    """Whether the gradient norm per unit of loss, up ``SCALED_AT_A_STROKE`` times at reading
    ``i``, was under half that at the next reading (against its median over the
    ``SCALE_WINDOW`` readings before): scaled for one step only."""
    loss_at = dict(zip(loss[0].tolist(), loss[1].tolist(), strict=True))

    def ratio(j: int) -> float:
        value = loss_at.get(int(steps[j]), math.nan)
        return norms[j] / value if value > 0 and math.isfinite(value) else math.nan

    if i + 1 >= len(steps):
        return False
    usual = np.array([ratio(j) for j in range(max(0, i - SCALE_WINDOW), i)])
    usual = usual[np.isfinite(usual)]
    if len(usual) < SCALE_WINDOW // 2:
        return False
    return bool(ratio(i + 1) < SCALED_AT_A_STROKE / 2 * float(np.median(usual)))


# Records before a break over which the gradient norm of a run that had trained grew at every
# one, and how many times over, for a plain gradient step past 2/sharpness to be what broke it.
BLOWUP_RECORDS, BLOWUP_GROWTH = 4, 10.0


def _trained_into_a_blowup(facts: RunFacts) -> Found | None:
    """Under a step the gradient scales (SGD, with or without momentum), in a model with no
    recurrence: the loss had fallen to half its first value or less, then the gradient norm
    grew at each of the last ``BLOWUP_RECORDS`` records into the break, ``BLOWUP_GROWTH``
    times or more, with no gradient growth found to have begun ``EXPLOSION_LEAD`` steps or more
    before. A plain gradient step past 2/sharpness overshoots further each step along the
    sharpest direction: the gradient grows geometrically once that direction dominates, after
    the loss has fallen (progressive sharpening), however little the update's own direction
    read of it before (Cohen et al. 2021)."""
    broke = facts.broke_at
    if broke is None or facts.run.config.get(OPTIMIZER_FAMILY) not in GRADIENT_SCALED:
        return None
    grads, loss = facts.series(GRAD_NORM.name), facts.series(LOSS.name)
    if facts.recurrent_modules or grads is None or loss is None:
        return None
    before = loss[1][(loss[0] <= broke) & np.isfinite(loss[1])]
    upto = (grads[0] <= broke) & np.isfinite(grads[1])
    steps, norms = grads[0][upto][-BLOWUP_RECORDS:], grads[1][upto][-BLOWUP_RECORDS:]
    # a loss that fell to half its first value, not below zero: one with no minimum (a
    # likelihood on raw scores) drives its outputs, and its gradients, without end
    if len(before) < 5 or not (before[0] > 0 and 0 < before.min() <= 0.5 * before[0]):
        return None
    if len(norms) < BLOWUP_RECORDS or not np.all(np.diff(norms) > 0):
        return None
    if norms[-1] < BLOWUP_GROWTH * norms[0]:
        return None
    if any(
        f.evidence.get(GROWTH_BEGAN, f.step) < steps[0] - EXPLOSION_LEAD
        for f in facts.of(GRADIENT_GROWTH)
    ):
        return None  # the gradients had been growing long before: no sudden overshoot
    outlier = _data_outlier(facts)
    if outlier is not None and steps[0] < outlier.first_step <= broke:
        return None  # one batch's gradient threw the weights: the growth began with it
    return Found(
        f"the loss had fallen to {before.min():.3g}, then the gradient norm grew at every step "
        f"into the break at step {broke} ({norms[0]:.3g} -> {norms[-1]:.3g} from step "
        f"{int(steps[0])}): plain gradient steps past 2/sharpness, each overshooting further "
        "along the sharpest direction",
        int(steps[0]),
        [],
        {"grad_norm_from": float(norms[0]), "grad_norm_to": float(norms[-1]), "broke_at": broke},
    )


# A run whose loss went non-finite within this many steps of its start, never back at or below
# its first loss on the way and ONE_OFF times above it before it broke, was broken by its first
# updates (too few finite losses for the divergence detector's opening window to fill), when
# the first of them threw the weights (their norm THROWN times where it started) from a
# gradient under BORN_EXPLODED times that norm; or, under a step the gradient scales in a model
# with no recurrence, when the loss rose at every step from the first update to the break,
# within CLIMB_STEPS: each plain step past 2/sharpness multiplies the sharpest direction's share
# of the error by |1 - lr x sharpness|, from the first (Cohen et al. 2021). Over the kept runs
# of sets 528-597, every such climb from a gradient that was not exploded before any update was
# a learning rate past the limit (20 of 20). The climb may begin within the first DIP updates
# where the first lowered the loss: descent along the directions within the limit shows first.
OPENING_STEPS, THROWN, CLIMB_STEPS, DIP = 10, 2.0, 30, 2


def _blew_up_from_the_start(facts: RunFacts) -> Found | None:
    """The first updates blew the run up within ``OPENING_STEPS`` steps, or the loss climbed
    at every step from the first update into a break within ``CLIMB_STEPS`` (see there)."""
    loss = facts.series(LOSS.name)
    if loss is None:
        return None
    steps, values = loss
    bad = steps[~np.isfinite(values)]
    if not len(bad) or bad[0] > CLIMB_STEPS or steps[0] != 0 or not values[0] > 0:
        return None
    broke = int(bad[0])
    grads, weights = facts.series(GRAD_NORM.name), facts.series(PARAM_NORM.name)
    if grads is None or weights is None or not grads[0][0] == 0 == weights[0][0]:
        return None
    if not grads[1][0] < BORN_EXPLODED * weights[1][0]:
        return None  # exploded before any update: the initialisation's doing
    opening = values[(steps > 0) & (steps < broke)]
    opening = opening[np.isfinite(opening)]
    if not len(opening) or opening.max() < ONE_OFF * values[0]:
        return None
    above = bool(opening.min() > values[0])  # never back at or below where it started
    first_update = weights[1][weights[0] == 1]
    thrown = above and bool(len(first_update)) and first_update[0] >= THROWN * weights[1][0]
    plain = facts.run.config.get(OPTIMIZER_FAMILY) in GRADIENT_SCALED
    # the climb may begin once the first updates lowered the loss below where it started
    # (within DIP): where the sharpest direction's share of the error began small, the other
    # directions' descent shows first
    low = int(np.argmin(opening[:DIP])) if opening[0] < values[0] else 0
    climbed = plain and not facts.recurrent_modules and bool(np.all(np.diff(opening[low:]) > 0))
    if not (thrown and broke <= OPENING_STEPS or climbed):
        return None  # not thrown at once nor climbing: a gradient that grew on its own
    how = " at every step, each plain step overshooting further," if climbed else ""
    since = f"{values[0]:.4g}" if above else f"{opening[low]:.4g} (step {low + 1})"
    where = ", never back where it started" if above else ""
    return Found(
        f"the first updates blew the run up: the loss rose from {since} to "
        f"{opening.max():.4g}{how} and was non-finite by step {broke}{where} (the step size "
        "is far above the stability limit)",
        0,
        [],
        {"first_loss": float(values[0]), "peak": float(opening.max()), "broke_at": broke},
    )


def _broke_at_once(facts: RunFacts) -> Found | None:
    """The first updates sent the loss far above where it started and it never came back
    (gradients that exploded before any update are the initialisation's doing instead). A run
    that came back on its own below where it started trained at those rates: its jolt is then
    a consequence of what threw the first updates."""
    found = [f for f in facts.of(LOSS_DIVERGENCE) if f.evidence.get(BROKE_AT_ONCE)]
    if any(f.step == 0 for f in facts.of(GRADIENT_GROWTH)):
        return None
    if not found:
        return _blew_up_from_the_start(facts)
    f = found[0]
    broke = Found(
        f"the first updates broke the run: from step {f.step} the loss sat at "
        f"{f.evidence.get('ratio', math.nan):.3g}x where it started",
        0,
        [],
        dict(f.evidence),
    )
    ended = _ended_below(facts, f.evidence.get("best_level"))
    stuck = _stuck_with_dead_units(facts, f.evidence.get("best_level"))
    if stuck is not None:
        # back where it started and held there, finite, its units dead: the jolt is over and
        # what stops the run from learning is the units it killed, named by their own rule
        broke.consequence_of = (
            f"the run came back to where it started (to {stuck:.4g} over its last "
            f"{ENDED_OVER} steps) and stayed there with units dead: the first updates killed "
            "them, and the dead units, not the step size, keep it from learning"
        )
    elif (born := _exploded_from_the_start(facts)) is not None:
        # the gradient before any update was already exploded: the first updates were thrown
        # by it, whatever the step size
        broke.consequence_of = (
            f"{born.summary}: the first updates applied that gradient, before any step size "
            "could be judged"
        )
    elif ended is None:
        broke.summary += " and never came back (the step size is far above the stability limit)"
    else:
        # back below where it started, at the same rates: they were within the limit of the
        # model as it then was; what threw the first updates is named by its own rule
        broke.consequence_of = (
            f"the run came back on its own below where it started (to {ended:.4g} over its last "
            f"{ENDED_OVER} steps): the first updates' jolt passed, not a step size the run "
            "cannot train at"
        )
    return broke


# A rate under this share of its highest over the window before a climb had passed its peak.
PAST_PEAK = 0.9
CATAPULT = "catapult"  # evidence: the climb the rising rate made was one the run came back from


def _lr_rising_into_break(facts: RunFacts, window: int = 100, rise: float = 1.5) -> Found | None:
    """The loss climbed or blew up (not a NaN out of the blue) after the learning rate rose
    ``rise`` times or more over the ``window`` steps before, or rose at every step of them
    and ``rise`` times or more since it began to, and stood within ``PAST_PEAK`` of its highest
    there: a warm-up still climbing (one that never stopped), or a rate raised by hand on a
    resume. A step size raised far enough crosses
    2/sharpness; the cause is dated to where that rise began."""
    broke = [
        f
        for f in facts.of(LOSS_DIVERGENCE, GRADIENT_GROWTH)
        if _breaks(f) or f.kind == LOSS_DIVERGENCE
    ]
    rates = facts.learning_rates
    if not broke or not rates:
        return None
    first = min(broke, key=lambda f: (f.step, not _breaks(f)))
    if any(f.step < first.step for f in facts.of(NONFINITE)):
        return None
    # a climb found before the run broke is named as what it was; one found early in a rise
    # that went on into the break is judged by the whole rise (a one-cycle peak typed 10x
    # climbs at 1.5x its first rate and breaks at 3x)
    into = [first] + [f for f in broke if _breaks(f) and f.step > first.step][:1]
    for found in (_rate_rose_into(facts, f, window, rise) for f in into):
        if found is not None:
            return found
    return None


def _rate_rose_into(facts: RunFacts, broke: Finding, window: int, rise: float) -> Found | None:
    """:func:`_lr_rising_into_break`'s test of the rates before ``broke`` (the first climb or
    break, or the break that climb led into)."""
    when = broke.step
    # a climb the run came all the way back from, to below where it climbed from, with no
    # break after it, on a rate that rose by steps (a warm-up, not a raise at a stroke, whose
    # jolt can kill units the loss does without): a catapult (Lewkowycz et al. 2020), thrown
    # up as the rate crossed 2/sharpness, then down as the curvature fell to what it allows
    raised = _raised_before(facts, when, within=window)
    catapult = facts.broke_at is None and facts.came_back_from(when) and raised is None
    what = "the run broke" if _breaks(broke) and not catapult else "the loss began to climb away"
    for steps, values in facts.learning_rates:
        # positive readings: a warm-up's first rate of 0 (LambdaLR at step 0) is no base
        before = values[(steps <= when) & (steps >= when - window) & _positive(values)]
        if len(before) < 2 or not before[-1] > before[0]:
            continue
        if before[-1] < PAST_PEAK * before.max():
            continue  # past its peak and falling (a one-cycle schedule): not still rising
        # the cause is there from where the rise into the break began: the last step at the
        # window's lowest rate, and back from there while the rate was still rising
        upto = np.flatnonzero((steps <= when) & (steps >= when - window))
        start = upto[np.flatnonzero(values[upto] == np.nanmin(values[upto]))[-1]]
        while start > 0 and values[start - 1] < values[start]:
            start -= 1
        # a warm-up that never stopped rises less and less over a window, yet every step is
        # one the run had never taken: it rose through the whole window, far from its start
        ramped = bool(np.all(np.diff(before) >= 0)) and before[-1] >= rise * values[start]
        if before[-1] < rise * before[0] and not ramped:
            continue
        if _a_passing_raise(facts, int(steps[start]), when):
            continue
        found = Found(
            f"the learning rate was still rising when {what} at step {when} "
            f"({before[0]:.3g} -> {before[-1]:.3g} over the {window} steps before): the step "
            f"size outgrew the curvature (rising since step {int(steps[start])})",
            int(steps[start]),
            [],
            {"lr_before": float(before[0]), "lr_at_break": float(before[-1]), "broke_at": when},
        )
        if catapult:
            found.severity, found.evidence[CATAPULT] = "info", True
            found.summary += (
                "; the run came all the way back on its own as the curvature fell to what the "
                "rate allows: a catapult (Lewkowycz et al. 2020), not a divergence"
            )
        # weights replaced between steps, with no raise at a stroke (which moves them as far)
        replaced = _replaced_just_before(facts, when)
        if replaced is not None and raised is None:
            found.consequence_of = (
                f"the weights were replaced between steps at step {replaced} (a resume from "
                "the wrong snapshot, an EMA swap), and the loss climbed from there: no step "
                "size made it"
            )
        elif (born := _exploded_from_the_start(facts)) is not None:
            # a model whose layers amplify the signal is as sharp as they amplify: a rate that
            # trains a standard initialisation meets that curvature on its way up
            found.consequence_of = (
                f"the gradients exploded from the first step ({layer_span(born.where)} "
                "amplified the signal and the gradient at step "
                f"{born.first_step}): the rising rate met the curvature that made"
            )
        return found
    return None


def _lr_raised_into_a_jolt(facts: RunFacts, jump: float = RAISED, within: int = 10) -> Found | None:
    """Some group's learning rate raised ``jump`` times or more from one reading to the next
    (a resume with the wrong rate, a rate set by hand: no warm-up ramps that fast), and within
    ``within`` steps the run was jolted (a loss or gradient-norm spike, a climb, a NaN): a step
    raised that far crosses 2/sharpness at once."""
    jolts = sorted(f.step for f in facts.of(*JOLTS) if f.severity != "info")
    for steps, values, i in _raised_at_a_stroke(facts, jump) if jolts else ():
        at = int(steps[i])
        hit = next((j for j in jolts if at <= j <= at + within), None)
        if hit is not None and not _a_passing_raise(facts, at, hit):
            before, after = float(values[i - 1]), float(values[i])
            return Found(
                f"the learning rate was raised {after / before:.3g}x at step {at} "
                f"({before:.3g} -> {after:.3g}) and the run was jolted at step {hit}: a step "
                "raised that far crosses 2/sharpness at once",
                at,
                [],
                {"lr_before": before, "lr_after": after, "jolted_at": hit},
            )
    return None


def _unstable_steps(facts: RunFacts) -> Found | None:
    """No probe ran, but the steps overshot along their own direction (the directional
    sharpness ratio, from two successive gradients, above the limit)."""
    found = facts.of(UNSTABLE_STEPS)
    broke = facts.broke_at
    if broke is not None:
        # steps that overshot for a while, after which the run learnt on to its best loss
        # before it broke: that episode was over, and no part of the break
        found = [f for f in found if f.step > broke or not _learnt_on_from(facts, f.step, broke)]
    if not found:
        return None
    first = found[0]
    ratio = first.evidence.get("median_recent", math.nan)
    overshot = Found(
        f"the optimizer's steps overshoot from step {first.step}: the curvature along each "
        f"update is {ratio:.2g}x its stability limit (the learning rate is above 2/sharpness)",
        first.step,
        [],
        dict(first.evidence),
    )
    spikes = [
        f.step
        for f in facts.of(LOSS_SPIKE)
        if f.severity != "info" and first.step - EXPLOSION_LEAD <= f.step <= first.step
    ]
    multiplied = _multiplied_every_step(facts)
    if multiplied is not None and _trained_at_that_rate(facts, first.step) >= RATE_PROVEN:
        # the step size served the run long before: what grew past it was the curvature, with
        # weights multiplied by one factor every step
        overshot.consequence_of = (
            f"{_multiplied_said(multiplied)}: the curvature grew with the weights, past a step "
            "size that had served the run"
        )
    elif spikes and facts.broke_at is None and found[-1].step <= first.step + EXPLOSION_LEAD:
        # One burst of overshooting right after a loss spike, never again, in a run that did
        # not break: the spike's own update (a batch far off) threw the weights, and the steps
        # that brought them back read the wreck; a step size above 2/curvature overshoots on.
        overshot.consequence_of = (
            f"the loss spike at step {spikes[0]}: its update threw the weights, and the steps "
            "that followed overshot on the way back, once"
        )
    return overshot


def _measured_sharpness(facts: RunFacts) -> Found | None:
    found = facts.of(SHARPNESS_ABOVE_LIMIT)
    if found:
        first = found[0]
        ratio = first.evidence.get("ratio")
        text = f"sharpness above its stability limit from step {first.step}"
        if ratio is not None:
            text += f" ({ratio:.2f}x the limit)"
        return Found(text, first.step, [f.where for f in found if f.where], dict(first.evidence))
    return _sharpness_at_limit_before_divergence(facts)


def _sharpness_at_limit_before_divergence(
    facts: RunFacts, near: float = 0.85, probes: int = 3
) -> Found | None:
    """One of the last ``probes`` sharpness probes before a divergence already stood at (or
    above) the limit: the step size had caught up with the curvature (a rising LR, a sharpening
    model) and the run then left the stable region."""
    broke = facts.of(NONFINITE, LOSS_SPIKE)
    sharp, limit = facts.series(SHARPNESS.name), facts.series(SHARPNESS_LIMIT.name)
    if not broke or sharp is None or limit is None:
        return None
    when = broke[0].step
    # each probe's limit at its own step (there is none at a learning rate of 0 or below)
    limits = dict(zip(limit[0].tolist(), limit[1].tolist(), strict=True))
    bounds = np.array([limits.get(int(step), np.nan) for step in sharp[0]])
    recent = np.flatnonzero((sharp[0] < when) & (bounds > 0))[-probes:]
    if not len(recent):
        return None
    ratios = sharp[1][recent] / bounds[recent]
    if not np.nanmax(ratios) >= near:
        return None
    i = recent[int(np.nanargmax(ratios))]
    ratio = float(np.nanmax(ratios))
    return Found(
        f"sharpness reached {ratio:.2g}x its stability limit at step {int(sharp[0][i])}, "
        f"before the run broke at step {when}: the step size had caught up with the curvature",
        int(sharp[0][i]),
        [],
        {
            "sharpness": float(sharp[1][i]),
            "limit": float(bounds[i]),
            "ratio": ratio,
            "diverged_at": when,
        },
    )
