"""Detectors of instabilities that build up: a loss that climbs away from its best level, a
gradient norm that keeps growing (and the tensor where the growth starts), steps taken beyond
the stability limit.

Each compares against the best *sustained* level seen so far (the minimum of a short running
median), not against a trailing window: a baseline that follows a slow rise never sees it.
All are live from the first record: a learning rate far above the limit blows up in a dozen
steps.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from steadygrad.core import Finding, FindingKind, Record, Severity
from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.metrics import (
    ADAPTIVE_UPDATE,
    DIRECTIONAL_SHARPNESS_RATIO,
    GRAD_NORM,
    GRAD_NORM_PRECLIP,
    LEARNING_RATE,
    LOSS,
    OPTIMIZER_FAMILY,
    PARAM_NORM,
    RECURRENT_MODULES,
    UPDATE_RATIO,
)
from steadygrad.core.optimizer import PER_COORDINATE
from steadygrad.diagnose.detectors.base import Detector, shrunk_by_clipping
from steadygrad.diagnose.detectors.stages import (
    STAGE,
    STAGE_ENDS,
    WATCHING,
    RateRestarts,
    StageWatch,
)

LOSS_DIVERGENCE = FindingKind(
    "loss_divergence", "the loss climbed well above the best level it had sustained"
)
GRADIENT_GROWTH = FindingKind(
    "gradient_growth", "the gradient norm grew far above its best sustained level, and keeps on"
)
UNSTABLE_STEPS = FindingKind(
    "unstable_steps", "successive updates overshoot: curvature along the step above 2/lr"
)


WRECKED_WEIGHTS = "wrecked_weights"  # evidence of a gradient explosion: where the run broke
BROKE_AT_ONCE = "broke_at_once"  # evidence of a divergence: the first updates broke the run
GROWTH_BEGAN = "started_at_step"  # evidence of gradient growth: where the growth began
AT_INITIALISATION = "at_initialisation"  # evidence of gradient growth: found at the first record
NOISE_Z = 4.0  # how many times its own noise a level must move before it counts as moved
LOCAL_NOISE = 16  # the last values whose scatter is also read where a level sets a new floor
MEASURE_EVERY = 8  # values between two measurements of a sustained level's scatter


class SustainedLevel:
    """The running median of the last ``window`` values, the lowest such median so far (the
    best sustained level), the first one (where the series started), and how far single values
    stray from one to the next over the last ``noise_window`` (and, with ``local``, over the
    last ``local`` values where the level sets a new floor, if they stray further).

    Example:
        >>> level = SustainedLevel(window=3)
        >>> for x in [5.0, 4.0, 3.0, 9.0, 3.5, 3.2]:
        ...     level.add(x)
        >>> level.floor, level.current, level.start
        (3.5, 3.5, 4.0)
    """

    def __init__(self, window: int = 5, noise_window: int = 64, local: int | None = None) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.local = local
        self.recent: deque[float] = deque(maxlen=noise_window)
        self.floor = math.inf
        self.floor_step: int | None = None
        self.floor_noise = 0.0
        self.floor_tail = 0.0
        self.start = math.nan
        self.first = math.nan  # the first single value (of a loss: before any update)
        self.current = math.nan
        self._seen = 0
        self._measured = 0  # values seen when the scatter was last measured

    def add(self, value: float, step: int | None = None) -> None:
        self.values.append(value)
        self.recent.append(value)
        self._seen += 1
        if self._seen == 1:
            self.first = value
        if len(self.values) < min(3, self.values.maxlen or 3):
            return
        self.current = statistics.median(self.values)
        if math.isnan(self.start):
            self.start = self.current
        # The scatter is measured afresh every few values, not on every step of a descent
        # (each new floor): it changes slowly, and the detectors read it on every record.
        fresh = not self._measured or self._seen - self._measured >= MEASURE_EVERY
        if self.current < self.floor:
            self.floor, self.floor_step = self.current, step
            if fresh:
                # With ``local``, the scatter at the floor is read over the whole window and
                # over its last values alone, the larger: a classifier that has just learnt
                # scatters far more than on the flat plateau before it, which fills the window.
                local = self.spread(self.local) if self.local else 0.0
                self.floor_noise = max(self.spread(), local)
                self.floor_tail = self.tail()
                self._measured = self._seen
        elif fresh and self._seen <= (self.recent.maxlen or 0) and self.current <= self.start:
            # A floor set in the first steps rests on a handful of values (a batch of one
            # example can give a median of three near 0): how noisy the series is, is learnt
            # over the first window, while it stays below where it started (a run that climbs
            # from the start is diverging, and its climb is no noise); with ``local``, over the
            # last values too, as at a new floor (a classifier that has just learnt).
            local = self.spread(self.local) if self.local else 0.0
            self.floor_noise = max(self.floor_noise, self.spread(), local)
            self.floor_tail = max(self.floor_tail, self.tail())
            self._measured = self._seen

    def spread(self, last: int | None = None) -> float:
        """How far one value strays from the next: 1.4826 x the MAD of the steps between the
        last ``noise_window`` values (or the ``last`` few), over sqrt(2). Steps, not values: the
        trend of a loss that is still falling is no noise (its spread would be the whole
        descent)."""
        steps = self._steps()
        if steps is not None and last is not None:
            steps = steps[-last:]
        if steps is None:
            return 0.0
        centred = np.abs(steps - np.median(steps))
        return float(1.4826 * np.median(centred) / math.sqrt(2.0))

    def tail(self) -> float:
        """How far the 95th percentile of the steps between the last ``noise_window`` values
        sits above their median (0 before 20 values): the jumps of a heavy-tailed series that
        the MAD misses (a batch of one example near zero loss)."""
        steps = self._steps() if len(self.recent) >= 20 else None
        if steps is None:
            return 0.0
        return max(float(np.quantile(steps, 0.95) - np.median(steps)), 0.0)

    def _steps(self) -> np.ndarray | None:
        if len(self.recent) < 3:
            return None
        return np.diff(np.fromiter(self.recent, dtype=np.float64, count=len(self.recent)))

    def noise(self) -> float:
        """How far one value strays (see :meth:`spread`), measured where the series was at its
        best, so a climb that follows does not count as noise."""
        return self.floor_noise

    def lost_progress(self, fraction: float = 0.5) -> bool:
        """The running median has given back ``fraction`` of the progress made (or, before
        any progress, climbed ``fraction`` of its level)."""
        gained = max(abs(self.floor), self.start - self.floor)
        return self.current - self.floor >= fraction * gained

    def scale(self) -> float:
        """The series' natural size: its best level, or a quarter of the progress it made from
        where it started (a loss trained near 0 has a tiny level but a large scale), counted
        from its first value where the first steps threw it far above that (a loss at 0.7
        blown to 400 and back made no progress from 400)."""
        start = min(self.start, self.first) if self.first > 0 else self.start
        return max(abs(self.floor), 0.25 * (start - self.floor), 1e-12)


def _median_error(values: Sequence[float]) -> float:
    """The standard error of the median of ``values``, read from their own order statistics:
    half the distance between the values ranked ``sqrt(n) / 2`` either side of the middle. A
    normal scatter gives 1.25 sigma / sqrt(n); a scatter in two humps (mixup's batches, whose
    loss sits near 0 or near log 2 by the draw of the mixing weight) gives the gap between
    them, which a median of a few dozen values crosses from one window to the next."""
    ordered = sorted(values)
    n, middle, half = len(ordered), (len(ordered) - 1) / 2, math.sqrt(len(ordered)) / 2
    low = ordered[max(0, math.floor(middle - half))]
    high = ordered[min(n - 1, math.ceil(middle + half))]
    return (high - low) / 2


class LossDivergence(Detector):
    """The loss's running median climbs above its best sustained level by more than ``rise``
    times the loss's scale (its best level, or a quarter of the progress made) and more than
    ``noise_z`` times its noise, for ``patience`` records in a row: warning; by
    ``critical_ratio - 1`` times the scale: critical. A loss that is falling back (its last
    three values each lower than the one before) is recovering from a knock, not diverging: its
    records do not count. One value far out is critical once the next one is higher still (or
    not finite): a run that blew up, not one bad batch; the finding is dated to the first. A
    run whose first updates sent the loss far above its first value, and kept it there, broke
    at once (critical, dated to the first update; evidence ``broke_at_once``). One finding of
    each severity per episode; an episode ends once the loss has been back near the best level
    for ``2 * patience`` records. A loss that has been below zero climbs to a divergence only
    once clear above where it started, and one that started there (a policy gradient's
    surrogate) only by blowing up. A slow climb in noisy batches is read the same way over
    the median of the last ``SLOW_WINDOW`` losses, against that median's own noise (warning).
    A step up of the data (one loss rising past the margin from one within it, the weights moved
    as usual) that the loss is coming down from is a knock (a small head re-initialised, a run of
    hard batches): critical where it put the
    loss past the critical level, no warning otherwise; a warm restart of the learning rate (see
    :class:`RateRestarts`) starts the best level again, as a new stage of the data does.

    Example:
        >>> det = LossDivergence()
        >>> losses = [2.5 - 0.01 * t for t in range(60)] + [2.0 + 0.06 * t for t in range(150)]
        >>> found = [f for t, x in enumerate(losses) for f in det.update(Record(t, {"loss": x}))]
        >>> [f.severity for f in found]
        ['warning', 'critical']
    """

    per_task = True
    kind = LOSS_DIVERGENCE
    reads = (LOSS, PARAM_NORM, GRAD_NORM, GRAD_NORM_PRECLIP, LEARNING_RATE)
    emits = (LOSS_DIVERGENCE,)

    def __init__(
        self,
        rise: float = 0.5,
        critical_ratio: float = 3.0,
        patience: int = 3,
        noise_z: float = 4.0,
        window: int = 5,
    ) -> None:
        self.rise = finite_float("rise", rise, low=0.0, low_open=True)
        self.critical_ratio = finite_float("critical_ratio", critical_ratio, low=1.0)
        self.patience = positive_int("patience", patience)
        self.noise_z = finite_float("noise_z", noise_z, low=0.0)
        # The alarm reads the loss's scatter where it set its best level (LOCAL_NOISE): a
        # divergence must stand out of it. The gates of the other detectors ("is the loss off
        # its best?") keep the whole window's, and so lean towards yes.
        self.level = SustainedLevel(positive_int("window", window), local=LOCAL_NOISE)
        self.slow = SustainedLevel(SLOW_WINDOW, local=LOCAL_NOISE)
        self._above = 0
        self._slow_above = 0
        self._announced: int | None = None  # the step of the last finding
        self._calm = 0
        self._fired: set[str] = set()
        self._far: tuple[int, float] | None = None  # a far-out value waiting for the next one
        self._opening: list[tuple[int, float]] | None = []  # the first values, while judged
        self._stages = StageWatch()
        self._restarts = RateRestarts()
        self._stepped: list[float] | None = None  # the first losses from a step up
        self._step_at = 0
        self._jumped: tuple[int, float] | None = None  # a loss that jumped, awaiting the next
        self._within = 0  # records in a row with the level within its margin of the best
        self._knocked_at: int | None = None  # the step of the last knock the loss came down from

    def update(self, record: Record) -> list[Finding]:
        loss = record.values.get(LOSS.name)
        if loss is None or record.meta.get("skipped"):
            return []
        restarted = self._restarts.add_record(record)
        if restarted:  # a warm restart: its bump is the schedule's
            self._start_again([])
        level = self.level
        if self._restarts.raised and not restarted and self._held_by_the_rate(loss):
            return []  # a cycling rate high in its range: the loss is read in its lower half
        far, self._far = self._far, None
        stage = self._stages.add_record(record, loss)
        if not math.isfinite(loss):  # a far-out value, then a non-finite one: it blew up
            return self._emit(Severity.CRITICAL, *far, "loss") if far else []
        if stage == STAGE:  # what the model is asked to fit changed: its best level starts again
            self._start_again(self._stages.judged)
            return []
        level.add(loss, record.step)
        self.slow.add(loss, record.step)
        broke = self._broke_at_once(record.step, loss)
        if broke:
            return broke
        if not (math.isfinite(level.current) and math.isfinite(level.floor)):
            return []
        slow = self._slow_climb()
        floor, now, scale = level.floor, level.current, level.scale()
        margin = max(self.rise * scale, self.noise_z * level.noise(), level.floor_tail)
        # A loss that went below zero (a policy-gradient surrogate, an energy, a critic) has no
        # zero to measure its level from: it diverges only once clear above where it started;
        # one that started there (a surrogate whose level measures no progress: a policy
        # gradient's, its advantages centred on 0) only by blowing up.
        unanchored = level.start <= 0 or (floor < 0 and now <= level.start + margin)
        self._watch_a_step(record.step, loss, floor, margin)
        self._within = self._within + 1 if now - floor <= margin else 0
        knocked = False  # a knock the loss is coming down from: told only where it broke the run
        if now - floor <= margin or unanchored:
            self._above = 0
            if self._stepped is not None and len(self._stepped) >= STAGE_ENDS:
                self._stepped = None  # back near its best: the step is over
        else:
            if not self._recovering():
                self._above += 1
            knocked = self._held_after_a_step()
        calm = now - floor < margin / 2 and loss - floor < margin
        self._calm = self._calm + 1 if calm else 0
        if self._calm >= 2 * self.patience:
            self._fired.clear()  # back near its best for a while: a new episode can start
        if stage == WATCHING:  # a step up: the next losses tell a new stage from a climb
            if far is None and self._far_out(loss, floor, scale):
                far = (record.step, loss)
            self._far = far  # a far-out step up waits for the verdict
            return []
        if far and loss >= far[1] and "critical" not in self._fired:
            return self._emit(Severity.CRITICAL, *far, "loss")
        if (far is None or loss > far[1]) and self._far_out(loss, floor, scale):
            self._far = (record.step, loss)
        sustained = self._above >= self.patience
        if sustained and now - floor > (self.critical_ratio - 1) * scale:
            if "critical" not in self._fired:
                return self._emit(Severity.CRITICAL, record.step, now, "loss_median")
        elif sustained and not self._fired and not knocked:
            return self._emit(Severity.WARNING, record.step, now, "loss_median")
        elif slow and not self._fired and not knocked:
            # the best level stays the running median's (the climb other findings chain to)
            found = self._emit(Severity.WARNING, record.step, self.slow.current, "loss_median")
            found[0].evidence.update(window=SLOW_WINDOW, window_best_level=self.slow.floor)
            return found
        return []

    def _held_by_the_rate(self, loss: float) -> bool:
        """A finite loss under ``critical_ratio`` times the best level: the rate's to explain."""
        floor = self.level.floor
        return math.isfinite(loss) and (not floor < math.inf or loss < self.critical_ratio * floor)

    def _start_again(self, stage: list[tuple[int | None, float]]) -> None:
        """Levels that start again from ``stage``'s losses, as at the start of a run."""
        self.level = SustainedLevel(self.level.values.maxlen or 5, local=LOCAL_NOISE)
        self.slow = SustainedLevel(SLOW_WINDOW, local=LOCAL_NOISE)
        for step, loss in stage:
            self.level.add(loss, step)
            self.slow.add(loss, step)
        self._above = self._slow_above = self._calm = 0
        self._fired.clear()
        self._far = None
        self._stepped = self._knocked_at = self._jumped = None

    def _slow_climb(self) -> bool:
        """The slow test: the median of the last ``SLOW_WINDOW`` losses above its own best by
        ``rise`` times the scale and ``noise_z`` times that median's own noise (a median of n
        values scatters about 1.25 / sqrt(n) times one value), ``patience`` records in a row.
        A climb too slow and too noisy for the running median of five to leave the batches'
        scatter (a weight-decay sign bug: 0.07 to 0.14 over 200 steps, each batch +-0.05)
        stands out of a long median's."""
        slow = self.slow
        if len(slow.values) < SLOW_WINDOW or not slow.floor < math.inf:
            return False
        noise = max(1.25 / math.sqrt(SLOW_WINDOW) * slow.noise(), _median_error(slow.values))
        margin = max(self.rise * slow.scale(), self.noise_z * noise, 0.0)
        unanchored = slow.start <= 0 or (slow.floor < 0 and slow.current <= slow.start + margin)
        # a climb from a best level set before the last finding, or before a knock the loss
        # came down from, has been told (the long median carries a knock for a long while
        # after the fast test has seen it pass)
        told = any(
            step is not None and (slow.floor_step or 0) <= step
            for step in (self._announced, self._knocked_at)
        )
        if slow.current - slow.floor > margin and not unanchored and not told:
            self._slow_above += 1
        else:
            self._slow_above = 0
        return self._slow_above >= self.patience

    def _broke_at_once(self, step: int, loss: float) -> list[Finding]:
        """The first updates broke the run: each of the ``window + patience`` values after the
        first one (the loss before any update) is ``critical_ratio`` times that first value or
        more. Its best level is then the level it had before it was trained, which the floor of
        a running median never sees."""
        opening = self._opening
        if opening is None:
            return []
        opening.append((step, loss))
        if len(opening) < 1 + (self.level.values.maxlen or 5) + self.patience:
            return []
        self._opening = None
        first, after = opening[0][1], np.array([x for _, x in opening[1:]])
        if not (first > 0 and after.min() >= self.critical_ratio * first):
            return []
        median = float(np.median(after))
        self._fired.add(Severity.CRITICAL.value)
        evidence = {
            "loss_median": median,
            "best_level": first,
            "best_level_step": opening[0][0],
            "ratio": median / first,
            BROKE_AT_ONCE: True,
        }
        return [Finding(self.kind, opening[1][0], None, evidence, Severity.CRITICAL)]

    def _watch_a_step(self, step: int, loss: float, floor: float, margin: float) -> None:
        """A step up: one loss rose by more than ``margin`` from one near the best level to one
        beyond it, and the next stayed beyond it, after a level that stood within the margin
        for ``STAGE_ENDS`` records, past the first 20 (a small head re-initialised, a run of
        hard batches; one heavy-tailed batch comes straight back, and a climb was
        climbing before); its first ``STAGE_ENDS`` losses say where it put the loss. Not while
        the learning rate rose over the last ``STAGE_ENDS`` records (a warm-up or a schedule's
        step may have taken it past the stability limit), nor where the weights made it
        (:meth:`StageWatch.weights_moved`: a reload, a thrown step, an optimizer started again,
        whose climb the rules trace to the replacement): the step is judged as a climb."""
        stepped, jumped, self._jumped = self._stepped, self._jumped, None
        if stepped is not None:
            if len(stepped) < 2 * STAGE_ENDS:
                stepped.append(loss)
            return
        if jumped is not None and loss - floor > margin:  # and the next one stayed up: a step
            self._stepped, self._step_at = [jumped[1], loss], jumped[0]
            return
        values = self.level.values
        before = values[-2] if len(values) >= 2 else math.nan
        # the level stood within the margin until now, where its scatter is known (as for a
        # far-out value: 20 values)
        steady = self._within >= STAGE_ENDS and len(self.level.recent) > 20
        jumped = before - floor <= margin < min(loss - before, loss - floor)
        if jumped and steady and not self._restarts.rising and not self._stages.weights_moved():
            self._jumped = (step, loss)

    def _held_after_a_step(self) -> bool:
        """The loss is coming down from where a step up put it (the median of its first
        ``STAGE_ENDS`` losses there): from ``2 * STAGE_ENDS`` losses on, the median of its last
        ``STAGE_ENDS`` stands below that by more than ``FELL_Z`` times its noise. A run
        recovering from a knock (a small head re-initialised, a run of hard batches), which the
        loss-spike detector reads, not a climb; a loss that holds where the step put it (a rate
        raised past the stability limit) or climbs on is judged as it stands from then on."""
        stepped = self._stepped
        if stepped is None:
            return False
        if len(stepped) < 2 * STAGE_ENDS:
            return True
        put, last = stepped[:STAGE_ENDS], list(self.level.recent)[-STAGE_ENDS:]
        if statistics.median(last) < statistics.median(put) - FELL_Z * self.level.noise():
            self._knocked_at = self._step_at
            return True
        self._stepped = None  # no knock: the loss is judged as it stands
        return False

    def _recovering(self) -> bool:
        last = list(self.level.values)[-3:]
        return len(last) == 3 and last[0] > last[1] > last[2]

    def _emit(self, severity: Severity, step: int, loss: float, what: str) -> list[Finding]:
        """``what``: "loss" for one far-out value, "loss_median" for the running median."""
        self._fired.add(severity.value)
        self._announced = step
        floor = self.level.floor
        evidence = {
            what: loss,
            "best_level": floor,
            "best_level_step": self.level.floor_step,
            "ratio": loss / floor if floor > 0 else math.inf,
        }
        return [Finding(self.kind, step, None, evidence, severity)]

    def _far_out(self, loss: float, floor: float, scale: float) -> bool:
        """One value far out: far beyond the run's own scatter; before that is known (20
        values: a run can blow up in its first three steps), far above every value seen so far.
        The scatter is only read for a candidate."""
        if loss - floor <= (self.critical_ratio**2 - 1) * scale:
            return False
        level = self.level
        earlier = len(level.recent) - 1
        if earlier >= 19:
            return loss - floor > max(2 * self.noise_z * level.noise(), self.noise_z * level.tail())
        if earlier:
            return loss > self.critical_ratio**2 * max(list(level.recent)[:-1])
        return True


