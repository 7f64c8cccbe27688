"""Updates out of range for their weights: too large, or ~0 (frozen by a schedule, a rate too small
to learn, a paused expert) (``update_ratio_out_of_range``).
"""

from __future__ import annotations

import math

import numpy as np

from steadygrad.core import Finding
from steadygrad.core.metrics import GRAD_NORM, LOSS, UPDATE_RATIO
from steadygrad.diagnose.detectors.transformer import LOSS_OF_PLASTICITY, UPDATE_RATIO_OUT_OF_RANGE
from steadygrad.diagnose.rules.base import Found, _inside, _natural, layer_span
from steadygrad.diagnose.rules.facts import RunFacts
from steadygrad.diagnose.rules.plasticity import _no_gradient, _starved
from steadygrad.diagnose.rules.rates import _driven_mechanism, _rate_set_apart
from steadygrad.diagnose.rules.rule import _located
from steadygrad.diagnose.rules.series import BACK_WITHIN, _too_large


def _update_ratio(facts: RunFacts) -> Found | None:
    """Updates out of range; a layer that is only frozen stalls learning, it does not make a
    loss climb. Frozen tensors whose gradient was exactly 0, after dead units were found, are
    the dead units' doing (no gradient reaches them), not a frozen layer's."""
    found = _located((UPDATE_RATIO_OUT_OF_RANGE,), "update-to-weight ratio out of range")(facts)
    scheduled = _frozen_by_the_schedule(facts, found)
    if scheduled is not None:
        return scheduled
    if found is None or found.severity == "info":  # none, or dead code and the like
        return _rate_set_apart(facts) or _too_small_to_learn(facts) or found
    directions = {f.evidence.get("direction") for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE)}
    found.stalls = "too_large" not in directions
    ratios = [f for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE) if f.severity != "info"]
    large = [f.where for f in ratios if f.where and _too_large(f)]
    if large and len(large) == len(ratios):  # every one too large: their module's growth first
        found.drives = _driven_mechanism(facts, large)
    if ratios and all(_paused(facts, f) for f in ratios):
        return None  # experts no token was routed to for a while, then learning again
    back = _back_in_range(facts, ratios)
    if back is not None and found.first_step is not None:
        # updates too large for a while, then in range for good: an episode the run got over
        found.evidence[BACK_WITHIN] = back - found.first_step
    # A tensor no gradient reaches stands still whatever its learning rate: when dead units
    # were found before and every frozen tensor's gradient was exactly 0, they cut it off
    dead = [f for f in facts.of(LOSS_OF_PLASTICITY) if f.severity != "info" and f.where]
    dead = [f for f in dead if found.first_step is not None and f.step <= found.first_step]
    if dead and found.stalls and all(_no_gradient(facts, f.where, f.step) for f in ratios):
        found.consequence_of = (
            f"no gradient reached {layer_span([f.where for f in ratios if f.where])} (exactly 0 "
            f"before step {found.first_step}): the dead units of {dead[0].where}, found at step "
            f"{dead[0].step}, cut it off"
        )
    elif dead and found.stalls and all(_died_before(f, dead) for f in ratios):
        # or their own layer died first: what moved it had already killed most of its units
        # (a first step far too large), and the few left alive are no layer to train
        died = next(d for d in dead if _died_before(ratios[0], [d]))
        found.consequence_of = (
            f"{layer_span([f.where for f in ratios if f.where])} stood still from step "
            f"{found.first_step}, after its own layer lost its units ({died.where}: "
            f"{died.evidence.get('dead_units', math.nan):.0%} dead at step {died.step})"
        )
    elif found.stalls and not dead and (starved := _starved(facts)) is not None:
        found.consequence_of = (
            f"no input reached {layer_span(starved.where)} after step {starved.first_step}: "
            "they stand still because nothing runs through them"
        )
    return found


