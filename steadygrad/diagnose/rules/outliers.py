"""Data outliers: one batch (its inputs unlike the data, or its loss scaled as a whole) whose spike
knocked the run (``data_outlier``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from steadygrad.core import Finding
from steadygrad.core.metrics import INPUT_RMS, LOSS
from steadygrad.diagnose.detectors.training import (
    GRAD_NORM_SPIKE,
    HARD_BATCH,
    LOSS_SPIKE,
    NEW_STAGE,
    NONFINITE,
    RECURS_EVERY,
)
from steadygrad.diagnose.detectors.transformer import GRADIENT_SPIKE
from steadygrad.diagnose.detectors.trends import GRADIENT_GROWTH, LOSS_DIVERGENCE
from steadygrad.diagnose.rules.base import Found, _breaks, _running_medians
from steadygrad.diagnose.rules.facts import (
    RunFacts,
    _gradient_risen_before,
    _raised_before,
    _replaced_at,
)
from steadygrad.diagnose.rules.rates import _restarted_before
from steadygrad.diagnose.rules.series import (
    BACK_WITHIN,
    ONE_OFF,
    _batches_behind,
    _jump,
    _recurring,
    _within_half,
)
from steadygrad.diagnose.rules.weights import _overstepped_before

# A loss spike this many times above every loss after it was the peak of what followed: the
# batch knocked the weights, and a break that followed was the knock's doing, not growth.
PEAK_FIRST = 4.0


# Steps after a one-batch jump of the loss and gradient within which a break is that batch's:
# one plain gradient step from a gradient hundreds of times its size throws the weights past
# anywhere the run could step back from, and the steps after compound it.
THROWN_INTO_BREAK = 3


# A batch whose inputs' RMS stood this many times the median of the batches before it is unlike
# the data the run trained on (pixels left unnormalised, millivolts for volts, power for log
# power): sampling moves a batch's RMS by tens of percent, not tenfold.
INPUT_OUTLIER = 10.0
INPUT_HISTORY = (10, 50)  # the fewest and the most batches before it that it is judged against


def _input_outlier(facts: RunFacts, lag: int = 2, within: int = 50) -> Found | None:
    """A loss or gradient spike at most ``lag`` steps after a batch whose floating-point
    inputs' RMS stood ``INPUT_OUTLIER`` times the median of the batches before it, with the
    loss at that batch still finite (a NaN it made is named by its producer): that batch made
    the spike, whatever the run did after."""
    inputs, loss = facts.series(INPUT_RMS.name), facts.series(LOSS.name)
    if inputs is None or loss is None:
        return None
    steps, rms = inputs
    fewest, most = INPUT_HISTORY
    spikes = [
        f for f in facts.of(LOSS_SPIKE, GRAD_NORM_SPIKE, GRADIENT_SPIKE) if f.severity != "info"
    ]
    for spike in sorted(spikes, key=lambda f: f.step):
        for k in np.flatnonzero((steps >= spike.step - lag) & (steps <= spike.step)):
            before = rms[max(k - most, 0) : k]
            before = before[np.isfinite(before)]
            at = loss[1][loss[0] == steps[k]]
            if len(before) < fewest or not len(at) or not np.isfinite(at[0]):
                continue
            usual = float(np.median(before))
            if not usual > 0 or not rms[k] >= INPUT_OUTLIER * usual:
                continue
            step = int(steps[k])
            ev: dict[str, Any] = {
                "input_rms": float(rms[k]),
                "usual_input_rms": usual,
                "input_ratio": float(rms[k] / usual),
                "spike": spike.evidence,
                BACK_WITHIN: _loss_back_within(loss, step, within),
            }
            summary = (
                f"one batch at step {step}: its inputs' RMS was {rms[k] / usual:.3g}x that of "
                f"the batches before it, and the {_spike_of(spike)} spiked "
                + ("at it" if spike.step == step else f"{spike.step - step} step(s) later")
                + "; an outlier in the data (inputs mis-scaled or unnormalised)"
            )
            changed = _scale_changed_at(steps, rms, k, usual, fewest)
            if changed is not None:  # not one batch: every batch since was as large
                ev["scale_changed_at"] = changed
                summary = (
                    f"the data changed scale at step {changed}: its inputs' RMS rose "
                    f"{rms[k] / usual:.3g}x the batches' before and stayed there (a unit changed "
                    f"upstream, a normalisation dropped); the {_spike_of(spike)} spiked at step "
                    f"{spike.step}"
                )
            summary += _batches_behind([spike], ev)
            return Found(summary, step, [], ev)
    return None


def _scale_changed_at(
    steps: np.ndarray, rms: np.ndarray, k: int, usual: float, fewest: int
) -> int | None:
    """The step the inputs' RMS rose ``INPUT_OUTLIER`` times ``usual`` and stayed there up to
    record ``k``, when the ``fewest`` records before ``k`` were all that high (the data changed
    scale, not one batch); None otherwise."""
    high = rms[: k + 1] >= INPUT_OUTLIER * usual
    if k < fewest or not high[k - fewest : k].all():
        return None
    start = k
    while start > 0 and high[start - 1]:
        start -= 1
    return int(steps[start])


def _threw_into_a_break(
    facts: RunFacts, spike: Finding, with_gradient: bool, after: np.ndarray
) -> int | None:
    """The steps from a one-batch loss ``spike`` (``ONE_OFF`` times its baseline or more, with
    the gradient spike it made) to where the run broke (at the spike itself when the climb is
    dated from there), when that was ``THROWN_INTO_BREAK`` or fewer and either the loss of the
    step ``after`` it was ``ONE_OFF`` times below it (the next batch was not like it: no change
    of the data from there on) or the loss rose more times over than the gradient norm did
    (:func:`_error_made_the_gradient`): the batch's update threw the weights and the run never
    came back. None otherwise."""
    broke, ratio = facts.broke_at, spike.evidence.get("ratio", 0.0)
    if broke is None or not with_gradient or not ratio >= ONE_OFF:
        return None
    unlike_the_next = len(after) and after[0] <= spike.evidence.get(LOSS.name, math.nan) / ONE_OFF
    if not unlike_the_next and not _error_made_the_gradient(facts, spike):
        return None
    return broke - spike.step if 0 <= broke - spike.step <= THROWN_INTO_BREAK else None


def _gradient_over_loss(facts: RunFacts, step: int) -> float | None:
    """How many times as many times over its baseline the gradient norm spiked at ``step`` as
    the loss did over its own (None without both spikes there). A batch's error drives the loss
    up faster than the gradient (a squared error by the square of the error's growth, the
    gradient by the error itself): at most 1. A network amplifying its gradient through depth
    or time (a recurrence exposed by longer sequences) drives it up hundreds of times with the
    loss barely moved: ``ONE_OFF`` or more."""
    grads = [g.evidence.get("ratio") for g in facts.of(GRAD_NORM_SPIKE) if g.step == step]
    losses = [f.evidence.get("ratio") for f in facts.of(LOSS_SPIKE) if f.step == step]
    if not grads or not losses or grads[0] is None or losses[0] is None or not losses[0] > 0:
        return None
    return float(grads[0] / losses[0])


# A loss spike ONE_OFF times its baseline or more, with the gradient norm's spike at least this
# share of it (and inputs within INPUT_OUTLIER of their usual size): the loss was multiplied as a
# whole. A batch's error drives the loss faster than the gradient: a squared error by the square
# of the error's growth (the gradient over the loss spiked 1/sqrt(ratio) as much, under 0.32 at a
# 10x loss), a Huber, L1 or cross-entropy loss with the gradient bounded, less still; a loss
# multiplied by a number (a weight in percent, a sum over a batch left undivided) multiplies
# its gradient by the same number.
SCALED_AS_A_WHOLE = 0.5


def _loss_scaled_whole(facts: RunFacts, spike: Finding) -> bool:
    """The loss at ``spike`` stood ``ONE_OFF`` times the median of the ``SCALED_OVER`` records
    before it or more, the gradient norm (before clipping, where clipped) at least
    ``SCALED_AS_A_WHOLE`` as many times its own, and the batch's inputs under ``INPUT_OUTLIER``
    times theirs: the loss was multiplied for that step, not made by a batch's error (see
    ``SCALED_AS_A_WHOLE``)."""
    loss = _over_recent(facts.series(LOSS.name), spike.step)
    grads = facts.grad_norm_made
    gradient = _over_recent(grads, spike.step)
    if not loss >= ONE_OFF or not gradient >= SCALED_AS_A_WHOLE * loss:
        return False
    return not _over_recent(facts.series(INPUT_RMS.name), spike.step) >= INPUT_OUTLIER


SCALED_OVER = 20  # the records before a spike whose median it is measured against


def _over_recent(series: tuple[np.ndarray, np.ndarray] | None, step: int) -> float:
    """The value at ``step`` over the median of the finite values of the ``SCALED_OVER``
    records before it (NaN without both, or with fewer than half of those before)."""
    if series is None:
        return math.nan
    steps, values = series
    at = values[steps == step]
    before = values[(steps < step) & (steps >= step - SCALED_OVER) & np.isfinite(values)]
    if not len(at) or len(before) < SCALED_OVER // 2 or not np.median(before) > 0:
        return math.nan
    return float(at[0] / np.median(before))


def _error_made_the_gradient(facts: RunFacts, spike: Finding) -> bool:
    """The loss at ``spike`` rose at least as many times over its baseline as the gradient norm
    did over its own (:func:`_gradient_over_loss` at most 1): a batch whose error made the spike
    is the batch's, even when the thrown weights keep the next losses high."""
    times = _gradient_over_loss(facts, spike.step)
    return times is not None and times <= 1.0