# How far, in a loss's noise, the median of its last STAGE_ENDS values must stand below that of
# the first STAGE_ENDS after a step up for the loss to be coming down from it (a median of four
# scatters about 0.6 times one value: two of the noise is over three times the scatter of the
# difference of two such medians).
FELL_Z = 2.0


# The long running median of LossDivergence's slow test: half the noise window (a median of 32
# scatters a fifth as much as one batch's loss; over 673 kept runs it warned first on eight
# weight-decay sign bugs and drifting targets and on no healthy control).
SLOW_WINDOW = 32


# A gradient floor set within this many records of the start, or while the loss was still within
# this share of where it started (a plateau a transformer can sit on for 50 steps, at chance),
# with the loss now this share below where it stood then, is a flat start the model left (see
# GradientGrowth._left_a_flat_start).
START_RECORDS, START_LEFT = 10, 0.2
# A best level this many times below the highest level sustained before it is a gradient that
# vanished, not the level healthy training settled at (see GradientGrowth).
VANISHED = 1e3
# A gradient that collapsed after a large update while the loss fell to this share of the lowest
# loss up to that update (or below) vanished with the loss: the step solved the task, it wrecked
# nothing (over the kept runs' explosions, only such a step fell this far: one wreck's loss
# came down 1000x from the huge loss it made, never below where it had been).
LEARNT = 1e-3


