"""How the weights grew or moved: each tensor's growth and whether it compounded, the tensor that
amplifies the rest, a norm multiplied every step or pushed outward, an update that overstepped.
"""

from __future__ import annotations

import math

import numpy as np

from steadygrad.core.metrics import OPTIMIZER_FAMILY, PARAM_NORM, PARAMETER_COUNT, UPDATE_RATIO
from steadygrad.diagnose.rules.base import Found
from steadygrad.diagnose.rules.facts import (
    BOUNDED_FAMILIES,
    ORDINARY,
    OVERSTEPPED,
    RUNAWAY_GROWTH,
    RUNAWAY_SPAN,
    SELF_SIZED,
    RunFacts,
    _norm_moves,
)

# Weights that grew this many times over, and this many times more than any other weights did,
# amplify the gradients of the layers before them: they are where an explosion sits.
AMPLIFIER_GROWTH, AMPLIFIER_LEAD = 10.0, 3.0
# The median weight tensor grew this many times over: the weights grew everywhere.
EVERYWHERE_GROWTH = 2.5


def _grown_everywhere(
    found: Found,
    facts: RunFacts,
    until: int | None,
    what: str,
    growth: list[tuple[float, str]] | None = None,
) -> bool:
    """Mark ``found`` a consequence when the median weight tensor grew ``EVERYWHERE_GROWTH``
    times by ``until`` (``growth``: :func:`_weight_growth`'s, read here when not given),
    compounding (:func:`_later_share`: a weight decay of the wrong sign scales every weight by
    the same factor each step, and ``what`` grew with them)."""
    if until is None:
        return False
    growth = _weight_growth(facts, until) if growth is None else growth
    grown = [g for g, _ in growth]
    # the median tensor; of one or two, the one that grew least (a model with a single
    # trained layer: an echo-state net's readout)
    everywhere = float(np.median(grown) if len(grown) >= 3 else min(grown, default=1.0))
    if everywhere < EVERYWHERE_GROWTH:
        return False
    shares = [s for _, name in growth if (s := _later_share(facts, name, until)) is not None]
    if shares and float(np.median(shares)) < COMPOUNDING:
        return False  # grown at once and slowing since: steps too large for a small init
    which = "the median tensor" if len(grown) >= 3 else "every trained weight"
    found.consequence_of = (
        f"the weights grew {everywhere:.3g}x everywhere ({which}): {what} grew with them; "
        "look for what scales every weight (a weight decay of the wrong sign)"
    )
    found.evidence["median_weight_growth"] = everywhere
    return True


def _doubled_at(facts: RunFacts, parameter: str) -> int:
    """The first step at which a weight tensor's norm stood twice its lowest before."""
    steps, values = facts.series(f"{PARAM_NORM.name}/{parameter}")
    ok = np.isfinite(values)
    steps, values = steps[ok], values[ok]
    lowest = np.minimum.accumulate(values)
    doubled = np.flatnonzero(values >= 2.0 * lowest)
    return int(steps[doubled[0]] if len(doubled) else steps[-1])


def _amplifier(growth: list[tuple[float, str]]) -> tuple[str, float] | None:
    """Of (growth, parameter) pairs, the weight tensor that grew the most, if it grew
    ``AMPLIFIER_GROWTH`` times and ``AMPLIFIER_LEAD`` times more than any other."""
    if not growth:
        return None
    (top, name), *rest = sorted(growth, reverse=True)
    runner_up = rest[0][0] if rest else 1.0
    if top >= AMPLIFIER_GROWTH and top >= AMPLIFIER_LEAD * runner_up:
        return name, top
    return None