def _spike_of(f: Finding) -> str:
    return "loss" if f.kind == LOSS_SPIKE.name else "gradient"


def _loss_back_within(loss: tuple[np.ndarray, np.ndarray], step: int, within: int) -> int | None:
    """Steps after ``step`` until the loss's running median of 5 was back under 1.5x its median
    over the 50 steps before it (None when not within ``within``)."""
    steps, values = loss
    before = values[(steps < step) & (steps >= step - 50) & np.isfinite(values)]
    after = values[(steps > step) & (steps <= step + within)]
    if not len(before) or len(after) < 5 or not np.isfinite(after).all():
        return None
    return _settled(after, float(np.median(before)))


def _settled(after: np.ndarray, baseline: float, window: int = 5) -> int | None:
    """Steps until the running median (of ``window``) of the finite losses ``after`` a spike
    stood within half its ``baseline``'s size of it; None when it never did."""
    medians = _running_medians(after, window)
    back = np.flatnonzero(_within_half(medians, baseline))
    return int(back[0]) + window if len(back) else None


def _data_outlier(facts: RunFacts, within: int = 50, window: int = 5) -> Found | None:
    """A loss spike in one step (the step before rose less than a ``ONE_OFF``-th of the way:
    the weights that batch met were those of a calm run, so the batch made it) that the run got
    over: within ``within`` steps the loss's running median (of
    ``window``) is back under 1.5x its baseline, or every loss of those steps stays
    ``ONE_OFF`` times below the spike; with nothing that broke the run on the way, unless the
    spike, ``ONE_OFF`` times its baseline, stayed ``PEAK_FIRST`` times above all that followed
    (the knock broke the run), or the run broke within ``THROWN_INTO_BREAK`` steps of it, with
    a gradient spike of its own (:func:`_threw_into_a_break`). One batch unlike the others
    (with the gradient spike it caused, when there was one); an adaptive optimizer can take
    tens of steps to settle after the step it took."""
    found = _input_outlier(facts, within=within)
    if found is not None:
        return found
    loss = facts.series(LOSS.name)
    if loss is None:
        return None
    steps, values = loss
    grads = {f.step for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE)}
    breaks = [f.step for f in facts.of(NONFINITE, LOSS_DIVERGENCE, GRADIENT_GROWTH) if _breaks(f)]
    for spike in facts.of(LOSS_SPIKE):
        baseline = spike.evidence.get("baseline")
        after = values[(steps > spike.step) & (steps <= spike.step + within)]
        before = values[steps == spike.step - 1]
        peak = spike.evidence.get(LOSS.name, math.nan)
        thrown = _threw_into_a_break(facts, spike, spike.step in grads, after)
        settling = len(after) >= window and np.isfinite(after).all()  # finite steps to read
        if not baseline or not settling and thrown is None:
            continue
        if len(before) and not before[0] - baseline <= (peak - baseline) / ONE_OFF:
            continue  # the loss was already climbing into it: a swing, not one batch
        if spike.evidence.get(NEW_STAGE):
            continue  # the loss held its new level for records after: a stage, not one batch
        if _replaced_at(facts, spike.step, grads):
            continue  # the weights changed under it, not the batch: an EMA swap, a reload
        if _loss_scaled_whole(facts, spike) and _recurring(facts, spike) is None:
            # the loss itself was multiplied (a weight, a sum) once: no batch of its own; one
            # the stream mixes in at a spacing is a kind of batch it holds (a burst week's)
            continue
        if _overstepped_before(facts, spike.step) is not None:
            continue  # the step before threw the weights: the batch met them where they landed
        if _gradient_risen_before(facts, spike.step):
            continue  # gradients grown for steps drove the weights there: no batch of its own
        if _restarted_before(facts, spike.step) is not None:
            continue  # the optimizer started again from nothing: its first steps threw them
        if _raised_before(facts, spike.step) is not None:
            continue  # the learning rate was raised at a stroke: its steps threw them
        back = None if thrown is not None else _settled(after, baseline, window)
        knocked = thrown is not None or (
            peak >= PEAK_FIRST * after.max() and peak >= ONE_OFF * baseline
        )
        if thrown is not None:
            settled = within
            outcome = "its update threw the weights so far that the run never came back" + (
                f", and broke {thrown} step(s) later" if thrown else ""
            )
        elif back is not None:
            settled = back
            outcome = f"was back to normal within {settled} steps"
        elif peak >= ONE_OFF * after.max():
            # Not back, but nothing after came near it: one batch knocked the model off its
            # fit (an adaptive step carries the kick for a while), and the run went on.
            settled = within
            outcome = "left the run knocked off its fit, yet never near that peak again"
        elif knocked:
            settled = within
            outcome = f"knocked the run off its fit; nothing after came within {PEAK_FIRST:g}x"
        else:
            continue
        if not knocked and any(spike.step <= b <= spike.step + settled for b in breaks):
            continue  # it broke the run on the way: a blow-up that calmed down, no bad batch
        ev: dict[str, Any] = {
            "spike": spike.evidence,
            "gradient_spike": spike.step in grads,
            BACK_WITHIN: back,
        }
        summary = (
            f"one batch at step {spike.step}: the loss jumped "
            f"{_jump(spike.evidence)} and {outcome}, an "
            "outlier in the data"
        )
        period = _recurring(facts, spike)
        if period is None and _as_rough_before(loss, spike.step):
            continue  # the run had thrown its loss about as far before: its roughness, no batch
        if period is not None:
            ev[RECURS_EVERY] = period
            summary = (
                f"a batch at step {spike.step} of a kind the stream mixes in every {period} "
                f"records: the loss jumped {_jump(spike.evidence)} and {outcome}, as it had "
                "at each before; absorbed each time, not an instability"
            )
        hard = bool(spike.evidence.get(HARD_BATCH))
        if hard:
            summary += (
                "; its gradient was of the usual size and the next loss was back inside the "
                "band before it: a batch the update did not feel (a robust loss capped its "
                "pull; a noisy stream's or a bad one, the run was not harmed)"
            )
        summary += _batches_behind([spike], ev)
        return Found(summary, spike.step, [], ev, severity="info" if period or hard else None)
    return None