# Layer after layer multiplying what passes through it: CHAIN layers or more in a row, each
# STEP_GAIN times the one before, the last CHAIN_AMPLIFIED times the first (a healthy stack
# keeps its layers' gradients and outputs within a few times of each other; a stack past the
# edge of chaos, or a He gain applied twice, multiplies them by 1.2-1.8 a layer, no steadier:
# of 817 kept runs, only two explosions had a gradient chain reaching 30x).
CHAIN, STEP_GAIN, CHAIN_AMPLIFIED = 5, 1.2, 30.0


def gain_chains(values: Sequence[float]) -> Iterator[tuple[int, int]]:
    """The spans ``[i, j)`` of ``CHAIN`` values or more in a row, each ``STEP_GAIN`` times the
    one before it.

    Example:
        >>> list(gain_chains([1, 2, 4, 8, 16, 32, 1, 1]))
        [(0, 6)]
    """
    start = 0
    for k in range(1, len(values) + 1):
        if k < len(values) and values[k - 1] > 0 and values[k] >= STEP_GAIN * values[k - 1]:
            continue
        if k - start >= CHAIN:
            yield start, k
        start = k


def like_layers(names: Iterable[str]) -> dict[str, list[tuple[int, str]]]:
    """``names`` grouped into stacks of like layers, one name but for one index (``body.0`` ..
    ``body.14``, ``blocks.0.conv1.weight`` .. ``blocks.11.conv1.weight``): each stack's
    (index, name)s, in the order given; names with no index are left out.

    Example:
        >>> like_layers(["body.0.weight", "body.1.weight", "head.weight"])
        {'body.#.weight': [(0, 'body.0.weight'), (1, 'body.1.weight')]}
    """
    stacks: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        index = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
        if index is not None:
            stack = name[: index.start(1)] + "#" + name[index.end(1) :]
            stacks.setdefault(stack, []).append((int(index.group(1)), name))
    return stacks


