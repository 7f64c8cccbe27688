"""A new stage of the data, read live from the loss: it stepped up at one step after an ordinary
update and did not climb on from there (a curriculum's next stage, hard negatives switched on, a
new task's head joining the sum). A divergence climbs on; a stage is learnt, or at least held.
A loss is the weights' and the batch's: with the weights moved as usual, a step up between two
steps is the batch's. And a new stage of the schedule: a warm restart of the learning rate."""

from __future__ import annotations

import math
import statistics
from collections import deque

from steadygrad.core import Record
from steadygrad.core.metrics import (
    GRAD_NORM,
    GRAD_NORM_PRECLIP,
    LEARNING_RATE,
    OPTIMIZER_FAMILY,
    OPTIMIZER_RESTARTED,
    PARAM_NORM,
)
from steadygrad.core.optimizer import PER_COORDINATE

# The loss this many times the median of the STAGE_BEFORE losses before it, the loss just before
# it still under LEVEL_BEFORE times that median: a step up between two steps.
STEPPED_UP, LEVEL_BEFORE, STAGE_BEFORE = 2.0, 1.5, 20
# Losses read at the new level, the step up's included, before it is judged: a stage when the
# median of the last STAGE_ENDS stays under the median of the first STAGE_ENDS plus CLIMBED_ON
# times the step up, and plus CLIMBED_ON_SHARE of itself (noise on a flat new level does not
# read as a climb; a run that goes on climbing after its first jump climbs by a good part of
# that jump again, or, after a step up of hundreds of times, by a good part of its new level:
# targets that jumped and kept growing 3% a step climbed 40% over the watch).
STAGE_WATCH, STAGE_ENDS, CLIMBED_ON, CLIMBED_ON_SHARE = 10, 4, 0.5, 0.25

# The weights' norm moved THREW times its usual step by the update before the step up (a rate
# glitch, a spike's update), or REPLACED times between its record and the one before, beyond
# what the step up's own gradient moves them (an adaptive optimizer's step keeps its size
# whatever the gradient; SGD's grows with it), as the rules read weights replaced between steps
# (a checkpoint reload, an EMA swap): the weights made the step up, not the data. (The norm's
# change is a noisy read of a step: 7-12x its median on a shard switch under RAdam.) So did an
# optimizer whose state started again from nothing (its first steps the size of its rate).
THREW, REPLACED = 10.0, 30.0

# A warm restart: a group's learning rate raised RESTART_RAISE times or more between two records,
# to no more than RESTART_SEEN times the highest rate that group had trained at (SGDR's restarts,
# a cyclic schedule's next cycle, a re-warm-up for a new head). Of the kept runs' rates raised 2x
# or more after the first records, every one back to a rate already used was a restart the
# scenario meant (or a resume that reset its schedule); every one past the highest was a typo or
# a deliberate new peak, which the stability limit may not allow, and is no restart.
RESTART_RAISE, RESTART_SEEN = 2.0, 1.05
# A schedule that cycles (raised a rate back, at once or record by record as CyclicLR's triangle
# climbs, RESTART_RAISE times its lowest since its highest) makes the loss rise and fall with
# it: a loss is compared with the others only where the rate sits in the lower half
# (UPPER_HALF) of the range it cycles over, where a climb is not the rate's doing.
UPPER_HALF = 0.5

WATCHING, STAGE, CLIMB, BACK = "watching", "stage", "climb", "back"