def _frozen_by_the_schedule(facts: RunFacts, found: Found | None) -> Found | None:
    """Layers frozen only once a schedule had cut every group's learning rate ``SCHEDULE_CUT``
    times (each frozen finding the detector's ``rate_cut`` info, or a frozen reading after such
    cuts): info when the loss had settled before the cuts (see
    :func:`_levels_around_the_cuts`), a run the schedule let settle; a warning when it was
    still improving, a schedule that stopped the learning early (ReduceLROnPlateau in mode
    'max' on a loss, a decay stepped every batch). None when no schedule froze them."""
    ratios = [f for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE) if f.severity != "info"]
    cut = [f for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE) if f.evidence.get("rate_cut")]
    if found is None or found.first_step is None or not (cut or ratios):
        return None
    if ratios and any(f.evidence.get("direction") != "frozen" for f in ratios):
        return None
    levels = _levels_around_the_cuts(facts, min(f.step for f in cut or ratios))
    if levels is None:
        return None
    times, level, last = levels
    found.stalls = True
    found.evidence["rate_cut"] = times
    found.where = sorted({f.where for f in cut or ratios if f.where}, key=_natural)
    if last >= KEPT_LEVEL * level:
        found.severity = "info"
        found.summary += (
            f": the schedule had cut the learning rate {times:.3g}x, step by step, and the loss "
            f"ended near where it had settled before the cuts ({last:.4g} over the last fifth, "
            f"{level:.4g} while the rate was within 10x of its peak): a run the schedule let "
            "settle, not a layer kept from learning"
        )
    else:
        found.severity = "warning"
        found.summary += (
            f": the schedule cut the learning rate {times:.3g}x, step by step, while the loss "
            f"was still improving ({level:.4g} while the rate was within 10x of its peak, "
            f"{last:.4g} over the last fifth): it froze the layers before the run had learnt "
            "(ReduceLROnPlateau in mode 'max' on a loss, a decay stepped every batch?)"
        )
    return found


# A schedule that cut every group's learning rate this many times from its peak, in at least
# RATE_CUTS drops, before updates read frozen; the loss over the last fifth of the run at this
# share or more of its level while the rate stood within 10x of its peak: the cuts bought little
# more than the quieter steps of a smaller rate, so they came because the loss had settled
# (ReduceLROnPlateau's way), not while it was still learning.
SCHEDULE_CUT, RATE_CUTS, KEPT_LEVEL = 100.0, 3, 0.75