def stack_chains(grad_norms: Mapping[str, float]) -> list[list[tuple[str, float]]]:
    """The weight gradients of a stack of like layers (``body.0`` .. ``body.14``: one name but
    for the index; like layers share a shape, so their gradients compare) that grow from the
    stack's last layer back to its first in a chain (:func:`gain_chains`), the first
    ``CHAIN_AMPLIFIED`` times the last: each chain's (tensor, gradient norm), from the output back.

    Example:
        >>> norms = {f"body.{i}.weight": 2.0 ** (8 - i) for i in range(8)}
        >>> [len(chain) for chain in stack_chains({**norms, "head.weight": 500.0})]
        [8]
    """
    weights = [t for t, norm in grad_norms.items() if t.endswith("weight") and norm > 0]
    found = []
    for stack in like_layers(weights).values():
        layers = [(index, t, float(grad_norms[t])) for index, t in stack]
        layers.sort(reverse=True)  # from the output back
        norms = [norm for _, _, norm in layers]
        chains = [
            [(tensor, norm) for _, tensor, norm in layers[i:j]]
            for i, j in gain_chains(norms)
            if norms[j - 1] >= CHAIN_AMPLIFIED * norms[i]
        ]
        if not chains and rises_steadily(norms):
            # no chain of steps each STEP_GAIN (a layer at 1.19x breaks it), but the whole
            # stack rising back to its first layer as steadily: the same growth, read whole
            chains = [[(tensor, norm) for _, tensor, norm in layers]]
        found += chains
    return found