class RateRestarts:
    """Tells a record whose learning rate a schedule restarted (see ``RESTART_RAISE``): the
    loss's bump and the gradient's rise that follow are the restart's known cost (Loshchilov
    and Hutter 2017, SGDR), so a detector's levels start again from it. ``rising``: the
    highest group's rate rose over the last ``STAGE_ENDS`` records (a warm-up, a schedule's
    step).

    Example:
        >>> restarts = RateRestarts()
        >>> [restarts.add({"0": lr}) for lr in [0.3, 0.2, 0.1, 0.01, 0.3, 0.2, 0.9]]
        [False, False, False, False, True, False, False]
        >>> restarts.rising
        True
        >>> triangle = RateRestarts()
        >>> [(triangle.add({"0": lr}) or triangle.raised) for lr in [0.4, 0.1, 0.15, 0.25, 0.35, 0.1]]
        [False, False, False, False, True, False]
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._highest: dict[str, float] = {}
        self._trough: dict[str, float] = {}  # the lowest rate since the group's highest
        self._cycled: set[str] = set()  # groups whose rate was raised back (see UPPER_HALF)
        self._raised = False  # one of those is in the upper half of its range now
        self._recent: deque[float] = deque(maxlen=STAGE_ENDS)  # the highest group's, by record

    @property
    def rising(self) -> bool:
        return len(self._recent) > 1 and self._recent[-1] > min(self._recent)

    @property
    def raised(self) -> bool:
        """A cycling schedule has a group's rate in the upper half of its range now."""
        return self._raised

    def add(self, rates: dict[str, float]) -> bool:
        """Whether ``rates`` (each group's learning rate at a record) restarted the schedule."""
        self._recent.append(max(rates.values(), default=math.nan))
        restarted = self._raised = False
        for group, rate in rates.items():
            if not (math.isfinite(rate) and rate > 0):
                continue
            last, highest = self._last.get(group), self._highest.get(group, 0.0)
            trough = rate if rate > highest else min(self._trough.get(group, rate), rate)
            if last and rate >= RESTART_RAISE * last and rate <= RESTART_SEEN * highest:
                restarted = True
            if RESTART_RAISE * trough <= rate <= RESTART_SEEN * highest:
                self._cycled.add(group)
            upper = rate > trough + UPPER_HALF * (max(highest, rate) - trough)
            self._raised = self._raised or (group in self._cycled and upper)
            self._last[group], self._trough[group] = rate, trough
            self._highest[group] = max(highest, rate)
        return restarted

    def add_record(self, record: Record) -> bool:
        """:meth:`add` for a Monitor's record."""
        return self.add(record.family(LEARNING_RATE.name))


