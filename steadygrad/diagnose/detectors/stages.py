"""A new stage of the data, read live from the loss: it stepped up at one step and did not climb
on from there (a curriculum's next stage, hard negatives switched on, a new task's head joining
the sum). A divergence climbs on; a stage is learnt, or at least held."""

from __future__ import annotations

import math
import statistics
from collections import deque

# The loss this many times the median of the STAGE_BEFORE losses before it, the loss just before
# it still under LEVEL_BEFORE times that median: a step up between two steps.
STEPPED_UP, LEVEL_BEFORE, STAGE_BEFORE = 2.0, 1.5, 20
# Losses read at the new level, the step up's included, before it is judged: a stage when the
# median of the last STAGE_ENDS stays under the median of the first STAGE_ENDS plus CLIMBED_ON
# times the step up (noise on a flat new level does not read as a climb; a run that goes on
# climbing after its first jump climbs by a good part of that jump again).
STAGE_WATCH, STAGE_ENDS, CLIMBED_ON = 10, 4, 0.5

WATCHING, STAGE, CLIMB, BACK = "watching", "stage", "climb", "back"


class StageWatch:
    """Watches a loss for a step up between two steps and judges it over the next
    ``STAGE_WATCH`` losses: :meth:`add` returns ``"watching"`` from the step up on, then once
    ``"stage"`` (the loss did not climb on from its first values at the new level) or
    ``"climb"`` (it did, or blew up: ``STEPPED_UP`` times the step up again, or not finite) or
    ``"back"`` (a loss came back under ``LEVEL_BEFORE`` times the level before: one batch, or a
    stage learnt at once); None while nothing is watched.

    Example:
        >>> watch = StageWatch()
        >>> said = [watch.add(x) for x in [0.1] * 30 + [0.9] + [0.8, 0.85, 0.7] * 3]
        >>> said[29:31], said[-1]
        ([None, 'watching'], 'stage')
    """

    def __init__(self) -> None:
        self._before: deque[float] = deque(maxlen=STAGE_BEFORE + 1)
        self._level = math.nan  # the median before the step up being watched
        self.stage: list[tuple[int | None, float]] = []  # (step, loss) at the new level
        self.judged: list[tuple[int | None, float]] = []  # those of the last stage judged
        self.jumped: tuple[float, float] | None = None  # (the step up's loss, the level before)

    def add(self, loss: float, step: int | None = None) -> str | None:
        if self.stage:
            return self._judge(loss, step)
        if not math.isfinite(loss):
            return None
        before = self._before
        before.append(loss)
        if len(before) <= STAGE_BEFORE:
            return None
        level = statistics.median(list(before)[:-1])
        if level > 0 and loss >= STEPPED_UP * level and before[-2] < LEVEL_BEFORE * level:
            self.stage, self._level, self.jumped = [(step, loss)], level, (loss, level)
            return WATCHING
        return None

    def _judge(self, loss: float, step: int | None) -> str:
        stage = self.stage
        if not (math.isfinite(loss) and loss < STEPPED_UP * stage[0][1]):
            self._end()
            return CLIMB
        if loss < LEVEL_BEFORE * self._level:
            self._end()
            return BACK
        stage.append((step, loss))
        if len(stage) < STAGE_WATCH:
            return WATCHING
        first = statistics.median(x for _, x in stage[:STAGE_ENDS])
        last = statistics.median(x for _, x in stage[-STAGE_ENDS:])
        verdict = STAGE if last <= first + CLIMBED_ON * (first - self._level) else CLIMB
        self._end()
        return verdict

    def _end(self) -> None:
        self._before.extend(x for _, x in self.stage)
        self.judged, self.stage = self.stage, []