# Rank correlation of a stack's readings (weight gradients from the output back, outputs from
# the input on) with depth, at least this, over STEADY_LAYERS layers or more: they rise through a
# deep stack almost at every layer (a rank order over a handful of like-named layers, a feature
# pyramid's parallel projections, says nothing of depth). Read whole, such a rise is growth from
# STEADY_AMPLIFIED times (ten layers at 1.2x a layer make 5x; a tanh stack just past the edge of
# chaos, 6-8x). Of the kept runs' stacks of ten like layers or more at the first record, the 71
# whose gradients rose back this steadily 3x or more were all exploding; none of the 11 others
# rose steadily at all (rank correlation 0.3 at most).
STEADY_RISE, STEADY_LAYERS, STEADY_AMPLIFIED = 0.9, 2 * CHAIN, 5.0


def rises_steadily(values: Sequence[float]) -> bool:
    """Whether the readings of a stack's layers in depth order (``values``), ``STEADY_LAYERS``
    of them or more, rise almost monotonically (rank correlation ``STEADY_RISE`` or more) and
    ``STEADY_AMPLIFIED`` times from the first to the largest: layer after layer multiplying
    them, a layer's noise breaking no chain of :func:`gain_chains`.

    Example:
        >>> outputs = [1.4**k * (0.7 if k % 4 == 3 else 1.0) for k in range(12)]
        >>> rises_steadily(outputs), list(gain_chains(outputs))
        (True, [])
    """
    if len(values) < STEADY_LAYERS or not min(values) > 0:
        return False
    if max(values) < STEADY_AMPLIFIED * values[0]:
        return False
    ranks = np.argsort(np.argsort(values))
    return float(np.corrcoef(ranks, np.arange(len(values)))[0, 1]) >= STEADY_RISE