class StageWatch:
    """Watches a loss for a step up between two steps and judges it over the next
    ``STAGE_WATCH`` losses: :meth:`add` returns ``"watching"`` from the step up on, then once
    ``"stage"`` (the loss did not climb on from its first values at the new level) or
    ``"climb"`` (it did, or blew up: ``STEPPED_UP`` times the step up's loss, or not finite) or
    ``"back"`` (a loss came back under ``LEVEL_BEFORE`` times the level before: one batch, or a
    stage learnt at once); None while nothing is watched. Given the weights' norm and the
    gradient norm of each record, and the optimizer's restarts, a step up the weights made
    (``THREW``, ``REPLACED``, an optimizer that started again from nothing) is not watched.

    Example:
        >>> watch = StageWatch()
        >>> said = [watch.add(x) for x in [0.1] * 30 + [0.9] + [0.8, 0.85, 0.7] * 3]
        >>> said[29:31], said[-1]
        ([None, 'watching'], 'stage')
    """

    def __init__(self) -> None:
        self._before: deque[float] = deque(maxlen=STAGE_BEFORE + 1)
        self._moves: deque[float] = deque(maxlen=STAGE_BEFORE + 1)  # |change| of the weights' norm
        self._grads: deque[float] = deque(maxlen=STAGE_BEFORE + 1)
        self._restarts: deque[bool] = deque(maxlen=2)  # the optimizer's state started again
        self._weights = math.nan
        self.per_coordinate = False  # the optimizer scales its step per coordinate (Adam)
        self._level = math.nan  # the median before the step up being watched
        self.stage: list[tuple[int | None, float]] = []  # (step, loss) at the new level
        self.judged: list[tuple[int | None, float]] = []  # those of the last stage judged

    def add(
        self,
        loss: float,
        step: int | None = None,
        weights: float | None = None,
        grad: float | None = None,
        restarted: bool = False,
    ) -> str | None:
        """``weights``, ``grad``: the norms of the weights after this record's update and of
        its gradient; ``restarted``: the optimizer's state started again at this record."""
        self._read_norms(weights, grad)
        self._restarts.append(restarted)
        if self.stage:
            return self._judge(loss, step)
        if not math.isfinite(loss):
            return None
        before = self._before
        before.append(loss)
        # a step up is STEPPED_UP / LEVEL_BEFORE times the loss before it at least: the median
        # of the window, read on every record by each detector's watch, only for such a loss
        if len(before) <= STAGE_BEFORE or not loss > STEPPED_UP / LEVEL_BEFORE * before[-2]:
            return None
        level = statistics.median(list(before)[:-1])
        stepped = loss >= STEPPED_UP * level and before[-2] < LEVEL_BEFORE * level
        if level > 0 and stepped and not self.weights_moved():
            self.stage, self._level = [(step, loss)], level
            return WATCHING
        return None

    def add_record(self, record: Record, loss: float) -> str | None:
        """:meth:`add` for a Monitor's record: its step, norms and optimizer family."""
        if OPTIMIZER_FAMILY in record.meta:
            self.per_coordinate = record.meta[OPTIMIZER_FAMILY] in PER_COORDINATE
        values = record.values
        grad = values.get(GRAD_NORM_PRECLIP.name, values.get(GRAD_NORM.name))
        # the step count the optimizer had before it restarted (absent, or NaN, when it did not)
        restarted = (values.get(OPTIMIZER_RESTARTED.name) or 0.0) > 0
        return self.add(loss, record.step, values.get(PARAM_NORM.name), grad, restarted)

    def _read_norms(self, weights: float | None, grad: float | None) -> None:
        if weights is None or not math.isfinite(weights):
            self._moves.append(math.nan)
        else:
            self._moves.append(abs(weights - self._weights))  # NaN after a record without
            self._weights = weights
        self._grads.append(grad if grad is not None and math.isfinite(grad) else math.nan)

    def weights_moved(self) -> bool:
        """Whether the weights made the step up, not the data: the optimizer's state started
        again from nothing at this record or the one before (its first steps are the size of
        its rate, whatever the gradient), the update before this record threw the weights
        (``THREW`` times the median move of the records before), or they moved ``REPLACED``
        times it, and further than this record's gradient moves them, between the record
        before and this one: replaced."""
        if any(self._restarts):
            return True
        moves, grads = list(self._moves), list(self._grads)
        usual_move = _median_finite(moves[:-2])
        if not usual_move > 0:
            return False
        if moves[-2] >= THREW * usual_move:
            return True
        usual_grad = _median_finite(grads[:-1])
        pulled = grads[-1] / usual_grad if usual_grad > 0 else math.nan
        explained = 1.0 if self.per_coordinate or not pulled > 1.0 else pulled
        return moves[-1] >= REPLACED * usual_move * explained

    def _judge(self, loss: float, step: int | None) -> str:
        stage = self.stage
        if not (math.isfinite(loss) and loss < STEPPED_UP * stage[0][1]):
            self._end()  # blown up: stepped up again from the step up, or not finite
            return CLIMB
        if loss < LEVEL_BEFORE * self._level:
            self._end()
            return BACK
        stage.append((step, loss))
        if len(stage) < STAGE_WATCH:
            return WATCHING
        first = statistics.median(x for _, x in stage[:STAGE_ENDS])
        last = statistics.median(x for _, x in stage[-STAGE_ENDS:])
        allowed = min(CLIMBED_ON * (first - self._level), CLIMBED_ON_SHARE * first)
        verdict = STAGE if last <= first + allowed else CLIMB
        self._end()
        return verdict

    def _end(self) -> None:
        self._before.extend(x for _, x in self.stage)
        self.judged, self.stage = self.stage, []


def _median_finite(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if len(finite) >= 3 else math.nan