# A loss that jumped this share or more of a spike's jump over the median of the ROUGH_LEVEL
# records before it (the rise above that level, as a share of the spike's), in the
# ROUGH_WINDOW records before that spike, among ROUGH_MANY jumps or more of ROUGH_OFTEN of it,
# makes the spike one more of the run's own jumps.
ROUGH_SHARE, ROUGH_WINDOW, ROUGH_LEVEL = 0.5, 100, 9
ROUGH_OFTEN, ROUGH_MANY = 0.1, 5


def _jumps(values: np.ndarray) -> np.ndarray:
    """Each finite loss over the median of the ``ROUGH_LEVEL`` finite losses before it (NaN
    where there are fewer, or that median is not positive)."""
    out = np.full(len(values), np.nan)
    if len(values) <= ROUGH_LEVEL:
        return out
    levels = _running_medians(values[:-1], ROUGH_LEVEL)
    finite = sliding_window_view(np.isfinite(values[:-1]), ROUGH_LEVEL).all(axis=1)
    now = values[ROUGH_LEVEL:]
    read = finite & (levels > 0) & np.isfinite(now)
    out[ROUGH_LEVEL:][read] = now[read] / levels[read]
    return out


def _as_rough_before(loss: tuple[np.ndarray, np.ndarray], step: int) -> bool:
    """Whether, in the ``ROUGH_WINDOW`` records before ``step``, the loss rose above the
    records before it by ``ROUGH_SHARE`` of what it rose by at ``step`` or more (each over the
    median of the ``ROUGH_LEVEL`` before it), and by ``ROUGH_OFTEN`` of it at ``ROUGH_MANY``
    records or more: a run that throws its loss about (an adaptive step far too large, a batch
    size of one) makes jumps like it of its own, often, where one bad batch stands out of a calm
    run by orders of magnitude (and a stream's occasional harder batch is one of a few)."""
    steps, values = loss
    at = int(np.searchsorted(steps, step))
    if at >= len(steps) or steps[at] != step or at < ROUGH_LEVEL:
        return False
    jumps = _jumps(values[max(0, at - ROUGH_WINDOW - ROUGH_LEVEL) : at + 1])
    now, before = jumps[-1], jumps[ROUGH_LEVEL:-1]
    before = before[np.isfinite(before)]
    if not now > 1 or not len(before) or not before.max() - 1 >= ROUGH_SHARE * (now - 1):
        return False
    return int((before - 1 >= ROUGH_OFTEN * (now - 1)).sum()) >= ROUGH_MANY