class GradientGrowth(Detector):
    """Exploding gradients (Pascanu et al. 2013), two ways:

    - growth: the global gradient norm's running median ``growth`` times above its best
      sustained level for ``patience`` records while the loss is not improving (healthy
      training often raises the gradient norm from a small start while the loss falls):
      warning, critical at ``critical`` times. A best level ``VANISHED`` times below the highest
      level sustained before it is a gradient that vanished (a saturated softmax, a collapsed
      policy): growth is then measured from that earlier level. ``where`` is the parameter whose own gradient
      norm left its best level first, by ``local_growth``: where the growth starts. Where a
      module applied repeatedly in the forward (``record.meta[RECURRENT_MODULES]``: a cell a loop
      steps through) is among those that grew, the growth is its own: a repeated Jacobian product
      is what makes gradients explode, and every tensor upstream of it only inherits the growth.
    - at initialisation: on the first record the gradient norm is ``init_ratio`` times the
      norm of the weights it updates (critical), naming the tensor with the largest ratio; or
      the gradients grow ``init_ratio`` times from the last layer back to the first, almost
      monotonically (warning, naming the first layer; see :meth:`_through_depth`). The first
      is reported, dated to the first record, once the loss stalls within ``window`` records:
      a run that trains through it (Adam's step does not scale with the gradient) was not
      harmed.
    - one explosion: a gradient norm, the largest so far, ``collapse`` times the next one, whose
      update changed the weights' norm by ``moved`` (a tenth) or more, with the loss no longer
      improving within ``window`` records (the update wrecked the weights, whose gradients
      then vanish; under Adam one giant gradient moves the weights by about the learning rate
      and poisons the second moment instead): critical, dated to the explosion, naming the
      tensor whose gradient then stood furthest above its own recent level; at once when that
      tensor's gradient is exactly 0 after it (its units saturated: a model that never learnt
      has no better loss to fall from). The first
      gradient has nothing before it to stand above: its update must have been as large as
      the weights it changed (an update ratio of 1), and made so by the gradient: under a
      per-coordinate optimizer (Adam, Adagrad, RMSprop: the first record's meta says which)
      the first step is the learning rate's size whatever the gradient, and is never judged so.

    Example:
        >>> det = GradientGrowth()
        >>> norms = [1.0] * 10 + [1.3**t for t in range(1, 20)]
        >>> found = [f for t, g in enumerate(norms)
        ...          for f in det.update(Record(t, {"grad_norm": g, "grad_norm/w": g}))]
        >>> found[0].where, found[0].severity
        ('w', 'warning')
    """

    per_task = True
    kind = GRADIENT_GROWTH
    reads = (GRAD_NORM, GRAD_NORM_PRECLIP, PARAM_NORM, UPDATE_RATIO, LOSS, LEARNING_RATE)
    emits = (GRADIENT_GROWTH,)

    def __init__(
        self,
        growth: float = 10.0,
        critical: float = 100.0,
        patience: int = 3,
        local_growth: float = 3.0,
        window: int = 5,
        init_ratio: float = 100.0,
        collapse: float = 100.0,
        moved: float = 0.1,
    ) -> None:
        self.init_ratio = finite_float("init_ratio", init_ratio, low=1.0)
        self.collapse = finite_float("collapse", collapse, low=1.0, low_open=True)
        # the previous record: step, gradient norm, per-tensor norms, how far its update moved
        # the weights' norm (relative), the lowest loss up to it
        self._previous: tuple[int, float, tuple[tuple[str, ...], np.ndarray], float, float] | None
        self._previous = None
        self._largest = 0.0
        self._before_previous = False  # a record came before the previous one
        self._explosion: tuple[int, float, float, str | None, float] | None = None
        self._explosion_wait = 0
        self._weights = math.nan  # the weight norm at the previous record
        self.moved = finite_float("moved", moved, low=0.0)
        self.loss = SustainedLevel(window)
        self._first_record = True
        self._per_coordinate = False  # the optimizer scales its step per coordinate
        self._at_start: list[Finding] = []  # a finding at initialisation, awaiting the loss
        self._at_start_wait = 0
        self.growth = math.log(finite_float("growth", growth, low=1.0, low_open=True))
        self.critical = math.log(finite_float("critical", critical, low=growth))
        self.patience = positive_int("patience", patience)
        self.local = math.log(finite_float("local_growth", local_growth, low=1.0, low_open=True))
        self.level = SustainedLevel(positive_int("window", window))
        self._above = 0
        self._fired: set[str] = set()
        self._names: tuple[str, ...] = ()
        self._ema: np.ndarray | None = None
        self._floor: np.ndarray | None = None
        self._first: np.ndarray | None = None  # step at which each tensor left its floor
        self._records = 0
        self._floor_record = 0  # the record (count from the first) the floor was set at
        self._loss_at_floor = math.nan  # the loss's level when the gradient stood at its floor
        self._leaving = False  # the model left a flat start: its levels follow it down
        self._recurrent: tuple[str, ...] = ()  # modules applied repeatedly in the forward
        # the highest level the gradient norm has sustained, and that highest when the best
        # level was last set (log, step)
        self._highest: tuple[float, int | None] = (-math.inf, None)
        self._before_floor: tuple[float, int | None] = (-math.inf, None)
        self._stages = StageWatch()
        self._restarts = RateRestarts()

    def update(self, record: Record) -> list[Finding]:
        # the first record says the optimizer's family, and may be an overflow skipped below
        if OPTIMIZER_FAMILY in record.meta:
            self._per_coordinate = record.meta[OPTIMIZER_FAMILY] in PER_COORDINATE
        if RECURRENT_MODULES in record.meta:
            self._recurrent = tuple(record.meta[RECURRENT_MODULES])
        norm = record.values.get(GRAD_NORM.name)
        if norm is None or not (math.isfinite(norm) and norm > 0) or record.nonfinite:
            return self._at_start_confirmed(broken=record.nonfinite)
        shrunk = shrunk_by_clipping(record, norm)
        norm *= shrunk  # the gradient the model made, not what clipping left
        if self._first_record:
            self._first_record = False
            self._at_start = self._at_init(record, norm)
            self._at_start_wait = self.level.values.maxlen or 5
            if not self._at_start:
                through_depth = self._through_depth(record)
                if through_depth:
                    return through_depth
        loss = record.values.get(LOSS.name)
        if self._restarts.add_record(record):  # a warm restart: the gradient rises with the rate
            self._start_again([])
        stage = None if loss is None else self._stages.add_record(record, loss)
        if stage == STAGE:  # a new stage of the data: the gradient's levels start again
            self._start_again(self._stages.judged)
        if loss is not None and math.isfinite(loss):
            self.loss.add(loss, record.step)
        at_start = self._at_start_confirmed(broken=False)
        if at_start:
            return at_start
        exploded = self._exploded_then_collapsed(record, norm)
        if exploded:
            return exploded
        self._track_tensors(record, shrunk)
        level = self.level
        floor_before = level.floor_step
        level.add(math.log(norm), record.step)
        self._records += 1
        if level.floor_step != floor_before:
            self._floor_record, self._loss_at_floor = self._records, self.loss.current
            self._before_floor = self._highest
        if self._left_a_flat_start():
            level = self._leave_the_flat_start(record.step)
        if not math.isfinite(level.floor):
            return []
        if level.current > self._highest[0]:
            self._highest = (level.current, record.step)
        baseline, baseline_step = level.floor, level.floor_step
        if self._before_floor[0] - level.floor > math.log(VANISHED):
            # The gradient had vanished (a saturated softmax, a collapsed policy): coming back
            # to its usual size is no explosion; growth is measured from where it stood before.
            baseline, baseline_step = self._before_floor
        rise = level.current - baseline
        worse = self._loss_worse()
        growing = rise > max(self.growth, NOISE_Z * level.noise())  # beyond its own scatter
        self._above = self._above + 1 if growing and worse else 0
        if rise < self.growth / 2:
            self._fired.clear()
        severity = None
        if rise > self.critical and self._above and "critical" not in self._fired:
            severity = Severity.CRITICAL
        elif self._above >= self.patience and not self._fired:
            severity = Severity.WARNING
        if severity is None or stage == WATCHING:  # the loss stepped up: a stage, or a climb?
            return []
        self._fired.add(severity.value)
        where, started = self._origin()
        evidence = {
            "grad_norm_median": math.exp(level.current),
            "best_level": math.exp(baseline),
            "growth": math.exp(rise),
            "best_level_step": baseline_step,
        }
        if where is not None:
            evidence[GROWTH_BEGAN] = started
        return [Finding(self.kind, record.step, where, evidence, severity)]

    def _start_again(self, stage: list[tuple[int | None, float]]) -> None:
        """The gradient's and the loss's levels start again, the loss's from ``stage``'s: the
        larger gradients of a new stage's harder batches are no growth."""
        window = self.level.values.maxlen or 5
        self.level, self.loss = SustainedLevel(window), SustainedLevel(window)
        for step, loss in stage[:-1]:  # this record's loss is added next
            self.loss.add(loss, step)
        self._above, self._fired = 0, set()
        self._highest = (-math.inf, None)  # the rest is set with the new level's first floor

    def _at_start_confirmed(self, broken: bool) -> list[Finding]:
        """The finding at initialisation, once the loss shows its updates hurt (it stalls or
        goes non-finite within ``window`` records); dropped if training went on unharmed (an
        adaptive optimizer's step does not scale with the gradient)."""
        if not self._at_start:
            return []
        judged = math.isfinite(self.loss.current)
        if not judged and self.loss.recent:
            return []  # a loss, not yet a level to judge by: wait for it
        if broken or not judged or loss_stalled(self.loss):  # no loss at all: as it stands
            found, self._at_start = self._at_start, []
            return found
        self._at_start_wait -= 1
        if self._at_start_wait <= 0:
            self._at_start = []
        return []

    def _exploded_then_collapsed(self, record: Record, norm: float) -> list[Finding]:
        previous = self._previous
        weights = record.values.get(PARAM_NORM.name, math.nan)
        if self._weights > 0:
            moved = abs(weights / self._weights - 1.0)
        else:  # the first record: no norm before it, but each tensor's update against itself
            ratios = record.family_array(UPDATE_RATIO.name)[1]
            ratios = ratios[np.isfinite(ratios)]
            moved = float(ratios.max()) if len(ratios) else math.nan
        self._weights = weights
        loss = record.values.get(LOSS.name, math.nan)
        # the lowest finite loss so far (NaN: none yet); a NaN loss does not forget it
        lowest = float(np.fmin(loss, previous[4])) if previous is not None else loss
        self._previous = (record.step, norm, record.family_array(GRAD_NORM.name), moved, lowest)
        largest, self._largest = self._largest, max(self._largest, norm)
        before_previous, self._before_previous = self._before_previous, previous is not None
        if "critical" in self._fired:
            return []
        if (
            previous is not None
            and previous[1] >= largest
            and previous[1] >= self.collapse * norm
            # its update moved the weights (NaN: not known); the first gradient has nothing
            # before it to stand above, so its update must have been as large as the weights,
            # and made so by the gradient: a per-coordinate step (Adam, Adagrad) moves each
            # weight by about the learning rate whatever the gradient's size
            and not previous[3] < (self.moved if before_previous else 1.0)
            and (before_previous or not self._per_coordinate)
        ):
            # A candidate: the loss has a few records to show whether the run shrugged it off.
            where = self._grew_most(previous[2], first=not before_previous)
            self._explosion = (previous[0], previous[1], norm, where, previous[4])
            self._explosion_wait = self.level.values.maxlen or 5
        if self._explosion is None:
            return []
        # the tensor it came through gets no gradient at all since: its units saturated (a
        # wreck, whatever the loss does next: a model that never learnt has no better level)
        where, lowest = self._explosion[3], self._explosion[4]
        loss_now = record.values.get(LOSS.name, math.nan)
        if 0.0 <= min(loss_now, self.loss.current) <= LEARNT * lowest:
            self._explosion = None  # the loss went to its floor: the gradients vanished with it
            return []
        cut_off = where is not None and record.values.get(GRAD_NORM.key(where)) == 0.0
        if not cut_off and not self._loss_stalled():
            self._explosion_wait -= 1
            if self._explosion_wait <= 0:
                self._explosion = None  # shrugged off: a gradient spike, not an explosion
            return []
        (step, before, after, where, _), self._explosion = self._explosion, None
        self._fired.add("critical")
        evidence = {
            "grad_norm": before,
            "next_grad_norm": after,
            "ratio": before / after,
            WRECKED_WEIGHTS: True,  # the run broke here, whatever the loss did next
        }
        return [Finding(self.kind, step, where, evidence, Severity.CRITICAL)]

    def _grew_most(self, family: tuple[tuple[str, ...], np.ndarray], first: bool) -> str | None:
        """The tensor whose gradient stood furthest above its own recent level: where the
        explosion came through (an RNN's recurrent weights, say), not the largest gradient it
        left downstream (the embedding's); within a recurrence where one grew ``local_growth``
        times. The ``first`` gradient has no level to stand above: the largest, within a
        recurrence if the model has one."""
        names, norms = family
        if not len(names):
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(norms)
            level = self._ema is not None and len(self._ema) == len(norms) and names == self._names
            if first or not level:
                growth = logs
                grew = self._in_recurrence(names, np.isfinite(logs))
            else:
                growth = logs - self._ema  # the level already holds half of this spike
                grew = self._in_recurrence(names, growth > self.local)
        growth[~np.isfinite(growth)] = -np.inf
        if grew.any():
            growth[~grew] = -np.inf
        return names[int(np.argmax(growth))]

    def _in_recurrence(self, names: tuple[str, ...], candidates: np.ndarray) -> np.ndarray:
        """Which of the ``candidates`` (a mask over the tensors ``names``) belong to a module
        applied in a recurrence."""
        prefixes = tuple(m + "." for m in self._recurrent)
        inside = np.array([n.startswith(prefixes) for n in names], dtype=bool)
        return candidates & inside if prefixes else np.zeros_like(candidates)

    def _loss_stalled(self) -> bool:
        return loss_stalled(self.loss)

    def _left_a_flat_start(self) -> bool:
        """The gradient's floor is its level over the first records, or was set while the loss
        had not yet left where it started (or since the model left it), and the loss stands well
        below where it stood then (``START_LEFT``): a model leaving a flat initial region (small
        initial gradients under batch norm, a residual branch scaled to zero, an attention
        model's plateau at chance) whose gradients grow as it learns, not gradients exploding.
        Its last three losses stand there too (a running median lags a loss that just jumped)."""
        at_start = self.loss.start - START_LEFT * abs(self.loss.start)
        flat = self._floor_record <= START_RECORDS or self._loss_at_floor > at_start
        leaving = self._leaving and self._loss_at_floor > 0  # a fifth of a positive loss
        below = self._loss_at_floor - START_LEFT * abs(self._loss_at_floor)
        # the level and its last values: a median lags a loss that has just jumped
        last = max(list(self.loss.values)[-3:], default=math.nan)
        return (flat or leaving) and self.loss.current < below and last < below

    def _leave_the_flat_start(self, step: int) -> SustainedLevel:
        """The gradient's levels start again from its last values, once the model has left a
        flat start, and again each time the loss falls ``START_LEFT`` further below where they
        last started: the gradients of a model that is still learning its way off a plateau
        grow with it, and are no measure of the learnt model's (a bump in the loss later would
        otherwise bring the flat start's floor back, and with it a growth of 100x or more that
        a Hugging Face encoder under warm-up makes as it learns)."""
        self._leaving = True
        last = list(self.level.values)
        self.level = SustainedLevel(self.level.values.maxlen or 5)
        for value in last:
            self.level.add(value, step)
        self._floor_record, self._loss_at_floor = self._records, self.loss.current
        self._before_floor = self._highest  # a gradient that vanished since is still told
        if self._ema is not None and self._first is not None:
            self._floor = self._ema.copy()
            self._first[:] = -1
        return self.level

    def _loss_worse(self) -> bool:
        """The loss gave back half its progress: growing gradients that hurt (under Adam, a
        gradient norm often grows while a loss near zero stays there)."""
        loss = self.loss
        if not math.isfinite(loss.current):
            return True
        return loss.lost_progress(0.5) and loss.current - loss.floor > NOISE_Z * loss.noise()

    def _at_init(self, record: Record, norm: float) -> list[Finding]:
        weights = record.values.get(PARAM_NORM.name)
        if not weights or norm < self.init_ratio * weights:
            return []
        grads, params = record.family(GRAD_NORM.name), record.family(PARAM_NORM.name)
        ratios = {n: g / params[n] for n, g in grads.items() if params.get(n, 0.0) > 0}
        where = max(ratios, key=ratios.get) if ratios else None
        evidence = {"grad_norm": norm, "param_norm": weights, "ratio": norm / weights}
        if where is not None:
            evidence["tensor_ratio"] = ratios[where]
        evidence[AT_INITIALISATION] = True
        return [Finding(self.kind, record.step, where, evidence, Severity.CRITICAL)]

    def _through_depth(self, record: Record, layers: int = 6) -> list[Finding]:
        """Gradients that grow geometrically from the output back to the input (Pascanu et
        al. 2013, through depth): over the weight tensors in the model's order (at least
        ``layers``), the gradient norm falls with depth almost monotonically (rank correlation
        -0.9 or below) by ``init_ratio`` or more from the first to the last; or, in a stack of
        like layers, a chain of them each multiplying the gradient (:func:`stack_chains`: a
        head whose gradient is larger than the last hidden layer's breaks the model-wide order,
        not the stack's). A warning at initialisation, naming the first tensor."""
        names, norms = record.family_array(GRAD_NORM.name)
        chains = stack_chains(dict(zip(names, norms.tolist(), strict=True)))
        if chains:
            chain = max(chains, key=lambda c: c[-1][1] / c[0][1])
            (first, grown), (_, small) = chain[-1], chain[0]
            evidence = {
                "first_layer_grad_norm": grown,
                "last_layer_grad_norm": small,
                "ratio": grown / small,
                "layers": len(chain),
                AT_INITIALISATION: True,
                "through_depth": True,
                "stack": True,
            }
            return [Finding(self.kind, record.step, first, evidence, Severity.WARNING)]
        keep = [i for i, n in enumerate(names) if n.endswith("weight") and norms[i] > 0]
        if len(keep) < layers:
            return []
        logs = np.log(norms[keep])
        if not np.isfinite(logs).all() or logs[0] - logs[-1] < math.log(self.init_ratio):
            return []
        ranks = np.argsort(np.argsort(logs))
        depth = np.arange(len(keep))
        if np.corrcoef(ranks, depth)[0, 1] > -0.9:
            return []
        evidence = {
            "first_layer_grad_norm": float(norms[keep[0]]),
            "last_layer_grad_norm": float(norms[keep[-1]]),
            "ratio": float(math.exp(logs[0] - logs[-1])),
            "layers": len(keep),
            AT_INITIALISATION: True,
            "through_depth": True,
        }
        return [Finding(self.kind, record.step, names[keep[0]], evidence, Severity.WARNING)]

    def _track_tensors(self, record: Record, shrunk: float) -> None:
        """Each tensor's gradient level and floor (its norm before clipping: times ``shrunk``)."""
        names, norms = record.family_array(GRAD_NORM.name)
        if not len(names):
            return
        norms = norms * shrunk
        if names is not self._names and names != self._names:  # first record, or a new set
            self._ema = self._floor = self._first = None
        self._names = names
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(norms)
        logs[~np.isfinite(logs)] = np.nan
        if self._ema is None:
            self._ema, self._floor = logs.copy(), logs.copy()
            self._first = np.full(len(logs), -1, dtype=np.int64)
            return
        self._ema = np.where(np.isnan(self._ema), logs, 0.5 * self._ema + 0.5 * logs)
        self._floor = np.fmin(self._floor, self._ema)
        left = (self._ema - self._floor > self.local) & (self._first < 0)
        self._first[left] = record.step
        back = self._ema - self._floor < self.local / 2
        self._first[back] = -1  # returned to its level: it has not left it for good

    def _origin(self) -> tuple[str | None, int | None]:
        if self._first is None:
            return None, None
        left = self._first >= 0
        if not left.any():
            return None, None
        recurrent = self._in_recurrence(self._names, left)
        left = np.flatnonzero(recurrent if recurrent.any() else left)
        rise = (self._ema - self._floor)[left]
        # the earliest to leave its floor; among those, the one that rose most
        order = np.lexsort((-rise, self._first[left]))
        i = left[order[0]]
        return self._names[i], int(self._first[i])