def _levels_around_the_cuts(facts: RunFacts, step: int) -> tuple[float, float, float] | None:
    """(how many times the rate was cut, the loss's median while every rate was within 10x of
    its peak, past the run's first tenth; its median over the run's last fifth) when by
    ``step`` a schedule had cut every group's learning rate ``SCHEDULE_CUT`` times or more from
    its peak in ``RATE_CUTS`` drops or more; None otherwise."""
    loss = facts.series(LOSS.name)
    if loss is None or not facts.learning_rates:
        return None
    cuts, high_until = [], step
    for steps, rates in facts.learning_rates:
        ok = np.isfinite(rates) & (rates > 0) & (steps <= step)
        if ok.sum() < 2:
            return None
        peak, now = float(rates[ok].max()), float(rates[ok][-1])
        drops = int(np.sum(np.diff(rates[ok]) < 0))
        if now * SCHEDULE_CUT > peak or drops < RATE_CUTS:
            return None
        cuts.append(peak / now)
        below = steps[ok][rates[ok] * 10 < peak]
        high_until = min(high_until, int(below[0]))
    steps, values = loss
    finite = np.isfinite(values)
    start = int(steps[0]) + (int(steps[-1]) - int(steps[0])) // 10
    before = values[finite & (steps >= start) & (steps < high_until)]
    last = values[finite][-(len(values[finite]) // 5) :]
    if len(before) < 10 or len(last) < 10:
        return None
    level, end = float(np.median(before)), float(np.median(last))
    return min(cuts), level, end


# Updates under this share of every tensor's norm per step (its median over the run) move a
# weight of 0.02 by 2e-7: too little to learn in any run's length (healthy steps are 1e-4 to
# 1e-2 of the weights). NO_PROGRESS: the loss over the last fifth of the run at this share of
# its level over the first tenth or more.
TINY_STEPS, NO_PROGRESS = 1e-5, 0.95


def _too_small_to_learn(facts: RunFacts) -> Found | None:
    """Every tensor's update ratio stayed under ``TINY_STEPS`` (its median over the run) and
    the loss did not fall (``NO_PROGRESS``), in a run that did not break: a learning rate
    orders of magnitude too small (a unit or an exponent typed wrong), under what the
    update-ratio detector's per-record test calls frozen only for float32's last bits."""
    ratios = facts.run.family(UPDATE_RATIO.name)
    loss = facts.series(LOSS.name)
    if not ratios or loss is None or facts.broke_at is not None:
        return None
    medians = {n: float(np.nanmedian(v)) for n, (_, v) in ratios.items() if np.isfinite(v).any()}
    values = loss[1][np.isfinite(loss[1])]
    if not medians or len(values) < 20 or max(medians.values()) >= TINY_STEPS:
        return None
    first, last = values[: len(values) // 10].mean(), values[-(len(values) // 5) :].mean()
    if not (first > 0 and last >= NO_PROGRESS * first):
        return None
    typical = float(np.median(list(medians.values())))
    return Found(
        f"every update moved its weights by under {TINY_STEPS:g} of their norm (a median "
        f"{typical:.2g}) and the loss did not fall ({first:.4g} over the first tenth of the "
        f"run, {last:.4g} over the last fifth): a learning rate too small to train at, "
        "a unit or an exponent typed wrong?",
        0,
        sorted(medians, key=_natural),
        {"median_update_ratio": typical, "loss_first": float(first), "loss_last": float(last)},
        stalls=True,
    )


def _paused(facts: RunFacts, f: Finding, readings: int = 3) -> bool:
    """A tensor found frozen that no gradient reached at all while it stood still (no input
    ran through it: an expert no token was routed to), and that moved at each of the
    ``readings`` readings or more after the last it stood still: a pause in its routing, not
    a frozen layer."""
    ratio = facts.series(f"{UPDATE_RATIO.name}/{f.where}") if f.where else None
    grads = facts.series(f"{GRAD_NORM.name}/{f.where}") if f.where else None
    if f.evidence.get("direction") != "frozen" or ratio is None or grads is None:
        return False
    steps, values = ratio
    moved = values > f.evidence.get("low", 0.0)
    k = int(np.searchsorted(steps, f.step, side="right"))  # the readings up to the finding
    began = k
    while began > 0 and not moved[began - 1]:
        began -= 1
    if began == k or np.any((grads[0] >= steps[began]) & (grads[0] <= f.step)):
        return False  # a gradient came and nothing applied it: frozen, not unreached
    last_still = int(np.flatnonzero(~moved)[-1])
    return len(steps) - 1 - last_still >= readings


def _back_in_range(facts: RunFacts, ratios: list[Finding], readings: int = 3) -> int | None:
    """When every update-ratio finding was of updates too large: the step from which each of
    those tensors stayed under its limit at every later reading (``readings`` of them at least)
    up to the break, if the run broke (what its ratios read after is the break's), or None."""
    if not ratios or any(f.evidence.get("direction") != "too_large" for f in ratios):
        return None
    back = []
    for f in ratios:
        series = facts.series(f"{UPDATE_RATIO.name}/{f.where}")
        high = f.evidence.get("high")
        if series is None or not isinstance(high, float | int):
            return None
        steps, values = series
        if facts.broke_at is not None:
            steps, values = steps[steps < facts.broke_at], values[steps < facts.broke_at]
        above = steps[~(values <= high)]  # a non-finite ratio is no sign of being back
        after = steps[steps > above.max()] if len(above) else steps
        if len(after) < readings:
            return None
        back.append(int(after[0]))
    return max(back)


def _died_before(frozen: Finding, dead: list[Finding]) -> bool:
    """Whether the module holding a frozen tensor (``frozen``) was found with dead units (one of
    ``dead``) at an earlier step."""
    return any(
        frozen.where and _inside(frozen.where, d.where) and d.step < frozen.step for d in dead
    )