def _weight_growth(facts: RunFacts, until: int) -> list[tuple[float, str]]:
    """(growth, parameter) of each weight tensor: its norm's last finite value by ``until`` over
    its lowest in the first half of that span. Biases are left out, and so is any tensor that
    started near 0 (a hundredth of the median tensor's norm: a GIN's learnt epsilon) or at
    exactly 0 (a Fixup or zero-initialised head, its first update ratio infinite or 0/0):
    growth from nothing says nothing."""
    spans = []
    for name in facts.names:
        if "/" not in name or not PARAM_NORM.owns(name) or name.endswith("bias"):
            continue
        if _started_at_zero(facts, name.split("/", 1)[1]):
            continue
        steps, values = facts.series(name)
        values = values[np.isfinite(values) & (steps <= until)]
        if len(values) >= 10:
            spans.append((float(values[: len(values) // 2].min()), float(values[-1]), name))
    if not spans:
        return []
    floor = 0.01 * float(np.median([low for low, _, _ in spans]))
    return [(last / low, name.split("/", 1)[1]) for low, last, name in spans if low > floor]


# Of a weight tensor's growth (in log) over its span, the share the later half made, at least: a
# weight scaled by the same factor each step makes half; an adaptive optimizer's steps far too
# large for a small initialisation make most of it in the first steps, and slow as it grows.
COMPOUNDING = 0.3


def _later_share(facts: RunFacts, parameter: str, until: int) -> float | None:
    """The share of ``parameter``'s growth (its norm's, in log, from its lowest in the first
    half of its span to its last by ``until``, as :func:`_weight_growth` reads it) made after
    the middle of that span; None when it did not grow."""
    steps, values = facts.series(f"{PARAM_NORM.name}/{parameter}")
    values = values[np.isfinite(values) & (steps <= until)]
    if len(values) < 10:
        return None
    low = int(np.argmin(values[: len(values) // 2]))
    middle = float(values[(low + len(values) - 1) // 2])
    whole = math.log(float(values[-1]) / float(values[low]))
    if not whole > 0 or not middle > 0:
        return None
    return math.log(float(values[-1]) / middle) / whole


def _started_at_zero(facts: RunFacts, parameter: str) -> bool:
    """The tensor's first update ratio was infinite or 0/0: its weights were exactly zero before
    the first update (a zero-initialised head, Fixup's last layers), with finite weights."""
    ratios = facts.series(f"{UPDATE_RATIO.name}/{parameter}")
    if ratios is None or not len(ratios[1]):
        return False
    first = float(ratios[1][0])
    if first == math.inf:
        return True
    norms = facts.series(f"{PARAM_NORM.name}/{parameter}")
    return math.isnan(first) and norms is not None and bool(np.isfinite(norms[1][:1]).all())


def _overstepped_before(facts: RunFacts, step: int) -> float | None:
    """How many times its usual step the update just before ``step`` moved the weights' norm,
    when that was ``OVERSTEPPED`` times or more on an ordinary gradient (optimizer state lost on
    a resume, a learning-rate glitch): the loss at ``step`` then met weights the optimizer had
    thrown, whatever batch it read. None otherwise."""
    moves = _norm_moves(facts, step)
    if moves is None or moves[1] is None:
        return None
    moved, grad = float(moves[0][0]), float(moves[1][0])
    return moved if moved >= OVERSTEPPED and grad < ORDINARY else None


# The weights' norm grown this many times over a run at one exponential rate (the logarithm of the
# norm a straight line in the step to within STEADY_FIT of its variance, the rate over the run's
# second half within STEADY_RATE of the first half's): multiplied by a constant every step.
STEADY_FIT, STEADY_RATE = 1e-3, 0.1


def _multiplied_every_step(facts: RunFacts) -> dict[str, float] | None:
    """How the norm of all the weights grew (``growth`` over the run, ``per_step``), when it grew
    ``RUNAWAY_GROWTH`` times or more at one steady exponential rate from the first record to the
    last: a weight decay or an L2 penalty of the wrong sign multiplies every weight by the same
    factor each step, whatever the gradient does. Learning grows weights fast, then slower;
    nothing it does keeps one rate for a whole run."""
    norms = facts.series(PARAM_NORM.name)
    if norms is None:
        return None
    steps, values = norms
    ok = np.isfinite(values) & (values > 0)
    steps, logs = steps[ok].astype(float), np.log(values[ok])
    if len(logs) < 60 or logs[-1] - logs[0] < math.log(RUNAWAY_GROWTH):
        return None
    slope, intercept = np.polyfit(steps, logs, 1)
    residual = logs - (slope * steps + intercept)
    if not slope > 0 or residual.var() > STEADY_FIT * logs.var():
        return None
    half = len(logs) // 2
    early = (logs[half] - logs[0]) / (steps[half] - steps[0])
    late = (logs[-1] - logs[half]) / (steps[-1] - steps[half])
    if not abs(late - early) <= STEADY_RATE * early:
        return None
    return {"growth": float(math.exp(logs[-1] - logs[0])), "per_step": float(math.expm1(slope))}


# The share of an Adam-type step's full stride (every weight moving its learning rate, the same
# way, every step: the norm of all of them growing by ``lr * sqrt(count)`` a step) at or above
# which the weights' norm grew over a run's second half: updates pushing the weights outward
# step after step. Across the kept runs under Adam-type optimizers, those whose gradients
# exploded grew at 0.011 of it or less (an explosion's updates go every way; Adam bounds them);
# decays and penalties of the wrong sign, targets drifting away and logits pushed up at
# 0.2 to 2 and more.
PUSHED_STRIDE = 0.1


def _pushed_outward(facts: RunFacts, all_along: bool = False) -> float | None:
    """The share of an Adam-type step's full stride (``PUSHED_STRIDE``) at which the norm of
    all the weights grew over the second half of its record (a straight line fitted to it),
    when that share is ``PUSHED_STRIDE`` or more, under an optimizer whose step does not grow
    with the gradient (nor by a factor of its own, as Rprop's): the updates pushed every weight
    one way, step after step. ``all_along``: over the first half too (the smaller share of the
    two), as a decay or penalty of the wrong sign pushes from the first step."""
    count = facts.run.config.get(PARAMETER_COUNT)
    norms = facts.series(PARAM_NORM.name)
    family = facts.run.config.get(OPTIMIZER_FAMILY)
    if family not in BOUNDED_FAMILIES or facts.optimizer in SELF_SIZED or not count or not norms:
        return None
    steps, values = norms
    ok = np.isfinite(values) & (values > 0)
    steps, values = steps[ok].astype(float), values[ok]
    if len(values) < 60:
        return None
    half = len(values) // 2
    spans = [slice(0, half), slice(half, None)] if all_along else [slice(half, None)]
    shares = [_stride_share(facts, steps[span], values[span], count) for span in spans]
    share = min(shares)
    return share if share >= PUSHED_STRIDE else None


def _stride_share(facts: RunFacts, steps: np.ndarray, values: np.ndarray, count: int) -> float:
    """The slope of a straight line fitted to the weights' norm over ``steps``, as a share of
    the full stride at the groups' highest median learning rate there (0 with no rate)."""
    within = [
        lr[(at >= steps[0]) & (at <= steps[-1]) & np.isfinite(lr)]
        for at, lr in facts.learning_rates
    ]
    lr = max((float(np.median(rates)) for rates in within if len(rates)), default=0.0)
    if not lr > 0:
        return 0.0
    slope = np.polyfit(steps, values, 1)[0]
    return float(slope / (lr * math.sqrt(count)))


def _pushed_said(share: float, all_along: bool = False) -> str:
    span, least = (
        ("each half of the run", " or more") if all_along else ("the run's second half", "")
    )
    return (
        f"the norm of all the weights grew over {span} at {share:.2g}{least} of the "
        "optimizer's full stride (every weight moving its learning rate outward every step): "
        "the updates pushed the weights one way step after step (what asks for ever larger "
        "weights: a decay or penalty of the wrong sign, a target drifting away, logits pushed "
        "up)"
    )


def _multiplied_said(multiplied: dict[str, float]) -> str:
    return (
        f"the norm of all the weights grew {multiplied['growth']:.3g}x over the run at one "
        f"steady rate ({multiplied['per_step']:.2%} a step from the first step to the last): "
        "something multiplies them every step, whatever the gradient (a weight decay or L2 "
        "penalty of the wrong sign)"
    )


def _ran_away(runaway: tuple[str, int, float, float], before: str) -> tuple[str, dict]:
    """What a weight that ran away (see :func:`_runaway_weights`) before ``before`` did, in
    words, and as evidence."""
    name, began, factor, _ = runaway
    said = (
        f"the weights of {name.rpartition('.')[0] or name} grew geometrically from step "
        f"{began} ({factor:.3g}x over the last {RUNAWAY_SPAN} steps before {before}) while the "
        "loss set no new best: something multiplies them (a decay or penalty of the wrong sign)"
    )
    return said, {"parameter": name, "began": began, "factor": factor}