class UnstableSteps(Detector):
    """The directional sharpness ratio (curvature along the update against 2/lr; see
    :mod:`steadygrad.monitor.update_curvature`) above ``limit`` in ``hits`` of the last
    ``window`` readings: the optimizer's steps overshoot along their own direction, the
    signature of a learning rate above the stability limit, while the loss is not improving.
    Gradient descent at the edge of stability hovers at 1 (Cohen et al. 2021), and momentum
    methods can read above 1 while training well, so the default asks for a clear excess and a
    stalled loss. Readings of an adaptive step (Adam, RMSprop, Adagrad: the record's meta says
    ``ADAPTIVE_UPDATE``) are left to the rules, as evidence next to a break only: such steps read
    well above 1 in healthy runs.

    Example:
        >>> det = UnstableSteps()
        >>> found = [f for t in range(6)
        ...          for f in det.update(Record(t, {"directional_sharpness_ratio": 2.5}))]
        >>> [f.step for f in found]
        [2]
    """

    per_task = True
    kind = UNSTABLE_STEPS
    reads, emits = (DIRECTIONAL_SHARPNESS_RATIO, LOSS), (UNSTABLE_STEPS,)

    def __init__(self, limit: float = 1.5, hits: int = 3, window: int = 5) -> None:
        self.loss = SustainedLevel()
        self.limit = finite_float("limit", limit, low=0.0, low_open=True)
        self.hits = positive_int("hits", hits)
        self.recent: deque[float] = deque(maxlen=positive_int("window", window))
        self._fired = False

    def update(self, record: Record) -> list[Finding]:
        loss = record.values.get(LOSS.name)
        if loss is not None and math.isfinite(loss):
            self.loss.add(loss, record.step)
        ratio = record.values.get(DIRECTIONAL_SHARPNESS_RATIO.name)
        if ratio is None or record.nonfinite or not math.isfinite(ratio):
            return []
        if record.meta.get(ADAPTIVE_UPDATE):
            return []  # an adaptive step reads above 1 while training well (see ADAPTIVE_UPDATE)
        self.recent.append(ratio)
        above = sum(r > self.limit for r in self.recent)
        if above == 0:
            self._fired = False
        if above < self.hits or self._fired or not loss_stalled(self.loss):
            return []
        self._fired = True
        evidence = {
            "directional_sharpness_ratio": ratio,
            "median_recent": statistics.median(self.recent),
            "limit": self.limit,
        }
        return [Finding(self.kind, record.step, None, evidence, Severity.WARNING)]


def loss_stalled(loss: SustainedLevel, noise_z: float = 2.0) -> bool:
    """The loss is not at its best: it stopped improving, or is climbing (with no loss to judge
    by, go by the other evidence alone). Its level must sit a tenth of its scale above its best,
    ``noise_z`` times its noise, and (with ``noise_z``) beyond the upper tail of its single
    values (a heavy-tailed loss near zero); or a tenth above the first value (the loss before any
    update: a run that broke at once has no best level to speak of)."""
    if not math.isfinite(loss.current) or loss.current - loss.first > 0.1 * abs(loss.first):
        return True  # clearly worse than before the first update: a run that broke at once
    margin = max(0.1 * loss.scale(), noise_z * loss.noise(), loss.floor_tail if noise_z else 0.0)
    return loss.current - loss.floor > margin


class FoundAgain:
    """For a harm found while the loss stalled (a layer's dead units, a frozen layer): the
    loss's best level then. The same harm, still there, is found again once the loss has learnt
    on past it to a new best and stalls anew: where it costs the loss.

    Example:
        >>> again, loss = FoundAgain(), SustainedLevel()
        >>> for x in [1.0, 0.9, 0.9, 0.9]:
        ...     loss.add(x)
        >>> again.found("fc2", loss)
        >>> again.due("fc2", loss, stalled=True)  # no new best since
        False
    """

    def __init__(self) -> None:
        self._floors: dict[str, float] = {}

    def found(self, name: str, loss: SustainedLevel) -> None:
        self._floors[name] = loss.floor

    def forget(self, name: str) -> None:
        self._floors.pop(name, None)

    def due(self, name: str, loss: SustainedLevel, stalled: bool) -> bool:
        return stalled and name in self._floors and loss.floor < self._floors[name]

    def __bool__(self) -> bool:
        return bool(self._floors)
